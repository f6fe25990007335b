# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,local-speech,bench]'
	touch $(STAMP)

install: $(STAMP)

## Set up and run the bot (needs BOT_TOKEN; see README). Without a BOT_TOKEN in the environment
## or in ./.env it runs the sandbox instead: the whole bot against built-in fakes, in the browser.
run: $(STAMP)
	@if [ -n "$$BOT_TOKEN" ] || grep -Eqs '^[[:space:]]*(export[[:space:]]+)?BOT_TOKEN=[^[:space:]]' .env; then \
		$(BIN)/aisha run; \
	else \
		$(BIN)/aisha sandbox; \
	fi

## Set up and run the tests.
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
