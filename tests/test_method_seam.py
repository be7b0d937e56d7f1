"""The shipped methods use the seam a plug-in uses (issue 36): a field added to a shipped family's
config class (``Method.config_class``) is, with no other edit, a flag of ``tfkd-distill`` (with its
docstring as help), an entry of ``flags.json``, a setting of ``tfkd.distill`` (by its own name or in
``method_config``) and a value in ``report.json``; ``DistillConfig`` names no method family.

Before the fix: the FS-BBT family's settings were fields of ``DistillConfig`` mapped to ~45
hand-written flags, so such a field was none of these."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

import tfkd
from tfkd import config as config_lib
from tfkd import errors
from tfkd import methods
from tfkd.methods.fsbbt import FSBBTConfig
from tfkd.methods.fsbbt import method as fsbbt_method

from conftest import REPO

EXTENDED = '''
import dataclasses
from tfkd.methods.fsbbt import FSBBTConfig
from tfkd.methods.fsbbt import method as fsbbt_method


@dataclasses.dataclass(frozen=True)
class Extended(FSBBTConfig):
    """FS-BBT's settings and one more.

    Attributes:
      probe_count: a setting added for the test, >= 0.
    """

    probe_count: int = 3

    def validate(self):
        super().validate()
        if self.probe_count < 0:
            from tfkd import errors
            raise errors.ConfigError(f"probe_count={self.probe_count}: expected >= 0")


fsbbt_method.Family.config_class = Extended
'''


@pytest.fixture
def extended(monkeypatch):
    """The FS-BBT family's config class with one field more, in this process."""
    space = {}
    exec(compile(EXTENDED.replace("fsbbt_method.Family.config_class = Extended", ""), "extended",
                 "exec"), space)
    monkeypatch.setattr(fsbbt_method.Family, "config_class", space["Extended"])
    return space["Extended"]


def test_distill_config_names_no_method_family_and_imports_no_algorithm():
    fields = {f.name for f in dataclasses.fields(tfkd.DistillConfig)}
    own = {f.name for f in dataclasses.fields(FSBBTConfig)}
    assert not fields & (own | {"db3kd", "zsdb3kd", "zskd", "zskd_blackbox"})
    imported = {v.__name__ for v in vars(config_lib).values() if type(v) is type(sys)}
    assert "tfkd.methods" in imported and not any(n.startswith("tfkd.methods.") for n in imported)
    for name in methods.names():  # Every shipped method is reachable by name, through the registry.
        assert methods.get(name).name == name


def test_a_new_field_is_a_flag_with_help_and_in_flags_json():
    script = EXTENDED + textwrap.dedent('''
        import json
        from absl import flags
        from launch import distill as d
        from tfkd import errors
        F = flags.FLAGS
        F(["x", "--workdir=/tmp/unused", "--probe_count=9", "--num_mixup=10"])
        c = d.config_from_flags().resolved()
        out = {"value": c.method_config.probe_count, "mixup": c.method_config.mixup.num_images,
               "in_flags_json": d.flag_values().get("probe_count"), "help": F["probe_count"].help}
        F.unparse_flags()
        F(["x", "--workdir=/tmp/unused", "--method=db3kd", "--probe_count=9"])
        try:
            d.config_from_flags()
        except errors.ConfigError as e:
            out["other_method"] = str(e)
        F.unparse_flags()
        F(["x", "--workdir=/tmp/unused", "--probe_count=-1"])
        try:
            d.config_from_flags().validate()
        except errors.ConfigError as e:
            out["refused"] = d.with_flag_names(str(e))
        print("RESULT " + json.dumps(out))
    ''')
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    assert (out["value"], out["mixup"], out["in_flags_json"]) == (9, 10, 9)
    assert "a setting added for the test" in out["help"]
    assert out["other_method"].startswith("--probe_count: a setting of method ")
    assert "not of --method=db3kd" in out["other_method"]
    assert out["refused"] == "probe_count=-1: expected >= 0"


def test_a_new_field_is_a_setting_of_distill_and_reaches_report_json(extended, server, tmp_path):
    with pytest.raises(errors.ConfigError, match=r"probe_count=-2: expected >= 0"):
        tfkd.DistillConfig(workdir="w").with_settings({"probe_count": -2}).validate()
    # By its own name and inside method_config: the same setting.
    by_name = tfkd.DistillConfig(workdir="w").with_settings({"probe_count": 4}).resolved()
    inside = tfkd.DistillConfig(workdir="w", method_config={"probe_count": 4}).resolved()
    assert by_name.method_config == inside.method_config == extended(probe_count=4).resolved(
        "fashion_mnist", False)
    report = tfkd.distill(
        workdir=str(tmp_path), method="standard_kd", method_config={"probe_count": 5},
        teacher={"target": server.target}, num_shots=20, num_validation=0, eval_examples=100,
        evaluate_teacher=False, compress=(), verbose=0,
        student={"epochs": 1, "batch_size": 10})
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["method_config"]["probe_count"] == 5 == report.method_config["probe_count"]
    assert stored["method_config"]["mixup"]["num_images"] == FSBBTConfig().mixup.num_images
