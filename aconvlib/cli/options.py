"""Shared helpers of the command line: flags from config dataclasses, argument checks."""
from __future__ import annotations

import argparse
import dataclasses
import typing


class UsageError(ValueError):
    """A command-line argument is wrong (raised before any work; printed as one line)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_for(tp):
    """An argparse ``type`` for a dataclass field type (``int``, ``float``, ``str``, ``X | None``, ``tuple[int, ...]``,
    ``str | int``)."""
    if isinstance(tp, str):  # postponed annotations
        tp = eval(tp, vars(typing), {})  # noqa: S307 - field annotations of our own dataclasses
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = args[0]
        return lambda v: tuple(inner(x) for x in str(v).split(",") if x != "")
    if args and origin is not tuple and len(args) >= 1 and tp not in (int, float, str):
        if set(args) == {str, int}:
            return lambda v: int(v) if str(v).lstrip("-").isdigit() else v
        return _parser_for(args[0])
    return tp


def add_config_flags(parser: argparse.ArgumentParser, cls, exclude=(), help: dict | None = None) -> list[str]:
    """Add one ``--field-name`` flag per field of dataclass ``cls`` (default: unset → the dataclass default).

    Returns the field names that got a flag. Tuple fields take comma-separated values; bool fields become
    ``--name`` / ``--no-name``.
    """
    names = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{(help or {}).get(f.name, '')} (default: {shown})".strip()
        if hints[f.name] is bool:  # --name / --no-name
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=_parser_for(hints[f.name]), default=None,
                                metavar=f.name.upper(), help=text)
        names.append(f.name)
    return names


def config_from_args(cls, args, names, base: dict | None = None, **fixed):
    """Build ``cls`` from the flags the user set over ``base`` (e.g. a recipe's values; others keep the
    dataclass defaults); bad values → UsageError."""
    kw = dict(base or {})
    kw.update({n: getattr(args, n) for n in names if getattr(args, n) is not None})
    try:
        return cls(**kw, **fixed)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _at_least(kind, strict: bool, what: str):
    """argparse type: a ``kind`` (int or float) above 0 (``strict``) or at least 0, else ``expected <what>``."""
    def parse(v):
        try:
            x = kind(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}") from None
        if not (x > 0 if strict else x >= 0):   # also refuses NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
        return x
    return parse


def positive(kind=int):
    """argparse type: a positive ``kind`` (int or float)."""
    return _at_least(kind, True, f"a positive {kind.__name__}")


def known_model(name: str) -> str:
    """argparse type: a registered model name, a hub id or a local folder."""
    from ..models import UnknownModelError, get_spec
    from ..models.registry import _is_hub_id_or_path

    try:
        get_spec(name)
    except UnknownModelError as e:
        if not _is_hub_id_or_path(name):
            raise argparse.ArgumentTypeError(str(e)) from None
    return name


def latent_grid(spec, px: int) -> tuple[int, int]:
    """``spec.latent_grid(px, px)`` with a bad size reported as a UsageError."""
    try:
        return spec.latent_grid(px, px)
    except ValueError as e:
        raise UsageError(f"--px: {e}") from None


def device_arg(allow_auto: bool = False):
    """argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``auto`` if allowed).

    A device that does not exist here is refused at parse time with the reason (a CPU-only torch build, too few
    GPUs), instead of a traceback from deep inside the first ``.to(device)``."""
    def parse(v: str) -> str:
        import torch

        if allow_auto and v == "auto":
            return v
        try:
            dev = torch.device(v)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"unknown device {v!r}: use cpu, cuda, cuda:N or mps{' (or auto)' if allow_auto else ''}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                why = ("this torch build has no CUDA" if torch.version.cuda is None
                       else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
                raise argparse.ArgumentTypeError(f"{v!r}: CUDA is not available here ({why}); use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(f"{v!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{v!r}: Apple MPS is not available here; use --device cpu")
        elif dev.type not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(f"unsupported device {v!r}: use cpu, cuda, cuda:N or mps")
        return v
    return parse


def non_negative(kind=float):
    """argparse type: a ``kind`` ≥ 0."""
    return _at_least(kind, False, "a number >= 0")


def image_path(v: str) -> str:
    """argparse type: an output image path whose folder exists and whose extension PIL can write."""
    from pathlib import Path

    from PIL import Image

    p = Path(v)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{v!r} is a folder; give a file name such as {p / 'out.png'}")
    Image.init()
    if p.suffix.lower() not in Image.registered_extensions():
        raise argparse.ArgumentTypeError(f"{v!r}: unknown image extension {p.suffix!r} (use .png, .jpg, .webp, ...)")
    if not p.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {p.resolve().parent} does not exist")
    return v
