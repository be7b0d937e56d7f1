"""ZSDB3KD's noise rounds (Wang, ICML 2021, §3.4): noise images drawn until the label-only teacher
has answered every reachable class ``zsdb3kd.per_class`` times, the seeds of the pseudo-samples."""

from __future__ import annotations

from typing import Callable
from typing import Sequence

import numpy as np
from absl import logging

from tfkd import errors
from tfkd.methods.db3kd import zeroshot
from tfkd.methods.noise import smooth_noise
from tfkd.methods.noise import uniform_noise


def noise_samples(top1: Callable, shape: tuple, num_classes: int, config: zeroshot.ZeroShotConfig,
                  rng: np.random.Generator, stage: str = "zsdb3kd_noise",
                  classes: Sequence[int] | None = None,
                  teacher: str = "the teacher") -> tuple[np.ndarray, np.ndarray]:
    """Noise images the teacher gives each class, up to ``per_class`` each, in rounds: a noise
    batch of per_class × K' images (K': the classes the teacher can give) while one of them has
    fewer than ``fill_from`` (all of them with ``fill_from`` = 0), plus fill candidates
    (:func:`_fill_round`) for the short classes that have ``fill_from`` (any sample once half the
    allowance is spent or the rounds stall). The rounds stop when every class is full, after
    ``max_noise_rounds``, when ``sample_queries(K')`` images were asked (the last round cut to
    it), or after ``noise_patience`` rounds in a row that add no sample to a short class (and,
    where a short class has samples not yet filled from, one more filling from any sample).

    Args:
      top1: ``top1(images float32 [b, *shape], stage) -> int [b]``, the teacher's classes.
      shape: one image's shape, e.g. (28, 28, 1).
      classes: the classes the teacher can give (a class map onto some of the data's classes);
        None: all ``num_classes``. The others are never sought (logged once).
      teacher: the teacher's name, for the error.

    Returns:
      (float32 [n, *shape] in [0, 1], int64 [n] teacher classes), classes in order; a class the
      teacher gave too rarely has fewer (a warning names it).

    Raises:
      ConfigError: ``classes`` has fewer than two classes (nothing is sent).
      TeacherError: the teacher answered one class for every image asked.
    """
    reachable = _reachable(num_classes, classes)
    kept = [[] for _ in range(num_classes)]
    allowance = config.sample_queries(int(reachable.sum()))
    asked, stalled, fill_any = 0, 0, False
    for _ in range(config.max_noise_rounds):
        counts = np.array([len(k) for k in kept])
        short = reachable & (counts < config.per_class)
        stall = stalled >= config.noise_patience
        if not short.any() or asked >= allowance or stall and (
                fill_any or not (config.fill_from and (short & (counts > 0)).any())):
            break
        # Once half the allowance is spent or the rounds stall, fill from any sample (one try).
        fill_any = fill_any or stall or 2 * asked >= allowance
        noise, fill = _round_images(kept, counts, reachable, config, fill_any, shape, rng)
        fill = fill[:allowance - asked]  # A round cut to the allowance keeps its fill first.
        x = np.concatenate([noise[:allowance - asked - len(fill)], fill])
        asked += len(x)
        labels = np.asarray(top1(x, stage))
        before = sum(counts)
        for c in range(num_classes):
            kept[c].extend(x[labels == c][:config.per_class - len(kept[c])])
        stalled = 0 if sum(len(k) for k in kept) > before else stalled + 1
    return _noise_result(kept, reachable, asked, config, teacher)


def _reachable(num_classes: int, classes: Sequence[int] | None) -> np.ndarray:
    """bool [K]: the classes the teacher can give; the others are logged.

    Raises:
      ConfigError: fewer than two."""
    reachable = np.zeros(num_classes, bool)
    reachable[np.arange(num_classes) if classes is None else np.asarray(classes, np.int64)] = True
    never = np.flatnonzero(~reachable).tolist()
    if reachable.sum() < 2:
        raise errors.ConfigError(f"teacher.class_map: reaches classes "
                                 f"{np.flatnonzero(reachable).tolist()} of {num_classes}; ZSDB3KD "
                                 "needs a teacher that can give at least two")
    if never:
        logging.warning("ZSDB3KD: the teacher can never give classes %s (teacher.class_map maps "
                        "none of its classes to them): no pseudo-sample is sought for them", never)
    return reachable


def _round_images(kept, counts, reachable, config, fill_any, shape, rng) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """One round's images (float32, in the order drawn): a noise batch of per_class × K' while a
    class the teacher can give has fewer than ``fill_from`` (``per_class`` with ``fill_from`` = 0),
    else none; then fill candidates for the short classes ready to be filled (from ``fill_from``
    samples, or from one with ``fill_any``)."""
    enough = min(config.fill_from, config.per_class) if config.fill_from else config.per_class
    noise = np.zeros((0, *shape), np.float32)
    if counts[reachable].min() < enough:
        batch = config.per_class * int(reachable.sum())
        noise = (smooth_noise(batch, shape, rng) if config.noise == "smooth"
                 else uniform_noise(batch, shape, rng))
    fill = np.zeros((0, *shape), np.float32)
    if config.fill_from:
        ready = reachable & (counts >= (1 if fill_any else enough))
        fill = _fill_round([k if r else [] for k, r in zip(kept, ready)], config.per_class, shape,
                           rng)
    return noise.astype(np.float32), fill


def _noise_result(kept, reachable, asked, config, teacher) -> tuple[np.ndarray, np.ndarray]:
    """The kept samples as (images, labels), after the checks :func:`noise_samples` names."""
    given = [c for c, k in enumerate(kept) if k]
    if len(given) < 2:
        raise errors.TeacherError(
            f"{teacher}: answered class {' '.join(map(str, given))} for all {asked:,} noise "
            "images; ZSDB3KD needs a teacher that gives at least two classes (its samples are "
            "pushed away from the boundaries between them); if it gives another only rarely, "
            "raise zsdb3kd.noise_patience or zsdb3kd.noise_queries_per_sample")
    short = [c for c in np.flatnonzero(reachable) if len(kept[c]) < config.per_class]
    if short:
        logging.warning("ZSDB3KD: the teacher gave classes %s fewer than %d noise images in %d "
                        "queries (zsdb3kd.noise_queries_per_sample, max_noise_rounds, "
                        "noise_patience)", [int(c) for c in short], config.per_class, asked)
    images = np.stack([x for k in kept for x in k]).astype(np.float32)
    labels = np.concatenate([np.full(len(k), c, np.int64) for c, k in enumerate(kept)])
    return images, labels


def _fill_round(kept: list, per_class: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Candidates for the short classes (twice each one's shortfall): clip(α·a + (1 - α)·b + σ·n)
    with a, b two of the class's kept samples, α ~ U(0, 1), σ ~ U(0, 0.3), n ~ N(0, 1) per pixel."""
    parts = [np.zeros((0, *shape), np.float32)]
    for members in kept:
        want = 2 * (per_class - len(members))
        if want <= 0 or not members:
            continue
        pool = np.stack(members)
        a, b = pool[rng.integers(len(pool), size=want)], pool[rng.integers(len(pool), size=want)]
        alpha = rng.uniform(size=(want,) + (1,) * len(shape))
        sigma = rng.uniform(0, 0.3, size=(want,) + (1,) * len(shape))
        parts.append(np.clip(alpha * a + (1 - alpha) * b
                             + sigma * rng.standard_normal((want, *shape)), 0, 1))
    return np.concatenate(parts).astype(np.float32)
