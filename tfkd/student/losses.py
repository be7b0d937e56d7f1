"""The distillation losses, as `keras.losses.Loss` objects (so that they scale correctly under
`tf.distribute`); :func:`make_loss` makes one by name:

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
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfkd import errors
from tfkd.student.config import LOSSES


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
    :func:`tfkd.methods.db3kd.boundary.soft_labels_from_distances`), whose argmax is the teacher's
    top-1 class; y_pred: student logits [b, K]. Per-example loss in nats. Departure: the reference
    code sums the KL term over the batch while averaging the CE term; here both are per-example
    means and the KL term is scaled by T², as Hinton et al. (2015) scale soft targets.
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
