"""The batch core's own pieces: the registry factory of a dialect, and how a job's instance says
why it is not running (queued for the batch system's reason, or stuck)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, Instance, InstanceState, load_backend_factory
from dask_deploy.backends.batch import BatchBackend, BatchJob, as_seen_by_the_loop
from dask_deploy.contract import ReasonKind

NOW = 1_800_000_000.0


@pytest.mark.parametrize("name", ["slurm", "sge", "pbs", "lsf"])
def test_each_dialect_registers_a_batch_backend_over_its_own_module(
    name: str, tmp_path: Path
) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    factory = load_backend_factory(name)
    backend = factory(BackendContext("dask", "tcp://127.0.0.1:1", {"worker_script": str(script)}))
    assert isinstance(backend, BatchBackend)
    assert backend.dialect.__name__ == f"dask_deploy.backends.{name}"  # type: ignore[attr-defined]
    assert backend.settings.job_name == "dask-worker"
    with pytest.raises(SettingsError) as error:  # options are checked as for every batch backend
        factory(BackendContext("dask", "tcp://127.0.0.1:1", {"worker_script": 1}))
    assert error.value.key == "backend.options.worker_script"


def test_a_pending_job_is_queued_with_the_batch_systems_reason_or_queued() -> None:
    waits = BatchJob(Instance("1", InstanceState.PENDING, NOW), None, "Resources")
    fresh = BatchJob(Instance("2", InstanceState.PENDING, NOW), None)
    for job, reason in ((waits, "Resources"), (fresh, "queued")):
        instance = as_seen_by_the_loop(job, NOW, 0.0)
        assert (instance.reason, instance.reason_kind) == (reason, ReasonKind.QUEUED)
        assert instance.queued and not instance.stuck


def test_a_job_the_batch_system_holds_stays_stuck() -> None:
    held = Instance("3.0", InstanceState.PENDING, NOW, "held by the administrator")
    instance = as_seen_by_the_loop(BatchJob(held, None, "idle"), NOW, 0.0)
    assert instance.stuck and not instance.queued
    assert instance.reason == "held by the administrator"


def test_running_and_ended_jobs_carry_no_reason() -> None:
    running = BatchJob(Instance("4", InstanceState.RUNNING, NOW), NOW + 3600)
    ended = BatchJob(Instance("5", InstanceState.EXITED, NOW), None)
    for job in (running, ended):
        instance = as_seen_by_the_loop(job, NOW, 60.0)
        assert instance.reason is None and not instance.queued and not instance.stuck
