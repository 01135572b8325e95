"""aconvlib.utils: the one atomic write, dtype parser, environment record and fingerprint."""
import hashlib
import json

import pytest
import torch

from aconvlib.utils import atomic_path, atomic_save, atomic_write, atomic_write_json, environment, fingerprint, parse_dtype


def test_atomic_write_replaces_only_on_success(tmp_path):
    f = tmp_path / "a.json"
    atomic_write_json(f, {"x": 1})
    assert json.loads(f.read_text()) == {"x": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(f.read_text()) == {"x": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    atomic_write(f, "text")
    assert f.read_text() == "text"


def test_atomic_path_replaces_a_folder(tmp_path):
    d = tmp_path / "snap"
    d.mkdir()
    (d / "old").write_text("1")
    with atomic_path(d) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("2")
    assert [p.name for p in d.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


def test_atomic_save_is_torch_save(tmp_path):
    atomic_save({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt")["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_parse_dtype():
    assert parse_dtype("fp16") is parse_dtype("float16") is parse_dtype("torch.float16") is torch.float16
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float32) is torch.float32
    assert parse_dtype(None) is None and parse_dtype(None, default="fp32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        parse_dtype("int8")


def test_fingerprints_keep_the_values_existing_caches_were_keyed_by():
    obj = {"b": [1, 2], "a": "x"}
    assert fingerprint(obj, None) == hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()   # data index keys
    prompts = ["a cat", "a dog"]
    assert fingerprint(prompts, canonical=False) == hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def test_environment_names_versions_and_device():
    env = environment()
    assert {"aconvlib", "torch", "python", "platform", "device"} <= set(env) and env["device"].startswith(("cpu", "cuda"))


def test_fingerprint_default_encodes_what_json_cannot(tmp_path):
    from aconvlib.utils import fingerprint

    with pytest.raises(TypeError):
        fingerprint({"p": tmp_path})
    assert fingerprint({"p": tmp_path}, default=str) == fingerprint({"p": str(tmp_path)})


def test_file_fingerprints_follow_bytes_and_names(tmp_path):
    import hashlib

    from aconvlib.utils import file_digest, files_fingerprint

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"one"), b.write_bytes(b"two")
    assert file_digest(a) == hashlib.sha256(b"one").hexdigest()[:16]
    both = files_fingerprint([a, b], tmp_path)
    assert both.startswith("sha256:") and len(both) == 7 + 16
    b.write_bytes(b"TWO")
    assert files_fingerprint([a, b], tmp_path) != both          # bytes count
    b.write_bytes(b"two")
    b.rename(tmp_path / "c.bin")
    assert files_fingerprint([a, tmp_path / "c.bin"], tmp_path) != both   # so do names
