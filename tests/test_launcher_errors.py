"""Issue 36, finding 4: every launcher catches ``tfkd.TfkdError`` alone and prints it as one line
(``error: ...``, exit status 1), and the bounds a launcher checks are the library's (the launcher
restates none). Real parts, on real files: each launcher runs as a subprocess, as a user runs it,
for one error; the other errors run in one child process that runs each launcher's parse and main
(one TensorFlow import instead of one per error).

Before the fix: the launchers caught every ``ValueError`` (a bug deep in numpy or TF became a
one-line "error:" with no traceback), ``tfkd-train-teacher`` kept its own ``--epochs`` bound, and
``tfkd-deploy`` caught ``OSError`` too.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from conftest import launchers_in_one_process
from conftest import printed


def _launch(name, *flags):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", f"{name}.py"), *flags],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})


def _one_error_line(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_train_teacher_refuses_epochs_by_the_librarys_bound(tmp_path, in_one_process):
    # Before the fix: the launcher's own check, "--epochs must be positive, got 0" (absl usage).
    line = _one_error_line(_launch("train_teacher", "--epochs=0",
                                   f"--export_base={tmp_path / 'teacher'}"))
    assert line == "error: teacher_train.epochs=0: expected >= 1"
    assert not (tmp_path / "teacher").exists()
    result = printed(in_one_process, "train_teacher_learning_rate")
    assert json.loads(result) == [1, "error: teacher_train.learning_rate=0.0: expected > 0"]


def test_serve_names_an_unreadable_tls_file_in_one_line(tmp_path, teacher_base, in_one_process):
    missing = tmp_path / "missing.pem"
    line = _one_error_line(_launch("serve", f"--model_base_path={teacher_base}", "--port=0",
                                   f"--ssl_server_cert={missing}", f"--ssl_server_key={missing}"))
    assert line.startswith(f"error: --ssl_server_cert={str(missing)!r}: cannot read it")
    not_pem, result = json.loads(printed(in_one_process, "serve_not_pem"))
    assert result == [
        1, f"error: --ssl_server_cert={not_pem!r}: not a PEM file (no '-----BEGIN' line)"]


def test_evaluate_names_an_address_it_cannot_use_in_one_line(tmp_path):
    line = _one_error_line(_launch("evaluate", "--server=localhost:99999"))
    assert line.startswith("error: target='localhost:99999': expected host:port with a port in "
                           "1..65535")


OVERRIDES = [
    ("[1, 2]", "error: --params_override: expected a JSON object, got '[1, 2]'"),
    ('{"mixup": {"alpha": 0}}', "error: mixup.alpha=0.0: expected > 0 (λ ~ Beta(alpha, alpha))"),
]


def test_distill_refuses_a_bad_override_in_one_line_before_anything_is_written(
        tmp_path, in_one_process):
    # The first as a process, the second in the child.
    override, expected = OVERRIDES[0]
    workdir = tmp_path / "run"
    line = _one_error_line(_launch("distill", f"--workdir={workdir}",
                                   f"--params_override={override}"))
    assert line == expected
    assert not workdir.exists() or not os.listdir(workdir)
    workdir, result = json.loads(printed(in_one_process, "distill_override"))
    assert result == [1, OVERRIDES[1][1]]
    assert not os.path.exists(workdir) or not os.listdir(workdir)


# The second error of each launcher above, each run as the launcher runs it (parse, then main).
TRAIN_TEACHER = r"""
import json
print(json.dumps(command("train_teacher", "--learning_rate=0", f"--export_base={TMP}/teacher")))
"""
SERVE = r"""
import json, os
not_pem = os.path.join(TMP, "cert.pem")
with open(not_pem, "w") as f:
    f.write("not a certificate\n")
print(json.dumps([not_pem, command("serve", f"--model_base_path={teacher_base}", "--port=0",
                                   f"--ssl_server_cert={not_pem}", f"--ssl_server_key={not_pem}")]))
"""
DISTILL = r"""
import json, os
workdir = os.path.join(TMP, "run")
print(json.dumps([workdir, command("distill", f"--workdir={workdir}",
                                   f"--params_override={override}")]))
"""


@pytest.fixture(scope="module")
def in_one_process(tmp_path_factory, teacher_base):
    """The errors above that do not run as processes, all in one child process."""
    return launchers_in_one_process(
        {"train_teacher_learning_rate": TRAIN_TEACHER,
         "serve_not_pem": (SERVE, {"teacher_base": teacher_base}),
         "distill_override": (DISTILL, {"override": OVERRIDES[1][0]})},
        str(tmp_path_factory.mktemp("launcher_errors")))
