"""The paper's baseline token mixers: LinFusion-style linear attention and DiTFastAttn-style window
attention, checked against plain reference implementations written here (loops / dense formulas)."""
import io

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch.utils.flop_counter import FlopCounterMode

from aconvlib.mixers.linear_attention import (GeneralizedLinearAttention, linear_attention_flops,
                                              linear_attention_flops_breakdown)
from aconvlib.mixers.window_attention import (WindowAttention, window_attention_flops, window_mask,
                                              window_pairs)

GRID = (5, 7)
N = GRID[0] * GRID[1]
C, HEADS, D = 16, 2, 8


def make_attn(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    a = Attention(query_dim=C, heads=HEADS, dim_head=D, **kw).to(dtype)
    with torch.no_grad():  # non-trivial biases where present
        for p in a.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.3)
    return a.eval()


def tokens(seed=1, b=2, n=N, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, C, generator=g, dtype=dtype).requires_grad_(grad)


def value_and_grads(fn, module, x, seed=7):
    """Output, and d<out, g>/d(x, parameters) for a fixed random cotangent g."""
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * g).sum(), [x, *params], allow_unused=True)
    return out, grads


def assert_same(a, b, atol=1e-10):
    oa, ga = a
    ob, gb = b
    torch.testing.assert_close(oa, ob, atol=atol, rtol=0)
    assert len(ga) == len(gb)
    for u, v in zip(ga, gb):
        if u is None or v is None:
            assert u is None and v is None
        else:
            torch.testing.assert_close(u, v, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# plain references
# ------------------------------------------------------------------------------------------------
def ref_mlp(f, t):
    lin1, ln, act, lin2 = f
    u = t @ lin1.weight.T + lin1.bias
    mu = u.mean(-1, keepdim=True)
    var = ((u - mu) ** 2).mean(-1, keepdim=True)
    u = (u - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    u = torch.where(u > 0, u, act.negative_slope * u)
    return u @ lin2.weight.T + lin2.bias


def lin(layer, t):
    return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def ref_linear_attention(m, x):
    """out_i = φ(q_i)·mean_j(φ(k_j) v_jᵀ) / (φ(q_i)·mean_j φ(k_j) + eps), φ = ELU + 1, loop over b, h, i."""
    b, n, _ = x.shape
    q = lin(m.to_q, x + ref_mlp(m.f_q, x))
    k = lin(m.to_k, x + ref_mlp(m.f_k, x))
    v = lin(m.to_v, x)
    phi = lambda t: torch.where(t > 0, t + 1, torch.exp(t))  # noqa: E731  ELU(t) + 1
    d = m.head_dim
    rows = []
    for bi in range(b):
        heads = []
        for h in range(m.heads):
            sl = slice(h * d, (h + 1) * d)
            kh, vh = phi(k[bi, :, sl]), v[bi, :, sl]
            outs = []
            for i in range(n):
                qi = phi(q[bi, i, sl])
                s = kh @ qi                                       # φ(q_i)·φ(k_j) for all j
                num = (s[:, None] * vh).sum(0) / n
                den = s.sum() / n + m.eps
                outs.append(num / den)
            heads.append(torch.stack(outs))
        rows.append(torch.cat(heads, dim=-1))
    return lin(m.to_out[0], torch.stack(rows))


def ref_window_keys(i, window, mode, grid):
    r = window // 2
    h, w = grid
    if mode == "1d":
        return [j for j in range(h * w) if abs(i - j) <= r]
    yi, xi = divmod(i, w)
    return [y * w + x for y in range(h) for x in range(w) if abs(y - yi) <= r and abs(x - xi) <= r]


def ref_window_attention(attn, x, window, mode, grid):
    """Per query: softmax(scale·q·k_J) over the keys J of its window, weighted sum of v_J, then to_out."""
    b, n, _ = x.shape
    q, k, v = lin(attn.to_q, x), lin(attn.to_k, x), lin(attn.to_v, x)
    d = q.shape[-1] // attn.heads
    rows = []
    for bi in range(b):
        heads = []
        for h in range(attn.heads):
            sl = slice(h * d, (h + 1) * d)
            outs = []
            for i in range(n):
                keys = ref_window_keys(i, window, mode, grid)
                s = (k[bi, keys, sl] @ q[bi, i, sl]) * attn.scale
                p = torch.exp(s - s.max())
                outs.append((p / p.sum()) @ v[bi, keys, sl])
            heads.append(torch.stack(outs))
        rows.append(torch.cat(heads, dim=-1))
    return lin(attn.to_out[0], torch.stack(rows))


def randomise_f(m, seed=3):
    """Give the (zero-initialised) f branches and LayerNorms non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in (m.f_q, m.f_k):
            for p in f.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1.0 if p is f[1].weight else 0.0))


# ------------------------------------------------------------------------------------------------
# linear attention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_linear_attention_matches_reference_values_and_grads(bias):
    m = GeneralizedLinearAttention.from_attention(make_attn(bias=bias), hidden_ratio=0.75)
    randomise_f(m)
    x = tokens(grad=True)
    assert_same(value_and_grads(lambda t: m(t, grid=GRID), m, x),
                value_and_grads(lambda t: ref_linear_attention(m, t), m, x))


def test_linear_attention_from_attention_starts_at_teacher_projections():
    attn = make_attn(bias=True)
    m = GeneralizedLinearAttention.from_attention(attn, hidden_ratio=0.5)
    assert (m.heads, m.head_dim, m.hidden_dim) == (HEADS, D, 8)
    x = tokens()
    q, k, v = m.projections(x)
    split = lambda t: t.view(2, N, HEADS, D).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(q, split(attn.to_q(x)), atol=0, rtol=0)
        torch.testing.assert_close(k, split(attn.to_k(x)), atol=0, rtol=0)
        torch.testing.assert_close(v, split(attn.to_v(x)), atol=0, rtol=0)
    assert torch.count_nonzero(m.f_q[3].weight) == 0 and torch.count_nonzero(m.f_k[3].bias) == 0
    # copies, not shared: training the student leaves the teacher alone
    for name in ("to_q", "to_k", "to_v"):
        assert getattr(m, name).weight.data_ptr() != getattr(attn, name).weight.data_ptr()
        torch.testing.assert_close(getattr(m, name).weight, getattr(attn, name).weight, atol=0, rtol=0)
    torch.testing.assert_close(m.to_out[0].bias, attn.to_out[0].bias, atol=0, rtol=0)
    assert all(p.requires_grad for p in m.parameters())
    # keys of the shared projections are the teacher's; the new branches are f_q/f_k
    assert set(attn.state_dict()) <= set(m.state_dict())
    assert {k.split(".")[0] for k in set(m.state_dict()) - set(attn.state_dict())} == {"f_q", "f_k"}


def test_linear_attention_copies_qk_norm_and_is_resolution_consistent():
    attn = make_attn(qk_norm="layer_norm")
    m = GeneralizedLinearAttention.from_attention(attn)
    assert m.norm_q is not None and m.norm_q is not attn.norm_q
    # averaging over keys: a constant image gives the same token output at any N
    c = tokens(b=1, n=1)
    y1, y2 = m(c.expand(1, 12, C)), m(c.expand(1, 48, C))
    torch.testing.assert_close(y1[:, :1].expand(1, 48, C), y2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("ratio,heads,bias", [(0.5, 2, False), (1.0, 4, True)])
def test_linear_attention_flops_match_flop_counter(ratio, heads, bias):
    a = Attention(query_dim=C, heads=heads, dim_head=C // heads, bias=bias)
    m = GeneralizedLinearAttention.from_attention(a, hidden_ratio=ratio)
    batch = 3
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(tokens(b=batch, dtype=torch.float32))
    bd = linear_attention_flops_breakdown(N, C, ratio, heads=heads, qkv_bias=bias)
    two_mac = linear_attention_flops(N, C, ratio, heads=heads, convention="2mac", qkv_bias=bias)
    # FlopCounterMode: 2 per multiply-add of mm/addmm/bmm, no elementwise work
    assert fc.get_total_flops() == batch * (two_mac - bd["elementwise"])
    mid, d = int(round(ratio * C)), C // heads
    assert bd["proj_macs"] + bd["mlp_macs"] + bd["state_macs"] + bd["read_macs"] + bd["norm_macs"] == \
        4 * N * C * C + 4 * N * C * mid + 2 * N * C * d + N * C
    paper = linear_attention_flops(N, C, ratio, heads=heads, convention="paper", qkv_bias=bias)
    assert paper == 4 * N * C * C + 4 * N * C * mid + 4 * N * C * d + 2 * N * C + bd["elementwise"]
    assert linear_attention_flops(N, C, ratio, heads=heads, qkv_bias=bias) == paper  # paper is the default
    with pytest.raises(ValueError, match="convention"):
        linear_attention_flops(N, C, ratio, heads=heads, convention="3mac")
    with pytest.raises(ValueError, match="divisible"):
        linear_attention_flops(N, C, ratio, heads=3)


# ------------------------------------------------------------------------------------------------
# window attention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,window", [("1d", 1), ("1d", 5), ("1d", 9), ("2d", 3), ("2d", 5)])
def test_window_attention_matches_reference_values_and_grads(mode, window):
    attn = make_attn(bias=True)
    m = WindowAttention.from_attention(attn, window=window, mode=mode)
    x = tokens(grad=True)
    assert_same(value_and_grads(lambda t: m(t, grid=GRID), m, x),
                value_and_grads(lambda t: ref_window_attention(attn, t, window, mode, GRID), m, x))


@pytest.mark.parametrize("mode,window", [("1d", 2 * N - 1), ("1d", 101), ("2d", 2 * max(GRID) - 1), ("2d", 99)])
def test_window_covering_everything_equals_the_original_attention(mode, window):
    attn = make_attn(bias=True)
    x = tokens()
    with torch.no_grad():
        y = WindowAttention.from_attention(attn, window, mode)(x, grid=GRID)
        torch.testing.assert_close(y, attn(x), atol=1e-6, rtol=0)


def test_window_just_short_of_everything_differs_from_attention():
    attn = make_attn()
    x = tokens()
    with torch.no_grad():
        for mode, w in (("1d", 2 * N - 3), ("1d", N), ("2d", 2 * max(GRID) - 3)):
            y = WindowAttention.from_attention(attn, w, mode)(x, grid=GRID)
            assert (y - attn(x)).abs().max() > 1e-6, (mode, w)


@pytest.mark.parametrize("mode", ["1d", "2d"])
def test_window_one_is_the_value_path(mode):
    attn = make_attn(bias=True)
    x = tokens()
    with torch.no_grad():
        y = WindowAttention.from_attention(attn, 1, mode)(x, grid=GRID)
        torch.testing.assert_close(y, attn.to_out[0](attn.to_v(x)), atol=1e-12, rtol=0)


def test_window_attention_shares_the_teacher_modules_and_caches_the_mask():
    attn = make_attn(bias=True)
    m = WindowAttention.from_attention(attn, 3, "2d", grid=GRID)
    assert m.to_q is attn.to_q and m.to_k is attn.to_k and m.to_v is attn.to_v and m.to_out is attn.to_out
    assert m.scale == attn.scale and m.heads == HEADS and m.head_dim == D
    assert list(m.state_dict()) == list(attn.state_dict())
    assert {id(p) for p in m.parameters()} == {id(p) for p in attn.parameters()}
    x = tokens()
    m(x)  # grid from set at construction
    mask = m.mask(N, GRID, x.device)
    assert mask is m.mask(N, GRID, x.device) and mask.dtype == torch.bool and mask.shape == (N, N)
    assert m.mask(N, GRID, x.device) is not None and WindowAttention.from_attention(attn, 99, "2d").mask(
        N, GRID, x.device) is None
    # the teacher's own weights: editing them changes the mixer
    with torch.no_grad():
        before = m(x).clone()
        attn.to_v.weight.mul_(2)
        assert not torch.allclose(before, m(x))


def test_window_attention_with_qk_norm_equals_attention_when_full():
    attn = make_attn(qk_norm="layer_norm")
    m = WindowAttention.from_attention(attn, 2 * N + 1)
    assert m.norm_q is attn.norm_q
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(m(x), attn(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, -3, 2, 4, 3.0, "3", True, None])
def test_bad_window_is_a_clear_error(bad):
    attn = make_attn()
    with pytest.raises(ValueError, match="window must be a positive odd integer"):
        WindowAttention.from_attention(attn, bad)
    m = WindowAttention.from_attention(attn, 3)
    with pytest.raises(ValueError, match="window must be a positive odd integer"):
        m.window = bad
    assert m.window == 3
    with pytest.raises(ValueError, match="window must be a positive odd integer"):
        window_pairs(10, bad)


def test_grid_and_call_errors():
    attn = make_attn()
    x = tokens()
    m2 = WindowAttention.from_attention(attn, 3, "2d")
    with pytest.raises(ValueError, match="needs the token grid"):
        m2(x)
    with pytest.raises(ValueError, match=r"grid 5x6 has 30 tokens but the input has N = 35"):
        m2(x, grid=(5, 6))
    m2.set_grid(GRID)
    m2(x)  # now fine
    with pytest.raises(ValueError, match="N = 35"):
        m2(x, grid=(7, 7))
    m1 = WindowAttention.from_attention(attn, 3, "1d")
    m1(x)  # the band needs no grid
    with pytest.raises(ValueError, match="grid 6x6 has 36 tokens"):
        m1(x, grid=(6, 6))
    with pytest.raises(ValueError, match="mode must be one of"):
        WindowAttention.from_attention(attn, 3, "3d")
    lin_m = GeneralizedLinearAttention.from_attention(attn)
    lin_m(x)  # no grid needed
    with pytest.raises(ValueError, match="grid 4x4 has 16 tokens"):
        lin_m(x, grid=(4, 4))
    for m in (m1, lin_m):
        with pytest.raises(ValueError, match="encoder_hidden_states must be None"):
            m(x, encoder_hidden_states=x)
        with pytest.raises(NotImplementedError, match="attention_mask"):
            m(x, attention_mask=torch.ones(2, N))
        with pytest.raises(ValueError, match=r"\[B, N, C\]"):
            m(x[0])
    cross = Attention(query_dim=C, cross_attention_dim=12, heads=HEADS, dim_head=D)
    for cls in (WindowAttention, GeneralizedLinearAttention):
        with pytest.raises(ValueError, match="cross-attention"):
            cls.from_attention(cross, **({"window": 3} if cls is WindowAttention else {}))
        with pytest.raises(TypeError, match="expected a diffusers Attention"):
            cls.from_attention(torch.nn.Linear(4, 4), **({"window": 3} if cls is WindowAttention else {}))
    with pytest.raises(ValueError, match="hidden_ratio"):
        GeneralizedLinearAttention.from_attention(attn, hidden_ratio=0)


def test_window_mask_pairs_and_flops():
    for size, mode in ((N, "1d"), (GRID, "1d"), (GRID, "2d"), ((1, 9), "2d"), ((8, 3), "2d")):
        n = size if isinstance(size, int) else size[0] * size[1]
        for w in (1, 3, 5, 7, 15, 2 * n + 1):
            mask = window_mask(size, w, mode)
            keys = [len(ref_window_keys(i, w, mode, size if not isinstance(size, int) else (1, n))) for i in range(n)]
            assert mask.sum(1).tolist() == keys
            assert window_pairs(size, w, mode) == int(mask.sum()) == sum(keys)
            for cc in (16, 320):
                p = sum(keys)
                assert window_attention_flops(size, cc, w, mode) == 4 * n * cc * cc + 4 * p * cc + 4 * p
                assert window_attention_flops(size, cc, w, mode, "2mac") == 8 * n * cc * cc + 4 * p * cc + 4 * p
    # a covering window gives the paper's dense formula 4NC² + 4N²C + 4N²
    assert window_attention_flops(GRID, C, 99, "2d") == 4 * N * C * C + 4 * N * N * C + 4 * N * N
    assert window_pairs(GRID, 3, "2d") == (5 * 3 - 2) * (7 * 3 - 2)   # clipped 3×3 on 5×7: 13·19
    with pytest.raises(ValueError, match="needs the token grid"):
        window_pairs(N, 3, "2d")


def test_window_attention_counted_flops_are_dense_projections_plus_at_most_dense_scores():
    """FlopCounterMode sees the four projections (2 per MAC); whether it also counts SDPA depends on the
    backend PyTorch picks, and if it does it counts the dense N×N cost (4·N²·C), not the window's."""
    attn = make_attn(dtype=torch.float32)
    m = WindowAttention.from_attention(attn, 3, "2d", grid=GRID)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(tokens(dtype=torch.float32))
    proj = 2 * 8 * N * C * C
    assert fc.get_total_flops() in (proj, proj + 2 * 4 * N * N * C)


# ------------------------------------------------------------------------------------------------
# persistence and drop-in use in a diffusers block
# ------------------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    x = tokens()
    lin_m = GeneralizedLinearAttention.from_attention(make_attn(seed=0, bias=True), hidden_ratio=0.5)
    randomise_f(lin_m)
    buf = io.BytesIO()
    torch.save(lin_m.state_dict(), buf)
    fresh = GeneralizedLinearAttention.from_attention(make_attn(seed=5, bias=True), hidden_ratio=0.5)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), lin_m(x), atol=0, rtol=0)

    win = WindowAttention.from_attention(make_attn(seed=0, bias=True), 5, "2d", grid=GRID)
    buf = io.BytesIO()
    torch.save(win.state_dict(), buf)
    other_attn = make_attn(seed=9, bias=True)
    other = WindowAttention.from_attention(other_attn, 5, "2d", grid=GRID)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(x), win(x), atol=0, rtol=0)
        # loaded into the shared module
        torch.testing.assert_close(other_attn.to_q.weight, win.to_q.weight, atol=0, rtol=0)


@pytest.mark.parametrize("make", [
    lambda a: WindowAttention.from_attention(a, 3, "2d", grid=GRID),
    lambda a: WindowAttention.from_attention(a, 7, "1d"),
    lambda a: GeneralizedLinearAttention.from_attention(a),
], ids=["window2d", "window1d", "linear"])
def test_drop_in_for_attn1_of_a_diffusers_block(make):
    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=C, num_attention_heads=HEADS, attention_head_dim=D,
                                  cross_attention_dim=12).double()
    x, ctx = tokens(), torch.randn(2, 4, 12, dtype=torch.float64)
    block.attn1 = make(block.attn1)
    y = block(x, encoder_hidden_states=ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
