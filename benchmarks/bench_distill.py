"""Distillation throughput and peak memory, measured on this machine, and the recipes' GPU estimates.

Measure (default): one distillation step = teacher forward + student forward + backward through the frozen
denoiser into the ΔConv adapter + AdamW step (:class:`aconvlib.training.accelerated.AcceleratedDistiller`,
shared weights, fp32, no checkpointing), on random-weight denoisers of the published architectures
(``load_denoiser(name, weights=False)``) with random latents and text states of the real shapes (SD1.5:
77×768 CLIP states; PixArt-Σ: 300×4096 T5 states and mask). Each (model, batch) runs in a fresh process so that
its peak memory (``ru_maxrss`` on a CPU, ``max_memory_allocated`` on a GPU) is its own; samples/s is the global
batch over the median step time after warm-up. Ratios are against batch 1 of the same model in the same run.

    python benchmarks/bench_distill.py --px 256 --batches 1,2,4 --markdown benchmarks/results/bench_distill_cpu.md

Estimate (``--estimate``): no GPU was available to this project when the recipes were written, so their
memory and time are computed, not measured, from the architecture alone on the ``meta`` device:

* FLOPs per sample and step: ``torch.utils.flop_counter.FlopCounterMode`` over the teacher forward, the
  student forward and the student backward (activation gradients through the frozen layers, weight
  gradients of the adapter only; with gradient checkpointing the backward's recomputation is counted too;
  depthwise-convolution backward counted as 2× its forward, see ``_conv_backward_flop``);
* time per 1k steps = 1000 × batch × FLOPs / (peak dense bf16/fp16 tensor FLOP/s × assumed utilisation
  ``--mfu``, 0.35 by default) — the utilisation is an assumption, not a measurement;
* memory = frozen weights (one copy, shared teacher/student) in the weight dtype + adapter (fp32 weights,
  gradients, AdamW moments, EMA) + the tensors autograd saves for the student backward (counted with
  ``saved_tensors_hooks`` on the meta device with the weights in the weight dtype; with checkpointing only the
  checkpointed blocks' inputs) at the recipe's micro-batch + 1.5 GiB (CUDA context, allocator, cached batch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

SCHEDULERS = {"unet": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
              "dit": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)}
# Peak dense tensor-core FLOP/s (bf16, or fp16 where the GPU has no bf16), vendor data sheets.
GPUS = {"A100-80GB": 312e12, "H100-SXM": 989e12, "L4": 121e12, "T4": 65e12}


def _fake_pipe(model: str, device="cpu", dtype=torch.float32):
    from diffusers import DDPMScheduler

    from aconvlib.models import get_spec, load_denoiser

    spec = get_spec(model)
    den = load_denoiser(model, weights=False, device=device, dtype=dtype)
    attr = "unet" if spec.family == "unet" else "transformer"
    return SimpleNamespace(**{attr: den}, scheduler=DDPMScheduler(num_train_timesteps=1000, **SCHEDULERS[spec.family])), spec


def _batches(spec, den, batch: int, px: int, device="cpu"):
    L, D = _text_shape(den)
    g = torch.Generator().manual_seed(0)
    h = px // spec.latent_factor

    def batches(start):
        while True:
            x0 = torch.randn(batch, 4, h, h, generator=g)
            text = torch.randn(batch, L, D, generator=g)
            if spec.family == "dit":
                mask = torch.zeros(batch, L, dtype=torch.long)
                mask[:, :120] = 1
                yield x0, text, {"encoder_attention_mask": mask}
            else:
                yield x0, text, {}
    return batches


def measure_one(model: str, batch: int, px: int, steps: int, warmup: int, device: str, mixed_precision: str) -> dict:
    from aconvlib.training.accelerated import AcceleratedDistiller, RunConfig
    from aconvlib.training.distill import DistillConfig

    pipe, spec = _fake_pipe(model, device)
    cfg = DistillConfig(steps=warmup + steps, batch=batch, warmup=1, log_every=10**6, ckpt_every=10**6)
    with tempfile.TemporaryDirectory() as out:
        d = AcceleratedDistiller(pipe, _batches(spec, pipe.unet if spec.family == 'unet' else pipe.transformer, batch, px), cfg, out, run=RunConfig(mixed_precision=mixed_precision),
                                 device=device, quiet=True)
        times = []
        for i in range(warmup + steps):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            d.train_step()
            d.step += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    if device.startswith("cuda"):
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = sum(p.numel() for p in d.student.parameters())
    return {"model": model, "batch": batch, "px": px, "s_per_step": s, "samples_per_s": batch / s, "peak_gb": mem,
            "steps": steps, "params_m": params / 1e6, "adapter_m": sum(p.numel() for p in d.params) / 1e6}


def measure(args) -> list[dict]:
    rows = []
    for model in args.models.split(","):
        for b in [int(x) for x in args.batches.split(",")]:
            cmd = [sys.executable, __file__, "--one", model, str(b), "--px", str(args.px), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device, "--mixed-precision", args.mixed_precision]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                raise SystemExit(f"{model} batch {b} failed:\n{r.stderr[-3000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    for model in {r["model"] for r in rows}:
        base = next((r for r in rows if r["model"] == model and r["batch"] == 1), None)
        for r in rows:
            if r["model"] == model and base:
                r["throughput_x"] = r["samples_per_s"] / base["samples_per_s"]
                r["memory_x"] = r["peak_gb"] / base["peak_gb"]
    return rows


# --------------------------------------------------------------------------------------------------
# Estimates for the recipes (meta device: nothing is allocated or computed)
# --------------------------------------------------------------------------------------------------

def _text_shape(den) -> tuple[int, int]:
    """(tokens, width) of the text states the denoiser takes: CLIP 77 × cross_attention_dim, T5 300 × caption_channels."""
    cfg = den.config
    if getattr(cfg, "caption_channels", None):
        return 300, int(cfg.caption_channels)
    return 77, int(cfg.cross_attention_dim)


def _inputs(spec, den, batch, px, dtype):
    L, D = _text_shape(den)
    h = px // spec.latent_factor
    x = torch.randn(batch, 4, h, h, device="meta", dtype=dtype)
    text = torch.randn(batch, L, D, device="meta", dtype=dtype)
    cond = {}
    if spec.family == "dit":
        cond = {"encoder_attention_mask": torch.ones(batch, L, device="meta", dtype=torch.long)}
    if getattr(den.config, "addition_embed_type", None) == "text_time":
        pooled = den.config.projection_class_embeddings_input_dim - 6 * den.config.addition_time_embed_dim
        cond = {"text_embeds": torch.randn(batch, pooled, device="meta", dtype=dtype),
                "time_ids": torch.randn(batch, 6, device="meta", dtype=dtype)}
    return x, text, cond


def _call(den, spec, x, text, cond):
    """The denoiser's forward on meta tensors (the family's call, without the timestep tracker)."""
    b = x.shape[0]
    t = torch.zeros(b, device="meta", dtype=torch.long)
    if spec.family == "dit":
        out = den(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=cond["encoder_attention_mask"],
                  added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        return out.chunk(2, dim=1)[0] if out.shape[1] == 2 * x.shape[1] else out
    added = {k: cond[k] for k in ("text_embeds", "time_ids")} if cond else None
    return den(x, t, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False)[0]


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient (input, weight) costs what the forward
    costs. (torch's own formula ignores ``groups`` in the weight gradient and overcounts a depthwise conv —
    the ΔConv blocks' — by its channel count.)"""
    from torch.utils.flop_counter import conv_flop_count

    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def estimate_step(model: str, px: int, micro_batch: int, dtype=torch.bfloat16, checkpointing: bool = False,
                  kernel_sizes="paper") -> dict:
    """FLOPs per sample and step, and the bytes autograd saves for the student backward at ``micro_batch``."""
    from aconvlib.mixers.convert import get_adapter, latent_size, to_mixer
    from aconvlib.models import get_spec, load_denoiser

    spec = get_spec(model)
    den = load_denoiser(model, weights=False, device="meta", dtype=dtype).requires_grad_(False)
    x, text, cond = _inputs(spec, den, 1, px, dtype)
    with _flop_counter() as fc, torch.no_grad():
        _call(den, spec, x, text, cond)
    teacher = fc.get_total_flops()
    weights = sum(p.numel() * p.element_size() for p in den.parameters())
    to_mixer(den, "deltaconv", kernel_sizes=kernel_sizes)
    adapter = get_adapter(den)
    adapter.tracker.remove()             # the pre-hook reads the timestep's value, which meta tensors lack
    torch.nn.Module.to(adapter, dtype=dtype)
    adapter.requires_grad_(True)
    n_adapter = sum(p.numel() for p in adapter.parameters())
    weights_student = sum(p.numel() * p.element_size() for p in den.parameters()) - n_adapter * adapter.dtype.itemsize
    h = px // spec.latent_factor
    if checkpointing:
        den.enable_gradient_checkpointing()
    den.train()
    with latent_size(den, (h, h)):
        with _flop_counter() as fs:
            out = _call(den, spec, x, text, cond)
            out.float().pow(2).mean().backward()
        student = fs.get_total_flops()
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t
        xb, tb, cb = _inputs(spec, den, micro_batch, px, dtype)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _call(den, spec, xb, tb, cb)
    return {"model": model, "px": px, "teacher_gflop": teacher / 1e9, "student_fwd_bwd_gflop": student / 1e9,
            "step_gflop_per_sample": (teacher + student) / 1e9, "frozen_weight_bytes": weights_student,
            "teacher_weight_bytes": weights, "adapter_params": n_adapter, "saved_bytes": saved[0],
            "micro_batch": micro_batch, "checkpointing": checkpointing}


def estimate_recipe(model: str, px: int, batch: int, micro_batch: int, dtype: str, checkpointing: bool, gpu: str,
                    mfu: float, ema: bool = True) -> dict:
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    e = estimate_step(model, px, micro_batch, dt, checkpointing)
    flops = e["step_gflop_per_sample"] * 1e9 * batch   # with checkpointing the counter saw the recomputation too
    sec_per_step = flops / (GPUS[gpu] * mfu)
    adapter_bytes = e["adapter_params"] * 4 * (4 + (1 if ema else 0))   # weights, grads, 2 Adam moments, EMA
    mem = e["teacher_weight_bytes"] + adapter_bytes + e["saved_bytes"] + 1.5 * 2**30   # shared: the stock weights once
    return {**e, "batch": batch, "gpu": gpu, "mfu": mfu, "dtype": dtype, "sec_per_step": sec_per_step,
            "min_per_1k_steps": sec_per_step * 1000 / 60, "memory_gb": mem / 2**30}


RECIPES = [  # model, px, batch, micro-batch, dtype, checkpointing, gpu  (the recipes/*.yaml settings)
    ("sd15", 512, 16, 16, "bf16", False, "A100-80GB"), ("sd15", 512, 16, 4, "fp16", True, "T4"),
    ("sdxl", 1024, 16, 16, "bf16", True, "A100-80GB"), ("sdxl", 1024, 16, 1, "bf16", True, "L4"),
    ("pixart-sigma-512", 512, 16, 16, "bf16", False, "A100-80GB"), ("pixart-sigma-512", 512, 16, 4, "bf16", True, "L4"),
    ("pixart-sigma-1024", 1024, 16, 16, "bf16", True, "A100-80GB"), ("pixart-sigma-1024", 1024, 16, 2, "bf16", True, "L4"),
]


def estimate(args) -> list[dict]:
    rows = []
    for model, px, batch, micro, dtype, ckpt, gpu in RECIPES:
        if args.models != "all" and model not in args.models.split(","):
            continue
        r = estimate_recipe(model, px, batch, micro, dtype, ckpt, gpu, args.mfu)
        print(json.dumps({k: r[k] for k in ("model", "px", "batch", "micro_batch", "dtype", "checkpointing", "gpu",
                                            "step_gflop_per_sample", "memory_gb", "min_per_1k_steps")}), flush=True)
        rows.append(r)
    return rows


# --------------------------------------------------------------------------------------------------

def to_markdown(rows, args, seconds: float) -> str:
    lines = ["# Distillation throughput and peak memory (CPU)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared with other "
             f"jobs), torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s); "
             f"{time.strftime('%Y-%m-%d')}.", "",
             f"Command: `python benchmarks/bench_distill.py --models {args.models} --px {args.px} --batches {args.batches} "
             f"--steps {args.steps} --warmup {args.warmup}{f' --threads {args.threads}' if args.threads else ''}` "
             f"({seconds / 60:.1f} min).", "",
             "One step = teacher forward + student forward + backward into the ΔConv adapter + AdamW "
             "(AcceleratedDistiller, shared weights, fp32), random weights of the published architecture, "
             f"{args.px}×{args.px} px; median over {args.steps} steps after {args.warmup} warm-up step(s); peak memory "
             "= the process's peak RSS (weights, activations, and the Python/torch runtime: ~0.5 GB).", "",
             "| model | denoiser params (M) | adapter params (M) | batch | s/step | samples/s | × batch 1 | peak GB | × batch 1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_m']:.0f} | {r['adapter_m']:.1f} | {r['batch']} | {r['s_per_step']:.2f} | "
                     f"{r['samples_per_s']:.3f} | {r.get('throughput_x', float('nan')):.2f} | {r['peak_gb']:.2f} | "
                     f"{r.get('memory_x', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="sd15,pixart-sigma-512")
    p.add_argument("--px", type=int, default=256)
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mixed-precision", default="no")
    p.add_argument("--threads", type=int, default=0, help="OMP threads per run (0: torch's default)")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--estimate", action="store_true", help="print the recipes' GPU estimates (meta device)")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed GPU utilisation for --estimate")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.px, args.steps, args.warmup, args.device,
                                     args.mixed_precision)))
        return
    if args.estimate:
        if args.models == "sd15,pixart-sigma-512":
            args.models = "all"
        rows = estimate(args)
        if args.markdown:
            Path(args.markdown).write_text(json.dumps(rows, indent=1))
        return
    t0 = time.time()
    rows = measure(args)
    md = to_markdown(rows, args, time.time() - t0)
    print(md)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(md)


if __name__ == "__main__":
    main()
