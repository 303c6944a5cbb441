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
    assert flags == "--batch-size 256 --no-ranking-loss --gate --weights '' --name 'a b'"
