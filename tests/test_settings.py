"""One source per setting: config.yaml, the config schema and the CLI agree with the settings classes."""

from __future__ import annotations

import argparse
import importlib

import pytest
import yaml

from hnm import config_schema
from hnm.core.errors import ConfigError
from hnm.core.settings import StageSettings
from hnm.demo.settings import DemoSettings
from hnm.finetune.settings import EncoderSchedule
from hnm.mil.settings import MilSettings
from hnm.mine.settings import MineSettings
from hnm.tile.settings import TileSettings

SECTION_CLASSES = config_schema.section_classes()
# stage command (hnm/commands/<module>.py) -> the settings classes whose flags it takes
COMMAND_SETTINGS = {
    "synth": ["DemoSettings"],
    "tile": ["TileSettings"],
    "init_encoder": ["EncoderSettings"],
    "pretrain": ["PretrainSettings"],
    "extract": ["ExtractSettings"],
    "mil": ["MilSettings"],
    "mine": ["MineSettings", "EncoderSchedule"],
    "finetune": ["FinetuneSettings"],
    "evaluate": ["EvaluateSettings"],
    "probe": ["MilSettings", "EvaluateSettings"],
    "heatmaps": ["EvaluateSettings", "VizSettings"],
    "mined": ["EvaluateSettings", "VizSettings"],
    "figures": ["EvaluateSettings", "VizSettings"],
    "report_sample": ["VizSettings"],
    "predict": [],  # predict.sheet and predict.name are the workflow's (rules/predict.smk)
}
CLASSES_BY_NAME = {cls.__name__: cls for cls in [*SECTION_CLASSES, EncoderSchedule]}


def load_yaml(repo_root, *parts: str) -> dict:  # noqa: ANN001
    return yaml.safe_load((repo_root.joinpath(*parts)).read_text())


def test_every_config_section_has_a_class(repo_root) -> None:  # noqa: ANN001
    config = load_yaml(repo_root, "config", "config.yaml")
    workflow_keys = set(config_schema.workflow_properties())
    assert set(config) - workflow_keys == {cls.section for cls in SECTION_CLASSES}


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_config_yaml_holds_the_class_defaults(repo_root, cls) -> None:
    config = load_yaml(repo_root, "config", "config.yaml")
    assert config[cls.section] == cls.defaults()


def test_config_yaml_holds_the_workflow_defaults(repo_root) -> None:  # noqa: ANN001
    config = load_yaml(repo_root, "config", "config.yaml")
    for key, schema in config_schema.workflow_properties().items():
        if "default" in schema:
            assert config[key] == schema["default"], key


@pytest.mark.parametrize(
    "name", ["config.yaml", "paper.yaml", "its2clr.yaml", "dsmil.yaml", "camelyon16.yaml"]
)
def test_every_config_file_names_known_settings(repo_root, name) -> None:  # noqa: ANN001
    config = load_yaml(repo_root, "config", name)
    for cls in SECTION_CLASSES:
        cls.from_config(
            {
                **load_yaml(repo_root, "config", "config.yaml")[cls.section],
                **config.get(cls.section, {}),
            }
        )


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_schema_section_is_the_class_schema(repo_root, cls) -> None:
    schema = load_yaml(repo_root, "workflow", "schemas", "config.schema.yaml")
    assert schema["properties"][cls.section] == cls.json_schema()


def test_committed_schema_is_the_generated_one() -> None:
    assert config_schema.SCHEMA_PATH.read_text() == config_schema.render(), (
        "workflow/schemas/config.schema.yaml is stale: run `python -m hnm.config_schema --write`"
    )


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.section)
def test_cli_defaults_are_the_class_defaults(cls) -> None:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    assert cls.from_args(parser.parse_args([])) == cls()


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_commands_take_the_class_flags(command) -> None:  # noqa: ANN001
    """Each command's settings flags are the classes' own, with the classes' defaults."""
    module = importlib.import_module(f"hnm.commands.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    actions = {action.dest: action for action in parser._actions}
    for cls in (CLASSES_BY_NAME[name] for name in COMMAND_SETTINGS[command]):
        for field in cls.cli_fields():
            action = actions[field.name]
            assert action.option_strings[0] == "--" + field.name.replace("_", "-")
            assert action.default == cls.defaults()[field.name], field.name


def test_workflow_only_settings_have_no_flag() -> None:
    parser = argparse.ArgumentParser()
    DemoSettings.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--slides", "{}"])
    assert DemoSettings.from_args(parser.parse_args([])) == DemoSettings()


def test_total_epochs_is_one_round_times_the_rounds() -> None:
    assert EncoderSchedule(epochs_per_round=5, rounds=20).total_epochs == 100
    assert EncoderSchedule(epochs_per_round=5, rounds=0).total_epochs == 5  # plain DSMIL


def test_mine_and_finetune_share_the_schedule() -> None:
    finetune = CLASSES_BY_NAME["FinetuneSettings"]
    assert issubclass(finetune, EncoderSchedule)
    schedule = {f.name for f in EncoderSchedule.fields()}
    assert schedule <= {f.name for f in finetune.fields()}
    assert not schedule & {f.name for f in MineSettings.fields()}


def test_generated_flags_parse_back() -> None:
    parser = argparse.ArgumentParser()
    MilSettings.add_arguments(parser)
    args = parser.parse_args(["--epochs", "7", "--no-ranking-loss", "--select", "best_val"])
    assert MilSettings.from_args(args) == MilSettings(
        epochs=7, ranking_loss=False, select="best_val"
    )


def test_bounds_and_choices_are_checked_where_the_object_is_made() -> None:
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        MilSettings(epochs=0)
    with pytest.raises(ConfigError, match="lr must be above 0"):
        MilSettings(lr=0.0)
    with pytest.raises(ConfigError, match="aggregator 'x' is not one of"):
        MilSettings(aggregator="x")
    with pytest.raises(ConfigError, match="unknown key"):
        MilSettings.from_config({"epochz": 3})
    with pytest.raises(ConfigError, match="overlap must be below 1"):
        TileSettings(overlap=1.0)
    with pytest.raises(ConfigError, match="slides must give tumor and normal counts"):
        DemoSettings(slides={"train": {"tumor": 1}})
    with pytest.raises(ConfigError, match="tile_size must be a multiple of 16"):
        DemoSettings(tile_size=100)
    with pytest.raises(ConfigError, match="r_final must be at most 1"):
        MineSettings(r_final=1.5)
    with pytest.raises(ConfigError, match="versus_classes must be a list"):
        CLASSES_BY_NAME["EvaluateSettings"](versus_classes="Mimic")


def test_section_classes_are_stage_settings() -> None:
    assert all(issubclass(cls, StageSettings) and cls.section for cls in SECTION_CLASSES)
    assert len({cls.section for cls in SECTION_CLASSES}) == len(SECTION_CLASSES)
