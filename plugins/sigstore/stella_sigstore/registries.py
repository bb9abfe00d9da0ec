"""Where the `signature-registry` gate reads the signatures attached to an image.

`Registries` gives, per image, the registry the core opened for its host (`GateContext.registries`,
with `stella.yaml`'s credentials and options), as one that lists attachments (`RegistryAttachments`);
run without the core's registries (a plugin test), it opens the `oci` registry plugin, found by its
entry point as the core finds it, with default options, and closes what it opened. `bundle_layer`
reads a referrer manifest down to the digest of its bundle layer. No judging of signatures here, no
clock, no printing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Final

from reconciler.api import (
    ACCEPTED_BUNDLE_MEDIA_TYPES,
    DIGEST_RE,
    FileSource,
    ImageRef,
    PluginError,
    Registry,
    RegistryAttachments,
    RegistryOptions,
    RegistryPlugin,
)

DEFAULT_REGISTRY_PLUGIN: Final = "oci"


class Registries:
    """Where one evaluation reads referrers: the registries the core offers, or ones opened here.

    With the core's (`GateContext.registries`) nothing is opened or closed here. Without them, each
    host is opened once with the default registry plugin and the options of a host `stella.yaml`
    does not list (Docker credentials, loopback over HTTP), and `close()` closes it.
    """

    def __init__(self, offered: Callable[[ImageRef], Registry] | None, files: FileSource) -> None:
        self._offered = offered
        self._files = files
        self._opened: dict[str, Registry] = {}

    def attachments(self, ref: ImageRef) -> RegistryAttachments:
        """The registry of `ref`'s host, as one that can list what is attached to images."""
        registry = self._offered(ref) if self._offered is not None else self._own(ref.registry)
        if not isinstance(registry, RegistryAttachments):
            raise PluginError(
                f"the registry plugin serving {ref.registry} ({type(registry).__name__}) cannot list "
                "the signatures attached to an image (it does not offer RegistryAttachments)"
            )
        return registry

    def _own(self, host: str) -> Registry:
        """The registry of `host` opened here, opening it on first use."""
        if host not in self._opened:
            self._opened[host] = default_registry_plugin().open(RegistryOptions(host=host), self._files)
        return self._opened[host]

    def close(self) -> None:
        """Close what was opened here (never the core's registries)."""
        for registry in self._opened.values():
            registry.close()
        self._opened.clear()


def default_registry_plugin() -> RegistryPlugin:
    """The `oci` registry plugin, found by its entry point as the core finds it."""
    name = DEFAULT_REGISTRY_PLUGIN
    for ep in entry_points(group="stella.registries", name=name):
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin is this gate's error result, not a crash
            raise PluginError(f"registry plugin {name!r} failed to import {ep.value}: {exc}") from exc
        if isinstance(plugin, RegistryPlugin):
            return plugin
        raise PluginError(f"registry plugin {name!r} does not implement the RegistryPlugin interface")
    raise PluginError(f"registry plugin {name!r} is not installed (no stella.registries entry point)")


def bundle_layer(manifest: bytes, digest: str) -> tuple[str | None, tuple[str, str]]:
    """The digest of a referrer manifest's bundle layer, or None and (reason code, why)."""
    try:
        doc = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, ("not-a-bundle-manifest", "the manifest is not JSON")
    if not isinstance(doc, dict):
        return None, ("not-a-bundle-manifest", "the manifest is not a JSON object")
    subject = doc.get("subject")
    named = subject.get("digest") if isinstance(subject, dict) else None
    if named != digest:
        return None, ("subject-mismatch", f"its subject is {named!r}, not {digest}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        count = len(layers) if isinstance(layers, list) else 0
        return None, ("not-a-bundle-manifest", f"expected exactly 1 layer (the bundle), found {count}")
    layer = layers[0]
    media_type, layer_digest = layer.get("mediaType"), layer.get("digest")
    if media_type not in ACCEPTED_BUNDLE_MEDIA_TYPES:
        return None, (
            "not-a-bundle-manifest",
            f"its layer has mediaType {media_type!r}, not a Sigstore bundle",
        )
    if not isinstance(layer_digest, str) or not DIGEST_RE.match(layer_digest):
        return None, ("not-a-bundle-manifest", f"its layer digest {layer_digest!r} is not sha256:<hex>")
    return layer_digest, ("", "")
