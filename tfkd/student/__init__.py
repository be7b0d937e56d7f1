"""The student: how it is built, fed and trained on the teacher's soft labels.

* :mod:`~tfkd.student.config`: :class:`StudentConfig`, :data:`RECIPE`, the learning rate and the
  training length.
* :mod:`~tfkd.student.models`: teacher and student architectures by name (and the user's
  ``.keras`` model).
* :mod:`~tfkd.student.losses`: the distillation losses (``soft_ce``, ``kd``, ``tempered_kd``,
  ``db3kd``) as ``keras.losses.Loss`` objects; :func:`make_loss`.
* :mod:`~tfkd.student.input_pipeline`: the `tf.data` pipeline, augmentation and training-time MixUp.
* :mod:`~tfkd.student.loops`: :func:`train_student`, Keras ``fit`` or a custom loop.
* :mod:`~tfkd.student.batchnorm`: precise BatchNorm after training.
* :mod:`~tfkd.student.callbacks`: :class:`ValidationAccuracy`, :class:`KeepBest`.

The strategy a student trains under is :mod:`tfkd.distribute`'s.
"""

from tfkd.student import models
from tfkd.student.batchnorm import BATCHNORM_BATCH
from tfkd.student.batchnorm import BATCHNORM_MIN_IMAGES
from tfkd.student.batchnorm import batchnorm_layers
from tfkd.student.batchnorm import reestimate_batchnorm
from tfkd.student.callbacks import KeepBest
from tfkd.student.callbacks import ValidationAccuracy
from tfkd.student.config import LOOPS
from tfkd.student.config import LOSSES
from tfkd.student.config import LR_REFERENCE_BATCH
from tfkd.student.config import LR_SCALINGS
from tfkd.student.config import LR_SCHEDULES
from tfkd.student.config import MAX_CHUNKS
from tfkd.student.config import PRECISIONS
from tfkd.student.config import RECIPE
from tfkd.student.config import SELECTIONS
from tfkd.student.config import StudentConfig
from tfkd.student.config import TrainingLength
from tfkd.student.config import learning_rate
from tfkd.student.config import scaled_learning_rate
from tfkd.student.config import training_length
from tfkd.student.input_pipeline import random_affine
from tfkd.student.input_pipeline import training_dataset
from tfkd.student.loops import EMA_WARMUP
from tfkd.student.loops import build_student
from tfkd.student.loops import check_finite_loss
from tfkd.student.loops import float32_student
from tfkd.student.loops import train_student
from tfkd.student.losses import DecisionKD
from tfkd.student.losses import TemperatureKD
from tfkd.student.losses import TemperedTargetKD
from tfkd.student.losses import make_loss

__all__ = [
    "StudentConfig", "RECIPE", "LOSSES", "LOOPS", "LR_SCHEDULES", "SELECTIONS", "PRECISIONS",
    "LR_SCALINGS", "LR_REFERENCE_BATCH", "MAX_CHUNKS", "TrainingLength", "training_length",
    "learning_rate", "scaled_learning_rate",
    "models", "build_student", "float32_student",
    "make_loss", "TemperatureKD", "TemperedTargetKD", "DecisionKD",
    "training_dataset", "random_affine",
    "train_student", "check_finite_loss", "EMA_WARMUP",
    "BATCHNORM_BATCH", "BATCHNORM_MIN_IMAGES", "batchnorm_layers", "reestimate_batchnorm",
    "ValidationAccuracy", "KeepBest",
]
