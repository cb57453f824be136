"""Operator and test scripts (run from the repository root; some as ``python -m scripts.<name>``)."""
