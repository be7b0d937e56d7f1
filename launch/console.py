"""A console a person reads: what a launcher prints, less the noise TensorFlow makes on its own.

Every launcher calls :func:`start` first thing, before TensorFlow is imported. Without
``--verbosity=1`` (absl's debug level, ``-v 1``; or higher) on the command line it:

* sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment sets it: TensorFlow's C++ runtime then
  prints errors only, once it has read the variable;
* sends file descriptor 2 (stderr, Python's and C++'s, and that of any child process) through a
  filter process, which drops the lines TensorFlow's native libraries print while they load,
  before any variable is read, or on a machine without a GPU, and passes every other line:

  - C++ log lines (``I0000 00:00:1796676594.762551   16314 port.cc:153] oneDNN custom operations
    are on...``: a severity letter, date, time, thread, a C/C++ source file and line) below the
    ``TF_CPP_MIN_LOG_LEVEL`` severity (I is 0, W 1, E 2; an F line, a fatal error, always passes);
  - the start-up and GPU-less noise of any severity: ``failed call to cuInit`` (an E line on a
    machine without a GPU), ``Unable to register cuDNN factory`` and its kin, absl's ``WARNING: All
    log messages before absl::InitializeLog() is called are written to STDERR``, the second line of
    ``cpu_feature_guard.cc`` (``To enable the following instructions: AVX2 ...``), and LiteRT's
    ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` and converter line
    ``fully_quantize: 0, inference_type: 6, ...``;
* sets the Python logger ``tensorflow`` to ERROR and drops the INFO and WARNING records that
  TensorFlow's and Keras' own modules log through absl's logger (when a SavedModel is saved:
  ``Assets written to``, ``Issue encountered when serializing table_initializer``, ``Sharding
  callback duration``, ``Writing fingerprint``), and ignores the Keras and TensorFlow warnings in
  :data:`IGNORED_WARNINGS`: none of these is something a user of the launcher can act on.

tfkd's own log lines (absl's format, whose file is a ``.py`` file), Keras' epoch lines and progress
bars (stdout, which is not filtered), ``error: ...`` lines and Python tracebacks pass unchanged and
in order: Python's ``sys.stderr`` writes to the same descriptor. The filter is a process of its own
(forked before TensorFlow is imported), not a thread: it needs no GIL (TensorFlow holds it in some
waits), and it outlives its launcher, so the lines written just before an abort (a C++ ``F`` line),
a SIGKILL (tfkd's start-up watchdog writes its line, then kills the launcher) or ``os._exit`` still
reach the terminal. At a normal exit the launcher waits (up to 10 s) for the filter to have written
everything, tracebacks and a last line without a newline included.

To see everything: ``--verbosity=1`` (or ``-v 1``, or higher) given on the command line (a
``--flagfile`` is not read for it) turns all of this off: no filter, no default
``TF_CPP_MIN_LOG_LEVEL``, no logger level or warning filter. ``TF_CPP_MIN_LOG_LEVEL=0`` (or 1) in
the environment passes the C++ runtime's INFO (and WARNING) lines but still drops the noise above.

The standard library and absl only, and a module of ``tfkd_launch`` (``launch/``), not of ``tfkd``:
importing anything from ``tfkd`` imports TensorFlow, which is what must not have happened yet.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import signal
import sys
import warnings

CPP_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "
                      rb"[^ \]]+\.(?:cc|cpp|cxx|c|h|hpp|inc|cu):\d+\]")
"""A line of TensorFlow's (and gRPC's) C++ runtime: glog's format, from a C or C++ source file.
absl's Python lines have the same format with a ``.py`` file, and pass."""

NOISE = re.compile(rb"^(?:" + rb"|".join([
    # Any C++ line of the start-up and GPU-less noise, of any severity.
    rb"[IWEF]\d{4} [^\]]*\] (?:.*failed call to cuInit|Unable to register cu\w+ factory"
    rb"|.*computation placer already registered|oneDNN custom operations are on"
    rb"|This TensorFlow binary is optimized|Could not find cuda drivers"
    rb"|.*kernel driver does not appear to be running|TF-TRT Warning)",
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.",
    rb"INFO: (?:Created|Initialized) TensorFlow Lite",
    rb"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+",
]) + rb")")
"""Lines dropped whatever ``TF_CPP_MIN_LOG_LEVEL`` says (matched at the start of a line)."""

IGNORED_WARNINGS = (
    # Keras, when tfkd's fit passes shuffle=True with a tf.data.Dataset (already shuffled).
    (r"`shuffle=True` was passed, but will be ignored", UserWarning),
    # TensorFlow's tf.lite.Interpreter, which tfkd's int8 evaluation uses.
    (r"\s*Warning: tf\.lite\.Interpreter is deprecated", UserWarning),
)
"""(message regex, category) of the Python warnings ignored, as ``warnings.filterwarnings`` takes."""

_SEVERITY = {ord("I"): 0, ord("W"): 1, ord("E"): 2, ord("F"): 3}
_SENTINEL = b"\x00tfkd-console-flush\x00\n"  # Written at exit; the filter answers once past it.
_WAIT_AT_EXIT_S = 10.0
_PARTIAL_LINE_S = 0.2  # A line with no newline yet is judged and passed on after this long.
_started = False


def verbosity_asked(argv: list[str]) -> bool:
    """True when ``argv`` (the command line, program name first) sets absl's ``--verbosity`` /
    ``-v`` to 1 or more (the last one given counts; ``--`` ends the flags)."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        match = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
        if match:
            value = match.group(1) if match.group(1) is not None else (
                argv[i + 1] if i + 1 < len(argv) else None)
    try:
        return value is not None and int(value) >= 1
    except ValueError:
        return False


def keep(line: bytes, level: int) -> bool:
    """Whether the filter passes ``line`` (bytes, its line ending included or not) when C++ lines
    below severity ``level`` (``TF_CPP_MIN_LOG_LEVEL``: 0 INFO, 1 WARNING, 2 ERROR) are dropped."""
    if NOISE.match(line):
        return False
    cpp = CPP_LINE.match(line)
    return cpp is None or line[0] == ord("F") or _SEVERITY[line[0]] >= level


def start(module_name: str, command: str) -> bool:
    """Quiets the console of the launcher being run: call it before TensorFlow is imported, with
    the launcher's ``__name__`` and its console command (``tfkd-distill``). Does nothing when the
    command line asks for ``--verbosity=1`` or more, or when called again; only sets the default
    ``TF_CPP_MIN_LOG_LEVEL`` when the module is imported rather than run (a test imports
    ``launch.distill``). Returns whether the filter is on."""
    global _started
    if _started or verbosity_asked(sys.argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if module_name != "__main__" and os.path.basename(sys.argv[0]) != command:
        return False  # Imported, not run: only the variable, as before.
    _started = True
    from absl import logging as absl_logging  # Its logger class first (absl's caller lookup).

    absl_logging.get_absl_logger().addFilter(_not_theirs)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = 2
    return filter_stderr(level)


_THEIR_FILES = re.compile(r"[/\\](?:site|dist)-packages[/\\](?:tensorflow|keras|tf_keras)[/\\]")


def _not_theirs(record: logging.LogRecord) -> bool:
    """A filter of the ``absl`` logger: drops the INFO and WARNING records that TensorFlow's and
    Keras' own modules log through absl (``Sharding callback duration``, ``Writing fingerprint``),
    keeping tfkd's, which share the logger and its format."""
    return record.levelno >= logging.ERROR or not _THEIR_FILES.search(record.pathname or "")


def filter_stderr(level: int) -> bool:
    """Sends file descriptor 2 through a forked filter process (:func:`keep` at ``level``) that
    writes to the original stderr, and registers the wait for it at exit. Returns False (nothing
    changed) where that cannot be done: no ``os.fork``, or no usable descriptor 2."""
    if not hasattr(os, "fork"):
        return False
    try:
        real = os.dup(2)
    except OSError:
        return False
    read_end, write_end = os.pipe()
    ack_read, ack_write = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # Not written twice by the child's copy of the buffers.
    pid = os.fork()
    if pid == 0:  # The filter: only os calls, then os._exit (no atexit, no buffer flushed twice).
        code = 0
        try:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(signum, signal.SIG_IGN)  # Ctrl-C must not lose the traceback.
            _close_all_but({read_end, real, ack_write})
            _filter(read_end, real, ack_write, level)
        except BaseException:  # Nothing may escape into the launcher's code.
            code = 1
        finally:
            os._exit(code)
    os.close(read_end)
    os.close(ack_write)
    os.close(real)
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_wait_for_filter, os.getpid(), ack_read)
    return True


def _close_all_but(keep_fds: set[int]) -> None:
    """Closes every descriptor of this (forked) process but ``keep_fds``: the filter must not hold
    the launcher's stdout, stdin or other pipes open after the launcher exits."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(1024))
    for fd in fds:
        if fd not in keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _filter(source: int, sink: int, ack: int, level: int) -> None:
    """Reads ``source`` to its end and writes the lines :func:`keep` passes to ``sink`` (a line
    ends at a newline or carriage return; a partial line is judged after a short wait). A sink that
    fails (a closed terminal) is dropped but ``source`` is still read, so writers never block."""
    pending = b""
    state = {"sink": sink}
    while True:
        if pending and not select.select([source], [], [], _PARTIAL_LINE_S)[0]:
            _write(state, pending, level)
            pending = b""
            continue
        chunk = os.read(source, 65536)
        if not chunk:
            break
        pending += chunk
        lines = re.split(rb"(?<=[\n\r])", pending)
        pending = lines.pop()  # b"" after a line ending, else the start of a line.
        for line in lines:
            if line.endswith(_SENTINEL):  # After the launcher's last line, newline or not.
                _write(state, line[:-len(_SENTINEL)], level)
                _acknowledge(ack)
            else:
                _write(state, line, level)
    if pending:
        _write(state, pending, level)


def _write(state: dict, line: bytes, level: int) -> None:
    if state["sink"] is None or not keep(line, level):
        return
    try:
        while line:
            line = line[os.write(state["sink"], line):]
    except OSError:
        state["sink"] = None


def _acknowledge(ack: int) -> None:
    try:
        os.write(ack, b"1")
    except OSError:
        pass


def _wait_for_filter(pid: int, ack_read: int) -> None:
    """At exit: the filter has written everything this process wrote before (a traceback, a last
    line with no newline) once it answers the sentinel; waits up to ``_WAIT_AT_EXIT_S``."""
    if os.getpid() != pid:  # A forked child of the launcher exiting: not its filter to wait for.
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os.write(2, _SENTINEL)
        select.select([ack_read], [], [], _WAIT_AT_EXIT_S)
    except (OSError, ValueError):
        pass
