# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs what the bot needs to run (with the local Whisper the sandbox
# transcribes voice with), `make test` and `make lint` add the tests, linters and bench extras.
RUNTIME_STAMP := $(VENV)/.runtime-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: run test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local-speech]'
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e '.[dev,local-speech,bench]'
	touch $@

install: $(DEV_STAMP)

## Set up and run the bot (needs BOT_TOKEN; see README). Without a BOT_TOKEN in the environment
## or in ./.env it runs the sandbox instead: the whole bot against built-in fakes, in the browser.
run: $(RUNTIME_STAMP)
	@if [ -n "$$BOT_TOKEN" ] || grep -Eqs '^[[:space:]]*(export[[:space:]]+)?BOT_TOKEN=[^[:space:]]' .env; then \
		$(BIN)/aisha run; \
	else \
		$(BIN)/aisha sandbox; \
	fi

## Set up and run the tests.
test: $(DEV_STAMP)
	$(BIN)/pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python .ci/check-shape

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
