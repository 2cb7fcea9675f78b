/* test_e2e_deeplss.c - the DeepLSS pipeline end to end on a tiny case (drivers/deeplss.c built in
 * with its main renamed): pool -> train -> predict -> mdn -> mcmc -> report, the files it writes,
 * resuming from checkpoints bit for bit, the command line's exit codes, and the calibration of the
 * MDN + MCMC stage on a case with a known answer. */
#define DEEPLSS_MAIN deeplss_main
#include "drivers/deeplss.c"
#include "tests/lss_test.h"
#include <sys/types.h>
#include <sys/wait.h>
#include <fcntl.h>

/* The sizes are small enough to run unchanged under ASan (LSS_TEST_ASAN is not needed). */
static char tmpdir[256];

static void rm_rf(const char *dir) {
    char cmd[600];
    if (snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) < (int)sizeof cmd && system(cmd) != 0) printf("# could not remove %s\n", dir);
}

static int file_size_ok(const char *dir, const char *name, long min) {
    char p[600];
    FILE *f;
    long n;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    f = fopen(p, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fclose(f);
    return n >= min;
}

static int files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb, ca, cb;
    while (eq) {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) eq = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

/* A tiny configuration: 16 x 16 fields of 18.75 arcmin, a 2-convolution CNN of 8 channels. */
static void tiny_cfg(dl_cfg *c) {
    dl_cfg_defaults(c, 0);
    c->nside = 16; c->pixel_arcmin = 18.75; c->grid = 1;
    c->ncosmo = 6; c->nf_train = 3; c->nf_test = 2;
    c->nconv = 2; c->nres = 1; c->channels = 8; c->kernel = 3;
    c->psd_width = 32; c->nell = 4; c->ell_min = 72; c->ell_max = 576;
    c->batch = 16; c->steps = 60; c->eval_every = 6; c->ckpt_every = 0; c->ntest = 32;
    c->lr_cnn = 1e-3; c->lr_psd = 1e-3;
    c->pred_per_cosmo = 24; c->ncal = 6; c->nfid = 3; c->ncheck = 3; c->check_rep = 6;
    c->mdn_width = 16; c->mdn_layers = 1; c->mdn_K = 1; c->mdn_epochs = 30;
    c->walkers = 16; c->burn = 20; c->nsteps = 30;
    c->seed = 5;
}

static void test_pipeline(void) {
    dl_cfg c;
    dl_ctx x;
    dl_train_opts to;
    char dir[400], dir2[400], p1[600], p2[600];
    static const char *const must[] = {"deeplss.cfg", "pool_fields.npy", "pool_cosmo.npy", "net_cnn_comb.ckpt", "net_cnn_wl.ckpt",
                                       "net_cnn_gc.ckpt", "net_psd_comb.ckpt", "net_psd_wl.ckpt", "net_psd_gc.ckpt", "loss.csv",
                                       "loss.png", "theta_mdn.npy", "pred_mdn_cnn_comb.npy", "pred_fid_psd_gc.npy",
                                       "pred_cal_psd_comb.npy", "mdn_cnn_comb.ckpt", "mdn_psd_gc.ckpt", "mdn_check.csv",
                                       "mcmc_fid.csv", "calibration.csv", "chain_fid_cnn_comb.npy", "gains.csv",
                                       "corner_comb.png", "corner_wl.png", "corner_gc.png", "s8_aia.png", "sensitivity.png",
                                       "sensitivity.npy", "sensitivity.csv", "REPORT.md"};
    lss_csv lc;
    int i, k;
    int64_t n;
    double *v = NULL;
    snprintf(dir, sizeof dir, "%s/run", tmpdir);
    snprintf(dir2, sizeof dir2, "%s/resume", tmpdir);
    lss_drv_mkdirs(dir);
    lss_drv_mkdirs(dir2);
    tiny_cfg(&c);
    CHECK_OK(dl_ctx_open(&x, &c, dir));
    CHECK_OK(dl_cfg_save(&c, dir));
    CHECK_OK(dl_pool_simulate(&x));
    memset(&to, 0, sizeof to);
    to.mask = (1 << DL_NNET) - 1;
    CHECK_OK(dl_train(&x, &to));
    CHECK_OK(dl_predict(&x, to.mask));
    CHECK_OK(dl_mdn(&x, to.mask));
    CHECK_OK(dl_mcmc(&x, to.mask));
    CHECK_OK(dl_report(&x, "- (test)\n"));
    for (i = 0; i < (int)(sizeof must / sizeof must[0]); i++) CHECK(file_size_ok(dir, must[i], 16), "%s missing or empty", must[i]);
    /* the loss curve: finite values, and the held-out loss fell from its first evaluation for every network */
    snprintf(p1, sizeof p1, "%s/loss.csv", dir);
    memset(&lc, 0, sizeof lc);
    CHECK_OK(lss_csv_read(p1, &lc));
    CHECK(lc.ncols == 13 && lc.nrows == c.steps / c.eval_every, "loss.csv: %d columns, %lld rows", lc.ncols, (long long)lc.nrows);
    if (lc.ncols == 13 && lc.nrows >= 2)
        for (k = 0; k < 4; k++) {   /* the CNNs and the combined PSD network */
            double first = lc.data[2 + 2 * k], last = lc.data[(lc.nrows - 1) * 13 + 2 + 2 * k];
            CHECK(isfinite(first) && isfinite(last) && last < first, "%s: test loss %g -> %g did not fall", lc.names[2 + 2 * k], first, last);
        }
    lss_csv_free(&lc);
    /* predictions: the right shape, finite, inside a sane range around the prior */
    CHECK_OK(dl_load_f64(&x, "pred_mdn_cnn_comb.npy", &n, DL_NP, &v));
    CHECK(n == (int64_t)c.ncosmo * c.pred_per_cosmo, "pred rows %lld", (long long)n);
    if (v) {
        int bad = 0;
        for (i = 0; i < n * DL_NP; i++) bad += !isfinite(v[i]);
        CHECK(bad == 0, "%d non-finite predictions", bad);
        free(v);
        v = NULL;
    }
    /* resume: 60 steps in one go equal 30 steps + 30 resumed steps, bit for bit */
    {
        dl_ctx x2;
        dl_cfg c2 = c;
        c2.ckpt_every = 30;
        CHECK_OK(dl_ctx_open(&x2, &c2, dir2));
        CHECK_OK(lss_pool_init(&x2.pool, c.ncosmo, c.nf_train, c.nf_test, DL_NBINS, c.nside));
        if (x2.pool.fields) {
            memcpy(x2.pool.cosmo, x.pool.cosmo, sizeof(double) * 2 * (size_t)c.ncosmo);
            memcpy(x2.pool.fields, x.pool.fields, sizeof(float) * (size_t)(c.ncosmo * (c.nf_train + c.nf_test)) * (size_t)x2.pool.field_size);
            to.mask = 1 | (1 << 3);   /* cnn_comb and psd_comb */
            to.steps_override = 30;   /* stop half way (the schedule still spans c.steps) */
            CHECK_OK(dl_train(&x2, &to));
            to.steps_override = 0;
            to.resume = 1;
            CHECK_OK(dl_train(&x2, &to));
            snprintf(p1, sizeof p1, "%s/net_cnn_comb.ckpt", dir);
            snprintf(p2, sizeof p2, "%s/net_cnn_comb.ckpt", dir2);
            CHECK(files_equal(p1, p2), "resumed CNN checkpoint differs from the uninterrupted one");
            snprintf(p1, sizeof p1, "%s/net_psd_comb.ckpt", dir);
            snprintf(p2, sizeof p2, "%s/net_psd_comb.ckpt", dir2);
            CHECK(files_equal(p1, p2), "resumed PSD checkpoint differs from the uninterrupted one");
            /* resuming networks that have no checkpoint is an error, not a fresh start */
            to.mask = 1 << 1;
            CHECK_ERR(dl_train(&x2, &to), LSS_ERR_IO);
        }
        dl_ctx_free(&x2);
    }
    dl_ctx_free(&x);
}

/* A case with a known answer: summaries theta_p = theta_t + N(0, sigma^2) per parameter (sigma 5% of
 * the prior width). The MDN must learn it, and the MCMC posterior at an observation is then a Gaussian
 * of width sigma around it (cut by the prior): its std must match sigma and the 68% intervals must
 * cover the truths 68% of the time (the summaries are scaled with the robust scaler, the small-scale default). Tolerances: the coverage fraction over N mocks x 7 parameters has a
 * binomial std sqrt(0.68 0.32 / (7 N)) = 0.023 for N = 60; the acceptance
 * band 0.68 +- 0.10 leaves room for the MDN's fitting error. The width check is looser (0.85 - 2 sigma):
 * an MDN fitted to a few thousand pairs in 7 dimensions broadens the likelihood by tens of percent. */
static void test_calibration_simple(void) {
    dl_cfg c;
    dl_ctx x;
    char dir[400], name[64];
    int set, i, k, N;
    double sig[DL_NP];
    lss_rng r;
    lss_csv cc, fc;
    tiny_cfg(&c);
    c.ncosmo = 64;
    c.pred_per_cosmo = 48;
    c.ncal = 60;
    c.nfid = 6;
    c.mdn_width = 64; c.mdn_layers = 2; c.mdn_K = 2; c.mdn_epochs = 400;
    c.walkers = 32; c.burn = 150; c.nsteps = 250;
    snprintf(dir, sizeof dir, "%s/simple", tmpdir);
    lss_drv_mkdirs(dir);
    CHECK_OK(dl_ctx_open(&x, &c, dir));
    CHECK_OK(lss_pool_init(&x.pool, c.ncosmo, c.nf_train, c.nf_test, DL_NBINS, 2));
    if (!x.pool.cosmo) return;
    CHECK_OK(lss_pool_grid(c.seed, c.ncosmo, x.pool.cosmo));
    for (k = 0; k < DL_NP; k++) sig[k] = 0.05 * (lss_table1()->hi[k] - lss_table1()->lo[k]);
    lss_rng_init(&r, 99, 0);
    for (set = 0; set < DL_NSET; set++) {
        int n = dl_set_size(&c, set);
        double *tt = (double *)malloc(sizeof(double) * (size_t)n * DL_NP), *tp = (double *)malloc(sizeof(double) * (size_t)n * DL_NP);
        if (!tt || !tp) { CHECK(0, "alloc"); free(tt); free(tp); break; }
        for (i = 0; i < n; i++) {
            lss_pool_draw d;
            CHECK_OK(lss_pool_eval_draw(&x.pool, c.seed, set, i, set == LSS_DRAWS_MDN ? c.pred_per_cosmo : c.check_rep, &d));
            for (k = 0; k < DL_NP; k++) {
                tt[i * DL_NP + k] = d.theta[k];
                tp[i * DL_NP + k] = d.theta[k] + sig[k] * lss_rng_normal(&r);
            }
        }
        snprintf(name, sizeof name, "theta_%s.npy", dl_set_name[set]);
        CHECK_OK(dl_save_f64(&x, name, n, DL_NP, tt));
        snprintf(name, sizeof name, "pred_%s_cnn_comb.npy", dl_set_name[set]);
        CHECK_OK(dl_save_f64(&x, name, n, DL_NP, tp));
        free(tt);
        free(tp);
    }
    CHECK_OK(dl_mdn(&x, 1));
    CHECK_OK(dl_mcmc(&x, 1));
    memset(&cc, 0, sizeof cc);
    memset(&fc, 0, sizeof fc);
    snprintf(name, sizeof name, "calibration.csv");
    {
        char p[600];
        double in = 0;
        int cnt = 0, okm = 0;
        snprintf(p, sizeof p, "%s/calibration.csv", dir);
        CHECK_OK(lss_csv_read(p, &cc));
        for (i = 0; i < cc.nrows && cc.ncols == 8; i++) {
            if (cc.data[i * 8 + 7] != 1) continue;
            in += cc.data[i * 8 + 6];
            cnt++;
        }
        okm = cnt / DL_NP;
        N = c.ncal;
        CHECK(okm >= N - 3, "only %d of %d calibration mocks could be analysed", okm, N);
        CHECK(cnt > 0 && fabs(in / cnt - 0.68) <= 0.10, "coverage of the 68%% intervals %.3f over %d mocks (want 0.68 +- 0.10)",
              cnt ? in / cnt : NAN, okm);
        printf("# simple case: coverage %.3f over %d mocks x 7 parameters\n", cnt ? in / cnt : NAN, okm);
        snprintf(p, sizeof p, "%s/mcmc_fid.csv", dir);
        CHECK_OK(lss_csv_read(p, &fc));
        {
            double sd[64];
            int m = 0;
            for (i = 0; i < fc.nrows && fc.ncols == 15 && m < 64; i++)
                if (fc.data[i * 15 + 2] >= 0 && fc.data[i * 15 + 3] == 1) sd[m++] = fc.data[i * 15 + 4 + 4];
            CHECK(m == c.nfid, "%d of %d fiducial mocks analysed", m, c.nfid);
            if (m > 0) {
                /* b_g (continuous in the training set, unlike the grid cosmology): the posterior cannot be
                   narrower than the summary noise (overconfidence) and the MDN's broadening must stay moderate */
                double med = lss_percentile(sd, m, 50);
                CHECK(med >= 0.85 * sig[4] && med <= 2.0 * sig[4], "posterior std of b_g %.4f vs the summary noise %.4f "
                      "(want 0.85-2 times)", med, sig[4]);
            }
        }
    }
    lss_csv_free(&cc);
    lss_csv_free(&fc);
    dl_ctx_free(&x);
}

/* The command line: bad input exits 2 with one line; --help exits 0. */
static int run_cli(const char *const *args) {
    pid_t pid = fork();
    int st = 0, argc = 0;
    char *argv[32];
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
        while (args[argc] && argc < 31) { argv[argc] = (char *)args[argc]; argc++; }
        argv[argc] = NULL;
        _exit(deeplss_main(argc, argv));
    }
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void) {
    char out[400];
    snprintf(out, sizeof out, "%s/cli", tmpdir);
    {
        const char *a[] = {"deeplss", NULL};
        CHECK(run_cli(a) == 2, "no command should exit 2");
    }
    {
        const char *a[] = {"deeplss", "frobnicate", NULL};
        CHECK(run_cli(a) == 2, "unknown command should exit 2");
    }
    {
        const char *a[] = {"deeplss", "--help", NULL};
        CHECK(run_cli(a) == 0, "--help should exit 0");
    }
    {
        const char *a[] = {"deeplss", "train", "--help", NULL};
        CHECK(run_cli(a) == 0, "train --help should exit 0");
    }
    {
        const char *a[] = {"deeplss", "train", "--steps", "ten", "--out", out, NULL};
        CHECK(run_cli(a) == 2, "a non-numeric --steps should exit 2");
    }
    {
        const char *a[] = {"deeplss", "train", "--scale", "huge", "--out", out, NULL};
        CHECK(run_cli(a) == 2, "a bad --scale should exit 2");
    }
    {
        const char *a[] = {"deeplss", "mcmc", "--nets", "rnn", "--out", out, NULL};
        CHECK(run_cli(a) == 2, "an unknown network should exit 2");
    }
    {
        const char *a[] = {"deeplss", "report", "--out", out, NULL};
        CHECK(run_cli(a) == 2, "report without a run should exit 2");
    }
    {
        /* a malformed configuration file */
        char p[600];
        FILE *f;
        lss_drv_mkdirs(out);
        snprintf(p, sizeof p, "%s/deeplss.cfg", out);
        f = fopen(p, "w");
        if (f) { fputs("nside banana\n", f); fclose(f); }
        {
            const char *a[] = {"deeplss", "predict", "--out", out, NULL};
            CHECK(run_cli(a) == 2, "a malformed deeplss.cfg should exit 2");
        }
    }
}

int main(void) {
    double t0 = lss_time_now();
    {
        /* mkdtemp's template: the prefix and six capital X */
        size_t k, n0;
        snprintf(tmpdir, sizeof tmpdir, "/tmp/lss_test_deeplss_");
        n0 = strlen(tmpdir);
        for (k = 0; k < 6; k++) tmpdir[n0 + k] = 'X';
        tmpdir[n0 + 6] = 0;
    }
    if (!mkdtemp(tmpdir)) { printf("cannot create a temporary directory\n"); return 1; }
    RUN(test_cli);
    RUN(test_pipeline);
    RUN(test_calibration_simple);
    printf("# %.1f s\n", lss_time_now() - t0);
    if (getenv("LSS_TEST_KEEP")) printf("# kept %s\n", tmpdir);
    else rm_rf(tmpdir);
    LSS_TEST_END();
}
