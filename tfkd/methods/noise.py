"""Noise shared by the methods: random directions of the zeroth-order searches (black-box ZSKD's
gradient estimate, ZSDB3KD's probes; Gaussian noise on a coarse grid, AutoZOOM, Tu et al., AAAI
2019, §3.3) and the noise images ZSDB3KD starts from and ``prior_kd`` learns on."""

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


_SMOOTH_SIZES = (3, 4, 5, 7)  # smooth noise: each sample's grid, bilinearly upsampled.


def uniform_noise(n: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """The reference's noise: clip((U[0,1] + 0.2)·s1 + N(0,1)·s2, 0, 1), s1, s2 ~ U[0,1] per
    sample. float32 [n, *shape]."""
    s1, s2 = rng.uniform(size=(2, n) + (1,) * len(shape))
    return np.clip((rng.uniform(size=(n, *shape)) + 0.2) * s1
                   + rng.standard_normal((n, *shape)) * s2, 0, 1).astype(np.float32)


def smooth_noise(n: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise: per sample a grid of r x r x C values U[0,1]·s (r from 3, 4, 5, 7;
    s ~ U[0.3, 1.5]) bilinearly upsampled to ``shape`` (H, W, C), plus N(0,1)·σ per pixel
    (σ ~ U[0, 0.2]), clipped to [0, 1]. On the Fashion-MNIST LeNet-5 teacher it reaches every class
    (a 4x4 grid reached the rarest at 0.4% where the uniform noise gives 0.015%:
    benchmarks/reports/probes/zsdb3kd_prototype.txt). float32 [n, H, W, C]."""
    out = np.zeros((n, *shape), np.float32)
    sizes = rng.choice(_SMOOTH_SIZES, size=n)
    for r in np.unique(sizes):
        rows = np.flatnonzero(sizes == r)
        grid = rng.uniform(size=(len(rows), r, r, shape[2])) * rng.uniform(
            0.3, 1.5, size=(len(rows), 1, 1, 1))
        out[rows] = tf.image.resize(grid.astype(np.float32), shape[:2], method="bilinear").numpy()
    sigma = rng.uniform(0, 0.2, size=(n, 1, 1, 1))
    return np.clip(out + sigma * rng.standard_normal(out.shape), 0, 1).astype(np.float32)
