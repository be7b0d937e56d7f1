"""Issue 36, finding 2: every config class checks its own settings in its ``validate()``, and
``tfkd.distill`` refuses a value out of range with one ConfigError line naming the setting, before
anything is read, sent or written (the launcher has no second layer of bounds).

Before the fix: ``MixUpConfig``, ``CVAEConfig``, ``TeacherTrainConfig``, ``RetryPolicy`` and
``OutputDirs`` had no ``validate()``; ``tfkd.distill(mixup={"alpha": 0})`` reached numpy's
``beta(0, 0)``; ``mixup={"decimals": 0}`` made MixUp draw forever (every rounded λ is 0 or 1, a
near-copy, so no pair is ever kept); ``student.rotation_degrees=-1`` and ``shift_fraction=1`` were
accepted by the library.
"""

import dataclasses
import os
import typing

import pytest

import tfkd
from tfkd import methods
from tfkd import pipeline
from tfkd.methods.fsbbt import synthesis


def _config_classes():
    """Every config dataclass a run reads: DistillConfig's nested fields and each registered
    method's own config class, found by walking the type annotations."""
    found = set()

    def walk(cls):
        if cls in found:
            return
        found.add(cls)
        for hint in typing.get_type_hints(cls).values():
            for part in typing.get_args(hint) or (hint,):
                if dataclasses.is_dataclass(part):
                    walk(part)

    walk(pipeline.DistillConfig)
    for name in methods.names():
        if methods.get(name).config_class is not None:
            walk(methods.get(name).config_class)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__qualname__)
def test_every_config_class_has_a_validate_that_accepts_its_defaults(cls):
    assert callable(getattr(cls, "validate", None)), f"{cls.__qualname__} has no validate()"
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if cls is tfkd.TeacherConfig:
        cls().validate(require_target=False)  # An empty target: tfkd serves its own teacher.
    elif not required:
        cls().validate()


def test_the_walk_finds_the_nested_configs():
    # The walk above is what makes the first test mean "every": it must see the nested ones.
    names = {c.__qualname__ for c in _config_classes()}
    assert {"MixUpConfig", "CVAEConfig", "TeacherTrainConfig", "RetryPolicy", "OutputDirs",
            "StudentConfig", "TeacherConfig"} <= names


REFUSED = [
    ({"mixup": {"alpha": 0}}, "mixup.alpha=0.0"),
    ({"mixup": {"decimals": 0}}, "mixup.decimals=0"),
    ({"mixup": {"low": 0.05, "high": 0.06}}, "mixup.decimals=2"),  # No λ at 2 decimals in (.05, .06).
    ({"mixup": {"low": 0.6, "high": 0.4}}, "mixup.low=0.6"),
    ({"mixup": {"high": 1.5}}, "mixup.high=1.5"),
    ({"mixup": {"num_images": -1}}, "mixup.num_images=-1"),
    ({"cvae": {"epochs": 0}}, "cvae.epochs=0"),
    ({"cvae": {"latent_dim": 0}}, "cvae.latent_dim=0"),
    ({"cvae": {"hidden": []}}, "cvae.hidden=()"),
    ({"cvae": {"hidden": [64, 0]}}, "cvae.hidden=(64, 0)"),
    ({"cvae": {"learning_rate": 0}}, "cvae.learning_rate=0.0"),
    ({"cvae": {"uniform_bound": 0}}, "cvae.uniform_bound=0.0"),
    ({"cvae": {"architecture": "resnet"}}, "cvae.architecture='resnet'"),
    ({"teacher_train": {"epochs": 0}}, "teacher_train.epochs=0"),
    ({"teacher_train": {"lr_schedule": "step"}}, "teacher_train.lr_schedule='step'"),
    ({"teacher_train": {"architecture": "vgg99"}}, "teacher_train.architecture='vgg99'"),
    ({"student": {"rotation_degrees": -1}}, "student.rotation_degrees=-1.0"),
    ({"student": {"rotation_degrees": 181}}, "student.rotation_degrees=181.0"),
    ({"student": {"shift_fraction": 1.0}}, "student.shift_fraction=1.0"),
    ({"outputs": {"model_dir": ""}}, "outputs.model_dir=''"),
    ({"teacher": {"retry": {"max_attempts": 0}}}, "retry.max_attempts=0"),
    ({"teacher": {"retry": {"initial_backoff_s": 5.0, "max_backoff_s": 1.0}}},
     "retry.max_backoff_s=1.0"),
    ({"teacher": {"retry": {"multiplier": 0.5}}}, "retry.multiplier=0.5"),
]


@pytest.mark.parametrize("settings,named", REFUSED, ids=[n for _, n in REFUSED])
def test_distill_refuses_a_setting_out_of_range_in_one_line_before_anything_is_written(
        tmp_path, settings, named):
    workdir = tmp_path / "run"
    with pytest.raises(tfkd.ConfigError) as raised:
        tfkd.distill(workdir=str(workdir), **settings)
    message = str(raised.value)
    assert message.startswith(named + ": expected "), message
    assert "\n" not in message
    assert not workdir.exists() or not os.listdir(workdir)  # Nothing read, sent or written.


def test_values_at_the_edges_of_their_ranges_are_accepted():
    base = pipeline.DistillConfig(workdir="w")
    for settings in [
            {"mixup": {"alpha": 0.2, "decimals": None}},
            {"mixup": {"low": 0.05, "high": 0.07, "decimals": 2}},  # 0.06 is kept.
            {"mixup": {"num_images": 0}},
            {"cvae": {"hidden": [8], "latent_dim": 1, "working_size": 0}},
            {"student": {"rotation_degrees": 180, "shift_fraction": 0.99}},
            {"student": {"rotation_degrees": 0, "shift_fraction": 0}},
            {"teacher": {"retry": {"max_attempts": 1, "initial_backoff_s": 0.0,
                                   "max_backoff_s": 0.0, "multiplier": 1.0}}},
            {"outputs": {"model_dir": "/tmp/m"}}]:
        base.with_settings(settings).validate()


def test_mixup_images_checks_its_config_the_same_way():
    images = synthesis.np.random.default_rng(0).random((4, 8, 8, 1), dtype="float32")
    with pytest.raises(tfkd.ConfigError, match=r"^mixup\.decimals=0: expected "):
        synthesis.mixup_images(images, synthesis.MixUpConfig(num_images=4, decimals=0), seed=0)
    mixed, info = synthesis.mixup_images(images, synthesis.MixUpConfig(num_images=4), seed=0)
    assert mixed.shape == (4, 8, 8, 1) and len(info["lam"]) == 4
