"""The settings of a config dataclass tree, each with its dotted name, type, default and help, read
from the dataclasses themselves: what the launchers generate their flags from and the flag
reference (``docs/flags.md``) is written from, so that a field added to a config class is a flag,
documented, with no other edit (Model Garden's configs drive their flags the same way).

A setting's help is its entry in the ``Attributes:`` section of its class's docstring (or of a base
class's): ``name: text`` or ``a, b, c: text`` for fields described together.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

from tfkd import errors
from tfkd import fs

KINDS = ("bool", "int", "float", "str", "list")
"""A setting's value kind (how a command line spells it); ``list`` is comma-separated."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One leaf field of a config tree.

    Attributes:
      name: the dotted name :meth:`tfkd.DistillConfig.with_settings` takes (``student.epochs``).
      kind: one of :data:`KINDS`; item: for ``list``, the kind of each item (``int``, ``str``).
      default: the field's default (None: unset, resolved by the library), a list for ``list``.
      help: the field's docstring entry, one paragraph.
    """

    name: str
    kind: str
    default: Any
    help: str
    item: str = "str"

    @property
    def text(self) -> str:
        """The help as plain text (reST roles and literals unmarked), with where an unset
        default comes from."""
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", self.help).replace("``", "")
        unset = " Unset: the library's default for the data and method." if (
            self.default is None) else ""
        return f"{text}{unset}"

    def items(self, strings: list[str]) -> list:
        """A ``list`` setting's items given as strings (a command line's), as its item kind.

        Raises:
          ConfigError: an item that is not one, naming the setting."""
        try:
            return [{"int": int, "float": float}.get(self.item, str)(v) for v in strings]
        except ValueError:
            raise errors.ConfigError(f"{self.name}={','.join(strings)}: expected comma-separated "
                                     f"{self.item}s") from None


def settings(cls, prefix: str = "", default=dataclasses.MISSING) -> list[Setting]:
    """The leaf settings of the config dataclass ``cls``, nested configs opened (a field whose type
    is a config dataclass, or one or None), in field order; fields of another type (``Any``) are
    left out.

    Args:
      cls: a dataclass type; prefix: its dotted place (``"student."``); default: its default
        instance in the tree (None, as ``DistillConfig.images``: the class's own defaults).

    Raises:
      ValueError: (programming error) ``cls`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{cls!r} is not a dataclass")  # Programming error: callers pass one.
    hints, docs, found = typing.get_type_hints(cls), attribute_docs(cls), []
    for field in dataclasses.fields(cls):
        hint, name = hints[field.name], prefix + field.name
        value = (_default(field) if default is dataclasses.MISSING or default is None
                 else getattr(default, field.name))
        nested = dataclass_in(hint)
        if nested is not None:
            found += settings(nested, name + ".", value)
            continue
        kind, item = _kind(hint)
        if kind is not None:
            found.append(Setting(name, kind, list(value) if kind == "list" and value is not None
                                 else value, docs.get(field.name, ""), item))
    return found


def attribute_docs(cls) -> dict[str, str]:
    """Field name -> its entry in the ``Attributes:`` section of ``cls``'s docstring or of a base
    class's (the nearest wins), whitespace folded."""
    docs = {}
    for klass in reversed(cls.__mro__):
        docs.update(_parse_attributes(klass.__dict__.get("__doc__") or ""))
    return docs


_ENTRY = re.compile(r"^(\s*)([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$")


def _parse_attributes(doc: str) -> dict[str, str]:
    """Entries of a Google-style ``Attributes:`` section: lines ``name: text`` at the entries'
    indentation, continued by deeper lines; other lines (a paragraph between entries) end the
    current entry; the next section header (``Raises:``) ends the section."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    entries, current, indent = {}, [], None
    for line in lines[start + 1:] if start is not None else []:
        depth, text = len(line) - len(line.lstrip()), line.strip()
        match = _ENTRY.match(line)
        if match and indent in (None, depth):
            indent, current = depth, match.group(2).split(", ")
            entries.update({name: match.group(3).strip() for name in current})
        elif text and indent is not None and depth > indent and current:
            entries.update({name: f"{entries[name]} {text}" for name in current})
        elif re.fullmatch(r"[A-Z][A-Za-z ]*:", text):
            break
        elif text:
            current = []
    return entries


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # A required field (``images.path``): unset until given.


def dataclass_in(hint):
    """The dataclass type in a field's type hint (``ImageSourceConfig | None`` -> the class), or
    None."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def is_union(hint) -> bool:
    """Whether a type hint is a union (``int | None``, ``Optional[int]``)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _kind(hint) -> tuple[str | None, str]:
    """(kind, item kind) of a field's type hint; (None, "") for one no command line spells."""
    options = [a for a in (typing.get_args(hint) if is_union(hint) else (hint,))
               if a is not type(None)]
    if len(options) != 1:
        return None, ""
    option = options[0]
    if (typing.get_origin(option) or option) is tuple:
        inner = [a for a in typing.get_args(option) if a is not Ellipsis]
        return "list", (inner[0].__name__ if inner and inner[0] in (int, float, str) else "str")
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(option), ""


def read_file(path: str) -> dict:
    """The settings in a YAML or JSON file (a mapping of dotted names or nested mappings, as
    :meth:`tfkd.DistillConfig.with_settings` takes; local or any ``tf.io.gfile`` path).

    Raises:
      ConfigError: naming the file, when it cannot be read, does not parse, or holds no mapping.
    """
    try:
        value = yaml.safe_load(fs.read_bytes(path))
    except Exception as e:  # noqa: BLE001 - OSError, gfile's NotFoundError, YAML's parse errors.
        raise errors.ConfigError(f"config_file={path!r}: cannot read it as YAML or JSON "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(value, dict):
        raise errors.ConfigError(f"config_file={path!r}: expected a mapping of settings, got "
                                 f"{type(value).__name__}")
    return value
