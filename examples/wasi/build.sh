#!/usr/bin/env bash
# Rebuilds examples/wasi/hello.wasm from hello.c (needs clang, lld, wasi-libc,
# libclang-rt-dev-wasm32: see scripts/install-toolchain). The .wasm is committed
# so users can run the example without a C toolchain.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-clang}"
# -O2: optimise; -Wl,--strip-all: drop debug info and the name section (small file)
"$CLANG" --target=wasm32-wasi -O2 -Wl,--strip-all -o hello.wasm hello.c
chmod 644 hello.wasm  # data, not an executable
echo "built $(pwd)/hello.wasm ($(wc -c < hello.wasm) bytes)"
