"""The black-box teacher: soft labels, the query ledger and the query budget, over any transport.

:class:`TeacherClient` is the :class:`tfkd.teacher.protocol.Teacher` every method asks on one worker.
It reaches the served model through :class:`tfkd.teacher.client.ServingClient` (any transport:
gRPC, REST, in-process; metadata, split and concurrent requests, retries, deadlines, TLS and auth)
and adds what makes the served model a *teacher*:

* What its output means: probabilities as they are, softmax of logits, one-hot of class ids (a
  top-1 "decision-based" API), optionally mapped into the data's classes; every answer checked
  (:func:`tfkd.teacher.labels.to_soft_labels`) and returned as soft labels float32 [batch, K].
* Paid for once: every image sent is charged to a :class:`tfkd.teacher.account.QueryAccount` before
  it is sent (the work dir's whole life, every process, retries and evaluation included) and the
  query budget caps that total; with a :class:`tfkd.teacher.account.QueryLedger` every answer is
  persisted as soon as it arrives, keyed by a content hash of the image and the teacher's identity,
  and never asked again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Callable

import numpy as np

from tfkd import errors
from tfkd.teacher import account as account_lib
from tfkd.teacher import client as client_lib
from tfkd.teacher import protocol
from tfkd.teacher.account import QueryAccount
from tfkd.teacher.account import QueryLedger
from tfkd.teacher.config import TeacherConfig
from tfkd.teacher.labels import to_soft_labels
from tfkd.teacher.protocol import TeacherSignature
from tfkd.teacher.transports import InProcessTransport


@contextlib.contextmanager
def _as_teacher_error():
    """The transport's :class:`tfkd.errors.ServingClientError` raised as a :class:`TeacherError`
    (same message and code): what answers is the teacher."""
    try:
        yield
    except errors.TeacherError:
        raise
    except errors.ServingClientError as e:
        raise errors.TeacherError(str(e), e.code) from None


class TeacherClient:
    """A served classifier seen as a black-box teacher: the :class:`Teacher` every method asks.

    Args:
      config: the :class:`TeacherConfig`.
      ledger: an optional :class:`QueryLedger`; answers found there are not asked again.
      account: the :class:`QueryAccount` queries are charged to (its budget must be
        ``config.query_budget``); default: an in-memory account of this client alone.
      transport: the factory of what carries the queries (``transport(config)``, a
        :class:`tfkd.teacher.protocol.Transport`); default: the one ``config.target``'s scheme
        names (:func:`tfkd.teacher.transports.transport_for`): TF Serving's REST API for an
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
                 transport: Callable[[TeacherConfig], protocol.Transport] | None = None):
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
            self._client = client_lib.ServingClient(config, "teacher", transport)
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

    def shard(self, n: int) -> slice:
        """One worker handles every row of ``n`` per-image items (a cluster's workers:
        :meth:`tfkd.teacher.cluster.ShardedTeacher.shard`)."""
        return slice(0, n)

    def share(self, n: int) -> int:
        """How many of ``n`` images this teacher asks about: all of them."""
        return n

    def gather_rows(self, mine: np.ndarray, n: int) -> np.ndarray:
        """One worker's rows are every row: ``mine`` float [n, K] as it is."""
        return mine

    @property
    def transport(self) -> protocol.Transport:
        """What carries the queries (:class:`tfkd.teacher.protocol.Transport`)."""
        return self._client.transport

    name = property(lambda self: self._client.name)
    requests = property(lambda self: self._client.requests, doc="Predict RPCs, retries included.")
    retries = property(lambda self: self._client.retries, doc="Attempts after a retryable error.")
    images_per_request = property(lambda self: self._client.images_per_request)

    def progress_bar(self, total: int, unit_name: str = "image") -> account_lib.QueryProgress:
        """A progress bar over ``total`` items showing the queries sent per second and what
        remains of this teacher's query budget (:class:`tfkd.teacher.account.QueryProgress`)."""
        return account_lib.QueryProgress(total, unit_name, self.account)

    @property
    def query_budget(self) -> int | None:
        """The budget on the account's total (None: no cap)."""
        return self.account.budget

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"TeacherClient({self.config.target!r}, {self.config.model_name!r}, " \
               f"queries={self.queries})"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """See :meth:`tfkd.teacher.client.ServingClient.encode`."""
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
                raise errors.TeacherError(f"{self.name}: class_map has {len(self.class_map)} entries but "
                                   f"the output {self.signature.output_key!r} has {declared} "
                                   "classes; give one data class per teacher class")
            if min(self.class_map) < 0 or max(self.class_map) >= num_classes:
                raise errors.TeacherError(f"{self.name}: class_map {list(self.class_map)} names a class "
                                   f"outside {data}'s [0, {num_classes})")
            if declared is None:
                self.with_num_classes(len(self.class_map))
        elif declared is not None and declared != num_classes:
            raise errors.TeacherError(
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
            except errors.QueryBudgetExceeded as e:
                raise errors.QueryBudgetExceeded(f"{self.name}: {e}") from None
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
        except errors.QueryBudgetExceeded as e:
            raise errors.QueryBudgetExceeded(f"{self.name}: {e}") from None
        with _as_teacher_error():
            asked = (self._client.predict(encoded, missing, self._convert(keys),
                                          self._charger(stage),
                                          progress and (lambda total: self.progress_bar(total)))
                     if len(missing) else None)
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
        except errors.QueryBudgetExceeded as e:
            raise errors.QueryBudgetExceeded(f"{self.name}: {e}") from None
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
    (:class:`tfkd.teacher.transports.InProcessTransport`), charged and persisted like a served one;
    ``fields``: :class:`TeacherConfig`'s (its ``target`` is not used). Raises as
    :class:`TeacherClient`."""
    return TeacherClient(TeacherConfig(**fields), ledger, account,
                         transport=lambda config: InProcessTransport(config, path))


def connect(target: str, model_name: str = "teacher", *, ledger: QueryLedger | None = None,
            account: QueryAccount | None = None, **fields) -> TeacherClient:
    """The teacher at ``target`` over the transport its URL scheme names (``host:port`` gRPC,
    ``http(s)://`` REST, a registered scheme): ``TeacherClient(TeacherConfig(target=target,
    model_name=model_name, **fields), ledger, account)``. This is ``tfkd.connect``; a model that
    is not a teacher (a student being measured) is opened with :func:`tfkd.teacher.client.connect`.
    Raises as :class:`TeacherClient`."""
    return TeacherClient(TeacherConfig(target=target, model_name=model_name, **fields), ledger,
                         account)
