/* bench_torch.h - what the benchmarks that compare lss_nn.h with PyTorch share: the resident memory of this
 * process, and running a PyTorch reference script once per thread count.
 *
 * A reference script prints "torch threads T forward+backward S seconds (cpu C s)" and "torch memory: before
 * steps B MB, peak P MB, steps +D MB"; bench_torch_run runs "<python> SCRIPT T ARGS" for T = 1 and 2 through
 * /usr/bin/python3 (Debian's python3-torch) or python3, with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
 * MKL_NUM_THREADS set to T (torch.set_num_threads alone leaves the BLAS pool at its default) and OpenBLAS free to
 * pick its best kernel, echoes its output and keeps the best wall (tt[T]) and cpu (tc[T]) times and the smallest
 * memory of the steps (*tm, MB); bench_torch_report prints the comparison. The scripts share bench/torch_bench.py.
 * Linux only (/proc, getrusage). */
#ifndef LSS_BENCH_TORCH_H
#define LSS_BENCH_TORCH_H
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

/* resident set now, MB */
static double bench_rss_mb(void) {
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (double)res * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}
/* its high-water mark, MB */
static double bench_peak_mb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0 : (double)ru.ru_maxrss / 1024.0;
}

static void bench_torch_run(const char *script, const char *args, double *tt, double *tc, double *tm) {
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char cmd[768], line[512];
    for (int t = 1; t <= 2; t++) {
        FILE *p;
        snprintf(cmd, sizeof cmd,
                 "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d "
                 "MKL_NUM_THREADS=%d %s %s %d %s 2>&1", t, t, t, py, script, t, args ? args : "");
        if (!(p = popen(cmd, "r"))) return;
        while (fgets(line, sizeof line, p)) {
            int th;
            double sec, cpu, mb0, mb1, dmb;
            fputs(line, stdout);
            if (sscanf(line, "torch memory: before steps %lf MB, peak %lf MB, steps +%lf MB", &mb0, &mb1, &dmb) == 3 &&
                dmb < *tm)
                *tm = dmb;
            if (sscanf(line, "torch threads %d forward+backward %lf seconds (cpu %lf", &th, &sec, &cpu) == 3 && th >= 1 &&
                th <= 2) {
                if (sec < tt[th]) tt[th] = sec;
                if (tc && cpu < tc[th]) tc[th] = cpu;
            }
        }
        pclose(p);
    }
}

/* The closing lines of a comparison: per thread count (from t0 to 2) lss's time tl[t] against PyTorch's tt[t]
 * (and the process CPU times cl[t], tc[t] when both are given), or why there is no reference (`none`); then the
 * memory of lss's steps (mem0: resident set before them, mem1: its high-water mark after) against PyTorch's tm. */
static void bench_torch_report(int t0, const double *tl, const double *cl, const double *tt, const double *tc, double tm,
                               double mem0, double mem1, const char *none) {
    for (int t = t0; t <= 2; t++) {
        if (tt[t] < 1e30) {
            printf("threads %d: lss %.4f s, PyTorch %.4f s, ratio lss/PyTorch %.2f", t, tl[t], tt[t], tl[t] / tt[t]);
            if (cl && tc) printf(" (process cpu time: lss %.4f s, PyTorch %.4f s, ratio %.2f)", cl[t], tc[t], cl[t] / tc[t]);
            printf("\n");
        } else
            printf("threads %d: lss %.4f s, PyTorch reference %s\n", t, tl[t],
                   none ? none : "unavailable (python3-torch not installed?)");
    }
    printf("memory of the steps (peak resident set minus the resident set before them): lss %.0f MB (before %.0f MB, "
           "peak %.0f MB)", mem1 - mem0, mem0, mem1);
    if (tm < 1e30) printf(", PyTorch %.0f MB, ratio lss/PyTorch %.2f\n", tm, (mem1 - mem0) / tm);
    else printf("\n");
}
#endif
