import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from aconvlib.testing import dummies  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    """A tiny random-weight ``UNet2DConditionModel`` (shared factory: aconvlib.testing.dummies)."""
    return dummies.tiny_unet()


@pytest.fixture(scope="module")
def pixart():
    """A tiny random-weight ``PixArtTransformer2DModel`` with learned sigma."""
    return dummies.tiny_pixart()


@pytest.fixture(scope="module")
def sdxl_unet():
    """A tiny U-Net with SDXL's text_time conditioning."""
    return dummies.tiny_unet(text_time=True)


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory):
    """A hub cache of tiny random-weight checkpoints in the published layouts (aconvlib.testing.hub_fixtures),
    built once per session. Use it through ``offline_hub(hub_root)`` (it patches the values huggingface_hub read
    at import; setting HF_HUB_CACHE in the environment afterwards changes nothing)."""
    from aconvlib.testing.hub_fixtures import build_hub_cache

    root = tmp_path_factory.mktemp("hub-fixtures-session")
    build_hub_cache(root)
    return root


@pytest.fixture
def fixture_hub(hub_root):
    """The session's fixture cache, active (offline) for one test; torch on one thread (tiny models)."""
    import torch

    from aconvlib.testing.hub_fixtures import offline_hub

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with offline_hub(hub_root) as hub:
            yield hub
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def empty_hub(tmp_path):
    """An empty hub cache, active (offline) for one test: every real checkpoint is missing."""
    from aconvlib.testing.hub_fixtures import offline_hub

    with offline_hub(tmp_path / "empty-hub", []) as hub:
        yield hub


# ------------------------------------------------------------------------------------------------
# tiny random-weight denoisers (plain functions: ``from conftest import tiny_unet, tiny_pixart``)
# ------------------------------------------------------------------------------------------------
def tiny_unet(seed: int = 0, block_out_channels=(32, 64)):
    """A small random ``UNet2DConditionModel`` (levels 16×16 and 8×8 at its 16×16 sample size, 5 attn1;
    8 heads per layer; text states [B, L, 32])."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def tiny_pixart(seed: int = 0, attention_head_dim: int = 8):
    """A small random ``PixArtTransformer2DModel`` (2 blocks of 2 heads × ``attention_head_dim``, patch 2,
    8×8 sample size; caption states [B, L, 32])."""
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_layers=2, attention_head_dim=attention_head_dim, num_attention_heads=2, in_channels=4, out_channels=8,
        sample_size=8, patch_size=2, caption_channels=32, cross_attention_dim=2 * attention_head_dim,
        norm_type="ada_norm_single", use_additional_conditions=False).eval()


def run_tiny(model, hw=None, seed: int = 0, batch: int = 2):
    """One no-grad call of a tiny denoiser on seeded random latents [batch, 4, h, w] and text states."""
    import torch
    from diffusers import UNet2DConditionModel

    hw = hw or (model.config.sample_size, model.config.sample_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *hw, generator=g)
    t = torch.tensor([5, 500] * batch)[:batch]
    text = torch.randn(batch, 3, 32, generator=g)
    with torch.no_grad():
        if isinstance(model, UNet2DConditionModel):
            return model(x, t, encoder_hidden_states=text).sample
        return model(x, encoder_hidden_states=text, timestep=t,
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
