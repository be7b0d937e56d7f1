"""ZSDB3KD's pseudo-samples: images made from noise and a label-only teacher alone.

ZSDB3KD (Wang, ICML 2021, §3.5; reference code github zwang84/zsdb3kd, ``get_pseudo_samples.py`` and
``untargeted_mbd.py``): noise images are drawn until the teacher gives each class enough of them,
then each is pushed away from its nearest decision boundary for a number of iterations, so that the
samples become robust, class-typical inputs of the teacher; they are then labelled as DB3KD labels
real images (:func:`tfkd.boundary.boundary_distances`).

* :func:`noise_samples`: x = clip((U[0,1] + 0.2)·s1 + N(0,1)·s2) with s1, s2 ~ U[0,1] per sample,
  kept once the teacher gives the wanted class (drawn in batched rounds, all classes together).
* :func:`untargeted_distances`: the distance and direction of each sample to its nearest boundary
  (any other class): random initial directions (each sample's own, scaled until its label flips),
  a binary search along each, then the Sign-OPT refinement (:func:`tfkd.boundary.refine_distances`
  with the untargeted predicate).
* :func:`push_away`: x <- clip(x - step · direction), the step halved for a sample whose label flips.

Departures from the reference code: each sample has its own initial random directions (the reference
draws one per batch and assumes one label per batch); nothing is reshuffled per minibatch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from absl import logging

from tfkd import boundary
from tfkd import fs


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """Pseudo-sample schedule (defaults: the reference code's).

    Attributes:
      per_class: pseudo-samples per class (the reference keeps 200 per class and round; the paper
        uses 24,000 for MNIST in all).
      iterations: pushes away from the boundary (the reference: 40).
      step: the push's first step λ (halved while the label flips; the reference: 0.5).
      queries: the Sign-OPT budget per sample and iteration (the reference: 5,000).
      init_directions: random initial directions per sample (the reference: 20).
      max_noise_rounds: noise batches drawn before giving up on a class the teacher rarely gives.
    """

    per_class: int = 2400
    iterations: int = 40
    step: float = 0.5
    queries: int = 5000
    init_directions: int = 20
    max_noise_rounds: int = 200

    def validate(self) -> None:
        """Raises ValueError naming the first field out of range."""
        for name in ("per_class", "iterations", "queries", "init_directions", "max_noise_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"zsdb3kd.{name}={getattr(self, name)}: expected >= 1")
        if self.step <= 0:
            raise ValueError(f"zsdb3kd.step={self.step}: expected > 0")


def noise_samples(top1: Callable, shape: tuple, num_classes: int, config: ZeroShotConfig,
                  rng: np.random.Generator, stage: str = "zsdb3kd_noise") -> tuple[np.ndarray, np.ndarray]:
    """Noise images the teacher gives each class, up to ``per_class`` each.

    Returns:
      (float32 [n, *shape] in [0, 1], int64 [n] teacher classes), classes in order; a class the
      teacher never gave within ``max_noise_rounds`` rounds has fewer (a warning names it).
    """
    kept = [[] for _ in range(num_classes)]
    batch = config.per_class * num_classes
    for _ in range(config.max_noise_rounds):
        if min(len(k) for k in kept) >= config.per_class:
            break
        s1, s2 = rng.uniform(size=(2, batch) + (1,) * len(shape))
        x = np.clip((rng.uniform(size=(batch, *shape)) + 0.2) * s1
                    + rng.standard_normal((batch, *shape)) * s2, 0, 1).astype(np.float32)
        labels = np.asarray(top1(x, stage))
        for c in range(num_classes):
            kept[c].extend(x[labels == c][:config.per_class - len(kept[c])])
    short = [c for c in range(num_classes) if len(kept[c]) < config.per_class]
    if short:
        logging.warning("ZSDB3KD: the teacher gave classes %s fewer than %d noise images in %d "
                        "rounds", short, config.per_class, config.max_noise_rounds)
    images = np.stack([x for k in kept for x in k]).astype(np.float32)
    labels = np.concatenate([np.full(len(k), c, np.int64) for c, k in enumerate(kept)])
    return images, labels


def _initial_directions(top1, x, labels, config, rng, stage) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the shortest of ``init_directions`` random directions to a flip of its label:
    each direction's scale is redrawn until the label at its end flips, then a binary search."""
    best = np.full(len(x), np.inf)
    best_u = np.zeros_like(x)
    target = -1 - labels
    for _ in range(config.init_directions):
        theta = np.zeros_like(x)
        need = np.arange(len(x))
        for _ in range(50):
            if not len(need):
                break
            trial = rng.standard_normal(x[need].shape).astype(np.float32) * rng.uniform(
                0, 4, (len(need), 1)).astype(np.float32)
            flipped = boundary.reached(top1(np.clip(x[need] + trial, 0, 1), stage), target[need])
            theta[need[flipped]] = trial[flipped]
            need = need[~flipped]
        found = np.flatnonzero(np.linalg.norm(theta, axis=1) > 0)
        length = np.linalg.norm(theta[found], axis=1)
        u = theta[found] / length[:, None]
        g = boundary._line_search(lambda p, s: top1(np.clip(p, 0, 1), s), x[found], u,
                                  target[found], np.minimum(length, best[found]), 1e-3, stage)
        better = g < best[found]
        best[found[better]], best_u[found[better]] = g[better], u[better]
    return best, best_u


def untargeted_distances(top1: Callable, x: np.ndarray, labels: np.ndarray, config: ZeroShotConfig,
                         rng: np.random.Generator, seed: int, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(distance float64 [n], unit direction float32 [n, D]) of each flattened sample to its nearest
    decision boundary (any class but its own), refined by Sign-OPT within ``queries``."""
    g, u = _initial_directions(top1, x, labels, config, rng, stage)
    refine = boundary.BoundaryConfig(mbd_queries=config.queries)
    return boundary.refine_distances(x, -1 - labels, u, g, top1, refine, seed, stage)


def push_away(top1: Callable, x: np.ndarray, labels: np.ndarray, directions: np.ndarray,
              step: float, stage: str) -> np.ndarray:
    """x - λ · direction, clipped to [0, 1], λ = ``step`` halved for each sample whose label flips
    (a sample that flips even at λ < 1e-3 stays where it was)."""
    lam = np.full(len(x), step, np.float32)
    moved = x.copy()
    pending = np.arange(len(x))
    while len(pending):
        trial = np.clip(x[pending] - lam[pending, None] * directions[pending], 0, 1)
        same = np.asarray(top1(trial, stage)) == labels[pending]
        moved[pending[same]] = trial[same]
        lam[pending[~same]] /= 2
        pending = pending[(~same) & (lam[pending] >= 1e-3)]
    return moved


def pseudo_samples(top1: Callable, shape: tuple, num_classes: int, config: ZeroShotConfig,
                   seed: int = 0, state_path: str | None = None,
                   stage: str = "zsdb3kd_samples") -> tuple[np.ndarray, np.ndarray]:
    """ZSDB3KD's pseudo-samples: noise the teacher gives each class, pushed away from the nearest
    boundary ``iterations`` times. The samples are persisted after every iteration (resumed from
    ``state_path`` if there).

    Args:
      top1: ``top1(images [b, *shape], stage) -> int [b]``, the teacher's classes.

    Returns:
      (float32 [n, *shape] in [0, 1], int64 [n] teacher classes).
    """
    rng = np.random.default_rng([seed, 72])
    if state_path and fs.exists(state_path):
        with fs.load_npz(state_path) as f:
            x, labels, done = f["x"], f["labels"], int(f["done"])
        rng = np.random.default_rng([seed, 72, done])
    else:
        images, labels = noise_samples(top1, shape, num_classes, config, rng, stage)
        x, done = images.reshape(len(images), -1), 0

    def flat_top1(flat, name):
        return top1(flat.reshape(-1, *shape), name)

    for it in range(done, config.iterations):
        _, directions = untargeted_distances(flat_top1, x, labels, config, rng, seed + it, stage)
        x = push_away(flat_top1, x, labels, directions, config.step, stage)
        if state_path:
            fs.save_npz(state_path, x=x, labels=labels, done=it + 1)
        rng = np.random.default_rng([seed, 72, it + 1])
    return x.reshape(-1, *shape).astype(np.float32), labels
