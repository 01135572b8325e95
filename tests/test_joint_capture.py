"""Joint capture (aconvlib.analysis.joint_capture via capture_self_attention) equals a naive joint softmax computed
from each attention module's own projections, written out here from first principles: RMS norms by hand, RoPE by
hand from the (cos, sin) the module receives, the concatenation order read from diffusers' processors (FLUX text
first, SD3 image first), one dense float64 softmax. The naive attention also reproduces the module's output, so it is
the attention the module computes."""
import pytest
import torch

from aconvlib.analysis.capture import MemoryBudgetError, capture_self_attention
from aconvlib.analysis.joint_capture import TextMaskError
from aconvlib.models import denoise, self_attention_layers
from aconvlib.testing.dummies import tiny_flux, tiny_inputs, tiny_sd3

from _joint_reference import naive

L = 7   # text tokens


def _run(model, kind, hw, mask, seed=0, batch=2, **cap_kw):
    inp = tiny_inputs(model, batch=batch, hw=hw, text_len=L, seed=seed)
    layers = [l for l in self_attention_layers(model, hw) if l.joint]
    seen, outs, hooks = {}, {}, []
    for l in layers:
        hooks.append(l.module.register_forward_pre_hook(
            lambda m, a, kw, n=l.name: seen.__setitem__(n, dict(kw, **({"hidden_states": a[0]} if a else {}))),
            with_kwargs=True))
        hooks.append(l.module.register_forward_hook(
            lambda m, a, kw, o, n=l.name: outs.__setitem__(n, o[0] if isinstance(o, tuple) else o), with_kwargs=True))
    try:
        with torch.no_grad(), capture_self_attention(model, latent_hw=hw, cfg=False, text_mask=mask,
                                                     **cap_kw) as cap:
            denoise(model, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
    finally:
        for h in hooks:
            h.remove()
    return cap, layers, seen, outs


@pytest.mark.parametrize("kind", ["flux", "sd3"])
@pytest.mark.parametrize("hw", [(8, 8), (8, 12)])   # square and non-square latents: 4x4 and 4x6 tokens
def test_capture_equals_the_naive_joint_softmax(kind, hw):
    torch.manual_seed(0)
    model = tiny_flux() if kind == "flux" else tiny_sd3()
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, :3], mask[1, :5] = True, True     # prompt tokens, then padding
    cap, layers, seen, outs = _run(model, kind, hw, mask, workspace_mb=0.0005)   # tiny chunks: streaming is exercised
    n = (hw[0] // 2) * (hw[1] // 2)
    types = {l.block_type for l in layers}
    assert types == ({"double", "single"} if kind == "flux" else {"joint"})
    for l in layers:
        p, n_text, out, _ = naive(l.module, kind, l.block_type, seen[l.name])
        torch.testing.assert_close(out.float(), outs[l.name], rtol=1e-4, atol=1e-5)   # the module's own attention
        if l.block_type == "single":
            n_text = p.shape[-1] - n
        assert n_text == L
        img = slice(n_text, n_text + n) if kind == "flux" else slice(0, n)
        txt = slice(0, n_text) if kind == "flux" else slice(n, n + n_text)
        pi = p[:, :, img]                            # image queries [B, h, N, S]
        ii = pi[..., img]
        ref_map = (ii / ii.sum(-1, keepdim=True)).mean((0, 1))
        text = pi[..., txt].sum(-1).mean((0, 1))
        pad = (pi[..., txt] * (~mask).double()[:, None, None, :]).sum(-1).mean((0, 1))
        assert cap.grids[l.name] == (hw[0] // 2, hw[1] // 2)
        torch.testing.assert_close(cap.maps[l.name].double(), ref_map, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cap.text_share[l.name].double(), text, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cap.padding_share[l.name].double(), pad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cap.prompt_share[l.name].double(), text - pad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cap.text_key_mass[l.name].double(), pi[..., txt].mean((0, 1)).sum(0),
                                   rtol=1e-4, atol=1e-6)
        assert 0 < float(text.min()) and float(text.max()) < 1 and float(pad.sum().detach()) > 0
        assert torch.allclose(cap.maps[l.name].sum(1), torch.ones(n), atol=1e-5)


def test_sd35_image_only_attention_is_captured_as_self_attention():
    model = tiny_sd3(dual=True)
    cap, _, _, _ = _run(model, "sd3", (8, 12), None)
    assert cap.block_types["transformer_blocks.0.attn2"] == "self"
    assert cap.maps["transformer_blocks.0.attn2"].shape == (24, 24)
    assert "transformer_blocks.0.attn2" not in cap.text_share
    with pytest.raises(TextMaskError, match="prompt_token_mask"):
        cap.padding_share


def test_image_sinks_are_the_keys_far_above_the_uniform_share():
    model = tiny_flux()
    cap, layers, _, _ = _run(model, "flux", (8, 8), None)
    name = layers[0].name
    m = cap.maps[name]
    b = m.double().mean(0)
    for ratio in (0.5, 1.0, 1.2):
        got = {s["token"] for s in cap.sink_tokens(name, ratio)}
        assert got == {i for i in range(16) if 16 * b[i] >= ratio}
    top = cap.sink_tokens(name, 0.0)[0]
    assert top["token"] == int(b.argmax()) and (top["row"], top["col"]) == divmod(top["token"], 4)


def test_a_text_mask_of_the_wrong_length_or_rows_is_one_line():
    model = tiny_flux()
    with pytest.raises(TextMaskError) as e:
        _run(model, "flux", (8, 8), torch.ones(L + 1, dtype=torch.bool))
    assert "\n" not in str(e.value) and f"{L} text tokens" in str(e.value)
    with pytest.raises(TextMaskError, match="3 rows"):
        _run(model, "flux", (8, 8), torch.ones(3, L, dtype=torch.bool))


def test_the_budget_fails_before_any_work_with_the_bytes_and_the_parameters():
    model = tiny_sd3()
    with pytest.raises(MemoryBudgetError) as e:
        capture_self_attention(model, latent_hw=(64, 64), memory_budget_gb=0.001, workspace_mb=0.1)
    msg = str(e.value)
    assert "\n" not in msg and "bytes" in msg and "layers=" in msg and "memory_budget_gb" in msg


@pytest.mark.parametrize("name", ["flux-dev", "sd3.5-medium"])
def test_capture_during_a_pipeline_run_with_the_prompts_token_mask(name, fixture_hub):
    from aconvlib.models import load_pipeline
    from aconvlib.models.families.joint import prompt_token_mask

    pipe = load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red fox in the snow"
    mask = prompt_token_mask(pipe, [prompt], max_sequence_length=16)
    with capture_self_attention(pipe, text_mask=mask, latent_hw=(8, 12)) as cap:
        pipe(prompt, num_inference_steps=2, height=64, width=96, max_sequence_length=16,
             generator=torch.Generator().manual_seed(0))
    assert [c["step"] for c in cap.calls] == [0, 1] and all(c["captured"] for c in cap.calls)
    assert cap.calls[0]["cfg"] == (name == "sd3.5-medium")   # SD3 batches [uncond, cond]; FLUX-dev embeds guidance
    joint = [n for n, t in cap.block_types.items() if t != "self"]
    assert joint and all(cap.grids[n] == (4, 6) for n in cap.maps)
    for n in joint:
        assert cap.text_key_mass[n].shape == (mask.shape[1],)
        torch.testing.assert_close(cap.prompt_share[n] + cap.padding_share[n], cap.text_share[n])
