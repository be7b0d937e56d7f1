r"""Student training images/s: tfkd's trainer beside a plain Keras ``fit`` of the same model and
recipe, side by side in one process (issue 28).

  python benchmarks/engine_speed.py > benchmarks/reports/issue28/engine_speed.txt
  python benchmarks/engine_speed.py --epochs=4 --repeats=3 --recipes=default

Data: 48,000 Fashion-MNIST training images (the transfer set's size) with soft labels (the
teacher's would train no faster or slower). Model: LeNet-5-half, Adam 1e-3 with cosine decay, soft
cross-entropy, batch 64. Recipes:

- ``default``: tfkd's FS-BBT recipe (no training-time augmentation);
- ``augmented``: training-time MixUp (alpha 1), +-10 degree rotations and +-10% shifts, the FS-BBT
  paper's (and ``../shared/reference/fsbbt_reference.py``'s) recipe.

For each recipe, ``--repeats`` times in turn: **tfkd** (:func:`tfkd.student.train_student`, its
MirroredStrategy and tf.data pipeline) and **plain Keras**: the pipeline of
``fsbbt_reference.py`` (``from_tensor_slices`` -> element ``shuffle`` -> ``batch(64)`` -> a
``map`` of Keras ``RandomRotation``/``RandomTranslation`` and batch MixUp for ``augmented`` ->
``prefetch``) and ``model.fit`` with Keras' defaults (one step per call); also plain ``fit`` with
``steps_per_execution=32`` (tfkd's setting), the strongest plain baseline, and tfkd under a
MirroredStrategy over the machine's one device (what :func:`tfkd.distribute.make_strategy` gave
before it chose TensorFlow's default strategy for one device). Images/s is over the
epochs after the first (the first traces). Prints a table, the ratios against the plain runs, and
the machine.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import student as student_lib  # noqa: E402
from tfkd.student import models  # noqa: E402

flags.DEFINE_integer("epochs", 3, "Epochs per run (the first is not timed).")
flags.DEFINE_integer("repeats", 2, "Runs of each kind, interleaved.")
flags.DEFINE_list("recipes", ["default", "augmented"], "Recipes to measure.")
flags.DEFINE_integer("images", 48_000, "Training images.")
flags.DEFINE_list("variants", [], "More tfkd kinds: PRECISION[+xla] (e.g. mixed_float16+xla, "
                  "mixed_bfloat16, float32+xla): --mixed_precision and --jit_compile.")
FLAGS = flags.FLAGS
BATCH = 64
AUGMENTED = {"mixup_alpha": 1.0, "rotation_degrees": 10.0, "shift_fraction": 0.1}
PLAIN = {"mixup_alpha": 0.0, "rotation_degrees": 0.0, "shift_fraction": 0.0}


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def images_per_second(timer: EpochTimer, n: int) -> float:
    return (n // BATCH) * BATCH * len(timer.seconds[1:]) / sum(timer.seconds[1:])


def tfkd_run(x, y, recipe: str, strategy=None, variant: str = "float32") -> float:
    precision, _, xla = variant.partition("+")
    config = student_lib.StudentConfig(epochs=FLAGS.epochs, batch_size=BATCH, architecture="lenet5_half",
                                    mixed_precision=precision, jit_compile=True if xla else None,
                                    **(AUGMENTED if recipe == "augmented" else PLAIN)).resolved()
    timer = EpochTimer()
    student_lib.train_student(x, y, config, seed=0, verbose=0, callbacks=[timer], strategy=strategy)
    return images_per_second(timer, len(x))


def plain_run(x, y, recipe: str, steps_per_execution: int = 1) -> float:
    """The reference's pipeline and ``fit`` (see module docstring)."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    augment = keras.Sequential([layers.RandomRotation(10 / 360), layers.RandomTranslation(.1, .1)])

    def batch_mix(images, labels):
        n = tf.shape(images)[0]
        g1, g2 = tf.random.gamma([n], 1.0), tf.random.gamma([n], 1.0)
        lam = g1 / (g1 + g2)
        j = tf.random.shuffle(tf.range(n))
        lx, ly = tf.reshape(lam, [-1, 1, 1, 1]), tf.reshape(lam, [-1, 1])
        images = lx * images + (1 - lx) * tf.gather(images, j)
        labels = ly * labels + (1 - ly) * tf.gather(labels, j)
        return augment(images, training=True), labels

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(BATCH)
    if recipe == "augmented":
        ds = ds.map(batch_mix, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(4)
    model = models.build_model("lenet5_half", x.shape[1:], y.shape[1])
    steps = FLAGS.epochs * (len(x) // BATCH)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
                  keras.losses.CategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    timer = EpochTimer()
    model.fit(ds, epochs=FLAGS.epochs, verbose=0, callbacks=[timer])
    return images_per_second(timer, len(x))


def main(argv):
    del argv
    dataset = data.load_dataset("fashion_mnist")
    x = dataset.x_train[:FLAGS.images]
    y = (np.eye(10, dtype=np.float32)[dataset.y_train[:FLAGS.images]] * 0.91 + 0.009)
    kinds = {"tfkd train_student": tfkd_run,
             "tfkd, MirroredStrategy over the one device":
                 lambda a, b, r: tfkd_run(a, b, r, tf.distribute.MirroredStrategy()),
             **{f"tfkd, {v}": (lambda a, b, r, v=v: tfkd_run(a, b, r, variant=v))
                for v in FLAGS.variants},
             "plain Keras fit": plain_run,
             "plain Keras fit, steps_per_execution=32":
                 lambda a, b, r: plain_run(a, b, r, steps_per_execution=32)}
    results = {}
    for recipe in FLAGS.recipes:
        for _ in range(FLAGS.repeats):
            for name, run in kinds.items():
                results.setdefault((recipe, name), []).append(run(x, y, recipe))
                keras.backend.clear_session()
    print(f"machine: {os.cpu_count()} CPU cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}; "
          f"{len(x)} images, batch {BATCH}, {FLAGS.epochs} epochs per run (first not timed), "
          f"{FLAGS.repeats} runs of each kind interleaved")
    print(f"{'recipe':<10} {'kind':<42} {'images/s (runs)':<28} {'best':>8}")
    for (recipe, name), values in results.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{recipe:<10} {name:<42} {runs:<28} {max(values):>8,.0f}")
    for recipe in FLAGS.recipes:
        ours = max(results[(recipe, "tfkd train_student")])
        for name in list(kinds)[1:]:
            print(f"{recipe}: tfkd / {name}: {ours / max(results[(recipe, name)]):.2f}")
        plain = max(results[(recipe, "plain Keras fit")])
        for v in FLAGS.variants:
            print(f"{recipe}: tfkd {v} / plain Keras fit: "
                  f"{max(results[(recipe, f'tfkd, {v}')]) / plain:.2f}")


if __name__ == "__main__":
    app.run(main)
