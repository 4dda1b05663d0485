"""What the wasmer backend compiles, as data: shared by its availability probe and capability
declaration (wasmer_backend) and its engine fingerprint (wasmer_engine)."""

# Proposals each compiler of wasmer 2.1 compiles by default (tests/test_backends.py
# compiles one module per proposal and checks that exactly these are accepted).
FEATURES = frozenset(
    {
        "mutable-globals",
        "sign-extension",
        "saturating-float-to-int",
        "bulk-memory",
        "reference-types",
        "multi-value",
        "simd",
    }
)
SINGLEPASS_FEATURES = FEATURES - {"multi-value", "simd"}

__all__ = ["FEATURES", "SINGLEPASS_FEATURES"]
