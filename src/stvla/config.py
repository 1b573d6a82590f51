"""Dataclass configs on the command line, and saved as JSON beside what they produced.

`add_config_arguments(parser, Config)` adds one `--field` option per dataclass field (nested
dataclasses become `--outer.inner`), with the field's trailing `# comment` as its help text; unknown
options are an error, never silently ignored. `config_from_arguments` builds the dataclass back.
`add_option_aliases` keeps an option's old name working for a release after a field moved.

`config_key(config)` is the dict that caches key on (stvla.benchmark). A field added after results were
kept is declared with `metadata=KEY_NEUTRAL`: while it holds its default it is left out of the key, so
every cell that was finished before the field existed still matches.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from stvla.files import write_text_naming_the_file

T = TypeVar("T")
_FIELD_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+)$")


def field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in a dataclass's source."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = _FIELD_COMMENT.match(line)
            if match:
                comments[match.group(1)] = match.group(2).strip()
    return comments


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    hint = hints[name]
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    return hint


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (None when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add `--prefix.field` options for every field of dataclass `cls` (recursively)."""
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f.name)
        flag = f"--{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            add_config_arguments(parser, kind, prefix=f"{prefix}{f.name}.")
            continue
        default = field_default(f)
        # argparse formats help with %-substitution: a literal "50%" in a comment must be escaped.
        help_text = f"{comments.get(f.name, '')} (default: {default})".replace("%", "%%")
        _add_field_option(parser, flag, f"{prefix}{f.name}", kind, help_text)


def add_option_aliases(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, str],
                       help_text: str = "old name of --{new}, kept for one release", prefix: str = "") -> None:
    """Other names of options: `--old` sets the field at the dotted path `new` of `cls` (an old name kept
    for a while, or a short one); with `prefix`, `cls`'s options are `--{prefix}field`."""
    for old, new in aliases.items():
        kind = cls
        for name in new.split("."):
            kind = _field_type(kind, name)
        _add_field_option(parser, f"--{old}", prefix + new, kind, help_text.format(new=prefix + new))


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """The dotted paths of every field of dataclass `cls` that holds a value (nested dataclasses opened)."""
    paths = []
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f.name)
        paths += field_paths(kind, f"{prefix}{f.name}.") if dataclasses.is_dataclass(kind) else [prefix + f.name]
    return paths


class _SetField(argparse.Action):
    """Store an option's value. One setting given under two of its spellings with different values
    (`--variant A --traces.variant C`) is an error: argparse alone would keep the last without a word."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if values is None else values  # `--flag` alone
        spelled = vars(namespace).setdefault("_spelled_as", {}).setdefault(self.dest, [])
        other = next((spelling for spelling in spelled if spelling != option_string), None)
        if other is not None and getattr(namespace, self.dest) != value:  # whichever came first or last
            parser.error(f"{other} and {option_string} are one setting ({self.dest}) given two values: give one")
        if option_string not in spelled:
            spelled.append(option_string)
        setattr(namespace, self.dest, value)


def _add_field_option(parser: argparse.ArgumentParser, flag: str, dest: str, kind: Any, help_text: str) -> None:
    """One option for a field of type `kind`, absent from the namespace unless given."""
    if kind is bool:
        # `--flag` alone means true; `--flag false` is accepted too.
        parser.add_argument(flag, dest=dest, type=_parse_bool, nargs="?", const=True, action=_SetField,
                            default=argparse.SUPPRESS, help=help_text, metavar="BOOL")
    elif typing.get_origin(kind) is tuple:
        # `--model.image.channels 32,64,96`
        parser.add_argument(flag, dest=dest, type=_tuple_parser(kind), default=argparse.SUPPRESS,
                            help=help_text, metavar="A,B,...", action=_SetField)
    else:
        parser.add_argument(flag, dest=dest, type=kind if kind in (int, float, str) else str,
                            default=argparse.SUPPRESS, help=help_text, action=_SetField)


def _tuple_parser(kind: Any):
    """A parser of comma-separated values for a `tuple[T, ...]` or `tuple[T, T, T]` field."""
    element = next((a for a in typing.get_args(kind) if a is not Ellipsis), str)

    def parse(text: str) -> tuple:
        try:
            return tuple(element(part) for part in text.strip("()[] ").split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated {element.__name__} values, got {text!r}") from error
    return parse


def config_from_arguments(cls: type[T], namespace: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """Build a `cls` from parsed options; fields not given keep `base`'s (or the class default) value."""
    given = vars(namespace)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f.name)
        current = getattr(base, f.name) if base is not None else None
        if dataclasses.is_dataclass(kind):
            values[f.name] = config_from_arguments(kind, namespace, current, prefix=f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" in given:
            values[f.name] = given[f"{prefix}{f.name}"]
        elif base is not None:
            values[f.name] = current
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


KEY_NEUTRAL = {"key_neutral": True}  # field metadata: left out of `config_key` while at its default


def key_neutral_at(value: Any) -> dict[str, Any]:
    """Field metadata: left out of `config_key` while it holds `value`, the setting that does what runs did
    before the field existed (when that is not the new default)."""
    return {"key_neutral": True, "neutral_value": value}


def config_key(config: Any) -> dict[str, Any]:
    """`config_to_dict`, without the KEY_NEUTRAL fields that hold their defaults (or their `key_neutral_at`
    value), at any depth: settings added later leave the keys of earlier runs as they were."""
    if not dataclasses.is_dataclass(config):
        return config
    key: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("key_neutral") and value == f.metadata.get("neutral_value", field_default(f)):
            continue
        key[f.name] = config_key(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return key


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build a dataclass from a dict, refusing unknown keys (a typo is an error, not a new field). A missing
    field takes its default, or its `key_neutral_at` value: what runs did before the field existed."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    values = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        kind = _field_type(cls, name)
        values[name] = (config_from_dict(kind, value, f"{source}.{name}") if dataclasses.is_dataclass(kind)
                        else checked_value(hints[name], value, f"{source}.{name}"))
    for name, f in names.items():  # a config saved before a `key_neutral_at` field existed did what it now says
        if name not in data and "neutral_value" in f.metadata:
            values[name] = copy.deepcopy(f.metadata["neutral_value"])
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # a value its config refuses: say where it was read
        raise ValueError(f"{source}: {error}") from None


def checked_value(hint: Any, value: Any, where: str) -> Any:
    """`value` as read from JSON, checked against the field's annotation where it is a plain one (bool, int,
    float, str, a tuple or list of them, or None allowed): a string where a number belongs is refused here,
    naming the field, rather than failing somewhere later. Other annotations pass the value as it is."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return checked_value(options[0], value, where) if len(options) == 1 else value
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {json.dumps(value)[:40]}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where} must be an integer, got {json.dumps(value)[:40]}")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where} must be a number, got {json.dumps(value)[:40]}")  # an int stays as saved
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {json.dumps(value)[:40]}")
    if origin in (tuple, list) and args:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {json.dumps(value)[:40]}")
        items = args[:1] * len(value) if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args
        if len(items) != len(value):
            raise ValueError(f"{where} must hold {len(items)} values, got {len(value)}")
        checked = [checked_value(item, entry, f"{where}[{i}]") for i, (item, entry) in enumerate(zip(items, value))]
        return tuple(checked) if origin is tuple else checked
    return value


def save_config(config: Any, path: str | Path) -> None:
    write_text_naming_the_file(path, json.dumps(config_to_dict(config), indent=2) + "\n")


def load_config(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from error
    return config_from_dict(cls, data, str(path))
