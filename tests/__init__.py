"""patrol-agent test suite."""
