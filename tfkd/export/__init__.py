"""Export in TF Serving's layout, with tfkd's signature contract, in registered formats; deployment.

Signature contract (teacher by default, and every student):
  ``serving_default``: input ``images`` float32 [batch, H, W, C] in [0, 1];
  outputs ``probabilities`` float32 [batch, num_classes] (rows sum to 1) and, for the student,
  ``classes`` int64 [batch] (the argmax). A teacher tfkd trains also answers ``logits`` float32
  [batch, num_classes] (:data:`TEACHER_OUTPUTS`): white-box methods (ZSKD's impression search)
  read them instead of log-probabilities, which float32 floors at about -103 nats and tfkd at
  -69 (``log(max(p, 1e-30))``), so a confident image keeps its real logit gaps.

With class names, the export also has TF Serving's Classify API signature ``classify``
(:mod:`tfkd.export.saved_model`). Deployment configs for the exports (``models.config`` and
friends): :mod:`tfkd.serving.config`.

Layout: ``<export_base>/<version>/`` with numeric, increasing versions, as tensorflow_model_server's
file-system source expects, written whole or not at all (:mod:`tfkd.export.deploy`).

Export formats (:data:`FORMATS`, the registry of :mod:`tfkd.export.formats`: a new format is one
:func:`register_format` call that the export, the served evaluation, the model card, the Vertex
model dir, the Kubeflow artifact and every reader of version directories pick up). Each format
names its marker file (whose presence makes a numeric directory a version of it) and its loader
(what :func:`list_versions`, :func:`deploy_version`, :func:`tfkd.evaluation.cpu_latency_ms`,
:meth:`tfkd.serving.Servable.load` and the server's version poller use). The registered ones:
``float32`` (as trained), ``float16`` (the weights stored in float16, computed in float32:
LiteRT's float16 quantization convention for CPUs; each weight a float16 graph constant cast to
float32, a cast TensorFlow folds once when the version is loaded, so it is as fast as float32 and
about half its weights' bytes: :class:`tfkd.export.saved_model.Float16Weights`; its signatures'
dtypes and shapes are float32's), both SavedModels (marker ``saved_model.pb``); ``int8`` (a
LiteRT full-integer model, :mod:`tfkd.export.litert`: every operator int8, convolutions included,
calibrated on the transfer set; marker ``model.tflite``, the file TF Serving reads with
``--prefer_tflite_model=true``, and the version holds no SavedModel; ``classify`` is answered by
tfkd's server from ``assets/labels.txt``).

Modules: :mod:`~tfkd.export.formats` (the registry and the contract's names),
:mod:`~tfkd.export.saved_model` (the export), :mod:`~tfkd.export.litert` (the int8 format),
:mod:`~tfkd.export.deploy` (version directories and deployment).
"""

from __future__ import annotations

from tfkd.export import litert
from tfkd.export import saved_model
from tfkd.export.deploy import REJECTED_SUFFIX
from tfkd.export.deploy import deploy_version
from tfkd.export.deploy import latest_version_dir
from tfkd.export.deploy import list_versions
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
from tfkd.export.formats import ExportFormat
from tfkd.export.formats import LoadedVersion
from tfkd.export.formats import detect_format
from tfkd.export.formats import format_of
from tfkd.export.formats import load_saved_model
from tfkd.export.formats import load_version
from tfkd.export.formats import markers
from tfkd.export.formats import register_format
from tfkd.export.formats import signature_def
from tfkd.export.formats import unregister_format
from tfkd.export.saved_model import compressed_copy
from tfkd.export.saved_model import export_classifier
from tfkd.export.saved_model import export_label_only
from tfkd.export.saved_model import saved_model_bytes
from tfkd.export.saved_model import saved_model_parameters
from tfkd.export.saved_model import warmup_records

register_format(ExportFormat("float32", lambda m: m, "as trained"))
register_format(ExportFormat("float16", saved_model.float16_copy,
                             "weights stored in float16, computed in float32 (LiteRT's float16 "
                             "quantization convention on CPUs)"))
register_format(ExportFormat("int8", lambda m: m, "LiteRT full-integer model (every operator "
                                                  "int8, calibrated on the transfer set)",
                             writer=litert.write_variant, marker=litert.FILE, loader=litert.load))
VARIANTS = tuple(FORMATS)
"""The registered export formats' names when this module was imported (float32 first)."""

__all__ = [
    "CLASSES_KEY", "CLASSIFY_IMAGE_FEATURE", "CLASSIFY_SIGNATURE_KEY", "FORMATS", "INPUT_KEY",
    "LOGITS_KEY", "OUTPUTS", "PROBABILITIES_KEY", "REJECTED_SUFFIX", "SAVED_MODEL_FILE",
    "SIGNATURE_KEY", "TEACHER_OUTPUTS", "VARIANTS", "VOCABULARY_FILE", "WARMUP_FILE",
    "ExportFormat", "LoadedVersion", "compressed_copy", "deploy_version", "detect_format",
    "export_classifier", "export_label_only", "format_of", "latest_version_dir", "list_versions",
    "load_saved_model", "load_version", "markers", "register_format", "saved_model_bytes",
    "saved_model_parameters", "signature_def", "unregister_format", "warmup_records",
]
