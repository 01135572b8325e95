"""Evaluate the shipped mini models and their distilled ΔConv students on held-out prompts.

    python scripts/eval_shipped.py --device cuda --n-prompts 256 --out quality.json
    python scripts/eval_shipped.py --models mini-dit --adapter runs/x/adapter --px 64 128 --out q.json

Default sampler (DPM-Solver++, 20 steps, CFG 4.5), the same prompts and initial noise for teacher and
student; also records the text encoder's word separation (chapter 1's diagnosis). Keys per model:
``teacher`` and ``deltaconv`` at 64 px, ``teacher@<px>`` / ``deltaconv@<px>`` at other sizes.
"""
import argparse
import json

from aconvlib.mini import dataset as data
from aconvlib.mixers.convert import load_deltaconv
from aconvlib.mini import adapter_dir
from aconvlib.mini.evaluate import AttributeClassifier, evaluate_model
from aconvlib.book.training_report import word_separation
from aconvlib.models.registry import load_pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--out", default="quality.json")
    ap.add_argument("--models", nargs="+", default=["mini-sd", "mini-dit"], choices=["mini-sd", "mini-dit"])
    ap.add_argument("--adapter", default=None, help="ΔConv adapter folder (default: the shipped one of each model)")
    ap.add_argument("--px", nargs="+", type=int, default=[64], help="image sizes to evaluate at")
    args = ap.parse_args()
    if args.adapter and len(args.models) != 1:
        ap.error("--adapter needs exactly one model in --models")
    clf = AttributeClassifier.load(device=args.device)
    prompts = data.prompts(args.n_prompts, "heldout")
    res = {}
    for m in args.models:
        teacher = load_pipeline(m, device=args.device)
        student = load_deltaconv(load_pipeline(m, device=args.device), args.adapter or adapter_dir(m) / "adapter")
        res[m] = {"word_separation": word_separation(teacher)}
        for px in args.px:
            suffix = "" if px == 64 else f"@{px}"
            for key, pipe in (("teacher", teacher), ("deltaconv", student)):
                r = evaluate_model(pipe, prompts, classifier=clf, batch_size=128, height=px, width=px)
                for k in ("features", "per_image", "prompts", "seed", "n_real"):   # the stored eval.json's keys only
                    r.pop(k)
                res[m][key + suffix] = r
        print(m, {k: round(v["prompt_adherence"], 4) for k, v in res[m].items() if "prompt_adherence" in v},
              flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
