"""Honest exits and readable reports (issue 15): a command that changes nothing says so and
writes nothing, every report is titled by its command and reads at 80 columns, and
validation runs on the user's data. Every test runs in process and as a subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_invocation import assert_one_error_line, assert_reads_cleanly, both_ways_fixture
from onnx import TensorProto, helper, numpy_helper

import onnxslim as package

onnxslim = both_ways_fixture()


def _words(text: str) -> str:
    return " ".join(text.split())


def _one_conv_model(path: str = "one_conv.onnx") -> str:
    """A Conv whose output is the graph's: no channel can go, no weight is large enough to
    cluster."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# ------------------------------------------------------------------------- honest exits


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["prune"], ["prune changed nothing", "nothing to prune"]),
        (["cluster"], ["cluster changed nothing", "no weight of 256 or more elements"]),
        (["convert", "--opset", "17"], ["convert --opset 17 changed nothing"]),
    ],
)
def test_a_command_that_changes_nothing_exits_4_and_writes_nothing(onnxslim, arguments, words):
    model = _one_conv_model()

    run = onnxslim(arguments[0], model, "out.onnx", *arguments[1:])

    assert_one_error_line(run, 4, *words, "nothing was written")
    assert not Path("out.onnx").exists()


def test_optimize_with_nothing_to_do_says_so_first_and_writes_the_model(onnxslim):
    model = _one_conv_model()

    run = onnxslim("optimize", model, "out.onnx")

    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[0].startswith("nothing to optimize")
    assert Path("out.onnx").is_file()


def test_convert_shows_the_opset_and_ir_version_before_and_after(onnxslim):
    run = onnxslim("convert", "digits_cnn.onnx", "--opset", "21", "--ir-version", "10")

    assert run.exit_code == 0, run.output
    assert re.search(r"opset\s*│\s*17\s*│\s*21", run.stdout)
    assert re.search(r"IR version\s*│\s*8\s*│\s*10", run.stdout)
    assert onnx.load("digits_cnn.converted.onnx").opset_import[0].version == 21


def test_sparsify_stores_sparsely_by_default_so_the_file_shrinks(onnxslim):
    run = onnxslim("sparsify", "digits_cnn.onnx", "--json")

    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["after"]["file_bytes"] < 0.7 * report["before"]["file_bytes"]


# ---------------------------------------------------------------------------- reports


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("quantize", ["--calib", "digits_calib.npz"]),
        ("prune", []),
        ("float16", []),
        ("sparsify", []),
        ("cluster", []),
        ("convert", ["--opset", "21"]),
    ],
)
def test_each_command_titles_its_report_and_reads_at_80_columns(onnxslim, command, extra):
    run = onnxslim(command, "digits_cnn.onnx", "out.onnx", *extra)

    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[0].startswith(f"onnxslim {command}")
    assert_reads_cleanly(run)


def test_quantize_reports_its_output_cosine_in_the_table_and_as_json(onnxslim):
    shown = onnxslim("quantize", "digits_cnn.onnx", "--calib", "digits_calib.npz")
    data = onnxslim("quantize", "digits_cnn.onnx", "--calib", "digits_calib.npz", "--json")

    row = re.search(r"│ held-out cosine\s*│\s*│\s*([0-9.]+)\s*│ quantize", shown.stdout)
    assert row, shown.stdout
    cosine = json.loads(data.stdout)["metrics"]["quantize"]["held-out cosine"]
    assert float(row.group(1)) == pytest.approx(cosine, abs=1e-6)
    assert cosine > 0.999


def test_notes_print_whole_below_the_tables(onnxslim):
    run = onnxslim("quantize", "digits_cnn.onnx", "--calib", "digits_calib.npz")

    last_table_line = max(i for i, line in enumerate(run.stdout.splitlines()) if "└" in line)
    below = _words("\n".join(run.stdout.splitlines()[last_table_line + 1 :]))
    assert "note (quantize): quantized 9 layer(s)" in below
    assert re.search(
        r"held-out quality: top-1 agreement [\d.]+%, cosine [\d.]+ \(worst sample [\d.]+\) "
        r"on \d+ held-out sample\(s\)",
        below,
    )
    assert_reads_cleanly(run)


def test_notes_of_a_single_pass_command_speak_its_options(onnxslim):
    run = onnxslim("cluster", "digits_cnn.onnx", "--bits", "4", "--min-size", "100000")

    assert_one_error_line(run, 4, "no weight of 100000 or more elements")


def test_the_synthesized_data_warning_prints_once_as_one_line(onnxslim):
    run = onnxslim("quantize", "digits_cnn.onnx")

    assert run.exit_code == 0, run.output
    warnings = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: no calibration data given")
    assert "UserWarning" not in run.output and "no calibration data" not in run.stdout


# ------------------------------------------------------------------------- validation


def test_optimize_validates_on_the_calibration_data_a_pass_was_given(onnxslim):
    run = onnxslim(
        "optimize",
        "digits_cnn.onnx",
        "q.onnx",
        "--passes",
        "quantize(calib=digits_calib.npz)",
        "--validate",
        "--min-cosine",
        "0.99",
    )

    assert run.exit_code == 0, run.output
    assert "200 sample(s) from digits_calib.npz, element-wise tolerance off" in _words(run.stdout)
    assert "outputs match" in run.stdout


def _quantize() -> None:
    """Write q.onnx, the digits CNN quantized on its calibration data (through the API: the
    tests below are about validate)."""
    from onnxslim.registry import create_pass

    step = create_pass("quantize", {"calib": Path("digits_calib.npz")})
    assert package.optimize("digits_cnn.onnx", [step], output="q.onnx").report.written


def test_validate_reads_a_data_file_with_labels(onnxslim):
    _quantize()

    data = ["--inputs", "digits_test.npz"]
    run = onnxslim("validate", "digits_cnn.onnx", "q.onnx", *data, "--min-cosine", "0.99")

    assert run.exit_code == 0, run.output
    assert "450 sample(s) from digits_test.npz" in _words(run.stdout)
    assert_reads_cleanly(run)


def test_min_cosine_decides_alone_for_a_lossy_model(onnxslim):
    _quantize()
    data = ["--inputs", "digits_test.npz"]  # random inputs are far from digits: cosine 0.5

    passing = onnxslim("validate", "digits_cnn.onnx", "q.onnx", *data, "--min-cosine", "0.99")
    failing = onnxslim(
        "validate", "digits_cnn.onnx", "q.onnx", *data, "--min-cosine", "0.999999", "--atol", "inf"
    )

    assert passing.exit_code == 0, passing.output
    assert failing.exit_code == 1, failing.output
    assert passing.stderr == failing.stderr == ""  # no numpy warning for an infinite atol
    assert re.search(r"✗ logits: cosine 0\.99\d+ < min_cosine 0\.999999$", failing.stdout, re.M)


def test_a_failed_validation_names_the_reason_below_the_table(onnxslim):
    run = onnxslim("optimize", "digits_cnn.onnx", "q.onnx", "--passes", "quantize", "--validate")

    assert run.exit_code == 1
    assert "elements outside atol=0.0001" in _words(run.stdout)
    assert not Path("q.onnx").exists()
    assert_reads_cleanly(run)


# --------------------------------------------------------------------- live display


def test_the_spinner_and_the_calibration_bar_share_a_terminal(tmp_path: Path):
    """In a real terminal, rich allows one live display per console: the bar must pause the
    spinner, or the run ends in a LiveError (or the two redraw the same line in turn)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxslim",
            "quantize",
            str(fixtures / "digits_cnn.onnx"),
            str(tmp_path / "q.onnx"),
            "--calib",
            str(fixtures / "digits_calib.npz"),
        ],
        stdin=secondary,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "80", "TERM": "xterm"},
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(timeout=600) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "Traceback" not in text and "LiveError" not in text
    assert "calibrating" in text  # the bar was drawn, so the spinner was live around it
    assert re.search(r"\b\d+/128\b", text)  # it counts samples: 128 of the file's 200 rows
