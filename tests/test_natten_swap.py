"""aconvlib.natten_swap: neighborhood attention in place of attn1 (NATTEN vs a dense masked reference)."""
import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

from aconvlib.mixers.neighborhood import clip_kernel, natten_available, neighborhood_attention, neighborhood_mask


def test_mask_shifts_border_windows():
    m = neighborhood_mask((5, 6), 3)
    assert m.sum(1).eq(9).all()                       # always K×K keys (shifted, not clipped)
    corner = m[0].view(5, 6)
    assert corner[:3, :3].all() and corner.sum() == 9
    assert clip_kernel(13, (8, 6)) == 5 and clip_kernel(13, (32, 32)) == 13 and clip_kernel(4, (9, 9)) == 3


def _pixart():
    torch.manual_seed(0)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, sample_size=10, patch_size=2, cross_attention_dim=16,
                                    caption_channels=16, norm_type="ada_norm_single",
                                    use_additional_conditions=False).eval()


def _call(m, x, text):
    return m(x, encoder_hidden_states=text, timestep=torch.full((x.shape[0],), 10.0),
             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


@pytest.mark.parametrize("backend", ["torch"] + (["natten"] if natten_available() else []))
def test_full_window_equals_full_attention_and_restores(backend):
    m = _pixart()
    x, text = torch.randn(1, 4, 10, 10), torch.randn(1, 3, 16)
    before = dict(m.attn_processors)
    with torch.no_grad():
        ref = _call(m, x, text)
        with neighborhood_attention(m, 13, backend=backend):    # 5×5 grid: K clipped to 5 = everything
            full = _call(m, x, text)
        with neighborhood_attention(m, 3, backend=backend):
            local = _call(m, x, text)
    assert torch.allclose(full, ref, atol=1e-5)
    assert not torch.allclose(local, ref, atol=1e-3)
    assert all(m.attn_processors[k] is v for k, v in before.items())


@pytest.mark.skipif(not natten_available(), reason="natten not installed")
def test_natten_matches_dense_reference_on_unet_with_padded_head_dim():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(24, 48),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=8).eval()   # head dims 12, 24: padded
    x, text = torch.randn(2, 4, 8, 6), torch.randn(2, 3, 16)
    with torch.no_grad():
        with neighborhood_attention(unet, 3, backend="torch"):
            a = unet(x, 5, encoder_hidden_states=text).sample
        with neighborhood_attention(unet, 3, backend="natten"):
            b = unet(x, 5, encoder_hidden_states=text).sample
    assert torch.allclose(a, b, atol=1e-4)
