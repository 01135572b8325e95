"""Tiny random-weight Hugging Face hub fixtures in the published repo layouts.

:func:`build_hub_cache` writes a local Hugging Face hub cache (``models--org--name/{blobs,refs,snapshots,trees}``,
the layout ``huggingface_hub`` itself writes) holding tiny, deterministic, random-weight stand-ins for:

* ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (StableDiffusionPipeline, with safety checker and fp16 variants),
* ``stabilityai/stable-diffusion-xl-base-1.0`` (StableDiffusionXLPipeline, fp16 variants),
* ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS`` (full PixArtSigmaPipeline),
* ``PixArt-alpha/PixArt-Sigma-XL-2-512-MS`` (``transformer/`` only, no ``model_index.json``, as published),
* ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`` (where the 512 model's usage takes VAE, T5, tokenizer and
  scheduler from),
* ``7eu7d7/ConvFusion`` (the authors' released ΔConv students, their file format, for the fixture denoisers) and
  ``Lykon/DreamShaper`` (the SD1.5 student's base): see :mod:`._fixture_official`.
* ``black-forest-labs/FLUX.1-dev``, ``black-forest-labs/FLUX.1-schnell`` (FluxPipeline, sharded transformer) and
  ``stabilityai/stable-diffusion-3.5-medium`` (StableDiffusion3Pipeline): :mod:`aconvlib.testing._joint_fixtures`.

Every repo has the published component classes, config keys and file names; only widths and depths shrink (each
shrunk value is marked ``# shrunk: <published value>`` in its config below). Cross-attention / caption widths
(768, 2048, 4096), head counts (SD U-Nets) or head dims (PixArt 72), block topology, sample sizes, interpolation
scales and prediction types are kept. With ``HF_HUB_CACHE`` pointing at the returned folder and
``HF_HUB_OFFLINE=1`` (or inside :func:`offline_hub`), plain ``DiffusionPipeline.from_pretrained("<hub id>")`` and
``<Model>.from_pretrained("<hub id>", subfolder=...)`` load them unchanged. A repo that is not built gives
``huggingface_hub``'s usual offline error (a ``LocalEntryNotFoundError`` in the exception chain).

Loading notes (true of the published repos too, with diffusers 0.42 / transformers 5 / huggingface_hub 2):

* SDXL: the published text encoder configs say ``torch_dtype: float16``; transformers 5 honours it when no dtype
  is passed while diffusers keeps the UNet in fp32, so a plain ``from_pretrained`` fails at generation with a
  dtype mismatch. Pass ``dtype=torch.float32`` (diffusers 0.42 deprecates ``torch_dtype`` for ``dtype``).
* PixArt-Sigma pipelines snap ``height``/``width`` to their 512/1024 px aspect-ratio bins unless
  ``use_resolution_binning=False``.
* ``AutoTokenizer.from_pretrained(id, subfolder="tokenizer")`` fails on these layouts (transformers 5 wants a
  ``config.json`` there); the concrete classes (``CLIPTokenizer``, ``T5Tokenizer``) load, as diffusers does.
* The T5 tokenizer is converted from ``spiece.model`` at load time: it needs ``sentencepiece`` and ``protobuf``.
* These models are tiny: on a busy machine torch's intra-op threads slow them ~40x; use
  ``torch.set_num_threads(1)`` in tests (the builder does so while it builds).

Command line (prints the cache folder and sizes)::

    python -m aconvlib.testing.hub_fixtures ROOT [--no-variants] [--repo HUB_ID ...]

This module imports nothing from the rest of aconvlib; torch, diffusers, transformers, safetensors and
sentencepiece are imported lazily by the builders.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..utils import atomic_path
from ._fixture_configs import (_clip_bigg_config, _clip_l_config, _dpm_config, _euler_config, _feature_extractor_config,
                               _pixart_transformer_config, _pndm_config, _safety_checker_config, _sd15_unet_config,
                               _sdxl_unet_config, _t5_config, _vae_config)
from ._fixture_official import CONVFUSION, DREAMSHAPER, convfusion_files
from ._fixture_files import (_GITATTRIBUTES, _LFS_SUFFIXES, BUILDER_VERSION, _diffusers_component, _seeded,  # noqa: F401
                             _json_bytes, _prefixed, _readme, _transformers_component)
from ._fixture_tokenizers import _clip_tokenizer_files, _t5_tokenizer_files
from ._joint_fixtures import BUILDERS as _JOINT_BUILDERS
from ._joint_fixtures import JOINT_REPOS

__all__ = ["FIXTURE_REPOS", "BUILDER_VERSION", "build_hub_cache", "offline_hub", "hub_cache_dir"]


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
PIXART_1024 = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
PIXART_512 = "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"
PIXART_BASE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"

#: The hub ids :func:`build_hub_cache` builds (all of them by default).
FIXTURE_REPOS: tuple[str, ...] = (SD15, SDXL, PIXART_1024, PIXART_512, PIXART_BASE, DREAMSHAPER, CONVFUSION,
                                  *JOINT_REPOS)

_MARKER_DIR = ".aconv-hub-fixtures"  # under root, beside hub/: one JSON per built repo


def _safety_checker_init(model) -> None:
    """Random concept embeddings with thresholds of 1.0: a cosine similarity never exceeds 1, so nothing is ever
    flagged and images are never blacked out (random weights would otherwise flag at random)."""
    import torch

    with torch.no_grad():
        for p in (model.concept_embeds, model.special_care_embeds):
            p.copy_(torch.nn.functional.normalize(torch.randn_like(p), dim=-1))
        model.concept_embeds_weights.fill_(1.0)
        model.special_care_embeds_weights.fill_(1.0)



def _sd15_files(variants: bool, repo_id: str = SD15, unet_seed: str = "sd15-unet") -> dict[str, bytes]:
    files = {
        ".gitattributes": _GITATTRIBUTES.encode(),
        "README.md": _readme(repo_id, "creativeml-openrail-m"),
        "model_index.json": _json_bytes({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.6.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
        "feature_extractor/preprocessor_config.json": _json_bytes(_feature_extractor_config()),
        "scheduler/scheduler_config.json": _json_bytes(_pndm_config()),
    }
    files.update(_prefixed("tokenizer", _clip_tokenizer_files("<|endoftext|>", sdxl=False)))
    files.update(_transformers_component("text_encoder", _clip_l_config(False), "CLIPTextModel", "clip-l", variants))
    files.update(_transformers_component("safety_checker", _safety_checker_config(), "StableDiffusionSafetyChecker",
                                         "sd-safety-checker", variants, post_init=_safety_checker_init))
    files.update(_diffusers_component("unet", _sd15_unet_config(), unet_seed, variants))
    files.update(_diffusers_component("vae", _vae_config(False), "sd-vae", variants))
    return files


def _sdxl_files(variants: bool) -> dict[str, bytes]:
    files = {
        ".gitattributes": _GITATTRIBUTES.encode(),
        "README.md": _readme(SDXL, "openrail++"),
        "model_index.json": _json_bytes({
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": "0.19.0.dev0",
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
        "scheduler/scheduler_config.json": _json_bytes(_euler_config()),
    }
    files.update(_prefixed("tokenizer", _clip_tokenizer_files("<|endoftext|>", sdxl=True)))
    files.update(_prefixed("tokenizer_2", _clip_tokenizer_files("!", sdxl=True)))
    # Same seed as SD1.5's text encoder: both repos ship the same openai CLIP ViT-L/14 text tower.
    files.update(_transformers_component("text_encoder", _clip_l_config(True), "CLIPTextModel", "clip-l", variants))
    files.update(_transformers_component("text_encoder_2", _clip_bigg_config(), "CLIPTextModelWithProjection",
                                         "clip-bigg", variants))
    files.update(_diffusers_component("unet", _sdxl_unet_config(), "sdxl-unet", variants))
    files.update(_diffusers_component("vae", _vae_config(True), "sdxl-vae", variants))
    return files


def _pixart_pipeline_files(repo_id: str) -> dict[str, bytes]:
    files = {
        ".gitattributes": _GITATTRIBUTES.encode(),
        "README.md": _readme(repo_id, "openrail++"),
        "model_index.json": _json_bytes({
            "_class_name": "PixArtSigmaPipeline",
            "_diffusers_version": "0.28.0.dev0",
            "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
            "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "PixArtTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
        "scheduler/scheduler_config.json": _json_bytes(_dpm_config()),
    }
    files.update(_prefixed("tokenizer", _t5_tokenizer_files()))
    # The T5 text encoder and the SDXL VAE are the same checkpoints in every PixArt-Sigma repo (and the VAE is
    # SDXL's): same seeds, same bytes. The published T5 encoder is sharded in 4 safetensors files.
    files.update(_transformers_component("text_encoder", _t5_config(), "T5EncoderModel", "t5-v1_1-xxl", False,
                                         shards=4))
    files.update(_diffusers_component("vae", _vae_config(True), "sdxl-vae", False))
    files.update(_diffusers_component("transformer", _pixart_transformer_config(1024), "pixart-sigma-1024", False))
    return files


def _pixart_512_files() -> dict[str, bytes]:
    files = {".gitattributes": _GITATTRIBUTES.encode(), "README.md": _readme(PIXART_512, "openrail++")}
    files.update(_diffusers_component("transformer", _pixart_transformer_config(512), "pixart-sigma-512", False))
    return files


_BUILDERS: dict[str, Callable[[bool], dict[str, bytes]]] = {
    SD15: _sd15_files,
    SDXL: _sdxl_files,
    PIXART_1024: lambda variants: _pixart_pipeline_files(PIXART_1024),
    PIXART_512: lambda variants: _pixart_512_files(),
    PIXART_BASE: lambda variants: _pixart_pipeline_files(PIXART_BASE),
    DREAMSHAPER: lambda variants: _sd15_files(False, DREAMSHAPER, "dreamshaper-unet"),
    CONVFUSION: lambda variants: convfusion_files(_GITATTRIBUTES.encode(), _seeded),
    **_JOINT_BUILDERS,   # FLUX.1-dev, FLUX.1-schnell, SD3.5-medium (aconvlib.testing._joint_fixtures)
}
_HAS_VARIANTS = {SD15, SDXL}  # the published PixArt-Sigma repos ship no fp16 variant files


# ---------------------------------------------------------------------------------------------------------------
# Hub cache writer
# ---------------------------------------------------------------------------------------------------------------

def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _write_repo(hub: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Write one repo in huggingface_hub's cache layout; returns its (content-derived) commit hash.

    blobs/<etag> (sha256 for LFS files, git blob sha1 otherwise), snapshots/<commit>/<path> as relative symlinks to
    the blobs (plain copies where symlinks are unavailable), refs/main, and trees/<commit>.json: the tree listing
    huggingface_hub >= 1.x caches after an online snapshot_download and that diffusers reads offline.
    """
    entries: dict[str, dict] = {}
    etags: dict[str, str] = {}
    for path, data in sorted(files.items()):
        if path.endswith(_LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
            entries[path] = {"size": len(data), "blob_id": _git_blob_sha1(pointer.encode()),
                             "lfs_sha256": sha256, "lfs_size": len(data)}
            etags[path] = sha256
        else:
            entries[path] = {"size": len(data), "blob_id": _git_blob_sha1(data)}
            etags[path] = entries[path]["blob_id"]
    commit = hashlib.sha1(json.dumps({"repo": repo_id, "builder": BUILDER_VERSION, "files": entries},
                                     sort_keys=True).encode()).hexdigest()

    final = hub / _repo_folder(repo_id)
    tmp_name = Path(tempfile.mkdtemp(prefix=f".tmp-{_repo_folder(repo_id)}-", dir=hub)).name
    with atomic_path(final, tmp_name=tmp_name) as tmp:   # replaces an older snapshot folder in one rename
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the hub writes ordinary folders
        (tmp / "blobs").mkdir()
        (tmp / "refs").mkdir()
        (tmp / "trees").mkdir()
        (tmp / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
        (tmp / "trees" / f"{commit}.json").write_text(json.dumps(
            {"format_version": 1, "files": entries}, indent=1, sort_keys=True), encoding="utf-8")
        snap = tmp / "snapshots" / commit
        for path, data in sorted(files.items()):
            blob = tmp / "blobs" / etags[path]
            if not blob.exists():
                blob.write_bytes(data)
            target = snap / path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.symlink_to(os.path.relpath(blob, target.parent))
            except OSError:
                shutil.copyfile(blob, target)
    return commit


def hub_cache_dir(root: str | os.PathLike) -> Path:
    """The hub cache folder inside ``root`` (``root/hub``: what ``HF_HUB_CACHE`` must point at; ``HF_HOME=root``)."""
    return Path(root).expanduser().resolve() / "hub"


def _marker(root: Path, repo_id: str) -> Path:
    return root / _MARKER_DIR / f"{_repo_folder(repo_id)}.json"


def _is_built(root: Path, repo_id: str, variants: bool) -> bool:
    try:
        info = json.loads(_marker(root, repo_id).read_text())
    except (OSError, ValueError):
        return False
    snap = hub_cache_dir(root) / _repo_folder(repo_id) / "snapshots" / str(info.get("commit"))
    return (info.get("builder_version") == BUILDER_VERSION and info.get("variants") == variants
            and snap.is_dir())


def build_hub_cache(root: str | os.PathLike, repos: Iterable[str] | None = None, *, variants: bool = True) -> Path:
    """Build the fixture repos into a hub cache under ``root`` and return the cache folder (``root/hub``).

    ``repos``: hub ids from :data:`FIXTURE_REPOS` (default: all). ``variants``: also write the fp16 variant files
    the published SD1.5 and SDXL repos have. Idempotent: a repo already built by this :data:`BUILDER_VERSION` with
    the same ``variants`` is skipped; others are (re)built atomically, under a file lock so that concurrent
    builders (e.g. pytest-xdist workers) do not clash. Weights are seeded per component: rebuilding gives the same
    bytes.
    """
    from filelock import FileLock  # a dependency of huggingface_hub

    root = Path(root).expanduser().resolve()
    repos = list(FIXTURE_REPOS if repos is None else repos)
    unknown = [r for r in repos if r not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown fixture repo(s) {unknown}; known: {list(FIXTURE_REPOS)}")
    hub = hub_cache_dir(root)
    hub.mkdir(parents=True, exist_ok=True)
    (root / _MARKER_DIR).mkdir(exist_ok=True)
    todo = [r for r in repos if not _is_built(root, r, variants)]
    if not todo:
        return hub
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention (and results never depend on them)
    try:
        with FileLock(str(root / _MARKER_DIR / "build.lock")):
            _build(root, hub, todo, variants)
    finally:
        torch.set_num_threads(threads)
    return hub


def _build(root: Path, hub: Path, todo: list[str], variants: bool) -> None:
    for repo_id in todo:
        if _is_built(root, repo_id, variants):  # built by a concurrent builder meanwhile
            continue
        files = _BUILDERS[repo_id](variants and repo_id in _HAS_VARIANTS)
        commit = _write_repo(hub, repo_id, files)
        _marker(root, repo_id).write_text(json.dumps(
            {"repo_id": repo_id, "builder_version": BUILDER_VERSION, "variants": variants, "commit": commit,
             "files": len(files), "bytes": sum(map(len, files.values()))}, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Offline context
# ---------------------------------------------------------------------------------------------------------------

_ENV_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_MODULE_PREFIXES = ("huggingface_hub", "diffusers", "transformers")
# Module-level names that already-imported libraries bound at import time from the environment (huggingface_hub
# reads its env vars once, in huggingface_hub.constants; diffusers copies HF_HUB_OFFLINE / HF_HOME with
# ``from huggingface_hub.constants import ...``; older transformers/diffusers had the *_CACHE aliases).
_CACHE_NAMES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "default_cache_path", "TRANSFORMERS_CACHE",
                "PYTORCH_TRANSFORMERS_CACHE", "PYTORCH_PRETRAINED_BERT_CACHE", "DIFFUSERS_CACHE")
_HOME_NAMES = ("HF_HOME",)
_OFFLINE_NAMES = ("HF_HUB_OFFLINE", "_is_offline_mode")


def _hub_modules() -> list:
    return [m for name, m in list(sys.modules.items())
            if m is not None and name.split(".")[0] in _MODULE_PREFIXES]


@contextlib.contextmanager
def offline_hub(root: str | os.PathLike, repos: Iterable[str] | None = None, *,
                variants: bool = True) -> Iterator[Path]:
    """Build the fixtures under ``root`` if needed and make the process load them offline; yields the hub cache.

    Sets ``HF_HOME=root``, ``HF_HUB_CACHE=root/hub``, ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1``, and
    patches the values that huggingface_hub, diffusers and transformers, if already imported, read at call time
    (``huggingface_hub.constants.HF_HUB_CACHE`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` and the copies other modules
    made of them). Everything is restored on exit, including copies made by modules first imported inside the
    context. Not thread-safe (it changes process-wide state).
    """
    import huggingface_hub.constants as hf_constants

    hub = build_hub_cache(root, repos, variants=variants)
    home = str(hub.parent)
    old_env = {k: os.environ.get(k) for k in _ENV_VARS}
    old = {"cache": hf_constants.HF_HUB_CACHE, "home": hf_constants.HF_HOME, "offline": hf_constants.HF_HUB_OFFLINE}
    new = {"cache": str(hub), "home": home, "offline": True}
    groups = [(_CACHE_NAMES, "cache"), (_HOME_NAMES, "home"), (_OFFLINE_NAMES, "offline")]
    patched: list[tuple[object, str, object]] = []

    def retarget(frm: dict, to: dict, record: bool) -> None:
        for module in _hub_modules():
            for names, kind in groups:
                for name in names:
                    if name not in getattr(module, "__dict__", {}):
                        continue
                    value = module.__dict__[name]
                    if type(value) is type(frm[kind]) and value == frm[kind] and value != to[kind]:
                        if record:
                            patched.append((module, name, value))
                        setattr(module, name, to[kind])

    os.environ.update({"HF_HOME": home, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        retarget(old, new, record=True)
        yield hub
    finally:
        for module, name, value in patched:
            setattr(module, name, value)
        retarget(new, old, record=False)  # modules imported inside the context copied the patched values
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    """``python -m aconvlib.testing.hub_fixtures ROOT``: build the cache, print its path and the repo sizes."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m aconvlib.testing.hub_fixtures", description=main.__doc__)
    parser.add_argument("root", help="folder to build in (HF_HOME); the hub cache is ROOT/hub")
    parser.add_argument("--repo", action="append", choices=FIXTURE_REPOS, help="build only this repo (repeatable)")
    parser.add_argument("--no-variants", action="store_true", help="skip the fp16 variant files")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    hub = build_hub_cache(args.root, args.repo, variants=not args.no_variants)
    elapsed = time.perf_counter() - t0
    print(f"HF_HUB_CACHE={hub}")
    total = 0
    for repo_id in args.repo or FIXTURE_REPOS:
        size = _dir_size(hub / _repo_folder(repo_id) / "blobs")
        total += size
        print(f"  {repo_id:<50} {size / 2**20:7.2f} MiB")
    print(f"  {'total':<50} {total / 2**20:7.2f} MiB  (built or checked in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
