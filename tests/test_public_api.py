"""The public API: what `import tfkd` offers, the error hierarchy, and the README's Python example
run as written (its teacher address and work dir pointed at this test's server and tmp dir)."""

import re
import subprocess
import sys

import pytest

import tfkd
from tfkd import errors

from conftest import REPO


def test_the_public_api_is_importable_and_documented():
    for name in tfkd.__all__:
        assert getattr(tfkd, name).__doc__, name
    help_text = subprocess.run([sys.executable, "-c", "import tfkd; help(tfkd)"], cwd=REPO,
                               capture_output=True, text=True, timeout=300).stdout
    for name in ("distill", "DistillConfig", "Teacher", "connect", "TfkdError"):
        assert name in help_text, name


def test_every_error_is_a_tfkd_error_and_keeps_its_builtin_base():
    from tfkd import teacher
    from tfkd import workdir
    for cls, base in [(errors.ConfigError, ValueError), (errors.ImageSourceError, ValueError),
                      (teacher.TeacherError, RuntimeError), (teacher.QueryBudgetExceeded, RuntimeError),
                      (workdir.WorkdirError, RuntimeError),
                      (errors.DatasetUnavailableError, RuntimeError),
                      (errors.StudentError, RuntimeError)]:
        assert issubclass(cls, errors.TfkdError) and issubclass(cls, base), cls
    with pytest.raises(errors.ConfigError, match="num_shots=-1"):
        tfkd.DistillConfig(workdir="w", num_shots=-1).validate()
    with pytest.raises(errors.ConfigError, match="method='nope'"):
        tfkd.distill(workdir="w", method="nope")


def test_the_readme_python_example_runs(server, tmp_path):
    readme = open(f"{REPO}/README.md").read()
    section = readme[readme.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("localhost:8500", server.target).replace("/tmp/tfkd_python",
                                                                  str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={"PYTHONPATH": REPO,
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"student 0\.\d+, teacher 0\.\d+, \d+ queries", result.stdout), result.stdout
    assert "[1. 1. 1. 1.] 4" in result.stdout, result.stdout
