"""The `oci-layout` plugin: OCI image layouts in the repository's mirror as an offline registry.

Layouts are built with `tests.support.oci` (deterministic) or assembled from real-world files in
`../shared/testdata/oci/` (trivy's test layout), read through `DirFiles` like a repository.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import stella_oci
from stella_oci.distribution import DistributionPlugin
from stella_oci.layout import LayoutPlugin, LayoutRegistry, plugin

from reconciler.errors import InvalidInput
from reconciler.protocols import Registry, RegistryOptions, RegistryPlugin
from reconciler.reference import parse
from tests.support.oci import OCI_INDEX, REF_NAME, DirFiles, LayoutBuilder, canonical_json

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "oci"
TRIVY_INDEX = TESTDATA / "trivy-test.oci.index.json"
TRIVY_MANIFEST = TESTDATA / "trivy-test.oci.manifest.json"
TRIVY_DIGEST = "sha256:afb744871f99e0ff8e6f253244836ed34c5d805fdb096d3a205ffaf5e9073cab"
REGISTRY = "registry.example.com"


def open_mirror(repo: Path, path: str | None = None) -> LayoutRegistry:
    return plugin.open(RegistryOptions(host=REGISTRY, path=path), DirFiles(repo))


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A repository with `mirror/oci/registry.example.com/shop/web`: tags 1.0, 1.1 and multi."""
    builder = LayoutBuilder(tmp_path / "mirror" / "oci" / REGISTRY / "shop" / "web")
    digests = {
        "1.0": builder.image("1.0", content=b"web 1.0\n").digest,
        "1.1": builder.image("1.1", content=b"web 1.1\n").digest,
    }
    multi = builder.multi_arch("multi", content=b"web multi\n")
    digests["multi"] = multi.index.digest
    digests["multi/arm64"] = multi.platforms["linux/arm64"].digest
    return tmp_path, digests


def test_tags_resolve_to_the_digests_written(shop: tuple[Path, dict[str, str]]) -> None:
    repo, digests = shop
    with open_mirror(repo) as reg:
        assert isinstance(reg, Registry)
        got = {tag: reg.resolve(parse(f"{REGISTRY}/shop/web:{tag}")) for tag in ("1.0", "1.1", "multi")}
    assert got == {tag: digests[tag] for tag in ("1.0", "1.1", "multi")}
    assert len(set(got.values())) == 3


def test_digest_references_resolve_when_the_blob_is_intact(shop: tuple[Path, dict[str, str]]) -> None:
    repo, digests = shop
    reg = open_mirror(repo)
    for key in ("1.0", "multi", "multi/arm64"):  # the arm64 child is not in index.json, only a blob
        assert reg.resolve(parse(f"{REGISTRY}/shop/web@{digests[key]}")) == digests[key]
    assert reg.resolve(parse(f"{REGISTRY}/shop/web:whatever@{digests['1.1']}")) == digests["1.1"]


def test_layout_without_the_registry_directory_is_found(tmp_path: Path) -> None:
    digest = LayoutBuilder(tmp_path / "mirror" / "oci" / "shop" / "web").image("2.0").digest
    assert open_mirror(tmp_path).resolve(parse(f"{REGISTRY}/shop/web:2.0")) == digest
    assert open_mirror(tmp_path).resolve(parse("other.example.com:5000/shop/web:2.0")) == digest


def test_the_registry_specific_layout_comes_first(tmp_path: Path) -> None:
    generic = LayoutBuilder(tmp_path / "mirror" / "oci" / "shop" / "web").image("1.0", content=b"a")
    specific = LayoutBuilder(tmp_path / "mirror" / "oci" / REGISTRY / "shop" / "web").image(
        "1.0", content=b"b"
    )
    reg = open_mirror(tmp_path)
    assert reg.resolve(parse(f"{REGISTRY}/shop/web:1.0")) == specific.digest
    assert reg.resolve(parse("elsewhere.example.com/shop/web:1.0")) == generic.digest
    assert reg.candidates(parse(f"{REGISTRY}/shop/web:1.0")) == [
        f"mirror/oci/{REGISTRY}/shop/web",
        "mirror/oci/shop/web",
    ]


def test_the_mirror_root_comes_from_the_entry_path(tmp_path: Path) -> None:
    digest = LayoutBuilder(tmp_path / "offline" / "images" / "shop" / "web").image("1.0").digest
    reg = open_mirror(tmp_path, path="./offline/images/")
    assert reg.root == "offline/images"
    assert reg.resolve(parse(f"{REGISTRY}/shop/web:1.0")) == digest


def test_full_reference_annotations_name_the_tag_too(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "mirror" / "oci" / "shop" / "web")
    manifest = builder.image(None)
    builder.tag(f"{REGISTRY}/shop/web:3.0", manifest)
    assert open_mirror(tmp_path).resolve(parse(f"{REGISTRY}/shop/web:3.0")) == manifest.digest


def test_layouts_are_deterministic(tmp_path: Path) -> None:
    def build(root: Path) -> dict[str, bytes]:
        builder = LayoutBuilder(root)
        builder.image("1.0", content=b"same")
        builder.multi_arch("multi", content=b"same")
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first == second
    # oci-layout, index.json; one layer, a config and manifest per platform (1.0 is the amd64 one), index
    assert len(first) == 2 + 1 + 2 + 2 + 1


# -- the real-world layout of trivy's tests ---------------------------------------------------


def trivy_layout(repo: Path, index: bytes | None = None, manifest: bytes | None = None) -> Path:
    """`mirror/oci/trivy/test`: trivy's index.json (or `index`) and its manifest blob (or `manifest`)."""
    layout = repo / "mirror" / "oci" / "trivy" / "test"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if index is None:
        shutil.copyfile(TRIVY_INDEX, layout / "index.json")
    else:
        (layout / "index.json").write_bytes(index)
    blob = manifest if manifest is not None else TRIVY_MANIFEST.read_bytes()
    blob_path(layout, TRIVY_DIGEST).write_bytes(blob)
    return layout


def test_trivy_layout_resolves_by_digest(tmp_path: Path) -> None:
    trivy_layout(tmp_path)
    assert hashlib.sha256(TRIVY_MANIFEST.read_bytes()).hexdigest() == TRIVY_DIGEST[7:]
    assert open_mirror(tmp_path).resolve(parse(f"{REGISTRY}/trivy/test@{TRIVY_DIGEST}")) == TRIVY_DIGEST


def test_trivy_layout_has_no_tags(tmp_path: Path) -> None:
    trivy_layout(tmp_path)
    with pytest.raises(InvalidInput) as caught:
        open_mirror(tmp_path).resolve(parse(f"{REGISTRY}/trivy/test:latest"))
    assert str(caught.value) == (
        f"tag 'latest' of image {REGISTRY}/trivy/test:latest is not in the mirror: no entry of "
        f"mirror/oci/trivy/test/index.json is annotated {REF_NAME}=latest"
    )


def test_trivy_manifest_tagged_by_our_index_resolves(tmp_path: Path) -> None:
    index = json.loads(TRIVY_INDEX.read_bytes())
    index["manifests"][0]["annotations"] = {REF_NAME: "0.1"}
    trivy_layout(tmp_path, index=canonical_json(index))
    assert open_mirror(tmp_path).resolve(parse(f"{REGISTRY}/trivy/test:0.1")) == TRIVY_DIGEST


def _tagged_trivy_index(size: int = 345) -> bytes:
    index = json.loads(TRIVY_INDEX.read_bytes())
    index["manifests"][0].update(size=size, annotations={REF_NAME: "0.1"})
    return canonical_json(index)


BLOB = f"mirror/oci/trivy/test/blobs/sha256/{TRIVY_DIGEST[7:]}"
CORRUPT = {
    "flipped-byte-by-digest": (
        {"manifest": TRIVY_MANIFEST.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3')},
        f"{REGISTRY}/trivy/test@{TRIVY_DIGEST}",
        f"{BLOB}: corrupt mirror: the blob hashes to sha256:"
        + hashlib.sha256(
            TRIVY_MANIFEST.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3')
        ).hexdigest()
        + ", not to its name",
    ),
    "truncated-by-tag": (
        {"index": _tagged_trivy_index(), "manifest": TRIVY_MANIFEST.read_bytes()[:-1]},
        f"{REGISTRY}/trivy/test:0.1",
        f"{BLOB}: corrupt mirror: the blob hashes to sha256:"
        + hashlib.sha256(TRIVY_MANIFEST.read_bytes()[:-1]).hexdigest()
        + ", not to its name",
    ),
    "size-differs-from-index": (
        {"index": _tagged_trivy_index(size=344)},
        f"{REGISTRY}/trivy/test:0.1",
        f"{BLOB}: corrupt mirror: the blob is 345 bytes, but mirror/oci/trivy/test/index.json gives size 344",
    ),
    "size-checked-for-digest-refs-too": (
        {"index": _tagged_trivy_index(size=346)},
        f"{REGISTRY}/trivy/test@{TRIVY_DIGEST}",
        f"{BLOB}: corrupt mirror: the blob is 345 bytes, but mirror/oci/trivy/test/index.json gives size 346",
    ),
}


@pytest.mark.parametrize(("layout", "ref", "message"), CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_mirror_is_an_error_naming_the_file(
    tmp_path: Path, layout: dict[str, bytes], ref: str, message: str
) -> None:
    trivy_layout(tmp_path, **layout)
    with pytest.raises(InvalidInput) as caught:
        open_mirror(tmp_path).resolve(parse(ref))
    assert str(caught.value) == message
    assert caught.value.file == BLOB


# -- everything else that can be missing or wrong ---------------------------------------------

LAYOUT = f"mirror/oci/{REGISTRY}/shop/web"


def _remove(relative: str) -> Callable[[Path, dict[str, str]], None]:
    def change(repo: Path, digests: dict[str, str]) -> None:
        (repo / relative).unlink()

    return change


def _write(relative: str, data: bytes) -> Callable[[Path, dict[str, str]], None]:
    def change(repo: Path, digests: dict[str, str]) -> None:
        (repo / relative).write_bytes(data)

    return change


def _remove_blob(key: str) -> Callable[[Path, dict[str, str]], None]:
    def change(repo: Path, digests: dict[str, str]) -> None:
        blob_path(repo / LAYOUT, digests[key]).unlink()

    return change


def _sha512_entry(repo: Path, digests: dict[str, str]) -> None:
    entry = {"mediaType": OCI_INDEX, "digest": "sha512:" + "a" * 128, "size": 1}
    entry["annotations"] = {REF_NAME: "1.0"}
    index = {"schemaVersion": 2, "manifests": [entry]}
    (repo / LAYOUT / "index.json").write_bytes(canonical_json(index))


def _unchanged(repo: Path, digests: dict[str, str]) -> None:
    pass


NOWHERE = "sha256:" + "0" * 64
BROKEN = {
    "no-layout": (
        _unchanged,
        f"{REGISTRY}/shop/api:1.0",
        f"image {REGISTRY}/shop/api:1.0 is not in the mirror: there is no "
        f"mirror/oci/{REGISTRY}/shop/api/oci-layout and mirror/oci/shop/api/oci-layout",
    ),
    "missing-tag": (
        _unchanged,
        f"{REGISTRY}/shop/web:9.9",
        f"tag '9.9' of image {REGISTRY}/shop/web:9.9 is not in the mirror: no entry of "
        f"{LAYOUT}/index.json is annotated {REF_NAME}=9.9 (tags there: 1.0, 1.1, multi)",
    ),
    "missing-digest": (
        _unchanged,
        f"{REGISTRY}/shop/web@{NOWHERE}",
        f"image {REGISTRY}/shop/web@{NOWHERE} is not in the mirror: there is no "
        f"{LAYOUT}/blobs/sha256/{'0' * 64}",
    ),
    "missing-blob": (
        _remove_blob("multi"),
        f"{REGISTRY}/shop/web:multi",
        "{blob}: the mirror is incomplete: " + LAYOUT + "/index.json names {digest}, but the blob is missing",
    ),
    "missing-blob-by-digest": (
        _remove_blob("multi"),
        f"{REGISTRY}/shop/web@{{digest}}",
        "{blob}: the mirror is incomplete: " + LAYOUT + "/index.json names {digest}, but the blob is missing",
    ),
    "missing-index": (
        _remove(f"{LAYOUT}/index.json"),
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/index.json: the image layout index is missing",
    ),
    "index-not-json": (
        _write(f"{LAYOUT}/index.json", b'{"schemaVersion": 2,\n "manifests": [}'),
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/index.json:2: the image layout index is not valid JSON: Expecting value",
    ),
    "index-not-an-index": (
        _write(f"{LAYOUT}/index.json", b'{"manifests": []}'),
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/index.json: not an OCI image index (schemaVersion 2 expected)",
    ),
    "layout-version-2": (
        _write(f"{LAYOUT}/oci-layout", b'{"imageLayoutVersion": "2.0.0"}'),
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/oci-layout: unsupported imageLayoutVersion '2.0.0' (1.x expected)",
    ),
    "layout-marker-not-json": (
        _write(f"{LAYOUT}/oci-layout", b"1.0.0"),
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/oci-layout: the oci-layout marker is not valid JSON",
    ),
    "sha512-descriptor": (
        _sha512_entry,
        f"{REGISTRY}/shop/web:1.0",
        f"{LAYOUT}/index.json: sha512:{'a' * 128} uses an unsupported digest algorithm "
        "(only sha256 is supported)",
    ),
}


@pytest.mark.parametrize(("change", "ref", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_missing_or_broken_mirror_content_is_invalid_input(
    shop: tuple[Path, dict[str, str]],
    change: Callable[[Path, dict[str, str]], None],
    ref: str,
    message: str,
) -> None:
    repo, digests = shop
    change(repo, digests)
    digest = digests["multi"]
    blob = f"{LAYOUT}/blobs/sha256/{digest[7:]}"
    with pytest.raises(InvalidInput) as caught:
        open_mirror(repo).resolve(parse(ref.format(digest=digest)))
    assert str(caught.value) == message.format(blob=blob, digest=digest)
    assert caught.value.exit_code == 2


BAD_OPTIONS = {
    "absolute-path": (
        RegistryOptions(host=REGISTRY, path="/srv/mirror"),
        "mirror path '/srv/mirror' must be a relative POSIX path inside the repository",
    ),
    "parent-path": (
        RegistryOptions(host=REGISTRY, path="mirror/../../etc"),
        "mirror path 'mirror/../../etc' must be a relative POSIX path inside the repository",
    ),
    "unknown-option": (
        RegistryOptions(host=REGISTRY, options={"timeout": 3}),
        f"mirror registry {REGISTRY}: unknown option(s) timeout",
    ),
}


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_invalid_input(tmp_path: Path, options: RegistryOptions, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        plugin.open(options, DirFiles(tmp_path))
    assert str(caught.value) == message


# -- contract ----------------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert sorted(stella_oci.__all__) == sorted(
        [
            "MANIFEST_MEDIA_TYPES",
            "DistributionPlugin",
            "DistributionRegistry",
            "LayoutPlugin",
            "LayoutRegistry",
            "__version__",
        ]
    )
    assert stella_oci.__version__ == importlib.metadata.version("stella-oci")


def test_entry_points_name_the_plugins() -> None:
    found = {ep.name: ep.load() for ep in importlib.metadata.entry_points(group="stella.registries")}
    assert isinstance(found["oci"], DistributionPlugin)
    assert isinstance(found["oci-layout"], LayoutPlugin)
    manifests = {
        name: (p.manifest.name, p.manifest.kinds, p.manifest.network)
        for name, p in found.items()
        if name in ("oci", "oci-layout")
    }
    assert manifests == {
        "oci": ("oci", ("registry",), True),
        "oci-layout": ("oci-layout", ("registry",), False),
    }
    assert all(isinstance(found[name], RegistryPlugin) for name in manifests)
