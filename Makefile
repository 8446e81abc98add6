# The two commands of the README: `make demo` (main job on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/synthfaces
RUN    ?= runs/demo

.PHONY: setup demo audit test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,local,ray]'
	touch $@

# The main job on the embedded defaults: synthesize SynthFaces into $(DATA) (once), train the
# baseline, and run the mitigation loop. Run again, it resumes (or just reprints) the same run.
demo: setup
	if [ -f $(RUN)/config.json ]; then $(BIN)/fairloop run --resume $(RUN); else $(BIN)/fairloop run --out $(RUN); fi

# An audit only: train a baseline and measure and explain its bias.
audit: setup
	test -f $(DATA)/list_attr_celeba.txt || $(BIN)/fairloop data synth --out $(DATA)
	$(BIN)/fairloop audit --root $(DATA) --target Male --protected Gray_Hair --out runs/audit

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) data runs fairloop-audit
