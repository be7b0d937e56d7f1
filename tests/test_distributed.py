"""tf.distribute on a CPU machine: two logical devices against one, and two workers with TF_CONFIG."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from test_faults import free_port


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_two_replicas_match_one_device(loop):
    """Same data, seed and global batch: per-epoch losses agree to 1e-4 (relative)."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                          "two_device_run.py"), loop],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses["two"]) == len(losses["one"]) == 2
    np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-4)
    assert losses["two"][1] < losses["two"][0]


@pytest.mark.slow
def test_two_workers_export_exactly_one_student(server, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "launch", "distill.py"),
             f"--workdir={tmp_path / f'worker{index}'}", "--strategy=multi_worker",
             f"--teacher={server.target}", "--num_shots=50", "--num_mixup=300", "--num_cvae=30",
             "--cvae_epochs=2", "--student_epochs=2", "--batch_size=32", "--eval_examples=300",
             "--compress=", "--verbose=0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=400))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    chief = json.loads((tmp_path / "worker0" / "report.json").read_text())
    worker = json.loads((tmp_path / "worker1" / "report.json").read_text())
    assert (chief["role"], worker["role"]) == ("chief", "worker")
    assert chief["strategy"] == "multi_worker" and chief["replicas"] == 2
    assert 0.0 <= chief["student_accuracy"] <= 1.0
    exports = [p for p in (tmp_path / "worker0" / "export" / "student",
                           tmp_path / "worker1" / "export" / "student") if p.exists()]
    assert exports == [tmp_path / "worker0" / "export" / "student"]
    assert sorted(os.listdir(exports[0])) == ["1"]
