/* bench_gemm.c - SGEMM speed of lss_nn.h against OpenBLAS measured in the same run.
 *
 * C = A B with square row-major float matrices of size 256, 512 and 1024, with 1 and 2 threads, in two
 * pairings, each in its own child process (OpenBLAS chooses its kernel once, when it is loaded):
 *   best: lss's best kernel for this CPU (lss_sgemm_kernel) against OpenBLAS with OPENBLAS_CORETYPE and
 *         OPENBLAS_L2_SIZE removed from its environment, so that it picks its own best kernel;
 *   avx2: lss's AVX2 + FMA kernel against OpenBLAS forced to its Haswell (AVX2) kernel.
 * OpenBLAS is loaded at run time (dlopen of libopenblas.so.0, symbol cblas_sgemm; Debian package
 * libopenblas0), so the library itself never needs it; without it only our figures are printed. The
 * kernel OpenBLAS ran is printed (openblas_get_corename). Each point is measured in R interleaved
 * rounds (default 7, at least 5; the order alternates): a round times a block of calls of each library
 * (after a pause that lets the other library's threads go idle; the block's time is its fastest call),
 * and the figures are the medians over rounds, the ratio the median of the rounds' ratios.
 * Peak fp32 rate = threads x GHz x FMA units x lanes x 2 (16 lanes for AVX-512 on a CPU with full-width
 * units, 8 for AVX2), GHz from /proc/cpuinfo ("cpu MHz", the nominal clock a virtual machine reports)
 * or LSS_BENCH_GHZ; a fraction above 1 means the cores run above that clock (boost).
 *
 * Usage: build/bench/bench_gemm [quick] [rounds]
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                               float *, int);
typedef void (*set_threads_fn)(int);
typedef char *(*corename_fn)(void);

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

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The fastest call of a block of about 0.2 s (at least 3 calls after an untimed one), after a pause of
 * 0.15 s (idle worker threads of the other library stop spinning; OpenBLAS's spin after each call). */
static double block(int which, cblas_sgemm_fn ob, int n, const float *A, const float *B, float *C, float *C2) {
    struct timespec pause = {0, 150000000L};
    double b0, best = 1e30;
    int rep;
    nanosleep(&pause, NULL);
    b0 = lss_time_now();
    for (rep = 0; rep < 4 || lss_time_now() - b0 < 0.2; rep++) {
        double t0 = lss_time_now(), t;
        if (which == 0) lss_sgemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        else ob(101, 111, 111, n, n, n, 1.0f, A, n, B, n, 0.0f, C2, n); /* RowMajor, NoTrans, NoTrans */
        t = lss_time_now() - t0;
        if (rep > 0 && t < best) best = t;
    }
    return best;
}

static int run(const char *pairing, int quick, int rounds) {
    int sizes[3] = {256, 512, 1024}, nsz = quick ? 2 : 3, avx2 = !strcmp(pairing, "avx2"), lv;
    void *h;
    cblas_sgemm_fn ob = NULL;
    set_threads_fn obt = NULL;
    corename_fn obc = NULL;
    double ghz = cpu_ghz(), lanes;
    if (avx2) setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    else unsetenv("OPENBLAS_CORETYPE");
    unsetenv("OPENBLAS_L2_SIZE");
    h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
    if (h) {
        void *p = dlsym(h, "cblas_sgemm"), *q = dlsym(h, "openblas_set_num_threads"), *c = dlsym(h, "openblas_get_corename");
        memcpy(&ob, &p, sizeof p);
        memcpy(&obt, &q, sizeof q);
        memcpy(&obc, &c, sizeof c);
    }
    lv = lss_sgemm_kernel(avx2 ? 1 : 9);
    if (avx2 && lv != 1) {
        printf("\n[%s] this CPU has no AVX2 + FMA: skipped\n", pairing);
        return 0;
    }
    lanes = lv == 2 ? 16 : 8;
    printf("\n[%s] lss kernel %s; OpenBLAS kernel %s (OPENBLAS_CORETYPE=%s, OPENBLAS_L2_SIZE unset); %d rounds\n",
           pairing, lss_sgemm_kernel_name(lv), obc ? obc() : "?", avx2 ? "Haswell" : "unset", rounds);
    if (!ob) printf("OpenBLAS not found (dlopen libopenblas.so.0 failed): %s\n", dlerror());
    printf("peak fp32 = threads x %.3f GHz x 2 FMA units x %.0f lanes x 2 = %.1f GFLOP/s per thread\n", ghz, lanes,
           ghz * 4 * lanes);
    printf("%6s %7s %12s %14s %12s %10s\n", "n", "threads", "lss GFLOP/s", "OpenBLAS GF/s", "lss/OpenBLAS", "lss/peak");
    for (int s = 0; s < nsz; s++) {
        int n = sizes[s];
        float *A = malloc(sizeof(float) * n * n), *B = malloc(sizeof(float) * n * n), *C = malloc(sizeof(float) * n * n),
              *C2 = malloc(sizeof(float) * n * n);
        lss_rng r;
        lss_rng_init(&r, 1, 0);
        for (int i = 0; i < n * n; i++) { A[i] = lss_rng_uniformf(&r) - 0.5f; B[i] = lss_rng_uniformf(&r) - 0.5f; }
        for (int t = 1; t <= 2; t++) {
            double flop = 2.0 * n * n * (double)n, tl[64], to[64], ra[64], ml, mo = 0, mr = 0;
            set_threads(t, obt);
            for (int k = 0; k < rounds; k++) {
                int first = k % 2; /* alternate which library goes first */
                for (int w = 0; w < (ob ? 2 : 1); w++) {
                    int which = ob ? (w ^ first) : 0;
                    double bt = block(which, ob, n, A, B, C, C2);
                    if (which == 0) tl[k] = bt;
                    else to[k] = bt;
                }
                ra[k] = ob ? to[k] / tl[k] : 0;
            }
            if (ob) {
                double md = 0;
                for (int i = 0; i < n * n; i++) md = fmax(md, fabs(C[i] - C2[i]));
                if (md > 1e-3) printf("warning: results differ from OpenBLAS by %.3g\n", md);
                mo = median(to, rounds);
                mr = median(ra, rounds);
            }
            ml = median(tl, rounds);
            printf("%6d %7d %12.1f ", n, t, flop / ml * 1e-9);
            if (ob) printf("%14.1f %12.2f ", flop / mo * 1e-9, mr);
            else printf("%14s %12s ", "-", "-");
            printf("%10.2f\n", ghz > 0 ? flop / ml * 1e-9 / (t * ghz * 4 * lanes) : 0.0);
            fflush(stdout);
        }
        free(A); free(B); free(C); free(C2);
    }
    if (h) dlclose(h);
    return 0;
}

int main(int argc, char **argv) {
    int quick = 0, rounds = 7, i;
    const char *pairings[2] = {"best", "avx2"};
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "quick")) quick = 1;
        else if (atoi(argv[i]) >= 5 && atoi(argv[i]) <= 64) rounds = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: %s [quick] [rounds 5..64]\n", argv[0]);
            return 2;
        }
    }
    printf("SGEMM C = A B, square float32; machine: %d threads available, %.3f GHz nominal; lss kernels on this CPU: "
           "best %s\n", lss_nn_threads(), cpu_ghz(), lss_sgemm_kernel_name(lss_sgemm_kernel(-1)));
    fflush(stdout);
    for (i = 0; i < 2; i++) {
        pid_t pid = fork();
        int st = 0;
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) _exit(run(pairings[i], quick, rounds));
        if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "bench_gemm: the %s pairing failed\n", pairings[i]);
            return 1;
        }
    }
    return 0;
}
