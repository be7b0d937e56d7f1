"""The black-box teacher: a TF Serving gRPC client, soft labels, the query ledger and budget.

The distillation code reaches the teacher only through :class:`TeacherClient`. It speaks the TF
Serving API (``PredictionService.GetModelMetadata`` and ``Predict``) and so works unchanged against
``tensorflow_model_server`` and tfkd's own :mod:`tfkd.serving`.

* Any signature: the input and output names, dtypes and shapes come from ``GetModelMetadata`` and can
  be overridden (:class:`TeacherConfig`): float32 or uint8 input with a scale (the value that pixel
  intensity 1.0 maps to), images with or without a channel axis, an output read as probabilities,
  logits or class ids (a top-1 "decision-based" API). Every kind becomes soft labels float32
  [batch, K]: probabilities as they are, softmax of logits, one-hot of class ids.
* Robust: requests under gRPC's 4 MB default, several in flight, per-request deadlines, retries
  with exponential backoff and full jitter on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED;
  other errors stop the run with the server's message. TLS channels and per-call metadata (an
  ``authorization`` header read from a file or an environment variable, never printed or logged).
* Paid for once: every image sent is charged to a :class:`QueryAccount` before it is sent (persisted
  beside the ledger: the work dir's whole life, every process, retries and evaluation included) and
  the query budget caps that total; with a :class:`QueryLedger` every answer is persisted as soon as
  it arrives, keyed by a content hash of the image and the teacher's identity, and never asked again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import os
import random
import threading
import time
import uuid

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
OUTPUT_KINDS = ("probabilities", "logits", "classes")
INPUT_DTYPES = ("float32", "uint8")
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.RESOURCE_EXHAUSTED)


class TeacherError(RuntimeError):
    """The teacher could not be reached, answered an error, or broke its contract.

    The message names the teacher, its address and what was wrong; ``code`` is the gRPC status code
    when the server answered one.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class QueryBudgetExceeded(TeacherError):
    """Sending the next images would exceed the query budget; nothing beyond it was sent."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (sleep ~ U(0, min(max, initial * multiplier^attempt))).

    Attributes:
      max_attempts: attempts per request, the first included.
      initial_backoff_s, max_backoff_s, multiplier: the backoff envelope, in seconds.
    """

    max_attempts: int = 10
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff_s,
                                    self.initial_backoff_s * self.multiplier ** attempt))


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """How to reach and read a served teacher. Field names are :class:`TeacherClient`'s arguments.

    Attributes:
      target: ``host:port``; "" lets :func:`tfkd.pipeline.run_fsbbt` train and serve one locally.
      model_name, version, version_label, signature_name: the model spec (version and version_label
        are exclusive; neither: the server's latest).
      input_key, input_dtype ("float32" | "uint8"), input_scale (the value pixel intensity 1.0 maps to:
        1 or 255): default from the metadata (scale 255 for uint8, else 1).
      output_key, output_kind (one of ``OUTPUT_KINDS``): default ``probabilities`` if present, else the
        only output; kind ``classes`` for an integer output of rank 1, else ``probabilities``.
      class_map: ``class_map[t]`` is the data's class for the teacher's class t (a teacher whose
        classes are another order or a subset of the data's); answers are mapped into the data's
        classes (probability of teacher classes sharing a data class summed). None: the same
        classes and order.
      label_only: expose only the teacher's argmax (one-hot), to emulate a decision-based API on a
        teacher that returns probabilities.
      timeout_s: per-request deadline; connect_timeout_s: how long to wait for the server at start.
      max_in_flight: Predict requests in flight at once.
      max_request_bytes: requests are split to stay under this.
      retry: the :class:`RetryPolicy` for UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED.
      tls_ca_file, tls_cert_file, tls_key_file, tls_server_name: a TLS channel (CA bundle, optional
        client certificate and key, optional name override) instead of an insecure one.
      auth_token_file, auth_token_env: where to read a secret sent as ``auth_header: auth_scheme
        <token>`` on every call (never printed or logged).
      query_budget: at most this many images in the :class:`QueryAccount`'s total (None: no cap);
        with no account given to :meth:`connect`, an in-memory account of this client alone.
    """

    target: str = ""
    model_name: str = "teacher"
    version: int | None = None
    version_label: str | None = None
    signature_name: str = "serving_default"
    input_key: str | None = None
    input_dtype: str | None = None
    input_scale: float | None = None
    output_key: str | None = None
    output_kind: str | None = None
    class_map: tuple[int, ...] | None = None
    label_only: bool = False
    timeout_s: float = 60.0
    connect_timeout_s: float = 30.0
    max_in_flight: int = 4
    max_request_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES
    retry: RetryPolicy = RetryPolicy()
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    auth_token_file: str | None = None
    auth_token_env: str | None = None
    auth_header: str = "authorization"
    auth_scheme: str = "Bearer"
    query_budget: int | None = None

    def connect(self, ledger: "QueryLedger | None" = None,
                account: "QueryAccount | None" = None) -> "TeacherClient":
        """A :class:`TeacherClient` with these settings, answers in ``ledger``, queries charged to
        ``account`` (whose budget must then be ``query_budget``)."""
        return TeacherClient(**dataclasses.asdict(self) | {"retry": self.retry}, ledger=ledger,
                             account=account)


@dataclasses.dataclass(frozen=True)
class TeacherSignature:
    """The teacher's contract as read (metadata plus overrides).

    Attributes:
      model_name, version, signature_name: the servable answering (version as resolved by the server).
      input_key; input_dtype: numpy dtype; input_shape: with -1 for unknown dimensions, batch first
        (rank 4: NHWC; rank 3: no channel axis); input_scale: value of pixel intensity 1.0.
      output_key; output_kind: one of ``OUTPUT_KINDS``; num_classes: K (None if the metadata does not
        say, for class ids).
    """

    model_name: str
    version: int
    signature_name: str
    input_key: str
    input_dtype: np.dtype
    input_shape: tuple
    input_scale: float
    output_key: str
    output_kind: str
    num_classes: int | None

    @property
    def identity(self) -> str:
        """The key under which answers are stored in the ledger."""
        return (f"{self.model_name}/{self.version}/{self.signature_name}/{self.input_key}:"
                f"{np.dtype(self.input_dtype).name}*{self.input_scale:g}->{self.output_key}:"
                f"{self.output_kind}")


def _shape(info) -> tuple:
    if info.tensor_shape.unknown_rank:
        return ()
    return tuple(int(d.size) for d in info.tensor_shape.dim)


def to_soft_labels(raw: np.ndarray, output_kind: str, num_classes: int | None,
                   teacher: str = "teacher", output_key: str = "output") -> np.ndarray:
    """Turns a teacher answer into soft labels, checking the contract.

    Args:
      raw: probabilities float [b, K] (rows sum to 1), logits float [b, K], or class ids int [b]
        (or [b, 1]).
      output_kind: one of ``OUTPUT_KINDS``.
      num_classes: K; required for class ids.
      teacher, output_key: named in error messages.

    Returns:
      float32 [b, K] rows summing to 1 (softmax of logits; one-hot of class ids).

    Raises:
      TeacherError: wrong shape, non-finite values, probabilities off the simplex, or a class id out
        of range.
    """
    where = f"teacher {teacher!r}, output {output_key!r} ({output_kind})"
    if output_kind not in OUTPUT_KINDS:
        raise ValueError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
    raw = np.asarray(raw)
    if output_kind == "classes":
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
            raise TeacherError(f"{where}: expected integer class ids [batch], got {raw.dtype} "
                               f"{list(raw.shape)}")
        if num_classes is None:
            raise TeacherError(f"{where}: the number of classes is unknown; give num_classes")
        if raw.size and (raw.min() < 0 or raw.max() >= num_classes):
            raise TeacherError(f"{where}: class id out of range [0, {num_classes}): min {raw.min()}, "
                               f"max {raw.max()}")
        return np.eye(num_classes, dtype=np.float32)[raw]
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise TeacherError(f"{where}: expected numbers, got {raw.dtype} values (is it the right "
                           "output? --teacher_output_key)")
    raw = raw.astype(np.float32)
    if raw.ndim != 2 or (num_classes is not None and raw.shape[1] != num_classes):
        raise TeacherError(f"{where}: expected shape [batch, {num_classes}], got {list(raw.shape)}")
    if not np.all(np.isfinite(raw)):
        raise TeacherError(f"{where}: {int(np.sum(~np.isfinite(raw)))} non-finite values (NaN/inf)")
    if output_kind == "logits":
        return tf.nn.softmax(raw, axis=-1).numpy()
    sums = raw.sum(axis=1)
    if raw.size and (raw.min() < -1e-6 or np.max(np.abs(sums - 1.0)) > 1e-3):
        raise TeacherError(f"{where}: not probabilities (min {raw.min():.4g}, row sums in "
                           f"[{sums.min():.4g}, {sums.max():.4g}]); are they logits? "
                           "(--teacher_output=logits)")
    clipped = np.clip(raw, 0.0, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


class QueryAccount:
    """Every image sent to the teacher over a work dir's life, and the query budget on that total.

    The one place where queries are counted and the budget is enforced. Each Predict attempt is
    charged *before* it is sent (write-ahead), so images in flight when a process dies, retries and
    the queries of earlier processes on the same work dir all count: the account says how many
    images the teacher may have seen, not how many answers were stored. With a ``directory`` the
    charges are appended to ``<directory>/queries_sent.log`` (one line per attempt:
    ``stage kind images pid unix_time``, kind ``first`` or ``retry``; ``O_APPEND`` writes, so a
    killed process loses none it made); without one the account lives in memory.

    Args:
      directory: where the log lives (tfkd puts it in the work dir's ``ledger/``), or None.
      budget: at most this many images in the account's total (None: no cap), earlier processes'
        queries included.

    Raises:
      ValueError: a negative budget. (A damaged log line is skipped with one warning naming the
        file and line: it cannot be counted.)
    """

    FILE = "queries_sent.log"

    def __init__(self, directory: str | None = None, budget: int | None = None):
        if budget is not None and budget < 0:
            raise ValueError(f"query_budget={budget}: expected >= 0")
        self.budget = budget
        self.path = None if directory is None else os.path.join(directory, self.FILE)
        self._lock = threading.Lock()
        self.by_stage: dict[str, int] = {}  # Work dir's life, retries included.
        self.retried = 0  # Images re-sent by retries, work dir's life.
        self.sent_by_stage: dict[str, int] = {}  # This process.
        self.damaged_lines: list[int] = []  # Log lines that could not be read.
        if self.path is None:
            return
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path):
            damaged = []
            with open(self.path, errors="replace") as f:
                for number, line in enumerate(f, 1):
                    fields = line.split()
                    if not fields:
                        continue
                    try:
                        stage, kind, n = fields[0], fields[1], int(fields[2])
                        if n < 0 or kind not in ("first", "retry"):
                            raise ValueError
                    except (IndexError, ValueError):
                        damaged.append(number)
                        continue
                    self.by_stage[stage] = self.by_stage.get(stage, 0) + n
                    self.retried += n if kind == "retry" else 0
            if damaged:  # A damaged line cannot be counted; the sound ones still are.
                logging.warning("Query account %s: %d damaged line(s) skipped (line %s); expected "
                                "'stage kind images pid time'", self.path, len(damaged),
                                ", ".join(map(str, damaged[:5])))
                self.damaged_lines = damaged

    @property
    def total(self) -> int:
        """Images sent over the work dir's life (every process, every attempt)."""
        return sum(self.by_stage.values())

    @property
    def sent(self) -> int:
        """Images sent by this process."""
        return sum(self.sent_by_stage.values())

    @property
    def remaining(self) -> int | None:
        """Images the budget still allows (None: no budget)."""
        return None if self.budget is None else self.budget - self.total

    def check(self, n: int, what: str) -> None:
        """Raises :class:`QueryBudgetExceeded` if ``n`` more images would exceed the budget.

        ``what`` says what the images are for, in the message. Nothing is charged.
        """
        with self._lock:
            self._check(n, what)

    def _check(self, n: int, what: str) -> None:
        if self.budget is not None and self.total + n > self.budget:
            raise QueryBudgetExceeded(
                f"{what} needs {n} more teacher queries, but the query budget of {self.budget} "
                f"leaves {self.budget - self.total} ({self.total} already sent in this work dir's "
                "life: distillation, evaluation, retries and earlier processes); nothing was sent")

    def charge(self, n: int, stage: str, retry: bool = False) -> None:
        """Records ``n`` images about to be sent for ``stage``, after checking the budget.

        Raises:
          QueryBudgetExceeded: the budget would be exceeded; nothing was charged (do not send).
          ValueError: a stage name with whitespace.
        """
        if not stage or any(c.isspace() for c in stage):
            raise ValueError(f"stage={stage!r}: expected a name without whitespace")
        with self._lock:
            self._check(n, f"{stage} ({'retry' if retry else 'request'} of {n} images)")
            if self.path is not None:
                line = f"{stage} {'retry' if retry else 'first'} {n} {os.getpid()} {time.time():.3f}\n"
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            self.by_stage[stage] = self.by_stage.get(stage, 0) + n
            self.sent_by_stage[stage] = self.sent_by_stage.get(stage, 0) + n
            self.retried += n if retry else 0


class QueryLedger:
    """Persisted teacher answers, keyed by content hash of the image bytes and the teacher's identity.

    Each answered request becomes one ``.npz`` file (``keys`` [b] of 40-hex SHA-1, ``soft_labels``
    float32 [b, K]) in ``directory``, written atomically (temp file + rename) as soon as the answer
    arrives; a crash loses at most the requests in flight. Thread-safe.
    """

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._answers: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.rows_on_disk = 0  # Rows in all files; equals len(self) unless an answer was stored twice.
        for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
            with np.load(path) as f:
                keys, rows = f["keys"], f["soft_labels"]
            self.rows_on_disk += len(keys)
            self._answers.update(zip((str(k) for k in keys), rows))

    def __len__(self) -> int:
        return len(self._answers)

    @staticmethod
    def keys(images: np.ndarray, identity: str) -> list[str]:
        """SHA-1 of (teacher identity, image dtype and shape, image bytes) for each image."""
        images = np.ascontiguousarray(images)
        prefix = f"{identity}|{images.dtype.str}|{images.shape[1:]}|".encode()
        return [hashlib.sha1(prefix + image.tobytes()).hexdigest() for image in images]

    def get(self, key: str) -> np.ndarray | None:
        return self._answers.get(key)

    def put(self, keys: list[str], soft_labels: np.ndarray) -> None:
        path = os.path.join(self.directory, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys), soft_labels=soft_labels.astype(np.float32))
        os.replace(tmp, path)
        with self._lock:
            self.rows_on_disk += len(keys)
            self._answers.update(zip(keys, soft_labels))


def _read_secret(path: str | None, env: str | None) -> str | None:
    if path and env:
        raise ValueError("auth_token_file and auth_token_env: give one, not both")
    if path:
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise ValueError(f"auth_token_file={path!r}: cannot read it ({e.strerror})") from None
        if not token:
            raise ValueError(f"auth_token_file={path!r}: the file is empty")
        return token
    if env:
        token = os.environ.get(env, "").strip()
        if not token:
            raise ValueError(f"auth_token_env={env!r}: the environment variable is unset or empty")
        return token
    return None


def _read_file(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}={path!r}: cannot read it ({e.strerror})") from None


def check_target(target: str) -> str:
    """Checks a gRPC address: ``host:port`` with a port in 1..65535 (``[v6]:port`` too), or a
    ``unix:`` socket path. Returns it unchanged.

    Raises:
      ValueError: naming the address and what is expected (so that a typo fails at once instead
        of waiting for the connection deadline).
    """
    if target.startswith("unix:") and len(target) > 5:
        return target
    host, _, port = (target or "").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"target={target!r}: expected host:port with a port in 1..65535")
    return target


class TeacherClient:
    """A classifier served over the TF Serving gRPC API, seen as a black box.

    Args: the fields of :class:`TeacherConfig` (``target`` and ``model_name`` positional), and
      ledger: an optional :class:`QueryLedger`; answers found there are not asked again.

    Raises:
      TeacherError: the server is unreachable within ``connect_timeout_s`` (the message names the
        address); it answered an error (``code`` set: NOT_FOUND for an unknown model, ...); or the
        signature has no input or output usable as the contract requires.
      ValueError: contradictory or unreadable settings (both version and label, a missing TLS file).
    """

    def __init__(self, target: str, model_name: str = "teacher", *, version: int | None = None,
                 version_label: str | None = None, signature_name: str = "serving_default",
                 input_key: str | None = None, input_dtype: str | None = None,
                 input_scale: float | None = None, output_key: str | None = None,
                 output_kind: str | None = None, class_map: tuple[int, ...] | None = None,
                 label_only: bool = False, timeout_s: float = 60.0,
                 connect_timeout_s: float = 30.0, max_in_flight: int = 4,
                 max_request_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                 retry: RetryPolicy = RetryPolicy(), tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 tls_server_name: str | None = None, auth_token_file: str | None = None,
                 auth_token_env: str | None = None, auth_header: str = "authorization",
                 auth_scheme: str = "Bearer", query_budget: int | None = None,
                 ledger: QueryLedger | None = None, account: QueryAccount | None = None):
        check_target(target)
        if version is not None and version_label:
            raise ValueError(f"version={version} and version_label={version_label!r}: give one")
        if input_dtype is not None and input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype={input_dtype!r}: expected one of {INPUT_DTYPES}")
        if input_scale is not None and input_scale <= 0:
            raise ValueError(f"input_scale={input_scale}: expected > 0 (1 or 255)")
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: expected >= 1")
        if account is None:
            account = QueryAccount(budget=query_budget)
        elif query_budget != account.budget:
            raise ValueError(f"query_budget={query_budget}: the query account's budget is "
                             f"{account.budget}; give one budget")
        self.target = target
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.signature_name = signature_name
        self.label_only = label_only
        self.class_map = None if class_map is None else tuple(int(c) for c in class_map)
        self.num_data_classes: int | None = None  # Set by expect_num_classes.
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.max_request_bytes = max_request_bytes
        self.retry = retry
        self.account = account
        self.ledger = ledger
        self.queries = 0  # Images this client sent (every attempt counts: the teacher saw it).
        self.requests = 0  # Predict RPCs sent, retries included.
        self.retries = 0  # Attempts after a retryable error.
        self.ledger_hits = 0  # Images answered from the ledger.
        self._counter_lock = threading.Lock()
        self._rng = random.Random()
        token = _read_secret(auth_token_file, auth_token_env)
        self._call_metadata = ((auth_header.lower(), f"{auth_scheme} {token}".strip()),) if token else None
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if tls_ca_file or tls_cert_file or tls_key_file:
            if bool(tls_cert_file) != bool(tls_key_file):
                raise ValueError("tls_cert_file and tls_key_file: give both or neither")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(tls_ca_file, "tls_ca_file"),
                private_key=_read_file(tls_key_file, "tls_key_file"),
                certificate_chain=_read_file(tls_cert_file, "tls_cert_file"))
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise TeacherError(f"teacher {model_name!r} at {target}: unreachable "
                               f"(no connection within {connect_timeout_s:g} s)",
                               grpc.StatusCode.UNAVAILABLE) from None
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        try:
            self.signature = self._read_signature(input_key, input_dtype, input_scale, output_key,
                                                  output_kind)
        except BaseException:
            self._channel.close()
            raise
        logging.debug("Connected to %s: %s%s", self.name, self.signature,
                      " (authorization metadata set)" if token else "")

    @property
    def query_budget(self) -> int | None:
        """The budget on the account's total (None: no cap)."""
        return self.account.budget

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"TeacherClient({self.target!r}, {self.model_name!r}, queries={self.queries})"

    @property
    def name(self) -> str:
        return f"teacher {self.model_name!r} at {self.target}"

    def _model_spec(self, spec, with_signature: bool = True) -> None:
        spec.name = self.model_name
        if with_signature:
            spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def _call(self, method, request, what: str, before_retry=None):
        """One RPC with retries on the retryable codes; other errors raise :class:`TeacherError`.

        ``before_retry()`` runs before each retry is sent (Predict charges the account there)."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout_s, metadata=self._call_metadata)
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRYABLE_CODES and attempt + 1 < self.retry.max_attempts:
                    delay = self.retry.backoff(attempt, self._rng)
                    logging.warning("%s: %s %s (%s); retry %d/%d in %.2f s", self.name, what,
                                    code.name, (e.details() or "")[:200], attempt + 1,
                                    self.retry.max_attempts - 1, delay)
                    with self._counter_lock:
                        self.retries += 1
                    attempt += 1
                    time.sleep(delay)
                    if before_retry is not None:
                        before_retry()
                    continue
                raise TeacherError(f"{self.name}: {what} failed with {code.name}: {e.details()}"
                                   + (f" (after {attempt + 1} attempts)" if attempt else ""),
                                   code) from None

    def _read_signature(self, input_key, input_dtype, input_scale, output_key,
                        output_kind) -> TeacherSignature:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, with_signature=False)
        response = self._call(self._stub.GetModelMetadata, request, "GetModelMetadata")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        if self.signature_name not in signature_map.signature_def:
            raise TeacherError(f"{self.name}: no signature {self.signature_name!r}; it has "
                               f"{sorted(signature_map.signature_def)}")
        signature = signature_map.signature_def[self.signature_name]
        if input_key is None:
            if len(signature.inputs) != 1:
                raise TeacherError(f"{self.name}: several inputs {sorted(signature.inputs)}; name "
                                   "the image input (--teacher_input_key)")
            input_key = next(iter(signature.inputs))
        if input_key not in signature.inputs:
            raise TeacherError(f"{self.name}: input_key={input_key!r} not in inputs "
                               f"{sorted(signature.inputs)}")
        if output_key is None:
            if "probabilities" in signature.outputs:
                output_key = "probabilities"
            elif len(signature.outputs) == 1:
                output_key = next(iter(signature.outputs))
            else:
                raise TeacherError(f"{self.name}: several outputs {sorted(signature.outputs)}; name "
                                   "the one to read (--teacher_output_key)")
        if output_key not in signature.outputs:
            raise TeacherError(f"{self.name}: output_key={output_key!r} not in outputs "
                               f"{sorted(signature.outputs)}")
        input_info, output_info = signature.inputs[input_key], signature.outputs[output_key]
        served_dtype = tf.dtypes.as_dtype(input_info.dtype)
        dtype = np.dtype(input_dtype) if input_dtype else np.dtype(served_dtype.as_numpy_dtype)
        if dtype.name not in INPUT_DTYPES:
            raise TeacherError(f"{self.name}: input {input_key!r} is {dtype.name}; tfkd sends "
                               f"{INPUT_DTYPES} images")
        scale = float(input_scale) if input_scale else (255.0 if dtype == np.uint8 else 1.0)
        input_shape = _shape(input_info)
        if input_shape and len(input_shape) not in (3, 4):
            raise TeacherError(f"{self.name}: input {input_key!r} has shape {list(input_shape)}; "
                               "expected images [batch, H, W] or [batch, H, W, C]")
        output_dtype = tf.dtypes.as_dtype(output_info.dtype)
        output_shape = _shape(output_info)
        if output_kind is None:
            output_kind = ("classes" if output_dtype.is_integer and len(output_shape) <= 1
                           else "probabilities")
        num_classes = output_shape[1] if len(output_shape) == 2 and output_shape[1] > 0 else None
        return TeacherSignature(
            model_name=self.model_name, version=int(response.model_spec.version.value),
            signature_name=self.signature_name, input_key=input_key, input_dtype=dtype,
            input_shape=input_shape, input_scale=scale, output_key=output_key,
            output_kind=output_kind, num_classes=num_classes)

    def expect_num_classes(self, num_classes: int, data: str = "the data") -> None:
        """Checks the teacher's class count against the data's before any query.

        A teacher whose metadata declares K classes must have ``num_classes``; one whose metadata
        cannot say (class ids, or an unknown output width) gets K = ``num_classes``, and every answer
        is then checked against it (a probability row of another width, or a class id >= K, stops
        the run with :class:`TeacherError`).

        Raises:
          TeacherError: the metadata declares another class count (nothing was sent).
        """
        declared = self.signature.num_classes
        if self.class_map is not None:
            if declared is not None and declared != len(self.class_map):
                raise TeacherError(f"{self.name}: class_map has {len(self.class_map)} entries but "
                                   f"the output {self.signature.output_key!r} has {declared} "
                                   "classes; give one data class per teacher class")
            if min(self.class_map) < 0 or max(self.class_map) >= num_classes:
                raise TeacherError(f"{self.name}: class_map {list(self.class_map)} names a class "
                                   f"outside {data}'s [0, {num_classes})")
            if declared is None:
                self.with_num_classes(len(self.class_map))
        elif declared is not None and declared != num_classes:
            raise TeacherError(
                f"{self.name}: its output {self.signature.output_key!r} has {declared} classes but "
                f"{data} has {num_classes}; say which data class each teacher class is "
                "(--teacher_class_map) or use a teacher of the data's classes. Nothing was sent.")
        elif declared is None:
            self.with_num_classes(num_classes)
        self.num_data_classes = num_classes

    def with_num_classes(self, num_classes: int) -> None:
        """Sets K where the metadata cannot say it (class-id teachers)."""
        if self.signature.num_classes not in (None, num_classes):
            raise ValueError(f"num_classes={num_classes}: the teacher's signature says "
                             f"{self.signature.num_classes}")
        self.signature = dataclasses.replace(self.signature, num_classes=int(num_classes))

    @property
    def images_per_request(self) -> int:
        """Images per Predict request so that the request stays under ``max_request_bytes``."""
        per_image = int(np.prod([d for d in self.signature.input_shape[1:] if d > 0] or [1]))
        per_image *= np.dtype(self.signature.input_dtype).itemsize
        return max(1, (self.max_request_bytes - 64 * 1024) // per_image)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [n, H, W, C] in [0, 1] -> the signature's input (dtype, scale, layout).

        Raises:
          ValueError: images that do not fit the signature's shape, naming both.
        """
        images = np.asarray(images)
        expected = self.signature.input_shape
        if images.ndim != 4:
            raise ValueError(f"images: expected float32 [n, H, W, C] in [0, 1], got shape "
                             f"{list(images.shape)}")
        if len(expected) == 3:  # The teacher takes [batch, H, W]: drop a single channel.
            if images.shape[-1] != 1:
                raise ValueError(f"images: {self.name} takes [batch, H, W] (one channel), got "
                                 f"{list(images.shape)}")
            images = images[..., 0]
        if expected and any(e > 0 and e != s for e, s in zip(expected[1:], images.shape[1:])):
            raise ValueError(f"images: expected shape {list(expected)} (-1: any) for {self.name}, "
                             f"got {list(images.shape)}")
        scale = np.float32(self.signature.input_scale)
        if self.signature.input_dtype == np.uint8:
            return np.round(np.clip(images.astype(np.float32) * scale, 0, 255)).astype(np.uint8)
        encoded = np.asarray(images, dtype=self.signature.input_dtype)  # No copy when it fits.
        return encoded * scale if scale != 1 else encoded

    def _count(self, n: int, stage: str, retry: bool) -> None:
        try:
            self.account.charge(n, stage, retry)
        except QueryBudgetExceeded as e:
            raise QueryBudgetExceeded(f"{self.name}: {e}") from None
        with self._counter_lock:
            self.queries += n
            self.requests += 1

    def predict_raw(self, encoded: np.ndarray, stage: str = "predict") -> np.ndarray:
        """One Predict request (retried as the policy says) of already-encoded images.

        Returns the raw output array. Every attempt charges ``len(encoded)`` queries to the account
        under ``stage`` before it is sent.

        Raises:
          QueryBudgetExceeded, TeacherError.
        """
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.inputs[self.signature.input_key].CopyFrom(tf.make_tensor_proto(encoded))
        request.output_filter.append(self.signature.output_key)
        n = len(encoded)
        self._count(n, stage, retry=False)
        response = self._call(self._stub.Predict, request, "Predict",
                              before_retry=lambda: self._count(n, stage, retry=True))
        if self.signature.output_key not in response.outputs:
            raise TeacherError(f"{self.name}: the answer has no output {self.signature.output_key!r}")
        return tf.make_ndarray(response.outputs[self.signature.output_key])

    def missing(self, images: np.ndarray) -> int:
        """How many of ``images`` the ledger cannot answer (all of them without a ledger)."""
        if self.ledger is None:
            return len(images)
        keys = QueryLedger.keys(self.encode(images), self.signature.identity)
        return sum(self.ledger.get(k) is None for k in keys)

    def soft_labels(self, images: np.ndarray, progress: bool = False,
                    stage: str = "predict") -> np.ndarray:
        """Labels images with the teacher's soft labels.

        Images the ledger knows are not sent; the rest go in requests under the message limit,
        ``max_in_flight`` at a time; each answer is checked and persisted as it arrives.

        Args:
          images: float32 [n, H, W, C] in [0, 1] (encoded to the signature's dtype, scale, layout).
          progress: show a Keras progress bar.
          stage: the name the queries are charged under in the :class:`QueryAccount`.

        Returns:
          float32 [n, K], rows summing to 1 (one-hot with ``label_only`` or a class-id teacher).

        Raises:
          ValueError: images of the wrong shape for the signature.
          QueryBudgetExceeded: the images to send would exceed the budget (checked before sending).
          TeacherError: an answer breaking the contract, or the server's error.
        """
        encoded = self.encode(images)
        n = len(encoded)
        keys = QueryLedger.keys(encoded, self.signature.identity) if self.ledger is not None else None
        known = {}  # Row index -> soft labels, from the ledger.
        if keys is not None:
            for i, key in enumerate(keys):
                row = self.ledger.get(key)
                if row is not None:
                    known[i] = row
        missing = np.setdiff1d(np.arange(n), np.fromiter(known, np.int64, len(known)))
        with self._counter_lock:
            self.ledger_hits += len(known)
        try:
            self.account.check(len(missing), f"labelling {len(missing)} images ({stage})")
        except QueryBudgetExceeded as e:
            raise QueryBudgetExceeded(f"{self.name}: {e}") from None
        step = self.images_per_request
        chunks = [missing[s:s + step] for s in range(0, len(missing), step)]
        bar = None
        if progress and len(missing):
            import keras
            bar = keras.utils.Progbar(len(missing), unit_name="image")

        def label(idx):
            contiguous = idx[-1] - idx[0] + 1 == len(idx)  # A slice is a view: no copy.
            raw = self.predict_raw(encoded[idx[0]:idx[-1] + 1] if contiguous else encoded[idx],
                                   stage)
            answer = to_soft_labels(raw, self.signature.output_kind, self.signature.num_classes,
                                    self.model_name, self.signature.output_key)
            if len(answer) != len(idx):
                raise TeacherError(f"{self.name}: answered {len(answer)} rows for {len(idx)} images")
            if self.ledger is not None:
                self.ledger.put([keys[i] for i in idx], answer)
            return idx, answer

        width = self.signature.num_classes or (len(next(iter(known.values()))) if known else None)
        out = np.zeros((n, width), np.float32) if width else None
        if known:
            out[np.fromiter(known, np.int64, len(known))] = np.stack(list(known.values()))
        with concurrent.futures.ThreadPoolExecutor(self.max_in_flight) as pool:
            futures = [pool.submit(label, idx) for idx in chunks]
            try:
                for future in concurrent.futures.as_completed(futures):
                    idx, answer = future.result()
                    if out is None:
                        out = np.zeros((n, answer.shape[1]), np.float32)
                    out[idx] = answer
                    if bar is not None:
                        bar.add(len(idx))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        if out is None:  # No images.
            return np.zeros((0, self.signature.num_classes or 0), np.float32)
        if self.class_map is not None:  # The ledger keeps the teacher's own classes.
            mapped = np.zeros((n, self.num_data_classes or max(self.class_map) + 1), np.float32)
            np.add.at(mapped.T, np.asarray(self.class_map), out.T)
            out = mapped
        if self.label_only:
            out = np.eye(out.shape[1], dtype=np.float32)[out.argmax(axis=1)]
        return out

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
