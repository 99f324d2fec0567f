# labkit: the lab's commands. Every target uses the virtual environment in .venv.
# MODE=embedded (default) runs everything as local processes; MODE=compose uses Docker Compose.
VENV   ?= .venv
PYTHON ?= python3
MODE   ?= embedded
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
CHROMIUM ?= /usr/bin/chromium
KCAT     ?= /usr/bin/kcat
# The default broker is Apache Kafka where Java 17+ runs (labkit/ops/brokers.py); its jars come through Maven.
JAVA     := $(shell command -v java 2>/dev/null || echo /usr/bin/java)
MVN      := $(shell command -v mvn 2>/dev/null || echo /usr/bin/mvn)

.PHONY: init up down restart status logs lab lint test bench clean kafka

# Set up (or reuse) the environment and start the stack (Apache Kafka where Java 17+ runs, else noida-db).
init: $(STAMP)
	$(BIN)/labkit up --mode $(MODE)

# Apache Kafka's jars in the user's cache (Maven, from labkit/ops/kafka/pom.xml); Java and Maven from Debian if missing.
kafka: $(STAMP) $(JAVA) $(MVN)
	$(BIN)/python -m labkit.ops.kafka

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

up: init

down: $(STAMP)
	$(BIN)/labkit down

restart: $(STAMP)
	$(BIN)/labkit restart

status: $(STAMP)
	$(BIN)/labkit status

logs: $(STAMP)
	$(BIN)/labkit logs

# JupyterLab on the notebooks, with the stack running.
lab: init
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# ruff and mypy as configured in pyproject.toml (labkit/ and tests/); a few seconds, so they run before the suite.
lint: $(STAMP)
	$(BIN)/ruff check labkit tests
	$(BIN)/mypy

# The linters, then the whole suite on the default broker (Apache Kafka here), then the crash, resume and fault
# tests and notebooks 06-08 again on noida-db (tests/README.md, "Two brokers").
test: lint $(STAMP) $(CHROMIUM) $(KCAT) kafka
	$(BIN)/python -m pytest
	LABKIT_BROKER=noida $(BIN)/python -m pytest -m both_brokers

# The benchmark: the goals table (docs/performance.md) with its Kafka-only baseline, each phase on a fresh
# stack on free ports. Results (JSON, HTML and PNG plot) go to bench-results/.
# Other runs: make bench BENCH_ARGS="--rates 1000 --no-ramp" (see python -m labkit.bench --help).
BENCH_ARGS ?= --goals
bench: $(STAMP)
	$(BIN)/python -m labkit.bench $(BENCH_ARGS)

# The browser test drives Debian's Chromium (Playwright cannot download its own browser here).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The browser test needs Chromium at $(CHROMIUM): sudo apt-get install chromium" >&2; exit 1; \
	fi

# Apache Kafka needs Java 17+ and, for its jars, Maven (Debian 12: openjdk-17-jre-headless, maven).
$(JAVA) $(MVN):
	@if [ "$$(id -u)" = 0 ]; then \
		echo "installing Java 17 and Maven for the Apache Kafka broker"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null; \
	else \
		echo "Apache Kafka needs Java 17+ and Maven: sudo apt-get install openjdk-17-jre-headless maven" >&2; exit 1; \
	fi

# The broker conformance test drives Debian's kcat (librdkafka 2.0.2) against each broker.
$(KCAT):
	@if [ "$$(id -u)" = 0 ]; then \
		echo "installing kcat for the broker conformance test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; \
	else \
		echo "The broker conformance test needs kcat at $(KCAT): sudo apt-get install kcat" >&2; exit 1; \
	fi

clean: down
	rm -rf .labkit
