r"""Serves SavedModels over TF Serving's gRPC API (tfkd's stand-in for tensorflow_model_server).

Flags are named as tensorflow_model_server's:

  python launch/serve.py --port=8500 --model_name=teacher --model_base_path=/tmp/models/teacher
  python launch/serve.py --port=8500 --model_config_file=serving/models.config
"""

import _common  # noqa: F401
from absl import app
from absl import flags
from absl import logging

from tfkd import serving

flags.DEFINE_integer("port", 8500, "gRPC port (0: any free port).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; loopback unless told otherwise "
                    "(0.0.0.0 for all interfaces).")
flags.DEFINE_string("model_name", "default", "Model name, with --model_base_path.")
flags.DEFINE_string("model_base_path", "", "Base path holding numeric version directories.")
flags.DEFINE_string("model_config_file", "", "A ModelServerConfig text proto (models.config); "
                    "replaces --model_name/--model_base_path.")
flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "How often to look for new versions; 0: "
                   "never.")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.model_config_file and FLAGS.model_base_path:
        raise app.UsageError("Give --model_config_file or --model_base_path, not both.")
    if FLAGS.model_config_file:
        models = serving.parse_model_config_file(FLAGS.model_config_file)
    elif FLAGS.model_base_path:
        models = [serving.ModelConfig(FLAGS.model_name, FLAGS.model_base_path)]
    else:
        raise app.UsageError("Give --model_base_path (with --model_name) or --model_config_file.")
    server = serving.ModelServer(models, host=FLAGS.host, port=FLAGS.port,
                                 poll_seconds=FLAGS.file_system_poll_wait_seconds)
    server.start()
    print(f"Serving {[m.name for m in models]} on {server.target}", flush=True)
    logging.info("Press Ctrl-C to stop.")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    app.run(main)
