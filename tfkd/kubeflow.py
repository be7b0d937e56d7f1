"""What tfkd's Kubeflow Pipelines components do, as plain functions (no KFP import): the
components themselves (``launch/kubeflow.py``) are thin shells that turn KFP artifacts and
parameters into these calls, so everything here is testable without KFP.

Artifacts are duck-typed as KFP passes them: an object with a local ``path`` (where the artifact's
files go) and a ``metadata`` dict; a ``Metrics`` artifact also has ``log_metric(name, value)``.
"""

from __future__ import annotations

import base64
import os

from tfkd import data as data_lib
from tfkd import errors
from tfkd import export
from tfkd import fs
from tfkd import model_card
from tfkd import serving
from tfkd import teacher as teacher_lib
from tfkd.teacher import client as client_lib

# Report figures logged to the Metrics artifact (name in the report -> metric name).
METRICS = ("student_accuracy", "student_fidelity", "student_validation_accuracy",
           "teacher_accuracy", "teacher_queries_total", "student_parameters",
           "student_saved_model_bytes", "total_seconds")


CHANNEL_FIELDS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name",
                  "auth_token_file", "auth_token_env")
"""The :class:`tfkd.teacher.ServingConfig` fields that say how to reach a teacher (TLS, a token)."""


def distill_config(workdir: str, teacher: str, teacher_model_name: str, settings: dict):
    """The :class:`tfkd.DistillConfig` a pipeline's parameters describe: ``settings`` (dotted
    field names, :meth:`tfkd.DistillConfig.with_settings`) with the teacher's address and model
    name; the rest the library's defaults.

    Raises:
      tfkd.errors.ConfigError: a setting that is no field.
    """
    from tfkd.config import DistillConfig

    return DistillConfig(workdir=workdir).with_settings(
        {**settings, "teacher.target": teacher, "teacher.model_name": teacher_model_name})


def check_teacher(target: str, model_name: str = "teacher", timeout_s: float = 30.0,
                  **channel) -> dict:
    """Asks a TF Serving endpoint for a model's signature (``GetModelMetadata``), through the
    same client and channel the distillation will use (``channel``: :data:`CHANNEL_FIELDS`, a TLS
    CA and client certificate, an authorization token), so that a pipeline fails at its first
    step, with one clear message, when the teacher is not there or cannot be reached.

    Returns:
      {"target", "model_name", "version", "signatures": [the signature read]}.

    ``target`` is any address the distillation takes: ``host:port`` (gRPC) or
    ``http(s)://host:port`` (REST), opened by the same factory as the distillation's teacher
    (``tfkd.connect``).

    Raises:
      TeacherError (a ServingClientError, RuntimeError): the endpoint does not answer (the cause
        named), or does not serve ``model_name``; ConfigError (a ValueError): a ``channel`` field
        that is not one of :data:`CHANNEL_FIELDS`, or a TLS or token file that cannot be read.
    """
    unknown = set(channel) - set(CHANNEL_FIELDS)
    if unknown:
        raise errors.ConfigError(f"channel: {sorted(unknown)} are not among {CHANNEL_FIELDS}")
    with teacher_lib.connect(target, model_name, timeout_s=timeout_s,
                             connect_timeout_s=timeout_s, **channel) as teacher:
        signature = teacher.signature
    return {"target": target, "model_name": model_name, "version": signature.version,
            "signatures": [signature.signature_name]}


def export_student_artifact(report: dict, model) -> dict:
    """Copies the run's exported float32 student into ``model.path`` in TF Serving's version
    layout (``<path>/<version>/saved_model.pb``), its other export formats under
    ``variants/<format>/<version>/`` (:data:`tfkd.export.FORMATS`; TF Serving ignores the
    non-numeric directory), with the model card beside the versions, and fills
    ``model.metadata``. Returns the metadata."""
    version_dir = report["student_export_dir"]
    version = os.path.basename(version_dir)
    fs.copy_tree(version_dir, os.path.join(model.path, version))
    variants = {name: v["export_dir"] for name, v in (report.get("student_variants") or {}).items()
                if name != "float32" and (v or {}).get("export_dir")}
    for name, directory in variants.items():
        fs.copy_tree(directory, os.path.join(model.path, export.FORMATS[name].model_dir_path,
                                             os.path.basename(directory)))
    for path in (report.get("model_card") or {}).values():
        fs.write_atomic(os.path.join(model.path, os.path.basename(path)), fs.read_bytes(path))
    model.metadata.update({
        "framework": "tensorflow", "layout": "tf_serving_base_path", "version": int(version),
        "signature": "serving_default", "architecture": report.get("student_architecture"),
        "method": report.get("method"), "accuracy": report.get("student_accuracy"),
        "variants": sorted(variants)})
    return dict(model.metadata)


def log_report_metrics(report: dict, metrics) -> dict:
    """Logs the report's figures (:data:`METRICS`, those not null) to a KFP ``Metrics`` artifact;
    returns them."""
    logged = {name: float(report[name]) for name in METRICS if report.get(name) is not None}
    for name, value in logged.items():
        metrics.log_metric(name, value)
    return logged


def report_markdown(report: dict) -> str:
    """The run's model card as Markdown with its image grids inlined (``data:`` URIs), so that it
    renders in the KFP UI without access to the work dir."""
    pictures = {}
    for name, path in (report.get("grids") or {}).items():
        if fs.exists(path):
            encoded = base64.b64encode(fs.read_bytes(path)).decode("ascii")
            pictures[f"{name} images (one row per teacher class)"] = f"data:image/png;base64,{encoded}"
    return model_card.markdown(model_card.build(report), pictures)


def evaluate_served(model_path: str, dataset: str, eval_examples: int = 0,
                    data_dir: str | None = None) -> dict:
    """Serves the student base path with tfkd's TF-Serving-compatible server on a loopback port and
    measures its top-1 accuracy over gRPC on the dataset's test split (the first ``eval_examples``;
    0: all): the check that the artifact is a served-compatible model, not only files.

    Returns:
      {"accuracy" in [0, 1], "examples", "version"}.

    Raises:
      ConfigError: no numeric version directory under ``model_path``.
      tfkd.errors.DatasetUnavailableError: the dataset cannot be loaded here.
    """
    versions = export.list_versions(model_path)
    if not versions:
        raise errors.ConfigError(f"model_path={model_path!r}: no numeric version directory "
                                 "(expected TF Serving's layout, <path>/<version>/saved_model.pb)")
    test = data_lib.load_dataset(dataset, data_dir)
    x, y = test.x_test, test.y_test
    if eval_examples:
        x, y = x[:eval_examples], y[:eval_examples]
    with serving.ModelServer([serving.ModelConfig("student", model_path)], poll_seconds=0) as srv:
        with client_lib.connect(srv.target, "student", role="student") as client:
            accuracy = client_lib.accuracy(client, x, y)
    return {"accuracy": float(accuracy), "examples": int(len(x)), "version": int(max(versions))}
