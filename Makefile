# The two entry points of this repository (see README):
#   make book   set up .venv if needed, execute every chapter (smoke profile, embedded models)
#               with papermill, build the offline HTML book into book/_build/html
#   make test   set up .venv if needed, then everything CI checks: the chapters + book build +
#               offline check, the regression comparison of the chapters' recorded numbers with
#               data/regression/smoke.json, `make ci-real`, the non-editable install check, then every
#               test (slow ones included)
#   make unit   the fast tests only (pytest's default deselects those marked slow)
#   make ci-real every chapter's `full` code on the CPU against tiny random-weight checkpoints in the published
#               hub layouts (built into $(HUB_FIXTURES)); executed chapters go to runs/ci-real/chapters, the
#               book's own chapters stay as the smoke run left them
# Both are idempotent: the environment is installed once (stamp file) and reused.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= smoke
HUB_FIXTURES ?= runs/hub-fixtures
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aconv-installed

.PHONY: setup book test unit ci-real clean-book

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[book,dev,kernels]"
	# natten compiles against the installed torch, so it needs torch first and no build isolation
	$(BIN)/python -m pip install -q --no-build-isolation natten
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	# headless Chromium + chromedriver for tests/test_browser.py (Debian/Ubuntu), only when chromedriver is missing
	@if ! command -v chromedriver >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get install -y chromium chromium-driver || \
		echo "warning: could not install chromium/chromium-driver; tests/test_browser.py will skip"; \
	fi
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/aconv book --profile $(PROFILE)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

test: $(STAMP)
	$(BIN)/aconv book --profile smoke --student
	$(BIN)/aconv regress --profile smoke --no-execute
	$(MAKE) ci-real
	bash scripts/check_install.sh
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

ci-real: $(STAMP)
	$(BIN)/python -m aconvlib.testing.hub_fixtures $(HUB_FIXTURES)
	HF_HOME=$(abspath $(HUB_FIXTURES)) HF_HUB_CACHE=$(abspath $(HUB_FIXTURES))/hub HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(BIN)/aconv book --profile ci-real --no-build --out-dir runs/ci-real/chapters

clean-book:
	rm -rf book/_build book/chapters
