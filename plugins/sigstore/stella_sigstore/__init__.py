"""Stella's Sigstore plugins: the keyless evidence signer and the image signature gates.

They reach Stella only through `reconciler.api`, and no other plugin by import: the signature gate
reads registries through the `RegistryAttachments` the core offers in its `GateContext`.
"""

__version__ = "0.1.0"
