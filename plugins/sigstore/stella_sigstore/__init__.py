"""Stella's Sigstore plugins: the keyless evidence signer and the image signature gates."""

__version__ = "0.1.0"
