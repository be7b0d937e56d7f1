"""End to end: the FS-BBT pipeline and the launch/distill.py launcher, with real parts."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd import distill
from tfkd import pipeline
from tfkd import synthesis
from tfkd.teacher import TeacherConfig

from conftest import REPO
from test_data import write_idx

TINY = dict(num_shots=50, mixup=synthesis.MixUpConfig(num_images=200),
            cvae=synthesis.CVAEConfig(epochs=2, batch_size=64, num_images=40),
            student=distill.StudentConfig(epochs=1, batch_size=32), eval_examples=200,
            evaluate_teacher=False, compress=(), verbose=0)


def test_distillation_never_sees_the_true_labels(server, fashion, tmp_path):
    """Two runs whose training labels differ by a renaming of the classes produce the same few-shot
    images and the same teacher-labelled synthetic set: no true-label value reaches the method."""
    x = np.round(fashion.x_train[:3000, ..., 0] * 255).astype(np.uint8)
    xt = np.round(fashion.x_test[:200, ..., 0] * 255).astype(np.uint8)
    y, yt = fashion.y_train[:3000], fashion.y_test[:200]
    write_idx(tmp_path / "true", x, y, xt, yt)
    write_idx(tmp_path / "renamed", x, (y * 3 + 7) % 10, xt, yt)
    sets = {}
    for name in ("true", "renamed"):
        config = pipeline.FSBBTConfig(workdir=str(tmp_path / f"run_{name}"),
                                      data_dir=str(tmp_path / name),
                                      teacher=TeacherConfig(target=server.target), **TINY)
        report = pipeline.run_fsbbt(config)
        assert report["teacher_queries"] == 50 + 200 + 40
        sets[name] = (np.load(tmp_path / f"run_{name}" / "few_shot_indices.npy"),
                      pipeline.LabelledSet.load(report["labelled_set"]))
    (idx_a, set_a), (idx_b, set_b) = sets["true"], sets["renamed"]
    np.testing.assert_array_equal(idx_a, idx_b)
    real_and_mixup = set_a.source < 2
    np.testing.assert_array_equal(set_a.images[real_and_mixup], set_b.images[real_and_mixup])
    np.testing.assert_allclose(set_a.soft_labels[real_and_mixup], set_b.soft_labels[real_and_mixup],
                               atol=1e-6)
    # The CVAE is conditioned on the teacher's classes, never the true ones.
    assert set_a.count("cvae") == set_b.count("cvae") == 40


def run_launcher(workdir, *extra):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
           "--teacher_epochs=1", "--num_shots=100", "--num_mixup=400", "--num_cvae=100",
           "--cvae_epochs=3", "--student_epochs=2", "--eval_examples=500", "--verbose=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_launch_distill_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = run_launcher(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student accuracy (served)" in result.stdout
    report = json.loads((workdir / "report.json").read_text())
    for key in ("dataset", "num_shots", "num_mixup", "num_cvae", "teacher_queries",
                "teacher_accuracy", "student_accuracy", "student_export_dir", "teacher_parameters",
                "student_parameters", "teacher_saved_model_bytes", "student_saved_model_bytes",
                "stage_seconds"):
        assert key in report, key
    assert (report["num_shots"], report["num_mixup"], report["num_cvae"]) == (100, 400, 100)
    assert report["teacher_queries"] == 600 and report["teacher_ledger_hits"] == 0
    assert report["teacher_accuracy"] > 0.7  # One epoch on the full training set.
    assert 0.0 <= report["student_accuracy"] <= 1.0
    assert report["student_parameters"] == 35_820 and report["teacher_parameters"] == 61_706
    assert set(report["stage_seconds"]) >= {"teacher_training", "cvae_training", "student_training"}
    flags_json = json.loads((workdir / "flags.json").read_text())
    assert flags_json["num_shots"] == 100
    for grid in ("grid_real.png", "grid_mixup.png", "grid_cvae.png"):
        assert (workdir / grid).stat().st_size > 1000

    # The exported student honours the signature contract.
    export_dir = report["student_export_dir"]
    assert os.path.basename(export_dir) == "1"
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    (_, inputs), outputs = fn.structured_input_signature, fn.structured_outputs
    assert list(inputs) == ["images"] and inputs["images"].dtype == tf.float32
    assert inputs["images"].shape.as_list() == [None, 28, 28, 1]
    assert outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["classes"].dtype == tf.int64
    assert os.path.exists(os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests"))
    # Compressed variants, each measured by serving it.
    variants = report["student_variants"]
    assert set(variants) == {"float32", "float16", "int8"}
    assert variants["float32"]["accuracy"] == report["student_accuracy"]
    for name in ("float16", "int8"):
        v = variants[name]
        assert abs(v["accuracy_change"]) < 0.05, v
        assert v["saved_model_bytes"] < variants["float32"]["saved_model_bytes"]
        assert v["cpu_latency_ms"]["batch_1"] > 0
        assert os.path.basename(os.path.dirname(v["export_dir"])) == f"student_{name}"

    # A second run on the same work dir pays for nothing again: zero teacher queries, no retraining
    # of the teacher, the finished student epochs restored; it exports version 2.
    again = run_launcher(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    report2 = json.loads((workdir / "report.json").read_text())
    assert report2["teacher_queries"] == 0
    assert "teacher_training" not in report2["stage_seconds"]
    assert os.path.basename(report2["student_export_dir"]) == "2"


def test_launcher_rejects_bad_flags_and_missing_data(tmp_path):
    bad = run_launcher(tmp_path / "bad", "--num_shots=-5")
    assert bad.returncode != 0 and "--num_shots must be positive" in bad.stderr
    missing = run_launcher(tmp_path / "missing", f"--data_dir={tmp_path / 'nothing'}")
    assert missing.returncode == 1
    assert "error: data_dir=" in missing.stderr and "Traceback" not in missing.stderr


CUSTOM_FLAGS = ["--teacher_model_name=custom", "--teacher_signature=predict_scores",
                "--teacher_input_key=pixels", "--teacher_input_dtype=uint8",
                "--teacher_input_scale=255", "--evaluate_teacher"]


@pytest.mark.slow
@pytest.mark.parametrize("output_flags,kind", [
    (["--teacher_output_key=scores", "--teacher_output=logits"], "logits"),
    (["--teacher_output_key=label", "--teacher_output=classes"], "classes"),
])
def test_launch_distill_any_teacher_with_flags_only(custom_server, tmp_path, output_flags, kind):
    """A plain tf.Module teacher (uint8 [b, 28, 28] 'pixels' -> 'scores' logits / 'label' ids)."""
    workdir = tmp_path / "run"
    result = run_launcher(workdir, f"--teacher={custom_server.target}", *CUSTOM_FLAGS, *output_flags)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["teacher_output_kind"] == kind
    assert report["teacher"]["input"] == "pixels uint8 [-1, 28, 28] x255"
    assert report["teacher_queries_sent"] == 600 and report["teacher_ledger_hits"] == 0
    assert report["teacher_accuracy"] > 0.6  # The served tf.Module, read through the flags.
    assert "teacher_training" not in report["stage_seconds"]  # A remote teacher: never trained here.
    labelled = pipeline.LabelledSet.load(report["labelled_set"])
    if kind == "classes":  # Label-only: FS-BBT trains on one-hot targets.
        assert set(np.unique(labelled.soft_labels)) == {0.0, 1.0}
    else:
        assert len(np.unique(labelled.soft_labels)) > 100


def test_launcher_query_budget(custom_server, tmp_path):
    result = run_launcher(tmp_path / "run", f"--teacher={custom_server.target}",
                          "--teacher_model_name=teacher", "--query_budget=300")
    assert result.returncode == 1
    assert "error:" in result.stderr and "query budget leaves 300" in result.stderr
    assert "Traceback" not in result.stderr


def test_methods_share_the_synthetic_budget():
    base = pipeline.FSBBTConfig(workdir="unused", mixup=synthesis.MixUpConfig(num_images=430),
                                cvae=synthesis.CVAEConfig(num_images=70))
    counts = {m: (pipeline.method_config(dataclasses.replace(base, method=m)).mixup.num_images,
                  pipeline.method_config(dataclasses.replace(base, method=m)).cvae.num_images)
              for m in pipeline.METHODS}
    assert counts == {"student_alone": (0, 0), "standard_kd": (0, 0), "mixup": (500, 0),
                      "cvae": (0, 500), "fsbbt": (430, 70)}
    with pytest.raises(ValueError, match="method='dfad'"):
        pipeline.method_config(dataclasses.replace(base, method="dfad"))
