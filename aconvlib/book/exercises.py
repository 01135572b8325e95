"""The book's exercises: solutions that check their answers, and the "build the block yourself" checker.

Every computational solution of a chapter computes its answer with aconvlib and compares it with a value derived
independently (a closed form, a count by hand) through :func:`check`; a wrong solution raises
:class:`SolutionMismatch`, so the chapter's execution fails (and with it CI)::

    n = check("ex-00-2", attention_flops(n=64 * 64, c=320), 4 * 4096 * 320**2 + 4 * 4096**2 * 320 + 4 * 4096**2)

:func:`check_block` compares a reader's ΔConvBlock (chapter 6's exercise) with
:class:`aconvlib.mixers.deltaconv.DeltaConvBlock` on the same weights and says in plain words what differs: the
output shape, the pooling branch, the gate, the padding of the depthwise convolution or the half-resolution stage.
It finds the part by targeted probes, each silencing every part but one with weights both blocks share:

=================  =====================================================================================
probe              what both blocks get                      the reference output is
=================  =====================================================================================
shape              random tokens on a non-square grid        ``[B, N, C]``
pooling branch     in_proj zeroed (the stages output 0)      ``out_proj.bias + pool_proj(mean_N x)``, every token
gate               identity kernel at full resolution,       ``out_proj([a·g/√C', 0])``: the gate alone
                   zero kernel at half, pooling zeroed
padding            random full-resolution kernel only        the full-resolution stage; a fault shows only
                                                             within K//2 of the border
half resolution    random half-resolution kernel only        pool down, conv, gate, bilinear up
=================  =====================================================================================

The reader's block follows the chapter's skeleton: ``__init__(dim, kernel_size, ratio=0.5)``, ``forward(x, grid)``
on tokens ``[B, N, C]``, and the parameters ``in_proj``, ``out_proj``, ``pool_proj`` (``nn.Linear``) and ``dw`` (one
depthwise kernel per stage, ``[C·r, 1, K, K]`` as PyTorch's ``F.conv2d(groups=C·r)`` wants it, or an ``nn.Conv2d``).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = ["BlockReport", "SolutionMismatch", "check", "check_block"]


class SolutionMismatch(AssertionError):
    """A solution's answer differs from the independently derived value (one plain line)."""


def _close(value: Any, expected: Any, rtol: float, atol: float) -> bool:
    if isinstance(expected, dict):
        return (isinstance(value, dict) and set(value) == set(expected)
                and all(_close(value[k], expected[k], rtol, atol) for k in expected))
    if isinstance(expected, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(value) == len(expected)
                and all(_close(v, e, rtol, atol) for v, e in zip(value, expected)))
    if isinstance(expected, (bool, str)) or expected is None:
        return value == expected
    if isinstance(expected, numbers.Number) or hasattr(expected, "item"):
        try:
            v, e = float(value), float(expected)
        except (TypeError, ValueError):
            return False
        return (math.isnan(v) and math.isnan(e)) or abs(v - e) <= atol + rtol * abs(e)
    return value == expected


def check(label: str, value: Any, expected: Any, *, rtol: float = 0.0, atol: float = 0.0) -> Any:
    """Return ``value`` if it equals ``expected`` within ``atol + rtol·|expected|`` (numbers; element by element for
    lists, tuples and dicts with the same keys; strings, bools and None exactly), else raise :class:`SolutionMismatch`
    naming the exercise, both values and the tolerance. ``expected`` must come from an independent derivation."""
    if not _close(value, expected, rtol, atol):
        tol = "exactly" if not (rtol or atol) else f"within rtol {rtol:g}, atol {atol:g}"
        raise SolutionMismatch(f"exercise {label}: the solution computes {value!r}, but the independently derived "
                               f"answer is {expected!r} (they must agree {tol})")
    return value


# ---------------------------------------------------------------------------------------- build the block


@dataclass
class BlockReport:
    """What :func:`check_block` found: ``ok`` when the reader's block matches aconvlib's on every probe;
    ``findings`` says in plain words what differs (empty when ok); ``max_abs_diff`` on the full random probe."""

    ok: bool
    findings: list[str] = field(default_factory=list)
    max_abs_diff: Optional[float] = None

    def __str__(self) -> str:
        if self.ok:
            return (f"Your block matches aconvlib's DeltaConvBlock on the same weights (largest difference "
                    f"{self.max_abs_diff:.1e}): shape, gate, pooling branch, padding and both pyramid stages agree.")
        return "Your block differs from aconvlib's DeltaConvBlock:\n" + "\n".join(f"- {f}" for f in self.findings)

    def _repr_markdown_(self) -> str:
        return str(self).replace("\n- ", "\n\n- ")


class _BlockFault(Exception):
    """Stops the probes at a finding that makes the later ones meaningless (wrong shape, a crash, missing weights)."""


def _reference(dim: int, kernel_size: int, ratio: float, seed: int):
    import torch

    from ..mixers.deltaconv import DeltaConvBlock

    ref = DeltaConvBlock(dim, kernel_size, scales=(1.0, 0.5), ratio=ratio, gate="scaled", gate_scale="divide")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():   # every branch clearly non-zero, biases included
            scale = 0.5 if name.endswith("bias") else 1.0 / math.sqrt(p.shape[-1] if p.ndim == 2 else kernel_size ** 2)
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return ref.eval()


def _instantiate(user, dim: int, kernel_size: int, ratio: float):
    import torch

    if isinstance(user, torch.nn.Module):
        return user
    if not callable(user):
        raise _BlockFault(f"check_block expects your block's class or an instance of it, got {type(user).__name__}")
    try:
        return user(dim, kernel_size, ratio=ratio)
    except Exception as e:   # noqa: BLE001 - the reader's constructor, reported in words
        raise _BlockFault(f"constructing your block as {getattr(user, '__name__', user)}({dim}, {kernel_size}, "
                          f"ratio={ratio}) raised {type(e).__name__}: {e}") from None


_DW = re.compile(r"^(?:dw|stages)\.(\d+)(?:\.weight)?$")


def _load_weights(user, ref, dim: int, kernel_size: int) -> list[str]:
    """Copy ``ref``'s weights into the reader's block; return notes on parameters ``ref`` has no counterpart for."""
    import torch

    inner, k = ref.inner_dim, kernel_size
    wanted = {f"{m}.{t}": getattr(getattr(ref, m), t) for m in ("in_proj", "out_proj", "pool_proj")
              for t in ("weight", "bias")}
    theirs = dict(user.named_parameters())
    notes, done = [], set()
    with torch.no_grad():
        for name, p in theirs.items():
            if name in wanted:
                if tuple(p.shape) != tuple(wanted[name].shape):
                    raise _BlockFault(f"shape: your {name} is {list(p.shape)}, the ΔConvBlock's is "
                                      f"{list(wanted[name].shape)} (C = {dim}, C·r = {inner}, two stages of C·r/2)")
                p.copy_(wanted[name])
                done.add(name)
                continue
            m = _DW.match(name)
            if m and int(m.group(1)) < len(ref.stages):
                w = ref.stages[int(m.group(1))].weight                      # [K, K, C·r]
                if tuple(p.shape) == (inner, 1, k, k):
                    p.copy_(w.permute(2, 0, 1).unsqueeze(1))
                elif tuple(p.shape) == (k, k, inner):
                    p.copy_(w)
                else:
                    raise _BlockFault(f"shape: your depthwise kernel {name} is {list(p.shape)}; one K×K filter per "
                                      f"channel is [C·r, 1, K, K] = [{inner}, 1, {k}, {k}]")
                done.add(f"dw.{m.group(1)}")
            elif re.match(r"^dw\.\d+\.bias$", name):
                p.zero_()                                                   # the ΔConvBlock's convs have no bias
                notes.append(f"{name} set to 0 (the ΔConvBlock's depthwise convolutions have no bias)")
            else:
                notes.append(f"{name} has no counterpart in the ΔConvBlock and keeps its own values")
    missing = [n for n in wanted if n not in done and not n.startswith("pool_proj")]
    missing += [f"dw.{i}" for i in range(len(ref.stages)) if f"dw.{i}" not in done]
    if missing:
        raise _BlockFault(f"your block has no parameter {', '.join(missing)} (the skeleton's names: in_proj, "
                          "dw[0], dw[1], out_proj, pool_proj), so the same weights cannot be loaded into it")
    if not any(n.startswith("pool_proj") for n in done):
        notes.append("pool_proj is missing")
    return notes


def _run(block, x, grid, what: str):
    import torch

    try:
        with torch.no_grad():
            return block(x, grid)
    except Exception as e:   # noqa: BLE001 - the reader's forward, reported in words
        raise _BlockFault(f"your block's forward raised {type(e).__name__}: {e} (input {list(x.shape)} on grid "
                          f"{grid[0]}×{grid[1]}, {what})") from None


def _set(blocks, edit: Callable) -> None:
    """Apply ``edit(ref)`` to the reference weights and copy them into the reader's block too."""
    ref, user = blocks
    import torch

    with torch.no_grad():
        edit(ref)
    _load_weights(user, ref, ref.dim, ref.kernel_size)


def check_block(user, dim: int = 16, kernel_size: int = 5, ratio: float = 0.5, grid: tuple[int, int] = (16, 14),
                seed: int = 0, strict: bool = False) -> BlockReport:
    """Compare a reader's ΔConvBlock (class or instance) with aconvlib's on the same weights.

    Args:
        user: the reader's block class (constructed as ``user(dim, kernel_size, ratio=ratio)``) or an instance.
        dim, kernel_size, ratio: C, K and r of the comparison (two stages, scales 1 and 1/2, scaled simple gate
            a·g/√C' with C' = C·r/2).
        grid: (H, W) of the probes; non-square, so that swapping H and W shows.
        strict: raise :class:`SolutionMismatch` with the findings instead of returning a failed report.

    Returns:
        a :class:`BlockReport` (print it, or show it as the last line of a cell).
    """
    import torch

    torch.manual_seed(seed)
    ref = _reference(dim, kernel_size, ratio, seed)
    h, w = grid
    x = torch.randn(2, h * w, dim, generator=torch.Generator().manual_seed(seed + 1))
    try:
        with torch.no_grad():
            report = _probe(_instantiate(user, dim, kernel_size, ratio), ref, x, grid)
    except _BlockFault as e:
        report = BlockReport(False, [str(e)])
    if strict and not report.ok:
        raise SolutionMismatch(str(report))
    return report


def _diff(a, b) -> float:
    return float((a - b).abs().max())


def _probe(user, ref, x, grid) -> BlockReport:
    import torch

    user = user.float().eval()
    notes = _load_weights(user, ref, ref.dim, ref.kernel_size)
    b, n, c = x.shape
    h, w = grid
    y_ref = ref(x, grid)
    y = _run(user, x, grid, "random tokens")
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (b, n, c):
        got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise _BlockFault(f"shape: for tokens [B, N, C] = {[b, n, c]} on a {h}×{w} grid your block returns {got}; "
                          f"it must return tokens [B, N, C] = {[b, n, c]} (flatten the grid back row by row: "
                          ".reshape(B, H·W, C))")

    def tol(ref_out) -> float:
        return 1e-4 * max(1.0, float(ref_out.abs().max()))

    full = _diff(y, y_ref)
    if full <= tol(y_ref):
        return BlockReport(True, [], full)
    findings, blocks = [], (ref, user)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    restore = (lambda r: r.load_state_dict(state))
    k = ref.kernel_size

    # pooling branch: in_proj = 0 -> z = 0 -> every stage outputs 0 -> out = out_proj.bias + pool_proj(mean x)
    _set(blocks, lambda r: (restore(r), r.in_proj.weight.zero_(), r.in_proj.bias.zero_()))
    p_ref, p = ref(x, grid), _run(user, x, grid, "pooling probe")
    if _diff(p, p_ref) > tol(p_ref):
        bias_only = ref.out_proj.bias.expand_as(p)
        spread = float((p - p.mean(1, keepdim=True)).abs().max())
        if _diff(p, bias_only) <= tol(p_ref) or "pool_proj is missing" in notes:
            findings.append("pooling branch: missing. With the convolution stages silenced (in_proj set to 0) your "
                            "output is out_proj's bias alone; the ΔConvBlock adds pool_proj(mean of the block input "
                            "x over all N tokens), one vector added at every token (Sec. 4.2, the low-frequency "
                            "prior)")
        elif spread > tol(p_ref):
            findings.append("pooling branch: with the convolution stages silenced (in_proj set to 0) your output "
                            "still varies from token to token; the pooling branch adds one and the same vector at "
                            "every token: pool_proj(x.mean(dim=1)) of the block input x")
        else:
            findings.append("pooling branch: it adds a vector that is the same at every token, as it should, but "
                            "not pool_proj(mean of the block input x over the N tokens): average x (not z, not the "
                            "channels) over dim=1, then apply pool_proj")

    # gate: identity kernel at full resolution, zero kernel at half resolution, pooling and output bias zeroed
    def gate_probe(r):
        restore(r)
        r.pool_proj.weight.zero_(), r.pool_proj.bias.zero_(), r.out_proj.bias.zero_()
        r.stages[0].weight.zero_()
        r.stages[0].weight[k // 2, k // 2, :] = 1.0
        r.stages[1].weight.zero_()

    _set(blocks, gate_probe)
    g_ref, g = ref(x, grid), _run(user, x, grid, "gate probe")
    gate_ok = _diff(g, g_ref) <= tol(g_ref)
    if not gate_ok:
        gamma = ref.stages[0].gate_factor
        scale = float((g * g_ref).sum() / (g_ref * g_ref).sum())
        half = ref.inner_dim // 2
        if _diff(g, scale * g_ref) <= tol(g_ref):
            factor = scale * gamma
            why = (" (no scale: the plain simple gate)" if abs(factor - 1) < 1e-3 else
                   f" (= a·g·√C': multiplied where the paper divides)" if abs(factor - math.sqrt(half)) < 1e-3 else "")
            findings.append(f"gate: your stage multiplies a·g by {factor:.4g}{why}; the scaled simple gate is "
                            f"a·g/√C' with C' = C·r/2 = {half}, i.e. a·g·{gamma:.4g} (a, g: the two halves of the "
                            "depthwise convolution's channels)")
        else:
            from ..mixers.deltaconv import DeltaConvBlock

            sig = DeltaConvBlock(ref.dim, k, scales=(1.0, 0.5), ratio=ref.ratio, gate="sigmoid")
            sig.load_state_dict(ref.state_dict())
            if _diff(g, sig(x, grid)) <= tol(g_ref):
                findings.append(f"gate: you used a·sigmoid(g); the paper's scaled simple gate is the plain product "
                                f"a·g divided by √C' (C' = C·r/2 = {half})")
            else:
                findings.append("gate: with identity kernels (only the gate acts) your stage output is not "
                                f"a·g/√C' (C' = {half}) nor a multiple of it: split the C·r channels into halves "
                                "a (first) and g (second) after the depthwise convolution, multiply, divide by √C'; "
                                "check also that in_proj is applied to every token and out_proj to the "
                                "concatenation [full-resolution stage, half-resolution stage]")

    # padding: a random kernel at full resolution only; differences confined to the border band = padding
    def stage_probe(keep: int):
        def edit(r):
            restore(r)
            r.pool_proj.weight.zero_(), r.pool_proj.bias.zero_(), r.out_proj.bias.zero_()
            r.stages[1 - keep].weight.zero_()
        return edit

    if gate_ok:
        _set(blocks, stage_probe(0))
        s_ref, s = ref(x, grid), _run(user, x, grid, "full-resolution probe")
        if _diff(s, s_ref) > tol(s_ref):
            d = (s - s_ref).abs().amax(dim=(0, 2)).view(h, w)
            band = torch.zeros(h, w, dtype=torch.bool)
            band[: k // 2], band[h - k // 2:], band[:, : k // 2], band[:, w - k // 2:] = True, True, True, True
            if float(d[~band].max()) <= tol(s_ref):
                findings.append(f"padding: your full-resolution stage agrees in the interior and differs only within "
                                f"K//2 = {k // 2} tokens of the border; the depthwise K×K convolution pads the grid "
                                f"with zeros, K//2 on every side (F.conv2d(..., padding=K//2, groups=C·r)), so a "
                                "token near the edge sees zeros beyond it (not reflected, replicated or wrapped "
                                "values)")
            else:
                findings.append("depthwise convolution: your full-resolution stage differs away from the border too: "
                                "one K×K filter per channel (groups = C·r) applied as F.conv2d does (no flipped "
                                "kernel), on the grid read row by row (x.view(B, H, W, C): N = H·W, W the fast axis)")
        _set(blocks, stage_probe(1))
        s_ref, s = ref(x, grid), _run(user, x, grid, "half-resolution probe")
        if _diff(s, s_ref) > tol(s_ref):
            # a padding fault shows in the half-resolution stage within K//2 small tokens of its border, i.e. about
            # 2·(K//2) + 2 tokens of the full grid after bilinear upsampling
            d = (s - s_ref).abs().amax(dim=(0, 2)).view(h, w)
            wide = 2 * (k // 2) + 2
            band = torch.zeros(h, w, dtype=torch.bool)
            band[:wide], band[h - wide:], band[:, :wide], band[:, w - wide:] = True, True, True, True
            padding_found = any(f.startswith("padding") for f in findings)
            if padding_found and bool((~band).any()) and float(d[~band].max()) <= tol(s_ref):
                findings[-1] += " (the half-resolution stage shows the same fault near its border)"
            else:
                findings.append(f"half-resolution stage: it differs from average pooling to ⌊H/2⌋×⌊W/2⌋ = "
                                f"{h // 2}×{w // 2}, the same depthwise convolution and gate, then bilinear "
                                f"upsampling back to {h}×{w} (F.interpolate(..., mode='bilinear', "
                                "align_corners=False))")
    _set(blocks, restore)
    if not findings:
        findings.append(f"every part agrees on its own but the whole block differs (largest difference {full:.3g}): "
                        "check how the parts are added: y = out_proj(concat(stages)) + pool_proj(mean_N x)")
    findings += [f"note: {n}" for n in notes if n != "pool_proj is missing"]
    return BlockReport(False, findings, full)
