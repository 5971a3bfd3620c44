"""Export the model set of ``vs_peers.py`` to ONNX: run with the export environment's Python.

``bench/setup_peers.sh`` makes that environment (``.venv-export``: torch, transformers,
onnxscript). ``vs_peers.py`` calls this script itself when a model is missing from its work
folder; by hand::

    HF_HUB_OFFLINE=1 .venv-export/bin/python bench/export_models.py --out .bench/peers resnet50

The models are what users export right after training, with random weights (fixed seed) so that
nothing is downloaded: ResNet-50 and MobileNetV2 written here in torch, with BatchNorm
statistics and affine parameters randomized (an exporter that folds them must get the
arithmetic right), BERT-base, GPT-2 and ViT-base built by ``transformers`` from their
default configurations, and a Llama-style decoder of GPT-2's size (grouped-query attention,
RMSNorm, rotary embedding; ``bench/fusions.py``). Each export uses opset 17 and dynamic batch
(and sequence) axes, and
writes ``NAME.onnx`` plus ``NAME.json``: the inputs' names, sample shapes and value ranges, so
that the benchmark can feed the model without importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "InputSpec",
    "ModelSpec",
    "MODELS",
    "ResNet50",
    "MobileNetV2",
    "randomize_batchnorm",
    "perturb_constant_parameters",
    "export",
    "torch_export",
    "script_digest",
    "main",
]

BATCH = 2
SEQUENCE = 128
IMAGE = 224
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its sample shape and how to fill it.

    ``fill`` is ``normal`` (float32, standard normal), ``ids`` (int64 in ``[0, high)``) or
    ``mask`` (int64 attention mask of ones followed by padding zeros). ``dynamic`` names the
    symbolic axes, e.g. ``{0: "batch", 1: "sequence"}``.
    """

    name: str
    shape: tuple[int, ...]
    fill: str
    dynamic: dict[int, str]
    high: int = 0

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        if self.fill == "normal":
            return torch.randn(self.shape, generator=generator)
        if self.fill == "ids":
            return torch.randint(0, self.high, self.shape, generator=generator)
        return torch.ones(self.shape, dtype=torch.int64)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the set: how to build it and what it takes and returns."""

    build: Callable[[], nn.Module]
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, dict[int, str]]  # name -> symbolic axes


# --------------------------------------------------------------------------- CNNs in torch


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """ResNet-50's 1x1 -> 3x3 -> 1x1 block with a projection shortcut where shapes change."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 as torchvision defines it (stages of 3, 4, 6, 3 bottlenecks), 1000 classes."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(count):
                blocks.append(_Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * _Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class _InvertedResidual(nn.Module):
    """MobileNetV2's expand (1x1) -> depthwise (3x3) -> project (1x1, linear) block."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) as torchvision defines it, with its Dropout + Linear head."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
    SETTINGS += ((6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for expand, cout, count, stride in self.SETTINGS:
            for i in range(count):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, as training would.

    Fresh BatchNorms are identities in eval mode (mean 0, variance 1, scale 1, shift 0), which
    would let a wrong BatchNorm fusion pass the output check.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(channels, generator=generator))
    return model


def perturb_constant_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Add small noise to every parameter that initialization left constant.

    Random initialization zeroes biases and sets LayerNorm scales to one; a trained checkpoint
    has neither. Left as they are, they would credit a tool for removing Add-of-zero and
    Mul-by-one nodes that users' models do not have.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.detach().flatten()
            if parameter.is_floating_point() and flat.numel() > 1 and bool((flat == flat[0]).all()):
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(0.02 * noise)
    return model


# ------------------------------------------------------------------- Hugging Face models


class _PositionalCall(nn.Module):
    """Calls a ``transformers`` model with keyword inputs and tuple outputs.

    Tracing passes inputs by position, which the models' ``forward`` no longer accepts in order.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=False)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return _PositionalCall(BertModel(BertConfig()), ("input_ids", "attention_mask"))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(use_cache=False))
    return _PositionalCall(model, ("input_ids", "attention_mask"))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(num_labels=1000))
    return _PositionalCall(model, ("pixel_values",))


def llama_config(**extra: object):
    """A Llama-style decoder of GPT-2's size: 12 layers of width 768, 12 query heads sharing 4
    key/value heads (grouped-query attention), RMSNorm, rotary embedding, SiLU gating (a
    ``LlamaConfig``; ``export_decoders.py`` exports the same decoder with its cache)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        vocab_size=32000,
        **extra,
    )


def _llama() -> nn.Module:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(use_cache=False))
    return _PositionalCall(model, ("input_ids", "attention_mask"))


def _image_input(name: str) -> tuple[InputSpec, ...]:
    return (InputSpec(name, (BATCH, 3, IMAGE, IMAGE), "normal", {0: "batch"}),)


def _text_inputs(vocabulary: int) -> tuple[InputSpec, ...]:
    axes = {0: "batch", 1: "sequence"}
    return (
        InputSpec("input_ids", (BATCH, SEQUENCE), "ids", axes, high=vocabulary),
        InputSpec("attention_mask", (BATCH, SEQUENCE), "mask", axes),
    )


_PER_IMAGE = {"logits": {0: "batch"}}
_PER_TOKEN = {0: "batch", 1: "sequence"}

MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(ResNet50, _image_input("input"), _PER_IMAGE),
    "mobilenetv2": ModelSpec(MobileNetV2, _image_input("input"), _PER_IMAGE),
    "bert-base": ModelSpec(
        _bert,
        _text_inputs(30522),
        {"last_hidden_state": _PER_TOKEN, "pooler_output": {0: "batch"}},
    ),
    "gpt2": ModelSpec(_gpt2, _text_inputs(50257), {"logits": _PER_TOKEN}),
    "vit-base": ModelSpec(_vit, _image_input("pixel_values"), _PER_IMAGE),
    "llama": ModelSpec(_llama, _text_inputs(32000), {"logits": _PER_TOKEN}),
}


# ------------------------------------------------------------------------------ exporting


def export(
    name: str,
    folder: Path,
    exporter: str = "torchscript",
    opset: int = 17,
    *,
    models: Mapping[str, ModelSpec] = MODELS,
    constant_folding: bool = True,
    as_initialized: bool = False,
) -> Path:
    """Build model ``name`` of ``models`` with seed 0, export it to ``folder/NAME.onnx`` and
    its manifest.

    ``constant_folding=False`` exports with TorchScript's ``do_constant_folding=False``, the
    raw graph users get when they ask for it (the sweep's setting). ``as_initialized`` keeps
    the weights as the framework initialized them (BatchNorms that are identities, zero biases,
    unit LayerNorm scales: identical tensors, which the TorchScript exporter shares between
    layers) instead of making them look trained. Both files are written
    under temporary names and renamed, so that an interrupted export never leaves a file that
    a later run would take for a finished one.
    """
    spec = models[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = spec.build()
    if not as_initialized:
        randomize_batchnorm(model, generator)
        perturb_constant_parameters(model, generator)
    model.eval()
    sample = tuple(item.sample(generator) for item in spec.inputs)
    path = folder / f"{name}.onnx"
    partial = folder / f"{name}.onnx.partial"
    start = time.perf_counter()
    torch_export(
        model,
        sample,
        partial,
        exporter=exporter,
        opset=opset,
        inputs={i.name: i.dynamic for i in spec.inputs},
        outputs=spec.outputs,
        positional=isinstance(model, _PositionalCall),
        constant_folding=constant_folding,
    )
    seconds = time.perf_counter() - start
    manifest = {
        "name": name,
        "exporter": exporter,
        "opset": opset,
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "export_seconds": seconds,
        "script_sha256": script_digest(),
        "models_sha256": script_digest(inspect.getfile(spec.build)),
        "constant_folding": constant_folding if exporter == "torchscript" else None,
        "as_initialized": as_initialized,
        "inputs": [asdict(item) for item in spec.inputs],
        "outputs": list(spec.outputs),
    }
    manifest_path = folder / f"{name}.json"
    partial_manifest = manifest_path.with_suffix(".json.partial")
    partial_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)
    os.replace(partial_manifest, manifest_path)
    return path


def torch_export(
    model: nn.Module,
    sample: tuple[torch.Tensor, ...],
    path: Path,
    *,
    exporter: str,
    opset: int,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
    positional: bool = False,
    constant_folding: bool = True,
) -> None:
    """``torch.onnx.export`` as users call it: ``exporter`` is ``torchscript``
    (``dynamo=False``; ``constant_folding`` is its ``do_constant_folding``) or ``dynamo``.

    ``inputs`` and ``outputs`` map names, in order, to their symbolic axes. ``positional``:
    the model takes all inputs through one ``*inputs`` parameter (a dynamo export then
    nests the inputs' dynamic shapes in one tuple).
    """
    if exporter == "torchscript":
        options = {
            "dynamo": False,
            "do_constant_folding": constant_folding,
            "dynamic_axes": inputs | outputs,
        }
    else:
        # Axis names become Dim.DYNAMIC and name the model's symbolic dims.
        shapes: tuple = tuple(inputs.values())
        options = {
            "dynamo": True,
            "external_data": False,
            "dynamic_shapes": (shapes,) if positional else shapes,
        }
    with torch.no_grad():
        torch.onnx.export(
            model,
            sample,
            str(path),
            opset_version=opset,
            input_names=list(inputs),
            output_names=list(outputs),
            **options,
        )


def script_digest(path: str | Path = __file__) -> str:
    """SHA-256 of this file (or of the file that defines a model): an export made by another
    version of it is not reused."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def main(
    argv: Sequence[str] | None = None,
    models: Mapping[str, ModelSpec] = MODELS,
    what: str = "the vs_peers model set",
) -> int:
    parser = argparse.ArgumentParser(description=f"Export {what} to ONNX.")
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(models)}")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--no-constant-folding",
        dest="constant_folding",
        action="store_false",
        help="TorchScript's do_constant_folding=False: the raw graph",
    )
    parser.add_argument(
        "--as-initialized",
        action="store_true",
        help="weights as initialized (identical BatchNorms and biases), not made to look trained",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in models]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs are built in, never downloaded
    torch.set_num_threads(os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models or list(models):
        path = export(
            name,
            args.out,
            args.exporter,
            args.opset,
            models=models,
            constant_folding=args.constant_folding,
            as_initialized=args.as_initialized,
        )
        print(f"exported {name} -> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
