r"""A run's exported variants (float32, float16, int8, ...: every registered format found under
``<workdir>/export/``) timed side by side in one process: in-process CPU latency of
``serving_default`` at batch 1 and 64, the variants' calls interleaved (one call of each, round
after round: :func:`tfkd.evaluation.cpu_latencies_ms`, as a run's report times them), so that a
change in the machine's load falls on all of them alike; several rounds, printed one by one, show
how far a flag of ``student_slower_than_float32`` stands from the machine's noise.

  python benchmarks/variant_latency.py --workdir=/tmp/tfkd_fsbbt     # after launch/distill.py

Prints, per batch size and round, each variant's median ms over the round's calls; then the
medians over all rounds with each variant's ratio to float32, and the lines the report's flag
(:func:`tfkd.report.slower_than_float32`) gives these medians.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import evaluation  # noqa: E402
from tfkd import export  # noqa: E402
from tfkd import report  # noqa: E402

flags.DEFINE_string("workdir", None, "A tfkd work dir whose export/ holds the run's variants.",
                    required=True)
flags.DEFINE_list("batch_sizes", ["1", "64"], "Images per call.")
flags.DEFINE_integer("rounds", 5, "Rounds per batch size.")
flags.DEFINE_integer("calls", 60, "Calls of each variant per round.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    dirs = {name: export.latest_version_dir(os.path.join(FLAGS.workdir, "export",
                                                         fmt.servable_name))
            for name, fmt in export.FORMATS.items()}
    dirs = {name: d for name, d in dirs.items() if d}
    signature = export.load_version(dirs["float32"]).signature_defs[export.SIGNATURE_KEY]
    shape = [d.size for d in signature.inputs[export.INPUT_KEY].tensor_shape.dim]
    x_test = data.load_dataset("fashion_mnist").x_test if shape[1:] == [28, 28, 1] else None
    rng = np.random.default_rng(0)
    images = (x_test[:max(map(int, FLAGS.batch_sizes))] if x_test is not None else
              rng.uniform(size=(max(map(int, FLAGS.batch_sizes)), *shape[1:])).astype(np.float32))
    print(f"work dir: {FLAGS.workdir}; variants: "
          + ", ".join(f"{n} ({d})" for n, d in dirs.items()))
    print(f"machine: {os.cpu_count()} CPU cores, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; load average at the start: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; {FLAGS.rounds} rounds x "
          f"{FLAGS.calls} interleaved calls per batch size; median ms")
    medians = {name: {} for name in dirs}
    for b in map(int, FLAGS.batch_sizes):
        rounds = []
        for r in range(FLAGS.rounds):  # Each round the run's own interleaved timing.
            rounds.append(evaluation.cpu_latencies_ms(dirs, images, (b,), FLAGS.calls))
            print(f"batch {b:>3} round {r}: " + "  ".join(
                f"{name} {latency[f'batch_{b}']:.3f}" for name, latency in rounds[-1].items()))
        for name in dirs:
            medians[name][f"batch_{b}"] = round(float(np.median(
                [one[name][f"batch_{b}"] for one in rounds])), 3)
    print("all rounds:")
    for name, latency in medians.items():
        print(f"  {name:<8} " + "  ".join(
            f"{k.replace('_', ' ')} {ms:.3f} ms ({ms / medians['float32'][k]:.2f}x float32)"
            for k, ms in latency.items()))
    flagged = report.slower_than_float32({n: {"cpu_latency_ms": m} for n, m in medians.items()})
    for line in flagged.values() or ["no variant slower than float32 at any batch size measured"]:
        print(line)


if __name__ == "__main__":
    app.run(main)
