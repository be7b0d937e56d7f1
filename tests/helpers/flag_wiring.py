"""Parses every flag a launcher defines to a value other than its default, one flag at a time, and
reports whether that value reaches the launcher's resolved config (tests/test_launcher_flags.py).

  python tests/helpers/flag_wiring.py distill      # one JSON line: {flag: "ok" | why not}

Run in a child process: absl's FLAGS are process-global.
"""

import dataclasses
import enum
import importlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

# Values the generic rule below cannot make up (host:port, digit lists, files that must parse).
SPECIAL = {
    "teacher": ["127.0.0.1:8512"],
    "teacher_class_map": [["2", "0", "1"]],
    "compress": [["int8"]],
    "method": ["standard_kd"],
}
# Flags that act only beside another (the user's images): parsed with it in both configs.
WITH_IMAGES = ["--images=/tmp/flag-wiring/images", "--teacher=127.0.0.1:8512"]
CONTEXT = {name: WITH_IMAGES for name in ("eval_images", "class_names", "image_key",
                                          "image_height", "image_width", "image_channels")}


def leaves(value, path=""):
    """(path, leaf value) of a config: dataclasses and dicts opened, tuples kept whole."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from leaves(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaves(v, f"{path}[{k}]")
    else:
        yield path, value


def same(parsed, leaf) -> bool:
    """Whether a config leaf holds the parsed flag value (lists as tuples, digit strings as ints,
    enum members by value)."""
    if isinstance(leaf, enum.Enum):
        leaf = leaf.value
    if isinstance(parsed, list):
        if not isinstance(leaf, (tuple, list)) or len(leaf) != len(parsed):
            return False
        return all(same(p, x) for p, x in zip(parsed, leaf))
    if isinstance(parsed, str) and parsed.isdigit() and isinstance(leaf, int):
        return int(parsed) == leaf
    if isinstance(parsed, float) and isinstance(leaf, (int, float)):
        return abs(parsed - leaf) < 1e-12
    return parsed == leaf and type(parsed) is type(leaf) or (
        isinstance(parsed, str) and isinstance(leaf, str) and parsed == leaf)


def candidates(flag):
    """Values other than the default to try, valid for the flag's type and its usual bounds."""
    if flag.name in SPECIAL:
        return SPECIAL[flag.name]
    default = flag.default
    kind = flag.flag_type()
    if kind == "bool":
        return [not default]
    if hasattr(flag.parser, "enum_values"):
        return [v for v in flag.parser.enum_values if v != default]
    if kind == "int":
        return [(default or 0) + 3, 0, 1]
    if kind == "float":
        return [0.37 if not default else default * 0.5]
    if kind in ("list", "comma separated list"):
        return [["x1", "x2"]]
    return [f"/tmp/flag-wiring/{flag.name}-value.keras" if "model" in flag.name
            else f"/tmp/flag-wiring/{flag.name}-value"]


def as_argument(name, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, list):
        return f"--{name}={','.join(value)}"
    return f"--{name}={value}"


def main(launcher: str) -> None:
    module = importlib.import_module(f"launch.{launcher}")
    names = [f.name for f in FLAGS.get_key_flags_for_module(module.__name__)
             or FLAGS.get_key_flags_for_module(sys.modules[module.__name__])]
    if not names:  # Flags defined at import are keyed by the module's file name.
        names = [f.name for f in FLAGS.get_key_flags_for_module(module.__file__)]
    base_args = ["--workdir=/tmp/flag-wiring/workdir"] if "workdir" in names else []
    results = {}

    def resolve(args):
        FLAGS.unparse_flags()
        FLAGS(["launcher", *args])
        config = module.config_from_flags()
        return dict(leaves(config.resolved() if hasattr(config, "resolved") else config))

    for name in sorted(names):
        flag = FLAGS[name]
        tried = []
        for value in candidates(flag):
            extra = list(CONTEXT.get(name, ()))
            try:
                before = resolve(base_args + extra)
                after = resolve(base_args + extra + [as_argument(name, value)])
            except Exception as e:  # noqa: BLE001 - reported, not raised: one line per flag.
                tried.append(f"{value!r}: {type(e).__name__}: {str(e)[:200]}")
                continue
            parsed = FLAGS[name].value
            changed = {p: v for p, v in after.items() if before.get(p) != v}
            if any(same(parsed, v) for v in changed.values()):
                results[name] = "ok"
                break
            tried.append(f"{value!r}: changed {sorted(changed)[:6] or 'nothing'}")
        else:
            results[name] = "; ".join(tried)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
