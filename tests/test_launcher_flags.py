"""Issue 36, finding 2: ``launch/distill.py``'s flags are generated from the config dataclasses
(:mod:`tfkd.settings`): every setting is a flag whose value reaches that setting, the short names
users type are aliases of them, a plug-in method's own settings are flags after ``--plugins``
(listed by ``--help``), and ``--config_file`` (YAML or JSON) applies under the flags. The flags
are parsed in one child process for all the tests (absl's FLAGS are process-global; one TensorFlow
import instead of one per parse); ``--help`` and one error run the command as a process.

Before the fix: about 110 flags were defined and mapped to fields by hand (an audit found
``--mixup_alpha`` parsed and never passed on), 45 settings had no flag (``mixup.low``,
``teacher.retry.initial_backoff_s``, ...), a plug-in's settings were only reachable as JSON, and
there was no ``--config_file``.
"""

import json
import os
import subprocess
import sys

import pytest

from tfkd import methods
from tfkd import pipeline
from tfkd import settings

from conftest import REPO
from conftest import launchers_in_one_process
from conftest import printed

EVERY_FLAG = r"""
import json
d, out = launcher("distill"), {}
def value(s):  # A value other than the default, of the flag's kind.
    if s.kind == "bool": return [not s.default]
    if s.kind == "int": return [(s.default or 0) + 3]
    if s.kind == "float": return [(s.default or 0.25) * 1.5]
    if s.kind == "list": return [["7", "9"] if s.item in ("int", "float") else ["a", "b"]]
    return ["/tmp/x-" + s.name]
for name, s in d.SETTINGS.items():
    args = ["--images=/tmp/imgs"] if name.startswith("images_") and name != "images_path" else []
    v = value(s)[0]
    arg = f"--{name}" if v is True else f"--no{name}" if v is False else (
        f"--{name}={','.join(v)}" if isinstance(v, list) else f"--{name}={v}")
    parse("distill", "--workdir=/tmp/w", *args, arg)
    config = d.config_from_flags()
    got = config
    for part in s.name.split("."): got = getattr(got, part)
    want = tuple(s.items(v)) if isinstance(v, list) else v
    out[name] = got == want or repr((got, want))
for name, (s, owners) in d.METHOD_SETTINGS.items():  # A method's own: under one of its methods.
    v = value(s)[0]
    arg = f"--{name}" if v is True else f"--no{name}" if v is False else (
        f"--{name}={','.join(v)}" if isinstance(v, list) else f"--{name}={v}")
    parse("distill", "--workdir=/tmp/w", f"--method={sorted(owners)[0]}", arg)
    got = d.config_from_flags().resolved().method_config
    for part in s.name.split("."): got = getattr(got, part)
    want = tuple(s.items(v)) if isinstance(v, list) else v
    out[name] = got == want or repr((got, want))
print("WIRING " + json.dumps(out))
"""


def test_every_setting_is_a_flag_whose_value_reaches_it(parsed):
    out = printed(parsed, "every_flag")
    wiring = json.loads(next(x for x in out.splitlines() if x.startswith("WIRING "))[7:])
    every = {s.name.replace(".", "_") for s in settings.settings(pipeline.DistillConfig)}
    shipped = {type(methods.get(m)).__module__.startswith("tfkd.") and methods.get(m).config_class
               for m in methods.names()} - {False, None}
    own = {s.name.replace(".", "_") for cls in shipped for s in settings.settings(cls)}
    assert set(wiring) == every | own and len(every | own) > 130
    assert {n: w for n, w in wiring.items() if w is not True} == {}


ALIASES = r"""
d = parse("distill", "--workdir=/tmp/w", "--num_mixup=7", "--teacher=h:1", "--query_budget=9",
          "--train_mixup_alpha=0.5", "--batch_size=16", "--teacher_max_attempts=2",
          "--student_model=/tmp/m.keras", "--votes=3", "--eval_images=/tmp/e", "--images=/tmp/i")
c = d.config_from_flags()
o = c.resolved().method_config
print("ALIASES", o.mixup.num_images, c.teacher.target, c.teacher.query_budget, c.student.mixup_alpha,
      c.student.batch_size, c.teacher.retry.max_attempts, c.student.architecture, o.votes.votes,
      c.images.eval_path, c.images.path)
"""


def test_the_short_names_users_type_still_set_their_settings(parsed):
    out = printed(parsed, "aliases")
    assert next(x for x in out.splitlines() if x.startswith("ALIASES")).split()[1:] == [
        "7", "h:1", "9", "0.5", "16", "2", "/tmp/m.keras", "3", "/tmp/e", "/tmp/i"]


LAYERS = r"""
import os
path = os.path.join(TMP, name)
with open(path, "w") as f:
    f.write(text)
d = parse("distill", "--workdir=/tmp/w", f"--config_file={path}", "--student_epochs=4",
          '--params_override={"seed": 5}')
c = d.config_from_flags()
print("LAYERS", c.student.epochs, c.resolved().method_config.mixup.num_images, c.seed,
      c.teacher.query_budget)
"""


RUN_YAML = "student:\n  epochs: 30\nmixup.num_images: 800\nseed: 1\nteacher:\n  query_budget: 1000\n"
RUN_JSON = json.dumps({"mixup": {"num_images": 900}})


def test_a_config_file_applies_under_the_flags_and_params_override_over_them(parsed):
    out = printed(parsed, "layers_yaml")  # The file: RUN_YAML.
    assert next(x for x in out.splitlines() if x.startswith("LAYERS")).split()[1:] == [
        "4", "800", "5", "1000"]
    out = printed(parsed, "layers_json")  # The file: RUN_JSON.
    assert next(x for x in out.splitlines() if x.startswith("LAYERS")).split()[1:3] == ["4", "900"]


def _launch(*flags):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "distill.py"), *flags],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO}/tests"})


BAD_ITEMS = r"""
import json
print(json.dumps([command("distill", f"--workdir={TMP}/w", f"--config_file={TMP}/none.yaml"),
                  command("distill", f"--workdir={TMP}/w", "--teacher_class_map=2,x")]))
"""


def test_a_bad_config_file_or_a_bad_list_item_is_one_line(tmp_path, parsed):
    # As a process: exit status 1 and one "error:" line, no traceback.
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    result = _launch(f"--workdir={tmp_path / 'w'}", f"--config_file={bad}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: config_file={str(bad)!r}: expected a mapping of settings, got list"), \
        result.stderr[-500:]
    # The other two run as the launcher runs them, in the child (a traceback there fails printed()).
    (status, line), (status2, line2) = json.loads(printed(parsed, "bad_items"))
    assert status == 1 and line.startswith("error: config_file="), line
    assert status2 == 1 and line2.startswith(
        "error: teacher.class_map=2,x: expected comma-separated ints"), line2


# The cases below load tests/test_one_file_method.py as a plug-in (it registers a method in the
# child): they run last.
PLUGIN_OWN = r"""
d = parse("distill", "--plugins=test_one_file_method:register", "--workdir=/tmp/w",
          "--method=test_one_file_noise", "--test_one_file_noise_num_noise=33")
print("OWN", d.config_from_flags().resolved().method_config)
"""
PLUGIN_OTHER = r"""
import json
print(json.dumps(command("distill", "--plugins=test_one_file_method:register", f"--workdir={TMP}/w",
                         "--test_one_file_noise_num_noise=33")))
"""


def test_a_plugins_settings_are_flags_listed_by_help_and_reach_its_config(parsed):
    # tests/test_one_file_method.py's register() adds a method with a config class (NoiseConfig).
    # As a process: --help reads --plugins first.
    listed = _launch("--plugins=test_one_file_method:register", "--helpfull")
    assert listed.returncode in (0, 1), listed.stderr[-2000:]
    assert "--test_one_file_noise_num_noise" in listed.stdout + listed.stderr
    assert "num_noise=33" in next(x for x in printed(parsed, "plugin_own").splitlines()
                                  if x.startswith("OWN"))
    assert json.loads(printed(parsed, "plugin_other")) == [1, (
        "error: --test_one_file_noise_num_noise: a setting of method test_one_file_noise, not of "
        "--method=fsbbt")]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """Every parse of this file's tests, in one child process (in this order)."""
    return launchers_in_one_process(
        {"every_flag": EVERY_FLAG, "aliases": ALIASES,
         "layers_yaml": (LAYERS, {"name": "run.yaml", "text": RUN_YAML}),
         "layers_json": (LAYERS, {"name": "run.json", "text": RUN_JSON}),
         "bad_items": BAD_ITEMS, "plugin_own": PLUGIN_OWN, "plugin_other": PLUGIN_OTHER},
        str(tmp_path_factory.mktemp("launcher_flags")), pythonpath=(REPO, os.path.join(REPO, "tests")))
