"""Random directions shared by the zeroth-order searches (black-box ZSKD's gradient estimate,
ZSDB3KD's probes): Gaussian noise on a coarse grid (AutoZOOM, Tu et al., AAAI 2019, §3.3)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def coarse_directions(rng: np.random.Generator, shape: tuple, image_shape: tuple,
                      resolution: int) -> np.ndarray:
    """Gaussian directions float32 [*shape, H, W, C]: N(0, 1) on a resolution x resolution grid per
    channel, bilinearly upsampled to H x W (the identity when resolution = H = W)."""
    h, w, c = image_shape
    coarse = rng.standard_normal((int(np.prod(shape)), resolution, resolution, c), np.float32)
    if (resolution, resolution) != (h, w):
        coarse = tf.image.resize(coarse, (h, w), method="bilinear").numpy()
    return coarse.reshape(*shape, h, w, c)
