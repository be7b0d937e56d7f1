"""Active querying (FS-BBT's active module): the rounds' choice, and a killed run that resumes without asking
the teacher again about any image it already had an answer for (and labels the rest of the pool
with a teacher assistant)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import teacher as teacher_lib
from tfkd.methods.fsbbt import active

from conftest import REPO
from conftest import kill_when


def test_balanced_lowest_takes_each_class_lowest_margin_in_turn():
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.05, 0.3, 0.8])
    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    # Turn 1: each group's lowest, lowest first (4, 1, 5); turn 2: (3, 2, 6); then 0.
    assert active.balanced_lowest(scores, groups, 7).tolist() == [4, 1, 5, 3, 2, 6, 0]
    assert active.balanced_lowest(scores, groups, 2).tolist() == [4, 1]
    with pytest.raises(ValueError, match="one per row"):
        active.balanced_lowest(scores, groups[:3], 2)


def test_choice_is_the_proxys_least_certain_images_not_a_random_draw():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(10, 0.3), size=2000).astype(np.float32)
    unlabelled = np.arange(5000, 7000)
    config = active.ActiveConfig()
    chosen = active.choose(200, unlabelled, config, rng, probabilities)
    margin = active.margins(probabilities)
    assert len(chosen) == len(set(chosen)) == 200 and set(chosen) <= set(unlabelled)
    # Low-margin images: the chosen ones' margins are far below the pool's.
    assert margin[chosen - 5000].mean() < 0.5 * margin.mean()
    drawn = active.choose(200, unlabelled, active.ActiveConfig(selection="random"), rng,
                          probabilities)
    assert margin[drawn - 5000].mean() > 0.8 * margin.mean()
    assert active.quotas(10, 4) == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="active.selection"):
        active.ActiveConfig(selection="entropy").validate()


def command(workdir, target):
    return [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
            f"--teacher={target}", "--num_shots=100", "--num_mixup=2000", "--num_cvae=100",
            "--cvae_epochs=2", "--student_epochs=2", "--eval_examples=300", "--active_rounds=3",
            # Room for a round's images in flight at the kill: charged, unanswered, sent again.
            "--query_budget=1300", "--active_labelled_images=600", "--active_proxy_epochs=3",
            "--active_assistant=lenet5", "--active_assistant_epochs=1", "--compress=", "--verbose=0"]


def rounds_chosen(workdir) -> int:
    """Rounds whose choice the run has persisted (0 before the first)."""
    for path in glob.glob(os.path.join(workdir, "active_rounds-*.npz")):
        try:
            with np.load(path) as f:
                return len(f["lengths"])
        except (OSError, ValueError, KeyError):  # Being renamed into place right now.
            return 0
    return 0


@pytest.mark.slow
def test_killed_active_run_resumes_and_pays_no_answered_query_again(tmp_path, server):
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(command(workdir, server.target), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    # Killed once round 2's choice is persisted: round 2 is being (or about to be) labelled.
    kill_when(first, lambda: rounds_chosen(workdir) >= 2, "round 2 chosen")
    ledger = os.path.join(workdir, "ledger")
    answered_at_kill = len(teacher_lib.QueryLedger(ledger))
    charged_at_kill = teacher_lib.QueryAccount(ledger).total

    second = subprocess.run(command(workdir, server.target), capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(open(os.path.join(workdir, "report.json")).read())
    records = report["method_report"]["active_rounds"]
    assert [r["resumed"] for r in records[:2]] == [True, True]
    assert not any(r["resumed"] for r in records[2:])
    assert [r["images"] for r in records[:2]] == [200, 200]
    assert sum(r["images"] for r in records) == 600
    # Between the stored rounds and the third: pool images the ledger already answers (exact copies
    # of chosen ones, a MixUp pair drawn twice with the same rounded λ), labelled at no query.
    assert [r["selection"] for r in records[2:]] in (["margin"], ["ledger", "margin"])
    assert report["transfer_set_sources"]["real"] == 100
    # The 600 chosen images with the teacher's answers, the other 1,500 of the pool (2,000 MixUp
    # + 100 CVAE) with the teacher assistant's, which cost no query.
    assert sum(report["transfer_set_sources"].values()) - 100 == 2100
    assert report["transfer_set_sources"]["assistant"] == 1500
    assert "active_assistant" in report["stage_seconds"]
    # Every query the second process sent got an answer the ledger did not have: nothing already
    # answered was asked again (only images in flight at the kill could be, and were, re-sent).
    answered_after = len(teacher_lib.QueryLedger(ledger))
    assert report["teacher_queries_sent"] == answered_after - answered_at_kill
    assert report["teacher_queries_total"] == charged_at_kill + report["teacher_queries_sent"]
    assert report["teacher_queries_total"] <= 1300
    assert "label_real" not in report["teacher_queries_sent_by_stage"]
    assert report["teacher_queries_sent_by_stage"]["evaluate_teacher"] == 300
