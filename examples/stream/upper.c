/* A streaming guest in C: uppercases ASCII letters, chunk by chunk (stateless, so a
 * --checkpoint resume is exact). Try:
 *   printf 'hello, stream\n' | wasmsbx run examples/stream/upper.wasm process --stream
 */
#include "stream_abi.h"

EXPORT("alloc") unsigned char *alloc(uint32_t len) { return stream_grow(len); }

EXPORT("process") uint64_t process(unsigned char *ptr, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        unsigned char c = ptr[i];
        if ((unsigned char)(c - 'a') < 26) ptr[i] = (unsigned char)(c - 32);
    }
    return STREAM_OUT(ptr, len);
}
