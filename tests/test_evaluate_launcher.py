"""Issue 35, poor "Launchers": ``tfkd-evaluate`` reports the test images it evaluated, and reaches
a REST server by its ``http://`` URL. Real parts: tfkd's server (gRPC and REST ports) serving the
real teacher SavedModel, a real IDX data dir of 200 test images; the oracle is the teacher's
SavedModel loaded in-process."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfkd import data
from tfkd import serving

from conftest import REPO


@pytest.fixture(scope="module")
def rest_server(teacher_base):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def small_test_split(renamed_data, teacher_base):
    """The 200-image test split of ``renamed_data``'s true labels, and the teacher's accuracy on
    its first n images (computed in-process from the SavedModel)."""
    directory = str(renamed_data / "true")
    dataset = data.load_dataset("fashion_mnist", directory)
    serve = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"]
    top1 = serve(images=tf.constant(dataset.x_test))["probabilities"].numpy().argmax(1)
    return directory, lambda n: float(np.mean(top1[:n] == dataset.y_test[:n]))


def _evaluate(server, data_dir, *flags):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "evaluate.py"), f"--server={server}",
         "--model_name=teacher", f"--data_dir={data_dir}", *flags],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    return result, time.monotonic() - start


def test_evaluate_reports_the_images_it_evaluated_not_the_count_asked(server, small_test_split):
    data_dir, accuracy = small_test_split
    asked, _ = _evaluate(server.target, data_dir, "--eval_examples=500")
    assert asked.returncode == 0, asked.stderr[-2000:]
    result = json.loads(asked.stdout.strip().splitlines()[-1])
    # Before the fix: "examples": 500 for the 200 images the test split has.
    assert result["examples"] == 200, result
    assert result["accuracy"] == pytest.approx(accuracy(200), abs=1e-9)
    assert "500 asked" in asked.stderr and "200 test images" in asked.stderr
    fewer, _ = _evaluate(server.target, data_dir, "--eval_examples=50")
    result = json.loads(fewer.stdout.strip().splitlines()[-1])
    assert result["examples"] == 50 and result["accuracy"] == pytest.approx(accuracy(50), abs=1e-9)
    assert "asked" not in fewer.stderr


def test_evaluate_reaches_a_rest_server_by_its_url(rest_server, small_test_split):
    data_dir, accuracy = small_test_split
    url = f"http://127.0.0.1:{rest_server.rest_api_port}"
    done, seconds = _evaluate(url, data_dir)  # --eval_examples=0: the whole test split.
    # Before the fix: the URL was dialled as a gRPC target: rc 1 after 30 s, "unreachable (no
    # connection within 30 s: the host 'http://127.0.0.1' is not known ...)".
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"tfkd-evaluate over REST: {seconds:.1f} s (process start included)")
    assert result == {"model_name": "teacher", "version": 1, "dataset": "fashion_mnist",
                      "examples": 200, "accuracy": pytest.approx(accuracy(200), abs=1e-9)}


@pytest.fixture(scope="module")
def two_versions(teacher_base, tmp_path_factory):
    """The teacher served as versions 1 and 2 (the same SavedModel twice), 1 labelled stable."""
    import shutil

    base = tmp_path_factory.mktemp("two_versions") / "teacher"
    for version in ("1", "2"):
        shutil.copytree(os.path.join(teacher_base, "1"), base / version)
    config = serving.ModelConfig("teacher", str(base), version_policy="all",
                                 version_labels={"stable": 1})
    with serving.ModelServer([config], poll_seconds=0) as srv:
        yield srv


@pytest.mark.parametrize("flags, version", [((), 2), (("--version=1",), 1),
                                            (("--version_label=stable",), 1)])
def test_evaluate_asks_the_version_named(two_versions, small_test_split, flags, version):
    done, _ = _evaluate(two_versions.target, small_test_split[0], "--eval_examples=20", *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["version"] == version


def test_evaluate_reads_the_signature_and_output_named(custom_server, small_test_split):
    """A teacher with its own names (signature predict_scores: uint8 pixels in, scores and label
    out): --signature and --output_key reach the client."""
    data_dir, accuracy = small_test_split
    done, _ = _evaluate(custom_server.target, data_dir, "--model_name=custom",
                        "--signature=predict_scores", "--output_key=label")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model_name"] == "custom" and result["examples"] == 200
    assert result["accuracy"] == pytest.approx(accuracy(200), abs=1e-9)  # Pixels already uint8.
