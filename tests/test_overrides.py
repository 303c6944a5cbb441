"""Nested `--config` overrides arrive as strings; they are typed as the schema says."""

from __future__ import annotations

from hnm.core.overrides import typed_overrides

SCHEMA = {
    "type": "object",
    "properties": {
        "mine": {
            "type": "object",
            "properties": {
                "neg_ratio": {"type": "number"},
                "gate": {"type": "boolean"},
                "name": {"type": "string"},
            },
        },
        "rounds": {"type": "integer"},
        "labels": {"type": "object", "additionalProperties": {"type": "integer"}},
        "evaluate": {"type": "object", "properties": {"versus_classes": {"type": "array"}}},
    },
}


def test_strings_become_the_types_the_schema_wants() -> None:
    config = {
        "mine": {"neg_ratio": "0.05", "gate": "false", "name": "0.5"},
        "rounds": "3",
        "labels": {"tumour": "1"},
        "evaluate": {"versus_classes": "[Mimic, Necrosis]"},
    }
    assert typed_overrides(config, SCHEMA) == {
        "mine": {"neg_ratio": 0.05, "gate": False, "name": "0.5"},
        "rounds": 3,
        "labels": {"tumour": 1},
        "evaluate": {"versus_classes": ["Mimic", "Necrosis"]},
    }


def test_values_that_do_not_parse_are_left_for_the_schema_to_refuse() -> None:
    config = {"mine": {"neg_ratio": "lots", "gate": "1"}, "rounds": "true"}
    assert typed_overrides(config, SCHEMA) == config


def test_a_nested_setting_can_be_overridden_on_the_command_line(tmp_path, repo_root) -> None:
    """The documented override reaches the stage's command line; the layered file's other values
    in the same section stay."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(repo_root / "Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "-p",
            "--configfile",
            str(repo_root / "config" / "paper.yaml"),
            "--config",
            "mine={neg_ratio: 0.05}",
            "--",
            "results/r0/mining/sets.parquet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    mine = next(line for line in result.stdout.splitlines() if "hnm mine" in line)
    assert "--neg-ratio 0.05" in mine
    assert "--eta 0.3" in mine


def test_local_references_are_followed() -> None:
    schema = {
        "definitions": {"fraction": {"type": "number", "minimum": 0, "maximum": 1}},
        "properties": {"mine": {"properties": {"neg_ratio": {"$ref": "#/definitions/fraction"}}}},
    }
    assert typed_overrides({"mine": {"neg_ratio": "0.2"}}, schema) == {"mine": {"neg_ratio": 0.2}}
