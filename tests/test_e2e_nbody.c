#define _POSIX_C_SOURCE 200809L
/* test_e2e_nbody.c - the N-body drivers end to end: bin/lss-sim nbody builds a small shell library (32^3
 * particles, 4 steps, 3 cosmologies, 2 cones of 9.375 arcmin pixels), and bin/deeplss draws its pool from it.
 *
 *  - the library: 3 complete entries (NPY + JSON) whose cosmologies are those of deeplss's pool grid for the same
 *    seed (lss_pool_grid: the fiducial first), cosmologies.csv and a complete run.json;
 *  - running the same command again resumes: nothing recomputed, the shells bit for bit the same; other options
 *    on the same directory exit 2 naming the conflict;
 *  - impossible geometry (a box narrower than the cone) and a run larger than this machine exit 2 before any
 *    allocation or output, saying what is needed;
 *  - SIGTERM during a run: checkpoint, exit 143, and the same command resumes to the uninterrupted result;
 *  - deeplss sim --model nbody --library: pool_cosmo.npy holds the library's cosmologies, run.json says "nbody";
 *    --library without --model nbody, and a library whose pixels differ from the simulator's, exit 2.
 * Skipped (counted) when bin/lss-sim or bin/deeplss is not built. */
#include <stdlib.h>
#include <errno.h>
#include <sys/stat.h>
#include <signal.h>
#include <time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "tests/lss_test.h"

static char dir[256];

/* runs a command line (the string "D/" stands for dir/); stderr to dir/stderr.txt; returns the exit status */
static int run(const char *fmt, const char *a) {
    char args[1024], cmd[3000], *q;
    size_t k = 0;
    const char *p;
    snprintf(args, sizeof args, fmt, a ? a : "");
    for (p = args, q = cmd; *p && k + 300 < sizeof cmd; p++) {
        if (p[0] == 'D' && p[1] == '/' && (p == args || p[-1] == ' ')) {
            k += (size_t)snprintf(q + k, sizeof cmd - k, "%s/", dir);
            p++;
        } else q[k++] = *p;
    }
    snprintf(q + k, sizeof cmd - k, " > /dev/null 2> '%s/stderr.txt'", dir);
    k = (size_t)system(cmd);
    return (int)k == -1 ? -1 : WIFEXITED((int)k) ? WEXITSTATUS((int)k) : -1;
}

static int stderr_has(const char *s) {
    char p[400], buf[8192];
    size_t n;
    FILE *f;
    snprintf(p, sizeof p, "%s/stderr.txt", dir);
    if (!(f = fopen(p, "r"))) return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return strstr(buf, s) != NULL;
}

static int exists(const char *name) {
    char p[400];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static char *slurp(const char *name, size_t *n) {
    char p[400], *b;
    long len;
    FILE *f;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (!(f = fopen(p, "rb"))) return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)len + 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    if (b) b[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return b;
}

#define LIB "bin/lss-sim nbody --cosmologies 3 --np 32 --steps 4 --ncone 2 --pixel 9.375 --out D/lib%s"

static void test_library(void) {
    char stem[400];
    double grid[6];
    size_t n0, n1;
    char *a, *b, *js;
    int k, cnt = 0;
    CHECK(run(LIB, "") == 0, "lss-sim nbody makes the library");
    snprintf(stem, sizeof stem, "%s/lib", dir);
    CHECK_OK(lss_shell_lib_count(stem, &cnt));
    CHECK(cnt == 3, "3 complete entries (%d)", cnt);
    CHECK_OK(lss_pool_grid(1, 3, grid));
    for (k = 0; k < cnt && k < 3; k++) {
        lss_shellset s;
        char st[500];
        CHECK_OK(lss_shell_lib_stem(stem, k, st, sizeof st));
        if (lss_shellset_load(st, &s) != LSS_OK) { CHECK(0, "entry %d loads: %s", k, lss_last_error()); continue; }
        CHECK(s.params.omega_m == grid[2 * k] && s.params.sigma_8 == grid[2 * k + 1],
              "entry %d at the pool grid cosmology (%g, %g) vs (%g, %g)", k, s.params.omega_m, s.params.sigma_8, grid[2 * k],
              grid[2 * k + 1]);
        CHECK(s.ncone == 2 && s.nbody.np == 32 && s.nbody.steps == 4 && s.pixel_arcmin == 9.375 && s.index == (uint64_t)k,
              "entry %d geometry and seed index", k);
        lss_shellset_free(&s);
    }
    CHECK(exists("lib/cosmologies.csv"), "cosmologies.csv written");
    js = slurp("lib/run.json", &n0);
    CHECK(js && strstr(js, "\"complete\": true") && strstr(js, "shells_0002.npy"), "run.json complete, listing the entries");
    free(js);
    /* the same command again: resumes, nothing recomputed */
    a = slurp("lib/shells_0001.npy", &n0);
    CHECK(run(LIB, "") == 0 && stderr_has("3 of 3 entries already in"), "rerun resumes the finished library");
    b = slurp("lib/shells_0001.npy", &n1);
    CHECK(a && b && n0 == n1 && memcmp(a, b, n0) == 0, "shells unchanged by the rerun");
    free(a); free(b);
    /* other options on the same directory */
    CHECK(run(LIB, " --steps 5") == 2 && stderr_has("other options"), "other options refused: exit 2 naming it");
    CHECK(exists("lib/shells_0000.npy") && exists("lib/run.json"), "the refused run leaves the library as it was");
}

static void test_refusals(void) {
    CHECK(run("bin/lss-sim nbody --fiducial --np 32 --box 10 --out D/narrow", NULL) == 2 && stderr_has("needs a box of at least"),
          "a box narrower than the cone: exit 2 with the width needed");
    CHECK(!exists("narrow"), "nothing made for the refused geometry");
    CHECK(run("bin/lss-sim nbody --fiducial --np 4096 --out D/huge", NULL) == 2 && stderr_has("needs about") &&
          stderr_has("reduce --np"), "a run larger than this machine: exit 2 saying what it needs");
    CHECK(!exists("huge"), "nothing made for the refused size");
    CHECK(run("bin/lss-sim nbody --fiducial --np 31 --out D/odd", NULL) == 2, "odd --np refused");
}

/* SIGTERM while a cosmology runs: the state is saved after the current step and the program exits 128 + 15; the
   same command then resumes and gives the shells of an uninterrupted run bit for bit. The signal is sent once
   stderr shows step 2 done, so the order of events does not depend on the machine's speed. */
#define SIGRUN "--fiducial --np 96 --steps 30 --ncone 1 --out"
static void test_signal(void) {
    char out[400], errp[400], buf[8192], cmd[1200];
    pid_t pid;
    int st = -1, k, seen = 0;
    size_t n0, n1;
    char *a, *b;
    CHECK(run("bin/lss-sim nbody " SIGRUN " D/sigref", NULL) == 0, "uninterrupted reference run");
    snprintf(out, sizeof out, "%s/sig", dir);
    snprintf(errp, sizeof errp, "%s/sig_stderr.txt", dir);
    pid = fork();
    if (pid == 0) {
        FILE *e = freopen(errp, "w", stderr);
        (void)e;
        execl("bin/lss-sim", "lss-sim", "nbody", "--fiducial", "--np", "96", "--steps", "30", "--ncone", "1", "--out", out, (char *)NULL);
        _exit(127);
    }
    for (k = 0; k < 6000 && pid > 0 && !seen; k++) { /* up to 60 s */
        FILE *f = fopen(errp, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f) fclose(f);
        buf[n] = 0;
        seen = strstr(buf, "step 2/30") != NULL;
        if (!seen) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    CHECK(seen, "the run reached step 2");
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, &st, 0);
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM, "SIGTERM: exit status %d (expected 143)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    CHECK(exists("sig/shells_0000.ckpt") && !exists("sig/shells_0000.npy") && !exists("sig/run.json"),
          "interrupted: the checkpoint saved, no entry and no run.json");
    snprintf(cmd, sizeof cmd, "bin/lss-sim nbody " SIGRUN " %s", out);
    CHECK(run("%s", cmd) == 0, "the same command resumes");
    a = slurp("sigref/shells_0000.npy", &n0);
    b = slurp("sig/shells_0000.npy", &n1);
    CHECK(a && b && n0 == n1 && memcmp(a, b, n0) == 0, "resumed shells equal the uninterrupted run's bit for bit");
    CHECK(!exists("sig/shells_0000.ckpt"), "checkpoint removed once the entry is complete");
    free(a); free(b);
}

static void test_deeplss(void) {
    lss_array a;
    double grid[6];
    size_t n;
    char p[400], *js;
    int k, ok = 1;
    CHECK(run("bin/deeplss sim --model nbody --library D/lib --nfield 4 --out D/dl", NULL) == 0, "deeplss sim from the library");
    snprintf(p, sizeof p, "%s/dl/pool_cosmo.npy", dir);
    CHECK_OK(lss_pool_grid(1, 3, grid));
    if (lss_npy_load(p, &a) == LSS_OK) {
        CHECK(a.dtype == LSS_F64 && a.ndim == 2 && a.shape[0] == 3 && a.shape[1] == 2, "pool_cosmo [3, 2]");
        for (k = 0; k < 6 && a.dtype == LSS_F64 && a.shape[0] == 3; k++) ok &= ((double *)a.data)[k] == grid[k];
        CHECK(ok, "the pool's cosmologies are the library's");
        lss_array_free(&a);
    } else CHECK(0, "pool_cosmo.npy loads: %s", lss_last_error());
    CHECK(exists("dl/pool_fields.npy"), "pool fields written");
    js = slurp("dl/run.json", &n);
    CHECK(js && strstr(js, "\"model\": \"nbody\"") && strstr(js, "\"complete\": true"), "run.json says nbody and complete");
    free(js);
    CHECK(run("bin/deeplss sim --library D/lib --out D/dl2", NULL) == 2 && stderr_has("--model nbody"),
          "--library without --model nbody: exit 2");
    CHECK(run("bin/deeplss sim --model nbody --library D/lib --scale paper --out D/dl3", NULL) == 2 && stderr_has("arcmin"),
          "a library of other pixels: exit 2 naming the pixel sizes");
    CHECK(!exists("dl3/pool_fields.npy") && !exists("dl3/run.json"), "no partial pool for the refused run");
}

int main(void) {
    if (access("bin/lss-sim", X_OK) != 0 || access("bin/deeplss", X_OK) != 0) {
        SKIP("bin/lss-sim or bin/deeplss not built");
        LSS_TEST_END();
    }
    snprintf(dir, sizeof dir, "build/test_e2e_nbody.%ld", (long)getpid());
    if (mkdir("build", 0755) != 0 && errno != EEXIST) return 1;
    if (mkdir(dir, 0700) != 0) { printf("cannot make %s\n", dir); return 1; }
    RUN(test_library);
    RUN(test_refusals);
    RUN(test_signal);
    RUN(test_deeplss);
    if (lss_t_fail == 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd)) {}
    }
    LSS_TEST_END();
}
