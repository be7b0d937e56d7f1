"""The black-box teacher client against a real server on loopback."""

import socket
import time

import grpc
import numpy as np
import pytest

from tfkd import teacher
from tfkd.teacher import client as client_lib


def test_metadata_read_from_server(client):
    sig = client.signature
    assert (sig.model_name, sig.version, sig.signature_name) == ("teacher", 1, "serving_default")
    assert sig.input_key == "images" and sig.input_dtype == np.float32
    assert sig.input_shape == (-1, 28, 28, 1) and sig.input_scale == 1.0
    assert (sig.output_key, sig.output_kind, sig.num_classes) == ("probabilities", "probabilities", 10)


def test_soft_labels_and_query_count(client, fashion):
    labels = client.soft_labels(fashion.x_test[:300])
    assert labels.shape == (300, 10) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(labels.argmax(1) == fashion.y_test[:300]) > 0.6
    assert client.queries == 300 and client.retries == 0  # Each image asked once (not how many requests).
    # No image: nothing sent, and still [0, K] (mutation sample: probe gave [0, 0]).
    for ask in (client.soft_labels, client.probe):
        empty = ask(fashion.x_test[:0])
        assert empty.shape == (0, 10) and empty.dtype == np.float32
    assert client.queries == 300


def test_batch_over_4mb_is_split(client, fashion):
    images = fashion.x_train[:2000]  # 2000 * 28 * 28 * 4 bytes = 6.3 MB > gRPC's 4 MB default.
    assert images.nbytes > client_lib.GRPC_DEFAULT_MAX_MESSAGE_BYTES
    labels = client.soft_labels(images)
    assert labels.shape == (2000, 10)
    # Not the split's request count (a heuristic; test_requests_in_flight_at_once measures each
    # request on the server): split, each image sent once, each request under the limit.
    assert client.requests >= 2 and client.queries == 2000 and client.retries == 0
    assert client.images_per_request * 28 * 28 * 4 < client_lib.GRPC_DEFAULT_MAX_MESSAGE_BYTES
    np.testing.assert_allclose(labels[:5], client.soft_labels(images[:5]), atol=1e-6)


def test_unknown_model_is_not_found(server):
    with pytest.raises(teacher.TeacherError, match="Servable not found for request") as e:
        teacher.connect(server.target, "no_such_model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_unreachable_teacher_fails_fast_naming_the_address():
    with socket.socket() as s:  # A port nobody listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(teacher.TeacherError, match=f"127.0.0.1:{port}: unreachable"):
        teacher.connect(f"127.0.0.1:{port}", "teacher", connect_timeout_s=2)
    assert time.monotonic() - start < 10


def test_wrong_image_shape_is_named(client):
    with pytest.raises(ValueError, match=r"images: expected shape \[-1, 28, 28, 1\]"):
        client.soft_labels(np.zeros((3, 32, 32, 1), np.float32))


def test_ledger_answers_are_never_asked_twice(server, fashion, tmp_path):
    images = fashion.x_test[:100]
    ledger = teacher.QueryLedger(str(tmp_path))
    with teacher.connect(server.target, "teacher", ledger=ledger) as c:
        first = c.soft_labels(images[:60])
        both = c.soft_labels(images)
        assert c.queries == 100 and c.ledger_hits == 60
    np.testing.assert_allclose(both[:60], first)
    # A new process (a new ledger read from disk) sends nothing for known images.
    with teacher.connect(server.target, "teacher",
                               ledger=teacher.QueryLedger(str(tmp_path))) as c:
        again = c.soft_labels(images)
        assert c.queries == 0 and c.ledger_hits == 100
    np.testing.assert_allclose(again, both)


def test_to_soft_labels_kinds_and_contract():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    np.testing.assert_allclose(teacher.to_soft_labels(logits, "logits", 2)[0], [0.5, 0.5])
    np.testing.assert_array_equal(teacher.to_soft_labels(np.array([1, 0]), "classes", 2),
                                  [[0, 1], [1, 0]])
    with pytest.raises(teacher.TeacherError, match="class id out of range"):
        teacher.to_soft_labels(np.array([2]), "classes", 2)
    with pytest.raises(teacher.TeacherError, match="not probabilities"):
        teacher.to_soft_labels(np.array([[0.9, 0.9]]), "probabilities", 2, "t", "probs")
    with pytest.raises(teacher.TeacherError, match="teacher 't', output 'probs'.*non-finite"):
        teacher.to_soft_labels(np.array([[np.nan, 1.0]]), "probabilities", 2, "t", "probs")
    with pytest.raises(teacher.TeacherError, match=r"expected shape \[batch, 3\]"):
        teacher.to_soft_labels(np.ones((2, 2)) / 2, "probabilities", 3)


def test_a_small_request_limit_splits_into_whole_images_per_request(server, fashion):
    # Found by issue 35's mutation sample: images_per_request as a true division (a float step)
    # survived, since every test's step was the in-flight split, an int. 10 images fit here.
    limit = client_lib.REQUEST_OVERHEAD_BYTES + 10 * 28 * 28 * 4 + 100
    with teacher.connect(server.target, max_request_bytes=limit, max_in_flight=1) as small:
        assert small.images_per_request == 10 and isinstance(small.images_per_request, int)
        labels = small.soft_labels(fashion.x_test[:25])
        # At most 10 whole images a request (under the limit): 25 images take at least 3 requests.
        assert labels.shape == (25, 10) and small.requests >= 3 and small.queries == 25
