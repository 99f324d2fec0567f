# labkit: the lab's commands. Every target uses the virtual environment in .venv.
# MODE=embedded (default) runs everything as local processes; MODE=compose uses Docker Compose.
VENV   ?= .venv
PYTHON ?= python3
MODE   ?= embedded
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed

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
	$(BIN)/jupyter lab --notebook-dir=notebooks

test: $(STAMP)
	$(BIN)/python -m pytest

clean: down
	rm -rf .labkit
