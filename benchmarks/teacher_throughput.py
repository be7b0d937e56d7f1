r"""Images per second labelled through gRPC on loopback, next to the same SavedModel in-process.

The server runs in its own process (launch/serve.py, as tensorflow_model_server would), with its
request batching off and on (``--enable_batching``, one batch thread: concurrent requests merged
into one model call that has every core, max batch 8,192, no timeout); the client is tfkd's
TeacherClient (encoding, requests as ``tensor_content``, contract checks, soft labels), with
requests of exactly `batch` images and 1 to 8 requests in flight. The in-process figure calls the
SavedModel's serving_default signature directly on the same batches, in the same run. Prints a
table and the best ratio per batch size and server setting.

  python benchmarks/teacher_throughput.py
  python benchmarks/teacher_throughput.py --model_base_path=/tmp/tfkd_fsbbt/teacher --images=20000
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfkd import export  # noqa: E402
from tfkd import teacher  # noqa: E402
from tfkd.student import models  # noqa: E402

flags.DEFINE_string("model_base_path", None, "Teacher base path; default: an untrained LeNet-5 "
                    "(28x28x1, 10 classes) exported to a temp dir (throughput does not depend on "
                    "the weights).")
flags.DEFINE_list("batch_sizes", ["64", "128", "256", "512", "1024"], "Images per request.")
flags.DEFINE_list("in_flight", ["1", "2", "4", "8"], "Requests in flight.")
flags.DEFINE_integer("images", 10240, "Images labelled per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per cell; the best is kept.")
flags.DEFINE_list("batching", ["off", "on"], "Server request batching settings to measure.")
BATCHING = "max_batch_size { value: 8192 }\nbatch_timeout_micros { value: 0 }\n" \
           "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 64 }\n"
FLAGS = flags.FLAGS


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv):
    del argv
    base = FLAGS.model_base_path
    if base is None:
        base = os.path.join(tempfile.mkdtemp(), "teacher")
        export.export_classifier(models.build_model("lenet5", (28, 28, 1), 10), base)
    version_dir = export.latest_version_dir(base)
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    (_, spec), = [signature.structured_input_signature]
    input_key, input_spec = next(iter(spec.items()))
    shape = input_spec.shape.as_list()[1:]
    images = np.random.default_rng(0).uniform(size=(FLAGS.images, *shape)).astype(np.float32)

    local = {}
    for batch in (int(b) for b in FLAGS.batch_sizes):
        def in_process():
            for s in range(0, len(images), batch):
                signature(**{input_key: tf.constant(images[s:s + batch])})["probabilities"].numpy()

        in_process()  # Warm-up (tracing, allocation).
        local[batch] = len(images) / _best(in_process, FLAGS.repeats)
    rows = []
    for batching in FLAGS.batching:
        rows += _measure_server(base, images, shape, local, batching == "on")

    print(f"teacher: {version_dir}  images per measurement: {len(images)}  cores: {os.cpu_count()}")
    print(f"{'batching':>8} {'batch':>6} {'in flight':>9} {'gRPC img/s':>12} "
          f"{'in-process img/s':>17} {'ratio':>6}")
    for batching, batch, k, remote, here, ratio in rows:
        print(f"{batching:>8} {batch:>6} {k:>9} {remote:>12,.0f} {here:>17,.0f} {ratio:>6.2f}")
    best = {}
    for batching, batch, k, remote, here, ratio in rows:
        best[(batching, batch)] = max(best.get((batching, batch), (0, 0)), (ratio, k))
    print("best ratio per batch: " + ", ".join(f"{b} (batching {m}): {r:.2f} ({k} in flight)"
                                                for (m, b), (r, k) in best.items()))


def _measure_server(base, images, shape, local, batching: bool) -> list[tuple]:
    """(batching, batch, in flight, gRPC img/s, in-process img/s, ratio) rows for one server."""
    port = _free_port()
    command = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "launch", "serve.py"), f"--port={port}",
        "--model_name=teacher", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0"]
    if batching:
        path = os.path.join(tempfile.mkdtemp(), "batching.txt")
        with open(path, "w") as f:
            f.write(BATCHING)
        command += ["--enable_batching", f"--batching_parameters_file={path}"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows = []
    try:
        server.stdout.readline()
        per_image = int(np.prod(shape)) * 4
        for batch, here in local.items():
            for k in (int(x) for x in FLAGS.in_flight):
                with teacher.connect(f"127.0.0.1:{port}", "teacher", max_in_flight=k,
                                     max_request_bytes=64 * 1024 + batch * per_image) as c:
                    assert c.images_per_request == batch
                    c.soft_labels(images[:batch * k])  # Warm-up.
                    remote = len(images) / _best(lambda: c.soft_labels(images), FLAGS.repeats)
                rows.append(("on" if batching else "off", batch, k, remote, here, remote / here))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


if __name__ == "__main__":
    app.run(main)
