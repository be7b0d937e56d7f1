"""Issue 35, poor "Settings": every value given by name (``--params_override``,
``DistillConfig.with_settings``, Kubeflow's settings, ``tfkd.distill(**fields)``) is checked against
its field's type annotation in one place (:func:`tfkd.config.override`), and a config built
directly is checked the same way by ``validate()``: one ConfigError line naming the key, the
expected type and what came, never a TypeError or AttributeError from deep inside, never a value
accepted with another meaning. A ``--plugins`` module that raises on import is one line naming it.
"""

import os
import re
import subprocess
import sys

import pytest

import tfkd
from tfkd import errors
from tfkd import images
from tfkd import methods
from tfkd import pipeline
from tfkd import student as student_lib

from conftest import REPO


def _settings(settings):
    return pipeline.DistillConfig(workdir="w").with_settings(settings)


def test_a_boolean_query_budget_is_refused_not_read_as_one_image():
    # Before the fix: accepted and validated, teacher.query_budget == True (a budget of 1).
    with pytest.raises(errors.ConfigError,
                       match=r"^settings\['teacher.query_budget'\]: expected int or None, got "
                             r"bool True$"):
        _settings({"teacher.query_budget": True})
    assert _settings({"teacher.query_budget": 400}).teacher.query_budget == 400
    assert _settings({"teacher.query_budget": None}).teacher.query_budget is None


def test_a_class_map_given_as_a_string_is_refused_not_read_character_by_character():
    # Before the fix: accepted as class_map='3,0,1', iterated as '3', ',', '0', ...
    with pytest.raises(errors.ConfigError,
                       match=r"^settings\['teacher.class_map'\]: expected list of int or None, "
                             r"got str '3,0,1'$"):
        _settings({"teacher.class_map": "3,0,1"})
    with pytest.raises(errors.ConfigError, match=r"teacher.class_map\[1\]'\]: expected int, "
                                                 r"got float 0.5"):
        _settings({"teacher.class_map": [3, 0.5]})
    with pytest.raises(errors.ConfigError, match=r"compress'\]: expected list, got str 'int8'"):
        _settings({"compress": "int8"})  # Before the fix: the tuple of letters 'i', 'n', 't', '8'.
    assert _settings({"teacher.class_map": [3, 0, 1]}).teacher.class_map == (3, 0, 1)


@pytest.mark.parametrize("key", ["student.", ".student", "student..epochs", "", "teacher.retry."])
def test_an_empty_or_partial_setting_name_is_refused(key):
    # Before the fix: {"student.": 1} replaced the whole student config by 1 (an AttributeError
    # in validate), {"": 1} and {".student": 1} said "no such setting ''".
    with pytest.raises(errors.ConfigError, match=rf"^settings\[{key!r}\]: expected a dotted "
                                                  r"setting name"):
        _settings({key: 1})


@pytest.mark.parametrize("key, value, got", [
    ("student", 1, "int 1"), ("teacher", "host:8500", "str 'host:8500'"),
    ("teacher.retry", [3], "list [3]"), ("images", "/data", "str '/data'"),
])
def test_a_nested_config_is_replaced_only_by_a_mapping_of_its_fields(key, value, got):
    # Before the fix: {"student": 1} was accepted (an AttributeError in validate), {"images":
    # "/data"} too (a str where an ImageSourceConfig is read).
    with pytest.raises(errors.ConfigError,
                       match=rf"^settings\[{key!r}\]: expected a mapping of (\w+Config|RetryPolicy) "
                             rf"fields( or None)?, got {re.escape(got)}$"):
        _settings({key: value})


def test_a_nested_config_given_as_a_mapping_is_checked_field_by_field():
    config = _settings({"student": {"epochs": 3}, "images": {"path": "/data", "height": 28.0}})
    assert config.student.epochs == 3 and config.student.batch_size == 64  # Only epochs changed.
    assert config.images == images.ImageSourceConfig(path="/data", height=28)
    with pytest.raises(errors.ConfigError, match=r"^settings\['images'\]: expected a mapping of "
                                                 r"ImageSourceConfig fields with path, got "):
        _settings({"images": {"height": 28}})
    with pytest.raises(errors.ConfigError, match=r"^settings\['images.path'\]: expected str, got "
                                                 r"int 7$"):
        _settings({"images": {"path": 7}})
    with pytest.raises(errors.ConfigError, match=r"^settings\['student.epochs'\]: expected int or "
                                                 r"None, got str 'ten'$"):
        _settings({"student": {"epochs": "ten"}})
    with pytest.raises(errors.ConfigError, match=r"^settings\['seed.x'\]: 'seed' holds a value"):
        _settings({"seed.x": 1})


@pytest.mark.parametrize("settings, message", [
    ({"num_shots": "20"}, r"num_shots'\]: expected int or None, got str '20'"),
    ({"num_shots": 2.5}, r"num_shots'\]: expected int or None, got float 2.5"),
    ({"seed": None}, r"seed'\]: expected int, got NoneType None"),
    ({"student.learning_rate": "fast"}, r"student.learning_rate'\]: expected float, got str"),
    ({"student.learning_rate": False}, r"student.learning_rate'\]: expected float, got bool"),
    ({"evaluate_teacher": "yes"}, r"evaluate_teacher'\]: expected bool, got str 'yes'"),
    ({"evaluate_teacher": 1}, r"evaluate_teacher'\]: expected bool, got int 1"),
    ({"student.jit_compile": 0}, r"student.jit_compile'\]: expected bool or None, got int 0"),
    ({"teacher.target": 8500}, r"teacher.target'\]: expected str, got int 8500"),
    ({"method": "zskd", "zskd.betas": [1, "x"]}, r"zskd.betas\[1\]'\]: expected float, got str 'x'"),
    ({"dataset": ["cifar10"]}, r"dataset'\]: expected str, got list \['cifar10'\]"),
])
def test_a_value_of_the_wrong_type_is_one_config_error_naming_key_type_and_value(settings,
                                                                                  message):
    # Before the fix: accepted by with_settings, then a TypeError (comparisons of str and int),
    # or accepted with another meaning (evaluate_teacher='yes' is true, jit_compile=0 is off).
    with pytest.raises(errors.ConfigError, match=r"^settings\['" + message):
        _settings(settings)


def test_json_numbers_and_lists_become_the_fields_types():
    """KFP's protobuf Struct makes every number a float; JSON has no tuple and no float 1.0."""
    config = _settings({"num_shots": 500.0, "student.learning_rate": 1, "method": "zskd",
                        "zskd.betas": [1, 0], "teacher.class_map": (1.0, 0.0)})
    assert config.num_shots == 500 and type(config.num_shots) is int
    assert config.student.learning_rate == 1.0 and type(config.student.learning_rate) is float
    betas = config.resolved().method_config.zskd.betas
    assert betas == (1.0, 0.0) and all(type(b) is float for b in betas)
    assert config.teacher.class_map == (1, 0) and all(type(c) is int for c in config.teacher.class_map)
    assert _settings({"cvae.hidden": [8, 4]}).resolved().method_config.cvae.hidden == (8, 4)
    with pytest.raises(errors.ConfigError, match=r"^settings: expected a mapping of setting names"):
        pipeline.DistillConfig(workdir="w").with_settings([("seed", 1)])


def test_numpy_numbers_instances_and_long_values():
    import numpy as np

    config = _settings({"seed": np.int64(5), "student.learning_rate": np.float32(0.5),
                        "teacher": tfkd.TeacherConfig(target="h:1")})
    assert type(config.seed) is int and config.seed == 5
    assert type(config.student.learning_rate) is float and config.student.learning_rate == 0.5
    assert config.teacher == tfkd.TeacherConfig(target="h:1")  # An instance replaces the config.
    import pathlib

    assert _settings({"workdir": pathlib.Path("/tmp/run")}).workdir == "/tmp/run"
    pipeline.DistillConfig(workdir=pathlib.Path("/tmp/run")).validate()  # A path is a str field's.
    with pytest.raises(errors.ConfigError, match=r"^settings\['workdir'\]: expected str, got bytes"):
        _settings({"workdir": b"/x"})
    with pytest.raises(errors.ConfigError,
                       match=r"^settings\['seed'\]: expected int, got bool np.True_$"):
        _settings({"seed": np.bool_(True)})
    with pytest.raises(errors.ConfigError) as raised:
        _settings({"teacher.class_map": "7" * 200})
    shown = str(raised.value).split("got str ", 1)[1]
    assert len(shown) == 80 and shown.endswith("...") and shown.startswith("'777")
    with pytest.raises(errors.ConfigError, match=r"^settings\[1\]: expected a dotted setting name"):
        _settings({1: 2})


def test_method_settings_by_dotted_name_merge_into_the_method_config():
    import dataclasses

    from tfkd import config as config_lib

    merged = _settings({"method_config": {"num": 1}, "method_config.low": 0.5})
    assert merged.method_config == {"num": 1, "low": 0.5}

    @dataclasses.dataclass(frozen=True)
    class Own:
        count: int = 3

    own = pipeline.DistillConfig(workdir="w", method_config=Own())
    assert own.with_settings({"method_config.count": 4.0}).method_config == Own(count=4)
    with pytest.raises(errors.ConfigError, match=r"^settings\['method_config.count'\]: expected "
                                                 r"int, got str 'x'$"):
        own.with_settings({"method_config.count": "x"})
    # A method's settings instance built directly is checked by validate too.
    with pytest.raises(errors.ConfigError, match=r"^method_config.count='x': expected int"):
        config_lib.check_types(pipeline.DistillConfig(workdir="w", method_config=Own(count="x")))

    @dataclasses.dataclass(frozen=True)
    class Unreadable:  # An annotation typing cannot resolve: the field is not checked.
        shape: "NotImportedHere" = None  # noqa: F821

    assert config_lib.override(Unreadable(), {"shape": [1, 2]}).shape == [1, 2]


def test_a_whole_config_and_a_dotted_setting_inside_it_apply_in_that_order():
    config = _settings({"student.epochs": 7, "student": {"batch_size": 32}})
    assert (config.student.batch_size, config.student.epochs) == (32, 7)


def test_distill_keywords_are_checked_before_anything_is_touched(tmp_path):
    workdir = tmp_path / "run"
    # Before the fix: TypeError: '>=' not supported between instances of 'str' and 'int'.
    with pytest.raises(tfkd.ConfigError, match=r"^settings\['num_shots'\]: expected int or None, "
                                               r"got str '20'$"):
        tfkd.distill(workdir=str(workdir), num_shots="20")
    # Before the fix: AttributeError: 'int' object has no attribute 'resolved'.
    with pytest.raises(tfkd.ConfigError, match=r"^settings\['student'\]: expected a mapping of "
                                               r"StudentConfig fields"):
        tfkd.distill(tfkd.DistillConfig(workdir=str(workdir)), student=1)
    with pytest.raises(tfkd.ConfigError, match=r"^settings\['workdir'\]: expected str, got "
                                               r"NoneType None$"):
        tfkd.distill(workdir=None)
    with pytest.raises(tfkd.ConfigError, match=r"^workdir: expected a work dir"):
        tfkd.distill(seed=1)  # Before the fix: TypeError: missing 1 required argument.
    with pytest.raises(tfkd.ConfigError, match=r"^settings\['nope'\]: no such setting"):
        tfkd.distill(workdir=str(workdir), nope=1)  # Before the fix: TypeError.
    assert not workdir.exists()


def test_a_config_built_directly_is_checked_by_validate(tmp_path):
    """Fields given to the dataclasses themselves never pass through ``with_settings``: ``validate``
    (which ``tfkd.distill`` runs first) checks the whole tree against the same annotations."""
    bad = tfkd.DistillConfig(workdir=str(tmp_path / "run"),
                             teacher=tfkd.TeacherConfig(target="h:1", query_budget=True))
    # Before the fix: validated, and the run's budget was one image.
    with pytest.raises(tfkd.ConfigError, match=r"^teacher.query_budget=True: expected int or "
                                               r"None, got bool$"):
        bad.validate()
    with pytest.raises(tfkd.ConfigError, match=r"^teacher.query_budget=True"):
        tfkd.distill(bad)
    with pytest.raises(tfkd.ConfigError, match=r"^student=\{'epochs': 3\}: expected "
                                               r"StudentConfig, got dict$"):
        tfkd.DistillConfig(workdir="w", student={"epochs": 3}).validate()
    with pytest.raises(tfkd.ConfigError, match=r"^student.batchnorm_images='8': expected int, "
                                               r"got str$"):
        tfkd.DistillConfig(workdir="w", student=student_lib.StudentConfig(
            batchnorm_images="8")).validate()
    with pytest.raises(tfkd.ConfigError, match=r"^compress='int8': expected list, got str$"):
        tfkd.DistillConfig(workdir="w", compress="int8").validate()
    tfkd.DistillConfig(workdir="w", compress=["int8"], student=student_lib.StudentConfig(
        learning_rate=1)).validate()  # A list is a tuple's value, an int a float's.
    assert not (tmp_path / "run").exists()


def test_the_launcher_refuses_a_wrong_type_in_params_override_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path / 'w'}",
         '--params_override={"teacher.query_budget": true}'],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    # Before the fix: the run trained a teacher (4 min), then read True as a budget of 1:
    # "error: teacher.query_budget=True: the teacher's evaluation takes 10000 of it ..."; with a
    # string value a TypeError traceback ('<' not supported between instances of 'str' and 'int').
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "--helpshort" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: settings['teacher.query_budget']: expected int or None, got bool True")
    assert not (tmp_path / "w").exists()


# --plugins: a module that raises on import.

@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "h35_raises_on_import.py").write_text('raise RuntimeError("no GPU here")\n')
    (tmp_path / "h35_good_plugin.py").write_text(
        "CALLS = []\n\ndef register():\n    CALLS.append(1)\n\n"
        "def broken():\n    raise KeyError('k')\n")
    (tmp_path / "h35_two_lines.py").write_text('raise ValueError("first line\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("h35_raises_on_import", "h35_good_plugin", "h35_two_lines"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec, message", [
    ("h35_raises_on_import", "plugin 'h35_raises_on_import': RuntimeError: no GPU here"),
    ("h35_good_plugin:broken", "plugin 'h35_good_plugin:broken': KeyError: 'k'"),
    ("h35_good_plugin:nope", "plugin 'h35_good_plugin:nope': AttributeError: "),
    ("h35_no_such_module", "plugin 'h35_no_such_module': ModuleNotFoundError: "),
    (":register", "plugin ':register': expected module or module:function"),
    ("h35_good_plugin:", "plugin 'h35_good_plugin:': expected module or module:function"),
    ("h35_two_lines", "plugin 'h35_two_lines': ValueError: first line second line"),
])
def test_a_plugin_that_fails_is_one_config_error_naming_it(plugin_dir, spec, message):
    # Before the fix (launch/distill.py's import_plugins): a RuntimeError or KeyError traceback.
    with pytest.raises(errors.ConfigError) as raised:
        methods.load_plugins([spec])
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_plugin_is_imported_and_its_function_called(plugin_dir):
    methods.load_plugins(["h35_good_plugin:register", "h35_good_plugin"])
    assert sys.modules["h35_good_plugin"].CALLS == [1]


def test_the_launcher_names_a_plugin_that_raises_on_import_in_one_line(plugin_dir):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"),
         f"--workdir={plugin_dir / 'w'}", "--plugins=h35_raises_on_import"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(plugin_dir)])})
    # Before the fix: a RuntimeError traceback ending in "RuntimeError: no GPU here".
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: plugin 'h35_raises_on_import': RuntimeError: no GPU here")
