"""The LSF stand-in enforces what LSF enforces, and prints what the dialect reads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dask_deploy.backends import InstanceState, lsf
from dask_deploy.backends.batch import BatchBackend, BatchSettings, run_command
from dask_deploy.testing import lsf as standin
from process_support import wait_for

pytestmark = pytest.mark.lsf


@pytest.fixture
def commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = standin.install(
        tmp_path / "bin",
        tmp_path / "state",
        slots=2,
        terminate_interval=1.0,
        seconds_per_minute=1.0,  # -W 1 ends a job after one second
    )
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return folder


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True)


def records(*args: str) -> list[dict[str, str]]:
    fields = "jobid job_name stat pend_reason exit_reason runtimelimit nreq_slot"
    out = run("bjobs", *args, "-o", fields, "-json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["RECORDS"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["-q", "nosuch"], "nosuch: No such queue. Job not submitted."),
        (["-W", "1:75"], "Bad RUNLIMIT"),
        (["-W", "abc"], "Bad RUNLIMIT"),
        (["-n", "0"], "Bad argument for option -n"),
        (["-M", "lots"], "Bad memory limit"),
        (["-Z"], "illegal option -- Z"),
    ],
)
def test_bad_submissions_are_rejected_and_nothing_is_submitted(
    commands: Path, argv: list[str], error: str
) -> None:
    out = run("bsub", *argv, "true")
    assert out.returncode != 0 and error in out.stderr
    assert records("-a") == []


def test_ids_increase_directives_apply_and_the_json_is_ibms_layout(commands: Path) -> None:
    script = "#!/bin/bash\n#BSUB -J from-script\n#BSUB -n 2\n#BSUB -o out-%J.log\necho $LSB_JOBID\n"
    first = run("bsub", "-q", "short", stdin=script)
    assert first.stdout.strip() == "Job <1> is submitted to queue <short>."
    second = run("bsub", "-J", "on-the-line", "true")
    assert second.stdout.strip() == "Job <2> is submitted to default queue <normal>."
    wait_for("both jobs are done", lambda: [r["STAT"] for r in records("-a")] == ["DONE"] * 2)
    assert Path("out-1.log").read_text() == "1\n"
    text = run("bjobs", "-a", "-o", "jobid stat", "-json").stdout
    assert text.startswith('{\n  "COMMAND":"bjobs",\n  "JOBS":2,\n  "RECORDS":[\n    {\n')
    assert [(r["JOB_NAME"], r["NREQ_SLOT"]) for r in records("-a")] == [
        ("from-script", "2"),
        ("on-the-line", "1"),
    ]


def test_run_limit_kills_the_job_and_bkill_of_a_finished_job_says_so(commands: Path) -> None:
    run("bsub", "-W", "1", "sleep", "60")
    wait_for("the run limit ends the job", lambda: records("-a")[0]["STAT"] == "EXIT")
    assert records("-a")[0]["EXIT_REASON"].startswith("TERM_RUNLIMIT")
    out = run("bkill", "1")
    assert out.returncode != 0 and "Job <1>: Job has already finished" in out.stderr
    assert "No matching job found" in run("bkill", "99").stderr


def test_jobs_wait_for_slots_with_a_reason_and_bkill_ends_a_pending_one(commands: Path) -> None:
    run("bsub", "-n", "2", "sleep", "60")
    run("bsub", "sleep", "60")
    wait_for(
        "the second job waits for a slot",
        lambda: records()[1]["PEND_REASON"] == "Not enough job slot(s);",
    )
    assert run("bkill", "2").stdout.strip() == "Job <2> is being terminated"
    wait_for("the pending job ended", lambda: records("-a")[1]["STAT"] == "EXIT")
    run("bkill", "1")
    wait_for("the running job ended", lambda: records() == [])


async def test_the_dialect_on_the_stand_in(commands: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.sh"
    # A run limit the test never reaches (600 s at one second a minute), however loaded.
    script.write_text("#!/bin/bash\n#BSUB -W 600\nsleep 60\n")
    backend = BatchBackend(lsf, BatchSettings("dd", script, "dd-worker", ()), runner=run_command)
    await backend.scale_up(2)
    instances = await backend.instances()
    assert len(instances) == 2
    await backend.scale_down([instances[0].name])
    wait_for("the killed job is listed as exited", lambda: records("-a")[0]["STAT"] == "EXIT")
    states = {i.name: i.state for i in await backend.instances()}
    assert states[instances[0].name] is InstanceState.EXITED
    assert states[instances[1].name] is not InstanceState.EXITED
    await backend.scale_down([instances[1].name])


def test_cwd_moves_the_job_and_ls_subcwd_stays_the_folder_bsub_ran_in(
    commands: Path, tmp_path: Path
) -> None:
    """A relative -cwd is against the folder bsub ran in (bsub -cwd); LS_SUBCWD is that folder
    ("the current working directory of the submission host"), whatever -cwd says."""
    (tmp_path / "run").mkdir()
    script = '#!/bin/bash\n#BSUB -cwd run\n#BSUB -o out.log\necho "$PWD $LS_SUBCWD"\n'
    assert run("bsub", stdin=script).returncode == 0
    wait_for("the job is done", lambda: [r["STAT"] for r in records("-a")] == ["DONE"])
    assert (tmp_path / "run" / "out.log").read_text() == f"{tmp_path / 'run'} {tmp_path}\n"
