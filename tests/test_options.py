"""Each option is declared once, in settings.py, with the commands that take it.

The command line, the environment fallbacks, ``--help`` and the docs' table all derive from
that declaration; a stage refuses the options it does not use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streamproc.cli import main, options
from streamproc.settings import STAGES, Settings

ROOT = Path(__file__).resolve().parents[1]
KNOBS = [f for f in dataclasses.fields(Settings) if "flag" in f.metadata]


def offering(env: str) -> set[str]:
    """The commands with an option that falls back to this environment variable."""
    return {
        name
        for name, command in main.commands.items()
        if any(isinstance(p, click.Option) and p.envvar == env for p in command.params)
    }


@pytest.mark.parametrize("knob", KNOBS, ids=lambda f: f.name)
def test_every_knob_is_offered_by_exactly_the_commands_it_declares(
    knob: dataclasses.Field[object],
) -> None:
    """The commands it names, ``run`` too when a stage takes it, and no other command."""
    declared = set(knob.metadata["commands"])
    expected = declared | ({"run"} if declared & STAGES else set())
    assert offering(knob.metadata["env"]) == expected


@pytest.mark.parametrize("knob", KNOBS, ids=lambda f: f.name)
def test_every_knob_shows_its_variable_and_default_in_the_help(
    knob: dataclasses.Field[object],
) -> None:
    """Each offering command's help names the knob's flag, variable and default."""
    for name in options.commands_of(knob.name):
        command = main.commands[name]
        option = next(
            p
            for p in command.params
            if isinstance(p, click.Option) and p.envvar == knob.metadata["env"]
        )
        flags, text = option.get_help_record(click.Context(command)) or ("", "")
        assert knob.metadata["flag"].split("/")[0] in flags
        assert f"env var: {knob.metadata['env']}" in text
        default = options.default_of(knob.name, name)
        if isinstance(default, bool):
            # click names the switch's side that is on, and shows nothing for a flag that is off
            on, _, off = knob.metadata["flag"].partition("/")
            side = on if default else off
            assert (f"default: {side.lstrip('-')}" in text) if side else "default" not in text
        elif default not in (None, ""):
            assert f"default: {default}" in text


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["windows", "--node-budget", "5"], "--node-budget"),
        (["ingest", "--speed", "2"], "--speed"),
        (["run", "--speed", "2"], "--speed"),
        (["windows", "--kubeconfig", "x"], "--kubeconfig"),
        (["annotate", "--flush-interval", "1"], "--flush-interval"),
        (["ingest", "--workers", "2"], "--workers"),
        (["windows", "--input-topic", "x"], "--input-topic"),
    ],
)
def test_a_stage_refuses_an_option_it_does_not_use(args: list[str], option: str) -> None:
    """A usage error (exit 2) naming the option, before anything starts."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"No such option: {option}" in result.output


def test_the_lab_alone_offers_the_time_lapse() -> None:
    """``--speed`` is on ``lab``'s help, with the lab's default, and on no stage's."""
    lab = CliRunner().invoke(main, ["lab", "--help"], terminal_width=200)
    assert lab.exit_code == 0
    assert "--speed" in lab.output
    assert "default: 12.0" in lab.output
    for stage in ("run", "ingest", "windows", "annotate"):
        assert "--speed" not in CliRunner().invoke(main, [stage, "--help"]).output


def test_run_offers_what_any_of_its_stages_takes() -> None:
    """``run --help`` lists the union of the three stages' options."""
    run = set(main.commands["run"].params)
    flags = {o for p in main.commands["run"].params for o in p.opts}
    union = {o for s in STAGES for p in main.commands[s].params for o in p.opts}
    assert flags == union
    assert len(run) == len({p.name for p in run})
    help_text = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    for flag in ("--node-budget", "--flush-interval", "--partitions", "--pod-lookups"):
        assert flag in help_text


def test_an_option_a_stage_does_not_take_may_still_be_in_its_environment() -> None:
    """A ConfigMap shared by every stage: a variable a stage does not use is ignored."""
    result = CliRunner().invoke(
        main,
        ["windows", "--help"],
        env={"STREAMPROC_NODE_BUDGET": "5", "STREAMPROC_SPEED": "2"},
    )
    assert result.exit_code == 0, result.output


def test_the_docs_option_table_is_the_code() -> None:
    """docs/getting-started.md shows the table options.markdown() renders (regenerate it)."""
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert options.markdown() in page, "paste what options.markdown() returns into the page"
