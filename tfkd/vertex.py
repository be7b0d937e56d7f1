"""Vertex AI custom-training conventions: where a run's outputs go besides its work dir.

Vertex AI sets, for a custom training job, ``AIP_MODEL_DIR`` (where the job must leave the model
it uploads: a SavedModel at the directory's root for the prebuilt TensorFlow serving container),
``AIP_CHECKPOINT_DIR`` (checkpoints, kept across preemptions and retries) and
``AIP_TENSORBOARD_LOG_DIR`` (what a Vertex TensorBoard instance reads), usually ``gs://`` URIs;
``TF_CONFIG`` describes a multi-worker cluster as it does anywhere (:mod:`tfkd.teacher.cluster`). Every
path is written through ``tf.io.gfile`` (:mod:`tfkd.fs`), so any of them can be ``gs://``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from tfkd import errors

ENVIRONMENT = {"model_dir": "AIP_MODEL_DIR", "checkpoint_dir": "AIP_CHECKPOINT_DIR",
               "tensorboard_dir": "AIP_TENSORBOARD_LOG_DIR"}


@dataclasses.dataclass(frozen=True)
class OutputDirs:
    """Where a run writes besides its work dir (None: only in the work dir).

    Attributes:
      model_dir: a copy of the exported float32 student as a plain SavedModel at the directory's
        root (no version sub-directory: Vertex's prebuilt serving container loads it there), the
        compressed variants under ``variants/<variant>/`` and the model card; written by the chief
        once the student is exported and measured.
      checkpoint_dir: the student's training state (Keras ``BackupAndRestore``, or the custom
        loop's ``tf.train.CheckpointManager``); a rerun with the same directory resumes from it.
      tensorboard_dir: TensorBoard event files (student losses, validation accuracy, the
        transfer set's image grids); default ``<workdir>/tensorboard``.
    """

    model_dir: str | None = None
    checkpoint_dir: str | None = None
    tensorboard_dir: str | None = None

    def validate(self) -> None:
        """Raises ConfigError naming the first directory given as an empty path
        (``outputs.<field>``; None, not "", means the work dir only)."""
        errors.check_settings("outputs.", self, [
            (name, value is None or bool(value), "None or a directory path")
            for name, value in dataclasses.asdict(self).items()])

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "OutputDirs":
        """The directories Vertex AI names in ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
        ``AIP_TENSORBOARD_LOG_DIR`` (unset or empty: None)."""
        return cls(**{field: environ.get(name) or None for field, name in ENVIRONMENT.items()})

    def to_dict(self) -> dict:
        """The set directories, field -> path (for the report)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}
