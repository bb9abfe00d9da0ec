"""Rollouts that stop and undo themselves, against a real Engine, registry and Compose: rolling batches
coordinated through the evidence branch, a release that fails its health check rolled back to the exact
digests that ran before, the later batches never touched, and `rollbackSafe: false` respected."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.agent.record import deployment_statement
from reconciler.evidence import canonical, sha256_hex
from reconciler.ledger import bundle_path, evidence_path
from reconciler.protocols import AgentTarget
from reconciler.repo import Repo
from reconciler.sign import KeySigner, load_private_key
from tests.support.cli import STELLA
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import RegistryServer
from tests.support.rollout_site import SECRET, TARGETS, Shop


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(autouse=True)
def _clean(engine: DockerDaemon) -> Iterator[None]:
    yield
    client = engine.client()
    try:
        for container in client.containers.list(all=True):
            container.remove(force=True)
    finally:
        client.close()


def _digest(image: str) -> str:
    return image.partition("@")[2]


@pytest.mark.registry
def test_a_rolling_release_that_fails_its_health_check_is_rolled_back_and_halts_the_rest(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    shop = Shop(tmp_path, registry, engine, "{strategy: rolling, batchSize: 1, healthTimeout: 20s}")
    good = shop.release("shop-1.0", "good")

    # batch 2 waits for batch 1; then each batch follows the one before
    code, waiting = shop.agent("web-2")
    assert (code, waiting["action"]) == (0, "waiting"), waiting
    [dev] = shop.stella("status", "dev", "-o", "json").json()["environments"]
    assert [t["state"] for t in dev["targets"]] == ["pending", "waiting", "waiting"], dev
    assert dev["rollout"]["state"] == "in-progress", dev
    assert "waits for web-1" in str(waiting["reason"]) and (waiting["batch"], waiting["batches"]) == (2, 3)
    assert shop.running("web-2") == []
    for target in TARGETS:
        code, done = shop.agent(target)
        assert (code, done["action"]) == (0, "deployed"), done
        assert shop.running(target) == [_digest(good)]

    bad = shop.release("shop-2.0", "broken")
    code, failed = shop.agent("web-1")
    assert (code, failed["action"], failed["result"]) == (1, "rolled-back", "failed"), failed
    assert failed["rollbackResult"] == "rolled-back", failed
    assert shop.running("web-1") == [_digest(good)]  # the exact digest that ran before runs again

    deployment = shop.record(failed["deployment"])
    assert deployment["type"] == "deployment" and deployment["result"] == "failed"
    assert "rolling back to shop-1.0" in str(deployment["reason"]), deployment["reason"]
    assert deployment["rollout"] == {"strategy": "rolling", "batch": 1, "batches": 3}
    rollback = shop.record(failed["rollback"])
    assert rollback["type"] == "rollback" and rollback["result"] == "rolled-back"
    assert rollback["previous"] == failed["deployment"]  # chained after the failed attempt
    assert rollback["rollback"]["failedDecision"] == failed["decision"]  # type: ignore[index]
    assert rollback["release"]["name"] == "shop-1.0"  # type: ignore[index]
    sticker = json.loads((shop.state("web-1") / "stella.version.json").read_bytes())
    assert sticker["deployment"] == failed["rollback"]
    assert sticker["release"]["components"]["web"]["digest"] == _digest(good)

    # the later batches never touch the failed release
    for target in ("web-2", "web-3"):
        code, halted = shop.agent(target)
        assert (code, halted["action"]) == (1, "halted"), halted
        assert "web-1 (batch 1) failed it" in str(halted["reason"]), halted
        assert shop.running(target) == [_digest(good)]
    # and the failed decision is not retried on web-1 until a newer decision
    code, again = shop.agent("web-1")
    assert (code, again["action"]) == (1, "skipped"), again
    assert shop.running("web-1") == [_digest(good)]
    assert _digest(bad) not in shop.running("web-1")

    status = shop.stella("status", "dev", "-o", "json")
    assert status.code == 1, status.out + status.err
    [dev] = status.json()["environments"]
    assert dev["rollout"]["state"] == "halted" and dev["rollout"]["haltedAt"] == "web-1", dev["rollout"]
    assert "halted at batch 1: web-1 failed shop-2.0" in dev["rollout"]["reason"], dev["rollout"]
    states = {t["name"]: (t["state"], t["reason"]) for t in dev["targets"]}
    assert states["web-1"] == ("rolled-back", "shop-2.0 failed here; rolled back: shop-1.0 runs again"), (
        states
    )
    assert states["web-2"][0] == states["web-3"][0] == "halted", states
    text = shop.stella("status", "dev").out
    assert "dev: rollout rolling: halted (halted at batch 1: web-1 failed shop-2.0" in text, text
    assert "dev/web-1: rolled-back" in text and "last rollback shop-1.0 rolled-back" in text, text

    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0
    replay = shop.stella("replay", "--all")
    assert replay.code == 0, replay.out + replay.err
    out = tmp_path / "report"
    assert shop.stella("audit", "report", out).code == 0
    page = (out / "env-dev.html").read_text()
    assert "rolled back from" in page and "result-rolled-back" in page and "rolling, batch 1 of 3" in page

    # a newer good release goes out again, batch after batch
    newer = shop.release("shop-2.1", "good-again")
    for target in TARGETS:
        code, done = shop.agent(target)
        assert (code, done["action"]) == (0, "deployed"), done
        assert shop.running(target) == [_digest(newer)]


@pytest.mark.registry
def test_a_release_marked_not_rollback_safe_is_not_rolled_back_automatically(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    shop = Shop(tmp_path, registry, engine, "{strategy: all-at-once, healthTimeout: 20s}")
    shop.release("shop-1.0", "good")
    code, done = shop.agent("web-1")
    assert (code, done["action"]) == (0, "deployed"), done
    shop.release("shop-2.0", "broken-migration", rollback_safe=False)
    code, failed = shop.agent("web-1")
    assert (code, failed["action"], failed["rollback"]) == (1, "failed", None), failed
    assert "shop-2.0 is marked rollbackSafe: false; a person must act" in str(failed["reason"]), failed
    record = shop.record(failed["deployment"])
    assert record["result"] == "failed" and "a person must act" in str(record["reason"])
    sticker = json.loads((shop.state("web-1") / "stella.version.json").read_bytes())
    assert sticker["release"]["name"] == "shop-1.0"  # the sticker says what last deployed whole
    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0


# serves /etc over HTTP on the host network, unless the image's /etc/marker says "broken"
HTTP_TEMPLATE = """\
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
    network_mode: host
    command: ["/bin/busybox", "sh", "-c", "/bin/busybox grep -q broken /etc/marker && exec /bin/busybox sleep 3600; exec /bin/busybox httpd -f -p 127.0.0.1:PORT -h /etc"]
    stop_grace_period: 1s
    environment:
{% for key in secrets %}
      {{ key }}: {{ secret(key) }}
{% endfor %}
{% endfor %}
"""


@pytest.mark.registry
def test_an_http_health_check_that_never_answers_rolls_the_target_back(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    port = _free_port()
    shop = Shop(
        tmp_path,
        registry,
        engine,
        "{strategy: all-at-once, healthTimeout: 20s}",
        template=HTTP_TEMPLATE.replace("PORT", str(port)),
        more=(
            "hostAccess: {hostNamespaces: true}\n"
            f"health: {{web: {{url: 'http://127.0.0.1:{port}/marker', expectStatus: 200, timeout: 3s}}}}\n"
        ),
    )
    good = shop.release("shop-1.0", "good")
    code, done = shop.agent("web-1")
    assert (code, done["action"]) == (0, "deployed"), done
    record = shop.record(done["deployment"])
    health = [s for s in record["steps"] if s["stage"] == "health"]  # type: ignore[union-attr]
    assert len(health) == 1 and health[0]["exitCode"] == 0, record["steps"]
    assert f"web: http://127.0.0.1:{port}/marker answered 200" in health[0]["output"]

    shop.release("shop-2.0", "broken")
    code, failed = shop.agent("web-1")
    assert (code, failed["action"], failed["rollbackResult"]) == (1, "rolled-back", "rolled-back"), failed
    reason = str(shop.record(failed["deployment"])["reason"])
    assert reason.startswith("health check failed: web: http://127.0.0.1:") and "expected 200" in reason, (
        reason
    )
    assert shop.running("web-1") == [_digest(good)]
    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.registry
def test_an_agent_killed_while_rolling_back_finishes_the_rollback_on_its_next_run(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    shop = Shop(tmp_path, registry, engine, "{strategy: all-at-once, healthTimeout: 20s}")
    good = shop.release("shop-1.0", "good")
    code, done = shop.agent("web-1")
    assert (code, done["action"]) == (0, "deployed"), done
    shop.release("shop-2.0", "broken")
    running = subprocess.Popen(
        [STELLA, *map(str, shop.agent_argv("web-1"))],
        env={**os.environ, "DB_PASSWORD": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    owed = shop.state("web-1") / "rollback.json"
    deadline = time.monotonic() + 60
    while not owed.exists() and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert owed.exists(), "the agent never got to its rollback"
    running.send_signal(signal.SIGKILL)
    running.wait(timeout=30)
    code, after = shop.agent("web-1")
    assert (code, after["action"], after["rollbackResult"]) == (1, "rolled-back", "rolled-back"), after
    assert not owed.exists()
    assert shop.running("web-1") == [_digest(good)]
    rollback = shop.record(after["rollback"])
    failed = shop.record(rollback["previous"])  # chained after the failed attempt the killed run recorded
    assert failed["type"] == "deployment" and failed["result"] == "failed"
    code, again = shop.agent("web-1")
    assert (code, again["action"]) == (1, "skipped"), again
    assert shop.stella("audit", "verify", "--root", shop.genesis).code == 0


@pytest.mark.registry
def test_a_succeeded_record_forged_for_an_earlier_batch_does_not_move_the_rollout(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    """Someone with push access and web-2's agent key writes a `succeeded` record of web-1 for the
    decision: web-1's record verifies only with web-1's key, so web-2 still waits, and audit says why."""
    shop = Shop(tmp_path, registry, engine, "{strategy: rolling, batchSize: 1, healthTimeout: 20s}")
    shop.release("shop-1.0", "good")
    [dev] = shop.stella("status", "dev", "-o", "json").json()["environments"]
    decision = dev["shouldRun"]["evidence"]
    made = shop.record(decision)
    [artifact] = made["artifacts"]  # type: ignore[misc]
    lock = subprocess.run(
        ["git", "cat-file", "blob", f"stella/evidence:artifacts/{artifact['sha256']}/{artifact['name']}"],
        cwd=shop.root,
        check=True,
        capture_output=True,
    ).stdout
    now = datetime.now(UTC)
    statement = canonical(
        deployment_statement(
            tenant="shop",
            target=AgentTarget("dev", "web-1", shop.engine.endpoint, "shopweb-1"),
            agent="docker",
            decision=decision,
            release=made["release"],  # type: ignore[arg-type]
            policy=made["policy"],  # type: ignore[arg-type]
            result="succeeded",
            reason="",
            steps=[],
            containers=[],
            lock=lock,
            images=[],
            started_at=now,
            completed_at=now,
            previous=None,
        )
    )
    hex_id = sha256_hex(statement)
    forger = KeySigner(load_private_key(shop.keys / "web-2.pem"))
    repo = Repo(shop.root)
    head = repo.resolve_ref("refs/heads/stella/evidence")
    files = {evidence_path(hex_id): statement, bundle_path(hex_id): forger.sign(statement)}
    repo.commit_files("refs/heads/stella/evidence", head, files, "web-1 deployed it", parent=head)

    code, waiting = shop.agent("web-2")
    assert (code, waiting["action"]) == (0, "waiting"), waiting
    assert shop.running("web-2") == []
    verify = shop.stella("audit", "verify", "--root", shop.genesis)
    assert verify.code == 1 and f"evidence/{hex_id}" in verify.out, verify.out
