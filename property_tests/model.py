"""The reference model: the job life cycle of DESIGN §2 in plain Python, and what a queue with
N worker slots does to its jobs as time passes.

It knows nothing about SQL, actors or channels. It is a discrete-event simulation: when a slot is
free it starts the best ready job, ordered by ``(priority, run_at, id)``; a handler's behaviour for
each attempt is known in advance, so the model knows when and how every attempt ends. Times are
seconds on the test's virtual clock.
"""

from __future__ import annotations

import copy
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
    """A job to enqueue, as the state machine drew it."""

    name: str
    tag: int
    priority: int
    delay: float
    max_attempts: int | None
    timeout: float | None
    key: str | None
    script: tuple[Behaviour, ...]


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

    def move(self, event: Event) -> None:
        status = decide(self.status, event)
        assert (self.status, status) in LEGAL, f"illegal {self.status} -> {status} for {self.id}"
        self.status = status


@attrs.frozen
class Start:
    """Attempt ``attempt`` of job ``job_id`` started at ``time`` in queue ``generation``."""

    generation: int
    time: float
    job_id: int
    attempt: int


class Model:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.generation = 0
        self.open = True
        self.now = 0.0
        self.jobs: dict[int, Job] = {}
        self.keys: dict[str, int] = {}
        self.next_id = 1
        self.starts: list[Start] = []
        self.single_worker_generations: set[int] = {0} if workers == 1 else set()

    def copy(self) -> Model:
        return copy.deepcopy(self)

    # --- what the model sees ---------------------------------------------------------------
    def running(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.status is Status.RUNNING]

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
        """When the next attempt ends or scheduled job comes due, if ever."""
        times = [job.ends_at for job in self.running() if job.ends_at is not None]
        times += [
            job.run_at
            for job in self.jobs.values()
            if job.status is Status.PENDING and job.run_at > self.now
        ]
        return min(times, default=None)

    # --- steps -----------------------------------------------------------------------------
    def enqueue(self, specs: list[Spec], *, fill: bool = True) -> list[int]:
        """The ids ``enqueue_many(specs)`` answers with; a held key answers with its job."""
        ids = []
        for spec in specs:
            if spec.key is not None and spec.key in self.keys:
                ids.append(self.keys[spec.key])
                continue
            job = Job(
                id=self.next_id,
                name=spec.name,
                tag=spec.tag,
                priority=spec.priority,
                run_at=self.now + spec.delay,
                max_attempts=spec.max_attempts or DEFAULT_MAX_ATTEMPTS,
                timeout=spec.timeout,
                key=spec.key,
                script=spec.script,
            )
            self.next_id += 1
            self.jobs[job.id] = job
            if spec.key is not None:
                self.keys[spec.key] = job.id
            ids.append(job.id)
        if fill:
            self.fill_slots()
        return ids

    def cancel(self, job_id: int, *, fill: bool = True) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status in TERMINAL:
            return False
        if job.status is Status.PENDING:
            job.error = "cancelled before it ran"
        else:
            job.error = "cancelled while running"
            job.ends_at = None
        job.move(Event.CANCELLED)
        if fill:
            self.fill_slots()
        return True

    def requeue(self, job_id: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status not in (Status.FAILED, Status.CANCELLED):
            return False
        job.move(Event.REQUEUED)
        job.attempts = 0
        job.run_at = self.now
        job.result = job.error = job.progress = None
        self.fill_slots()
        return True

    def advance_to(self, time: float) -> None:
        """Let time pass until ``time``: attempts end, scheduled jobs come due, slots refill."""
        assert time >= self.now
        while self.open:
            event = self.next_event()
            if event is None or event > time:
                break
            self.now = event
            for job in sorted(self.running(), key=lambda job: job.id):
                if job.ends_at == event:
                    self._end_sleep(job)
            self.fill_slots()
        self.now = time

    def crash(self) -> list[tuple[int, int]]:
        """The process dies: nothing changes in storage; returns the attempts it was running."""
        self.open = False
        return [(job.id, job.attempts) for job in self.running()]

    def reopen(self, workers: int, *, cancel_requested: frozenset[int] = frozenset()) -> None:
        """A new queue opens the file: interrupted attempts count, then slots fill.

        ``cancel_requested`` holds running jobs whose cancel was committed before the crash
        (and their handler's end was not): they end ``cancelled``.
        """
        self.open = True
        self.generation += 1
        self.workers = workers
        if workers == 1:
            self.single_worker_generations.add(self.generation)
        for job in self.running():
            job.ends_at = None
            job.error = (
                f"attempt {job.attempts} of {job.max_attempts} was interrupted: the process "
                "running it stopped"
            )
            job.move(
                end_attempt(
                    Event.RECOVERED,
                    attempts=job.attempts,
                    max_attempts=job.max_attempts,
                    cancel_requested=job.id in cancel_requested,
                )
            )
        self.fill_slots()

    def fill_slots(self, *, cancel_on_claim: int | None = None) -> bool:
        """Start the best ready jobs while slots are free; True if ``cancel_on_claim`` started.

        ``cancel_on_claim`` names a job whose cancel arrives right after its claim, before its
        handler's outcome: the race of a cancel with a claim in flight.
        """
        claimed = False
        while self.open and len(self.running()) < self.workers:
            ready = self.ready()
            if not ready:
                break
            job = ready[0]
            if job.id == cancel_on_claim:
                claimed = True
                self._start(job, outcome=False)
                self.cancel(job.id, fill=False)
            else:
                self._start(job)
        return claimed

    def _start(self, job: Job, *, outcome: bool = True) -> None:
        job.move(Event.STARTED)
        job.attempts += 1
        job.progress = None
        self.starts.append(Start(self.generation, self.now, job.id, job.attempts))
        behaviour = job.script[job.attempts - 1]
        if behaviour.progress is not None:
            job.progress = behaviour.progress
        if not outcome:
            return
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

    def _failed(self, job: Job, retry_delay: float | None) -> None:
        if retry_delay is not None and job.attempts < job.max_attempts:
            job.run_at = self.now + retry_delay
            job.move(Event.RETRIED)
        else:
            job.move(Event.FAILED)
