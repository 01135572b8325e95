"""Neighborhood attention inside joint attention (image queries: K×K image keys + every text key; text queries: full)
equals a naive masked joint softmax whose windows are built here by hand (NATTEN's shifted windows), for the dense
masked path and for NATTEN (CPU flex backend, forward only)."""
import pytest
import torch

from aconvlib.mixers.neighborhood import KernelSizeError, natten_available, neighborhood_attention
from aconvlib.models import denoise, self_attention_layers
from aconvlib.testing.dummies import tiny_flux, tiny_inputs, tiny_sd3

from _joint_reference import naive

L = 6


def _window_mask(grid, k):
    """[N, N]: key (r, c) in query (i, j)'s window, the window starting at clamp(i - k//2, 0, H - k) per axis."""
    h, w = grid
    m = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            r0, c0 = min(max(i - k // 2, 0), h - k), min(max(j - k // 2, 0), w - k)
            for r in range(r0, r0 + k):
                for c in range(c0, c0 + k):
                    m[i * w + j, r * w + c] = True
    return m


def _run(model, hw, k=None, backend="torch", seed=0):
    inp = tiny_inputs(model, batch=2, hw=hw, text_len=L, seed=seed)
    layers = [l for l in self_attention_layers(model, hw) if l.joint]
    seen, outs, hooks = {}, {}, []
    for l in layers:
        hooks.append(l.module.register_forward_pre_hook(
            lambda m, a, kw, n=l.name: seen.__setitem__(n, dict(kw, **({"hidden_states": a[0]} if a else {}))),
            with_kwargs=True))
        hooks.append(l.module.register_forward_hook(
            lambda m, a, kw, o, n=l.name: outs.__setitem__(n, o), with_kwargs=True))
    try:
        with torch.no_grad():
            if k is None:
                y = denoise(model, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
            else:
                with neighborhood_attention(model, kernel_size=k, backend=backend):
                    y = denoise(model, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
    finally:
        for h in hooks:
            h.remove()
    return y, layers, seen, outs


BACKENDS = ["torch"] + (["natten"] if natten_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["flux", "sd3"])
@pytest.mark.parametrize("hw,k", [((10, 10), 3), ((12, 8), 3)])   # 5x5 and 6x4 image tokens
def test_joint_na_equals_the_naive_masked_joint_softmax(kind, hw, k, backend):
    model = tiny_flux() if kind == "flux" else tiny_sd3()
    grid = (hw[0] // 2, hw[1] // 2)
    y, layers, seen, outs = _run(model, hw, k, backend)
    mask = _window_mask(grid, k)
    assert not mask.all()
    for l in layers:
        _, n_text, img_out, txt_out = naive(l.module, kind, l.block_type, seen[l.name], image_mask=mask, grid=grid)
        got = outs[l.name]
        got_img, got_txt = (got if isinstance(got, tuple) else (got, None))
        torch.testing.assert_close(got_img.double(), img_out, rtol=1e-4, atol=1e-5)
        if txt_out is not None:
            torch.testing.assert_close(got_txt.double(), txt_out, rtol=1e-4, atol=1e-5)
    y_full, *_ = _run(model, hw)
    assert not torch.allclose(y, y_full, atol=1e-4)   # the windows changed the prediction


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_window_covering_the_grid_is_the_stock_attention(kind):
    model = tiny_flux() if kind == "flux" else tiny_sd3()
    y, *_ = _run(model, (10, 10), 5)
    y_full, *_ = _run(model, (10, 10))
    torch.testing.assert_close(y, y_full, rtol=1e-4, atol=1e-5)


def test_k_larger_than_the_grid_or_even_is_one_line():
    model = tiny_flux()
    with pytest.raises(KernelSizeError) as e:
        _run(model, (8, 12), 5)          # 4x6 tokens
    msg = str(e.value)
    assert "\n" not in msg and "K=5" in msg and "4x6" in msg and "K <= 3" in msg
    with pytest.raises(KernelSizeError, match="odd"):
        _run(model, (8, 12), 4)
    procs = dict(model.attn_processors)   # restored after the error
    assert all(type(p).__name__ == "FluxAttnProcessor" for p in procs.values())


def test_sd35_image_only_attention_gets_plain_na():
    model = tiny_sd3(dual=True)
    with neighborhood_attention(model, kernel_size=3) as procs:
        kinds = {n: type(p).__name__ for n, p in procs.items()}
    assert kinds["transformer_blocks.0.attn2"] == "NeighborhoodAttnProcessor"
    assert kinds["transformer_blocks.0.attn"] == kinds["transformer_blocks.1.attn"] == "JointNeighborhoodProcessor"
