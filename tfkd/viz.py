"""Pictures people would rather look at than read: PNG grids of images per class."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfkd import fs


def image_grid(images: np.ndarray, classes: np.ndarray, num_classes: int, per_class: int = 10,
               pad: int = 1) -> np.ndarray:
    """Tiles images into a grid with one row per class and up to ``per_class`` columns.

    Args:
      images: float32 [n, H, W, C] in [0, 1].
      classes: int [n], the row each image goes to (e.g. the teacher's argmax).
      num_classes: number of rows.
      per_class: columns.
      pad: pixels of white between tiles.

    Returns:
      uint8 [rows * (H + pad) + pad, cols * (W + pad) + pad, C] image; empty tiles stay white.
    """
    images = np.asarray(images, np.float32)
    classes = np.asarray(classes).reshape(-1)
    n, h, w, c = images.shape
    grid = np.ones((num_classes * (h + pad) + pad, per_class * (w + pad) + pad, c), np.float32)
    for k in range(num_classes):
        chosen = np.flatnonzero(classes == k)[:per_class]
        for col, i in enumerate(chosen):
            y, x = pad + k * (h + pad), pad + col * (w + pad)
            grid[y:y + h, x:x + w] = images[i]
    return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


def write_png(path: str, image: np.ndarray, scale: int = 2) -> str:
    """Writes a uint8 [H, W, C] image (C in {1, 3}) to ``path``, upscaled by ``scale``; returns path."""
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    fs.makedirs(os.path.dirname(fs.abspath(path)))
    tf.io.write_file(path, tf.io.encode_png(image))
    return path
