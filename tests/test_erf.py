"""The gradient ERF (aconvlib.analysis.receptive_field) on token mixers whose receptive field is known, and on real denoisers."""
import pytest
import torch
import torch.nn.functional as F

from aconvlib.analysis import receptive_field as E


class DepthwiseConv(torch.nn.Module):
    """Tokens [B, N, C] -> depthwise K×K convolution (zero padding) on the grid -> tokens."""

    def __init__(self, channels, k, uniform=True):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False)
        if uniform:
            torch.nn.init.constant_(self.conv.weight, 1.0)
        else:
            with torch.no_grad():
                self.conv.weight.copy_(torch.rand_like(self.conv.weight) + 0.1)

    def forward(self, x, grid):
        b, n, c = x.shape
        img = x.transpose(1, 2).reshape(b, c, *grid)
        return self.conv(img).reshape(b, c, n).transpose(1, 2)


def tokens(grid, c=4, b=2, seed=0):
    return torch.randn(b, grid[0] * grid[1], c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
def test_depthwise_conv_erf_is_k_with_all_mass_inside(k):
    grid = (15, 15)
    conv = DepthwiseConv(4, k)
    rf = E.mixer_receptive_field(lambda x: conv(x, grid), tokens(grid), grid)
    assert rf.erf == k
    assert rf.mass_within(k) == pytest.approx(1.0, abs=1e-12)
    if k > 1:
        assert rf.mass_within(k - 2) < 0.8
    m = rf.center_map
    assert int((m > 0).sum()) == k * k                       # exactly the K×K window
    assert m.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_depthwise_conv_with_positive_random_weights_keeps_all_mass_in_k():
    grid = (13, 11)
    conv = DepthwiseConv(3, 5, uniform=False)
    rf = E.mixer_receptive_field(lambda x: conv(x, grid), tokens(grid, 3), grid, positions=2)
    assert len(rf.positions) == 4
    assert rf.mass_within(5) == pytest.approx(1.0, abs=1e-12)
    assert rf.erf <= 5


def test_identity_has_erf_one():
    grid = (9, 9)
    rf = E.mixer_receptive_field(lambda x: x, tokens(grid), grid, positions=3)
    assert rf.erf == 1
    assert rf.mass_within(1) == pytest.approx(1.0)


@pytest.mark.parametrize("side", [7, 15])
def test_global_average_covers_the_whole_grid(side):
    grid = (side, side)
    rf = E.mixer_receptive_field(lambda x: x.mean(1, keepdim=True).expand_as(x), tokens(grid), grid)
    assert rf.erf == side
    torch.testing.assert_close(rf.center_map, torch.full(grid, 1.0 / side ** 2))


def test_channel_mixing_does_not_change_the_spatial_field():
    grid = (11, 11)
    conv = DepthwiseConv(4, 3)
    lin = torch.nn.Linear(4, 6)
    rf = E.mixer_receptive_field(lambda x: lin(F.gelu(conv(x, grid))), tokens(grid), grid)
    assert rf.mass_within(3) == pytest.approx(1.0, abs=1e-12)


def test_positions():
    assert E.erf_positions((16, 16)) == [(8, 8)]
    assert E.erf_positions((16, 16), 1) == [(8, 8)]
    assert E.erf_positions((16, 8), 3) == [(r, c) for r in (4, 8, 12) for c in (2, 4, 6)]
    with pytest.raises(ValueError, match="outside"):
        E.erf_positions((4, 4), [(4, 0)])
    with pytest.raises(ValueError):
        E.erf_positions((4, 4), "corner")


def test_constant_mixer_is_an_error():
    grid = (5, 5)
    with pytest.raises(ValueError, match="does not depend"):
        E.mixer_receptive_field(lambda x: x * 0, tokens(grid), grid)


@pytest.mark.parametrize("which", ["unet", "pixart"])
def test_receptive_fields_of_a_denoiser_and_its_deltaconv_student(which, request):
    """Every attn1 of a tiny denoiser, teacher and converted ΔConv student, on the inputs of one real call."""
    import copy

    from aconvlib.mixers import to_mixer
    from aconvlib.models import self_attention_layers

    den = request.getfixturevalue(which).eval()
    layers = self_attention_layers(den, (16, 16))
    c_in = den.config.in_channels
    x = torch.randn(2, c_in, 16, 16, generator=torch.Generator().manual_seed(0))
    d_text = den.config.cross_attention_dim if which == "unet" else den.config.caption_channels
    text = torch.randn(2, 5, d_text, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500, 500])
    teacher = E.receptive_fields(den, x, t, text)
    assert [r.name for r in teacher] == [l.name for l in layers]
    assert [r.grid for r in teacher] == [l.grid for l in layers]
    for r in teacher:
        assert 1 <= r.erf <= 2 * max(r.grid) - 1
        assert r.info["kind"] == "self-attention"
    student = to_mixer(copy.deepcopy(den), "deltaconv", kernel_sizes=3)
    rfs = E.receptive_fields(student, x, t, text, positions=2)
    assert [r.name for r in rfs] == [l.name for l in layers]
    for r in rfs:
        assert r.info["kind"] == "deltaconv"
        assert len(r.positions) == 4 or min(r.grid) < 2


def test_layer_inputs_names_and_errors(unet):
    x = torch.randn(1, unet.config.in_channels, 16, 16)
    text = torch.randn(1, 5, unet.config.cross_attention_dim)
    got = E.layer_inputs(unet, x, torch.tensor([10]), text)
    assert set(got) == set(E.mixer_layers_by_name(unet))
    assert all(v.ndim == 3 and not v.requires_grad for v in got.values())
    with pytest.raises(KeyError, match="no token mixer"):
        E.layer_inputs(unet, x, torch.tensor([10]), text, names=["nope"])
