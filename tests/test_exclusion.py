"""Mutual exclusion under load: two replicas, 3 processes x 16 workers, 20 seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.embedded import EmbeddedValkey
from tests.soak import Lease, Report, check, run, two_replicas

pytestmark = pytest.mark.anyio


@pytest.mark.timeout(120)
async def test_no_key_ever_has_two_holders(valkey: EmbeddedValkey, tmp_path: Path) -> None:
    with two_replicas(valkey.url, tmp_path) as bases:
        report = await run(bases, seconds=20, seed=7)
    print(report.summary())
    assert report.leases > 200
    assert set(report.by_behaviour) == {"completed", "failed", "abandon", "renew"}
    assert report.overlaps == []
    assert report.token_regressions == []
    assert report.server_errors == 0
    assert report.held_at_end == []
    assert report.statuses[409] > 0  # keys ran out at times: the waiting path was exercised


def test_the_checker_finds_an_overlap_and_a_token_regression() -> None:
    report = Report()
    check(
        [
            Lease("p", 0, 10, granted=100.0, expires=105.0, ended=103.0),
            Lease("p", 0, 11, granted=102.5, expires=110.0, ended=104.0),  # before 103
            Lease("p", 0, 9, granted=106.0, expires=110.0),  # token went down
            Lease("p", 1, 12, granted=100.0, expires=101.0),  # abandoned: ends at expiry
            Lease("p", 1, 13, granted=101.0, expires=102.0),  # right at expiry: fine
        ],
        report,
    )
    assert len(report.overlaps) == 1
    assert report.overlaps[0].startswith("p/0: token 11")
    assert report.token_regressions == ["p/0: token 9 after 11"]
