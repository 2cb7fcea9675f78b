/* test_infer.c - tests of lss_infer.h: normal quantile, scalers, hull, SVD, ensemble sampler,
 * autocorrelation, HMC, summaries, figure of merit, corner plots. (The mixture density network is
 * tested in test_infer_mdn.c.)
 *
 * Statistical checks compare with analytic values within k Monte Carlo standard errors, the error
 * taken from the sample variance and the integrated autocorrelation time of the quantity itself;
 * seeds are fixed, so every run gives the same numbers. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_infer.h"
#include "lss_maps.h"
#include "lss_test.h"

#include <stdlib.h>
#include <sys/stat.h>

static int asan_mode(void) {
    const char *s = getenv("LSS_TEST_ASAN");
    return s && s[0] == '1';
}

/* ---------------------------------------------------------------- targets */
typedef struct {
    int d;
    double mu[8], P[64], C[64]; /* mean, precision, covariance */
    long calls;
} gauss_t;

static int gauss_lp(const double *x, int n, int d, double *lp, void *u) {
    gauss_t *g = (gauss_t *)u;
    int k, i, j;
    g->calls++;
    for (k = 0; k < n; k++) {
        double r[8], s = 0;
        for (i = 0; i < d; i++) r[i] = x[k * d + i] - g->mu[i];
        for (i = 0; i < d; i++)
            for (j = 0; j < d; j++) s += r[i] * g->P[i * d + j] * r[j];
        lp[k] = -0.5 * s;
    }
    return LSS_OK;
}

static int gauss_lpg(const double *x, int n, int d, double *lp, double *gr, void *u) {
    gauss_t *g = (gauss_t *)u;
    int k, i, j;
    for (k = 0; k < n; k++) {
        double r[8], s = 0;
        for (i = 0; i < d; i++) r[i] = x[k * d + i] - g->mu[i];
        for (i = 0; i < d; i++) {
            double pi = 0;
            for (j = 0; j < d; j++) pi += g->P[i * d + j] * r[j];
            s += r[i] * pi;
            gr[k * d + i] = -pi;
        }
        lp[k] = -0.5 * s;
    }
    return LSS_OK;
}

/* Cholesky inverse of a small SPD matrix (for the precision of the test Gaussians). */
static void spd_inverse(const double *A, int d, double *inv) {
    double L[64], Y[64];
    int i, j, k;
    memset(L, 0, sizeof L);
    for (i = 0; i < d; i++)
        for (j = 0; j <= i; j++) {
            double s = A[i * d + j];
            for (k = 0; k < j; k++) s -= L[i * d + k] * L[j * d + k];
            L[i * d + j] = i == j ? sqrt(s) : s / L[j * d + j];
        }
    for (j = 0; j < d; j++) /* L Y = e_j, then L^T X = Y */
        for (i = 0; i < d; i++) {
            double s = i == j ? 1.0 : 0.0;
            for (k = 0; k < i; k++) s -= L[i * d + k] * Y[k * d + j];
            Y[i * d + j] = s / L[i * d + i];
        }
    for (j = 0; j < d; j++)
        for (i = d - 1; i >= 0; i--) {
            double s = Y[i * d + j];
            for (k = i + 1; k < d; k++) s -= L[k * d + i] * inv[k * d + j];
            inv[i * d + j] = s / L[i * d + i];
        }
}

/* A 5-D Gaussian with eigenvalues 150, 40, 10, 3, 1 (condition number 150) in a random basis. */
static void make_gauss5(gauss_t *g) {
    static const double lam[5] = {150, 40, 10, 3, 1}, mu[5] = {1, -2, 0.5, 3, 0};
    double Q[25];
    lss_rng r;
    int i, j, k;
    memset(g, 0, sizeof *g);
    g->d = 5;
    lss_rng_init(&r, 777, 0);
    for (i = 0; i < 25; i++) Q[i] = lss_rng_normal(&r);
    for (j = 0; j < 5; j++) { /* Gram-Schmidt on the columns */
        double nrm = 0;
        for (k = 0; k < j; k++) {
            double dot = 0;
            for (i = 0; i < 5; i++) dot += Q[i * 5 + j] * Q[i * 5 + k];
            for (i = 0; i < 5; i++) Q[i * 5 + j] -= dot * Q[i * 5 + k];
        }
        for (i = 0; i < 5; i++) nrm += Q[i * 5 + j] * Q[i * 5 + j];
        for (i = 0; i < 5; i++) Q[i * 5 + j] /= sqrt(nrm);
    }
    for (i = 0; i < 5; i++)
        for (j = 0; j < 5; j++) {
            double s = 0;
            for (k = 0; k < 5; k++) s += Q[i * 5 + k] * lam[k] * Q[j * 5 + k];
            g->C[i * 5 + j] = s;
        }
    spd_inverse(g->C, 5, g->P);
    for (i = 0; i < 5; i++) g->mu[i] = mu[i];
}

/* Compares sample means and covariances of a chain [n][m][d] with the truth within `ksig` Monte
 * Carlo standard errors; the error of each quantity uses the autocorrelation time of that
 * quantity's own series (x_i for means, (x_i - m_i)(x_j - m_j) for covariances). */
/* Standard error of the mean of a series [n][m] by batch means: each of the m chains cut into
 * nb batches, SE = sd(batch means) / sqrt(m nb). Used for HMC, whose anti-correlated draws make the
 * windowed autocorrelation sum oscillate. */
static double batch_se(const double *x, int64_t n, int m, int nb) {
    int k, b;
    int64_t L = n / nb, t;
    double s = 0, s2 = 0;
    for (k = 0; k < m; k++)
        for (b = 0; b < nb; b++) {
            double bm = 0;
            for (t = b * L; t < (b + 1) * L; t++) bm += x[t * m + k];
            bm /= (double)L;
            s += bm;
            s2 += bm * bm;
        }
    s /= (double)(m * nb);
    return sqrt((s2 / (double)(m * nb) - s * s) / (double)(m * nb - 1));
}

static void check_moments(const char *what, const double *chain, int64_t n, int m, int d, const double *mu,
                          const double *C, double ksig, int batch) {
    size_t N = (size_t)n * m, t;
    double mean[8], tau;
    double *series = (double *)malloc(sizeof(double) * N);
    int i, j;
    char msg[128];
    for (i = 0; i < d; i++) {
        double s = 0;
        for (t = 0; t < N; t++) s += chain[t * d + i];
        mean[i] = s / (double)N;
    }
    for (i = 0; i < d; i++) {
        double se;
        for (t = 0; t < N; t++) series[t] = chain[t * d + i];
        lss_autocorr_time(series, n, m, 1, 0, -1, &tau);
        se = batch ? batch_se(series, n, m, 20) : sqrt(C[i * d + i] * tau / (double)N);
        snprintf(msg, sizeof msg, "%s: mean %d (tau %.1f, MC error %.3g)", what, i, tau, se);
        CHECK_CLOSE(mean[i], mu[i], 0, ksig * se, msg);
    }
    for (i = 0; i < d; i++)
        for (j = 0; j <= i; j++) {
            double s = 0, v = 0, c, se;
            for (t = 0; t < N; t++) {
                series[t] = (chain[t * d + i] - mean[i]) * (chain[t * d + j] - mean[j]);
                s += series[t];
            }
            c = s / (double)N;
            for (t = 0; t < N; t++) v += (series[t] - c) * (series[t] - c);
            v /= (double)N;
            lss_autocorr_time(series, n, m, 1, 0, -1, &tau);
            se = batch ? batch_se(series, n, m, 20) : sqrt(v * tau / (double)N);
            snprintf(msg, sizeof msg, "%s: cov %d,%d (tau %.1f, MC error %.3g)", what, i, j, tau, se);
            CHECK_CLOSE(c, C[i * d + j], 0, ksig * se, msg);
        }
    free(series);
}

/* ---------------------------------------------------------------- normal quantile */
/* Reference quantile: Newton on the CDF in long double (erfcl), on the tail that holds p. */
static long double ref_ppf(double p, double x0) {
    long double x = x0, lp = p, lq = 1.0L - (long double)p; /* exact: p is a double */
    int it;
    for (it = 0; it < 60; it++) {
        long double pdf = expl(-0.5L * x * x) / sqrtl(2.0L * 3.14159265358979323846264338327950288L), f;
        if (p < 0.5) f = 0.5L * erfcl(-x / sqrtl(2.0L)) - lp;
        else f = -(0.5L * erfcl(x / sqrtl(2.0L)) - lq);
        if (pdf == 0) break;
        x -= f / pdf;
    }
    return x;
}

static void test_norm_ppf(void) {
    double worst = 0, wp = 0;
    int i;
    /* log-spaced tails down to 1e-12 and a uniform grid in between */
    for (i = 0; i <= 2400; i++) {
        double p, x, rel;
        long double r;
        if (i < 1200) p = pow(10.0, -12.0 + 11.7 * i / 1199.0);
        else p = 1.0 - pow(10.0, -12.0 + 11.7 * (i - 1200) / 1200.0);
        if (i == 2400) p = 0.5 + 1e-9;
        x = lss_norm_ppf(p);
        r = ref_ppf(p, x * (1 + 1e-3) + 1e-3);
        rel = fabs((double)((x - r) / r));
        if (rel > worst) worst = rel, wp = p;
    }
    for (i = 1; i < 1000; i++) {
        double p = i / 1000.0, x = lss_norm_ppf(p), rel;
        long double r;
        if (i == 500) continue;
        r = ref_ppf(p, x * (1 + 1e-3) + 1e-3);
        rel = fabs((double)((x - r) / r));
        if (rel > worst) worst = rel, wp = p;
    }
    printf("  norm_ppf: worst relative error %.3g at p = %.6g\n", worst, wp);
    CHECK(worst <= 1e-9, "norm_ppf relative error %.3g at p = %.6g exceeds 1e-9", worst, wp);
    /* published values (R qnorm / tables) */
    CHECK_REL(lss_norm_ppf(0.975), 1.959963984540054, 1e-14, "qnorm(0.975)");
    CHECK_REL(lss_norm_ppf(0.025), -1.959963984540054, 1e-14, "qnorm(0.025)");
    CHECK_REL(lss_norm_ppf(0.8413447460685429), 1.0, 1e-13, "qnorm(pnorm(1))");
    CHECK_REL(lss_norm_ppf(1e-10), -6.361340902404056, 1e-13, "qnorm(1e-10)");
    CHECK_REL(lss_norm_ppf(1e-5), -4.264890793922825, 1e-13, "qnorm(1e-5)");
    CHECK(lss_norm_ppf(0.5) == 0.0, "qnorm(0.5) = %g", lss_norm_ppf(0.5));
    CHECK(isinf(lss_norm_ppf(0.0)) && lss_norm_ppf(0.0) < 0, "qnorm(0) = -inf");
    CHECK(isnan(lss_norm_ppf(1.5)) && isnan(lss_norm_ppf(-0.1)) && isnan(lss_norm_ppf(NAN)), "qnorm outside [0,1] is NaN");
    /* CDF: published tail values, and the round trip */
    CHECK_REL(lss_norm_cdf(-10.0), 7.619853024160527e-24, 1e-13, "pnorm(-10)");
    CHECK_REL(lss_norm_cdf(1.959963984540054), 0.975, 1e-14, "pnorm(1.96)");
    CHECK_REL(lss_norm_cdf(-37.5), 4.605353009618217e-308, 1e-10, "pnorm(-37.5)");
    {
        double worst_rt = 0;
        for (i = -800; i <= 800; i++) {
            double x = i / 100.0, y = lss_norm_ppf(lss_norm_cdf(x));
            if (x < 0) worst_rt = fmax(worst_rt, fabs(y - x) / fmax(fabs(x), 1e-300));
        }
        CHECK(worst_rt < 1e-12, "ppf(cdf(x)) = x on the lower tail: worst relative error %.3g", worst_rt);
    }
}

/* ---------------------------------------------------------------- scalers */
static void test_scalers(void) {
    enum { N = 101, D = 3 };
    double x[N * D], y[N * D], z[N * D];
    lss_scaler s, s2;
    int i, kind;
    for (i = 0; i < N; i++) {
        x[i * D + 0] = i + 1;           /* 1..101: median 51, q25 26, q75 76 */
        x[i * D + 1] = 7.0;             /* constant: zero scale -> 1 */
        x[i * D + 2] = exp(0.03 * i);   /* skewed */
    }
    CHECK_OK(lss_scaler_fit(&s, LSS_SCALE_ROBUST, x, N, D));
    CHECK_CLOSE(s.a[0], 51, 0, 1e-12, "robust median");
    CHECK_CLOSE(s.b[0], 50, 0, 1e-12, "robust IQR");
    CHECK_CLOSE(s.b[1], 1, 0, 0, "robust zero IQR -> 1");
    CHECK_OK(lss_scaler_transform(&s, x, y, N));
    CHECK_CLOSE(y[0], (1.0 - 51) / 50, 0, 1e-15, "robust transform");
    lss_scaler_free(&s);

    for (kind = LSS_SCALE_ROBUST; kind <= LSS_SCALE_QUANTILE; kind++) {
        double err = 0;
        const char *paths[2] = {"build/test_infer_scaler.npy", "build/test_infer_scaler.csv"};
        int f;
        CHECK_OK(lss_scaler_fit(&s, kind, x, N, D));
        CHECK_OK(lss_scaler_transform(&s, x, y, N));
        CHECK_OK(lss_scaler_inverse(&s, y, z, N));
        for (i = 0; i < N * D; i++) err = fmax(err, fabs(z[i] - x[i]) / fmax(1, fabs(x[i])));
        CHECK(err < 1e-9, "scaler kind %d: inverse(transform(x)) error %.3g", kind, err);
        if (kind == LSS_SCALE_MINMAX) {
            CHECK_CLOSE(y[0], 1e-5, 0, 1e-15, "min-max: min -> 1e-5");
            CHECK_CLOSE(y[(N - 1) * D], 1 - 1e-5, 0, 1e-15, "min-max: max -> 1 - 1e-5");
        }
        if (kind == LSS_SCALE_QUANTILE) {
            CHECK_CLOSE(y[0], -4.264890793922825, 1e-12, 0, "quantile: min -> ppf(1e-5)");
            CHECK_CLOSE(y[(N - 1) * D], 4.264890793922825, 1e-12, 0, "quantile: max -> ppf(1 - 1e-5)");
        }
        for (f = 0; f < 2; f++) {
            double tol = f ? 1e-8 : 0;
            CHECK_OK(lss_scaler_save(&s, paths[f]));
            CHECK_OK(lss_scaler_load(&s2, paths[f]));
            CHECK(s2.kind == s.kind && s2.dim == s.dim, "scaler reloaded from %s: kind %d dim %d", paths[f], s2.kind, s2.dim);
            for (i = 0; i < D && s2.a; i++) {
                CHECK_CLOSE(s2.a[i], s.a[i], tol, 0, "reloaded scaler a");
                CHECK_CLOSE(s2.b[i], s.b[i], tol, 0, "reloaded scaler b");
            }
            lss_scaler_free(&s2);
        }
        lss_scaler_free(&s);
    }
    /* the pitfall: an observed summary outside the fitted range */
    CHECK_OK(lss_scaler_fit(&s, LSS_SCALE_QUANTILE, x, N, D));
    {
        double obs[D] = {50, 7, 1.5}, bad[D] = {50, 7, 1e3};
        CHECK_OK(lss_scaler_check(&s, obs, 1));
        CHECK_ERR(lss_scaler_check(&s, bad, 1), LSS_ERR_RANGE);
        CHECK(strstr(lss_last_error(), "outside the scaler's fitted range") != NULL, "message: %s", lss_last_error());
        CHECK_ERR(lss_scaler_transform(&s, bad, y, 1), LSS_ERR_RANGE);
        CHECK(strstr(lss_last_error(), "column 2") != NULL, "message names the column: %s", lss_last_error());
    }
    lss_scaler_free(&s);
    CHECK_ERR(lss_scaler_fit(&s, 9, x, N, D), LSS_ERR_ARG);
    CHECK_ERR(lss_scaler_load(&s, "build/does_not_exist.npy"), LSS_ERR_IO);
}

/* ---------------------------------------------------------------- hull and SVD */
static void test_hull(void) {
    lss_rng r;
    int trial, bad_edges = 0, bad_count = 0, bad_contain = 0, ntr = asan_mode() ? 40 : 200;
    lss_rng_init(&r, 5, 0);
    for (trial = 0; trial < ntr; trial++) {
        int n = 3 + (int)lss_rng_below(&r, trial % 2 ? 200 : 12), i, j, k, nh, nb = 0, q;
        double *p = (double *)malloc(sizeof(double) * 2 * n), *h = (double *)malloc(sizeof(double) * 2 * n);
        for (i = 0; i < 2 * n; i++) p[i] = trial % 3 ? lss_rng_uniform(&r) : lss_rng_normal(&r);
        if (lss_convex_hull(p, n, h, &nh) != LSS_OK) {
            bad_count++;
            free(p);
            free(h);
            continue;
        }
        /* brute force: (i, j) is a counter-clockwise hull edge iff every other point lies strictly left */
        for (i = 0; i < n; i++)
            for (j = 0; j < n; j++) {
                int ok = i != j;
                for (k = 0; k < n && ok; k++)
                    if (k != i && k != j &&
                        (p[2 * j] - p[2 * i]) * (p[2 * k + 1] - p[2 * i + 1]) - (p[2 * j + 1] - p[2 * i + 1]) * (p[2 * k] - p[2 * i]) <= 0)
                        ok = 0;
                nb += ok;
            }
        if (nb != nh) bad_count++;
        for (q = 0; q < nh; q++) { /* every hull edge must be a brute-force edge */
            const double *a = h + 2 * q, *b = h + 2 * ((q + 1) % nh);
            for (k = 0; k < n; k++) {
                double cr = (b[0] - a[0]) * (p[2 * k + 1] - a[1]) - (b[1] - a[1]) * (p[2 * k] - a[0]);
                if (cr < -1e-12) bad_edges++;
            }
        }
        for (k = 0; k < n; k++) bad_contain += !lss_hull_contains(h, nh, p[2 * k], p[2 * k + 1], 1e-12);
        for (q = 0; q < 50; q++) { /* random queries against the brute-force edge test */
            double x = 3 * lss_rng_normal(&r), y = 3 * lss_rng_normal(&r);
            int in = 1;
            for (i = 0; i < nh; i++) {
                const double *a = h + 2 * i, *b = h + 2 * ((i + 1) % nh);
                if ((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]) < 0) in = 0;
            }
            for (i = 0; i < n && in; i++) (void)0;
            if (in != lss_hull_contains(h, nh, x, y, 0)) bad_contain++;
        }
        free(p);
        free(h);
    }
    CHECK(bad_count == 0, "hull vertex count differs from brute force in %d of %d sets", bad_count, ntr);
    CHECK(bad_edges == 0, "%d points lie outside a hull edge", bad_edges);
    CHECK(bad_contain == 0, "%d containment answers wrong", bad_contain);
    {
        double sq[10] = {0, 0, 1, 0, 1, 1, 0, 1, 0.5, 0.5}, h[10], line[8] = {0, 0, 1, 1, 2, 2, 3, 3};
        int nh;
        CHECK_OK(lss_convex_hull(sq, 5, h, &nh));
        CHECK(nh == 4, "square hull has %d vertices", nh);
        CHECK(lss_hull_contains(h, nh, 1.0, 0.5, 1e-12) == 1, "boundary point is inside (inclusive)");
        CHECK(lss_hull_contains(h, nh, 1.0 + 1e-6, 0.5, 1e-12) == 0, "point just outside is outside");
        CHECK_ERR(lss_convex_hull(line, 4, h, &nh), LSS_ERR_ARG);
        CHECK(strstr(lss_last_error(), "collinear") != NULL, "message: %s", lss_last_error());
        CHECK_ERR(lss_convex_hull(sq, 2, h, &nh), LSS_ERR_ARG);
    }
}

static void test_svd(void) {
    double a[6 * 4], s[4], fro = 0, ss = 0;
    double dg[9] = {3, 0, 0, 0, -5, 0, 0, 0, 0.5}, s3[3];
    lss_rng r;
    int i;
    lss_rng_init(&r, 11, 0);
    for (i = 0; i < 24; i++) {
        a[i] = lss_rng_normal(&r);
        fro += a[i] * a[i];
    }
    CHECK_OK(lss_svd_values(a, 6, 4, s));
    for (i = 0; i < 4; i++) ss += s[i] * s[i];
    CHECK_CLOSE(ss, fro, 1e-12, 0, "sum of squared singular values = Frobenius norm^2");
    CHECK(s[0] >= s[1] && s[1] >= s[2] && s[2] >= s[3], "singular values descending");
    CHECK_OK(lss_svd_values(dg, 3, 3, s3));
    CHECK_CLOSE(s3[0], 5, 1e-14, 0, "diag sv 0");
    CHECK_CLOSE(s3[1], 3, 1e-14, 0, "diag sv 1");
    CHECK_CLOSE(s3[2], 0.5, 1e-14, 0, "diag sv 2");
    {
        /* |det| of a square matrix = product of singular values */
        double m[9] = {2, 1, 0, 1, 3, 1, 0, 1, 4}, det = 2 * (12 - 1) - 1 * (4 - 0);
        CHECK_OK(lss_svd_values(m, 3, 3, s3));
        CHECK_CLOSE(s3[0] * s3[1] * s3[2], fabs(det), 1e-13, 0, "product of singular values = |det|");
        CHECK_OK(lss_svd_values(a, 4, 6, s)); /* wide: the transpose has the same values */
        CHECK(s[0] > 0, "wide matrix handled");
    }
}

/* ---------------------------------------------------------------- stretch move */
static void test_stretch_z(void) {
    lss_rng r;
    int i, N = asan_mode() ? 200000 : 2000000, below = 0;
    double s = 0, p, ez, se_ez = sqrt(31.0 / 20.0 - 49.0 / 36.0), pz = 1.0 / (1.0 + sqrt(2.0));
    lss_rng_init(&r, 3, 9);
    for (i = 0; i < N; i++) {
        double z = lss_stretch_z(&r, 2.0);
        s += z;
        below += z <= 1.0;
        if (z < 0.5 || z > 2.0) { CHECK(0, "z = %g outside [1/2, 2]", z); break; }
    }
    ez = s / N;
    p = (double)below / N;
    /* E[z] = 7/6 with sd sqrt(E z^2 - E[z]^2) = sqrt(31/20 - 49/36); P(z <= 1) = 1/(1 + sqrt 2); 4 sigma */
    CHECK_CLOSE(ez, 7.0 / 6.0, 0, 4 * se_ez / sqrt((double)N), "E[z]");
    CHECK_CLOSE(p, pz, 0, 4 * sqrt(pz * (1 - pz) / N), "P(z <= 1)");
}

/* ---------------------------------------------------------------- ensemble sampler */
static void ball(double *p0, int W, int d, const double *c, double s, uint64_t seed) {
    lss_rng r;
    int k, i;
    lss_rng_init(&r, seed, 1);
    for (k = 0; k < W; k++)
        for (i = 0; i < d; i++) p0[k * d + i] = (c ? c[i] : 0) + s * lss_rng_normal(&r);
}

static void test_emcee_normal(void) {
    /* emcee's test: N(0, 1), 32 walkers, 2000 steps: every walker's acceptance in (0.1, 0.9),
     * |mean| < 0.08, |std - 1| < 0.05 */
    gauss_t g;
    lss_emcee *e;
    lss_emcee_opts o;
    double p0[32 * 2], acc[32], *flat = NULL;
    int64_t nf;
    int k, ok = 1, i;
    memset(&g, 0, sizeof g);
    g.d = 2;
    g.P[0] = g.P[3] = 1;
    memset(&o, 0, sizeof o);
    o.seed = 1234;
    ball(p0, 32, 2, NULL, 0.1, 1);
    CHECK_OK(lss_emcee_create(32, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, gauss_lp, &g));
    CHECK_OK(lss_emcee_run(e, 2000, gauss_lp, &g));
    CHECK(g.calls == 1 + 2 * 2000, "one batched call per half-step: %ld calls", g.calls);
    lss_emcee_acceptance(e, acc);
    for (k = 0; k < 32; k++) ok &= acc[k] > 0.1 && acc[k] < 0.9;
    CHECK(ok, "every walker's acceptance in (0.1, 0.9)");
    CHECK_OK(lss_emcee_flat(e, 0, 1, &flat, &nf));
    for (i = 0; i < 2 && flat; i++) {
        double m = 0, v = 0;
        int64_t t;
        for (t = 0; t < nf; t++) m += flat[t * 2 + i];
        m /= nf;
        for (t = 0; t < nf; t++) v += (flat[t * 2 + i] - m) * (flat[t * 2 + i] - m);
        v = sqrt(v / nf);
        CHECK(fabs(m) < 0.08, "N(0,1): |mean| = %g", fabs(m));
        CHECK(fabs(v - 1) < 0.05, "N(0,1): |std - 1| = %g", fabs(v - 1));
    }
    free(flat);
    /* determinism: the same seed gives the same chain bit for bit, another seed another chain */
    {
        lss_emcee *e2;
        CHECK_OK(lss_emcee_create(32, 2, &o, &e2));
        CHECK_OK(lss_emcee_start(e2, p0, gauss_lp, &g));
        CHECK_OK(lss_emcee_run(e2, 2000, gauss_lp, &g));
        CHECK(memcmp(e2->chain, e->chain, sizeof(double) * 2000 * 64) == 0, "same seed, same chain");
        lss_emcee_free(e2);
        o.seed = 1235;
        CHECK_OK(lss_emcee_create(32, 2, &o, &e2));
        CHECK_OK(lss_emcee_start(e2, p0, gauss_lp, &g));
        CHECK_OK(lss_emcee_run(e2, 10, gauss_lp, &g));
        CHECK(memcmp(e2->chain, e->chain, sizeof(double) * 10 * 64) != 0, "another seed, another chain");
        lss_emcee_free(e2);
    }
    lss_emcee_free(e);
}

static void test_emcee_gauss5(void) {
    gauss_t g;
    lss_emcee *e;
    lss_emcee_opts o;
    double p0[40 * 5], tau[5], maxtau = 0;
    int W = 40, i, st;
    int64_t n = asan_mode() ? 8000 : 30000;
    make_gauss5(&g);
    memset(&o, 0, sizeof o);
    o.seed = 99;
    ball(p0, W, 5, g.mu, 0.5, 2);
    CHECK_OK(lss_emcee_create(W, 5, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, gauss_lp, &g));
    CHECK_OK(lss_emcee_run(e, 2000, gauss_lp, &g)); /* burn-in */
    lss_emcee_reset(e);
    CHECK_OK(lss_emcee_run(e, n, gauss_lp, &g));
    st = lss_autocorr_time(e->chain, e->nsteps, W, 5, 0, 0, tau);
    CHECK(st == LSS_OK, "chain long enough for its autocorrelation time: %s", lss_last_error());
    for (i = 0; i < 5; i++) maxtau = fmax(maxtau, tau[i]);
    printf("  5-D Gaussian (cond 150): acceptance %.3f, tau %.1f %.1f %.1f %.1f %.1f\n", lss_emcee_acceptance(e, NULL),
           tau[0], tau[1], tau[2], tau[3], tau[4]);
    check_moments("emcee 5-D Gaussian", e->chain, e->nsteps, W, 5, g.mu, g.C, 3.0, 0);
    {
        int64_t burn, thin;
        double tmax;
        CHECK_OK(lss_emcee_suggest(e, &burn, &thin, &tmax));
        CHECK(tmax == maxtau && burn == (int64_t)ceil(2 * maxtau) && thin >= 1 && thin <= (int64_t)(maxtau / 2),
              "suggested burn-in %lld and thinning %lld from tau %.1f", (long long)burn, (long long)thin, tmax);
    }
    {
        double rhat[5], ess[5];
        CHECK_OK(lss_rhat_split(e->chain, e->nsteps, W, 5, rhat));
        CHECK_OK(lss_ess(e->chain, e->nsteps, W, 5, ess));
        for (i = 0; i < 5; i++) {
            CHECK(rhat[i] < 1.01, "split R-hat %d = %g", i, rhat[i]);
            CHECK_CLOSE(ess[i], (double)e->nsteps * W / tau[i], 1e-12, 0, "ESS = n m / tau");
        }
    }
    lss_emcee_free(e);
}

/* Rosenbrock density of emcee's tests: log p = -(100 (x2 - x1^2)^2 + (1 - x1)^2) / 20 */
static int rosen_lp(const double *x, int n, int d, double *lp, void *u) {
    int k;
    (void)u;
    for (k = 0; k < n; k++) {
        double a = x[k * d], b = x[k * d + 1];
        lp[k] = -(100 * (b - a * a) * (b - a * a) + (1 - a) * (1 - a)) / 20.0;
    }
    return LSS_OK;
}

static void mc_mean_check(const char *what, const double *series, int64_t n, int m, double ref, double ksig) {
    size_t N = (size_t)n * m, t;
    double mean = 0, v = 0, tau, se;
    char msg[160];
    for (t = 0; t < N; t++) mean += series[t];
    mean /= (double)N;
    for (t = 0; t < N; t++) v += (series[t] - mean) * (series[t] - mean);
    v /= (double)N;
    lss_autocorr_time(series, n, m, 1, 0, -1, &tau);
    se = sqrt(v * tau / (double)N);
    snprintf(msg, sizeof msg, "%s (tau %.0f, MC error %.3g)", what, tau, se);
    printf("  %s = %.4f (reference %.4f, MC error %.3g, tau %.0f)\n", what, mean, ref, se, tau);
    CHECK_CLOSE(mean, ref, 0, ksig * se, msg);
}

/* The stretch move on this banana has tau ~ 2000 steps: the run is long (1e5+ steps) and is kept
 * thinned by 20 (taken in chunks of 2000 steps, the sampler reset after each). */
static void test_emcee_banana(void) {
    lss_emcee *e;
    lss_emcee_opts o;
    int W = 64, thin = 20, k;
    int64_t nchunk = 200, chunk = 2000, per = chunk / thin, n = nchunk * per, c, t;
    double *p0 = (double *)malloc(sizeof(double) * W * 2), *keep, *s1, *s2, tau[2];
    size_t N = (size_t)n * W;
    memset(&o, 0, sizeof o);
    o.seed = 7;
    ball(p0, W, 2, (const double[]){1, 1}, 0.5, 3);
    keep = (double *)malloc(sizeof(double) * N * 2);
    CHECK_OK(lss_emcee_create(W, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, rosen_lp, NULL));
    CHECK_OK(lss_emcee_run(e, 10000, rosen_lp, NULL)); /* burn-in: about 5 tau */
    for (c = 0; c < nchunk; c++) {
        lss_emcee_reset(e);
        if (lss_emcee_run(e, chunk, rosen_lp, NULL) != LSS_OK) break;
        for (t = 0; t < per; t++)
            memcpy(keep + ((size_t)(c * per + t) * W) * 2, e->chain + (size_t)(t * thin + thin - 1) * W * 2, sizeof(double) * W * 2);
    }
    CHECK(c == nchunk, "banana run: %s", lss_last_error());
    lss_autocorr_time(keep, n, W, 2, 0, -1, tau);
    printf("  banana: %lld steps, tau %.0f %.0f steps\n", (long long)(nchunk * chunk), tau[0] * thin, tau[1] * thin);
    s1 = (double *)malloc(sizeof(double) * N);
    s2 = (double *)malloc(sizeof(double) * N);
    /* E[x1] = 1, Var x1 = 10, E[x2] = 11, Var x2 = 240.1 (variances about the exact means) */
    for (t = 0; t < (int64_t)N; t++) {
        s1[t] = keep[t * 2];
        s2[t] = (keep[t * 2] - 1) * (keep[t * 2] - 1);
    }
    mc_mean_check("banana E[x1]", s1, n, W, 1.0, 3.0);
    mc_mean_check("banana Var x1", s2, n, W, 10.0, 3.0);
    for (t = 0; t < (int64_t)N; t++) {
        s1[t] = keep[t * 2 + 1];
        s2[t] = (keep[t * 2 + 1] - 11) * (keep[t * 2 + 1] - 11);
    }
    mc_mean_check("banana E[x2]", s1, n, W, 11.0, 3.0);
    mc_mean_check("banana Var x2", s2, n, W, 240.1, 3.0);
    (void)k;
    free(s1);
    free(s2);
    free(keep);
    free(p0);
    lss_emcee_free(e);
}

/* Two well-separated Gaussians N((-10, 0), I) and N((10, 0), I) with weights w and 1 - w. */
static int bimodal_lp(const double *x, int n, int d, double *lp, void *u) {
    double w = *(const double *)u;
    int k;
    for (k = 0; k < n; k++) {
        double a = x[k * d], b = x[k * d + 1];
        double l1 = log(w) - 0.5 * ((a + 10) * (a + 10) + b * b), l2 = log(1 - w) - 0.5 * ((a - 10) * (a - 10) + b * b);
        double m = fmax(l1, l2);
        lp[k] = m + log(exp(l1 - m) + exp(l2 - m));
    }
    return LSS_OK;
}

static void test_emcee_bimodal(void) {
    /* Documented behaviour of the stretch move on separated modes: a proposal from a partner in the
     * other mode lands at least halfway back towards it (z >= 1/2), so the cheapest crossing passes
     * the midpoint, 10 sigma from both modes here (log-density -50: never accepted). The fraction
     * of walkers per mode stays what the start made it, the moments within each mode are right, and
     * the mixture weights are NOT learned: weights 0.8/0.2 sampled from a half/half start give an
     * overall mean near 0, not the true -6. (At 4 sigma from the midpoint walkers do cross, about
     * once per e^8 proposals.) */
    lss_emcee *e;
    lss_emcee_opts o;
    int W = 32, k, crossed = 0;
    int64_t n = asan_mode() ? 2000 : 6000, t;
    double p0[64], w = 0.8, mA = 0, mB = 0, vA = 0, mall = 0;
    size_t nA = 0, nB = 0;
    memset(&o, 0, sizeof o);
    o.seed = 21;
    ball(p0, W, 2, NULL, 0.5, 4);
    for (k = 0; k < W; k++) p0[k * 2] += k % 2 ? 10 : -10;
    CHECK_OK(lss_emcee_create(W, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, bimodal_lp, &w));
    CHECK_OK(lss_emcee_run(e, n, bimodal_lp, &w));
    for (t = 0; t < n; t++)
        for (k = 0; k < W; k++) {
            double a = e->chain[(t * W + k) * 2];
            if ((a < 0) != (k % 2 == 0)) crossed++;
            if (t < n / 5) continue;
            mall += a;
            if (a < 0) { mA += a; vA += (a + 10) * (a + 10); nA++; }
            else { mB += a; nB++; }
        }
    mall /= (double)(nA + nB);
    CHECK(crossed == 0, "bimodal: %d walker-steps changed mode", crossed);
    CHECK(nA == nB, "bimodal: walkers per mode fixed by the start (%zu vs %zu)", nA, nB);
    /* within-mode means: tau ~ 30 steps, 16 walkers, ~5000 steps: MC error ~0.03; 0.15 is 5 sigma */
    CHECK_CLOSE(mA / nA, -10, 0, 0.15, "bimodal: mean of the left mode");
    CHECK_CLOSE(mB / nB, 10, 0, 0.15, "bimodal: mean of the right mode");
    CHECK_CLOSE(vA / nA, 1, 0, 0.15, "bimodal: variance within the left mode");
    CHECK(fabs(mall) < 0.5 && fabs(mall - (-6.0)) > 5, "bimodal: overall mean %.3f follows the start, not the weights", mall);
    lss_emcee_free(e);
}

/* AR(1) chains x_t = a x_{t-1} + sqrt(1 - a^2) e_t: tau = (1 + a) / (1 - a) = 19 for a = 0.9. */
static void make_ar1(double *x, int64_t n, int m, double a, uint64_t seed) {
    lss_rng r;
    int k;
    int64_t t;
    lss_rng_init(&r, seed, 0);
    for (k = 0; k < m; k++) {
        double v = lss_rng_normal(&r);
        for (t = 0; t < n; t++) {
            v = a * v + sqrt(1 - a * a) * lss_rng_normal(&r);
            x[t * m + k] = v;
        }
    }
}

static void test_autocorr(void) {
    int m = 32;
    int64_t n = asan_mode() ? 10000 : 40000;
    double *x = (double *)malloc(sizeof(double) * (size_t)n * m), tau;
    make_ar1(x, n, m, 0.9, 17);
    CHECK_OK(lss_autocorr_time(x, n, m, 1, 0, 0, &tau));
    printf("  AR(1) a = 0.9: tau = %.3f (exact 19)\n", tau);
    /* estimator scatter ~ tau sqrt(2 (2M + 1) / (n m)) ~ 2.5%% here; 10%% asked */
    CHECK_REL(tau, 19.0, 0.10, "AR(1) integrated autocorrelation time");
    /* a chain of 100 steps is too short (< 50 tau): named error */
    CHECK_ERR(lss_autocorr_time(x, 100, m, 1, 0, 0, &tau), LSS_ERR_RANGE);
    CHECK(strstr(lss_last_error(), "too short") != NULL, "message: %s", lss_last_error());
    CHECK(tau > 1, "tau still returned for a short chain (%g)", tau);
    free(x);
}

/* Uniform density inside the prior: the triangle hull (0,0), (1,0), (0,1) within the box [0,1]^2. */
static int flat_lp(const double *x, int n, int d, double *lp, void *u) {
    int k;
    (void)x; (void)d; (void)u;
    for (k = 0; k < n; k++) lp[k] = 0;
    return LSS_OK;
}

static int nan_lp(const double *x, int n, int d, double *lp, void *u) {
    int k;
    (void)u;
    for (k = 0; k < n; k++) lp[k] = x[k * d] > 0.5 ? NAN : -0.5 * x[k * d] * x[k * d];
    return LSS_OK;
}

static void test_prior_hull_sampling(void) {
    lss_prior pr;
    lss_emcee *e;
    lss_emcee_opts o;
    double lo[2] = {0, 0}, hi[2] = {1, 1}, tri[8] = {0, 0, 1, 0, 0, 1, 0.2, 0.2}, p0[32 * 2], *flat = NULL;
    int64_t nf, t, n = asan_mode() ? 3000 : 10000;
    double mx = 0, my = 0, tau[2];
    int k, outside = 0;
    CHECK_OK(lss_prior_init(&pr, 2, lo, hi));
    CHECK_OK(lss_prior_set_hull(&pr, 0, 1, tri, 4));
    CHECK(pr.hull_n == 3, "triangle hull has %d vertices", pr.hull_n);
    memset(&o, 0, sizeof o);
    o.seed = 8;
    o.prior = &pr;
    ball(p0, 32, 2, (const double[]){0.25, 0.25}, 0.05, 5);
    CHECK_OK(lss_emcee_create(32, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, flat_lp, NULL));
    CHECK_OK(lss_emcee_run(e, 500, flat_lp, NULL));
    lss_emcee_reset(e);
    CHECK_OK(lss_emcee_run(e, n, flat_lp, NULL));
    CHECK_OK(lss_emcee_flat(e, 0, 1, &flat, &nf));
    for (t = 0; flat && t < nf; t++) {
        mx += flat[2 * t];
        my += flat[2 * t + 1];
        outside += !lss_prior_contains(&pr, flat + 2 * t);
    }
    mx /= nf;
    my /= nf;
    lss_autocorr_time(e->chain, e->nsteps, 32, 2, 0, -1, tau);
    /* uniform on the triangle: centroid (1/3, 1/3), variance 1/18 per axis */
    CHECK(outside == 0, "%d samples outside the prior", outside);
    CHECK_CLOSE(mx, 1.0 / 3, 0, 4 * sqrt(1.0 / 18 * tau[0] / nf), "hull prior: centroid x");
    CHECK_CLOSE(my, 1.0 / 3, 0, 4 * sqrt(1.0 / 18 * tau[1] / nf), "hull prior: centroid y");
    free(flat);
    lss_emcee_free(e);
    /* start outside the prior, named */
    lss_prior_set_names(&pr, (const char *const[]){"Omega_m", "sigma_8"});
    CHECK_OK(lss_emcee_create(32, 2, &o, &e));
    p0[2 * 5] = 1.5;
    CHECK_ERR(lss_emcee_start(e, p0, flat_lp, NULL), LSS_ERR_RANGE);
    CHECK(strstr(lss_last_error(), "walker 5 starts outside the prior") && strstr(lss_last_error(), "Omega_m"),
          "message: %s", lss_last_error());
    p0[2 * 5] = 0.9;
    p0[2 * 5 + 1] = 0.9; /* inside the box, outside the triangle */
    CHECK_ERR(lss_emcee_start(e, p0, flat_lp, NULL), LSS_ERR_RANGE);
    CHECK(strstr(lss_last_error(), "convex hull") != NULL, "message: %s", lss_last_error());
    lss_emcee_free(e);
    {
        /* the Table I prior, from the one table in lss_maps.h */
        const lss_param_table *t1 = lss_table1();
        lss_prior dp;
        double out[LSS_NPARAM_LINEAR];
        CHECK_OK(lss_prior_init(&dp, LSS_NPARAM_LINEAR, t1->lo, t1->hi));
        CHECK_OK(lss_prior_set_names(&dp, t1->name));
        CHECK(dp.d == 7 && lss_prior_contains(&dp, t1->fiducial), "DeepLSS prior contains its fiducial");
        memcpy(out, t1->fiducial, sizeof out);
        out[LSS_P_R_G] = 1.05;
        CHECK(!lss_prior_contains(&dp, out), "r_g = 1.05 lies outside the Table I prior");
        lss_prior_free(&dp);
    }
    lss_prior_free(&pr);
    (void)k;
}

static void test_emcee_errors(void) {
    gauss_t g;
    lss_emcee *e = NULL;
    lss_emcee_opts o;
    double p0[16 * 3];
    int k;
    memset(&g, 0, sizeof g);
    g.d = 3;
    g.P[0] = g.P[4] = g.P[8] = 1;
    memset(&o, 0, sizeof o);
    /* too few walkers */
    CHECK_ERR(lss_emcee_create(5, 3, &o, &e), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "fewer than 2*d walkers") != NULL, "message: %s", lss_last_error());
    CHECK_OK(lss_emcee_create(16, 3, &o, &e));
    /* walkers on a plane: x3 = x1 + x2 */
    ball(p0, 16, 3, NULL, 1.0, 6);
    for (k = 0; k < 16; k++) p0[k * 3 + 2] = p0[k * 3] + p0[k * 3 + 1];
    CHECK_ERR(lss_emcee_start(e, p0, gauss_lp, &g), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "hyperplane") != NULL, "message: %s", lss_last_error());
    /* a parameter without jitter */
    ball(p0, 16, 3, NULL, 1.0, 6);
    for (k = 0; k < 16; k++) p0[k * 3 + 1] = 0.3;
    CHECK_ERR(lss_emcee_start(e, p0, gauss_lp, &g), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "degenerate") != NULL, "message: %s", lss_last_error());
    /* run before start */
    CHECK_ERR(lss_emcee_run(e, 10, gauss_lp, &g), LSS_ERR_STATE);
    /* NaN log-probability: at the start, and during the run */
    ball(p0, 16, 3, NULL, 0.1, 6);
    p0[0] = 0.7;
    CHECK_ERR(lss_emcee_start(e, p0, nan_lp, NULL), LSS_ERR_NUMERIC);
    CHECK(strstr(lss_last_error(), "NaN") != NULL, "message: %s", lss_last_error());
    p0[0] = 0.0;
    CHECK_OK(lss_emcee_start(e, p0, nan_lp, NULL));
    CHECK_ERR(lss_emcee_run(e, 1000, nan_lp, NULL), LSS_ERR_NUMERIC);
    CHECK(strstr(lss_last_error(), "NaN") != NULL, "message: %s", lss_last_error());
    lss_emcee_free(e);
}

/* -inf log-probabilities: walkers that start at zero probability (just across the boundary) move
 * into the support; a walker at finite log-probability never moves to -inf; no NaN ever appears.
 * (A walker far from the support can stay stuck: a stretch proposal moves it at most to the far
 * side of its partner's mirror point - the emcee pitfall of walkers started at -inf.) */
static int halfplane_lp(const double *x, int n, int d, double *lp, void *u) {
    int k;
    (void)u;
    for (k = 0; k < n; k++) lp[k] = x[k * d] < 0 ? -INFINITY : -0.5 * (x[k * d] * x[k * d] + x[k * d + 1] * x[k * d + 1]);
    return LSS_OK;
}

static void test_emcee_inf(void) {
    lss_emcee *e;
    lss_emcee_opts o;
    double p0[16 * 2];
    int64_t t;
    int k, neg_end = 0, back = 0, nan = 0;
    memset(&o, 0, sizeof o);
    o.seed = 4;
    ball(p0, 16, 2, (const double[]){1, 0}, 0.3, 9);
    for (k = 0; k < 4; k++) p0[k * 2] = -0.05 * (k + 1); /* four walkers start at -inf */
    CHECK_OK(lss_emcee_create(16, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, halfplane_lp, NULL));
    CHECK(e->lp[0] == -INFINITY, "walker 0 starts at -inf");
    CHECK_OK(lss_emcee_run(e, 2000, halfplane_lp, NULL));
    for (k = 0; k < 16; k++) neg_end += e->pos[k * 2] < 0;
    for (k = 0; k < 16; k++) {
        int finite = k >= 4;
        for (t = 0; t < e->nsteps; t++) {
            double l = e->lpchain[t * 16 + k];
            nan += l != l;
            if (isfinite(l)) finite = 1;
            else if (finite) back++;
        }
    }
    CHECK(neg_end == 0, "%d walkers still at -inf after 2000 steps", neg_end);
    CHECK(back == 0 && nan == 0, "walkers never return to -inf (%d) and no NaN (%d)", back, nan);
    lss_emcee_free(e);
}

static int stop_after(int64_t done, int64_t total, double acc, void *u) {
    (void)total; (void)acc;
    return done >= *(int64_t *)u;
}

static void test_emcee_progress(void) {
    gauss_t g;
    lss_emcee *e;
    lss_emcee_opts o;
    double p0[8 * 2];
    int64_t lim = 30;
    memset(&g, 0, sizeof g);
    g.d = 2;
    g.P[0] = g.P[3] = 1;
    memset(&o, 0, sizeof o);
    o.progress = stop_after;
    o.progress_user = &lim;
    o.progress_every = 10;
    ball(p0, 8, 2, NULL, 1, 3);
    CHECK_OK(lss_emcee_create(8, 2, &o, &e));
    CHECK_OK(lss_emcee_start(e, p0, gauss_lp, &g));
    CHECK_ERR(lss_emcee_run(e, 100, gauss_lp, &g), LSS_ERR_STATE);
    CHECK(e->nsteps == 30, "progress callback stopped the run after 30 steps (%lld)", (long long)e->nsteps);
    {
        double *f = NULL;
        int64_t nf;
        CHECK_OK(lss_emcee_flat(e, 10, 5, &f, &nf));
        CHECK(nf == 4 * 8, "burn 10, thin 5 of 30 steps x 8 walkers: %lld rows", (long long)nf);
        CHECK(f && memcmp(f, e->chain + 10 * 16, sizeof(double) * 16) == 0 && memcmp(f + 16, e->chain + 15 * 16, sizeof(double) * 16) == 0,
              "thinned rows are steps 10, 15, ...");
        free(f);
        CHECK_ERR(lss_emcee_flat(e, 30, 1, &f, &nf), LSS_ERR_RANGE);
        {
            int64_t burn, thin;
            CHECK_ERR(lss_emcee_suggest(e, &burn, &thin, NULL), LSS_ERR_RANGE); /* 30 steps: too short */
            CHECK(burn >= 2 && thin >= 1, "suggestion still filled (%lld, %lld)", (long long)burn, (long long)thin);
        }
    }
    lss_emcee_free(e);
}

/* ---------------------------------------------------------------- HMC */
static void test_hmc(void) {
    gauss_t g;
    lss_hmc_opts o;
    lss_hmc_stats st;
    int C = 8, c;
    int64_t ns = asan_mode() ? 1500 : 4000;
    double x0[8 * 5], im[5], *smp;
    make_gauss5(&g);
    memset(&o, 0, sizeof o);
    o.nwarmup = 1000;
    o.nsamples = ns;
    o.nleapfrog = 20;
    o.adapt_mass = 1;
    o.seed = 5;
    memset(&st, 0, sizeof st);
    st.inv_mass = im;
    ball(x0, C, 5, g.mu, 1.0, 12);
    smp = (double *)malloc(sizeof(double) * (size_t)ns * C * 5);
    CHECK_OK(lss_hmc_run(C, 5, x0, gauss_lpg, &g, &o, smp, NULL, &st));
    printf("  HMC: step %.3f, acceptance probability %.3f (target 0.8), accepted %.3f, divergent %lld, inv mass %.1f %.1f %.1f %.1f %.1f\n",
           st.step, st.accept_prob, st.accept_rate, (long long)st.ndivergent, im[0], im[1], im[2], im[3], im[4]);
    /* the adapted step hits the target on average; the step found by a 1000-iteration warm-up varies
     * from seed to seed, which moves the acceptance by up to ~0.05 (seen over 6 seeds): 0.07 */
    CHECK_CLOSE(st.accept_prob, 0.8, 0, 0.07, "HMC acceptance after adaptation");
    for (c = 0; c < 5; c++) CHECK_CLOSE(im[c], g.C[c * 5 + c], 0.35, 0, "adapted inverse mass ~ marginal variance");
    check_moments("HMC 5-D Gaussian", smp, ns, C, 5, g.mu, g.C, 3.0, 1);
    /* another target: the adaptation follows it */
    {
        lss_hmc_opts o2 = o;
        lss_hmc_stats st2;
        memset(&st2, 0, sizeof st2);
        o2.target_accept = 0.6;
        o2.nsamples = 1000;
        o2.seed = 6;
        CHECK_OK(lss_hmc_run(C, 5, x0, gauss_lpg, &g, &o2, smp, NULL, &st2));
        printf("  HMC target 0.6: step %.3f, acceptance probability %.3f\n", st2.step, st2.accept_prob);
        CHECK_CLOSE(st2.accept_prob, 0.6, 0, 0.07, "HMC acceptance after adaptation to 0.6");
        CHECK(st2.step > st.step, "a lower target gives a longer step (%.3f vs %.3f)", st2.step, st.step);
    }
    /* errors: start outside the prior, NaN start */
    {
        lss_prior pr;
        double lo[5] = {-100, -100, -100, -100, -100}, hi[5] = {100, 100, 100, 100, 100};
        lss_prior_init(&pr, 5, lo, hi);
        o.prior = &pr;
        x0[3] = 1000;
        CHECK_ERR(lss_hmc_run(C, 5, x0, gauss_lpg, &g, &o, smp, NULL, NULL), LSS_ERR_RANGE);
        CHECK(strstr(lss_last_error(), "outside the prior") != NULL, "message: %s", lss_last_error());
        x0[3] = NAN;
        o.prior = NULL;
        CHECK_ERR(lss_hmc_run(C, 5, x0, gauss_lpg, &g, &o, smp, NULL, NULL), LSS_ERR_NUMERIC);
        lss_prior_free(&pr);
    }
    free(smp);
}

/* ---------------------------------------------------------------- summaries */
static void test_summaries(void) {
    int64_t n = asan_mode() ? 400000 : 2000000, t;
    double *x = (double *)malloc(sizeof(double) * (size_t)n * 2), fom, a68, a95, corr[4];
    double sdet = sqrt(1.0 * 2.0 - 0.25), L10 = 0.5, L11 = sqrt(2.0 - 0.25);
    lss_param_stats s[2];
    lss_hist2_opts ho;
    lss_rng r;
    lss_rng_init(&r, 31, 0);
    for (t = 0; t < n; t++) {
        double a = lss_rng_normal(&r), b = lss_rng_normal(&r);
        x[2 * t] = 0.3 + a;
        x[2 * t + 1] = 0.8 + L10 * a + L11 * b;
    }
    CHECK_OK(lss_chain_stats(x, n, 2, s, corr));
    /* iid: errors sigma/sqrt(n) for the mean, ~sigma/sqrt(2n) for std, 1.25 sigma/sqrt(n) for the median */
    CHECK_CLOSE(s[0].mean, 0.3, 0, 5 / sqrt((double)n), "mean");
    CHECK_CLOSE(s[1].std, sqrt(2.0), 0, 5 * sqrt(2.0) / sqrt(2.0 * n), "std");
    CHECK_CLOSE(s[0].median, 0.3, 0, 6.3 / sqrt((double)n), "median");
    CHECK_CLOSE(s[0].hi68 - s[0].lo68, 2.0, 0, 0.01, "68% interval width = 2 sigma");
    CHECK_CLOSE(s[0].hi95 - s[0].lo95, 2 * 1.959963984540054, 0, 0.02, "95% interval width");
    CHECK_CLOSE(corr[1], 0.5 / sqrt(2.0), 0, 5 / sqrt((double)n), "correlation");
    CHECK_OK(lss_fom_det(x, n, 2, 0, 1, &fom));
    CHECK_REL(fom, 1 / sdet, 0.01, "FoM 1/sqrt(det Cov)");
    /* HPD area of a Gaussian: 7.159 sqrt(det C) (68%), 18.82 sqrt(det C) (95%): a 150 x 150 histogram
     * over +-5 sigma; per-bin Poisson noise at the 68% contour ~5%, the area error from it ~1% */
    memset(&ho, 0, sizeof ho);
    ho.bins = 150;
    ho.xlo = 0.3 - 5; ho.xhi = 0.3 + 5;
    ho.ylo = 0.8 - 5 * sqrt(2.0); ho.yhi = 0.8 + 5 * sqrt(2.0);
    CHECK_OK(lss_hpd_area(x, n, 2, 0, 1, &ho, &a68, &a95));
    printf("  HPD areas / sqrt(det C): 68%% %.4f (7.159), 95%% %.4f (18.82)\n", a68 / sdet, a95 / sdet);
    CHECK_REL(a68 / sdet, -2 * log(0.32) * 3.14159265358979323846, 0.03, "68% area of a Gaussian");
    CHECK_REL(a95 / sdet, -2 * log(0.05) * 3.14159265358979323846, 0.03, "95% area of a Gaussian");
    /* A non-Gaussian case with a known answer: p(x, y) = exp(-x - y) on x, y > 0. Its highest-density
     * regions are the triangles x + y <= t holding 1 - (1 + t) e^-t of the mass, so the 68% region has
     * (1 + t) e^-t = 0.32 (t = 2.3505) and area t^2 / 2 = 2.762 (a Gaussian approximation with the same
     * covariance would give 7.159). 200 x 200 bins over [0, 10]^2: the staircase along the boundary
     * and the Poisson noise of the level move the area by about 1%. */
    {
        double t68 = 2.0, aexp;
        int it;
        for (it = 0; it < 60; it++) t68 -= ((1 + t68) * exp(-t68) - 0.32) / (-t68 * exp(-t68));
        for (t = 0; t < n; t++) {
            x[2 * t] = -log(lss_rng_uniform(&r));
            x[2 * t + 1] = -log(lss_rng_uniform(&r));
        }
        memset(&ho, 0, sizeof ho);
        ho.bins = 200;
        ho.xlo = 0; ho.xhi = 10; ho.ylo = 0; ho.yhi = 10;
        CHECK_OK(lss_hpd_area(x, n, 2, 0, 1, &ho, &aexp, NULL));
        printf("  HPD 68%% area of exp(-x-y): %.4f (%.4f)\n", aexp, 0.5 * t68 * t68);
        CHECK_REL(aexp, 0.5 * t68 * t68, 0.03, "68% area of exp(-x - y)");
    }
    /* Smoothed histograms (lss_core.h's separable Gaussian): all samples in one cell of a 101 x 101 grid smoothed by
     * sigma = 2 cells give a Gaussian whose 68% region covers -2 ln(0.32) pi sigma^2 = 28.6 cells (the cell staircase
     * moves it by a few cells); an enormous sigma is clamped to the largest kernel and still succeeds. */
    {
        double pt[2 * 50] = {0}, area, big;
        int it;
        for (it = 0; it < 50; it++) { pt[2 * it] = 0.5; pt[2 * it + 1] = 0.5; }
        memset(&ho, 0, sizeof ho);
        ho.bins = 101; ho.xlo = 0; ho.xhi = 1; ho.ylo = 0; ho.yhi = 1; ho.smooth = 2;
        CHECK_OK(lss_hpd_area(pt, 50, 2, 0, 1, &ho, &area, NULL));
        CHECK_CLOSE(area * 101 * 101, -2 * log(0.32) * 3.14159265358979323846 * 4, 0.1, 0, "68% cells of a smoothed point");
        ho.smooth = 1e300;
        CHECK_OK(lss_hpd_area(pt, 50, 2, 0, 1, &ho, &big, NULL));
        CHECK(big > area && big <= 1.0, "68%% area with a clamped kernel: %g", big);
    }
    /* std ratio ("gain"): a chain scaled by 2 is twice as wide */
    {
        double *y = (double *)malloc(sizeof(double) * 2000), ratio[2];
        for (t = 0; t < 1000; t++) {
            y[2 * t] = 2 * x[2 * t];
            y[2 * t + 1] = 0.5 * x[2 * t + 1];
        }
        CHECK_OK(lss_std_ratio(y, 1000, x, 1000, 2, ratio));
        CHECK_CLOSE(ratio[0], 2, 1e-12, 0, "std ratio 2");
        CHECK_CLOSE(ratio[1], 0.5, 1e-12, 0, "std ratio 0.5");
        free(y);
    }
    /* split R-hat flags walkers stuck at different places */
    {
        int m = 4, k;
        int64_t nn = 1000;
        double *ch = (double *)malloc(sizeof(double) * (size_t)nn * m), rh;
        lss_rng_init(&r, 32, 0);
        for (t = 0; t < nn; t++)
            for (k = 0; k < m; k++) ch[t * m + k] = lss_rng_normal(&r) + (k == 0 ? 3 : 0);
        CHECK_OK(lss_rhat_split(ch, nn, m, 1, &rh));
        CHECK(rh > 1.3, "R-hat of a displaced walker: %g", rh);
        for (t = 0; t < nn; t++) ch[t * m] -= 3;
        CHECK_OK(lss_rhat_split(ch, nn, m, 1, &rh));
        CHECK(rh < 1.01, "R-hat of iid walkers: %g", rh);
        /* a drifting chain: the split halves disagree */
        for (t = 0; t < nn; t++)
            for (k = 0; k < m; k++) ch[t * m + k] += 4.0 * t / nn;
        CHECK_OK(lss_rhat_split(ch, nn, m, 1, &rh));
        CHECK(rh > 1.3, "split R-hat of drifting chains: %g", rh);
        free(ch);
    }
    free(x);
}

static void test_plots_and_files(void) {
    int64_t n[2] = {20000, 20000}, t;
    double *x[2];
    lss_rng r;
    lss_corner_opts co;
    const char *names[3] = {"Omega_m", "sigma_8", "A_IA"};
    const char *labels[2] = {"CNN", "PSD"};
    double truth[3] = {0.29, 0.71, 0.5};
    struct stat sb;
    int c;
    lss_rng_init(&r, 40, 0);
    for (c = 0; c < 2; c++) {
        x[c] = (double *)malloc(sizeof(double) * (size_t)n[c] * 3);
        for (t = 0; t < n[c]; t++) {
            double a = lss_rng_normal(&r), b = lss_rng_normal(&r), e = lss_rng_normal(&r), w = c ? 2.0 : 1.0;
            x[c][3 * t] = 0.29 + w * 0.02 * a;
            x[c][3 * t + 1] = 0.71 + w * 0.03 * (-0.8 * a + 0.6 * b);
            x[c][3 * t + 2] = 0.5 + w * 0.3 * e;
        }
    }
    memset(&co, 0, sizeof co);
    co.names = names;
    co.labels = labels;
    co.truth = truth;
    co.title = "test corner plot";
    CHECK_OK(lss_corner_png("build/test_infer_corner.png", 2, (const double *const *)x, n, 3, &co));
    CHECK(stat("build/test_infer_corner.png", &sb) == 0 && sb.st_size > 2000, "corner PNG written (%lld bytes)",
          (long long)sb.st_size);
    CHECK_OK(lss_chain_save("build/test_infer_chain.npy", x[0], n[0], 3, names));
    CHECK_OK(lss_chain_save("build/test_infer_chain.csv", x[0], 100, 3, names));
    {
        lss_array a;
        lss_csv cs;
        CHECK_OK(lss_npy_load("build/test_infer_chain.npy", &a));
        CHECK(a.ndim == 2 && a.shape[0] == n[0] && a.shape[1] == 3 && a.dtype == LSS_F64 &&
                  memcmp(a.data, x[0], sizeof(double) * 3 * (size_t)n[0]) == 0,
              "NPY chain round trip");
        lss_array_free(&a);
        CHECK_OK(lss_csv_read("build/test_infer_chain.csv", &cs));
        CHECK(cs.ncols == 3 && cs.nrows == 100 && lss_csv_col(&cs, "sigma_8") == 1, "CSV chain with header");
        if (cs.nrows == 100) CHECK_CLOSE(cs.data[99 * 3 + 2], x[0][99 * 3 + 2], 1e-8, 0, "CSV value");
        lss_csv_free(&cs);
    }
    free(x[0]);
    free(x[1]);
}


/* The report's numbers on constructed constraints: the reference twice as wide as the network on every mock, a
 * FoM ratio of 3, areas in the ratio 4; a mock not analysed by one of the two (NaN) is left out of the gains. */
static void test_deeplss_gains(void) {
    lss_constraint a[5], b[5];
    double g[LSS_DEEPLSS_NGAIN][3], f[2][3], ins[3 * 2] = {1, 0, 1, 1, NAN, 1}, frac, fk[2];
    int i, k;
    for (i = 0; i < 5; i++) {
        for (k = 0; k <= LSS_DEEPLSS_NPARAM; k++) { a[i].std[k] = 2.0 * (i + 1); b[i].std[k] = i + 1.0; }
        a[i].fom_det = 10.0 * (i + 1); b[i].fom_det = 30.0 * (i + 1);
        a[i].area68 = 4.0; b[i].area68 = 1.0;
    }
    b[4].std[0] = NAN;
    CHECK(lss_deeplss_gains(a, b, 5, g) == 4, "4 paired mocks");
    for (k = 0; k <= LSS_DEEPLSS_NPARAM; k++) CHECK(g[k][0] == 2 && g[k][1] == 2 && g[k][2] == 2, "std gain %d: %g", k, g[k][0]);
    CHECK(g[LSS_DEEPLSS_NPARAM + 1][0] == 3 && g[LSS_DEEPLSS_NPARAM + 2][0] == 4, "FoM gains %g, %g", g[LSS_DEEPLSS_NPARAM + 1][0],
          g[LSS_DEEPLSS_NPARAM + 2][0]);
    CHECK(lss_deeplss_fom(a, 5, f) == 5 && f[0][0] == 30 && fabs(f[0][1] - 16.4) < 1e-12 && f[1][0] == 0.25, "FoM median %g [%g], 1/area %g",
          f[0][0], f[0][1], f[1][0]);
    CHECK(lss_deeplss_gains(a, b, 0, g) == 0 && isnan(g[0][0]), "no mocks: NaN gains");
    CHECK(lss_deeplss_gains(NULL, b, 2, g) == LSS_ERR_ARG, "NULL reference refused");
    CHECK(lss_coverage(ins, 3, 2, &frac, fk) == 2 && frac == 0.8 && fk[0] == 1 && fk[1] == 2.0 / 3, "coverage %g", frac);
}

int main(void) {
    mkdir("build", 0755);
    RUN(test_norm_ppf);
    RUN(test_scalers);
    RUN(test_hull);
    RUN(test_svd);
    RUN(test_stretch_z);
    RUN(test_emcee_normal);
    RUN(test_emcee_gauss5);
    RUN(test_emcee_banana);
    RUN(test_emcee_bimodal);
    RUN(test_autocorr);
    RUN(test_prior_hull_sampling);
    RUN(test_emcee_errors);
    RUN(test_emcee_inf);
    RUN(test_emcee_progress);
    RUN(test_hmc);
    RUN(test_summaries);
    RUN(test_deeplss_gains);
    RUN(test_plots_and_files);
    LSS_TEST_END();
}
