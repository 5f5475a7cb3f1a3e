"""A running ``dask-deploy scale`` applies an edited scaler.yaml without a restart, and keeps
the running configuration when the edit is invalid (local workers, a real scheduler)."""

from __future__ import annotations

import pytest
import yaml
from distributed import Client
from scaler_support import Deployment, slow

pytestmark = pytest.mark.integration


async def test_an_edited_maximum_applies_and_an_invalid_edit_is_refused(
    deployment: Deployment,
) -> None:
    scaler = deployment.start_scaler(name="fixed", minimum=1, maximum=1, options={"workers": 1})
    async with Client(deployment.scheduler.address, asynchronous=True) as client:
        futures = client.map(slow, range(4))  # something to keep the scheduler busy meanwhile
        await deployment.wait_for("one worker", lambda: len(deployment.connected()) == 1)
        config = yaml.safe_load(scaler.config.read_text())
        config["policy"].update(minimum=2, maximum=2, options={"workers": 2})
        scaler.config.write_text(yaml.safe_dump(config))
        await deployment.wait_for("the edit applies", lambda: len(deployment.connected()) == 2)
        assert "configuration changed" in scaler.text()
        assert "policy.maximum: 1 -> 2" in scaler.text()

        config["policy"]["maximum"] = -3
        scaler.config.write_text(yaml.safe_dump(config))
        await deployment.wait_for("the refusal is logged", lambda: "not applied" in scaler.text())
        refusal = [line for line in scaler.text().splitlines() if "not applied" in line]
        assert len(refusal) == 1
        assert "policy.maximum: got -3" in refusal[0]
        assert "the running configuration stays" in refusal[0]
        # Still two workers, still ticking with the old policy; the scaler did not exit.
        assert scaler.process is not None and scaler.process.poll() is None
        assert len(deployment.connected()) == 2
        await client.gather(futures)
