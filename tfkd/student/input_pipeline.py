"""The student's `tf.data` input pipeline: the transfer set shuffled and batched, augmented.

Training-time MixUp (Zhang et al. 2018; the FS-BBT code, α = 1) interpolates images *and their stored
soft labels*: it sends no new teacher queries. Rotation and shift augmentation is one fused projective
transform per batch (:func:`random_affine`) inside the `tf.data` pipeline, from stateless random ops
keyed by a per-batch seed (no per-image Python loop; the same seed gives the same student).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd.student.config import StudentConfig


def random_affine(images: tf.Tensor, max_degrees: float, max_shift: float,
                  seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random rotation (± max_degrees) and shift (± max_shift of H and W) of a batch, fused into one
    projective transform per image (one ``ImageProjectiveTransformV3`` call for the batch; bilinear,
    edges filled with the nearest pixel, as Keras' RandomRotation/RandomTranslation and the FS-BBT
    code's ImageDataGenerator).

    Args:
      images: float32 [b, H, W, C].
      seed: int32/int64 [2], a stateless seed (the same seed gives the same transforms); None uses
        TensorFlow's stateful random ops.

    Returns:
      float32 [b, H, W, C].
    """
    shape = tf.shape(images)
    b, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    if seed is None:
        draws = tf.random.uniform([3, b], -1.0, 1.0)
    else:
        draws = tf.random.stateless_uniform([3, b], seed, -1.0, 1.0)
    theta = draws[0] * (max_degrees * np.pi / 180.0)
    dx = draws[1] * max_shift * w
    dy = draws[2] * max_shift * h
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel (x, y) samples the input at R (x - dx, y - dy) about the image centre.
    x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
    y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, x_off - cos * dx + sin * dy,
                           sin, cos, y_off - sin * dx - cos * dy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")


def _augment_fn(config: StudentConfig):
    """Augmentation of one batch from stateless random ops keyed by the batch's own seed, so that
    the draws do not depend on which thread of a parallel ``map`` runs first (stateful random ops
    there made two identical runs train different students)."""
    alpha = float(config.mixup_alpha)

    def fn(batch, batch_seed):
        images, targets = batch
        seeds = tf.random.experimental.stateless_split(tf.stack([batch_seed, batch_seed // 7]), 2)
        if config.rotation_degrees or config.shift_fraction:
            images = random_affine(images, config.rotation_degrees, config.shift_fraction, seeds[0])
        if config.horizontal_flip:
            # Its own seed folded from the affine's, so the other draws stay as they were.
            flip_seed = tf.random.experimental.stateless_fold_in(seeds[0], 1)
            mirror = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], flip_seed) < 0.5
            images = tf.where(mirror, tf.reverse(images, [2]), images)
        if alpha > 0:
            # λ ~ Beta(α, α) per example, as a ratio of Gamma draws; partner = the batch reversed.
            b = tf.shape(images)[0]
            g = tf.random.stateless_gamma([2, b], seeds[1], alpha)
            lam = g[0] / (g[0] + g[1])
            lam_img = tf.reshape(lam, [-1, 1, 1, 1])
            lam_lab = tf.reshape(lam, [-1, 1])
            images = lam_img * images + (1.0 - lam_img) * tf.reverse(images, [0])
            targets = lam_lab * targets + (1.0 - lam_lab) * tf.reverse(targets, [0])
        return tf.clip_by_value(images, 0.0, 1.0), targets

    return fn


def training_dataset(images: np.ndarray, soft_labels: np.ndarray, config: StudentConfig,
                     global_batch_size: int, seed: int, repeat: bool = False) -> tf.data.Dataset:
    """Shuffled, augmented, MixUp-ed batches of (images float32 [b, H, W, C], soft labels [b, K]).

    The transfer set is held once as two tensors (cached in memory); what is shuffled is the row
    order, and each batch is one gather of its rows, so the pipeline does per-batch work only (an
    element-wise ``shuffle`` of 50,000 images copied every image through a 50,000-slot buffer each
    pass). Batches are prefetched (under a ``tf.distribute`` strategy the distributed iterator
    also prefetches each replica's share onto its device). Each pass reshuffles and draws new
    augmentation; the last partial batch is dropped so that every replica gets equal work (with
    ``repeat``, the passes form one endless stream and batches run across them). The same ``seed``
    gives the same batches and augmentation, whatever the parallelism of the pipeline. Without
    augmentation no per-batch map runs at all.
    """
    config.check_resolved("training_dataset", ("mixup_alpha", "rotation_degrees", "shift_fraction"))
    x = tf.constant(np.asarray(images, np.float32))
    y = tf.constant(np.asarray(soft_labels, np.float32))
    ds = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed,
                                                    reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(global_batch_size, drop_remainder=True)
    augmented = (config.rotation_degrees or config.shift_fraction or config.horizontal_flip
                 or config.mixup_alpha)
    if augmented:
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        augment = _augment_fn(config)
        ds = tf.data.Dataset.zip(ds, batch_seeds).map(
            lambda rows, s: augment((tf.gather(x, rows), tf.gather(y, rows)), s),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda rows: (tf.gather(x, rows), tf.gather(y, rows)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()  # Each worker of a cluster takes its share of every batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
