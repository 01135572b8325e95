"""Tests of aconvlib.analysis.metrics (DS, FDD, CLIP score) with tiny random-weight encoders built offline."""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from aconvlib.analysis import metrics as M

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _image_processor(cls_name, **kw):
    import transformers

    cls = getattr(transformers, cls_name + "Pil", None) or getattr(transformers, cls_name)
    return cls(**kw)


def _dinov2_processor():
    # like facebook/dinov2-*: shortest edge 256 bicubic → center crop 224, ImageNet mean/std (scaled down)
    return _image_processor("BitImageProcessor", do_resize=True, size={"shortest_edge": 32}, resample=3,
                            do_center_crop=True, crop_size={"height": 28, "width": 28}, do_rescale=True,
                            rescale_factor=1 / 255, do_normalize=True, image_mean=IMAGENET_MEAN,
                            image_std=IMAGENET_STD, do_convert_rgb=True)


def _dinov2_config(**kw):
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                        image_size=28, patch_size=14, **kw)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(_dinov2_config()).eval().save_pretrained(d)
    _dinov2_processor().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def dinov2(dinov2_dir):
    return M.load_dinov2(dinov2_dir)


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok_dir = tmp_path_factory.mktemp("tiny-clip-tok")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = _bytes_to_unicode()
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    merges = ["a t</w>", "c at</w>", "d o", "do g</w>"]
    for m in merges:
        vocab["".join(m.split())] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        projection_dim=16)
    d = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).eval().save_pretrained(d)
    ip = _image_processor("CLIPImageProcessor", do_resize=True, size={"shortest_edge": 28}, resample=3,
                          do_center_crop=True, crop_size={"height": 28, "width": 28}, do_rescale=True,
                          rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                          do_convert_rgb=True)
    CLIPProcessor(image_processor=ip, tokenizer=tokenizer).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip(clip_dir):
    return M.load_clip(clip_dir)


def _uint8_images(n, seed, h=36, w=44):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _float_tensor(arr):
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


# ---------------------------------------------------------------- Fréchet distance, GaussianStats

def test_frechet_distance_closed_form_diagonal_and_commuting():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # commuting, non-diagonal covariances
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_singular_and_validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 12))  # 5 samples in 12-D: rank-deficient covariance
    mu, sig = x.mean(0), np.cov(x, rowvar=False)
    assert abs(M.frechet_distance(mu, sig, mu, sig)) < 1e-4
    y = rng.normal(size=(5, 12)) + 1.0
    v = M.frechet_distance(mu, sig, y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(v) and v > 0
    with pytest.raises(ValueError, match="dimension"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.array([0, np.nan]), np.eye(2))


def test_gaussian_stats_streaming_equals_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(103, 7)) * rng.uniform(0.5, 2, 7) + 1e4  # a large offset tests the shift
    one = M.GaussianStats().update(x)
    many = M.GaussianStats()
    for part in np.array_split(x, [1, 4, 30, 31, 80]):
        many.update(torch.from_numpy(part))  # float64 tensor batches
    ref_mu, ref_cov = x.mean(0), np.cov(x, rowvar=False)
    for s in (one, many):
        assert s.n == 103
        np.testing.assert_allclose(s.mean, ref_mu, rtol=1e-12)
        np.testing.assert_allclose(s.cov, ref_cov, rtol=1e-8, atol=1e-10)
    merged = M.GaussianStats().update(x[:50]).merge(M.GaussianStats().update(x[50:] - 0.0))
    np.testing.assert_allclose(merged.cov, ref_cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(merged.mean, ref_mu, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        M.GaussianStats().update(x[:1]).cov
    with pytest.raises(ValueError, match="dimension"):
        one.update(np.zeros((2, 8)))


def test_gaussian_stats_save_load(tmp_path):
    x = np.random.default_rng(3).normal(size=(20, 4))
    s = M.GaussianStats.from_features(x)
    s.save(tmp_path / "ref.npz")
    t = M.GaussianStats.load(tmp_path / "ref.npz")
    assert t.n == 20 and t.dim == 4
    np.testing.assert_allclose(t.cov, s.cov)
    np.testing.assert_allclose(t.mean, s.mean)


# ---------------------------------------------------------------- preprocessing and DINOv2

def test_preprocessing_matches_image_processor(dinov2):
    _, proc = dinov2
    arr = _uint8_images(3, 4)
    pils = [Image.fromarray(a) for a in arr]
    ref = proc(images=pils, return_tensors="pt")["pixel_values"]
    assert ref.shape == (3, 3, 28, 28)
    for form in (pils, _float_tensor(arr), list(_float_tensor(arr)), torch.from_numpy(arr).permute(0, 3, 1, 2),
                 list(arr)):
        torch.testing.assert_close(M.preprocess_images(proc, form), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(M.preprocess_images(proc, pils[0]), ref[:1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.preprocess_images(proc, _float_tensor(arr) * 2 - 1)


def test_dinov2_features_are_cls_after_layernorm(dinov2):
    model, proc = dinov2
    arr = _uint8_images(5, 5)
    feats = M.dinov2_features(model, proc, _float_tensor(arr), batch_size=2, progress=True)
    with torch.no_grad():
        pv = proc(images=[Image.fromarray(a) for a in arr], return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pv, output_hidden_states=True)
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, out.pooler_output, rtol=1e-5, atol=1e-5)
    # the CLS token of the last block's output, after the final layer norm
    torch.testing.assert_close(feats, model.layernorm(out.hidden_states[-1])[:, 0], rtol=1e-5, atol=1e-5)


def test_fdd(dinov2):
    model, proc = dinov2
    imgs = _float_tensor(_uint8_images(34, 6))
    kw = dict(model=model, processor=proc, batch_size=16)
    assert abs(M.fdd(imgs, imgs, **kw)) < 1e-6
    # streaming input (a generator of batches of various sizes) gives the same statistics
    stats = M.dinov2_stats((imgs[i:i + 7] for i in range(0, 34, 7)), **kw)
    full = M.GaussianStats.from_features(M.dinov2_features(model, proc, imgs))
    np.testing.assert_allclose(stats.cov, full.cov, rtol=1e-5, atol=1e-9)
    other = _float_tensor(_uint8_images(34, 7)).pow(2)  # darker images
    v = M.fdd(imgs, other, **kw)
    assert v > 1e-3
    assert M.fdd(stats, other, **kw) == pytest.approx(v, rel=1e-4)
    assert M.fdd(stats, stats) == pytest.approx(0, abs=1e-6)  # no model needed for two stats
    with pytest.raises(ValueError, match="at least 2"):
        M.fdd(imgs[:1], imgs, **kw)
    with pytest.raises(ValueError, match="both"):
        M.fdd(imgs, imgs, model=model)


def test_dinov2_score(dinov2):
    model, proc = dinov2
    arr = _uint8_images(9, 8)
    a = _float_tensor(arr)
    kw = dict(model=model, processor=proc, batch_size=4)
    assert M.dinov2_score(a, a, **kw) == pytest.approx(100.0, abs=1e-4)
    assert M.dinov2_score(a, [Image.fromarray(x) for x in arr], **kw) == pytest.approx(100.0, abs=1e-4)
    b = _float_tensor(_uint8_images(9, 9))
    per = M.dinov2_score(a, b, reduction="none", **kw)
    assert per.shape == (9,) and (per <= 100 + 1e-6).all() and (per >= -100 - 1e-6).all()
    fa, fb = M.dinov2_features(model, proc, a), M.dinov2_features(model, proc, b)
    manual = 100 * torch.nn.functional.cosine_similarity(fa.double(), fb.double(), dim=-1)
    torch.testing.assert_close(per, manual, rtol=1e-5, atol=1e-4)
    # pairing does not depend on how the two sides are batched
    restream = M.dinov2_score([a[:2], a[2:7], a[7:]], b, **kw)
    assert restream == pytest.approx(float(manual.mean()), abs=1e-4)
    with pytest.raises(ValueError, match="same number"):
        M.dinov2_score(a, b[:8], **kw)
    with pytest.raises(ValueError, match="same number"):
        M.dinov2_score(a[:3], b, **kw)


def test_dinov2_inception_score(dinov2_dir, tmp_path):
    from transformers import Dinov2ForImageClassification

    torch.manual_seed(1)
    d = tmp_path / "tiny-dinov2-cls"
    Dinov2ForImageClassification(_dinov2_config(num_labels=4)).save_pretrained(d)
    shutil.copy(dinov2_dir / "preprocessor_config.json", d)
    model, proc = M.load_dinov2(d, classifier=True)
    imgs = _float_tensor(_uint8_images(10, 10))
    mean, std = M.dinov2_inception_score(imgs, model=model, processor=proc, splits=2, batch_size=3)
    assert 1.0 - 1e-9 <= mean <= 4.0 and std >= 0
    with torch.no_grad():  # manual IS on the partition i % 2
        pv = proc(images=[Image.fromarray(x) for x in _uint8_images(10, 10)], return_tensors="pt")["pixel_values"]
        p = torch.softmax(model(pixel_values=pv).logits.double(), -1).numpy()
    scores = []
    for k in range(2):
        pk = p[k::2]
        py = pk.mean(0)
        scores.append(np.exp(np.mean((pk * (np.log(pk) - np.log(py))).sum(1))))
    assert mean == pytest.approx(np.mean(scores), rel=1e-6)
    assert std == pytest.approx(np.std(scores), rel=1e-4, abs=1e-9)
    with torch.no_grad():  # identical predictions for every image → IS = 1
        model.classifier.weight.zero_()
    assert M.dinov2_inception_score(imgs, model=model, processor=proc, splits=2)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least"):
        M.dinov2_inception_score(imgs[:3], model=model, processor=proc, splits=5)


# ---------------------------------------------------------------- CLIP score

PROMPTS = ["a cat", "a dog on a mat", "the cat sat", "a red dog " * 12, "cat cat dog", "at a cat"]


def test_clip_score_matches_manual_formula(clip):
    model, proc = clip
    arr = _uint8_images(6, 11)
    pils = [Image.fromarray(x) for x in arr]
    score = M.clip_score(_float_tensor(arr), PROMPTS, model=model, processor=proc, batch_size=4)
    per = M.clip_score(pils, PROMPTS, model=model, processor=proc, reduction="none")
    raw = M.clip_score(pils, PROMPTS, model=model, processor=proc, reduction="none", clamp=False)
    with torch.no_grad():
        inputs = proc(text=PROMPTS, images=pils, return_tensors="pt", padding=True, truncation=True, max_length=16)
        out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds.double(), out.text_embeds.double(), dim=-1)
    torch.testing.assert_close(raw, 100 * cos, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(per, 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    assert score == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-4)
    assert 0.0 <= score <= 100.0 and ((per >= 0) & (per <= 100)).all()
    # prompts as an iterable of lists aligned with image batches, and a prefix
    batched = M.clip_score([pils[:4], pils[4:]], [PROMPTS[:4], PROMPTS[4:]], model=model, processor=proc)
    assert batched == pytest.approx(score, abs=1e-4)
    assert M.clip_score(pils, PROMPTS, model=model, processor=proc, prefix="a photo depicts ") != pytest.approx(score)
    with pytest.raises(ValueError, match="fewer prompts"):
        M.clip_score(pils, PROMPTS[:5], model=model, processor=proc)
    with pytest.raises(ValueError, match="more prompts"):
        M.clip_score(pils[:5], PROMPTS, model=model, processor=proc)


# ---------------------------------------------------------------- missing weights vs real errors

def test_missing_hub_id_offline_gives_clear_error():
    bogus = "aconvlib-tests/no-such-model-xyz"
    with pytest.raises(M.MetricWeightsError) as ei:
        M.load_dinov2(bogus)
    msg = str(ei.value)
    assert bogus in msg and f"huggingface-cli download {bogus}" in msg and "analogue" in msg
    assert isinstance(ei.value, RuntimeError) and ei.value.model_id == bogus
    with pytest.raises(M.MetricWeightsError, match="no-such-clip"):
        M.load_clip("aconvlib-tests/no-such-clip", local_files_only=True)
    with pytest.raises(M.MetricWeightsError):  # the functional API loads by id too
        M.fdd(torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28), model_id=bogus)


def test_broken_local_folder_is_not_a_missing_checkpoint(dinov2_dir, tmp_path):
    bad = tmp_path / "bad-config"
    shutil.copytree(dinov2_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_attention_heads"] = 5  # 32 is not a multiple of 5
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception) as ei:
        M.load_dinov2(bad)
    assert not isinstance(ei.value, M.MetricWeightsError)

    (bad / "config.json").write_text("{not json")
    with pytest.raises(Exception) as ei:
        M.load_dinov2(bad)
    assert not isinstance(ei.value, M.MetricWeightsError)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(dinov2_dir / "config.json", no_weights)
    with pytest.raises(Exception) as ei:
        M.load_dinov2(no_weights)
    assert not isinstance(ei.value, M.MetricWeightsError)


def test_other_errors_surface_unchanged():
    def missing_dep(*args, **kwargs):
        raise ImportError("some optional dependency is not installed")

    with pytest.raises(ImportError, match="optional dependency"):
        M._from_pretrained(missing_dep, "aconvlib-tests/whatever")


def test_paired_streams_align_batches_of_any_size():
    import torch

    from aconvlib.analysis.metrics import _paired

    rows = torch.arange(10.0)[:, None]
    a = iter([rows[:3], rows[3:4], rows[4:10]])
    b = iter([rows[:5], rows[5:10]])
    got_a, got_b = zip(*_paired(a, b))
    assert torch.equal(torch.cat(got_a), rows) and torch.equal(torch.cat(got_b), rows)
    with pytest.raises(ValueError, match="2 / 0 left unpaired"):
        list(_paired(iter([rows[:3], rows[3:5]]), iter([rows[:3]])))
