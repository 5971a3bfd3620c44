"""The native backend's two models, built from the student, the loss and the optimizer.

* The **step model** trains one step in one ``session.run``: the student's forward pass, the
  loss, the backward pass (:mod:`onnxslim.distill.autodiff`) and the optimizer update
  (:mod:`onnxslim.distill.optimizers`). Parameters and optimizer state are inputs, their new
  values outputs, so the caller can bind each step's outputs to the next step's inputs.
* The **eval model** is the forward pass and the loss, returning the loss and the matched
  student outputs, for validation.

Both take the trained parameters as inputs rather than initializers; every other constant of
the student stays an initializer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import helper

from onnxslim.distill.autodiff import TensorTable, build_backward
from onnxslim.distill.losses import LossGraph
from onnxslim.distill.optimizers import OptimizerSettings, build_optimizer_step

__all__ = ["TrainingGraphs", "build_training_graphs", "inferred_graph"]

# Initializers above this size are left out of shape inference: weights, whose values no rule
# reads (their shapes come from the graph inputs standing in for them).
_INFERENCE_VALUE_LIMIT = 1 << 16


@dataclass
class TrainingGraphs:
    """The step and eval models, and how their inputs and outputs line up.

    ``parameters`` are trained, in order; ``state[p]`` lists (input, output) tensor names of
    each optimizer state of ``p``; ``updated[p]`` names the step model's output holding the new
    value of ``p``. ``data_inputs`` are what each batch feeds (student inputs, teacher targets,
    labels). ``frozen`` lists parameters left out because the loss does not depend on them
    through anything differentiable.
    """

    step_model: onnx.ModelProto
    eval_model: onnx.ModelProto
    parameters: list[str]
    updated: dict[str, str]
    state: dict[str, list[tuple[str, str]]]
    data_inputs: list[str]
    loss: str
    eval_outputs: list[str]
    frozen: list[str] = field(default_factory=list)


def _value_info(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def inferred_graph(graph: onnx.GraphProto, opset_import, ir_version: int) -> onnx.GraphProto:
    """``graph`` with value_info from onnx shape inference, run on a copy whose large
    initializers are graph inputs (so a model of any size infers quickly)."""
    skeleton = onnx.GraphProto()
    skeleton.CopyFrom(graph)
    del skeleton.initializer[:]
    for tensor in graph.initializer:
        if len(tensor.raw_data) > _INFERENCE_VALUE_LIMIT or tensor.HasField("data_location"):
            skeleton.input.append(_value_info(tensor))
        else:
            skeleton.initializer.append(tensor)
    model = helper.make_model(skeleton, opset_imports=opset_import)
    model.ir_version = ir_version
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    result = onnx.GraphProto()
    result.CopyFrom(graph)
    del result.value_info[:]
    result.value_info.extend(inferred.value_info)
    return result


def build_training_graphs(
    student: onnx.ModelProto,
    loss: LossGraph,
    parameters: Sequence[str],
    optimizer: OptimizerSettings,
    *,
    eval_outputs: Sequence[str],
    straight_through: Collection[str] = (),
) -> TrainingGraphs:
    """The models that train ``parameters`` (initializer names of ``student``) on ``loss``.

    Raises :class:`~onnxslim.distill.errors.GradientError` when an op between a parameter and
    the loss has no gradient rule.
    """
    opset = loss.opset
    chosen = set(parameters)
    by_name = {t.name: t for t in student.graph.initializer}
    graph = onnx.GraphProto()
    graph.CopyFrom(student.graph)
    graph.name = "distill_step"
    del graph.initializer[:]
    graph.initializer.extend(t for t in student.graph.initializer if t.name not in chosen)
    data_inputs = [i.name for i in student.graph.input if i.name not in by_name]
    del graph.input[:]
    graph.input.extend(i for i in student.graph.input if i.name not in by_name)
    graph.input.extend(_value_info(by_name[name]) for name in parameters)
    loss.append_to(graph)
    data_inputs += [i.name for i in loss.inputs]
    graph = inferred_graph(graph, student.opset_import, student.ir_version)
    table = TensorTable.of(graph)
    backward = build_backward(
        graph,
        loss.output,
        list(parameters),
        opset=opset,
        table=table,
        straight_through=straight_through,
    )
    trained = [p for p in parameters if p in backward.gradients]
    types = {i.name: i.type for i in graph.input}
    update = build_optimizer_step(
        {p: (backward.gradients[p], types[p]) for p in trained}, optimizer, opset=opset
    )
    frozen = backward.without_gradient
    constants = [by_name[p] for p in frozen]

    loss_type = onnx.TypeProto()
    loss_type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    loss_type.tensor_type.shape.SetInParent()
    loss_output = helper.make_value_info(loss.output, loss_type)
    data = [i for i in graph.input if i.name in set(data_inputs)]
    parameter_inputs = [i for i in graph.input if i.name in set(trained)]
    state = {p: [update.state[(p, s)] for s in optimizer.state_names] for p in trained}
    state_types = {i.name: i for i in update.inputs}

    step_graph = helper.make_graph(
        [*backward.forward, *backward.nodes, *update.nodes],
        "distill_step",
        [*data, *parameter_inputs, *update.inputs],
        [loss_output]
        + [helper.make_value_info(update.updated[p], types[p]) for p in trained]
        + [
            helper.make_value_info(out, state_types[inp].type)
            for p in trained
            for inp, out in state[p]
        ],
        [*graph.initializer, *constants, *backward.initializers, *update.initializers],
    )
    outputs = {o.name: o for o in student.graph.output}
    eval_graph = helper.make_graph(
        list(graph.node),
        "distill_eval",
        [*data, *parameter_inputs],
        [loss_output, *(outputs[name] for name in eval_outputs)],
        [*graph.initializer, *constants],
    )
    models = []
    for body in (step_graph, eval_graph):
        model = helper.make_model(body, opset_imports=student.opset_import)
        model.ir_version = student.ir_version
        models.append(model)
    return TrainingGraphs(
        step_model=models[0],
        eval_model=models[1],
        parameters=trained,
        updated={p: update.updated[p] for p in trained},
        state=state,
        data_inputs=data_inputs,
        loss=loss.output,
        eval_outputs=list(eval_outputs),
        frozen=frozen,
    )
