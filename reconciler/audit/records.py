"""The checks a worker runs on one chunk of the branch: each record (its hash, its signature or
keyless signature and witness, its statement, the inputs and artifacts it names, the identities its
inputs count as verified), and each inputs file, artifact and release lock. Each record leaves the
few facts the whole-branch checks need.

Sees one record or file at a time, never the branch as a whole (`branch` and `policybook` do). Reads
through the worker's own repository; never writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pygit2

from ..errors import StellaError
from ..governance import POLICY_CHAIN, RATIFICATION
from ..ledger import DEPLOYMENT_TYPES, target_chain
from ..protocols import IN_TOTO_PAYLOAD_TYPE, WITNESS_SUFFIX
from ..sign import BundleError, verify_bundle
from .findings import Finding
from .layout import _HEX
from .worker import _Fact, _Job, _Result, _State, _state, _Task


def _run(job: _Job, task: _Task) -> _Result:
    """Do one chunk of work (in a worker process, or in this one)."""
    state = _state(job)
    result = _Result()
    {
        "records": _check_records,
        "inputs": _check_inputs,
        "artifacts": _check_artifacts,
        "releases": _check_releases,
    }[task.kind](state, task.names, result)
    return result


def _check_records(state: _State, names: Sequence[str], out: _Result) -> None:
    add = out.findings.append
    evidence = state.dir("evidence")
    for hex_id in names:
        path = f"evidence/{hex_id}.json"
        raw = state.read(evidence, f"{hex_id}.json") or b""
        key: str | None = None
        out.records += 1
        out.files += 1
        actual = hashlib.sha256(raw).hexdigest()
        if actual != hex_id:
            add(Finding(path, f"content hash sha256:{actual} does not match its name", check="hash"))
        bundle_path = f"evidence/{hex_id}.sigstore.json"
        bundle = state.read(evidence, f"{hex_id}.sigstore.json")
        if bundle is None:
            add(Finding(path, "no signature bundle (evidence/<hex>.sigstore.json)", check="signature"))
        else:
            out.bundles += 1
            out.files += 1
            try:
                verified = verify_bundle(bundle, state.keys, source=bundle_path)
            except BundleError as exc:
                if exc.reason == "unsupported" and (state.keyless is not None or state.keyless_groups):
                    key = _check_keyless(state, bundle, raw, bundle_path, add)  # a keyless record
                else:
                    add(Finding(bundle_path, str(exc).removeprefix(f"{bundle_path}: "), check="signature"))
            except StellaError as exc:
                add(Finding(bundle_path, str(exc).removeprefix(f"{bundle_path}: "), check="signature"))
            else:
                if verified.payload != raw:
                    add(Finding(bundle_path, "signs other bytes than the statement", check="signature"))
                elif verified.payload_type != IN_TOTO_PAYLOAD_TYPE:
                    add(
                        Finding(
                            bundle_path,
                            f"payload type {verified.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE!r}",
                            check="signature",
                        )
                    )
                else:
                    key = verified.hint
        witness_path = f"evidence/{hex_id}{WITNESS_SUFFIX}"
        witness = state.read(evidence, f"{hex_id}{WITNESS_SUFFIX}")
        if witness is not None:
            out.files += 1
            if state.keyless is None and not any(v for _, v in state.keyless_groups):
                add(
                    Finding(
                        witness_path,
                        "a keyless witness, but no trust/keyless.yaml "
                        "(or no keyless signer plugin) to verify it",
                        check="signature",
                    )
                )
            else:
                _check_keyless(state, witness, raw, witness_path, add)
        fact = _record_facts(state, hex_id, raw, add)
        out.facts.append(fact._replace(key=key))
        out.identities += _check_identities(state, fact, raw, add)


def _check_keyless(
    state: _State, bundle: bytes, raw: bytes, path: str, add: Callable[[Finding], None]
) -> str | None:
    """Verify a keyless bundle with the keyless policies stored on the branch (then the legacy one);
    the label of the one that verified (`keyless:<i>`), or None with a finding."""
    candidates = [(f"keyless:{i}", v) for i, (_, v) in enumerate(state.keyless_groups) if v is not None]
    if state.keyless is not None:
        candidates.append(("keyless:legacy", state.keyless))
    first: StellaError | None = None
    for label, verifier in candidates:
        try:
            verifier.verify(bundle, raw, source=path)
        except StellaError as exc:
            first = first or exc
            continue
        return label
    message = str(first) if first else "no keyless policy to verify it with"
    add(Finding(path, message.removeprefix(f"{path}: "), check="signature"))
    return None


def _record_facts(state: _State, hex_id: str, raw: bytes, add: Callable[[Finding], None]) -> _Fact:
    path = f"evidence/{hex_id}.json"
    try:
        statement = json.loads(raw)
    except ValueError as exc:
        add(Finding(path, f"not a JSON statement: {exc}", check="statement"))
        return _Fact(hex_id, None, None, None, None, None)
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    if not isinstance(predicate, dict):
        add(Finding(path, "statement has no predicate", check="statement"))
        return _Fact(hex_id, None, None, None, None, None)
    kind = predicate.get("type")
    policy = _dict_of(predicate.get("policy"))
    named = policy.get("id") if isinstance(policy.get("id"), str) else None
    previous_policy = policy.get("previous") if isinstance(policy.get("previous"), str) else None
    if kind == RATIFICATION:
        environment: str | None = POLICY_CHAIN
        signing = previous_policy or named
        if named is None:
            add(Finding(path, "a ratification that names no policy", check="policy"))
    elif kind in DEPLOYMENT_TYPES:  # an agent's record: chained per target
        return _deployment_facts(state, hex_id, predicate, add)
    else:
        environment = predicate.get("environment")
        signing = named
        if not isinstance(environment, str) or not environment or environment.startswith("@"):
            add(Finding(path, "the predicate names no environment", check="statement"))
            environment = None
    previous = _chain_link(predicate, path, add)
    inputs = predicate.get("inputs")
    digest = inputs.get("sha256") if isinstance(inputs, dict) else None
    if not isinstance(digest, str):
        add(Finding(path, "the predicate records no inputs digest", check="inputs"))
    elif not _has(state.dir("inputs"), f"{digest}.json"):
        add(Finding(path, f"its inputs file inputs/{digest}.json is missing", check="inputs"))
    listed = _listed_artifacts(state, predicate, path, add)
    promotion = _dict_of(predicate.get("promotion")).get("id")
    release = predicate.get("release")
    release_name = release.get("name") if isinstance(release, dict) else None
    release_id = release.get("id") if isinstance(release, dict) else None
    decision = predicate.get("decision")
    result = decision.get("result") if isinstance(decision, dict) else None
    if kind == RATIFICATION:
        result, release_name, release_id = "ratified", None, None
    return _Fact(
        hex_id,
        environment,
        previous,
        result if isinstance(result, str) else None,
        release_name if isinstance(release_name, str) else None,
        release_id if isinstance(release_id, str) else None,
        kind if isinstance(kind, str) else None,
        named,
        signing,
        None,
        previous_policy,
        digest if isinstance(digest, str) else None,
        predicate.get("decidedAt") if isinstance(predicate.get("decidedAt"), str) else None,
        promotion if isinstance(promotion, str) and kind != RATIFICATION else None,
        tuple(listed),
    )


def _deployment_facts(
    state: _State, hex_id: str, predicate: dict[str, Any], add: Callable[[Finding], None]
) -> _Fact:
    """A deployment record: its target's chain, its decision, result and lock (no inputs of its own)."""
    path = f"evidence/{hex_id}.json"
    environment, target = predicate.get("environment"), _dict_of(predicate.get("target")).get("name")
    chain = None
    if isinstance(environment, str) and isinstance(target, str) and environment and target:
        chain = target_chain(environment, target)
    else:
        add(Finding(path, "a deployment record that names no environment and target", check="statement"))
    policy = _dict_of(predicate.get("policy")).get("id")
    if not isinstance(policy, str):
        add(Finding(path, "a deployment record that names no policy", check="policy"))
        policy = None
    previous = _chain_link(predicate, path, add)
    listed = _listed_artifacts(state, predicate, path, add)
    release = _dict_of(predicate.get("release"))
    result = predicate.get("result")
    completed = predicate.get("completedAt")
    return _Fact(
        hex_id,
        chain,
        previous,
        result if isinstance(result, str) else None,
        release.get("name") if isinstance(release.get("name"), str) else None,
        release.get("id") if isinstance(release.get("id"), str) else None,
        str(predicate.get("type")),
        policy,
        policy,
        None,
        None,
        None,
        completed if isinstance(completed, str) else None,
        None,
        tuple(listed),
    )


def _listed_artifacts(
    state: _State, predicate: dict[str, Any], path: str, add: Callable[[Finding], None]
) -> list[tuple[str, str]]:
    """(name, sha256) of each artifact the predicate lists; a listed one not stored is a finding."""
    artifacts = state.dir("artifacts")
    listed: list[tuple[str, str]] = []
    for artifact in _list(predicate.get("artifacts")):
        name, sha = artifact.get("name"), artifact.get("sha256")
        if isinstance(name, str) and isinstance(sha, str):
            listed.append((name, sha))
        if not (isinstance(name, str) and isinstance(sha, str) and _has(artifacts, f"{sha}/{name}")):
            add(Finding(path, f"artifact {name} ({sha}) is missing", check="artifact"))
    return listed


def _chain_link(predicate: dict[str, Any], path: str, add: Callable[[Finding], None]) -> str | None:
    """The record's `previous`, when it is an evidence id (else a finding, and None)."""
    previous = predicate.get("previous")
    if previous is not None and not (isinstance(previous, str) and previous.startswith("sha256:")):
        add(Finding(path, f"chain link {previous!r} is not an evidence id", check="chain"))
        return None
    return previous if isinstance(previous, str) else None


def _check_identities(state: _State, fact: _Fact, raw: bytes, add: Callable[[Finding], None]) -> int:
    """Re-verify, offline, every signed commit a record's inputs count as verified (requester and
    approvals; a ratification's votes) against `trust/allowed_signers` of the policy in force: the one
    a decision names, the one before a ratification. Returns how many were checked."""
    policy = fact.previous_policy if fact.kind == RATIFICATION else fact.policy
    if policy is None or fact.inputs is None or fact.kind not in ("release_decision", RATIFICATION):
        return 0  # written before policies existed, or a genesis (no votes)
    path = f"inputs/{fact.inputs}.json"
    data = state.read(state.dir("inputs"), f"{fact.inputs}.json")
    if data is None:
        return 0  # already an `inputs` finding
    try:
        doc = json.loads(data)
        if fact.kind == RATIFICATION:
            actors = [(f"policy approval of {v['identity']}", v["signer"]) for v in doc.get("approvals", [])]
        else:
            actors = [("requester", doc["requester"])]
            actors += [(f"approval of {a['identity']}", a["signer"]) for a in doc.get("approvals", [])]
    except (ValueError, KeyError, TypeError) as exc:
        add(Finding(path, f"not decision inputs: {exc}", check="identity"))
        return 0
    allowed = state.allowed_signers(policy)
    checked = 0
    for role, actor in actors:
        if not isinstance(actor, dict) or actor.get("verified") is not True:
            continue
        who = actor.get("identity")
        payload, signature = actor.get("payload"), actor.get("signature")
        if not isinstance(payload, str) or not isinstance(signature, str) or not isinstance(who, str):
            add(
                Finding(
                    path,
                    f"{role}: counted as verified but its signed commit is not recorded",
                    check="identity",
                )
            )
            continue
        checked += 1
        try:
            body = base64.b64decode(payload, validate=True)
            verified = allowed.verify(body, signature.encode("utf-8"), principal=who, at=_committed(body))
        except (ValueError, StellaError) as exc:
            add(
                Finding(
                    path,
                    f"{role}: the recorded signature does not verify for {who} against "
                    f"trust/allowed_signers of policy {policy}: {exc}",
                    check="identity",
                )
            )
            continue
        if actor.get("key") not in (None, verified.fingerprint):
            add(
                Finding(
                    path,
                    f"{role}: recorded key {actor.get('key')} is not {verified.fingerprint}",
                    check="identity",
                )
            )
        if actor.get("commit") not in (None, signed_commit_id(body, signature.encode("utf-8"))):
            add(
                Finding(
                    path, f"{role}: the signed payload is not commit {actor.get('commit')}", check="identity"
                )
            )
    return checked


def _committed(payload: bytes) -> datetime | None:
    """The committer time of a commit's signed payload (when keys must have been valid), if it has one."""
    header = payload.partition(b"\n\n")[0]
    for line in header.split(b"\n"):
        if line.startswith(b"committer "):
            try:
                return datetime.fromtimestamp(int(line.rsplit(b" ", 2)[1]), UTC)
            except (ValueError, IndexError, OverflowError):
                return None
    return None


def signed_commit_id(payload: bytes, signature: bytes) -> str:
    """The id of the commit whose signed payload and signature these are (Git puts the signature in a
    `gpgsig` header after the others, each continuation line indented by one space)."""
    header, sep, message = payload.partition(b"\n\n")
    lines = signature.rstrip(b"\n").split(b"\n")
    body = header + b"\ngpgsig " + b"\n ".join(lines) + sep + message if sep else payload
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def _dict_of(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _has(directory: Any, path: str) -> bool:
    """Whether the tree holds a file at `path`, without reading it."""
    if directory is None or not path or ".." in path.split("/"):
        return False
    try:
        return isinstance(directory[path], pygit2.Blob)
    except (KeyError, ValueError):
        return False


def _check_inputs(state: _State, names: Sequence[str], out: _Result) -> None:
    inputs = state.dir("inputs")
    for name in names:
        path = f"inputs/{name}"
        raw = state.read(inputs, name)
        if raw is None or not name.endswith(".json") or not _HEX.fullmatch(name.removesuffix(".json")):
            out.findings.append(Finding(path, "unexpected file in inputs/", check="layout"))
            continue
        out.files += 1
        out.stored.append(path)
        if hashlib.sha256(raw).hexdigest() != name.removesuffix(".json"):
            out.findings.append(Finding(path, "content hash does not match its name", check="hash"))


def _check_artifacts(state: _State, names: Sequence[str], out: _Result) -> None:
    artifacts = state.dir("artifacts")
    for name in names:
        path = f"artifacts/{name}"
        sub = artifacts[name]
        if not isinstance(sub, pygit2.Tree) or not _HEX.fullmatch(name):
            out.findings.append(Finding(path, "unexpected file in artifacts/", check="layout"))
            continue
        for blob in sub:
            if not isinstance(blob, pygit2.Blob):
                out.findings.append(Finding(f"{path}/{blob.name}", "unexpected directory", check="layout"))
                continue
            out.files += 1
            out.stored.append(f"{path}/{blob.name}")
            if hashlib.sha256(blob.data).hexdigest() != name:
                out.findings.append(
                    Finding(
                        f"{path}/{blob.name}", "content hash does not match its directory name", check="hash"
                    )
                )


def _check_releases(state: _State, names: Sequence[str], out: _Result) -> None:
    from ..evidence import release_id  # only here: it brings the models, which workers need nowhere else

    releases = state.dir("releases")
    for name in names:
        path = f"releases/{name}"
        raw = state.read(releases, name)
        if raw is None or not name.endswith(".json"):
            out.findings.append(Finding(path, "unexpected file in releases/", check="layout"))
            continue
        out.files += 1
        try:
            lock = json.loads(raw)
            pinned = {c: f"{v['image']}@{v['digest']}" for c, v in lock["components"].items()}
            if not isinstance(lock["id"], str) or not isinstance(lock["name"], str):
                raise TypeError("name and id must be strings")
            out.locks[name.removesuffix(".json")] = lock["id"]
            if release_id(lock["name"], pinned) != lock["id"] or f"{lock['name']}.json" != name:
                out.findings.append(
                    Finding(path, "release id does not match the release's name and digests", check="lock")
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.findings.append(Finding(path, f"not a release lock: {exc}", check="lock"))


def _list(value: object) -> Iterable[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
