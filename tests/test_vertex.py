"""Issue 14: Vertex AI custom-training conventions. The launcher runs as a Vertex job would (the
AIP_* variables set; here local directories, as Vertex's are gs:// ones this machine cannot reach),
and the export, checkpoints and TensorBoard events are found where the variables point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd import vertex

from conftest import REPO


def test_output_dirs_read_the_aip_variables():
    dirs = vertex.OutputDirs.from_environ({"AIP_MODEL_DIR": "gs://b/model", "AIP_CHECKPOINT_DIR": "",
                                           "AIP_TENSORBOARD_LOG_DIR": "gs://b/logs"})
    assert dirs == vertex.OutputDirs("gs://b/model", None, "gs://b/logs")
    assert dirs.to_dict() == {"model_dir": "gs://b/model", "tensorboard_dir": "gs://b/logs"}


@pytest.mark.slow
def test_a_launcher_run_with_aip_variables_writes_its_outputs_there(server, fashion, tmp_path):
    aip = {"AIP_MODEL_DIR": tmp_path / "aip" / "model",
           "AIP_CHECKPOINT_DIR": tmp_path / "aip" / "checkpoints",
           "AIP_TENSORBOARD_LOG_DIR": tmp_path / "aip" / "logs"}
    env = dict(os.environ, **{k: str(v) for k, v in aip.items()})
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
         f"--teacher={server.target}", "--num_shots=100", "--num_mixup=100", "--num_cvae=50",
         "--cvae_epochs=1", "--student_epochs=2", "--eval_examples=200", "--compress=float16",
         "--verbose=0"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["output_dirs"] == {"model_dir": str(aip["AIP_MODEL_DIR"]),
                                     "checkpoint_dir": str(aip["AIP_CHECKPOINT_DIR"]),
                                     "tensorboard_dir": str(aip["AIP_TENSORBOARD_LOG_DIR"])}
    # AIP_MODEL_DIR: a plain SavedModel at its root (what Vertex's serving container loads), the
    # same student as the work dir's export; the variant and the model card beside it.
    model_dir = aip["AIP_MODEL_DIR"]
    assert (model_dir / "saved_model.pb").exists() and (model_dir / "model_card.md").exists()
    assert (model_dir / "variants" / "float16" / "saved_model.pb").exists()
    images = tf.constant(fashion.x_test[:16])
    copied = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    exported = tf.saved_model.load(report["student_export_dir"]).signatures["serving_default"]
    np.testing.assert_array_equal(copied(images=images)["probabilities"].numpy(),
                                  exported(images=images)["probabilities"].numpy())
    # AIP_CHECKPOINT_DIR: the student's training state; none left in the work dir.
    backups = list(aip["AIP_CHECKPOINT_DIR"].glob("student_backup-*"))
    assert len(backups) == 1 and any(p.is_file() for p in backups[0].rglob("*"))
    assert not list(workdir.glob("student_backup-*"))
    # AIP_TENSORBOARD_LOG_DIR: the student's events and the synthesis grids.
    events = {p.parent.relative_to(aip["AIP_TENSORBOARD_LOG_DIR"]).as_posix()
              for p in aip["AIP_TENSORBOARD_LOG_DIR"].rglob("events.out.tfevents.*")}
    assert {"synthesis", "student/train", "student/validation"} <= events, events
    assert not (workdir / "tensorboard").exists()
