"""Issue 25 §4, paths that cannot be used: every launcher names the path and the cause in one line,
before any work, instead of a traceback (or, once, a segmentation fault after an h5py error).

Full and read-only disks are real: a small tmpfs mounted for the test (skipped where mounting is not
allowed, e.g. not root).

The launchers run as a user runs them (parse, then main), each error in one of two child processes
(:func:`conftest.launchers_in_one_process`: one TensorFlow import each, instead of one per error),
with the exit status and the whole of file descriptor 2 (absl's and TensorFlow's logs included) read
as a process's would be; the full disk, the error that once ended in a segmentation fault, runs
``launch/distill.py`` as a process of its own.
"""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd import fs
from tfkd import workdir

from conftest import REPO
from conftest import launchers_in_one_process
from conftest import printed


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


def _mount(path, size="256k", read_only=False):
    """Mounts a tmpfs of ``size`` at ``path`` (read-only after creation with ``read_only``); returns
    why it could not, or None."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return f"cannot mount a tmpfs here: {mounted.stderr.strip()[:200]}"
    if read_only:
        try:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        except BaseException:
            _unmount(path)
            raise
    return None


def _unmount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def small_disk(path, size="256k", read_only=False):
    """A tmpfs of ``size`` mounted at ``path`` (read-only after creation with ``read_only``)."""
    cannot = _mount(path, size, read_only)
    if cannot:
        pytest.skip(cannot)
    try:
        yield path
    finally:
        _unmount(path)


# Each case: ``python launch/<name>.py *argv`` with ``env`` added to the environment, run in the
# child as its run() runs it (parse, then main); prints [exit status, stderr].
RUN = r'''
import json, os, sys, tempfile

saved = {k: os.environ.get(k) for k in env}
os.environ.update(env)
sys.stderr.flush()
fd2 = os.dup(2)
with tempfile.TemporaryFile("w+", errors="replace") as err:
    os.dup2(err.fileno(), 2)  # All of stderr, as a process's: absl's and TensorFlow's logs too.
    try:
        try:
            parse(name, *argv).main([f"{name}.py"])
            code = 0
        except SystemExit as e:  # Any other exception fails the case with its traceback.
            code = e.code
    finally:
        sys.stderr.flush()
        os.dup2(fd2, 2)
        os.close(fd2)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    err.seek(0)
    stderr = err.read()
if isinstance(code, str):  # sys.exit("error: ..."): Python prints the text, the status is 1.
    code, stderr = 1, stderr + code + "\n"
print(json.dumps([code or 0, stderr]))
'''


def _case(name, *argv, env=None):
    return RUN, {"name": name, "argv": [str(a) for a in argv], "env": env or {}}


def _ran(results, case):
    """Case ``case``'s run as a finished process: its exit status, what it printed, its stderr."""
    out = printed(results, case)
    code, stderr = json.loads(out.strip().splitlines()[-1])
    return subprocess.CompletedProcess(case, code, out, stderr)


SERVER_FILES = [
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
]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every refusal of distill, serve and evaluate below, run in one child process: ``results``
    (read a case with :func:`_ran`), ``root`` (the files the cases name) and ``cannot_mount`` (why
    the read-only disk case was left out; None: it ran)."""
    root = tmp_path_factory.mktemp("unusable")
    (root / "notes.txt").write_text("not a directory")
    (root / "images").mkdir()
    (root / "model_dir").write_text("")
    cases = {
        "workdir_file": _case("distill", f"--workdir={root / 'notes.txt'}"),
        "workdir_proc": _case("distill", "--workdir=/proc/tfkd_run"),
        "class_names": _case("distill", f"--workdir={root / 'run'}", "--teacher=127.0.0.1:1",
                             f"--images={root / 'images'}", f"--class_names={root / 'classes.txt'}"),
        "vertex": _case("distill", f"--workdir={root / 'vertex_run'}",
                        env={"AIP_MODEL_DIR": str(root / "model_dir")}),
    }
    cannot_mount = _mount(root / "ro", read_only=True)
    if not cannot_mount:
        cases["read_only"] = _case("distill", f"--workdir={root / 'ro'}/run")
    for i, (flags, _) in enumerate(SERVER_FILES):
        d = root / f"server_files_{i}"
        d.mkdir()
        (d / "garbage.config").write_bytes(b"\x00\xffnot { a proto")
        (d / "text.config").write_text("model_config_list { config { name: ")
        cases[f"serve_{i}"] = _case("serve", "--port=0", *(f.format(d=d) for f in flags))
    cases["evaluate_negative"] = _case("evaluate", "--server=127.0.0.1:1", "--eval_examples=-5")
    try:
        results = launchers_in_one_process(cases, str(tmp_path_factory.mktemp("unusable_cases")))
    finally:
        if not cannot_mount:
            _unmount(root / "ro")
    return {"root": root, "cannot_mount": cannot_mount, "results": results}


def test_a_work_dir_that_is_a_file_or_a_pseudo_file_system_is_refused(launched):
    a_file = launched["root"] / "notes.txt"
    _one_line_error(_ran(launched["results"], "workdir_file"), f"workdir='{a_file}'",
                    "is a file, not a directory")
    _one_line_error(_ran(launched["results"], "workdir_proc"), "under /proc")


def test_a_full_or_read_only_work_dir_is_refused_before_any_work(tmp_path, launched):
    with small_disk(tmp_path / "full", size="64k") as full:  # As a process: once a segfault.
        with open(full / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * 200_000)
        _one_line_error(_launch("distill", f"--workdir={full}/run"), "cannot write there",
                        "No space left on device")
    if launched["cannot_mount"]:
        pytest.skip(launched["cannot_mount"])
    _one_line_error(_ran(launched["results"], "read_only"), "cannot write there",
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


def test_a_missing_class_names_file_is_named(launched):
    _one_line_error(_ran(launched["results"], "class_names"),
                    f"class_names='{launched['root'] / 'classes.txt'}': no such file")


@pytest.mark.parametrize("flags,fragment", SERVER_FILES)
def test_the_server_names_a_config_file_it_cannot_use(launched, flags, fragment):
    i = SERVER_FILES.index((flags, fragment))
    d = str(launched["root"] / f"server_files_{i}")
    _one_line_error(_ran(launched["results"], f"serve_{i}"), fragment.format(d=d))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, teacher_base):
    """tfkd-deploy's runs below, in order, in one child process: ``results`` (read a case with
    :func:`_ran`) and ``base``, the base path the versions went to."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "base").write_text("")
    version_dir, base = os.path.join(teacher_base, "1"), root / "served"
    cases = {
        "base_is_a_file": _case("deploy", f"--export_dir={version_dir}",
                                f"--model_base_path={root / 'base'}"),
        "version_5": _case("deploy", f"--export_dir={version_dir}", f"--model_base_path={base}",
                           "--version=5"),
        "version_3": _case("deploy", f"--export_dir={version_dir}", f"--model_base_path={base}",
                           "--version=3"),
        "version_3_allowed": _case("deploy", f"--export_dir={version_dir}",
                                   f"--model_base_path={base}", "--version=3", "--allow_older_version"),
    }
    results = launchers_in_one_process(cases, str(tmp_path_factory.mktemp("deploy_cases")))
    return {"base": base, "results": results}


def test_deploy_refuses_a_base_path_that_is_a_file_and_a_version_that_would_never_serve(deployed):
    results = deployed["results"]
    _one_line_error(_ran(results, "base_is_a_file"), "is a file")
    assert _ran(results, "version_5").returncode == 0
    _one_line_error(_ran(results, "version_3"), "version=3: below the newest version there (5)")
    assert _ran(results, "version_3_allowed").returncode == 0
    assert sorted(os.listdir(deployed["base"])) == ["3", "5"]


def test_evaluate_refuses_a_negative_example_count(launched):
    result = _ran(launched["results"], "evaluate_negative")
    assert result.returncode != 0
    assert "--eval_examples must be >= 0" in result.stderr


def test_an_unwritable_vertex_output_dir_fails_before_training(launched):
    """Vertex AI's AIP_MODEL_DIR that cannot be written once failed only after training."""
    result = _ran(launched["results"], "vertex")
    _one_line_error(result, f"outputs.model_dir='{launched['root'] / 'model_dir'}': is a file")
    assert not (launched["root"] / "vertex_run" / "teacher").exists()  # Nothing trained.
