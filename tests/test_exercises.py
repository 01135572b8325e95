"""The book's exercises: `check` fails a wrong answer with one plain line, and the "build the block" checker passes a
correct ΔConvBlock written from the paper's equations and names the fault of broken ones in plain words."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aconvlib.book.exercises import BlockReport, SolutionMismatch, check, check_block


class ReaderBlock(nn.Module):
    """A ΔConvBlock as a reader writes it from Sec. 4 (the chapter's skeleton, filled in); the class attributes
    switch on one fault each."""

    gate = "scaled"          # "plain": a·g without 1/√C'; "sigmoid": a·sigmoid(g)
    pooling = True           # False: the average-pooling branch left out
    pad_mode = "zeros"       # "reflect" / "replicate": the border padded with other values
    layout = "tokens"        # "grid": returns [B, H, W, C] instead of tokens
    up_mode = "bilinear"     # "nearest": the half-resolution stage upsampled another way

    def __init__(self, dim, kernel_size=9, ratio=0.5):
        super().__init__()
        inner = int(dim * ratio)
        self.k = kernel_size
        self.in_proj = nn.Linear(dim, inner)
        self.dw = nn.ParameterList([nn.Parameter(torch.randn(inner, 1, kernel_size, kernel_size) / kernel_size)
                                    for _ in range(2)])
        self.out_proj = nn.Linear(inner, dim)
        self.pool_proj = nn.Linear(dim, dim)

    def stage(self, z, weight):
        k = self.k
        if self.pad_mode == "zeros":
            u = F.conv2d(z, weight, padding=k // 2, groups=z.shape[1])
        else:
            u = F.conv2d(F.pad(z, (k // 2,) * 4, mode=self.pad_mode), weight, groups=z.shape[1])
        a, g = u.chunk(2, dim=1)
        if self.gate == "scaled":
            return a * g / math.sqrt(a.shape[1])
        return a * g if self.gate == "plain" else a * torch.sigmoid(g)

    def forward(self, x, grid):
        b, n, c = x.shape
        h, w = grid
        z = self.in_proj(x).transpose(1, 2).reshape(b, -1, h, w)           # [B, C·r, H, W]
        full = self.stage(z, self.dw[0])
        small = F.adaptive_avg_pool2d(z, (h // 2, w // 2))
        half = F.interpolate(self.stage(small, self.dw[1]), size=(h, w), mode=self.up_mode,
                             **({"align_corners": False} if self.up_mode == "bilinear" else {}))
        y = self.out_proj(torch.cat([full, half], 1).flatten(2).transpose(1, 2))   # [B, N, C]
        if self.pooling:
            y = y + self.pool_proj(x.mean(1, keepdim=True))
        return y.view(b, h, w, c) if self.layout == "grid" else y


def _variant(**faults):
    return type("Broken", (ReaderBlock,), faults)


def test_correct_block_passes():
    rep = check_block(ReaderBlock)
    assert isinstance(rep, BlockReport) and rep.ok, str(rep)
    assert rep.max_abs_diff < 1e-4 and "matches" in str(rep)
    check_block(ReaderBlock, dim=32, kernel_size=7, grid=(21, 17), strict=True)   # other sizes, odd grid


@pytest.mark.parametrize("faults, words", [
    (dict(gate="plain"), ["gate", "(no scale: the plain simple gate)"]),
    (dict(gate="sigmoid"), ["gate", "a·sigmoid(g)"]),
    (dict(pooling=False), ["pooling branch: missing"]),
    (dict(pad_mode="reflect"), ["padding", "within K//2 = 2 tokens of the border"]),
    (dict(pad_mode="replicate"), ["padding"]),
    (dict(layout="grid"), ["shape", "[2, 16, 14, 16]"]),
    (dict(up_mode="nearest"), ["half-resolution stage", "bilinear"]),
], ids=["plain-gate", "sigmoid-gate", "no-pooling", "reflect-padding", "replicate-padding", "shape", "upsampling"])
def test_checker_names_the_fault(faults, words):
    rep = check_block(_variant(**faults))
    assert not rep.ok
    text = str(rep)
    for w in words:
        assert w in text, text
    # one fault, one finding: the other parts are not blamed
    blamed = {f.split(":")[0] for f in rep.findings if not f.startswith("note")}
    assert len(blamed) == 1, rep.findings
    with pytest.raises(SolutionMismatch, match=words[0].split()[0]):
        check_block(_variant(**faults), strict=True)


def test_checker_reports_a_crash_and_missing_weights_in_words():
    class Crashes(ReaderBlock):
        def forward(self, x, grid):
            raise NotImplementedError("TODO")

    rep = check_block(Crashes)
    assert not rep.ok and "raised NotImplementedError: TODO" in rep.findings[0]

    class NoKernels(nn.Module):
        def __init__(self, dim, kernel_size, ratio=0.5):
            super().__init__()
            self.in_proj = nn.Linear(dim, 8)

        def forward(self, x, grid):
            return x

    rep = check_block(NoKernels)
    assert not rep.ok and "no parameter" in rep.findings[0] and "dw.0" in rep.findings[0]


def test_check_raises_one_plain_line_naming_the_exercise():
    assert check("ex-00-2", 4 * 4096 * 320**2, 4 * 4096 * 320**2) == 4 * 4096 * 320**2
    assert check("ex-x", {"a": [1.0, 2.0]}, {"a": [1.0, 2.0000001]}, rtol=1e-6) == {"a": [1.0, 2.0]}
    with pytest.raises(SolutionMismatch, match=r"^exercise ex-00-2: the solution computes 5, but the independently "
                                               r"derived answer is 4 \(they must agree exactly\)$"):
        check("ex-00-2", 5, 4)
    with pytest.raises(SolutionMismatch, match="within rtol 0.01"):
        check("ex-y", 1.1, 1.0, rtol=0.01)
    with pytest.raises(SolutionMismatch):
        check("ex-z", {"a": 1}, {"b": 1})
    with pytest.raises(SolutionMismatch):
        check("ex-s", "holds", "fails")
