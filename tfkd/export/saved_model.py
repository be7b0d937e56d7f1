"""Exporting a logits classifier as a TF Serving servable version, with tfkd's signature contract
(:mod:`tfkd.export`), in whichever registered format (:mod:`tfkd.export.formats`) it is asked for.

With class names, a SavedModel export also has TF Serving's Classify API signature ``classify``
(method ``tensorflow/serving/classify``): input ``inputs`` string [batch] of serialized
``tf.train.Example`` records, each with the encoded image (PNG/JPEG/BMP/GIF bytes, any size:
decoded and resized as :func:`tfkd.images.decode` does) under ``image/encoded``; outputs
``classes`` string [batch, K] (the label vocabulary, ``assets/labels.txt``, one name per line in
class order) and ``scores`` float32 [batch, K] (the probabilities, aligned with ``classes``).

Every SavedModel export carries TF Serving warmup requests
(``assets.extra/tf_serving_warmup_requests``: a TFRecord of ``PredictionLog`` records built from
real images), which tensorflow_model_server (and :mod:`tfkd.serving`) replay at load so that the
first client request does not pay for tracing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfkd import errors
from tfkd import fs
from tfkd import images as images_lib
from tfkd.export import deploy
from tfkd.export.formats import CLASSES_KEY
from tfkd.export.formats import CLASSIFY_IMAGE_FEATURE
from tfkd.export.formats import CLASSIFY_SIGNATURE_KEY
from tfkd.export.formats import FORMATS
from tfkd.export.formats import INPUT_KEY
from tfkd.export.formats import LOGITS_KEY
from tfkd.export.formats import OUTPUTS
from tfkd.export.formats import PROBABILITIES_KEY
from tfkd.export.formats import SAVED_MODEL_FILE
from tfkd.export.formats import SIGNATURE_KEY
from tfkd.export.formats import TEACHER_OUTPUTS
from tfkd.export.formats import VOCABULARY_FILE
from tfkd.export.formats import WARMUP_FILE

WEIGHT_CONSTANT = "tfkd_weight"
"""The name of every weight constant in a float16 SavedModel's graph (:class:`Float16Weights`;
TensorFlow numbers them ``tfkd_weight_1``, ...): what :func:`saved_model_parameters` counts there."""


class Float16Weights:
    """The float16 format's compressed model: a Keras model's weights stored in float16, its
    computation in float32 (LiteRT's float16 quantization convention: float16 weights, computed in
    float32 on CPUs).

    Each float32 weight becomes a float16 constant of the serving graph followed by a cast to
    float32; weights of other dtypes stay as they are. TensorFlow's graph optimizer (Grappler's
    constant folding) folds each cast when the function is first instantiated, which a server
    does when it loads the version (its warmup requests), so the casts run once, at load, never
    per request: the version is float32's arithmetic on float32 copies of the float16 weights,
    about half float32's size on disk, and as fast (``benchmarks/compression.py``). Emulated
    float16 arithmetic, 3 to 30 times slower than float32 on CPUs without native float16, is
    what this avoids. On a GPU it computes in float32 too (LiteRT's GPU delegate would compute
    in float16).

    The weights are graph constants, not variables: a version has no float32 copy in its
    checkpoint, and a cast of a variable could not be folded (it would run on every request).
    The logits function is one ``tf.function`` that ``serving_default`` and ``classify`` call,
    so the SavedModel holds its constants once. Its graph must fit a 2 GB protocol buffer
    (float16 weights up to about 1 billion parameters).

    Attributes:
      model: the float32 Keras model computed (its own variables are never read: the weights
        are passed to ``model.stateless_call``).
      weights: (trainable, non_trainable): the model's weights as numpy arrays in the model's
        variable order, float16 where the variable was float32.
      logits: ``tf.function``: images float32 [b, H, W, C] -> logits float32 [b, K].
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.weights = tuple([np.asarray(v.numpy(), np.float16) if v.dtype == "float32"
                              else np.asarray(v.numpy()) for v in variables]
                             for variables in (model.trainable_variables,
                                               model.non_trainable_variables))
        self.logits = tf.function(self._logits, input_signature=[
            tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_KEY)])

    def _logits(self, images):
        trainable, non_trainable = ([tf.cast(tf.constant(w, name=WEIGHT_CONSTANT), tf.float32)
                                     if w.dtype == np.float16
                                     else tf.constant(w, name=WEIGHT_CONSTANT) for w in part]
                                    for part in self.weights)
        logits, _ = self.model.stateless_call(trainable, non_trainable, images, training=False)
        return tf.cast(logits, tf.float32)

    def __call__(self, images, training=False):
        """Logits float32 [b, K] of images float32 [b, H, W, C] (inference only: ``training`` is
        accepted as a Keras model's call accepts it, and must be False)."""
        if training:
            raise ValueError("Float16Weights is inference only: training=False")  # Programming error.
        return self.logits(images)


def float16_copy(model: keras.Model) -> Float16Weights:
    """The float16 format's ``compress``: :class:`Float16Weights` of a freshly rebuilt float32
    model (float16 weights, float32 computation; float32 [b, H, W, C] -> logits [b, K])."""
    return Float16Weights(model)


class _ClassifierServable(tf.Module):
    """A tf.Module around a logits model with the contract's signature; nothing else is saved."""

    def __init__(self, model: keras.Model, image_shape, outputs: tuple[str, ...],
                 vocabulary: str | None = None):
        super().__init__(name="classifier")
        self.model = model
        self._outputs = outputs
        self._image_shape = tuple(image_shape)
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name=INPUT_KEY)])
        self.classify = None
        if vocabulary is not None:  # The file becomes the SavedModel's asset.
            self.labels = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                vocabulary, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
            self.classify = tf.function(self._classify, input_signature=[
                tf.TensorSpec([None], tf.string, name=tf.saved_model.CLASSIFY_INPUTS)])

    def _classify(self, inputs):
        features = tf.io.parse_example(
            inputs, {CLASSIFY_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        pixels = tf.map_fn(lambda b: images_lib.decode(b, self._image_shape),
                           features[CLASSIFY_IMAGE_FEATURE], fn_output_signature=tf.float32)
        scores = tf.nn.softmax(tf.cast(self.model(pixels, training=False), tf.float32), axis=-1)
        names = self.labels.lookup(tf.range(tf.shape(scores)[1], dtype=tf.int64))
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: tf.tile(names[None], [tf.shape(scores)[0], 1]),
                tf.saved_model.CLASSIFY_OUTPUT_SCORES: scores}

    def _serve(self, images):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        outputs = {PROBABILITIES_KEY: tf.nn.softmax(logits, axis=-1),
                   CLASSES_KEY: tf.argmax(logits, axis=-1, output_type=tf.int64),
                   LOGITS_KEY: logits}
        return {key: outputs[key] for key in self._outputs}

def compressed_copy(model: keras.Model, variant: str = "float32"):
    """A fresh, uncompiled copy of a functional model, compressed by the variant's format
    (:attr:`tfkd.export.ExportFormat.compress`): the Keras model itself for float32 and int8 (whose
    writer converts it), a :class:`Float16Weights` for float16; either is called as
    ``copy(images float32 [b, H, W, C], training=False)`` -> logits [b, K].

    The copy is rebuilt from the config (``keras.models.clone_model`` would carry the compiled
    optimizer into the SavedModel).

    Raises:
      tfkd.errors.ConfigError: unknown variant.
    """
    if variant not in FORMATS:
        raise errors.ConfigError(f"variant={variant!r}: expected one of {tuple(FORMATS)}")
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return FORMATS[variant].compress(clone)


def warmup_records(images: np.ndarray, batch_sizes=(1, 8)) -> list[bytes]:
    """Serialized ``PredictionLog`` records: Predict requests of real images at the given batch sizes."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for b in batch_sizes:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = SIGNATURE_KEY
        request.inputs[INPUT_KEY].CopyFrom(
            tf.make_tensor_proto(np.asarray(images[:b], np.float32)))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_classifier(model: keras.Model, export_base: str, version: int | None = None,
                      outputs: tuple[str, ...] = OUTPUTS, warmup_images: np.ndarray | None = None,
                      variant: str = "float32", class_names: tuple[str, ...] | None = None,
                      calibration_images: np.ndarray | None = None) -> str:
    """Exports a logits classifier as a TF Serving servable version.

    Args:
      model: a built functional Keras model, float32 [b, H, W, C] in [0, 1] -> logits [b, K].
      export_base: the servable's base path (TF Serving's ``model_base_path``).
      version: the version number; default: one more than the newest present (1 for the first).
      outputs: which of ``probabilities`` float32 [b, K], ``classes`` int64 [b] and ``logits``
        float32 [b, K] the signature returns; ``("classes",)`` makes a label-only
        (decision-based) servable, as a vendor API that answers class ids only.
      warmup_images: float32 [n >= 1, H, W, C] real images for the warmup requests (batch 1 and
        min(8, n)); None writes none.
      variant: a registered format's name (:data:`tfkd.export.FORMATS`).
      class_names: K names in class order: adds the ``classify`` signature (module docstring)
        with them as its label vocabulary; None: ``serving_default`` only.
      calibration_images: float32 [n, H, W, C] in [0, 1], real inputs (the transfer set) a
        quantized variant (``int8``) calibrates its ranges on; required for it.

    Returns:
      The version directory written, ``<export_base>/<version>``.

    Raises:
      tfkd.errors.ConfigError: ``version`` not positive or already present; unknown variant or
        output; class names not K distinct one-line names; ``int8`` without calibration images;
        a format's writer that wrote no marker file.
    """
    if not outputs or not set(outputs) <= set(TEACHER_OUTPUTS):
        raise errors.ConfigError(f"outputs={outputs!r}: expected a non-empty subset of {TEACHER_OUTPUTS}")
    existing = deploy.list_versions(export_base)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    if version <= 0:
        raise errors.ConfigError(f"version={version}: expected a positive integer")
    clone = compressed_copy(model, variant)
    vocabulary_dir = tempfile.mkdtemp(prefix="tfkd-labels-") if class_names else None
    vocabulary = (None if vocabulary_dir is None else
                  _write_vocabulary(class_names, model.output_shape[-1], vocabulary_dir))
    servable = _ClassifierServable(clone, tuple(model.input_shape[1:]), tuple(outputs), vocabulary)
    signatures = {SIGNATURE_KEY: servable.serve}
    if servable.classify is not None:
        signatures[CLASSIFY_SIGNATURE_KEY] = servable.classify

    def write(tmp_dir):
        if FORMATS[variant].writer is not None:
            FORMATS[variant].writer(servable.serve.get_concrete_function(), tmp_dir,
                                    calibration_images)
            _finish_written(variant, tmp_dir, vocabulary)
            return
        _write_saved_model(servable, signatures, tmp_dir, warmup_images)

    try:
        return deploy.write_version(export_base, version, write)
    finally:
        if vocabulary_dir:
            shutil.rmtree(vocabulary_dir, ignore_errors=True)


def _finish_written(variant: str, tmp_dir: str, vocabulary: str | None) -> None:
    """After a format's writer: its marker file checked, the label vocabulary copied beside it
    (``assets/labels.txt``, where a server's loader finds it for the Classify API)."""
    marker = FORMATS[variant].marker
    if not fs.exists(os.path.join(tmp_dir, marker)):
        raise errors.ConfigError(f"variant={variant!r}: its writer wrote no {marker} (the format's "
                                 "marker file); expected a complete version")
    if vocabulary:
        fs.makedirs(os.path.join(tmp_dir, "assets"))
        with open(vocabulary, "rb") as f:
            fs.write_atomic(os.path.join(tmp_dir, "assets", VOCABULARY_FILE), f.read())


def _write_saved_model(servable: _ClassifierServable, signatures: dict, tmp_dir: str,
                       warmup_images: np.ndarray | None) -> None:
    """The servable as a SavedModel in ``tmp_dir``, its ``classify`` method name set and its
    warmup requests (batch 1 and min(8, n)) written."""
    tf.saved_model.save(servable, tmp_dir, signatures=signatures)
    if servable.classify is not None:
        _set_method_name(tmp_dir, CLASSIFY_SIGNATURE_KEY, tf.saved_model.CLASSIFY_METHOD_NAME)
    if warmup_images is not None and len(warmup_images):
        fs.makedirs(os.path.join(tmp_dir, "assets.extra"))
        sizes = sorted({1, min(8, len(warmup_images))})
        with tf.io.TFRecordWriter(os.path.join(tmp_dir, WARMUP_FILE)) as writer:
            for record in warmup_records(warmup_images, sizes):
                writer.write(record)


def _write_vocabulary(class_names, num_classes: int, directory: str) -> str:
    names = [str(n) for n in class_names]
    if len(names) != num_classes or len(set(names)) != len(names) or any(
            not n or "\n" in n or "\r" in n for n in names):
        raise errors.ConfigError(f"class_names={names!r}: expected {num_classes} distinct "
                                 "non-empty one-line names (the label vocabulary)")
    path = os.path.join(directory, VOCABULARY_FILE)
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")
    return path


def _set_method_name(saved_model_dir: str, key: str, method_name: str) -> None:
    """Sets a signature's ``method_name`` in ``saved_model.pb`` (TF2's ``tf.saved_model.save``
    writes every signature as ``tensorflow/serving/predict``; TF Serving's Classify API accepts only
    a ``tensorflow/serving/classify`` one)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(fs.read_bytes(path))
    for meta_graph in proto.meta_graphs:
        meta_graph.signature_def[key].method_name = method_name
    fs.write_atomic(path, proto.SerializeToString())


class _LabelOnly(tf.Module):
    """A served classifier's ``serving_default`` with only its ``classes`` output kept."""

    def __init__(self, version_dir: str):
        super().__init__(name="label_only")
        self.source = fs.load_saved_model(version_dir, "version_dir")
        signature = self.source.signatures.get(SIGNATURE_KEY)
        inputs = {} if signature is None else signature.structured_input_signature[1]
        outputs = {} if signature is None else signature.structured_outputs
        if INPUT_KEY not in inputs or CLASSES_KEY not in outputs:
            raise errors.ConfigError(
                f"version_dir={version_dir!r}: expected a {SIGNATURE_KEY!r} signature of input "
                f"{INPUT_KEY!r} and a {CLASSES_KEY!r} output; it has inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)}")
        spec = inputs[INPUT_KEY]
        self.serve = tf.function(lambda images: {CLASSES_KEY: signature(images=images)[CLASSES_KEY]},
                                 input_signature=[tf.TensorSpec(spec.shape, spec.dtype, INPUT_KEY)])


def export_label_only(version_dir: str, export_base: str, version: int = 1) -> str:
    """Re-exports a servable of this contract with only its ``classes`` output: a decision-based
    teacher (answers class ids int64 [b], nothing else), as a vendor API that returns "sneaker" and
    no probabilities. For trying the label-only methods (DB3KD) against a teacher one owns.

    Args:
      version_dir: a SavedModel version directory whose ``serving_default`` takes ``images`` and
        returns ``classes``.
      export_base: the new servable's base path; the copy goes to ``<export_base>/<version>``.

    Returns:
      The version directory written.

    Raises:
      tfkd.errors.ConfigError: ``version_dir`` does not load, or has no such signature, input or
        ``classes`` output; the version is already there.
    """
    module = _LabelOnly(version_dir)
    return deploy.write_version(export_base, version, lambda tmp_dir: tf.saved_model.save(
        module, tmp_dir, signatures={SIGNATURE_KEY: module.serve}))


def saved_model_bytes(path: str) -> int:
    """Total size in bytes of the files of a SavedModel directory."""
    return fs.tree_bytes(path)


def saved_model_parameters(path: str) -> int:
    """Number of scalar weights a SavedModel stores: in its variables checkpoint, and as the weight
    constants of its graph (the float16 format's, :data:`WEIGHT_CONSTANT`); 0 if it has neither
    (a LiteRT version)."""
    return _checkpoint_parameters(path) + _constant_parameters(path)


def _checkpoint_parameters(path: str) -> int:
    prefix = os.path.join(path, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):
        return 0
    # The reader of the prefix itself (tf.train.list_variables would first ask whether the prefix
    # is a directory, which ram:// answers yes for ".../variables/variables").
    shapes = tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
    return int(sum(int(np.prod(shape)) for name, shape in shapes.items()
                   if name != "_CHECKPOINTABLE_OBJECT_GRAPH"))


def weight_constants(path: str) -> list[tuple[str, tf.dtypes.DType, tuple[int, ...]]]:
    """The weight constants (:data:`WEIGHT_CONSTANT`) of a SavedModel's graph functions, each
    function once: (node name, dtype, shape) per weight; [] for a SavedModel whose weights are
    variables (float32) and for a directory without ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, SAVED_MODEL_FILE)
    if not fs.exists(pb):
        return []
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(fs.read_bytes(pb))
    functions = {f.signature.name: f for m in proto.meta_graphs for f in m.graph_def.library.function}
    return [(node.name, tf.dtypes.as_dtype(node.attr["dtype"].type),
             tuple(d.size for d in node.attr["value"].tensor.tensor_shape.dim))
            for f in functions.values() for node in f.node_def
            if node.op == "Const" and node.name.split("_")[:2] == WEIGHT_CONSTANT.split("_")]


def _constant_parameters(path: str) -> int:
    return int(sum(int(np.prod(shape)) for _, _, shape in weight_constants(path)))
