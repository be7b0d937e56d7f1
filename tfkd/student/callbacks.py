"""Keras callbacks of the student's ``fit``: validation accuracy after each epoch
(:class:`ValidationAccuracy`) and the selected epoch's weights (:class:`KeepBest`)."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import fs


class ValidationAccuracy(keras.callbacks.Callback):
    """Logs top-1 accuracy on the validation split after each epoch, to TensorBoard
    (``validation_accuracy``, and ``learning_rate``) and to the Keras logs (``val_accuracy``).

    For monitoring, and for :class:`KeepBest` (``select='validation'``), which reads its
    ``val_accuracy`` in the same epoch; it never reads the test split. Images
    float32 [n, H, W, C] in [0, 1], labels int [n]. ``every``: measure after every this many epochs
    (and the last): a long run of short epochs (a baseline on N images) otherwise spends more time
    here than training.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, log_dir: str, every: int = 1):
        super().__init__()
        self.images, self.labels = images, np.asarray(labels).reshape(-1)
        self.writer = tf.summary.create_file_writer(log_dir)
        self.every = max(1, int(every))

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        logits = self.model.predict(self.images, batch_size=1024, verbose=0)
        accuracy = float(np.mean(logits.argmax(axis=1) == self.labels))
        with self.writer.as_default():
            tf.summary.scalar("validation_accuracy", accuracy, step=epoch)
            lr = self.model.optimizer.learning_rate
            tf.summary.scalar("learning_rate", float(np.asarray(lr)), step=epoch)
        self.writer.flush()
        if logs is not None:
            logs["val_accuracy"] = accuracy


class KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best selection accuracy, for ``select='validation'``.

    Reads ``logs[monitor]`` (top-1 accuracy in [0, 1], written earlier in the same epoch by
    :class:`ValidationAccuracy`; an epoch without it is skipped). The best weights go to ``path``
    (an ``.npz`` of the model's weights, written atomically) and the best epoch and score to
    ``<path>.json``, so a resumed run (``BackupAndRestore``) keeps comparing with the best of the
    epochs before it was killed: ``keras.callbacks.ModelCheckpoint(save_best_only=True)`` starts
    from -inf again after a restart and would overwrite a better epoch.

    The selection split is the caller's: the validation split, or a held-out slice of the
    transfer set (never the test split; ``tests/test_selection.py`` fails when any test image is
    scored).
    """

    def __init__(self, path: str, monitor: str = "val_accuracy"):
        super().__init__()
        self.path, self.monitor = path, monitor
        self.best_epoch, self.best, self.scores = None, -np.inf, {}
        if fs.exists(path + ".json") and fs.exists(path):
            saved = json.loads(fs.read_text(path + ".json"))
            self.best_epoch, self.best = int(saved["epoch"]), float(saved["score"])
            self.scores = {int(k): v for k, v in saved.get("scores", {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is None:
            return
        self.scores[epoch + 1] = float(score)
        if score > self.best:
            self.best_epoch, self.best = epoch + 1, float(score)
            fs.makedirs(os.path.dirname(self.path) or ".")
            fs.save_npz(self.path, **{f"w{i}": w for i, w in enumerate(self.model.get_weights())})
        fs.write_atomic(self.path + ".json", json.dumps(
            {"epoch": self.best_epoch, "score": self.best, "scores": self.scores}))

    def restore(self, model: keras.Model) -> int | None:
        """Loads the best epoch's weights into ``model``; returns that epoch (1-based), or None
        when no epoch was scored (the final weights stay)."""
        if self.best_epoch is None:
            return None
        with fs.load_npz(self.path) as f:
            model.set_weights([f[f"w{i}"] for i in range(len(f.files))])
        logging.info("Student: selected epoch %d (%s %.4f; last epoch %s)", self.best_epoch,
                     self.monitor, self.best, self.scores.get(max(self.scores)))
        return self.best_epoch
