"""A model-agnostic client of a served classifier: any signature, over any transport.

:class:`ServingClient` wraps a :class:`tfkd.teacher.protocol.Transport` (TF Serving's gRPC or REST
API, a SavedModel in this process, or a transport registered for a URL scheme) and adds, the same
for every transport, what a transport does not do:

* The contract is read, not assumed: input and output names, dtypes and shapes come from the
  metadata (:class:`ServingSignature`) and can be overridden (:class:`ServingConfig`): float32 or
  uint8 input with a scale (the value that pixel intensity 1.0 maps to), images with or without a
  channel axis.
* Requests stay under ``max_request_bytes`` (the transport says what an image takes), several are in
  flight at once; UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried with exponential
  backoff and full jitter, other errors stop with the server's message
  (:class:`tfkd.errors.ServingClientError`).
* The version the server resolves at connect (``signature.version``) is pinned in every later
  request and checked in every answer: a version deployed under a run, or the pinned one taken
  away, stops the run with one line instead of mixing two models' answers under one identity.

What a query costs (accounting, budget, ledger) is not this module's business: the caller is told of
every attempt before it is sent (``on_attempt``) and may refuse it by raising.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import threading
import time
from typing import Callable

import grpc
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import errors
from tfkd.teacher import account as account_lib
from tfkd.teacher import protocol
from tfkd.teacher import transports
from tfkd.teacher.config import GRPC_DEFAULT_MAX_MESSAGE_BYTES
from tfkd.teacher.config import INPUT_DTYPES
from tfkd.teacher.config import MAX_ANSWER_BYTES
from tfkd.teacher.config import REQUEST_OVERHEAD_BYTES
from tfkd.teacher.config import RetryPolicy
from tfkd.teacher.config import ServingConfig
from tfkd.teacher.config import check_target
from tfkd.teacher.protocol import RETRYABLE_CODES
from tfkd.teacher.protocol import ServingSignature

__all__ = ["ServingClient", "ServingConfig", "ServingSignature", "RetryPolicy", "connect", "top1",
           "accuracy", "check_target", "GRPC_DEFAULT_MAX_MESSAGE_BYTES", "MAX_ANSWER_BYTES",
           "REQUEST_OVERHEAD_BYTES", "SPLIT_FLOOR", "INPUT_DTYPES", "RETRYABLE_CODES"]

SPLIT_FLOOR = 1024
"""A labelling call is split over the requests in flight down to this many images a request, not
below (smaller requests pay more for the transport than concurrency gives back)."""

def _shape(info) -> tuple:
    if info.tensor_shape.unknown_rank:
        return ()
    return tuple(int(d.size) for d in info.tensor_shape.dim)


class ServingClient:
    """A served classifier over a transport: signature reading, encoding, retries, request
    splitting and concurrency.

    Args:
      config: the :class:`ServingConfig`.
      role: how the model is named in messages ("teacher", "student", "model").
      transport: the transport's factory, called as ``transport(config)``; default: the one
        ``config.target``'s scheme names (:func:`tfkd.teacher.transports.transport_for`), which
        then requires a target.

    The version the server resolves at connect (:attr:`ServingSignature.version`) is pinned: every
    later request names it, and an answer from another version, or NOT_FOUND once it is no longer
    served (a new version deployed under the run), stops the call with one line
    (:class:`ServingClientError`, not retried) rather than mixing two models' answers.

    Raises:
      ServingClientError: the server is unreachable within ``connect_timeout_s`` (the message names
        the address and why); it answered an error (``code`` set: NOT_FOUND for an unknown model,
        ...); or the signature has no input or output usable as images in, one tensor out.
      ConfigError: contradictory or unreadable settings (both version and label, a missing TLS
        file, an unreadable token file).
    """

    def __init__(self, config: ServingConfig, role: str = "model",
                 transport: Callable[[ServingConfig], protocol.Transport] | None = None):
        config.validate(require_target=transport is None)
        self.config = config
        self.role = role
        self.requests = 0  # Predict requests sent, retries included.
        self.retries = 0  # Attempts after a retryable error.
        self._counter_lock = threading.Lock()
        self._rng = random.Random()
        self._pinned_version: int | None = None  # Set once the server has resolved it.
        self.transport: protocol.Transport | None = None
        try:
            self.transport = (transport or transports.transport_for(config.target))(config)
        except errors.TransportError as e:
            raise errors.ServingClientError(f"{self.name}: {e.details}", e.code) from None
        try:
            self.signature = self._read_signature()
        except BaseException:
            self.close()
            raise
        logging.debug("Connected to %s: %s", self.name, self.signature)

    @property
    def name(self) -> str:
        """``<role> '<model>' at <address>``, for messages."""
        where = self.transport.address if self.transport is not None else self.config.target
        return f"{self.role} {self.config.model_name!r}" + (f" at {where}" if where else "")

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"ServingClient({self.transport!r}, {self.config.model_name!r})"

    def _request_version(self) -> int | None:
        """The version a request names: the one resolved at connect, else (while connecting) the
        configured one; None: the configured label, else the server's latest."""
        return self.config.version if self._pinned_version is None else self._pinned_version

    def _call(self, send: Callable, what: str, before_retry=None):
        """``send()`` (one exchange) with retries on the retryable codes; other errors raise
        :class:`ServingClientError`. ``before_retry()`` runs before each retry is sent."""
        attempt = 0
        while True:
            try:
                return send()
            except errors.TransportError as e:
                code = e.code
                if (e.retryable and code in RETRYABLE_CODES
                        and attempt + 1 < self.config.retry.max_attempts):
                    delay = self.config.retry.backoff(attempt, self._rng)
                    logging.warning("%s: %s %s (%s); retry %d/%d in %.2f s", self.name, what,
                                    code.name, (e.details or "")[:200], attempt + 1,
                                    self.config.retry.max_attempts - 1, delay)
                    with self._counter_lock:
                        self.retries += 1
                    attempt += 1
                    time.sleep(delay)
                    if before_retry is not None:
                        before_retry()
                    continue
                if code is None:
                    raise errors.ServingClientError(f"{self.name}: {e.details}") from None
                raise errors.ServingClientError(f"{self.name}: {what} failed with {code.name}: "
                                         f"{e.details}" + (f" (after {attempt + 1} attempts)"
                                                           if attempt else ""), code) from None

    def _counted_call(self, send: Callable, what: str, n: int, on_attempt=None):
        """:meth:`_call` of a request of ``n`` images: ``on_attempt(n, retry)`` and the request
        count before every attempt, the first and each retry."""
        def attempt(retry: bool):
            if on_attempt is not None:
                on_attempt(n, retry)
            with self._counter_lock:
                self.requests += 1

        attempt(False)
        return self._call(send, what, before_retry=lambda: attempt(True))

    def _pinned_call(self, send: Callable, what: str, n: int, on_attempt=None):
        """:meth:`_counted_call` of a request that names the pinned version: NOT_FOUND then means
        the version is no longer served, and says so (with the version served now)."""
        try:
            return self._counted_call(send, what, n, on_attempt)
        except errors.ServingClientError as e:
            if e.code != grpc.StatusCode.NOT_FOUND or self._pinned_version is None:
                raise
            served = self._served_version()
            now = (f"version {served} was deployed under the run? rerun to label with it"
                   if served not in (None, self._pinned_version) else
                   "the server names no other version now; rerun once it serves one")
            raise errors.ServingClientError(
                f"{self.role} {self.config.model_name!r} version {self._pinned_version} is no "
                f"longer served at {self.config.target} ({what}: NOT_FOUND); {now}",
                grpc.StatusCode.NOT_FOUND) from None

    def _served_version(self) -> int | None:
        """The version the server resolves now for the configured label, else its latest (one
        metadata exchange, not retried), or None when it cannot say."""
        try:
            return self.transport.metadata(None).version or None
        except errors.TransportError:
            return None

    def _named_signature(self, signature_map):
        """The SignatureDef ``signature_name`` of a SignatureDefMap. Raises ServingClientError."""
        name = self.config.signature_name
        if name not in signature_map.signature_def:
            raise errors.ServingClientError(f"{self.name}: no signature {name!r}; it has "
                                     f"{sorted(signature_map.signature_def)}")
        return signature_map.signature_def[name]

    def _pick(self, tensors, key: str | None, what: str, preferred: str | None = None) -> str:
        """The input or output alias to use: ``key`` if given, else ``preferred``, else the only one."""
        setting = f"teacher.{what}_key" if self.role == "teacher" else f"{what}_key"
        if key is None:
            if preferred is not None and preferred in tensors:
                return preferred
            if len(tensors) != 1:
                raise errors.ServingClientError(f"{self.name}: several {what}s {sorted(tensors)}; name the "
                                         f"one to use ({setting})")
            return next(iter(tensors))
        if key not in tensors:
            raise errors.ServingClientError(f"{self.name}: {what}_key={key!r} not in {what}s "
                                     f"{sorted(tensors)}")
        return key

    def _read_signature(self) -> ServingSignature:
        metadata = self._call(lambda: self.transport.metadata(self._request_version()),
                              self.transport.metadata_call)
        signature = self._named_signature(metadata.signature_defs)
        self._pinned_version = metadata.version or None  # 0: the server does not say.
        config = self.config
        input_key = self._pick(signature.inputs, config.input_key, "input")
        output_key = self._pick(signature.outputs, config.output_key, "output", "probabilities")
        input_info, output_info = signature.inputs[input_key], signature.outputs[output_key]
        served_dtype = tf.dtypes.as_dtype(input_info.dtype)
        dtype = np.dtype(config.input_dtype or served_dtype.as_numpy_dtype)
        if dtype.name not in INPUT_DTYPES:
            raise errors.ServingClientError(f"{self.name}: input {input_key!r} is {dtype.name}; tfkd sends "
                                     f"{INPUT_DTYPES} images")
        scale = float(config.input_scale) if config.input_scale else (255.0 if dtype == np.uint8
                                                                      else 1.0)
        input_shape = _shape(input_info)
        if input_shape and len(input_shape) not in (3, 4):
            raise errors.ServingClientError(f"{self.name}: input {input_key!r} has shape "
                                     f"{list(input_shape)}; expected images [batch, H, W] or "
                                     "[batch, H, W, C]")
        origin = (f"saved_model:{metadata.fingerprint}" if metadata.fingerprint
                  else metadata.origin or f"endpoint:{config.target}")
        return ServingSignature(
            model_name=config.model_name, version=metadata.version,
            signature_name=config.signature_name, input_key=input_key, input_dtype=dtype,
            input_shape=input_shape, input_scale=scale, output_key=output_key,
            output_dtype=tf.dtypes.as_dtype(output_info.dtype), output_shape=_shape(output_info),
            origin=origin)

    @property
    def images_per_request(self) -> int:
        """Images per Predict request so that the request stays under ``max_request_bytes`` and
        the transport's own limit where it has one (its envelope and bytes per image, for images
        of the signature's shape)."""
        return self._images_per_request(self.signature.input_shape)

    def _images_per_request(self, shape: tuple) -> int:
        """:attr:`images_per_request` for encoded images of ``shape`` (batch first): the bytes an
        image takes are those of the images sent, also where the signature does not say its shape
        (a Vertex AI endpoint)."""
        limit = getattr(self.transport, "request_limit_bytes", None)
        room = (min(self.config.max_request_bytes, limit or self.config.max_request_bytes)
                - self.transport.envelope_bytes)
        signature = dataclasses.replace(self.signature, input_shape=tuple(shape))
        return max(1, room // self.transport.image_bytes(signature))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [n, H, W, C] in [0, 1] -> the signature's input (dtype, scale, layout).

        Raises:
          ConfigError: images that do not fit the signature's shape, naming both.
        """
        images = np.asarray(images)
        expected = self.signature.input_shape
        if images.ndim != 4:
            raise errors.ConfigError(f"images: expected float32 [n, H, W, C] in [0, 1], got shape "
                                     f"{list(images.shape)}")
        if len(expected) == 3:  # The model takes [batch, H, W]: drop a single channel.
            if images.shape[-1] != 1:
                raise errors.ConfigError(f"images: {self.name} takes [batch, H, W] (one channel), "
                                         f"got {list(images.shape)}")
            images = images[..., 0]
        if expected and any(e > 0 and e != s for e, s in zip(expected[1:], images.shape[1:])):
            raise errors.ConfigError(f"images: expected shape {list(expected)} (-1: any) for "
                                     f"{self.name}, got {list(images.shape)}")
        scale = np.float32(self.signature.input_scale)
        if self.signature.input_dtype == np.uint8:
            return np.round(np.clip(images.astype(np.float32) * scale, 0, 255)).astype(np.uint8)
        encoded = np.asarray(images, dtype=self.signature.input_dtype)  # No copy when it fits.
        return encoded * scale if scale != 1 else encoded

    def predict_raw(self, encoded: np.ndarray,
                    on_attempt: Callable[[int, bool], None] | None = None) -> np.ndarray:
        """One Predict request of already-encoded images, retried as the policy says.

        Args:
          encoded: the signature's input, [b, ...] (see :meth:`encode`).
          on_attempt: called as ``on_attempt(b, retry)`` before every attempt is sent (the first
            with ``retry=False``); an exception it raises stops the request unsent.

        Returns:
          the raw output array of ``output_key``.

        Raises:
          ServingClientError: the server's error; an answer without the output; an answer from
            another version than the pinned one (FAILED_PRECONDITION) or the pinned version no
            longer served (NOT_FOUND), neither retried.
        """
        version = self._request_version()
        answer = self._pinned_call(
            lambda: self.transport.predict(encoded, self.signature, version),
            self.transport.predict_call, len(encoded), on_attempt)
        if None not in (answer.version, self._pinned_version) and answer.version != self._pinned_version:
            raise errors.ServingClientError(
                f"{self.role} {self.config.model_name!r} at {self.config.target}: answered by "
                f"version {answer.version}, but this run labels with version "
                f"{self._pinned_version} (resolved at connect); was version {answer.version} "
                "deployed under the run? rerun to label with it",
                grpc.StatusCode.FAILED_PRECONDITION)
        if answer.outputs is None:
            raise errors.ServingClientError(f"{self.name}: the answer has no output "
                                     f"{self.signature.output_key!r}")
        return answer.outputs

    def predict(self, encoded: np.ndarray, rows: np.ndarray | None = None,
                convert: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                on_attempt: Callable[[int, bool], None] | None = None,
                progress=False) -> np.ndarray:
        """Predicts ``encoded[rows]`` split evenly over ``max_in_flight`` concurrent requests, each
        under the message limit (:attr:`images_per_request`) and of at least :data:`SPLIT_FLOOR`
        images, as one ``tensor_content`` buffer (rows sliced without a copy when contiguous).

        Args:
          encoded: the signature's input for n images (see :meth:`encode`).
          rows: int64 indices into ``encoded`` to send (default: all), ascending.
          convert: ``convert(idx, raw) -> float32 [len(idx), K]`` checks and converts each answer as
            it arrives (the teacher persists it there); default: the raw output as float32.
          on_attempt: see :meth:`predict_raw`.
          progress: show a progress bar (:class:`tfkd.teacher.account.QueryProgress`, images per
            second); or a factory ``progress(total) -> bar`` of one (the teacher's: with the
            budget left).

        Returns:
          float32 [len(rows), K], in the order of ``rows``.

        Raises:
          ServingClientError, and what ``convert`` or ``on_attempt`` raise (requests not yet sent
          are cancelled).
        """
        rows = np.arange(len(encoded)) if rows is None else np.asarray(rows, np.int64)
        # Split evenly over the requests in flight (each under the message limit, none below
        # SPLIT_FLOOR images): one large batch becomes concurrent requests.
        step = min(self._images_per_request((-1, *np.shape(encoded)[1:])),
                   max(SPLIT_FLOOR, -(-len(rows) // self.config.max_in_flight)))
        chunks = [rows[s:s + step] for s in range(0, len(rows), step)]
        convert = convert or (lambda idx, raw: np.asarray(raw, np.float32))
        bar = None
        if progress and len(rows):
            bar = (progress(len(rows)) if callable(progress)
                   else account_lib.QueryProgress(len(rows), "image"))

        def one(position: int):
            idx = chunks[position]
            contiguous = idx[-1] - idx[0] + 1 == len(idx)  # A slice is a view: no copy.
            raw = self.predict_raw(encoded[idx[0]:idx[-1] + 1] if contiguous else encoded[idx],
                                   on_attempt)
            answer = convert(idx, raw)
            if len(answer) != len(idx):
                raise errors.ServingClientError(f"{self.name}: answered {len(answer)} rows for "
                                         f"{len(idx)} images")
            return position, answer

        answers: list = [None] * len(chunks)
        with concurrent.futures.ThreadPoolExecutor(self.config.max_in_flight) as pool:
            futures = [pool.submit(one, p) for p in range(len(chunks))]
            try:
                for future in concurrent.futures.as_completed(futures):
                    position, answers[position] = future.result()
                    if bar is not None:
                        bar.add(len(chunks[position]))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return np.concatenate(answers) if answers else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        """Closes the transport."""
        if self.transport is not None:
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(target: str, model_name: str = "model", role: str = "model",
            **fields) -> ServingClient:
    """The client of the model ``model_name`` at ``target`` over the transport its scheme names
    (``http(s)://`` REST, ``host:port`` gRPC, a registered scheme), with ``ServingConfig(target=
    target, model_name=model_name, **fields)``; ``role`` names it in messages. For a teacher (its
    query account, ledger and budget) use :func:`tfkd.connect`. Raises as :class:`ServingClient`."""
    return ServingClient(ServingConfig(target=target, model_name=model_name, **fields), role)


def top1(client: ServingClient, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """A served classifier's top-1 classes int64 [n] for float32 images [n, H, W, C] in [0, 1].

    The output read is per-class scores [n, K] (probabilities or logits: the argmax is the
    prediction) or, for an integer output, the class ids [n] themselves.
    """
    answers = client.predict(client.encode(images), progress=progress)
    if client.signature.output_dtype.is_integer:
        return answers.reshape(-1).astype(np.int64)
    return answers.argmax(axis=1).astype(np.int64)


def accuracy(client: ServingClient, images: np.ndarray, labels: np.ndarray,
             progress: bool = False) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of a served classifier on labelled images
    (:func:`top1`; labels int [n] in [0, K))."""
    return float(np.mean(top1(client, images, progress) == np.asarray(labels).reshape(-1)))
