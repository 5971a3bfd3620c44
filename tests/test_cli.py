"""The ``onnxslim`` command, run in process with typer's CliRunner and, where it matters that
the real entry point works, as a subprocess.

Exit codes are part of the interface: 0 success, 1 outputs differ, 2 bad input (one ``error:``
line on stderr), 3 internal error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import external_data_file
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxslim.cli import app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cnn.onnx"
# Wide enough that rich never truncates a table cell the tests look for.
runner = CliRunner(env={"COLUMNS": "200"})

# A stand-in for lossy compression: shifts every float weight.
PERTURB_PLUGIN = '''
from dataclasses import field

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim import Pass, register_pass


@register_pass("perturb-weights")
class PerturbWeights(Pass):
    """Add ``amount`` to float weights [all of them unless ``only`` names some].

    Lossy on purpose: a stand-in for compression.
    """

    lossless = False
    amount: float = 0.5
    only: list[str] = field(default_factory=list)

    def run(self, graph, ctx):
        for tensor in graph.tensors().values():
            if (
                isinstance(tensor, gs.Constant)
                and tensor.values.dtype == np.float32
                and (not self.only or tensor.name in self.only)
            ):
                tensor.values = tensor.values + np.float32(self.amount)
        return True
'''

# The same rewrite, wrongly declared lossless: what --verify-each exists to catch.
FALSELY_LOSSLESS_PLUGIN = PERTURB_PLUGIN.replace("perturb-weights", "claims-lossless").replace(
    "lossless = False", "lossless = True"
)

FAILING_PLUGIN = '''
from onnxslim import Pass, register_pass


@register_pass("always-fails")
class AlwaysFails(Pass):
    """Raise an unexpected exception, as a buggy pass would."""

    def run(self, graph, ctx):
        raise RuntimeError("something broke inside the pass")
'''

UNEXPORTABLE_PLUGIN = '''
from onnxslim import Pass, register_pass


@register_pass("unexportable-attribute")
class UnexportableAttribute(Pass):
    """Leave the graph with an attribute value that ONNX cannot store."""

    def run(self, graph, ctx):
        graph.nodes[0].attrs["not_onnx"] = object()
        return True
'''


def cli(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_model(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_image(seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((1, 3, 32, 32), np.float32)}


def write_plugin(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def json_stdout(result) -> dict:
    """stdout parsed as one JSON document (fails if anything else was printed)."""
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    """A private copy of the bundled demo model."""
    path = tmp_path / "tiny_cnn.onnx"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def perturb_plugin(tmp_path: Path) -> Path:
    return write_plugin(tmp_path, "perturb", PERTURB_PLUGIN)


# --------------------------------------------------------------------------------- optimize


def test_optimize_writes_a_smaller_valid_model_with_the_same_outputs(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out)

    assert result.exit_code == 0, result.output
    original, optimized = onnx.load(str(cnn)), onnx.load(str(out))
    assert len(optimized.graph.node) < len(original.graph.node)
    onnx.checker.check_model(optimized, full_check=True)
    feeds = random_image()
    for expected, actual in zip(run_model(cnn, feeds), run_model(out, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_optimize_writes_stem_dot_slim_next_to_the_input_by_default(cnn: Path, tmp_path: Path):
    result = cli("optimize", cnn)

    assert result.exit_code == 0, result.output
    expected = tmp_path / "tiny_cnn.slim.onnx"
    assert expected.is_file()
    onnx.checker.check_model(onnx.load(str(expected)))


def test_optimize_prints_a_summary_and_the_written_path(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out)

    assert "nodes" in result.stdout
    assert "fold-constants" in result.stdout
    assert f"wrote {out}" in result.stdout


@pytest.mark.parametrize("command", ["optimize", "validate"])
def test_a_successful_run_writes_nothing_on_a_non_terminal_stderr(cnn: Path, command: str):
    """Progress bars are for terminals; in a pipe or a log they would only add noise."""
    args = [cnn, "--validate"] if command == "optimize" else [cnn, cnn]

    result = cli(command, *args)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_validate_flag_prints_the_validation_table(cnn: Path, tmp_path: Path):
    result = cli("optimize", cnn, "-o", tmp_path / "out.onnx", "--validate")

    assert result.exit_code == 0, result.output
    assert "validation on cpu: 1 sample(s) synthesized, atol=0.0001 rtol=0.001" in result.stdout
    assert re.search(r"│\s*logits\s*│\s*[0-9.e+-]+\s*│", result.stdout)
    assert "outputs match" in result.stdout


def test_paths_with_brackets_are_printed_verbatim(cnn: Path, tmp_path: Path):
    model = cnn.rename(tmp_path / "tiny_cnn[fp32].onnx")
    out = tmp_path / "slim[fp32].onnx"

    result = cli("optimize", model, "-o", out)

    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout


def test_inspect_title_shows_a_bracketed_path_verbatim(cnn: Path, tmp_path: Path):
    model = cnn.rename(tmp_path / "tiny_cnn[fp32].onnx")

    result = cli("inspect", model)

    # The title wraps at the table's width; only the characters matter.
    assert "tiny_cnn[fp32].onnx" in re.sub(r"\s", "", result.stdout)


def test_json_prints_only_a_report_with_sizes_passes_and_validation(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    report = json_stdout(cli("optimize", cnn, "-o", out, "--validate", "--json"))

    assert {"pipeline", "before", "after", "passes", "validation", "written", "output"} <= set(
        report
    )
    assert report["before"]["nodes"] == 19
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert report["written"] is True
    assert report["output"] == str(out)
    assert report["validation"]["passed"] is True
    assert {p["name"] for p in report["passes"]} >= {"cleanup", "fold-constants", "infer-shapes"}


def test_json_without_validate_has_null_validation(cnn: Path, tmp_path: Path):
    report = json_stdout(cli("optimize", cnn, "-o", tmp_path / "out.onnx", "--json"))

    assert report["validation"] is None


def test_quiet_prints_nothing_and_still_writes(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out, "--validate", "--quiet")

    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""
    assert out.is_file()


def test_failed_validation_exits_1_and_writes_nothing(
    cnn: Path, tmp_path: Path, perturb_plugin: Path
):
    out = tmp_path / "out.onnx"
    before = sorted(os.listdir(tmp_path))

    result = cli(
        "optimize",
        cnn,
        "-o",
        out,
        "--plugin",
        perturb_plugin,
        "--passes",
        "perturb-weights,cleanup",
        "--validate",
    )

    assert result.exit_code == 1, result.output
    assert "outputs differ" in result.stdout
    assert "was not written" in result.stdout
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == before  # no staged files left behind


def test_failed_validation_in_json_reports_written_false(
    cnn: Path, tmp_path: Path, perturb_plugin: Path
):
    result = cli(
        "optimize",
        cnn,
        "-o",
        tmp_path / "out.onnx",
        "--plugin",
        perturb_plugin,
        "--passes",
        "perturb-weights",
        "--validate",
        "--json",
    )

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["written"] is False
    assert report["validation"]["passed"] is False


def test_lossy_pass_passes_validation_with_a_loose_min_cosine_only(
    cnn: Path, tmp_path: Path, perturb_plugin: Path
):
    """With huge atol/rtol only the cosine criterion can fail: a tight one rejects the model."""
    common = [
        "optimize",
        cnn,
        "--plugin",
        perturb_plugin,
        "--passes",
        "perturb-weights(amount=0.5)",
        "--validate",
        "--atol",
        "1e6",
        "--rtol",
        "1e6",
        "--quiet",
    ]

    assert cli(*common, "-o", tmp_path / "loose.onnx", "--min-cosine", "-1").exit_code == 0
    assert cli(*common, "-o", tmp_path / "tight.onnx", "--min-cosine", "0.999999").exit_code == 1
    assert (tmp_path / "loose.onnx").is_file()
    assert not (tmp_path / "tight.onnx").exists()


def test_passes_option_runs_only_the_named_passes(cnn: Path, tmp_path: Path):
    report = json_stdout(
        cli("optimize", cnn, "-o", tmp_path / "out.onnx", "--passes", "cleanup", "--json")
    )

    assert report["pipeline"] == "cleanup"
    assert [p["name"] for p in report["passes"]] == ["cleanup"]
    # cleanup removes Identity and Dropout but folds nothing: the Shape chain survives.
    ops = [node.op_type for node in onnx.load(str(tmp_path / "out.onnx")).graph.node]
    assert "Identity" not in ops and "Dropout" not in ops
    assert "Shape" in ops


def test_skip_leaves_a_pass_out_of_the_default_pipeline(cnn: Path, tmp_path: Path):
    report = json_stdout(
        cli("optimize", cnn, "-o", tmp_path / "out.onnx", "--skip", "fold-constants", "--json")
    )

    from onnxslim.registry import DEFAULT_PIPELINE, parse_pipeline

    (group,) = parse_pipeline(DEFAULT_PIPELINE)
    expected = {step.name for step in group.steps} - {"fold-constants"}
    assert "fold-constants" not in report["pipeline"]
    assert {p["name"] for p in report["passes"]} == expected


def test_recipe_file_sets_the_pipeline_and_typed_options(cnn: Path, tmp_path: Path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        textwrap.dedent(
            """
            [[steps]]
            pass = "cleanup"
            remove_dropout = false

            [[steps]]
            repeat = ["fold-constants"]
            max_iterations = 3
            """
        )
    )
    out = tmp_path / "out.onnx"

    report = json_stdout(cli("optimize", cnn, "-o", out, "--recipe", recipe, "--json"))

    assert report["pipeline"] == "cleanup(remove_dropout=False),[fold-constants]*3"
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert "Dropout" in ops
    assert "Identity" not in ops


def test_verify_each_accepts_the_default_pipeline(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out, "--verify-each")

    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_verify_each_names_a_lossless_pass_that_changes_outputs(cnn: Path, tmp_path: Path):
    plugin = write_plugin(tmp_path, "claims_lossless", FALSELY_LOSSLESS_PLUGIN)
    out = tmp_path / "out.onnx"

    result = cli(
        "optimize",
        cnn,
        "-o",
        out,
        "--plugin",
        plugin,
        "--passes",
        "cleanup,claims-lossless",
        "--verify-each",
    )

    assert result.exit_code == 2
    assert result.stderr.startswith("error: pass 'claims-lossless' changed the outputs")
    assert not out.exists()


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--validate"],
        ["--passes", "cleanup"],
        ["--external-data"],
        ["--verify-each", "--json"],
    ],
    ids=["default", "validate", "cleanup-only", "external-data", "verify-each"],
)
def test_optimize_never_modifies_the_input(cnn: Path, tmp_path: Path, options: list[str]):
    digest = sha256(cnn)

    result = cli("optimize", cnn, "-o", tmp_path / "out.onnx", *options)

    assert result.exit_code == 0, result.output
    assert sha256(cnn) == digest


def test_external_data_flag_writes_a_data_file_that_onnxruntime_reads(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out, "--external-data", "--quiet")

    assert result.exit_code == 0, result.output
    assert external_data_file(out).stat().st_size > 0
    feeds = random_image(1)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(cnn, feeds)[0], atol=1e-5)


# ------------------------------------------------------------------------------- bad input


def _unknown_op_model() -> onnx.ModelProto:
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    return _unchecked_model([node])


def _undefined_input_model() -> onnx.ModelProto:
    node = helper.make_node("Add", ["x", "never_defined"], ["y"])
    return _unchecked_model([node])


def _unchecked_model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _make_input(kind: str, folder: Path) -> Path:
    """A model path of the given kind of brokenness, inside ``folder``."""
    path = folder / "model.onnx"
    if kind == "missing":
        return folder / "missing.onnx"
    if kind == "missing-brackets":
        return folder / "missing[fp16].onnx"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        data = FIXTURE.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "unknown-op":
        path.write_bytes(_unknown_op_model().SerializeToString())
    elif kind == "undefined-input":
        path.write_bytes(_undefined_input_model().SerializeToString())
    else:
        shutil.copyfile(FIXTURE, path)
    return path


BAD_OPTIMIZE_CASES = {
    # case: (input kind, extra arguments, words the error line must contain)
    "missing-file": ("missing", [], ["missing.onnx", "no such file"]),
    "missing-file-with-brackets": ("missing-brackets", [], ["missing[fp16].onnx"]),
    "directory": ("directory", [], ["is a directory"]),
    "empty-file": ("empty", [], ["empty"]),
    "random-bytes": ("random-bytes", [], ["model.onnx", "not"]),
    "truncated-protobuf": ("truncated", [], ["model.onnx", "not a valid ONNX protobuf"]),
    "unknown-op": ("unknown-op", [], ["onnx.checker", "NoSuchOp"]),
    "undefined-input": ("undefined-input", [], ["onnx.checker", "never_defined"]),
    "unknown-pass": (
        "valid",
        ["--passes", "cleanup,no-such-pass"],
        ["unknown pass 'no-such-pass'", "cleanup", "fold-constants", "infer-shapes"],
    ),
    "unknown-pass-option": (
        "valid",
        ["--passes", "fold-constants(nope=1)"],
        ["has no option 'nope'", "max_growth_bytes: int"],
    ),
    "badly-typed-option": (
        "valid",
        ["--passes", "fold-constants(max_growth_bytes=lots)"],
        ["max_growth_bytes", "expected int", "'lots'"],
    ),
    "unknown-skip": ("valid", ["--skip", "no-such-pass"], ["unknown pass 'no-such-pass'"]),
    "malformed-spec": ("valid", ["--passes", "[cleanup"], ["[cleanup", "position"]),
    "missing-recipe": ("valid", ["--recipe", "nowhere.toml"], ["no such recipe file"]),
    "missing-plugin": ("valid", ["--plugin", "nowhere.py"], ["plugin file not found"]),
    "unknown-provider": (
        "valid",
        ["--validate", "--provider", "nope"],
        ["unknown execution provider 'nope'", "cpu"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPTIMIZE_CASES))
def test_bad_input_exits_2_with_one_error_line_and_leaves_the_output_alone(
    tmp_path: Path, case: str
):
    kind, extra, words = BAD_OPTIMIZE_CASES[case]
    model = _make_input(kind, tmp_path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"precious bytes")
    listing = sorted(os.listdir(tmp_path))

    result = cli("optimize", model, "-o", out, *extra)

    assert_one_error_line(result, words)
    assert out.read_bytes() == b"precious bytes"
    assert sorted(os.listdir(tmp_path)) == listing


def test_plugin_that_fails_to_import_is_a_one_line_error(cnn: Path, tmp_path: Path):
    plugin = write_plugin(tmp_path, "broken_plugin", "import no_such_module_anywhere\n")

    result = cli("optimize", cnn, "-o", tmp_path / "out.onnx", "--plugin", plugin)

    assert_one_error_line(result, ["broken_plugin.py", "no_such_module_anywhere"])


def test_output_equal_to_input_is_refused_and_the_input_unchanged(cnn: Path):
    digest = sha256(cnn)
    listing = sorted(os.listdir(cnn.parent))

    result = cli("optimize", cnn, "-o", cnn)

    assert_one_error_line(result, ["overwrite the input"])
    assert sha256(cnn) == digest
    assert sorted(os.listdir(cnn.parent)) == listing


def test_a_pass_raising_an_unexpected_exception_is_a_one_line_internal_error(
    cnn: Path, tmp_path: Path
):
    plugin = write_plugin(tmp_path, "fails", FAILING_PLUGIN)
    out = tmp_path / "out.onnx"

    result = cli("optimize", cnn, "-o", out, "--plugin", plugin, "--passes", "always-fails")

    words = ["internal error in pass 'always-fails'", "RuntimeError", "something broke inside"]
    assert_one_error_line(result, words, exit_code=3)
    assert not out.exists()


def test_an_unexpected_error_outside_passes_exits_3_with_one_line(cnn: Path, tmp_path: Path):
    """A pass that leaves an unexportable graph fails only when saving: an internal error."""
    plugin = write_plugin(tmp_path, "unexportable", UNEXPORTABLE_PLUGIN)
    out = tmp_path / "out.onnx"
    listing = sorted(os.listdir(tmp_path))

    result = cli(
        "optimize", cnn, "-o", out, "--plugin", plugin, "--passes", "unexportable-attribute"
    )

    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("internal error: TypeError:")
    assert "--debug" in lines[0]
    assert "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == listing


def test_debug_shows_the_traceback(tmp_path: Path):
    result = cli("optimize", tmp_path / "missing.onnx", "--debug")

    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "error: " in result.stderr


def assert_one_error_line(result, words: list[str], exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output
    assert result.stdout == ""


# -------------------------------------------------------------------------------- validate


def test_validate_a_model_against_itself_exits_0(cnn: Path):
    result = cli("validate", cnn, cnn)

    assert result.exit_code == 0, result.output
    assert "outputs match" in result.stdout


@pytest.fixture
def perturbed(cnn: Path, tmp_path: Path) -> Path:
    """The demo model with 1e-3 added to the classifier bias: every logit moves by 1e-3."""
    model = onnx.load(str(cnn))
    for tensor in model.graph.initializer:
        if tensor.name == "fc.bias":
            tensor.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor) + 1e-3, "fc.bias")
            )
    path = tmp_path / "perturbed.onnx"
    onnx.save(model, str(path))
    return path


def test_validate_exits_1_when_outputs_differ_beyond_atol(cnn: Path, perturbed: Path):
    result = cli("validate", cnn, perturbed, "--atol", "1e-5", "--rtol", "0")

    assert result.exit_code == 1, result.output
    assert "outputs differ" in result.stdout


def test_validate_exits_0_when_the_difference_is_within_atol(cnn: Path, perturbed: Path):
    result = cli("validate", cnn, perturbed, "--atol", "2e-3", "--rtol", "0")

    assert result.exit_code == 0, result.output


def test_validate_json_reports_metrics_per_output(cnn: Path, perturbed: Path):
    report = json_stdout(cli("validate", cnn, perturbed, "--atol", "1e-5", "--rtol", "0", "--json"))

    assert report["passed"] is False
    [output] = report["outputs"]
    assert output["name"] == "logits"
    assert output["max_abs"] == pytest.approx(1e-3, rel=1e-3)


def test_validate_with_an_unknown_provider_is_a_one_line_error(cnn: Path):
    result = cli("validate", cnn, cnn, "--provider", "nope")

    assert_one_error_line(result, ["unknown execution provider 'nope'", "cpu, cuda, tensorrt"])


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
def test_validate_on_cuda_without_cuda_is_a_one_line_error(cnn: Path):
    result = cli("validate", cnn, cnn, "--provider", "cuda")

    assert_one_error_line(result, ["'cuda' is not available", "pip install -e '.[gpu]'"])


# --------------------------------------------------------------------------------- inspect


def test_inspect_shows_opsets_signature_and_op_counts(cnn: Path):
    result = cli("inspect", cnn)

    assert result.exit_code == 0, result.output
    assert "ai.onnx 13" in result.stdout
    assert re.search(r"input\s*│\s*input\s*│\s*float\s*│\s*\[1, 3, 32, 32\]", result.stdout)
    assert re.search(r"output\s*│\s*logits\s*│\s*float\s*│\s*\[1, 10\]", result.stdout)
    assert re.search(r"BatchNormalization\s*│\s*2", result.stdout)
    assert re.search(r"Gemm\s*│\s*1", result.stdout)


def test_inspect_json_has_the_same_facts(cnn: Path):
    info = json_stdout(cli("inspect", cnn, "--json"))

    assert info["opsets"] == {"ai.onnx": 13}
    assert [i["name"] for i in info["inputs"]] == ["input"]
    assert info["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert info["op_histogram"]["Conv"] == 2
    assert info["nodes"] == 19


def test_inspect_shows_symbolic_dims_by_name(text_embedding_model, save_model):
    path = save_model(text_embedding_model)

    result = cli("inspect", path)

    assert re.search(r"input_ids\s*│\s*int64\s*│\s*\[batch, sequence\]", result.stdout)
    assert re.search(r"hidden\s*│\s*float\s*│\s*\[batch, sequence, 8\]", result.stdout)


def test_inspect_of_a_non_onnx_file_is_a_one_line_error(tmp_path: Path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the bytes you are looking for")

    assert_one_error_line(cli("inspect", path), ["notes.onnx"])


# ---------------------------------------------------------------------------------- passes


def test_passes_lists_builtin_passes_with_their_options():
    result = cli("passes", "--long")

    assert result.exit_code == 0, result.output
    for name in ("cleanup", "fold-constants", "infer-shapes"):
        assert name in result.stdout
    assert "max_growth_bytes: int = 0" in result.stdout
    assert "remove_identity: bool = true" in result.stdout


def test_passes_json_describes_each_option():
    passes = {p["name"]: p for p in json_stdout(cli("passes", "--json"))}

    assert {"cleanup", "fold-constants", "infer-shapes"} <= set(passes)
    ((option),) = passes["fold-constants"]["options"]
    assert (option["name"], option["type"], option["default"]) == ("max_growth_bytes", "int", 0)
    assert passes["cleanup"]["lossless"] is True


def test_passes_with_a_plugin_lists_the_plugin_pass(perturb_plugin: Path):
    passes = {
        p["name"]: p for p in json_stdout(cli("passes", "--plugin", perturb_plugin, "--json"))
    }

    plugin_pass = passes["perturb-weights"]
    assert plugin_pass["lossless"] is False
    assert plugin_pass["options"] == [
        {"name": "amount", "type": "float", "default": 0.5, "help": ""},
        {"name": "only", "type": "list of str", "default": [], "help": ""},
    ]
    assert plugin_pass["description"] == (
        "Add amount to float weights [all of them unless only names some]."
    )


def test_passes_table_shows_bracketed_text_verbatim(perturb_plugin: Path):
    result = cli("passes", "perturb-weights", "--plugin", perturb_plugin)

    assert "only: list of str = (none)" in result.stdout
    assert "[all of them unless" in result.stdout


# ------------------------------------------------------------------------ help, subprocesses


@pytest.mark.parametrize("command", [[], ["optimize"], ["validate"], ["inspect"], ["passes"]])
def test_help_of_each_command(command: list[str]):
    result = cli(*command, "--help")

    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_python_dash_m_onnxslim_help_runs(tmp_path: Path):
    completed = subprocess.run(
        [sys.executable, "-m", "onnxslim", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    for command in ("optimize", "validate", "inspect", "passes"):
        assert command in completed.stdout


def test_real_process_optimize_prints_clean_json_and_writes_the_model(cnn: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"
    digest = sha256(cnn)

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxslim",
            "optimize",
            str(cnn),
            "-o",
            str(out),
            "--validate",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert json.loads(completed.stdout)["written"] is True
    assert sha256(cnn) == digest
    feeds = random_image(2)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(cnn, feeds)[0], atol=1e-5)


def test_real_process_bad_input_prints_one_line_without_traceback(tmp_path: Path):
    completed = subprocess.run(
        [sys.executable, "-m", "onnxslim", "optimize", str(tmp_path / "missing.onnx")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [f"error: {tmp_path / 'missing.onnx'}: no such file"]
    assert completed.stdout == ""
