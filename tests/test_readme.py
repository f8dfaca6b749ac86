"""The README's commands exist: the two make targets, the CI hook, and every `hfld <command>`."""

import re

from pipeline.cli import build_parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", MAKEFILE, flags=re.M))


def cli_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_the_two_setup_commands_exist():
    assert re.search(r"^make demo\b", README, flags=re.M) and re.search(r"^make test\b", README, flags=re.M)
    assert {"demo", "test"} <= make_targets()
    assert "hfld run" in MAKEFILE and "hfld zoo fetch starter" in MAKEFILE


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_hfld_command_in_the_readme_exists():
    mentioned = set(re.findall(r"\bhfld ([a-z][a-z-]*[a-z])", README))
    assert mentioned, "the README names no hfld commands"
    missing = mentioned - cli_commands()
    assert not missing, f"README mentions hfld commands the CLI lacks: {sorted(missing)}"


def test_readme_images_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO / path).is_file(), path
