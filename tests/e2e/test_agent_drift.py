"""The agent watches for drift on every run with nothing to deploy: one `drift` observation per change
of the drift state (none while nothing changes), signed and chained like its deployment records, and
with `driftPolicy: remediate` the lock applied again. Real Engine, registry and Compose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import RegistryServer
from tests.support.rollout_site import Shop


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


def _container(shop: Shop, target: str) -> object:
    client = shop.engine.client()
    try:
        [found] = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project=shop{target}"}
        )
        return found
    finally:
        client.close()


def _stop(shop: Shop, target: str) -> None:
    client = shop.engine.client()
    try:
        for c in client.containers.list(filters={"label": f"com.docker.compose.project=shop{target}"}):
            c.stop(timeout=1)
    finally:
        client.close()


def _start(shop: Shop, target: str) -> None:
    client = shop.engine.client()
    try:
        for c in client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project=shop{target}"}
        ):
            c.start()
    finally:
        client.close()


@pytest.mark.registry
def test_one_drift_record_per_change_of_state_and_none_while_nothing_changes(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    shop = Shop(tmp_path, registry, engine, "{strategy: all-at-once, healthTimeout: 20s}")
    image = shop.release("shop-1.0", "good")
    code, done = shop.agent("web-1")
    assert (code, done["action"]) == (0, "deployed"), done
    code, quiet = shop.agent("web-1")
    assert (code, quiet["action"], quiet["drift"], quiet["driftRecord"]) == (0, "none", [], None), quiet

    _stop(shop, "web-1")
    code, drifted = shop.agent("web-1")
    assert code == 1 and [i["kind"] for i in drifted["drift"]] == ["stopped"], drifted  # type: ignore[union-attr]
    assert drifted["driftRecord"] is not None, drifted
    record = shop.record(drifted["driftRecord"])
    assert (record["type"], record["result"]) == ("drift", "drifted")
    assert record["previous"] == done["deployment"] and record["decision"] == done["decision"]
    assert [i["kind"] for i in record["drift"]] == ["stopped"]  # type: ignore[union-attr]
    code, same = shop.agent("web-1")
    assert code == 1 and same["drift"] == drifted["drift"] and same["driftRecord"] is None, same

    status = shop.stella("status", "dev", "-o", "json")
    web1 = next(t for t in status.json()["environments"][0]["targets"] if t["name"] == "web-1")
    assert web1["state"] == "drifted" and web1["drift"]["evidence"] == drifted["driftRecord"], web1
    assert "1 difference(s): web stopped" in web1["reason"], web1

    _start(shop, "web-1")
    code, back = shop.agent("web-1")
    assert (code, back["drift"]) == (0, []) and back["driftRecord"] is not None, back
    healed = shop.record(back["driftRecord"])
    assert (healed["result"], healed["previous"]) == ("in-sync", drifted["driftRecord"])
    code, quiet = shop.agent("web-1")
    assert (code, quiet["driftRecord"]) == (0, None), quiet
    assert shop.running("web-1") == [image.partition("@")[2]]

    web1 = next(
        t
        for t in shop.stella("status", "dev", "-o", "json").json()["environments"][0]["targets"]
        if t["name"] == "web-1"
    )
    assert web1["state"] == "in-sync", web1
    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0
    replay = shop.stella("replay", "--all")
    assert replay.code == 0, replay.out + replay.err
    out = tmp_path / "report"
    assert shop.stella("audit", "report", out).code == 0
    page = (out / "env-dev.html").read_text()
    assert "result-drifted" in page and "web <strong>stopped</strong>" in page and "result-in-sync" in page


@pytest.mark.registry
def test_drift_remediated_when_the_environment_says_so(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    shop = Shop(
        tmp_path,
        registry,
        engine,
        "{strategy: all-at-once, healthTimeout: 20s}",
        more="driftPolicy: remediate\n",
    )
    image = shop.release("shop-1.0", "good")
    code, done = shop.agent("web-1")
    assert (code, done["action"]) == (0, "deployed"), done
    _container(shop, "web-1").remove(force=True)  # type: ignore[attr-defined]
    assert shop.running("web-1") == []
    code, fixed = shop.agent("web-1")
    assert code == 0 and [i["kind"] for i in fixed["drift"]] == ["missing"], fixed  # type: ignore[union-attr]
    assert fixed["remediationResult"] == "succeeded", fixed
    assert shop.running("web-1") == [image.partition("@")[2]]
    remedy = shop.record(fixed["remediation"])
    assert remedy["type"] == "deployment" and remedy["previous"] == fixed["driftRecord"]
    assert str(remedy["reason"]).startswith("remediating drift (1 difference(s): web missing)"), remedy[
        "reason"
    ]
    code, quiet = shop.agent("web-1")
    assert (code, quiet["drift"], quiet["driftRecord"], quiet["remediation"]) == (0, [], None, None), quiet
    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0
