"""The agent's error hierarchy. Each error also inherits the builtin it is."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The config cannot be used. ``problems`` lists ``key.path: what (got ...)``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class OutboxError(AgentError, RuntimeError):
    """The outbox cannot store or hand out messages."""


class InsecureConfigError(ConfigError):
    """The config would send police data without the protection it needs."""
