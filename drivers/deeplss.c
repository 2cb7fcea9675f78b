/* deeplss - the DeepLSS experiment end to end (Kacprzak & Fluri 2022, sections III-VI):
 * a pool of noise-free tomographic fields, CNN and power-spectrum networks trained with the
 * likelihood loss (eq. 14), network summaries for many (parameters, noise) draws, a mixture
 * density network likelihood (appendix C), ensemble MCMC at the fiducial parameters, the gains
 * table (Table II), corner plots and sensitivity maps (section VI).
 *
 *   deeplss sim | train | predict | mdn | mcmc | report | all      (see deeplss --help)
 *
 * Wiring only: the pool and observation recipe are lss_maps.h's (lss_pool_*, lss_survey_*), the
 * training loop, MDN, chains and the report's numbers lss_infer.h's (lss_sumnet_train, lss_mdn_fit,
 * lss_deeplss_chains, lss_deeplss_gains, lss_deeplss_fom, lss_coverage). Every subcommand works in one
 * directory (--out DIR); `sim` (or `train`, which simulates the pool when it is missing) writes
 * DIR/deeplss.cfg with the sizes of the run, which later subcommands read.
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#include "lss_core.h"
#include "lss_maps.h"
#include "lss_nn.h"
#include "lss_infer.h"
#include "drivers/lss_driver.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DL_NBINS 4                  /* tomographic bins */
#define DL_NNET 6                   /* {cnn, psd} x {comb, wl, gc}: network k = kind * 3 + probe */
#define DL_NP LSS_DEEPLSS_NPARAM    /* Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g */
static const char *const dl_kind[2] = {"cnn", "psd"}, *const dl_probe[3] = {"comb", "wl", "gc"};
static const char *const dl_probe_long[3] = {"combined", "lensing", "clustering"};
static const char *const dl_set_name[LSS_DRAWS_NSETS] = {"mdn", "cal", "fid", "check"};

/* ------------------------------------------------------------------ configuration (DIR/deeplss.cfg) */
typedef struct {
    int scale, nside, grid;     /* 0 small, 1 paper; field pixels per side; mosaic grid x grid fields */
    double pixel_arcmin;
    int ncosmo, nf_train, nf_test, nconv, nres, channels, kernel;
    double cnn_in_std;          /* > 0: CNN input channels scaled to this standard deviation */
    int psd_width, nell;
    double ell_min, ell_max;
    int batch, steps, eval_every, ckpt_every, ntest;
    double lr_cnn, lr_psd, clip_pct;
    int cosine;                 /* 1: cosine decay of the learning rate to 5%; 0: constant (the paper) */
    int pred_per_cosmo, ncal, nfid, ncheck, check_rep, mdn_width, mdn_layers, mdn_K, mdn_epochs;
    int mdn_robust;             /* 1: robust scaler for the summaries; 0: min-max + normal quantile (appendix C) */
    int walkers, burn, nsteps;
    uint64_t seed;
} dl_cfg;

static void dl_cfg_defaults(dl_cfg *c, int scale) {
    memset(c, 0, sizeof *c);
    c->scale = scale; c->seed = 1; c->clip_pct = 50; c->batch = 32; c->ntest = 256;
    if (scale == 0) {   /* one 5 x 5 deg field at half the paper's resolution (32 x 32 pixels of 9.375 arcmin) */
        c->nside = 32; c->grid = 1; c->pixel_arcmin = 9.375; c->ncosmo = 64; c->nf_train = 16; c->nf_test = 8;
        c->nconv = 3; c->nres = 1; c->channels = 32; c->kernel = 3; c->cnn_in_std = 0.1;
        c->psd_width = 256; c->nell = 8; c->ell_min = 72; c->ell_max = 1152;
        c->steps = 4000; c->eval_every = 100; c->ckpt_every = 500; c->lr_cnn = 1e-3; c->lr_psd = 1e-3; c->cosine = 1;
        c->pred_per_cosmo = 128; c->ncal = 60; c->nfid = 24; c->ncheck = 16; c->check_rep = 32;
        c->mdn_width = 128; c->mdn_layers = 2; c->mdn_K = 3; c->mdn_epochs = 600; c->mdn_robust = 1;
        c->walkers = 32; c->burn = 150; c->nsteps = 250;
    } else {            /* the paper: 6 x 6 mosaics of 64 x 64 fields, the released code's CNN and PSD network */
        c->nside = 64; c->grid = 6; c->pixel_arcmin = LSS_DEEPLSS_PIXEL_ARCMIN; c->ncosmo = 57; c->nf_train = 36; c->nf_test = 36;
        c->nconv = 4; c->nres = 10; c->channels = 128; c->kernel = 5;
        c->psd_width = 1024; c->nell = 20; c->ell_min = 36; c->ell_max = 2304;
        c->steps = 900000; c->eval_every = 1000; c->ckpt_every = 5000; c->ntest = 32; c->lr_cnn = 5e-5; c->lr_psd = 2.5e-3;
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
    if (!(f = fopen(path, "r"))) return lss_seterr(LSS_ERR_IO, "cannot read %s (run 'deeplss sim' or 'deeplss train' first)", path);
    dl_cfg_defaults(c, 0);
    while (fscanf(f, "%63s", key) == 1) {
        if (!strcmp(key, "seed")) {
            if (fscanf(f, "%llu", &sd) != 1) break;
            c->seed = sd; nread++;
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
    if (c->nside < 8 || c->grid < 1 || c->ncosmo < 1 || c->nf_train < 1 || c->nf_test < 1 || c->batch < 1 || c->nell < 1 ||
        c->nell > 63 || !(c->pixel_arcmin > 0) || c->walkers < 2 * DL_NP || c->walkers % 2 || c->nsteps < 1 || c->burn < 0 ||
        c->ncheck < 0 || c->check_rep < 1 || c->nfid < 1 || c->ncal < 0 || c->pred_per_cosmo < 1 || c->steps < 1 || c->ntest < 0)
        return lss_seterr(LSS_ERR_FORMAT, "%s: values out of range", path);
    return LSS_OK;
}

/* ------------------------------------------------------------------ the run: pool, survey recipe, per-thread buffers */
typedef struct {
    dl_cfg c;
    char dir[4096];
    lss_pool pool;
    lss_cosmo *cosmo0;
    lss_nz *nz;
    int nzb, nthreads, npairs, pair_probe[64];   /* pair q belongs to probe set p when bit p is set */
    lss_sim *sim;
    lss_survey *sv;
    lss_survey_work **work;
    lss_drv_progress pr;
} dl_ctx;

static void dl_ctx_free(dl_ctx *x) {
    int t;
    if (x->work) for (t = 0; t < x->nthreads; t++) lss_survey_work_free(x->work[t]);
    free(x->work);
    lss_survey_free(x->sv);
    lss_sim_free(x->sim);
    lss_cosmo_free(x->cosmo0);
    if (x->nz) lss_nz_free(x->nz, x->nzb);
    lss_pool_free(&x->pool);
    memset(x, 0, sizeof *x);
}

static void dl_sim_opts(const dl_cfg *c, lss_sim_opts *o) {
    memset(o, 0, sizeof *o);
    o->nside = c->nside;
    o->pixel_arcmin = c->pixel_arcmin;
}

static int dl_ctx_open(dl_ctx *x, const dl_cfg *c, const char *dir) {
    lss_params p;
    lss_sim_opts so;
    lss_survey_opts vo;
    int s, t, q, i, j;
    memset(x, 0, sizeof *x);
    x->c = *c;
    snprintf(x->dir, sizeof x->dir, "%s", dir);
#ifdef _OPENMP
    x->nthreads = omp_get_max_threads();
#else
    x->nthreads = 1;
#endif
    lss_params_fiducial(&p);
    if ((s = lss_cosmo_create(&p, &x->cosmo0)) || (s = lss_nz_builtin("deeplss", &x->nz, &x->nzb))) return s;
    if (x->nzb != DL_NBINS) return lss_seterr(LSS_ERR_STATE, "expected 4 tomographic bins, got %d", x->nzb);
    dl_sim_opts(c, &so);
    if ((s = lss_sim_create(x->cosmo0, x->nz, x->nzb, &so, &x->sim))) return s;
    memset(&vo, 0, sizeof vo);
    vo.grid = c->grid; vo.nell = c->nell; vo.ell_min = c->ell_min; vo.ell_max = c->ell_max;
    if ((s = lss_survey_create(x->sim, &vo, &x->sv))) return s;
    if (!(x->work = (lss_survey_work **)calloc((size_t)x->nthreads, sizeof *x->work))) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    for (t = 0; t < x->nthreads; t++)
        if ((s = lss_survey_work_create(x->sv, &x->work[t]))) return s;
    x->npairs = lss_survey_npairs(x->sv);
    for (q = 0; q < x->npairs; q++) {
        lss_survey_pair(x->sv, q, &i, &j);
        x->pair_probe[q] = 1 | (j < DL_NBINS ? 2 : 0) | (i >= DL_NBINS ? 4 : 0);
    }
    return LSS_OK;
}

static const char *dl_path(const dl_ctx *x, char *buf, size_t n, const char *fmt, const char *a, const char *b, const char *c) {
    char name[256];
    snprintf(name, sizeof name, fmt, a, b, c);
    if (snprintf(buf, n, "%s/%s", x->dir, name) >= (int)n) buf[n - 1] = 0;
    return buf;
}

static int dl_save(const dl_ctx *x, const char *name, int64_t n, const double *v) {
    char path[4400];
    int64_t sh[2] = {n, DL_NP};
    return lss_npy_save(dl_path(x, path, sizeof path, "%s", name, 0, 0), LSS_F64, 2, sh, v);
}

/* Loads a float64 [n][7] array; n_expect >= 0 checks the rows. */
static int dl_load(const dl_ctx *x, const char *name, int64_t n_expect, int64_t *n, double **v) {
    char path[4400];
    lss_array a;
    int s;
    if ((s = lss_npy_load(dl_path(x, path, sizeof path, "%s", name, 0, 0), &a))) return s;
    if (a.dtype != LSS_F64 || a.ndim != 2 || a.shape[1] != DL_NP || (n_expect >= 0 && a.shape[0] != n_expect)) {
        lss_array_free(&a);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected a float64 array [%lld, %d]", path, (long long)n_expect, DL_NP);
    }
    *n = a.shape[0];
    *v = (double *)a.data;
    return LSS_OK;
}

static int dl_progress(int done, int total, void *user) {
    lss_drv_progress_update(&((dl_ctx *)user)->pr, done);
    (void)total;
    return 0;
}

/* ------------------------------------------------------------------ pool of noise-free fields */
static int dl_pool_simulate(dl_ctx *x) {
    const dl_cfg *c = &x->c;
    lss_sim_opts so;
    char path[4400];
    int64_t sh[5] = {c->ncosmo, c->nf_train + c->nf_test, 3 * DL_NBINS, c->nside, c->nside};
    int s;
    if ((s = lss_pool_init(&x->pool, c->ncosmo, c->nf_train, c->nf_test, DL_NBINS, c->nside))) return s;
    dl_sim_opts(c, &so);
    lss_drv_progress_init(&x->pr, "deeplss sim: cosmologies", c->ncosmo);
    if ((s = lss_pool_simulate(&x->pool, x->nz, &so, c->seed, dl_progress, x))) return s;
    lss_drv_progress_end(&x->pr);
    if ((s = lss_npy_save(dl_path(x, path, sizeof path, "pool_fields.npy", 0, 0, 0), LSS_F32, 5, sh, x->pool.fields))) return s;
    sh[1] = 2;
    return lss_npy_save(dl_path(x, path, sizeof path, "pool_cosmo.npy", 0, 0, 0), LSS_F64, 2, sh, x->pool.cosmo);
}

/* pool_cosmo.npy, and pool_fields.npy when with_fields (the MDN and MCMC stages need only the grid). */
static int dl_pool_load(dl_ctx *x, int with_fields) {
    const dl_cfg *c = &x->c;
    char path[4400];
    lss_array a;
    int s, nd;
    int64_t sh[LSS_MAX_DIM];
    float *f = NULL;
    if ((s = lss_pool_init(&x->pool, c->ncosmo, c->nf_train, c->nf_test, DL_NBINS, with_fields ? c->nside : 2))) return s;
    if ((s = lss_npy_load(dl_path(x, path, sizeof path, "pool_cosmo.npy", 0, 0, 0), &a))) return s;
    if (a.dtype != LSS_F64 || a.ndim != 2 || a.shape[0] != c->ncosmo || a.shape[1] != 2) {
        lss_array_free(&a);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected float64 [%d, 2]", path, c->ncosmo);
    }
    memcpy(x->pool.cosmo, a.data, sizeof(double) * 2 * (size_t)c->ncosmo);
    lss_array_free(&a);
    if (!with_fields) return LSS_OK;
    if ((s = lss_npy_load_f32(dl_path(x, path, sizeof path, "pool_fields.npy", 0, 0, 0), &f, &nd, sh))) return s;
    if (nd != 5 || sh[0] != c->ncosmo || sh[1] != c->nf_train + c->nf_test || sh[2] != 3 * DL_NBINS || sh[3] != c->nside ||
        sh[4] != c->nside) {
        LSS_FREE(f);
        return lss_seterr(LSS_ERR_FORMAT, "%s: shape does not match deeplss.cfg", path);
    }
    LSS_FREE(x->pool.fields);
    x->pool.fields = f;
    return LSS_OK;
}

/* ------------------------------------------------------------------ networks */
static int dl_net_create(const dl_ctx *x, int k, int batch, int with_opt, lss_sumnet **out) {
    const dl_cfg *c = &x->c;
    lss_sumnet_opts so;
    lss_optim_opts oo;
    int use[64], q, probe = k % 3;
    memset(&so, 0, sizeof so);
    so.kind = k / 3 == 0 ? LSS_SUMNET_CNN : LSS_SUMNET_PSD;
    so.batch = batch;
    so.map_ch = 2 * DL_NBINS; so.side = lss_survey_side(x->sv);
    so.nch = probe == 0 ? 2 * DL_NBINS : DL_NBINS;
    so.ch0 = probe == 2 ? DL_NBINS : 0;
    so.nconv = c->nconv; so.nres = c->nres; so.channels = c->channels; so.kernel = c->kernel; so.in_std = c->cnn_in_std;
    for (q = 0; q < x->npairs; q++) use[q] = (x->pair_probe[q] >> probe) & 1;
    so.npairs = x->npairs; so.nell = c->nell; so.use_pair = use; so.width = c->psd_width;
    so.seed = c->seed;
    so.sub = (uint32_t)k;
    if (with_opt) {
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM;
        oo.lr = k / 3 == 0 ? c->lr_cnn : c->lr_psd;
        oo.eps = 1e-7; /* Keras's Adam */
        oo.clip = LSS_CLIP_PERCENTILE; oo.clip_percentile = c->clip_pct; oo.clip_history = 10000;
        if (c->cosine) { oo.sched = LSS_SCHED_COSINE; oo.total_steps = c->steps; oo.lr_min = 0.05 * oo.lr; }
        so.optim = &oo;
    }
    return lss_sumnet_create(&so, out);
}

/* ------------------------------------------------------------------ train */
static int dl_draw(void *user, int64_t step, int n, float *maps, double *spec, double *theta) {
    dl_ctx *x = (dl_ctx *)user;
    return lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_TRAIN, (uint64_t)step * (uint64_t)n, n, 0, x->c.seed,
                          maps, spec, theta);
}

static void dl_train_progress(void *user, int64_t step, int64_t steps, const double *train, const double *valid) {
    lss_drv_progress_update(&((dl_ctx *)user)->pr, step);
    (void)steps; (void)train; (void)valid;
}

/* loss.png from loss.csv: every column against the first */
static int dl_plot_csv(const char *csv, const char *png, const char *title) {
    lss_csv lc;
    lss_plot_opts po;
    double *cols = NULL, *ys[64];
    int s, j, n;
    int64_t i;
    if ((s = lss_csv_read(csv, &lc))) return s;
    n = lc.ncols - 1 < 64 ? lc.ncols - 1 : 64;
    if (n < 1 || lc.nrows < 1) { lss_csv_free(&lc); return LSS_OK; }
    if (!(cols = (double *)malloc(sizeof(double) * (size_t)lc.nrows * (size_t)(n + 1)))) { lss_csv_free(&lc); return lss_seterr(LSS_ERR_NOMEM, "out of memory"); }
    for (j = 0; j <= n; j++) {
        for (i = 0; i < lc.nrows; i++) cols[j * lc.nrows + i] = lc.data[i * lc.ncols + j];
        if (j) ys[j - 1] = cols + j * lc.nrows;
    }
    memset(&po, 0, sizeof po);
    po.title = title; po.xlabel = lc.names[0]; po.ylabel = "loss"; po.width = 900; po.height = 560;
    s = lss_plot_lines(png, &po, n, lc.nrows, cols, (const double *const *)ys, (const char *const *)lc.names + 1);
    free(cols);
    lss_csv_free(&lc);
    return s;
}

static int dl_train(dl_ctx *x, int mask, int resume, int steps_override) {
    const dl_cfg *c = &x->c;
    lss_sumnet *nets[DL_NNET] = {0};
    char names[DL_NNET][16], ck[DL_NNET][4400], lpath[4400], ppath[4400];
    const char *np[DL_NNET], *cp[DL_NNET];
    int nn = 0, k, s = LSS_OK, B = c->batch, NT = c->ntest, nstd = c->scale == 0 ? 512 : 64, i;
    int64_t msz = lss_survey_map_size(x->sv), ssz = lss_survey_spec_size(x->sv);
    float *maps = (float *)malloc(sizeof(float) * (size_t)(NT > B ? NT : B) * (size_t)msz);
    double *spec = (double *)malloc(sizeof(double) * (size_t)(NT > nstd ? NT : nstd) * (size_t)ssz);
    double *th = (double *)malloc(sizeof(double) * (size_t)(NT > 1 ? NT : 1) * DL_NP);
    lss_sumnet_train_opts to;
    lss_train_result res;
    if (!maps || !spec || !th) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        if ((s = dl_net_create(x, k, B > 64 ? B : 64, 1, &nets[nn]))) goto out;
        snprintf(names[nn], sizeof names[nn], "%s_%s", dl_kind[k / 3], dl_probe[k % 3]);
        dl_path(x, ck[nn], sizeof ck[nn], "net_%s.ckpt", names[nn], 0, 0);
        if (resume) {
            FILE *f = fopen(ck[nn], "rb");
            if (!f) { s = lss_seterr(LSS_ERR_IO, "--resume: no checkpoint %s", ck[nn]); goto out; }
            fclose(f);
        }
        np[nn] = names[nn]; cp[nn] = ck[nn];
        fprintf(stderr, "deeplss train: %s network: %lld trainable parameters\n", names[nn], (long long)lss_store_nparams(nets[nn]->store));
        nn++;
    }
    if (nn == 0) { s = lss_seterr(LSS_ERR_ARG, "no network selected"); goto out; }
    /* input standardisation from nstd training draws (PSD: their spectra; CNN: the last batch of maps; the
       lensing channels carry unit-variance noise after appendix E, the clustering ones a few tenths) */
    for (i = 0; i < nstd && s == LSS_OK; i += B)
        s = lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_TRAIN, (uint64_t)i, nstd - i < B ? nstd - i : B, 0,
                           c->seed, maps, spec + (size_t)i * ssz, NULL);
    for (k = 0; k < nn && s == LSS_OK; k++)
        s = nets[k]->o.kind == LSS_SUMNET_PSD ? lss_sumnet_standardise(nets[k], NULL, spec, nstd)
                                              : lss_sumnet_standardise(nets[k], maps, NULL, (nstd - 1) % B + 1);
    /* the held-out set: fixed draws of the validation set on the pool's held-out fields */
    if (s == LSS_OK && NT > 0) s = lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_VALID, 0, NT, 1, c->seed, maps, spec, th);
    if (s) goto out;
    memset(&to, 0, sizeof to);
    to.steps = steps_override > 0 ? steps_override : c->steps;
    to.batch = B; to.eval_every = c->eval_every; to.ckpt_every = c->ckpt_every; to.resume = resume;
    to.loss_csv = dl_path(x, lpath, sizeof lpath, "loss.csv", 0, 0, 0);
    to.map_size = msz; to.spec_size = ssz;
    to.draw = dl_draw; to.progress = dl_train_progress; to.user = x;
    to.ntest = NT; to.test_maps = maps; to.test_spec = spec; to.test_theta = th;
    lss_drv_progress_init(&x->pr, "deeplss train: steps", to.steps);
    if ((s = lss_sumnet_train(nets, nn, np, cp, &to, &res))) goto out;
    lss_drv_progress_end(&x->pr);
    if (res.skipped) fprintf(stderr, "deeplss train: %lld steps skipped (non-finite gradients)\n", (long long)res.skipped);
    fprintf(stderr, "deeplss train: %d networks at step %lld in %.1f s (%.3f s per training step: data, forward, backward, update)\n",
            nn, (long long)res.steps_done, res.seconds, res.seconds_step / (double)(to.steps > 0 ? to.steps : 1));
    s = dl_plot_csv(lpath, dl_path(x, ppath, sizeof ppath, "loss.png", 0, 0, 0),
                    "DeepLSS likelihood loss (eq. 14): train (running mean) and held-out");
out:
    for (k = 0; k < DL_NNET; k++) lss_sumnet_free(nets[k]);
    free(maps); free(spec); free(th);
    return s;
}

/* ------------------------------------------------------------------ predict: summaries of the draw sets of section IV */
static int dl_set_size(const dl_cfg *c, int set) {
    return set == LSS_DRAWS_MDN ? c->ncosmo * c->pred_per_cosmo : set == LSS_DRAWS_CAL ? c->ncal
         : set == LSS_DRAWS_FID ? c->nfid : c->ncheck * c->check_rep;
}

static int dl_predict(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    lss_sumnet *nets[DL_NNET] = {0};
    int kk[DL_NNET], nn = 0, k, s = LSS_OK, set, CH = c->scale == 0 ? 128 : c->batch, i, j;
    int64_t msz = lss_survey_map_size(x->sv), ssz = lss_survey_spec_size(x->sv);
    float *maps = (float *)malloc(sizeof(float) * (size_t)CH * (size_t)msz);
    double *spec = (double *)malloc(sizeof(double) * (size_t)CH * (size_t)ssz), *pred[DL_NNET] = {0}, *tht = NULL;
    lss_pool_draw *dr = (lss_pool_draw *)malloc(sizeof(lss_pool_draw) * (size_t)CH);
    char path[4400], name[128];
    if (!maps || !spec || !dr) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        if ((s = dl_net_create(x, k, CH, 0, &nets[nn])) ||
            (s = lss_ckpt_load(dl_path(x, path, sizeof path, "net_%s_%s.ckpt", dl_kind[k / 3], dl_probe[k % 3], 0), nets[nn]->store, NULL)))
            goto out;
        kk[nn++] = k;
    }
    for (set = 0; set < LSS_DRAWS_NSETS; set++) {
        int n = dl_set_size(c, set), per = set == LSS_DRAWS_MDN ? c->pred_per_cosmo : c->check_rep;
        if (n <= 0) continue;
        if (!(tht = (double *)malloc(sizeof(double) * (size_t)n * DL_NP))) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        for (k = 0; k < nn; k++)
            if (!(pred[k] = (double *)malloc(sizeof(double) * (size_t)n * DL_NP))) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
        snprintf(name, sizeof name, "deeplss predict: %s", dl_set_name[set]);
        lss_drv_progress_init(&x->pr, name, n);
        for (i = 0; i < n; i += CH) {
            int nb = n - i < CH ? n - i : CH;
            for (j = 0; j < nb; j++) {
                if ((s = lss_pool_eval_draw(&x->pool, c->seed, set, i + j, per, &dr[j]))) goto out;
                memcpy(tht + (size_t)(i + j) * DL_NP, dr[j].theta, sizeof(double) * DL_NP);
            }
            if ((s = lss_pool_observe_many(&x->pool, x->sv, x->work, x->nthreads, dr, nb, c->seed, maps, spec))) goto out;
            for (k = 0; k < nn; k++) {
                for (j = 0; j < nb; j++)
                    if ((s = lss_sumnet_input(nets[k], j, maps + j * msz, spec + j * ssz))) goto out;
                if ((s = lss_sumnet_predict(nets[k], nb, pred[k] + (size_t)i * DL_NP))) goto out;
            }
            lss_drv_progress_update(&x->pr, i + nb);
        }
        lss_drv_progress_end(&x->pr);
        snprintf(name, sizeof name, "theta_%s.npy", dl_set_name[set]);
        if ((s = dl_save(x, name, n, tht))) goto out;
        for (k = 0; k < nn; k++) {
            snprintf(name, sizeof name, "pred_%s_%s_%s.npy", dl_set_name[set], dl_kind[kk[k] / 3], dl_probe[kk[k] % 3]);
            if ((s = dl_save(x, name, n, pred[k]))) goto out;
            free(pred[k]);
            pred[k] = NULL;
        }
        free(tht);
        tht = NULL;
    }
out:
    for (k = 0; k < DL_NNET; k++) { lss_sumnet_free(nets[k]); free(pred[k]); }
    free(tht); free(maps); free(spec); free(dr);
    return s;
}

/* ------------------------------------------------------------------ MDN likelihoods and their check (appendix C) */
static void dl_mdn_opts(const dl_cfg *c, lss_mdn_opts *mo) {
    memset(mo, 0, sizeof *mo);
    mo->nhidden = c->mdn_layers; mo->width = c->mdn_width; mo->K = c->mdn_K; mo->max_epochs = c->mdn_epochs;
    mo->seed = lss_stream_key(c->seed, LSS_STREAM_MDN, 0, 0);
    mo->batch = c->scale == 0 ? 512 : 5000;
    mo->lr = 1e-3;
    mo->patience = 50;
    if (c->mdn_robust) mo->scale_p = LSS_SCALE_ROBUST;
}

static int dl_mdn(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    int k, i, s = LSS_OK, nr = 0, nck = c->ncheck > 0 ? c->ncheck : 1;
    int64_t n, n2;
    double *tt = NULL, *tp = NULL, *ct = NULL, *cp = NULL, *ctu = NULL, *dmu = NULL, *dsig = NULL, rows[DL_NNET * 8];
    char name[128], path[4400];
    lss_mdn *m = NULL;
    lss_mdn_opts mo;
    lss_mdn_check_summary cs;
    const char *hdr[8] = {"kind", "probe", "dmu_median", "dmu_lo", "dmu_hi", "dsig_median", "dsig_lo", "dsig_hi"};
    dl_mdn_opts(c, &mo);
    if ((s = dl_load(x, "theta_mdn.npy", -1, &n, &tt)) || (s = dl_load(x, "theta_check.npy", (int64_t)c->ncheck * c->check_rep, &n2, &ct)))
        goto out;
    dmu = (double *)malloc(sizeof(double) * (size_t)nck * DL_NP);
    dsig = (double *)malloc(sizeof(double) * (size_t)nck * DL_NP);
    ctu = (double *)malloc(sizeof(double) * (size_t)nck * DL_NP);
    if (!dmu || !dsig || !ctu) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (i = 0; i < c->ncheck; i++) memcpy(ctu + i * DL_NP, ct + (size_t)i * c->check_rep * DL_NP, sizeof(double) * DL_NP);
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        snprintf(name, sizeof name, "pred_mdn_%s_%s.npy", dl_kind[k / 3], dl_probe[k % 3]);
        if ((s = dl_load(x, name, n, &n2, &tp)) || (s = lss_mdn_create(DL_NP, DL_NP, &mo, &m)) || (s = lss_mdn_fit(m, tt, tp, n, &mo)) ||
            (s = lss_mdn_save(m, dl_path(x, path, sizeof path, "mdn_%s_%s.ckpt", dl_kind[k / 3], dl_probe[k % 3], 0))))
            goto out;
        fprintf(stderr, "deeplss mdn %s_%s: %d epochs, best validation loss %.4f at epoch %d\n", dl_kind[k / 3], dl_probe[k % 3],
                m->epochs, m->best_val, m->best_epoch);
        if (c->ncheck > 0) {   /* the MDN's samples against held-out simulated summaries at the same theta_t */
            snprintf(name, sizeof name, "pred_check_%s_%s.npy", dl_kind[k / 3], dl_probe[k % 3]);
            if ((s = dl_load(x, name, (int64_t)c->ncheck * c->check_rep, &n2, &cp)) ||
                (s = lss_mdn_check(m, ctu, c->ncheck, cp, c->check_rep, 1000, lss_stream_key(c->seed, LSS_STREAM_CHECK, (uint64_t)k, 0), dmu, dsig)) ||
                (s = lss_mdn_check_report(dmu, dsig, c->ncheck, DL_NP, dl_path(x, path, sizeof path, "mdn_check_%s_%s.csv", dl_kind[k / 3], dl_probe[k % 3], 0), &cs)))
                goto out;
            rows[nr * 8] = k / 3; rows[nr * 8 + 1] = k % 3;
            rows[nr * 8 + 2] = cs.dmu_median; rows[nr * 8 + 3] = cs.dmu_lo; rows[nr * 8 + 4] = cs.dmu_hi;
            rows[nr * 8 + 5] = cs.dsig_median; rows[nr * 8 + 6] = cs.dsig_lo; rows[nr * 8 + 7] = cs.dsig_hi;
            nr++;
        }
        lss_mdn_free(m); m = NULL;
        free(tp); tp = NULL;
        free(cp); cp = NULL;
    }
    if (nr > 0) s = lss_csv_write(dl_path(x, path, sizeof path, "mdn_check.csv", 0, 0, 0), 8, hdr, nr, rows);
out:
    lss_mdn_free(m);
    free(tt); free(tp); free(ct); free(cp); free(ctu); free(dmu); free(dsig);
    return s;
}

/* ------------------------------------------------------------------ MCMC: the job table of section V */
static int dl_mcmc(dl_ctx *x, int mask) {
    const dl_cfg *c = &x->c;
    const lss_param_table *t1 = lss_table1();
    int NT = x->nthreads > 64 ? 64 : x->nthreads, nm = 0, slot[DL_NNET], k, i, q, tc, nj = 0, nfail = 0, s;
    lss_mdn **mdn = NULL;
    lss_mdn_opts mo;
    lss_prior pr;
    lss_chain_opts co;
    lss_deeplss_job *jobs = NULL;
    double *fidp = NULL, *calp = NULL, *calt = NULL, mid[DL_NP], *rows = NULL;
    int64_t n;
    char name[160], path[4400], hb[DL_NP + 1][32];
    const char *h1[4 + DL_NP + 4], *h2[8] = {"kind", "mock", "param", "truth", "lo68", "hi68", "inside", "ok"};
    memset(&pr, 0, sizeof pr);
    dl_mdn_opts(c, &mo);
    for (k = 0; k < DL_NNET; k++) slot[k] = (mask >> k) & 1 ? nm++ : -1;
    /* the prior: Table I box and the convex hull of the grid in (Omega_m, sigma_8) */
    if ((s = lss_prior_init(&pr, DL_NP, t1->lo, t1->hi)) || (s = lss_prior_set_names(&pr, t1->name)) ||
        (c->ncosmo >= 3 && (s = lss_prior_set_hull(&pr, 0, 1, x->pool.cosmo, c->ncosmo))))
        goto out;
    mdn = (lss_mdn **)calloc((size_t)NT * (size_t)nm, sizeof *mdn);
    jobs = (lss_deeplss_job *)calloc((size_t)(nm * (1 + c->nfid) + 2 * c->ncal) + 1, sizeof *jobs);
    rows = (double *)calloc((size_t)(nm * (1 + c->nfid) + 2 * c->ncal * DL_NP) * 16 + 1, sizeof(double));
    if (!mdn || !jobs || !rows) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (slot[k] < 0) continue;
        dl_path(x, path, sizeof path, "mdn_%s_%s.ckpt", dl_kind[k / 3], dl_probe[k % 3]);
        for (tc = 0; tc < NT; tc++)
            if ((s = lss_mdn_create(DL_NP, DL_NP, &mo, &mdn[tc * nm + slot[k]])) || (s = lss_mdn_load(mdn[tc * nm + slot[k]], path))) goto out;
        snprintf(name, sizeof name, "pred_fid_%s_%s.npy", dl_kind[k / 3], dl_probe[k % 3]);
        if ((s = dl_load(x, name, c->nfid, &n, &fidp))) goto out;
        /* section V: the most likely prediction at the fiducial parameters (the MDN's mode there); when no draw
           falls inside the MDN's summary range, the per-component median of the noisy fiducial predictions */
        {
            lss_rng r;
            lss_deeplss_job *j = &jobs[nj++];
            lss_rng_for(&r, c->seed, LSS_STREAM_MDN, 1, (uint32_t)k);
            s = lss_mdn_mode(mdn[slot[k]], t1->fiducial, 2000, &r, j->obs);
            if (s == LSS_ERR_RANGE) {
                double *col = (double *)malloc(sizeof(double) * (size_t)c->nfid);
                if (!col) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
                for (i = 0; i < DL_NP; i++) {
                    for (q = 0; q < c->nfid; q++) col[q] = fidp[q * DL_NP + i];
                    j->obs[i] = lss_percentile(col, c->nfid, 50);
                }
                free(col);
                s = LSS_OK;
            }
            if (s) goto out;
            j->mdn = slot[k]; j->keep = 1;
            memcpy(j->start, t1->fiducial, sizeof j->start);
        }
        for (i = 0; i < c->nfid; i++, nj++) {
            jobs[nj].mdn = slot[k];
            memcpy(jobs[nj].obs, fidp + (size_t)i * DL_NP, sizeof jobs[nj].obs);
            memcpy(jobs[nj].start, t1->fiducial, sizeof jobs[nj].start);
        }
        free(fidp); fidp = NULL;
    }
    /* calibration mocks: the combined-probe networks at random grid cosmologies and nuisance parameters */
    for (k = 0; k < DL_NNET; k += 3) {
        if (slot[k] < 0 || c->ncal <= 0) continue;
        snprintf(name, sizeof name, "pred_cal_%s_comb.npy", dl_kind[k / 3]);
        if ((s = dl_load(x, name, c->ncal, &n, &calp)) || (!calt && (s = dl_load(x, "theta_cal.npy", c->ncal, &n, &calt)))) goto out;
        for (i = 0; i < c->ncal; i++, nj++) {
            jobs[nj].mdn = slot[k];
            memcpy(jobs[nj].obs, calp + (size_t)i * DL_NP, sizeof jobs[nj].obs);
            memcpy(jobs[nj].start, calt + (size_t)i * DL_NP, sizeof jobs[nj].start);
        }
        free(calp); calp = NULL;
    }
    /* walkers in a ball of 1e-3 of the prior width around the truth, pulled towards the grid's mean cosmology
       and the middle of the nuisance box when outside the prior */
    for (k = 0; k < DL_NP; k++) mid[k] = 0.5 * (t1->lo[k] + t1->hi[k]);
    mid[0] = mid[1] = 0;
    for (i = 0; i < c->ncosmo; i++) { mid[0] += x->pool.cosmo[2 * i] / c->ncosmo; mid[1] += x->pool.cosmo[2 * i + 1] / c->ncosmo; }
    memset(&co, 0, sizeof co);
    co.prior = &pr; co.walkers = c->walkers; co.burn = c->burn; co.steps = c->nsteps; co.seed = c->seed; co.spread = 1e-3; co.mid = mid;
    lss_drv_progress_init(&x->pr, "deeplss mcmc: chains", nj);
    if ((s = lss_deeplss_chains(mdn, nm, NT, &co, jobs, nj, dl_progress, x))) goto out;
    lss_drv_progress_end(&x->pr);
    /* per fiducial mock: mcmc_fid.csv (mock -1: the most likely observation, whose chain is kept); calibration.csv */
    h1[0] = "kind"; h1[1] = "probe"; h1[2] = "mock"; h1[3] = "ok";
    for (k = 0; k <= DL_NP; k++) { snprintf(hb[k], sizeof hb[k], "std_%s", k < DL_NP ? t1->name[k] : "S8"); h1[4 + k] = hb[k]; }
    h1[5 + DL_NP] = "fom_det"; h1[6 + DL_NP] = "area68"; h1[7 + DL_NP] = "acceptance";
    for (k = 0, i = 0, n = 0; k < DL_NNET; k++) {
        if (slot[k] < 0) continue;
        for (q = -1; q < c->nfid; q++, i++, n++) {
            lss_deeplss_job *j = &jobs[i];
            double *r = rows + (size_t)n * (8 + DL_NP);
            r[0] = k / 3; r[1] = k % 3; r[2] = q; r[3] = j->ok;
            memcpy(r + 4, j->c.std, sizeof(double) * (DL_NP + 1));
            r[5 + DL_NP] = j->c.fom_det; r[6 + DL_NP] = j->c.area68; r[7 + DL_NP] = j->acc;
            nfail += !j->ok;
            if (j->flat) {
                int64_t sh[2] = {j->nflat, DL_NP};
                if ((s = lss_npy_save(dl_path(x, path, sizeof path, "chain_fid_%s_%s.npy", dl_kind[k / 3], dl_probe[k % 3], 0), LSS_F64, 2, sh, j->flat))) goto out;
            }
        }
    }
    if ((s = lss_csv_write(dl_path(x, path, sizeof path, "mcmc_fid.csv", 0, 0, 0), 8 + DL_NP, h1, n, rows))) goto out;
    for (n = 0; i < nj; i++) {
        lss_deeplss_job *j = &jobs[i];
        nfail += !j->ok;
        for (k = 0; k < DL_NP; k++, n++) {
            double *r = rows + (size_t)n * 8;
            r[0] = i < nj - (slot[0] >= 0 && slot[3] >= 0 ? c->ncal : 0) ? (slot[0] >= 0 ? 0 : 1) : 1;
            r[1] = (i - (nj - c->ncal * ((slot[0] >= 0) + (slot[3] >= 0)))) % c->ncal;
            r[2] = k; r[3] = j->start[k]; r[4] = j->c.lo68[k]; r[5] = j->c.hi68[k];
            r[6] = j->ok ? (j->start[k] >= r[4] && j->start[k] <= r[5]) : NAN;
            r[7] = j->ok;
        }
    }
    s = lss_csv_write(dl_path(x, path, sizeof path, "calibration.csv", 0, 0, 0), 8, h2, n, rows);
    fprintf(stderr, "deeplss mcmc: %d chains (%d with the observation outside the MDN's range)\n", nj, nfail);
out:
    if (mdn) for (i = 0; i < NT * nm; i++) lss_mdn_free(mdn[i]);
    if (jobs) for (i = 0; i < nj; i++) LSS_FREE(jobs[i].flat);
    free(mdn); free(jobs); free(rows); free(fidp); free(calp); free(calt);
    lss_prior_free(&pr);
    return s;
}
