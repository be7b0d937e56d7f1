"""Issue 25 §4, paths that cannot be used: every launcher names the path and the cause in one line,
before any work, instead of a traceback (or, once, a segmentation fault after an h5py error).

Full and read-only disks are real: a small tmpfs mounted for the test (skipped where mounting is not
allowed, e.g. not root)."""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd import fs
from tfkd import workdir

from conftest import REPO


def _launch(name, *flags, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", f"{name}.py"), *flags],
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(result, *fragments):
    """The launcher failed, its last stderr line is its error, and no traceback was printed."""
    assert result.returncode != 0, result.stdout[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


@contextlib.contextmanager
def small_disk(path, size="256k", read_only=False):
    """A tmpfs of ``size`` mounted at ``path`` (read-only after creation with ``read_only``)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:200]}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_work_dir_that_is_a_file_or_a_pseudo_file_system_is_refused(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    _one_line_error(_launch("distill", f"--workdir={a_file}"), f"workdir='{a_file}'",
                    "is a file, not a directory")
    _one_line_error(_launch("distill", "--workdir=/proc/tfkd_run"), "under /proc")


def test_a_full_or_read_only_work_dir_is_refused_before_any_work(tmp_path):
    with small_disk(tmp_path / "full", size="64k") as full:
        with open(full / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * 200_000)
        _one_line_error(_launch("distill", f"--workdir={full}/run"), "cannot write there",
                        "No space left on device")
    with small_disk(tmp_path / "ro", read_only=True) as read_only:
        _one_line_error(_launch("distill", f"--workdir={read_only}/run"), "cannot write there",
                        "Read-only file system")


def test_a_write_that_fails_leaves_nothing_at_its_final_name(tmp_path):
    """A full disk mid-write: the earlier file at the name is kept whole, no temporary is left."""
    with small_disk(tmp_path / "disk", size="128k") as disk:
        target = disk / "transfer_set.npz"
        fs.save_npz(str(target), targets=np.ones((4, 10), np.float32))
        before = target.read_bytes()
        with pytest.raises((OSError, tf.errors.OpError), match="No space left on device"):
            fs.save_npz(str(target), images=np.ones((100_000,), np.float32))  # 400 KB.
        assert target.read_bytes() == before
        assert sorted(os.listdir(disk)) == ["transfer_set.npz"]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(workdir.WorkdirError, match="is a file, not a directory"):
        workdir.check_usable(str(tmp_path / "a_file"))


def test_a_missing_class_names_file_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    _one_line_error(_launch("distill", f"--workdir={tmp_path / 'run'}", "--teacher=127.0.0.1:1",
                            f"--images={tmp_path / 'images'}",
                            f"--class_names={tmp_path / 'classes.txt'}"),
                    f"class_names='{tmp_path / 'classes.txt'}': no such file")


@pytest.mark.parametrize("flags,fragment", [
    (["--model_config_file={d}/missing.config"], "--model_config_file='{d}/missing.config': no such file"),
    (["--model_config_file={d}/garbage.config"], "{d}/garbage.config: not UTF-8 text"),
    (["--model_config_file={d}/text.config"], "not a ModelServerConfig text proto"),
    (["--model_base_path={d}", "--ssl_server_cert={d}/missing.pem", "--ssl_server_key={d}/key.pem"],
     "--ssl_server_cert='{d}/missing.pem': cannot read it"),
    (["--model_base_path={d}", "--ssl_server_cert={d}/garbage.config",
      "--ssl_server_key={d}/garbage.config"], "not a PEM file"),
    (["--model_base_path={d}", "--enable_batching", "--batching_parameters_file={d}/missing.txt"],
     "--batching_parameters_file='{d}/missing.txt': no such file"),
    (["--model_base_path={d}", "--rest_api_port=0", "--monitoring_config_file={d}/text.config"],
     "not a MonitoringConfig text proto"),
])
def test_the_server_names_a_config_file_it_cannot_use(tmp_path, flags, fragment):
    (tmp_path / "garbage.config").write_bytes(b"\x00\xffnot { a proto")
    (tmp_path / "text.config").write_text("model_config_list { config { name: ")
    d = str(tmp_path)
    _one_line_error(_launch("serve", "--port=0", *(f.format(d=d) for f in flags), timeout=120),
                    fragment.format(d=d))


def test_deploy_refuses_a_base_path_that_is_a_file_and_a_version_that_would_never_serve(
        teacher_base, tmp_path):
    version_dir = os.path.join(teacher_base, "1")
    a_file = tmp_path / "base"
    a_file.write_text("")
    _one_line_error(_launch("deploy", f"--export_dir={version_dir}", f"--model_base_path={a_file}"),
                    "is a file")
    base = tmp_path / "served"
    assert _launch("deploy", f"--export_dir={version_dir}", f"--model_base_path={base}",
                   "--version=5").returncode == 0
    _one_line_error(_launch("deploy", f"--export_dir={version_dir}", f"--model_base_path={base}",
                            "--version=3"), "version=3: below the newest version there (5)")
    assert _launch("deploy", f"--export_dir={version_dir}", f"--model_base_path={base}",
                   "--version=3", "--allow_older_version").returncode == 0
    assert sorted(os.listdir(base)) == ["3", "5"]


def test_evaluate_refuses_a_negative_example_count():
    result = _launch("evaluate", "--server=127.0.0.1:1", "--eval_examples=-5")
    assert result.returncode != 0
    assert "--eval_examples must be >= 0" in result.stderr


def test_an_unwritable_vertex_output_dir_fails_before_training(tmp_path):
    """Vertex AI's AIP_MODEL_DIR that cannot be written once failed only after training."""
    a_file = tmp_path / "model_dir"
    a_file.write_text("")
    env = dict(os.environ, AIP_MODEL_DIR=str(a_file))
    result = subprocess.run([sys.executable, os.path.join(REPO, "launch", "distill.py"),
                             f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                            timeout=300, env=env)
    _one_line_error(result, f"outputs.model_dir='{a_file}': is a file")
    assert not (tmp_path / "run" / "teacher").exists()  # Nothing trained.
