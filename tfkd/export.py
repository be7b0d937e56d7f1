"""SavedModel export in TF Serving's layout, with tfkd's signature contract.

Signature contract (teacher by default, and every student):
  ``serving_default``: input ``images`` float32 [batch, H, W, C] in [0, 1];
  outputs ``probabilities`` float32 [batch, num_classes] (rows sum to 1) and, for the student,
  ``classes`` int64 [batch] (the argmax). A teacher tfkd trains also answers ``logits`` float32
  [batch, num_classes] (:data:`TEACHER_OUTPUTS`): white-box methods (ZSKD's impression search)
  read them instead of log-probabilities, which float32 floors at about -103 nats and tfkd at
  -69 (``log(max(p, 1e-30))``), so a confident image keeps its real logit gaps.

With class names, the export also has TF Serving's Classify API signature ``classify`` (method
``tensorflow/serving/classify``): input ``inputs`` string [batch] of serialized ``tf.train.Example``
records, each with the encoded image (PNG/JPEG/BMP/GIF bytes, any size: decoded and resized as
:func:`tfkd.images.decode` does) under ``image/encoded``; outputs ``classes`` string [batch, K] (the
label vocabulary, ``assets/labels.txt``, one name per line in class order) and ``scores`` float32
[batch, K] (the probabilities, aligned with ``classes``).

Deployment configs for the exports (``models.config`` and friends): :mod:`tfkd.serving.config`.

Layout: ``<export_base>/<version>/{saved_model.pb, variables/, assets/}`` with numeric, increasing
versions, as tensorflow_model_server's file-system source expects. A version is written to a hidden
temporary directory beside it and renamed into place, so a server polling the base path never sees a
half-written model.

Every export carries TF Serving warmup requests (``assets.extra/tf_serving_warmup_requests``: a
TFRecord of ``PredictionLog`` records built from real images), which tensorflow_model_server (and
:mod:`tfkd.serving`) replay at load so that the first client request does not pay for tracing.

Export formats (:data:`FORMATS`, a registry: a new format is one :func:`register_format` call
that the export, the served evaluation, the model card, the Vertex model dir and the Kubeflow
artifact all pick up). The registered ones: ``float32`` (as trained), ``float16`` (every layer's
weights and compute in float16; inputs and outputs of the signature stay float32), ``int8`` (a
LiteRT full-integer model, :mod:`tfkd.litert`: every operator int8, convolutions included,
calibrated on the transfer set; written as ``model.tflite``, the file TF Serving reads with
``--prefer_tflite_model=true``, and the version holds no SavedModel; ``classify`` is answered by
tfkd's server from ``assets/labels.txt``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfkd import errors
from tfkd import fs
from tfkd import images as images_lib
from tfkd import litert

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


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One kind of exported student: the registry the export, the served evaluation, the model
    card, the Vertex model dir and the Kubeflow artifact iterate over (:data:`FORMATS`).

    Attributes:
      name: the variant's name (``compress`` setting, ``report.json``'s ``student_variants`` key).
      compress: ``compress(model) -> model``: the compressed copy of a freshly rebuilt float32
        model (float32 [b, H, W, C] in [0, 1] -> logits [b, K] either way).
      description: one line for docs and the model card.
      writer: ``writer(serve, version_dir, calibration)`` writes the variant instead of a
        SavedModel (``serve``: the float32 serving concrete function; ``calibration``: float32
        real images [n, H, W, C] or None); None: a SavedModel of ``compress(model)``.
    """

    name: str
    compress: Callable[[keras.Model], keras.Model]
    description: str = ""
    writer: Callable | None = None

    @property
    def servable_name(self) -> str:
        """The model name it is served under and its export directory (``export/<name>/``)."""
        return "student" if self.name == "float32" else f"student_{self.name}"

    @property
    def model_dir_path(self) -> str:
        """Where it goes under a Vertex AI model dir: the root for float32, else ``variants/<name>``."""
        return "" if self.name == "float32" else os.path.join("variants", self.name)


def _float16_layers(config: dict) -> None:
    """Sets every layer of a functional model's config to float16, nested models' layers too (a
    ``keras.applications`` backbone inside tfkd's model kept float32 before)."""
    for layer in config.get("layers", ()):
        if layer["class_name"] != "InputLayer" and "dtype" in layer.get("config", {}):
            layer["config"]["dtype"] = "float16"
        _float16_layers(layer.get("config", {}))


def _float16(model: keras.Model) -> keras.Model:
    config = model.get_config()
    _float16_layers(config)
    copy = model.__class__.from_config(config)
    copy.set_weights([w.astype(np.float16) if w.dtype == np.float32 else w
                      for w in model.get_weights()])
    return copy


def _litert_int8(serve, version_dir: str, calibration: np.ndarray | None) -> None:
    if calibration is None:
        raise errors.ConfigError("variant='int8': expected calibration_images (real inputs, e.g. "
                                 "the transfer set) to calibrate its int8 ranges on")
    litert.write_int8(serve, calibration, version_dir)


FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Adds an export format (a new one is this call). Raises :class:`tfkd.errors.ConfigError`
    for a name taken."""
    if fmt.name in FORMATS:
        raise errors.ConfigError(f"export format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


register_format(ExportFormat("float32", lambda m: m, "as trained"))
register_format(ExportFormat("float16", _float16, "every layer's weights and compute in float16"))
register_format(ExportFormat("int8", lambda m: m, "LiteRT full-integer model (every operator "
                                                  "int8, calibrated on the transfer set)",
                             writer=_litert_int8))
VARIANTS = tuple(FORMATS)
"""The registered export formats' names when this module was imported (float32 first)."""


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


def _staging_dir(base: str, version: int) -> str:
    """A fresh temporary directory in ``base`` for a version being written (renamed into place when
    complete), with the permissions a directory made under the user's umask has: ``mkdtemp``'s
    0700 would make the version unreadable to a TF Serving process running as another user."""
    if not fs.is_local(base):
        path = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        fs.makedirs(path)
        return path
    path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def list_versions(export_base: str) -> list[int]:
    """Numeric version directories under ``export_base`` (ascending); [] if none or no such dir."""
    if not fs.isdir(export_base):
        return []
    return sorted(int(d) for d in fs.listdir(export_base) if d.isdigit() and any(
        fs.exists(os.path.join(export_base, d, f)) for f in ("saved_model.pb", litert.FILE)))


def latest_version_dir(export_base: str) -> str | None:
    """Path of the newest complete version under ``export_base``, or None."""
    versions = list_versions(export_base)
    return os.path.join(export_base, str(versions[-1])) if versions else None


def compressed_copy(model: keras.Model, variant: str = "float32") -> keras.Model:
    """A fresh, uncompiled copy of a functional model, optionally compressed (see module docstring).

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
      variant: one of ``VARIANTS``.
      class_names: K names in class order: adds the ``classify`` signature (module docstring)
        with them as its label vocabulary; None: ``serving_default`` only.
      calibration_images: float32 [n, H, W, C] in [0, 1], real inputs (the transfer set) a
        quantized variant (``int8``) calibrates its ranges on; required for it.

    Returns:
      The version directory written, ``<export_base>/<version>``.

    Raises:
      tfkd.errors.ConfigError: ``version`` not positive or already present; unknown variant or
        output; class names not K distinct one-line names; ``int8`` without calibration images.
    """
    if not outputs or not set(outputs) <= set(TEACHER_OUTPUTS):
        raise errors.ConfigError(f"outputs={outputs!r}: expected a non-empty subset of {TEACHER_OUTPUTS}")
    existing = list_versions(export_base)
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
            if vocabulary:
                fs.makedirs(os.path.join(tmp_dir, "assets"))
                with open(vocabulary, "rb") as f:
                    fs.write_atomic(os.path.join(tmp_dir, "assets", VOCABULARY_FILE), f.read())
            return
        _write_saved_model(servable, signatures, tmp_dir, warmup_images)

    try:
        return _write_version(export_base, version, write)
    finally:
        if vocabulary_dir:
            shutil.rmtree(vocabulary_dir, ignore_errors=True)


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

    path = os.path.join(saved_model_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(fs.read_bytes(path))
    for meta_graph in proto.meta_graphs:
        meta_graph.signature_def[key].method_name = method_name
    fs.write_atomic(path, proto.SerializeToString())


def _write_version(export_base: str, version: int, write) -> str:
    """``write(tmp_dir)`` into a hidden staging directory of ``export_base``, renamed to
    ``<export_base>/<version>`` once complete (removed if ``write`` fails).

    Raises:
      tfkd.errors.ConfigError: the version is already there (versions only increase).
    """
    final_dir = os.path.join(export_base, str(version))
    if fs.exists(final_dir):
        raise errors.ConfigError(f"version={version}: {final_dir} already exists; versions only "
                                 "increase")
    fs.makedirs(export_base)
    tmp_dir = _staging_dir(export_base, version)
    try:
        write(tmp_dir)
        fs.move_dir(tmp_dir, final_dir)
    except BaseException:
        if fs.exists(tmp_dir):
            fs.rmtree(tmp_dir)
        raise
    return final_dir


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
    return _write_version(export_base, version, lambda tmp_dir: tf.saved_model.save(
        module, tmp_dir, signatures={SIGNATURE_KEY: module.serve}))


def saved_model_bytes(path: str) -> int:
    """Total size in bytes of the files of a SavedModel directory."""
    return fs.tree_bytes(path)


def saved_model_parameters(path: str) -> int:
    """Number of scalar weights stored in a SavedModel's variables checkpoint (0 if it has none)."""
    prefix = os.path.join(path, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):
        return 0
    # The reader of the prefix itself (tf.train.list_variables would first ask whether the prefix
    # is a directory, which ram:// answers yes for ".../variables/variables").
    shapes = tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
    return int(sum(int(np.prod(shape)) for name, shape in shapes.items()
                   if name != "_CHECKPOINTABLE_OBJECT_GRAPH"))


REJECTED_SUFFIX = ".rejected"
"""The name ending of an export the served-agreement check set aside (``<version>.rejected``:
:func:`tfkd.evaluation.check_served_agreement`, :func:`tfkd.fs.reject_version`)."""


def deploy_version(version_dir: str, model_base_path: str, version: int | None = None,
                   allow_older: bool = False) -> str:
    """Loads a model version as a server would, then copies it into a served base path as its
    next version, atomically.

    The version is loaded first (:meth:`tfkd.serving.Servable.load`: a SavedModel loaded and its
    warmup requests replayed, a LiteRT model test-run), so a damaged one is refused here rather
    than dropped in front of a server. The copy goes to a hidden temporary directory inside
    ``model_base_path`` and is renamed into place, so a server polling the base path (TF Serving,
    or :mod:`tfkd.serving`) loads it whole, without a restart. Deploying a version into the base
    path it sits in (a rollback: the same model as the next version) is allowed.

    Args:
      version_dir: a SavedModel directory (holding ``saved_model.pb``), or a LiteRT version
        (``model.tflite``: the int8 student).
      model_base_path: the served base path.
      version: default: one more than the newest there.
      allow_older: accept a ``version`` below the newest there. Off by default: a server with
        TF Serving's default policy (the latest version) would never serve it.

    Returns:
      the new version directory.

    Raises:
      tfkd.errors.ConfigError (a ValueError): one line, nothing copied: ``version_dir`` is not a
        SavedModel or LiteRT version, or an export the served-agreement check set aside
        (``<n>.rejected``), or fails to load; ``model_base_path`` is a file, is ``version_dir`` or
        inside it (the copy would nest), or cannot be written; the version exists, or it is
        below the newest without ``allow_older``.
    """
    if not any(fs.exists(os.path.join(version_dir, f)) for f in fs.LAST_FILES):
        raise errors.ConfigError(f"version_dir={version_dir!r}: expected a SavedModel directory "
                                 f"(with saved_model.pb) or a LiteRT version (with {litert.FILE})")
    if os.path.basename(version_dir.rstrip("/")).endswith(REJECTED_SUFFIX):
        raise errors.ConfigError(
            f"version_dir={version_dir!r}: an export the served-agreement check set aside (the "
            "student disagreed with the teacher far more than in training; see report.json's "
            "student_check); not deployed")
    if _within(model_base_path, version_dir):
        raise errors.ConfigError(
            f"model_base_path={model_base_path!r}: inside the version being deployed "
            f"({version_dir}), which would nest a copy in it; expected the directory of numeric "
            "versions a server watches")
    if fs.exists(model_base_path) and not fs.isdir(model_base_path):
        raise errors.ConfigError(f"model_base_path={model_base_path!r}: is a file; expected the "
                                 "directory of numeric versions a server watches")
    existing = list_versions(model_base_path)
    if version is not None and existing and version < existing[-1] and not allow_older:
        raise errors.ConfigError(f"version={version}: below the newest version there "
                                 f"({existing[-1]}), which a server serving the latest version "
                                 f"keeps serving; omit the version (next: {existing[-1] + 1}) or "
                                 "allow an older one explicitly")
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    _check_loads(version_dir, os.path.basename(model_base_path.rstrip("/")), version)
    return _copy_version(version_dir, model_base_path, version)


def _copy_version(version_dir: str, model_base_path: str, version: int) -> str:
    """``version_dir`` copied in as ``<model_base_path>/<version>`` (:func:`_write_version`).
    Raises ConfigError (one line) if the base path cannot be written."""
    try:
        return _write_version(model_base_path, version,
                              lambda tmp_dir: fs.copy_tree(version_dir, tmp_dir))
    except (OSError, tf.errors.OpError) as e:  # A read-only mount, a full disk, /proc, ...
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise errors.ConfigError(f"model_base_path={model_base_path!r}: cannot write there "
                                 f"({' '.join(str(reason).split())[:200]}); not deployed") from None


def _within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or under it (local paths resolved: relative, ``..``,
    symbolic links; others compared as written, less trailing slashes)."""
    if fs.is_local(path) and fs.is_local(directory):
        path, directory = os.path.realpath(path), os.path.realpath(directory)
    path, directory = path.rstrip("/"), directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def _check_loads(version_dir: str, name: str, version: int) -> None:
    """Loads ``version_dir`` as tfkd's server would serve it (as ``name`` version ``version``).
    Raises ConfigError (one line) if it fails."""
    from tfkd.serving import registry  # tfkd.serving imports this module.

    try:
        registry.Servable.load(name, version, version_dir)
    except Exception as e:  # noqa: BLE001 - whatever the load raises, the version is not deployed.
        reason = " ".join(str(e).split())[:500]
        raise errors.ConfigError(f"version_dir={version_dir!r}: does not load as a server would "
                                 f"load it ({type(e).__name__}: {reason}); not deployed") from None
