"""Stella: a GitOps release orchestrator with signed, replayable evidence in Git."""

__version__ = "0.1.0"
