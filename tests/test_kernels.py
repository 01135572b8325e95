"""ΔConv stage kernels: Triton vs the torch reference (interpreter on CPU, natively on CUDA), gradcheck
of the reference, backend selection."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aconvlib.mixers import kernels
from aconvlib.mixers.kernels import reference as R

HERE = Path(__file__).resolve().parent
# don't import triton here: the interpreter run needs a process where TRITON_INTERPRET precedes it
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def interpreter_results():
    """Run tests/_kernel_checks.py once in a subprocess with TRITON_INTERPRET=1; {case: record}."""
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, str(HERE / "_kernel_checks.py")], capture_output=True, text=True,
                         env=env, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"interpreter checks crashed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return {d["case"]: d for d in map(json.loads, res.stdout.splitlines())}




@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_matches_torch_in_interpreter(interpreter_results):
    assert len(interpreter_results) >= 25, sorted(interpreter_results)
    failures = {c: d["errors"] for c, d in interpreter_results.items()
                if not all(e <= d["tol"] for e in d["errors"].values())}
    assert not failures, f"Triton differs from torch beyond tolerance: {failures}"


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("kind", ["dwconv", "avg_pool", "bilinear", "DeltaConvBlock", "float16", "bfloat16"])
def test_interpreter_covers(interpreter_results, kind):
    hits = [c for c in interpreter_results if kind in c]
    assert hits, f"no interpreter case for {kind}"
    for c in hits:  # values and gradients were compared
        errs = interpreter_results[c]["errors"]
        assert "out" in errs and any(k.startswith("grad") for k in errs), c
        assert max(errs.values()) <= interpreter_results[c]["tol"], (c, errs)


def test_reference_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(R.dwconv2d, (x, w))
    assert torch.autograd.gradcheck(lambda t: R.avg_pool_down(t, (2, 2)), (x,))  # overlapping windows (5 -> 2)
    assert torch.autograd.gradcheck(lambda t: R.bilinear_up(t, (8, 7)), (x,))


def test_reference_semantics():
    x = torch.arange(16.0).view(1, 4, 4, 1)
    assert torch.equal(R.avg_pool_down(x, (2, 2)).flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
    w = torch.zeros(3, 3, 1)
    w[1, 1] = 1.0
    assert torch.equal(R.dwconv2d(x, w), x)  # centre tap = identity: padding K//2 keeps the grid
    w = torch.zeros(3, 3, 1)
    w[1, 2] = 1.0  # right neighbour
    assert torch.equal(R.dwconv2d(x, w)[0, :, :3, 0], x[0, :, 1:, 0])
    up = R.bilinear_up(torch.tensor([[[[0.0], [1.0]]]]), (1, 4))  # half-pixel centres
    assert torch.allclose(up.flatten(), torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_backend_selection(monkeypatch):
    x = torch.zeros(1, 2, 2, 2)
    assert kernels.resolve_backend(x) == "torch"  # auto on CPU
    with kernels.use_backend("torch"):
        assert kernels.get_backend() == "torch"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.set_backend("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="CUDA"):
            kernels.resolve_backend(x, "triton")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("hw,k", [((45, 31), 13), ((16, 12), 9)])
def test_cuda_ops_match_torch(dtype, tol, hw, k):
    from aconvlib.mixers.kernels import triton_ops as T

    torch.manual_seed(0)
    c = 160
    x = torch.randn(2, *hw, c, device="cuda", dtype=dtype)
    w = (torch.randn(k, k, c, device="cuda") / k).to(dtype)
    small = (hw[0] // 2, hw[1] // 2)
    ops = {"dwconv": (R.dwconv2d, T.dwconv2d, (x, w)),
           "avg_pool": (lambda t: R.avg_pool_down(t, small), lambda t: T.avg_pool_down(t, small), (x,)),
           "bilinear": (lambda t: R.bilinear_up(t, hw), lambda t: T.bilinear_up(t, hw), (x[:, :small[0], :small[1]],))}
    for name, (fr, ft, ins) in ops.items():
        a = [t.detach().clone().requires_grad_(True) for t in ins]
        b = [t.detach().clone().requires_grad_(True) for t in ins]
        yr, yt = fr(*a), ft(*b)
        gy = torch.randn_like(yr)
        yr.backward(gy)
        yt.backward(gy)
        assert _rel(yt, yr) <= tol, (name, "out", _rel(yt, yr))
        for i, (u, v) in enumerate(zip(a, b)):
            assert _rel(v.grad, u.grad) <= tol, (name, f"grad{i}", _rel(v.grad, u.grad))


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_cuda_block_auto_uses_triton_and_matches(dtype, tol):
    from aconvlib.mixers.deltaconv import DeltaConvBlock

    torch.manual_seed(0)
    blk = DeltaConvBlock(320, 9).cuda().to(dtype)
    x = torch.randn(2, 33 * 20, 320, device="cuda", dtype=dtype)
    assert kernels.resolve_backend(x) == "triton"
    gy = torch.randn_like(x)
    res = {}
    for be in ("torch", None):
        blk.backend = be
        blk.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        y = blk(xg, (33, 20))
        y.backward(gy)  # unit-scale output gradient: no fp16 underflow in the parameter gradients
        res[be] = [y, xg.grad] + [p.grad for p in blk.parameters()]
    for i, (a, b) in enumerate(zip(res[None], res["torch"])):
        assert _rel(a, b) <= tol, (i, _rel(a, b))
