"""Issue 37's runs (the accuracy frontier): any registered method, any settings, against the
Fashion-MNIST LeNet-5 teacher (the stored one by default, below), served by tfkd's own server on
a loopback port.

  python benchmarks/frontier_runs.py NAME METHOD SEED '{"priors.images": 100000}'
  python benchmarks/frontier_runs.py prior_kd prior_kd 0
  python benchmarks/frontier_runs.py ceiling student_alone 0 '{"num_shots": 54000}'

SETTINGS (JSON) are :meth:`tfkd.DistillConfig.with_settings`' (dotted names: ``student.epochs``,
``priors.temperature``, ``teacher.query_budget``). Each run's work dir is runs/frontier/NAME-seedSEED
(a killed run continues where it stopped: its teacher answers are in the work dir's ledger); its
report.json is copied to benchmarks/reports/frontier/NAME-seedSEED.json with ``frontier_teacher``
added (the teacher's base path and the SHA-256 of its variables), so a table can tell which
teacher a row was measured against.

The teacher: TFKD_TEACHER_BASE, else the stored one, benchmarks/teachers/fashion_mnist_lenet5
(the README main command's teacher recipe, LeNet-5 seed 0, 20 epochs, cosine; its README gives its
accuracy and the machine that trained it), which white-box methods (``teacher_needs='weights'``)
also load in-process. It is stored because the same recipe and seed train another teacher on
another CPU (TensorFlow's CPU kernels differ by instruction set): the rows stored before
2026-12-08 were measured against a 90.75% teacher trained on an Intel Xeon machine and not kept.
"""
import hashlib
import json
import os
import sys
import time

from tfkd import export
from tfkd import methods
from tfkd import pipeline
from tfkd import serving
from tfkd import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(REPO, "benchmarks", "reports", "frontier")
TEACHER = os.path.join(REPO, "benchmarks", "teachers", "fashion_mnist_lenet5")


def teacher_identity(base: str) -> dict:
    """The teacher a run asked: its base path (relative to the repository when inside it) and the
    SHA-256 of its latest version's variables (equal hashes: the same weights)."""
    version = export.latest_version_dir(base)
    with open(os.path.join(version, "variables", "variables.data-00000-of-00001"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    rel = os.path.relpath(os.path.abspath(base), REPO)
    return {"base": base if rel.startswith("..") else rel,
            "version": int(os.path.basename(version)), "variables_sha256": digest}


def store(report_json: str, name: str, seed: int, base: str) -> str:
    """Copies a run's report.json to REPORTS/NAME-seedSEED.json with ``frontier_teacher`` added."""
    with open(report_json) as f:
        report = json.load(f)
    report["frontier_teacher"] = teacher_identity(base)
    os.makedirs(REPORTS, exist_ok=True)
    return workdir_lib.write_json(os.path.join(REPORTS, f"{name}-seed{seed}.json"), report)


def main(name: str, method: str, seed: int, settings: dict) -> None:
    base = os.environ.get("TFKD_TEACHER_BASE", TEACHER)
    workdir = os.path.join(REPO, "runs", "frontier", f"{name}-seed{seed}")
    white_box = methods.get(method).teacher_needs == "weights"
    start = time.perf_counter()
    with serving.ModelServer([serving.ModelConfig("teacher", base)], poll_seconds=0) as srv:
        config = pipeline.DistillConfig(workdir=workdir).with_settings({
            "method": method, "seed": seed, "teacher.target": srv.target,
            "teacher_saved_model": os.path.join(base, "1") if white_box else None,
            "evaluate_teacher": False, "compress": (), "verbose": 2, **settings})
        result = pipeline.run(config)
    store(os.path.join(workdir, "report.json"), name, seed, base)
    print(json.dumps({"name": name, "seed": seed, "test": result.student_accuracy,
                      "validation": result.student_validation_accuracy,
                      "queries": result.teacher_queries_sent_by_stage,
                      "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]),
         json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
