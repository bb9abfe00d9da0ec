"""Plugins that break, hang or need the network affect only the environments that use them, and
`stella doctor` shows every plugin with its manifest and health.

The plugins are real distributions on disk (`tests/support/plugins.py`), found by the real `stella`
command through `PYTHONPATH`; the repository is a copy of example-repo/ (offline: true).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.sign import generate_key
from tests.support.pipeline import (
    CREATED,
    Workspace,
    change_evidence,
    decision_records,
    example_workspace,
    promotion,
)
from tests.support.plugins import EVALUATE_ERROR, IMPORT_ERROR, write_doctor_check, write_gate
from tests.support.registry import RegistryServer
from tests.support.repos import commit_all
from tests.support.ssh import person

OFFLINE_SETTING = "(`offline: true` in stella.yaml, or --offline)"

BROKEN = {
    # environment: (gate plugin it uses, the whole gate result it gets)
    "broken-import": (
        "import-error-gate",
        {
            "gate": "import-error-gate",
            "status": "error",
            "reason": "gate-unavailable",
            "message": "gate plugin 'import-error-gate' is not usable: failed to import "
            f"stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}",
        },
    ),
    "crashing": (
        "raises-gate",
        {
            "gate": "raises-gate",
            "status": "error",
            "reason": "gate-raised",
            "message": f"gate raised RuntimeError: {EVALUATE_ERROR}",
        },
    ),
    "hanging": (
        "hangs-gate",
        {
            "gate": "hangs-gate",
            "status": "error",
            "reason": "gate-timeout",
            "message": "gate did not answer within 1s",
        },
    ),
    "old-api": (
        "old-api-gate",
        {
            "gate": "old-api-gate",
            "status": "error",
            "reason": "gate-unavailable",
            "message": "gate plugin 'old-api-gate' is not usable: "
            "targets plugin API version 0, this Stella provides version 1",
        },
    ),
    "absent": (
        "not-installed-gate",
        {
            "gate": "not-installed-gate",
            "status": "error",
            "reason": "gate-unavailable",
            "message": "gate plugin 'not-installed-gate' is not installed (no stella.gates entry point)",
        },
    ),
}

NETWORKED = {
    "networked": (
        "network-gate",
        {
            "gate": "network-gate",
            "status": "error",
            "reason": "gate-unavailable",
            "message": "gate plugin 'network-gate' is not usable: plugin 'network-gate' needs the network "
            f"and offline mode is on {OFFLINE_SETTING}",
        },
    ),
    "registry-signed": (
        "signature-registry",
        {
            "gate": "signature-registry",
            "status": "error",
            "reason": "gate-unavailable",
            "message": "gate plugin 'signature-registry' is not usable: plugin 'signature-registry' needs "
            f"the network and offline mode is on {OFFLINE_SETTING}",
        },
    ),
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory of plugin distributions: every kind of gate, and two third-party doctor checks."""
    root = tmp_path / "site"
    for variant in ("healthy", "import-error", "raises", "hangs", "old-api", "network"):
        write_gate(root, variant)
    write_doctor_check(root, "site-check")
    write_doctor_check(root, "crashing-check", raises=True)
    return root


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "STELLA_GATE_TIMEOUT": "1"}


@dataclass
class PluginWorkspace(Workspace):
    """A workspace whose every `stella` command sees the plugins of `site`, as if they were installed:
    also the session's final `replay --all`, which needs the gates that made the records."""

    site: Path = Path()

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **_env(self.site)}


def plugin_workspace(tmp_path: Path, site: Path) -> PluginWorkspace:
    base = example_workspace(tmp_path)
    CREATED.remove(base)  # replaced by the workspace below, which registers itself
    return PluginWorkspace(base.root, base.key, site=site)


def _environment(name: str, gate: str) -> str:
    options = ", keys: [trust/evidence-keys/test.pub]" if gate == "signature-registry" else ""
    return (
        f"apiVersion: stella/v1\nkind: Environment\nname: {name}\ngates:\n  - {{plugin: {gate}{options}}}\n"
    )


def _add_environments(ws: Workspace, gates: dict[str, str]) -> None:
    """One environment per (name, gate plugin), each with a promotion of shop-1.4.0, committed on main."""
    for name, gate in gates.items():
        (ws.root / "environments" / f"{name}.yaml").write_text(_environment(name, gate))
        (ws.root / "promotions" / f"shop-1.4.0--{name}.yaml").write_text(promotion("shop-1.4.0", name))
    commit_all(ws.root, "environments with plugin gates")


def _statements(ws: Workspace) -> list[str]:
    return decision_records(ws)


def _assert_pending(decision: dict[str, object], expected_gate: dict[str, str]) -> None:
    assert (decision["decision"], decision["evidence"], decision["problem"]) == ("pending", None, None)
    gates = decision["gates"]
    assert isinstance(gates, list)
    assert [g for g in gates if g["gate"] == expected_gate["gate"]] == [expected_gate]
    others = [(g["gate"], g["status"]) for g in gates if g["gate"] != expected_gate["gate"]]
    assert others and all(status == "pass" for _, status in others), others  # only the plugin's gate holds it


def test_a_broken_gate_keeps_only_its_environment_pending(tmp_path: Path, site: Path) -> None:
    ws = plugin_workspace(tmp_path, site)
    _add_environments(ws, {"healthy": "healthy-gate", **{env: gate for env, (gate, _) in BROKEN.items()}})

    run = ws.stella("reconcile", "--once", "-o", "json")

    assert run.code == 0, run.err  # pending is not an error
    assert "Traceback" not in run.err
    decisions = {d["environment"]: d for d in run.json()["decisions"]}
    assert set(decisions) == {"dev", "healthy", *BROKEN}
    for env in ("dev", "healthy"):
        assert decisions[env]["decision"] == "allow", decisions[env]
        assert {g["status"] for g in decisions[env]["gates"]} == {"pass"}
        assert decisions[env]["evidence"] is not None
    healthy_gate = next(g for g in decisions["healthy"]["gates"] if g["gate"] == "healthy-gate")
    assert healthy_gate == {
        "gate": "healthy-gate",
        "status": "pass",
        "reason": "fine",
        "message": "nothing to object to",
    }
    for env, (_, expected) in BROKEN.items():
        _assert_pending(decisions[env], expected)
    recorded = {
        d["evidence"].removeprefix("sha256:") for env, d in decisions.items() if env in ("dev", "healthy")
    }
    assert {f.removeprefix("evidence/").removesuffix(".json") for f in _statements(ws)} == recorded
    assert ws.stella("audit", "verify").code == 0
    replay = ws.stella("replay", "--all", "-o", "json")
    assert replay.code == 0, replay.out

    why = ws.stella("why", "shop-1.4.0--crashing", "-o", "json")
    assert why.code == 1
    assert [g for g in why.json()["gates"] if g["gate"] == "raises-gate"] == [BROKEN["crashing"][1]]


@pytest.mark.parametrize("how", ["stella.yaml", "--offline"], ids=["offline-in-stella-yaml", "offline-flag"])
def test_offline_mode_refuses_network_gates_by_name(tmp_path: Path, site: Path, how: str) -> None:
    ws = plugin_workspace(tmp_path, site)
    flags: list[str] = []
    if how == "--offline":
        settings = ws.root / "stella.yaml"
        settings.write_text(settings.read_text().replace("offline: true ", "offline: false"))
        flags = ["--offline"]
    _add_environments(ws, {env: gate for env, (gate, _) in NETWORKED.items()})

    run = ws.stella("reconcile", "--once", "-o", "json", *flags)

    assert run.code == 0, run.err
    decisions = {d["environment"]: d for d in run.json()["decisions"]}
    assert decisions["dev"]["decision"] == "allow"
    for env, (_, expected) in NETWORKED.items():
        _assert_pending(decisions[env], expected)

    doctor = ws.stella("doctor", "-o", "json", *flags)
    assert doctor.code == 1, doctor.out
    checks = {c["name"]: c for c in doctor.json()["checks"]}
    setting = "`offline: true` in stella.yaml" if how == "stella.yaml" else "--offline"
    assert checks["offline"] == {
        "name": "offline",
        "status": "fail",
        "message": "2 plugin use(s) refused in offline mode, first: environments/networked.yaml: gate plugin "
        f"'network-gate' needs the network and offline mode is on ({setting}): promotions to networked stay pending",
        "details": [
            f"environments/networked.yaml: gate plugin 'network-gate' needs the network and offline mode is on ({setting}): promotions to networked stay pending",
            f"environments/registry-signed.yaml: gate plugin 'signature-registry' needs the network and offline mode is on ({setting}): promotions to registry-signed stay pending",
        ],
    }
    assert checks["plugins-in-use"]["status"] == "ok"


def _plugin_rows(doctor_json: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    return {str(p["name"]): p for p in doctor_json["plugins"]}


def test_doctor_lists_every_plugin_with_its_manifest_and_health(tmp_path: Path, site: Path) -> None:
    ws = plugin_workspace(tmp_path, site)
    _add_environments(ws, {"healthy": "healthy-gate", **{env: gate for env, (gate, _) in BROKEN.items()}})

    doctor = ws.stella("doctor", "-o", "json")

    assert doctor.code == 1, doctor.out
    rows = _plugin_rows(doctor.json())

    def manifest(name: str, variant: str, *, network: bool = False, api: int = 1) -> dict[str, object]:
        return {
            "name": name,
            "version": "0.1",
            "kinds": ["gate"],
            "network": network,
            "apiVersion": api,
            "description": f"test gate: {variant}",
        }

    def row(name: str, health: str, reason: str, manifest: dict[str, object] | None) -> dict[str, object]:
        module = "stella_testplugin_" + name.replace("-", "_")
        return {
            "kind": "gates",
            "group": "stella.gates",
            "name": name,
            "target": f"{module}:gate",
            "distribution": {"name": f"stella-testplugin-{name}", "version": "0.1"},
            "health": health,
            "reason": reason,
            "manifest": manifest,
        }

    offline = f"plugin 'network-gate' needs the network and offline mode is on {OFFLINE_SETTING}"
    expected = {
        "healthy-gate": row("healthy-gate", "loaded", "", manifest("healthy-gate", "healthy")),
        "raises-gate": row("raises-gate", "loaded", "", manifest("raises-gate", "raises")),
        "hangs-gate": row("hangs-gate", "loaded", "", manifest("hangs-gate", "hangs")),
        "import-error-gate": row(
            "import-error-gate",
            "failed",
            f"failed to import stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}",
            None,
        ),
        "old-api-gate": row(
            "old-api-gate",
            "refused",
            "targets plugin API version 0, this Stella provides version 1",
            manifest("old-api-gate", "old-api", api=0),
        ),
        "network-gate": row(
            "network-gate", "refused", offline, manifest("network-gate", "network", network=True)
        ),
    }
    assert {name: rows[name] for name in expected} == expected
    assert rows["site-check"]["kind"] == "doctor" and rows["site-check"]["health"] == "loaded"
    for builtin in ("approvals", "environment-order", "freeze-window", "key", "oci-layout", "vulnerability"):
        assert rows[builtin]["health"] == "loaded", rows[builtin]
    assert rows["oci"]["health"] == "refused"  # needs the network; example-repo is offline

    checks = {c["name"]: c for c in doctor.json()["checks"]}
    assert checks["plugins"]["status"] == "warn"
    assert checks["plugins"]["details"] == [
        f"gate plugin 'import-error-gate' (stella_testplugin_import_error_gate:gate): failed to import stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}",
        "gate plugin 'old-api-gate' (stella_testplugin_old_api_gate:gate): targets plugin API version 0, this Stella provides version 1",
    ]
    assert checks["plugins-in-use"]["status"] == "fail"
    assert checks["plugins-in-use"]["details"] == [
        f"environments/{env}.yaml: {gate['message']} (environment {env})"
        for env, (_, gate) in sorted(BROKEN.items())
        if gate["reason"] == "gate-unavailable"
    ]
    assert checks["site-check/custom-site-check"] == {
        "name": "site-check/custom-site-check",
        "status": "warn",
        "message": "looked at repo",
        "details": ["a detail"],
    }
    assert checks["crashing-check"] == {
        "name": "crashing-check",
        "status": "fail",
        "message": f"doctor plugin 'crashing-check' raised RuntimeError: {EVALUATE_ERROR}",
        "details": [],
    }

    text = ws.stella("doctor")
    assert text.code == 1
    assert "✗ plugins-in-use" in text.out and "✓ repository" in text.out
    assert (
        f"gates import-error-gate: failed: failed to import stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}"
        in text.out
    )


def test_doctor_on_a_healthy_repository(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    before = ws.stella("doctor", "-o", "json")
    assert before.code == 0, before.out
    statuses = {c["name"]: c["status"] for c in before.json()["checks"]}
    assert statuses == {
        "repository": "ok",
        "manifests": "ok",
        "plugins": "ok",
        "plugins-in-use": "ok",
        "offline": "ok",
        "registries": "ok",
        "signing-key": "ok",
        "allowed-signers": "warn",  # example-repo trusts no approver yet, and staging and prod need approvals
        "git-access": "ok",
        "clock": "ok",
        "evidence": "ok",
        "agents": "warn",  # example-repo's targets have no agent keys (trust/agent-keys/) yet
    }
    assert ws.stella("reconcile", "--once").code == 0
    after = {c["name"]: c for c in ws.stella("doctor", "-o", "json").json()["checks"]}
    assert after["evidence"]["status"] == "ok"
    assert "1 environment chain head(s) present" in after["evidence"]["message"]
    assert (
        after["clock"]["status"] == "ok" and "after the newest evidence decision" in after["clock"]["message"]
    )


def test_doctor_exits_2_when_the_repository_is_unusable(tmp_path: Path) -> None:
    from tests.support.cli import stella

    run = stella("doctor", "-o", "json", "--repo", tmp_path)
    assert run.code == 2
    checks = run.json()["checks"]
    assert checks[0]["name"] == "repository" and checks[0]["status"] == "fail"
    assert "not a Git repository" in checks[0]["message"]
    assert {p["name"] for p in run.json()["plugins"]} >= {"approvals", "key", "oci-layout"}


def _p384(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("case", "status", "fragment"),
    [
        ("trusted", "ok", "P-256 key, hint"),
        ("unset", "fail", "environment variable STELLA_SIGNING_KEY is not set"),
        ("missing-file", "fail", "signing key not found"),
        ("group-readable", "warn", "has mode 0640: group or others can read it"),
        (
            "untrusted",
            "fail",
            "is not in trust/evidence-keys/ on the branch: the records it signs would not verify",
        ),
        ("not-p256", "fail", "evidence keys must be ECDSA P-256"),
    ],
    ids=["trusted", "unset", "missing-file", "group-readable", "untrusted", "not-p256"],
)
def test_doctor_checks_the_signing_key(tmp_path: Path, case: str, status: str, fragment: str) -> None:
    ws = example_workspace(tmp_path)
    key = str(ws.key)
    if case == "unset":
        key = ""
    elif case == "missing-file":
        key = str(tmp_path / "nowhere.pem")
    elif case == "group-readable":
        ws.key.chmod(0o640)
    elif case == "untrusted":
        other = tmp_path / "other" / "key.pem"
        generate_key(other)
        key = str(other)
    elif case == "not-p256":
        _p384(tmp_path / "p384.pem")
        key = str(tmp_path / "p384.pem")
    run = ws.stella("doctor", "-o", "json", env={"STELLA_SIGNING_KEY": key})
    check = next(c for c in run.json()["checks"] if c["name"] == "signing-key")
    assert check["status"] == status, check
    assert fragment in check["message"] + " ".join(check["details"]), check
    assert run.code == (1 if status == "fail" else 0)


@pytest.mark.parametrize(
    ("lines", "status", "expected"),
    [
        (["{alice}"], "ok", "1 signer(s); ssh-keygen accepts every line"),
        (["# only a comment"], "warn", "trust/allowed_signers lists no keys"),
        (
            ["{alice}", "bob@example.com"],
            "fail",
            "trust/allowed_signers:2: expected `<identity> [options] <key type> <base64 key>`",
        ),
        (
            ["{alice}", "bob@example.com ssh-ed25519 AAAAnot-a-key"],
            "fail",
            "trust/allowed_signers:2: ssh-keygen: invalid key",
        ),
    ],
    ids=["valid", "no-keys", "identity-only", "bad-key"],
)
def test_doctor_checks_allowed_signers(tmp_path: Path, lines: list[str], status: str, expected: str) -> None:
    ws = example_workspace(tmp_path)
    alice = person(tmp_path / "people", "alice@example.com")
    text = "".join(line.format(alice=alice.allowed_signers_line().strip()) + "\n" for line in lines)
    (ws.root / "trust" / "allowed_signers").write_text(text)
    commit_all(ws.root, "trust")
    check = next(
        c for c in ws.stella("doctor", "-o", "json").json()["checks"] if c["name"] == "allowed-signers"
    )
    assert check["status"] == status, check
    assert expected in check["message"], check


@pytest.mark.parametrize(
    ("tamper", "check_name", "status", "fragment"),
    [
        (
            "future-decision",
            "clock",
            "warn",
            "is before the newest evidence decision (2999-01-01T00:00:00Z, environment dev)",
        ),
        (
            "missing-head",
            "evidence",
            "fail",
            "environments/dev/stella.version.json: its head sha256:" + "0" * 64 + " is not on the branch",
        ),
    ],
    ids=["clock-behind-evidence", "pointer-head-missing"],
)
def test_doctor_checks_clock_and_evidence_heads(
    tmp_path: Path, tamper: str, check_name: str, status: str, fragment: str
) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    pointer = json.loads(ws.show("environments/dev/stella.version.json"))
    if tamper == "future-decision":
        statement = json.loads(ws.show(f"evidence/{pointer['head'].removeprefix('sha256:')}.json"))
        statement["predicate"]["decidedAt"] = "2999-01-01T00:00:00Z"
        hex_id = "f" * 64
        files: dict[str, bytes | None] = {
            f"evidence/{hex_id}.json": json.dumps(statement).encode(),
            f"evidence/{hex_id}.sigstore.json": b"{}",
        }
    else:
        hex_id = "0" * 64
        files = {}
    pointer["head"] = f"sha256:{hex_id}"
    files["environments/dev/stella.version.json"] = json.dumps(pointer).encode()
    change_evidence(ws, files, "tamper")
    ws.tampered = True

    run = ws.stella("doctor", "-o", "json")
    check = next(c for c in run.json()["checks"] if c["name"] == check_name)
    assert check["status"] == status, check
    assert fragment in check["message"], check


@pytest.mark.registry
def test_doctor_probes_the_configured_registries(tmp_path: Path, registry: RegistryServer) -> None:
    ws = example_workspace(tmp_path)
    settings = ws.root / "stella.yaml"
    text = settings.read_text().replace("offline: true ", "offline: false")
    text = text.replace(
        "registries: []", f"registries: [{{host: '{registry.host}'}}, {{host: '127.0.0.1:9'}}]"
    )
    settings.write_text(text)
    commit_all(ws.root, "online, with registries")

    online = {c["name"]: c for c in ws.stella("doctor", "-o", "json").json()["checks"]}
    check = online["registries"]
    assert (check["status"], check["message"]) == ("fail", "some registry cannot be reached (2 configured)")
    assert check["details"][0] == f"{registry.host}: GET http://{registry.host}/v2/ answered 200"
    assert check["details"][1].startswith(
        "127.0.0.1:9: unreachable: GET http://127.0.0.1:9/v2/: ConnectError: "
    )
    assert online["offline"] == {
        "name": "offline",
        "status": "ok",
        "message": "offline mode is off; network plugins in use: registry oci",
        "details": [],
    }

    offline = {c["name"]: c for c in ws.stella("doctor", "-o", "json", "--offline").json()["checks"]}
    assert offline["registries"]["status"] == "ok"
    assert (
        offline["registries"]["message"]
        == "skipped: offline mode is on (--offline); images come from mirror/oci/"
    )
