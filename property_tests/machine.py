"""The state machine: random steps on the real queue, checked against the model after each one.

Shared by the Hypothesis test (``test_state_machine.py``) and the regression tests replaying the
counterexamples it found (``test_found_regressions.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import conveyor
from harness import HANDLER_NAMES, Cancelled, RealQueue, Requeued

from model import Behaviour, Job, Model, Spec, Start, Status

KEYS: Final = ("k1", "k2", "k3")
"""A small pool, so that idempotency keys collide."""

MAX_DRAIN_STEPS: Final = 2000

progress = st.sampled_from([None, None, 0.25, 1.0])
behaviours = st.one_of(
    st.builds(Behaviour, st.just("return"), progress=progress),
    st.builds(Behaviour, st.just("raise"), progress=progress),
    st.builds(Behaviour, st.just("fail"), progress=progress),
    st.builds(
        Behaviour,
        st.just("retry"),
        retry_delay=st.integers(1, 6).map(float),
        progress=progress,
    ),
    # Half seconds, so that an attempt never ends in the very instant its timeout fires.
    st.builds(
        Behaviour,
        st.just("sleep"),
        duration=st.integers(0, 6).map(lambda n: n + 0.5),
        progress=progress,
    ),
    # Longer than any timeout: with one, the attempt times out; without, it runs long.
    st.builds(Behaviour, st.just("sleep"), duration=st.just(100.5), progress=progress),
)


@st.composite
def specs(draw: st.DrawFn, *, ready: bool = False, keyed: bool = True) -> Spec:
    return Spec(
        name=draw(st.sampled_from(HANDLER_NAMES)),
        tag=0,  # the machine numbers its enqueues
        priority=draw(st.integers(1, 10)),
        delay=0.0 if ready else float(draw(st.sampled_from([0, 0, 1, 2, 3, 5, 8]))),
        max_attempts=draw(st.one_of(st.none(), st.integers(1, 4))),
        timeout=draw(st.one_of(st.none(), st.integers(1, 5).map(float))),
        key=draw(st.one_of(st.none(), st.sampled_from(KEYS))) if keyed else None,
        script=tuple(draw(st.lists(behaviours, min_size=4, max_size=4))),
    )


def to_job_spec(spec: Spec) -> conveyor.JobSpec:
    return conveyor.JobSpec(
        spec.name,
        {"tag": spec.tag},
        priority=spec.priority,
        delay=spec.delay,
        max_attempts=spec.max_attempts,
        timeout=spec.timeout,
        idempotency_key=spec.key,
    )


def differences(model: Model, real: RealQueue) -> list[str]:
    """Where the real queue's jobs and handler starts differ from what the model allows."""
    found: list[str] = []
    if real.now() != model.now:
        found.append(f"virtual time: real {real.now()} != model {model.now}")
    jobs = real.jobs()
    if set(jobs) != set(model.jobs):
        found.append(f"job ids: real {sorted(jobs)} != model {sorted(model.jobs)}")
    for job_id, expected in model.jobs.items():
        job = jobs.get(job_id)
        if job is None:
            continue
        actual = _observed(job, expected.error)
        wanted = _expected(expected)
        if actual != wanted:
            found.append(f"job {job_id}: real {actual} != model {wanted}")
    real_starts = [event for event in real.events if isinstance(event, Start)]
    if _by_instant(real_starts, model) != _by_instant(model.starts, model):
        found.append(f"starts: real {real_starts} != model {model.starts}")
    return found


def _observed(job: conveyor.Job, error_fragment: str | None) -> dict[str, object]:
    pending = job.status is conveyor.JobStatus.PENDING
    return {
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": job.run_at - 1_800_000_000.0 if pending else None,
        "result": job.result,
        "error": (
            job.error
            if job.error is None or error_fragment is None or error_fragment not in job.error
            else error_fragment
        ),
        "progress": job.progress,
    }


def _expected(job: Job) -> dict[str, object]:
    return {
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": job.run_at if job.status is Status.PENDING else None,
        "result": job.result,
        "error": job.error,
        "progress": job.progress,
    }


def _by_instant(starts: Iterable[Start], model: Model) -> dict[tuple[int, float], list[Start]]:
    """Starts grouped by (queue generation, instant): in order where one worker runs them (the
    order is the claim order then), as a sorted list where several workers start concurrently."""
    groups: dict[tuple[int, float], list[Start]] = defaultdict(list)
    for start in starts:
        groups[(start.generation, start.time)].append(start)
    return {
        key: group
        if key[0] in model.single_worker_generations
        else sorted(group, key=lambda s: (s.job_id, s.attempt))
        for key, group in groups.items()
    }


class QueueMachine(RuleBasedStateMachine):
    """Enqueues, cancels, requeues, time passing, crashes, and racing cancels, on the real queue.

    After every step the real jobs (status, attempts, run_at, result, error, progress) and the
    handler starts (at their exact virtual times; in exact order where one worker runs) must be
    what the model allows. At the end, time runs until every job is finished and invariants
    1-7 of DESIGN §4 are checked on what the real queue did.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-machine-"))
        self.scripts: dict[int, tuple[Behaviour, ...]] = {}
        self.real = RealQueue(self.directory / "jobs.db", self.scripts)
        self.model = Model(workers=1)
        self.tags = 0
        self.answers: list[tuple[str | None, int]] = []  # (key, id) of every acknowledged enqueue
        self.zombies: list[tuple[int, int]] = []  # attempts a crash interrupted
        self.verified = False

    # --- steps -------------------------------------------------------------------------------
    @initialize(workers=st.integers(1, 4))
    def open_queue(self, workers: int) -> None:
        self.model = Model(workers)
        self.real.start(workers)
        self.check()

    @rule(spec=specs())
    def enqueue(self, spec: Spec) -> None:
        self.enqueue_many([spec])

    @rule(batch=st.lists(specs(), min_size=1, max_size=4))
    def enqueue_many(self, batch: list[Spec]) -> None:
        batch = [self._tagged(spec) for spec in batch]
        jobs = self.real.call(lambda queue: queue.enqueue_many([to_job_spec(s) for s in batch]))
        ids = self.model.enqueue(batch)
        assert [job.id for job in jobs] == ids
        self.answers += [(spec.key, job.id) for spec, job in zip(batch, jobs, strict=True)]
        self.check()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.cancel_job(data.draw(self._job_ids(), label="job_id"))

    def cancel_job(self, job_id: int) -> None:
        assert self.real.cancel(job_id) is self.model.cancel(job_id)
        self.check()

    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        self.requeue_job(data.draw(self._job_ids(), label="job_id"))

    def requeue_job(self, job_id: int) -> None:
        assert self.real.requeue(job_id) is self.model.requeue(job_id)
        self.check()

    @rule(seconds=st.integers(1, 24).map(lambda n: n / 2))
    def advance_time(self, seconds: float) -> None:
        self._advance_to(self.model.now + seconds)

    @rule(workers=st.integers(1, 4))
    def crash_and_reopen(self, workers: int) -> None:
        self.zombies += self.model.crash()
        self.real.crash_and_reopen(workers)
        self.model.reopen(workers)
        self.check()

    @rule(spec=specs(ready=True, keyed=False), checkpoints=st.integers(0, 4))
    def cancel_racing_claim(self, spec: Spec, checkpoints: int) -> None:
        """A cancel sent while the claim that the enqueue set off may be in flight."""
        spec = self._tagged(spec)
        job_id, cancelled = self.real.enqueue_then_cancel(to_job_spec(spec), checkpoints)
        self.answers.append((None, job_id))
        candidates: list[tuple[str, Model, bool]] = []
        # The cancel came first: the job never starts.
        first = self.model.copy()
        (expected_id,) = first.enqueue([spec], fill=False)
        candidates.append(("cancel before claim", first, first.cancel(expected_id)))
        # The claim came first, and the cancel found the job running.
        between = self.model.copy()
        between.enqueue([spec], fill=False)
        if between.fill_slots(cancel_on_claim=expected_id):
            candidates.append(("cancel while running", between, True))
        # The claim and the outcome came first.
        last = self.model.copy()
        last.enqueue([spec])
        candidates.append(("cancel after outcome", last, last.cancel(expected_id)))
        assert job_id == expected_id
        rejected = []
        for name, candidate, answer in candidates:
            found = differences(candidate, self.real)
            if answer is not cancelled:
                found.append(f"cancel returned {cancelled}, not {answer}")
            if not found:
                event(f"racing cancel: {name}")
                self.model = candidate
                self.check()
                return
            rejected.append(f"{name}: {found}")
        raise AssertionError(
            "no order of the cancel and the claim explains this:\n" + "\n".join(rejected)
        )

    @precondition(lambda self: bool(self.model.running()) and not self.model.ready())
    @rule(data=st.data(), checkpoints=st.integers(0, 4), workers=st.integers(1, 4))
    def cancel_then_crash(self, data: st.DataObject, checkpoints: int, workers: int) -> None:
        """A crash right after a cancel of a running job: its end may not be committed."""
        running = sorted(job.id for job in self.model.running())
        job_id = data.draw(st.sampled_from(running), label="job_id")
        cancelled = self.real.cancel_then_crash(job_id, checkpoints, workers)
        assert cancelled
        # No job waits for the slot the cancel frees, so nothing else moves before the crash.
        ended = self.model.copy()
        ended.cancel(job_id)
        zombies = ended.crash()
        ended.reopen(workers)
        interrupted = self.model.copy()
        interrupted_zombies = interrupted.crash()
        interrupted.reopen(workers, cancel_requested=frozenset({job_id}))
        rejected = []
        for name, candidate, lost in [
            ("handler's end committed", ended, zombies),
            ("crash first", interrupted, interrupted_zombies),
        ]:
            found = differences(candidate, self.real)
            if not found:
                event(f"cancel then crash: {name}")
                self.model = candidate
                self.zombies += lost
                self.check()
                return
            rejected.append(f"{name}: {found}")
        raise AssertionError(
            "no order of the cancel and the crash explains this:\n" + "\n".join(rejected)
        )

    @precondition(lambda self: bool(self.zombies))
    @rule(
        data=st.data(),
        kind=st.sampled_from(
            [
                conveyor.Event.COMPLETED,
                conveyor.Event.RETRIED,
                conveyor.Event.FAILED,
                conveyor.Event.CANCELLED,
                conveyor.Event.INTERRUPTED,
            ]
        ),
    )
    def deliver_stale_outcome(self, data: st.DataObject, kind: conveyor.Event) -> None:
        """The outcome of an attempt a crash interrupted arrives: it must change nothing."""
        job_id, attempt = data.draw(st.sampled_from(self.zombies), label="zombie")
        self.deliver_stale(job_id, attempt, kind)

    def deliver_stale(self, job_id: int, attempt: int, kind: conveyor.Event) -> None:
        job = self.model.jobs[job_id]
        if job.status is Status.RUNNING and job.attempts == attempt:
            # Requeued and running the same attempt number again: not stale by its number.
            return
        self.real.deliver_stale_outcome(job_id, attempt, kind)
        self.check()

    # --- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        found = differences(self.model, self.real)
        assert not found, "\n".join(found)
        self.verified = True

    def teardown(self) -> None:
        try:
            if self.verified and self.real.failure is None:
                self._drain()
                self._check_invariants()
        finally:
            self.real.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _drain(self) -> None:
        """Advance time until every job is finished (invariant 1, no loss)."""
        for _ in range(MAX_DRAIN_STEPS):
            if self.model.all_terminal():
                break
            following = self.model.next_event()
            assert following is not None, "unfinished jobs that nothing will ever move"
            self._advance_to(following)
        assert self.model.all_terminal()

    def _advance_to(self, target: float) -> None:
        """Jump to every deadline up to ``target`` in turn, checking after each."""
        self.verified = False
        while (deadline := self.real.next_deadline()) <= target:
            assert deadline > self.real.now(), f"a deadline that does not move: {deadline}"
            self.real.jump_to(deadline)
            self.model.advance_to(deadline)
            self.check()
        self.real.jump_to(target)
        self.model.advance_to(target)
        self.check()

    def _check_invariants(self) -> None:
        jobs = self.real.jobs()
        # 1. No loss: every acknowledged job exists and is finished.
        for _, job_id in self.answers:
            assert jobs[job_id].status.is_terminal, jobs[job_id]
        # 7. Idempotency: one job per key, whatever the number of enqueues with it.
        by_key: dict[str, set[int]] = defaultdict(set)
        for key, job_id in self.answers:
            if key is not None:
                by_key[key].add(job_id)
        for key, ids in by_key.items():
            assert len(ids) == 1, f"key {key} answered by jobs {ids}"
            assert [job.id for job in jobs.values() if job.idempotency_key == key] == list(ids)
        for job_id, job in jobs.items():
            self._check_job_history(job_id, job)

    def _check_job_history(self, job_id: int, job: conveyor.Job) -> None:
        """Invariants 2, 3 and 6 over one job's starts, epoch by epoch (a requeue starts one)."""
        epochs: list[list[Start | Cancelled]] = [[]]
        for logged in self.real.events:
            if isinstance(logged, Requeued) and logged.job_id == job_id:
                epochs.append([])
            elif isinstance(logged, Start | Cancelled) and logged.job_id == job_id:
                epochs[-1].append(logged)
        for epoch in epochs:
            attempts = [event.attempt for event in epoch if isinstance(event, Start)]
            # 2 and 6: each attempt runs once (a crash counts the attempt it interrupted), in
            # order, at most max_attempts of them.
            assert attempts == list(range(1, len(attempts) + 1)), (job_id, attempts)
            assert len(attempts) <= job.max_attempts, (job_id, attempts)
            # 3: after a successful cancel, only the attempt already claimed may start (its
            # handler is cancelled at its first checkpoint); nothing after it.
            cancels = [i for i, event in enumerate(epoch) if isinstance(event, Cancelled)]
            assert len(cancels) <= 1, (job_id, epoch)
            if cancels:
                cancel = epoch[cancels[0]]
                assert isinstance(cancel, Cancelled)
                late = [e for e in epoch[cancels[0] :] if isinstance(e, Start)]
                if cancel.while_running:
                    assert all(start.attempt == cancel.attempts for start in late), epoch
                else:
                    assert not late, epoch
        final = [event for event in epochs[-1] if isinstance(event, Start)]
        if job.status is conveyor.JobStatus.COMPLETED:
            # 2: a completed job never runs again.
            assert final
            assert job.result == {"tag": job.payload["tag"], "attempt": len(final)}

    # --- helpers -----------------------------------------------------------------------------
    def _tagged(self, spec: Spec) -> Spec:
        self.tags += 1
        self.scripts[self.tags] = spec.script
        return Spec(
            name=spec.name,
            tag=self.tags,
            priority=spec.priority,
            delay=spec.delay,
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            key=spec.key,
            script=spec.script,
        )

    def _job_ids(self) -> st.SearchStrategy[int]:
        # Known ids mostly, and now and then one no job has.
        return st.integers(1, self.model.next_id)
