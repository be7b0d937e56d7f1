"""The work dir: artifacts reused by fingerprint, validated before reuse, locked while in use.

Every stage of :func:`tfkd.pipeline.run` that makes something worth keeping names it with
:func:`artifact_path` (a fingerprint of everything it depends on) and gets it through
:func:`reuse_or_build`: a rerun with the same settings reuses it, one with other settings makes its
own, and a crash loses nothing already made.


Artifact names are built by one function, :meth:`ArtifactStore.path` (the run's inputs and the
maker's settings). Before a run reuses anything, :func:`check` opens every artifact it may read
(:data:`ARTIFACTS`: the ledger's answer files, the transfer set, the CVAE weights, the DB3KD,
ZSDB3KD and Data Impression search states, the student's training state and the teacher tfkd
trained), and :func:`reuse_or_build` sets aside whatever fails to load. A damaged one (truncated
by a crash of another tool, a full disk, ...) is named in one warning and *set aside* — renamed to
``<name>.damaged-<unix time>`` beside it, never deleted — so the run recomputes it from what is still
sound: a damaged ledger file costs at most its own queries, a damaged transfer set is rebuilt from
the ledger (no queries), damaged CVAE weights or student state are retrained. The query account's
log (``ledger/queries_sent.log``) is append-only and read line by line by
:class:`tfkd.teacher.QueryAccount`, which skips a damaged line with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time

from absl import logging

from tfkd import errors
from tfkd import fs


def check_npz(path: str, keys: tuple[str, ...], other_keys: tuple[str, ...] = ()) -> None:
    """``keys``: per-row arrays of one length; ``other_keys``: arrays that must be readable."""
    with fs.load_npz(path) as f:
        arrays = [f[k] for k in keys]  # Reading each member checks its CRC.
        for k in other_keys:
            f[k]
    if len({len(a) for a in arrays}) != 1:
        raise errors.WorkdirError(f"{path}: arrays {keys} have lengths {[len(a) for a in arrays]}; "
                                  "expected one length (one row per image)")


def check_readable_npz(path: str) -> None:
    """Every member of an npz readable (each read checks its CRC): search and synthesis states."""
    with fs.load_npz(path) as f:
        for k in f:
            f[k]


def check_h5(path: str) -> None:
    """A Keras ``.weights.h5`` file: readable, every dataset in it read."""
    import h5py

    with h5py.File(path if fs.is_local(path) else io.BytesIO(fs.read_bytes(path)), "r") as f:
        f.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)


def _check_json(path: str) -> None:
    json.loads(fs.read_text(path))


def _read_every_tensor(checkpoint_prefix: str) -> None:
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix)  # Not via isdir: ram://.
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def _check_checkpoint(directory: str) -> None:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        raise errors.WorkdirError(f"{directory}: its checkpoint file names no readable checkpoint")
    _read_every_tensor(latest)


def _check_saved_model(path: str) -> None:
    """``path``: a version's saved_model.pb; its graph and every variable are read back."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model_pb2.SavedModel().ParseFromString(fs.read_bytes(path))
    variables = os.path.join(os.path.dirname(path), "variables", "variables")
    if fs.exists(variables + ".index"):
        _read_every_tensor(variables)


def _check_answers(path: str, keys: tuple, targets: str, other_keys: tuple = ()) -> None:
    """An npz of stored teacher answers: readable, and ``targets`` are distributions (finite, in
    [0, 1], rows summing to 1: :func:`tfkd.teacher.check_soft_labels`). A NaN answer once passed
    a sum check (every comparison with NaN is false) and trained a student to ``loss: nan``."""
    from tfkd import teacher

    check_npz(path, keys, other_keys)
    with fs.load_npz(path) as f:
        teacher.check_soft_labels(f[targets], targets)


# (glob under the work dir, what it is, checker, the path set aside: the file or its directory);
# a method's own state is added by its package (register_artifact).
ARTIFACTS = [
    ("teacher/*/saved_model.pb", "teacher SavedModel", _check_saved_model, "dir"),
    ("teacher/recipe.json", "teacher recipe", _check_json, "file"),
    ("ledger/*.npz", "ledger answers",
     lambda p: _check_answers(p, ("keys", "soft_labels"), "soft_labels"), "file"),
    ("transfer_set-*.npz", "transfer set", lambda p: _check_answers(
        p, ("images", "targets", "source"), "targets", ("source_names",)), "file"),
    ("student_backup-*/*.weights.h5", "student training state", check_h5, "dir"),
    ("student_backup-*/training_metadata.json", "student training state", _check_json, "dir"),
    ("student_backup-*/checkpoint", "student training state",
     lambda p: _check_checkpoint(os.path.dirname(p)), "dir"),
    ("student_backup-*/*/checkpoint", "student training state (worker)",
     lambda p: _check_checkpoint(os.path.dirname(p)), "dir"),
]


def register_artifact(pattern: str, what: str, checker, scope: str = "file") -> None:
    """Adds a kind of artifact :func:`check` validates before a run (a method's own state).

    Args:
      pattern: a glob under the work dir (``<stem>-*<suffix>`` for :meth:`ArtifactStore.path`).
      what: the kind, in words, for the warning and ``report.json``'s ``damaged_artifacts``.
      checker: ``checker(path)`` raises if the file cannot be trusted.
      scope: ``file`` (set the file aside) or ``dir`` (its directory).

    Raises:
      tfkd.errors.ConfigError: a pattern already registered, or a scope other than
        ``file``/``dir``.
    """
    if scope not in ("file", "dir"):
        raise errors.ConfigError(f"scope={scope!r}: expected 'file' or 'dir'")
    if any(p == pattern for p, *_ in ARTIFACTS):
        raise errors.ConfigError(f"pattern={pattern!r}: already registered")
    ARTIFACTS.append((pattern, what, checker, scope))


def write_json(path: str, value) -> str:
    """Writes ``value`` as indented, key-sorted JSON atomically (:func:`tfkd.fs.write_atomic`).
    Returns ``path``."""
    return fs.write_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def set_aside(path: str) -> str:
    """Renames ``path`` (file or directory) to ``<path>.damaged-<unix time>``; returns the new path."""
    moved = f"{path}.damaged-{int(time.time())}"
    fs.replace(path, moved)
    return moved


def check(workdir: str) -> list[dict]:
    """Validates every artifact a run may read from ``workdir``; sets damaged ones aside.

    Returns:
      one dict per damaged artifact: ``path`` (where it was), ``what``, ``error`` (one line) and
      ``moved_to``; empty when all are sound. Each is also named in one absl warning.
    """
    damaged = []
    for pattern, what, checker, scope in ARTIFACTS:
        for path in fs.glob(os.path.join(workdir, pattern)):
            if not fs.exists(path):  # Its directory was set aside by an earlier check.
                continue
            try:
                checker(path)
            except Exception as e:  # Any failure to read it back means it cannot be trusted.
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                target = path if scope == "file" else os.path.dirname(path)
                moved = set_aside(target)
                logging.warning("Work dir: %s %s is damaged (%s); set aside as %s and recomputed",
                                what, path, error, moved)
                damaged.append({"path": path, "what": what, "error": error, "moved_to": moved})
    return damaged


UNUSABLE_ROOTS = ("/proc", "/sys", "/dev")
"""Local file systems that are not storage: a work dir there is refused by name."""


def check_usable(directory: str, what: str = "workdir") -> None:
    """Checks, before any work, that ``directory`` can hold a run's files: it is (or can be made) a
    directory, it is not under a pseudo file system (:data:`UNUSABLE_ROOTS`), and a file can be
    written and removed there (a read-only mount, a full disk, missing permissions fail here, not
    after training).

    Raises:
      WorkdirError: one line naming ``what``, the path and the cause.
    """
    import tensorflow as tf

    if fs.is_local(directory):
        real = os.path.realpath(directory)
        root = next((r for r in UNUSABLE_ROOTS if real == r or real.startswith(r + "/")), None)
        if root is not None:
            raise WorkdirError(f"{what}={directory!r}: under {root}, a pseudo file system, not "
                               "storage; choose a directory on a disk")
        if os.path.exists(real) and not os.path.isdir(real):
            raise WorkdirError(f"{what}={directory!r}: is a file, not a directory")
    probe = os.path.join(directory, f".tfkd-write-probe-{os.getpid()}")
    try:
        fs.makedirs(directory)
        fs.write_atomic(probe, b"probe")
        fs.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise WorkdirError(f"{what}={directory!r}: cannot write there "
                           f"({str(reason).splitlines()[0][:200]})") from None


WorkdirError = errors.WorkdirError


@contextlib.contextmanager
def lock(workdir: str):
    """Holds an exclusive lock on ``workdir`` for a run: ``fcntl.flock`` on ``<workdir>/.lock`` on
    a local disk; elsewhere (``gs://``, ``ram://``, ...) a lock file naming its holder, removed at
    the end (best effort: object stores have no exclusive create; a run killed hard leaves it, and
    the message says to remove it).

    Raises:
      WorkdirError: another process holds it (its pid is named); nothing was done.
    """
    if not fs.is_local(workdir):
        with _lock_file(workdir):
            yield
        return
    import fcntl

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(f"workdir={workdir!r} is in use by another run (pid {holder}); wait "
                               "for it or use another workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # Releases the lock.


@contextlib.contextmanager
def _lock_file(workdir: str):
    import socket

    fs.makedirs(workdir)
    path = os.path.join(workdir, ".lock")
    if fs.exists(path):
        holder = fs.read_text(path).strip() or "unknown"
        raise WorkdirError(f"workdir={workdir!r} is in use by another run ({holder}); wait for it, "
                           f"or remove {path} if that run is gone, or use another workdir")
    fs.write_atomic(path, f"pid {os.getpid()} on {socket.gethostname()}")
    try:
        yield
    finally:
        fs.remove(path)


def check_recipe(path: str, recipe: dict, what: str, assume_if_missing: bool = False) -> dict:
    """Records what made an artifact, or checks a reused artifact against it.

    Args:
      path: the JSON file beside the artifact (e.g. ``teacher/recipe.json``).
      recipe: JSON-able settings that made (or would make) the artifact.
      what: the artifact, in messages.
      assume_if_missing: the artifact existed before this run but its record does not: record this
        run's settings with ``assumed: true`` (and warn) instead of silently.

    Returns:
      the recorded recipe (``recipe`` when it is recorded now).

    Raises:
      WorkdirError: the artifact was made with other settings (the differences are named).
    """
    recipe = json.loads(json.dumps(recipe, sort_keys=True, default=str))
    if not fs.exists(path) and assume_if_missing:
        logging.warning("%s in %s has no record of the settings that made it (%s is missing or was "
                        "set aside); assuming this run's settings", what, os.path.dirname(path),
                        os.path.basename(path))
        recipe = {**recipe, "assumed": True}
    if fs.exists(path):
        recorded = json.loads(fs.read_text(path))
        if {k: v for k, v in recorded.items() if k != "assumed"} != \
                {k: v for k, v in recipe.items() if k != "assumed"}:
            diff = {k: (recorded.get(k), recipe.get(k)) for k in sorted(set(recorded) | set(recipe))
                    if recorded.get(k) != recipe.get(k) and k != "assumed"}
            raise WorkdirError(
                f"{what} in {os.path.dirname(path)} was made with other settings "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                "use another workdir, or the same settings to reuse it")
        return recorded
    write_json(path, recipe)
    return recipe


def fingerprint(*parts) -> str:
    """A 10-hex-digit SHA-1 digest of JSON-able parts (dataclasses are turned into dicts)."""
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x
    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def artifact_path(workdir: str, stem: str, suffix: str, *parts) -> str:
    """``<workdir>/<stem>-<fingerprint(parts)><suffix>``: the name of an artifact made from
    ``parts`` (configs, seed, the teacher's identity, ...)."""
    return os.path.join(workdir, f"{stem}-{fingerprint(*parts)}{suffix}")


def reuse_or_build(path: str, build, save, load, what: str):
    """The artifact at ``path``: loaded if it is there and loads, else built and saved.

    Args:
      path: where the artifact lives (see :func:`artifact_path`); :func:`check` has already set a
        damaged one of a known kind aside.
      build: ``build() -> value``, run only when ``path`` is absent or does not load.
      save: ``save(value, path)``, atomic (temp name, then rename).
      load: ``load(path) -> value``; whatever it raises means the file cannot be trusted: it is
        set aside (:func:`set_aside`) and the artifact built again.
      what: the artifact, for the log lines.

    Returns:
      (value, reused: bool).
    """
    if fs.exists(path):
        try:
            value = load(path)
            logging.info("%s: reusing %s", what, path)
            return value, True
        except Exception as e:  # noqa: BLE001 - any failure to read it back: not to be trusted.
            moved = set_aside(path)
            logging.warning("Work dir: %s %s does not load (%s: %s); set aside as %s and rebuilt",
                            what, path, type(e).__name__, str(e).splitlines()[0][:200] if str(e)
                            else "", moved)
    value = build()
    save(value, path)
    return value, False


@dataclasses.dataclass(frozen=True)
class ArtifactStore:
    """Where a run's artifacts live, and the one function that names them.

    Every artifact of a run depends on the run's inputs (``inputs``: the dataset or image source,
    the seed, N, the teacher's identity and view) and on the settings of what makes it (``parts``).
    :meth:`path` fingerprints both, so two image folders, two teachers or two seeds in one work dir
    never share an artifact, and the same settings always find theirs again.

    Attributes:
      workdir: the work dir (any ``tf.io.gfile`` path).
      inputs: JSON-able values every artifact of this run depends on.
    """

    workdir: str
    inputs: tuple = ()

    def path(self, stem: str, suffix: str, *parts) -> str:
        """``<workdir>/<stem>-<fingerprint(inputs, parts)><suffix>``."""
        return artifact_path(self.workdir, stem, suffix, *self.inputs, *parts)

    def reuse_or_build(self, stem: str, suffix: str, parts: tuple, build, save, load, what: str):
        """:func:`reuse_or_build` at :meth:`path` ``(stem, suffix, *parts)``: (value, reused)."""
        return reuse_or_build(self.path(stem, suffix, *parts), build, save, load, what)
