"""The PBS dialect: its commands, and its parsers on qstat samples of every flavour.

Samples (each test names its own):
- "slurm-wlm-torque": `qstat -f` of Debian's slurm-wlm-torque 22.05 (SLURM's Torque commands, the
  ones the pbs tier runs), printed on the project's SLURM while writing this dialect: a tab
  before each attribute; qtime is the submit time, mtime the start, ctime the expected end.
- "Torque": the full display of TORQUE's qstat(1B) (Adaptive Computing, TORQUE Resource Manager,
  Commands Overview, qstat: http://docs.adaptivecomputing.com/torque/archive/3-0-2/commands/qstat.php):
  "Job Id: <seq>.<server>", then "    attribute = value", start_time for a running job.
- "PBS Pro JSON": the example of `qstat -f -F json` in the PBS Pro design PP-483/484/485
  (https://pbspro.atlassian.net/wiki/display/PD/PP-483%3A+PP-484%3A+PP-485%3A+Enhance+output+of+qstat+to+make+it+more+admin+and+script+friendly):
  {"timestamp":..., "pbs_version":"14.1", "pbs_server":"vbox", "Jobs":{"1.vbox":{...}}}, with
  Resource_List as a nested object and stime for the start.
- "job_state": qstat(1B) job states (Torque: Q H W T R E C S; PBS Professional adds B F M U X).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from dask_deploy.backends import InstanceState, pbs
from dask_deploy.backends.batch import BatchCommandError, BatchSettings

SETTINGS = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", ("-A", "proj-42"), user="root")


def local(text: str) -> float:
    return datetime.strptime(text, "%a %b %d %H:%M:%S %Y").timestamp()


SLURM_TORQUE = """Job Id:\t1
\tJob_Name = dd-worker
\tJob_Owner = root@localhost
\tjob_state = R
\tqueue = debug
\tqtime = Sun Dec  6 02:18:39 2026
\tmtime = Sun Dec  6 02:18:40 2026
\tctime = Sun Dec  6 02:23:40 2026
\texec_host = node1/2
\tPriority = 4294901759
\teuser = root(0)
\tegroup = root(0)
\tResource_List.walltime = 00:05:00
\tResource_List.nodect = 1
\tResource_List.ncpus = 2

Job Id:\t2
\tJob_Name = dd-worker
\tJob_Owner = root@localhost
\tjob_state = Q
\tqueue = debug
\tqtime = Sun Dec  6 02:19:00 2026
\tPriority = 4294901758
\teuser = root(0)
\tegroup = root(0)
\tResource_List.walltime = 00:05:00

Job Id:\t3
\tJob_Name = dd-worker
\tJob_Owner = alice@localhost
\tjob_state = R
\tqueue = debug
\tqtime = Sun Dec  6 02:19:00 2026
\tResource_List.walltime = 00:05:00

"""


def test_status_from_slurm_wlm_torque() -> None:
    """Source: slurm-wlm-torque."""
    jobs = {job.instance.name: job for job in pbs.parse_status(SLURM_TORQUE, SETTINGS)}
    assert set(jobs) == {"1", "2"}, "only root's jobs named dd-worker, not alice's"
    running, queued = jobs["1"], jobs["2"]
    assert running.instance.state is InstanceState.RUNNING
    assert running.instance.requested_at == local("Sun Dec 6 02:18:39 2026")
    assert running.ends_at == local("Sun Dec 6 02:18:40 2026") + 300  # mtime + walltime
    assert (queued.instance.state, queued.ends_at, queued.reason) == (
        InstanceState.PENDING,
        None,
        None,
    )


TORQUE = """Job Id: 4807.headnode.example.org
    Job_Name = dd-worker
    Job_Owner = alice@login1.example.org
    resources_used.cput = 00:00:00
    resources_used.mem = 3232kb
    resources_used.walltime = 00:01:02
    job_state = R
    queue = batch
    server = headnode.example.org
    Checkpoint = u
    ctime = Mon Jan 10 09:00:00 2011
    Error_Path = login1.example.org:/home/alice/dd-worker.e4807
    exec_host = node01/0
    Hold_Types = n
    Join_Path = oe
    Keep_Files = n
    mtime = Mon Jan 10 09:05:02 2011
    Output_Path = login1.example.org:/home/alice/dd-worker.o4807
    qtime = Mon Jan 10 09:00:00 2011
    Resource_List.nodect = 1
    Resource_List.nodes = 1:ppn=1
    Resource_List.walltime = 01:00:00
    session_id = 1234
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=en_US.UTF-8,
\tPBS_O_LOGNAME=alice,PBS_O_WORKDIR=/home/alice
    etime = Mon Jan 10 09:00:00 2011
    start_time = Mon Jan 10 09:04:00 2011
    Walltime.Remaining = 3538
    start_count = 1

Job Id: 4808.headnode.example.org
    Job_Name = dd-worker
    Job_Owner = alice@login1.example.org
    job_state = C
    qtime = Mon Jan 10 08:00:00 2011
    Resource_List.walltime = 01:00:00

Job Id: 4809.headnode.example.org
    Job_Name = dd-worker
    Job_Owner = alice@login1.example.org
    job_state = H
    qtime = Mon Jan 10 09:10:00 2011
    Resource_List.walltime = 01:00:00
"""


def test_status_from_torque_full_display() -> None:
    """Source: Torque. The start is start_time (mtime is only the last change), the id whole."""
    alice = BatchSettings("dd", Path("worker-job.sh"), "dd-worker", (), user="alice")
    jobs = {job.instance.name: job for job in pbs.parse_status(TORQUE, alice)}
    running = jobs["4807.headnode.example.org"]
    assert running.instance.state is InstanceState.RUNNING
    assert running.instance.requested_at == local("Mon Jan 10 09:00:00 2011")
    assert running.ends_at == local("Mon Jan 10 09:04:00 2011") + 3600
    assert jobs["4808.headnode.example.org"].instance.state is InstanceState.EXITED
    assert jobs["4809.headnode.example.org"].instance.state is InstanceState.PENDING


PBSPRO_JSON = """{
    "timestamp":1479277336,
    "pbs_version":"14.1",
    "pbs_server":"vbox",
    "Jobs":{
        "1.vbox":{
            "Job_Name":"dd-worker",
            "Job_Owner":"root@vbox",
            "job_state":"Q",
            "queue":"workq",
            "server":"vbox",
            "Checkpoint":"u",
            "ctime":"Fri Nov 11 17:57:05 2016",
            "Error_Path":"vbox:/home/nithinj/Tasks/overlay/STDIN.e1",
            "Hold_Types":"n",
            "Join_Path":"n",
            "Keep_Files":"n",
            "Mail_Points":"a",
            "mtime":"Fri Nov 11 17:57:05 2016",
            "Output_Path":"vbox:/home/nithinj/Tasks/overlay/STDIN.o1",
            "Priority":0,
            "qtime":"Fri Nov 11 17:57:05 2016",
            "Rerunable":"True",
            "Resource_List":{
                "ncpus":1,
                "nodect":1,
                "place":"pack",
                "select":"1:ncpus=1",
                "walltime":"01:00:00"
            },
            "substate":10,
            "comment":"Not Running: Insufficient amount of resource: ncpus",
            "etime":"Fri Nov 11 17:57:05 2016",
            "Submit_arguments":"-- /bin/sleep 1000",
            "project":"_pbs_project_default"
        },
        "2.vbox":{
            "Job_Name":"dd-worker",
            "Job_Owner":"root@vbox",
            "job_state":"R",
            "qtime":"Fri Nov 11 17:58:00 2016",
            "stime":"Fri Nov 11 17:58:10 2016",
            "Resource_List":{"walltime":"00:30:00"}
        }
    }
}"""


def test_status_from_pbspro_json() -> None:
    """Source: PBS Pro JSON. The pending reason is the scheduler's comment."""
    jobs = {job.instance.name: job for job in pbs.parse_status(PBSPRO_JSON, SETTINGS)}
    queued, running = jobs["1.vbox"], jobs["2.vbox"]
    assert queued.instance.state is InstanceState.PENDING
    assert queued.instance.requested_at == local("Fri Nov 11 17:57:05 2016")
    assert queued.reason == "Not Running: Insufficient amount of resource: ncpus"
    assert running.ends_at == local("Fri Nov 11 17:58:10 2016") + 1800


@pytest.mark.parametrize(
    ("letter", "state"),
    [
        *[(letter, InstanceState.PENDING) for letter in "QHWT"],
        *[(letter, InstanceState.RUNNING) for letter in "RSUB"],
        *[(letter, InstanceState.EXITED) for letter in "ECFMX"],
        ("", InstanceState.RUNNING),
    ],
)
def test_job_states(letter: str, state: InstanceState) -> None:
    """Source: job_state. Unknown holds its job."""
    assert pbs.job_state(letter) is state


def test_commands_and_job_ids() -> None:
    assert pbs.submit_command(SETTINGS).argv == (
        "qsub",
        "-N",
        "dd-worker",
        "-A",
        "proj-42",
        "worker-job.sh",
    )
    assert pbs.status_command(SETTINGS).argv == ("qstat", "-f")
    assert pbs.cancel_command(SETTINGS, {"4.s", "3.s"}).argv == ("qdel", "3.s", "4.s")
    assert pbs.parse_job_id("4807.headnode.example.org\n") == "4807.headnode.example.org"
    assert pbs.parse_job_id("12\n") == "12"  # slurm-wlm-torque
    with pytest.raises(BatchCommandError, match="expected a job id"):
        pbs.parse_job_id("qsub: Unknown queue MSG=cannot locate queue\n")
