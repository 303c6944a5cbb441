"""One name per stage: a stage's rule, `hnm` command, config section and package share it
(docs/layout.md, "One name per stage"), and the old names get a message with the new one."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from hnm import config_schema
from hnm.cli import STAGES, main
from hnm.compare.spec import load_spec
from hnm.core.errors import ConfigError
from hnm.core.renames import RENAMED_COMMANDS, RENAMED_SECTIONS, check_section_names
from tests.test_workflow_static import rules_with_stages

REPO = Path(__file__).resolve().parents[1]
# Config sections that several stages read, each with its package: they are not one stage's.
SHARED_SECTIONS = {"demo": "demo", "encoder": "encoders", "viz": "viz"}
# Rules whose command is another stage's, run on other files (predict's copies of the stages).
ROLE_RULES = {
    "eval_sheet": "check-sheet",
    "predict_sheet": "check-sheet",
    "predict_score": "predict",
}


def test_each_rule_is_named_after_the_command_it_runs() -> None:
    for rule, (_env, command) in rules_with_stages().items():
        if rule in ROLE_RULES:
            assert command == ROLE_RULES[rule], rule
            continue
        own = rule.removeprefix("predict_")
        assert own.replace("_", "-") == command, f"rule {rule} runs `hnm {command}`"


@pytest.mark.parametrize("cls", config_schema.section_classes(), ids=lambda c: c.section)
def test_each_config_section_is_its_stage_package_and_command(cls) -> None:
    package = SHARED_SECTIONS.get(cls.section, cls.section)
    assert cls.__module__ == f"hnm.{package}.settings", cls
    assert cls.__name__.lower() == f"{cls.section}settings", cls
    if cls.section not in SHARED_SECTIONS:
        assert cls.section in STAGES, f"config section {cls.section} has no `hnm {cls.section}`"
        importlib.import_module(f"hnm.commands.{STAGES[cls.section][0]}")


def test_every_stage_package_has_its_rule_file() -> None:
    for cls in config_schema.section_classes():
        if cls.section in SHARED_SECTIONS or cls.section == "predict":
            continue
        assert (REPO / "rules" / f"{cls.section}.smk").exists(), cls.section


@pytest.mark.parametrize("old", sorted(RENAMED_SECTIONS))
def test_an_old_config_section_names_its_new_name(old: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{old}' is now '{RENAMED_SECTIONS[old]}'"):
        check_section_names({"seed": 0, old: {}}, "the config")
    check_section_names({"seed": 0, RENAMED_SECTIONS[old]: {}}, "the config")


def test_an_old_section_in_a_comparison_file_names_its_new_name(tmp_path: Path) -> None:
    spec = tmp_path / "compare.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"seeds": [0], "reference": "a", "methods": {"a": {"mining": {"neg_ratio": 0.2}}}}
        )
    )
    with pytest.raises(ConfigError, match="method 'a'.*'mining' is now 'mine'"):
        load_spec(spec)


@pytest.mark.parametrize("old", sorted(RENAMED_COMMANDS))
def test_an_old_command_names_its_new_name(old: str, capsys) -> None:  # noqa: ANN001
    assert main([old, "--help"]) == 2
    assert f"`hnm {old}` is now `hnm {RENAMED_COMMANDS[old]}`" in capsys.readouterr().err
