"""Command-line overrides of nested settings, typed as the config schema says.

`snakemake --config 'mine={neg_ratio: 0.05}'` reaches the workflow as {"mine": {"neg_ratio":
"0.05"}}: Snakemake reads nested values with YAML's base loader, which keeps every scalar a string,
and the schema would then refuse the number. Each string where the schema wants another type is read
again as YAML, so the documented override of any nested setting works.
"""

from __future__ import annotations

from typing import Any

import yaml

_TYPES = {
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def typed_overrides(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """`value` with strings re-read as YAML wherever `schema` asks for a non-string type.

    `root` is the whole schema, for local references (`#/definitions/...`)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: typed_overrides(
                item, properties.get(key, extra if isinstance(extra, dict) else {}), root
            )
            for key, item in value.items()
        }
    wanted = schema.get("type")
    kinds = wanted if isinstance(wanted, list) else [wanted]
    if not isinstance(value, str) or "string" in kinds:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    for kind in kinds:
        if kind in _TYPES and isinstance(parsed, _TYPES[kind]):
            if kind in ("number", "integer") and isinstance(parsed, bool):
                continue
            return parsed
    return value


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref", "")
    if not reference.startswith("#/"):
        return schema
    target: Any = root
    for part in reference[2:].split("/"):
        target = target[part]
    return _resolve(target, root)
