"""Prompt sets from files: one loader for teacher-generated distillation data and the locality studies.

    prompts = load_prompts("prompts.txt")                 # one prompt per line
    prompts = load_prompts("t2i.jsonl", column="prompt")  # a field of JSON lines
    prompts = load_prompts("multi.csv", limit=1000)       # a CSV column (auto-detected)

Formats, chosen by the file's extension:

* ``.txt`` (any other extension too): one prompt per line; blank lines and lines starting with
  ``#`` are skipped.
* ``.jsonl`` / ``.ndjson``: one JSON value per line, a string or an object; for objects the field is
  ``column`` or, when not given, the first of :data:`PROMPT_FIELDS` present in the first object.
* ``.json``: a list of such values (or an object with one such list under ``"prompts"``).
* ``.csv`` / ``.tsv``: a header row; the column is ``column`` or the first of :data:`PROMPT_FIELDS`
  in the header, or the only column.

Surrounding whitespace is stripped. Every problem (missing file, bad JSON on line n, a missing field
or column, an empty or non-string prompt, no prompts at all) raises :class:`PromptError`, a
``ValueError`` whose one-line message names the file and the line. ``limit`` keeps the first
``limit`` prompts; ``dedupe`` drops repeats (first occurrence kept). :func:`prompts_fingerprint`
identifies a prompt list (it keys the teacher-generated data and the capture caches).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..utils import fingerprint as _fingerprint
from ..utils import iter_json_lines

__all__ = ["PROMPT_FIELDS", "PromptError", "load_prompts", "prompts_fingerprint", "shard_indices"]

#: Field/column names tried, in order, when ``column`` is not given.
PROMPT_FIELDS = ("prompt", "text", "caption", "Prompt", "TEXT", "Text", "Caption")


class PromptError(ValueError):
    """A prompt file cannot be read as asked; the message names the file (and line)."""


def _pick(where: str, path: Path, obj: Any, column: str | None) -> str:
    if isinstance(obj, str):
        if column is not None:
            raise PromptError(f"{path}, {where}: a plain string, but column={column!r} was asked for")
        return obj
    if not isinstance(obj, dict):
        raise PromptError(f"{path}, {where}: expected a string or an object, got {type(obj).__name__}")
    key = column or next((f for f in PROMPT_FIELDS if f in obj), None)
    if key is None or key not in obj:
        fields = ", ".join(map(str, obj)) or "none"
        want = repr(column) if column else " or ".join(map(repr, PROMPT_FIELDS[:3]))
        raise PromptError(f"{path}, {where}: no field {want} (fields: {fields}); pass column=...")
    value = obj[key]
    if not isinstance(value, str):
        raise PromptError(f"{path}, {where}: field {key!r} must be a string, got {value!r}")
    return value


def load_prompts(path: str | os.PathLike, column: str | None = None, *, limit: int | None = None,
                 dedupe: bool = False) -> list[str]:
    """The prompts of a text, JSONL/JSON or CSV/TSV file (see the module docstring)."""
    path = Path(path)
    if limit is not None and (int(limit) != limit or limit < 1):
        raise PromptError(f"limit must be a positive integer, not {limit!r}")
    if not path.exists():
        raise PromptError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise PromptError(f"prompt file {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(f"prompt file {path} is not valid UTF-8 ({e})") from None
    suffix = path.suffix.lower()
    rows: list[tuple[str, str]] = []  # (where, prompt)
    if suffix in (".jsonl", ".ndjson"):
        for n, obj in iter_json_lines(text, lambda n, e: PromptError(f"{path}, line {n}: not valid JSON ({e})")):
            rows.append((f"line {n}", _pick(f"line {n}", path, obj, column)))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise PromptError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("prompts"), list):
            data = data["prompts"]
        if not isinstance(data, list):
            raise PromptError(f"{path}: expected a JSON list of prompts (or {{\"prompts\": [...]}}), "
                              f"got {type(data).__name__}")
        rows = [(f"item {i}", _pick(f"item {i}", path, obj, column)) for i, obj in enumerate(data)]
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        cols = reader.fieldnames or []
        if not cols:
            raise PromptError(f"{path}: no header row")
        key = column or next((f for f in PROMPT_FIELDS if f in cols), cols[0] if len(cols) == 1 else None)
        if key is None or key not in cols:
            want = repr(column) if column else " or ".join(map(repr, PROMPT_FIELDS[:3]))
            raise PromptError(f"{path}: no column {want} in its header (columns: {', '.join(cols)}); pass column=...")
        for row in reader:
            value = row.get(key)
            if value is None:
                raise PromptError(f"{path}, line {reader.line_num}: no value in column {key!r}")
            rows.append((f"line {reader.line_num}", value))
    else:
        if column is not None:
            raise PromptError(f"{path}: column={column!r} applies to .jsonl, .json, .csv and .tsv files, "
                              "not plain text (one prompt per line)")
        rows = [(f"line {n}", line) for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    out: list[str] = []
    seen: set[str] = set()
    for where, p in rows:
        p = p.strip()
        if not p:
            raise PromptError(f"{path}, {where}: empty prompt")
        if dedupe and p in seen:
            continue
        seen.add(p)
        out.append(p)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise PromptError(f"prompt file {path} holds no prompts")
    return out


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """A short hex digest of a prompt list (order matters)."""
    return _fingerprint(list(prompts), canonical=False)


def shard_indices(n: int, num_shards: int, shard: int, chunk: int = 1) -> list[int]:
    """The items ``0..n-1`` of shard ``shard`` of ``num_shards``, dealt round-robin in chunks of ``chunk``
    (chunk ``k`` = items ``k·chunk … k·chunk+chunk−1`` goes to shard ``k % num_shards``)."""
    if num_shards < 1 or not 0 <= shard < num_shards or chunk < 1:
        raise ValueError(f"bad sharding: shard {shard} of {num_shards}, chunk {chunk}")
    return [i for k in range(shard, -(-n // chunk), num_shards) for i in range(k * chunk, min(n, (k + 1) * chunk))]
