"""Chapter 7 on joint-attention transformers: teacher samples with the model's own sampler, then 2 distillation
steps of the ΔConv hybrid on them (aconvlib.book.joint_distill), on the FLUX and SD3.5 hub fixtures."""
import numpy as np
import pytest
import torch


def test_real_adapters_sample_joint_models_with_their_own_sampler(fixture_hub):
    from aconvlib.book.real_adapters import TEACHER, evaluate_real_adapters

    rep = evaluate_real_adapters(["flux-schnell"], n_prompts=1, steps=20, guidance_scale=4.5, height=64, width=64)
    (row,) = rep.rows
    assert row["steps"] == 4                       # FLUX.1 [schnell]'s 4 steps, not the chapter's 20
    assert rep.images["flux-schnell"][TEACHER].shape == (1, 64, 64, 3)


@pytest.mark.parametrize("name", ["flux-dev", "sd3.5-medium"])
def test_distill_steps_runs_the_hybrid_on_teacher_samples(name, fixture_hub, tmp_path):
    from aconvlib.book.joint_distill import distill_steps, encode_joint_images, encode_joint_prompts
    from aconvlib.book.studies import load_study_pipeline

    pipe = load_study_pipeline(name)
    prompts = ["a red fox", "a blue car"]
    images = np.stack([np.asarray(pipe(p, num_inference_steps=2, height=64, width=64).images[0].convert("RGB"))
                       for p in prompts])
    z = encode_joint_images(pipe, images)
    assert z.shape == (2, 16, 8, 8)
    with torch.no_grad():
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        raw = pipe.vae.encode(x).latent_dist.mean
    cfg = pipe.vae.config
    assert torch.allclose(z, (raw - (cfg.shift_factor or 0.0)) * cfg.scaling_factor, atol=1e-5)
    states, pooled = encode_joint_prompts(pipe, prompts, max_sequence_length=16)
    assert states.shape[:2] == (2, 16 if name == "flux-dev" else 77 + 16) and pooled.shape[0] == 2

    check = distill_steps(pipe, prompts, images, 2, max_sequence_length=16, out_dir=tmp_path / "run")
    assert [r["step"] for r in check["log"]] == [1, 2] and all(r["loss"] > 0 and r["feat"] > 0 for r in check["log"])
    assert check["changed"] and check["only_adapter_trains"] and check["trainable"] > 0
    assert check["layers"]["JointMixerAttention"] >= 2
    assert (tmp_path / "run" / "adapter" / "config.json").exists()
    with pytest.raises(ValueError, match="one image per prompt"):
        distill_steps(load_study_pipeline(name), prompts, images[:1], 2)
    with pytest.raises(ValueError, match="steps"):
        distill_steps(load_study_pipeline(name), prompts, images, 0)
