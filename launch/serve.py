r"""Serves SavedModels over TF Serving's gRPC API (tfkd's stand-in for tensorflow_model_server).

Flags are named as tensorflow_model_server's:

  python launch/serve.py --port=8500 --model_name=teacher --model_base_path=/tmp/models/teacher
  python launch/serve.py --port=8500 --model_config_file=serving/models.config
  python launch/serve.py --port=8500 --rest_api_port=8501 --model_config_file=serving/models.config \
      --enable_batching --batching_parameters_file=serving/batching_parameters.txt \
      --monitoring_config_file=serving/monitoring.config
"""

import os
import re
import sys

try:  # First, before TensorFlow is imported: the console filter (launch/console.py).
    from . import console
except ImportError:  # A script (python launch/x.py) or a file loaded by path: the installed one.
    from tfkd_launch import console

console.start(__name__, "tfkd-serve")

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from tfkd import errors
from tfkd import fs
from tfkd import serving

_SERVER = serving.ServerConfig()  # The library's defaults; port and REST port are TF Serving's.

flags.DEFINE_integer("port", 8500, "gRPC port (0: any free port).")
flags.DEFINE_integer("rest_api_port", 0, "REST API port; 0: no REST API (as tensorflow_model_server).")
flags.DEFINE_string("host", _SERVER.host, "Address to bind; loopback unless told otherwise "
                    "(0.0.0.0 for all interfaces).")
flags.DEFINE_string("model_name", "default", "Model name, with --model_base_path.")
flags.DEFINE_string("model_base_path", "", "Base path holding numeric version directories.")
flags.DEFINE_string("model_config_file", "", "A ModelServerConfig text proto (models.config); "
                    "replaces --model_name/--model_base_path.")
flags.DEFINE_float("file_system_poll_wait_seconds", _SERVER.poll_seconds, "How often to look for "
                   "new versions; 0: never.")
flags.DEFINE_string("ssl_server_cert", None, "PEM server certificate: serve gRPC over TLS "
                    "(tensorflow_model_server takes these in --ssl_config_file).")
flags.DEFINE_string("ssl_server_key", None, "PEM server private key.")
flags.DEFINE_string("ssl_custom_ca", None, "PEM CA: require client certificates signed by it.")

flags.DEFINE_integer("max_tensor_bytes", serving.DEFAULT_MAX_TENSOR_BYTES, "tfkd only: the largest "
                     "decoded input tensor of a request; larger declared shapes, and content that "
                     "does not match the declared shape, are refused (INVALID_ARGUMENT).")
flags.DEFINE_integer("rest_max_body_bytes", serving.DEFAULT_REST_MAX_BODY_BYTES, "tfkd only: the "
                     "largest REST request body (HTTP 413 above it).")
flags.DEFINE_float("rest_timeout_s", _SERVER.rest_timeout_s, "tfkd only: seconds a REST "
                   "request's line and headers may take from its first byte, and the longest "
                   "silence of a client (HTTP 408 and the connection closed after).")
flags.DEFINE_float("rest_min_body_bytes_per_s", _SERVER.rest_min_body_bytes_per_s, "tfkd only: the "
                   "least average rate of a REST body: it must be in within --rest_timeout_s plus "
                   "its size at this rate (else HTTP 408), so a client that drips its body cannot "
                   "hold the server.")
flags.DEFINE_integer("grpc_max_threads", 4 * (os.cpu_count() or 1), "Threads answering gRPC "
                     "requests concurrently (at most this many requests wait in a batch at once).")
flags.DEFINE_bool("enable_batching", False, "Merge concurrent Predict requests into batched model "
                  "calls.")
flags.DEFINE_string("batching_parameters_file", "", "A BatchingParameters text proto (with "
                    "--enable_batching; empty: TF Serving's defaults).")
flags.DEFINE_bool("disable_reload_config", False, "tfkd only: refuse ModelService."
                  "HandleReloadConfigRequest (PERMISSION_DENIED). TF Serving, and tfkd by default, "
                  "let any client that reaches the gRPC port replace the served models.")
flags.DEFINE_string("monitoring_config_file", "", "A MonitoringConfig text proto: Prometheus metrics "
                    "on the REST port at its path.")

FLAGS = flags.FLAGS


def _read(flag: str):
    """The bytes of the file a flag names (None when unset).

    Raises:
      ConfigError: naming the flag and path when the file cannot be read.
    """
    path = getattr(FLAGS, flag)
    if not path:
        return None
    try:
        return fs.read_bytes(path)
    except (OSError, tf.errors.OpError) as e:  # What gfile raises for a file it cannot read.
        raise errors.ConfigError(f"--{flag}={path!r}: cannot read it "
                                 f"({getattr(e, 'strerror', None) or type(e).__name__})") from None


def _pem(flag: str):
    """A PEM file's bytes (None when unset). Raises ConfigError when it holds no PEM block."""
    data = _read(flag)
    if data is not None and b"-----BEGIN " not in data:
        raise errors.ConfigError(f"--{flag}={getattr(FLAGS, flag)!r}: not a PEM file (no "
                                 "'-----BEGIN' line)")
    return data


def _existing(flag: str) -> str:
    """The path a flag names. Raises ConfigError when no file is there."""
    path = getattr(FLAGS, flag)
    if not fs.exists(path) or fs.isdir(path):
        raise errors.ConfigError(f"--{flag}={path!r}: no such file")
    return path


def server_config_from_flags() -> serving.ServerConfig:
    """The server's config from the flags.

    Raises:
      ConfigError: a batching or monitoring file that does not parse, or is out of range.
    """
    batching = None
    if FLAGS.enable_batching:
        batching = (serving.BatchingParameters.from_file(_existing("batching_parameters_file"))
                    if FLAGS.batching_parameters_file else serving.BatchingParameters())
    elif FLAGS.batching_parameters_file:
        raise errors.ConfigError("--batching_parameters_file is read only with --enable_batching")
    monitoring = (serving.MonitoringConfig.from_file(_existing("monitoring_config_file"))
                  if FLAGS.monitoring_config_file else None)
    return serving.ServerConfig(
        host=FLAGS.host, port=FLAGS.port, rest_api_port=FLAGS.rest_api_port or None,
        poll_seconds=FLAGS.file_system_poll_wait_seconds, max_workers=FLAGS.grpc_max_threads,
        ssl_server_cert=_pem("ssl_server_cert"), ssl_server_key=_pem("ssl_server_key"),
        ssl_custom_ca=_pem("ssl_custom_ca"), max_tensor_bytes=FLAGS.max_tensor_bytes,
        rest_max_body_bytes=FLAGS.rest_max_body_bytes, rest_timeout_s=FLAGS.rest_timeout_s,
        rest_min_body_bytes_per_s=FLAGS.rest_min_body_bytes_per_s, batching=batching,
        monitoring=monitoring,
        allow_reload_config=not FLAGS.disable_reload_config)


SETTING_FLAGS = {"batching": "batching_parameters_file", "monitoring": "monitoring_config_file",
                 "poll_seconds": "file_system_poll_wait_seconds", "max_workers": "grpc_max_threads"}
""":class:`tfkd.serving.ServerConfig` settings whose flag has another name (TF Serving's); every other
setting a flag sets has the flag's name (``rest_api_port``, ``max_tensor_bytes``, ``ssl_server_cert``)."""


def with_flag_names(message: str) -> str:
    """A library message with each setting of :data:`SETTING_FLAGS` it names followed by its flag:
    ``batching: '/x': not a ...`` -> ``batching (--batching_parameters_file): '/x': not a ...``.
    A one-word setting (``batching``) counts only where it opens the message (``batching:``,
    ``monitoring:``), as the library names a setting it refuses."""
    for setting, flag in SETTING_FLAGS.items():
        pattern = rf"(?<![\w.-]){setting}(?![\w.])" if "_" in setting else rf"^{setting}(?=[:=])"
        message = re.sub(pattern, f"{setting} (--{flag})", message)
    return message


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.model_config_file and FLAGS.model_base_path:
        raise app.UsageError("Give --model_config_file or --model_base_path, not both.")
    if not (FLAGS.model_config_file or FLAGS.model_base_path):
        raise app.UsageError("Give --model_base_path (with --model_name) or --model_config_file.")
    try:
        models = ([serving.ModelConfig(FLAGS.model_name, FLAGS.model_base_path)]
                  if FLAGS.model_base_path else serving.parse_model_config_file(
                      _existing("model_config_file")))
        server = serving.ModelServer(models, server_config_from_flags())
    except errors.TfkdError as e:  # Every file a flag names is read here: one line, first.
        sys.exit(f"error: {with_flag_names(str(e))}")
    if FLAGS.model_base_path and not fs.isdir(FLAGS.model_base_path):
        sys.exit(f"error: --model_base_path={FLAGS.model_base_path!r}: no such directory")
    try:
        server.start()
    except errors.TfkdError as e:
        sys.exit(f"error: {with_flag_names(str(e))}")
    rest = f", REST on {server.config.host}:{server.rest_api_port}" if FLAGS.rest_api_port else ""
    print(f"Serving {[m.name for m in models]} on {server.target}{rest}", flush=True)
    logging.info("Press Ctrl-C to stop.")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


def run():
    """The ``tfkd-serve`` command."""
    app.run(main)


if __name__ == "__main__":
    run()
