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

int main(void) {
    RUN(test_profile);
    RUN(test_mass_function);
    LSS_TEST_END();
}
