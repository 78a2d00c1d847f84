"""Set-up, demo and PKI scripts (importable by the tests)."""
