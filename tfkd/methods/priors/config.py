"""``prior_kd``'s settings (:attr:`tfkd.methods.Method.config_class`): their dotted names
(``priors.images``) are settings of the run (``--priors_images``)."""

from __future__ import annotations

import dataclasses

from tfkd import errors
from tfkd.methods.priors import images as images_lib


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """The transfer set of ``prior_kd``: images from a noise prior, the teacher's soft labels.

    Attributes:
      images: transfer-set images, each one teacher query (the query plan); a query budget below
        it keeps the first ``images`` of the full plan (the images are drawn in seeded chunks of
        :data:`.images.CHUNK`, so a smaller plan is a prefix of a larger one).
      prior: the noise prior, one of :data:`.images.PRIORS`: ``smooth`` (a 3x3 to 7x7 grid of
        uniform values bilinearly upsampled, plus a little pixel noise;
        :func:`tfkd.methods.noise.smooth_noise`), ``multiscale`` (uniform noise at six scales mixed
        with Dirichlet weights, DIP-KD's multi-scale prior; :func:`.images.multiscale_noise`), or
        ``mix`` (half of each).
      augment: ``none``, or ``mixup`` / ``cutmix``: that share of the images (``augment_share``)
        is made by mixing two prior images (λ ~ U(0, 1)) or pasting a square of one into another,
        each labelled by its own query.
      augment_share: the share of ``images`` made by ``augment``, in [0, 1).
      temperature: T, in (0, 100]: the stored targets are the teacher's softmax at T (computed
        from its probabilities: softmax(log p / T)), and the student learns them with
        T² · CE(targets, softmax(z_s / T)) (``tempered_kd``).
      balance: the class-balance exponent β, in [0, 1]: the labelled images are redrawn (with
        replacement, as many as were labelled, no further query) with each image's probability
        proportional to (1 / share of its teacher top-1 class)^β (:func:`.images.balanced_rows`),
        so the classes a noise prior rarely reaches (on Fashion-MNIST trouser, coat and sneaker,
        each under 1.1% of the answers) are seen more often. 0 keeps the set as labelled; 1 gives
        every reached class the same expected share. The default 0.5 was chosen on the
        validation split (seed 0's 100,000 soft-labelled images: 68.74% as labelled, 75.72% at
        0.5; RESULTS.md, "The accuracy frontier").
    """

    images: int = 100_000
    prior: str = "smooth"
    augment: str = "none"
    augment_share: float = 0.25
    temperature: float = 4.0
    balance: float = 0.5

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range (``priors.images``, ...)."""
        errors.check_settings("priors.", self, [
            ("images", self.images >= 1, ">= 1"),
            ("prior", self.prior in images_lib.PRIORS, images_lib.PRIORS),
            ("augment", self.augment in images_lib.AUGMENTS, images_lib.AUGMENTS),
            ("augment_share", 0.0 <= self.augment_share < 1.0, "in [0, 1)"),
            ("temperature", 0.0 < self.temperature <= 100.0, "in (0, 100]"),
            ("balance", 0.0 <= self.balance <= 1.0, "in [0, 1]"),
        ])


@dataclasses.dataclass(frozen=True)
class PriorKDConfig:
    """``prior_kd``'s own settings.

    Attributes:
      priors: the images and their soft labels (:class:`PriorConfig`).
    """

    priors: PriorConfig = PriorConfig()

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range."""
        self.priors.validate()
