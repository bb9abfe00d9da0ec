"""Stella's Docker deployment agent plugin: a target's Docker Engine, driven by digests.

One plugin, the entry point `docker` of group `stella.agents` (`stella_docker.agent:docker`). It opens
a `DockerEngine` per target (`engine.py`): pulls by digest through the Engine API and checks the
image's `RepoDigests`, brings the target's Compose project up with Docker Compose v2 (`compose.py`:
found, then run as `up -d --wait --remove-orphans --pull never`), and lists the project's containers
with the digests they run.

This package never prints or exits, never writes the secrets it is handed, and reaches Stella only
through `reconciler.api`.
"""

from __future__ import annotations

from .agent import DockerAgentPlugin, check_endpoint, docker
from .compose import Compose, find_compose
from .engine import DockerEngine

__version__ = DockerAgentPlugin.manifest.version

__all__ = [
    "Compose",
    "DockerAgentPlugin",
    "DockerEngine",
    "__version__",
    "check_endpoint",
    "docker",
    "find_compose",
]
