"""The Grid Engine dialect: its commands, and its parsers on qstat output samples.

Samples (each test names its own):
- "8.1.9 here": printed by Debian's gridengine 8.1.9 (`qstat -xml -r`), the Grid Engine that
  scripts/sge-up.sh starts and the sge tier runs against; captured while writing this dialect.
- "qstat(1)": the state letters of the STATE column in qstat(1) of gridengine 8.1.9
  (https://sources.debian.org/src/gridengine/8.1.9%2Bdfsg-13.1/doc/man/man1/qstat.1).
- "Qstat XML": the job_list layout of http://wiki.gridengine.info/wiki/index.php/Qstat_XML, where
  `qstat -f -xml` nests running jobs in a Queue-List of queue_info.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from dask_deploy.backends import InstanceState, sge
from dask_deploy.backends.batch import BatchCommandError, BatchSettings

SETTINGS = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", ("-P", "physics"), user="root")

# 8.1.9 here: two workers of "dd" (one running with h_rt, one queued), one held, and a job of
# another deployment of the same user.
QSTAT_XML_R = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>2</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>dd-worker</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-06T01:50:29</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>2</slots>
      <full_job_name>dd-worker</full_job_name>
      <requested_pe name="smp">2</requested_pe>
      <granted_pe name="smp">2</granted_pe>
      <hard_request name="h_rt" resource_contribution="0.000000">300</hard_request>
      <hard_request name="mem_free" resource_contribution="0.000000">100M</hard_request>
      <binding>NONE</binding>
    </job_list>
    <job_list state="running">
      <JB_job_number>3</JB_job_number>
      <JAT_prio>0.25166</JAT_prio>
      <JB_name>other-worker</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-06T01:50:29</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <full_job_name>other-worker</full_job_name>
      <binding>NONE</binding>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number>
      <JAT_prio>0.25014</JAT_prio>
      <JB_name>dd-worker</JB_name>
      <JB_owner>root</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-12-06T01:50:40</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <full_job_name>dd-worker</full_job_name>
      <hard_request name="h_rt" resource_contribution="0.000000">600</hard_request>
      <binding>NONE</binding>
    </job_list>
    <job_list state="pending">
      <JB_job_number>10</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>dd-worker</JB_name>
      <JB_owner>root</JB_owner>
      <state>hqw</state>
      <JB_submission_time>2026-12-06T01:50:41</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <full_job_name>dd-worker</full_job_name>
      <binding>NONE</binding>
    </job_list>
  </job_info>
</job_info>
"""


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_status_from_qstat_xml_r_of_8_1_9() -> None:
    """Source: 8.1.9 here."""
    jobs = {job.instance.name: job for job in sge.parse_status(QSTAT_XML_R, SETTINGS)}
    assert set(jobs) == {"2", "8", "10"}, "only the jobs named dd-worker"
    running, queued, held = jobs["2"], jobs["8"], jobs["10"]
    assert running.instance.state is InstanceState.RUNNING
    assert running.instance.requested_at == local("2026-12-06T01:50:29")  # its start time
    assert running.ends_at == local("2026-12-06T01:50:29") + 300
    assert running.reason is None
    assert queued.instance.state is InstanceState.PENDING
    assert queued.instance.requested_at == local("2026-12-06T01:50:40")
    assert (queued.ends_at, queued.reason) == (None, "waiting in the queue")
    assert (held.instance.state, held.reason) == (InstanceState.PENDING, "held")


def test_status_from_the_queue_list_layout_of_qstat_f() -> None:
    """Source: Qstat XML (running jobs inside queue_info/Queue-List, no full_job_name)."""
    text = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <Queue-List>
      <name>all.q@node01</name>
      <job_list state="running">
        <JB_job_number>113254</JB_job_number>
        <JB_name>dd-worker</JB_name>
        <JB_owner>root</JB_owner>
        <state>Rr</state>
        <JAT_start_time>2015-05-11T15:52:49</JAT_start_time>
      </job_list>
    </Queue-List>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>112742</JB_job_number>
      <JB_name>dd-worker</JB_name>
      <JB_owner>root</JB_owner>
      <state>Eqw</state>
      <JB_submission_time>2015-05-08T16:30:25</JB_submission_time>
    </job_list>
  </job_info>
</job_info>"""
    jobs = {job.instance.name: job for job in sge.parse_status(text, SETTINGS)}
    assert jobs["113254"].instance.state is InstanceState.RUNNING
    assert jobs["113254"].ends_at is None, "no h_rt requested: no known end"
    assert jobs["112742"].instance.state is InstanceState.EXITED, "a job in error never starts"


def test_another_users_job_of_the_same_name_is_not_ours() -> None:
    """Source: 8.1.9 here; the same listing seen by user alice (an operator may see every job)."""
    alice = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", (), user="alice")
    assert sge.parse_status(QSTAT_XML_R, alice) == []


def test_no_jobs() -> None:
    """Source: 8.1.9 here (qstat -xml -r with nothing queued)."""
    empty = "<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n"
    empty += "  <job_info>\n  </job_info>\n</job_info>"
    assert sge.parse_status(empty, SETTINGS) == []


@pytest.mark.parametrize(
    ("letters", "state"),
    [
        ("qw", InstanceState.PENDING),
        ("hqw", InstanceState.PENDING),
        ("hRwq", InstanceState.PENDING),
        ("r", InstanceState.RUNNING),
        ("t", InstanceState.RUNNING),
        ("Rr", InstanceState.RUNNING),
        ("s", InstanceState.RUNNING),
        ("S", InstanceState.RUNNING),
        ("T", InstanceState.RUNNING),
        ("Eqw", InstanceState.EXITED),
        ("dr", InstanceState.EXITED),
        ("dt", InstanceState.EXITED),
        ("z", InstanceState.RUNNING),
    ],
)
def test_state_letters(letters: str, state: InstanceState) -> None:
    """Source: qstat(1), section OUTPUT FORMATS, the states a job goes through. Unknown: running."""
    assert sge.job_state(letters) is state


def test_submit_command_names_the_job_and_passes_site_arguments_before_the_script() -> None:
    command = sge.submit_command(SETTINGS)
    assert command.argv == ("qsub", "-terse", "-N", "dd-worker", "-P", "physics", "worker-job.sh")


def test_status_and_cancel_commands() -> None:
    assert sge.status_command(SETTINGS).argv == ("qstat", "-xml", "-r", "-u", "root")
    assert sge.cancel_command(SETTINGS, {"10", "9", "100"}).argv == ("qdel", "9", "10", "100")


def test_job_id_from_qsub_terse() -> None:
    """Source: 8.1.9 here (`qsub -terse` prints the id alone; an array job "id.first-last:step")."""
    assert sge.parse_job_id("42\n") == "42"
    assert sge.parse_job_id("43.1-10:1\n") == "43"
    with pytest.raises(BatchCommandError, match="expected a job id"):
        sge.parse_job_id('Your job 42 ("x") has been submitted\n')


def test_time_values() -> None:
    """Source: sge_types(1), "time_specifier": seconds, or hours:minutes:seconds."""
    assert sge.seconds("3600") == 3600
    assert sge.seconds("1:30:00") == 5400
    assert sge.seconds("::90") == 90
    assert sge.seconds("INFINITY") is None
