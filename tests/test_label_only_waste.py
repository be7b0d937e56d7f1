"""Issue 35: label-only (decision-based) methods spend nothing on a teacher that cannot be
distilled, and ZSDB3KD's plan is a bound a budget can be set to.

Teachers: tiny Keras classifiers exported with tfkd's own export code as ``classes``-only (label-only)
servables, served by tfkd's gRPC server on loopback: one that answers class 3 for every image, and a
4-class linear one mapped onto 4 of Fashion-MNIST's 10 classes (``teacher.class_map``).
"""

import json
import logging
import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfkd import errors
from tfkd import export
from tfkd import methods
from tfkd import pipeline
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher
from tfkd.methods.db3kd import boundary
from tfkd.methods.db3kd import noise_rounds
from tfkd.methods.db3kd import signopt
from tfkd.methods.db3kd import zeroshot
from tfkd.teacher import QueryAccount
from tfkd.teacher import TeacherConfig

from conftest import REPO
from conftest import config_of

SHAPE = (28, 28, 1)
ONE_CLASS = 3  # What the one-class teacher answers.
CLASS_MAP = (0, 2, 4, 6)  # The 4-class teacher's classes, as Fashion-MNIST classes.
BRIGHT = 0.83  # The bright teacher's threshold on the mean pixel.


def _linear(num_classes: int, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    inputs = keras.Input(SHAPE)
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """The gRPC target of one server with the label-only servables: ``one_class`` (class 3 for
    every image), ``four_class`` (the image's brightest quadrant, of 4), ``halves`` (its brighter
    half, of 2) and ``bright`` (1 for an image whose mean is above ``BRIGHT``, else 0)."""
    root = tmp_path_factory.mktemp("label_only_waste")
    bias = np.zeros(10)
    bias[ONE_CLASS] = 5.0
    one = _linear(10, np.zeros((784, 10)), bias)  # Logits constant: class 3 for every image.
    rows, cols = np.divmod(np.arange(784), 28)
    quadrant = 2 * (rows >= 14) + (cols >= 14)
    four = _linear(4, np.eye(4)[quadrant] / 196, np.zeros(4))  # The brightest quadrant's class.
    halves = _linear(2, np.eye(2)[(cols >= 14).astype(int)] / 392, np.zeros(2))
    # Class 1 where the mean pixel is above BRIGHT: about 0.5% of the smooth noise.
    bright = _linear(2, np.stack([np.zeros(784), np.full(784, 100 / 784)], axis=1),
                     np.array([100 * BRIGHT, 0.0]))
    models = {"one_class": one, "four_class": four, "halves": halves, "bright": bright}
    for name, model in models.items():
        export.export_classifier(model, str(root / name), outputs=("classes",))
    with serving.ModelServer([serving.ModelConfig(name, str(root / name)) for name in models],
                             poll_seconds=0) as srv:
        yield srv.target


def _client(target, model, **fields):
    client = teacher.connect(target, model, **fields)
    client.expect_num_classes(10)
    return client


def test_zsdb3kd_noise_stops_after_the_patience_on_a_one_class_teacher_with_one_line(teachers):
    """The allowance set out of the way, the rounds stop after ``noise_patience`` rounds that add
    nothing: the first round fills class 3, then 10 rounds of 200 images give nothing new."""
    # Before the fix: no noise_patience setting (TypeError); the loop asked all 200 rounds (40,000
    # queries) and failed later with "labels: expected samples of at least two classes, got one".
    config = zeroshot.ZeroShotConfig(per_class=20, noise_queries_per_sample=1000, noise_patience=10)
    with _client(teachers, "one_class") as client:
        with pytest.raises(errors.TeacherError) as caught:
            noise_rounds.noise_samples(client.top1, SHAPE, 10, config, np.random.default_rng(0),
                                   teacher=client.name)
        sent = client.queries
    assert sent == (1 + 10) * 20 * 10  # One round that gains, then the patience's rounds.
    assert str(caught.value) == (
        f"{client.name}: answered class 3 for all 2,200 noise images; ZSDB3KD needs a teacher "
        "that gives at least two classes (its samples are pushed away from the boundaries "
        "between them); if it gives another only rarely, raise zsdb3kd.noise_patience or "
        "zsdb3kd.noise_queries_per_sample")
    assert "\n" not in str(caught.value) and "one_class" in str(caught.value)


def _bright_noise(teachers, **settings):
    """noise_samples of 20 per class against the bright teacher (seed 0): (per-class counts,
    images sent per round)."""
    config = zeroshot.ZeroShotConfig(per_class=20, max_noise_rounds=30, **settings)
    with teacher.connect(teachers, "bright") as client:
        client.expect_num_classes(2)
        sent = []
        top1 = lambda x, s: (sent.append(len(x)), client.top1(x, s))[1]  # noqa: E731
        images, labels = noise_rounds.noise_samples(top1, SHAPE, 2, config, np.random.default_rng(0))
        assert client.queries == sum(sent)
        assert np.array_equal(client.top1(images, "check"), labels)  # Every sample its class's.
    return np.bincount(labels, minlength=2).tolist(), sent


def test_a_rare_class_is_filled_from_its_few_samples_once_the_noise_stalls(teachers):
    """The bright class comes about once in 200 noise images: after round 1 it has one sample,
    well under ``fill_from`` (20); the next 3 rounds add nothing (the patience), so the fifth fills
    it from that one sample and the rounds end full, long before 30 rounds or the allowance."""
    # Before the fix: no noise_patience setting (TypeError); the fill waited for half of
    # max_noise_rounds (100 rounds of noise alone).
    counts, sent = _bright_noise(teachers, noise_patience=3, noise_queries_per_sample=1000)
    assert counts == [20, 20]
    # Round 1 gives class 1 one sample; rounds 2-4 nothing; round 5 fills it (40 noise images and
    # 38 candidates for its 19 missing), round 6 finishes.
    assert sent == [40, 40, 40, 40, 40 + 38, 42], sent


def test_with_a_patience_of_one_round_the_fill_gets_one_try_after_each_stall(teachers):
    """Patience 1: round 2 adds nothing, so round 3 fills from the one sample (twice its 19
    missing, and noise while it has fewer than 20); the fill keeps adding until a round adds
    nothing (7), and with the fill already from any sample, that stall ends the rounds: the class
    is left one short."""
    # Before the fix: no noise_patience setting (TypeError); 30 rounds until max_noise_rounds.
    counts, sent = _bright_noise(teachers, noise_patience=1, noise_queries_per_sample=1000)
    assert counts == [20, 19], counts
    assert sent == [40, 40, 40 + 38, 40 + 10, 40 + 6, 40 + 4, 40 + 2], sent


def test_a_rare_class_is_filled_from_its_few_samples_once_half_the_allowance_is_spent(teachers):
    """The same rare class with the patience out of the way: once half the allowance (8 per
    sample: 320, half 160) is spent, the fill takes any sample, and the class is full within it."""
    # Before the fix: no allowance; the fill from any sample waited for half the 200 rounds.
    counts, sent = _bright_noise(teachers, noise_patience=1000, noise_queries_per_sample=8)
    assert counts == [20, 20]
    assert sent == [40, 40, 40, 40, 40 + 38, 42], sent  # The fill from round 5 (160 spent).


def test_a_round_cut_to_the_allowance_keeps_its_fill_candidates_first(teachers):
    """An allowance of 2.9 per sample (116 images): round 3 (from half the allowance, the fill
    takes any sample) has room for 36 of its 40 noise images and 38 fill candidates: the 36 kept
    are candidates for the short class, which gets 14 more samples, not the 0 or 1 that 36 noise
    images would give it."""
    # Before the fix: no allowance setting (TypeError); every round asked in full.
    counts, sent = _bright_noise(teachers, noise_patience=1000, noise_queries_per_sample=2.9)
    assert sent == [40, 40, 36] and counts == [20, 15], (counts, sent)


def test_a_rare_class_without_a_way_to_fill_it_stays_short_within_the_allowance(teachers, caplog):
    """No fill (``fill_from`` 0, the reference's noise only) and no patience: the rounds end at
    the allowance (3.3 per sample: 132 images, the last round cut to 12), the bright class short
    and named."""
    # Before the fix: no noise_patience setting (TypeError); noise for all 30 rounds (1,200 images).
    caplog.set_level(logging.WARNING, logger="absl")
    counts, sent = _bright_noise(teachers, noise_patience=1000, fill_from=0,
                                 noise_queries_per_sample=3.3)
    assert counts[0] == 20 and 0 < counts[1] < 20 and sent == [40, 40, 40, 12], (counts, sent)
    assert [r.getMessage() for r in caplog.records if "fewer than" in r.getMessage()] == [
        "ZSDB3KD: the teacher gave classes [1] fewer than 20 noise images in 132 queries "
        "(zsdb3kd.noise_queries_per_sample, max_noise_rounds, noise_patience)"]


def _tiny(workdir, target, model, method, **settings):
    return config_of(
        workdir=str(workdir), method=method, num_validation=500, eval_examples=200,
        evaluate_teacher=False, compress=(), verbose=0,
        teacher=TeacherConfig(target=target, model_name=model,
                              **settings.pop("teacher", {})),
        student=student_lib.StudentConfig(epochs=1, batch_size=8), **settings)


def _sent(workdir) -> dict:
    """Images the work dir's query account recorded, by stage (written before each is sent)."""
    return QueryAccount(os.path.join(str(workdir), "ledger")).by_stage


def test_zsdb3kd_refuses_a_one_class_teacher_within_its_noise_allowance(teachers, tmp_path):
    """The launcher's defaults but 20 samples per class: the run stops in the noise rounds, at most
    the allowance (4 per sample wanted: 800) and never more than the patience allows, with one line
    naming the teacher and what it answered; nothing is pushed or searched."""
    # Before the fix: 40,000 queries (200 rounds of 200), then ValueError "labels: expected samples
    # of at least two classes, got one" from the first push.
    config = _tiny(tmp_path, teachers, "one_class", "zsdb3kd",
                   zsdb3kd=zeroshot.ZeroShotConfig(per_class=20, iterations=1))
    with pytest.raises(errors.TeacherError, match=r"^teacher 'one_class' at 127\.0\.0\.1:\d+: "
                       r"answered class 3 for all 800 noise images; ZSDB3KD needs") as caught:
        pipeline.run(config)
    assert "\n" not in str(caught.value)
    sent = _sent(tmp_path)
    assert sent == {"zsdb3kd_samples": 800}, sent
    patience = config.resolved().method_config.zsdb3kd.noise_patience
    assert sent["zsdb3kd_samples"] <= (1 + patience) * 20 * 10


def test_db3kd_refuses_a_one_class_teacher_after_its_n_labels(teachers, tmp_path):
    """DB3KD's soft labels are distances to the boundaries between the teacher's classes: against
    a teacher that answers one class there is none, so the run stops after the N labels, with one
    line naming the teacher and its answer, and sends no search probe."""
    # Before the fix: the run completed silently (30 labels; the search found no image of another
    # class to search toward, so every soft label was uniform, 0.1 each; student accuracy 0.12).
    config = _tiny(tmp_path, teachers, "one_class", "db3kd", num_shots=30,
                   db3kd=boundary.BoundaryConfig(num_directions=2, tolerance=1e-3))
    with pytest.raises(errors.TeacherError) as caught:
        pipeline.run(config)
    assert re.fullmatch(
        r"teacher 'one_class' at 127\.0\.0\.1:\d+: answered class 3 for all 30 images of the "
        r"transfer set; db3kd needs a teacher that gives at least two classes \(its soft labels "
        r"are distances to the boundaries between them\)", str(caught.value)), str(caught.value)
    assert _sent(tmp_path) == {"label_real": 30}
    assert not os.path.exists(tmp_path / "report.json")


def test_db3kd_without_a_search_also_refuses_a_one_class_teacher(teachers, tmp_path):
    """``num_directions`` 0 (one-hot targets, no search) is refused as well: a student of one
    class learns nothing of the teacher."""
    # Before the fix: the run completed and trained a student on 30 one-hot targets of class 3.
    config = _tiny(tmp_path, teachers, "one_class", "db3kd", num_shots=30,
                   db3kd=boundary.BoundaryConfig(num_directions=0))
    with pytest.raises(errors.TeacherError, match="answered class 3 for all 30 images"):
        pipeline.run(config)


def test_a_teacher_with_two_classes_is_not_refused_by_db3kd(teachers, tmp_path):
    """The refusal needs one class: a teacher that gives two (the brighter half of an image) is
    searched, its soft labels from the boundary between them."""
    config = _tiny(tmp_path, teachers, "halves", "db3kd", num_shots=30,
                   db3kd=boundary.BoundaryConfig(num_directions=1, tolerance=1e-2))
    report = pipeline.run(config)
    transfer = methods.TransferSet.load(report["labelled_set"])
    # Only the two classes get mass beyond the rest's (they share it: one boundary, one distance).
    top_two = np.sort(np.argsort(transfer.targets, axis=1)[:, -2:], axis=1)
    assert np.all(top_two == [0, 1]) and len(np.unique(transfer.targets)) > 3
    assert report["teacher_queries_sent_by_stage"]["label_real"] == 30
    assert report["teacher_queries_sent_by_stage"]["db3kd_search"] > 0


def test_zsdb3kd_never_asks_for_classes_a_class_map_teacher_cannot_give(teachers, tmp_path,
                                                                       caplog):
    """A 4-class teacher mapped onto classes 0, 2, 4, 6: the samples of those four are drawn and
    the rounds end; the six classes it can never give are named once and never sought. The plan
    is the allowance for the four classes the teacher can give."""
    # Before the fix: all 200 rounds were asked (10,000 queries for 20 samples) for the six classes
    # the teacher can never give, and the plan counted ten classes (30,000 for the samples, 5,850
    # for the search).
    config = _tiny(tmp_path, teachers, "four_class", "zsdb3kd", teacher={"class_map": CLASS_MAP},
                   zsdb3kd=zeroshot.ZeroShotConfig(per_class=5, iterations=0),
                   db3kd=boundary.BoundaryConfig(num_directions=1, tolerance=1e-2))
    caplog.set_level(logging.WARNING, logger="absl")
    report = pipeline.run(config)
    assert report["transfer_set_sources"] == {"pseudo": 20}
    transfer = methods.TransferSet.load(report["labelled_set"])
    assert np.array_equal(np.bincount(transfer.targets.argmax(axis=1), minlength=10),
                          [5, 0, 5, 0, 5, 0, 5, 0, 0, 0])
    assert np.all(transfer.targets[:, [1, 3, 5, 7, 8, 9]] < transfer.targets.max(axis=1)[:, None])
    allowance = 4 * 5 * 4  # noise_queries_per_sample x per_class x the 4 classes it can give.
    plan, sent = report["teacher_query_plan"], report["teacher_queries_sent_by_stage"]
    assert plan["zsdb3kd_samples"] == allowance
    assert 0 < sent["zsdb3kd_samples"] <= allowance
    # The search: 20 samples x 9 other classes x (a pruning probe and a bisection from the
    # 28-pixel diagonal to 1e-2: 12 steps).
    assert plan["db3kd_search"] == 20 * 9 * 13 and 0 < sent["db3kd_search"] <= plan["db3kd_search"]
    never = [r.getMessage() for r in caplog.records if "can never give" in r.getMessage()]
    assert never == ["ZSDB3KD: the teacher can never give classes [1, 3, 5, 7, 8, 9] "
                     "(teacher.class_map maps none of its classes to them): no pseudo-sample is "
                     "sought for them"]
    assert not [r for r in caplog.records if "fewer than" in r.getMessage()]  # None left short.


def test_zsdb3kd_refuses_a_class_map_that_reaches_one_class_before_sending(teachers):
    """A teacher whose classes all map to one data class cannot give two: refused before any
    image is sent."""
    with _client(teachers, "one_class") as client:
        with pytest.raises(errors.ConfigError, match=r"^teacher\.class_map: reaches classes \[3\] "
                           r"of 10; ZSDB3KD needs a teacher that can give at least two$"):
            noise_rounds.noise_samples(client.top1, SHAPE, 10, zeroshot.ZeroShotConfig(per_class=2),
                                   np.random.default_rng(0), classes=(3,))
        assert client.queries == 0


# ---- the plan a budget is checked against -------------------------------------------------------

README_PLAN = """
import json, re, sys
import numpy as np
from absl import flags
from launch import distill as d
from tfkd import methods
from tfkd.teacher import cluster
text = open("docs/methods.md").read()
command = re.search(r"tfkd-distill (--teacher=\\S+ --method=zsdb3kd .*?)# ", text, re.S).group(1)
flags.FLAGS(["x"] + command.replace("\\\\", " ").split())
config = d.config_from_flags().resolved()
ctx = methods.MethodContext(config, np.zeros((0, 28, 28, 1), np.float32), 10,
                            teacher=cluster.ShardedTeacher(None))
print("PLAN " + json.dumps([command, methods.get("zsdb3kd").plan(ctx)]))
"""


def test_the_readme_label_only_zsdb3kd_command_plans_near_what_it_spends():
    """docs/methods.md's zero-shot label-only command (zsdb3kd's defaults, no recipe flag) spends
    about 873,000 queries (RESULTS.md's frontier: 872,690 at seed 0, rows readme_label_only_zsdb3kd
    and zsdb3kd_n400k_noaug): its plan, what a budget is checked against, is at least that and
    under twice it, and it asks for no search."""
    # Before the fix: a plan of 60,000,000 (200 rounds x 3 x 100,000 samples), 275x the spend.
    result = subprocess.run([sys.executable, "-c", README_PLAN], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PLAN "))
    command, plan = json.loads(line[len("PLAN "):])
    assert "--teacher_label_only" in command and "--zsdb3kd_" not in command
    assert plan["db3kd_search"] == 0, plan
    assert 872_690 <= sum(plan.values()) <= 2 * 872_690, plan


def test_a_tiny_zsdb3kd_runs_plan_is_never_below_and_near_what_it_spent(label_only_server,
                                                                      tmp_path):
    """A real tiny run against the LeNet-5 teacher (20 samples per class, one HopSkipJump push,
    the search off): the plan is never below what each stage sent and at most twice it."""
    # Before the fix: a plan of 152,800 for 63,894 sent (2.4x; 200 noise rounds planned at 3 x 200
    # images each, and 12 tries a push).
    config = _tiny(tmp_path, label_only_server.target, "teacher", "zsdb3kd",
                   zsdb3kd=zeroshot.ZeroShotConfig(per_class=20, iterations=1),
                   db3kd=boundary.BoundaryConfig(num_directions=0))
    report = pipeline.run(config)
    sent, plan = report["teacher_queries_sent_by_stage"], report["teacher_query_plan"]
    print("sent", sent, "plan", plan)
    assert sent["zsdb3kd_samples"] <= plan["zsdb3kd_samples"] <= 2 * sent["zsdb3kd_samples"]


@pytest.mark.parametrize("search", ["hopskipjump", "sign_opt"])
def test_pseudo_samples_never_spend_more_than_their_plan(teachers, search):
    """Against the 4-class teacher (its own 4 classes), in-process: noise, fill and two pushes of
    either search cost at most :meth:`ZeroShotConfig.query_plan`."""
    # A guard of the new bounds (it passed before the fix too, with a plan 3 x 200 rounds larger).
    config = zeroshot.ZeroShotConfig(per_class=3, iterations=2, search=search, queries=30,
                                     init_directions=2, gradient_queries=5)
    with teacher.connect(teachers, "four_class") as client:
        client.expect_num_classes(4)
        images, labels = zeroshot.pseudo_samples(client.top1, SHAPE, 4, config, seed=0)
        sent = client.queries
    assert np.array_equal(np.bincount(labels, minlength=4), [3, 3, 3, 3])
    assert 0 < sent <= config.query_plan(4, 784)


# ---- what each bound counts is what the loop spends ------------------------------------------

@pytest.mark.parametrize("step, tries", [(0.5, 9), (10.0, 14), (0.004, 3), (0.0005, 1)])
def test_a_push_counts_each_halving_it_can_send(teachers, step, tries):
    """push_away halves a sample's step while its label flips, down to 1e-3: against a teacher
    that never gives the samples' class every step flips, so each sample sends every try:
    1 + floor(log2(step / 1e-3)) (step 0.5: 0.5, 0.25, ..., 0.00195: 9)."""
    # Before the fix: the bound counted 12 tries at any step (step 10 sends 14).
    x = np.full((4, 784), 0.5, np.float32)
    direction = np.ones((4, 784), np.float32) / 28
    with _client(teachers, "one_class") as client:
        moved = zeroshot.push_away(lambda f, s: client.top1(f.reshape(-1, *SHAPE), s), x,
                                   np.zeros(4, np.int64), direction, step, "push")
        assert client.queries == 4 * tries
    assert np.array_equal(moved, x)  # Every try flipped: every sample stays.
    assert zeroshot._push_tries(step) == tries
    assert zeroshot.ZeroShotConfig(step=step).push_queries(784) - zeroshot.ZeroShotConfig(
        step=0.0005).push_queries(784) == tries - 1


def test_a_local_search_gives_up_after_its_step_cap(teachers):
    """The Sign-OPT refinement's local search grows (or shrinks) by 1% at most 1,000 times: toward
    a class the teacher never gives it grows from 1e-3 (1,158 steps to pass the give-up distance
    100) and gives up at the cap (inf); for an untargeted pair whose own class the teacher never
    gives, every point is across and it shrinks 1,000 times, never endlessly."""
    # Before the fix: the growing pair sent 1,159 queries; the shrinking one never returned.
    x = np.full((3, 784), 0.5, np.float32)
    theta = np.ones((3, 784), np.float32) / 28
    with _client(teachers, "one_class") as client:
        top1 = lambda f, s: client.top1(f.reshape(-1, *SHAPE), s)  # noqa: E731
        dist, queries = signopt._local_search(top1, x, theta, np.array([5, -1, 5]),
                                               np.array([1e-3, 0.2, 1.0]), 1e-6, "local")
        assert client.queries == queries.sum()
    # From 1.0, 1.01^463 > 100: it gives up at the distance before the cap.
    assert queries.tolist() == [1 + 1000, 1 + 1000, 1 + 463]
    assert dist[0] == dist[2] == np.inf and dist[1] == pytest.approx(0.2 * 0.99 ** 1000)
    per_local = 1 + 1000 + _local_bisection_bound()
    config = boundary.BoundaryConfig(mbd_queries=60, mbd_directions=10)
    assert signopt.refine_queries(config) == 60 + 10 + 30 * per_local


def _local_bisection_bound():
    """A local search's bisection probes at most: an interval under 1.01 x 100 halved down to
    1e-8 / 500 (the least beta over 500), plus one."""
    return math.ceil(math.log2(101 * 500 / 1e-8)) + 1


def test_a_sign_opt_push_is_bounded_by_its_documented_parts():
    """``sign_opt``'s bound per sample and push, as push_queries documents it: per initial
    direction 50 scale draws and a bisection from 2·sqrt(784)·4 to 1e-3 (18 steps, one more), the
    refinement's bound within ``queries`` (its k = 200 directions), and the push's 9 tries."""
    # Before the fix: 31,398 (the refinement's overshoot restated as 30 x 1,030, 32 steps per
    # initial bisection, 12 push tries).
    config = zeroshot.ZeroShotConfig(search="sign_opt", init_directions=3, queries=40)
    refine = 40 + 200 + 30 * (1 + 1000 + _local_bisection_bound())
    assert config.push_queries(784) == 3 * (50 + 18 + 1) + refine + 9


def test_a_hopskipjump_push_is_bounded_by_its_documented_parts():
    """``hopskipjump``'s bound per sample and push: the first bisection (θ = 784^-1.5: 15 steps,
    one more), per iteration t ceil(B0·sqrt(t)) probes, 20 step halvings and a bisection, then the
    push's 9 tries at step 0.5 (README: about 132 spent a push at B0 = 100)."""
    # Before the fix: 164 (12 push tries counted at any step).
    one = zeroshot.ZeroShotConfig(gradient_queries=100, search_iterations=1)
    two = zeroshot.ZeroShotConfig(gradient_queries=100, search_iterations=2)
    assert one.push_queries(784) == 16 + (100 + 20 + 16) + 9
    assert two.push_queries(784) == 16 + (100 + 20 + 16) + (142 + 20 + 16) + 9


@pytest.mark.parametrize("field, value, ok", [("noise_queries_per_sample", 1.0, True),
                                              ("noise_queries_per_sample", 0.99, False),
                                              ("noise_patience", 1, True),
                                              ("noise_patience", 0, False)])
def test_the_noise_rounds_settings_are_checked(field, value, ok):
    """Each pseudo-sample costs at least its own query, and the patience is at least one round."""
    config = zeroshot.ZeroShotConfig(**{field: value})
    if ok:
        config.validate()
    else:
        with pytest.raises(ValueError, match=rf"^zsdb3kd\.{field}={value}: expected >= 1"):
            config.validate()
