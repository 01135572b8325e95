"""Joint-attention transformers (FLUX.1, SD3.5): the family module, the registry entries, memory estimates and the tiny
hub fixtures in the published layouts (aconvlib.models.families.joint, aconvlib.testing._joint_fixtures)."""
from collections import Counter

import pytest
import torch

from aconvlib.models import (SUPPORTED_PIPELINES, LatentTracker, MissingWeightsError, denoise, family_of, get_spec,
                             load_denoiser, load_pipeline, self_attention_layers)
from aconvlib.models.families.joint import GridSizeError, prompt_token_mask
from aconvlib.testing.dummies import tiny_flux, tiny_inputs, tiny_sd3

JOINT = ["flux-schnell", "flux-dev", "sd3.5-medium", "sd3.5-large"]
FIXTURES = ["flux-schnell", "flux-dev", "sd3.5-medium"]


def test_registry_entries_hub_ids_licences_and_pipelines():
    assert get_spec("flux-schnell").hub_id == "black-forest-labs/FLUX.1-schnell"
    assert get_spec("flux-dev").hub_id == "black-forest-labs/FLUX.1-dev"
    assert get_spec("sd3.5-medium").hub_id == "stabilityai/stable-diffusion-3.5-medium"
    assert get_spec("sd3.5-large").hub_id == "stabilityai/stable-diffusion-3.5-large"
    assert not get_spec("flux-schnell").gated and get_spec("flux-schnell").licence == "apache-2.0"
    assert all(get_spec(n).gated for n in ("flux-dev", "sd3.5-medium", "sd3.5-large"))
    assert SUPPORTED_PIPELINES["FluxPipeline"] == SUPPORTED_PIPELINES["StableDiffusion3Pipeline"] == "joint"
    assert {get_spec(n).grid_multiple for n in JOINT} == {16}


@pytest.mark.parametrize("name,counts,heads,dim", [
    ("flux-schnell", {"double": 19, "single": 38}, 24, 3072), ("flux-dev", {"double": 19, "single": 38}, 24, 3072),
    ("sd3.5-medium", {"joint": 24, "self": 13}, 24, 1536), ("sd3.5-large", {"joint": 38}, 38, 2432)])
def test_attention_layers_by_block_type_on_a_non_square_grid(name, counts, heads, dim):
    spec = get_spec(name)
    den = load_denoiser(name, weights=False, device="meta")
    layers = self_attention_layers(den, spec.latent_grid(1024, 768))   # 128x96 latent
    assert dict(Counter(l.block_type for l in layers)) == counts
    assert {l.grid for l in layers} == {(64, 48)}
    assert {(l.heads, l.channels) for l in layers} == {(heads, dim)}
    assert all(l.joint == (l.block_type != "self") for l in layers)


def test_parameter_counts_are_the_published_sizes():
    from aconvlib.models.memory import denoiser_params

    assert 11.8e9 < denoiser_params("flux-dev") < 12.0e9          # "12B"
    assert 8.0e9 < denoiser_params("sd3.5-large") < 8.2e9         # "8.1B"


def test_a_grid_the_patch_does_not_divide_is_one_line():
    for model in (tiny_flux(), tiny_sd3()):
        with pytest.raises(GridSizeError) as e:
            self_attention_layers(model, (8, 9))
        msg = str(e.value)
        assert "\n" not in msg and "multiples of 2" in msg and "multiples of 16 px" in msg


def test_missing_gated_weights_name_the_licence_and_the_token(empty_hub):
    with pytest.raises(MissingWeightsError) as e:
        load_pipeline("flux-dev")
    msg = str(e.value)
    assert "black-forest-labs/FLUX.1-dev is gated" in msg and "FLUX.1 [dev] Non-Commercial License" in msg
    assert "HF_TOKEN" in msg and "https://huggingface.co/black-forest-labs/FLUX.1-dev" in msg
    with pytest.raises(MissingWeightsError) as e:
        load_pipeline("flux-schnell")
    assert "is gated" not in str(e.value) and "black-forest-labs/FLUX.1-schnell" in str(e.value)


def test_memory_estimate_says_flux_needs_offload_on_24_gb():
    from aconvlib.models.memory import estimate_run_bytes

    est = estimate_run_bytes("flux-dev", "bfloat16", batch=1, cfg=False)
    gb24 = 24 * 2**30
    assert est.weights > gb24 and est.total > gb24
    assert est.offloaded_total < est.total and "enable_model_cpu_offload" in est.advice(gb24)
    assert "enable_model_cpu_offload" in est.describe()
    assert estimate_run_bytes("sd3.5-medium", "bfloat16").advice(80 * 2**30) == "fits"


def test_doctor_lists_the_joint_models(empty_hub):
    from aconvlib.cli.doctor import report

    rows = {r["model"]: r for r in report()["models"]}
    assert set(JOINT) <= set(rows) and not any(rows[n]["cached"] for n in JOINT)


@pytest.mark.parametrize("factory,kind", [(tiny_flux, "flux"), (lambda: tiny_flux(guidance=True), "flux"),
                                          (tiny_sd3, "sd3")])
def test_denoise_is_the_pipelines_call(factory, kind):
    """The family's denoise (latent [B, 16, h, w] in, velocity out) equals the pipelines' own call: FLUX packs 2x2
    latent cells with FluxPipeline._pack_latents, builds img_ids, passes timestep / 1000, unpacks."""
    from diffusers import FluxPipeline

    model = factory()
    inp = tiny_inputs(model, batch=2, hw=(8, 12), text_len=5)
    x, t, text, pooled = inp["x"], inp["t"].float(), inp["text_states"], inp["cond"]["pooled_projections"]
    assert family_of(model).kind(model) == kind
    with torch.no_grad():
        got = denoise(model, x, t, text, pooled_projections=pooled)
        if kind == "sd3":
            ref = model(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t, return_dict=False)[0]
        else:
            packed = FluxPipeline._pack_latents(x, 2, 16, 8, 12)
            ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, x.device, x.dtype)
            g = torch.full((2,), 3.5) if model.config.guidance_embeds else None
            out = model(packed, encoder_hidden_states=text, pooled_projections=pooled, timestep=t / 1000,
                        img_ids=ids, txt_ids=torch.zeros(5, 3), guidance=g, return_dict=False)[0]
            ref = FluxPipeline._unpack_latents(out, 64, 96, 8)
    torch.testing.assert_close(got, ref)
    assert family_of(model).prediction_type({}) == "flow_matching"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_load_through_the_registry_and_generate(name, fixture_hub):
    from aconvlib.models.registry import weights_source

    pipe = load_pipeline(name)
    assert type(pipe).__name__ == ("FluxPipeline" if name.startswith("flux") else "StableDiffusion3Pipeline")
    assert weights_source(name) == "fixture"
    dtypes = {v.dtype for v in pipe.components.values() if isinstance(v, torch.nn.Module)}
    assert dtypes == {torch.float32}   # the text encoders' configs name half precision
    pipe.set_progress_bar_config(disable=True)
    tracker = LatentTracker(pipe.transformer)
    out = pipe("a red fox in the snow", num_inference_steps=2, height=64, width=96, max_sequence_length=32,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 96, 3) and torch.isfinite(torch.as_tensor(out.images)).all()
    assert tracker.latent_hw == (8, 12) and tracker.grid() == (4, 6)   # FLUX: read from img_ids of packed tokens
    tracker.remove()
    snap = fixture_hub / f"models--{get_spec(name).hub_id.replace('/', '--')}" / "snapshots"
    files = {p.relative_to(next(snap.iterdir())).as_posix() for p in snap.rglob("*") if p.is_file()}
    if name.startswith("flux"):
        assert {"transformer/diffusion_pytorch_model.safetensors.index.json",
                "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
                "text_encoder_2/model.safetensors.index.json", "tokenizer_2/tokenizer.json"} <= files
    else:
        assert {"transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors.index.json",
                "tokenizer_3/spiece.model"} <= files


@pytest.mark.parametrize("name,length", [("flux-schnell", 32), ("sd3.5-medium", 32)])
def test_prompt_token_mask_marks_the_prompt_and_the_padding(name, length, fixture_hub):
    pipe = load_pipeline(name)
    mask = prompt_token_mask(pipe, ["a red fox", "a red fox in the snow at sunset"], max_sequence_length=length)
    clip = 0 if name.startswith("flux") else 77
    assert mask.shape == (2, clip + length) and mask.dtype == torch.bool
    t5 = mask[:, clip:]
    assert t5[:, 0].all() and not t5[:, -1].any() and t5[1].sum() > t5[0].sum()
    assert (t5.int().diff(dim=1) <= 0).all()   # prompt tokens first, then padding
    if clip:
        assert mask[:, 0].all() and not mask[:, clip - 1].any()


def test_joint_fixtures_are_small_and_rebuild_to_the_same_bytes(hub_root, tmp_path):
    from aconvlib.testing.hub_fixtures import build_hub_cache, hub_cache_dir

    repo = "black-forest-labs/FLUX.1-schnell"

    def blobs(hub, repo_id):
        d = hub / ("models--" + repo_id.replace("/", "--")) / "blobs"
        return {p.name: p.read_bytes() for p in d.iterdir()}

    for repo_id, mib in ((repo, 24), ("black-forest-labs/FLUX.1-dev", 24), ("stabilityai/stable-diffusion-3.5-medium", 64)):
        assert sum(map(len, blobs(hub_cache_dir(hub_root), repo_id).values())) < mib * 2**20, repo_id
    assert blobs(build_hub_cache(tmp_path, [repo]), repo) == blobs(hub_cache_dir(hub_root), repo)


def _readme_joint():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- joint-example:start -->\n```python\n(.*?)```", text, re.S).group(1)
    rows = re.findall(r"^\| (flux-schnell|flux-dev|sd3\.5-medium|sd3\.5-large) \| (.*)$", text, re.M)
    return code, rows


def test_readme_joint_memory_table_matches_the_estimates():
    from aconvlib.models.memory import estimate_run_bytes

    _, rows = _readme_joint()
    assert [r[0] for r in rows] == JOINT
    g = 2**30
    for model, rest in rows:
        cells = [c.strip() for c in rest.strip(" |").split("|")]
        est = estimate_run_bytes(model, "bfloat16", batch=1, cfg=model.startswith("sd3"))
        assert cells[:2] == [f"{est.total / g:.1f} GiB", f"{est.offloaded_total / g:.1f} GiB"], model
        for cell, avail in zip(cells[2:], (14.7, 22.0, 78.0)):
            advice = est.advice(int(avail * g))
            want = ("yes" if advice == "fits" else "with model offload" if "fits with" in advice
                    else "no (sequential offload)")
            assert cell == want, (model, avail, cell, advice)


def test_readme_joint_example_runs_on_the_fixtures(fixture_hub):
    """The README's Python example, with the documented CPU substitutions: float32 on the CPU, a 64x48 image (4x3
    tokens), 16 text tokens, 2 steps, K = 3, and the fixture's layer indices (2 double + 2 single blocks)."""
    code, _ = _readme_joint()
    subs = {'device="cuda", dtype=torch.bfloat16': 'device="cpu", dtype=torch.float32', "height=1024, width=768":
            "height=64, width=48", "max_sequence_length=256": "max_sequence_length=16", "(128, 96)": "(8, 6)",
            "layers=[0, 19]": "layers=[0, 2]", "num_inference_steps=4": "num_inference_steps=2",
            "kernel_size=13": "kernel_size=3", "print(": "_ = ("}
    for a, b in subs.items():
        assert a in code, a
        code = code.replace(a, b)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    cap = scope["cap"]
    assert cap.block_types == {"transformer_blocks.0.attn": "double", "single_transformer_blocks.0.attn": "single"}
    assert cap.maps["transformer_blocks.0.attn"].shape == (12, 12) and scope["image"].size == (48, 64)
