"""One declaration per setting: name, type, default, help and bounds, from which everything else is made.

A stage's settings are a frozen dataclass derived from `StageSettings` whose fields are declared
with `setting(...)`. From that one declaration come the stage's CLI flags (`add_arguments`), the
object built from parsed flags (`from_args`), validation of ranges and choices (in
`__post_init__`, so a bad value fails wherever the object is made), and the JSON schema of the
config section (`json_schema`). config/config.yaml and workflow/schemas/config.schema.yaml are
checked against the classes by tests/test_settings.py, so a knob is added with one edit (plus its
documentation in config.yaml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from hnm.core.errors import ConfigError

S = TypeVar("S", bound="StageSettings")

# What a stage does with a slide it cannot open or read (several stages' `on_slide_error`).
ON_SLIDE_ERROR = ("fail", "skip")
# Numeric precision of a stage's forward passes: auto = bf16 autocast on CUDA, fp32 on the CPU.
PRECISIONS = ("auto", "fp32", "bf16")
# How features are stored on disk (hnm.io.h5io); every reader gets float32 back whichever it is.
FEATURE_DTYPES = ("float32", "float16")

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    pattern: str | None = None,
    cli: bool = True,
    schema: dict[str, Any] | None = None,
) -> Any:
    """A dataclass field carrying its own documentation and bounds.

    `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive ones. Mutable defaults
    (lists, dicts) are copied per instance. `cli=False` marks a setting that only the workflow
    reads (how jobs are cut, which slides exist): it is in the config and its schema, but the
    stage's command has no flag for it, so a flag that would change nothing cannot be given.
    `schema` adds JSON-schema keywords for a structure that the type hint cannot say (which keys a
    mapping must have); the class's `check` must enforce the same rule for objects made in Python.
    """
    metadata = {
        "cli": cli,
        "schema": schema or {},
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "pattern": pattern,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """Base class: validation, CLI flags and schema for the fields declared with `setting`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError listing every bad value; runs whenever an object is made."""
        types = self.field_types()
        problems = [
            p
            for f in self.fields()
            if (
                p := _container_problem(f.name, types[f.name], getattr(self, f.name))
                or _field_problem(f, getattr(self, f.name))
            )
        ]
        problems += self.check()
        if problems:
            raise ConfigError(
                f"{self.section or type(self).__name__} settings: " + "; ".join(problems)
            )

    def check(self) -> list[str]:
        """Rules that tie several fields together; a subclass returns its problems as sentences."""
        return []

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        """The settings a stage's command takes as flags (all but the workflow-only ones)."""
        return [f for f in cls.fields() if f.metadata["cli"]]

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The declared settings' defaults, as config.yaml must hold them."""
        made = cls()
        return {f.name: getattr(made, f.name) for f in cls.fields()}

    def as_dict(self) -> dict[str, Any]:
        """Every field, plain ones (such as a seed passed on its own flag) included."""
        return dataclasses.asdict(self)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, title: str | None = None) -> None:
        group = parser.add_argument_group(title or f"{cls.section or cls.__name__} settings")
        types = cls.field_types()
        for f in cls.cli_fields():
            flag = "--" + f.name.replace("_", "-")
            kind = _base_type(types[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = f"{f.metadata['help']} (default: {json.dumps(default)})"
            if kind is bool:
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=default, help=text
                )
            elif kind in (list, dict):
                group.add_argument(flag, type=_parse_json, default=default, help=text + "; JSON")
            else:
                group.add_argument(
                    flag, type=kind, default=default, choices=f.metadata["choices"], help=text
                )

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, **overrides: Any) -> S:
        values = {f.name: getattr(args, f.name) for f in cls.cli_fields()}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_config(cls: type[S], section: dict[str, Any] | None) -> S:
        """From a config section; unknown keys are an error that names them."""
        section = dict(section or {})
        known = {f.name for f in cls.fields()}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(
                f"{cls.section} settings: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**section)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        types = cls.field_types()
        properties = {f.name: _field_schema(f, types[f.name]) for f in cls.fields()}
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": properties,
        }


def _parse_json(text: str) -> Any:
    return json.loads(text)


# argparse names the type in its message: "invalid JSON value: '{a'".
_parse_json.__name__ = "JSON"


def _base_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return origin
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def _type_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema of a type hint, following list[X] and dict[str, X] down to their items."""
    kind = _base_type(annotation)
    if kind in _JSON_TYPES:
        return {"type": _JSON_TYPES[kind]}
    if typing.get_origin(annotation) not in (list, dict):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _type_schema(inner[0]) if inner else {}
    args = list(typing.get_args(annotation))
    if kind is list:
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if kind is dict:
        items = {"additionalProperties": _type_schema(args[1])} if args else {}
        return {"type": "object", **items}
    return {}


def _field_schema(f: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    meta = f.metadata
    schema: dict[str, Any] = {"description": meta["help"], **_type_schema(annotation)}
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    schema["default"] = default
    schema.update(meta["schema"])
    if meta["choices"] is not None:
        schema["enum"] = list(meta["choices"])
    for key, word in (
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("above", "exclusiveMinimum"),
        ("below", "exclusiveMaximum"),
        ("pattern", "pattern"),
    ):
        if meta[key] is not None:
            schema[word] = meta[key]
    return schema


def _container_problem(name: str, annotation: Any, value: Any) -> str | None:
    """A list or dict setting given something else (a JSON flag or config value of another shape)."""
    kind = _base_type(annotation)
    if kind in (list, dict) and not isinstance(value, kind):
        wanted = "a list" if kind is list else "a mapping"
        return f"{name} must be {wanted} (got {json.dumps(value)})"
    return None


def _field_problem(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"{f.name} '{value}' is not one of {', '.join(map(str, meta['choices']))}"
    pattern = meta["pattern"]
    if pattern is not None and isinstance(value, str) and not re.search(pattern, value):
        return f"{f.name} '{value}' must match the pattern {pattern}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if meta["minimum"] is not None and value < meta["minimum"]:
        return f"{f.name} must be at least {meta['minimum']} (got {value})"
    if meta["maximum"] is not None and value > meta["maximum"]:
        return f"{f.name} must be at most {meta['maximum']} (got {value})"
    if meta["above"] is not None and value <= meta["above"]:
        return f"{f.name} must be above {meta['above']} (got {value})"
    if meta["below"] is not None and value >= meta["below"]:
        return f"{f.name} must be below {meta['below']} (got {value})"
    return None
