/* massmap - weak-lensing mass mapping: Kaiser-Squires, Wiener filter, mock COSMOS-like data,
 * catalogue binning, posterior sampling (annealed HMC + probability-flow ODE), the Table 1
 * comparison and cluster detection (Remy et al. 2022). See `massmap --help`. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "drivers/lss_driver.h"

#include <getopt.h>
#include <math.h>

static const char *usage_main =
    "usage: massmap COMMAND [options]   (massmap COMMAND --help for each)\n"
    "commands:\n"
    "  ks       Kaiser-Squires (E and B) with optional Gaussian smoothing\n"
    "  wiener   Wiener filter (MAP under the Gaussian prior) with mask and per-pixel noise\n"
    "  mock     COSMOS-like mock fields: convergence, noisy masked shear, noise map, C_kk table\n"
    "  bin      bin a shear catalogue (CSV or NPY) into shear and noise-variance maps\n"
    "  train-prior  train the U-net score residual (denoising score matching) or the DeepMass baseline\n"
    "  sample   posterior samples, mean and standard deviation (annealed HMC + ODE)\n"
    "  eval     Table 1 comparison (KS, Wiener, posterior mean) on mock fields, figures 6 and 7\n"
    "  detect   NFW cluster detection rate against SNR with the starlet aperture filter (figure 9)\n"
    "Maps are NPY arrays [H, W] indexed [y, x]; shear maps [2, H, W] (gamma1, gamma2).\n"
    "example: massmap mock --scale small --out out/mm && massmap eval --mock out/mm --out out/mm/eval\n";

/* ---------------------------------------------------------------- helpers */
static float *xmalloc_f(int64_t n) {
    float *p = (float *)calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    if (!p) lss_drv_die(1, "out of memory");
    return p;
}
static double *xmalloc_d(int64_t n) {
    double *p = (double *)calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p) lss_drv_die(1, "out of memory");
    return p;
}

/* [H, W] map */
static float *load_map(const char *path, int *h, int *w) {
    float *d;
    int nd;
    int64_t sh[LSS_MAX_DIM];
    lss_drv_check(lss_npy_load_f32(path, &d, &nd, sh), path);
    if (nd != 2 || sh[0] < 2 || sh[1] < 2 || sh[0] > 32768 || sh[1] > 32768)
        lss_drv_die(2, "%s: expected a map [H, W], got a %d-D array", path, nd);
    *h = (int)sh[0];
    *w = (int)sh[1];
    return d;
}

/* [2, H, W] or [K, 2, H, W] (field `field`) shear */
static void load_shear(const char *path, int field, int *h, int *w, float **g1, float **g2) {
    float *d;
    int nd;
    int64_t sh[LSS_MAX_DIM], n, off = 0;
    lss_drv_check(lss_npy_load_f32(path, &d, &nd, sh), path);
    if (nd == 3 && sh[0] == 2) {
        if (field != 0) lss_drv_die(2, "%s: holds one field; --field %d is out of range", path, field);
        *h = (int)sh[1];
        *w = (int)sh[2];
    } else if (nd == 4 && sh[1] == 2) {
        if (field < 0 || field >= sh[0]) lss_drv_die(2, "%s: --field %d outside [0, %lld)", path, field, (long long)sh[0]);
        *h = (int)sh[2];
        *w = (int)sh[3];
        off = (int64_t)field * 2 * sh[2] * sh[3];
    } else {
        lss_drv_die(2, "%s: expected shear [2, H, W] or [K, 2, H, W]", path);
    }
    if (*h < 2 || *w < 2) lss_drv_die(2, "%s: map too small", path);
    n = (int64_t)*h * *w;
    *g1 = xmalloc_f(n);
    *g2 = xmalloc_f(n);
    memcpy(*g1, d + off, sizeof(float) * (size_t)n);
    memcpy(*g2, d + off + n, sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite((*g1)[i]) || !isfinite((*g2)[i])) lss_drv_die(2, "%s: non-finite shear at pixel %lld", path, (long long)i);
    free(d);
}

static void load_ps(const char *path, double **ell, double **cl, int *n) {
    lss_csv c;
    int ce, cc;
    lss_drv_check(lss_csv_read(path, &c), path);
    ce = lss_csv_col(&c, "ell");
    cc = lss_csv_col(&c, "cl");
    if (ce < 0 || cc < 0) lss_drv_die(2, "%s: needs columns ell and cl", path);
    if (c.nrows < 2) lss_drv_die(2, "%s: needs at least 2 rows", path);
    *n = (int)c.nrows;
    *ell = xmalloc_d(*n);
    *cl = xmalloc_d(*n);
    for (int i = 0; i < *n; i++) {
        (*ell)[i] = c.data[(int64_t)i * c.ncols + ce];
        (*cl)[i] = c.data[(int64_t)i * c.ncols + cc];
    }
    lss_csv_free(&c);
}

static void save_npy(const char *path, int nd, const int64_t *sh, const float *d) {
    lss_drv_check(lss_npy_save(path, LSS_F32, nd, sh, d), path);
}
static void save_map(const char *dir, const char *name, const float *m, int h, int w) {
    char p[4096];
    int64_t sh[2] = {h, w};
    snprintf(p, sizeof p, "%s/%s", dir, name);
    save_npy(p, 2, sh, m);
}
static int png_scale(int h, int w) {
    int m = h > w ? h : w, s = 512 / m;
    return s < 1 ? 1 : s;
}
static void save_png(const char *dir, const char *name, const float *m, int h, int w, const char *title, double vmin, double vmax) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    lss_drv_check(lss_png_map(p, m, h, w, vmin, vmax, title, png_scale(h, w)), p);
}

/* grid.csv of a mock directory: h, w, pixel_arcmin, lognormal shift */
static void read_grid_csv(const char *dir, int *h, int *w, double *pix, double *shift) {
    char p[4096];
    lss_csv c;
    snprintf(p, sizeof p, "%s/grid.csv", dir);
    lss_drv_check(lss_csv_read(p, &c), p);
    if (c.nrows < 1 || lss_csv_col(&c, "h") < 0 || lss_csv_col(&c, "w") < 0 || lss_csv_col(&c, "pixel_arcmin") < 0)
        lss_drv_die(2, "%s: needs columns h, w, pixel_arcmin", p);
    *h = (int)c.data[lss_csv_col(&c, "h")];
    *w = (int)c.data[lss_csv_col(&c, "w")];
    *pix = c.data[lss_csv_col(&c, "pixel_arcmin")];
    *shift = lss_csv_col(&c, "shift") >= 0 ? c.data[lss_csv_col(&c, "shift")] : 0;
    lss_csv_free(&c);
}

/* sampler schedules */
static void schedule(const char *name, lss_mm_sample_opts *so) {
    if (!strcmp(name, "paper")) {
        /* the reference: sigma 1 -> 8e-3 by x0.98, 12 steps per level, identity mass, Simpson MH */
        so->sigma_max = 1.0;
        so->anneal = 0.98;
        so->steps_per_level = 12;
        so->mass = LSS_MM_MASS_IDENTITY;
        so->mh = LSS_MM_MH_PATH;
    } else if (!strcmp(name, "fast")) {
        /* validated against the exact Wiener posterior (tests/test_massmap.c) */
        so->sigma_max = 1.0;
        so->anneal = 0.6;
        so->steps_per_level = 2;
        so->final_steps = 10;
        so->mass = LSS_MM_MASS_FOURIER;
    } else {
        lss_drv_die(2, "option --schedule: '%s' is not fast or paper", name);
    }
}

/* sigma_min: 8e-3 (the reference) unless the data are so precise that the temperature would not lie
 * well below the noise: then 0.1 x the smallest noise standard deviation */
static double auto_sigma_min(int64_t n, const float *nvar) {
    double vmin = INFINITY;
    for (int64_t i = 0; i < n; i++) vmin = fmin(vmin, nvar[i]);
    return fmin(8e-3, 0.1 * sqrt(vmin));
}

/* batches of chains: n samples in batches of `batch` */
static void run_sampler(lss_mm_post *post, lss_mm_sample_opts *so, int nsamples, int batch, int64_t npix,
                        float *out, lss_mm_sample_stats *tot, const char *label) {
    lss_drv_progress pr;
    int done = 0, b = 0;
    memset(tot, 0, sizeof *tot);
    lss_drv_progress_init(&pr, label, 1000);
    so->progress = NULL;
    while (done < nsamples) {
        int nb = nsamples - done < batch ? nsamples - done : batch;
        lss_mm_sample_stats st;
        lss_mm_sample_opts o = *so;
        o.nchains = nb;
        o.seed = so->seed + 7919u * (uint64_t)b;
        lss_drv_check(lss_mm_sample(post, &o, out + (int64_t)done * npix, &st), "sampling");
        tot->hmc_steps = st.hmc_steps;
        tot->levels = st.levels;
        tot->ode_steps += st.ode_steps;
        tot->accept_rate += st.accept_rate * nb;
        tot->evals_per_chain += st.evals_per_chain * nb;
        tot->hmc_evals_per_chain += st.hmc_evals_per_chain * nb;
        tot->ode_evals_per_chain += st.ode_evals_per_chain * nb;
        tot->seconds += st.seconds;
        done += nb;
        b++;
        lss_drv_progress_update(&pr, (int64_t)(1000.0 * done / nsamples));
    }
    tot->accept_rate /= nsamples;
    tot->evals_per_chain /= nsamples;
    tot->hmc_evals_per_chain /= nsamples;
    tot->ode_evals_per_chain /= nsamples;
    lss_drv_progress_end(&pr);
}

/* A network from a checkpoint written by train-prior (architecture read from the file). */
static lss_mm_net *load_net(const char *path, const lss_mm_grid *g, const double *pk, int want_deepmass) {
    int c0, dm, h, w;
    lss_mm_net *net;
    lss_mm_net_opts no = {0};
    lss_drv_check(lss_mm_net_probe(path, &c0, &dm, &h, &w), path);
    if (dm != want_deepmass) lss_drv_die(2, "%s: is a %s network, a %s network is needed", path, dm ? "DeepMass" : "score", want_deepmass ? "DeepMass" : "score");
    if (h != lss_mm_grid_h(g) || w != lss_mm_grid_w(g)) lss_drv_die(2, "%s: trained on %d x %d maps, the data are %d x %d", path, h, w, lss_mm_grid_h(g), lss_mm_grid_w(g));
    no.c0 = c0;
    no.deepmass = dm;
    lss_drv_check(lss_mm_net_create(g, pk, &no, &net), "network");
    lss_drv_check(lss_mm_net_load(net, path), path);
    return net;
}

/* ---------------------------------------------------------------- ks */
static int cmd_ks(int argc, char **argv) {
    static struct option lo[] = {{"shear", 1, 0, 's'}, {"out", 1, 0, 'o'}, {"smooth-arcmin", 1, 0, 'm'},
                                 {"pixel-arcmin", 1, 0, 'p'}, {"field", 1, 0, 'f'}, {"png", 1, 0, 'g'},
                                 {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *shear = NULL, *out = NULL, *png = NULL;
    double smooth = 0, pix = LSS_MM_COSMOS_PIX_ARCMIN;
    int field = 0, c, h, w;
    float *g1, *g2, *k;
    lss_mm_grid *g;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's': shear = optarg; break;
        case 'o': out = optarg; break;
        case 'g': png = optarg; break;
        case 'm': smooth = lss_drv_double("--smooth-arcmin", optarg); break;
        case 'p': pix = lss_drv_double("--pixel-arcmin", optarg); break;
        case 'f': field = (int)lss_drv_int("--field", optarg, 0, 1 << 30); break;
        case 'h':
            printf("usage: massmap ks --shear S.npy --out K.npy [--smooth-arcmin X] [--pixel-arcmin P] [--field I] [--png K.png]\n"
                   "  Kaiser-Squires: S is [2, H, W] (gamma1, gamma2) or [K, 2, H, W]; K is [2, H, W] (E, B),\n"
                   "  both smoothed by a Gaussian of X arcmin (default 0) on pixels of P arcmin (default 0.29).\n"
                   "example: massmap ks --shear out/mm/shear.npy --out ks.npy --smooth-arcmin 1\n");
            return 0;
        default: lss_drv_die(2, "ks: unknown option or missing value '%s' (see massmap ks --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "ks: unexpected argument '%s'", argv[optind]);
    if (!shear || !out) lss_drv_die(2, "ks: --shear and --out are required");
    if (!(smooth >= 0) || smooth > 1e4) lss_drv_die(2, "option --smooth-arcmin: %g must be in [0, 1e4]", smooth);
    if (!(pix > 0) || pix > 1e4) lss_drv_die(2, "option --pixel-arcmin: %g must be in (0, 1e4]", pix);
    load_shear(shear, field, &h, &w, &g1, &g2);
    lss_drv_check(lss_mm_grid_create(h, w, pix, &g), "grid");
    k = xmalloc_f(2 * (int64_t)h * w);
    lss_drv_check(lss_mm_ks(g, g1, g2, smooth, k, k + (int64_t)h * w), "ks");
    {
        int64_t sh[3] = {2, h, w};
        save_npy(out, 3, sh, k);
    }
    if (png) lss_drv_check(lss_png_map(png, k, h, w, 0, 0, "Kaiser-Squires E", png_scale(h, w)), png);
    fprintf(stderr, "massmap ks: wrote %s ([2, %d, %d], smoothing %g arcmin)\n", out, h, w, smooth);
    lss_mm_grid_free(g);
    free(g1); free(g2); free(k);
    return 0;
}

/* ---------------------------------------------------------------- wiener */
static int cmd_wiener(int argc, char **argv) {
    static struct option lo[] = {{"shear", 1, 0, 's'}, {"noise-var", 1, 0, 'n'}, {"ps", 1, 0, 'c'},
                                 {"pixel-arcmin", 1, 0, 'p'}, {"out", 1, 0, 'o'}, {"field", 1, 0, 'f'},
                                 {"tol", 1, 0, 't'}, {"max-iter", 1, 0, 'i'}, {"samples", 1, 0, 'S'},
                                 {"seed", 1, 0, 'r'}, {"png", 1, 0, 'g'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *shear = NULL, *nvp = NULL, *psp = NULL, *out = NULL, *png = NULL;
    double pix = LSS_MM_COSMOS_PIX_ARCMIN, *ell, *cl, *pk, rel;
    int field = 0, c, h, w, hn, wn, nps, it, nsamp = 0;
    uint64_t seed = 1;
    lss_mm_wiener_opts wo = {0};
    float *g1, *g2, *nv, *k;
    lss_mm_grid *g;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's': shear = optarg; break;
        case 'n': nvp = optarg; break;
        case 'c': psp = optarg; break;
        case 'o': out = optarg; break;
        case 'g': png = optarg; break;
        case 'p': pix = lss_drv_double("--pixel-arcmin", optarg); break;
        case 'f': field = (int)lss_drv_int("--field", optarg, 0, 1 << 30); break;
        case 't': wo.tol = lss_drv_double("--tol", optarg); break;
        case 'i': wo.max_iter = (int)lss_drv_int("--max-iter", optarg, 1, 1000000); break;
        case 'S': nsamp = (int)lss_drv_int("--samples", optarg, 0, 100000); break;
        case 'r': seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'h':
            printf("usage: massmap wiener --shear S.npy --noise-var N.npy --ps PS.csv --pixel-arcmin X --out K.npy\n"
                   "                      [--field I] [--tol 1e-8] [--max-iter 5000] [--samples M --seed S] [--png K.png]\n"
                   "  Wiener filter (MAP of eq. 13) by preconditioned conjugate gradients: S is [2, H, W] shear,\n"
                   "  N [H, W] the per-pixel noise variance of each component (1e10 where masked), PS.csv the\n"
                   "  convergence spectrum (columns ell, cl). K is [H, W] (kappa_E); with --samples M, K is\n"
                   "  [1 + M, H, W]: the Wiener map followed by M constrained realisations.\n"
                   "example: massmap wiener --shear out/mm/shear.npy --noise-var out/mm/noise_var.npy --ps out/mm/ps.csv \\\n"
                   "           --pixel-arcmin 0.29 --out wf.npy\n");
            return 0;
        default: lss_drv_die(2, "wiener: unknown option or missing value '%s' (see massmap wiener --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "wiener: unexpected argument '%s'", argv[optind]);
    if (!shear || !nvp || !psp || !out) lss_drv_die(2, "wiener: --shear, --noise-var, --ps and --out are required");
    if (!(pix > 0) || pix > 1e4) lss_drv_die(2, "option --pixel-arcmin: %g must be in (0, 1e4]", pix);
    if (wo.tol < 0 || wo.tol >= 1) lss_drv_die(2, "option --tol: %g must be in (0, 1)", wo.tol);
    load_shear(shear, field, &h, &w, &g1, &g2);
    nv = load_map(nvp, &hn, &wn);
    if (hn != h || wn != w) lss_drv_die(2, "%s: noise map %d x %d does not match the shear %d x %d", nvp, hn, wn, h, w);
    load_ps(psp, &ell, &cl, &nps);
    lss_drv_check(lss_mm_grid_create(h, w, pix, &g), "grid");
    pk = xmalloc_d((int64_t)h * w);
    lss_drv_check(lss_mm_grid_spectrum(g, ell, cl, nps, pk), psp);
    k = xmalloc_f((int64_t)(1 + nsamp) * h * w);
    lss_drv_check(lss_mm_wiener(g, pk, g1, g2, nv, &wo, k, &it, &rel), "wiener");
    for (int s = 0; s < nsamp; s++)
        lss_drv_check(lss_mm_wiener_sample(g, pk, g1, g2, nv, &wo, seed, (uint64_t)s, k + (int64_t)(1 + s) * h * w), "wiener sample");
    if (nsamp == 0) {
        int64_t sh[2] = {h, w};
        save_npy(out, 2, sh, k);
    } else {
        int64_t sh[3] = {1 + nsamp, h, w};
        save_npy(out, 3, sh, k);
    }
    if (png) lss_drv_check(lss_png_map(png, k, h, w, 0, 0, "Wiener filter", png_scale(h, w)), png);
    fprintf(stderr, "massmap wiener: %d iterations, relative residual %.2e; wrote %s\n", it, rel, out);
    lss_mm_grid_free(g);
    free(g1); free(g2); free(nv); free(k); free(ell); free(cl); free(pk);
    return 0;
}

/* ---------------------------------------------------------------- mock */
typedef struct {
    int size, nfields, pad, no_mask, catalogue;
    double pix, shift, ngal, sigma_e, observed;
    uint64_t seed;
} mock_cfg;

static void write_ps_csv(const char *path, int n, const double *ell, const double *cl) {
    const char *hd[2] = {"ell", "cl"};
    double *d = xmalloc_d(2 * (int64_t)n);
    for (int i = 0; i < n; i++) d[2 * i] = ell[i], d[2 * i + 1] = cl[i];
    lss_drv_check(lss_csv_write(path, 2, hd, n, d), path);
    free(d);
}

static void theory_table(int n, double *ell, double *cl) {
    for (int i = 0; i < n; i++) ell[i] = pow(10.0, 0.5 + 5.0 * i / (n - 1));
    lss_drv_check(lss_mm_theory_ckk(NULL, "cosmos", n, ell, cl), "theory C_kk");
}

static int cmd_mock(int argc, char **argv) {
    static struct option lo[] = {{"out", 1, 0, 'o'}, {"scale", 1, 0, 'S'}, {"size", 1, 0, 'n'},
                                 {"pixel-arcmin", 1, 0, 'p'}, {"nfields", 1, 0, 'k'}, {"seed", 1, 0, 'r'},
                                 {"shift", 1, 0, 'l'}, {"gaussian", 0, 0, 'G'}, {"pad", 1, 0, 'P'},
                                 {"ngal", 1, 0, 'd'}, {"sigma-e", 1, 0, 'e'}, {"observed", 1, 0, 'b'},
                                 {"no-mask", 0, 0, 'M'}, {"catalogue", 0, 0, 'c'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL;
    mock_cfg m = {64, 4, 2, 0, 0, LSS_MM_COSMOS_PIX_ARCMIN, -1, 0, 0, 0, 1};
    int c, gaussian = 0, nell = 200;
    double ell[200], cl[200];
    char p[4096];
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'S':
            if (!strcmp(optarg, "small")) m.size = 64, m.nfields = 4;
            else if (!strcmp(optarg, "paper")) m.size = LSS_MM_COSMOS_NPIX, m.nfields = 16;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case 'n': m.size = (int)lss_drv_int("--size", optarg, 8, 4096); break;
        case 'p': m.pix = lss_drv_double("--pixel-arcmin", optarg); break;
        case 'k': m.nfields = (int)lss_drv_int("--nfields", optarg, 1, 100000); break;
        case 'r': m.seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'l': m.shift = lss_drv_double("--shift", optarg); break;
        case 'G': gaussian = 1; break;
        case 'P': m.pad = (int)lss_drv_int("--pad", optarg, 1, 8); break;
        case 'd': m.ngal = lss_drv_double("--ngal", optarg); break;
        case 'e': m.sigma_e = lss_drv_double("--sigma-e", optarg); break;
        case 'b': m.observed = lss_drv_double("--observed", optarg); break;
        case 'M': m.no_mask = 1; break;
        case 'c': m.catalogue = 1; break;
        case 'h':
            printf("usage: massmap mock --out DIR [--scale small|paper] [--size N] [--pixel-arcmin 0.29] [--nfields K]\n"
                   "                    [--seed S] [--shift L | --gaussian] [--pad 2] [--ngal 71.7] [--sigma-e 0.305]\n"
                   "                    [--observed 0.534] [--no-mask] [--catalogue]\n"
                   "  COSMOS-like mocks: K convergence maps (shifted lognormal with the Halofit C_kk of the COSMOS\n"
                   "  n(z), Planck 2015 cosmology; shift = the n(z)'s empty-beam convergence unless given; cut out of\n"
                   "  a grid --pad times larger), an irregular mask, Poisson galaxy counts, shape noise, the noisy\n"
                   "  masked shear. Writes DIR/kappa.npy [K,N,N], shear.npy [K,2,N,N], noise_var.npy, mask.npy,\n"
                   "  count.npy, ps.csv (ell, cl), grid.csv, PNGs, run.json and with --catalogue catalogue.csv\n"
                   "  (galaxies of field 0). --scale small: 64 x 64, 4 fields; paper: 360 x 360, 16 fields.\n"
                   "example: massmap mock --scale small --out out/mm\n");
            return 0;
        default: lss_drv_die(2, "mock: unknown option or missing value '%s' (see massmap mock --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "mock: unexpected argument '%s'", argv[optind]);
    if (!out) lss_drv_die(2, "mock: --out DIR is required");
    if (!(m.pix > 0) || m.pix > 60) lss_drv_die(2, "option --pixel-arcmin: %g must be in (0, 60]", m.pix);
    if (m.ngal < 0 || m.ngal > 1e4 || m.sigma_e < 0 || m.sigma_e > 10) lss_drv_die(2, "--ngal / --sigma-e out of range");
    if (m.observed != 0 && !(m.observed > 0.05 && m.observed <= 1)) lss_drv_die(2, "option --observed: %g must be in (0.05, 1]", m.observed);
    if (gaussian) m.shift = 0;
    else if (m.shift < 0) lss_drv_check(lss_mm_theory_kappa_empty(NULL, "cosmos", &m.shift), "empty-beam convergence");
    if (m.shift < 0 || m.shift > 10) lss_drv_die(2, "option --shift: %g must be in [0, 10]", m.shift);
    lss_drv_mkdirs(out);
    theory_table(nell, ell, cl);
    snprintf(p, sizeof p, "%s/ps.csv", out);
    write_ps_csv(p, nell, ell, cl);
    {
        int n = m.size, K = m.nfields;
        int64_t np = (int64_t)n * n;
        lss_mm_grid *g, *big;
        double *pkb;
        float *kap = xmalloc_f(K * np), *sh = xmalloc_f(2 * K * np), *mask = xmalloc_f(np), *cnt = xmalloc_f(np), *nv = xmalloc_f(np);
        lss_mm_survey_opts so = {0};
        lss_drv_progress pr;
        so.ngal_arcmin2 = m.ngal;
        so.sigma_e = m.sigma_e;
        so.observed = m.observed;
        so.no_mask = m.no_mask;
        lss_drv_check(lss_mm_grid_create(n, n, m.pix, &g), "grid");
        lss_drv_check(lss_mm_grid_create(n * m.pad, n * m.pad, m.pix, &big), "padded grid");
        pkb = xmalloc_d((int64_t)n * m.pad * n * m.pad);
        lss_drv_check(lss_mm_grid_spectrum(big, ell, cl, nell, pkb), "grid spectrum");
        lss_drv_check(lss_mm_mock_mask(n, n, &so, m.seed, mask), "mask");
        lss_drv_check(lss_mm_mock_noise_map(g, mask, &so, m.seed, cnt, nv), "noise map");
        lss_drv_progress_init(&pr, "massmap mock", K);
        for (int f = 0; f < K; f++) {
            lss_drv_check(lss_mm_mock_kappa(big, pkb, m.shift, n, n, m.seed, (uint64_t)f, kap + f * np), "convergence");
            lss_drv_check(lss_mm_mock_shear(g, kap + f * np, nv, m.seed, 1000000 + (uint64_t)f, sh + 2 * f * np, sh + (2 * f + 1) * np), "shear");
            lss_drv_progress_update(&pr, f + 1);
        }
        lss_drv_progress_end(&pr);
        {
            int64_t s3[3] = {K, n, n}, s4[4] = {K, 2, n, n};
            snprintf(p, sizeof p, "%s/kappa.npy", out);
            save_npy(p, 3, s3, kap);
            snprintf(p, sizeof p, "%s/shear.npy", out);
            save_npy(p, 4, s4, sh);
        }
        save_map(out, "noise_var.npy", nv, n, n);
        save_map(out, "mask.npy", mask, n, n);
        save_map(out, "count.npy", cnt, n, n);
        save_png(out, "kappa0.png", kap, n, n, "convergence (field 0)", 0, 0);
        save_png(out, "mask.png", mask, n, n, "mask", 0, 1);
        {
            float *ks = xmalloc_f(np);
            lss_drv_check(lss_mm_ks(g, sh, sh + np, 1.0, ks, NULL), "ks");
            save_png(out, "ks0.png", ks, n, n, "KS, 1 arcmin (field 0)", 0, 0);
            free(ks);
        }
        {
            const char *hd[4] = {"h", "w", "pixel_arcmin", "shift"};
            double row[4] = {n, n, m.pix, m.shift};
            snprintf(p, sizeof p, "%s/grid.csv", out);
            lss_drv_check(lss_csv_write(p, 4, hd, 1, row), p);
        }
        if (m.catalogue) {
            /* galaxies of field 0: uniform positions inside their pixel, e = gamma + N(0, sigma_e) */
            double se = m.sigma_e > 0 ? m.sigma_e : LSS_MM_COSMOS_SIGMA_E;
            int64_t ng = 0, j = 0;
            for (int64_t i = 0; i < np; i++) ng += (int64_t)cnt[i];
            double *d = xmalloc_d(4 * ng);
            float *g1 = xmalloc_f(np), *g2 = xmalloc_f(np);
            lss_rng r;
            lss_drv_check(lss_mm_kappa_to_shear(g, kap, NULL, g1, g2), "shear");
            lss_rng_init(&r, m.seed, 0x636174ULL);
            for (int64_t i = 0; i < np; i++)
                for (int64_t q = 0; q < (int64_t)cnt[i]; q++, j++) {
                    d[4 * j] = (double)(i % n) + lss_rng_uniform(&r);
                    d[4 * j + 1] = (double)(i / n) + lss_rng_uniform(&r);
                    d[4 * j + 2] = g1[i] + se * lss_rng_normal(&r);
                    d[4 * j + 3] = g2[i] + se * lss_rng_normal(&r);
                }
            const char *hd[4] = {"x", "y", "e1", "e2"};
            snprintf(p, sizeof p, "%s/catalogue.csv", out);
            lss_drv_check(lss_csv_write(p, 4, hd, ng, d), p);
            free(d); free(g1); free(g2);
        }
        {
            char extra[512];
            int64_t nobs = 0;
            for (int64_t i = 0; i < np; i++) nobs += mask[i] > 0;
            snprintf(extra, sizeof extra, "\"size\": %d, \"nfields\": %d, \"pixel_arcmin\": %g, \"lognormal_shift\": %g, \"observed_fraction\": %.4f",
                     n, K, m.pix, m.shift, (double)nobs / np);
            lss_drv_check(lss_drv_runjson(out, argc, argv, m.seed, extra), "run.json");
            fprintf(stderr, "massmap mock: %d fields of %d x %d (%.1f%% observed, shift %.4f) in %s\n", K, n, n, 100.0 * nobs / np, m.shift, out);
        }
        lss_mm_grid_free(g);
        lss_mm_grid_free(big);
        free(pkb); free(kap); free(sh); free(mask); free(cnt); free(nv);
    }
    return 0;
}

/* ---------------------------------------------------------------- bin */
static int cmd_bin(int argc, char **argv) {
    static struct option lo[] = {{"catalogue", 1, 0, 'c'}, {"out", 1, 0, 'o'}, {"size", 1, 0, 'n'},
                                 {"pixel-arcmin", 1, 0, 'p'}, {"sigma-e", 1, 0, 'e'}, {"radec", 0, 0, 'R'},
                                 {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *cp = NULL, *out = NULL;
    lss_mm_bin_opts bo = {0};
    lss_mm_catalogue cat;
    int c, radec = 0, h, w;
    int64_t drop;
    double se;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'c': cp = optarg; break;
        case 'o': out = optarg; break;
        case 'n': bo.h = bo.w = (int)lss_drv_int("--size", optarg, 2, 16384); break;
        case 'p': bo.pix_arcmin = lss_drv_double("--pixel-arcmin", optarg); break;
        case 'e': bo.sigma_e = lss_drv_double("--sigma-e", optarg); break;
        case 'R': radec = 1; break;
        case 'h':
            printf("usage: massmap bin --catalogue CAT --out DIR [--size N] [--pixel-arcmin 0.29] [--sigma-e S] [--radec]\n"
                   "  Bins a shear catalogue: CSV with columns x,y (pixels) or ra,dec (degrees), e1, e2 and optional\n"
                   "  w/weight; or NPY [n, 4|5] (x, y, e1, e2[, w]; --radec: ra, dec). Writes DIR/shear.npy\n"
                   "  [2, H, W], noise_var.npy (sigma_e^2 sum w^2 / (sum w)^2, 1e10 where empty), count.npy, a PNG\n"
                   "  and run.json. The grid is the bounding box unless --size is given; sigma_e is estimated from\n"
                   "  the catalogue unless given.\n"
                   "example: massmap bin --catalogue out/mm/catalogue.csv --size 64 --out out/mm/binned\n");
            return 0;
        default: lss_drv_die(2, "bin: unknown option or missing value '%s' (see massmap bin --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "bin: unexpected argument '%s'", argv[optind]);
    if (!cp || !out) lss_drv_die(2, "bin: --catalogue and --out are required");
    if (bo.pix_arcmin < 0 || bo.pix_arcmin > 600 || bo.sigma_e < 0 || bo.sigma_e > 10) lss_drv_die(2, "bin: --pixel-arcmin or --sigma-e out of range");
    lss_drv_check(lss_mm_catalogue_load(cp, radec, &cat), cp);
    lss_drv_check(lss_mm_bin(&cat, &bo, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), "bin");
    {
        int64_t np = (int64_t)h * w, s3[3] = {2, h, w};
        float *sh = xmalloc_f(2 * np), *nv = xmalloc_f(np), *cnt = xmalloc_f(np);
        char p[4096];
        lss_drv_check(lss_mm_bin(&cat, &bo, &h, &w, sh, sh + np, nv, cnt, &drop, &se), "bin");
        lss_drv_mkdirs(out);
        snprintf(p, sizeof p, "%s/shear.npy", out);
        save_npy(p, 3, s3, sh);
        save_map(out, "noise_var.npy", nv, h, w);
        save_map(out, "count.npy", cnt, h, w);
        save_png(out, "count.png", cnt, h, w, "galaxies per pixel", 0, 0);
        {
            char extra[256];
            snprintf(extra, sizeof extra, "\"h\": %d, \"w\": %d, \"galaxies\": %lld, \"dropped\": %lld, \"sigma_e\": %.6g", h, w,
                     (long long)cat.n, (long long)drop, se);
            lss_drv_check(lss_drv_runjson(out, argc, argv, 0, extra), "run.json");
        }
        fprintf(stderr, "massmap bin: %lld galaxies (%lld dropped) on %d x %d, sigma_e %.4f; wrote %s\n", (long long)cat.n,
                (long long)drop, h, w, se, out);
        free(sh); free(nv); free(cnt);
    }
    lss_mm_catalogue_free(&cat);
    return 0;
}

/* ---------------------------------------------------------------- sample */
static int cmd_sample(int argc, char **argv) {
    static struct option lo[] = {{"shear", 1, 0, 's'}, {"noise-var", 1, 0, 'n'}, {"ps", 1, 0, 'c'},
                                 {"pixel-arcmin", 1, 0, 'p'}, {"out", 1, 0, 'o'}, {"field", 1, 0, 'f'},
                                 {"nsamples", 1, 0, 'N'}, {"batch", 1, 0, 'B'}, {"schedule", 1, 0, 'S'},
                                 {"sigma-min", 1, 0, 'm'}, {"seed", 1, 0, 'r'}, {"scale", 1, 0, 'z'},
                                 {"prior", 1, 0, 'P'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *shear = NULL, *nvp = NULL, *psp = NULL, *out = NULL, *sched = "fast", *prior = NULL;
    lss_mm_net *net = NULL;
    double pix = LSS_MM_COSMOS_PIX_ARCMIN, *ell, *cl, *pk, smin = 0;
    int field = 0, c, h, w, hn, wn, nps, nsamp = 16, batch = 16;
    uint64_t seed = 1;
    lss_mm_sample_opts so = {0};
    lss_mm_sample_stats st;
    float *g1, *g2, *nv, *smp, *mean, *sd;
    lss_mm_grid *g;
    lss_mm_post *post;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's': shear = optarg; break;
        case 'n': nvp = optarg; break;
        case 'c': psp = optarg; break;
        case 'o': out = optarg; break;
        case 'S': sched = optarg; break;
        case 'p': pix = lss_drv_double("--pixel-arcmin", optarg); break;
        case 'f': field = (int)lss_drv_int("--field", optarg, 0, 1 << 30); break;
        case 'N': nsamp = (int)lss_drv_int("--nsamples", optarg, 1, 1000000); break;
        case 'B': batch = (int)lss_drv_int("--batch", optarg, 1, 100000); break;
        case 'm': smin = lss_drv_double("--sigma-min", optarg); break;
        case 'P': prior = optarg; break;
        case 'r': seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'z':
            if (!strcmp(optarg, "small")) nsamp = 16, batch = 16;
            else if (!strcmp(optarg, "paper")) nsamp = 400, batch = 50;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case 'h':
            printf("usage: massmap sample --shear S.npy --noise-var N.npy --ps PS.csv --pixel-arcmin X --out DIR\n"
                   "                      [--field I] [--nsamples 16] [--batch 16] [--schedule fast|paper]\n"
                   "                      [--sigma-min S] [--seed 1] [--scale small|paper] [--prior prior.ckpt]\n"
                   "  Posterior samples of the convergence under the Gaussian prior of PS.csv (columns ell, cl),\n"
                   "  plus the U-net score residual of --prior (from massmap train-prior) when given,\n"
                   "  and the likelihood of eq. 25: annealed HMC from sigma = 1 to sigma_min (default 8e-3, or\n"
                   "  0.1 x the smallest noise std), then the probability-flow ODE (RK45). Chains run in batches.\n"
                   "  Schedules: fast (x0.6 per level, 2 steps, Fourier mass matrix; validated against the exact\n"
                   "  Wiener posterior) or paper (x0.98, 12 steps, identity mass, Simpson MH as the reference).\n"
                   "  Writes DIR/samples.npy [N, H, W], mean.npy, std.npy, PNGs and run.json (with the cost).\n"
                   "example: massmap sample --shear out/mm/shear.npy --noise-var out/mm/noise_var.npy --ps out/mm/ps.csv \\\n"
                   "           --pixel-arcmin 0.29 --nsamples 16 --out out/mm/post\n");
            return 0;
        default: lss_drv_die(2, "sample: unknown option or missing value '%s' (see massmap sample --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "sample: unexpected argument '%s'", argv[optind]);
    if (!shear || !nvp || !psp || !out) lss_drv_die(2, "sample: --shear, --noise-var, --ps and --out are required");
    if (!(pix > 0) || pix > 1e4) lss_drv_die(2, "option --pixel-arcmin: %g must be in (0, 1e4]", pix);
    if (smin < 0 || smin >= 1) lss_drv_die(2, "option --sigma-min: %g must be in (0, 1)", smin);
    schedule(sched, &so);
    load_shear(shear, field, &h, &w, &g1, &g2);
    nv = load_map(nvp, &hn, &wn);
    if (hn != h || wn != w) lss_drv_die(2, "%s: noise map %d x %d does not match the shear %d x %d", nvp, hn, wn, h, w);
    load_ps(psp, &ell, &cl, &nps);
    lss_drv_check(lss_mm_grid_create(h, w, pix, &g), "grid");
    pk = xmalloc_d((int64_t)h * w);
    lss_drv_check(lss_mm_grid_spectrum(g, ell, cl, nps, pk), psp);
    lss_drv_check(lss_mm_post_create(g, pk, g1, g2, nv, &post), "posterior");
    if (prior) {
        net = load_net(prior, g, pk, 0);
        lss_mm_post_set_residual(post, lss_mm_net_residual, net);
    }
    so.sigma_min = smin > 0 ? smin : auto_sigma_min((int64_t)h * w, nv);
    so.seed = seed;
    smp = xmalloc_f((int64_t)nsamp * h * w);
    mean = xmalloc_f((int64_t)h * w);
    sd = xmalloc_f((int64_t)h * w);
    run_sampler(post, &so, nsamp, batch, (int64_t)h * w, smp, &st, "massmap sample");
    lss_drv_check(lss_mm_mean_std(nsamp, (int64_t)h * w, smp, mean, sd), "mean");
    lss_drv_mkdirs(out);
    {
        char p[4096], extra[512];
        int64_t s3[3] = {nsamp, h, w};
        snprintf(p, sizeof p, "%s/samples.npy", out);
        save_npy(p, 3, s3, smp);
        save_map(out, "mean.npy", mean, h, w);
        save_map(out, "std.npy", sd, h, w);
        save_png(out, "mean.png", mean, h, w, "posterior mean", 0, 0);
        save_png(out, "std.png", sd, h, w, "posterior std", 0, 0);
        save_png(out, "sample0.png", smp, h, w, "posterior sample", 0, 0);
        snprintf(extra, sizeof extra,
                 "\"schedule\": \"%s\", \"sigma_min\": %g, \"nsamples\": %d, \"levels\": %lld, \"hmc_steps\": %lld, "
                 "\"accept_rate\": %.4f, \"score_evals_per_sample\": %.1f, \"seconds\": %.2f",
                 sched, so.sigma_min, nsamp, (long long)st.levels, (long long)st.hmc_steps, st.accept_rate, st.evals_per_chain, st.seconds);
        lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
    }
    fprintf(stderr, "massmap sample: %d samples, %.1f score evaluations each, acceptance %.3f, %.1f s; wrote %s\n", nsamp,
            st.evals_per_chain, st.accept_rate, st.seconds, out);
    lss_mm_post_free(post);
    lss_mm_net_free(net);
    lss_mm_grid_free(g);
    free(g1); free(g2); free(nv); free(smp); free(mean); free(sd); free(ell); free(cl); free(pk);
    return 0;
}

/* ---------------------------------------------------------------- eval */
typedef struct {
    int h, w, K;
    double pix, shift;
    float *kap, *sh, *nv, *mask;
    double *ell, *cl;
    int nell;
} mock_data;

static void load_mock(const char *dir, mock_data *m) {
    char p[4096];
    float *d;
    int nd, hh, ww;
    int64_t s[LSS_MAX_DIM];
    read_grid_csv(dir, &m->h, &m->w, &m->pix, &m->shift);
    snprintf(p, sizeof p, "%s/kappa.npy", dir);
    lss_drv_check(lss_npy_load_f32(p, &d, &nd, s), p);
    if (nd != 3 || s[1] != m->h || s[2] != m->w) lss_drv_die(2, "%s: expected [K, %d, %d]", p, m->h, m->w);
    m->K = (int)s[0];
    m->kap = d;
    snprintf(p, sizeof p, "%s/shear.npy", dir);
    lss_drv_check(lss_npy_load_f32(p, &d, &nd, s), p);
    if (nd != 4 || s[0] != m->K || s[1] != 2 || s[2] != m->h || s[3] != m->w) lss_drv_die(2, "%s: expected [%d, 2, %d, %d]", p, m->K, m->h, m->w);
    m->sh = d;
    snprintf(p, sizeof p, "%s/noise_var.npy", dir);
    m->nv = load_map(p, &hh, &ww);
    if (hh != m->h || ww != m->w) lss_drv_die(2, "%s: shape mismatch", p);
    snprintf(p, sizeof p, "%s/mask.npy", dir);
    m->mask = load_map(p, &hh, &ww);
    if (hh != m->h || ww != m->w) lss_drv_die(2, "%s: shape mismatch", p);
    snprintf(p, sizeof p, "%s/ps.csv", dir);
    load_ps(p, &m->ell, &m->cl, &m->nell);
}

static void free_mock(mock_data *m) {
    free(m->kap); free(m->sh); free(m->nv); free(m->mask); free(m->ell); free(m->cl);
}

static void panel(lss_image *im, int x, int y, const float *m, int h, int w, int sc, double vmin, double vmax, const char *title) {
    static const unsigned char black[3] = {0, 0, 0};
    lss_image_text(im, x, y, title, black, 1);
    lss_image_map(im, x, y + 14, m, h, w, vmin, vmax, sc);
}

static int cmd_eval(int argc, char **argv) {
    static struct option lo[] = {{"mock", 1, 0, 'm'}, {"out", 1, 0, 'o'}, {"nsamples", 1, 0, 'N'},
                                 {"batch", 1, 0, 'B'}, {"schedule", 1, 0, 'S'}, {"nfields", 1, 0, 'k'},
                                 {"nsims", 1, 0, 'q'}, {"seed", 1, 0, 'r'}, {"scale", 1, 0, 'z'},
                                 {"prior", 1, 0, 'P'}, {"deepmass", 1, 0, 'D'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *mdir = NULL, *out = NULL, *sched = "fast", *prior = NULL, *dmp = NULL;
    lss_mm_net *net = NULL, *dmn = NULL;
    int c, nsamp = 16, batch = 16, nf = 0, nsims = 32, nb = 10;
    uint64_t seed = 1;
    mock_data m;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'o': out = optarg; break;
        case 'S': sched = optarg; break;
        case 'N': nsamp = (int)lss_drv_int("--nsamples", optarg, 2, 1000000); break;
        case 'B': batch = (int)lss_drv_int("--batch", optarg, 1, 100000); break;
        case 'k': nf = (int)lss_drv_int("--nfields", optarg, 1, 100000); break;
        case 'q': nsims = (int)lss_drv_int("--nsims", optarg, 2, 100000); break;
        case 'P': prior = optarg; break;
        case 'D': dmp = optarg; break;
        case 'r': seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'z':
            if (!strcmp(optarg, "small")) nsamp = 16, batch = 16;
            else if (!strcmp(optarg, "paper")) nsamp = 400, batch = 50;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case 'h':
            printf("usage: massmap eval --mock DIR --out DIR [--nfields K] [--nsamples 16] [--batch 16]\n"
                   "                    [--schedule fast|paper] [--nsims 32] [--seed 1] [--scale small|paper]\n"
                   "                    [--prior prior.ckpt] [--deepmass deepmass.ckpt]\n"
                   "  Table 1 on the fields of a `massmap mock` directory: Kaiser-Squires at the smoothing scale\n"
                   "  that minimises the mean RMSE over the fields (scanned), the Wiener filter, the DeepMass\n"
                   "  network when given, and the posterior mean of N samples (Gaussian prior, plus the U-net\n"
                   "  residual of --prior when given). RMSE and Pearson r (eqs. 27-28) over observed pixels, each map's mean over\n"
                   "  them subtracted. Writes table1.csv (method 0 KS, 1 Wiener, 2 posterior mean, 3 DeepMass;\n"
                   "  mean and std over fields), fields.csv, spectra.csv\n"
                   "  (figure 6: posterior samples' C_ell against the truth, the theory and nsims simulations),\n"
                   "  spectra.png, figure7.png (truth, KS, Wiener, posterior mean, std, samples) and run.json.\n"
                   "example: massmap eval --mock out/mm --out out/mm/eval\n");
            return 0;
        default: lss_drv_die(2, "eval: unknown option or missing value '%s' (see massmap eval --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "eval: unexpected argument '%s'", argv[optind]);
    if (!mdir || !out) lss_drv_die(2, "eval: --mock and --out are required");
    schedule(sched, &(lss_mm_sample_opts){0});
    load_mock(mdir, &m);
    if (nf == 0 || nf > m.K) nf = m.K;
    lss_drv_mkdirs(out);
    {
        int h = m.h, w = m.w, ns = 8;
        int64_t np = (int64_t)h * w;
        double scales[8] = {0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0}, ks_rmse[8] = {0};
        lss_mm_grid *g;
        double *pk = xmalloc_d(np);
        float *ks = xmalloc_f(np), *wf = xmalloc_f(np), *smp = xmalloc_f((int64_t)nsamp * np), *mean = xmalloc_f(np), *sd = xmalloc_f(np);
        /* per field: rmse/r of KS(best), Wiener, posterior mean, DeepMass */
        double *res = xmalloc_d(8 * nf);
        int best = 0;
        char p[4096];
        lss_mm_sample_opts so = {0};
        lss_mm_sample_stats st, tot;
        memset(&tot, 0, sizeof tot);
        lss_drv_check(lss_mm_grid_create(h, w, m.pix, &g), "grid");
        lss_drv_check(lss_mm_grid_spectrum(g, m.ell, m.cl, m.nell, pk), "grid spectrum");
        if (prior) net = load_net(prior, g, pk, 0);
        if (dmp) dmn = load_net(dmp, g, pk, 1);
        for (int f = 0; f < nf; f++)
            for (int s = 0; s < ns; s++) {
                double r;
                lss_drv_check(lss_mm_ks(g, m.sh + 2 * f * np, m.sh + (2 * f + 1) * np, scales[s], ks, NULL), "ks");
                lss_drv_check(lss_mm_metrics(np, ks, m.kap + f * np, m.mask, &r, NULL), "metrics");
                ks_rmse[s] += r / nf;
            }
        for (int s = 1; s < ns; s++)
            if (ks_rmse[s] < ks_rmse[best]) best = s;
        schedule(sched, &so);
        so.sigma_min = auto_sigma_min(np, m.nv);
        /* simulations for figure 6: prior maps from the same generator (independent seeds) */
        double *ellc = xmalloc_d(nb), *cl_sim = xmalloc_d((int64_t)nsims * nb), *cl_smp = xmalloc_d((int64_t)nsamp * nb),
               *cl_true = xmalloc_d(nb), *cl_th = xmalloc_d(nb), *cl_wf = xmalloc_d(nb), *cl_mean = xmalloc_d(nb);
        {
            lss_mm_grid *big;
            double *pkb = xmalloc_d(4 * np);
            float *sim = xmalloc_f(np);
            lss_drv_check(lss_mm_grid_create(2 * h, 2 * w, m.pix, &big), "grid");
            lss_drv_check(lss_mm_grid_spectrum(big, m.ell, m.cl, m.nell, pkb), "grid spectrum");
            for (int q = 0; q < nsims; q++) {
                lss_drv_check(lss_mm_mock_kappa(big, pkb, m.shift, h, w, seed + 99991, (uint64_t)q, sim), "simulation");
                lss_drv_check(lss_mm_power_spectrum(g, sim, NULL, nb, 0, 0, ellc, cl_sim + (int64_t)q * nb), "spectrum");
            }
            lss_mm_grid_free(big);
            free(pkb);
            free(sim);
        }
        lss_drv_check(lss_mm_bin_spectrum(g, pk, nb, 0, 0, cl_th), "spectrum");
        for (int f = 0; f < nf; f++) {
            lss_mm_post *post;
            const float *g1 = m.sh + 2 * f * np, *g2 = m.sh + (2 * f + 1) * np, *truth = m.kap + f * np;
            char lab[64];
            lss_drv_check(lss_mm_ks(g, g1, g2, scales[best], ks, NULL), "ks");
            lss_drv_check(lss_mm_metrics(np, ks, truth, m.mask, &res[8 * f], &res[8 * f + 1]), "metrics");
            lss_drv_check(lss_mm_wiener(g, pk, g1, g2, m.nv, NULL, wf, NULL, NULL), "wiener");
            lss_drv_check(lss_mm_metrics(np, wf, truth, m.mask, &res[8 * f + 2], &res[8 * f + 3]), "metrics");
            if (dmn) {
                lss_drv_check(lss_mm_net_deepmass(dmn, g1, g2, ks), "DeepMass");
                lss_drv_check(lss_mm_metrics(np, ks, truth, m.mask, &res[8 * f + 6], &res[8 * f + 7]), "metrics");
                if (f == 0) save_png(out, "deepmass0.png", ks, h, w, "DeepMass (field 0)", 0, 0);
                lss_drv_check(lss_mm_ks(g, g1, g2, scales[best], ks, NULL), "ks");
            }
            lss_drv_check(lss_mm_post_create(g, pk, g1, g2, m.nv, &post), "posterior");
            if (net) lss_mm_post_set_residual(post, lss_mm_net_residual, net);
            so.seed = seed + 1000 * (uint64_t)f;
            snprintf(lab, sizeof lab, "massmap eval field %d/%d", f + 1, nf);
            run_sampler(post, &so, nsamp, batch, np, smp, &st, lab);
            tot.evals_per_chain += st.evals_per_chain / nf;
            tot.seconds += st.seconds;
            tot.accept_rate += st.accept_rate / nf;
            lss_drv_check(lss_mm_mean_std(nsamp, np, smp, mean, sd), "mean");
            lss_drv_check(lss_mm_metrics(np, mean, truth, m.mask, &res[8 * f + 4], &res[8 * f + 5]), "metrics");
            lss_mm_post_free(post);
            if (f == 0) {
                /* figure 6 and figure 7 for field 0 */
                for (int s = 0; s < nsamp; s++)
                    lss_drv_check(lss_mm_power_spectrum(g, smp + (int64_t)s * np, NULL, nb, 0, 0, NULL, cl_smp + (int64_t)s * nb), "spectrum");
                lss_drv_check(lss_mm_power_spectrum(g, truth, NULL, nb, 0, 0, NULL, cl_true), "spectrum");
                lss_drv_check(lss_mm_power_spectrum(g, wf, NULL, nb, 0, 0, NULL, cl_wf), "spectrum");
                lss_drv_check(lss_mm_power_spectrum(g, mean, NULL, nb, 0, 0, NULL, cl_mean), "spectrum");
                {
                    int sc = png_scale(h, w) > 2 ? 2 : png_scale(h, w), pw = w * sc + 20, ph = h * sc + 30;
                    lss_image im;
                    double vmin = 1e9, vmax = -1e9, smax = 0;
                    for (int64_t i = 0; i < np; i++) vmin = fmin(vmin, truth[i]), vmax = fmax(vmax, truth[i]), smax = fmax(smax, sd[i]);
                    lss_drv_check(lss_image_init(&im, 4 * pw, 2 * ph), "figure");
                    panel(&im, 0, 0, truth, h, w, sc, vmin, vmax, "truth");
                    panel(&im, pw, 0, ks, h, w, sc, vmin, vmax, "Kaiser-Squires");
                    panel(&im, 2 * pw, 0, wf, h, w, sc, vmin, vmax, "Wiener");
                    panel(&im, 3 * pw, 0, mean, h, w, sc, vmin, vmax, "posterior mean");
                    panel(&im, 0, ph, sd, h, w, sc, 0, smax, "posterior std");
                    for (int s = 0; s < 3 && s < nsamp; s++) panel(&im, (1 + s) * pw, ph, smp + (int64_t)s * np, h, w, sc, vmin, vmax, "sample");
                    snprintf(p, sizeof p, "%s/figure7.png", out);
                    lss_drv_check(lss_image_save_png(&im, p), p);
                    lss_image_free(&im);
                }
            }
        }
        {
            /* table1.csv: method, smoothing, rmse mean/std, r mean/std over fields */
            const char *hd[6] = {"method", "smoothing_arcmin", "rmse", "rmse_std", "r", "r_std"};
            double tab[24];
            int nrow = dmn ? 4 : 3;
            for (int k = 0; k < nrow; k++) {
                double a = 0, a2 = 0, b = 0, b2 = 0;
                for (int f = 0; f < nf; f++) {
                    a += res[8 * f + 2 * k] / nf;
                    a2 += res[8 * f + 2 * k] * res[8 * f + 2 * k] / nf;
                    b += res[8 * f + 2 * k + 1] / nf;
                    b2 += res[8 * f + 2 * k + 1] * res[8 * f + 2 * k + 1] / nf;
                }
                tab[6 * k] = k;
                tab[6 * k + 1] = k == 0 ? scales[best] : 0;
                tab[6 * k + 2] = a;
                tab[6 * k + 3] = sqrt(fmax(a2 - a * a, 0));
                tab[6 * k + 4] = b;
                tab[6 * k + 5] = sqrt(fmax(b2 - b * b, 0));
            }
            snprintf(p, sizeof p, "%s/table1.csv", out);
            lss_drv_check(lss_csv_write(p, 6, hd, nrow, tab), p);
            fprintf(stderr, "Table 1 (%d fields of %d x %d, %d samples each; method 0 = KS, 1 = Wiener, 2 = posterior mean):\n", nf, h, w, nsamp);
            fprintf(stderr, "  KS (%.2f arcmin)   RMSE %.4e  r %.3f\n  Wiener            RMSE %.4e  r %.3f\n  posterior mean    RMSE %.4e  r %.3f\n",
                    scales[best], tab[2], tab[4], tab[8], tab[10], tab[14], tab[16]);
            if (dmn) fprintf(stderr, "  DeepMass          RMSE %.4e  r %.3f\n", tab[20], tab[22]);
            fprintf(stderr, "  (posterior: %s prior)\n", net ? "Gaussian + U-net residual" : "Gaussian");
            const char *hf[9] = {"field", "ks_rmse", "ks_r", "wiener_rmse", "wiener_r", "post_rmse", "post_r", "deepmass_rmse", "deepmass_r"};
            double *fr = xmalloc_d(9 * nf);
            for (int f = 0; f < nf; f++) {
                fr[9 * f] = f;
                for (int k = 0; k < 8; k++) fr[9 * f + 1 + k] = (k >= 6 && !dmn) ? NAN : res[8 * f + k];
            }
            snprintf(p, sizeof p, "%s/fields.csv", out);
            lss_drv_check(lss_csv_write(p, 9, hf, nf, fr), p);
            free(fr);
            /* spectra.csv: figure 6 */
            const char *hs[11] = {"ell", "theory", "truth", "sims_mean", "sims_std", "samples_mean", "samples_std",
                                  "wiener", "posterior_mean", "frac_samples_within_2sigma", "mean_within_1sigma"};
            double *sp = xmalloc_d(11 * nb), *y[5];
            int nwithin = 0;
            for (int b = 0; b < nb; b++) {
                double sm = 0, ss = 0, pm = 0, pv = 0, fin = 0;
                for (int q = 0; q < nsims; q++) sm += cl_sim[(int64_t)q * nb + b] / nsims;
                for (int q = 0; q < nsims; q++) ss += pow(cl_sim[(int64_t)q * nb + b] - sm, 2) / (nsims - 1);
                ss = sqrt(ss);
                for (int s = 0; s < nsamp; s++) pm += cl_smp[(int64_t)s * nb + b] / nsamp;
                for (int s = 0; s < nsamp; s++) {
                    pv += pow(cl_smp[(int64_t)s * nb + b] - pm, 2) / (nsamp - 1);
                    fin += fabs(cl_smp[(int64_t)s * nb + b] - sm) <= 2 * ss;
                }
                double row[11] = {ellc[b], cl_th[b], cl_true[b], sm, ss, pm, sqrt(pv), cl_wf[b], cl_mean[b], fin / nsamp, fabs(pm - sm) <= ss};
                memcpy(sp + 11 * b, row, sizeof row);
                nwithin += fabs(pm - sm) <= ss;
            }
            snprintf(p, sizeof p, "%s/spectra.csv", out);
            lss_drv_check(lss_csv_write(p, 11, hs, nb, sp), p);
            {
                double *xs = xmalloc_d(nb), *ys[5];
                const char *lab[5] = {"theory", "truth", "simulations", "posterior samples", "Wiener"};
                for (int k = 0; k < 5; k++) ys[k] = xmalloc_d(nb);
                for (int b = 0; b < nb; b++) {
                    xs[b] = sp[11 * b];
                    ys[0][b] = sp[11 * b + 1];
                    ys[1][b] = sp[11 * b + 2];
                    ys[2][b] = sp[11 * b + 3];
                    ys[3][b] = sp[11 * b + 5];
                    ys[4][b] = sp[11 * b + 7];
                }
                for (int k = 0; k < 5; k++) y[k] = ys[k];
                lss_plot_opts po = {"convergence power spectra (field 0)", "ell", "C_ell", 1, 1, 0, 0};
                snprintf(p, sizeof p, "%s/spectra.png", out);
                lss_drv_check(lss_plot_lines(p, &po, 5, nb, xs, (const double *const *)y, lab), p);
                for (int k = 0; k < 5; k++) free(ys[k]);
                free(xs);
            }
            fprintf(stderr, "figure 6: posterior samples' mean C_ell within 1 sigma of the simulations in %d of %d ell bins\n", nwithin, nb);
            char extra[1024];
            snprintf(extra, sizeof extra,
                     "\"fields\": %d, \"nsamples\": %d, \"schedule\": \"%s\", \"sigma_min\": %g, \"ks_smoothing_arcmin\": %g, "
                     "\"ks_rmse\": %.6g, \"ks_r\": %.5f, \"wiener_rmse\": %.6g, \"wiener_r\": %.5f, \"post_rmse\": %.6g, \"post_r\": %.5f, "
                     "\"score_evals_per_sample\": %.1f, \"sampling_seconds\": %.2f, \"spectrum_bins_within_1sigma\": %d, "
                     "\"neural_prior\": %d, \"deepmass_rmse\": %.6g, \"deepmass_r\": %.5f",
                     nf, nsamp, sched, so.sigma_min, scales[best], tab[2], tab[4], tab[8], tab[10], tab[14], tab[16], tot.evals_per_chain,
                     tot.seconds, nwithin, net != NULL, dmn ? tab[20] : 0.0, dmn ? tab[22] : 0.0);
            lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
            free(sp);
        }
        free(ellc); free(cl_sim); free(cl_smp); free(cl_true); free(cl_th); free(cl_wf); free(cl_mean);
        lss_mm_grid_free(g);
        free(pk); free(ks); free(wf); free(smp); free(mean); free(sd); free(res);
    }
    lss_mm_net_free(net);
    lss_mm_net_free(dmn);
    free_mock(&m);
    return 0;
}

/* ---------------------------------------------------------------- train-prior */
typedef struct {
    double *loss;
    int n;
    lss_drv_progress *pr;
} train_log;
static void train_cb(void *u, int step, double loss) {
    train_log *t = (train_log *)u;
    if (step - 1 < t->n) t->loss[step - 1] = loss;
    lss_drv_progress_update(t->pr, step);
}

static int cmd_train(int argc, char **argv) {
    static struct option lo[] = {{"mock", 1, 0, 'm'}, {"out", 1, 0, 'o'}, {"steps", 1, 0, 'n'},
                                 {"batch", 1, 0, 'B'}, {"c0", 1, 0, 'c'}, {"lr", 1, 0, 'l'},
                                 {"noise-scale", 1, 0, 's'}, {"deepmass", 0, 0, 'D'}, {"no-spectral", 0, 0, 'N'},
                                 {"seed", 1, 0, 'r'}, {"scale", 1, 0, 'z'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *mdir = NULL, *out = NULL;
    int c, steps = 300, batch = 8, c0 = 16, deepmass = 0, nospec = 0;
    double lr = 1e-3, ns = 0.2;
    uint64_t seed = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'o': out = optarg; break;
        case 'n': steps = (int)lss_drv_int("--steps", optarg, 1, 100000000); break;
        case 'B': batch = (int)lss_drv_int("--batch", optarg, 1, 4096); break;
        case 'c': c0 = (int)lss_drv_int("--c0", optarg, 1, 512); break;
        case 'l': lr = lss_drv_double("--lr", optarg); break;
        case 's': ns = lss_drv_double("--noise-scale", optarg); break;
        case 'D': deepmass = 1; break;
        case 'N': nospec = 1; break;
        case 'r': seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'z':
            if (!strcmp(optarg, "small")) steps = 300, batch = 8, c0 = 16;
            else if (!strcmp(optarg, "paper")) steps = 45000, batch = 32, c0 = 32, lr = 1e-4;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case 'h':
            printf("usage: massmap train-prior --mock DIR --out DIR [--steps 300] [--batch 8] [--c0 16] [--lr 1e-3]\n"
                   "                           [--noise-scale 0.2] [--deepmass] [--no-spectral] [--seed 1] [--scale small|paper]\n"
                   "  Trains the U-net of lss_nn.h on convergence maps simulated on the fly with the generator and\n"
                   "  grid of a `massmap mock` directory (ps.csv, grid.csv): by residual denoising score matching\n"
                   "  (eq. 24, sigma = s N(0,1)) for the prior score, or with --deepmass by MSE from the KS maps of\n"
                   "  noisy masked shear (the mock's noise_var.npy) to kappa. Adam, learning rate / 10 at 40%% and\n"
                   "  80%% of the steps, spectral-norm projection of the convolution weights after every step.\n"
                   "  Writes DIR/prior.ckpt (or deepmass.ckpt), loss.csv and run.json. --scale paper: 45000 steps,\n"
                   "  batch 32, c0 32, lr 1e-4 (a GPU-scale run).\n"
                   "example: massmap train-prior --mock out/mm --out out/mm/prior --steps 300\n");
            return 0;
        default: lss_drv_die(2, "train-prior: unknown option or missing value '%s' (see massmap train-prior --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "train-prior: unexpected argument '%s'", argv[optind]);
    if (!mdir || !out) lss_drv_die(2, "train-prior: --mock and --out are required");
    if (!(lr > 0 && lr < 1) || !(ns > 0 && ns < 10)) lss_drv_die(2, "train-prior: --lr must be in (0, 1) and --noise-scale in (0, 10)");
    {
        mock_data m;
        lss_mm_grid *g, *big;
        double *pk, *pkb, fl;
        lss_mm_net *net;
        lss_mm_net_opts no = {0};
        lss_mm_train_opts to = {0};
        lss_drv_progress pr;
        train_log tl;
        char p[4096];
        load_mock(mdir, &m);
        if (m.h % 4 || m.w % 4) lss_drv_die(2, "%s: maps of %d x %d; the U-net needs sides that are multiples of 4", mdir, m.h, m.w);
        lss_drv_check(lss_mm_grid_create(m.h, m.w, m.pix, &g), "grid");
        lss_drv_check(lss_mm_grid_create(2 * m.h, 2 * m.w, m.pix, &big), "grid");
        pk = xmalloc_d((int64_t)m.h * m.w);
        pkb = xmalloc_d(4 * (int64_t)m.h * m.w);
        lss_drv_check(lss_mm_grid_spectrum(g, m.ell, m.cl, m.nell, pk), "grid spectrum");
        lss_drv_check(lss_mm_grid_spectrum(big, m.ell, m.cl, m.nell, pkb), "grid spectrum");
        no.c0 = c0;
        no.deepmass = deepmass;
        no.seed = seed;
        lss_drv_check(lss_mm_net_create(g, pk, &no, &net), "network");
        to.steps = steps;
        to.batch = batch;
        to.lr = lr;
        to.s = ns;
        to.no_spectral = nospec;
        to.lambda = m.shift;
        to.big = big;
        to.pk_big = pkb;
        to.nvar = m.nv;
        to.seed = seed;
        tl.loss = xmalloc_d(steps);
        tl.n = steps;
        tl.pr = &pr;
        to.progress = train_cb;
        to.progress_user = &tl;
        lss_drv_mkdirs(out);
        lss_drv_progress_init(&pr, deepmass ? "massmap train DeepMass" : "massmap train prior", steps);
        lss_drv_check(lss_mm_net_train(net, &to, &fl), "training");
        lss_drv_progress_end(&pr);
        snprintf(p, sizeof p, "%s/%s", out, deepmass ? "deepmass.ckpt" : "prior.ckpt");
        lss_drv_check(lss_mm_net_save(net, p), p);
        {
            const char *hd[2] = {"step", "loss"};
            double *d = xmalloc_d(2 * (int64_t)steps);
            for (int i = 0; i < steps; i++) d[2 * i] = i + 1, d[2 * i + 1] = tl.loss[i];
            snprintf(p, sizeof p, "%s/loss.csv", out);
            lss_drv_check(lss_csv_write(p, 2, hd, steps, d), p);
            free(d);
        }
        {
            char extra[512];
            snprintf(extra, sizeof extra, "\"network\": \"%s\", \"c0\": %d, \"parameters\": %lld, \"steps\": %d, \"batch\": %d, \"lr\": %g, "
                     "\"noise_scale\": %g, \"spectral_norm\": %d, \"final_loss\": %.6g, \"maps\": \"%dx%d\"",
                     deepmass ? "deepmass" : "score", c0, (long long)lss_mm_net_nparams(net), steps, batch, lr, ns, !nospec, fl, m.h, m.w);
            lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
        }
        fprintf(stderr, "massmap train-prior: %s U-net (%lld parameters), %d steps, final loss %.4g; wrote %s\n", deepmass ? "DeepMass" : "score",
                (long long)lss_mm_net_nparams(net), steps, fl, out);
        lss_mm_net_free(net);
        lss_mm_grid_free(g);
        lss_mm_grid_free(big);
        free(pk); free(pkb); free(tl.loss);
        free_mock(&m);
    }
    return 0;
}

/* ---------------------------------------------------------------- detect */
static int cmd_detect(int argc, char **argv) {
    static struct option lo[] = {{"mock", 1, 0, 'm'}, {"out", 1, 0, 'o'}, {"masses", 1, 0, 'M'},
                                 {"nsamples", 1, 0, 'N'}, {"batch", 1, 0, 'B'}, {"theta", 1, 0, 't'},
                                 {"threshold", 1, 0, 'T'}, {"field", 1, 0, 'f'}, {"schedule", 1, 0, 'S'},
                                 {"seed", 1, 0, 'r'}, {"scale", 1, 0, 'z'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *mdir = NULL, *out = NULL, *sched = "fast";
    double *masses = NULL, theta = 0, thr = 3.0;
    int c, nm = 0, nsamp = 16, batch = 16, field = 0;
    uint64_t seed = 1;
    mock_data m;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'o': out = optarg; break;
        case 'S': sched = optarg; break;
        case 'M': nm = lss_drv_list("--masses", optarg, &masses); break;
        case 'N': nsamp = (int)lss_drv_int("--nsamples", optarg, 2, 1000000); break;
        case 'B': batch = (int)lss_drv_int("--batch", optarg, 1, 100000); break;
        case 't': theta = lss_drv_double("--theta", optarg); break;
        case 'T': thr = lss_drv_double("--threshold", optarg); break;
        case 'f': field = (int)lss_drv_int("--field", optarg, 0, 1 << 30); break;
        case 'r': seed = (uint64_t)lss_drv_int("--seed", optarg, 0, INT64_MAX); break;
        case 'z':
            if (!strcmp(optarg, "small")) nsamp = 16, batch = 16;
            else if (!strcmp(optarg, "paper")) nsamp = 400, batch = 50;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case 'h':
            printf("usage: massmap detect --mock DIR --out DIR [--masses 3e14,6e14,9e14] [--nsamples 16] [--batch 16]\n"
                   "                      [--theta PIX] [--threshold 3] [--field 0] [--schedule fast|paper] [--seed 1]\n"
                   "  Section 7.3: an NFW halo (c200 = 1, z = 0.5, sources at z = 1; M in Msun) is added at the\n"
                   "  centre of the noisy shear of a mock field; posterior samples are filtered with the starlet\n"
                   "  aperture mass of radius theta (default 16 pixels, or a quarter of the field if smaller); a\n"
                   "  sample detects the halo when its filtered maximum within theta/2 of the centre exceeds\n"
                   "  threshold x the standard deviation (observed pixels) of the filtered posterior mean without\n"
                   "  halo. Input SNR (eq. 29): max of the filtered NFW convergence over the std of the filtered\n"
                   "  true background convergence. Writes detect.csv (first row: no halo, the false-detection\n"
                   "  rate), detect.png (figure 9) and run.json.\n"
                   "example: massmap detect --mock out/mm --out out/mm/detect\n");
            return 0;
        default: lss_drv_die(2, "detect: unknown option or missing value '%s' (see massmap detect --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) lss_drv_die(2, "detect: unexpected argument '%s'", argv[optind]);
    if (!mdir || !out) lss_drv_die(2, "detect: --mock and --out are required");
    if (!masses) nm = lss_drv_list("--masses", "3e14,6e14,9e14", &masses);
    for (int k = 0; k < nm; k++)
        if (!(masses[k] > 1e10 && masses[k] < 1e17)) lss_drv_die(2, "option --masses: %g is outside (1e10, 1e17) Msun", masses[k]);
    if (!(thr > 0) || theta < 0) lss_drv_die(2, "--threshold must be > 0 and --theta >= 0");
    schedule(sched, &(lss_mm_sample_opts){0});
    load_mock(mdir, &m);
    if (field >= m.K) lss_drv_die(2, "option --field: %d outside [0, %d)", field, m.K);
    lss_drv_mkdirs(out);
    {
        int h = m.h, w = m.w;
        int64_t np = (int64_t)h * w;
        lss_mm_grid *g;
        lss_params par;
        lss_cosmo *cos;
        double *pk = xmalloc_d(np), bg_std, tb_std;
        float *g1 = xmalloc_f(np), *g2 = xmalloc_f(np), *smp = xmalloc_f((int64_t)nsamp * np), *mean = xmalloc_f(np), *f1 = xmalloc_f(np);
        float *nk = xmalloc_f(np), *z1 = xmalloc_f(np), *z2 = xmalloc_f(np);
        double *rows = xmalloc_d(5 * (int64_t)(nm + 1)), xc = 0.5 * w, yc = 0.5 * h, fp = 0;
        lss_mm_sample_opts so = {0};
        lss_mm_sample_stats st;
        char p[4096];
        const float *truth = m.kap + field * np;
        if (theta == 0) theta = fmin(16.0, 0.25 * fmin(h, w));
        lss_drv_check(lss_mm_grid_create(h, w, m.pix, &g), "grid");
        lss_drv_check(lss_mm_grid_spectrum(g, m.ell, m.cl, m.nell, pk), "grid spectrum");
        lss_mm_params_planck15(&par);
        lss_drv_check(lss_cosmo_create(&par, &cos), "cosmology");
        schedule(sched, &so);
        so.sigma_min = auto_sigma_min(np, m.nv);
        /* background: posterior mean without halo, filtered */
        {
            lss_mm_post *post;
            lss_drv_check(lss_mm_post_create(g, pk, m.sh + 2 * field * np, m.sh + (2 * field + 1) * np, m.nv, &post), "posterior");
            so.seed = seed;
            run_sampler(post, &so, nsamp, batch, np, smp, &st, "massmap detect background");
            lss_mm_post_free(post);
            lss_drv_check(lss_mm_mean_std(nsamp, np, smp, mean, NULL), "mean");
            lss_drv_check(lss_mm_starlet_filter(g, mean, theta, f1), "filter");
            double a = 0, a2 = 0, cnt = 0;
            for (int64_t i = 0; i < np; i++)
                if (m.mask[i] > 0) a += f1[i], a2 += (double)f1[i] * f1[i], cnt++;
            bg_std = sqrt(fmax(a2 / cnt - (a / cnt) * (a / cnt), 0));
            /* false detections: the same criterion on the samples without a halo */
            for (int s = 0; s < nsamp; s++) {
                double mx = -INFINITY;
                lss_drv_check(lss_mm_starlet_filter(g, smp + (int64_t)s * np, theta, f1), "filter");
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++) {
                        double dx = x + 0.5 - xc, dy = y + 0.5 - yc;
                        if (dx * dx + dy * dy <= 0.25 * theta * theta) mx = fmax(mx, f1[(int64_t)y * w + x]);
                    }
                fp += mx > thr * bg_std;
            }
            fp /= nsamp;
            fprintf(stderr, "  no halo: detected in %.0f%% of %d samples (false detections)\n", 100.0 * fp, nsamp);
            lss_drv_check(lss_mm_starlet_filter(g, truth, theta, f1), "filter");
            a = a2 = cnt = 0;
            for (int64_t i = 0; i < np; i++)
                if (m.mask[i] > 0) a += f1[i], a2 += (double)f1[i] * f1[i], cnt++;
            tb_std = sqrt(fmax(a2 / cnt - (a / cnt) * (a / cnt), 0));
        }
        for (int k = 0; k < nm; k++) {
            lss_mm_nfw hl = {masses[k], 1.0, 0.5, 1.0};
            double rs, kss, snr = 0, det = 0;
            lss_mm_post *post;
            lss_rng r;
            lss_drv_check(lss_mm_nfw_params(cos, &hl, &rs, &kss), "NFW");
            memset(nk, 0, sizeof(float) * np);
            memset(z1, 0, sizeof(float) * np);
            memset(z2, 0, sizeof(float) * np);
            lss_drv_check(lss_mm_nfw_add(g, rs, kss, xc, yc, 4, z1, z2, nk), "NFW");
            /* the halo's shear added to the noisy shear (observed pixels only) */
            lss_rng_init(&r, seed, 77);
            for (int64_t i = 0; i < np; i++) {
                int obs = m.nv[i] < 0.5 * LSS_MM_EMPTY_VAR;
                g1[i] = m.sh[2 * field * np + i] + (obs ? z1[i] : 0.0f);
                g2[i] = m.sh[(2 * field + 1) * np + i] + (obs ? z2[i] : 0.0f);
            }
            lss_drv_check(lss_mm_starlet_filter(g, nk, theta, f1), "filter");
            for (int64_t i = 0; i < np; i++) snr = fmax(snr, f1[i]);
            snr /= tb_std;
            lss_drv_check(lss_mm_post_create(g, pk, g1, g2, m.nv, &post), "posterior");
            so.seed = seed + 100 * (uint64_t)(k + 1);
            run_sampler(post, &so, nsamp, batch, np, smp, &st, "massmap detect");
            lss_mm_post_free(post);
            for (int s = 0; s < nsamp; s++) {
                double mx = -INFINITY;
                lss_drv_check(lss_mm_starlet_filter(g, smp + (int64_t)s * np, theta, f1), "filter");
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++) {
                        double dx = x + 0.5 - xc, dy = y + 0.5 - yc;
                        if (dx * dx + dy * dy <= 0.25 * theta * theta) mx = fmax(mx, f1[(int64_t)y * w + x]);
                    }
                det += mx > thr * bg_std;
            }
            rows[5 * (k + 1)] = masses[k];
            rows[5 * (k + 1) + 1] = snr;
            rows[5 * (k + 1) + 2] = det / nsamp;
            rows[5 * (k + 1) + 3] = rs;
            rows[5 * (k + 1) + 4] = kss;
            fprintf(stderr, "  M = %.3g Msun: r_s %.2f arcmin, kappa_s %.4f, input SNR %.2f, detected in %.0f%% of %d samples\n", masses[k], rs, kss,
                    snr, 100.0 * det / nsamp, nsamp);
        }
        {
            const char *hd[5] = {"mass_msun", "snr_input", "detection_rate", "rs_arcmin", "kappa_s"};
            snprintf(p, sizeof p, "%s/detect.csv", out);
            rows[0] = 0;
            rows[1] = 0;
            rows[2] = fp;
            rows[3] = rows[4] = 0;
            lss_drv_check(lss_csv_write(p, 5, hd, nm + 1, rows), p);
            double *xs = xmalloc_d(nm + 1), *ys = xmalloc_d(nm + 1);
            const double *yy[1];
            for (int k = 0; k <= nm; k++) xs[k] = rows[5 * k + 1], ys[k] = rows[5 * k + 2];
            yy[0] = ys;
            lss_plot_opts po = {"cluster detection rate vs input SNR", "input SNR", "detection rate", 0, 0, 0, 0};
            const char *lab[1] = {"posterior samples"};
            snprintf(p, sizeof p, "%s/detect.png", out);
            lss_drv_check(lss_plot_lines(p, &po, 1, nm + 1, xs, yy, lab), p);
            free(xs); free(ys);
            char extra[256];
            snprintf(extra, sizeof extra, "\"theta_pix\": %g, \"threshold\": %g, \"nsamples\": %d, \"background_std\": %.6g", theta, thr, nsamp, bg_std);
            lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
        }
        lss_cosmo_free(cos);
        lss_mm_grid_free(g);
        free(pk); free(g1); free(g2); free(smp); free(mean); free(f1); free(nk); free(z1); free(z2); free(rows);
    }
    free(masses);
    free_mock(&m);
    return 0;
}

int main(int argc, char **argv) {
    lss_drv_prog = "massmap";
    opterr = 0; /* one error line of our own */
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage_main, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "ks")) return cmd_ks(argc - 1, argv + 1);
    if (!strcmp(argv[1], "wiener")) return cmd_wiener(argc - 1, argv + 1);
    if (!strcmp(argv[1], "mock")) return cmd_mock(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bin")) return cmd_bin(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train-prior")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "detect")) return cmd_detect(argc - 1, argv + 1);
    lss_drv_die(2, "unknown command '%s' (see massmap --help)", argv[1]);
    return 2;
}
