/* test_infer_mdn.c - the mixture density network of lss_infer.h on synthetic data whose
 * p(theta_p | theta_t) is a known two-component Gaussian mixture with theta_t-dependent weights,
 * means and covariances: the learned log-density against the true one, the density check of
 * DeepLSS appendix C (delta-mu, delta-sigma), checkpoints, the observation range check, and the
 * MDN as the likelihood of the ensemble sampler. The network is smaller than the paper's
 * (3 x 64 instead of 3 x 256) so that training takes seconds. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#include "lss_infer.h"
#include "lss_test.h"

#include <stdlib.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int asan_mode(void) {
    const char *s = getenv("LSS_TEST_ASAN");
    return s && s[0] == '1';
}

/* The true conditional: weights, means, std devs and correlations of two components. */
typedef struct {
    double w[2], mu[2][2], sd[2][2], rho[2];
} truth_t;

static void truth_at(const double *t, truth_t *q) {
    q->w[0] = 0.3 + 0.4 * t[0];
    q->w[1] = 1 - q->w[0];
    q->mu[0][0] = t[0] + t[1];
    q->mu[0][1] = 2 * t[0] - t[1];
    q->mu[1][0] = q->mu[0][0] + 1.5 * (0.5 + t[1]);
    q->mu[1][1] = q->mu[0][1] - 1.0 * (0.5 + t[1]);
    q->sd[0][0] = 0.15 + 0.2 * t[0];
    q->sd[0][1] = 0.2;
    q->rho[0] = 0.6 * t[1] - 0.3;
    q->sd[1][0] = 0.3;
    q->sd[1][1] = 0.15 + 0.1 * t[1];
    q->rho[1] = -0.4;
}

static double true_logpdf(const double *t, const double *y) {
    truth_t q;
    double l[2], m;
    int k;
    truth_at(t, &q);
    for (k = 0; k < 2; k++) {
        double a = (y[0] - q.mu[k][0]) / q.sd[k][0], b = (y[1] - q.mu[k][1]) / q.sd[k][1], r = q.rho[k];
        double qf = (a * a - 2 * r * a * b + b * b) / (1 - r * r);
        l[k] = log(q.w[k]) - log(2 * 3.14159265358979323846 * q.sd[k][0] * q.sd[k][1] * sqrt(1 - r * r)) - 0.5 * qf;
    }
    m = fmax(l[0], l[1]);
    return m + log(exp(l[0] - m) + exp(l[1] - m));
}

static void true_sample(const double *t, lss_rng *r, double *y) {
    truth_t q;
    int k;
    double a, b;
    truth_at(t, &q);
    k = lss_rng_uniform(r) < q.w[0] ? 0 : 1;
    a = lss_rng_normal(r);
    b = lss_rng_normal(r);
    y[0] = q.mu[k][0] + q.sd[k][0] * a;
    y[1] = q.mu[k][1] + q.sd[k][1] * (q.rho[k] * a + sqrt(1 - q.rho[k] * q.rho[k]) * b);
}

static lss_mdn *g_mdn;
static lss_mdn_opts g_opts;

static int print_epoch(int epoch, double tl, double vl, void *u) {
    (void)u;
    if (epoch % 10 == 0) printf("  epoch %3d: train %.4f, validation %.4f\n", epoch, tl, vl);
    return 0;
}

static void test_mdn_fit(void) {
    int64_t n = asan_mode() ? 4000 : 24000, i;
    double *tt = (double *)malloc(sizeof(double) * (size_t)n * 2), *yy = (double *)malloc(sizeof(double) * (size_t)n * 2);
    lss_rng r;
    double t0 = lss_time_now();
    lss_rng_init(&r, 101, 0);
    for (i = 0; i < n; i++) {
        tt[2 * i] = lss_rng_uniform(&r);
        tt[2 * i + 1] = lss_rng_uniform(&r);
        true_sample(tt + 2 * i, &r, yy + 2 * i);
    }
    tt[0] = NAN; /* a non-finite row is dropped */
    memset(&g_opts, 0, sizeof g_opts);
    g_opts.width = 64;
    g_opts.nhidden = 3;
    g_opts.K = 4;
    g_opts.batch = 256;
    g_opts.lr = 2e-3;
    g_opts.max_epochs = asan_mode() ? 6 : 150;
    g_opts.patience = 15;
    g_opts.plateau_patience = 4;
    g_opts.plateau_factor = 0.5;
    g_opts.seed = 5;
    g_opts.progress = print_epoch;
    CHECK_OK(lss_mdn_create(2, 2, &g_opts, &g_mdn));
    CHECK_OK(lss_mdn_fit(g_mdn, tt, yy, n, &g_opts));
    printf("  trained %d epochs (best %d, validation NLL %.4f) on %lld rows (%lld validation, %lld dropped) in %.1f s\n",
           g_mdn->epochs, g_mdn->best_epoch, g_mdn->best_val, (long long)g_mdn->ntrain, (long long)g_mdn->nval,
           (long long)g_mdn->ndropped, lss_time_now() - t0);
    CHECK(g_mdn->ndropped == 1, "one non-finite row dropped (%lld)", (long long)g_mdn->ndropped);
    CHECK(g_mdn->nval == (int64_t)floor(0.25 * (n - 1) + 0.5), "25%% validation split (%lld)", (long long)g_mdn->nval);
    free(tt);
    free(yy);
}

static void test_mdn_density(void) {
    int64_t n = 4000, i;
    double *tt = (double *)malloc(sizeof(double) * (size_t)n * 2), *yy = (double *)malloc(sizeof(double) * (size_t)n * 2);
    double *lp = (double *)malloc(sizeof(double) * (size_t)n), mad = 0, kl = 0, bound = 0.15;
    lss_rng r;
    if (!g_mdn || !g_mdn->fitted) { CHECK(0, "no trained MDN"); free(tt); free(yy); free(lp); return; }
    lss_rng_init(&r, 202, 0); /* held-out pairs: a new stream */
    for (i = 0; i < n; i++) {
        tt[2 * i] = 0.05 + 0.9 * lss_rng_uniform(&r);
        tt[2 * i + 1] = 0.05 + 0.9 * lss_rng_uniform(&r);
        true_sample(tt + 2 * i, &r, yy + 2 * i);
    }
    /* the test pairs may fall beyond the summary scaler's range: clamp into it (rare, tails) */
    for (i = 0; i < n && g_mdn->sp.kind == LSS_SCALE_QUANTILE; i++) {
        int j;
        for (j = 0; j < 2; j++) yy[2 * i + j] = fmin(fmax(yy[2 * i + j], g_mdn->sp.a[j]), g_mdn->sp.b[j]);
    }
    CHECK_OK(lss_mdn_logpdf(g_mdn, tt, yy, n, 1, lp));
    for (i = 0; i < n; i++) {
        double tl = true_logpdf(tt + 2 * i, yy + 2 * i);
        mad += fabs(lp[i] - tl);
        kl += tl - lp[i];
    }
    mad /= n;
    kl /= n;
    /* A perfect fit gives 0 for both. The bound, 0.15 nats on the mean absolute difference, leaves
     * room for the finite training set (18k pairs): the errors sit in the tails. The KL estimate
     * must be below 0.03 nats. Under ASan the network trains for 6 epochs only (the sanitizer makes
     * full training take minutes): the code paths run, the accuracy checks are skipped there. */
    printf("  mean |log p_MDN - log p_true| = %.4f nats, mean (log p_true - log p_MDN) = %.4f (KL estimate)\n", mad, kl);
    if (asan_mode()) {
        SKIP("MDN accuracy checks under ASan (6 epochs of training)");
    } else {
        CHECK(mad < bound, "learned log-density: mean absolute difference %.4f >= %.2f", mad, bound);
        CHECK(kl > -0.02 && kl < 0.03, "KL estimate %.4f outside (-0.02, 0.03)", kl);
    }
    /* appendix C density check */
    {
        int nv = asan_mode() ? 10 : 40, nrep = 2000, k;
        double *vt = (double *)malloc(sizeof(double) * nv * 2), *vp = (double *)malloc(sizeof(double) * nv * nrep * 2);
        double *dmu = (double *)malloc(sizeof(double) * nv * 2), *dsig = (double *)malloc(sizeof(double) * nv * 2);
        lss_mdn_check_summary s;
        lss_csv c;
        for (i = 0; i < nv; i++) {
            vt[2 * i] = 0.1 + 0.8 * lss_rng_uniform(&r);
            vt[2 * i + 1] = 0.1 + 0.8 * lss_rng_uniform(&r);
            for (k = 0; k < nrep; k++) true_sample(vt + 2 * i, &r, vp + (i * nrep + k) * 2);
        }
        CHECK_OK(lss_mdn_check(g_mdn, vt, nv, vp, nrep, 2000, 9, dmu, dsig));
        CHECK_OK(lss_mdn_check_report(dmu, dsig, nv, 2, "build/test_infer_mdn_check.csv", &s));
        printf("  delta-mu: median %.3f [%.3f, %.3f], median |.| %.3f; delta-sigma: median %.3f [%.3f, %.3f], median |.| %.3f\n",
               s.dmu_median, s.dmu_lo, s.dmu_hi, s.abs_dmu_median, s.dsig_median, s.dsig_lo, s.dsig_hi, s.abs_dsig_median);
        /* sampling noise alone: sqrt(2/2000) = 0.03 for delta-mu, 0.02 for delta-sigma */
        if (!asan_mode()) {
            CHECK(s.abs_dmu_median < 0.1, "median |delta-mu| = %.3f", s.abs_dmu_median);
            CHECK(s.abs_dsig_median < 0.1, "median |delta-sigma| = %.3f", s.abs_dsig_median);
        }
        CHECK_OK(lss_csv_read("build/test_infer_mdn_check.csv", &c));
        CHECK(c.ncols == 4 && c.nrows == nv * 2 && lss_csv_col(&c, "dsig") == 3, "check CSV written");
        lss_csv_free(&c);
        free(vt); free(vp); free(dmu); free(dsig);
    }
    free(tt);
    free(yy);
    free(lp);
}

static void test_mdn_io_and_obs(void) {
    lss_mdn *m2 = NULL;
    double t[4] = {0.3, 0.6, 0.7, 0.2}, y[4] = {0.9, 0.0, 1.1, 1.2}, l1[2], l2[2];
    if (!g_mdn || !g_mdn->fitted) return;
    CHECK_OK(lss_mdn_save(g_mdn, "build/test_infer_mdn.ckpt"));
    CHECK_OK(lss_mdn_create(2, 2, &g_opts, &m2));
    CHECK_OK(lss_mdn_load(m2, "build/test_infer_mdn.ckpt"));
    CHECK_OK(lss_mdn_logpdf(g_mdn, t, y, 2, 0, l1));
    CHECK_OK(lss_mdn_logpdf(m2, t, y, 2, 0, l2));
    CHECK(l1[0] == l2[0] && l1[1] == l2[1], "reloaded MDN gives the same log-density (%.17g vs %.17g)", l1[0], l2[0]);
    CHECK_CLOSE(m2->sp.b[1], g_mdn->sp.b[1], 1e-13, 0, "scaler range survives the checkpoint");
    lss_mdn_free(m2);
    {
        lss_mdn_opts o = g_opts;
        o.width = 32;
        CHECK_OK(lss_mdn_create(2, 2, &o, &m2));
        CHECK(lss_mdn_load(m2, "build/test_infer_mdn.ckpt") != LSS_OK, "a checkpoint of another architecture is refused");
        lss_mdn_free(m2);
    }
    /* the pitfall: an observation outside the summary scaler's range */
    {
        double bad[2] = {0.5, 50.0};
        CHECK_ERR(lss_mdn_set_obs(g_mdn, bad), LSS_ERR_RANGE);
        CHECK(strstr(lss_last_error(), "outside the scaler's fitted range") != NULL, "message: %s", lss_last_error());
        CHECK_ERR(lss_mdn_loglike(t, 1, 2, l1, g_mdn), LSS_ERR_STATE);
    }
}

/* The MDN as the likelihood of the ensemble sampler: observation drawn at theta* = (0.4, 0.6);
 * box prior [0, 1]^2; the posterior must cover theta*. */
static void test_mdn_mcmc(void) {
    double ts[2] = {0.4, 0.6}, obs[2], lo[2] = {0, 0}, hi[2] = {1, 1}, p0[32 * 2], *flat = NULL;
    lss_prior pr;
    lss_emcee *e;
    lss_emcee_opts o;
    lss_param_stats s[2];
    lss_rng r;
    int64_t nf;
    int k;
    if (!g_mdn || !g_mdn->fitted) return;
    lss_rng_init(&r, 303, 0);
    true_sample(ts, &r, obs);
    CHECK_OK(lss_mdn_set_obs(g_mdn, obs));
    CHECK_OK(lss_prior_init(&pr, 2, lo, hi));
    memset(&o, 0, sizeof o);
    o.seed = 17;
    o.prior = &pr;
    for (k = 0; k < 32; k++) {
        p0[2 * k] = 0.5 + 0.05 * lss_rng_normal(&r);
        p0[2 * k + 1] = 0.5 + 0.05 * lss_rng_normal(&r);
    }
    CHECK_OK(lss_emcee_create(32, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, lss_mdn_loglike, g_mdn));
    CHECK_OK(lss_emcee_run(e, asan_mode() ? 200 : 1500, lss_mdn_loglike, g_mdn));
    CHECK_OK(lss_emcee_flat(e, e->nsteps / 3, 1, &flat, &nf));
    if (flat) {
        CHECK_OK(lss_chain_stats(flat, nf, 2, s, NULL));
        printf("  posterior: %.3f +- %.3f, %.3f +- %.3f (truth 0.4, 0.6); acceptance %.2f\n", s[0].mean, s[0].std, s[1].mean,
               s[1].std, lss_emcee_acceptance(e, NULL));
        /* one observation: the truth lies within 4 posterior standard deviations */
        if (!asan_mode()) CHECK(ts[0] >= s[0].mean - 4 * s[0].std && ts[0] <= s[0].mean + 4 * s[0].std, "Omega-like parameter covered");
        if (!asan_mode()) CHECK(ts[1] >= s[1].mean - 4 * s[1].std && ts[1] <= s[1].mean + 4 * s[1].std, "second parameter covered");
    }
    free(flat);
    lss_emcee_free(e);
    lss_prior_free(&pr);
}

static void test_mdn_errors(void) {
    lss_mdn *m = NULL;
    lss_mdn_opts o;
    double t[4] = {0, 0, 1, 1}, y[2] = {0, 1};
    memset(&o, 0, sizeof o);
    CHECK_ERR(lss_mdn_create(0, 2, &o, &m), LSS_ERR_ARG);
    o.K = 300;
    CHECK_ERR(lss_mdn_create(2, 2, &o, &m), LSS_ERR_ARG);
    o.K = 2;
    o.width = 8;
    CHECK_OK(lss_mdn_create(2, 1, &o, &m));
    CHECK_ERR(lss_mdn_fit(m, t, y, 1, &o), LSS_ERR_ARG);
    o.val_frac = 1.5;
    CHECK_ERR(lss_mdn_fit(m, t, y, 2, &o), LSS_ERR_ARG);
    lss_mdn_free(m);
}

/* The same seed gives the same network, bit for bit; another seed another one. */
static void test_mdn_determinism(void) {
    enum { N = 2000 };
    double *tt = (double *)malloc(sizeof(double) * N * 2), *yy = (double *)malloc(sizeof(double) * N * 2), l[3][4];
    double q[8] = {0.2, 0.3, 0.5, 0.5, 0.8, 0.1, 0.4, 0.9}, qy[8];
    lss_mdn_opts o;
    lss_rng r;
    int i, rep;
    lss_rng_init(&r, 404, 0);
    for (i = 0; i < N; i++) {
        tt[2 * i] = lss_rng_uniform(&r);
        tt[2 * i + 1] = lss_rng_uniform(&r);
        true_sample(tt + 2 * i, &r, yy + 2 * i);
    }
    for (i = 0; i < 4; i++) true_sample(q + 2 * i, &r, qy + 2 * i);
    memset(&o, 0, sizeof o);
    o.width = 16;
    o.K = 2;
    o.batch = 128;
    o.max_epochs = 3;
    for (rep = 0; rep < 3; rep++) {
        lss_mdn *m = NULL;
        o.seed = rep < 2 ? 1 : 2;
        CHECK_OK(lss_mdn_create(2, 2, &o, &m));
        CHECK_OK(lss_mdn_fit(m, tt, yy, N, &o));
        for (i = 0; i < 4; i++) qy[2 * i] = fmin(fmax(qy[2 * i], m->sp.a[0]), m->sp.b[0]), qy[2 * i + 1] = fmin(fmax(qy[2 * i + 1], m->sp.a[1]), m->sp.b[1]);
        CHECK_OK(lss_mdn_logpdf(m, q, qy, 4, 0, l[rep]));
        lss_mdn_free(m);
    }
    CHECK(memcmp(l[0], l[1], sizeof l[0]) == 0, "same seed, same MDN (%.17g vs %.17g)", l[0][0], l[1][0]);
    CHECK(memcmp(l[0], l[2], sizeof l[0]) != 0, "another seed, another MDN");
    free(tt);
    free(yy);
}

int main(void) {
#ifdef _OPENMP
    /* the test network is tiny (3 x 64): on this 2-core machine, under load, OpenMP synchronisation
     * costs more than it gains, so the test trains on one thread */
    omp_set_num_threads(1);
#endif
    mkdir("build", 0755);
    RUN(test_mdn_errors);
    RUN(test_mdn_determinism);
    RUN(test_mdn_fit);
    RUN(test_mdn_density);
    RUN(test_mdn_io_and_obs);
    RUN(test_mdn_mcmc);
    lss_mdn_free(g_mdn);
    LSS_TEST_END();
}
