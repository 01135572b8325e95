"""Real-model distillation on tiny random-weight checkpoints in the published layouts (SD1.5, SDXL with
text_time conditioning, PixArt-Σ): the pipeline's own encoders, latent caches, teacher-generated data,
the accelerated distiller (accumulation, mixed precision, EMA, shared weights, kill and resume), the
command line with its one-line errors, recipes, and data-parallel runs on two CPU processes."""
import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aconvlib.training.accelerated import AcceleratedDistiller, ResumeError, RunConfig, SharedTeacher
from aconvlib.training.accelerated import Distiller
from aconvlib.training.distill import DistillConfig, make_student
from aconvlib.training.encoding import (CacheSet, PipelineEncoder, build_image_cache, cached_batches,
                                        to_distill_batch)
from aconvlib.training.prompts import PromptError, load_prompts, shard_indices
from aconvlib.training.recipes import DataConfig, RecipeError, distill_model, load_recipe
from aconvlib.training.teacher_data import generate_teacher_data

REPO = Path(__file__).resolve().parents[1]


def _images(root: Path, n: int = 4, modes=("RGB",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (40, 30) if i % 2 else (30, 40)
        arr = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr).convert(modes[i % len(modes)])
        im.save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a small picture number {i}")
    return root


def _pipe(name):
    from aconvlib.models import load_pipeline

    p = load_pipeline(name)
    p.set_progress_bar_config(disable=True)
    return p


def _adapter_state(distiller):
    return {k: v.detach().clone() for k, v in distiller.adapter.state_dict().items()}


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ----- prompt files -------------------------------------------------------------------------------

def test_prompt_files_in_every_format_and_their_errors(tmp_path):
    (tmp_path / "p.txt").write_text("# a comment\na cat\n\n  a dog  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n"a dog"\n')
    (tmp_path / "p.csv").write_text("id,text\n1,a cat\n2,\"a dog, running\"\n")
    (tmp_path / "p.json").write_text('{"prompts": ["a cat", {"caption": "a dog"}]}')
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    assert load_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    assert load_prompts(tmp_path / "p.csv") == ["a cat", "a dog, running"]
    assert load_prompts(tmp_path / "p.json", limit=1) == ["a cat"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for path, match in (("missing.txt", "does not exist"), ("bad.jsonl", "line 2: not valid JSON"),
                        ("nocol.csv", "no column"), ("empty.txt", "holds no prompts")):
        with pytest.raises(PromptError, match=match):
            load_prompts(tmp_path / path)
    assert shard_indices(7, 2, 0, chunk=2) == [0, 1, 4, 5] and shard_indices(7, 2, 1, chunk=2) == [2, 3, 6]


# ----- the pipeline's encoders and the cache ------------------------------------------------------

def test_sdxl_and_pixart_batches_use_the_pipelines_own_encoders(fixture_hub, tmp_path):
    data = _images(tmp_path / "imgs")
    sdxl = _pipe("sdxl")
    enc = PipelineEncoder(sdxl)
    cache = build_image_cache(enc, data, tmp_path / "c-sdxl", model="sdxl", buckets="64x64", progress=False)
    x0, text, cond = next(cached_batches(cache, enc.kind, batch=4, caption_dropout=0.0)(0))
    assert x0.shape == (4, 4, 8, 8) and text.shape == (4, 77, 2048) and set(cond) == {"text_embeds", "time_ids"}
    # add_time_ids = (original h, w, crop top, left, target h, w), as the bucket preprocessing recorded them
    assert sorted(tuple(r[:2]) for r in cond["time_ids"].tolist()) == [(30, 40), (30, 40), (40, 30), (40, 30)]
    assert (cond["time_ids"][:, 4:] == 64).all()
    g = cache.gather(range(4))
    x0, text, cond = to_distill_batch("sdxl", g)
    i = g["captions"].index("a small picture number 0")
    pe, _, pooled, _ = sdxl.encode_prompt(["a small picture number 0"], device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
    assert torch.allclose(text[i], pe[0], atol=1e-2) and torch.allclose(cond["text_embeds"][i], pooled[0], atol=1e-2)
    # latents: the VAE posterior mean times the scaling factor (0.13025), of the bucketed 64x64 image
    from aconvlib.training.datasets import PreparedBuckets

    prep = PreparedBuckets(tmp_path / "c-sdxl" / "prep")
    j = [s["key"] for s in prep.samples].index(g["keys"][i])
    px = prep.load_batch([j])["pixel_values"]
    with torch.no_grad():
        ref = sdxl.vae.encode(px).latent_dist.mean * sdxl.vae.config.scaling_factor
    assert torch.allclose(x0[i], ref[0], atol=1e-2)
    # caption dropout gets SDXL's unconditional branch: zeros (force_zeros_for_empty_prompt)
    assert sdxl.config.force_zeros_for_empty_prompt
    u = cache.uncond()
    assert u["prompt_embeds"].abs().max() == 0 and u["pooled_prompt_embeds"].abs().max() == 0

    pix = _pipe("pixart-sigma-512")
    enc = PipelineEncoder(pix)
    cache = build_image_cache(enc, data, tmp_path / "c-pix", model="pixart-sigma-512", buckets="64x64",
                              progress=False)
    x0, text, cond = next(cached_batches(cache, enc.kind, batch=2, caption_dropout=1.0)(0))
    assert text.shape == (2, 300, 4096) and set(cond) == {"encoder_attention_mask"}
    e, m, _, _ = pix.encode_prompt([""], do_classifier_free_guidance=False, device="cpu")
    assert torch.allclose(text[0], e[0], atol=1e-2) and torch.equal(cond["encoder_attention_mask"][0], m[0])
    from aconvlib.models import denoise

    assert denoise(pix.transformer, x0, torch.tensor([10, 900]), text, **cond).shape == x0.shape


def test_latent_cache_is_reused_and_invalidated(fixture_hub, tmp_path):
    data = _images(tmp_path / "imgs")
    pipe = _pipe("sd15")
    enc = PipelineEncoder(pipe)
    calls = []
    orig = enc.encode_images
    enc.encode_images = lambda px: (calls.append(px.shape[0]), orig(px))[1]
    kw = dict(model="sd15", buckets="64x64", progress=False, encode_batch=2)
    a = build_image_cache(enc, data, tmp_path / "c", **kw)
    assert sum(calls) == 4 and a.num_samples == 4
    first = a.gather([0])
    b = build_image_cache(enc, data, tmp_path / "c", **kw)                  # nothing changed: reused
    assert sum(calls) == 4 and torch.equal(a.gather([0, 3])["latents"], b.gather([0, 3])["latents"])
    (data / "img2.txt").write_text("another caption")                        # the data changed: rebuilt
    build_image_cache(enc, data, tmp_path / "c", **kw)
    assert sum(calls) == 8
    pipe.vae.register_to_config(scaling_factor=0.5)                          # the encoding changed: rebuilt
    c = build_image_cache(enc, data, tmp_path / "c", **kw)
    assert sum(calls) == 12
    assert c.gather([0])["keys"] == first["keys"]
    assert torch.allclose(c.gather([0])["latents"].float() / 0.5, first["latents"].float() / 0.18215, atol=1e-2)


def test_teacher_data_is_generated_once_and_resumes_after_a_kill(fixture_hub, tmp_path):
    pipe = _pipe("pixart-sigma-512")
    enc = PipelineEncoder(pipe)
    prompts = ["a cat", "a dog", "a red car"]
    real_call, calls = type(pipe).__call__, []

    @functools.wraps(real_call)   # keeps the signature (the generator reads use_resolution_binning from it)
    def call(self, *a, **k):
        calls.append(len(a[0]))
        if len(calls) == 2 and getattr(self, "_die", False):
            raise KeyboardInterrupt("killed")
        return real_call(self, *a, **k)

    kw = dict(height=64, width=64, batch_size=2, num_inference_steps=2, progress=False)
    try:
        type(pipe).__call__ = call
        pipe._die = True
        with pytest.raises(KeyboardInterrupt):
            generate_teacher_data(pipe, enc, prompts, tmp_path / "t", **kw)
        pipe._die = False
        data = generate_teacher_data(pipe, enc, prompts, tmp_path / "t", **kw)   # resumes after batch 0
        assert calls == [2, 1, 1]
        again = generate_teacher_data(pipe, enc, prompts, tmp_path / "t", **kw)  # complete: reused
        assert calls == [2, 1, 1] and again.num_samples == 3
    finally:
        type(pipe).__call__ = real_call
    # the teacher's own sample at those settings, in the denoiser's latent space, with the prompts' encodings
    lat = pipe(prompts[:2], num_inference_steps=2, height=64, width=64, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(0), use_resolution_binning=False).images
    g = data.gather([0, 1])
    assert g["captions"] == prompts[:2] and g["latents"].shape == lat.shape == (2, 4, 8, 8)
    assert torch.allclose(g["latents"].float(), lat, atol=2e-3, rtol=1e-2)
    x0, text, cond = next(cached_batches(data, enc.kind, 2)(0))
    assert text.shape == (2, 300, 4096) and set(cond) == {"encoder_attention_mask"}
    other = generate_teacher_data(pipe, enc, prompts[:2], tmp_path / "t", **kw)   # other prompts: regenerated
    assert other.num_samples == 2


# ----- the accelerated distiller ------------------------------------------------------------------

def _sd15_run(tmp_path, name, run, cfg=None, resume=False, data=None, stop_at=None, pipe=None):
    pipe = pipe or _pipe("sd15")
    enc = PipelineEncoder(pipe)
    data = data or _images(tmp_path / "imgs")
    cache = build_image_cache(enc, data, tmp_path / "cache", model="sd15", buckets="64x64", progress=False)
    cfg = cfg or DistillConfig(steps=4, batch=4, warmup=2, ckpt_every=2, log_every=1)
    d = AcceleratedDistiller(pipe, cached_batches(cache, enc.kind, cfg.batch, cfg.seed, 0.25), cfg, tmp_path / name,
                             run=run, device="cpu", quiet=True, resume=resume, identity={"model": "sd15"})
    return d


def _rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ over lists of tensors (global norms)."""
    num = sum(((x - y).double() ** 2).sum() for x, y in zip(a, b)) ** 0.5
    return float(num / sum((y.double() ** 2).sum() for y in b) ** 0.5)


def test_same_step_as_the_reference_distiller_with_accumulation_and_shared_weights(fixture_hub, tmp_path):
    """One step's loss and (clipped) gradient equal the plain Distiller's, with or without shared weights and
    gradient accumulation, up to float summation order (compared before AdamW, whose first steps divide by |g|
    and so amplify rounding in near-zero gradients)."""
    cfg = DistillConfig(steps=2, batch=2, warmup=1, ckpt_every=10, log_every=1)
    teacher = _pipe("sd15")
    enc = PipelineEncoder(teacher)
    cache = build_image_cache(enc, _images(tmp_path / "imgs"), tmp_path / "cache", model="sd15", buckets="64x64",
                              progress=False)
    batches = cached_batches(cache, enc.kind, 2, 0, 0.25)
    ref = Distiller(teacher, make_student(teacher, seed=cfg.seed), batches, cfg, tmp_path / "ref", quiet=True)
    ref_terms = ref.train_step()
    ref_grads = [p.grad.clone() for p in ref.params]
    for name, pipe, run in (("copy", teacher, RunConfig(share_weights=False)),     # the teacher pipeline stays stock
                            ("shared", _pipe("sd15"), RunConfig(grad_accum=2))):
        d = AcceleratedDistiller(pipe, batches, cfg, tmp_path / name, run=run, device="cpu", quiet=True)
        terms = d.train_step()
        assert abs(float(terms["loss"]) - float(ref_terms["loss"])) < 1e-5, name
        assert _rel([p.grad for p in d.params], ref_grads) < 1e-3, name
        assert _max_diff(_adapter_state(d), dict(ref.adapter.state_dict())) < 2 * cfg.lr
    d.run()       # and the loop around it
    log = [json.loads(l) for l in (tmp_path / "shared" / "distill_log.jsonl").read_text().splitlines()]
    assert {"loss", "out", "feat", "lr", "samples_per_s", "mem_gb", "mem_kind"} <= set(log[0])
    # a checkpoint of the plain Distiller (no identity) resumes too; its adapter is checked against the model
    ref.step = 1
    ref.save()
    legacy = AcceleratedDistiller(teacher, batches, cfg, tmp_path / "ref", run=RunConfig(share_weights=False),
                                  device="cpu", quiet=True, resume=True)
    assert legacy.step == 1 and _max_diff(dict(ref.adapter.state_dict()), _adapter_state(legacy)) == 0


def test_shared_weights_teacher_pass_is_the_stock_model(fixture_hub, tmp_path):
    from aconvlib.mixers.convert import mixer_layers
    from aconvlib.models import denoise, self_attention_layers

    pipe = _pipe("sd15")
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 77, 768)
    stock_params = sum(p.numel() for p in pipe.unet.parameters())
    with torch.no_grad():
        ref = denoise(pipe.unet, x, t, text)
    d = _sd15_run(tmp_path, "r", RunConfig(), pipe=pipe)
    assert isinstance(d.shared, SharedTeacher) and d.teacher is d.student
    with torch.no_grad():
        with d.shared.active():
            assert not mixer_layers(d.student) and len(self_attention_layers(d.student)) == 16
            t_out = denoise(d.student, x, t, text)
        s_out = denoise(d.student, x, t, text)
    assert torch.allclose(t_out, ref, atol=1e-5) and not torch.allclose(s_out, ref, atol=1e-3)
    assert len(mixer_layers(d.student)) == 16
    # one copy of the frozen weights: only the adapter's parameters are new
    n_stock = stock_params
    n_attn = sum(p.numel() for m in d.shared.originals.values() for p in m.parameters())
    n_now = sum(p.numel() for p in d.student.parameters())
    assert n_now == n_stock - n_attn + sum(p.numel() for p in d.adapter.parameters())


def test_bf16_autocast_keeps_fp32_master_weights_and_checkpointing_runs(fixture_hub, tmp_path):
    run = RunConfig(mixed_precision="bf16", gradient_checkpointing=True, ema_decay=0.5)
    d = _sd15_run(tmp_path, "bf16", run, DistillConfig(steps=2, batch=1, warmup=1, ckpt_every=10, log_every=1))
    before = _adapter_state(d)
    s = d.run()
    assert all(p.dtype == torch.float32 for p in d.adapter.parameters())
    frozen = [p for n, p in d.student.named_parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert _max_diff(before, _adapter_state(d)) > 0
    log = [json.loads(l) for l in (tmp_path / "bf16" / "distill_log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert Path(s["adapter"]).is_dir() and Path(s["adapter_raw"]).is_dir()   # EMA result + last weights


def test_tensorboard_gets_the_jsonl_scalars_and_the_preview_images(fixture_hub, tmp_path):
    """With ``tensorboard=True`` the event file holds every numeric JSONL field per logged step (same values)
    and the preview grid at each ``sample_every`` step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aconvlib.training.accelerated import PreviewSampler

    pipe = _pipe("sd15")
    enc = PipelineEncoder(pipe)
    cache = build_image_cache(enc, _images(tmp_path / "imgs"), tmp_path / "cache", model="sd15", buckets="64x64",
                              progress=False)
    cfg = DistillConfig(steps=2, batch=2, warmup=1, ckpt_every=10, log_every=1)
    preview = PreviewSampler(pipe, enc, ["a red square"], px=64, steps=2)
    d = AcceleratedDistiller(pipe, cached_batches(cache, enc.kind, cfg.batch, cfg.seed, 0.25), cfg, tmp_path / "tb",
                             run=RunConfig(tensorboard=True, sample_every=1, share_weights=False), device="cpu",
                             quiet=True, identity={"model": "sd15"}, preview=preview)
    d.run()
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    log = [json.loads(l) for l in (tmp_path / "tb" / "distill_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("loss", "lr", "grad_norm", "samples_per_s"):
        got = {e.step: e.value for e in events.Scalars(f"distill/{key}")}
        assert got == pytest.approx({r["step"]: r[key] for r in steps}, rel=1e-6), key
    images = events.Images("samples")
    assert [e.step for e in images] == [1, 2]
    assert images[0].width > 0 and images[0].height > 0
    assert [r["samples"] for r in log if "samples" in r] == [str(tmp_path / "tb" / "samples" / f"step-00000{i}.png")
                                                             for i in (1, 2)]


class _Killed(Exception):
    pass


def test_kill_and_resume_equals_an_uninterrupted_run(fixture_hub, tmp_path):
    pipe = _pipe("sd15")   # share_weights=False: the pipeline stays stock, one load for the three runs
    run = RunConfig(ema_decay=0.9, share_weights=False)
    cfg = DistillConfig(steps=3, batch=2, warmup=2, ckpt_every=2, log_every=1)
    full = _sd15_run(tmp_path, "full", run, cfg, pipe=pipe)
    full.run()
    d = _sd15_run(tmp_path, "killed", run, cfg, pipe=pipe)

    def die():
        if d.step == 3:        # after the checkpoint of step 2, before the final one
            raise _Killed
    d.after_step = die
    with pytest.raises(_Killed):
        d.run()
    resumed = _sd15_run(tmp_path, "killed", run, cfg, resume=True, pipe=pipe)
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 3
    assert _max_diff(_adapter_state(full), _adapter_state(resumed)) == 0
    assert all(torch.equal(a, b) for a, b in zip(full.ema, resumed.ema))
    # a checkpoint of another configuration is refused, naming the difference
    with pytest.raises(ResumeError, match="batch: checkpoint 2 vs now 4"):
        _sd15_run(tmp_path, "killed", run, DistillConfig(steps=3, batch=4), resume=True, pipe=pipe)


# ----- the one call and the command line ----------------------------------------------------------

@pytest.mark.slow
def test_distill_sdxl_from_images_and_pixart_from_teacher_data(fixture_hub, tmp_path):
    from aconvlib.mixers.convert import load_mixer

    cfg = DistillConfig(steps=2, batch=2, warmup=1, log_every=1, ckpt_every=10)
    s = distill_model("sdxl", tmp_path / "sdxl", cfg=cfg, run=RunConfig(sample_every=2, sample_px=64, sample_steps=2),
                      data=DataConfig(data=str(_images(tmp_path / "imgs")), buckets="64x64"), device="cpu", quiet=True)
    assert s["finished"] and (tmp_path / "sdxl" / "samples" / "step-000002.png").is_file()
    fresh = _pipe("sdxl")
    load_mixer(fresh, s["adapter"])               # the result loads onto a stock pipeline
    (tmp_path / "prompts.txt").write_text("a cat\na dog\na red car\n")
    s = distill_model("pixart-sigma-512", tmp_path / "pix", cfg=cfg, run=RunConfig(),
                      data=DataConfig(prompts=str(tmp_path / "prompts.txt"), px=64, teacher_steps=2, teacher_batch=2),
                      device="cpu", quiet=True)
    teacher = tmp_path / "pix" / "cache" / "teacher"
    assert s["finished"] and CacheSet(teacher, *_parts_key(teacher)).num_samples == 3


def _parts_key(root):
    info = json.loads((root / "parts.json").read_text())
    return info["fingerprint"], info["dataset"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "aconvlib", "distill", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)


def test_bad_inputs_fail_before_any_work_with_one_line(tmp_path, capsys):
    from aconvlib.cli import main

    good = _images(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    nocap = _images(tmp_path / "nocap")
    (nocap / "img1.txt").unlink()
    broken = _images(tmp_path / "broken")
    (broken / "img2.png").write_bytes(b"not a png at all")
    mixed = _images(tmp_path / "mixed", modes=("RGB", "RGBA"))
    (tmp_path / "other").mkdir()
    torch.save({"identity": {"model": "sdxl"}, "config": {}, "run": {}}, tmp_path / "other" / "ckpt.pt")
    cases = [
        (["--data", tmp_path / "nowhere"], "does not exist"),
        (["--data", tmp_path / "empty"], "no images"),
        (["--data", nocap], "img1.png: no caption file img1.txt"),
        (["--data", broken], "img2.png: unreadable or corrupt image"),
        (["--data", mixed, "--image-modes", "same"], "mixed modes"),
        (["--data", good, "--buckets", "512x520"], "does not fit the model"),
        (["--data", good, "--buckets", "512x512", "--resume", "--out", tmp_path / "other"],
         "model: checkpoint 'sdxl' vs now 'sd15'"),
        (["--prompts", tmp_path / "none.txt"], "prompt file"),
        ([], "no data"),
        (["--data", good, "--prompts", tmp_path / "p.txt"], "not both"),
        (["--data", good, "--mixed-precision", "fp8"], "mixed_precision"),
    ]
    for args, match in cases:
        code = main(["distill", "--model", "sd15", "--device", "cpu", *map(str, args)])
        err = capsys.readouterr().err
        assert code == 1, (args, err)
        assert match in err and len(err.strip().splitlines()) == 1, (args, err)
    assert main(["distill", "--model", "mini-sd", "--data", str(good)]) == 1
    assert "procedural dataset" in capsys.readouterr().err


def test_recipes_load_with_their_variants_and_flags_override(tmp_path):
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    names = {p.stem for p in recipes}
    assert {"sd15", "sdxl", "pixart-sigma-512", "pixart-sigma-1024"} <= names
    import yaml

    for path in recipes:
        doc = yaml.safe_load(path.read_text())
        base = load_recipe(path)
        assert base["model"] == path.stem
        if not doc["model"].startswith("mini"):
            assert base["distill"]["batch"] == 16 and base["distill"]["lr"] == 3e-4
            assert tuple(base["distill"]["betas"]) == (0.9, 0.99) and base["distill"]["feature_weight"] == 1e-3
            assert {"paper", "single-gpu"} <= set(doc["variants"])
            for v in doc["variants"]:
                load_recipe(path, v)
            est = doc["estimates"]
            assert "estimated" in est["basis"] and est["paper"]["memory_gb"] > 0
    (tmp_path / "bad.yaml").write_text("model: sd15\ndistill: {batchsize: 3}\n")
    with pytest.raises(RecipeError, match="unknown distill field"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match="no variant"):
        load_recipe(REPO / "recipes" / "sd15.yaml", "nope")
    from aconvlib.cli import build_parser
    from aconvlib.cli.options import config_from_args

    a = build_parser().parse_args(["distill", "--recipe", "recipes/sd15.yaml", "--lr", "1e-4", "--no-share-weights"])
    r = load_recipe(REPO / a.recipe)
    assert config_from_args(DistillConfig, a, a.distill_fields, base=r["distill"]).lr == 1e-4
    assert config_from_args(RunConfig, a, a.run_fields, base=r["run"]).share_weights is False


# ----- many processes -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_give_the_adapter_of_one(hub_root, tmp_path):
    """torchrun (what accelerate launch runs) with 2 gloo processes vs 1 process, same global batch."""
    from aconvlib.testing.hub_fixtures import hub_cache_dir

    data = _images(tmp_path / "imgs", n=6)
    hub = hub_cache_dir(hub_root)
    env = {**os.environ, "HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--model", "sdxl", "--data", data, "--buckets", "64x64", "--steps", "3", "--batch", "4", "--device",
              "cpu", "--caption-dropout", "0.3", "--grad-accum", "1", "--encode-batch", "2", "--log-every", "1"]
    one = _cli(*common, "--out", tmp_path / "one", env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "aconvlib", "distill", *map(str, common), "--out", tmp_path / "two",
                          "--cache-dir", tmp_path / "two-cache"], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout.strip().splitlines()[-1])["world_size"] == 2
    assert json.loads((tmp_path / "two-cache" / "latents" / "parts.json").read_text())["world"] == 2
    from safetensors.torch import load_file

    # the same losses and gradient norms step by step (the first step's are computed before any update, so
    # they agree to float precision; a wrong gradient scale would show in grad_norm), and the same adapter up
    # to AdamW's amplification of rounding in near-zero gradients
    logs = [[json.loads(l) for l in (tmp_path / r / "distill_log.jsonl").read_text().splitlines() if '"loss"' in l]
            for r in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 3
    for x, y in zip(*logs):
        for k in ("loss", "out", "feat", "grad_norm"):
            assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]) + 1e-6, (k, x, y)
    a = load_file(tmp_path / "one" / "adapter" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and _max_diff(a, b) < 3e-4


def _capture_child(rank, world, port, out, kw):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate import PartialState

    from aconvlib.book.studies import capture_study

    study = capture_study("mini-dit", output_dir=out, accelerator=PartialState(cpu=True), **kw)
    torch.save({"maps": study.maps, "images": study.images, "counts": None}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_sharded_capture_study_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    from aconvlib.book.studies import capture_study

    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\na green triangle\n")
    kw = dict(prompts=str(tmp_path / "prompts.txt"), steps=2, weights="random", verbose=False, batch_size=1)
    mp.spawn(_capture_child, args=(2, _free_port(), str(tmp_path / "two"), kw), nprocs=2)
    one = capture_study("mini-dit", output_dir=None, **kw)
    assert len(one.prompts) == 3
    for rank in (0, 1):
        two = torch.load(tmp_path / "two" / f"rank{rank}.pt", weights_only=False)
        assert (two["images"] == one.images).all()
        assert max((two["maps"][n] - one.maps[n]).abs().max().item() for n in one.maps) < 1e-6
    assert len(list((tmp_path / "two" / "captures").glob("*.pt"))) == 1   # written once, by the main process


@pytest.mark.slow
def test_embedded_model_through_the_same_command(tmp_path):
    r = _cli("--model", "mini-dit", "--steps", "2", "--batch", "2", "--out", tmp_path / "m", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["finished"] and (tmp_path / "m" / "adapter" / "config.json").is_file()
