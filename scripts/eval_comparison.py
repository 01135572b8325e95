"""The stored rows of chapter 8: Table 3 and the NA kernel sweep on the embedded models (CPU, resumable).

    python scripts/eval_comparison.py table3 --n-prompts 32     # every variant of aconvlib.mini.compare
    python scripts/eval_comparison.py sweep --n-prompts 16      # NA with K from 3 to the grid side

Writes ``benchmarks/results/cpu_comparison/table3.json`` and ``na_sweep.json`` after every row (one row per
model and variant, or per model and K: the evaluator's result, its per-image results, ``intervals`` — adherence
k/n with its Wilson 95% interval, the FDD analogue with a bias-corrected bootstrap 95% interval over images, and
the paired difference to the teacher's row — and the run's settings), each row's classifier features in
``table3.npz`` / ``na_sweep.npz`` (float32), and skips rows already there, so a killed run resumes. The first ``--n-prompts`` held-out prompts, the default sampler (DPM-Solver++,
20 steps, CFG 4.5), seed 0: the same prompts and initial noise for every row. Threads: ``--threads`` (default 1).
"""
import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _eval_args import add_common_arguments

from aconvlib.book.labels import variant_label, variant_setting, variant_training
from aconvlib.mini import dataset as data
from aconvlib.mini.compare import QUALITY_COLUMNS, Method, comparison_variants, mount_variant
from aconvlib.mini.evaluate import evaluate_model, real_features
from aconvlib.mini.intervals import row_intervals
from aconvlib.mini.stored import StoredRows
from aconvlib.mixers.neighborhood import clip_kernel, neighborhood_attention
from aconvlib.models import get_denoiser, load_pipeline, self_attention_layers

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "cpu_comparison"
NA_KERNEL = {"mini-sd": 7, "mini-dit": 5}          # ≈ the paper's K = 13 on 64 tokens, scaled to each grid (0.2 of the side)
SWEEP = {"mini-sd": [3, 5, 7, 9, 13, 17, 31], "mini-dit": [3, 5, 7, 9, 11, 13, 15]}   # 31: full attention on 32 tokens


def meta(args, what: str) -> dict:
    return {"what": what, "command": "python scripts/eval_comparison.py " + " ".join(args.argv),
            "machine": f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
                       "shared with other jobs", "torch": torch.__version__, "n_prompts": args.n_prompts,
            "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed, "n_real": args.n_real,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


_REFERENCE = {}


def reference(args):
    """The real held-out features of the FDD analogue (computed once per run)."""
    if args.n_real not in _REFERENCE:
        _REFERENCE[args.n_real] = real_features(args.n_real)
    return _REFERENCE[args.n_real]


def check_prompts(store: StoredRows, args) -> None:
    have = store.meta.get("n_prompts")
    if store.rows and have != args.n_prompts:
        raise SystemExit(f"{store.path} holds rows on {have} prompts, not {args.n_prompts}: resume with "
                         f"--n-prompts {have} or write elsewhere (--out)")


def teacher_result(store: StoredRows, model: str, field: str, value, prompts, args) -> dict:
    """The stored teacher row of ``model`` as an evaluator result (per-image results and features), for the paired
    differences; the teacher is evaluated first, so it is always there."""
    t = store.find(model=model, **{field: value})
    if t is None:
        raise RuntimeError(f"{model}: the teacher's row must come first")
    key = f"{model}|{t['variant']}" if "variant" in t else f"{model}|K=None"
    return {"per_image": t["per_image"], "features": store.features[key], "fdd": t["fdd"], "prompts": prompts,
            "seed": args.seed, "n_real": args.n_real}


def run_table3(args) -> None:
    store = StoredRows(args.out / "table3.json")
    res = store.data
    check_prompts(store, args)
    res["meta"] = {**meta(args, "Table 3 on the embedded models (aconvlib.mini.compare.comparison_variants)"),
                   "na_kernel": NA_KERNEL, "window": {m: k * k for m, k in NA_KERNEL.items()}}
    done = {(r["model"], r["variant"]) for r in res["rows"]}
    prompts = data.prompts(args.n_prompts, "heldout")
    order = {(m, variant_label(v)): i for m in args.models
             for i, v in enumerate(comparison_variants(m, NA_KERNEL, {k: v * v for k, v in NA_KERNEL.items()})[0])}
    for m in args.models:
        variants, notes = comparison_variants(m, NA_KERNEL, {k: v * v for k, v in NA_KERNEL.items()})
        for n in notes:
            print("note:", n, flush=True)
        teacher = load_pipeline(m)
        for v in variants:
            label = variant_label(v)
            if (m, label) in done:
                continue
            t0 = time.time()
            with mount_variant(teacher, v) as pipe:
                r = evaluate_model(pipe, prompts, args.steps, args.guidance_scale, args.seed, n_real=args.n_real)
            base = None if v.method is Method.TEACHER else teacher_result(store, m, "method", Method.TEACHER.value,
                                                                          prompts, args)
            row = {"model": m, "variant": label, "method": v.method.value, "training": variant_training(v),
                   "setting": variant_setting(v),
                   **{k: r[k] for k in QUALITY_COLUMNS}, "per_image": r["per_image"],
                   "intervals": row_intervals(r, base, reference(args), args.n_boot), "seconds": time.time() - t0}
            store.add(row, r["features"].numpy(), f"{m}|{label}",
                      sort_key=lambda r: (args.models.index(r["model"]) if r["model"] in args.models else 99,
                                          order.get((r["model"], r["variant"]), 99)))
            print(json.dumps({k: x for k, x in row.items() if k != "per_image"}), flush=True)


def run_sweep(args) -> None:
    store = StoredRows(args.out / "na_sweep.json")
    res = store.data
    check_prompts(store, args)
    res["meta"] = {**meta(args, "NA kernel sweep (Fig. 6 extended), training-free"), "kernels": SWEEP}
    done = {(r["model"], r["K"]) for r in res["rows"]}
    prompts = data.prompts(args.n_prompts, "heldout")
    for m in args.models:
        pipe = load_pipeline(m)
        grids = sorted({lay.grid for lay in self_attention_layers(get_denoiser(pipe))}, reverse=True)
        for k in [None] + SWEEP[m]:
            if (m, k) in done:
                continue
            t0 = time.time()
            if k is None:
                r = evaluate_model(pipe, prompts, args.steps, args.guidance_scale, args.seed, n_real=args.n_real)
            else:
                with neighborhood_attention(pipe, k):
                    r = evaluate_model(pipe, prompts, args.steps, args.guidance_scale, args.seed, n_real=args.n_real)
            base = None if k is None else teacher_result(store, m, "K", None, prompts, args)
            row = {"model": m, "K": k, "grid": grids[0][0], "K/grid": None if k is None else k / grids[0][0],
                   "K_per_level": "full" if k is None else "/".join(str(clip_kernel(k, g)) for g in grids),
                   **{c: r[c] for c in QUALITY_COLUMNS}, "per_image": r["per_image"],
                   "intervals": row_intervals(r, base, reference(args), args.n_boot), "seconds": time.time() - t0}
            store.add(row, r["features"].numpy(), f"{m}|K={k}",
                      sort_key=lambda r: (args.models.index(r["model"]) if r["model"] in args.models else 99,
                                          -1 if r["K"] is None else r["K"]))
            print(json.dumps({k: x for k, x in row.items() if k != "per_image"}), flush=True)


def main(argv=None):
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["table3", "sweep"])
    add_common_arguments(ap, OUT)
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    (run_table3 if args.what == "table3" else run_sweep)(args)


if __name__ == "__main__":
    main()
