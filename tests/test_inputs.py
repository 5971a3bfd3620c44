"""Model inputs: signatures, synthesized data that the model accepts, and data from files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.errors import InputDataError
from onnxslim.inputs import (
    IdRange,
    InputSpec,
    id_ranges,
    input_specs,
    load_inputs,
    parse_input_shapes,
    resolve_shapes,
    split_rows,
    synthesize_inputs,
)
from onnxslim.runtime import create_session, run

vi = helper.make_tensor_value_info


# ----------------------------------------------------------------------------- signatures


def test_specs_list_inputs_with_types_and_symbolic_dims(symbolic_dims_model):
    specs = {spec.name: spec for spec in input_specs(symbolic_dims_model)}
    assert list(specs) == ["x", "y", "z", "flags", "count"]
    assert specs["x"].shape == (None, 4)
    assert specs["y"].shape == ("batch", "length")
    assert specs["x"].dtype == np.float16
    assert specs["y"].dtype == np.float64
    assert specs["flags"].dtype == np.bool_


def test_initializers_listed_as_graph_inputs_are_not_inputs(build_model):
    model = build_model(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [vi("x", TensorProto.FLOAT, [2]), vi("bias", TensorProto.FLOAT, [2])],
        [vi("y", TensorProto.FLOAT, [2])],
        {"bias": np.ones(2, np.float32)},
    )
    assert [spec.name for spec in input_specs(model)] == ["x"]


def test_specs_from_a_path_do_not_read_external_data(classifier_model, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(
        classifier_model,
        str(path),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    (tmp_path / "weights.bin").unlink()
    (spec,) = input_specs(path)
    assert (spec.name, spec.shape) == ("image", ("N", 3, 8, 8))


def test_bfloat16_input_has_no_numpy_dtype(build_model):
    model = build_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [vi("x", TensorProto.BFLOAT16, [2])],
        [vi("y", TensorProto.BFLOAT16, [2])],
    )
    assert input_specs(model)[0].dtype is None


# ----------------------------------------------------------------------------- id ranges


def test_ids_feeding_a_gather_through_a_cast_range_over_the_table(text_embedding_model):
    assert id_ranges(text_embedding_model)["input_ids"] == IdRange(0, 50)


def test_names_give_masks_and_token_types_zero_or_one(text_embedding_model):
    ranges = id_ranges(text_embedding_model)
    assert ranges["attention_mask"] == IdRange(0, 2)
    assert ranges["token_type_ids"] == IdRange(0, 2)


def test_position_ids_are_positional_below_the_table_size(text_embedding_model):
    assert id_ranges(text_embedding_model)["position_ids"] == IdRange(0, 32, positional=True)


def test_a_single_row_token_type_table_limits_token_types_to_zero(make_text_model):
    assert id_ranges(make_text_model(type_vocab=1))["token_type_ids"] == IdRange(0, 1)


def test_gather_bound_follows_reshapes_and_uses_the_gathered_axis(build_model):
    model = build_model(
        [
            helper.make_node("Unsqueeze", ["ids", "axes"], ["ids2d"]),
            helper.make_node("Flatten", ["ids2d"], ["flat"]),
            helper.make_node("Reshape", ["flat", "target"], ["again"]),
            helper.make_node("Gather", ["table", "again"], ["rows"], axis=1),
        ],
        [vi("ids", TensorProto.INT64, [4])],
        [vi("rows", TensorProto.FLOAT, [3, 4])],
        {
            "axes": np.array([0], np.int64),
            "target": np.array([4], np.int64),
            "table": np.zeros((3, 7), np.float32),
        },
    )
    assert id_ranges(model)["ids"] == IdRange(0, 7)


def test_other_integer_inputs_range_over_one_to_ten_so_that_no_size_is_zero(symbolic_dims_model):
    assert id_ranges(symbolic_dims_model) == {"count": IdRange(1, 10)}


# ----------------------------------------------------------------------------- shapes


def test_parse_input_shapes():
    assert parse_input_shapes(["image:1,3,224,224", "input:0:2,5"]) == {
        "image": [1, 3, 224, 224],
        "input:0": [2, 5],
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["image"], "NAME:D1,D2"),
        ([":1,2"], "NAME:D1,D2"),
        (["image:1,x"], "integers"),
        (["image:"], "integers"),
        (["image:1,0"], "positive"),
        (["image:1", "image:2"], "twice"),
    ],
)
def test_bad_input_shape_syntax_is_an_input_data_error(items, message):
    with pytest.raises(InputDataError, match=message):
        parse_input_shapes(items)


def test_unnamed_dims_are_one_and_named_dims_default_by_name(symbolic_dims_model):
    shapes = resolve_shapes(input_specs(symbolic_dims_model))
    assert shapes == {
        "x": (1, 4),
        "y": (1, 16),
        "z": (16, 3),
        "flags": (2,),
        "count": (1,),
    }


def test_a_given_shape_sets_its_dim_names_for_every_input(symbolic_dims_model):
    shapes = resolve_shapes(input_specs(symbolic_dims_model), {"y": [2, 5]})
    assert shapes["y"] == (2, 5)
    assert shapes["z"] == (5, 3)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"z": [5, 3, 1]}, "input 'z'.*rank 3.*expects rank 2"),
        ({"z": [5, 4]}, "input 'z'.*has 4 at axis 1.*fixes it to 3"),
        ({"w": [1]}, "'w', which is not an input"),
    ],
)
def test_given_shapes_must_fit_the_model(symbolic_dims_model, given, message):
    with pytest.raises(InputDataError, match=message):
        resolve_shapes(input_specs(symbolic_dims_model), given)


def test_an_input_of_unknown_rank_needs_a_given_shape():
    spec = InputSpec("blob", TensorProto.FLOAT, None)
    with pytest.raises(InputDataError, match="input 'blob' has an unknown rank"):
        resolve_shapes([spec])
    assert resolve_shapes([spec], {"blob": [2, 2]}) == {"blob": (2, 2)}


# ----------------------------------------------------------------------------- synthesis


def test_synthesized_inputs_have_the_inputs_dtypes_and_shapes(symbolic_dims_model):
    specs = input_specs(symbolic_dims_model)
    feeds = synthesize_inputs(specs, seed=3)
    shapes = resolve_shapes(specs)
    for spec in specs:
        assert feeds[spec.name].dtype == spec.dtype
        assert feeds[spec.name].shape == shapes[spec.name]


def test_synthesized_ids_share_dims_and_respect_their_ranges(text_embedding_model):
    feeds = synthesize_inputs(input_specs(text_embedding_model), {"input_ids": [3, 12]})
    assert {feed.shape for feed in feeds.values()} == {(3, 12)}
    ids = feeds["input_ids"]
    assert ids.min() >= 0 and ids.max() < 50
    assert len(np.unique(ids)) > 10  # spread over the table, not stuck below 10
    assert set(np.unique(feeds["attention_mask"])) <= {0, 1}
    assert set(np.unique(feeds["token_type_ids"])) <= {0, 1}
    np.testing.assert_array_equal(feeds["position_ids"], np.tile(np.arange(12), (3, 1)))


def test_synthesized_inputs_run_on_onnxruntime(text_embedding_model):
    specs = input_specs(text_embedding_model)
    session = create_session(text_embedding_model.SerializeToString())
    outputs = run(session, synthesize_inputs(specs, {"input_ids": [2, 40]}))
    assert outputs["hidden"].shape == (2, 40, 8)


def test_positions_wrap_below_the_position_table(text_embedding_model):
    feeds = synthesize_inputs(input_specs(text_embedding_model), {"input_ids": [1, 40]})
    assert feeds["position_ids"].max() == 31


def test_synthesized_bools_take_both_values(build_model):
    model = build_model(
        [helper.make_node("Identity", ["flags"], ["out"])],
        [vi("flags", TensorProto.BOOL, [1000])],
        [vi("out", TensorProto.BOOL, [1000])],
    )
    flags = synthesize_inputs(input_specs(model))["flags"]
    assert 300 < flags.sum() < 700


def test_synthesis_is_deterministic_in_seed_and_sample_index(text_embedding_model):
    specs = input_specs(text_embedding_model)

    def ids(seed, index):
        return synthesize_inputs(specs, seed=seed, sample_index=index)["input_ids"]

    np.testing.assert_array_equal(ids(0, 0), ids(0, 0))
    assert not np.array_equal(ids(0, 0), ids(0, 1))
    assert not np.array_equal(ids(0, 0), ids(1, 0))


def test_bfloat16_inputs_cannot_be_synthesized(build_model):
    model = build_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [vi("x", TensorProto.BFLOAT16, [2])],
        [vi("y", TensorProto.BFLOAT16, [2])],
    )
    with pytest.raises(InputDataError, match="input 'x': cannot synthesize bfloat16"):
        synthesize_inputs(input_specs(model))


# ----------------------------------------------------------------------------- loading


@pytest.fixture
def text_specs(text_embedding_model):
    return input_specs(text_embedding_model)


def _text_sample(batch=2, length=5, dtype=np.int64):
    return {
        name: np.ones((batch, length), dtype)
        for name in ("input_ids", "token_type_ids", "position_ids", "attention_mask")
    }


def test_npz_with_one_sample(tmp_path, text_specs):
    np.savez(tmp_path / "data.npz", **_text_sample())
    samples = load_inputs(tmp_path / "data.npz", text_specs)
    assert len(samples) == 1
    assert samples[0]["input_ids"].shape == (2, 5)


def test_npz_arrays_one_rank_up_hold_several_samples(tmp_path, classifier_model):
    images = np.random.default_rng(0).standard_normal((4, 2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "images.npz", image=images)
    samples = load_inputs(tmp_path / "images.npz", input_specs(classifier_model))
    assert len(samples) == 4
    np.testing.assert_array_equal(samples[3]["image"], images[3])


def test_single_sample_arrays_are_shared_by_every_sample(tmp_path, text_specs):
    data = _text_sample()
    data["input_ids"] = np.arange(30).reshape(3, 2, 5)
    np.savez(tmp_path / "data.npz", **data)
    samples = load_inputs(tmp_path / "data.npz", text_specs)
    assert len(samples) == 3
    np.testing.assert_array_equal(samples[1]["input_ids"], np.arange(10, 20).reshape(2, 5))
    np.testing.assert_array_equal(samples[2]["attention_mask"], data["attention_mask"])


def test_a_folder_of_npz_files_is_read_in_name_order(tmp_path, classifier_model):
    for index in (2, 0, 1):
        image = np.full((1, 3, 8, 8), index, np.float32)
        np.savez(tmp_path / f"sample{index}.npz", image=image)
    samples = load_inputs(tmp_path, input_specs(classifier_model))
    assert [float(sample["image"][0, 0, 0, 0]) for sample in samples] == [0.0, 1.0, 2.0]


def test_a_folder_of_npy_files_named_after_inputs(tmp_path, text_specs):
    for name, array in _text_sample().items():
        np.save(tmp_path / f"{name}.npy", array)
    samples = load_inputs(tmp_path, text_specs)
    assert len(samples) == 1
    assert set(samples[0]) == {spec.name for spec in text_specs}


def test_float64_data_is_cast_to_a_float32_input(tmp_path, classifier_model):
    np.savez(tmp_path / "data.npz", image=np.ones((1, 3, 8, 8), np.float64))
    (sample,) = load_inputs(tmp_path / "data.npz", input_specs(classifier_model))
    assert sample["image"].dtype == np.float32


def test_int32_ids_are_cast_to_int64(tmp_path, text_specs):
    np.savez(tmp_path / "data.npz", **_text_sample(dtype=np.int32))
    (sample,) = load_inputs(tmp_path / "data.npz", text_specs)
    assert sample["input_ids"].dtype == np.int64


def _without(data, name):
    return {key: value for key, value in data.items() if key != name}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_without(_text_sample(), "attention_mask"), "no data for input 'attention_mask'"),
        ({**_text_sample(), "scores": np.ones(2)}, "'scores' is not an input"),
        ({**_text_sample(), "input_ids": np.ones(5, np.int64)}, "input 'input_ids' expects rank 2"),
        (
            {**_text_sample(), "input_ids": np.ones((2, 2, 2, 5), np.int64)},
            "input 'input_ids' expects rank 2",
        ),
        (
            {**_text_sample(), "input_ids": np.ones((2, 5), np.float32)},
            "input 'input_ids' expects int64 data, got float32",
        ),
        (
            {**_text_sample(), "input_ids": np.full((2, 5), 2**63 + 5, np.uint64)},
            "input 'input_ids' expects int64 data, got uint64 values outside",
        ),
        (
            {
                **_text_sample(),
                "input_ids": np.ones((3, 2, 5), np.int64),
                "attention_mask": np.ones((4, 2, 5), np.int64),
            },
            "different numbers of samples",
        ),
    ],
)
def test_bad_npz_data_is_an_input_data_error(tmp_path, text_specs, data, message):
    np.savez(tmp_path / "data.npz", **data)
    with pytest.raises(InputDataError, match=message):
        load_inputs(tmp_path / "data.npz", text_specs)


def test_a_labels_array_is_left_out_of_the_samples(tmp_path, text_specs):
    np.savez(tmp_path / "data.npz", **_text_sample(), labels=np.ones(2, np.int64))
    (sample,) = load_inputs(tmp_path / "data.npz", text_specs)
    assert set(sample) == {spec.name for spec in text_specs}


def test_a_stack_of_what_a_fixed_batch_takes_is_read_as_samples(tmp_path, build_model):
    model = build_model(
        [helper.make_node("Identity", ["image"], ["out"])],
        [vi("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [vi("out", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    images = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", image=images)
    samples = load_inputs(tmp_path / "data.npz", input_specs(model))
    assert len(samples) == 6
    np.testing.assert_array_equal(samples[4]["image"], images[4:5])


def test_split_rows_cuts_a_batch_into_samples_of_one_row(tmp_path, text_specs):
    np.savez(tmp_path / "data.npz", **_text_sample(batch=3))
    rows = split_rows(load_inputs(tmp_path / "data.npz", text_specs), text_specs)
    assert len(rows) == 3
    assert rows[2]["input_ids"].shape == (1, 5)


def test_a_static_dim_mismatch_names_the_input_and_axis(tmp_path, classifier_model):
    np.savez(tmp_path / "data.npz", image=np.ones((1, 1, 8, 8), np.float32))
    with pytest.raises(InputDataError, match="input 'image' expects 3 at axis 1"):
        load_inputs(tmp_path / "data.npz", input_specs(classifier_model))


def test_an_int64_input_value_out_of_int32_range_is_rejected(tmp_path, build_model):
    model = build_model(
        [helper.make_node("Identity", ["ids"], ["out"])],
        [vi("ids", TensorProto.INT32, [2])],
        [vi("out", TensorProto.INT32, [2])],
    )
    np.savez(tmp_path / "data.npz", ids=np.array([1, 2**40], np.int64))
    with pytest.raises(InputDataError, match="input 'ids'.*outside"):
        load_inputs(tmp_path / "data.npz", input_specs(model))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent.npz", "no such file or folder"),
        (lambda root: root, "no .npz or .npy files"),
        (lambda root: _write(root / "data.txt", b"1,2,3"), "expected a .npz file"),
        (lambda root: _write(root / "data.npz", b"not a zip"), "cannot read as .npz"),
    ],
)
def test_unreadable_input_locations_are_input_data_errors(
    tmp_path, classifier_model, make, message
):
    with pytest.raises(InputDataError, match=message):
        load_inputs(make(tmp_path), input_specs(classifier_model))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_a_folder_mixing_npz_and_npy_is_rejected(tmp_path, classifier_model):
    image = np.ones((1, 3, 8, 8), np.float32)
    np.savez(tmp_path / "a.npz", image=image)
    np.save(tmp_path / "image.npy", image)
    with pytest.raises(InputDataError, match="both .npz and .npy"):
        load_inputs(tmp_path, input_specs(classifier_model))
