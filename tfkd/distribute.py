"""The `tf.distribute` strategy a run trains under (:func:`make_strategy`), the ``TF_CONFIG``
environment variable of a multi-worker cluster, checked (:func:`parse_tf_config`), and which
process of a cluster is its chief (:func:`is_chief`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tensorflow as tf

from tfkd import errors
from tfkd import startup_watchdog

STRATEGIES = ("mirrored", "multi_worker")
"""The kinds :func:`make_strategy` makes."""


def parse_tf_config(text: str | None) -> dict:
    """The ``TF_CONFIG`` environment variable, checked: JSON with ``cluster`` (task type -> list of
    ``host:port``) and ``task`` (``type``, ``index``) naming one of the cluster's tasks.

    Raises:
      tfkd.errors.ConfigError: one line naming ``TF_CONFIG`` and what is wrong (unset, not JSON, a
        task that is not in the cluster).
    """
    if not text:
        raise errors.ConfigError("strategy='multi_worker': the TF_CONFIG environment variable is "
                                 "not set (it names the cluster and this task)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise errors.ConfigError(f"TF_CONFIG: not JSON ({e.msg} at character {e.pos}): "
                                 f"{text[:80]!r}") from None
    cluster, task = (value.get("cluster"), value.get("task")) if isinstance(value, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise errors.ConfigError('TF_CONFIG: expected {"cluster": {type: [host:port, ...]}, '
                                 f'"task": {{"type": ..., "index": ...}}}}, got {text[:120]!r}')
    addresses = cluster.get(task.get("type"))
    index = task.get("index", 0)
    if not isinstance(addresses, list) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise errors.ConfigError(f"TF_CONFIG: task {task} is not one of the cluster's tasks "
                                 f"{ {k: len(v) for k, v in cluster.items() if isinstance(v, list)} }")
    return value


CLUSTER_STARTUP_TIMEOUT_S = 600.0
"""How long a MultiWorkerMirroredStrategy waits for every task of its cluster to start before the
process fails with one line naming the peers (TF itself waits forever, and its coordination
service takes SIGTERM as a preemption notice, so the wait does not end on SIGTERM either)."""


def make_strategy(kind: str = STRATEGIES[0], devices: list[str] | None = None,
                  startup_timeout_s: float = CLUSTER_STARTUP_TIMEOUT_S) -> tf.distribute.Strategy:
    """The training strategy.

    Args:
      kind: ``mirrored``: `tf.distribute.MirroredStrategy` over ``devices`` (default: all local
        GPUs; with one GPU or none, TensorFlow's default strategy: one replica on that device);
        ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy` from the ``TF_CONFIG``
        environment variable. A multi-worker strategy must be made at program start, before
        other TensorFlow work.
      startup_timeout_s: ``multi_worker`` only: if the cluster's other tasks have not all connected
        within this many seconds, a watchdog process (:mod:`tfkd.startup_watchdog`) writes one
        line naming them to stderr and kills this process (SIGKILL: TF's wait cannot be
        interrupted from inside).

    Raises:
      tfkd.errors.ConfigError: unknown kind, or ``multi_worker`` without a usable ``TF_CONFIG``.
    """
    if kind == "mirrored":
        if devices is None and len(tf.config.list_logical_devices("GPU")) <= 1:
            # One device: TensorFlow's default strategy (the same training, without the
            # distributed iterator and cross-device machinery a one-replica MirroredStrategy
            # still runs; benchmarks/engine_speed.py measures both).
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        tf_config = parse_tf_config(os.environ.get("TF_CONFIG"))
        peers = ", ".join(f"{t}:{i} at {a}" for t, addresses in tf_config["cluster"].items()
                          for i, a in enumerate(addresses)
                          if (t, i) != (tf_config["task"]["type"], tf_config["task"].get("index", 0)))

        message = (f"error: TF_CONFIG: the cluster did not start within {startup_timeout_s:g} s; "
                   f"waiting for {peers} (each task must run the same command with its own "
                   "TF_CONFIG)")
        # TF's wait holds the GIL and takes SIGTERM as a preemption notice: only another process
        # can end it. The watchdog writes the line to this process's stderr and SIGKILLs it; it
        # runs as a script in isolated mode (-I), so it imports neither tfkd nor TensorFlow.
        watchdog = subprocess.Popen(
            [sys.executable, "-I", startup_watchdog.__file__,
             str(os.getpid()), str(startup_timeout_s), message],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        finally:
            watchdog.kill()
            watchdog.wait()
    raise errors.ConfigError(f"strategy={kind!r}: expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
