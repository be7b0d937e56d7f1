"""What a run hands back: the exported student variants and serving configs, image grids,
TensorBoard summaries, the model card and ``report.json``."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tfkd import errors
from tfkd import export
from tfkd import fs
from tfkd import methods
from tfkd import model_card
from tfkd import serving
from tfkd import viz
from tfkd.config import DistillConfig
from tfkd.export import litert
from tfkd.report import Report
from tfkd.report import StageTimer
from tfkd.student import models


def export_student(config: DistillConfig, student: keras.Model, images: np.ndarray,
                   teacher_base: str | None, class_names: tuple[str, ...], timer: StageTimer,
                   report: Report) -> dict[str, str]:
    """Exports the student and its compressed variants (TF Serving layout, warmup requests of
    ``images``' first 8, ``serving_default`` and ``classify`` with ``class_names`` as its label
    vocabulary; ``int8`` calibrated on a seeded draw of ``images``, float32 [n, H, W, C]: the
    transfer set) and writes the serving configs. Returns variant -> version directory."""
    draw = np.random.default_rng(config.seed).permutation(len(images))[:litert.CALIBRATION_IMAGES]
    calibration = images[np.sort(draw)]
    export_root = os.path.join(config.workdir, "export")
    broken = [w.path for w in student.weights if not np.all(np.isfinite(w.numpy()))]
    if broken:  # Never a new version, never a canary: a NaN student answers class 0 for all.
        raise errors.StudentError(
            f"the student's weights are not finite ({len(broken)} variables, e.g. {broken[0]}): "
            "likely a training state restored from a run whose loss diverged; nothing was "
            f"exported (remove the student_backup-* directory of {config.workdir} to train again)")
    with timer("export"):
        variant_dirs = {variant: export.export_classifier(
            student, os.path.join(export_root, export.FORMATS[variant].servable_name),
            warmup_images=images[:8], variant=variant, class_names=class_names,
            calibration_images=calibration)
            for variant in ("float32", *config.compress)}
    student_dir = variant_dirs["float32"]
    version = int(os.path.basename(student_dir))
    report.student_export_dir = fs.abspath(student_dir)
    report.serving_configs = serving.config.write_serving_configs(
        os.path.join(config.workdir, "serving"), teacher_base, os.path.dirname(student_dir),
        stable=max(1, version - 1), canary=version)
    return variant_dirs


def finish(config: DistillConfig, student: keras.Model, variant_dirs: dict[str, str],
           teacher_base: str | None, timer: StageTimer, report: Report) -> Report:
    """Sizes of both models, seconds per stage, the model card (:mod:`tfkd.model_card`, in
    ``export/``); writes ``report.json``."""
    report.student_parameters = models.count_parameters(student)
    report.student_saved_model_bytes = export.saved_model_bytes(variant_dirs["float32"])
    teacher_dir = export.latest_version_dir(teacher_base) if teacher_base else None
    if teacher_dir:  # A remote black box's size is not ours to know.
        report.teacher_parameters = export.saved_model_parameters(teacher_dir)
        report.teacher_saved_model_bytes = export.saved_model_bytes(teacher_dir)
    report.update(stage_seconds=timer.seconds,
                  total_seconds=round(sum(timer.seconds.values()), 2))
    report.model_card = model_card.write(report.to_dict(), os.path.join(config.workdir, "export"))
    report.output_dirs = config.outputs.to_dict() or None
    if config.outputs.model_dir:
        copy_to_model_dir(config.outputs.model_dir, variant_dirs, report.model_card)
    report.write(os.path.join(config.workdir, "report.json"))
    return report


def write_grids(transfer: methods.TransferSet, workdir: str) -> dict[str, str]:
    """PNG grids (one row per teacher class) of the transfer set's images, one per source."""
    paths = {}
    classes = transfer.targets.argmax(axis=1)
    for i, name in enumerate(transfer.source_names):
        mask = transfer.source == i
        grid = viz.image_grid(transfer.images[mask], classes[mask], transfer.targets.shape[1])
        paths[name] = viz.write_png(os.path.join(workdir, f"grid_{name}.png"), grid)
    return paths


def tensorboard_root(config: DistillConfig) -> str:
    """Where the run's TensorBoard events go: ``outputs.tensorboard_dir``, else
    ``<workdir>/tensorboard``."""
    return config.outputs.tensorboard_dir or os.path.join(config.workdir, "tensorboard")


MODEL_DIR_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets", "assets.extra",
                     litert.FILE, "variants", "model_card.json", "model_card.md")
"""What tfkd writes at a model dir's root: of these, what a run did not write is an earlier
student's, and is removed (:func:`copy_to_model_dir`)."""


def copy_to_model_dir(model_dir: str, variant_dirs: dict[str, str], card: dict[str, str]) -> None:
    """Copies the float32 student (a plain SavedModel at ``model_dir``'s root), its compressed
    variants (``variants/<variant>/``) and its model card into ``model_dir`` (Vertex AI's
    ``AIP_MODEL_DIR``; any ``tf.io.gfile`` file system).

    A reused ``model_dir`` keeps no file of an earlier student: once the new files are in place,
    every file under :data:`MODEL_DIR_ENTRIES` that this copy did not write (a variant this run
    does not export, a SavedModel file the new student has not) is removed. Other files are
    left."""
    written = set()
    for variant, version_dir in variant_dirs.items():
        where = export.FORMATS[variant].model_dir_path
        target = os.path.join(model_dir, where) if where else model_dir
        fs.copy_tree(version_dir, target)
        written.update(os.path.join(target, os.path.relpath(p, version_dir))
                       for p in fs.walk_files(version_dir))
    for path in card.values():
        written.add(fs.write_atomic(os.path.join(model_dir, os.path.basename(path)),
                                    fs.read_bytes(path)))
    _remove_unwritten(model_dir, [n for n in fs.listdir(model_dir) if n in MODEL_DIR_ENTRIES],
                      written)


def _remove_unwritten(directory: str, names: list[str], written: set[str]) -> None:
    """Removes, of the entries ``names`` of ``directory``, the files not in ``written``; an entry
    with nothing written under it goes whole."""
    for name in names:
        path = os.path.join(directory, name)
        if any(p.startswith(path + "/") for p in written):
            _remove_unwritten(path, fs.listdir(path), written)
        elif path not in written:
            (fs.rmtree if fs.isdir(path) else fs.remove)(path)


def write_tensorboard_grids(transfer: methods.TransferSet, log_dir: str) -> None:
    """TensorBoard image summaries of the per-source grids (one row per teacher class)."""
    classes = transfer.targets.argmax(axis=1)
    with tf.summary.create_file_writer(log_dir).as_default():
        for i, name in enumerate(transfer.source_names):
            mask = transfer.source == i
            grid = viz.image_grid(transfer.images[mask], classes[mask], transfer.targets.shape[1])
            tf.summary.image(name, grid[None], step=0)


def code_commit() -> str | None:
    """The git commit of the tfkd checkout that runs (``+dirty`` with uncommitted changes), or None
    outside a git checkout: recorded in ``report.json`` so that a figure can be traced to code."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tfkd"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")
