import pytest

from letta_ops.tasks.letta.versions import (
    LettaVersion,
    UnsupportedLettaVersion,
    parse_server_version,
)


@pytest.mark.parametrize("text", ["0.11.7", "0.16.2", "v0.16.8", " 0.14.0 "])
def test_accepts_exact_server_releases(text):
    assert str(parse_server_version(text)) == text.strip().removeprefix("v")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("latest", "not a pinned release"),
        ("", "not a pinned release"),
        ("0.34.0", "Letta Code"),
        ("0.32.0", "Letta Code"),
        ("0.17.0", "not a Letta server release"),
        ("0.16", "X.Y.Z"),
        ("0.16.2rc1", "X.Y.Z"),
    ],
)
def test_refuses_moving_tags_and_other_products(text, words):
    with pytest.raises(UnsupportedLettaVersion) as err:
        parse_server_version(text)
    message = str(err.value)
    assert words in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_versions_order_numerically():
    assert LettaVersion("0.9.9") < LettaVersion("0.11.7") < LettaVersion("0.16.2")
