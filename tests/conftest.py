import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from aconvlib.testing.dummies import tiny_pixart, tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    """A tiny random-weight ``UNet2DConditionModel`` (shared factory: aconvlib.testing.dummies)."""
    return tiny_unet()


@pytest.fixture(scope="module")
def pixart():
    """A tiny random-weight ``PixArtTransformer2DModel`` with learned sigma."""
    return tiny_pixart()


@pytest.fixture(scope="module")
def sdxl_unet():
    """A tiny U-Net with SDXL's text_time conditioning."""
    return tiny_unet(text_time=True)
