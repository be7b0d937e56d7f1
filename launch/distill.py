r"""Distils a TF-Serving-served teacher into a compact student (FS-BBT by default; --method).

No flags: the paper's Fashion-MNIST setting (a LeNet-5 teacher trained and served locally).

Each setting of tfkd.DistillConfig, and of the method's own config class, is a flag: its dotted
name with "_" for "." (--student_epochs, --mixup_alpha), help and default from the dataclasses
(tfkd.settings); ALIASES keeps short names. Applied in order: defaults, AIP_* dirs, --config_file,
the flags given, --method_settings, --params_override; the library validates them (docs/flags.md).
"""

import json
import os
import re
import sys

try:  # First, before TensorFlow is imported: the console filter (launch/console.py).
    from . import console
except ImportError:  # A script (python launch/x.py) or a file loaded by path: the installed one.
    from tfkd_launch import console

console.start(__name__, "tfkd-distill")

from absl import app
from absl import flags
from absl import logging

from tfkd import distribute
from tfkd import errors
from tfkd import methods
from tfkd import pipeline
from tfkd import report as report_lib
from tfkd import settings as settings_lib
from tfkd import vertex

ALIASES = {  # The short names users type, each an alias of a generated flag.
    "teacher": "teacher_target", "teacher_signature": "teacher_signature_name",
    "teacher_output": "teacher_output_kind", "teacher_timeout": "teacher_timeout_s",
    "teacher_max_attempts": "teacher_retry_max_attempts", "teacher_tls_ca": "teacher_tls_ca_file",
    "teacher_tls_cert": "teacher_tls_cert_file", "teacher_tls_key": "teacher_tls_key_file",
    "query_budget": "teacher_query_budget", "teacher_architecture": "teacher_train_architecture",
    "teacher_epochs": "teacher_train_epochs", "images": "images_path", "eval_images": "images_eval_path",
    "image_key": "images_image_key", "image_height": "images_height", "image_width": "images_width",
    "image_channels": "images_channels", "class_names": "images_class_names", "num_mixup": "mixup_num_images",
    "num_cvae": "cvae_num_images", "db3kd_directions": "db3kd_num_directions", "votes": "votes_votes",
    "vote_sigma": "votes_sigma", "zskd_directions": "zskd_blackbox_directions",
    "zskd_sigma": "zskd_blackbox_sigma", "zskd_resolution": "zskd_blackbox_resolution",
    "student_model": "student_architecture", "batch_size": "student_batch_size",
    "learning_rate": "student_learning_rate", "lr_schedule": "student_lr_schedule",
    "weight_decay": "student_weight_decay", "ema_momentum": "student_ema_momentum", "loss": "student_loss",
    "temperature": "student_temperature", "steps_per_execution": "student_steps_per_execution",
    "train_mixup_alpha": "student_mixup_alpha", "rotation_degrees": "student_rotation_degrees",
    "shift_fraction": "student_shift_fraction", "horizontal_flip": "student_horizontal_flip",
    "select": "student_select", "batchnorm_images": "student_batchnorm_images",
    "mixed_precision": "student_mixed_precision", "jit_compile": "student_jit_compile",
    "lr_scaling": "student_lr_scaling", "training_loop": "student_loop",
    "checkpoint_steps": "student_checkpoint_steps",
}

LAUNCHER_DEFAULTS = {"workdir": "/tmp/tfkd_fsbbt"}  # The library has no default work dir.
SETTINGS = {}  # Flag name -> the tfkd.settings.Setting it sets (dotted name, kind, default).
METHOD_SETTINGS = {}  # Flag name -> (its Setting in method_config, the methods it is one of).
_DEFINE = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "str": flags.DEFINE_string, "list": flags.DEFINE_list}


def define(setting: settings_lib.Setting, name: str) -> None:
    default = LAUNCHER_DEFAULTS.get(name, setting.default)
    _DEFINE[setting.kind](name, default, f"{setting.text} [{setting.name}]")


for _setting in settings_lib.settings(pipeline.DistillConfig):
    SETTINGS[_setting.name.replace(".", "_")] = _setting
    define(_setting, _setting.name.replace(".", "_"))
flags.DEFINE_string("config_file", None, "A YAML or JSON file of settings by dotted name or nested "
                    "mappings (as DistillConfig.with_settings takes), applied under the flags.")
flags.DEFINE_string("params_override", None, "Settings by dotted name as a JSON object, applied "
                    "over every other flag (Model Garden's), e.g. '{\"student.epochs\": 10}'.")
flags.DEFINE_string("method_settings", None, "The method's own settings (its config_class) as a "
                    "JSON object of field values, e.g. '{\"num_noise\": 500}'.")
flags.DEFINE_list("plugins", [], "Python modules imported before the flags are read (their "
                  "import registers methods: tfkd.methods.register); module:function also calls "
                  "function(). Their methods' settings are then flags, shown by --help.")
flags.DEFINE_enum("strategy", distribute.STRATEGIES[0], list(distribute.STRATEGIES), "mirrored: all "
                  "local GPUs; multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG (run the "
                  "same command on every worker; the chief exports).")
flags.DEFINE_float("cluster_startup_timeout", distribute.CLUSTER_STARTUP_TIMEOUT_S, "With "
                   "--strategy=multi_worker: seconds the cluster's other tasks have to start.")
FLAGS = flags.FLAGS


def method_flags() -> None:
    """A flag per field of each registered method's ``config_class`` (plug-ins' too): its
    ``flag_prefix`` and dotted name, shared by the methods that have it (where their defaults
    differ, the help names each method's; the flag's own default is the first method's, and a
    flag not given leaves the method's default); then the ALIASES."""
    defaults = {}  # flag -> {method: its default}
    for name in methods.names():
        method = methods.get(name)
        prefix = f"{name}_" if method.flag_prefix is None else method.flag_prefix
        cls = method.config_class
        for setting in settings_lib.settings(cls) if cls is not None else ():
            flag = prefix + setting.name.replace(".", "_")
            if flag not in FLAGS:
                define(setting, flag)
            if flag not in SETTINGS:
                METHOD_SETTINGS.setdefault(flag, (setting, set()))[1].add(name)
                defaults.setdefault(flag, {})[name] = setting.default
    for flag, by_method in defaults.items():
        if len(set(map(repr, by_method.values()))) > 1:
            FLAGS[flag].help += " Default by method: " + ", ".join(
                f"{m} {v}" for m, v in sorted(by_method.items())) + "."
    for alias, flag in ALIASES.items():
        if alias not in FLAGS and flag in FLAGS:
            flags.DEFINE_alias(alias, flag)


method_flags()


def _value(name: str, setting: settings_lib.Setting):
    """A given flag's value as its setting takes it (list items as the field's item type)."""
    return setting.items(FLAGS[name].value) if setting.kind == "list" else FLAGS[name].value


def json_flag(name: str) -> dict:
    """A flag holding a JSON object, as a dict ({} when not given). Raises ConfigError."""
    text = FLAGS[name].value
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise errors.ConfigError(f"--{name}: expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise errors.ConfigError(f"--{name}: expected a JSON object, got {text!r}")
    return value


def config_from_flags() -> pipeline.DistillConfig:
    """The flags as a :class:`tfkd.pipeline.DistillConfig`: only the settings given are set; the
    rest stay unset for :meth:`~tfkd.pipeline.DistillConfig.resolved` (the library's defaults)."""
    given = {s.name: _value(n, s) for n, s in SETTINGS.items() if FLAGS[n].present}
    own = {f"method_config.{s.name}": _value(n, s) for n, (s, _) in METHOD_SETTINGS.items()
           if FLAGS[n].present}
    for name, (_, owners) in METHOD_SETTINGS.items():
        if FLAGS[name].present and FLAGS.method not in owners:
            raise errors.ConfigError(f"--{name}: a setting of method {', '.join(sorted(owners))}, "
                                     f"not of --method={FLAGS.method}")
    layers = [{"outputs": vertex.OutputDirs.from_environ(os.environ).to_dict()},
              settings_lib.read_file(FLAGS.config_file) if FLAGS.config_file else {}, given,
              {"method_config": json_flag("method_settings")} if FLAGS.method_settings else {},
              own, json_flag("params_override")]
    config = pipeline.DistillConfig(workdir=FLAGS.workdir)
    for layer in layers:
        config = config.with_settings(layer)
    return config


def flag_values() -> dict:
    """This launcher's flags, name -> value, aliases left out (written to ``flags.json``)."""
    module = FLAGS.find_module_defining_flag("workdir")
    return {f.name: f.value for f in FLAGS.get_key_flags_for_module(module)
            if f.name not in ALIASES}


def with_flag_names(message: str) -> str:
    """A library message with each setting it names (dotted or multi-word) followed by its flag (the
    alias users type where there is one), unless given as ``setting=value`` or ``settings['...']``."""
    short = {v: k for k, v in ALIASES.items()}
    named = {**SETTINGS, **{n: s for n, (s, _) in METHOD_SETTINGS.items()}}
    for name, setting in named.items():
        if "." in setting.name or "_" in setting.name:  # Not a plain word ("method", "seed").
            message = re.sub(rf"(?<![\w.-])(?<!\['){re.escape(setting.name)}(?![\w.=])",
                             f"{setting.name} (--{short.get(name, name)})", message)
    return message


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:  # First: a multi-worker strategy must exist before any other TensorFlow work.
        strategy = distribute.make_strategy(FLAGS.strategy,
                                         startup_timeout_s=FLAGS.cluster_startup_timeout)
        config = config_from_flags()
        config.validate()  # Resolves the defaults first; pipeline.run resolves the same way.
        report = pipeline.run(config, strategy, flags=flag_values())
    except errors.TfkdError as e:  # One line; a programming error keeps its traceback.
        sys.exit(f"error: {with_flag_names(str(e))}")
    logging.info("Report: %s/report.json", config.workdir)
    if report.role == "worker":
        print(f"worker done: trained {report.student_epochs} epochs with the chief", flush=True)
        return
    print(report_lib.format_table(report), flush=True)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, after the ``--plugins`` modules are imported and their methods' settings
    defined as flags (so that ``--help`` lists them)."""
    values = [a.partition("=")[2] for a in argv if a.startswith("--plugins=")]
    values += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--plugins"]
    try:
        methods.load_plugins([m for v in values for m in v.split(",") if m])
    except errors.TfkdError as e:
        sys.exit(f"error: {e}")
    method_flags()
    return app.parse_flags_with_usage(argv)


def run():
    """The ``tfkd-distill`` command."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
