"""How the student trains: :class:`StudentConfig`, the library's student :data:`RECIPE`, the
learning rate and its scaling to the global batch, and the training length (epochs, or a step count
streamed in chunks). Settings and the arithmetic on them: no training runs here."""

from __future__ import annotations

import dataclasses

import keras

from tfkd import errors
from tfkd.student import models
from tfkd.student.batchnorm import BATCHNORM_MIN_IMAGES

LOSSES = ("soft_ce", "kd", "tempered_kd", "db3kd")
"""The names :func:`tfkd.student.losses.make_loss` knows (``StudentConfig.loss``)."""
LOOPS = ("auto", "fit", "custom")
LR_SCHEDULES = ("constant", "cosine")
SELECTIONS = ("final", "validation")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCALINGS = ("sqrt", "linear", "none")


def learning_rate(base: float, schedule: str, total_steps: int):
    """Adam's learning rate: ``constant`` (FS-BBT), or ``cosine`` decay to 0 over ``total_steps``.

    Raises:
      tfkd.errors.ConfigError: unknown schedule, or base not positive.
    """
    if base <= 0:
        raise errors.ConfigError(f"learning_rate={base}: expected > 0")
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, total_steps))
    raise errors.ConfigError(f"lr_schedule={schedule!r}: expected one of {LR_SCHEDULES}")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """How the student is trained.

    Attributes:
      architecture: a name in :data:`tfkd.student.models.MODELS` (the paper's students and the
        ``keras.applications`` families of :data:`tfkd.student.models.APPLICATIONS`), or the path
        of the user's own ``.keras`` model (:func:`tfkd.student.models.load_user_model`);
        ``auto``: the recipe's (:meth:`resolved`).
      epochs, batch_size, learning_rate: Adam training (batch_size per replica).

    ``architecture``, ``epochs``, ``mixup_alpha``, ``rotation_degrees`` and ``shift_fraction`` are
    the *recipe*: left unset (``auto`` / None) they take the method's recipe
    (:attr:`tfkd.methods.Method.student_defaults`, applied by
    :meth:`tfkd.pipeline.DistillConfig.resolved`), else :data:`RECIPE`.
      steps: total optimizer steps; 0 (default) trains ``epochs`` whole passes over the transfer
        set. When > 0 it replaces ``epochs``: the transfer set streams endlessly (reshuffled each
        pass) and the student trains about that many steps, so that a smaller transfer set (a
        query budget, a baseline's N images) gets the same training length as a larger one.
        :func:`training_length` is the rule.
      lr_schedule: one of ``LR_SCHEDULES``; None (a recipe field): the method's, else
        :data:`RECIPE`'s ``cosine`` decay to 0 (chosen on the validation split over the paper's
        constant rate: +0.52, +0.30, +0.46 points for FS-BBT, seeds 0-2; RESULTS.md, "Log of
        tries"). ``constant`` is the paper's, and ``prior_kd``'s (on noise images).
      weight_decay: Adam's decoupled weight decay (Keras' ``weight_decay``, AdamW's rule: each
        step subtracts learning rate x weight_decay x weight); 0 disables.
      ema_momentum: with a value in (0, 1), the exported weights are an exponential moving average
        of the training weights with this momentum (Polyak averaging, Keras' ``use_ema``), swapped
        in when training ends (BatchNorm statistics are then re-estimated for them); 0 disables.
        Only with ``select='final'``: a selected epoch is restored with its trained weights.
        The momentum warms up as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``
        does (:data:`EMA_WARMUP`), so that a run shorter than the average's horizon
        1 / (1 - ema_momentum) steps does not export mostly its initial weights.
      loss: one of ``LOSSES``.
      temperature: T for ``kd`` (ignored by ``soft_ce``).
      mixup_alpha: training-time MixUp λ ~ Beta(α, α) per example; 0 disables.
      rotation_degrees: random rotation up to ± this many degrees; 0 disables.
      shift_fraction: random shifts up to ± this fraction of height and width; 0 disables.
      horizontal_flip: mirror each image left-right with probability 1/2 (its soft label is kept).
        Off by default: right only where a mirrored image is the same class (clothing, natural
        images), wrong for digits and text.
      steps_per_execution: Keras' steps per compiled call (per-step overhead).
      checkpoint_steps: with a backup dir, also save the training state every this many steps
        (0: at the end of each epoch only). Keras ``fit`` only.
      loop: ``fit`` (Keras ``fit``, with callbacks), ``custom`` (``strategy.run`` and
        ``strategy.reduce`` with ``tf.train.CheckpointManager``), or ``auto``: custom under
        MultiWorkerMirroredStrategy (Keras 3 ``fit`` has open issues there), else fit.
      select: which weights are exported: ``final`` (the last epoch's) or ``validation`` (the
        epoch of best accuracy on the selection split, :class:`KeepBest`: the validation split, or
        with none a held-out slice of the transfer set scored against the teacher's top-1). Never
        the test split. A recipe field (``None``: the method's, else ``final``).
      batchnorm_images: after training, the moving mean and variance of every BatchNormalization
        layer of the student are re-estimated over up to this many transfer-set images
        (:func:`reestimate_batchnorm`), whatever the number of optimizer steps: 0 (off) or at
        least :data:`BATCHNORM_MIN_IMAGES` (fewer give statistics of a few images: one image
        left a BatchNorm student at 56% of the agreement 256 give); 0 keeps the
        statistics training's momentum left (``keras.applications`` models use 0.999: after a
        few hundred steps those are still mostly their initial values). Students without
        BatchNormalization are unchanged.
      mixed_precision: the Keras dtype policy the student trains under: ``float32``, or
        ``mixed_float16`` / ``mixed_bfloat16`` (float16/bfloat16 computations, float32 variables;
        Micikevicius et al. 2018): the logits are cast to float32 by a last float32 layer, so the
        loss and its softmax are float32, and ``mixed_float16`` trains with dynamic loss scaling
        (``keras.optimizers.LossScaleOptimizer``; bfloat16 has float32's range and needs none).
        The exported student is float32 (the trained variables in a float32 copy). A user's
        ``.keras`` model keeps the dtype policy it was saved with.
      jit_compile: compile training steps with XLA: True, False, or None (Keras' ``auto``: XLA
        only where Keras' auto turns it on: with one GPU or TPU and no distribution strategy; off
        on a CPU-only machine, under a strategy with more than one replica, and in the custom
        loop).
      lr_scaling: how ``learning_rate`` follows the global batch (``batch_size`` x replicas):
        it is the rate for a global batch of :data:`LR_REFERENCE_BATCH`, scaled by
        sqrt(global / reference) (``sqrt``: the square-root rule for Adam, Malladi et al., "On the
        SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022), by global /
        reference (``linear``: Goyal et al. 2017, for SGD) or not at all (``none``). One replica
        at batch 64 (the default) trains at ``learning_rate`` as given. :func:`scaled_learning_rate`.
    """

    architecture: str = "auto"
    epochs: int | None = None
    steps: int = 0
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str | None = None
    weight_decay: float = 0.0
    ema_momentum: float = 0.0
    loss: str = "soft_ce"
    temperature: float = 1.0
    mixup_alpha: float | None = None
    rotation_degrees: float | None = None
    shift_fraction: float | None = None
    horizontal_flip: bool = False
    steps_per_execution: int = 32
    checkpoint_steps: int = 0
    loop: str = "auto"
    batchnorm_images: int = 8192
    select: str | None = None
    mixed_precision: str = "float32"
    jit_compile: bool | None = None
    lr_scaling: str = "sqrt"

    def resolved(self, recipe: dict | None = None) -> "StudentConfig":
        """This config with the recipe fields left unset taken from ``recipe`` (a method's, the
        dataset's student), then :data:`RECIPE`. Idempotent; fields already set are kept. A run's
        is resolved by :meth:`tfkd.config.DistillConfig.resolved`; a caller of
        :func:`tfkd.student.train_student` resolves its own (the training refuses unset fields:
        :meth:`check_resolved`)."""
        recipe = {**RECIPE, **{k: v for k, v in (recipe or {}).items() if v is not None}}
        unset = {k: recipe[k] for k in RECIPE if _unset(getattr(self, k))}
        return dataclasses.replace(self, **unset) if unset else self

    def check_resolved(self, where: str, names: tuple = ()) -> "StudentConfig":
        """This config, when the recipe fields ``names`` (default: all of :data:`RECIPE`'s) that
        ``where`` trains with are set: the layers below :meth:`resolved` decide no default of
        their own.

        Raises:
          ValueError: a field still unset (a programming error: the caller resolves first).
        """
        unset = [n for n in names or RECIPE if _unset(getattr(self, n))
                 and not (n == "epochs" and self.steps > 0)]  # With steps, epochs is not read.
        if unset:
            raise ValueError(  # Programming error: resolved() fills the recipe before training.
                f"{where}: student.{', student.'.join(unset)} unset (None or 'auto'); expected a "
                f"resolved StudentConfig (StudentConfig.resolved or DistillConfig.resolved)")
        return self

    def validate(self) -> None:
        """Raises ConfigError (a ValueError) naming the first field out of range and what it
        accepts (the recipe fields as :meth:`resolved` fills them)."""
        config = self.resolved()
        checks = [
            ("architecture", config.architecture in models.MODELS
             or models.is_user_model(config.architecture),
             f"one of {sorted(models.MODELS)} or a .keras file"),
            ("epochs", config.epochs >= 1, ">= 1"), ("steps", config.steps >= 0, ">= 0 (0: epochs)"),
            ("batch_size", config.batch_size >= 1, ">= 1"),
            ("learning_rate", config.learning_rate > 0, "> 0"),
            ("lr_schedule", config.lr_schedule in LR_SCHEDULES, LR_SCHEDULES),
            ("weight_decay", config.weight_decay >= 0, ">= 0 (0 disables)"),
            ("ema_momentum", 0 <= config.ema_momentum < 1, "in [0, 1) (0 disables)"),
            ("ema_momentum", config.ema_momentum == 0 or config.select != "validation",
             "0 with select 'validation' (the epoch it selects is restored with its trained "
             "weights, not their average); or select 'final'"),
            ("loss", config.loss in LOSSES, LOSSES), ("temperature", config.temperature > 0, "> 0"),
            ("mixup_alpha", config.mixup_alpha >= 0, ">= 0 (0 disables)"),
            ("rotation_degrees", 0 <= config.rotation_degrees <= 180, "in [0, 180] (0 disables)"),
            ("shift_fraction", 0 <= config.shift_fraction < 1, "in [0, 1) (0 disables)"),
            ("steps_per_execution", config.steps_per_execution >= 1, ">= 1"),
            ("checkpoint_steps", config.checkpoint_steps >= 0, ">= 0"),
            ("loop", config.loop in LOOPS, LOOPS),
            ("batchnorm_images", config.batchnorm_images == 0
             or config.batchnorm_images >= BATCHNORM_MIN_IMAGES,
             f"0 (off) or >= {BATCHNORM_MIN_IMAGES} (images for a meaningful estimate)"),
            ("select", config.select in SELECTIONS, SELECTIONS),
            ("select", config.select == "final" or config.loop != "custom",
             "'final' with loop 'custom' (the custom loop runs no callback)"),
            ("mixed_precision", config.mixed_precision in PRECISIONS, PRECISIONS),
            ("jit_compile", config.jit_compile in (None, True, False), "True, False or None"),
            ("lr_scaling", config.lr_scaling in LR_SCALINGS, LR_SCALINGS),
        ]
        errors.check_settings("student.", config, checks)


def _unset(value) -> bool:
    return value is None or value == "auto"


RECIPE = {"architecture": "lenet5_half", "epochs": 50, "lr_schedule": "cosine", "mixup_alpha": 1.0,
          "rotation_degrees": 10.0, "shift_fraction": 0.1, "select": "final"}
"""The student recipe of a method that names none (:meth:`StudentConfig.resolved`): LeNet-5-half,
50 epochs, cosine decay, training-time MixUp (α = 1), ±10° rotations and ±10% shifts, the final
epoch's weights."""

LR_REFERENCE_BATCH = 64
"""The global batch at which ``StudentConfig.learning_rate`` is meant (the FS-BBT paper's batch, at
which tfkd's recipes were tuned on one device)."""


def scaled_learning_rate(config: StudentConfig, replicas: int) -> float:
    """``config.learning_rate`` scaled to the global batch ``batch_size`` x ``replicas`` by
    ``config.lr_scaling`` (see :class:`StudentConfig`). Raises ConfigError for an unknown rule
    (ValueError for replicas < 1: a strategy has at least one)."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: expected >= 1")  # Programming error: num_replicas.
    ratio = config.batch_size * replicas / LR_REFERENCE_BATCH
    factors = {"sqrt": ratio ** 0.5, "linear": ratio, "none": 1.0}
    if config.lr_scaling not in factors:
        raise errors.ConfigError(f"lr_scaling={config.lr_scaling!r}: expected one of "
                                 f"{LR_SCALINGS}")
    return config.learning_rate * factors[config.lr_scaling]


MAX_CHUNKS = 50
"""A step-counted run (``StudentConfig.steps``) is cut into at most this many Keras epochs."""


@dataclasses.dataclass(frozen=True)
class TrainingLength:
    """How long the student trains, in Keras' terms (:func:`training_length` makes it).

    Attributes:
      epochs: Keras epochs: whole passes over the transfer set, or with ``repeat`` chunks of one
        endless shuffled stream (checkpoints, validation and callbacks run once per epoch).
      steps_per_epoch: optimizer steps per Keras epoch (>= 1).
      repeat: the dataset is repeated and cut into ``epochs`` chunks of ``steps_per_epoch`` steps.
    """

    epochs: int
    steps_per_epoch: int
    repeat: bool

    @property
    def steps(self) -> int:
        """Optimizer steps in all."""
        return self.epochs * self.steps_per_epoch


def training_length(config: StudentConfig, num_images: int, global_batch: int) -> TrainingLength:
    """The student's training length for ``num_images`` transfer images at ``global_batch``.

    ``config.steps`` == 0: ``config.epochs`` whole passes of ``num_images // global_batch`` steps.
    ``config.steps`` > 0: the transfer set streams endlessly (reshuffled each pass) and is cut into
    min(:data:`MAX_CHUNKS`, ceil(steps / steps per pass)) chunks of ceil(steps / chunks) steps, so
    that a small transfer set (a query budget) trains as long as a large one without paying the
    per-epoch cost (a checkpoint, callbacks, a new iterator) hundreds of times. The steps trained
    exceed ``config.steps`` by less than the number of chunks.
    """
    per_pass = max(1, num_images // global_batch)
    config.check_resolved("training_length", ("epochs",))
    if config.steps <= 0:
        return TrainingLength(config.epochs, per_pass, repeat=False)
    chunks = min(MAX_CHUNKS, -(-config.steps // per_pass))
    return TrainingLength(chunks, -(-config.steps // chunks), repeat=True)
