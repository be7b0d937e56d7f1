r"""The compressed students (issue 28): size on disk, accuracy served over gRPC, and latency, for
every export format (:data:`tfkd.export.FORMATS`: float32, float16, int8 = LiteRT full integer) of
two students trained here on real Fashion-MNIST.

  python benchmarks/compression.py > benchmarks/reports/issue38/compression.txt

Students (trained by :func:`tfkd.student.train_student` on true labels: what is measured is the
export, not distillation):

- ``lenet5_half`` (28x28x1, 35,820 parameters): 48,000 training images, 8 epochs;
- ``mobilenet_v3_small`` (``keras.applications``, the ``--images`` default; 32x32x1 here, the
  images padded): 12,000 training images, 4 epochs, BatchNorm statistics re-estimated.

Each format is exported with :func:`tfkd.export.export_classifier` (int8 calibrated on 500
training images, as the pipeline calibrates on the transfer set), served together by tfkd's gRPC
server, and measured: bytes of the version directory; top-1 accuracy on the test images through
the server; in-process CPU latency (median ms, :func:`tfkd.evaluation.cpu_latency_ms`) at batch 1
and 64; and the served round trip at batch 1 (median ms of Predict over loopback gRPC). Then, per
student, the line a run's report gives each format slower than float32 at batch 1 or 64
(:func:`tfkd.report.slower_than_float32`), or that none is. The formats of one student are
measured one after another in one process, so their latencies compare.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import evaluation  # noqa: E402
from tfkd import export  # noqa: E402
from tfkd import report  # noqa: E402
from tfkd import serving  # noqa: E402
from tfkd import student as student_lib  # noqa: E402
from tfkd.teacher import client as client_lib  # noqa: E402

flags.DEFINE_list("students", ["lenet5_half", "mobilenet_v3_small"], "Students to measure.")
flags.DEFINE_integer("test_images", 10_000, "Test images the served accuracy is measured on.")
FLAGS = flags.FLAGS
RECIPES = {"lenet5_half": (48_000, 8, (28, 28)), "mobilenet_v3_small": (12_000, 4, (32, 32))}


def train(name: str, dataset):
    """(the trained student, its training images, test images) at the student's input size."""
    n, epochs, size = RECIPES[name]
    pad = [(0, 0), ((size[0] - 28) // 2,) * 2, ((size[1] - 28) // 2,) * 2, (0, 0)]
    x, x_test = np.pad(dataset.x_train[:n], pad), np.pad(dataset.x_test, pad)
    config = student_lib.StudentConfig(architecture=name, epochs=epochs, mixup_alpha=0.0,
                                    rotation_degrees=0.0, shift_fraction=0.0).resolved()
    start = time.perf_counter()
    model, _ = student_lib.train_student(x, np.eye(10, dtype=np.float32)[dataset.y_train[:n]], config,
                                      seed=0, verbose=0)
    print(f"{name}: trained {epochs} epochs on {n} images in {time.perf_counter() - start:.0f} s",
          flush=True)
    return model, x, x_test


def served_latency_ms(client, image: np.ndarray, repeats: int = 50) -> float:
    encoded = client.encode(image[None])
    client.predict_raw(encoded)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.predict_raw(encoded)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def measure(name: str, dataset, root: str) -> list[tuple]:
    model, x, x_test = train(name, dataset)
    x_test, y_test = x_test[:FLAGS.test_images], dataset.y_test[:FLAGS.test_images]
    dirs = {fmt: export.export_classifier(
        model, os.path.join(root, name, export.FORMATS[fmt].servable_name), variant=fmt,
        calibration_images=x[:500]) for fmt in export.FORMATS}
    rows = []
    configs = [serving.ModelConfig(export.FORMATS[f].servable_name, os.path.dirname(d))
               for f, d in dirs.items()]
    with serving.ModelServer(configs, poll_seconds=0) as server:
        for fmt, version_dir in dirs.items():
            with client_lib.connect(server.target, export.FORMATS[fmt].servable_name,
                                    role="student") as student:
                accuracy = float(np.mean(client_lib.top1(student, x_test) == y_test))
                served = served_latency_ms(student, x_test[0])
            latency = evaluation.cpu_latency_ms(version_dir, x_test[:64])
            rows.append((name, fmt, export.saved_model_bytes(version_dir), accuracy,
                         latency["batch_1"], latency["batch_64"], served))
    return rows


def main(argv):
    del argv
    dataset = data.load_dataset("fashion_mnist")
    root = tempfile.mkdtemp(prefix="tfkd-compression-")
    rows = [row for name in FLAGS.students for row in measure(name, dataset, root)]
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPU cores, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; served accuracy on {FLAGS.test_images} "
          "test images; latency: median ms")
    print(f"{'student':<20} {'format':<8} {'bytes':>10} {'x smaller':>9} {'accuracy %':>10} "
          f"{'change':>7} {'ms b=1':>7} {'ms b=64':>8} {'served b=1':>10}")
    base = {r[0]: r for r in rows if r[1] == "float32"}
    for name, fmt, size, accuracy, b1, b64, served in rows:
        ref = base[name]
        print(f"{name:<20} {fmt:<8} {size:>10,} {ref[2] / size:>9.2f} {100 * accuracy:>10.2f} "
              f"{100 * (accuracy - ref[3]):>+7.2f} {b1:>7.3f} {b64:>8.3f} {served:>10.3f}")
    for name in FLAGS.students:
        variants = {r[1]: {"cpu_latency_ms": {"batch_1": r[4], "batch_64": r[5]}}
                    for r in rows if r[0] == name}
        flags = report.slower_than_float32(variants)
        for line in flags.values() or ["no format slower than float32 at batch 1 or 64"]:
            print(f"{name}: {line}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU model unknown"


if __name__ == "__main__":
    app.run(main)
