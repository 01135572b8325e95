"""Write (or refresh) chapter 5's stored NA controls (aconvlib.book.controls.live_na_controls with a store).

Under the `smoke` profile chapter 5 reads its classifier-scored Fig. 6 test (the model's own self-attention, NA,
no self-attention and uniform attention, `na_eval_prompts` held-out prompts each) from one store per condition in
`na_stored`, instead of sampling them live; an entry is used only when the weights, prompts and sampler settings
are the same (aconvlib.book.stored_evals). Run this after retraining an embedded model or changing those
settings (the chapter says "live" until the store is refreshed), with the chapter's own settings:

    python scripts/store_na_controls.py            # the smoke profile's settings for chapter 05
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from aconvlib.book.controls import live_na_controls
from aconvlib.book.runner import book_root, load_profile
from aconvlib.book.studies import load_study_pipeline


def main(profile: str = "smoke") -> None:
    p = load_profile(profile, "05_erf")
    if not p.get("na_stored"):
        raise SystemExit(f"profile {profile!r} names no na_stored for chapter 05_erf: nothing to write")
    torch.manual_seed(p.get("seed", 0))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    model = p["na_model"]
    store = (book_root() / "notebooks" / p["na_stored"]).resolve() / model
    pipe = load_study_pipeline(model, "cpu", p.get("dtype", "float32"))
    t0 = time.time()
    res = live_na_controls(pipe, p["na_eval_prompts"], p["na_kernel"], steps=p["steps"],
                           guidance_scale=p["guidance_scale"], seed=p["seed"], store=store,
                           n_images=p["na_prompts"], write=True)
    for label, r in res.items():
        print(f"{model} · {label}: adherence {r['prompt_adherence']:.3f}, FDD {r['fdd']:.1f}")
    print(f"{time.time() - t0:.0f} s -> {Path(store).parent}")


if __name__ == "__main__":
    main()
