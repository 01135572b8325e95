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

from ._images import _count_images, _iter_image_batches, preprocess_images
from .frechet import GaussianStats, frechet_distance

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


class _Buffered:
    """Feature rows pulled from a stream of [b, D] batches, taken in any count."""

    def __init__(self, stream: Iterator[torch.Tensor]):
        self.stream, self.buf, self.n, self.ended = stream, [], 0, False

    def fill_past(self, other: int) -> None:
        """Pull batches until this buffer holds more rows than ``other`` (or the stream ends)."""
        while self.n <= other and not self.ended:
            f = next(self.stream, None)
            if f is None:
                self.ended = True
            else:
                self.buf.append(f)
                self.n += len(f)

    def take(self, k: int) -> torch.Tensor:
        rows = torch.cat(self.buf)
        self.buf, self.n = [rows[k:]], self.n - k
        return rows[:k]

    def left(self) -> int:
        """Rows not yet taken, the rest of the stream included (drains it)."""
        return self.n + sum(len(f) for f in self.stream)


def _paired(stream_a: Iterator[torch.Tensor], stream_b: Iterator[torch.Tensor]):
    """Align two streams of [b, D] feature batches of possibly different batch sizes."""
    a, b = _Buffered(stream_a), _Buffered(stream_b)
    while True:
        a.fill_past(b.n)
        b.fill_past(a.n)
        k = min(a.n, b.n)
        if k > 0:
            yield a.take(k), b.take(k)
        if (a.ended and a.n == 0) or (b.ended and b.n == 0):
            rest_a, rest_b = a.left(), b.left()
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
