"""Student training on teacher soft labels, inside a `tf.distribute` strategy: Keras ``fit`` or a
custom loop (``strategy.run``), resumable from a backup dir, with the student's Adam (weight decay,
a warmed-up weight average, loss scaling under ``mixed_float16``); :func:`train_student` is the
entry point."""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import distribute
from tfkd import errors
from tfkd import teacher as teacher_lib
from tfkd.student import models
from tfkd.student.batchnorm import reestimate_batchnorm
from tfkd.student.callbacks import KeepBest
from tfkd.student.config import LOOPS
from tfkd.student.config import StudentConfig
from tfkd.student.config import TrainingLength
from tfkd.student.config import learning_rate
from tfkd.student.config import scaled_learning_rate
from tfkd.student.config import training_length
from tfkd.student.input_pipeline import training_dataset
from tfkd.student.losses import make_loss


def check_finite_loss(history: dict) -> None:
    """Raises :class:`tfkd.errors.StudentError` when the last epoch's mean training loss is NaN or
    infinite (Keras' ``TerminateOnNaN`` stopped ``fit``, or the custom loop stopped at a non-finite
    step): a student trained to ``loss: nan`` must never be exported."""
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise errors.StudentError(
            f"student training stopped at a non-finite loss ({losses[-1]}) in epoch {len(losses)}: "
            "likely non-finite soft labels or images in the transfer set, or a learning rate too "
            "high for the student; nothing was exported")


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
    if not distribute.is_chief(strategy):
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


def _compile(student: keras.Model, config: StudentConfig, strategy, lr, loss,
             steps_per_epoch: int) -> None:
    """Compiles the student for ``fit``: Adam at ``lr``, ``loss()``, teacher agreement; at most
    ``steps_per_epoch`` steps an execution (more would overrun the epoch's progress bar: "32/9")."""
    with strategy.scope():
        student.compile(optimizer=_optimizer(config, lr), loss=loss(),
                        metrics=[keras.metrics.CategoricalAccuracy(name="teacher_agreement")],
                        jit_compile="auto" if config.jit_compile is None else config.jit_compile,
                        # Keras 3.15's multi-step loop fails under MirroredStrategy with more than
                        # one replica ("You must feed a value for placeholder tensor"): one step.
                        steps_per_execution=(min(config.steps_per_execution, steps_per_epoch)
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
      config: architecture, loss and optimisation, resolved (:meth:`StudentConfig.resolved`).
      seed: initialisation, shuffling and augmentation seed.
      backup_dir: if given, the training state is kept there every epoch (Keras
        `BackupAndRestore` with ``fit``, `tf.train.CheckpointManager` with the custom loop), and a
        rerun resumes from the last checkpoint.
      strategy: default :func:`tfkd.distribute.make_strategy` (``mirrored``).
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
      tfkd.errors.StudentError: the training loss became NaN or infinite.
      ValueError: a recipe field of ``config`` unset (the caller's bug).
    """
    strategy = strategy or distribute.make_strategy()
    config.check_resolved("train_student")
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
        _compile(student, config, strategy, lr, loss, length.steps_per_epoch)
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
