"""reconciler.audit: an evidence packet's tar is opened safely, and checkpoints are signed and read back.

Every path trick a tar can play (absolute paths, `..`, links, special files, duplicates) is refused
before anything is written, with a message naming the member; so are members over their size caps, more
than 10,000 members and compression bombs, and only the members asked for are extracted. The archives
are real gzip'd tars (the bombs built streaming, so that the tests stay small and fast).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler import audit
from reconciler.errors import InvalidInput
from reconciler.sign import KeySigner, TrustedKeys, public_pem


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


TRICKS: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "absolute-path": ([_file("/tmp/stella-owned")], "'/tmp/stella-owned': an absolute path"),
    "parent-directory": (
        [_file("trust/../../outside")],
        "'trust/../../outside': a parent-directory (..) component",
    ),
    "leading-dotdot": ([_file("../outside")], "'../outside': a parent-directory (..) component"),
    "symlink": ([_special("trust", tarfile.SYMTYPE, "/etc")], "'trust': a symbolic link (to '/etc')"),
    "symlink-inside": (
        [_file("README.md"), _special("evidence.bundle", tarfile.SYMTYPE, "README.md")],
        "'evidence.bundle': a symbolic link (to 'README.md')",
    ),
    "hardlink": (
        [_special("manifest.json", tarfile.LNKTYPE, "/etc/passwd")],
        "'manifest.json': a hard link (to '/etc/passwd')",
    ),
    "fifo": ([_special("evidence.bundle", tarfile.FIFOTYPE)], "'evidence.bundle': a special file"),
    "char-device": ([_special("evidence.bundle", tarfile.CHRTYPE)], "'evidence.bundle': a special file"),
    "duplicate": ([_file("README.md", b"a"), _file("./README.md", b"b")], "'./README.md': a duplicate name"),
    "backslash": ([_file("trust\\..\\..\\x")], "a backslash in the name"),
}


@pytest.mark.parametrize("members, expected", TRICKS.values(), ids=TRICKS.keys())
def test_path_tricks_are_refused_before_anything_is_written(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], expected: str
) -> None:
    packet = _tar(tmp_path / "packet.tar.gz", [_file("manifest.json", b"{}"), *members])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(audit.PacketError) as caught:
        audit.extract_packet(packet, dest)
    assert str(caught.value).startswith(f"{packet}: refusing member ")
    assert expected in str(caught.value)
    assert str(caught.value).endswith("the packet is not safe to open")
    assert list(dest.iterdir()) == []  # refused before extracting the harmless members too
    assert not Path("/tmp/stella-owned").exists()


def test_plain_members_are_extracted_with_their_digests(tmp_path: Path) -> None:
    packet = _tar(
        tmp_path / "packet.tar.gz",
        [
            _special("trust", tarfile.DIRTYPE),
            _file("trust/evidence-keys/a.pub", b"key"),
            _file("./README.md", b"hi"),
        ],
    )
    dest = tmp_path / "out"
    dest.mkdir()
    digests = audit.extract_packet(packet, dest)
    assert digests == {
        "trust/evidence-keys/a.pub": "2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683",
        "README.md": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4",
    }
    assert (dest / "trust/evidence-keys/a.pub").read_bytes() == b"key"


NOT_PACKETS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: None, "no such file"),
    "not-gzip": (lambda p: p.write_bytes(b"just text\n"), "not a .tar.gz evidence packet, or a damaged one"),
    "truncated": (
        lambda p: p.write_bytes(_tar(p, [_file("evidence.bundle", os.urandom(100_000))]).read_bytes()[:5000]),
        "not a .tar.gz evidence packet, or a damaged one",
    ),
}


@pytest.mark.parametrize("make, expected", NOT_PACKETS.values(), ids=NOT_PACKETS.keys())
def test_what_is_not_a_packet_is_invalid_input(
    tmp_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    packet = tmp_path / "packet.tar.gz"
    make(packet)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(audit.PacketError, match=expected) as caught:
        audit.extract_packet(packet, dest)
    assert isinstance(caught.value, InvalidInput) and caught.value.exit_code == 2


def test_a_packet_without_a_manifest_is_refused(tmp_path: Path) -> None:
    packet = _tar(tmp_path / "packet.tar.gz", [_file("README.md")])
    with pytest.raises(audit.PacketError, match=r"has no manifest.json: not a Stella evidence packet"):
        audit.verify_packet(packet)


# --- sizes and counts: read the headers, the manifest first, extract only what it lists -------------

_MIB_OF_ZEROS = gzip.compress(bytes(1 << 20))


def _stream_tar(path: Path, members: list[tuple[str, bytes | int]], kind: bytes = tarfile.REGTYPE) -> Path:
    """A .tar.gz of members given as bytes, or as a number of zero bytes (a multiple of 1 MiB) written
    as the gzip of one MiB of zeros repeated: concatenated gzip members are one stream, so a 2 GiB
    member costs about 2 MB and no time. `kind`: the type of the members given as a size."""
    with open(path, "wb") as fh:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, bytes):
                info.size = len(content)
                pad = bytes(-len(content) % tarfile.BLOCKSIZE)
                fh.write(gzip.compress(info.tobuf(tarfile.PAX_FORMAT) + content + pad))
                continue
            info.size, info.type = content, kind
            fh.write(gzip.compress(info.tobuf(tarfile.GNU_FORMAT)))
            for _ in range(content >> 20):
                fh.write(_MIB_OF_ZEROS)
        fh.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE)))
    return path


MANIFEST = b'{"format": "stella-evidence-packet/v1"}'
BOMBS: dict[str, tuple[list[tuple[str, bytes | int]], bytes, str]] = {
    "bundle-bomb": (
        [("manifest.json", MANIFEST), ("evidence.bundle", 2 << 30)],
        tarfile.REGTYPE,
        r"refusing member 'evidence\.bundle': 2147483648 bytes, over the cap of 72\.\d MiB for the "
        r"packet's contents \(64 MiB plus 4 times the packet's size\); the packet is not safe to open$",
    ),
    "readme-over-its-cap": (
        [("manifest.json", MANIFEST), ("README.md", 17 << 20)],
        tarfile.REGTYPE,
        r"refusing member 'README\.md': 17825792 bytes, over the cap of 16 MiB for a member other than "
        r"evidence\.bundle; the packet is not safe to open$",
    ),
    "manifest-over-its-cap": (
        [("manifest.json", 2 << 20)],
        tarfile.REGTYPE,
        r"refusing member 'manifest\.json': 2097152 bytes, over the cap of 1 MiB for manifest\.json; ",
    ),
    "pax-header-bomb": (  # tarfile reads an extended header whole, before we see any member
        [("manifest.json", MANIFEST), ("././@PaxHeader", 2 << 30)],
        tarfile.XHDTYPE,
        r"unpacks to more than 88\.\d MiB \(the cap: 64 MiB plus 4 times the packet's size, and 16 MiB "
        r"for tar headers\); the packet is not safe to open$",
    ),
}


@pytest.mark.parametrize("members, kind, expected", BOMBS.values(), ids=BOMBS.keys())
def test_a_member_over_its_cap_is_refused_before_anything_is_written(
    tmp_path: Path, members: list[tuple[str, bytes | int]], kind: bytes, expected: str
) -> None:
    packet = _stream_tar(tmp_path / "packet.tar.gz", members, kind)
    assert packet.stat().st_size < 3 << 20
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(audit.PacketError, match=expected) as caught:
        audit.extract_packet(packet, dest)
    assert str(caught.value).startswith(f"{packet}: ")
    assert list(dest.iterdir()) == []
    with pytest.raises(audit.PacketError, match=expected):
        audit.verify_packet(packet)


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    members = [_file("manifest.json", MANIFEST)]
    members += [_file(f"trust/evidence-keys/{i}.pub", b"") for i in range(audit.MAX_PACKET_MEMBERS)]
    packet = _tar(tmp_path / "packet.tar.gz", members)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(audit.PacketError) as caught:
        audit.extract_packet(packet, dest)
    assert str(caught.value) == (
        f"{packet}: more than 10000 members (the cap); the packet is not safe to open"
    )
    assert list(dest.iterdir()) == []
    exactly = _tar(tmp_path / "exactly.tar.gz", members[:-1])  # at the cap: fine
    assert audit.extract_packet(exactly, dest, {"manifest.json"}) == {
        "manifest.json": hashlib.sha256(MANIFEST).hexdigest()
    }


def test_only_the_members_asked_for_are_extracted(tmp_path: Path) -> None:
    packet = _stream_tar(
        tmp_path / "packet.tar.gz",
        [("README.md", b"hi"), ("manifest.json", MANIFEST), ("junk.bin", 8 << 20)],
    )
    dest = tmp_path / "out"
    dest.mkdir()
    assert audit.extract_packet(packet, dest, {"README.md", "manifest.json"}) == {
        "README.md": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4",
        "manifest.json": hashlib.sha256(MANIFEST).hexdigest(),
    }
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "manifest.json"]


def test_the_caps_grow_with_the_packet() -> None:
    assert audit.unpacked_cap(0) == 64 << 20
    assert audit.unpacked_cap(1 << 30) == (64 << 20) + (4 << 30)
    assert (audit.MAX_MANIFEST_BYTES, audit.MAX_MEMBER_BYTES, audit.MAX_PACKET_MEMBERS) == (
        1 << 20,
        16 << 20,
        10_000,
    )


# --- checkpoints -----------------------------------------------------------------------------------

CHECKPOINT = audit.Checkpoint(
    ref="refs/heads/stella/evidence",
    head="a" * 40,
    records=3,
    chains={"prod": "sha256:" + "1" * 64, "dev": "sha256:" + "2" * 64},
    time="2026-11-02T09:00:00Z",
)


@pytest.fixture
def signer() -> KeySigner:
    return KeySigner(ec.generate_private_key(ec.SECP256R1()))


def _keys(*signers: KeySigner) -> TrustedKeys:
    return TrustedKeys.from_files(
        (f"trust/evidence-keys/{i}.pub", public_pem(s.public_key)) for i, s in enumerate(signers)
    )


def test_checkpoint_payload_is_canonical_json() -> None:
    assert CHECKPOINT.payload() == (
        b'{"chains":{"dev":"sha256:' + b"2" * 64 + b'","prod":"sha256:' + b"1" * 64 + b'"},'
        b'"head":"' + b"a" * 40 + b'","records":3,"ref":"refs/heads/stella/evidence",'
        b'"time":"2026-11-02T09:00:00Z","type":"https://stella.dev/checkpoint/v1"}'
    )


def test_checkpoint_round_trip_as_bundle_and_as_json_output(signer: KeySigner) -> None:
    bundle = audit.sign_checkpoint(CHECKPOINT, signer)
    assert json.loads(bundle)["dsseEnvelope"]["payloadType"] == audit.CHECKPOINT_PAYLOAD_TYPE
    assert audit.read_checkpoint(bundle, _keys(signer), "cp.json") == CHECKPOINT
    printed = json.dumps(audit.checkpoint_json(CHECKPOINT, bundle)).encode()
    assert audit.read_checkpoint(printed, _keys(signer), "cp.json") == CHECKPOINT


def test_checkpoint_signed_by_another_key_is_not_trusted(signer: KeySigner) -> None:
    other = KeySigner(ec.generate_private_key(ec.SECP256R1()))
    bundle = audit.sign_checkpoint(CHECKPOINT, other)
    with pytest.raises(InvalidInput, match=r"^checkpoint not trusted: cp.json: unknown key"):
        audit.read_checkpoint(bundle, _keys(signer), "cp.json")


BAD_CHECKPOINTS: dict[str, tuple[Callable[[KeySigner], bytes], str]] = {
    "not-json": (lambda s: b"\x00garbage", r"^cp.json: not a checkpoint file \(not JSON"),
    "not-a-bundle": (
        lambda s: b'{"head": "x"}',
        r"^cp.json: not a checkpoint file: expected the signed bundle",
    ),
    "evidence-bundle": (
        lambda s: s.sign(b'{"_type": "https://in-toto.io/Statement/v1"}'),
        r"^cp.json: signs a 'application/vnd.in-toto\+json' payload, not a checkpoint",
    ),
    "wrong-type": (
        lambda s: s.sign(b'{"type": "other"}', audit.CHECKPOINT_PAYLOAD_TYPE),
        r"^cp.json: not a Stella checkpoint: type is not https://stella.dev/checkpoint/v1",
    ),
    "bad-head": (
        lambda s: s.sign(
            json.dumps({**CHECKPOINT.as_json(), "head": "main"}).encode(), audit.CHECKPOINT_PAYLOAD_TYPE
        ),
        r"^cp.json: not a Stella checkpoint: head 'main' is not a commit id",
    ),
}


@pytest.mark.parametrize("make, expected", BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_bad_checkpoint_files_are_invalid_input(
    signer: KeySigner, make: Callable[[KeySigner], bytes], expected: str
) -> None:
    with pytest.raises(InvalidInput, match=expected) as caught:
        audit.read_checkpoint(make(signer), _keys(signer), "cp.json")
    assert caught.value.exit_code == 2
