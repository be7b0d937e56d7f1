"""Augmented views of Data Impressions, each labelled by the teacher (the reference's
``data_augmentation.py``, ``zskd.views``)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd.methods.zskd import impressions


def augmented_views(images: np.ndarray, config: impressions.ImpressionConfig, seed: int,
                    batch_size: int = 4096) -> np.ndarray:
    """``config.views`` augmented views of every impression, view-major: float32
    [views x n, H, W, C] in [0, 1], row v·n + i a view of image i.

    ``mixup`` views: image i mixed with a random other, λ ~ U(0, 1) (FS-BBT's MixUp, §3.2, on
    impressions). ``affine`` views: one projective transform (bilinear, edges filled with 0): a rotation up to
    ± ``view_rotation`` degrees, a central zoom keeping a fraction in [``view_scale``, 1] of the
    side, a shift up to ± ``view_shift`` of the side, then a left-right mirror with probability
    1/2; the draws of view v come from (seed, v) alone. The reference (vcl-iisc/ZSKD
    ``model_training/data_augmentation.py``) makes a fixed grid of such copies (3 zooms, 4 shifts,
    10 rotations in ±90°, 3 flips and their pairs, about 100 per impression); tfkd draws
    ``views`` random ones. Their targets are the teacher's answers on them, never the impression's
    stored target (``tests/test_zskd.py`` checks).
    """
    images = np.asarray(images, np.float32)
    n, (h, w) = len(images), images.shape[1:3]
    out = np.empty((config.views * n, *images.shape[1:]), np.float32)
    for v in range(config.views):
        rng = np.random.default_rng([seed, 104729, v])
        if config.view_kind == "mixup":  # Each impression with a random other, λ ~ U(0, 1).
            lam = rng.random(n).astype(np.float32).reshape(-1, *[1] * (images.ndim - 1))
            out[v * n:(v + 1) * n] = lam * images + (1 - lam) * images[rng.permutation(n)]
            continue
        theta = np.deg2rad(rng.uniform(-config.view_rotation, config.view_rotation, n))
        zoom = rng.uniform(config.view_scale, 1.0, n)
        dx, dy = (rng.uniform(-config.view_shift, config.view_shift, (2, n))
                  * np.array([[w], [h]]))
        mirror = rng.random(n) < 0.5
        # Output pixel p samples the input at c + zoom · R(theta) (p - c - d).
        cos, sin = zoom * np.cos(theta), zoom * np.sin(theta)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        px, py = cx + dx, cy + dy
        transforms = np.stack([cos, -sin, cx - cos * px + sin * py,
                               sin, cos, cy - sin * px - cos * py,
                               np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            view = tf.raw_ops.ImageProjectiveTransformV3(
                images=images[part], transforms=transforms[part], output_shape=[h, w],
                fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT").numpy()
            view[mirror[part]] = view[mirror[part], :, ::-1]
            out[v * n + start: v * n + start + len(view)] = np.clip(view, 0.0, 1.0)
    return out
