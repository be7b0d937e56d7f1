r"""Deploys a student version (a SavedModel, or the int8 LiteRT ``model.tflite``) as the next
version of a base path that a running server watches.

TF Serving (and tfkd's launch/serve.py) poll the base path and load the new version without a
restart; the copy is renamed into place, so the server never sees half a model. The version is
loaded first, as a server would load it (a SavedModel with its warmup requests, a LiteRT model
test-run); a damaged one, an export the served-agreement check set aside (``<n>.rejected``), or a
base path inside the version itself is refused with one line and nothing is copied.

  python launch/deploy.py --export_dir=/tmp/tfkd_fsbbt/export/student/1 \
      --model_base_path=/srv/models/student
"""

import sys

try:  # First, before TensorFlow is imported: the console filter (launch/console.py).
    from . import console
except ImportError:  # A script (python launch/x.py) or a file loaded by path: the installed one.
    from tfkd_launch import console

console.start(__name__, "tfkd-deploy")

from absl import app
from absl import flags

from tfkd import errors
from tfkd import export

flags.DEFINE_string("export_dir", None, "The version directory to deploy: a SavedModel, or an "
                    "int8 LiteRT version (model.tflite). Loaded first; a broken one is refused.",
                    required=True)
flags.DEFINE_string("model_base_path", None, "The served base path.", required=True)
flags.DEFINE_integer("version", None, "Version number; default: one more than the newest there.")
flags.DEFINE_bool("allow_older_version", False, "Accept a --version below the newest there (a "
                  "server serving the latest version would not serve it).")

FLAGS = flags.FLAGS
flags.register_validator("version", lambda v: v is None or v >= 1,
                         message="--version must be a positive integer (TF Serving versions)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        path = export.deploy_version(FLAGS.export_dir, FLAGS.model_base_path, FLAGS.version,
                                     allow_older=FLAGS.allow_older_version)
    except errors.TfkdError as e:
        sys.exit(f"error: {e}")
    print(f"deployed {FLAGS.export_dir} as {path}", flush=True)


def run():
    """The ``tfkd-deploy`` command."""
    app.run(main)


if __name__ == "__main__":
    run()
