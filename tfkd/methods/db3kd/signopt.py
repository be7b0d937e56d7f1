"""``db3kd.search=mbd``: the Sign-OPT refinement of the boundary distances (Cheng et al., ICLR 2020;
DB3KD, Wang, ICML 2021, §3.3): from the search's best direction, sign-gradient steps on the
direction's boundary distance, each estimated from the teacher's top-1 answers."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from tfkd.methods.db3kd import boundary

_LOCAL_STEPS = 1000  # A local search's 1% grows or shrinks before it gives up.


_GIVE_UP_DISTANCE = 100.0  # A local search that grows past this gives up (inf).


_MIN_BETA = 1e-8  # A pair whose smoothing beta falls below this stops.


_BETA_TOLERANCE = 500  # A local search's bisection tolerance is beta / this.


def _probe(top1: Callable, x: np.ndarray, theta: np.ndarray, lam: np.ndarray, stage: str):
    """The teacher's classes at x + λ θ, clipped to the pixel range [0, 1] (as the reference code
    clamps every query)."""
    return top1(np.clip(x + lam[:, None] * theta, 0.0, 1.0), stage)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _local_search(top1, x, theta, target, start, tolerance, stage) -> tuple[np.ndarray, np.ndarray]:
    """The distance along unit ``theta`` to the first point labelled ``target``, searched near
    ``start`` (the reference's ``fine_grained_binary_search_local_targeted``): grow by 1% until the
    label is target (given up past ``_GIVE_UP_DISTANCE`` or after ``_LOCAL_STEPS`` grows: inf), or
    shrink by 1% while it is (at most ``_LOCAL_STEPS`` times), then bisect to ``tolerance``.
    Returns (distances, queries per pair)."""
    queries = np.ones(len(x), np.int64)
    hit = boundary.reached(_probe(top1, x, theta, start, stage), target)
    hi, lo = start.copy(), start.copy()
    grow, shrink = np.flatnonzero(~hit), np.flatnonzero(hit)
    for _ in range(_LOCAL_STEPS):
        if not len(grow):
            break
        hi[grow] *= 1.01
        queries[grow] += 1
        done = boundary.reached(_probe(top1, x[grow], theta[grow], hi[grow], stage), target[grow])
        hi[grow[(~done) & (hi[grow] > _GIVE_UP_DISTANCE)]] = np.inf
        grow = grow[(~done) & np.isfinite(hi[grow])]
    hi[grow] = np.inf  # Still not across after every grow.
    for _ in range(_LOCAL_STEPS):
        if not len(shrink):
            break
        lo[shrink] *= 0.99
        queries[shrink] += 1
        still = boundary.reached(_probe(top1, x[shrink], theta[shrink], lo[shrink], stage), target[shrink])
        hi[shrink[still]] = lo[shrink[still]]
        shrink = shrink[still]
    tolerance = np.broadcast_to(tolerance, hi.shape)
    active = np.flatnonzero(np.isfinite(hi) & (hi - lo > tolerance))
    while len(active):
        mid = (lo[active] + hi[active]) / 2
        queries[active] += 1
        on = boundary.reached(_probe(top1, x[active], theta[active], mid, stage), target[active])
        hi[active[on]], lo[active[~on]] = mid[on], mid[~on]
        active = active[hi[active] - lo[active] > tolerance[active]]
    return hi, queries


def _sign_gradient(top1, x, theta, g, target, beta, k, rng, stage) -> np.ndarray:
    """Sign-OPT's gradient estimate: sum over k random unit directions u of sign · u, where the sign
    is -1 when the point at distance g along normalize(theta + beta u) is labelled target (the
    distance decreases that way) and +1 otherwise; one query per pair and direction."""
    grad = np.zeros_like(theta)
    for _ in range(k):
        u = _unit(rng.standard_normal(theta.shape).astype(theta.dtype)) * beta[:, None]
        on = boundary.reached(_probe(top1, x, _unit(theta + u), g, stage), target)
        grad += np.where(on, -1.0, 1.0)[:, None] * u
    return grad


def _sign_opt_step(top1, x, theta, g, target, state, config, rng, stage):
    """One Sign-OPT iteration of every pair together: a sign-gradient estimate, then a line search on
    the step (doubled while it improves, else quartered until it does). Updates ``theta``, ``g``,
    ``state`` (alpha, beta, queries) in place for the pairs given."""
    alpha, beta, queries = state["alpha"], state["beta"], state["queries"]
    grad = _sign_gradient(top1, x, theta, g, target, beta, config.mbd_directions, rng, stage)
    queries += config.mbd_directions
    improved = np.zeros(len(x), bool)
    for factor, trials in ((2.0, boundary._STEP_TRIALS), (0.25, boundary._STEP_TRIALS)):
        trying = np.flatnonzero(~improved) if factor < 1 else np.arange(len(x))
        for _ in range(trials):
            if not len(trying):
                break
            if factor < 1:
                alpha[trying] *= factor
            new_theta = _unit(theta[trying] - alpha[trying, None] * grad[trying])
            new_g, spent = _local_search(top1, x[trying], new_theta, target[trying], g[trying],
                                         beta[trying] / _BETA_TOLERANCE, stage)
            queries[trying] += spent
            better = new_g < g[trying]
            theta[trying[better]], g[trying[better]] = new_theta[better], new_g[better]
            improved[trying[better]] = True
            if factor > 1:
                alpha[trying] *= factor
                trying = trying[better]
            else:
                trying = trying[~better]
    stuck = alpha < 1e-4
    alpha[stuck], beta[stuck] = 1.0, beta[stuck] * 0.1


def refine_distances(images: np.ndarray, targets: np.ndarray, directions: np.ndarray,
                     distances: np.ndarray, top1: Callable, config: boundary.BoundaryConfig, seed=0,
                     stage: str = "db3kd_search", spent: np.ndarray | None = None) -> np.ndarray:
    """The ``mbd`` refinement (Sign-OPT, Cheng et al. 2020, as DB3KD's ``MinimalBoundaryDist``):
    starting from each pair's ``bd`` direction and distance, moves the direction to shorten the
    distance to the boundary toward the target class until the pair's query budget is spent.

    Args:
      images: float32 [P, D] flattened, one row per pair; targets: int [P] (-1 - y: untargeted,
        any class but y; see :func:`reached`).
      directions: float32 [P, D] unit directions of the ``bd`` distances; distances: float [P]
        (pairs with inf are left as they are).
      top1: as :func:`boundary_distances`.
      config: ``mbd_queries`` per pair, ``mbd_directions`` per gradient estimate.
      seed: an int or a list of ints (``numpy.random.default_rng``'s seed sequence).
      spent: int64 [P]; each pair's queries are added to it when given.

    Returns:
      (float64 [P] distances, each at most its start; float32 [P, D] their unit directions).
    """
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 2020])
    theta, g = directions.astype(np.float32).copy(), distances.astype(np.float64).copy()
    state = {"alpha": np.full(len(g), 0.2), "beta": np.full(len(g), 0.001),
             "queries": np.zeros(len(g), np.int64)}
    active = np.flatnonzero(np.isfinite(g))
    while len(active):
        sub = {k: v[active] for k, v in state.items()}
        t, gg = theta[active], g[active]
        _sign_opt_step(top1, images[active], t, gg, targets[active], sub, config, rng, stage)
        theta[active], g[active] = t, gg
        for k in state:
            state[k][active] = sub[k]
        active = active[(state["queries"][active] < config.mbd_queries)
                        & (state["beta"][active] >= _MIN_BETA)]
    if spent is not None:
        spent += state["queries"]
    return g, theta


def refine_queries(config: boundary.BoundaryConfig) -> int:
    """An upper bound on one pair's :func:`refine_distances` queries: ``mbd_queries``, and the
    last iteration's overshoot (it starts below the budget): ``mbd_directions`` probes and up to
    2 × ``_STEP_TRIALS`` local searches, each one probe, ``_LOCAL_STEPS`` grows or shrinks and a
    bisection to beta / ``_BETA_TOLERANCE`` (beta >= ``_MIN_BETA``) of an interval under 1.01 ×
    ``_GIVE_UP_DISTANCE`` (a shrink's is 1% of its start distance, below that for any start
    under 10^4)."""
    interval = 1.01 * _GIVE_UP_DISTANCE
    bisection = math.ceil(math.log2(interval * _BETA_TOLERANCE / _MIN_BETA)) + 1
    local = 1 + _LOCAL_STEPS + bisection
    return config.mbd_queries + config.mbd_directions + 2 * boundary._STEP_TRIALS * local
