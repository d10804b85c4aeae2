# Quick start:  make demo   (install if needed, convert a seeded demo r50 and verify every layer)
#               make test   (install if needed, lint, then every test including pytest parity_tests)
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
TORCH  ?= torch==2.13.0
PADDLE ?= paddlepaddle==3.3.1
STAMP  := .stamp-install

.PHONY: install demo test lint fuzz parity parity-large bench mxnet-check clean

# paddle2onnx 2.1.0 declares onnx <= 1.17.0 (and polygraphy, onnxoptimizer, which the export never uses) but
# runs with the newer onnx: installed without its dependencies.
# insightface 2.1 (the judge of the ONNX exports in the tests) declares opencv-python, which clashes with
# opencv-python-headless (both are cv2): it is installed without its dependencies, plus the two it imports
$(STAMP): pyproject.toml Makefile
	$(PIP) install --quiet "$(TORCH)" "$(PADDLE)"
	$(PIP) install --quiet -e ".[dev,onnx,bench,ijb]"
	$(PIP) install --quiet --no-deps "paddle2onnx==2.1.0" "insightface==2.1"
	$(PIP) install --quiet scikit-image requests
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) converters/torch2paddle.py --arch r50
	$(PYTHON) converters/paddle2torch.py --src weights/demo/r50-DEMO-random.pdparams --out weights/demo/r50-DEMO-random.roundtrip.pth --check-against weights/demo/r50-DEMO-random.pth

lint: $(STAMP)
	$(PYTHON) -m ruff check .

# two pytest-xdist workers share the cores: conftest.py gives each its share of the threads and exports it as
# ARCFACE_THREADS, the default of every command a test runs. Measured on 2 cores in a fresh clone: pytest
# 6 min 22 s with AVX-512 (7 min 43 s on an AVX2-only CPU; 15 min 32 s before the commands stopped taking
# every core each, oversubscribing them)
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS)

# every fuzz target in tests/fuzz for FUZZ_SECONDS each (default 60), with fresh random examples
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) -m pytest -q tests/fuzz

parity: $(STAMP)
	$(PYTHON) -m pytest -q parity_tests

# the architectures above 200 M weights (r2060, vit_l_dp005_mask_005, vit_h) through both converters with
# per-layer parity at batch 2 and a bit-identical round trip, and the ONNX round trips of the sizes above
# 25 M weights, the forward parity of r100, r200, vit_s and vit_b, a converted r50 on every evaluation backend and
# the model-pack-named r50 ONNX import;
# skipped by `make test` and `make parity`
parity-large: $(STAMP)
	ARCFACE_PARITY_LARGE=1 $(PYTHON) -m pytest -q -s parity_tests/test_large.py parity_tests/test_onnx_roundtrip.py \
		parity_tests/test_forward_parity.py eval/tests/test_backends.py \
		parity_tests/test_onnx2paddle_cli.py

bench: $(STAMP)
	$(PYTHON) bench/convert.py
	$(PYTHON) bench/parity_table.py
	$(PYTHON) bench/data.py
	$(PYTHON) bench/partial_fc.py --sparse --steps 2 --out bench/results/partial_fc.png
	$(PYTHON) bench/eval.py
	$(PYTHON) bench/train.py
	$(PYTHON) bench/train_drift.py
	$(PYTHON) bench/safe_io.py
	$(PYTHON) bench/onnx_roundtrip.py --out bench/results/onnx_roundtrip.md
	$(PYTHON) bench/onnx_import.py
	$(PYTHON) bench/ijb.py --out bench/results/ijb.md
	$(PYTHON) bench/deploy.py --out bench/results/deploy.md --png bench/results/deploy.png

# RecordIO against real MXNet 1.9.1 in a separate virtualenv (skipped if MXNet cannot be installed)
mxnet-check: $(STAMP)
	PYTHON=$(PYTHON) bash .ci/mxnet_check.sh

clean:
	rm -rf $(STAMP) .pytest_cache .ruff_cache .hypothesis *.egg-info
