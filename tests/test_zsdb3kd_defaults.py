"""Issue 37: ``--method=zsdb3kd`` with no recipe flag runs the recipe that measured best on
Fashion-MNIST (RESULTS.md's frontier, "label-only, <= 1,000,000 queries"), not the reference's
schedule: 40,000 smooth-noise pseudo-samples per class, no push, no boundary search (one-hot
targets, DecisionKD at T = 1), 20 student epochs without augmentation. db3kd and fsbbt_db3kd keep
the reference's search (200 directions at T = 20).

The flags are parsed in a child process (absl's flags are process-global); the end-to-end case
runs the real pipeline against the label-only LeNet-5 teacher over gRPC.
"""

import json

import numpy as np
import pytest

from tfkd import methods
from tfkd import pipeline
from tfkd import teacher

from conftest import config_of
from conftest import launchers_in_one_process
from conftest import printed

RESOLVE = r'''
import json
from launch import distill as d
from tfkd import errors
from tfkd import methods


def resolved(*argv):
    parse("distill", "--workdir=" + TMP, *argv)
    c = d.config_from_flags().resolved()
    student = methods.get(c.method).student_config(c)
    return {"per_class": c.method_config.zsdb3kd.per_class if c.method == "zsdb3kd" else None,
            "iterations": c.method_config.zsdb3kd.iterations if c.method == "zsdb3kd" else None,
            "directions": c.method_config.db3kd.num_directions,
            "temperature": c.method_config.db3kd.temperature, "epochs": student.epochs,
            "loss": student.loss, "student_temperature": student.temperature,
            "augment": [student.mixup_alpha, student.rotation_degrees, student.shift_fraction]}


out = {"defaults": resolved("--method=zsdb3kd", "--teacher_label_only"),
       "given": resolved("--method=zsdb3kd", "--zsdb3kd_per_class=10000", "--zsdb3kd_iterations=3",
                         "--db3kd_directions=4", "--db3kd_temperature=5", "--student_epochs=3"),
       "db3kd": resolved("--method=db3kd"), "fsbbt_db3kd": resolved("--method=fsbbt_db3kd"),
       "help_temperature": FLAGS["db3kd_temperature"].help,
       "help_directions": FLAGS["db3kd_num_directions"].help,
       "help_per_class": FLAGS["zsdb3kd_per_class"].help}
try:
    resolved("--method=db3kd", "--zsdb3kd_per_class=5")
except errors.ConfigError as e:
    out["refused"] = str(e)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def flags_out(tmp_path_factory):
    results = launchers_in_one_process({"resolve": RESOLVE}, str(tmp_path_factory.mktemp("zs")))
    return json.loads(printed(results, "resolve").strip().splitlines()[-1])


def test_zsdb3kd_without_recipe_flags_is_the_measured_recipe(flags_out):
    assert flags_out["defaults"] == {
        "per_class": 40000, "iterations": 0, "directions": 0, "temperature": 1.0, "epochs": 20,
        "loss": "db3kd", "student_temperature": 1.0, "augment": [0.0, 0.0, 0.0]}


def test_a_given_zsdb3kd_flag_still_wins_over_its_default(flags_out):
    given = flags_out["given"]
    assert (given["per_class"], given["iterations"], given["directions"], given["temperature"],
            given["epochs"], given["student_temperature"]) == (10000, 3, 4, 5.0, 3, 5.0)


@pytest.mark.parametrize("method", ["db3kd", "fsbbt_db3kd"])
def test_the_other_label_only_methods_keep_the_references_search(flags_out, method):
    out = flags_out[method]
    assert (out["directions"], out["temperature"], out["student_temperature"]) == (200, 20.0, 20.0)
    assert out["epochs"] != 20 and out["per_class"] is None


def test_a_shared_flags_help_names_each_methods_default(flags_out):
    assert "Default by method: db3kd 20.0, fsbbt_db3kd 20.0, zsdb3kd 1.0." in (
        flags_out["help_temperature"])
    assert "db3kd 200, fsbbt_db3kd 200, zsdb3kd 0." in flags_out["help_directions"]
    assert "Default by method" not in flags_out["help_per_class"]  # One owner: its default shown.


def test_a_zsdb3kd_setting_is_refused_for_db3kd(flags_out):
    assert flags_out["refused"] == ("--zsdb3kd_per_class: a setting of method zsdb3kd, not of "
                                    "--method=db3kd")


def test_the_default_recipe_end_to_end_asks_no_search_and_trains_on_one_hot_answers(
        label_only_server, server, tmp_path):
    """The defaults but 30 samples per class and a 1-epoch student, against the label-only
    LeNet-5 teacher over gRPC: only the noise rounds ask the teacher (no push, no search); each
    sample's target is the one-hot class the teacher gives it (checked against the same teacher
    served with probabilities)."""
    config = config_of(workdir=tmp_path, method="zsdb3kd", num_validation=500, eval_examples=200,
                       evaluate_teacher=False, compress=(), verbose=0,
                       teacher={"target": label_only_server.target},
                       student={"epochs": 1, "batch_size": 32}).with_settings(
                           {"zsdb3kd.per_class": 30})
    report = pipeline.run(config)
    sent = report["teacher_queries_sent_by_stage"]
    assert set(sent) == {"zsdb3kd_samples"} and sent["zsdb3kd_samples"] >= 300, sent
    assert report["teacher_query_plan"].get("db3kd_search", 0) == 0
    assert report["method_config"]["zsdb3kd"]["iterations"] == 0
    transfer = methods.TransferSet.load(report["labelled_set"])
    counts = np.bincount(transfer.targets.argmax(axis=1), minlength=10)
    assert transfer.targets.shape[1] == 10 and counts.max() == 30 and (counts <= 30).all()
    np.testing.assert_array_equal(transfer.targets.max(axis=1), 1.0)
    np.testing.assert_array_equal(transfer.targets.sum(axis=1), 1.0)
    with teacher.connect(server.target) as client:  # The same teacher, with probabilities.
        answers = client.soft_labels(transfer.images).argmax(axis=1)
    np.testing.assert_array_equal(transfer.targets.argmax(axis=1), answers)
    assert report["student_recipe"]["mixup_alpha"] == 0.0
