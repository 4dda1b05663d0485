/* A WASI command for wasmsbx's component tests (built by tests/component_guests.py):
   argv, env, files, exit codes, memory, fuel, timeout and output limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    const char *greeting = getenv("GREETING");
    printf("GREETING=%s\n", greeting ? greeting : "(unset)");
    if (argc > 2 && strcmp(argv[1], "read") == 0) {
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror("open"); return 3; }
        char buf[256]; size_t n = fread(buf, 1, sizeof buf - 1, f); buf[n] = 0;
        printf("read:%s\n", buf); fclose(f);
    }
    if (argc > 2 && strcmp(argv[1], "write") == 0) {
        FILE *f = fopen(argv[2], "w");
        if (!f) { perror("write"); return 4; }
        fputs("written\n", f); fclose(f); puts("wrote");
    }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 2 && strcmp(argv[1], "alloc") == 0) {
        /* Kept in a volatile sink so the compiler cannot elide the allocations. */
        static char *volatile kept[4096];
        long mb = atol(argv[2]);
        for (long i = 0; i < mb && i < 4096; i++) {
            kept[i] = malloc(1 << 20);
            if (!kept[i]) { puts("malloc failed"); return 5; }
            memset(kept[i], 1, 1 << 20);
        }
        puts("allocated");
    }
    if (argc > 1 && strcmp(argv[1], "spin") == 0) { volatile unsigned long x = 0; for (;;) x++; }
    if (argc > 1 && strcmp(argv[1], "flood") == 0) { for (;;) fputs("flood flood flood flood\n", stdout); }
    if (argc > 1 && strcmp(argv[1], "stdin") == 0) { int c; while ((c = getchar()) != EOF) putchar(c); }
    return 0;
}
