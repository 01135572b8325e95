"""The authors' released ΔConv students in a stock diffusers pipeline, in one line.

    pipe = load_pipeline("Lykon/DreamShaper")                           # the SD1.5 student's base
    pipe = load_official(pipe, "7eu7d7/ConvFusion")                     # picks ConvFusion-sd15-mjv5.safetensors
    pipe = load_official(pipe, "path/to/ConvFusion-sd15-mjv5.safetensors")   # or a local file (.safetensors/.ckpt/.pt)

The authors (ΔConvFusion) published their students for their own framework only. :func:`load_official` reads such
a file, maps each tensor of a converted block's ``conv1`` onto our
:class:`~aconvlib.mixers.deltaconv.DeltaConvBlock` (the one name table, the per-architecture settings and what is
not known about the files live in :mod:`aconvlib.models.released`), checks every shape, and installs the blocks
with the ordinary adapter machinery (:class:`~aconvlib.mixers.adapters.DeltaConvAdapter`: ``save_deltaconv`` then
writes an ordinary adapter, ``restore_attention`` works with ``keep_original=True``).

What is checked, each failure one line (:class:`OfficialCheckpointError`):

* every self-attention layer of the denoiser gets a complete block (no missing tensors), no tensor is left over
  (their loader, too, fails on a key its denoiser does not have), every shape is the one their code gives it for
  this denoiser's widths (kernel size K and the number of pyramid stages are read from the depthwise weights);
* only a transformer block's ``conv1`` (where ``attn1`` was) is a ΔConv block: ``resnets.*.conv1`` and every
  other key are the denoiser's own tensors, copied in as their loader does (``load_base``) after a shape check;
* the base: a student is its base denoiser with ΔConv blocks, so loading it into another model (SD1.5 instead
  of DreamShaper) gives a hybrid nobody trained; :class:`BaseModelMismatchError` unless ``base_check`` says
  otherwise (``"warn"``, ``"off"``).

Kernel sizes other than the authors' defaults (their config keys) are accepted and reported with a warning.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..models import get_denoiser, get_spec, self_attention_layers
from ..models.released import (KEY_PREFIXES, NESTED_STATES, OFFICIAL_HUB_ID, OFFICIAL_SETTINGS, OFFICIAL_TENSORS,
                               RELEASED_CHECKPOINTS, ReleasedCheckpoint, official_block_prefix, released_checkpoint)
from .adapter_base import _key
from .adapters import DeltaConvAdapter
from .layer_specs import model_kind, resolve_kernel_sizes

__all__ = ["BaseModelMismatchError", "OfficialCheckpointError", "OfficialMapping", "denoiser_origin",
           "is_official_source", "load_official", "map_official_state", "read_official_state",
           "resolve_official_source"]

_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
BASE_CHECKS = ("error", "warn", "off")


class OfficialCheckpointError(ValueError):
    """A released checkpoint that does not fit the pipeline (missing / leftover tensors, wrong shapes, no file)."""


class BaseModelMismatchError(OfficialCheckpointError):
    """The pipeline's denoiser is not the model the student was distilled from."""


def _names(items, n: int = 3) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ----------------------------------------------------------------------------------------------
# where the file is, and what it holds
# ----------------------------------------------------------------------------------------------
def is_official_source(value) -> bool:
    """Whether ``value`` names a checkpoint in the authors' format (a weights file, a released name or the hub
    repository) rather than an adapter folder of ours."""
    if value is None:
        return False
    text = str(value)
    return (text.lower().endswith(_SUFFIXES) or text.startswith(OFFICIAL_HUB_ID)
            or any(text in (c.name, c.filename) for c in RELEASED_CHECKPOINTS.values()))


def _released_for_denoiser(den, data: str) -> ReleasedCheckpoint:
    kind_cfg = dict(den.config)
    hits = []
    for c in RELEASED_CHECKPOINTS.values():
        if c.data != data:
            continue
        cfg = get_spec(c.model).config
        if all(cfg.get(k) == kind_cfg.get(k) for k in ("_class_name", "sample_size", "addition_embed_type")):
            hits.append(c)
    if len(hits) != 1:
        raise OfficialCheckpointError(
            f"cannot tell which file of {OFFICIAL_HUB_ID} fits this {type(den).__name__} (sample_size "
            f"{kind_cfg.get('sample_size')}): name one, e.g. {OFFICIAL_HUB_ID}/{next(iter(RELEASED_CHECKPOINTS.values())).filename}")
    return hits[0]


def resolve_official_source(source, denoiser=None, data: str = "mjv5",
                            **hub_kwargs) -> tuple[str, Optional[ReleasedCheckpoint]]:
    """``(local file, released entry or None)`` for a local file or folder, a released name (``convfusion-sd15-mjv5``)
    or file name, ``7eu7d7/ConvFusion`` (the file fitting ``denoiser``, trained on ``data``) or
    ``org/repo/file.safetensors``. Hub files come from the local cache or a download (``hub_kwargs`` go to
    ``hf_hub_download``)."""
    text = os.path.expanduser(str(source))
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in _SUFFIXES)
        known = [f for f in files if any(f.name == c.filename for c in RELEASED_CHECKPOINTS.values())]
        pick = known if len(known) == 1 else files
        if len(pick) != 1:
            raise OfficialCheckpointError(f"{p}: expected one weights file ({', '.join(_SUFFIXES)}), found "
                                          f"{len(files)}: pass the file itself")
        p = pick[0]
    if p.is_file():
        entry = next((c for c in RELEASED_CHECKPOINTS.values() if c.filename == p.name), None)
        return str(p), entry
    entry, repo, filename = None, None, None
    try:
        entry = released_checkpoint(text)
        repo, filename = entry.hub_id, entry.filename
    except KeyError:
        if text.rstrip("/") == OFFICIAL_HUB_ID:
            if denoiser is None:
                raise OfficialCheckpointError(f"{OFFICIAL_HUB_ID} holds one file per model: name it") from None
            entry = _released_for_denoiser(denoiser, data)
            repo, filename = entry.hub_id, entry.filename
        elif text.count("/") >= 2 and text.lower().endswith(_SUFFIXES) and not text.startswith((".", "/")):
            org, name, filename = text.split("/", 2)
            repo = f"{org}/{name}"
            entry = next((c for c in RELEASED_CHECKPOINTS.values() if (c.hub_id, c.filename) == (repo, filename)),
                         None)
    if repo is None:
        raise OfficialCheckpointError(f"{source}: no such file, and not a released ConvFusion checkpoint "
                                      f"({', '.join(RELEASED_CHECKPOINTS)}) or hub path 'org/repo/file.safetensors'")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename, **hub_kwargs), entry
    except Exception as err:  # noqa: BLE001 - offline, not cached, no such file: one line with the way out
        raise OfficialCheckpointError(
            f"{repo}/{filename} is not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}): run `huggingface-cli download {repo} {filename}` where there is network") from err


def _fold(flat: dict) -> dict:
    """Their safetensors writer stores nested dicts as ``outer:inner`` keys; fold the first level back."""
    out: dict = {}
    for k, v in flat.items():
        head, sep, rest = k.partition(":")
        if sep:
            out.setdefault(head, {})[rest] = v
        else:
            out[k] = v
    return out


def read_official_state(path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The flat state dict of a file in the authors' format, as their loader reads it: safetensors (``base:``-nested
    keys unwrapped) or a torch pickle (``{"base": state}`` unwrapped; loaded with ``weights_only=True``); ``ema``
    takes ``base_ema``. A prefix every key shares (``denoiser.``, ``model.``, ``module.``) is removed."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = _fold(load_file(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise OfficialCheckpointError(f"{path}: not a torch state dict loadable with weights_only=True "
                                          f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from err
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    want = NESTED_STATES[1] if ema else NESTED_STATES[0]
    if ema and want not in state:
        raise OfficialCheckpointError(f"{path}: no '{want}' (EMA) weights in this file")
    if isinstance(state.get(want), dict):
        state = state[want]
    nested = [k for k, v in state.items() if not torch.is_tensor(v)]
    if nested:
        raise OfficialCheckpointError(f"{path}: entries that are not tensors: {_names(nested)}")
    for prefix in KEY_PREFIXES[1:]:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    return state


# ----------------------------------------------------------------------------------------------
# names and shapes -> our adapter
# ----------------------------------------------------------------------------------------------
@dataclass
class OfficialMapping:
    """What :func:`map_official_state` found: the adapter's layer specs and config, its state dict (our names), the
    denoiser tensors the file also carries, and notes (kernel sizes other than the authors' defaults, dropped
    all-zero depthwise biases)."""

    layers: list
    config: dict
    tensors: dict = field(default_factory=dict)
    base_tensors: dict = field(default_factory=dict)
    kernel_notes: list = field(default_factory=list)
    dropped: list = field(default_factory=list)


_GATE = re.compile(r"^gates\.(\d+)\.")


def map_official_state(denoiser, state: dict, *, scales=None, source: str = "checkpoint") -> OfficialMapping:
    """Map a state dict in the authors' naming onto ΔConv adapter tensors for ``denoiser`` (any device, ``meta``
    included: only names and shapes are read, except for a depthwise bias, which must be all zero).

    Raises:
        OfficialCheckpointError: one line naming the missing, leftover and wrongly shaped tensors.
    """
    den = get_denoiser(denoiser)
    kind = model_kind(den)
    if kind not in OFFICIAL_SETTINGS:
        raise OfficialCheckpointError(f"no released ΔConv settings for a {kind} denoiser")
    settings = dict(OFFICIAL_SETTINGS[kind])
    layers = self_attention_layers(den)
    by_prefix = {official_block_prefix(l.name) + ".": l for l in layers}
    try:
        official_k = resolve_kernel_sizes(den, "official", layers)
    except ValueError:   # a layout the authors never released (no default to compare with)
        official_k = {}
    own = {k: tuple(v.shape) for k, v in den.state_dict().items()
           if not any(k.startswith(l.name + ".") for l in layers)}
    blocks: dict[str, dict] = {p: {} for p in by_prefix}
    leftover, bad, base = [], [], {}
    for k, v in state.items():
        i = k.find(".conv1.")
        prefix = k[: i + len(".conv1.")] if i >= 0 else None
        if prefix in blocks:
            blocks[prefix][k[len(prefix):]] = v
        elif k in own:
            if tuple(v.shape) != own[k]:
                bad.append(f"{k}: file {tuple(v.shape)} vs model {own[k]}")
            base[k] = v
        else:
            leftover.append(k)
    missing, tensors, specs, notes, dropped, stage_counts = [], {}, [], [], [], set()
    rules = {r.theirs: r for r in OFFICIAL_TENSORS}
    for prefix, l in by_prefix.items():
        got = blocks[prefix]
        if not got:
            missing.append(prefix + "* (whole block)")
            continue
        stages = sorted({int(m.group(1)) for m in map(_GATE.match, got) if m})
        dw = got.get("gates.0.conv_spatial.weight")
        if not stages or stages != list(range(len(stages))) or dw is None or dw.ndim != 3 or dw.shape[0] != dw.shape[1]:
            bad.append(f"{prefix}gates.*: pyramid stages {stages}, depthwise weight "
                       f"{None if dw is None else tuple(dw.shape)} (expected gates.0..S-1, [K, K, C/2])")
            continue
        k_size, n_st = int(dw.shape[0]), len(stages)
        stage_counts.add(n_st)
        inner = int(l.channels * settings["ratio"])
        seen = set()
        for rule in OFFICIAL_TENSORS:
            names = [rule.theirs.format(s=s) for s in stages] if "{s}" in rule.theirs else [rule.theirs]
            for s, name in enumerate(names):
                seen.add(name)
                if name not in got:
                    if rule.required:
                        missing.append(prefix + name)
                    continue
                t, want = got[name], tuple(rule.shape(l.channels, inner, k_size, n_st))
                if tuple(t.shape) != want:
                    bad.append(f"{prefix}{name}: file {tuple(t.shape)} vs expected {want}")
                elif rule.ours is None:
                    if t.device.type == "meta" or bool(t.abs().max() > 0):
                        bad.append(f"{prefix}{name}: a non-zero {rule.note.split(';')[0]}")
                    else:
                        dropped.append(prefix + name)
                else:
                    tensors[f"blocks.{_key(l.name)}.{rule.ours.format(s=s)}"] = t
        leftover += [prefix + n for n in got if n not in seen and n not in rules]
        if l.name in official_k and k_size != official_k[l.name]:
            notes.append(f"{l.name}: K={k_size} (authors' default {official_k[l.name]})")
        specs.append({"name": l.name, "channels": l.channels, "kernel_size": k_size, "level": l.level})
    problems = [f"{len(x)} {what}: {_names(x)}" for x, what in ((missing, "missing"), (leftover, "left over"),
                                                              (bad, "wrong"))
                if x]
    if not problems and len(stage_counts) > 1:
        problems.append(f"blocks disagree on the number of pyramid stages: {sorted(stage_counts)}")
    if problems:
        raise OfficialCheckpointError(f"{source} does not fit this {type(den).__name__} ({len(layers)} "
                                      f"self-attention layers): " + "; ".join(problems))
    n_st = stage_counts.pop()
    if scales is not None:
        scales = [float(s) for s in scales]
        if len(scales) != n_st:
            raise OfficialCheckpointError(f"{source}: {n_st} pyramid stages, but scales={scales} names {len(scales)}")
        settings["scales"] = tuple(scales)
    elif n_st != len(settings["scales"]):
        raise OfficialCheckpointError(f"{source}: {n_st} pyramid stages, and their scales are not recorded in the file "
                                      f"(the authors' default is {list(settings['scales'])}; their README's example "
                                      "uses (1, 1/2, 1/3)): pass scales=")
    config = dict(ratio=settings["ratio"], scales=list(settings["scales"]), gate=settings["gate"],
                  gate_scale=settings["gate_scale"], bias=settings["bias"])
    return OfficialMapping(specs, config, tensors, base, notes, dropped)


# ----------------------------------------------------------------------------------------------
# the base model
# ----------------------------------------------------------------------------------------------
_CACHE_DIR = re.compile(r"models--([^/\\]+)--([^/\\]+)")


def denoiser_origin(pipe_or_denoiser) -> Optional[str]:
    """The hub id the denoiser was loaded from (its config's ``_name_or_path``, else the pipeline's; a cache path
    ``.../models--org--name/...`` counts), or None when that is not recorded or is another local folder."""
    den = get_denoiser(pipe_or_denoiser)
    for obj in (den, pipe_or_denoiser):
        cfg = getattr(obj, "config", None)
        text = str((cfg.get("_name_or_path") if hasattr(cfg, "get") else None) or "")
        m = _CACHE_DIR.search(text)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
        if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not os.path.isdir(text):
            return text
    return None


def _check_base(pipe, base: Optional[str], how: str, what: str, hint: str) -> None:
    if how == "off":
        return
    if base is None:
        warnings.warn(f"{what}: the base model it was distilled from is not known; pass base='org/name' to check it",
                      stacklevel=3)
        return
    origin = denoiser_origin(pipe)
    if origin is not None and origin.lower() == base.lower():
        return
    msg = (f"{what} was distilled from {base} (the rest of its denoiser is that model's), but this pipeline's "
           f"denoiser comes from {origin or 'an unrecorded source'}: load {hint} first, or pass base_check='warn' "
           "(or 'off') to load it anyway")
    if how == "error" and origin is not None:
        raise BaseModelMismatchError(msg)
    warnings.warn(msg, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# the one-line API
# ----------------------------------------------------------------------------------------------
def load_official(pipe_or_denoiser, source=OFFICIAL_HUB_ID, *, data: str = "mjv5", base: Optional[str] = None,
                  base_check: str = "error", scales=None, load_base: bool = True, ema: bool = False,
                  freeze: bool = True, keep_original: bool = False, **hub_kwargs):
    """Install a released ΔConvFusion student (the authors' file format) in a stock pipeline or denoiser; return it.

    Args:
        source: a local file (``.safetensors``, ``.ckpt``, ``.pt``) or a folder holding one, a released name
            (``"convfusion-sd15-mjv5"``, see :data:`aconvlib.models.released.RELEASED_CHECKPOINTS`) or file name,
            ``"7eu7d7/ConvFusion"`` (the file for this denoiser trained on ``data``), or ``"org/repo/file"``.
        data: ``"mjv5"`` (default) or ``"laion"``: which student, when ``source`` is the hub repository.
        base: hub id of the model the student was distilled from (default: the released entry's; needed for
            other files to be checked). ``base_check``: ``"error"`` (default), ``"warn"`` or ``"off"``.
        scales: the pyramid stages' scales, needed only for a file whose stage count is not the authors' default.
        load_base: copy the denoiser tensors the file also carries (as their loader does); False keeps the
            pipeline's own.
        ema: read the file's ``base_ema`` weights.
        freeze, keep_original: as :meth:`~aconvlib.mixers.adapter_base.MixerAdapter.apply_to`.
        hub_kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ... for ``hf_hub_download``.

    Raises:
        OfficialCheckpointError: missing / left-over / wrongly shaped tensors, or no such file (one line).
        BaseModelMismatchError: the pipeline's denoiser is not the student's base (``base_check="error"``).
    """
    if base_check not in BASE_CHECKS:
        raise ValueError(f"base_check must be one of {BASE_CHECKS}, got {base_check!r}")
    den = get_denoiser(pipe_or_denoiser)
    path, entry = resolve_official_source(source, den, data, **hub_kwargs)
    base = base or (entry.base if entry else None)
    hint = (entry.base_pipeline if entry else base) or "its base"
    what = entry.name if entry else Path(path).name
    _check_base(pipe_or_denoiser, base, base_check, what, hint)
    mapping = map_official_state(den, read_official_state(path, ema=ema), scales=scales, source=what)
    with torch.random.fork_rng(devices=[]):   # the blocks' initial values are overwritten: keep the global RNG
        adapter = DeltaConvAdapter(layers=mapping.layers, base_model=type(den).__name__, **mapping.config)
    adapter.load_state_dict(mapping.tensors, strict=True)
    if load_base and mapping.base_tensors:
        own = den.state_dict()
        with torch.no_grad():
            for k, v in mapping.base_tensors.items():
                own[k].copy_(v)
    adapter.apply_to(pipe_or_denoiser, freeze=freeze, keep_original=keep_original)
    adapter.__dict__["official"] = {"source": str(source), "file": path, "name": what, "base": base,
                                    "base_tensors": len(mapping.base_tensors) if load_base else 0,
                                    "kernel_notes": mapping.kernel_notes, "dropped": mapping.dropped}
    if mapping.kernel_notes:
        warnings.warn(f"{what}: {len(mapping.kernel_notes)} blocks' kernel sizes differ from the authors' defaults, "
                      f"e.g. {mapping.kernel_notes[0]} (loaded as the file has them)", stacklevel=2)
    return pipe_or_denoiser
