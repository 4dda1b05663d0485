/* A small WASI command showing what the sandbox lets through. Try: wasmsbx run examples/wasi/hello.wasm -- --env HOME --exit 3
 *
 *   hello [--stdin] [--env NAME] [--exit N] [PATH...]
 *
 * Prints its arguments; with --stdin copies standard input; with --env NAME
 * prints that environment variable (if the policy allows it); for each PATH
 * lists the directory or prints the file (only works for paths the policy
 * grants); finally exits with code N (default 0; 1 if a PATH failed).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int show_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "hello: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) {
            fprintf(stderr, "hello: %s: %s\n", path, strerror(errno));
            return 1;
        }
        printf("%s/:\n", path);
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                printf("  %s\n", e->d_name);
        closedir(d);
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "hello: %s: %s\n", path, strerror(errno));
        return 1;
    }
    printf("%s:\n", path);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    int code = 0, failed = 0, exit_set = 0;

    printf("hello from wasm32-wasi, argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d] = %s\n", i, argv[i]);

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--stdin") == 0) {
            char buf[4096];
            size_t n, total = 0;
            while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
                fwrite(buf, 1, n, stdout);
                total += n;
            }
            printf("(read %zu bytes from stdin)\n", total);
        } else if (strcmp(argv[i], "--env") == 0 && i + 1 < argc) {
            const char *name = argv[++i], *value = getenv(name);
            if (value)
                printf("%s=%s\n", name, value);
            else
                printf("%s is not set\n", name);
        } else if (strcmp(argv[i], "--exit") == 0 && i + 1 < argc) {
            code = atoi(argv[++i]);
            exit_set = 1;
        } else {
            failed |= show_path(argv[i]);
        }
    }
    fflush(stdout);
    return exit_set ? code : failed;
}
