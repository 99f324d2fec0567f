# labkit: the lab's commands. Every target uses the virtual environment in .venv.
# MODE=embedded (default) runs everything as local processes; MODE=compose uses Docker Compose.
VENV   ?= .venv
PYTHON ?= python3
MODE   ?= embedded
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
CHROMIUM ?= /usr/bin/chromium
KCAT     ?= /usr/bin/kcat

.PHONY: init up down restart status logs lab test bench clean

# Set up (or reuse) the environment and start the stack.
init: $(STAMP)
	$(BIN)/labkit up --mode $(MODE)

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

test: $(STAMP) $(CHROMIUM) $(KCAT)
	$(BIN)/python -m pytest

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
