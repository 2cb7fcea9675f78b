/* test_e2e_deeplss.c - the DeepLSS pipeline end to end on a tiny case through the library alone: pool and
 * survey recipe (lss_maps.h), summary networks trained together by lss_sumnet_train with exact resume,
 * predictions, the MDN stage on the run's files, the chain table (lss_deeplss_jobs, lss_deeplss_chains,
 * lss_deeplss_jobs_save) against the MCMC stage file for file, the report's numbers read back from the files
 * (lss_deeplss_numbers_read, lss_deeplss_gains_save) and the figures (corner plots, sensitivity maps, loss);
 * the configuration (presets, key = value round trip, every kind of bad value and file refused); the report's
 * readers on hand-made files with known answers; the calibration of the MDN + MCMC stage on a case with a
 * known answer; lss-sim's maps against the pool path bit for bit, and the command lines' exit codes
 * (bin/lss-sim and bin/deeplss run as subprocesses when they are built). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#include "lss_core.h"
#include "lss_maps.h"
#include "lss_nn.h"
#include "lss_infer.h"
#include "tests/lss_test.h"
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NP LSS_DEEPLSS_NPARAM
static char tmpdir[256];
static const uint64_t SEED = 5;

/* The tiny survey: one 16 x 16 field of 18.75 arcmin, 4 ell bins over 72..576; a pool of 6 cosmologies x (3 + 2) fields. */
typedef struct {
    lss_cosmo *c;
    lss_nz *nz;
    int nzb, nthr;
    lss_sim *sim;
    lss_survey *sv;
    lss_survey_work *w[64];
    lss_pool pool;
    int64_t msz, ssz;
} tiny_t;

static int tiny_open(tiny_t *t, int ncosmo, int with_fields) {
    lss_params p;
    lss_sim_opts so;
    lss_survey_opts vo;
    int s, i;
    memset(t, 0, sizeof *t);
#ifdef _OPENMP
    t->nthr = omp_get_max_threads() < 64 ? omp_get_max_threads() : 64;
#else
    t->nthr = 1;
#endif
    memset(&so, 0, sizeof so);
    so.nside = 16; so.pixel_arcmin = 18.75;
    memset(&vo, 0, sizeof vo);
    vo.grid = 1; vo.nell = 4; vo.ell_min = 72; vo.ell_max = 576;
    lss_params_fiducial(&p);
    if ((s = lss_cosmo_create(&p, &t->c)) || (s = lss_nz_builtin("deeplss", &t->nz, &t->nzb)) ||
        (s = lss_sim_create(t->c, t->nz, t->nzb, &so, &t->sim)) || (s = lss_survey_create(t->sim, &vo, &t->sv)))
        return s;
    for (i = 0; i < t->nthr; i++) if ((s = lss_survey_work_create(t->sv, &t->w[i]))) return s;
    t->msz = lss_survey_map_size(t->sv);
    t->ssz = lss_survey_spec_size(t->sv);
    if ((s = lss_pool_init(&t->pool, ncosmo, 3, 2, 4, with_fields ? 16 : 2))) return s;
    return with_fields ? lss_pool_simulate(&t->pool, t->nz, &so, SEED, NULL, NULL) : lss_pool_grid(SEED, ncosmo, t->pool.cosmo);
}

static void tiny_close(tiny_t *t) {
    int i;
    for (i = 0; i < t->nthr; i++) lss_survey_work_free(t->w[i]);
    lss_survey_free(t->sv);
    lss_sim_free(t->sim);
    lss_cosmo_free(t->c);
    if (t->nz) lss_nz_free(t->nz, t->nzb);
    lss_pool_free(&t->pool);
}

/* Network k = kind * 3 + probe (cnn/psd x comb/wl/gc), as deeplss builds them, at a tiny size. */
static int make_net(const tiny_t *t, int k, int batch, lss_sumnet **out) {
    lss_sumnet_opts so;
    lss_optim_opts oo;
    int use[64], q, i, j, probe = k % 3;
    memset(&so, 0, sizeof so);
    so.kind = k / 3 ? LSS_SUMNET_PSD : LSS_SUMNET_CNN;
    so.batch = batch; so.map_ch = 8; so.side = 16;
    so.nch = probe == 0 ? 8 : 4; so.ch0 = probe == 2 ? 4 : 0;
    so.nconv = 2; so.nres = 1; so.channels = 8; so.kernel = 3; so.in_std = 0.1;
    for (q = 0; q < lss_survey_npairs(t->sv); q++) {
        lss_survey_pair(t->sv, q, &i, &j);
        use[q] = ((1 | (j < 4 ? 2 : 0) | (i >= 4 ? 4 : 0)) >> probe) & 1;
    }
    so.npairs = lss_survey_npairs(t->sv); so.nell = 4; so.use_pair = use; so.width = 32;
    so.seed = SEED; so.sub = (uint32_t)k;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM; oo.lr = 1e-3; oo.eps = 1e-7;
    oo.clip = LSS_CLIP_PERCENTILE; oo.clip_percentile = 50; oo.clip_history = 10000;
    oo.sched = LSS_SCHED_COSINE; oo.total_steps = 60; oo.lr_min = 5e-5;
    so.optim = &oo;
    return lss_sumnet_create(&so, out);
}

static int draw(void *user, int64_t step, int n, float *maps, double *spec, double *theta) {
    tiny_t *t = (tiny_t *)user;
    return lss_pool_batch(&t->pool, t->sv, t->w, t->nthr, LSS_SET_TRAIN, (uint64_t)step * (uint64_t)n, n, 0, SEED, maps, spec, theta);
}

/* Trains the networks in mask for `steps` (of a 60-step schedule) into dir; the held-out set is 32 draws. */
static int train(tiny_t *t, int mask, int steps, int ckpt_every, int resume, const char *dir, lss_sumnet **nets, int *nn) {
    static char names[6][16], ck[6][400], csv[400];
    const char *np[6], *cp[6];
    float *maps = (float *)malloc(sizeof(float) * 64 * (size_t)t->msz);
    double *spec = (double *)malloc(sizeof(double) * 64 * (size_t)t->ssz), th[32 * NP];
    lss_sumnet_train_opts to;
    int k, s = LSS_OK;
    *nn = 0;
    if (!maps || !spec) { free(maps); free(spec); return LSS_ERR_NOMEM; }
    for (k = 0; k < 6 && s == LSS_OK; k++) {
        if (!((mask >> k) & 1)) continue;
        s = make_net(t, k, 32, &nets[*nn]);
        snprintf(names[*nn], sizeof names[0], "%s_%s", k / 3 ? "psd" : "cnn", k % 3 == 0 ? "comb" : k % 3 == 1 ? "wl" : "gc");
        snprintf(ck[*nn], sizeof ck[0], "%s/net_%s.ckpt", dir, names[*nn]);
        np[*nn] = names[*nn]; cp[*nn] = ck[*nn];
        (*nn)++;
    }
    /* standardisation from 64 training draws, then the held-out set */
    if (s == LSS_OK) s = lss_pool_batch(&t->pool, t->sv, t->w, t->nthr, LSS_SET_TRAIN, 0, 64, 0, SEED, maps, spec, NULL);
    for (k = 0; k < *nn && s == LSS_OK; k++)
        s = lss_sumnet_standardise(nets[k], nets[k]->o.kind == LSS_SUMNET_CNN ? maps : NULL, spec, 64);
    if (s == LSS_OK) s = lss_pool_batch(&t->pool, t->sv, t->w, t->nthr, LSS_SET_VALID, 0, 32, 1, SEED, maps, spec, th);
    snprintf(csv, sizeof csv, "%s/loss.csv", dir);
    memset(&to, 0, sizeof to);
    to.steps = steps; to.batch = 16; to.eval_every = 6; to.ckpt_every = ckpt_every; to.resume = resume; to.loss_csv = csv;
    to.map_size = t->msz; to.spec_size = t->ssz; to.draw = draw; to.user = t;
    to.ntest = 32; to.test_maps = maps; to.test_spec = spec; to.test_theta = th;
    if (s == LSS_OK) s = lss_sumnet_train(nets, *nn, np, cp, &to, NULL);
    free(maps);
    free(spec);
    return s;
}

/* Size of dir/name (-1: none). */
static long long file_size(const char *dir, const char *name) {
    char p[600];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* 1 when dir1/name and dir2/name exist and are equal byte for byte. */
static int same_file(const char *dir1, const char *dir2, const char *name) {
    char p[600], q[600], cmd[1300];
    snprintf(p, sizeof p, "%s/%s", dir1, name);
    snprintf(q, sizeof q, "%s/%s", dir2, name);
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", p, q);
    return file_size(dir1, name) > 0 && system(cmd) == 0;
}

static void test_pipeline(void) {
    tiny_t t;
    lss_sumnet *nets[6] = {0}, *n2[6] = {0};
    char dir[400], dir2[400], p[500];
    lss_csv lc;
    int nn = 0, nn2 = 0, k, i, set, per[4] = {8, 6, 6, 6}, cnt[4] = {6 * 8, 6, 6, 3 * 6};
    double *pred[4][6] = {{0}}, *tht[4] = {0};
    lss_mdn *mdn[6] = {0};
    lss_mdn_opts mo;
    lss_deeplss_cfg cfg;
    lss_deeplss_fit_info fit[6];
    snprintf(dir, sizeof dir, "%s/run", tmpdir);
    snprintf(dir2, sizeof dir2, "%s/resume", tmpdir);
    CHECK(mkdir(dir, 0777) == 0 && mkdir(dir2, 0777) == 0, "directories");
    CHECK_OK(tiny_open(&t, 6, 1));
    CHECK_OK(train(&t, 63, 60, 0, 0, dir, nets, &nn));
    /* the loss CSV: step, train_ x 6, valid_ x 6; finite; the held-out loss fell for the CNNs and the combined PSD */
    snprintf(p, sizeof p, "%s/loss.csv", dir);
    memset(&lc, 0, sizeof lc);
    CHECK_OK(lss_csv_read(p, &lc));
    CHECK(lc.ncols == 13 && lc.nrows == 10, "loss.csv: %d columns, %lld rows", lc.ncols, (long long)lc.nrows);
    for (k = 0; k < 4 && lc.nrows >= 2; k++) {
        static const char *const v[4] = {"valid_cnn_comb", "valid_cnn_wl", "valid_cnn_gc", "valid_psd_comb"};
        int c = lss_csv_col(&lc, v[k]);
        double first = c >= 0 ? lc.data[c] : NAN, last = c >= 0 ? lc.data[(lc.nrows - 1) * lc.ncols + c] : NAN;
        CHECK(isfinite(first) && isfinite(last) && last < first, "%s: held-out loss %g -> %g did not fall", v[k], first, last);
    }
    lss_csv_free(&lc);
    /* resume: 30 steps + 30 resumed steps give the parameters of 60 steps in one go, bit for bit */
    CHECK_OK(train(&t, 1 | 8, 30, 30, 0, dir2, n2, &nn2));
    for (k = 0; k < nn2; k++) lss_sumnet_free(n2[k]);
    CHECK_OK(train(&t, 1 | 8, 60, 30, 1, dir2, n2, &nn2));
    if (nn == 6 && nn2 == 2 && n2[0] && n2[1]) {
        CHECK(nets[0]->store->size == n2[0]->store->size && !memcmp(nets[0]->store->data, n2[0]->store->data, sizeof(float) * (size_t)n2[0]->store->size),
              "resumed CNN differs from the uninterrupted one");
        CHECK(!memcmp(nets[3]->store->data, n2[1]->store->data, sizeof(float) * (size_t)n2[1]->store->size),
              "resumed PSD network differs from the uninterrupted one");
    }
    for (k = 0; k < nn2; k++) lss_sumnet_free(n2[k]);
    /* predictions for the four draw sets of section IV */
    for (set = 0; set < 4; set++) {
        float *maps = (float *)malloc(sizeof(float) * (size_t)cnt[set] * (size_t)t.msz);
        double *spec = (double *)malloc(sizeof(double) * (size_t)cnt[set] * (size_t)t.ssz);
        lss_pool_draw d[64];
        int bad = 0;
        tht[set] = (double *)malloc(sizeof(double) * (size_t)cnt[set] * NP);
        for (i = 0; i < cnt[set]; i++) {
            CHECK_OK(lss_pool_eval_draw(&t.pool, SEED, set, i, per[set], &d[i]));
            memcpy(tht[set] + i * NP, d[i].theta, sizeof(double) * NP);
        }
        CHECK_OK(lss_pool_observe_many(&t.pool, t.sv, t.w, t.nthr, d, cnt[set], SEED, maps, spec));
        for (k = 0; k < nn; k++) {
            int done;
            pred[set][k] = (double *)malloc(sizeof(double) * (size_t)cnt[set] * NP);
            for (done = 0; done < cnt[set]; done += 32) {
                int nb = cnt[set] - done < 32 ? cnt[set] - done : 32, j;
                for (j = 0; j < nb; j++) CHECK_OK(lss_sumnet_input(nets[k], j, maps + (done + j) * t.msz, spec + (done + j) * t.ssz));
                CHECK_OK(lss_sumnet_predict(nets[k], nb, pred[set][k] + (size_t)done * NP));
            }
            for (i = 0; i < cnt[set] * NP; i++) bad += !isfinite(pred[set][k][i]);
        }
        CHECK(bad == 0, "set %d: %d non-finite predictions", set, bad);
        free(maps);
        free(spec);
    }
    /* the run's files as `deeplss predict` writes them, and the stages on them */
    memset(&mo, 0, sizeof mo);
    CHECK_OK(lss_deeplss_cfg_defaults(&cfg, LSS_DEEPLSS_SMALL));
    cfg.ncosmo = 6; cfg.pred_per_cosmo = 8; cfg.ncal = 6; cfg.nfid = 6; cfg.ncheck = 3; cfg.check_rep = 6; cfg.seed = SEED;
    cfg.mdn_width = 16; cfg.mdn_layers = 1; cfg.mdn_K = 1; cfg.mdn_epochs = 30; cfg.walkers = 16; cfg.burn = 20; cfg.nsteps = 30;
    CHECK_OK(lss_deeplss_cfg_check(&cfg));
    for (set = 0; set < 4; set++) {
        static const char *const sn[4] = {"mdn", "cal", "fid", "check"};
        int64_t sh[2] = {cnt[set], NP};
        snprintf(p, sizeof p, "%s/theta_%s.npy", dir, sn[set]);
        CHECK_OK(lss_npy_save(p, LSS_F64, 2, sh, tht[set]));
        for (k = 0; k < nn; k++) {
            snprintf(p, sizeof p, "%s/pred_%s_%s_%s.npy", dir, sn[set], lss_deeplss_kind_name(k / 3), lss_deeplss_probe_name(k % 3, 0));
            CHECK_OK(lss_npy_save(p, LSS_F64, 2, sh, pred[set][k]));
        }
    }
    CHECK_OK(lss_deeplss_mdn_stage(dir, &cfg, 63, fit));
    for (k = 0; k < 6; k++) CHECK(fit[k].epochs >= 1 && isfinite(fit[k].best_val), "MDN %d: %d epochs, loss %g", k, fit[k].epochs, fit[k].best_val);
    /* the same MDNs in memory */
    CHECK_OK(lss_deeplss_mdn_opts(&cfg, &mo));
    for (k = 0; k < 6; k++) {
        CHECK_OK(lss_mdn_create(NP, NP, &mo, &mdn[k]));
        if (mdn[k]) CHECK_OK(lss_mdn_fit(mdn[k], tht[0], pred[0][k], cnt[0], &mo));
    }
    if (mdn[0] && mdn[0]->fitted) {
        const lss_param_table *t1 = lss_table1();
        lss_prior pr;
        lss_chain_opts co;
        lss_deeplss_plan pl;
        lss_deeplss_job *jobs = NULL;
        lss_deeplss_numbers nr;
        lss_constraint cs[6][6];
        double gain[3][LSS_DEEPLSS_NGAIN][3], fom[2][3], dmu[3 * NP], dsig[3 * NP], ct[3 * NP], ins[6 * NP], frac, rms[8][3];
        int nj = 0, nj2 = 0, nfail = -1, nfail2 = -1, ok = 0, nfig = 0, m;
        /* appendix C check at the three check points */
        for (i = 0; i < 3; i++) memcpy(ct + i * NP, tht[3] + (size_t)i * 6 * NP, sizeof(double) * NP);
        CHECK_OK(lss_mdn_check(mdn[0], ct, 3, pred[3][0], 6, 200, 11, dmu, dsig));
        CHECK_OK(lss_prior_init(&pr, NP, t1->lo, t1->hi));
        CHECK_OK(lss_prior_set_hull(&pr, 0, 1, t.pool.cosmo, 6));
        memset(&co, 0, sizeof co);
        co.prior = &pr; co.walkers = 16; co.burn = 20; co.steps = 30; co.seed = SEED;
        /* the chain table: per network the most likely observation and 6 noisy fiducial mocks, then 6 calibration mocks of
           each combined-probe network */
        memset(&pl, 0, sizeof pl);
        pl.nnet = 6; pl.nfid = 6; pl.ncal = 6; pl.fiducial = t1->fiducial; pl.cal_theta = tht[1]; pl.seed = SEED;
        for (k = 0; k < 6; k++) { pl.id[k] = k; pl.fid[k] = pred[2][k]; pl.cal[k] = k % 3 ? NULL : pred[1][k]; }
        CHECK_OK(lss_deeplss_jobs(&pl, mdn, &jobs, &nj));
        CHECK(nj == 6 * 7 + 2 * 6, "%d jobs (want 54)", nj);
        if (jobs && nj == 54) {
            CHECK(jobs[7].keep && jobs[7].mdn == 1 && !jobs[8].keep && jobs[42].mdn == 0 && jobs[48].mdn == 3 &&
                  !memcmp(jobs[48].start, tht[1], sizeof(double) * NP) && !memcmp(jobs[8].obs, pred[2][1], sizeof(double) * NP),
                  "job table layout");
            CHECK_OK(lss_deeplss_chains(mdn, 6, 1, &co, jobs, nj, NULL, NULL));
            for (i = 0; i < 42; i++) {
                ok += jobs[i].ok;
                if (jobs[i].ok) CHECK(isfinite(jobs[i].c.fom_det) && jobs[i].c.std[0] > 0 && jobs[i].acc > 0, "job %d summary", i);
                if (i % 7 == 0) CHECK(!jobs[i].ok || (jobs[i].flat && jobs[i].nflat == 16 * 30), "job %d kept %lld samples", i, (long long)jobs[i].nflat);
                else CHECK(jobs[i].flat == NULL, "job %d kept its chain", i);
                if (i % 7) cs[i / 7][i % 7 - 1] = jobs[i].c;
            }
            CHECK(ok >= 42 - 4, "only %d of 42 chains analysed", ok);
            for (k = 0; k < 3; k++) {
                int64_t ng = lss_deeplss_gains(cs[3 + k], cs[k], 6, gain[k]);
                CHECK(ng >= 4 && isfinite(gain[k][0][0]) && gain[k][0][1] <= gain[k][0][0] && gain[k][0][0] <= gain[k][0][2] &&
                      gain[k][LSS_DEEPLSS_NGAIN - 1][0] > 0, "probe %d: %lld paired mocks, Omega_m gain %g [%g, %g]", k, (long long)ng,
                      gain[k][0][0], gain[k][0][1], gain[k][0][2]);
                CHECK(lss_deeplss_fom(cs[k], 6, fom) >= 4 && fom[0][0] > 0 && fom[1][0] > 0, "FoM of network %d", k);
            }
            for (i = 0; i < 6; i++)   /* coverage of the combined-probe CNN's calibration mocks */
                for (m = 0; m < NP; m++)
                    ins[i * NP + m] = jobs[42 + i].ok ? (tht[1][i * NP + m] >= jobs[42 + i].c.lo68[m] && tht[1][i * NP + m] <= jobs[42 + i].c.hi68[m]) : NAN;
            CHECK_OK(lss_deeplss_jobs_save(&pl, jobs, nj, t1->name, dir2, &nfail));
            for (i = 0, m = 0; i < nj; i++) m += !jobs[i].ok;
            CHECK(nfail == m, "%d jobs not analysed (want %d)", nfail, m);
            CHECK(lss_deeplss_jobs_save(&pl, jobs, nj - 1, t1->name, dir2, NULL) == LSS_ERR_ARG, "a job table of another plan refused");
            /* the MCMC stage on the files, with two MDN copies: the same chains, file for file */
            CHECK_OK(lss_deeplss_mcmc_stage(dir, &cfg, 63, &co, t1->fiducial, t1->name, 2, NULL, NULL, &nj2, &nfail2));
            CHECK(nj2 == nj && nfail2 == nfail, "MCMC stage: %d chains, %d failed (memory: %d, %d)", nj2, nfail2, nj, nfail);
            CHECK(same_file(dir, dir2, "mcmc_fid.csv") && same_file(dir, dir2, "calibration.csv") &&
                  same_file(dir, dir2, "chain_fid_psd_gc.npy"), "the MCMC stage differs from the job table run in memory");
            /* the report's numbers read back from the files */
            CHECK_OK(lss_deeplss_numbers_read(dir, 6, 6, t1->name, &nr));
            for (k = 0; k < 3; k++)
                for (m = 0; m < LSS_DEEPLSS_NGAIN; m++)
                    CHECK_CLOSE(nr.gain[k][m][0], gain[k][m][0], 1e-6, 0, "gain median from mcmc_fid.csv");
            CHECK(nr.loss_step == 60 && isfinite(nr.loss[0][0]) && isfinite(nr.loss[1][2]), "held-out losses at step %lld", (long long)nr.loss_step);
            CHECK(nr.have_cal && nr.cal_n[0] == lss_coverage(ins, 6, NP, &frac, NULL) && fabs(nr.cal_frac[0] - frac) < 1e-12,
                  "coverage %g over %lld mocks (memory %g)", nr.cal_frac[0], (long long)nr.cal_n[0], frac);
            for (k = 0; k < 6; k++) CHECK(nr.have_check[k] && isfinite(nr.check[k][0]), "MDN check of network %d", k);
            {   /* the report's calibration section: one row per network with the coverage read back, 6 MDN check rows */
                char buf[8192], want[64];
                FILE *tf = tmpfile();
                size_t nb = 0;
                if (tf) { lss_deeplss_calibration_md(&nr, t1->name, tf); rewind(tf); nb = fread(buf, 1, sizeof buf - 1, tf); fclose(tf); }
                buf[nb] = 0;
                snprintf(want, sizeof want, "| CNN combined | %lld | %.3f |", (long long)nr.cal_n[0], nr.cal_frac[0]);
                CHECK(strstr(buf, "## Calibration") && strstr(buf, want) && strstr(buf, "| psd gc |"), "calibration section:\n%s", buf);
            }
            snprintf(p, sizeof p, "%s/gains.csv", dir);
            CHECK_OK(lss_deeplss_gains_save(&nr, p));
            memset(&lc, 0, sizeof lc);
            CHECK_OK(lss_csv_read(p, &lc));
            CHECK(lc.nrows == 3 * LSS_DEEPLSS_NGAIN && lss_csv_col(&lc, "gain_median") == 2, "gains.csv: %lld rows", (long long)lc.nrows);
            if (lc.nrows == 3 * LSS_DEEPLSS_NGAIN) CHECK_CLOSE(lc.data[(LSS_DEEPLSS_NGAIN + 1) * 8 + 2], nr.gain[1][1][0], 1e-7, 0, "gains.csv sigma_8 gain (lensing)");
            lss_csv_free(&lc);
            /* figures 2-4 and 6 */
            CHECK_OK(lss_deeplss_corners(dir, t1->name, t1->fiducial, t1->lo, t1->hi, &nfig));
            CHECK(nfig == (jobs[0].ok && jobs[21].ok) + (jobs[7].ok && jobs[28].ok) + (jobs[14].ok && jobs[35].ok) +
                  (jobs[0].ok && jobs[7].ok && jobs[14].ok), "%d corner figures", nfig);
            CHECK(file_size(dir, "corner_comb.png") > 2000 && file_size(dir, "s8_aia.png") > 2000, "corner_comb.png and s8_aia.png written");
            {
                float *mp = (float *)malloc(sizeof(float) * 3 * (size_t)t.msz);
                lss_pool_draw d;
                double r0 = 0;
                if (mp) {
                    CHECK_OK(lss_pool_eval_draw(&t.pool, SEED, LSS_DRAWS_FID, 0, 1, &d));
                    CHECK_OK(lss_pool_observe_many(&t.pool, t.sv, t.w, t.nthr, &d, 1, SEED, mp, NULL));
                    CHECK_OK(lss_sumnet_sensitivity(nets[0], mp, mp + t.msz));
                    CHECK_OK(lss_deeplss_sensitivity_save(mp, mp + t.msz, 16, dir, rms));
                    for (i = 0; i < 256; i++) r0 += (double)mp[i] * mp[i];
                    CHECK_CLOSE(rms[0][2], sqrt(r0 / 256), 1e-12, 0, "RMS of map channel 0");
                    CHECK(rms[3][0] > 0 && rms[3][1] > 0, "sensitivity of channel 3: %g, %g", rms[3][0], rms[3][1]);
                    CHECK(file_size(dir, "sensitivity.png") > 1000 && file_size(dir, "sensitivity.npy") == 128 + 4 * 2 * t.msz &&
                          file_size(dir, "sensitivity.csv") > 100, "sensitivity files");
                }
                free(mp);
            }
            CHECK_OK(lss_deeplss_loss_png(dir, "loss"));
            CHECK(file_size(dir, "loss.png") > 2000, "loss.png written");
        }
        lss_deeplss_jobs_free(jobs, nj);
        lss_prior_free(&pr);
    }
    for (k = 0; k < 6; k++) lss_mdn_free(mdn[k]);
    for (set = 0; set < 4; set++) { free(tht[set]); for (k = 0; k < 6; k++) free(pred[set][k]); }
    for (k = 0; k < nn; k++) lss_sumnet_free(nets[k]);
    tiny_close(&t);
}

/* A case with a known answer: summaries theta_p = theta_t + N(0, sigma^2) per parameter (sigma 5% of the prior
 * width). The MDN learns it, and the MCMC posterior at an observation is then a Gaussian of width sigma around it
 * (cut by the prior): the 68% intervals must cover the truths 68% of the time (the binomial std over 60 mocks x 7
 * parameters is 0.023; the band 0.68 +- 0.10 leaves room for the MDN's fitting error) and the posterior width must
 * match sigma (0.85 - 2 sigma: an MDN fitted to a few thousand pairs in 7 dimensions broadens it by tens of percent). */
static void test_calibration_simple(void) {
    const lss_param_table *t1 = lss_table1();
    enum { NC = 64, PER = 48, NCAL = 60, NFID = 6 };
    tiny_t t;
    double sig[NP], *tt = (double *)malloc(sizeof(double) * NC * PER * NP), *tp = (double *)malloc(sizeof(double) * NC * PER * NP);
    double inside[NCAL * NP], frac, fk[NP], sd[NFID], mid[NP];
    lss_deeplss_job *jobs = (lss_deeplss_job *)calloc(NCAL + NFID, sizeof *jobs);
    lss_mdn *m = NULL;
    lss_mdn_opts mo;
    lss_prior pr;
    lss_chain_opts co;
    lss_rng r;
    int i, k, nsd = 0;
    int64_t mocks;
    if (!tt || !tp || !jobs) { CHECK(0, "alloc"); free(tt); free(tp); free(jobs); return; }
    CHECK_OK(tiny_open(&t, NC, 0));
    for (k = 0; k < NP; k++) sig[k] = 0.05 * (t1->hi[k] - t1->lo[k]);
    lss_rng_init(&r, 99, 0);
    for (i = 0; i < NC * PER; i++) {
        lss_pool_draw d;
        CHECK_OK(lss_pool_eval_draw(&t.pool, SEED, LSS_DRAWS_MDN, i, PER, &d));
        for (k = 0; k < NP; k++) { tt[i * NP + k] = d.theta[k]; tp[i * NP + k] = d.theta[k] + sig[k] * lss_rng_normal(&r); }
    }
    for (i = 0; i < NCAL + NFID; i++) {
        lss_pool_draw d;
        CHECK_OK(lss_pool_eval_draw(&t.pool, SEED, i < NCAL ? LSS_DRAWS_CAL : LSS_DRAWS_FID, i < NCAL ? i : i - NCAL, 1, &d));
        for (k = 0; k < NP; k++) { jobs[i].start[k] = d.theta[k]; jobs[i].obs[k] = d.theta[k] + sig[k] * lss_rng_normal(&r); }
    }
    memset(&mo, 0, sizeof mo);
    mo.nhidden = 2; mo.width = 64; mo.K = 2; mo.max_epochs = 400; mo.batch = 512; mo.lr = 1e-3; mo.patience = 50;
    mo.seed = lss_stream_key(SEED, LSS_STREAM_MDN, 0, 0); mo.scale_p = LSS_SCALE_ROBUST;
    CHECK_OK(lss_mdn_create(NP, NP, &mo, &m));
    CHECK_OK(lss_mdn_fit(m, tt, tp, NC * PER, &mo));
    printf("# simple case: MDN %d epochs, best validation loss %.4f\n", m->epochs, m->best_val);
    CHECK_OK(lss_prior_init(&pr, NP, t1->lo, t1->hi));
    CHECK_OK(lss_prior_set_hull(&pr, 0, 1, t.pool.cosmo, NC));
    for (k = 0; k < NP; k++) mid[k] = 0.5 * (t1->lo[k] + t1->hi[k]);
    memset(&co, 0, sizeof co);
    co.prior = &pr; co.walkers = 32; co.burn = 150; co.steps = 250; co.seed = SEED; co.mid = mid;
    CHECK_OK(lss_deeplss_chains(&m, 1, 1, &co, jobs, NCAL + NFID, NULL, NULL));
    for (i = 0; i < NCAL; i++)
        for (k = 0; k < NP; k++)
            inside[i * NP + k] = jobs[i].ok ? (jobs[i].start[k] >= jobs[i].c.lo68[k] && jobs[i].start[k] <= jobs[i].c.hi68[k]) : NAN;
    mocks = lss_coverage(inside, NCAL, NP, &frac, fk);
    printf("# simple case: coverage %.3f over %lld mocks x 7 parameters\n", frac, (long long)mocks);
    CHECK(mocks >= NCAL - 3, "only %lld of %d calibration mocks could be analysed", (long long)mocks, NCAL);
    CHECK(fabs(frac - 0.68) <= 0.10, "coverage of the 68%% intervals %.3f over %lld mocks (want 0.68 +- 0.10)", frac, (long long)mocks);
    for (i = NCAL; i < NCAL + NFID; i++) if (jobs[i].ok) sd[nsd++] = jobs[i].c.std[LSS_P_B_G];
    CHECK(nsd == NFID, "%d of %d fiducial mocks analysed", nsd, NFID);
    if (nsd > 0) {   /* b_g: continuous in the training set, unlike the grid cosmology */
        double med = lss_percentile(sd, nsd, 50);
        CHECK(med >= 0.85 * sig[LSS_P_B_G] && med <= 2.0 * sig[LSS_P_B_G], "posterior std of b_g %.4f vs the summary noise %.4f "
              "(want 0.85-2 times)", med, sig[LSS_P_B_G]);
    }
    lss_prior_free(&pr);
    lss_mdn_free(m);
    tiny_close(&t);
    free(tt); free(tp); free(jobs);
}

/* The configuration: presets valid, key = value round trip exact, every bad value, unknown, repeated or missing key
 * refused (and the struct left as it was). */
static void test_cfg(void) {
    static const struct { const char *key, *value; } bad[] = {
        {"nside", "banana"}, {"nside", "4"}, {"nside", "32.5"}, {"nside", ""}, {"lr_cnn", "nan"}, {"lr_cnn", "inf"}, {"lr_cnn", "0"},
        {"lr_cnn", "1e-300"}, {"walkers", "12"}, {"seed", "-1"}, {"seed", "18446744073709551616"}, {"cosine", "2"},
        {"scale", "paper"}, {"ell_max", "1e8"}, {"mdn_K", "0x3"}, {"frobnicate", "1"}};
    static const char *const badfile[] = {
        "nside = 32\nnside = 32\n",   /* repeated (and the rest missing) */
        "frobnicate = 3\n", "nside = banana\n", "nside\n"};
    lss_deeplss_cfg a, b, c;
    char p[500], q[500], line[200], cmd[700];
    FILE *f;
    int i;
    CHECK_OK(lss_deeplss_cfg_defaults(&a, LSS_DEEPLSS_SMALL));
    CHECK_OK(lss_deeplss_cfg_check(&a));
    CHECK(a.nside == 32 && a.grid == 1 && a.walkers == 32 && a.steps == 40000 && a.ncosmo == 256 && a.patience == 20 && a.cnn_products == 3, "small preset");
    CHECK_OK(lss_deeplss_cfg_defaults(&b, LSS_DEEPLSS_PAPER));
    CHECK_OK(lss_deeplss_cfg_check(&b));
    CHECK(b.nside == 64 && b.grid == 6 && b.pixel_arcmin == LSS_DEEPLSS_PIXEL_ARCMIN && b.steps == 900000 && b.nres == 10,
          "paper preset (pixel %g arcmin)", b.pixel_arcmin);
    CHECK_ERR(lss_deeplss_cfg_defaults(&c, 2), LSS_ERR_ARG);
    CHECK(lss_deeplss_scale_parse("paper") == LSS_DEEPLSS_PAPER && lss_deeplss_scale_parse("huge") == LSS_ERR_ARG &&
          !strcmp(lss_deeplss_scale_name(LSS_DEEPLSS_SMALL), "small") && lss_deeplss_scale_name(5) == NULL, "scale names");
    /* values set by name, then a round trip through the file */
    CHECK_OK(lss_deeplss_cfg_set(&a, "seed", "18446744073709551615"));
    CHECK_OK(lss_deeplss_cfg_set(&a, "lr_cnn", "3.3000000000000002e-05"));
    CHECK_OK(lss_deeplss_cfg_set(&a, "pixel_arcmin", "0.1"));
    CHECK_OK(lss_deeplss_cfg_set(&a, "ncal", "0"));
    CHECK(a.seed == UINT64_MAX && a.lr_cnn == 3.3e-5 && a.pixel_arcmin == 0.1 && a.ncal == 0, "values set by key");
    snprintf(p, sizeof p, "%s/a.cfg", tmpdir);
    snprintf(q, sizeof q, "%s/b.cfg", tmpdir);
    CHECK_OK(lss_deeplss_cfg_save(&a, p));
    memset(&c, 0, sizeof c);
    CHECK_OK(lss_deeplss_cfg_load(&c, p));
    CHECK(!memcmp(&a, &c, sizeof a), "configuration round trip");
    CHECK_OK(lss_deeplss_cfg_save(&c, q));
    snprintf(cmd, sizeof cmd, "cmp -s %s/a.cfg %s/b.cfg", tmpdir, tmpdir);
    CHECK(system(cmd) == 0, "the loaded configuration saves to the same file");
    /* every bad value refused, the struct unchanged */
    for (i = 0; i < (int)(sizeof bad / sizeof bad[0]); i++) {
        c = a;
        CHECK_ERR(lss_deeplss_cfg_set(&c, bad[i].key, bad[i].value), LSS_ERR_ARG);
        CHECK(!memcmp(&a, &c, sizeof a), "%s = '%s' changed the configuration", bad[i].key, bad[i].value);
    }
    c = a; c.walkers = 33;
    CHECK_ERR(lss_deeplss_cfg_check(&c), LSS_ERR_ARG);
    CHECK_ERR(lss_deeplss_cfg_save(&c, q), LSS_ERR_ARG);
    c = a; c.ell_min = c.ell_max;
    CHECK_ERR(lss_deeplss_cfg_check(&c), LSS_ERR_ARG);
    c = a; c.nside = 2;
    CHECK_ERR(lss_deeplss_cfg_check(&c), LSS_ERR_ARG);
    /* files: the old "key value" layout and comments read; unknown, repeated, missing and bad keys refused */
    if ((f = fopen(p, "r"))) {
        FILE *g = fopen(q, "w");
        while (g && fgets(line, sizeof line, f)) {
            char *e = strstr(line, " = ");
            if (e) memmove(e + 1, e + 3, strlen(e + 3) + 1);
            fputs(line, g);
        }
        if (g) fclose(g);
        fclose(f);
    }
    memset(&c, 0, sizeof c);
    CHECK_OK(lss_deeplss_cfg_load(&c, q));
    CHECK(!memcmp(&a, &c, sizeof a), "\"key value\" file read");
    for (i = 0; i < (int)(sizeof badfile / sizeof badfile[0]); i++) {
        if ((f = fopen(q, "w"))) { fputs(badfile[i], f); fclose(f); }
        c = b;
        CHECK_ERR(lss_deeplss_cfg_load(&c, q), LSS_ERR_FORMAT);
        CHECK(!memcmp(&b, &c, sizeof b), "a failed load changed the configuration");
    }
    if ((f = fopen(p, "r"))) {   /* the whole file but one key */
        FILE *g = fopen(q, "w");
        while (g && fgets(line, sizeof line, f)) if (strncmp(line, "nfid ", 5)) fputs(line, g);
        if (g) fclose(g);
        fclose(f);
    }
    CHECK_ERR(lss_deeplss_cfg_load(&c, q), LSS_ERR_FORMAT);
    CHECK(strstr(lss_last_error(), "missing key 'nfid'") != NULL, "missing key named: %s", lss_last_error());
    snprintf(q, sizeof q, "%s/none.cfg", tmpdir);
    CHECK_ERR(lss_deeplss_cfg_load(&c, q), LSS_ERR_IO);
}

/* The report's readers and writers on files made by hand: known gains, FoM, coverage and losses read back by column
 * name; a missing mcmc_fid.csv or column refused; corner figures only for the chains present; a malformed chain refused. */
static void test_report_files(void) {
    const lss_param_table *t1 = lss_table1();
    lss_deeplss_plan pl;
    lss_deeplss_job jobs[6 * 3 + 2 * 2];
    lss_deeplss_numbers nr;
    double fid[NP] = {0}, cal[2 * NP], chain[400 * NP], loss[2 * 13];
    const char *lh[13] = {"step", "train_cnn_comb", "train_cnn_wl", "train_cnn_gc", "train_psd_comb", "train_psd_wl", "train_psd_gc",
                          "valid_cnn_comb", "valid_cnn_wl", "valid_cnn_gc", "valid_psd_comb", "valid_psd_wl", "valid_psd_gc"};
    char dir[400], p[500];
    int i, k, nfail = -1, nfig = -1;
    lss_rng r;
    FILE *f;
    snprintf(dir, sizeof dir, "%s/report", tmpdir);
    CHECK(mkdir(dir, 0777) == 0, "directory");
    memset(&pl, 0, sizeof pl);
    memset(jobs, 0, sizeof jobs);
    pl.nnet = 6; pl.nfid = 2; pl.ncal = 2; pl.fiducial = t1->fiducial; pl.cal_theta = cal;
    for (k = 0; k < 6; k++) { pl.id[k] = k; pl.fid[k] = fid; }
    pl.cal[0] = pl.cal[3] = fid;
    lss_rng_init(&r, 3, 0);
    for (i = 0; i < 400 * NP; i++) chain[i] = t1->fiducial[i % NP] + 0.01 * lss_rng_normal(&r);
    for (i = 0; i < 2 * NP; i++) cal[i] = t1->fiducial[i % NP];
    /* network k: std (k / 3 + 1) (the PSD twice as wide as the CNN), FoM 10 (k / 3 + 1), area 1 / (k + 1) */
    for (i = 0; i < 18; i++) {
        int net = i / 3;
        jobs[i].ok = 1; jobs[i].acc = 0.3; jobs[i].mdn = net; jobs[i].keep = i % 3 == 0;
        for (k = 0; k <= NP; k++) jobs[i].c.std[k] = net / 3 + 1.0;
        jobs[i].c.fom_det = 10.0 * (net / 3 + 1); jobs[i].c.area68 = 1.0 / (net + 1);
        if (jobs[i].keep && net != 1) { jobs[i].flat = chain; jobs[i].nflat = 400; }   /* no chain for cnn_wl */
    }
    for (i = 18; i < 22; i++) {   /* calibration: CNN truths inside all intervals, PSD inside on the first mock only */
        jobs[i].ok = 1; jobs[i].mdn = i < 20 ? 0 : 3;
        memcpy(jobs[i].start, cal, sizeof jobs[i].start);
        for (k = 0; k < NP; k++) { jobs[i].c.lo68[k] = cal[k] - (i == 21 ? 2 : 1); jobs[i].c.hi68[k] = cal[k] - (i == 21 ? 1 : -1); }
    }
    CHECK_OK(lss_deeplss_jobs_save(&pl, jobs, 22, t1->name, dir, &nfail));
    CHECK(nfail == 0, "%d failed", nfail);
    for (i = 0; i < 2; i++) for (k = 0; k < 13; k++) loss[i * 13 + k] = i ? (k ? k + 0.5 : 40) : k;
    snprintf(p, sizeof p, "%s/loss.csv", dir);
    CHECK_OK(lss_csv_write(p, 13, lh, 2, loss));
    CHECK_OK(lss_deeplss_numbers_read(dir, 2, 2, t1->name, &nr));
    for (k = 0; k <= NP; k++) CHECK(nr.gain[1][k][0] == 2 && nr.gain[2][k][2] == 2, "gain %d: %g", k, nr.gain[1][k][0]);
    CHECK(nr.ngain[0] == 2 && nr.gain[0][NP + 1][0] == 0.5 && nr.gain[0][NP + 2][0] == 0.25, "FoM gains %g, %g", nr.gain[0][NP + 1][0],
          nr.gain[0][NP + 2][0]);
    CHECK(nr.fom[4][0][0] == 20, "FoM of psd_wl %g", nr.fom[4][0][0]);
    CHECK_CLOSE(nr.fom[4][1][0], 5, 1e-8, 0, "1/area68 of psd_wl");
    CHECK_CLOSE(nr.fom[2][1][1], 3, 1e-8, 0, "1/area68 of cnn_gc, 16th percentile");
    CHECK(nr.loss_step == 40 && nr.loss[0][1] == 8.5 && nr.loss[1][2] == 12.5, "losses %g, %g at step %lld", nr.loss[0][1], nr.loss[1][2], (long long)nr.loss_step);
    CHECK(nr.have_cal && nr.cal_n[0] == 2 && nr.cal_frac[0] == 1 && nr.cal_n[1] == 2 && nr.cal_frac[1] == 0.5 && nr.cal_par[1][3] == 0.5,
          "coverage %g, %g", nr.cal_frac[0], nr.cal_frac[1]);
    CHECK(!nr.have_check[0], "no mdn_check.csv");
    /* figures: three chains of the CNN missing one: corner_comb and corner_gc only */
    CHECK_OK(lss_deeplss_corners(dir, t1->name, t1->fiducial, t1->lo, t1->hi, &nfig));
    CHECK(nfig == 2 && file_size(dir, "corner_comb.png") > 2000 && file_size(dir, "corner_gc.png") > 2000 && file_size(dir, "corner_wl.png") < 0 &&
          file_size(dir, "s8_aia.png") < 0, "%d corner figures", nfig);
    snprintf(p, sizeof p, "%s/chain_fid_cnn_wl.npy", dir);
    CHECK_OK(lss_npy_save(p, LSS_F64, 2, (int64_t[]){100, 3}, chain));
    CHECK_ERR(lss_deeplss_corners(dir, t1->name, t1->fiducial, t1->lo, t1->hi, &nfig), LSS_ERR_FORMAT);
    /* refusals */
    snprintf(p, sizeof p, "%s/mdn_check.csv", dir);
    if ((f = fopen(p, "w"))) { fputs("kind,probe,dmu_median\n0,0,0.1\n", f); fclose(f); }
    CHECK_ERR(lss_deeplss_numbers_read(dir, 2, 2, t1->name, &nr), LSS_ERR_FORMAT);
    remove(p);
    snprintf(p, sizeof p, "%s/mcmc_fid.csv", dir);
    if ((f = fopen(p, "w"))) { fputs("kind,probe,mock,ok\n0,0,0,1\n", f); fclose(f); }
    CHECK_ERR(lss_deeplss_numbers_read(dir, 2, 2, t1->name, &nr), LSS_ERR_FORMAT);
    remove(p);
    CHECK_ERR(lss_deeplss_numbers_read(dir, 2, 2, t1->name, &nr), LSS_ERR_IO);
    CHECK_ERR(lss_deeplss_numbers_read(dir, 0, 2, t1->name, &nr), LSS_ERR_ARG);
    pl.id[1] = 0;
    CHECK_ERR(lss_deeplss_jobs_save(&pl, jobs, 22, t1->name, dir, NULL), LSS_ERR_ARG);
    CHECK_ERR(lss_deeplss_mcmc_stage(dir, NULL, 1, NULL, NULL, NULL, 1, NULL, NULL, NULL, NULL), LSS_ERR_ARG);
    CHECK(lss_deeplss_kind_name(2) == NULL && lss_deeplss_probe_name(3, 0) == NULL && !strcmp(lss_deeplss_probe_name(1, 1), "lensing"), "names");
}

static int run(const char *cmd) {
    char full[1200];
    int st;
    snprintf(full, sizeof full, "%s > /dev/null 2>&1", cmd);
    st = system(full);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* lss-sim's maps are deeplss's: bin/lss-sim --scale at (seed 7, training items 0 and 1) against lss_survey_simulate,
 * and map 0 against the pool path (a pool whose one training field is lss-sim's field 0, drawn as item 0). */
static void test_lss_sim_is_the_recipe(void) {
    char cmd[600], p[500];
    lss_params fid;
    lss_cosmo *c = NULL;
    lss_nz *nz = NULL;
    lss_sim *sim = NULL;
    lss_sim_opts so;
    lss_survey_opts vo;
    lss_survey *sv = NULL;
    lss_survey_work *w = NULL;
    lss_pool pool;
    lss_pool_draw d;
    float *m = NULL, *ref = NULL;
    int nd, nb, i, k;
    int64_t sh[LSS_MAX_DIM], msz, same[3] = {0, 0, 0};
    if (access("bin/lss-sim", X_OK) != 0) { SKIP("bin/lss-sim is not built"); return; }
    snprintf(cmd, sizeof cmd, "bin/lss-sim --n 2 --seed 7 --scale --out '%s/sim'", tmpdir);
    CHECK(run(cmd) == 0, "%s failed", cmd);
    snprintf(p, sizeof p, "%s/sim/maps.npy", tmpdir);
    CHECK_OK(lss_npy_load_f32(p, &m, &nd, sh));
    memset(&so, 0, sizeof so);
    memset(&vo, 0, sizeof vo);
    lss_params_fiducial(&fid);
    CHECK_OK(lss_cosmo_create(&fid, &c));
    CHECK_OK(lss_nz_builtin("deeplss", &nz, &nb));
    CHECK_OK(lss_sim_create(c, nz, nb, &so, &sim));
    CHECK_OK(lss_survey_create(sim, &vo, &sv));
    CHECK_OK(lss_survey_work_create(sv, &w));
    if (!m || !w) goto out;
    msz = lss_survey_map_size(sv);
    CHECK(nd == 4 && sh[0] == 2 && sh[0] * sh[1] * sh[2] * sh[3] == 2 * msz, "maps.npy shape");
    ref = (float *)malloc(sizeof(float) * (size_t)msz);
    for (i = 0; i < 2 && ref && nd == 4; i++) {
        CHECK_OK(lss_survey_simulate(sv, sim, w, &fid, 7, lss_set_index(LSS_SET_TRAIN, (uint64_t)i), ref, NULL));
        same[i] = !memcmp(ref, m + i * msz, sizeof(float) * (size_t)msz);
        CHECK(same[i], "lss-sim map %d differs from lss_survey_simulate", i);
    }
    CHECK(memcmp(m, m + msz, sizeof(float) * (size_t)msz) != 0, "maps 0 and 1 are equal");
    CHECK_OK(lss_pool_init(&pool, 1, 1, 1, nb, 64));
    if (pool.fields && ref) {
        CHECK_OK(lss_pool_simulate(&pool, nz, &so, 7, NULL, NULL));
        lss_pool_draw_random(&pool, 7, lss_set_index(LSS_SET_TRAIN, 0), 0, &d);
        for (k = 0; k < LSS_NPARAM_LINEAR; k++) d.theta[k] = lss_table1()->fiducial[k];
        CHECK_OK(lss_pool_observe(&pool, sv, w, &d, 7, ref, NULL));
        same[2] = !memcmp(ref, m, sizeof(float) * (size_t)msz);
        CHECK(same[2], "lss-sim map 0 differs from the pool path (lss_pool_observe) on the same field");
    }
    lss_pool_free(&pool);
out:
    LSS_FREE(m);
    free(ref);
    lss_survey_work_free(w);
    lss_survey_free(sv);
    lss_sim_free(sim);
    if (nz) lss_nz_free(nz, nb);
    lss_cosmo_free(c);
}

/* The command lines: bad input exits 2 with one line; --help exits 0. */
static void test_cli(void) {
    static const struct { const char *args; int rc; } cases[] = {
        {"", 2}, {"frobnicate", 2}, {"--help", 0}, {"train --help", 0}, {"train --steps ten --out D", 2},
        {"train --scale huge --out D", 2}, {"mcmc --nets rnn --out D", 2}, {"report --out D", 2}, {"report --nets cnn --out D", 2},
        {"predict --out D/bad", 2}, {"train --ncal 5 --out D/good", 2}, {"train --scale paper --out D/good", 2},
        {"mcmc --out D/good", 2}, {"sim --mcmc-steps 5 --out D/new", 2}, {"fisher --help", 0}, {"fisher --fisher-nfid -5 --out D/good", 2},
        {"fisher --out D/good", 2}, {"fisher --patience 3 --out D/good", 2}};
    char cmd[900], p[500], args[400], *q;
    FILE *f;
    int i;
    if (access("bin/deeplss", X_OK) != 0) { SKIP("bin/deeplss is not built"); return; }
    snprintf(p, sizeof p, "%s/cli/bad", tmpdir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p);
    CHECK(run(cmd) == 0, "mkdir");
    snprintf(p, sizeof p, "%s/cli/bad/deeplss.cfg", tmpdir);
    if ((f = fopen(p, "w"))) { fputs("nside banana\n", f); fclose(f); }   /* a malformed configuration file */
    {   /* a valid configuration of a run without a pool */
        lss_deeplss_cfg c;
        snprintf(cmd, sizeof cmd, "mkdir -p '%s/cli/good'", tmpdir);
        CHECK(run(cmd) == 0, "mkdir");
        snprintf(p, sizeof p, "%s/cli/good/deeplss.cfg", tmpdir);
        CHECK_OK(lss_deeplss_cfg_defaults(&c, LSS_DEEPLSS_SMALL));
        CHECK_OK(lss_deeplss_cfg_save(&c, p));
    }
    for (i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        snprintf(args, sizeof args, "%s", cases[i].args);
        if ((q = strstr(args, " D"))) snprintf(q, sizeof args - (size_t)(q - args), " %s/cli%s", tmpdir, strstr(cases[i].args, " D") + 2);
        snprintf(cmd, sizeof cmd, "bin/deeplss %s", args);
        CHECK(run(cmd) == cases[i].rc, "'%s' should exit %d", cmd, cases[i].rc);
    }
    {   /* a tiny run through the driver: sim, train, fisher (PSD lensing network, small Fisher sets) */
        char dir[400], line[600];
        int rows = 0, ps_self = 0, have_net = 0;
        snprintf(dir, sizeof dir, "%s/cli/fisher", tmpdir);
        snprintf(cmd, sizeof cmd, "bin/deeplss train --ncosmo 3 --nfield 2 --steps 20 --nets psd --probes wl --out '%s' 2>/dev/null", dir);
        CHECK(run(cmd) == 0, "tiny deeplss train");
        snprintf(cmd, sizeof cmd, "bin/deeplss fisher --nets psd --probes wl --fisher-nfid 240 --fisher-nder 24 --out '%s' 2>/dev/null", dir);
        CHECK(run(cmd) == 0, "deeplss fisher on the tiny run");
        snprintf(p, sizeof p, "%s/fisher.csv", dir);
        if ((f = fopen(p, "r"))) {
            while (fgets(line, sizeof line, f)) {
                rows++;
                if (!strncmp(line, "wl,ps_re,", 9)) {
                    double fo, fe, r1;
                    ps_self = sscanf(line + 9, "%lf,%lf,%lf", &fo, &fe, &r1) == 3 && fo > 0 && fabs(r1 - 1) < 1e-9;
                }
                have_net |= !strncmp(line, "wl,psd,", 7);
            }
            fclose(f);
        }
        CHECK(rows == 6 && ps_self && have_net, "fisher.csv: header + 5 lensing rows (%d), the spectra's efficiency against themselves 1, "
              "the network's row", rows);
        snprintf(p, sizeof p, "%s/run.json", dir);
        CHECK(access(p, R_OK) == 0, "run.json of the fisher command");
    }
    {   /* a hybrid CNN (spectra joined to the CNN features) through the driver: trains, and fisher names it */
        char dir[400], line[600];
        int have_hyb = 0, have_mom = 0;
        snprintf(dir, sizeof dir, "%s/cli/hybrid", tmpdir);
        snprintf(cmd, sizeof cmd, "bin/deeplss train --ncosmo 3 --nfield 2 --steps 20 --cnn-hybrid 1 --nets cnn --probes gc --out '%s' 2>/dev/null", dir);
        CHECK(run(cmd) == 0, "tiny hybrid deeplss train");
        snprintf(cmd, sizeof cmd, "bin/deeplss fisher --nets cnn --probes gc --fisher-nfid 240 --fisher-nder 24 --out '%s' 2>/dev/null", dir);
        CHECK(run(cmd) == 0, "deeplss fisher on the tiny hybrid run");
        snprintf(p, sizeof p, "%s/fisher.csv", dir);
        if ((f = fopen(p, "r"))) {
            while (fgets(line, sizeof line, f)) {
                have_hyb |= !strncmp(line, "gc,hybrid_cnn,", 14);
                have_mom |= !strncmp(line, "gc,moments,", 11);
            }
            fclose(f);
        }
        CHECK(have_hyb && have_mom, "fisher.csv of a hybrid run: the hybrid_cnn row (%d) and the one-point moments row (%d)", have_hyb, have_mom);
        snprintf(cmd, sizeof cmd, "bin/deeplss train --cnn-hybrid 2 --out '%s/cli/hybrid2' 2>/dev/null", tmpdir);
        CHECK(run(cmd) == 2, "--cnn-hybrid 2 refused");
    }
    snprintf(cmd, sizeof cmd, "bin/lss-sim --omega-m 0.9 --out '%s/cli/s'", tmpdir);
    CHECK(run(cmd) == 2, "lss-sim with Omega_m outside its prior should exit 2");
    CHECK(run("bin/lss-stats ps --out x.csv") == 2, "lss-stats without --maps should exit 2");
}

int main(void) {
    double t0 = lss_time_now();
    char cmd[300];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lss_test_deeplss_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("cannot create a temporary directory\n"); return 1; }
    RUN(test_cfg);
    RUN(test_report_files);
    RUN(test_cli);
    RUN(test_lss_sim_is_the_recipe);
    RUN(test_pipeline);
    RUN(test_calibration_simple);
    printf("# %.1f s\n", lss_time_now() - t0);
    if (getenv("LSS_TEST_KEEP")) printf("# kept %s\n", tmpdir);
    else {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    }
    LSS_TEST_END();
}
