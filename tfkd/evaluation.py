"""The exported students measured as they will be served: accuracy, fidelity and agreement over
gRPC, in-process CPU latency, and the served-agreement check that refuses a broken export."""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from tfkd import data as data_lib
from tfkd import errors
from tfkd import export
from tfkd import fs
from tfkd import methods
from tfkd import teacher_setup
from tfkd.config import DistillConfig
from tfkd.report import Report
from tfkd.report import StageTimer
from tfkd.teacher import client as client_lib

AGREEMENT_IMAGES = 2000
"""Transfer-set images (a seeded draw) the served student's agreement with the teacher is
measured on (:func:`check_served_agreement`)."""


def agreement_sample(transfer: methods.TransferSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to :data:`AGREEMENT_IMAGES` transfer-set images float32 [m, H, W, C] and the teacher's
    top-1 on them int64 [m] (no query: the stored answers)."""
    n = len(transfer.images)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, AGREEMENT_IMAGES), replace=False))
    return transfer.images[rows], transfer.targets[rows].argmax(axis=1)


def measure_variant(target: str, name: str, version_dir: str, x_eval: np.ndarray,
                    y_eval: np.ndarray | None, teacher_top1: np.ndarray | None,
                    dataset: data_lib.Dataset, progress: bool,
                    agreement: tuple[np.ndarray, np.ndarray]) -> dict:
    """One served student variant's figures over gRPC: test accuracy (labelled images), fidelity
    (agreement with ``teacher_top1``), agreement with the teacher's stored answers on
    ``agreement`` (images, top-1: :func:`agreement_sample`), validation accuracy; size,
    parameters (the in-process CPU latency is :func:`evaluate_students`', all variants interleaved)."""
    with client_lib.connect(target, name, role="student",
                            version=int(os.path.basename(version_dir))) as student:
        top1 = client_lib.top1(student, x_eval, progress) if len(x_eval) else None
        return {
            "served_agreement": float(np.mean(client_lib.top1(student, agreement[0]) ==
                                              agreement[1])),
            "accuracy": (None if top1 is None or y_eval is None
                         else float(np.mean(top1 == y_eval))),
            "fidelity": (None if top1 is None or teacher_top1 is None
                         else float(np.mean(top1 == teacher_top1))),
            "validation_accuracy": (None if dataset.x_val is None else client_lib.accuracy(
                student, dataset.x_val, dataset.y_val)),
            "export_dir": fs.abspath(version_dir),
            "parameters": export.saved_model_parameters(version_dir),
            "saved_model_bytes": export.saved_model_bytes(version_dir),
        }


def evaluate_students(config: DistillConfig, dataset: data_lib.Dataset,
                      variant_dirs: dict[str, str], transfer: methods.TransferSet,
                      x_eval: np.ndarray, y_eval: np.ndarray | None,
                      teacher_top1: np.ndarray | None, timer: StageTimer, report: Report) -> None:
    """Serves every exported variant and measures it over gRPC (:func:`measure_variant`; latency
    on the transfer set's first images, every variant's calls interleaved: :func:`cpu_latencies_ms`;
    agreement on :func:`agreement_sample`)."""
    names = {v: export.FORMATS[v].servable_name for v in variant_dirs}
    agreement = agreement_sample(transfer, config.seed)
    with timer("evaluate_student"):
        served = {names[v]: os.path.dirname(d) for v, d in variant_dirs.items()}
        with teacher_setup.serve(served) as target:
            variants = {v: measure_variant(target, names[v], d, x_eval, y_eval, teacher_top1,
                                           dataset, config.verbose == 1, agreement)
                        for v, d in variant_dirs.items()}
        for v, latency in cpu_latencies_ms(variant_dirs, transfer.images[:64]).items():
            variants[v]["cpu_latency_ms"] = latency
    base = variants["float32"]
    for figures in variants.values():
        figures["accuracy_change"] = (None if figures["accuracy"] is None else
                                      round(figures["accuracy"] - base["accuracy"], 4))
        figures["bytes_ratio"] = round(figures["saved_model_bytes"] / base["saved_model_bytes"], 3)
    report.update(student_accuracy=base["accuracy"], student_fidelity=base["fidelity"],
                  student_validation_accuracy=base["validation_accuracy"],
                  student_served_agreement=base["served_agreement"], student_variants=variants)


SERVED_AGREEMENT_FLOOR = 0.5
"""A run fails when its served float32 student agrees with the teacher on transfer-set images less
than this fraction of its training agreement. A sound export loses little (inference normalizes
and regularizes less than training: the served figure is usually the higher); a broken one
(BatchNorm statistics left at their initial values, weights lost) falls to about chance
(0.1-0.2 of training agreement in the cases seen). Half leaves room for the first and none for
the second."""


CHECKED_ABOVE_CHANCE = 0.3
"""The check applies only to a student whose training agreement exceeds chance (1/K) by at least
this much (40% for 10 classes): below it, an undertrained student (a few steps of a test run) and a
broken export cannot be told apart, and the check records ``passed: null``."""


def check_served_agreement(config: DistillConfig, variant_dirs: dict[str, str], num_classes: int,
                           report: Report) -> None:
    """Fails the run, after recording both figures in ``report.json``, when the exported student
    agrees with the teacher far below what it did in training (:data:`SERVED_AGREEMENT_FLOOR`;
    for a student that learnt something, :data:`CHECKED_ABOVE_CHANCE`).

    Both figures are on transfer-set images, the same distribution, so the check isolates what
    exporting and inference change; held-out fidelity (``student_fidelity``) is recorded beside
    it but not checked, since for zero-shot methods (synthetic transfer sets) it is legitimately
    far below training agreement. On failure the exported versions are set aside
    (``<version>.rejected``: TF Serving loads only numeric directories), so that no server or
    ``tfkd-deploy`` picks them up.

    Raises:
      tfkd.errors.StudentError: one line with both figures and the likely causes
        (:func:`likely_causes`: BatchNorm statistics named only for a student with BatchNorm).
    """
    trained, served = report.student_training_agreement, report.student_served_agreement
    measurable = (trained is not None and served is not None
                  and trained - 1 / num_classes >= CHECKED_ABOVE_CHANCE)
    passed = served >= SERVED_AGREEMENT_FLOOR * trained if measurable else None
    report.student_check = {"training_agreement": trained, "served_agreement": served,
                            "held_out_fidelity": report.student_fidelity,
                            "floor": SERVED_AGREEMENT_FLOOR, "passed": passed}
    if passed is not False:
        return
    causes = likely_causes(config, variant_dirs["float32"])
    rejected = [fs.reject_version(d) for d in variant_dirs.values()]
    report.student_check["rejected_exports"] = rejected
    report.write(os.path.join(config.workdir, "report.json"))
    raise errors.StudentError(
        f"the exported student agrees with the teacher on {served:.1%} of transfer-set images, "
        f"against {trained:.1%} in training (below {SERVED_AGREEMENT_FLOOR:g}x): likely "
        f"{causes}; the export was set aside as {', '.join(rejected)}")


def likely_causes(config: DistillConfig, version_dir: str) -> str:
    """What may make the exported student (``version_dir``, a SavedModel) answer far from its
    training, in words: BatchNorm statistics only for a student that has BatchNorm layers
    (:func:`has_batchnorm`), averaged weights only with ``student.ema_momentum``, then the causes
    any student may have."""
    causes = []
    if has_batchnorm(version_dir):
        causes.append("BatchNormalization statistics that do not match the trained weights (" + (
            "student.batchnorm_images=0: not re-estimated" if config.student.batchnorm_images == 0
            else "a layer that keeps its own") + ")")
    if config.student.ema_momentum > 0:
        causes.append(f"averaged weights (student.ema_momentum={config.student.ema_momentum:g}) "
                      "far from the trained ones")
    causes.append("a student whose training and inference paths differ (dropout, a layer that "
                  "acts on training=True)")
    return ", ".join(causes) + ", or a broken export"


def has_batchnorm(version_dir: str) -> bool:
    """Whether a SavedModel holds BatchNormalization moving statistics (variables named
    ``moving_mean`` or ``moving_variance``, as Keras' BatchNormalization names them); False for
    one without variables (a LiteRT version)."""
    index = os.path.join(version_dir, "variables", "variables.index")
    if not fs.exists(index):
        return False
    names = [name for name, _ in tf.train.list_variables(index[:-len(".index")])]
    return any(part in ("moving_mean", "moving_variance") for n in names for part in n.split("/"))


def cpu_latency_ms(version_dir: str, images: np.ndarray, batch_sizes=(1, 64),
                   repeats: int = 30) -> dict[str, float]:
    """Median in-process CPU latency (ms) of a version's ``serving_default``, loaded by its
    registered format's loader (:func:`tfkd.export.load_version`: a SavedModel, a LiteRT model, or
    a registered format's), per batch size: {"batch_<b>": ms} (:func:`cpu_latencies_ms` of one).

    Raises:
      tfkd.errors.ConfigError: ``version_dir`` holds no registered format's marker file.
    """
    return cpu_latencies_ms({"": version_dir}, images, batch_sizes, repeats)[""]


def cpu_latencies_ms(version_dirs: dict[str, str], images: np.ndarray, batch_sizes=(1, 64),
                     repeats: int = 30) -> dict[str, dict[str, float]]:
    """Median in-process CPU latency (ms) of several versions' ``serving_default``, their calls
    interleaved: per batch size, ``repeats`` rounds of one call of each version in turn (after one
    warm-up call each), so that a shared machine's load, which drifts over seconds, falls on every
    version alike and their medians compare (timed one after another, the same student's medians
    differed by up to 1.2x on the development machine: ``benchmarks/reports/issue38/``).

    Args:
      version_dirs: name -> version directory (each loaded by its format's loader).
      images: float32 [n, H, W, C] in [0, 1], n >= the largest batch size.
      batch_sizes: the batch sizes timed; repeats: calls of each version per batch size.

    Returns:
      name -> {"batch_<b>": median ms, rounded to 1 us}.

    Raises:
      tfkd.errors.ConfigError: a directory holds no registered format's marker file.
    """
    fns = {name: export.load_version(d).signatures[export.SIGNATURE_KEY]
           for name, d in version_dirs.items()}
    result: dict = {name: {} for name in fns}
    for b in batch_sizes:
        batch = tf.constant(images[:b])
        times: dict = {name: [] for name in fns}
        for fn in fns.values():  # Warm-up.
            fn(images=batch)
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(images=batch)[export.PROBABILITIES_KEY].numpy()
                times[name].append((time.perf_counter() - start) * 1000)
        for name, t in times.items():
            result[name][f"batch_{b}"] = round(float(np.median(t)), 3)
    return result
