"""Finding passes by name: spec strings, recipes, plugin files and installed entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from onnxslim.errors import PipelineSpecError
from onnxslim.pipeline import FixedPoint
from onnxslim.registry import (
    DEFAULT_PIPELINE,
    load_plugin,
    load_recipe,
    parse_pipeline,
    registered_passes,
)


def _labels(steps) -> list:
    return [
        [_labels(s.steps), s.max_iterations] if isinstance(s, FixedPoint) else s.label()
        for s in steps
    ]


def test_built_in_passes_are_registered():
    assert {"cleanup", "fold-constants", "infer-shapes"} <= set(registered_passes())


def test_the_default_pipeline_parses():
    steps = parse_pipeline(DEFAULT_PIPELINE)
    assert isinstance(steps[0], FixedPoint)


def test_spec_with_options_and_fixed_point_groups():
    steps = parse_pipeline(
        "cleanup(remove_identity=false), [infer-shapes, cleanup]*3, infer-shapes"
    )
    assert _labels(steps) == [
        "cleanup(remove_identity=False)",
        [["infer-shapes", "cleanup"], 3],
        "infer-shapes",
    ]
    assert steps[0].remove_identity is False


def test_skip_removes_a_pass_everywhere():
    steps = parse_pipeline("cleanup,[infer-shapes,cleanup]*2", skip=["cleanup"])
    assert _labels(steps) == [[["infer-shapes"], 2]]


def test_unknown_pass_lists_the_choices_and_a_suggestion():
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("cleanup,fold-constant")
    message = str(info.value)
    assert "unknown pass 'fold-constant'" in message
    assert "did you mean 'fold-constants'" in message
    assert "cleanup" in message and "infer-shapes" in message


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(PipelineSpecError, match="has no option 'nope'.*remove_identity: bool"):
        parse_pipeline("cleanup(nope=1)")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cleanup(remove_identity=maybe)", "expected true or false"),
        ("infer-shapes(data_propagation=2.5)", "expected true or false"),
        ("cleanup,", "expected a pass name"),
        ("[cleanup", "missing ']'"),
        ("[cleanup]*0", "positive integer"),
        ("cleanup(remove_identity)", "expected option=value"),
        ("cleanup cleanup", "expected ','"),
    ],
)
def test_malformed_specs_are_errors_that_point_at_the_problem(spec, message):
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec)


def test_recipe_file(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        textwrap.dedent(
            """
            [[steps]]
            pass = "cleanup"
            remove_dropout = false

            [[steps]]
            repeat = ["infer-shapes", "cleanup"]
            max_iterations = 4
            """
        )
    )
    assert _labels(load_recipe(recipe)) == [
        "cleanup(remove_dropout=False)",
        [["infer-shapes", "cleanup"], 4],
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[steps]]\npass = 'cleanup'\nremove_dropout = 'no'\n", "expected true or false"),
        ("[[steps]]\nname = 'cleanup'\n", "needs 'pass"),
        ("steps = []\n", "non-empty"),
        ("[[steps\n", "not valid TOML"),
    ],
)
def test_bad_recipes_are_clear_errors(tmp_path, body, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(body)
    with pytest.raises(PipelineSpecError, match=message):
        load_recipe(recipe)


PLUGIN = '''
from dataclasses import dataclass
import onnx_graphsurgeon as gs
from onnxslim import Pass, PassContext, register_pass


@register_pass("{name}")
@dataclass
class Renamer(Pass):
    """Prefix every node name."""

    prefix: str = "x_"
    times: int = 1

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        for node in graph.nodes:
            node.name = self.prefix * self.times + (node.name or node.op)
        return bool(graph.nodes)
'''


def test_plugin_file_registers_typed_passes(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN.format(name="rename-nodes-file"))
    assert load_plugin(plugin) == ["rename-nodes-file"]
    (step,) = parse_pipeline("rename-nodes-file(prefix='n_', times=2)")
    assert (step.prefix, step.times) == ("n_", 2)
    with pytest.raises(PipelineSpecError, match="expected int"):
        parse_pipeline("rename-nodes-file(times=two)")


def test_missing_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineSpecError, match="plugin file not found"):
        load_plugin(tmp_path / "absent.py")


def test_installed_entry_point_plugins_are_discovered(tmp_path):
    """A real distribution on sys.path with an ``onnxslim.passes`` entry point."""
    (tmp_path / "slim_extra.py").write_text(PLUGIN.format(name="rename-nodes-ep"))
    dist_info = tmp_path / "slim_extra-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: slim-extra\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[onnxslim.passes]\nrename = slim_extra\n")
    code = (
        "from onnxslim.registry import registered_passes; "
        "print('rename-nodes-ep' in registered_passes())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])
            ),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "True"


def test_default_in_a_spec_stands_for_the_default_pipeline():
    steps = parse_pipeline("default,cleanup")
    assert _labels(steps) == [*_labels(parse_pipeline(DEFAULT_PIPELINE)), "cleanup"]


def test_default_takes_no_options():
    with pytest.raises(PipelineSpecError, match="takes no options"):
        parse_pipeline("default(x=1)")


def test_a_recipe_step_may_name_the_default_pipeline(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\npass = "default"\n\n[[steps]]\npass = "cleanup"\n')
    assert _labels(load_recipe(recipe)) == _labels(parse_pipeline("default,cleanup"))


def test_no_pass_may_be_registered_as_default():
    from onnxslim import Pass, register_pass

    with pytest.raises(PipelineSpecError, match="default pipeline"):

        @register_pass("default")
        class Default(Pass):
            pass
