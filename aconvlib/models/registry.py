"""Model registry: short names -> how to load a diffusers denoiser or pipeline.

Real models (``sd15``, ``sdxl``, ``pixart-sigma-512``, ``pixart-sigma-1024``) load their weights
with diffusers ``from_pretrained`` from the Hugging Face hub id (or the local HF cache). Their
architectures also ship as configs in ``data/configs/<name>/`` so that FLOPs, conversion and
latency work needs no weights (random init, or the ``meta`` device).

Embedded models (``mini-sd``, ``mini-dit``) are trained by this project and shipped in
``data/models/``; they register themselves through :func:`register_model`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CONFIG_DIR = DATA_DIR / "configs"
EMBEDDED_ALTERNATIVE = {"unet": "mini-sd", "dit": "mini-dit"}


class UnknownModelError(KeyError):
    """Raised for a model name that is neither registered, a local path, nor a hub id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class MissingWeightsError(RuntimeError):
    """Raised when a model's weights are neither on disk nor downloadable (offline)."""


@dataclass(frozen=True)
class ModelSpec:
    """How to reach one model.

    Attributes:
        name: registry name, e.g. ``"sd15"``.
        family: ``"unet"`` (``UNet2DConditionModel``) or ``"dit"`` (``PixArtTransformer2DModel``).
        hub_id: Hugging Face hub id of the diffusers-format checkpoint (None for embedded models).
        denoiser_subfolder: subfolder of the denoiser inside the pipeline repo.
        default_px: native image size in pixels.
        latent_factor: pixels per latent cell (8 for the SD VAE, 2 for pixel-unshuffle).
        patch_size: tokens are ``patch_size``×``patch_size`` latent patches (DiT), 1 for U-Nets.
        description: one line for ``aconv models``.
        embedded: True for models shipped in ``data/`` (no network ever needed).
        pipeline_loader / denoiser_loader: custom loaders (embedded models).
    """

    name: str
    family: str
    hub_id: Optional[str]
    denoiser_subfolder: str
    default_px: int
    latent_factor: int
    patch_size: int = 1
    description: str = ""
    embedded: bool = False
    pipeline_loader: Optional[Callable] = field(default=None, compare=False, repr=False)
    denoiser_loader: Optional[Callable] = field(default=None, compare=False, repr=False)

    @property
    def config_path(self) -> Path:
        """The shipped architecture config of the denoiser."""
        if self.embedded:
            return DATA_DIR / "models" / self.name / self.denoiser_subfolder / "config.json"
        return CONFIG_DIR / self.name / f"{self.denoiser_subfolder}.json"

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for an image of ``height``×``width`` pixels."""
        f = self.latent_factor
        if height % f or width % f:
            raise ValueError(f"{self.name}: image size {height}x{width} must be a multiple of {f} px")
        return height // f, width // f


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (names are case-insensitive)."""
    key = spec.name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[key] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """All registered models, real ones first."""
    _ensure_embedded_registered()
    return sorted(_REGISTRY.values(), key=lambda s: (s.embedded, s.name))


def _ensure_embedded_registered() -> None:
    # The embedded models live in aconvlib.mini; importing it registers them (if it exists yet).
    try:
        import aconvlib.mini  # noqa: F401
    except ModuleNotFoundError as e:  # pragma: no cover - only before the embedded models land
        if e.name != "aconvlib.mini":
            raise


def get_spec(name: str) -> ModelSpec:
    """Look up a registered model; unknown names raise :class:`UnknownModelError` listing the known."""
    _ensure_embedded_registered()
    key = str(name).lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = ", ".join(s.name for s in list_models())
    raise UnknownModelError(
        f"unknown model {name!r}. Known models: {known}. "
        "A Hugging Face hub id ('org/name') or a local diffusers folder also works."
    )


def _is_hub_id_or_path(name: str) -> bool:
    return os.path.isdir(name) or (name.count("/") == 1 and not name.startswith(("/", ".")))


def _missing_weights_error(what: str, family: str, err: Exception) -> MissingWeightsError:
    from huggingface_hub.constants import HF_HUB_CACHE

    alt = EMBEDDED_ALTERNATIVE.get(family, "mini-sd")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    return MissingWeightsError(
        f"weights for {what!r} are not available: not found in the local Hugging Face cache "
        f"({HF_HUB_CACHE}) and could not be downloaded"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ' (no network?)'}. "
        f"Download them on a machine with network access (e.g. `huggingface-cli download {what}`), "
        f"or use the embedded model {alt!r} which ships with aconvlib. "
        f"Architecture-only work (FLOPs, latency) needs no weights: use load_denoiser(..., weights=False). "
        f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]"
    )


def _denoiser_class(family: str):
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    return {"unet": UNet2DConditionModel, "dit": PixArtTransformer2DModel}[family]


def _resolve(name: str) -> ModelSpec:
    try:
        return get_spec(name)
    except UnknownModelError:
        if not _is_hub_id_or_path(name):
            raise
    # Unregistered hub id or local folder: guess the family from its model_index.json later.
    return ModelSpec(name=name, family="unet", hub_id=name, denoiser_subfolder="unet",
                     default_px=512, latent_factor=8)


def load_denoiser(name: str, *, weights: bool = True, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0):
    """Load a model's denoiser (``UNet2DConditionModel`` or ``PixArtTransformer2DModel``).

    Args:
        name: registry name, hub id or local diffusers folder.
        weights: False builds the architecture from the shipped config with random weights
            (``device="meta"`` allocates nothing), for FLOPs and latency work.
        device, dtype: where and how to place it.
        seed: seed of the random init when ``weights=False``.
    """
    spec = _resolve(name)
    if spec.embedded and spec.denoiser_loader is not None and weights:
        return spec.denoiser_loader(device=device, dtype=dtype)
    cls = _denoiser_class(spec.family)
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
    try:
        model = cls.from_pretrained(spec.hub_id, subfolder=spec.denoiser_subfolder, **_dtype_kwarg(dtype))
    except (OSError, ValueError, EnvironmentError) as err:
        raise _missing_weights_error(spec.hub_id, spec.family, err) from err
    return _place(model, device, None)


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


def load_pipeline(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  **kwargs):
    """Load a full text-to-image pipeline (diffusers ``DiffusionPipeline`` or embedded pipeline)."""
    spec = _resolve(name)
    if spec.embedded:
        if spec.pipeline_loader is None:
            raise MissingWeightsError(f"embedded model {spec.name!r} has no pipeline loader")
        return spec.pipeline_loader(device=device, dtype=dtype, **kwargs)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(spec.hub_id, **_dtype_kwarg(dtype), **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        raise _missing_weights_error(spec.hub_id, spec.family, err) from err
    return pipe.to(device)


for _spec in (
    ModelSpec("sd15", "unet", "stable-diffusion-v1-5/stable-diffusion-v1-5", "unet", 512, 8,
              description="Stable Diffusion 1.5 (U-Net, 16 self-attention layers)"),
    ModelSpec("sdxl", "unet", "stabilityai/stable-diffusion-xl-base-1.0", "unet", 1024, 8,
              description="Stable Diffusion XL base 1.0 (U-Net, 70 self-attention layers)"),
    ModelSpec("pixart-sigma-512", "dit", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "transformer", 512, 8, 2,
              description="PixArt-Σ XL/2 at 512 px (DiT, 28 self-attention layers)"),
    ModelSpec("pixart-sigma-1024", "dit", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "transformer", 1024, 8, 2,
              description="PixArt-Σ XL/2 at 1024 px (DiT, 28 self-attention layers)"),
):
    register_model(_spec)
