"""The HTCondor dialect's command builders and output parsers.

Samples: ``condor_submit -terse`` and ``condor_q -af:t`` output captured from HTCondor 23.9.6
(Debian trixie's ``htcondor``, the pool of scripts/htcondor-up.sh); the ``JobStatus`` codes from
HTCondor's manual, "Job ClassAd Attributes" (1 Idle, 2 Running, 3 Removed, 4 Completed,
5 Held, 6 Transferring Output, 7 Suspended), and the ``-terse`` form "first - last job id" from
the condor_submit man page (htcondor.readthedocs.io/en/latest/man-pages/condor_submit.html).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_deploy.backends import BackendContext, InstanceState, htcondor
from dask_deploy.backends.batch import BatchCommandError, BatchSettings, Command
from dask_deploy.backends.htcondor import (
    HTCondorBackend,
    cancel_command,
    job_state,
    parse_job_id,
    parse_status,
    scope,
    status_command,
    submit_command,
)

pytestmark = pytest.mark.htcondor  # `pytest -m htcondor` runs every HTCondor test; these need none

SETTINGS = BatchSettings("dask", Path("/srv/dask/worker.sub"), "dask-worker", (), user="alice")
SCOPE = '(DaskDeployment == "dask-deploy/dask" && DaskDeployOwner == "alice")'

# condor_q -af:t ClusterId ProcId JobStatus QDate DaskDeployOwner HoldReason, one line per state;
# the last line is another user's job with the same deployment name (an operator sees it).
CONDOR_Q = """\
11\t0\t1\t1796525900\talice\tundefined
12\t0\t2\t1796525901\talice\tundefined
13\t0\t3\t1796525902\talice\tundefined
14\t0\t4\t1796525903\talice\tundefined
15\t0\t5\t1796525904\talice\ttest hold by operator (by user dask-deploy-condor)
16\t0\t6\t1796525905\talice\tundefined
17\t0\t7\t1796525906\talice\tundefined
18\t0\t9\t1796525907\talice\tundefined
19\t0\t2\t1796525908\tbob\tundefined
"""


def test_submit_appends_the_deployment_and_owner_attributes() -> None:
    command = submit_command(SETTINGS)
    assert command == Command(
        (
            "condor_submit",
            "-terse",
            "-batch-name",
            "dask-worker",
            "-append",
            '+DaskDeployment = "dask-deploy/dask"',
            "-append",
            '+DaskDeployOwner = "alice"',
            "/srv/dask/worker.sub",
        )
    )


def test_submit_args_come_before_the_submit_description() -> None:
    settings = BatchSettings(
        "dask", Path("w.sub"), "dw", ("-append", "request_cpus = 2"), user="alice"
    )
    assert submit_command(settings).argv[-3:] == ("-append", "request_cpus = 2", "w.sub")


def test_status_lists_only_this_deployment_of_this_owner() -> None:
    assert status_command(SETTINGS).argv == (
        "condor_q",
        "-constraint",
        SCOPE,
        "-af:t",
        "ClusterId",
        "ProcId",
        "JobStatus",
        "QDate",
        "DaskDeployOwner",
        "HoldReason",
    )


def test_cancel_names_exactly_the_ids_within_the_scope() -> None:
    command = cancel_command(SETTINGS, {"12.0", "3.1"})
    assert command.argv == (
        "condor_rm",
        "-constraint",
        f"((ClusterId == 12 && ProcId == 0) || (ClusterId == 3 && ProcId == 1)) && {SCOPE}",
    )


def test_cancel_refuses_what_is_not_a_job_id() -> None:
    with pytest.raises(BatchCommandError, match="not an HTCondor job id"):
        cancel_command(SETTINGS, {"12.0 || true"})


def test_a_name_with_a_quote_is_refused_rather_than_widening_the_constraint() -> None:
    with pytest.raises(BatchCommandError, match="ClassAd string"):
        scope(BatchSettings('x" || true || "', Path("w.sub"), "dw", (), user="alice"))


def test_parse_job_id_reads_terse_output() -> None:
    assert parse_job_id("1.0 - 1.0\n") == "1.0"
    assert parse_job_id("WARNING: something\n4711.0 - 4711.0\n") == "4711.0"


@pytest.mark.parametrize("stdout", ["", "Submitting job(s).\n", "7.0 - 7.3\n"])
def test_parse_job_id_refuses_anything_but_one_job(stdout: str) -> None:
    with pytest.raises(BatchCommandError, match="condor_submit printed"):
        parse_job_id(stdout)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("1", InstanceState.PENDING),
        ("2", InstanceState.RUNNING),
        ("3", InstanceState.EXITED),
        ("4", InstanceState.EXITED),
        ("5", InstanceState.EXITED),
        ("6", InstanceState.RUNNING),
        ("7", InstanceState.RUNNING),
        ("9", InstanceState.RUNNING),  # unknown: holds its job rather than a duplicate
    ],
)
def test_job_state(status: str, state: InstanceState) -> None:
    assert job_state(status) is state


def test_parse_status_keeps_this_owner_and_gives_the_hold_reason() -> None:
    jobs = {job.instance.name: job for job in parse_status(CONDOR_Q, SETTINGS)}
    assert "19.0" not in jobs  # bob's
    assert sorted(jobs) == [f"{n}.0" for n in range(11, 19)]
    assert jobs["11.0"].instance.state is InstanceState.PENDING
    assert jobs["11.0"].reason == "idle"
    assert jobs["11.0"].instance.requested_at == 1796525900.0
    held = jobs["15.0"].instance
    assert held.state is InstanceState.EXITED
    assert held.reason == "test hold by operator (by user dask-deploy-condor)"
    assert all(jobs[n].instance.reason is None for n in jobs if n != "15.0")


def test_held_jobs_are_removed_once_and_their_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    ran: list[tuple[str, ...]] = []

    async def runner(command: Command, timeout: float) -> str:
        ran.append(command.argv)
        return CONDOR_Q if command.argv[0] == "condor_q" else ""

    backend = HTCondorBackend(SETTINGS)
    backend.runner = runner
    backend.settings = BatchSettings(
        "dask", Path("w.sub"), "dw", (), command_timeout=30.0, status_interval=0.0, user="alice"
    )
    with caplog.at_level("WARNING"):
        asyncio.run(backend.instances())
        asyncio.run(backend.instances())
    removals = [argv for argv in ran if argv[0] == "condor_rm"]
    assert len(removals) == 1
    assert "(ClusterId == 15 && ProcId == 0)" in removals[0][2]
    assert "job 15.0 held by HTCondor: test hold by operator" in caplog.text


def test_create_through_the_registry(tmp_path: Path) -> None:
    submit = tmp_path / "worker.sub"
    submit.write_text("queue 1\n")
    backend = htcondor.create(
        BackendContext("dask", "tcp://127.0.0.1:8786", {"worker_script": str(submit)})
    )
    assert isinstance(backend, HTCondorBackend)
