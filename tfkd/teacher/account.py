"""What the teacher was asked and what it answered, persisted: :class:`QueryAccount` (every image
sent over a work dir's life, and the query budget on that total) and :class:`QueryLedger` (every
answer, keyed by the image's content and the teacher's identity, never asked again); and
:class:`QueryProgress`, the progress bar of what is being asked."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

import numpy as np
from absl import logging

from tfkd import errors
from tfkd import fs
from tfkd.teacher import labels


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
        """Raises :class:`tfkd.errors.QueryBudgetExceeded` if ``n`` more images would exceed the budget.

        ``what`` says what the images are for, in the message. Nothing is charged.
        """
        with self._lock:
            self._check(n, what)

    def _check(self, n: int, what: str) -> None:
        if self.budget is not None and self.total + n > self.budget:
            raise errors.QueryBudgetExceeded(
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
                labels.check_soft_labels(rows, f"ledger file {path}")
            except errors.ConfigError as e:  # tfkd.workdir.check sets such a file aside.
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
        """The stored soft labels float32 [K] of ``key`` (see :meth:`keys`), or None."""
        return self._answers.get(key)

    def put(self, keys: list[str], soft_labels: np.ndarray) -> None:
        """Persists ``soft_labels`` float [len(keys), K] under ``keys`` (one atomic file)."""
        path = os.path.join(self.directory, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")
        fs.save_npz(path, keys=np.asarray(keys), soft_labels=soft_labels.astype(np.float32))
        with self._lock:
            self.rows_on_disk += len(keys)
            self._answers.update(zip(keys, soft_labels))


class QueryProgress:
    """A Keras progress bar (``keras.utils.Progbar``) over ``total`` items (images labelled,
    image/class pairs searched) that also shows the teacher queries sent per second
    (``images/s``: one query is one image) and, under a query budget, what remains of it
    (``budget left``, images).

    Args:
      total: items the bar runs over (> 0).
      unit_name: what an item is ("image", "pair").
      account: the :class:`QueryAccount` charged; None: every item is one query and no budget is
        shown.
    """

    def __init__(self, total: int, unit_name: str = "image", account: QueryAccount | None = None):
        import keras  # noqa: PLC0415  (only where a bar is shown)

        self._bar = keras.utils.Progbar(total, unit_name=unit_name,
                                        stateful_metrics=("images/s", "budget left"))
        self._account = account
        self._start = time.monotonic()
        self._sent_before = account.sent if account is not None else 0
        self._items = 0

    def add(self, n: int) -> None:
        """Advances the bar by ``n`` items and shows the rate and the budget left now."""
        self._items += n
        elapsed = max(time.monotonic() - self._start, 1e-6)
        account = self._account
        sent = self._items if account is None else account.sent - self._sent_before
        values = [("images/s", float(round(sent / elapsed)))]  # Keras shows a metric's float.
        if account is not None and account.remaining is not None:
            values.append(("budget left", float(account.remaining)))
        self._bar.add(n, values)
