"""Slow and crowded peers against tfkd-serve's REST API (issue 35): a client that drips its request
cannot hold what others need, every request has a total deadline, model names are percent-decoded,
and a burst of clients connecting at once is queued, not reset.

Every test runs tfkd's real server (ModelServer with its REST listener on a loopback port) serving
the real Fashion-MNIST teacher; the slow clients are raw sockets, as a hostile peer's would be."""

import concurrent.futures
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import slow_clients  # tests/ is on sys.path (conftest's directory).
from helpers.slow_clients import post_head

from tfkd import serving
from tfkd import teacher
from tfkd.serving import rest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 3.0  # rest_timeout_s of the server below: request line and headers within it.
RATE = 250_000  # rest_min_body_bytes_per_s: a 2 MB body gets 8 s more.
MAX_BODY = 4_000_000  # rest_max_body_bytes: tfkd's own client sends up to 4 MB.
ANNOUNCED = 2_000_000
DEADLINE_S = TIMEOUT_S + ANNOUNCED / RATE  # 11 s from the request's first byte.
SLACK_S = 3.0  # How late an answer may come on two loaded cores.


@pytest.fixture(scope="module")
def slow_guard(teacher_base):
    """tfkd's server with a 3 s REST timeout, 250 kB/s least body rate, 4 MB bodies at most."""
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0, rest_timeout_s=TIMEOUT_S,
                             rest_min_body_bytes_per_s=RATE, rest_max_body_bytes=MAX_BODY) as srv:
        yield srv


def _head(length: int = ANNOUNCED, path: str = "/v1/models/teacher:predict") -> bytes:
    return post_head(length, path)


class Dripper(slow_clients.Dripper):
    """:class:`helpers.slow_clients.Dripper`, giving up well after the deadlines here."""

    def __init__(self, address, head: bytes, drip: bytes = b" ", every_s: float = 0.5,
                 give_up_s: float = DEADLINE_S + 2 * SLACK_S):
        super().__init__(address, head, drip, every_s, give_up_s)


def _poll(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.02)  # The poll interval of a loop bounded by the deadline.


def _post(srv, body: bytes, path="/v1/models/teacher:predict"):
    """(status, JSON answer, time.monotonic() when sent) of one POST."""
    conn = http.client.HTTPConnection(srv.host, srv.rest_api_port, timeout=60)
    try:
        sent = time.monotonic()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), sent
    finally:
        conn.close()


def _predict_body(images) -> bytes:
    return json.dumps({"instances": images.tolist()}).encode()


def _budget_and_slots_free(srv) -> bool:
    http_server = srv._http
    return (http_server.body_bytes.used == 0
            and http_server.large_bodies._value == rest.MAX_LARGE_BODIES)


def test_eight_slow_rest_bodies_do_not_take_the_rest_api_down(slow_guard, fashion, tmp_path):
    """Issue 35 bad 3: connections that announce a 2 MB body and drip a byte every 0.5 s held every
    large-body slot (taken before the body was read, and every byte restarted the timeout); every
    normal request over 1 MB got 503, and each retry was charged. Now the body is read first,
    under the request's deadline, charged for the bytes that arrived: the drippers get 408 at the
    deadline, and normal requests of 0.3 to 3.4 MB are answered meanwhile, none retried."""
    # Before the fix: [200, 503, 503] (only the 0.34 MB body answered); 4 drippers held the 4
    # slots with no answer in 17 s, the other 4 got 503; tfkd's client (default retries) took
    # 28.5 s, charged 2,968 queries for 424 images (2,544 retried).
    srv = slow_guard
    bodies = [_predict_body(fashion.x_test[:n]) for n in (30, 212, 300)]  # 0.34, 2.4, 3.4 MB.
    # 8 x 2 MB announced: the 16 MB of bodies the server holds at once, were announcements charged.
    # They run in their own process, as a peer's would: their bytes do not wait on this one's.
    drip = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "helpers", "slow_clients.py"), srv.host,
         str(srv.rest_api_port), "8", str(ANNOUNCED), "0.5", str(DEADLINE_S + 2 * SLACK_S)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert drip.stdout.readline() == "ready\n"  # Every dripper has sent 2 bytes of its body.
        rest_url = f"http://{srv.host}:{srv.rest_api_port}"
        account = teacher.QueryAccount(str(tmp_path))
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as normal:
            raw = [normal.submit(_post, srv, body) for body in bodies]
            with teacher.connect(rest_url, account=account, max_request_bytes=4_000_000) as t:
                sent = time.monotonic()
                labels = t.soft_labels(fashion.x_test[:424])  # Two requests of 2.4 MB.
            answers = [f.result() for f in raw]
        drippers = json.loads(drip.stdout.readline())
    finally:
        drip.kill()
        drip.wait(timeout=30)
    assert [code for code, _, _ in answers] == [200] * 3, [a[1] for a in answers]
    assert [len(a["predictions"]) for _, a, _ in answers] == [30, 212, 300]
    assert labels.shape == (424, 10) and (account.total, account.retried) == (424, 0)
    # Each was sent while every dripper held on, early enough that waiting for a slot held by one
    # would have ended in 503.
    first_408 = min(d["answered_at"] or np.inf for d in drippers)
    assert max([sent] + [at for _, _, at in answers]) + TIMEOUT_S < first_408
    for d in drippers:
        reply = d["reply"]
        assert reply.startswith("HTTP/1.1 408"), reply[:300]
        assert reply.count("HTTP/1.1 ") == 1 and "Connection: close" in reply, reply
        assert d["closed"] is not None, reply[:300]
        assert "2,000,000 bytes announced" in reply and "deadline" in reply, reply
        assert DEADLINE_S <= d["seconds"] <= DEADLINE_S + SLACK_S, d["seconds"]
    _poll(lambda: _budget_and_slots_free(srv), "the body budget and slots given back")


def test_a_request_whose_headers_drip_gets_408_at_its_deadline(slow_guard):
    """The request line and headers must all arrive within rest_timeout_s of the first byte; one
    header byte every 0.5 s restarted the timeout forever."""
    # Before the fix: no answer in 17 s (the connection held open by one byte every 0.5 s).
    head = b"POST /v1/models/teacher:predict HTTP/1.1\r\nHost: x\r\nX-Slow: "
    d = Dripper((slow_guard.host, slow_guard.rest_api_port), head, drip=b"a").run()
    assert d.reply.startswith(b"HTTP/1.1 408") and d.closed is not None, d.reply[:300]
    assert d.reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in d.reply, d.reply
    assert b"headers: not received within 3 s" in d.reply, d.reply
    assert TIMEOUT_S <= d.seconds <= TIMEOUT_S + SLACK_S, d.seconds
    # Stopping mid request line is answered alike.
    d = Dripper((slow_guard.host, slow_guard.rest_api_port), b"POST /v1/mod", every_s=30).run()
    assert d.reply.startswith(b"HTTP/1.1 408") and d.closed is not None, d.reply[:300]
    assert TIMEOUT_S <= d.seconds <= TIMEOUT_S + SLACK_S, d.seconds
    # A connection that sends nothing is closed, unanswered, after the timeout.
    d = Dripper((slow_guard.host, slow_guard.rest_api_port), b"", every_s=30).run()
    assert d.reply == b"" and d.closed is not None and d.sent == 0
    assert TIMEOUT_S <= d.closed <= TIMEOUT_S + SLACK_S, d.closed


def test_a_body_that_stops_arriving_gets_408_after_the_idle_timeout(slow_guard):
    """A 2 MB body's deadline is 11 s away, but a client that sends nothing for rest_timeout_s is
    answered then: the deadline bounds a request, the idle timeout a silence."""
    # Before the fix: 408 after 3 s too (kept), but "2000000 bytes announced, not received within
    # 3 s": neither the bytes received nor which limit.
    d = Dripper((slow_guard.host, slow_guard.rest_api_port), _head() + b'{"instances": [',
                every_s=30).run()
    assert d.reply.startswith(b"HTTP/1.1 408") and d.closed is not None, d.reply[:300]
    assert b"15 received; not received within 3 s of the last byte" in d.reply, d.reply
    assert TIMEOUT_S <= d.seconds <= TIMEOUT_S + SLACK_S, d.seconds
    _poll(lambda: _budget_and_slots_free(slow_guard), "the body budget given back")


def test_a_body_cut_short_by_the_client_gets_400(slow_guard):
    """A body that ends (the client shut its side) before its Content-Length: 400, and its bytes
    given back."""
    # Before the fix: 400 too (kept); it failed on the byte budget, which did not exist.
    with socket.create_connection((slow_guard.host, slow_guard.rest_api_port), timeout=30) as s:
        s.sendall(_head(100) + b'{"instances"')
        s.shutdown(socket.SHUT_WR)  # The client is done sending: 12 of 100 bytes.
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert b"100 bytes announced, 12 received" in reply and b"Connection: close" in reply, reply
    _poll(lambda: _budget_and_slots_free(slow_guard), "the body budget given back")


def test_by_default_a_body_gets_its_size_at_64_kib_per_s(teacher_base):
    """rest_min_body_bytes_per_s defaults to 65,536: a 128 KiB body announced and dripped is
    answered 408 at rest_timeout_s + 2 s."""
    # Before the fix: no answer in 17 s (each byte restarted the 1 s timeout).
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0, rest_timeout_s=1.0) as srv:
        d = Dripper((srv.host, srv.rest_api_port), _head(2 * 65536) + b"{", every_s=0.25).run()
    assert d.reply.startswith(b"HTTP/1.1 408") and b"past the request's deadline" in d.reply
    assert b"at 65,536 bytes/s" in d.reply, d.reply
    assert 3.0 <= d.seconds <= 3.0 + SLACK_S, d.seconds


def test_bodies_in_memory_share_a_byte_budget_charged_as_bytes_arrive(slow_guard, fashion):
    """At most MAX_LARGE_BODIES x rest_max_body_bytes of request bodies are held at once, counted
    as they arrive; a body that would pass it gets 503 (retryable), one that fits is answered."""
    # Before the fix: AttributeError (no budget; only slots, taken for the announced size).
    budget = slow_guard._http.body_bytes
    assert budget.capacity == rest.MAX_LARGE_BODIES * MAX_BODY
    large, small = _predict_body(fashion.x_test[:150]), _predict_body(fashion.x_test[:2])
    held = budget.capacity - len(large)
    assert budget.take(held)  # As bodies being received by others would hold it.
    try:
        code, answer, _ = _post(slow_guard, large)  # Fits exactly.
        assert code == 200 and len(answer["predictions"]) == 150, answer
        _poll(lambda: budget.used == held, "the body's bytes given back")
        assert budget.take(1)
        code, answer, _ = _post(slow_guard, large)  # One byte more than is left.
        assert code == 503 and "request bodies are being received" in answer["error"], answer
        assert f"{budget.capacity:,} bytes" in answer["error"], answer
        _poll(lambda: budget.used == held + 1, "the refused body's bytes given back")
        code, answer, _ = _post(slow_guard, small)  # Still room for a small one.
        assert code == 200 and len(answer["predictions"]) == 2, answer
        _poll(lambda: budget.used == held + 1, "the bodies' bytes given back")
    finally:
        budget.give(held + 1)
    code, answer, _ = _post(slow_guard, large)
    assert code == 200 and len(answer["predictions"]) == 150, answer
    _poll(lambda: budget.used == 0, "the body's bytes given back")


def test_a_keep_alive_connection_serves_requests_one_after_another(slow_guard, fashion):
    """Each request on a kept-alive connection gets its own deadline and exactly its own body, also
    when the client sends the next request before the answer (HTTP/1.1 pipelining)."""
    # Passed before the fix too: it holds the deadline reader to what the socket's file did.
    bodies = [_predict_body(fashion.x_test[:n]) for n in (3, 5, 7)]
    handlers = _request_threads()
    conn = http.client.HTTPConnection(slow_guard.host, slow_guard.rest_api_port, timeout=30)
    try:
        for n, body in zip((3, 5, 7), bodies):
            conn.request("POST", "/v1/models/teacher:predict", body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") != "close"
            assert len(json.loads(response.read())["predictions"]) == n
    finally:
        conn.close()
    _poll(lambda: _request_threads() <= handlers, "the connection's thread ended")
    # A model the server does not know (404) keeps the connection as well.
    bodies.insert(1, bodies[0])
    pipelined = b"".join(_head(len(body), path) + body for body, path in zip(bodies, [
        "/v1/models/teacher:predict", "/v1/models/nobody:predict", "/v1/models/teacher:predict",
        "/v1/models/teacher:predict"]))
    with socket.create_connection((slow_guard.host, slow_guard.rest_api_port), timeout=30) as sock:
        sock.sendall(pipelined + b"GET /v1/models/teacher HTTP/1.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    answers = []
    while reply:
        head, _, rest_ = reply.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append((head.split(b" ")[1], json.loads(rest_[:length])))
        reply = rest_[length:]
    assert [code for code, _ in answers] == [b"200", b"404", b"200", b"200", b"200"], answers
    assert [len(answers[i][1]["predictions"]) for i in (0, 2, 3)] == [3, 5, 7]


def test_the_least_body_rate_must_be_positive():
    # Before the fix: TypeError (no such setting).
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=f"rest_min_body_bytes_per_s={bad}: expected > 0"):
            serving.ServerConfig(rest_min_body_bytes_per_s=bad).validate()


def test_tfkd_serve_takes_the_rest_deadline_flags(teacher_base):
    """--rest_timeout_s and --rest_min_body_bytes_per_s set the REST deadline: 1 s + 2 MB at
    1 MB/s is 3 s (the defaults would give 30 s + 31 s)."""
    # Before the fix: tfkd-serve exited (FATAL Flags parsing error: Unknown command line flag).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rest_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch", "serve.py"), "--port=0",
         f"--rest_api_port={rest_port}", "--model_name=teacher",
         f"--model_base_path={teacher_base}", "--rest_timeout_s=1",
         "--rest_min_body_bytes_per_s=1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # Blocks until the server prints its address (or exits).
        assert f"REST on 127.0.0.1:{rest_port}" in line, line
        d = Dripper(("127.0.0.1", rest_port), _head() + b"{", every_s=0.25).run()
        assert d.reply.startswith(b"HTTP/1.1 408"), d.reply[:300]
        assert 3.0 <= d.seconds <= 3.0 + SLACK_S, d.seconds
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def oddly_named(teacher_base):
    """The teacher served as "my teacher" and "modèle" (label "stäble" -> version 1)."""
    with serving.ModelServer([serving.ModelConfig("my teacher", teacher_base),
                              serving.ModelConfig("modèle", teacher_base,
                                                  version_labels={"stäble": 1})],
                             poll_seconds=0, rest_api_port=0) as srv:
        yield srv


@pytest.mark.parametrize("name", ["my teacher", "modèle"])
def test_a_model_named_with_spaces_or_accents_is_reached_by_tfkds_rest_client(
        oddly_named, fashion, name):
    # Before the fix: ServingClientError: HTTP 404: Servable not found for request: Latest(my%20teacher)
    images = fashion.x_test[:6]
    with teacher.connect(oddly_named.target, name) as over_grpc:
        expected = over_grpc.soft_labels(images)
    url = f"http://{oddly_named.host}:{oddly_named.rest_api_port}"
    with teacher.connect(url, name) as over_rest:
        np.testing.assert_allclose(over_rest.soft_labels(images), expected, atol=1e-6, rtol=0)
    assert oddly_named.metrics.exposition()[0].decode().count(f'model_name="{name}"') >= 1


def test_raw_percent_encoded_and_utf8_paths_name_the_model(oddly_named, fashion):
    # Before the fix: 404 "Servable not found for request: Latest(my%20teacher)".
    body = _predict_body(fashion.x_test[:2])
    code, answer, _ = _post(oddly_named, body, "/v1/models/my%20teacher:predict")
    assert code == 200 and len(answer["predictions"]) == 2, answer
    code, answer, _ = _post(oddly_named, body, "/v1/models/mod%C3%A8le/labels/st%C3%A4ble:predict")
    assert code == 200 and len(answer["predictions"]) == 2, answer
    code, answer, _ = _post(oddly_named, body, "/v1/models/my+teacher:predict")  # + is a plus.
    assert code == 404 and "my+teacher" in answer["error"], answer
    # Raw UTF-8 in the request line (curl sends what it is given) is read as UTF-8 too.
    with socket.create_connection((oddly_named.host, oddly_named.rest_api_port), timeout=30) as s:
        s.sendall("GET /v1/models/modèle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                  .encode("utf-8"))
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status, _, payload = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), reply[:300]
    assert json.loads(payload)["model_version_status"][0]["version"] == "1"


def test_thirty_two_clients_connecting_at_once_all_get_answers(slow_guard):
    """The REST listener's backlog was 5: of 32 clients connecting at once, the kernel dropped the
    connections past it (reset, or here their SYN resent after the kernel's 1 s retransmission
    timeout). Each connection's own TCP counters (TCP_INFO) say whether its SYN was resent."""
    # Before the fix: 32 of 32 answered 200, but 25 of 32 connections had resent their SYN
    # (tcpi_total_retrans == 1, connect took 1.03 s); at 128 clients, 3+ got no answer in 30 s.
    start = threading.Barrier(32)

    def status(_):
        start.wait(timeout=30)
        try:
            with socket.create_connection((slow_guard.host, slow_guard.rest_api_port),
                                          timeout=30) as sock:
                # struct tcp_info's tcpi_total_retrans (linux/tcp.h): segments resent, SYN included.
                resent = struct.unpack_from("I", sock.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_INFO, 104), 100)[0]
                sock.sendall(b"GET /v1/models/teacher HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
        except OSError as e:  # ConnectionResetError included.
            return repr(e), None, None
        head, _, payload = reply.partition(b"\r\n\r\n")
        return head.split(b" ")[1].decode(), resent, json.loads(payload)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(status, range(32)))
    assert [code for code, _, _ in answers] == ["200"] * 32, answers
    assert all(a["model_version_status"][0]["state"] == "AVAILABLE" for _, _, a in answers)
    resent = [n for _, n, _ in answers if n]
    assert not resent, f"{len(resent)} of 32 connections resent their SYN (dropped at the backlog)"


def test_a_client_that_leaves_before_its_answer_is_let_go_quietly(slow_guard, fashion, capfd,
                                                                    every_log_level):
    """A client gone before its answer was logged as an ERROR and answered 500, and
    socketserver printed a traceback; now nothing is logged above DEBUG and the server goes on."""
    # Before the fix: ERROR "REST POST /v1/models/teacher:predict: BrokenPipeError" and a traceback.
    body = _predict_body(fashion.x_test[:300])
    handlers = _request_threads()
    with socket.create_connection((slow_guard.host, slow_guard.rest_api_port), timeout=30) as s:
        s.sendall(_head(len(body)) + body)
        # Closed with a reset (linger 0), as a client killed mid-request.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _poll(lambda: _request_threads() <= handlers, "the server done with the client that left")
    code, answer, _ = _post(slow_guard, _predict_body(fashion.x_test[:2]))
    assert code == 200 and len(answer["predictions"]) == 2
    assert not [r for r in every_log_level.records if r.levelname in ("ERROR", "WARNING")
                and "REST" in r.getMessage()], every_log_level.text
    assert "Traceback" not in capfd.readouterr().err


def _request_threads() -> int:
    """The threads of this process answering an HTTP connection."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())
