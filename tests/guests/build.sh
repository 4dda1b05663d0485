#!/usr/bin/env bash
# Rebuilds the prebuilt C guests in tests/guests (*.c -> *.wasm) and checks that
# every .wat here parses. The .wasm files are committed, so the test suite runs
# without clang; run this after editing a .c file and commit the result.
# Needs clang, lld, wasi-libc, libclang-rt-dev-wasm32 (scripts/install-toolchain);
# wat2wasm (wabt) is optional and only used for the .wat check.
set -euo pipefail
cd "$(dirname "$0")"
CLANG="${CLANG:-clang}"

for src in *.c; do
    out="${src%.c}.wasm"
    # WASI command (has main); -O2, no debug info or name section.
    "$CLANG" --target=wasm32-wasi -O2 -Wall -Wextra -Werror -Wl,--strip-all \
        -o "$out" "$src"
    chmod 644 "$out"  # data, not an executable
    echo "built $out ($(wc -c < "$out") bytes)"
done

if command -v wat2wasm >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for wat in *.wat; do
        wat2wasm --debug-names "$wat" -o "$tmp/${wat%.wat}.wasm"
    done
    echo "checked $(ls *.wat | wc -l) .wat files with wat2wasm"
fi
