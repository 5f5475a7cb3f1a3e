"""The LSF dialect: its commands, and its parsers on bjobs/bsub output samples.

Samples (each test names its own):
- "bjobs -json": IBM Spectrum LSF 10.1 command reference, bjobs -json
  (https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=bjobs-json, lsf_command_ref/bjobs.json.1):
  {"COMMAND":"bjobs","JOBS":n,"RECORDS":[{"FIELD":"value",...}]}, every value a string, a job
  that is not found as a record with "ERROR".
- "bjobs -o": the same reference, bjobs -o (lsf_command_ref/bjobs.o.1): field names, RUNTIMELIMIT
  in minutes, times as "Mon dd hh:mm" with the year when LSB_DISPLAY_YEAR=Y, and the E / L mark
  after an estimated / actual finish time.
- "bjobs STAT": bjobs(1), the job states PEND PSUSP RUN USUSP SSUSP DONE EXIT UNKWN WAIT ZOMBI.
- "bsub": bsub(1), "Job <id> is submitted to [default ]queue <name>."
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from dask_deploy.backends import InstanceState, lsf
from dask_deploy.backends.batch import BatchCommandError, BatchSettings

SETTINGS = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", ("-P", "physics"), user="alice")

BJOBS_JSON = """{
  "COMMAND":"bjobs",
  "JOBS":5,
  "RECORDS":[
    {
      "JOBID":"1207",
      "USER":"alice",
      "JOB_NAME":"dd-worker",
      "JOB_DESCRIPTION":"dask-deploy/dd",
      "STAT":"RUN",
      "SUBMIT_TIME":"Dec  6 01:50 2026",
      "START_TIME":"Dec  6 01:51 2026",
      "RUNTIMELIMIT":"60.0",
      "PEND_REASON":""
    },
    {
      "JOBID":"1208",
      "USER":"alice",
      "JOB_NAME":"dd-worker",
      "JOB_DESCRIPTION":"dask-deploy/dd",
      "STAT":"PEND",
      "SUBMIT_TIME":"Dec  6 01:52 2026",
      "START_TIME":"",
      "RUNTIMELIMIT":"60.0",
      "PEND_REASON":"Not enough job slot(s);"
    },
    {
      "JOBID":"1190",
      "USER":"alice",
      "JOB_NAME":"dd-worker",
      "JOB_DESCRIPTION":"dask-deploy/dd",
      "STAT":"EXIT",
      "SUBMIT_TIME":"Dec  6 01:20 2026",
      "START_TIME":"Dec  6 01:20 2026",
      "RUNTIMELIMIT":"60.0",
      "PEND_REASON":""
    },
    {
      "JOBID":"1209",
      "USER":"alice",
      "JOB_NAME":"dd-worker",
      "JOB_DESCRIPTION":"dask-deploy/another",
      "STAT":"RUN",
      "SUBMIT_TIME":"Dec  6 01:53 2026",
      "START_TIME":"Dec  6 01:53 2026",
      "RUNTIMELIMIT":"60.0",
      "PEND_REASON":""
    },
    {
      "JOBID":"77",
      "ERROR":"Job <77> is not found"
    }
  ]
}"""


def local(text: str) -> float:
    return datetime.strptime(text, "%b %d %H:%M %Y").timestamp()


def test_status_from_bjobs_json() -> None:
    """Source: bjobs -json and bjobs -o."""
    jobs = {job.instance.name: job for job in lsf.parse_status(BJOBS_JSON, SETTINGS)}
    assert set(jobs) == {"1207", "1208", "1190"}, "only this deployment's mark, no ERROR record"
    running, pending, ended = jobs["1207"], jobs["1208"], jobs["1190"]
    assert running.instance.state is InstanceState.RUNNING
    assert running.instance.requested_at == local("Dec 6 01:50 2026")
    assert running.ends_at == local("Dec 6 01:51 2026") + 3600
    assert (pending.instance.state, pending.reason) == (
        InstanceState.PENDING,
        "Not enough job slot(s)",
    )
    assert pending.ends_at is None
    assert (ended.instance.state, ended.ends_at) == (InstanceState.EXITED, None)


def test_another_users_job_of_the_same_name_is_not_ours() -> None:
    """Source: bjobs -json, as an operator (bjobs -u all) would see it."""
    bob = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", (), user="bob")
    assert lsf.parse_status(BJOBS_JSON, bob) == []


def test_no_jobs() -> None:
    """Source: bjobs -json with nothing to show."""
    assert lsf.parse_status('{"COMMAND":"bjobs","JOBS":0,"RECORDS":[]}', SETTINGS) == []
    with pytest.raises(BatchCommandError, match="expected -json output"):
        lsf.parse_status("No job found", SETTINGS)


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("PEND", InstanceState.PENDING),
        ("PSUSP", InstanceState.PENDING),
        ("WAIT", InstanceState.PENDING),
        ("RUN", InstanceState.RUNNING),
        ("USUSP", InstanceState.RUNNING),
        ("SSUSP", InstanceState.RUNNING),
        ("UNKWN", InstanceState.RUNNING),
        ("DONE", InstanceState.EXITED),
        ("EXIT", InstanceState.EXITED),
        ("ZOMBI", InstanceState.EXITED),
    ],
)
def test_stat_values(stat: str, state: InstanceState) -> None:
    """Source: bjobs STAT. A suspended or unknown job holds its place: it is not replaced."""
    assert lsf.job_state(stat) is state


def test_times_and_limits() -> None:
    """Source: bjobs -o (times, the E/L marks, RUNTIMELIMIT in minutes or hh:mm:ss)."""
    assert lsf.lsf_time("Dec 28 19:56 2018 L") == local("Dec 28 19:56 2018")
    assert lsf.lsf_time("Dec 28 19:56") is None, "without the year it cannot be placed"
    assert lsf.lsf_time("") is None
    assert lsf.runtime_limit("1440.0") == 86400
    assert lsf.runtime_limit("00:10:00") == 600


def test_commands() -> None:
    submit = lsf.submit_command(SETTINGS)
    assert submit.argv[:2] == ("sh", "-c")
    assert submit.argv[4:] == (
        "worker-job.sh",
        "-J",
        "dd-worker",
        "-Jd",
        "dask-deploy/dd",
        "-P",
        "physics",
    )
    status = lsf.status_command(SETTINGS)
    assert status.argv[:6] == ("bjobs", "-a", "-u", "alice", "-J", "dd-worker")
    assert status.argv[-1] == "-json" and status.env == {"LSB_DISPLAY_YEAR": "Y"}
    assert lsf.cancel_command(SETTINGS, {"10", "9"}).argv == ("bkill", "9", "10")


def test_job_id_from_bsub() -> None:
    """Source: bsub."""
    assert lsf.parse_job_id("Job <1234> is submitted to default queue <normal>.\n") == "1234"
    with pytest.raises(BatchCommandError, match="expected 'Job <id> is submitted'"):
        lsf.parse_job_id("normal: No such queue. Job not submitted.")
