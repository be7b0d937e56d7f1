r"""The frontier's stored teacher (benchmarks/teachers/fashion_mnist_lenet5): trains it if it is not
there, with the README main command's teacher recipe (``DistillConfig()``'s ``teacher_train``:
LeNet-5, 20 epochs, Adam 1e-3 with cosine decay, seed 0, on the training split less the 5,000
validation images), then prints its test and validation accuracy over gRPC (tfkd's own server on
a loopback port) as one JSON line.

  python benchmarks/frontier_teacher.py [BASE]     # BASE: default the stored teacher

The same recipe and seed give another teacher on another CPU (TensorFlow's CPU kernels differ by
instruction set), hence a stored one: benchmarks/frontier_runs.py asks it by default.
"""
import json
import os
import platform
import sys

import numpy as np

from tfkd import export
from tfkd import pipeline
from tfkd import serving
from tfkd import teacher
from tfkd import teacher_setup
from tfkd.report import StageTimer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "benchmarks", "teachers", "fashion_mnist_lenet5")


def main(base: str) -> None:
    config = pipeline.DistillConfig(workdir="unused").resolved()
    dataset = pipeline.load_data(config, StageTimer())
    trained = None
    if export.latest_version_dir(base) is None:
        trained = teacher_setup.train_and_export_teacher(dataset, config.teacher_train, base,
                                                         config.seed, verbose=2)
    with serving.ModelServer([serving.ModelConfig("teacher", base)], poll_seconds=0) as srv:
        with teacher.connect(srv.target) as client:
            test = float(np.mean(client.soft_labels(dataset.x_test).argmax(1) == dataset.y_test))
            val = float(np.mean(client.soft_labels(dataset.x_val).argmax(1) == dataset.y_val))
    print(json.dumps({"test_accuracy_grpc": test, "validation_accuracy_grpc": val,
                      "test_examples": len(dataset.y_test),
                      "validation_examples": len(dataset.y_val),
                      "recipe": {**vars(config.teacher_train), "seed": config.seed},
                      "trained_now": trained is not None, "machine": cpu_model()},
                     default=str))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else BASE)
