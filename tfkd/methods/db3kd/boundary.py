"""Sample robustness from a decision-based teacher: distances to its decision boundaries (DB3KD).

DB3KD (Wang, "Zero-Shot Knowledge Distillation from a Decision-Based Black-Box Model", ICML 2021,
§3.2-3.3; reference code github zwang84/zsdb3kd, ``sample_robustness.py`` and ``get_soft_labels.py``)
turns a teacher that answers only class ids into soft labels: for an image x with teacher label y and
every other class t, d_t is the L2 distance (pixel scale [0, 1]) from x to the teacher's decision
boundary toward t; images far from every boundary get confident labels, images near one get that
class's mass.

* :func:`boundary_distances` is the ``bd`` search: for each (image, class) pair, directions from x
  toward images the *teacher* labels t (never true labels), a binary search along each for the first
  point the teacher labels t, the smallest kept. Every pair advances together: each step is one
  batched ``Predict`` (chunked under the message limit by the client) for all pairs still searching,
  never a Python loop over images around gRPC calls. A direction is skipped with one query when the
  point at the best distance so far is not labelled t (the reference code's pruning).
* :func:`soft_labels_from_distances` is the soft label: logit_t = 1/d_t (t != y),
  logit_y = sum_{t != y} 1/d_t, target = softmax(logits / T), T = 20 by default.

The search runs in chunks of ``chunk_pairs`` pairs, each to its end (every direction, then for ``mbd``
the refinement); each pair's state (best distance, next direction, refined distance, queries spent)
is persisted atomically when its chunk ends, so a killed search resumes at the first unfinished
chunk and asks no finished (image, class) pair again. A rerun with more directions continues every
pair at its next direction.

Departures from the reference code: the search runs over all (image, class) pairs of a set at once
(the reference batches images of one class against one target); images are not clipped before a query
(every probe lies on a segment between two images in [0, 1], so it is in range already).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from absl import logging

from tfkd import errors
from tfkd import fs
from tfkd.methods.db3kd import signopt

SEARCHES = ("bd", "mbd")
# The Sign-OPT refinement's constants (the reference code's, but for the cap on a local search's
# steps), each spent where it is named and counted by signopt.refine_queries.
_STEP_TRIALS = 15  # Line-search trials per direction of the step (doubling, then quartering).


@dataclasses.dataclass(frozen=True)
class BoundaryConfig:
    """The boundary search and the soft labels (defaults: the reference code's).

    Attributes:
      search: one of ``SEARCHES``: ``bd``, binary searches along directions toward teacher-labelled
        images; ``mbd``, ``bd`` then the Sign-OPT refinement (:func:`refine_distances`).
      num_directions: directions tried per (image, class) pair (the reference: about 200); 0: no
        search, the soft labels are the teacher's top-1 one-hot (the loss is then CE to it, plus
        T² times the same CE at temperature T).
      mbd_queries: the refinement's query budget per pair (the reference: 20,000).
      mbd_directions: random directions per sign-gradient estimate, one query each (the
        reference: k = 200).
      tolerance: binary-search tolerance on the distance, pixel scale [0, 1] (the reference: 1e-5).
      temperature: T of the soft labels and of the student's KD term (the reference: 20).
      chunk_pairs: (image, class) pairs searched together to their end: each probe is one batched
        call of up to this many rows (split under the message limit by the client), and a chunk's
        state is persisted when it ends, so a killed search loses at most one chunk's queries.
        Memory grows with it (about 2 x chunk_pairs x pixels float32 for ``mbd``).
    """

    search: str = "bd"
    num_directions: int = 200
    tolerance: float = 1e-5
    temperature: float = 20.0
    mbd_queries: int = 20_000
    mbd_directions: int = 200
    chunk_pairs: int = 4096

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        checks = [("search", self.search in SEARCHES, SEARCHES),
                  ("num_directions", self.num_directions >= 0, ">= 0"),
                  ("tolerance", self.tolerance > 0, "> 0"),
                  ("mbd_queries", self.mbd_queries >= 1, ">= 1"),
                  ("mbd_directions", self.mbd_directions >= 1, ">= 1"),
                  ("temperature", self.temperature > 0, "> 0"),
                  ("chunk_pairs", self.chunk_pairs >= 1, ">= 1")]
        errors.check_settings("db3kd.", self, checks)


def soft_labels_from_distances(distances: np.ndarray, labels: np.ndarray,
                               temperature: float = 20.0) -> np.ndarray:
    """DB3KD's soft labels from boundary distances (paper §3.3; ``get_soft_labels.py``).

    Args:
      distances: float [n, K], d_t > 0 for t != y (inf where no boundary toward t was found: that
        class gets logit 0); the entry of the teacher's own class is ignored.
      labels: int [n], the teacher's top-1 class y.
      temperature: T > 0.

    Returns:
      float32 [n, K], rows summing to 1, largest at ``labels`` (shared when only one other class
      has a finite distance): softmax(logits / T) with
      logit_t = 1 / d_t and logit_y = sum_{t != y} 1 / d_t.

    Raises:
      ValueError: shapes that do not match, or a non-positive distance (the caller's bug: the
        search measures one positive distance per image and class).
    """
    distances = np.asarray(distances, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if distances.ndim != 2 or len(distances) != len(labels):
        raise ValueError(  # Programming error: boundary_distances gives [n, K] for n labels.
            f"distances: expected [n, K] with n = {len(labels)} labels, got "
            f"{list(distances.shape)}")
    others = np.ones(distances.shape, bool)
    others[np.arange(len(labels)), labels] = False
    if np.any(distances[others] <= 0):
        raise ValueError(  # Programming error: a boundary is never at the image (its own class).
            "distances: expected > 0 toward every other class")
    logits = np.where(others, 1.0 / np.where(others, distances, 1.0), 0.0)
    logits[np.arange(len(labels)), labels] = logits.sum(axis=1)
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    soft = np.exp(scaled)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class _State:
    """Search state of every (image, class) pair: the best ``bd`` distance so far, the direction that
    gave it (-1: none), the next direction to try, the ``mbd`` distance once refined (NaN: not yet),
    and the teacher queries the pair has cost so far."""

    best: np.ndarray  # float64 [P]
    best_direction: np.ndarray  # int64 [P]
    next_direction: np.ndarray  # int64 [P]
    refined: np.ndarray  # float64 [P]
    queries: np.ndarray  # int64 [P]

    @classmethod
    def fresh(cls, num_pairs: int) -> "_State":
        return cls(np.full(num_pairs, np.inf), np.full(num_pairs, -1), np.zeros(num_pairs, np.int64),
                   np.full(num_pairs, np.nan), np.zeros(num_pairs, np.int64))

    def save(self, path: str) -> None:
        fs.save_npz(path, **dataclasses.asdict(self))

    @classmethod
    def resume(cls, path: str | None, num_pairs: int) -> "_State":
        """The state persisted at ``path``, or a fresh one.

        Raises:
          tfkd.errors.WorkdirError: the file is not this search's state (see :meth:`load`).
        """
        if not (path and fs.exists(path)):
            return cls.fresh(num_pairs)
        state = cls.load(path, num_pairs)
        logging.info("Boundary search: resuming, %d of %d pairs searched (%s)",
                     int((state.next_direction > 0).sum()), num_pairs, path)
        return state

    @classmethod
    def load(cls, path: str, num_pairs: int) -> "_State":
        """Also reads the first format (one ``next_direction`` for all pairs, no refined distances
        or query counts: those read as not refined and 0).

        Raises:
          tfkd.errors.WorkdirError: not a search state of ``num_pairs`` pairs with best distances
            and directions.
        """
        fresh = cls.fresh(num_pairs)
        with fs.load_npz(path) as f:
            if "best_direction" not in f or f["best"].shape != (num_pairs,):
                raise errors.WorkdirError(f"{path}: not the state of this search ({num_pairs} "
                                          "pairs, with best distances and their directions); "
                                          "move it aside to search again")
            fields = {k: np.broadcast_to(f[k], (num_pairs,)).copy() if k in f else getattr(fresh, k)
                      for k in ("best", "best_direction", "next_direction", "refined", "queries")}
        return cls(**fields)


def reached(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Whether each probe's teacher class is what its search looks for: class ``target`` where
    target >= 0 (a targeted search), any class but y where target = -1 - y (untargeted)."""
    labels, target = np.asarray(labels), np.asarray(target)
    return np.where(target >= 0, labels == target, labels != -1 - target)


def _pairs(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, target class) of every pair with target != the image's label, image-major."""
    images = np.repeat(np.arange(len(labels)), num_classes)
    targets = np.tile(np.arange(num_classes), len(labels))
    keep = targets != np.repeat(labels, num_classes)
    return images[keep], targets[keep]


def _line_search(top1: Callable, x: np.ndarray, u: np.ndarray, target: np.ndarray,
                 hi: np.ndarray, tolerance, stage: str,
                 spent: np.ndarray | None = None) -> np.ndarray:
    """Binary search of every pair together for the first point x + λ u labelled ``target`` with
    λ in [0, hi] (the teacher labels x + hi u as target). Returns hi, within ``tolerance`` (a float,
    or float [P], one per pair); adds each pair's queries to ``spent`` (int64 [len(x)]) when
    given."""
    lo = np.zeros_like(hi)
    hi = hi.copy()
    tolerance = np.broadcast_to(tolerance, hi.shape)
    active = np.flatnonzero(hi - lo > tolerance)
    while len(active):
        mid = (lo[active] + hi[active]) / 2
        probes = x[active] + mid[:, None] * u[active]
        hit = reached(top1(probes, stage), target[active])
        if spent is not None:
            spent[active] += 1
        hi[active[hit]] = mid[hit]
        lo[active[~hit]] = mid[~hit]
        active = active[hi[active] - lo[active] > tolerance[active]]
    return hi


def _one_direction(top1: Callable, x: np.ndarray, toward: np.ndarray, target: np.ndarray,
                   best: np.ndarray, tolerance: float, stage: str,
                   spent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One direction per pair (from ``x`` toward ``toward``, an image the teacher labels target):
    (the new best distances, which pairs improved); each pair's queries are added to ``spent``.
    Pairs with no image to go toward have NaN in ``toward``."""
    theta = toward - x
    length = np.linalg.norm(theta, axis=1)
    usable = np.isfinite(length) & (length > 0)
    u = np.zeros_like(theta)
    u[usable] = theta[usable] / length[usable, None]
    hi = np.where(usable, np.minimum(length, best), np.nan)
    # Pruning: where the best so far is shorter, one query at it says whether this direction can
    # beat it at all (the point there must already be labelled t).
    check = np.flatnonzero(usable & (length > best))
    if len(check):
        probes = x[check] + best[check, None] * u[check]
        spent[check] += 1
        usable[check[~reached(top1(probes, stage), target[check])]] = False
    search = np.flatnonzero(usable)
    found = best.copy()
    if len(search):
        counted = np.zeros(len(search), np.int64)
        found[search] = np.minimum(best[search], _line_search(
            top1, x[search], u[search], target[search], hi[search], tolerance, stage, counted))
        spent[search] += counted
    return found, found < best


# Over the argument limit (PLR0913): the search's data, its teacher, its settings and its resume point.
def boundary_distances(images: np.ndarray, labels: np.ndarray, pool: np.ndarray,  # noqa: PLR0913
                       pool_labels: np.ndarray, num_classes: int, top1: Callable,
                       config: BoundaryConfig, seed: int = 0, stage: str = "db3kd_search",
                       state_path: str | None = None, progress=False,
                       offset: int = 0) -> np.ndarray:
    """The ``bd`` (or ``mbd``) distances of every image to the teacher's boundary toward every other
    class.

    Args:
      images: float32 [n, H, W, C] in [0, 1]; labels: int [n], the teacher's top-1 classes.
      pool: float32 [m, H, W, C], images to search toward; pool_labels: int [m], the teacher's
        top-1 classes of the pool (never true labels).
      num_classes: K.
      top1: ``top1(images float32 [b, H, W, C], stage) -> int [b]``, the teacher's classes (one
        batched, counted, budgeted call: :meth:`tfkd.teacher.TeacherClient.top1`).
      config: directions and tolerance.
      seed: which pool images each pair goes toward, and in what order.
      stage: the name queries are charged under.
      state_path: an ``.npz`` each pair's state is persisted to when its chunk of
        ``config.chunk_pairs`` pairs ends (resumed from if there), or None.
      progress: a progress bar over pairs: True, or a factory ``progress(total, unit_name)`` of
        one (:meth:`tfkd.teacher.TeacherClient.progress_bar`: queries per second, budget left).
      offset: the index of ``images[0]`` in the whole set when ``images`` is one worker's shard:
        image i goes toward the same pool images as in an unsharded search (``bd`` distances are
        then the same; ``mbd``'s random directions are not).

    Returns:
      float64 [n, K] distances (inf toward a class no pool image has, and for the own class).
    """
    shape = images.shape
    x_all = images.reshape(len(images), -1).astype(np.float32)
    search = _Search(x_all, pool.reshape(len(pool), -1).astype(np.float32), np.asarray(labels),
                     _direction_order(pool_labels, num_classes, seed), num_classes, offset,
                     lambda flat, name: np.asarray(top1(flat.reshape(-1, *shape[1:]), name)),
                     config, seed, stage)
    state = _State.resume(state_path, len(search.pair_image))
    pending = np.flatnonzero((state.next_direction < config.num_directions)
                             | ((config.search == "mbd") & np.isnan(state.refined)))
    bar = _progress_bar(len(pending), progress)
    for start in range(0, len(pending), config.chunk_pairs):
        chunk = pending[start:start + config.chunk_pairs]
        search.run_chunk(state, chunk)
        _save(state, state_path)
        if bar is not None:
            bar.add(len(chunk))
    distances = np.full((len(images), num_classes), np.inf)
    found = state.refined if config.search == "mbd" else state.best
    distances[search.pair_image, search.pair_target] = found
    return distances


class _Search:
    """One search's fixed parts (images, pool, pairs, direction order, teacher, config) and the step
    that advances a chunk of pairs to the end: the remaining ``bd`` directions, then for ``mbd``
    the Sign-OPT refinement."""

    def __init__(self, x_all, flat_pool, labels, order, num_classes, offset, top1, config, seed,
                 stage):
        self.x_all, self.flat_pool, self.order, self.top1 = x_all, flat_pool, order, top1
        self.config, self.seed, self.stage = config, seed, stage
        self.pair_image, self.pair_target = _pairs(labels, num_classes)
        self.spread = self.pair_image + offset  # Which pool image a pair goes toward.

    def run_chunk(self, state: _State, chunk: np.ndarray) -> None:
        """Advances the pairs ``chunk`` (int [c], indices into the pairs) in ``state``, in place."""
        config = self.config
        for j in range(int(state.next_direction[chunk].min()), config.num_directions):
            rows = chunk[state.next_direction[chunk] <= j]
            spent = np.zeros(len(rows), np.int64)
            toward = _toward(self.flat_pool, self.order, self.pair_target[rows], self.spread[rows], j)
            best, improved = _one_direction(self.top1, self.x_all[self.pair_image[rows]], toward,
                                            self.pair_target[rows], state.best[rows],
                                            config.tolerance, self.stage, spent)
            state.best[rows], state.queries[rows] = best, state.queries[rows] + spent
            state.best_direction[rows[improved]] = j
            state.next_direction[rows] = j + 1
            state.refined[rows] = np.nan  # A refinement of fewer directions is stale.
        if config.search == "mbd":
            rows = chunk[np.isnan(state.refined[chunk])]
            directions = _best_directions(self.flat_pool, self.order, self.pair_target[rows],
                                          self.pair_image[rows], self.spread[rows], self.x_all,
                                          state.best_direction[rows])
            spent = np.zeros(len(rows), np.int64)
            state.refined[rows] = signopt.refine_distances(
                self.x_all[self.pair_image[rows]], self.pair_target[rows], directions,
                state.best[rows], self.top1, config, [self.seed, int(rows[0]) if len(rows) else 0],
                self.stage, spent)[0]
            state.queries[rows] += spent


def _save(state: _State, path: str | None) -> None:
    if path:
        state.save(path)


def _best_directions(flat_pool, order, pair_target, pair_image, spread, x_all,
                     best_direction) -> np.ndarray:
    """The unit direction of each pair's best ``bd`` distance (zeros where none was found)."""
    directions = np.zeros((len(pair_image), x_all.shape[1]), np.float32)
    for j in np.unique(best_direction[best_direction >= 0]):
        rows = np.flatnonzero(best_direction == j)
        toward = _toward(flat_pool, order, pair_target[rows], spread[rows], int(j))
        directions[rows] = signopt._unit(toward - x_all[pair_image[rows]])
    return directions


def _direction_order(pool_labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class, the pool indices the teacher labels that class, in a seeded random order."""
    rng = np.random.default_rng([seed, 2021])
    pool_labels = np.asarray(pool_labels).reshape(-1)
    return [rng.permutation(np.flatnonzero(pool_labels == k)) for k in range(num_classes)]


def _toward(flat_pool: np.ndarray, order: list[np.ndarray], pair_target: np.ndarray,
            spread: np.ndarray, j: int) -> np.ndarray:
    """The pool image each pair goes toward in direction j (NaN rows where its class has fewer than
    j + 1 images: no direction is tried twice): pair p takes its class's
    ((image index + j) mod count)-th image, so the images of one direction spread over the pool."""
    toward = np.full((len(pair_target), flat_pool.shape[1]), np.nan, np.float32)
    for k, members in enumerate(order):
        rows = np.flatnonzero(pair_target == k)
        if j < len(members) and len(rows):
            toward[rows] = flat_pool[members[(spread[rows] + j) % len(members)]]
    return toward


def _progress_bar(total: int, progress):
    """``progress(total, "pair")`` where ``progress`` is a bar factory (the teacher's
    ``progress_bar``: queries per second, budget left), a plain bar over pairs where it is True,
    else None."""
    if not progress or total <= 0:
        return None
    if callable(progress):
        return progress(total, "pair")
    from tfkd.teacher import account  # noqa: PLC0415

    return account.QueryProgress(total, "pair")


# ------------------------------------------------------------------ mbd: the Sign-OPT refinement


