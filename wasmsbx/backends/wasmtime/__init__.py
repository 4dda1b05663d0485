"""The wasmtime-py backend (every Python)."""
