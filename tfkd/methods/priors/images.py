"""The images ``prior_kd`` shows the teacher: draws from noise priors (no real image), and mixes of
two of them. Every image is float32 [H, W, C] in [0, 1]; a transfer set is drawn in seeded chunks of
:data:`CHUNK` images so that a smaller plan is a prefix of a larger one (a query budget, a rerun)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd.methods import noise

PRIORS = ("smooth", "multiscale", "mix")
"""``PriorConfig.prior``'s choices (:func:`prior_images`)."""
AUGMENTS = ("none", "mixup", "cutmix")
"""``PriorConfig.augment``'s choices (:func:`mixed_pairs`)."""
CHUNK = 10_000
"""Images per seeded chunk of a transfer set (:func:`transfer_images`)."""
SCALES = 6
"""The multi-scale prior's scales: grids of H / 2^k for k = 0 ... SCALES - 1 (at least 1 x 1)."""


def multiscale_noise(n: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """DIP-KD's multi-scale noise prior (arXiv 2604.25794, §3.1): per sample, uniform noise at
    :data:`SCALES` scales (grids of H / 2^k x W / 2^k x C values U[0, 1], bilinearly upsampled to
    H x W) summed with Dirichlet(1, ..., 1) weights, stretched to [0, 1], then given a random
    contrast c ~ U[0.3, 1] and brightness b ~ U[0, 1 - c] (so it spans [b, b + c] within [0, 1]).

    Args:
      n: images to draw, >= 0.
      shape: (H, W, C) of one image.
      rng: the generator every value is drawn from.

    Returns:
      float32 [n, H, W, C] in [0, 1].
    """
    h, w, c = shape
    weights = rng.dirichlet(np.ones(SCALES), size=n).astype(np.float32)
    out = np.zeros((n, h, w, c), np.float32)
    for k in range(SCALES):
        size = (max(1, round(h / 2 ** k)), max(1, round(w / 2 ** k)))
        grid = rng.uniform(size=(n, *size, c)).astype(np.float32)
        if size != (h, w):
            grid = tf.image.resize(grid, (h, w), method="bilinear").numpy()
        out += weights[:, k, None, None, None] * grid
    low = out.min(axis=(1, 2, 3), keepdims=True)
    high = out.max(axis=(1, 2, 3), keepdims=True)
    out = (out - low) / np.maximum(high - low, 1e-6)
    contrast = rng.uniform(0.3, 1.0, size=(n, 1, 1, 1))
    brightness = rng.uniform(0.0, 1.0 - contrast)
    return np.clip(out * contrast + brightness, 0.0, 1.0).astype(np.float32)


def prior_images(prior: str, n: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``prior`` (one of :data:`PRIORS`; ``mix``: the first half smooth, the rest
    multi-scale), float32 [n, H, W, C] in [0, 1].

    Raises:
      ValueError: an unknown prior (``PriorConfig.validate`` refuses it first)."""
    if prior == "smooth":
        return noise.smooth_noise(n, shape, rng)
    if prior == "multiscale":
        return multiscale_noise(n, shape, rng)
    if prior == "mix":
        return np.concatenate([noise.smooth_noise(n // 2, shape, rng),
                               multiscale_noise(n - n // 2, shape, rng)])
    raise ValueError(f"prior={prior!r}: expected one of {PRIORS}")  # Programming error: validated.


def mixed_pairs(images: np.ndarray, augment: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` mixes of two random ``images`` (float32 [m, H, W, C], m >= 1): ``mixup``
    λ·a + (1 - λ)·b with λ ~ U(0, 1) per image (Zhang et al., ICLR 2018); ``cutmix`` a with a
    square of side s ~ U{H/4 ... 3H/4} at a random place taken from b (Yun et al., ICCV 2019);
    ``none``: no image. float32 [n, H, W, C] in [0, 1] (none: [0, H, W, C]).

    Raises:
      ValueError: an unknown ``augment`` (``PriorConfig.validate`` refuses it first)."""
    if augment == "none" or n == 0:
        return np.zeros((0, *images.shape[1:]), np.float32)
    a = images[rng.integers(len(images), size=n)]
    b = images[rng.integers(len(images), size=n)]
    if augment == "mixup":
        lam = rng.uniform(size=(n, 1, 1, 1)).astype(np.float32)
        return (lam * a + (1 - lam) * b).astype(np.float32)
    if augment == "cutmix":
        h, w = images.shape[1:3]
        sides = np.minimum(rng.integers(max(1, h // 4), max(2, 3 * h // 4 + 1), size=n), min(h, w))
        top, left = rng.integers(0, h - sides + 1), rng.integers(0, w - sides + 1)
        rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
        square = ((rows >= top[:, None, None]) & (rows < (top + sides)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + sides)[:, None, None]))
        return np.where(square[..., None], b, a).astype(np.float32)
    raise ValueError(f"augment={augment!r}: expected one of {AUGMENTS}")  # Programming error.


def transfer_images(config, shape: tuple, seed: int, count: int | None = None) -> np.ndarray:
    """The first ``count`` images of the plan ``config`` (a :class:`.config.PriorConfig`; None:
    all ``config.images``), float32 [count, H, W, C] in [0, 1].

    Chunk i (of :data:`CHUNK` images) is drawn from ``numpy.random.default_rng((seed, i))``: its
    first (1 - augment_share) share are prior draws, the rest mixes of them. Any ``count`` gives the
    same images as a prefix of a larger plan (same seed, prior and augment)."""
    count = config.images if count is None else count
    chunks = []
    for i in range(-(-count // CHUNK)):
        rng = np.random.default_rng((seed, i))
        mixed = round(CHUNK * config.augment_share) if config.augment != "none" else 0
        drawn = prior_images(config.prior, CHUNK - mixed, shape, rng)
        chunks.append(np.concatenate([drawn, mixed_pairs(drawn, config.augment, mixed, rng)]))
    if not chunks:
        return np.zeros((0, *shape), np.float32)
    return np.concatenate(chunks)[:count]


def balanced_rows(targets: np.ndarray, beta: float, seed: int) -> np.ndarray:
    """Rows of a labelled transfer set redrawn toward class balance (``PriorConfig.balance``).

    Each of the ``n`` images is drawn with probability proportional to (1 / s_c)^β, s_c the share
    of the images whose teacher top-1 class (argmax of its target) is c: with β = 1 every class
    reached gets the same expected share, with β = 0 the draw is uniform. A class-balanced
    resampling (re-weighting by inverse class frequency, as in long-tail learning) that needs no
    further teacher query.

    Args:
      targets: float32 [n, K], the teacher's soft labels or one-hot answers (n >= 1).
      beta: the exponent β, in [0, 1].
      seed: the draw's seed; the same seed and targets give the same rows.

    Returns:
      int64 [n], row indices into ``targets`` (with repeats), in increasing order; with β = 0,
      ``arange(n)`` (the set as labelled, no draw).
    """
    n = len(targets)
    if beta == 0:
        return np.arange(n, dtype=np.int64)
    top1 = np.asarray(targets).argmax(axis=1)
    weight = np.bincount(top1)[top1].astype(np.float64) ** -beta  # ∝ share^-β (normalised below).
    rng = np.random.default_rng([seed, 0xBA1])
    return np.sort(rng.choice(n, size=n, p=weight / weight.sum())).astype(np.int64)
