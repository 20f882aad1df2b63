"""The state machine: random steps on the real queue, checked against the model after each one.

Shared by the Hypothesis test (``test_state_machine.py``) and the regression tests replaying the
counterexamples it found (``test_found_regressions.py``). :class:`QueueMachine` keeps the queue
in a SQLite file; :class:`PostgresQueueMachine` runs the same steps and checks on PostgreSQL,
each example in a fresh schema, the model told that owners are judged by their lease alone
there (see ``model.py``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import ClassVar, Final, Literal

import attrs
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import conveyor
from harness import EPOCH, HANDLER_NAMES, Cancelled, Claimed, Ended, Paused, RealQueue, Requeued
from postgres_schemas import POSTGRES_URL, drop_schema, fresh_schema, schema_url

from model import (
    SCHEDULE_PRIORITY,
    SECOND_RESULT,
    ZONE_OFFSETS,
    Behaviour,
    Cadence,
    HandlerLimits,
    Job,
    Model,
    Schedule,
    ScheduleSpec,
    Spec,
    Start,
    Status,
)

KEYS: Final = ("k1", "k2", "k3")
"""A small pool, so that idempotency keys collide."""

SCHEDULE_KEYS: Final = ("s1", "s2")

CONCURRENCY_KEYS: Final = ("a1", "a2")

MAX_DRAIN_STEPS: Final = 2000

MAX_STEPS: Final = 6
"""The most steps a workflow has."""

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


steps_behaviours = st.one_of(
    st.just(Behaviour("return")),
    st.builds(Behaviour, st.just("sleep"), duration=st.integers(0, 3).map(lambda n: n + 0.5)),
    behaviours,
)
"""What a workflow's step does: more often than other jobs, it completes (so that the steps
after it run)."""


@st.composite
def specs(
    draw: st.DrawFn,
    *,
    ready: bool = False,
    keyed: bool = True,
    scripts: st.SearchStrategy[Behaviour] = behaviours,
) -> Spec:
    return Spec(
        name=draw(st.sampled_from(HANDLER_NAMES)),
        tag=0,  # the machine numbers its enqueues
        priority=draw(st.integers(1, 10)),
        delay=0.0 if ready else float(draw(st.sampled_from([0, 0, 1, 2, 3, 5, 8]))),
        max_attempts=draw(st.one_of(st.none(), st.integers(1, 4))),
        timeout=draw(st.one_of(st.none(), st.integers(1, 5).map(float))),
        key=draw(st.one_of(st.none(), st.sampled_from(KEYS))) if keyed else None,
        script=tuple(draw(st.lists(scripts, min_size=4, max_size=4))),
        concurrency_key=draw(st.sampled_from([None, *CONCURRENCY_KEYS, CONCURRENCY_KEYS[0]])),
    )


handler_limits = st.one_of(
    st.just(HandlerLimits()),
    st.builds(
        HandlerLimits,
        concurrency=st.one_of(st.none(), st.integers(1, 2)),
        key_concurrency=st.one_of(st.none(), st.just(1)),
        # Windows that end on whole and half seconds, where attempts end too.
        rate=st.one_of(st.none(), st.sampled_from([(1, 3.0), (2, 5.0), (3, 2.5)])),
        retry_priority_step=st.sampled_from([0, 1, 4]),
    ),
)
limits_by_handler = st.fixed_dictionaries(dict.fromkeys(HANDLER_NAMES, handler_limits))


cadences = st.one_of(
    st.builds(Cadence, every=st.sampled_from([2.5, 4.0, 7.5])),
    st.builds(
        Cadence,
        cron=st.sampled_from(["* * * * *", "*/2 * * * *", "1-59/3 * * * *"]),
        timezone=st.sampled_from(sorted(ZONE_OFFSETS)),
    ),
)
schedule_specs = st.builds(
    ScheduleSpec,
    key=st.sampled_from(SCHEDULE_KEYS),
    name=st.sampled_from(HANDLER_NAMES),
    tag=st.just(0),  # the machine numbers its schedules' scripts with its enqueues
    cadence=cadences,
    catch_up=st.sampled_from(["latest", "all", "none"]),
    script=st.lists(behaviours, min_size=4, max_size=4).map(tuple),
)


def event(text: str) -> None:
    """Count ``text`` in Hypothesis's statistics (when a replayed example runs, do nothing)."""
    if currently_in_test_context():
        hypothesis_event(text)


def to_job_spec(spec: Spec) -> conveyor.JobSpec:
    return conveyor.JobSpec(
        spec.name,
        {"tag": spec.tag},
        priority=spec.priority,
        delay=spec.delay,
        max_attempts=spec.max_attempts,
        timeout=spec.timeout,
        idempotency_key=spec.key,
        after=spec.after,
        concurrency_key=spec.concurrency_key,
    )


def to_workflow(steps: list[Spec]) -> conveyor.Workflow:
    flow = conveyor.Workflow()
    added: list[conveyor.Step] = []
    for spec in steps:
        after: list[conveyor.Step | int] = [added[index] for index in spec.after_steps]
        added.append(
            flow.add(
                spec.name,
                {"tag": spec.tag},
                after=[*after, *spec.after],
                priority=spec.priority,
                delay=spec.delay,
                max_attempts=spec.max_attempts,
                timeout=spec.timeout,
                idempotency_key=spec.key,
                concurrency_key=spec.concurrency_key,
            )
        )
    return flow


def differences(
    model: Model, real: RealQueue, jobs: dict[int, conveyor.Job] | None = None
) -> list[str]:
    """Where the real queue's jobs (``jobs``, if read already), schedules and handler starts
    differ from what the model allows."""
    found: list[str] = []
    if real.now() != model.now:
        found.append(f"virtual time: real {real.now()} != model {model.now}")
    if jobs is None:
        jobs = real.jobs()
    if set(jobs) != set(model.jobs):
        found.append(f"job ids: real {sorted(jobs)} != model {sorted(model.jobs)}")
    for job_id, expected in model.jobs.items():
        job = jobs.get(job_id)
        if job is None:
            continue
        fragments = [] if expected.error is None else [expected.error]
        actual = _observed(job, fragments + [error for _, error in expected.causes])
        wanted = _expected(expected)
        if actual != wanted:
            found.append(f"job {job_id}: real {actual} != model {wanted}")
    real_starts = [event for event in real.events if isinstance(event, Start)]
    if _by_instant(real_starts, model) != _by_instant(model.starts, model):
        found.append(f"starts: real {real_starts} != model {model.starts}")
    schedules = {schedule.key: _observed_schedule(schedule) for schedule in real.schedules()}
    wanted = {key: _expected_schedule(schedule) for key, schedule in model.schedules.items()}
    if schedules != wanted:
        found.append(f"schedules: real {schedules} != model {wanted}")
    return found


def _observed_schedule(schedule: conveyor.Schedule) -> dict[str, object]:
    return {
        "name": schedule.name,
        "payload": schedule.payload,
        "every": schedule.every,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "priority": schedule.priority,
        "next_run_at": schedule.next_run_at - EPOCH,
        "last_run_at": None if schedule.last_run_at is None else schedule.last_run_at - EPOCH,
        "last_job_id": schedule.last_job_id,
    }


def _expected_schedule(schedule: Schedule) -> dict[str, object]:
    spec = schedule.spec
    return {
        "name": spec.name,
        "payload": {"tag": spec.tag},
        "every": spec.cadence.every,
        "cron": spec.cadence.cron,
        "timezone": spec.cadence.timezone,
        "catch_up": spec.catch_up,
        "priority": SCHEDULE_PRIORITY,
        "next_run_at": schedule.next_run_at,
        "last_run_at": schedule.last_run_at,
        "last_job_id": schedule.last_job_id,
    }


def _observed(job: conveyor.Job, fragments: list[str]) -> dict[str, object]:
    """``job`` as the model describes one: its error as the first of ``fragments`` (what the
    model says it holds; the others, what it may hold instead) when it holds one of them."""
    pending = job.status is conveyor.JobStatus.PENDING
    error = job.error
    if error is not None and any(fragment in error for fragment in fragments):
        error = fragments[0]
    return {
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": job.run_at - EPOCH if pending else None,
        "created_at": job.created_at - EPOCH,
        "after": tuple(sorted(job.after)),
        "schedule_key": job.schedule_key,
        "concurrency_key": job.concurrency_key,
        "result": job.result,
        "error": error,
        "progress": job.progress,
    }


def _expected(job: Job) -> dict[str, object]:
    return {
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": job.run_at if job.status is Status.PENDING else None,
        "created_at": job.created_at,
        "after": tuple(sorted(job.after)),
        "schedule_key": job.schedule_key,
        "concurrency_key": job.concurrency_key,
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
    """Enqueues, workflows, schedules, cancels, requeues (one by one and in bulk), pauses and
    resumes, time passing, crashes (with time passing while no process has the file open), and
    racing cancels, on the real queue, its handlers drawn with or without limits; and a
    second owner on the file (claims, heartbeats, death, late outcomes).

    After every step the real jobs (status, attempts, run_at, created_at, result, error,
    progress, after, schedule_key), the stored schedules (next and last tick, last job) and the
    handler starts (at their exact virtual times; in exact order where one worker runs) must be
    what the model allows. At the end the schedules are removed, time runs until every job is
    finished, and invariants 1-3, 6, 7, 9, 10 and 11 of DESIGN §4 are checked on what the real
    queue did (see the module docstring of ``test_state_machine``).
    """

    synchronous: ClassVar[Literal["normal", "full"]] = "normal"

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[int, tuple[Behaviour, ...]] = {}
        self.real = RealQueue(self._create_store(), self.scripts, synchronous=self.synchronous)
        self.model = Model(workers=1, leases_only=self.real.on_postgres)
        self.tags = 0
        self.answers: list[tuple[str | None, int]] = []  # (key, id) of every acknowledged enqueue
        self.zombies: list[tuple[int, int]] = []  # attempts a crash interrupted
        self.verified = False

    # --- steps -------------------------------------------------------------------------------
    @initialize(workers=st.integers(1, 4), limits=limits_by_handler)
    def open_queue(self, workers: int, limits: dict[str, HandlerLimits] | None = None) -> None:
        self.model = Model(workers, limits, leases_only=self.real.on_postgres)
        self.real.start(workers, limits)
        self.check()

    @rule(spec=specs())
    def enqueue(self, spec: Spec) -> None:
        self.enqueue_many([spec])

    @rule(batch=st.lists(specs(), min_size=1, max_size=4))
    def enqueue_many(self, batch: list[Spec]) -> None:
        batch = self._tagged_batch(batch)
        if self.model.key_conflicts(batch):
            specs = [to_job_spec(s) for s in batch]
            refusal = self._refusal(lambda queue: queue.enqueue_many(specs))
            assert isinstance(refusal, conveyor.IdempotencyConflict), refusal
            event("a key held by other work")
            self.check()
            return
        jobs = self.real.call(lambda queue: queue.enqueue_many([to_job_spec(s) for s in batch]))
        ids = self.model.enqueue(batch)
        assert [job.id for job in jobs] == ids
        self.answers += [(spec.key, job.id) for spec, job in zip(batch, jobs, strict=True)]
        self.check()

    @rule(data=st.data())
    def enqueue_workflow(self, data: st.DataObject) -> None:
        """A random DAG: each step runs after some earlier steps and some stored jobs (now and
        then one that does not exist)."""
        steps = []
        stored = self.model.next_id - 1
        for index in range(data.draw(st.integers(1, MAX_STEPS), label="steps")):
            spec = data.draw(specs(scripts=steps_behaviours), label=f"step {index}")
            earlier = st.lists(st.integers(0, index - 1), unique=True, max_size=3)
            after_steps = data.draw(earlier, label="after steps") if index else []
            ids = (
                st.lists(st.integers(1, stored), unique=True, max_size=2) if stored else st.just([])
            )
            after = data.draw(ids, label="after")
            steps.append(attrs.evolve(spec, after=tuple(after), after_steps=tuple(after_steps)))
        if data.draw(st.sampled_from([False] * 9 + [True]), label="after a job that is not"):
            unknown = self.model.next_id + len(steps)
            steps[-1] = attrs.evolve(steps[-1], after=(*steps[-1].after, unknown))
        self.enqueue_steps(steps)

    def enqueue_steps(self, steps: list[Spec]) -> None:
        steps = self._tagged_batch(steps)
        flow = to_workflow(steps)
        if self.model.key_conflicts(steps):
            refusal = self._refusal(lambda queue: queue.enqueue_workflow(flow))
            assert isinstance(refusal, conveyor.IdempotencyConflict), refusal
            self.check()
            return
        unknown = self.model.unknown_dependencies(steps)
        if unknown:
            refusal = self._refusal(lambda queue: queue.enqueue_workflow(flow))
            assert isinstance(refusal, conveyor.JobNotFound), f"stored after {unknown}: {refusal}"
            assert all(str(job_id) in str(refusal) for job_id in unknown), refusal
            self.check()
            return
        ids = self.model.enqueue(steps)
        if any(self.model.jobs[job_id].cancelled_by is not None for job_id in ids):
            event("workflow after a failed or cancelled job")
        jobs = self.real.call(lambda queue: queue.enqueue_workflow(flow))
        assert [job.id for job in jobs] == ids
        self.answers += [(spec.key, job.id) for spec, job in zip(steps, jobs, strict=True)]
        self.check()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.cancel_job(data.draw(self._job_ids(), label="job_id"))

    def cancel_job(self, job_id: int) -> None:
        if any(job_id in dead.jobs for dead in self.model.crashed):
            event("a cancel of a job a crashed process holds, before its lease lapsed")
        assert self.real.cancel(job_id) is self.model.cancel(job_id)
        self.check()

    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        self.requeue_job(data.draw(self._job_ids(), label="job_id"))

    def requeue_job(self, job_id: int) -> None:
        back = [job.id for job in self.model.jobs.values() if job.cancelled_by == job_id]
        requeued = self.model.requeue(job_id)
        assert self.real.requeue(job_id) is requeued
        if requeued and back:
            event("requeue brought back the jobs that run after it")
        self.check()

    @precondition(lambda self: bool(self._requeue_roots()))
    @rule(data=st.data())
    def requeue_failed_dependency(self, data: st.DataObject) -> None:
        """Requeue a job whose failure or cancel cancelled jobs that run after it."""
        self.requeue_job(data.draw(st.sampled_from(self._requeue_roots()), label="job_id"))

    @rule(name=st.one_of(st.none(), st.sampled_from(HANDLER_NAMES)))
    def requeue_failed(self, name: str | None) -> None:
        expected = self.model.copy().requeue_failed(name)

        async def requeue(queue: conveyor.Queue) -> int:
            # Logged as it is sent: its commit may start them before this task runs again.
            self.real.requeued(expected)
            return await queue.requeue_failed(name)

        assert self.real.call(requeue) == len(expected)
        assert self.model.requeue_failed(name) == expected
        self.check()

    @rule(name=st.one_of(st.none(), st.sampled_from(HANDLER_NAMES)))
    def cancel_pending(self, name: str | None) -> None:
        expected, count = self.model.copy().cancel_pending(name)

        async def cancel(queue: conveyor.Queue) -> int:
            answer = await queue.cancel_pending(name)
            self.real.cancelled(expected)  # logged before any handler may start
            return answer

        answer = self.real.call(cancel)
        assert self.model.cancel_pending(name) == (expected, count)
        assert answer == count, f"cancel_pending answered {answer}; it cancelled {count} jobs"
        self.check()

    @rule(spec=schedule_specs)
    def schedule(self, spec: ScheduleSpec) -> None:
        self.set_schedule(spec)

    def set_schedule(self, spec: ScheduleSpec) -> None:
        self.tags += 1
        self.scripts[self.tags] = spec.script
        spec = attrs.evolve(spec, tag=self.tags)
        stored = self.real.call(
            lambda queue: queue.schedule(
                spec.key,
                spec.name,
                {"tag": spec.tag},
                every=spec.cadence.every,
                cron=spec.cadence.cron,
                timezone=spec.cadence.timezone,
                catch_up=spec.catch_up,
                priority=SCHEDULE_PRIORITY,
            )
        )
        expected = self.model.schedule(spec)
        assert _observed_schedule(stored) == _expected_schedule(expected)
        self.check()

    @rule(key=st.sampled_from(SCHEDULE_KEYS))
    def unschedule(self, key: str) -> None:
        assert self.real.call(lambda queue: queue.unschedule(key)) is self.model.unschedule(key)
        self.check()

    @rule(name=st.sampled_from(HANDLER_NAMES))
    def pause(self, name: str) -> None:
        assert self.real.set_paused(name, True) is self.model.pause(name)
        self.check()

    @rule(name=st.sampled_from(HANDLER_NAMES))
    def resume(self, name: str) -> None:
        assert self.real.set_paused(name, False) is self.model.resume(name)
        self.check()

    # --- a second owner on the file -------------------------------------------------------
    @precondition(
        lambda self: (
            self.model.second is None
            or (self.model.second.alive and not self.model.second.taken_over)
        )
    )
    @rule()
    def second_owner_claims(self) -> None:
        """Another process (opening the file first, if it has not) claims the best ready
        job: one the queue could not start (its slots are full, or limits hold it)."""
        if self.model.second is None:
            self.model.second_opens()
            self.real.second_open()
        assert self.real.second_claim() == self.model.second_claim()
        self.check()

    @precondition(lambda self: self.model.second is not None and self.model.second.alive)
    @rule()
    def second_owner_beats(self) -> None:
        renewed = self.model.second_beats()
        assert self.real.second_beat() is renewed
        if not renewed:
            event("the second owner found its lease taken over")
        self.check()

    @precondition(lambda self: self.model.second is not None and self.model.second.alive)
    @rule()
    def second_owner_dies(self) -> None:
        self.model.second_dies()
        self.real.second_die()
        self.check()

    @precondition(
        lambda self: (
            self.model.second is not None
            and self.model.second.alive
            and bool(self.model.second.claims)
        )
    )
    @rule(data=st.data())
    def second_owner_ends_an_attempt(self, data: st.DataObject) -> None:
        """An attempt the second owner claimed returns: counted if it still holds the job,
        refused if the queue took it over (a stale outcome after a takeover)."""
        assert self.model.second is not None
        job_id, attempt = data.draw(st.sampled_from(self.model.second.claims), label="claim")
        self.second_owner_ends(job_id, attempt)

    def second_owner_ends(self, job_id: int, attempt: int) -> None:
        counted = self.model.second_completes(job_id, attempt)
        self.real.second_complete(job_id, attempt)
        if not counted:
            event("an outcome of the second owner after a takeover was refused")
        self.check()

    @rule(seconds=st.integers(1, 24).map(lambda n: n / 2))
    def advance_time(self, seconds: float) -> None:
        self._advance_to(self.model.now + seconds)

    @precondition(lambda self: bool(self.model.schedules))
    @rule(seconds=st.sampled_from([30.0, 60.0, 90.0, 150.0]))
    def advance_a_while(self, seconds: float) -> None:
        """Long enough for cron schedules, which tick on minutes."""
        self._advance_to(self.model.now + seconds)

    @rule(workers=st.integers(1, 4))
    def crash_and_reopen(self, workers: int) -> None:
        self.crash_then_reopen(workers, 0.0)

    @rule(workers=st.integers(1, 4), closed_for=st.sampled_from([2.5, 10.0, 45.0, 75.0, 130.0]))
    def crash_and_reopen_later(self, workers: int, closed_for: float) -> None:
        """No process has the file open for a while: ticks are missed, jobs come due."""
        self.crash_then_reopen(workers, closed_for)

    def crash_then_reopen(self, workers: int, closed_for: float) -> None:
        self.zombies += self.model.crash()
        self.real.crash_and_reopen(workers, closed_for=closed_for)
        self.model.advance_to(self.model.now + closed_for)
        due = [
            s.spec.catch_up
            for s in self.model.schedules.values()
            if s.next_run_at <= self.model.now
        ]
        self.model.reopen(workers)
        for catch_up in due:
            event(f"ticks due at reopen, catch_up={catch_up}")
        if self.model.crashed:
            event("a crashed process's jobs wait for its lease to lapse")
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
            # ... and reached the pool before the handler began: it never begins.
            unstarted = between.copy()
            unstarted.never_began(expected_id)
            candidates.append(("cancel between the claim and the start", unstarted, True))
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

    @precondition(lambda self: bool(self.model.running_here()) and not self.model.ready())
    @rule(data=st.data(), checkpoints=st.integers(0, 4), workers=st.integers(1, 4))
    def cancel_then_crash(self, data: st.DataObject, checkpoints: int, workers: int) -> None:
        """A crash right after a cancel of a running job: its end may not be committed."""
        running = sorted(job.id for job in self.model.running_here())
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
        if (
            job.status is Status.RUNNING
            and job.attempts == attempt
            and job_id not in self.model.held_elsewhere()
        ):
            # Requeued and running the same attempt number again here: not stale by its
            # number. (Held by another owner, such as the crashed process itself on
            # PostgreSQL until its lease lapses, the outcome is refused by its owner.)
            return
        if job_id in self.model.held_elsewhere():
            event("a stale outcome of a job another owner holds was refused")
        self.real.deliver_stale_outcome(job_id, attempt, kind)
        self.check()

    # --- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        self.verified = False  # a failed check leaves nothing for the teardown to drain
        jobs = self.real.jobs()
        self.model.resolve({job.id: job.error for job in jobs.values()})
        found = differences(self.model, self.real, jobs)
        assert not found, "\n".join(found)
        self.verified = True

    def teardown(self) -> None:
        try:
            if self.verified and self.real.failure is None:
                for key in list(self.model.schedules):
                    self.unschedule(key)
                for name in sorted(self.model.paused):
                    self.resume(name)
                if self.model.second is not None and self.model.second.alive:
                    self.second_owner_dies()
                self._drain()
                self._check_invariants()
        finally:
            try:
                self.real.close()
            finally:
                self._remove_store()

    def _create_store(self) -> Path | str:
        """Where this example's queue lives: a SQLite file in a fresh directory."""
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-machine-"))
        return self.directory / "jobs.db"

    def _remove_store(self) -> None:
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
        """Jump to every deadline up to ``target`` in turn, checking after each at which the
        model has something happen (the timer also wakes every second while anything is due,
        to look at the wall clock), and at ``target``."""
        self.verified = False
        while (deadline := self.real.next_deadline()) <= target:
            assert deadline > self.real.now(), f"a deadline that does not move: {deadline}"
            self.real.jump_to(deadline)
            following = self.model.next_event()
            if following is not None and following <= deadline:
                self._settle_at(deadline)
            else:
                self.model.advance_to(deadline)
        self.real.jump_to(target)
        self._settle_at(target)

    def _settle_at(self, time: float) -> None:
        """Advance the model to ``time``, where the real queue is, and check them.

        Where attempts end at ``time`` and the queue's claim at that instant was made before it
        heard of their ends (see ``Model.advance_to``), that order is accepted too: it shows
        only where a limit counts the ending attempts (a key's concurrency) while the claim
        spends another (a rate limit's start).
        """
        ending = any(job.ends_at == time for job in self.model.running())
        before = self.model.copy() if ending else None
        self.model.advance_to(time)
        if before is None:
            self.check()
            return
        jobs = self.real.jobs()
        self.model.resolve({job.id: job.error for job in jobs.values()})
        if differences(self.model, self.real, jobs):
            tie = before.copy()
            tie.advance_to(time, claim_before_ends=True)
            tie.resolve({job.id: job.error for job in jobs.values()})
            if not differences(tie, self.real, jobs):
                event("a claim at the instant attempts end, made before their ends")
                self.model = tie
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
        self._check_dependencies(jobs)
        self._check_ticks(jobs)
        self._check_limits(jobs)
        after = [job for job in jobs.values() if job.after]
        if any(job.status is conveyor.JobStatus.COMPLETED for job in after):
            event("a job that ran after others completed")
        if any("it runs after job" in (job.error or "") for job in after):
            event("a job was cancelled by one it runs after")
        if self.model.ticks:
            event("a schedule ticked")

    def _check_dependencies(self, jobs: dict[int, conveyor.Job]) -> None:
        """Invariant 9: a job never starts before all of its dependencies completed; a failed or
        cancelled dependency cancels exactly its transitive dependents."""
        for start in (logged for logged in self.real.events if isinstance(logged, Start)):
            job = jobs[start.job_id]
            for dep in (jobs[dep_id] for dep_id in job.after):
                assert dep.status is conveyor.JobStatus.COMPLETED, (start, dep)
                assert dep.finished_at is not None, dep
                assert dep.finished_at <= EPOCH + start.time, (start, dep)
            results = self.real.dependency_results[start.job_id, start.attempt]
            assert results == {dep: jobs[dep].result for dep in job.after}, (start, results)
        for job in jobs.values():
            ended = [dep for dep in job.after if jobs[dep].status in _ENDED_BADLY]
            if ended:
                assert job.status is conveyor.JobStatus.CANCELLED, (job, ended)
            match = re.search(r"it runs after job (\d+) ", job.error or "")
            if job.status is conveyor.JobStatus.CANCELLED and match:
                root = int(match[1])
                assert root in _upstream(jobs, job.id), (job, root)
                assert jobs[root].status in _ENDED_BADLY, (job, jobs[root])

    def _check_ticks(self, jobs: dict[int, conveyor.Job]) -> None:
        """Invariant 10: each tick of a schedule yields exactly one job, across crashes and
        restarts, and never before its time."""
        ticks = []
        for job in jobs.values():
            if job.schedule_key is None:
                continue
            assert job.idempotency_key is not None, job
            prefix, key, tick = job.idempotency_key.rsplit(":", 2)
            assert (prefix, key) == ("schedule", job.schedule_key), job
            assert float(tick) <= job.created_at, f"tick {tick} enqueued early: {job}"
            ticks.append((key, float(tick)))
        twice = [tick for tick, count in Counter(ticks).items() if count > 1]
        assert not twice, f"ticks enqueued more than once: {twice}"
        expected = [(tick.key, round(EPOCH + tick.tick, 3)) for tick in self.model.ticks]
        assert sorted(ticks) == sorted(expected), (ticks, expected)

    def _check_limits(self, jobs: dict[int, conveyor.Job]) -> None:
        """Invariant 11 on the handlers' own log: never more of a handler's attempts running
        at once than its concurrency allows, or of one key than its key concurrency allows;
        never more starts in a window than its rate limit; no start of a paused handler's job
        between the return of ``pause`` and that of ``resume``. (That a limited handler never
        keeps another's ready job from a free slot is checked step by step against the model,
        which starts the jobs past it.)"""
        running: dict[int, conveyor.Job] = {}
        paused: set[str] = set()
        starts: dict[str, list[float]] = defaultdict(list)
        for logged in self.real.events:
            if isinstance(logged, Paused):
                (paused.add if logged.paused else paused.discard)(logged.name)
            elif isinstance(logged, Ended):
                running.pop(logged.job_id, None)
            elif isinstance(logged, Start):
                job = jobs[logged.job_id]
                limits = self.model.limits_of(job.name)
                assert job.name not in paused, f"{logged} of {job.name!r} while it is paused"
                running[job.id] = job
                same = [other for other in running.values() if other.name == job.name]
                if limits.concurrency is not None:
                    assert len(same) <= limits.concurrency, (logged, same)
                if limits.key_concurrency is not None and job.concurrency_key is not None:
                    keyed = [o for o in same if o.concurrency_key == job.concurrency_key]
                    assert len(keyed) <= limits.key_concurrency, (logged, keyed)
                if limits.rate is not None:
                    count, seconds = limits.rate
                    starts[job.name].append(logged.time)
                    window = [t for t in starts[job.name] if t > logged.time - seconds]
                    assert len(window) <= count, (logged, window)
        for hold in sorted(self.model.holds):
            event(f"a ready job was held back by a {hold} while a slot was free")

    def _check_job_history(self, job_id: int, job: conveyor.Job) -> None:
        """Invariants 2, 3 and 6 over one job's starts, epoch by epoch (a requeue starts one)."""
        epochs: list[list[Start | Cancelled]] = [[]]
        for logged in self.real.events:
            if isinstance(logged, Requeued) and logged.job_id == job_id:
                epochs.append([])
            elif isinstance(logged, Start | Claimed | Cancelled) and logged.job_id == job_id:
                epochs[-1].append(logged)
        for epoch in epochs:
            attempts = [event.attempt for event in epoch if isinstance(event, Start | Claimed)]
            # 2 and 6: each attempt runs once (a crash counts the attempt it interrupted), in
            # order, at most max_attempts of them.
            assert attempts == list(range(1, len(attempts) + 1)), (job_id, attempts)
            assert len(attempts) <= job.max_attempts, (job_id, attempts)
            # 3: after a successful cancel, only the attempt already claimed may start (its
            # handler is cancelled at its first checkpoint); nothing after it.
            cancels = [i for i, event in enumerate(epoch) if isinstance(event, Cancelled)]
            # One cancel ends it; only a job running in another process (the second owner)
            # is asked again while it runs, and says so again.
            attempts_cancelled = {e.attempts for e in epoch if isinstance(e, Cancelled)}
            assert len(attempts_cancelled) <= 1, (job_id, epoch)
            if cancels:
                cancel = epoch[cancels[0]]
                assert isinstance(cancel, Cancelled)
                late = [e for e in epoch[cancels[0] :] if isinstance(e, Start | Claimed)]
                if cancel.while_running:
                    assert all(start.attempt == cancel.attempts for start in late), epoch
                else:
                    assert not late, epoch
        final = [event for event in epochs[-1] if isinstance(event, Start | Claimed)]
        if job.status is conveyor.JobStatus.COMPLETED:
            # 2: a completed job never runs again.
            assert final
            if isinstance(final[-1], Claimed):
                assert job.result == SECOND_RESULT
            else:
                assert job.result == {"tag": job.payload["tag"], "attempt": len(final)}

    # --- helpers -----------------------------------------------------------------------------
    def _tagged_batch(self, specs: list[Spec]) -> list[Spec]:
        """``specs`` tagged: a spec whose key is held (by a stored job or an earlier spec)
        takes the holder's tag, so that it asks for the same payload (a replay, or a conflict
        if the handler differs); any other a new one."""
        tags = {key: self.model.jobs[job_id].tag for key, job_id in self.model.keys.items()}
        tagged = []
        for spec in specs:
            if spec.key is not None and spec.key in tags:
                tagged.append(attrs.evolve(spec, tag=tags[spec.key]))
                continue
            spec = self._tagged(spec)
            if spec.key is not None:
                tags[spec.key] = spec.tag
            tagged.append(spec)
        return tagged

    def _tagged(self, spec: Spec) -> Spec:
        self.tags += 1
        self.scripts[self.tags] = spec.script
        return attrs.evolve(spec, tag=self.tags)

    def _job_ids(self) -> st.SearchStrategy[int]:
        # Known ids mostly, and now and then one no job has.
        return st.integers(1, self.model.next_id)

    def _refusal(
        self, operation: Callable[[conveyor.Queue], Awaitable[object]]
    ) -> BaseException | None:
        """What ``operation`` raised, if anything."""
        try:
            self.real.call(operation)
        except conveyor.ConveyorError as exc:
            return exc
        return None

    def _requeue_roots(self) -> list[int]:
        """Failed or cancelled jobs whose end cancelled jobs that run after them."""
        return sorted(
            {
                job.cancelled_by
                for job in self.model.jobs.values()
                if job.cancelled_by is not None and job.status is Status.CANCELLED
            }
        )


_ENDED_BADLY: Final = (conveyor.JobStatus.FAILED, conveyor.JobStatus.CANCELLED)


def _upstream(jobs: dict[int, conveyor.Job], job_id: int) -> set[int]:
    """Every job that ``job_id`` runs after, directly or through others."""
    found: set[int] = set()
    todo = list(jobs[job_id].after)
    while todo:
        dep = todo.pop()
        if dep not in found:
            found.add(dep)
            todo += jobs[dep].after
    return found


class FullSyncQueueMachine(QueueMachine):
    """The same steps and checks with the queue at ``synchronous="full"``: a batch's callers
    and listeners are answered only after a separate sync of its commit, while the worker pool
    starts the jobs it claimed at once."""

    synchronous = "full"


class PostgresQueueMachine(QueueMachine):
    """The same steps and checks with the queue in a fresh schema on PostgreSQL (dropped after
    the example), the second owner a :class:`~conveyor._storage.postgres.PgWriter` on it.

    Only the model's finding of dead owners differs (``Model.leases_only``): no lock file
    tells that a crashed process (the queue's own, or the second owner) is gone, so its running
    jobs are taken over once its lease lapses, at a heartbeat, rather than at once.
    """

    def _create_store(self) -> Path | str:
        self.url = schema_url(POSTGRES_URL, fresh_schema("machine"))
        return self.url

    def _remove_store(self) -> None:
        drop_schema(self.url)
