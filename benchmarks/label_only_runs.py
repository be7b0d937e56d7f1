"""Label-only runs on Fashion-MNIST against the grid's teacher (lenet5_same_cosine, 90.75%), which
every method reaches through the label-only view (the client keeps only the top-1 class id).

Reports go to runs/db3kd/<NAME>-seed<SEED>/report.json (copies stored in
benchmarks/reports/fashion_mnist_label_only/); a killed run continues where it stopped.

  python benchmarks/label_only_runs.py NAME METHOD SEED '{"num_directions": 5}'
  python benchmarks/label_only_runs.py fsbbt_onehot fsbbt 0 '{"label_only": true}'
  python benchmarks/label_only_runs.py zsdb3kd zsdb3kd 0 '{"zsdb3kd": {"per_class": 240}}'

SETTINGS (JSON): BoundaryConfig fields, plus ``label_only`` (one-hot methods), ``votes``
(VoteConfig fields: the vote estimator of a label-only teacher), ``zsdb3kd``
(ZeroShotConfig fields), ``zskd`` (ImpressionConfig fields; the method's defaults for the rest) and
``zskd_blackbox`` (ZerothOrderConfig fields), ``student`` (StudentConfig fields over the default).
``zskd`` loads the same teacher's SavedModel in-process.

  python benchmarks/label_only_runs.py zskd zskd 0 '{}'
  python benchmarks/label_only_runs.py zskd_blackbox zskd_blackbox 0 '{"zskd": {"count": 12000}}'
  python benchmarks/label_only_runs.py zskd_e200 zskd 0 '{"student": {"epochs": 200}}'
"""
import dataclasses
import json
import os
import sys

from tfkd import methods
from tfkd import pipeline
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher as teacher_lib

name, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
# The grid's teacher; TFKD_TEACHER_BASE: the same recipe trained elsewhere (issue 27's runs: a work
# dir's teacher, lenet5 seed 0, 90.75%, exported with logits).
base = os.environ.get("TFKD_TEACHER_BASE",
                      "runs/reproduce/fashion_mnist/teacher_tries/lenet5_same_cosine/teacher")
with serving.ModelServer([serving.ModelConfig("teacher", base)], poll_seconds=0) as srv:
    own = {"zsdb3kd": extra.pop("zsdb3kd", {}), "zskd": extra.pop("zskd", {}),
           "zskd_blackbox": extra.pop("zskd_blackbox", {}), "votes": extra.pop("votes", {})}
    student = extra.pop("student", {})
    own["db3kd"] = extra  # The method's own settings it has (its config_class), by name.
    mine = {f.name for f in dataclasses.fields(methods.get(method).config_class)}
    config = pipeline.DistillConfig(workdir=f"runs/db3kd/{name}-seed{seed}").with_settings({
        "method": method, "seed": seed,
        "teacher": teacher_lib.TeacherConfig(target=srv.target,
                                             label_only=extra.pop("label_only", False)),
        "teacher_saved_model": base if method == "zskd" else None,
        "student": dataclasses.replace(student_lib.StudentConfig(), **student),
        "evaluate_teacher": False, "compress": (), "verbose": 2,
        **{k: v for k, v in own.items() if k in mine}})
    r = pipeline.run(config)
print(json.dumps({"name": name, "seed": seed, "test": r.student_accuracy,
                  "validation": r.student_validation_accuracy,
                  "queries": r.teacher_queries_sent_by_stage, "seconds": r.stage_seconds}))
