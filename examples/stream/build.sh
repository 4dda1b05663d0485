#!/usr/bin/env bash
# Rebuilds the C streaming guests (*.c -> *.wasm). Freestanding: no libc, no WASI
# imports, just the exports of the streaming ABI (stream_abi.h). The .wasm files are
# committed so the examples and tests run without a C toolchain.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-clang}"
for src in *.c; do
    out="${src%.c}.wasm"
    # -nostdlib -Wl,--no-entry: a library of exports, no _start; --strip-all: small file
    "$CLANG" --target=wasm32 -O2 -ffreestanding -nostdlib -Wall -Wextra -Werror \
        -Wl,--no-entry -Wl,--strip-all -o "$out" "$src"
    chmod 644 "$out"  # data, not an executable
    echo "built $out ($(wc -c < "$out") bytes)"
done
