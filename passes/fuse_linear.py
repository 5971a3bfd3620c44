"""fuse-batchnorm and fuse-affine: fold what follows or precedes a linear op into its constants.

Conv, ConvTranspose and Gemm end in a bias per output channel, so a per-channel affine map
after them, ``y = scale * x + shift`` (BatchNormalization in inference form, Add, Sub, Mul or
Div by a per-channel constant), is the same op with scaled weights and a new bias. Weights are
recomputed in float64 and cast back to their type; the result differs from the unfused graph
only by float rounding.

Every rewrite needs the tensor between the two nodes to have no other reader and not to be a
graph output, constants that are initializers (not graph inputs or outputs), and float16,
float32 or float64 weights. A weight that other nodes also read is copied under a new name
rather than changed, and only when the copy is no larger than the constants the rewrite frees:
the file never grows. Constant nodes are not read (fold-constants turns them into
initializers first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import constant_nbytes, iter_graphs, read_constant
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass

__all__ = ["FuseBatchNorm", "FuseAffine"]

_STANDARD_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# onnxruntime's CPU Gemm has float and double kernels only.
_GEMM_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


@register_pass("fuse-batchnorm")
class FuseBatchNorm(Pass):
    """Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

    The normalization's scale and shift go into the weights and the bias (created when the op
    has none). It fires only when the BatchNormalization is the sole reader of the op's output,
    its statistics are constant, and the op's weights are constant floats.
    """

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        scope = _Scope.of(graph)
        return scope.rewrite_each(lambda node: _fuse_batchnorm(node, scope))


@register_pass("fuse-affine")
class FuseAffine(Pass):
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
    """

    matmul_to_gemm: bool = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        scope = _Scope.of(graph)
        return scope.rewrite_each(lambda node: self._fuse(node, scope))

    def _fuse(self, node: gs.Node, scope: _Scope) -> bool:
        if node.op in _ELEMENTWISE:
            return _fuse_elementwise(node, scope, self.matmul_to_gemm)
        if node.op in _PAD_TAKERS:
            return _fuse_pad(node, scope)
        return False


# ------------------------------------------------------------------------------ the scope


@dataclass
class _Scope:
    """What every rewrite checks: tensors whose identity is part of the model's interface, the
    names in use (for new constants), and the default-domain opset."""

    root: gs.Graph
    protected: set[int]
    opset: int
    _names: set[str] | None = field(default=None, init=False)
    _nodes: set[int] = field(default_factory=set, init=False)  # of the graph being rewritten

    @classmethod
    def of(cls, graph: gs.Graph) -> _Scope:
        graphs = list(iter_graphs(graph))
        protected = {id(t) for g in graphs for t in g.inputs + g.outputs}
        return cls(root=graph, protected=protected, opset=int(graph.opset))

    def rewrite_each(self, rewrite: Callable[[gs.Node], bool]) -> bool:
        """Offer every standard-domain node of every graph to ``rewrite``, in order, and drop
        the nodes that rewrites emptied."""
        changed = False
        for g in iter_graphs(self.root):
            self._nodes = {id(n) for n in g.nodes}
            for node in list(g.nodes):
                if node.outputs and node.domain in (*_STANDARD_DOMAINS, None):
                    changed |= rewrite(node)
            if changed:
                g.nodes = [n for n in g.nodes if n.outputs]
        return changed

    def producer(self, tensor: gs.Tensor) -> gs.Node | None:
        """The node of the current graph that writes ``tensor`` (not one of an outer graph)."""
        if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
            node = tensor.inputs[0]
            if id(node) in self._nodes and node.domain in (*_STANDARD_DOMAINS, None):
                return node
        return None

    def only_reader(self, tensor: gs.Tensor, node: gs.Node) -> bool:
        """Whether ``node`` alone reads ``tensor`` and nothing outside the graph sees it."""
        return (
            id(tensor) not in self.protected
            and bool(tensor.outputs)
            and all(reader is node for reader in tensor.outputs)
        )

    def fresh_name(self, base: str) -> str:
        if self._names is None:
            self._names = {name for g in iter_graphs(self.root) for name in g.tensors()}
        name, number = f"{base}_fused", 1
        while name in self._names:
            number += 1
            name = f"{base}_fused_{number}"
        self._names.add(name)
        return name


def _float_constant(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of an initializer of a float type, else None."""
    if not isinstance(tensor, gs.Constant) or tensor.dtype not in _FLOAT_TYPES:
        return None
    return read_constant(tensor)


def _present(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``, or None where it is absent or left empty."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


# ------------------------------------------------------------------- linear ops and biases


@dataclass
class _ChannelLinear:
    """Conv, ConvTranspose or Gemm with constant float weights, seen as ``W x + b`` per output
    channel: ``channels`` of them, along axis 1 of an output of rank ``rank``."""

    node: gs.Node
    weight: gs.Constant
    weights: np.ndarray
    bias: np.ndarray | None  # per channel, float64; None where the op has no bias
    channels: int
    rank: int

    @classmethod
    def of(cls, node: gs.Node, scope: _Scope) -> _ChannelLinear | None:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        weights = _float_constant(weight) if weight is not None else None
        if weights is None:
            return None
        if node.op == "Conv" and weights.ndim >= 3:
            channels, rank = weights.shape[0], weights.ndim
        elif node.op == "ConvTranspose" and weights.ndim >= 3:
            group = int(node.attrs.get("group", 1))
            if group < 1 or weights.shape[0] % group:
                return None
            channels, rank = weights.shape[1] * group, weights.ndim
        elif node.op == "Gemm" and weights.ndim == 2 and scope.opset >= 7:
            channels, rank = weights.shape[0 if node.attrs.get("transB", 0) else 1], 2
        else:
            return None
        bias = _present(node, 2)
        if bias is None:
            return cls(node, weight, weights, None, channels, rank)
        values = _float_constant(bias)
        if values is None or values.dtype != weights.dtype:
            return None
        values = values.astype(np.float64)
        if node.op == "Gemm":
            # C broadcasts to [M, N]; only a C that is the same for every row is per channel.
            values = _per_channel(values, 2, channels)
            if values is None:
                return None
            values = values * float(node.attrs.get("beta", 1.0))
        elif values.shape != (channels,):
            return None
        return cls(node, weight, weights, values, channels, rank)

    def scaled_weights(self, scale: np.ndarray) -> np.ndarray:
        """The weights with output channel ``c`` multiplied by ``scale[c]``, in float64."""
        weights = self.weights.astype(np.float64)
        if self.node.op == "Conv":
            return weights * scale.reshape(-1, *[1] * (weights.ndim - 1))
        if self.node.op == "ConvTranspose":
            # W is [C_in, C_out / group, k...]; output channel g * C_out/group + j is column j
            # of the input channels of group g.
            group = int(self.node.attrs.get("group", 1))
            per_group = weights.shape[1]
            kernel = weights.shape[2:]
            grouped = weights.reshape(group, -1, per_group, *kernel)
            factors = scale.reshape(group, 1, per_group, *[1] * len(kernel))
            return (grouped * factors).reshape(weights.shape)
        if self.node.attrs.get("transB", 0):
            return weights * scale[:, None]
        return weights * scale[None, :]

    def absorb(
        self, scale: np.ndarray | None, shift: np.ndarray | None, follower: gs.Node, scope: _Scope
    ) -> bool:
        """Make the op compute ``scale * op(x) + shift`` and write ``follower``'s output in its
        place; False (nothing changed) where the result is not finite or the file would grow."""
        dtype = self.weights.dtype
        new_weights = None
        if scale is not None:
            new_weights = self.scaled_weights(scale).astype(dtype)
        new_bias = None
        if self.bias is not None or shift is not None:
            bias = np.zeros(self.channels) if self.bias is None else self.bias
            if scale is not None:
                bias = bias * scale
            if shift is not None:
                bias = bias + shift
            new_bias = bias.astype(dtype)
        with np.errstate(all="ignore"):
            finite = all(np.isfinite(v).all() for v in (new_weights, new_bias) if v is not None)
        if not finite:
            return False
        bias_input = _present(self.node, 2)
        grown = 0
        if new_weights is not None and not scope.only_reader(self.weight, self.node):
            grown += new_weights.nbytes
        if new_bias is not None and (
            bias_input is None or not scope.only_reader(bias_input, self.node)
        ):
            grown += new_bias.nbytes
        if grown > _freed_bytes(follower, scope):
            return False

        if new_weights is not None:
            _set_constant(self.node, 1, new_weights, scope)
        if new_bias is not None:
            _set_constant(self.node, 2, new_bias, scope)
            if self.node.op == "Gemm":
                self.node.attrs["beta"] = 1.0
        _take_output(self.node, follower)
        return True


def _per_channel(values: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``values`` as one float64 number per channel, when broadcasting them against a tensor of
    rank ``rank`` with ``channels`` along axis 1 adds the same number to a whole channel and
    leaves the tensor's shape as it is; else None."""
    if values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + values.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values.astype(np.float64).reshape(-1), (channels,))


def _freed_bytes(node: gs.Node, scope: _Scope) -> int:
    """Bytes of the initializers that only ``node`` reads, which go when it goes."""
    freed = {
        id(t): t for t in node.inputs if isinstance(t, gs.Constant) and scope.only_reader(t, node)
    }
    return sum(constant_nbytes(t) for t in freed.values())


def _set_constant(node: gs.Node, index: int, values: np.ndarray, scope: _Scope) -> None:
    """Give input ``index`` of ``node`` the ``values``: in place where ``node`` alone reads the
    constant there, else as a new constant (appended where the input was absent)."""
    current = _present(node, index)
    if current is not None and scope.only_reader(current, node):
        current.values = values
        return
    base = current.name if current is not None else f"{node.name or node.outputs[0].name}_bias"
    constant = gs.Constant(scope.fresh_name(base), values)
    if index < len(node.inputs):
        node.inputs[index] = constant
    else:
        node.inputs.append(constant)


def _take_output(node: gs.Node, follower: gs.Node) -> None:
    """Let ``node`` write ``follower``'s output and disconnect ``follower``."""
    output = follower.outputs[0]
    follower.inputs.clear()
    follower.outputs.clear()
    node.outputs[0] = output


def _linear_before(node: gs.Node, scope: _Scope) -> tuple[_ChannelLinear, gs.Tensor] | None:
    """The linear op whose output ``node`` alone reads, with that output."""
    for tensor in node.inputs:
        producer = scope.producer(tensor)
        if (
            producer is not None
            and producer.op in ("Conv", "ConvTranspose", "Gemm")
            and scope.only_reader(tensor, node)
        ):
            linear = _ChannelLinear.of(producer, scope)
            if linear is not None:
                return linear, tensor
    return None


# ----------------------------------------------------------------------------- BatchNorm


def _fuse_batchnorm(node: gs.Node, scope: _Scope) -> bool:
    if node.op != "BatchNormalization" or not _is_inference_batchnorm(node, scope):
        return False
    found = _linear_before(node, scope)
    if found is None or found[1] is not node.inputs[0]:
        return False
    linear = found[0]
    params = [_float_constant(t) for t in node.inputs[1:5]]
    if any(p is None or p.shape != (linear.channels,) for p in params):
        return False
    scale, shift, mean, variance = (p.astype(np.float64) for p in params)
    epsilon = float(node.attrs.get("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        factor = scale / np.sqrt(variance + epsilon)
        offset = shift - mean * factor
    return linear.absorb(factor, offset, node, scope)


def _is_inference_batchnorm(node: gs.Node, scope: _Scope) -> bool:
    """One output, running statistics, one statistic per channel (not ``spatial=0``)."""
    if len(node.outputs) != 1 or len(node.inputs) != 5:
        return False
    if node.attrs.get("training_mode", 0) or not node.attrs.get("spatial", 1):
        return False
    # Before opset 7, is_test=0 (the default) asked for batch statistics.
    return scope.opset >= 7 or bool(node.attrs.get("is_test", 0))


# ---------------------------------------------------------------------- Add/Sub/Mul/Div


def _fuse_elementwise(node: gs.Node, scope: _Scope, matmul_to_gemm: bool) -> bool:
    if len(node.inputs) != 2:
        return False
    if matmul_to_gemm and node.op == "Add" and _matmul_add_to_gemm(node, scope):
        return True
    found = _linear_before(node, scope)
    if found is None:
        return False
    linear, tensor = found
    position = 0 if node.inputs[0] is tensor else 1
    other = _float_constant(node.inputs[1 - position])
    if other is None or other.dtype != linear.weights.dtype:
        return False
    values = _per_channel(other, linear.rank, linear.channels)
    if values is None:
        return False
    affine = _as_affine(node.op, values, linear_first=position == 0)
    return affine is not None and linear.absorb(*affine, node, scope)


def _as_affine(
    op: str, values: np.ndarray, linear_first: bool
) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """(scale, shift) such that ``op`` of the linear output and ``values`` is
    ``scale * x + shift``; None for ``values / x``, which is not affine."""
    if op == "Add":
        return None, values
    if op == "Mul":
        return values, None
    if op == "Sub":
        return (None, -values) if linear_first else (-np.ones_like(values), values)
    if linear_first and np.all(values != 0):
        return 1.0 / values, None
    return None


def _matmul_add_to_gemm(add: gs.Node, scope: _Scope) -> bool:
    """MatMul(A, B) + C as Gemm(A, B, C): A of rank 2, B a constant 2-D float matrix, C a
    constant that is the same for every row."""
    if scope.opset < 7:
        return False
    found = [
        (matmul, add.inputs[1 - position])
        for position, tensor in enumerate(add.inputs)
        if (matmul := scope.producer(tensor)) is not None
        and matmul.op == "MatMul"
        and scope.only_reader(tensor, add)
    ]
    if not found:
        return False
    matmul, bias = found[0]
    left, right = matmul.inputs
    weights = _float_constant(right)
    if (
        weights is None
        or weights.ndim != 2
        or weights.dtype not in _GEMM_TYPES
        or left.shape is None
        or len(left.shape) != 2
        or isinstance(left, gs.Constant)
    ):
        return False
    values = _float_constant(bias)
    if values is None or values.dtype != weights.dtype:
        return False
    if _per_channel(values, 2, weights.shape[1]) is None:
        return False
    matmul.op = "Gemm"  # MatMul has no attributes; Gemm's defaults are alpha=beta=1, no transposes
    matmul.inputs.append(bias)
    _take_output(matmul, add)
    return True


# ------------------------------------------------------------------------------------ Pad


# For each op that takes a Pad: the padding value that its own pads stand for.
_PAD_TAKERS = {"Conv": 0.0, "AveragePool": 0.0, "MaxPool": -np.inf}


def _fuse_pad(node: gs.Node, scope: _Scope) -> bool:
    tensor = node.inputs[0]
    pad = scope.producer(tensor)
    if pad is None or pad.op != "Pad" or not scope.only_reader(tensor, node):
        return False
    if node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return False
    rank = _input_rank(node)
    padding = _spatial_padding(pad, rank) if rank is not None else None
    if padding is None:
        return False
    added, value = padding
    if value != _PAD_TAKERS[node.op]:
        return False
    current = list(node.attrs.get("pads", [0] * len(added)))
    if len(current) != len(added):
        return False
    pads = [a + b for a, b in zip(current, added, strict=True)]
    if node.op != "Conv" and not _pool_takes(node, current, pads):
        return False
    node.attrs["pads"] = pads
    if node.op == "AveragePool":
        node.attrs["count_include_pad"] = 1
    node.inputs[0] = pad.inputs[0]
    pad.inputs.clear()
    pad.outputs.clear()
    return True


def _input_rank(node: gs.Node) -> int | None:
    if node.op == "Conv":
        weight = node.inputs[1]
        return len(weight.shape) if weight.shape is not None else None
    return len(node.attrs["kernel_shape"]) + 2 if "kernel_shape" in node.attrs else None


def _pool_takes(node: gs.Node, current: list[int], pads: list[int]) -> bool:
    """Whether a pool with ``pads`` computes what Pad + the pool with ``current`` pads did."""
    if node.attrs.get("ceil_mode", 0) or len(node.outputs) != 1:
        return False
    kernel = list(node.attrs["kernel_shape"])
    if any(p >= k for p, k in zip(pads, kernel + kernel, strict=True)):
        return False
    if node.op == "AveragePool":
        # Padding the pool adds itself is left out of the average unless count_include_pad.
        return bool(node.attrs.get("count_include_pad", 0)) or not any(current)
    return True


def _spatial_padding(pad: gs.Node, rank: int) -> tuple[list[int], float] | None:
    """The pads a constant-mode Pad adds to the spatial axes of a rank-``rank`` tensor, in
    the ``[x1_begin, x2_begin, ..., x1_end, ...]`` layout of Conv and pools, and its value;
    None where it pads other axes, crops, or is not known."""
    if pad.attrs.get("mode", "constant") != "constant":
        return None
    if "pads" in pad.attrs or "paddings" in pad.attrs:  # Pad-1 and Pad-2 take attributes
        pads = list(pad.attrs.get("pads", pad.attrs.get("paddings")))
        value = float(pad.attrs.get("value", 0.0))
    else:
        pads_input = _present(pad, 1)
        if not isinstance(pads_input, gs.Constant):
            return None
        pads = [int(p) for p in read_constant(pads_input).reshape(-1)]
        value_input = _present(pad, 2)
        value = 0.0
        if value_input is not None:
            if not isinstance(value_input, gs.Constant) or read_constant(value_input).size != 1:
                return None
            value = float(read_constant(value_input).reshape(-1)[0])
        axes_input = _present(pad, 3)
        if axes_input is not None:
            pads = _pads_for_all_axes(pads, axes_input, rank)
            if pads is None:
                return None
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        return None
    if any(pads[axis] or pads[rank + axis] for axis in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2 :], value


def _pads_for_all_axes(pads: list[int], axes_input: gs.Tensor, rank: int) -> list[int] | None:
    """Pad-18's pads for some ``axes`` spread over all axes (zero for the others)."""
    if not isinstance(axes_input, gs.Constant):
        return None
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in read_constant(axes_input).ravel()]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return None
    if any(not 0 <= a < rank for a in axes):
        return None
    full = [0] * (2 * rank)
    for position, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[position], pads[len(axes) + position]
    return full
