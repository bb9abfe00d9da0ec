"""`stella audit`: verify the evidence branch the way an auditor would, offline; export and checkpoint it.

`verify` checks, each failure a `Finding` with a stable `check` code and naming the file (and commit,
for history):
- `hash`: every file under `evidence/`, `inputs/`, `artifacts/` hashes to the name it is stored under;
- `signature`: every statement has a bundle whose DSSE payload is exactly the statement's bytes, signed
  by a trusted key (`trust/evidence-keys/` of the source branch, or a packet's);
- `key`: every key file of the source branch (or packet) under `trust/evidence-keys/` reads (a bad one
  is a finding; the others still verify);
- `statement`: every statement is a JSON object with a predicate naming its environment;
- `inputs`, `artifact`: every statement's inputs file and artifacts exist;
- `lock`: every release lock's id is the hash of its name and digests, and every record's release id is
  its lock's (a lock changed after it was written is also a `history` finding);
- `chain`: every chain link points to a record of the same environment, no chain forks, and each
  environment's chain has one head (a record nothing names as previous);
- `pointer`: each environment's pointer names its chain's head, and its `current` is exactly its newest
  allowed record (release, id, evidence, decidedAt, artifacts); no pointer for an environment without
  records;
- `duplicate`: one decision per promotion id (among records that verify);
- `history`: no file under `releases/`, `evidence/`, `inputs/`, `artifacts/` was changed or deleted in
  any commit of the branch; `reflog`: the ref only ever moved by fast-forward (where a reflog exists);
- `layout`: no file outside the branch's layout (DESIGN §4, §8, §9), anywhere on it;
- `unreferenced`: every inputs file and artifact is one a record names, every stored policy was ratified
  on the chain, and every policy file is one a stored policy lists (release locks are written before
  their decisions: a lock no record names is fine);
- `checkpoint`: given a signed checkpoint, everything it covered is still there, as a prefix;
- `packet`: (verifying a packet) every member is the one its manifest lists.

It streams: the work is cut into chunks (records, inputs, artifacts, locks), run by this process and
worker processes that each open the repository themselves and return findings plus a few small facts
per record (environment, previous, result, release, promotion, artifacts, decidedAt), plus the names of
the inputs and artifact files they checked; file bytes and statements are never all held at once.
Meanwhile `git log` diffs every commit in a process of its own. Results are merged and sorted, so the
report does not depend on scheduling.

`export_packet` writes an offline packet (the branch as a Git bundle, the trust material, a manifest
and a README); `verify_packet` verifies one in a temporary directory: it reads the tar as a stream,
refusing path tricks, too many members and members over their size caps before anything is written,
reads the manifest first and extracts only the members it lists.

The package, by concern (each module's docstring says what it must not do):
- `findings`: the check codes, `Finding` and `Report`;
- `layout`: the branch's directories, and the `layout` check;
- `keys`, `keyless`: the trust material (evidence keys; keyless policy and its verifier);
- `verifier`: `verify`, the plan, the chunks, the worker processes and the whole-branch checks' order;
- `worker`: what a chunk of work carries to and from a worker; `records`: the checks it runs;
- `policybook`: the policy chain and which key may sign what; `branch`: locks, chains, pointers,
  duplicates, unreferenced files; `history`: the `git log` and reflog checks;
- `checkpoint`: signed checkpoints; `packet`: the offline packet; `unpack`: opening its tar safely.

Read-only: never writes to the repository it verifies. Never prints; errors are `StellaError`s.
"""

from __future__ import annotations

from .checkpoint import (
    CHECKPOINT_PAYLOAD_TYPE,
    CHECKPOINT_TYPE,
    Checkpoint,
    checkpoint_json,
    make_checkpoint,
    read_checkpoint,
    sign_checkpoint,
)
from .findings import CHECKS, Finding, Report
from .keyless import _keyless_verifier as _keyless_verifier  # for the reconciler's own keyless checks
from .keyless import keyless_files, load_keyless
from .keys import LoadedKeys, branch_keys, load_keys, read_keys, trusted_keys
from .layout import IMMUTABLE, KEYS_DIR
from .packet import (
    PACKET_FORMAT,
    README_MEMBER,
    Exported,
    Packet,
    export_packet,
    verify_packet,
)
from .records import signed_commit_id
from .unpack import (
    BUNDLE_MEMBER,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_PACKET_MEMBERS,
    UNPACKED_BASE,
    UNPACKED_RATIO,
    PacketError,
    extract_packet,
    unpacked_cap,
)
from .verifier import PARALLEL_MIN, Progress, verify

__all__ = [
    "BUNDLE_MEMBER",
    "CHECKPOINT_PAYLOAD_TYPE",
    "CHECKPOINT_TYPE",
    "CHECKS",
    "IMMUTABLE",
    "KEYS_DIR",
    "MANIFEST_MEMBER",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_PACKET_MEMBERS",
    "PACKET_FORMAT",
    "PARALLEL_MIN",
    "README_MEMBER",
    "UNPACKED_BASE",
    "UNPACKED_RATIO",
    "Checkpoint",
    "Exported",
    "Finding",
    "LoadedKeys",
    "Packet",
    "PacketError",
    "Progress",
    "Report",
    "branch_keys",
    "checkpoint_json",
    "export_packet",
    "extract_packet",
    "keyless_files",
    "load_keyless",
    "load_keys",
    "make_checkpoint",
    "read_checkpoint",
    "read_keys",
    "sign_checkpoint",
    "signed_commit_id",
    "trusted_keys",
    "unpacked_cap",
    "verify",
    "verify_packet",
]
