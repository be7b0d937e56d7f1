"""File access on any file system TensorFlow reads: every read and write of a work dir, ledger,
export, image source or config goes through here (``tf.io.gfile``), so a ``gs://`` work dir (or
one of a scheme a file-system plug-in registers, such as tensorflow-io's ``s3://``; TensorFlow
2.21 itself has no ``s3://`` or ``hdfs://``) works as it does for the rest of TensorFlow. Tested on
TensorFlow's in-memory
``ram://`` file system and on local disks.

Atomic writes (temp name, then rename) hold where the file system's rename does (local disks,
``ram://``, HDFS); on an object store a rename is a copy and a crash can leave the temp object,
never a half-written final one. Appends (the query account's log) are ``O_APPEND`` writes on a local
disk; a file system without appends (object stores) gets the file rewritten with the line added.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf

from tfkd import errors

gfile = tf.io.gfile


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local disk (no ``scheme://``)."""
    return "://" not in str(path)


def abspath(path: str) -> str:
    """``os.path.abspath`` for a local path; any other path as it is."""
    return os.path.abspath(path) if is_local(path) else path


def exists(path: str) -> bool:
    return gfile.exists(path)


def isdir(path: str) -> bool:
    return gfile.isdir(path)


def makedirs(path: str) -> None:
    gfile.makedirs(path)


def listdir(path: str) -> list[str]:
    """Entry names of a directory (no trailing ``/``). Through ``glob`` on a non-local file system:
    ``ram://``'s ``listdir`` of ``d/assets`` also lists ``d/assets.extra`` (as ``.extra``)."""
    if is_local(path):
        return os.listdir(path)
    return [os.path.basename(p.rstrip("/")) for p in gfile.glob(os.path.join(path, "*"))]


def glob(pattern: str) -> list[str]:
    return sorted(gfile.glob(pattern))


def size(path: str) -> int:
    """Bytes of a file."""
    return gfile.stat(path).length


def remove(path: str) -> None:
    gfile.remove(path)


def rmtree(path: str) -> None:
    """Removes a directory tree. On a non-local file system entry by entry, deepest first
    (``ram://``'s recursive delete fails on ``assets`` beside ``assets.extra``)."""
    if is_local(path):
        gfile.rmtree(path)
        return
    levels, pattern = [], os.path.join(path, "*")
    while entries := gfile.glob(pattern):
        levels.append(entries)
        pattern = os.path.join(pattern, "*")
    for entries in reversed(levels):
        for entry in entries:
            gfile.remove(entry)
    gfile.remove(path)


def replace(source: str, target: str) -> None:
    """Renames ``source`` (a file or directory) to ``target``, replacing a file there."""
    if is_local(source):
        os.replace(source, target)
    else:
        gfile.rename(source, target, overwrite=True)


def read_bytes(path: str) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    """The UTF-8 text of a file.

    Raises:
      tfkd.errors.ConfigError (a ValueError): naming the path, when the bytes are not UTF-8 text
        (a binary file given for a config); OSError / ``tf.errors.NotFoundError`` when it cannot
        be read.
    """
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise errors.ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_atomic(path: str, data: bytes | str) -> str:
    """Writes ``data`` to ``path`` atomically (``<path>.tmp``, then rename). Returns ``path``.

    A write that fails (a full disk, a quota) leaves nothing at ``path`` (an earlier file there is
    kept whole) and removes its temporary file."""
    tmp = path + ".tmp"
    try:
        with gfile.GFile(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        replace(tmp, path)
    except BaseException:
        try:
            if gfile.exists(tmp):
                gfile.remove(tmp)
        except Exception:  # noqa: BLE001 - the write's own error is the one to raise.
            pass
        raise
    return path


def save_npz(path: str, **arrays) -> str:
    """``np.savez`` of ``arrays`` to ``path`` atomically. Returns ``path``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_atomic(path, buffer.getvalue())


def load_npz(path: str):
    """``np.load`` of an ``.npz`` (a context manager; arrays read on access, CRC-checked)."""
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def save_npy(path: str, array: np.ndarray) -> str:
    """``np.save`` of one array to ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return write_atomic(path, buffer.getvalue())


def append_line(path: str, line: str) -> None:
    """Appends one line (with its newline) to ``path``, creating it (on a local disk one
    ``O_APPEND`` write: concurrent writers' lines never interleave)."""
    data = (line.rstrip("\n") + "\n").encode()
    if is_local(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return
    try:
        with gfile.GFile(path, "ab") as f:
            f.write(data)
    except (tf.errors.UnimplementedError, tf.errors.PermissionDeniedError):
        write_atomic(path, (read_bytes(path) if exists(path) else b"") + data)


def walk_files(directory: str) -> list[str]:
    """Every file under ``directory`` (recursively), as full paths (one ``glob`` per depth on a
    non-local file system: see :func:`listdir`)."""
    if is_local(directory):
        return [os.path.join(root, name) for root, _, names in os.walk(directory)
                for name in names]
    files, pattern = [], os.path.join(directory, "*")
    while entries := gfile.glob(pattern):
        files += [p for p in entries if not gfile.isdir(p)]
        pattern = os.path.join(pattern, "*")
    return sorted(files)


LAST_FILES = ("saved_model.pb", "model.tflite")
"""The files whose presence makes a model version complete (SavedModel, LiteRT): copied last."""


def move_dir(source: str, target: str, last: tuple = LAST_FILES) -> None:
    """Moves a directory tree to ``target`` (which must not exist). A rename on a local disk; on
    other file systems (whose directory renames do not carry the contents: ``ram://``, object
    stores) a copy of every file, the files named in ``last`` copied last (a SavedModel is complete
    once its ``saved_model.pb`` appears, a LiteRT version once its ``model.tflite`` does), then the
    source removed."""
    if is_local(source):
        os.rename(source, target)
        return
    files = sorted(walk_files(source), key=lambda p: os.path.basename(p) in last)
    for path in files:
        destination = os.path.join(target, os.path.relpath(path, source))
        gfile.makedirs(os.path.dirname(destination))
        gfile.copy(path, destination, overwrite=False)
    rmtree(source)


def copy_tree(source: str, target: str, last: tuple = LAST_FILES) -> None:
    """Copies every file under ``source`` to the same place under ``target`` (overwriting), the
    files named ``last`` last (a reader polling for a SavedModel sees it once it is complete)."""
    for path in sorted(walk_files(source), key=lambda p: os.path.basename(p) in last):
        destination = os.path.join(target, os.path.relpath(path, source))
        gfile.makedirs(os.path.dirname(destination))
        gfile.copy(path, destination, overwrite=True)


def tree_bytes(directory: str) -> int:
    """Total bytes of the files under ``directory``."""
    return sum(size(p) for p in walk_files(directory))


def reject_version(version_dir: str) -> str:
    """Renames a SavedModel version directory ``<base>/<n>`` to ``<base>/<n>.rejected`` (TF Serving
    and :func:`tfkd.export.list_versions` load only numeric directories), so that a student that
    failed a check is kept for inspection but never served. Returns the new path."""
    target = f"{version_dir.rstrip('/')}.rejected"
    if exists(target):
        rmtree(target)
    move_dir(version_dir, target)
    return target


def load_saved_model(path: str, setting: str):
    """``tf.saved_model.load(path)``, a SavedModel the user named (``setting``, e.g.
    ``teacher_saved_model``).

    Raises:
      ConfigError: ``<setting>='<path>': does not load as a SavedModel (<why>)``, one line, for
        whatever TensorFlow raises (a missing or damaged file, a parse error, a missing op).
    """
    try:
        return tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - OSError, a parse error, a missing op: not loaded.
        reason = " ".join(str(e).split())[:300]
        raise errors.ConfigError(f"{setting}={path!r}: does not load as a SavedModel "
                                 f"({type(e).__name__}: {reason})") from None
