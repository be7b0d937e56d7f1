"""ZSDB3KD's pseudo-samples: images made from noise and a label-only teacher alone.

ZSDB3KD (Wang, ICML 2021, §3.5; reference code github zwang84/zsdb3kd, ``get_pseudo_samples.py`` and
``untargeted_mbd.py``): noise images are drawn until the teacher gives each class enough of them,
then each is pushed away from its nearest decision boundary for a number of iterations, so that the
samples become robust, class-typical inputs of the teacher; they are then labelled as DB3KD labels
real images (:func:`tfkd.methods.db3kd.boundary.boundary_distances`).

* :func:`noise_samples`: x = clip((U[0,1] + 0.2)·s1 + N(0,1)·s2) with s1, s2 ~ U[0,1] per sample,
  kept once the teacher gives the wanted class (drawn in batched rounds, all classes together).
  Noise rarely lands in some classes (on the Fashion-MNIST LeNet-5 teacher, 3 and 4 in 20,000 for
  sneaker and ankle boot): once each class has ``fill_from`` noise samples, the rest of a short class
  is filled with perturbed mixtures of its own samples, kept when the teacher still gives the class.
  The rounds ask at most ``noise_queries_per_sample`` images per sample wanted (the plan's bound),
  stop after ``noise_patience`` rounds that add nothing, never seek a class the teacher cannot give
  (``teacher.class_map``), and refuse a teacher that gives one class with one line.
* The search for each sample's nearest boundary (any other class), by ``config.search``:

  - ``hopskipjump`` (default; HopSkipJumpAttack, Chen, Jordan and Wainwright, IEEE S&P 2020, Alg. 1
    and §4 for the ℓ2 case): from a point the teacher gives another class, a bisection on the
    segment to the sample (threshold θ = d^{-3/2}), then per iteration t a Monte-Carlo estimate of
    the boundary's normal from B_t = B0·sqrt(t) probes at radius δ = sqrt(d)·θ·dist (baseline
    subtracted, their Eq. 16), a geometric step of dist/sqrt(t) along it (halved until the point is
    across the boundary), and a bisection back. Each push starts from the previous push's boundary
    point (the teacher does not move, so it is still across): a push costs about
    2 × 15 + B0 + a few queries instead of the reference's fresh search.
  - ``sign_opt`` (the reference code's): ``init_directions`` random initial directions (each
    sample's own, scaled until its label flips), a binary search along each, then the Sign-OPT
    refinement (:func:`tfkd.methods.db3kd.signopt.refine_distances` with the untargeted predicate) within
    ``queries`` per sample and push.

* :func:`push_away`: x <- clip(x - step · direction), the step halved for a sample whose label flips.

Departures from the reference code: each sample has its own initial random directions (the reference
draws one per batch and assumes one label per batch); nothing is reshuffled per minibatch; the
class fill, the rounds' allowance and patience, and the HopSkipJump search are tfkd's (the reference
spends about 5,300 queries a push, out of reach here: issue 27).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable
from typing import Sequence

import numpy as np

from tfkd import errors
from tfkd import fs
from tfkd.methods import noise
from tfkd.methods.db3kd import boundary
from tfkd.methods.db3kd import noise_rounds
from tfkd.methods.db3kd import signopt

SEARCHES = ("hopskipjump", "sign_opt")
NOISES = ("smooth", "uniform")
_STEP_HALVINGS = 20  # HopSkipJump's geometric step: halvings tried before an iteration gives up.
_PUSH_MIN_STEP = 1e-3  # push_away: a sample whose step would fall below this stays.
_SCALE_DRAWS = 50  # sign_opt: scale draws per initial direction before it gives up.
_MAX_SCALE = 4.0  # sign_opt: an initial direction's draw is N(0, 1)^d times U(0, this).
_INIT_TOLERANCE = 1e-3  # sign_opt: the initial directions' binary-search tolerance.


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """Pseudo-sample schedule (defaults: the reference code's, but for the search and the fill).

    Attributes:
      per_class: pseudo-samples per class (the reference keeps 200 per class and round; the paper
        uses 24,000 for MNIST in all).
      iterations: pushes away from the boundary (the reference: 40; 0: the noise samples as
        they are).
      step: the push's first step λ, pixel-scale L2 (halved while the label flips; the reference:
        0.5).
      search: one of ``SEARCHES``: how each push finds the nearest boundary (module docstring).
      gradient_queries: ``hopskipjump``'s B0, probes of its first normal estimate per sample
        (B_t = B0·sqrt(t) at iteration t; HSJA's default: 100).
      search_iterations: ``hopskipjump`` iterations per push (the warm start carries the search
        from one push to the next).
      queries: ``sign_opt``'s budget per sample and push (the reference: 5,000).
      init_directions: ``sign_opt``'s random initial directions per sample (the reference: 20).
      noise: one of ``NOISES``: ``uniform``, the reference's per-pixel noise; ``smooth``, a random
        3x3 to 7x7 grid bilinearly upsampled plus a little per-pixel noise (:func:`smooth_noise`).
      probe_resolution: ``hopskipjump``'s probes drawn on a grid of this size per side and channel,
        bilinearly upsampled (the low-frequency subspace of QEBA, Li et al., CVPR 2020); 0: every
        pixel independently (HSJA's own).
      max_noise_rounds: noise and fill rounds drawn at most (a noise round asks for per_class × K
        images, a fill round for twice the short classes' shortfall).
      fill_from: once every class has this many noise samples, short classes are filled with
        perturbed mixtures of their own samples; once half of ``noise_queries_per_sample``'s
        allowance is spent or the rounds stall (``noise_patience``), from any one sample (0: noise
        only, the reference's).
      noise_queries_per_sample: the noise and fill rounds ask at most this many images per
        pseudo-sample wanted (per_class × the classes the teacher can give), rounded up: the
        stage's whole cost, and :meth:`query_plan`'s bound for it. On the Fashion-MNIST LeNet-5
        teacher they ask about 2.2 per sample (RESULTS.md, rows ``zsdb3kd_n100k_onehot*`` and
        ``zsdb3kd_n400k_noaug``); a class still short when it is spent is left short (a warning
        names it).
      noise_patience: rounds in a row that add no sample to any short class before the rounds
        stop (after one more round filling from any sample, where that can help): a teacher that
        never gives a class costs at most this many rounds more than one that gives it.
    """

    per_class: int = 2400
    iterations: int = 40
    step: float = 0.5
    search: str = "hopskipjump"
    gradient_queries: int = 100
    search_iterations: int = 1
    queries: int = 5000
    init_directions: int = 20
    max_noise_rounds: int = 200
    fill_from: int = 20
    noise: str = "smooth"
    probe_resolution: int = 7
    noise_queries_per_sample: float = 4.0
    noise_patience: int = 10

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        for name in ("per_class", "queries", "init_directions", "max_noise_rounds",
                     "gradient_queries", "search_iterations", "noise_patience"):
            if getattr(self, name) < 1:
                raise errors.ConfigError(f"zsdb3kd.{name}={getattr(self, name)}: expected >= 1")
        if self.step <= 0:
            raise errors.ConfigError(f"zsdb3kd.step={self.step}: expected > 0")
        if not self.noise_queries_per_sample >= 1:
            raise errors.ConfigError(f"zsdb3kd.noise_queries_per_sample="
                                     f"{self.noise_queries_per_sample}: expected >= 1 (a "
                                     "pseudo-sample costs at least its own query)")
        for name in ("iterations", "fill_from", "probe_resolution"):
            if getattr(self, name) < 0:
                raise errors.ConfigError(f"zsdb3kd.{name}={getattr(self, name)}: expected >= 0")
        if self.noise not in NOISES:
            raise errors.ConfigError(f"zsdb3kd.noise={self.noise!r}: expected one of {NOISES}")
        if self.search not in SEARCHES:
            raise errors.ConfigError(f"zsdb3kd.search={self.search!r}: expected one of "
                                     f"{SEARCHES}")

    def sample_queries(self, num_classes: int) -> int:
        """The noise and fill rounds' allowance for K = ``num_classes`` classes the teacher can
        give: ceil(noise_queries_per_sample × per_class × K) images (:func:`noise_samples` asks no
        more)."""
        return math.ceil(self.noise_queries_per_sample * self.per_class * num_classes)

    def query_plan(self, num_classes: int, pixels: int) -> int:
        """An upper bound on :func:`pseudo_samples`' queries for K = ``num_classes`` classes the
        teacher can give and d = ``pixels`` (values per image): the noise and fill rounds'
        allowance (:meth:`sample_queries`), then per sample and push :meth:`push_queries`."""
        samples = self.per_class * num_classes
        return self.sample_queries(num_classes) + samples * self.iterations * self.push_queries(pixels)

    def push_queries(self, pixels: int) -> int:
        """An upper bound on one push's queries per sample: the search (``hopskipjump``: the first
        bisection, then per iteration B_t probes, the step's halvings and a bisection;
        ``sign_opt``: per initial direction its scale draws and a bisection, then the Sign-OPT
        refinement's bound, :func:`tfkd.methods.db3kd.signopt.refine_queries`), then the push's tries
        (:func:`_push_tries`)."""
        if self.search == "hopskipjump":
            bisection = _bisection_steps(pixels)
            search = bisection + sum(math.ceil(self.gradient_queries * math.sqrt(t))
                                     + _STEP_HALVINGS + bisection
                                     for t in range(1, self.search_iterations + 1))
        else:
            search = (self.init_directions * (_SCALE_DRAWS + _initial_search_steps(pixels))
                      + signopt.refine_queries(self._refine_config()))
        return search + _push_tries(self.step)

    def _refine_config(self) -> boundary.BoundaryConfig:
        """``sign_opt``'s refinement: the Sign-OPT search of :mod:`tfkd.methods.db3kd.boundary` within
        ``queries`` per sample and push."""
        return boundary.BoundaryConfig(mbd_queries=self.queries)


def _bisection_steps(pixels: int) -> int:
    """Queries of one HopSkipJump bisection: log2(1 / θ), θ = d^{-3/2}."""
    return math.ceil(1.5 * math.log2(pixels)) + 1


def _initial_search_steps(pixels: int) -> int:
    """Queries of one ``sign_opt`` initial direction's binary search: from the length of its
    random draw (N(0, 1)^d scaled by at most ``_MAX_SCALE``: below 2·sqrt(d)·_MAX_SCALE but with a
    vanishing chance) down to ``_INIT_TOLERANCE``."""
    return math.ceil(math.log2(2 * math.sqrt(pixels) * _MAX_SCALE / _INIT_TOLERANCE)) + 1


def _push_tries(step: float) -> int:
    """Queries of one push per sample (:func:`push_away`): the first ``step``, then one per
    halving while the step is at least ``_PUSH_MIN_STEP`` (float32, as the push halves it)."""
    lam, tries = np.float32(step), 1
    while (lam := lam / np.float32(2)) >= _PUSH_MIN_STEP:
        tries += 1
    return tries


def _initial_directions(top1, x, labels, config, rng, stage) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the shortest of ``init_directions`` random directions to a flip of its label:
    each direction's scale is redrawn until the label at its end flips, then a binary search."""
    best = np.full(len(x), np.inf)
    best_u = np.zeros_like(x)
    target = -1 - labels
    for _ in range(config.init_directions):
        theta = np.zeros_like(x)
        need = np.arange(len(x))
        for _ in range(_SCALE_DRAWS):
            if not len(need):
                break
            trial = rng.standard_normal(x[need].shape).astype(np.float32) * rng.uniform(
                0, _MAX_SCALE, (len(need), 1)).astype(np.float32)
            flipped = boundary.reached(top1(np.clip(x[need] + trial, 0, 1), stage), target[need])
            theta[need[flipped]] = trial[flipped]
            need = need[~flipped]
        found = np.flatnonzero(np.linalg.norm(theta, axis=1) > 0)
        length = np.linalg.norm(theta[found], axis=1)
        u = theta[found] / length[:, None]
        g = boundary._line_search(lambda p, s: top1(np.clip(p, 0, 1), s), x[found], u,
                                  target[found], np.minimum(length, best[found]), _INIT_TOLERANCE,
                                  stage)
        better = g < best[found]
        best[found[better]], best_u[found[better]] = g[better], u[better]
    return best, best_u


def untargeted_distances(top1: Callable, x: np.ndarray, labels: np.ndarray, config: ZeroShotConfig,
                         rng: np.random.Generator, seed: int, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(distance float64 [n], unit direction float32 [n, D]) of each flattened sample to its nearest
    decision boundary (any class but its own), refined by Sign-OPT within ``queries``."""
    g, u = _initial_directions(top1, x, labels, config, rng, stage)
    refine = config._refine_config()
    return signopt.refine_distances(x, -1 - labels, u, g, top1, refine, seed, stage)


def nearest_boundary(top1: Callable, x: np.ndarray, labels: np.ndarray, across: np.ndarray,
                     config: ZeroShotConfig, rng: np.random.Generator, stage: str,
                     shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HopSkipJump's search (Chen et al. 2020, Alg. 1, ℓ2) for each sample's nearest decision
    boundary toward any other class, every sample together (each step one batched call).

    Args:
      top1: ``top1(flat float32 [b, D], stage) -> int [b]``, the teacher's classes.
      x: float32 [n, D] flattened samples in [0, 1]; labels: int [n], the teacher's classes of x.
      across: float32 [n, D] in [0, 1], points the teacher gives another class than ``labels``
        (the previous push's boundary points, or :func:`starting_points`).
      config: ``gradient_queries`` (B0), ``search_iterations`` and ``probe_resolution``.
      shape: one image's (H, W, C), needed when ``config.probe_resolution`` > 0.

    Returns:
      (float64 [n] L2 distances, float32 [n, D] unit directions from x toward its boundary point,
      float32 [n, D] the boundary points, each on the other class's side within θ = d^{-3/2} of
      the segment's crossing).
    """
    theta = x.shape[1] ** -1.5
    target = -1 - np.asarray(labels)
    draw = _probe_directions(x.shape[1], config.probe_resolution, shape, rng)
    point = _bisect(top1, x, across, target, theta, stage)
    for t in range(1, config.search_iterations + 1):
        point = _hopskipjump_iteration(top1, x, point, target, t, config.gradient_queries, theta,
                                       draw, stage)
    gap = point - x
    dist = np.linalg.norm(gap, axis=1).astype(np.float64)
    return dist, (gap / np.maximum(dist, 1e-12)[:, None]).astype(np.float32), point


def starting_points(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    candidates: int = 20) -> np.ndarray:
    """Per sample, the nearest (L2) of ``candidates`` random samples the teacher gives another
    class: a point across some boundary at no query. x: float32 [n, D]; labels: int [n], at
    least two classes. Returns float32 [n, D]."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError(  # Programming error: noise_rounds.noise_samples keeps two classes or raises.
            "labels: expected samples of at least two classes, got one")
    best = np.full(len(x), np.inf)
    start = np.zeros_like(x)
    for _ in range(candidates):
        pick = rng.integers(len(x), size=len(x))
        other = labels[pick] != labels
        dist = np.where(other, np.linalg.norm(x[pick] - x, axis=1), np.inf)
        closer = dist < best
        best[closer], start[closer] = dist[closer], x[pick[closer]]
    missing = np.flatnonzero(~np.isfinite(best))
    for i in missing:  # Rare: no candidate of another class was drawn.
        start[i] = x[rng.choice(np.flatnonzero(labels != labels[i]))]
    return start


def _bisect(top1, x, across, target, theta, stage) -> np.ndarray:
    """HSJA's binary search on the segment from x (its own side) to ``across`` (past the boundary)
    to θ of the segment's length (:func:`tfkd.methods.db3kd.boundary._line_search`); returns the points on the
    other class's side."""
    gap = across - x
    length = np.linalg.norm(gap, axis=1)
    u = gap / length[:, None]
    dist = boundary._line_search(top1, x, u, target, length, theta * length, stage)
    return (x + dist[:, None] * u).astype(np.float32)


def _probe_directions(pixels: int, resolution: int, shape: tuple | None,
                      rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """``draw(n) -> float32 [n, pixels]`` Gaussian probe directions: per pixel (resolution 0), or
    on a resolution x resolution x C grid bilinearly upsampled to ``shape``."""
    if not resolution:
        return lambda n: rng.standard_normal((n, pixels), dtype=np.float32)
    if shape is None or int(np.prod(shape)) != pixels:
        raise ValueError(  # Programming error: callers pass the samples' own (H, W, C).
            f"shape: expected the (H, W, C) of {pixels}-value images for "
            f"probe_resolution={resolution}, got {shape}")
    return lambda n: noise.coarse_directions(rng, (n,), shape, resolution).reshape(n, pixels)


def _normal_estimate(top1, point, target, delta, count, draw, stage) -> np.ndarray:
    """HSJA's Monte-Carlo estimate of the boundary's normal at ``point`` (toward the other class;
    their Eq. 16): the mean of (φ - mean φ)·u over ``count`` unit probes u at radius ``delta``
    (φ = +1 past the boundary, -1 not), the mean of φ·u where all probes agree; u are ``draw``'s
    directions normalized. Unit rows."""
    sum_phi_u = np.zeros_like(point)
    sum_u = np.zeros_like(point)
    sum_phi = np.zeros(len(point))
    for _ in range(count):
        u = draw(len(point))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        probe = np.clip(point + delta[:, None] * u, 0, 1)
        u = (probe - point) / delta[:, None]
        phi = np.where(boundary.reached(top1(probe, stage), target), 1.0, -1.0).astype(np.float32)
        sum_phi_u += phi[:, None] * u
        sum_u += u
        sum_phi += phi
    mean_phi = (sum_phi / count).astype(np.float32)
    agree = np.abs(mean_phi) == 1
    grad = sum_phi_u - np.where(agree, 0.0, mean_phi)[:, None] * sum_u
    return grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)


def _hopskipjump_iteration(top1, x, point, target, t, b0, theta, draw, stage) -> np.ndarray:
    """One HSJA iteration t >= 1: the normal at the boundary point (B0·sqrt(t) probes at radius
    δ = sqrt(d)·θ·dist), a geometric step of dist/sqrt(t) along it, halved until the teacher gives
    another class (up to ``_STEP_HALVINGS`` times), then a bisection back toward x. A sample keeps
    its point where the step failed or the new point is no nearer."""
    dist = np.linalg.norm(point - x, axis=1)
    delta = np.sqrt(x.shape[1]) * theta * dist
    grad = _normal_estimate(top1, point, target, np.maximum(delta, 1e-6),
                            math.ceil(b0 * math.sqrt(t)), draw, stage)
    xi = dist / math.sqrt(t)
    stepped = point.copy()
    pending, moved = np.arange(len(x)), np.zeros(len(x), bool)
    for _ in range(_STEP_HALVINGS):
        if not len(pending):
            break
        trial = np.clip(point[pending] + xi[pending, None] * grad[pending], 0, 1)
        ok = boundary.reached(top1(trial, stage), target[pending])
        stepped[pending[ok]], moved[pending[ok]] = trial[ok], True
        xi[pending[~ok]] /= 2
        pending = pending[~ok]
    rows = np.flatnonzero(moved)
    new = point.copy()
    if len(rows):
        found = _bisect(top1, x[rows], stepped[rows], target[rows], theta, stage)
        nearer = np.linalg.norm(found - x[rows], axis=1) < dist[rows]
        new[rows[nearer]] = found[nearer]
    return new


def push_away(top1: Callable, x: np.ndarray, labels: np.ndarray, directions: np.ndarray,
              step: float, stage: str) -> np.ndarray:
    """x - λ · direction, clipped to [0, 1], λ = ``step`` halved for each sample whose label flips
    (a sample that flips even at λ < ``_PUSH_MIN_STEP`` = 1e-3 stays where it was)."""
    lam = np.full(len(x), step, np.float32)
    moved = x.copy()
    pending = np.arange(len(x))
    while len(pending):
        trial = np.clip(x[pending] - lam[pending, None] * directions[pending], 0, 1)
        same = np.asarray(top1(trial, stage)) == labels[pending]
        moved[pending[same]] = trial[same]
        lam[pending[~same]] /= 2
        pending = pending[(~same) & (lam[pending] >= _PUSH_MIN_STEP)]
    return moved


def pseudo_samples(top1: Callable, shape: tuple, num_classes: int, config: ZeroShotConfig,
                   seed: int = 0, state_path: str | None = None,
                   stage: str = "zsdb3kd_samples", classes: Sequence[int] | None = None,
                   teacher: str = "the teacher") -> tuple[np.ndarray, np.ndarray]:
    """ZSDB3KD's pseudo-samples: noise the teacher gives each class, pushed away from the nearest
    boundary ``iterations`` times. The samples are persisted once drawn and after every push, with
    ``hopskipjump``'s boundary points (resumed from ``state_path`` if there): a killed run loses at
    most one push.

    Args:
      top1: ``top1(images [b, *shape], stage) -> int [b]``, the teacher's classes.
      shape: one image's shape; num_classes: K.
      config: the schedule and the search (:class:`ZeroShotConfig`).
      seed: the noise, the fill and the searches' random directions.
      classes, teacher: the classes the teacher can give and its name (:func:`noise_samples`).

    Returns:
      (float32 [n, *shape] in [0, 1], int64 [n] teacher classes).

    Raises:
      ConfigError, TeacherError: as :func:`noise_samples` (before any push).
    """
    rng = np.random.default_rng([seed, 72])
    across = None
    if state_path and fs.exists(state_path):
        with fs.load_npz(state_path) as f:
            x, labels, done = f["x"], f["labels"], int(f["done"])
            across = f["across"] if "across" in f else None
        rng = np.random.default_rng([seed, 72, done])
    else:
        images, labels = noise_rounds.noise_samples(top1, shape, num_classes, config, rng, stage, classes,
                                       teacher)
        x, done = images.reshape(len(images), -1), 0
        if state_path:  # The noise's queries are kept before the first push.
            fs.save_npz(state_path, x=x, labels=labels, done=0)
        rng = np.random.default_rng([seed, 72, 0])  # As a run resumed here draws.

    def flat_top1(flat, name):
        return top1(flat.reshape(-1, *shape), name)

    for it in range(done, config.iterations):
        if config.search == "hopskipjump":
            if across is None:
                across = starting_points(x, labels, rng)
            _, directions, across = nearest_boundary(flat_top1, x, labels, across, config, rng,
                                                     stage, shape)
        else:
            _, directions = untargeted_distances(flat_top1, x, labels, config, rng, seed + it, stage)
        x = push_away(flat_top1, x, labels, directions, config.step, stage)
        if state_path:
            extra = {} if across is None else {"across": across}
            fs.save_npz(state_path, x=x, labels=labels, done=it + 1, **extra)
        rng = np.random.default_rng([seed, 72, it + 1])
    return x.reshape(-1, *shape).astype(np.float32), labels
