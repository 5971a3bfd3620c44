"""Gradient checking for the autodiff tests: rules against central finite differences.

A case is a function of a dtype that returns a small forward graph (nodes, inputs, constants,
the tensors to differentiate and the outputs to score). The loss is ``Σ sum(output · R)``
with fixed random ``R``, so every element of every output matters. In float64, onnx's
reference evaluator runs both the forward graph (for the finite differences) and the
backward graph; they must agree to 1e-4 relative. In float32, onnxruntime runs the same
graphs, and its forward outputs and gradients must match the float64 ones: that proves the
rules against onnxruntime's own semantics of each op, where they could differ from the
reference's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxslim.distill.autodiff import TensorTable, build_backward

FD_STEP = 1e-6
FD_RTOL = 1e-4
FLOAT32_RTOL = 2e-4
# Elements probed one by one per tensor; larger tensors also get random directions.
MAX_ELEMENTS = 48


@dataclass
class Case:
    """A forward graph to differentiate; float arrays are given in float64 and cast."""

    nodes: list[onnx.NodeProto]
    inputs: dict[str, np.ndarray]
    wrt: Sequence[str]
    outputs: Sequence[str]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    # declared input shapes when they should not be the static ones (symbolic dims)
    declared: dict[str, list] = field(default_factory=dict)
    straight_through: Sequence[str] = ()


CaseBuilder = Callable[[np.dtype, np.random.Generator], Case]


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 arrays (the cases' floats) in ``dtype``; others (float32 scales) as they are."""
    return array.astype(dtype) if array.dtype == np.float64 else array


def _info(name: str, array: np.ndarray, shape=None) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem, list(array.shape) if shape is None else shape)


def _loss_nodes(case: Case, weights: dict[str, np.ndarray], dtype) -> list[onnx.NodeProto]:
    nodes, terms = [], []
    for output in case.outputs:
        weight = f"loss_weight_{output}"
        nodes.append(helper.make_node("Mul", [output, weight], [f"{output}_weighted"]))
        nodes.append(
            helper.make_node("ReduceSum", [f"{output}_weighted"], [f"{output}_sum"], keepdims=0)
        )
        terms.append(f"{output}_sum")
    nodes.append(helper.make_node("Sum", terms, ["loss"]))
    return nodes


def _forward_model(case: Case, dtype, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = {k: _cast(v, dtype) for k, v in case.inputs.items()}
    constants = {k: _cast(v, dtype) for k, v in case.constants.items()}
    constants.update({f"loss_weight_{k}": v.astype(dtype) for k, v in weights.items()})
    graph = helper.make_graph(
        [*case.nodes, *_loss_nodes(case, weights, dtype)],
        "gradcheck",
        [_info(k, v, case.declared.get(k)) for k, v in inputs.items()],
        [
            helper.make_tensor_value_info(
                "loss", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), []
            )
        ],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    opsets = [helper.make_opsetid("", case.opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return onnx.shape_inference.infer_shapes(model)


def _output_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """The outputs' shapes, by running the forward graph once (without loss weights)."""
    graph = helper.make_graph(
        case.nodes,
        "shapes",
        [_info(k, v) for k, v in case.inputs.items()],
        [helper.make_tensor_value_info(o, 0, None) for o in case.outputs],
        [numpy_helper.from_array(v, k) for k, v in case.constants.items()],
    )
    opsets = [helper.make_opsetid("", case.opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    values = _float64_runner(model)(dict(case.inputs))
    return {name: np.asarray(v).shape for name, v in zip(case.outputs, values, strict=True)}


def _backward_model(forward: onnx.ModelProto, case: Case) -> tuple[onnx.ModelProto, list[str]]:
    graph = forward.graph
    table = TensorTable.of(graph)
    backward = build_backward(
        graph,
        "loss",
        list(case.wrt),
        opset=case.opset,
        table=table,
        straight_through=case.straight_through,
    )
    assert not backward.without_gradient, f"no gradient for {backward.without_gradient}"
    names = [backward.gradients[w] for w in case.wrt]
    elem = graph.output[0].type.tensor_type.elem_type
    outputs = [helper.make_tensor_value_info("loss", elem, [])]
    outputs += [
        helper.make_tensor_value_info(n, table.elem_type(n), table.shape(n)) for n in case.outputs
    ]
    outputs += [
        helper.make_tensor_value_info(n, elem, table.shape(w))
        for n, w in zip(names, case.wrt, strict=True)
    ]
    model = helper.make_model(
        helper.make_graph(
            [*backward.forward, *backward.nodes],
            "backward",
            list(graph.input),
            outputs,
            [*graph.initializer, *backward.initializers],
        ),
        opset_imports=forward.opset_import,
    )
    model.ir_version = forward.ir_version
    return model, names


class Erf(OpRun):
    """Exact erf: the reference's approximation is too coarse for finite differences."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf)(x).astype(x.dtype),)


class LayerNormalization(OpRun):
    """In the input's precision (the reference only stashes in float32)."""

    op_domain = ""

    def _run(self, x, scale, bias=None, axis=None, epsilon=None, stash_type=None):
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
        y = (x - mean) * inv * scale + (0 if bias is None else bias)
        return y.astype(x.dtype), mean.astype(x.dtype), inv.astype(x.dtype)


def _taps(kernel, dilations, strides, sizes):
    """For each kernel offset: (offset, slices of the padded input it reads)."""
    for offset in np.ndindex(*kernel):
        yield (
            offset,
            tuple(
                slice(k * d, k * d + s * (n - 1) + 1, s)
                for k, d, s, n in zip(offset, dilations, strides, sizes, strict=True)
            ),
        )


def _window_defaults(x, dilations, strides, group):
    """(spatial rank, dilations, strides, group) with ONNX's defaults filled in."""
    rank = x.ndim - 2
    return rank, dilations or [1] * rank, strides or [1] * rank, group or 1


class Conv(OpRun):
    """Grouped convolution by kernel offsets (the reference mishandles some groupings)."""

    op_domain = ""

    def _run(
        self,
        x,
        w,
        b=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        rank, dilations, strides, group = _window_defaults(x, dilations, strides, group)
        pads = pads or [0] * (2 * rank)
        if auto_pad in ("SAME_UPPER", b"SAME_UPPER"):
            total = [
                max(
                    0,
                    (-(-x.shape[2 + i] // strides[i]) - 1) * strides[i]
                    + (w.shape[2 + i] - 1) * dilations[i]
                    + 1
                    - x.shape[2 + i],
                )
                for i in range(rank)
            ]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        padded = np.pad(x, [(0, 0), (0, 0), *zip(pads[:rank], pads[rank:], strict=True)])
        kernel = w.shape[2:]
        sizes = [
            (padded.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
            for i in range(rank)
        ]
        n, c_out = x.shape[0], w.shape[0]
        grouped = w.reshape(group, c_out // group, w.shape[1], *kernel)
        out = np.zeros((n, group, c_out // group, *sizes), x.dtype)
        for offset, window in _taps(kernel, dilations, strides, sizes):
            patch = padded[(slice(None), slice(None), *window)].reshape(
                n, group, w.shape[1], *sizes
            )
            out += np.einsum("ngc...,goc->ngo...", patch, grouped[(..., *offset)])
        out = out.reshape(n, c_out, *sizes)
        return (out if b is None else out + b.reshape(1, -1, *[1] * rank),)


class ConvTranspose(OpRun):
    """Grouped transposed convolution by kernel offsets, explicit pads only."""

    op_domain = ""

    def _run(
        self,
        x,
        w,
        b=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,
        output_padding=None,
        output_shape=None,
        pads=None,
        strides=None,
    ):
        rank, dilations, strides, group = _window_defaults(x, dilations, strides, group)
        output_padding = output_padding or [0] * rank
        kernel, sizes = w.shape[2:], x.shape[2:]
        full = [
            strides[i] * (sizes[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(rank)
        ]
        if output_shape is not None:
            total = [full[i] - output_shape[i] for i in range(rank)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        pads = pads or [0] * (2 * rank)
        n, c_in = x.shape[:2]
        per_group = w.shape[1]
        grouped = w.reshape(group, c_in // group, per_group, *kernel)
        inputs = x.reshape(n, group, c_in // group, *sizes)
        out = np.zeros((n, group, per_group, *full), x.dtype)
        for offset, window in _taps(kernel, dilations, strides, sizes):
            out[(slice(None), slice(None), slice(None), *window)] += np.einsum(
                "ngc...,gco->ngo...", inputs, grouped[(..., *offset)]
            )
        out = out.reshape(n, group * per_group, *full)
        crop = tuple(slice(pads[i], full[i] - pads[rank + i]) for i in range(rank))
        out = out[(slice(None), slice(None), *crop)]
        return (out if b is None else out + b.reshape(1, -1, *[1] * rank),)


class Gelu(OpRun):
    """Exact, like Erf above."""

    op_domain = ""

    def _run(self, x, approximate=None):
        if approximate in ("tanh", b"tanh"):
            inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            return (0.5 * x * (1 + np.tanh(inner)),)
        return (0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),)


class Pad(OpRun):
    """Constant padding that also crops (negative pads)."""

    op_domain = ""

    def _run(self, x, pads, value=None, axes=None, mode=None):
        rank = x.ndim
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        full = [[0, 0] for _ in range(rank)]
        for i, axis in enumerate(axes):
            full[axis] = [int(pads[i]), int(pads[len(axes) + i])]
        grown = np.pad(x, [(max(b, 0), max(e, 0)) for b, e in full], constant_values=value or 0)
        crop = tuple(
            slice(max(-b, 0), grown.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(full)
        )
        return (grown[crop],)


_OVERRIDES = [Erf, Gelu, LayerNormalization, Conv, ConvTranspose, Pad]


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _float64_runner(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None
) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """onnxruntime where it runs the model in float64 (its semantics are what training runs
    on), else onnx's reference evaluator with the exact kernels above. Given ``feeds``, the
    reference also checks onnxruntime's precision: some of its float64 kernels (ReduceL2 in
    1.19) compute in float32, too coarse for finite differences."""
    evaluator = ReferenceEvaluator(model, new_ops=_OVERRIDES)
    try:
        session = _session(model)
    except Exception:  # no float64 kernel for some op
        return lambda feeds: evaluator.run(None, feeds)
    if feeds is not None:
        ours, reference = session.run(None, feeds)[0], evaluator.run(None, feeds)[0]
        if not np.allclose(ours, reference, rtol=1e-12, atol=0):
            return lambda feeds: evaluator.run(None, feeds)
    return lambda feeds: session.run(None, feeds)


def _relative(a: np.ndarray, b: np.ndarray, floor: float = 1e-4) -> float:
    """‖a - b‖ relative to the larger norm, or to ``floor`` when both are smaller (a gradient
    that is zero in theory comes out as rounding noise)."""
    scale = max(np.linalg.norm(a), np.linalg.norm(b), floor)
    return float(np.linalg.norm(a - b) / scale)


def _finite_differences(
    loss: Callable[[dict[str, np.ndarray]], float],
    feeds: dict[str, np.ndarray],
    name: str,
    gradient: np.ndarray,
    rng: np.random.Generator,
    elements: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(analytic, numeric) directional derivatives along unit vectors (``elements`` of them
    at most) and, for larger tensors, random directions."""
    value = feeds[name]
    directions = []
    count = value.size
    picked = range(count) if count <= elements else rng.choice(count, elements, replace=False)
    for index in picked:
        direction = np.zeros(count)
        direction[index] = 1.0
        directions.append(direction.reshape(value.shape))
    if count > elements:
        directions += [rng.standard_normal(value.shape) for _ in range(3)]
    analytic, numeric = [], []
    for direction in directions:
        step = FD_STEP * max(1.0, float(np.abs(value).max()))
        plus = loss({**feeds, name: value + step * direction})
        minus = loss({**feeds, name: value - step * direction})
        numeric.append((plus - minus) / (2 * step))
        analytic.append(float((gradient * direction).sum()))
    return np.array(analytic), np.array(numeric)


def check_gradients(
    build: CaseBuilder, seed: int = 0, elements: int = MAX_ELEMENTS
) -> dict[str, float]:
    """Run the checks on ``build``; the float64 relative errors per differentiated tensor.
    ``elements`` bounds the elements probed one by one per tensor."""
    case64 = build(np.dtype(np.float64), np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    weights = {name: rng.standard_normal(shape) for name, shape in _output_shapes(case64).items()}

    forward64 = _forward_model(case64, np.float64, weights)
    backward64, names = _backward_model(forward64, case64)
    onnx.checker.check_model(backward64)
    feeds64 = dict(case64.inputs)
    reference = _float64_runner(backward64)(feeds64)
    gradients64 = dict(zip(case64.wrt, reference[1 + len(case64.outputs) :], strict=True))
    run_forward = _float64_runner(forward64, feeds64)

    def loss(feeds: dict[str, np.ndarray]) -> float:
        return float(run_forward(feeds)[0])

    errors = {}
    for name in case64.wrt:
        assert gradients64[name].shape == case64.inputs[name].shape, name
        analytic, numeric = _finite_differences(
            loss, feeds64, name, gradients64[name], rng, elements
        )
        errors[name] = _relative(analytic, numeric)
        assert errors[name] <= FD_RTOL, (name, errors[name], analytic[:6], numeric[:6])

    case32 = build(np.dtype(np.float32), np.random.default_rng(seed))
    forward32 = _forward_model(case32, np.float32, weights)
    backward32, _ = _backward_model(forward32, case32)
    results = _session(backward32).run(
        None, {k: _cast(v, np.float32) for k, v in case32.inputs.items()}
    )
    outputs64 = reference[1 : 1 + len(case64.outputs)]
    for name, got, expected in zip(
        case64.outputs, results[1 : 1 + len(case64.outputs)], outputs64, strict=True
    ):
        assert _relative(got, expected) <= FLOAT32_RTOL, f"onnxruntime's {name} differs"
    # float32 rounding noise scales with the largest gradient of the case
    floor = 1e-3 * max(float(np.linalg.norm(g)) for g in gradients64.values())
    for name, got in zip(case32.wrt, results[1 + len(case32.outputs) :], strict=True):
        error = _relative(got.astype(np.float64), gradients64[name], max(floor, 1e-4))
        assert error <= FLOAT32_RTOL, (f"onnxruntime's gradient of {name}", error)
    return errors
