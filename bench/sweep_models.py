"""The sweep's model set: architectures beyond ``vs_peers.py``'s five, to export and compare.

Run with ``.venv-vision``'s Python (``bash bench/setup_peers.sh vision`` makes it: torch 2.14.1 with
torchvision 0.29.1, which PyPI's torchvision needs, plus transformers and onnxscript);
``sweep.py`` calls it for each model it lacks. By hand::

    HF_HUB_OFFLINE=1 .venv-vision/bin/python bench/sweep_models.py --out .bench/sweep/ts \\
        --exporter torchscript --no-constant-folding swin_t

torchvision's CNNs and vision transformers are built by torchvision with random weights
(``weights=None``) and randomized BatchNorm statistics; the Hugging Face models from their
configurations, shrunk where the default is a 7B model (Llama-style and Qwen2-style: 4 layers,
hidden 512, grouped-query attention as the families use it). Nothing is downloaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from export_models import (
    ModelSpec,
    _image_input,
    _PositionalCall,
    _text_inputs,
    main,
)
from torch import nn

__all__ = ["SWEEP"]

_PER_IMAGE = {"logits": {0: "batch"}}
_PER_TOKEN = {0: "batch", 1: "sequence"}
_HIDDEN = {"last_hidden_state": _PER_TOKEN}


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    build.__qualname__ = f"torchvision.{name}"
    return build


class _FirstOutputs(_PositionalCall):
    """A ``transformers`` model called by position that returns only its first ``count``
    outputs (a detector's logits and boxes, not its hidden states)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], count: int) -> None:
        super().__init__(model, names)
        self.count = count

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(super().forward(*inputs)[: self.count])


_DECODER = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "use_cache": False,
}


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    return _PositionalCall(LlamaModel(LlamaConfig(**_DECODER)), ("input_ids", "attention_mask"))


def _qwen2() -> nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    return _PositionalCall(Qwen2Model(Qwen2Config(**_DECODER)), ("input_ids", "attention_mask"))


def _t5_encoder() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    # t5-small's encoder.
    config = T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, use_cache=False)
    return _PositionalCall(T5EncoderModel(config), ("input_ids", "attention_mask"))


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    return _PositionalCall(DistilBertModel(DistilBertConfig()), ("input_ids", "attention_mask"))


def _roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaModel

    model = RobertaModel(RobertaConfig(vocab_size=50265), add_pooling_layer=False)
    return _PositionalCall(model, ("input_ids", "attention_mask"))


def _yolos() -> nn.Module:
    from transformers import YolosConfig, YolosForObjectDetection

    # yolos-tiny's width and depth, at the sweep's image size.
    config = YolosConfig(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=[224, 224],
        num_detection_tokens=100,
    )
    return _FirstOutputs(YolosForObjectDetection(config), ("pixel_values",), 2)


def _detr() -> nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    # ResNet-50 backbone from transformers (the default, timm's, is not installed).
    backbone = ResNetConfig(out_features=["stage4"], out_indices=[4])
    config = DetrConfig(backbone_config=backbone, encoder_layers=6, decoder_layers=6)
    return _FirstOutputs(DetrForObjectDetection(config), ("pixel_values",), 2)


_DETECTIONS = {"logits": {0: "batch"}, "pred_boxes": {0: "batch"}}

SWEEP: dict[str, ModelSpec] = {
    **{
        name: ModelSpec(_torchvision(name), _image_input("input"), _PER_IMAGE)
        for name in (
            "swin_t",
            "shufflenet_v2_x1_0",
            "efficientnet_b0",
            "regnet_y_400mf",
            "mobilenet_v3_small",
            "convnext_tiny",
            "densenet121",
        )
    },
    "llama": ModelSpec(_llama, _text_inputs(32000), _HIDDEN),
    "qwen2": ModelSpec(_qwen2, _text_inputs(32000), _HIDDEN),
    "t5-encoder": ModelSpec(_t5_encoder, _text_inputs(32128), _HIDDEN),
    "distilbert": ModelSpec(_distilbert, _text_inputs(30522), _HIDDEN),
    "roberta": ModelSpec(_roberta, _text_inputs(50265), _HIDDEN),
    "yolos": ModelSpec(_yolos, _image_input("pixel_values"), _DETECTIONS),
    "detr": ModelSpec(_detr, _image_input("pixel_values"), _DETECTIONS),
}

if __name__ == "__main__":
    sys.exit(main(models=SWEEP, what="the sweep's model set"))
