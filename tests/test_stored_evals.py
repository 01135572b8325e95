"""Chapter 7's stored evaluations are reused only for the same weights, prompts and settings; anything else is
evaluated live; a reused entry gives the same numbers, features and (8-bit) images as the run that wrote it."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import aconvlib.mini as mini
from aconvlib.book.stored_evals import evaluate_stored, weights_fingerprint


def _pipe(seed=0):
    torch.manual_seed(seed)
    return SimpleNamespace(unet=nn.Linear(4, 4), text_encoder=nn.Linear(2, 2))


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_evaluate(pipe, prompts, return_images=False, **settings):
        seen.append((prompts, settings))
        g = torch.Generator().manual_seed(len(prompts) + int(settings.get("height", 0)))
        n = len(prompts)
        return {"n_prompts": n, "prompt_adherence": 0.5, "fdd": 12.5, "per_image": [1, 0] * (n // 2),
                "features": torch.randn(n, 3, generator=g), "prompts": list(prompts), "seed": settings.get("seed"),
                "images": torch.rand(n, 3, 8, 8, generator=g)}

    monkeypatch.setattr(mini, "evaluate_model", fake_evaluate)
    return seen


def test_stored_entry_is_reused_only_for_the_same_inputs(tmp_path, calls):
    store, pipe, prompts = tmp_path / "store", _pipe(), ["a", "b", "c", "d"]
    live = evaluate_stored(pipe, prompts, store, label="x", n_images=2, write=True, seed=0, height=128)
    assert live["source"] == "live" and len(calls) == 1 and live["images"].shape[0] == 2
    again = evaluate_stored(pipe, prompts, store, label="x", n_images=2, seed=0, height=128)
    assert len(calls) == 1 and again["source"].startswith("stored store.json")
    assert again["prompt_adherence"] == live["prompt_adherence"] and again["per_image"] == live["per_image"]
    assert torch.equal(again["features"], live["features"])
    assert (again["images"] - live["images"]).abs().max() <= 0.5 / 255 + 1e-6        # 8-bit images
    # another setting, other prompts, other weights: live
    for kwargs, p, pp in ((dict(seed=1, height=128), prompts, pipe), (dict(seed=0, height=128), prompts[:2], pipe),
                          (dict(seed=0, height=128), prompts, _pipe(seed=1))):
        r = evaluate_stored(pp, p, store, label="x", n_images=2, **kwargs)
        assert r["source"] == "live"
    assert len(calls) == 4
    assert evaluate_stored(pipe, prompts, None, label="x", n_images=2, seed=0, height=128)["source"] == "live"


def test_weights_fingerprint_sees_every_tensor():
    a, b = _pipe(), _pipe()
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.text_encoder.bias[0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
