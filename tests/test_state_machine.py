"""A stateful model test: the store on fakeredis with a controlled clock against a Python model.

The model keeps, per process name, each key's staleness score (its last completion time in
µs, or ``key - size`` if never completed), the live leases, and the last fencing token (which
outlives deletion). It predicts which key and which token every grant returns (a token is
max(last token + 1, Redis TIME in µs since 2026-01-01), and the clock is the test's) and the
outcome of every renew and release, and after each step the store's key table must match it
exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import fakeredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordinator import lease_id
from coordinator.errors import (
    CoordinatorError,
    LeaseGone,
    NoFreeKey,
    ProcessExists,
    UnknownLease,
    UnknownProcess,
)
from coordinator.models import BatchKey, Process, utc
from coordinator.store import Store

START_US = 1_800_000_000_000_000
TOKEN_EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: tokens count µs from here
NAMES = ("alpha", "beta")
LEASES = (1, 2, 5)
MAX_LEASE_US = max(LEASES) * 1_000_000

# Time steps in µs: zero (ties), one µs, a little, and up to twice the longest lease.
time_steps = st.one_of(
    st.just(0),
    st.just(1),
    st.integers(min_value=0, max_value=5_000),
    st.integers(min_value=0, max_value=2 * MAX_LEASE_US),
)
optional_lease = st.one_of(st.none(), st.sampled_from(LEASES))


@dataclass
class Lease:
    name: str
    key: int
    token: int
    machine: str
    started_us: int
    expires_us: int
    lease_ms: int

    @property
    def external_id(self) -> str:
        return str(lease_id.compose(self.name, self.token))


@dataclass
class Proc:
    size: int
    lease_ms: int
    score: dict[int, int] = field(default_factory=dict)
    held: dict[int, Lease] = field(default_factory=dict)
    # Leases ended without completion since the key's last completion (batch runs' attempts).
    attempts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.score = {key: key - self.size for key in range(self.size)}
        self.attempts = dict.fromkeys(range(self.size), 0)

    def live(self, now_us: int) -> dict[int, Lease]:
        """Leases that have not expired: a lease ends once Redis time reaches expires_us."""
        return {k: lease for k, lease in self.held.items() if lease.expires_us > now_us}

    def expire(self, now_us: int) -> None:
        """A grant ends every expired lease, each an attempt (the key keeps its place)."""
        for key in set(self.held) - set(self.live(now_us)):
            self.attempts[key] += 1
        self.held = self.live(now_us)


class CoordinatorMachine(RuleBasedStateMachine):
    clock = None  # the fake_clock fixture, set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
        self.store = Store(self.client, prefix="sm")
        self.now_us = START_US
        self.sync_clock()
        self.procs: dict[str, Proc] = {}
        self.fence: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.ever_registered: set[str] = set()
        self.issued: list[Lease] = []

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    # -- helpers ---------------------------------------------------------------------------

    def sync_clock(self) -> None:
        self.clock.now = self.now_us / 1_000_000

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def attempt(self, coro):
        """(result, None) or (None, the coordinator error it raised)."""
        try:
            return self.run(coro), None
        except CoordinatorError as error:
            return None, error

    def expect_error(self, coro, kind: type[CoordinatorError]) -> CoordinatorError:
        result, error = self.attempt(coro)
        assert error is not None, f"expected {kind.__name__}, got {result!r}"
        assert type(error) is kind, f"expected {kind.__name__}, got {error!r}"
        return error

    def lease_is_live(self, lease: Lease) -> bool:
        proc = self.procs.get(lease.name)
        return (
            proc is not None
            and proc.held.get(lease.key) is lease
            and lease.expires_us > self.now_us
        )

    # -- rules -----------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(NAMES),
        size=st.integers(min_value=1, max_value=6),
        lease=st.sampled_from(LEASES),
    )
    def register(self, name: str, size: int, lease: int) -> None:
        if name in self.procs:
            self.expect_error(self.store.register(name, size, lease), ProcessExists)
            return
        assert self.run(self.store.register(name, size, lease)) == Process(name, size, lease)
        self.procs[name] = Proc(size, lease * 1000)
        self.ever_registered.add(name)

    @precondition(lambda self: any(n not in self.procs for n in self.ever_registered))
    @rule(data=st.data(), size=st.integers(min_value=1, max_value=6))
    def reregister(self, data: st.DataObject, size: int) -> None:
        deleted = sorted(n for n in self.ever_registered if n not in self.procs)
        name = data.draw(st.sampled_from(deleted))
        self.register(name, size, 1)

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None:
            self.expect_error(self.store.unregister(name), UnknownProcess)
            return
        removed = self.run(self.store.unregister(name))
        assert removed == Process(name, proc.size, proc.lease_ms // 1000)
        del self.procs[name]

    @rule(
        name=st.sampled_from(NAMES),
        machine=st.sampled_from(["m1", "m2", "a|b"]),
        lease=optional_lease,
    )
    def request(self, name: str, machine: str, lease: int | None) -> None:
        proc = self.procs.get(name)
        if proc is None:
            self.expect_error(self.store.grant(name, machine, lease), UnknownProcess)
            return
        proc.expire(self.now_us)
        free = [k for k in range(proc.size) if k not in proc.held]
        if not free:
            error = self.expect_error(self.store.grant(name, machine, lease), NoFreeKey)
            earliest = min(held.expires_us for held in proc.held.values())
            assert error.retry_after_us == earliest - self.now_us
            assert 1 <= error.retry_after_seconds <= MAX_LEASE_US // 1_000_000
            return
        # Stalest first; equal scores (completions at one instant) tie by member string.
        key = min(free, key=lambda k: (proc.score[k], str(k)))
        lease_ms = proc.lease_ms if lease is None else lease * 1000
        # fakeredis answers TIME with round(time.time() * 1e6), time.time() being the clock.
        redis_now_us = round(self.clock.now * 1_000_000)
        assert redis_now_us == self.now_us
        token = max(self.fence[name] + 1, redis_now_us - TOKEN_EPOCH_US)
        self.fence[name] = token
        expected = Lease(
            name=name,
            key=key,
            token=self.fence[name],
            machine=machine,
            started_us=self.now_us,
            expires_us=self.now_us + lease_ms * 1000,
            lease_ms=lease_ms,
        )
        granted = self.run(self.store.grant(name, machine, lease))
        assert granted == BatchKey(
            process_name=name,
            key=key,
            last_completed_at=_completed(proc.score[key]),
            external_id=expected.external_id,
            machine=machine,
            started_at=utc(expected.started_us),
            expires_at=utc(expected.expires_us),
            fencing_token=expected.token,
            attempts=proc.attempts[key],
            state="held",
        )
        proc.held[key] = expected
        self.issued.append(expected)

    @initialize(
        sizes=st.tuples(*(st.integers(min_value=1, max_value=6) for _ in NAMES)),
        leases=st.tuples(*(st.sampled_from(LEASES) for _ in NAMES)),
    )
    def start_with_registered_processes(self, sizes: tuple[int, ...], leases: tuple[int, ...]):
        for name, size, lease in zip(NAMES, sizes, leases, strict=True):
            self.register(name, size, lease)

    def live_leases(self) -> list[Lease]:
        return [lease for lease in self.issued if self.lease_is_live(lease)]

    @precondition(lambda self: self.issued)
    @rule(data=st.data(), lease=optional_lease)
    def renew_any(self, data: st.DataObject, lease: int | None) -> None:
        self.renew(data.draw(st.sampled_from(self.issued)), lease)

    @precondition(lambda self: self.live_leases())
    @rule(data=st.data(), lease=optional_lease)
    def renew_live(self, data: st.DataObject, lease: int | None) -> None:
        self.renew(data.draw(st.sampled_from(self.live_leases())), lease)

    @precondition(lambda self: self.issued)
    @rule(data=st.data(), outcome=st.sampled_from(["completed", "failed"]))
    def release_any(self, data: st.DataObject, outcome: str) -> None:
        self.release(data.draw(st.sampled_from(self.issued)), outcome)

    @precondition(lambda self: self.live_leases())
    @rule(data=st.data(), outcome=st.sampled_from(["completed", "failed"]))
    def release_live(self, data: st.DataObject, outcome: str) -> None:
        self.release(data.draw(st.sampled_from(self.live_leases())), outcome)

    def renew(self, held: Lease, lease: int | None) -> None:
        if not self.lease_is_live(held):
            # A renewal changes nothing, even of an expired lease: grants end those.
            self.expect_error(self.store.renew(held.external_id, lease), LeaseGone)
            return
        lease_ms = held.lease_ms if lease is None else lease * 1000
        renewed = self.run(self.store.renew(held.external_id, lease))
        held.expires_us = self.now_us + lease_ms * 1000
        held.lease_ms = lease_ms
        proc = self.procs[held.name]
        assert renewed == BatchKey(
            process_name=held.name,
            key=held.key,
            last_completed_at=_completed(proc.score[held.key]),
            external_id=held.external_id,
            machine=held.machine,
            started_at=utc(held.started_us),
            expires_at=utc(held.expires_us),
            fencing_token=held.token,
            attempts=proc.attempts[held.key],
            state="held",
        )

    def release(self, held: Lease, outcome: str) -> None:
        if not self.lease_is_live(held):
            self.expect_error(self.store.release(held.external_id, outcome), LeaseGone)
            self.end_if_expired(held)
            return
        released = self.run(self.store.release(held.external_id, outcome))
        proc = self.procs[held.name]
        if outcome == "completed":
            proc.score[held.key] = self.now_us
            proc.attempts[held.key] = 0
        else:
            proc.attempts[held.key] += 1
        del proc.held[held.key]
        assert released == BatchKey(
            process_name=held.name,
            key=held.key,
            last_completed_at=_completed(proc.score[held.key]),
            external_id=held.external_id,
            machine=held.machine,
            started_at=utc(held.started_us),
            expires_at=None,
            fencing_token=held.token,
            attempts=proc.attempts[held.key],
            state="free",
        )

    @rule(name=st.sampled_from(NAMES), ahead=st.integers(min_value=1, max_value=3))
    def use_never_granted_id(self, name: str, ahead: int) -> None:
        never = str(lease_id.compose(name, self.fence[name] + ahead))
        self.expect_error(self.store.renew(never), UnknownLease)
        self.expect_error(self.store.release(never), UnknownLease)
        for junk in (str(lease_id.compose(name, 0)), str(uuid.UUID(int=12345, version=4))):
            self.expect_error(self.store.release(junk), UnknownLease)

    @rule(step=time_steps)
    def advance(self, step: int) -> None:
        self.now_us += step
        self.sync_clock()

    @precondition(lambda self: any(p.held for p in self.procs.values()))
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_an_expiry(self, data: st.DataObject, offset: int) -> None:
        """Land just before, on, or just after a live lease's expiry."""
        deadlines = sorted(
            lease.expires_us for proc in self.procs.values() for lease in proc.held.values()
        )
        target = data.draw(st.sampled_from(deadlines)) + offset
        if target > self.now_us:
            self.now_us = target
            self.sync_clock()

    def end_if_expired(self, lease: Lease) -> None:
        """A release of an expired lease ends it, an attempt (the key keeps its place)."""
        proc = self.procs.get(lease.name)
        if proc is not None and proc.held.get(lease.key) is lease:
            proc.held.pop(lease.key)
            proc.attempts[lease.key] += 1

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def key_tables_match_the_model(self) -> None:
        for name in NAMES:
            proc = self.procs.get(name)
            if proc is None:
                self.expect_error(self.store.batch_keys(name), UnknownProcess)
                continue
            live = proc.live(self.now_us)
            expected = []
            for key in range(proc.size):
                lease = live.get(key)
                last = _completed(proc.score[key])
                if lease is None:
                    expected.append(BatchKey(name, key, last, attempts=proc.attempts[key]))
                else:
                    expected.append(
                        BatchKey(
                            name,
                            key,
                            last,
                            lease.external_id,
                            lease.machine,
                            utc(lease.started_us),
                            utc(lease.expires_us),
                            lease.token,
                            attempts=proc.attempts[key],
                            state="held",
                        )
                    )
            actual = self.run(self.store.batch_keys(name))
            assert actual == expected
            tokens = [k.fencing_token for k in actual if k.held]
            assert len(tokens) == len(set(tokens))

    @invariant()
    def no_key_has_two_holders(self) -> None:
        for name, proc in self.procs.items():
            keys = self.store.keys.process(name)
            token_to_key = self.run(self.client.hgetall(keys.tokens))
            held = self.run(self.client.zrange(keys.held, 0, -1))
            free = self.run(self.client.zrange(keys.free, 0, -1))
            # Each live token names one key, no key twice, and a key is never held and free.
            assert len(set(token_to_key.values())) == len(token_to_key)
            assert set(token_to_key.values()) == set(held)
            assert not set(held) & set(free)
            # Every lease record the server keeps is one the model granted on that key.
            issued = {(lease.token, lease.key) for lease in proc.held.values()}
            assert {(int(t), int(k)) for t, k in token_to_key.items()} <= issued

    @invariant()
    def fences_hold_the_last_token(self) -> None:
        """Each name's fence is its last token, through deletion and re-registration."""
        for name in NAMES:
            fence = self.run(self.client.get(self.store.keys.process(name).fence))
            assert fence == (str(self.fence[name]) if self.fence[name] else None)

    @invariant()
    def process_list_matches(self) -> None:
        expected = [
            Process(name, proc.size, proc.lease_ms // 1000)
            for name, proc in sorted(self.procs.items())
        ]
        assert self.run(self.store.processes()) == expected


def _completed(score: int) -> datetime | None:
    return utc(score) if score >= 0 else None


def test_store_matches_the_model(fake_clock):
    CoordinatorMachine.clock = fake_clock
    run_state_machine_as_test(
        CoordinatorMachine,
        settings=settings(
            # 60 under `make test`'s gate profile; ten times as many under `make fuzz`.
            max_examples=60 * settings.default.max_examples // 100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
