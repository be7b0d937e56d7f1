"""DB3KD end to end: launch/distill.py --method=db3kd (fsbbt_db3kd, zsdb3kd) over gRPC against a
decision-based teacher: the test teacher re-exported with only its ``classes`` output."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import methods
from tfkd import teacher
from tfkd.methods.db3kd import boundary

from conftest import REPO
from conftest import config_of
from conftest import kill_when


def _command(workdir, server, *extra):
    return [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
            f"--teacher={server.target}", "--method=db3kd", "--num_shots=30", "--num_validation=500",
            "--db3kd_directions=2", "--db3kd_tolerance=1e-3", "--student_epochs=2",
            "--batch_size=16", "--eval_examples=200", "--evaluate_teacher=false", "--compress=",
            "--verbose=0", *extra]


def _db3kd(workdir, server, *extra):
    return subprocess.run(_command(workdir, server, *extra), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_db3kd_runs_end_to_end_on_top1_labels_only(label_only_server, server, tmp_path):
    result = _db3kd(tmp_path, label_only_server)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "db3kd" and report["student_loss"] == "db3kd"
    assert report["teacher"]["label_only"] and report["teacher_output_kind"].startswith("classes")
    assert report["teacher"]["output_kind"] == "classes"  # The served teacher answers ids only.
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
    again = _db3kd(tmp_path, label_only_server, "--db3kd_directions=3")
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent_by_stage"]
    assert "label_real" not in rerun  # The N labels come from the ledger.
    assert 0 < rerun["db3kd_search"] < sent["db3kd_search"]


def test_db3kd_settings_are_checked_before_anything_runs(tmp_path):
    from tfkd import pipeline

    bad = config_of(workdir=str(tmp_path / "w"), method="db3kd",
                                 db3kd=boundary.BoundaryConfig(search="hsja"))
    with pytest.raises(ValueError, match="db3kd.search=.hsja."):
        pipeline.run(bad)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_fsbbt_db3kd_gives_synthetic_images_boundary_soft_labels(label_only_server, tmp_path):
    """FS-BBT's MixUp and CVAE images, labelled by the decision-based teacher, with DB3KD soft
    labels."""
    result = _db3kd(tmp_path, label_only_server, "--method=fsbbt_db3kd", "--num_mixup=40", "--num_cvae=20",
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
def test_db3kd_mbd_refines_every_pair_end_to_end(label_only_server, tmp_path):
    """--db3kd_search=mbd: bd, then the Sign-OPT refinement of every pair within its budget."""
    result = _db3kd(tmp_path, label_only_server, "--num_shots=10", "--batch_size=8", "--db3kd_search=mbd",
                    "--db3kd_mbd_queries=60", "--db3kd_mbd_directions=10")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sent = report["teacher_queries_sent_by_stage"]["db3kd_search"]
    # Every one of the 90 pairs spent at least its 60-query refinement budget on top of bd.
    assert 90 * 60 < sent <= report["teacher_query_plan"]["db3kd_search"]


@pytest.mark.slow
def test_zsdb3kd_runs_end_to_end_without_real_images(label_only_server, tmp_path):
    """Zero-shot: pseudo-samples from noise and the label-only teacher alone; no real image enters
    the transfer set. A rerun reuses the persisted samples and search: nothing is asked again; one
    without the search (0 directions) trains on the same samples' one-hot answers."""
    extra = ["--method=zsdb3kd", "--zsdb3kd_per_class=3", "--zsdb3kd_iterations=1",
             "--zsdb3kd_queries=30", "--zsdb3kd_init_directions=2", "--db3kd_directions=1",
             "--db3kd_tolerance=1e-2", "--batch_size=8"]
    result = _db3kd(tmp_path, label_only_server, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sources = report["transfer_set_sources"]
    assert list(sources) == ["pseudo"] and 10 <= sources["pseudo"] <= 30 and report["num_shots"] == 0
    sent = report["teacher_queries_sent_by_stage"]
    assert "label_real" not in sent and sent["zsdb3kd_samples"] > 0 and sent["db3kd_search"] > 0
    assert sent["zsdb3kd_samples"] <= report["teacher_query_plan"]["zsdb3kd_samples"]
    recipe = report["student_recipe"]  # Noise is not augmented with its stored target.
    assert (recipe["mixup_alpha"], recipe["rotation_degrees"], recipe["shift_fraction"]) == (0, 0, 0)
    again = _db3kd(tmp_path, label_only_server, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent"] == 0
    # No search (--db3kd_directions=0): the same samples with one-hot top-1 targets, no query.
    before = set(glob.glob(str(tmp_path / "transfer_set-*.npz")))
    plain = _db3kd(tmp_path, label_only_server, *extra[:-3], "--db3kd_directions=0", "--batch_size=8")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent"] == 0
    (new,) = set(glob.glob(str(tmp_path / "transfer_set-*.npz"))) - before
    with np.load(new) as f:
        assert np.all(np.sort(f["targets"], axis=1)[:, -2:] == [0.0, 1.0])


def _search_state(workdir):
    """(next direction int64 [P], queries int64 [P]) of the persisted search, or None before the
    first chunk ends."""
    paths = glob.glob(os.path.join(workdir, "boundary_state-*.npz"))
    if not paths:
        return None
    with np.load(paths[0]) as f:
        return f["next_direction"], f["queries"]


@pytest.mark.slow
def test_a_run_killed_mid_search_asks_no_finished_pair_again(label_only_server, tmp_path):
    """SIGKILL once the first chunk of (image, class) pairs is persisted; the rerun asks exactly
    what the pairs unfinished at the kill cost (the search's per-pair counts, against the client's
    independent account), and the finished pairs' state is untouched."""
    extra = ["--num_shots=100", "--db3kd_directions=3", "--db3kd_tolerance=1e-5",
             "--db3kd_chunk_pairs=45"]  # 900 pairs in 20 chunks.
    first = subprocess.Popen(_command(tmp_path, label_only_server, *extra),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(first, lambda: (state := _search_state(tmp_path)) is not None and (state[0] == 3).any(),
              "no chunk of the search finished")  # Killed mid-search, as a preempted job.
    next_direction, killed_queries = _search_state(tmp_path)
    finished = next_direction == 3
    assert 0 < finished.sum() < len(finished), "the search was not stopped half-way"

    again = _db3kd(tmp_path, label_only_server, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    sent = json.loads((tmp_path / "report.json").read_text())["teacher_queries_sent_by_stage"]
    final_direction, final_queries = _search_state(tmp_path)
    assert (final_direction == 3).all()
    np.testing.assert_array_equal(final_queries[finished], killed_queries[finished])
    assert "label_real" not in sent  # The 100 labels are in the ledger.
    assert sent["db3kd_search"] == final_queries[~finished].sum() > 0
