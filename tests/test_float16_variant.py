"""The float16 export format (issue 38): float16 weights in the SavedModel, computed in float32
(LiteRT's float16 convention on CPUs), float32's signatures; and the report's flag of a compressed
variant slower than float32. Real parts throughout: a small Keras model with BatchNormalization,
real SavedModel exports reloaded by TensorFlow and served by tfkd's gRPC server. Speed itself is a
benchmark (``benchmarks/compression.py``), not asserted here."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfkd import export
from tfkd import model_card
from tfkd import serving
from tfkd.export import saved_model
from tfkd.report import LATENCY_SPREAD
from tfkd.report import Report
from tfkd.report import format_table
from tfkd.report import slower_than_float32
from tfkd.teacher import client as client_lib

NAMES = ("a", "b", "c")


def _model():
    """A 3-class conv net with BatchNormalization (non-trainable weights), seeded weights and
    moving statistics away from their initial values."""
    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    rng = np.random.default_rng(0)
    model.set_weights([(rng.uniform(0.5, 1.5, w.shape) if "variance" in v.path or "gamma" in v.path
                        else rng.normal(0, 0.5, w.shape)).astype(np.float32)
                       for v, w in zip(model.weights, model.get_weights())])
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, images float32 [16, 8, 8, 1], float32 version dir, float16 version dir), both
    with the classify signature and warmup requests."""
    root = tmp_path_factory.mktemp("float16")
    model = _model()
    images = np.random.default_rng(1).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    dirs = [export.export_classifier(model, str(root / variant), variant=variant,
                                     class_names=NAMES, warmup_images=images)
            for variant in ("float32", "float16")]
    return model, images, *dirs


def _library(version_dir):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return [f for m in proto.meta_graphs for f in m.graph_def.library.function]


def test_float16_weights_are_stored_in_float16_and_no_float32_copy(exported):
    model, _, full, half = exported
    constants = saved_model.weight_constants(half)
    assert sorted(shape for _, _, shape in constants) == sorted(tuple(w.shape) for w in model.weights)
    assert {dtype for _, dtype, _ in constants} == {tf.float16}
    # Nothing in the checkpoint: the weights are the graph's float16 constants, stored once
    # although serving_default and classify both compute them.
    assert [n for n, _ in tf.train.list_variables(os.path.join(half, "variables", "variables"))
            if n != "_CHECKPOINTABLE_OBJECT_GRAPH"] == []
    assert saved_model.weight_constants(full) == []
    assert export.saved_model_parameters(half) == export.saved_model_parameters(full) == \
        model.count_params()
    assert export.saved_model_bytes(half) < export.saved_model_bytes(full)


def test_float16_computes_in_float32(exported):
    """No operation of the float16 version computes in float16: float16 tensors only as the
    weight constants and their casts to float32."""
    _, _, _, half = exported
    ops = {(node.op, node.attr[key].type) for f in _library(half) for node in f.node_def
           for key in ("T", "dtype", "DstT", "SrcT") if key in node.attr}
    assert {op for op, dtype in ops if dtype == tf.float16.as_datatype_enum} == {"Const", "Cast"}


def test_float16_answers_float32_arithmetic_on_float16_rounded_weights(exported):
    model, images, full, half = exported
    served = {d: tf.saved_model.load(d).signatures["serving_default"](images=images)
              for d in (full, half)}
    rounded = keras.models.clone_model(model)
    rounded.set_weights([w.astype(np.float16).astype(np.float32) for w in model.get_weights()])
    expected = tf.nn.softmax(rounded(images, training=False)).numpy()
    # float32 arithmetic on the rounded weights, to float32's rounding error (float16 arithmetic
    # would be about 1e-3 off) ...
    np.testing.assert_allclose(served[half]["probabilities"].numpy(), expected, atol=2e-6)
    # ... and so float32's answers to float16's rounding of the weights.
    np.testing.assert_allclose(served[half]["probabilities"].numpy(),
                               served[full]["probabilities"].numpy(), atol=5e-3)
    np.testing.assert_array_equal(served[half]["classes"].numpy(), expected.argmax(axis=1))


def test_float16_signatures_are_float32s(exported):
    _, _, full, half = exported
    loaded = {d: export.load_saved_model(d).signature_defs for d in (full, half)}
    assert loaded[half].keys() == loaded[full].keys() == {"serving_default", "classify"}
    def contract(signature):  # Each alias's dtype and shape (not the graph's tensor names).
        return signature.method_name, {
            (part, alias, info.dtype, tuple(d.size for d in info.tensor_shape.dim))
            for part, infos in (("in", signature.inputs), ("out", signature.outputs))
            for alias, info in infos.items()}

    for key, signature in loaded[half].items():
        assert contract(signature) == contract(loaded[full][key]), key
    assert contract(loaded[half]["serving_default"])[1] == {
        ("in", "images", tf.float32.as_datatype_enum, (-1, 8, 8, 1)),
        ("out", "probabilities", tf.float32.as_datatype_enum, (-1, 3)),
        ("out", "classes", tf.int64.as_datatype_enum, (-1,))}


def test_tfkd_server_serves_the_float16_student(exported):
    _, images, full, half = exported
    bases = {"student": os.path.dirname(full), "student_float16": os.path.dirname(half)}
    with serving.ModelServer([serving.ModelConfig(n, b) for n, b in bases.items()],
                             poll_seconds=0) as server:
        answers = {}
        for name in bases:
            with client_lib.connect(server.target, name, role="student") as student:
                assert student.signature.input_shape == (-1, 8, 8, 1)
                answers[name] = student.predict(student.encode(images))
    np.testing.assert_allclose(answers["student_float16"], answers["student"], atol=5e-3)
    assert serving.Servable.load("student_float16", 1, half).warmup_requests == 2


def _variants(float32_ms, **others):
    """student_variants as a run writes them, with the given {batch_1, batch_64} latencies."""
    return {name: {"accuracy": 0.87, "saved_model_bytes": 1000,
                   "cpu_latency_ms": dict(zip(("batch_1", "batch_64"), ms))}
            for name, ms in {"float32": float32_ms, **others}.items()}


def test_the_flag_names_each_variant_slower_than_float32_at_either_batch():
    variants = _variants((0.71, 1.84), float16=(0.70, 1.84), int8=(0.13, 6.06),
                         slow1=(0.72, 1.0))
    flags = slower_than_float32(variants)
    assert set(flags) == {"int8", "slow1"}  # Equal or faster at both batches: no flag.
    assert "batch 64 6.06 ms against 1.84 ms (3.29x)" in flags["int8"]
    assert "batch 1" not in flags["int8"]
    assert "batch 1 0.72 ms against 0.71 ms" in flags["slow1"] and "batch 64" not in flags["slow1"]
    # An excess under the spread of medians on a shared machine says so; a larger one does not.
    assert "within the spread" in flags["slow1"] and "within the spread" not in flags["int8"]
    assert "within the spread" not in slower_than_float32(
        _variants((1.0, 1.0), float16=(1.0, 1.0 * LATENCY_SPREAD)))["float16"]
    assert slower_than_float32(_variants((2.0, 9.0), float16=(1.0, 8.0), int8=(2.0, 9.0))) == {}
    assert slower_than_float32({"int8": _variants((1.0, 1.0))["float32"]}) == {}  # No float32.


def test_the_report_carries_the_flag_into_its_json_table_and_model_card():
    report = Report(method="fsbbt", dataset="fashion_mnist")
    assert report.student_slower_than_float32 == {}
    report.update(student_variants=_variants((0.71, 1.84), float16=(0.69, 1.80), int8=(0.13, 6.06)))
    assert list(report.to_dict()["student_slower_than_float32"]) == ["int8"]
    line = report.student_slower_than_float32["int8"]
    table = format_table(report)
    flagged = [row for row in table.splitlines() if "SLOWER" in row]
    assert len(flagged) == 1 and flagged[0].startswith("SLOWER than float32")
    assert flagged[0].endswith(line)
    assert "0.13 / 6.06 ms (batch 1 / 64)" in table
    card = model_card.build(report.to_dict())
    assert [t["description"] for t in card["considerations"]["tradeoffs"]
            if "Slower" in t["description"]] == [f"Slower than float32: {line}"]
    # A report read back (or one that measured none slower) keeps the flag with its figures.
    assert Report(**report.to_dict()).student_slower_than_float32 == {"int8": line}
    report.student_variants = _variants((0.71, 1.84), float16=(0.69, 1.80))
    assert report.student_slower_than_float32 == {}
    assert "SLOWER" not in format_table(report)


def test_variants_are_timed_together_at_each_batch_size(exported):
    """cpu_latencies_ms times every version at every batch size (interleaved calls), and a
    version alone gives the same keys through cpu_latency_ms."""
    from tfkd import evaluation

    _, images, float32_dir, float16_dir = exported
    dirs = {"float32": float32_dir, "float16": float16_dir}
    latencies = evaluation.cpu_latencies_ms(dirs, images, (1, 16), repeats=3)
    assert set(latencies) == {"float32", "float16"}
    for latency in latencies.values():
        assert set(latency) == {"batch_1", "batch_16"} and all(ms > 0 for ms in latency.values())
    alone = evaluation.cpu_latency_ms(float16_dir, images, (1, 8), repeats=2)
    assert set(alone) == {"batch_1", "batch_8"} and all(ms > 0 for ms in alone.values())
