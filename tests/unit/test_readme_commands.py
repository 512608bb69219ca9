"""Every command in the README is run, exactly as written, by a test or by CI (see tests/readme.py)."""

from __future__ import annotations

from tests.readme import blocks, ci_commands, claimed, commands


def test_every_readme_command_is_run_by_a_test_or_ci() -> None:
    missing = [command for command in commands() if command not in claimed()]
    assert not missing, f"README commands no test runs: {missing}"


def test_ci_runs_the_readmes_test_command() -> None:
    assert ci_commands() == {"make test"}
    assert "make test" in commands()


def test_blocks_read_sh_and_console_commands_without_comments() -> None:
    text = "\n".join(
        [
            "```sh",
            "make demo   # the seed task",
            "# a comment line",
            "```",
            "```console",
            "$ sdtask list",
            "NAME  PHASE",
            "```",
            "```yaml",
            "kind: SDTask",
            "```",
        ]
    )
    assert blocks(text) == [["make demo"], ["sdtask list"]]
