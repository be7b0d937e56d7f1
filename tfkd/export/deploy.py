"""Version directories in TF Serving's layout and their deployment into a served base path.

Layout: ``<base>/<version>/`` with numeric, increasing versions, as tensorflow_model_server's
file-system source expects; a numeric directory is a version once it holds a registered format's
marker file (:mod:`tfkd.export.formats`). A version is written to a hidden temporary directory
beside it and renamed into place (on other file systems: copied, the marker files last), so a
server polling the base path never sees a half-written model.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import tensorflow as tf

from tfkd import errors
from tfkd import fs
from tfkd.export import formats


def _staging_dir(base: str, version: int) -> str:
    """A fresh temporary directory in ``base`` for a version being written (renamed into place when
    complete), with the permissions a directory made under the user's umask has: ``mkdtemp``'s
    0700 would make the version unreadable to a TF Serving process running as another user."""
    if not fs.is_local(base):
        path = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        fs.makedirs(path)
        return path
    path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def list_versions(export_base: str) -> list[int]:
    """Numeric version directories under ``export_base`` (ascending) that hold a registered
    format's marker file (:func:`tfkd.export.formats.detect_format`); [] if none or no such dir."""
    if not fs.isdir(export_base):
        return []
    return sorted(int(d) for d in fs.listdir(export_base) if d.isdigit() and
                  formats.detect_format(os.path.join(export_base, d)) is not None)


def latest_version_dir(export_base: str) -> str | None:
    """Path of the newest complete version under ``export_base``, or None."""
    versions = list_versions(export_base)
    return os.path.join(export_base, str(versions[-1])) if versions else None


def write_version(export_base: str, version: int, write) -> str:
    """``write(tmp_dir)`` into a hidden staging directory of ``export_base``, renamed to
    ``<export_base>/<version>`` once complete (removed if ``write`` fails; on a file system
    without directory renames, copied with the registered marker files last).

    Raises:
      tfkd.errors.ConfigError: the version is already there (versions only increase).
    """
    final_dir = os.path.join(export_base, str(version))
    if fs.exists(final_dir):
        raise errors.ConfigError(f"version={version}: {final_dir} already exists; versions only "
                                 "increase")
    fs.makedirs(export_base)
    tmp_dir = _staging_dir(export_base, version)
    try:
        write(tmp_dir)
        fs.move_dir(tmp_dir, final_dir, last=formats.markers())
    except BaseException:
        if fs.exists(tmp_dir):
            fs.rmtree(tmp_dir)
        raise
    return final_dir


REJECTED_SUFFIX = ".rejected"
"""The name ending of an export the served-agreement check set aside (``<version>.rejected``:
:func:`tfkd.evaluation.check_served_agreement`, :func:`tfkd.fs.reject_version`)."""


def deploy_version(version_dir: str, model_base_path: str, version: int | None = None,
                   allow_older: bool = False) -> str:
    """Loads a model version as a server would, then copies it into a served base path as its
    next version, atomically.

    The version is loaded first (:meth:`tfkd.serving.Servable.load`: its format's loader, e.g. a
    SavedModel loaded and its warmup requests replayed, a LiteRT model test-run), so a damaged one
    is refused here rather than dropped in front of a server. The copy goes to a hidden temporary
    directory inside ``model_base_path`` and is renamed into place, so a server polling the base
    path (TF Serving, or :mod:`tfkd.serving`) loads it whole, without a restart. Deploying a
    version into the base path it sits in (a rollback: the same model as the next version) is
    allowed.

    Args:
      version_dir: a version of a registered format (:mod:`tfkd.export.formats`): a SavedModel
        directory (holding ``saved_model.pb``), a LiteRT version (``model.tflite``: the int8
        student), or another registered format's (holding its marker file).
      model_base_path: the served base path.
      version: default: one more than the newest there.
      allow_older: accept a ``version`` below the newest there. Off by default: a server with
        TF Serving's default policy (the latest version) would never serve it.

    Returns:
      the new version directory.

    Raises:
      tfkd.errors.ConfigError (a ValueError): one line, nothing copied: ``version_dir`` holds no
        registered format's marker file, or is an export the served-agreement check set aside
        (``<n>.rejected``), or fails to load; ``model_base_path`` is a file, is ``version_dir`` or
        inside it (the copy would nest), or cannot be written; the version exists, or it is
        below the newest without ``allow_older``.
    """
    formats.format_of(version_dir)  # One line naming the registered markers.
    if os.path.basename(version_dir.rstrip("/")).endswith(REJECTED_SUFFIX):
        raise errors.ConfigError(
            f"version_dir={version_dir!r}: an export the served-agreement check set aside (the "
            "student disagreed with the teacher far more than in training; see report.json's "
            "student_check); not deployed")
    if _within(model_base_path, version_dir):
        raise errors.ConfigError(
            f"model_base_path={model_base_path!r}: inside the version being deployed "
            f"({version_dir}), which would nest a copy in it; expected the directory of numeric "
            "versions a server watches")
    if fs.exists(model_base_path) and not fs.isdir(model_base_path):
        raise errors.ConfigError(f"model_base_path={model_base_path!r}: is a file; expected the "
                                 "directory of numeric versions a server watches")
    existing = list_versions(model_base_path)
    if version is not None and existing and version < existing[-1] and not allow_older:
        raise errors.ConfigError(f"version={version}: below the newest version there "
                                 f"({existing[-1]}), which a server serving the latest version "
                                 f"keeps serving; omit the version (next: {existing[-1] + 1}) or "
                                 "allow an older one explicitly")
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    _check_loads(version_dir, os.path.basename(model_base_path.rstrip("/")), version)
    return _copy_version(version_dir, model_base_path, version)


def _copy_version(version_dir: str, model_base_path: str, version: int) -> str:
    """``version_dir`` copied in as ``<model_base_path>/<version>`` (:func:`write_version`), the
    marker files last.
    Raises ConfigError (one line) if the base path cannot be written."""
    try:
        return write_version(model_base_path, version, lambda tmp_dir: fs.copy_tree(
            version_dir, tmp_dir, last=formats.markers()))
    except (OSError, tf.errors.OpError) as e:  # A read-only mount, a full disk, /proc, ...
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise errors.ConfigError(f"model_base_path={model_base_path!r}: cannot write there "
                                 f"({' '.join(str(reason).split())[:200]}); not deployed") from None


def _within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or under it (local paths resolved: relative, ``..``,
    symbolic links; others compared as written, less trailing slashes)."""
    if fs.is_local(path) and fs.is_local(directory):
        path, directory = os.path.realpath(path), os.path.realpath(directory)
    path, directory = path.rstrip("/"), directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def _check_loads(version_dir: str, name: str, version: int) -> None:
    """Loads ``version_dir`` as tfkd's server would serve it (as ``name`` version ``version``).
    Raises ConfigError (one line) if it fails."""
    from tfkd.serving import registry  # tfkd.serving imports this module.

    try:
        registry.Servable.load(name, version, version_dir)
    except Exception as e:  # noqa: BLE001 - whatever the load raises, the version is not deployed.
        reason = " ".join(str(e).split())[:500]
        raise errors.ConfigError(f"version_dir={version_dir!r}: does not load as a server would "
                                 f"load it ({type(e).__name__}: {reason}); not deployed") from None
