"""The client against the real tensorflow_model_server, when it is on PATH (skipped otherwise).

tensorflow_model_server is not installable on the machines tfkd is developed on (not on PyPI or in
Debian, no Docker engine), so these tests skip there; on a machine that has it they hold the client
and tfkd's stand-in server to the real thing.
"""

import shutil
import socket
import subprocess
import time

import grpc
import numpy as np
import pytest

from tfkd import teacher

BINARY = shutil.which("tensorflow_model_server")
pytestmark = pytest.mark.skipif(BINARY is None, reason="tensorflow_model_server is not on PATH")


@pytest.fixture(scope="module")
def real_server(teacher_base):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([BINARY, f"--port={port}", "--model_name=teacher",
                             f"--model_base_path={teacher_base}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    client = None
    while client is None and time.monotonic() < deadline:
        try:
            client = teacher.TeacherClient(target, "teacher", connect_timeout_s=5)
        except teacher.TeacherError:  # Not up, or the model still loading.
            if proc.poll() is not None:
                pytest.fail("tensorflow_model_server exited at start")
            time.sleep(0.2)  # The poll interval of a loop bounded by the deadline.
    assert client is not None, "tensorflow_model_server did not serve the teacher within 60 s"
    client.close()
    yield target
    proc.terminate()
    proc.wait(timeout=30)


def test_client_against_real_server(real_server, server, fashion):
    images = fashion.x_test[:2000]  # Over 4 MB: split into requests.
    with teacher.TeacherClient(real_server, "teacher") as real, \
            teacher.TeacherClient(server.target, "teacher") as ours:
        assert real.signature == ours.signature
        np.testing.assert_allclose(real.soft_labels(images), ours.soft_labels(images), atol=1e-5)


def test_unknown_model_not_found_on_real_server(real_server):
    with pytest.raises(teacher.TeacherError) as e:
        teacher.TeacherClient(real_server, "no_such_model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
