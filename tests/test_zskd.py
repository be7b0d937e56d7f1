"""ZSKD end to end through launch/distill.py: Data Impressions from the teacher's SavedModel
(in-process), the student served and measured over gRPC; and the one-line refusal without it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import data
from tfkd import methods
from tfkd import teacher as teacher_lib
from tfkd.methods.zskd import whitebox

from conftest import REPO
from conftest import sent_by_stage


def _zskd(workdir, *extra):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
           "--method=zskd", "--num_validation=500", "--zskd_count=80", "--zskd_batch_size=4",
           "--zskd_iterations=30", "--zskd_learning_rate=0.05", "--student_epochs=2",
           "--batch_size=16", "--eval_examples=200", "--evaluate_teacher=false", "--compress=",
           "--verbose=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_zskd_runs_end_to_end_from_the_teacher_saved_model(server, teacher_base, tmp_path):
    views = '--params_override={"zskd.views": 1}'
    result = _zskd(tmp_path, f"--teacher={server.target}", f"--teacher_saved_model={teacher_base}",
                   views)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "zskd" and report["student_loss"] == "tempered_kd"
    assert report["transfer_set_sources"] == {"impressions": 80, "views": 80}
    assert report["num_shots"] == 0
    assert report["teacher_queries_sent"] == 0  # White-box: no query at all.
    assert report["stage_seconds"]["impressions"] > 0
    transfer = methods.TransferSet.load(report["labelled_set"])
    assert transfer.images.min() >= 0 and transfer.images.max() <= 1
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, rtol=1e-5)
    # 2 betas x 10 classes x 1 batch of 4: every class drawn 8 times.
    assert 0.0 <= report["student_accuracy"] <= 1.0
    # Each augmented view carries the teacher's answer on the view (softmax at T = 20), not the
    # stored target of the impression it was made from (issue 27).
    is_view = transfer.source == transfer.source_names.index("views")
    teacher = whitebox.SavedModelTeacher(os.path.join(teacher_base, "1"))
    assert teacher.output_key == "logits"  # tfkd's teacher export answers its logits.
    answers = whitebox.label_in_process(teacher.logits, transfer.images[is_view], 20.0)
    np.testing.assert_allclose(transfer.targets[is_view], answers, atol=1e-5)
    assert np.abs(transfer.targets[is_view] - transfer.targets[~is_view]).max() > 1e-3
    again = _zskd(tmp_path, f"--teacher={server.target}", f"--teacher_saved_model={teacher_base}",
                  views)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "impressions" not in json.loads((tmp_path / "report.json").read_text())["stage_seconds"]


def test_zskd_with_only_an_endpoint_stops_with_one_line_naming_both_ways_out(tmp_path):
    result = _zskd(tmp_path, "--teacher=localhost:8500")
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert "--teacher_saved_model" in lines[-1] and "zskd_blackbox" in lines[-1], lines[-3:]
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_zskd_blackbox_runs_end_to_end_on_a_query_budget(server, tmp_path):
    """Two rounds of 40 impressions (10 classes x 2 betas x batches of 2), 3 steps of 2 x 2 probes:
    960 probes and 80 labels. A budget one short is refused before any query; the exact budget
    runs, every query sent is in the account's log, the client's count and the plan; a rerun asks
    nothing."""
    flags = [f"--teacher={server.target}", "--method=zskd_blackbox", "--zskd_count=80",
             "--zskd_batch_size=2", "--zskd_iterations=3", "--zskd_directions=2"]
    short = _zskd(tmp_path / "short", *flags, "--query_budget=1039")
    assert short.returncode != 0 and "query budget of 1039" in short.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "short" / "ledger" / "queries_sent.log").exists() or \
        not sent_by_stage(tmp_path / "short")
    result = _zskd(tmp_path, *flags, "--query_budget=1040")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "zskd_blackbox" and report["student_loss"] == "tempered_kd"
    expected = {"zskd_probes": 960, "label_impressions": 80}
    assert report["teacher_queries_sent_by_stage"] == expected
    assert sent_by_stage(tmp_path) == expected
    # Probes are asked once each and not kept; only the 80 final labels are in the answer ledger.
    assert teacher_lib.QueryLedger(str(tmp_path / "ledger")).rows_on_disk == 80
    assert {k: v for k, v in report["teacher_query_plan"].items() if v} == expected
    assert report["transfer_set_sources"] == {"impressions": 80}
    transfer = methods.TransferSet.load(report["labelled_set"])
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, rtol=1e-5)
    assert (tmp_path / "grid_impressions.png").exists()
    again = _zskd(tmp_path, *flags, "--query_budget=1040")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("dataset,side,channels,teacher,student", [
    ("mnist", 28, 1, "lenet5", "lenet5_half"),
    ("cifar10", 32, 3, "alexnet", "alexnet_half"),
])
def test_zskd_configurations_on_random_tensors(tmp_path, dataset, side, channels, teacher, student):
    """MNIST (LeNet-5 -> LeNet-5-half) and CIFAR-10 (AlexNet -> AlexNet-half) ZSKD end to end on
    tiny random tensors of the right shape (no MNIST or CIFAR data offline): the teacher tfkd trains
    is loaded in-process, 40 impressions made from it, the student exported. The paper's counts
    (24,000 and 40,000) are the launcher's defaults (``impressions.config_for``)."""
    from test_data import write_idx

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, side, side, channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    write_idx(tmp_path / "data", x, np.arange(300) % 10, x[:60], np.arange(60) % 10)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path / 'run'}",
         f"--dataset={dataset}", f"--data_dir={tmp_path / 'data'}", "--method=zskd",
         "--teacher_epochs=1", "--num_shots=20", "--zskd_count=40", "--zskd_batch_size=2",
         "--zskd_iterations=3",
         "--student_epochs=1", "--batch_size=16", "--num_validation=20", "--compress=",
         "--verbose=0"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["teacher_architecture"], report["student_architecture"]) == (teacher, student)
    # The defaults: 4 MixUp views of each impression, relabelled by the teacher.
    assert report["transfer_set_sources"] == {"impressions": 40, "views": 160}
    assert report["method_settings"][0]["count"] == 40
    assert report["method_settings"][0]["iterations"] == 3
    transfer = methods.TransferSet.load(report["labelled_set"]) if report["labelled_set"] else None
    assert transfer is None or transfer.images.shape[1:] == (side, side, channels)
    assert data.dataset_spec(dataset).zskd_impressions == {"mnist": 24_000, "cifar10": 40_000}[dataset]
