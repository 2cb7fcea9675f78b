/* deeplss - the DeepLSS experiment end to end (Kacprzak & Fluri 2022, sections III-VI):
 * a pool of noise-free tomographic fields, CNN and power-spectrum networks trained with the
 * likelihood loss (eq. 14), network summaries for many (parameters, noise) draws, a mixture
 * density network likelihood (appendix C), ensemble MCMC at the fiducial parameters, the gains
 * table (Table II), corner plots and sensitivity maps (section VI).
 *
 *   deeplss sim      simulate the pool of noise-free fields (grid cosmologies x fields)
 *   deeplss train    train CNN and PSD networks for combined, lensing-only and clustering-only maps
 *   deeplss predict  summaries theta_p for many (theta_t, noise) draws (NPY)
 *   deeplss mdn      fit and check the MDN likelihoods
 *   deeplss mcmc     ensemble MCMC for mock observations (fiducial, noisy fiducial, calibration)
 *   deeplss report   gains table, calibration, corner plots, sensitivity maps, REPORT.md
 *   deeplss all      everything above in order
 *
 * Every subcommand works in one directory (--out DIR); `sim` (or `train`, which simulates the pool
 * when it is missing) writes DIR/deeplss.cfg with the sizes of the run, which later subcommands read.
 */
#define _POSIX_C_SOURCE 200809L
#ifndef DEEPLSS_NO_IMPLEMENTATION
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#endif
#include "lss_core.h"
#include "lss_maps.h"
#include "lss_nn.h"
#include "lss_infer.h"
#include "drivers/lss_driver.h"
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DL_NP 7         /* Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g */
#define DL_NOUT (DL_NP + DL_NP * (DL_NP + 1) / 2)
#define DL_NBINS 4      /* tomographic bins */
#define DL_NNET 6       /* {cnn, psd} x {comb, wl, gc} */

static const char *const dl_pname[DL_NP] = {"Omega_m", "sigma_8", "A_IA", "eta_IA", "b_g", "eta_bg", "r_g"};
static const char *const dl_kind_name[2] = {"cnn", "psd"};
static const char *const dl_probe_name[3] = {"comb", "wl", "gc"};
static const char *const dl_probe_long[3] = {"combined", "lensing", "clustering"};

/* ------------------------------------------------------------------ configuration */
typedef struct {
    int scale;                 /* 0 small, 1 paper */
    int nside, grid;           /* field pixels per side; mosaic grid x grid fields per survey */
    double pixel_arcmin;
    int ncosmo, nf_train, nf_test;
    int nconv, nres, channels, kernel;   /* CNN */
    double cnn_in_std;         /* > 0: CNN input channels scaled to this standard deviation; 0: appendix E scaling only */
    int psd_width, nell;                 /* PSD network and ell bins */
    double ell_min, ell_max;
    int batch, steps, eval_every, ckpt_every, ntest;
    double lr_cnn, lr_psd, clip_pct;
    int cosine;                /* 1: cosine decay of the learning rate to 5% over the steps; 0: constant (the paper) */
    int pred_per_cosmo, ncal, nfid, ncheck, check_rep;
    int mdn_width, mdn_layers, mdn_K, mdn_epochs;
    int mdn_robust;            /* 1: robust scaler for the summaries; 0: min-max + normal quantile (appendix C) */
    int walkers, burn, nsteps;
    uint64_t seed;
} dl_cfg;

static void dl_cfg_defaults(dl_cfg *c, int scale) {
    memset(c, 0, sizeof *c);
    c->scale = scale;
    c->seed = 1;
    if (scale == 0) {
        /* one 5 x 5 deg field at half the paper's resolution (32 x 32 pixels of 9.375 arcmin) */
        c->nside = 32; c->grid = 1; c->pixel_arcmin = 9.375;
        c->ncosmo = 64; c->nf_train = 16; c->nf_test = 8;
        c->nconv = 3; c->nres = 1; c->channels = 32; c->kernel = 3; c->cnn_in_std = 0.1;
        c->psd_width = 256; c->nell = 8; c->ell_min = 72; c->ell_max = 1152;
        c->batch = 32; c->steps = 4000; c->eval_every = 100; c->ckpt_every = 500; c->ntest = 256;
        c->lr_cnn = 1e-3; c->lr_psd = 1e-3; c->clip_pct = 50; c->cosine = 1;
        c->pred_per_cosmo = 128; c->ncal = 60; c->nfid = 24; c->ncheck = 16; c->check_rep = 32;
        c->mdn_width = 128; c->mdn_layers = 2; c->mdn_K = 3; c->mdn_epochs = 600; c->mdn_robust = 1;
        c->walkers = 32; c->burn = 150; c->nsteps = 250;
    } else {
        /* the paper: 6 x 6 mosaics of 64 x 64 fields, the released code's CNN and PSD network */
        c->nside = 64; c->grid = 6; c->pixel_arcmin = LSS_DEEPLSS_PIXEL_ARCMIN;
        c->ncosmo = 57; c->nf_train = 36; c->nf_test = 36;
        c->nconv = 4; c->nres = 10; c->channels = 128; c->kernel = 5;
        c->psd_width = 1024; c->nell = 20; c->ell_min = 36; c->ell_max = 2304;
        c->batch = 32; c->steps = 900000; c->eval_every = 1000; c->ckpt_every = 5000; c->ntest = 256;
        c->lr_cnn = 5e-5; c->lr_psd = 2.5e-3; c->clip_pct = 50;
        c->pred_per_cosmo = 1000; c->ncal = 200; c->nfid = 200; c->ncheck = 50; c->check_rep = 100;
        c->mdn_width = 256; c->mdn_layers = 3; c->mdn_K = 4; c->mdn_epochs = 1000;
        c->walkers = 256; c->burn = 100; c->nsteps = 500;
    }
}

#define DL_CFG_FIELDS(X) \
    X(int, scale) X(int, nside) X(int, grid) X(double, pixel_arcmin) X(int, ncosmo) X(int, nf_train) \
    X(int, nf_test) X(int, nconv) X(int, nres) X(int, channels) X(int, kernel) X(int, psd_width) X(int, nell) \
    X(double, ell_min) X(double, ell_max) X(int, batch) X(int, steps) X(int, eval_every) X(int, ckpt_every) \
    X(int, ntest) X(double, lr_cnn) X(double, lr_psd) X(double, clip_pct) X(int, pred_per_cosmo) X(int, ncal) \
    X(int, nfid) X(int, ncheck) X(int, check_rep) X(int, mdn_width) X(int, mdn_layers) X(int, mdn_K) \
    X(int, mdn_epochs) X(int, walkers) X(int, burn) X(int, nsteps) X(int, cosine) X(int, mdn_robust) X(double, cnn_in_std)

static int dl_cfg_save(const dl_cfg *c, const char *dir) {
    char path[4096];
    lss_wfile w;
    int s;
    snprintf(path, sizeof path, "%s/deeplss.cfg", dir);
    if ((s = lss_wfile_open(&w, path)) != LSS_OK) return s;
#define X(t, fld) fprintf(w.f, "%s %.17g\n", #fld, (double)c->fld);
    DL_CFG_FIELDS(X)
#undef X
    fprintf(w.f, "seed %llu\n", (unsigned long long)c->seed);
    return lss_wfile_commit(&w);
}

static int dl_cfg_load(dl_cfg *c, const char *dir) {
    char path[4096], key[64];
    double v;
    unsigned long long sd;
    FILE *f;
    int nread = 0;
    snprintf(path, sizeof path, "%s/deeplss.cfg", dir);
    f = fopen(path, "r");
    if (!f) return lss_seterr(LSS_ERR_IO, "cannot read %s (run 'deeplss sim' or 'deeplss train' first)", path);
    dl_cfg_defaults(c, 0);
    while (fscanf(f, "%63s", key) == 1) {
        if (!strcmp(key, "seed")) {
            if (fscanf(f, "%llu", &sd) != 1) break;
            c->seed = sd;
            nread++;
            continue;
        }
        if (fscanf(f, "%lf", &v) != 1) break;
#define X(t, fld) if (!strcmp(key, #fld)) { c->fld = (t)v; nread++; continue; }
        DL_CFG_FIELDS(X)
#undef X
        fclose(f);
        return lss_seterr(LSS_ERR_FORMAT, "%s: unknown key '%s'", path, key);
    }
    fclose(f);
    if (nread < 36) return lss_seterr(LSS_ERR_FORMAT, "%s: truncated or malformed (%d keys)", path, nread);
    if (c->nside < 8 || c->grid < 1 || c->ncosmo < 1 || c->nf_train < 1 || c->nf_test < 1 || c->batch < 1 ||
        c->nell < 1 || !(c->pixel_arcmin > 0))
        return lss_seterr(LSS_ERR_FORMAT, "%s: values out of range", path);
    return LSS_OK;
}

/* ------------------------------------------------------------------ parameters */
/* Network targets (appendix E): S8 = sigma_8 sqrt(Omega_m / 0.3) in place of sigma_8 and 0.1 A_IA. */
static void dl_to_target(const double *th, double *y) {
    int i;
    for (i = 0; i < DL_NP; i++) y[i] = th[i];
    y[1] = th[1] * sqrt(th[0] / 0.3);
    y[2] = 0.1 * th[2];
}
static void dl_from_target(const double *y, double *th) {
    int i;
    double om = y[0] > 1e-3 ? y[0] : 1e-3;
    for (i = 0; i < DL_NP; i++) th[i] = y[i];
    th[1] = y[1] / sqrt(om / 0.3);
    th[2] = 10.0 * y[2];
}
static void dl_theta_params(const double *th, lss_params *p) {
    lss_params_fiducial(p);
    p->omega_m = th[0]; p->sigma_8 = th[1]; p->a_ia = th[2]; p->eta_ia = th[3];
    p->b_g = th[4]; p->eta_bg = th[5]; p->r_g = th[6];
}
static void dl_fiducial(double *th) {
    lss_params p;
    lss_params_fiducial(&p);
    th[0] = p.omega_m; th[1] = p.sigma_8; th[2] = p.a_ia; th[3] = p.eta_ia;
    th[4] = p.b_g; th[5] = p.eta_bg; th[6] = p.r_g;
}
static const double dl_lo[DL_NP] = {0.15, 0.5, -6.0, -4.0, 0.5, -3.0, 0.4};
static const double dl_hi[DL_NP] = {0.45, 1.2, 6.0, 6.0, 2.5, 3.0, 1.0};

/* ------------------------------------------------------------------ the run context */
typedef struct {
    dl_cfg c;
    char dir[4096];
    int npix;               /* nside^2 */
    int msize;              /* grid * nside */
    int64_t fsize;          /* floats of one noise-free field */
    float *pool;            /* [ncosmo][nf][3 nb][n][n] */
    double *cosmo;          /* [ncosmo][2] Omega_m, sigma_8; cosmology 0 is the fiducial */
    lss_sim *sim;           /* observation (noise) model; cosmology-independent parts only */
    lss_cosmo *cosmo0;
    lss_nz *nz;
    int nzb;
    double kscale;          /* appendix E kappa scale */
    int nthreads;
    lss_sim_work **work;    /* per thread */
    float **obs;            /* per thread: grid^2 observed fields */
    lss_ps **ps;            /* per thread */
    int npairs, nps;        /* all 8-channel pairs; ell bins */
    int pair_probe[64];     /* bit mask of probe sets the pair belongs to: 1 comb, 2 wl, 4 gc */
} dl_ctx;

static void dl_ctx_free(dl_ctx *x) {
    int t;
    if (x->work) for (t = 0; t < x->nthreads; t++) lss_sim_work_free(x->work[t]);
    if (x->obs) for (t = 0; t < x->nthreads; t++) free(x->obs[t]);
    if (x->ps) for (t = 0; t < x->nthreads; t++) lss_ps_free(x->ps[t]);
    free(x->work); free(x->obs); free(x->ps);
    lss_sim_free(x->sim);
    lss_cosmo_free(x->cosmo0);
    if (x->nz) lss_nz_free(x->nz, x->nzb);
    LSS_FREE(x->pool);
    free(x->cosmo);
    memset(x, 0, sizeof *x);
}

static int dl_sim_opts(const dl_cfg *c, lss_sim_opts *o) {
    memset(o, 0, sizeof *o);
    o->nside = c->nside;
    o->pixel_arcmin = c->pixel_arcmin;
    return LSS_OK;
}

/* The observation side: simulator (for its noise model and FFT plans), per-thread buffers, spectra. */
static int dl_ctx_open(dl_ctx *x, const dl_cfg *c, const char *dir) {
    lss_params p;
    lss_sim_opts so;
    double edges[64];
    int s, t, q, i, j;
    memset(x, 0, sizeof *x);
    x->c = *c;
    snprintf(x->dir, sizeof x->dir, "%s", dir);
    x->npix = c->nside * c->nside;
    x->msize = c->grid * c->nside;
#ifdef _OPENMP
    x->nthreads = omp_get_max_threads();
#else
    x->nthreads = 1;
#endif
    if (c->nell > 63) return lss_seterr(LSS_ERR_ARG, "too many ell bins (%d > 63)", c->nell);
    if (c->grid < 1 || c->grid > 64) return lss_seterr(LSS_ERR_ARG, "mosaic grid %d outside [1, 64]", c->grid);
    if (c->walkers < 2 * DL_NP || c->nsteps < 1 || c->burn < 0 || c->ncheck < 0 || c->check_rep < 1 || c->nfid < 1 ||
        c->ncal < 0 || c->pred_per_cosmo < 1 || c->steps < 1)
        return lss_seterr(LSS_ERR_ARG, "deeplss.cfg: walkers (>= %d), MCMC steps, draw counts or training steps out of range",
                          2 * DL_NP);
    lss_params_fiducial(&p);
    if ((s = lss_cosmo_create(&p, &x->cosmo0)) || (s = lss_nz_builtin("deeplss", &x->nz, &x->nzb))) return s;
    if (x->nzb != DL_NBINS) return lss_seterr(LSS_ERR_STATE, "expected 4 tomographic bins, got %d", x->nzb);
    dl_sim_opts(c, &so);
    if ((s = lss_sim_create(x->cosmo0, x->nz, x->nzb, &so, &x->sim))) return s;
    x->fsize = (int64_t)lss_sim_field_size(x->sim);
    x->kscale = lss_kappa_net_scale(LSS_DEEPLSS_SIGMA_E, LSS_DEEPLSS_NGAL_ARCMIN2, c->pixel_arcmin);
    x->work = (lss_sim_work **)calloc((size_t)x->nthreads, sizeof *x->work);
    x->obs = (float **)calloc((size_t)x->nthreads, sizeof *x->obs);
    x->ps = (lss_ps **)calloc((size_t)x->nthreads, sizeof *x->ps);
    if (!x->work || !x->obs || !x->ps) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    if ((s = lss_ps_edges(c->ell_min, c->ell_max, c->nell, c->ell_min, edges))) return s;
    for (t = 0; t < x->nthreads; t++) {
        if ((s = lss_sim_work_create(x->sim, &x->work[t]))) return s;
        x->obs[t] = (float *)malloc(sizeof(float) * (size_t)(c->grid * c->grid) * lss_sim_obs_size(x->sim));
        if (!x->obs[t]) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
        if ((s = lss_ps_create(x->msize, x->msize, c->pixel_arcmin, 2 * DL_NBINS, edges, c->nell, &x->ps[t])))
            return s;
    }
    x->npairs = lss_ps_npairs(x->ps[0], 1);
    x->nps = c->nell;
    for (q = 0; q < x->npairs; q++) {
        lss_ps_pair(x->ps[0], 1, q, &i, &j);
        x->pair_probe[q] = 1 | (j < DL_NBINS ? 2 : 0) | (i >= DL_NBINS ? 4 : 0);
    }
    return LSS_OK;
}

static void dl_path(const dl_ctx *x, char *buf, size_t n, const char *name) {
    if (snprintf(buf, n, "%s/%s", x->dir, name) >= (int)n) buf[n - 1] = 0;
}

/* ------------------------------------------------------------------ pool of noise-free fields */
/* Grid cosmologies: the fiducial first, then a scrambled Sobol sequence over the Table I box. */
static void dl_grid(const dl_cfg *c, double *cosmo) {
    double fid[DL_NP], u[2];
    int k;
    dl_fiducial(fid);
    cosmo[0] = fid[0];
    cosmo[1] = fid[1];
    for (k = 1; k < c->ncosmo; k++) {
        lss_sobol((uint64_t)k, 2, c->seed * 7919u + 11u, u);
        cosmo[2 * k] = dl_lo[0] + (dl_hi[0] - dl_lo[0]) * u[0];
        cosmo[2 * k + 1] = dl_lo[1] + (dl_hi[1] - dl_lo[1]) * u[1];
    }
}

static int dl_pool_simulate(dl_ctx *x) {
    const dl_cfg *c = &x->c;
    int nf = c->nf_train + c->nf_test, k, s;
    lss_sim *sim = NULL;
    lss_sim_opts so;
    lss_drv_progress pr;
    char path[4200];
    int64_t shape[5];
    x->cosmo = (double *)malloc(sizeof(double) * 2 * (size_t)c->ncosmo);
    x->pool = (float *)LSS_MALLOC(sizeof(float) * (size_t)c->ncosmo * (size_t)nf * (size_t)x->fsize);
    if (!x->cosmo || !x->pool) return lss_seterr(LSS_ERR_NOMEM, "pool: out of memory (%d x %d fields)", c->ncosmo, nf);
    dl_grid(c, x->cosmo);
    dl_sim_opts(c, &so);
    lss_drv_progress_init(&pr, "deeplss sim: cosmologies", c->ncosmo);
    for (k = 0; k < c->ncosmo; k++) {
        lss_params p;
        lss_cosmo *cc = NULL;
        lss_params_fiducial(&p);
        p.omega_m = x->cosmo[2 * k];
        p.sigma_8 = x->cosmo[2 * k + 1];
        if ((s = lss_cosmo_create(&p, &cc))) { lss_sim_free(sim); return s; }
        s = sim ? lss_sim_set_cosmo(sim, cc) : lss_sim_create(cc, x->nz, x->nzb, &so, &sim);
        if (s == LSS_OK)
            s = lss_sim_fields(sim, c->seed * 1000003u + (uint64_t)k, 0, nf,
                               x->pool + (size_t)k * (size_t)nf * (size_t)x->fsize);
        lss_cosmo_free(cc);
        if (s) { lss_sim_free(sim); return s; }
        lss_drv_progress_update(&pr, k + 1);
    }
    lss_sim_free(sim);
    lss_drv_progress_end(&pr);
    shape[0] = c->ncosmo; shape[1] = nf; shape[2] = 3 * DL_NBINS; shape[3] = c->nside; shape[4] = c->nside;
    dl_path(x, path, sizeof path, "pool_fields.npy");
    if ((s = lss_npy_save(path, LSS_F32, 5, shape, x->pool))) return s;
    shape[1] = 2;
    dl_path(x, path, sizeof path, "pool_cosmo.npy");
    return lss_npy_save(path, LSS_F64, 2, shape, x->cosmo);
}

static int dl_pool_load(dl_ctx *x) {
    const dl_cfg *c = &x->c;
    char path[4200];
    lss_array a;
    int s, nd;
    int64_t shape[LSS_MAX_DIM];
    dl_path(x, path, sizeof path, "pool_cosmo.npy");
    if ((s = lss_npy_load(path, &a))) return s;
    if (a.dtype != LSS_F64 || a.ndim != 2 || a.shape[0] != c->ncosmo || a.shape[1] != 2) {
        lss_array_free(&a);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected float64 [%d, 2]", path, c->ncosmo);
    }
    x->cosmo = (double *)malloc(sizeof(double) * 2 * (size_t)c->ncosmo);
    if (!x->cosmo) { lss_array_free(&a); return lss_seterr(LSS_ERR_NOMEM, "out of memory"); }
    memcpy(x->cosmo, a.data, sizeof(double) * 2 * (size_t)c->ncosmo);
    lss_array_free(&a);
    dl_path(x, path, sizeof path, "pool_fields.npy");
    if ((s = lss_npy_load_f32(path, &x->pool, &nd, shape))) return s;
    if (nd != 5 || shape[0] != c->ncosmo || shape[1] != c->nf_train + c->nf_test || shape[2] != 3 * DL_NBINS ||
        shape[3] != c->nside || shape[4] != c->nside)
        return lss_seterr(LSS_ERR_FORMAT, "%s: shape does not match deeplss.cfg", path);
    return LSS_OK;
}

/* ------------------------------------------------------------------ one observed survey */
/* A draw: cosmology index, nuisance parameters, fields, noise stream. The map goes to out
 * [8][M][M] (network scaling of appendix E applied) and its spectra to spec [npairs][nell]. */
typedef struct {
    int ci;                       /* grid cosmology */
    double th[DL_NP];             /* full parameter vector (th[0..1] = the grid cosmology) */
    int test;                     /* fields from the held-out part of the pool */
    uint64_t seed, index;         /* noise, field choice and placement stream */
} dl_draw;

static int dl_observe(dl_ctx *x, int tid, const dl_draw *d, float *out, double *spec) {
    const dl_cfg *c = &x->c;
    int G = c->grid * c->grid, nf = c->nf_train + c->nf_test, k, s;
    const float *fptr[4096];
    size_t osz = lss_sim_obs_size(x->sim);
    lss_params p;
    lss_rng r;
    dl_theta_params(d->th, &p);
    lss_rng_init(&r, d->seed, 0x5eed0000u + d->index);
    for (k = 0; k < G; k++) {
        int f = d->test ? c->nf_train + (int)lss_rng_below(&r, (uint32_t)c->nf_test) : (int)lss_rng_below(&r, (uint32_t)c->nf_train);
        const float *field = x->pool + ((size_t)d->ci * (size_t)nf + (size_t)f) * (size_t)x->fsize;
        float *o = x->obs[tid] + (size_t)k * osz;
        if ((s = lss_sim_observe(x->sim, x->work[tid], field, &p, NULL, d->seed + 1, d->index * (uint64_t)G + (uint64_t)k, o)))
            return s;
        lss_scale_for_network(o, DL_NBINS, x->npix, x->kscale);
        fptr[k] = o;
    }
    if ((s = lss_mosaic(fptr, c->grid, 2 * DL_NBINS, c->nside, d->seed + 2, d->index, out))) return s;
    if (spec && (s = lss_ps_compute(x->ps[tid], out, 1, LSS_PS_REAL, spec))) return s;
    return LSS_OK;
}

/* Observes n draws in parallel: maps [n][8][M][M], spectra [n][npairs][nell]. */
static int dl_observe_many(dl_ctx *x, const dl_draw *d, int n, float *maps, double *spec) {
    int64_t msz = (int64_t)2 * DL_NBINS * x->msize * x->msize, ssz = (int64_t)x->npairs * x->nps;
    int status = LSS_OK, i;
    char msg[512] = "";
#pragma omp parallel for schedule(dynamic)
    for (i = 0; i < n; i++) {
        int tid = 0, s;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        s = dl_observe(x, tid, &d[i], maps + i * msz, spec ? spec + i * ssz : NULL);
        if (s) {
#pragma omp critical(dl_err)
            {
                if (status == LSS_OK) { status = s; if (snprintf(msg, sizeof msg, "%s", lss_last_error()) < 0) msg[0] = 0; }
            }
        }
    }
    if (status) return lss_seterr(status, "%s", msg);
    return LSS_OK;
}

/* A training or test draw: uniform grid cosmology, nuisance uniform over the Table I box. */
static void dl_draw_random(const dl_ctx *x, uint64_t seed, uint64_t stream, uint64_t index, int test, dl_draw *d) {
    lss_rng r;
    int k;
    lss_rng_init(&r, seed, stream * 0x100000000ull + index);
    d->ci = (int)lss_rng_below(&r, (uint32_t)x->c.ncosmo);
    d->th[0] = x->cosmo[2 * d->ci];
    d->th[1] = x->cosmo[2 * d->ci + 1];
    for (k = 2; k < DL_NP; k++) d->th[k] = dl_lo[k] + (dl_hi[k] - dl_lo[k]) * lss_rng_uniform(&r);
    d->test = test;
    d->seed = seed * 31u + stream;
    d->index = index;
}

/* ------------------------------------------------------------------ networks */
typedef struct {
    int kind, probe;             /* 0 cnn / 1 psd; 0 comb / 1 wl / 2 gc */
    int nch, nfeat;              /* CNN input channels; PSD input features */
    int ch0;                     /* first channel of the CNN input in the 8-channel map */
    lss_store *st;
    lss_resnet cnn;
    lss_mlp mlp;
    lss_tensor *fmu, *fsd;       /* PSD feature standardisation (checkpointed buffers) */
    lss_tensor *cscale;          /* CNN per-channel input scale 1/std (checkpointed buffer) */
    lss_optim *opt;
    lss_graph *g;
    float *xin;                  /* input batch */
    double loss_acc;
    int loss_n;
} dl_net;

static void dl_net_free(dl_net *n) {
    lss_optim_free(n->opt);
    lss_graph_free(n->g);
    lss_store_free(n->st);
    free(n->xin);
    memset(n, 0, sizeof *n);
}

static int dl_net_init(dl_net *n, const dl_ctx *x, int kind, int probe, int batch, int with_opt) {
    const dl_cfg *c = &x->c;
    int s, q;
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->probe = probe;
    if ((s = lss_store_create(c->seed * 101u + (uint64_t)(kind * 3 + probe), &n->st))) return s;
    if ((s = lss_graph_create(&n->g))) return s;
    if (kind == 0) {
        lss_resnet_opts ro;
        memset(&ro, 0, sizeof ro);
        n->nch = probe == 0 ? 2 * DL_NBINS : DL_NBINS;
        n->ch0 = probe == 2 ? DL_NBINS : 0;
        ro.in_ch = n->nch; ro.in_h = x->msize; ro.in_w = x->msize; ro.nout = DL_NOUT;
        ro.nconv = c->nconv; ro.nres = c->nres; ro.channels = c->channels; ro.kernel = c->kernel;
        if ((s = lss_resnet_init(&n->cnn, n->st, "cnn", &ro))) return s;
        {
            int64_t shc[1] = {n->nch};
            n->cscale = lss_store_buffer(n->st, "cnn.chan_scale", 1, shc, LSS_INIT_ZERO, 1.0f);
        }
        n->xin = (float *)malloc(sizeof(float) * (size_t)batch * (size_t)n->nch * (size_t)x->msize * (size_t)x->msize);
    } else {
        int sizes[4];
        int64_t sh[1];
        for (q = 0; q < x->npairs; q++) n->nfeat += (x->pair_probe[q] >> probe) & 1 ? x->nps : 0;
        sizes[0] = n->nfeat; sizes[1] = c->psd_width; sizes[2] = c->psd_width; sizes[3] = DL_NOUT;
        if ((s = lss_mlp_init(&n->mlp, n->st, "psd", 3, sizes, LSS_ACT_RELU))) return s;
        sh[0] = n->nfeat;
        n->fmu = lss_store_buffer(n->st, "psd.feat_mean", 1, sh, LSS_INIT_ZERO, 0.0f);
        n->fsd = lss_store_buffer(n->st, "psd.feat_std", 1, sh, LSS_INIT_ZERO, 1.0f);
        n->xin = (float *)malloc(sizeof(float) * (size_t)batch * (size_t)n->nfeat);
    }
    if ((s = lss_store_status(n->st))) return s;
    if (!n->xin) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    if (with_opt) {
        lss_optim_opts oo;
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM;
        oo.lr = kind == 0 ? c->lr_cnn : c->lr_psd;
        oo.eps = 1e-7; /* Keras's Adam */
        oo.clip = LSS_CLIP_PERCENTILE;
        oo.clip_percentile = c->clip_pct;
        oo.clip_history = 10000;
        if (c->cosine) {
            oo.sched = LSS_SCHED_COSINE;
            oo.total_steps = c->steps;
            oo.lr_min = 0.05 * oo.lr;
        }
        if ((s = lss_optim_create(n->st, &oo, &n->opt))) return s;
    }
    return LSS_OK;
}

/* Network input for sample i of a batch: CNN channels or standardised spectra. */
static void dl_net_input(const dl_ctx *x, dl_net *n, int i, const float *map, const double *spec) {
    if (n->kind == 0) {
        size_t plane = (size_t)x->msize * (size_t)x->msize;
        int ch;
        size_t p;
        for (ch = 0; ch < n->nch; ch++) {
            const float *src = map + (size_t)(n->ch0 + ch) * plane;
            float *dst = n->xin + ((size_t)i * n->nch + ch) * plane, sc = n->cscale->data[ch];
            for (p = 0; p < plane; p++) dst[p] = src[p] * sc;
        }
    } else {
        int q, b, f = 0;
        for (q = 0; q < x->npairs; q++) {
            if (!((x->pair_probe[q] >> n->probe) & 1)) continue;
            for (b = 0; b < x->nps; b++, f++) {
                double v = spec[q * x->nps + b];
                v = (v - n->fmu->data[f]) / n->fsd->data[f];
                n->xin[(size_t)i * n->nfeat + f] = isfinite(v) ? (float)v : 0.0f;
            }
        }
    }
}

static lss_tensor *dl_net_forward(const dl_ctx *x, dl_net *n, int nb) {
    lss_tensor *in;
    if (n->kind == 0) {
        int64_t sh[4] = {nb, n->nch, x->msize, x->msize};
        in = lss_view(n->g, n->xin, 4, sh);
        return lss_resnet_forward(n->g, &n->cnn, in);
    } else {
        int64_t sh[2] = {nb, n->nfeat};
        in = lss_view(n->g, n->xin, 2, sh);
        return lss_mlp_forward(n->g, &n->mlp, in);
    }
}

/* Feature mean and std of the PSD inputs from ns spectra. */
static void dl_psd_standardise(const dl_ctx *x, dl_net *n, const double *spec, int ns) {
    int q, b, f = 0, i;
    for (q = 0; q < x->npairs; q++) {
        if (!((x->pair_probe[q] >> n->probe) & 1)) continue;
        for (b = 0; b < x->nps; b++, f++) {
            double s1 = 0, s2 = 0, m, v;
            int cnt = 0;
            for (i = 0; i < ns; i++) {
                double y = spec[(size_t)i * x->npairs * x->nps + q * x->nps + b];
                if (isfinite(y)) { s1 += y; s2 += y * y; cnt++; }
            }
            m = cnt ? s1 / cnt : 0;
            v = cnt ? s2 / cnt - m * m : 1;
            n->fmu->data[f] = (float)m;
            n->fsd->data[f] = (float)(v > 0 ? sqrt(v) : 1.0);
        }
    }
}

static void dl_net_ckpt_path(const dl_ctx *x, const dl_net *n, char *buf, size_t len) {
    snprintf(buf, len, "%s/net_%s_%s.ckpt", x->dir, dl_kind_name[n->kind], dl_probe_name[n->probe]);
}

/* Predicted parameters (targets transformed back) for nb inputs already in n->xin. */
static int dl_net_predict(const dl_ctx *x, dl_net *n, int nb, double *theta) {
    lss_tensor *out;
    int i, k;
    lss_graph_reset(n->g);
    lss_graph_set_training(n->g, 0);
    out = dl_net_forward(x, n, nb);
    if (!out) return lss_graph_status(n->g) ? lss_graph_status(n->g) : LSS_ERR_STATE;
    for (i = 0; i < nb; i++) {
        double y[DL_NP];
        for (k = 0; k < DL_NP; k++) y[k] = out->data[(size_t)i * DL_NOUT + k];
        dl_from_target(y, theta + (size_t)i * DL_NP);
    }
    return LSS_OK;
}

/* Loss of a batch already in n->xin against targets y [nb][7]; training: backward and one Adam step. */
static int dl_net_loss(const dl_ctx *x, dl_net *n, int nb, float *y, int train, double *loss) {
    lss_tensor *out, *tg, *l;
    int64_t sh[2] = {nb, DL_NP};
    int s;
    lss_graph_reset(n->g);
    lss_graph_set_training(n->g, train);
    out = dl_net_forward(x, n, nb);
    tg = lss_view(n->g, y, 2, sh);
    l = out && tg ? lss_op_gauss_nll(n->g, out, tg) : NULL;
    if (!l) return lss_graph_status(n->g) ? lss_graph_status(n->g) : LSS_ERR_STATE;
    *loss = l->data[0];
    if (!train) return LSS_OK;
    lss_store_zero_grad(n->st);
    if ((s = lss_backward(n->g, l))) return s;
    return lss_optim_step(n->opt);
}

/* ------------------------------------------------------------------ small utilities */
static int dl_file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static int dl_save_f64(const dl_ctx *x, const char *name, int64_t n, int d, const double *v) {
    char path[4200];
    int64_t sh[2] = {n, d};
    dl_path(x, path, sizeof path, name);
    return lss_npy_save(path, LSS_F64, 2, sh, v);
}

static int dl_load_f64(const dl_ctx *x, const char *name, int64_t *n, int d, double **v) {
    char path[4200];
    lss_array a;
    int s;
    dl_path(x, path, sizeof path, name);
    if ((s = lss_npy_load(path, &a))) return s;
    if (a.dtype != LSS_F64 || a.ndim != 2 || a.shape[1] != d) {
        lss_array_free(&a);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected a float64 array [n, %d]", path, d);
    }
    *n = a.shape[0];
    *v = (double *)a.data;
    return LSS_OK;
}

static int dl_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
/* Percentile (0..100) of the finite values of v[n] (v is reordered); NaN when none. */
static double dl_pct(double *v, int n, double q) {
    int m = 0, i;
    double pos;
    for (i = 0; i < n; i++) if (isfinite(v[i])) v[m++] = v[i];
    if (m == 0) return NAN;
    qsort(v, (size_t)m, sizeof(double), dl_cmp_double);
    pos = q / 100.0 * (m - 1);
    i = (int)floor(pos);
    if (i >= m - 1) return v[m - 1];
    return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

/* Which networks a subcommand works on: bit (kind * 3 + probe). */
static int dl_net_mask(const char *nets, const char *probes) {
    int m = 0, k, p;
    for (k = 0; k < 2; k++)
        for (p = 0; p < 3; p++)
            if (strstr(nets, dl_kind_name[k]) && strstr(probes, dl_probe_name[p])) m |= 1 << (k * 3 + p);
    return m;
}

/* ------------------------------------------------------------------ train */
typedef struct {
    int mask, resume, steps_override;
    double lr_cnn, lr_psd;
} dl_train_opts;

static int dl_train(dl_ctx *x, const dl_train_opts *to) {
    const dl_cfg *c = &x->c;
    dl_net nets[DL_NNET];
    int nn = 0, i, k, s = LSS_OK, B = c->batch, t, t0 = 0, nrows = 0, cap_rows, NT = c->ntest, ncols;
    int64_t msz = (int64_t)2 * DL_NBINS * x->msize * x->msize, ssz = (int64_t)x->npairs * x->nps;
    float *maps = NULL, *tmaps = NULL, *y = NULL, *ty = NULL;
    double *spec = NULL, *tspec = NULL, *rows = NULL, t_start = lss_time_now(), t_steps = 0;
    dl_draw *dr = NULL;
    char path[4200], hdr[2 + 2 * DL_NNET][48];
    const char *hp[2 + 2 * DL_NNET];
    int steps = to->steps_override > 0 ? to->steps_override : c->steps;
    const int NSTD = c->scale == 0 ? 512 : 64;   /* draws for the input standardisation */
    lss_drv_progress pr;
    int64_t nskip = 0;

    memset(nets, 0, sizeof nets);
    for (k = 0; k < DL_NNET; k++) {
        if (!((to->mask >> k) & 1)) continue;
        if ((s = dl_net_init(&nets[nn], x, k / 3, k % 3, B > 64 ? B : 64, 1))) goto out;
        fprintf(stderr, "deeplss train: %s_%s network: %lld trainable parameters\n", dl_kind_name[k / 3], dl_probe_name[k % 3],
                (long long)lss_store_nparams(nets[nn].st));
        if (k / 3 == 0 && to->lr_cnn > 0) lss_optim_set_lr(nets[nn].opt, to->lr_cnn);
        if (k / 3 == 1 && to->lr_psd > 0) lss_optim_set_lr(nets[nn].opt, to->lr_psd);
        nn++;
    }
    if (nn == 0) { s = lss_seterr(LSS_ERR_ARG, "no network selected"); goto out; }
    {
        int nb = NT > B ? NT : B;
        if (nb < NSTD) nb = NSTD;
        maps = (float *)malloc(sizeof(float) * (size_t)B * (size_t)msz);
        spec = (double *)malloc(sizeof(double) * (size_t)nb * (size_t)ssz);
        tmaps = (float *)malloc(sizeof(float) * (size_t)(NT > 0 ? NT : 1) * (size_t)msz);
        tspec = (double *)malloc(sizeof(double) * (size_t)(NT > 0 ? NT : 1) * (size_t)ssz);
        y = (float *)malloc(sizeof(float) * (size_t)B * DL_NP);
        ty = (float *)malloc(sizeof(float) * (size_t)(NT > 0 ? NT : 1) * DL_NP);
        dr = (dl_draw *)malloc(sizeof(dl_draw) * (size_t)nb);
    }
    ncols = 1 + 2 * nn;
    cap_rows = steps / (c->eval_every > 0 ? c->eval_every : steps) + 4;
    rows = (double *)malloc(sizeof(double) * (size_t)cap_rows * (size_t)ncols);
    if (!maps || !spec || !tmaps || !tspec || !y || !ty || !dr || !rows) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }

    /* resume, or standardise the inputs from NSTD training draws */
    if (to->resume) {
        int64_t st0 = -1;
        for (i = 0; i < nn; i++) {
            dl_net_ckpt_path(x, &nets[i], path, sizeof path);
            if ((s = lss_ckpt_load(path, nets[i].st, nets[i].opt))) goto out;
            if (st0 >= 0 && lss_optim_steps(nets[i].opt) != st0) {
                s = lss_seterr(LSS_ERR_STATE, "checkpoints are at different steps (%lld and %lld): resume them together",
                               (long long)st0, (long long)lss_optim_steps(nets[i].opt));
                goto out;
            }
            st0 = lss_optim_steps(nets[i].opt);
        }
        t0 = (int)st0;
        dl_path(x, path, sizeof path, "loss.csv");
        {
            lss_csv cv;
            if (lss_csv_read(path, &cv) == LSS_OK) {
                if (cv.ncols == ncols)
                    for (i = 0; i < cv.nrows && nrows < cap_rows; i++)
                        if (cv.data[i * ncols] <= t0) memcpy(rows + (size_t)nrows++ * ncols, cv.data + (size_t)i * ncols, sizeof(double) * ncols);
                lss_csv_free(&cv);
            }
        }
        fprintf(stderr, "deeplss train: resuming at step %d\n", t0);
    } else {
        for (i = 0; i < NSTD; i++) dl_draw_random(x, c->seed, 3, (uint64_t)i, 0, &dr[i]);
        for (i = 0; i < NSTD && s == LSS_OK; i += B) {
            int nb = NSTD - i < B ? NSTD - i : B;
            s = dl_observe_many(x, dr + i, nb, maps, spec + (size_t)i * ssz);
        }
        if (s) goto out;
        for (k = 0; k < nn; k++) if (nets[k].kind == 1) dl_psd_standardise(x, &nets[k], spec, NSTD);
        /* CNN inputs: each channel divided by its standard deviation over B of these maps (the lensing channels
           carry unit-variance noise after appendix E, the clustering ones a few tenths) */
        for (k = 0; k < nn; k++) {
            int ch;
            if (nets[k].kind != 0) continue;
            for (ch = 0; ch < nets[k].nch; ch++) {
                double s1 = 0, s2 = 0, v, cnt = (double)B * x->msize * x->msize;
                int64_t q, plane = (int64_t)x->msize * x->msize;
                for (i = 0; i < B; i++) {
                    const float *mp = maps + i * msz + (int64_t)(nets[k].ch0 + ch) * plane;
                    for (q = 0; q < plane; q++) { s1 += mp[q]; s2 += (double)mp[q] * mp[q]; }
                }
                v = s2 / cnt - (s1 / cnt) * (s1 / cnt);
                nets[k].cscale->data[ch] = (float)(c->cnn_in_std > 0 && v > 0 ? c->cnn_in_std / sqrt(v) : 1.0);
            }
        }
    }
    /* the held-out test set: fields from the test part of the pool, fixed draws */
    for (i = 0; i < NT; i++) {
        double yy[DL_NP];
        dl_draw_random(x, c->seed, 2, (uint64_t)i, 1, &dr[i]);
        dl_to_target(dr[i].th, yy);
        for (k = 0; k < DL_NP; k++) ty[i * DL_NP + k] = (float)yy[k];
    }
    if (NT > 0 && (s = dl_observe_many(x, dr, NT, tmaps, tspec))) goto out;

    snprintf(hdr[0], sizeof hdr[0], "step");
    for (i = 0; i < nn; i++) {
        snprintf(hdr[1 + 2 * i], sizeof hdr[0], "train_%s_%s", dl_kind_name[nets[i].kind], dl_probe_name[nets[i].probe]);
        snprintf(hdr[2 + 2 * i], sizeof hdr[0], "test_%s_%s", dl_kind_name[nets[i].kind], dl_probe_name[nets[i].probe]);
    }
    for (i = 0; i < ncols; i++) hp[i] = hdr[i];

    lss_drv_progress_init(&pr, "deeplss train: steps", steps);
    for (t = t0; t < steps; t++) {
        double ts = lss_time_now();
        for (i = 0; i < B; i++) {
            double yy[DL_NP];
            dl_draw_random(x, c->seed, 1, (uint64_t)t * (uint64_t)B + (uint64_t)i, 0, &dr[i]);
            dl_to_target(dr[i].th, yy);
            for (k = 0; k < DL_NP; k++) y[i * DL_NP + k] = (float)yy[k];
        }
        if ((s = dl_observe_many(x, dr, B, maps, spec))) goto out;
        /* the networks are independent: one per thread (their GEMMs then run single-threaded inside) */
        {
            int kst[DL_NNET];
#pragma omp parallel for schedule(dynamic, 1)
            for (k = 0; k < nn; k++) {
                double l = 0;
                int ii;
                for (ii = 0; ii < B; ii++) dl_net_input(x, &nets[k], ii, maps + ii * msz, spec + ii * ssz);
                kst[k] = dl_net_loss(x, &nets[k], B, y, 1, &l);
                if (kst[k] == LSS_OK) { nets[k].loss_acc += l; nets[k].loss_n++; }
            }
            for (k = 0; k < nn; k++) {
                if (kst[k] == LSS_ERR_NUMERIC) nskip++;   /* non-finite gradient: that network's step skipped */
                else if (kst[k]) { s = lss_seterr(kst[k], "training %s_%s: step %d failed", dl_kind_name[nets[k].kind], dl_probe_name[nets[k].probe], t + 1); goto out; }
            }
        }
        t_steps += lss_time_now() - ts;
        if ((c->eval_every > 0 && (t + 1) % c->eval_every == 0) || t + 1 == steps) {
            double *row = rows + (size_t)(nrows < cap_rows ? nrows : cap_rows - 1) * ncols;
            row[0] = t + 1;
            for (k = 0; k < nn; k++) {
                double tl = 0;
                int done = 0;
                row[1 + 2 * k] = nets[k].loss_n ? nets[k].loss_acc / nets[k].loss_n : NAN;
                nets[k].loss_acc = 0;
                nets[k].loss_n = 0;
                while (done < NT) {
                    int nb = NT - done < B ? NT - done : B;
                    double l;
                    for (i = 0; i < nb; i++) dl_net_input(x, &nets[k], i, tmaps + (done + i) * msz, tspec + (done + i) * ssz);
                    if ((s = dl_net_loss(x, &nets[k], nb, ty + done * DL_NP, 0, &l))) goto out;
                    tl += l * nb;
                    done += nb;
                }
                row[2 + 2 * k] = NT > 0 ? tl / NT : NAN;
            }
            if (nrows < cap_rows) nrows++;
        }
        if ((c->ckpt_every > 0 && (t + 1) % c->ckpt_every == 0) || t + 1 == steps) {
            for (k = 0; k < nn; k++) {
                dl_net_ckpt_path(x, &nets[k], path, sizeof path);
                if ((s = lss_ckpt_save(path, nets[k].st, nets[k].opt))) goto out;
            }
            dl_path(x, path, sizeof path, "loss.csv");
            if ((s = lss_csv_write(path, ncols, hp, nrows, rows))) goto out;
        }
        lss_drv_progress_update(&pr, t + 1);
    }
    lss_drv_progress_end(&pr);
    if (nskip) fprintf(stderr, "deeplss train: %lld network steps skipped (non-finite gradients)\n", (long long)nskip);
    fprintf(stderr, "deeplss train: %d steps of %d networks in %.1f s (%.3f s per training step: data, forward, backward, "
                    "update; the rest is setup, test-set evaluation and checkpoints)\n", steps - t0, nn,
            lss_time_now() - t_start, steps > t0 ? t_steps / (steps - t0) : 0.0);
    /* loss curves */
    if (nrows > 0) {
        double *xs = (double *)malloc(sizeof(double) * (size_t)nrows), *ys[2 * DL_NNET];
        const char *lb[2 * DL_NNET];
        lss_plot_opts po;
        int j;
        if (!xs) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        for (j = 0; j < 2 * nn; j++) ys[j] = (double *)malloc(sizeof(double) * (size_t)nrows);
        for (i = 0; i < nrows; i++) {
            xs[i] = rows[(size_t)i * ncols];
            for (j = 0; j < 2 * nn; j++) if (ys[j]) ys[j][i] = rows[(size_t)i * ncols + 1 + j];
        }
        for (j = 0; j < 2 * nn; j++) lb[j] = hp[1 + j];
        memset(&po, 0, sizeof po);
        po.title = "DeepLSS likelihood loss (eq. 14): train (running mean) and held-out test";
        po.xlabel = "step";
        po.ylabel = "loss";
        po.width = 900;
        po.height = 560;
        dl_path(x, path, sizeof path, "loss.png");
        for (j = 0; j < 2 * nn; j++) if (!ys[j]) s = lss_seterr(LSS_ERR_NOMEM, "out of memory");
        if (s == LSS_OK) s = lss_plot_lines(path, &po, 2 * nn, nrows, xs, (const double *const *)ys, lb);
        for (j = 0; j < 2 * nn; j++) free(ys[j]);
        free(xs);
    }
out:
    for (k = 0; k < DL_NNET; k++) dl_net_free(&nets[k]);
    free(maps); free(spec); free(tmaps); free(tspec); free(y); free(ty); free(dr); free(rows);
    return s;
}

/* ------------------------------------------------------------------ predict */
/* Draw sets of section IV: "mdn" (every grid cosmology x pred_per_cosmo Sobol draws of the nuisance
 * parameters), "cal" (ncal draws at random grid cosmologies and nuisance), "fid" (nfid noise
 * realisations at the fiducial parameters), "check" (ncheck random parameter points x check_rep). */
enum { DL_SET_MDN = 0, DL_SET_CAL, DL_SET_FID, DL_SET_CHECK, DL_NSET };
static const char *const dl_set_name[DL_NSET] = {"mdn", "cal", "fid", "check"};

static int dl_set_size(const dl_cfg *c, int set) {
    switch (set) {
    case DL_SET_MDN: return c->ncosmo * c->pred_per_cosmo;
    case DL_SET_CAL: return c->ncal;
    case DL_SET_FID: return c->nfid;
    default: return c->ncheck * c->check_rep;
    }
}

static void dl_set_draw(const dl_ctx *x, int set, int i, dl_draw *d) {
    const dl_cfg *c = &x->c;
    uint64_t seed = c->seed * 7u + 1000u;
    int k;
    if (set == DL_SET_MDN) {
        double u[DL_NP - 2];
        int ci = i / c->pred_per_cosmo, r = i % c->pred_per_cosmo;
        lss_sobol((uint64_t)r, DL_NP - 2, seed + (uint64_t)ci, u);
        d->ci = ci;
        d->th[0] = x->cosmo[2 * ci];
        d->th[1] = x->cosmo[2 * ci + 1];
        for (k = 2; k < DL_NP; k++) d->th[k] = dl_lo[k] + (dl_hi[k] - dl_lo[k]) * u[k - 2];
        d->test = 1;
        d->seed = seed * 31u + 10u;
        d->index = (uint64_t)i;
    } else if (set == DL_SET_CAL) {
        dl_draw_random(x, seed, 11, (uint64_t)i, 1, d);
    } else if (set == DL_SET_FID) {
        d->ci = 0;
        dl_fiducial(d->th);
        d->test = 1;
        d->seed = seed * 31u + 12u;
        d->index = (uint64_t)i;
    } else {
        dl_draw_random(x, seed, 13, (uint64_t)(i / c->check_rep), 1, d);
        d->seed = seed * 31u + 14u;
        d->index = (uint64_t)i;
    }
}

static int dl_predict(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    dl_net nets[DL_NNET];
    int nn = 0, k, s = LSS_OK, set, CH = c->scale == 0 ? 128 : c->batch, i, j;
    int64_t msz = (int64_t)2 * DL_NBINS * x->msize * x->msize, ssz = (int64_t)x->npairs * x->nps;
    float *maps = (float *)malloc(sizeof(float) * (size_t)CH * (size_t)msz);
    double *spec = (double *)malloc(sizeof(double) * (size_t)CH * (size_t)ssz);
    dl_draw *dr = (dl_draw *)malloc(sizeof(dl_draw) * (size_t)CH);
    double *pred[DL_NNET] = {0}, *tht = NULL, t_start = lss_time_now();
    char path[4200], name[128];
    memset(nets, 0, sizeof nets);
    if (!maps || !spec || !dr) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        if ((s = dl_net_init(&nets[nn], x, k / 3, k % 3, CH, 0))) goto out;
        dl_net_ckpt_path(x, &nets[nn], path, sizeof path);
        if ((s = lss_ckpt_load(path, nets[nn].st, NULL))) goto out;
        nn++;
    }
    for (set = 0; set < DL_NSET; set++) {
        int n = dl_set_size(c, set);
        lss_drv_progress pr;
        char label[64];
        if (n <= 0) continue;
        tht = (double *)malloc(sizeof(double) * (size_t)n * DL_NP);
        for (k = 0; k < nn; k++) pred[k] = (double *)malloc(sizeof(double) * (size_t)n * DL_NP);
        for (k = 0; k < nn; k++) if (!pred[k]) tht = (free(tht), NULL);
        if (!tht) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        snprintf(label, sizeof label, "deeplss predict: %s", dl_set_name[set]);
        lss_drv_progress_init(&pr, label, n);
        for (i = 0; i < n; i += CH) {
            int nb = n - i < CH ? n - i : CH;
            for (j = 0; j < nb; j++) {
                dl_set_draw(x, set, i + j, &dr[j]);
                memcpy(tht + (size_t)(i + j) * DL_NP, dr[j].th, sizeof(double) * DL_NP);
            }
            if ((s = dl_observe_many(x, dr, nb, maps, spec))) goto out;
            for (k = 0; k < nn; k++) {
                for (j = 0; j < nb; j++) dl_net_input(x, &nets[k], j, maps + j * msz, spec + j * ssz);
                if ((s = dl_net_predict(x, &nets[k], nb, pred[k] + (size_t)i * DL_NP))) goto out;
            }
            lss_drv_progress_update(&pr, i + nb);
        }
        lss_drv_progress_end(&pr);
        snprintf(name, sizeof name, "theta_%s.npy", dl_set_name[set]);
        if ((s = dl_save_f64(x, name, n, DL_NP, tht))) goto out;
        for (k = 0; k < nn; k++) {
            snprintf(name, sizeof name, "pred_%s_%s_%s.npy", dl_set_name[set], dl_kind_name[nets[k].kind],
                     dl_probe_name[nets[k].probe]);
            if ((s = dl_save_f64(x, name, n, DL_NP, pred[k]))) goto out;
            free(pred[k]);
            pred[k] = NULL;
        }
        free(tht);
        tht = NULL;
    }
    fprintf(stderr, "deeplss predict: done in %.1f s\n", lss_time_now() - t_start);
out:
    for (k = 0; k < DL_NNET; k++) { dl_net_free(&nets[k]); free(pred[k]); }
    free(tht); free(maps); free(spec); free(dr);
    return s;
}

/* ------------------------------------------------------------------ MDN */
static void dl_mdn_opts(const dl_cfg *c, lss_mdn_opts *mo) {
    memset(mo, 0, sizeof *mo);
    mo->nhidden = c->mdn_layers;
    mo->width = c->mdn_width;
    mo->K = c->mdn_K;
    mo->seed = c->seed * 13u + 5u;
    mo->max_epochs = c->mdn_epochs;
    mo->batch = c->scale == 0 ? 512 : 5000;
    mo->lr = 1e-3;
    mo->patience = 50;
    if (c->mdn_robust) mo->scale_p = LSS_SCALE_ROBUST;
}

static int dl_mdn(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    int k, s = LSS_OK;
    int64_t n, n2, nc, nc2;
    double *tt = NULL, *tp = NULL, *ct = NULL, *cp = NULL, *dmu = NULL, *dsig = NULL, t_start = lss_time_now();
    double summ[DL_NNET][6];
    char name[128], path[4200];
    lss_mdn *m = NULL;
    lss_mdn_opts mo;
    const char *hdr[8] = {"kind", "probe", "dmu_median", "dmu_lo", "dmu_hi", "dsig_median", "dsig_lo", "dsig_hi"};
    double rows[DL_NNET * 8];
    int nrows = 0;
    dl_mdn_opts(c, &mo);
    if ((s = dl_load_f64(x, "theta_mdn.npy", &n, DL_NP, &tt))) goto out;
    if ((s = dl_load_f64(x, "theta_check.npy", &nc, DL_NP, &ct))) goto out;
    if (nc != (int64_t)c->ncheck * c->check_rep) { s = lss_seterr(LSS_ERR_FORMAT, "theta_check.npy: unexpected size"); goto out; }
    dmu = (double *)malloc(sizeof(double) * (size_t)(c->ncheck > 0 ? c->ncheck : 1) * DL_NP);
    dsig = (double *)malloc(sizeof(double) * (size_t)(c->ncheck > 0 ? c->ncheck : 1) * DL_NP);
    if (!dmu || !dsig) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        double *ctu;
        lss_mdn_check_summary cs;
        int i;
        if (!((mask >> k) & 1)) continue;
        snprintf(name, sizeof name, "pred_mdn_%s_%s.npy", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        if ((s = dl_load_f64(x, name, &n2, DL_NP, &tp))) goto out;
        if (n2 != n) { s = lss_seterr(LSS_ERR_FORMAT, "%s: %lld rows, theta_mdn.npy has %lld", name, (long long)n2, (long long)n); goto out; }
        if ((s = lss_mdn_create(DL_NP, DL_NP, &mo, &m))) goto out;
        if ((s = lss_mdn_fit(m, tt, tp, n, &mo))) goto out;
        fprintf(stderr, "deeplss mdn %s_%s: %d epochs, best validation loss %.4f at epoch %d\n", dl_kind_name[k / 3],
                dl_probe_name[k % 3], m->epochs, m->best_val, m->best_epoch);
        snprintf(name, sizeof name, "mdn_%s_%s.ckpt", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        dl_path(x, path, sizeof path, name);
        if ((s = lss_mdn_save(m, path))) goto out;
        /* appendix C: the MDN's samples against held-out simulated summaries at the same theta_t */
        snprintf(name, sizeof name, "pred_check_%s_%s.npy", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        if ((s = dl_load_f64(x, name, &nc2, DL_NP, &cp))) goto out;
        ctu = (double *)malloc(sizeof(double) * (size_t)(c->ncheck > 0 ? c->ncheck : 1) * DL_NP);
        if (!ctu) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        for (i = 0; i < c->ncheck; i++) memcpy(ctu + i * DL_NP, ct + (size_t)i * c->check_rep * DL_NP, sizeof(double) * DL_NP);
        snprintf(name, sizeof name, "mdn_check_%s_%s.csv", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        dl_path(x, path, sizeof path, name);
        s = c->ncheck > 0 ? lss_mdn_check(m, ctu, c->ncheck, cp, c->check_rep, 1000, c->seed + 77u, dmu, dsig) : LSS_OK;
        if (s == LSS_OK && c->ncheck > 0) s = lss_mdn_check_report(dmu, dsig, c->ncheck, DL_NP, path, &cs);
        free(ctu);
        if (s) goto out;
        if (c->ncheck > 0) {
            summ[k][0] = cs.dmu_median; summ[k][1] = cs.dmu_lo; summ[k][2] = cs.dmu_hi;
            summ[k][3] = cs.dsig_median; summ[k][4] = cs.dsig_lo; summ[k][5] = cs.dsig_hi;
            rows[nrows * 8] = k / 3;
            rows[nrows * 8 + 1] = k % 3;
            memcpy(rows + nrows * 8 + 2, summ[k], sizeof(double) * 6);
            nrows++;
        }
        lss_mdn_free(m);
        m = NULL;
        free(tp); tp = NULL;
        free(cp); cp = NULL;
    }
    dl_path(x, path, sizeof path, "mdn_check.csv");
    if (nrows > 0 && (s = lss_csv_write(path, 8, hdr, nrows, rows))) goto out;
    fprintf(stderr, "deeplss mdn: done in %.1f s\n", lss_time_now() - t_start);
out:
    lss_mdn_free(m);
    free(tt); free(tp); free(ct); free(cp); free(dmu); free(dsig);
    return s;
}

/* ------------------------------------------------------------------ MCMC */
enum { DL_JOB_MODE = 0, DL_JOB_FID, DL_JOB_CAL };
typedef struct {
    int type, net, mock;
    double obs[DL_NP], truth[DL_NP];
    /* results */
    int ok;
    double std[DL_NP + 1], lo68[DL_NP], hi68[DL_NP], mean[DL_NP], fom_det, area68, acc;
} dl_job;

static int dl_prior(const dl_ctx *x, lss_prior *pr) {
    int s;
    if ((s = lss_prior_deeplss(pr, 0, NULL))) return s;
    if (x->c.ncosmo >= 3 && (s = lss_prior_set_hull(pr, 0, 1, x->cosmo, x->c.ncosmo))) { lss_prior_free(pr); return s; }
    return LSS_OK;
}

/* One chain for job j with the MDN m; flat samples returned in *flat (caller frees) when flat != NULL. */
static int dl_run_chain(const dl_ctx *x, lss_mdn *m, const lss_prior *pr, dl_job *j, uint64_t stream, double **flat,
                        int64_t *nflat) {
    const dl_cfg *c = &x->c;
    lss_emcee *e = NULL;
    lss_emcee_opts eo;
    double *p0 = NULL, *fs = NULL, ctr[2] = {0, 0}, *s8 = NULL;
    lss_param_stats st[DL_NP], st8;
    lss_rng r;
    int s, w, k, W = c->walkers, tries;
    int64_t n = 0, i;
    j->ok = 0;
    if ((s = lss_mdn_set_obs(m, j->obs))) return s;
    memset(&eo, 0, sizeof eo);
    eo.seed = c->seed * 977u + 3u;
    eo.stream = stream;
    eo.prior = pr;
    for (i = 0; i < c->ncosmo; i++) { ctr[0] += x->cosmo[2 * i] / c->ncosmo; ctr[1] += x->cosmo[2 * i + 1] / c->ncosmo; }
    p0 = (double *)malloc(sizeof(double) * (size_t)W * DL_NP);
    if (!p0) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    lss_rng_init(&r, eo.seed + 1, stream);
    for (w = 0; w < W; w++) {
        double *q = p0 + (size_t)w * DL_NP;
        for (k = 0; k < DL_NP; k++) q[k] = j->truth[k] + 1e-3 * (dl_hi[k] - dl_lo[k]) * lss_rng_normal(&r);
        /* a start on the prior's edge is pulled inside, towards the middle */
        for (tries = 0; tries < 200 && !lss_prior_contains(pr, q); tries++) {
            for (k = 0; k < DL_NP; k++) {
                double mid = k < 2 ? ctr[k] : 0.5 * (dl_lo[k] + dl_hi[k]);
                q[k] = 0.98 * q[k] + 0.02 * mid;
            }
        }
    }
    if ((s = lss_emcee_create(W, DL_NP, &eo, &e)) || (s = lss_emcee_start(e, p0, lss_mdn_loglike, m)) ||
        (s = lss_emcee_run(e, c->burn, lss_mdn_loglike, m)))
        goto out;
    lss_emcee_reset(e);
    if ((s = lss_emcee_run(e, c->nsteps, lss_mdn_loglike, m))) goto out;
    j->acc = lss_emcee_acceptance(e, NULL);
    if ((s = lss_emcee_flat(e, 0, 1, &fs, &n))) goto out;
    if ((s = lss_chain_stats(fs, n, DL_NP, st, NULL))) goto out;
    s8 = (double *)malloc(sizeof(double) * (size_t)n);
    if (!s8) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (i = 0; i < n; i++) s8[i] = fs[i * DL_NP + 1] * sqrt(fs[i * DL_NP] / 0.3);
    if ((s = lss_chain_stats(s8, n, 1, &st8, NULL))) goto out;
    for (k = 0; k < DL_NP; k++) {
        j->std[k] = st[k].std;
        j->lo68[k] = st[k].lo68;
        j->hi68[k] = st[k].hi68;
        j->mean[k] = st[k].mean;
    }
    j->std[DL_NP] = st8.std;
    if ((s = lss_fom_det(fs, n, DL_NP, 0, 1, &j->fom_det))) goto out;
    {
        lss_hist2_opts ho;
        memset(&ho, 0, sizeof ho);
        ho.bins = 100;
        ho.xlo = 0.0; ho.xhi = 0.6; ho.ylo = 0.4; ho.yhi = 1.5;
        ho.smooth = 1.0;
        if ((s = lss_hpd_area(fs, n, DL_NP, 0, 1, &ho, &j->area68, NULL))) goto out;
    }
    j->ok = 1;
    if (flat) { *flat = fs; *nflat = n; fs = NULL; }
out:
    lss_emcee_free(e);
    free(p0); free(s8);
    LSS_FREE(fs);
    return s;
}

static int dl_mcmc(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    int s = LSS_OK, k, t, nj = 0, NT = x->nthreads, i, nfail = 0;
    lss_mdn *mdn[64][DL_NNET];
    lss_mdn_opts mo;
    lss_prior pr;
    dl_job *jobs = NULL;
    double *fidp[DL_NNET] = {0}, *calp[2] = {0}, *calt = NULL, fid[DL_NP], t_start = lss_time_now();
    int64_t n;
    char name[160], path[4200];
    int status = LSS_OK;
    char msg[512] = "";
    memset(mdn, 0, sizeof mdn);
    memset(&pr, 0, sizeof pr);
    if (NT > 64) NT = 64;
    dl_mdn_opts(c, &mo);
    dl_fiducial(fid);
    if ((s = dl_prior(x, &pr))) return s;
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        snprintf(name, sizeof name, "mdn_%s_%s.ckpt", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        dl_path(x, path, sizeof path, name);
        for (t = 0; t < NT; t++)
            if ((s = lss_mdn_create(DL_NP, DL_NP, &mo, &mdn[t][k])) || (s = lss_mdn_load(mdn[t][k], path))) goto out;
        snprintf(name, sizeof name, "pred_fid_%s_%s.npy", dl_kind_name[k / 3], dl_probe_name[k % 3]);
        if ((s = dl_load_f64(x, name, &n, DL_NP, &fidp[k]))) goto out;
        if (n != c->nfid) { s = lss_seterr(LSS_ERR_FORMAT, "%s: %lld rows, expected %d", name, (long long)n, c->nfid); goto out; }
    }
    for (k = 0; k < 2; k++) {
        if (!((mask >> (k * 3)) & 1) || c->ncal <= 0) continue;
        snprintf(name, sizeof name, "pred_cal_%s_comb.npy", dl_kind_name[k]);
        if ((s = dl_load_f64(x, name, &n, DL_NP, &calp[k]))) goto out;
        if (n != c->ncal) { s = lss_seterr(LSS_ERR_FORMAT, "%s: %lld rows, expected %d", name, (long long)n, c->ncal); goto out; }
        if (!calt) {
            if ((s = dl_load_f64(x, "theta_cal.npy", &n, DL_NP, &calt))) goto out;
            if (n != c->ncal) { s = lss_seterr(LSS_ERR_FORMAT, "theta_cal.npy: %lld rows, expected %d", (long long)n, c->ncal); goto out; }
        }
    }
    jobs = (dl_job *)calloc((size_t)(DL_NNET * (1 + c->nfid) + 2 * c->ncal), sizeof(dl_job));
    if (!jobs) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        /* section V: the most likely prediction at the fiducial parameters, the mode of the MDN there */
        {
            int ns = 2000, b = 0;
            double *tt = (double *)malloc(sizeof(double) * ns * DL_NP), *tp = (double *)malloc(sizeof(double) * ns * DL_NP);
            double *lp = (double *)malloc(sizeof(double) * (ns > c->nfid ? ns : c->nfid));
            lss_rng r;
            if (!tt || !tp || !lp) { free(tt); free(tp); free(lp); s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
            for (i = 0; i < ns; i++) memcpy(tt + i * DL_NP, fid, sizeof fid);
            lss_rng_init(&r, c->seed + 91u, (uint64_t)k);
            s = lss_mdn_sample(mdn[0][k], tt, ns, &r, tp);
            if (s == LSS_OK) {
                /* only draws inside the range of the summaries the MDN was fitted on can be observations */
                int nin = 0;
                for (i = 0; i < ns; i++)
                    if (lss_scaler_check(&mdn[0][k]->sp, tp + i * DL_NP, 1) == LSS_OK) {
                        if (nin != i) memcpy(tp + nin * DL_NP, tp + i * DL_NP, sizeof fid);
                        nin++;
                    }
                lss_clearerr();
                if (nin > 0) {
                    s = lss_mdn_logpdf(mdn[0][k], tt, tp, nin, 1, lp);
                    for (i = 1; i < nin && s == LSS_OK; i++) if (lp[i] > lp[b]) b = i;
                    if (s == LSS_OK) memcpy(jobs[nj].obs, tp + b * DL_NP, sizeof fid);
                } else {
                    /* no draw inside: the per-component median of the noisy fiducial predictions */
                    for (i = 0; i < DL_NP; i++) {
                        int q;
                        for (q = 0; q < c->nfid; q++) lp[q] = fidp[k][q * DL_NP + i];
                        jobs[nj].obs[i] = dl_pct(lp, c->nfid, 50);
                    }
                }
            }
            free(tt); free(tp); free(lp);
            if (s) goto out;
            jobs[nj].type = DL_JOB_MODE; jobs[nj].net = k; jobs[nj].mock = -1;
            memcpy(jobs[nj].truth, fid, sizeof fid);
            nj++;
        }
        for (i = 0; i < c->nfid; i++, nj++) {
            jobs[nj].type = DL_JOB_FID; jobs[nj].net = k; jobs[nj].mock = i;
            memcpy(jobs[nj].obs, fidp[k] + (size_t)i * DL_NP, sizeof fid);
            memcpy(jobs[nj].truth, fid, sizeof fid);
        }
    }
    for (k = 0; k < 2; k++) {
        if (!calp[k]) continue;
        for (i = 0; i < c->ncal; i++, nj++) {
            jobs[nj].type = DL_JOB_CAL; jobs[nj].net = k * 3; jobs[nj].mock = i;
            memcpy(jobs[nj].obs, calp[k] + (size_t)i * DL_NP, sizeof fid);
            memcpy(jobs[nj].truth, calt + (size_t)i * DL_NP, sizeof fid);
        }
    }
    {
        lss_drv_progress prg;
        int done = 0;
        lss_drv_progress_init(&prg, "deeplss mcmc: chains", nj);
#pragma omp parallel for schedule(dynamic) num_threads(NT)
        for (i = 0; i < nj; i++) {
            int tid = 0, st;
            double *flat = NULL;
            int64_t nflat = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            if (status != LSS_OK) continue;
            st = dl_run_chain(x, mdn[tid][jobs[i].net], &pr, &jobs[i], (uint64_t)i, jobs[i].type == DL_JOB_MODE ? &flat : NULL, &nflat);
            if (st == LSS_ERR_RANGE) st = LSS_OK;   /* an observation outside the MDN's summary range: recorded as failed */
            if (st == LSS_OK && flat) {
                char nm[160], pth[4300];
                snprintf(nm, sizeof nm, "chain_fid_%s_%s.npy", dl_kind_name[jobs[i].net / 3], dl_probe_name[jobs[i].net % 3]);
                dl_path(x, pth, sizeof pth, nm);
                {
                    int64_t sh[2] = {nflat, DL_NP};
                    st = lss_npy_save(pth, LSS_F64, 2, sh, flat);
                }
            }
            LSS_FREE(flat);
#pragma omp critical(dl_mcmc)
            {
                if (st != LSS_OK && status == LSS_OK) { status = st; if (snprintf(msg, sizeof msg, "%s", lss_last_error()) < 0) msg[0] = 0; }
                done++;
                if (tid == 0) lss_drv_progress_update(&prg, done);
            }
        }
        if (status) { s = lss_seterr(status, "%s", msg); goto out; }
        lss_drv_progress_end(&prg);
    }
    /* tables */
    {
        const char *h1[5 + DL_NP + 4];
        char hb[DL_NP + 1][32];
        double *rows = (double *)calloc((size_t)nj * 8 * DL_NP + 1, sizeof(double));
        int nr = 0, nc1 = 4 + DL_NP + 4;
        if (!rows) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        h1[0] = "kind"; h1[1] = "probe"; h1[2] = "mock"; h1[3] = "ok";
        for (k = 0; k <= DL_NP; k++) {
            snprintf(hb[k], sizeof hb[k], "std_%s", k < DL_NP ? dl_pname[k] : "S8");
            h1[4 + k] = hb[k];
        }
        h1[5 + DL_NP] = "fom_det"; h1[6 + DL_NP] = "area68"; h1[7 + DL_NP] = "acceptance";
        for (i = 0; i < nj; i++) {
            double *r = rows + (size_t)nr * nc1;
            if (jobs[i].type == DL_JOB_CAL) continue;
            r[0] = jobs[i].net / 3; r[1] = jobs[i].net % 3; r[2] = jobs[i].mock; r[3] = jobs[i].ok;
            for (k = 0; k <= DL_NP; k++) r[4 + k] = jobs[i].ok ? jobs[i].std[k] : NAN;
            r[5 + DL_NP] = jobs[i].ok ? jobs[i].fom_det : NAN;
            r[6 + DL_NP] = jobs[i].ok ? jobs[i].area68 : NAN;
            r[7 + DL_NP] = jobs[i].ok ? jobs[i].acc : NAN;
            if (!jobs[i].ok) nfail++;
            nr++;
        }
        dl_path(x, path, sizeof path, "mcmc_fid.csv");
        s = lss_csv_write(path, nc1, h1, nr, rows);
        if (s == LSS_OK) {
            const char *h2[8] = {"kind", "mock", "param", "truth", "lo68", "hi68", "inside", "ok"};
            nr = 0;
            for (i = 0; i < nj; i++) {
                if (jobs[i].type != DL_JOB_CAL) continue;
                if (!jobs[i].ok) nfail++;
                for (k = 0; k < DL_NP; k++) {
                    double *r = rows + (size_t)nr * 8;
                    r[0] = jobs[i].net / 3; r[1] = jobs[i].mock; r[2] = k; r[3] = jobs[i].truth[k];
                    r[4] = jobs[i].ok ? jobs[i].lo68[k] : NAN;
                    r[5] = jobs[i].ok ? jobs[i].hi68[k] : NAN;
                    r[6] = jobs[i].ok ? (jobs[i].truth[k] >= r[4] && jobs[i].truth[k] <= r[5]) : NAN;
                    r[7] = jobs[i].ok;
                    nr++;
                }
            }
            dl_path(x, path, sizeof path, "calibration.csv");
            s = lss_csv_write(path, 8, h2, nr, rows);
        }
        free(rows);
        if (s) goto out;
    }
    fprintf(stderr, "deeplss mcmc: %d chains (%d with the observation outside the MDN's range) in %.1f s\n", nj, nfail,
            lss_time_now() - t_start);
out:
    for (t = 0; t < 64; t++) for (k = 0; k < DL_NNET; k++) lss_mdn_free(mdn[t][k]);
    for (k = 0; k < DL_NNET; k++) free(fidp[k]);
    free(calp[0]); free(calp[1]); free(calt); free(jobs);
    lss_prior_free(&pr);
    return s;
}

/* ------------------------------------------------------------------ sensitivity maps (section VI) */
/* d theta_p / d m of the combined-probe CNN for A_IA and sigma_8 at one fiducial observation:
 * the gradient of the network output with respect to its input map (an input tensor with a gradient). */
static int dl_sensitivity(dl_ctx *x, float *map_out, float *sens) {
    dl_net net;
    lss_store *ist = NULL;
    lss_tensor *in, *out;
    lss_graph *g;
    dl_draw d;
    double spec_dummy;
    int64_t sh[4] = {1, 2 * DL_NBINS, x->msize, x->msize}, plane = (int64_t)x->msize * x->msize;
    float dy[DL_NOUT];
    int s, which, k;
    char path[4200];
    (void)spec_dummy;
    memset(&net, 0, sizeof net);
    if ((s = dl_net_init(&net, x, 0, 0, 1, 0))) goto out;
    dl_net_ckpt_path(x, &net, path, sizeof path);
    if ((s = lss_ckpt_load(path, net.st, NULL))) goto out;
    dl_set_draw(x, DL_SET_FID, 0, &d);
    if ((s = dl_observe_many(x, &d, 1, map_out, NULL))) goto out;
    if ((s = lss_store_create(1, &ist))) goto out;
    in = lss_store_add(ist, "input", 4, sh, LSS_INIT_ZERO);
    if (!in) { s = lss_store_status(ist); goto out; }
    g = net.g;
    for (which = 0; which < 2; which++) {
        double om, s8v;
        for (k = 0; k < 2 * DL_NBINS; k++) {
            int64_t q;
            for (q = 0; q < plane; q++) in->data[k * plane + q] = map_out[k * plane + q] * net.cscale->data[k];
        }
        lss_graph_reset(g);
        lss_graph_set_training(g, 0);
        lss_graph_set_record(g, 1);
        out = lss_resnet_forward(g, &net.cnn, in);
        if (!out) { s = lss_graph_status(g) ? lss_graph_status(g) : LSS_ERR_STATE; goto out; }
        for (k = 0; k < DL_NOUT; k++) dy[k] = 0;
        om = out->data[0] > 1e-3 ? out->data[0] : 1e-3;
        s8v = out->data[1];
        if (which == 0) dy[2] = 10.0f;                       /* A_IA = 10 y_2 */
        else {                                               /* sigma_8 = S8 (Omega_m / 0.3)^-1/2 */
            dy[1] = (float)pow(om / 0.3, -0.5);
            dy[0] = (float)(-0.5 * s8v * pow(om / 0.3, -1.5) / 0.3);
        }
        lss_store_zero_grad(ist);
        lss_store_zero_grad(net.st);
        if ((s = lss_backward_seed(g, out, dy))) goto out;
        for (k = 0; k < 2 * DL_NBINS; k++) {   /* d/dm = d/dx * (dx/dm), x = m * scale */
            int64_t q;
            for (q = 0; q < plane; q++)
                sens[((size_t)which * 2 * DL_NBINS + k) * plane + q] = in->grad[k * plane + q] * net.cscale->data[k];
        }
    }
out:
    dl_net_free(&net);
    lss_store_free(ist);
    return s;
}

static int dl_sens_png(const dl_ctx *x, const char *path, const float *map, const float *sens) {
    lss_image im;
    int M = x->msize, sc = M <= 64 ? (M <= 32 ? 4 : 2) : 1, pad = 8, lw = 150, top = 30, ch, row, s;
    int W = lw + 2 * DL_NBINS * (M * sc + pad) + 70, H = top + 3 * (M * sc + 22) + 10;
    const unsigned char black[3] = {0, 0, 0};
    static const char *const rl[3] = {"map m", "dA_IA/dm", "dsigma_8/dm"};
    if ((s = lss_image_init(&im, W, H))) return s;
    lss_image_text(&im, 8, 8, "Sensitivity of the combined-probe CNN (section VI): kappa_g bins 1-4, delta_g bins 1-4", black, 1);
    for (row = 0; row < 3; row++) {
        const float *base = row == 0 ? map : sens + (size_t)(row - 1) * 2 * DL_NBINS * M * M;
        int y0 = top + row * (M * sc + 22);
        lss_image_text(&im, 8, y0 + M * sc / 2, rl[row], black, 1);
        for (ch = 0; ch < 2 * DL_NBINS; ch++) {
            const float *mp = base + (size_t)ch * M * M;
            double a = 0;
            int i;
            char lab[32];
            for (i = 0; i < M * M; i++) if (fabs(mp[i]) > a) a = fabs(mp[i]);
            if (!(a > 0)) a = 1;
            lss_image_map(&im, lw + ch * (M * sc + pad), y0, mp, M, M, row == 0 && ch >= DL_NBINS ? -1.0 : -a,
                          row == 0 && ch >= DL_NBINS ? 1.0 : a, sc);
            snprintf(lab, sizeof lab, "%s%d", ch < DL_NBINS ? "k" : "d", ch % DL_NBINS + 1);
            lss_image_text(&im, lw + ch * (M * sc + pad), y0 + M * sc + 4, lab, black, 1);
        }
    }
    s = lss_image_save_png(&im, path);
    lss_image_free(&im);
    return s;
}

/* ------------------------------------------------------------------ report */
static int dl_load_chain(const dl_ctx *x, int net, double **v, int64_t *n) {
    char name[128];
    snprintf(name, sizeof name, "chain_fid_%s_%s.npy", dl_kind_name[net / 3], dl_probe_name[net % 3]);
    return dl_load_f64(x, name, n, DL_NP, v);
}

static int dl_report(dl_ctx *x, const char *timings) {
    const dl_cfg *c = &x->c;
    lss_csv fc, cc;
    int s, p, k, i, m, have_cal = 0;
    char path[4200];
    FILE *md = NULL;
    lss_wfile w;
    double gain[3][DL_NP + 3][3];     /* probe, row (7 params, S8, FoM det, FoM area), median/p16/p84 */
    double fom[DL_NNET][2][3];        /* net, convention, median/p16/p84 */
    double cal_frac[2] = {NAN, NAN}, cal_par[2][DL_NP];
    int cal_n[2] = {0, 0}, ngain[3] = {0, 0, 0};
    int nm = c->nfid;
    double tl[2][3] = {{NAN, NAN, NAN}, {NAN, NAN, NAN}};   /* final held-out losses */
    double *buf = (double *)malloc(sizeof(double) * (size_t)(nm > c->ncal ? nm : c->ncal) * DL_NP + 16);
    float *map = NULL, *sens = NULL;
    memset(&fc, 0, sizeof fc);
    memset(&cc, 0, sizeof cc);
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    dl_path(x, path, sizeof path, "mcmc_fid.csv");
    if ((s = lss_csv_read(path, &fc))) goto out;
    if (fc.ncols != 4 + DL_NP + 4) { s = lss_seterr(LSS_ERR_FORMAT, "%s: unexpected columns", path); goto out; }
    /* gains: per noisy fiducial mock, PSD over CNN on the same observed map; median over mocks */
    for (p = 0; p < 3; p++) {
        for (k = 0; k < DL_NP + 3; k++) {
            int cnt = 0;
            for (m = 0; m < nm; m++) {
                const double *rc = NULL, *rp = NULL;
                for (i = 0; i < fc.nrows; i++) {
                    const double *r = fc.data + (size_t)i * fc.ncols;
                    if ((int)r[1] != p || (int)r[2] != m || r[3] != 1) continue;
                    if ((int)r[0] == 0) rc = r; else rp = r;
                }
                if (!rc || !rp) continue;
                if (k <= DL_NP) buf[cnt++] = rp[4 + k] / rc[4 + k];
                else if (k == DL_NP + 1) buf[cnt++] = rc[5 + DL_NP] / rp[5 + DL_NP];
                else buf[cnt++] = rp[6 + DL_NP] / rc[6 + DL_NP];
            }
            ngain[p] = cnt;
            gain[p][k][0] = dl_pct(buf, cnt, 50);
            gain[p][k][1] = dl_pct(buf, cnt, 16);
            gain[p][k][2] = dl_pct(buf, cnt, 84);
        }
    }
    for (k = 0; k < DL_NNET; k++) {
        int cv;
        for (cv = 0; cv < 2; cv++) {
            int cnt = 0;
            for (i = 0; i < fc.nrows; i++) {
                const double *r = fc.data + (size_t)i * fc.ncols;
                if ((int)r[0] * 3 + (int)r[1] != k || r[2] < 0 || r[3] != 1) continue;
                buf[cnt++] = cv == 0 ? r[5 + DL_NP] : 1.0 / r[6 + DL_NP];
            }
            fom[k][cv][0] = dl_pct(buf, cnt, 50);
            fom[k][cv][1] = dl_pct(buf, cnt, 16);
            fom[k][cv][2] = dl_pct(buf, cnt, 84);
        }
    }
    {
        const char *hdr[8] = {"probe", "param", "gain_median", "gain_p16", "gain_p84", "nmocks", "fom_cnn_median", "fom_psd_median"};
        double rows[3 * (DL_NP + 3) * 8];
        int nr = 0;
        for (p = 0; p < 3; p++)
            for (k = 0; k < DL_NP + 3; k++, nr++) {
                double *r = rows + nr * 8;
                r[0] = p; r[1] = k; r[2] = gain[p][k][0]; r[3] = gain[p][k][1]; r[4] = gain[p][k][2]; r[5] = ngain[p];
                r[6] = k >= DL_NP + 1 ? fom[p][k - DL_NP - 1][0] : NAN;
                r[7] = k >= DL_NP + 1 ? fom[3 + p][k - DL_NP - 1][0] : NAN;
            }
        dl_path(x, path, sizeof path, "gains.csv");
        if ((s = lss_csv_write(path, 8, hdr, nr, rows))) goto out;
    }
    /* calibration */
    dl_path(x, path, sizeof path, "calibration.csv");
    if (lss_csv_read(path, &cc) == LSS_OK && cc.ncols == 8) {
        int kind;
        have_cal = 1;
        for (kind = 0; kind < 2; kind++) {
            double in = 0, cntp[DL_NP] = {0}, inp[DL_NP] = {0};
            int cnt = 0;
            for (i = 0; i < cc.nrows; i++) {
                const double *r = cc.data + (size_t)i * 8;
                if ((int)r[0] != kind || r[7] != 1) continue;
                in += r[6];
                cnt++;
                cntp[(int)r[2]] += 1;
                inp[(int)r[2]] += r[6];
            }
            cal_frac[kind] = cnt ? in / cnt : NAN;
            cal_n[kind] = cnt / DL_NP;
            for (k = 0; k < DL_NP; k++) cal_par[kind][k] = cntp[k] > 0 ? inp[k] / cntp[k] : NAN;
        }
    }
    /* corner plots: figure 2 (combined), figure 3 (each probe), figure 4 (S8 - A_IA) */
    {
        double *ch[DL_NNET] = {0};
        int64_t nch[DL_NNET] = {0};
        double lo[DL_NP], hi[DL_NP];
        for (k = 0; k < DL_NP; k++) { lo[k] = dl_lo[k]; hi[k] = dl_hi[k]; }
        for (k = 0; k < DL_NNET; k++) if (dl_load_chain(x, k, &ch[k], &nch[k]) != LSS_OK) { ch[k] = NULL; nch[k] = 0; }
        for (p = 0; p < 3 && s == LSS_OK; p++) {
            lss_corner_opts co;
            const double *xs[2];
            int64_t ns[2];
            const char *lb[2] = {"CNN", "PSD"};
            double fid[DL_NP];
            char title[128], nm[64];
            if (!ch[p] || !ch[3 + p]) continue;
            dl_fiducial(fid);
            memset(&co, 0, sizeof co);
            co.names = dl_pname; co.labels = lb; co.truth = fid; co.lo = lo; co.hi = hi;
            snprintf(title, sizeof title, "DeepLSS %s probes at the fiducial parameters: CNN vs PSD", dl_probe_long[p]);
            co.title = title;
            xs[0] = ch[p]; xs[1] = ch[3 + p]; ns[0] = nch[p]; ns[1] = nch[3 + p];
            snprintf(nm, sizeof nm, "corner_%s.png", dl_probe_name[p]);
            dl_path(x, path, sizeof path, nm);
            s = lss_corner_png(path, 2, xs, ns, DL_NP, &co);
        }
        if (s == LSS_OK && ch[0] && ch[1] && ch[2]) {
            double *sa[3] = {0};
            const double *xs[3];
            int64_t ns[3];
            const char *nmz[2] = {"S8", "A_IA"}, *lb[3] = {"comb", "WL", "GC"};
            double fid[DL_NP], tr[2], l2[2] = {0.3, -6}, h2[2] = {1.3, 6};
            lss_corner_opts co;
            dl_fiducial(fid);
            tr[0] = fid[1] * sqrt(fid[0] / 0.3);
            tr[1] = fid[2];
            for (p = 0; p < 3; p++) {
                sa[p] = (double *)malloc(sizeof(double) * 2 * (size_t)nch[p]);
                if (!sa[p]) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); break; }
                for (i = 0; i < nch[p]; i++) {
                    sa[p][2 * i] = ch[p][i * DL_NP + 1] * sqrt(ch[p][i * DL_NP] / 0.3);
                    sa[p][2 * i + 1] = ch[p][i * DL_NP + 2];
                }
                xs[p] = sa[p];
                ns[p] = nch[p];
            }
            if (s == LSS_OK) {
                memset(&co, 0, sizeof co);
                co.names = nmz; co.labels = lb; co.truth = tr; co.lo = l2; co.hi = h2; co.panel = 300;
                co.title = "S8-A_IA, CNN (fig. 4)";
                dl_path(x, path, sizeof path, "s8_aia.png");
                s = lss_corner_png(path, 3, xs, ns, 2, &co);
            }
            for (p = 0; p < 3; p++) free(sa[p]);
        }
        for (k = 0; k < DL_NNET; k++) free(ch[k]);
        if (s) goto out;
    }
    /* sensitivity maps */
    {
        int64_t plane = (int64_t)x->msize * x->msize, sh[4] = {2, 2 * DL_NBINS, x->msize, x->msize};
        map = (float *)malloc(sizeof(float) * (size_t)(2 * DL_NBINS) * plane);
        sens = (float *)malloc(sizeof(float) * 2 * (size_t)(2 * DL_NBINS) * plane);
        if (!map || !sens) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        if ((s = dl_sensitivity(x, map, sens))) goto out;
        dl_path(x, path, sizeof path, "sensitivity.npy");
        if ((s = lss_npy_save(path, LSS_F32, 4, sh, sens))) goto out;
        dl_path(x, path, sizeof path, "sensitivity.png");
        if ((s = dl_sens_png(x, path, map, sens))) goto out;
        {
            /* per-channel RMS of the sensitivities as CSV */
            const char *hdr[4] = {"channel", "rms_dAIA_dm", "rms_dsigma8_dm", "rms_map"};
            double rows[2 * DL_NBINS * 4];
            int ch;
            for (ch = 0; ch < 2 * DL_NBINS; ch++) {
                double a = 0, b = 0, mm = 0;
                for (i = 0; i < plane; i++) {
                    double u = sens[(size_t)ch * plane + i], v = sens[(size_t)(2 * DL_NBINS + ch) * plane + i], q = map[(size_t)ch * plane + i];
                    a += u * u; b += v * v; mm += q * q;
                }
                rows[ch * 4] = ch; rows[ch * 4 + 1] = sqrt(a / plane); rows[ch * 4 + 2] = sqrt(b / plane); rows[ch * 4 + 3] = sqrt(mm / plane);
            }
            dl_path(x, path, sizeof path, "sensitivity.csv");
            if ((s = lss_csv_write(path, 4, hdr, 2 * DL_NBINS, rows))) goto out;
        }
    }
    /* REPORT.md */
    dl_path(x, path, sizeof path, "REPORT.md");
    if ((s = lss_wfile_open(&w, path))) goto out;
    md = w.f;
    fprintf(md, "# DeepLSS: CNN vs power-spectrum constraints (%s scale)\n\n", c->scale == 0 ? "small" : "paper");
    fprintf(md, "Every number below comes from this run (`deeplss` with seed %llu, files in this directory).\n\n", (unsigned long long)c->seed);
    fprintf(md, "## Setup\n\n");
    fprintf(md, "- Survey: %d x %d field(s) of %d x %d pixels of %.4g arcmin (%.3g deg^2), 4 tomographic bins, "
                "kappa_g and delta_g (8 channels); Table I priors; noise, field choice and flips drawn on the fly.\n",
            c->grid, c->grid, c->nside, c->nside, c->pixel_arcmin,
            pow(c->grid * c->nside * c->pixel_arcmin / 60.0, 2));
    fprintf(md, "- Pool: %d grid cosmologies (Omega_m, sigma_8; the fiducial first, then a scrambled Sobol set over the prior box) x "
                "%d training + %d held-out noise-free lognormal fields.\n", c->ncosmo, c->nf_train, c->nf_test);
    fprintf(md, "- CNN: %d strided %dx%d convolutions to %d channels, %d residual block(s), dense output of %d (means + Cholesky "
                "of the precision); PSD network: all auto and cross spectra in %d ell bins (%.0f-%.0f) -> 2 x %d ReLU -> %d. "
                "Loss eq. 14; Adam (lr CNN %.3g, PSD %.3g); per-tensor gradient clipping at the %.0fth percentile of the norm "
                "history; batch %d; %d steps. Targets Omega_m, S8, 0.1 A_IA, eta_IA, b_g, eta_bg, r_g (appendix E), undone at prediction.\n",
            c->nconv, c->kernel, c->kernel, c->channels, c->nres, DL_NOUT, c->nell, c->ell_min, c->ell_max, c->psd_width, DL_NOUT,
            c->lr_cnn, c->lr_psd, c->clip_pct, c->batch, c->steps);
    fprintf(md, "- MDN: %d x %d ReLU, K = %d; trained on %d (theta_t, theta_p) pairs per network (%d Sobol nuisance draws per "
                "grid cosmology, held-out fields). MCMC: %d walkers, %d burn-in + %d steps; prior: Table I box and the convex hull "
                "of the grid in (Omega_m, sigma_8).\n",
            c->mdn_layers, c->mdn_width, c->mdn_K, c->ncosmo * c->pred_per_cosmo, c->pred_per_cosmo, c->walkers, c->burn, c->nsteps);
    fprintf(md, "\nTraining and test loss: [loss.csv](loss.csv), ![loss](loss.png)\n\n");
    {
        /* the held-out loss at the end of training: lower means summaries that pin the parameters down better */
        lss_csv lc;
        memset(&lc, 0, sizeof lc);
        dl_path(x, path, sizeof path, "loss.csv");
        if (lss_csv_read(path, &lc) == LSS_OK && lc.nrows > 0) {
            fprintf(md, "Held-out test loss (eq. 14, mean over %d test surveys) at step %.0f; lower is better:\n\n| network | lensing | clustering | combined |\n|---|---|---|---|\n",
                    c->ntest, lc.data[(lc.nrows - 1) * lc.ncols]);
            for (i = 0; i < 2; i++) {
                fprintf(md, "| %s |", i == 0 ? "CNN" : "PSD");
                for (p = 1; p <= 3; p++) {
                    char cn[64];
                    int col;
                    snprintf(cn, sizeof cn, "test_%s_%s", dl_kind_name[i], dl_probe_name[p % 3]);
                    col = lss_csv_col(&lc, cn);
                    if (col >= 0) tl[i][p % 3] = lc.data[(lc.nrows - 1) * lc.ncols + col];
                    if (col >= 0) fprintf(md, " %.2f |", tl[i][p % 3]);
                    else fprintf(md, " - |");
                }
                fprintf(md, "\n");
            }
            fprintf(md, "\n");
        }
        lss_csv_free(&lc);
    }
    fprintf(md, "## Gains (layout of Table II)\n\n");
    fprintf(md, "std(theta | PSD) / std(theta | CNN), median over %d noisy mock observations at the fiducial parameters "
                "(each mock analysed by both networks); in brackets the 16-84%% range over mocks. > 1 means the CNN is tighter. "
                "FoM rows: FoM_CNN / FoM_PSD with FoM = 1/sqrt(det Cov(Omega_m, sigma_8)) and 1/area of the 68%% region "
                "(100 x 100 histogram over [0, 0.6] x [0.4, 1.5], 1 bin smoothing).\n\n", nm);
    fprintf(md, "| parameter | lensing | clustering | combined |\n|---|---|---|---|\n");
    for (k = 0; k < DL_NP + 3; k++) {
        const char *nmk = k < DL_NP ? dl_pname[k] : k == DL_NP ? "S8" : k == DL_NP + 1 ? "FoM (det)" : "FoM (68% area)";
        fprintf(md, "| %s |", nmk);
        for (p = 1; p <= 3; p++) {
            int pp = p % 3;  /* lensing, clustering, combined */
            fprintf(md, " %.2f [%.2f, %.2f] |", gain[pp][k][0], gain[pp][k][1], gain[pp][k][2]);
        }
        fprintf(md, "\n");
    }
    fprintf(md, "\nTable: [gains.csv](gains.csv); per-mock values: [mcmc_fid.csv](mcmc_fid.csv).\n\n");
    fprintf(md, "### Figures of merit (Omega_m - sigma_8), median [16-84%%] over the noisy mocks\n\n");
    fprintf(md, "| network | lensing | clustering | combined |\n|---|---|---|---|\n");
    for (i = 0; i < 2; i++) {
        int cv;
        for (cv = 0; cv < 2; cv++) {
            fprintf(md, "| %s, %s |", i == 0 ? "CNN" : "PSD", cv == 0 ? "1/sqrt(det C)" : "1/area68");
            for (p = 1; p <= 3; p++) {
                int pp = p % 3;
                fprintf(md, " %.4g [%.4g, %.4g] |", fom[i * 3 + pp][cv][0], fom[i * 3 + pp][cv][1], fom[i * 3 + pp][cv][2]);
            }
            fprintf(md, "\n");
        }
    }
    /* the mechanism checks */
    fprintf(md, "\n## What this run shows\n\n");
    {
        int fails = 0;
        for (p = 0; p < 3; p++)
            for (k = 0; k <= DL_NP; k++) {
                /* CNN at least as tight as PSD within the scatter over mocks: the 84th percentile of the ratio >= 1 */
                if (!(gain[p][k][2] >= 1.0)) {
                    if (!fails) fprintf(md, "Parameters where the CNN is NOT at least as tight as the PSD network within the scatter over mocks "
                                            "(84th percentile of the std ratio below 1):\n\n");
                    fprintf(md, "- %s probes, %s: median ratio %.3f [%.3f, %.3f]\n", dl_probe_long[p], k < DL_NP ? dl_pname[k] : "S8",
                            gain[p][k][0], gain[p][k][1], gain[p][k][2]);
                    fails++;
                }
            }
        if (!fails) fprintf(md, "- For every parameter and probe set the CNN is at least as tight as the PSD network within the scatter over mocks.\n");
        else {
            fprintf(md, "\nReason: the held-out losses measure how informative each network's summaries are, independently of the "
                        "MDN and the sampler (CNN vs PSD: lensing %.2f vs %.2f, clustering %.2f vs %.2f, combined %.2f vs %.2f; lower is "
                        "better). One 25 deg^2 field at 9.375 arcmin, dominated by shape and shot noise and made of "
                        "lognormal shells, should carry little non-Gaussian information beyond its spectra, so the CNN has little to gain "
                        "over the PSD network and must first learn to compute the auto and cross spectra (above all the lensing x "
                        "clustering cross spectra, which break the bias and IA degeneracies) that the PSD network is given; a small CNN "
                        "trained for a few thousand steps on a CPU has not finished learning that. Where a parameter is "
                        "prior-dominated the ratio scatters around 1.\n",
                    tl[0][1], tl[1][1], tl[0][2], tl[1][2], tl[0][0], tl[1][0]);
        }
        for (i = 0; i < 2; i++) {
            for (p = 1; p < 3; p++) {
                int ok = fom[i * 3][0][0] > fom[i * 3 + p][0][0];
                fprintf(md, "- %s: combined-probe FoM %.4g %s the %s-only FoM %.4g%s\n", i == 0 ? "CNN" : "PSD", fom[i * 3][0][0],
                        ok ? "above" : "NOT above", dl_probe_long[p], fom[i * 3 + p][0][0],
                        ok ? "." : " (the combined probes should add information: with this short training the combined network "
                                   "has not learnt to use both probes fully).");
            }
        }
    }
    fprintf(md, "\n## Calibration\n\n");
    if (have_cal) {
        fprintf(md, "Fraction of true values inside the 68%% interval (16-84 percentiles of the posterior), over mock observations "
                    "at random grid cosmologies and nuisance parameters (held-out fields and fresh noise), all 7 parameters pooled "
                    "(expected 0.68 +- 0.10):\n\n");
        fprintf(md, "| network | mocks | fraction | ");
        for (k = 0; k < DL_NP; k++) fprintf(md, "%s | ", dl_pname[k]);
        fprintf(md, "\n|---|---|---|");
        for (k = 0; k < DL_NP; k++) fprintf(md, "---|");
        fprintf(md, "\n");
        for (i = 0; i < 2; i++) {
            fprintf(md, "| %s combined | %d | %.3f | ", i == 0 ? "CNN" : "PSD", cal_n[i], cal_frac[i]);
            for (k = 0; k < DL_NP; k++) fprintf(md, "%.2f | ", cal_par[i][k]);
            fprintf(md, "\n");
        }
        fprintf(md, "\nPer mock and parameter: [calibration.csv](calibration.csv).\n");
    } else {
        fprintf(md, "No calibration.csv in this directory.\n");
    }
    fprintf(md, "\nMDN check of appendix C (dmu = (mean_MDN - mean_sim)/std_sim, dsig = (std_MDN - std_sim)/std_sim at held-out "
                "theta_t, median [16-84%%]): [mdn_check.csv](mdn_check.csv)\n\n");
    {
        lss_csv mc;
        dl_path(x, path, sizeof path, "mdn_check.csv");
        if (lss_csv_read(path, &mc) == LSS_OK && mc.ncols == 8) {
            fprintf(md, "| network | dmu | dsig |\n|---|---|---|\n");
            for (i = 0; i < mc.nrows; i++) {
                const double *r = mc.data + (size_t)i * 8;
                fprintf(md, "| %s %s | %.3f [%.3f, %.3f] | %.3f [%.3f, %.3f] |\n", dl_kind_name[(int)r[0] & 1],
                        dl_probe_name[(int)r[1] % 3], r[2], r[3], r[4], r[5], r[6], r[7]);
            }
            lss_csv_free(&mc);
        }
    }
    fprintf(md, "\n## Figures\n\n");
    fprintf(md, "- Figure 2 (combined probes, CNN vs PSD, at the most likely prediction for the fiducial parameters): ![corner comb](corner_comb.png)\n");
    fprintf(md, "- Figure 3 (single probes): ![corner wl](corner_wl.png) ![corner gc](corner_gc.png)\n");
    fprintf(md, "- Figure 4 (S8 - A_IA, CNN): ![s8 aia](s8_aia.png)\n");
    fprintf(md, "- Figure 6 (sensitivity maps d theta_p / d m of the combined-probe CNN for A_IA and sigma_8 at one fiducial "
                "observation; per-channel RMS in [sensitivity.csv](sensitivity.csv), arrays in sensitivity.npy): ![sensitivity](sensitivity.png)\n");
    if (timings && *timings) fprintf(md, "\n## Timings\n\n%s\n", timings);
    s = lss_wfile_commit(&w);
out:
    lss_csv_free(&fc);
    lss_csv_free(&cc);
    free(buf); free(map); free(sens);
    return s;
}

/* ------------------------------------------------------------------ command line */
static const char *dl_usage_main =
    "usage: deeplss COMMAND [options]\n"
    "The DeepLSS experiment (Kacprzak & Fluri 2022): CNN and power-spectrum networks trained with the\n"
    "likelihood loss on tomographic lensing + clustering maps, MDN likelihoods, ensemble MCMC, gains.\n\n"
    "commands:\n"
    "  sim       simulate the pool of noise-free fields and write DIR/deeplss.cfg\n"
    "  train     train the CNN and PSD networks (simulates the pool first when it is missing)\n"
    "  predict   network summaries for many (parameters, noise) draws (NPY)\n"
    "  mdn       fit and check the MDN likelihoods\n"
    "  mcmc      ensemble MCMC at the fiducial parameters, noisy mocks and calibration mocks\n"
    "  report    gains table, calibration, corner plots, sensitivity maps, DIR/REPORT.md\n"
    "  all       sim, train, predict, mdn, mcmc and report in order (the demo)\n\n"
    "'deeplss COMMAND --help' lists the options of a command.\n"
    "example:\n"
    "  deeplss all --scale small --out out/deeplss\n"
    "  deeplss train --scale paper --steps 2 --out out/deeplss_paper\n";

static void dl_usage_cmd(const char *cmd) {
    printf("usage: deeplss %s [options]\n", cmd);
    if (!strcmp(cmd, "sim") || !strcmp(cmd, "train") || !strcmp(cmd, "all")) {
        printf("sizes (when the directory has no deeplss.cfg yet):\n"
               "  --scale small|paper   small: one 32 x 32 field of 9.375 arcmin, a small CNN (default);\n"
               "                        paper: 6 x 6 mosaics of 64 x 64, the released code's CNN (about 12 M parameters)\n"
               "  --ncosmo N            grid cosmologies in the pool (small 64, paper 57)\n"
               "  --nfield N            noise-free training fields per cosmology (held-out: half as many, at least 1)\n"
               "  --seed S              seed of everything (default 1)\n");
    }
    if (!strcmp(cmd, "train") || !strcmp(cmd, "all"))
        printf("training:\n"
               "  --steps N             optimizer steps (small 4000, paper 900000)\n"
               "  --batch N             surveys per step (32)\n"
               "  --lr-cnn X --lr-psd X Adam learning rates (paper scale: the paper's 5e-5 and 2.5e-3, constant; small: 1e-3 and 1e-3\n"
               "                        with a cosine decay to 5%%)\n"
               "  --nets cnn,psd        which networks (default both)\n"
               "  --probes comb,wl,gc   which probe sets (default all three)\n"
               "  --resume              continue from the checkpoints in DIR\n");
    if (!strcmp(cmd, "predict") || !strcmp(cmd, "mdn") || !strcmp(cmd, "mcmc"))
        printf("  --nets cnn,psd --probes comb,wl,gc   which networks (default all)\n");
    if (!strcmp(cmd, "all"))
        printf("later stages:\n"
               "  --pred-per-cosmo N    Sobol nuisance draws per grid cosmology for the MDN (small 128)\n"
               "  --ncal N              calibration mocks at random parameters (small 60)\n"
               "  --nfid N              noisy mocks at the fiducial parameters for the gains (small 24)\n"
               "  --mcmc-steps N        MCMC steps after burn-in (small 250)\n");
    printf("common:\n"
           "  --out DIR             working directory (default out/deeplss)\n"
           "  -h, --help            this help\n"
           "example:\n");
    if (!strcmp(cmd, "sim")) printf("  deeplss sim --scale small --out out/deeplss\n");
    else if (!strcmp(cmd, "train")) printf("  deeplss train --out out/deeplss --steps 2000\n  deeplss train --out out/deeplss --steps 4000 --resume\n");
    else if (!strcmp(cmd, "predict")) printf("  deeplss predict --out out/deeplss\n");
    else if (!strcmp(cmd, "mdn")) printf("  deeplss mdn --out out/deeplss\n");
    else if (!strcmp(cmd, "mcmc")) printf("  deeplss mcmc --out out/deeplss\n");
    else if (!strcmp(cmd, "report")) printf("  deeplss report --out out/deeplss\n");
    else printf("  deeplss all --scale small --out out/deeplss\n");
}

#ifndef DEEPLSS_MAIN
#define DEEPLSS_MAIN main
#endif

int DEEPLSS_MAIN(int argc, char **argv) {
    static const char *const cmds[] = {"sim", "train", "predict", "mdn", "mcmc", "report", "all"};
    enum { O_SCALE = 1000, O_NCOSMO, O_NFIELD, O_SEED, O_STEPS, O_BATCH, O_LRC, O_LRP, O_NETS, O_PROBES, O_RESUME,
           O_PPC, O_NCAL, O_NFID, O_MSTEPS, O_OUT };
    static const struct option lo[] = {
        {"scale", required_argument, 0, O_SCALE}, {"ncosmo", required_argument, 0, O_NCOSMO},
        {"nfield", required_argument, 0, O_NFIELD}, {"seed", required_argument, 0, O_SEED},
        {"steps", required_argument, 0, O_STEPS}, {"batch", required_argument, 0, O_BATCH},
        {"lr-cnn", required_argument, 0, O_LRC}, {"lr-psd", required_argument, 0, O_LRP},
        {"nets", required_argument, 0, O_NETS}, {"probes", required_argument, 0, O_PROBES},
        {"resume", no_argument, 0, O_RESUME}, {"pred-per-cosmo", required_argument, 0, O_PPC},
        {"ncal", required_argument, 0, O_NCAL}, {"nfid", required_argument, 0, O_NFID},
        {"mcmc-steps", required_argument, 0, O_MSTEPS}, {"out", required_argument, 0, O_OUT},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *cmd, *out = "out/deeplss", *nets = "cnn,psd", *probes = "comb,wl,gc";
    int ci = -1, opt, scale = -1, ncosmo = 0, nfield = 0, steps = 0, batch = 0, resume = 0, ppc = -1, ncal = -1, nfid = -1;
    int msteps = 0, have_seed = 0, mask, s = LSS_OK, i;
    uint64_t seed = 1;
    double lrc = 0, lrp = 0, t0 = lss_time_now();
    dl_cfg cfg;
    dl_ctx x;
    char path[4200], timings[2048] = "", extra[256];
    lss_drv_prog = "deeplss";
    if (argc < 2) { fputs(dl_usage_main, stderr); return 2; }
    cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) { fputs(dl_usage_main, stdout); return 0; }
    for (i = 0; i < 7; i++) if (!strcmp(cmd, cmds[i])) ci = i;
    if (ci < 0) lss_drv_die(2, "unknown command '%s' (try 'deeplss --help')", cmd);
    optind = 2;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (opt) {
        case 'h': dl_usage_cmd(cmd); return 0;
        case O_SCALE:
            if (!strcmp(optarg, "small")) scale = 0;
            else if (!strcmp(optarg, "paper")) scale = 1;
            else lss_drv_die(2, "option --scale: '%s' is not small or paper", optarg);
            break;
        case O_NCOSMO: ncosmo = (int)lss_drv_int("--ncosmo", optarg, 3, 100000); break;
        case O_NFIELD: nfield = (int)lss_drv_int("--nfield", optarg, 1, 100000); break;
        case O_SEED: seed = (uint64_t)lss_drv_int("--seed", optarg, 0, 1000000000000LL); have_seed = 1; break;
        case O_STEPS: steps = (int)lss_drv_int("--steps", optarg, 1, 100000000); break;
        case O_BATCH: batch = (int)lss_drv_int("--batch", optarg, 1, 4096); break;
        case O_LRC: lrc = lss_drv_double("--lr-cnn", optarg); if (!(lrc > 0 && lrc < 1)) lss_drv_die(2, "option --lr-cnn: %g is outside (0, 1)", lrc); break;
        case O_LRP: lrp = lss_drv_double("--lr-psd", optarg); if (!(lrp > 0 && lrp < 1)) lss_drv_die(2, "option --lr-psd: %g is outside (0, 1)", lrp); break;
        case O_NETS: nets = optarg; break;
        case O_PROBES: probes = optarg; break;
        case O_RESUME: resume = 1; break;
        case O_PPC: ppc = (int)lss_drv_int("--pred-per-cosmo", optarg, 1, 1000000); break;
        case O_NCAL: ncal = (int)lss_drv_int("--ncal", optarg, 0, 1000000); break;
        case O_NFID: nfid = (int)lss_drv_int("--nfid", optarg, 1, 1000000); break;
        case O_MSTEPS: msteps = (int)lss_drv_int("--mcmc-steps", optarg, 10, 10000000); break;
        case O_OUT: out = optarg; break;
        default:
            lss_drv_die(2, "unknown or incomplete option '%s' (try 'deeplss %s --help')", argv[optind - 1], cmd);
        }
    }
    if (optind < argc) lss_drv_die(2, "unexpected argument '%s'", argv[optind]);
    mask = dl_net_mask(nets, probes);
    {
        /* every listed name must be known */
        char buf[256], *tok, *sv = NULL;
        const char *lists[2] = {nets, probes};
        int l;
        for (l = 0; l < 2; l++) {
            snprintf(buf, sizeof buf, "%s", lists[l]);
            for (tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
                int ok = 0, q;
                for (q = 0; q < (l ? 3 : 2); q++) ok |= !strcmp(tok, l ? dl_probe_name[q] : dl_kind_name[q]);
                if (!ok) lss_drv_die(2, "option %s: unknown name '%s'", l ? "--probes" : "--nets", tok);
            }
        }
    }
    if (!mask) lss_drv_die(2, "no network selected by --nets %s --probes %s", nets, probes);
    snprintf(path, sizeof path, "%s/deeplss.cfg", out);
    if (ci == 6 || ci == 0 || (ci == 1 && !dl_file_exists(path))) {
        if (ci == 1 && resume) lss_drv_die(2, "--resume: no deeplss.cfg in %s", out);
        lss_drv_mkdirs(out);
        dl_cfg_defaults(&cfg, scale < 0 ? 0 : scale);
        if (have_seed) cfg.seed = seed;
        if (ncosmo) cfg.ncosmo = ncosmo;
        if (nfield) { cfg.nf_train = nfield; cfg.nf_test = nfield / 2 > 0 ? nfield / 2 : 1; }
        if (ppc > 0) cfg.pred_per_cosmo = ppc;
        if (ncal >= 0) cfg.ncal = ncal;
        if (nfid > 0) cfg.nfid = nfid;
        if (msteps) cfg.nsteps = msteps;
        if (cfg.scale == 1 && cfg.ntest > 32) cfg.ntest = 32;
    } else {
        lss_drv_check(dl_cfg_load(&cfg, out), "deeplss.cfg");
        if (scale >= 0 && scale != cfg.scale)
            lss_drv_die(2, "--scale %s differs from the run in %s (scale %s)", scale ? "paper" : "small", out, cfg.scale ? "paper" : "small");
        if (ncosmo || nfield || have_seed)
            lss_drv_die(2, "--ncosmo, --nfield and --seed only apply to a new run; %s already has a pool", out);
    }
    if (steps) cfg.steps = steps;
    if (batch) cfg.batch = batch;
    if (lrc > 0) cfg.lr_cnn = lrc;
    if (lrp > 0) cfg.lr_psd = lrp;
    lss_drv_check(dl_ctx_open(&x, &cfg, out), "setup");
    if (ci == 6 || ci == 0 || ci == 1) lss_drv_check(dl_cfg_save(&cfg, out), "deeplss.cfg");
    snprintf(extra, sizeof extra, "\"command\": \"%s\", \"scale\": \"%s\", \"steps\": %d, \"batch\": %d", cmd,
             cfg.scale ? "paper" : "small", cfg.steps, cfg.batch);
    lss_drv_check(lss_drv_runjson(out, argc, argv, cfg.seed, extra), "run.json");
    {
        double tp = lss_time_now();
        char pool_path[4300];
        snprintf(pool_path, sizeof pool_path, "%s/pool_fields.npy", out);
        if (ci == 0 || ci == 6 || (ci == 1 && !dl_file_exists(pool_path))) s = dl_pool_simulate(&x);
        else s = dl_pool_load(&x);
        lss_drv_check(s, "pool");
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- pool (sim or load): %.1f s\n", lss_time_now() - tp);
    }
    if (ci == 1 || ci == 6) {
        dl_train_opts to;
        double tp = lss_time_now();
        memset(&to, 0, sizeof to);
        to.mask = ci == 6 ? (1 << DL_NNET) - 1 : mask;
        to.resume = resume;
        lss_drv_check(dl_train(&x, &to), "train");
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- train (%d steps, batch %d, 6 networks): %.1f s\n",
                 cfg.steps, cfg.batch, lss_time_now() - tp);
    }
    if (ci == 2 || ci == 6) {
        double tp = lss_time_now();
        lss_drv_check(dl_predict(&x, ci == 6 ? (1 << DL_NNET) - 1 : mask), "predict");
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- predict: %.1f s\n", lss_time_now() - tp);
    }
    if (ci == 3 || ci == 6) {
        double tp = lss_time_now();
        lss_drv_check(dl_mdn(&x, ci == 6 ? (1 << DL_NNET) - 1 : mask), "mdn");
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- mdn: %.1f s\n", lss_time_now() - tp);
    }
    if (ci == 4 || ci == 6) {
        double tp = lss_time_now();
        lss_drv_check(dl_mcmc(&x, ci == 6 ? (1 << DL_NNET) - 1 : mask), "mcmc");
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- mcmc: %.1f s\n", lss_time_now() - tp);
    }
    if (ci == 5 || ci == 6) {
        char tpath[4300];
        snprintf(tpath, sizeof tpath, "%s/timings.md", out);
        if (ci == 6) {
            lss_wfile tw;
            snprintf(timings + strlen(timings), sizeof timings - strlen(timings),
                     "- total before the report: %.1f s on %d thread(s)\n", lss_time_now() - t0, x.nthreads);
            lss_drv_check(lss_wfile_open(&tw, tpath), "timings.md");
            fputs(timings, tw.f);
            lss_drv_check(lss_wfile_commit(&tw), "timings.md");
        } else {
            /* a report on its own shows the timings of the run that made the files, when it recorded them */
            FILE *tf = fopen(tpath, "r");
            timings[0] = 0;
            if (tf) {
                size_t nr = fread(timings, 1, sizeof timings - 1, tf);
                timings[nr] = 0;
                fclose(tf);
            }
        }
        lss_drv_check(dl_report(&x, timings), "report");
    }
    fprintf(stderr, "deeplss %s: done in %.1f s (%s)\n", cmd, lss_time_now() - t0, out);
    dl_ctx_free(&x);
    return 0;
}
