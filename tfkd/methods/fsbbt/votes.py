"""Soft labels from a label-only teacher: the vote of its decisions over perturbed copies.

A decision-based teacher (a vendor API that answers class ids, or tfkd's label-only view) gives
one-hot answers. The vote estimator asks it about ``k`` copies of each image with Gaussian pixel
noise (σ in pixel units, pixels in [0, 1], copies clipped to [0, 1]) and takes the fraction of
the k + 1 answers (the clean image's included) that name each class:

    ŷ_c(x) = (1[f(x) = c] + Σ_j 1[f(clip(x + σ ε_j)) = c]) / (k + 1),  ε_j ~ N(0, I)

an unbiased Monte-Carlo estimate of the probabilities of the Gaussian-smoothed teacher
(randomized smoothing, Cohen, Rosenfeld & Kolter, ICML 2019, §3.2, Eq. 1; here its class
probabilities rather than only its top class) that costs k queries per image and reads nothing
but the teacher's answers: no true label, no stored target. An image far from every decision
boundary gets a one-hot label; one near a boundary shares its mass with the classes across it,
as DB3KD's boundary distances try to express (Wang, ICML 2021), at a fixed and much smaller
query cost than a boundary search.

The copies of image i are drawn from (seed, its content hash), so a rerun draws the same copies
and the teacher's ledger answers them without a query; a killed run pays no vote twice.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from tfkd import errors


@dataclasses.dataclass(frozen=True)
class VoteConfig:
    """The vote estimator of a label-only teacher's probabilities.

    Attributes:
      votes: k, perturbed copies asked per image (k queries on top of the clean image's); 0 keeps
        one-hot labels.
      sigma: σ, the Gaussian noise's standard deviation in pixel units (pixels in [0, 1]).
      chunk: images whose copies are made and asked together (memory: chunk x k images).
    """

    votes: int = 0
    sigma: float = 0.1
    chunk: int = 2048

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        errors.check_settings("votes.", self, [
            ("votes", self.votes >= 0, ">= 0 (0: one-hot labels)"),
            ("sigma", 0 < self.sigma <= 1, "in (0, 1] (pixel units)"),
            ("chunk", self.chunk >= 1, ">= 1"),
        ])


def perturbed_copies(images: np.ndarray, config: VoteConfig, seed: int) -> np.ndarray:
    """float32 [n, k, H, W, C] in [0, 1]: k noisy copies of each of float32 [n, H, W, C] images,
    each image's drawn from (seed, a hash of its pixels) alone (the same image gets the same copies
    wherever it is in a set, and in a rerun)."""
    images = np.asarray(images, np.float32)
    out = np.empty((len(images), config.votes, *images.shape[1:]), np.float32)
    for i, image in enumerate(images):
        key = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
        rng = np.random.default_rng([seed, key])
        noise = rng.standard_normal((config.votes, *image.shape), np.float32) * config.sigma
        out[i] = np.clip(image[None] + noise, 0.0, 1.0)
    return out


def vote_soft_labels(label, images: np.ndarray, clean: np.ndarray, config: VoteConfig,
                     seed: int, stage: str = "label_votes") -> np.ndarray:
    """The vote estimate ŷ (module docstring) of every image.

    Args:
      label: ``label(float32 [m, H, W, C], stage=...) -> float32 [m, K]``, the teacher's one-hot
        answers (``Teacher.soft_labels`` of a label-only teacher: ledgered, counted, budgeted).
      images: float32 [n, H, W, C] in [0, 1].
      clean: float32 [n, K], the teacher's answers on the images themselves (one-hot).
      config: k, σ, the chunk size. seed: the noise.
      stage: the query account's stage for the copies.

    Returns:
      float32 [n, K], rows summing to 1, multiples of 1 / (k + 1); ``clean`` when k = 0.

    Raises:
      What ``label`` raises (TeacherError, QueryBudgetExceeded): the answers so far are in the
      teacher's ledger.
    """
    clean = np.asarray(clean, np.float32)
    if config.votes == 0 or len(images) == 0:
        return clean
    counts = clean.astype(np.float64).copy()
    for start in range(0, len(images), config.chunk):
        part = slice(start, start + config.chunk)
        copies = perturbed_copies(images[part], config, seed)
        n = len(copies)
        answers = label(copies.reshape(n * config.votes, *images.shape[1:]), stage=stage)
        counts[part] += np.asarray(answers, np.float64).reshape(n, config.votes, -1).sum(axis=1)
    return (counts / (config.votes + 1)).astype(np.float32)
