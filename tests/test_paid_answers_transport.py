"""Issue 35, the transports' part: answers stay with the teacher version that gave them, no slow or
huge REST answer stalls a run, REST answers and settings fail with one clear line, and an int8
teacher's honest answers are taken.

Real parts: tfkd's server (gRPC and REST ports) serving real teacher SavedModels trained on
Fashion-MNIST; where a misbehaving REST teacher is needed (one that trickles, sends too much, or
answers an HTML page), a tiny HTTP/1.1 peer on a raw loopback socket, whose metadata answer is a
real tfkd server's."""

import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tfkd import errors
from tfkd import serving
from tfkd import teacher
from tfkd.teacher import client as client_lib
from tfkd.teacher import transports

from conftest import RequireToken

ONE_TRY = client_lib.RetryPolicy(max_attempts=1)
SHIFT = [(k + 1) % 10 for k in range(10)]  # Version 2 answers class k+1's probability for k.


# --------------------------------------------------------------------------- fixtures and peers


@pytest.fixture(scope="module")
def shifted_teacher(teacher_base, tmp_path_factory):
    """Another SavedModel with the teacher's signature (input ``images``, output
    ``probabilities``): version 1's probabilities with the classes shifted by one, so that its
    top-1 differs from version 1's on every image."""
    class Shifted(tf.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32,
                                                    name="images")])
        def serve(self, images):
            p = self.inner.signatures["serving_default"](images=images)["probabilities"]
            return {"probabilities": tf.gather(p, SHIFT, axis=1)}

    module = Shifted(tf.saved_model.load(os.path.join(teacher_base, "1")))
    path = str(tmp_path_factory.mktemp("shifted") / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def metadata_answer(teacher_base):
    """A real tfkd REST server's metadata answer for the teacher (what the raw peers replay)."""
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        url = f"http://127.0.0.1:{srv.rest_api_port}/v1/models/teacher/metadata"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()


@pytest.fixture(scope="module")
def rest_server(teacher_base):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        yield srv


def _http_answer(status: int, body: bytes, headers: dict | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawPeer:
    """An HTTP/1.1 peer on a raw loopback socket: it answers ``GET .../metadata`` with a real
    server's metadata answer and hands every other request to ``handler(peer, conn)``.

    Attributes: ``url``; ``requests``: (method, path) of each request read; ``sent``: bytes the
    handler got out (what :meth:`send` managed to write before the client hung up)."""

    def __init__(self, metadata: bytes | None, handler, host: str = "127.0.0.1"):
        self.metadata, self.handler = metadata, handler
        self.listener = socket.create_server((host, 0))
        self.url = f"http://{host}:{self.listener.getsockname()[1]}"
        self.requests: list = []
        self.sent = 0
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # Closed: the test is over.
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head:
                    part = conn.recv(65536)
                    if not part:
                        return
                    head += part
                head, _, body = head.partition(b"\r\n\r\n")
                first, *fields = head.decode("latin-1").split("\r\n")
                length = next((int(f.split(":", 1)[1]) for f in fields
                               if f.lower().startswith("content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(1 << 20)
                method, path = first.split(" ")[:2]
                self.requests.append((method, path))
                if path.endswith("/metadata") and self.metadata is not None:
                    conn.sendall(_http_answer(200, self.metadata))
                else:
                    self.handler(self, conn)
            except OSError:  # The client hung up (as it should on a refused answer).
                return

    def send(self, conn, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.listener.close()


def _outputs(n: int, pad_to: int | None = None) -> bytes:
    """A valid predict answer for n images (uniform probabilities), padded with spaces (still
    valid JSON) to exactly ``pad_to`` bytes."""
    body = json.dumps({"outputs": [[0.1] * 10] * n}).encode()
    return body if pad_to is None else body + b" " * (pad_to - len(body))


def _retries_logged(caplog) -> int:
    return sum("retry" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- Bad 1: versions


def _deploy(path: str, base, version: int, staging) -> None:
    shutil.copytree(path, staging)
    os.rename(staging, base / str(version))  # Atomic, as tfkd-deploy writes a version.


def _wait_for_versions(srv, versions: list[int], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while sorted(s.version for s in srv.registry.versions("teacher")) != versions:
        assert time.monotonic() < deadline, f"the server did not serve {versions} in {seconds} s"
        time.sleep(0.02)  # The poll interval of a loop bounded by the deadline.


@pytest.mark.parametrize("transport", ["grpc", "grpc-with-token", "rest"])
def test_a_teacher_version_deployed_mid_run_stops_the_run_with_one_line(
        transport, teacher_base, shifted_teacher, fashion, tmp_path, monkeypatch):
    # Before the fix: DID NOT RAISE; the 8 images labelled after version 2 appeared were answered
    # by version 2 (top-1 shifted on 8 of 8) and stored under version 1's identity.
    base = tmp_path / "teacher"
    shutil.copytree(os.path.join(teacher_base, "1"), base / "1")
    images = fashion.x_test[:16]
    ledger_dir = str(tmp_path / "work" / "ledger")
    token = transport == "grpc-with-token"  # Behind an auth check: every call sends the token.
    monkeypatch.setenv("TFKD_TEST_TOKEN", "s3cret")
    with serving.ModelServer([serving.ModelConfig("teacher", str(base))], poll_seconds=0.05,
                             rest_api_port=0,
                             interceptors=[RequireToken("s3cret")] if token else []) as srv:
        url = f"http://127.0.0.1:{srv.rest_api_port}" if transport == "rest" else srv.target
        with teacher.connect(url, ledger=teacher.QueryLedger(ledger_dir),
                             auth_token_env="TFKD_TEST_TOKEN" if token else None) as t:
            assert t.signature.version == 1
            first = t.soft_labels(images[:8], stage="label")
            identity, encoded = t.signature.identity, t.encode(images)
            _deploy(shifted_teacher, base, 2, tmp_path / "staging")
            _wait_for_versions(srv, [2])  # tfkd's server unloads version 1 when 2 is served.
            with pytest.raises(teacher.TeacherError) as e:
                t.soft_labels(images[8:], stage="label")
    message = str(e.value)
    assert "\n" not in message
    assert "teacher 'teacher' version 1 is no longer served" in message, message
    assert "version 2 was deployed under the run? rerun to label with it" in message, message
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    ledger = teacher.QueryLedger(ledger_dir)  # As a later run reads it.
    keys = teacher.QueryLedger.keys(encoded, identity)
    assert len(ledger) == 8 and all(ledger.get(k) is None for k in keys[8:])
    with teacher.from_saved_model(os.path.join(base, "1")) as version_1:
        expected = version_1.soft_labels(images[:8])
    np.testing.assert_allclose(first, expected, atol=1e-6)
    np.testing.assert_allclose(np.stack([ledger.get(k) for k in keys[:8]]), expected, atol=1e-6)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_run_keeps_labelling_with_the_version_it_connected_to_while_it_is_served(
        transport, teacher_base, shifted_teacher, fashion, tmp_path):
    # Before the fix: the answers after version 2 appeared were version 2's, under version 1's
    # identity (assert_allclose: 198 of 200 values differ from version 1's).
    base = tmp_path / "teacher"
    shutil.copytree(os.path.join(teacher_base, "1"), base / "1")
    images = fashion.x_test[:20]
    with teacher.from_saved_model(os.path.join(base, "1")) as version_1:
        expected = version_1.soft_labels(images)
    with serving.ModelServer([serving.ModelConfig("teacher", str(base), version_policy="all")],
                             poll_seconds=0.05, rest_api_port=0) as srv:
        url = srv.target if transport == "grpc" else f"http://127.0.0.1:{srv.rest_api_port}"
        with teacher.connect(url) as t:
            _deploy(shifted_teacher, base, 2, tmp_path / "staging")
            _wait_for_versions(srv, [1, 2])
            np.testing.assert_allclose(t.probe(images), expected, atol=1e-6)
        with teacher.connect(url) as later:  # A new run gets the new version.
            assert later.signature.version == 2
            assert np.all(later.top1(images) == (expected.argmax(1) - 1) % 10)


class DropVersion(grpc.ServerInterceptor):
    """A proxy's fault injected into a real server: Predict requests lose their model version, so
    that the latest version answers whatever the client asked."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if not details.method.endswith("/Predict"):
            return handler
        inner = handler.unary_unary

        def unpinned(request, context):
            request.model_spec.ClearField("version")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unpinned, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def test_a_grpc_answer_from_another_version_is_refused_and_not_stored(
        teacher_base, shifted_teacher, fashion, tmp_path):
    # Before the fix: DID NOT RAISE; version 2's answers were stored under version 1's identity.
    base = tmp_path / "teacher"
    shutil.copytree(os.path.join(teacher_base, "1"), base / "1")
    shutil.copytree(shifted_teacher, base / "2")
    ledger = teacher.QueryLedger(str(tmp_path / "ledger"))
    with serving.ModelServer([serving.ModelConfig("teacher", str(base), version_policy="all")],
                             poll_seconds=0, interceptors=[DropVersion()]) as srv:
        with teacher.connect(srv.target, version=1, ledger=ledger) as t:
            with pytest.raises(teacher.TeacherError) as e:
                t.soft_labels(fashion.x_test[:8])
            assert t.retries == 0
    message = str(e.value)
    assert "answered by version 2" in message and "version 1" in message, message
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(teacher.QueryLedger(str(tmp_path / "ledger"))) == 0


class GoneAndSlow(grpc.ServerInterceptor):
    """Faults injected into a real server: once ``armed``, Predict answers NOT_FOUND (the version
    taken away) and GetModelMetadata holds every call for 30 s (until ``release``)."""

    def __init__(self):
        self.armed, self.release = threading.Event(), threading.Event()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if not self.armed.is_set():
            return handler
        if details.method.endswith("/Predict"):
            def gone(request, context):
                context.abort(grpc.StatusCode.NOT_FOUND,
                              "Servable not found for request: Specific(teacher, 1)")
            return grpc.unary_unary_rpc_method_handler(
                gone, request_deserializer=handler.request_deserializer)
        inner = handler.unary_unary

        def slow(request, context):
            self.release.wait(30)
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(
            slow, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def test_a_version_gone_is_told_within_the_deadline_when_the_server_stalls(teacher_base,
                                                                           fashion):
    # The message asks the server which version it serves now; that question has the deadline
    # too (a server that does not answer it must not hold the run). Before the fix: "Predict
    # failed with NOT_FOUND: Servable not found for request: Specific(teacher, 1)" (no cause);
    # with the question asked without a deadline, 30 s.
    faults = GoneAndSlow()
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[faults]) as srv:
        try:
            with teacher.connect(srv.target, timeout_s=2, retry=ONE_TRY) as t:
                faults.armed.set()
                start = time.monotonic()
                with pytest.raises(teacher.TeacherError,
                                   match="version 1 is no longer served .*names no other "
                                         "version now; rerun once it serves one"):
                    t.soft_labels(fashion.x_test[:4])
                assert time.monotonic() - start < 6
        finally:
            faults.release.set()


# --------------------------------------------------------------------------- Bad 4: trickling


def _trickle(skip_head: bool):
    def handler(peer, conn):
        answer = _http_answer(200, _outputs(2))
        head, _, body = answer.partition(b"\r\n\r\n")
        if skip_head:
            peer.send(conn, head + b"\r\n\r\n")
            answer = body
        for byte in answer[:10]:  # A byte every 2 s (for 20 s at most).
            peer.send(conn, bytes([byte]))
            if peer.stop.wait(2):
                return
    return handler


@pytest.mark.parametrize("where", ["status line", "body"])
def test_a_rest_teacher_that_trickles_its_answer_times_out_at_timeout_s(where, metadata_answer,
                                                                        fashion):
    # Before the fix: the call waited for the whole trickle (each read under 3 s), then after
    # 20 s "UNAVAILABLE: BadStatusLine: HTTP/1.1 2" (status line) or "UNAVAILABLE: IncompleteRead
    # (10 bytes read, 107 more expected)" (body).
    with RawPeer(metadata_answer, _trickle(where == "body")) as peer:
        with teacher.connect(peer.url, timeout_s=3, retry=ONE_TRY) as t:
            start = time.monotonic()
            with pytest.raises(teacher.TeacherError, match="DEADLINE_EXCEEDED") as e:
                t.soft_labels(fashion.x_test[:2])
            elapsed = time.monotonic() - start
    assert 2.5 < elapsed < 6, elapsed
    assert "within 3 s" in str(e.value)


def test_a_deadline_covers_each_attempt_of_a_retried_rest_call(metadata_answer, fashion):
    # Before the fix: 12.0 s for the two attempts (each read, not each attempt, under 2 s).
    fast = client_lib.RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    with RawPeer(metadata_answer, _trickle(False)) as peer:
        with teacher.connect(peer.url, timeout_s=2, retry=fast) as t:
            start = time.monotonic()
            with pytest.raises(teacher.TeacherError, match="DEADLINE_EXCEEDED.*after 2 attempts"):
                t.soft_labels(fashion.x_test[:2])
            elapsed = time.monotonic() - start
    assert 3.5 < elapsed < 8, elapsed
    assert [m for m, _ in peer.requests].count("POST") == 2


# --------------------------------------------------------------------------- Bad 5: answer size


def test_the_rest_answer_limit_is_the_grpc_channel_limit(server, monkeypatch):
    # Before the fix: transports had no MAX_ANSWER_BYTES (AttributeError).
    assert transports.rest.MAX_ANSWER_BYTES == client_lib.MAX_ANSWER_BYTES == 64 * 1024 * 1024
    seen = []
    real = grpc.insecure_channel

    def recording(target, options=None, **kwargs):
        seen.append(dict(options or ()))
        return real(target, options=options, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    client_lib.connect(server.target, "teacher").close()
    assert seen[0]["grpc.max_receive_message_length"] == 64 * 1024 * 1024


LIMIT = 100_000  # The tests lower the limit (64 MiB by default) to stay fast.


def _announce(length: int, valid: bool = True):
    """An answer with ``Content-Length: length`` that sends it all as fast as the client takes
    it: a valid answer padded to that length, or (not ``valid``) that many spaces."""
    def handler(peer, conn):
        peer.send(conn, _http_answer(200, b"", {"Content-Length": length}))
        if valid:
            body = _outputs(2, pad_to=length)
            for start in range(0, len(body), 65536):
                peer.send(conn, body[start:start + 65536])
            return
        block = b" " * 65536
        for _ in range(length // len(block)):
            peer.send(conn, block)
    return handler


def _chunked(total: int):
    """A chunked answer of ``total`` bytes in 4 KiB chunks (no length announced)."""
    def handler(peer, conn):
        body = _outputs(2, pad_to=total)
        peer.send(conn, _http_answer(200, b"", {"Transfer-Encoding": "chunked"}))
        for start in range(0, len(body), 4096):
            part = body[start:start + 4096]
            peer.send(conn, f"{len(part):x}\r\n".encode() + part + b"\r\n")
        peer.send(conn, b"0\r\n\r\n")
    return handler


def _until_close(total: int):
    """An answer with neither a length nor chunks: the body ends when the peer closes."""
    def handler(peer, conn):
        body = _outputs(2, pad_to=total)
        peer.send(conn, b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n")
        for start in range(0, len(body), 4096):
            peer.send(conn, body[start:start + 4096])
    return handler


@pytest.mark.parametrize("make", [_announce, _chunked, _until_close],
                         ids=["content-length", "chunked", "until-close"])
def test_a_rest_answer_over_the_limit_is_refused_with_its_size(make, metadata_answer, fashion,
                                                               monkeypatch):
    # Before the fix: DID NOT RAISE (an answer of LIMIT + 1 bytes read and parsed whole).
    monkeypatch.setattr(transports.rest, "MAX_ANSWER_BYTES", LIMIT)
    for size in (LIMIT, LIMIT + 1):
        with RawPeer(metadata_answer, make(size)) as peer, \
                teacher.connect(peer.url, retry=ONE_TRY) as t:
            if size == LIMIT:  # At the limit: taken.
                np.testing.assert_allclose(t.soft_labels(fashion.x_test[:2]), 0.1, atol=1e-6)
                continue
            with pytest.raises(teacher.TeacherError,
                               match=f"over the limit of {LIMIT} bytes") as e:
                t.soft_labels(fashion.x_test[:2])
            assert "RESOURCE_EXHAUSTED" in str(e.value) and "\n" not in str(e.value)
            assert [m for m, _ in peer.requests].count("POST") == 1  # Not retried.


def test_a_huge_announced_rest_answer_is_refused_without_reading_it(metadata_answer, fashion,
                                                                    monkeypatch):
    # Before the fix: the client read 299,958,272 bytes, then "UNAVAILABLE: IncompleteRead".
    monkeypatch.setattr(transports.rest, "MAX_ANSWER_BYTES", LIMIT)
    huge = 300_000_000
    with RawPeer(metadata_answer, _announce(huge, valid=False)) as peer, \
            teacher.connect(peer.url, retry=ONE_TRY) as t:
        start = time.monotonic()
        with pytest.raises(teacher.TeacherError, match=f"announces {huge} bytes"):
            t.soft_labels(fashion.x_test[:2])
        assert time.monotonic() - start < 10
    assert peer.sent < 30_000_000  # What the socket buffers took before the client hung up.


def test_a_huge_chunked_rest_answer_is_refused_after_the_limit(metadata_answer, fashion,
                                                               monkeypatch):
    # Before the fix: the client read 299,958,272 bytes, then "UNAVAILABLE: IncompleteRead".
    monkeypatch.setattr(transports.rest, "MAX_ANSWER_BYTES", LIMIT)

    def endless(peer, conn):
        peer.send(conn, _http_answer(200, b"", {"Transfer-Encoding": "chunked"}))
        chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
        for _ in range(300_000_000 // 65536):
            peer.send(conn, chunk)

    with RawPeer(metadata_answer, endless) as peer, teacher.connect(peer.url, retry=ONE_TRY) as t:
        with pytest.raises(teacher.TeacherError, match=f"more than {LIMIT} bytes"):
            t.soft_labels(fashion.x_test[:2])
    assert peer.sent < 30_000_000


# --------------------------------------------------------------------------- REST answers


def _answers(status: int, body: bytes, headers: dict | None = None):
    def handler(peer, conn):
        peer.send(conn, _http_answer(status, body, headers))
    return handler


def test_a_rest_200_with_an_error_body_is_reported_as_that_error(metadata_answer, fashion):
    # Before the fix: "POST ...: the answer has no output 'probabilities'".
    body = json.dumps({"error": "the model is\n warming up " + "x" * 1000}).encode()
    with RawPeer(metadata_answer, _answers(200, body)) as peer, \
            teacher.connect(peer.url, retry=ONE_TRY) as t:
        with pytest.raises(teacher.TeacherError,
                           match="HTTP 200 with an error: the model is warming up x") as e:
            t.soft_labels(fashion.x_test[:2])
    assert "no output" not in str(e.value)
    assert str(e.value).endswith(" " + "x" * (300 - 25)), str(e.value)  # Cut at 300 characters.


def test_a_rest_html_page_is_reported_as_not_json(metadata_answer, fashion):
    # Before the fix: "the answer has no output 'probabilities'" (predict) and "the metadata
    # answer is not TF Serving's (KeyError ...)" (connect).
    page = (b"<html>\n<head><title>Sign in</title></head>\n<body>" + b"Sign in. " * 40
            + b"</body></html>")
    with RawPeer(metadata_answer, _answers(200, page, {"Content-Type": "text/html"})) as peer, \
            teacher.connect(peer.url, retry=ONE_TRY) as t:
        with pytest.raises(teacher.TeacherError,
                           match="HTTP 200: the answer is not JSON: <html> <head><title>") as e:
            t.soft_labels(fashion.x_test[:2])
    assert "no output" not in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith(" ".join(page[:200].decode().split()))  # Cut at 200 bytes.
    with RawPeer(None, _answers(200, page)) as peer:
        with pytest.raises(teacher.TeacherError, match="GET metadata.*not JSON: <html>"):
            teacher.connect(peer.url, retry=ONE_TRY)


@pytest.mark.parametrize("outputs", [[[0.5, 0.5], [1.0]], [[{"p": 1.0}] * 10] * 2,
                                     {"probabilities": [["a"] * 10] * 2}],
                         ids=["ragged", "nested", "strings"])
def test_a_rest_answer_that_is_no_numeric_array_is_a_tfkd_error(outputs, metadata_answer,
                                                                fashion):
    # Before the fix: ValueError/TypeError from numpy ("setting an array element with a sequence").
    body = json.dumps({"outputs": outputs}).encode()
    with RawPeer(metadata_answer, _answers(200, body)) as peer, \
            teacher.connect(peer.url, retry=ONE_TRY) as t:
        with pytest.raises(teacher.TeacherError,
                           match="output 'probabilities' is not an array of numbers"):
            t.soft_labels(fashion.x_test[:2])


@pytest.mark.parametrize("status", [300, 308])
def test_a_rest_redirect_is_reported_with_its_location(status):
    # Before the fix: "GET metadata failed with INTERNAL: HTTP 300: " (no Location).
    where = "https://teacher.example.com/v1/models/teacher/metadata"
    with RawPeer(None, _answers(status, b"", {"Location": where})) as peer:
        with pytest.raises(teacher.TeacherError, match=f"HTTP {status}: redirected to {where}"):
            teacher.connect(peer.url)
    assert len(peer.requests) == 1  # Not retried.


def test_a_rest_client_error_is_reported_with_the_servers_text():
    # Before the fix: "HTTP 400: bad  input:\n  shape" (the text's line breaks in the message);
    # a 400 must not read as a redirect.
    body = json.dumps({"error": "bad  input:\n  shape"}).encode()
    with RawPeer(None, _answers(400, body, {"Location": "/elsewhere"})) as peer:
        with pytest.raises(teacher.TeacherError,
                           match=r"INVALID_ARGUMENT: HTTP 400: bad input: shape$"):
            teacher.connect(peer.url)
    assert len(peer.requests) == 1


def test_a_rest_peer_that_hangs_up_unanswered_is_retried(fashion):
    # Held before the fix too: a restart is not a protocol mismatch (it stays retried).
    fast = client_lib.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
    with RawPeer(None, lambda peer, conn: None) as peer:  # Reads the request, closes.
        with pytest.raises(teacher.TeacherError,
                           match="UNAVAILABLE: RemoteDisconnected.*after 3 attempts"):
            teacher.connect(peer.url, retry=fast)
    assert len(peer.requests) == 3


def test_https_to_a_plaintext_rest_port_fails_once_naming_the_mismatch(rest_server,
                                                                       every_log_level):
    # Before the fix: "TLS: WRONG_VERSION_NUMBER (after 10 attempts)", 9 retries logged.
    url = f"https://127.0.0.1:{rest_server.rest_api_port}"
    with pytest.raises(teacher.TeacherError, match="answers in plaintext.*use http://"):
        teacher.connect(url)
    assert _retries_logged(every_log_level) == 0


def test_http_to_a_grpc_port_fails_once_naming_the_mismatch(rest_server, every_log_level):
    # Before the fix: "BadStatusLine: \x00\x00\x18\x04..." (raw bytes) after 10 attempts.
    with pytest.raises(teacher.TeacherError, match="speaks HTTP/2 .*gRPC") as e:
        teacher.connect(f"http://{rest_server.target}")
    assert "\\x00" not in str(e.value) and "\x00" not in str(e.value)
    assert _retries_logged(every_log_level) == 0


@pytest.mark.parametrize("first_bytes,cause", [
    (b"\x15\x03\x01\x00\x02\x02\x46", "speaks TLS.*use https://"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "does not answer HTTP/1.x")], ids=["tls", "other"])
def test_http_to_a_port_of_another_protocol_fails_once(first_bytes, cause, every_log_level):
    # Before the fix: "BadStatusLine: ..." with the peer's raw bytes, after 10 attempts.
    with RawPeer(None, lambda peer, conn: peer.send(conn, first_bytes)) as peer:
        with pytest.raises(teacher.TeacherError, match=cause) as e:
            teacher.connect(peer.url)
    assert "\\x15" not in str(e.value) and "SSH-2.0" not in str(e.value)
    assert len(peer.requests) == 1 and _retries_logged(every_log_level) == 0


def _own_address() -> str:
    """This machine's non-loopback IPv4 address (the route's source; nothing is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    return address


def test_a_bearer_token_over_http_to_another_host_is_warned_once(metadata_answer, monkeypatch,
                                                                 every_log_level):
    # Before the fix: no warning.
    monkeypatch.setenv("TFKD_TEST_TOKEN", "s3cret")
    with RawPeer(metadata_answer, _answers(200, _outputs(1)), host=_own_address()) as peer:
        for _ in range(2):
            teacher.connect(peer.url, auth_token_env="TFKD_TEST_TOKEN").close()
        teacher.connect(peer.url).close()  # No token: nothing to warn of.
    warnings = [r.getMessage() for r in every_log_level.records
                if r.levelno == logging.WARNING and "plain http://" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "authorization" in warnings[0] and "s3cret" not in every_log_level.text
    with RawPeer(metadata_answer, _answers(200, _outputs(1))) as peer:  # Loopback: no warning.
        teacher.connect(peer.url, auth_token_env="TFKD_TEST_TOKEN").close()
        port = peer.url.rsplit(":", 1)[1]
        teacher.connect(f"http://localhost:{port}", auth_token_env="TFKD_TEST_TOKEN").close()
    assert sum("plain http://" in r.getMessage() for r in every_log_level.records) == 1
    # A host name other than localhost is taken as another machine (it is not resolved).
    if socket.gethostname().lower() == "localhost":
        return
    with RawPeer(metadata_answer, _answers(200, _outputs(1)), host="0.0.0.0") as peer:
        port = peer.url.rsplit(":", 1)[1]
        url = f"http://{socket.gethostname()}:{port}"
        teacher.connect(url, auth_token_env="TFKD_TEST_TOKEN").close()
    assert sum("plain http://" in r.getMessage() for r in every_log_level.records) == 2


def test_a_finished_rest_call_leaves_no_deadline_timer_behind(metadata_answer, fashion):
    # Each exchange's deadline is a timer thread (new with the fix); one left running per request
    # (60 s each) would pile up over a run.
    with RawPeer(metadata_answer, _answers(200, _outputs(2))) as peer, \
            teacher.connect(peer.url) as t:
        for _ in range(3):
            t.soft_labels(fashion.x_test[:2] * np.float32(0.5 + _ / 4))
    deadline = time.monotonic() + 10
    while any(th.name == transports.rest.DEADLINE_THREAD for th in threading.enumerate()):
        assert time.monotonic() < deadline, "deadline timers still running 10 s after the calls"
        time.sleep(0.02)  # The poll interval of a loop bounded by the deadline.


# --------------------------------------------------------------------------- Settings


@pytest.mark.parametrize("field,value", [
    ("timeout_s", 0), ("timeout_s", -1.0), ("timeout_s", math.nan), ("timeout_s", math.inf),
    ("timeout_s", "3"), ("timeout_s", True), ("connect_timeout_s", -5), ("connect_timeout_s", 0),
    ("max_request_bytes", 0), ("max_request_bytes", 64 * 1024),
    ("max_request_bytes", 1e6), ("max_request_bytes", True)])
def test_serving_config_refuses_timeouts_and_request_sizes_out_of_range(field, value):
    # Before the fix: validate() passed (timeout_s=0, -1, connect_timeout_s=-5,
    # max_request_bytes=0 ...).
    with pytest.raises(errors.ConfigError, match=f"^{field}="):
        client_lib.ServingConfig(target="127.0.0.1:1", **{field: value}).validate()
    with pytest.raises(errors.ConfigError, match=f"^{field}="):
        teacher.TeacherConfig(target="127.0.0.1:1", **{field: value}).validate()


def test_serving_config_takes_the_smallest_settings_in_range():
    # Before the fix: AttributeError (no REQUEST_OVERHEAD_BYTES); the floors were not there.
    client_lib.ServingConfig(target="127.0.0.1:1", timeout_s=0.001, connect_timeout_s=0.001,
                             max_request_bytes=64 * 1024 + 1).validate()
    assert client_lib.REQUEST_OVERHEAD_BYTES == 64 * 1024


def test_a_zero_teacher_timeout_is_refused_before_anything_is_charged(server, fashion, tmp_path):
    # Before the fix: DID NOT RAISE ConfigError (the client connected with timeout_s=0; the issue
    # saw 500 queries charged for 50 images).
    account = teacher.QueryAccount(str(tmp_path))
    with pytest.raises(errors.ConfigError, match="timeout_s=0"):
        teacher.connect(server.target, account=account, timeout_s=0)
    assert teacher.QueryAccount(str(tmp_path)).total == 0


# --------------------------------------------------------------------------- int8 teachers

STEP = 1 / 256


def _quantized_row(total_steps: int, k: int = 10) -> np.ndarray:
    """One row of k multiples of 1/256 whose sum is total_steps / 256."""
    row = np.full(k, total_steps // k, np.int64)
    row[: total_steps % k] += 1
    return (row * STEP).astype(np.float32)[None]


@pytest.mark.parametrize("k,most", [(10, 10), (100, 100), (200, 128)])
def test_an_int8_teachers_quantized_probabilities_are_taken_and_renormalised(k, most):
    # Before the fix: "not probabilities (min 0.09375, row sums in [0.9609, 0.9609]); are they
    # logits?"
    for off in (-most, most, 0, -1, 1):  # K steps of 1/256 off 1 (at most 0.5): taken.
        row = _quantized_row(256 + off, k)
        soft = teacher.to_soft_labels(row, "probabilities", k)
        np.testing.assert_allclose(soft.sum(1), 1, atol=1e-6)
        np.testing.assert_allclose(soft, row / row.sum(), atol=1e-7)
    for off in (-most - 1, most + 1):  # Beyond what rounding to 1/256 can take away or add.
        with pytest.raises(teacher.TeacherError, match="not probabilities"):
            teacher.to_soft_labels(_quantized_row(256 + off, k), "probabilities", k)


def test_float_probabilities_and_logits_are_still_checked_as_before():
    # Held before the fix too: the int8 allowance must not widen what a float teacher may answer.
    p = np.full((1, 10), 0.1, np.float32)
    teacher.to_soft_labels(p * 1.0009, "probabilities", 10)  # Float rounding: taken.
    for bad in (p * 1.0015, p * 0.9985):  # Not on the 1/256 grid: the float tolerance holds.
        with pytest.raises(teacher.TeacherError, match="not probabilities"):
            teacher.to_soft_labels(bad, "probabilities", 10)
    for below, taken in ((-0.5e-6, True), (-1.5e-6, False)):  # Negative beyond 1e-6: refused.
        row = p.copy()
        row[0, :2] = below, 0.1 + 0.1 - below
        if taken:
            assert teacher.to_soft_labels(row, "probabilities", 10)[0, 0] == 0  # Clipped.
            continue
        with pytest.raises(teacher.TeacherError, match="not probabilities"):
            teacher.to_soft_labels(row, "probabilities", 10)
    logits = np.array([[-2.0, 1.0, 3.0] + [0.0] * 7], np.float32)
    with pytest.raises(teacher.TeacherError, match="are they logits"):
        teacher.to_soft_labels(logits, "probabilities", 10)
    grid_logits = np.array([[-1 / 256, 1.0 + 1 / 256] + [0.0] * 8], np.float32)  # On the grid.
    with pytest.raises(teacher.TeacherError, match="are they logits"):
        teacher.to_soft_labels(grid_logits, "probabilities", 10)


@pytest.fixture(scope="module")
def int8_teacher_base(fashion, tmp_path_factory):
    """tfkd's own int8 student (LeNet-5-half, trained briefly on 1,000 real images) exported as
    a servable version: (its base path, the float Keras model it was made from)."""
    from tfkd import export
    from tfkd import student as student_lib

    images, labels = fashion.x_train[:1000], fashion.y_train[:1000]
    config = student_lib.StudentConfig(epochs=2, mixup_alpha=0, rotation_degrees=0,
                                       shift_fraction=0).resolved()
    model, _ = student_lib.train_student(images, np.eye(10, dtype=np.float32)[labels], config,
                                      seed=0, verbose=0)
    version = export.export_classifier(model, str(tmp_path_factory.mktemp("int8") / "student"),
                                       variant="int8", calibration_images=images)
    return os.path.dirname(version), model


def test_tfkds_int8_student_served_is_taken_as_a_teacher(int8_teacher_base, fashion):
    # Before the fix: "not probabilities (min 0.01953, row sums in [0.9922, 1.008]); are they
    # logits?"
    base, model = int8_teacher_base
    images = fashion.x_test[:200]
    with serving.ModelServer([serving.ModelConfig("student", base)],
                             poll_seconds=0) as srv:
        with client_lib.connect(srv.target, "student") as student:
            raw = student.predict(student.encode(images))
        with teacher.connect(srv.target, "student") as t:
            soft = t.soft_labels(images)
    np.testing.assert_allclose(np.round(raw / STEP), raw / STEP, atol=1e-3)  # On the grid.
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(soft, raw / raw.sum(1, keepdims=True), atol=1e-6)
    # The float model's top-1 (an oracle outside the served path): int8 keeps it on most images.
    assert np.mean(soft.argmax(1) == model.predict(images, verbose=0).argmax(1)) > 0.9
