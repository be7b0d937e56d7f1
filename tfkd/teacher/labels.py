"""What a teacher's answer means, checked: probabilities, logits or class ids turned into soft labels
(:func:`to_soft_labels`), and the check every stored answer passes (:func:`check_soft_labels`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd import errors

OUTPUT_KINDS = ("probabilities", "logits", "classes")
SUM_TOLERANCE = 1e-3
"""How far a row of float probabilities may sum from 1 (float rounding)."""
QUANTIZATION_STEP = 1 / 256
"""The step of an 8-bit probability output (TFLite's int8 and uint8 softmax, tfkd's int8 student:
scale 1/256). Answers all on this grid may sum as far as K steps from 1, at most
:data:`MAX_QUANTIZED_SUM_TOLERANCE` (each of K values is off by up to a step)."""
MAX_QUANTIZED_SUM_TOLERANCE = 0.5


def to_soft_labels(raw: np.ndarray, output_kind: str, num_classes: int | None,
                   teacher: str = "teacher", output_key: str = "output") -> np.ndarray:
    """Turns a teacher answer into soft labels, checking the contract.

    Args:
      raw: probabilities float [b, K] (values >= -1e-6, rows summing to 1 within
        :data:`SUM_TOLERANCE`; an 8-bit output, every value a multiple of
        :data:`QUANTIZATION_STEP`, within K steps, at most :data:`MAX_QUANTIZED_SUM_TOLERANCE`),
        logits float [b, K], or class ids int [b] (or [b, 1]).
      output_kind: one of ``OUTPUT_KINDS``.
      num_classes: K; required for class ids.
      teacher, output_key: named in error messages.

    Returns:
      float32 [b, K] rows summing to 1 (probabilities renormalised; softmax of logits; one-hot of
      class ids).

    Raises:
      TeacherError: wrong shape, non-finite values, probabilities off the simplex, or a class id out
        of range.
    """
    where = f"teacher {teacher!r}, output {output_key!r} ({output_kind})"
    if output_kind not in OUTPUT_KINDS:
        raise errors.ConfigError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
    raw = np.asarray(raw)
    if output_kind == "classes":
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
            raise errors.TeacherError(f"{where}: expected integer class ids [batch], got "
                                      f"{raw.dtype} {list(raw.shape)}")
        if num_classes is None:
            raise errors.TeacherError(f"{where}: the number of classes is unknown; give "
                                      "num_classes")
        if raw.size and (raw.min() < 0 or raw.max() >= num_classes):
            raise errors.TeacherError(f"{where}: class id out of range [0, {num_classes}): min "
                                      f"{raw.min()}, max {raw.max()}")
        return np.eye(num_classes, dtype=np.float32)[raw]
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise errors.TeacherError(f"{where}: expected numbers, got {raw.dtype} values (is it the "
                                  "right output? teacher.output_key)")
    raw = raw.astype(np.float32)
    if raw.ndim != 2 or (num_classes is not None and raw.shape[1] != num_classes):
        raise errors.TeacherError(f"{where}: expected shape [batch, {num_classes}], got "
                                  f"{list(raw.shape)}")
    if not np.all(np.isfinite(raw)):
        raise errors.TeacherError(f"{where}: {int(np.sum(~np.isfinite(raw)))} non-finite values "
                                  "(NaN/inf)")
    if output_kind == "logits":
        return tf.nn.softmax(raw, axis=-1).numpy()
    sums = raw.sum(axis=1)
    tolerance = _sum_tolerance(raw)
    if raw.size and (raw.min() < -1e-6 or np.max(np.abs(sums - 1.0)) > tolerance):
        raise errors.TeacherError(f"{where}: not probabilities (min {raw.min():.4g}, row sums in "
                                  f"[{sums.min():.4g}, {sums.max():.4g}], expected 1 within "
                                  f"{tolerance:.3g}); are they logits? (teacher.output_kind=logits)")
    clipped = np.clip(raw, 0.0, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def _sum_tolerance(raw: np.ndarray) -> float:
    """How far rows of ``raw`` float32 [b, K] may sum from 1: :data:`SUM_TOLERANCE`, or when every
    value is on an 8-bit output's grid (a multiple of :data:`QUANTIZATION_STEP`, as an int8
    teacher answers), K steps, at most :data:`MAX_QUANTIZED_SUM_TOLERANCE`."""
    steps = raw.astype(np.float64) / QUANTIZATION_STEP  # Exact: the step is a power of 2.
    if np.all(steps == np.round(steps)):
        return min(MAX_QUANTIZED_SUM_TOLERANCE, raw.shape[1] * QUANTIZATION_STEP)
    return SUM_TOLERANCE


def check_soft_labels(soft_labels: np.ndarray, name: str, tolerance: float = 1e-3) -> None:
    """Raises ConfigError (a ValueError, naming ``name``) unless ``soft_labels`` float [n, K] are
    distributions: every value finite and in [0, 1], every row summing to 1 within ``tolerance``. (A NaN row
    passes ``abs(sum - 1) > tol`` unnoticed, since every comparison with NaN is false.)"""
    values = np.asarray(soft_labels)
    finite = np.isfinite(values)
    if not finite.all():
        rows = int(np.sum(~finite.all(axis=-1)))
        raise errors.ConfigError(f"{name}: expected finite probabilities, got {rows} rows with NaN or "
                                 "infinite values")
    if values.size and (values.min() < 0 or values.max() > 1 + tolerance):
        raise errors.ConfigError(f"{name}: expected probabilities in [0, 1], got values in "
                                 f"[{values.min():.4g}, {values.max():.4g}]")
    sums = values.sum(axis=-1)
    if values.size and np.any(np.abs(sums - 1) > tolerance):
        raise errors.ConfigError(f"{name}: expected rows summing to 1, got sums in "
                                 f"[{sums.min():.4f}, {sums.max():.4f}]")
