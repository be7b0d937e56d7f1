"""Request batching as ``tensorflow_model_server --enable_batching`` does it: concurrent Predict
requests to the same servable and signature, with inputs of the same dtypes and per-example shapes,
are merged along the batch axis into one model call and its outputs split back.

The scheduler follows TF Serving's ``BasicBatchScheduler`` (``tensorflow/core/kernels/batching_util/
shared_batch_scheduler.h``) with its :class:`BatchingParameters`:

* a task (one request, ``n`` examples) joins the open batch of its queue; the batch closes when the
  next task would overflow ``max_batch_size``, or when full;
* ``num_batch_threads`` threads run batches: a thread takes a closed batch, or an open one whose
  first task waited ``batch_timeout_micros`` (0: at once when a thread is free, so requests that
  arrive while every thread is busy are merged);
* at most ``max_enqueued_batches`` batches wait per queue; a task beyond that is refused with
  UNAVAILABLE, and a task larger than ``max_batch_size`` with INVALID_ARGUMENT, as TF Serving does
  (no large-batch splitting).

Not implemented: ``allowed_batch_sizes`` and padding (the batch runs at its own size; tfkd's
SavedModels take any batch size), per-model queues sharing the threads fairly (the oldest ready
batch runs first).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import grpc
import numpy as np
from absl import logging
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2

from tfkd import fs
from tfkd.errors import ConfigError
from tfkd.errors import ServingError

_INT64 = ".google.protobuf.Int64Value"
# TF Serving's BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto),
# field names and numbers; built here because the pip package ships only the APIs' protos.
_BATCHING_FIELDS = (("max_batch_size", 1, _INT64), ("batch_timeout_micros", 2, _INT64),
                    ("max_enqueued_batches", 3, _INT64), ("num_batch_threads", 4, _INT64),
                    ("thread_pool_name", 5, ".google.protobuf.StringValue"),
                    ("allowed_batch_sizes", 6, None), ("pad_variable_length_inputs", 7, None),
                    ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
                    ("max_execution_batch_size", 9, _INT64))


def _batching_message_class():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="tfkd/serving/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=[wrappers.name])
    message = file.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in _BATCHING_FIELDS:
        if type_name:
            message.field.add(name=name, number=number, type=F.TYPE_MESSAGE, type_name=type_name,
                              label=F.LABEL_OPTIONAL)
        elif name == "allowed_batch_sizes":
            message.field.add(name=name, number=number, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
        else:
            message.field.add(name=name, number=number, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParametersProto = _batching_message_class()


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's batching parameters (its ``BatchingParameters`` text proto), with its defaults.

    Attributes:
      max_batch_size: the most examples in one model call (>= 1).
      batch_timeout_micros: how long, in microseconds, the first task of a batch may wait for
        others before the batch runs (>= 0).
      num_batch_threads: threads running batches concurrently (>= 1).
      max_enqueued_batches: batches that may wait per queue (>= 1); more tasks are refused.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 10

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameters: {name}={getattr(self, name)}, "
                                  "expected >= 1")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"batching parameters: batch_timeout_micros="
                              f"{self.batch_timeout_micros}, expected >= 0")

    @classmethod
    def from_text(cls, text: str, source: str = "batching parameters") -> "BatchingParameters":
        """Parses a ``BatchingParameters`` text proto (``max_batch_size { value: 128 }``...).

        Fields TF Serving knows and this server does not use (``allowed_batch_sizes``,
        ``pad_variable_length_inputs``, ``thread_pool_name``, ``enable_large_batch_splitting``,
        ``max_execution_batch_size``) are accepted and logged; an unknown field is an error, as in
        TF Serving.

        Raises:
          tfkd.errors.ConfigError: a malformed text proto (naming ``source``), or a value out of
            range.
        """
        proto = BatchingParametersProto()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as e:
            raise ConfigError(f"{source}: not a BatchingParameters text proto "
                              f"({' '.join(str(e).split())})") from None
        used = {f.name for f in dataclasses.fields(cls)}
        ignored = [f.name for f, _ in proto.ListFields() if f.name not in used]
        if ignored:
            logging.info("%s: %s read, not used by tfkd's server", source, ", ".join(ignored))
        values = {f.name: getattr(proto, f.name).value for f in dataclasses.fields(cls)
                  if proto.HasField(f.name)}
        params = cls(**values)
        params.validate()
        return params

    @classmethod
    def from_file(cls, path: str) -> "BatchingParameters":
        """:meth:`from_text` of the file at ``path`` (local or any ``tf.io.gfile`` scheme); its
        messages name the setting (:attr:`tfkd.serving.ServerConfig.batching`) and the path."""
        return cls.from_text(fs.read_text(path), f"batching: {path!r}")


@dataclasses.dataclass
class _Task:
    run: object  # feeds -> outputs (alias -> array [n, ...]); a batch runs its first task's.
    feeds: dict
    size: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: dict | None = None
    error: Exception | None = None


class _Queue:
    """The tasks of one (servable, signature, input layout): an open batch and closed ones."""

    def __init__(self, key: tuple):
        self.key = key
        self.open: list[_Task] = []
        self.open_size = 0
        self.opened_at = 0.0
        self.closed: collections.deque[tuple[float, list[_Task]]] = collections.deque()

    def close_open(self) -> None:
        if self.open:
            self.closed.append((self.opened_at, self.open))
            self.open, self.open_size = [], 0


class BatchScheduler:
    """Merges concurrent model calls into batches (see the module docstring).

    Args:
      params: the :class:`BatchingParameters`.
      on_batch: called after each model call with (queue key, examples in the batch).

    Attributes:
      calls: model calls made so far; examples: examples they carried (for tests and metrics).
    """

    def __init__(self, params: BatchingParameters, on_batch=None):
        params.validate()
        self.params = params
        self._on_batch = on_batch
        self.calls = 0
        self.examples = 0
        self._queues: dict[tuple, _Queue] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"tfkd-batch-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key: tuple, run, feeds: dict) -> dict:
        """Runs ``run(**merged feeds)`` for this request inside a batch; blocks until answered.

        Args:
          key: what must match for requests to merge (servable, signature, input dtypes and
            per-example shapes); the caller builds it.
          run: the model call, ``run(**feeds) -> {alias: array [n, ...]}``.
          feeds: alias -> numpy array [n, ...], the same n for every alias.

        Returns:
          alias -> numpy array [n, ...]: this request's rows of the batch's outputs.

        Raises:
          ServingError: INVALID_ARGUMENT for a request larger than ``max_batch_size`` or outputs
            without the batch axis; UNAVAILABLE when the queue is full or the server stops;
          whatever ``run`` raises, for every request of the batch.
        """
        sizes = {len(v) for v in feeds.values()}
        if len(sizes) != 1:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"batching: inputs of different batch sizes {sorted(sizes)}")
        task = _Task(run, feeds, sizes.pop())
        if task.size > self.params.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {task.size} is larger than maximum input batch size "
                               f"{self.params.max_batch_size}")
        with self._cond:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            queue = self._queues.setdefault(key, _Queue(key))
            if queue.open_size + task.size > self.params.max_batch_size:
                queue.close_open()
            if len(queue.closed) >= self.params.max_enqueued_batches:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted "
                                   "is full")
            if not queue.open:
                queue.opened_at = time.monotonic()
            queue.open.append(task)
            queue.open_size += task.size
            if queue.open_size == self.params.max_batch_size:
                queue.close_open()
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _next_batch(self):
        """(queue, tasks) of the batch to run now, the oldest ready one, or (None, seconds until
        an open batch times out; None: nothing waits). Holds the lock."""
        timeout = self.params.batch_timeout_micros / 1e6
        now, wait, best = time.monotonic(), None, None
        for queue in self._queues.values():
            if queue.closed:
                opened_at = queue.closed[0][0]
            elif queue.open and queue.opened_at + timeout <= now:
                opened_at = queue.opened_at
            else:
                if queue.open:
                    due = queue.opened_at + timeout - now
                    wait = due if wait is None else min(wait, due)
                continue
            if best is None or opened_at < best[0]:
                best = (opened_at, queue)
        if best is None:
            return None, wait
        queue = best[1]
        if not queue.closed:
            queue.close_open()
        return queue, queue.closed.popleft()[1]

    def _work(self):
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    queue, batch = self._next_batch()
                    if queue is not None:
                        break
                    self._cond.wait(batch)
            self._run_batch(queue, batch)

    def _run_batch(self, queue: _Queue, batch: list[_Task]) -> None:
        try:
            if len(batch) == 1:
                merged = batch[0].feeds
            else:
                merged = {k: np.concatenate([t.feeds[k] for t in batch]) for k in batch[0].feeds}
            outputs = batch[0].run(**merged)
            total = sum(t.size for t in batch)
            self.calls += 1
            self.examples += total
            if self._on_batch is not None:
                self._on_batch(queue.key, total)
            for alias, value in outputs.items():
                if np.ndim(value) == 0 or len(value) != total:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"batching: output {alias} has shape {list(np.shape(value))}, "
                                       f"expected the batch ({total}) on its first axis")
            start = 0
            for task in batch:
                task.outputs = {k: v[start:start + task.size] for k, v in outputs.items()}
                start += task.size
        except Exception as e:  # Every request of the batch gets the error.
            for task in batch:
                task.error = e
        finally:
            for task in batch:
                task.done.set()

    def stop(self) -> None:
        """Refuses new tasks, answers waiting ones UNAVAILABLE, and ends the threads."""
        with self._cond:
            self._stopped = True
            waiting = [t for q in self._queues.values()
                       for batch in [q.open, *(b for _, b in q.closed)] for t in batch]
            for queue in self._queues.values():
                queue.open, queue.open_size = [], 0
                queue.closed.clear()
            self._cond.notify_all()
        for task in waiting:
            task.error = ServingError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            task.done.set()
        for thread in self._threads:
            thread.join(timeout=10)
