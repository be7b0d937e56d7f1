r"""Where the student's training time goes: seconds per epoch of the LeNet-5-half student on
49,920 Fashion-MNIST images (the transfer set's size), by batch size, augmentation and XLA.

  python benchmarks/student_step_speed.py [BATCH ...] > benchmarks/reports/student_step_speed.txt

Each setting trains two epochs with :func:`tfkd.student.train_student` (tf.data augmentation:
fused rotation/shift and training-time MixUp, as the default recipe; under tfkd's one-replica
MirroredStrategy, or TensorFlow's default strategy as a plain Keras script runs) or with a bare
``model.fit`` on batched tensors without augmentation, ``steps_per_execution=32`` (float32, or
Keras' ``mixed_bfloat16`` policy: bf16 convolutions, float32 variables; with or without XLA). The
second epoch's time is reported (the first includes tracing). Run it with nothing else on the machine.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import student as student_lib  # noqa: E402
from tfkd.student import models  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def tfkd_epoch(x, y, batch_size: int, augment: bool, strategy=None) -> float:
    fields = {} if augment else {"rotation_degrees": 0.0, "shift_fraction": 0.0, "mixup_alpha": 0.0}
    timer = EpochTimer()
    config = student_lib.StudentConfig(epochs=2, batch_size=batch_size, **fields).resolved()
    student_lib.train_student(x, y, config, seed=0, verbose=0, callbacks=[timer], strategy=strategy)
    return timer.seconds


def bare_epoch(x, y, batch_size: int, jit: bool, policy: str = "float32") -> float:
    keras.mixed_precision.set_global_policy(policy)
    model = models.build_model("lenet5_half", x.shape[1:], y.shape[1])
    keras.mixed_precision.set_global_policy("float32")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True),
                  jit_compile=jit, steps_per_execution=32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).prefetch(4)
    timer = EpochTimer()
    model.fit(ds, epochs=2, verbose=0, callbacks=[timer])
    return timer.seconds


def main():
    dataset = data.load_dataset("fashion_mnist")
    x = dataset.x_train[:49_920]
    y = np.eye(10, dtype=np.float32)[dataset.y_train[:49_920]]
    print(f"{'setting':<34} {'batch':>5} {'s/epoch':>8} {'ms/step':>8} {'us/image':>9}")
    for batch in [int(b) for b in sys.argv[1:]] or (64, 128, 256, 1024):
        for name, seconds in (
                ("tfkd train_student, augmented", tfkd_epoch(x, y, batch, True)),
                ("tfkd train_student, no augment.", tfkd_epoch(x, y, batch, False)),
                ("tfkd, augmented, default strategy", tfkd_epoch(x, y, batch, True,
                                                                 tf.distribute.get_strategy())),
                ("bare fit, no augmentation", bare_epoch(x, y, batch, False)),
                ("bare fit, XLA (jit_compile)", bare_epoch(x, y, batch, True)),
                ("bare fit, mixed_bfloat16", bare_epoch(x, y, batch, False, "mixed_bfloat16")),
                ("bare fit, XLA + mixed_bfloat16", bare_epoch(x, y, batch, True, "mixed_bfloat16"))):
            steps = len(x) // batch
            print(f"{name:<34} {batch:>5} {seconds:>8.2f} {1000 * seconds / steps:>8.2f} "
                  f"{1e6 * seconds / (steps * batch):>9.1f}", flush=True)
            keras.backend.clear_session()


if __name__ == "__main__":
    main()
