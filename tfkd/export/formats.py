"""The export format registry: what each format writes, the file that marks a version of it, and
how a version of it is loaded to be served or run.

Every reader of version directories asks this registry (never a file name of its own):
:func:`tfkd.export.list_versions` (a numeric directory is a version when it holds a registered
marker), :func:`tfkd.export.deploy_version`, :func:`tfkd.evaluation.cpu_latency_ms`,
:meth:`tfkd.serving.Servable.load` and so the server's version poller. A new format is one
:func:`register_format` call with its ``marker`` and ``loader``; :func:`unregister_format` takes it
out again.

The signature contract every format's loader keeps (constants below): ``serving_default`` takes
``images`` float32 [batch, H, W, C] in [0, 1] and answers ``probabilities`` float32 [batch, K] and
(for a student) ``classes`` int64 [batch]; see :mod:`tfkd.export`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

import keras
import tensorflow as tf

from tfkd import errors
from tfkd import fs

SIGNATURE_KEY = "serving_default"
INPUT_KEY = "images"
PROBABILITIES_KEY = "probabilities"
CLASSES_KEY = "classes"
LOGITS_KEY = "logits"
OUTPUTS = (PROBABILITIES_KEY, CLASSES_KEY)
"""A student's outputs (the default)."""
TEACHER_OUTPUTS = (PROBABILITIES_KEY, CLASSES_KEY, LOGITS_KEY)
"""The outputs of a teacher tfkd trains: the student's and its logits."""
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CLASSIFY_SIGNATURE_KEY = "classify"
CLASSIFY_IMAGE_FEATURE = "image/encoded"
VOCABULARY_FILE = "labels.txt"
SAVED_MODEL_FILE = "saved_model.pb"
"""The SavedModel formats' marker file."""


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """A version directory loaded as a server runs it: what a format's loader returns.

    Attributes:
      signatures: signature key -> ``fn(**inputs)`` -> dict of output alias -> ``tf.Tensor`` (as
        ``tf.saved_model.load(...).signatures`` gives); the inputs come as numpy arrays or tensors
        of the dtypes and shapes ``signature_defs`` declares.
      signature_defs: signature key -> ``SignatureDef`` proto (each input and output alias with its
        dtype and shape, -1 for any size, and the method name): what a server checks requests
        against and answers as metadata (:func:`signature_def` builds one).
      fingerprint: what the model is, whatever its name and version (``"tf:<singleprint>"`` for a
        SavedModel, ``"sha256:<hex>"`` of the model file otherwise); tfkd's server answers it as
        the ``saved_model_fingerprint`` metadata field.
      model: the loaded object itself (``tf.saved_model.load``'s, a
        :class:`tfkd.export.litert.LiteRTModel`, ...), kept alive with the signatures.
      runtime: what runs it, in words for messages ("SavedModel", "LiteRT").
      model_errors: exception types a signature raises when the model, not the request, is at
        fault (:class:`tfkd.errors.InterpreterError`): a server answers them INTERNAL.
    """

    signatures: dict
    signature_defs: dict
    fingerprint: str
    model: object = None
    runtime: str = "model"
    model_errors: tuple = ()


def _tensor_info(dtype, shape):
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(dtype=tf.as_dtype(dtype).as_datatype_enum)
    for d in shape:
        info.tensor_shape.dim.add(size=int(d))
    return info


def signature_def(inputs: dict, outputs: dict, method: str = tf.saved_model.PREDICT_METHOD_NAME):
    """A ``SignatureDef`` proto for a loader (:attr:`LoadedVersion.signature_defs`).

    Args:
      inputs, outputs: alias -> (dtype: anything ``tf.as_dtype`` takes, shape: a list of ints,
        -1 for any size).
      method: the method name (Predict's by default; ``tf.saved_model.CLASSIFY_METHOD_NAME`` for
        the Classify API).
    """
    from tensorflow.core.protobuf import meta_graph_pb2

    proto = meta_graph_pb2.SignatureDef(method_name=method)
    for target, part in ((proto.inputs, inputs), (proto.outputs, outputs)):
        for key, (dtype, shape) in part.items():
            target[key].CopyFrom(_tensor_info(dtype, shape))
    return proto


def classify_signature_def(num_classes: int):
    """The ``SignatureDef`` of a Classify API signature: ``inputs`` string [n] (serialized
    Examples) -> ``classes`` string [n, K] and ``scores`` float32 [n, K]."""
    return signature_def({tf.saved_model.CLASSIFY_INPUTS: (tf.string, [-1])},
                         {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: (tf.string, [-1, num_classes]),
                          tf.saved_model.CLASSIFY_OUTPUT_SCORES: (tf.float32, [-1, num_classes])},
                         tf.saved_model.CLASSIFY_METHOD_NAME)


def saved_model_fingerprint(path: str) -> str:
    """What a SavedModel is (:attr:`LoadedVersion.fingerprint`): TensorFlow's SavedModel
    fingerprint (``fingerprint.pb``, its ``singleprint``: hashes of the graph, the signatures and
    the checkpoint), else a SHA-256 of ``saved_model.pb`` and ``variables/variables.index``
    (whose entries carry the weights' checksums)."""
    try:
        return "tf:" + tf.saved_model.experimental.read_fingerprint(path).singleprint()
    except Exception:  # noqa: BLE001 - no fingerprint.pb (older SavedModels): hash the files.
        digest = hashlib.sha256()
        for name in (SAVED_MODEL_FILE, os.path.join("variables", "variables.index")):
            if fs.exists(os.path.join(path, name)):
                digest.update(fs.read_bytes(os.path.join(path, name)))
        return "sha256:" + digest.hexdigest()


def load_saved_model(version_dir: str) -> LoadedVersion:
    """The SavedModel formats' loader: the ``serve`` meta graph's signatures (those not starting
    with ``__``) as stored in ``saved_model.pb``, and ``tf.saved_model.load``'s functions.

    Raises:
      whatever reading or loading raises (``tf.errors.OpError``, ``google.protobuf``'s
      ``DecodeError``): a caller serving it reports the version as not loadable.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(fs.read_bytes(os.path.join(version_dir, SAVED_MODEL_FILE)))
    meta_graph = next((m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags),
                      proto.meta_graphs[0])
    signature_defs = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
    model = tf.saved_model.load(version_dir, tags=["serve"])
    return LoadedVersion(model.signatures, signature_defs, saved_model_fingerprint(version_dir),
                         model, "SavedModel")


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One kind of exported student: the registry the export, the served evaluation, the model
    card, the Vertex model dir, the Kubeflow artifact and every reader of version directories
    iterate over (:data:`FORMATS`).

    Attributes:
      name: the variant's name (``compress`` setting, ``report.json``'s ``student_variants`` key).
      compress: ``compress(model) -> model``: the compressed copy of a freshly rebuilt float32
        Keras model, called in the serving graph as ``model(images, training=False)`` (float32
        [b, H, W, C] in [0, 1] -> logits [b, K] either way): a Keras model, or any callable whose
        trackable state is what the SavedModel should store (float16's
        :class:`tfkd.export.saved_model.Float16Weights`, which stores float16 constants).
      description: one line for docs and the model card.
      writer: ``writer(serve, version_dir, calibration)`` writes the variant instead of a
        SavedModel (``serve``: the float32 serving concrete function; ``calibration``: float32
        real images [n, H, W, C] or None); None: a SavedModel of ``compress(model)``.
      marker: the file name whose presence in a version directory says "a complete version of
        this format" (``saved_model.pb``; ``model.tflite`` for int8); written and copied last.
      loader: ``loader(version_dir) -> LoadedVersion``: the version ready to be served or run
        (:class:`LoadedVersion`); raises whatever a bad version makes it raise.
    """

    name: str
    compress: Callable[[keras.Model], Callable]
    description: str = ""
    writer: Callable | None = None
    marker: str = SAVED_MODEL_FILE
    loader: Callable[[str], LoadedVersion] = load_saved_model

    @property
    def servable_name(self) -> str:
        """The model name it is served under and its export directory (``export/<name>/``)."""
        return "student" if self.name == "float32" else f"student_{self.name}"

    @property
    def model_dir_path(self) -> str:
        """Where it goes under a Vertex AI model dir: the root for float32, else ``variants/<name>``."""
        return "" if self.name == "float32" else os.path.join("variants", self.name)


FORMATS: dict[str, ExportFormat] = {}
"""The registered formats by name, in registration order (float32 first)."""


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Adds an export format (a new one is this call) and returns it.

    Raises:
      tfkd.errors.ConfigError: the name is taken; the marker is not a plain file name; the marker
        is another format's with a different loader (a version directory must say which loader
        reads it).
    """
    if fmt.name in FORMATS:
        raise errors.ConfigError(f"export format {fmt.name!r} is already registered")
    if not fmt.marker or os.path.basename(fmt.marker) != fmt.marker:
        raise errors.ConfigError(f"export format {fmt.name!r}: marker={fmt.marker!r}: expected a "
                                 "file name in the version directory (no directory part)")
    for other in FORMATS.values():
        if other.marker == fmt.marker and other.loader is not fmt.loader:
            raise errors.ConfigError(f"export format {fmt.name!r}: marker={fmt.marker!r} is format "
                                     f"{other.name!r}'s, with another loader; expected a marker "
                                     "file of its own")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> ExportFormat:
    """Removes a registered format (a test's, a plug-in's) and returns it.

    Raises:
      tfkd.errors.ConfigError: no format of that name is registered.
    """
    if name not in FORMATS:
        raise errors.ConfigError(f"export format {name!r}: not registered; registered: "
                                 f"{tuple(FORMATS)}")
    return FORMATS.pop(name)


def markers() -> tuple[str, ...]:
    """The registered formats' marker files, each once, in registration order."""
    return tuple(dict.fromkeys(f.marker for f in FORMATS.values()))


def detect_format(version_dir: str) -> ExportFormat | None:
    """The first registered format whose marker file ``version_dir`` holds, or None."""
    return next((f for f in FORMATS.values() if fs.exists(os.path.join(version_dir, f.marker))),
                None)


def format_of(version_dir: str, setting: str = "version_dir") -> ExportFormat:
    """:func:`detect_format`, required.

    Raises:
      tfkd.errors.ConfigError: one line naming ``setting``, the directory and every registered
        marker, when it holds none of them.
    """
    fmt = detect_format(version_dir)
    if fmt is None:
        known = ", ".join(f"{m} ({', '.join(f.name for f in FORMATS.values() if f.marker == m)})"
                          for m in markers())
        raise errors.ConfigError(f"{setting}={version_dir!r}: holds no registered export format's "
                                 "marker file; expected a SavedModel directory or a version of "
                                 f"another registered format, with one of: {known or 'none registered'}")
    return fmt


def load_version(version_dir: str, setting: str = "version_dir") -> LoadedVersion:
    """``version_dir`` loaded by its format's loader (:func:`format_of`).

    Raises:
      tfkd.errors.ConfigError: no registered marker there; what the loader raises.
    """
    return format_of(version_dir, setting).loader(version_dir)
