"""`coordinator completion bash|zsh|fish`: scripts generated from the parser, so each shell
completes exactly the commands, options and choices the parser accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coordinator.cli.completion import walk
from coordinator.cli.parser import build_parser
from coordinator.cli.values import KEY_STATE_CHOICES
from tests.test_cli import CLI, _clean_env

# The parser's commands: `coordinator <path> <TAB>` offers exactly these subcommands.
SUBCOMMANDS = {c.path: sorted(n for n, _ in c.subcommands) for c in walk(build_parser())}


def _script(shell: str, tmp_path: Path) -> Path:
    result = subprocess.run(
        [*CLI, "completion", shell], env=_clean_env(), capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    path = tmp_path / f"coordinator.{shell}"
    path.write_text(result.stdout)
    return path


def _bash(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of `words`, as `coordinator` was typed before it."""
    program = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _coordinator;'
        ' printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "-c", program, "bash", str(script), "coordinator", *words],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return sorted(set(result.stdout.split()))


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["pro"], ["process"]),
        (["--json", "process", "l"], ["list"]),  # a service option before the command
        (["--url", "http://127.0.0.1:8000", "k"], ["key", "keys"]),  # an option's value is skipped
        (["process", "list", "--js"], ["--json"]),
        (["keys", "nightly", "--st"], ["--state"]),
        (["keys", "nightly", "--state", ""], sorted(KEY_STATE_CHOICES)),
        (["serve", "--log-level", ""], ["debug", "error", "info", "warning"]),
        (["release", "id", "--outcome", ""], ["completed", "failed", "fatal", "interrupted"]),
        (["token", "create", "--role", ""], ["admin", "worker"]),
        (["completion", ""], ["bash", "fish", "zsh"]),
        (["serve", "--port", ""], []),  # a number to type
        (["run", "nightly", "--", "ech"], ["echo"]),  # after --: the command's name
    ],
)
def test_bash_completes_commands_options_and_values(
    tmp_path: Path, words: list[str], offered: list[str]
) -> None:
    assert _bash(_script("bash", tmp_path), *words) == offered


def test_bash_offers_every_command_of_the_parser(tmp_path: Path) -> None:
    script = _script("bash", tmp_path)
    for path, subcommands in SUBCOMMANDS.items():
        if subcommands:
            assert _bash(script, *path.split(), "") == subcommands, path


def test_fish_completes_commands_options_and_values(tmp_path: Path) -> None:
    script = _script("fish", tmp_path)

    def offered(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return sorted(row.split("\t")[0] for row in result.stdout.splitlines())

    assert offered("coordinator pro") == ["process"]
    assert offered("coordinator --json process l") == ["list"]
    assert offered("coordinator keys x --state ") == sorted(KEY_STATE_CHOICES)
    for path, subcommands in SUBCOMMANDS.items():
        if subcommands:
            assert offered(f"coordinator {path} ".replace("  ", " ")) == subcommands, path


def test_zsh_script_loads_under_compinit(tmp_path: Path) -> None:
    script = _script("zsh", tmp_path)
    program = (
        f"autoload -U compinit; compinit -u -D -d {tmp_path}/zcompdump; source {script};"
        " print -r -- $_comps[coordinator]"
    )
    result = subprocess.run(
        ["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == "_coordinator"
    text = script.read_text()
    for subcommands in SUBCOMMANDS.values():
        for command in subcommands:
            assert f"'{command}:" in text
