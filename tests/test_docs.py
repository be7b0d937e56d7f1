"""The docs name what exists: the README's flag table lists exactly the flags of
``launch/distill.py``, and every repository file and ``tfkd`` name the docs mention is there
(docs that drifted from the code once named a function that no longer existed)."""

import importlib
import os
import re

import pytest

from conftest import REPO
from conftest import launchers_in_one_process
from conftest import printed

DOCS = ("README.md", "BUILD_NOTES.md", "CHANGELOG.md", "serving/README.md", "docs/methods.md",
        "docs/budget_and_checks.md", "docs/workdir.md", "docs/mlops.md", "docs/layout.md")
# Files of the repository are named from these folders; other paths in the docs are work-dir paths.
TRACKED_ROOTS = ("tfkd/", "tests/", "launch/", "benchmarks/", "serving/")


def _read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


@pytest.fixture(scope="module")
def launchers(tmp_path_factory):
    """The flag reference and the flags each launcher defines, from one child process (absl's
    FLAGS are process-global; each launcher's flags are removed before the next is imported)."""
    return launchers_in_one_process({
        "reference": "from launch import flag_reference\nprint(flag_reference.markdown(), end='')",
        "defined": "for name in ('distill', 'serve', 'deploy', 'evaluate', 'train_teacher'):\n"
                   "    launcher(name)\n"
                   "    print(name, ' '.join(FLAGS))\n"}, str(tmp_path_factory.mktemp("docs")))


def test_the_flag_reference_is_current(launchers):
    # docs/flags.md is generated: `python -m launch.flag_reference > docs/flags.md` when this fails.
    generated = printed(launchers, "reference")
    assert generated == _read("docs/flags.md"), "docs/flags.md is stale: regenerate it"
    assert len(re.findall(r"^\| `--", generated, re.M)) > 140


def test_every_flag_the_docs_name_is_one_a_launcher_defines(launchers):
    by_launcher = dict(line.split(" ", 1) for line in printed(launchers, "defined").splitlines())
    assert set(by_launcher) == {"distill", "serve", "deploy", "evaluate", "train_teacher"}
    defined = set(" ".join(by_launcher.values()).split())
    defined |= {"help", "helpfull", "helpshort"}  # absl's, defined when a launcher runs.
    named = {(doc, n) for doc in DOCS if doc != "CHANGELOG.md"
             for n in re.findall(r"`--(?:no)?([a-z][a-z0-9_]*)", _read(doc))}
    assert len(named) > 30
    assert {(doc, n) for doc, n in named if n not in defined and n[2:] not in defined} == set()


def test_every_file_and_tfkd_name_the_docs_mention_exists():
    missing = []
    for doc in DOCS:
        text = _read(doc)
        history = doc == "CHANGELOG.md"  # It names what was: only its links must resolve.
        for path in set(re.findall(r"`([A-Za-z0-9_./-]+)`", text)) if not history else ():
            if path.startswith(TRACKED_ROOTS) and not os.path.exists(os.path.join(REPO, path)):
                missing.append(f"{doc}: {path}")
        for link in set(re.findall(r"\]\(([A-Za-z0-9_./-]+)\)", text)):  # Markdown links.
            if not os.path.exists(os.path.join(REPO, os.path.dirname(doc), link)):
                missing.append(f"{doc}: ({link})")
        for name in set(re.findall(r"`(tfkd(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text)) if not history else ():
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
