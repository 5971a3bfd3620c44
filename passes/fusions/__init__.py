"""Fusions: rules that merge chains of nodes into fewer, one rule per module, and the passes
that run them.

Two families. Linear fusions fold what follows or precedes a Conv, ConvTranspose or Gemm into
its constants (BatchNormalization, per-channel Add/Sub/Mul/Div, Pad) and turn MatMul + Add into
Gemm. Pattern fusions put back the single ops that exporters spell as chains when the target
opset lacks them (LayerNormalization at 17, Gelu at 20): only when the model's opset has the
op, or when ``target_opset`` (``--target-opset``) allows raising it.

Matching is structural and conservative: every intermediate of a pattern must be read only
inside the pattern (no other node, no graph output of any graph), so removing the chain removes
nothing that anything else needs. Scalar constants may be initializers or Constant nodes and
are compared with a relative tolerance.
"""

from __future__ import annotations

from onnxslim.passes.fusions.affine import AffineIntoLinear
from onnxslim.passes.fusions.attention import AttentionFusion
from onnxslim.passes.fusions.batchnorm import BatchNormIntoLinear
from onnxslim.passes.fusions.gelu_erf import ErfGeluFusion
from onnxslim.passes.fusions.gelu_tanh import TanhGeluFusion
from onnxslim.passes.fusions.layernorm import LayerNormFusion
from onnxslim.passes.fusions.matmul_add import MatMulAddToGemm
from onnxslim.passes.fusions.pad import PadIntoConvOrPool
from onnxslim.passes.fusions.rmsnorm import RMSNormFusion
from onnxslim.passes.fusions.rotary import RotaryFusion
from onnxslim.passes.fusions.transpose_gemm import TransposeIntoGemm

from onnxslim.registry import register_pass
from onnxslim.rewrite import FusionSet, Rule, RuleSet

__all__ = [
    "FuseBatchNorm",
    "FuseAffine",
    "FuseLayerNorm",
    "FuseGelu",
    "FuseAttention",
    "FuseRMSNorm",
    "FuseRotary",
    "BatchNormIntoLinear",
    "AffineIntoLinear",
    "MatMulAddToGemm",
    "PadIntoConvOrPool",
    "LayerNormFusion",
    "ErfGeluFusion",
    "TanhGeluFusion",
    "AttentionFusion",
    "RMSNormFusion",
    "RotaryFusion",
    "TransposeIntoGemm",
]


@register_pass("fuse-batchnorm")
class FuseBatchNorm(RuleSet):
    """Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

    The normalization's scale and shift go into the weights and the bias (created when the op
    has none). It fires only when the BatchNormalization is the sole reader of the op's output,
    its statistics are constant, and the op's weights are constant floats.
    """

    rules = (BatchNormIntoLinear,)


@register_pass("fuse-affine")
class FuseAffine(RuleSet):
    """Fold constant Add/Sub/Mul/Div into Conv and Gemm, MatMul+Add into Gemm, Pad into
    Conv and pools.

    * Conv, ConvTranspose or Gemm followed by Add, Sub, Mul or Div with a per-channel constant
      (broadcast as ``[C,1,1]``, ``[1,C,1,1]``, a scalar, or ``[N]`` for Gemm): weights and bias
      absorb it.
    * MatMul of a 2-D input and a constant 2-D float32 or float64 weight followed by Add of a
      bias that is the same for every row becomes one Gemm (``matmul_to_gemm``).
    * Pad in constant mode with a zero value, padding only spatial axes, goes into the pads of
      the Conv or AveragePool after it (the pool then counts the padding, as it did when the
      zeros were real); a Pad with value -inf goes into MaxPool. Pools keep their pads smaller
      than their kernel, as onnxruntime requires, and need ``ceil_mode=0``.
    * A 2-D Transpose read only by a Gemm, or by a MatMul of two float32/float64 matrices
      (which becomes a Gemm, with ``matmul_to_gemm``), goes into its transA/transB flag.
    """

    matmul_to_gemm: bool = True

    rules = (MatMulAddToGemm, AffineIntoLinear, PadIntoConvOrPool, TransposeIntoGemm)

    def make_rules(self) -> list[Rule]:
        rules = [rule() for rule in self.rules if rule not in (MatMulAddToGemm, TransposeIntoGemm)]
        if self.matmul_to_gemm:
            return [MatMulAddToGemm(), *rules, TransposeIntoGemm()]
        return [*rules, TransposeIntoGemm(matmuls=False)]


@register_pass("fuse-layernorm")
class FuseLayerNorm(FusionSet):
    """Fuse decomposed layer normalization into LayerNormalization (opset >= 17).

    Matches ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) or Mul(d, d) -> ReduceMean -> Add(eps)
    -> Sqrt -> Div(d, std) or Reciprocal + Mul, then an optional Mul by a scale and Add of a
    bias whose shape is the normalized shape, as PyTorch (below opset 17) and TensorFlow
    exporters write it. Both means run over the same trailing axes, kept (keepdims=1), given
    as an attribute (opset < 18) or a constant input (opset >= 18). The normalized dims must be
    static. Without a scale, LayerNormalization needs a ones tensor; it is added (once per shape
    and type) only when the nodes it replaces outweigh it in the file.
    """

    rules = (LayerNormFusion,)


@register_pass("fuse-gelu")
class FuseGelu(FusionSet):
    """Fuse decomposed GELU into Gelu (opset >= 20), exact (erf) and tanh approximations.

    Matches 0.5 * x * (1 + erf(x / sqrt(2))), with Div by sqrt(2) or Mul by 1/sqrt(2), and
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), with x^3 as Pow(x, 3) or two Muls,
    multiplying by x and 0.5 in whichever order and grouping the exporters write (PyTorch,
    Hugging Face, TensorFlow). Constants match within a relative 1e-4 (or the precision of
    their type, for float16).
    """

    rules = (ErfGeluFusion, TanhGeluFusion)


@register_pass("fuse-rmsnorm")
class FuseRMSNorm(FusionSet):
    """Fuse decomposed RMS normalization into RMSNormalization (opset >= 23).

    Matches x * 1/sqrt(mean(x²) + eps) * scale as Llama, T5 and Mistral exports write it
    (Pow or Mul for the square; Div, Reciprocal or Div(1, ·) for the division; the scale
    optional). The normalized dims must be static; without a scale, a ones tensor is added
    only when the nodes replaced outweigh it in the file.
    """

    rules = (RMSNormFusion,)


@register_pass("fuse-rotary")
class FuseRotary(FusionSet):
    """Fuse rotary position embedding into RotaryEmbedding (opset >= 23).

    Matches x * cos + rotate(x) * sin on 4-D heads, rotate-half (Llama, GPT-NeoX) and
    interleaved (GPT-J), with cos and sin tables whose halves provably repeat (built as
    Cos(Concat(f, f)), or constants checked). Run it before fuse-attention, which then keeps
    the rotation on the 3-D projections.
    """

    rules = (RotaryFusion,)


@register_pass("fuse-attention")
class FuseAttention(FusionSet):
    """Fuse scaled dot-product attention into Attention (opset >= 23).

    Softmax(Q·Kᵀ·scale + mask)·V as BERT, ViT, GPT-2 and Llama exports write it (TorchScript
    and dynamo): the scale on the scores or on both sides, an additive mask or a Where with a
    very negative constant, the IsNaN guard, Kᵀ however it is transposed, and grouped-query
    attention's repeated K/V heads (kept shared: ``kv_num_heads``). Where the graph splits
    ``[B, S, H*D]`` tensors into heads and merges them back, the Attention node takes the 3-D
    tensors and the head Reshapes and Transposes go too.
    """

    rules = (AttentionFusion,)
