/* fsprobe: a WASI command for the sandbox escape tests; one operation per run.
 *
 *   fsprobe OP [PATH] [ARG]      (see tests/guests/README.md for every OP)
 *
 * Success: prints the data (read, ls, stat, ...) or "ok" on stdout, exits 0.
 * Failure: prints "err <ERRNO-NAME> <strerror>" on stderr, exits 1.
 * Usage error: prints "usage: ..." on stderr, exits 2.  getenv of an unset
 * variable exits 3.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const struct { int num; const char *name; } errnames[] = {
    {EPERM, "EPERM"}, {ENOENT, "ENOENT"}, {EIO, "EIO"}, {EBADF, "EBADF"},
    {EAGAIN, "EAGAIN"}, {ENOMEM, "ENOMEM"}, {EACCES, "EACCES"},
    {EFAULT, "EFAULT"}, {EBUSY, "EBUSY"}, {EEXIST, "EEXIST"}, {EXDEV, "EXDEV"},
    {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"}, {EINVAL, "EINVAL"},
    {ENFILE, "ENFILE"}, {EMFILE, "EMFILE"}, {ETXTBSY, "ETXTBSY"},
    {EFBIG, "EFBIG"}, {ENOSPC, "ENOSPC"}, {ESPIPE, "ESPIPE"}, {EROFS, "EROFS"},
    {EMLINK, "EMLINK"}, {ENAMETOOLONG, "ENAMETOOLONG"}, {ENOSYS, "ENOSYS"},
    {ENOTEMPTY, "ENOTEMPTY"}, {ELOOP, "ELOOP"}, {EOVERFLOW, "EOVERFLOW"},
    {ENOTSUP, "ENOTSUP"}, {EDQUOT, "EDQUOT"}, {ENOTCAPABLE, "ENOTCAPABLE"},
};

static int fail(void) {
    int e = errno;
    const char *name = NULL;
    for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
        if (errnames[i].num == e) name = errnames[i].name;
    if (name)
        fprintf(stderr, "err %s %s\n", name, strerror(e));
    else
        fprintf(stderr, "err E%d %s\n", e, strerror(e));
    return 1;
}

static int ok(void) { puts("ok"); return 0; }

static int copy_fd(int in, int out) {
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0) return fail();
            off += w;
        }
    return n < 0 ? fail() : 0;
}

/* Write n bytes of 'x' to fd (stdout, stderr or a file). */
static int write_xs(int fd, long long n) {
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    while (n > 0) {
        size_t chunk = n < (long long)sizeof buf ? (size_t)n : sizeof buf;
        ssize_t w = write(fd, buf, chunk);
        if (w < 0) return fail();
        n -= w;
    }
    return 0;
}

static int write_file(const char *path, const char *data, int flags) {
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
    if (fd < 0) return fail();
    size_t len = strlen(data);
    if (write(fd, data, len) != (ssize_t)len) { int r = fail(); close(fd); return r; }
    if (close(fd) != 0) return fail();
    return ok();
}

static int op_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail();
    int r = copy_fd(fd, 1);
    close(fd);
    return r;
}

/* No LEN: open with O_TRUNC.  LEN: open, then ftruncate(fd, LEN). */
static int op_truncate(const char *path, const char *len) {
    int fd = open(path, len ? O_WRONLY : O_WRONLY | O_TRUNC);
    if (fd < 0) return fail();
    if (len && ftruncate(fd, atoll(len)) != 0) { int r = fail(); close(fd); return r; }
    close(fd);
    return ok();
}

static int op_fill(const char *path, long long n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return fail();
    int r = write_xs(fd, n);
    if (close(fd) != 0 && r == 0) r = fail();
    return r ? r : ok();
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int op_ls(const char *path) {
    DIR *d = opendir(path);
    if (!d) return fail();
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        names = realloc(names, (n + 1) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) puts(names[i]);
    return 0;
}

static const char *type_name(mode_t m) {
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "dir";
    if (S_ISLNK(m)) return "symlink";
    if (S_ISCHR(m)) return "chr";
    if (S_ISBLK(m)) return "blk";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISSOCK(m)) return "sock";
    return "other";
}

static int op_stat(const char *path, int follow) {
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0) return fail();
    printf("type=%s size=%lld nlink=%llu\n", type_name(st.st_mode),
           (long long)st.st_size, (unsigned long long)st.st_nlink);
    return 0;
}

static int op_readlink(const char *path) {
    char buf[4096];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    if (n < 0) return fail();
    buf[n] = '\0';
    puts(buf);
    return 0;
}

static int op_env(void) {
    size_t n = 0;
    while (environ && environ[n]) n++;
    char **vars = malloc((n + 1) * sizeof *vars);
    memcpy(vars, environ, n * sizeof *vars);
    qsort(vars, n, sizeof *vars, cmp_str);
    for (size_t i = 0; i < n; i++) puts(vars[i]);
    return 0;
}

static int op_sleep(long long ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    if (nanosleep(&ts, NULL) != 0) return fail();
    return ok();
}

static int usage(void) {
    fputs("usage: fsprobe OP [PATH] [ARG]\n"
          "  read PATH | write PATH DATA | append PATH DATA | truncate PATH [LEN]\n"
          "  fill PATH N | rename PATH NEW | link PATH NEW | symlink TARGET LINK\n"
          "  unlink PATH | mkdir PATH | rmdir PATH | ls PATH | stat PATH\n"
          "  lstat PATH | readlink PATH | getenv NAME | env | args [ARG...] | argv0\n"
          "  cat-stdin | flood N | flood-err N | exit N | sleep MS | spin\n",
          stderr);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *op = argv[1];
    const char *p = argc > 2 ? argv[2] : NULL;   /* PATH (or NAME, N) */
    const char *a = argc > 3 ? argv[3] : NULL;   /* ARG */

    /* operations without a PATH */
    if (!strcmp(op, "env")) return op_env();
    if (!strcmp(op, "args")) {
        for (int i = 2; i < argc; i++) puts(argv[i]);
        return 0;
    }
    if (!strcmp(op, "argv0")) return puts(argv[0]) < 0;
    if (!strcmp(op, "cat-stdin")) return copy_fd(0, 1);
    if (!strcmp(op, "spin")) for (volatile unsigned long i = 0;; i++) {}

    if (!p) return usage();
    if (!strcmp(op, "getenv")) {
        const char *v = getenv(p);
        if (!v) return 3;
        puts(v);
        return 0;
    }
    if (!strcmp(op, "flood")) return write_xs(1, atoll(p));
    if (!strcmp(op, "flood-err")) return write_xs(2, atoll(p));
    if (!strcmp(op, "exit")) return atoi(p);
    if (!strcmp(op, "sleep")) return op_sleep(atoll(p));

    if (!strcmp(op, "read")) return op_read(p);
    if (!strcmp(op, "write")) return write_file(p, a ? a : "", O_TRUNC);
    if (!strcmp(op, "append")) return write_file(p, a ? a : "", O_APPEND);
    if (!strcmp(op, "truncate")) return op_truncate(p, a);
    if (!strcmp(op, "unlink")) return unlink(p) ? fail() : ok();
    if (!strcmp(op, "mkdir")) return mkdir(p, 0755) ? fail() : ok();
    if (!strcmp(op, "rmdir")) return rmdir(p) ? fail() : ok();
    if (!strcmp(op, "ls")) return op_ls(p);
    if (!strcmp(op, "stat")) return op_stat(p, 1);
    if (!strcmp(op, "lstat")) return op_stat(p, 0);
    if (!strcmp(op, "readlink")) return op_readlink(p);
    if (!a) return usage();
    if (!strcmp(op, "fill")) return op_fill(p, atoll(a));
    if (!strcmp(op, "rename")) return rename(p, a) ? fail() : ok();
    if (!strcmp(op, "link")) return link(p, a) ? fail() : ok();
    if (!strcmp(op, "symlink")) return symlink(p, a) ? fail() : ok();
    return usage();
}
