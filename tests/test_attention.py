"""aconvlib.analysis.capture: captured maps equal softmax(QKᵀ/√d) from each layer's own projections."""
import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

from aconvlib.analysis.capture import MemoryBudgetError, capture_self_attention
from aconvlib.models import self_attention_layers


def call(model, x, t, text):
    if isinstance(model, PixArtTransformer2DModel):
        return model(x, encoder_hidden_states=text, timestep=torch.full((x.shape[0],), float(t), device=x.device),
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return model(x, t, encoder_hidden_states=text).sample


def reference_maps(model, x, t, text, batch_items):
    """Hook every attn1 input; softmax(Q Kᵀ · scale) per head from to_q / to_k, mean over heads and items."""
    inputs, hooks = {}, []
    for layer in self_attention_layers(model):
        hooks.append(layer.module.register_forward_hook(
            lambda m, args, out, name=layer.name: inputs.__setitem__(name, args[0].detach())))
    try:
        with torch.no_grad():
            out = call(model, x, t, text)
    finally:
        for h in hooks:
            h.remove()
    maps = {}
    for layer in self_attention_layers(model):
        attn, hs = layer.module, inputs[layer.name][batch_items].float()
        q, k = attn.to_q.float()(hs), attn.to_k.float()(hs)
        b, n, _ = q.shape
        q = q.view(b, n, attn.heads, -1).transpose(1, 2)
        k = k.view(b, n, attn.heads, -1).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        maps[layer.name] = p.mean(dim=(0, 1))
    return maps, out


def make_inputs(hw=(8, 6), cfg=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, *hw, generator=g)
    text_c, text_u = torch.randn(1, 3, 16, generator=g), torch.randn(1, 3, 16, generator=g)
    if cfg:
        return torch.cat([x, x]), torch.cat([text_u, text_c])
    return x, text_c


@pytest.mark.parametrize("which", ["unet", "pixart"])
def test_maps_equal_recomputed_softmax_and_outputs_unchanged(which, request):
    model = request.getfixturevalue(which)
    x, text = make_inputs()
    ref, ref_out = reference_maps(model, x, 7, text, slice(1, 2))   # the conditional half
    with torch.no_grad(), capture_self_attention(model) as cap:
        out = call(model, x, 7, text)
    assert torch.equal(out, ref_out)
    assert set(cap.maps) == set(ref)
    for name, m in cap.maps.items():
        assert m.dtype == torch.float32
        assert torch.allclose(m, ref[name], atol=1e-6), name
        assert torch.allclose(m.sum(1), torch.ones(m.shape[0]), atol=1e-5)
        h, w = cap.grids[name]
        assert m.shape == (h * w, h * w)
    # non-square latent 8x6: grids follow (with the patch size for the DiT)
    assert max(cap.grids.values()) == ((8, 6) if which == "unet" else (4, 3))
    assert cap.calls == [{"step": 0, "timestep": 7.0, "batch": 2, "cfg": True, "captured": True}]


def test_cfg_branch_selection(unet):
    x, text = make_inputs()
    ref_u, _ = reference_maps(unet, x, 5, text, slice(0, 1))
    ref_c, _ = reference_maps(unet, x, 5, text, slice(1, 2))
    ref_b, _ = reference_maps(unet, x, 5, text, slice(0, 2))
    name = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"   # after cross-attention: branches differ
    assert not torch.allclose(ref_u[name], ref_c[name], atol=1e-4)
    for branch, ref in (("uncond", ref_u), ("cond", ref_c), ("both", ref_b)):
        with torch.no_grad(), capture_self_attention(unet, [name], cfg_branch=branch) as cap:
            call(unet, x, 5, text)
        assert torch.allclose(cap.maps[name], ref[name], atol=1e-6), branch
    # a batch whose halves differ is not a CFG batch: every item is averaged
    x2, t2 = torch.randn(2, 4, 8, 6), torch.randn(2, 3, 16)
    ref_all, _ = reference_maps(unet, x2, 5, t2, slice(0, 2))
    with torch.no_grad(), capture_self_attention(unet, [name]) as cap:
        call(unet, x2, 5, t2)
    assert cap.calls[0]["cfg"] is False
    assert torch.allclose(cap.maps[name], ref_all[name], atol=1e-6)


def test_step_and_timestep_selection_average(unet):
    x, text = make_inputs()
    refs = [reference_maps(unet, x, t, text, slice(1, 2))[0] for t in (900, 500, 100)]
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with torch.no_grad(), capture_self_attention(unet, [0], steps=[0, 2]) as cap:
        for t in (900, 500, 100):
            call(unet, x, t, text)
    assert [c["captured"] for c in cap.calls] == [True, False, True]
    assert torch.allclose(cap.maps[name], (refs[0][name] + refs[2][name]) / 2, atol=1e-6)
    with torch.no_grad(), capture_self_attention(unet, lambda layer: layer.level == 0, timesteps=[500]) as cap:
        for t in (900, 500, 100, 900):   # the last call starts a new run: step index 0
            call(unet, x, t, text)
    assert [c["step"] for c in cap.calls] == [0, 1, 2, 0]
    assert all(n.startswith(("down_blocks.0", "up_blocks.1")) for n in cap.maps)
    assert torch.allclose(cap.maps[name], refs[1][name], atol=1e-6)


def test_processors_restored_also_after_exception(unet):
    before = dict(unet.attn_processors)
    x, text = make_inputs()
    with torch.no_grad(), capture_self_attention(unet, [1]) as cap:
        during = dict(unet.attn_processors)
        call(unet, x, 3, text)
    changed = [k for k in before if during[k] is not before[k]]
    assert changed == ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"]
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(RuntimeError, match="boom"):
        with capture_self_attention(unet):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert not unet._forward_pre_hooks


def test_memory_budget_error_before_any_work(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(MemoryBudgetError, match="memory_budget_gb"):
        capture_self_attention(unet, memory_budget_gb=1e-6, workspace_mb=0.001)
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    # a larger latent at run time is checked before the call computes anything
    budget = (4 * (8 * 8) ** 2 + 3 * 1024) / 2**30 * 1.01
    with capture_self_attention(unet, [0], memory_budget_gb=budget, workspace_mb=1 / 1024) as cap:
        with pytest.raises(MemoryBudgetError):
            call(unet, torch.randn(1, 4, 16, 16), 3, torch.randn(1, 3, 16))
    assert cap.counts == {"down_blocks.0.attentions.0.transformer_blocks.0.attn1": 0}
    assert all(unet.attn_processors[k] is v for k, v in before.items())


def test_sd15_at_512_fits_the_budget():
    from aconvlib.analysis.capture import AttentionCapture
    from aconvlib.models import load_denoiser

    sd = load_denoiser("sd15", weights=False, device="meta")
    cap = AttentionCapture(sd, memory_budget_gb=1.5, latent_hw=(64, 64))   # 16 layers: 342 MiB + workspace
    assert len(cap.layers) == 16 and max(lay.tokens for lay in cap.layers) == 4096
    with pytest.raises(MemoryBudgetError):
        AttentionCapture(sd, memory_budget_gb=0.5, latent_hw=(64, 64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(unet, dtype):
    x, text = make_inputs()
    ref, _ = reference_maps(unet, x, 5, text, slice(1, 2))
    low = UNet2DConditionModel.from_config(unet.config).eval()
    low.load_state_dict(unet.state_dict())
    low.to(dtype)
    before = call(low, x.to(dtype), 5, text.to(dtype)) if dtype == torch.bfloat16 else None
    try:
        with torch.no_grad(), capture_self_attention(low) as cap:
            out = call(low, x.to(dtype), 5, text.to(dtype))
    except RuntimeError as e:   # some CPU builds lack fp16 kernels for the denoiser itself
        pytest.skip(f"{dtype} denoiser not runnable on this CPU: {e}")
    if before is not None:
        assert torch.equal(out, before)
    for name, m in cap.maps.items():
        assert m.dtype == torch.float32
        assert torch.allclose(m.sum(1), torch.ones(m.shape[0]), atol=1e-5)
        assert (m - ref[name]).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", ["unet", "pixart"])
# fp32 tolerance: cuDNN runs the convolutions in TF32 on Ampere/Hopper (measured 1.0e-4 on an H100)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.float16, 0.02), (torch.bfloat16, 0.05)])
def test_capture_on_cuda(which, dtype, tol, request):
    """On CUDA: maps equal the fp32 reference (fp16/bf16 within rounding), rows sum to one, outputs unchanged."""
    model = request.getfixturevalue(which)
    x, text = make_inputs()
    ref, _ = reference_maps(model, x, 5, text, slice(1, 2))   # fp32 reference on the CPU
    dev = type(model).from_config(model.config).eval()
    dev.load_state_dict(model.state_dict())
    dev.to("cuda", dtype)
    xc, tc = x.to("cuda", dtype), text.to("cuda", dtype)
    with torch.no_grad():
        before = call(dev, xc, 5, tc)
        with capture_self_attention(dev) as cap:
            out = call(dev, xc, 5, tc)
    assert torch.equal(out, before)
    for name, m in cap.maps.items():
        m = m.float().cpu()
        assert torch.allclose(m.sum(1), torch.ones(m.shape[0]), atol=1e-4)
        assert (m - ref[name]).abs().max() < tol, (name, dtype)
