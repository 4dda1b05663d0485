"""WebAssembly module facts, read from the bytes without a runtime."""
