"""onnxruntime sessions: provider choice, honest failures, outputs by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxslim import runtime
from onnxslim.errors import (
    InputDataError,
    InvalidModelError,
    ModelLoadError,
    ProviderUnavailableError,
)
from onnxslim.model import load
from onnxslim.runtime import (
    available_providers,
    create_session,
    open_session,
    provider_name,
    run,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def add_model(build_model):
    """``sum = a + b`` for float32 [N, 3]."""
    return build_model(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3])],
    )


def test_run_returns_outputs_keyed_by_name(add_model, save_model):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype=np.float32)
    outputs = run(create_session(save_model(add_model)), {"a": a, "b": b})
    assert list(outputs) == ["sum"]
    np.testing.assert_array_equal(outputs["sum"], a + b)


def test_session_from_bytes_runs(add_model):
    session = create_session(add_model.SerializeToString())
    ones = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(run(session, {"a": ones, "b": ones})["sum"], 2 * ones)


def test_cpu_session_uses_the_cpu_provider(add_model):
    session = create_session(add_model.SerializeToString(), "cpu")
    assert session.get_providers()[0] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cpu", "CPUExecutionProvider"),
        ("CUDA", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
        ("CPUExecutionProvider", "CPUExecutionProvider"),
        ("CUDAExecutionProvider", "CUDAExecutionProvider"),
    ],
)
def test_short_and_full_provider_names_resolve(name, expected):
    assert provider_name(name) == expected


def test_unknown_provider_error_lists_valid_names(add_model):
    with pytest.raises(ProviderUnavailableError) as info:
        create_session(add_model.SerializeToString(), "gpu")
    message = str(info.value)
    assert "'gpu'" in message
    assert all(name in message for name in ("cpu", "cuda", "tensorrt"))


def test_available_providers_are_short_names():
    providers = available_providers()
    assert "cpu" in providers
    assert all(name in ("cpu", "cuda", "tensorrt") for name in providers)


def test_cuda_on_a_cpu_only_build_lists_available_providers(add_model):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ProviderUnavailableError) as info:
        create_session(add_model.SerializeToString(), "cuda")
    message = str(info.value)
    assert "'cuda' is not available" in message
    assert "available: cpu" in message
    assert "\n" not in message


def test_unimplemented_op_is_an_invalid_model_error_with_ort_reason(build_model):
    model = build_model(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        domains={"com.example": 1},
    )
    with pytest.raises(InvalidModelError) as info:
        create_session(model.SerializeToString())
    message = str(info.value)
    assert message.startswith("onnxruntime cannot load the model: ")
    assert "NoSuchOp" in message
    assert "\n" not in message


def test_missing_model_file_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        create_session(tmp_path / "absent.onnx")


def test_feeds_of_the_wrong_dtype_are_an_input_data_error(add_model):
    session = create_session(add_model.SerializeToString())
    wrong = np.ones((1, 3), np.float64)
    with pytest.raises(InputDataError, match="onnxruntime rejected the inputs"):
        run(session, {"a": wrong, "b": wrong})


def test_feeds_missing_an_input_are_an_input_data_error(add_model):
    session = create_session(add_model.SerializeToString())
    with pytest.raises(InputDataError, match="'a'"):
        run(session, {"b": np.ones((1, 3), np.float32)})


def test_a_failing_kernel_is_an_invalid_model_error(build_model):
    model = build_model(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        {"target": np.array([3], np.int64)},
    )
    session = create_session(model.SerializeToString())
    with pytest.raises(InvalidModelError, match="onnxruntime failed to run the model"):
        run(session, {"x": np.ones(4, np.float32)})


def _python_without_onnxruntime(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import onnxruntime`` fails."""
    blocker = "import sys; sys.modules['onnxruntime'] = None\n"
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return subprocess.run(
        [sys.executable, "-c", blocker + code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *inherited])},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_require_onnxruntime_explains_how_to_install_when_missing():
    result = _python_without_onnxruntime(
        "from onnxslim.errors import RuntimeMissingError\n"
        "from onnxslim.runtime import require_onnxruntime\n"
        "try:\n"
        "    require_onnxruntime()\n"
        "except RuntimeMissingError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "onnxruntime is not installed: pip install -e '.[cpu]' in your onnxslim checkout "
        "('.[gpu]' for CUDA, '.[train]' for distillation)"
    )


def test_onnxslim_modules_import_without_onnxruntime():
    result = _python_without_onnxruntime(
        "import onnxslim, onnxslim.runtime, onnxslim.inputs, onnxslim.validate\nprint('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------------- open_session


@pytest.fixture
def weighted_model(build_model):
    """``y = relu(x @ w)`` with ``x @ w`` named ``hidden``; w is 4x3 float32."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) - 6
    return build_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )


def _expected_hidden(proto) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    weight = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    return x, x @ weight


@pytest.mark.parametrize("form", ["proto", "bytes", "path", "model"])
def test_open_session_exposes_intermediate_tensors_in_every_form(form, weighted_model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(weighted_model, path)
    source = {
        "proto": weighted_model,
        "bytes": weighted_model.SerializeToString(),
        "path": path,
        "model": load(path),
    }[form]
    x, hidden = _expected_hidden(weighted_model)
    with open_session(source, expose=["hidden"]) as session:
        outputs = run(session, {"x": x})
    assert list(outputs) == ["y", "hidden"]
    np.testing.assert_allclose(outputs["hidden"], hidden, rtol=1e-6)
    np.testing.assert_allclose(outputs["y"], np.maximum(hidden, 0), rtol=1e-6)


def test_open_session_leaves_the_proto_as_it_was(weighted_model):
    before = weighted_model.SerializeToString()
    with open_session(weighted_model, expose=["hidden"], optimize=False):
        pass
    assert weighted_model.SerializeToString() == before


def test_open_session_reads_external_weights_of_a_loaded_model(weighted_model, tmp_path):
    x, hidden = _expected_hidden(weighted_model)
    path = tmp_path / "external.onnx"
    onnx.save(weighted_model, path, save_as_external_data=True, size_threshold=0)
    model = load(path)
    with open_session(model, expose=["hidden"]) as session:
        np.testing.assert_allclose(run(session, {"x": x})["hidden"], hidden, rtol=1e-6)


def test_models_too_large_for_bytes_go_through_a_temporary_folder(
    weighted_model, tmp_path, monkeypatch
):
    """Past protobuf's 2 GiB a model cannot be handed over as bytes: it is written with
    external data to a temporary folder, which is gone once the block ends."""
    monkeypatch.setattr(runtime, "_BYTES_LIMIT", 16)
    monkeypatch.setattr(runtime.tempfile, "tempdir", str(tmp_path))
    x, hidden = _expected_hidden(weighted_model)
    with open_session(load(weighted_model), expose=["hidden"]) as session:
        folders = list(tmp_path.glob("onnxslim-session-*"))
        assert len(folders) == 1 and len(list(folders[0].glob("model.onnx.*.data"))) == 1
        np.testing.assert_allclose(run(session, {"x": x})["hidden"], hidden, rtol=1e-6)
    assert not list(tmp_path.glob("onnxslim-session-*"))


@pytest.mark.parametrize(
    ("opset", "imported"), [(17, False), (onnx.defs.onnx_opset_version(), True)]
)
def test_input_check_imports_onnxruntime_only_for_opsets_past_every_supported_release(
    tmp_path: Path, opset: int, imported: bool
) -> None:
    """Opsets up to 20 load on every onnxruntime the extras allow (1.17 on): the input check
    accepts them without importing onnxruntime; a newer opset is probed on the installed one."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    script = (
        "import sys\n"
        "from onnxslim.checking import check_input_model\n"
        "from onnxslim.model import load\n"
        f"check_input_model(load({str(path)!r}))\n"
        "print('onnxruntime' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(imported)


def test_sessions_without_prepacking_reach_onnxruntime_and_compute_the_same(
    weighted_model, tmp_path
):
    """prepack=False is onnxruntime's own setting on the session, and a float model's
    outputs do not depend on it."""
    x, hidden = _expected_hidden(weighted_model)
    path = tmp_path / "external.onnx"
    onnx.save(weighted_model, path, save_as_external_data=True, size_threshold=0)
    outputs = {}
    for prepack in (True, False):
        with open_session(load(path), expose=["hidden"], prepack=prepack) as session:
            options = session.get_session_options()
            if prepack:
                with pytest.raises(Exception, match="disable_prepacking"):
                    options.get_session_config_entry("session.disable_prepacking")
            else:
                assert options.get_session_config_entry("session.disable_prepacking") == "1"
            outputs[prepack] = run(session, {"x": x})
    np.testing.assert_allclose(outputs[False]["hidden"], hidden, rtol=1e-6)
    for name in ("y", "hidden"):
        np.testing.assert_array_equal(outputs[False][name], outputs[True][name])
