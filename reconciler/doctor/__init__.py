"""`stella doctor`: is this repository, and this installation, ready to reconcile?

Each check is a `Check` (name, status `ok` | `warn` | `fail`, message, details), in this order:

- `repository`: the Git repository opens, `stella.yaml` at HEAD reads, and the branch it names exists.
- `manifests`: every manifest on that branch validates (problems counted, the first few named file:line).
- `plugins`: every installed entry point of every kind (registries, gates, signers, agents, doctor
  checks) with its manifest and health: loaded, refused (with the reason) or
  failed to import. It loads them exactly as `discover()` does, with the same checks (`discover.check`).
- `plugins-in-use`: the gates of every environment, the registry plugins and the signer of
  `stella.yaml` are installed and usable; each one that is not is named with the file that uses it.
- `offline`: offline mode (`offline: true` in stella.yaml, or `--offline`) against the network plugins
  in use: a gate or signer that needs the network cannot work offline.
- `registries`: each configured registry answers its plugin's `ping()` (bounded; skipped offline; a
  plugin without `ping()` leaves its registry not checked).
- `policy`: the ratified policy, and whether the branch proposes another (after a genesis only).
- `signing-key`: the evidence signing key (`STELLA_SIGNING_KEY`) is set, readable, not readable by
  group or others, P-256, and its public key is in `trust/evidence-keys/` (else records would not
  verify).
- `allowed-signers`: every line of `trust/allowed_signers` has an identity and a key ssh-keygen accepts.
- `git-access`: the Git directory's objects and refs are writable (evidence commits go there).
- `clock`: the system clock is not before the newest evidence decision.
- `evidence`: the evidence ref exists, and the chain head each environment pointer names is present
  (cheap: `stella audit verify` is the full audit).
- `agents` (only when some environment has `targets:`): each target's agent plugin is installed and
  usable here, the ratified policy holds its agent key `trust/agent-keys/<target>.pub` (a P-256 public
  key), and its engine answers when it is a unix socket on this machine (or `STELLA_DOCTOR_ENGINE=1`).
- third-party checks from the `stella.doctor` entry point group, each isolated: a check that raises,
  hangs or returns nonsense is a `fail`, never a crash.

The modules, by concern: `result` (the `Check` and `Diagnosis` types), `driver` (runs them all),
`repository` (repository, manifests, Git access), `plugins` and `usage` (installed plugins, the ones
in use, offline mode), `registries`, `trust` (policy, keys, allowed signers), `evidence` (clock and
chain heads), `agents` (deployment targets), `third_party`.

What it must not do: write anything (not the repository, not the evidence index cache; ssh-keygen gets
a temporary directory of its own), or print (`cli.py` shows the result). Its only network access is
through registry plugins' `ping()` and, when asked, agent plugins' engines, never in offline mode; it
knows no registry host, engine or protocol.
"""

from __future__ import annotations

from ..protocols import DoctorPlugin
from .driver import diagnose, run_checks
from .plugins import KINDS, Health, PluginInfo, scan_plugins
from .registries import PROBE_TIMEOUT
from .result import SHOWN, Check, Diagnosis, Status
from .third_party import CHECK_TIMEOUT
from .trust import KEYS_DIR

__all__ = [
    "CHECK_TIMEOUT",
    "KEYS_DIR",
    "KINDS",
    "PROBE_TIMEOUT",
    "SHOWN",
    "Check",
    "Diagnosis",
    "DoctorPlugin",
    "Health",
    "PluginInfo",
    "Status",
    "diagnose",
    "run_checks",
    "scan_plugins",
]
