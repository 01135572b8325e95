"""Chapter 5's NA controls: the figure's rows taken from the controls' samples are the rows sampled on their own,
and a stored run of the controls gives back the live numbers (one store per condition)."""
import numpy as np
import pytest
import torch

from aconvlib.book.controls import live_na_controls, na_image_rows
from aconvlib.book.studies import default_prompts, load_study_pipeline

SETTINGS = dict(steps=2, guidance_scale=4.0, seed=0)


@pytest.fixture(scope="module")
def pipe():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_study_pipeline("mini-sd", weights="random")
    torch.set_num_threads(n)


def test_rows_reused_from_the_controls_equal_rows_sampled_alone(pipe, tmp_path):
    ev = live_na_controls(pipe, 4, 5, n_real=16, return_images=True, **SETTINGS)
    assert {r["source"] for r in ev.values()} == {"live"}
    texts = default_prompts("mini-sd", 2)           # the first held-out prompts: a prefix of the controls'
    full, na, source = na_image_rows(pipe, texts, 5, size=(64, 64), evaluation=ev, **SETTINGS)
    assert source == "reused from the controls" and full.shape == na.shape == (2, 64, 64, 3)
    full_alone, na_alone, source = na_image_rows(pipe, texts, 5, size=(64, 64), **SETTINGS)
    assert source == "sampled here"
    # the same noise (the batch's first draws); a batch of 4 may round differently from a batch of 2 in the
    # last bit, which can move a pixel by one 8-bit level
    for a, b in ((full, full_alone), (na, na_alone)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(na.astype(int) - full.astype(int)).mean() > 0.5     # NA changed the images
    # another sampler setting, size or prompt list: nothing is reused
    assert na_image_rows(pipe, texts, 5, size=(64, 64), evaluation=ev, steps=3, guidance_scale=4.0,
                         seed=0)[2] == "sampled here"
    assert na_image_rows(pipe, texts[::-1], 5, size=(64, 64), evaluation=ev, **SETTINGS)[2] == "sampled here"
    assert na_image_rows(pipe, texts, 5, size=None, evaluation=ev, **SETTINGS)[2] == "sampled here"


def test_stored_controls_give_back_the_live_numbers(pipe, tmp_path):
    store = tmp_path / "mini-sd"
    live = live_na_controls(pipe, 2, 3, n_real=16, store=store, n_images=1, write=True, **SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"mini-sd-{s}.{e}" for s in ("self-attention", "na-k-3", "no-self-attention", "uniform-attention")
        for e in ("json", "npz"))
    again = live_na_controls(pipe, 2, 3, n_real=16, store=store, n_images=1, **SETTINGS)
    for label, r in live.items():
        assert r["source"] == "live" and again[label]["source"].startswith("stored")
        assert again[label]["per_image"] == r["per_image"] and again[label]["fdd"] == r["fdd"]
        assert torch.equal(again[label]["features"], r["features"].float())
        assert again[label]["images"].shape[0] == 1
    # the four conditions are four entries: NA's stored images are not self-attention's
    assert not torch.equal(again["NA K=3"]["images"], again["self-attention"]["images"])
    # another kernel is another store: sampled live
    other = live_na_controls(pipe, 2, 5, n_real=16, store=store, n_images=1, **SETTINGS)
    assert other["NA K=5"]["source"] == "live" and other["self-attention"]["source"].startswith("stored")
