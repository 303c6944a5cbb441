"""One source per setting: config.yaml, the config schema and the CLI agree with the settings classes."""

from __future__ import annotations

import argparse

import pytest
import yaml

from hnm.core.errors import ConfigError
from hnm.mil.settings import MilSettings

SECTION_CLASSES = [MilSettings]


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_config_yaml_holds_the_class_defaults(repo_root, cls) -> None:
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    assert config[cls.section] == cls.defaults()


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_schema_section_is_the_class_schema(repo_root, cls) -> None:
    schema = yaml.safe_load((repo_root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"][cls.section] == cls.json_schema()


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_cli_defaults_are_the_class_defaults(cls) -> None:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    assert cls.from_args(parser.parse_args([])) == cls()


def test_generated_flags_parse_back() -> None:
    parser = argparse.ArgumentParser()
    MilSettings.add_arguments(parser)
    args = parser.parse_args(["--epochs", "7", "--no-ranking-loss", "--select", "best_val"])
    assert MilSettings.from_args(args) == MilSettings(epochs=7, ranking_loss=False, select="best_val")


def test_bounds_and_choices_are_checked_where_the_object_is_made() -> None:
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        MilSettings(epochs=0)
    with pytest.raises(ConfigError, match="lr must be above 0"):
        MilSettings(lr=0.0)
    with pytest.raises(ConfigError, match="aggregator 'x' is not one of"):
        MilSettings(aggregator="x")
    with pytest.raises(ConfigError, match="unknown key"):
        MilSettings.from_config({"epochz": 3})
