"""``wasmsbx bench``: phase timings, statistics, suites and reports."""
