# Two commands do everything on a fresh machine: `make run` and `make test`.
# uv is bootstrapped into .uv/ (Python's own venv + pip), the project into .venv/ from uv.lock.
PYTHON ?= python3.11
UV := .uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
SMALL := --subscribers 400 --days 7 --files-per-source 3

.PHONY: run test serve lint java jvm kafka chromium postgres install assets clean help

help:
	@echo "make run    install what is missing, generate a small operator, run the pipeline"
	@echo "            (bronze, silver, identity, profiles), summarise, explain one recycled"
	@echo "            number and show its current owner's profile"
	@echo "make test   install what is missing and run the whole test suite"
	@echo "make serve  run ingestion, identity and profiles continuously, and the API on"
	@echo "            127.0.0.1:8000 (Ctrl-C stops both cleanly)"
	@echo "make lint   ruff and mypy"

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on the PATH (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $(STAMP)

install: $(STAMP) java jvm assets

# The data docs' scripts and stylesheets (pinned npm packages) into .vendor/npm: built docs never
# download anything. And the Compose schema the tests check compose.yaml with.
assets: $(STAMP)
	@$(VENV)/bin/python -m expectations.vendor
	@$(VENV)/bin/python scripts/fetch_compose_schema.py

java:
	@scripts/ensure-java.sh

# The pinned JVM artifacts (jvm/pom.xml: Delta, Spark's Kafka connector) into .jvm/jars, with Maven.
jvm: $(STAMP) java
	@scripts/fetch-jvm.sh

# A Kafka broker for the tests (jvm/kafka/pom.xml) into .jvm/kafka; tests start it on loopback.
kafka: java
	@scripts/fetch-jvm.sh kafka

chromium:
	@scripts/ensure-chromium.sh

postgres:
	@scripts/ensure-postgres.sh

run: install
	$(VENV)/bin/cdp generate $(SMALL)
	$(VENV)/bin/cdp run
	$(VENV)/bin/cdp identity explain --example
	$(VENV)/bin/cdp profiles show --example

serve: install
	@# Both long-running parts; Ctrl-C stops both (the stream finishes its micro-batch first).
	@# Each in its own session (setsid): Ctrl-C reaches this shell only, which forwards one
	@# SIGINT to each (Spark's JVM ignores SIGINT and stops with its driver; uvicorn drains;
	@# a second SIGINT would make uvicorn quit without writing the audit queue).
	@setsid $(VENV)/bin/cdp stream & s=$$!; setsid $(VENV)/bin/cdp serve & a=$$!; \
	trap 'trap "" INT TERM; kill -INT -$$s -$$a 2>/dev/null' INT TERM; wait $$s $$a; wait $$s $$a

# The checks first (import layers, ruff with complexity limits, mypy): a minute, not an hour.
test: install chromium postgres kafka lint
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check pipelines assets expectations api tests bench
	$(VENV)/bin/ruff format --check pipelines assets expectations api tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf data .pytest_cache
