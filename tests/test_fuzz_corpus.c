/* test_fuzz_corpus.c - the fuzz harnesses of tests/fuzz/ without libFuzzer: every file of tests/fuzz/corpus/<name>/ (seed
 * inputs) and tests/fuzz/regress/<name>/ (every input a fuzzer ever crashed, hung or tripped a sanitizer with) is fed
 * to the harness's entry point. A harness aborts on anything wrong (a reader that accepts an impossible value, a
 * message with raw control bytes); the sanitizer build (make test-asan) also catches memory errors, leaks and
 * undefined behaviour. Runs from the repository root; each input counts as one check. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include "tests/lss_test.h"

#define LLVMFuzzerTestOneInput fuzz_npy
#include "tests/fuzz/fuzz_npy.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_csv
#include "tests/fuzz/fuzz_csv.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_nz
#include "tests/fuzz/fuzz_nz.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_catalogue
#include "tests/fuzz/fuzz_catalogue.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_mock
#include "tests/fuzz/fuzz_mock.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_mmckpt
#include "tests/fuzz/fuzz_mmckpt.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_ckpt
#include "tests/fuzz/fuzz_ckpt.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_cfg
#include "tests/fuzz/fuzz_cfg.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_json
#include "tests/fuzz/fuzz_json.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_report
#include "tests/fuzz/fuzz_report.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_fits
#define FUZZ_REPLAY
#include "tests/fuzz/fuzz_fits.c"
#undef LLVMFuzzerTestOneInput

typedef int (*fuzz_fn)(const uint8_t *, size_t);
static const struct {
    const char *name;
    fuzz_fn fn;
    int min_seeds; /* the committed corpus holds at least this many */
} harness[] = {{"npy", fuzz_npy, 4},   {"csv", fuzz_csv, 3},       {"nz", fuzz_nz, 2},       {"catalogue", fuzz_catalogue, 4},
               {"mock", fuzz_mock, 1}, {"mmckpt", fuzz_mmckpt, 2}, {"ckpt", fuzz_ckpt, 2}, {"cfg", fuzz_cfg, 2},
               {"json", fuzz_json, 2}, {"report", fuzz_report, 1}, {"fits", fuzz_fits, 5}};

/* Feeds every regular file of dir to fn; returns the number of files (-1: no directory). */
static int replay(const char *name, const char *dir, fuzz_fn fn) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL) {
        char p[1024];
        FILE *f;
        long len;
        uint8_t *buf;
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (!(f = fopen(p, "rb"))) continue;
        if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) { /* a directory */
            fclose(f);
            continue;
        }
        buf = (uint8_t *)malloc((size_t)len + 1);
        CHECK(buf && fread(buf, 1, (size_t)len, f) == (size_t)len, "%s: cannot read %s", name, p);
        fclose(f);
        if (buf) {
            lss_clearerr();
            CHECK(fn(buf, (size_t)len) == 0, "%s: harness returned non-zero on %s", name, p);
            free(buf);
        }
        n++;
    }
    closedir(d);
    return n;
}

int main(void) {
    size_t k;
    for (k = 0; k < sizeof harness / sizeof harness[0]; k++) {
        char dc[256], dr[256];
        int nc, nr;
        snprintf(dc, sizeof dc, "tests/fuzz/corpus/%s", harness[k].name);
        snprintf(dr, sizeof dr, "tests/fuzz/regress/%s", harness[k].name);
        nc = replay(harness[k].name, dc, harness[k].fn);
        nr = replay(harness[k].name, dr, harness[k].fn);
        CHECK(nc >= harness[k].min_seeds, "%s: %d seed inputs in %s (want %d or more)", harness[k].name, nc, dc, harness[k].min_seeds);
        printf("# %-10s %d corpus inputs, %d regression inputs\n", harness[k].name, nc, nr < 0 ? 0 : nr);
        fflush(stdout);
    }
    {   /* the harnesses' scratch directory of this process */
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir());
        if (system(cmd) != 0) printf("could not remove %s\n", fuzz_dir());
    }
    LSS_TEST_END();
}
