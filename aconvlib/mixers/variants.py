"""The token mixers a comparison puts in place of self-attention, and the one context manager that mounts them.

:class:`Method` names them (the teacher's own self-attention, ΔConv, linear attention, window attention,
neighborhood attention, and the controls: self-attention removed, uniform attention); :func:`mounted` puts
one on a pipeline (or denoiser) for the duration of a ``with`` block and gives the stock model back on exit,
also after an exception. Every comparison (the embedded models' Table 3 and controls, the real models' runs)
goes through it; display labels are the book's.
"""
from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["Method", "mounted"]


class Method(str, Enum):
    """A token mixer of a comparison; the value is the ``method`` column of the stored tables."""

    TEACHER = "self-attention"
    DELTACONV = "deltaconv"
    LINEAR = "linear"
    WINDOW = "window"
    NA = "na"
    NONE = "none"
    UNIFORM = "uniform"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def trained(self) -> bool:
        """A distilled student (its weights come from an adapter), not a training-free swap."""
        return self in (Method.DELTACONV, Method.LINEAR)


@contextlib.contextmanager
def mounted(pipe, method, *, kernel: Optional[int] = None, adapter=None, **options) -> Iterator:
    """Inside the block every ``attn1`` of ``pipe`` (a pipeline or denoiser) is ``method``; yields ``pipe``.

    ``TEACHER``: nothing changes. ``NA``: K×K neighborhood attention (``kernel``), a processor swap.
    ``WINDOW``, ``NONE``, ``UNIFORM``: training-free mixers on the teacher's own weights (``options``, e.g.
    ``window=49, mode="1d"``). ``DELTACONV``, ``LINEAR``: the saved ``adapter`` (folder or hub id) of that kind,
    the originals kept aside; for ``DELTACONV`` also one of the authors' released students (a file in their format,
    a released name or ``7eu7d7/ConvFusion``: :func:`~aconvlib.mixers.official.load_official`, ``options`` going
    to it). On exit the stock model is back.
    """
    from .convert import load_mixer, mixer_applied, restore_attention
    from .neighborhood import neighborhood_attention

    method = Method(method)
    if method is Method.TEACHER:
        yield pipe
    elif method is Method.NA:
        if kernel is None:
            raise ValueError("neighborhood attention needs kernel=K")
        with neighborhood_attention(pipe, int(kernel)):
            yield pipe
    elif method.trained:
        if adapter is None:
            raise ValueError(f"a {method.value} student needs adapter=<saved adapter folder or hub id>")
        from .official import is_official_source, load_official

        if method is Method.DELTACONV and is_official_source(adapter):
            load_official(pipe, str(adapter), keep_original=True, **options)
        else:
            load_mixer(pipe, str(Path(adapter)) if isinstance(adapter, Path) else adapter, kind=method.value,
                       keep_original=True)
        try:
            yield pipe
        finally:
            restore_attention(pipe)
    else:
        with mixer_applied(pipe, method.value, **options):
            yield pipe
