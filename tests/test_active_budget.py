"""Active querying under a query budget (issue 35, finding 2): an answer paid for is used and never
counted as new. Reruns of a budgeted FS-BBT run in the same work dir, on a real teacher served over
gRPC and real Fashion-MNIST: a raised budget extends the earlier rounds and pays only the new
images; a setting that sends nothing (the assistant's epochs), another number of rounds or another
selection, and a damaged rounds state all rerun on the ledger's answers without a refusal.

Before the fix each rerun below was refused by the budget pre-check ("label_active ... needs 500
more teacher queries, but the query budget of 600 leaves 200"), the damaged state's recompute
likewise, and a state of more rounds than images trained a proxy for each empty round."""

import glob
import json
import os

import numpy as np
import pytest

import tfkd
from tfkd import teacher as teacher_lib
from tfkd import workdir as workdir_lib
from tfkd.methods import fsbbt
from tfkd.methods.fsbbt import active
from tfkd.methods.fsbbt import synthesis

REAL = 100  # --num_shots: the real images, labelled first (evaluate_teacher off: no test images).
POOL = 500 + 100  # 500 MixUp + 100 CVAE images: the pool the rounds choose from.


def _run(workdir, server, budget, **active_fields):
    fields = dict(rounds=2, proxy_epochs=1, assistant="lenet5", assistant_epochs=1)
    fields.update(active_fields)
    return tfkd.distill(
        workdir=str(workdir), num_shots=REAL, evaluate_teacher=False, eval_examples=200,
        compress=(), verbose=0,
        teacher=tfkd.TeacherConfig(target=server.target, model_name="teacher",
                                   query_budget=budget),
        mixup=synthesis.MixUpConfig(num_images=500),
        cvae=synthesis.CVAEConfig(num_images=100, epochs=1),
        student=tfkd.StudentConfig(epochs=1, batch_size=64),
        active=active.ActiveConfig(**fields))


def _labelled_by_teacher(report) -> int:
    """Pool images in the transfer set with the teacher's answers (not the assistant's)."""
    sources = report.transfer_set_sources
    return sum(n for name, n in sources.items() if name not in ("real", "assistant"))


@pytest.fixture(scope="module")
def first(server, tmp_path_factory):
    """A finished run with a budget of 400: 100 real images and 300 of the 600 pool images."""
    workdir = tmp_path_factory.mktemp("budget") / "run"
    report = _run(workdir, server, 400)
    assert report.teacher_queries_total == 400 and _labelled_by_teacher(report) == 300
    assert report.transfer_set_sources["assistant"] == POOL - 300
    return workdir


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_a_raised_budget_extends_the_earlier_rounds_and_pays_only_the_new_images(
        first, server, tmp_path):
    workdir = _copy(first, tmp_path / "raised")
    report = _run(workdir, server, 600)
    # 200 new images, none of the 400 paid for sent again, and all 500 pool answers used.
    assert report.teacher_queries_sent == 200
    assert report.teacher_queries_total == 600
    assert _labelled_by_teacher(report) == 500
    assert report.transfer_set_sources["assistant"] == POOL - 500
    rounds = report.method_report["active_rounds"]
    assert [r["resumed"] for r in rounds[:2]] == [True, True] and not rounds[-1]["resumed"]
    assert sum(r["images"] for r in rounds) == 500
    # The configured rounds are spent: the new images are one round of their own, not two (a
    # survivor of issue 35's mutation sample: max(2, rounds - paid) passed every test).
    assert len(rounds) == 3 and rounds[-1]["images"] == 200
    # Its own transfer set: the active settings (the 500 images) are in the set's fingerprint.
    with open(os.path.join(first, "report.json")) as f:
        earlier = json.load(f)["labelled_set"]
    assert os.path.basename(report.labelled_set) != os.path.basename(earlier)


@pytest.mark.parametrize("change", [{"assistant_epochs": 2}, {"rounds": 3, "selection": "random"}])
def test_a_rerun_with_settings_that_choose_or_cost_nothing_pays_no_query_again(
        first, server, tmp_path, change, monkeypatch, fashion):
    workdir = _copy(first, tmp_path / "rerun")
    taught = []
    assistant = fsbbt.SyntheticMethod.assistant

    def spy(self, ctx, images, targets):
        taught.append((images, targets, ctx.few_shot))
        return assistant(self, ctx, images, targets)

    monkeypatch.setattr(fsbbt.SyntheticMethod, "assistant", spy)
    report = _run(workdir, server, 400, **change)
    assert report.teacher_queries_sent == 0
    assert _labelled_by_teacher(report) == 300  # Every paid answer is in the transfer set.
    # The teacher assistant learns from every teacher-labelled image: the 100 real ones too.
    ((images, targets, shots),) = taught
    assert len(images) == len(targets) == REAL + 300
    assert np.array_equal(images[:REAL], shots)


def test_fewer_labelled_images_than_were_paid_for_strands_no_answer(first, server, tmp_path):
    workdir = _copy(first, tmp_path / "fewer")
    report = _run(workdir, server, 400, labelled_images=200)
    assert report.teacher_queries_sent == 0
    assert _labelled_by_teacher(report) == 300


def test_a_damaged_rounds_state_is_recovered_from_the_ledger_with_no_query(
        first, server, tmp_path):
    workdir = _copy(first, tmp_path / "damaged")
    (state,) = glob.glob(os.path.join(workdir, "active_rounds-*.npz"))
    with open(state, "r+b") as f:  # A torn write: the zip's tail is gone.
        f.truncate(os.path.getsize(state) // 2)
    report = _run(workdir, server, 400, assistant_epochs=2)
    assert [d["what"] for d in report.damaged_artifacts] == ["active querying rounds"]
    assert report.teacher_queries_sent == 0
    assert _labelled_by_teacher(report) == 300
    assert report.method_report["active_rounds"][0]["selection"] == "ledger"


def _state(tmp_path, lengths, indices, pool_size=10, images=None):
    path = str(tmp_path / "active_rounds-x.npz")
    n = len(indices) if images is None else images
    np.savez(path, pool_size=np.asarray(pool_size), lengths=np.asarray(lengths, np.int64),
             indices=np.asarray(indices, np.int64), images=np.zeros((n, 2, 2, 1), np.float32))
    return path


@pytest.mark.parametrize("lengths, indices, images", [
    ([3, 2], [0, 1, 2, 3], None),  # The lengths name 5 indices, 4 stored.
    ([2, 2], [0, 1, 2, 3], 3),  # 3 images for 4 indices.
    ([2, 2], [0, 1, 1, 3], None),  # An index chosen twice.
    ([2, 2], [0, 1, 2, 10], None),  # An index outside the pool of 10.
    ([2, -1, 3], [0, 1, 2, 3], None),  # A negative length.
])
def test_an_inconsistent_rounds_state_is_set_aside_not_an_index_error(
        tmp_path, lengths, indices, images):
    path = _state(tmp_path, lengths, indices, images=images)
    with pytest.raises(tfkd.errors.WorkdirError, match="active_rounds-x.npz"):
        active.RoundState.load(path, 10)
    (damaged,) = workdir_lib.check(str(tmp_path))
    assert damaged["what"] == "active querying rounds" and not os.path.exists(path)
    # A consistent state reads back as written.
    good = active.RoundState.load(_state(tmp_path, [2, 2], [0, 1, 2, 3]), 10)
    assert [c.tolist() for c in good.chosen] == [[0, 1], [2, 3]]


def test_more_rounds_than_images_trains_no_proxy_for_an_empty_round(tmp_path):
    pool = np.random.default_rng(0).random((20, 4, 4, 1), dtype=np.float32)
    known = pool[:0]
    proxies = []

    def train_proxy(images, targets):
        proxies.append(len(images))
        return lambda x: np.tile([[0.6, 0.4]], (len(x), 1)).astype(np.float32)

    chosen, images, targets, records = active.run_rounds(
        pool, known, np.zeros((0, 2), np.float32), 3, active.ActiveConfig(rounds=5),
        str(tmp_path / "state.npz"), 0,
        label=lambda x, r: np.tile([[1.0, 0.0]], (len(x), 1)).astype(np.float32),
        train_proxy=train_proxy)
    assert len(chosen) == len(set(chosen.tolist())) == 3
    assert all(r["images"] > 0 for r in records) and len(records) == 3
    assert proxies == [1, 2]  # Rounds 2 and 3 train one proxy each on what is labelled so far.


def test_the_proxy_learns_from_every_earlier_round_and_the_real_images(tmp_path):
    """Each round's proxy trains on the real images and every earlier round's answers."""
    pool = np.random.default_rng(0).random((30, 4, 4, 1), dtype=np.float32)
    known = np.ones((5, 4, 4, 1), np.float32)
    seen = []

    def train_proxy(images, targets):
        seen.append((len(images), float(targets[:, 1].sum())))
        return lambda x: np.tile([[0.6, 0.4]], (len(x), 1)).astype(np.float32)

    active.run_rounds(pool, known, np.tile([[0.0, 1.0]], (5, 1)).astype(np.float32), 9,
                      active.ActiveConfig(rounds=3), str(tmp_path / "state.npz"), 0,
                      label=lambda x, r: np.tile([[1.0, 0.0]], (len(x), 1)).astype(np.float32),
                      train_proxy=train_proxy)
    # Round 2: 5 real + round 1's 3; round 3: + round 2's 3. The real images' targets kept.
    assert seen == [(8, 5.0), (11, 5.0)]


def test_an_answered_pool_image_is_labelled_before_any_new_one_is_chosen(tmp_path):
    pool = np.random.default_rng(1).random((12, 4, 4, 1), dtype=np.float32)
    asked = []

    def label(x, r):
        asked.append(len(x))
        return np.tile([[1.0, 0.0]], (len(x), 1)).astype(np.float32)

    paid = np.zeros(12, bool)
    paid[[2, 5, 7]] = True
    chosen, _, _, records = active.run_rounds(
        pool, pool[:0], np.zeros((0, 2), np.float32), 5, active.ActiveConfig(rounds=2,
                                                                             selection="random"),
        str(tmp_path / "state.npz"), 0, label=label,
        train_proxy=lambda x, y: None, answered=lambda images: paid.copy())
    assert {2, 5, 7} <= set(chosen.tolist()) and len(chosen) == 5
    assert records[0]["selection"] == "ledger" and records[0]["images"] == 3
    assert sum(r["images"] for r in records[1:]) == 2
    # All 12 answered: every one is used, more than asked for, and nothing new is chosen.
    chosen, _, _, records = active.run_rounds(
        pool, pool[:0], np.zeros((0, 2), np.float32), 5, active.ActiveConfig(rounds=2),
        str(tmp_path / "other.npz"), 0, label=label, train_proxy=lambda x, y: None,
        answered=lambda images: np.ones(len(images), bool))
    assert sorted(chosen.tolist()) == list(range(12)) and len(records) == 1


def test_the_ledger_tells_which_images_it_answers(client, fashion, tmp_path):
    teacher = teacher_lib.TeacherClient(client.config, teacher_lib.QueryLedger(str(tmp_path)))
    images = fashion.x_test[:6]
    teacher.soft_labels(images[[1, 4]])
    assert teacher.answered(images).tolist() == [False, True, False, False, True, False]
