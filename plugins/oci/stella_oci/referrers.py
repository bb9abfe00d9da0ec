"""What is attached to an image: OCI 1.1 referrers, through the referrers API or the tag schema.

What it does: `list_referrers` asks `GET /v2/<name>/referrers/<digest>` (following `Link: rel="next"`
pages, which must stay on the registry's origin, at most 20 of them); a registry without the API
answers 404 (distribution 2.8 does), and then the referrers tag schema is read instead: the tag
`sha256-<hex>` holding an OCI image index of the referrers (no such tag: none). Entries come back as
`reconciler.api.Descriptor`s, in the registry's order; entries that are not sha256 descriptors are
skipped.

httpx is imported in the function that uses it: every Stella process imports this plugin at start-up,
most never reach a registry, and importing httpx would cost each of them about 0.08 s.

What it must not do: fetch the referrers themselves (the façade's `manifest` and `blob` do), follow
a pagination link to another origin (credentials never go elsewhere), write the tag schema, print.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Final

from reconciler.api import DIGEST_RE, Descriptor, ImageRef, RegistryUnavailable

from .auth import Authenticator
from .transport import Transport, served_digest, unexpected

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
_MAX_REFERRER_PAGES: Final = 20


def _descriptor(entry: object) -> Descriptor | None:
    """A descriptor from one `manifests[]` entry, or None when it is not a well-formed sha256 one."""
    if not isinstance(entry, dict):
        return None
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    artifact_type, annotations = entry.get("artifactType"), entry.get("annotations", {})
    if not isinstance(media_type, str) or not isinstance(digest, str) or not DIGEST_RE.match(digest):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    if artifact_type is not None and not isinstance(artifact_type, str):
        return None
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        return None
    return Descriptor(media_type, digest, size, artifact_type, dict(annotations))


def _next_link(headers: httpx.Headers) -> str | None:
    """The `rel="next"` target of a `Link` header (the referrers API's pagination), if any."""
    for value in headers.get_list("link"):
        for part in value.split(","):
            target, _, params = part.partition(";")
            target = target.strip()
            if (
                target.startswith("<")
                and target.endswith(">")
                and re.search(r"""\brel\s*=\s*"?next"?""", params)
            ):
                return target[1:-1]
    return None


def _same_origin(transport: Transport, link: str | None, what: str) -> str | None:
    """A pagination link, if it stays on this registry (credentials never go elsewhere)."""
    import httpx

    if link is None:
        return None
    base = transport.base_url
    try:
        url = base.join(link)
    except httpx.InvalidURL as exc:
        raise RegistryUnavailable(f"registry {transport.host} sent an invalid next link for {what}") from exc
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise RegistryUnavailable(
            f"registry {transport.host} sent a next link for {what} to another origin: {url.scheme}://"
            f"{url.netloc.decode('ascii', 'replace')}"
        )
    return url.raw_path.decode("ascii")


def _index_entries(host: str, body: bytes, what: str) -> list[Descriptor]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):
        raise RegistryUnavailable(
            f"registry {host} answered {what} with something that is not an OCI image index"
        )
    found = []
    for entry in manifests:
        descriptor = _descriptor(entry)
        if descriptor is None:
            log.warning("registry %s: skipping a malformed descriptor in %s", host, what)
            continue
        found.append(descriptor)
    return found


def list_referrers(
    transport: Transport, auth: Authenticator, ref: ImageRef, digest: str, artifact_type: str | None
) -> list[Descriptor]:
    """The manifests whose `subject` is `digest` in `ref`'s repository (see the module docstring).

    With `artifact_type`, only descriptors of that `artifactType` are kept (whatever the registry
    filtered).
    """
    host = transport.host
    scope = f"repository:{ref.repository}:pull"
    what = f"the referrers of {ref.written}@{digest}"
    query = "?" + urllib.parse.urlencode({"artifactType": artifact_type}) if artifact_type else ""
    path: str | None = f"/v2/{ref.repository}/referrers/{digest}{query}"
    found: list[Descriptor] = []
    pages = 0
    while path is not None:
        pages += 1
        if pages > _MAX_REFERRER_PAGES:
            raise RegistryUnavailable(
                f"registry {host} answered more than {_MAX_REFERRER_PAGES} pages for {what}"
            )
        got = auth.request("GET", path, scope, what, doing="listing", accept=OCI_INDEX)
        if got.status == 404 and pages == 1:
            return _referrers_tag(auth, host, ref.repository, digest, scope, what, artifact_type)
        if got.status != 200:
            raise unexpected(host, got, what)
        found += _index_entries(host, got.body, what)
        path = _same_origin(transport, _next_link(got.headers), what)
    return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]


def _referrers_tag(
    auth: Authenticator,
    host: str,
    repository: str,
    digest: str,
    scope: str,
    what: str,
    artifact_type: str | None,
) -> list[Descriptor]:
    """The referrers tag schema: the index tagged `sha256-<hex>`, or nothing when there is none."""
    tag = digest.replace(":", "-", 1)
    got = auth.request(
        "GET", f"/v2/{repository}/manifests/{tag}", scope, what, doing="listing", accept=OCI_INDEX
    )
    if got.status == 404:
        return []
    if got.status != 200:
        raise unexpected(host, got, what)
    served_digest(host, got, what)
    found = _index_entries(host, got.body, f"{what} (tag {tag})")
    return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]
