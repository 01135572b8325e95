"""Neighborhood attention swap: exact reference, full-window equivalence, restoration."""
import pytest
import torch

pytest.importorskip("natten")

from aconvlib.neighborhood import na2d, neighborhood_attention  # noqa: E402


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                attention_head_dim=2, cross_attention_dim=8, norm_num_groups=8).eval()


def _tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                    num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                    caption_channels=8, norm_type="ada_norm_single", use_additional_conditions=False,
                                    norm_elementwise_affine=False, norm_eps=1e-6).eval()


def _run(model, x, text):
    if type(model).__name__ == "PixArtTransformer2DModel":
        return model(x, encoder_hidden_states=text, timestep=torch.tensor([10]),
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return model(x, 10, encoder_hidden_states=text).sample


def test_na2d_matches_brute_force_with_shifted_border_windows():
    torch.manual_seed(0)
    H, W, d, K = 5, 7, 6, 3          # d = 6 is padded to 8 on CPU
    q, k, v = (torch.randn(1, H, W, 2, d) for _ in range(3))
    out = na2d(q, k, v, K, scale=d ** -0.5)
    ref = torch.zeros_like(out)
    for i in range(H):
        for j in range(W):
            i0, j0 = min(max(i - K // 2, 0), H - K), min(max(j - K // 2, 0), W - K)
            kk = k[0, i0:i0 + K, j0:j0 + K].reshape(-1, 2, d)
            vv = v[0, i0:i0 + K, j0:j0 + K].reshape(-1, 2, d)
            a = torch.softmax(torch.einsum("nd,knd->nk", q[0, i, j], kk) * d ** -0.5, -1)
            ref[0, i, j] = torch.einsum("nk,knd->nd", a, vv)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("make,shape,text", [(_tiny_unet, (1, 4, 6, 10), (1, 3, 8)),
                                             (_tiny_pixart, (1, 4, 8, 12), (1, 3, 8))])
def test_window_covering_the_grid_is_exact_self_attention(make, shape, text):
    model = make()
    x, c = torch.randn(shape), torch.randn(text)
    with torch.no_grad():
        ref = _run(model, x, c)
        with neighborhood_attention(model, kernel_size=64):
            full = _run(model, x, c)
        with neighborhood_attention(model, kernel_size=3):
            local = _run(model, x, c)
    assert torch.allclose(full, ref, atol=1e-4)
    assert not torch.allclose(local, ref, atol=1e-3)


def test_processors_restored_also_after_an_exception():
    model = _tiny_unet()
    before = {k: type(v) for k, v in model.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with neighborhood_attention(model, kernel_size=3):
            assert any("Neighborhood" in type(p).__name__ for p in model.attn_processors.values())
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in model.attn_processors.items()} == before
    assert not model._forward_pre_hooks
