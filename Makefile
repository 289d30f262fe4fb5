# One entry for set-up, the demo, the tests and the benchmarks. Every target creates .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ROOT   ?= .annostyle

.PHONY: setup demo test test-slow lint bench lock clean figure

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel on disk first: a bare torch requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	# an empty Prefect database, migrated once: a new root's server starts from a copy (4 s, not 10)
	$(PY) -m flows.server --template
	touch $(STAMP)

setup: $(STAMP)

# every shared real set and the demo in one `annostyle run`, two datasets side by side: the two
# that train models first (LabelMe's seeds in worker processes, the demo's network), so that
# the label-only sets (ingest, crowd-kit consensus, label-based clusters) fill the cores beside
# them; the demo's pipeline is followed in its lane by the representation probe of its encoders
# (reusing its trained model), whose table the summary prints after the demo's
DATASETS := labelme demo bluebirds rte temp wsd dreem
demo: setup
	$(VENV)/bin/annostyle run $(DATASETS:%=configs/%.yaml) --jobs 2 --probe demo --root $(ROOT)
	$(VENV)/bin/annostyle server stop --root $(ROOT)

# the default run skips tests marked slow (each of those starts servers, trains or runs a whole
# pipeline); CI runs both
test: setup
	$(VENV)/bin/pytest -m "not slow"

test-slow: setup
	$(VENV)/bin/pytest -m slow

# ruff, the import contracts in pyproject.toml (flows -> tasks -> storage -> configs -> errors;
# Prefect only in flows, Zarr / fsspec / MLflow only in storage) and the type check
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/distances.py
	$(PY) benchmarks/reprocess.py
	$(PY) benchmarks/startup.py

# the README's figure, made by the demo pipeline
figure: docs/demo_distance_heatmap.png

docs/demo_distance_heatmap.png: | setup
	$(VENV)/bin/annostyle run configs/demo.yaml --root $(ROOT)
	cp $(ROOT)/analysis/demo/figures/distance_heatmap.png $@

lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf $(VENV) $(ROOT)
