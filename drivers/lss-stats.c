/* lss-stats - statistics of map files (NPY) and two-set comparisons: power spectrum, bispectrum, pixel histogram,
 * peak counts, Minkowski functionals (one CSV per statistic), and the validation suite of generative emulators
 * (compare: CSV of every two-set statistic, a figure, run.json). Wiring only: the statistics are lss_maps.h's
 * lss_stat_* functions. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"

/* ------------------------------------------------------------------ options shared by the subcommands */
static struct {
    const char *maps, *out, *a, *b, *edges, *edges_log, *thr, *ps_mode, *peaks, *config;
    double field_deg, pix, smooth, fold_ratio, lmin, lmax, dlmin;
    int channel, nbins, cross, absmode, norm, density, ssim_pairs;
    uint64_t seed;
} A = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, "section", "lenstools", "equilateral",
       0, 0, 0, 0, 36, 4536, 0, -1, 20, 0, 0, 0, 0, 200, 1};

#define O_MAPS {"maps", LSS_DRV_STR, &A.maps, 0, 0, 1, "input maps: NPY [H, W], a stack [N, H, W], or [N, C, H, W] with --channel"}
#define O_CHANNEL {"channel", LSS_DRV_INT, &A.channel, -1, 4096, 0, "channel C of a [N, C, H, W] input (-1: none)"}
#define O_FIELD {"field-deg", LSS_DRV_DOUBLE, &A.field_deg, 0, 360, 0, "field side in degrees along the map's width (0: use --pixel-arcmin)"}
#define O_PIX {"pixel-arcmin", LSS_DRV_DOUBLE, &A.pix, 0, 6000, 0, "pixel size in arcmin (0: 4.6875, the DeepLSS pixel, unless --field-deg)"}
#define O_SMOOTH {"smooth-arcmin", LSS_DRV_DOUBLE, &A.smooth, 0, 6000, 0, "Gaussian smoothing (sigma, arcmin, periodic FFT) before any statistic"}
#define O_EDGES {"edges", LSS_DRV_STR, &A.edges, 0, 0, 0, "bins lo,hi,n: n linear bins from lo to hi"}
#define O_EDGES_LOG {"edges-log", LSS_DRV_STR, &A.edges_log, 0, 0, 0, "bins lo,hi,n: n log-spaced bins from lo > 0 to hi"}
#define O_THR {"thresholds", LSS_DRV_STR, &A.thr, 0, 0, 0, "thresholds lo,hi,n: n linear bins (default -2,4,12 in units of each map's std)"}
#define O_NORM {"norm", LSS_DRV_FLAG, &A.norm, 0, 0, 0, "edges/thresholds in units of each (smoothed) map's std"}
#define O_OUT {"out", LSS_DRV_STR, &A.out, 0, 0, 1, "output CSV (written atomically)"}
#define O_END {NULL, LSS_DRV_STR, NULL, 0, 0, 0, NULL}

static const char *const csv_about =
    "Output CSV: one row per bin, columns bin_lo,bin_hi,center,value, plus std when the input holds N > 1 maps:\n"
    "value is the mean over the N maps and std their population standard deviation (ddof 0). center is the\n"
    "midpoint of the bin unless said otherwise. Input: float32/float64 NPY [H, W], a stack [N, H, W], or [N, C, H, W]\n"
    "with --channel C; every pixel must be finite. The field is --field-deg X (side along the width) or\n"
    "--pixel-arcmin X. Bad input (unknown option, value outside its range, malformed bins, unreadable file, wrong\n"
    "shape, NaN/inf pixels) gives one line on stderr, exit status 2, and no output file.";

static int st_argc;
static char **st_argv;

/* Bad input exits 2; only an allocation failure exits 1. */
static void st_check(int status, const char *what) {
    const char *m;
    if (status == LSS_OK) return;
    m = lss_last_error()[0] ? lss_last_error() : lss_strerror(status);
    if (strstr(m, what)) lss_drv_die(status == LSS_ERR_NOMEM ? 1 : 2, "%s", m); /* the message names the file already */
    lss_drv_die(status == LSS_ERR_NOMEM ? 1 : 2, "%s: %s", what, m);
}

static void *st_alloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) lss_drv_die(1, "out of memory");
    return p;
}

/* ------------------------------------------------------------------ input */
typedef struct {
    float *data;    /* [n][c][h][w] (c = 1 unless kept) */
    int n, c, h, w;
} st_maps;

/* Loads maps: [H, W] -> one map; [N, H, W] -> a stack; [N, C, H, W] -> channel `channel` (or every channel when
   keep_channels and channel < 0). Checks that every pixel is finite. */
static void st_load(const char *path, int channel, int keep_channels, st_maps *m) {
    int64_t shape[LSS_MAX_DIM], n, c, h, w, i, k, np;
    int nd;
    float *d = NULL;
    st_check(lss_npy_load_f32(path, &d, &nd, shape), path);
    if (nd == 2) { n = 1; c = 1; h = shape[0]; w = shape[1]; }
    else if (nd == 3) { n = shape[0]; c = 1; h = shape[1]; w = shape[2]; }
    else if (nd == 4) { n = shape[0]; c = shape[1]; h = shape[2]; w = shape[3]; }
    else lss_drv_die(2, "%s: %d-D array (need [H, W], [N, H, W] or [N, C, H, W])", path, nd);
    if (channel >= 0 && nd != 4) lss_drv_die(2, "%s: --channel needs a [N, C, H, W] array (got %d-D)", path, nd);
    if (nd == 4 && channel < 0 && !keep_channels && c > 1)
        lss_drv_die(2, "%s: [N, C, H, W] array with %lld channels: choose one with --channel C", path, (long long)c);
    if (nd == 4 && channel >= c) lss_drv_die(2, "%s: --channel %d but the array has %lld channels", path, channel, (long long)c);
    if (n < 1 || c < 1 || h < 2 || w < 2 || n > 10000000 || c > 4096 || h > 32768 || w > 32768 || h * w > (1 << 28))
        lss_drv_die(2, "%s: shape not usable (%lld maps, %lld channels, %lld x %lld; need at least one map of 2 x 2 or more)",
                    path, (long long)n, (long long)c, (long long)h, (long long)w);
    np = h * w;
    if (nd == 4 && channel >= 0) { /* gather the channel in place (it moves only towards the front) */
        for (k = 0; k < n; k++) memmove(d + k * np, d + (k * c + channel) * np, sizeof(float) * (size_t)np);
        c = 1;
    }
    for (i = 0; i < n * c * np; i++)
        if (!isfinite(d[i]))
            lss_drv_die(2, "%s: map %lld pixel (%lld, %lld) is %g (need finite values)", path, (long long)(i / (c * np)),
                        (long long)(i % np / w), (long long)(i % w), (double)d[i]);
    m->data = d;
    m->n = (int)n;
    m->c = (int)c;
    m->h = (int)h;
    m->w = (int)w;
}

static double st_pixel(int w) {
    if (A.field_deg > 0 && A.pix > 0) lss_drv_die(2, "give --field-deg or --pixel-arcmin, not both");
    if (A.field_deg > 0) return A.field_deg * 60.0 / w;
    return A.pix > 0 ? A.pix : LSS_DEEPLSS_PIXEL_ARCMIN;
}

/* "lo,hi,n" -> n + 1 edges (linear, or log-spaced when logsp). Returns n. */
static int st_range(const char *opt, const char *s, int logsp, double **edges) {
    double *v, lo, hi;
    int n, k;
    if (lss_drv_list(opt, s, &v) != 3) lss_drv_die(2, "option %s: '%s' is not lo,hi,n", opt, s);
    lo = v[0];
    hi = v[1];
    if (!(v[2] >= 1 && v[2] <= 100000 && v[2] == floor(v[2])))
        lss_drv_die(2, "option %s: the number of bins %g must be an integer in [1, 100000]", opt, v[2]);
    n = (int)v[2];
    free(v);
    if (!isfinite(lo) || !isfinite(hi)) lss_drv_die(2, "option %s: '%s' has a bound that is not finite", opt, s);
    if (!(hi > lo)) lss_drv_die(2, "option %s: empty or reversed range %g..%g (need lo < hi)", opt, lo, hi);
    if (logsp && !(lo > 0)) lss_drv_die(2, "option %s: log-spaced bins need lo > 0 (got %g)", opt, lo);
    *edges = (double *)st_alloc(sizeof(double) * (size_t)(n + 1));
    for (k = 0; k <= n; k++)
        (*edges)[k] = logsp ? exp(log(lo) + (log(hi) - log(lo)) * k / n) : lo + (hi - lo) * k / n;
    (*edges)[0] = lo;
    (*edges)[n] = hi;
    for (k = 1; k <= n; k++)
        if (!((*edges)[k] > (*edges)[k - 1])) lss_drv_die(2, "option %s: %d bins are too narrow for %g..%g", opt, n, lo, hi);
    return n;
}

/* Bins from --edges / --edges-log; 0 when neither is given. */
static int st_edges_opt(double **edges) {
    if (A.edges && A.edges_log) lss_drv_die(2, "give --edges or --edges-log, not both");
    if (A.edges) return st_range("--edges", A.edges, 0, edges);
    if (A.edges_log) return st_range("--edges-log", A.edges_log, 1, edges);
    return 0;
}

/* Thresholds from --thresholds, else -2..4 in 12 bins in units of each map's std (norm switched on). */
static int st_thresholds(double **t) {
    if (A.thr) return st_range("--thresholds", A.thr, 0, t);
    A.norm = 1;
    return st_range("--thresholds", "-2,4,12", 0, t);
}

static void st_opts(lss_stat_opts *o) {
    memset(o, 0, sizeof *o);
    o->smooth_arcmin = A.smooth;
    o->norm = A.norm;
    o->fold_ratio = A.fold_ratio;
    if (!strcmp(A.ps_mode, "section")) o->ps_mode = LSS_STAT_PS_SECTION;
    else if (!strcmp(A.ps_mode, "lenstools")) o->ps_mode = LSS_STAT_PS_LENSTOOLS;
    else lss_drv_die(2, "option --ps-mode: '%s' is not section or lenstools", A.ps_mode);
    if (!strcmp(A.peaks, "lenstools")) o->peaks = LSS_STAT_PEAKS_LENSTOOLS;
    else if (!strcmp(A.peaks, "5x5")) o->peaks = LSS_STAT_PEAKS_5X5;
    else lss_drv_die(2, "option --peaks: '%s' is not lenstools or 5x5", A.peaks);
    o->hist = A.density ? LSS_STAT_HIST_DENSITY : LSS_STAT_HIST_COUNTS;
}

/* ------------------------------------------------------------------ output */
/* Writes bin_lo,bin_hi,center,<names>[,<names>_std]: values mean[nv][nbins], std[nv][nbins]. */
static void st_write_bins(const char *out, int nbins, const double *edges, const double *center, int nv,
                          const char *const *names, const double *mean, const double *std, int with_std) {
    int ncol = 3 + nv * (with_std ? 2 : 1), b, v;
    const char **hdr = (const char **)st_alloc(sizeof(char *) * (size_t)ncol);
    char (*stdn)[48] = (char (*)[48])st_alloc(48 * (size_t)nv);
    double *rows = (double *)st_alloc(sizeof(double) * (size_t)ncol * (size_t)nbins);
    hdr[0] = "bin_lo";
    hdr[1] = "bin_hi";
    hdr[2] = "center";
    for (v = 0; v < nv; v++) {
        hdr[3 + v] = names[v];
        if (with_std) {
            snprintf(stdn[v], 48, nv == 1 ? "std" : "%s_std", names[v]);
            hdr[3 + nv + v] = stdn[v];
        }
    }
    for (b = 0; b < nbins; b++) {
        double *r = rows + (size_t)b * ncol;
        r[0] = edges[b];
        r[1] = edges[b + 1];
        r[2] = center ? center[b] : 0.5 * (edges[b] + edges[b + 1]);
        for (v = 0; v < nv; v++) {
            r[3 + v] = mean[v * nbins + b];
            if (with_std) r[3 + nv + v] = std[v * nbins + b];
        }
    }
    st_check(lss_csv_write(out, ncol, hdr, nbins, rows), out);
    free(hdr);
    free(stdn);
    free(rows);
}

/* ------------------------------------------------------------------ per-map statistics */
enum { ST_PS, ST_BISP, ST_HIST, ST_PEAKS, ST_MINK };

/* The legacy table of ps on [N, C, H, W] stacks with every channel: ell, nmodes, one column per channel pair (mean
   over maps), then their standard errors (ddof 1). */
static void st_ps_channels(const st_maps *m, double pix, const double *edges, int nbins) {
    double *acc, *acc2, *one, *rows;
    int np, p, b, ncol, mode = A.absmode ? LSS_PS_ABS : LSS_PS_REAL;
    int64_t k, npix = (int64_t)m->h * m->w;
    lss_ps *ps;
    lss_grid *g = NULL;
    char (*names)[48];
    const char **hdr;
    float *buf = NULL;
    if (strcmp(A.ps_mode, "section") != 0) lss_drv_die(2, "--ps-mode %s needs one channel (--channel C)", A.ps_mode);
    st_check(lss_ps_create(m->h, m->w, pix, m->c, edges, nbins, &ps), "power spectrum");
    if (A.smooth > 0) {
        st_check(lss_grid_create(m->h, m->w, pix, &g), "grid");
        buf = (float *)st_alloc(sizeof(float) * (size_t)npix * (size_t)m->c);
    }
    np = lss_ps_npairs(ps, A.cross);
    acc = (double *)st_alloc(sizeof(double) * (size_t)np * nbins);
    acc2 = (double *)st_alloc(sizeof(double) * (size_t)np * nbins);
    one = (double *)st_alloc(sizeof(double) * (size_t)np * nbins);
    for (k = 0; k < m->n; k++) {
        const float *src = m->data + (size_t)k * m->c * npix;
        if (g) {
            int c;
            for (c = 0; c < m->c; c++) st_check(lss_grid_smooth(g, src + c * npix, buf + c * npix, A.smooth), "smoothing");
            src = buf;
        }
        st_check(lss_ps_compute(ps, src, A.cross, mode, one), "power spectrum");
        for (b = 0; b < np * nbins; b++) {
            acc[b] += one[b];
            acc2[b] += one[b] * one[b];
        }
    }
    names = (char (*)[48])st_alloc(48 * (size_t)(2 * np));
    hdr = (const char **)st_alloc(sizeof(char *) * (size_t)(2 * np + 2));
    ncol = 2 + 2 * np;
    hdr[0] = "ell";
    hdr[1] = "nmodes";
    for (p = 0; p < np; p++) {
        int i, j;
        char a[16], bn[16];
        lss_ps_pair(ps, A.cross, p, &i, &j);
        if (m->c == 8) {
            snprintf(a, sizeof a, "%s%d", i < 4 ? "kg" : "dg", i % 4 + 1);
            snprintf(bn, sizeof bn, "%s%d", j < 4 ? "kg" : "dg", j % 4 + 1);
        } else {
            snprintf(a, sizeof a, "c%d", i);
            snprintf(bn, sizeof bn, "c%d", j);
        }
        snprintf(names[p], 48, "%s_%s", a, bn);
        snprintf(names[np + p], 48, "%s_%s_se", a, bn);
        hdr[2 + p] = names[p];
        hdr[2 + np + p] = names[np + p];
    }
    rows = (double *)st_alloc(sizeof(double) * (size_t)ncol * nbins);
    for (b = 0; b < nbins; b++) {
        double *r = rows + (size_t)b * ncol;
        int64_t nm = lss_ps_nmodes(ps)[b];
        r[0] = lss_ps_ell(ps)[b];
        r[1] = (double)nm;
        for (p = 0; p < np; p++) {
            size_t q = (size_t)p * nbins + b;
            double mu = acc[q] / m->n, var = acc2[q] / m->n - mu * mu;
            r[2 + p] = nm ? mu : NAN;
            r[2 + np + p] = (nm && m->n > 1) ? sqrt((var > 0 ? var : 0) / (m->n - 1)) : NAN;
        }
    }
    st_check(lss_csv_write(A.out, ncol, hdr, nbins, rows), A.out);
    fprintf(stderr, "lss-stats: %d map(s), %d channel(s) of %d x %d, %d spectra in %d bins -> %s\n", m->n, m->c, m->h,
            m->w, np, nbins, A.out);
    free(names); free(hdr); free(rows); free(acc); free(acc2); free(one); free(buf);
    lss_grid_free(g);
    lss_ps_free(ps);
}

static int st_per_map(int which, const lss_drv_cmd *cmd, const lss_drv_opt *opts, int argc, char **argv) {
    st_maps m;
    lss_grid *g = NULL;
    lss_stat_opts o;
    double *edges = NULL, *center = NULL, *mean, *std, pix;
    int nbins = 0, nv = which == ST_MINK ? 3 : 1, config = LSS_STAT_BISP_EQUILATERAL;
    static const char *const vname[1] = {"value"}, *const mname[3] = {"V0", "V1", "V2"};
    char about[4096];
    lss_drv_cmd full = *cmd;
    if (which != ST_PS) { /* the ps text embeds the common part itself */
        snprintf(about, sizeof about, "%s\n%s", cmd->about, csv_about);
        full.about = about;
    }
    lss_drv_parse(&full, opts, argc, argv);
    lss_drv_out_file(A.out); /* an unwritable output fails before the work */
    if (which == ST_BISP) {
        if (!strcmp(A.config, "equilateral")) config = LSS_STAT_BISP_EQUILATERAL;
        else if (!strcmp(A.config, "folded")) config = LSS_STAT_BISP_FOLDED;
        else lss_drv_die(2, "option --config: '%s' is not equilateral or folded", A.config);
        if (A.fold_ratio != 0 && config != LSS_STAT_BISP_FOLDED) lss_drv_die(2, "--fold-ratio applies to --config folded only");
    }
    /* bins (before reading the maps: malformed bins fail fast) */
    if (which == ST_PS || which == ST_BISP || which == ST_HIST) nbins = st_edges_opt(&edges);
    if (which == ST_PEAKS || which == ST_MINK) nbins = st_thresholds(&edges);
    if (which == ST_PS && nbins == 0) {
        if (!(A.lmax > A.lmin && A.lmin >= 0)) lss_drv_die(2, "bins: need 0 <= --lmin < --lmax (got %g, %g)", A.lmin, A.lmax);
        edges = (double *)st_alloc(sizeof(double) * (size_t)(A.nbins + 1));
        st_check(lss_ps_edges(A.lmin, A.lmax, A.nbins, A.dlmin, edges), "bins");
        nbins = A.nbins;
    }
    if (which == ST_HIST && nbins == 0) {
        A.norm = o.norm = 1;
        nbins = st_range("--edges", "-4,4,16", 0, &edges);
    }
    st_opts(&o);
    st_load(A.maps, A.channel, which == ST_PS, &m);
    pix = st_pixel(m.w);
    if (which == ST_PS && m.c > 1) {
        st_ps_channels(&m, pix, edges, nbins);
        free(edges);
        free(m.data);
        return 0;
    }
    if (which == ST_BISP && m.h != m.w) lss_drv_die(2, "%s: the bispectrum needs square maps (got %d x %d)", A.maps, m.h, m.w);
    if (which == ST_MINK && (m.h < 3 || m.w < 3)) lss_drv_die(2, "%s: Minkowski functionals need maps of 3 x 3 or more", A.maps);
    st_check(lss_grid_create(m.h, m.w, pix, &g), "grid");
    if (which == ST_BISP && nbins == 0) { /* 8 log bins from the fundamental to the Nyquist multipole */
        nbins = 8;
        edges = (double *)st_alloc(sizeof(double) * 9);
        st_check(lss_grid_ps_edges(g, nbins, edges), "bins");
    }
    mean = (double *)st_alloc(sizeof(double) * (size_t)nv * nbins);
    std = (double *)st_alloc(sizeof(double) * (size_t)nv * nbins);
    switch (which) {
    case ST_PS:
        center = (double *)st_alloc(sizeof(double) * (size_t)nbins);
        st_check(lss_stat_ps(g, m.data, m.n, edges, nbins, &o, center, NULL, mean, std), "power spectrum");
        break;
    case ST_BISP:
        center = (double *)st_alloc(sizeof(double) * (size_t)nbins);
        st_check(lss_stat_bispectrum(g, m.data, m.n, config, edges, nbins, &o, center, NULL, mean, std), "bispectrum");
        break;
    case ST_HIST: st_check(lss_stat_hist(g, m.data, m.n, edges, nbins, &o, NULL, mean, std), "histogram"); break;
    case ST_PEAKS: st_check(lss_stat_peak_counts(g, m.data, m.n, edges, nbins, &o, NULL, mean, std), "peak counts"); break;
    default: st_check(lss_stat_minkowski(g, m.data, m.n, edges, nbins, &o, NULL, mean, std), "Minkowski functionals"); break;
    }
    st_write_bins(A.out, nbins, edges, center, nv, which == ST_MINK ? mname : vname, mean, std, m.n > 1);
    fprintf(stderr, "lss-stats: %d map(s) of %d x %d (%.4g arcmin pixels), %d bins -> %s\n", m.n, m.h, m.w, pix, nbins, A.out);
    free(edges); free(center); free(mean); free(std); free(m.data);
    lss_grid_free(g);
    return 0;
}

/* ------------------------------------------------------------------ compare */
/* One panel: the means of the two sets and their mean +- std lines. The colour of series s is lss_series_color(s)
   (ten colours, cycling), so the band lines of set k are series 10 + k and 20 + k and share its colour; series
   2..9 and 12..19 are empty (all NaN, not drawn). */
static void st_panel(lss_image *im, int x0, int y0, int pw, int ph, const char *title, const char *xlabel, int logx, int logy,
                     int n, const double *x, const double *ma, const double *sa, const double *mb, const double *sb) {
    double *buf = (double *)st_alloc(sizeof(double) * 22 * (size_t)n);
    const double *y[22];
    const char *labels[22];
    lss_plot_opts po;
    int s, i;
    for (s = 0; s < 22; s++) {
        y[s] = buf + (size_t)s * n;
        labels[s] = NULL;
        for (i = 0; i < n; i++) {
            const double *m = (s % 10) == 0 ? ma : mb, *sd = (s % 10) == 0 ? sa : sb;
            double v = NAN;
            if (s % 10 <= 1) v = s < 10 ? m[i] : s < 20 ? m[i] + sd[i] : m[i] - sd[i];
            buf[(size_t)s * n + i] = v;
        }
    }
    labels[0] = "a (mean, +-1 std)";
    labels[1] = "b (mean, +-1 std)";
    memset(&po, 0, sizeof po);
    po.title = title;
    po.xlabel = xlabel;
    po.logx = logx;
    po.logy = logy;
    lss_plot_lines_into(im, x0, y0, pw, ph, &po, 22, n, x, y, labels);
    free(buf);
}

static void st_compare_figure(const char *path, const lss_grid *g, const st_maps *a, const st_maps *b, const lss_stat_opts *so,
                              const double *ell_edges, int nell, const double *thr_sigma, int nthr, double mu, double sd) {
    static const unsigned char black[3] = {0, 0, 0};
    double *thr = (double *)st_alloc(sizeof(double) * (size_t)(nthr + 1)), *xt = (double *)st_alloc(sizeof(double) * (size_t)nthr);
    double *ell = (double *)st_alloc(sizeof(double) * (size_t)nell);
    double *ma = (double *)st_alloc(sizeof(double) * 3 * (size_t)(nell > nthr ? nell : nthr)), *sa, *mb, *sb;
    lss_stat_opts o = *so;
    lss_image im;
    int k, PW = 480, PH = 360, TOP = 28;
    sa = (double *)st_alloc(sizeof(double) * 3 * (size_t)(nell > nthr ? nell : nthr));
    mb = (double *)st_alloc(sizeof(double) * 3 * (size_t)(nell > nthr ? nell : nthr));
    sb = (double *)st_alloc(sizeof(double) * 3 * (size_t)(nell > nthr ? nell : nthr));
    for (k = 0; k <= nthr; k++) thr[k] = thr_sigma[k] * sd + mu;
    for (k = 0; k < nthr; k++) xt[k] = 0.5 * (thr_sigma[k] + thr_sigma[k + 1]);
    o.norm = 0;
    st_check(lss_image_init(&im, 3 * PW, 2 * PH + TOP), "figure");
    lss_image_text(&im, 12, 9, "a vs b: mean over the maps of each set with mean +- 1 std lines (std over the maps); "
                               "thresholds in units of b's pixel std", black, 1);
    st_check(lss_stat_ps(g, a->data, a->n, ell_edges, nell, &o, ell, NULL, ma, sa), "figure: power spectrum");
    st_check(lss_stat_ps(g, b->data, b->n, ell_edges, nell, &o, NULL, NULL, mb, sb), "figure: power spectrum");
    st_panel(&im, 0, TOP, PW, PH, "power spectrum C_ell", "ell", 1, 1, nell, ell, ma, sa, mb, sb);
    st_check(lss_stat_peak_counts(g, a->data, a->n, thr, nthr, &o, NULL, ma, sa), "figure: peaks");
    st_check(lss_stat_peak_counts(g, b->data, b->n, thr, nthr, &o, NULL, mb, sb), "figure: peaks");
    for (k = 0; k < nthr; k++) { /* per unit of threshold in b's std */
        ma[k] *= sd; sa[k] *= sd; mb[k] *= sd; sb[k] *= sd;
    }
    st_panel(&im, PW, TOP, PW, PH, "peak counts per unit height", "peak height / std of b", 0, 0, nthr, xt, ma, sa, mb, sb);
    o.hist = LSS_STAT_HIST_DENSITY;
    st_check(lss_stat_hist(g, a->data, a->n, thr, nthr, &o, NULL, ma, sa), "figure: histogram");
    st_check(lss_stat_hist(g, b->data, b->n, thr, nthr, &o, NULL, mb, sb), "figure: histogram");
    for (k = 0; k < nthr; k++) {
        ma[k] *= sd; sa[k] *= sd; mb[k] *= sd; sb[k] *= sd;
    }
    st_panel(&im, 2 * PW, TOP, PW, PH, "pixel PDF", "pixel value / std of b", 0, 0, nthr, xt, ma, sa, mb, sb);
    st_check(lss_stat_minkowski(g, a->data, a->n, thr, nthr, &o, NULL, ma, sa), "figure: Minkowski functionals");
    st_check(lss_stat_minkowski(g, b->data, b->n, thr, nthr, &o, NULL, mb, sb), "figure: Minkowski functionals");
    st_panel(&im, 0, TOP + PH, PW, PH, "Minkowski V0", "threshold / std of b", 0, 0, nthr, xt, ma, sa, mb, sb);
    st_panel(&im, PW, TOP + PH, PW, PH, "Minkowski V1", "threshold / std of b", 0, 0, nthr, xt, ma + nthr, sa + nthr, mb + nthr, sb + nthr);
    st_panel(&im, 2 * PW, TOP + PH, PW, PH, "Minkowski V2", "threshold / std of b", 0, 0, nthr, xt, ma + 2 * nthr, sa + 2 * nthr,
             mb + 2 * nthr, sb + 2 * nthr);
    st_check(lss_image_save_png(&im, path), path);
    lss_image_free(&im);
    free(thr); free(xt); free(ell); free(ma); free(sa); free(mb); free(sb);
}

static int st_compare(const lss_drv_cmd *cmd, const lss_drv_opt *opts, int argc, char **argv) {
    st_maps a, b;
    lss_grid *g = NULL;
    lss_stat_compare_opts co;
    lss_stat_opts so;
    lss_stat_row *rows;
    lss_wfile wf;
    double *ell_edges = NULL, *thr = NULL, pix, mu = 0, sd = 0, own_edges[9];
    int nell, nthr, cap, nrows = 0, r;
    int64_t i, nb;
    char path[4096], extra[512];
    lss_drv_parse(cmd, opts, argc, argv);
    st_opts(&so);
    so.norm = 0;
    if (strlen(A.out) > 4000) lss_drv_die(2, "output directory name too long");
    lss_drv_outputs_begin(A.out, 1); /* checked now, published together at the end (drivers/lss_driver.h) */
    nell = st_edges_opt(&ell_edges);
    nthr = A.thr ? st_range("--thresholds", A.thr, 0, &thr) : 0;
    st_load(A.a, A.channel, 0, &a);
    st_load(A.b, A.channel, 0, &b);
    if (a.h != b.h || a.w != b.w)
        lss_drv_die(2, "maps of --a (%d x %d, %s) and --b (%d x %d, %s) differ in size", a.h, a.w, A.a, b.h, b.w, A.b);
    if (a.n < 2 || b.n < 4)
        lss_drv_die(2, "compare needs at least 2 maps in --a and 4 in --b (got %d and %d)", a.n, b.n);
    if (a.h < 3 || a.w < 3) lss_drv_die(2, "compare needs maps of 3 x 3 pixels or more (got %d x %d)", a.h, a.w);
    pix = st_pixel(a.w);
    st_check(lss_grid_create(a.h, a.w, pix, &g), "grid");
    memset(&co, 0, sizeof co);
    co.stat = so;
    co.ell_edges = ell_edges;
    co.nell = nell;
    co.thresholds = thr;
    co.nthr = nthr;
    co.ssim_pairs = A.ssim_pairs;
    co.seed = A.seed;
    cap = 16 + 2 * (nell > 0 ? nell : 8) + 3 * (nthr > 0 ? nthr : 12);
    rows = (lss_stat_row *)st_alloc(sizeof(lss_stat_row) * (size_t)cap);
    st_check(lss_stat_compare(g, a.data, a.n, b.data, b.n, &co, rows, cap, &nrows), "compare");
    /* the figure's bins: the comparison's (its defaults: 8 log bins of the grid, thresholds -2..4 by 0.5) */
    if (!ell_edges) {
        st_check(lss_grid_ps_edges(g, 8, own_edges), "bins");
        nell = 8;
    }
    if (!thr) nthr = st_range("--thresholds", "-2,4,12", 0, &thr);
    nb = (int64_t)b.n * b.h * b.w;
    for (i = 0; i < nb; i++) mu += b.data[i];
    mu /= (double)nb;
    for (i = 0; i < nb; i++) sd += (b.data[i] - mu) * (b.data[i] - mu);
    sd = sqrt(sd / (double)nb);
    /* outputs: nothing is written before every statistic has been computed */
    snprintf(path, sizeof path, "%s/compare.csv", A.out);
    st_check(lss_wfile_open(&wf, path), path);
    fprintf(wf.f, "statistic,value,scatter\n");
    for (r = 0; r < nrows; r++) fprintf(wf.f, "%s,%.9g,%.9g\n", rows[r].name, rows[r].value, rows[r].scatter);
    st_check(lss_wfile_commit(&wf), path);
    snprintf(path, sizeof path, "%s/compare.png", A.out);
    st_compare_figure(path, g, &a, &b, &so, ell_edges ? ell_edges : own_edges, nell, thr, nthr, mu, sd);
    snprintf(extra, sizeof extra, "\"n_a\": %d, \"n_b\": %d, \"height\": %d, \"width\": %d, \"pixel_arcmin\": %.9g, "
             "\"smooth_arcmin\": %.9g, \"rows\": %d", a.n, b.n, a.h, a.w, pix, A.smooth, nrows);
    lss_drv_outputs_done(st_argc, st_argv, A.seed, extra); /* adds "outputs" and "complete" */
    fprintf(stderr, "lss-stats: compared %d and %d maps of %d x %d: %d statistics -> %s/compare.csv, compare.png\n", a.n, b.n,
            a.h, a.w, nrows, A.out);
    free(rows); free(ell_edges); free(thr); free(a.data); free(b.data);
    lss_grid_free(g);
    return 0;
}

/* ------------------------------------------------------------------ the subcommands */
static const char *const cmds_about =
    "subcommands (each has --help with an example):\n"
    "  ps          power spectrum (C_ell) of maps, or every auto/cross spectrum of [N, C, H, W] channels\n"
    "  bispectrum  equilateral or folded bispectrum (LensTools' estimator)\n"
    "  hist        pixel histogram\n"
    "  peaks       peak counts (LensTools 8-neighbour or the 5 x 5 window maxima)\n"
    "  minkowski   Minkowski functionals V0, V1, V2\n"
    "  moments     one-point moments per channel: mean, std, skewness, kurtosis, S3, S4\n"
    "  compare     every two-set statistic of the validation suite (CSV), a figure of both sets, run.json";

/* ------------------------------------------------------------------ moments: one-point statistics per channel */
static int st_moments(int argc, char **argv) {
    static const char *const names[LSS_STAT_NMOMENTS] = {"mean", "std", "skewness", "kurtosis", "S3", "S4"};
    const lss_drv_opt opts[] = {O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH, O_OUT, O_END};
    const lss_drv_cmd cmd = {"lss-stats moments", "lss-stats moments --maps M.npy --out MOM.csv [options]",
        "One-point moments of every map (lss_stat_moments, after the optional smoothing): mean, std (ddof 0), skewness\n"
        "m3/m2^1.5, excess kurtosis m4/m2^2 - 3, S3 = m3/m2^2, S4 = (m4 - 3 m2^2)/m2^3. Output CSV: one row per channel\n"
        "and statistic, columns channel,statistic,mean,std,se (over the N maps; se = std/sqrt(N - 1), n/a for one map).\n"
        "An [N, C, H, W] input without --channel gives every channel.",
        "lss-stats moments --maps out/sim/maps.npy --out moments.csv"};
    st_maps m;
    lss_grid *g = NULL;
    lss_stat_opts o;
    double *each, *rows, pix;
    const char *hdr[5] = {"channel", "statistic", "mean", "std", "se"};
    int c, k, q, nrow = 0;
    int64_t np;
    lss_drv_parse(&cmd, opts, argc, argv);
    st_load(A.maps, A.channel, 1, &m);
    pix = st_pixel(m.w);
    np = (int64_t)m.h * m.w;
    memset(&o, 0, sizeof o);
    o.smooth_arcmin = A.smooth;
    st_check(lss_grid_create(m.h, m.w, pix, &g), "grid");
    each = (double *)st_alloc(sizeof(double) * LSS_STAT_NMOMENTS * (size_t)m.n);
    rows = (double *)st_alloc(sizeof(double) * 5 * LSS_STAT_NMOMENTS * (size_t)m.c);
    for (c = 0; c < m.c; c++) {
        for (k = 0; k < m.n; k++)
            st_check(lss_stat_moments(g, m.data + ((size_t)k * m.c + c) * np, 1, &o, each + (size_t)k * LSS_STAT_NMOMENTS, NULL, NULL),
                     "moments");
        for (q = 0; q < LSS_STAT_NMOMENTS; q++, nrow++) {
            double s1 = 0, s2 = 0, mu, sd;
            double *r = rows + 5 * (size_t)nrow;
            for (k = 0; k < m.n; k++) { s1 += each[(size_t)k * LSS_STAT_NMOMENTS + q]; s2 += pow(each[(size_t)k * LSS_STAT_NMOMENTS + q], 2); }
            mu = s1 / m.n;
            sd = sqrt(fmax(s2 / m.n - mu * mu, 0));
            r[0] = A.channel >= 0 ? A.channel : c; r[1] = q; r[2] = mu; r[3] = sd; r[4] = m.n > 1 ? sd / sqrt(m.n - 1.0) : NAN;
        }
    }
    {
        /* the statistic column holds names: write it by hand through the atomic writer */
        lss_wfile w;
        st_check(lss_wfile_open(&w, A.out), A.out);
        fprintf(w.f, "%s,%s,%s,%s,%s\n", hdr[0], hdr[1], hdr[2], hdr[3], hdr[4]);
        for (k = 0; k < nrow; k++) {
            const double *r = rows + 5 * (size_t)k;
            fprintf(w.f, "%d,%s,%.9g,%.9g,%.9g\n", (int)r[0], names[(int)r[1]], r[2], r[3], r[4]);
        }
        st_check(lss_wfile_commit(&w), A.out);
    }
    fprintf(stderr, "lss-stats: moments of %d map(s) x %d channel(s) of %d x %d -> %s\n", m.n, m.c, m.h, m.w, A.out);
    free(each); free(rows); free(m.data);
    lss_grid_free(g);
    return 0;
}

int main(int argc, char **argv) {
    const lss_drv_opt ps_opts[] = {
        O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH, O_EDGES, O_EDGES_LOG,
        {"ps-mode", LSS_DRV_STR, &A.ps_mode, 0, 0, 0, "section (full plane, [lo, hi), mean ell) or lenstools ((lo, hi], midpoints)"},
        {"lmin", LSS_DRV_DOUBLE, &A.lmin, 0, 0, 0, "without --edges: lower edge of the first log bin"},
        {"lmax", LSS_DRV_DOUBLE, &A.lmax, 0, 0, 0, "without --edges: upper edge of the last log bin"},
        {"nbins", LSS_DRV_INT, &A.nbins, 1, 10000, 0, "without --edges: number of log bins"},
        {"dl-min", LSS_DRV_DOUBLE, &A.dlmin, 0, 0, 0, "without --edges: smallest bin width"},
        {"cross", LSS_DRV_FLAG, &A.cross, 0, 0, 0, "[N, C, H, W] without --channel: all auto and cross spectra"},
        {"abs", LSS_DRV_FLAG, &A.absmode, 0, 0, 0, "[N, C, H, W] without --channel: cross spectra as |X_i X_j*|"},
        O_OUT, O_END};
    const lss_drv_opt bisp_opts[] = {
        O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH, O_EDGES, O_EDGES_LOG,
        {"config", LSS_DRV_STR, &A.config, 0, 0, 0, "equilateral or folded"},
        {"fold-ratio", LSS_DRV_DOUBLE, &A.fold_ratio, 0, 0.999999, 0, "folded: k2 = -ratio k1, in (0, 1) (0: 0.5)"},
        O_OUT, O_END};
    const lss_drv_opt hist_opts[] = {
        O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH,
        {"edges", LSS_DRV_STR, &A.edges, 0, 0, 0, "bins lo,hi,n of pixel values (default -4,4,16 in units of each map's std)"},
        O_EDGES_LOG, O_NORM,
        {"density", LSS_DRV_FLAG, &A.density, 0, 0, 0, "probability density (numpy density=True) instead of counts"},
        O_OUT, O_END};
    const lss_drv_opt peak_opts[] = {
        O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH, O_THR, O_NORM,
        {"peaks", LSS_DRV_STR, &A.peaks, 0, 0, 0, "lenstools (above 8 periodic neighbours) or 5x5 (above the 5 x 5 window)"},
        O_OUT, O_END};
    const lss_drv_opt mink_opts[] = {O_MAPS, O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH, O_THR, O_NORM, O_OUT, O_END};
    const lss_drv_opt cmp_opts[] = {
        {"a", LSS_DRV_STR, &A.a, 0, 0, 1, "maps of the set under test (e.g. generated), >= 2 maps"},
        {"b", LSS_DRV_STR, &A.b, 0, 0, 1, "reference maps (e.g. simulated), >= 4 maps of the same size"},
        O_CHANNEL, O_FIELD, O_PIX, O_SMOOTH,
        {"edges", LSS_DRV_STR, &A.edges, 0, 0, 0, "ell bins lo,hi,n, linear (default: 8 log bins, fundamental to Nyquist)"},
        {"edges-log", LSS_DRV_STR, &A.edges_log, 0, 0, 0, "ell bins lo,hi,n, log-spaced"},
        {"thresholds", LSS_DRV_STR, &A.thr, 0, 0, 0, "peak/Minkowski thresholds lo,hi,n in units of b's pixel std (default -2,4,12)"},
        {"ps-mode", LSS_DRV_STR, &A.ps_mode, 0, 0, 0, "section or lenstools"},
        {"peaks", LSS_DRV_STR, &A.peaks, 0, 0, 0, "lenstools or 5x5"},
        {"fold-ratio", LSS_DRV_DOUBLE, &A.fold_ratio, 0, 0.999999, 0, "folded bispectrum ratio in (0, 1) (0: 0.5)"},
        {"ssim-pairs", LSS_DRV_INT, &A.ssim_pairs, -1, 1000000, 0, "within-set pairs for the SSIM significance (-1: skip SSIM)"},
        {"seed", LSS_DRV_U64, &A.seed, 0, 0, 0, "seed of the SSIM pair draws"},
        {"out", LSS_DRV_STR, &A.out, 0, 0, 1, "output directory: compare.csv, compare.png, run.json"},
        O_END};
    const lss_drv_cmd top = {"lss-stats", "lss-stats SUBCOMMAND [options] (lss-stats SUBCOMMAND --help)",
                             "Statistics of maps in NPY files, and two-set comparisons (the validation suite of generative emulators).",
                             "lss-stats ps --maps out/sim/maps.npy --channel 0 --field-deg 5 --out ps.csv"};
    char ps_about[3000];
    lss_drv_cmd ps_cmd = {"lss-stats ps", "lss-stats ps --maps M.npy --out PS.csv [options]", ps_about,
                          "lss-stats ps --maps maps.npy --field-deg 5 --edges-log 100,3000,10 --ps-mode lenstools --out ps.csv"};
    const lss_drv_cmd bisp_cmd = {"lss-stats bispectrum", "lss-stats bispectrum --maps M.npy --out B.csv [options]",
        "Bispectrum of square maps, LensTools 1.2 ConvergenceMap.bispectrum: for every rfft2 cell k1 with ell1 in a bin,\n"
        "k2 = the 120-degree rotation of k1 (equilateral) or -ratio k1 (folded), k3 = -k1 - k2; value Re(F1 F2 F3) pix^4 /\n"
        "(H W) averaged per bin of ell1 (lo, hi]; empty bins 0; center = bin midpoint. Bins from --edges or --edges-log\n"
        "(default: 8 log bins from the fundamental to the Nyquist multipole).", 
        "lss-stats bispectrum --maps maps.npy --field-deg 3.5 --config folded --fold-ratio 0.5 --edges-log 200,5000,8 --out b.csv"};
    const lss_drv_cmd hist_cmd = {"lss-stats hist", "lss-stats hist --maps M.npy --out H.csv [options]",
        "Pixel histogram (numpy.histogram: bins [lo, hi), the last one closed): counts, or with --density the probability\n"
        "density; with --norm the edges are in units of each map's std (LensTools' ConvergenceMap.pdf with --density).\n"
        "Default bins: -4,4,16 in units of each map's std.",
        "lss-stats hist --maps maps.npy --field-deg 5 --edges -0.05,0.1,30 --density --out hist.csv"};
    const lss_drv_cmd peak_cmd = {"lss-stats peaks", "lss-stats peaks --maps M.npy --out P.csv [options]",
        "Peak counts, LensTools' peakCount: peaks (pixels above their 8 periodic neighbours, or above the other 24 pixels\n"
        "of their 5 x 5 window inside the map with --peaks 5x5) binned by height in [t_b, t_b+1); value = count / (t_b+1 -\n"
        "t_b), a differential count (multiply by the bin width for counts). Thresholds absolute, or in units of each\n"
        "map's std with --norm; without --thresholds: -2,4,12 in units of each map's std.",
        "lss-stats peaks --maps maps.npy --field-deg 5 --smooth-arcmin 2 --thresholds -1,5,12 --norm --out peaks.csv"};
    const lss_drv_cmd mink_cmd = {"lss-stats minkowski", "lss-stats minkowski --maps M.npy --out V.csv [options]",
        "Minkowski functionals, LensTools 1.2 minkowskiFunctionals (periodic finite differences): V0 = area fraction above\n"
        "the bin's midpoint, V1 and V2 = the boundary-length and genus integrands over the pixels in [t_b, t_b+1) per unit\n"
        "threshold. One file: columns bin_lo,bin_hi,center,V0,V1,V2 (and V0_std,V1_std,V2_std when N > 1). Thresholds\n"
        "absolute, or in units of each map's std with --norm; without --thresholds: -2,4,12 in units of each map's std.",
        "lss-stats minkowski --maps maps.npy --field-deg 5 --smooth-arcmin 2 --thresholds -2,3,10 --norm --out mink.csv"};
    const lss_drv_cmd cmp_cmd = {"lss-stats compare", "lss-stats compare --a A.npy --b B.npy --out DIR [options]",
        "Two-set comparison of the validation suite (lss_stat_compare): a (e.g. generated) against the reference b.\n"
        "DIR/compare.csv has columns statistic,value,scatter: w1_pixels and w1_peaks (Wasserstein-1 of pixel and peak\n"
        "values standardised by b's pixel mean and std; scatter = the same W1 between the two halves of b),\n"
        "ps_rel_<k>, bisp_rel_<k> (folded, square maps), mink_v<j>_rel_<k> ((mean_a - mean_b) / |mean_b| per bin;\n"
        "scatter = std_b / |mean_b|, the band of one map of b: divide by sqrt(N) for the scatter of a mean), corr_frac\n"
        "(eq. 3 of the power-spectrum correlation matrices; scatter = the same between b's halves) and ssim_significance\n"
        "(eq. 4; scatter 1). DIR/compare.png: mean power spectrum, peak counts, pixel PDF and V0, V1, V2 of both sets,\n"
        "each as the mean and mean +- 1 std lines over its maps (the plotting helpers draw lines, not filled bands).\n"
        "DIR/run.json records the run. Both sets must have the same map size; every pixel finite.",
        "lss-stats compare --a gen.npy --b sim.npy --field-deg 3.5 --smooth-arcmin 1 --out out/compare"};
    snprintf(ps_about, sizeof ps_about,
             "Power spectrum C_ell of maps (flat sky, ell = 2 pi |k|). --ps-mode section: every mode of the full Fourier\n"
             "plane with lo <= ell < hi, value = mean of pix^2 |F|^2 / (H W), center = mean ell of the bin's modes, empty\n"
             "bins nan. --ps-mode lenstools: LensTools 1.2 powerSpectrum (rfft2 half plane, lo < ell <= hi, center = bin\n"
             "midpoint, empty bins 0). Bins from --edges or --edges-log, else the log bins of --lmin/--lmax/--nbins\n"
             "(DeepLSS: 20 over 36..4536).\n%s\n"
             "A [N, C, H, W] stack without --channel (the lss-sim maps) gives the channel table instead: one row per bin,\n"
             "ell (mean ell of the bin's modes), nmodes, the mean over maps of each channel pair (autos, or with --cross all\n"
             "pairs i <= j; kg1..kg4, dg1..dg4 for 8-channel maps, c0, c1, ... otherwise), then their standard errors\n"
             "(columns NAME_se, ddof 1); section binning only.", csv_about);
    lss_drv_prog = "lss-stats";
    st_argc = argc;
    st_argv = argv;
    if (argc < 2) lss_drv_die(2, "expected a subcommand: ps, bispectrum, hist, peaks, minkowski, moments or compare (see --help)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: %s\n%s\n%s\n", top.usage, top.about, cmds_about);
        printf("example: %s\n", top.example);
        return 0;
    }
    if (!strcmp(argv[1], "ps")) return st_per_map(ST_PS, &ps_cmd, ps_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "bispectrum")) return st_per_map(ST_BISP, &bisp_cmd, bisp_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "hist")) return st_per_map(ST_HIST, &hist_cmd, hist_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "peaks")) return st_per_map(ST_PEAKS, &peak_cmd, peak_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "minkowski")) return st_per_map(ST_MINK, &mink_cmd, mink_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "compare")) return st_compare(&cmp_cmd, cmp_opts, argc - 1, argv + 1);
    if (!strcmp(argv[1], "moments")) return st_moments(argc - 1, argv + 1);
    lss_drv_die(2, "unknown subcommand '%s' (ps, bispectrum, hist, peaks, minkowski, moments, compare; see --help)", argv[1]);
    return 2;
}
