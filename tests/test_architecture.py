"""The package's shape: imports point one way (model knowledge → analysis → mixers → training → embedded
domain → book → CLI), no import cycles, a public ``__all__`` per subpackage, package data reachable."""
import ast
import pathlib
import re

import pytest

import aconvlib

PKG = pathlib.Path(aconvlib.__file__).parent
# layer of each subpackage (and of the top-level module utils.py); a module may import only from its own layer or
# lower ones
LAYERS = {"models": 0, "testing": 0, "utils": 0, "analysis": 1, "mixers": 2, "training": 3, "mini": 4, "book": 5,
          "cli": 6}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, mod: str | None = None) -> set[str]:
    """Every aconvlib module imported by ``path`` (the module ``mod``, by default its name in the package; top-level
    and inside functions), resolved to absolute names."""
    mod = mod or _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("aconvlib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("aconvlib"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.relative_to(PKG).parts[0] for p in PKG.rglob("__init__.py") if p.parent != PKG}
    assert subpackages <= set(LAYERS) | {"_data"}, subpackages - set(LAYERS)


def _check_downward(path: pathlib.Path, module: str) -> None:
    me = _layer(module)
    if me is None:
        return  # aconvlib/__init__.py, __main__.py
    upward = sorted(m for m in _imports(path, module) if (_layer(m) or 0) > me)
    assert not upward, f"{module} (layer {me}) imports from a higher layer: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downward(path):
    _check_downward(path, _module_name(path))


def test_no_import_cycles_between_modules():
    names = {_module_name(p): p for p in MODULES}
    graph = {m: {i for i in _imports(p) if i in names and i != m} for m, p in names.items()}
    # a package's __init__ importing its own submodules is the normal re-export, not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not (i.startswith(m + ".") and names[m].name == "__init__.py")}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_direction_check_can_fail(tmp_path):
    bad = tmp_path / "_tmp_upward_import.py"   # read as if it were aconvlib/models/_tmp_upward_import.py
    bad.write_text("from ..book import runner\n")
    with pytest.raises(AssertionError, match="higher layer"):
        _check_downward(bad, "aconvlib.models._tmp_upward_import")
    bad.write_text("from ..models import registry\n")   # a downward import passes
    _check_downward(bad, "aconvlib.mixers._tmp_downward_import")


@pytest.mark.parametrize("sub", sorted(set(LAYERS) - {"testing"}))
def test_subpackages_declare_a_public_api(sub):
    import importlib

    mod = importlib.import_module(f"aconvlib.{sub}")
    assert mod.__doc__ and len(mod.__doc__.strip()) > 40
    if sub != "cli":
        assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__)


# the package list and package data: tests/test_packaging.py


def test_nothing_reaches_into_the_checkout():
    offenders = [str(p.relative_to(PKG)) for p in MODULES if "parents[" in p.read_text() and p.name != "test"]
    assert not offenders, f"modules locating files relative to the source tree: {offenders}"


# --------------------------------------------------------------------------------------------------
# One way to do each small job: atomic writes live in aconvlib/utils.py only
# --------------------------------------------------------------------------------------------------

# Modules that still write files atomically by hand, to be moved onto aconvlib.utils.atomic_path/atomic_write by
# the engineer who owns them (issue 22); remove each entry when its module is migrated.
ATOMIC_WRITE_ALLOWED: set = set()   # every module writes through aconvlib.utils


def _own_atomic_writes(path: pathlib.Path) -> list[str]:
    """Hand-made atomic writes in ``path``: a function named ``atomic*``/``_atomic*``, a call of ``os.replace`` /
    ``os.rename``, or ``<path>.replace(target)`` (one argument: ``Path.replace``; ``str.replace`` takes two)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.lstrip("_").startswith("atomic"):
            found.append(f"line {node.lineno}: defines {node.name}()")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in ("replace", "rename"):
                found.append(f"line {node.lineno}: os.{f.attr}()")
            elif (f.attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords
                  and not isinstance(f.value, ast.Constant)):
                found.append(f"line {node.lineno}: .{f.attr}(<one path>)")
    return found


def test_atomic_writes_use_the_one_utility():
    offenders = {}
    for p in MODULES:
        rel = str(p.relative_to(PKG))
        if rel == "utils.py" or rel in ATOMIC_WRITE_ALLOWED:
            continue
        if found := _own_atomic_writes(p):
            offenders[rel] = found
    assert not offenders, f"write through aconvlib.utils.atomic_path/atomic_write instead: {offenders}"
    assert all((PKG / rel).exists() for rel in ATOMIC_WRITE_ALLOWED), "drop migrated or removed files from the list"


def test_the_atomic_write_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef _atomic_json(p, o):\n    t = p.with_suffix('.tmp')\n    os.replace(t, p)\n"
                   "def save(t, p):\n    t.replace(p)\n    return 'a'.replace('a', 'b')\n")
    found = _own_atomic_writes(bad)
    assert len(found) == 3 and "defines _atomic_json()" in found[0], found


# Dtype parsing and fingerprints: aconvlib.utils.parse_dtype / fingerprint / file_digest / files_fingerprint.
# hashlib stays where the hash is not a fingerprint of ours: a format's own hash (git blob ids of the hub
# fixtures), an RNG seed derived from a key, an image record's content hash and the latent cache's tensor hash
# (its keys must stay valid for existing caches).
HASHLIB_ALLOWED = {"testing/hub_fixtures.py": "git blob/commit ids and seeds of the published layouts",
                   "testing/_fixture_files.py": "seeds of the fixture weights (the hub fixtures' helpers)",
                   "training/data/sampler.py": "a per-sample RNG seed, not a fingerprint",
                   "training/data/sources.py": "an image's content hash (the record's identity)",
                   "training/latent_cache.py": "hash of model tensors (existing caches' keys)"}
_DTYPE_TABLE = re.compile(r"[\"'](fp16|bf16|float16|bfloat16|half)[\"']\s*:\s*torch\.")
_GETATTR_DTYPE = re.compile(r"getattr\(torch,\s*(dtype|str\()")


def _own_dtype_or_hash(path: pathlib.Path) -> list[str]:
    """A dtype table (``{"fp16": torch.float16 …}``), ``getattr(torch, dtype)`` or an ``import hashlib``."""
    text = path.read_text()
    found = [f"dtype table {m.group(0)!r}" for m in _DTYPE_TABLE.finditer(text)]
    found += [f"dtype lookup {m.group(0)!r}" for m in _GETATTR_DTYPE.finditer(text)]
    found += [f"line {n.lineno}: import hashlib" for n in ast.walk(ast.parse(text))
              if isinstance(n, ast.Import) and any(a.name == "hashlib" for a in n.names)]
    return found


def test_dtype_parsing_and_fingerprints_use_the_one_utility():
    offenders = {}
    for p in MODULES:
        rel = str(p.relative_to(PKG))
        if rel == "utils.py":
            continue
        found = _own_dtype_or_hash(p)
        if rel in HASHLIB_ALLOWED:
            found = [f for f in found if "hashlib" not in f]
        if found:
            offenders[rel] = found
    assert not offenders, f"use aconvlib.utils.parse_dtype / fingerprint / files_fingerprint instead: {offenders}"
    assert all((PKG / rel).exists() for rel in HASHLIB_ALLOWED), "drop removed files from HASHLIB_ALLOWED"


def test_the_dtype_and_hash_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import hashlib\nimport torch\n_D = {'fp16': torch.float16}\nx = getattr(torch, dtype)\n")
    found = _own_dtype_or_hash(bad)
    assert len(found) == 3, found


# --------------------------------------------------------------------------------------------------
# Models are named only where they are known: models/, testing/, book/, cli/, mini/ (never analysis, mixers, training)
# --------------------------------------------------------------------------------------------------

MODEL_NAME = re.compile(r"^(sd15|sdxl|pixart(-sigma(-\d+)?)?|flux(-\w+)?|mini-sd|mini-dit)$", re.IGNORECASE)
# Modules that still name models, owned by the engineer doing the benchmarks, Table drivers and distillers of
# issue 22 (they move out of these layers or take a ModelSpec); remove each entry when it is done.
MODEL_NAMES_ALLOWED: set = set()    # no module below the book names a model


def _model_name_literals(path: pathlib.Path) -> list[str]:
    """String constants of ``path`` that are model names (docstrings excluded; comments are not in the AST)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [f"line {n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and MODEL_NAME.match(n.value)]


def test_no_model_names_below_the_model_layer():
    offenders = {}
    for sub in ("analysis", "mixers", "training"):
        for p in sorted((PKG / sub).rglob("*.py")):
            rel = str(p.relative_to(PKG))
            if rel not in MODEL_NAMES_ALLOWED and (found := _model_name_literals(p)):
                offenders[rel] = found
    assert not offenders, f"take the model's facts from its ModelSpec/family instead of its name: {offenders}"


def test_the_model_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Works for sdxl."""\nX = {"sdxl": 4, "pixart-sigma-512": 2, "Mini-SD": 1, "sd1": 0}\n')
    assert [f.split(": ")[1] for f in _model_name_literals(bad)] == ["'sdxl'", "'pixart-sigma-512'", "'Mini-SD'"]


# --------------------------------------------------------------------------------------------------
# The top-level API: lazy, and no global state
# --------------------------------------------------------------------------------------------------

def test_import_aconvlib_is_light_and_changes_no_global_state():
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "before = list(warnings.filters)\n"
        "import aconvlib\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not heavy, heavy[:5]\n"
        "assert warnings.filters == before, 'import aconvlib changed the warnings filter'\n"
        "assert not [m for m in sys.modules if m.startswith('aconvlib.')], 'a subpackage was imported'\n"
        "for name in aconvlib._LAZY:\n"
        "    obj = getattr(aconvlib, name)\n"
        "    assert obj is getattr(sys.modules['aconvlib.' + aconvlib._LAZY[name]], name), name\n"
        "assert set(aconvlib._LAZY) <= set(dir(aconvlib)) and set(aconvlib.__all__) > set(aconvlib._LAZY)\n"
        "try:\n"
        "    aconvlib.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('unknown names must raise AttributeError')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_no_module_is_over_600_lines():
    """One concept per module (timm's rule of thumb): a module past ~600 lines is split by concern."""
    long = {str(p.relative_to(PKG)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these modules by concern: {long}"


# --------------------------------------------------------------------------------------------------
# No block of six or more lines written twice inside aconvlib/ (whitespace, blank and comment lines ignored;
# a window needs four lines that are not closing brackets, imports or decorators to count)
# --------------------------------------------------------------------------------------------------

_TRIVIAL_LINE = re.compile(r'^(\)|\]|\}|\),|\],|\},|"""|else:|try:|return|pass|import .*|from .* import .*|@.*)$')


def _repeated_blocks(paths, size: int = 6) -> list[str]:
    seen: dict[tuple, list[str]] = {}
    for p in paths:
        lines = [(n, t.strip()) for n, t in enumerate(p.read_text().splitlines(), 1)
                 if t.strip() and not t.strip().startswith("#")]
        for i in range(len(lines) - size + 1):
            window = tuple(t for _, t in lines[i:i + size])
            if sum(not _TRIVIAL_LINE.match(t) for t in window) >= 4:
                seen.setdefault(window, []).append(f"{p.name}:{lines[i][0]}")
    return [" ~ ".join(places) for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_written_twice():
    repeated = _repeated_blocks(MODULES)
    assert not repeated, f"the same six or more lines in two places (make it one function): {repeated}"


def test_the_repeated_block_check_can_fail(tmp_path):
    body = "def f(a):\n    x = a + 1\n    y = x * 2\n    z = y - 3\n    w = z / 4\n    v = w ** 2\n    return v\n"
    (tmp_path / "a.py").write_text(body)
    (tmp_path / "b.py").write_text(body.replace("def f", "def g"))
    found = _repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"])
    assert found == ["a.py:2 ~ b.py:2"], found
