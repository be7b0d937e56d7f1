"""Issue 14: the Kubeflow Pipelines component and pipeline, run for real with KFP's local runner
(``kfp.local``, subprocess runner: each component in its own Python process, as a KFP worker
runs it) against a real served teacher. Skipped without the ``kfp`` extra; ``.ci/run`` installs it
in its own environment and runs this file there (KFP 2.17 needs protobuf < 7)."""

import glob
import json
import os

import pytest
import tensorflow as tf

# Optional: the kfp extra (which brings pyyaml); skipped cleanly when either is absent.
kfp = pytest.importorskip("kfp")
yaml = pytest.importorskip("yaml")

from kfp import local  # noqa: E402

from tfkd import export  # noqa: E402
from tfkd import kubeflow  # noqa: E402
from tfkd import serving  # noqa: E402
from tfkd_launch import kubeflow as kfp_launch  # noqa: E402


def test_pipeline_compiles_to_yaml_kfp_accepts(tmp_path):
    path = kfp_launch.compile_pipeline(str(tmp_path / "pipeline.yaml"))
    spec = yaml.safe_load(open(path))
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"teacher-endpoint", "distil", "evaluate", "deploy"}
    assert tasks["distil"]["dependentTasks"] == ["teacher-endpoint"]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {"teacher", "serving_base_path",
                                                                    "settings"}
    # KFP reads it back (its own loader validates the pipeline spec).
    from kfp import components
    assert components.load_component_from_file(path).name == "tfkd-distill"


def test_teacher_endpoint_check_fails_with_one_line(server):
    with pytest.raises(RuntimeError,
                       match="teacher 'nope' at .*: GetModelMetadata failed with NOT_FOUND"):
        kubeflow.check_teacher(server.target, "nope")
    assert kubeflow.check_teacher(server.target, "teacher")["signatures"] == ["serving_default"]


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local_runner(server, fashion, tmp_path):
    """teacher endpoint -> distil -> evaluate -> deploy on tiny settings; the student artifact is a
    TF Serving base path that serves, its metrics artifact holds the report's figures, and the
    deployed version answers as the artifact does."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    served = tmp_path / "served" / "student"
    kfp_launch.distill_pipeline(
        teacher=server.target, serving_base_path=str(served), dataset="fashion_mnist",
        eval_examples=300, settings={
            "num_shots": 100, "mixup.num_images": 100, "cvae.num_images": 50, "cvae.epochs": 1,
            "student.epochs": 2, "eval_examples": 300, "compress": [], "verbose": 0})
    [run] = glob.glob(str(tmp_path / "root" / "tfkd-distill-*"))

    def outputs(task):  # What the task handed on: parameters and artifacts (uri, metadata).
        with open(os.path.join(run, task, "executor_output.json")) as f:
            found = json.load(f)
        artifacts = {k: v["artifacts"][0] for k, v in found.get("artifacts", {}).items()}
        return found.get("parameterValues", {}), artifacts

    _, distilled = outputs("distil")
    student = distilled["student"]["uri"]
    assert export.list_versions(student) == [1] and distilled["student"]["metadata"]["version"] == 1
    assert os.path.exists(os.path.join(student, "model_card.json"))
    metrics = distilled["metrics"]["metadata"]
    assert 0.1 < metrics["student_accuracy"] <= 1.0 and metrics["teacher_queries_total"] == 550
    report = open(distilled["report"]["uri"]).read()
    assert report.startswith("# Model card") and "data:image/png;base64," in report
    accuracy, evaluated = outputs("evaluate")
    # Served over gRPC by the evaluate step: the accuracy the run measured on the same 300 images.
    assert accuracy["Output"] == pytest.approx(metrics["student_accuracy"], abs=1e-6)
    assert evaluated["metrics"]["metadata"]["examples"] == 300
    deployed_dir, _ = outputs("deploy")
    assert deployed_dir["Output"] == str(served / "1")
    assert export.list_versions(str(served)) == [1]
    with serving.ModelServer([serving.ModelConfig("student", str(served))], poll_seconds=0):
        pass  # The deployed base path loads in a server.
    images = tf.constant(fashion.x_test[:8])
    deployed = tf.saved_model.load(str(served / "1")).signatures["serving_default"]
    artifact = tf.saved_model.load(os.path.join(student, "1")).signatures["serving_default"]
    assert (deployed(images=images)["classes"].numpy()
            == artifact(images=images)["classes"].numpy()).all()
