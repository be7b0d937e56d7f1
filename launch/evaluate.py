r"""Evaluates any served classifier, over gRPC or REST, on a dataset's test split; prints one JSON
line: model_name, version, dataset, examples (the test images evaluated), accuracy in [0, 1].

  python launch/evaluate.py --server=localhost:8500 --model_name=student --dataset=fashion_mnist
  python launch/evaluate.py --server=localhost:8500 --model_name=student --version_label=canary
  python launch/evaluate.py --server=http://localhost:8501 --model_name=student
"""

import json
import sys

try:  # First, before TensorFlow is imported: the console filter (launch/console.py).
    from . import console
except ImportError:  # A script (python launch/x.py) or a file loaded by path: the installed one.
    from tfkd_launch import console

console.start(__name__, "tfkd-evaluate")

from absl import app
from absl import flags
from absl import logging

from tfkd import data
from tfkd import errors
from tfkd.teacher import client

flags.DEFINE_string("server", None, "The TF Serving (or tfkd) server: host:port (its gRPC API) or "
                    "http(s)://host:port (its REST API).", required=True)
flags.DEFINE_string("model_name", "student", "Model name.")
flags.DEFINE_integer("version", None, "Version number; default: latest.")
flags.DEFINE_string("version_label", None, "Version label (stable, canary, ...).")
flags.DEFINE_string("signature", client.ServingConfig().signature_name, "Signature name.")
flags.DEFINE_string("output_key", None, "Output to read; default: probabilities.")
flags.DEFINE_enum("dataset", "fashion_mnist", list(data.SUPPORTED_DATASETS), "Dataset.")
flags.DEFINE_string("data_dir", None, "Directory of IDX files (optional).")
flags.DEFINE_integer("eval_examples", 0, "Test images, the first of the test split (0 or more "
                     "than it has: all of them; the output's examples is the count evaluated).")

FLAGS = flags.FLAGS
flags.register_validator("eval_examples", lambda v: v >= 0,
                         message="--eval_examples must be >= 0 (0: the whole test split)")
flags.register_validator("version", lambda v: v is None or v >= 1,
                         message="--version must be a positive integer (TF Serving versions)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        dataset = data.load_dataset(FLAGS.dataset, FLAGS.data_dir)
        n = min(FLAGS.eval_examples or len(dataset.x_test), len(dataset.x_test))
        if FLAGS.eval_examples > n:
            logging.warning("--eval_examples=%d: the test split has %d test images; all %d "
                            "evaluated, not the %d asked", FLAGS.eval_examples, n, n,
                            FLAGS.eval_examples)
        with client.connect(FLAGS.server, FLAGS.model_name, version=FLAGS.version,
                            version_label=FLAGS.version_label, signature_name=FLAGS.signature,
                            output_key=FLAGS.output_key) as model:  # gRPC, or REST for http(s)://.
            accuracy = client.accuracy(model, dataset.x_test[:n], dataset.y_test[:n])
            result = {"model_name": FLAGS.model_name, "version": model.signature.version,
                      "dataset": FLAGS.dataset, "examples": n, "accuracy": accuracy}
    except errors.TfkdError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result), flush=True)


def run():
    """The ``tfkd-evaluate`` command."""
    app.run(main)


if __name__ == "__main__":
    run()
