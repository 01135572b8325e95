"""Chapter 7's real-model part (aconvlib.book.real_adapters) on the tiny hub fixtures: the student is evaluated
where an adapter exists, and a model without one is named plainly with its teacher's samples shown."""
import numpy as np
import pytest

from aconvlib.book.real_adapters import STUDENT, TEACHER, evaluate_real_adapters, resolve_adapter


@pytest.fixture(scope="module")
def sd15_adapter(hub_root, tmp_path_factory):
    import torch

    from aconvlib.mixers.convert import save_deltaconv, to_deltaconv
    from aconvlib.models import load_pipeline
    from aconvlib.testing.hub_fixtures import offline_hub

    out = tmp_path_factory.mktemp("adapters") / "sd15-deltaconv"
    with offline_hub(hub_root):
        torch.manual_seed(0)
        save_deltaconv(to_deltaconv(load_pipeline("sd15")), str(out))
    return out


def test_student_where_an_adapter_exists_teacher_only_elsewhere(fixture_hub, sd15_adapter, tmp_path):
    # "none": no student (left out, a model gets the authors' released student when its file is cached: below)
    rep = evaluate_real_adapters(["sd15", "pixart-sigma-512"], {"sd15": str(sd15_adapter), "pixart-sigma-512": "none"},
                                 n_prompts=2, steps=2, height=64, width=64)
    assert set(rep.images["sd15"]) == {TEACHER, STUDENT} and set(rep.images["pixart-sigma-512"]) == {TEACHER}
    assert rep.images["sd15"][TEACHER].shape == rep.images["sd15"][STUDENT].shape == (2, 64, 64, 3)
    table = rep.table.set_index("model")
    assert table.loc["sd15", "adapter"] == str(sd15_adapter) and table.loc["pixart-sigma-512", "adapter"] == "none"
    # the adapter really changes the denoiser: a conversion that did nothing would give the teacher's images
    student, teacher = rep.images["sd15"][STUDENT], rep.images["sd15"][TEACHER]
    assert not np.array_equal(student, teacher) and table.loc["sd15", "rmse_student_vs_teacher"] > 0
    # ... and only the student: the teacher's images are those of a run without any adapter, for both models
    plain = evaluate_real_adapters(["sd15", "pixart-sigma-512"], {"sd15": "none", "pixart-sigma-512": "none"},
                                   n_prompts=2, steps=2, height=64, width=64)
    assert set(plain.images["sd15"]) == {TEACHER}
    np.testing.assert_array_equal(plain.images["sd15"][TEACHER], teacher)
    np.testing.assert_array_equal(plain.images["pixart-sigma-512"][TEACHER], rep.images["pixart-sigma-512"][TEACHER])
    assert "ΔConv student" in rep.lines[0] and "sd15" in rep.lines[0]
    assert rep.lines[1].startswith("pixart-sigma-512: no distilled ΔConv student available")
    fig = rep.plot("pixart-sigma-512")
    assert "no distilled" in fig._suptitle.get_text()


def test_nothing_selected_and_bad_mappings(fixture_hub, tmp_path):
    assert "real_models is empty" in evaluate_real_adapters([], {}).lines[0]
    with pytest.raises(ValueError, match="not in real_models"):
        evaluate_real_adapters(["sd15"], {"sdxl": "x"})
    assert resolve_adapter(None) == (None, "no adapter given")
    assert resolve_adapter(str(tmp_path / "nope"))[0] is None
    loc, why = resolve_adapter("someone/sd15-deltaconv")   # a hub id that is not cached, offline
    assert loc is None and "someone/sd15-deltaconv" in why


def test_the_authors_released_student_by_default_with_its_own_teacher(fixture_hub):
    """No entry: the authors' mjv5 student (cached in the fixture hub), run against ITS base: DreamShaper for SD1.5."""
    rep = evaluate_real_adapters(["sd15"], {}, n_prompts=1, steps=2, height=64, width=64)
    row = rep.table.set_index("model").loc["sd15"]
    assert (row["teacher"], row["adapter"]) == ("Lykon/DreamShaper", "convfusion-sd15-mjv5")
    assert set(rep.images["sd15"]) == {TEACHER, STUDENT} and row["rmse_student_vs_teacher"] > 0
    assert "the authors' released convfusion-sd15-mjv5" in rep.lines[0] and "(Lykon/DreamShaper)" in rep.lines[0]


def test_released_student_missing_from_the_cache_is_named_with_its_download(empty_hub):
    from aconvlib.book.real_adapters import student_for

    s = student_for("sdxl")
    assert s.location is None and "huggingface-cli download 7eu7d7/ConvFusion ConvFusion-sdxl-mjv5.safetensors" in s.why
    assert student_for("mini-sd").location is None and student_for("sd15", "none").why == "real_adapters says none"
