#define _POSIX_C_SOURCE 200809L
/* bench_stats.c - the per-map statistics of lss_maps.h on one 128 x 128 map, one core: LensTools-mode power
 * spectrum, equilateral and folded bispectrum, pixel histogram, peak counts (8-neighbour and 5 x 5), Minkowski
 * functionals, SSIM of a pair; then the same statistics in numpy / scikit-image (bench/stats_reference.py on the
 * same map, written as NPY) when python3 with numpy and scikit-image is present, and the ratio.
 * Usage: build/bench/bench_stats [repeats]   (default 50) */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"

#define N 128
typedef struct {
    const char *name;
    double ms;
} row;

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 50, r, i;
    lss_grid *g = NULL;
    double *pk = malloc(sizeof(double) * N * N), out[64], edges[9], thr[13], t0, total = 0, ssim;
    float *m = malloc(sizeof(float) * N * N), *m2 = malloc(sizeof(float) * N * N);
    lss_stat_opts o, o5;
    row rows[8];
    int nr = 0;
    char cmd[512];
    FILE *p;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    if (reps < 1) reps = 1;
    if (lss_grid_create(N, N, 1.0, &g) != LSS_OK) {
        fprintf(stderr, "bench_stats: %s\n", lss_last_error());
        return 1;
    }
    for (i = 0; i < N * N; i++) {
        double k2 = lss_grid_k2(g, i);
        pk[i] = i ? exp(-k2 / (2 * 0.05 * 0.05)) : 0;
    }
    lss_field_gaussian(g, pk, 1, lss_stream(LSS_STREAM_CHECK, 0, 9), m);
    lss_field_gaussian(g, pk, 1, lss_stream(LSS_STREAM_CHECK, 1, 9), m2);
    for (i = 0; i < N * N; i++) m2[i] = 0.7f * m[i] + 0.3f * m2[i];
    for (i = 0; i <= 8; i++) edges[i] = 200.0 * pow(10000.0 / 200.0, i / 8.0);
    for (i = 0; i <= 12; i++) thr[i] = -2.0 + 0.5 * i;
    memset(&o, 0, sizeof o);
    o.ps_mode = LSS_STAT_PS_LENSTOOLS;
    o.norm = 1;
    o5 = o;
    o5.peaks = LSS_STAT_PEAKS_5X5;
#define TIME(label, call)                                                                     \
    do {                                                                                      \
        t0 = lss_time_now();                                                                  \
        for (r = 0; r < reps; r++)                                                            \
            if ((call) != LSS_OK) {                                                           \
                fprintf(stderr, "bench_stats: %s: %s\n", label, lss_last_error());            \
                return 1;                                                                     \
            }                                                                                 \
        rows[nr].name = label;                                                                \
        rows[nr].ms = (lss_time_now() - t0) / reps * 1e3;                                     \
        total += rows[nr++].ms;                                                               \
    } while (0)
    TIME("power_spectrum", lss_stat_ps(g, m, 1, edges, 8, &o, NULL, out, NULL, NULL));
    TIME("bispectrum_equilateral", lss_stat_bispectrum(g, m, 1, LSS_STAT_BISP_EQUILATERAL, edges, 8, &o, NULL, out, NULL, NULL));
    TIME("bispectrum_folded", lss_stat_bispectrum(g, m, 1, LSS_STAT_BISP_FOLDED, edges, 8, &o, NULL, out, NULL, NULL));
    TIME("histogram", lss_stat_hist(g, m, 1, thr, 12, &o, out, NULL, NULL));
    TIME("peaks_8", lss_stat_peak_counts(g, m, 1, thr, 12, &o, out, NULL, NULL));
    TIME("peaks_5x5", lss_stat_peak_counts(g, m, 1, thr, 12, &o5, out, NULL, NULL));
    TIME("minkowski", lss_stat_minkowski(g, m, 1, thr, 12, &o, out, NULL, NULL));
    TIME("ssim_pair", lss_stat_ssim(m, m2, N, N, NULL, &ssim));
    printf("bench_stats: 128 x 128 map, one core, %d repeats (ms per call)\n", reps);
    for (i = 0; i < nr; i++) printf("  %-24s %8.3f\n", rows[i].name, rows[i].ms);
    printf("  %-24s %8.3f  (all per-map statistics and one SSIM pair)\n", "total", total);
    /* the reference side */
    {
        int64_t shape[2] = {N, N};
        const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
        char dir[] = "/tmp/lss_bench_statsXXXXXX", path[600];
        double ref_total = -1, v;
        char line[256], name[64];
        if (!mkdtemp(dir)) return 0;
        snprintf(path, sizeof path, "%s/a.npy", dir);
        lss_npy_save(path, LSS_F32, 2, shape, m);
        snprintf(path, sizeof path, "%s/b.npy", dir);
        lss_npy_save(path, LSS_F32, 2, shape, m2);
        snprintf(cmd, sizeof cmd, "%s bench/stats_reference.py %s %d 2>&1", py, dir, reps);
        p = popen(cmd, "r");
        if (p) {
            while (fgets(line, sizeof line, p)) {
                if (sscanf(line, "%63s %lf", name, &v) == 2) {
                    for (i = 0; i < nr; i++)
                        if (!strcmp(rows[i].name, name)) printf("  %-24s numpy/skimage %8.3f ms  ratio %.1fx\n", name, v, v / rows[i].ms);
                    if (!strcmp(name, "total")) ref_total = v;
                } else fputs(line, stdout);
            }
            pclose(p);
        }
        if (ref_total > 0) printf("  %-24s numpy/skimage %8.3f ms  ratio %.1fx\n", "total", ref_total, ref_total / total);
        else printf("  reference skipped (needs python3 with numpy and scikit-image: apt-get install python3-skimage)\n");
        snprintf(path, sizeof path, "%s/a.npy", dir);
        remove(path);
        snprintf(path, sizeof path, "%s/b.npy", dir);
        remove(path);
        rmdir(dir);
    }
    free(pk);
    free(m);
    free(m2);
    lss_grid_free(g);
    return 0;
}
