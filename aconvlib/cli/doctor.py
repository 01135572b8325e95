"""``aconv doctor``: what this machine can run — device, memory, versions, cached checkpoints, chapters."""
from __future__ import annotations

import os

from ..utils import module_version


def chapter_models(params: dict) -> list[str]:
    """The models a chapter loads under a profile's parameters (``models``, ``na_model``, ``real_models``)."""
    na = [params["na_model"]] if params.get("na_model") else []
    return list(dict.fromkeys(list(params.get("models") or []) + na + list(params.get("real_models") or [])))


def report() -> dict:
    """The facts ``aconv doctor`` prints, as a dict (also for tests)."""
    import torch

    from ..models import list_models
    from ..models.memory import estimate_run_bytes
    from ..models.registry import _not_in_cache

    out = {"versions": {m: module_version(m) for m in ("aconvlib", "torch", "diffusers", "transformers", "accelerate",
                                                  "triton", "natten")}}
    from ..book.budget import available_memory

    if torch.cuda.is_available():
        mem = available_memory("cuda")
        out["device"] = {"type": "cuda", "name": torch.cuda.get_device_name(), "available_gib": mem.bytes / 2**30,
                         "total_gib": torch.cuda.mem_get_info()[1] / 2**30, "memory_source": mem.source}
    else:
        mem = available_memory("cpu")
        out["device"] = {"type": "cpu", "name": f"CPU, {os.cpu_count()} cores", "available_gib": mem.bytes / 2**30,
                         "memory_source": mem.source}
    dtype = "float16" if out["device"]["type"] == "cuda" else "float32"
    rows = []
    for s in list_models():
        cached = True if s.embedded else not any(_not_in_cache(r) for r in (s.hub_id, s.components_from) if r)
        run = estimate_run_bytes(s.name, dtype, batch=1, capture=False)
        est, avail = run.total / 2**30, out["device"]["available_gib"]
        rows.append({"model": s.name, "cached": cached, "est_gib": est, "fits": cached and est < avail,
                     "offload_gib": run.offloaded_total / 2**30,
                     "fits_offloaded": cached and est >= avail and run.offloaded_total / 2**30 < avail})
    out["models"] = rows
    out["released"] = released_rows()
    return out


def released_rows() -> list[dict]:
    """The authors' released ΔConv students (:data:`aconvlib.models.RELEASED_CHECKPOINTS`): in the cache or not,
    and whether their base (the model each was distilled from) is."""
    from ..models import RELEASED_CHECKPOINTS
    from ..models.registry import _not_in_cache
    from ..models.released import released_path

    return [{"name": c.name, "model": c.model, "file": c.source, "cached": released_path(c) is not None,
             "base": c.base, "base_cached": not _not_in_cache(c.base)} for c in RELEASED_CHECKPOINTS.values()]


def _doctor(args) -> None:
    r = report()
    d = r["device"]
    print(f"device: {d['name']} ({d['type']}), memory a run can use {d['available_gib']:.1f} GiB ({d['memory_source']})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    print(f"{'model':<20} {'weights here':<13} {'est. GiB (batch 1, CFG)':>24}  runnable here")
    for m in r["models"]:
        runnable = ("yes" if m["fits"] else
                    f"with pipe.enable_model_cpu_offload() ({m['offload_gib']:.1f} GiB)" if m["fits_offloaded"] else "no")
        print(f"{m['model']:<20} {'yes' if m['cached'] else 'no':<13} {m['est_gib']:>24.1f}  {runnable}")
    print("the authors' released ΔConv students (load_official; chapters 07/08 use the mjv5 ones when cached):")
    for c in r["released"]:
        print(f"  {c['name']:<28} {'yes' if c['cached'] else 'no':<4} base {c['base']} "
              f"({'cached' if c['base_cached'] else 'not cached'})")
    try:
        from ..book.runner import load_profile, select_chapters

        print("chapters under profile 'full' (models they need):")
        import json

        for ch in select_chapters(None):
            p = load_profile("full", ch.stem)
            weights = json.loads(ch.read_text())["metadata"].get("aconv", {}).get("needs_weights", True)
            need = chapter_models(p) if weights else []
            ok = all(next((m2["fits"] for m2 in r["models"] if m2["model"] == m), True) for m in need)
            print(f"  {ch.stem:<22} {'yes' if ok else 'no ':<4} {', '.join(dict.fromkeys(need)) or '-'}")
    except Exception as e:  # noqa: BLE001 - outside a checkout there are no chapters to list
        print(f"chapters: not listed ({e})")


def register(sub) -> None:
    p = sub.add_parser("doctor", help="device, memory, versions, cached checkpoints and runnable chapters")
    p.set_defaults(func=_doctor)
