"""The black-box teacher: soft labels, the query ledger and the query budget, over any transport.

The distillation code reaches the teacher only through the :class:`Teacher` protocol, which
:class:`TeacherClient` implements on a model-agnostic transport (:class:`tfkd.client.ServingClient`
for TF Serving's gRPC API, :class:`tfkd.transports.RestClient` for its REST API,
:class:`tfkd.transports.SavedModelClient` in-process: metadata, chunked predict, retries,
deadlines, TLS and auth) and adds what makes the served model a *teacher*:

* What its output means: probabilities as they are, softmax of logits, one-hot of class ids (a
  top-1 "decision-based" API), optionally mapped into the data's classes; every answer checked
  (:func:`to_soft_labels`) and returned as soft labels float32 [batch, K].
* Paid for once: every image sent is charged to a :class:`QueryAccount` before it is sent (persisted
  beside the ledger: the work dir's whole life, every process, retries and evaluation included) and
  the query budget caps that total; with a :class:`QueryLedger` every answer is persisted as soon as
  it arrives, keyed by a content hash of the image and the teacher's identity, and never asked again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
import typing
import uuid

import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import client as client_lib
from tfkd import errors
from tfkd import fs
from tfkd import transports

OUTPUT_KINDS = ("probabilities", "logits", "classes")
SUM_TOLERANCE = 1e-3
"""How far a row of float probabilities may sum from 1 (float rounding)."""
QUANTIZATION_STEP = 1 / 256
"""The step of an 8-bit probability output (TFLite's int8 and uint8 softmax, tfkd's int8 student:
scale 1/256). Answers all on this grid may sum as far as K steps from 1, at most
:data:`MAX_QUANTIZED_SUM_TOLERANCE` (each of K values is off by up to a step)."""
MAX_QUANTIZED_SUM_TOLERANCE = 0.5

TeacherError = errors.TeacherError
QueryBudgetExceeded = errors.QueryBudgetExceeded


@dataclasses.dataclass(frozen=True)
class TeacherConfig(client_lib.ServingConfig):
    """How to reach and read a served teacher: :class:`tfkd.client.ServingConfig`'s fields, and

    Attributes:
      target: ``host:port`` (TF Serving's gRPC API), ``http(s)://host:port`` (its REST API) or a
        registered transport's ``<scheme>://...`` (:func:`tfkd.transports.open_client`); ""
        lets the pipeline train and serve one locally (:func:`tfkd.pipeline.run`).
      output_kind: one of ``OUTPUT_KINDS``; default ``classes`` for an integer output of rank <= 1,
        else ``probabilities``.
      class_map: ``class_map[t]`` is the data's class for the teacher's class t (a teacher whose
        classes are another order or a subset of the data's); answers are mapped into the data's
        classes (probability of teacher classes sharing a data class summed). None: the same
        classes and order.
      label_only: expose only the teacher's argmax (one-hot), to emulate a decision-based API on a
        teacher that returns probabilities.
      query_budget: at most this many images in the :class:`QueryAccount`'s total (None: no cap);
        with no account given to :class:`TeacherClient`, an in-memory account of this client alone.
    """

    model_name: str = "teacher"
    output_kind: str | None = None
    class_map: tuple[int, ...] | None = None
    label_only: bool = False
    query_budget: int | None = None

    def validate(self, require_target: bool = True) -> None:
        """Raises :class:`tfkd.errors.ConfigError` (a ValueError) naming the first contradictory
        or out-of-range field (an empty ``target`` passes when not ``require_target``)."""
        super().validate(require_target)
        if self.output_kind is not None and self.output_kind not in OUTPUT_KINDS:
            raise errors.ConfigError(f"output_kind={self.output_kind!r}: expected one of "
                                     f"{OUTPUT_KINDS}")
        if self.query_budget is not None and self.query_budget < 0:
            raise errors.ConfigError(f"query_budget={self.query_budget}: expected >= 0")
        if self.class_map is not None and len(set(self.class_map)) != len(self.class_map):
            raise errors.ConfigError(f"class_map={','.join(map(str, self.class_map))}: expected "
                                     "a distinct data class for each teacher class (two teacher "
                                     "classes sent to one data class would make their answers "
                                     "indistinguishable)")


@dataclasses.dataclass(frozen=True)
class TeacherSignature(client_lib.ServingSignature):
    """The served signature (:class:`tfkd.client.ServingSignature`) read as a teacher.

    Attributes:
      output_kind: one of ``OUTPUT_KINDS``; num_classes: K (None while the metadata cannot say, for
        class ids: see :meth:`TeacherClient.expect_num_classes`).
    """

    output_kind: str = "probabilities"
    num_classes: int | None = None

    @property
    def identity(self) -> str:
        """The key under which answers are stored in the ledger: what answers (``origin``: the
        SavedModel's fingerprint, else the endpoint) and how it is read. Answers of another teacher
        (another server, a new version behind the same name) are never reused."""
        return (f"{self.origin}|{self.model_name}/{self.version}/{self.signature_name}/{self.input_key}:"
                f"{np.dtype(self.input_dtype).name}*{self.input_scale:g}->{self.output_key}:"
                f"{self.output_kind}")


def to_soft_labels(raw: np.ndarray, output_kind: str, num_classes: int | None,
                   teacher: str = "teacher", output_key: str = "output") -> np.ndarray:
    """Turns a teacher answer into soft labels, checking the contract.

    Args:
      raw: probabilities float [b, K] (values >= -1e-6, rows summing to 1 within
        :data:`SUM_TOLERANCE`; an 8-bit output, every value a multiple of
        :data:`QUANTIZATION_STEP`, within K steps, at most :data:`MAX_QUANTIZED_SUM_TOLERANCE`),
        logits float [b, K], or class ids int [b] (or [b, 1]).
      output_kind: one of ``OUTPUT_KINDS``.
      num_classes: K; required for class ids.
      teacher, output_key: named in error messages.

    Returns:
      float32 [b, K] rows summing to 1 (probabilities renormalised; softmax of logits; one-hot of
      class ids).

    Raises:
      TeacherError: wrong shape, non-finite values, probabilities off the simplex, or a class id out
        of range.
    """
    where = f"teacher {teacher!r}, output {output_key!r} ({output_kind})"
    if output_kind not in OUTPUT_KINDS:
        raise errors.ConfigError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
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
                           "output? teacher.output_key)")
    raw = raw.astype(np.float32)
    if raw.ndim != 2 or (num_classes is not None and raw.shape[1] != num_classes):
        raise TeacherError(f"{where}: expected shape [batch, {num_classes}], got {list(raw.shape)}")
    if not np.all(np.isfinite(raw)):
        raise TeacherError(f"{where}: {int(np.sum(~np.isfinite(raw)))} non-finite values (NaN/inf)")
    if output_kind == "logits":
        return tf.nn.softmax(raw, axis=-1).numpy()
    sums = raw.sum(axis=1)
    tolerance = _sum_tolerance(raw)
    if raw.size and (raw.min() < -1e-6 or np.max(np.abs(sums - 1.0)) > tolerance):
        raise TeacherError(f"{where}: not probabilities (min {raw.min():.4g}, row sums in "
                           f"[{sums.min():.4g}, {sums.max():.4g}], expected 1 within "
                           f"{tolerance:.3g}); are they logits? (teacher.output_kind=logits)")
    clipped = np.clip(raw, 0.0, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def _sum_tolerance(raw: np.ndarray) -> float:
    """How far rows of ``raw`` float32 [b, K] may sum from 1: :data:`SUM_TOLERANCE`, or when every
    value is on an 8-bit output's grid (a multiple of :data:`QUANTIZATION_STEP`, as an int8
    teacher answers), K steps, at most :data:`MAX_QUANTIZED_SUM_TOLERANCE`."""
    steps = raw.astype(np.float64) / QUANTIZATION_STEP  # Exact: the step is a power of 2.
    if np.all(steps == np.round(steps)):
        return min(MAX_QUANTIZED_SUM_TOLERANCE, raw.shape[1] * QUANTIZATION_STEP)
    return SUM_TOLERANCE


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
      ConfigError: a negative budget. (A damaged log line is skipped with one warning naming the
        file and line: it cannot be counted.)
    """

    FILE = "queries_sent.log"

    def __init__(self, directory: str | None = None, budget: int | None = None):
        if budget is not None and budget < 0:
            raise errors.ConfigError(f"query_budget={budget}: expected >= 0")
        self.budget = budget
        self.path = None if directory is None else os.path.join(directory, self.FILE)
        self._lock = threading.Lock()
        self.by_stage: dict[str, int] = {}  # Work dir's life, retries included.
        self.retried = 0  # Images re-sent by retries, work dir's life.
        self.sent_by_stage: dict[str, int] = {}  # This process.
        self.damaged_lines: list[int] = []  # Log lines that could not be read.
        if self.path is None:
            return
        fs.makedirs(directory)
        if fs.exists(self.path):
            damaged = []
            text = fs.read_bytes(self.path).decode(errors="replace")
            for number, line in enumerate(text.split("\n"), 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    stage, kind, n = fields[0], fields[1], int(fields[2])
                    if n < 0 or kind not in ("first", "retry"):
                        raise ValueError  # Programming error: jumps to the except below.
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
          ConfigError: a stage name with whitespace.
        """
        if not stage or any(c.isspace() for c in stage):
            raise errors.ConfigError(f"stage={stage!r}: expected a name without whitespace")
        with self._lock:
            self._check(n, f"{stage} ({'retry' if retry else 'request'} of {n} images)")
            if self.path is not None:
                fs.append_line(self.path, f"{stage} {'retry' if retry else 'first'} {n} "
                                          f"{os.getpid()} {time.time():.3f}")
            self.by_stage[stage] = self.by_stage.get(stage, 0) + n
            self.sent_by_stage[stage] = self.sent_by_stage.get(stage, 0) + n
            self.retried += n if retry else 0


def check_soft_labels(soft_labels: np.ndarray, name: str, tolerance: float = 1e-3) -> None:
    """Raises ConfigError (a ValueError, naming ``name``) unless ``soft_labels`` float [n, K] are
    distributions: every value finite and in [0, 1], every row summing to 1 within ``tolerance``. (A NaN row
    passes ``abs(sum - 1) > tol`` unnoticed, since every comparison with NaN is false.)"""
    values = np.asarray(soft_labels)
    finite = np.isfinite(values)
    if not finite.all():
        rows = int(np.sum(~finite.all(axis=-1)))
        raise errors.ConfigError(f"{name}: expected finite probabilities, got {rows} rows with NaN or "
                         "infinite values")
    if values.size and (values.min() < 0 or values.max() > 1 + tolerance):
        raise errors.ConfigError(f"{name}: expected probabilities in [0, 1], got values in "
                         f"[{values.min():.4g}, {values.max():.4g}]")
    sums = values.sum(axis=-1)
    if values.size and np.any(np.abs(sums - 1) > tolerance):
        raise errors.ConfigError(f"{name}: expected rows summing to 1, got sums in "
                         f"[{sums.min():.4f}, {sums.max():.4f}]")


class QueryLedger:
    """Persisted teacher answers, keyed by content hash of the image bytes and the teacher's identity.

    Each answered request becomes one ``.npz`` file (``keys`` [b] of 40-hex SHA-1, ``soft_labels``
    float32 [b, K]) in ``directory``, written atomically (temp file + rename) as soon as the answer
    arrives; a crash loses at most the requests in flight. Thread-safe.
    """

    def __init__(self, directory: str):
        self.directory = directory
        fs.makedirs(directory)
        self._answers: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.rows_on_disk = 0  # Rows in all files; equals len(self) unless an answer was stored twice.
        for path in fs.glob(os.path.join(directory, "*.npz")):
            with fs.load_npz(path) as f:
                keys, rows = f["keys"], f["soft_labels"]
            try:
                check_soft_labels(rows, f"ledger file {path}")
            except ValueError as e:  # tfkd.workdir.check sets such a file aside.
                logging.warning("%s; its answers are not used", e)
                continue
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
        fs.save_npz(path, keys=np.asarray(keys), soft_labels=soft_labels.astype(np.float32))
        with self._lock:
            self.rows_on_disk += len(keys)
            self._answers.update(zip(keys, soft_labels))



@contextlib.contextmanager
def _as_teacher_error():
    """The transport's :class:`tfkd.errors.ServingClientError` raised as a :class:`TeacherError`
    (same message and code): what answers is the teacher."""
    try:
        yield
    except TeacherError:
        raise
    except client_lib.ServingClientError as e:
        raise TeacherError(str(e), e.code) from None


@typing.runtime_checkable
class Teacher(typing.Protocol):
    """What a distillation method may ask a teacher (:class:`TeacherClient`, and
    :class:`tfkd.cluster.ShardedTeacher` over several workers), whatever answers it: TF Serving's
    gRPC or REST API, or a SavedModel in this process (:mod:`tfkd.transports`).

    Attributes:
      signature: the :class:`TeacherSignature` read from the model's metadata; its ``identity``
        keys the ledger's answers.
      label_only: the label-only view of a probability teacher was asked for.
      decision_only: answers are one-hot top-1 labels (the label-only view, or a teacher that
        answers class ids).

    Every image sent is charged to one query account (budget, ``queries_sent.log``) before it is
    sent; answers the ledger knows are not sent again.
    """

    signature: "TeacherSignature"
    label_only: bool
    decision_only: bool

    def soft_labels(self, images: np.ndarray, progress: bool = False,
                    stage: str = "predict") -> np.ndarray:
        """float32 [n, H, W, C] in [0, 1] -> float32 [n, K] rows summing to 1 (ledger first)."""

    def probe(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """As :meth:`soft_labels`, every image sent (search points, gradient probes)."""

    def top1(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """int64 [n] in [0, K): the decision only."""

    def missing(self, images: np.ndarray) -> int:
        """How many distinct images :meth:`soft_labels` would send."""

    def answered(self, images: np.ndarray) -> np.ndarray:
        """bool [n]: which images the ledger answers (sent by no :meth:`soft_labels`)."""


class TeacherClient:
    """A served classifier seen as a black-box teacher: the :class:`Teacher` every method asks.

    Args:
      config: the :class:`TeacherConfig`.
      ledger: an optional :class:`QueryLedger`; answers found there are not asked again.
      account: the :class:`QueryAccount` queries are charged to (its budget must be
        ``config.query_budget``); default: an in-memory account of this client alone.
      transport: what carries the queries (:mod:`tfkd.transports`); default
        :func:`tfkd.transports.open_client` of ``config``: TF Serving's REST API for an
        ``http(s)://`` target, else its gRPC API. :func:`from_saved_model` gives an in-process one.

    Raises:
      TeacherError: the server is unreachable within ``connect_timeout_s`` (the message names the
        address); it answered an error (``code`` set: NOT_FOUND for an unknown model, ...); or the
        signature has no input or output usable as the contract requires.
      ConfigError: contradictory or unreadable settings (both version and label, a missing TLS file,
        a budget other than the account's).
    """

    def __init__(self, config: TeacherConfig, ledger: QueryLedger | None = None,
                 account: QueryAccount | None = None,
                 transport: client_lib.ServingClient | None = None):
        config.validate(require_target=transport is None)
        if account is None:
            account = QueryAccount(budget=config.query_budget)
        elif config.query_budget != account.budget:
            raise errors.ConfigError(f"query_budget={config.query_budget}: the query account's budget is "
                             f"{account.budget}; give one budget")
        self.config = config
        self.account = account
        self.ledger = ledger
        self.class_map = None if config.class_map is None else tuple(int(c)
                                                                    for c in config.class_map)
        self.num_data_classes: int | None = None  # Set by expect_num_classes.
        self.queries = 0  # Images this client sent (every attempt counts: the teacher saw it).
        self.ledger_hits = 0  # Images answered from the ledger.
        self._lock = threading.Lock()
        with _as_teacher_error():
            self._client = transport or transports.open_client(config, role="teacher")
        served = self._client.signature
        kind = config.output_kind or ("classes" if served.output_dtype.is_integer
                                      and len(served.output_shape) <= 1 else "probabilities")
        shape = served.output_shape
        self.signature = TeacherSignature(
            **{f.name: getattr(served, f.name) for f in dataclasses.fields(served)},
            output_kind=kind, num_classes=shape[1] if len(shape) == 2 and shape[1] > 0 else None)

    label_only = property(lambda self: self.config.label_only)

    @property
    def decision_only(self) -> bool:
        """The answers carry the top-1 class only (one-hot): the label-only view, or a teacher
        that answers class ids."""
        return self.label_only or self.signature.output_kind == "classes"

    name = property(lambda self: self._client.name)
    requests = property(lambda self: self._client.requests, doc="Predict RPCs, retries included.")
    retries = property(lambda self: self._client.retries, doc="Attempts after a retryable error.")
    images_per_request = property(lambda self: self._client.images_per_request)

    @property
    def query_budget(self) -> int | None:
        """The budget on the account's total (None: no cap)."""
        return self.account.budget

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"TeacherClient({self.config.target!r}, {self.config.model_name!r}, " \
               f"queries={self.queries})"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """See :meth:`tfkd.client.ServingClient.encode`."""
        return self._client.encode(images)

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
                "(teacher.class_map) or use a teacher of the data's classes. Nothing was sent.")
        elif declared is None:
            self.with_num_classes(num_classes)
        self.num_data_classes = num_classes

    def with_num_classes(self, num_classes: int) -> None:
        """Sets K where the metadata cannot say it (class-id teachers)."""
        if self.signature.num_classes not in (None, num_classes):
            raise errors.ConfigError(f"num_classes={num_classes}: the teacher's signature says "
                             f"{self.signature.num_classes}")
        self.signature = dataclasses.replace(self.signature, num_classes=int(num_classes))

    def _charger(self, stage: str):
        """``on_attempt`` for the client: charges the account before each attempt is sent."""
        def charge(n: int, retry: bool) -> None:
            try:
                self.account.charge(n, stage, retry)
            except QueryBudgetExceeded as e:
                raise QueryBudgetExceeded(f"{self.name}: {e}") from None
            with self._lock:
                self.queries += n
        return charge

    def predict_raw(self, encoded: np.ndarray, stage: str = "predict") -> np.ndarray:
        """One Predict request of already-encoded images; every attempt charges ``len(encoded)``
        queries to the account under ``stage`` before it is sent. Returns the raw output.

        Raises:
          QueryBudgetExceeded, TeacherError.
        """
        with _as_teacher_error():
            return self._client.predict_raw(encoded, self._charger(stage))

    def missing(self, images: np.ndarray) -> int:
        """How many distinct images of ``images`` the ledger cannot answer (what
        :meth:`soft_labels` would send: an image that occurs twice is sent once)."""
        keys = QueryLedger.keys(self.encode(images), self.signature.identity)
        return len({k for k in keys if self.ledger is None or self.ledger.get(k) is None})

    def answered(self, images: np.ndarray) -> np.ndarray:
        """bool [n]: which of ``images`` float32 [n, H, W, C] the ledger answers (what
        :meth:`soft_labels` would not send); all False without a ledger."""
        if self.ledger is None:
            return np.zeros(len(images), bool)
        keys = QueryLedger.keys(self.encode(images), self.signature.identity)
        return np.fromiter((self.ledger.get(k) is not None for k in keys), bool, len(keys))

    def _convert(self, keys):
        def convert(idx: np.ndarray, raw: np.ndarray) -> np.ndarray:
            answer = to_soft_labels(raw, self.signature.output_kind, self.signature.num_classes,
                                    self.config.model_name, self.signature.output_key)
            if self.ledger is not None and keys and len(answer) == len(idx):
                self.ledger.put([keys[i] for i in idx], answer)
            return answer
        return convert

    def soft_labels(self, images: np.ndarray, progress: bool = False,
                    stage: str = "predict") -> np.ndarray:
        """Labels images with the teacher's soft labels.

        Images the ledger knows are not sent, and an image that occurs more than once (identical
        encoded bytes: two MixUp pairs that round to the same picture) is sent once; the rest go
        in requests under the message limit, ``max_in_flight`` at a time; each answer is checked
        and persisted as it arrives.

        Args:
          images: float32 [n, H, W, C] in [0, 1] (encoded to the signature's dtype, scale, layout).
          progress: show a Keras progress bar.
          stage: the name the queries are charged under in the :class:`QueryAccount`.

        Returns:
          float32 [n, K] (K: the data's classes), rows summing to 1 (one-hot with ``label_only`` or
          a class-id teacher).

        Raises:
          ConfigError: images of the wrong shape for the signature.
          QueryBudgetExceeded: the images to send would exceed the budget (checked before sending).
          TeacherError: an answer breaking the contract, or the server's error.
        """
        encoded = self.encode(images)
        n = len(encoded)
        keys = QueryLedger.keys(encoded, self.signature.identity)
        known = ({} if self.ledger is None else
                 {i: row for i, row in enumerate(self.ledger.get(k) for k in keys) if row is not None})
        unknown = np.setdiff1d(np.arange(n), np.fromiter(known, np.int64, len(known)))
        # Each distinct image not known is sent once, at its first occurrence (ascending rows).
        _, first, same = np.unique(np.asarray(keys, dtype=str)[unknown],
                                   return_index=True, return_inverse=True)
        missing = np.sort(unknown[first])
        with self._lock:
            self.ledger_hits += len(known)
        try:
            self.account.check(len(missing), f"labelling {len(missing)} images ({stage})")
        except QueryBudgetExceeded as e:
            raise QueryBudgetExceeded(f"{self.name}: {e}") from None
        with _as_teacher_error():
            asked = (self._client.predict(encoded, missing, self._convert(keys),
                                          self._charger(stage), progress) if len(missing) else None)
        width = (asked.shape[1] if asked is not None else len(next(iter(known.values()))) if known
                 else self.signature.num_classes or 0)
        out = np.zeros((n, width), np.float32)
        if known:
            out[np.fromiter(known, np.int64, len(known))] = np.stack(list(known.values()))
        if asked is not None:
            out[missing] = asked
            out[unknown] = out[unknown[first][same.reshape(-1)]]  # Repeats: the first's answer.
        return self._as_data_classes(out)

    def probe(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """The teacher's soft labels of images probed once each (a search's points, a gradient
        estimate's perturbations): every image is sent, none looked up in or written to the ledger;
        every attempt is charged to the account under ``stage`` (its ``queries_sent.log``).

        Args:
          images: float32 [n, H, W, C] in [0, 1].

        Returns:
          float32 [n, K], rows summing to 1 (one-hot with ``label_only`` or a class-id teacher).

        Raises:
          QueryBudgetExceeded: the images would exceed the budget (checked before sending).
          TeacherError, ConfigError: as :meth:`soft_labels`.
        """
        encoded = self.encode(images)
        try:
            self.account.check(len(encoded), f"{len(encoded)} probes ({stage})")
        except QueryBudgetExceeded as e:
            raise QueryBudgetExceeded(f"{self.name}: {e}") from None
        if not len(encoded):
            return np.zeros((0, self.num_data_classes or self.signature.num_classes or 0),
                            np.float32)
        with _as_teacher_error():
            answers = self._client.predict(encoded, convert=self._convert([]),
                                           on_attempt=self._charger(stage))
        return self._as_data_classes(answers)

    def top1(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """The teacher's top-1 class int64 [n] in [0, K) of every image (in the data's classes):
        :meth:`probe`'s argmax, for searches that need only the decision (DB3KD)."""
        answers = self.probe(images, stage)
        return answers.argmax(axis=1).astype(np.int64) if answers.size else np.zeros(0, np.int64)

    def _as_data_classes(self, out: np.ndarray) -> np.ndarray:
        """Teacher classes -> the data's (class map), then the label-only view."""
        if self.class_map is not None:  # The ledger keeps the teacher's own classes.
            mapped = np.zeros((len(out), self.num_data_classes or max(self.class_map) + 1),
                              np.float32)
            np.add.at(mapped.T, np.asarray(self.class_map), out.T)
            out = mapped
        if self.label_only:
            out = np.eye(out.shape[1], dtype=np.float32)[out.argmax(axis=1)]
        return out

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def from_saved_model(path: str, *, ledger: QueryLedger | None = None,
                     account: QueryAccount | None = None, **fields) -> TeacherClient:
    """A teacher answered in this process by the SavedModel version directory ``path``
    (:class:`tfkd.transports.SavedModelClient`), charged and persisted like a served one."""
    config = TeacherConfig(**fields)
    return TeacherClient(config, ledger, account,
                         transport=transports.SavedModelClient(path, config, role="teacher"))


def connect(target: str, model_name: str = "teacher", *, ledger: QueryLedger | None = None,
            account: QueryAccount | None = None, **fields) -> TeacherClient:
    """``TeacherClient(TeacherConfig(target=target, model_name=model_name, **fields), ledger,
    account)``: the short form for scripts and tests."""
    return TeacherClient(TeacherConfig(target=target, model_name=model_name, **fields), ledger,
                         account)
