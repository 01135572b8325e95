"""The package's shape: imports point one way (model knowledge → analysis → mixers → training → embedded
domain → book → CLI), no import cycles, a public ``__all__`` per subpackage, package data reachable."""
import ast
import pathlib

import pytest

import aconvlib

PKG = pathlib.Path(aconvlib.__file__).parent
# layer of each subpackage; a module may import only from its own layer or lower ones
LAYERS = {"models": 0, "testing": 0, "analysis": 1, "mixers": 2, "training": 3, "mini": 4, "book": 5, "cli": 6}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every aconvlib module imported by ``path`` (top-level and inside functions), resolved to absolute names."""
    mod = _module_name(path)
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


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downward(path):
    me = _layer(_module_name(path))
    if me is None:
        return  # aconvlib/__init__.py, __main__.py
    upward = sorted(m for m in _imports(path) if (_layer(m) or 0) > me)
    assert not upward, f"{_module_name(path)} (layer {me}) imports from a higher layer: {upward}"


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


def test_the_direction_check_can_fail(tmp_path, monkeypatch):
    bad = PKG / "models" / "_tmp_upward_import.py"
    bad.write_text("from ..book import runner\n")
    try:
        with pytest.raises(AssertionError, match="higher layer"):
            test_imports_point_downward(bad)
    finally:
        bad.unlink()


@pytest.mark.parametrize("sub", sorted(set(LAYERS) - {"testing"}))
def test_subpackages_declare_a_public_api(sub):
    import importlib

    mod = importlib.import_module(f"aconvlib.{sub}")
    assert mod.__doc__ and len(mod.__doc__.strip()) > 40
    if sub != "cli":
        assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__)


def test_setuptools_package_list_is_complete():
    import tomllib

    cfg = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {_module_name(p) for p in PKG.rglob("__init__.py")}
    assert set(cfg["packages"]) - {"aconvlib._data"} == on_disk
    assert cfg["package-dir"]["aconvlib._data"] == "data"


def test_package_data_is_found_through_the_package():
    from aconvlib.models import config_dir, get_spec, models_dir, paper_table

    assert (models_dir() / "mini-sd" / "model_index.json").exists()
    assert (config_dir() / "sd15" / "unet.json").exists() and get_spec("sdxl").config_path.exists()
    assert paper_table("thresholds")["highpass_mass"] == 0.8


def test_nothing_reaches_into_the_checkout():
    offenders = [str(p.relative_to(PKG)) for p in MODULES if "parents[" in p.read_text() and p.name != "test"]
    assert not offenders, f"modules locating files relative to the source tree: {offenders}"
