"""Paid work shared across the workers of a MultiWorkerMirroredStrategy cluster.

Every worker of a cluster runs the same pipeline with the same seed, so every worker makes the same
synthetic images. Without sharing, K workers would each ask the teacher about all of them and pay K
times. :class:`ShardedTeacher` gives each worker a contiguous shard of every batch of images to ask
about (worker w of K asks about rows ``[w n / K, (w + 1) n / K)``), then all-gathers the answers with
the strategy's collective ops, so that every worker holds every answer and the cluster asks about each
image once. With one worker (any other strategy) it is the teacher itself. Per-image work other than
labelling (DB3KD's boundary search) shards the same way: :meth:`ShardedTeacher.shard` and
:meth:`ShardedTeacher.gather_rows`, which the one-worker :class:`tfkd.teacher.TeacherClient` has too
(every row is its shard), so that a method never needs to know which it holds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def worker_position(strategy: tf.distribute.Strategy | None) -> tuple[int, int]:
    """(this worker's index, number of workers) in the strategy's cluster; (0, 1) without one.

    Workers are numbered as the cluster's collective ops order them: a ``chief`` first, then the
    ``worker`` tasks by index.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return 0, 1
    chiefs = len(cluster.get("chief", []))
    workers = len(cluster.get("worker", []))
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return index, chiefs + workers


class ShardedTeacher:
    """The teacher as one worker of a cluster sees it: a :class:`tfkd.teacher.Teacher` whose
    :meth:`soft_labels` and :meth:`missing` cover this worker's shard and share the answers, and
    whose :meth:`probe` and :meth:`top1` (searches that shard their own points with :meth:`shard`)
    are the client's.

    Args:
      teacher: this worker's client (its own ledger and query account: each worker's report counts
        what it sent, and the cluster's queries are their sum).
      strategy: the strategy whose collective ops gather the answers.

    Every worker must call :meth:`soft_labels` with the same images in the same order (they do: the
    pipeline is deterministic given the seed), as collective ops require.
    """

    def __init__(self, teacher, strategy: tf.distribute.Strategy | None = None):
        self.teacher = teacher
        self.strategy = strategy
        self.index, self.count = worker_position(strategy)

    @property
    def signature(self):
        """The client's :class:`tfkd.teacher.TeacherSignature`."""
        return self.teacher.signature

    @property
    def label_only(self) -> bool:
        """The client's :attr:`tfkd.teacher.TeacherClient.label_only`."""
        return self.teacher.label_only

    @property
    def decision_only(self) -> bool:
        """The client's :attr:`tfkd.teacher.TeacherClient.decision_only`."""
        return self.teacher.decision_only

    def probe(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """The client's :meth:`tfkd.teacher.TeacherClient.probe` (no sharding)."""
        return self.teacher.probe(images, stage)

    def top1(self, images: np.ndarray, stage: str = "predict") -> np.ndarray:
        """The client's :meth:`tfkd.teacher.TeacherClient.top1` (no sharding)."""
        return self.teacher.top1(images, stage)

    def shard(self, n: int) -> slice:
        """The rows of ``n`` images this worker asks about."""
        return slice(self.index * n // self.count, (self.index + 1) * n // self.count)

    def share(self, n: int) -> int:
        """How many of ``n`` images this worker asks about."""
        s = self.shard(n)
        return s.stop - s.start

    def missing(self, images: np.ndarray) -> int:
        """Images of this worker's shard that its ledger cannot answer."""
        return self.teacher.missing(images[self.shard(len(images))])

    def answered(self, images: np.ndarray) -> np.ndarray:
        """bool [n] on every worker: which images some worker's ledger answers for its shard."""
        mine = self.teacher.answered(images[self.shard(len(images))]).astype(np.float32)
        return self.gather_rows(mine[:, None], len(images))[:, 0] > 0.5

    def soft_labels(self, images: np.ndarray, progress: bool = False,
                    stage: str = "predict") -> np.ndarray:
        """Soft labels float32 [n, K] of all ``images``; this worker asks about its shard only."""
        mine = self.teacher.soft_labels(images[self.shard(len(images))], progress=progress,
                                        stage=stage)
        if self.count == 1:
            return mine
        return self.gather_rows(mine, len(images))

    def progress_bar(self, total: int, unit_name: str = "image"):
        """This worker's teacher's progress bar (:meth:`tfkd.teacher.TeacherClient.progress_bar`)."""
        return self.teacher.progress_bar(total, unit_name)

    def gather_rows(self, mine: np.ndarray, n: int) -> np.ndarray:
        """Every worker's rows of a per-image result, in row order: ``mine`` float [share(n), K] is
        this worker's shard (:meth:`shard`) of n rows; returns float32 [n, K] on every worker
        (shards padded to one size for the collective, then trimmed). With one worker, ``mine``."""
        if self.count == 1:
            return mine
        size = -(-n // self.count)
        padded = np.zeros((size, mine.shape[1]), np.float32)
        padded[:len(mine)] = mine
        values = self.strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant(padded))
        gathered = self.strategy.gather(values, axis=0).numpy()
        per_worker = self.strategy.num_replicas_in_sync // self.count  # Local replicas repeat it.
        blocks = gathered.reshape(self.strategy.num_replicas_in_sync, size, -1)[::per_worker]
        rows = [blocks[w][:(w + 1) * n // self.count - w * n // self.count]
                for w in range(self.count)]
        return np.concatenate(rows)
