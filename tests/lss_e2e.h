/* tests/lss_e2e.h - helpers of the end-to-end tests that run one driver program: run it with arguments and capture
 * its output, compare files, check that a failure printed one error line. The including test defines, before the
 * include, `static char dir[256]` (its scratch directory, where stdout.txt and stderr.txt land) and
 * `static const char *prog` (the program); LSS_E2E_ENV (default empty) prefixes every command with environment
 * settings, e.g. "OMP_NUM_THREADS=2 ". Needs <stdlib.h>, <string.h>, <sys/stat.h> and <sys/wait.h>. */
#ifndef LSS_E2E_H
#define LSS_E2E_H
#ifndef LSS_E2E_ENV
#define LSS_E2E_ENV ""
#endif

/* prog with the arguments fmt (up to two %s filled from a and b); returns its exit status (-1: did not exit) */
static int run(const char *fmt, const char *a, const char *b) {
    char args[2048], cmd[4096];
    int st;
    snprintf(args, sizeof args, fmt, a ? a : "", b ? b : "");
    snprintf(cmd, sizeof cmd, LSS_E2E_ENV "'%s' %s > '%s/stdout.txt' 2> '%s/stderr.txt'", prog, args, dir, dir);
    st = system(cmd);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
static int same_file(const char *a, const char *b) {
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}
static int exists(const char *p) { struct stat s; return stat(p, &s) == 0; }
/* the last run's stderr is exactly one line and names an error */
static int stderr_one_line(void) {
    char p[512], buf[4096];
    FILE *f;
    size_t n;
    int lines = 0;
    snprintf(p, sizeof p, "%s/stderr.txt", dir);
    if (!(f = fopen(p, "r"))) return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    return lines == 1 && strstr(buf, "error") != NULL;
}
#endif
