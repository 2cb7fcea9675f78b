#define _POSIX_C_SOURCE 200809L
/* test_e2e_stats.c - bin/lss-stats end to end: the program runs as a subprocess on NPY files written under build/.
 *
 *  - every subcommand: the CSV header and row count, and values equal to the direct lss_stat_* calls (the CSV
 *    prints 9 significant digits: relative tolerance 1e-8);
 *  - compare on two sets of the same simulator (lognormal convergence maps with the theory spectrum of Omega_m
 *    0.25, different streams) reports distances consistent with zero, and on two cosmologies (Omega_m 0.25 vs
 *    0.35) separates them, with power-spectrum differences that match the theory ratio;
 *  - malformed inputs exit 2 with one line on stderr and leave no output; --help exits 0 with an example.
 * Skipped (counted) when bin/lss-stats is not built; LSS_STATS_BIN=path runs another build of the program. */
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "tests/lss_test.h"

#define NM 32         /* maps per set */
#define SIDE 64       /* pixels per side */
#define PIX 4.6875    /* arcmin: a 5 x 5 deg field */
#define LAMBDA 0.02   /* lognormal shift of the convergence */
#define SEED 2025
#define RTOL 1e-8     /* %.9g in the CSV files */

static char dir[256];
static const char *prog = "bin/lss-stats"; /* LSS_STATS_BIN overrides (to test another build of the program) */
static float *set_a, *set_b, *set_c; /* Omega_m 0.25 (indices 0.., 100..), Omega_m 0.35 (indices 200..) */
static double *pk_lo, *pk_hi;        /* grid spectra of the two cosmologies */
static lss_grid *grid;

/* ------------------------------------------------------------------ helpers */
static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* Runs bin/lss-stats with args (NAME tokens stand for files in dir: written as "D/" prefixes); returns the exit
   status; stderr goes to dir/stderr.txt, stdout to dir/stdout.txt. */
static int lss_stats(const char *args) {
    char cmd[2600], a[1500], *q;
    const char *p;
    size_t k = 0;
    int st;
    for (p = args; *p && k + 300 < sizeof a; p++) { /* "D/" -> dir/ */
        if (p[0] == 'D' && p[1] == '/' && (p == args || p[-1] == ' ')) {
            k += (size_t)snprintf(a + k, sizeof a - k, "%s/", dir);
            p++;
        } else a[k++] = *p;
    }
    a[k] = 0;
    q = a;
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s/stdout.txt' 2> '%s/stderr.txt'", prog, q, dir, dir);
    st = system(cmd);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int file_exists(const char *name) {
    char p[512];
    struct stat s;
    path_of(p, sizeof p, name);
    return stat(p, &s) == 0;
}

/* Number of lines of a file and its first line (without newline). */
static int read_lines(const char *name, char *first, size_t n) {
    char p[512], line[4096];
    FILE *f;
    int k = 0;
    path_of(p, sizeof p, name);
    if (first && n) first[0] = 0;
    if (!(f = fopen(p, "r"))) return -1;
    while (fgets(line, sizeof line, f)) {
        if (k == 0 && first) {
            size_t len = strcspn(line, "\n");
            if (len >= n) len = n - 1;
            memcpy(first, line, len);
            first[len] = 0;
        }
        k++;
    }
    fclose(f);
    return k;
}

static int same_val(double v, double ref, double rtol) {
    if (isnan(ref)) return isnan(v);
    return fabs(v - ref) <= rtol * fabs(ref) + 1e-300;
}

/* Loads a numeric CSV and checks its header (comma-joined names) and row count. */
static int load_csv(const char *name, const char *header, int nrows, lss_csv *c) {
    char p[512], h[1024] = "";
    int i, ok;
    path_of(p, sizeof p, name);
    memset(c, 0, sizeof *c);
    if (lss_csv_read(p, c) != LSS_OK) {
        CHECK(0, "%s: cannot read: %s", name, lss_last_error());
        return 0;
    }
    for (i = 0; i < c->ncols; i++) {
        strncat(h, c->names[i], sizeof h - strlen(h) - 2);
        if (i + 1 < c->ncols) strcat(h, ",");
    }
    ok = !strcmp(h, header) && c->nrows == nrows;
    CHECK(!strcmp(h, header), "%s: header '%s' (want '%s')", name, h, header);
    CHECK(c->nrows == nrows, "%s: %lld rows (want %d)", name, (long long)c->nrows, nrows);
    return ok;
}

/* Column `col` of c against ref[nrows]; returns the number of mismatches. */
static int check_col(const lss_csv *c, const char *col, const double *ref, const char *what) {
    int j = lss_csv_col(c, col), bad = 0;
    int64_t r;
    if (j < 0) {
        CHECK(0, "%s: no column %s", what, col);
        return 1;
    }
    for (r = 0; r < c->nrows; r++)
        if (!same_val(c->data[r * c->ncols + j], ref[r], RTOL)) {
            if (bad < 3) printf("  %s %s row %lld: csv %.10g, library %.10g\n", what, col, (long long)r, c->data[r * c->ncols + j], ref[r]);
            bad++;
        }
    CHECK(bad == 0, "%s: column %s differs from the library in %d of %lld rows", what, col, bad, (long long)c->nrows);
    return bad;
}

/* The driver's bins "lo,hi,n" (same arithmetic). */
static void range_edges(double lo, double hi, int n, int logsp, double *e) {
    int k;
    for (k = 0; k <= n; k++) e[k] = logsp ? exp(log(lo) + (log(hi) - log(lo)) * k / n) : lo + (hi - lo) * k / n;
    e[0] = lo;
    e[n] = hi;
}

static void mids(const double *e, int n, double *c) {
    int k;
    for (k = 0; k < n; k++) c[k] = 0.5 * (e[k] + e[k + 1]);
}

static int save_f32(const char *name, int ndim, const int64_t *shape, const float *data) {
    char p[512];
    path_of(p, sizeof p, name);
    return lss_npy_save(p, LSS_F32, ndim, shape, data);
}

/* ------------------------------------------------------------------ data: lognormal convergence maps */
static int make_spectrum(double omega_m, double *pk) {
    lss_params p;
    lss_cosmo *c = NULL;
    lss_nz *nz = NULL;
    double ell[64], *cl = NULL;
    int nb = 0, k, s;
    lss_params_fiducial(&p);
    p.omega_m = omega_m;
    for (k = 0; k < 64; k++) ell[k] = exp(log(5.0) + (log(20000.0) - log(5.0)) * k / 63);
    if ((s = lss_cosmo_create(&p, &c)) != LSS_OK) return s;
    if ((s = lss_nz_builtin("cosmos", &nz, &nb)) == LSS_OK) {
        cl = malloc(sizeof(double) * (size_t)lss_cl_npairs(nb) * 64);
        if (!cl) s = LSS_ERR_NOMEM;
        else if ((s = lss_cl_tomo(c, nz, nb, ell, 64, cl)) == LSS_OK) s = lss_grid_spectrum(grid, ell, cl, 64, pk); /* kk_1_1 */
    }
    free(cl);
    if (nz) lss_nz_free(nz, nb);
    lss_cosmo_free(c);
    return s;
}

static int make_set(const double *pk, uint64_t first, float *out) {
    double *pkg = malloc(sizeof(double) * SIDE * SIDE);
    int i, s;
    if (!pkg) return LSS_ERR_NOMEM;
    s = lss_field_lognormal_spectrum(grid, pk, LAMBDA, pkg);
    for (i = 0; i < NM && s == LSS_OK; i++)
        s = lss_field_lognormal(grid, pkg, LAMBDA, SEED, lss_stream(LSS_STREAM_CHECK, first + (uint64_t)i, 5), out + (size_t)i * SIDE * SIDE);
    free(pkg);
    return s;
}

static int setup(void) {
    int64_t sh3[3] = {NM, SIDE, SIDE}, sh4[4] = {NM, 2, SIDE, SIDE}, sh2[2] = {SIDE, SIDE}, sh1[1] = {100};
    int64_t shs[3] = {8, 32, 32}, shr[3] = {4, 64, 48}, shn[3] = {4, SIDE, SIDE};
    size_t np = SIDE * SIDE;
    float *four = malloc(sizeof(float) * 2 * NM * np), *tmp = calloc(8 * np, sizeof(float));
    double *one = malloc(sizeof(double) * np);
    char p[512];
    FILE *f;
    int i, s = LSS_OK;
    set_a = malloc(sizeof(float) * NM * np);
    set_b = malloc(sizeof(float) * NM * np);
    set_c = malloc(sizeof(float) * NM * np);
    pk_lo = malloc(sizeof(double) * np);
    pk_hi = malloc(sizeof(double) * np);
    if (!four || !tmp || !one || !set_a || !set_b || !set_c || !pk_lo || !pk_hi) return LSS_ERR_NOMEM;
    CHECK_OK(s = lss_grid_create(SIDE, SIDE, PIX, &grid));
    if (s) return s;
    CHECK_OK(s = make_spectrum(0.25, pk_lo));
    if (!s) CHECK_OK(s = make_spectrum(0.35, pk_hi));
    if (!s) CHECK_OK(s = make_set(pk_lo, 0, set_a));
    if (!s) CHECK_OK(s = make_set(pk_lo, 100, set_b));
    if (!s) CHECK_OK(s = make_set(pk_hi, 200, set_c));
    if (s) return s;
    for (i = 0; i < NM; i++) { /* [N, 2, H, W]: channel 0 = b, channel 1 = a */
        memcpy(four + (size_t)(2 * i) * np, set_b + (size_t)i * np, sizeof(float) * np);
        memcpy(four + (size_t)(2 * i + 1) * np, set_a + (size_t)i * np, sizeof(float) * np);
    }
    for (i = 0; i < (int)np; i++) one[i] = set_a[i];
    path_of(p, sizeof p, "one.npy");
    CHECK_OK(save_f32("a.npy", 3, sh3, set_a));
    CHECK_OK(save_f32("b.npy", 3, sh3, set_b));
    CHECK_OK(save_f32("c.npy", 3, sh3, set_c));
    CHECK_OK(save_f32("a4.npy", 4, sh4, four));
    CHECK_OK(lss_npy_save(p, LSS_F64, 2, sh2, one));
    /* malformed inputs */
    CHECK_OK(save_f32("bad1d.npy", 1, sh1, tmp));
    CHECK_OK(save_f32("small.npy", 3, shs, set_a));
    CHECK_OK(save_f32("rect.npy", 3, shr, set_a));
    memcpy(tmp, set_a, sizeof(float) * 4 * np);
    tmp[np + 77] = NAN;
    CHECK_OK(save_f32("nan.npy", 3, shn, tmp));
    {
        int64_t sh4n[4] = {2, 2, SIDE, SIDE};
        CHECK_OK(save_f32("nan4.npy", 4, sh4n, tmp));
    }
    {
        float *inf = malloc(sizeof(float) * NM * np);
        if (inf) {
            memcpy(inf, set_a, sizeof(float) * NM * np);
            inf[5 * np + 9] = INFINITY;
            CHECK_OK(save_f32("inf.npy", 3, sh3, inf));
            free(inf);
        }
    }
    path_of(p, sizeof p, "garbage.npy");
    if ((f = fopen(p, "w"))) {
        fputs("this is not an NPY file\n", f);
        fclose(f);
    }
    free(four);
    free(tmp);
    free(one);
    return LSS_OK;
}

/* ------------------------------------------------------------------ per-map subcommands */
static void test_per_map(void) {
    lss_stat_opts o;
    lss_csv c;
    double e[32], ctr[32], ell[32], mean[96], sd[96];
    int rc;
    /* ps, section mode, log bins, --field-deg (5 deg / 64 = 4.6875 arcmin) */
    rc = lss_stats("ps --maps D/a.npy --field-deg 5 --edges-log 80,2300,8 --out D/ps.csv");
    CHECK(rc == 0, "ps exit %d", rc);
    range_edges(80, 2300, 8, 1, e);
    memset(&o, 0, sizeof o);
    CHECK_OK(lss_stat_ps(grid, set_a, NM, e, 8, &o, ell, NULL, mean, sd));
    if (load_csv("ps.csv", "bin_lo,bin_hi,center,value,std", 8, &c)) {
        check_col(&c, "bin_lo", e, "ps");
        check_col(&c, "bin_hi", e + 1, "ps");
        check_col(&c, "center", ell, "ps");
        check_col(&c, "value", mean, "ps");
        check_col(&c, "std", sd, "ps");
    }
    lss_csv_free(&c);
    /* ps, LensTools mode, smoothing, channel 1 of a [N, 2, H, W] stack, linear bins, --pixel-arcmin */
    rc = lss_stats("ps --maps D/a4.npy --channel 1 --pixel-arcmin 4.6875 --ps-mode lenstools --smooth-arcmin 6 --edges 100,2300,6 --out D/ps_lt.csv");
    CHECK(rc == 0, "ps lenstools exit %d", rc);
    range_edges(100, 2300, 6, 0, e);
    o.ps_mode = LSS_STAT_PS_LENSTOOLS;
    o.smooth_arcmin = 6;
    CHECK_OK(lss_stat_ps(grid, set_a, NM, e, 6, &o, ell, NULL, mean, sd));
    if (load_csv("ps_lt.csv", "bin_lo,bin_hi,center,value,std", 6, &c)) {
        mids(e, 6, ctr);
        check_col(&c, "center", ctr, "ps lenstools");
        check_col(&c, "value", mean, "ps lenstools");
        check_col(&c, "std", sd, "ps lenstools");
    }
    lss_csv_free(&c);
    /* one float64 map [H, W]: no std column */
    rc = lss_stats("ps --maps D/one.npy --field-deg 5 --edges-log 80,2300,8 --out D/ps1.csv");
    CHECK(rc == 0, "ps of one map exit %d", rc);
    range_edges(80, 2300, 8, 1, e);
    memset(&o, 0, sizeof o);
    CHECK_OK(lss_stat_ps(grid, set_a, 1, e, 8, &o, ell, NULL, mean, NULL));
    if (load_csv("ps1.csv", "bin_lo,bin_hi,center,value", 8, &c)) check_col(&c, "value", mean, "ps one map");
    lss_csv_free(&c);
    /* the channel table of [N, C, H, W] without --channel (DeepLSS bins 36..4536): its c1_c1 is a's section spectrum
       (the lss_ps estimator against lss_grid_ps: float FFTs, 1e-5), c1_c1_se the standard error std / sqrt(N - 1) */
    rc = lss_stats("ps --maps D/a4.npy --pixel-arcmin 4.6875 --out D/ps_ch.csv");
    CHECK(rc == 0, "ps channel table exit %d", rc);
    CHECK_OK(lss_ps_edges(36, 4536, 20, 0, e));
    CHECK_OK(lss_stat_ps(grid, set_a, NM, e, 20, &o, ell, NULL, mean, sd));
    if (load_csv("ps_ch.csv", "ell,nmodes,c0_c0,c1_c1,c0_c0_se,c1_c1_se", 20, &c)) {
        int b, bad = 0, j = lss_csv_col(&c, "c1_c1"), js = lss_csv_col(&c, "c1_c1_se");
        for (b = 0; b < 20; b++) {
            double v = c.data[b * c.ncols + j], se = c.data[b * c.ncols + js];
            if (isnan(mean[b])) bad += !isnan(v);
            else bad += !(fabs(v - mean[b]) <= 1e-5 * fabs(mean[b])) + !(fabs(se - sd[b] / sqrt(NM - 1.0)) <= 1e-4 * sd[b] / sqrt(NM - 1.0));
        }
        CHECK(bad == 0, "channel table c1_c1 against lss_stat_ps: %d mismatches", bad);
    }
    lss_csv_free(&c);
    /* bispectrum, folded with ratio 0.4 */
    rc = lss_stats("bispectrum --maps D/a.npy --field-deg 5 --config folded --fold-ratio 0.4 --edges-log 100,2000,5 --out D/bisp.csv");
    CHECK(rc == 0, "bispectrum exit %d", rc);
    range_edges(100, 2000, 5, 1, e);
    memset(&o, 0, sizeof o);
    o.fold_ratio = 0.4;
    CHECK_OK(lss_stat_bispectrum(grid, set_a, NM, LSS_STAT_BISP_FOLDED, e, 5, &o, ell, NULL, mean, sd));
    if (load_csv("bisp.csv", "bin_lo,bin_hi,center,value,std", 5, &c)) {
        check_col(&c, "center", ell, "bispectrum");
        check_col(&c, "value", mean, "bispectrum");
        check_col(&c, "std", sd, "bispectrum");
    }
    lss_csv_free(&c);
    /* bispectrum default: equilateral on 8 log bins of the grid */
    rc = lss_stats("bispectrum --maps D/a.npy --field-deg 5 --out D/bisp_eq.csv");
    CHECK(rc == 0, "bispectrum (defaults) exit %d", rc);
    CHECK_OK(lss_grid_ps_edges(grid, 8, e));
    CHECK_OK(lss_stat_bispectrum(grid, set_a, NM, LSS_STAT_BISP_EQUILATERAL, e, 8, NULL, NULL, NULL, mean, sd));
    if (load_csv("bisp_eq.csv", "bin_lo,bin_hi,center,value,std", 8, &c)) check_col(&c, "value", mean, "equilateral bispectrum");
    lss_csv_free(&c);
    /* histogram: absolute edges, density */
    rc = lss_stats("hist --maps D/a.npy --field-deg 5 --edges -0.03,0.06,18 --density --out D/hist.csv");
    CHECK(rc == 0, "hist exit %d", rc);
    range_edges(-0.03, 0.06, 18, 0, e);
    memset(&o, 0, sizeof o);
    o.hist = LSS_STAT_HIST_DENSITY;
    CHECK_OK(lss_stat_hist(grid, set_a, NM, e, 18, &o, NULL, mean, sd));
    if (load_csv("hist.csv", "bin_lo,bin_hi,center,value,std", 18, &c)) {
        mids(e, 18, ctr);
        check_col(&c, "center", ctr, "hist");
        check_col(&c, "value", mean, "hist");
        check_col(&c, "std", sd, "hist");
    }
    lss_csv_free(&c);
    /* histogram defaults: counts on -4..4 in 16 bins of each map's std */
    rc = lss_stats("hist --maps D/a.npy --out D/hist_norm.csv");
    CHECK(rc == 0, "hist (defaults) exit %d", rc);
    range_edges(-4, 4, 16, 0, e);
    memset(&o, 0, sizeof o);
    o.norm = 1;
    CHECK_OK(lss_stat_hist(grid, set_a, NM, e, 16, &o, NULL, mean, sd));
    if (load_csv("hist_norm.csv", "bin_lo,bin_hi,center,value,std", 16, &c)) check_col(&c, "value", mean, "hist (norm)");
    lss_csv_free(&c);
    /* peaks: 5 x 5 maxima after smoothing, thresholds in units of each map's std */
    rc = lss_stats("peaks --maps D/a.npy --field-deg 5 --smooth-arcmin 3 --peaks 5x5 --thresholds -1,4,10 --norm --out D/peaks.csv");
    CHECK(rc == 0, "peaks exit %d", rc);
    range_edges(-1, 4, 10, 0, e);
    memset(&o, 0, sizeof o);
    o.norm = 1;
    o.smooth_arcmin = 3;
    o.peaks = LSS_STAT_PEAKS_5X5;
    CHECK_OK(lss_stat_peak_counts(grid, set_a, NM, e, 10, &o, NULL, mean, sd));
    if (load_csv("peaks.csv", "bin_lo,bin_hi,center,value,std", 10, &c)) {
        check_col(&c, "value", mean, "peaks");
        check_col(&c, "std", sd, "peaks");
    }
    lss_csv_free(&c);
    /* peaks defaults: LensTools peaks on -2..4 in 12 bins of each map's std */
    rc = lss_stats("peaks --maps D/a.npy --out D/peaks_def.csv");
    CHECK(rc == 0, "peaks (defaults) exit %d", rc);
    range_edges(-2, 4, 12, 0, e);
    memset(&o, 0, sizeof o);
    o.norm = 1;
    CHECK_OK(lss_stat_peak_counts(grid, set_a, NM, e, 12, &o, NULL, mean, sd));
    if (load_csv("peaks_def.csv", "bin_lo,bin_hi,center,value,std", 12, &c)) check_col(&c, "value", mean, "peaks (defaults)");
    lss_csv_free(&c);
    /* Minkowski functionals: one file, V0, V1, V2 and their std */
    rc = lss_stats("minkowski --maps D/a.npy --field-deg 5 --thresholds -2,3,10 --norm --out D/mink.csv");
    CHECK(rc == 0, "minkowski exit %d", rc);
    range_edges(-2, 3, 10, 0, e);
    CHECK_OK(lss_stat_minkowski(grid, set_a, NM, e, 10, &o, NULL, mean, sd));
    if (load_csv("mink.csv", "bin_lo,bin_hi,center,V0,V1,V2,V0_std,V1_std,V2_std", 10, &c)) {
        check_col(&c, "V0", mean, "minkowski");
        check_col(&c, "V1", mean + 10, "minkowski");
        check_col(&c, "V2", mean + 20, "minkowski");
        check_col(&c, "V0_std", sd, "minkowski");
        check_col(&c, "V1_std", sd + 10, "minkowski");
        check_col(&c, "V2_std", sd + 20, "minkowski");
    }
    lss_csv_free(&c);
}

/* ------------------------------------------------------------------ compare */
typedef struct {
    char name[48];
    double value, scatter;
} crow;

/* Reads DIR/compare.csv: the header must be statistic,value,scatter. Returns the number of rows or -1. */
static int read_compare(const char *sub, crow *rows, int cap) {
    char p[512], line[512];
    FILE *f;
    int n = 0;
    snprintf(p, sizeof p, "%s/%s/compare.csv", dir, sub);
    if (!(f = fopen(p, "r"))) return -1;
    if (!fgets(line, sizeof line, f) || strcmp(line, "statistic,value,scatter\n") != 0) {
        fclose(f);
        return -1;
    }
    while (n < cap && fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL, *end;
        if (!c1 || !c2 || c1 - line >= 48) break;
        memcpy(rows[n].name, line, (size_t)(c1 - line));
        rows[n].name[c1 - line] = 0;
        rows[n].value = strtod(c1 + 1, &end);
        if (end != c2) break;
        rows[n].scatter = strtod(c2 + 1, &end);
        if (*end != '\n') break;
        n++;
    }
    fclose(f);
    return n;
}

/* Runs compare of (a, b) through the program and the library; checks the files and that every row matches. */
static int run_compare(const char *a, const char *b, const float *ma, const float *mb, const char *sub, const double *edges,
                       int nell, crow *rows, int cap) {
    char args[512], p[512], first[256];
    lss_stat_row lib[200];
    lss_stat_compare_opts co;
    int n, nlib = 0, r, bad = 0, rc;
    FILE *f;
    unsigned char sig[8] = {0};
    snprintf(args, sizeof args, "compare --a D/%s --b D/%s --field-deg 5 --edges-log 100,2300,%d --out D/%s", a, b, nell, sub);
    rc = lss_stats(args);
    CHECK(rc == 0, "%s exit %d", args, rc);
    n = read_compare(sub, rows, cap);
    memset(&co, 0, sizeof co);
    co.ell_edges = edges;
    co.nell = nell;
    co.ssim_pairs = 200;
    co.seed = 1;
    CHECK_OK(lss_stat_compare(grid, ma, NM, mb, NM, &co, lib, 200, &nlib));
    CHECK(n == nlib && n == 2 + 2 * nell + 1 + 36 + 1, "%s: compare.csv has %d rows (library %d, want %d)", sub, n, nlib, 2 + 2 * nell + 1 + 36 + 1);
    for (r = 0; r < n && r < nlib; r++)
        if (strcmp(rows[r].name, lib[r].name) || !same_val(rows[r].value, lib[r].value, RTOL) || !same_val(rows[r].scatter, lib[r].scatter, RTOL)) {
            if (bad < 3) printf("  %s row %d: csv %s %.10g %.10g, library %s %.10g %.10g\n", sub, r, rows[r].name, rows[r].value,
                                rows[r].scatter, lib[r].name, lib[r].value, lib[r].scatter);
            bad++;
        }
    CHECK(bad == 0, "%s: %d rows of compare.csv differ from lss_stat_compare", sub, bad);
    snprintf(p, sizeof p, "%s/%s/compare.png", dir, sub);
    if ((f = fopen(p, "rb"))) {
        CHECK(fread(sig, 1, 8, f) == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8), "%s: compare.png is not a PNG", sub);
        fclose(f);
    } else CHECK(0, "%s: no compare.png", sub);
    snprintf(p, sizeof p, "%s/run.json", sub);
    CHECK(read_lines(p, first, sizeof first) > 5 && !strcmp(first, "{"), "%s: run.json missing or malformed", sub);
    {
        char q[512], buf[4096] = "";
        size_t k;
        snprintf(q, sizeof q, "%s/%s/run.json", dir, sub);
        if ((f = fopen(q, "r"))) {
            k = fread(buf, 1, sizeof buf - 1, f);
            buf[k] = 0;
            fclose(f);
        }
        CHECK(strstr(buf, "\"program\": \"lss-stats\"") && strstr(buf, "\"n_a\": 32") && strstr(buf, "\"compare\""),
              "%s: run.json lacks the program, the set sizes or the command line", sub);
    }
    return n;
}

/* The scatter of a reldiff row is std_b / |mean_b| (one map of b); the difference of two means of NM maps with equal
   scatter has the standard error scatter sqrt(2 / NM). */
static double z_reldiff(const crow *r) { return r->value / (r->scatter * sqrt(2.0 / NM)); }

static void test_compare(void) {
    crow same[128], cosmo[128];
    double e[16], ca[16], cb[16];
    int n1, n2, r, b, bad = 0, nrel = 0, nps = 0, big = 0, theory_bad = 0;
    double zmax = 0, w1_ratio = 0, zmin_ps = 1e300;
    const int nell = 6;
    range_edges(100, 2300, nell, 1, e);
    /* same simulator: a vs b (Omega_m 0.25, disjoint streams) */
    n1 = run_compare("a.npy", "b.npy", set_a, set_b, "cmp_same", e, nell, same, 128);
    for (r = 0; r < n1; r++) {
        if (strstr(same[r].name, "_rel_")) {
            double z;
            if (!isfinite(same[r].value) || !(same[r].scatter > 0)) continue; /* bins where b's mean is 0 */
            z = z_reldiff(&same[r]);
            nrel++;
            if (fabs(z) > zmax) zmax = fabs(z);
            if (!(fabs(z) < 4.5)) {
                bad++;
                printf("  same simulator: %s = %.4g, %.2f standard errors from 0\n", same[r].name, same[r].value, z);
            }
        } else if (!strcmp(same[r].name, "w1_pixels") || !strcmp(same[r].name, "w1_peaks")) {
            /* scatter = W1 between b's halves (NM/2 maps each); W1 of two samples of the same law scales as
               sqrt(1/n1 + 1/n2): rescale it to NM vs NM maps and allow 3 times that level */
            double null = same[r].scatter * sqrt((2.0 / NM) / (4.0 / NM));
            w1_ratio = same[r].value / null;
            CHECK(same[r].value < 3 * null, "same simulator: %s = %.4g above 3 x its null level %.4g", same[r].name, same[r].value, null);
            printf("  same simulator: %s = %.4g, null level %.4g (ratio %.2f)\n", same[r].name, same[r].value, null, w1_ratio);
        } else if (!strcmp(same[r].name, "ssim_significance")) {
            /* eq. 4 divides the difference of the mean within-set SSIM by the per-pair scatter; the means over
               pairs of NM maps have standard errors of about 1/sqrt(NM) of it, so |s| < 1 is 4 standard errors */
            CHECK(fabs(same[r].value) < 1.0, "same simulator: SSIM significance %.3g", same[r].value);
            printf("  same simulator: ssim_significance %.3f\n", same[r].value);
        }
    }
    CHECK(nrel >= 40, "same simulator: only %d relative-difference rows with a finite scale", nrel);
    CHECK(bad == 0, "same simulator: %d of %d relative differences beyond 4.5 standard errors", bad, nrel);
    printf("  same simulator: %d relative differences, largest |z| = %.2f\n", nrel, zmax);
    /* two cosmologies: c (Omega_m 0.35) vs b (0.25); the power-spectrum differences against the theory ratio of the
       binned grid spectra (the lognormal fields carry the input spectrum) */
    n2 = run_compare("c.npy", "b.npy", set_c, set_b, "cmp_cosmo", e, nell, cosmo, 128);
    CHECK_OK(lss_grid_bin_spectrum(grid, pk_hi, e, nell, ca));
    CHECK_OK(lss_grid_bin_spectrum(grid, pk_lo, e, nell, cb));
    for (r = 0; r < n2; r++) {
        if (!strncmp(cosmo[r].name, "ps_rel_", 7)) {
            double z = z_reldiff(&cosmo[r]), th, sig;
            b = atoi(cosmo[r].name + 7);
            nps++;
            if (z > 10) big++;
            if (z < zmin_ps) zmin_ps = z;
            th = ca[b] / cb[b] - 1;
            /* standard error of the difference of means: a's maps scatter (1 + th) times b's */
            sig = cosmo[r].scatter * sqrt((1 + th) * (1 + th) / NM + 1.0 / NM);
            if (!(fabs(cosmo[r].value - th) < 4 * sig)) theory_bad++;
            printf("  two cosmologies: %s = %.4f +- %.4f (%.1f sigma from 0), theory %.4f\n", cosmo[r].name, cosmo[r].value, sig, z, th);
        } else if (!strcmp(cosmo[r].name, "w1_pixels")) {
            double null = cosmo[r].scatter * sqrt(0.5);
            CHECK(cosmo[r].value > 5 * null, "two cosmologies: w1_pixels %.4g not above 5 x its null level %.4g", cosmo[r].value, null);
            printf("  two cosmologies: w1_pixels %.4g, null level %.4g\n", cosmo[r].value, null);
        }
    }
    CHECK(nps == nell, "two cosmologies: %d power-spectrum rows (want %d)", nps, nell);
    CHECK(zmin_ps > 4, "two cosmologies: a power-spectrum bin only %.2f standard errors from zero", zmin_ps);
    CHECK(big >= nell / 2, "two cosmologies: %d of %d power-spectrum bins beyond 10 standard errors", big, nell);
    CHECK(theory_bad == 0, "two cosmologies: %d power-spectrum differences beyond 4 standard errors of the theory ratio", theory_bad);
}

/* ------------------------------------------------------------------ malformed input and help */
static void test_bad_input(void) {
    static const struct {
        const char *args, *out;
    } cases[] = {
        {"ps --maps D/bad1d.npy --out D/bad.csv", "bad.csv"},                              /* 1-D array */
        {"hist --maps D/rect.npy --channel 0 --out D/bad.csv", "bad.csv"},                 /* --channel on 3-D */
        {"hist --maps D/a4.npy --out D/bad.csv", "bad.csv"},                               /* 4-D without --channel */
        {"ps --maps D/a4.npy --channel 2 --out D/bad.csv", "bad.csv"},                     /* channel out of range */
        {"hist --maps D/nan.npy --out D/bad.csv", "bad.csv"},                              /* NaN pixel */
        {"ps --maps D/nan4.npy --out D/bad.csv", "bad.csv"},                               /* NaN in a channel table */
        {"minkowski --maps D/inf.npy --out D/bad.csv", "bad.csv"},                         /* inf pixel */
        {"ps --maps D/missing.npy --out D/bad.csv", "bad.csv"},                            /* missing file */
        {"ps --maps D/garbage.npy --out D/bad.csv", "bad.csv"},                            /* not an NPY file */
        {"hist --maps D/a.npy --edges 0.05,-0.05,10 --out D/bad.csv", "bad.csv"},          /* reversed edges */
        {"hist --maps D/a.npy --edges 0.05,0.05,10 --out D/bad.csv", "bad.csv"},           /* empty edges */
        {"hist --maps D/a.npy --edges 0,1,0 --out D/bad.csv", "bad.csv"},                  /* no bins */
        {"hist --maps D/a.npy --edges 0,1 --out D/bad.csv", "bad.csv"},                    /* not lo,hi,n */
        {"ps --maps D/a.npy --edges-log 0,2000,5 --out D/bad.csv", "bad.csv"},             /* log bins from 0 */
        {"peaks --maps D/a.npy --thresholds 4,-1,10 --out D/bad.csv", "bad.csv"},          /* reversed thresholds */
        {"minkowski --maps D/a.npy --thresholds -1,-1,4 --out D/bad.csv", "bad.csv"},      /* empty thresholds */
        {"bispectrum --maps D/rect.npy --out D/bad.csv", "bad.csv"},                       /* non-square bispectrum */
        {"bispectrum --maps D/a.npy --config round --out D/bad.csv", "bad.csv"},           /* unknown configuration */
        {"ps --maps D/a.npy --field-deg 5 --pixel-arcmin 2 --out D/bad.csv", "bad.csv"},   /* two pixel scales */
        {"peaks --maps D/a.npy --peaks 3x3 --out D/bad.csv", "bad.csv"},                   /* unknown peak definition */
        {"minkowski --maps D/a.npy --bogus 1 --out D/bad.csv", "bad.csv"},                 /* unknown option */
        {"compare --a D/a.npy --b D/small.npy --out D/baddir", "baddir"},                  /* map sizes differ */
        {"compare --a D/nan.npy --b D/b.npy --out D/baddir", "baddir"},                    /* NaN in a set */
        {"compare --a D/a.npy --b D/missing.npy --out D/baddir", "baddir"},                /* missing file */
        {"compare --a D/a.npy --b D/one.npy --out D/baddir", "baddir"},                    /* one reference map */
        {"compare --a D/a.npy --b D/b.npy --thresholds 2,1,4 --out D/baddir", "baddir"},   /* reversed thresholds */
        {"frobnicate --out D/bad.csv", "bad.csv"},                                         /* unknown subcommand */
    };
    int i, n = (int)(sizeof cases / sizeof cases[0]);
    for (i = 0; i < n; i++) {
        char first[1024], p[512];
        int rc, lines;
        path_of(p, sizeof p, cases[i].out);
        remove(p); /* only a file: a directory left by an earlier case would stay and fail the check below */
        rc = lss_stats(cases[i].args);
        lines = read_lines("stderr.txt", first, sizeof first);
        CHECK(rc == 2, "'%s' exited %d (want 2)", cases[i].args, rc);
        CHECK(lines == 1 && !strncmp(first, "lss-stats: error: ", 18) && strlen(first) > 30,
              "'%s': stderr should be one 'lss-stats: error: ...' line (got %d lines, '%s')", cases[i].args, lines, first);
        CHECK(!file_exists(cases[i].out), "'%s' left %s behind", cases[i].args, cases[i].out);
        if (i < 3 || rc != 2) printf("  %s -> %s\n", cases[i].args, first);
    }
}

static void test_help(void) {
    static const char *const sub[7] = {"", "ps", "bispectrum", "hist", "peaks", "minkowski", "compare"};
    int i;
    for (i = 0; i < 7; i++) {
        char args[64], line[4096], p[512], want[64];
        FILE *f;
        int ex = 0, rc;
        snprintf(args, sizeof args, "%s%s--help", sub[i], *sub[i] ? " " : "");
        rc = lss_stats(args);
        snprintf(want, sizeof want, "example: lss-stats %s", sub[i]);
        path_of(p, sizeof p, "stdout.txt");
        if ((f = fopen(p, "r"))) {
            while (fgets(line, sizeof line, f)) ex += !strncmp(line, want, strlen(want));
            fclose(f);
        }
        CHECK(rc == 0 && ex == 1, "lss-stats %s: exit %d, %d example lines", args, rc, ex);
    }
}

int main(void) {
    double t0 = lss_time_now();
    char cmd[600];
    if (getenv("LSS_STATS_BIN")) prog = getenv("LSS_STATS_BIN");
    if (access(prog, X_OK) != 0) {
        SKIP("%s is not built (make bin/lss-stats)", prog);
        LSS_TEST_END();
    }
    mkdir("build", 0777);
    mkdir("build/tests", 0777);
    snprintf(dir, sizeof dir, "build/tests/e2e_stats_XXXXXX");
    if (!mkdtemp(dir)) {
        printf("cannot create a directory under build/tests\n");
        return 1;
    }
    if (setup() == LSS_OK) {
        RUN(test_help);
        RUN(test_per_map);
        RUN(test_compare);
        RUN(test_bad_input);
    } else CHECK(0, "could not make the test maps: %s", lss_last_error());
    printf("# %.1f s\n", lss_time_now() - t0);
    if (getenv("LSS_TEST_KEEP")) printf("# kept %s\n", dir);
    else {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    }
    lss_grid_free(grid);
    free(set_a); free(set_b); free(set_c); free(pk_lo); free(pk_hi);
    LSS_TEST_END();
}
