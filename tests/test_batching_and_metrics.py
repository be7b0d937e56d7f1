"""Issue 14: tfkd's server honours the batching parameters and monitoring config it writes beside
an export (request batching, Prometheus metrics in TF Serving's names). Real server, real teacher,
real concurrent gRPC clients; nothing mocked."""

import json
import os
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import serving
from tfkd.serving import config as config_lib


def _request(images, name="teacher"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_concurrent_batch_1_requests_are_merged_with_identical_answers(fashion, teacher_base):
    """32 clients send one image each at the same moment; with a 200 ms batch timeout the model
    sees far fewer, larger calls, and each client gets the answer an unbatched call gives."""
    images = fashion.x_test[:32]
    expected = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    params = serving.BatchingParameters(max_batch_size=32, batch_timeout_micros=200_000,
                                        num_batch_threads=1, max_enqueued_batches=8)
    answers, errors = [None] * 32, []
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             max_workers=40, batching=params) as server:
        channel = grpc.insecure_channel(server.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(_request(images[:1]), timeout=60)  # Warm up: trace the signature once.
        calls_before = server.batcher.calls
        start = threading.Barrier(32)

        def client(i):
            try:
                start.wait(timeout=60)
                response = stub.Predict(_request(images[i:i + 1]), timeout=60)
                answers[i] = tf.make_ndarray(response.outputs["probabilities"])
            except Exception as e:  # Reported below, with the client's index.
                errors.append((i, e))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        calls = server.batcher.calls - calls_before
        # A request larger than max_batch_size is refused, as TF Serving refuses it.
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(_request(fashion.x_test[:33]), timeout=60)
        channel.close()
    assert not errors, errors
    assert calls < 8, f"{calls} model calls for 32 concurrent batch-1 requests"
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-6)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 33 is larger than maximum input batch size 32" in refused.value.details()


def _samples(text: str, name: str) -> dict:
    """{frozenset(labels.items()): value} of one metric's samples named ``name``."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out


def test_metrics_endpoint_counts_requests_per_model_and_version(fashion, teacher_base, tmp_path):
    """The server reads the monitoring.config and batching_parameters.txt that tfkd writes beside
    an export; after 3 gRPC predicts, 1 REST predict and 1 request for an unknown model, a scrape
    of the configured path finds those counts and latencies in TF Serving's metric names."""
    paths = config_lib.write_serving_configs(str(tmp_path), teacher_base, teacher_base, stable=1)
    monitoring = serving.MonitoringConfig.from_file(paths["monitoring.config"])
    batching = serving.BatchingParameters.from_file(paths["batching_parameters.txt"])
    assert monitoring.prometheus_enable and batching.max_batch_size == 256
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0, monitoring=monitoring, batching=batching) as server:
        channel = grpc.insecure_channel(server.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(3):
            stub.Predict(_request(fashion.x_test[i:i + 2]), timeout=60)
        with pytest.raises(grpc.RpcError):
            stub.Predict(_request(fashion.x_test[:1], name="nope"), timeout=60)
        channel.close()
        rest = f"http://127.0.0.1:{server.rest_api_port}"
        body = json.dumps({"instances": fashion.x_test[:1].tolist()}).encode()
        with urllib.request.urlopen(urllib.request.Request(
                f"{rest}/v1/models/teacher:predict", data=body,
                headers={"Content-Type": "application/json"}), timeout=60) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(f"{rest}{monitoring.prometheus_path}", timeout=60) as scrape:
            text = scrape.read().decode()
            assert scrape.headers["Content-Type"].startswith("text/plain")
    counts = _samples(text, ":tensorflow:serving:request_count")
    ok = frozenset({"model_name": "teacher", "model_version": "1", "status": "OK"}.items())
    missing = frozenset({"model_name": "_unserved", "model_version": "",  # Not served.
                         "status": "NOT_FOUND"}.items())
    assert counts == {ok: 4.0, missing: 1.0}
    latency = _samples(text, ":tensorflow:serving:request_latency_count")
    key = {"model_name": "teacher", "model_version": "1", "API": "Predict"}
    assert latency[frozenset({**key, "entrypoint": "GRPC"}.items())] == 3.0
    assert latency[frozenset({**key, "entrypoint": "REST"}.items())] == 1.0
    batches = _samples(text, ":tensorflow:serving:batching:processed_batch_size_v2")
    assert sum(int(dict(k)["batch_size"]) * v for k, v in batches.items()) == 3 * 2 + 1
    sums = _samples(text, ":tensorflow:serving:request_latency_sum")
    assert sums[frozenset({**key, "entrypoint": "GRPC"}.items())] > 0  # Microseconds.


def test_bad_batching_and_monitoring_configs_are_refused_by_name(teacher_base):
    with pytest.raises(ValueError, match="batching_parameters.txt: not a BatchingParameters"):
        serving.BatchingParameters.from_text("max_batch_size: 3", "batching_parameters.txt")
    with pytest.raises(ValueError, match="num_batch_threads=0, expected >= 1"):
        serving.BatchingParameters.from_text("num_batch_threads { value: 0 }")
    with pytest.raises(ValueError, match="path='metrics', expected a path starting with '/'"):
        serving.MonitoringConfig.from_text('prometheus_config { enable: true path: "metrics" }')
    with pytest.raises(ValueError, match="set rest_api_port to a port number$"):  # Not 0: none.
        serving.ModelServer([serving.ModelConfig("teacher", teacher_base)],
                            monitoring=serving.MonitoringConfig(prometheus_enable=True))
