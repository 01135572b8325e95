"""Image-quality metrics of the paper's Table 3: DINOv2 score (DS), Fréchet DINOv2 distance (FDD), CLIP score.

What the paper says (ΔConvFusion, arXiv 2504.21292, Sec. 5.1 "Metrics", and Sec. 5.4):

    "The Inception model [42] has a perceptual discrepancy from human evaluations in evaluating
    image generation [41]. For reasonable evaluation, we adopt the DINOv2 model [29] to evaluate
    synthesized outputs. Specifically, the DINOv2 Score (DS) quantifies the quality of generated
    images, while the Fréchet DINOv2 Distance (FDD) measures their realism against a reference
    dataset. Following [21], the CLIP Score is utilized to evaluate the semantic consistency
    between generated images and their given text prompts."

The evaluation set is "10,000 high-aesthetic LAION images, also annotated by InternVL2-8B" (Sec. 5.1,
"Dataset"). Table 3 reports DS ↑ (≈ 41–45), FDD ↓ (≈ 144–211) and CLIP ↑ (≈ 30.4–30.9) for the
self-attention teacher, LinFusion / DiTFastAttn and ΔConvFusion on SD1.5, SDXL and PixArt. Sec. 5.4
reads a better DS as "enhanced image quality and diversity" and FDD as "fidelity". The paper names
neither the DINOv2 size, nor a formula for DS, nor the CLIP encoder.

What this module implements (and the choices made where the paper is silent):

- **Features.** DINOv2 image features are the CLS token after the final layer norm
  (``Dinov2Model(...).pooler_output``; the same vector as ``x_norm_clstoken`` of the original
  torch-hub model), default ViT-L/14 (``facebook/dinov2-large``), as in Stein et al. 2023,
  "Exposing flaws of generative model evaluation metrics and their unfair treatment of diffusion
  models" (FD_DINOv2), which is what the paper's [41] most likely is (its reference list is not in
  our copy of the text). Images go through the checkpoint's own image processor (for DINOv2: resize
  the shortest edge to 256 bicubic, center-crop 224, ImageNet mean/std). Note: Stein et al.'s
  ``dgm-eval`` resizes straight to 224×224 instead (no crop), so absolute FDD values are not
  comparable across the two pipelines (nor with the paper's, whose preprocessing is unknown).
- **FDD** (:func:`fdd`): the Fréchet distance between Gaussians fitted to the features of the two
  image sets, ``‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})`` (:func:`frechet_distance`); Σ is the
  unbiased (N−1) covariance, accumulated in streaming form (:class:`GaussianStats`).
- **DS** (:func:`dinov2_score`): ``scale · mean_i cos(f(a_i), f(b_i))`` over *paired* images, with
  ``scale = 100`` (Table 3's numbers are on a 0–100 scale). The intended pairing is generated image
  ``a_i`` vs the reference (LAION) image ``b_i`` whose caption was the prompt. Why not teacher vs
  student from the same noise: in Table 3 the self-attention teacher itself has DS 41–43, not 100,
  so DS is not measured against the teacher's images (the function still computes that similarity
  if you pass teacher images as ``images_b``). This is our reading, not the paper's definition;
  since Sec. 5.4 also credits DS with "diversity", an Inception-Score-style reading (IS computed
  with DINOv2's linear ImageNet head) is offered as :func:`dinov2_inception_score`. Neither can be
  confirmed from the text.
- **CLIP score** (:func:`clip_score`): ``scale · max(cos(E_img(x), E_txt(prompt)), 0)`` averaged
  over images, ``scale = 100`` (Hessel et al. 2021 with w = 100, as torchmetrics' ``CLIPScore``),
  embeddings = the projected ``image_embeds`` / ``text_embeds`` of a ``CLIPModel``; prompts are
  truncated to the text encoder's context (77 tokens). Default encoder: CLIP ViT-L/14
  (``openai/clip-vit-large-patch14``), the torchmetrics default, since the paper names none. The
  paper "follows [21]" (LinFusion); LinFusion's public evaluation script (from GigaGAN) uses
  OpenCLIP ViT-g/14 (LAION-2B) for SDXL, prepends "A photo depicts " to each prompt and reports the
  plain mean cosine (no ×100, no clamp): ``clip_score(..., model_id=LINFUSION_CLIP_ID,
  prefix="A photo depicts ", clamp=False)`` gets close to that (×100).

Weights are never downloaded implicitly in a way that hides failures: a hub id that is not in the
local Hugging Face cache while offline (or that does not exist) raises :class:`MetricWeightsError`
naming the id and the one-time ``huggingface-cli download <id>``; any other error (a missing
dependency, a broken local checkpoint folder, a bad config) propagates unchanged.

Inputs. Everywhere "images" may be: a float tensor ``[B, 3, H, W]`` (or ``[3, H, W]``) with values
in ``[0, 1]``, a ``uint8`` tensor (0–255), a PIL image, a list of PIL images / tensors / HWC numpy
arrays, or any iterable of such batches (a generator, a ``DataLoader``), so that large sets stream
through the encoder with bounded memory. Batches larger than ``batch_size`` are split. Features
are computed in the model's dtype on the model's device; statistics accumulate in float64.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "DEFAULT_DINOV2_ID",
    "DEFAULT_DINOV2_CLASSIFIER_ID",
    "DEFAULT_CLIP_ID",
    "LINFUSION_CLIP_ID",
    "MetricWeightsError",
    "GaussianStats",
    "frechet_distance",
    "load_dinov2",
    "load_clip",
    "preprocess_images",
    "FeatureExtractor",
    "DINOv2Features",
    "CLIPFeatures",
    "dinov2_features",
    "dinov2_stats",
    "fdd",
    "dinov2_score",
    "dinov2_inception_score",
    "clip_score",
]

DEFAULT_DINOV2_ID = "facebook/dinov2-large"
DEFAULT_DINOV2_CLASSIFIER_ID = "facebook/dinov2-large-imagenet1k-1-layer"
DEFAULT_CLIP_ID = "openai/clip-vit-large-patch14"
LINFUSION_CLIP_ID = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"


# --------------------------------------------------------------------------------------------
# Errors and loading
# --------------------------------------------------------------------------------------------

class MetricWeightsError(RuntimeError):
    """The weights of a metric encoder are not available (not cached while offline, or no such id)."""

    def __init__(self, model_id: str, cause: BaseException | None = None):
        self.model_id = model_id
        msg = (
            f"Metric encoder weights '{model_id}' are not available: they are not in the local "
            f"Hugging Face cache and cannot be fetched (offline, or no such repository). Download "
            f"them once on a machine with network access: `huggingface-cli download {model_id}` "
            f"(or `hf download {model_id}`), then point HF_HOME / HF_HUB_CACHE at that cache, or "
            f"pass a local folder as model_id. Offline alternative without any download: the "
            f"embedded models' classifier-feature analogues (aconvlib.mini.evaluate: prompt "
            f"adherence for the CLIP score, the classifier-feature Fréchet distance for FDD)."
        )
        if cause is not None:
            msg += f" [{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}]"
        super().__init__(msg)


def _missing_checkpoint_types() -> tuple[type, ...]:
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:  # older huggingface_hub
        from huggingface_hub import utils as hub_errors  # type: ignore[no-redef]
    names = ("LocalEntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
             "EntryNotFoundError", "RemoteEntryNotFoundError", "GatedRepoError", "OfflineModeIsEnabled")
    return tuple(t for t in (getattr(hub_errors, n, None) for n in names) if isinstance(t, type))


def _is_missing_checkpoint(exc: BaseException) -> bool:
    types = _missing_checkpoint_types()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if types and isinstance(e, types):
            return True
        e = e.__cause__ or e.__context__
    return False


def _from_pretrained(fn: Callable[..., Any], model_id: str | os.PathLike, **kwargs) -> Any:
    """``fn(model_id, **kwargs)``; a hub id whose files are missing → MetricWeightsError, else re-raise."""
    model_id = str(model_id)
    if os.path.isdir(model_id):  # a local folder: every error is a real error of that folder
        return fn(model_id, **kwargs)
    try:
        return fn(model_id, **kwargs)
    except Exception as exc:
        if _is_missing_checkpoint(exc):
            raise MetricWeightsError(model_id, exc) from exc
        raise


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _image_processor_kwargs(backend: str | None) -> dict:
    """Choose the image-processor implementation. ``"pil"`` (default) is the reference (slow)
    implementation, the same whether torchvision is installed or not."""
    if backend is None:
        return {}
    if _transformers_major() >= 5:
        return {"backend": backend}
    return {"use_fast": backend != "pil"}


def _place(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def load_dinov2(model_id: str | os.PathLike = DEFAULT_DINOV2_ID, *, classifier: bool = False,
                device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                local_files_only: bool | None = None, revision: str | None = None,
                backend: str | None = "pil"):
    """Load a DINOv2 encoder and its image processor by hub id or local folder.

    Returns ``(model, image_processor)``. ``classifier=True`` loads
    ``AutoModelForImageClassification`` (for :func:`dinov2_inception_score`; default checkpoint
    then should be :data:`DEFAULT_DINOV2_CLASSIFIER_ID`), otherwise ``AutoModel``
    (``Dinov2Model``). ``backend`` picks the image processor implementation (``"pil"``: the
    reference one; ``None``: transformers' default). Raises :class:`MetricWeightsError` when the
    checkpoint is genuinely missing.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

    kw = {"revision": revision} if revision is not None else {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    cls = AutoModelForImageClassification if classifier else AutoModel
    model = _from_pretrained(cls.from_pretrained, model_id, **kw)
    processor = _from_pretrained(AutoImageProcessor.from_pretrained, model_id, **kw,
                                 **_image_processor_kwargs(backend))
    return _place(model, device, dtype), processor


def load_clip(model_id: str | os.PathLike = DEFAULT_CLIP_ID, *,
              device: str | torch.device | None = None, dtype: torch.dtype | None = None,
              local_files_only: bool | None = None, revision: str | None = None,
              backend: str | None = "pil"):
    """Load a ``CLIPModel`` and a ``CLIPProcessor`` (its tokenizer + image processor).

    Returns ``(model, processor)``. Raises :class:`MetricWeightsError` when the checkpoint is
    genuinely missing.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

    kw = {"revision": revision} if revision is not None else {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    model = _from_pretrained(CLIPModel.from_pretrained, model_id, **kw)
    image_processor = _from_pretrained(AutoImageProcessor.from_pretrained, model_id, **kw,
                                       **_image_processor_kwargs(backend))
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, model_id, **kw)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _place(model, device, dtype), processor


# --------------------------------------------------------------------------------------------
# Fréchet distance and streaming Gaussian statistics
# --------------------------------------------------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6,
                     residual_tol: float = 1e-4, imag_tol: float = 1e-3) -> float:
    """Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
    ``‖μ₁−μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})``.

    The matrix square root is ``scipy.linalg.sqrtm`` in float64. Standard handling of numerical
    trouble (as in the FID reference implementations): when the square root of Σ₁Σ₂ is not finite
    or inaccurate (relative residual ``‖X² − Σ₁Σ₂‖_F / ‖Σ₁Σ₂‖_F > residual_tol``), which happens when
    the product is (near) singular, e.g. fewer samples than feature dimensions, it is recomputed
    as ``sqrtm((Σ₁ + εI)(Σ₂ + εI))``; small imaginary parts from round-off are dropped, and an
    imaginary diagonal larger than ``imag_tol`` raises ``ValueError``.
    """
    from scipy import linalg

    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise ValueError(f"means must be vectors, got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: mu1 {mu1.shape} vs mu2 {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be ({d}, {d}) to match the means, got {s.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")

    diff = mu1 - mu2

    def _sqrt(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
        prod = a @ b
        with np.errstate(all="ignore"):
            x = linalg.sqrtm(prod)
        if isinstance(x, tuple):  # very old scipy returning (sqrtm, errest)
            x = x[0]
        if not np.isfinite(x).all():
            return x, False
        norm = np.linalg.norm(prod)
        res = np.linalg.norm(x @ x - prod) / norm if norm > 0 else np.linalg.norm(x)
        return x, bool(res <= residual_tol)

    covmean, ok = _sqrt(sigma1, sigma2)
    if not ok:
        offset = np.eye(d) * eps
        covmean, _ = _sqrt(sigma1 + offset, sigma2 + offset)
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root of sigma1 @ sigma2 is not finite even with eps*I added")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imag_tol):
            m = np.max(np.abs(np.diagonal(covmean).imag))
            raise ValueError(f"imaginary component {m:.3g} in sqrtm(sigma1 @ sigma2) exceeds {imag_tol}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class GaussianStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Keeps ``n``, a shift ``K`` (the first batch's mean, to avoid cancellation), ``Σ(x−K)`` and
    ``Σ(x−K)(x−K)ᵀ``: memory is O(D²) whatever the number of samples. ``cov`` is unbiased (N−1),
    equal to ``np.cov(X, rowvar=False)`` of all samples at once. ``merge`` combines stats of
    disjoint sets (e.g. from several processes); ``save``/``load`` cache a reference set's stats.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features) -> "GaussianStats":
        """Add a batch ``[B, D]`` (tensor or array; a ``[D]`` vector counts as one sample)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"features must be [B, D], got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[1]} does not match the stats' {self.dim}")
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        y = x - self._shift
        self._sum += y.sum(0)
        self._outer += y.T @ y
        self.n += x.shape[0]
        return self

    @classmethod
    def from_features(cls, features) -> "GaussianStats":
        return cls().update(features)

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Stats of the union of the two sample sets (a new object)."""
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"cannot merge stats of dimension {self.dim} and {other.dim}")
        out = GaussianStats(self.dim if self.dim is not None else other.dim)
        for s in (self, other):
            if s.n == 0:
                continue
            if out._shift is None:
                out._shift, out._sum, out._outer = s._shift.copy(), s._sum.copy(), s._outer.copy()
                out.n = s.n
                continue
            dlt = s._shift - out._shift  # (x − K_out) = (x − K_s) + dlt
            out._sum += s._sum + s.n * dlt
            out._outer += s._outer + np.outer(s._sum, dlt) + np.outer(dlt, s._sum) + s.n * np.outer(dlt, dlt)
            out.n += s.n
        return out

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("no samples accumulated")
        return self._shift + self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        c = (self._outer - np.outer(self._sum, self._sum) / self.n) / (self.n - 1)
        return (c + c.T) / 2

    def save(self, path: str | os.PathLike) -> None:
        if self.n < 1:
            raise ValueError("no samples accumulated")
        np.savez(path, n=self.n, shift=self._shift, sum=self._sum, outer=self._outer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianStats":
        with np.load(path) as z:
            s = cls(int(z["shift"].shape[0]))
            s.n = int(z["n"])
            s._shift, s._sum, s._outer = z["shift"].copy(), z["sum"].copy(), z["outer"].copy()
        return s

    def __repr__(self) -> str:
        return f"GaussianStats(n={self.n}, dim={self.dim})"


# --------------------------------------------------------------------------------------------
# Images → model inputs
# --------------------------------------------------------------------------------------------

def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _is_single_image(x) -> bool:
    return _is_pil(x) or (isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim in (2, 3))


def _chunk(batch, size: int):
    n = len(batch)
    for i in range(0, n, size):
        yield batch[i:i + size]


def _iter_image_batches(images, batch_size: int) -> Iterator:
    """Yield batches (a 4-D tensor/array or a list of single images) of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if _is_single_image(images):
        yield [images]
        return
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim != 4:
            raise ValueError(f"an image batch must be 4-D [B, C, H, W], got shape {tuple(images.shape)}")
        yield from _chunk(images, batch_size)
        return
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and len(images) > 0 \
            and all(_is_single_image(x) for x in images):
        yield from _chunk(list(images), batch_size)
        return
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"unsupported images input of type {type(images).__name__}")
    for batch in images:  # an iterable of batches
        yield from _iter_image_batches(batch, batch_size)


def _count_images(images) -> int | None:
    if _is_single_image(images):
        return 1
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return int(images.shape[0]) if images.ndim == 4 else None
    if isinstance(images, Sequence) and len(images) > 0 and all(_is_single_image(x) for x in images):
        return len(images)
    return None


def _image_processor(processor):
    return getattr(processor, "image_processor", processor)


def _to_processor_input(batch) -> tuple[Any, dict]:
    """A batch → (what the image processor accepts, extra kwargs). Float images must be in [0, 1]."""
    items = list(batch) if not isinstance(batch, (torch.Tensor, np.ndarray)) else None
    if items is not None and all(_is_pil(x) for x in items):
        return items, {}
    if items is not None:
        if any(_is_pil(x) for x in items):
            raise TypeError("do not mix PIL images and arrays/tensors in one batch")
        arrays = [torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in items]
        floats = {bool(a.is_floating_point()) for a in arrays}
        if len(floats) > 1:
            raise TypeError("do not mix float and integer images in one batch")
        return _check_range(arrays, floats.pop())
    t = torch.as_tensor(batch) if isinstance(batch, np.ndarray) else batch
    if t.ndim == 4 and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return _check_range(list(t), bool(t.is_floating_point()))


def _check_range(arrays: list, is_float: bool) -> tuple[list, dict]:
    out = []
    for a in arrays:
        a = a.detach().cpu()
        if is_float:
            a = a.float()
            lo, hi = float(a.min()), float(a.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                                 "(for diffusion outputs in [-1, 1] pass (x + 1) / 2)")
            a = a.clamp(0, 1)
        elif a.dtype != torch.uint8:
            raise TypeError(f"integer images must be uint8 (0-255), got {a.dtype}")
        out.append(a.numpy())
    return out, ({"do_rescale": False} if is_float else {})


def preprocess_images(processor, batch) -> torch.Tensor:
    """One batch of images → ``pixel_values`` [B, 3, h, w] (float32, CPU), through the checkpoint's
    image processor (``processor`` may be an image processor or a multimodal processor with
    ``.image_processor``). Float tensors/arrays are taken as [0, 1] (``do_rescale=False``), uint8
    and PIL images as 0–255: the same pixels give the same output in every form."""
    inputs, extra = _to_processor_input(batch if not _is_single_image(batch) else [batch])
    out = _image_processor(processor)(images=inputs, return_tensors="pt", **extra)
    return out["pixel_values"].float()


# --------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------

def _progress(it, enabled: bool, total: int | None, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="batch")


class FeatureExtractor:
    """Base of the streaming image encoders: model + processor, device/dtype, batching, progress.

    ``device``/``dtype`` move the model in place when given (else the model's own are used);
    pixels are cast to the model's dtype, features are returned as float32 on the CPU and
    accumulated in float64 by :meth:`gaussian_stats`.
    """

    desc = "features"

    def __init__(self, model: torch.nn.Module, processor, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 64, progress: bool = False):
        if model is None or processor is None:
            raise ValueError("both a model and its processor are needed")
        self.model = _place(model, device, dtype)
        self.processor = processor
        self.batch_size = int(batch_size)
        self.progress = progress

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def preprocess(self, batch) -> torch.Tensor:
        return preprocess_images(self.processor, batch)

    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, batch) -> torch.Tensor:
        """One batch of images → features [B, D] (float32, CPU)."""
        pv = self.preprocess(batch).to(device=self.device, dtype=self.dtype)
        return self.encode_pixels(pv).float().cpu()

    def iter_features(self, images) -> Iterator[torch.Tensor]:
        n = _count_images(images)
        total = math.ceil(n / self.batch_size) if n is not None else None
        for batch in _progress(_iter_image_batches(images, self.batch_size), self.progress, total, self.desc):
            yield self.encode(batch)

    def __call__(self, images) -> torch.Tensor:
        """All features [N, D] (float32, CPU)."""
        feats = list(self.iter_features(images))
        if not feats:
            raise ValueError("no images given")
        return torch.cat(feats)

    def gaussian_stats(self, images, stats: GaussianStats | None = None) -> GaussianStats:
        """Stream the images into (new or given) :class:`GaussianStats` of their features."""
        stats = GaussianStats() if stats is None else stats
        for f in self.iter_features(images):
            stats.update(f)
        return stats


class DINOv2Features(FeatureExtractor):
    """DINOv2 CLS features (after the final layer norm): ``pooler_output`` of ``Dinov2Model``."""

    desc = "DINOv2 features"

    def encode_pixels(self, pixel_values):
        backbone = getattr(self.model, "dinov2", self.model)  # a *ForImageClassification model
        out = backbone(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    @torch.inference_mode()
    def encode_logits(self, batch) -> torch.Tensor:
        """Class logits [B, C] (float32, CPU) of a DINOv2 model with an image-classification head."""
        if not hasattr(self.model, "classifier"):
            raise TypeError("this DINOv2 model has no classification head; load it with "
                            "load_dinov2(DEFAULT_DINOV2_CLASSIFIER_ID, classifier=True)")
        pv = self.preprocess(batch).to(device=self.device, dtype=self.dtype)
        return self.model(pixel_values=pv).logits.float().cpu()


class CLIPFeatures(FeatureExtractor):
    """CLIP projected embeddings (``image_embeds`` / ``text_embeds`` of ``CLIPModel``)."""

    desc = "CLIP image features"

    def encode_pixels(self, pixel_values):
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled)

    @property
    def max_text_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts → text embeddings [B, D] (float32, CPU); truncated to the text context length."""
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise TypeError("the CLIP processor has no tokenizer")
        enc = tok(list(prompts), padding=True, truncation=True, max_length=self.max_text_length,
                  return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        pooled = self.model.text_model(**enc).pooler_output
        return self.model.text_projection(pooled).float().cpu()


# --------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------

def _dinov2_extractor(model, processor, model_id, *, classifier=False, device=None, dtype=None,
                      batch_size=64, progress=False, local_files_only=None) -> DINOv2Features:
    if (model is None) != (processor is None):
        raise ValueError("pass both model and processor, or neither (then model_id is loaded)")
    if model is None:
        model, processor = load_dinov2(model_id, classifier=classifier, local_files_only=local_files_only)
    return DINOv2Features(model, processor, device=device, dtype=dtype, batch_size=batch_size, progress=progress)


def dinov2_features(model, processor, images, *, device=None, dtype=None, batch_size: int = 64,
                    progress: bool = False) -> torch.Tensor:
    """DINOv2 CLS features [N, D] (float32, CPU) of ``images`` with a loaded model/processor."""
    return DINOv2Features(model, processor, device=device, dtype=dtype, batch_size=batch_size,
                          progress=progress)(images)


def dinov2_stats(images, *, model=None, processor=None, model_id: str = DEFAULT_DINOV2_ID,
                 device=None, dtype=None, batch_size: int = 64, progress: bool = False,
                 local_files_only: bool | None = None) -> GaussianStats:
    """Streaming :class:`GaussianStats` of the DINOv2 features of ``images`` (e.g. to cache a
    reference set's statistics with ``.save`` and pass them to :func:`fdd` later)."""
    ext = _dinov2_extractor(model, processor, model_id, device=device, dtype=dtype,
                            batch_size=batch_size, progress=progress, local_files_only=local_files_only)
    return ext.gaussian_stats(images)


def fdd(images_a, images_b, *, model=None, processor=None, model_id: str = DEFAULT_DINOV2_ID,
        device=None, dtype=None, batch_size: int = 64, progress: bool = False,
        local_files_only: bool | None = None, eps: float = 1e-6) -> float:
    """Fréchet DINOv2 distance between two image sets (lower is better).

    Either side may be a precomputed :class:`GaussianStats` (e.g. of the reference set). Each set
    needs at least 2 images; with fewer images than feature dimensions the covariances are
    singular and the estimate is biased (Stein et al. use 50k images; the paper 10k).
    """
    stats = []
    ext = None
    for imgs in (images_a, images_b):
        if isinstance(imgs, GaussianStats):
            stats.append(imgs)
            continue
        if ext is None:
            ext = _dinov2_extractor(model, processor, model_id, device=device, dtype=dtype,
                                    batch_size=batch_size, progress=progress,
                                    local_files_only=local_files_only)
        stats.append(ext.gaussian_stats(imgs))
    a, b = stats
    for name, s in (("images_a", a), ("images_b", b)):
        if s.n < 2:
            raise ValueError(f"{name}: FDD needs at least 2 images per set, got {s.n}")
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim}")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, eps=eps)


def _paired(stream_a: Iterator[torch.Tensor], stream_b: Iterator[torch.Tensor]):
    """Align two streams of [b, D] feature batches of possibly different batch sizes."""
    buf_a: list[torch.Tensor] = []
    buf_b: list[torch.Tensor] = []
    na = nb = 0
    ended_a = ended_b = False
    while True:
        while na <= nb and not ended_a:
            f = next(stream_a, None)
            if f is None:
                ended_a = True
            else:
                buf_a.append(f)
                na += len(f)
        while nb <= na and not ended_b:
            f = next(stream_b, None)
            if f is None:
                ended_b = True
            else:
                buf_b.append(f)
                nb += len(f)
        k = min(na, nb)
        if k > 0:
            fa, fb = torch.cat(buf_a), torch.cat(buf_b)
            yield fa[:k], fb[:k]
            buf_a, buf_b = [fa[k:]], [fb[k:]]
            na, nb = na - k, nb - k
        if (ended_a and na == 0) or (ended_b and nb == 0):
            if not (ended_a and ended_b and na == 0 and nb == 0):
                # drain to report the mismatch
                rest_a = na + sum(len(f) for f in stream_a)
                rest_b = nb + sum(len(f) for f in stream_b)
                if rest_a or rest_b:
                    raise ValueError("images_a and images_b must hold the same number of images "
                                     f"(paired); {rest_a} / {rest_b} left unpaired")
            return


def dinov2_score(images_a, images_b, *, model=None, processor=None, model_id: str = DEFAULT_DINOV2_ID,
                 device=None, dtype=None, batch_size: int = 64, progress: bool = False,
                 local_files_only: bool | None = None, scale: float = 100.0, reduction: str = "mean"):
    """DINOv2 score: ``scale · mean_i cos(f(a_i), f(b_i))`` over paired images (higher is better).

    ``images_a[i]`` is compared with ``images_b[i]`` (same count required), e.g. generated images
    vs the reference images whose captions were the prompts (our reading of the paper's DS; see
    the module docstring), or student vs teacher images from the same prompt and noise.
    Identical sets score ``scale``. ``reduction="none"`` returns the per-pair scores (float64).
    """
    if reduction not in ("mean", "none"):
        raise ValueError("reduction must be 'mean' or 'none'")
    ext = _dinov2_extractor(model, processor, model_id, device=device, dtype=dtype, batch_size=batch_size,
                            progress=progress, local_files_only=local_files_only)
    sims = []
    for fa, fb in _paired(ext.iter_features(images_a), ext.iter_features(images_b)):
        sims.append(torch.nn.functional.cosine_similarity(fa.double(), fb.double(), dim=-1))
    if not sims:
        raise ValueError("no images given")
    s = torch.cat(sims) * scale
    return s if reduction == "none" else float(s.mean())


def dinov2_inception_score(images, *, model=None, processor=None,
                           model_id: str = DEFAULT_DINOV2_CLASSIFIER_ID, splits: int = 10,
                           device=None, dtype=None, batch_size: int = 64, progress: bool = False,
                           local_files_only: bool | None = None) -> tuple[float, float]:
    """Inception Score computed with a DINOv2 ImageNet classifier: ``exp(E_x KL(p(y|x) ‖ p(y)))``.

    An alternative reading of the paper's DS ("quality and diversity", Sec. 5.4). Returns
    ``(mean, std)`` over ``splits`` disjoint subsets; image ``i`` goes to subset ``i % splits``
    (a fixed partition, so the computation streams with O(splits × classes) memory). Ranges from
    1 to the number of classes.
    """
    if splits < 1:
        raise ValueError("splits must be >= 1")
    ext = _dinov2_extractor(model, processor, model_id, classifier=True, device=device, dtype=dtype,
                            batch_size=batch_size, progress=progress, local_files_only=local_files_only)
    n = np.zeros(splits)
    plogp = np.zeros(splits)
    psum = None
    i0 = 0
    count = _count_images(images)
    total = math.ceil(count / ext.batch_size) if count is not None else None
    for batch in _progress(_iter_image_batches(images, ext.batch_size), progress, total, "DINOv2 IS"):
        logp = torch.log_softmax(ext.encode_logits(batch).double(), dim=-1).numpy()
        p = np.exp(logp)
        if psum is None:
            psum = np.zeros((splits, p.shape[1]))
        idx = (i0 + np.arange(len(p))) % splits
        np.add.at(n, idx, 1)
        np.add.at(plogp, idx, (p * logp).sum(1))
        np.add.at(psum, idx, p)
        i0 += len(p)
    if psum is None or (n < 1).any():
        raise ValueError(f"need at least {splits} images for {splits} splits, got {i0}")
    py = psum / n[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent_py = -np.where(py > 0, py * np.log(py), 0.0).sum(1)
    scores = np.exp(plogp / n + ent_py)
    return float(scores.mean()), float(scores.std())


def _iter_prompts(prompts) -> Iterator[str]:
    if isinstance(prompts, str):
        yield prompts
        return
    for p in prompts:
        if isinstance(p, str):
            yield p
        else:
            yield from _iter_prompts(p)


def clip_score(images, prompts, *, model=None, processor=None, model_id: str = DEFAULT_CLIP_ID,
               device=None, dtype=None, batch_size: int = 64, progress: bool = False,
               local_files_only: bool | None = None, prefix: str = "", scale: float = 100.0,
               clamp: bool = True, reduction: str = "mean"):
    """CLIP score: ``scale · max(cos(E_img(image_i), E_txt(prefix + prompt_i)), 0)``, averaged.

    ``prompts`` are consumed in order, one per image (a list of strings, or an iterable of lists
    aligned with the image batches). ``clamp=False`` drops the ``max(·, 0)``; ``reduction="none"``
    returns the per-image scores (float64). Result in ``[0, scale]`` with the clamp.
    """
    if reduction not in ("mean", "none"):
        raise ValueError("reduction must be 'mean' or 'none'")
    if (model is None) != (processor is None):
        raise ValueError("pass both model and processor, or neither (then model_id is loaded)")
    if model is None:
        model, processor = load_clip(model_id, local_files_only=local_files_only)
    ext = CLIPFeatures(model, processor, device=device, dtype=dtype, batch_size=batch_size, progress=progress)
    prompt_iter = _iter_prompts(prompts)
    scores = []
    for img in ext.iter_features(images):
        texts = [t for _, t in zip(range(len(img)), prompt_iter)]
        if len(texts) != len(img):
            raise ValueError("fewer prompts than images")
        txt = ext.encode_text([prefix + t for t in texts])
        cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=-1)
        scores.append(scale * (cos.clamp(min=0) if clamp else cos))
    if next(prompt_iter, None) is not None:
        raise ValueError("more prompts than images")
    if not scores:
        raise ValueError("no images given")
    s = torch.cat(scores)
    return s if reduction == "none" else float(s.mean())
