"""`.ci/run` itself: CI must test in an environment that holds only what its install step puts
there, so that a package installed by hand on the machine (pyyaml, once) cannot hide a missing
install step or an unguarded optional import."""

import os
import subprocess
import sys

from conftest import REPO


def test_ci_creates_and_uses_its_own_isolated_venv(tmp_path):
    """``CI_STEPS=venv`` runs .ci/run's environment step alone (a real venv, made in seconds): its
    python is a virtual environment without the machine's site-packages (numpy, installed in the
    environment running this test, cannot be imported there), made afresh each run (what an
    earlier run left in the directory is gone)."""
    # Before: this test also asserted the script's text (no ``--system-site-packages``, each
    # ``pip``/``pytest``/``ruff`` line starting with ``"$VENV/bin/python"``), which restated the
    # script; what the environment holds is checked by running it.
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "left-by-an-earlier-run").write_text("stale")
    result = subprocess.run(["bash", os.path.join(REPO, ".ci", "run")], capture_output=True,
                            text=True, timeout=300,
                            env=dict(os.environ, CI_STEPS="venv", CI_VENV=str(venv)))
    assert result.returncode == 0, result.stderr[-2000:]
    python = result.stdout.strip().splitlines()[-1]
    assert python == f"{venv}/bin/python"
    assert not (venv / "left-by-an-earlier-run").exists(), sorted(p.name for p in venv.iterdir())
    probe = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix != sys.base_prefix)\n"
         "try:\n import numpy\n print('numpy')\nexcept ImportError:\n print('isolated')"],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["True", "isolated"], probe.stdout + probe.stderr


_BLOCKED_COLLECTION = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_ci)", name=name)
sys.meta_path.insert(0, Missing())
for name in list(sys.modules):
    if name.split(".")[0] in {blocked!r}:
        del sys.modules[name]
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", {tests!r}]))
"""


def test_collection_survives_without_the_optional_packages():
    """The whole suite collects with the optional packages (kfp and kserve, their extras;
    matplotlib,
    the ``benchmarks`` extra; pyyaml is a dependency since ``--config_file``) made unimportable,
    as on a fresh machine with only ``.[test]``: a module that needs one must skip through
    ``pytest.importorskip`` (a top-level ``import yaml`` once stopped collection: "Interrupted: 1
    error during collection")."""
    code = _BLOCKED_COLLECTION.format(blocked=("kfp", "kserve", "matplotlib"),
                                      tests=os.path.join(REPO, "tests"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "error" not in result.stdout.splitlines()[-1], result.stdout[-3000:]
