# dpmsched — every target sets up .venv first (CPU torch, the package with [dev]); re-runs skip the install.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dpmsched-installed
TORCH  ?= torch==2.13.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# two pytest workers on a 2-core machine, one torch thread each
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint test-py test-nb lab strip student book test-book bench clean sweep test-ui

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=64"
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,hub,mnist,dask]"
	@touch $@

## make demo: run the notebook series with CPU defaults into runs/ and print a summary
demo: $(STAMP)
	$(PY) -m dpmsched demo --out runs $(NOTEBOOKS)

## make test: lint, unit/property/notebook tests (ruff over the code, pytest over tests/, nbval over notebooks/)
test: lint test-py test-nb

lint: $(STAMP)
	$(VENV)/bin/ruff check dpmsched benchmarks tests

test-py: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -n $(PYTEST_WORKERS)

test-nb: $(STAMP)
	DPMSCHED_HEADLESS=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks

## make lab: open JupyterLab on the notebooks (as root — containers, CI machines — Jupyter refuses to start
## without --allow-root; it is added then, with a warning: prefer running it as an ordinary user)
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: $(STAMP)
	@$(if $(LAB_ROOT),echo "make lab: running as root so JupyterLab gets --allow-root; better run it as an ordinary user",true)
	$(VENV)/bin/jupyter lab $(LAB_ROOT) notebooks

## make strip: remove outputs from the stored notebooks, refreshing the NBVAL_CHECK_OUTPUT cells
strip: $(STAMP)
	$(PY) -m dpmsched strip --refresh $(NOTEBOOKS)

## make student [STUDENT_DIR=runs/student]: copies of the notebooks without the cells tagged "solution" (the worked
## solutions of the exercises), to hand out to a class; the notebooks in notebooks/ keep them (docs/teaching.md)
STUDENT_DIR ?= runs/student
student: $(STAMP)
	$(PY) -m dpmsched student --out $(STUDENT_DIR) $(NOTEBOOKS)

## make bench: every benchmarks/bench_*.py (each writes benchmarks/<name>.json + .md, ratios vs a baseline of the same run)
bench: $(STAMP)
	@set -e; for f in $(sort $(wildcard benchmarks/bench_*.py)); do echo "== $$f"; $(PY) $$f; done

## make sweep [GRID=sweeps/example.yaml] [WORKERS=2] [EXECUTOR=local|dask] [SCHEDULER=tcp://HOST:PORT]: papermill runs
## over a grid into runs/<nb>/, then the report (the report also when some runs failed: it lists them; the exit status
## is the sweep's).  EXECUTOR=dask: each run a task on a Dask LocalCluster on 127.0.0.1, or on SCHEDULER's cluster
GRID      ?= sweeps/example.yaml
WORKERS   ?= 2
EXECUTOR  ?= local
SCHEDULER ?=
sweep: $(STAMP)
	@rc=0; OMP_NUM_THREADS=1 $(PY) -m dpmsched sweep $(GRID) --workers $(WORKERS) --executor $(EXECUTOR) \
	  $(if $(SCHEDULER),--scheduler $(SCHEDULER),) --out runs || rc=$$?; \
	  if [ $$rc -le 1 ]; then $(PY) -m dpmsched report runs; fi; exit $$rc

## make test-ui: opt-in real-browser test (JupyterLab on 127.0.0.1 + Debian chromium via Playwright; not in make test)
## needs: apt-get install -y chromium; screenshots in runs/ui/
test-ui: $(STAMP)
	@$(PY) -c "import playwright" 2>/dev/null || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install --quiet -e ".[ui]"
	DPMSCHED_UI=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests/ui -q

## make book: the course as a static HTML site that works offline, in runs/book/html (open index.html): README,
## docs/teaching.md, docs/math.md and every notebook executed with its CPU defaults (Sphinx + MyST-NB, about 5 min;
## installs the [book] extra; docs/teaching.md says why this tool)
book: $(STAMP)
	@$(PY) -c "import myst_nb, furo, jupyter_server_mathjax" 2>/dev/null || $(PY) -m pip install --quiet -e ".[book]"
	OMP_NUM_THREADS=1 $(PY) docs/book/build.py --out runs/book

## make test-book: opt-in real-browser test of the built book (every page in Debian chromium via Playwright: math
## typeset, figures loaded, nothing fetched from outside 127.0.0.1); needs apt-get install -y chromium; screenshots
## in runs/ui/book/
test-book: book
	@$(PY) -c "import playwright" 2>/dev/null || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install --quiet -e ".[ui]"
	DPMSCHED_UI=1 $(PY) -m pytest tests/ui/test_book.py -q

clean:
	rm -rf runs .pytest_cache

## make models: retrain every shipped checkpoint in data/ from scratch (CPU, one thread each; ~35 min un-contended, see README "Models")
.PHONY: models
SHIPPED_MODELS ?= digits-classifier toy2d-edm digits-edm digits-ddpm mnist-classifier mnist-edm
models: $(STAMP)
	@set -e; for m in $(SHIPPED_MODELS); do \
	  echo "== training $$m"; OMP_NUM_THREADS=1 $(PY) -m dpmsched train --no-resume --config data/configs/$$m.yaml; done
