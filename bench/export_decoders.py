"""Export the decoders of ``llm.py`` with a key/value cache: run with the export environment.

    HF_HUB_OFFLINE=1 .venv-export/bin/python bench/export_decoders.py --out .bench/llm/raw gpt2

GPT-2 small (124M parameters), a Llama-style decoder of GPT-2's width (12 layers, 12 query
heads sharing 4 key/value heads, RMSNorm, rotary embedding) and GPT-2-large (774M, 3.1 GB:
external data), built by ``transformers`` with random weights made to look trained (seed 0,
``export_models.export``), exported by TorchScript at opset 17 as decoders are exported for
generation: ``input_ids``, ``attention_mask`` (cached and new tokens), ``position_ids`` and
``past_key_values.{layer}.{key,value}`` in; ``logits`` and ``present.{layer}.{key,value}`` out.
An empty cache (length 0) runs the prompt; the presents fed back run one token at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from export_models import InputSpec, ModelSpec, llama_config, main
from torch import nn

__all__ = ["DECODERS", "WithCache"]

BATCH, SEQUENCE, PAST = 1, 8, 4


class WithCache(nn.Module):
    """A ``transformers`` causal LM called with its cache as flat tensors, two per layer (also
    what ``fixtures/make_decoder_fixtures.py`` exports)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _gpt2(layers: int, width: int, heads: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_embd=width, n_layer=layers, n_head=heads)
        return WithCache(GPT2LMHeadModel(config))

    return build


def _llama() -> nn.Module:
    from transformers import LlamaForCausalLM

    return WithCache(LlamaForCausalLM(llama_config()))


def _spec(
    build: Callable[[], nn.Module], vocabulary: int, layers: int, kv_heads: int, head: int
) -> ModelSpec:
    tokens = {0: "batch_size", 1: "sequence_length"}
    cache = [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    inputs: Sequence[InputSpec] = (
        InputSpec("input_ids", (BATCH, SEQUENCE), "ids", tokens, high=vocabulary),
        InputSpec(
            "attention_mask",
            (BATCH, PAST + SEQUENCE),
            "mask",
            {0: "batch_size", 1: "total_sequence_length"},
        ),
        InputSpec("position_ids", (BATCH, SEQUENCE), "ids", tokens, high=PAST + SEQUENCE),
        *(
            InputSpec(
                name,
                (BATCH, kv_heads, PAST, head),
                "normal",
                {0: "batch_size", 2: "past_sequence_length"},
            )
            for name in cache
        ),
    )
    outputs = {"logits": tokens} | {
        f"present.{i}.{t}": {0: "batch_size", 2: "total_sequence_length"}
        for i in range(layers)
        for t in ("key", "value")
    }
    return ModelSpec(build, tuple(inputs), outputs)


DECODERS: dict[str, ModelSpec] = {
    "gpt2": _spec(_gpt2(12, 768, 12), 50257, 12, 12, 64),
    "llama": _spec(_llama, 32000, 12, 4, 64),
    "gpt2-large": _spec(_gpt2(36, 1280, 20), 50257, 36, 20, 64),
}


if __name__ == "__main__":
    sys.exit(main(models=DECODERS, what="llm.py's decoders with a key/value cache"))
