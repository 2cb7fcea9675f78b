/* bench_theory.c - speed of the cosmology theory of lss_maps.h.
 *
 * Measures (median of 7 runs each):
 *   - lss_cosmo_create: background, growth, EH P_lin and Halofit (ln k, z) tables for one parameter set;
 *   - 10^6 lss_cosmo_pk_nl(k, z) evaluations at scattered (k, z) from the table, against the reference measured in the
 *     same run: the same 10^6 points by Halofit evaluated directly (Eisenstein-Hu transfer + Takahashi formula with
 *     the non-linear scale interpolated in z, i.e. what a code without the 2-D table does per call);
 *   - 10^6 lss_cosmo_pk_lin(k, z) (table) against 10^6 direct Eisenstein-Hu evaluations;
 *   - lss_cl_tomo: all 36 auto and cross spectra of the 4 DeepLSS bins at 100 log-spaced multipoles.
 * Usage: build/bench/bench_theory
 */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define NRUN 7
#define NEVAL 1000000

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmpd);
    return t[n / 2];
}

int main(void) {
    lss_params p;
    lss_cosmo *c = NULL;
    lss_nz *b = NULL;
    int nb = 0, r, i, np;
    double t[NRUN], tcreate, tnl, tnl_ref, tlin, tlin_ref, tcl, sink = 0, *ks, *zs, ell[100], *out;
    lss_params_fiducial(&p);
    ks = (double *)malloc(sizeof(double) * NEVAL);
    zs = (double *)malloc(sizeof(double) * NEVAL);
    if (!ks || !zs) return 1;
    {
        lss_rng g;
        lss_rng_init(&g, 1, 0);
        for (i = 0; i < NEVAL; i++) {
            ks[i] = exp(log(1e-3) + lss_rng_uniform(&g) * (log(1e2) - log(1e-3)));
            zs[i] = 3 * lss_rng_uniform(&g);
        }
    }
    for (r = 0; r < NRUN; r++) {
        double t0 = lss_time_now();
        if (lss_cosmo_create(&p, &c) != LSS_OK) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
        t[r] = lss_time_now() - t0;
        if (r < NRUN - 1) lss_cosmo_free(c);
    }
    tcreate = median(t, NRUN);
    for (r = 0; r < NRUN; r++) {
        double t0 = lss_time_now();
        for (i = 0; i < NEVAL; i++) sink += lss_cosmo_pk_nl(c, ks[i], zs[i]);
        t[r] = lss_time_now() - t0;
    }
    tnl = median(t, NRUN);
    for (r = 0; r < 3; r++) { /* the direct reference is slow: 3 runs */
        double t0 = lss_time_now();
        for (i = 0; i < NEVAL; i++) {
            double z = zs[i], d = lss__growth_raw(c, z) / c->d0;
            lss__hfpar hp = lss__hf_at(c, z);
            sink += lss__halofit(ks[i], lss__pk0_direct(c, ks[i]) * d * d, &hp, lss__omz(c, z));
        }
        t[r] = lss_time_now() - t0;
    }
    tnl_ref = median(t, 3);
    for (r = 0; r < NRUN; r++) {
        double t0 = lss_time_now();
        for (i = 0; i < NEVAL; i++) sink += lss_cosmo_pk_lin(c, ks[i], zs[i]);
        t[r] = lss_time_now() - t0;
    }
    tlin = median(t, NRUN);
    for (r = 0; r < NRUN; r++) {
        double t0 = lss_time_now();
        for (i = 0; i < NEVAL; i++) {
            double d = lss__growth_raw(c, zs[i]) / c->d0;
            sink += lss__pk0_direct(c, ks[i]) * d * d;
        }
        t[r] = lss_time_now() - t0;
    }
    tlin_ref = median(t, NRUN);
    if (lss_nz_builtin("deeplss", &b, &nb) != LSS_OK) return 1;
    np = lss_cl_npairs(nb);
    out = (double *)malloc(sizeof(double) * (size_t)np * 100);
    if (!out) return 1;
    for (i = 0; i < 100; i++) ell[i] = 10 * pow(1000.0, i / 99.0);
    for (r = 0; r < NRUN; r++) {
        double t0 = lss_time_now();
        if (lss_cl_tomo(c, b, nb, ell, 100, out) != LSS_OK) return 1;
        t[r] = lss_time_now() - t0;
        sink += out[r];
    }
    tcl = median(t, NRUN);
    printf("bench_theory (median of %d runs; threads %d)\n", NRUN,
#ifdef _OPENMP
           omp_get_max_threads()
#else
           1
#endif
    );
    printf("  lss_cosmo_create (tables)            %9.2f ms\n", 1e3 * tcreate);
    printf("  1e6 pk_nl, table                     %9.3f s   (%.1f ns/eval)\n", tnl, 1e9 * tnl / NEVAL);
    printf("  1e6 pk_nl, direct Halofit reference  %9.3f s   ratio direct/table %.1fx\n", tnl_ref, tnl_ref / tnl);
    printf("  1e6 pk_lin, table                    %9.3f s   (%.1f ns/eval)\n", tlin, 1e9 * tlin / NEVAL);
    printf("  1e6 pk_lin, direct EH reference      %9.3f s   ratio direct/table %.1fx\n", tlin_ref, tlin_ref / tlin);
    printf("  lss_cl_tomo 4 bins, %d pairs, 100 ell %9.2f ms\n", np, 1e3 * tcl);
    printf("  (checksum %.6g)\n", sink);
    free(out);
    free(ks);
    free(zs);
    lss_nz_free(b, nb);
    lss_cosmo_free(c);
    return 0;
}
