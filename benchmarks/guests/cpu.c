/* cpu.c: a CPU-bound guest for benchmarks/backends.py (compile and run speed per backend).
 *
 * A WASI reactor (no main) exporting:
 *   bench(iterations) -> i64   runs every kernel `iterations` times, returns a checksum
 *   kernel(which, n) -> i64    one kernel: 0 mandelbrot (f64), 1 sieve (memory),
 *                              2 matrix multiply (f64), 3 xorshift hash mix (i64),
 *                              4 quicksort (memory, branches)
 *   report(iterations) -> i32  runs bench and formats the checksum with snprintf into
 *                              a static buffer (pulls libc's printf in, so the module
 *                              is the size of a small real program)
 *
 * Build: benchmarks/guests/build.sh (clang --target=wasm32-wasi -O2 -mexec-model=reactor).
 * The checksum for bench(1) is printed by `wasmsbx run benchmarks/guests/cpu.wasm bench 1`.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(name)))

static int64_t mandelbrot(int size) {
    int64_t inside = 0;
    for (int y = 0; y < size; y++) {
        for (int x = 0; x < size; x++) {
            double cr = 2.5 * x / size - 2.0, ci = 2.0 * y / size - 1.0;
            double zr = 0, zi = 0;
            int i = 0;
            while (i < 100 && zr * zr + zi * zi < 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2 * zr * zi + ci;
                zr = t;
                i++;
            }
            inside += i;
        }
    }
    return inside;
}

static unsigned char sieve_buf[1 << 20];

static int64_t sieve(int n) {
    if (n > (int)sizeof(sieve_buf)) n = sizeof(sieve_buf);
    memset(sieve_buf, 1, (size_t)n);
    int64_t count = 0;
    for (int i = 2; i < n; i++) {
        if (sieve_buf[i]) {
            count += i;
            for (int j = i * 2; j < n; j += i) sieve_buf[j] = 0;
        }
    }
    return count;
}

#define M 64
static double ma[M][M], mb[M][M], mc[M][M];

static int64_t matmul(int rounds) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) {
            ma[i][j] = (i * 7 + j) % 13 * 0.5;
            mb[i][j] = (i + j * 3) % 11 * 0.25;
        }
    double sum = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) {
                double acc = 0;
                for (int k = 0; k < M; k++) acc += ma[i][k] * mb[k][j];
                mc[i][j] = acc;
            }
        sum += mc[r % M][(r * 5) % M];
        ma[r % M][r % M] += 1.0;
    }
    return (int64_t)sum;
}

static int64_t hashmix(int n) {
    uint64_t x = 88172645463325252ULL, acc = 0;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += (x * 0x9E3779B97F4A7C15ULL) >> (i & 31);
    }
    return (int64_t)acc;
}

static int32_t sort_buf[1 << 16];

static void quicksort(int32_t *a, int lo, int hi) {
    while (lo < hi) {
        int32_t pivot = a[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                int32_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (j - lo < hi - i) {
            quicksort(a, lo, j);
            lo = i;
        } else {
            quicksort(a, i, hi);
            hi = j;
        }
    }
}

static int64_t sorting(int n) {
    if (n > (int)(sizeof(sort_buf) / sizeof(sort_buf[0]))) n = sizeof(sort_buf) / sizeof(sort_buf[0]);
    uint32_t x = 2463534242u;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        sort_buf[i] = (int32_t)(x >> 1);
    }
    quicksort(sort_buf, 0, n - 1);
    int64_t check = 0;
    for (int i = 0; i < n; i += 97) check += sort_buf[i] % 1000;
    return check;
}

EXPORT("kernel") int64_t kernel(int which, int n) {
    switch (which) {
    case 0: return mandelbrot(n);
    case 1: return sieve(n);
    case 2: return matmul(n);
    case 3: return hashmix(n);
    case 4: return sorting(n);
    default: return -1;
    }
}

EXPORT("bench") int64_t bench(int iterations) {
    int64_t sum = 0;
    for (int i = 0; i < iterations; i++) {
        sum += mandelbrot(200);
        sum += sieve(1 << 20);
        sum += matmul(20);
        sum += hashmix(2000000);
        sum += sorting(1 << 16);
    }
    return sum;
}

static char report_buf[128];

EXPORT("report") int32_t report(int iterations) {
    return snprintf(report_buf, sizeof report_buf, "bench(%d) = %lld", iterations,
                    (long long)bench(iterations));
}
