/* A WASI command for the README's component examples: prints every file named in its
   arguments (or stdin without any), like cat. build.sh compiles it with zig cc for
   wasm32-wasi and makes it a WASI 0.2 component with the preview1 command adapter.
     wasmsbx run examples/components/cat.wasm --dir-ro examples/components:/data -- /data/greeting.txt */
#include <stdio.h>

static int copy(FILE *in) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, stdout);
    return ferror(in) ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return copy(stdin);
    int status = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) { perror(argv[i]); status = 1; continue; }
        status |= copy(f);
        fclose(f);
    }
    return status;
}
