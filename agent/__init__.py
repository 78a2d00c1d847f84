"""patrol-agent: the in-vehicle agent of the patrol management system."""

__version__ = "0.1.0"
