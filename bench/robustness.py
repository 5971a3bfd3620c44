"""Robustness: malformed models, fuzzed models, killed and concurrent writes, and the memory
of infer-shapes on a model with one long vector.

    .venv/bin/python bench/robustness.py [--quick] [--seed N] [--json results.json]

Four measurements, each against a target the issue tracker set:

- **malformed inputs**: hand-made broken files (empty, random, text, truncated at many points,
  bit flips, data that does not fit its shape, an out-of-range sparse index, type mismatches,
  unknown element types and opsets, a recursive function, names that are not UTF-8, external
  data outside the model's folder...) through the commands that read models. An oracle
  decides which are invalid ONNX: onnx.checker rejects them, or strict onnx.checker rejects
  them and onnxruntime cannot load them either (flipped bits often leave a valid model).
  Target: every invalid one exits 2 with one line.
- **fuzzed mutants** of the onnx wheel's backend node models (an op renamed, an attribute
  dropped or changed, a type, dim, opset or IR version changed, an input renamed, an output
  duplicated, data cut short, external data pointed outside, bytes flipped) through
  ``optimize``. Target: no exit 0 with an output that onnx.checker rejects or onnxruntime
  cannot load when it could load the mutant; no internal error (exit 3) and no crash.
- **kills**: a writer saving a model with external data over another is SIGKILLed at a random
  moment; then several writers save to one path at once while a reader reads. Target: every
  read finds one writer's model with that writer's data (old or new), and the next write
  leaves no temp files.
- **infer-shapes on a 100M-element vector** (a 400 MB model): peak resident memory of
  ``optimize --passes infer-shapes`` in a fresh process, above its imports. Target: at most
  2x the model's size.

Each file runs in a worker process fed over a pipe; a worker that dies or hangs is replaced,
and its case counted as a crash or a timeout. ``--quick`` runs fewer mutants and kills and a
10M-element vector.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from _measure import measure_call
from _report import consoles, work_folder
from onnx import TensorProto, helper, numpy_helper
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "tiny_cnn.onnx"
SECRET = b"ROBUSTNESS-SECRET" * 64
TASK_TIMEOUT = 120.0
COMMANDS = {
    "optimize": ["optimize", "{model}", "-o", "{out}"],
    "validate": ["validate", "{model}", str(FIXTURE)],
    "inspect": ["inspect", "{model}"],
    "quantize": ["quantize", "{model}", "--activations", "none", "-o", "{out}"],
    "float16": ["float16", "{model}", "-o", "{out}"],
    "convert": ["convert", "{model}", "--opset", "18", "-o", "{out}"],
    "prune": ["prune", "{model}", "-o", "{out}"],
}


# ------------------------------------------------------------------------ malformed files


def _graph_model(nodes, inputs, outputs, initializers=(), *, opset=17, **fields):
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, list(initializers), sparse_initializer=fields.pop("sparse", [])
    )
    opsets = [helper.make_opsetid("", opset)] + fields.pop("extra_opsets", [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8, **fields)


def _vector(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def malformed_files(folder: Path, rng: random.Random) -> dict[str, Path]:
    """Broken models by name, written into ``folder`` (external data cases in their own
    subfolders, with a secret file beside them that must never reach an output)."""
    base = FIXTURE.read_bytes()
    x, y = _vector("x", [1, 16]), _vector("y", [1, 16])
    matmul = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    no_data = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[16, 16])
    half = numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32), "w")
    half.raw_data = half.raw_data[: len(half.raw_data) // 2]
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(4, np.float32), "W"),
        numpy_helper.from_array(np.array([0, 1, 2, 9999], np.int64), "W_idx"),
        [16, 16],
    )
    undefined = onnx.TensorProto(name="W", data_type=TensorProto.UNDEFINED, dims=[16, 16])
    undefined.raw_data = b"\0" * 1024
    ints = numpy_helper.from_array(np.ones((1, 16), np.int64), "W")
    recursive = helper.make_function(
        "local",
        "Rec",
        ["a"],
        ["b"],
        [helper.make_node("Rec", ["a"], ["b"], domain="local")],
        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )
    relu = [helper.make_node("Relu", ["x"], ["y"], name="N")]
    contents: dict[str, bytes | onnx.ModelProto] = {
        "empty": b"",
        "random bytes": rng.randbytes(4096),
        "text": b"this is not a model\n" * 40,
        "dims without data": _graph_model(matmul, [x], [y], [no_data]),
        "weight half its size": _graph_model(
            [helper.make_node("Conv", ["x", "w"], ["y"])],
            [_vector("x", [1, 3, 8, 8])],
            [_vector("y", [1, 64, 6, 6])],
            [half],
        ),
        "sparse index out of range": _graph_model(matmul, [x], [y], sparse=[sparse]),
        "undefined element type": _graph_model(matmul, [x], [y], [undefined]),
        "type mismatch": _graph_model(
            [helper.make_node("Add", ["x", "W"], ["y"])], [x], [y], [ints]
        ),
        "opset 99": _graph_model(relu, [x], [y], opset=99),
        "opset 0": _graph_model(relu, [x], [y], opset=0),
        "recursive function": _graph_model(
            [helper.make_node("Rec", ["x"], ["y"], domain="local")],
            [x],
            [y],
            functions=[recursive],
            extra_opsets=[helper.make_opsetid("local", 1)],
        ),
        "non-UTF-8 name": _graph_model(relu, [x], [y])
        .SerializeToString()
        .replace(b"\x1a\x01N", b"\x1a\x01\xff"),
        "negative input dim": _graph_model(relu, [_vector("x", [-1, 16])], [y]),
        "dangling input": _graph_model([helper.make_node("Relu", ["nothing"], ["y"])], [x], [y]),
    }
    for cut in sorted(rng.sample(range(1, len(base)), 12)):
        contents[f"truncated at {cut}"] = base[:cut]
    for index in range(12):
        flipped = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        contents[f"bit flips {index}"] = bytes(flipped)
    files = {}
    for name, content in contents.items():
        path = folder / f"{len(files):03d}.onnx"
        path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
        files[name] = path
    for escape in ("relative", "absolute", "symlinked file", "symlinked folder"):
        files[f"external data outside: {escape}"] = _escaping_model(
            folder / f"escape-{len(files)}", escape
        )
    return files


def _escaping_model(root: Path, escape: str) -> Path:
    (root / "m").mkdir(parents=True)
    (root / "outside").mkdir()
    secret = root / "outside" / "secret.bin"
    secret.write_bytes(SECRET)
    location = {
        "relative": "../outside/secret.bin",
        "absolute": str(secret),
        "symlinked file": "w.bin",
        "symlinked folder": "weights/secret.bin",
    }[escape]
    if escape == "symlinked file":
        os.symlink(secret, root / "m" / "w.bin")
    elif escape == "symlinked folder":
        os.symlink(root / "outside", root / "m" / "weights")
    weight = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[16, 16])
    _make_external(weight, location, len(SECRET))
    model = _graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [_vector("x", [1, 16])],
        [_vector("y", [1, 16])],
        [weight],
    )
    path = root / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _make_external(tensor: onnx.TensorProto, location: str, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


# --------------------------------------------------------------------------- fuzzed mutants


def node_models() -> list[onnx.ModelProto]:
    """The onnx wheel's backend node test models (generated where the wheel does not ship
    them), those with at least one node."""
    import onnx.backend.test

    data = Path(onnx.backend.test.__file__).parent / "data" / "node"
    if data.is_dir():
        return [
            onnx.load(str(d / "model.onnx"))
            for d in sorted(data.iterdir())
            if (d / "model.onnx").is_file()
        ]
    from onnx.backend.test.case import node

    with np.errstate(all="ignore"):
        return [case.model for case in node.collect_testcases(None) if case.model is not None]


def _pick_node(proto: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto | None:
    return rng.choice(proto.graph.node) if proto.graph.node else None


def _op_type(proto, rng):
    if node := _pick_node(proto, rng):
        node.op_type = rng.choice(["NoSuchOp", "Relu", "Add", "Conv", "Reshape", "If"])


def _drop_attribute(proto, rng):
    node = _pick_node(proto, rng)
    if node is not None and node.attribute:
        del node.attribute[rng.randrange(len(node.attribute))]


def _attribute_value(proto, rng):
    node = _pick_node(proto, rng)
    ints = [a for a in node.attribute if a.type == onnx.AttributeProto.INT] if node else []
    if ints:
        rng.choice(ints).i = rng.choice([-(2**40), -3, -1, 0, 2, 7, 2**40])


def _element_type(proto, rng):
    values = [*proto.graph.input, *proto.graph.output]
    if values:
        rng.choice(values).type.tensor_type.elem_type = rng.randrange(0, 26)
    if proto.graph.initializer:
        rng.choice(proto.graph.initializer).data_type = rng.randrange(0, 26)


def _dims(proto, rng):
    dims = [
        d for v in (*proto.graph.input, *proto.graph.output) for d in v.type.tensor_type.shape.dim
    ]
    if dims:
        rng.choice(dims).dim_value = rng.choice([-1, 0, 1, 3, 2**31, 2**40])


def _opset(proto, rng):
    proto.opset_import[0].version = rng.choice([0, 1, 5, 7, 11, 13, 17, 21, 99])


def _ir_version(proto, rng):
    proto.ir_version = rng.choice([0, 1, 3, 7, 9, 11, 99])


def _rename_input(proto, rng):
    node = _pick_node(proto, rng)
    if node is not None and node.input:
        node.input[rng.randrange(len(node.input))] = "missing_tensor"


def _duplicate_output(proto, rng):
    if len(proto.graph.node) >= 1:
        node = rng.choice(proto.graph.node)
        copy = proto.graph.node.add()
        copy.CopyFrom(node)


def _cut_data(proto, rng):
    tensors = [t for t in proto.graph.initializer if t.HasField("raw_data") and t.raw_data]
    if tensors:
        tensor = rng.choice(tensors)
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data))]
    elif proto.graph.initializer:
        tensor = rng.choice(proto.graph.initializer)
        tensor.dims.append(rng.choice([2, 0, 1000]))


def _external_outside(proto, rng):
    if proto.graph.initializer:
        tensor = rng.choice(proto.graph.initializer)
        length = max(1, tensor.ByteSize())
        for field_name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(field_name)
        _make_external(tensor, rng.choice(["../secret.bin", "/etc/hostname"]), length)


MUTATORS: dict[str, Callable[[onnx.ModelProto, random.Random], None]] = {
    "op type": _op_type,
    "attribute dropped": _drop_attribute,
    "attribute value": _attribute_value,
    "element type": _element_type,
    "dim": _dims,
    "opset": _opset,
    "IR version": _ir_version,
    "input renamed": _rename_input,
    "output duplicated": _duplicate_output,
    "data cut": _cut_data,
    "external data outside": _external_outside,
}


def mutants(
    models: list[onnx.ModelProto], count: int, folder: Path, rng: random.Random
) -> list[Path]:
    """``count`` mutants (one or two mutations each, a quarter also with flipped bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "secret.bin").write_bytes(SECRET)
    paths = []
    for index in range(count):
        proto = onnx.ModelProto()
        proto.CopyFrom(rng.choice(models))
        for name in rng.sample(sorted(MUTATORS), rng.randint(1, 2)):
            MUTATORS[name](proto, rng)
        data = bytearray(proto.SerializeToString())
        if data and rng.random() < 0.25:
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path = folder / f"mutant-{index:04d}.onnx"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


# ------------------------------------------------------------------ worker: one file at a time


def _loads(path: Path) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def _oracle_valid(path: Path) -> bool:
    """Whether the file is valid ONNX as onnxslim's contract reads it: onnx parses it, the
    plain onnx.checker accepts it, and strict onnx.checker accepts it or onnxruntime loads it
    (some valid models fail strict shape inference)."""
    try:
        onnx.checker.check_model(str(path))
    except Exception:
        return False
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception:
        return _loads(path)
    return True


def run_case(task: dict) -> dict:
    """Run one command on one file in this process; what came of it."""
    from typer.testing import CliRunner

    from onnxslim.cli import app

    model, out = Path(task["model"]), Path(task["out"])
    args = [a.format(model=model, out=out) for a in COMMANDS[task["command"]]]
    input_loads = _loads(model)
    result = CliRunner().invoke(app, args)
    stderr = result.stderr.strip().splitlines()
    report = {
        "exit": result.exit_code,
        "one_line": len(stderr) == 1 and stderr[0].startswith("error: "),
        "input_valid": _oracle_valid(model),
        "input_loads": input_loads,
        "written": out.is_file(),
        "output_checks": None,
        "output_loads": None,
        "leaked": False,
    }
    if out.is_file():
        try:
            onnx.checker.check_model(str(out))
            report["output_checks"] = True
        except Exception:
            report["output_checks"] = False
        report["output_loads"] = _loads(out)
        report["leaked"] = any(
            SECRET[:32] in p.read_bytes() for p in out.parent.glob(f"{out.name}*") if p.is_file()
        )
        for path in out.parent.glob(f"{out.name}*"):
            path.unlink()
    return report


def worker() -> None:
    """Read tasks (JSON lines) on stdin, answer each with a JSON line on the original stdout;
    whatever else writes to stdout (libraries, C code) goes to stderr instead."""
    import onnxruntime

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    onnxruntime.set_default_logger_severity(4)
    for line in sys.stdin:
        task = json.loads(line)
        try:
            answer = run_case(task)
        except BaseException as exc:  # the harness itself failed: report it as such
            answer = {"exit": "harness", "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def run_cases(tasks: list[dict], log: Callable[[str], None]) -> list[dict]:
    """Each task in a worker process; a worker that dies or hangs is replaced."""
    results: list[dict] = []
    child = None
    for index, task in enumerate(tasks):
        if child is None or child.poll() is not None:
            child = subprocess.Popen(
                [sys.executable, __file__, "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
            )
        child.stdin.write(json.dumps(task) + "\n")
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], TASK_TIMEOUT)
        line = child.stdout.readline() if ready else ""
        if not line:
            timed_out = child.poll() is None
            child.kill()
            child.wait()
            child = None
            results.append({"exit": "timeout" if timed_out else "crash"})
        else:
            results.append(json.loads(line))
        results[-1].update(task)
        if (index + 1) % 25 == 0:
            log(f"{index + 1}/{len(tasks)} cases")
    if child is not None:
        child.stdin.close()
        child.wait()
    return results


# ---------------------------------------------------------------------- kills and writers

KILLED_WRITER = """
import sys
from onnxslim.model import load, save
model = load(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
save(model, sys.argv[2], external_data=True)
"""


def _writer_model(writer: int, width: int) -> onnx.ModelProto:
    rng = np.random.default_rng(writer)
    weights = {f"w{i}": rng.standard_normal((width, width)).astype(np.float32) for i in range(4)}
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"])
        for i in range(4)
    ]
    nodes.append(helper.make_node("Identity", ["h4"], ["y"]))
    proto = helper.make_model(
        helper.make_graph(
            nodes,
            "writer",
            [_vector("x", [1, width])],
            [_vector("y", [1, width])],
            [numpy_helper.from_array(v, k) for k, v in weights.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    proto.doc_string = f"writer {writer}"
    return proto


def _consistent(path: Path, expected: dict[int, np.ndarray], width: int) -> bool:
    import onnxruntime as ort

    try:
        writer = int(onnx.load(str(path), load_external_data=False).doc_string.split()[-1])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = session.run(None, {"x": np.ones((1, width), np.float32)})[0]
    except Exception:
        return False
    return bool(np.array_equal(output, expected[writer]))


def _expected(writers: int, width: int) -> dict[int, np.ndarray]:
    import onnxruntime as ort

    outputs = {}
    for writer in range(writers):
        session = ort.InferenceSession(
            _writer_model(writer, width).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        outputs[writer] = session.run(None, {"x": np.ones((1, width), np.float32)})[0]
    return outputs


def kills(folder: Path, count: int, width: int, rng: random.Random, log) -> dict:
    """Save writer 1's model over writer 0's and SIGKILL the writer at a random moment."""
    from onnxslim.model import load, save

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for writer in range(2):
        sources.append(folder / f"source-{writer}.onnx")
        onnx.save(_writer_model(writer, width), sources[-1])
    expected = _expected(2, width)
    out_folder = folder / "out"
    out_folder.mkdir()
    out = out_folder / "model.onnx"
    script = folder / "killed_writer.py"
    script.write_text(KILLED_WRITER)
    start = time.perf_counter()
    save(load(sources[0]), out, external_data=True)
    write_seconds = time.perf_counter() - start
    inconsistent = 0
    for index in range(count):
        child = subprocess.Popen(
            [sys.executable, str(script), str(sources[1]), str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        child.stdout.readline()  # loaded and ready: the clock starts at the write
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rng.uniform(0, 1.5 * write_seconds))
        child.send_signal(signal.SIGKILL)
        child.wait()
        inconsistent += not _consistent(out, expected, width)
        if (index + 1) % 10 == 0:
            log(f"{index + 1}/{count} kills")
    leftovers_before = _temp_bytes(out_folder)
    save(load(sources[0]), out, external_data=True)
    leftovers_after = _temp_bytes(out_folder)
    return {
        "kills": count,
        "inconsistent": inconsistent,
        "write_seconds": write_seconds,
        "temp_bytes_left_by_kills": leftovers_before,
        "temp_bytes_after_next_write": leftovers_after,
    }


def _temp_bytes(folder: Path) -> int:
    """Bytes in the folder besides the model file and the data file it refers to."""
    from onnxslim.model import model_files

    keep = {p.resolve() for p in model_files(folder / "model.onnx")}
    return sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.resolve() not in keep
    )


CONCURRENT_WRITER = """
import sys
from onnxslim.model import load, save
model = load(sys.argv[1])
for _ in range(int(sys.argv[3])):
    save(model, sys.argv[2], external_data=True)
"""


def concurrent_writers(folder: Path, writers: int, rounds: int, width: int) -> dict:
    """Several processes save to one path while this one reads it as a loader would (model
    file first, then the data file it names)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for writer in range(writers):
        sources.append(folder / f"source-{writer}.onnx")
        onnx.save(_writer_model(writer, width), sources[-1])
    expected = _expected(writers, width)
    out = folder / "out" / "model.onnx"
    out.parent.mkdir()
    from onnxslim.model import load, save

    save(load(sources[0]), out, external_data=True)
    script = folder / "writer.py"
    script.write_text(CONCURRENT_WRITER)
    children = [
        subprocess.Popen([sys.executable, str(script), str(s), str(out), str(rounds)])
        for s in sources
    ]
    snapshot = folder / "snapshot"
    reads = inconsistent = vanished = 0
    while any(c.poll() is None for c in children):
        shutil.rmtree(snapshot, ignore_errors=True)
        snapshot.mkdir()
        try:
            model_bytes = out.read_bytes()
            proto = onnx.load_from_string(model_bytes)
            (location,) = {
                e.value
                for t in proto.graph.initializer
                for e in t.external_data
                if e.key == "location"
            }
            (snapshot / location).write_bytes((out.parent / location).read_bytes())
        except FileNotFoundError:  # the data file of a model replaced since: read again
            vanished += 1
            continue
        (snapshot / out.name).write_bytes(model_bytes)
        reads += 1
        inconsistent += not _consistent(snapshot / out.name, expected, width)
    failed = sum(c.wait() != 0 for c in children)
    return {
        "writers": writers,
        "writes": writers * rounds,
        "reads": reads,
        "reads_retried": vanished,
        "inconsistent": inconsistent + (not _consistent(out, expected, width)),
        "writers_failed": failed,
        "temp_bytes_after": _temp_bytes(out.parent),
    }


# ------------------------------------------------------------------ infer-shapes on a vector


def long_vector_model(path: Path, length: int) -> int:
    """``y = (c + c) + x`` with ``c`` an arange of ``length`` floats; the file's size."""
    values = numpy_helper.from_array(np.arange(length, dtype=np.float32), "c")
    proto = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Add", ["c", "c"], ["twice"]),
                helper.make_node("Add", ["twice", "x"], ["y"]),
            ],
            "vector",
            [_vector("x", [1])],
            [_vector("y", [length])],
            [values],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    onnx.save(proto, path)
    return path.stat().st_size


def infer_shapes_command(source: str, destination: str) -> int:
    """What ``onnxslim optimize SOURCE --passes infer-shapes -o DESTINATION`` does."""
    from onnxslim import optimize

    _, report = optimize(source, "infer-shapes", output=destination)
    return report.after.nodes


# ------------------------------------------------------------------------------- report


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)
    kills: dict = field(default_factory=dict)
    writers: dict = field(default_factory=dict)
    vector: dict = field(default_factory=dict)


def summarize(label: str, results: list[dict]) -> dict:
    exits = Counter(str(r["exit"]) for r in results)
    malformed = [
        r for r in results if not r.get("input_valid", True) or r["exit"] in ("crash", "timeout")
    ]
    invalid_outputs = [
        r
        for r in results
        if r["exit"] == 0
        and r.get("written")
        and (
            r.get("output_checks") is False or (r.get("input_loads") and not r.get("output_loads"))
        )
    ]
    return {
        "inputs": label,
        "runs": len(results),
        "invalid inputs": len(malformed),
        "invalid -> exit 2": sum(1 for r in malformed if r["exit"] == 2 and r.get("one_line")),
        "exit 0 / 2 / 3": f"{exits['0']} / {exits['2']} / {exits['3']}",
        "crashes, timeouts": exits["crash"] + exits["timeout"] + exits["harness"],
        "invalid outputs written": len(invalid_outputs),
        "secret leaked": sum(1 for r in results if r.get("leaked")),
        "examples": [
            {k: r[k] for k in ("command", "case", "exit") if k in r}
            for r in (invalid_outputs + [r for r in malformed if r["exit"] != 2])[:8]
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer mutants and kills.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mutants", type=int, help="Fuzzed mutants (default 400, quick 60).")
    parser.add_argument("--json", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--work", type=Path, help="Keep the files in this folder.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return 0
    console, _, log = consoles(120)
    rng = random.Random(args.seed)
    folder, made = work_folder(args.work, "onnxslim-robustness-")
    summary = Summary()
    try:
        files = malformed_files(_fresh(folder / "malformed"), rng)
        commands = ["optimize", "validate", "inspect", "float16"] if args.quick else list(COMMANDS)
        tasks = [
            {
                "case": name,
                "command": command,
                "model": str(path),
                "out": str(path.parent / "out.onnx"),
            }
            for name, path in files.items()
            for command in commands
        ]
        log(f"malformed inputs: {len(tasks)} runs")
        summary.rows.append(
            summarize(
                f"malformed files ({len(files)}) x {len(commands)} commands", run_cases(tasks, log)
            )
        )

        count = args.mutants or (60 if args.quick else 400)
        paths = mutants(node_models(), count, _fresh(folder / "fuzz" / "models"), rng)
        tasks = [
            {
                "case": p.name,
                "command": "optimize",
                "model": str(p),
                "out": str(p.parent / "out.onnx"),
            }
            for p in paths
        ]
        log(f"fuzzed mutants: {len(tasks)} runs")
        summary.rows.append(
            summarize(f"fuzzed backend node models ({count})", run_cases(tasks, log))
        )

        width = 256 if args.quick else 1024
        summary.kills = kills(_fresh(folder / "kills"), 10 if args.quick else 50, width, rng, log)
        summary.writers = concurrent_writers(
            _fresh(folder / "writers"), 4, 5 if args.quick else 20, width
        )

        length = 10_000_000 if args.quick else 100_000_000
        source = _fresh(folder / "vector") / "vector.onnx"
        size = long_vector_model(source, length)
        log(f"infer-shapes on a {length:,}-element vector ({size / 2**20:.0f} MiB)")
        measured = measure_call(
            infer_shapes_command,
            str(source),
            str(source.with_name("out.onnx")),
            preload=["onnxslim.passes"],
        )
        summary.vector = {
            "elements": length,
            "model_bytes": size,
            "seconds": measured.seconds,
            "peak_increase_bytes": measured.peak_increase_bytes,
            "ratio": measured.peak_increase_bytes / size,
        }
    finally:
        if made and args.work is None:
            shutil.rmtree(folder, ignore_errors=True)
    render(console, summary)
    if args.json:
        args.json.write_text(json.dumps(asdict(summary), indent=2))
    return 0


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def render(console, summary: Summary) -> None:
    table = Table(title="bad inputs")
    columns = [
        "inputs",
        "runs",
        "invalid inputs",
        "invalid -> exit 2",
        "exit 0 / 2 / 3",
        "crashes, timeouts",
        "invalid outputs written",
        "secret leaked",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column == "inputs" else "right")
    for row in summary.rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    for row in summary.rows:
        for example in row["examples"]:
            console.print(f"  {row['inputs']}: {example}")
    kills, writers, vector = summary.kills, summary.writers, summary.vector
    writes = Table(title="killed and concurrent writes")
    for column in ("test", "count", "inconsistent results", "temp bytes left after the next write"):
        writes.add_column(column, justify="left" if column == "test" else "right")
    writes.add_row(
        f"writer SIGKILLed at a random moment (a write takes {kills['write_seconds']:.2f} s)",
        str(kills["kills"]),
        str(kills["inconsistent"]),
        f"{kills['temp_bytes_after_next_write']} "
        f"(the kills left {kills['temp_bytes_left_by_kills']:,})",
    )
    writes.add_row(
        f"{writers['writers']} writers, {writers['writes']} writes, reader alongside",
        f"{writers['reads']} reads",
        str(writers["inconsistent"]),
        str(writers["temp_bytes_after"]),
    )
    console.print(writes)
    console.print(
        f"infer-shapes on a {vector['elements']:,}-element 1-D constant "
        f"({vector['model_bytes'] / 2**20:.0f} MiB): peak +RSS "
        f"{vector['peak_increase_bytes'] / 2**20:.0f} MiB = {vector['ratio']:.2f}x the model, "
        f"{vector['seconds']:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
