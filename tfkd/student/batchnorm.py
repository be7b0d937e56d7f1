"""Precise BatchNorm: after training, the moving statistics of every BatchNormalization layer of
the student are re-estimated over its own training images (:func:`reestimate_batchnorm`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from absl import logging


def batchnorm_layers(model: keras.Layer) -> list:
    """Every ``keras.layers.BatchNormalization`` of ``model``, nested models included (a
    ``keras.applications`` backbone inside a functional model, a user's subclassed model)."""
    found = []

    def walk(layer, seen):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for child in getattr(layer, "_layers", None) or getattr(layer, "layers", None) or ():
            walk(child, seen)

    walk(model, set())
    return found


BATCHNORM_BATCH = 256
"""Images per forward pass when :func:`reestimate_batchnorm` measures batch statistics."""

BATCHNORM_MIN_IMAGES = 64
"""The fewest images ``StudentConfig.batchnorm_images`` may name (0 aside): the student's default
batch, the batch its statistics were measured on in training. On a BatchNorm student of two
convolutions (``tests/test_ema_and_batchnorm.py``), 64 images gave 98% of the inference agreement
256 give, 8 images 94%, one image 56%."""


def reestimate_batchnorm(model: keras.Model, images: np.ndarray, max_images: int = 8192,
                         batch_size: int = BATCHNORM_BATCH, seed: int = 0) -> int:
    """Sets every BatchNormalization layer's moving mean and variance to the average of its batch
    statistics over ``images``, the student's own training inputs, with the trained weights fixed.

    This is "precise BatchNorm" (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, §3; the
    same rule as ``torch.optim.swa_utils.update_bn``): the moving statistics are reset to (0, 1)
    and each layer's momentum is set, for the i-th batch (1-based), to (i - 1) / i, so that after
    the last batch the moving mean and variance are the plain means of the per-batch statistics.
    Inference then normalizes as training did, however few steps training took; without it, a
    momentum of 0.999 (``keras.applications``) leaves the statistics mostly at their initial
    values after a few hundred steps and the exported student answers one class for every image.

    Args:
      model: a built Keras model; its trainable weights are not changed (forward passes only).
      images: float32 [n, H, W, C] in [0, 1] (the transfer set; no augmentation).
      max_images: at most this many images, a seeded uniform draw (all when n is smaller).
      batch_size: images per forward pass (the last partial batch is dropped unless it is the only one).
      seed: the draw's seed.

    Returns:
      the number of BatchNormalization layers re-estimated (0: the model has none; nothing ran).

    Raises:
      ValueError: ``images`` is empty, or ``max_images`` < 1 (the caller's bug: the transfer set
        holds a global batch, and ``student.batchnorm_images`` 0 skips this call).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if len(images) == 0 or max_images < 1:
        raise ValueError(  # Programming error: callers skip batchnorm_images=0 and empty sets.
            f"images: expected at least one image (max_images={max_images}), got "
                         f"{len(images)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), min(len(images), max_images), replace=False))
    batches = max(1, len(chosen) // batch_size)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    try:
        for i in range(batches):
            for layer in layers:
                layer.momentum = i / (i + 1)  # The running mean of batch statistics.
            rows = chosen[i * batch_size:(i + 1) * batch_size] if batches > 1 else chosen
            model(tf.constant(images[rows]), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    logging.info("Student: BatchNorm statistics of %d layers re-estimated over %d images",
                 len(layers), batches * batch_size if batches > 1 else len(chosen))
    return len(layers)
