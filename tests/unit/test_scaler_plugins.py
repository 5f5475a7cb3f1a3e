"""Third-party policies and backends are found through entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, load_backend_factory
from dask_deploy.backends import registry as backend_registry
from dask_deploy.config import parse_config
from dask_deploy.policy import Observation, PolicySettings, ScaleUp, load_policy_factory
from dask_deploy.policy import registry as policy_registry
from dask_deploy.scaler import build_scaler

PLUGIN = """
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.policy import Hold, ScaleUp


class AlwaysTwo:
    target_duration = None

    def decide(self, observation, now):
        if len(observation.requested) < 2:
            return ScaleUp(2, "the plug-in wants two")
        return Hold("two is enough")


def create_policy(settings):
    return AlwaysTwo()


def create_backend(context):
    return FakeBackend(context.deployment + "-plugin")
"""


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dd_example_plugin.py").write_text(PLUGIN)
    info = tmp_path / "dd_example_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dd-example-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [dask_deploy.policies]
            always-two = dd_example_plugin:create_policy

            [dask_deploy.backends]
            example = dd_example_plugin:create_backend
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("plugin_on_path")
async def test_plugin_policy_and_backend_are_found_and_work() -> None:
    assert "always-two" in policy_registry.names()
    assert "example" in backend_registry.names()
    config = parse_config(
        {
            "scheduler": {"address": "tcp://127.0.0.1:8786"},
            "policy": {"name": "always-two"},
            "backend": {"name": "example"},
        }
    )
    policy = load_policy_factory(config.policy.name)(PolicySettings())
    backend = load_backend_factory(config.backend.name)(
        BackendContext(config.deployment, "tcp://127.0.0.1:8786")
    )
    decision = policy.decide(Observation((), tuple(await backend.instances()), 0, 0), now=0)
    assert decision == ScaleUp(2, "the plug-in wants two")
    await backend.scale_up(2)
    assert sorted(i.name for i in await backend.instances()) == ["dask-plugin-0", "dask-plugin-1"]


def test_without_the_plugin_its_name_is_a_settings_error() -> None:
    assert "always-two" not in policy_registry.names()
    with pytest.raises(SettingsError) as raised:
        load_policy_factory("always-two")
    assert raised.value.key == "policy.name"


SCHEMA_PLUGIN = """
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.policy import Hold


class Never:
    target_duration = None

    def decide(self, observation, now):
        return Hold("never")


def create_policy(settings):
    return Never()


create_policy.options_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"patience": {"type": "integer", "minimum": 1}},
}


def create_backend(context):
    return FakeBackend(context.deployment)


create_backend.options_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"zone": {"enum": ["north", "south"]}},
}
"""


@pytest.fixture
def schema_plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dd_schema_plugin.py").write_text(SCHEMA_PLUGIN)
    info = tmp_path / "dd_schema_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dd-schema-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[dask_deploy.policies]\npatient = dd_schema_plugin:create_policy\n\n"
        "[dask_deploy.backends]\nzoned = dd_schema_plugin:create_backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("schema_plugin_on_path")
@pytest.mark.parametrize(
    ("section", "options", "message"),
    [
        ("policy", {"patience": 0}, "policy.options.patience: got 0, expected an integer >= 1"),
        (
            "backend",
            {"zone": "east"},
            "backend.options.zone: got 'east', expected one of \"north\"",
        ),
    ],
)
def test_a_plugin_publishes_its_options_schema_and_the_loop_validates_with_it(
    section: str, options: dict[str, object], message: str
) -> None:
    raw = {
        "scheduler": {"address": "tcp://127.0.0.1:8786"},
        "policy": {"name": "patient"},
        "backend": {"name": "zoned"},
    }
    raw[section] = {**raw[section], "options": options}
    with pytest.raises(SettingsError) as raised:
        build_scaler(parse_config(raw), address="tcp://127.0.0.1:8786")
    assert str(raised.value).startswith(message)
