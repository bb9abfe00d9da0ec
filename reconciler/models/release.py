"""A release as written (`releases/<release>.yaml`, images by tag or digest) and as locked.

The lock (`releases/<name>.json` on the evidence branch) fixes each component to a digest, once.
Models only: it must not resolve tags nor write locks (`reconciler.resolve` and the loop do) nor touch a
registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from .. import reference
from .common import Digest, ImageText, Name, _Manifest, _Model


class Component(_Model):
    image: ImageText
    digest: Digest | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Component:
        ref = reference.parse(self.image)
        if ref.digest and self.digest and ref.digest != self.digest:
            raise ValueError(f"image pins {ref.digest} but digest says {self.digest}")
        return self

    @property
    def ref(self) -> reference.ImageRef:
        return reference.parse(self.image)

    @property
    def pinned_digest(self) -> str | None:
        """The digest the file already fixes (field or `@sha256:` in the image), if any."""
        return self.digest or self.ref.digest


class Release(_Manifest):
    kind: Literal["Release"]
    name: Name
    components: Annotated[dict[Name, Component], Field(min_length=1)]
    rollbackSafe: bool = True
    """False (e.g. after an irreversible migration): an agent never rolls a target back automatically
    from this release, nor to it; the record says a person must act."""


# --- what the reconciler writes ------------------------------------------------------------------


class LockedComponent(_Model):
    image: str
    """The repository, without tag or digest (`registry.example.com/shop/web`)."""
    tag: str | None
    digest: Digest

    @property
    def pinned(self) -> str:
        return f"{self.image}@{self.digest}"


class ReleaseLock(_Model):
    """`releases/<name>.json` on the evidence branch: a release's digests, fixed once."""

    name: Name
    id: Digest
    components: dict[Name, LockedComponent]
    rollbackSafe: bool = True
    """The release's `rollbackSafe`, fixed with its digests; written only when false, so that the locks
    (and the decisions quoting them) of every other release keep their bytes."""

    @model_serializer(mode="wrap")
    def _omit_default_rollback_safe(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.rollbackSafe:
            data.pop("rollbackSafe", None)
        return data
