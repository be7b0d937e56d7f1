"""Issue 25 §2: every flag of ``launch/distill.py`` reaches the config the run is built from. An
audit found ``--mixup_alpha`` parsed and validated but never passed on; this holds every flag to it.

``tests/helpers/flag_wiring.py`` parses each flag, one at a time, to a value other than its default
(in a child process: absl's FLAGS are process-global) and looks for that value among the fields of
``config_from_flags()`` that changed."""

import json
import os
import subprocess
import sys

from conftest import REPO

# Flags read outside the config, each with where it goes instead.
NOT_IN_CONFIG = {
    "strategy": "main() builds the tf.distribute strategy from it before anything else (a "
                "MultiWorkerMirroredStrategy must exist before other TensorFlow work) and passes "
                "it to pipeline.run beside the config",
    "cluster_startup_timeout": "read with --strategy by make_strategy, before the config",
    "plugins": "main() imports these modules (their import registers methods) before the config "
               "is built",
    "params_override": "a JSON object of dotted settings applied over the other flags "
                       "(tests/test_contract.py checks that its values reach the config)",
    "method_settings": "parsed as JSON into DistillConfig.method_config, the method's own config "
                       "(tests/test_plugin_method.py finds a value of it in the run's report)",
}


def test_every_distill_flag_reaches_the_config():
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                          "flag_wiring.py"), "distill"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    wiring = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(wiring) >= 90 and "mixup_alpha" in wiring  # Every flag was tried.
    broken = {name: why for name, why in wiring.items()
              if why != "ok" and name not in NOT_IN_CONFIG}
    assert not broken, broken
    assert all(wiring[name] != "ok" for name in NOT_IN_CONFIG), "no longer outside the config"
