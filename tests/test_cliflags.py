from hnm.core.cliflags import to_flags


def test_flags_from_a_config_section() -> None:
    flags = to_flags(
        {
            "batch_size": 256,
            "ranking_loss": False,
            "gate": True,
            "weights": "",
            "name": "a b",
            "skip_me": 1,
            "nothing": None,
        },
        skip=["skip_me"],
    )
    assert flags == "--batch-size 256 --gate --name 'a b' --no-ranking-loss --weights ''"


def test_flags_do_not_depend_on_the_order_of_the_keys() -> None:
    """A YAML written with sorted keys (yaml.safe_dump) and one in the user's order give one
    command line, so Snakemake does not re-run a finished job for the order alone."""
    ordered = {
        "width": 2048,
        "height": 1024,
        "slides": {"val": {"tumor": 1}, "train": {"tumor": 2}},
    }
    shuffled = {
        "slides": {"train": {"tumor": 2}, "val": {"tumor": 1}},
        "height": 1024,
        "width": 2048,
    }
    assert to_flags(ordered) == to_flags(shuffled)
    assert to_flags(ordered).startswith("--height 1024 --slides")


def test_job_flags_have_one_meaning_in_every_stage() -> None:
    """--seed, --device, --threads and --checkpoint-dir are declared once (JOB_FLAGS): every stage
    that takes one takes it with the same type, default and help."""
    import argparse
    import importlib

    from hnm.cli import STAGES
    from hnm.core.cliflags import JOB_FLAGS

    seen = {name: 0 for name in JOB_FLAGS}
    for stage, (module_name, _) in STAGES.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(f"hnm.commands.{module_name}").add_arguments(parser)
        actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
        for name, (flag, options) in JOB_FLAGS.items():
            if flag in actions:
                seen[name] += 1
                action = actions[flag]
                assert action.help == options["help"], (stage, flag)
                assert action.default == options["default"], (stage, flag)
    assert seen["threads"] >= 5 and seen["seed"] >= 4 and seen["checkpoint_dir"] >= 3
