#!/usr/bin/env bash
# Make the two environments that bench/vs_peers.py needs besides the project's .venv:
#   .venv-peers   OnnxSlim (PyPI onnxslim), onnx-simplifier (onnxsim) and onnxconverter-common
#                 (float16, for bench/storage.py) with onnxruntime, apart from .venv because the
#                 PyPI onnxslim has this project's import name;
#   .venv-export  torch and transformers, to export the model set (onnxscript: the torch.export
#                 based exporter, for --exporter dynamo), and scikit-learn for
#                 fixtures/train_digits_cnn.py.
# Versions are pinned so that numbers from different days compare. Safe to run again.
# PYTHON picks the interpreter (3.11: onnxsim 0.8.1 ships wheels for it). The checks at the end
# run isolated (-I): from the repository root, our onnxslim would shadow the PyPI one.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}

make_venv() {
    local folder=$1
    shift
    [ -x "$folder/bin/python" ] || "$python" -m venv "$folder"
    "$folder/bin/python" -m pip install --quiet "$@"
}

make_venv .venv-peers onnxslim==0.1.98 onnxsim==0.8.1 onnxruntime==1.32.0 \
    onnxconverter-common==1.16.0
# torch from the local wheel folder pip is set up with here (the CPU build); from PyPI alone,
# torch==2.13.0 would be the CUDA build, gigabytes larger and no faster for this.
make_venv .venv-export torch==2.13.0 transformers==5.23.0 onnx==1.23.2 onnxscript==0.7.2 \
    scikit-learn==1.9.1
echo "ready: .venv-peers ($(.venv-peers/bin/python -I -c 'import onnxslim, onnxsim; print("OnnxSlim", onnxslim.__version__, "onnxsim", onnxsim.__version__)'))"
echo "ready: .venv-export ($(.venv-export/bin/python -I -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
