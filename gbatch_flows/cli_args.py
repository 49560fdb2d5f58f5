"""Command line for :class:`~gbatch_flows.options.Options`: argparse generated from the model's fields.

Precedence, highest first: command-line flags > ``--config`` YAML file > environment variables (the fields'
``env``) > the task's own defaults > the model's defaults. Every mistake (bad value, contradictory options, bad
YAML, unknown key) ends as one argparse-style error line and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gbatch_flows.options import Options, env_vars, secret_fields

_NONE_WORDS = ("none", "null")
_DEFAULT_GROUP = "Options"


class OptionsError(ValueError):
    """A user mistake in the options; the message is one line that says what to change."""


@dataclass(frozen=True)
class FieldKind:
    """How a model field maps to a command-line argument."""

    base: type  # bool, int, float, str, dict or SecretStr
    optional: bool
    choices: tuple[Any, ...] | None = None


def field_kind(annotation: Any) -> FieldKind:
    """Classify a field annotation (``int | None``, ``Literal[...]``, ``dict[str, Any]``, ...)."""
    optional = False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"unsupported option type {annotation!r}: one type (optionally | None) expected")
        annotation = args[0]
        origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        return FieldKind(type(choices[0]), optional, tuple(choices))
    if origin is dict or annotation is dict:
        return FieldKind(dict, optional)
    if annotation in (bool, int, float, str, SecretStr):
        return FieldKind(annotation, optional)
    raise TypeError(f"unsupported option type {annotation!r}")


# ---------------------------------------------------------------- value converters (argparse `type=`)

def _number_converter(base: type, optional: bool) -> Callable[[str], Any]:
    word = "an integer" if base is int else "a number"

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            return base(text)
        except ValueError:
            hint = " or 'none'" if optional else ""
            raise argparse.ArgumentTypeError(f"expected {word}{hint}, got {text!r}") from None

    return convert


def _optional_str(text: str) -> str | None:
    return None if text == "" else text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc.msg} at column {exc.colno}); expected an "
                                         f"object such as '{{\"anon\": true}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"anon\": true}}', got "
                                         f"{type(value).__name__}")
    return value


# ---------------------------------------------------------------- parser

def _field_extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help_text(name: str, field: FieldInfo, kind: FieldKind, task_default: Any, is_secret: bool,
               env_var: str | None) -> str:
    parts = [field.description or name.replace("_", " ")]
    if kind.base is not bool and not is_secret:
        if task_default is not PydanticUndefined:
            if task_default is not None:
                parts.append(f"(default: {_show(task_default)}, set by the task)")
        elif field.default is not PydanticUndefined and field.default is not None:
            parts.append(f"(default: {_show(field.default)})")
    if env_var:
        parts.append(f"[env: {env_var}]")
    return " ".join(parts).replace("%", "%%")


def _add_field(group: argparse._ArgumentGroup, name: str, field: FieldInfo, kind: FieldKind,
               help_text: str) -> None:
    flag = f"--{name}"
    if kind.base is bool:
        group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        return
    metavar = {int: "N", float: "NUM"}.get(kind.base, "TEXT")
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "metavar": metavar}
    if kind.choices is not None:
        kwargs["choices"] = kind.choices
        kwargs["metavar"] = "{" + ",".join(str(choice) for choice in kind.choices) + "}"
    elif kind.base in (int, float):
        kwargs["type"] = _number_converter(kind.base, kind.optional)
    elif kind.base is dict:
        kwargs["type"] = _json_object
        kwargs["metavar"] = "JSON"
    elif kind.base is SecretStr:
        kwargs["metavar"] = "KEY"
    elif kind.optional:
        kwargs["type"] = _optional_str
    group.add_argument(flag, **kwargs)


def build_parser(model: type[BaseModel] = Options, prog: str | None = None, description: str | None = None,
                 defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--<field>`` per model field plus ``--config PATH``.

    ``defaults`` (a task's own defaults) are only shown in --help here; :func:`parse_options` applies them.
    Parsed namespaces hold only what was given on the command line (no defaults filled in).
    """
    task_defaults = dict(defaults or {})
    _check_keys(task_defaults, model, "task_defaults", exc=ValueError)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, usage="%(prog)s [--config PATH] [options]",
        epilog="Precedence: command-line flags > --config file > environment variables > task defaults > "
               "built-in defaults. Optional numbers accept the word 'none' (no limit / the task's default).")
    config_group = parser.add_argument_group("Configuration")
    config_group.add_argument("--config", metavar="PATH", default=None,
                              help="YAML file mapping option names to values; command-line flags override it, "
                                   "it overrides environment variables.")
    secrets, envs = set(secret_fields(model)), env_vars(model)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in model.model_fields.items():
        title = str(_field_extra(field).get("cli_group", _DEFAULT_GROUP))
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        kind = field_kind(field.annotation)
        help_text = _help_text(name, field, kind, task_defaults.get(name, PydanticUndefined), name in secrets,
                               envs.get(name))
        _add_field(groups[title], name, field, kind, help_text)
    return parser


# ---------------------------------------------------------------- sources

def _check_keys(data: Mapping[str, Any], model: type[BaseModel], source: str,
                exc: type[Exception] = OptionsError) -> None:
    valid = list(model.model_fields)
    unknown = [key for key in data if key not in model.model_fields]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise exc(f"{source}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(valid)}")


def load_config(path: str, model: type[BaseModel] = Options) -> dict[str, Any]:
    """Read a YAML config file whose top-level keys are option names."""
    import yaml  # here: a run without --config does not load it (0.1 s)

    source = f"--config {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise OptionsError(f"{source}: cannot read the file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptionsError(f"{source}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(f"{source}: expected a mapping of option names to values, got "
                           f"{type(data).__name__}")
    _check_keys(data, model, source)
    return data


def env_values(env: Mapping[str, str], model: type[BaseModel] = Options) -> dict[str, str]:
    """The options set through environment variables (empty values count as unset)."""
    return {name: env[var] for name, var in env_vars(model).items() if env.get(var)}


def format_validation_error(error: ValidationError, origins: Mapping[str, str],
                            model: type[BaseModel] = Options) -> str:
    """One line naming each bad option, where its value came from, and what is wrong."""
    secrets = set(secret_fields(model))
    messages = []
    for item in error.errors():
        msg = item["msg"].removeprefix("Value error, ")
        loc = [str(part) for part in item["loc"]]
        if not loc:
            messages.append(msg)
            continue
        name = loc[0]
        value = "" if name in secrets or len(loc) > 1 else f"={item.get('input')!r}"
        where = f" (from {origins[name]})" if name in origins else ""
        messages.append(f"{'.'.join(loc)}{value}{where}: {msg}")
    return "; ".join(messages)


def resolve_options(cli_values: Mapping[str, Any], config_path: str | None = None,
                    env: Mapping[str, str] | None = None, task_defaults: Mapping[str, Any] | None = None,
                    model: type[BaseModel] = Options) -> BaseModel:
    """Layer the sources and validate; raises :class:`OptionsError` with a one-line message.

    The options given by the command line, ``--config`` or the environment are the result's ``model_fields_set``;
    an option not given (also one the task's defaults set) adapts to those given (see ``Options.adapted``).
    """
    layers: list[tuple[str, Mapping[str, Any]]] = [("the task's defaults", dict(task_defaults or {}))]
    env_map = env_values(os.environ if env is None else env, model)
    env_names = env_vars(model)
    layers += [(f"environment variable {env_names[name]}", {name: value}) for name, value in env_map.items()]
    if config_path is not None:
        layers.append((f"--config {config_path}", load_config(config_path, model)))
    layers.append(("the command line", dict(cli_values)))
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for source, values in layers:
        merged.update(values)
        origins.update(dict.fromkeys(values, source))
    given = {name for layer in layers[1:] for name in layer[1]}  # the task's defaults are not "given"
    try:
        return model.model_validate(merged, context={"given": given})
    except ValidationError as exc:
        raise OptionsError(format_validation_error(exc, origins, model)) from None


def parse_options(argv: list[str] | None = None, env: Mapping[str, str] | None = None,
                  task_defaults: dict[str, Any] | None = None, *, model: type[BaseModel] = Options,
                  prog: str | None = None, description: str | None = None) -> Any:
    """Options from the command line (``argv=None``: ``sys.argv[1:]``), ``--config``, ``env``
    (``None``: ``os.environ``) and the task's defaults. Bad input: one error line and ``SystemExit(2)``."""
    parser = build_parser(model, prog=prog, description=description, defaults=task_defaults)
    values = vars(parser.parse_args(argv))
    config_path = values.pop("config", None)
    try:
        return resolve_options(values, config_path, env, task_defaults, model)
    except OptionsError as exc:
        parser.error(str(exc))
