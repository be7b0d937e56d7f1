"""Data Impressions: images synthesised from a teacher alone, for zero-shot distillation (ZSKD).

ZSKD (Nayak, Mopuri, Shaj, Babu, Chakraborty, "Zero-Shot Knowledge Distillation in Deep Networks",
ICML 2019, §3; reference code github vcl-iisc/ZSKD, read, not copied):

* :func:`class_similarity` (§3.1, Eq. 1): W = the teacher's final-layer weights [F, K]; each class
  column normalised to unit length; C = WᵀW (cosine similarity of the classes); C min-max
  normalised to [0, 1] over the whole matrix.
* :func:`dirichlet_targets` (§3.2): for class k, soft targets y ~ Dir(β · c_k), c_k = row k of C
  rescaled to [0, 1] (plus 1e-4, as the reference, so no concentration is 0); half of the
  impressions with β = 1.0, half with β = 0.1 (the paper's two scales).
* :func:`synthesize` (§3.3, Eq. 2): from uniform noise, minimise CE(y, softmax(teacher logits / T))
  over the image with Adam (lr 1e-3), T = 20, 1,500 iterations, batches of 100; the stored target is
  the teacher's softmax at T on the final image.

Departures from the reference code, and why:

* β = 0.1 is kept. The reference divides C by 10 for the second half, then min-max rescales each row
  inside its Dirichlet sampler, which undoes the division: both halves are drawn with β = 1.
* Each batch starts from fresh noise and a fresh Adam state. The reference re-initialises the noise
  once per class (20 batches of one class continue from the last batch's images) and never resets
  Adam's moments.
* Pixels stay in the teacher's input range [0, 1] by clipping after each step (projected gradient).
  The reference min-max rescales the whole batch to [0, 1] at each step, which couples the images of
  a batch.
* The reference's random rotation and scale placeholders are fed but not wired into its graph (no
  augmentation takes effect); none is applied here.

Black-box (tfkd's own variant, ``zskd_blackbox``; no seed paper has it): :func:`synthesize_blackbox`
keeps the targets and the loss, estimates the class similarity from the teacher's answers
(:func:`estimate_similarity`) and the image gradient from antithetic probes
(:func:`estimate_gradient`), each probe one counted query.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import data
from tfkd import errors
from tfkd import fs

BETAS = (1.0, 0.1)
PIXEL_RULES = ("clip", "rescale")
VIEW_KINDS = ("affine", "mixup")
AFTER_SEARCH = ("student_temperature", "views", "view_kind", "view_rotation", "view_scale",
                "view_shift")
"""The :class:`ImpressionConfig` fields that act after the search (not in its persisted key)."""


PAPER_SEARCH = {"iterations": 1500, "learning_rate": 1e-3}
"""The paper's Adam steps per batch of impressions and its learning rate on pixels in [0, 1]."""

RESOLVED = ("count", "iterations", "learning_rate", "student_temperature", "views", "view_kind")
"""The :class:`ImpressionConfig` fields None leaves to :meth:`ImpressionConfig.resolved`."""

WHITEBOX_CHOICES = {"student_temperature": 1.0, "views": 4, "view_kind": "mixup"}
"""``zskd``'s defaults where tfkd departs from the reference, each chosen on the validation split
(issue 27; RESULTS.md, "ZSKD ablations", seed 0, 12,000 impressions): the student's softmax at
τ = 1 on the stored T = 20 targets (52.22% against 45.82% at τ = T), and 4 MixUp views of each
impression relabelled by the teacher (64.12% against 52.22%)."""

BLACKBOX_DEFAULTS = {"count": 12_000, "iterations": 100, "learning_rate": 0.01}
"""``zskd_blackbox``'s defaults where they differ from the paper's: every step costs 2q queries per
impression (2,400 images x 1,500 steps x 20 probes would be 72 M queries per 2,400 impressions), so
fewer impressions and steps, and a 10x larger Adam step (0.01, chosen on the validation split's
student accuracy over 0.003-0.05: benchmarks/ZERO_SHOT_NOTES.md). :data:`WHITEBOX_CHOICES` were
not measured black-box: the reference's τ = T and no view."""


@dataclasses.dataclass(frozen=True)
class ImpressionConfig:
    """The Data Impression search (defaults: the paper's and the reference code's).

    Attributes:
      count: impressions in all, split evenly over the classes and the betas (the paper's for the
        dataset, :class:`tfkd.data.DatasetSpec`'s ``zskd_impressions``: 24,000 for MNIST, 48,000
        for Fashion-MNIST, 40,000 for CIFAR-10).
      iterations: Adam steps per batch (1,500).
      batch_size: impressions optimised together (100).
      learning_rate: Adam's, on pixels in [0, 1] (1e-3).
      temperature: T of the teacher's softmax, in the search and in the stored targets (20).
      betas: the Dirichlet scales, each given an equal share (1.0 and 0.1).
      final_layer: the name of the final layer's weight variable in the teacher's SavedModel
        (e.g. ``logits/kernel``); None finds the one variable of shape [features, K].
      student_temperature: τ, the temperature of the student's softmax in its loss
        τ² · CE(stored, softmax(z_s / τ)) (``tempered_kd``: the stored targets used as they are,
        its minimum where softmax(z_s / τ) equals them, z_s = (τ / T) z_t; τ = T is the
        reference's, z_s = z_t). Default: 1 for ``zskd`` (:data:`WHITEBOX_CHOICES`), T for
        ``zskd_blackbox``.
      pixels: how pixels are kept in [0, 1] after each Adam step: ``clip`` (each pixel, a
        projected gradient step) or ``rescale`` (each image min-max rescaled to [0, 1]; the
        reference rescales the whole batch, which couples its images).
      views: augmented views of each impression added to the transfer set, each labelled by the
        teacher at T (the reference's ``data_augmentation.py``: scales, shifts, rotations up to
        ±90°, flips, every view relabelled); 0 adds none. Default: 4 MixUp views for ``zskd``
        (:data:`WHITEBOX_CHOICES`), none for ``zskd_blackbox``. White-box they cost no query;
        ``zskd_blackbox`` sends each view once (stage ``label_views``, ledgered).
      view_kind: ``affine`` (a random rotation, zoom, shift and mirror of the impression) or
        ``mixup`` (the impression mixed with another, λ ~ U(0, 1), as FS-BBT's MixUp images).
      view_rotation, view_scale, view_shift: an ``affine`` view's rotation up to ± this many
        degrees, its central zoom (the fraction of the image kept, drawn in [view_scale, 1]) and
        its shift up to ± this fraction of the side; each is also mirrored left-right with
        probability 1/2 (:func:`augmented_views`).

    ``count``, ``iterations``, ``learning_rate``, ``student_temperature``, ``views`` and
    ``view_kind`` left None take the method's defaults (:meth:`resolved`: the paper's and
    :data:`WHITEBOX_CHOICES` for ``zskd``, :data:`BLACKBOX_DEFAULTS` for ``zskd_blackbox``); the
    search refuses them unset (:meth:`check_resolved`).
    """

    count: int | None = None
    iterations: int | None = None
    batch_size: int = 100
    learning_rate: float | None = None
    temperature: float = 20.0
    betas: tuple[float, ...] = BETAS
    final_layer: str | None = None
    student_temperature: float | None = None
    pixels: str = "clip"
    views: int | None = None
    view_kind: str | None = None
    view_rotation: float = 90.0
    view_scale: float = 0.6
    view_shift: float = 0.2

    def resolved(self, dataset: str, blackbox: bool = False) -> "ImpressionConfig":
        """The fields left None filled: with ``blackbox`` from :data:`BLACKBOX_DEFAULTS` (and the
        reference's τ = T, no view), else the paper's (count from ``dataset``'s
        :class:`tfkd.data.DatasetSpec`, ``zskd_impressions``; 1,500 Adam steps at 1e-3) and
        :data:`WHITEBOX_CHOICES`. Idempotent. Raises ConfigError for an unknown ``dataset`` whose
        count is needed."""
        if blackbox:
            base = {**BLACKBOX_DEFAULTS, "student_temperature": self.temperature, "views": 0,
                    "view_kind": "affine"}
        else:
            count = self.count if self.count is not None else data.dataset_spec(dataset).zskd_impressions
            base = {"count": count, **PAPER_SEARCH, **WHITEBOX_CHOICES}
        unset = {k: v for k, v in base.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset) if unset else self

    def check_resolved(self, where: str, names: tuple = RESOLVED) -> "ImpressionConfig":
        """This config, when the fields ``names`` that ``where`` uses are set (:meth:`resolved`
        decides them; the search decides no default of its own).

        Raises:
          ValueError: a field still None (a programming error: the caller resolves first).
        """
        unset = [n for n in names if getattr(self, n) is None]
        if unset:
            raise ValueError(  # Programming error: the method's resolve (DistillConfig.resolved) fills them.
                f"{where}: zskd.{', zskd.'.join(unset)} unset (None); expected a resolved "
                f"ImpressionConfig (ImpressionConfig.resolved or DistillConfig.resolved)")
        return self

    def search(self) -> "ImpressionConfig":
        """This config less what acts after the search (:data:`AFTER_SEARCH`, reset to their
        defaults): the key of the persisted impressions, so that runs differing only in their
        views or the student's temperature share one search."""
        return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                            if f.name in AFTER_SEARCH})

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range (None:
        filled by :meth:`resolved`)."""
        for name in ("count", "iterations", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise errors.ConfigError(f"zskd.{name}={getattr(self, name)}: expected >= 1")
        for name in ("learning_rate", "temperature", "student_temperature"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise errors.ConfigError(f"zskd.{name}={getattr(self, name)}: expected > 0")
        if not self.betas or min(self.betas) <= 0:
            raise errors.ConfigError(f"zskd.betas={self.betas}: expected one or more values > 0")
        if self.pixels not in PIXEL_RULES:
            raise errors.ConfigError(f"zskd.pixels={self.pixels!r}: expected one of {PIXEL_RULES}")
        if self.view_kind is not None and self.view_kind not in VIEW_KINDS:
            raise errors.ConfigError(f"zskd.view_kind={self.view_kind!r}: expected one of "
                                     f"{VIEW_KINDS}")
        if self.views is not None and self.views < 0:
            raise errors.ConfigError(f"zskd.views={self.views}: expected >= 0 (0: none)")
        if not 0 < self.view_scale <= 1 or not 0 <= self.view_shift < 1 or self.view_rotation < 0:
            raise errors.ConfigError(f"zskd.view_scale={self.view_scale}, view_shift="
                                     f"{self.view_shift}, view_rotation={self.view_rotation}: "
                                     "expected scale in (0, 1], shift in [0, 1), rotation >= 0 "
                                     "degrees")


def class_similarity(weights: np.ndarray) -> np.ndarray:
    """The class similarity matrix of ZSKD Eq. 1.

    Args:
      weights: float [F, K], the teacher's final-layer weights (features x classes), K >= 2.

    Returns:
      float32 [K, K], symmetric, min-max normalised over the whole matrix to [0, 1] (the diagonal,
      each class with itself, is 1).

    Raises:
      tfkd.errors.ConfigError: not a 2-D matrix with at least 2 columns, or a column of zeros (the
        teacher's final layer: a one-class or untrained teacher).
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[1] < 2:
        raise errors.ConfigError(f"weights (the teacher's final layer): expected [features, "
                                 f"classes >= 2], got shape {w.shape}")
    norms = np.linalg.norm(w, axis=0)
    if (norms == 0).any():
        raise errors.ConfigError(f"weights (the teacher's final layer): class columns "
                                 f"{np.flatnonzero(norms == 0).tolist()} are all zeros; expected "
                                 "the trained final layer")
    unit = w / norms
    similarity = unit.T @ unit
    low, high = similarity.min(), similarity.max()
    return ((similarity - low) / (high - low)).astype(np.float32)


def dirichlet_targets(similarity: np.ndarray, classes: np.ndarray, beta: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Soft targets y ~ Dir(β · c_k + 1e-4) for each entry k of ``classes`` (ZSKD §3.2).

    Args:
      similarity: float [K, K] from :func:`class_similarity`.
      classes: int [n] in [0, K).
      beta: the concentration scale, > 0 (the paper: 1.0 and 0.1).
      rng: the random generator.

    Returns:
      float32 [n, K], rows on the simplex (sum 1); a smaller β gives sparser rows.

    Raises:
      ValueError: a class out of range, or β <= 0 (the caller's bug: the plan's classes are in
        range and ``zskd.betas`` are checked by :meth:`ImpressionConfig.validate`).
    """
    similarity = np.asarray(similarity, np.float64)
    classes = np.asarray(classes)
    k = similarity.shape[0]
    if classes.size and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(  # Programming error: callers draw classes from target_plan's [0, K).
            f"classes: expected ids in [0, {k}), got {classes.min()}..{classes.max()}")
    if beta <= 0:
        raise ValueError(f"beta={beta}: expected > 0")  # Programming error: zskd.betas validated.
    low = similarity.min(axis=1, keepdims=True)
    span = np.maximum(similarity.max(axis=1, keepdims=True) - low, 1e-12)
    concentration = beta * (similarity - low) / span + 1e-4
    rows = rng.gamma(concentration[classes])  # Dirichlet = normalised independent Gammas.
    return (rows / rows.sum(axis=1, keepdims=True)).astype(np.float32)


def target_plan(num_classes: int, config: ImpressionConfig) -> list[tuple[int, float]]:
    """(class, β) of each batch, in order: rounds of one batch of every (β, class) cell, as many
    rounds as the count allows (rounded down to whole rounds). The black-box search re-estimates
    the class similarity between rounds. ``config.count`` must be set (ValueError otherwise)."""
    config.check_resolved("target_plan", ("count",))
    per_cell = config.count // (num_classes * len(config.betas) * config.batch_size)
    if per_cell < 1:
        raise errors.ConfigError(f"zskd.count={config.count}: expected at least one batch of "
                                 f"{config.batch_size} per class and beta "
                                 f"({num_classes * len(config.betas) * config.batch_size})")
    return [(k, beta) for _ in range(per_cell) for beta in config.betas for k in range(num_classes)]


def adam_step(x, m, v, grad, t, learning_rate: float, pixels: str = "clip"):
    """One Adam step (Kingma & Ba 2015, Algorithm 1; ``keras.optimizers.Adam``'s β1 0.9, β2 0.999,
    ε 1e-7) on pixels, then back into [0, 1] by ``pixels`` (``clip`` or per-image ``rescale``,
    :data:`PIXEL_RULES`): returns (x, m, v). Written with arithmetic only, so the same update runs
    on tensors inside the white-box search's compiled loop and on NumPy arrays in the black-box
    one; ``t`` is the step number from 1 (a float or float tensor)."""
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad * grad
    step = learning_rate * (1 - 0.999 ** t) ** 0.5 / (1 - 0.9 ** t)
    x = x - step * m / (v ** 0.5 + 1e-7)
    if tf.is_tensor(x):
        return (min_max_rescale(x) if pixels == "rescale" else tf.clip_by_value(x, 0.0, 1.0)), m, v
    x = min_max_rescale(x) if pixels == "rescale" else np.clip(x, 0, 1)
    return np.asarray(x, np.float32), m, v


def min_max_rescale(x):
    """Each image of float [b, H, W, C] min-max rescaled to [0, 1] (a constant image to 0);
    tensors or NumPy arrays."""
    lib = tf if tf.is_tensor(x) else np
    axes = tuple(range(1, len(x.shape)))
    low = (tf.reduce_min(x, axes, keepdims=True) if lib is tf else x.min(axes, keepdims=True))
    high = (tf.reduce_max(x, axes, keepdims=True) if lib is tf else x.max(axes, keepdims=True))
    return (x - low) / lib.maximum(high - low, 1e-12)


def make_search(logits_fn: Callable, image_shape: tuple, config: ImpressionConfig):
    """A compiled search of one batch: ``search(noise, targets) -> (images, soft targets, losses)``.

    ``noise`` float32 [b, *image_shape] in [0, 1]; ``targets`` float32 [b, K]. Runs
    ``config.iterations`` Adam steps on CE(targets, softmax(logits_fn(images) / T)) (mean over the
    batch), clipping pixels to [0, 1] after each; returns the final images, the teacher's softmax at
    T on them (the stored targets) and the loss before each step, float32 [iterations].

    Adam (Kingma & Ba 2015, Algorithm 1, with ``keras.optimizers.Adam``'s epsilon 1e-7) is written
    as tensor updates in the loop rather than a Keras optimizer: the search state must be loop
    tensors, not variables, so that under a distribution strategy each replica optimises its own
    batch (a variable made in a MirroredStrategy scope would be one mirrored batch).
    ``tests/test_impressions.py`` checks it step for step against ``keras.optimizers.Adam``.
    ``config.iterations`` and ``learning_rate`` must be set (ValueError otherwise).
    """
    config.check_resolved("make_search", ("iterations", "learning_rate"))
    temperature = tf.constant(config.temperature, tf.float32)

    def loss_and_grad(images, targets):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = logits_fn(images) / temperature
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        return loss, tape.gradient(loss, images)

    @tf.function(input_signature=[tf.TensorSpec([config.batch_size, *image_shape], tf.float32),
                                  tf.TensorSpec([config.batch_size, None], tf.float32)])
    def search(noise, targets):
        images, m, v = noise, tf.zeros_like(noise), tf.zeros_like(noise)
        losses = tf.TensorArray(tf.float32, size=config.iterations)
        for i in tf.range(config.iterations):
            loss, grad = loss_and_grad(images, targets)
            images, m, v = adam_step(images, m, v, grad, tf.cast(i + 1, tf.float32),
                                     config.learning_rate, config.pixels)
            losses = losses.write(i, loss)
        return images, tf.nn.softmax(logits_fn(images) / temperature), losses.stack()

    return search


def synthesize(logits_fn: Callable, image_shape: tuple, similarity: np.ndarray,
               config: ImpressionConfig, seed: int, state_path: str | None = None,
               progress: bool = False, strategy: tf.distribute.Strategy | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data Impressions of a teacher, round after round, persisted after each.

    Each round gives every replica of ``strategy`` its own batch of the plan (:func:`target_plan`);
    batch i's noise and Dirichlet targets come from (seed, i) alone, so the impressions do not
    depend on the number of replicas or on where a killed run resumed.

    Args:
      logits_fn: ``logits_fn(images float32 [b, *image_shape] in [0, 1]) -> float32 [b, K]``, the
        teacher's logits (or log-probabilities: the softmax at T is the same), differentiable.
      image_shape: (H, W, C).
      similarity: float [K, K] from :func:`class_similarity`.
      config: the search, resolved (:meth:`ImpressionConfig.resolved`: its count, iterations and
        learning rate set; ValueError otherwise).
      seed: the noise and the Dirichlet draws.
      state_path: an ``.npz`` the impressions so far are saved to after each round (atomically)
        and resumed from; None keeps nothing.
      progress: a Keras progress bar over batches.
      strategy: default: the current one (one replica).

    Returns:
      (images float32 [n, *image_shape] in [0, 1], targets float32 [n, K] (the teacher's softmax at
      T on each image: the stored soft labels), classes int64 [n] (the class each was drawn
      for), last losses float32 [n / batch]), n = len(:func:`target_plan`) x batch size.
    """
    config.check_resolved("synthesize", ("count", "iterations", "learning_rate"))
    strategy = strategy or tf.distribute.get_strategy()
    plan = target_plan(similarity.shape[0], config)
    done = _State.resume(state_path)
    search = make_search(logits_fn, tuple(image_shape), config)
    # One tf.function around strategy.run, each replica running the search's Python body: given a
    # tf.function with an input signature, MirroredStrategy lifts it around the per-replica call
    # and binds the PerReplica values to that signature (a TypeError).
    distributed = tf.function(lambda noise, targets: strategy.run(
        search.python_function, args=(noise, targets)))
    bar = _progress(len(plan), done.batches(config.batch_size), progress)
    replicas = strategy.num_replicas_in_sync
    while (first := done.batches(config.batch_size)) < len(plan):
        batches = [min(first + r, len(plan) - 1) for r in range(replicas)]  # Pads the last round.
        draws = [_draw(similarity, plan[i], i, seed, image_shape, config) for i in batches]
        images, soft, losses = _round(strategy, distributed, draws)
        keep = len(set(batches))
        done.add(images, soft, plan, batches[:keep], losses, config.batch_size)
        done.save(state_path)
        if bar is not None:
            bar.add(keep, [("loss", float(losses[keep - 1, -1]))])
    return done.images, done.targets, done.classes, done.last_loss


def _draw(similarity, cell, index, seed, image_shape, config):
    """Batch ``index``'s uniform noise and Dirichlet targets, from (seed, index) alone."""
    k, beta = cell
    rng = np.random.default_rng([seed, index])
    targets = dirichlet_targets(similarity, np.full(config.batch_size, k), beta, rng)
    return rng.uniform(size=(config.batch_size, *image_shape)).astype(np.float32), targets


def _round(strategy, distributed, draws):
    """Each replica searches its own batch; returns (images, soft targets) of every batch in order
    and the losses float32 [replicas, iterations]."""
    noise = np.stack([d[0] for d in draws])
    targets = np.stack([d[1] for d in draws])
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: (tf.constant(noise[ctx.replica_id_in_sync_group]),
                     tf.constant(targets[ctx.replica_id_in_sync_group])))
    out = distributed(*values)
    images, soft, losses = (strategy.gather(t, axis=0).numpy() for t in out)
    return images, soft, losses.reshape(len(draws), -1)


def _progress(total: int, done: int, progress: bool, unit: str = "batch"):
    if not progress:
        return None
    import keras

    bar = keras.utils.Progbar(total, unit_name=unit)
    bar.update(done)
    return bar


def _save_fields(state, path: str | None) -> None:
    """A dataclass's array fields to ``path`` (.npz) atomically (temp name, then rename)."""
    if path:
        fs.save_npz(path, **dataclasses.asdict(state))


@dataclasses.dataclass
class _State:
    """The impressions made so far, in plan order."""

    images: np.ndarray | None = None
    targets: np.ndarray | None = None
    classes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    betas: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    first_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    last_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

    def batches(self, batch_size: int) -> int:
        return len(self.classes) // batch_size

    def add(self, images, soft, plan, batches, losses, batch_size) -> None:
        n = len(batches) * batch_size
        self.images = images[:n] if self.images is None else np.concatenate([self.images, images[:n]])
        self.targets = soft[:n] if self.targets is None else np.concatenate([self.targets, soft[:n]])
        self.classes = np.concatenate([self.classes, np.repeat([plan[i][0] for i in batches],
                                                               batch_size)])
        self.betas = np.concatenate([self.betas, np.repeat([plan[i][1] for i in batches],
                                                           batch_size).astype(np.float32)])
        self.first_loss = np.append(self.first_loss, losses[:len(batches), 0])
        self.last_loss = np.append(self.last_loss, losses[:len(batches), -1])

    def save(self, path: str | None) -> None:
        _save_fields(self, path)

    @classmethod
    def resume(cls, path: str | None) -> "_State":
        if not (path and fs.exists(path)):
            return cls()
        with fs.load_npz(path) as f:
            state = cls(**{k: f[k] for k in f})
        logging.info("Data Impressions: resuming with %d made (%s)", len(state.classes), path)
        return state


# --- Black-box Data Impressions (zskd_blackbox): ZSKD with only the TF Serving endpoint. -------------


def config_for(dataset: str, blackbox: bool = False, **fields) -> "ImpressionConfig":
    """The search's settings for ``dataset``: the paper's (count from its
    :class:`tfkd.data.DatasetSpec`), or with ``blackbox`` :data:`BLACKBOX_DEFAULTS`; ``fields``
    that are not None override."""
    return ImpressionConfig(**{k: v for k, v in fields.items() if v is not None}).resolved(
        dataset, blackbox)


# --- Augmented views, each labelled by the teacher (the reference's data_augmentation.py). -------


