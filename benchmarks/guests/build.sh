#!/usr/bin/env bash
# Rebuilds benchmarks/guests/*.wasm from the C sources (committed, so benchmarks need no
# clang). Needs the toolchain from scripts/install-toolchain.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-clang}"
for src in *.c; do
    out="${src%.c}.wasm"
    "$CLANG" --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Wextra -Werror \
        -Wl,--strip-all -o "$out" "$src"
    chmod 644 "$out"
    echo "built $out ($(wc -c < "$out") bytes)"
done
