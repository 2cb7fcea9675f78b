/* test_poisson_quantile.c - lss_poisson_quantile (the Poisson quantile function), lss_rng_poisson_inv (exact
 * Poisson draws from one uniform each) and the LSS_POISSON_INVERSE noise mode of lss_sim_observe.
 * The reference is independent of the library: the pmf by its recursion p(k+1) = p(k) m / (k+1) in long double
 * from a start far below the mean (0, or 40 standard deviations down), normalised by its own sum, with the lower
 * tail summed upwards and the upper tail downwards (relative error ~1e-17 in both tails). Fixed seeds; statistical
 * tolerances of 5 standard errors (or dof + 5 sqrt(2 dof) for chi-square). Under ASan (LSS_TEST_ASAN=1) only the
 * numbers of draws shrink. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "tests/lss_test.h"
#include <float.h>
#include <stdlib.h>

static int asan = 0;

/* ------------------------------------------------------------------ the long-double reference */
typedef struct {
    double m;
    long lo, n;            /* k = lo .. lo + n - 1 */
    long double *F, *S, *P; /* P(X <= k), P(X > k), P(X = k) */
} ref_cdf;

static int ref_build(ref_cdf *r, double m) {
    long i, hi;
    long double *w, W = 0, T = 0;
    r->m = m;
    r->lo = m > 1600 ? (long)floor(m - 40 * sqrt(m)) : 0;
    hi = (long)ceil(m + 40 * sqrt(m) + 200);
    r->n = hi - r->lo + 1;
    w = malloc(sizeof(long double) * (size_t)r->n);
    r->F = malloc(sizeof(long double) * (size_t)r->n);
    r->S = malloc(sizeof(long double) * (size_t)r->n);
    r->P = w;
    if (!w || !r->F || !r->S) return -1;
    w[0] = 1;
    for (i = 1; i < r->n; i++) w[i] = w[i - 1] * (long double)m / (long double)(r->lo + i);
    for (i = 0; i < r->n; i++) { W += w[i]; r->F[i] = W; }
    for (i = r->n - 1; i >= 0; i--) { r->S[i] = T; T += w[i]; }
    for (i = 0; i < r->n; i++) { r->F[i] /= W; r->S[i] /= W; w[i] /= W; }
    return 0;
}
static void ref_free(ref_cdf *r) { free(r->F); free(r->S); free(r->P); }
static long double ref_F(const ref_cdf *r, long k) { return k < r->lo ? 0 : k >= r->lo + r->n ? 1 : r->F[k - r->lo]; }
static long double ref_S(const ref_cdf *r, long k) { return k < r->lo ? 1 : k >= r->lo + r->n ? 0 : r->S[k - r->lo]; }

/* The reference quantile: lower tail (u <= 1/2) through F, upper tail through S and v = 1 - u (exact there). */
static long ref_quantile(const ref_cdf *r, double u) {
    long a = r->lo, b = r->lo + r->n - 1;
    if (u <= 0.5) {
        while (a < b) { long c = a + (b - a) / 2; if (ref_F(r, c) >= u) b = c; else a = c + 1; }
    } else {
        double v = 1 - u;
        while (a < b) { long c = a + (b - a) / 2; if (ref_S(r, c) <= v) b = c; else a = c + 1; }
    }
    return a;
}

/* Is k the quantile of u up to the double rounding of the CDF: F(k) >= u - d and F(k - 1) < u + d (in the upper
   tail S(k) <= v + d and S(k - 1) > v - d), d = tol u (v) but at least the smallest subnormal? */
static int within_rounding(const ref_cdf *r, double u, long k, double tol) {
    long double x = u <= 0.5 ? u : 1 - u, d = fmaxl(tol * x, 4.9406564584124654e-324L);
    if (k < 0) return 0;
    if (u <= 0.5) return ref_F(r, k) >= x - d && (k == 0 || ref_F(r, k - 1) < x + d);
    return ref_S(r, k) <= x + d && (k == 0 || ref_S(r, k - 1) > x - d);
}

/* ------------------------------------------------------------------ (a) exact against the reference */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_exact(void) {
    static const double means[7] = {0.3, 4, 29.9, 30.1, 220, 5000, 1e6};
    const double tol = 1e-13; /* u (or 1 - u) closer than this (relative) to CDF values: any side accepted */
    int t, i, total = 0;
    for (t = 0; t < 7; t++) {
        ref_cdf r;
        double m = means[t], us[256], tail_err = 0;
        int nu = 0, bad = 0, ties = 0, nonmono = 0, strict_end;
        char tie_ok[256] = {0};
        lss_rng g;
        if (ref_build(&r, m) != 0) { CHECK(0, "reference allocation"); return; }
        lss_rng_init(&g, 2024, (uint64_t)t);
        for (i = 0; i < 140; i++) us[nu++] = lss_rng_uniform(&g);
        us[nu++] = ldexp(1, -53); us[nu++] = ldexp(1, -60); us[nu++] = 1e-300; us[nu++] = 2.3e-308;
        us[nu++] = 1e-20; us[nu++] = 1e-10; us[nu++] = 1e-5;
        us[nu++] = 1 - ldexp(1, -53); us[nu++] = 1 - ldexp(1, -52); us[nu++] = 1 - 1e-15; us[nu++] = 1 - 1e-10;
        us[nu++] = 0.999; us[nu++] = 0.5; us[nu++] = nextafter(0.5, 1); us[nu++] = nextafter(0.5, 0);
        strict_end = nu;
        us[nu++] = DBL_MIN; us[nu++] = 4.9e-324; /* subnormal CDF values: ties within the smallest subnormal */
        /* CDF values themselves (ties, either side) and values 1e-12 (relative) on either side (exact) */
        for (i = 0; i < 14; i++) {
            static const double qs[14] = {1e-14, 1e-9, 1e-4, 0.01, 0.1, 0.3, 0.49, 0.51, 0.7, 0.9, 0.99, 1 - 1e-4,
                                          1 - 1e-8, 1 - 1e-12};
            long k = ref_quantile(&r, qs[i]);
            if (qs[i] <= 0.5) {
                double f = (double)ref_F(&r, k);
                tie_ok[nu] = 1;
                us[nu++] = f;
                us[nu++] = f * (1 - 1e-12);
                us[nu++] = f * (1 + 1e-12);
            } else {
                double s = (double)ref_S(&r, k);
                tie_ok[nu] = 1;
                us[nu++] = 1 - s;
                if (s > 1e-3) { us[nu++] = 1 - s * (1 - 1e-12); us[nu++] = 1 - s * (1 + 1e-12); }
            }
        }
        for (i = 0; i < nu; i++) {
            double u = us[i];
            long q = ref_quantile(&r, u);
            int64_t got = lss_poisson_quantile(u, m);
            if (got == q) continue;
            if ((tie_ok[i] || (i >= strict_end && i < strict_end + 2)) && within_rounding(&r, u, (long)got, tol)) {
                ties++;
                continue;
            }
            if (bad++ < 5)
                printf("  mean %g u %.17g: quantile %lld, reference %ld\n", m, u, (long long)got, q);
        }
        /* monotone in u over these values */
        qsort(us, (size_t)nu, sizeof(double), cmp_double);
        for (i = 1; i < nu; i++)
            if (lss_poisson_quantile(us[i], m) < lss_poisson_quantile(us[i - 1], m)) nonmono++;
        /* the internal tails against the reference (the smaller tail, relative) around the quantiles */
        for (i = 0; i < 40; i++) {
            double lo, hi, pk, e;
            long k = ref_quantile(&r, (i + 0.5) / 40.0);
            if (i == 0) k = ref_quantile(&r, 1e-15);
            if (i == 39) k = ref_quantile(&r, 1 - 1e-15);
            lss__poisson_tails((double)k, m, &lo, &hi, &pk);
            e = ref_F(&r, k) < ref_S(&r, k) ? (double)fabsl((lo - ref_F(&r, k)) / ref_F(&r, k))
                                             : (double)fabsl((hi - ref_S(&r, k)) / ref_S(&r, k));
            e = fmax(e, (double)fabsl((pk - r.P[k - r.lo]) / r.P[k - r.lo]));
            if (e > tail_err) tail_err = e;
        }
        printf("  mean %-7g %d u values: %d differ from the reference, %d ties (u at a CDF value); tails and pmf "
               "within %.2g relative\n", m, nu, bad, ties, tail_err);
        CHECK(bad == 0, "mean %g: %d of %d quantiles differ from the long-double reference", m, bad, nu);
        CHECK(nonmono == 0, "mean %g: quantile non-decreasing in u (%d violations)", m, nonmono);
        CHECK(tail_err < 1e-13, "mean %g: incomplete gamma tails and pmf relative error %.3g", m, tail_err);
        total += nu;
        ref_free(&r);
    }
    printf("  %d quantiles checked\n", total);
}

/* ------------------------------------------------------------------ (b) monotone in the mean and in u */
static void test_monotone(void) {
    double us[50], prev[50];
    int i, j, bad_m = 0, bad_u = 0, neg = 0, nm = 0;
    lss_rng g;
    lss_rng_init(&g, 7, 1);
    for (j = 0; j < 44; j++) us[j] = lss_rng_uniform(&g);
    us[44] = ldexp(1, -53); us[45] = 1 - ldexp(1, -53); us[46] = 0.5; us[47] = 1e-12; us[48] = 1 - 1e-12;
    us[49] = 0.9999;
    qsort(us, 50, sizeof(double), cmp_double);
    for (j = 0; j < 50; j++) prev[j] = -1;
    for (i = 0;; i++) {
        double m = 1 + 0.37 * i;
        int64_t last = -1;
        if (m > 1000) break;
        nm++;
        for (j = 0; j < 50; j++) {
            int64_t q = lss_poisson_quantile(us[j], m);
            if (q < 0) neg++;
            if ((double)q < prev[j]) bad_m++;
            if (q < last) bad_u++;
            prev[j] = (double)q;
            last = q;
        }
    }
    printf("  %d means x 50 u: %d decreases with the mean, %d with u\n", nm, bad_m, bad_u);
    CHECK(neg == 0, "no failures on the grid (%d)", neg);
    CHECK(bad_m == 0, "non-decreasing in the mean for fixed u (%d violations)", bad_m);
    CHECK(bad_u == 0, "non-decreasing in u for a fixed mean (%d violations)", bad_u);
}

/* ------------------------------------------------------------------ (c) the distribution of the draws */
static void test_draws(void) {
    static const double means[2] = {7, 220};
    int t, n = asan ? 50000 : 200000;
    for (t = 0; t < 2; t++) {
        double m = means[t], s1 = 0, s2 = 0, chi2 = 0, e = 0, var, se_m, se_v;
        long *cnt, i, kmax, o = 0;
        int dof = -1, neg = 0;
        ref_cdf r;
        lss_rng g;
        if (ref_build(&r, m) != 0) { CHECK(0, "reference allocation"); return; }
        kmax = r.lo + r.n - 1;
        cnt = calloc((size_t)(kmax + 1), sizeof(long));
        lss_rng_init(&g, 99, (uint64_t)t);
        for (i = 0; i < n; i++) {
            int64_t x = lss_rng_poisson_inv(&g, m);
            if (x < 0 || x > kmax) { neg++; continue; }
            cnt[x]++;
            s1 += (double)x;
            s2 += (double)x * (double)x;
        }
        CHECK(neg == 0, "mean %g: every draw in range (%d not)", m, neg);
        CHECK(g.counter == (uint64_t)n / 2 && g.pos == 4, "mean %g: one uniform per draw (%llu blocks for %d draws)", m,
              (unsigned long long)g.counter, n);
        /* chi-square over bins merged left to right until the expected count is >= 20 (the rest joins the last);
           the reference starts at k = 0 for these means */
        for (i = 0; i <= kmax; i++) {
            e += (double)(r.P[i - r.lo] * n);
            o += cnt[i];
            if (e >= 20 && (double)(ref_S(&r, i) * n) >= 20) {
                chi2 += (o - e) * (o - e) / e;
                dof++;
                e = 0;
                o = 0;
            }
        }
        chi2 += e > 0 ? (o - e) * (o - e) / e : 0;
        dof++;
        s1 /= n;
        var = s2 / n - s1 * s1;
        se_m = sqrt(m / n);
        se_v = sqrt((2 * m * m + m) / n);
        printf("  mean %g: %d draws, chi2 %.1f for %d dof (limit %.1f), mean %.4f (se %.4f), variance %.3f (se %.3f)\n",
               m, n, chi2, dof, dof + 5 * sqrt(2.0 * dof), s1, se_m, var, se_v);
        CHECK(chi2 < dof + 5 * sqrt(2.0 * dof), "mean %g: chi2 %.1f for %d dof", m, chi2, dof);
        CHECK_CLOSE(s1, m, 0, 5 * se_m, "mean of the draws");
        CHECK_CLOSE(var, m, 0, 5 * se_v, "variance of the draws");
        free(cnt);
        ref_free(&r);
    }
}

/* ------------------------------------------------------------------ (d) common random numbers */
static void test_smoothness(void) {
    const double m = 220, m2 = 220 * (1 + 1e-3);
    int i, n = asan ? 20000 : 100000, chg = 0, down = 0, jump2 = 0, chg_seq = 0, chg_reset = 0;
    double expect = 0, frac, se;
    ref_cdf a, b;
    lss_rng g, g1, g2;
    long k;
    if (ref_build(&a, m) != 0 || ref_build(&b, m2) != 0) { CHECK(0, "reference allocation"); return; }
    /* P(q(u, m) != q(u, m2)) = 1 - sum_k P(q = k = q2) = 1 - sum_k max(0, F2(k) - F(k - 1)), F2 <= F */
    for (k = 0; k < a.n + 10; k++) {
        long double x = ref_F(&b, k) - (k > 0 ? ref_F(&a, k - 1) : 0);
        if (x > 0) expect += (double)x;
    }
    expect = 1 - expect;
    lss_rng_init(&g, 5, 0);
    lss_rng_init(&g1, 5, 1);
    lss_rng_init(&g2, 5, 1);
    for (i = 0; i < n; i++) {
        double u = lss_rng_uniform(&g);
        int64_t q1 = lss_poisson_quantile(u, m), q2 = lss_poisson_quantile(u, m2);
        if (q2 != q1) chg++;
        if (q2 < q1) down++;
        if (q2 > q1 + 1) jump2++;
        /* the rejection sampler over one stream (a map): the draws fall out of step after the first change */
        if (lss_rng_poisson(&g1, m) != lss_rng_poisson(&g2, m2)) chg_seq++;
        /* and with its stream reset for every draw */
        {
            lss_rng h1, h2;
            lss_rng_init(&h1, 6, (uint64_t)i);
            h2 = h1;
            if (lss_rng_poisson(&h1, m) != lss_rng_poisson(&h2, m2)) chg_reset++;
        }
    }
    frac = (double)chg / n;
    se = sqrt(expect * (1 - expect) / n);
    printf("  mean 220 -> 220.22 with common random numbers: inversion changes %.4f of the counts (expected %.4f,"
           " all by +1: %d down, %d by more); lss_rng_poisson over one stream %.4f, with a stream reset per draw %.4f\n",
           frac, expect, down, jump2, (double)chg_seq / n, (double)chg_reset / n);
    CHECK(fabs(frac - expect) < 5 * se, "changed fraction %.4f, expected %.4f (se %.4f)", frac, expect, se);
    CHECK(frac > 0 && frac < 0.25, "changed fraction %.4f about the change of the mean (0.22)", frac);
    CHECK(down == 0 && jump2 == 0, "counts move up by one only (%d down, %d by 2 or more)", down, jump2);
    CHECK((double)chg_seq / n > 0.9, "one-stream rejection sampler decorrelates (%.4f)", (double)chg_seq / n);
    /* the draws of lss_rng_poisson_inv are the quantiles of the stream's uniforms */
    {
        lss_rng h1, h2;
        int same = 1;
        lss_rng_init(&h1, 8, 3);
        h2 = h1;
        for (i = 0; i < 1000; i++)
            same &= lss_rng_poisson_inv(&h1, 3.7 + i) == lss_poisson_quantile(lss_rng_uniform(&h2), 3.7 + i);
        CHECK(same, "lss_rng_poisson_inv = lss_poisson_quantile(lss_rng_uniform)");
    }
    ref_free(&a);
    ref_free(&b);
}

/* ------------------------------------------------------------------ bad input and edge cases */
static void test_edges(void) {
    lss_rng g, h;
    CHECK(lss_poisson_quantile(0.5, NAN) == -1, "NaN mean");
    CHECK(lss_poisson_quantile(0.5, -1) == -1, "negative mean");
    CHECK(lss_poisson_quantile(0.5, -0.0) == 0, "mean -0");
    CHECK(lss_poisson_quantile(0.5, INFINITY) == -1, "infinite mean");
    CHECK(lss_poisson_quantile(0.5, 1.0000001e15) == -1, "mean above 1e15");
    CHECK(lss_poisson_quantile(1, 3) == -1, "u = 1");
    CHECK(lss_poisson_quantile(-1e-300, 3) == -1, "negative u");
    CHECK(lss_poisson_quantile(NAN, 3) == -1, "NaN u");
    CHECK(lss_poisson_quantile(INFINITY, 3) == -1, "infinite u");
    CHECK(lss_poisson_quantile(0, 3) == 0 && lss_poisson_quantile(0, 1e9) == 0, "u = 0 gives 0");
    CHECK(lss_poisson_quantile(0.999, 0) == 0, "mean 0 gives 0");
    CHECK(lss_poisson_quantile(0.5, 1e-300) == 0 && lss_poisson_quantile(1 - ldexp(1, -53), 4.9e-324) == 0,
          "tiny means");
    CHECK(lss_poisson_quantile(1 - ldexp(1, -53), 1e-8) == 1, "mean 1e-8, u = 1 - 2^-53: P(X > 1) = 5e-17 <= 2^-53");
    CHECK(lss_poisson_quantile(nextafter(exp(-3.0), 0), 3) == 0 && lss_poisson_quantile(nextafter(exp(-3.0), 1), 3) == 1,
          "around F(0) = e^-3");
    /* the far ends of the range of means (the quantiles within a few standard deviations of the mean) */
    {
        double ms[3] = {1e9, 1e12, 1e15}, t0 = lss_time_now();
        int i, ok = 1;
        for (i = 0; i < (asan ? 2 : 3); i++) {
            int64_t q1 = lss_poisson_quantile(0.5, ms[i]), q2 = lss_poisson_quantile(0.9, ms[i]);
            double z = ((double)q2 - ms[i]) / sqrt(ms[i]);
            ok &= q1 >= (int64_t)ms[i] - 1 && q1 <= (int64_t)ms[i] + 1 && fabs(z - 1.2816) < 0.01;
            if (!ok) printf("  mean %g: median %lld, 0.9 quantile at %.4f sd\n", ms[i], (long long)q1, z);
        }
        printf("  medians and 0.9 quantiles at means 1e9, 1e12%s: %.2f s\n", asan ? "" : ", 1e15", lss_time_now() - t0);
        CHECK(ok, "large means: median within 1 of the mean, 0.9 quantile at 1.2816 sd");
    }
    lss_rng_init(&g, 1, 1);
    h = g;
    CHECK(lss_rng_poisson_inv(&g, NAN) == -1, "lss_rng_poisson_inv NaN mean");
    lss_rng_uniform(&h);
    CHECK(g.counter == h.counter && g.pos == h.pos, "a failed draw still uses its one uniform");
}

/* ------------------------------------------------------------------ (e) lss_sim_observe, LSS_POISSON_INVERSE */
static void test_observe(void) {
    lss_params p, q;
    lss_cosmo *c = NULL;
    lss_sim *s = NULL;
    lss_sim_work *w = NULL;
    lss_sim_opts o;
    lss_sim_info info;
    lss_noise_opts no, no2;
    lss_nz *bins = NULL;
    int nb = 0, k, nrep = asan ? 4 : 16, dn = 0, up1 = 0, more = 0, chg_exact = 0;
    float *zero, *m, *m2, *c1;
    size_t nc, i;
    double nbar, sm = 0, s2 = 0, n = 0, se, d;
    lss_params_fiducial(&p);
    if (lss_nz_builtin("deeplss", &bins, &nb) != LSS_OK || lss_cosmo_create(&p, &c) != LSS_OK) {
        CHECK(0, "setup: %s", lss_last_error());
        return;
    }
    memset(&o, 0, sizeof o);
    o.nside = 16; o.pad = 4; o.r_gc = 0;
    CHECK_OK(lss_sim_create(c, bins, nb, &o, &s));
    if (!s || lss_sim_work_create(s, &w) != LSS_OK) { CHECK(0, "sim"); lss_sim_free(s); lss_cosmo_free(c); return; }
    lss_sim_get_info(s, &info);
    nc = (size_t)nb * 16 * 16;
    zero = calloc(lss_sim_field_size(s), sizeof(float));
    m = malloc(sizeof(float) * lss_sim_obs_size(s));
    m2 = malloc(sizeof(float) * lss_sim_obs_size(s));
    c1 = malloc(sizeof(float) * nc);
    q = p;
    q.r_g = 1; /* a flat field: every pixel's rate is nbar */
    memset(&no, 0, sizeof no);
    no.poisson = LSS_POISSON_INVERSE;
    no.ngal_arcmin2 = 2.5;
    nbar = 2.5 * info.pixel_arcmin * info.pixel_arcmin;
    for (k = 0; k < nrep; k++) {
        const float *cn;
        CHECK_OK(lss_sim_observe(s, w, zero, &q, &no, 21, (uint64_t)k, m));
        cn = lss_sim_work_counts(w);
        for (i = 0; i < nc; i++) { sm += cn[i]; s2 += (double)cn[i] * cn[i]; n++; }
    }
    sm /= n;
    s2 = s2 / n - sm * sm;
    se = sqrt(nbar / n);
    printf("  LSS_POISSON_INVERSE counts: mean %.4f (nbar %.4f, se %.4f), variance %.3f over %.0f pixels\n", sm, nbar, se,
           s2, n);
    CHECK_CLOSE(sm, nbar, 0, 5 * se, "count mean = nbar");
    CHECK_CLOSE(s2, nbar, 0, 5 * sqrt((2 * nbar * nbar + nbar) / n), "count variance = nbar");
    /* common random numbers through the simulator: n_gal up by 0.1% moves a count by +1 in about 5.5% of the
       pixels (the rate moves by 0.055), none down; the exact sampler reshuffles most of them */
    CHECK_OK(lss_sim_observe(s, w, zero, &q, &no, 21, 0, m));
    memcpy(c1, lss_sim_work_counts(w), sizeof(float) * nc);
    no2 = no;
    no2.ngal_arcmin2 = 2.5 * 1.001;
    CHECK_OK(lss_sim_observe(s, w, zero, &q, &no2, 21, 0, m2));
    for (i = 0; i < nc; i++) {
        d = lss_sim_work_counts(w)[i] - c1[i];
        if (d < 0) dn++;
        else if (d == 1) up1++;
        else if (d > 1) more++;
    }
    {
        lss_noise_opts ne = no, ne2 = no2;
        ne.poisson = ne2.poisson = LSS_POISSON_EXACT;
        CHECK_OK(lss_sim_observe(s, w, zero, &q, &ne, 21, 0, m));
        memcpy(c1, lss_sim_work_counts(w), sizeof(float) * nc);
        CHECK_OK(lss_sim_observe(s, w, zero, &q, &ne2, 21, 0, m2));
        for (i = 0; i < nc; i++) chg_exact += lss_sim_work_counts(w)[i] != c1[i];
    }
    printf("  n_gal +0.1%%: %d of %zu counts up by one, %d down, %d by more (expected ~%.0f up); exact sampler: %d "
           "changed\n", up1, nc, dn, more, 0.001 * nbar * nc, chg_exact);
    CHECK(dn == 0 && more == 0, "counts only move up by one (%d down, %d more)", dn, more);
    CHECK(up1 > 0 && up1 < 0.15 * nc, "a few counts move (%d of %zu)", up1, nc);
    CHECK(chg_exact > 0.5 * nc, "the exact sampler reshuffles the map (%d of %zu)", chg_exact, nc);
    /* modes outside the enum are refused */
    no.poisson = 4;
    CHECK_ERR(lss_sim_observe(s, w, zero, &q, &no, 21, 0, m), LSS_ERR_ARG);
    no.poisson = -1;
    CHECK_ERR(lss_sim_observe(s, w, zero, &q, &no, 21, 0, m), LSS_ERR_ARG);
    free(zero); free(m); free(m2); free(c1);
    lss_sim_work_free(w);
    lss_sim_free(s);
    lss_cosmo_free(c);
    lss_nz_free(bins, nb);
}

int main(void) {
    const char *e = getenv("LSS_TEST_ASAN");
    asan = e && atoi(e) == 1;
    RUN(test_exact);
    RUN(test_monotone);
    RUN(test_draws);
    RUN(test_smoothness);
    RUN(test_edges);
    RUN(test_observe);
    LSS_TEST_END();
}
