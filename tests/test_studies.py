"""aconvlib.studies: capture through a real pipeline (untrained mini-dit), disk cache, per-layer analysis."""
import numpy as np
import torch

from aconvlib.book.studies import analyze_study, capture_study, layer_label


def test_capture_study_caches_and_analyzes(tmp_path):
    kw = dict(n_prompts=2, steps=2, weights="random", output_dir=tmp_path, verbose=False)
    study = capture_study("mini-dit", **kw)
    assert study.images.shape == (2, 64, 64, 3) and study.images.dtype == np.uint8
    assert [d["label"] for d in study.layers] == [f"block {i}" for i in range(6)]
    for name, A in study.maps.items():
        assert study.grids[name] == (16, 16) and A.shape == (256, 256)
        assert torch.allclose(A.sum(1), torch.ones(256), atol=1e-5)
    again = capture_study("mini-dit", **kw)                      # from the cache
    assert again.path == study.path and all(torch.equal(again.maps[n], study.maps[n]) for n in study.maps)
    df = analyze_study(study)
    assert len(df) == 6 and df["erf"].between(1, 31).all()
    assert np.allclose(df["prior_mass"] + df["context_mass"], 1.0)
    assert all(abs(curve[-1] - 1) < 1e-6 for curve in df["asm"])


def test_layer_labels():
    assert layer_label("down_blocks.1.attentions.0.transformer_blocks.0.attn1") == "down1.0"
    assert layer_label("up_blocks.3.attentions.2.transformer_blocks.9.attn1") == "up3.2.9"
    assert layer_label("mid_block.attentions.0.transformer_blocks.0.attn1") == "mid"
    assert layer_label("transformer_blocks.27.attn1") == "block 27"


def test_default_scheduler_of_an_unregistered_hub_id_is_dpm():
    """A released student's base (a hub id the registry does not know) samples with DPM-Solver++ like SD1.5."""
    from aconvlib.book.studies import _default_scheduler

    assert _default_scheduler("Lykon/DreamShaper") == "dpm"
    assert _default_scheduler("sd15") == "dpm"
    assert _default_scheduler("flux-dev") != "dpm"
