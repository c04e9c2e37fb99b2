"""A stateful model test of batch runs: the store on fakeredis with a controlled clock against a
plain Python model of passes, attempts, quarantine, backoff, checkpoints and request ids.

One process, registered with options Hypothesis draws (mode, max_attempts, backoff,
max_failed_keys), is granted, renewed (saving checkpoints), released (`fatal` too), revoked,
retried (one key, a list, every quarantined key) and swept by new passes while the clock moves.
The model predicts every answer; after each step every key's state, attempts, retry time and
completion, the current pass (failed or not), and every finished pass must match it exactly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

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
    AllQuarantined,
    CoordinatorError,
    LeaseGone,
    NoFreeKey,
    PassComplete,
    PassFailed,
)
from coordinator.models import BatchKey, Pass, utc
from coordinator.store import Store

START_US = 1_800_000_000_000_000
TOKEN_EPOCH_US = 1_767_225_600_000_000
NAME = "run"
LEASE_S = 2
REQUEST_IDS = ("r1", "r2", "r3")

time_steps = st.one_of(
    st.just(0), st.just(1), st.integers(0, 5_000), st.integers(0, 3 * LEASE_S * 1_000_000)
)


@dataclass
class Lease:
    key: int
    token: int
    machine: str
    started_us: int
    expires_us: int
    request_id: str | None = None

    @property
    def external_id(self) -> str:
        return str(lease_id.compose(NAME, self.token))


@dataclass
class Model:
    size: int
    once: bool
    max_attempts: int | None
    backoff_ms: int
    score: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    # key -> None (in play), ("backoff", until_us) or ("quarantined", 0)
    parked: dict[int, tuple[str, int] | None] = field(default_factory=dict)
    checkpoint: dict[int, str | None] = field(default_factory=dict)
    held: dict[int, Lease] = field(default_factory=dict)
    number: int = 1
    started_us: int = START_US
    completed_us: int | None = None
    done: int = 0
    qdone: int = 0
    history: dict[int, Pass] = field(default_factory=dict)
    # request id of an ended lease -> (its token, when it is forgotten): grant.lua's `ended`
    ended: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The run policy: a `once` pass with more keys quarantined than this ends failed.
    max_failed: int | None = None
    failed: bool = False

    def __post_init__(self) -> None:
        for key in range(self.size):
            self.score[key] = key - self.size
            self.attempts[key] = 0
            self.parked[key] = None
            self.checkpoint[key] = None

    def quarantined(self) -> int:
        return sum(1 for p in self.parked.values() if p and p[0] == "quarantined")

    def complete_if_due(self, at_us: int) -> None:
        if self.completed_us is not None:
            return
        q = self.quarantined()
        if self.done + q - self.qdone < self.size or (not self.once and self.done == 0):
            return
        if self.fail_if_due(at_us):
            return
        self.history[self.number] = _pass(self.number, self.started_us, at_us, self.done, q)
        self.history.pop(self.number - 100, None)
        if self.once:
            self.completed_us = at_us
        else:
            self.number += 1
            self.started_us, self.done, self.qdone = at_us, 0, 0

    def fail_if_due(self, at_us: int) -> bool:
        """More keys quarantined than max_failed_keys ends a `once` pass as failed."""
        if not self.once or self.max_failed is None or self.completed_us is not None:
            return False
        if self.quarantined() <= self.max_failed:
            return False
        self.completed_us, self.failed = at_us, True
        return True

    def end_lease(self, lease: Lease, at_us: int) -> None:
        """A lease ended, however: its request id is remembered for the lease's length."""
        del self.held[lease.key]
        if lease.request_id is not None:
            self.ended[lease.request_id] = (lease.token, at_us + LEASE_S * 1_000_000)

    def end_unfinished(
        self, key: int, at_us: int, *, fatal: bool = False
    ) -> tuple[int, str, int | None]:
        """A lease ended without completion: count it, then park or free the key (a fatal
        end quarantines it whatever the budget)."""
        self.attempts[key] += 1
        attempts = self.attempts[key]
        if fatal or (self.max_attempts and attempts >= self.max_attempts):
            self.parked[key] = ("quarantined", 0)
            if self.score[key] > self.started_us:
                self.qdone += 1
            if not self.fail_if_due(at_us):
                self.complete_if_due(at_us)
            return attempts, "quarantined", None
        if self.backoff_ms:
            until = at_us + min(self.backoff_ms * 2 ** (attempts - 1), 3_600_000) * 1000
            self.parked[key] = ("backoff", until)
            return attempts, "backoff", until
        return attempts, "free", None

    def retry(self, key: int) -> str:
        """An administrator's retry (retry_key.lua): quarantine and backoff lifted, attempts
        reset, a completed pass reopened by a quarantined key; the key's state before."""
        parked = self.parked[key]
        was = parked[0] if parked else "other"
        if was == "quarantined":
            if self.score[key] > self.started_us:
                self.qdone -= 1
            self.completed_us, self.failed = None, False
        self.parked[key] = None
        self.attempts[key] = 0
        return was

    def state(self, key: int, now_us: int) -> tuple[str, int | None]:
        lease = self.held.get(key)
        if lease is not None and lease.expires_us > now_us:
            return "held", None
        parked = self.parked[key]
        if parked and parked[0] == "quarantined":
            return "quarantined", None
        if parked and parked[1] > now_us:
            return "backoff", parked[1]
        if self.once and self.score[key] > self.started_us and lease is None:
            return "done", None
        return "free", None


class RunsMachine(RuleBasedStateMachine):
    clock = None  # the fake_clock fixture, set by the test

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
        self.store = Store(self.client, prefix="rsm")
        self.now_us = START_US
        self.sync_clock()
        self.fence = 0
        self.issued: list[Lease] = []
        self.model: Model

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    def sync_clock(self) -> None:
        self.clock.now = self.now_us / 1_000_000

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def expect(self, coro, kind: type[CoordinatorError]) -> CoordinatorError:
        try:
            result = self.run(coro)
        except CoordinatorError as error:
            raised = error
        else:
            raise AssertionError(f"expected {kind.__name__}, got {result!r}")
        assert type(raised) is kind, f"expected {kind.__name__}, got {raised!r}"
        return raised

    @initialize(
        size=st.integers(1, 5),
        once=st.booleans(),
        max_attempts=st.sampled_from([None, 1, 2, 3]),
        backoff=st.sampled_from([0, 1, 2]),
        max_failed=st.sampled_from([None, 0, 1]),
    )
    def register(
        self, size: int, once: bool, max_attempts: int | None, backoff: int, max_failed: int | None
    ) -> None:
        max_failed = max_failed if once else None  # refused on rotate
        process = self.run(
            self.store.register(
                NAME,
                size,
                LEASE_S,
                mode="once" if once else "rotate",
                max_attempts=max_attempts,
                retry_backoff_seconds=backoff,
                max_failed_keys=max_failed,
            )
        )
        assert (process.mode, process.max_attempts) == ("once" if once else "rotate", max_attempts)
        assert process.max_failed_keys == max_failed
        self.model = Model(
            size, once, max_attempts, backoff * 1000, started_us=self.now_us, max_failed=max_failed
        )

    # -- grants ----------------------------------------------------------------------------

    @rule(machine=st.sampled_from(["m1", "m2"]), request_id=st.sampled_from([None, *REQUEST_IDS]))
    def grant(self, machine: str, request_id: str | None) -> None:
        m, now = self.model, self.now_us
        # Ended leases' request ids whose time is up are forgotten first (a few per grant;
        # with three ids, all of them).
        m.ended = {rid: ended for rid, ended in m.ended.items() if ended[1] > now}
        if request_id is not None:
            earlier = next((x for x in m.held.values() if x.request_id == request_id), None)
            if earlier is not None and earlier.expires_us > now:
                again = self.run(self.store.grant(NAME, machine, request_id=request_id))
                assert again.replayed
                assert (again.key, again.fencing_token) == (earlier.key, earlier.token)
                return
            # Its lease has ended (or expired, not yet reclaimed): its end, and nothing else.
            token = earlier.token if earlier is not None else m.ended.get(request_id, (0, 0))[0]
            if token:
                error = self.expect(self.store.grant(NAME, machine, request_id=request_id),
                                    LeaseGone)  # fmt: skip
                assert isinstance(error, LeaseGone)
                assert error.external_id == str(lease_id.compose(NAME, token))
                return
        # Expired leases end first, earliest expiry first (ties by key text), as grant.lua.
        expired = sorted(
            (x for x in m.held.values() if x.expires_us <= now),
            key=lambda x: (x.expires_us, str(x.key)),
        )
        for lease in expired:
            m.end_lease(lease, now)
            m.end_unfinished(lease.key, now)
        for key, parked in m.parked.items():
            if parked and parked[0] == "backoff" and parked[1] <= now:
                m.parked[key] = None
        if m.once and m.completed_us is not None:
            ended = PassFailed if m.failed else PassComplete
            self.expect(self.store.grant(NAME, machine, request_id=request_id), ended)
            return
        candidates = [
            k
            for k in range(m.size)
            if k not in m.held
            and m.parked[k] is None
            and not (m.once and m.score[k] > m.started_us)
        ]
        if not candidates:
            wakes = [x.expires_us for x in m.held.values()]
            wakes += [p[1] for p in m.parked.values() if p and p[0] == "backoff"]
            if wakes:
                error = self.expect(self.store.grant(NAME, machine), NoFreeKey)
                assert isinstance(error, NoFreeKey)
                assert error.retry_after_us == min(wakes) - now
            elif m.quarantined() and not m.once:
                self.expect(self.store.grant(NAME, machine), AllQuarantined)
            else:
                raise AssertionError("a once pass with nothing left must be complete")
            return
        key = min(candidates, key=lambda k: (m.score[k], str(k)))
        self.fence = max(self.fence + 1, now - TOKEN_EPOCH_US)
        lease = Lease(key, self.fence, machine, now, now + LEASE_S * 1_000_000, request_id)
        granted = self.run(self.store.grant(NAME, machine, request_id=request_id))
        assert granted == BatchKey(
            NAME,
            key,
            utc(m.score[key] if m.score[key] >= 0 else None),
            lease.external_id,
            machine,
            utc(lease.started_us),
            utc(lease.expires_us),
            lease.token,
            attempts=m.attempts[key],
            state="held",
            checkpoint=m.checkpoint[key],
            with_checkpoint=True,
        )
        m.held[key] = lease
        self.issued.append(lease)

    @rule(
        machine=st.sampled_from(["m1", "m2"]),
        outcome=st.sampled_from(["completed", "failed", "fatal"]),
    )
    def work_one_key(self, machine: str, outcome: str) -> None:
        """The common path in one step: take a key and end its lease at once."""
        before = len(self.issued)
        self.grant(machine, None)
        if len(self.issued) > before:
            self.finish(self.issued[-1], outcome)

    # -- renew, release, revoke ------------------------------------------------------------

    def live(self, lease: Lease) -> bool:
        return self.model.held.get(lease.key) is lease and lease.expires_us > self.now_us

    def ended_by_caller(self, lease: Lease) -> None:
        """A release of an expired lease ends it, counting the attempt (release.lua)."""
        m = self.model
        if m.held.get(lease.key) is lease:
            m.end_lease(lease, self.now_us)
            m.end_unfinished(lease.key, self.now_us)

    @precondition(lambda self: self.issued)
    @rule(
        data=st.data(), checkpoint=st.sampled_from([None, "", "row 7", "é" * 3]), save=st.booleans()
    )
    def renew(self, data: st.DataObject, checkpoint: str | None, save: bool) -> None:
        lease = data.draw(st.sampled_from(self.issued))
        call = (
            self.store.renew(lease.external_id, checkpoint=checkpoint)
            if save
            else self.store.renew(lease.external_id)
        )
        if not self.live(lease):
            self.expect(call, LeaseGone)  # renew changes nothing, even when expired
            return
        renewed = self.run(call)
        lease.expires_us = self.now_us + LEASE_S * 1_000_000
        if save:
            self.model.checkpoint[lease.key] = checkpoint
        assert (renewed.key, renewed.expires_at, renewed.attempts, renewed.state) == (
            lease.key,
            utc(lease.expires_us),
            self.model.attempts[lease.key],
            "held",
        )

    @precondition(lambda self: self.issued)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["completed", "failed", "interrupted", "fatal", "revoked"]),
    )
    def end(self, data: st.DataObject, outcome: str) -> None:
        self.finish(data.draw(st.sampled_from(self.issued)), outcome)

    def finish(self, lease: Lease, outcome: str) -> None:
        m, now = self.model, self.now_us
        call = (
            self.store.revoke(lease.external_id)
            if outcome == "revoked"
            else self.store.release(lease.external_id, outcome)
        )
        if not self.live(lease):
            self.expect(call, LeaseGone)
            self.ended_by_caller(lease)
            return
        released = self.run(call)
        m.end_lease(lease, now)
        if outcome == "completed":
            if m.score[lease.key] <= m.started_us:
                m.done += 1
            m.score[lease.key] = now
            m.attempts[lease.key] = 0
            m.checkpoint[lease.key] = None
            m.complete_if_due(now)
            expected = (0, "done" if m.once else "free", None)
        elif outcome == "interrupted":
            expected = (m.attempts[lease.key], "free", None)  # as it was, at its old place
        else:
            expected = m.end_unfinished(lease.key, now, fatal=outcome == "fatal")
        attempts, state, retry_at = expected
        assert (released.attempts, released.state, released.retry_at) == (
            attempts,
            state,
            utc(retry_at),
        )
        last = m.score[lease.key]
        assert released.last_completed_at == utc(last if last >= 0 else None)

    # -- administrators ----------------------------------------------------------------------

    @rule()
    def start_pass(self) -> None:
        m, now = self.model, self.now_us
        m.history[m.number] = _pass(
            m.number, m.started_us, m.completed_us, m.done, m.quarantined(), failed=m.failed
        )
        m.history.pop(m.number - 100, None)
        for key in range(m.size):
            m.parked[key] = None
            m.attempts[key] = 0
        m.number += 1
        m.started_us, m.completed_us, m.done, m.qdone = now, None, 0, 0
        m.failed = False
        process = self.run(self.store.start_pass(NAME))
        assert process.pass_ == _pass(m.number, now, None, 0, 0)

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        m = self.model
        key = data.draw(st.integers(0, m.size - 1))
        m.retry(key)
        retried = self.run(self.store.retry_key(NAME, key))
        assert retried.attempts == 0

    @rule(data=st.data(), quarantined=st.booleans())
    def retry_many(self, data: st.DataObject, quarantined: bool) -> None:
        """A bulk retry: every quarantined key, or a list (repeats retried once)."""
        m = self.model
        if quarantined:
            keys = [k for k in range(m.size) if m.parked[k] and m.parked[k][0] == "quarantined"]
            call = self.store.retry_quarantined(NAME)
        else:
            listed = data.draw(st.lists(st.integers(0, m.size - 1), min_size=1, max_size=6))
            keys = list(dict.fromkeys(listed))
            call = self.store.retry_keys(NAME, listed)
        was = [m.retry(key) for key in keys]
        done = self.run(call)
        assert (done.quarantined, done.backoff, done.other) == tuple(
            was.count(state) for state in ("quarantined", "backoff", "other")
        )

    # -- time ------------------------------------------------------------------------------

    @rule(step=time_steps)
    def advance(self, step: int) -> None:
        self.now_us += step
        self.sync_clock()

    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_a_deadline(self, data: st.DataObject, offset: int) -> None:
        """Land just before, on or after a lease's expiry or a backoff's end."""
        m = self.model
        deadlines = [x.expires_us for x in m.held.values()]
        deadlines += [p[1] for p in m.parked.values() if p and p[0] == "backoff"]
        if deadlines:
            target = data.draw(st.sampled_from(sorted(deadlines))) + offset
            if target > self.now_us:
                self.now_us = target
                self.sync_clock()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def keys_match_the_model(self) -> None:
        m, now = self.model, self.now_us
        expected = []
        for key in range(m.size):
            state, retry_at = m.state(key, now)
            lease = m.held.get(key) if state == "held" else None
            last = m.score[key]
            expected.append(
                BatchKey(
                    NAME,
                    key,
                    utc(last if last >= 0 else None),
                    lease.external_id if lease else None,
                    lease.machine if lease else None,
                    utc(lease.started_us) if lease else None,
                    utc(lease.expires_us) if lease else None,
                    lease.token if lease else None,
                    attempts=m.attempts[key],
                    state=state,
                    retry_at=utc(retry_at),
                )
            )
        assert self.run(self.store.batch_keys(NAME)) == expected
        for key in range(m.size):
            assert self.run(self.store.batch_key(NAME, key)).checkpoint == m.checkpoint[key]

    @invariant()
    def passes_match_the_model(self) -> None:
        m = self.model
        process = self.run(self.store.process(NAME))
        assert process.pass_ == _pass(
            m.number, m.started_us, m.completed_us, m.done, m.quarantined(), failed=m.failed
        )
        for number, finished in m.history.items():
            if number != m.number:
                assert self.run(self.store.pass_info(NAME, number)) == finished


def test_batch_runs_match_the_model(fake_clock):
    RunsMachine.clock = fake_clock
    run_state_machine_as_test(
        RunsMachine,
        settings=settings(
            # 60 under `make test`'s gate profile; ten times as many under `make fuzz`.
            max_examples=60 * settings.default.max_examples // 100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


def _pass(
    number: int, started_us: int, completed_us: int | None, done: int, q: int, *, failed=False
) -> Pass:
    started = utc(started_us)
    assert started is not None
    return Pass(number, started, utc(completed_us), done, q, failed)
