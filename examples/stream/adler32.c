/* A stateful streaming guest in C: the Adler-32 checksum of the whole input, printed
 * by finish() as 8 hex digits and a newline (process() outputs nothing). Try:
 *   wasmsbx run examples/stream/adler32.wasm process --stream < some-file
 * Its state spans chunks, so a --checkpoint resume would restart the sum from the
 * checkpoint's offset: do not resume stateful guests (see README.md).
 */
#include "stream_abi.h"

#define MOD_ADLER 65521u

static uint32_t sum_a = 1, sum_b = 0;
static unsigned char out[9];

EXPORT("alloc") unsigned char *alloc(uint32_t len) { return stream_grow(len); }

EXPORT("process") uint64_t process(const unsigned char *ptr, uint32_t len) {
    while (len) {
        /* 5552 bytes is the most that can be summed before b could overflow 32 bits */
        uint32_t n = len < 5552 ? len : 5552;
        len -= n;
        while (n--) {
            sum_a += *ptr++;
            sum_b += sum_a;
        }
        sum_a %= MOD_ADLER;
        sum_b %= MOD_ADLER;
    }
    return STREAM_OUT(out, 0);
}

EXPORT("finish") uint64_t finish(void) {
    static const char hex[] = "0123456789abcdef";
    uint32_t sum = (sum_b << 16) | sum_a;
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)hex[sum & 15];
        sum >>= 4;
    }
    out[8] = '\n';
    return STREAM_OUT(out, 9);
}
