"""The multi-worker start's watchdog (tfkd/startup_watchdog.py), run as tfkd.distribute.make_strategy
runs it: a script in isolated mode beside a process that cannot end its own wait. Before this module
it was a Python source string passed to ``python -c``; the end-to-end case (a cluster whose peer
never starts) is tests/test_distributed.py's."""

import signal
import subprocess
import sys

from tfkd import startup_watchdog


def test_the_watchdog_writes_its_line_and_kills_the_waiting_process():
    # The waiting process blocks on a read that never ends (as TF's wait for its peers).
    waiting = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        watchdog = subprocess.run(
            [sys.executable, "-I", "-X", "importtime", startup_watchdog.__file__,
             str(waiting.pid), "0.2", "error: the cluster did not start"],
            capture_output=True, text=True, timeout=60)
        assert waiting.wait(timeout=60) == -signal.SIGKILL
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert watchdog.returncode == 0
    lines = watchdog.stderr.splitlines()
    assert [line for line in lines if not line.startswith("import time:")] == [
        "error: the cluster did not start"]
    # Isolated mode: neither tfkd nor TensorFlow is imported (seconds and hundreds of MB per worker).
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "os" in imported or "posix" in imported
    assert not {name for name in imported if name.startswith(("tensorflow", "tfkd", "keras"))}
