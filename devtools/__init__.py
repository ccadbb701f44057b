"""Helpers for working on bnlab from a checkout, shared by tests/ and bench/ (bench may not
import tests/). Not shipped: pyproject's packages.find names the server's packages alone."""
