"""Triton-vs-torch comparisons of the ΔConv stage ops, run in a subprocess with TRITON_INTERPRET=1.

``python tests/_kernel_checks.py`` (the env var is set here, before triton is imported) prints one
JSON line per case: ``{"case", "errors": {output/grad name: max |Δ| / max |ref|}, "tol"}``. Used by
tests/test_kernels.py; kept out of pytest's collection (no ``test_`` prefix) because the interpreter
must be switched on before the first ``import triton`` of the process.
"""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from aconvlib.mixers.deltaconv import DeltaConvBlock  # noqa: E402
from aconvlib.mixers.kernels import reference as R  # noqa: E402
from aconvlib.mixers.kernels import triton_ops as T  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # relative to max |reference|


def rel(a, b):
    """max |a - b| / max |b| (b the reference)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def compare(fr, ft, inputs):
    a = [t.clone().requires_grad_(True) for t in inputs]
    b = [t.clone().requires_grad_(True) for t in inputs]
    yr, yt = fr(*a), ft(*b)
    g = torch.randn_like(yr)
    yr.backward(g)
    yt.backward(g)
    errs = {"out": rel(yt, yr)}
    for i, (u, v) in enumerate(zip(a, b)):
        errs[f"grad{i}"] = rel(v.grad, u.grad)
    return errs


def cases():
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s, dt=torch.float32: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    for hw in [(5, 7), (8, 6)]:
        for k in (1, 3, 5):
            yield f"dwconv k={k} {hw}", (R.dwconv2d, T.dwconv2d, [rnd(2, *hw, 6), rnd(k, k, 6)]), torch.float32
        for out in [(hw[0] // 2, hw[1] // 2), (3, 2), (1, 1)]:
            yield (f"avg_pool {hw}->{out}", (lambda x, o=out: R.avg_pool_down(x, o), lambda x, o=out: T.avg_pool_down(x, o),
                                             [rnd(2, *hw, 5)]), torch.float32)
            yield (f"bilinear {out}->{hw}", (lambda x, o=hw: R.bilinear_up(x, o), lambda x, o=hw: T.bilinear_up(x, o),
                                             [rnd(2, *out, 5)]), torch.float32)
    yield "bilinear (3, 2)->(10, 9) (odd factor)", (lambda x: R.bilinear_up(x, (10, 9)), lambda x: T.bilinear_up(x, (10, 9)),
                                                    [rnd(1, 3, 2, 4)]), torch.float32
    yield ("dwconv 3 pixel chunks in the weight gradient", (R.dwconv2d, T.dwconv2d, [rnd(2, 12, 11, 8), rnd(3, 3, 8)]),
           torch.float32)
    yield "dwconv wide C=80 (two channel blocks)", (R.dwconv2d, T.dwconv2d, [rnd(1, 4, 5, 80), rnd(3, 3, 80)]), torch.float32
    for dt in (torch.float16, torch.bfloat16):
        yield f"dwconv {dt}", (R.dwconv2d, T.dwconv2d, [rnd(1, 6, 5, 8, dt=dt), rnd(3, 3, 8, dt=dt)]), dt
        yield (f"avg_pool {dt}", (lambda x: R.avg_pool_down(x, (3, 2)), lambda x: T.avg_pool_down(x, (3, 2)),
                                  [rnd(1, 7, 5, 8, dt=dt)]), dt)
        yield (f"bilinear {dt}", (lambda x: R.bilinear_up(x, (7, 5)), lambda x: T.bilinear_up(x, (7, 5)),
                                  [rnd(1, 3, 2, 8, dt=dt)]), dt)


def block_case(grid, gate):
    torch.manual_seed(1)
    blk = DeltaConvBlock(16, 3, gate=gate)
    x = torch.randn(2, grid[0] * grid[1], 16)
    res = {}
    for be in ("torch", "triton"):
        blk.backend = be
        blk.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        y = blk(xg, grid)
        y.square().mean().backward()
        res[be] = [y.detach(), xg.grad] + [p.grad.clone() for p in blk.parameters()]
    names = ["out", "grad_x"] + [f"grad_{n}" for n, _ in blk.named_parameters()]
    return {n: rel(b, a) for n, a, b in zip(names, res["torch"], res["triton"])}


if __name__ == "__main__":
    for name, (fr, ft, inputs), dt in cases():
        print(json.dumps({"case": name, "errors": compare(fr, ft, inputs), "tol": TOL[dt]}), flush=True)
    for grid, gate in [((5, 7), "scaled"), ((6, 4), "sigmoid")]:
        print(json.dumps({"case": f"DeltaConvBlock {grid} gate={gate}", "errors": block_case(grid, gate),
                          "tol": 1e-5}), flush=True)
