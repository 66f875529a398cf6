"""Every command's --help reads in an 80-column terminal: every option and subcommand name printed
whole, its help in a column at least MIN_HELP characters wide, no line wider than the terminal."""

import re

import pytest
import typer
from typer.testing import CliRunner

from sttabt_edge.cli import app

WIDTH = 80
MIN_HELP = 30  # characters of help text per line where the help wraps
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECTION = re.compile(r"^[\s╭─]*(Options|Commands|Arguments)\b")
runner = CliRunner()


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _entries(cmd):
    """(name, help) for every visible option with help (``--help`` included) and every subcommand."""
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden and p.help:
            yield max(p.opts, key=len), p.help
    yield "--help", "Show this message and exit."
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False) and sub.get_short_help_str():
            yield name, sub.get_short_help_str()


def _help(path) -> list[str]:
    env = {
        "COLUMNS": str(WIDTH),
        "LINES": "50",
        "FORCE_COLOR": None,
        "GITHUB_ACTIONS": None,
        "PY_COLORS": None,
    }
    res = runner.invoke(app, [*path, "--help"], env=env)
    assert res.exit_code == 0, res.output
    return ANSI.sub("", res.output).splitlines()


def _help_column(lines: list[str], name: str, text: str) -> int:
    """The column where ``name``'s help starts: on its own line after the name, or on the next line."""
    start = next(i for i, line in enumerate(lines) if SECTION.match(line))
    at_start = re.compile(rf"^[\s│*]*(?:-\w\s*,\s*)*{re.escape(name)}(?![\w-])")
    first = re.compile(rf"(?:^|(?<=\s)){re.escape(text.split()[0])}")
    for i in range(start, len(lines)):
        m = at_start.match(lines[i])
        if m is None:
            continue
        hit = first.search(lines[i], m.end())
        if hit is None and i + 1 < len(lines):
            hit = first.search(lines[i + 1])
        assert hit is not None, f"{name}: its help ({text[:30]!r}...) not found under it"
        return hit.start()
    raise AssertionError(f"{name}: not printed whole at the start of a line (cut, or missing)")


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "sttabt-edge")
def test_help_fits_80_columns(path):
    cmd = dict(COMMANDS)[path]
    lines = _help(path)
    wide = [line for line in lines if len(line) > WIDTH]
    assert not wide, f"lines wider than {WIDTH}: {wide}"
    narrow = {}
    for name, text in _entries(cmd):
        room = WIDTH - _help_column(lines, name, text)
        if room < MIN_HELP:
            narrow[name] = room
    assert not narrow, f"help columns narrower than {MIN_HELP} characters: {narrow}\n" + "\n".join(lines)
    listed = lines[next((i for i, line in enumerate(lines) if "Commands" in line), len(lines)) :]
    cut = [line for line in listed if line.rstrip(" │").endswith(("...", "…"))]
    assert not cut, f"subcommand summaries cut short: {cut}"


def test_every_command_is_checked():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "train", "train concrete", "export", "compress", "bench"} <= names
