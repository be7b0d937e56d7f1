"""Servables and the model registry: which versions of which models are loaded.

A :class:`ModelConfig` is one entry of TF Serving's ``model_config_list``, with its version policy
(``latest`` N, ``all``, ``specific``) and version labels; the :class:`ModelRegistry` loads the versions
each policy wants from the base paths (as TF Serving's file-system source does when it polls),
unloads the others, and resolves a request's model spec to a :class:`Servable`, answering NOT_FOUND
in TF Serving's words otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import grpc
import tensorflow as tf
from absl import logging

from tfkd import export
from tfkd import fs
from tfkd.errors import ConfigError
from tfkd.errors import ServingError

DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass
class Servable:
    """One loaded version of one model.

    Attributes:
      name: model name.
      version: numeric version (the directory name).
      path: the version directory.
      signature_defs: SignatureDef protos by signature key, as the format's loader gives them (for
        a SavedModel: as stored in ``saved_model.pb``).
      loaded: the :class:`tfkd.export.LoadedVersion` its format's loader returned (its
        ``signatures`` are what requests run).
      fingerprint: what the model is, whatever its name and version
        (:attr:`tfkd.export.LoadedVersion.fingerprint`: for a SavedModel, TensorFlow's SavedModel
        fingerprint, else a SHA-256 of its files). tfkd's server answers it as the
        ``saved_model_fingerprint`` metadata field (TF Serving has none: its clients fall back to
        the endpoint's address).
    """

    name: str
    version: int
    path: str
    signature_defs: dict
    loaded: object
    warmup_requests: int = 0
    fingerprint: str = ""

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        """Loads a version by its format's loader (:func:`tfkd.export.format_of`: the first
        registered format whose marker file the directory holds: a SavedModel, the int8 LiteRT
        model, or a registered format's) and replays its warmup requests (:meth:`warmup`).

        A format whose signatures raise its ``model_errors`` (a LiteRT interpreter that fails on a
        request the signature accepts) answers INTERNAL, in one line naming the model, the version,
        the marker file and the reason.

        Raises:
          tfkd.errors.ConfigError: no registered format's marker file there; what the loader
            raises (a damaged LiteRT model fails its test run here).
          ServingError: a warmup request fails.
        """
        fmt = export.format_of(path)
        loaded = fmt.loader(path)
        if loaded.model_errors:
            loaded = dataclasses.replace(loaded, signatures={
                key: _internal_on_failure(fn, name, version, loaded, fmt.marker)
                for key, fn in loaded.signatures.items()})
        servable = cls(name, version, path, dict(loaded.signature_defs), loaded,
                       fingerprint=loaded.fingerprint)
        servable.warmup()
        return servable

    def warmup(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` (Predict records), as TF Serving does.

        Returns:
          the number of requests replayed.

        Raises:
          ServingError: a warmup request fails (the version is then not served).
        """
        from tensorflow_serving.apis import prediction_log_pb2

        from tfkd.serving import signatures

        path = os.path.join(self.path, export.WARMUP_FILE)
        if not fs.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            signatures.run_signature(self, request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs,
                          list(request.output_filter))
            count += 1
        self.warmup_requests = count
        logging.info("Servable %s version %d: %d warmup requests replayed", self.name,
                     self.version, count)
        return count


def _internal_on_failure(fn, name: str, version: int, loaded, marker: str):
    """A signature whose model failures (``loaded.model_errors``, e.g.
    :class:`tfkd.errors.InterpreterError`: the request matched the signature, so the model
    is at fault) answer INTERNAL, in one line naming the model, the version, the marker file and
    the reason (not the server's file path)."""
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except loaded.model_errors as e:
            reason = getattr(e, "reason", None) or " ".join(str(e).split())
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"{shown_name(name)} version {version}: its {loaded.runtime} model "
                               f"({marker}) failed to run: {reason}") from None
    return call


MAX_SHOWN_NAME = 256
"""Characters of a client's model name or label echoed back in an error message."""


def shown_name(name: str) -> str:
    """``name`` as an error message echoes it: at most :data:`MAX_SHOWN_NAME` characters (a client
    may send a megabyte-long name; echoed whole it trips the client's metadata limit)."""
    if len(name) <= MAX_SHOWN_NAME:
        return name
    return f"{name[:MAX_SHOWN_NAME]}... ({len(name)} characters)"


@dataclasses.dataclass
class ModelConfig:
    """One entry of a ``models.config`` (TF Serving's ``ModelServerConfig.model_config_list``).

    Attributes:
      name: the model name clients put in the model spec.
      base_path: directory of numeric version directories.
      version_policy: ``latest`` (the ``num_versions`` newest), ``all``, or ``specific``
        (``versions``), as TF Serving's ``ServableVersionPolicy``.
      version_labels: label -> version, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = 1
    versions: tuple = ()
    version_labels: dict = dataclasses.field(default_factory=dict)

    def wanted(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of ``available`` (ascending)."""
        if self.version_policy == "all":
            return sorted(available)
        if self.version_policy == "specific":
            return sorted(v for v in available if v in set(self.versions))
        return sorted(available)[-max(1, self.num_versions):]



class ModelRegistry:
    """The servables of every configured model, thread-safe, refreshed from the base paths."""

    def __init__(self, models: list[ModelConfig]):
        self._lock = threading.Lock()
        self._configs: dict[str, ModelConfig] = {}
        self._servables: dict[str, dict[int, Servable]] = {}
        # (name, version) -> the (size, mtime) of its format's marker file when its load failed:
        # logged once, tried again only once the file changes.
        self._failed: dict[tuple[str, int], tuple] = {}
        self.configure(models)

    def configure(self, models: list[ModelConfig]) -> None:
        """Replaces the set of models (``HandleReloadConfigRequest``); call :meth:`refresh` after.

        Raises:
          ConfigError: duplicate names, or an unknown version policy.
        """
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"models: duplicate model names in {names}")
        for m in models:
            if m.version_policy not in ("latest", "all", "specific"):
                raise ConfigError(f"model {m.name!r}: version_policy={m.version_policy!r}: "
                                  "expected latest, all or specific")
        with self._lock:
            self._configs = {m.name: m for m in models}
            self._servables = {m.name: self._servables.get(m.name, {}) for m in models}

    def model_configs(self) -> list[ModelConfig]:
        """The models configured (whether or not a version is loaded)."""
        with self._lock:
            return list(self._configs.values())

    def refresh(self) -> None:
        """Loads the versions each policy wants and unloads the others, preserving availability as
        TF Serving's default policy does: while a wanted version fails to load, the versions it
        would replace stay served (a damaged new version never takes a healthy model offline).
        A failed load (an unreadable SavedModel, a failing warmup request, a LiteRT model that
        fails its test run) is logged once and tried again only when its format's marker file
        (``saved_model.pb``, ``model.tflite``, a registered format's) changes."""
        with self._lock:
            configs = list(self._configs.values())
        for config in configs:
            wanted = config.wanted(export.list_versions(config.base_path))
            with self._lock:
                loaded = dict(self._servables.get(config.name, {}))
            failed = [v for v in wanted if v not in loaded and not self._load(config, v, loaded)]
            if not wanted:  # Keep serving what we have while a base path is briefly empty.
                continue
            keep = {v: loaded[v] for v in wanted if v in loaded}
            if failed:  # The versions they would have replaced stay until they load.
                keep.update({v: s for v, s in loaded.items() if v not in keep})
            with self._lock:
                if config.name in self._configs:
                    self._servables[config.name] = keep

    def _load(self, config: ModelConfig, version: int, loaded: dict) -> bool:
        """Loads one version into ``loaded``; False when it failed (now or, unchanged, before)."""
        path = os.path.join(config.base_path, str(version))
        key = (config.name, version)
        fmt = export.detect_format(path)
        present = None if fmt is None else fmt.marker
        marker = os.path.join(path, present or "x")
        try:
            stat = os.stat(marker) if fs.is_local(path) else None
            stamp = None if stat is None else (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        if key in self._failed and self._failed[key] == stamp:
            return False  # Logged already; tried again when the file changes.
        try:
            loaded[version] = Servable.load(config.name, version, path)
        except Exception as e:  # A bad version must not take the server down.
            self._failed[key] = stamp
            logging.error("Failed to load servable %s version %d from %s (not retried until its "
                          "%s changes; the versions it would replace stay served): %s",
                          config.name, version, path, present or "model file", str(e)[:500])
            return False
        self._failed.pop(key, None)
        logging.info("Serving %s version %d from %s", config.name, version, path)
        return True

    def resolve(self, model_spec) -> Servable:
        """The servable a request's ``ModelSpec`` asks for.

        Raises:
          ServingError: NOT_FOUND for an unknown model, version or label, as TF Serving words it.
        """
        name = model_spec.name
        shown = shown_name(name)
        with self._lock:
            versions = self._servables.get(name)
            if name not in self._configs or not versions:
                if model_spec.HasField("version"):
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({shown}, "
                                       f"{model_spec.version.value})")
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({shown})")
            if model_spec.HasField("version"):
                version = model_spec.version.value
                if version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({shown}, {version})")
                return versions[version]
            if model_spec.version_label:
                label = model_spec.version_label
                version = self._configs[name].version_labels.get(label)
                if version is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {shown_name(label)}")
                if version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({shown}, {version})")
                return versions[version]
            return versions[max(versions)]

    def versions(self, name: str) -> list[Servable]:
        with self._lock:
            if name not in self._configs or not self._servables.get(name):
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {shown_name(name)}")
            return [self._servables[name][v] for v in sorted(self._servables[name])]

