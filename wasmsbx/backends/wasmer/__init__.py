"""The wasmer-python backend (CPython <= 3.10)."""
