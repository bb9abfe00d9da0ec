"""Tags -> digests through registry plugins, and release locks.

A release's identity is its digests. Tags are resolved once, when the release is created (or first seen
by the reconciler), and the result is locked: `lock()` builds the `ReleaseLock` and `check_lock()` refuses
a release file that now names other digests. Network access happens only inside registry plugins; this
module picks the plugin per registry host, runs lookups on a bounded thread pool, and closes what it
opened. It never prints.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from .discover import Plugins
from .errors import InvalidInput, StellaError
from .evidence import release_id
from .models import LockedComponent, Release, ReleaseLock, Settings
from .protocols import FileSource, Registry, RegistryOptions
from .reference import ImageRef

log = logging.getLogger(__name__)

MAX_WORKERS = 8
OFFLINE_PLUGIN = "oci-layout"


class Resolver:
    """Resolves image references with the registry plugin configured for each host.

    In offline mode every host is served from the OCI layouts under `<mirror>/oci/` of the repository.
    """

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        files: FileSource,
        *,
        offline: bool = False,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.files = files
        self.offline = offline or settings.offline or plugins.offline
        self.max_workers = max_workers
        self._registries: dict[str, Registry] = {}
        self._lock = threading.Lock()

    def _options(self, ref: ImageRef) -> tuple[str, RegistryOptions]:
        for entry in self.settings.registries:
            if entry.host == ref.registry:
                options = RegistryOptions(
                    host=entry.host,
                    insecure=entry.insecure,
                    path=entry.path,
                    credentials=entry.credentials,
                    options=dict(entry.options),
                )
                plugin = entry.plugin
                break
        else:
            plugin, options = "oci", RegistryOptions(host=ref.registry)
        if self.offline and plugin != OFFLINE_PLUGIN:
            manifest = self.plugins.registries.get(plugin)
            if manifest is None or manifest.manifest.network:
                return OFFLINE_PLUGIN, RegistryOptions(host=ref.registry, path=f"{self.settings.mirror}/oci")
        return plugin, options

    def registry(self, ref: ImageRef) -> Registry:
        with self._lock:
            if ref.registry not in self._registries:
                name, options = self._options(ref)
                self._registries[ref.registry] = self.plugins.registry(name).open(options, self.files)
            return self._registries[ref.registry]

    def resolve(self, ref: ImageRef) -> str:
        try:
            return self.registry(ref).resolve(ref)
        except InvalidInput as exc:
            if self.offline:
                raise InvalidInput(
                    f"{exc.message} (offline mode: images come from {self.settings.mirror}/oci/)"
                ) from exc
            raise

    def resolve_all(
        self,
        refs: Iterable[ImageRef],
        progress: Callable[[ImageRef], None] | None = None,
    ) -> dict[ImageRef, str | StellaError]:
        """Resolve each distinct reference once; failures are returned, not raised."""
        unique = list(dict.fromkeys(refs))

        def one(ref: ImageRef) -> str | StellaError:
            try:
                return self.resolve(ref)
            except StellaError as exc:
                return exc
            finally:
                if progress:
                    progress(ref)

        if len(unique) <= 1 or self.max_workers <= 1:
            return {ref: one(ref) for ref in unique}
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(unique))) as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))

    def close(self) -> None:
        with self._lock:
            for registry in self._registries.values():
                registry.close()
            self._registries.clear()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock(release: Release, digests: Mapping[str, str]) -> ReleaseLock:
    """The release lock from the release and a digest for every component (PURE)."""
    components = {}
    for name, comp in sorted(release.components.items()):
        ref = comp.ref
        components[name] = LockedComponent(image=ref.repo, tag=ref.tag, digest=digests[name])
    pinned = {name: c.pinned for name, c in components.items()}
    return ReleaseLock(
        name=release.name,
        id=release_id(release.name, pinned),
        components=components,
        rollbackSafe=release.rollbackSafe,
    )


def resolve_release(release: Release, resolver: Resolver) -> ReleaseLock:
    """Resolve the components that have no digest yet and lock the release; raise the first error."""
    refs = {name: comp.ref for name, comp in release.components.items() if comp.pinned_digest is None}
    results = resolver.resolve_all(refs.values())
    digests: dict[str, str] = {}
    for name, comp in release.components.items():
        pinned = comp.pinned_digest
        if pinned is not None:
            digests[name] = pinned
            continue
        result = results[refs[name]]
        if isinstance(result, StellaError):
            raise result
        digests[name] = result
    return lock(release, digests)


def check_lock(release: Release, existing: ReleaseLock) -> list[str]:
    """Why `release` (the file as it is now) disagrees with its lock; empty when it agrees."""
    problems = []
    if set(release.components) != set(existing.components):
        problems.append(
            f"components changed from {sorted(existing.components)} to {sorted(release.components)}"
        )
    for name, comp in sorted(release.components.items()):
        locked = existing.components.get(name)
        if locked is None:
            continue
        if comp.ref.repo != locked.image:
            problems.append(f"{name}: image changed from {locked.image} to {comp.ref.repo}")
        elif comp.pinned_digest is None and comp.ref.tag != locked.tag:
            problems.append(f"{name}: tag changed from {locked.tag} to {comp.ref.tag}")
        pinned = comp.pinned_digest
        if pinned is not None and pinned != locked.digest:
            problems.append(f"{name}: digest changed from {locked.digest} to {pinned}")
    return problems
