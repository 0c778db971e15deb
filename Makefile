# speechlab: `make demo` (install + train Gram-CTC on the embedded corpus, greedy vs beam + KenLM word LM)
#            `make test` (install + run the test suite)
PY ?= python3
PIP = $(PY) -m pip
STAMP = .make-installed
DATA = data/tiny
DEMO_UTTERANCES ?= 1800

.PHONY: install demo test test-slow lint clean-demo

install: $(STAMP)

# torch first: the package builds its C++ extension against the installed torch
# (--no-build-isolation, so pip does not fetch a second copy of torch for the build).
$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard csrc/*)
	@bash scripts/system_deps.sh
	$(PIP) install -q "torch>=2.11" "torchaudio>=2.11" setuptools wheel
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	@touch $(STAMP)

demo: install
	@bash scripts/demo.sh $(DATA) $(DEMO_UTTERANCES)

test: install
	$(PY) -m ruff check speechlab tests bench recipes scripts
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint:
	$(PY) -m ruff check speechlab tests bench recipes scripts

clean-demo:
	rm -rf exp/tiny_gram_ctc_joint exp/lm/tiny_3gram.arpa
