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


def pytest_collection_modifyitems(items):
    """The tests marked ``slow`` (launcher runs of tens of seconds) first, each group in its own
    order: pytest-xdist hands tests to its two workers in this order, so the longest start early
    and the short ones fill in around them, instead of one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
    result = teacher_setup.train_and_export_teacher(
        small, pipeline.TeacherTrainConfig(epochs=1).resolved("fashion_mnist"), base, seed=0, verbose=0)
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


def sent_by_stage(workdir):
    """A work dir's query account (``pathlib.Path``), summed by stage from its
    ledger/queries_sent.log: {stage: queries sent over the work dir's life}."""
    totals = {}
    for line in (workdir / "ledger" / "queries_sent.log").read_text().splitlines():
        stage, _, n = line.split()[:3]
        totals[stage] = totals.get(stage, 0) + int(n)
    return totals


# ---- launchers' flags, parsed for several tests in one child process -----------------------------

_ONE_PROCESS = r'''
import contextlib, importlib, io, json, os, signal, sys, traceback
from absl import app
from absl import flags

FLAGS = flags.FLAGS


def launcher(name):
    """launch/<name>.py imported here; first the flags of any other launcher imported here are
    removed (and it is forgotten), as two launchers define flags of one name (--dataset)."""
    for module_name, defined in list(FLAGS.flags_by_module_dict().items()):
        if module_name.startswith("launch.") and module_name != f"launch.{name}":
            for flag in list(defined):  # delattr edits this list.
                if flag.name in FLAGS:
                    delattr(FLAGS, flag.name)
            sys.modules.pop(module_name, None)
    return importlib.import_module(f"launch.{name}")


def parse(name, *argv):
    """The launcher's module with ``argv`` parsed (as its run() parses them: its parse_flags,
    absl's otherwise), nothing kept from an earlier parse."""
    return _parse(name, argv)[0]


def _parse(name, argv):
    module = launcher(name)
    FLAGS.unparse_flags()
    return module, getattr(module, "parse_flags", app.parse_flags_with_usage)([f"{name}.py", *argv])


def command(name, *argv):
    """What ``python launch/<name>.py *argv`` ends with, run here as its run() runs it (parse, then
    main): [exit status, last line of stderr]. An exception other than SystemExit propagates (the
    traceback a process would print)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            module, rest = _parse(name, argv)
            module.main(rest)
    except SystemExit as e:  # sys.exit("error: ...") prints the text and exits with 1.
        if isinstance(e.code, str):
            return [1, e.code.splitlines()[-1]]
        return [e.code or 0, (stderr.getvalue().strip().splitlines() or [""])[-1]]
    return [0, (stderr.getvalue().strip().splitlines() or [""])[-1]]


def _too_long(signum, frame):
    raise TimeoutError(f"the case ran over {sys.argv[2]} s (a command that should have stopped "
                       "went on to run?)")


signal.signal(signal.SIGALRM, _too_long)
results = {}
for case_name, (source, variables) in json.loads(sys.stdin.read()).items():
    tmp = os.path.join(sys.argv[1], case_name)
    os.makedirs(tmp)
    out = io.StringIO()
    signal.alarm(int(sys.argv[2]))
    try:
        FLAGS.unparse_flags()
        with contextlib.redirect_stdout(out):
            exec(source, {"__name__": case_name, "FLAGS": FLAGS, "TMP": tmp, "launcher": launcher,
                          "parse": parse, "command": command, **variables})
        results[case_name] = {"out": out.getvalue()}
    except BaseException:  # Any failure is that case's, reported to its test.
        results[case_name] = {"error": out.getvalue() + traceback.format_exc()}
    signal.alarm(0)
print("RESULTS " + json.dumps(results))
'''


def launchers_in_one_process(cases: dict, tmp_dir: str, pythonpath=(REPO,), case_timeout_s=120,
                             timeout_s=600) -> dict:
    """Runs the Python of each case in one child process, in order, and returns what each printed.

    What a launcher parses lives in absl's process-global FLAGS, so it is parsed in a child (never
    in the test process); one child for many cases pays TensorFlow's import once instead of once
    a case. Each case runs with absl's FLAGS unparsed (nothing kept from the case before), in a
    fresh namespace holding ``FLAGS``, ``TMP`` (an empty directory of its own, under ``tmp_dir``),
    its variables, and ``launcher(name)``, ``parse(name, *argv)`` and ``command(name, *argv)``
    (what ``python launch/<name>.py *argv`` ends with: [exit status, last line of stderr]). A case
    that loads plug-ins changes the child for the cases after it: put it last.

    Args:
      cases: case name -> Python source, or (source, {variable: JSON value}).
      tmp_dir: an existing directory; each case gets ``tmp_dir/<case name>``.
      case_timeout_s: a case running longer fails (TimeoutError) and the next one runs.
      timeout_s: the whole child's limit.
    Returns:
      case name -> ``{"out": what it printed}`` or ``{"error": that and its traceback}``; read it
      with :func:`printed`.
    """
    import json
    import subprocess

    cases = {name: (case, {}) if isinstance(case, str) else case for name, case in cases.items()}
    result = subprocess.run([sys.executable, "-c", _ONE_PROCESS, tmp_dir, str(case_timeout_s)],
                            input=json.dumps(cases), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout_s,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(next(x for x in result.stdout.splitlines() if x.startswith("RESULTS "))[8:])


def printed(results: dict, name: str) -> str:
    """What case ``name`` of :func:`launchers_in_one_process` printed; fails with its traceback."""
    assert "error" not in results[name], results[name]["error"][-3000:]
    return results[name]["out"]


# ---- one tiny distillation, the same over every transport ----------------------------------------

def tiny_distill(workdir, target: str, **teacher_fields):
    """A real, tiny FS-BBT distillation (100 real images, 300 MixUp, 50 CVAE images, one student
    epoch, no teacher evaluation, no compressed variant) from the teacher at ``target``; returns
    its :class:`tfkd.Report`. The same run over two transports of one SavedModel sends the same
    images, so their labelled sets and query counts can be compared."""
    import tfkd

    return tfkd.distill(
        workdir=str(workdir), num_shots=100, evaluate_teacher=False, eval_examples=200,
        compress=(), verbose=0, seed=0,
        teacher=tfkd.TeacherConfig(target=target, model_name="teacher", **teacher_fields),
        mixup={"num_images": 300}, cvae={"num_images": 50, "epochs": 1},
        student={"epochs": 1, "batch_size": 64})


def labelled_set(report) -> dict:
    """A report's persisted transfer set (``labelled_set``): array name -> numpy array."""
    with np.load(report.labelled_set) as archive:
        return {name: archive[name] for name in archive.files}
