"""The version of the core distribution (`stella-reconciler`), in one place.

A bottom-layer module: modules that record the version (gates' manifests, signers, evidence) import it
from here rather than from the package root, so that they do not depend on the package's public face.
It must import nothing.
"""

__version__ = "0.1.0"
