"""Test support code: fakes and harnesses (first-class test code, never shipped)."""
