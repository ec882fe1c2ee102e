"""``sipgw serve`` refuses a bad dispatcher.list before anything starts (``--check`` too)."""

from __future__ import annotations

from click.testing import CliRunner

from sipgw.cli.main import cli


def write(tmp_path, lines: str):
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text(lines)
    config = tmp_path / "sipgw.toml"
    config.write_text(f'[listen]\nudp = ["127.0.0.1:25961"]\ntcp = []\nws = []\n'
                      f'[dispatcher]\nlist_file = "{listfile}"\n')
    return config, listfile


def test_check_names_the_bad_line_of_the_list_file_and_exits_2(tmp_path):
    config, listfile = write(tmp_path, "1 sip:127.0.0.1:25081\n1 sip:127.0.0.1:25082 0 high\n")
    result = CliRunner().invoke(cli, ["serve", "--check", "-c", str(config)])
    assert result.exit_code == 2
    assert f"{listfile}:2: priority: expected a decimal or 0x hex integer" in result.output


def test_check_passes_a_good_list_and_shows_its_warnings(tmp_path):
    config, listfile = write(tmp_path, "1 sip:127.0.0.1:25081 0 0 socket=udp:10.0.0.1:5060\n")
    result = CliRunner().invoke(cli, ["serve", "--check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{listfile}:1: attrs socket=udp:10.0.0.1:5060 ignored" in result.output
    assert f"{config}: OK" in result.output
