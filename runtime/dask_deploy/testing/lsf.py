"""An LSF stand-in: ``bsub``, ``bjobs`` and ``bkill`` running each job as a local process group.

No IBM Spectrum LSF can be had here, so the LSF backend's tests run against these commands.
Install them into a folder and put it first on ``PATH``::

    python -m dask_deploy.testing.lsf install /tmp/lsf/bin --state /tmp/lsf/state
    export PATH=/tmp/lsf/bin:$PATH
    bsub -J hello -W 5 -q normal < job.sh
    bjobs -a -o "jobid job_name stat submit_time" -json

What it implements, after IBM's command reference for LSF 10.1 (bsub, bjobs, bjobs -o, bjobs
-json, bkill: https://www.ibm.com/docs/en/spectrum-lsf/10.1.0 , pages lsf_command_ref/bsub.1,
bjobs.1, bjobs.o.1, bjobs.json.1, bkill.1):

- ``bsub [options] [command [args]]``; without a command the job script is read from stdin and
  its leading ``#BSUB`` lines are options (the command line wins). Options: ``-J`` name, ``-Jd``
  description, ``-W [hour:]minute`` run limit, ``-n`` slots, ``-M`` memory limit (a number in
  ``LSF_UNIT_FOR_LIMITS``, KB by default, or with a unit: ``4GB``), ``-q`` queue, ``-o``/``-e``
  (``-oo``/``-eo`` overwrite; ``%J`` is the job id), ``-cwd``; ``-P``, ``-R``, ``-gpu``, ``-m``,
  ``-G``, ``-app``, ``-sla``, ``-U``, ``-L``, ``-u``, ``-x``, ``-B``, ``-N``, ``-r``, ``-rn`` are
  recorded, not acted on. Prints ``Job <id> is submitted to [default ]queue <q>.``. Rejected,
  exit 255, nothing submitted: an unknown option, an unknown queue, a bad ``-W``/``-n``/``-M``.
- Jobs get ids that only increase (a counter kept across runs), run in the submission folder
  (or ``-cwd``, a relative one against it) with the submission environment plus ``LSB_JOBID``,
  ``LSB_JOBNAME``, ``LSB_QUEUE``, ``LSB_DJOB_NUMPROC``, ``LSB_MAX_NUM_PROCESSORS``,
  ``LSB_HOSTS``, ``LSB_MCPU_HOSTS``, ``LS_SUBCWD`` (the submission folder, whatever ``-cwd``
  says), in their own process group. A job waits (PEND, "Not enough job slot(s)") while the
  cluster's ``slots`` are taken. At its run limit, or on ``bkill``, the group gets SIGINT and
  SIGTERM, then SIGKILL after ``terminate_interval`` seconds (LSF's
  JOB_TERMINATE_INTERVAL, 10 s), and the job is EXIT with TERM_RUNLIMIT or TERM_OWNER.
- ``bjobs [-a] [-d] [-p] [-r] [-J name] [-u user|all] [-o "fields"] [-json] [-noheader]
  [ids]``: by default your unfinished jobs; ``-a`` adds jobs finished within ``clean_period``
  seconds (CLEAN_PERIOD, 3600). ``-json`` prints exactly IBM's layout: ``{"COMMAND":"bjobs",
  "JOBS":n,"RECORDS":[{"FIELD":"value",...}]}``, two-space indented, every value a string.
  Times read ``Dec  6 01:50`` (with `` 2026`` when ``LSB_DISPLAY_YEAR=Y``); a finish time is
  followed by `` L`` once reached, `` E`` while estimated from the run limit.
- ``bkill [ids] | bkill 0``: ``Job <id> is being terminated``; a finished job answers ``Job <id>:
  Job has already finished``, an unknown one ``Job <id>: No matching job found``, exit 255.

The cluster (``<state>/cluster.json``): ``queues`` (first is the default), ``slots``,
``terminate_interval``, ``clean_period``, and ``seconds_per_minute`` (60; a test may shorten
run limits with it, nothing else changes). Limitations: one host; ``-R`` and ``-M`` are recorded
and shown, not enforced; no job arrays, dependencies, hosts or user switching.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_ENV = "DASK_DEPLOY_LSF_DIR"
DEFAULT_CLUSTER = {
    "queues": ["normal", "short"],
    "slots": 8,
    "terminate_interval": 10.0,
    "clean_period": 3600.0,
    "seconds_per_minute": 60.0,
}
#: bsub options that take a value, and those that do not.
_VALUED = {"-J", "-Jd", "-W", "-n", "-M", "-q", "-o", "-e", "-oo", "-eo", "-cwd", "-P", "-R"}
_VALUED |= {"-gpu", "-m", "-G", "-app", "-sla", "-U", "-L", "-u"}  # recorded, not acted on
_FLAGS = {"-x", "-B", "-N", "-r", "-rn"}
_HANDLED = {"-J", "-Jd", "-W", "-n", "-M", "-q", "-o", "-e", "-oo", "-eo", "-cwd"}
_RUNLIMIT = re.compile(r"^(?:(\d+):)?(\d+)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]B?)?$", re.IGNORECASE)
_UNITS = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}
FINISHED = ("DONE", "EXIT")
FIELDS = (
    "jobid",
    "job_name",
    "job_description",
    "stat",
    "user",
    "queue",
    "from_host",
    "exec_host",
    "submit_time",
    "start_time",
    "finish_time",
    "runtimelimit",
    "nreq_slot",
    "memlimit",
    "pend_reason",
    "exit_code",
    "exit_reason",
)


class Rejected(Exception):
    """A command refused its input, as LSF does: the message, then exit 255."""


@dataclass
class Job:
    jobid: int
    job_name: str
    job_description: str
    user: str
    queue: str
    command: list[str]
    cwd: str  # where the job runs: -cwd, or the folder bsub ran in
    submit_cwd: str  # the folder bsub ran in (LS_SUBCWD), whatever -cwd says
    env: dict[str, str]
    slots: int
    runlimit_minutes: float | None
    memlimit_kb: int | None
    output: str
    error: str
    append: bool
    submit_time: float
    stat: str = "PEND"
    pend_reason: str = "New job is waiting for scheduling;"
    start_time: float | None = None
    finish_time: float | None = None
    exit_code: int | None = None
    exit_reason: str = ""
    supervisor: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Cluster:
    """The stand-in's state folder: configuration, the id counter and one folder per job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "jobs").mkdir(parents=True, exist_ok=True)
        config = root / "cluster.json"
        if not config.exists():
            config.write_text(json.dumps(DEFAULT_CLUSTER, indent=2))
        self.config: dict[str, Any] = {**DEFAULT_CLUSTER, **json.loads(config.read_text())}

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def next_id(self) -> int:
        counter = self.root / "last_job_id"
        last = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(last + 1))
        return last + 1

    def folder(self, jobid: int) -> Path:
        return self.root / "jobs" / str(jobid)

    def save(self, job: Job) -> None:
        folder = self.folder(job.jobid)
        folder.mkdir(exist_ok=True)
        temporary = folder / "job.json.tmp"
        temporary.write_text(json.dumps(asdict(job)))
        temporary.replace(folder / "job.json")

    def load(self, jobid: int) -> Job | None:
        try:
            return Job(**json.loads((self.folder(jobid) / "job.json").read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def jobs(self) -> list[Job]:
        ids = sorted(int(p.name) for p in (self.root / "jobs").iterdir() if p.name.isdigit())
        return [job for job in map(self.load, ids) if job is not None]


def cluster() -> Cluster:
    root = os.environ.get(STATE_ENV)
    if not root:
        raise Rejected(f"{STATE_ENV} is not set: the LSF stand-in does not know its state folder")
    return Cluster(Path(root))


# ---------------------------------------------------------------------------------------- bsub


def parse_runlimit(value: str) -> float:
    """``-W [hour:]minute`` in minutes; a host or model suffix (``/host``) is ignored."""
    match = _RUNLIMIT.match(value.split("/", 1)[0])
    if match is None or (match.group(1) is not None and int(match.group(2)) > 59):
        raise Rejected(f"{value}: Bad RUNLIMIT specification. Job not submitted.")
    minutes = int(match.group(1) or 0) * 60 + int(match.group(2))
    if minutes <= 0:
        raise Rejected(f"{value}: Bad RUNLIMIT specification. Job not submitted.")
    return float(minutes)


def parse_memory(value: str) -> int:
    """``-M`` in KB: a bare number is in ``LSF_UNIT_FOR_LIMITS`` (KB unless set)."""
    match = _MEMORY.match(value.strip())
    if match is None:
        raise Rejected(f"{value}: Bad memory limit specification. Job not submitted.")
    unit = (match.group(2) or os.environ.get("LSF_UNIT_FOR_LIMITS", "KB"))[0].upper()
    if unit not in _UNITS:
        raise Rejected(f"{value}: Bad memory limit specification. Job not submitted.")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_options(words: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """bsub's options up to the command; raise :class:`Rejected` on an unknown one."""
    options: dict[str, str] = {}
    index = 0
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        if word in _FLAGS:
            options[word] = ""
            index += 1
        elif word in _VALUED:
            if index + 1 >= len(words):
                raise Rejected(f"bsub: option requires an argument -- {word[1:]}")
            options[word] = words[index + 1]
            index += 2
        else:
            raise Rejected(f"bsub: illegal option -- {word[1:]}\nJob not submitted.")
    return options, list(words[index:])


def script_directives(script: str) -> list[str]:
    """The words of the ``#BSUB`` lines before the script's first command."""
    words: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("#BSUB"):
            words.extend(shlex.split(stripped[len("#BSUB") :]))
        elif stripped and not stripped.startswith("#"):
            break
    return words


def bsub(argv: Sequence[str], stdin: str | None) -> str:
    lsf = cluster()
    options, command = parse_options(argv)
    script = None
    if not command:
        script = stdin or ""
        from_script, rest = parse_options(script_directives(script))
        if rest:
            raise Rejected(f"#BSUB line with a command: {' '.join(rest)}. Job not submitted.")
        options = {**from_script, **options}
    queues: list[str] = list(lsf.config["queues"])
    queue = options.get("-q", queues[0])
    if queue not in queues:
        raise Rejected(f"{queue}: No such queue. Job not submitted.")
    slots_text = options.get("-n", "1").split(",")[-1]
    if not slots_text.isdigit() or int(slots_text) < 1:
        raise Rejected(f"{options['-n']}: Bad argument for option -n. Job not submitted.")
    runlimit = parse_runlimit(options["-W"]) if "-W" in options else None
    memlimit = parse_memory(options["-M"]) if "-M" in options else None
    # A relative -cwd is against the folder bsub ran in, as in LSF.
    cwd = os.path.join(os.getcwd(), options.get("-cwd", "."))
    with lsf.locked():
        jobid = lsf.next_id()
        folder = lsf.folder(jobid)
        folder.mkdir(parents=True)
        if script is not None:
            (folder / "script").write_text(script)
            (folder / "script").chmod(0o700)
            command = [str(folder / "script")]
        name = options.get("-J", "script" if script is not None else " ".join(command)[:4000])
        output = options.get("-oo", options.get("-o", str(folder / "output")))
        error = options.get("-eo", options.get("-e", output))
        job = Job(
            jobid=jobid,
            job_name=name,
            job_description=options.get("-Jd", ""),
            user=getpass.getuser(),
            queue=queue,
            command=command,
            cwd=os.path.normpath(cwd),
            submit_cwd=os.getcwd(),
            env=dict(os.environ),
            slots=int(slots_text),
            runlimit_minutes=runlimit,
            memlimit_kb=memlimit,
            # A relative path is against the job's working directory, as in LSF (bsub -o).
            output=os.path.join(cwd, output.replace("%J", str(jobid)).replace("%I", "0")),
            error=os.path.join(cwd, error.replace("%J", str(jobid)).replace("%I", "0")),
            append="-oo" not in options and "-eo" not in options,
            submit_time=time.time(),
            extra={k: v for k, v in options.items() if k not in _HANDLED},
        )
        lsf.save(job)
    # The job's supervisor outlives this command, like sbatchd outlives bsub. It starts with
    # SIGTERM blocked (the mask survives exec) and unblocks it once its handler is in place:
    # a bkill while its Python still starts is then handled, not fatal (a dead supervisor
    # would leave the job pending for ever).
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "dask_deploy.testing.lsf", "_supervise", str(jobid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ.copy(),
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}),
    )
    with lsf.locked():
        saved = lsf.load(jobid)
        if saved is not None and saved.supervisor is None:
            saved.supervisor = supervisor.pid
            lsf.save(saved)
    which = "queue" if "-q" in options else "default queue"
    return f"Job <{jobid}> is submitted to {which} <{queue}>."


# ----------------------------------------------------------------------------- the supervisor


def _writable(path: str) -> bool:
    """Whether the job's output file can be written: its folder exists and takes files."""
    folder = os.path.dirname(path) or "."
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def supervise(jobid: int) -> None:
    """Wait for free slots, run the job in its own process group, record how it ended."""
    lsf = cluster()
    killed = threading.Event()  # bkill leaves a "kill" file and signals the supervisor
    signal.signal(signal.SIGTERM, lambda signum, frame: killed.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by bsub until now
    if (lsf.folder(jobid) / "kill").exists():  # bkill came before this process had started
        killed.set()
    job = wait_for_slots(lsf, jobid, killed)
    if job is None:
        return
    if killed.is_set():  # killed while pending: it never ran
        finish(lsf, jobid, "EXIT", None, "TERM_OWNER: job killed by owner")
        return
    env = {
        **job.env,
        "LSB_JOBID": str(jobid),
        "LSB_JOBNAME": job.job_name,
        "LSB_QUEUE": job.queue,
        "LSB_JOBINDEX": "0",
        "LSB_DJOB_NUMPROC": str(job.slots),
        "LSB_MAX_NUM_PROCESSORS": str(job.slots),
        "LSB_HOSTS": " ".join([socket.gethostname()] * job.slots),
        "LSB_MCPU_HOSTS": f"{socket.gethostname()} {job.slots}",
        # The folder bsub ran in, not -cwd ("the current working directory of the submission
        # host", LSF's environment variable reference).
        "LS_SUBCWD": job.submit_cwd,
    }
    mode = "a" if job.append else "w"
    # "If the specified output_file path is not accessible, the output will not be stored"
    # (bsub -o): the job runs all the same.
    output = job.output if _writable(job.output) else os.devnull
    error = job.error if _writable(job.error) else os.devnull
    with open(output, mode) as out, open(error, mode) as err:
        process = subprocess.Popen(
            job.command,
            cwd=job.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err if error != output or output == os.devnull else subprocess.STDOUT,
            start_new_session=True,
        )
    minute = float(lsf.config["seconds_per_minute"])  # 60; tests shorten run limits with it
    deadline = None if job.runlimit_minutes is None else time.time() + job.runlimit_minutes * minute
    reason = ""
    while process.poll() is None:
        if killed.is_set():
            reason = "TERM_OWNER: job killed by owner"
        elif deadline is not None and time.time() >= deadline:
            reason = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
        if reason:
            terminate(process, float(lsf.config["terminate_interval"]))
            break
        time.sleep(0.2)
    code = process.wait()
    stat = "DONE" if code == 0 and not reason else "EXIT"
    finish(lsf, jobid, stat, code, reason or ("" if code == 0 else f"exit code {code}"))


def wait_for_slots(lsf: Cluster, jobid: int, killed: threading.Event) -> Job | None:
    """The job once it holds its slots (state RUN), or once killed while pending."""
    while True:
        with lsf.locked():
            job = lsf.load(jobid)
            if (lsf.folder(jobid) / "kill").exists():
                killed.set()
            if job is None or killed.is_set():
                return job
            used = sum(j.slots for j in lsf.jobs() if j.stat == "RUN")
            job.supervisor = os.getpid()
            if used + job.slots <= int(lsf.config["slots"]):
                job.stat, job.start_time, job.pend_reason = "RUN", time.time(), ""
                lsf.save(job)
                return job
            job.pend_reason = "Not enough job slot(s);"
            lsf.save(job)
        time.sleep(0.5)


def terminate(process: subprocess.Popen[bytes], interval: float) -> None:
    """bkill's default: SIGINT and SIGTERM to the job's group, SIGKILL after the interval."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
    end = time.time() + interval
    while process.poll() is None and time.time() < end:
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(lsf: Cluster, jobid: int, stat: str, code: int | None, reason: str) -> None:
    with lsf.locked():
        job = lsf.load(jobid)
        if job is None:
            return
        job.stat, job.finish_time, job.exit_code, job.exit_reason = stat, time.time(), code, reason
        job.pend_reason = ""
        lsf.save(job)


# --------------------------------------------------------------------------------------- bjobs


def lsf_time(moment: float | None, suffix: str = "") -> str:
    if moment is None:
        return ""
    text = time.strftime("%b %e %H:%M", time.localtime(moment))
    if os.environ.get("LSB_DISPLAY_YEAR", "").upper() == "Y":
        text += time.strftime(" %Y", time.localtime(moment))
    return text + suffix


def field_value(job: Job, name: str) -> str:
    host = socket.gethostname()
    if name == "finish_time":
        if job.finish_time is not None:
            return lsf_time(job.finish_time, " L")
        if job.start_time is not None and job.runlimit_minutes is not None:
            return lsf_time(job.start_time + job.runlimit_minutes * 60, " E")
        return ""
    values = {
        "jobid": str(job.jobid),
        "job_name": job.job_name,
        "job_description": job.job_description,
        "stat": job.stat,
        "user": job.user,
        "queue": job.queue,
        "from_host": host,
        "exec_host": f"{job.slots}*{host}" if job.start_time is not None else "",
        "submit_time": lsf_time(job.submit_time),
        "start_time": lsf_time(job.start_time),
        "runtimelimit": "" if job.runlimit_minutes is None else f"{job.runlimit_minutes:.1f}",
        "nreq_slot": str(job.slots),
        "memlimit": "" if job.memlimit_kb is None else f"{job.memlimit_kb / 1024:g} Mbytes",
        "pend_reason": job.pend_reason if job.stat == "PEND" else "",
        "exit_code": "" if job.exit_code in (None, 0) else str(job.exit_code),
        "exit_reason": job.exit_reason,
    }
    return values[name]


def parse_fields(spec: str) -> list[str]:
    """``-o "jobid stat:8 job_name:-20 delimiter=','"``: the field names, widths dropped."""
    names = []
    for word in shlex.split(spec):
        if word.startswith("delimiter="):
            continue
        name = word.split(":", 1)[0].lower()
        if name not in FIELDS:
            raise Rejected(f"Output format error: field name <{name}> is not valid.")
        names.append(name)
    return names


def bjobs(argv: Sequence[str]) -> tuple[str, int]:
    parser = argparse.ArgumentParser(prog="bjobs", add_help=False)
    for flag in ("-a", "-d", "-p", "-r", "-json", "-noheader", "-w"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("-J")
    parser.add_argument("-u")
    parser.add_argument("-o")
    parser.add_argument("ids", nargs="*")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit:
        raise Rejected("bjobs: illegal option") from None
    if args.json and args.noheader:
        raise Rejected("bjobs: -json cannot be used with -noheader")
    lsf = cluster()
    names = parse_fields(args.o) if args.o else ["jobid", "user", "stat", "queue", "job_name"]
    user = None if args.u == "all" else (args.u or getpass.getuser())
    horizon = time.time() - float(lsf.config["clean_period"])
    selected = []
    for job in lsf.jobs():
        finished = job.stat in FINISHED
        if args.ids and str(job.jobid) not in args.ids:
            continue
        if not args.ids:
            if user is not None and job.user != user:
                continue
            if args.J is not None and job.job_name != args.J:
                continue
            recent = finished and (job.finish_time or 0) >= horizon
            wanted = (args.a and (recent or not finished)) or (args.d and recent)
            wanted = wanted or (not args.a and not args.d and not finished)
            if (args.p and job.stat != "PEND") or (args.r and job.stat != "RUN"):
                wanted = False
            if not wanted:
                continue
        selected.append(job)
    missing = [i for i in args.ids if not any(str(j.jobid) == i for j in selected)]
    if args.json:
        records: list[dict[str, str]] = [
            {name.upper(): field_value(job, name) for name in names} for job in selected
        ]
        records += [{"JOBID": i, "ERROR": f"Job <{i}> is not found"} for i in missing]
        document = {"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}
        return json.dumps(document, indent=2, separators=(",", ":")), 0
    if not selected:
        return ("No unfinished job found" if not args.a else "No job found"), 255
    lines = [] if args.noheader else [" ".join(name.upper() for name in names)]
    lines += [" ".join(field_value(job, n) or "-" for n in names) for job in selected]
    return "\n".join(lines), 0


# --------------------------------------------------------------------------------------- bkill


def bkill(argv: Sequence[str]) -> tuple[str, int]:
    lsf = cluster()
    ids = [word for word in argv if not word.startswith("-")]
    if not ids:
        raise Rejected("Usage: bkill [-s signal] [job_ID ...]")
    me = getpass.getuser()
    jobs = {str(job.jobid): job for job in lsf.jobs()}
    if ids == ["0"]:
        ids = [i for i, j in jobs.items() if j.user == me and j.stat not in FINISHED]
    lines, status = [], 0
    for jobid in ids:
        job = jobs.get(jobid)
        if job is None:
            lines.append(f"Job <{jobid}>: No matching job found")
            status = 255
        elif job.user != me and os.geteuid() != 0:
            lines.append(f"Job <{jobid}>: User permission denied")
            status = 255
        elif job.stat in FINISHED:
            lines.append(f"Job <{jobid}>: Job has already finished")
            status = 255
        else:
            (lsf.folder(job.jobid) / "kill").touch()
            if job.supervisor is not None:
                try:
                    os.kill(job.supervisor, signal.SIGTERM)
                except ProcessLookupError:
                    finish(lsf, job.jobid, "EXIT", None, "TERM_OWNER: job killed by owner")
            lines.append(f"Job <{jobid}> is being terminated")
    return "\n".join(lines), status


# ----------------------------------------------------------------------------------- commands


def install(folder: Path, state: Path, **config: Any) -> Path:
    """Write ``bsub``, ``bjobs`` and ``bkill`` into ``folder`` for the state folder ``state``.

    ``config`` overrides the cluster's settings (queues, slots, terminate_interval,
    clean_period). Returns ``folder``, to put first on ``PATH``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    (state / "cluster.json").write_text(json.dumps({**DEFAULT_CLUSTER, **config}, indent=2))
    for command in ("bsub", "bjobs", "bkill"):
        wrapper = folder / command
        wrapper.write_text(
            "#!/bin/sh\n"
            f"# The dask-deploy LSF stand-in's {command} (dask_deploy.testing.lsf).\n"
            f"export {STATE_ENV}='{state}'\n"
            f"exec '{sys.executable}' -m dask_deploy.testing.lsf {command} \"$@\"\n"
        )
        wrapper.chmod(0o755)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:
        print("usage: python -m dask_deploy.testing.lsf bsub|bjobs|bkill|install ...")
        return 2
    command, rest = words[0], words[1:]
    try:
        if command == "install":
            parser = argparse.ArgumentParser(prog="dask_deploy.testing.lsf install")
            parser.add_argument("folder", type=Path)
            parser.add_argument("--state", type=Path, required=True)
            parsed = parser.parse_args(rest)
            print(install(parsed.folder, parsed.state))
            return 0
        if command == "bsub":
            stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
            print(bsub(rest, stdin))
            return 0
        if command == "_supervise":
            supervise(int(rest[0]))
            return 0
        if command == "bjobs":
            text, status = bjobs(rest)
        elif command == "bkill":
            text, status = bkill(rest)
        else:
            raise Rejected(f"{command}: not an LSF command of the stand-in")
    except Rejected as rejected:
        print(rejected, file=sys.stderr)
        return 255
    print(text, file=sys.stdout if status == 0 else sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
