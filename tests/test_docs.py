"""The docs name what exists: the README's flag table lists exactly the flags of
``launch/distill.py``, and every repository file and ``tfkd`` name the docs mention is there
(docs that drifted from the code once named a function that no longer existed)."""

import importlib
import os
import re
import subprocess
import sys

from conftest import REPO

DOCS = ("README.md", "BUILD_NOTES.md", "CHANGELOG.md", "serving/README.md")
# Files of the repository are named from these folders; other paths in the docs are work-dir paths.
TRACKED_ROOTS = ("tfkd/", "tests/", "launch/", "benchmarks/", "serving/")


def _read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def test_the_readme_flag_table_lists_exactly_the_launchers_flags():
    script = ("from absl import flags\nfrom launch import distill as d\n"
              "print(' '.join(sorted(f.name for f in flags.FLAGS.get_key_flags_for_module(d))))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr[-2000:]
    defined = set(out.stdout.split())
    readme = _read("README.md")
    start = readme.index("## Main flags of `launch/distill.py`")
    table = readme[start:readme.index("\nOther launchers", start)]
    listed = set(re.findall(r"`--([a-z0-9_]+)", table))
    assert len(defined) >= 90
    assert defined - listed == set(), "flags missing from the README's table"
    assert listed - defined == set(), "the README's table names flags the launcher lacks"


def test_every_file_and_tfkd_name_the_docs_mention_exists():
    missing = []
    for doc in DOCS:
        text = _read(doc)
        for path in set(re.findall(r"`([A-Za-z0-9_./-]+)`", text)):
            if path.startswith(TRACKED_ROOTS) and not os.path.exists(os.path.join(REPO, path)):
                missing.append(f"{doc}: {path}")
        for link in set(re.findall(r"\]\(([A-Za-z0-9_./-]+)\)", text)):  # Markdown links.
            if not os.path.exists(os.path.join(REPO, os.path.dirname(doc), link)):
                missing.append(f"{doc}: ({link})")
        for name in set(re.findall(r"`(tfkd(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text)):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{doc}: {name}")
                break
    assert not missing, sorted(set(missing))
