"""The ssh backend's pure parts: options, the ssh command, remote scripts, listing, placement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, InstanceState
from dask_deploy.backends.ssh import (
    Host,
    RemoteError,
    SshBackend,
    SshSettings,
    free_index,
    list_script,
    load_settings,
    parse_listing,
    placements,
    ssh_argv,
    start_script,
    stop_script,
    worker_argv,
)

SHELLCHECK = Path(sys.executable).parent / "shellcheck"
HOSTS = [{"host": "node1", "max_workers": 2}, {"host": "10.0.0.2", "max_workers": 1}]


def settings(**options: Any) -> SshSettings:
    return load_settings(BackendContext("dask", "tcp://head:8786", {"hosts": HOSTS, **options}))


def test_defaults_verify_host_keys_in_batch_mode() -> None:
    argv = ssh_argv(settings(), "node1")
    assert argv[:2] == ["ssh", "-T"]
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[-2:] == ["node1", "sh -s"]
    assert "-l" not in argv and "-p" not in argv and "-i" not in argv


def test_connection_options_become_ssh_arguments() -> None:
    argv = ssh_argv(
        settings(
            user="dask",
            port=2022,
            identity_file="/k",
            known_hosts="/kh",
            host_key_checking="accept-new",
            ssh_options=["ProxyJump=bastion"],
        ),
        "node1",
    )
    assert "StrictHostKeyChecking=accept-new" in argv
    assert argv[argv.index("-i") + 1] == "/k" and "IdentitiesOnly=yes" in argv
    assert "UserKnownHostsFile=/kh" in argv and "ProxyJump=bastion" in argv
    assert argv[argv.index("-l") + 1] == "dask" and argv[argv.index("-p") + 1] == "2022"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"hosts": []}, "backend.options.hosts"),
        ({"hosts": [{"host": "a b"}]}, "backend.options.hosts[0].host"),
        ({"hosts": [{"host": "a", "max_workers": 0}]}, "backend.options.hosts[0].max_workers"),
        ({"hosts": [{"host": "a"}, {"host": "a"}]}, "backend.options.hosts"),
        ({"host_key_checking": "no"}, "backend.options.host_key_checking"),
        ({"ssh_options": ["StrictHostKeyChecking=no"]}, "backend.options.ssh_options"),
        ({"port": 0}, "backend.options.port"),
        ({"connect_timeout": 0}, "backend.options.connect_timeout"),
        ({"state_dir": "~/"}, "backend.options.state_dir"),
        ({"scheduler_security": {"ca_file": "/a"}}, "backend.options.scheduler_security"),
        ({"password": "x"}, "backend.options.password"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(BackendContext("dask", "tcp://h:1", {"hosts": HOSTS, **options}))
    assert caught.value.key == key


def test_worker_command_names_the_worker_and_fills_in_its_host() -> None:
    argv = worker_argv(settings(worker_args=["--host", "{host}"]), "node1", "dask-node1-0")
    assert argv[:6] == [
        "python3",
        "-m",
        "distributed.cli.dask_worker",
        "tcp://head:8786",
        "--name",
        "dask-node1-0",
    ]
    assert argv[-2:] == ["--host", "node1"]
    assert argv[argv.index("--local-directory") + 1] == ".dask-deploy/dask/dask-node1-0"


def test_remote_scripts_are_posix_sh_and_shellcheck_clean(tmp_path: Path) -> None:
    ours = settings(worker_args=["--resources", "GPU=1 $(not run)"])
    scripts = {
        "start.sh": start_script(ours, "node1", "dask-node1-0", 1.5),
        "list.sh": list_script(ours, "node1"),
        "stop.sh": stop_script(ours, ["dask-node1-0", "dask-node1-1"]),
    }
    for name, text in scripts.items():
        path = tmp_path / name
        path.write_text(text)
        # SC2016: single quotes that keep $ literal are the point of shlex.quote.
        lint = subprocess.run(
            [str(SHELLCHECK), "--shell=sh", "--exclude=SC2016", str(path)],
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, f"{name}:\n{lint.stdout}"
    assert "'GPU=1 $(not run)'" in scripts["start.sh"]


def test_listing_skips_noise_and_keeps_the_last_log_line() -> None:
    text = "motd line\ndask-node1-0 running 10.5\ndask-node1-1 exited 11 Killed: out of memory\n"
    listed = parse_listing(text)
    assert [(x.instance.name, x.instance.state, x.instance.requested_at) for x in listed] == [
        ("dask-node1-0", InstanceState.RUNNING, 10.5),
        ("dask-node1-1", InstanceState.EXITED, 11.0),
    ]
    assert listed[1].last_log_line == "Killed: out of memory"


def test_placement_is_least_loaded_first_and_respects_max_workers() -> None:
    hosts = [Host("a", 4), Host("b", 2), Host("c", 2)]
    assert placements(hosts, {}, 3) == ["a", "b", "c"]
    assert placements(hosts, {"a": 2, "b": 1}, 4) == ["c", "a", "b", "c"]
    assert placements(hosts, {"a": 4, "b": 2, "c": 2}, 1) == []


def test_free_index_reuses_the_lowest_gap() -> None:
    assert free_index("d", "a", ["d-a-0", "d-a-1", "d-a-3", "d-b-2"]) == 2


class ScriptedHosts:
    """A runner that answers like the remote scripts would, for hosts that are up."""

    def __init__(self, listings: dict[str, str]) -> None:
        self.listings = listings
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def run(self, host: str, script: str) -> str:
        kind = "stop" if "kill -TERM" in script else "start" if "setsid" in script else "list"
        self.calls.append((host, kind))
        if host in self.down:
            raise RemoteError(host, "Connection refused", unreachable=True)
        return self.listings.get(host, "") if kind == "list" else ""


async def test_a_silent_hosts_workers_count_while_the_scheduler_has_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = settings()
    hosts = ScriptedHosts({"node1": "dask-node1-0 running 1\n", "10.0.0.2": ""})
    connected = {"dask-node1-0"}

    async def scheduler_workers() -> frozenset[str]:
        return frozenset(connected)

    backend = SshBackend(ours, hosts, scheduler_workers)  # type: ignore[arg-type]
    assert [i.name for i in await backend.instances()] == ["dask-node1-0"]

    hosts.down.add("node1")
    found = await backend.instances()
    assert [(i.name, i.state) for i in found] == [("dask-node1-0", InstanceState.RUNNING)]
    await backend.scale_up(3)  # node1 silent: only 10.0.0.2 (max 1) gets a new worker
    assert [c for c in hosts.calls if c[1] == "start"] == [("10.0.0.2", "start")]

    connected.clear()  # the scheduler lost it: exited, reported once, then forgotten
    found = await backend.instances()
    assert [(i.name, i.state) for i in found] == [("dask-node1-0", InstanceState.EXITED)]
    assert await backend.instances() == []
    assert caplog.text.count("ssh host node1 skipped: Connection refused") == 1


async def test_workers_removed_while_their_host_is_silent_are_stopped_when_it_answers() -> None:
    hosts = ScriptedHosts({"node1": "dask-node1-0 running 1\n"})

    async def scheduler_workers() -> frozenset[str]:
        return frozenset({"dask-node1-0"})

    backend = SshBackend(settings(), hosts, scheduler_workers)  # type: ignore[arg-type]
    await backend.instances()
    hosts.down.add("node1")
    await backend.scale_down(["dask-node1-0"])  # does not raise: kept for later
    assert await backend.instances() == []
    hosts.down.clear()
    hosts.calls.clear()
    await backend.instances()
    assert hosts.calls[:2] == [("node1", "stop"), ("node1", "list")]
