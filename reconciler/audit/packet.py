"""The offline packet: `export_packet` writes the branch as a Git bundle with the trust material, a
manifest and a README into a .tar.gz (the same branch always gives the same bytes); `verify_packet`
verifies one with only what it holds, in a temporary directory, with no network and no repository.

Opening the tar safely is `unpack`'s job, verifying the branch `verifier`'s. Writes only the packet
and its own temporary directories.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ..errors import InvalidInput, Transient
from ..repo import Repo
from ..sign import TrustedKeys
from .checkpoint import read_checkpoint
from .findings import Finding, Report
from .keyless import _MemoryFiles, keyless_files, trust_files
from .keys import LoadedKeys, branch_keys, read_keys
from .layout import KEYS_DIR
from .unpack import BUNDLE_MEMBER, MANIFEST_MEMBER, PacketError, _extract, _scan
from .verifier import Progress, _names, verify

PACKET_FORMAT = "stella-evidence-packet/v1"
README_MEMBER = "README.md"
ALLOWED_SIGNERS = "trust/allowed_signers"


@dataclass(frozen=True)
class Exported:
    path: Path
    ref: str
    head: str
    records: int
    members: Mapping[str, str]
    """Member -> sha256 (the manifest's list)."""


def export_packet(repo: Repo, ref: str, branch: str, out: Path) -> Exported:
    """Write the offline packet of `ref` to `out` (a .tar.gz): the branch as a Git bundle, the trust
    material of `branch`, `manifest.json` and `README.md`. The same branch gives the same bytes."""
    if repo.resolve_ref(ref) is None:
        raise InvalidInput(f"{ref}: the evidence ref does not exist; nothing to export")
    source = repo.resolve_ref(f"refs/heads/{branch}")
    if source is None:
        raise InvalidInput(f"branch {branch!r} not found: cannot read the trust material")
    files = repo.tree(source)
    members: dict[str, bytes] = {}
    for name in files.listdir(KEYS_DIR):
        if name.endswith(".pub"):
            members[f"{KEYS_DIR}/{name}"] = files.read(f"{KEYS_DIR}/{name}") or b""
    stored = repo.tree(repo.resolve_ref(ref) or "").listdir("policies")
    keys = read_keys(sorted(members.items()), branch)  # an unreadable key goes in as is: the verifier says so
    if not stored and not keys:
        raise InvalidInput(
            f"{KEYS_DIR}/ on {branch} holds no readable *.pub key: the packet could not be verified"
        )
    if (data := files.read(ALLOWED_SIGNERS)) is not None:
        members[ALLOWED_SIGNERS] = data
    material = trust_files(files)  # what the installed verifier plugins read (keyless: policy, root)
    for item in material:
        if (data := files.read(item.path)) is not None:
            members.setdefault(item.path, data)
    root = next((item.path for item in material if item.trusted_root), None)
    pinned_by = next((item.path for item in material if not item.trusted_root), None)
    with tempfile.TemporaryDirectory(prefix="stella-export-") as tmp:
        bundle = Path(tmp) / BUNDLE_MEMBER
        # one thread: the same objects give the same pack, so the same branch gives the same packet
        git_dir = ["--git-dir", str(repo.path), "-c", "pack.threads=1"]
        _git([*git_dir, "bundle", "create", "--quiet", str(bundle), ref], "git bundle create")
        heads = _git([*git_dir, "bundle", "list-heads", str(bundle), ref], "git bundle list-heads")
        head = heads.split()[0]  # where the ref was when bundled (it may have moved since we looked)
        commit = repo.git[head].peel(pygit2.Commit)
        records = sum(
            1
            for name in _names(commit.tree, "evidence")
            if name.endswith(".json") and not name.endswith(".sigstore.json")
        )
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
        digests[BUNDLE_MEMBER] = _file_sha256(bundle)
        readme = _readme(ref, head, records, keys, sorted(members), root, pinned_by)
        members[README_MEMBER] = readme
        digests[README_MEMBER] = hashlib.sha256(readme).hexdigest()
        manifest = {
            "format": PACKET_FORMAT,
            "ref": ref,
            "head": head,
            "records": records,
            "trust": {"branch": branch, "commit": source},
            "members": dict(sorted(digests.items())),
        }
        members[MANIFEST_MEMBER] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        _write_tar(out, members, bundle, commit.commit_time)
    return Exported(out, ref, head, records, dict(sorted(digests.items())))


def _write_tar(out: Path, members: Mapping[str, bytes], bundle: Path, mtime: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with (
            open(partial, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            names = sorted([*members, BUNDLE_MEMBER], key=lambda n: (n != README_MEMBER, n))
            for name in names:
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.uname, info.gname = mtime, 0o644, "", ""
                if name == BUNDLE_MEMBER:
                    info.size = bundle.stat().st_size
                    with open(bundle, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    info.size = len(members[name])
                    tar.addfile(info, io.BytesIO(members[name]))
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{out}: cannot write the packet: {exc}") from exc


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(argv: list[str], what: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    try:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Transient(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise Transient(f"{what} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Packet:
    """What a packet holds, once extracted and checked against its manifest."""

    ref: str
    head: str
    records: int
    keys: TrustedKeys
    findings: tuple[Finding, ...]


def verify_packet(
    packet: Path,
    *,
    checkpoint: tuple[bytes, str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    root: str | None = None,
) -> tuple[Packet, Report]:
    """Verify an offline packet with only what it holds: read its manifest, extract the members it
    lists into a temporary directory, check each against the manifest, clone the Git bundle there, and
    verify that branch with the packet's keys (and `checkpoint`: the bytes of a checkpoint file and its
    name). Needs no network and no repository. Member mismatches are `packet` findings (a member the
    manifest does not list is never extracted); an unusable packet is `PacketError`."""
    scan = _scan(packet)  # every header checked, before anything is written
    manifest = _manifest(packet, scan.manifest)
    listed: dict[str, str] = manifest["members"]
    with tempfile.TemporaryDirectory(prefix="stella-packet-") as tmp:
        unpacked = Path(tmp) / "packet"
        unpacked.mkdir()
        digests = _extract(packet, unpacked, set(listed))
        findings: list[Finding] = []
        for name, digest in sorted(listed.items()):
            if name not in digests:
                findings.append(Finding(name, "listed in the manifest but not in the packet", None, "packet"))
            elif digests[name] != digest:
                findings.append(
                    Finding(
                        name,
                        f"sha256 {digests[name]} differs from the manifest's {digest}: "
                        "the packet was changed after it was exported",
                        None,
                        "packet",
                    )
                )
        for name in sorted(scan.files - set(listed) - {MANIFEST_MEMBER}):
            findings.append(
                Finding(name, "in the packet but not listed in the manifest (not used)", None, "packet")
            )
        if BUNDLE_MEMBER not in digests:
            where = "its manifest lists" if BUNDLE_MEMBER in scan.files else "the packet has"
            raise PacketError(f"{packet}: {where} no {BUNDLE_MEMBER}")
        members = {n: unpacked.joinpath(*n.split("/")) for n in sorted(digests)}
        keys = read_keys(
            (n, p.read_bytes())
            for n, p in members.items()
            if n.startswith(f"{KEYS_DIR}/") and n.endswith(".pub")
        )
        clone = Path(tmp) / "evidence.git"
        try:
            _git(
                ["clone", "--quiet", "--mirror", str(unpacked / BUNDLE_MEMBER), str(clone)],
                "git clone of the bundle",
            )
        except Transient as exc:
            raise PacketError(f"{packet}: {BUNDLE_MEMBER} is not a usable Git bundle: {exc}") from exc
        repo = Repo(clone)
        ref = manifest["ref"]
        head = repo.resolve_ref(ref)
        if head != manifest["head"]:
            findings.append(
                Finding(
                    ref, f"the bundle's head is {head}, not the manifest's {manifest['head']}", None, "packet"
                )
            )
        signed_with = branch_keys(repo, ref, keys)
        read = read_checkpoint(checkpoint[0], signed_with, checkpoint[1]) if checkpoint is not None else None
        keyless = keyless_files(
            _MemoryFiles([(n, p.read_bytes()) for n, p in members.items() if n.startswith("trust/")])
        )
        report = verify(
            repo, ref, keys, progress, workers=workers, checkpoint=read, keyless=keyless, root=root
        )
        if head == manifest["head"] and report.records != int(manifest["records"]):
            message = f"the branch holds {report.records} records, the manifest says {manifest['records']}"
            findings.append(Finding(ref, message, None, "packet"))
        report.findings = sorted({*report.findings, *findings}, key=Finding.sort_key)
        info = Packet(ref, manifest["head"], int(manifest["records"]), keys, tuple(findings))
    return info, report


def _manifest(packet: Path, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise PacketError(f"{packet}: the packet has no {MANIFEST_MEMBER}: not a Stella evidence packet")
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != PACKET_FORMAT:
            raise ValueError(f"format is not {PACKET_FORMAT}")
        if not isinstance(doc.get("ref"), str) or not isinstance(doc.get("head"), str):
            raise ValueError("ref and head must be strings")
        members = doc.get("members")
        if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()):
            raise ValueError("members must map names to sha256 digests")
        int(doc.get("records", 0))
    except (ValueError, TypeError) as exc:
        raise PacketError(f"{packet}: {MANIFEST_MEMBER} is not a packet manifest: {exc}") from exc
    return doc


def _readme(
    ref: str,
    head: str,
    records: int,
    keys: LoadedKeys,
    members: Sequence[str],
    trusted_root: str | None,
    pinned_by: str | None,
) -> bytes:
    key_lines = "\n".join(
        [f"- `{k.source}`: hint `{k.hint}`" for k in keys.values()]
        + [f"- `{f.file}`: unreadable, it verifies nothing" for f in keys.unreadable]
    )
    first_key = next((k.source for k in keys.values()), f"{KEYS_DIR}/<key>.pub")
    root_note = (
        f"This packet includes `{trusted_root}` (the trusted root `{pinned_by}` pins): give it to\n"
        "cosign with `--trusted-root`."
        if trusted_root
        else "Give cosign any trusted root file it accepts (e.g. the `trusted_root.json` of your Sigstore\n"
        "instance, saved while online); the key-based bundles use none of its keys."
    )
    listing = "\n".join(f"- `{m}`" for m in [BUNDLE_MEMBER, *members, MANIFEST_MEMBER])
    text = f"""# Stella evidence packet

The evidence branch `{ref}` at commit `{head}` ({records} records), exported for offline audit.

{listing}

`manifest.json` lists the sha256 of every other member. The trust material comes from the source
branch named there. Before you trust anything below, compare these key hints with the ones you were
given through another channel (whoever can change this packet can also change its keys):

{key_lines}

## Verify everything with stella

No network and no repository are needed; run it from any directory:

```sh
stella audit verify --packet PACKET.tar.gz --root GENESIS_ID   # the genesis id you were given
stella audit verify --packet PACKET.tar.gz -o json           # one entry per finding, with a check code
stella audit verify --packet PACKET.tar.gz --checkpoint CHECKPOINT.json   # a checkpoint you kept
```

It extracts the packet into a temporary directory, checks each member against the manifest, clones
`evidence.bundle`, and checks the policy chain from its genesis (pin it with `--root`; without it the
genesis found is trusted on first use, and said so), every record's signature against the evidence
keys of the policy it names, the requesters' and approvers' SSH signatures again, every file hash,
every chain link, the branch history (no evidence file changed or deleted), every record's inputs and
artifacts, the release locks and the environment pointers. Exit code 0: no findings; 1: findings; 2: not a
usable packet (or checkpoint).

## Verify records with standard Sigstore tooling

Extract the packet and check out the branch:

```sh
mkdir packet && tar -xzf PACKET.tar.gz -C packet && cd packet
git clone --quiet --branch {ref.removeprefix("refs/heads/")} evidence.bundle evidence
ls evidence/evidence/        # <hex>.json: a statement; <hex>.sigstore.json: its Sigstore bundle
sha256sum evidence/evidence/<hex>.json    # must print <hex>: the record's id is the hash of its bytes
```

Each `evidence/<hex>.sigstore.json` is a Sigstore bundle v0.3 with a DSSE envelope over exactly the
bytes of `evidence/<hex>.json`, signed with a P-256 key (key hint in `verificationMaterial.publicKey`,
no transparency-log entry). With sigstore-js (`npm install @sigstore/bundle @sigstore/verify`), save
this as `verify.js` and run `node verify.js evidence/evidence/<hex>.sigstore.json {first_key}`:

```js
const crypto = require('node:crypto');
const fs = require('node:fs');
const {{ bundleFromJSON }} = require('@sigstore/bundle');
const {{ Verifier, toSignedEntity, toTrustMaterial }} = require('@sigstore/verify');

const [bundlePath, keyPath] = process.argv.slice(2);
const der = crypto.createPublicKey(fs.readFileSync(keyPath)).export({{ type: 'spki', format: 'der' }});
const hint = crypto.createHash('sha256').update(der).digest('base64');
const root = {{ tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [] }};
// keyDetails 5: PKIX_ECDSA_P256_SHA_256
const keys = {{ [hint]: {{ rawBytes: der, keyDetails: 5, validFor: undefined }} }};
const thresholds = {{ tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 }};
const verifier = new Verifier(toTrustMaterial(root, keys), thresholds);
const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
verifier.verify(toSignedEntity(bundle));   // throws when the signature does not verify
const payload = Buffer.from(bundle.content.dsseEnvelope.payload);
const statement = fs.readFileSync(bundlePath.replace(/\\.sigstore\\.json$/, '.json'));
if (!payload.equals(statement)) throw new Error('the bundle signs other bytes than the statement');
console.log('OK');
```

The thresholds are 0 because key-based bundles made offline carry no log entry, certificate or
timestamp. With cosign (2.4 or later):

```sh
cosign verify-blob-attestation --new-bundle-format --insecure-ignore-tlog \\
  --key {first_key} --trusted-root trusted_root.json \\
  --bundle evidence/evidence/<hex>.sigstore.json --check-claims=false
```

Offline, cosign cannot fetch Sigstore's trusted root through TUF, and with `--new-bundle-format` it
needs one: pass a file with `--trusted-root`. {root_note}
`--check-claims=false` verifies the envelope only: by default cosign also wants a file whose sha256 is
one of the statement's subjects, which are the release's image manifests (if you have the image
manifest, pass it instead of that flag). Then compare the envelope's payload with the statement's
bytes, as the script above does.

A deployment record (`"type": "deployment"` in its predicate; the newest of each target is named by
`targets/<environment>/<target>/stella.version.json`) is signed by that target's agent, not by an
evidence key: verify it with the agent key of the policy the record names (`predicate.policy.id`,
`sha256:<policy hex>`). That policy's file list is `evidence/policies/<policy hex>.json`; the key is
its entry `trust/agent-keys/<target>.pub`, stored on the branch under its own hash:

```sh
jq -r '."trust/agent-keys/<target>.pub"' evidence/policies/<policy hex>.json   # sha256:<key hex>
node verify.js evidence/evidence/<hex>.sigstore.json evidence/policy-files/<key hex>
```

Neither tool checks what is between the records (chain links, history, inputs, locks, pointers):
`stella audit verify --packet` does.
"""
    return text.encode()
