"""Issue 36 §5: ``auto`` (and None as "unset") is resolved once, by
:meth:`tfkd.DistillConfig.resolved` (through ``Method.resolve`` and the nested configs' own
``resolved``); the layers that train or build with a value refuse one still unset with a plain
ValueError (a programming error, not a user's :class:`tfkd.errors.TfkdError`) instead of picking
a default of their own."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd import data
from tfkd import errors
from tfkd import images
from tfkd import methods
from tfkd import student as student_lib
from tfkd import teacher_setup
from tfkd.config import TeacherTrainConfig
from tfkd.methods.fsbbt import synthesis
from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions
from tfkd.methods.zskd.config import ZSKDConfig


def _refused(call, *named):
    """``call()`` raises a plain ValueError of one line naming each of ``named``."""
    with pytest.raises(ValueError) as e:
        call()
    assert not isinstance(e.value, errors.TfkdError), repr(e.value)
    text = str(e.value)
    assert "\n" not in text and all(n in text for n in named), text


def test_the_student_layers_refuse_an_unresolved_recipe(fashion):
    images_, soft = fashion.x_train[:64], np.eye(10, dtype=np.float32)[fashion.y_train[:64]]
    # Before the fix: each filled the library RECIPE itself (lenet5_half, 50 epochs, MixUp α = 1,
    # ±10°, ±10%), not the method's recipe, whatever the run had resolved.
    _refused(lambda: student_lib.train_student(images_, soft, student_lib.StudentConfig(epochs=1), 0,
                                               verbose=0),
             "train_student", "student.architecture", "student.mixup_alpha", "student.select")
    _refused(lambda: student_lib.training_length(student_lib.StudentConfig(), 1000, 64),
             "training_length", "student.epochs")
    _refused(lambda: student_lib.training_dataset(images_, soft, student_lib.StudentConfig(), 32, 0),
             "training_dataset", "student.rotation_degrees")
    # What a layer does not read need not be set: with steps, epochs is not.
    assert student_lib.training_length(student_lib.StudentConfig(steps=100), 1000, 64).steps >= 100
    # A resolved config trains: the run's, as DistillConfig.resolved gives it.
    run = tfkd.DistillConfig(workdir="w", student=student_lib.StudentConfig(epochs=1)).resolved()
    assert student_lib.training_length(run.student, 1000, 64).epochs == 1
    student, history = student_lib.train_student(images_, soft, run.student, 0, verbose=0)
    assert student.name == "lenet5_half" and len(history["loss"]) == 1


def test_the_teacher_and_the_cvae_refuse_auto(fashion, tmp_path):
    small = data.Dataset("fashion_mnist", fashion.x_train[:64], fashion.y_train[:64],
                         fashion.x_test[:8], fashion.y_test[:8], 10, fashion.source)
    # Before the fix: the teacher's builder looked the architecture up in its own table (lenet5 for a
    # dataset it did not know); the CVAE's builder chose mlp or conv by the shape it was given.
    _refused(lambda: teacher_setup.train_and_export_teacher(small, TeacherTrainConfig(epochs=1),
                                                            str(tmp_path / "t"), verbose=0),
             "teacher_train.architecture='auto'")
    assert not (tmp_path / "t").exists()  # Refused before anything was trained or written.
    assert TeacherTrainConfig().resolved("cifar100").architecture == "resnet32"
    _refused(lambda: synthesis.build_cvae((28, 28, 1), 10, synthesis.CVAEConfig()),
             "cvae.architecture='auto'")
    _refused(lambda: synthesis.train_cvae(fashion.x_train[:8], np.arange(8) % 10, 10,
                                          synthesis.CVAEConfig(epochs=1), 0, verbose=0),
             "cvae.architecture='auto'")
    built = synthesis.build_cvae((28, 28, 1), 10, dataclasses.replace(synthesis.CVAEConfig(),
                                                                      architecture="conv"))
    assert built.decoder.layers[-1].__class__.__name__ == "Conv2D"


def test_the_impression_search_refuses_unset_settings():
    # Before the fix: each function resolved its config again with no dataset, so an unset count
    # became 48,000 (Fashion-MNIST's) for any dataset, and the black-box ones took the black-box
    # defaults whatever the method.
    _refused(lambda: impressions.target_plan(10, impressions.ImpressionConfig()), "target_plan",
             "zskd.count")
    logits = lambda x: tf.reshape(x, [-1, 36])[:, :3]  # noqa: E731 - a differentiable "teacher".
    _refused(lambda: impressions.make_search(logits, (6, 6, 1), impressions.ImpressionConfig(count=6)),
             "make_search", "zskd.iterations", "zskd.learning_rate")
    _refused(lambda: impressions.synthesize(logits, (6, 6, 1), np.eye(3), impressions.ImpressionConfig(
        count=6, batch_size=1, iterations=2), seed=0), "synthesize", "zskd.learning_rate")
    _refused(lambda: blackbox.blackbox_queries_left(3, impressions.ImpressionConfig(),
                                                    blackbox.ZerothOrderConfig()),
             "blackbox_queries_left", "zskd.count", "zskd.iterations")
    # The method's own layer: the student's temperature is the search's, resolved by the method.
    raw = tfkd.DistillConfig(workdir="w", method="zskd", method_config=ZSKDConfig())
    _refused(lambda: methods.get("zskd").student_config(raw), "zskd.student_temperature")
    resolved = raw.resolved()
    assert methods.get("zskd").student_config(resolved).temperature == 1.0
    images_, targets, _, _ = impressions.synthesize(
        logits, (6, 6, 1), np.eye(3), dataclasses.replace(resolved.method_config.zskd, count=6,
                                                          batch_size=1, iterations=2), seed=0)
    assert images_.shape == (6, 6, 6, 1) and targets.shape == (6, 3)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist", "cifar10", "cifar100"])
def test_resolved_leaves_nothing_for_the_layers_below(dataset):
    """Every method's resolved config passes every lower layer's check; the user's own images leave
    the CVAE's architecture alone, decided at the images' size when the CVAE is built."""
    for name in methods.names():
        for own in (False, True):
            extra = (dict(images=images.ImageSourceConfig("/p"), teacher={"target": "h:1"})
                     if own else {})
            run = tfkd.DistillConfig(workdir="w", method=name, dataset=dataset).with_settings(
                extra).resolved()
            run.student.check_resolved("test")
            assert run.teacher_train.architecture == data.dataset_spec(dataset).teacher
            methods.get(name).student_config(run).check_resolved("test")
            own_settings = run.method_config
            if hasattr(own_settings, "zskd"):
                own_settings.zskd.check_resolved("test")
            if hasattr(own_settings, "cvae"):
                assert own_settings.active.assistant != "auto"
                assert (own_settings.cvae.architecture == "auto") == own, (name, own)
    assert synthesis.resolve_cvae(synthesis.CVAEConfig(), (224, 224, 3))[0].architecture == "conv"
    assert synthesis.resolve_cvae(synthesis.CVAEConfig(), (28, 28, 1))[0].architecture == "mlp"
