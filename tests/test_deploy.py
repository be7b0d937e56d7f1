"""Deployment: generated serving configs, and a new student version deployed into a running server."""

import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from tfkd import export
from tfkd import serving
from tfkd import teacher
from tfkd.student import models

from conftest import REPO
from test_faults import free_port


@pytest.fixture(scope="module")
def student_exports(tmp_path_factory, fashion):
    """Two student versions (different initialisations) with warmup files, outside any base path."""
    root = tmp_path_factory.mktemp("student_exports")
    dirs = []
    for seed in (1, 2):
        import keras
        keras.utils.set_random_seed(seed)
        model = models.build_model("lenet5_half", (28, 28, 1), 10)
        dirs.append(export.export_classifier(model, str(root / f"seed{seed}"),
                                             warmup_images=fashion.x_train[:8]))
    return dirs


def served_versions(target, name):
    with grpc.insecure_channel(target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=10)
        except grpc.RpcError:
            return []
        return [s.version for s in response.model_version_status]


def test_generated_serving_configs(tmp_path, teacher_base, student_exports, fashion):
    base = tmp_path / "student"
    for d in student_exports:
        export.deploy_version(d, str(base))
    paths = serving.config.write_serving_configs(str(tmp_path / "serving"), teacher_base, str(base),
                                         stable=1, canary=2)
    assert set(paths) == {"models.config", "batching_parameters.txt", "monitoring.config"}
    models_config = serving.parse_model_config_file(paths["models.config"])
    assert [m.name for m in models_config] == ["teacher", "student"]
    assert models_config[1].version_labels == {"stable": 1, "canary": 2}
    assert "max_batch_size" in open(paths["batching_parameters.txt"]).read()
    assert "prometheus_config" in open(paths["monitoring.config"]).read()
    with serving.ModelServer(models_config, poll_seconds=0) as srv:
        for label, version in (("stable", 1), ("canary", 2)):
            with teacher.connect(srv.target, "student", version_label=label) as client:
                assert client.signature.version == version
                assert client.soft_labels(fashion.x_test[:4]).shape == (4, 10)


def test_deploy_into_running_server_without_restart(tmp_path, student_exports):
    base = tmp_path / "student"
    export.deploy_version(student_exports[0], str(base))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch", "serve.py"), f"--port={port}",
         "--model_name=student", f"--model_base_path={base}",
         "--file_system_poll_wait_seconds=0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    target = f"127.0.0.1:{port}"
    try:
        assert server.stdout.readline().startswith("Serving ['student']")
        assert served_versions(target, "student") == [1]
        deployed = subprocess.run(
            [sys.executable, os.path.join(REPO, "launch", "deploy.py"),
             f"--export_dir={student_exports[1]}", f"--model_base_path={base}"],
            capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        assert os.path.exists(base / "2" / "assets.extra" / "tf_serving_warmup_requests")
        deadline = time.monotonic() + 60
        while served_versions(target, "student") != [2]:
            assert time.monotonic() < deadline, "version 2 was not loaded within 60 s"
            time.sleep(0.1)  # The poll interval of a loop bounded by the deadline.
        evaluated = subprocess.run(
            [sys.executable, os.path.join(REPO, "launch", "evaluate.py"), f"--server={target}",
             "--model_name=student", "--version=2", "--eval_examples=300"],
            capture_output=True, text=True, timeout=120)
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        result = json.loads(evaluated.stdout.strip().splitlines()[-1])
        assert result["version"] == 2 and result["examples"] == 300
        assert 0.0 <= result["accuracy"] <= 1.0
        assert server.poll() is None  # The same server process throughout.
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_deploy_rejects_a_non_savedmodel(tmp_path):
    with pytest.raises(ValueError, match="expected a SavedModel directory"):
        export.deploy_version(str(tmp_path), str(tmp_path / "base"))
