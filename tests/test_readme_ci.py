"""The README's two commands and CI must stay in step."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def commands():
    return [l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("    pip install")]


def test_readme_has_exactly_two_setup_commands():
    cmds = commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("python -m sagecore demo")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands()[1] in ci
    assert re.search(r"-m slow", ci)
    assert "bench/ --benchmark-disable" in ci  # the microbenchmarks run once each, so they cannot rot
