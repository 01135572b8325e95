"""Write (or refresh) chapter 7's stored generations, 64 px and 128 px (aconvlib.book.stored_evals).

The chapter reads them under the `smoke` profile instead of generating them live; an entry is used only when
the weights, prompts and sampler settings are the same. Run this after retraining or re-distilling an embedded
model (the chapter then reports "live" until the store is refreshed), with the chapter's own settings:

    python scripts/store_crossres.py                  # both stores, the smoke profile's settings for chapter 07
    python scripts/store_crossres.py stored_64px      # one of them
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from aconvlib.book.runner import book_root, load_profile
from aconvlib.book.stored_evals import evaluate_stored
from aconvlib.mini import adapter_dir, dataset as data
from aconvlib.mixers.convert import load_deltaconv
from aconvlib.models import load_pipeline


def main(profile: str = "smoke", only: str | None = None) -> None:
    p = load_profile(profile, "07_distillation")
    torch.manual_seed(p.get("seed", 0))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    stores = [((book_root() / "notebooks" / p["eval_stored"]).resolve(), data.prompts(p["n_prompts"], "heldout"),
               {}, p["n_prompts"]),
              ((book_root() / "notebooks" / p["cross_stored"]).resolve(),
               data.prompts(p["n_prompts"], "heldout")[: p["n_cross"]],
               {"height": p["cross_res"], "width": p["cross_res"]}, p["n_show"])]
    for m in p["models"]:
        pipes = {"self-attention (teacher)": load_pipeline(m, device="cpu"),
                 "ΔConv (distilled)": load_deltaconv(load_pipeline(m, device="cpu"), adapter_dir(m) / "adapter")}
        for label, pipe in pipes.items():
            for store, prompts, size, n_images in stores:
                if only and store.name != only:
                    continue
                t0 = time.time()
                r = evaluate_stored(pipe, prompts, store, label=f"{m} · {label}", n_images=n_images, write=True,
                                    num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"],
                                    seed=p["seed"], **size)
                print(f"{m} · {label}: adherence {r['prompt_adherence']:.3f} ({time.time() - t0:.0f} s) -> {store}")


if __name__ == "__main__":
    import sys

    main(only=sys.argv[1] if len(sys.argv) > 1 else None)   # e.g. stored_64px: refresh one store only
