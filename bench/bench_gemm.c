/* bench_gemm.c - SGEMM speed of lss_nn.h against OpenBLAS measured in the same run.
 *
 * C = A B with square row-major float matrices of size 256, 512 and 1024, with 1 and 2 threads.
 * OpenBLAS is loaded at run time (dlopen of libopenblas.so.0, symbol cblas_sgemm; Debian package
 * libopenblas0 / libopenblas-dev), so the library itself never needs it; without it only our
 * figures are printed. The two run in alternating blocks of calls (with pauses that let the other
 * library's threads go idle) and each figure is the best time over about 2 s per point
 * (LSS_BENCH_SECONDS), so that both see the same machine load.
 * Peak fp32 rate = threads x GHz x 2 FMA units x 16 (8 float lanes x 2 flops per FMA, AVX2), GHz
 * from /proc/cpuinfo ("cpu MHz", the nominal clock a virtual machine reports) or the LSS_BENCH_GHZ
 * environment variable; a fraction above 1 means the cores run above that clock (boost).
 *
 * Usage: build/bench/bench_gemm [quick]
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                               float *, int);
typedef void (*set_threads_fn)(int);

static double cpu_ghz(void) {
    const char *e = getenv("LSS_BENCH_GHZ");
    FILE *f;
    char line[256];
    double mhz = 0;
    if (e && atof(e) > 0) return atof(e);
    f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "cpu MHz", 7)) {
            const char *c = strchr(line, ':');
            if (c) mhz = atof(c + 1);
            break;
        }
    fclose(f);
    return mhz / 1000.0;
}

static void set_threads(int t, set_threads_fn ob) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#endif
    if (ob) ob(t);
}

/* Best times of the two implementations, run in alternating blocks of about 0.25 s with a pause of
 * 0.15 s before each block (idle worker threads of the other library stop spinning and go to
 * sleep; OpenBLAS's spin for a while after each call), for at least 3 rounds and until `budget`
 * seconds have passed, so that both see the same machine load. The first call of a block is not
 * timed. */
static void time_pair(cblas_sgemm_fn ob, int n, const float *A, const float *B, float *C, float *C2, double budget,
                      double *tl, double *to) {
    double start = lss_time_now();
    int rounds = 0;
    struct timespec pause = {0, 150000000L};
    *tl = *to = 1e30;
    while (rounds < 3 || (lss_time_now() - start < budget && rounds < 100)) {
        for (int which = 0; which < (ob ? 2 : 1); which++) {
            double b0;
            int rep = 0;
            nanosleep(&pause, NULL);
            b0 = lss_time_now();
            for (rep = 0; rep < 3 || lss_time_now() - b0 < 0.25; rep++) {
                double t0 = lss_time_now(), t;
                if (which == 0) lss_sgemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
                else ob(101, 111, 111, n, n, n, 1.0f, A, n, B, n, 0.0f, C2, n); /* RowMajor, NoTrans, NoTrans */
                t = lss_time_now() - t0;
                if (rep == 0) continue;
                if (which == 0 && t < *tl) *tl = t;
                if (which == 1 && t < *to) *to = t;
            }
        }
        rounds++;
    }
}

int main(int argc, char **argv) {
    int sizes[3] = {256, 512, 1024}, nsz = argc > 1 && !strcmp(argv[1], "quick") ? 2 : 3;
    void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    cblas_sgemm_fn ob = NULL;
    set_threads_fn obt = NULL;
    double ghz = cpu_ghz(), budget = getenv("LSS_BENCH_SECONDS") ? atof(getenv("LSS_BENCH_SECONDS")) : 2.0;
    if (!h) h = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
    if (h) {
        void *p = dlsym(h, "cblas_sgemm"), *q = dlsym(h, "openblas_set_num_threads");
        memcpy(&ob, &p, sizeof p);
        memcpy(&obt, &q, sizeof q);
    }
    printf("SGEMM C = A B, square float32, best of repetitions; machine: %d threads available, %.3f GHz\n",
           lss_nn_threads(), ghz);
    printf("peak fp32 = threads x %.3f GHz x 2 FMA units x 16 = %.1f GFLOP/s per thread (nominal clock from "
           "/proc/cpuinfo or LSS_BENCH_GHZ; above 1 = the cores run faster)\n", ghz, ghz * 32);
    if (!ob) printf("OpenBLAS not found (dlopen libopenblas.so.0 failed): %s\n", dlerror());
    printf("%6s %7s %12s %14s %10s %12s\n", "n", "threads", "lss GFLOP/s", "OpenBLAS GF/s", "lss/OpenBLAS", "lss/peak");
    for (int s = 0; s < nsz; s++) {
        int n = sizes[s];
        float *A = malloc(sizeof(float) * n * n), *B = malloc(sizeof(float) * n * n), *C = malloc(sizeof(float) * n * n),
              *C2 = malloc(sizeof(float) * n * n);
        lss_rng r;
        lss_rng_init(&r, 1, 0);
        for (int i = 0; i < n * n; i++) { A[i] = lss_rng_uniformf(&r) - 0.5f; B[i] = lss_rng_uniformf(&r) - 0.5f; }
        for (int t = 1; t <= 2; t++) {
            double flop = 2.0 * n * n * (double)n, tl, to = 0;
            set_threads(t, obt);
            time_pair(ob, n, A, B, C, C2, budget, &tl, &to);
            if (ob) {
                double md = 0;
                for (int i = 0; i < n * n; i++) md = fmax(md, fabs(C[i] - C2[i]));
                if (md > 1e-3) printf("warning: results differ from OpenBLAS by %.3g\n", md);
            }
            printf("%6d %7d %12.1f ", n, t, flop / tl * 1e-9);
            if (ob) printf("%14.1f %10.2f ", flop / to * 1e-9, to / tl);
            else printf("%14s %10s ", "-", "-");
            printf("%12.2f\n", ghz > 0 ? flop / tl * 1e-9 / (t * ghz * 32) : 0.0);
        }
        free(A); free(B); free(C); free(C2);
    }
    if (h) dlclose(h);
    return 0;
}
