"""`--config FILE`: every flag of an entry point read from a YAML or TOML file; flags given on the
command line override the file, and the file overrides the defaults.

A key is a flag's name without the dashes, with "_" or "-" (`learning_rate: 1e-5` is
`--learning-rate 1e-5`). Keys may also sit under a section named like the flag's group in --help,
which is how train.py writes OUTPUT/config.json (JSON is YAML, so a run's config.json is a valid
--config):

    method: rarl                       run:
    lora_r: 8                   or       method: rarl
    lora_targets: [q_proj, v_proj]     model:
                                         lora_r: 8

Values: a switch (`--resume` / `--no-resume`, `--skip-bad-rows`) takes true or false; a flag that
takes several values (or may be repeated) takes a list; `null` means the flag's empty default. Every
value goes through the flag's own type, range and choices, and an unknown key, or a setting given
twice (the same key twice, which YAML would silently reduce to the last; `learning_rate` beside
`learning-rate`; a key at top level and again under its section), is refused with the file named,
naming both. YAML is read with safe_load's constructors: no tag can build an object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

try:
    import tomllib  # novermin (3.11+; 3.10 takes tomli below)
except ImportError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

from src.cli.errors import UserError

SWITCHES = (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)


def add_config_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="read flags from a YAML or TOML file (flags on the command line override it)" + note)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Defaults, then the --config file, then the command line; required flags may come from the file."""
    required = [action for action in parser._actions if action.required]
    for action in required:  # checked below, once the file has had its say
        action.required = False
        action.help = f"{action.help} (required, here or in the config file)"
    args = parser.parse_args(argv)
    if args.config:
        given = _given_on_command_line(parser, argv)
        for dest, value in read_config(parser, Path(args.config)).items():
            if dest not in given:
                setattr(args, dest, value)
    missing = [action.option_strings[0] for action in required if getattr(args, action.dest) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (on the command line or in --config)")
    return args


def read_config(parser: argparse.ArgumentParser, path: Path) -> dict:
    """{argparse dest: value} for every key of the file, each checked against its flag."""
    return config_values(parser, load_file(path), path)


def config_values(parser: argparse.ArgumentParser, raw: dict, path: Path) -> dict:
    """{argparse dest: value} for every key of `raw`, the mapping read from `path` (named in errors),
    each checked against its flag: name, section, type, range and choices."""
    by_name = {_spelling(option[2:]): action
               for action in parser._actions for option in action.option_strings
               if option.startswith("--") and not _negative(action, option)}
    sections = {group.title: {id(a) for a in group._group_actions} for group in parser._action_groups}
    values, given_as = {}, {}
    for key, value, section in _entries(raw, sections):
        action = by_name.get(_spelling(key))
        if action is None or action.dest in ("help", "config"):
            raise UserError(f"{path}: unknown setting {key!r}; the settings are the flags of --help")
        if section is not None and id(action) not in sections[section]:
            raise UserError(f"{path}: {key!r} does not belong to section {section!r}")
        name = key if section is None else f"{section}.{key}"
        if action.dest in given_as:  # `learning_rate` and `learning-rate`, or at top level and in its section
            raise UserError(f"{path}: {given_as[action.dest]!r} and {name!r} both set {action.option_strings[0]}; "
                            "only one may: remove the other")
        given_as[action.dest] = name
        values[action.dest] = _value(action, value, f"{path}: {key}")
    return values


def with_changes(raw: dict, changes: dict) -> dict:
    """The mapping `raw` read from a file with the settings of `changes` set as a flag on the command line
    would: a key of `changes` replaces the file's setting under any spelling and in any place (top level
    or its section), so no setting is then given twice."""
    changed = {_spelling(key) for key in changes}
    merged: dict = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # a section
            merged[key] = {inner: v for inner, v in value.items() if _spelling(inner) not in changed}
        elif _spelling(key) not in changed:
            merged[key] = value
    for key, value in changes.items():
        if isinstance(merged.get(key), dict):  # `model`, the flag, beside a section `model`: the flag's own
            merged[key][key] = value
        else:
            merged[key] = value
    return merged


def _spelling(key: str) -> str:
    return key.replace("-", "_")


def load_file(path: Path) -> dict:
    """The file's mapping: TOML for *.toml, YAML (which includes JSON) otherwise."""
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())  # refuses a key given twice itself
        else:
            raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - safe_load's loader, stricter
    except DuplicateKey as error:
        raise UserError(f"{path}: {error}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        # ValueError: an integer of more than 4,300 digits, which both parsers hand to int()
        raise UserError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                        f"{' '.join(str(error).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings, found {type(raw).__name__}")
    return raw


class DuplicateKey(yaml.YAMLError):
    """A mapping of a YAML file that gives one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden: not a repeat
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in first_line:
            raise DuplicateKey(f"line {key_node.start_mark.line + 1}: {key!r} is given twice (first on line "
                               f"{first_line[key]}); YAML would keep only the last: remove one")
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _negative(action: argparse.Action, option: str) -> bool:
    """--no-resume of --resume / --no-resume: the file says `resume: false` instead."""
    return isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-")


def _entries(raw: dict, sections: dict):
    """(key, value, section or None) for every setting; a section is a group title holding a mapping."""
    for key, value in raw.items():
        if key in sections and isinstance(value, dict):
            for inner, inner_value in value.items():
                yield inner, inner_value, key
        else:
            yield key, value, None


def _value(action: argparse.Action, value, where: str):
    """`value` as the parsed command line would hold it, or a UserError saying what is wrong."""
    if value is None:
        return None
    if isinstance(action, SWITCHES):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    many = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    if isinstance(value, list) and not many:
        raise UserError(f"{where}: expected one value, got a list")
    items = [_one(action, item, where) for item in (value if isinstance(value, list) else [value])]
    return items if many else items[0]


def _one(action: argparse.Action, value, where: str):
    if isinstance(value, (dict, list)):
        raise UserError(f"{where}: expected a value, got {json.dumps(value)}")
    if isinstance(value, bool) and action.type is not bool:
        raise UserError(f"{where}: expected a value, got {str(value).lower()}")
    convert = action.type or str
    try:
        already = isinstance(convert, type) and isinstance(value, convert)
        converted = value if already else convert(str(value))
    except argparse.ArgumentTypeError as error:  # a value out of the flag's range
        raise UserError(f"{where}: {error}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: {value!r} is not a valid {getattr(convert, '__name__', 'value')}") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _given_on_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests the command line itself sets: parse it once more with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))
