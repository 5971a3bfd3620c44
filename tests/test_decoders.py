"""Decoder LLM exports as they come: GPT-2 and a Llama-style decoder (RMSNorm, rotary
embedding, grouped-query attention), TorchScript and dynamo, with and without a KV cache
(``past_key_values``), through quantize (int8 and int4), float16 and validate.

The KV-cache fixtures are made by ``fixtures/make_decoder_fixtures.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnxslim.passes.float16 import Float16
from onnxslim.passes.quantize import Quantize

from onnxslim.inputs import InputSpec, input_specs, resolve_shapes, synthesize_inputs
from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager
from onnxslim.validate import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "transformers"
CACHED = [f"{m}_kv_{e}" for m in ("gpt2", "llama") for e in ("torchscript", "dynamo")]
DECODERS = [f"{m}_{e}" for m in ("gpt2", "llama") for e in ("torchscript", "dynamo")] + CACHED


def _path(name: str) -> Path:
    return FIXTURES / f"{name}.onnx"


def _compressed(name: str, step) -> onnx.ModelProto:
    model = load(_path(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthesized calibration data warns, on purpose
        records = PassManager([step]).run(model)
    assert records[0].changed, records[0].notes
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result


# ------------------------------------------------------------------ signature synthesis


@pytest.mark.parametrize("name", CACHED)
def test_a_kv_cache_signature_gets_a_short_cache_a_mask_over_both_and_positions_after_it(
    name: str,
) -> None:
    feeds = synthesize_inputs(input_specs(_path(name)))
    tokens = feeds["input_ids"].shape[1]
    past = feeds["past_key_values.0.key"].shape[2]
    assert past == 4
    assert all(feeds[k].shape[2] == past for k in feeds if k.startswith("past_key_values"))
    assert feeds["attention_mask"].shape == (1, past + tokens)  # dynamo names it apart
    assert feeds["attention_mask"][0, : past + 1].all()  # every row attends to something
    np.testing.assert_array_equal(feeds["position_ids"][0], np.arange(past, past + tokens))
    assert feeds["input_ids"].max() < 100  # the vocabulary of the embedding table


def test_an_empty_cache_can_be_asked_for_and_the_mask_follows() -> None:
    specs = input_specs(_path("llama_kv_torchscript"))
    empty = {f"past_key_values.{i}.{t}": [1, 2, 0, 8] for i in (0, 1) for t in ("key", "value")}
    feeds = synthesize_inputs(specs, empty)
    assert feeds["past_key_values.1.value"].shape == (1, 2, 0, 8)
    assert feeds["attention_mask"].shape == feeds["input_ids"].shape
    np.testing.assert_array_equal(feeds["position_ids"][0], np.arange(16))


def test_a_mask_length_written_as_a_sum_of_dims_is_that_sum() -> None:
    """optimum names the mask's axis ``past_sequence_length + sequence_length``."""
    specs = [
        InputSpec("input_ids", TensorProto.INT64, ("batch_size", "sequence_length")),
        InputSpec(
            "attention_mask",
            TensorProto.INT64,
            ("batch_size", "past_sequence_length + sequence_length"),
        ),
        InputSpec(
            "past_key_values.0.key",
            TensorProto.FLOAT,
            ("batch_size", 2, "past_sequence_length", 8),
        ),
    ]
    shapes = resolve_shapes(specs, {"input_ids": [1, 5]})
    assert shapes["attention_mask"] == (1, 9) and shapes["past_key_values.0.key"] == (1, 2, 4, 8)


# ------------------------------------------------------------------------ compression


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize(
    ("step", "min_cosine"),
    [
        (lambda: Quantize(), 0.99),
        (lambda: Quantize(weights="int4", min_cosine=0.9), 0.9),
        (lambda: Float16(), 0.999),
    ],
    ids=["int8", "int4", "float16"],
)
def test_decoders_quantize_and_convert_and_validate(name: str, step, min_cosine: float) -> None:
    result = _compressed(name, step())
    report = validate(_path(name), result, samples=2, min_cosine=min_cosine, atol=np.inf, rtol=0.0)
    assert report.passed, [(o.name, o.cosine) for o in report.outputs]
