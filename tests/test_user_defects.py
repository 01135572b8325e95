"""Issue 19: defects a new user meets — each was a silent wrong answer or an unexplained refusal."""
import warnings

import pytest

from aconvlib.cli import main


# --- 19.2: words the embedded models do not know ------------------------------------------------------------
def test_tokenizer_names_unknown_words():
    from aconvlib.mini.tokenizer import WordTokenizer

    tok = WordTokenizer.for_grammar()
    assert tok.unknown_words("a hexagon at the top") == ["hexagon"]
    assert tok.unknown_words(["a small red circle at the top left", "a large blue ring, at the bottom"]) == []
    assert tok.unknown_words(["a Purple hexagon", "a purple ring"]) == ["purple", "hexagon"]
    assert tok.unknown_words("<unk> <pad>") == ["<unk>", "<pad>"]


def test_generate_refuses_unknown_words_naming_them_and_the_vocabulary(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "mini-sd", "--prompt", "a hexagon at the top", "--steps", "1",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "'hexagon'" in err and "circle" in err and "magenta" in err and "top left" in err and "small" in err
    assert "--allow-unknown-words" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_generate_goes_on_with_the_flag_and_says_what_it_dropped(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "mini-sd", "--prompt", "a hexagon at the top", "--steps", "1",
                 "--out", str(out), "--allow-unknown-words"]) == 0
    assert out.exists() and "warning" in capsys.readouterr().err


def test_generate_refuses_a_prompt_longer_than_the_text_encoder(tmp_path, capsys):
    long = " and ".join(["a small red circle at the top left"] * 4)    # 35 words, the encoder reads 22
    assert main(["generate", "--model", "mini-sd", "--prompt", long, "--steps", "1",
                 "--out", str(tmp_path / "x.png")]) == 1
    assert "reads only the first 22" in capsys.readouterr().err


def test_the_python_pipeline_warns_on_unknown_words():
    import torch

    from aconvlib.mini.pipeline import PromptWarning
    from aconvlib.models import load_pipeline

    pipe = load_pipeline("mini-dit")
    with pytest.warns(PromptWarning, match="'hexagon'.*they understand shapes: circle"):
        pipe("a hexagon", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    with pytest.warns(PromptWarning, match="'ugly'"):
        pipe("a red ring", negative_prompt="ugly", num_inference_steps=1, output_type="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWarning)   # a prompt of the grammar: no warning
        pipe("a large green ring at the right", num_inference_steps=1, output_type="pt")


# --- 19.3: --resume with nothing to resume ----------------------------------------------------------------------
def test_train_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "classifier", "--steps", "1", "--batch", "2", "--warmup", "1",
                 "--sample-every", "0", "--eval-images", "4", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint in {out} (ckpt.pt): starting from step 0" in err
    assert main(["train", "--model", "classifier", "--steps", "2", "--batch", "2", "--warmup", "1",
                 "--sample-every", "0", "--eval-images", "4", "--out", str(out), "--resume"]) == 0
    assert f"resuming {out / 'ckpt.pt'} at step 1" in capsys.readouterr().err


def test_distill_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "--model", "mini-sd", "--steps", "1", "--batch", "2", "--warmup", "1", "--device", "cpu",
            "--out", str(out), "--resume"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint in {out} (ckpt.pt): starting from step 0" in err
    args[args.index("--steps") + 1] = "2"
    assert main(args) == 0
    assert f"resuming {out / 'ckpt.pt'} at step 1" in capsys.readouterr().err


# --- 19.4: found trying the commands as a new user ----------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--px", "30", "--model", "mini-dit"], "multiples of 4 px, got 30"),               # was a ValueError traceback
    (["--px", "4000"], "GiB are available (MemAvailable"),                             # ran for hours / OOM
    (["--device", "gpu"], "unknown device 'gpu'"),                                     # RuntimeError traceback
    (["--guidance-scale", "-3"], "expected a number >= 0"),                            # silently ran without CFG
    (["--out", "x.jpgx"], "unknown image extension '.jpgx'"),                          # traceback after sampling
    (["--out", "."], "is a folder"),                                                   # traceback after sampling
])
def test_generate_refuses_bad_arguments_in_one_line_before_any_work(args, says, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    import aconvlib.models as models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("work started before the check"))
    try:
        code = main(["generate", "--prompt", "a red circle", "--steps", "1", *args])
    except SystemExit as e:   # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and says in err and "Traceback" not in err, err


def test_a_cuda_device_on_a_machine_without_one_is_refused_by_every_run_command(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cmd in (["generate", "--prompt", "a red circle"], ["evaluate"], ["train"], ["distill"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--device", "cuda"])
        assert e.value.code == 2
        assert "CUDA is not available here" in capsys.readouterr().err, cmd


def test_distill_refuses_bad_image_sizes_before_any_work(tmp_path, capsys):
    assert main(["distill", "--model", "mini-sd", "--image-sizes", "30", "--steps", "1", "--device", "cpu",
                 "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "--image-sizes" in err and "multiples of 16" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "ckpt.pt").exists()


@pytest.mark.parametrize("sizes, says", [(["0"], "sizes must be positive"), (["4"], "smaller than one token"),
                                         (["512x256"], "square frames")])
def test_bench_blocks_refuses_bad_sizes(sizes, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["bench-blocks", "--device", "cpu", "--models", "sd15-top", "--out", str(tmp_path), "--sizes", *sizes])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
