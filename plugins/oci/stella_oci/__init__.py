"""Stella's OCI registry plugins: tags to digests, online and offline.

Two plugins, each an entry point of group `stella.registries`:

- `oci` (`stella_oci.distribution:plugin`): the OCI distribution API over HTTP(S), with one
  keep-alive client per configured registry, token/basic auth and retries. Needs the network.
- `oci-layout` (`stella_oci.layout:plugin`): OCI image layout directories in the user's
  repository (`mirror/oci/...`), read through the core's `FileSource`. Never touches the network.

Besides resolving references, `oci` offers gates the artifacts attached to an image
(`reconciler.api.RegistryAttachments`: referrers, manifests, small blobs). This package never pulls
image layers, prints, or exits, and reaches Stella only through `reconciler.api`.
"""

from __future__ import annotations

from .distribution import MANIFEST_MEDIA_TYPES, DistributionPlugin, DistributionRegistry
from .layout import LayoutPlugin, LayoutRegistry

__version__ = DistributionPlugin.manifest.version

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "DistributionPlugin",
    "DistributionRegistry",
    "LayoutPlugin",
    "LayoutRegistry",
    "__version__",
]
