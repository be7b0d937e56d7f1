"""Black-box Data Impressions (``zskd_blackbox``): ZSKD with only the TF Serving endpoint, the image
gradient estimated from the teacher's answers (zeroth-order, antithetic probes on a coarse grid;
AutoZOOM, Tu et al., AAAI 2019, §3.3)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from tfkd import errors
from tfkd import fs
from tfkd.methods import noise
from tfkd.methods.zskd import impressions


@dataclasses.dataclass(frozen=True)
class ZerothOrderConfig:
    """How ``zskd_blackbox`` estimates the image gradient from the teacher's answers alone.

    Attributes:
      directions: q, antithetic direction pairs per image and step: 2q probes (queries) each.
      sigma: σ, the probe radius in pixel units (pixels in [0, 1]; each coarse cell of a direction
        is N(0, 1), so a probe moves a pixel by about σ).
      resolution: r, directions are drawn on an r x r grid per channel and bilinearly upsampled to
        the image (r = the image's side: full dimension). A coarse grid lowers the estimate's
        variance at the cost of detail (AutoZOOM, Tu et al., AAAI 2019, §3.3).
    """

    directions: int = 10
    sigma: float = 0.05
    resolution: int = 14

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        for name in ("directions", "resolution"):
            if getattr(self, name) < 1:
                raise errors.ConfigError(f"zskd_blackbox.{name}={getattr(self, name)}: "
                                         "expected >= 1")
        if not 0 < self.sigma <= 1:
            raise errors.ConfigError(f"zskd_blackbox.sigma={self.sigma}: expected in (0, 1] "
                                     "(pixel units)")

    @property
    def probes_per_step(self) -> int:
        """Queries per image and step: 2q."""
        return 2 * self.directions


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) float32 [..., K] of teacher probabilities float [..., K]: the teacher's
    softmax at T, exactly (log p is the logits less a per-row constant) while no probability
    underflows: p is floored at 1e-45 (float32's smallest), so a class the teacher puts more than
    ~100 nats below its top one reads as that far below."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-45)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def probe_loss(probabilities: np.ndarray, targets: np.ndarray, temperature: float) -> np.ndarray:
    """CE(targets, softmax(log p / T)) float32 [...] (nats) of probabilities float [..., K] and
    targets float [..., K] (broadcast): ZSKD Eq. 2's loss, from the teacher's answers."""
    return -np.sum(targets * np.log(np.maximum(tempered(probabilities, temperature), 1e-30)),
                   axis=-1).astype(np.float32)


def estimate_similarity(targets: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """The class similarity of a black-box teacher, from its answers on impressions made so far.

    M[k] = the mean stored target (the teacher's softmax at T) of the impressions made for class
    k; C = (M + Mᵀ) / 2, min-max normalised over the matrix like :func:`class_similarity`. A class
    with no impression yet keeps the identity row (similar to itself only). With no impression at
    all: the identity (its Dirichlet targets are near one-hot).

    Args:
      targets: float [n, K], rows on the simplex. classes: int [n] in [0, K). num_classes: K.

    Returns:
      float32 [K, K] in [0, 1], symmetric.
    """
    mean = np.eye(num_classes)
    targets, classes = np.asarray(targets, np.float64), np.asarray(classes)
    for k in range(num_classes):  # Once per round, K classes: not a hot path.
        if (classes == k).any():
            mean[k] = targets[classes == k].mean(axis=0)
    sym = (mean + mean.T) / 2
    low, high = sym.min(), sym.max()
    return ((sym - low) / max(high - low, 1e-12)).astype(np.float32)


def estimate_gradient(probe: Callable, images: np.ndarray, targets: np.ndarray,
                      temperature: float, zo: ZerothOrderConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The antithetic Gaussian estimate of ∇ₓ CE(y, softmax(teacher logits(x) / T)).

    ĝ = 1/(2σq) Σⱼ [L(x + σuⱼ) − L(x − σuⱼ)] uⱼ (Nesterov & Spokoiny 2017, Eq. 2.3 with antithetic
    pairs, as NES, Ilyas et al., ICML 2018, Algorithm 1); probes are clipped to [0, 1].

    Args:
      probe: ``probe(float32 [m, H, W, C] in [0, 1]) -> float32 [m, K]``, the teacher's
        probabilities; called once with m = 2q·n (every call is charged by the caller's account).
      images: float32 [n, H, W, C] in [0, 1]. targets: float32 [n, K] on the simplex.
      temperature: T. zo: q, σ, the directions' resolution. rng: the directions.

    Returns:
      (ĝ float32 [n, H, W, C], the loss at x estimated as the mean over the probes float32 [n]).
    """
    n, shape = len(images), images.shape[1:]
    u = noise.coarse_directions(rng, (n, zo.directions), shape, zo.resolution)
    x = images[:, None]
    probes = np.concatenate([np.clip(x + zo.sigma * u, 0, 1), np.clip(x - zo.sigma * u, 0, 1)],
                            axis=1).reshape(-1, *shape)
    answers = probe(probes).reshape(n, 2, zo.directions, -1)
    loss = probe_loss(answers, targets[:, None, None], temperature)  # [n, 2, q]
    slope = (loss[:, 0] - loss[:, 1]) / (2 * zo.sigma)  # [n, q]
    grad = np.einsum("nq,nq...->n...", slope, u) / zo.directions
    return grad.astype(np.float32), loss.mean(axis=(1, 2))


@dataclasses.dataclass
class _Round:
    """A black-box round in progress: its images, targets and Adam moments after ``step`` steps."""

    index: int
    step: int
    images: np.ndarray
    targets: np.ndarray
    m: np.ndarray
    v: np.ndarray
    first_loss: np.ndarray
    loss: np.ndarray

    def save(self, path: str | None) -> None:
        impressions._save_fields(self, path)

    @classmethod
    def resume(cls, path: str | None, index: int) -> "_Round | None":
        if not (path and fs.exists(path)):
            return None
        with fs.load_npz(path) as f:
            current = cls(**{k: f[k] for k in f})
        return current if int(current.index) == index else None


def blackbox_queries_left(num_classes: int, config: impressions.ImpressionConfig, zo: ZerothOrderConfig,
                          state_path: str | None = None) -> tuple[int, int]:
    """(probes, labels): the queries :func:`synthesize_blackbox` still sends, from its persisted
    state: 2q per image and step of every step not yet taken, and the final images' labels (an
    upper bound: the ledger may know some)."""
    config.check_resolved("blackbox_queries_left", ("count", "iterations"))
    plan = impressions.target_plan(num_classes, config)
    cells, b = num_classes * len(config.betas), config.batch_size
    first = impressions._State.resume(state_path).batches(b)
    current = _Round.resume(_round_path(state_path), first // cells)
    steps = (len(plan) - first) // cells * config.iterations - (current.step if current else 0)
    return int(steps * cells * b * zo.probes_per_step), (len(plan) - first) * b


def synthesize_blackbox(probe: Callable, label: Callable, image_shape: tuple, num_classes: int,
                        config: impressions.ImpressionConfig, zo: ZerothOrderConfig, seed: int,
                        state_path: str | None = None, progress: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Data Impressions of a teacher reached only through its answers (tfkd's ``zskd_blackbox``).

    ZSKD's targets and loss (:func:`synthesize`) with the weights and gradients replaced by
    estimates from the answers: round r makes one batch of every (β, class) cell
    (:func:`target_plan`), its Dirichlet targets drawn from the class similarity estimated on
    rounds 0..r-1 (:func:`estimate_similarity`; the identity for round 0), its images moved by Adam
    on :func:`estimate_gradient` for ``config.iterations`` steps, then labelled. The round in
    progress is saved after every step and the impressions after every round, so a killed run
    loses no answered probe and asks no finished round again.

    Args:
      probe: ``probe(float32 [m, H, W, C]) -> float32 [m, K]`` the teacher's probabilities, sent
        every time (``TeacherClient.probe``).
      label: the same for the final images, looked up in the ledger first
        (``TeacherClient.soft_labels``).
      image_shape: (H, W, C). num_classes: K.
      config: count, iterations, batch size, learning rate, T, betas. zo: the gradient estimate.
      seed: noise, Dirichlet targets and directions (batch i's from (seed, i), step t of round r's
        from (seed, r, t)).
      state_path: an ``.npz`` of the impressions made (the round in progress beside it); None
        keeps nothing.
      progress: a Keras progress bar over steps.

    Returns:
      As :func:`synthesize`: (images float32 [n, H, W, C] in [0, 1], targets float32 [n, K] (the
      teacher's softmax at T on each image), classes int64 [n], last losses float32 [n / batch]).

    Raises:
      What ``probe`` and ``label`` raise (TeacherError, QueryBudgetExceeded): what was answered is
      kept.
      ValueError: ``config``'s count, iterations or learning rate unset (the caller's bug).
    """
    config.check_resolved("synthesize_blackbox", ("count", "iterations", "learning_rate"))
    plan = impressions.target_plan(num_classes, config)
    cells = num_classes * len(config.betas)
    done = impressions._State.resume(state_path)
    bar = impressions._progress(len(plan) // cells * config.iterations,
                    done.batches(config.batch_size) // cells * config.iterations, progress,
                    "step")
    while (first := done.batches(config.batch_size)) < len(plan):
        index = first // cells
        current = (_Round.resume(_round_path(state_path), index)
                   or _start_round(done, plan, index, cells, image_shape, num_classes, config, seed))
        if bar is not None:
            bar.update(index * config.iterations + int(current.step))
        while current.step < config.iterations:
            _blackbox_step(current, probe, config, zo, seed)
            current.save(_round_path(state_path))
            if bar is not None:
                bar.add(1, [("loss", float(current.loss.mean()))])
        soft = tempered(label(current.images), config.temperature)
        batch_losses = np.stack([current.first_loss, current.loss], axis=1).reshape(
            cells, config.batch_size, 2).mean(axis=1)  # [batch, (first, last)]
        done.add(current.images, soft, plan, list(range(first, first + cells)), batch_losses,
                 config.batch_size)
        done.save(state_path)
    return done.images, done.targets, done.classes, done.last_loss


def _round_path(state_path: str | None) -> str | None:
    return None if state_path is None else state_path[:-len(".npz")] + "-round.npz"


def _start_round(done, plan, index, cells, image_shape, num_classes, config, seed) -> _Round:
    """Round ``index``'s noise and Dirichlet targets, from the similarity of earlier rounds."""
    similarity = (estimate_similarity(done.targets, done.classes, num_classes)
                  if done.targets is not None else np.eye(num_classes, dtype=np.float32))
    draws = [impressions._draw(similarity, plan[i], i, seed, image_shape, config)
             for i in range(index * cells, (index + 1) * cells)]
    images = np.concatenate([d[0] for d in draws])
    n = len(images)
    return _Round(index, 0, images, np.concatenate([d[1] for d in draws]), np.zeros_like(images),
                  np.zeros_like(images), np.zeros(n, np.float32), np.zeros(n, np.float32))


def _blackbox_step(current: _Round, probe, config, zo, seed) -> None:
    """One :func:`adam_step` (the white-box search's update) on the estimated gradient."""
    rng = np.random.default_rng([seed, int(current.index), int(current.step)])
    grad, loss = estimate_gradient(probe, current.images, current.targets, config.temperature, zo,
                                   rng)
    t = int(current.step) + 1
    current.images, current.m, current.v = impressions.adam_step(current.images, current.m, current.v, grad,
                                                     float(t), config.learning_rate, config.pixels)
    if t == 1:
        current.first_loss = loss
    current.loss = loss
    current.step = t
