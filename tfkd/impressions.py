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
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

BETAS = (1.0, 0.1)
PAPER_COUNTS = {"mnist": 24_000, "fashion_mnist": 48_000, "cifar10": 40_000}
"""The paper's number of impressions per dataset (its Table 1-3 settings)."""


@dataclasses.dataclass(frozen=True)
class ImpressionConfig:
    """The Data Impression search (defaults: the paper's and the reference code's).

    Attributes:
      count: impressions in all, split evenly over the classes and the betas (the paper: 24,000 for
        MNIST, 48,000 for Fashion-MNIST, 40,000 for CIFAR-10).
      iterations: Adam steps per batch (1,500).
      batch_size: impressions optimised together (100).
      learning_rate: Adam's, on pixels in [0, 1] (1e-3).
      temperature: T of the teacher's softmax, in the search and in the stored targets (20).
      betas: the Dirichlet scales, each given an equal share (1.0 and 0.1).
      final_layer: the name of the final layer's weight variable in the teacher's SavedModel
        (e.g. ``logits/kernel``); None finds the one variable of shape [features, K].
    """

    count: int = 48_000
    iterations: int = 1500
    batch_size: int = 100
    learning_rate: float = 1e-3
    temperature: float = 20.0
    betas: tuple[float, ...] = BETAS
    final_layer: str | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first field out of range."""
        for name in ("count", "iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"zskd.{name}={getattr(self, name)}: expected >= 1")
        for name in ("learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"zskd.{name}={getattr(self, name)}: expected > 0")
        if not self.betas or min(self.betas) <= 0:
            raise ValueError(f"zskd.betas={self.betas}: expected one or more values > 0")


def class_similarity(weights: np.ndarray) -> np.ndarray:
    """The class similarity matrix of ZSKD Eq. 1.

    Args:
      weights: float [F, K], the teacher's final-layer weights (features x classes), K >= 2.

    Returns:
      float32 [K, K], symmetric, min-max normalised over the whole matrix to [0, 1] (the diagonal,
      each class with itself, is 1).

    Raises:
      ValueError: not a 2-D matrix with at least 2 columns, or a column of zeros.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"weights: expected [features, classes >= 2], got shape {w.shape}")
    norms = np.linalg.norm(w, axis=0)
    if (norms == 0).any():
        raise ValueError(f"weights: class columns {np.flatnonzero(norms == 0).tolist()} are all "
                         f"zeros; expected the trained final layer")
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
      ValueError: a class out of range, or β <= 0.
    """
    similarity = np.asarray(similarity, np.float64)
    classes = np.asarray(classes)
    k = similarity.shape[0]
    if classes.size and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(f"classes: expected ids in [0, {k}), got {classes.min()}..{classes.max()}")
    if beta <= 0:
        raise ValueError(f"beta={beta}: expected > 0")
    low = similarity.min(axis=1, keepdims=True)
    span = np.maximum(similarity.max(axis=1, keepdims=True) - low, 1e-12)
    concentration = beta * (similarity - low) / span + 1e-4
    rows = rng.gamma(concentration[classes])  # Dirichlet = normalised independent Gammas.
    return (rows / rows.sum(axis=1, keepdims=True)).astype(np.float32)


def target_plan(num_classes: int, config: ImpressionConfig) -> list[tuple[int, float]]:
    """(class, β) of each batch, in order: every class under every β, batches spread evenly (the
    count is rounded down to whole batches per class and β)."""
    per_cell = config.count // (num_classes * len(config.betas) * config.batch_size)
    if per_cell < 1:
        raise ValueError(f"zskd.count={config.count}: expected at least one batch of "
                         f"{config.batch_size} per class and beta "
                         f"({num_classes * len(config.betas) * config.batch_size})")
    return [(k, beta) for beta in config.betas for k in range(num_classes) for _ in range(per_cell)]


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
    """
    temperature = tf.constant(config.temperature, tf.float32)
    lr = tf.constant(config.learning_rate, tf.float32)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-7

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
            t = tf.cast(i + 1, tf.float32)
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * tf.square(grad)
            step = lr * tf.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            images = tf.clip_by_value(images - step * m / (tf.sqrt(v) + epsilon), 0.0, 1.0)
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
      config: the search.
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
    strategy = strategy or tf.distribute.get_strategy()
    plan = target_plan(similarity.shape[0], config)
    done = _State.resume(state_path)
    search = make_search(logits_fn, tuple(image_shape), config)
    bar = _progress(len(plan), done.batches(config.batch_size), progress)
    replicas = strategy.num_replicas_in_sync
    while (first := done.batches(config.batch_size)) < len(plan):
        batches = [min(first + r, len(plan) - 1) for r in range(replicas)]  # Pads the last round.
        draws = [_draw(similarity, plan[i], i, seed, image_shape, config) for i in batches]
        images, soft, losses = _round(strategy, search, draws)
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


def _round(strategy, search, draws):
    """Each replica searches its own batch; returns (images, soft targets) of every batch in order
    and the losses float32 [replicas, iterations]."""
    noise = np.stack([d[0] for d in draws])
    targets = np.stack([d[1] for d in draws])
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: (tf.constant(noise[ctx.replica_id_in_sync_group]),
                     tf.constant(targets[ctx.replica_id_in_sync_group])))
    out = strategy.run(search, args=values)
    images, soft, losses = (strategy.gather(t, axis=0).numpy() for t in out)
    return images, soft, losses.reshape(len(draws), -1)


def _progress(total: int, done: int, progress: bool):
    if not progress:
        return None
    import keras

    bar = keras.utils.Progbar(total, unit_name="batch")
    bar.update(done)
    return bar


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
        if path:
            tmp = path + ".tmp.npz"
            np.savez(tmp, **dataclasses.asdict(self))
            os.replace(tmp, path)

    @classmethod
    def resume(cls, path: str | None) -> "_State":
        if not (path and os.path.exists(path)):
            return cls()
        with np.load(path) as f:
            state = cls(**{k: f[k] for k in f})
        logging.info("Data Impressions: resuming with %d made (%s)", len(state.classes), path)
        return state


class SavedModelTeacher:
    """A teacher's SavedModel loaded in-process, for the methods that need its weights and
    gradients (white-box ZSKD): the same version directory a TF Serving base path holds.

    Args:
      version_dir: a SavedModel directory (``saved_model.pb``).
      signature: the signature to call (``serving_default``).
      input_key: its image input, float32 [b, H, W, C] in [0, 1].

    Logits: the signature's ``logits`` output if it has one, else the log of its ``probabilities``
    (log-probabilities differ from the logits by a per-row constant, so softmax(· / T) is the same).

    Raises:
      ValueError: no such signature or input, or neither output (the message names what is there).
    """

    def __init__(self, version_dir: str, signature: str = "serving_default",
                 input_key: str = "images"):
        self.version_dir = version_dir
        self._loaded = tf.saved_model.load(version_dir)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{version_dir}: no signature {signature!r} "
                             f"(has {sorted(self._loaded.signatures)})")
        self._fn = self._loaded.signatures[signature]
        inputs = self._fn.structured_input_signature[1]
        if input_key not in inputs:
            raise ValueError(f"{version_dir}: signature {signature!r} has no input {input_key!r} "
                             f"(has {sorted(inputs)})")
        self.input_key = input_key
        self.image_shape = tuple(inputs[input_key].shape[1:])
        outputs = self._fn.structured_outputs
        self.output_key = next((k for k in ("logits", "probabilities") if k in outputs), None)
        if self.output_key is None:
            raise ValueError(f"{version_dir}: signature {signature!r} has neither a 'logits' nor a "
                             f"'probabilities' output (has {sorted(outputs)})")
        self.num_classes = int(outputs[self.output_key].shape[-1])

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [b, K] logits (or log-probabilities) of float32 [b, H, W, C] images in [0, 1];
        differentiable with respect to the images."""
        out = self._fn(**{self.input_key: images})[self.output_key]
        if self.output_key == "logits":
            return out
        return tf.math.log(tf.maximum(out, 1e-30))

    def final_layer_weights(self, variable: str | None = None) -> np.ndarray:
        """The final layer's weights float32 [F, K]: the one 2-D variable of shape [*, K] the
        signature uses, or the one named ``variable`` (``--zskd_final_layer``).

        Raises:
          ValueError: no such variable, none of shape [*, K], or several (the message lists them
            and names the flag).
        """
        found = {v.name.split(":")[0]: v for v in self._fn.variables}
        if variable is not None:
            if variable.split(":")[0] not in found:
                raise ValueError(f"zskd final layer {variable!r}: not a variable of "
                                 f"{self.version_dir} (has {sorted(found)})")
            weights = found[variable.split(":")[0]].numpy()
        else:
            candidates = [n for n, v in found.items()
                          if len(v.shape) == 2 and v.shape[-1] == self.num_classes]
            if len(candidates) != 1:
                raise ValueError(
                    f"{self.version_dir}: {len(candidates)} variables of shape [features, "
                    f"{self.num_classes}] ({candidates}); name the final layer's with "
                    f"--zskd_final_layer")
            weights = found[candidates[0]].numpy()
        if weights.ndim != 2 or weights.shape[-1] != self.num_classes:
            raise ValueError(f"zskd final layer {variable!r}: shape {weights.shape}, expected "
                             f"[features, {self.num_classes}]")
        return weights.astype(np.float32)
