"""Token mistakes found early: a bad tokens-file line is named by its own number, and
`token create` refuses process patterns the service would refuse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coordinator.auth import TokenTable, new_token
from coordinator.embedded import free_port
from tests.test_cli import CLI, assert_error
from tests.test_serve import _env

_, ADMIN_LINE = new_token("admin")


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("also_in_variable", [0, 2], ids=["file-only", "with-variable"])
def test_a_bad_tokens_file_line_is_named_by_its_number(
    tmp_path: Path, also_in_variable: int
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# who may call\n{ADMIN_LINE}\nsha256:123 admin\n{ADMIN_LINE}\n")
    variable = ";".join(new_token("worker")[1] for _ in range(also_in_variable))
    env = _env(
        tmp_path / "data", COORDINATOR_REDIS_URL="memory://",
        COORDINATOR_TOKENS_FILE=str(tokens_file), COORDINATOR_TOKENS=variable,
    )  # fmt: skip
    assert_error(_serve(env), 2, f"COORDINATOR_TOKENS_FILE {tokens_file} line 3:")


def test_a_bad_tokens_variable_entry_is_named_by_its_number(tmp_path: Path) -> None:
    env = _env(
        tmp_path / "data", COORDINATOR_REDIS_URL="memory://",
        COORDINATOR_TOKENS=f"{ADMIN_LINE};sha256:123 admin",
    )  # fmt: skip
    assert_error(_serve(env), 2, "COORDINATOR_TOKENS line 2:")


@pytest.mark.parametrize("patterns", ["bad name", "a#b", "a;b", "a,,b", ",a", "a/b", ""], ids=repr)
def test_token_create_refuses_a_pattern_the_service_would(patterns: str) -> None:
    result = subprocess.run(
        [*CLI, "token", "create", "--role", "worker", "--processes", patterns],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert_error(result, 2, "--processes")


def test_token_create_grants_the_patterns_it_was_given() -> None:
    result = subprocess.run(
        [*CLI, "token", "create", "--role", "worker", "--processes", "nightly,reports-*"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[0].removeprefix("token: ")
    line = result.stdout.splitlines()[-1]
    assert line.split()[1:] == ["worker", "nightly,reports-*"]
    principal = TokenTable.parse(line).authenticate(f"Bearer {token}")
    assert principal.processes == ("nightly", "reports-*")
    assert principal.may_act_on("reports-2026")
    assert not principal.may_act_on("other")
