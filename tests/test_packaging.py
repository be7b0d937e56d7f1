"""Every package under ``tfkd/`` is listed in ``setup.cfg`` (``packages`` is explicit): a wheel or
non-editable install ships it. Before the fix: ``tfkd.export`` and the method families' packages,
new in issue 36, were not listed, so ``pip install .`` left them out."""

import configparser
import os

from conftest import REPO


def test_every_package_directory_is_listed_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    listed = set(parser["options"]["packages"].split())
    found = {os.path.relpath(root, REPO).replace(os.sep, ".")
             for root, _, files in os.walk(os.path.join(REPO, "tfkd"))
             if "__init__.py" in files and "__pycache__" not in root}
    assert found and found <= listed, sorted(found - listed)
