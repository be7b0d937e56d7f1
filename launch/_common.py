"""Helpers shared by the launchers: the repo on sys.path, quiet TF logs, flags.json."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # Run from a checkout without `pip install -e .`.
    sys.path.insert(0, _REPO)


def write_flags_json(flags_module, workdir: str) -> str:
    """Writes the launcher's own flags (name -> value) to ``<workdir>/flags.json``, SimCLR style."""
    os.makedirs(workdir, exist_ok=True)
    main_module = sys.argv[0]
    values = {}
    for module, module_flags in flags_module.FLAGS.flags_by_module_dict().items():
        if module == main_module or module.endswith(os.path.basename(main_module)):
            values.update({f.name: f.value for f in module_flags})
    path = os.path.join(workdir, "flags.json")
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    return path
