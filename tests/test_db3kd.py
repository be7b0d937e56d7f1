"""DB3KD end to end: launch/distill.py --method=db3kd against the served teacher, which the method
sees only through its label-only view (top-1 class ids)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import boundary
from tfkd import methods
from tfkd import teacher

from conftest import REPO


def _db3kd(workdir, server, *extra):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
           f"--teacher={server.target}", "--method=db3kd", "--num_shots=30", "--num_validation=500",
           "--db3kd_directions=2", "--db3kd_tolerance=1e-3", "--student_epochs=2", "--batch_size=16",
           "--eval_examples=200", "--evaluate_teacher=false", "--compress=", "--verbose=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_db3kd_runs_end_to_end_on_top1_labels_only(server, tmp_path):
    result = _db3kd(tmp_path, server)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "db3kd" and report["student_loss"] == "db3kd"
    assert report["teacher"]["label_only"]  # The method asked for top-1 labels only.
    sent = report["teacher_queries_sent_by_stage"]
    assert sent["label_real"] == 30 and 0 < sent["db3kd_search"]
    assert sent["db3kd_search"] <= report["teacher_query_plan"]["db3kd_search"]  # An upper bound.
    # Soft labels from boundary distances: not one-hot, largest at the teacher's top-1 class.
    transfer = methods.TransferSet.load(report["labelled_set"])
    with teacher.connect(server.target) as probabilities:
        top1 = probabilities.soft_labels(transfer.images).argmax(axis=1)
    assert transfer.targets.shape == (30, 10) and len(np.unique(transfer.targets)) > 30
    np.testing.assert_array_equal(transfer.targets.argmax(axis=1), top1)
    assert 0.0 <= report["student_accuracy"] <= 1.0
    # A rerun with one more direction continues the persisted search: it never asks the first
    # two directions again, so it costs less than the first run's search.
    again = _db3kd(tmp_path, server, "--db3kd_directions=3")
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent_by_stage"]
    assert "label_real" not in rerun  # The N labels come from the ledger.
    assert 0 < rerun["db3kd_search"] < sent["db3kd_search"]


def test_db3kd_settings_are_checked_before_anything_runs(tmp_path):
    from tfkd import pipeline

    bad = pipeline.DistillConfig(workdir=str(tmp_path / "w"), method="db3kd",
                                 db3kd=boundary.BoundaryConfig(search="hsja"))
    with pytest.raises(ValueError, match="db3kd.search=.hsja."):
        pipeline.run(bad)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_fsbbt_db3kd_gives_synthetic_images_boundary_soft_labels(server, tmp_path):
    """FS-BBT's MixUp and CVAE images, labelled through the top-1 view, with DB3KD soft labels."""
    result = _db3kd(tmp_path, server, "--method=fsbbt_db3kd", "--num_mixup=40", "--num_cvae=20",
                    "--cvae_epochs=2", "--db3kd_directions=1", "--db3kd_tolerance=1e-2")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["transfer_set_sources"] == {"real": 30, "mixup": 40, "cvae": 20}
    sent = report["teacher_queries_sent_by_stage"]
    assert (sent["label_real"], sent["label_mixup"], sent["label_cvae"]) == (30, 40, 20)
    assert 0 < sent["db3kd_search"] <= report["teacher_query_plan"]["db3kd_search"]
    transfer = methods.TransferSet.load(report["labelled_set"])
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, rtol=1e-5)
    assert len(np.unique(transfer.targets[transfer.source != 0])) > 60  # Not one-hot.


@pytest.mark.slow
def test_db3kd_mbd_refines_every_pair_end_to_end(server, tmp_path):
    """--db3kd_search=mbd: bd, then the Sign-OPT refinement of every pair within its budget."""
    result = _db3kd(tmp_path, server, "--num_shots=10", "--batch_size=8", "--db3kd_search=mbd",
                    "--db3kd_mbd_queries=60", "--db3kd_mbd_directions=10")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sent = report["teacher_queries_sent_by_stage"]["db3kd_search"]
    # Every one of the 90 pairs spent at least its 60-query refinement budget on top of bd.
    assert 90 * 60 < sent <= report["teacher_query_plan"]["db3kd_search"]


@pytest.mark.slow
def test_zsdb3kd_runs_end_to_end_without_real_images(server, tmp_path):
    """Zero-shot: pseudo-samples from noise and the label-only teacher alone; no real image enters
    the transfer set. A rerun reuses the persisted samples and search: nothing is asked again."""
    extra = ["--method=zsdb3kd", "--zsdb3kd_per_class=3", "--zsdb3kd_iterations=1",
             "--zsdb3kd_queries=30", "--zsdb3kd_init_directions=2", "--db3kd_directions=1",
             "--db3kd_tolerance=1e-2", "--batch_size=8"]
    result = _db3kd(tmp_path, server, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sources = report["transfer_set_sources"]
    assert list(sources) == ["pseudo"] and 10 <= sources["pseudo"] <= 30 and report["num_shots"] == 0
    sent = report["teacher_queries_sent_by_stage"]
    assert "label_real" not in sent and sent["zsdb3kd_samples"] > 0 and sent["db3kd_search"] > 0
    assert sent["zsdb3kd_samples"] <= report["teacher_query_plan"]["zsdb3kd_samples"]
    again = _db3kd(tmp_path, server, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent"] == 0
