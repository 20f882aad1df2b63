"""The reference model: the job life cycle of DESIGN §2 in plain Python, and what a queue with
N worker slots does to its jobs as time passes.

It knows nothing about SQL, actors or channels. It is a discrete-event simulation: when a slot is
free it starts the best ready job, ordered by ``(priority, run_at, id)``; a handler's behaviour for
each attempt is known in advance, so the model knows when and how every attempt ends. Times are
seconds on the test's virtual clock.

Dependencies follow the README and DESIGN §2, stated here without conveyor's counters: a job is
``waiting`` while one of the jobs it runs after has not completed, and ``pending`` from the moment
all of them have (its delay counted from then); a job that ends ``failed`` or ``cancelled``
cancels every ``waiting`` job below it, directly or through others, naming itself in their error,
and its ``requeue`` brings those back to ``waiting``. Schedules tick by the model's own arithmetic
(``every`` seconds, or the minutes a cron minute field matches in a fixed-offset time zone), not
by conveyor's ``_schedule`` module.

A second owner (another process on the file, driven by hand) claims ready jobs without running
them, renews its lease or not, dies, and ends its attempts. The queue renews its own lease every
:data:`HEARTBEAT` seconds from when it opened, and at each renewal (and when it opens) takes
over the second owner's running jobs if that owner died or its last heartbeat is
:data:`LEASE` seconds old or more: they end as an interrupted attempt, as after a crash. An
outcome from the second owner after that changes nothing.

Where the queue lives decides how a dead process is found (``leases_only``). On a SQLite file
each owner holds a lock that the kernel releases when its process dies, so a dead owner is
found at once: a queue reopened after a crash recovers the crashed process's running jobs as it
opens, and a dead second owner is taken over at the queue's next heartbeat. On PostgreSQL no
lock can tell whether a process on another host lives, so owners are judged by their lease
alone: a dead owner (the second one, or the queue's own process before a crash) keeps its
running jobs, which hold their slots under the handlers' limits and can only be asked to
cancel, until its last heartbeat is :data:`LEASE` seconds old at a heartbeat of the queue (or
at its opening); then they are taken over as above.

Limits follow the issue that brought them, again without conveyor's code: a ready job whose
handler is paused, or whose handler's ``concurrency``, ``key_concurrency`` (per concurrency key)
or rate limit (starts in the last ``seconds``, a start at ``t`` counting until ``t + seconds``)
has no room, is passed over, and the next ready job is considered; a retry runs at the last
attempt's priority plus the handler's ``retry_priority_step``, at most 10.
"""

from __future__ import annotations

import copy
import math
from typing import Final, Literal

import attrs

from conveyor import Event, JobStatus
from conveyor._job import decide, end_attempt

BACKOFF_INITIAL: Final = 1.0
BACKOFF_MULTIPLIER: Final = 2.0
BACKOFF_MAXIMUM: Final = 8.0
DEFAULT_MAX_ATTEMPTS: Final = 3


Status = JobStatus

TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

LEGAL: Final = frozenset(
    {
        (None, Status.PENDING),  # enqueue
        (Status.PENDING, Status.RUNNING),  # claim
        (Status.PENDING, Status.CANCELLED),  # cancel
        (Status.RUNNING, Status.COMPLETED),  # handler returned
        (Status.RUNNING, Status.PENDING),  # retry, shutdown, or a crash with attempts left
        (Status.RUNNING, Status.FAILED),  # Fail, attempts exhausted
        (Status.RUNNING, Status.CANCELLED),  # cancel while running
        (Status.FAILED, Status.PENDING),  # requeue
        (Status.CANCELLED, Status.PENDING),  # requeue
        (None, Status.WAITING),  # enqueue after unfinished jobs
        (Status.WAITING, Status.PENDING),  # the last of those completed
        (Status.WAITING, Status.CANCELLED),  # cancel, or one of those failed or was cancelled
        (Status.FAILED, Status.WAITING),  # requeue while some of those are unfinished
        (Status.CANCELLED, Status.WAITING),  # requeue of the job whose end cancelled it
    }
)
"""The transitions of DESIGN §2, written down independently of conveyor: a test asserts that
conveyor's executed table makes exactly these moves. The model moves its jobs through that same
table (:func:`conveyor._job.decide`), and checks every move against this set."""


BehaviourKind = Literal["return", "raise", "fail", "retry", "sleep"]


@attrs.frozen
class Behaviour:
    """What a handler does in one attempt.

    ``return`` returns at once; ``raise`` raises an ordinary exception (retried with backoff);
    ``fail`` raises ``Fail``; ``retry`` raises ``Retry(delay=retry_delay)``; ``sleep`` sleeps
    ``duration`` seconds then returns (a timeout shorter than that fails the attempt).
    ``progress`` is reported first, if given.
    """

    kind: BehaviourKind
    duration: float = 0.0
    retry_delay: float = 0.0
    progress: float | None = None

    @property
    def is_immediate(self) -> bool:
        return self.kind != "sleep"


def backoff(failed_attempts: int) -> float:
    """The delay after the ``failed_attempts``-th failure (the README's formula, no jitter)."""
    return min(BACKOFF_INITIAL * BACKOFF_MULTIPLIER ** (failed_attempts - 1), BACKOFF_MAXIMUM)


def result_of(tag: int, attempt: int) -> dict[str, int]:
    return {"tag": tag, "attempt": attempt}


def raise_message(tag: int, attempt: int) -> str:
    return f"boom {tag}/{attempt}"


def fail_message(tag: int, attempt: int) -> str:
    return f"give up {tag}/{attempt}"


@attrs.frozen
class Spec:
    """A job to enqueue, as the state machine drew it.

    ``after`` holds ids of stored jobs it runs after; ``after_steps`` the positions of the jobs
    of the same enqueue (a workflow's earlier steps) it runs after.
    """

    name: str
    tag: int
    priority: int
    delay: float
    max_attempts: int | None
    timeout: float | None
    key: str | None
    script: tuple[Behaviour, ...]
    after: tuple[int, ...] = ()
    after_steps: tuple[int, ...] = ()
    concurrency_key: str | None = None


@attrs.frozen
class HandlerLimits:
    """What a handler's registration limits: see the module docstring."""

    concurrency: int | None = None
    key_concurrency: int | None = None
    rate: tuple[int, float] | None = None
    retry_priority_step: int = 0


NO_LIMITS: Final = HandlerLimits()

LOWEST_PRIORITY: Final = 10

HEARTBEAT: Final = 2.0
LEASE: Final = 2 * HEARTBEAT

SECOND_RESULT: Final = {"by": "the second owner"}


@attrs.define
class SecondOwner:
    """Another process on the file: when it last renewed its lease, whether its process
    lives, the jobs it holds, and every ``(job id, attempt)`` it claimed.

    On PostgreSQL a crashed process of the queue itself is one too, dead from the start, until
    its lease lapses and its jobs are taken over (``registered`` orders the takeovers as the
    owners' ids do)."""

    heartbeat_at: float
    alive: bool = True
    registered: int = 0
    taken_over: bool = False
    jobs: set[int] = attrs.Factory(set)
    claims: list[tuple[int, int]] = attrs.Factory(list)


MISSED_AFTER: Final = 60.0
"""A tick more than this many seconds late is *missed* (README): ``catch_up="none"`` skips it."""

MAX_CATCH_UP: Final = 1000

SCHEDULE_PRIORITY: Final = 10
"""The priority the machine gives its schedules' jobs: the lowest, so that a tick that falls in
the very instant another job frees a slot or becomes ready never competes with it (which of the
two the real queue sees first is up to the scheduler)."""

ZONE_OFFSETS: Final = {"UTC": 0, "Asia/Kathmandu": 5 * 60 + 45}
"""Minutes east of UTC of the time zones the machine uses: fixed offsets, no daylight saving."""

EPOCH_MINUTE: Final = 30_000_000
"""The UTC minute (since 1970) at virtual time 0: the mock wall clock starts on a minute."""


@attrs.frozen
class Cadence:
    """When a schedule ticks: every ``every`` seconds from when it was set, or at the minutes
    the cron expression's minute field matches in ``timezone`` (its other fields are ``*``).

    The minute field is ``*``, ``*/n`` or ``a-b/n``: enough to tell local minutes from UTC
    ones in a zone 45 minutes off the hour.
    """

    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    def _minutes(self) -> frozenset[int]:
        assert self.cron is not None
        field, *rest = self.cron.split()
        assert rest == ["*"] * 4, self.cron
        span, _, step = field.partition("/")
        first, last = (0, 59) if span == "*" else map(int, span.split("-"))
        return frozenset(range(first, last + 1, int(step or 1)))

    def _matches(self, minute: int) -> bool:
        """Whether virtual minute ``minute`` (virtual time ``60 * minute``) is a tick."""
        local = EPOCH_MINUTE + minute + ZONE_OFFSETS[self.timezone]
        return local % 60 in self._minutes()

    def first_after(self, moment: float) -> float:
        if self.every is not None:
            return moment + self.every
        minute = int(moment // 60) + 1
        while not self._matches(minute):
            minute += 1
        return 60.0 * minute

    def ticks_between(self, first: float, last: float) -> list[float]:
        """Every tick from ``first`` (a tick) to ``last``, in order."""
        ticks = []
        tick = first
        while tick <= last:
            ticks.append(tick)
            tick = self.first_after(tick)
        return ticks


@attrs.frozen
class ScheduleSpec:
    """A schedule to set, as the state machine drew it: its jobs run ``script``."""

    key: str
    name: str
    tag: int
    cadence: Cadence
    catch_up: Literal["latest", "all", "none"]
    script: tuple[Behaviour, ...]


@attrs.define
class Schedule:
    spec: ScheduleSpec
    next_run_at: float
    last_run_at: float | None = None
    last_job_id: int | None = None


@attrs.frozen
class Tick:
    """Schedule ``key``'s tick at ``tick`` enqueued job ``job_id`` at ``time``."""

    key: str
    tick: float
    job_id: int
    time: float


@attrs.define
class Job:
    id: int
    name: str
    tag: int
    priority: int
    run_at: float
    max_attempts: int
    timeout: float | None
    key: str | None
    script: tuple[Behaviour, ...]
    status: Status = Status.PENDING
    attempts: int = 0
    result: object = None
    error: str | None = None  # a fragment the stored error must contain
    progress: float | None = None
    ends_at: float | None = None  # while running: when the attempt ends by itself
    times_out: bool = False  # while running: whether that end is the timeout
    created_at: float = 0.0
    after: tuple[int, ...] = ()  # the jobs it runs after
    delay: float = 0.0  # counted from its release when it has to wait
    cancelled_by: int | None = None  # the job whose requeue brings it back to waiting
    causes: list[tuple[int, str]] = attrs.Factory(list)
    """When jobs above it ended badly in one instant: each ``(cancelled_by, error)`` the queue
    may have given it (it cancels it for the first one it handles); the check resolves this by
    the real error (:meth:`Model.resolve`)."""
    cancelled_at: float | None = None
    schedule_key: str | None = None
    concurrency_key: str | None = None
    cancel_requested: bool = False  # while the second owner runs it

    def move(self, event: Event) -> None:
        status = decide(self.status, event)
        assert (self.status, status) in LEGAL, f"illegal {self.status} -> {status} for {self.id}"
        self.status = status


def stored_as(event: Event) -> Status:
    """The status a job is stored in when ``event`` stores it."""
    status = decide(None, event)
    assert (None, status) in LEGAL, f"illegal new job status {status}"
    return status


@attrs.frozen
class Start:
    """Attempt ``attempt`` of job ``job_id`` started at ``time`` in queue ``generation``."""

    generation: int
    time: float
    job_id: int
    attempt: int


class Model:
    def __init__(
        self,
        workers: int,
        limits: dict[str, HandlerLimits] | None = None,
        *,
        leases_only: bool = False,
    ) -> None:
        self.workers = workers
        self.limits = limits or {}
        self.leases_only = leases_only
        """Owners are judged by their lease alone (PostgreSQL): see the module docstring."""
        self.paused: set[str] = set()
        self.holds: set[str] = set()
        self.second: SecondOwner | None = None
        self.crashed: list[SecondOwner] = []
        """With ``leases_only``: the queue's processes that crashed holding running jobs that
        are not taken over yet."""
        self.registrations = 1
        """Owners registered so far (the queue's first process is the first)."""
        self.registered = 1
        """When the queue's current process registered (in :attr:`registrations`)."""
        self.opened_at = 0.0
        self.second_starts: list[Start] = []
        """What held back a ready job while a slot was free, at some point (for statistics)."""
        self.generation = 0
        self.open = True
        self.now = 0.0
        self.jobs: dict[int, Job] = {}
        self.keys: dict[str, int] = {}
        self.next_id = 1
        self.starts: list[Start] = []
        self.unstarted: list[Start] = []
        """Claims whose handler never began (a cancel reached the pool first): not among the
        handler starts, but starts for rate limits, which count claims."""
        self.single_worker_generations: set[int] = {0} if workers == 1 else set()
        self.dependents: dict[int, list[int]] = {}
        self.schedules: dict[str, Schedule] = {}
        self.ticks: list[Tick] = []

    def copy(self) -> Model:
        return copy.deepcopy(self)

    # --- what the model sees ---------------------------------------------------------------
    def running(self) -> list[Job]:
        """Every running job, the second owner's too (limits count them all)."""
        return [job for job in self.jobs.values() if job.status is Status.RUNNING]

    def running_here(self) -> list[Job]:
        """The running jobs of the queue's current process (not the second owner's, nor
        those a crashed process still holds)."""
        held = self.held_elsewhere()
        return [job for job in self.running() if job.id not in held]

    def others(self) -> list[SecondOwner]:
        """The other owners that hold jobs or may: the second owner and the crashed
        processes, in the order they registered."""
        owners = [*self.crashed, *([] if self.second is None else [self.second])]
        return sorted(owners, key=lambda owner: owner.registered)

    def held_elsewhere(self) -> set[int]:
        """The running jobs another owner holds (the second owner or a crashed process)."""
        return {job_id for owner in self.others() for job_id in owner.jobs}

    def ready(self) -> list[Job]:
        due = [
            job
            for job in self.jobs.values()
            if job.status is Status.PENDING and job.run_at <= self.now
        ]
        return sorted(due, key=lambda job: (job.priority, job.run_at, job.id))

    def all_terminal(self) -> bool:
        return all(job.status in TERMINAL for job in self.jobs.values())

    def next_event(self) -> float | None:
        """When the next attempt ends, scheduled job comes due or schedule ticks, if ever."""
        times = [job.ends_at for job in self.running() if job.ends_at is not None]
        times += [
            job.run_at
            for job in self.jobs.values()
            if job.status is Status.PENDING and job.run_at > self.now
        ]
        if self.open:
            times += [schedule.next_run_at for schedule in self.schedules.values()]
            takeover = self.next_takeover()
            if takeover is not None:
                times.append(takeover)
        times += [opens for opens in self._windows_opening() if opens > self.now]
        return min(times, default=None)

    def next_takeover(self) -> float | None:
        """When the queue's heartbeat next takes over another owner (``None``: there is none
        to take over)."""
        times = [self._takeover_of(owner) for owner in self.others() if not owner.taken_over]
        return min(times, default=None)

    def _takeover_of(self, owner: SecondOwner) -> float:
        beats = int((self.now - self.opened_at) // HEARTBEAT) + 1
        first = self.opened_at + HEARTBEAT * beats
        if not owner.alive and not self.leases_only:
            return first  # its lock is free: dead, as the next heartbeat finds
        lapse = owner.heartbeat_at + LEASE
        return max(
            first, self.opened_at + HEARTBEAT * math.ceil((lapse - self.opened_at) / HEARTBEAT)
        )

    def _gone(self, owner: SecondOwner) -> bool:
        """Whether the queue finds ``owner`` gone now: its lease lapsed, or (where a lock
        tells) its process died."""
        if owner.heartbeat_at <= self.now - LEASE:
            return True
        return not owner.alive and not self.leases_only

    def _take_over(self) -> None:
        """The other owners gone or silent: their running jobs end as interrupted attempts."""
        for owner in self.others():
            if owner.taken_over or not self._gone(owner):
                continue
            for job_id in sorted(owner.jobs):
                job = self.jobs[job_id]
                self._interrupt(job, cancel_requested=job.cancel_requested)
            owner.jobs.clear()
            if owner in self.crashed:
                self.crashed.remove(owner)
            elif owner.alive:
                owner.taken_over = True
            else:
                self.second = None

    def _interrupt(self, job: Job, *, cancel_requested: bool) -> None:
        job.ends_at = None
        job.cancel_requested = False
        job.error = (
            f"attempt {job.attempts} of {job.max_attempts} was interrupted: the process "
            "running it stopped"
        )
        job.move(
            end_attempt(
                Event.RECOVERED,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                cancel_requested=cancel_requested,
            )
        )
        self._ended(job)

    # --- the second owner ------------------------------------------------------------------
    def second_opens(self) -> None:
        self.registrations += 1
        self.second = SecondOwner(heartbeat_at=self.now, registered=self.registrations)

    def second_claim(self) -> int | None:
        """The second owner claims the best ready job of a handler not paused (it applies no
        limits of its own); its id."""
        assert self.second is not None
        ready = [job for job in self.ready() if job.name not in self.paused]
        if not ready:
            return None
        job = ready[0]
        job.move(Event.STARTED)
        job.attempts += 1
        job.progress = None
        self.second.jobs.add(job.id)
        self.second.claims.append((job.id, job.attempts))
        self.second_starts.append(Start(self.generation, self.now, job.id, job.attempts))
        return job.id

    def second_beats(self) -> bool:
        """Whether the renewal took (else the second owner registers anew: it was taken
        over)."""
        assert self.second is not None
        self.second.heartbeat_at = self.now
        if self.second.taken_over:
            # It registers anew, and stops (and never reports) the attempts it had.
            self.registrations += 1
            self.second.registered = self.registrations
            self.second.taken_over = False
            self.second.claims.clear()
            return False
        return True

    def second_dies(self) -> None:
        assert self.second is not None
        if self.second.jobs:
            self.second.alive = False
        else:
            self.second = None

    def second_completes(self, job_id: int, attempt: int) -> bool:
        """The second owner's attempt ``attempt`` of job ``job_id`` returned; whether its
        outcome counted (it still held the job)."""
        second = self.second
        assert second is not None
        job = self.jobs[job_id]
        if job_id not in second.jobs or job.attempts != attempt:
            return False
        second.jobs.discard(job_id)
        event = end_attempt(
            Event.COMPLETED,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
        )
        job.cancel_requested = False
        if event is Event.COMPLETED:
            job.result = SECOND_RESULT
        else:
            job.error = "cancelled while running"
        job.move(event)
        self._ended(job)
        self.fill_slots()
        return True

    def _windows_opening(self) -> list[float]:
        """When the starts that rate limits count now stop counting."""
        ends = []
        for start in self.starts + self.unstarted:
            rate = self.limits_of(self.jobs[start.job_id].name).rate
            if rate is not None:
                ends.append(start.time + rate[1])
        return ends

    def limits_of(self, name: str) -> HandlerLimits:
        return self.limits.get(name, NO_LIMITS)

    def held_by(self, job: Job) -> str | None:
        """What keeps ``job`` (ready) from starting now, if anything: its handler's pause,
        ``concurrency``, ``key_concurrency`` or ``rate`` limit."""
        if job.name in self.paused:
            return "pause"
        limits = self.limits_of(job.name)
        running = [other for other in self.running() if other.name == job.name]
        if limits.concurrency is not None and len(running) >= limits.concurrency:
            return "concurrency"
        if limits.key_concurrency is not None and job.concurrency_key is not None:
            same_key = [other for other in running if other.concurrency_key == job.concurrency_key]
            if len(same_key) >= limits.key_concurrency:
                return "key_concurrency"
        if limits.rate is not None:
            count, seconds = limits.rate
            recent = [
                start
                for start in self.starts + self.unstarted
                if start.time > self.now - seconds and self.jobs[start.job_id].name == job.name
            ]
            if len(recent) >= count:
                return "rate"
        return None

    def upstream(self, job_id: int) -> set[int]:
        """Every job that ``job_id`` runs after, directly or through others."""
        found: set[int] = set()
        todo = list(self.jobs[job_id].after)
        while todo:
            dep = todo.pop()
            if dep not in found:
                found.add(dep)
                todo += self.jobs[dep].after
        return found

    # --- steps -----------------------------------------------------------------------------
    def _answers(self, specs: list[Spec]) -> tuple[list[int], list[tuple[int, Spec]]]:
        """The id answering each of ``specs`` (a held key answers with its job), and the jobs
        to store with their ids."""
        answers: list[int] = []
        fresh: list[tuple[int, Spec]] = []
        keys = dict(self.keys)
        for spec in specs:
            if spec.key is not None and spec.key in keys:
                answers.append(keys[spec.key])
                continue
            job_id = self.next_id + len(fresh)
            if spec.key is not None:
                keys[spec.key] = job_id
            answers.append(job_id)
            fresh.append((job_id, spec))
        return answers, fresh

    def key_conflicts(self, specs: list[Spec]) -> bool:
        """Whether a key of ``specs`` is held by other work (a stored job, or an earlier spec
        of the batch, of another handler or payload): the enqueue raises
        ``IdempotencyConflict`` and writes nothing."""
        holders = {
            key: (self.jobs[job_id].name, self.jobs[job_id].tag)
            for key, job_id in self.keys.items()
        }
        for spec in specs:
            if spec.key is None:
                continue
            work = (spec.name, spec.tag)
            if holders.setdefault(spec.key, work) != work:
                return True
        return False

    def unknown_dependencies(self, specs: list[Spec]) -> list[int]:
        """Ids of jobs that do not exist that a job to store runs after: the enqueue of
        ``specs`` raises ``JobNotFound`` and writes nothing."""
        _, fresh = self._answers(specs)
        return sorted({dep for _, spec in fresh for dep in spec.after if dep not in self.jobs})

    def enqueue(self, specs: list[Spec], *, fill: bool = True) -> list[int]:
        """The ids ``enqueue_many(specs)`` (or a workflow of these steps) answers with."""
        assert not self.unknown_dependencies(specs)
        answers, fresh = self._answers(specs)
        for spec, answer in zip(specs, answers, strict=True):
            if spec.key is not None:
                self.keys.setdefault(spec.key, answer)
        stored: set[int] = set()
        for job_id, spec in fresh:
            after = tuple(dict.fromkeys([*spec.after, *(answers[s] for s in spec.after_steps)]))
            stored.update(dep for dep in after if dep < self.next_id)
            waits = any(
                dep >= self.next_id or self.jobs[dep].status is not Status.COMPLETED
                for dep in after
            )
            job = Job(
                id=job_id,
                name=spec.name,
                tag=spec.tag,
                priority=spec.priority,
                run_at=self.now + spec.delay,
                max_attempts=spec.max_attempts or DEFAULT_MAX_ATTEMPTS,
                timeout=spec.timeout,
                key=spec.key,
                script=spec.script,
                status=stored_as(Event.BLOCKED if waits else Event.ENQUEUED),
                created_at=self.now,
                after=after,
                delay=spec.delay,
                concurrency_key=spec.concurrency_key,
            )
            self.jobs[job_id] = job
            for dep in after:
                self.dependents.setdefault(dep, []).append(job_id)
        self.next_id += len(fresh)
        # Those that run after a job that failed or was cancelled are cancelled at once.
        for dep in sorted(stored):
            if self.jobs[dep].status in (Status.FAILED, Status.CANCELLED):
                self._cancel_below(self.jobs[dep])
        if fill:
            self.fill_slots()
        return answers

    def cancel(self, job_id: int, *, fill: bool = True) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status in TERMINAL:
            return False
        if job_id in self.held_elsewhere():
            # Running in another process: requested; its end, or a takeover, settles it.
            job.cancel_requested = True
            return True
        if job.status in (Status.PENDING, Status.WAITING):
            job.error = "cancelled before it ran"
        else:
            job.error = "cancelled while running"
            job.ends_at = None
        job.move(Event.CANCELLED)
        self._cancel_below(job)
        if fill:
            self.fill_slots()
        return True

    def cancel_pending(self, name: str | None) -> tuple[list[int], int]:
        """``cancel_pending(name)``: the ids it cancelled itself (not through a job they run
        after), and its answer: how many of the pending and waiting jobs (of handler ``name``)
        it cancelled, those that run after others it cancelled included (README)."""
        queued = [
            job.id
            for job in self.jobs.values()
            if job.status in (Status.PENDING, Status.WAITING) and name in (None, job.name)
        ]
        cancelled = [job_id for job_id in queued if self.cancel(job_id)]
        return cancelled, len(queued)

    def requeue(self, job_id: int, *, fill: bool = True) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status not in (Status.FAILED, Status.CANCELLED):
            return False
        deps = [self.jobs[dep] for dep in job.after]
        if any(dep.status in (Status.FAILED, Status.CANCELLED) for dep in deps):
            return False  # requeue the one that failed instead
        waits = any(dep.status is not Status.COMPLETED for dep in deps)
        job.move(Event.BLOCKED if waits else Event.REQUEUED)
        job.attempts = 0
        job.run_at = self.now
        job.result = job.error = job.progress = None
        job.cancelled_by = None
        job.causes = []
        # The jobs its end cancelled wait again, unless another job they run after failed.
        back = sorted(
            other.id
            for other in self.jobs.values()
            if other.cancelled_by == job_id and other.status is Status.CANCELLED
        )
        for other_id in back:
            other = self.jobs[other_id]
            other.move(Event.BLOCKED)
            other.error = None
            other.cancelled_by = None
            other.causes = []
        for other_id in back:
            other = self.jobs[other_id]
            ended = [
                dep
                for dep in sorted(other.after)
                if self.jobs[dep].status in (Status.FAILED, Status.CANCELLED)
            ]
            if ended:
                self._cancel_below(self.jobs[ended[0]])
            elif other.status is Status.WAITING:
                self._release(other)
        if fill:
            self.fill_slots()
        return True

    def requeue_failed(self, name: str | None) -> list[int]:
        """``requeue_failed(name)``: the ids it requeued (the count is their number)."""
        failed = [
            job.id
            for job in self.jobs.values()
            if job.status is Status.FAILED and name in (None, job.name)
        ]
        requeued = [job_id for job_id in failed if self.requeue(job_id, fill=False)]
        self.fill_slots()
        return requeued

    def schedule(self, spec: ScheduleSpec) -> Schedule:
        """Set (or replace) the schedule ``spec.key``: it next ticks after now."""
        next_run_at = spec.cadence.first_after(self.now)
        schedule = self.schedules.get(spec.key)
        if schedule is None:
            schedule = self.schedules[spec.key] = Schedule(spec, next_run_at)
        else:
            schedule.spec, schedule.next_run_at = spec, next_run_at
        return schedule

    def unschedule(self, key: str) -> bool:
        return self.schedules.pop(key, None) is not None

    def pause(self, name: str) -> bool:
        """``pause(name)``: no job of ``name`` starts until it is resumed; whether it changed."""
        if name in self.paused:
            return False
        self.paused.add(name)
        return True

    def resume(self, name: str) -> bool:
        if name not in self.paused:
            return False
        self.paused.remove(name)
        self.fill_slots()
        return True

    def advance_to(self, time: float, *, claim_before_ends: bool = False) -> None:
        """Let time pass until ``time``: attempts end, scheduled jobs come due, schedules tick,
        slots refill.

        With ``claim_before_ends``, what happens at ``time`` itself takes the other order of a
        tie: the claim that the timer sets off then (a job coming due, a rate limit's window
        opening, a tick) is made before the attempts that end then are settled, which still
        hold their slots and limits. The queue's timer and its workers wake in the same
        instant of a test's clock, in either order; in real time the window that a claim
        opened ends before the attempt it started times out.
        """
        assert time >= self.now
        while self.open:
            event = self.next_event()
            if event is None or event > time:
                break
            takeover = self.next_takeover()
            self.now = event
            if claim_before_ends and event == time:
                self._fire_schedules()
                self.fill_slots()
            for job in sorted(self.running(), key=lambda job: job.id):
                if job.ends_at == event:
                    self._end_sleep(job)
            if event == takeover:
                self._take_over()
            self._fire_schedules()
            self.fill_slots()
        self.now = time

    def crash(self) -> list[tuple[int, int]]:
        """The process dies: nothing changes in storage; returns the attempts it was running.

        With ``leases_only`` its jobs stay running, held by its owner (whose last heartbeat is
        its last renewal, or its opening), until a queue finds its lease lapsed.
        """
        self.open = False
        running = self.running_here()
        if self.leases_only and running:
            beats = (self.now - self.opened_at) // HEARTBEAT
            dead = SecondOwner(
                heartbeat_at=self.opened_at + HEARTBEAT * beats,
                alive=False,
                registered=self.registered,
            )
            for job in running:
                job.ends_at = None  # its handler is gone with the process
                dead.jobs.add(job.id)
                dead.claims.append((job.id, job.attempts))
            self.crashed.append(dead)
        return [(job.id, job.attempts) for job in running]

    def reopen(self, workers: int, *, cancel_requested: frozenset[int] = frozenset()) -> None:
        """A new queue opens the file: interrupted attempts count, due ticks are enqueued
        (as their schedule's catch-up says), then slots fill.

        ``cancel_requested`` holds running jobs whose cancel was committed before the crash
        (and their handler's end was not): they end ``cancelled``.

        With ``leases_only`` the crashed process's attempts count only once its lease lapsed:
        now if it has, else at a later heartbeat (:meth:`next_takeover`).
        """
        self.open = True
        self.opened_at = self.now
        self.generation += 1
        self.workers = workers
        self.registrations += 1
        self.registered = self.registrations
        if workers == 1:
            self.single_worker_generations.add(self.generation)
        for job_id in cancel_requested & self.held_elsewhere():
            self.jobs[job_id].cancel_requested = True  # held by the crashed process
        for job in self.running_here():
            self._interrupt(job, cancel_requested=job.id in cancel_requested)
        self._take_over()
        self._fire_schedules()
        self.fill_slots()

    def fill_slots(self, *, cancel_on_claim: int | None = None) -> bool:
        """Start the best ready jobs while slots are free; True if ``cancel_on_claim`` started.

        As the queue does, one claim takes jobs for every free slot at once (each counted
        against the limits as it is taken), and only then do they run; the slots their ends
        free are claimed for next.

        ``cancel_on_claim`` names a job whose cancel arrives right after its claim, before its
        handler's outcome: the race of a cancel with a claim in flight.
        """
        claimed = False
        while self.open:
            batch = self._claim_for_free_slots()
            if not batch:
                break
            for job in batch:
                if job.id == cancel_on_claim:
                    claimed = True
                    self.cancel(job.id, fill=False)
                else:
                    self._run(job)
        return claimed

    def _claim_for_free_slots(self) -> list[Job]:
        batch: list[Job] = []
        while len(self.running_here()) < self.workers:
            job = None
            for candidate in self.ready():
                hold = self.held_by(candidate)
                if hold is None:
                    job = candidate
                    break
                self.holds.add(hold)
            if job is None:
                break
            self._claim(job)
            batch.append(job)
        return batch

    def resolve(self, errors: dict[int, str | None]) -> None:
        """Settle which job above it cancelled each job that several may have, by ``errors``
        (the real error of each job)."""
        for job in self.jobs.values():
            if len(job.causes) > 1:
                real = errors.get(job.id) or ""
                for cause, error in job.causes:
                    if error in real:
                        job.cancelled_by, job.error, job.causes = cause, error, [(cause, error)]
                        break

    # --- schedules -------------------------------------------------------------------------
    def _fire_schedules(self) -> None:
        """Enqueue the due ticks of every schedule, earliest first (then by key)."""
        due = sorted(
            (schedule for schedule in self.schedules.values() if schedule.next_run_at <= self.now),
            key=lambda schedule: (schedule.next_run_at, schedule.spec.key),
        )
        for schedule in due:
            spec = schedule.spec
            ticks = spec.cadence.ticks_between(schedule.next_run_at, self.now)
            latest = ticks[-1]
            if spec.catch_up == "all":
                enqueued = ticks[-MAX_CATCH_UP:]
            elif spec.catch_up == "latest" or self.now - latest <= MISSED_AFTER:
                enqueued = [latest]
            else:
                enqueued = []
            for tick in enqueued:
                job = Job(
                    id=self.next_id,
                    name=spec.name,
                    tag=spec.tag,
                    priority=SCHEDULE_PRIORITY,
                    run_at=tick,
                    max_attempts=DEFAULT_MAX_ATTEMPTS,
                    timeout=None,
                    key=None,
                    script=spec.script,
                    status=stored_as(Event.ENQUEUED),
                    created_at=self.now,
                    schedule_key=spec.key,
                )
                self.next_id += 1
                self.jobs[job.id] = job
                self.ticks.append(Tick(spec.key, tick, job.id, self.now))
                schedule.last_run_at, schedule.last_job_id = tick, job.id
            schedule.next_run_at = spec.cadence.first_after(latest)

    # --- dependencies ----------------------------------------------------------------------
    def _ended(self, job: Job) -> None:
        """What ``job``'s end does to the jobs that run after it."""
        if job.status is Status.COMPLETED:
            for dependent in self.dependents.get(job.id, []):
                self._release(self.jobs[dependent])
        elif job.status in (Status.FAILED, Status.CANCELLED):
            self._cancel_below(job)

    def _release(self, job: Job) -> None:
        """A waiting job all of whose dependencies completed becomes pending."""
        if job.status is Status.WAITING and all(
            self.jobs[dep].status is Status.COMPLETED for dep in job.after
        ):
            job.move(Event.RELEASED)
            job.run_at = self.now + job.delay

    def _cancel_below(self, root: Job) -> None:
        """``root`` failed or was cancelled: every waiting job below it is cancelled."""
        error = f"it runs after job {root.id} ({root.name!r}), which ended {root.status.value}"
        cause = root.id if root.cancelled_by is None else root.cancelled_by
        seen: set[int] = set()
        todo = list(self.dependents.get(root.id, []))
        while todo:
            job_id = todo.pop()
            if job_id in seen:
                continue
            seen.add(job_id)
            todo += self.dependents.get(job_id, [])
            job = self.jobs[job_id]
            if job.status is Status.WAITING:
                job.move(Event.CANCELLED)
                job.error, job.cancelled_by = error, cause
                job.causes, job.cancelled_at = [(cause, error)], self.now
            elif job.causes and job.cancelled_at == self.now and (cause, error) not in job.causes:
                # Cancelled in this instant already, for another job above it: which of the
                # two the queue handled first is up to the order their ends reached it.
                job.causes.append((cause, error))

    # --- attempts --------------------------------------------------------------------------
    def _claim(self, job: Job) -> None:
        job.move(Event.STARTED)
        job.attempts += 1
        job.progress = None
        self.starts.append(Start(self.generation, self.now, job.id, job.attempts))
        behaviour = job.script[job.attempts - 1]
        if behaviour.progress is not None:
            job.progress = behaviour.progress

    def never_began(self, job_id: int) -> None:
        """The handler of running job ``job_id``'s attempt never began: a cancel reached the
        pool between its claim and its start (its progress is not reported either)."""
        job = self.jobs[job_id]
        start = next(
            s for s in reversed(self.starts) if (s.job_id, s.attempt) == (job_id, job.attempts)
        )
        self.starts.remove(start)
        self.unstarted.append(start)
        job.progress = None

    def _run(self, job: Job) -> None:
        """The claimed ``job``'s attempt runs: it ends at once, or when it will."""
        behaviour = job.script[job.attempts - 1]
        if behaviour.is_immediate:
            self._outcome(job, behaviour)
        elif job.timeout is not None and job.timeout < behaviour.duration:
            job.ends_at, job.times_out = self.now + job.timeout, True
        else:
            job.ends_at, job.times_out = self.now + behaviour.duration, False

    def _end_sleep(self, job: Job) -> None:
        job.ends_at = None
        if job.times_out:
            job.error = f"timed out after {job.timeout:g} s"
            self._failed(job, backoff(job.attempts))
        else:
            self._complete(job)

    def _outcome(self, job: Job, behaviour: Behaviour) -> None:
        if behaviour.kind == "return":
            self._complete(job)
        elif behaviour.kind == "raise":
            job.error = raise_message(job.tag, job.attempts)
            self._failed(job, backoff(job.attempts))
        elif behaviour.kind == "fail":
            job.error = fail_message(job.tag, job.attempts)
            self._failed(job, None)
        else:
            job.error = f"retry requested (delay={behaviour.retry_delay!r})"
            self._failed(job, behaviour.retry_delay)

    def _complete(self, job: Job) -> None:
        job.result = result_of(job.tag, job.attempts)
        job.move(Event.COMPLETED)
        self._ended(job)

    def _failed(self, job: Job, retry_delay: float | None) -> None:
        if retry_delay is not None and job.attempts < job.max_attempts:
            job.run_at = self.now + retry_delay
            step = self.limits_of(job.name).retry_priority_step
            job.priority = min(job.priority + step, LOWEST_PRIORITY)
            job.move(Event.RETRIED)
        else:
            job.move(Event.FAILED)
            self._ended(job)
