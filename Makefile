# Two environments, because onnxruntime's builds overwrite each other:
#   .venv        newest onnx + onnxruntime (CPU), where everything but distillation runs
#   .venv-train  onnxruntime-training-cpu 1.19.2 (its last release): Python <= 3.11, onnx < 1.18,
#                and torch for `onnxruntime.training` (the CPU build, pinned: plain `torch` pulls CUDA)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
TRAIN_VENV := .venv-train
DEMO_OUT ?= $(or $(TMPDIR),/tmp)/onnxslim-demo.onnx
DEMO_INT8 ?= $(or $(TMPDIR),/tmp)/onnxslim-demo-digits.int8.onnx

.PHONY: demo test test-main test-train lint fixtures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[cpu,dev]'
	touch $@

$(TRAIN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/pip install -q -e '.[train,dev]' torch==2.13.0
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/onnxslim inspect fixtures/tiny_cnn.onnx
	$(VENV)/bin/onnxslim optimize fixtures/tiny_cnn.onnx -o $(DEMO_OUT) --validate --samples 4
	$(VENV)/bin/onnxslim quantize fixtures/digits_cnn.onnx --calib fixtures/digits_calib.npz -o $(DEMO_INT8)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-main: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

test-train: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python -m pytest -q

test: lint test-main test-train

fixtures: $(VENV)/.installed
	$(VENV)/bin/python fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) $(TRAIN_VENV) .pytest_cache .ruff_cache *.egg-info
