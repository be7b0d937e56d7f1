"""Shared fixtures: real Fashion-MNIST, a real trained teacher SavedModel, a real gRPC server."""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tfkd import data  # noqa: E402


@pytest.fixture(scope="session")
def fashion():
    """Real Fashion-MNIST (the Debian package on CI)."""
    return data.load_dataset("fashion_mnist")


@pytest.fixture(scope="session")
def teacher_base(fashion, tmp_path_factory):
    """A real LeNet-5 teacher, trained for one epoch on 12,000 images and exported (version 1)."""
    from tfkd import pipeline
    from tfkd import teacher_setup

    small = data.Dataset("fashion_mnist", fashion.x_train[:12000], fashion.y_train[:12000],
                         fashion.x_test[:2000], fashion.y_test[:2000], 10, fashion.source)
    base = str(tmp_path_factory.mktemp("models") / "teacher")
    result = teacher_setup.train_and_export_teacher(small, pipeline.TeacherTrainConfig(epochs=1),
                                                    base, seed=0, verbose=0)
    assert result["test_accuracy"] > 0.6, result
    return base


@pytest.fixture(scope="session")
def server(teacher_base):
    """tfkd's TF-Serving-compatible gRPC server on a free loopback port, serving the teacher."""
    from tfkd import serving

    srv = serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def label_only_server(teacher_base, tmp_path_factory):
    """The same teacher re-exported with only its ``classes`` output (a decision-based teacher that
    answers class ids, no probabilities), served as ``teacher``."""
    from tfkd import export
    from tfkd import serving

    base = str(tmp_path_factory.mktemp("label_only") / "teacher")
    export.export_label_only(os.path.join(teacher_base, "1"), base)
    srv = serving.ModelServer([serving.ModelConfig("teacher", base)], poll_seconds=0)
    srv.start()
    yield srv
    srv.stop()


@contextlib.contextmanager
def real_model_server(model_name: str, base_path: str, rest: bool = False, extra_args=()):
    """A real tensorflow_model_server serving ``base_path`` as ``model_name`` (with
    ``extra_args``, e.g. ``--prefer_tflite_model=true``); yields its gRPC target (and REST port
    with ``rest``). Skips the test when the binary is not on PATH.

    tensorflow_model_server is not installable on the machines tfkd is developed on (not on PyPI or
    in Debian, no Docker engine), so this skips there; elsewhere it holds tfkd's server and client
    to the real thing.
    """
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH")
    from tfkd import teacher

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port, rest_port = free_port(), free_port()
    proc = subprocess.Popen([binary, f"--port={port}", f"--model_name={model_name}",
                             f"--model_base_path={base_path}"]
                            + ([f"--rest_api_port={rest_port}"] if rest else []) + list(extra_args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            teacher.connect(target, model_name, connect_timeout_s=5).close()
            break
        except teacher.TeacherError:  # Not up, or the model still loading.
            assert proc.poll() is None, "tensorflow_model_server exited at start"
            assert time.monotonic() < deadline, "tensorflow_model_server did not come up in 60 s"
            time.sleep(0.2)  # The poll interval of a loop bounded by the deadline.
    try:
        yield (target, rest_port) if rest else target
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def real_tf_serving(teacher_base):
    """A real tensorflow_model_server serving the same teacher; skips when it is not on PATH."""
    with real_model_server("teacher", teacher_base) as target:
        yield target


@pytest.fixture(params=["tfkd", "tensorflow_model_server"])
def conformance_target(request, server):
    """The gRPC address of each server the conformance tests hold side by side."""
    if request.param == "tfkd":
        return server.target
    return request.getfixturevalue("real_tf_serving")


@pytest.fixture()
def client(server):
    from tfkd import teacher

    with teacher.connect(server.target, "teacher") as c:
        yield c


@pytest.fixture()
def every_log_level(caplog):
    """caplog capturing every level (DEBUG and up) of Python and absl logging, restored after."""
    import logging

    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="absl")
    try:
        yield caplog
    finally:
        absl_logging.set_verbosity(verbosity)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


class CustomTeacher:
    """Builds a teacher that is not a Keras export: a plain tf.Module with its own names.

    Signature ``predict_scores``: input ``pixels`` uint8 [batch, 28, 28] in [0, 255] (no channel
    axis); outputs ``scores`` float32 [batch, 10] (logits) and ``label`` int64 [batch] (top-1).
    """

    @staticmethod
    def export(teacher_version_dir: str, export_dir: str) -> str:
        import tensorflow as tf

        class Module(tf.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="pixels")])
            def predict_scores(self, pixels):
                images = tf.cast(pixels, tf.float32)[..., None] / 255.0
                p = self.inner.signatures["serving_default"](images=images)["probabilities"]
                return {"scores": tf.math.log(p + 1e-12), "label": tf.argmax(p, axis=-1)}

        module = Module(tf.saved_model.load(teacher_version_dir))
        tf.saved_model.save(module, export_dir, signatures={"predict_scores": module.predict_scores})
        return export_dir


@pytest.fixture(scope="session")
def custom_teacher_base(teacher_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("custom") / "custom"
    CustomTeacher.export(os.path.join(teacher_base, "1"), str(base / "1"))
    return str(base)


@pytest.fixture(scope="session")
def custom_server(custom_teacher_base, teacher_base):
    from tfkd import serving

    srv = serving.ModelServer([serving.ModelConfig("custom", custom_teacher_base),
                               serving.ModelConfig("teacher", teacher_base)], poll_seconds=0)
    srv.start()
    yield srv
    srv.stop()


class RequireToken(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (as an auth proxy in front would)."""

    def __init__(self, token):
        self.token = token

    def intercept_service(self, continuation, details):
        if ("authorization", f"Bearer {self.token}") in tuple(details.invocation_metadata or ()):
            return continuation(details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad token")

        return grpc.unary_unary_rpc_method_handler(deny)


RENAMING = np.array([(3 * k + 7) % 10 for k in range(10)])  # A bijection of the 10 classes.


@pytest.fixture(scope="session")
def renamed_data(fashion, tmp_path_factory):
    """The same 3,000 training images written twice: with their labels, and renamed by RENAMING."""
    import test_data

    root = tmp_path_factory.mktemp("relabel")
    x = np.round(fashion.x_train[:3000, ..., 0] * 255).astype(np.uint8)
    xt = np.round(fashion.x_test[:200, ..., 0] * 255).astype(np.uint8)
    y, yt = fashion.y_train[:3000], fashion.y_test[:200]
    test_data.write_idx(root / "true", x, y, xt, yt)
    test_data.write_idx(root / "renamed", x, RENAMING[y], xt, RENAMING[yt])
    return root


def kill_when(process, ready, what: str, seconds: float = 300) -> None:
    """SIGKILLs ``process`` (a ``subprocess.Popen`` with stderr piped) as soon as ``ready()``
    holds, as a preempted job is killed; fails if the process ends first or ``seconds`` pass."""
    import signal
    import time

    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"{what} within {seconds} s"
            time.sleep(0.02)  # The poll interval of a loop bounded by the deadline.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()



def config_of(**settings):
    """A :class:`tfkd.DistillConfig` from settings by name, as ``tfkd.distill`` takes them
    (:meth:`~tfkd.DistillConfig.with_settings`: a method's own settings, ``mixup=``, ``db3kd=``,
    included)."""
    from tfkd import config

    return config.DistillConfig(workdir=str(settings.pop("workdir"))).with_settings(settings)
