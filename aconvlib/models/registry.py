"""Model registry: short names -> how to load a diffusers denoiser or pipeline.

Real models (``sd15``, ``sdxl``, ``pixart-sigma-512``, ``pixart-sigma-1024``) load their weights
with diffusers ``from_pretrained`` from the Hugging Face hub id (or the local HF cache). Their
architectures also ship as package data (``configs/<name>/``) so that FLOPs, conversion and
latency work needs no weights (random init, or the ``meta`` device).

Loading rules, each tested against tiny checkpoints in the published layouts (``aconvlib.testing.hub_fixtures``):
every component gets an explicit dtype (SDXL's text-encoder configs name float16, which transformers 5 follows
when none is given; diffusers upcasts an fp16 ``variant`` to float32 without one); ``pixart-sigma-512`` takes
its transformer from the 512 repo and the rest from its companion repo (``ModelSpec.components_from``); only a
checkpoint that is genuinely absent becomes :class:`MissingWeightsError` (naming the hub id and the embedded
alternative), anything else surfaces as itself; a pipeline class outside :data:`SUPPORTED_PIPELINES` is refused
before any weights load (:class:`UnsupportedPipelineError`).

Embedded models (``mini-sd``, ``mini-dit``) are trained by this project and ship as package data
(``models/<name>/``, diffusers layout). Their pipeline class is named by their ``model_index.json``
(``_module``/``_class_name``), as diffusers does for custom pipelines, so this layer needs no import
of the embedded domain (:mod:`aconvlib.mini`).
"""
from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .buckets import SDXL_BUCKETS, area_buckets, pixart_bins
from .families import get_family, supported_classes
from .resources import config_dir, models_dir
from .sampling import Sampling


class UnknownModelError(KeyError):
    """Raised for a model name that is neither registered, a local path, nor a hub id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class MissingWeightsError(RuntimeError):
    """Raised when a model's weights are neither on disk nor downloadable (offline)."""


class UnsupportedPipelineError(ValueError):
    """Raised for a checkpoint whose pipeline class aconvlib does not support (see :data:`SUPPORTED_PIPELINES`)."""


#: diffusers text-to-image pipelines aconvlib loads, and their denoiser family.
SUPPORTED_PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "unet",      # SD1.x / SD2.x
    "StableDiffusionXLPipeline": "unet",
    "PixArtSigmaPipeline": "dit",
    "PixArtAlphaPipeline": "dit",
    "FluxPipeline": "joint",                 # FLUX.1 [schnell] / [dev]
    "StableDiffusion3Pipeline": "joint",     # SD3 / SD3.5
}


#: the line every tiny random-weight hub fixture's README carries (:mod:`aconvlib.testing.hub_fixtures` writes it,
#: :func:`weights_source` reads it): results on such weights say nothing about the real model.
FIXTURE_MARK = "(aconvlib test fixture)"


def weights_source(name: str) -> Optional[str]:
    """Where the weights a registered model would load come from, without loading them: ``"embedded"`` (package
    data), ``"fixture"`` (the cached snapshot is a tiny random-weight stand-in, its README carries
    :data:`FIXTURE_MARK`), ``"hub"`` (a cached snapshot of the published repo) or None (not a registered model,
    or nothing cached). Chapters label results on fixtures "(fixture)" with it."""
    if name not in _REGISTRY:
        return None
    spec = _REGISTRY[name]
    if spec.embedded:
        return "embedded"
    snap = _cached_snapshot(spec.hub_id)
    if snap is None:
        return None
    readme = snap / "README.md"
    return "fixture" if readme.exists() and FIXTURE_MARK in readme.read_text(errors="replace") else "hub"


@dataclass(frozen=True)
class ModelSpec:
    """How to reach one model.

    Attributes:
        name: registry name, e.g. ``"sd15"``.
        family: denoiser family name (``"unet"``, ``"dit"``; see :mod:`aconvlib.models.families`).
        hub_id: Hugging Face hub id of the diffusers-format checkpoint (None for embedded models).
        default_px: native image size in pixels.
        latent_factor: pixels per latent cell (8 for the SD VAE, 2 for pixel-unshuffle).
        patch_size: tokens are ``patch_size``×``patch_size`` latent patches (DiT), 1 for U-Nets.
        description: one line for ``aconv models``.
        embedded: True for models shipped as package data (no network ever needed).
        components_from: hub id of the pipeline whose other components (VAE, text encoder,
            tokenizer, scheduler) this repo's denoiser is used with, for repos that hold only the
            denoiser (PixArt-Σ 512: ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers``).
        variants: weight-file variants the published repo has (``("fp16",)`` for SD1.5 and SDXL);
            asking a registered model for another variant is an error before any loading.
        buckets: returns the model's aspect-ratio training buckets, (height, width) in pixels (None: the model
            has no bucket table; see :meth:`bucket_sizes` and :mod:`aconvlib.models.buckets`).
        aliases: other names :func:`lookup_spec` accepts (besides the name, the hub id and the hub repo's name).
        licence: the weights' licence, as the hub repo names it.
        gated: the hub repo asks you to accept that licence (and to be logged in) before it lets you download.
        sampling: the model's own sampler settings (:class:`~aconvlib.models.sampling.Sampling`), for models
            distilled or trained for one; None: the chapters' setting (the paper's DPM-Solver++ steps and guidance).
    """

    name: str
    family: str
    hub_id: Optional[str]
    default_px: int
    latent_factor: int
    patch_size: int = 1
    description: str = ""
    embedded: bool = False
    components_from: Optional[str] = None
    variants: tuple = ()
    buckets: Optional[Callable[[], Sequence[tuple[int, int]]]] = None
    aliases: tuple = ()
    licence: str = ""
    gated: bool = False
    sampling: Optional[Sampling] = None

    @property
    def denoiser_subfolder(self) -> str:
        return get_family(self.family).pipeline_attr

    @property
    def local_dir(self) -> Optional[Path]:
        """Folder of an embedded model's pipeline (None for hub models)."""
        return models_dir() / self.name if self.embedded else None

    @property
    def config_path(self) -> Path:
        """The shipped architecture config of the denoiser."""
        if self.embedded:
            return self.local_dir / self.denoiser_subfolder / "config.json"
        return config_dir() / self.name / f"{self.denoiser_subfolder}.json"

    @property
    def config(self) -> dict:
        """The shipped architecture config of the denoiser (read once)."""
        return dict(_read_config(self.config_path))

    @property
    def grid_factors(self) -> tuple[int, int, int]:
        """(latent factor, patch size, down-sampling) from the shipped config (see ``DenoiserFamily.grid_factors``):
        image sides must be multiples of :attr:`grid_multiple`, their product."""
        return get_family(self.family).grid_factors(_read_config(self.config_path), self.latent_factor)

    @property
    def grid_multiple(self) -> int:
        a, b, c = self.grid_factors
        return a * b * c

    def bucket_sizes(self) -> list[tuple[int, int]]:
        """The model's aspect-ratio training buckets, (height, width) in pixels; LookupError if it has none."""
        if self.buckets is None:
            raise LookupError(f"{self.name} has no bucket table")
        return [(int(h), int(w)) for h, w in self.buckets()]

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for an image of ``height``×``width`` pixels."""
        f = self.latent_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ValueError(f"{self.name}: image size {height}x{width} must be a positive multiple of {f} px")
        return height // f, width // f


@functools.lru_cache(maxsize=None)
def _read_config(path: Path) -> dict:
    return json.loads(Path(path).read_text())


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (names are case-insensitive)."""
    get_family(spec.family)  # validates the family name
    key = spec.name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[key] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """All registered models, real ones first."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.embedded, s.name))


def get_spec(name: str) -> ModelSpec:
    """Look up a registered model; unknown names raise :class:`UnknownModelError` listing the known."""
    key = str(name).lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = ", ".join(s.name for s in list_models())
    raise UnknownModelError(
        f"unknown model {name!r}. Known models: {known}. "
        "A Hugging Face hub id ('org/name') or a local diffusers folder also works."
    )


def lookup_spec(name: str) -> ModelSpec:
    """The registered model called ``name``: its registry name, an alias, its hub id or the hub repo's name (all
    case-insensitive, ``_`` read as ``-``), e.g. ``"SDXL"``, ``"stable-diffusion-v1-5"``,
    ``"PixArt-alpha/PixArt-Sigma-XL-2-512-MS"``. UnknownModelError for anything else (no guessing)."""
    def norm(s: str) -> str:
        return str(s).strip().lower().replace("_", "-")

    key = norm(name)
    for spec in list_models():
        names = {spec.name, *spec.aliases}
        if spec.hub_id:
            names |= {spec.hub_id, spec.hub_id.rsplit("/", 1)[-1]}
        if key in {norm(n) for n in names}:
            return spec
    return get_spec(name)   # raises UnknownModelError listing the known models


def _is_hub_id_or_path(name: str) -> bool:
    return os.path.isdir(name) or (name.count("/") == 1 and not name.startswith(("/", ".")))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _missing_weights_error(what: str, family: str, err: Exception | None = None,
                           revision: str | None = None) -> MissingWeightsError:
    from huggingface_hub import constants

    alt = get_family(family).embedded_alternative
    detail = f" [{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]" if err else ""
    rev = f" at revision {revision!r}" if revision else ""
    gate = next((s for s in _REGISTRY.values() if s.hub_id == what and s.gated), None)
    gated = (f"{what} is gated: accept its licence ({gate.licence}) on https://huggingface.co/{what} and set a "
             f"Hugging Face token (HF_TOKEN, or `huggingface-cli login`) before downloading. ") if gate else ""
    return MissingWeightsError(
        f"{gated}weights for {what!r}{rev} are not available: not found in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and could not be downloaded"
        f"{' (offline mode is set)' if _offline() else ' (no network?)'}. "
        f"Download them on a machine with network access (e.g. `huggingface-cli download {what}`), "
        f"or use the embedded model {alt!r} which ships with aconvlib. "
        f"Architecture-only work (FLOPs, latency) needs no weights: use load_denoiser(..., weights=False)."
        f"{detail}"
    )


def _chain(err: BaseException):
    """The exception and everything it was raised from or while handling."""
    seen: set = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_missing(err: BaseException) -> bool:
    """True when ``err`` means "this checkpoint (or revision) is not on disk and cannot be fetched"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    return any(isinstance(e, (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError))
               for e in _chain(err))


def _load(load, what: str, family: str, revision: str | None = None):
    """Run a ``from_pretrained`` call; only a checkpoint that is genuinely absent becomes MissingWeightsError.

    Absent means: huggingface_hub's "not in the local cache / no such repo or revision" error is in the exception
    chain, or the hub id has no snapshot in the cache at all. A missing dependency, a dtype clash, a broken
    config or a missing file of a cached checkpoint surfaces as what it is.
    """
    try:
        return load()
    except MissingWeightsError:
        raise
    except (OSError, ValueError) as err:
        # diffusers/transformers re-raise hub lookups as OSError (HFValidationError, a ValueError, for a repo
        # without model_index.json); tell a missing checkpoint apart by the chain, or by the cache itself
        if _is_missing(err) or _not_in_cache(what):
            raise _missing_weights_error(what, family, err, revision) from err
        raise


def _not_in_cache(repo: str) -> bool:
    """True if ``repo`` is a hub id with no snapshot in the local cache (a local folder is never 'not cached')."""
    if os.path.isdir(repo):
        return False
    from huggingface_hub import scan_cache_dir

    try:
        return not any(r.repo_id == repo and r.revisions for r in scan_cache_dir().repos)
    except Exception:  # no cache folder at all
        return True


def _resolve(name: str) -> ModelSpec:
    try:
        return get_spec(name)
    except UnknownModelError:
        if not _is_hub_id_or_path(name):
            raise
    for spec in _REGISTRY.values():   # a registered model's hub id: the registered spec (e.g. its companion repo)
        if spec.hub_id and spec.hub_id.lower() == str(name).lower() and not os.path.isdir(name):
            return spec
    # Unregistered hub id or local folder: its family is its pipeline's (model_index.json) or its denoiser folder's.
    return ModelSpec(name=name, family=_guess_family(name), hub_id=name, default_px=512, latent_factor=8,
                     patch_size=1)


def _guess_family(repo: str) -> str:
    if not os.path.isdir(repo):   # a hub id: look at its cached snapshot, if any (else from_pretrained decides)
        snap = _cached_snapshot(repo)
        if snap is None:
            return "unet"
        repo = str(snap)
    if os.path.isdir(repo):
        index = Path(repo) / "model_index.json"
        if index.is_file():
            cls = json.loads(index.read_text()).get("_class_name")
            if cls in SUPPORTED_PIPELINES:
                return SUPPORTED_PIPELINES[cls]
        if os.path.isdir(os.path.join(repo, "transformer")):
            return "dit"
        return "unet"
    return "unet"


def _pipeline_class_name(spec: ModelSpec, repo: str, hub: dict) -> str:
    """The ``_class_name`` of ``repo``'s model_index.json (from the cache or a local folder), before any weights load."""
    if os.path.isdir(repo):
        index = Path(repo) / "model_index.json"
        if not index.is_file():
            raise UnsupportedPipelineError(f"{repo} is not a diffusers pipeline folder (no model_index.json)")
        return json.loads(index.read_text()).get("_class_name", "?")
    from huggingface_hub import hf_hub_download

    keep = {k: hub[k] for k in ("revision", "local_files_only", "cache_dir", "token") if k in hub}
    try:
        path = _load(lambda: hf_hub_download(repo, "model_index.json", **keep), repo, spec.family,
                     hub.get("revision"))
    except MissingWeightsError as err:
        if "revision" not in hub and not _not_in_cache(repo) and _cached_file(repo, spec.denoiser_subfolder):
            raise UnsupportedPipelineError(
                f"{repo} holds a denoiser only ({spec.denoiser_subfolder}/, no model_index.json): load it with "
                f"load_denoiser({repo!r}), or register it with ModelSpec(components_from=<pipeline repo>) as "
                f"pixart-sigma-512 is") from err
        raise
    return json.loads(Path(path).read_text()).get("_class_name", "?")


def _cached_snapshot(repo: str) -> Optional[Path]:
    """The newest cached snapshot folder of hub id ``repo`` (None if not cached)."""
    from huggingface_hub import scan_cache_dir

    try:
        revs = [rev for r in scan_cache_dir().repos if r.repo_id == repo for rev in r.revisions]
    except Exception:  # no cache folder at all
        return None
    return max(revs, key=lambda r: r.last_modified).snapshot_path if revs else None


def _cached_file(repo: str, folder: str) -> bool:
    """Whether the cached snapshot of ``repo`` has a ``folder/`` (its denoiser)."""
    snap = _cached_snapshot(repo)
    return snap is not None and (snap / folder).is_dir()


def _check_pipeline_class(spec: ModelSpec, repo: str, hub: dict) -> None:
    cls = _pipeline_class_name(spec, repo, hub)
    if cls not in SUPPORTED_PIPELINES:
        raise UnsupportedPipelineError(
            f"{repo} holds a {cls}, which aconvlib does not support; supported pipelines: "
            f"{', '.join(SUPPORTED_PIPELINES)} (denoisers: {', '.join(supported_classes())})")


def _check_variant(spec: ModelSpec, kwargs: dict) -> None:
    """A registered model asked for a weight variant its published repo does not have: say so before loading."""
    variant = kwargs.get("variant")
    if variant and str(spec.name).lower() in _REGISTRY and variant not in spec.variants:
        raise ValueError(f"{spec.name} ({spec.hub_id}) publishes no {variant!r} weight variant (published: "
                         f"{', '.join(spec.variants) or 'none'}); load its default weights with dtype=torch.float16")


def _default_dtype(dtype, kwargs: dict) -> torch.dtype:
    """An explicit dtype for every component: the given one, else float16 for ``variant="fp16"``, else float32.

    diffusers converts an fp16 variant to float32 when no dtype is given, and transformers 5 loads text encoders in
    the dtype their config names (SDXL's say float16) when none is given: a dtype clash at generation.
    """
    if dtype is not None:
        return dtype
    return torch.float16 if kwargs.get("variant") == "fp16" else torch.float32


def _dtype_kwarg(dtype) -> dict:
    """diffusers >= 0.36 names the loading dtype ``dtype``; older releases ``torch_dtype``."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__) >= Version("0.36") else "torch_dtype": dtype}


def _place(model, device, dtype):
    model = model.to(device)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def _quiet() -> None:
    """Silence loading chatter (progress bars, dtype notes) of diffusers and transformers."""
    from diffusers.utils import logging as dlog
    from huggingface_hub.utils import logging as hlog
    from transformers.utils import logging as tlog

    import warnings

    hlog.set_verbosity_error()   # "Could not reach the Hub ... using cached commit hash" on every offline load
    # diffusers passes huggingface_hub a deprecated argument when it loads a subfolder; not the user's concern
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _check_embedded(spec: ModelSpec) -> Path:
    d = spec.local_dir
    if not (d / "model_index.json").exists():
        raise MissingWeightsError(f"embedded model {spec.name!r} is missing from {d}; train it with "
                                  f"`aconv train --model {spec.name}` and copy <out>/pipeline there")
    return d


def load_denoiser(name: str, *, weights: bool = True, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, seed: int = 0, **kwargs):
    """Load a model's denoiser (``UNet2DConditionModel`` or ``PixArtTransformer2DModel``).

    Args:
        name: registry name, hub id or local diffusers pipeline folder.
        weights: False builds the architecture from the shipped config with random weights
            (``device="meta"`` allocates nothing), for FLOPs and latency work.
        device, dtype: where and how to place it (dtype None: float16 for ``variant="fp16"``, else float32).
        seed: seed of the random init when ``weights=False``.
        kwargs: passed to ``from_pretrained``: ``variant`` (``"fp16"`` where published), ``revision``,
            ``local_files_only``, ...

    Raises:
        MissingWeightsError: the checkpoint is neither in the local cache nor downloadable (names the hub id
            and the embedded alternative); anything else (a broken config, a missing dependency) as itself.
    """
    spec = _resolve(name)
    cls = get_family(spec.family).model_class(_read_config(spec.config_path) if spec.config_path.exists() else None)
    dtype = _default_dtype(dtype, kwargs)
    if not weights:
        if not spec.config_path.exists():
            raise FileNotFoundError(f"no shipped architecture config for {spec.name!r} at {spec.config_path}")
        config = json.loads(spec.config_path.read_text())
        if str(device) == "meta":
            with torch.device("meta"):
                model = cls.from_config(config)
        else:
            torch.manual_seed(seed)
            model = cls.from_config(config)
        return _place(model, device, dtype)
    _quiet()
    if spec.embedded:
        model = cls.from_pretrained(_check_embedded(spec) / spec.denoiser_subfolder, **_dtype_kwarg(dtype))
        return _place(model, device, None)
    _check_variant(spec, kwargs)
    model = _load(lambda: cls.from_pretrained(spec.hub_id, subfolder=spec.denoiser_subfolder,
                                              **_dtype_kwarg(dtype), **kwargs),
                  spec.hub_id, spec.family, kwargs.get("revision"))
    return _place(model, device, None)


def load_pipeline(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  **kwargs):
    """Load a full text-to-image pipeline (diffusers ``DiffusionPipeline`` or embedded pipeline).

    Args:
        name: registry name, hub id or local diffusers pipeline folder (a saved pipeline or a snapshot).
        device, dtype: where and in which dtype; every component gets this explicit dtype (None: float16 for
            ``variant="fp16"``, else float32).
        kwargs: passed to ``from_pretrained``: ``variant`` (``"fp16"`` where published: SD1.5, SDXL),
            ``revision`` (of the model's own repo; a denoiser-only repo's companion components load at their
            default revision), ``local_files_only``, ...

    Raises:
        MissingWeightsError: a checkpoint is genuinely absent (names the hub id and the embedded alternative).
        UnsupportedPipelineError: the checkpoint's pipeline class is not one of :data:`SUPPORTED_PIPELINES`.
        ValueError: a ``variant`` the registered model does not publish.
    """
    spec = _resolve(name)
    dtype = _default_dtype(dtype, kwargs)
    _quiet()
    if spec.embedded:
        d = _check_embedded(spec)
        index = json.loads((d / "model_index.json").read_text())
        cls = getattr(importlib.import_module(index["_module"]), index["_class_name"])
        return cls.from_pretrained(d, device=device, dtype=dtype)
    from diffusers import DiffusionPipeline

    _check_variant(spec, kwargs)
    if spec.components_from:  # a denoiser-only repo: the rest comes from its companion pipeline repo
        den = load_denoiser(spec.name, device="cpu", dtype=dtype, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in ("revision", "variant")}
        _check_pipeline_class(spec, spec.components_from, rest)
        pipe = _load(lambda: DiffusionPipeline.from_pretrained(
            spec.components_from, **{spec.denoiser_subfolder: den}, **_dtype_kwarg(dtype), **rest),
            spec.components_from, spec.family)
    else:
        _check_pipeline_class(spec, spec.hub_id, kwargs)
        pipe = _load(lambda: DiffusionPipeline.from_pretrained(spec.hub_id, **_dtype_kwarg(dtype), **kwargs),
                     spec.hub_id, spec.family, kwargs.get("revision"))
    return pipe.to(device)


#: where the joint models' sampling defaults come from
_CARD = "the hub model card's diffusers example"

for _spec in (
    # SD1.5 was trained on square 512² crops only: its buckets are the common 512²-area scheme of fine-tuning
    # scripts (17 buckets); SDXL's are its paper's table; PixArt-Σ's are diffusers' aspect-ratio bins.
    ModelSpec("sd15", "unet", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, 8,
              description="Stable Diffusion 1.5 (U-Net, 16 self-attention layers)", variants=("fp16",),
              buckets=functools.partial(area_buckets, 512 * 512), aliases=("runwayml/stable-diffusion-v1-5",)),
    ModelSpec("sdxl", "unet", "stabilityai/stable-diffusion-xl-base-1.0", 1024, 8,
              description="Stable Diffusion XL base 1.0 (U-Net, 70 self-attention layers)", variants=("fp16",),
              buckets=functools.partial(list, SDXL_BUCKETS)),
    ModelSpec("pixart-sigma-512", "dit", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", 512, 8, 2,
              description="PixArt-Σ XL/2 at 512 px (DiT, 28 self-attention layers)",
              components_from="PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
              buckets=functools.partial(pixart_bins, 512)),
    ModelSpec("pixart-sigma-1024", "dit", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024, 8, 2,
              description="PixArt-Σ XL/2 at 1024 px (DiT, 28 self-attention layers)",
              buckets=functools.partial(pixart_bins, 1024), aliases=("pixart-sigma",)),
    # Joint-attention transformers: text and image tokens in one attention (aconvlib.models.families.joint); FLUX
    # packs 2×2 latent cells per token, SD3 patchifies 2×2: both (H/16, W/16) tokens. No bucket tables published.
    ModelSpec("flux-schnell", "joint", "black-forest-labs/FLUX.1-schnell", 1024, 8, 2, licence="apache-2.0",
              description="FLUX.1 [schnell] (MMDiT, 19 double- + 38 single-stream attention layers, 4 steps)",
              sampling=Sampling(4, 0.0, max_sequence_length=256, source=_CARD)),
    ModelSpec("flux-dev", "joint", "black-forest-labs/FLUX.1-dev", 1024, 8, 2, gated=True,
              licence="FLUX.1 [dev] Non-Commercial License",
              description="FLUX.1 [dev] (MMDiT, 19 double- + 38 single-stream attention layers, guidance-distilled)",
              sampling=Sampling(50, 3.5, max_sequence_length=512, source=_CARD)),
    ModelSpec("sd3.5-medium", "joint", "stabilityai/stable-diffusion-3.5-medium", 1024, 8, 2, gated=True,
              licence="Stability AI Community License",
              description="Stable Diffusion 3.5 Medium (MMDiT-X, 24 joint + 13 image-only attention layers)",
              sampling=Sampling(40, 4.5, source=_CARD)),
    ModelSpec("sd3.5-large", "joint", "stabilityai/stable-diffusion-3.5-large", 1024, 8, 2, gated=True,
              licence="Stability AI Community License",
              description="Stable Diffusion 3.5 Large (MMDiT, 38 joint attention layers)",
              sampling=Sampling(28, 3.5, source=_CARD)),
    ModelSpec("mini-sd", "unet", None, 64, 2, 1, embedded=True,
              description="embedded SD1.5-topology U-Net, 64 px, pixel-unshuffle latent (10 self-attention layers)"),
    ModelSpec("mini-dit", "dit", None, 64, 2, 2, embedded=True,
              description="embedded PixArt-style DiT, 64 px, 16x16 tokens (6 self-attention layers)"),
):
    register_model(_spec)
