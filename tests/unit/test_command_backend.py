"""The command backend with small real commands: names, listing, timeouts, failures."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, InstanceState
from dask_deploy.backends.command import (
    CommandBackend,
    CommandFailed,
    CommandRunner,
    ListError,
    create,
    load_settings,
    parse_list_output,
)
from process_support import wait_for

#: A tiny resource manager in a file: start appends "<name> running", stop marks "exited".
FAKE_MANAGER = """
import os, sys
db = os.environ["DB"]
verb, names = sys.argv[1], sys.argv[2:]
rows = dict(l.split() for l in open(db)) if os.path.exists(db) else {}
if verb == "start":
    assert os.environ["DASK_DEPLOY_SCHEDULER_ADDRESS"] == "tcp://h:1"
    rows[names[0]] = "running"
    print("id-" + names[0])
elif verb == "stop":
    for n in names:
        rows[n] = "exited"
else:
    print("\\n".join(f"{n} {s}" for n, s in rows.items()))
    print("someone-else-worker-0 running")
open(db, "w").write("".join(f"{n} {s}\\n" for n, s in rows.items()))
"""


def backend(tmp_path: Path, **options: Any) -> CommandBackend:
    script = tmp_path / "manager.py"
    script.write_text(FAKE_MANAGER)
    base = [sys.executable, str(script)]
    defaults = {
        "start": [*base, "start"],
        "stop": [*base, "stop"],
        "list": [*base, "list"],
        "environment": {"DB": str(tmp_path / "db")},
    }
    made = create(BackendContext("d", "tcp://h:1", {**defaults, **options}))
    assert isinstance(made, CommandBackend)
    return made


async def test_scale_up_names_instances_and_scale_down_stops_only_known_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ours = backend(tmp_path)
    await ours.scale_up(2)
    await ours.scale_up(2)  # already requested: nothing more
    found = await ours.instances()
    assert [(i.name, i.state) for i in found] == [
        ("d-worker-0", InstanceState.RUNNING),
        ("d-worker-1", InstanceState.RUNNING),
    ]
    assert "started d-worker-0 (id id-d-worker-0)" in caplog.text
    await ours.scale_down(["d-worker-0", "someone-else-worker-0", "d-worker-9"])
    states = {i.name: i.state for i in await ours.instances()}
    assert states == {"d-worker-0": InstanceState.EXITED, "d-worker-1": InstanceState.RUNNING}
    await ours.scale_up(2)
    assert (tmp_path / "db").read_text().count("running") == 2  # the gap is filled again


async def test_a_failing_start_logs_one_line_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours = backend(tmp_path, start=["sh", "-c", "echo quota exceeded >&2; exit 4"])
    for _ in range(3):  # three ticks, failing alike
        await ours.scale_up(3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "starting d-worker-0 failed: `sh -c 'echo quota exceeded >&2; exit 4' d-worker-0` "
        "exited 4: quota exceeded"
    ]


async def test_a_start_failure_is_logged_again_once_it_changes_or_after_a_success(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "start.sh"
    ours = backend(tmp_path, start=["sh", str(script)])
    started = backend(tmp_path).settings.start  # the fake's working start command

    def start_says(text: str) -> None:
        script.write_text(f"echo {text} >&2; exit 4\n")

    start_says("quota exceeded")
    await ours.scale_up(1)
    await ours.scale_up(1)
    start_says("no such image")
    await ours.scale_up(1)
    script.write_text(" ".join(f"'{a}'" for a in started) + ' "$@"\n')
    await ours.scale_up(1)  # started: the failure is over
    start_says("no such image")
    await ours.scale_up(2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.rsplit(": ", 1)[1] for w in warnings] == [
        "quota exceeded",
        "no such image",
        "no such image",
    ]


async def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    settings = load_settings(
        BackendContext("d", "tcp://h:1", {"start": "true", "stop": "true", "list": "true"})
    )
    child = tmp_path / "child.pid"
    # 3 s: time for a loaded machine to start sh and let it write the pid before the kill.
    with pytest.raises(CommandFailed, match=r"timed out after 3s"):
        await CommandRunner(settings).run(["sh", "-c", f"sleep 60 & echo $! > {child}; wait"], 3)
    pid = int(child.read_text())
    wait_for("the timed-out command's child is gone", lambda: not alive(pid), timeout=10)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_missing_command_is_a_clear_failure() -> None:
    settings = load_settings(
        BackendContext("d", "tcp://h:1", {"start": "true", "stop": "true", "list": "true"})
    )
    with pytest.raises(CommandFailed, match="could not run"):
        await CommandRunner(settings).run(["/nonexistent/list"], 5)


def test_list_output_lines_must_be_name_and_state() -> None:
    assert parse_list_output("d", "d-worker-3 pending\n", ["l"]) == {
        "d-worker-3": InstanceState.PENDING
    }
    with pytest.raises(ListError, match="`l` line 2: got 'd-worker-1 up'"):
        parse_list_output("d", "d-worker-0 running\nd-worker-1 up\n", ["l"])


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"start": []}, "backend.options.start"),
        ({"stop": None}, "backend.options.stop"),
        ({"list_timeout": 0}, "backend.options.list_timeout"),
        ({"environment": {"A": 1}}, "backend.options.environment"),
        ({"shell": True}, "backend.options.shell"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    base = {"start": ["s"], "stop": ["t"], "list": ["l"]}
    with pytest.raises(SettingsError) as caught:
        load_settings(BackendContext("d", "tcp://h:1", {**base, **options}))
    assert caught.value.key == key
