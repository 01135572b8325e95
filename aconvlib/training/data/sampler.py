"""Sampling (:class:`BucketBatchSampler`): batches of one bucket, a pure function of (seed, epoch), resumable."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from .common import DataError


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------

def _derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class SampledBatch:
    """Batch ``step`` of a :class:`BucketBatchSampler`: sample indices of one bucket and the
    caption-dropout mask (True: use the empty caption / the cached unconditional text states)."""

    step: int
    epoch: int
    bucket: str
    indices: list[int]
    drop: list[bool]


class BucketBatchSampler:
    """Batches of one bucket each, deterministic given (seed, step), with caption dropout.

    ``groups``: {bucket name: sample indices}, or anything with a ``groups()`` method
    (:class:`PreparedBuckets`, ``LatentCache``). ``len(sampler)`` is the number of batches per epoch
    (``drop_last`` drops each bucket's incomplete last batch). ``batch(k)`` is a pure function of
    (seed, k); iteration runs forever from ``start_step`` (stop at your step budget), and also works
    as a DataLoader ``batch_sampler`` through :meth:`index_batches`.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]] | Any, batch_size: int, *, seed: int = 0,
                 caption_dropout: float = 0.1, drop_last: bool = False, start_step: int = 0):
        if hasattr(groups, "groups") and callable(groups.groups):
            groups = groups.groups()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, not {batch_size!r}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise DataError(f"caption_dropout must be a probability in [0, 1], not {caption_dropout!r}")
        if start_step < 0:
            raise DataError(f"start_step must be ≥ 0, not {start_step}")
        self.groups = {str(k): [int(i) for i in v] for k, v in sorted(groups.items()) if len(v)}
        if not self.groups:
            raise DataError("no samples to sample from (all groups are empty)")
        self.batch_size, self.seed, self.caption_dropout = batch_size, int(seed), float(caption_dropout)
        self.drop_last, self.start_step = drop_last, start_step
        self.batches_per_epoch = sum(len(v) // batch_size if drop_last else -(-len(v) // batch_size)
                                     for v in self.groups.values())
        if self.batches_per_epoch == 0:
            raise DataError(f"drop_last=True with batch_size {batch_size} leaves no batch: the largest bucket has "
                            f"{max(len(v) for v in self.groups.values())} samples")


        self._epoch_cache: tuple[int, list[tuple[str, list[int], list[bool]]]] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int], list[bool]]]:
        """[(bucket, indices, drop)] of one epoch, from one generator seeded by (seed, epoch)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        g = torch.Generator().manual_seed(_derive_seed("aconvlib-bucket-sampler", self.seed, epoch))
        chunks: list[tuple[str, list[int]]] = []
        for name, idx in self.groups.items():
            perm = torch.randperm(len(idx), generator=g).tolist()
            shuffled = [idx[p] for p in perm]
            for s in range(0, len(shuffled), self.batch_size):
                chunk = shuffled[s:s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    chunks.append((name, chunk))
        order = torch.randperm(len(chunks), generator=g).tolist()
        chunks = [chunks[o] for o in order]
        u = torch.rand(sum(len(c) for _, c in chunks), generator=g, dtype=torch.float64).tolist()
        plan, pos = [], 0
        for name, chunk in chunks:
            plan.append((name, chunk, [x < self.caption_dropout for x in u[pos:pos + len(chunk)]]))
            pos += len(chunk)
        self._epoch_cache = (epoch, plan)
        return plan

    def batch(self, step: int) -> SampledBatch:
        if step < 0:
            raise DataError(f"step must be ≥ 0, not {step}")
        epoch, j = divmod(step, self.batches_per_epoch)
        name, idx, drop = self.epoch_plan(epoch)[j]
        return SampledBatch(step, epoch, name, list(idx), list(drop))

    def iter_from(self, step: int) -> Iterator[SampledBatch]:
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[SampledBatch]:
        return self.iter_from(self.start_step)

    def index_batches(self, start_step: int | None = None, num_steps: int | None = None) -> Iterator[list[int]]:
        """Index lists only (a DataLoader ``batch_sampler``; caption dropout is then up to the caller)."""
        step = self.start_step if start_step is None else start_step
        end = None if num_steps is None else step + num_steps
        while end is None or step < end:
            yield self.batch(step).indices
            step += 1
