"""The command line a newcomer expects (issue 15): the conventions of OnnxSlim and onnxsim,
readable help, and errors in the command line's own terms. Every test runs the command in
process and as a subprocess, at 80 columns with output piped."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_invocation import FIXTURES, assert_one_error_line, assert_reads_cleanly, both_ways_fixture
from typer.testing import CliRunner

import onnxslim as package
from onnxslim import Pass, register_pass

onnxslim = both_ways_fixture()


def _words(text: str) -> str:
    """Text as words, however the help formatter wrapped it (it may break after a hyphen)."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


# --------------------------------------------------------------------- peer conventions


def test_in_out_without_a_command_optimizes(onnxslim):
    run = onnxslim("digits_cnn.onnx", "out.onnx")

    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[0].startswith("onnxslim optimize")
    onnx.checker.check_model(onnx.load("out.onnx"))
    assert_reads_cleanly(run)


def test_optimize_takes_the_output_as_its_second_argument(onnxslim):
    run = onnxslim("optimize", "tiny_cnn.onnx", "slim.onnx", "--quiet")

    assert run.exit_code == 0, run.output
    assert Path("slim.onnx").is_file() and not Path("tiny_cnn.slim.onnx").exists()


def test_an_output_given_twice_is_one_error_line(onnxslim):
    run = onnxslim("optimize", "tiny_cnn.onnx", "a.onnx", "-o", "b.onnx")

    assert_one_error_line(run, 2, "given twice", "a.onnx", "b.onnx")
    assert not Path("a.onnx").exists() and not Path("b.onnx").exists()


@pytest.mark.parametrize("command", [[], ["optimize"], ["quantize"], ["passes"]])
def test_dash_h_prints_help(onnxslim, command):
    run = onnxslim(*command, "-h")

    assert run.exit_code == 0, run.output
    assert run.stdout.startswith("Usage: onnxslim")
    assert_reads_cleanly(run)


def test_onnxslim_alone_prints_the_help(onnxslim):
    run = onnxslim()

    assert run.exit_code == 2  # a usage error, as click (and argparse) have it
    assert "Usage: onnxslim [OPTIONS] COMMAND" in run.output and "optimize" in run.output


def test_version(onnxslim):
    run = onnxslim("--version")

    assert (run.exit_code, run.stdout.strip()) == (0, f"onnxslim {package.__version__}")


def test_a_mistyped_command_is_one_error_line_with_a_suggestion(onnxslim):
    run = onnxslim("optimze", "digits_cnn.onnx")

    assert_one_error_line(run, 2, "optimze", "optimize")


@pytest.mark.parametrize(
    ("command", "batch", "extra"),
    [("optimize", 4, []), ("quantize", 1, ["--calib", "digits_calib.npz"])],  # calib: batch 1
)
def test_input_shape_writes_static_shapes_into_the_model(onnxslim, command, batch, extra):
    shape = f"image:{batch},1,8,8"

    run = onnxslim(command, "digits_cnn.onnx", "out.onnx", "--input-shape", shape, *extra)

    assert run.exit_code == 0, run.output
    model = onnx.load("out.onnx")
    assert _dims(model.graph.input[0]) == [batch, 1, 8, 8]
    assert _dims(model.graph.output[0]) == [batch, 10]


def test_an_input_shape_that_contradicts_the_model_is_one_error_line(onnxslim):
    run = onnxslim("optimize", "digits_cnn.onnx", "--input-shape", "image:4,3,8,8")

    assert_one_error_line(run, 2, "image", "axis 1", "fixes it to 1")


def test_inspect_states_how_symbolic_dims_count_and_input_shape_sets_them(onnxslim):
    plain = onnxslim("inspect", "digits_cnn.onnx")
    one = json.loads(onnxslim("inspect", "digits_cnn.onnx", "--json").stdout)
    eight = json.loads(
        onnxslim("inspect", "digits_cnn.onnx", "--input-shape", "image:8,1,8,8", "--json").stdout
    )

    assert plain.exit_code == 0, plain.output
    assert "FLOPs count the symbolic dims batch as 1" in " ".join(plain.stdout.split())
    assert_reads_cleanly(plain)
    assert eight["inputs"][0]["shape"] == [8, 1, 8, 8]
    assert eight["flops"] == 8 * one["flops"]
    assert eight["notes"] == []


def test_no_message_advises_installing_the_other_project_on_pypi():
    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("onnxslim/**/*.py"), *root.glob("passes/**/*.py"), root / "README.md"]
    offenders = [str(path) for path in sources if re.search(r"onnxslim\[", path.read_text())]
    assert offenders == []
    from onnxslim.runtime import _MISSING_MESSAGE

    assert "pip install -e '.[cpu]'" in _MISSING_MESSAGE


# -------------------------------------------------------------------------- help, errors


def test_help_shows_bracketed_text_as_typed(onnxslim):
    run = onnxslim("optimize", "-h")

    assert "'cleanup,[fold-constants,cleanup]*5'" in _words(run.stdout)


def test_every_option_help_appears_whole_in_its_command_help():
    from typer.main import get_command

    from onnxslim.cli import app

    group = get_command(app)
    runner = CliRunner(env={"COLUMNS": "80"})
    for name, command in group.commands.items():
        shown = _words(runner.invoke(app, [name, "-h"]).stdout)
        for param in command.params:
            assert _words(getattr(param, "help", None) or "") in shown, (name, param.name)


@pytest.mark.parametrize(
    ("arguments", "words", "pass_terms"),
    [
        (["convert", "digits_cnn.onnx"], ["--opset", "--ir-version"], "target="),
        (
            ["sparsify", "digits_cnn.onnx", "--sparsity", "0.3", "--threshold", "0.1"],
            ["exactly one of --sparsity or --threshold"],
            "sparsity=",
        ),
        (
            ["prune", "digits_cnn.onnx", "--criterion", "activation"],
            ["--criterion activation", "--calib PATH.npz"],
            "calib=",
        ),
        (["prune", "digits_cnn.onnx", "--ratio", "1.5"], ["prune: --ratio must be"], "ratio="),
        (["quantize", "digits_cnn.onnx", "--percentile", "120"], ["--percentile 120"], "quantize("),
        (
            ["cluster", "digits_cnn.onnx", "--bits", "9"],
            ["cluster: --bits must be 2 to 8"],
            "-weights",
        ),
    ],
)
def test_errors_speak_the_command_lines_terms(onnxslim, arguments, words, pass_terms):
    line = assert_one_error_line(onnxslim(*arguments), 2, *words)

    assert pass_terms not in line


def test_an_unknown_option_is_one_error_line(onnxslim):
    assert_one_error_line(onnxslim("optimize", "tiny_cnn.onnx", "--nope"), 2, "--nope")


def test_a_bad_choice_is_one_error_line_naming_the_choices(onnxslim):
    assert_one_error_line(onnxslim("quantize", "digits_cnn.onnx", "--weights", "int3"), 2, "int4")


def test_skip_takes_a_comma_separated_list(onnxslim):
    run = onnxslim("optimize", "tiny_cnn.onnx", "--skip", "fold-constants,cse", "--json")

    assert run.exit_code == 0, run.output
    ran = {p["name"] for p in json.loads(run.stdout)["passes"]}
    assert "cleanup" in ran and not ran & {"fold-constants", "cse"}


def test_provider_takes_a_comma_separated_list(onnxslim):
    run = onnxslim("validate", "tiny_cnn.onnx", "tiny_cnn.onnx", "-p", "cpu,cuda")

    # each name is checked on its own: cuda is missing here, 'cpu,cuda' is not a provider
    if run.exit_code == 0:
        assert "cuda" in run.stdout
    else:
        assert_one_error_line(run, 2, "'cuda' is not available", "pip install -e '.[gpu]'")


def test_a_calibration_path_with_an_apostrophe_works(onnxslim):
    Path("bob's calib.npz").write_bytes(Path("digits_calib.npz").read_bytes())

    run = onnxslim("quantize", "digits_cnn.onnx", "q.onnx", "--calib", "bob's calib.npz", "-q")

    assert run.exit_code == 0, run.output
    assert Path("q.onnx").is_file()


def test_default_in_passes_stands_for_the_default_pipeline(onnxslim):
    run = onnxslim("optimize", "tiny_cnn.onnx", "--passes", "default,cleanup", "--json")

    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["pipeline"].startswith("[infer-shapes,") and report["pipeline"].endswith(
        "cleanup"
    )
    assert report["after"]["nodes"] == 8


def test_recipe_and_passes_together_are_one_error_line(onnxslim):
    Path("r.toml").write_text('[[steps]]\npass = "cleanup"\n')

    run = onnxslim("optimize", "tiny_cnn.onnx", "--recipe", "r.toml", "--passes", "cleanup")

    assert_one_error_line(run, 2, "--recipe", "--passes")


# ------------------------------------------------------------ calibration data layout


def test_quantize_help_explains_the_calibration_data_layout(onnxslim):
    shown = _words(onnxslim("quantize", "-h").stdout)

    assert "one more dimension than its input stacks samples along axis 0" in shown
    assert "'labels' is ignored" in shown


def test_a_batch_of_images_calibrates_as_that_many_samples(onnxslim):
    images = np.load("digits_test.npz")["image"][:64]  # (64, 1, 8, 8): one batch, no labels
    np.savez("batch.npz", image=images)

    run = onnxslim(
        "quantize", "digits_cnn.onnx", "q.onnx", "--calib", "batch.npz", "--samples", "10"
    )

    assert run.exit_code == 0, run.output
    assert "on 10 sample(s)" in " ".join(run.stdout.split())  # not 1: rows are samples


def test_calibration_data_of_the_wrong_shape_is_one_error_line(onnxslim):
    np.savez("bad.npz", image=np.zeros((64, 3, 8, 8), np.float32))

    run = onnxslim("quantize", "digits_cnn.onnx", "--calib", "bad.npz")

    assert_one_error_line(run, 2, "bad.npz", "image", "expects 1 at axis 1")


# ----------------------------------------------------------------------------- passes


def test_passes_lists_one_line_per_pass_at_80_columns(onnxslim):
    from onnxslim.registry import registered_passes

    run = onnxslim("passes")

    assert run.exit_code == 0, run.output
    assert_reads_cleanly(run)
    starts = {line.split()[0] for line in run.stdout.splitlines()[1:] if line.startswith(" ")}
    built_in = {n for n, c in registered_passes().items() if c.__module__.startswith("onnxslim.")}
    assert built_in <= starts  # tests register passes of their own in this process
    assert len(run.stdout.splitlines()) < 2 * len(starts)


def test_passes_name_shows_each_option_with_its_help(onnxslim):
    run = onnxslim("passes", "quantize")

    assert run.exit_code == 0, run.output
    assert_reads_cleanly(run)
    text = " ".join(run.stdout.split())
    assert "calib: path or none = none" in text
    assert "weights: int8|uint8|int4|int16 = int8" in text
    assert "Calibration data (.npz or a folder)" in text


def test_passes_long_details_every_pass(onnxslim):
    run = onnxslim("passes", "--long")

    assert run.exit_code == 0, run.output
    assert_reads_cleanly(run)
    assert "max_growth_bytes: int = 0" in run.stdout and "ratio: float = 0.5" in run.stdout


# ---------------------------------------------------- options derived from their passes


@register_pass("test-cli-scale-weights")
@dataclass
class ScaleWeights(Pass):
    """Scale float weights: a pass whose options its command must offer without an edit."""

    lossless = False

    factor: float = 1.0
    """How much to multiply the weights by."""
    names: list[str] = field(default_factory=list)
    """Only these weights (default: all)."""

    def run(self, graph, ctx) -> bool:
        for tensor in graph.tensors().values():
            if hasattr(tensor, "values") and (not self.names or tensor.name in self.names):
                tensor.values = tensor.values * np.float32(self.factor)
        return self.factor != 1.0


def test_every_option_of_a_pass_is_a_flag_of_its_command():
    from typer.main import get_command

    from onnxslim.cli import app
    from onnxslim.cli.compress import COMMANDS, cli_flags
    from onnxslim.registry import get_pass

    group = get_command(app)
    for command in COMMANDS:
        params = group.commands[command.name].params
        flags = {flag for param in params for flag in (*param.opts, *param.secondary_opts)}
        for option in get_pass(command.pass_name).options():
            for flag in cli_flags(command, option)[0].split("/"):
                assert flag in flags, (command.name, option.name)


def test_an_option_added_to_a_pass_appears_on_its_command_with_its_help(tmp_path, monkeypatch):
    import typer

    from onnxslim.cli.compress import PassCommand, register_pass_command

    cli = typer.Typer(callback=lambda: None, rich_markup_mode=None)
    register_pass_command(
        PassCommand("scale", "test-cli-scale-weights", "Scale MODEL's weights.", "scaled"), cli
    )
    runner = CliRunner(env={"COLUMNS": "80"})
    shown = _words(runner.invoke(cli, ["scale", "--help"]).stdout)
    assert "--factor <float> How much to multiply the weights by. [default: 1.0]" in shown
    assert "--names TEXT Only these weights (default: all). (repeatable, or comma" in shown

    monkeypatch.chdir(tmp_path)
    Path("m.onnx").write_bytes((FIXTURES / "tiny_cnn.onnx").read_bytes())
    run = runner.invoke(cli, ["scale", "m.onnx", "--factor", "2", "--names", "a,b", "--json"])
    assert run.exit_code in (0, 4), run.output  # 4: neither weight 'a' nor 'b' exists
    label = json.loads(run.stdout)["pipeline"] if run.exit_code == 0 else run.stderr
    assert "factor=2.0" in label and "names=['a', 'b']" in label
