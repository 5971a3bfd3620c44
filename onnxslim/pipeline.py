"""Passes and the manager that runs them.

A pass author writes a dataclass with typed options and one ``run`` method; the manager does
everything around it: dead-code removal and topological order after each change, timing,
node and weight statistics, fixed-point repetition and, on request, verification after every
pass.

>>> from dataclasses import dataclass
>>> import onnx_graphsurgeon as gs
>>> @dataclass
... class DropNothing(Pass):
...     '''An example pass that never changes anything.'''
...     def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
...         return False
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import tempfile
import textwrap
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from onnxslim.checking import check_model, is_valid
from onnxslim.errors import (
    InputDataError,
    OnnxSlimError,
    PassCrashError,
    PassError,
    PipelineSpecError,
    VerificationError,
)
from onnxslim.model import Model, copy_graph, is_graph_attribute, save
from onnxslim.validate import validate

__all__ = [
    "Pass",
    "PassContext",
    "PassRecord",
    "FixedPoint",
    "Step",
    "flatten_steps",
    "keep_if_valid",
    "PassManager",
    "OptionSpec",
    "PassTable",
    "DEFAULT_MAX_ITERATIONS",
]

DEFAULT_MAX_ITERATIONS = 10


@dataclass
class PassTable:
    """A table a pass reports (per-layer SQNR, pruned channel groups, ...).

    Cells are plain values (str, int, float, None) so that the table renders with rich and
    serializes to JSON unchanged.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass
class PassContext:
    """What some passes need and most ignore.

    ``providers`` are execution providers for passes that evaluate the graph, ``log`` takes
    one-line notes that end up in the report (e.g. why a pass left something untouched).
    ``original`` gives the path of a file holding the untouched input model, for passes that
    compare with it or learn from it (``needs_original = True``); ``stages`` collects what
    ``measure`` steps found along the pipeline. ``metric`` publishes a figure (an output
    cosine, an agreement rate) that reports show in their main table and JSON.
    """

    model: Model
    providers: Sequence[str] = ("cpu",)
    target_opset: int | None = None
    original: Callable[[], Path] | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[PassTable] = field(default_factory=list)
    stages: list[Any] = field(default_factory=list)
    metrics: dict[str, float | str] = field(default_factory=dict)

    def original_path(self) -> Path:
        """The untouched input model on disk (written on first use when it had no file)."""
        if self.original is None:
            raise PassError(
                "this pass needs the original model, which onnxslim.optimize provides; "
                "give it as an option instead"
            )
        return self.original()

    def log(self, message: str) -> None:
        self.notes.append(message)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Attach a table to this pass's record; the optimize report shows it."""
        self.tables.append(PassTable(title, list(columns), [list(row) for row in rows]))

    def metric(self, name: str, value: float | str) -> None:
        """Publish a figure of this pass's result, e.g. ``ctx.metric("output_cosine", 0.998)``:
        reports show it as a row of their main table and as ``metrics`` in JSON, whatever
        the pass (a snake_case name reads as words there)."""
        self.metrics[name] = value if isinstance(value, str) else float(value)


@dataclass(frozen=True)
class OptionSpec:
    """One option of a pass, as ``onnxslim passes`` lists it and the pass's command offers it.

    ``help`` is the field's ``metadata["help"]`` or, more readably, its attribute docstring:
    a string literal on the line after the field. The docstrings are read from the pass's
    source only when ``help`` is asked for: parsing every pass's source took half a second of
    each ``optimize`` call, which only needs names, types and defaults.
    """

    name: str
    type_name: str
    default: Any
    annotation: Any
    given_help: str = ""
    owner: type | None = field(default=None, compare=False, repr=False)

    @property
    def help(self) -> str:
        if self.given_help or self.owner is None:
            return self.given_help
        return _attribute_docs(self.owner).get(self.name, "")


class Pass:
    """Base class for graph rewrites.

    Subclasses are dataclasses whose fields are their options. ``run`` rewrites ``graph`` in
    place and returns True when it changed anything. Set ``lossless = False`` for passes that
    change numerics on purpose (quantization, pruning); ``verify_each`` then checks only
    validity for them, not equality of outputs. Set ``needs_original = True`` for passes that
    read the untouched input model through ``ctx.original_path()``, and ``prepare`` to a
    pipeline spec that should run before the pass (see :meth:`prepare_steps`). Set
    ``accepts_unloadable_input = True`` for passes that exist to turn a model onnxruntime
    cannot load into one it can (another opset): the input check then asks only for valid
    ONNX, and the pass answers for its own result.
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    needs_original: ClassVar[bool] = False
    accepts_unloadable_input: ClassVar[bool] = False
    prepare: ClassVar[str | None] = None

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement run(graph, ctx)")

    def prepare_steps(self) -> str | None:
        """The lossless pipeline (a spec string) that should run right before this pass, or
        None: the class's ``prepare`` unless a pass's options change it. ``optimize`` runs it
        unless asked not to (``prepare=False``, ``--no-prepare``).

        Compression passes set ``prepare = DEFAULT_PIPELINE``: exports hide weights behind
        Transpose, Cast and Constant nodes and BatchNormalizations, which folding and fusing
        turn into plain initializers the pass can quantize, prune or convert.
        """
        return self.prepare

    @classmethod
    def description(cls) -> str:
        """The first paragraph of the docstring: what the pass is for."""
        doc = inspect.getdoc(cls) or ""
        return doc.split("\n\n")[0].replace("\n", " ").strip()

    @classmethod
    def options(cls) -> list[OptionSpec]:
        if not dataclasses.is_dataclass(cls):
            return []
        hints = _type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            annotation = hints.get(f.name, Any)
            given = f.metadata.get("help") or ""
            specs.append(
                OptionSpec(f.name, _type_name(annotation), default, annotation, given, owner=cls)
            )
        return specs

    def label(self) -> str:
        """The pass as a spec item, with the options that differ from their defaults."""
        changed = [
            f"{spec.name}={_option_text(getattr(self, spec.name))}"
            for spec in self.options()
            if getattr(self, spec.name) != spec.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


def _in_topological_order(graph: gs.Graph) -> bool:
    """Whether every node of ``graph`` comes after the producers of its inputs, checked in one
    walk. Most rewrites only remove nodes or rewire inputs, which keeps the order; gs's
    toposort recomputes every node's depth, about a quarter of the pipeline's time on
    TorchScript exports that take ten rounds (shufflenet's channel shuffles). Graphs with
    subgraphs or local functions answer False: their order also depends on outer names that
    subgraphs read, which gs's toposort accounts for."""
    if graph.functions:
        return False
    unproduced = {id(tensor) for node in graph.nodes for tensor in node.outputs}
    for node in graph.nodes:
        if any(is_graph_attribute(value) for value in node.attrs.values()):
            return False
        if any(id(tensor) in unproduced for tensor in node.inputs):
            return False
        unproduced.difference_update(id(tensor) for tensor in node.outputs)
    return True


def _option_text(value: Any) -> str:
    """An option value as a spec string would write it (paths without PosixPath(...))."""
    return str(value) if isinstance(value, Path) else repr(value)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a pass class (resolving them is slow; passes run often)."""
    return typing.get_type_hints(cls)


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Docstrings written under a class's annotated fields (base classes first), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = node.body if (node := _class_definition(klass)) is not None else []
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _class_definition(klass: type) -> ast.ClassDef | None:
    """The ``class`` statement of ``klass``: found by its qualified name in its module's parsed
    source (each module parsed once), else through ``inspect.getsource`` (classes defined in
    functions). ``inspect.getsource`` alone parses the module again for every class and scans
    ``sys.modules`` the first time: 0.23 s of every CLI start, which builds every pass
    command's option help."""
    path = getattr(sys.modules.get(klass.__module__), "__file__", None)
    node: ast.AST | None = _parsed_module(path) if path else None
    for part in klass.__qualname__.split("."):
        node = next(
            (
                child
                for child in getattr(node, "body", [])
                if isinstance(child, ast.ClassDef) and child.name == part
            ),
            None,
        )
    if isinstance(node, ast.ClassDef):
        return node
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):  # no source: built in a string, frozen
        return None
    first = tree.body[0] if tree.body else None
    return first if isinstance(first, ast.ClassDef) else None


@functools.cache
def _parsed_module(path: str) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None


def _type_name(annotation: Any) -> str:
    if annotation in (int, float, str, bool):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@dataclass
class FixedPoint:
    """Steps repeated until a round changes nothing, at most ``max_iterations`` rounds."""

    steps: list[Step]
    max_iterations: int = DEFAULT_MAX_ITERATIONS

    def label(self) -> str:
        inner = ",".join(step.label() for step in self.steps)
        return f"[{inner}]*{self.max_iterations}"


Step = Pass | FixedPoint


def keep_if_valid(ctx: PassContext, rewrite: Callable[[], bool], what: str) -> bool:
    """Run ``rewrite`` (which edits ``ctx.model.graph`` in place) and keep its result only if
    onnx.checker accepts it, strictly when the model passed the strict check before.

    A rewrite that raises, or leaves a model the checker rejects, is undone: the graph is
    restored and ``ctx`` notes why, so a pass that cannot handle a model leaves it untouched
    instead of breaking it. Errors in what the user gave (``PipelineSpecError``,
    ``InputDataError``) still propagate.
    """
    graph = ctx.model.graph
    strict = is_valid(ctx.model, full=True)
    saved = copy_graph(graph)
    try:
        changed = bool(rewrite())
        if changed:
            graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()
            check_model(ctx.model, full=strict)
        return changed
    except (PipelineSpecError, InputDataError):
        raise
    except Exception as exc:
        graph.nodes, graph.inputs, graph.outputs = saved.nodes, saved.inputs, saved.outputs
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        ctx.log(f"{what} left the model untouched: {reason[:300]}")
        return False


def flatten_steps(steps: Sequence[Step]) -> Iterator[Pass]:
    """Every pass in ``steps``, fixed-point groups opened up, in order."""
    for step in steps:
        if isinstance(step, FixedPoint):
            yield from flatten_steps(step.steps)
        else:
            yield step


@dataclass
class PassRecord:
    """What one run of one pass did."""

    name: str
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    initializer_bytes_before: int
    initializer_bytes_after: int
    round: int | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[PassTable] = field(default_factory=list)
    metrics: dict[str, float | str] = field(default_factory=dict)


class PassManager:
    """Runs steps in order and records what each pass did.

    ``verify_each`` checks the model after every pass that changed it: onnx.checker with
    shape inference, and for lossless passes equal outputs against the model before the pass.
    The first pass that breaks the model is named in the VerificationError.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        verify_each: bool = False,
        on_record: Callable[[PassRecord], None] | None = None,
    ) -> None:
        self.steps = list(steps)
        self.verify_each = verify_each
        self.on_record = on_record
        self.records: list[PassRecord] = []

    def run(self, model: Model, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext(model=model)
        self.records = []
        self._stats: tuple[int, int] | None = None
        with tempfile.TemporaryDirectory(prefix="onnxslim-verify-") as scratch:
            self._scratch = Path(scratch)
            self._run_steps(self.steps, model, ctx, round_number=None)
        return self.records

    def _run_steps(
        self, steps: Sequence[Step], model: Model, ctx: PassContext, round_number: int | None
    ) -> bool:
        changed = False
        for step in steps:
            if isinstance(step, FixedPoint):
                changed |= self._run_fixed_point(step, model, ctx)
            else:
                changed |= self._run_pass(step, model, ctx, round_number)
        return changed

    def _run_fixed_point(self, group: FixedPoint, model: Model, ctx: PassContext) -> bool:
        changed_any = False
        for round_number in range(1, group.max_iterations + 1):
            if not self._run_steps(group.steps, model, ctx, round_number):
                break
            changed_any = True
        return changed_any

    def _run_pass(
        self, step: Pass, model: Model, ctx: PassContext, round_number: int | None
    ) -> bool:
        graph = model.graph
        nodes_before, bytes_before = self._stats or (model.node_count(), model.initializer_bytes())
        before = self._snapshot(model, step) if self.verify_each else None
        ctx.notes = []
        ctx.tables = []
        ctx.metrics = {}
        start = time.perf_counter()
        try:
            changed = bool(step.run(graph, ctx))
            if changed:
                graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
                if not _in_topological_order(graph):
                    graph.toposort(recurse_subgraphs=True)
        except OnnxSlimError:
            raise
        except Exception as exc:
            raise PassCrashError(
                f"internal error in pass '{step.name}': {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback, and please report it)"
            ) from exc
        seconds = time.perf_counter() - start
        # Counting walks the whole graph: after a pass that changed nothing, reuse the counts.
        if changed:
            self._stats = (model.node_count(), model.initializer_bytes())
        else:
            self._stats = (nodes_before, bytes_before)
        record = PassRecord(
            name=step.label(),
            changed=changed,
            seconds=seconds,
            nodes_before=nodes_before,
            nodes_after=self._stats[0],
            initializer_bytes_before=bytes_before,
            initializer_bytes_after=self._stats[1],
            round=round_number,
            notes=list(ctx.notes),
            tables=list(ctx.tables),
            metrics=dict(ctx.metrics),
        )
        self.records.append(record)
        if self.on_record:
            self.on_record(record)
        if self.verify_each and changed:
            self._verify(model, before, step)
        return changed

    def _snapshot(self, model: Model, step: Pass) -> Path | None:
        """The model before a lossless pass, on disk, to compare outputs against afterwards."""
        if not step.lossless:
            return None
        path = self._scratch / f"before-{len(self.records)}.onnx"
        return save(model, path)

    def _verify(self, model: Model, before: Path | None, step: Pass) -> None:
        try:
            check_model(model)
        except OnnxSlimError as exc:
            raise VerificationError(f"pass '{step.name}' produced an invalid model: {exc}") from exc
        if before is None:
            return
        after = save(model, self._scratch / f"after-{len(self.records)}.onnx")
        report = validate(before, after, samples=1, atol=1e-5, rtol=1e-4, progress=False)
        if not report.passed:
            raise VerificationError(
                f"pass '{step.name}' changed the outputs: {report.failure_summary()}"
            )
