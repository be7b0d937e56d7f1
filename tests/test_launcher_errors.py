"""Issue 36, finding 4: every launcher catches ``tfkd.TfkdError`` alone and prints it as one line
(``error: ...``, exit status 1), and the bounds a launcher checks are the library's (the launcher
restates none). Real parts: the launchers run as subprocesses, as a user runs them, on real files.

Before the fix: the launchers caught every ``ValueError`` (a bug deep in numpy or TF became a
one-line "error:" with no traceback), ``tfkd-train-teacher`` kept its own ``--epochs`` bound, and
``tfkd-deploy`` caught ``OSError`` too.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def _launch(name, *flags):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", f"{name}.py"), *flags],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def _one_error_line(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_train_teacher_refuses_epochs_by_the_librarys_bound(tmp_path):
    # Before the fix: the launcher's own check, "--epochs must be positive, got 0" (absl usage).
    line = _one_error_line(_launch("train_teacher", "--epochs=0",
                                   f"--export_base={tmp_path / 'teacher'}"))
    assert line == "error: teacher_train.epochs=0: expected >= 1"
    assert not (tmp_path / "teacher").exists()
    line = _one_error_line(_launch("train_teacher", "--learning_rate=0",
                                   f"--export_base={tmp_path / 'teacher'}"))
    assert line == "error: teacher_train.learning_rate=0.0: expected > 0"


def test_serve_names_an_unreadable_tls_file_in_one_line(tmp_path, teacher_base):
    missing = tmp_path / "missing.pem"
    line = _one_error_line(_launch("serve", f"--model_base_path={teacher_base}", "--port=0",
                                   f"--ssl_server_cert={missing}", f"--ssl_server_key={missing}"))
    assert line.startswith(f"error: --ssl_server_cert={str(missing)!r}: cannot read it")
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate\n")
    line = _one_error_line(_launch("serve", f"--model_base_path={teacher_base}", "--port=0",
                                   f"--ssl_server_cert={not_pem}", f"--ssl_server_key={not_pem}"))
    assert line == f"error: --ssl_server_cert={str(not_pem)!r}: not a PEM file (no '-----BEGIN' line)"


def test_evaluate_names_an_address_it_cannot_use_in_one_line(tmp_path):
    line = _one_error_line(_launch("evaluate", "--server=localhost:99999"))
    assert line.startswith("error: target='localhost:99999': expected host:port with a port in "
                           "1..65535")


@pytest.mark.parametrize("override,expected", [
    ("[1, 2]", "error: --params_override: expected a JSON object, got '[1, 2]'"),
    ('{"mixup": {"alpha": 0}}', "error: mixup.alpha=0.0: expected > 0 (λ ~ Beta(alpha, alpha))"),
])
def test_distill_refuses_a_bad_override_in_one_line_before_anything_is_written(
        tmp_path, override, expected):
    workdir = tmp_path / "run"
    line = _one_error_line(_launch("distill", f"--workdir={workdir}",
                                   f"--params_override={override}"))
    assert line == expected
    assert not workdir.exists() or not os.listdir(workdir)
