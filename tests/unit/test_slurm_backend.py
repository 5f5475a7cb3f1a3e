"""The SLURM backend's command builders and output parsers, with squeue samples for every state."""

from __future__ import annotations

import os
import pwd
from dataclasses import replace
from pathlib import Path

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, Instance, InstanceState, batch, slurm
from dask_deploy.backends.batch import (
    BatchBackend,
    BatchCommandError,
    BatchJob,
    BatchSettings,
    Command,
    as_seen_by_the_loop,
)
from dask_deploy.backends.slurm import (
    cancel_command,
    job_state,
    parse_job_id,
    parse_jobs,
    parse_status,
    status_command,
    submit_command,
)
from dask_deploy.contract import ReasonKind

pytestmark = pytest.mark.slurm  # `pytest -m slurm` runs every SLURM test; these need no SLURM

SETTINGS = BatchSettings("dask", Path("/opt/dask/worker-job.sh"), "dask-worker", (), user="alice")
COMMENT = "dask-deploy/dask"

# One line per state squeue can print (SLURM 22.05, `--states=all --format=%i|%T|%V|%e|%u|%r|%k`,
# SLURM_TIME_FORMAT=%s): pending jobs have no end yet, ended ones stay listed for MinJobAge;
# the reason is "None" for jobs that do not wait.
SQUEUE_EVERY_STATE = """\
101|PENDING|1795869283|N/A|alice|Resources|dask-deploy/dask
102|CONFIGURING|1795869283|1795872883|alice|None|dask-deploy/dask
103|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask
104|COMPLETING|1795869283|1795869290|alice|None|dask-deploy/dask
105|COMPLETED|1795869283|1795869287|alice|None|dask-deploy/dask
106|CANCELLED|1795869283|1795869288|alice|None|dask-deploy/dask
107|FAILED|1795869283|1795869284|alice|None|dask-deploy/dask
108|TIMEOUT|1795869283|1795872883|alice|None|dask-deploy/dask
109|NODE_FAIL|1795869283|1795869300|alice|None|dask-deploy/dask
110|OUT_OF_MEMORY|1795869283|1795869300|alice|None|dask-deploy/dask
111|PREEMPTED|1795869283|1795869300|alice|None|dask-deploy/dask
112|BOOT_FAIL|1795869283|1795869300|alice|None|dask-deploy/dask
113|DEADLINE|1795869283|1795869300|alice|None|dask-deploy/dask
114|SUSPENDED|1795869283|1795872883|alice|None|dask-deploy/dask
115|REQUEUED|1795869283|Unknown|alice|BeginTime|dask-deploy/dask
116|REQUEUE_HOLD|1795869283|Unknown|alice|JobHeldAdmin|dask-deploy/dask
117|SIGNALING|1795869283|1795872883|alice|None|dask-deploy/dask
118|STAGE_OUT|1795869283|1795872883|alice|None|dask-deploy/dask
119|SPECIAL_EXIT|1795869283|1795869300|alice|None|dask-deploy/dask
120|RESIZING|1795869283|1795872883|alice|None|dask-deploy/dask
121|STOPPED|1795869283|1795872883|alice|None|dask-deploy/dask
122|REVOKED|1795869283|1795869300|alice|None|dask-deploy/dask
"""

EXPECTED_STATES = {
    "101": InstanceState.PENDING,
    "102": InstanceState.PENDING,
    "103": InstanceState.RUNNING,
    "104": InstanceState.EXITED,
    "105": InstanceState.EXITED,
    "106": InstanceState.EXITED,
    "107": InstanceState.EXITED,
    "108": InstanceState.EXITED,
    "109": InstanceState.EXITED,
    "110": InstanceState.EXITED,
    "111": InstanceState.EXITED,
    "112": InstanceState.EXITED,
    "113": InstanceState.EXITED,
    "114": InstanceState.RUNNING,
    "115": InstanceState.PENDING,
    "116": InstanceState.PENDING,
    "117": InstanceState.RUNNING,
    "118": InstanceState.EXITED,
    "119": InstanceState.EXITED,
    "120": InstanceState.RUNNING,
    "121": InstanceState.RUNNING,
    "122": InstanceState.EXITED,
}


def test_every_squeue_state_maps_to_pending_running_or_exited() -> None:
    jobs = parse_status(SQUEUE_EVERY_STATE, SETTINGS)
    assert {job.instance.name: job.instance.state for job in jobs} == EXPECTED_STATES


def test_requested_at_is_the_submit_time() -> None:
    jobs = parse_status(SQUEUE_EVERY_STATE, SETTINGS)
    assert {job.instance.requested_at for job in jobs} == {1795869283.0}


def test_running_jobs_report_their_expected_end_and_pending_ones_none() -> None:
    ends = {job.instance.name: job.ends_at for job in parse_status(SQUEUE_EVERY_STATE, SETTINGS)}
    assert ends["103"] == 1795872883.0
    assert ends["101"] is None
    assert ends["102"] is None  # CONFIGURING has not started the script yet
    assert ends["105"] is None


def test_jobs_of_other_deployments_are_ignored() -> None:
    output = (
        "1|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n"
        "2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/other\n"
        "3|RUNNING|1795869283|1795872883|alice|None|(null)\n"
        "4|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask|with a pipe\n"
    )
    assert [job.instance.name for job in parse_jobs(output, COMMENT, "alice")] == ["1"]


def test_jobs_of_another_user_with_the_same_deployment_name_are_ignored() -> None:
    output = (
        "1|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n"
        "2|RUNNING|1795869283|1795872883|bob|None|dask-deploy/dask\n"
    )
    assert [job.instance.name for job in parse_status(output, SETTINGS)] == ["1"]


def test_a_pending_job_carries_the_reason_it_waits_and_others_none() -> None:
    reasons = {job.instance.name: job.reason for job in parse_status(SQUEUE_EVERY_STATE, SETTINGS)}
    assert reasons["101"] == "Resources"
    assert reasons["116"] == "JobHeldAdmin"
    assert reasons["103"] is None
    assert reasons["105"] is None


def test_empty_squeue_output_is_no_jobs() -> None:
    assert parse_status("", SETTINGS) == []
    assert parse_status("\n", SETTINGS) == []


def test_a_state_slurm_adds_later_holds_its_job() -> None:
    assert job_state("SOMETHING_NEW") is InstanceState.RUNNING


def test_sbatch_parsable_output_gives_the_job_id() -> None:
    assert parse_job_id("4711\n") == "4711"
    assert parse_job_id("4711;cluster\n") == "4711"


def test_sbatch_output_without_a_job_id_is_an_error() -> None:
    with pytest.raises(BatchCommandError, match="expected a job id"):
        parse_job_id("sbatch: error: Batch job submission failed\n")


def test_submit_names_the_job_and_marks_it_with_the_deployment() -> None:
    command = submit_command(SETTINGS)
    assert command.argv == (
        "sbatch",
        "--parsable",
        "--job-name=dask-worker",
        "--comment=dask-deploy/dask",
        "/opt/dask/worker-job.sh",
    )


def test_submit_args_come_before_the_script() -> None:
    settings = BatchSettings("dask", Path("w.sh"), "dask-worker", ("--qos=high",))
    assert submit_command(settings).argv[-2:] == ("--qos=high", "w.sh")


def test_list_filters_by_user_and_job_name_includes_ended_jobs_and_asks_for_unix_times() -> None:
    command = status_command(SETTINGS)
    assert "--user=alice" in command.argv
    assert "--name=dask-worker" in command.argv
    assert "--states=all" in command.argv
    assert "--noheader" in command.argv
    assert command.env == {"SLURM_TIME_FORMAT": "%s"}


def test_cancel_names_exactly_the_job_ids_the_user_and_the_job_name() -> None:
    command = cancel_command(SETTINGS, {"12", "10"})
    assert command.argv == (
        "scancel",
        "--quiet",
        "--user=alice",
        "--name=dask-worker",
        "10",
        "12",
    )


def test_options_default_the_job_name_from_the_deployment(tmp_path: Path) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    context = BackendContext("dask", "tcp://127.0.0.1:8786", {"worker_script": str(script)})
    settings = slurm.load_settings(context)
    assert settings.job_name == "dask-worker"
    assert settings.comment == "dask-deploy/dask"
    assert settings.command_timeout == slurm.DEFAULT_COMMAND_TIMEOUT == 30
    assert settings.status_interval == batch.DEFAULT_STATUS_INTERVAL == 10
    assert settings.user == pwd.getpwuid(os.geteuid()).pw_name


def test_options_take_a_command_timeout(tmp_path: Path) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    options = {"worker_script": str(script), "command_timeout": 2.5}
    settings = slurm.load_settings(BackendContext("dask", "tcp://127.0.0.1:8786", options))
    assert settings.command_timeout == 2.5


async def test_a_command_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    # Like an squeue waiting on a stopped slurmctld: it must not hold the tick longer.
    pid_file = tmp_path / "pid"
    hang = Command(("sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"), {})
    # 3 s: time for a loaded machine to start sh and let it write its pid before the kill.
    with pytest.raises(BatchCommandError, match=r"within 3s .*command_timeout"):
        await batch.run_command(hang, timeout=3)
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()


async def test_a_failing_command_raises_with_its_stderr() -> None:
    failing = Command(("sh", "-c", "echo 'Unable to contact slurm controller' >&2; exit 1"), {})
    with pytest.raises(BatchCommandError, match="exited 1: Unable to contact slurm controller"):
        await batch.run_command(failing, timeout=5)


async def test_an_exit_status_that_means_no_job_listed_reads_as_empty_output() -> None:
    nothing = Command(("sh", "-c", "exit 153"), found_nothing=frozenset({153}))
    assert await batch.run_command(nothing, timeout=5) == ""
    # The same status after some output, or from a command that does not declare it, fails.
    printed = Command(("sh", "-c", "echo 'Job Id: 7'; exit 153"), found_nothing=frozenset({153}))
    with pytest.raises(BatchCommandError, match="exited 153"):
        await batch.run_command(printed, timeout=5)
    with pytest.raises(BatchCommandError, match="exited 153"):
        await batch.run_command(Command(("sh", "-c", "exit 153")), timeout=5)


async def test_every_command_runs_with_the_configured_timeout() -> None:
    fake = FakeSlurm("2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n")
    settings = replace(SETTINGS, command_timeout=7.0, status_interval=0)
    backend = fake.backend(settings)
    await backend.scale_up(2)
    await backend.scale_down(["2"])
    assert [argv[0] for argv in fake.commands] == ["squeue", "sbatch", "squeue", "scancel"]
    assert fake.timeouts == {7.0}


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "backend.options.worker_script"),
        ({"worker_script": "/no/such/script.sh"}, "backend.options.worker_script"),
        ({"worker_script": "SCRIPT", "job_name": "a b"}, "backend.options.job_name"),
        ({"worker_script": "SCRIPT", "submit_args": "--qos=x"}, "backend.options.submit_args"),
        ({"worker_script": "SCRIPT", "partition": "x"}, "backend.options.partition"),
        ({"worker_script": "SCRIPT", "command_timeout": 0}, "backend.options.command_timeout"),
        ({"worker_script": "SCRIPT", "command_timeout": -5}, "backend.options.command_timeout"),
        ({"worker_script": "SCRIPT", "command_timeout": "9"}, "backend.options.command_timeout"),
        ({"worker_script": "SCRIPT", "command_timeout": True}, "backend.options.command_timeout"),
        ({"worker_script": "SCRIPT", "status_interval": -1}, "backend.options.status_interval"),
        ({"worker_script": "SCRIPT", "status_interval": "9"}, "backend.options.status_interval"),
    ],
)
def test_bad_options_name_the_key(tmp_path: Path, options: dict[str, object], key: str) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    options = {k: str(script) if v == "SCRIPT" else v for k, v in options.items()}
    with pytest.raises(SettingsError) as error:
        slurm.load_settings(BackendContext("dask", "tcp://127.0.0.1:8786", options))
    assert error.value.key == key


#: The tests' clock: after every sample job was submitted, before any running one must end.
#: Backends built here take it instead of the wall clock, which would eventually pass the
#: samples' end times and turn running jobs into leaving ones.
NOW = 1795870000.0


class FakeSlurm:
    """Stands in for the runner: answers squeue from a list and records every command."""

    def __init__(self, squeue: str) -> None:
        self.squeue = squeue
        self.commands: list[tuple[str, ...]] = []
        self.timeouts: set[float] = set()
        self.next_id = 500
        self.now = NOW

    async def run(self, command: Command, timeout: float) -> str:
        self.commands.append(command.argv)
        self.timeouts.add(timeout)
        if command.argv[0] == "squeue":
            return self.squeue
        if command.argv[0] == "sbatch":
            self.next_id += 1
            return f"{self.next_id}\n"
        return ""

    def backend(self, settings: BatchSettings = SETTINGS) -> BatchBackend:
        return BatchBackend(slurm, settings, clock=lambda: self.now, runner=self.run)

    def count(self, program: str) -> int:
        return sum(1 for argv in self.commands if argv[0] == program)


@pytest.fixture
def fake() -> FakeSlurm:
    return FakeSlurm(
        "1|PENDING|1795869283|N/A|alice|Priority|dask-deploy/dask\n"
        "2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n"
        "3|CANCELLED|1795869283|1795869290|alice|None|dask-deploy/dask\n"
    )


async def test_scale_up_counts_pending_jobs_as_requested(fake: FakeSlurm) -> None:
    await fake.backend().scale_up(4)
    assert [argv[0] for argv in fake.commands] == ["squeue", "sbatch", "sbatch"]


async def test_scale_up_never_lowers_the_count(fake: FakeSlurm) -> None:
    await fake.backend().scale_up(1)
    assert [argv[0] for argv in fake.commands] == ["squeue"]


async def test_scale_down_cancels_only_live_jobs_it_was_named(fake: FakeSlurm) -> None:
    await fake.backend().scale_down(["1", "3", "999"])
    assert fake.commands[-1] == ("scancel", "--quiet", "--user=alice", "--name=dask-worker", "1")


async def test_scale_down_of_unknown_names_runs_no_scancel(fake: FakeSlurm) -> None:
    await fake.backend().scale_down(["999"])
    assert [argv[0] for argv in fake.commands] == ["squeue"]


async def test_instances_are_this_deployments_jobs(fake: FakeSlurm) -> None:
    instances = await fake.backend().instances()
    assert instances == [
        # Pending for Priority: queued, with SLURM's reason (never timed out for it).
        Instance("1", InstanceState.PENDING, 1795869283.0, "Priority", ReasonKind.QUEUED),
        Instance("2", InstanceState.RUNNING, 1795869283.0),
        Instance("3", InstanceState.EXITED, 1795869283.0),
    ]


async def test_squeue_runs_at_most_once_per_status_interval(fake: FakeSlurm) -> None:
    # A minute of one-second ticks, scaling up and down in between: six listings, not sixty.
    backend = fake.backend(replace(SETTINGS, status_interval=10))
    for second in range(60):
        fake.now = NOW + second
        await backend.instances()
        if second == 15:
            await backend.scale_up(3)
        if second == 35:
            await backend.scale_down(["2"])
    assert fake.count("squeue") == 6
    assert (fake.count("sbatch"), fake.count("scancel")) == (1, 1)


async def test_between_listings_own_submits_are_pending_and_own_cancels_exited(
    fake: FakeSlurm,
) -> None:
    backend = fake.backend(replace(SETTINGS, status_interval=10))
    await backend.scale_up(3)  # lists, then submits job 501
    fake.now += 1
    await backend.scale_down(["2"])
    fake.now += 1
    states = {i.name: i.state for i in await backend.instances()}
    assert states == {
        "1": InstanceState.PENDING,
        "2": InstanceState.EXITED,
        "3": InstanceState.EXITED,
        "501": InstanceState.PENDING,
    }
    assert fake.count("squeue") == 1
    await backend.scale_up(3)  # two requested now, 1 and 501: one more job
    assert fake.count("sbatch") == 2


async def test_a_listing_older_than_the_interval_is_renewed(fake: FakeSlurm) -> None:
    backend = fake.backend(replace(SETTINGS, status_interval=10))
    await backend.instances()
    fake.squeue = "2|COMPLETED|1795869283|1795869999|alice|None|dask-deploy/dask\n"
    fake.now += 9.9
    assert [i.state for i in await backend.instances()][1] is InstanceState.RUNNING
    fake.now += 0.1
    assert [i.state for i in await backend.instances()] == [InstanceState.EXITED]


def running_job(ends_at: float | None) -> BatchJob:
    return BatchJob(Instance("7", InstanceState.RUNNING, NOW - 3000), ends_at)


def test_a_job_near_its_walltime_is_reported_gone_so_its_replacement_starts_now() -> None:
    seen = as_seen_by_the_loop(running_job(NOW + 100), NOW, replace_before_end=120)
    assert seen == Instance("7", InstanceState.EXITED, NOW - 3000)


def test_a_job_with_walltime_left_beyond_the_lead_is_running() -> None:
    seen = as_seen_by_the_loop(running_job(NOW + 121), NOW, replace_before_end=120)
    assert seen.state is InstanceState.RUNNING


def test_a_pending_job_is_never_leaving() -> None:
    job = BatchJob(Instance("8", InstanceState.PENDING, NOW), None)
    assert as_seen_by_the_loop(job, NOW, replace_before_end=10**6).state is (InstanceState.PENDING)


async def test_scale_up_replaces_a_job_near_its_walltime_and_scale_down_still_cancels_it() -> None:
    fake = FakeSlurm(f"7|RUNNING|{NOW - 3000:.0f}|{NOW + 60:.0f}|alice|None|dask-deploy/dask\n")
    backend = fake.backend(replace(SETTINGS, replace_before_end=120))
    await backend.scale_up(1)
    assert [argv[0] for argv in fake.commands] == ["squeue", "sbatch"]
    await backend.scale_down(["7"])
    assert fake.commands[-1] == ("scancel", "--quiet", "--user=alice", "--name=dask-worker", "7")


def test_replace_before_end_must_be_seconds(tmp_path: Path) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    options = {"worker_script": str(script), "replace_before_end": -1}
    with pytest.raises(SettingsError) as error:
        slurm.load_settings(BackendContext("dask", "tcp://127.0.0.1:8786", options))
    assert error.value.key == "backend.options.replace_before_end"


async def test_every_pending_job_is_queued_with_the_reason_it_waits(fake: FakeSlurm) -> None:
    backend = fake.backend()
    await backend.scale_up(3)  # lists (1 pending for Priority), then submits 501
    queued = {i.name: i.reason for i in await backend.instances() if i.queued}
    assert queued == {"1": "Priority", "501": "queued"}
    assert not [i for i in await backend.instances() if i.stuck], "waiting is not stuck"


async def test_leaving_jobs_still_count_against_max_held() -> None:
    # Maximum 2 plus a surge of 1: two leaving jobs get one replacement now, not two.
    fake = FakeSlurm(
        f"7|RUNNING|{NOW - 3000:.0f}|{NOW + 60:.0f}|alice|None|dask-deploy/dask\n"
        f"8|RUNNING|{NOW - 3000:.0f}|{NOW + 90:.0f}|alice|None|dask-deploy/dask\n"
    )
    backend = fake.backend(replace(SETTINGS, replace_before_end=120, max_held=3))
    await backend.scale_up(2)
    assert fake.count("sbatch") == 1
    await backend.scale_up(2)
    assert fake.count("sbatch") == 1


async def test_leaving_names_when_each_leaving_job_must_be_retired_at_the_latest() -> None:
    fake = FakeSlurm(
        f"7|RUNNING|{NOW - 3000:.0f}|{NOW + 60:.0f}|alice|None|dask-deploy/dask\n"
        f"8|RUNNING|{NOW - 3000:.0f}|{NOW + 900:.0f}|alice|None|dask-deploy/dask\n"
    )
    backend = fake.backend(replace(SETTINGS, replace_before_end=120, retire_before_end=30))
    await backend.instances()
    assert backend.leaving() == {"7": NOW + 30}


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_max_held_must_be_a_positive_integer(tmp_path: Path, value: object) -> None:
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n")
    options = {"worker_script": str(script), "max_held": value}
    with pytest.raises(SettingsError) as error:
        slurm.load_settings(BackendContext("dask", "tcp://127.0.0.1:8786", options))
    assert error.value.key == "backend.options.max_held"


class JobEndsBeforeTheCancel(FakeSlurm):
    """The job named in the cancel ends between the listing and the cancel, which is refused."""

    def __init__(self, squeue: str, still_running_after: bool) -> None:
        super().__init__(squeue)
        self.still_running_after = still_running_after

    async def run(self, command: Command, timeout: float) -> str:
        if command.argv[0] == "scancel":
            self.commands.append(command.argv)
            if not self.still_running_after:
                self.squeue = self.squeue.replace("2|RUNNING", "2|COMPLETED")
            raise BatchCommandError("scancel exited 1: Job has already finished")
        return await super().run(command, timeout)


async def test_a_refused_cancel_of_a_job_that_ended_meanwhile_is_harmless() -> None:
    fake = JobEndsBeforeTheCancel(
        "2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n", False
    )
    backend = fake.backend()
    await backend.scale_down(["2"])
    assert [argv[0] for argv in fake.commands] == ["squeue", "scancel", "squeue"]
    assert [i.state for i in await backend.instances()] == [InstanceState.EXITED]


async def test_a_refused_cancel_of_a_job_that_still_runs_is_an_error() -> None:
    fake = JobEndsBeforeTheCancel(
        "2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n", True
    )
    with pytest.raises(BatchCommandError, match="already finished"):
        await fake.backend().scale_down(["2"])


async def test_a_cancelled_job_still_listed_while_it_terminates_stays_exited() -> None:
    """The batch system lists a cancelled job as running until it has terminated (LSF's
    JOB_TERMINATE_INTERVAL, SLURM's KillWait): the loop must not see it come back."""
    fake = FakeSlurm("2|RUNNING|1795869283|1795872883|alice|None|dask-deploy/dask\n")
    backend = fake.backend()
    await backend.scale_down(["2"])
    fake.now += 3600  # every later call lists afresh
    assert [i.state for i in await backend.instances()] == [InstanceState.EXITED]
    await backend.scale_down(["2"])
    assert fake.count("scancel") == 1
    fake.squeue = ""  # it has ended and is listed no more
    fake.now += 3600
    assert await backend.instances() == []
