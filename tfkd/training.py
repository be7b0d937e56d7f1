"""Student training on teacher soft labels, inside a `tf.distribute` strategy.

Losses (as `keras.losses.Loss` objects, so that they scale correctly under `tf.distribute`):

* ``soft_ce``: cross-entropy between the teacher's soft labels p_t and the student's softmax, the
  FS-BBT default: L = -Σ_k p_t,k log softmax(z_s)_k.
* ``kd``: Hinton et al. (2015) temperature-scaled distillation: L = T² · CE(p_t^(T), softmax(z_s / T)),
  where p_t^(T) ∝ p_t^(1/T) is the teacher's distribution at temperature T (equal to softmax(z_t / T)
  when the teacher's logits z_t are not available, as for a black box).
* ``tempered_kd``: the same for soft labels stored already at T (ZSKD's impressions keep the
  teacher's softmax at T = 20): L = T² · CE(y, softmax(z_s / T)), the targets used as they are
  (:class:`TemperedTargetKD`; ``kd`` would temper them a second time, to softmax(z_t / T²)).
* ``db3kd``: DB3KD's CE to the teacher's top-1 class plus T² · KL to the boundary-distance soft
  labels (:class:`DecisionKD`).

Training-time MixUp (Zhang et al. 2018; the FS-BBT code, α = 1) interpolates images *and their stored
soft labels*: it sends no new teacher queries. Rotation and shift augmentation is one fused projective
transform per batch (:func:`random_affine`) inside the `tf.data` pipeline, from stateless random ops
keyed by a per-batch seed (no per-image Python loop; the same seed gives the same student).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import errors
from tfkd import fs
from tfkd import models
from tfkd import teacher as teacher_lib

LOSSES = ("soft_ce", "kd", "tempered_kd", "db3kd")
STRATEGIES = ("mirrored", "multi_worker")
LOOPS = ("auto", "fit", "custom")
LR_SCHEDULES = ("constant", "cosine")
SELECTIONS = ("final", "validation")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCALINGS = ("sqrt", "linear", "none")


StudentError = errors.StudentError


def check_finite_loss(history: dict) -> None:
    """Raises :class:`StudentError` when the last epoch's mean training loss is NaN or infinite
    (Keras' ``TerminateOnNaN`` stopped ``fit``, or the custom loop stopped at a non-finite step):
    a student trained to ``loss: nan`` must never be exported."""
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise StudentError(
            f"student training stopped at a non-finite loss ({losses[-1]}) in epoch {len(losses)}: "
            "likely non-finite soft labels or images in the transfer set, or a learning rate too "
            "high for the student; nothing was exported")


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
      architecture: a name in :data:`tfkd.models.MODELS` (the paper's students and the
        ``keras.applications`` families of :data:`tfkd.models.APPLICATIONS`), or the path of the
        user's own ``.keras`` model (:func:`tfkd.models.load_user_model`); ``auto``: the recipe's
        (:meth:`resolved`).
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
      lr_schedule: one of ``LR_SCHEDULES``; default ``cosine`` decay to 0 (chosen on the validation
        split over the paper's constant rate: +0.52, +0.30, +0.46 points for FS-BBT, seeds 0-2;
        RESULTS.md, "Log of tries"). ``constant`` is the paper's.
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
    lr_schedule: str = "cosine"
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
        dataset's student), then :data:`RECIPE`. Idempotent; fields already set are kept."""
        recipe = {**RECIPE, **{k: v for k, v in (recipe or {}).items() if v is not None}}
        unset = {k: recipe[k] for k in RECIPE
                 if getattr(self, k) is None or (k == "architecture" and self.architecture == "auto")}
        return dataclasses.replace(self, **unset) if unset else self

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


RECIPE = {"architecture": "lenet5_half", "epochs": 50, "mixup_alpha": 1.0,
          "rotation_degrees": 10.0, "shift_fraction": 0.1, "select": "final"}
"""The student recipe of a method that names none (:meth:`StudentConfig.resolved`): LeNet-5-half,
50 epochs, training-time MixUp (α = 1), ±10° rotations and ±10% shifts, the final epoch's
weights."""

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


def build_student(config: StudentConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    """The student ``config.architecture`` under ``config.mixed_precision``: images float32
    [b, H, W, C] -> logits float32 [b, K] (under a mixed policy the layers compute in
    float16/bfloat16 and a last float32 ``Activation`` casts the logits back, as the Keras mixed
    precision guide prescribes for outputs). Build it inside the strategy's scope."""
    if config.mixed_precision == "float32":
        return models.build_model(config.architecture, input_shape, num_classes)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.mixed_precision)
    try:
        model = models.build_model(config.architecture, input_shape, num_classes)
    finally:
        keras.config.set_dtype_policy(previous)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(model.output)
    return keras.Model(model.inputs, logits, name=model.name)


def float32_student(student: keras.Model, config: StudentConfig, input_shape: tuple,
                    num_classes: int) -> keras.Model:
    """A float32 copy of a mixed-precision ``student`` (its variables are float32 already; the
    copy computes in float32 too), what is exported; ``student`` itself when it is float32."""
    if config.mixed_precision == "float32":
        return student
    copy = models.build_model(config.architecture, input_shape, num_classes)
    copy.set_weights(student.get_weights())
    return copy


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
    config = config.resolved()
    if config.steps <= 0:
        return TrainingLength(config.epochs, per_pass, repeat=False)
    chunks = min(MAX_CHUNKS, -(-config.steps // per_pass))
    return TrainingLength(chunks, -(-config.steps // chunks), repeat=True)


class TemperatureKD(keras.losses.Loss):
    """T² · CE(p_t^(T), softmax(z_s / T)) (Hinton et al. 2015, eq. 2 with soft targets only).

    y_true: teacher probabilities float32 [b, K] (rows sum to 1); y_pred: student logits [b, K].
    Returns the per-example loss in nats, reduced by Keras.
    """

    def __init__(self, temperature: float = 4.0, name: str = "temperature_kd", **kwargs):
        if temperature <= 0:
            raise errors.ConfigError(f"temperature={temperature}: expected > 0")
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        t = self.temperature
        teacher = tf.nn.softmax(tf.math.log(tf.clip_by_value(y_true, 1e-8, 1.0)) / t, axis=-1)
        student = tf.nn.log_softmax(y_pred / t, axis=-1)
        return -(t ** 2) * tf.reduce_sum(teacher * student, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


class TemperedTargetKD(TemperatureKD):
    """T² · CE(y, softmax(z_s / T)) for soft labels y stored already at temperature T (ZSKD, Nayak
    et al. 2019, §3.3: the Data Impressions' targets are the teacher's softmax at T = 20, and the
    student is trained at the same T; the reference ``train.py`` does the same).

    y_true: float32 [b, K] rows summing to 1, the teacher's softmax at T; y_pred: student logits
    [b, K]. Per-example loss in nats. Its minimum is at z_s = z_t (up to a constant per row),
    where :class:`TemperatureKD` on the same targets would pull z_s toward z_t / T.
    """

    def __init__(self, temperature: float = 20.0, name: str = "tempered_kd", **kwargs):
        super().__init__(temperature, name=name, **kwargs)

    def call(self, y_true, y_pred):
        t = self.temperature
        return -(t ** 2) * tf.reduce_sum(y_true * tf.nn.log_softmax(y_pred / t, axis=-1), axis=-1)


class DecisionKD(TemperatureKD):
    """DB3KD's student loss (Wang, ICML 2021, §3.4; reference ``train_model_kd.py``):
    CE(one_hot(argmax p), softmax(z)) + T² · KL(p ‖ softmax(z / T)).

    y_true: p, the stored soft labels float32 [b, K] (rows sum to 1, already at temperature T:
    :func:`tfkd.boundary.soft_labels_from_distances`), whose argmax is the teacher's top-1 class;
    y_pred: student logits [b, K]. Per-example loss in nats. Departure: the reference code sums the
    KL term over the batch while averaging the CE term; here both are per-example means and the KL
    term is scaled by T², as Hinton et al. (2015) scale soft targets.
    """

    def __init__(self, temperature: float = 20.0, name: str = "decision_kd", **kwargs):
        super().__init__(temperature, name=name, **kwargs)

    def call(self, y_true, y_pred):
        t = self.temperature
        top1 = tf.one_hot(tf.argmax(y_true, axis=-1), tf.shape(y_true)[-1], dtype=y_pred.dtype)
        ce = tf.nn.softmax_cross_entropy_with_logits(top1, y_pred)
        p = tf.clip_by_value(y_true, 1e-8, 1.0)
        kl = tf.reduce_sum(p * (tf.math.log(p) - tf.nn.log_softmax(y_pred / t, axis=-1)), axis=-1)
        return ce + t ** 2 * kl


def make_loss(name: str, temperature: float = 1.0,
              reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
    """The distillation loss by name (see module docstring); ``reduction=None`` gives per-example
    losses [b] (for a custom loop's ``tf.nn.compute_average_loss``).

    Raises:
      tfkd.errors.ConfigError: unknown name.
    """
    if name == "soft_ce":
        return keras.losses.CategoricalCrossentropy(from_logits=True, name="soft_ce",
                                                    reduction=reduction)
    if name == "kd":
        return TemperatureKD(temperature, reduction=reduction)
    if name == "tempered_kd":
        return TemperedTargetKD(temperature, reduction=reduction)
    if name == "db3kd":
        return DecisionKD(temperature, reduction=reduction)
    raise errors.ConfigError(f"loss={name!r}: expected one of {LOSSES}")


def parse_tf_config(text: str | None) -> dict:
    """The ``TF_CONFIG`` environment variable, checked: JSON with ``cluster`` (task type -> list of
    ``host:port``) and ``task`` (``type``, ``index``) naming one of the cluster's tasks.

    Raises:
      tfkd.errors.ConfigError: one line naming ``TF_CONFIG`` and what is wrong (unset, not JSON, a
        task that is not in the cluster).
    """
    if not text:
        raise errors.ConfigError("strategy='multi_worker': the TF_CONFIG environment variable is "
                                 "not set (it names the cluster and this task)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise errors.ConfigError(f"TF_CONFIG: not JSON ({e.msg} at character {e.pos}): "
                                 f"{text[:80]!r}") from None
    cluster, task = (value.get("cluster"), value.get("task")) if isinstance(value, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise errors.ConfigError('TF_CONFIG: expected {"cluster": {type: [host:port, ...]}, '
                                 f'"task": {{"type": ..., "index": ...}}}}, got {text[:120]!r}')
    addresses = cluster.get(task.get("type"))
    index = task.get("index", 0)
    if not isinstance(addresses, list) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise errors.ConfigError(f"TF_CONFIG: task {task} is not one of the cluster's tasks "
                                 f"{ {k: len(v) for k, v in cluster.items() if isinstance(v, list)} }")
    return value


CLUSTER_STARTUP_TIMEOUT_S = 600.0
"""How long a MultiWorkerMirroredStrategy waits for every task of its cluster to start before the
process fails with one line naming the peers (TF itself waits forever, and its coordination
service takes SIGTERM as a preemption notice, so the wait does not end on SIGTERM either)."""


_WATCHDOG = """import os, signal, sys, time
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(seconds)
sys.stderr.write(message + chr(10))
sys.stderr.flush()
os.kill(pid, signal.SIGKILL)
"""


def make_strategy(kind: str = STRATEGIES[0], devices: list[str] | None = None,
                  startup_timeout_s: float = CLUSTER_STARTUP_TIMEOUT_S) -> tf.distribute.Strategy:
    """The training strategy.

    Args:
      kind: ``mirrored``: `tf.distribute.MirroredStrategy` over ``devices`` (default: all local
        GPUs; with one GPU or none, TensorFlow's default strategy: one replica on that device);
        ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy` from the ``TF_CONFIG``
        environment variable. A multi-worker strategy must be made at program start, before
        other TensorFlow work.
      startup_timeout_s: ``multi_worker`` only: if the cluster's other tasks have not all connected
        within this many seconds, a watchdog process writes one line naming them to stderr and
        kills this process (SIGKILL: TF's wait cannot be interrupted from inside).

    Raises:
      tfkd.errors.ConfigError: unknown kind, or ``multi_worker`` without a usable ``TF_CONFIG``.
    """
    if kind == "mirrored":
        if devices is None and len(tf.config.list_logical_devices("GPU")) <= 1:
            # One device: TensorFlow's default strategy (the same training, without the
            # distributed iterator and cross-device machinery a one-replica MirroredStrategy
            # still runs; benchmarks/engine_speed.py measures both).
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        tf_config = parse_tf_config(os.environ.get("TF_CONFIG"))
        peers = ", ".join(f"{t}:{i} at {a}" for t, addresses in tf_config["cluster"].items()
                          for i, a in enumerate(addresses)
                          if (t, i) != (tf_config["task"]["type"], tf_config["task"].get("index", 0)))

        message = (f"error: TF_CONFIG: the cluster did not start within {startup_timeout_s:g} s; "
                   f"waiting for {peers} (each task must run the same command with its own "
                   "TF_CONFIG)")
        # TF's wait holds the GIL and takes SIGTERM as a preemption notice: only another process
        # can end it. The watchdog writes the line to this process's stderr and SIGKILLs it.
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(startup_timeout_s), message],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        finally:
            watchdog.kill()
            watchdog.wait()
    raise errors.ConfigError(f"strategy={kind!r}: expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


EMA_WARMUP = 10
"""The weight average's momentum at optimizer step t (0-based) is min(``ema_momentum``,
(1 + t) / (EMA_WARMUP + t)) (0 at the first step): the warm-up of TensorFlow's
``tf.train.ExponentialMovingAverage(num_updates=t)`` and Model Garden's dynamic decay. Keras'
own average uses ``ema_momentum`` from the second step, so a run of T steps keeps
``ema_momentum`` ** T of its initial (random) weights: 74% for 0.999 over 300 steps, a student
that answered little better than chance where the trained one agreed with the teacher on 95%."""


class _AveragingAdam(keras.optimizers.Adam):
    """Adam whose weight average (``use_ema``) warms up as :data:`EMA_WARMUP` says."""

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        t = tf.cast(self.iterations, tf.float32)  # 0 at the first step (incremented after).
        momentum = tf.where(t > 0, tf.minimum(self.ema_momentum, (1.0 + t) / (EMA_WARMUP + t)),
                            0.0)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = tf.cast(momentum, var.dtype)
                average.assign(m * average + (1 - m) * var)


def _optimizer(config: StudentConfig, lr) -> keras.optimizers.Optimizer:
    """The student's Adam at ``lr``, with the config's weight decay and weight averaging (warmed
    up: :data:`EMA_WARMUP`); under ``mixed_float16`` wrapped in a dynamic ``LossScaleOptimizer``
    (float16 gradients underflow without it)."""
    adam = _AveragingAdam(lr, weight_decay=config.weight_decay or None,
                          use_ema=config.ema_momentum > 0,
                          ema_momentum=config.ema_momentum or 0.99, name="adam")
    if config.mixed_precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(adam)
    return adam


def _restored_manager(checkpoint: tf.train.Checkpoint, backup_dir: str,
                      strategy) -> tf.train.CheckpointManager:
    """The custom loop's ``CheckpointManager`` in ``backup_dir`` (a non-chief worker's in its own
    subdirectory), with the newest checkpoint, if any, restored into ``checkpoint``."""
    directory = backup_dir
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_chief(strategy):
        directory = os.path.join(backup_dir, f"{resolver.task_type}-{resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        logging.info("Student: resumed from %s (epoch %d)", manager.latest_checkpoint,
                     int(checkpoint.epoch.numpy()))
    return manager


def _custom_loop(student, ds, config: StudentConfig, length: TrainingLength, strategy,
                 global_batch: int, lr, backup_dir: str | None, verbose: int, loss) -> dict:
    """Trains with ``strategy.run`` / ``strategy.reduce``; per-example losses are averaged over the
    *global* batch (``tf.nn.compute_average_loss``), so the update does not depend on the number of
    replicas. The model, optimizer and epoch counter are checkpointed every epoch with
    ``tf.train.CheckpointManager`` (non-chief workers write to their own subdirectory) and restored
    on a rerun. Returns the history dict (per-epoch mean ``loss``)."""
    with strategy.scope():
        optimizer = _optimizer(config, lr)
        optimizer.build(student.trainable_variables)
        loss_fn = loss(reduction=None)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=student, optimizer=optimizer, epoch=epoch)
    manager = _restored_manager(checkpoint, backup_dir, strategy) if backup_dir else None

    def replica_step(images, targets):
        with tf.GradientTape() as tape:
            logits = student(images, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(targets, logits),
                                              global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)  # Loss scaling under mixed_float16, else loss.
        grads = tape.gradient(scaled, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))  # Unscales.
        agree = tf.cast(tf.argmax(logits, -1) == tf.argmax(targets, -1), tf.float32)
        return loss, tf.reduce_sum(agree) / global_batch

    if config.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(images, targets):
        loss, agreement = strategy.run(replica_step, args=(images, targets))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, agreement, axis=None))

    dist_ds = strategy.experimental_distribute_dataset(ds)
    stream = iter(dist_ds) if length.repeat else None  # One endless stream, cut into chunks.
    history = {"loss": [], "teacher_agreement": []}
    for e in range(int(epoch.numpy()), length.epochs):
        total, agreed, steps = 0.0, 0.0, 0
        batches = (next(stream) for _ in range(length.steps_per_epoch)) if stream else dist_ds
        for images, targets in batches:
            loss, agreement = train_step(images, targets)
            total, agreed, steps = total + float(loss), agreed + float(agreement), steps + 1
            if not np.isfinite(total):  # As Keras' TerminateOnNaN: stop at once.
                break
        history["loss"].append(total / max(1, steps))
        history["teacher_agreement"].append(agreed / max(1, steps))
        if not np.isfinite(total):
            return history  # Never checkpointed: a rerun does not resume into the NaN.
        epoch.assign_add(1)
        if manager is not None:
            manager.save()  # Every worker saves: the save is a collective operation.
        if verbose:
            logging.info("Student epoch %d/%d: loss %.4f", e + 1, length.epochs, history["loss"][-1])
    if config.ema_momentum:  # As Keras' fit does at the end of training.
        optimizer.finalize_variable_values(student.trainable_variables)
    return history


def batchnorm_layers(model: keras.Layer) -> list:
    """Every ``keras.layers.BatchNormalization`` of ``model``, nested models included (a
    ``keras.applications`` backbone inside a functional model, a user's subclassed model)."""
    found = []

    def walk(layer, seen):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for child in getattr(layer, "_layers", None) or getattr(layer, "layers", None) or ():
            walk(child, seen)

    walk(model, set())
    return found


BATCHNORM_BATCH = 256
"""Images per forward pass when :func:`reestimate_batchnorm` measures batch statistics."""

BATCHNORM_MIN_IMAGES = 64
"""The fewest images ``StudentConfig.batchnorm_images`` may name (0 aside): the student's default
batch, the batch its statistics were measured on in training. On a BatchNorm student of two
convolutions (``tests/test_ema_and_batchnorm.py``), 64 images gave 98% of the inference agreement
256 give, 8 images 94%, one image 56%."""


def reestimate_batchnorm(model: keras.Model, images: np.ndarray, max_images: int = 8192,
                         batch_size: int = BATCHNORM_BATCH, seed: int = 0) -> int:
    """Sets every BatchNormalization layer's moving mean and variance to the average of its batch
    statistics over ``images``, the student's own training inputs, with the trained weights fixed.

    This is "precise BatchNorm" (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, §3; the
    same rule as ``torch.optim.swa_utils.update_bn``): the moving statistics are reset to (0, 1)
    and each layer's momentum is set, for the i-th batch (1-based), to (i - 1) / i, so that after
    the last batch the moving mean and variance are the plain means of the per-batch statistics.
    Inference then normalizes as training did, however few steps training took; without it, a
    momentum of 0.999 (``keras.applications``) leaves the statistics mostly at their initial
    values after a few hundred steps and the exported student answers one class for every image.

    Args:
      model: a built Keras model; its trainable weights are not changed (forward passes only).
      images: float32 [n, H, W, C] in [0, 1] (the transfer set; no augmentation).
      max_images: at most this many images, a seeded uniform draw (all when n is smaller).
      batch_size: images per forward pass (the last partial batch is dropped unless it is the only one).
      seed: the draw's seed.

    Returns:
      the number of BatchNormalization layers re-estimated (0: the model has none; nothing ran).

    Raises:
      ValueError: ``images`` is empty, or ``max_images`` < 1 (the caller's bug: the transfer set
        holds a global batch, and ``student.batchnorm_images`` 0 skips this call).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if len(images) == 0 or max_images < 1:
        raise ValueError(  # Programming error: callers skip batchnorm_images=0 and empty sets.
            f"images: expected at least one image (max_images={max_images}), got "
                         f"{len(images)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), min(len(images), max_images), replace=False))
    batches = max(1, len(chosen) // batch_size)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    try:
        for i in range(batches):
            for layer in layers:
                layer.momentum = i / (i + 1)  # The running mean of batch statistics.
            rows = chosen[i * batch_size:(i + 1) * batch_size] if batches > 1 else chosen
            model(tf.constant(images[rows]), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    logging.info("Student: BatchNorm statistics of %d layers re-estimated over %d images",
                 len(layers), batches * batch_size if batches > 1 else len(chosen))
    return len(layers)


def random_affine(images: tf.Tensor, max_degrees: float, max_shift: float,
                  seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random rotation (± max_degrees) and shift (± max_shift of H and W) of a batch, fused into one
    projective transform per image (one ``ImageProjectiveTransformV3`` call for the batch; bilinear,
    edges filled with the nearest pixel, as Keras' RandomRotation/RandomTranslation and the FS-BBT
    code's ImageDataGenerator).

    Args:
      images: float32 [b, H, W, C].
      seed: int32/int64 [2], a stateless seed (the same seed gives the same transforms); None uses
        TensorFlow's stateful random ops.

    Returns:
      float32 [b, H, W, C].
    """
    shape = tf.shape(images)
    b, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    if seed is None:
        draws = tf.random.uniform([3, b], -1.0, 1.0)
    else:
        draws = tf.random.stateless_uniform([3, b], seed, -1.0, 1.0)
    theta = draws[0] * (max_degrees * np.pi / 180.0)
    dx = draws[1] * max_shift * w
    dy = draws[2] * max_shift * h
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel (x, y) samples the input at R (x - dx, y - dy) about the image centre.
    x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
    y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, x_off - cos * dx + sin * dy,
                           sin, cos, y_off - sin * dx - cos * dy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")


def _augment_fn(config: StudentConfig):
    """Augmentation of one batch from stateless random ops keyed by the batch's own seed, so that
    the draws do not depend on which thread of a parallel ``map`` runs first (stateful random ops
    there made two identical runs train different students)."""
    alpha = float(config.mixup_alpha)

    def fn(batch, batch_seed):
        images, targets = batch
        seeds = tf.random.experimental.stateless_split(tf.stack([batch_seed, batch_seed // 7]), 2)
        if config.rotation_degrees or config.shift_fraction:
            images = random_affine(images, config.rotation_degrees, config.shift_fraction, seeds[0])
        if config.horizontal_flip:
            # Its own seed folded from the affine's, so the other draws stay as they were.
            flip_seed = tf.random.experimental.stateless_fold_in(seeds[0], 1)
            mirror = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], flip_seed) < 0.5
            images = tf.where(mirror, tf.reverse(images, [2]), images)
        if alpha > 0:
            # λ ~ Beta(α, α) per example, as a ratio of Gamma draws; partner = the batch reversed.
            b = tf.shape(images)[0]
            g = tf.random.stateless_gamma([2, b], seeds[1], alpha)
            lam = g[0] / (g[0] + g[1])
            lam_img = tf.reshape(lam, [-1, 1, 1, 1])
            lam_lab = tf.reshape(lam, [-1, 1])
            images = lam_img * images + (1.0 - lam_img) * tf.reverse(images, [0])
            targets = lam_lab * targets + (1.0 - lam_lab) * tf.reverse(targets, [0])
        return tf.clip_by_value(images, 0.0, 1.0), targets

    return fn


class ValidationAccuracy(keras.callbacks.Callback):
    """Logs top-1 accuracy on the validation split after each epoch, to TensorBoard
    (``validation_accuracy``, and ``learning_rate``) and to the Keras logs (``val_accuracy``).

    For monitoring, and for :class:`KeepBest` (``select='validation'``), which reads its
    ``val_accuracy`` in the same epoch; it never reads the test split. Images
    float32 [n, H, W, C] in [0, 1], labels int [n]. ``every``: measure after every this many epochs
    (and the last): a long run of short epochs (a baseline on N images) otherwise spends more time
    here than training.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, log_dir: str, every: int = 1):
        super().__init__()
        self.images, self.labels = images, np.asarray(labels).reshape(-1)
        self.writer = tf.summary.create_file_writer(log_dir)
        self.every = max(1, int(every))

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        logits = self.model.predict(self.images, batch_size=1024, verbose=0)
        accuracy = float(np.mean(logits.argmax(axis=1) == self.labels))
        with self.writer.as_default():
            tf.summary.scalar("validation_accuracy", accuracy, step=epoch)
            lr = self.model.optimizer.learning_rate
            tf.summary.scalar("learning_rate", float(np.asarray(lr)), step=epoch)
        self.writer.flush()
        if logs is not None:
            logs["val_accuracy"] = accuracy


class KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best selection accuracy, for ``select='validation'``.

    Reads ``logs[monitor]`` (top-1 accuracy in [0, 1], written earlier in the same epoch by
    :class:`ValidationAccuracy`; an epoch without it is skipped). The best weights go to ``path``
    (an ``.npz`` of the model's weights, written atomically) and the best epoch and score to
    ``<path>.json``, so a resumed run (``BackupAndRestore``) keeps comparing with the best of the
    epochs before it was killed: ``keras.callbacks.ModelCheckpoint(save_best_only=True)`` starts
    from -inf again after a restart and would overwrite a better epoch.

    The selection split is the caller's: the validation split, or a held-out slice of the
    transfer set (never the test split; ``tests/test_selection.py`` fails when any test image is
    scored).
    """

    def __init__(self, path: str, monitor: str = "val_accuracy"):
        super().__init__()
        self.path, self.monitor = path, monitor
        self.best_epoch, self.best, self.scores = None, -np.inf, {}
        if fs.exists(path + ".json") and fs.exists(path):
            saved = json.loads(fs.read_text(path + ".json"))
            self.best_epoch, self.best = int(saved["epoch"]), float(saved["score"])
            self.scores = {int(k): v for k, v in saved.get("scores", {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is None:
            return
        self.scores[epoch + 1] = float(score)
        if score > self.best:
            self.best_epoch, self.best = epoch + 1, float(score)
            fs.makedirs(os.path.dirname(self.path) or ".")
            fs.save_npz(self.path, **{f"w{i}": w for i, w in enumerate(self.model.get_weights())})
        fs.write_atomic(self.path + ".json", json.dumps(
            {"epoch": self.best_epoch, "score": self.best, "scores": self.scores}))

    def restore(self, model: keras.Model) -> int | None:
        """Loads the best epoch's weights into ``model``; returns that epoch (1-based), or None
        when no epoch was scored (the final weights stay)."""
        if self.best_epoch is None:
            return None
        with fs.load_npz(self.path) as f:
            model.set_weights([f[f"w{i}"] for i in range(len(f.files))])
        logging.info("Student: selected epoch %d (%s %.4f; last epoch %s)", self.best_epoch,
                     self.monitor, self.best, self.scores.get(max(self.scores)))
        return self.best_epoch


def training_dataset(images: np.ndarray, soft_labels: np.ndarray, config: StudentConfig,
                     global_batch_size: int, seed: int, repeat: bool = False) -> tf.data.Dataset:
    """Shuffled, augmented, MixUp-ed batches of (images float32 [b, H, W, C], soft labels [b, K]).

    The transfer set is held once as two tensors (cached in memory); what is shuffled is the row
    order, and each batch is one gather of its rows, so the pipeline does per-batch work only (an
    element-wise ``shuffle`` of 50,000 images copied every image through a 50,000-slot buffer each
    pass). Batches are prefetched (under a ``tf.distribute`` strategy the distributed iterator
    also prefetches each replica's share onto its device). Each pass reshuffles and draws new
    augmentation; the last partial batch is dropped so that every replica gets equal work (with
    ``repeat``, the passes form one endless stream and batches run across them). The same ``seed``
    gives the same batches and augmentation, whatever the parallelism of the pipeline. Without
    augmentation no per-batch map runs at all.
    """
    config = config.resolved()
    x = tf.constant(np.asarray(images, np.float32))
    y = tf.constant(np.asarray(soft_labels, np.float32))
    ds = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed,
                                                    reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(global_batch_size, drop_remainder=True)
    augmented = (config.rotation_degrees or config.shift_fraction or config.horizontal_flip
                 or config.mixup_alpha)
    if augmented:
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        augment = _augment_fn(config)
        ds = tf.data.Dataset.zip(ds, batch_seeds).map(
            lambda rows, s: augment((tf.gather(x, rows), tf.gather(y, rows)), s),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda rows: (tf.gather(x, rows), tf.gather(y, rows)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()  # Each worker of a cluster takes its share of every batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _compile(student: keras.Model, config: StudentConfig, strategy, lr, loss) -> None:
    """Compiles the student for ``fit``: Adam at ``lr``, ``loss()``, teacher agreement."""
    with strategy.scope():
        student.compile(optimizer=_optimizer(config, lr), loss=loss(),
                        metrics=[keras.metrics.CategoricalAccuracy(name="teacher_agreement")],
                        jit_compile="auto" if config.jit_compile is None else config.jit_compile,
                        # Keras 3.15's multi-step loop fails under MirroredStrategy with more than
                        # one replica ("You must feed a value for placeholder tensor"): one step.
                        steps_per_execution=(config.steps_per_execution
                                             if strategy.num_replicas_in_sync == 1 else 1))


def _fit(student: keras.Model, ds, config: StudentConfig, length: TrainingLength,
         backup_dir: str | None, verbose: int, callbacks: list) -> dict:
    """Keras ``fit`` of the compiled student with ``callbacks``, stopping on a NaN loss and, with
    a backup dir, resuming from and saving to it (``BackupAndRestore``); returns the history."""
    callbacks = [*callbacks, keras.callbacks.TerminateOnNaN()]
    if backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(
            backup_dir, save_freq=config.checkpoint_steps or "epoch", delete_checkpoint=False))
    return student.fit(ds, epochs=length.epochs, verbose=verbose, callbacks=callbacks,
                       steps_per_epoch=length.steps_per_epoch if length.repeat else None).history


def _custom_loop_chosen(config: StudentConfig, strategy) -> bool:
    """Whether the custom loop trains (``loop`` ``custom``, or ``auto`` under
    MultiWorkerMirroredStrategy). Raises ConfigError for ``select='validation'`` there: the
    custom loop runs no callback, so no epoch could be selected."""
    custom = config.loop == "custom" or (
        config.loop == "auto" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))
    if custom and config.select == "validation":
        raise errors.ConfigError("student.select='validation': needs Keras fit (loop 'fit'); the "
                                 "custom loop (MultiWorkerMirroredStrategy's) runs no callback")
    return custom


def _check_jit(config: StudentConfig, strategy) -> None:
    """Raises ConfigError for ``jit_compile=True`` with more than one replica on CPU devices: XLA
    then compiles each replica's step for the first device and cannot reach the other replicas'
    variables (TensorFlow's known XLA issue "tf.Variable on a different device"; on GPUs each
    replica compiles on its own device)."""
    if not config.jit_compile or strategy.num_replicas_in_sync == 1:
        return
    devices = strategy.extended.worker_devices
    if all("CPU" in d.upper() for d in devices):
        raise errors.ConfigError(f"student.jit_compile=True: MirroredStrategy over "
                                 f"{len(devices)} CPU devices cannot run XLA-compiled steps (each "
                                 "replica's variables live on its own CPU device); leave "
                                 "jit_compile unset (Keras' auto: off on CPUs) or train on one "
                                 "device")


def _check_training_inputs(images: np.ndarray, soft_labels: np.ndarray, global_batch: int) -> None:
    """Raises ConfigError naming ``images`` or ``soft_labels`` unless they pair up (one row each),
    the images are finite, the soft labels are distributions, and there is a global batch."""
    if len(images) != len(soft_labels):
        raise errors.ConfigError(f"soft_labels: expected {len(images)} rows (one per image), got "
                                 f"{len(soft_labels)}")
    teacher_lib.check_soft_labels(soft_labels, "soft_labels")
    if not np.all(np.isfinite(images)):
        raise errors.ConfigError(f"images: expected finite pixels, got "
                                 f"{int(np.sum(~np.isfinite(images)))} NaN or infinite values")
    if len(images) < global_batch:
        raise errors.ConfigError(f"images: {len(images)} is fewer than one global batch "
                                 f"({global_batch}: student.batch_size x replicas)")


def train_student(images: np.ndarray, soft_labels: np.ndarray, config: StudentConfig, seed: int,
                  backup_dir: str | None = None, strategy: tf.distribute.Strategy | None = None,
                  verbose: int = 1, callbacks=None, loss=None,
                  keep_best: KeepBest | None = None) -> tuple[keras.Model, dict]:
    """Trains a student from scratch on (image, teacher soft label) pairs.

    Args:
      images: float32 [n, H, W, C] in [0, 1].
      soft_labels: float32 [n, K], rows summing to 1 (teacher probabilities or one-hot).
      config: architecture, loss and optimisation.
      seed: initialisation, shuffling and augmentation seed.
      backup_dir: if given, the training state is kept there every epoch (Keras
        `BackupAndRestore` with ``fit``, `tf.train.CheckpointManager` with the custom loop), and a
        rerun resumes from the last checkpoint.
      strategy: default :func:`make_strategy` (``mirrored``).
      callbacks: Keras callbacks for ``fit`` (the custom loop logs its loss with absl instead).
      loss: ``loss(reduction=...) -> keras.losses.Loss`` (logits [b, K] against targets [b, K]; the
        custom loop asks for ``reduction=None``); default: :func:`make_loss` of ``config.loss``.
      keep_best: with ``config.select == 'validation'``, the :class:`KeepBest` run after
        ``callbacks``; its best epoch's weights are loaded when training ends (before the
        BatchNorm re-estimation). Required then; ignored for ``final``.

    Returns:
      (the trained student, a logits `keras.Model`; the Keras history dict of per-epoch metrics).

    Raises:
      tfkd.errors.ConfigError: mismatched lengths, non-finite images, fewer images than one global
        batch, soft labels that are not distributions (non-finite, outside [0, 1], or rows not
        summing to 1), or settings that cannot train together (see :meth:`StudentConfig.validate`).
      StudentError: the training loss became NaN or infinite.
    """
    strategy, config = strategy or make_strategy(), config.resolved()
    if config.select == "validation" and keep_best is None:
        raise errors.ConfigError("student.select='validation': expected a selection split "
                                 "(keep_best)")
    loss = loss or functools.partial(make_loss, config.loss, config.temperature)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    _check_training_inputs(images, soft_labels, global_batch)
    if config.loop not in LOOPS:
        raise errors.ConfigError(f"student.loop={config.loop!r}: expected one of {LOOPS}")
    custom = _custom_loop_chosen(config, strategy)
    _check_jit(config, strategy)
    keras.utils.set_random_seed(seed)
    length = training_length(config, len(images), global_batch)
    lr = learning_rate(scaled_learning_rate(config, strategy.num_replicas_in_sync),
                       config.lr_schedule, length.steps)
    with strategy.scope():
        student = build_student(config, images.shape[1:], soft_labels.shape[1])
    ds = training_dataset(images, soft_labels, config, global_batch, seed, repeat=length.repeat)
    if custom:
        history = _custom_loop(student, ds, config, length, strategy, global_batch, lr,
                               backup_dir, verbose, loss)
    else:
        _compile(student, config, strategy, lr, loss)
        history = _fit(student, ds, config, length, backup_dir, verbose,
                       [*(callbacks or []), *([keep_best] if config.select == "validation" else [])])
    check_finite_loss(history)
    if config.select == "validation":
        history["selected_epoch"] = keep_best.restore(student)
    return _exported(student, config, strategy, images, soft_labels.shape[1], seed), history


def _exported(student: keras.Model, config: StudentConfig, strategy, images: np.ndarray,
              num_classes: int, seed: int) -> keras.Model:
    """The trained student as exported: a float32 copy under mixed precision, its BatchNorm
    statistics re-estimated over ``images`` (after EMA weights are swapped in: statistics of the
    exported weights)."""
    with strategy.scope():
        student = float32_student(student, config, images.shape[1:], num_classes)
        if config.batchnorm_images:
            reestimate_batchnorm(student, images, config.batchnorm_images, seed=seed)
    return student
