"""Per-model facts have one source: the ModelSpec (and the family it names), not name matching in the layers above."""
import pytest

from aconvlib.models import get_family, get_spec, list_models, lookup_spec, text_conditioning
from aconvlib.models.registry import UnknownModelError


def test_grid_factors_are_the_published_ones():
    # (latent factor, patch size, down-sampling): SD1.5's U-Net downsamples 3x, SDXL's 2x, PixArt-Σ has patch 2
    expected = {"sd15": (8, 1, 8), "sdxl": (8, 1, 4), "pixart-sigma-512": (8, 2, 1), "pixart-sigma-1024": (8, 2, 1),
                "mini-sd": (2, 1, 4), "mini-dit": (2, 2, 1),
                # FLUX packs 2x2 latent cells per token (its transformer's patch is 1), SD3 patchifies 2x2
                "flux-schnell": (8, 2, 1), "flux-dev": (8, 2, 1), "sd3.5-medium": (8, 2, 1), "sd3.5-large": (8, 2, 1)}
    assert {s.name: s.grid_factors for s in list_models()} == expected
    assert get_spec("sd15").grid_multiple == 64 and get_spec("pixart-sigma-512").grid_multiple == 16


@pytest.mark.parametrize("name", ["sd15", "pixart-sigma-512"])
def test_the_spec_and_the_loaded_denoiser_agree(name):
    from aconvlib.models import load_denoiser
    from aconvlib.training.encoding import grid_factors

    spec = get_spec(name)
    den = load_denoiser(name, weights=False, device="meta")
    assert grid_factors(den, spec.latent_factor) == spec.grid_factors


def test_bucket_tables_come_from_the_spec():
    sizes = {s.name: len(s.bucket_sizes()) for s in list_models() if s.buckets is not None}
    assert sizes == {"sd15": 17, "sdxl": 40, "pixart-sigma-512": 33, "pixart-sigma-1024": 33}
    with pytest.raises(LookupError, match="no bucket table"):
        get_spec("mini-sd").bucket_sizes()


def test_lookup_by_name_alias_or_hub_id_and_no_guessing():
    assert lookup_spec("SDXL").name == "sdxl"
    assert lookup_spec("stable-diffusion-v1-5").name == lookup_spec("runwayml/stable-diffusion-v1-5").name == "sd15"
    assert lookup_spec("PixArt-alpha/PixArt-Sigma-XL-2-512-MS").name == "pixart-sigma-512"
    assert lookup_spec("pixart-sigma").name == "pixart-sigma-1024"
    for guess in ("my-xl-finetune", "sd1", "pixart-512-custom"):
        with pytest.raises(UnknownModelError):
            lookup_spec(guess)


def test_conditioning_and_kernel_sizes_live_with_the_family():
    assert text_conditioning("sdxl").pooled_and_time_ids and not text_conditioning("sdxl").attention_mask
    assert text_conditioning("pixart").attention_mask and text_conditioning("sd15") == text_conditioning("sd15")
    assert not (text_conditioning("sd15").pooled_and_time_ids or text_conditioning("sd15").attention_mask)
    assert text_conditioning("flux").pooled and text_conditioning("sd3").pooled
    with pytest.raises(ValueError, match="unknown architecture"):
        text_conditioning("hunyuan")
    from aconvlib.models.families import OFFICIAL_KERNEL_SIZES, PAPER_KERNEL_SIZES

    assert PAPER_KERNEL_SIZES == {"sd15": 9, "sdxl": 13, "pixart": 13}
    assert OFFICIAL_KERNEL_SIZES["sd15"][("up", 0)] == 11 and OFFICIAL_KERNEL_SIZES["sdxl"][("up", 1)] == 13
    assert get_family("dit").official_kernel_sizes(None) == 13
