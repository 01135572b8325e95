"""Locality measures of self-attention maps: ASM, high-pass ASM, prior/context split, ERF, artifacts.

Notation. ``A`` is a row-stochastic map [N, N] over a token grid of H'×W' positions (N = H'·W',
raster order: token ``n`` is at row ``n // W'``, column ``n % W'``); ``A[q, k]`` is the attention
query ``q`` pays to key ``k`` and ``Σ_k A[q, k] = 1``. Every function works on CPU or CUDA tensors,
computes in chunks of queries (a 4096×4096 map is never copied whole) and accumulates in float64.

Definitions (ΔConvFusion, Sec. 3.2, and this project's choices where the paper is silent):

- Attention score mass, for odd K:
  ``ASM_q(K) = Σ_k A[q, k]`` over keys with ``|row(k) − row(q)| ≤ (K−1)/2`` and
  ``|col(k) − col(q)| ≤ (K−1)/2``. Windows are clipped at the borders, not shifted, so a border
  query's window holds fewer keys. ``ASM(K)`` is the mean of ``ASM_q(K)`` over queries;
  ``K = 2·max(H', W') − 1`` covers the grid from every query, so ``ASM = 1`` there.
- ASM gradient: the backward difference ``(ASM(K_i) − ASM(K_{i−1})) / (K_i − K_{i−1})`` with
  ``ASM(0) = 0``, i.e. how much mass each additional ring of keys adds, per unit of K.
- High-pass maps: each query row seen as an H'×W' image ``a``, ``a_hp = IDFT(H · DFT(a))`` with the
  Butterworth high-pass ``H(D) = 1 / (1 + (D0 / D)^(2n))``, ``H(0) = 0`` (the DC term, i.e. the
  row's mean, is removed), where ``D = sqrt(f_y² + f_x²)`` is the radial frequency in cycles per
  token (``f = fftfreq``; isotropic in token units on non-square grids), ``D0`` the cutoff and ``n``
  the order. ``a_hp`` is signed and sums to zero, so its ASM is not defined as is. We normalize to a
  distribution over keys, by default ``norm="abs"``: ``â = |a_hp| / Σ|a_hp|`` — the share of the
  high-frequency signal's magnitude that lies inside the window. It is non-negative, monotone in K,
  reaches 1 on the whole grid, so "x % of the high-frequency attention lies within K×K" and an ERF
  on it are well defined, and it counts the negative lobes (where a query attends *less* than the
  smooth background) as signal too. ``"pos"`` keeps only the positive part (attention above the
  smooth background), ``"energy"`` uses ``a_hp²`` (Parseval: the spectrum's energy). Rows with no
  high-frequency content (e.g. a uniform row) are left out of the mean.
- Prior/context decomposition: ``A = 1 bᵀ + R`` with ``b[k] = mean_q A[q, k]`` (the query-independent
  prior; ``Σ_k b = 1``) and ``R = A − 1 bᵀ`` (each row sums to zero). Mass split per query:
  ``context_q = ½ Σ_k |R[q, k]|`` (the total-variation distance between ``A[q]`` and ``b``) and
  ``prior_q = Σ_k min(A[q, k], b[k]) = 1 − context_q`` (the mass ``A[q]`` shares with the prior).
  Locality of the context: ``asm_curve`` of ``|R[q]| / Σ_k |R[q, k]|``, and of the positive part
  ``R[q]⁺ / Σ_k R[q, k]⁺`` (attention above the prior), which is the one that separates local from global:
  ``|R|`` holds ``−b`` at every key a query ignores, half its mass, spread over the grid.
- ERF: ``min{K : ASM(K) ≥ threshold}`` (threshold 0.8 in the paper).
- Artifacts ("attention sinks"): ``k* = argmax_k b[k]``, the single most-attended key over all
  queries, and its share ``b[k*]`` of all attention (the uniform share is 1/N). A layer is flagged
  when ``N·b[k*]``, the share in units of the uniform share, reaches a ratio (default 3; PixArt's layers that
  attend to the last pixel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

__all__ = ["ContextDecomposition", "Sink", "asm_curve", "asm_gradient", "attention_sink",
           "butterworth_highpass", "decompose", "detect_artifacts", "erf", "highpass", "highpass_asm_curve",
           "odd_kernel_sizes", "uniform_asm"]

DEFAULT_CHUNK = 512


def odd_kernel_sizes(grid: tuple[int, int], max_k: Optional[int] = None) -> list[int]:
    """Odd K from 1 to ``2·max(H', W') − 1`` (the window that covers the grid from any query)."""
    top = 2 * max(grid) - 1 if max_k is None else max_k
    return list(range(1, top + 1, 2))


def uniform_asm(grid: tuple[int, int], kernel_sizes: Sequence[int]):
    """ASM(K) of the uniform map ``A = 1/N`` (no locality): the mean clipped-window area over N, exactly.

    Per axis the mean clipped window length over positions ``i`` is ``mean_i(min(i+r, n−1) − max(i−r, 0) + 1)``;
    the 2-D window area factorizes, so ASM(K) = mean_len_rows · mean_len_cols / N. [nK] float64 tensor.
    """
    h, w = grid

    def mean_len(n, r):
        i = torch.arange(n, dtype=torch.float64)
        return ((i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1).mean()

    return torch.stack([mean_len(h, (k - 1) // 2) * mean_len(w, (k - 1) // 2) / (h * w) for k in kernel_sizes])


def _check(A: torch.Tensor, grid: tuple[int, int]) -> int:
    n = grid[0] * grid[1]
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"expected a map [Q, {n}] for grid {tuple(grid)}, got {tuple(A.shape)}")
    return n


def _kernel_tensor(kernel_sizes, device) -> torch.Tensor:
    ks = torch.as_tensor(list(kernel_sizes), dtype=torch.long, device=device)
    if ks.ndim != 1 or len(ks) == 0 or (ks < 1).any() or (ks % 2 == 0).any():
        raise ValueError(f"kernel sizes must be positive odd integers, got {list(kernel_sizes)}")
    return ks


def _window_sums(rows: torch.Tensor, q_idx: torch.Tensor, grid: tuple[int, int], ks: torch.Tensor) -> torch.Tensor:
    """Σ of each row (an H'×W' image) over the clipped K×K window at its query: [c, N] → [c, nK].

    Uses a zero-padded 2-D inclusive prefix sum S, so each window sum is
    ``S[i1, j1] − S[i0, j1] − S[i1, j0] + S[i0, j0]``, for all K at once.
    """
    h, w = grid
    c = rows.shape[0]
    s = torch.zeros(c, h + 1, w + 1, dtype=torch.float64, device=rows.device)
    s[:, 1:, 1:] = rows.reshape(c, h, w).double().cumsum(1).cumsum(2)
    s = s.reshape(c, (h + 1) * (w + 1))
    r = (ks - 1) // 2
    qi, qj = (q_idx // w)[:, None], (q_idx % w)[:, None]
    i0, i1 = (qi - r).clamp(min=0), (qi + r).clamp(max=h - 1) + 1
    j0, j1 = (qj - r).clamp(min=0), (qj + r).clamp(max=w - 1) + 1
    g = lambda i, j: s.gather(1, i * (w + 1) + j)  # noqa: E731
    return g(i1, j1) - g(i0, j1) - g(i1, j0) + g(i0, j0)


def asm_curve(A: torch.Tensor, grid: tuple[int, int], kernel_sizes: Optional[Sequence[int]] = None, *,
              per_query: bool = False, query_index: Optional[torch.Tensor] = None,
              chunk: int = DEFAULT_CHUNK):
    """Attention score mass ASM(K) for every K in ``kernel_sizes`` (see the module docstring).

    Args:
        A: [Q, N] rows of a map over ``grid``; Q = N (all queries, raster order) unless
            ``query_index`` [Q] gives the query of each row.
        grid: (H', W').
        kernel_sizes: odd window sizes; default :func:`odd_kernel_sizes`.
        per_query: also return the per-query values.

    Returns:
        ``curve`` [nK] float64 (mean over queries), or ``(curve, per_query_values [Q, nK])``.
    """
    _check(A, grid)
    ks = _kernel_tensor(kernel_sizes or odd_kernel_sizes(grid), A.device)
    if query_index is None:
        if A.shape[0] != A.shape[1]:
            raise ValueError("A is not square: pass query_index for a subset of queries")
        query_index = torch.arange(A.shape[0], device=A.device)
    total = torch.zeros(len(ks), dtype=torch.float64, device=A.device)
    parts = []
    for i in range(0, A.shape[0], chunk):
        v = _window_sums(A[i:i + chunk], query_index[i:i + chunk].to(A.device), grid, ks)
        total += v.sum(0)
        if per_query:
            parts.append(v)
    curve = total / A.shape[0]
    return (curve, torch.cat(parts)) if per_query else curve


def asm_gradient(curve: torch.Tensor, kernel_sizes: Sequence[int]) -> torch.Tensor:
    """Backward difference of ASM in K with ASM(0) = 0: ``(ASM(K_i) − ASM(K_{i−1})) / (K_i − K_{i−1})``.

    ``curve`` [..., nK] → [..., nK].
    """
    curve = torch.as_tensor(curve, dtype=torch.float64)
    ks = torch.as_tensor(list(kernel_sizes), dtype=torch.float64, device=curve.device)
    prev = torch.cat([torch.zeros_like(curve[..., :1]), curve[..., :-1]], dim=-1)
    dk = torch.diff(ks, prepend=torch.zeros(1, dtype=torch.float64, device=ks.device))
    return (curve - prev) / dk


def butterworth_highpass(grid: tuple[int, int], cutoff: float = 0.1, order: int = 2,
                         device=None) -> torch.Tensor:
    """The filter ``H(D) = 1 / (1 + (D0/D)^(2n))``, ``H(0) = 0``, on the ``rfft2`` frequency grid [H', W'//2+1].

    ``D`` is the radial frequency in cycles per token, ``cutoff`` = D0 (0 < D0 ≤ ~0.7), ``order`` = n.
    """
    if cutoff <= 0:
        raise ValueError("cutoff must be positive (cycles per token)")
    fy = torch.fft.fftfreq(grid[0], device=device, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(grid[1], device=device, dtype=torch.float64)[None, :]
    d = torch.sqrt(fy ** 2 + fx ** 2)
    hp = torch.zeros_like(d)
    nz = d > 0
    hp[nz] = 1.0 / (1.0 + (cutoff / d[nz]) ** (2 * order))
    return hp


def _highpass_rows(rows: torch.Tensor, grid: tuple[int, int], filt: torch.Tensor, norm: str):
    h, w = grid
    img = rows.reshape(-1, h, w).double()
    hp = torch.fft.irfft2(torch.fft.rfft2(img) * filt, s=(h, w)).reshape(rows.shape[0], -1)
    if norm == "abs":
        m = hp.abs()
    elif norm == "pos":
        m = hp.clamp(min=0)
    elif norm == "energy":
        m = hp ** 2
    elif norm == "none":
        return hp, torch.ones(hp.shape[0], dtype=torch.bool, device=hp.device)
    else:
        raise ValueError(f"norm must be 'abs', 'pos', 'energy' or 'none', got {norm!r}")
    z = m.sum(1, keepdim=True)
    valid = z[:, 0] > 1e-12 * max(1, rows.shape[1])
    return torch.where(valid[:, None], m / z.clamp(min=1e-300), torch.zeros_like(m)), valid


def highpass(A: torch.Tensor, grid: tuple[int, int], cutoff: float = 0.1, order: int = 2, *,
             norm: str = "abs", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """High-pass filtered maps [Q, N] (float64), normalized per row as ``norm`` says (module docstring).

    ``norm="none"`` returns the signed filtered rows (each sums to 0). Rows without high-frequency
    content come back as zeros. Materializes [Q, N]; for the ASM use :func:`highpass_asm_curve`.
    """
    _check(A, grid)
    filt = butterworth_highpass(grid, cutoff, order, device=A.device)
    return torch.cat([_highpass_rows(A[i:i + chunk], grid, filt, norm)[0] for i in range(0, A.shape[0], chunk)])


def highpass_asm_curve(A: torch.Tensor, grid: tuple[int, int], kernel_sizes: Optional[Sequence[int]] = None,
                       cutoff: float = 0.1, order: int = 2, *, norm: str = "abs",
                       chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """ASM(K) [nK] of the normalized high-pass maps, mean over queries that have high-frequency content.

    Filters and measures one chunk of queries at a time (no [N, N] copy).
    """
    n = _check(A, grid)
    if A.shape[0] != n:
        raise ValueError("highpass_asm_curve needs all N query rows")
    if norm == "none":
        raise ValueError("the ASM of signed maps is not defined; use norm='abs', 'pos' or 'energy'")
    ks = _kernel_tensor(kernel_sizes or odd_kernel_sizes(grid), A.device)
    filt = butterworth_highpass(grid, cutoff, order, device=A.device)
    total = torch.zeros(len(ks), dtype=torch.float64, device=A.device)
    count = 0
    for i in range(0, n, chunk):
        rows, valid = _highpass_rows(A[i:i + chunk], grid, filt, norm)
        q = torch.arange(i, i + rows.shape[0], device=A.device)
        total += _window_sums(rows[valid], q[valid], grid, ks).sum(0)
        count += int(valid.sum())
    return total / count if count else torch.full_like(total, float("nan"))


@dataclass
class ContextDecomposition:
    """Result of :func:`decompose` (see the module docstring for the definitions).

    Attributes:
        prior: b [N] (sums to one); ``prior_image`` is b as [H', W'].
        prior_mass, context_mass: mean over queries of ``Σ min(A, b)`` and ``½‖R_q‖₁`` (sum to one).
        context_per_query: ``½‖R_q‖₁`` [N].
        prior_tv_uniform: ``½‖b − 1/N‖₁``, how far the prior is from uniform (0 = uniform).
        context_asm: ASM(K) [nK] of ``|R_q| / ‖R_q‖₁``; ``kernel_sizes`` its K.
        context_pos_asm: ASM(K) [nK] of the positive part ``R_q⁺ / ‖R_q⁺‖₁`` (where the query attends *above*
            the prior). The locality test of the context term: ``|R_q|`` also holds the negative part ``−b``
            spread over every key a query does not attend to, half of ``‖R_q‖₁``, so even a perfectly local
            map (a 3×3 blob per query) has a ``|R|``-ERF near the uniform map's on a small grid.
    """

    prior: torch.Tensor
    grid: tuple[int, int]
    prior_mass: float
    context_mass: float
    context_per_query: torch.Tensor
    prior_tv_uniform: float
    context_asm: torch.Tensor
    kernel_sizes: list[int]
    context_pos_asm: Optional[torch.Tensor] = None

    @property
    def prior_image(self) -> torch.Tensor:
        return self.prior.reshape(self.grid)


def decompose(A: torch.Tensor, grid: tuple[int, int], kernel_sizes: Optional[Sequence[int]] = None, *,
              chunk: int = DEFAULT_CHUNK) -> ContextDecomposition:
    """Split A [N, N] into the query-independent prior b and the context term R = A − 1bᵀ."""
    n = _check(A, grid)
    if A.shape[0] != n:
        raise ValueError("decompose needs all N query rows")
    ks_list = list(kernel_sizes or odd_kernel_sizes(grid))
    ks = _kernel_tensor(ks_list, A.device)
    b = torch.zeros(n, dtype=torch.float64, device=A.device)
    for i in range(0, n, chunk):
        b += A[i:i + chunk].double().sum(0)
    b /= n
    ctx = torch.empty(n, dtype=torch.float64, device=A.device)
    asm_total = torch.zeros(len(ks), dtype=torch.float64, device=A.device)
    pos_total = torch.zeros(len(ks), dtype=torch.float64, device=A.device)
    valid_count = 0
    for i in range(0, n, chunk):
        r = A[i:i + chunk].double() - b
        a = r.abs()
        l1 = a.sum(1)
        ctx[i:i + chunk] = 0.5 * l1
        valid = l1 > 1e-12
        q = torch.arange(i, i + r.shape[0], device=A.device)
        if valid.any():
            asm_total += _window_sums(a[valid] / l1[valid, None], q[valid], grid, ks).sum(0)
            pos = r[valid].clamp(min=0)
            pos_total += _window_sums(pos / pos.sum(1, keepdim=True), q[valid], grid, ks).sum(0)
            valid_count += int(valid.sum())
    context_mass = float(ctx.mean())
    context_asm = asm_total / valid_count if valid_count else torch.full_like(asm_total, float("nan"))
    context_pos_asm = pos_total / valid_count if valid_count else torch.full_like(pos_total, float("nan"))
    return ContextDecomposition(
        prior=b.cpu(), grid=tuple(grid), prior_mass=1.0 - context_mass, context_mass=context_mass,
        context_per_query=ctx.cpu(), prior_tv_uniform=float(0.5 * (b - 1.0 / n).abs().sum()),
        context_asm=context_asm.cpu(), kernel_sizes=ks_list, context_pos_asm=context_pos_asm.cpu())


def erf(curve: torch.Tensor, kernel_sizes: Sequence[int], threshold: float = 0.8) -> torch.Tensor:
    """Effective receptive field: the smallest K with ``ASM(K) ≥ threshold`` (of an attention map's ASM curve or of
    a gradient map's, :mod:`aconvlib.analysis.receptive_field`).

    ``curve`` [..., nK] (non-decreasing in K) → [...] float64; NaN where no K reaches the threshold.
    """
    curve = torch.as_tensor(curve, dtype=torch.float64)
    ks = torch.as_tensor(list(kernel_sizes), dtype=torch.float64, device=curve.device)
    hit = curve >= threshold - 1e-9
    first = hit.double().argmax(-1)
    out = ks[first]
    return torch.where(hit.any(-1), out, torch.full_like(out, float("nan")))


@dataclass
class Sink:
    """The single most-attended key of a map: its index, (row, col), and share ``b[k*]`` of all attention."""

    key: int
    position: tuple[int, int]
    share: float
    ratio_to_uniform: float


def attention_sink(A: torch.Tensor, grid: tuple[int, int], *, chunk: int = DEFAULT_CHUNK) -> Sink:
    """``k* = argmax_k b[k]`` with b the column mean of A [N, N]; share = ``b[k*]``, ratio = ``N·b[k*]``."""
    n = _check(A, grid)
    b = torch.zeros(n, dtype=torch.float64, device=A.device)
    for i in range(0, A.shape[0], chunk):
        b += A[i:i + chunk].double().sum(0)
    b /= A.shape[0]
    k = int(b.argmax())
    share = float(b[k])
    return Sink(k, (k // grid[1], k % grid[1]), share, share * n)


def detect_artifacts(maps: dict, grids: dict, ratio: float = 3.0) -> dict[str, Sink]:
    """The layers whose most-attended key draws at least ``ratio`` times the uniform share 1/N from the average
    query: name → :class:`Sink`. Relative to uniform, so the rule means the same on an 8×8 and a 64×64 grid (an
    absolute share of 0.1 is 6.4× uniform on 8×8 but 410× on 64×64)."""
    out = {}
    for name, A in maps.items():
        sink = attention_sink(A, grids[name])
        if sink.ratio_to_uniform >= ratio:
            out[name] = sink
    return out
