/* deeplss - the DeepLSS experiment end to end (Kacprzak & Fluri 2022, sections III-VI): a pool of noise-free
 * tomographic fields, CNN and power-spectrum networks trained with the likelihood loss (eq. 14), network summaries
 * for many (parameters, noise) draws, MDN likelihoods (appendix C), ensemble MCMC at the fiducial parameters, the
 * gains table (Table II), corner plots and sensitivity maps (section VI).
 *     deeplss sim | train | predict | mdn | mcmc | report | all      (see deeplss --help)
 * Wiring only: the pool and observation recipe are lss_maps.h's (lss_pool_*, lss_survey_*); the configuration,
 * networks, training, MDN and MCMC stages, the report's numbers and figures lss_infer.h's (lss_deeplss_*,
 * lss_sumnet_train). Every subcommand works in one directory (--out DIR); `sim` (or `train`, which simulates the
 * pool when it is missing) writes DIR/deeplss.cfg with the sizes of the run, which later subcommands read. */
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

#define DL_NBINS LSS_DEEPLSS_NBINS
#define DL_NNET LSS_DEEPLSS_NNET    /* network k = kind * 3 + probe */
#define DL_NP LSS_DEEPLSS_NPARAM    /* Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g */
static char dl_net[DL_NNET][16];    /* "cnn_comb", ..., "psd_gc" */
static int dl_shards = 0;           /* --shards */
static const char *const dl_set_name[LSS_DRAWS_NSETS] = {"mdn", "cal", "fid", "check"};

/* ------------------------------------------------------------------ the run: pool, survey recipe, per-thread buffers */
typedef struct {
    lss_deeplss_cfg c;
    char dir[4096];
    lss_pool pool;
    lss_cosmo *cosmo0; lss_nz *nz;
    int nzb, nthreads, npairs, pair_probe[64];   /* pair q belongs to probe set p when bit p is set */
    lss_sim_opts so;
    lss_sim *sim; lss_survey *sv;
    lss_survey_work **work;
    lss_drv_progress pr;
    const char *library;   /* N-body shell library of the pool (lss-sim nbody), or NULL: lognormal shells */
} dl_ctx;

static void dl_ctx_free(dl_ctx *x) {
    int t;
    if (x->work) for (t = 0; t < x->nthreads; t++) lss_survey_work_free(x->work[t]);
    free(x->work);
    lss_survey_free(x->sv); lss_sim_free(x->sim); lss_cosmo_free(x->cosmo0);
    if (x->nz) lss_nz_free(x->nz, x->nzb);
    lss_pool_free(&x->pool);
    memset(x, 0, sizeof *x);
}

static int dl_ctx_open(dl_ctx *x, const lss_deeplss_cfg *c, const char *dir) {
    lss_params p;
    lss_survey_opts vo;
    int s, t, q, i, j;
    memset(x, 0, sizeof *x);
    x->c = *c;
    snprintf(x->dir, sizeof x->dir, "%s", dir);
    x->nthreads = 1;
#ifdef _OPENMP
    x->nthreads = omp_get_max_threads();
#endif
    lss_params_fiducial(&p);
    if ((s = lss_cosmo_create(&p, &x->cosmo0)) || (s = lss_nz_builtin("deeplss", &x->nz, &x->nzb))) return s;
    if (x->nzb != DL_NBINS) return lss_seterr(LSS_ERR_STATE, "expected 4 tomographic bins, got %d", x->nzb);
    x->so.nside = c->nside;
    x->so.pixel_arcmin = c->pixel_arcmin;
    if ((s = lss_sim_create(x->cosmo0, x->nz, x->nzb, &x->so, &x->sim))) return s;
    memset(&vo, 0, sizeof vo);
    vo.grid = c->grid; vo.nell = c->nell; vo.ell_min = c->ell_min; vo.ell_max = c->ell_max; vo.ps_mode = c->ps_estimator;
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

/* DIR/name, name from a format with one string argument */
static const char *dl_path(const dl_ctx *x, char *buf, size_t n, const char *fmt, const char *a) {
    char name[256];
    snprintf(name, sizeof name, fmt, a);
    if (snprintf(buf, n, "%s/%s", x->dir, name) >= (int)n) buf[n - 1] = 0;
    return buf;
}

static int dl_progress(int done, int total, void *user) {
    ((dl_ctx *)user)->pr.total = total;
    lss_drv_progress_update(&((dl_ctx *)user)->pr, done);
    return 0;
}

static int dl_net_create(const dl_ctx *x, int k, int batch, int with_opt, lss_sumnet **out) {
    return lss_deeplss_sumnet_create(&x->c, k, batch, lss_survey_side(x->sv), x->npairs, x->pair_probe, with_opt, out);
}

/* ------------------------------------------------------------------ pool of noise-free fields */
static int dl_pool_simulate(dl_ctx *x) {   /* lognormal shells, or the light cones of an N-body library */
    const lss_deeplss_cfg *c = &x->c;
    int s;
    if ((s = lss_pool_init(&x->pool, c->ncosmo, c->nf_train, c->nf_test, DL_NBINS, c->nside))) return s;
    lss_drv_progress_init(&x->pr, "deeplss sim: cosmologies", c->ncosmo);
    s = x->library ? lss_pool_simulate_library(&x->pool, x->nz, &x->so, x->library, dl_progress, x)
                   : lss_pool_simulate(&x->pool, x->nz, &x->so, c->seed, dl_progress, x);
    if (!s) lss_drv_progress_end(&x->pr);
    return s ? s : lss_pool_save(&x->pool, x->dir);
}

/* pool_cosmo.npy, and pool_fields.npy when with_fields (the MDN and MCMC stages need only the grid). */
static int dl_pool_load(dl_ctx *x, int with_fields) {
    const lss_deeplss_cfg *c = &x->c;
    int s = lss_pool_init(&x->pool, c->ncosmo, c->nf_train, c->nf_test, DL_NBINS, with_fields ? c->nside : 2);
    return s ? s : lss_pool_load(&x->pool, x->dir, with_fields);
}

/* ------------------------------------------------------------------ train */
static int dl_draw(void *user, int64_t step, int n, float *maps, double *spec, double *theta) {
    dl_ctx *x = (dl_ctx *)user;
    return lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_TRAIN, (uint64_t)step * (uint64_t)n, n, 0, x->c.seed,
                          maps, spec, theta);
}

static void dl_train_progress(void *user, int64_t step, int64_t steps, const double *train, const double *valid) {
    lss_drv_progress_update(&((dl_ctx *)user)->pr, step); (void)steps; (void)train; (void)valid;
}

static int dl_train(dl_ctx *x, int mask, int resume) {
    const lss_deeplss_cfg *c = &x->c;
    lss_sumnet *nets[DL_NNET] = {0};
    char ck[DL_NNET][4400], lpath[4400];
    const char *np[DL_NNET], *cp[DL_NNET];
    int nn = 0, k, s = LSS_OK, B = c->batch, NT = c->ntest, nstd = c->scale == LSS_DEEPLSS_SMALL ? 512 : 64, i;
    int64_t msz = lss_survey_map_size(x->sv), ssz = lss_survey_spec_size(x->sv);
    float *maps = (float *)malloc(sizeof(float) * (size_t)(NT > B ? NT : B) * (size_t)msz);
    double *spec = (double *)malloc(sizeof(double) * (size_t)(NT > nstd ? NT : nstd) * (size_t)ssz);
    double *th = (double *)malloc(sizeof(double) * (size_t)(NT > nstd ? NT : nstd) * DL_NP);
    lss_sumnet_train_opts to;
    lss_train_result res;
    FILE *f;
    if (!maps || !spec || !th) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        if ((s = dl_net_create(x, k, B > 64 ? B : 64, 1, &nets[nn]))) goto out;
        if ((i = dl_shards ? dl_shards : lss_mpi_size()) > 1 && (s = lss_sumnet_set_shards(nets[nn], i < B ? i : B))) goto out;
        dl_path(x, ck[nn], sizeof ck[nn], "net_%s.ckpt", dl_net[k]);
        if (resume && !(f = fopen(ck[nn], "rb"))) { s = lss_seterr(LSS_ERR_IO, "--resume: no checkpoint %s", ck[nn]); goto out; }
        if (resume) fclose(f);
        np[nn] = dl_net[k]; cp[nn] = ck[nn];
        fprintf(stderr, "deeplss train: %s network: %lld trainable parameters\n", dl_net[k], (long long)lss_store_nparams(nets[nn]->store));
        nn++;
    }
    /* input standardisation from nstd training draws (PSD: their spectra; CNN: the last batch of maps; the
       lensing channels carry unit-variance noise after appendix E, the clustering ones a few tenths); the
       targets standardised over the same draws of the prior */
    for (i = 0; i < nstd && s == LSS_OK; i += B)
        s = lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_TRAIN, (uint64_t)i, nstd - i < B ? nstd - i : B, 0,
                           c->seed, maps, spec + (size_t)i * ssz, th + (size_t)i * DL_NP);
    for (k = 0; k < nn && s == LSS_OK; k++)
        if (!(s = nets[k]->o.kind == LSS_SUMNET_PSD ? lss_sumnet_standardise(nets[k], NULL, spec, nstd)
                                                    : lss_sumnet_standardise(nets[k], maps, NULL, (nstd - 1) % B + 1)) &&
            !(s = nets[k]->o.hybrid ? lss_sumnet_standardise(nets[k], NULL, spec, nstd) : LSS_OK))
            s = lss_sumnet_set_targets(nets[k], th, nstd);
    /* the held-out set: fixed draws of the validation set on the pool's held-out fields */
    if (s == LSS_OK && NT > 0) s = lss_pool_batch(&x->pool, x->sv, x->work, x->nthreads, LSS_SET_VALID, 0, NT, 1, c->seed, maps, spec, th);
    if (s) goto out;
    memset(&to, 0, sizeof to);
    to.steps = c->steps; to.batch = B; to.eval_every = c->eval_every; to.ckpt_every = c->ckpt_every; to.resume = resume;
    to.patience = c->patience;
    to.loss_csv = dl_path(x, lpath, sizeof lpath, "loss.csv", 0);
    to.map_size = msz; to.spec_size = ssz;
    to.draw = dl_draw; to.progress = dl_train_progress; to.user = x;
    to.ntest = NT; to.test_maps = maps; to.test_spec = spec; to.test_theta = th;
    lss_drv_progress_init(&x->pr, "deeplss train: steps", to.steps);
    if ((s = lss_sumnet_train(nets, nn, np, cp, &to, &res))) goto out;
    lss_drv_progress_end(&x->pr);
    if (res.skipped) fprintf(stderr, "deeplss train: %lld steps skipped (non-finite gradients)\n", (long long)res.skipped);
    fprintf(stderr, "deeplss train: %d networks at step %lld in %.1f s (%.3f s per training step: data, forward, backward, update)\n",
            nn, (long long)res.steps_done, res.seconds, res.seconds_step / (double)(to.steps > 0 ? to.steps : 1));
    s = lss_deeplss_loss_png(x->dir, "DeepLSS likelihood loss (eq. 14): train (running mean) and held-out");
out:
    for (k = 0; k < DL_NNET; k++) lss_sumnet_free(nets[k]);
    free(maps); free(spec); free(th);
    return s;
}

/* ------------------------------------------------------------------ predict: summaries of the draw sets of section IV */
static int dl_predict(dl_ctx *x, int mask) {
    const lss_deeplss_cfg *c = &x->c;
    lss_sumnet *nets[DL_NNET] = {0};
    int kk[DL_NNET], nn = 0, k, s = LSS_OK, set, CH = c->scale == LSS_DEEPLSS_SMALL ? 128 : c->batch, i, j;
    int64_t msz = lss_survey_map_size(x->sv), ssz = lss_survey_spec_size(x->sv), sh[2] = {0, DL_NP};
    float *maps = (float *)malloc(sizeof(float) * (size_t)CH * (size_t)msz);
    double *spec = (double *)malloc(sizeof(double) * (size_t)CH * (size_t)ssz), *pred[DL_NNET] = {0}, *tht = NULL;
    lss_pool_draw *dr = (lss_pool_draw *)malloc(sizeof(lss_pool_draw) * (size_t)CH);
    char path[4400], name[128];
    if (!maps || !spec || !dr) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    for (k = 0; k < DL_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        if ((s = dl_net_create(x, k, CH, 0, &nets[nn])) ||
            (s = lss_ckpt_load_best(dl_path(x, path, sizeof path, "net_%s.ckpt", dl_net[k]), nets[nn]->store, NULL)))
            goto out;
        kk[nn++] = k;
    }
    for (set = 0; set < LSS_DRAWS_NSETS; set++) {
        int per = set == LSS_DRAWS_MDN ? c->pred_per_cosmo : c->check_rep;
        int n = set == LSS_DRAWS_MDN ? c->ncosmo * c->pred_per_cosmo : set == LSS_DRAWS_CAL ? c->ncal
              : set == LSS_DRAWS_FID ? c->nfid : c->ncheck * c->check_rep;
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
        sh[0] = n;
        if ((s = lss_npy_save(dl_path(x, path, sizeof path, "theta_%s.npy", dl_set_name[set]), LSS_F64, 2, sh, tht))) goto out;
        for (k = 0; k < nn; k++) {
            snprintf(name, sizeof name, "pred_%s_%%s.npy", dl_set_name[set]);
            if ((s = lss_npy_save(dl_path(x, path, sizeof path, name, dl_net[kk[k]]), LSS_F64, 2, sh, pred[k]))) goto out;
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

/* ------------------------------------------------------------------ Fisher forecasts: summary efficiency */
#define DL_NSUM 6   /* summaries per probe set: PS Re, PS abs, PS Re + moments, one-point moments alone, CNN, PSD network */

/* Summaries of the rows of a finite-difference set (lss_fdsims_observe_rows: common random numbers, one Poisson uniform per
   pixel) for every probe set asked: both spectra estimators, the joint one-point moments of the probe's channels and the
   trained networks' predictions; the Fisher matrix of each summary (Table I box as a flat prior of the same variance) into
   fisher.csv and fisher.md (lss_deeplss_fisher_save). */
static int dl_fisher(dl_ctx *x, int mask, int nfid, int nder) {
    const lss_deeplss_cfg *c = &x->c;
    const lss_param_table *t1 = lss_table1();
    const double *dl_fstep = lss_deeplss_fisher_step;
    const char *dl_sum_name[DL_NSUM] = {"ps_re", "ps_abs", "ps_re+moments", "moments", c->cnn_hybrid ? "hybrid_cnn" : "cnn", "psd"};
    const int CH = 256, nell = c->nell, T = x->nthreads;
    const int64_t N = (int64_t)nfid + 2 * DL_NP * (int64_t)nder, msz = lss_survey_map_size(x->sv), ssz = lss_survey_spec_size(x->sv);
    const int64_t plane = (int64_t)lss_survey_side(x->sv) * lss_survey_side(x->sv);
    int64_t flo, fhi;   /* under MPI each rank observes its block of the rows (a row is a pure function of its index) */
    int dps[3], dmo[3], off[9 + DL_NNET], dtot = 0, k, p, b, j, s = LSS_OK, nn = 0, kk[DL_NNET], *cols = NULL;
    lss_survey_opts vo;
    lss_survey *fsv = NULL;
    lss_survey_work **fw = (lss_survey_work **)calloc((size_t)T, sizeof *fw);
    lss_ps *psa = NULL;
    lss_fdsims *fd = NULL;
    lss_params p0;
    lss_sumnet *nets[DL_NNET] = {0};
    lss_fisher F[3 * DL_NSUM];
    double *edges = (double *)malloc(sizeof(double) * (size_t)(nell + 1)), *X = NULL, *spec = NULL, *sab = NULL, *th = NULL, prior[DL_NP];
    float *maps = NULL;
    char path[4400];
    memset(F, 0, sizeof F);
    for (p = 0; p < 3; p++) {   /* channels of a probe set: all, kappa_g, delta_g */
        int nch = p ? DL_NBINS : 2 * DL_NBINS;
        dps[p] = nch * (nch + 1) / 2 * nell;
        dmo[p] = lss_stat_joint_moments_size(nch);
    }
    for (b = 0; b < 9; b++) { off[b] = dtot; dtot += b < 6 ? dps[b % 3] : dmo[b % 3]; }   /* blocks: re[3], abs[3], moments[3] */
    for (k = 0; k < DL_NNET; k++) { off[9 + k] = dtot; dtot += DL_NP; }
    for (k = 0; k < DL_NP; k++) prior[k] = (t1->hi[k] - t1->lo[k]) / sqrt(12.0);
    lss_params_fiducial(&p0);
    memset(&vo, 0, sizeof vo);
    vo.grid = c->grid; vo.nell = nell; vo.ell_min = c->ell_min; vo.ell_max = c->ell_max; vo.noise.poisson = LSS_POISSON_INVERSE;
    if (!fw || !edges || !(X = (double *)malloc(sizeof(double) * (size_t)N * (size_t)dtot)) ||
        !(maps = (float *)malloc(sizeof(float) * (size_t)CH * (size_t)msz)) || !(spec = (double *)malloc(sizeof(double) * (size_t)CH * (size_t)ssz)) ||
        !(sab = (double *)malloc(sizeof(double) * (size_t)ssz)) || !(th = (double *)malloc(sizeof(double) * (size_t)CH * DL_NP)) ||
        !(cols = (int *)malloc(sizeof(int) * (size_t)dtot))) {
        s = lss_seterr(LSS_ERR_NOMEM, "out of memory (%lld observations x %d summaries)", (long long)N, dtot);
        goto out;
    }
    if ((s = lss_ps_edges(c->ell_min, c->ell_max, nell, c->ell_min, edges)) || (s = lss_survey_create(x->sim, &vo, &fsv)) ||
        (s = lss_fdsims_create(fsv, x->nz, x->nzb, &x->so, &p0, DL_NP, dl_fstep, &fd)) ||
        (s = lss_ps_create(lss_survey_side(x->sv), lss_survey_side(x->sv), c->pixel_arcmin, 2 * DL_NBINS, edges, nell, &psa)))
        goto out;
    for (k = 0; k < T && s == LSS_OK; k++) s = lss_survey_work_create(fsv, &fw[k]);
    for (k = 0; k < DL_NNET && s == LSS_OK; k++)
        if ((mask >> k) & 1 && !(s = dl_net_create(x, k, CH, 0, &nets[nn])) &&
            !(s = lss_ckpt_load_best(dl_path(x, path, sizeof path, "net_%s.ckpt", dl_net[k]), nets[nn]->store, NULL)))
            kk[nn++] = k;
    if (s) goto out;
    lss_drv_progress_init(&x->pr, "deeplss fisher: observations", N);
    lss_mpi_block(N, lss_mpi_rank(), lss_mpi_size(), &flo, &fhi);
    for (int64_t r0 = flo; r0 < fhi && s == LSS_OK; r0 += CH) {
        int nb = (int)(fhi - r0 < CH ? fhi - r0 : CH);
        if ((s = lss_fdsims_observe_rows(fd, fw, T, c->seed, nfid, nder, r0, nb, maps, spec))) break;
        for (j = 0; j < nb && s == LSS_OK; j++) {
            double *row = X + (size_t)(r0 + j) * dtot, *sr = spec + (size_t)j * ssz;
            const float *m = maps + (size_t)j * msz;
            s = lss_ps_compute(psa, m, 1, LSS_PS_ABS, sab);
            for (p = 0; p < 3 && s == LSS_OK; p++) {
                int ch0 = p == 2 ? DL_NBINS : 0, nch = p ? DL_NBINS : 2 * DL_NBINS;
                if (!(s = lss_survey_select_spectra(x->sv, sr, ch0, nch, row + off[p])) &&
                    !(s = lss_survey_select_spectra(x->sv, sab, ch0, nch, row + off[3 + p])))
                    s = lss_stat_joint_moments(m + ch0 * plane, nch, plane, row + off[6 + p]);
            }
            if (c->ps_estimator == LSS_PS_ABS) memcpy(sr, sab, sizeof(double) * (size_t)ssz);   /* the PSD networks' input */
        }
        for (k = 0; k < nn && s == LSS_OK; k++) {
            for (j = 0; j < nb && s == LSS_OK; j++) s = lss_sumnet_input(nets[k], j, maps + (size_t)j * msz, spec + (size_t)j * ssz);
            if (!s) s = lss_sumnet_predict(nets[k], nb, th);
            for (j = 0; j < nb && s == LSS_OK; j++)
                memcpy(X + (size_t)(r0 + j) * dtot + off[9 + kk[k]], th + (size_t)j * DL_NP, sizeof(double) * DL_NP);
        }
        lss_drv_progress_update(&x->pr, r0 + nb);
    }
    if (s || (s = lss_mpi_allgather(X, N, sizeof(double) * (size_t)dtot))) goto out;
    lss_drv_progress_end(&x->pr);
    /* the Fisher matrix of every summary of the probe sets asked: its columns of the table (rows in the layout of
       lss_fdsims_observe_rows, which lss_fisher_from_table reads) */
    for (p = 0; p < 3 && s == LSS_OK; p++)
        for (b = 0; b < DL_NSUM && s == LSS_OK; b++) {
            int o0 = off[b == 1 ? 3 + p : b == 3 ? 6 + p : b == 4 ? 9 + p : b == 5 ? 12 + p : p], n0 = b < 3 ? dps[p] : b == 3 ? dmo[p] : DL_NP;
            int d = n0 + (b == 2 ? dmo[p] : 0);
            if ((b >= 4 && !((mask >> (b == 4 ? p : 3 + p)) & 1)) || !((mask >> p) & 1 || (mask >> (3 + p)) & 1)) continue;
            for (j = 0; j < d; j++) cols[j] = j < n0 ? o0 + j : off[6 + p] + j - n0;   /* spectra + moments: two blocks */
            if ((s = lss_fisher_from_table(X, dtot, cols, d, nfid, nder, DL_NP, dl_fstep, prior, 0, &F[p * DL_NSUM + b])))
                s = lss_seterr(s, "Fisher matrix of %s (%s probes, %d summaries): %s", dl_sum_name[b], lss_deeplss_probe_name(p, 1), d,
                               lss_last_error());
        }
    if (!s && !(s = lss_deeplss_fisher_save(x->dir, F, DL_NSUM, dl_sum_name, 4, t1->name, nfid, nder)))
        fprintf(stderr, "deeplss fisher: %lld observations (%d fiducial, %d x 2 x %d finite-difference): fisher.csv, fisher.md\n",
                (long long)N, nfid, DL_NP, nder);
out:
    for (k = 0; k < 3 * DL_NSUM; k++) lss_fisher_free(&F[k]);
    for (k = 0; k < DL_NNET; k++) lss_sumnet_free(nets[k]);
    for (k = 0; k < T && fw; k++) lss_survey_work_free(fw[k]);
    lss_fdsims_free(fd); lss_survey_free(fsv); lss_ps_free(psa); free(fw); free(edges); free(X); free(maps); free(spec); free(sab); free(th); free(cols);
    return s;
}

/* ------------------------------------------------------------------ MDN likelihoods (appendix C) and MCMC (section V) */
static int dl_mdn(dl_ctx *x, int mask) {
    lss_deeplss_fit_info fit[DL_NNET];
    int k, s = lss_deeplss_mdn_stage(x->dir, &x->c, mask, fit);
    for (k = 0; k < DL_NNET && s == LSS_OK; k++)
        if ((mask >> k) & 1) fprintf(stderr, "deeplss mdn %s: %d epochs, best validation loss %.4f at epoch %d\n", dl_net[k], fit[k].epochs, fit[k].best_val,
                    fit[k].best_epoch);
    return s;
}

static int dl_mcmc(dl_ctx *x, int mask) {
    const lss_deeplss_cfg *c = &x->c;
    const lss_param_table *t1 = lss_table1();
    int k, i, nj = 0, nfail = 0, s;
    lss_prior pr;
    lss_chain_opts co;
    double mid[DL_NP];
    memset(&pr, 0, sizeof pr);
    /* walkers in a ball of 1e-3 of the prior width around the truth, pulled towards the grid's mean cosmology
       and the middle of the nuisance box when outside the prior (Table I box and the grid's convex hull) */
    for (k = 0; k < DL_NP; k++) mid[k] = k < 2 ? 0 : 0.5 * (t1->lo[k] + t1->hi[k]);
    for (i = 0; i < c->ncosmo; i++) { mid[0] += x->pool.cosmo[2 * i] / c->ncosmo; mid[1] += x->pool.cosmo[2 * i + 1] / c->ncosmo; }
    memset(&co, 0, sizeof co);
    co.prior = &pr; co.walkers = c->walkers; co.burn = c->burn; co.steps = c->nsteps; co.seed = c->seed; co.spread = 1e-3; co.mid = mid;
    lss_drv_progress_init(&x->pr, "deeplss mcmc: chains", 0);   /* the total comes with the first report */
    if (!(s = lss_prior_init(&pr, DL_NP, t1->lo, t1->hi)) && !(s = lss_prior_set_names(&pr, t1->name)) &&
        !(c->ncosmo >= 3 && (s = lss_prior_set_hull(&pr, 0, 1, x->pool.cosmo, c->ncosmo))) &&
        !(s = lss_deeplss_mcmc_stage(x->dir, c, mask, &co, t1->fiducial, t1->name, x->nthreads > 64 ? 64 : x->nthreads, dl_progress, x,
                                     &nj, &nfail))) {
        lss_drv_progress_end(&x->pr);
        fprintf(stderr, "deeplss mcmc: %d chains (%d with the observation outside the MDN's range)\n", nj, nfail);
    }
    lss_prior_free(&pr);
    return s;
}

/* ------------------------------------------------------------------ report */
/* Figure 6: d theta_p / d m of the combined-probe CNN for A_IA and sigma_8 at the first fiducial mock. */
static int dl_sensitivity(dl_ctx *x) {
    const int M = lss_survey_side(x->sv);
    const int64_t plane = (int64_t)M * M;
    float *map = (float *)malloc(sizeof(float) * (size_t)(6 * DL_NBINS) * (size_t)plane);
    lss_sumnet *net = NULL;
    lss_pool_draw d;
    char path[4400];
    int s;
    if (!map) return lss_seterr(LSS_ERR_NOMEM, "out of memory");
    if (!(s = dl_net_create(x, 0, 1, 0, &net)) && !(s = lss_ckpt_load_best(dl_path(x, path, sizeof path, "net_%s.ckpt", dl_net[0]), net->store, NULL)) &&
        !(s = lss_pool_eval_draw(&x->pool, x->c.seed, LSS_DRAWS_FID, 0, 1, &d)) &&
        !(s = lss_pool_observe_many(&x->pool, x->sv, x->work, x->nthreads, &d, 1, x->c.seed, map, NULL)) &&
        !(s = lss_sumnet_sensitivity(net, map, map + 2 * DL_NBINS * plane)))
        s = lss_deeplss_sensitivity_save(map, map + 2 * DL_NBINS * plane, M, x->dir, NULL);
    lss_sumnet_free(net);
    free(map);
    return s;
}

/* One row of a table with the columns lensing, clustering, combined: fmt with the three values v[probe][0..2]. */
static void dl_row(FILE *md, const char *label, const char *fmt, const double *v0, const double *v1, const double *v2) {
    const double *v[3] = {v0, v1, v2};
    int p;   /* columns: lensing (1), clustering (2), combined (0) */
    fprintf(md, "| %s |", label);
    for (p = 1; p <= 3; p++) fprintf(md, fmt, v[p % 3][0], v[p % 3][1], v[p % 3][2]);
    fprintf(md, "\n");
}

/* gains.csv, the figures and REPORT.md */
static int dl_report(dl_ctx *x, const char *timings) {
    const lss_deeplss_cfg *c = &x->c;
    const lss_param_table *t1 = lss_table1();
    static const char *const nk[2] = {"CNN", "PSD"}, *const fk[2] = {"1/sqrt(det C)", "1/area68"};
    static const char *const hdr3 = "| lensing | clustering | combined |\n|---|---|---|---|\n";
    lss_deeplss_numbers r;
    char path[4400], lab[64];
    lss_wfile w;
    FILE *md;
    int s, p, k, i, fails = 0;
    if ((s = lss_deeplss_numbers_read(x->dir, c->nfid, c->ncal, t1->name, &r)) ||
        (s = lss_deeplss_gains_save(&r, dl_path(x, path, sizeof path, "gains.csv", 0))) ||
        (s = lss_deeplss_corners(x->dir, t1->name, t1->fiducial, t1->lo, t1->hi, NULL)) || (!x->c.cnn_hybrid && (s = dl_sensitivity(x))) ||
        (s = lss_wfile_open(&w, dl_path(x, path, sizeof path, "REPORT.md", 0))))
        return s;
    md = w.f;
    fprintf(md, "# DeepLSS: CNN vs power-spectrum constraints (%s scale)\n\nEvery number below comes from this run (`deeplss` with "
                "seed %llu, files in this directory).\n\n## Setup\n\n", lss_deeplss_scale_name(c->scale), (unsigned long long)c->seed);
    fprintf(md, "- Survey: %d x %d field(s) of %d x %d pixels of %.4g arcmin (%.3g deg^2), 4 tomographic bins, kappa_g and delta_g "
                "(8 channels); Table I priors; noise, field choice and flips drawn on the fly.\n- Pool: %d grid cosmologies (Omega_m, "
                "sigma_8; the fiducial first, then a scrambled Sobol set over the prior box) x %d training + %d held-out noise-free "
                "lognormal fields.\n", c->grid, c->grid, c->nside, c->nside, c->pixel_arcmin,
            pow(c->grid * c->nside * c->pixel_arcmin / 60.0, 2), c->ncosmo, c->nf_train, c->nf_test);
    fprintf(md, "- CNN: %s%d strided %dx%d convolutions to %d channels, %d residual block(s), %s%s%s, dense output of %d (means + Cholesky "
                "of the precision, starting at zero: the prior mean with unit precision); PSD network: all auto and cross spectra "
                "(%s) in %d ell bins (%.0f-%.0f) -> 2 x %d ReLU -> %d. Loss eq. 14; Adam (lr CNN %.3g, PSD %.3g%s); per-tensor gradient "
                "clipping at the %.0fth percentile of the norm history; batch %d; up to %d steps%s. Targets Omega_m, S8, 0.1 A_IA, eta_IA, "
                "b_g, eta_bg, r_g (appendix E), standardised over the prior draws, undone at prediction.\n",
            c->cnn_products == 3 ? "maps and the products of every pair of maps as input, " : c->cnn_products ? "maps and kappa_i delta_j "
            "products as input, " : "", c->nconv, c->kernel, c->kernel, c->channels, c->nres, c->cnn_pool ? "global average pooling" : "flatten",
            c->cnn_hidden ? ", a hidden dense layer" : "", c->cnn_hybrid ? " (hybrid: the standardised spectra of its probes joined to the pooled "
            "features, at least as informative as the spectra by construction; no sensitivity maps)" : "", LSS_DEEPLSS_NOUT, c->ps_estimator ? "|X_i X_j*|" : "Re X_i X_j*", c->nell,
            c->ell_min, c->ell_max, c->psd_width, LSS_DEEPLSS_NOUT, c->lr_cnn, c->lr_psd, c->cosine ? ", cosine decay" : "", c->clip_pct,
            c->batch, c->steps, c->patience ? " (plateau stop, best held-out parameters kept)" : "");
    fprintf(md, "- MDN: %d x %d ReLU, K = %d; trained on %d (theta_t, theta_p) pairs per network (%d Sobol nuisance draws per grid "
                "cosmology, held-out fields). MCMC: %d walkers, %d burn-in + %d steps; prior: Table I box and the convex hull of the "
                "grid in (Omega_m, sigma_8).\n\nTraining and held-out loss: [loss.csv](loss.csv), ![loss](loss.png)\n\n", c->mdn_layers,
            c->mdn_width, c->mdn_K, c->ncosmo * c->pred_per_cosmo, c->pred_per_cosmo, c->walkers, c->burn, c->nsteps);
    if (r.loss_step >= 0) {
        fprintf(md, "Held-out loss (eq. 14, mean over %d held-out surveys) at step %lld; lower is better:\n\n| network %s", c->ntest,
                (long long)r.loss_step, hdr3);
        for (i = 0; i < 2; i++) fprintf(md, "| %s | %.2f | %.2f | %.2f |\n", nk[i], r.loss[i][1], r.loss[i][2], r.loss[i][0]);
    }
    fprintf(md, "\n## Gains (layout of Table II)\n\nstd(theta | PSD) / std(theta | CNN), median over %lld noisy mock observations at "
                "the fiducial parameters (each mock analysed by both networks); in brackets the 16-84%% range over mocks. > 1 means the "
                "CNN is tighter. FoM rows: FoM_CNN / FoM_PSD with FoM = 1/sqrt(det Cov(Omega_m, sigma_8)) and 1/area of the 68%% region "
                "(%d x %d histogram over [%g, %g] x [%g, %g], %g bin smoothing).\n\n| parameter %s", (long long)r.ngain[0],
            LSS_DEEPLSS_HPD_BINS, LSS_DEEPLSS_HPD_BINS, LSS_DEEPLSS_HPD_XLO, LSS_DEEPLSS_HPD_XHI, LSS_DEEPLSS_HPD_YLO, LSS_DEEPLSS_HPD_YHI,
            LSS_DEEPLSS_HPD_SMOOTH, hdr3);
    for (k = 0; k < LSS_DEEPLSS_NGAIN; k++)
        dl_row(md, k < DL_NP ? t1->name[k] : k == DL_NP ? "S8" : k == DL_NP + 1 ? "FoM (det)" : "FoM (68% area)", " %.2f [%.2f, %.2f] |",
               r.gain[0][k], r.gain[1][k], r.gain[2][k]);
    fprintf(md, "\nTable: [gains.csv](gains.csv); per-mock values: [mcmc_fid.csv](mcmc_fid.csv).\n\n"
                "### Figures of merit (Omega_m - sigma_8), median [16-84%%] over the noisy mocks\n\n| network %s", hdr3);
    for (i = 0; i < 4; i++) {   /* CNN, PSD x 1/sqrt(det C), 1/area68 */
        snprintf(lab, sizeof lab, "%s, %s", nk[i / 2], fk[i % 2]);
        dl_row(md, lab, " %.4g [%.4g, %.4g] |", r.fom[i / 2 * 3][i % 2], r.fom[i / 2 * 3 + 1][i % 2], r.fom[i / 2 * 3 + 2][i % 2]);
    }
    lss_deeplss_fisher_md(x->dir, md);
    fprintf(md, "\n## What this run shows\n\n");
    for (p = 0; p < 3; p++)
        for (k = 0; k <= DL_NP; k++)   /* CNN at least as tight as PSD within the scatter: 84th percentile of the ratio >= 1 */
            if (!(r.gain[p][k][2] >= 1.0))
                fprintf(md, "%s- %s probes, %s: median ratio %.3f [%.3f, %.3f]\n", fails++ ? "" : "Parameters where the CNN is NOT at "
                        "least as tight as the PSD network within the scatter over mocks (84th percentile of the std ratio below 1):\n\n",
                        lss_deeplss_probe_name(p, 1), k < DL_NP ? t1->name[k] : "S8", r.gain[p][k][0], r.gain[p][k][1], r.gain[p][k][2]);
    if (!fails) fprintf(md, "- For every parameter and probe set the CNN is at least as tight as the PSD network within the scatter over mocks.\n");
    else
        fprintf(md, "\nThe held-out losses (CNN vs PSD: lensing %.2f vs %.2f, clustering %.2f vs %.2f, combined %.2f vs %.2f; lower is "
                    "better) and the Fisher efficiencies above measure each summary's information independently of the MDN and the "
                    "sampler: a CNN whose efficiency is below 1 carries less than the power spectra it could compute from its maps, "
                    "and the spectra + moments row bounds what one-point non-Gaussian information adds at this size.\n",
                r.loss[0][1], r.loss[1][1], r.loss[0][2], r.loss[1][2], r.loss[0][0], r.loss[1][0]);
    for (i = 0; i < 2; i++)
        for (p = 1; p < 3; p++) {
            int ok = r.fom[i * 3][0][0] > r.fom[i * 3 + p][0][0];
            fprintf(md, "- %s: combined-probe FoM %.4g %s the %s-only FoM %.4g%s\n", nk[i], r.fom[i * 3][0][0], ok ? "above" : "NOT above",
                    lss_deeplss_probe_name(p, 1), r.fom[i * 3 + p][0][0], ok ? "." : " (the combined maps hold the single-probe maps: "
                    "the combined network has not learnt all that its inputs carry).");
        }
    lss_deeplss_calibration_md(&r, t1->name, md);
    fprintf(md, "\n## Figures\n\n"
                "- Figure 2 (combined probes, CNN vs PSD, at the most likely prediction for the fiducial parameters): ![corner comb](corner_comb.png)\n"
                "- Figure 3 (single probes): ![corner wl](corner_wl.png) ![corner gc](corner_gc.png)\n"
                "- Figure 4 (S8 - A_IA, CNN): ![s8 aia](s8_aia.png)\n"
                "- Figure 6 (sensitivity maps d theta_p / d m of the combined-probe CNN for A_IA and sigma_8 at one fiducial observation; "
                "per-channel RMS in [sensitivity.csv](sensitivity.csv), arrays in sensitivity.npy): %s\n",
            c->cnn_hybrid ? "not drawn (hybrid CNNs: the spectra path has no map gradient)" : "![sensitivity](sensitivity.png)");
    if (timings && *timings) fprintf(md, "\n## Timings\n\n%s\n", timings);
    return lss_wfile_commit(&w);
}

/* ------------------------------------------------------------------ command line */
static const char *const dl_cmds[8] = {"sim", "train", "predict", "mdn", "mcmc", "report", "all", "fisher"};
static const char *const dl_about[8] = {
    "Simulates the pool of noise-free fields and writes DIR/deeplss.cfg with the sizes of the run.",
    "Trains the CNN and PSD networks for combined, lensing-only and clustering-only maps (the pool is simulated first\n"
    "when DIR has none). Sizes apply to a new run only.",
    "Network summaries for the draw sets of section IV (MDN training, calibration, fiducial and check draws), as NPY.",
    "Fits the MDN likelihood of every network and checks it against held-out summaries (appendix C).",
    "Ensemble MCMC with the MDN likelihoods: the most likely and the noisy fiducial observations, calibration mocks.",
    "Gains table, figures of merit, calibration, corner plots, sensitivity maps and DIR/REPORT.md.",
    "sim, train, predict, fisher, mdn, mcmc and report in order (the demo).",
    "Fisher forecasts at the fiducial parameters for the power spectra (Re and |.| estimators), spectra + one-point moments\n"
    "and every trained network's summary: fresh observations at the fiducial and central differences with common random\n"
    "numbers; fisher.csv (FoM, per-parameter sigma, efficiencies against both spectra, jackknife errors)."};
static const char *const dl_example[8] = {
    "deeplss sim --scale small --out out/deeplss", "deeplss train --out out/deeplss --steps 4000 --resume",
    "deeplss predict --out out/deeplss", "deeplss mdn --out out/deeplss", "deeplss mcmc --out out/deeplss --nets cnn",
    "deeplss report --out out/deeplss", "deeplss all --scale small --out out/deeplss", "deeplss fisher --out out/deeplss --fisher-nder 400"};

/* 1 when --name (or --name=...) is on the command line. */
static int dl_given(int argc, char **argv, const char *name) {
    size_t n = strlen(name);
    int i;
    for (i = 2; i < argc; i++)
        if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, name, n) && (!argv[i][2 + n] || argv[i][2 + n] == '=')) return 1;
    return 0;
}

/* Bit kind * 3 + probe for every listed network and probe set; exits 2 on an unknown name. */
static int dl_mask(const char *nets, const char *probes) {
    const char *lists[2] = {nets, probes};
    char buf[256], *tok, *sv = NULL;
    int m[2] = {0, 0}, l, q, k, mask = 0;
    for (l = 0; l < 2; l++) {
        snprintf(buf, sizeof buf, "%s", lists[l]);
        for (tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
            for (q = 0; q < (l ? 3 : 2) && strcmp(tok, l ? lss_deeplss_probe_name(q, 0) : lss_deeplss_kind_name(q)); q++) {}
            if (q == (l ? 3 : 2)) lss_drv_die(2, "option %s: unknown name '%s'", l ? "--probes" : "--nets", tok);
            m[l] |= 1 << q;
        }
    }
    for (k = 0; k < DL_NNET; k++) if ((m[0] >> (k / 3) & 1) && (m[1] >> (k % 3) & 1)) mask |= 1 << k;
    if (!mask) lss_drv_die(2, "no network selected by --nets %s --probes %s", nets, probes);
    return mask;
}

int main(int argc, char **argv) {
    const char *out = "out/deeplss", *nets = "cnn,psd", *probes = "comb,wl,gc", *scale_s = "small", *library = NULL, *model = "lognormal";
    int ci, resume = 0, mask, s, i, n = 0, fresh, have_cfg, have_pool, fnfid = 0, fnder = 0;
    double t0 = lss_time_now(), tp;
    char path[4400], timings[2048] = "", extra[8192], name[32], usage[64];
    lss_deeplss_cfg cfg, d;
    dl_ctx x;
    FILE *f;
    /* the commands an option belongs to (bit ci); NEW: sizes of a new run (refused for an existing one), CFG: saved in deeplss.cfg */
    enum { C_SIM = 1, C_TRAIN = 2, C_SEL = 4 | 8 | 16 | 128, C_ALL = 64, C_FISHER = 128, C_ANY = 255, C_NEWRUN = C_SIM | C_TRAIN | C_ALL,
           NEW = 1, CFG = 2 };
    struct { lss_drv_opt o; int cmds, use; } tab[] = {
        {{"scale", LSS_DRV_STR, &scale_s, 0, 0, 0, "small: one 32 x 32 field of 9.375 arcmin, a small CNN (about 40 min on 2 cores); paper: 6 x 6 mosaics of 64 x 64, the released code's CNN and 900000 steps: needs about 4.5 GB and GPU-class speed (the networks train on the CPU in this version: one step of batch 32 at 384 x 384 takes about 16 s on 2 cores, BENCHMARKS.md)"}, C_NEWRUN, 0},
        {{"ncosmo", LSS_DRV_INT, &d.ncosmo, 3, 100000, 0, "grid cosmologies in the pool (paper 57)"}, C_NEWRUN, NEW},
        {{"model", LSS_DRV_STR, &model, 0, 0, 0, "shells of the pool: lognormal, or nbody (from --library)"}, C_NEWRUN, 0},
        {{"library", LSS_DRV_STR, &library, 0, 0, 0, "N-body shell library (lss-sim nbody): the pool from its light cones, ncosmo its entries"}, C_NEWRUN, 0},
        {{"nfield", LSS_DRV_INT, &d.nf_train, 1, 100000, 0, "noise-free training fields per cosmology (held-out: half as many, at least 1)"}, C_NEWRUN, NEW},
        {{"seed", LSS_DRV_U64, &d.seed, 0, 0, 0, "seed of everything"}, C_NEWRUN, NEW},
        {{"pred-per-cosmo", LSS_DRV_INT, &d.pred_per_cosmo, 1, 1000000, 0, "Sobol nuisance draws per grid cosmology for the MDN"}, C_NEWRUN, NEW},
        {{"ncal", LSS_DRV_INT, &d.ncal, 0, 1000000, 0, "calibration mocks at random parameters"}, C_NEWRUN, NEW},
        {{"nfid", LSS_DRV_INT, &d.nfid, 1, 1000000, 0, "noisy mocks at the fiducial parameters for the gains"}, C_NEWRUN, NEW},
        {{"mcmc-steps", LSS_DRV_INT, &d.nsteps, 10, 10000000, 0, "MCMC steps after burn-in"}, C_NEWRUN, NEW},
        {{"steps", LSS_DRV_INT, &d.steps, 1, 100000000, 0, "optimizer steps (paper 900000)"}, C_TRAIN | C_ALL, CFG},
        {{"batch", LSS_DRV_INT, &d.batch, 1, 4096, 0, "surveys per step"}, C_TRAIN | C_ALL, CFG},
        {{"lr-cnn", LSS_DRV_DOUBLE, &d.lr_cnn, 1e-12, 0.999, 0, "CNN Adam learning rate (paper 5e-5, constant; small: cosine decay to 5%)"}, C_TRAIN | C_ALL, CFG},
        {{"lr-psd", LSS_DRV_DOUBLE, &d.lr_psd, 1e-12, 0.999, 0, "PSD network Adam learning rate (paper 2.5e-3)"}, C_TRAIN | C_ALL, CFG},
        {{"nets", LSS_DRV_STR, &nets, 0, 0, 0, "which networks, comma-separated"}, C_TRAIN | C_SEL, 0},
        {{"probes", LSS_DRV_STR, &probes, 0, 0, 0, "which probe sets, comma-separated"}, C_TRAIN | C_SEL, 0},
        {{"resume", LSS_DRV_FLAG, &resume, 0, 0, 0, "continue from the checkpoints in DIR"}, C_TRAIN, 0},
        {{"shards", LSS_DRV_INT, &dl_shards, 0, 4096, 0, "data-parallel shards of each batch, gradients added in order (0: 1, or the number of ranks under mpirun); the same shards train bitwise the same at any rank count"}, C_TRAIN | C_ALL, 0},
        {{"patience", LSS_DRV_INT, &d.patience, 0, 1000000, 0, "stop when no held-out loss improved over this many evaluations (0: all steps)"}, C_TRAIN | C_ALL, CFG},
        {{"ps-estimator", LSS_DRV_INT, &d.ps_estimator, 0, 1, 0, "spectra of the PSD networks: 0 Re(X_i X_j*), 1 |X_i X_j*| (the released code)"}, C_NEWRUN, NEW},
        {{"cnn-hybrid", LSS_DRV_INT, &d.cnn_hybrid, 0, 1, 0, "1: hybrid CNNs, the standardised spectra joined to the pooled CNN features (a diagnostic, >= the spectra by construction; no sensitivity maps)"}, C_NEWRUN, NEW},
        {{"fisher-nfid", LSS_DRV_INT, &fnfid, 0, 10000000, 0, "Fisher: fiducial observations for the covariance (0: 4000 small, 20000 paper)"}, C_FISHER | C_ALL, 0},
        {{"fisher-nder", LSS_DRV_INT, &fnder, 0, 10000000, 0, "Fisher: observation pairs per parameter for the derivatives (0: 400 small, 2000 paper)"}, C_FISHER | C_ALL, 0},
        {{"out", LSS_DRV_STR, &out, 0, 0, 0, "working directory"}, C_ANY, 0}};
    const int ntab = (int)(sizeof tab / sizeof tab[0]);
    lss_drv_opt opts[sizeof tab / sizeof tab[0] + 1];
    lss_drv_cmd cmd = {"deeplss", "deeplss COMMAND [options]",
                       "The DeepLSS experiment (Kacprzak & Fluri 2022): CNN and power-spectrum networks trained with the likelihood\n"
                       "loss on tomographic lensing + clustering maps, MDN likelihoods, ensemble MCMC, gains.\n"
                       "commands: sim, train, predict, fisher, mdn, mcmc, report, all ('deeplss COMMAND --help' lists a command's options)",
                       "deeplss all --scale small --out out/deeplss"};
    lss_drv_prog = "deeplss";
    for (i = 0; i < DL_NNET; i++) snprintf(dl_net[i], sizeof dl_net[i], "%s_%s", lss_deeplss_kind_name(i / 3), lss_deeplss_probe_name(i % 3, 0));
    lss_deeplss_cfg_defaults(&d, LSS_DEEPLSS_SMALL);
    opts[0].name = NULL;
    if (argc >= 2 && argv[1][0] == '-') lss_drv_parse(&cmd, opts, argc, argv);   /* --help exits 0, another option 2 */
    if (argc < 2 || argv[1][0] == '-') lss_drv_die(2, "no command: sim, train, predict, fisher, mdn, mcmc, report or all (see deeplss --help)");
    for (ci = 0; ci < 8 && strcmp(argv[1], dl_cmds[ci]); ci++) {}
    if (ci == 8) lss_drv_die(2, "unknown command '%s' (see deeplss --help)", argv[1]);
    for (i = 0; i < ntab; i++) if ((tab[i].cmds >> ci) & 1) opts[n++] = tab[i].o;
    opts[n].name = NULL;
    snprintf(name, sizeof name, "deeplss %s", dl_cmds[ci]);
    snprintf(usage, sizeof usage, "%s [options]", name);
    cmd.name = name; cmd.usage = usage; cmd.about = dl_about[ci]; cmd.example = dl_example[ci];
    lss_drv_parse(&cmd, opts, argc - 1, argv + 1);
    if (lss_deeplss_scale_parse(scale_s) < 0) lss_drv_die(2, "option --scale: '%s' is not small or paper", scale_s);
    if (strcmp(model, "lognormal") && strcmp(model, "nbody")) lss_drv_die(2, "option --model: '%s' is not lognormal or nbody", model);
    if (!strcmp(model, "nbody") != (library != NULL)) lss_drv_die(2, "--model nbody and --library DIR go together (make DIR with lss-sim nbody)");
    mask = ci == 6 ? (1 << DL_NNET) - 1 : dl_mask(nets, probes);
    snprintf(path, sizeof path, "%s/deeplss.cfg", out);
    if ((have_cfg = (f = fopen(path, "r")) != NULL)) fclose(f);
    fresh = ci == 6 || ci == 0 || (ci == 1 && !have_cfg);
    if (fresh) {   /* a new run: the preset, then the sizes given */
        if (resume) lss_drv_die(2, "--resume: no deeplss.cfg in %s", out);
        lss_deeplss_cfg_defaults(&cfg, lss_deeplss_scale_parse(scale_s));
        if (dl_given(argc, argv, "nfield")) cfg.nf_test = d.nf_train / 2 > 0 ? d.nf_train / 2 : 1;
        if (library) lss_drv_check(lss_shell_lib_count(library, &d.ncosmo), library), cfg.ncosmo = d.ncosmo;
        if (library && dl_given(argc, argv, "ncosmo")) lss_drv_die(2, "--ncosmo: the pool of --library %s has its %d entries", library, d.ncosmo);
    } else {
        if (library) lss_drv_die(2, "--library only applies to a new run; %s already has a pool", out);
        if (!have_cfg) lss_drv_die(2, "no deeplss.cfg in %s (run 'deeplss sim' or 'deeplss train' first)", out);
        lss_drv_check(lss_deeplss_cfg_load(&cfg, path), "deeplss.cfg");
        if (dl_given(argc, argv, "scale") && strcmp(scale_s, lss_deeplss_scale_name(cfg.scale)))
            lss_drv_die(2, "--scale %s differs from the run in %s (scale %s)", scale_s, out, lss_deeplss_scale_name(cfg.scale));
    }
    for (i = 0; i < ntab; i++) {   /* options given: copied from d into the same field of cfg */
        if (!tab[i].use || !((tab[i].cmds >> ci) & 1) || !dl_given(argc, argv, tab[i].o.name)) continue;
        if (tab[i].use == NEW && !fresh) lss_drv_die(2, "--%s only applies to a new run; %s already has a pool", tab[i].o.name, out);
        memcpy((char *)&cfg + ((char *)tab[i].o.dst - (char *)&d), tab[i].o.dst, tab[i].o.kind == LSS_DRV_INT ? sizeof(int) : sizeof(double));
    }
    lss_drv_check(lss_deeplss_cfg_check(&cfg), "options"), lss_drv_outputs_begin(out, ci != 1 && ci != 6); /* train: unstaged */
    if (ci <= 1 || ci == 6) { /* what the run will hold, said (and checked against this machine) before it allocates */
        double pool, train;
        char what[160];
        lss_deeplss_cfg_memory(&cfg, &pool, &train);
        snprintf(what, sizeof what, "deeplss %s (pool of fields %.3g GB, training a network %.3g GB)", dl_cmds[ci], pool / 1e9, train / 1e9);
        lss_drv_memory(what, pool + train, "the configuration (ncosmo, nfield, batch, channels, nside, grid)");
    }
    lss_drv_check(dl_ctx_open(&x, &cfg, out), "setup"), x.library = library;
    if (ci <= 1 || ci == 6) lss_drv_check(lss_deeplss_cfg_save(&cfg, path), "deeplss.cfg");
    i = snprintf(extra, sizeof extra, "\"command\": \"%s\", \"scale\": \"%s\", \"steps\": %d, \"batch\": %d, \"model\": \"%s\"", dl_cmds[ci],
                 lss_deeplss_scale_name(cfg.scale), cfg.steps, cfg.batch, library ? "nbody" : "lognormal");
    if (library && (i += snprintf(extra + i, sizeof extra - i, ", \"library\": "), lss_drv_json_escape(extra + i, sizeof extra - i, library) >= sizeof extra - i))
        lss_drv_die(2, "option --library: path too long");
    tp = lss_time_now();
    snprintf(path, sizeof path, "%s/pool_fields.npy", out);
    if ((have_pool = (f = fopen(path, "rb")) != NULL)) fclose(f);
    s = ci == 0 || ci == 6 || (ci == 1 && !have_pool) ? dl_pool_simulate(&x) : dl_pool_load(&x, ci == 1 || ci == 2 || ci == 5);
    lss_drv_check(s, "pool");
#define DL_STAGE(c, what, call) if (ci == c || ci == 6) { tp = lss_time_now(); lss_drv_outputs_stage(c != 1); lss_drv_check(call, what); lss_drv_outputs_publish(); \
        snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- %s: %.1f s\n", what, lss_time_now() - tp); }
    snprintf(timings, sizeof timings, "- pool (sim or load): %.1f s\n", lss_time_now() - tp);
    DL_STAGE(1, "train", dl_train(&x, mask, resume))
    DL_STAGE(2, "predict", dl_predict(&x, mask))
    if (!fnfid) fnfid = cfg.scale == LSS_DEEPLSS_SMALL ? 4000 : 20000;
    if (!fnder) fnder = cfg.scale == LSS_DEEPLSS_SMALL ? 400 : 2000;
    DL_STAGE(7, "fisher", dl_fisher(&x, mask, fnfid, fnder))
    DL_STAGE(3, "mdn", dl_mdn(&x, mask))
    DL_STAGE(4, "mcmc", dl_mcmc(&x, mask))
#undef DL_STAGE
    if (ci == 5 || ci == 6) {
        lss_wfile tw;
        snprintf(path, sizeof path, "%s/timings.md", out);
        if (ci == 6) {   /* a report on its own shows the timings of the run that made the files */
            snprintf(timings + strlen(timings), sizeof timings - strlen(timings), "- total before the report: %.1f s on %d thread(s)\n",
                     lss_time_now() - t0, x.nthreads);
            lss_drv_check(lss_wfile_open(&tw, path), "timings.md");
            fputs(timings, tw.f);
            lss_drv_check(lss_wfile_commit(&tw), "timings.md");
        } else if ((f = fopen(path, "r"))) {
            timings[fread(timings, 1, sizeof timings - 1, f)] = 0;
            fclose(f);
        } else timings[0] = 0;
        lss_drv_check(dl_report(&x, timings), "report");
    }
    lss_drv_outputs_done(argc, argv, cfg.seed, extra); /* publishes the last stage's files, then run.json */
    fprintf(stderr, "deeplss %s: done in %.1f s (%s)\n", dl_cmds[ci], lss_time_now() - t0, out);
    dl_ctx_free(&x);
    return 0;
}
