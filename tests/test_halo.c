/* Tests of the halo-model convergence of lss_massmap.h (lss_mm_halo_*): the projected truncated NFW profile and its
 * Fourier transform against direct quadrature of the 3-D profile, sigma(R = 8 Mpc/h) against sigma_8, the normalisation
 * of the Sheth-Tormen mass function and bias through the whole chain mass -> sigma -> nu, mass conservation of the
 * painting, determinism, the non-Gaussianity of the maps against the lognormal mocks, their power spectrum against the
 * Halofit theory, mocks and their files, and bad options. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Gauss-Legendre 10-point nodes on [-1, 1] */
static const double glx[10] = {-0.9739065285171717, -0.8650633666889845, -0.6794095682990244, -0.4333953941292472, -0.1488743389816312,
                               0.1488743389816312,  0.4333953941292472,  0.6794095682990244,  0.8650633666889845,  0.9739065285171717};
static const double glw[10] = {0.0666713443086881, 0.1494513491505806, 0.2190863625159820, 0.2692667193099963, 0.2955242247147529,
                               0.2955242247147529, 0.2692667193099963, 0.2190863625159820, 0.1494513491505806, 0.0666713443086881};
/* composite Gauss-Legendre of f on [a, b] with n panels */
static double gl(double (*f)(double, const double *), const double *par, double a, double b, int n) {
    double s = 0, h = (b - a) / n;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 10; k++) s += 0.5 * h * glw[k] * f(a + (i + 0.5) * h + 0.5 * h * glx[k], par);
    return s;
}
/* line of sight through the 3-D NFW truncated at c: t = x sinh(v), s = x cosh(v): dt / (s (1 + s)^2) = dv / (1 + s)^2 */
static double los_integrand(double v, const double *p) {
    double s = p[0] * cosh(v);
    return 1.0 / ((1 + s) * (1 + s));
}
static double los_f(double x, double c) {
    double par[1] = {x};
    return gl(los_integrand, par, 0.0, asinh(sqrt(c * c - x * x) / x), 400);
}
/* 2 pi R Sigma: x^2 F(x) per d ln x, and near the edge x = c - s^2: 2 s x F ds */
static double mass_in_lnx(double lx, const double *p) {
    double x = exp(lx);
    return x * x * lss_mm_halo_tnfw_f(x, p[0]);
}
static double mass_edge(double s, const double *p) {
    double x = p[0] - s * s;
    return 2 * s * x * lss_mm_halo_tnfw_f(x, p[0]);
}
/* Fourier transform of the truncated NFW: f_c int_0^c x / (1 + x)^2 sin(K x) / (K x) dx */
static double uk_integrand(double x, const double *p) { return x / ((1 + x) * (1 + x)) * sin(p[1] * x) / (p[1] * x); }

static void test_profile(void) {
    const double cs[2] = {4.0, 9.5}, xs[10] = {1e-3, 0.05, 0.3, 0.7, 0.99, 0.99995, 1.0001, 1.3, 2.5, 3.9};
    for (int ic = 0; ic < 2; ic++) {
        double c = cs[ic], fc = 1.0 / (log(1 + c) - c / (1 + c)), worst = 0;
        for (int i = 0; i < 10; i++) {
            double a = lss_mm_halo_tnfw_f(xs[i], c), b = los_f(xs[i], c);
            worst = fmax(worst, fabs(a / b - 1));
            CHECK_REL(a, b, 1e-6, "projected truncated NFW F(x, c) against the line-of-sight integral of the 3-D profile");
        }
        printf("  c = %g: largest relative difference of F %.2e\n", c, worst);
        CHECK(lss_mm_halo_tnfw_f(c * 1.0001, c) == 0.0, "nothing beyond the truncation radius");
        /* cylinder mass inside the truncation radius = M200: int_0^c x F dx = 1 / f_c */
        double p[1] = {c};
        double mcyl = gl(mass_in_lnx, p, log(1e-12), log(0.5 * c), 400) + gl(mass_edge, p, 0.0, sqrt(0.5 * c), 200);
        CHECK_REL(mcyl * fc, 1.0, 1e-6, "projected mass inside r200 / M200");
        const double ks[5] = {0.01, 0.3, 1.7, 4.5, 25.0};
        for (int i = 0; i < 5; i++) {
            double q[2] = {c, ks[i]};
            double num = fc * gl(uk_integrand, q, 0.0, c, 2000);
            CHECK_CLOSE(lss_mm_halo_tnfw_u(ks[i], c), num, 1e-6, 1e-9, "u(k r_s) against the Fourier integral of the 3-D profile");
        }
    }
    CHECK_CLOSE(lss_mm_halo_concentration(2e12, 0.0), 10.14, 1e-12, 0, "Duffy et al. 2008 c200m at the pivot mass");
    CHECK_REL(lss_mm_halo_concentration(2e14, 1.0), 10.14 * pow(100.0, -0.081) * pow(2.0, -1.01), 1e-12, "Duffy c200m(M, z)");
}

static double st_f_lnnu(double lnu, const double *p) { (void)p; return lss_mm_halo_st_f(exp(lnu)); }
static double st_bf_lnnu(double lnu, const double *p) {
    (void)p;
    double nu = exp(lnu), q = 0.707 * nu * nu;
    double b = 1 + (q - 1) / 1.686 + 2 * 0.3 / (1.686 * (1 + pow(q, 0.3)));
    return b * lss_mm_halo_st_f(nu);
}
static const lss_mm_halo_model *g_model;
static double mfrac_lnm(double lnm, const double *p) {
    double mass = exp(lnm);
    return mass * lss_mm_halo_dndlnm(g_model, mass, p[0]) / lss_mm_halo_rho_m(g_model);
}
static double bfrac_lnm(double lnm, const double *p) {
    double mass = exp(lnm);
    return mass * lss_mm_halo_dndlnm(g_model, mass, p[0]) * lss_mm_halo_bias(g_model, mass, p[0]) / lss_mm_halo_rho_m(g_model);
}

static void test_mass_function(void) {
    lss_mm_halo_opts o = {0};
    lss_mm_halo_model *m = NULL;
    lss_params par;
    o.size = 16;
    o.nshells = 4;
    o.nmass = 8;
    CHECK_OK(lss_mm_halo_create(&o, &m));
    if (!m) return;
    g_model = m;
    lss_mm_params_planck15(&par);
    double rho = 2.77536627e11 * par.omega_m, m8 = 4.0 / 3.0 * M_PI * 512.0 * rho, d;
    CHECK_REL(lss_mm_halo_rho_m(m), rho, 1e-12, "mean matter density");
    /* sigma(R = 8 Mpc/h, z = 0) = sigma_8: the P_lin table is normalised by lss_maps.h's own integral; the tolerance
       covers the two quadratures (1e-4 each) */
    CHECK_REL(lss_mm_halo_sigma(m, m8, 0.0, NULL), par.sigma_8, 5e-4, "sigma(M(R = 8 Mpc/h)) = sigma_8");
    double s0 = lss_mm_halo_sigma(m, 1e13, 0.0, &d), s1 = lss_mm_halo_sigma(m, 1e13 * 1.001, 0.0, NULL), s2 = lss_mm_halo_sigma(m, 1e13 / 1.001, 0.0, NULL);
    CHECK_REL(d, (log(s1) - log(s2)) / (2 * log(1.001)), 1e-5, "dln sigma / dln M against a finite difference");
    CHECK(lss_mm_halo_sigma(m, 1e13, 1.0, NULL) < s0, "sigma(M, z) falls with z (growth)");
    /* Sheth-Tormen normalisation, f and b f per ln nu: 1 (A = 0.3222 is the 4-digit rounding of 0.32218, 1.3e-4) */
    double fn = gl(st_f_lnnu, NULL, log(1e-12), log(10.0), 400), bn = gl(st_bf_lnnu, NULL, log(1e-12), log(10.0), 400);
    CHECK_CLOSE(fn, 1.0, 0, 3e-4, "int nu f(nu) dln nu = 1 (Sheth-Tormen)");
    CHECK_CLOSE(bn, 1.0, 0, 3e-4, "int b nu f(nu) dln nu = 1 (the bias of the peak-background split)");
    /* the whole chain M -> sigma(M, z) -> nu -> dn/dlnM: int M dn/dlnM dlnM / rho_m over masses 1e3 .. 1e17 plus the
       part of int f dln nu below nu(1e3) = 1 (the mass integral alone converges only as nu^0.4) */
    const double zs[2] = {0.0, 1.0};
    for (int i = 0; i < 2; i++) {
        double p[1] = {zs[i]};
        double nulo = 1.686 / lss_mm_halo_sigma(m, 1e3, zs[i], NULL);
        double part = gl(mfrac_lnm, p, log(1e3), log(1e17), 300);
        double tail = gl(st_f_lnnu, NULL, log(1e-14), log(nulo), 200);
        printf("  z = %g: mass in halos above 1e3 Msun/h %.6f, below %.6f\n", zs[i], part, tail);
        CHECK_CLOSE(part + tail, fn, 0, 1e-4, "int M n(M) dM / rho_m + the tail below = int f dln nu");
        double bpart = gl(bfrac_lnm, p, log(1e3), log(1e17), 300), btail = gl(st_bf_lnnu, NULL, log(1e-14), log(nulo), 200);
        CHECK_CLOSE(bpart + btail, bn, 0, 1e-4, "int M n b dM / rho_m + tail = int b f dln nu");
    }
    lss_mm_halo_free(m);
}


static double dsum(int64_t n, const float *a) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i];
    return s;
}

static void test_paint(void) {
    lss_mm_halo_opts o = {0};
    lss_mm_halo_model *m = NULL;
    lss_cosmo *c = NULL;
    lss_params par;
    const int n = 160;
    float *k = (float *)calloc((size_t)n * n, sizeof(float));
    double tot, raw;
    o.size = 16;
    o.nshells = 4;
    o.nmass = 8;
    CHECK_OK(lss_mm_halo_create(&o, &m));
    lss_mm_params_planck15(&par);
    CHECK_OK(lss_cosmo_create(&par, &c));
    if (!m || !c || !k) return;
    /* a cluster well inside the map: the stamp holds the analytic total (float sums: 1e-5); the sub-pixel quadrature
       before the rescaling within 1% for r_s of many pixels */
    CHECK_OK(lss_mm_halo_paint(m, 3e14, 0.3, 80.3, 79.6, n, n, k, &tot, &raw));
    CHECK_REL(dsum((int64_t)n * n, k), tot, 1e-5, "painted mass = W M / (rho_m chi^2 Omega_pix) (cluster)");
    CHECK_CLOSE(raw, 1.0, 0, 1e-2, "sub-pixel quadrature of a resolved halo before rescaling");
    /* the profile: a pixel 12 pixels from the centre against the analytic kappa at its centre (r_s is 4.4 pixels: the
       pixel average of the profile differs from its central value by about F'' / (24 F) ~ 1e-3 of it) */
    {
        double z = 0.3, chi = lss_cosmo_chi(c, z), cc = lss_mm_halo_concentration(3e14, z);
        double rt = lss_mm_halo_r200m(m, 3e14) / chi / (0.29 * M_PI / 180 / 60), rs = rt / cc, fc = 1 / (log(1 + cc) - cc / (1 + cc));
        double dx = 92.5 - 80.3, dy = 79.5 - 79.6, r = sqrt(dx * dx + dy * dy);
        double want = tot * fc * lss_mm_halo_tnfw_f(r / rs, cc) / (2 * M_PI * rs * rs);
        printf("  cluster: r200m %.1f pixels, r_s %.1f pixels, total %.4g\n", rt, rs, tot);
        CHECK_REL(k[79 * n + 92], want, 5e-3, "pixel value against the analytic truncated-NFW convergence");
        CHECK(k[79 * n + 80 + (int)ceil(rt) + 2] == 0.0f, "nothing painted beyond r200m");
    }
    /* a small, distant halo (r200m about one pixel): mass conserved; the quadrature error before rescaling is larger */
    memset(k, 0, sizeof(float) * (size_t)n * n);
    CHECK_OK(lss_mm_halo_paint(m, 1e12, 2.0, 40.77, 50.21, n, n, k, &tot, &raw));
    CHECK_REL(dsum((int64_t)n * n, k), tot, 1e-5, "painted mass (1e12 Msun/h at z = 2)");
    CHECK_CLOSE(raw, 1.0, 0, 0.05, "sub-pixel quadrature of a one-pixel halo before rescaling");
    /* a halo centred on the map's left edge: exactly half of it lands on the map (the sub-pixel points are symmetric) */
    memset(k, 0, sizeof(float) * (size_t)n * n);
    CHECK_OK(lss_mm_halo_paint(m, 1e14, 0.5, 0.0, 80.5, n, n, k, &tot, NULL));
    CHECK_REL(dsum((int64_t)n * n, k), 0.5 * tot, 1e-4, "a halo on the edge keeps half its mass, nothing wraps around");
    CHECK(k[80 * n + n - 1] == 0.0f, "no periodic wrapping");
    CHECK_ERR(lss_mm_halo_paint(m, -1e14, 0.5, 1, 1, n, n, k, NULL, NULL), LSS_ERR_RANGE);
    CHECK_ERR(lss_mm_halo_paint(m, 1e14, NAN, 1, 1, n, n, k, NULL, NULL), LSS_ERR_RANGE);
    free(k);
    lss_cosmo_free(c);
    lss_mm_halo_free(m);
}

static void test_bad_options(void) {
    lss_mm_halo_model *m = NULL;
    lss_mm_halo_opts o;
#define BAD(field, value)                                        \
    do {                                                         \
        memset(&o, 0, sizeof o);                                 \
        o.field = value;                                         \
        CHECK_ERR(lss_mm_halo_create(&o, &m), LSS_ERR_RANGE);    \
        CHECK(m == NULL, "no model for " #field " = " #value);   \
    } while (0)
    BAD(m_min, -1e12);
    BAD(m_min, NAN);
    BAD(m_max, INFINITY);
    BAD(m_min, 1e16);  /* above the default m_max */
    BAD(pix_arcmin, -0.29);
    BAD(pix_arcmin, NAN);
    BAD(size, 4);
    BAD(pad, -1);
    BAD(nshells, 1);
    BAD(z_max, -1.0);
    BAD(nmass, 1);
#undef BAD
    memset(&o, 0, sizeof o);
    o.m_min = 1e14;
    o.m_max = 1e13;
    CHECK_ERR(lss_mm_halo_create(&o, &m), LSS_ERR_RANGE);
    memset(&o, 0, sizeof o);
    o.nz = "no-such-file.txt";
    CHECK(lss_mm_halo_create(&o, &m) != LSS_OK && m == NULL, "unknown n(z) rejected");
    CHECK_ERR(lss_mm_halo_create(NULL, NULL), LSS_ERR_ARG);
    CHECK(isnan(lss_mm_halo_sigma(NULL, 1e12, 0, NULL)) && isnan(lss_mm_halo_tnfw_f(-1, 5)) && isnan(lss_mm_halo_concentration(-1, 0)),
          "NaN for bad arguments of the pieces");
}

typedef struct {
    double mean, se;
} ms;
static ms meanse(const double *x, int n, int stride) {
    ms r = {0, 0};
    double s2 = 0;
    for (int i = 0; i < n; i++) r.mean += x[i * stride];
    r.mean /= n;
    for (int i = 0; i < n; i++) s2 += (x[i * stride] - r.mean) * (x[i * stride] - r.mean);
    r.se = sqrt(s2 / (n - 1) / n);
    return r;
}

/* Fields of 64 x 64 pixels of 0.29 arcmin: determinism, non-Gaussianity against the lognormal mocks, power spectrum */
static void test_fields(void) {
    enum { S = 64, NF = 16, NB = 8 };
    const int64_t np = S * S;
    lss_mm_halo_opts o = {0};
    lss_mm_halo_model *m = NULL;
    lss_mm_kappa_gen *kg = NULL;
    lss_grid *g = NULL;
    float *hal = (float *)malloc(sizeof(float) * np * NF), *ln = (float *)malloc(sizeof(float) * np * NF), *a = (float *)malloc(sizeof(float) * np);
    o.size = S;
    CHECK_OK(lss_mm_halo_create(&o, &m));
    CHECK_OK(lss_mm_kappa_gen_create(NULL, "cosmos", S, 2, 0.29, &kg));
    CHECK_OK(lss_grid_create(S, S, 0.29, &g));
    if (!m || !kg || !g) return;
    {
        double hp = 0, km = 0;
        CHECK_OK(lss_mm_halo_counts(m, &hp, &km));
        printf("  %.3f halos per pixel, mean halo convergence %.4f\n", hp, km);
        CHECK(hp > 0.1 && hp < 10 && km > 0.003 && km < 0.1, "plausible abundance (%g halos per pixel, mean kappa %g)", hp, km);
    }
    /* the maps, in parallel over fields with 2 threads */
    int bad = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(2) schedule(dynamic)
#endif
    for (int f = 0; f < NF; f++)
        if (lss_mm_halo_field(m, S, S, 11, LSS_SET_TEST, (uint64_t)f, hal + f * np) != LSS_OK) bad = 1;
    CHECK(!bad, "halo fields drawn");
    CHECK_OK(lss_mm_kappa_draw(kg, 11, 0, NF, ln));
    /* determinism: the same field again, on one thread, bitwise */
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    CHECK_OK(lss_mm_halo_field(m, S, S, 11, LSS_SET_TEST, 3, a));
    CHECK(!memcmp(a, hal + 3 * np, sizeof(float) * np), "field 3 on one thread = field 3 drawn by 2 threads, bitwise");
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    CHECK_OK(lss_mm_halo_field(m, S, S, 11, LSS_SET_TEST, 3, a));
    CHECK(!memcmp(a, hal + 3 * np, sizeof(float) * np), "the same field twice, bitwise");
    CHECK_OK(lss_mm_halo_field(m, S, S, 11, LSS_SET_TRAIN, 3, a));
    CHECK(memcmp(a, hal + 3 * np, sizeof(float) * np) != 0, "another data set gives another field");
    CHECK_OK(lss_mm_halo_field(m, S, S, 12, LSS_SET_TEST, 3, a));
    CHECK(memcmp(a, hal + 3 * np, sizeof(float) * np) != 0, "another seed gives another field");
    CHECK_CLOSE(dsum(np, hal), 0.0, 0, 1e-4 * np * 1e-2, "zero mean (the mass sheet removed)");
    CHECK_ERR(lss_mm_halo_field(m, 2 * S + 2, S, 11, LSS_SET_TEST, 0, a), LSS_ERR_SHAPE);
    /* non-Gaussianity: pixel skewness and kurtosis of the halo maps far above the lognormal ones (tolerance: 3 standard
       errors of the difference of the means over fields) */
    double *mh = (double *)malloc(sizeof(double) * NF * LSS_STAT_NMOMENTS), *ml = (double *)malloc(sizeof(double) * NF * LSS_STAT_NMOMENTS);
    CHECK_OK(lss_stat_moments(g, hal, NF, NULL, mh, NULL, NULL));
    CHECK_OK(lss_stat_moments(g, ln, NF, NULL, ml, NULL, NULL));
    ms sh = meanse(mh + 2, NF, LSS_STAT_NMOMENTS), sl = meanse(ml + 2, NF, LSS_STAT_NMOMENTS);
    ms kh = meanse(mh + 3, NF, LSS_STAT_NMOMENTS), kl = meanse(ml + 3, NF, LSS_STAT_NMOMENTS);
    printf("  skewness: halo %.3f +- %.3f, lognormal %.3f +- %.3f; excess kurtosis: halo %.2f +- %.2f, lognormal %.2f +- %.2f\n", sh.mean,
           sh.se, sl.mean, sl.se, kh.mean, kh.se, kl.mean, kl.se);
    CHECK(sh.mean - sl.mean > 3 * sqrt(sh.se * sh.se + sl.se * sl.se), "halo skewness %.3f significantly above lognormal %.3f", sh.mean, sl.mean);
    CHECK(kh.mean - kl.mean > 3 * sqrt(kh.se * kh.se + kl.se * kl.se), "halo kurtosis %.2f significantly above lognormal %.2f", kh.mean, kl.mean);
    /* power spectrum against the Halofit theory. Tolerance per bin: 3 standard errors of the mean over fields plus 5%,
       the systematic excess measured above ell = 1e4 (the halos of the maps carry 5-10% more power there than the
       halo-model C_1h through the pixel window and its aliases, about 3-7% of the total; one halo alone matches its
       windowed transform to 2% below ell = 25,000); bins above ell = 25,000 (the Nyquist multipole is 37,000), where
       the sub-pixel quadrature adds up to 7% more, are not tested (see bench_halo_mocks) */
    {
        int nell = 0;
        const double *ell = NULL, *cth = NULL;
        double *pk = (double *)malloc(sizeof(double) * np), edges[NB + 1], clt[NB], ellm[NB], *cl = (double *)malloc(sizeof(double) * NF * NB);
        CHECK_OK(lss_mm_halo_spectra(m, &nell, &ell, &cth, NULL, NULL, NULL));
        CHECK_OK(lss_grid_spectrum(g, ell, cth, nell, pk));
        CHECK_OK(lss_grid_ps_edges(g, NB, edges));
        CHECK_OK(lss_grid_bin_spectrum(g, pk, edges, NB, clt));
        for (int f = 0; f < NF; f++) CHECK_OK(lss_grid_ps(g, hal + f * np, NULL, edges, NB, ellm, cl + f * NB));
        for (int b = 0; b < NB; b++) {
            ms r = meanse(cl + b, NF, NB);
            printf("  ell %6.0f: halo-model power / Halofit %.3f +- %.3f\n", ellm[b], r.mean / clt[b], r.se / clt[b]);
            if (ellm[b] < 25000) CHECK_CLOSE(r.mean / clt[b], 1.0, 0, 3 * r.se / clt[b] + 0.05, "mean power / theory");
        }
        free(pk);
        free(cl);
    }
    free(mh); free(ml); free(hal); free(ln); free(a);
    lss_grid_free(g);
    lss_mm_kappa_gen_free(kg);
    lss_mm_halo_free(m);
}

/* Halo mocks: files keep the model, old files read as lognormal; training batches are halo fields */
static void test_mock_and_training(void) {
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *mk = NULL, *back = NULL;
    lss_mm_halo_model *hm = NULL;
    lss_mm_halo_opts ho = {0};
    char dir[] = "/tmp/lss_test_halo_XXXXXX";
    mo.size = 32;
    mo.nfields = 2;
    mo.seed = 5;
    mo.model = LSS_MM_MODEL_HALO;
    CHECK_OK(lss_mm_mock_create(&mo, &mk));
    ho.size = 32;
    ho.pad = 2;
    CHECK_OK(lss_mm_halo_create(&ho, &hm));
    if (!mk || !hm) return;
    {
        float *a = (float *)malloc(sizeof(float) * 32 * 32);
        CHECK_OK(lss_mm_halo_field(hm, 32, 32, 5, LSS_SET_TEST, 1, a));
        CHECK(!memcmp(a, mk->kappa + 32 * 32, sizeof(float) * 32 * 32), "mock field 1 is lss_mm_halo_field(TEST, 1)");
        free(a);
    }
    CHECK(mk->model == LSS_MM_MODEL_HALO, "the mock records its model");
    mo.model = 7;
    lss_mm_mock *bad = NULL;
    CHECK_ERR(lss_mm_mock_create(&mo, &bad), LSS_ERR_RANGE);
    if (mkdtemp(dir)) {
        char p[256];
        CHECK_OK(lss_mm_mock_save(mk, dir));
        CHECK_OK(lss_mm_mock_load(dir, &back));
        if (back) {
            CHECK(back->model == LSS_MM_MODEL_HALO && !memcmp(back->kappa, mk->kappa, sizeof(float) * 2 * 32 * 32), "saved and loaded: model and maps");
            lss_mm_mock_free(back);
            back = NULL;
        }
        /* a grid.csv written before the model column: lognormal */
        snprintf(p, sizeof p, "%s/grid.csv", dir);
        FILE *f = fopen(p, "w");
        if (f) {
            fprintf(f, "h,w,pixel_arcmin,shift,nfields,seed\n32,32,0.29,0.01,2,5\n");
            fclose(f);
        }
        CHECK_OK(lss_mm_mock_load(dir, &back));
        CHECK(back && back->model == LSS_MM_MODEL_LOGNORMAL, "an old grid.csv reads as a lognormal mock");
        lss_mm_mock_free(back);
        back = NULL;
        f = fopen(p, "w");
        if (f) {
            fprintf(f, "h,w,pixel_arcmin,shift,nfields,seed,model\n32,32,0.29,0.01,2,5,3\n");
            fclose(f);
        }
        CHECK_ERR(lss_mm_mock_load(dir, &back), LSS_ERR_FORMAT);
        const char *names[] = {"kappa.npy", "shear.npy", "noise_var.npy", "mask.npy", "count.npy", "ps.csv", "grid.csv"};
        for (int i = 0; i < 7; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, names[i]);
            remove(p);
        }
        remove(dir);
    }
    /* the training batch with train_opts.halo: the truths are lss_mm_halo_field(TRAIN, index b + j) */
    {
        lss_grid *g = NULL, *big = NULL;
        double *pk = NULL, *pkb = NULL;
        lss_mm_net *net = NULL;
        lss_mm_net_opts no = {0};
        lss_mm_train_opts to = {0};
        lss__mm_tr t;
        float *a = (float *)malloc(sizeof(float) * 32 * 32);
        no.c0 = 8;
        CHECK_OK(lss_mm_mock_grid(mk, 1, &g, &pk));
        CHECK_OK(lss_mm_mock_grid(mk, 2, &big, &pkb));
        CHECK_OK(lss_mm_net_create(g, pk, &no, &net));
        to.batch = 2;
        to.big = big;
        to.pk_big = pkb;
        to.seed = 9;
        to.halo = hm;
        if (net && lss__mm_tr_open(&t, net, &to, "test") == LSS_OK) {
            CHECK_OK(lss__mm_batch(&t, LSS_SET_TRAIN, 3));
            CHECK_OK(lss_mm_halo_field(hm, 32, 32, 9, LSS_SET_TRAIN, 3 * 2 + 1, a));
            CHECK(!memcmp(a, t.truth + 32 * 32, sizeof(float) * 32 * 32), "training map j = 1 of batch 3 is halo field 7 of the training set");
            lss__mm_tr_close(&t);
        } else
            CHECK(0, "training state: %s", lss_last_error());
        lss_mm_net_free(net);
        net = NULL;
        /* lss_mm_train_on_mock of a halo mock trains on halo fields (a 2-step run) */
        lss_mm_train_opts tt = {0};
        lss_mm_train_result res;
        tt.steps = 2;
        tt.batch = 2;
        tt.seed = 3;
        CHECK_OK(lss_mm_train_on_mock(g, mk, &no, &tt, &res, &net));
        CHECK(isfinite(res.final_loss), "finite training loss on halo maps (%g)", res.final_loss);
        lss_mm_net_free(net);
        free(a);
        free(pk);
        free(pkb);
        lss_grid_free(g);
        lss_grid_free(big);
    }
    lss_mm_halo_free(hm);
    lss_mm_mock_free(mk);
}

int main(void) {
    RUN(test_profile);
    RUN(test_mass_function);
    RUN(test_paint);
    RUN(test_bad_options);
    RUN(test_fields);
    RUN(test_mock_and_training);
    LSS_TEST_END();
}
