"""load_official: the authors' released ΔConv students (their file format) in a stock diffusers pipeline.

The authors' files cannot be downloaded here, so every state dict below is built as THEIR code names and shapes it,
written out in this file from their module tree (GitHub IrisRainbowNeko/ConvFusion: ``models/unets/
stable_diffusion_conv2d.py`` ``SD15ConvModel`` / ``SDXLConvModel`` with their kernel-size config defaults,
``unet_conv2d_blocks.py`` (which blocks get a ``Convformer2DModel``), ``models/transformers/pixart_conv2d.py``,
``models/block_conv.py`` ``BasicConvFormerBlock.conv1`` and ``pyramid_dwconv/conv_block.py``
``PyramidConvBlockTriton``), independently of aconvlib's table, and their block's output is computed here from
their forward pass's equations (torch.nn.functional), never with our DeltaConvBlock.
"""
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from aconvlib.mixers.official import (BaseModelMismatchError, OfficialCheckpointError, is_official_source,
                                      load_official, map_official_state, read_official_state)
from aconvlib.models import config_dir

# -- their module tree, as read ---------------------------------------------------------------------------------
# SD15ConvModel / SDXLConvModel defaults (down_blocks_conv1_kernel_sizes, mid_block_conv1_kernel_size,
# up_blocks_conv1_kernel_sizes); PixArtConv2DModel: BasicConvFormerBlock's default conv1_kernel_size 13
THEIR_KERNELS = {"sd15": ([7, 9, 5, 0], 3, [0, 5, 9, 11]), "sdxl": ([0, 9, 7], 9, [9, 13, 0])}


def _per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def their_blocks(cfg: dict, arch: str) -> dict[str, tuple[int, int]]:
    """``{their conv1 module path: (C, K)}`` of the student their classes build from a diffusers config."""
    if cfg["_class_name"] == "PixArtTransformer2DModel":
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        return {f"transformer_blocks.{i}.conv1": (dim, 13) for i in range(cfg["num_layers"])}
    down_k, mid_k, up_k = THEIR_KERNELS[arch]
    n = len(cfg["down_block_types"])
    chans, lpb = cfg["block_out_channels"], _per_block(cfg["layers_per_block"], n)
    tlpb = _per_block(cfg.get("transformer_layers_per_block", 1), n)
    out = {}
    for i, t in enumerate(cfg["down_block_types"]):          # get_down_block: CrossAttnDownBlock2D -> conv version
        if t == "CrossAttnDownBlock2D":
            for j in range(lpb[i]):
                for k in range(tlpb[i]):
                    out[f"down_blocks.{i}.attentions.{j}.transformer_blocks.{k}.conv1"] = (chans[i], down_k[i])
    for k in range(tlpb[-1]):                                  # UNetMidBlock2DCrossConv: one Convformer2DModel
        out[f"mid_block.attentions.0.transformer_blocks.{k}.conv1"] = (chans[-1], mid_k)
    rchans, rlpb, rtlpb = chans[::-1], lpb[::-1], tlpb[::-1]
    for i, t in enumerate(cfg["up_block_types"]):              # CrossConvUpBlock2D: num_layers = layers + 1
        if t == "CrossAttnUpBlock2D":
            for j in range(rlpb[i] + 1):
                for k in range(rtlpb[i]):
                    out[f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}.conv1"] = (rchans[i], up_k[i])
    return out


def their_block_state(dim: int, k: int, make) -> dict:
    """PyramidConvBlockTriton(dim, kernel_size=k, scales=(1, 1/2), inter_ratio=0.5): names and shapes."""
    inter = int(dim * 0.5)
    return {"conv_up.weight": make(inter, dim), "conv_up.bias": make(inter),
            "gates.0.conv_spatial.weight": make(k, k, inter), "gates.1.conv_spatial.weight": make(k, k, inter),
            "conv_out.weight": make(dim, inter // 2 * 2), "conv_out.bias": make(dim),
            "conv_pool.weight": make(dim, dim), "conv_pool.bias": make(dim)}


def their_state(blocks: dict, make, real=()) -> dict:
    state = {}
    for path, (dim, k) in blocks.items():
        mk = _random if path in real else make
        state.update({f"{path}.{n}": t for n, t in their_block_state(dim, k, mk).items()})
    return state


def _meta(*shape):
    return torch.empty(*shape, device="meta")


def _random(*shape):
    return torch.randn(*shape, dtype=torch.float64) / math.sqrt(shape[-1])


def their_block_output(x: torch.Tensor, t: dict, simple: bool) -> torch.Tensor:
    """Their PyramidConvBlockTriton.forward on channels-last x [B, H, W, C] (SimpleGateTriton per scale)."""
    b, h, w, c = x.shape
    z = x @ t["conv_up.weight"].T + t["conv_up.bias"]
    outs = []
    for s, scale in enumerate((1.0, 0.5)):
        wt = t[f"gates.{s}.conv_spatial.weight"]                 # [K, K, C'] channels-last
        kk, ci = wt.shape[0], wt.shape[2]
        u = z.permute(0, 3, 1, 2)
        if scale != 1.0:
            u = F.adaptive_avg_pool2d(u, (int(h * scale), int(w * scale)))
        u = F.conv2d(u, wt.permute(2, 0, 1).unsqueeze(1), padding=kk // 2, groups=ci)
        a, g = u.chunk(2, dim=1)
        u = a * (g / (ci / 2) ** -0.5) if simple else a * torch.sigmoid(g)
        if scale != 1.0:
            u = F.interpolate(u, size=(h, w), mode="bilinear", align_corners=False)
        outs.append(u.permute(0, 2, 3, 1))
    y = torch.cat(outs, -1) @ t["conv_out.weight"].T + t["conv_out.bias"]
    return y + x.mean(dim=(1, 2), keepdim=True) @ t["conv_pool.weight"].T + t["conv_pool.bias"]


def _param_count(blocks: dict) -> int:
    """Closed form of one 2-stage block: 2C² + 2.5C (projections) + K²·C (two depthwise K×K on C/2)."""
    return int(sum(2 * c * c + 2.5 * c + k * k * c for c, k in blocks.values()))


# -- full size: the shipped configs (SD1.5, SDXL, PixArt-Σ), names + shapes on `meta`, numbers on a few blocks ---
FULL = [("sd15", "sd15", "unet", 16, 25_390_240), ("sdxl", "sdxl", "unet", 70, 211_265_920),
        ("pixart-sigma-512", "pixart", "transformer", 28, 79_849_728)]


def _full_denoiser(name, sub):
    import json

    import diffusers

    cfg = json.loads((config_dir() / name / f"{sub}.json").read_text())
    with torch.device("meta"):
        den = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    return cfg, den


@pytest.mark.parametrize("name,arch,sub,n_blocks,n_params", FULL, ids=[f[0] for f in FULL])
def test_full_size_state_dict_maps_onto_every_layer_and_matches_their_formula(name, arch, sub, n_blocks, n_params):
    cfg, den = _full_denoiser(name, sub)
    blocks = their_blocks(cfg, arch)
    paths = sorted(blocks)
    real = {paths[0], paths[len(paths) // 2], paths[-1]}
    state = their_state(blocks, _meta, real)
    assert len(blocks) == n_blocks and _param_count(blocks) == n_params
    assert sum(t.numel() for t in state.values()) == n_params        # the shapes are the closed form's
    m = map_official_state(den, state, source=name)
    assert sorted(s["name"][: -len("attn1")] + "conv1" for s in m.layers) == paths
    assert len(m.tensors) == 8 * n_blocks and not m.base_tensors
    assert m.kernel_notes == []           # aconvlib's table of their kernel sizes = their classes' defaults
    assert {s["kernel_size"] for s in m.layers} == {k for _, k in blocks.values()}
    # numbers: a few full-width blocks, ours (mapped) vs their formula, on a non-square grid with odd sides
    from aconvlib.mixers.adapters import DeltaConvAdapter

    simple = arch != "pixart"
    assert m.config["gate"] == ("scaled" if simple else "sigmoid")
    specs = [s for s in m.layers if s["name"][: -len("attn1")] + "conv1" in real]
    adapter = DeltaConvAdapter(layers=specs, base_model=type(den).__name__, **m.config).double()
    keys = set(adapter.state_dict())
    adapter.load_state_dict({k: v for k, v in m.tensors.items() if k in keys}, strict=True)
    gen = torch.Generator().manual_seed(0)
    for s in specs:
        path = s["name"][: -len("attn1")] + "conv1"
        theirs = {n[len(path) + 1:]: t for n, t in state.items() if n.startswith(path + ".")}
        h, w = 13, 22
        x = torch.randn(2, h, w, s["channels"], generator=gen, dtype=torch.float64)
        ours = adapter.block(s["name"])(x.reshape(2, h * w, -1), grid=(h, w)).reshape(2, h, w, -1)
        ref = their_block_output(x, theirs, simple)
        assert ref.abs().max() > 1e-3
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


# -- fixture size: their file into the fixture pipelines' denoisers, the whole model run -----------------------
def _fixture_denoiser(model):
    import diffusers

    from aconvlib.testing._fixture_official import fixture_denoiser_config

    cfg = fixture_denoiser_config(model)
    torch.manual_seed(0)
    den = getattr(diffusers, cfg["_class_name"]).from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    return cfg, den.eval()


def _fixture_file(tmp_path, model, arch, fmt="safetensors", mutate=None):
    cfg, den = _fixture_denoiser(model)
    torch.manual_seed(1)
    state = their_state(their_blocks(cfg, arch), lambda *s: torch.randn(*s) / math.sqrt(s[-1]))
    if mutate:
        state = mutate(state)
    path = tmp_path / f"ConvFusion-test.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return cfg, den, state, path


def _call(den, cfg, hw):
    x = torch.randn(1, cfg["in_channels"], *hw, generator=torch.Generator().manual_seed(2))
    text = torch.randn(1, 5, cfg.get("caption_channels") or cfg["cross_attention_dim"],
                       generator=torch.Generator().manual_seed(3))
    if cfg["_class_name"] == "PixArtTransformer2DModel":
        return den(x, encoder_hidden_states=text, timestep=torch.tensor([500]),
                   added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.zeros(1, 6)}
    return den(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample


FIXTURES = [("sd15", "sd15", (16, 24)), ("sdxl", "sdxl", (16, 24)), ("pixart-sigma-512", "pixart", (12, 20))]


@pytest.mark.parametrize("model,arch,hw", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_fixture_denoiser_runs_their_blocks_on_the_grid_their_code_uses(tmp_path, model, arch, hw):
    cfg, den, state, path = _fixture_file(tmp_path, model, arch)
    load_official(den, str(path), base_check="off")
    # the grid their code uses: the feature map entering each Transformer2DModel (size=(width, height) there)
    grids, seen = {}, []

    def grab_grid(name):
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            p = getattr(mod.config, "patch_size", None) or 1
            grids[name] = (x.shape[-2] // p, x.shape[-1] // p)
        return hook

    def grab_io(name):
        def hook(mod, args, out):
            seen.append((name, args[0].detach(), out.detach()))
        return hook

    from aconvlib.mixers import mixer_layers

    handles = []
    for n, wrapper in mixer_layers(den):
        owner = n.split(".transformer_blocks.")[0]
        handles.append((den.get_submodule(owner) if owner != n and owner else den).register_forward_pre_hook(
            grab_grid(n), with_kwargs=True))
        handles.append(wrapper.register_forward_hook(grab_io(n)))
    with torch.no_grad():
        _call(den, cfg, hw)
    for h in handles:
        h.remove()
    assert len(seen) == len(their_blocks(cfg, arch))
    for n, x, y in seen:
        h, w = grids[n]
        path = n[: -len("attn1")] + "conv1"
        theirs = {k[len(path) + 1:]: t for k, t in state.items() if k.startswith(path + ".")}
        ref = their_block_output(x.reshape(x.shape[0], h, w, -1), theirs, arch != "pixart")
        torch.testing.assert_close(y, ref.reshape(y.shape), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt,wrap", [("safetensors", "base:"), ("ckpt", "base"), ("pt", "denoiser."),
                                      ("safetensors", "model.")])
def test_every_form_their_loader_reads(tmp_path, fmt, wrap):
    def mutate(state):
        if wrap == "base" and fmt != "safetensors":
            return {"base": state}
        return {wrap + k: v for k, v in state.items()}
    cfg, den, state, path = _fixture_file(tmp_path, "sd15", "sd15", fmt, mutate if fmt != "ckpt" else
                                          (lambda s: {"base": s}))
    got = read_official_state(path)
    assert set(got) == set(their_state(their_blocks(cfg, "sd15"), _meta))
    load_official(den, str(path), base_check="off")


def _err(tmp_path, mutate, **kw):
    cfg, den, state, path = _fixture_file(tmp_path, "sd15", "sd15", mutate=mutate)
    with pytest.raises(OfficialCheckpointError) as e:
        load_official(den, str(path), base_check="off", **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_wrong_shape_fails_with_one_line_naming_it(tmp_path):
    key = "down_blocks.1.attentions.0.transformer_blocks.0.conv1.conv_pool.weight"
    msg = _err(tmp_path, lambda s: {**s, key: s[key][:, :-1].contiguous()})
    assert "1 wrong" in msg and key in msg and "vs expected" in msg


def test_truncated_state_dict_fails_with_one_line_naming_the_missing(tmp_path):
    drop = "up_blocks.3.attentions.2.transformer_blocks.0.conv1."
    msg = _err(tmp_path, lambda s: {k: v for k, v in s.items() if not k.startswith(drop)})
    assert "1 missing" in msg and drop + "* (whole block)" in msg
    msg = _err(tmp_path, lambda s: {k: v for k, v in s.items() if not k.endswith("conv_out.bias")})
    assert "16 missing" in msg and "conv_out.bias" in msg


def test_leftover_keys_fail_with_one_line(tmp_path):
    extra = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(16, 16),
             "down_blocks.0.attentions.0.transformer_blocks.0.conv1.conv_mid.weight": torch.zeros(2),
             "not_a_module.weight": torch.zeros(1)}
    msg = _err(tmp_path, lambda s: {**s, **extra})
    assert "3 left over" in msg and all(k in msg for k in extra)


def test_resnet_conv1_is_the_denoisers_own_tensor_not_a_deltaconv_block(tmp_path):
    cfg, den, state, path = _fixture_file(tmp_path, "sd15", "sd15")
    key = "down_blocks.0.resnets.0.conv1.weight"
    new = torch.full_like(den.state_dict()[key], 0.25)
    from safetensors.torch import save_file

    save_file({**state, key: new}, str(path))
    load_official(den, str(path), base_check="off")
    assert torch.equal(den.state_dict()[key], new)            # copied in, as their loader does
    save_file({**state, key: new[:, :-1].contiguous()}, str(path))
    _, den2 = _fixture_denoiser("sd15")
    with pytest.raises(OfficialCheckpointError, match=re.escape(key)):
        load_official(den2, str(path), base_check="off")


def test_depthwise_bias_only_if_zero_and_other_stage_counts_need_scales(tmp_path):
    bias = "mid_block.attentions.0.transformer_blocks.0.conv1.gates.0.conv_spatial.bias"
    _, den, _, path = _fixture_file(tmp_path, "sd15", "sd15", mutate=lambda s: {**s, bias: torch.zeros(16)})
    load_official(den, str(path), base_check="off")
    assert "non-zero" in _err(tmp_path, lambda s: {**s, bias: torch.ones(16)})

    def third_stage(s):
        out = dict(s)
        for k in [k for k in s if k.endswith("gates.1.conv_spatial.weight")]:
            out[k.replace("gates.1", "gates.2")] = s[k].clone()
            w = s[k.replace("gates.1.conv_spatial.weight", "conv_out.weight")]
            out[k.replace("gates.1.conv_spatial.weight", "conv_out.weight")] = torch.cat([w, w[:, : w.shape[1] // 2]], 1)
        return out
    assert "pass scales=" in _err(tmp_path, third_stage)
    _, den, _, path = _fixture_file(tmp_path, "sd15", "sd15", mutate=third_stage)
    load_official(den, str(path), base_check="off", scales=(1, 0.5, 1 / 3))


def test_base_model_is_named_and_checked(fixture_hub):
    from aconvlib import load_pipeline
    from aconvlib.mixers import get_adapter

    pipe = load_pipeline("sd15")                 # SD1.5 itself: the released SD1.5 student's base is DreamShaper
    with pytest.raises(BaseModelMismatchError, match=r"distilled from Lykon/DreamShaper.*stable-diffusion-v1-5"):
        load_official(pipe, "7eu7d7/ConvFusion")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_official(pipe, "7eu7d7/ConvFusion", base_check="warn", keep_original=True)
    assert any("Lykon/DreamShaper" in str(x.message) for x in w)
    get_adapter(pipe).restore(pipe)
    pipe = load_pipeline("Lykon/DreamShaper")
    load_official(pipe, "convfusion-sd15-mjv5")
    assert get_adapter(pipe).official["name"] == "convfusion-sd15-mjv5"
    assert pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images.shape == (1, 64, 64, 3)


def test_hub_repo_picks_the_file_of_the_pipelines_model(fixture_hub):
    from aconvlib import load_pipeline
    from aconvlib.mixers import get_adapter

    for model, name in (("sdxl", "convfusion-sdxl-mjv5"), ("pixart-sigma-512", "convfusion-pixart512-mjv5")):
        pipe = load_pipeline(model)
        load_official(pipe, "7eu7d7/ConvFusion")
        assert get_adapter(pipe).official["name"] == name
    with pytest.raises(OfficialCheckpointError, match="huggingface-cli download 7eu7d7/ConvFusion"):
        load_official(load_pipeline("pixart-sigma-512"), "convfusion-pixart1024-laion", base_check="off")


def test_is_official_source():
    assert is_official_source("7eu7d7/ConvFusion") and is_official_source("convfusion-sd15-mjv5")
    assert is_official_source("x/ConvFusion-sdxl-mjv5.safetensors") and is_official_source("a.ckpt")
    assert not is_official_source("runs/my-adapter") and not is_official_source(None)


def test_fixture_repo_has_the_released_file_names(fixture_hub):
    """The ConvFusion fixture: the hub listing's files (less the one whose shapes are not known), each loadable."""
    from huggingface_hub import scan_cache_dir

    from aconvlib.models import RELEASED_CHECKPOINTS

    repo = next(r for r in scan_cache_dir(fixture_hub).repos if r.repo_id == "7eu7d7/ConvFusion")
    files = {f.file_name for rev in repo.revisions for f in rev.files}
    assert files == {".gitattributes"} | {c.filename for c in RELEASED_CHECKPOINTS.values()} - {
        "ConvFusion-pixart1024-laion.safetensors"}
