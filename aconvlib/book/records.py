"""Regression records: every number a chapter states, with the tolerance it is checked to.

A chapter calls :func:`record` for each number its text claims and prints the value it returns, so
the text and the record come from one variable::

    print(f"3×3 share: {record('mini-dit/median_local_x', x, rtol=0.05, reason='4 prompts, CPU float32'):.1f}×")

``value`` is a scalar (int, float, bool, str, None, a numpy or torch scalar) or a small table (a dict, list,
numpy array, torch tensor, pandas Series or DataFrame), stored as JSON. Its tolerance is part of the
record: ``rtol = atol = 0`` (the default) means exact, the right check for FLOPs and parameter counts;
sampled quantities get a statistical tolerance and must say why in ``reason`` (one line). A value
``now`` matches its reference ``ref`` when ``|now − ref| ≤ atol + rtol·|ref|`` (numpy.isclose with the
reference second; NaN matches NaN); strings, bools and None always compare exactly; tables compare
element by element and must keep their keys and lengths.

**Where records go.** Into a JSON *sidecar* next to the executed notebook,
``book/chapters/<chapter>.records.json`` (format below), rewritten after every call, so a chapter that
fails half-way leaves the records it got to. The kernel finds the sidecar and the chapter's name and
profile in this order:

1. the environment variables ``ACONV_RECORDS`` (the sidecar path), ``ACONV_CHAPTER`` and
   ``ACONV_PROFILE``, set by :func:`aconvlib.book.runner.execute_chapter` (``aconv book``, ``aconv regress``);
2. otherwise papermill's ``PAPERMILL_OUTPUT_PATH`` parameter (``papermill --inject-output-path in.ipynb
   out.ipynb`` writes ``out.records.json``), the chapter name given to
   :func:`aconvlib.book.setup.setup_chapter` and the notebook's ``profile`` parameter;
3. otherwise (plain ``papermill``, Jupyter, a script) records stay in memory (:func:`current`) and
   nothing is written: ``record`` never fails for lack of a destination.

**Sidecar format** (``format: aconv-records/1``)::

    {"format": "aconv-records/1", "chapter": "03_asm_highpass", "profile": "smoke",
     "written": "2026-05-01T10:00:00+00:00", "status": "complete", "executed_s": 73.2,
     "environment": {"aconvlib": "0.1.0", "torch": "...", "diffusers": "...", "numpy": "...",
                     "python": "3.11.9", "platform": "...", "device": "cpu: <model>", "torch_threads": 1,
                     "deterministic": true},
     "models": {"mini-sd": "sha256:…", "sd15": "config sha256:… (architecture only, no weights)", ...},
     "records": {"mini-dit/median_local_x": {"value": 3.21, "rtol": 0.05, "atol": 0.0,
                                             "reason": "4 prompts, CPU float32"}, ...}}

``status`` and ``executed_s`` are added by the runner when the chapter finishes (``complete`` or
``failed: …``). ``models`` holds a fingerprint of every shipped weight folder (sha256 of its
safetensors files) and of every model named by a record (the part of the name before the first
``/``): hub models by their cached snapshot, or by their shipped config when only the architecture was
used. Comparison with stored references: :mod:`aconvlib.book.regression` (``aconv regress``).
"""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..utils import file_digest, files_fingerprint

FORMAT = "aconv-records/1"
ENV_PATH, ENV_CHAPTER, ENV_PROFILE = "ACONV_RECORDS", "ACONV_CHAPTER", "ACONV_PROFILE"
MAX_ELEMENTS = 2000          # "small tables": a record is meant to be read in a diff
SUFFIX = ".records.json"

__all__ = ["FORMAT", "Recorder", "current", "environment", "flatten", "format_tolerance", "load_sidecar",
           "matches", "model_fingerprints", "record", "record_verdict", "records_path_for", "set_chapter", "start", "to_jsonable",
           "WEIGHT_FREE_CLAIMS", "weights_label", "write_json"]


# ---------------------------------------------------------------------------------------------- values

def _key(k) -> str:
    if isinstance(k, tuple):
        return " / ".join(_key(x) for x in k)
    if isinstance(k, str):
        return k
    scalar = to_jsonable(k) if not isinstance(k, (list, dict)) else k
    if isinstance(scalar, float) and scalar.is_integer():
        scalar = int(scalar)                 # a float index (256.0) labels its row "256"
    return str(scalar)


def to_jsonable(value: Any, _where: str = "value") -> Any:
    """``value`` as plain JSON data: numbers, strings, bools, None, dicts with string keys, lists.

    numpy/torch scalars become Python numbers, arrays and tensors nested lists, a pandas Series a dict
    (index → value; tuple index labels joined with " / "), a DataFrame a dict of rows (row → column → value).

    Raises:
        TypeError: for anything else (complex numbers, arbitrary objects).
        ValueError: for duplicate keys after conversion to strings.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)       # numpy.str_ and other subclasses become plain str
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist(), _where)
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return _mapping({r: row for r, row in zip(value.index, value.to_dict("records"))}, _where)
        if isinstance(value, pd.Series):
            return _mapping(dict(zip(value.index, value.tolist())), _where)
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return to_jsonable(value.tolist(), _where)
    if isinstance(value, Mapping):
        return _mapping(value, _where)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{_where}: cannot record a {type(value).__name__} ({value!r:.60}); record numbers, strings, "
                    "or dicts/lists/arrays/Series/DataFrames of them")


def _mapping(m: Mapping, where: str) -> dict:
    out: dict = {}
    for k, v in m.items():
        key = _key(k)
        if key in out:
            raise ValueError(f"{where}: two keys become {key!r} as text; give the table unique labels")
        out[key] = to_jsonable(v, f"{where}[{key}]")
    return out


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaves of a JSON value keyed by their element path (``""`` for a scalar, ``"[a][0]"`` in a table).
    Empty dicts and lists are leaves of their own (``{}``, ``[]``)."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}[{k}]"))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def matches(now: Any, ref: Any, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """One leaf within tolerance: ``|now − ref| ≤ atol + rtol·|ref|`` for numbers (exact when both are 0,
    NaN matches NaN, ±inf only itself); strings, bools, None and empty containers compare exactly."""
    if _is_number(now) and _is_number(ref):
        if math.isnan(now) or math.isnan(ref):
            return math.isnan(now) and math.isnan(ref)
        if math.isinf(now) or math.isinf(ref) or (rtol == 0 and atol == 0):
            return now == ref
        return abs(now - ref) <= atol + rtol * abs(ref)
    return type(now) is type(ref) and now == ref


def format_tolerance(rtol: float, atol: float) -> str:
    """``exact``, ``rtol 0.05``, ``atol 0.02`` or ``rtol 0.05 + atol 0.01``."""
    parts = [f"{n} {v:g}" for n, v in (("rtol", rtol), ("atol", atol)) if v]
    return " + ".join(parts) or "exact"


# ------------------------------------------------------------------------------------------- context

def records_path_for(notebook: str | Path) -> Path:
    """The sidecar of an executed notebook: ``x/03_asm.ipynb`` → ``x/03_asm.records.json``."""
    p = Path(notebook)
    return p.with_name(p.stem + SUFFIX) if p.suffix == ".ipynb" else p.with_name(p.name + SUFFIX)


def _user_ns() -> dict:
    """The notebook's globals when running in IPython (papermill's injected parameters live there)."""
    ipy = sys.modules.get("IPython")
    if ipy is None:
        return {}
    try:
        shell = ipy.get_ipython()
    except Exception:  # noqa: BLE001 - no shell
        return {}
    return dict(getattr(shell, "user_ns", None) or {})


_CHAPTER_HINT: Optional[str] = None


def set_chapter(chapter: str) -> None:
    """Name the running chapter (called by :func:`aconvlib.book.setup.setup_chapter`); the runner's
    ``ACONV_CHAPTER`` still takes precedence."""
    global _CHAPTER_HINT
    _CHAPTER_HINT = str(chapter)
    if _CURRENT is not None and _CURRENT.chapter is None:
        _CURRENT.chapter = _CHAPTER_HINT


def _resolve_context(user_ns: Optional[dict] = None) -> tuple[Optional[Path], Optional[str], Optional[str]]:
    ns = _user_ns() if user_ns is None else user_ns
    path = os.environ.get(ENV_PATH) or None
    if path is None:
        out = ns.get("PAPERMILL_OUTPUT_PATH")
        if isinstance(out, str) and out and "://" not in out:
            path = records_path_for(out)
    chapter = os.environ.get(ENV_CHAPTER) or _CHAPTER_HINT
    if chapter is None and path is not None:
        chapter = Path(path).name[: -len(SUFFIX)] if Path(path).name.endswith(SUFFIX) else Path(path).stem
    profile = os.environ.get(ENV_PROFILE) or (ns.get("profile") if isinstance(ns.get("profile"), str) else None)
    return (Path(path) if path else None), chapter, profile


# ----------------------------------------------------------------------------------------- recording

class Recorder:
    """The records of one chapter run, written to ``path`` (None: kept in memory) after every call."""

    def __init__(self, chapter: Optional[str] = None, profile: Optional[str] = None,
                 path: Optional[str | Path] = None):
        self.chapter, self.profile = chapter, profile
        self.path = Path(path) if path else None
        self.records: dict[str, dict] = {}
        self.verdicts: dict[str, dict] = {}

    def verdict(self, v) -> str:
        """Record a :class:`~aconvlib.analysis.evidence.Verdict`: its word (``holds`` / ``fails`` /
        ``not testable here``) as the exact record ``verdict/<claim>/<model>`` (a flip is a regression), and the
        whole verdict (deciding numbers, n, baseline, what would test it) in the sidecar's ``verdicts``, which
        the verdict table reads. The deciding numbers are recorded by the chapter with their own tolerances.
        A verdict on a random-weight hub fixture names its model "<model> (fixture)"
        (:func:`weights_label`). Returns :meth:`Verdict.sentence`."""
        import dataclasses

        label = weights_label(v.model, v.claim)
        if label != v.model:
            v = dataclasses.replace(v, model=label)
        name = f"verdict/{v.claim}/{v.model}"
        d = v.as_record()
        d["chapter"] = d.get("chapter") or self.chapter or ""
        self.verdicts.pop(name, None)
        self.verdicts[name] = to_jsonable(d, name)
        self.record(name, v.verdict)
        return v.sentence()

    def record(self, name: str, value: Any, *, rtol: float = 0.0, atol: float = 0.0,
               reason: Optional[str] = None) -> Any:
        """Store ``value`` under ``name`` with its tolerance and return ``value`` unchanged.

        Raises:
            ValueError: bad name or tolerance, a non-zero tolerance without a one-line ``reason``, a
                tolerance on a string, a table larger than :data:`MAX_ELEMENTS`.
            TypeError: a value that is not numbers/strings or a table of them.
        """
        if not isinstance(name, str) or not name.strip() or "\n" in name or name != name.strip():
            raise ValueError(f"record name must be a non-empty single-line string without outer spaces, got {name!r}")
        tol = {}
        for k, v in (("rtol", rtol), ("atol", atol)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"record {name!r}: {k} must be a finite number ≥ 0, got {v!r}")
            tol[k] = float(v)
        reason = None if reason is None else str(reason).strip()
        if reason and "\n" in reason:
            raise ValueError(f"record {name!r}: reason must be one line")
        if (tol["rtol"] or tol["atol"]) and not reason:
            raise ValueError(f"record {name!r}: a tolerance ({format_tolerance(tol['rtol'], tol['atol'])}) needs a "
                             "reason: say in one line why the number is not exact")
        data = to_jsonable(value, name)
        leaves = flatten(data)
        if len(leaves) > MAX_ELEMENTS:
            raise ValueError(f"record {name!r} has {len(leaves)} elements; records are small tables "
                             f"(≤ {MAX_ELEMENTS}): record a summary instead")
        if (tol["rtol"] or tol["atol"]) and not any(_is_number(v) for v in leaves.values()):
            raise ValueError(f"record {name!r}: a tolerance applies to numbers; {data!r:.60} is compared exactly")
        entry = {"value": data, "rtol": tol["rtol"], "atol": tol["atol"]}
        if reason:
            entry["reason"] = reason
        self.records.pop(name, None)   # re-running a cell re-records at the end, in execution order
        self.records[name] = entry
        if self.path is not None:
            self.save()
        return value

    def document(self) -> dict:
        """The sidecar's content."""
        return {"format": FORMAT, "chapter": self.chapter, "profile": self.profile,
                "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "environment": environment(), "models": model_fingerprints(list(self.records)),
                "records": self.records, "verdicts": self.verdicts}

    def save(self, path: Optional[str | Path] = None) -> Path:
        path = Path(path or self.path)
        write_json(path, self.document())
        return path


_CURRENT: Optional[Recorder] = None


def start(chapter: Optional[str] = None, profile: Optional[str] = None, path: Optional[str | Path] = None,
          user_ns: Optional[dict] = None) -> Recorder:
    """Begin a fresh set of records; unset arguments come from the context (module docstring)."""
    global _CURRENT
    p, c, pr = _resolve_context(user_ns)
    _CURRENT = Recorder(chapter or c, profile or pr, path or p)
    return _CURRENT


def current() -> Recorder:
    """The records of this process (started from the context on first use)."""
    if _CURRENT is None:
        return start()
    return _CURRENT


#: claims whose test does not depend on trained weights (FLOPs from the configs, latency of the modules): a verdict
#: on a random-weight fixture is as good as one on the real checkpoint
WEIGHT_FREE_CLAIMS = frozenset({"Table 1", "Table 2"})


def weights_label(model: str, claim: str) -> str:
    """``model`` as a verdict names it: ``"sd15 (fixture)"`` when the weights it would load are a tiny random-weight
    hub fixture (:func:`aconvlib.models.weights_source`) and the claim depends on trained weights, else ``model``."""
    from ..models import weights_source

    if claim in WEIGHT_FREE_CLAIMS or model.endswith("(fixture)"):
        return model
    return f"{model} (fixture)" if weights_source(model) == "fixture" else model


def record_verdict(v) -> str:
    """Record a :class:`~aconvlib.analysis.evidence.Verdict` (see :meth:`Recorder.verdict`); returns its sentence."""
    return current().verdict(v)


def record(name: str, value: Any, *, rtol: float = 0.0, atol: float = 0.0, reason: Optional[str] = None) -> Any:
    """Record a number (or small table) the chapter states, with its tolerance; return ``value``.

    Exact by default (``rtol = atol = 0``: FLOPs, counts). A sampled quantity gets a tolerance and a
    one-line ``reason``; it then matches its reference when ``|now − ref| ≤ atol + rtol·|ref|``.
    Names are ``<model>/<quantity>`` where a model is involved (e.g. ``"mini-dit/median_local_x"``).
    See :class:`Recorder` for the checks.
    """
    return current().record(name, value, rtol=rtol, atol=atol, reason=reason)


# --------------------------------------------------------------------------------------- environment

def environment() -> dict:
    """Versions and device of this process (:func:`aconvlib.utils.environment`: aconvlib, torch, diffusers,
    numpy, python, platform, the CPU or the CUDA device this process used, torch's threads and deterministic mode)."""
    from ..utils import environment as _environment

    return _environment(("torch", "diffusers", "numpy"))


def _folder_fingerprint(folder: Path) -> Optional[str]:
    files = tuple(sorted(p for ext in ("*.safetensors", "*.bin", "*.pt") for p in folder.rglob(ext)
                         if p.name != "ckpt.pt"))
    if not files:
        return None
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(files, folder, stamp)


@functools.lru_cache(maxsize=None)
def _hash_files(files: tuple[Path, ...], root: Path, stamp: tuple) -> str:
    """:func:`aconvlib.utils.files_fingerprint`, cached per (files, sizes, mtimes) ``stamp``."""
    return files_fingerprint(files, root)


def _hub_fingerprint(spec) -> str:
    """A hub model: its cached snapshot (``hub:<id>@<commit>``), else its shipped config's hash."""
    try:
        from huggingface_hub import constants

        refs = Path(constants.HF_HUB_CACHE) / f"models--{spec.hub_id.replace('/', '--')}" / "refs" / "main"
        if refs.exists():
            return f"hub:{spec.hub_id}@{refs.read_text().strip()[:12]}"
    except Exception:  # noqa: BLE001
        pass
    cfg = spec.config_path
    digest = file_digest(cfg) if cfg.exists() else "missing"
    return f"config sha256:{digest} (architecture only, no weights)"


def model_fingerprints(record_names: list[str] = ()) -> dict[str, str]:
    """Fingerprints of every shipped weight folder (``data/models/*``) and of every registered model
    named by a record (``"<model>/..."``)."""
    from ..models import UnknownModelError, get_spec, models_dir

    out: dict[str, str] = {}
    root = models_dir()
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            fp = _folder_fingerprint(folder)
            if fp:
                out[folder.name] = fp
    for name in sorted({n.split("/", 1)[0] for n in record_names if "/" in n} - set(out)):
        try:
            spec = get_spec(name)
        except UnknownModelError:
            continue
        out[name] = _folder_fingerprint(spec.local_dir) if spec.embedded else _hub_fingerprint(spec)
    return out


# ----------------------------------------------------------------------------------------------- files

def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` atomically (a reader never sees half a file), indented, keys in insertion order."""
    from ..utils import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def load_sidecar(path: str | Path) -> dict:
    """Read a sidecar; ValueError if it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("records"), dict):
        raise ValueError(f"{path} is not a records file (format {FORMAT})")
    return doc
