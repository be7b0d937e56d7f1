"""tfkd's absl-flag launchers, installed as the package ``tfkd_launch`` with the commands
``tfkd-distill``, ``tfkd-serve``, ``tfkd-train-teacher``, ``tfkd-evaluate`` and ``tfkd-deploy``; each
is also a script (``python launch/distill.py``). A launcher parses flags into a config and makes one
library call."""
