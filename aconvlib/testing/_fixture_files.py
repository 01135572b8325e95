"""Writing tiny checkpoints as files (for :mod:`aconvlib.testing.hub_fixtures` and its per-family builders): config
JSON as the libraries write it, seeded random weights as safetensors (sharded with an index where the published repo
is), components under their folders, the repos' README and ``.gitattributes``."""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Callable

from ..models.registry import FIXTURE_MARK

#: Bumped whenever the bytes written for any repo change; repos built by another version are rebuilt.
BUILDER_VERSION = 1

# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------

def _json_bytes(obj: dict) -> bytes:
    """Config JSON as diffusers/transformers write it (indent 2, sorted keys, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"aconv-hub-fixture/{key}".encode()).digest()[:4], "little")


def _state_dict_bytes(model, dtype=None) -> tuple[bytes, dict]:
    """Serialize a module's state dict with safetensors (tied tensors stored once, like ``save_pretrained``)."""
    import safetensors.torch

    tensors: dict = {}
    seen: set = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # tied weight (e.g. T5 encoder.embed_tokens -> shared): saved once
            continue
        seen.add(key)
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    return safetensors.torch.save(tensors, metadata={"format": "pt"}), tensors


def _sharded(prefix: str, tensors: dict, n_shards: int) -> dict[str, bytes]:
    """Split tensors into ``{prefix}-0000i-of-0000n.safetensors`` + ``{prefix}.safetensors.index.json``."""
    import safetensors.torch

    names = sorted(tensors)
    per = -(-len(names) // n_shards)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(n_shards):
        part = names[i * per:(i + 1) * per]
        fname = f"{prefix}-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        files[fname] = safetensors.torch.save({k: tensors[k] for k in part}, metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    files[f"{prefix}.safetensors.index.json"] = (
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        + "\n").encode()
    return files


@contextlib.contextmanager
def _seeded(key: str):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(key))
        yield


def _diffusers_weights(cls_name: str, config: dict, seed_key: str, weights_name: str, variants: bool,
                       post_init: Callable | None = None) -> dict[str, bytes]:
    import diffusers
    import torch

    cls = getattr(diffusers, cls_name)
    with _seeded(seed_key):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        if post_init is not None:
            post_init(model)
    data, _ = _state_dict_bytes(model)
    files = {f"{weights_name}.safetensors": data}
    if variants:
        files[f"{weights_name}.fp16.safetensors"] = _state_dict_bytes(model, torch.float16)[0]
    return files


# ---------------------------------------------------------------------------------------------------------------
# Components -> files
# ---------------------------------------------------------------------------------------------------------------

def _prefixed(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{folder}/{k}": v for k, v in files.items()}


def _diffusers_component(folder: str, config: dict, seed_key: str, variants: bool,
                         post_init: Callable | None = None) -> dict[str, bytes]:
    files = {"config.json": _json_bytes(config)}
    files.update(_diffusers_weights(config["_class_name"], config, seed_key, "diffusion_pytorch_model", variants,
                                    post_init))
    return _prefixed(folder, files)


def _transformers_component(folder: str, config: dict, model_cls: str, seed_key: str, variants: bool,
                            shards: int = 1, post_init: Callable | None = None) -> dict[str, bytes]:
    import torch
    import transformers

    if model_cls == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker as cls
    else:
        cls = getattr(transformers, model_cls)
    cfg = cls.config_class.from_dict({k: v for k, v in config.items() if k not in ("torch_dtype", "_name_or_path",
                                                                                  "transformers_version")})
    with _seeded(seed_key):
        model = cls(cfg).eval()
        if post_init is not None:
            post_init(model)
    files = {"config.json": _json_bytes(config)}
    data, tensors = _state_dict_bytes(model)
    if shards > 1:
        files.update(_sharded("model", tensors, shards))
    else:
        files["model.safetensors"] = data
    if variants:
        files["model.fp16.safetensors"] = _state_dict_bytes(model, torch.float16)[0]
    return _prefixed(folder, files)




_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tflite", "*.tgz", "*.wasm", "*.xz",
    "*.zip", "*.zst", "*tfevents*"))
_LFS_SUFFIXES = (".bin", ".ckpt", ".model", ".msgpack", ".onnx", ".pb", ".pt", ".pth", ".safetensors")


def _readme(repo_id: str, license_: str, library: str = "diffusers") -> bytes:
    return (f"---\nlicense: {license_}\nlibrary_name: {library}\ntags:\n- text-to-image\n---\n\n"
            f"# {repo_id} {FIXTURE_MARK}\n\nTiny random-weight stand-in with the published file layout, "
            f"config keys and component classes of `{repo_id}`; only widths and depths are shrunk. Built offline by "
            f"`aconvlib.testing.hub_fixtures` (builder version {BUILDER_VERSION}). It generates noise, not images.\n"
            ).encode()

