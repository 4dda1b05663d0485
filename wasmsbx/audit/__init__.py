"""``wasmsbx audit``: the static security audit."""
