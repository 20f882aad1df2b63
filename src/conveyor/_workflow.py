"""Workflows: jobs that run after others, built as a graph and stored in one transaction.

Pure values: a :class:`Workflow` only records steps; :meth:`Queue.enqueue_workflow` stores
them. A step can only run after steps added before it (or jobs already stored), so a
workflow is a DAG by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ._errors import InvalidArgument
from ._job import JSON, JobSpec, job_ids


@attrs.frozen
class Step:
    """A job of a :class:`Workflow`: its position in it, its spec, and the positions of the
    steps it runs after."""

    index: int
    spec: JobSpec
    after_steps: tuple[int, ...]
    workflow: Workflow = attrs.field(repr=False, eq=False)


@attrs.define
class Workflow:
    """Jobs and the order between them: each step runs once every step (or stored job) it
    runs ``after`` has completed; a failed or cancelled one cancels the steps after it."""

    steps: list[Step] = attrs.field(factory=list, init=False)

    def add(
        self,
        name: str,
        payload: JSON = None,
        *,
        after: Iterable[Step | int] = (),
        **options: Any,
    ) -> Step:
        """Add a job for handler ``name``; ``after`` takes steps of this workflow and ids of
        stored jobs; ``options`` are those of :meth:`Queue.enqueue`. The new step."""
        steps, stored = self._split(after)
        spec = JobSpec(name, payload, after=stored, **options)
        return self._append(spec, steps)

    def add_spec(self, spec: JobSpec, *, after: Iterable[Step | int] = ()) -> Step:
        """Add ``spec`` (its own ``after`` ids kept), after ``after`` as in :meth:`add`."""
        if not isinstance(spec, JobSpec):
            raise InvalidArgument(f"a workflow step is a conveyor.JobSpec, not {spec!r}")
        steps, stored = self._split(after)
        return self._append(attrs.evolve(spec, after=(*spec.after, *stored)), steps)

    @classmethod
    def chain(cls, specs: Iterable[JobSpec]) -> Workflow:
        """A workflow running ``specs`` one after the other, in order."""
        flow = cls()
        previous: list[Step] = []
        for spec in specs:
            previous = [flow.add_spec(spec, after=previous)]
        return flow

    @classmethod
    def group(cls, specs: Iterable[JobSpec], then: JobSpec | None = None) -> Workflow:
        """A workflow running ``specs`` in any order, and ``then`` once all of them completed
        (a chord)."""
        flow = cls()
        members = [flow.add_spec(spec) for spec in specs]
        if then is not None:
            flow.add_spec(then, after=members)
        return flow

    def _split(self, after: Iterable[Step | int]) -> tuple[list[int], tuple[int, ...]]:
        if isinstance(after, Step | int) or not hasattr(after, "__iter__"):
            raise InvalidArgument(f"after must be a list of steps and job ids, not {after!r}")
        steps: list[int] = []
        stored: list[int] = []
        for item in after:
            if isinstance(item, Step):
                if item.workflow is not self:
                    raise InvalidArgument(f"{item!r} belongs to another workflow")
                steps.append(item.index)
            else:
                stored.append(item)
        return list(dict.fromkeys(steps)), job_ids(stored)

    def _append(self, spec: JobSpec, steps: Sequence[int]) -> Step:
        step = Step(len(self.steps), spec, tuple(steps), self)
        self.steps.append(step)
        return step
