"""Evaluate the shipped mini models and their distilled ΔConv students on held-out prompts.

    python scripts/eval_shipped.py --device cuda --n-prompts 256 --out quality.json

Default sampler (DPM-Solver++, 20 steps, CFG 4.5), the same prompts and initial noise for teacher and
student; also records the text encoder's word separation (chapter 1's diagnosis).
"""
import argparse
import json

from aconvlib import data
from aconvlib.convert import load_deltaconv
from aconvlib.distill import adapter_dir
from aconvlib.mini.evaluate import AttributeClassifier, evaluate_model
from aconvlib.mini.report import word_separation
from aconvlib.models.registry import load_pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--out", default="quality.json")
    ap.add_argument("--models", nargs="+", default=["mini-sd", "mini-dit"], choices=["mini-sd", "mini-dit"])
    args = ap.parse_args()
    clf = AttributeClassifier.load(device=args.device)
    prompts = data.prompts(args.n_prompts, "heldout")
    res = {}
    for m in args.models:
        teacher = load_pipeline(m, device=args.device)
        res[m] = {"teacher": evaluate_model(teacher, prompts, classifier=clf, batch_size=128),
                  "word_separation": word_separation(teacher)}
        student = load_deltaconv(load_pipeline(m, device=args.device), adapter_dir(m) / "adapter")
        res[m]["deltaconv"] = evaluate_model(student, prompts, classifier=clf, batch_size=128)
        print(m, {k: round(v["prompt_adherence"], 4) for k, v in res[m].items() if "prompt_adherence" in v},
              flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
