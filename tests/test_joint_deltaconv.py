"""The ΔConv hybrid of joint-attention transformers (aconvlib.mixers.adapter_base.JointMixerAttention): image↔image
mixing by the ΔConvBlock, image queries keep attention over the text keys, text queries keep full attention;
to_deltaconv / save / load, the text path, and 2 distillation steps (flow matching) on the FLUX and SD3 fixtures."""
import json

import pytest
import torch

from aconvlib.mixers.adapter_base import JointMixerAttention
from aconvlib.mixers.convert import (get_adapter, load_deltaconv, mixer_layers, save_deltaconv, to_deltaconv,
                                     to_mixer)
from aconvlib.models import denoise
from aconvlib.testing.dummies import tiny_flux, tiny_inputs, tiny_sd3

FACTORIES = {"flux": tiny_flux, "sd3": tiny_sd3}


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_to_deltaconv_save_and_load(kind, tmp_path):
    model = to_deltaconv(FACTORIES[kind](), kernel_sizes=3, seed=0)
    types = {n: type(w).__name__ for n, w in mixer_layers(model)}
    expected = ({"transformer_blocks.0.attn": "JointMixerAttention", "single_transformer_blocks.0.attn":
                 "JointMixerAttention"} if kind == "flux" else
                {"transformer_blocks.0.attn": "JointMixerAttention", "transformer_blocks.0.attn2": "MixerSelfAttention",
                 "transformer_blocks.1.attn": "JointMixerAttention"})
    assert types == expected
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in get_adapter(model).parameters()}
    inp = tiny_inputs(model, hw=(8, 12), text_len=5)
    save_deltaconv(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert {l.get("block_type", "self") for l in cfg["layers"]} == ({"double", "single"} if kind == "flux"
                                                                      else {"joint", "self"})
    loaded = load_deltaconv(FACTORIES[kind](), tmp_path / "a")
    with torch.no_grad():
        a = denoise(model, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
        b = denoise(loaded, inp["x"], inp["t"], inp["text_states"], **inp["cond"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _layer_call(wrapper, model, kind, hw, text):
    """Call one converted joint layer directly on fixed image inputs with text states ``text``."""
    torch.manual_seed(1)
    n = (hw[0] // 2) * (hw[1] // 2)
    dim = wrapper.attn.to_q.in_features
    img = torch.randn(1, n, dim)
    with wrapper.tracker.override(hw), torch.no_grad():
        if kind == "flux":
            ids = torch.cat([torch.zeros(text.shape[1], 3), torch.stack(torch.meshgrid(
                torch.zeros(1), torch.arange(hw[0] // 2.0), torch.arange(hw[1] // 2.0), indexing="ij"),
                -1).reshape(-1, 3)])
            rope = model.pos_embed(ids)
            if wrapper.layout.block_type == "single":
                out = wrapper(torch.cat([text, img], 1), image_rotary_emb=rope)
                return out[:, text.shape[1]:]
            return wrapper(img, encoder_hidden_states=text, image_rotary_emb=rope)[0]
        return wrapper(img, encoder_hidden_states=text)[0]


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_image_queries_read_the_text_through_their_gated_text_attention(kind):
    model = to_deltaconv(FACTORIES[kind](), kernel_sizes=3, seed=0)
    dim = next(w for _, w in mixer_layers(model) if isinstance(w, JointMixerAttention)).attn.to_q.in_features
    t1, t2 = torch.randn(1, 5, dim), torch.randn(1, 5, dim)
    for name, w in mixer_layers(model):
        if not isinstance(w, JointMixerAttention):
            continue
        a, b = _layer_call(w, model, kind, (8, 12), t1), _layer_call(w, model, kind, (8, 12), t2)
        assert (a - b).abs().max() > 1e-3, name          # another prompt, another image output
        with torch.no_grad():
            w.block.text_gate.fill_(-1e4)                 # gate closed: the image tokens no longer see the text
        a, b = _layer_call(w, model, kind, (8, 12), t1), _layer_call(w, model, kind, (8, 12), t2)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["flux-schnell", "sd3.5-medium"])
def test_the_converted_pipeline_follows_the_prompt(name, fixture_hub):
    from aconvlib.models import load_pipeline

    pipe = to_deltaconv(load_pipeline(name), kernel_sizes=3, seed=0)
    pipe.set_progress_bar_config(disable=True)

    def run(prompt):
        return pipe(prompt, num_inference_steps=2, height=64, width=96, max_sequence_length=16, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    a, b = run("a red fox in the snow"), run("a city street at night")
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-4


def test_other_mixer_kinds_refuse_joint_layers_in_one_line():
    with pytest.raises(NotImplementedError) as e:
        to_mixer(tiny_flux(), "linear")
    assert "\n" not in str(e.value) and "deltaconv" in str(e.value)


@pytest.mark.parametrize("name", ["flux-dev", "sd3.5-medium"])
def test_distills_two_steps_with_flow_matching(name, fixture_hub, tmp_path):
    from aconvlib.mixers.convert import load_mixer
    from aconvlib.models import load_pipeline
    from aconvlib.training.accelerated import AcceleratedDistiller
    from aconvlib.training.distill import DistillConfig

    pipe = load_pipeline(name)
    with torch.no_grad():
        if name.startswith("flux"):
            text, pooled, _ = pipe.encode_prompt(["a red fox", "a blue car"], None, max_sequence_length=16)
        else:
            text, _, pooled, _ = pipe.encode_prompt(["a red fox", "a blue car"], None, None,
                                                    do_classifier_free_guidance=False, max_sequence_length=16)

    def batches(start):
        g = torch.Generator().manual_seed(start)
        while True:
            yield torch.randn(2, 16, 8, 8, generator=g), text, {"pooled_projections": pooled}

    cfg = DistillConfig(steps=2, batch=2, warmup=1, ckpt_every=10, log_every=1, kernel_sizes=3)
    d = AcceleratedDistiller(pipe, batches, cfg, tmp_path / "run", device="cpu", quiet=True)
    assert d.prediction_type == "flow_matching"
    before = {k: v.clone() for k, v in d.adapter.state_dict().items()}
    d.run()
    log = [json.loads(l) for l in (tmp_path / "run" / "distill_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss"] > 0 and r["feat"] > 0 for r in steps)
    after = d.adapter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any(k.endswith("text_gate") for k in after)
    stock = load_mixer(load_pipeline(name), str(tmp_path / "run" / "adapter"))
    assert {type(w).__name__ for _, w in mixer_layers(stock)} >= {"JointMixerAttention"}
