"""`stella init`: write a new repository laid out like example-repo/, with a fresh evidence key.

The private key goes to `.stella/evidence-key.pem` inside the new directory, which the scaffold's
.gitignore excludes: it must never be committed. Refuses to write into a non-empty directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import InvalidInput
from .sign import generate_key

_FILES: dict[str, str] = {
    ".gitignore": ".stella/\n",
    "stella.yaml": """\
apiVersion: stella/v1
kind: Settings
tenant: {tenant}
branch: main
# offline: true         # resolve images only from mirror/oci/ and refuse network plugins
registries: []          # e.g. [{{host: registry.example.com}}]; loopback hosts need no entry
signer: {{plugin: key, key: env:STELLA_SIGNING_KEY}}
evidence: {{ref: refs/heads/stella/evidence}}
# Who ratifies a change of the policy (stella.yaml, environments/, templates/, trust/): approvals by
# members of these groups, in commits signed with keys of trust/allowed_signers (docs/governance.md).
governance: {{required: 1, groups: [policy-admins], separationOfDuties: true}}
""",
    "environments/dev.yaml": """\
apiVersion: stella/v1
kind: Environment
name: dev
targets: []
""",
    "environments/prod.yaml": """\
apiVersion: stella/v1
kind: Environment
name: prod
promotesFrom: dev
soak: 1h
approvals: {{required: 2, groups: [release-managers], separationOfDuties: true}}
targets: []
""",
    "trust/groups.yaml": """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: []
  policy-admins: [{admin}]
""",
    "trust/allowed_signers": (
        '# <identity> namespaces="git" <ssh public key>   (one line per approver)\n{admin_line}'
    ),
    "releases/.gitkeep": "",
    "promotions/.gitkeep": "",
    "approvals/.gitkeep": "",
    "templates/.gitkeep": "",
}


def write_scaffold(
    target: Path, admin: str = "admin@example.com", admin_key: str | None = None
) -> tuple[list[str], Path]:
    """Write the scaffold into `target`; return the files written and the private key path.

    `admin` is the first policy admin (the `policy-admins` group that `governance:` names); with
    `admin_key` (an SSH public key line), `trust/allowed_signers` trusts it, so the admin can approve
    policy changes from the start.
    """
    if target.exists() and any(target.iterdir()):
        raise InvalidInput(f"{target}: directory is not empty; stella init needs a new directory")
    tenant = target.resolve().name.lower().replace("_", "-").strip(".-") or "tenant"
    admin_line = ""
    if admin_key:
        parts = admin_key.split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise InvalidInput(f"--admin-key: not an SSH public key line ({admin_key[:40]!r})")
        admin_line = f'{admin} namespaces="git" {parts[0]} {parts[1]}\n'
    written = []
    for rel, text in _FILES.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(tenant=tenant, admin=admin, admin_line=admin_line))
        written.append(rel)
    key = target / ".stella" / "evidence-key.pem"
    generate_key(key)
    public = target / "trust" / "evidence-keys" / "evidence.pub"
    public.parent.mkdir(parents=True, exist_ok=True)
    key.with_name(key.name + ".pub").replace(public)
    written.append("trust/evidence-keys/evidence.pub")
    subprocess.run(["git", "init", "-q", "-b", "main", str(target)], check=False, capture_output=True)
    return sorted(written), key
