/* massmap - weak-lensing mass mapping: Kaiser-Squires, Wiener filter, mock COSMOS-like data,
 * catalogue binning, posterior sampling (annealed HMC + probability-flow ODE), the Table 1
 * comparison and cluster detection (Remy et al. 2022). Wiring only: the methods live in
 * lss_massmap.h. See `massmap --help`. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "drivers/lss_driver.h"
static const char *usage_main =
    "usage: massmap COMMAND [options]   (massmap COMMAND --help for each)\n"
    "commands:\n"
    "  ks       Kaiser-Squires (E and B) with optional Gaussian smoothing\n"
    "  wiener   Wiener filter (MAP under the Gaussian prior) with mask and per-pixel noise\n"
    "  mock     COSMOS-like mock fields: convergence, noisy masked shear, noise map, C_kk table\n"
    "  bin      bin a shear catalogue (CSV, NPY or FITS table) into shear and noise-variance maps\n"
    "  train-prior  train the U-net score residual (denoising score matching) or the DeepMass baseline\n"
    "  sample   posterior samples, mean and standard deviation (annealed HMC + ODE)\n"
    "  eval     Table 1 comparison (KS, Wiener, posterior mean) on mock fields, figures 6 and 7\n"
    "  detect   NFW cluster detection rate against SNR with the starlet aperture filter (figure 9)\n"
    "Maps are NPY arrays [H, W] indexed [y, x]; shear maps [2, H, W] (gamma1, gamma2). Inputs and outputs named\n"
    "*.fits (.fit, .fts, .fits.gz) are FITS images (a shear file: a cube of 2 planes, or 2K for K fields).\n"
    "example: massmap mock --scale small --out out/mm && massmap eval --mock out/mm --out out/mm/eval\n";

#define PNG_SIZE 512 /* target size of map pictures, pixels */
static void *xcalloc(int64_t n, size_t sz) {
    void *p = calloc((size_t)(n > 0 ? n : 1), sz);
    return p ? p : (lss_drv_die(1, "out of memory"), NULL);
}
static int png_scale(int h, int w) { return PNG_SIZE / (h > w ? h : w) > 1 ? PNG_SIZE / (h > w ? h : w) : 1; }
static double out_pix = 0; /* pixel size (arcmin) recorded in FITS outputs (PIXSCALE; 0: none) */
/* A map or stack: FITS when the name says so (lss_mm_fits_path), else NPY. */
static void save_map(const char *dir, const char *name, int nd, const int64_t *sh, const float *d) {
    char p[4096];
    snprintf(p, sizeof p, "%s%s%s", dir ? dir : "", dir ? "/" : "", name);
    if (!lss_mm_fits_path(p)) lss_drv_check(lss_npy_save(p, LSS_F32, nd, sh, d), p);
    else if (nd != 2 && (nd != 3 || sh[0] > 65536)) lss_drv_die(2, "%s: FITS outputs hold maps or at most 65536 planes (use .npy)", p);
    else lss_drv_check(lss_mm_fits_write_image(p, d, nd == 3 ? (int)sh[0] : 1, (int)sh[nd - 2], (int)sh[nd - 1], out_pix), p);
}
static void save_png(const char *dir, const char *name, const float *m, int h, int w, const char *title, double lo, double hi) {
    char p[4096];
    snprintf(p, sizeof p, "%s%s%s", dir ? dir : "", dir ? "/" : "", name);
    lss_drv_check(lss_png_map(p, m, h, w, lo, hi, title, png_scale(h, w)), p);
}
static const char *jnum(char *b, double x, const char *fmt, const char *nan) { /* x in fmt, nan when not finite */
    return isfinite(x) ? (snprintf(b, 32, fmt, x), b) : nan;
}

/* Shear [2, H, W] or field `field` of [K, 2, H, W] into g1, g2 (one allocation: g2 = g1 + H W; LSS_FREE). */
static float *load_shear(const char *path, int field, int *h, int *w) {
    float *g;
    lss_drv_check(lss_mm_shear_load(path, field, &g, h, w), path);
    return g;
}

/* --pixel-arcmin 0: the pixel size in the header of a FITS shear file (PIXSCALE or WCS), else the COSMOS mock's. */
static double pixel_size(double pix, const char *shear) {
    double p = NAN;
    float *m;
    int h, w, k;
    if (pix > 0) return out_pix = pix;
    if (lss_mm_fits_path(shear)) lss_drv_check(lss_mm_fits_read_image(shear, 0, &m, &h, &w, &k, &p), shear), LSS_FREE(m);
    return out_pix = isfinite(p) ? p : LSS_MM_COSMOS_PIX_ARCMIN;
}
#define OPT_PIX(v) {"pixel-arcmin", LSS_DRV_DOUBLE, &v, 0, 1e4, 0, "pixel size (arcmin; 0: PIXSCALE of a FITS shear file, else 0.29)"}
/* The inputs of wiener and sample: shear, noise map (NPY or FITS [H, W]), spectrum table; the grid and its spectrum. */
typedef struct {
    int h, w;
    int64_t np;
    float *g, *nv;
    double *pk;
    lss_grid *grid;
} data_in;
static void load_data(const char *shear, int field, const char *nvp, const char *psp, double pix, data_in *d) {
    lss_csv c;
    int hn, ce, cc;
    int64_t sh[LSS_MAX_DIM];
    double *ell, *cl;
    d->g = load_shear(shear, field, &d->h, &d->w);
    d->np = (int64_t)d->h * d->w;
    if (lss_mm_fits_path(nvp)) lss_drv_check(lss_mm_fits_read_image(nvp, 0, &d->nv, &ce, &cc, &hn, NULL), nvp), sh[0] = ce, sh[1] = cc, hn = hn == 1 ? 2 : 3;
    else lss_drv_check(lss_npy_load_f32(nvp, &d->nv, &hn, sh), nvp);
    if (hn != 2 || sh[0] != d->h || sh[1] != d->w) lss_drv_die(2, "%s: the noise map must be [%d, %d] as the shear", nvp, d->h, d->w);
    lss_drv_check(lss_csv_read(psp, &c), psp);
    if ((ce = lss_csv_col(&c, "ell")) < 0 || (cc = lss_csv_col(&c, "cl")) < 0 || c.nrows < 2) lss_drv_die(2, "%s: needs columns ell and cl, 2 rows or more", psp);
    ell = (double *)xcalloc(c.nrows, sizeof(double));
    cl = (double *)xcalloc(c.nrows, sizeof(double));
    for (int64_t i = 0; i < c.nrows; i++) ell[i] = c.data[i * c.ncols + ce], cl[i] = c.data[i * c.ncols + cc];
    lss_drv_check(lss_grid_create(d->h, d->w, pixel_size(pix, shear), &d->grid), "grid");
    d->pk = (double *)xcalloc(d->np, sizeof(double));
    lss_drv_check(lss_grid_spectrum(d->grid, ell, cl, (int)c.nrows, d->pk), psp);
    free(ell); free(cl); lss_csv_free(&c);
}
static void free_data(data_in *d) {
    lss_grid_free(d->grid), LSS_FREE(d->g), free(d->pk), LSS_FREE(d->nv);
}

static lss_mm_mock *open_mock(const char *dir) {
    lss_mm_mock *m;
    lss_drv_check(lss_mm_mock_load(dir, &m), dir);
    return m;
}
static lss_mm_net *open_net(const char *path, lss_grid **g, double **pk, const lss_mm_mock *m, int deepmass) {
    lss_mm_net *n;
    if (!*g) lss_drv_check(lss_mm_mock_grid(m, 1, g, pk), "grid");
    lss_drv_check(lss_mm_net_open(path, *g, *pk, deepmass, &n), path);
    return n;
}
/* --schedule and --scale of the sampling commands */
static void sampling_setup(const char *sched, const char *scale, int *nsamp, int *batch, lss_mm_sample_opts *so) {
    lss_mm_schedule s;
    lss_drv_check(lss_mm_schedule_parse(sched, &s), "option --schedule");
    lss_drv_check(lss_mm_sample_preset(s, so), "schedule");
    if (!scale) return;
    if (!strcmp(scale, "small")) *nsamp = 16, *batch = 16;
    else if (!strcmp(scale, "paper")) *nsamp = 400, *batch = 50;
    else lss_drv_die(2, "option --scale: '%s' is not small or paper", scale);
}
static void progress_cb(void *u, double frac) { lss_drv_progress_update((lss_drv_progress *)u, (int64_t)(1000 * frac)); }

#define OPT_SEED(v) {"seed", LSS_DRV_U64, &v, 0, 0, 0, "random seed"}
#define OPT_END {NULL, LSS_DRV_STR, NULL, 0, 0, 0, NULL}
/* ---------------------------------------------------------------- ks */
static int cmd_ks(int argc, char **argv) {
    const char *shear = NULL, *out = NULL, *png = NULL;
    double smooth = 0, pix = 0;
    int field = 0, h, w;
    lss_drv_opt opts[] = {{"shear", LSS_DRV_STR, &shear, 0, 0, 1, "shear [2, H, W] or [K, 2, H, W] (NPY or FITS)"},
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output [2, H, W] (E, B): NPY, or FITS by its name"},
                          {"smooth-arcmin", LSS_DRV_DOUBLE, &smooth, 0, 1e4, 0, "Gaussian smoothing (arcmin)"}, OPT_PIX(pix),
                          {"field", LSS_DRV_INT, &field, 0, 1 << 30, 0, "field of a [K, 2, H, W] stack"}, {"png", LSS_DRV_STR, &png, 0, 0, 0, "picture of the E map"}, OPT_END};
    lss_drv_cmd cmd = {"massmap ks", "massmap ks --shear S.npy --out K.npy [options]", "Kaiser-Squires (eqs. 5-7) and Gaussian smoothing of both modes.",
                       "massmap ks --shear out/mm/shear.npy --out ks.npy --smooth-arcmin 1"};
    lss_grid *g;
    lss_drv_parse(&cmd, opts, argc, argv), lss_drv_outputs_files(out, png);
    float *s = load_shear(shear, field, &h, &w), *k = (float *)xcalloc(2 * (int64_t)h * w, sizeof(float));
    int64_t sh[3] = {2, h, w};
    lss_drv_check(lss_grid_create(h, w, pixel_size(pix, shear), &g), "grid");
    lss_drv_check(lss_mm_ks(g, s, s + (int64_t)h * w, smooth, k, k + (int64_t)h * w), "ks");
    save_map(NULL, out, 3, sh, k);
    if (png) save_png(NULL, png, k, h, w, "Kaiser-Squires E", 0, 0);
    lss_drv_outputs_done(argc, argv, 0, NULL), fprintf(stderr, "massmap ks: wrote %s ([2, %d, %d], smoothing %g arcmin)\n", out, h, w, smooth);
    lss_grid_free(g); LSS_FREE(s); free(k);
    return 0;
}
/* ---------------------------------------------------------------- wiener */
static int cmd_wiener(int argc, char **argv) {
    const char *shear = NULL, *nvp = NULL, *psp = NULL, *out = NULL, *png = NULL;
    double pix = 0, rel, tol = 1e-8;
    int field = 0, it, nsamp = 0, maxit = 5000;
    uint64_t seed = 1;
    lss_drv_opt opts[] = {{"shear", LSS_DRV_STR, &shear, 0, 0, 1, "shear [2, H, W] or [K, 2, H, W]"},
                          {"noise-var", LSS_DRV_STR, &nvp, 0, 0, 1, "noise variance per pixel [H, W] (1e10 where masked; NPY or FITS)"},
                          {"ps", LSS_DRV_STR, &psp, 0, 0, 1, "convergence spectrum CSV (columns ell, cl)"}, OPT_PIX(pix),
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output [H, W], or [1 + M, H, W] with samples (NPY, or FITS by its name)"},
                          {"field", LSS_DRV_INT, &field, 0, 1 << 30, 0, "field of a stack"}, {"tol", LSS_DRV_DOUBLE, &tol, 1e-14, 0.5, 0, "relative residual of the solve"},
                          {"max-iter", LSS_DRV_INT, &maxit, 1, 1000000, 0, "iterations at most"},
                          {"samples", LSS_DRV_INT, &nsamp, 0, 100000, 0, "constrained realisations after the Wiener map"},
                          OPT_SEED(seed), {"png", LSS_DRV_STR, &png, 0, 0, 0, "picture of the Wiener map"}, OPT_END};
    lss_drv_cmd cmd = {"massmap wiener", "massmap wiener --shear S.npy --noise-var N.npy --ps PS.csv --out K.npy [options]",
                       "Wiener filter (MAP of eq. 13) by preconditioned conjugate gradients; --samples M adds M constrained realisations.",
                       "massmap wiener --shear out/mm/shear.npy --noise-var out/mm/noise_var.npy --ps out/mm/ps.csv --out wf.npy"};
    lss_mm_wiener_opts wo = {0};
    data_in d;
    lss_drv_parse(&cmd, opts, argc, argv), lss_drv_outputs_files(out, png);
    wo.tol = tol;
    wo.max_iter = maxit;
    load_data(shear, field, nvp, psp, pix, &d);
    float *k = (float *)xcalloc((int64_t)(1 + nsamp) * d.np, sizeof(float));
    lss_drv_check(lss_mm_wiener(d.grid, d.pk, d.g, d.g + d.np, d.nv, &wo, k, &it, &rel), "wiener");
    for (int s = 0; s < nsamp; s++)
        lss_drv_check(lss_mm_wiener_sample(d.grid, d.pk, d.g, d.g + d.np, d.nv, &wo, seed, (uint64_t)s, k + (int64_t)(1 + s) * d.np), "wiener sample");
    int64_t sh[3] = {1 + nsamp, d.h, d.w};
    save_map(NULL, out, nsamp ? 3 : 2, nsamp ? sh : sh + 1, k);
    if (png) save_png(NULL, png, k, d.h, d.w, "Wiener filter", 0, 0);
    lss_drv_outputs_done(argc, argv, 0, NULL), fprintf(stderr, "massmap wiener: %d iterations, relative residual %.2e; wrote %s\n", it, rel, out);
    free_data(&d);
    free(k);
    return 0;
}
/* ---------------------------------------------------------------- mock */
static int cmd_mock(int argc, char **argv) {
    const char *out = NULL, *scale = NULL, *model = "lognormal";
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *m;
    double shift = -1;
    mo.size = 64, mo.nfields = 4, mo.pad = 2, mo.pix_arcmin = LSS_MM_COSMOS_PIX_ARCMIN, mo.seed = 1;
    lss_drv_opt opts[] = {{"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"},
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small (64 x 64, 4 fields) or paper (360 x 360, 16 fields)"},
                          {"size", LSS_DRV_INT, &mo.size, 8, 4096, 0, "N x N pixels"}, {"pixel-arcmin", LSS_DRV_DOUBLE, &mo.pix_arcmin, 1e-3, 60, 0, "pixel size (arcmin)"},
                          {"nfields", LSS_DRV_INT, &mo.nfields, 1, 100000, 0, "fields"}, OPT_SEED(mo.seed),
                          {"shift", LSS_DRV_DOUBLE, &shift, -1, 10, 0, "lognormal shift (-1: the n(z)'s empty-beam convergence)"},
                          {"gaussian", LSS_DRV_FLAG, &mo.gaussian, 0, 0, 0, "Gaussian fields"},
                          {"pad", LSS_DRV_INT, &mo.pad, 1, 8, 0, "fields cut out of a grid pad times larger"},
                          {"ngal", LSS_DRV_DOUBLE, &mo.survey.ngal_arcmin2, 0, 1e4, 0, "galaxies per arcmin^2 (0: 71.7)"},
                          {"sigma-e", LSS_DRV_DOUBLE, &mo.survey.sigma_e, 0, 10, 0, "shape noise (0: 0.305)"},
                          {"observed", LSS_DRV_DOUBLE, &mo.survey.observed, 0, 1, 0, "observed fraction (0: 0.534)"},
                          {"no-mask", LSS_DRV_FLAG, &mo.survey.no_mask, 0, 0, 0, "every pixel observed"},
                          {"catalogue", LSS_DRV_FLAG, &mo.catalogue, 0, 0, 0, "also catalogue.csv (galaxies of field 0)"},
                          {"model", LSS_DRV_STR, &model, 0, 0, 0, "lognormal, or halo (halos + smooth part, lss_mm_halo_field)"}, OPT_END};
    lss_drv_cmd cmd = {"massmap mock", "massmap mock --out DIR [options]",
                       "COSMOS-like mocks (lss_mm_mock_create): shifted lognormal (or, --model halo, halo-model) convergence with the Halofit C_kk of the COSMOS n(z)\n"
                       "(Planck 2015), an irregular mask, Poisson galaxy counts, shape noise, the noisy masked shear. Writes kappa.npy,\n"
                       "shear.npy, noise_var.npy, mask.npy, count.npy, ps.csv, grid.csv, PNGs, run.json (and catalogue.csv).",
                       "massmap mock --scale small --out out/mm"};
    for (int i = 1; i + 1 < argc; i++) /* --scale sets defaults that explicit options then override */
        if (!strcmp(argv[i], "--scale")) {
            if (!strcmp(argv[i + 1], "paper")) mo.size = LSS_MM_COSMOS_NPIX, mo.nfields = 16;
            else if (strcmp(argv[i + 1], "small")) lss_drv_die(2, "option --scale: '%s' is not small or paper", argv[i + 1]);
        }
    lss_drv_parse(&cmd, opts, argc, argv);
    if (mo.survey.observed != 0 && !(mo.survey.observed > 0.05)) lss_drv_die(2, "option --observed: %g must be in (0.05, 1]", mo.survey.observed);
    if (strcmp(model, "lognormal") && strcmp(model, "halo")) lss_drv_die(2, "option --model: '%s' is not lognormal or halo", model);
    mo.model = strcmp(model, "halo") ? LSS_MM_MODEL_LOGNORMAL : LSS_MM_MODEL_HALO;
    mo.shift = shift < 0 ? 0 : shift;
    if (shift == 0) mo.gaussian = 1;
    lss_drv_outputs_begin(out, 1);
    lss_drv_check(lss_mm_mock_create(&mo, &m), "mock");
    lss_drv_check(lss_mm_mock_save(m, out), out);
    int n = m->h;
    int64_t np = (int64_t)n * n, nobs = 0;
    save_png(out, "kappa0.png", m->kappa, n, n, "convergence (field 0)", 0, 0);
    save_png(out, "mask.png", m->mask, n, n, "mask", 0, 1);
    lss_grid *g;
    float *ks = (float *)xcalloc(np, sizeof(float));
    lss_drv_check(lss_grid_create(n, n, m->pix_arcmin, &g), "grid"), lss_drv_check(lss_mm_ks(g, m->shear, m->shear + np, 1.0, ks, NULL), "ks");
    save_png(out, "ks0.png", ks, n, n, "KS, 1 arcmin (field 0)", 0, 0), lss_grid_free(g), free(ks);
    for (int64_t i = 0; i < np; i++) nobs += m->mask[i] > 0;
    char extra[512];
    snprintf(extra, sizeof extra, "\"size\": %d, \"nfields\": %d, \"pixel_arcmin\": %g, \"lognormal_shift\": %g, \"observed_fraction\": %.4f, \"data_set\": \"test\", \"model\": \"%s\"",
             n, m->nfields, m->pix_arcmin, m->shift, (double)nobs / np, model);
    lss_drv_outputs_done(argc, argv, mo.seed, extra);
    fprintf(stderr, "massmap mock: %d fields of %d x %d (%.1f%% observed, shift %.4f) in %s\n", m->nfields, n, n, 100.0 * nobs / np, m->shift, out);
    lss_mm_mock_free(m);
    return 0;
}
/* ---------------------------------------------------------------- bin */
static int cmd_bin(int argc, char **argv) {
    const char *cp = NULL, *out = NULL, *centre = NULL;
    lss_mm_bin_opts bo = {0};
    lss_mm_catalogue cat;
    lss_mm_sky k;
    int radec = 0, size = 0, h, w, fits = 0;
    int64_t drop;
    double se, *c2;
    bo.e2_sign = 1;
    lss_drv_opt opts[] = {{"catalogue", LSS_DRV_STR, &cp, 0, 0, 1, "CSV (x,y or ra,dec, e1, e2[, w]), NPY [n, 4|5] or FITS table"},
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"}, {"size", LSS_DRV_INT, &size, 0, 8192, 0, "N x N grid (0: the bounding box)"},
                          {"pixel-arcmin", LSS_DRV_DOUBLE, &bo.pix_arcmin, 0, 600, 0, "pixel for ra/dec input (0: 0.29)"},
                          {"sigma-e", LSS_DRV_DOUBLE, &bo.sigma_e, 0, 10, 0, "shape noise (0: estimated)"},
                          {"radec", LSS_DRV_FLAG, &radec, 0, 0, 0, "NPY columns are ra, dec"},
                          {"centre", LSS_DRV_STR, &centre, 0, 0, 0, "RA,DEC of the tangent point, degrees (default: mean direction)"},
                          {"flip-ra", LSS_DRV_FLAG, &bo.flip_ra, 0, 0, 0, "x increases to the east (RA to the right; e2 kept)"},
                          {"e2-sign", LSS_DRV_INT, &bo.e2_sign, -1, 1, 0, "-1: negate the catalogue's e2 first (other handedness)"},
                          {"fits", LSS_DRV_FLAG, &fits, 0, 0, 0, "also shear.fits, noise_var.fits, count.fits"}, OPT_END};
    lss_drv_cmd cmd = {"massmap bin", "massmap bin --catalogue CAT --out DIR [options]",
                       "Bins a shear catalogue: shear.npy [2, H, W], noise_var.npy (sigma_e^2 sum w^2/(sum w)^2, 1e10 where empty),\n"
                       "count.npy, count.png, run.json. Maps are [y, x]. ra/dec (degrees): gnomonic projection about the tangent point,\n"
                       "y to the north, x to the WEST (east left, the sky as seen; --flip-ra: x to the east). e1, e2 are expected in\n"
                       "the sky frame: +e1 along RA, +e2 along the north-east diagonal (angles from east towards north); they are\n"
                       "rotated to the local tangent-plane axes and e2 changes sign on the west-pointing grid. Catalogues whose e2 has\n"
                       "the other handedness: --e2-sign -1. The frame (centre, pixel, orientation, reference pixel) goes to run.json.",
                       "massmap bin --catalogue out/mm/catalogue.csv --size 64 --out out/mm/binned"};
    lss_drv_parse(&cmd, opts, argc, argv);
    if (size == 1) lss_drv_die(2, "option --size: 1 is too small");
    if (bo.e2_sign == 0) lss_drv_die(2, "option --e2-sign: must be 1 or -1");
    if (centre && (lss_drv_list("--centre", centre, &c2) != 2 || !(c2[1] >= -90 && c2[1] <= 90)))
        lss_drv_die(2, "option --centre: '%s' is not RA,DEC in degrees", centre);
    if (centre) bo.set_centre = 1, bo.ra0 = c2[0], bo.dec0 = c2[1], free(c2);
    bo.h = bo.w = size;
    lss_drv_check(lss_mm_catalogue_load(cp, radec, &cat), cp);
    if ((centre || bo.flip_ra) && !cat.radec) lss_drv_die(2, "options --centre and --flip-ra are for ra/dec catalogues");
    lss_drv_check(lss_mm_bin(&cat, &bo, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), "bin");
    int64_t np = (int64_t)h * w, s3[3] = {2, h, w};
    fprintf(stderr, "massmap bin: %lld galaxies on a %d x %d grid: writes %.3g MB (shear.npy, noise_var.npy, count.npy, count.png), "
            "needs %.3g MB of memory\n", (long long)cat.n, h, w, 16e-6 * (double)np + 3e-6 * (double)np, 48e-6 * (double)np);
    lss_drv_outputs_begin(out, 1);
    float *sh = (float *)xcalloc(2 * np, sizeof(float)), *nv = (float *)xcalloc(np, sizeof(float)), *cnt = (float *)xcalloc(np, sizeof(float));
    lss_drv_check(lss_mm_bin(&cat, &bo, &h, &w, sh, sh + np, nv, cnt, &drop, &se), "bin");
    save_map(out, "shear.npy", 3, s3, sh);
    save_map(out, "noise_var.npy", 2, s3 + 1, nv);
    save_map(out, "count.npy", 2, s3 + 1, cnt);
    out_pix = cat.radec ? (bo.pix_arcmin > 0 ? bo.pix_arcmin : LSS_MM_COSMOS_PIX_ARCMIN) : 0; /* pixel catalogues: no sky size */
    if (fits) save_map(out, "shear.fits", 3, s3, sh), save_map(out, "noise_var.fits", 2, s3 + 1, nv), save_map(out, "count.fits", 2, s3 + 1, cnt);
    save_png(out, "count.png", cnt, h, w, "galaxies per pixel", 0, 0);
    char extra[1024], sky[640] = "null";
    if (cat.radec) lss_drv_check(lss_mm_bin_sky(&cat, &bo, &k, &h, &w), "bin"), lss_drv_check(lss_mm_sky_json(&k, bo.e2_sign, sky, sizeof sky), "sky");
    snprintf(extra, sizeof extra, "\"h\": %d, \"w\": %d, \"galaxies\": %lld, \"dropped\": %lld, \"sigma_e\": %.6g, \"sky\": %s", h, w,
             (long long)cat.n, (long long)drop, se, sky);
    lss_drv_outputs_done(argc, argv, 0, extra);
    fprintf(stderr, "massmap bin: %lld galaxies (%lld dropped) on %d x %d, sigma_e %.4f; wrote %s\n", (long long)cat.n, (long long)drop, h, w, se, out);
    free(sh); free(nv); free(cnt); lss_mm_catalogue_free(&cat);
    return 0;
}
/* ---------------------------------------------------------------- sample */
static int cmd_sample(int argc, char **argv) {
    const char *shear = NULL, *nvp = NULL, *psp = NULL, *out = NULL, *sched = "fast", *prior = NULL, *scale = NULL;
    double pix = 0, smin = 0;
    int field = 0, nsamp = 16, batch = 16, fits = 0;
    lss_mm_sample_opts so = {0};
    lss_mm_sample_stats st;
    lss_drv_opt opts[] = {{"shear", LSS_DRV_STR, &shear, 0, 0, 1, "shear [2, H, W] or [K, 2, H, W]"},
                          {"noise-var", LSS_DRV_STR, &nvp, 0, 0, 1, "noise variance per pixel [H, W] (NPY or FITS)"},
                          {"ps", LSS_DRV_STR, &psp, 0, 0, 1, "convergence spectrum CSV (columns ell, cl)"}, OPT_PIX(pix),
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"}, {"fits", LSS_DRV_FLAG, &fits, 0, 0, 0, "also mean.fits and std.fits"},
                          {"field", LSS_DRV_INT, &field, 0, 1 << 30, 0, "field of a stack"}, {"nsamples", LSS_DRV_INT, &nsamp, 1, 1000000, 0, "posterior samples"},
                          {"batch", LSS_DRV_INT, &batch, 1, 100000, 0, "chains per sampler call"},
                          {"schedule", LSS_DRV_STR, &sched, 0, 0, 0, "fast (validated against the exact Wiener posterior) or paper"},
                          {"sigma-min", LSS_DRV_DOUBLE, &smin, 0, 0.999, 0, "last temperature (0: lss_mm_auto_sigma_min)"},
                          OPT_SEED(so.seed), {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small (16 samples) or paper (400, batches of 50)"},
                          {"prior", LSS_DRV_STR, &prior, 0, 0, 0, "score-residual checkpoint from train-prior"}, OPT_END};
    lss_drv_cmd cmd = {"massmap sample", "massmap sample --shear S.npy --noise-var N.npy --ps PS.csv --out DIR [options]",
                       "Posterior samples (annealed HMC from sigma = 1 to sigma_min, then the probability-flow ODE) under the Gaussian\n"
                       "prior of PS.csv plus the U-net residual of --prior. Writes samples.npy [N, H, W], mean.npy, std.npy, PNGs, run.json\n"
                       "(--fits: mean.fits, std.fits too, with the pixel size as PIXSCALE).",
                       "massmap sample --shear out/mm/shear.npy --noise-var out/mm/noise_var.npy --ps out/mm/ps.csv --out out/mm/post"};
    lss_mm_post *post;
    lss_mm_net *net = NULL;
    lss_drv_progress pr;
    data_in d;
    so.seed = 1;
    lss_drv_parse(&cmd, opts, argc, argv);
    sampling_setup(sched, scale, &nsamp, &batch, &so), lss_drv_outputs_begin(out, 1);
    load_data(shear, field, nvp, psp, pix, &d);
    lss_drv_check(lss_mm_post_create(d.grid, d.pk, d.g, d.g + d.np, d.nv, &post), "posterior");
    if (prior) {
        lss_drv_check(lss_mm_net_open(prior, d.grid, d.pk, 0, &net), prior);
        lss_mm_post_set_residual(post, lss_mm_net_residual, net);
    }
    so.sigma_min = smin > 0 ? smin : lss_mm_auto_sigma_min(d.np, d.nv);
    so.progress = progress_cb;
    so.progress_user = &pr;
    float *smp = (float *)xcalloc(nsamp * d.np, sizeof(float)), *ms = (float *)xcalloc(2 * d.np, sizeof(float));
    lss_drv_progress_init(&pr, "massmap sample", 1000);
    lss_drv_check(lss_mm_sample_batched(post, &so, nsamp, batch, smp, &st), "sampling"), lss_drv_progress_end(&pr);
    lss_drv_check(lss_mm_mean_std(nsamp, d.np, smp, ms, ms + d.np), "mean");
    int64_t s3[3] = {nsamp, d.h, d.w};
    save_map(out, "samples.npy", 3, s3, smp);
    save_map(out, "mean.npy", 2, s3 + 1, ms);
    save_map(out, "std.npy", 2, s3 + 1, ms + d.np);
    if (fits) save_map(out, "mean.fits", 2, s3 + 1, ms), save_map(out, "std.fits", 2, s3 + 1, ms + d.np);
    save_png(out, "mean.png", ms, d.h, d.w, "posterior mean", 0, 0);
    save_png(out, "std.png", ms + d.np, d.h, d.w, "posterior std", 0, 0);
    save_png(out, "sample0.png", smp, d.h, d.w, "posterior sample", 0, 0);
    char extra[512];
    snprintf(extra, sizeof extra, "\"schedule\": \"%s\", \"sigma_min\": %g, \"nsamples\": %d, \"levels\": %lld, \"hmc_steps\": %lld, "
             "\"accept_rate\": %.4f, \"score_evals_per_sample\": %.1f, \"seconds\": %.2f",
             sched, so.sigma_min, nsamp, (long long)st.levels, (long long)st.hmc_steps, st.accept_rate, st.evals_per_chain, st.seconds);
    lss_drv_outputs_done(argc, argv, so.seed, extra);
    fprintf(stderr, "massmap sample: %d samples, %.1f score evaluations each, acceptance %.3f, %.1f s; wrote %s\n", nsamp, st.evals_per_chain,
            st.accept_rate, st.seconds, out);
    lss_mm_post_free(post); lss_mm_net_free(net);
    free_data(&d);
    free(smp); free(ms);
    return 0;
}
/* ---------------------------------------------------------------- eval */
static void eval_progress(void *u, int f, int nf) { (void)u, fprintf(stderr, "massmap eval: field %d/%d\n", f + 1, nf); }
static int cmd_eval(int argc, char **argv) {
    const char *mdir = NULL, *out = NULL, *sched = "fast", *prior = NULL, *dmp = NULL, *scale = NULL;
    lss_mm_eval_opts eo = {0};
    lss_mm_eval_result *R;
    lss_grid *g = NULL;
    double *pk = NULL;
    eo.nsamples = 16, eo.batch = 16, eo.nsims = 32, eo.sample.seed = 1;
    lss_drv_opt opts[] = {{"mock", LSS_DRV_STR, &mdir, 0, 0, 1, "directory of massmap mock"}, {"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"},
                          {"nsamples", LSS_DRV_INT, &eo.nsamples, 2, 1000000, 0, "posterior samples per field"},
                          {"batch", LSS_DRV_INT, &eo.batch, 1, 100000, 0, "chains per sampler call"}, {"schedule", LSS_DRV_STR, &sched, 0, 0, 0, "fast or paper"},
                          {"nfields", LSS_DRV_INT, &eo.nfields, 0, 4000, 0, "fields evaluated (0: all)"},
                          {"nsims", LSS_DRV_INT, &eo.nsims, 2, 100000, 0, "prior simulations for figure 6"}, OPT_SEED(eo.sample.seed),
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small or paper"}, {"prior", LSS_DRV_STR, &prior, 0, 0, 0, "score-residual checkpoint"},
                          {"deepmass", LSS_DRV_STR, &dmp, 0, 0, 0, "DeepMass checkpoint"},
                          {"exact", LSS_DRV_INT, &eo.exact, 0, 1000000, 0, "iterations per chain of the exact lognormal posterior (0: none; lognormal mocks)"},
                          OPT_END};
    lss_drv_cmd cmd = {"massmap eval", "massmap eval --mock DIR --out DIR [options]",
                       "Table 1 on the fields of a mock (lss_mm_eval): KS at the best scanned smoothing, Wiener, posterior mean, DeepMass;\n"
                       "RMSE and Pearson r over observed pixels, paired against the Wiener filter on the same fields; the posterior\n"
                       "mean's RMSE with the Monte Carlo term of its samples removed; with --prior, the Gaussian-prior posterior from the\n"
                       "same chains as a control; with --exact N, the exact posterior mean of the lognormal mock's own model (HMC in its\n"
                       "generator's white noise, 4 chains of N iterations after 300 of burn-in): the ceiling of any prior. Writes\n"
                       "table1.csv (method 0 KS, 1 Wiener, 2 posterior mean, 3 DeepMass, 4 control, 5 exact),\n"
                       "fields.csv, spectra.csv and spectra.png (figure 6), figure7.png and run.json.",
                       "massmap eval --mock out/mm --out out/mm/eval"};
    lss_drv_parse(&cmd, opts, argc, argv);
    sampling_setup(sched, scale, &eo.nsamples, &eo.batch, &eo.sample);
    lss_mm_mock *m = open_mock(mdir);
    if (prior) eo.prior = open_net(prior, &g, &pk, m, 0);
    if (dmp) eo.deepmass = open_net(dmp, &g, &pk, m, 1);
    eo.progress = eval_progress;
    lss_drv_outputs_begin(out, 1);
    lss_drv_check(lss_mm_eval(m, &eo, &R), "eval");
    lss_drv_check(lss_mm_eval_save(R, out), out);
    int nf = R->nfields, nb = R->nbins;
    char j1[32], j2[32], j3[32], j4[32], j5[32];
    static const char *mname[LSS_MM_NMETHODS] = {"KS", "Wiener", "posterior mean", "DeepMass", "Gaussian control", "exact posterior"};
    fprintf(stderr, "Table 1 (%d fields of %d x %d, %d samples each; posterior: %s prior):\n", nf, R->h, R->w, R->nsamples, prior ? "Gaussian + U-net residual" : "Gaussian");
    for (int k = 0; k < LSS_MM_NMETHODS; k++) /* one field: no scatter over fields, n/a */
        if (R->ran[k])
            fprintf(stderr, "  %-16s RMSE %.4e (std %s; - Wiener %s +- %s)  r %.3f (std %s)\n", mname[k], R->mean_rmse[k],
                    jnum(j1, R->std_rmse[k], "%.2e", "n/a"), jnum(j3, R->diff_rmse[k], "%+.2e", "n/a"), jnum(j4, R->se_diff_rmse[k], "%.1e", "n/a"),
                    R->mean_r[k], jnum(j2, R->std_r[k], "%.3f", "n/a"));
    fprintf(stderr, "  (posterior rows: the Monte Carlo term of %d samples removed; measured %.4e)\n", R->nsamples, R->mean_rmse_raw[2]);
    if (R->ran[5])
        fprintf(stderr, "  (exact posterior: acceptance %.2f, step %.3f, Monte Carlo rms %.2e removed, %.0f s)\n", R->exact_cost.accept,
                R->exact_cost.step, sqrt(R->exact_cost.mc_var), R->exact_cost.seconds);
    fprintf(stderr, "figure 6: posterior samples' mean C_ell within 1 sigma of the simulations in %d of %d ell bins\n", R->bins_within_1sigma, nb);
    char extra[2048];
    snprintf(extra, sizeof extra,
             "\"fields\": %d, \"nsamples\": %d, \"schedule\": \"%s\", \"sigma_min\": %g, \"ks_smoothing_arcmin\": %g, \"ks_rmse\": %.6g, \"ks_r\": %.5f, "
             "\"wiener_rmse\": %.6g, \"wiener_r\": %.5f, \"post_rmse\": %.6g, \"post_r\": %.5f, \"score_evals_per_sample\": %.1f, "
             "\"sampling_seconds\": %.2f, \"spectrum_bins_within_1sigma\": %d, \"neural_prior\": %d, \"deepmass_rmse\": %.6g, \"deepmass_r\": %.5f, "
             "\"post_rmse_measured\": %.6g, \"post_minus_wiener_rmse\": %.6g, \"post_minus_wiener_rmse_se\": %s, \"gauss_control_rmse\": %s, "
             "\"exact_rmse\": %s, \"exact_minus_wiener_rmse\": %s, \"exact_minus_wiener_rmse_se\": %s",
             nf, R->nsamples, sched, R->sigma_min, R->ks_smoothing, R->mean_rmse[0], R->mean_r[0], R->mean_rmse[1], R->mean_r[1], R->mean_rmse[2],
             R->mean_r[2], R->cost.evals_per_chain, R->cost.seconds, R->bins_within_1sigma, prior != NULL, dmp ? R->mean_rmse[3] : 0.0,
             dmp ? R->mean_r[3] : 0.0, R->mean_rmse_raw[2], R->diff_rmse[2], jnum(j1, R->se_diff_rmse[2], "%.4g", "null"),
             jnum(j2, R->ran[4] ? R->mean_rmse[4] : NAN, "%.6g", "null"), jnum(j3, R->ran[5] ? R->mean_rmse[5] : NAN, "%.6g", "null"),
             jnum(j4, R->ran[5] ? R->diff_rmse[5] : NAN, "%.6g", "null"), jnum(j5, R->ran[5] ? R->se_diff_rmse[5] : NAN, "%.4g", "null"));
    lss_drv_outputs_done(argc, argv, eo.sample.seed, extra);
    lss_mm_eval_free(R); lss_mm_net_free(eo.prior); lss_mm_net_free(eo.deepmass); lss_grid_free(g); LSS_FREE(pk); lss_mm_mock_free(m);
    return 0;
}
/* ---------------------------------------------------------------- train-prior */
static void train_cb(void *u, int step, double loss) { (void)loss, lss_drv_progress_update((lss_drv_progress *)u, step); }
static int cmd_train(int argc, char **argv) {
    const char *mdir = NULL, *out = NULL, *scale = NULL, *csv = NULL;
    lss_mm_net_opts no = {16, 0, 1};
    lss_mm_train_opts to = {0};
    lss_mm_train_result tr;
    int nospec = 0, bank = -1;
    to.steps = 300, to.batch = 8, to.lr = 1e-3, to.s = 0.2;
    lss_drv_opt opts[] = {{"mock", LSS_DRV_STR, &mdir, 0, 0, 1, "directory of massmap mock (ps.csv, grid.csv, noise_var.npy)"},
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"}, {"steps", LSS_DRV_INT, &to.steps, 1, 100000000, 0, "optimizer steps"},
                          {"batch", LSS_DRV_INT, &to.batch, 1, 4096, 0, "maps per step"}, {"c0", LSS_DRV_INT, &no.c0, 1, 512, 0, "U-net width"},
                          {"lr", LSS_DRV_DOUBLE, &to.lr, 1e-12, 0.999, 0, "Adam learning rate"},
                          {"noise-scale", LSS_DRV_DOUBLE, &to.s, 1e-9, 9.999, 0, "DSM noise scale s of the reference's draw sigma = s N(0, 1)"},
                          {"sigma-min", LSS_DRV_DOUBLE, &to.sigma_min, 0, 9.999, 0, "lowest noise level of the log-uniform draw (0: the sampler's, about 3e-3)"},
                          {"sigma-max", LSS_DRV_DOUBLE, &to.sigma_max, 0, 9.999, 0, "highest noise level (0: the sampler's first temperature, 1)"},
                          {"sigma-mix", LSS_DRV_DOUBLE, &to.sigma_mix, -1, 1, 0, "share of each batch drawn log-uniformly (0: 0.5; -1: the reference's draw alone)"},
                          {"bank", LSS_DRV_INT, &bank, -1, 100000000, 0, "training maps drawn once and reused under the square's symmetries (-1: 1024 for halo mocks, none for lognormal ones; 0: none)"},
                          {"deepmass", LSS_DRV_FLAG, &no.deepmass, 0, 0, 0, "train the DeepMass baseline instead"},
                          {"no-spectral", LSS_DRV_FLAG, &nospec, 0, 0, 0, "no spectral-norm projection"}, OPT_SEED(no.seed),
                          {"eval-every", LSS_DRV_INT, &to.eval_every, 0, 100000000, 0, "held-out loss and checkpoint every N steps (0: steps/20)"},
                          {"patience", LSS_DRV_INT, &to.patience, 0, 1000000, 0, "stop after N evaluations without improvement (0: never)"},
                          {"shards", LSS_DRV_INT, &to.shards, 0, 4096, 0, "data-parallel shards of each batch (0: 1, or the ranks under mpirun; the same shards train bitwise the same at any rank count; batch norm per shard)"},
                          {"resume", LSS_DRV_FLAG, &to.resume, 0, 0, 0, "continue from the checkpoint in --out (same options)"},
                          {"loss-csv", LSS_DRV_STR, &csv, 0, 0, 0, "loss table (default: loss.csv next to the checkpoint)"},
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small or paper (45000 steps, batch 32, c0 32, lr 1e-4)"}, OPT_END};
    lss_drv_cmd cmd = {"massmap train-prior", "massmap train-prior --mock DIR --out DIR [options]",
                       "Trains the U-net on maps of the training set (never the mock's fields) drawn on the fly like the mock's: residual\n"
                       "denoising score matching (eq. 24) or, with --deepmass, MSE from KS maps of noisy masked shear. Adam, lr / 10 at 40%\n"
                       "and 80% of the steps. Held-out loss on maps of the validation set. Noise levels: half of each batch log-uniform over\n"
                       "the sampler's range, half the reference's s N(0, 1). Writes prior.ckpt (or deepmass.ckpt: weights, optimizer and\n"
                       "loop state; --resume continues it bit for bit), loss.csv (step, train_loss, valid_loss), run.json and, for the\n"
                       "score prior, heldout_sigma.csv: the held-out DSM loss of the Gaussian score and of the hybrid at 9 noise levels over\n"
                       "the trained range, paired on 128 validation maps, with the standard error of the difference.",
                       "massmap train-prior --mock out/mm --out out/mm/prior --steps 300"};
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--scale") && !strcmp(argv[i + 1], "paper")) to.steps = 45000, to.batch = 32, no.c0 = 32, to.lr = 1e-4;
    lss_drv_parse(&cmd, opts, argc, argv);
    if (scale && strcmp(scale, "small") && strcmp(scale, "paper")) lss_drv_die(2, "option --scale: '%s' is not small or paper", scale);
    if (to.eval_every == 0) to.eval_every = to.steps / 20 > 0 ? to.steps / 20 : 1;
    lss_mm_mock *m = open_mock(mdir);
    lss_grid *g;
    lss_mm_net *net;
    lss_drv_progress pr;
    to.nbank = bank >= 0 ? bank : m->model == LSS_MM_MODEL_HALO ? 1024 : 0;
    char ck[4096], lc[4096], extra[2048], j1[32], j2[32], j3[32];
    snprintf(ck, sizeof ck, "%s/%s", out, no.deepmass ? "deepmass.ckpt" : "prior.ckpt");
    snprintf(lc, sizeof lc, "%s/loss.csv", out);
    to.ckpt = ck, to.loss_csv = csv ? csv : lc, to.no_spectral = nospec, to.seed = no.seed, to.progress = train_cb, to.progress_user = &pr;
    lss_drv_check(lss_grid_create(m->h, m->w, m->pix_arcmin, &g), "grid");
    lss_drv_outputs_begin(out, 0), csv ? lss_drv_out_file(csv) : (void)0;
    lss_drv_progress_init(&pr, no.deepmass ? "massmap train DeepMass" : "massmap train prior", to.steps);
    lss_drv_check(lss_mm_train_on_mock(g, m, &no, &to, &tr, &net), "training");
    lss_drv_progress_end(&pr);
    char hs[1024] = "";
    if (!no.deepmass) { /* held-out DSM loss per noise level: Gaussian score vs hybrid, paired */
        enum { NS = 9 };
        static const char *hdr[6] = {"sigma", "loss_gauss", "loss_hybrid", "difference", "se_difference", "z"};
        double sg[NS], lg[NS], ln[NS], se[NS], tab[NS * 6], lo = to.sigma_min, hi = to.sigma_max;
        int k, below = 0;
        size_t L = 0;
        if (!(hi > 0) || !(lo > 0)) lss_mm_sampler_sigma_range((int64_t)m->h * m->w, m->nvar, &lo, &hi);
        lss_drv_check(lss_mm_sigma_grid(lo, hi, NS, sg), "noise levels");
        lss_drv_check(lss_mm_heldout_sigma_on_mock(net, m, &to, (127 + to.batch) / to.batch, NS, sg, lg, ln, se), "held-out loss per noise level");
        L += (size_t)snprintf(hs, sizeof hs, ", \"training_bank\": %lld, \"sigma_range\": [%.4g, %.4g], \"sigma_mix\": %g, \"heldout_sigma\": [",
                              (long long)to.nbank, lo, hi, to.sigma_mix < 0 ? 0.0 : to.sigma_mix > 0 ? to.sigma_mix : 0.5);
        for (k = 0; k < NS; k++) {
            double r[6] = {sg[k], lg[k], ln[k], ln[k] - lg[k], se[k], se[k] > 0 ? (ln[k] - lg[k]) / se[k] : NAN};
            memcpy(tab + 6 * k, r, sizeof r);
            below += ln[k] < lg[k];
            if (L < sizeof hs) L += (size_t)snprintf(hs + L, sizeof hs - L, "%s[%.4g, %.6g, %.6g, %.3g]", k ? ", " : "", sg[k], lg[k], ln[k], se[k]);
        }
        if (L < sizeof hs) snprintf(hs + L, sizeof hs - L, "], \"heldout_levels_below_gauss\": %d", below);
        snprintf(lc, sizeof lc, "%s/heldout_sigma.csv", out);
        lss_drv_check(lss_csv_write(lc, 6, hdr, NS, tab), lc);
        fprintf(stderr, "massmap train-prior: hybrid below the Gaussian score at %d of %d noise levels (held-out, heldout_sigma.csv)\n", below, NS);
    }
    snprintf(extra, sizeof extra, "\"network\": \"%s\", \"c0\": %d, \"parameters\": %lld, \"steps\": %d, \"steps_done\": %lld, \"skipped\": %lld, "
             "\"stopped_early\": %d, \"batch\": %d, \"lr\": %g, \"noise_scale\": %g, \"spectral_norm\": %d, \"final_loss\": %s, \"valid_loss\": %s, "
             "\"valid_baseline\": %s, \"eval_every\": %d, \"maps\": \"%dx%d\", \"data_set\": \"train\", \"valid_set\": \"valid\"",
             no.deepmass ? "deepmass" : "score", no.c0, (long long)lss_mm_net_nparams(net), to.steps, (long long)tr.loop.steps_done,
             (long long)tr.loop.skipped, tr.loop.stopped_early, to.batch, to.lr, to.s, !nospec, jnum(j1, tr.final_loss, "%.6g", "null"),
             jnum(j2, tr.valid_loss, "%.6g", "null"), jnum(j3, tr.valid_base, "%.6g", "null"), to.eval_every, m->h, m->w);
    if (strlen(extra) + strlen(hs) < sizeof extra) strcat(extra, hs);
    lss_drv_outputs_done(argc, argv, no.seed, extra);
    fprintf(stderr, "massmap train-prior: %lld parameters, %lld steps%s, held-out loss %.4g (%s alone %.4g); wrote %s\n",
            (long long)lss_mm_net_nparams(net), (long long)tr.loop.steps_done, tr.loop.stopped_early ? " (plateau stop)" : "", tr.valid_loss,
            no.deepmass ? "zero map" : "Gaussian prior", tr.valid_base, out);
    lss_mm_net_free(net); lss_grid_free(g); lss_mm_mock_free(m);
    return 0;
}
/* ---------------------------------------------------------------- detect */
static int cmd_detect(int argc, char **argv) {
    const char *mdir = NULL, *out = NULL, *sched = "fast", *ms = "3e14,6e14,9e14", *scale = NULL;
    lss_mm_detect_opts dop = {0};
    lss_mm_detect_result *R;
    double *masses;
    dop.nsamples = 16, dop.batch = 16, dop.threshold = LSS_MM_DETECT_THRESHOLD, dop.sample.seed = 1;
    lss_drv_opt opts[] = {{"mock", LSS_DRV_STR, &mdir, 0, 0, 1, "directory of massmap mock"}, {"out", LSS_DRV_STR, &out, 0, 0, 1, "output directory"},
                          {"masses", LSS_DRV_STR, &ms, 0, 0, 0, "halo masses M200 (Msun), comma-separated"},
                          {"nsamples", LSS_DRV_INT, &dop.nsamples, 2, 1000000, 0, "posterior samples"},
                          {"batch", LSS_DRV_INT, &dop.batch, 1, 100000, 0, "chains per sampler call"},
                          {"theta", LSS_DRV_DOUBLE, &dop.theta_pix, 0, 1e4, 0, "aperture (pixels; 0: 16 or an eighth of the field)"},
                          {"nfields", LSS_DRV_INT, &dop.nfields, 0, 4000, 0, "fields pooled from --field on (0: all, at most 8)"},
                          {"threshold", LSS_DRV_DOUBLE, &dop.threshold, 1e-6, 1e6, 0, "detection level (background std)"},
                          {"field", LSS_DRV_INT, &dop.field, 0, 1 << 30, 0, "mock field"}, {"schedule", LSS_DRV_STR, &sched, 0, 0, 0, "fast or paper"},
                          OPT_SEED(dop.sample.seed), {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small or paper"}, OPT_END};
    lss_drv_cmd cmd = {"massmap detect", "massmap detect --mock DIR --out DIR [options]",
                       "Section 7.3 (lss_mm_detect): NFW halos (c200 = 1, z = 0.5, sources at z = 1) added at the centre of each pooled\n"
                       "field; a posterior sample detects one when its starlet-filtered maximum within theta/2 of the centre exceeds\n"
                       "threshold x the std of the filtered posterior samples of the halo-free fields, pooled. Row 0 (no halo) is the\n"
                       "false-detection rate. Writes detect.csv (first row: no halo), detect.png (figure 9), run.json.",
                       "massmap detect --mock out/mm --out out/mm/detect"};
    lss_drv_parse(&cmd, opts, argc, argv);
    dop.nmasses = lss_drv_list("--masses", ms, &masses);
    dop.masses = masses;
    sampling_setup(sched, scale, &dop.nsamples, &dop.batch, &dop.sample);
    lss_mm_mock *m = open_mock(mdir);
    if (dop.field >= m->nfields) lss_drv_die(2, "option --field: %d outside [0, %d)", dop.field, m->nfields);
    lss_drv_outputs_begin(out, 1);
    lss_drv_check(lss_mm_detect(m, &dop, &R), "detect");
    for (int k = 0; k < R->nrows; k++)
        fprintf(stderr, "  M = %.3g Msun: input SNR %.2f, detected in %.1f%% of %d samples (%d fields)\n", R->mass[k], R->snr[k], 100 * R->rate[k],
                R->nsamples, R->nfields);
    lss_drv_check(lss_mm_detect_save(R, out), out);
    char extra[256];
    snprintf(extra, sizeof extra, "\"theta_pix\": %g, \"threshold\": %g, \"nsamples\": %d, \"fields\": %d, \"background_std\": %.6g, "
             "\"background_std_of_mean\": %.6g, \"false_detection_rate\": %.6g", R->theta_pix, dop.threshold, R->nsamples, R->nfields,
             R->background_std, R->background_std_mean, R->rate[0]);
    lss_drv_outputs_done(argc, argv, dop.sample.seed, extra);
    lss_mm_detect_free(R); lss_mm_mock_free(m); free(masses);
    return 0;
}

int main(int argc, char **argv) {
    static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"ks", cmd_ks}, {"wiener", cmd_wiener}, {"mock", cmd_mock}, {"bin", cmd_bin}, {"sample", cmd_sample},
        {"train-prior", cmd_train}, {"eval", cmd_eval}, {"detect", cmd_detect}};
    lss_drv_prog = "massmap";
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage_main, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    lss_drv_die(2, "unknown command '%s' (see massmap --help)", argv[1]);
    return 2;
}
