"""A method defined here, outside tfkd/, plugs into the same pipeline launch/distill.py calls."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfkd import methods
from tfkd import pipeline
from tfkd import student as student_lib
from tfkd import teacher as tfkd_teacher
from tfkd.teacher import TeacherConfig

NUM_NOISE = 300


class UniformNoise(methods.Method):
    """Uniform-noise images labelled by the teacher (a data-free transfer set): the test's method."""

    name = "test_uniform_noise"
    teacher_needs = "soft_labels"
    loss = "kd"
    description = "uniform noise images with the teacher's soft labels"

    def fingerprint(self, config):
        return (NUM_NOISE,)

    def plan(self, ctx):
        return {"label_noise": ctx.teacher.share(NUM_NOISE)}

    def build(self, ctx):
        images = np.random.default_rng(ctx.seed).uniform(
            size=(NUM_NOISE, *ctx.image_shape)).astype(np.float32)
        with ctx.stage("label_noise"):
            targets = ctx.teacher.soft_labels(images, stage="label_noise")
        return methods.TransferSet.from_parts([("noise", images, targets)])


@pytest.fixture(scope="module")
def registered():
    methods.register(UniformNoise(), replace=True)
    yield "test_uniform_noise"
    methods._REGISTRY.pop("test_uniform_noise", None)  # Leave the registry as found.


def test_registry_refuses_what_it_cannot_run():
    class Nameless(methods.Method):
        pass

    class Oracle(methods.Method):
        name = "oracle"
        teacher_needs = "gradients"

    with pytest.raises(ValueError, match="non-empty identifier"):
        methods.register(Nameless())
    with pytest.raises(ValueError, match="teacher_needs='gradients'"):
        methods.register(Oracle())
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get("fsbbt"))
    with pytest.raises(TypeError, match="tfkd.methods.Method"):
        methods.register(object())
    with pytest.raises(ValueError, match="method='nope'.*fsbbt"):
        methods.get("nope")


def test_a_method_defined_outside_tfkd_runs_end_to_end(registered, server, fashion, tmp_path):
    assert registered in methods.names()
    config = pipeline.DistillConfig(
        workdir=str(tmp_path), method=registered, num_shots=20, num_validation=500,
        teacher=TeacherConfig(target=server.target),
        student=student_lib.StudentConfig(epochs=1, batch_size=32), eval_examples=200,
        evaluate_teacher=False, compress=(), verbose=0)
    report = pipeline.run(config)
    # Its transfer set, its queries, its loss, all through the pipeline's stages.
    assert report.transfer_set_sources == {"noise": NUM_NOISE}
    assert report.teacher_query_plan == {"label_noise": NUM_NOISE, "evaluate_teacher": 0}
    assert report.teacher_queries_sent_by_stage == {"label_noise": NUM_NOISE}
    assert report.student_loss == "kd" and report.num_shots == 0
    transfer = methods.TransferSet.load(report.labelled_set)
    assert transfer.images.shape == (NUM_NOISE, 28, 28, 1)
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, rtol=1e-5)
    # The teacher's answers are what the student learnt from: they match the served teacher's.
    with tfkd_teacher.connect(server.target) as teacher:
        np.testing.assert_allclose(teacher.soft_labels(transfer.images[:20]), transfer.targets[:20],
                                   atol=1e-6)
    # An exported, served, measured student, and report.json holding the same figures.
    student = tf.saved_model.load(report.student_export_dir).signatures["serving_default"]
    assert student(images=tf.constant(fashion.x_test[:4]))["probabilities"].shape == (4, 10)
    assert 0.0 <= report.student_accuracy <= 1.0
    written = json.loads((tmp_path / "report.json").read_text())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert (tmp_path / "grid_noise.png").exists()
    # A rerun reuses the transfer set by fingerprint: nothing is asked again.
    again = pipeline.run(config)
    assert again.teacher_queries_sent == 0 and again.teacher_queries_total == NUM_NOISE


class TopOneOnly(methods.Method):
    """The few shots with the teacher's top-1 labels only."""

    name = "test_top1_only"
    teacher_needs = "top1_labels"

    def build(self, ctx):
        assert ctx.few_shot_labels is None and ctx.teacher_saved_model is None
        return methods.TransferSet.from_parts(
            [("real", ctx.few_shot, ctx.teacher.soft_labels(ctx.few_shot, stage="label_real"))])


class NeedsWeights(UniformNoise):
    name = "test_needs_weights"
    teacher_needs = "weights"


def test_what_a_method_declares_is_what_it_gets(server, tmp_path):
    """``top1_labels``: the pipeline hands the method the label-only view (one-hot answers);
    ``weights``: refused before anything runs when the teacher is remote."""
    methods.register(TopOneOnly(), replace=True)
    methods.register(NeedsWeights(), replace=True)
    try:
        config = pipeline.DistillConfig(
            workdir=str(tmp_path / "top1"), method="test_top1_only", num_shots=40,
            num_validation=0, teacher=TeacherConfig(target=server.target),
            student=student_lib.StudentConfig(epochs=1, batch_size=32), eval_examples=100,
            evaluate_teacher=False, compress=(), verbose=0)
        report = pipeline.run(config)
        targets = methods.TransferSet.load(report.labelled_set).targets
        assert set(np.unique(targets)) == {0.0, 1.0} and report.teacher["label_only"]
        assert report.teacher_output_kind == "classes (label-only view)"
        with pytest.raises(ValueError, match="needs the teacher's weights"):
            pipeline.run(pipeline.DistillConfig(workdir=str(tmp_path / "w"),
                                                method="test_needs_weights",
                                                teacher=TeacherConfig(target=server.target)))
        assert not (tmp_path / "w").exists()  # Refused before the work dir was touched.
    finally:
        for name in ("test_top1_only", "test_needs_weights"):
            methods._REGISTRY.pop(name, None)
