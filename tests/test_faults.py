"""Faults: a teacher server killed mid-labelling and restarted (the unreachable-at-start case is in
test_teacher_client.py)."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from tfkd import teacher
from tfkd.teacher import client as client_lib

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, base: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch", "serve.py"), f"--port={port}",
         "--model_name=teacher", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # The poll interval of a loop bounded by the deadline.


def test_killed_and_restarted_teacher_labels_every_image_exactly_once(teacher_base, fashion,
                                                                      tmp_path):
    port = free_port()
    server = start_server(port, teacher_base)
    assert server.stdout.readline().startswith("Serving ['teacher']")
    images = fashion.x_train[:3000]
    ledger_dir = str(tmp_path / "ledger")
    client = teacher.connect(
        f"127.0.0.1:{port}", "teacher", ledger=teacher.QueryLedger(ledger_dir),
        account=teacher.QueryAccount(ledger_dir), max_in_flight=2,
        max_request_bytes=64 * 1024 + 8 * 28 * 28 * 4,  # 8 images per request: 375 requests.
        retry=client_lib.RetryPolicy(max_attempts=30, initial_backoff_s=0.1, max_backoff_s=2.0))
    result, errors = {}, []

    def label():
        try:
            result["labels"] = client.soft_labels(images)
        except BaseException as e:  # Reported by the assertions below.
            errors.append(e)

    worker = threading.Thread(target=label)
    worker.start()
    replacement = None
    try:
        wait_for(lambda: len(os.listdir(ledger_dir)) >= 20 or not worker.is_alive(), 60,
                 "the first answers")
        assert worker.is_alive(), "labelling finished before the kill; nothing was tested"
        server.kill()  # SIGKILL in the middle of the run.
        server.wait(timeout=30)
        answered_before_restart = len(os.listdir(ledger_dir))
        replacement = start_server(port, teacher_base)
        assert replacement.stdout.readline().startswith("Serving ['teacher']")
        worker.join(timeout=180)
        assert not worker.is_alive() and not errors, errors
    finally:
        for proc in (server, replacement):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        client.close()
    labels = result["labels"]
    assert labels.shape == (3000, 10)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert client.retries > 0 and answered_before_restart < 375
    ledger = teacher.QueryLedger(ledger_dir)
    assert len(ledger) == 3000 and ledger.rows_on_disk == 3000  # Every image stored exactly once.
    # Every image *sent* is counted, and persisted: the retries of requests lost with the server
    # come on top of the 3,000 (the teacher may have seen them).
    account = teacher.QueryAccount(ledger_dir)
    assert account.total == client.queries == 3000 + account.retried
    assert account.retried > 0 and account.by_stage == {"predict": client.queries}
    # Nothing is lost: the ledger answers all 3000 images again without a server.
    keys = teacher.QueryLedger.keys(images, client.signature.identity)
    np.testing.assert_allclose(np.stack([ledger.get(k) for k in keys]), labels)
