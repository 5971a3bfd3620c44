# Two environments, because onnxruntime's builds overwrite each other:
#   .venv        newest onnx + onnxruntime (CPU), where everything runs, distillation included
#   .venv-train  onnxruntime-training-cpu 1.19.2 (its last release): Python <= 3.11, onnx < 1.18,
#                and torch for `onnxruntime.training` (the CPU build, pinned: plain `torch` pulls CUDA);
#                only the ort-training backend's tests (marker `train`) run there
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# pyenv's 3.12 when it has one (its shim only answers where 3.12 is selected), else PATH's
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
VENV := .venv
TRAIN_VENV := .venv-train
PY312_VENV := .venv-py312
PY312_OUT ?= $(or $(TMPDIR),/tmp)/onnxslim-py312
DEMO_OUT ?= $(or $(TMPDIR),/tmp)/onnxslim-demo.onnx
DEMO_INT8 ?= $(or $(TMPDIR),/tmp)/onnxslim-demo-digits.int8.onnx

.PHONY: demo test test-main test-train distill-py312 lint fixtures clean

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
	$(TRAIN_VENV)/bin/python -m pytest -q -m train

# `onnxslim distill` from a fresh, non-editable install on Python 3.12 (CI runs it after `test`)
distill-py312:
	rm -rf $(PY312_VENV) $(PY312_OUT) && mkdir -p $(PY312_OUT)
	$(PYTHON312) -m venv $(PY312_VENV)
	$(PY312_VENV)/bin/pip install -q '.[cpu]'
	$(PY312_VENV)/bin/onnxslim prune fixtures/digits_cnn.onnx --ratio 0.5 -o $(PY312_OUT)/pruned.onnx
	$(PY312_VENV)/bin/onnxslim distill --teacher fixtures/digits_cnn.onnx \
		--student $(PY312_OUT)/pruned.onnx --data fixtures/digits_train.npz \
		-o $(PY312_OUT)/distilled.onnx --epochs 3 --threads 2
	$(PY312_VENV)/bin/python -c "import numpy as np, onnxruntime as ort; \
		d = np.load('fixtures/digits_test.npz'); \
		s = ort.InferenceSession('$(PY312_OUT)/distilled.onnx'); \
		a = (s.run(None, {'image': d['image']})[0].argmax(1) == d['labels']).mean(); \
		print(f'distilled on Python 3.12: top-1 {a:.2%}'); assert a > 0.9"

test: lint test-main test-train

fixtures: $(VENV)/.installed
	$(VENV)/bin/python fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) $(TRAIN_VENV) $(PY312_VENV) .pytest_cache .ruff_cache *.egg-info
