"""The control loop's steps as pure functions: the sidecar and the simulator call the same ones.

A tick of :class:`dask_deploy.scaler.Scaler` (and of the simulator's
:class:`~dask_deploy.simulate.PolicyDriver`) is, in this order:

1. :func:`find_stale`: which pending instances stayed unconnected past the startup timeout
   (they are removed, then the observation goes on without them: :func:`without_instances`);
2. :func:`decide`: hide the workers already retiring (:func:`without_retiring`), ask the
   policy, :func:`enforce` the invariants whatever it said, and hold a scale-down the scheduler
   just refused (:func:`hold_if_refused`); the outcome is one typed :class:`DecisionRecord`;
3. acting (I/O, the caller's), then :func:`remember_refused` for the names the scheduler kept.

What the loop remembers between ticks is one frozen :class:`LoopMemory`, passed in and returned,
so these functions read no clock and do no I/O: the same code decides in the sidecar, in unit
tests and on the simulator's virtual clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from .contract import Decision, Hold, Instance, Observation, Policy, ScaleDown, ScaleUp

#: Seconds before a worker the scheduler refused to retire is asked again.
RETRY_REFUSED_AFTER = 30.0


@dataclass(frozen=True)
class Bounds:
    """The ``policy.minimum`` and ``policy.maximum`` the loop holds every decision to."""

    minimum: int
    maximum: int


@dataclass(frozen=True)
class LoopMemory:
    """What the loop keeps between ticks; only the step functions make a new one."""

    started_at: float
    """When this loop started: a restarted scaler gives every instance a full startup timeout."""
    last_connected: Mapping[str, float] = field(default_factory=dict)
    """Instance name -> the last time its worker was seen connected to the scheduler."""
    refused: Mapping[str, float] = field(default_factory=dict)
    """Worker name -> when the scheduler last refused to retire it."""


@dataclass(frozen=True)
class DecisionRecord:
    """One tick's decision, as logged, counted and compared (the simulator's and the bench's).

    ``target`` has one meaning for every kind: the number of requested instances the decision
    leads to (a scale-down of 2 out of 5 has target 3; a hold keeps the count). It is ``None``
    only where the recorder cannot know it (the log of ``distributed``'s own Adaptive).
    """

    at: float
    kind: Literal["up", "down", "hold"]
    target: int | None
    reason: str
    released: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """The outcome of :func:`decide`."""

    observation: Observation
    """What the policy saw: the tick's observation without the workers already retiring."""
    asked: Decision
    """The policy's own answer."""
    decision: Decision
    """What the loop does: ``asked`` within the invariants, or held after a refusal."""
    notes: tuple[str, ...]
    """One line for each way the loop changed the policy's answer (to be logged)."""
    memory: LoopMemory
    record: DecisionRecord


def unconnected_since(memory: LoopMemory, instance: Instance) -> float:
    """When the startup clock of ``instance`` started.

    The latest of: its request, the start of this loop (a restarted scaler gives every
    instance a full timeout) and the last time its worker was seen connected (a scheduler
    restart is not a startup failure).
    """
    connected = memory.last_connected.get(instance.name, instance.requested_at)
    return max(instance.requested_at, memory.started_at, connected)


def find_stale(
    memory: LoopMemory,
    observation: Observation,
    now: float,
    startup_timeout: float,
) -> tuple[LoopMemory, tuple[Instance, ...]]:
    """Note who is connected now; return the pending instances past the startup timeout."""
    current = {i.name for i in observation.instances}
    last_connected = {n: t for n, t in memory.last_connected.items() if n in current}
    last_connected.update((name, now) for name in observation.registered_names)
    # Stuck for a reason a replacement would share, or queued for a reason the resource manager
    # reports (Instance.reason): not stale; its startup clock starts once it is let go.
    last_connected.update((i.name, now) for i in observation.instances if i.reason is not None)
    memory = replace(memory, last_connected=last_connected)
    stale = tuple(
        i for i in observation.pending if now - unconnected_since(memory, i) > startup_timeout
    )
    return memory, stale


def without_instances(observation: Observation, names: Collection[str]) -> Observation:
    """The observation after the backend removed these instances."""
    if not names:
        return observation
    gone = set(names)
    return replace(
        observation, instances=tuple(i for i in observation.instances if i.name not in gone)
    )


def without_retiring(observation: Observation) -> Observation:
    """The observation without the workers the scheduler is retiring, nor their instances.

    A retiring worker (``closing_gracefully``: its data is being moved away) is already on its
    way out. Counted as requested, it makes the policy release another worker for the same
    decrease: a scaler restarted during a long retirement (or whose retire call timed out)
    would retire two workers where one was asked.
    """
    retiring = {w.name for w in observation.workers if w.status == "closing_gracefully"}
    if not retiring:
        return observation
    return replace(
        observation,
        workers=tuple(w for w in observation.workers if w.name not in retiring),
        instances=tuple(i for i in observation.instances if i.name not in retiring),
    )


def enforce(
    decision: Decision, observation: Observation, bounds: Bounds, policy_name: str
) -> tuple[Decision, tuple[str, ...]]:
    """``decision`` within the loop's invariants, and a line for each change made to it.

    Whatever a policy (a plug-in included) answers: a scale-up target is clipped to
    ``[minimum, maximum]``; a scale-down names only instances this backend launched (listed in
    ``observation.instances``), each once, and never takes the requested count below
    ``minimum``. What is left of a decision that asked for nothing allowed is a hold.
    """
    requested = len(observation.requested)
    if isinstance(decision, ScaleUp):
        target = min(max(decision.n, bounds.minimum), bounds.maximum)
        if target == decision.n:
            return decision, ()
        limit = "maximum" if decision.n > bounds.maximum else "minimum"
        note = (
            f"policy {policy_name} asked to scale up to {decision.n}; clipped to {target} "
            f"(policy.{limit}={getattr(bounds, limit)})"
        )
        if target <= requested:
            held = Hold(f"{decision.reason}; {target} already requested", decision.numbers)
            return held, (note,)
        return ScaleUp(target, decision.reason, decision.numbers), (note,)
    if isinstance(decision, ScaleDown):
        ours = {i.name for i in observation.instances}
        notes: list[str] = []
        foreign = sorted({n for n in decision.names if n not in ours})
        if foreign:
            notes.append(
                f"policy {policy_name} named {', '.join(foreign)}: not an instance this backend "
                "launched (or already retiring); refused"
            )
        names = tuple(dict.fromkeys(n for n in decision.names if n in ours))
        allowed = max(0, requested - bounds.minimum)
        if len(names) > allowed:
            notes.append(
                f"policy {policy_name} asked to release {len(names)} of {requested}; "
                f"limited to {allowed} (policy.minimum={bounds.minimum})"
            )
            names = names[:allowed]
        if not notes:
            return decision, ()
        if not names:
            return Hold(f"{decision.reason}; nothing it may release", decision.numbers), tuple(
                notes
            )
        return ScaleDown(names, decision.reason, decision.numbers), tuple(notes)
    return decision, ()


def hold_if_refused(
    memory: LoopMemory, decision: Decision, now: float
) -> tuple[LoopMemory, Decision]:
    """Do not ask the scheduler again and again to retire workers it just refused."""
    refused = {n: at for n, at in memory.refused.items() if now - at < RETRY_REFUSED_AFTER}
    memory = replace(memory, refused=refused)
    if isinstance(decision, ScaleDown) and all(n in refused for n in decision.names):
        return memory, Hold(
            f"scale-down of {', '.join(decision.names)} held: the scheduler refused to "
            f"retire them; asking again {RETRY_REFUSED_AFTER:g}s after the refusal",
            decision.numbers,
        )
    return memory, decision


def remember_refused(memory: LoopMemory, names: Collection[str], now: float) -> LoopMemory:
    """Note the workers the scheduler did not retire when asked at ``now``."""
    if not names:
        return memory
    return replace(memory, refused={**memory.refused, **dict.fromkeys(names, now)})


def record(now: float, decision: Decision, observation: Observation) -> DecisionRecord:
    """The typed record of ``decision`` taken on ``observation`` at ``now``."""
    requested = len(observation.requested)
    if isinstance(decision, ScaleUp):
        return DecisionRecord(now, "up", decision.n, decision.reason)
    if isinstance(decision, ScaleDown):
        released = decision.names
        return DecisionRecord(now, "down", requested - len(released), decision.reason, released)
    return DecisionRecord(now, "hold", requested, decision.reason)


def hold_if_stuck(decision: Decision, observation: Observation) -> Decision:
    """No more instances while those asked for cannot start: they would be stuck too."""
    stuck = [i for i in observation.pending if i.stuck]
    if not isinstance(decision, ScaleUp) or not stuck:
        return decision
    reasons = sorted({str(i.reason) for i in stuck})
    return Hold(
        f"scale-up to {decision.n} held: {len(stuck)} requested instance(s) cannot start "
        f"({'; '.join(reasons)})",
        decision.numbers,
    )


def decide(
    memory: LoopMemory,
    observation: Observation,
    now: float,
    policy: Policy,
    bounds: Bounds,
    policy_name: str,
) -> Step:
    """Ask the policy on what is not already leaving, enforce the invariants, hold refusals."""
    visible = without_retiring(observation)
    asked = policy.decide(visible, now)
    enforced, notes = enforce(asked, visible, bounds, policy_name)
    memory, decision = hold_if_refused(memory, enforced, now)
    decision = hold_if_stuck(decision, visible)
    return Step(visible, asked, decision, notes, memory, record(now, decision, visible))
