# The two commands a newcomer runs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# pytest-xdist workers: the slow tests mostly wait on their subprocesses (simulated PLCs,
# daemons, servers), so two workers on a 2-core machine about halve the wall time.
TEST_WORKERS ?= 2

.PHONY: venv system-deps test demo bench lint schemas i18n clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[edge,cloud,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The brokers, databases and browser the tests start: installed before pytest, never by a test.
system-deps:
	./.ci/system-deps

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25 tests

demo: $(STAMP)
	$(BIN)/python -m edge.demo

bench: $(STAMP)
	$(BIN)/python -m bench

# ruff, mypy --strict on every package, and the layer contracts (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

schemas: $(STAMP)
	$(BIN)/python -m edge.schema config/schema

# The web UI's messages: extract from cloud/web (templates and Python) and merge into each
# language's cloud/web/locale/*/LC_MESSAGES/messages.po; then translate the new zh_CN
# entries (docs/GLOSSARY.md). The .po files are compiled when the cloud starts.
i18n: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ --no-location --sort-output --omit-header \
		-o cloud/web/locale/messages.pot cloud/web
	$(BIN)/pybabel update -i cloud/web/locale/messages.pot -d cloud/web/locale -D messages \
		--no-fuzzy-matching --ignore-obsolete -w 100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
