/* test_fisher.c - tests of the Fisher forecasts from simulations in lss_infer.h (lss_fisher_*).
 *
 * A linear Gaussian model, summary s = s0 + M theta + noise with noise ~ N(0, C0) (C0 known and not diagonal),
 * has the exact Fisher matrix F = M^T C0^-1 M. Statistical checks compare with it within k standard errors,
 * the errors derived from the model or taken from repeated independent runs; seeds are fixed, so every run
 * gives the same numbers. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#include "lss_infer.h"
#include "lss_test.h"

#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DMAX 24
#define PMAX 3

/* ---------------------------------------------------------------- the linear Gaussian model */
typedef struct {
    int d, p;
    double C0[DMAX * DMAX], L0[DMAX * DMAX], M[DMAX * PMAX], s0[DMAX];
    double F[PMAX * PMAX];      /* exact M^T C0^-1 M */
    double cov[PMAX * PMAX];    /* F^-1 */
} model_t;

static void chol(const double *A, int n, double *L) {
    int i, j, k;
    memset(L, 0, sizeof(double) * (size_t)n * n);
    for (i = 0; i < n; i++)
        for (j = 0; j <= i; j++) {
            double s = A[i * n + j];
            for (k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
            L[i * n + j] = i == j ? sqrt(s) : s / L[j * n + j];
        }
}

/* inverse of a small SPD matrix */
static void spd_inv(const double *A, int n, double *inv) {
    double L[DMAX * DMAX], Y[DMAX * DMAX];
    int i, j, k;
    chol(A, n, L);
    for (j = 0; j < n; j++)
        for (i = 0; i < n; i++) {
            double s = i == j ? 1.0 : 0.0;
            for (k = 0; k < i; k++) s -= L[i * n + k] * Y[k * n + j];
            Y[i * n + j] = s / L[i * n + i];
        }
    for (j = 0; j < n; j++)
        for (i = n - 1; i >= 0; i--) {
            double s = Y[i * n + j];
            for (k = i + 1; k < n; k++) s -= L[k * n + i] * inv[k * n + j];
            inv[i * n + j] = s / L[i * n + i];
        }
}

/* C0_jk = s_j s_k 0.6^|j - k| with s_j in [0.5, 1.5]; M random (seed 1) with columns scaled to F_aa = fdiag
   (fdiag <= 0: unscaled), times mscale. The mean s0 = 100 + j tests the centring. */
static void make_model(model_t *m, int d, int p, double fdiag, double mscale) {
    double Ci[DMAX * DMAX];
    lss_rng r;
    int j, k, a, b;
    memset(m, 0, sizeof *m);
    m->d = d; m->p = p;
    for (j = 0; j < d; j++) {
        double sj = 1.0 + 0.5 * sin(1.7 * j);
        m->s0[j] = 100.0 + j;
        for (k = 0; k < d; k++) m->C0[j * d + k] = sj * (1.0 + 0.5 * sin(1.7 * k)) * pow(0.6, abs(j - k));
    }
    chol(m->C0, d, m->L0);
    lss_rng_init(&r, 1, 0);
    for (j = 0; j < d * p; j++) m->M[j] = lss_rng_normal(&r);
    spd_inv(m->C0, d, Ci);
    for (a = 0; a < p; a++) {
        double f = 0, sc;
        for (j = 0; j < d; j++)
            for (k = 0; k < d; k++) f += m->M[j * p + a] * Ci[j * d + k] * m->M[k * p + a];
        sc = (fdiag > 0 ? sqrt(fdiag / f) : 1.0) * mscale;
        for (j = 0; j < d; j++) m->M[j * p + a] *= sc;
    }
    for (a = 0; a < p; a++)
        for (b = 0; b < p; b++) {
            double f = 0;
            for (j = 0; j < d; j++)
                for (k = 0; k < d; k++) f += m->M[j * p + a] * Ci[j * d + k] * m->M[k * p + b];
            m->F[a * p + b] = f;
        }
    if (mscale > 0) spd_inv(m->F, p, m->cov);
}

/* one noise vector n = L0 g */
static void noise(const model_t *m, lss_rng *r, double *n) {
    double g[DMAX];
    int j, k;
    for (j = 0; j < m->d; j++) g[j] = lss_rng_normal(r);
    for (j = 0; j < m->d; j++) {
        double s = 0;
        for (k = 0; k <= j; k++) s += m->L0[j * m->d + k] * g[k];
        n[j] = s;
    }
}

/* Simulation sets of one run (stream `run`): fid [nfid][d]; plus, minus [p][nder][d] at +-h e_a; common != 0:
   realisation i of plus and minus share their noise. */
static void simulate(const model_t *m, uint64_t run, int64_t nfid, int64_t nder, double h, int common, double *fid,
                     double *plus, double *minus) {
    const int d = m->d, p = m->p;
    double n1[DMAX], n2[DMAX];
    lss_rng r;
    int64_t i;
    int a, j;
    lss_rng_init(&r, 2024, run);
    for (i = 0; i < nfid; i++) {
        noise(m, &r, n1);
        for (j = 0; j < d; j++) fid[i * d + j] = m->s0[j] + n1[j];
    }
    for (a = 0; a < p; a++)
        for (i = 0; i < nder; i++) {
            double *xp = plus + ((size_t)a * nder + i) * d, *xm = minus + ((size_t)a * nder + i) * d;
            noise(m, &r, n1);
            if (common) memcpy(n2, n1, sizeof n1);
            else noise(m, &r, n2);
            for (j = 0; j < d; j++) {
                xp[j] = m->s0[j] + h * m->M[j * p + a] + n1[j];
                xm[j] = m->s0[j] - h * m->M[j * p + a] + n2[j];
            }
        }
}

/* the first dk summaries of a set [n][d] */
static void columns(const double *x, int64_t n, int d, int dk, double *y) {
    int64_t i;
    for (i = 0; i < n; i++) memcpy(y + i * dk, x + i * d, sizeof(double) * (size_t)dk);
}

static void mean_sd(const double *x, int n, double *mean, double *sd) {
    double s = 0, v = 0;
    int i;
    for (i = 0; i < n; i++) s += x[i];
    s /= n;
    for (i = 0; i < n; i++) v += (x[i] - s) * (x[i] - s);
    *mean = s;
    *sd = sqrt(v / (n - 1));
}

/* ---------------------------------------------------------------- 1. common random numbers: covariance noise */
/* Derivatives are exact (common noise), so F scatters only through the estimated inverse covariance:
   Var(F_ab) ~ (F_ab^2 + F_aa F_bb) / (nfid - d - 4) for the Hartlap-corrected Wishart inverse. 30 independent
   runs measure the scatter of sigma, FoM and the paired ratios against the jackknife errors. */
static void test_linear_common(void) {
    enum { D = 12, P = 3, NFID = 4000, NDER = 100, RUNS = 30, DK = 6 };
    const double h = 0.05;
    model_t m;
    double *fid = malloc(sizeof(double) * NFID * D), *plus = malloc(sizeof(double) * P * NDER * D);
    double *minus = malloc(sizeof(double) * P * NDER * D), *fk = malloc(sizeof(double) * NFID * DK);
    double *pk = malloc(sizeof(double) * P * NDER * DK), *mk = malloc(sizeof(double) * P * NDER * DK);
    double Fs[RUNS][P * P], sig[RUNS][P], sige[RUNS][P], fom[RUNS], fome[RUNS], rs[RUNS], rse[RUNS], rf[RUNS], rfe[RUNS];
    double step[P] = {h, h, h};
    int run, a, b, j;
    make_model(&m, D, P, 0, 1.0);
    for (run = 0; run < RUNS; run++) {
        lss_fisher f, g;
        simulate(&m, (uint64_t)run, NFID, NDER, h, 1, fid, plus, minus);
        CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 20, &f));
        columns(fid, NFID, D, DK, fk);
        columns(plus, P * NDER, D, DK, pk);
        columns(minus, P * NDER, D, DK, mk);
        CHECK_OK(lss_fisher_from_sims(fk, NFID, pk, mk, NDER, P, DK, step, NULL, 20, &g));
        if (!f.F || !g.F) return;
        memcpy(Fs[run], f.F, sizeof Fs[run]);
        for (a = 0; a < P; a++) { sig[run][a] = f.sigma[a]; sige[run][a] = f.sigma_err[a]; }
        fom[run] = lss_fisher_fom(&f, 0, 1, &fome[run]);
        rs[run] = lss_fisher_sigma_ratio(&f, &g, 0, &rse[run]);
        rf[run] = lss_fisher_fom_ratio(&f, &g, 0, 1, &rfe[run]);
        if (run == 0) {
            double corr = 0, dm = 0;
            CHECK(f.p == P && f.d == D && f.nfid == NFID && f.nder == NDER && f.nblock == 20,
                  "sizes %d %d %lld %lld %d", f.p, f.d, (long long)f.nfid, (long long)f.nder, f.nblock);
            CHECK_REL(f.hartlap, (NFID - D - 2.0) / (NFID - 1.0), 1e-15, "Hartlap factor");
            for (a = 0; a < P; a++)
                for (j = 0; j < D; j++) dm = fmax(dm, fabs(f.dmu[a * D + j] - m.M[j * P + a]));
            CHECK(dm < 1e-9, "common random numbers: dmu = M to %.3g", dm);
            for (a = 0; a < P * P; a++) corr = fmax(corr, fabs(f.F[a] - f.F_raw[a]) / m.F[0]);
            CHECK(corr < 1e-10, "no derivative noise: F = F_raw to %.3g", corr);
            for (a = 0; a < P; a++)
                for (b = 0; b < P; b++) {
                    double sd = sqrt((m.F[a * P + b] * m.F[a * P + b] + m.F[a * P + a] * m.F[b * P + b]) / (NFID - D - 4.0));
                    CHECK(fabs(f.F[a * P + b] - m.F[a * P + b]) < 5 * sd, "run 0: F_%d%d = %.5g, exact %.5g, 5 sigma %.3g", a, b,
                          f.F[a * P + b], m.F[a * P + b], 5 * sd);
                }
            printf("  run 0: F_00 %.5g (exact %.5g), sigma %.4g %.4g %.4g (exact %.4g %.4g %.4g), err %.3g %.3g %.3g\n",
                   f.F[0], m.F[0], f.sigma[0], f.sigma[1], f.sigma[2], sqrt(m.cov[0]), sqrt(m.cov[4]), sqrt(m.cov[8]),
                   f.sigma_err[0], f.sigma_err[1], f.sigma_err[2]);
        }
        lss_fisher_free(&f);
        lss_fisher_free(&g);
    }
    /* F: unbiased (Hartlap) and with the predicted scatter */
    for (a = 0; a < P; a++)
        for (b = a; b < P; b++) {
            double x[RUNS], mean, sd, pred = sqrt((m.F[a * P + b] * m.F[a * P + b] + m.F[a * P + a] * m.F[b * P + b]) /
                                                   (NFID - D - 4.0));
            for (run = 0; run < RUNS; run++) x[run] = Fs[run][a * P + b];
            mean_sd(x, RUNS, &mean, &sd);
            CHECK(fabs(mean - m.F[a * P + b]) < 4 * sd / sqrt(RUNS), "mean F_%d%d over %d runs %.6g, exact %.6g, 4 SE %.3g", a, b,
                  RUNS, mean, m.F[a * P + b], 4 * sd / sqrt(RUNS));
            CHECK(sd > pred / 1.5 && sd < pred * 1.5, "scatter of F_%d%d %.4g, predicted %.4g", a, b, sd, pred);
            if (a == b)
                printf("  F_%d%d: mean %.5g exact %.5g, scatter %.4g predicted %.4g\n", a, a, mean, m.F[a * P + a], sd, pred);
        }
    /* jackknife errors against the scatter over independent runs */
    for (a = 0; a < P; a++) {
        double x[RUNS], e[RUNS], mean, sd, me, sde;
        for (run = 0; run < RUNS; run++) { x[run] = sig[run][a]; e[run] = sige[run][a]; }
        mean_sd(x, RUNS, &mean, &sd);
        mean_sd(e, RUNS, &me, &sde);
        CHECK(fabs(mean - sqrt(m.cov[a * P + a])) < 4 * sd / sqrt(RUNS), "mean sigma_%d %.6g, exact %.6g", a, mean,
              sqrt(m.cov[a * P + a]));
        CHECK(me > sd / 2 && me < 2 * sd, "sigma_%d: jackknife error %.4g, scatter over runs %.4g", a, me, sd);
        printf("  sigma_%d: mean %.5g (exact %.5g), scatter %.4g, mean jackknife error %.4g\n", a, mean,
               sqrt(m.cov[a * P + a]), sd, me);
    }
    {
        double mean, sd, me, sde;
        mean_sd(fom, RUNS, &mean, &sd);
        mean_sd(fome, RUNS, &me, &sde);
        CHECK(me > sd / 2 && me < 2 * sd, "FoM(0,1): jackknife error %.4g, scatter %.4g", me, sd);
        printf("  FoM(0,1): mean %.5g (exact %.5g), scatter %.4g, jackknife %.4g\n", mean,
               1 / sqrt(m.cov[0] * m.cov[4] - m.cov[1] * m.cov[1]), sd, me);
        mean_sd(rs, RUNS, &mean, &sd);
        mean_sd(rse, RUNS, &me, &sde);
        CHECK(me > sd / 2 && me < 2 * sd, "paired sigma ratio: jackknife error %.4g, scatter %.4g", me, sd);
        CHECK(mean < 1, "12 summaries constrain better than their first 6 (sigma ratio %.4g)", mean);
        printf("  sigma_0(12 summaries) / sigma_0(6): mean %.4g, scatter %.3g, jackknife %.3g\n", mean, sd, me);
        mean_sd(rf, RUNS, &mean, &sd);
        mean_sd(rfe, RUNS, &me, &sde);
        CHECK(me > sd / 2 && me < 2 * sd, "paired FoM ratio: jackknife error %.4g, scatter %.4g", me, sd);
        printf("  FoM(12) / FoM(6): mean %.4g, scatter %.3g, jackknife %.3g\n", mean, sd, me);
    }
    free(fid); free(plus); free(minus); free(fk); free(pk); free(mk);
}

/* Few fiducial simulations (nfid = 40, d = 12): the plain inverse of the sample covariance would overestimate F
   by (nfid - 1) / (nfid - d - 2) = 1.5; with the Hartlap factor the mean over 300 runs matches F. */
static void test_hartlap(void) {
    enum { D = 12, P = 3, NFID = 40, NDER = 10, REPS = 300 };
    const double h = 0.05;
    model_t m;
    double fid[NFID * D], plus[P * NDER * D], minus[P * NDER * D], x[REPS], step[P] = {h, h, h}, mean, sd;
    int rep, a;
    make_model(&m, D, P, 0, 1.0);
    for (a = 0; a < P; a++) {
        for (rep = 0; rep < REPS; rep++) {
            lss_fisher f;
            x[rep] = NAN;
            simulate(&m, 5000 + (uint64_t)rep, NFID, NDER, h, 1, fid, plus, minus);
            if (lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 5, &f) == LSS_OK) x[rep] = f.F[a * P + a];
            lss_fisher_free(&f);
        }
        mean_sd(x, REPS, &mean, &sd);
        CHECK(fabs(mean - m.F[a * P + a]) < 4 * sd / sqrt(REPS), "nfid = %d: mean F_%d%d %.5g, exact %.5g, 4 SE %.3g", NFID, a, a,
              mean, m.F[a * P + a], 4 * sd / sqrt(REPS));
        printf("  nfid = %d, d = %d: mean F_%d%d %.4g, exact %.4g (%+.2f SE; without Hartlap %.4g)\n", NFID, D, a, a, mean,
               m.F[a * P + a], (mean - m.F[a * P + a]) / (sd / sqrt(REPS)), mean * (NFID - 1.0) / (NFID - D - 2.0));
    }
}

/* A problem large enough for threads (d = 64, nfid = 3000): the same bits on 1 and on 4 threads. */
static void test_threads(void) {
#ifdef _OPENMP
    enum { D = 64, P = 3, NFID = 3000, NDER = 60 };
    double *fid = malloc(sizeof(double) * NFID * D), *plus = malloc(sizeof(double) * P * NDER * D);
    double *minus = malloc(sizeof(double) * P * NDER * D), step[P] = {0.1, 0.2, 0.3};
    lss_fisher f1, f4;
    lss_rng r;
    int64_t i;
    int nt = omp_get_max_threads(), same;
    lss_rng_init(&r, 31, 0);
    for (i = 0; i < NFID * D; i++) fid[i] = 5 + lss_rng_normal(&r) + (i % D ? 0.5 * fid[i - 1] : 0);
    for (i = 0; i < P * NDER * D; i++) {
        double n = lss_rng_normal(&r);
        plus[i] = n + 0.1 * cos((double)(i % D) * (1 + (double)(i / (NDER * D))));
        minus[i] = n + 0.3 * lss_rng_normal(&r);
    }
    omp_set_num_threads(1);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f1));
    omp_set_num_threads(4);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f4));
    omp_set_num_threads(nt);
    same = f1.F && f4.F && !memcmp(f1.F, f4.F, sizeof(double) * P * P) && !memcmp(f1.F_raw, f4.F_raw, sizeof(double) * P * P) &&
           !memcmp(f1.cov, f4.cov, sizeof(double) * P * P) && !memcmp(f1.jcov, f4.jcov, sizeof(double) * 20 * P * P) &&
           !memcmp(f1.sigma_err, f4.sigma_err, sizeof(double) * P) && !memcmp(f1.dmu, f4.dmu, sizeof(double) * P * D);
    CHECK(same, "results do not depend on the thread count (1 vs 4)");
    CHECK(f1.F && f1.F[0] < f1.F_raw[0], "noisy derivatives: the correction lowers F_00 (%g < %g)", f1.F ? f1.F[0] : NAN,
          f1.F ? f1.F_raw[0] : NAN);
    lss_fisher_free(&f1); lss_fisher_free(&f4);
    free(fid); free(plus); free(minus);
#else
    SKIP("built without OpenMP");
#endif
}

/* ---------------------------------------------------------------- 2. noisy derivatives */
/* Independent noise in plus and minus: delta_a,i = M_a + (n1 - n2) / (2h), Sigma_aa = C0 / (2 h^2), Sigma_ab = 0
   (a != b), so E[F_raw_aa] = F_aa + tr(C0^-1 C0) / (2 h^2 nder) = F_aa + d / (2 h^2 nder), off-diagonals unbiased. */
static void test_noisy_derivatives(void) {
    enum { D = 24, P = 3, NFID = 1000, NDER = 50, REPS = 100 };
    const double h = 0.1, bias = D / (2 * h * h * NDER);
    model_t m;
    double *fid = malloc(sizeof(double) * NFID * D), *plus = malloc(sizeof(double) * P * NDER * D);
    double *minus = malloc(sizeof(double) * P * NDER * D);
    static double F[REPS][P * P], Fr[REPS][P * P];
    double step[P] = {h, h, h};
    int rep, a, b, ok = 1;
    make_model(&m, D, P, 100.0, 1.0);
    for (rep = 0; rep < REPS; rep++) {
        lss_fisher f;
        simulate(&m, 1000 + (uint64_t)rep, NFID, NDER, h, 0, fid, plus, minus);
        if (lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f)) {
            ok = 0;
            printf("  rep %d: %s\n", rep, lss_last_error());
            continue;
        }
        memcpy(F[rep], f.F, sizeof F[rep]);
        memcpy(Fr[rep], f.F_raw, sizeof Fr[rep]);
        lss_fisher_free(&f);
    }
    CHECK(ok, "every repetition gives a positive-definite corrected F");
    for (a = 0; a < P; a++)
        for (b = a; b < P; b++) {
            double x[REPS], y[REPS], mf, sf, mr, sr, se, ser, ex = m.F[a * P + b], eb = a == b ? bias : 0.0;
            for (rep = 0; rep < REPS; rep++) { x[rep] = F[rep][a * P + b]; y[rep] = Fr[rep][a * P + b]; }
            mean_sd(x, REPS, &mf, &sf);
            mean_sd(y, REPS, &mr, &sr);
            se = sf / sqrt(REPS); ser = sr / sqrt(REPS);
            CHECK(fabs(mf - ex) < 4 * se, "corrected F_%d%d: mean %.5g, exact %.5g, 4 SE %.3g", a, b, mf, ex, 4 * se);
            CHECK(fabs(mr - ex - eb) < 4 * ser, "F_raw_%d%d: mean %.5g, exact + analytic bias %.5g, 4 SE %.3g", a, b, mr, ex + eb,
                  4 * ser);
            if (a == b) {
                CHECK((mr - ex) / ser > 8, "F_raw_%d%d is %.1f SE off (want > 8)", a, a, (mr - ex) / ser);
                printf("  F_%d%d exact %.4g: corrected mean %.4g (%+.2f SE), raw mean %.4g (%+.1f SE; analytic bias %.4g)\n",
                       a, a, ex, mf, (mf - ex) / se, mr, (mr - ex) / ser, bias);
            }
        }
    /* pure noise (M = 0, nder = 5): the correction leaves F indefinite */
    {
        model_t z;
        lss_fisher f;
        int s;
        make_model(&z, D, P, 0, 0.0);
        simulate(&z, 7, NFID, 5, h, 0, fid, plus, minus);
        lss_clearerr();
        s = lss_fisher_from_sims(fid, NFID, plus, minus, 5, P, D, step, NULL, 5, &f);
        CHECK(s == LSS_ERR_NUMERIC && strstr(lss_last_error(), "more derivative simulations needed") && !f.F,
              "pure derivative noise: %d '%s'", s, lss_last_error());
    }
    free(fid); free(plus); free(minus);
}

/* ---------------------------------------------------------------- 3. prior, 4. FoM and ratios */
static void test_prior_fom(void) {
    enum { D = 12, P = 3, NFID = 400, NDER = 40 };
    const double h = 0.05, ps[P] = {0.3, 2.0, 0.05};
    model_t m;
    double *fid = malloc(sizeof(double) * NFID * D), *plus = malloc(sizeof(double) * P * NDER * D);
    double *minus = malloc(sizeof(double) * P * NDER * D);
    double step[P] = {h, h, h}, err, ratio, x[20], mx = 0, fom;
    double pr_none[P] = {0.3, 0, INFINITY};
    lss_fisher f, g, n;
    int a, b, k, s;
    /* M = 0: F = 0 and cov = diag(prior^2) exactly; tiny M: to first order in F prior^2 */
    make_model(&m, D, P, 0, 0.0);
    simulate(&m, 50, NFID, NDER, h, 1, fid, plus, minus);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, ps, 0, &f));
    for (a = 0; a < P && f.cov; a++)
        for (b = 0; b < P; b++) mx = fmax(mx, fabs(f.cov[a * P + b] - (a == b ? ps[a] * ps[a] : 0)) / (ps[a] * ps[b]));
    CHECK(f.cov && mx < 1e-14 && f.F[0] == 0, "M = 0: cov = diag(prior^2) to %.3g", mx);
    CHECK(f.sigma && f.sigma_err[1] < 1e-12, "M = 0: sigma = prior width without scatter (err %g)",
          f.sigma ? f.sigma_err[1] : NAN);
    lss_fisher_free(&f);
    s = lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, pr_none, 0, &f);
    CHECK(s == LSS_ERR_NUMERIC && strstr(lss_last_error(), "positive definite"), "M = 0, no prior on 2 parameters: %d '%s'", s,
          lss_last_error());
    make_model(&m, D, P, 0, 1e-5);
    simulate(&m, 50, NFID, NDER, h, 1, fid, plus, minus);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, ps, 0, &f));
    mx = 0;
    for (a = 0; a < P && f.cov; a++)
        for (b = 0; b < P; b++) mx = fmax(mx, fabs(f.cov[a * P + b] - (a == b ? ps[a] * ps[a] : 0)) / (ps[a] * ps[b]));
    CHECK(f.cov && mx < 1e-6, "M -> 0: cov -> diag(prior^2) (%.3g)", mx);
    lss_fisher_free(&f);
    /* a generic M with a prior: cov (F + P) = I */
    make_model(&m, D, P, 0, 1.0);
    simulate(&m, 51, NFID, NDER, h, 1, fid, plus, minus);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, ps, 0, &f));
    if (!f.cov) return;
    mx = 0;
    for (a = 0; a < P; a++)
        for (b = 0; b < P; b++) {
            double v = 0;
            for (k = 0; k < P; k++) v += f.cov[a * P + k] * (f.F[k * P + b] + (k == b ? 1 / (ps[k] * ps[k]) : 0));
            mx = fmax(mx, fabs(v - (a == b)));
        }
    CHECK(mx < 1e-10, "cov (F + prior) = I to %.3g", mx);
    CHECK(f.nblock == 20, "default 20 blocks (%d)", f.nblock);
    /* FoM against the hand 2x2 determinant, its error against the jackknife formula on jcov */
    fom = lss_fisher_fom(&f, 0, 2, &err);
    CHECK_REL(fom, 1 / sqrt(f.cov[0] * f.cov[8] - f.cov[2] * f.cov[6]), 1e-14, "FoM(0, 2) against the 2x2 determinant");
    CHECK_REL(lss_fisher_fom(&f, 2, 0, NULL), fom, 1e-14, "FoM symmetric in (i, j)");
    {
        double mean = 0, v = 0;
        for (k = 0; k < 20; k++) {
            const double *c = f.jcov + k * P * P;
            x[k] = 1 / sqrt(c[0] * c[8] - c[2] * c[6]);
            mean += x[k] / 20;
        }
        for (k = 0; k < 20; k++) v += (x[k] - mean) * (x[k] - mean);
        CHECK_REL(err, sqrt(19.0 / 20 * v), 1e-12, "FoM jackknife error from the replicates");
        CHECK(err > 0 && err < fom, "FoM %.4g +- %.3g", fom, err);
    }
    CHECK(isnan(lss_fisher_fom(&f, 1, 1, &err)) && isnan(err), "FoM(1, 1): NaN");
    CHECK(isnan(lss_fisher_fom(&f, 0, 3, NULL)) && isnan(lss_fisher_fom(NULL, 0, 1, NULL)), "FoM: bad parameters give NaN");
    /* ratios: with itself 1 +- 0; mismatched simulation sets or block counts: NaN */
    ratio = lss_fisher_fom_ratio(&f, &f, 0, 1, &err);
    CHECK(ratio == 1 && err < 1e-12, "FoM ratio with itself %.17g +- %g", ratio, err);
    ratio = lss_fisher_sigma_ratio(&f, &f, 2, &err);
    CHECK(ratio == 1 && err < 1e-12, "sigma ratio with itself %.17g +- %g", ratio, err);
    CHECK_OK(lss_fisher_from_sims(fid, NFID - 1, plus, minus, NDER, P, D, step, ps, 0, &g));
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, ps, 10, &n));
    ratio = lss_fisher_fom_ratio(&f, &g, 0, 1, &err);
    CHECK(isnan(ratio) && isnan(err), "FoM ratio, different nfid: NaN (%g +- %g)", ratio, err);
    ratio = lss_fisher_sigma_ratio(&f, &n, 0, &err);
    CHECK(isnan(ratio) && isnan(err), "sigma ratio, different nblock: NaN (%g +- %g)", ratio, err);
    ratio = lss_fisher_sigma_ratio(&f, &f, 3, &err);
    CHECK(isnan(ratio) && isnan(err), "sigma ratio, parameter out of range: NaN");
    CHECK(isnan(lss_fisher_fom_ratio(NULL, &f, 0, 1, NULL)), "ratio with NULL: NaN");
    lss_fisher_free(&f); lss_fisher_free(&g); lss_fisher_free(&n);
    lss_fisher_free(&n);   /* freeing twice is harmless */
    free(fid); free(plus); free(minus);
}

/* ---------------------------------------------------------------- 5. errors */
static void test_errors(void) {
    enum { D = 12, P = 3, NFID = 200, NDER = 20 };
    const double h = 0.05;
    model_t m;
    double *fid = malloc(sizeof(double) * NFID * D), *plus = malloc(sizeof(double) * P * NDER * D);
    double *minus = malloc(sizeof(double) * P * NDER * D), *sv = malloc(sizeof(double) * NFID * D);
    double step[P] = {h, h, h}, bad[P] = {h, 0, h}, nan[P] = {h, h, NAN};
    lss_fisher f;
    const char *msg;
    int64_t i;
    make_model(&m, D, P, 0, 1.0);
    simulate(&m, 60, NFID, NDER, h, 1, fid, plus, minus);
    memcpy(sv, fid, sizeof(double) * NFID * D);
    CHECK_OK(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f));
    lss_fisher_free(&f);
    CHECK_ERR(lss_fisher_from_sims(fid, D + 2, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "d + 2") != NULL, "message says how many: '%s'", lss_last_error());
    CHECK(f.F == NULL && f.p == 0, "out zeroed on failure");
    CHECK_ERR(lss_fisher_from_sims(fid, D + 3, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "jackknife") != NULL, "jackknife sets too small: '%s'", lss_last_error());
    CHECK_ERR(lss_fisher_from_sims(fid, D + 5, plus, minus, NDER, P, D, step, NULL, 4, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(NULL, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, NULL, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, NULL, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, NULL, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, NULL), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, 0, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, 0, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, bad, NULL, 0, &f), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "step") && strstr(lss_last_error(), "1"), "step 0 named: '%s'", lss_last_error());
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, nan, NULL, 0, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 1, &f), LSS_ERR_ARG);
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, NDER + 1, &f), LSS_ERR_ARG);
    /* non-finite summaries, named by set and row */
    fid[7 * D + 3] = NAN;
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), " 7,") && strstr(lss_last_error(), "summary 3"), "NaN named: '%s'", lss_last_error());
    fid[7 * D + 3] = sv[7 * D + 3];
    plus[(1 * NDER + 4) * D + 2] = INFINITY;
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    msg = lss_last_error();
    CHECK(strstr(msg, "4 of parameter 1") && strstr(msg, "plus") && strstr(msg, "summary 2"), "inf named: '%s'", msg);
    plus[(1 * NDER + 4) * D + 2] = 0;
    minus[(2 * NDER + 19) * D + 0] = -INFINITY;
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_ARG);
    msg = lss_last_error();
    CHECK(strstr(msg, "19 of parameter 2") && strstr(msg, "minus"), "-inf named: '%s'", msg);
    simulate(&m, 60, NFID, NDER, h, 1, fid, plus, minus);
    /* singular covariance: summary 5 repeats summary 2; summary 4 constant */
    for (i = 0; i < NFID; i++) fid[i * D + 5] = fid[i * D + 2];
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_NUMERIC);
    CHECK(strstr(lss_last_error(), "positive definite") && strstr(lss_last_error(), "12"), "singular: '%s'", lss_last_error());
    memcpy(fid, sv, sizeof(double) * NFID * D);
    for (i = 0; i < NFID; i++) fid[i * D + 4] = 1.5;
    CHECK_ERR(lss_fisher_from_sims(fid, NFID, plus, minus, NDER, P, D, step, NULL, 0, &f), LSS_ERR_NUMERIC);
    CHECK((strstr(lss_last_error(), "positive definite") || strstr(lss_last_error(), "zero variance")) &&
          strstr(lss_last_error(), "12"), "constant: '%s'", lss_last_error());
    CHECK(f.F == NULL, "out zeroed on failure");
    free(fid); free(plus); free(minus); free(sv);
}

/* A table of summaries (rows fiducial, +step blocks, -step blocks; extra columns) read by lss_fisher_from_table equals
   lss_fisher_from_sims on the chosen columns gathered by hand, in the order asked. */
static void test_table(void) {
    enum { D = 8, P = 3, LD = 11 };
    const int64_t NF = 400, ND = 40, N = NF + 2 * P * ND;
    const int cols[5] = {7, 2, 0, 5, 3};
    const double step[P] = {0.1, 0.1, 0.1};
    model_t m;
    double *x = malloc(sizeof(double) * N * D), *t = malloc(sizeof(double) * N * LD), *g = malloc(sizeof(double) * N * 5);
    lss_fisher a, b;
    int64_t r;
    int k, same = 1;
    make_model(&m, D, P, 0, 1.0);
    simulate(&m, 77, NF, ND, 0.1, 1, x, x + NF * D, x + (NF + P * ND) * D);
    for (r = 0; r < N; r++) {
        for (k = 0; k < LD; k++) t[r * LD + k] = k < D ? x[r * D + k] : 1e6 * (double)(r % 7);   /* junk beyond D */
        for (k = 0; k < 5; k++) g[r * 5 + k] = x[r * D + cols[k]];
    }
    CHECK_OK(lss_fisher_from_table(t, LD, cols, 5, NF, ND, P, step, NULL, 0, &a));
    CHECK_OK(lss_fisher_from_sims(g, NF, g + NF * 5, g + (NF + P * ND) * 5, ND, P, 5, step, NULL, 0, &b));
    for (k = 0; a.F && b.F && k < P * P; k++) same &= a.F[k] == b.F[k] && a.cov[k] == b.cov[k];
    CHECK(a.F && b.F && same, "table columns 7, 2, 0, 5, 3 = the same summaries gathered by hand, bit for bit");
    lss_fisher_free(&a); lss_fisher_free(&b);
    {
        const int bad[2] = {1, LD};
        CHECK_ERR(lss_fisher_from_table(t, LD, bad, 2, NF, ND, P, step, NULL, 0, &a), LSS_ERR_ARG);
        CHECK_ERR(lss_fisher_from_table(NULL, LD, cols, 5, NF, ND, P, step, NULL, 0, &a), LSS_ERR_ARG);
    }
    free(x); free(t); free(g);
}

int main(void) {
    double t0 = lss_time_now();
    RUN(test_linear_common);
    RUN(test_hartlap);
    RUN(test_threads);
    RUN(test_noisy_derivatives);
    RUN(test_prior_fom);
    RUN(test_errors);
    RUN(test_table);
    printf("# %.2f s\n", lss_time_now() - t0);
    LSS_TEST_END();
}
