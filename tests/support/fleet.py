"""fleet.yaml files for the fleet's tests and benchmark (docs/fleet.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TenantEntry:
    """One tenant of fleet.yaml; `signing_key` is a reference (`file:/path` or `env:NAME`)."""

    name: str
    repo: str
    signing_key: str
    poll_interval: str | None = None
    """None: fleet.yaml's default (60s)."""
    webhook_secret: str | None = None
    """None: `env:<NAME>_WEBHOOK_SECRET`."""


def write_fleet_yaml(path: Path, role: str, workdir: Path | str, tenants: Iterable[TenantEntry]) -> Path:
    """Write fleet.yaml at `path` (the database is fleet.yaml's default, `env:STELLA_DATABASE_URL`)."""
    lines = [
        "apiVersion: stella/v1",
        "kind: Fleet",
        f"serviceRole: {role}",
        f"workdir: {workdir}",
        "tenants:",
    ]
    for tenant in tenants:
        lines += [
            f"  - name: {tenant.name}",
            f'    repo: "{tenant.repo}"',
            f'    signingKey: "{tenant.signing_key}"',
            f"    webhookSecret: {tenant.webhook_secret or f'env:{tenant.name.upper()}_WEBHOOK_SECRET'}",
        ]
        if tenant.poll_interval is not None:
            lines.append(f"    pollInterval: {tenant.poll_interval}")
    path.write_text("\n".join(lines) + "\n")
    return path
