r"""Throughput of tfkd's server with and without request batching: 32 concurrent clients, each
sending batch-1 Predict requests back to back (one in flight per client) for a fixed time.

The server runs in its own process (launch/serve.py, as deployed), serving an untrained model (speed
does not depend on the weights): LeNet-5 on 28x28x1 (the Fashion-MNIST teacher, about 0.4 MFLOP an
image: the request's own handling dominates) and ResNet-20 on 32x32x3 (the CIFAR student, about
40 MFLOP an image: the model call dominates), with ``--grpc_max_threads=64`` so
that all 32 requests can be in the server at once. Settings: no batching; the batching parameters
tfkd writes beside an export (``serving/batching_parameters.txt``: max batch 256, timeout 2 ms,
4 threads); the same with a 0 timeout. The model calls and their sizes are read from the server's
Prometheus metrics (``:tensorflow:serving:batching:processed_batch_size_v2``).

  python benchmarks/serving_batching.py > benchmarks/reports/serving_batching.txt
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from tfkd import export  # noqa: E402
from tfkd.serving import config as config_lib  # noqa: E402
from tfkd.student import models  # noqa: E402

flags.DEFINE_integer("clients", 32, "Concurrent clients, one request in flight each.")
flags.DEFINE_float("seconds", 15.0, "Measured time per setting (after 3 s of warm-up).")
FLAGS = flags.FLAGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(target: str, clients: int, seconds: float, shape: tuple) -> tuple[int, list[float]]:
    """Keeps ``clients`` batch-1 requests in flight for ``seconds``; (requests answered, latencies
    in ms)."""
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "model"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(
        np.random.default_rng(0).uniform(size=(1, *shape)).astype(np.float32)))
    lock, finished = threading.Lock(), threading.Event()
    state = {"active": clients, "latencies": [], "errors": []}
    stop_at = time.perf_counter() + seconds

    def launch():
        start = time.perf_counter()
        future = stub.Predict.future(request, timeout=60)
        future.add_done_callback(lambda f: done(f, start))

    def done(future, start):
        now = time.perf_counter()
        with lock:
            if future.exception() is not None:
                state["errors"].append(future.exception())
            else:
                state["latencies"].append(1000 * (now - start))
            if now >= stop_at or state["errors"]:
                state["active"] -= 1
                if state["active"] == 0:
                    finished.set()
                return
        launch()

    for _ in range(clients):
        launch()
    finished.wait(timeout=seconds + 120)
    channel.close()
    if state["errors"]:
        raise RuntimeError(f"requests failed: {state['errors'][0]}")
    return len(state["latencies"]), state["latencies"]


def batch_calls(rest_port: int) -> tuple[int, int]:
    """(model calls, examples) from the server's batch-size metric."""
    url = f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    calls = examples = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == ":tensorflow:serving:batching:processed_batch_size_v2":
                calls += int(sample.value)
                examples += int(sample.value) * int(sample.labels["batch_size"])
    return calls, examples


def run_setting(base: str, shape: tuple, configs: dict, batching: str | None) -> dict:
    port, rest_port = _free_port(), _free_port()
    cmd = [sys.executable, os.path.join(_REPO, "launch", "serve.py"), f"--port={port}",
           f"--rest_api_port={rest_port}", "--model_name=model", f"--model_base_path={base}",
           "--file_system_poll_wait_seconds=0", "--grpc_max_threads=64",
           f"--monitoring_config_file={configs['monitoring.config']}"]
    if batching is not None:
        cmd += ["--enable_batching", f"--batching_parameters_file={batching}"]
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        if not server.stdout.readline().startswith("Serving"):  # Ready, or it died.
            log.seek(0)
            raise RuntimeError(f"the server did not start: {log.read()[-2000:]}")
        target = f"127.0.0.1:{port}"
        drive(target, FLAGS.clients, 3.0, shape)  # Warm-up (tracing, thread pools).
        calls0, examples0 = batch_calls(rest_port) if batching else (0, 0)
        start = time.perf_counter()
        answered, latencies = drive(target, FLAGS.clients, FLAGS.seconds, shape)
        elapsed = time.perf_counter() - start
        calls, examples = batch_calls(rest_port) if batching else (answered, answered)
        calls, examples = calls - calls0, examples - examples0
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"requests_per_s": answered / elapsed, "p50_ms": np.percentile(latencies, 50),
            "p99_ms": np.percentile(latencies, 99), "calls": calls,
            "mean_batch": examples / max(1, calls)}


MODELS = {"LeNet-5, 28x28x1": ("lenet5", (28, 28, 1)), "ResNet-20, 32x32x3": ("resnet20", (32, 32, 3))}


def main(argv):
    del argv
    root = tempfile.mkdtemp()
    configs = config_lib.write_serving_configs(os.path.join(root, "serving"), None,
                                               os.path.join(root, "unused"), stable=1)
    zero = os.path.join(root, "batching_zero_timeout.txt")
    with open(configs["batching_parameters.txt"]) as f:
        text = f.read().replace("batch_timeout_micros { value: 2000 }",
                                "batch_timeout_micros { value: 0 }")
    with open(zero, "w") as f:
        f.write(text)
    settings = {"no batching": None,
                "batching, tfkd's parameters (2 ms)": configs["batching_parameters.txt"],
                "batching, 0 ms timeout": zero}
    print(f"Untrained models, {FLAGS.clients} concurrent clients sending batch-1 Predict requests, "
          f"{FLAGS.seconds:g} s per setting, {os.cpu_count()} cores (clients and server on the "
          "same cores); server: launch/serve.py --grpc_max_threads=64")
    print(f"{'model':<19} {'setting':<36} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'model calls':>11} {'mean batch':>10}")
    for label, (architecture, shape) in MODELS.items():
        base = os.path.join(root, architecture)
        export.export_classifier(models.build_model(architecture, shape, 10), base)
        rows = {}
        for name, batching in settings.items():
            rows[name] = r = run_setting(base, shape, configs, batching)
            print(f"{label:<19} {name:<36} {r['requests_per_s']:>10.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>7.2f} {r['calls']:>11} {r['mean_batch']:>10.1f}", flush=True)
        plain = rows["no batching"]["requests_per_s"]
        for name, r in rows.items():
            if name != "no batching":
                print(f"{label}, {name}: {r['requests_per_s'] / plain:.2f}x the throughput without "
                      "batching", flush=True)


if __name__ == "__main__":
    app.run(main)
