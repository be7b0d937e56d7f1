"""The machine and the day of stored runs, for RESULTS.md: a time figure names what it ran on and
when, not the sitting it came from.

A stored report holds no timestamp. Its day is that of the last commit that wrote it (the run
finished that day or before); a report git does not hold yet is dated by its file's modification
time (a run just made); without git, no day ("-").
"""

import datetime
import functools
import os
import subprocess

MACHINE = "the 2-core development machine (Linux x86-64, 2 CPU cores, no GPU)"
"""Where every stored run was made (BUILD_NOTES.md, "Tested on")."""

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def day(path: str) -> str | None:
    """``YYYY-MM-DD`` of the report at ``path`` (absolute, or relative to the repository), or None."""
    path = os.path.join(_REPO, path)
    try:
        result = subprocess.run(["git", "-C", _REPO, "log", "-1", "--format=%ad", "--date=short", "--",
                                 os.path.relpath(path, _REPO)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):  # No git here.
        return None
    if result.returncode != 0:
        return None
    if result.stdout.strip():
        return result.stdout.strip()
    if os.path.exists(path):  # Not committed yet: the run that wrote it.
        return datetime.date.fromtimestamp(os.path.getmtime(path)).isoformat()
    return None


def days(paths) -> str:
    """The day (``2026-11-28``) or span of days (``2026-11-21 to 2026-11-22``) of these reports;
    ``-`` when none has one."""
    found = sorted({d for d in map(day, paths) if d})
    if not found:
        return "-"
    return found[0] if len(found) == 1 else f"{found[0]} to {found[-1]}"
