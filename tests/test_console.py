"""Issue 38: a console a person reads. The launchers print tfkd's lines, Keras' epoch lines and
progress bars, and none of TensorFlow's C++ start-up noise (oneDNN, CUDA stubs, ``cuInit`` on a
machine without a GPU) nor warnings a user cannot act on, unless ``--verbosity=1`` asks for them
(launch/console.py)."""

import logging
import os
import re
import signal
import subprocess
import sys

import pytest

from launch import console

from conftest import REPO

# Any line of TensorFlow's C++ runtime (glog's format from a C/C++ file), or a known one of its
# start-up lines that has another format.
CPP = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.(cc|cpp|h|c):\d+\]")
KNOWN = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard", "cuInit",
         "cudart_stub", "To enable the following instructions", "TensorFlow Lite XNNPACK",
         "fully_quantize:", "Unable to register cu")
PYTHON_NOISE = ("UserWarning", "Sharding callback duration", "INFO:tensorflow:", "WARNING:tensorflow:",
                "Writing fingerprint to")


def runtime_lines(text: str) -> list[str]:
    """The lines of ``text`` that TensorFlow's C++ runtime printed (by format or known message)."""
    return [line for line in text.splitlines()
            if CPP.match(line) or any(k in line for k in KNOWN)]


def message(line: str) -> str:
    """A C++ line without its severity, time and thread (``...port.cc:153] oneDNN ...``)."""
    return line.split("] ", 1)[1] if CPP.match(line) else line


# ---- the filter on a real descriptor ----------------------------------------------------------

ONEDNN = b"I0000 00:00:1796676594.762551   16314 port.cc:153] oneDNN custom operations are on.\n"
CPU = (b"I0000 00:00:1796676594.869561   16314 cpu_feature_guard.cc:227] This TensorFlow binary is "
       b"optimized to use available CPU instructions in performance-critical operations.\nTo enable "
       b"the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
       b"appropriate compiler flags.\n")
CUINIT = (b"E0000 00:00:1796676612.766041   16478 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
ABSL_INIT = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
CPP_WARNING = b"W0000 00:00:1796676612.766041   16478 grappler.cc:10] a runtime warning\n"
CPP_ERROR = (b"E1207 20:50:12.766041   16478 chttp2_server.cc:1053] UNKNOWN:No address added "
             b"out of total 1 resolved for '[::]:8500'")
ABSL_PY = "I1207 20:50:12.856697 140515436153728 report.py:289] Stage load_data: start"

FILTERED = r"""
import os, sys
from launch import console

assert console.start("__main__", "tfkd-test")
sys.stderr.write("first line\n")
for line in eval(sys.argv[1]):  # The C++ lines, written as a native library writes them.
    os.write(2, line)
sys.stderr.write(sys.argv[2] + "\n")
print("to stdout", flush=True)
exec(sys.argv[3])
"""


def run_filtered(cpp_lines, python_line, then, *extra):
    return subprocess.run([sys.executable, "-c", FILTERED, repr(cpp_lines), python_line, then, *extra],
                          capture_output=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_the_filter_drops_cpp_noise_and_passes_every_other_line_in_order():
    """C++ lines below ERROR and the known start-up and GPU-less lines (any severity) are dropped;
    another C++ error, absl's Python lines and a traceback pass, in the order written."""
    result = run_filtered([ONEDNN, ABSL_INIT, CPU, CUINIT, CPP_WARNING, CPP_ERROR + b"\n"], ABSL_PY,
                          "raise ValueError('the end')")
    assert result.returncode == 1
    assert result.stdout == b"to stdout\n"
    lines = result.stderr.decode().splitlines()
    assert lines[:4] == ["first line", CPP_ERROR.decode(), ABSL_PY, "Traceback (most recent call last):"]
    assert lines[-1] == "ValueError: the end", lines


def test_the_last_line_without_a_newline_is_not_lost_at_exit():
    result = run_filtered([], ABSL_PY, "sys.stderr.write('no newline at the end')")
    assert result.returncode == 0
    assert result.stderr.decode() == f"first line\n{ABSL_PY}\nno newline at the end"


@pytest.mark.parametrize("death", ["os.kill(os.getpid(), 9)", "os.abort()", "os._exit(3)"])
def test_lines_written_just_before_the_process_dies_still_arrive(death):
    """The filter is a process of its own: a C++ fatal line, and what follows it, are written even
    when the launcher is killed (tfkd's start-up watchdog SIGKILLs it), aborts or os._exit()s."""
    fatal = b"F0000 00:00:1796676612.766041   16478 cuda_blas.cc:9] Check failed: handle != nullptr\n"
    result = run_filtered([ONEDNN, fatal], "last words", f"sys.stderr.write('partial'); {death}")
    assert result.returncode in (-signal.SIGKILL, -signal.SIGABRT, 3)
    assert result.stderr.decode() == f"first line\n{fatal.decode()}last words\npartial"


def test_the_filter_follows_tf_cpp_min_log_level():
    """``TF_CPP_MIN_LOG_LEVEL=0`` set by the user passes the C++ INFO and WARNING lines, but not
    the known noise."""
    for line in (ONEDNN, CUINIT, CPP_WARNING, CPP_ERROR):  # Both formats: start-up and later.
        assert CPP.match(line.decode()) and console.CPP_LINE.match(line), line
    assert not CPP.match(ABSL_PY) and not console.CPP_LINE.match(ABSL_PY.encode())
    keep = [console.keep(line, 0) for line in (ONEDNN, CPU.split(b"\n")[1], CUINIT, ABSL_INIT,
                                                CPP_WARNING, CPP_ERROR)]
    assert keep == [False, False, False, False, True, True]
    other = b"I0000 00:00:1796676594.762551   16314 device.cc:1] a runtime line\n"
    assert (console.keep(other, 0), console.keep(other, 1), console.keep(CPP_WARNING, 2)) == (
        True, False, False)
    fatal = b"F0000 00:00:1.5 1 check.cc:1] Check failed"
    assert console.keep(fatal, 3) and not console.keep(CPP_ERROR, 3)
    for line in (ABSL_PY, "Traceback (most recent call last):", "error: query budget", "WARNING: x",
                 "I0000 an arbitrary line", "E1207 20:50:12.856697 1 report.py:9] tfkd's error"):
        assert console.keep(line.encode() + b"\n", 2), line


def test_verbosity_on_the_command_line():
    asked = console.verbosity_asked
    assert asked(["p", "--verbosity=1"]) and asked(["p", "-v", "2"]) and asked(["p", "--v=1"])
    assert asked(["p", "-verbosity", "1", "--workdir=x"])
    assert not asked(["p"]) and not asked(["p", "--verbosity=0"]) and not asked(["p", "-v=-1"])
    assert not asked(["p", "--verbosity=1", "--verbosity=0"])  # The last one counts.
    assert not asked(["p", "--", "--verbosity=1"]) and not asked(["p", "--verbosity=debug"])
    assert not asked(["p", "--verbose=1"])  # Keras' verbosity, not absl's.


def test_imported_rather_than_run_the_filter_stays_off():
    """A test that imports ``launch.distill`` gets the old behaviour only (the variable's default)."""
    assert console.start("launch.distill", "tfkd-distill") is False
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"]


def test_python_noise_of_tensorflow_and_keras_is_quiet():
    """Keras' and TensorFlow's warnings and log records that a user cannot act on are not shown;
    tfkd's records, which share absl's logger, are."""
    code = r"""
import logging, sys, warnings
from absl import logging as absl_logging
from launch import console

assert console.start("__main__", "tfkd-test")
warnings.warn("`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
              "tf.data.Dataset.", UserWarning)
warnings.warn("    Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion", UserWarning)
warnings.warn("a warning of the user's own", UserWarning)
logging.getLogger("tensorflow").warning("Issue encountered when serializing table_initializer.")
logging.getLogger("tensorflow").error("a TensorFlow error")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr
    assert "a warning of the user's own" in result.stderr and "a TensorFlow error" in result.stderr
    assert "shuffle" not in result.stderr and "Interpreter" not in result.stderr
    assert "table_initializer" not in result.stderr

    def record(path, level=logging.INFO):
        return logging.LogRecord("absl", level, path, 1, "m", None, None)

    theirs = "/venv/lib/python3.11/site-packages/tensorflow/python/saved_model/builder_impl.py"
    assert not console._not_theirs(record(theirs))
    assert console._not_theirs(record(theirs, logging.ERROR))
    assert console._not_theirs(record(os.path.join(REPO, "tfkd", "report.py")))


# ---- the launchers ----------------------------------------------------------------------------

def unfiltered_tensorflow_import() -> list[str]:
    """What importing TensorFlow prints on this machine with nothing filtering it."""
    result = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return runtime_lines(result.stderr)


@pytest.mark.slow
def test_the_main_command_prints_no_tensorflow_runtime_line(renamed_data, tmp_path):
    """The README's main command (a teacher trained, served, distilled, exported and evaluated), on
    small settings: tfkd's lines and the report, and no line of TensorFlow's C++ runtime (which
    prints its start-up lines and, without a GPU, ``failed call to cuInit`` when unfiltered)."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path / 'run'}",
         f"--data_dir={renamed_data / 'true'}", "--num_validation=500", "--teacher_epochs=1",
         "--num_shots=50", "--num_mixup=100", "--num_cvae=50", "--cvae_epochs=1", "--student_epochs=1",
         "--eval_examples=100"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert runtime_lines(printed) == []
    assert [n for n in PYTHON_NOISE if n in printed] == []
    assert "Stage load_data: start" in result.stderr and "Report: " in result.stderr
    assert re.search(r"^\d+/\d+ - \d+m?s - ", result.stdout, re.M)  # Keras' epoch lines.
    assert "student accuracy (served)" in result.stdout


@pytest.mark.slow
def test_verbosity_1_shows_what_tensorflow_prints(tmp_path):
    """A launcher that imports TensorFlow and fails (a missing export): without ``--verbosity``
    its console is its one error line; with ``--verbosity=1`` it holds every line that importing
    TensorFlow prints on this machine unfiltered (measured here; none asserted where there are
    none)."""
    unfiltered = unfiltered_tensorflow_import()
    command = [sys.executable, os.path.join(REPO, "launch", "deploy.py"),
               f"--export_dir={tmp_path / 'missing' / '1'}", f"--model_base_path={tmp_path / 'base'}"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    loud = subprocess.run([*command, "--verbosity=1"], capture_output=True, text=True, timeout=300,
                          env=env)
    for result in (quiet, loud):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.splitlines()[-1].startswith("error: version_dir="), result.stderr[-3000:]
    assert runtime_lines(quiet.stdout + quiet.stderr) == []
    assert quiet.stderr.count("\n") == 1, quiet.stderr
    shown = {message(line) for line in runtime_lines(loud.stderr)}
    assert {message(line) for line in unfiltered} <= shown, (unfiltered, loud.stderr[-3000:])
