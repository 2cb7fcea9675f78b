/* runner.c - runs the lss test programs given on the command line, echoes their output, and sums
 * their closing "N passed, N failed[, N skipped]" lines. A program that crashes, exits non-zero
 * without reporting a failure, or prints no closing line counts as one failure.
 * Each program's wall time follows its output ("-- NAME: T s").
 * The last line is the total: "N passed, N failed" (", N skipped" when some were). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    long pass = 0, fail = 0, skip = 0;
    int i;
    for (i = 1; i < argc; i++) {
        char cmd[4096], line[8192];
        long p = -1, f = -1, s = 0;
        FILE *pipe;
        int st;
        double t0 = now();
        snprintf(cmd, sizeof cmd, "%s 2>&1", argv[i]);
        printf("== %s\n", argv[i]);
        fflush(stdout);
        pipe = popen(cmd, "r");
        if (!pipe) { printf("FAIL cannot run %s\n", argv[i]); fail++; continue; }
        while (fgets(line, sizeof line, pipe)) {
            long a, b, c;
            fputs(line, stdout);
            fflush(stdout);
            if (sscanf(line, "%ld passed, %ld failed, %ld skipped", &a, &b, &c) == 3) { p = a; f = b; s = c; }
            else if (sscanf(line, "%ld passed, %ld failed", &a, &b) == 2) { p = a; f = b; s = 0; }
        }
        st = pclose(pipe);
        printf("-- %s: %.1f s\n", argv[i], now() - t0);
        if (p < 0) { printf("FAIL %s printed no closing line (status %d)\n", argv[i], st); fail++; continue; }
        pass += p; fail += f; skip += s;
        if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && f == 0) {
            printf("FAIL %s exited with status %d\n", argv[i], st);
            fail++;
        }
    }
    if (skip) printf("%ld passed, %ld failed, %ld skipped\n", pass, fail, skip);
    else printf("%ld passed, %ld failed\n", pass, fail);
    return fail ? 1 : 0;
}
