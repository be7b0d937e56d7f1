"""Ends a process that waits too long: after SECONDS, writes MESSAGE and a newline to stderr and
kills process PID with SIGKILL.

  python -I tfkd/startup_watchdog.py PID SECONDS MESSAGE
  python -m tfkd.startup_watchdog PID SECONDS MESSAGE     # the same, after importing tfkd

:func:`tfkd.distribute.make_strategy` runs it (the first form) beside the start of a
MultiWorkerMirroredStrategy, whose wait for the cluster's other tasks holds the GIL and takes
SIGTERM as a preemption notice, so only another process can end it; the watchdog is killed once the
strategy is made. The standard library only: run as a script in isolated mode, it starts in tens of
milliseconds and a few MB, where importing tfkd (TensorFlow) would take seconds and hundreds of MB
in every worker of a cluster.
"""

import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    """Sleeps ``argv[2]`` seconds (a float >= 0), writes ``argv[3]`` and a newline to stderr, then
    sends SIGKILL to process ``argv[1]`` (an int). Returns 0 (when the process is already gone,
    ``ProcessLookupError`` propagates: a traceback after the line, exit status 1)."""
    pid, seconds, message = int(argv[1]), float(argv[2]), argv[3]
    time.sleep(seconds)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
