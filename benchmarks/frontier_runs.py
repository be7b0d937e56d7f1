"""Issue 37's runs (the accuracy frontier): any registered method, any settings, against the
Fashion-MNIST LeNet-5 teacher (90.75% over gRPC), served by tfkd's own server on a loopback port.

  python benchmarks/frontier_runs.py NAME METHOD SEED '{"priors.images": 100000}'
  python benchmarks/frontier_runs.py prior_kd prior_kd 0
  python benchmarks/frontier_runs.py ceiling student_alone 0 '{"num_shots": 54000}'

SETTINGS (JSON) are :meth:`tfkd.DistillConfig.with_settings`' (dotted names: ``student.epochs``,
``priors.temperature``, ``teacher.query_budget``). Each run's work dir is runs/frontier/NAME-seedSEED
(a killed run continues where it stopped: its teacher answers are in the work dir's ledger); its
report.json is copied to benchmarks/reports/frontier/NAME-seedSEED.json. The teacher:
TFKD_TEACHER_BASE, else runs/teacher_lenet5 (the README main command's teacher, LeNet-5 seed 0,
20 epochs, cosine: 90.75% test over gRPC, benchmarks/reports/main_command_issue36/), which white-box
methods (``teacher_needs='weights'``) also load in-process.
"""
import json
import os
import shutil
import sys
import time

from tfkd import methods
from tfkd import pipeline
from tfkd import serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(REPO, "benchmarks", "reports", "frontier")


def main(name: str, method: str, seed: int, settings: dict) -> None:
    base = os.environ.get("TFKD_TEACHER_BASE", os.path.join(REPO, "runs", "teacher_lenet5"))
    workdir = os.path.join(REPO, "runs", "frontier", f"{name}-seed{seed}")
    white_box = methods.get(method).teacher_needs == "weights"
    start = time.perf_counter()
    with serving.ModelServer([serving.ModelConfig("teacher", base)], poll_seconds=0) as srv:
        config = pipeline.DistillConfig(workdir=workdir).with_settings({
            "method": method, "seed": seed, "teacher.target": srv.target,
            "teacher_saved_model": os.path.join(base, "1") if white_box else None,
            "evaluate_teacher": False, "compress": (), "verbose": 2, **settings})
        result = pipeline.run(config)
    os.makedirs(REPORTS, exist_ok=True)
    shutil.copyfile(os.path.join(workdir, "report.json"),
                    os.path.join(REPORTS, f"{name}-seed{seed}.json"))
    print(json.dumps({"name": name, "seed": seed, "test": result.student_accuracy,
                      "validation": result.student_validation_accuracy,
                      "queries": result.teacher_queries_sent_by_stage,
                      "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]),
         json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
