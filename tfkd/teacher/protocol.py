"""The two seams of the teacher side: what carries a query (:class:`Transport`) and what a method asks
(:class:`Teacher`), with the signatures they exchange and the registry of transports by URL scheme.

* A :class:`Transport` does one exchange at a time with a served model: read its metadata (the
  signatures), send one encoded batch, close. It neither retries, splits nor counts: the client that
  wraps every transport (:class:`tfkd.teacher.client.ServingClient`) does, the same for all of them.
  A failed exchange raises :class:`tfkd.errors.TransportError` (a status code and one line).
* :data:`TRANSPORTS` maps a target's URL scheme to the transport that opens it
  (:func:`register_transport`); a target without a scheme is TF Serving's gRPC API.
* A :class:`Teacher` is what a distillation method holds, on one worker or as one of several
  (:class:`tfkd.teacher.cluster.ShardedTeacher`); a method never needs to know which.
"""

from __future__ import annotations

import dataclasses
import typing

import grpc
import numpy as np
import tensorflow as tf

from tfkd import errors

RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.RESOURCE_EXHAUSTED)
"""The status codes the client retries (with backoff) when a transport raises them."""


@dataclasses.dataclass(frozen=True)
class Metadata:
    """A served model's metadata as a transport read it.

    Attributes:
      signature_defs: a ``tensorflow_serving.apis.get_model_metadata_pb2.SignatureDefMap``.
      version: the version the server resolved (0: the server does not say).
      fingerprint: the SavedModel's fingerprint where the server gives it (tfkd's server, an
        in-process SavedModel), else None (TF Serving).
      origin: what answers, where the protocol says more than the endpoint (the Open Inference
        Protocol's platform, a Vertex AI endpoint's deployed model), else None; it becomes
        :attr:`ServingSignature.origin` when there is no fingerprint.
    """

    signature_defs: typing.Any
    version: int
    fingerprint: str | None = None
    origin: str | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """One batch's answer: ``outputs`` the output asked for as a numpy array [b, ...] (None when
    the answer does not hold it); ``version`` the version that answered where the transport says
    (gRPC), else None."""

    outputs: np.ndarray | None
    version: int | None = None


@typing.runtime_checkable
class Transport(typing.Protocol):
    """One way to reach a served classifier (gRPC, REST, in-process, or a registered scheme).

    A transport is opened by its factory as ``factory(config)`` (a
    :class:`tfkd.teacher.config.ServingConfig`;
    :data:`TRANSPORTS`); opening may raise :class:`tfkd.errors.TransportError` (the model cannot
    be reached) or :class:`tfkd.errors.ConfigError` (an unreadable TLS or token file).

    Attributes:
      address: where it reaches, for messages (``host:port``, a URL, a path).
      metadata_call, predict_call: the names of its two exchanges in messages ("GetModelMetadata",
        "GET metadata", ...).
      envelope_bytes: bytes a request takes beside its images.
      request_limit_bytes: the most bytes a request may take whatever ``max_request_bytes`` says
        (a Vertex AI endpoint's 1.5 MB), or None; optional.
    """

    address: str
    metadata_call: str
    predict_call: str
    envelope_bytes: int

    def image_bytes(self, signature: ServingSignature) -> int:
        """The most bytes one encoded image takes in a request (> 0)."""

    def metadata(self, version: int | None) -> Metadata:
        """One metadata exchange for ``version`` (None: the configured label, else the latest).

        Raises:
          tfkd.errors.TransportError."""

    def predict(self, encoded: np.ndarray, signature: ServingSignature,
                version: int | None) -> Answer:
        """One Predict exchange: ``encoded`` [b, ...] (the signature's input dtype and layout) to
        ``version`` (None: the configured label, else the latest). No retry.

        Raises:
          tfkd.errors.TransportError."""

    def close(self) -> None:
        """Releases what the transport holds (a channel); idempotent."""


@dataclasses.dataclass(frozen=True)
class ServingSignature:
    """A served signature as read (metadata plus overrides).

    Attributes:
      model_name, version, signature_name: the servable answering (version as resolved by the server
        at connect, and pinned in every later request).
      input_key; input_dtype: numpy dtype; input_shape: with -1 for unknown dimensions, batch first
        (rank 4: NHWC; rank 3: no channel axis; () if the metadata does not say); input_scale: the
        value of pixel intensity 1.0.
      output_key; output_dtype: a ``tf.DType``; output_shape: as ``input_shape``.
      origin: what answers, beyond its name and version: ``saved_model:<fingerprint>`` where the
        server gives the SavedModel's fingerprint (tfkd's server: the ``saved_model_fingerprint``
        metadata field), else what the transport reads (:attr:`Metadata.origin`: an Open Inference
        Protocol server's platform, a Vertex AI endpoint's deployed model), else
        ``endpoint:<target>`` (TF Serving, which has no such field). Two servers that both serve
        "teacher" version 1 are then told apart.
    """

    model_name: str
    version: int
    signature_name: str
    input_key: str
    input_dtype: np.dtype
    input_shape: tuple
    input_scale: float
    output_key: str
    output_dtype: tf.DType
    output_shape: tuple
    origin: str = ""


@dataclasses.dataclass(frozen=True)
class TeacherSignature(ServingSignature):
    """The served signature (:class:`ServingSignature`) read as a teacher.

    Attributes:
      output_kind: one of :data:`tfkd.teacher.labels.OUTPUT_KINDS`; num_classes: K (None while the
        metadata cannot say, for class ids: see
        :meth:`tfkd.teacher.TeacherClient.expect_num_classes`).
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


@typing.runtime_checkable
class Teacher(typing.Protocol):
    """What a distillation method may ask a teacher (:class:`tfkd.teacher.TeacherClient`, and
    :class:`tfkd.teacher.cluster.ShardedTeacher` over several workers), whatever answers it: TF
    Serving's gRPC or REST API, or a SavedModel in this process (:mod:`tfkd.teacher.transports`).

    Attributes:
      signature: the :class:`TeacherSignature` read from the model's metadata; its ``identity``
        keys the ledger's answers.
      label_only: the label-only view of a probability teacher was asked for.
      decision_only: answers are one-hot top-1 labels (the label-only view, or a teacher that
        answers class ids).

    Every image sent is charged to one query account (budget, ``queries_sent.log``) before it is
    sent; answers the ledger knows are not sent again. Per-image work other than labelling (a
    search per image) is split with :meth:`shard` and joined with :meth:`gather_rows`: on one
    worker the shard is every row; over a cluster each worker's share.
    """

    signature: TeacherSignature
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

    def shard(self, n: int) -> slice:
        """The rows of ``n`` per-image items this worker handles (one worker: all of them)."""

    def share(self, n: int) -> int:
        """How many of ``n`` images this worker asks about (one worker: ``n``)."""

    def gather_rows(self, mine: np.ndarray, n: int) -> np.ndarray:
        """Every worker's rows of a per-image result in row order: ``mine`` float [share(n), K]
        -> float32 [n, K] (one worker: ``mine``)."""


TRANSPORTS: dict = {}
"""URL scheme -> the transport factory (called as ``factory(config)``, returning a
:class:`Transport`) for targets ``<scheme>://...``: ``http`` and ``https`` (TF Serving's REST API,
the Open Inference Protocol's ``.../v2`` or a Vertex AI ``.../endpoints/E``, told apart by the
path: :func:`tfkd.teacher.transports.open_http`), ``grpc+v2`` (the Open Inference Protocol over
gRPC), ``vertex`` (a Vertex AI endpoint); a target without a scheme (``host:port``,
``unix:path``) is TF Serving's gRPC API. :func:`register_transport` adds one; the client
(:class:`tfkd.teacher.client.ServingClient`) is the one place a target is opened."""


def register_transport(scheme: str, factory) -> None:
    """Makes ``<scheme>://...`` targets open with ``factory(config)`` (a :class:`Transport`)
    wherever a target is opened: the teacher (``tfkd.connect``), the Kubeflow teacher check,
    student measurement (:func:`tfkd.teacher.client.connect`).

    Raises:
      ConfigError: ``scheme`` is not a URL scheme (letters, digits, ``+-.``, a letter first) or is
        already registered to another factory.
    """
    if not (scheme[:1].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        raise errors.ConfigError(f"scheme={scheme!r}: expected a URL scheme (a letter, then "
                                 "letters, digits, '+', '-' or '.')")
    if TRANSPORTS.get(scheme, factory) is not factory:
        raise errors.ConfigError(f"scheme={scheme!r}: already registered to "
                                 f"{getattr(TRANSPORTS[scheme], '__name__', TRANSPORTS[scheme])}")
    TRANSPORTS[scheme] = factory


def scheme(target: str) -> str:
    """The URL scheme of ``target`` (``"http"`` of ``http://host:8501``), "" for gRPC's
    ``host:port`` and ``unix:path``."""
    head, sep, _ = target.partition("://")
    return head.lower() if sep else ""
