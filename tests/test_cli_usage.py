"""The command line behaves like the tools people know: service options before or after the
command, tokens never echoed, help on everything, and messages in the user's own words."""

from __future__ import annotations

import argparse
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coordinator.cli.parser import build_parser
from tests import test_cli
from tests.test_cli import CLI, Cli, Server, _clean_env, assert_error
from tests.test_serve import _env, serving

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name

SECRET = "bpc_ThisIsNotARealTokenButLooksLikeOne0123456789"


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], env=_clean_env(**env), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_service_options_go_before_or_after_the_command(cli: Cli, name: str) -> None:
    transport = cli.options  # ["--url", URL] or ["--redis-url", URL]
    cli.ok("process", "register", name, "--keys", "2")
    after = run("process", "list", *transport, "--json")
    before = run(*transport, "--json", "process", "list")
    mixed = run("--json", "process", "list", *transport)
    assert after.returncode == before.returncode == mixed.returncode == 0, before.stderr
    assert before.stdout == after.stdout == mixed.stdout
    assert name in before.stdout

    keys_before = run(*transport, "--json", "keys", name)
    assert keys_before.returncode == 0, keys_before.stderr
    assert keys_before.stdout == cli.ok("keys", name, "--json")
    # Given twice, the one after the command wins (nothing answers on port 9).
    overridden = run("--url", "http://127.0.0.1:9", "keys", name, *transport)
    assert overridden.returncode == 0, overridden.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--token", SECRET, "proces", "list"],  # a typo in the command
        [f"--token={SECRET}", "process", "lst"],
        ["process", "list", "--token", SECRET, "--bogus"],
        ["--url", "http://127.0.0.1:9", SECRET],  # the token pasted where the command goes
        ["keys", "x", "--limit", SECRET],
        ["acquire", "x", "--wait", SECRET, "--token", SECRET],
    ],
    ids=["bad-command", "bad-action", "unknown-option", "token-as-command", "as-limit", "wait"],
)
def test_a_token_is_never_echoed(argv: list[str]) -> None:
    result = run(*argv, COORDINATOR_TOKEN=SECRET)
    assert result.returncode == 2, result.stderr
    assert_error(result, 2)
    assert SECRET not in result.stderr + result.stdout
    assert SECRET[4:20] not in result.stderr


def test_a_token_without_the_prefix_is_not_echoed_either() -> None:
    secret = "my-own-secret-token-value"
    for argv in (["--token", secret, "proces", "list"], ["keys", "x", "--limit", secret]):
        result = run(*argv, "--token", secret)
        assert_error(result, 2)
        assert secret not in result.stderr


def test_service_options_are_refused_where_they_mean_nothing() -> None:
    for argv in (["--json", "serve"], ["--url", "http://x", "token", "create", "--role", "admin"]):
        assert_error(run(*argv), 2, argv[0], "not of")


def test_a_token_before_the_command_is_taken(server: Server, name: str) -> None:
    # Today's argparse read the token as the command and printed it in its refusal.
    server.register(name, keys=1)
    result = run("--token", SECRET, "--url", server.base, "keys", name, "--json")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr + result.stdout


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for sub_name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {sub_name}")


def test_every_option_and_command_has_help() -> None:
    missing = [
        f"{path}: {action.option_strings or action.dest}"
        for path, action in _actions(build_parser(), "coordinator")
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


def test_help_states_the_json_rule_and_where_options_go() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "one JSON document" in text
    assert "JSON Lines, one object per line" in text
    assert "go before or after the command" in text
    assert "completion bash" in text
    for command in ("serve", "process", "keys", "acquire", "run", "events", "completion"):
        assert f"\n    {command} " in result.stdout


def test_messages_name_the_flags_the_user_typed(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=1)
    cases = [
        # Checked before calling, with the API's own bounds: a bad option, exit 2.
        (["acquire", name, "--wait", "100"], 2, "--wait", "wait_seconds"),
        (["acquire", name, "--lease-seconds", "100000"], 2, "--lease-seconds", "lease_seconds"),
        (["run", name, "--wait", "61", "--", "true"], 2, "--wait", "wait_seconds"),
        # Refused by the service, named as the option that carried them: exit 1.
        (["acquire", name, "--machine", "m" * 300], 1, "--machine", "'machine'"),
        (["process", "register", f"{name}-b", "--keys", "9999999"], 1, "--keys", "key_set_size"),
        (["process", "register", "bad name", "--keys", "1"], 1, "the process name",
         "process_name"),
    ]  # fmt: skip
    for argv, status, flag, field in cases:
        result = cli(*argv)
        assert_error(result, status, flag)
        assert field not in result.stderr
    server.acquire(name)
    result = cli("acquire", name)
    assert_error(result, 1, "--wait")
    assert "wait_seconds" not in result.stderr


def test_a_missing_or_wrong_token_says_how_to_pass_one(tmp_path: Path, name: str) -> None:
    created = run("token", "create", "--role", "admin")
    assert created.returncode == 0, created.stderr
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(created.stdout.splitlines()[-1] + "\n")
    env = _env(
        tmp_path / "data", COORDINATOR_REDIS_URL="memory://",
        COORDINATOR_TOKENS_FILE=str(tokens_file),
    )  # fmt: skip
    with serving(env) as served:
        for extra in ([], ["--token", SECRET]):
            result = run("process", "list", "--url", served.base, *extra)
            assert_error(result, 1, "--token", "COORDINATOR_TOKEN")
            assert SECRET not in result.stderr


class _WebServer(ThreadingHTTPServer):
    answers_everything = False


class _WebPage(BaseHTTPRequestHandler):
    """Some other web server: HTML for `/`, an HTML 404 page for everything else."""

    server: _WebServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        found = self.path == "/" or self.server.answers_everything
        body = b"<!DOCTYPE html>\n<html>\n<body>\n<h1>Welcome</h1>\n</body>\n</html>\n"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("answers_everything", [False, True], ids=["html-404", "html-200"])
def test_a_url_that_is_not_a_coordinator_is_one_line(answers_everything: bool) -> None:
    web = _WebServer(("127.0.0.1", 0), _WebPage)
    web.answers_everything = answers_everything
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        for argv in (["process", "list"], ["keys", "x"], ["acquire", "x"]):
            result = run(*argv, "--url", base)
            assert_error(result, 1, base, "text/html", "coordinator's URL")
            assert "<" not in result.stderr
    finally:
        web.shutdown()
        web.server_close()
