"""The README's commands, and which test runs each of them exactly as written.

A command is a line of a ```sh block, or a `$ ` line of a ```console block (a trailing `# comment` is not part of
it). A test that runs README commands takes them from here, `readme_command("make demo")` or
`readme_block("source .dev/env")` (the whole block it starts), and runs what it gets, verbatim, through a shell.
`tests/unit/test_readme_commands.py` then checks, from the tests' source, that every README command is taken by some
test (or is CI's own command), so a README edit without a test that runs it fails the suite.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_SCRIPT = REPO / ".ci" / "run"
_FENCE = re.compile(r"^```(\w*)\s*$")
_COMMENT = re.compile(r"\s+#\s.*$")

# Commands a test runs without going through this module (it predates it); the test file must spell the argv.
RUN_ELSEWHERE = {"make dev": ("tests/integration/test_make_dev.py", '["make", "dev"]')}


def blocks(text: str | None = None) -> list[list[str]]:
    """The commands of each shell block, in order."""
    found: list[list[str]] = []
    language: str | None = None
    current: list[str] = []
    for line in (README.read_text() if text is None else text).splitlines():
        fence = _FENCE.match(line.strip())
        if fence and language is None:
            language, current = fence.group(1), []
            continue
        if fence:
            if language in ("sh", "bash", "shell", "console") and current:
                found.append(current)
            language = None
            continue
        if language in ("sh", "bash", "shell"):
            command = _COMMENT.sub("", line).strip()
            if command and not command.startswith("#"):
                current.append(command)
        elif language == "console" and line.startswith("$ "):
            current.append(_COMMENT.sub("", line[2:]).strip())
    return found


def commands() -> list[str]:
    return [command for block in blocks() for command in block]


def readme_command(command: str) -> str:
    assert command in commands(), f"the README has no command {command!r}"
    return command


def readme_block(first: str) -> list[str]:
    """The whole block that starts with `first`."""
    for block in blocks():
        if block[0] == first:
            return block
    raise AssertionError(f"no README shell block starts with {first!r}")


def ci_commands() -> set[str]:
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    return {line.removeprefix("exec ") for line in lines if line and not line.startswith(("#", "set ", "cd "))}


def claimed(tests_root: Path = REPO / "tests") -> set[str]:
    """Every README command some test takes through readme_command / readme_block, from the tests' source."""
    claims: set[str] = set()
    for path in tests_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            argument = node.args[0]
            if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                continue
            if node.func.id == "readme_command":
                claims.add(argument.value)
            elif node.func.id == "readme_block":
                claims.update(readme_block(argument.value))
    for command, (test_file, argv) in RUN_ELSEWHERE.items():
        if argv in (REPO / test_file).read_text():
            claims.add(command)
    return claims | ci_commands()
