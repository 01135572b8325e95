#!/usr/bin/env bash
# Non-editable install check (CI): build aconvlib's wheel, install it into a fresh venv and, from outside
# the checkout, list the models and generate with the embedded mini-sd offline. The wheel must carry the
# package data (configs, paper tables, embedded weights); nothing may be read from the checkout.
# Dependencies are borrowed read-only from the project's .venv (a .pth line) so that no large wheel is
# downloaded; aconvlib itself comes only from the wheel.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip wheel -q --no-deps --no-build-isolation "$root" -w "$tmp/wheel" 2>/dev/null
base=$("$py" -c 'import sys; print(sys._base_executable)')
"$base" -m venv "$tmp/venv"
deps=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/zz_project_deps.pth"
"$tmp/venv/bin/python" -m pip install -q --no-deps --no-index "$tmp"/wheel/aconvlib-*.whl
cd "$tmp"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$tmp/venv/bin/python" - "$root" <<'PY'
import pathlib, sys
import aconvlib
from aconvlib.models import data_dir
root = pathlib.Path(sys.argv[1]).resolve()
for p in (pathlib.Path(aconvlib.__file__).resolve(), data_dir().resolve()):
    assert root not in p.parents, f"{p} is inside the checkout {root}: the install is not self-contained"
print(f"aconvlib {aconvlib.__version__} from {pathlib.Path(aconvlib.__file__).parent}; data in {data_dir()}")
PY
"$tmp/venv/bin/aconv" models
"$tmp/venv/bin/aconv" generate --model mini-sd --prompt "a large red circle at the center" --steps 4 --out "$tmp/x.png"
test -s "$tmp/x.png"
echo "non-editable install: OK"
