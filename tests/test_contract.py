"""One library, one truth: the command and the library give the same student recipe.

For every registered method (and on each named dataset), the config ``tfkd-distill`` resolves
with no flag but ``--method`` (and ``--dataset``) equals ``DistillConfig(method=..., dataset=...)``
resolved by the library, field by field. The launcher's flags parse in a child process (absl's
FLAGS are process-global)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tfkd import data
from tfkd import methods
from tfkd import pipeline
from tfkd import student as student_lib

from conftest import REPO

SCRIPT = """
import dataclasses, json, sys
from absl import flags
from launch import distill as d
out = {}
for method, dataset in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["x", "--workdir=/tmp/contract", f"--method={method}", f"--dataset={dataset}"])
    out[f"{method}/{dataset}"] = repr(d.config_from_flags().resolved())
print("CONFIGS " + json.dumps(out))
flags.FLAGS.unparse_flags()
flags.FLAGS(["x", "--workdir=/tmp/contract", "--student_epochs=3", "--method=db3kd",
             '--params_override={"student.epochs": 9, "db3kd.num_directions": 4, "seed": 2}'])
c = d.config_from_flags().resolved()
print("OVERRIDE", c.student.epochs, c.method_config.db3kd.num_directions, c.seed)
"""


def _leaves(value, prefix=""):
    """(dotted field name, value) of every leaf of a nested config dataclass."""
    if dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            yield from _leaves(getattr(value, field.name), f"{prefix}{field.name}.")
    else:
        yield prefix.rstrip("."), value


def test_the_launcher_with_no_flags_resolves_the_library_default_of_every_method():
    cases = [(m, d) for m in methods.names() for d in data.SUPPORTED_DATASETS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**env, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("CONFIGS "))
    launched = json.loads(line[len("CONFIGS "):])
    assert len(launched) == len(cases) > 10
    # --params_override (any setting by dotted name) wins over the named flags.
    assert "OVERRIDE 9 4 2" in result.stdout.splitlines()
    for method, dataset in cases:
        library = pipeline.DistillConfig(workdir="/tmp/contract", method=method,
                                         dataset=dataset).resolved()
        # The child's stdout is a pipe, the library's verbose follows the test's terminal: the
        # one field decided by where the output goes, compared as the child saw it.
        library = dataclasses.replace(library, verbose=2)
        assert launched[f"{method}/{dataset}"] == repr(library), "\n".join(
            f"{method}/{dataset} {name}: library {value!r}"
            for name, value in _leaves(library)
            if f"{name.rsplit('.', 1)[-1]}={value!r}" not in launched[f"{method}/{dataset}"])


def test_resolution_fills_only_what_was_left_unset_and_is_idempotent():
    resolved = pipeline.DistillConfig(workdir="w").resolved()
    assert resolved == resolved.resolved()
    assert (resolved.num_shots, resolved.num_validation) == (2000, 5000)
    assert resolved.student.architecture == "lenet5_half"
    assert resolved.student.epochs == dict(methods.get("fsbbt").student_defaults)["epochs"]
    assert resolved.teacher_train.architecture == "lenet5"
    assert resolved.method_config.cvae.architecture == "mlp"
    mine = pipeline.DistillConfig(
        workdir="w", dataset="cifar10", num_shots=40,
        student=student_lib.StudentConfig(epochs=3)).resolved()
    assert (mine.num_shots, mine.student.epochs, mine.student.architecture,
            mine.method_config.cvae.architecture) == (40, 3, "alexnet_half", "conv")
    assert mine.student.mixup_alpha == 0.0  # The rest of fsbbt's recipe is kept.
    blackbox = pipeline.DistillConfig(workdir="w", method="zskd_blackbox").resolved()
    assert blackbox.method_config.zskd.count == 12_000
    from tfkd import images
    own = pipeline.DistillConfig(workdir="w", images=images.ImageSourceConfig("/p")).resolved()
    assert (own.num_shots, own.num_validation, own.student.architecture,
            own.method_config.cvae.architecture) == (0, 0, "mobilenet_v3_small", "auto")


def test_settings_by_dotted_name_reach_the_config_as_their_types():
    """What the Kubeflow components pass: JSON values (KFP's protobuf Struct makes every number a
    float) by dotted field name."""
    from tfkd import errors

    config = pipeline.DistillConfig(workdir="w").with_settings(
        {"num_shots": 500.0, "student.epochs": 3.0, "student.learning_rate": 1.0,
         "teacher.target": "host:8500", "teacher.class_map": [1.0, 0.0], "compress": ["int8"],
         "images": {"path": "/data"}})
    assert (config.num_shots, config.student.epochs, config.teacher.class_map) == (500, 3, (1, 0))
    assert isinstance(config.num_shots, int) and isinstance(config.student.learning_rate, float)
    assert config.compress == ("int8",) and config.images.path == "/data"
    assert config.resolved().student.mixup_alpha == 0.0  # fsbbt's recipe for the rest.
    with pytest.raises(errors.ConfigError, match=r"settings\['student.epoch'\].*student.epochs"):
        config.with_settings({"student.epoch": 1})


def test_artifact_names_hold_every_input_of_the_run():
    """Issue 26 §3: two image folders of one size, two seeds, two N or two teachers in one work dir
    never share a search state (the DB3KD key once left out the image source)."""
    import types

    from tfkd import images

    def link(identity="saved_model:a"):
        signature = types.SimpleNamespace(identity=identity)
        return types.SimpleNamespace(client=types.SimpleNamespace(signature=signature,
                                                                  label_only=False))

    base = pipeline.DistillConfig(workdir="w", images=images.ImageSourceConfig(path="/a"),
                                  num_shots=0, num_validation=0)
    runs = [(base, link()), (dataclasses.replace(base, images=images.ImageSourceConfig("/b")),
                             link()),
            (dataclasses.replace(base, seed=1), link()), (dataclasses.replace(base, num_shots=5),
                                                          link()),
            (base, link("saved_model:b"))]
    names = {pipeline.artifact_store(c, t).path("boundary_state", ".npz", "db3kd") for c, t in runs}
    assert len(names) == len(runs)
    assert pipeline.artifact_store(base, link()).path("x", ".npz") == \
        pipeline.artifact_store(base, link()).path("x", ".npz")
