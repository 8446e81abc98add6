# The two commands of the README: `make demo` (main job on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/synthfaces
RUN    ?= runs/baseline

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Synthesize SynthFaces (skipped when already there), train the baseline, audit it.
demo: setup
	test -f $(DATA)/list_attr_celeba.txt || $(BIN)/fairloop data synth --out $(DATA)
	$(BIN)/fairloop train --root $(DATA) --target Male --out $(RUN)/model
	$(BIN)/fairloop audit --root $(DATA) --target Male --protected Gray_Hair --model $(RUN)/model --out $(RUN)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) data runs fairloop-audit
