/* The wasmsbx streaming ABI for freestanding C guests (no libc, no WASI imports).
 *
 *   alloc(len) -> ptr                 input buffer for chunks of up to len bytes (0 = failed)
 *   process(ptr, len) -> i64          output location, packed by STREAM_OUT(ptr, len)
 *   finish() -> i64                   optional: trailing output at end of input
 *
 * Every chunk is exactly the chunk size except the last. Output must stay valid until
 * the next call. Build: see build.sh.
 */
#ifndef STREAM_ABI_H
#define STREAM_ABI_H

#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define STREAM_OUT(ptr, len) (((uint64_t)(uintptr_t)(ptr) << 32) | (uint32_t)(len))
#define WASM_PAGE 65536u

/* Grow linear memory by enough pages for len bytes; the new pages' address, or 0. */
static inline unsigned char *stream_grow(uint32_t len) {
    uint32_t pages = (len + WASM_PAGE - 1) / WASM_PAGE;
    uint32_t old = (uint32_t)__builtin_wasm_memory_grow(0, pages);
    if (old == UINT32_MAX) return 0;
    return (unsigned char *)(uintptr_t)(old * WASM_PAGE);
}

#endif
