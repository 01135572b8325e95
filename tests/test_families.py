"""Denoiser families, the latent tracker and the family-aware helpers (denoise, step counting)."""
import pytest
import torch

from aconvlib.analysis.capture import capture_self_attention
from aconvlib.models import LatentTracker, denoise, family_of, get_denoiser, self_attention_layers
from aconvlib.testing.dummies import tiny_inputs, tiny_pixart


def test_family_lookup(unet, pixart):
    assert family_of(unet).name == "unet" and family_of(pixart).name == "dit"
    assert family_of(unet).kind(unet) == "sd15" and family_of(pixart).kind(pixart) == "pixart"
    with pytest.raises(TypeError, match="UNet2DConditionModel, PixArtTransformer2DModel"):
        family_of(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="cannot find a supported denoiser"):
        get_denoiser(object())


def test_pixart_learned_sigma_keeps_the_mean_half(pixart):
    inp = tiny_inputs(pixart)
    raw = pixart(inp["x"], encoder_hidden_states=inp["text_states"], timestep=inp["t"],
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert raw.shape[1] == 8
    out = denoise(pixart, inp["x"], inp["t"], inp["text_states"])
    assert out.shape == inp["x"].shape and torch.equal(out, raw[:, :4])
    plain = tiny_pixart(learned_sigma=False)
    assert denoise(plain, inp["x"], inp["t"], inp["text_states"]).shape == inp["x"].shape
    # a scalar timestep is broadcast over the batch (PixArt embeds one per item)
    assert torch.equal(denoise(plain, inp["x"], torch.tensor(7), inp["text_states"]),
                       denoise(plain, inp["x"], torch.tensor([7, 7]), inp["text_states"]))


def test_sdxl_text_time_conditioning_is_required_and_passed(sdxl_unet):
    inp = tiny_inputs(sdxl_unet)
    assert family_of(sdxl_unet).kind(sdxl_unet) == "sdxl"
    with pytest.raises(ValueError, match="text_embeds and time_ids"):
        denoise(sdxl_unet, inp["x"], inp["t"], inp["text_states"])
    out = denoise(sdxl_unet, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
    ref = sdxl_unet(inp["x"], inp["t"], encoder_hidden_states=inp["text_states"], added_cond_kwargs=inp["cond"]).sample
    assert torch.equal(out, ref)
    with pytest.raises(TypeError, match="unexpected conditioning"):
        denoise(sdxl_unet, inp["x"], inp["t"], inp["text_states"], **inp["cond"], encoder_attention_mask=None)


def test_latent_tracker_grids_per_level(unet, pixart):
    with LatentTracker(unet) as tr:
        assert tr.grid(0) is None
        inp = tiny_inputs(unet, hw=(9, 6))
        denoise(unet, inp["x"], inp["t"], inp["text_states"])
        assert tr.latent_hw == (9, 6) and tr.grids() == [(9, 6), (5, 3)] and tr.batch == 2
        with tr.override((4, 4)):
            assert tr.grid(1) == (2, 2)
        assert tr.latent_hw == (9, 6)
    assert tr.handle is None
    with LatentTracker(pixart) as tr:
        inp = tiny_inputs(pixart, hw=(8, 12))
        denoise(pixart, inp["x"], inp["t"], inp["text_states"])
        assert tr.grid() == (4, 6) and tr.timestep == float(inp["t"][0])
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        self_attention_layers(pixart, (7, 8))


def test_steps_follow_the_scheduler_timesteps_with_repeats(unet):
    # PNDM's warm-up calls the denoiser twice at one timestep: that is one step, not a new run
    inp = tiny_inputs(unet, batch=1)
    with capture_self_attention(unet, steps=[1]) as cap:
        for t in (900, 600, 600, 300, 900, 600):
            denoise(unet, inp["x"], torch.tensor([t]), inp["text_states"])
    assert [c["step"] for c in cap.calls] == [0, 1, 1, 2, 0, 1]
    assert [c["captured"] for c in cap.calls] == [False, True, True, False, False, True]
