# Garrison — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The modules setup.py compiles with mypyc, and the stamp of their last build.
HOT := $(shell sed -n 's|^    "\(garrison/.*\.py\)",$$|src/\1|p' setup.py)
COMPILED := $(VENV)/.compiled
export GARRISON_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
export GARRISON_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: demo test test-pure lint typecheck unit bench clean compile

# The install compiles the data plane's hot modules with mypyc (setup.py; GARRISON_NO_COMPILE=1
# skips it), into C extensions beside the .py files under src/.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) && touch -r $(STAMP) $(COMPILED)

# After editing a compiled module, the extensions are built again (until then the whole package runs
# as plain Python: garrison/_purepython.py). `garrison version` says which is running.
$(COMPILED): $(STAMP) setup.py $(HOT)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(COMPILED)

compile: $(COMPILED)

demo: $(STAMP)
	$(BIN)/garrison up -c examples/garrison.yaml --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# --dist loadscope: a module's tests run on one worker, so a module-scoped fixture (a provider, a gateway)
# starts once, not once per worker.
test: lint $(COMPILED)
	$(BIN)/pytest -n 2 --dist loadscope tests
	$(MAKE) --no-print-directory test-pure

# The hot modules' in-process tests again on the pure-Python path (about a minute; the process tests
# of these directories take over ten, so a real process runs pure only in tests/test_compiled.py).
test-pure: $(STAMP)
	GARRISON_PURE_PYTHON=1 $(BIN)/pytest -q -n 2 --dist loadscope -m "not process" \
		tests/gateway tests/proxy tests/uri tests/mesh tests/test_compiled.py

# The tests that start no process or listener and need no service (tests/helpers/unit_guard.py checks).
unit: $(STAMP)
	$(BIN)/pytest -q -m "not process" tests

bench: $(COMPILED)
	$(BIN)/python bench/gateway/run.py
	$(BIN)/python bench/identity/run.py
	$(BIN)/python bench/mesh/run.py
	$(BIN)/python bench/vault/run.py
	$(BIN)/python bench/audit/run.py

clean:
	rm -rf $(VENV) .garrison .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build
	find src -name '*.so' -delete
