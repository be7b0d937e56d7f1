r"""p50 and p99 latency over gRPC for batch sizes 1, 8, 64 and 256: teacher next to student.

Both models are served by one server in its own process (launch/serve.py with a models.config);
each request is one Predict through TeacherClient.predict_raw (no retries hit in a healthy run).

  python benchmarks/serving_latency.py --workdir=/tmp/tfkd_fsbbt     # after launch/distill.py
  python benchmarks/serving_latency.py                               # untrained LeNet-5 / -half
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfkd import export  # noqa: E402
from tfkd import teacher  # noqa: E402
from tfkd.student import models  # noqa: E402

flags.DEFINE_string("workdir", None, "A tfkd work dir (teacher/ and export/student/); default: "
                    "untrained LeNet-5 and LeNet-5-half exported to a temp dir.")
flags.DEFINE_list("batch_sizes", ["1", "8", "64", "256"], "Images per request.")
flags.DEFINE_integer("requests", 300, "Requests per cell (after 20 warm-up requests).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.workdir:
        bases = {"teacher": os.path.join(FLAGS.workdir, "teacher"),
                 "student": os.path.join(FLAGS.workdir, "export", "student")}
    else:
        root = tempfile.mkdtemp()
        bases = {"teacher": os.path.join(root, "teacher"), "student": os.path.join(root, "student")}
        export.export_classifier(models.build_model("lenet5", (28, 28, 1), 10), bases["teacher"])
        export.export_classifier(models.build_model("lenet5_half", (28, 28, 1), 10),
                                 bases["student"])
    config = os.path.join(tempfile.mkdtemp(), "models.config")
    with open(config, "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{n}" base_path: "{os.path.abspath(b)}" model_platform: '
            f'"tensorflow" }}\n' for n, b in bases.items()) + "}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, os.path.join(_REPO, "launch", "serve.py"),
                               f"--port={port}", f"--model_config_file={config}",
                               "--file_system_poll_wait_seconds=0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows = []
    try:
        server.stdout.readline()
        rng = np.random.default_rng(0)
        for batch in (int(b) for b in FLAGS.batch_sizes):
            images = rng.uniform(size=(batch, 28, 28, 1)).astype(np.float32)
            figures = {}
            for name in bases:
                with teacher.connect(f"127.0.0.1:{port}", name) as client:
                    encoded = client.encode(images)
                    for _ in range(20):
                        client.predict_raw(encoded)
                    times = []
                    for _ in range(FLAGS.requests):
                        start = time.perf_counter()
                        client.predict_raw(encoded)
                        times.append((time.perf_counter() - start) * 1000)
                figures[name] = (np.percentile(times, 50), np.percentile(times, 99))
            rows.append((batch, figures))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"models: {bases}  requests per cell: {FLAGS.requests}  cores: {os.cpu_count()}")
    print(f"{'batch':>5} {'teacher p50':>11} {'teacher p99':>11} {'student p50':>11} "
          f"{'student p99':>11} {'p50 ratio':>9}")
    for batch, f in rows:
        (tp50, tp99), (sp50, sp99) = f["teacher"], f["student"]
        print(f"{batch:>5} {tp50:>9.2f}ms {tp99:>9.2f}ms {sp50:>9.2f}ms {sp99:>9.2f}ms "
              f"{sp50 / tp50:>9.2f}")


if __name__ == "__main__":
    app.run(main)
