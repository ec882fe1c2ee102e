"""tests/data/guide-kamcmd.txt is a true copy of what the Kamailio guide runs and greps."""

from __future__ import annotations

import os

import pytest

from tests.helpers.guide import COPY, copied, guide_commands, guide_path


@pytest.fixture
def guide() -> str:
    path = guide_path()
    if path is None:
        # CI has shared/ beside the clone; a bare clone elsewhere has only the copy.
        assert not os.environ.get("CI"), "shared/reference/ is missing beside the checkout"
        pytest.skip("the reference guide is not beside this checkout")
    return path.read_text()


def test_the_copy_lists_every_kamcmd_command_of_the_guide_once_in_its_order(guide):
    assert copied("kamcmd") == guide_commands(guide), f"update {COPY} from the guide"


def test_every_log_pattern_of_the_copy_is_in_the_guide(guide):
    patterns = copied("grep")
    assert "NAT detected" in patterns and "pike blocking" in patterns
    assert [p for p in patterns if p.lower() not in guide.lower()] == []


def test_the_guide_commands_are_read_from_its_lines():
    text = ("# Check\nsudo docker exec webrtc-kamailio kamcmd dispatcher.list\n"
            "sudo docker exec webrtc-kamailio kamcmd log.level 4  \n"
            "sudo docker exec -it webrtc-kamailio kamctl\n"
            "sudo docker exec webrtc-kamailio kamcmd dispatcher.list\n")
    assert guide_commands(text) == ["dispatcher.list", "log.level 4"]
