"""GPU-ready training, tested on CPU: mixed precision (float16 with loss scaling, bfloat16), XLA
(``jit_compile``), MirroredStrategy over two logical CPU devices, and the learning-rate rule for
the global batch. Mixed precision and XLA run on a CPU (slowly): what is tested here is that the
student trains under them and is exported float32; their speed is measured on a GPU by
``benchmarks/gpu_check.sh``."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfkd import student as student_lib
from tfkd.student import loops

from conftest import REPO


def test_mixed_float16_computes_in_float16_scales_the_loss_and_exports_float32(fashion):
    config = student_lib.StudentConfig(epochs=5, mixup_alpha=0, rotation_degrees=0, shift_fraction=0,
                                    mixed_precision="mixed_float16", jit_compile=True).resolved()
    model = student_lib.build_student(config, (28, 28, 1), 10)
    assert {layer.compute_dtype for layer in model.layers[1:-1]} == {"float16"}
    assert model.layers[-1].compute_dtype == "float32"  # Logits cast back: a float32 loss.
    assert {w.dtype for w in model.weights} == {"float32"}  # Float32 master variables.
    assert isinstance(loops._optimizer(config, 1e-3), keras.optimizers.LossScaleOptimizer)
    images, labels = fashion.x_train[:1280], fashion.y_train[:1280]
    soft = np.eye(10, dtype=np.float32)[labels] * 0.91 + 0.009
    student, history = student_lib.train_student(images, soft, config, seed=0, verbose=0)
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert {layer.compute_dtype for layer in student.layers} == {"float32"}  # What is exported.
    logits = student.predict(images, verbose=0)
    assert logits.dtype == np.float32
    assert np.mean(logits.argmax(1) == labels) > 0.5


@pytest.mark.parametrize("policy,loop", [("mixed_bfloat16", "custom"), ("mixed_float16", "fit")])
def test_two_replicas_train_under_mixed_precision(policy, loop):
    out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                       "two_device_precision.py"), policy, loop],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert np.all(np.isfinite(result["loss"])) and result["loss"][-1] < result["loss"][0]
    assert result["variable_dtypes"] == ["float32"] and result["compute_dtypes"] == ["float32"]
    assert result["output_dtype"] == "float32"
    assert result["accuracy"] > 0.6, result
    assert result["learning_rate"] == pytest.approx(1e-3)  # 32 x 2 replicas: the reference batch.
    # XLA over two CPU devices is refused with what to do (TF cannot place the replicas' steps).
    assert "cannot run XLA-compiled steps" in result["refusal"]


def test_learning_rate_follows_the_global_batch_by_the_stated_rule():
    base = student_lib.StudentConfig(batch_size=64, learning_rate=1e-3)
    assert student_lib.scaled_learning_rate(base, 1) == pytest.approx(1e-3)
    assert student_lib.scaled_learning_rate(base, 4) == pytest.approx(2e-3)  # sqrt(4).
    linear = student_lib.StudentConfig(batch_size=128, learning_rate=1e-3, lr_scaling="linear")
    assert student_lib.scaled_learning_rate(linear, 2) == pytest.approx(4e-3)
    none = student_lib.StudentConfig(batch_size=256, learning_rate=1e-3, lr_scaling="none")
    assert student_lib.scaled_learning_rate(none, 8) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="student.mixed_precision"):
        student_lib.StudentConfig(mixed_precision="float16").validate()


def test_an_epoch_shorter_than_steps_per_execution_shows_its_own_steps(fashion, capsys):
    """9 steps an epoch under the default steps_per_execution (32): the epoch's bar counts 9/9,
    not 32/9 (an execution is capped at the epoch's steps)."""
    config = student_lib.StudentConfig(epochs=1, batch_size=64, mixup_alpha=0,
                                       rotation_degrees=0, shift_fraction=0).resolved()
    assert config.steps_per_execution > 9
    images, labels = fashion.x_train[:576], fashion.y_train[:576]  # 9 batches of 64.
    soft = np.eye(10, dtype=np.float32)[labels]
    student_lib.train_student(images, soft, config, seed=0, verbose=1)
    out = capsys.readouterr().out
    assert "9/9" in out and "32/9" not in out, out[-1500:]
