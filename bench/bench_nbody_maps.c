/* bench_nbody_maps - what the particle-mesh light cones put into the maps, against the lognormal shells:
 *   A. DeepLSS geometry (5 x 5 deg fields of 4.6875 arcmin, the 4 DeepLSS bins, the default smoothing): noise-free
 *      kappa_i of every view of a fiducial N-body shell set and of lognormal fields of the same simulator:
 *      skewness, excess kurtosis, S3, S4 and peaks above 3 sigma per deg^2 (LensTools' 8-neighbour peaks); and
 *      the mean power spectrum of noise-free kappa (A_IA = 0) over the N-body views against the exact expected
 *      spectrum of the same simulator with continuous Limber Halofit C_ell (lss_sim_expected_ps with limber).
 *   B. 1 arcmin pixels, a single narrow source bin at z = 1 (n(z) Gaussian, sigma_z = 0.02), no smoothing: the
 *      same one-point statistics at the pixel scale and after Gaussian smoothing of 1 and 2 arcmin.
 * Shell sets are made by `bin/lss-sim nbody` into build/bench/ (kept and reused; a larger nbox adds boxes to
 * them; delete the directory to remake): nbox independent boxes of the fiducial cosmology (a --list of nbox
 * fiducial rows: initial modes (seed 1, box index)), each painted into ncone cones; all cones are pooled.
 * Errors of means: the standard deviation over cones / sqrt(cones) for N-body (the 8 views of a cone are not
 * independent; cones of one box share its structure at low redshift, so these errors are somewhat optimistic),
 * over fields / sqrt(fields) for lognormal.
 * Usage: bench_nbody_maps [np [ncone [steps [nbox]]]]   (defaults 256 4 20 8) */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include <stdio.h>
#include <stdlib.h>

static void die(const char *what) {
    fprintf(stderr, "bench_nbody_maps: %s: %s\n", what, lss_last_error());
    exit(1);
}

/* per-field statistics of kappa channel ch (nside^2 maps): moments (skew, kurt, S3, S4) and peaks > 3 sigma per deg^2 */
enum { NS = 5 };
static const char *const sname[NS] = {"skewness", "kurtosis", "S3", "S4", "peaks>3sig/deg2"};

static void field_stats(const lss_grid *g, const float *map, double smooth_arcmin, double area_deg2, double *out) {
    lss_stat_opts o;
    double mom[LSS_STAT_NMOMENTS], thr[2] = {3, 1000}, pk;
    memset(&o, 0, sizeof o);
    o.smooth_arcmin = smooth_arcmin;
    if (lss_stat_moments(g, map, 1, &o, mom, NULL, NULL)) die("moments");
    out[0] = mom[2]; out[1] = mom[3]; out[2] = mom[4]; out[3] = mom[5];
    o.norm = 1;
    if (lss_stat_peak_counts(g, map, 1, thr, 1, &o, &pk, NULL, NULL)) die("peaks");
    /* peak counts are per unit threshold width; times the width gives the number of peaks in the bin */
    out[4] = pk * (thr[1] - thr[0]) / area_deg2;
}

/* mean and its error: groups of `per` consecutive samples averaged first (N-body: one group per cone) */
static void mean_err(const double *x, int n, int per, double *m, double *e) {
    int g, ng = n / per, k;
    double s = 0, s2 = 0;
    for (g = 0; g < ng; g++) {
        double a = 0;
        for (k = 0; k < per; k++) a += x[g * per + k];
        a /= per;
        s += a; s2 += a * a;
    }
    *m = s / ng;
    *e = ng > 1 ? sqrt((s2 / ng - *m * *m) * ng / (ng - 1) / ng) : NAN;
}


/* one geometry: the N-body views (sim with the set) and nlog lognormal fields; stats for nbins kappa channels at
   the given smoothings; writes rows to csv */
static void compare(FILE *csv, const char *label, lss_sim *sim, const lss_shellset *set, int nlog, const double *smooth, int nsm) {
    lss_sim_info inf;
    lss_sim_work *w = NULL;
    lss_grid *g = NULL;
    int nv = 8 * set->ncone, nb, v, i, k, q, n;
    float *f;
    double *sn, *sl, area;
    lss_sim_get_info(sim, &inf);
    nb = inf.nbins;
    n = inf.nside;
    area = pow(n * inf.pixel_arcmin / 60, 2);
    if (lss_sim_work_create(sim, &w) || lss_grid_create(n, n, inf.pixel_arcmin, &g)) die("work");
    f = malloc(sizeof(float) * lss_sim_field_size(sim));
    sn = malloc(sizeof(double) * (size_t)nv * nb * nsm * NS);
    sl = malloc(sizeof(double) * (size_t)nlog * nb * nsm * NS);
    if (!f || !sn || !sl) die("memory");
    /* views v = t ncone + cone: order samples cone-major for the per-cone errors */
    if (lss_sim_use_shells(sim, set)) die("use shells");
    for (v = 0; v < nv; v++) {
        int cone = v / 8, t = v % 8, s = cone * 8 + t;
        if (lss_sim_field(sim, w, 1, (uint64_t)(t * set->ncone + cone), f)) die("N-body field");
        for (i = 0; i < nb; i++)
            for (q = 0; q < nsm; q++)
                field_stats(g, f + (size_t)i * n * n, smooth[q], area, sn + (((size_t)i * nsm + q) * nv + s) * NS);
    }
    lss_sim_use_shells(sim, NULL);
    for (v = 0; v < nlog; v++) {
        if (lss_sim_field(sim, w, 7, (uint64_t)v, f)) die("lognormal field");
        for (i = 0; i < nb; i++)
            for (q = 0; q < nsm; q++)
                field_stats(g, f + (size_t)i * n * n, smooth[q], area, sl + (((size_t)i * nsm + q) * nlog + v) * NS);
    }
    printf("\n%s: %d N-body views (%d cones) vs %d lognormal fields, %d x %d pixels of %g arcmin\n", label, nv, set->ncone, nlog, n,
           n, inf.pixel_arcmin);
    printf("%-5s %-7s %-16s %22s %22s %8s\n", "bin", "smooth", "statistic", "N-body", "lognormal", "ratio");
    for (i = 0; i < nb; i++)
        for (q = 0; q < nsm; q++)
            for (k = 0; k < NS; k++) {
                double xn[4096], xl[4096], mn, en, ml, el;
                for (v = 0; v < nv; v++) xn[v] = sn[(((size_t)i * nsm + q) * nv + v) * NS + k];
                for (v = 0; v < nlog; v++) xl[v] = sl[(((size_t)i * nsm + q) * nlog + v) * NS + k];
                mean_err(xn, nv, 8, &mn, &en);
                mean_err(xl, nlog, 1, &ml, &el);
                printf("%-5d %-7g %-16s %10.4g +- %-9.2g %10.4g +- %-9.2g %8.3g\n", i + 1, smooth[q], sname[k], mn, en, ml, el, mn / ml);
                fprintf(csv, "%s,%d,%g,%s,%.6g,%.3g,%.6g,%.3g\n", label, i + 1, smooth[q], sname[k], mn, en, ml, el);
            }
    free(f); free(sn); free(sl);
    lss_grid_free(g);
    lss_sim_work_free(w);
}

/* mean kappa auto spectra of the N-body views against the expected Limber Halofit spectra of the same simulator */
static void spectra(FILE *csv, lss_sim *sim, const lss_shellset *set, const lss_params *p, const lss_cosmo *c) {
    lss_sim_info inf;
    lss_sim_work *w = NULL;
    lss_ps *ps = NULL;
    lss_noise_opts no;
    lss_params q = *p;
    double edges[21], *est, *acc, *expv;
    int nb, n, nv = 8 * set->ncone, v, i, b, np, pi;
    float *f, *m;
    lss_sim_get_info(sim, &inf);
    nb = inf.nbins; n = inf.nside;
    lss_ps_edges(36, 4536, 20, 0, edges);
    if (lss_ps_create(n, n, inf.pixel_arcmin, 2 * nb, edges, 20, &ps) || lss_sim_work_create(sim, &w)) die("ps");
    np = lss_ps_npairs(ps, 1);
    est = malloc(sizeof(double) * (size_t)np * 20);
    acc = calloc((size_t)np * 20, sizeof(double));
    expv = malloc(sizeof(double) * (size_t)np * 20);
    f = malloc(sizeof(float) * lss_sim_field_size(sim));
    m = malloc(sizeof(float) * lss_sim_obs_size(sim));
    memset(&no, 0, sizeof no);
    no.no_noise = 1;
    q.a_ia = 0;
    if (lss_sim_use_shells(sim, set)) die("use shells");
    for (v = 0; v < nv; v++) {
        if (lss_sim_field(sim, w, 1, (uint64_t)v, f) || lss_sim_observe(sim, w, f, &q, &no, 2, (uint64_t)v, m) ||
            lss_ps_compute(ps, m, 1, LSS_PS_REAL, est)) die("spectrum");
        for (i = 0; i < np * 20; i++) acc[i] += est[i] / nv;
    }
    lss_sim_use_shells(sim, NULL);
    if (lss_sim_expected_ps(sim, &q, c, ps, expv)) die("expected spectrum");
    printf("\nkappa auto spectra: mean of %d N-body views / expected (continuous Limber Halofit through the same pixels, "
           "smoothing and cut-out)\n%-8s", nv, "ell");
    for (i = 0; i < nb; i++) printf("   bin %d", i + 1);
    printf("\n");
    for (b = 0; b < 20; b++) {
        if (!(lss_ps_ell(ps)[b] > 0) || !(expv[b] > 0)) continue;   /* no modes in the bin */
        printf("%-8.0f", lss_ps_ell(ps)[b]);
        for (i = 0; i < nb; i++)
            for (pi = 0; pi < np; pi++) {
                int a, c2;
                lss_ps_pair(ps, 1, pi, &a, &c2);
                if (a == i && c2 == i) {
                    printf(" %7.3f", acc[pi * 20 + b] / expv[pi * 20 + b]);
                    fprintf(csv, "cl_ratio,%d,%g,ell,%.6g,0,%.6g,0\n", i + 1, lss_ps_ell(ps)[b], acc[pi * 20 + b], expv[pi * 20 + b]);
                }
            }
        printf("\n");
    }
    free(est); free(acc); free(expv); free(f); free(m);
    lss_ps_free(ps);
    lss_sim_work_free(w);
}

/* the first nbox entries of a library (same cosmology and geometry) as one set of nbox x ncone cones */
static void load_merged(const char *dir, int nbox, lss_shellset *set) {
    char stem[600];
    int k;
    size_t per;
    for (k = 0; k < nbox; k++) {
        lss_shellset e;
        lss_shell_lib_stem(dir, k, stem, sizeof stem);
        if (lss_shellset_load(stem, &e)) die(stem);
        if (k == 0) {
            *set = e;
            per = (size_t)e.ncone * e.nshell * e.side * e.side;
            set->delta = realloc(set->delta, sizeof(float) * per * (size_t)nbox);
            if (!set->delta) die("memory");
            set->seconds = e.seconds;
            continue;
        }
        per = (size_t)e.ncone * e.nshell * e.side * e.side;
        if (e.ncone != set->ncone || e.nshell != set->nshell || e.side != set->side) die("library entries of another geometry");
        memcpy(set->delta + per * (size_t)k, e.delta, sizeof(float) * per);
        set->seconds += e.seconds;
        lss_shellset_free(&e);
    }
    set->ncone *= nbox;
}

static void make_lib(const char *dir, int nbox, const char *opts) {
    char cmd[1400], list[600];
    int k;
    FILE *f;
    snprintf(list, sizeof list, "%s.list.csv", dir);
    if (!(f = fopen(list, "w"))) die(list);
    fprintf(f, "omega_m,sigma_8\n");
    for (k = 0; k < nbox; k++) fprintf(f, "%.17g,%.17g\n", 0.29, 0.71);
    fclose(f);
    snprintf(cmd, sizeof cmd, "bin/lss-sim nbody --list %s --out %s %s", list, dir, opts);
    fprintf(stderr, "bench_nbody_maps: %s\n", cmd);
    if (system(cmd)) { fprintf(stderr, "bench_nbody_maps: the shell library could not be made (make bin/lss-sim first)\n"); exit(1); }
}

int main(int argc, char **argv) {
    int np = argc > 1 ? atoi(argv[1]) : 256, ncone = argc > 2 ? atoi(argv[2]) : 4, steps = argc > 3 ? atoi(argv[3]) : 20, nb;
    int nbox = argc > 4 ? atoi(argv[4]) : 8;
    char cmd[1024];
    lss_params p;
    lss_cosmo *c = NULL;
    lss_nz *nz = NULL;
    lss_sim *sim = NULL;
    lss_sim_opts so;
    lss_shellset set;
    FILE *csv;
    const double sm0[1] = {0}, sm1[3] = {0, 1, 2};
    if (system("mkdir -p build/bench")) return 1;
    csv = fopen("build/bench/nbody_maps.csv", "w");
    if (!csv) { perror("build/bench/nbody_maps.csv"); return 1; }
    fprintf(csv, "part,bin,smooth_arcmin,statistic,nbody,nbody_err,lognormal,lognormal_err\n");
    lss_params_fiducial(&p);
    if (lss_cosmo_create(&p, &c)) die("cosmology");
    /* A: DeepLSS geometry */
    snprintf(cmd, sizeof cmd, "--np %d --ncone %d --steps %d", np, ncone, steps);
    make_lib("build/bench/nbody_deeplss", nbox, cmd);
    load_merged("build/bench/nbody_deeplss", nbox, &set);
    printf("DeepLSS geometry: %d boxes (%d^3 particles, %g Mpc/h, mesh %d, %d steps), %d cones in all; %.0f s of N-body\n", nbox,
           set.nbody.np, set.nbody.box, set.nbody.mesh, set.nbody.steps, set.ncone, set.seconds);
    if (lss_nz_builtin("deeplss", &nz, &nb)) die("n(z)");
    memset(&so, 0, sizeof so);
    if (lss_sim_create(c, nz, nb, &so, &sim)) die("simulator");
    compare(csv, "deeplss", sim, &set, 128, sm0, 1);
    spectra(csv, sim, &set, &p, c);
    lss_sim_free(sim);
    lss_nz_free(nz, nb);
    lss_shellset_free(&set);
    /* B: 1 arcmin, one source plane near z = 1 */
    {
        FILE *f = fopen("build/bench/nz_z1.txt", "w");
        double z;
        if (!f) return 1;
        fprintf(f, "# narrow source bin at z = 1 (Gaussian, sigma_z = 0.02)\n");
        for (z = 0.9; z < 1.1005; z += 0.005) fprintf(f, "%.3f %.8g\n", z, exp(-0.5 * pow((z - 1) / 0.02, 2)));
        fclose(f);
    }
    snprintf(cmd, sizeof cmd, "--np %d --ncone %d --steps %d --bins build/bench/nz_z1.txt --pixel 1 --side 132 --box 150", np, ncone,
             steps);
    make_lib("build/bench/nbody_1arcmin", nbox, cmd);
    load_merged("build/bench/nbody_1arcmin", nbox, &set);
    printf("\n1 arcmin: %d boxes (%d^3 particles, %g Mpc/h, mesh %d, %d steps), %d cones in all; %.0f s of N-body\n", nbox,
           set.nbody.np, set.nbody.box, set.nbody.mesh, set.nbody.steps, set.ncone, set.seconds);
    if (lss_nz_load("build/bench/nz_z1.txt", &nz, &nb)) die("n(z)");
    memset(&so, 0, sizeof so);
    so.nside = 128; so.pixel_arcmin = 1; so.r_wl = so.r_gc = -1;
    if (lss_sim_create(c, nz, nb, &so, &sim)) die("simulator");
    compare(csv, "1arcmin_zs1", sim, &set, 64, sm1, 3);
    lss_sim_free(sim);
    lss_nz_free(nz, nb);
    lss_shellset_free(&set);
    lss_cosmo_free(c);
    fclose(csv);
    printf("\nrows in build/bench/nbody_maps.csv\n");
    return 0;
}
