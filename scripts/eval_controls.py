"""The control rows of issue 20 on the embedded models, with intervals (CPU, resumable).

    python scripts/eval_controls.py --n-prompts 32          # every row of aconvlib.mini.compare.control_variants

Per model (``mini-sd``, ``mini-dit``): the teacher; self-attention removed (``none``); uniform attention
(``uniform``); NA with the paper's K scaled to the finest grid (13/64 of the side) and with the chapters' K; the
shipped ΔConv student; the CPU-budget ΔConv students at the paper's K and at the scaled K; the CPU-budget
LinFusion-style students from the teacher's weights and from scratch. Every row: the first ``--n-prompts``
held-out prompts, the default sampler (DPM-Solver++, 20 steps, CFG 4.5), seed 0 — the same prompts and initial
noise for every row — scored by ``aconvlib.mini.evaluate.evaluate_model``; adherence k/n with its Wilson 95%
interval, the FDD analogue with a bootstrap 95% interval over images, and the paired difference to the teacher
(adherence: paired bootstrap over prompts; FDD: paired bootstrap over images) with "difference" = its interval
excludes 0 (``aconvlib.mini.intervals``).

Writes ``benchmarks/results/cpu_controls/controls.json`` (rows) and ``controls.npz`` (each row's classifier
features, float32, for the FDD intervals) atomically after every row, progress to stdout; rows already there are
skipped, so a killed run resumes with the same command. Rows whose student folder is missing are named and
skipped (rerun once it exists). Threads: ``--threads`` (default 1).

    python scripts/eval_controls.py --n-prompts 32 --recompute-intervals   # no sampling: intervals from the stored
                                                                           # per-image results and features
"""
import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _eval_args import add_common_arguments

from aconvlib.book.labels import variant_label, variant_setting, variant_training
from aconvlib.mini import dataset as data
from aconvlib.mini.compare import (CHAPTER_NA_KERNEL, PAPER_K_FRACTION, Method, control_variants, finest_grid_side,
                                   mount_variant, paper_scaled_kernel, student_info)
from aconvlib.mini.evaluate import evaluate_model, real_features
from aconvlib.mini.intervals import row_intervals
from aconvlib.mini.stored import StoredRows
from aconvlib.mixers.neighborhood import clip_kernel
from aconvlib.models import get_denoiser, load_pipeline, self_attention_layers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "cpu_controls"


def kernel_per_level(v, grids) -> str | None:
    """K on each grid level, finest first: NA clips K to the grid (odd); ΔConv uses the adapter's K everywhere."""
    if v.kernel is None:
        return None
    return "/".join(str(clip_kernel(v.kernel, g) if v.method == "na" else v.kernel) for g in grids)


def folder_name(folder) -> str | None:
    if folder is None:
        return None
    folder = Path(folder).resolve()
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


def key(model: str, label: str) -> str:
    return f"{model}|{label}"


def stored_result(row: dict, feats: dict, prompts, args) -> dict:
    return {"per_image": row["per_image"], "features": feats[key(row["model"], row["row"])], "fdd": row["fdd"]["value"],
            "prompts": prompts, "seed": args.seed, "n_real": args.n_real}


def recompute(res: dict, feats: dict, prompts, reference, args) -> None:
    for r in res["rows"]:
        t = next(x for x in res["rows"] if x["model"] == r["model"] and x["method"] == Method.TEACHER.value)
        teacher = None if r is t else stored_result(t, feats, prompts, args)
        r.update(row_intervals(stored_result(r, feats, prompts, args), teacher, reference, args.n_boot))
        print(r["model"], r["row"], "recomputed", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(ap, OUT)
    ap.add_argument("--recompute-intervals", action="store_true",
                    help="recompute every stored row's intervals from its per-image results and features (no sampling)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = StoredRows(args.out / "controls.json")
    path, res, feats = store.path, store.data, store.features
    if res["rows"] and res["meta"].get("n_prompts") != args.n_prompts:
        sys.exit(f"{path} holds rows on {res['meta'].get('n_prompts')} prompts, not {args.n_prompts}: resume with "
                 f"--n-prompts {res['meta'].get('n_prompts')} or write elsewhere (--out)")
    started = res["meta"].get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = "python scripts/eval_controls.py " + " ".join(sys.argv[1:] if argv is None else argv)
    previous = res["meta"]
    res["meta"] = {
        "what": "issue 20 controls on the embedded models (aconvlib.mini.compare.control_variants)",
        "command": previous.get("command", command) if args.recompute_intervals else command,
        "machine": f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)), "
                   "shared with other jobs", "torch": torch.__version__, "n_prompts": args.n_prompts,
        "prompts": "the first n held-out prompts (aconvlib.mini.dataset.prompts(n, 'heldout'))",
        "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed, "n_real": args.n_real,
        "n_boot": args.n_boot, "conf": 0.95,
        "paper_k_fraction": PAPER_K_FRACTION, "chapter_na_kernel": CHAPTER_NA_KERNEL,
        "finest_grid_side": {m: finest_grid_side(m) for m in args.models},
        "paper_scaled_kernel": {m: paper_scaled_kernel(finest_grid_side(m)) for m in args.models},
        "intervals": {"adherence": "Wilson 95% (k of n images)", "fdd": "percentile bootstrap 95% over images",
                      "difference": "row − teacher on the same prompts and noise: paired percentile bootstrap 95% "
                                    "(adherence over prompts, FDD over images); 'difference' = interval excludes 0"},
        "started": started, "notes": [], **{k: v for k, v in previous.items() if k in ("finished", "wall_seconds")}}
    prompts = data.prompts(args.n_prompts, "heldout")
    reference = real_features(args.n_real)
    if args.recompute_intervals:
        res["meta"]["notes"] = [n for m in args.models for n in control_variants(m)[1]]
        res["meta"]["intervals_recomputed"] = {"command": command,
                                               "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        recompute(res, feats, prompts, reference, args)
        store.save()
        return
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed, n_real=args.n_real)
    order = {}
    for m in args.models:
        variants, notes = control_variants(m)
        res["meta"]["notes"] += notes
        for i, v in enumerate(variants):
            order[key(m, variant_label(v))] = (args.models.index(m), i)
        for n in notes:
            print("note:", n, flush=True)
        done = {r["row"] for r in res["rows"] if r["model"] == m}
        if all(variant_label(v) in done for v in variants):
            continue
        teacher_pipe = load_pipeline(m)
        grids = sorted({lay.grid for lay in self_attention_layers(get_denoiser(teacher_pipe))}, reverse=True)
        side = grids[0][0]
        trow = next((r for r in res["rows"] if r["model"] == m and r["method"] == Method.TEACHER.value), None)
        teacher = None if trow is None else stored_result(trow, feats, prompts, args)
        for v in variants:
            label, is_teacher = variant_label(v), v.method is Method.TEACHER
            if label in done:
                continue
            if not is_teacher and teacher is None:
                raise RuntimeError("the teacher row must come first (control_variants puts it first)")
            t0 = time.time()
            with mount_variant(teacher_pipe, v) as pipe:
                r = evaluate_model(pipe, prompts, **kw)
            seconds = time.time() - t0
            r["features"] = r["features"].numpy()
            row = {"model": m, "row": label, "method": v.method.value, "training": variant_training(v),
                   "setting": variant_setting(v),
                   "K": v.kernel, "grid": side, "K/grid": None if v.kernel is None else round(v.kernel / side, 4),
                   "K_per_level": kernel_per_level(v, grids), "folder": folder_name(v.folder),
                   "n": len(prompts), **row_intervals(r, None if is_teacher else teacher, reference, args.n_boot),
                   **{c: r[c] for c in ("shape", "color", "size", "position")},
                   "per_image": r["per_image"], "seconds": round(seconds, 1)}
            if v.folder is not None and v.method != "self-attention":
                info = student_info(Path(v.folder))
                row["student"] = {k: info.get(k) for k in ("steps", "batch", "samples", "minutes", "final_loss")}
                cfg = json.loads((Path(v.folder) / "adapter" / "config.json").read_text())
                if "init" in cfg or v.method == "linear":
                    row["student"]["init"] = cfg.get("init", "teacher")
            if is_teacher:
                teacher = r
            store.add(row, r["features"], key(m, label),
                      sort_key=lambda x: order.get(key(x["model"], x["row"]), (99, 99)))
            print(json.dumps({k: row[k] for k in ("model", "row", "k", "n", "adherence", "fdd", "diff_to_teacher",
                                                  "seconds")}), flush=True)
    missing = res["meta"]["notes"]
    res["meta"]["wall_seconds"] = round(sum(r["seconds"] for r in res["rows"]), 1)
    if not missing:
        res["meta"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.save()
    print("done" if not missing else f"done except {len(missing)} missing student(s): rerun once they exist", flush=True)


if __name__ == "__main__":
    main()
