"""Synthetic images for FS-BBT: MixUp of the few real images, and a conditional VAE.

FS-BBT (Nguyen et al., ECCV 2022, §3.2-3.3) enlarges N unlabeled images with (a) MixUp images
``λ x_i + (1 - λ) x_j`` and (b) images decoded by a CVAE trained on the N images conditioned on the
teacher's predicted class. Both kinds are then labelled by the black-box teacher. Nothing here talks
to the teacher.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from keras import layers

from tfkd import data
from tfkd import errors

tfd = tfp.distributions


# --------------------------------------------------------------------------------------- MixUp
@dataclasses.dataclass(frozen=True)
class MixUpConfig:
    """MixUp of the N real images (FS-BBT §3.2).

    Attributes:
      num_images: MixUp images to make (kept pairs; dropped near-copies are redrawn).
      alpha: λ ~ Beta(alpha, alpha); the paper uses 1 (λ uniform on [0, 1]).
      low, high: pairs with λ <= low or λ >= high are near-copies of one image and dropped.
      decimals: λ rounded to this many decimals, as the FS-BBT code does (None: no rounding).
    """

    num_images: int = 43_200
    alpha: float = 1.0
    low: float = 0.05
    high: float = 0.95
    decimals: int | None = 2

    def validate(self) -> None:
        """Raises ConfigError naming the first field out of range (``mixup.<field>``): λ's Beta
        needs alpha > 0, and the kept interval (low, high) must hold a λ at ``decimals``'
        rounding, else no pair is ever kept."""
        rounding = 10.0 ** (self.decimals if self.decimals is not None else 12)
        first_kept = (np.floor(self.low * rounding) + 1) / rounding  # The least rounded λ > low.
        errors.check_settings("mixup.", self, [
            ("num_images", self.num_images >= 0, ">= 0"),
            ("alpha", self.alpha > 0, "> 0 (λ ~ Beta(alpha, alpha))"),
            ("low", 0.0 <= self.low < self.high, f"in [0, high={self.high})"),
            ("high", self.high <= 1.0, "<= 1"),
            ("decimals", self.decimals is None or (self.decimals >= 0 and first_kept < self.high),
             f"None or >= 0, leaving a rounded λ in (low={self.low}, high={self.high})"),
        ])


_MIXUP_ROUND = 4096


def mixup_images(images: np.ndarray, config: MixUpConfig, seed: int) -> tuple[np.ndarray, dict]:
    """Makes MixUp images from random pairs of ``images``.

    Args:
      images: float32 [N, H, W, C] in [0, 1], N >= 2.
      config: counts and λ distribution.
      seed: the random seed (pairs and λ).

    Returns:
      (mixed float32 [num_images, H, W, C] in [0, 1], info) where info has int64 ``pairs``
      [num_images, 2], float32 ``lam`` [num_images] in (low, high), and ``num_dropped`` (pairs drawn
      and dropped as near-copies, or with i == j). Pairs are drawn in fixed-size rounds, so a larger
      ``num_images`` extends a smaller one: its first images are the smaller set's, and their
      teacher answers in the ledger are reused.

    Raises:
      tfkd.errors.ConfigError: fewer than 2 images (``num_shots``), or ``config`` out of range
        (:meth:`MixUpConfig.validate`).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) < 2:
        raise errors.ConfigError(f"images: expected float32 [N >= 2, H, W, C] (num_shots >= 2 to "
                                 f"pair), got shape {list(images.shape)}")
    config.validate()
    rng = np.random.default_rng(seed)
    n, want = len(images), config.num_images
    pairs = np.zeros((0, 2), np.int64)
    lams = np.zeros((0,), np.float32)
    dropped = 0
    while len(lams) < want:
        draw = _MIXUP_ROUND  # Independent of num_images: the sets are prefixes of each other.
        i = rng.integers(0, n, draw)
        j = rng.integers(0, n, draw)
        lam = rng.beta(config.alpha, config.alpha, draw)
        if config.decimals is not None:
            lam = np.round(lam, config.decimals)
        keep = (lam > config.low) & (lam < config.high) & (i != j)
        dropped += int(np.sum(~keep))
        pairs = np.concatenate([pairs, np.stack([i[keep], j[keep]], 1)])
        lams = np.concatenate([lams, lam[keep].astype(np.float32)])
    pairs, lams = pairs[:want], lams[:want]
    lam4 = lams[:, None, None, None]
    mixed = lam4 * images[pairs[:, 0]] + (1.0 - lam4) * images[pairs[:, 1]]
    return mixed.astype(np.float32), {"pairs": pairs, "lam": lams, "num_dropped": dropped}


# ----------------------------------------------------------------------------------------- CVAE
@dataclasses.dataclass(frozen=True)
class CVAEConfig:
    """The conditional VAE of FS-BBT (its code's Fashion-MNIST defaults).

    Attributes:
      latent_dim: size of the latent z.
      architecture: ``mlp`` (the FS-BBT code's, for 28x28 grey images), ``conv`` (convolutional
        encoder and transposed-convolution decoder, for CIFAR; H and W divisible by 4) or ``auto``:
        the dataset's (its :class:`tfkd.data.DatasetSpec`'s, set by
        :meth:`tfkd.config.DistillConfig.resolved`); for the user's images, whose size the
        teacher's signature gives when the run starts, :func:`resolve_cvae` decides it then
        (``mlp`` up to 28x28 grey, else ``conv``, :func:`tfkd.data.cvae_architecture_for`).
      working_size: the CVAE models images at working_size x working_size and its samples are
        resized back up to the image size (bilinear), so that its cost does not grow with the
        teacher's input (224x224 RGB: 150,528 pixels per image); 0: ``auto`` (the image size up
        to 32 x 32, else 32).
      hidden: encoder MLP widths; the decoder uses them reversed (both architectures' dense part).
      epochs, batch_size, learning_rate: Adam training on the N images.
      num_images: images to sample, equal per class (the remainder goes to the first classes).
      uniform_bound: half the latents are drawn from U(-bound, bound), half from N(0, I).
    """

    latent_dim: int = 2
    architecture: str = "auto"
    hidden: tuple = (256, 128, 64)
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    num_images: int = 4_800
    uniform_bound: float = 3.0
    working_size: int = 0

    def validate(self) -> None:
        """Raises ConfigError naming the first field out of range (``cvae.<field>``)."""
        errors.check_settings("cvae.", self, [
            ("latent_dim", self.latent_dim >= 1, ">= 1"),
            ("architecture", self.architecture in ARCHITECTURES, ARCHITECTURES),
            ("hidden", len(self.hidden) >= 1 and all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden),
             "one or more widths, each an int >= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("num_images", self.num_images >= 0, ">= 0"),
            ("uniform_bound", self.uniform_bound > 0, "> 0"),
            ("working_size", self.working_size >= 0, ">= 0 (0: auto)"),
        ])


ARCHITECTURES = ("auto", "mlp", "conv")
""":attr:`CVAEConfig.architecture`'s choices."""


def resolve_cvae(config: CVAEConfig, image_shape: tuple) -> tuple[CVAEConfig, tuple]:
    """``config`` with what depends on the images' size resolved for images of ``image_shape``
    (H, W, C): ``working_size`` 0 and, for the user's images (whose size is known only once the
    run reads the teacher's signature), ``architecture`` ``auto``
    (:func:`tfkd.data.cvae_architecture_for` the working shape); and the working shape (h, w, C)
    the CVAE models (see :class:`CVAEConfig`). The one place these are decided."""
    h, w, c = (int(d) for d in image_shape)
    size = config.working_size or (0 if max(h, w) <= 32 else 32)
    working = (h, w, c) if not size or (size, size) == (h, w) else (size, size, c)
    architecture = (config.architecture if config.architecture != "auto"
                    else data.cvae_architecture_for(working))
    return dataclasses.replace(config, architecture=architecture, working_size=size), working


def resize_images(images: np.ndarray, shape: tuple, batch_size: int = 1024) -> np.ndarray:
    """float32 [n, H, W, C] in [0, 1] -> float32 [n, h, w, C] in [0, 1] (area-weighted bilinear;
    the images themselves when the size is already (h, w))."""
    if tuple(images.shape[1:3]) == tuple(shape[:2]):
        return images
    out = [tf.clip_by_value(tf.image.resize(images[s:s + batch_size], shape[:2], antialias=True),
                            0.0, 1.0).numpy() for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *shape[:2], images.shape[3]), np.float32)


class CVAE(keras.Model):
    """Conditional VAE with tensorflow-probability distributions (Kingma et al. 2014; FS-BBT §3.3).

    Posterior q(z | x, y) = N(μ(x, y), diag σ²(x, y)), prior p(z) = N(0, I), likelihood
    p(x | z, y) = Π_pixels Bernoulli(logits = decoder(z, y)) (binary cross-entropy on [0, 1] pixels,
    as in the FS-BBT code). Loss per image: -E_q[log p(x | z, y)] + KL(q || p), the negative ELBO, in
    nats; KL via ``tfd.kl_divergence``.

    Inputs: images float32 [b, H, W, C] in [0, 1]; conditions float32 one-hot [b, K].
    """

    def __init__(self, image_shape, num_classes: int, latent_dim: int = 2,
                 hidden=(256, 128, 64), architecture: str = "mlp", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        num_pixels = int(np.prod(self.image_shape))
        h, w, c = self.image_shape
        if architecture == "mlp":
            self.image_encoder = layers.Flatten()
            self.decoder = keras.Sequential(
                [layers.Dense(u, activation="relu") for u in reversed(hidden)]
                + [layers.Dense(num_pixels), layers.Reshape(self.image_shape)], name="decoder")
        elif architecture == "conv":
            if h % 4 or w % 4:
                raise errors.ConfigError(f"cvae.architecture='conv': needs image H and W "
                                         f"divisible by 4, got image shape {self.image_shape}")
            self.image_encoder = keras.Sequential([
                layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
                layers.Conv2D(64, 4, strides=2, padding="same", activation="relu"),
                layers.Flatten()], name="image_encoder")
            self.decoder = keras.Sequential(
                [layers.Dense(u, activation="relu") for u in reversed(hidden)]
                + [layers.Dense((h // 4) * (w // 4) * 64, activation="relu"),
                   layers.Reshape((h // 4, w // 4, 64)),
                   layers.Conv2DTranspose(64, 4, strides=2, padding="same", activation="relu"),
                   layers.Conv2DTranspose(32, 4, strides=2, padding="same", activation="relu"),
                   layers.Conv2D(c, 3, padding="same")], name="decoder")
        else:
            raise errors.ConfigError(f"cvae.architecture={architecture!r}: expected 'mlp' or "
                                     "'conv'")
        self.encoder = keras.Sequential(
            [layers.Dense(u, activation="relu") for u in hidden] + [layers.Dense(2 * latent_dim)],
            name="encoder")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def prior(self):
        return tfd.MultivariateNormalDiag(loc=tf.zeros([self.latent_dim]),
                                          scale_diag=tf.ones([self.latent_dim]))

    def posterior(self, images, conditions):
        features = self.image_encoder(images)
        params = self.encoder(tf.concat([features, conditions], axis=-1))
        loc, raw_scale = tf.split(params, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(raw_scale) + 1e-5)

    def likelihood(self, latents, conditions):
        logits = self.decoder(tf.concat([latents, conditions], axis=-1))
        return tfd.Independent(tfd.Bernoulli(logits=logits), reinterpreted_batch_ndims=3)

    def decode(self, latents, conditions):
        """Mean image float32 [b, H, W, C] in [0, 1] for latents [b, latent_dim], one-hot [b, K]."""
        return self.likelihood(latents, conditions).mean()

    def call(self, inputs):
        images, conditions = inputs
        return self.decode(self.posterior(images, conditions).mean(), conditions)

    def negative_elbo(self, images, conditions):
        q = self.posterior(images, conditions)
        z = q.sample()  # Reparameterised: gradients flow to the encoder.
        reconstruction = -self.likelihood(z, conditions).log_prob(images)
        kl = tfd.kl_divergence(q, self.prior())
        return reconstruction, kl

    def train_step(self, data):
        images, conditions = data
        with tf.GradientTape() as tape:
            reconstruction, kl = self.negative_elbo(images, conditions)
            loss = tf.reduce_mean(reconstruction + kl)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(tf.reduce_mean(reconstruction))
        self.kl_tracker.update_state(tf.reduce_mean(kl))
        return {m.name: m.result() for m in self.metrics}


def build_cvae(image_shape, num_classes: int, config: CVAEConfig) -> CVAE:
    """A compiled, built :class:`CVAE` for images of ``image_shape`` (its working shape) and
    ``num_classes`` conditions. ``config.architecture`` must be resolved (:func:`resolve_cvae`):
    ``auto`` is a ValueError (the caller's bug)."""
    if config.architecture == "auto":
        raise ValueError(  # Programming error: DistillConfig.resolved or resolve_cvae decides it.
            f"build_cvae: cvae.architecture='auto' unresolved for images {list(image_shape)}; "
            "expected 'mlp' or 'conv' (resolve_cvae)")
    cvae = CVAE(image_shape, num_classes, config.latent_dim, config.hidden, config.architecture)
    cvae.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    cvae((tf.zeros([1, *image_shape]), tf.zeros([1, num_classes])))
    return cvae


def train_cvae(images: np.ndarray, classes: np.ndarray, num_classes: int, config: CVAEConfig,
               seed: int, verbose: int = 1, callbacks=None) -> tuple[CVAE, dict]:
    """Trains the CVAE on the N images, conditioned on the teacher's predicted classes.

    Args:
      images: float32 [N, H, W, C] in [0, 1].
      classes: int [N] in [0, num_classes): the teacher's argmax, never the true labels.
      num_classes: K.
      config: architecture and training.
      seed: shuffling seed.

    Returns:
      (the trained CVAE, Keras history dict of per-epoch loss / reconstruction / kl in nats).

    Raises:
      ValueError: images and classes of different lengths, classes out of range (the caller's
        bug: the classes are the teacher's argmax over K, one per image), or
        ``config.architecture`` ``auto`` (:func:`build_cvae`).
    """
    images = np.asarray(images, np.float32)
    classes = np.asarray(classes).reshape(-1)
    if len(images) != len(classes):
        raise ValueError(  # Programming error: callers pass the teacher's argmax of each image.
            f"classes: expected {len(images)} (one per image), got {len(classes)}")
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(  # Programming error: an argmax over K answers is in [0, K).
            f"classes: expected values in [0, {num_classes}), got [{classes.min()}, "
            f"{classes.max()}]")
    cvae = build_cvae(images.shape[1:], num_classes, config)
    conditions = np.eye(num_classes, dtype=np.float32)[classes]
    ds = (tf.data.Dataset.from_tensor_slices((images, conditions))
          .shuffle(len(images), seed=seed).batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    history = cvae.fit(ds, epochs=config.epochs, verbose=verbose, callbacks=callbacks)
    return cvae, history.history


def sample_cvae(cvae: CVAE, num_images: int, seed: int, uniform_bound: float = 3.0,
                batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Decodes images with equal numbers per class; half the latents N(0, I), half U(-b, b).

    Args:
      cvae: a trained :class:`CVAE`.
      num_images: total images; ``num_images // K`` per class, the remainder to the first classes.
      seed: latent sampling seed.
      uniform_bound: b.

    Returns:
      (images float32 [num_images, H, W, C] in [0, 1], conditioning classes int64 [num_images]).
      The classes are what the CVAE was asked for (image t: class t mod K, latent from N(0, I) in
      even rounds t // K and from U(-b, b) in odd ones); the teacher labels the images afterwards.
      Each latent source has its own random stream, so a larger ``num_images`` extends a smaller
      one: its first images are the smaller set's (and their ledger answers are reused).
    """
    k = cvae.num_classes
    t = np.arange(num_images)
    classes = (t % k).astype(np.int64)
    gaussian = np.random.default_rng([seed, 0]).standard_normal((num_images, cvae.latent_dim))
    uniform = np.random.default_rng([seed, 1]).uniform(-uniform_bound, uniform_bound,
                                                       (num_images, cvae.latent_dim))
    latents = np.where(((t // k) % 2 == 0)[:, None], gaussian, uniform).astype(np.float32)
    conditions = np.eye(k, dtype=np.float32)[classes]
    out = [cvae.decode(tf.constant(latents[s:s + batch_size]), tf.constant(conditions[s:s + batch_size]))
           .numpy() for s in range(0, num_images, batch_size)]
    images = np.concatenate(out) if out else np.zeros((0, *cvae.image_shape), np.float32)
    return np.clip(images, 0.0, 1.0).astype(np.float32), classes
