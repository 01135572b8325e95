"""Stored evaluations: an expensive :func:`aconvlib.mini.evaluate_model` call reused from a committed run when, and
only when, everything it depends on is the same.

Chapter 7 generates its cross-resolution images (128 px, four times the tokens of the models' 64 px, and
self-attention's cost grows with their square) in most of its execution time. Under the ``smoke`` profile it reads
them from a store committed in ``benchmarks/results/`` instead, so that a class can run the chapter live in
minutes. An entry is keyed by a fingerprint of

- the pipeline's weights (every tensor of its denoiser and text encoder, adapters included),
- the prompts, in order, and the sampler settings (steps, guidance scale, seed, height, width),

so a retrained model, another adapter, prompt or setting misses the store and is evaluated live (the chapter
says which). A store holds the evaluation's per-image results and classifier features (so the intervals and the
FDD analogue are computed as for a live run) and the first images as 8-bit PNG-compressed arrays.

Writing a store is explicit: the same call with ``write=True`` (the chapter's text gives the command).
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from ..utils import atomic_write, fingerprint, tensors_fingerprint

__all__ = ["evaluate_stored", "weights_fingerprint"]

FORMAT = "aconv-stored-evaluations/1"
_KEEP = ("n_prompts", "prompt_adherence", "shape", "color", "size", "position", "fdd", "steps", "guidance_scale",
         "scheduler", "per_image", "prompts", "seed", "n_real")


def weights_fingerprint(pipe) -> str:
    """sha256 (16 hex digits) of every tensor of the pipeline's denoiser and text encoder, in name order
    (:func:`aconvlib.utils.tensors_fingerprint`)."""
    parts = [(part, getattr(pipe, part, None)) for part in ("unet", "transformer", "text_encoder")]
    return tensors_fingerprint((f"{part}.{name}", t) for part, module in parts if module is not None
                               for name, t in sorted(module.state_dict().items()))


def _paths(store: Path) -> tuple[Path, Path]:
    store = Path(store)
    return store.with_suffix(".json"), store.with_suffix(".npz")


def _load(store: Path) -> tuple[dict, dict]:
    meta_path, arr_path = _paths(store)
    if not meta_path.exists():
        return {"format": FORMAT, "entries": {}}, {}
    import numpy as np

    meta = json.loads(meta_path.read_text())
    with np.load(arr_path) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def evaluate_stored(pipe, prompts: Sequence[str], store: Optional[Path], *, label: str, n_images: int,
                    write: bool = False, **settings) -> dict:
    """``evaluate_model(pipe, prompts, return_images=True, **settings)``, read from ``store`` when it holds an entry
    with the same key (see the module docstring), else computed (and added to the store when ``write``).

    Returns the evaluation dict with ``features`` (tensor), ``images`` (the first ``n_images``, float in [0, 1];
    8-bit values when read from the store) and ``source``: ``"stored <file> (<date>)"`` or ``"live"``."""
    import numpy as np
    import torch

    from ..mini import evaluate_model

    key = fingerprint({"weights": weights_fingerprint(pipe), "prompts": list(prompts),
                       **{k: settings[k] for k in sorted(settings)}})
    meta, arrays = _load(store) if store is not None else ({"entries": {}}, {})
    entry = meta["entries"].get(key)
    if entry is not None and not write:
        r = dict(entry["result"])
        r["features"] = torch.from_numpy(arrays[f"{key}/features"].astype(np.float32))
        r["images"] = torch.from_numpy(arrays[f"{key}/images"].astype(np.float32) / 255.0)
        r["source"] = f"stored {_paths(store)[0].name} ({entry['written'][:10]})"
        return r
    r = evaluate_model(pipe, list(prompts), return_images=True, **settings)
    r["images"] = r["images"][:n_images]
    r["source"] = "live"
    if write and store is not None:
        meta.setdefault("entries", {})[key] = {
            "label": label, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "result": {k: r[k] for k in _KEEP if k in r}}
        arrays[f"{key}/features"] = r["features"].float().numpy()
        arrays[f"{key}/images"] = (r["images"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        meta_path, arr_path = _paths(store)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(arr_path, buf.getvalue())
        atomic_write(meta_path, json.dumps(meta, indent=1, ensure_ascii=False))
    return r
