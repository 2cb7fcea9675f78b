/* bench_torch.h - what the benchmarks that compare lss_nn.h with PyTorch share: the resident memory of this
 * process, and running a PyTorch reference script once per thread count.
 *
 * A reference script prints "torch threads T forward+backward S seconds (cpu C s)" and "torch memory: before
 * steps B MB, peak P MB, steps +D MB"; bench_torch_run runs "<python> SCRIPT T ARGS" for T = 1 and 2 through
 * /usr/bin/python3 (Debian's python3-torch) or python3, with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
 * MKL_NUM_THREADS set to T (torch.set_num_threads alone leaves the BLAS pool at its default) and OpenBLAS free to
 * pick its best kernel, echoes its output and keeps the best wall (tt[T]) and cpu (tc[T]) times and the smallest
 * memory of the steps (*tm, MB). Linux only (/proc, getrusage). */
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
#endif
