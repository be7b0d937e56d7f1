r"""What an epoch boundary costs the student, and what streaming a small transfer set in chunks
saves (issue 13): the LeNet-5-half student on 9,984 Fashion-MNIST images (a 10,000-query plan's
transfer set) at batch 64, 156 steps a pass, trained 15,600 steps two ways with the callbacks a
tfkd run has (a TensorBoard writer and a ``BackupAndRestore`` checkpoint every epoch):

- ``passes``: 100 Keras epochs of one pass each (``StudentConfig(epochs=100)``, tfkd before);
- ``chunks``: ``StudentConfig(steps=15600)``: the set repeats, cut into 50 epochs of 312 steps.

  python benchmarks/epoch_overhead.py > benchmarks/reports/epoch_overhead.txt

Seconds are wall times of the whole ``train_student`` call (tracing included, the same in both);
the cost per epoch boundary is their difference over the 50 boundaries saved. Run it with nothing
else on the machine; ``--repeats`` alternates the two to expose drift.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import student as student_lib  # noqa: E402

STEPS, PASS = 15_600, 156


def run(x, y, config: student_lib.StudentConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [keras.callbacks.TensorBoard(os.path.join(tmp, "tensorboard"))]
        start = time.perf_counter()
        student_lib.train_student(x, y, config, seed=0, backup_dir=os.path.join(tmp, "backup"),
                              verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
    keras.backend.clear_session()
    return seconds


def main(repeats: int = 1):
    dataset = data.load_dataset("fashion_mnist")
    x = dataset.x_train[:PASS * 64]
    y = np.eye(10, dtype=np.float32)[dataset.y_train[:PASS * 64]]
    settings = {"passes": student_lib.StudentConfig(epochs=STEPS // PASS).resolved(),
                "chunks": student_lib.StudentConfig(steps=STEPS).resolved()}
    print(f"{'setting':<8} {'epochs':>6} {'steps/epoch':>11} {'steps':>6} {'seconds':>8} {'ms/step':>8}")
    times = {name: [] for name in settings}
    for _ in range(repeats):
        for name, config in settings.items():
            length = student_lib.training_length(config, len(x), 64)
            seconds = run(x, y, config)
            times[name].append(seconds)
            print(f"{name:<8} {length.epochs:>6} {length.steps_per_epoch:>11} {length.steps:>6} "
                  f"{seconds:>8.1f} {1000 * seconds / length.steps:>8.2f}", flush=True)
    saved = np.mean(times["passes"]) - np.mean(times["chunks"])
    print(f"mean over {repeats} repeat(s): passes {np.mean(times['passes']):.1f} s, chunks "
          f"{np.mean(times['chunks']):.1f} s; {saved:.1f} s saved, {1000 * saved / 50:.0f} ms per "
          "epoch boundary")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
