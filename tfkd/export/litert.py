"""The int8 student as a LiteRT (TensorFlow Lite) full-integer model, and its runtime.

:func:`convert_int8` turns a logits classifier into a full-integer LiteRT flatbuffer: post-training
quantization (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018) with activation ranges calibrated on real inputs
(the transfer set), every operator restricted to TFLite's int8 builtins
(``OpsSet.TFLITE_BUILTINS_INT8``: convolutions included; the conversion fails rather than leave a
float operator), int8 weights with per-channel scales. The signature keeps tfkd's contract: input
``images`` float32 [b, H, W, C] in [0, 1] (quantized by the model's first operator), outputs
``probabilities`` float32 [b, K] and ``classes`` int64 [b].

It is written as ``model.tflite`` in a version directory: the file TensorFlow Serving reads
instead of a SavedModel when started with ``--prefer_tflite_model=true``, and the int8 format's
marker file in the format registry (:mod:`tfkd.export.formats`), whose loader (:func:`load`: a
:class:`LiteRTModel`, with a ``classify`` signature from ``assets/labels.txt``) every reader of
version directories uses.

TF 2.21's ``tf.lite`` converter and interpreter are used (the tested stack); LiteRT's own package
(``ai_edge_litert``) has the same interpreter API.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import warnings

import numpy as np
import tensorflow as tf

from tfkd import errors
from tfkd import fs
from tfkd import images as images_lib
from tfkd.export import formats

FILE = "model.tflite"
"""The LiteRT model's file name in a version directory (TF Serving's ``--prefer_tflite_model``)."""
CALIBRATION_IMAGES = 500
"""Real images the activation ranges are calibrated on (at most; each fed as one batch of 1)."""


def convert_int8(serve: tf.types.experimental.ConcreteFunction, calibration: np.ndarray) -> bytes:
    """A full-integer LiteRT model of a serving function.

    Args:
      serve: the float32 serving function (``images`` float32 [None, H, W, C] -> a dict of named
        outputs), e.g. ``tfkd.export.saved_model._ClassifierServable.serve.get_concrete_function()``.
      calibration: float32 [n >= 1, H, W, C] in [0, 1], real inputs (the transfer set); the first
        :data:`CALIBRATION_IMAGES` are used.

    Returns:
      the flatbuffer bytes.

    Raises:
      tfkd.errors.ConfigError: no calibration images; an operator TFLite cannot run in int8 (the
        converter's message).
    """
    from tensorflow.python.framework import convert_to_constants

    if calibration is None or len(calibration) == 0:
        raise errors.ConfigError("calibration: expected at least one real image to calibrate the "
                                 "int8 ranges on, got none")
    names = sorted(serve.structured_outputs)
    frozen = convert_to_constants.convert_variables_to_constants_v2(serve)
    spec = tf.nest.flatten(serve.structured_input_signature)[0]
    module = tf.Module()  # Keras 3 variables are not frozen by the converter: freeze them first.
    module.serve = tf.function(lambda images: dict(zip(names, frozen(images))),
                               input_signature=[tf.TensorSpec(spec.shape, spec.dtype, "images")])
    staging = tempfile.mkdtemp(prefix="tfkd-litert-")
    try:
        tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, ["serving_default"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        sample = np.asarray(calibration[:CALIBRATION_IMAGES], np.float32)
        converter.representative_dataset = lambda: ({"images": x[None]} for x in sample)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            return converter.convert()
        except Exception as e:  # noqa: BLE001 - the converter raises many types.
            first = (str(e).splitlines() or [type(e).__name__])[0][:300]
            raise errors.ConfigError(f"variant='int8': the LiteRT conversion failed: {first}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_int8(serve, calibration: np.ndarray, version_dir: str) -> str:
    """Converts (:func:`convert_int8`) and writes ``<version_dir>/model.tflite``; returns its path."""
    path = os.path.join(version_dir, FILE)
    fs.write_atomic(path, convert_int8(serve, calibration))
    return path


def write_variant(serve, version_dir: str, calibration: np.ndarray | None) -> None:
    """The int8 format's writer (:attr:`tfkd.export.formats.ExportFormat.writer`):
    :func:`write_int8`.

    Raises:
      tfkd.errors.ConfigError: no calibration images; what :func:`convert_int8` raises.
    """
    if calibration is None:
        raise errors.ConfigError("variant='int8': expected calibration_images (real inputs, e.g. "
                                 "the transfer set) to calibrate its int8 ranges on")
    write_int8(serve, calibration, version_dir)


class LiteRTModel:
    """A ``model.tflite`` served: its signatures as callables, thread-safe (one interpreter, one
    call at a time: a LiteRT interpreter is not safe to share between threads). Every signature is
    test-run once when the model is loaded (:meth:`check`).

    Attributes:
      path: the file.
      signatures: signature key -> ``fn(**inputs)`` -> dict of output name -> ``tf.Tensor`` (as
        ``tf.saved_model.load(...).signatures`` gives). ``fn`` raises TypeError for input names
        other than the signature's, :class:`tfkd.errors.InterpreterError` when the interpreter
        fails.
      details: signature key -> (inputs, outputs): name -> (numpy dtype, shape signature with -1
        for the batch).

    Raises:
      tfkd.errors.ConfigError: the file is not a LiteRT model, or it is one that fails its test
        run (a damaged file TFLite reads but cannot run).
    """

    def __init__(self, path: str, num_threads: int | None = None):
        self.path = path
        content = fs.read_bytes(path)
        with warnings.catch_warnings():  # tf.lite.Interpreter's notice pointing at ai_edge_litert.
            warnings.simplefilter("ignore")
            try:
                self._interpreter = tf.lite.Interpreter(model_content=content,
                                                        num_threads=num_threads)
            except ValueError as e:
                raise errors.ConfigError(f"{path}: not a LiteRT model "
                                         f"({' '.join(str(e).split())[:300]})") from None
        self._lock = threading.Lock()
        self.signatures, self.details = {}, {}
        for key in self._interpreter.get_signature_list():
            runner = self._interpreter.get_signature_runner(key)
            self.details[key] = tuple(
                {name: (d["dtype"], [int(s) for s in d["shape_signature"]])
                 for name, d in part.items()}
                for part in (runner.get_input_details(), runner.get_output_details()))
            self.signatures[key] = self._callable(runner, sorted(self.details[key][0]))
        self.check()

    def check(self) -> None:
        """Runs every signature once on zeros of its inputs (batch 1, each unknown dimension 1),
        as a server does before it serves a version: a damaged file that TFLite reads but cannot
        run (an out-of-range quantization parameter, a wrong tensor index) fails here, not on a
        client's request.

        Raises:
          tfkd.errors.ConfigError: one line naming the file, the signature and the interpreter's
            reason.
        """
        for key, (inputs, _) in self.details.items():
            feeds = {name: np.zeros([abs(s) for s in shape], dtype)  # An unknown (-1) is 1.
                     for name, (dtype, shape) in inputs.items()}
            try:
                self.signatures[key](**feeds)
            except errors.InterpreterError as e:
                raise errors.ConfigError(f"{self.path}: a damaged LiteRT model: signature {key!r} "
                                         f"fails its test run on zeros: {e.reason}") from None

    def _callable(self, runner, names: list[str]):
        def call(**inputs):
            if sorted(inputs) != names:
                raise TypeError(  # Programming error: as a SavedModel signature, on other names.
                    f"{self.path}: expected the inputs {names}, got {sorted(inputs)}")
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
            with self._lock:
                try:
                    out = runner(**feeds)
                except (RuntimeError, ValueError) as e:
                    reason = " ".join(str(e).split())
                    shapes = {k: list(v.shape) for k, v in feeds.items()}
                    raise errors.InterpreterError(f"{self.path}: the LiteRT interpreter failed on "
                                                  f"{shapes}: {reason}", reason) from None
            return {k: tf.constant(v) for k, v in out.items()}
        return call


def load(version_dir: str) -> formats.LoadedVersion:
    """The int8 format's loader: ``<version_dir>/model.tflite`` as a :class:`LiteRTModel`
    (test-run at load), served as TF Serving serves it with ``--prefer_tflite_model``: its
    signatures' inputs and outputs as SignatureDefs; with ``assets/labels.txt`` also a
    ``classify`` signature (Classify API), which decodes each Example's ``image/encoded`` as the
    SavedModel's does. Its signatures raise :class:`tfkd.errors.InterpreterError` when the
    interpreter fails.

    Raises:
      tfkd.errors.ConfigError: not a LiteRT model, or one that fails its test run.
    """
    path = os.path.join(version_dir, FILE)
    model = LiteRTModel(path)
    signatures = dict(model.signatures)
    signature_defs = {key: formats.signature_def(*model.details[key]) for key in signatures}
    labels = os.path.join(version_dir, "assets", formats.VOCABULARY_FILE)
    if formats.SIGNATURE_KEY in signatures and fs.exists(labels):
        names = [n for n in fs.read_text(labels).split("\n") if n]
        shape = next(iter(model.details[formats.SIGNATURE_KEY][0].values()))[1][1:]
        signatures[formats.CLASSIFY_SIGNATURE_KEY] = _classify(
            signatures[formats.SIGNATURE_KEY], shape, names)
        signature_defs[formats.CLASSIFY_SIGNATURE_KEY] = formats.classify_signature_def(len(names))
    digest = hashlib.sha256(fs.read_bytes(path)).hexdigest()
    return formats.LoadedVersion(signatures, signature_defs, "sha256:" + digest, model, "LiteRT",
                                 (errors.InterpreterError,))


def _classify(predict, image_shape, names: list[str]):
    """The Classify signature of a LiteRT version: Examples -> decoded images (as the SavedModel's
    ``classify``: :func:`tfkd.images.decode`) -> ``predict`` -> classes and scores [n, K]."""
    def classify(inputs):
        features = tf.io.parse_example(inputs, {formats.CLASSIFY_IMAGE_FEATURE:
                                                tf.io.FixedLenFeature([], tf.string)})
        pixels = tf.map_fn(lambda b: images_lib.decode(b, tuple(image_shape)),
                           features[formats.CLASSIFY_IMAGE_FEATURE], fn_output_signature=tf.float32)
        scores = predict(images=pixels.numpy())[formats.PROBABILITIES_KEY]
        classes = tf.tile(tf.constant(names)[None], [tf.shape(scores)[0], 1])
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,
                tf.saved_model.CLASSIFY_OUTPUT_SCORES: scores}
    return classify
