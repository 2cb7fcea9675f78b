/* Tests of the particle-mesh N-body light cones of lss_maps.h: exact growth, initial conditions (mode keying,
 * Hermitian symmetry, amplitudes), linear growth of the lowest-k modes, exact mass conservation, P(k) against the
 * linear spectrum at z_init and Halofit at z = 0, shell means, bit determinism at 1 and 2 threads, checkpoint and
 * resumption, and the errors. Fixed seeds; every statistical tolerance is derived from the expected scatter (mode
 * counts, Poisson counts, Limber variance of the shell means) and stated at the check. Under ASan
 * (LSS_TEST_ASAN=1) the particle grids shrink (64^3 -> 32^3), never a tolerance. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "tests/lss_test.h"
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int asan = 0;
static lss_cosmo *g_c = NULL;

static const char *tmppath(const char *name) {
    static char p[512];
    (void)system("mkdir -p build/tmp_nbody");
    snprintf(p, sizeof p, "build/tmp_nbody/%s", name);
    return p;
}

static int file_exists(const char *p) {
    FILE *f = fopen(p, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* ------------------------------------------------------------------ growth */
static void test_growth_function(void) {
    /* the steps' D1 (own Gauss-Legendre integral) against the theory tables (4-point interpolation, 1e-7 vs CCL),
       and dD1/da against a centred difference of lss_cosmo_growth (step 1e-4: truncation ~1e-8) */
    int i;
    for (i = 0; i < 12; i++) {
        double a = 0.05 + 0.095 * i, d, dd, h = 1e-4;
        double dp = lss_cosmo_growth(g_c, 1 / (a + h) - 1), dm = lss_cosmo_growth(g_c, 1 / (a - h) - 1);
        CHECK_OK(lss_nbody_growth(g_c, a, &d, &dd));
        CHECK_CLOSE(d, lss_cosmo_growth(g_c, 1 / a - 1), 1e-7, 0, "D1(a) vs lss_cosmo_growth");
        CHECK_CLOSE(dd, (dp - dm) / (2 * h), 1e-6, 0, "dD1/da vs finite difference");
    }
    CHECK_ERR(lss_nbody_growth(g_c, 0, NULL, NULL), LSS_ERR_ARG);
}

/* ------------------------------------------------------------------ initial conditions */
static void test_initial_conditions(void) {
    /* A 4000 Mpc/h box (every mode linear). The drawn modes are keyed by the wave vector: runs at np 16 and 32
       share them exactly; the particle modes at z_init equal D(z_init) times the drawn ones up to 2LPT and CIC
       corrections (measured 1e-4; tolerance 1%); |delta_k| = sqrt(P/V) with fixed_amp; delta(-k) = conj. */
    lss_nbody_opts o;
    lss_nbody *a = NULL, *b = NULL, *f = NULL;
    int kv[3 * 6] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, -2, 1, 3, 3, -3, 1};
    int km[3 * 6];
    double la[12], lb[12], lm[12], ma[12], mb[12], d0;
    int j;
    memset(&o, 0, sizeof o);
    o.box = 4000; o.np = 16; o.steps = 4;
    CHECK_OK(lss_nbody_create(g_c, &o, NULL, 11, 3, &a));
    o.np = 32;
    CHECK_OK(lss_nbody_create(g_c, &o, NULL, 11, 3, &b));
    o.fixed_amp = 1;
    CHECK_OK(lss_nbody_create(g_c, &o, NULL, 11, 3, &f));
    if (!a || !b || !f) goto done;
    d0 = lss_cosmo_growth(g_c, 1 / lss_nbody_a(a) - 1);
    CHECK_CLOSE(lss_nbody_a(a), 0.1, 1e-12, 0, "a_init = 1 / (1 + 9)");
    CHECK_OK(lss_nbody_linear_mode(a, 6, kv, la));
    CHECK_OK(lss_nbody_linear_mode(b, 6, kv, lb));
    CHECK_OK(lss_nbody_modes(a, 0, 6, kv, ma));
    CHECK_OK(lss_nbody_modes(b, 0, 6, kv, mb));
    for (j = 0; j < 6; j++) {
        double amp = sqrt(la[2 * j] * la[2 * j] + la[2 * j + 1] * la[2 * j + 1]);
        CHECK(la[2 * j] == lb[2 * j] && la[2 * j + 1] == lb[2 * j + 1], "mode %d: the same at np 16 and 32", j);
        CHECK(amp > 0, "mode %d drawn", j);
        CHECK_CLOSE(ma[2 * j], d0 * la[2 * j], 0, 0.01 * d0 * amp, "np 16 particle mode (re) = D(z_init) delta_k");
        CHECK_CLOSE(ma[2 * j + 1], d0 * la[2 * j + 1], 0, 0.01 * d0 * amp, "np 16 particle mode (im)");
        CHECK_CLOSE(mb[2 * j], d0 * lb[2 * j], 0, 0.01 * d0 * amp, "np 32 particle mode (re)");
        CHECK_CLOSE(mb[2 * j + 1], d0 * lb[2 * j + 1], 0, 0.01 * d0 * amp, "np 32 particle mode (im)");
        km[3 * j] = -kv[3 * j]; km[3 * j + 1] = -kv[3 * j + 1]; km[3 * j + 2] = -kv[3 * j + 2];
    }
    CHECK_OK(lss_nbody_linear_mode(a, 6, km, lm));
    for (j = 0; j < 6; j++) CHECK(lm[2 * j] == la[2 * j] && lm[2 * j + 1] == -la[2 * j + 1], "delta(-k) = conj delta(k), mode %d", j);
    CHECK_OK(lss_nbody_linear_mode(f, 6, kv, lm));
    for (j = 0; j < 6; j++) {
        double k = 2 * 3.14159265358979323846 / 4000 *
                   sqrt((double)kv[3 * j] * kv[3 * j] + kv[3 * j + 1] * kv[3 * j + 1] + kv[3 * j + 2] * kv[3 * j + 2]);
        CHECK_CLOSE(lm[2 * j] * lm[2 * j] + lm[2 * j + 1] * lm[2 * j + 1], lss_cosmo_pk_lin(g_c, k, 0) / 6.4e10, 1e-12, 0,
                    "fixed_amp: |delta_k|^2 = P / V");
    }
    {   /* Nyquist and k = 0 are not drawn */
        int kn[6] = {8, 0, 0, 0, 0, 0};
        CHECK_OK(lss_nbody_linear_mode(a, 2, kn, lm));
        CHECK(lm[0] == 0 && lm[1] == 0 && lm[2] == 0 && lm[3] == 0, "Nyquist and k = 0 modes are zero");
    }
    {   /* Zel'dovich initial conditions on a force mesh as coarse as the particle grid: the same modes to 1% */
        lss_nbody *z = NULL;
        o.np = 16; o.mesh = 16; o.lpt_order = 1; o.fixed_amp = 0;
        CHECK_OK(lss_nbody_create(g_c, &o, NULL, 11, 3, &z));
        if (z) {
            CHECK_OK(lss_nbody_modes(z, 0, 6, kv, mb));
            for (j = 0; j < 6; j++) {
                double amp = sqrt(la[2 * j] * la[2 * j] + la[2 * j + 1] * la[2 * j + 1]);
                CHECK_CLOSE(mb[2 * j], d0 * la[2 * j], 0, 0.01 * d0 * amp, "ZA particle mode (re)");
                CHECK_CLOSE(mb[2 * j + 1], d0 * la[2 * j + 1], 0, 0.01 * d0 * amp, "ZA particle mode (im)");
            }
            CHECK(lss_nbody_step(z) == LSS_OK && lss_nbody_steps_done(z) == 1, "a step with mesh = np");
        }
        lss_nbody_free(z);
    }
done:
    lss_nbody_free(a);
    lss_nbody_free(b);
    lss_nbody_free(f);
}

/* ------------------------------------------------------------------ linear growth of the lowest modes */
static void growth_run(int steps, int spacing) {
    /* np 32 in 4000 Mpc/h, fixed amplitudes: the projection Re[delta(a) conj delta(a0)] / |delta(a0)|^2 of the four
       lowest modes follows D(a)/D(a0) within 1% at every step (FastPM factors: exact for linear modes at any step
       count; what remains is the lattice/CIC force at k_f h = 2 pi/64: measured +0.5%, 0.75% worst) */
    lss_nbody_opts o;
    lss_nbody *s = NULL;
    int kv[12] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0}, j, worst_step = 0;
    double m0[8], m[8], worst = 0, d0;
    memset(&o, 0, sizeof o);
    o.box = 4000; o.np = 32; o.steps = steps; o.spacing = spacing; o.fixed_amp = 1;
    CHECK_OK(lss_nbody_create(g_c, &o, NULL, 5, 0, &s));
    if (!s) return;
    d0 = lss_cosmo_growth(g_c, 1 / lss_nbody_a(s) - 1);
    CHECK_OK(lss_nbody_modes(s, 0, 4, kv, m0));
    while (lss_nbody_steps_done(s) < steps) {
        double d;
        CHECK_OK(lss_nbody_step(s));
        d = lss_cosmo_growth(g_c, 1 / lss_nbody_a(s) - 1);
        CHECK_OK(lss_nbody_modes(s, 0, 4, kv, m));
        for (j = 0; j < 4; j++) {
            double r = (m[2 * j] * m0[2 * j] + m[2 * j + 1] * m0[2 * j + 1]) /
                       (m0[2 * j] * m0[2 * j] + m0[2 * j + 1] * m0[2 * j + 1]) / (d / d0);
            if (fabs(r - 1) > fabs(worst)) { worst = r - 1; worst_step = lss_nbody_steps_done(s); }
            CHECK_CLOSE(r, 1, 0, 0.01, "mode growth / (D/D0)");
        }
    }
    printf("  %d %s steps: worst |growth/D - 1| = %.4f (step %d)\n", steps, spacing ? "log-a" : "linear-a", fabs(worst),
           worst_step);
    CHECK(lss_nbody_a(s) == 1.0, "the run ends at a = 1 exactly");
    CHECK_ERR(lss_nbody_step(s), LSS_ERR_STATE);
    lss_nbody_free(s);
}
static void test_linear_growth(void) {
    growth_run(5, LSS_NB_STEP_LINEAR_A);
    growth_run(10, LSS_NB_STEP_LINEAR_A);
    growth_run(5, LSS_NB_STEP_LOG_A);
}

/* ------------------------------------------------------------------ mass and P(k) */
static void test_mass_and_power(void) {
    /* 500 Mpc/h, np 64 (32 under ASan), mesh 2 np, 10 steps. Bins of width k_f. The tolerances per bin are
       4 sqrt(2/N_modes) (Gaussian scatter of a bin average, m and -m both counted) plus a systematic allowance:
       3% at z_init (CIC aliasing of the lattice, 2LPT) up to k_Nyq(particles)/4, and 6% at z = 0 against Halofit
       (its own 5% accuracy; PM resolution at 10 steps) up to k_Nyq/4; also the mode-weighted mean ratio over
       those bins within 4 sqrt(2/sum N) + the same allowance. */
    lss_nbody_opts o;
    lss_nbody *s = NULL;
    int np = asan ? 32 : 64, nb, b, pass;
    double k[64], pk[64], ai, an;
    int64_t nm[64], mass, n3;
    memset(&o, 0, sizeof o);
    o.box = 500; o.np = np; o.steps = 10;
    CHECK_OK(lss_nbody_create(g_c, &o, NULL, 21, 0, &s));
    if (!s) return;
    n3 = (int64_t)np * np * np;
    CHECK(lss_nbody_get_opts(s)->mesh == 2 * np && lss_nbody_get_opts(s)->z_init == 9, "defaults filled");
    /* exact mass: at the nodes, drifted between them, on the force mesh and on another mesh */
    ai = lss_nbody_a(s);
    an = lss_nbody_a_next(s);
    CHECK_OK(lss_nbody_density(s, 0, 2 * np, NULL, &mass));
    CHECK(mass == n3 * lss_nbody_mass_unit(s), "mass at z_init: %lld (want %lld)", (long long)mass, (long long)(n3 * lss_nbody_mass_unit(s)));
    CHECK_OK(lss_nbody_density(s, 0.5 * (ai + an), np + 6, NULL, &mass));
    CHECK(mass == n3 * lss_nbody_mass_unit(s), "mass drifted half a step on a %d mesh", np + 6);
    CHECK_ERR(lss_nbody_density(s, an + 0.01, np, NULL, &mass), LSS_ERR_RANGE);
    nb = np;   /* dk = k_Nyq(mesh 2np) / np = k_f */
    for (pass = 0; pass < 2; pass++) {
        double sw = 0, sr = 0, kmax = 3.14159265358979323846 * np / 500 / 4;
        int used = 0;
        if (pass == 1) {
            while (lss_nbody_steps_done(s) < o.steps) CHECK_OK(lss_nbody_step(s));
            CHECK_OK(lss_nbody_density(s, 0, 2 * np, NULL, &mass));
            CHECK(mass == n3 * lss_nbody_mass_unit(s), "mass at z = 0");
        }
        /* particles from a lattice have no Poisson noise at k << k_Nyq: nothing subtracted (V/N would be 2.4% of
           P at k = 0.03 h/Mpc here) */
        CHECK_OK(lss_nbody_power(s, 0, 2 * np, nb, 0, k, pk, nm));
        for (b = 0; b < nb && k[b] < kmax; b++) {
            double z = pass ? 0 : 9, ref = pass ? lss_cosmo_pk_nl(g_c, k[b], z) : lss_cosmo_pk_lin(g_c, k[b], z);
            double sig = sqrt(2.0 / (double)nm[b]), r;
            if (nm[b] == 0) continue;
            r = pk[b] / ref;
            CHECK_CLOSE(r, 1, 0, 4 * sig + (pass ? 0.06 : 0.03), pass ? "P(k, z=0) / Halofit" : "P(k, z_init) / P_lin");
            sw += (double)nm[b];
            sr += (double)nm[b] * r;
            used++;
        }
        CHECK(used >= 3, "at least 3 bins below k_Nyq/4 (%d)", used);
        printf("  %s: mean ratio %.4f over %d bins (%.0f modes)\n", pass ? "z = 0 vs Halofit" : "z_init vs linear", sr / sw,
               used, sw);
        CHECK_CLOSE(sr / sw, 1, 0, 4 * sqrt(2 / sw) + (pass ? 0.06 : 0.03), "mode-weighted mean ratio");
    }
    {   /* the shot noise subtracted: L^3/N times the CIC aliasing sum over |W|^2, which is >= 1 and < 1.1 at the
           lowest bins (k h << 1) */
        double pk2[64], shot = 500.0 * 500 * 500 / (double)n3;
        CHECK_OK(lss_nbody_power(s, 0, 2 * np, nb, 1, k, pk2, nm));
        for (b = 1; b < 4; b++) CHECK(pk[b] - pk2[b] >= shot * (1 - 1e-9) && pk[b] - pk2[b] < 1.1 * shot,
                                      "bin %d: subtracted %.2f, L^3/N = %.2f", b, pk[b] - pk2[b], shot);
    }
    CHECK_ERR(lss_nbody_power(s, 0, 2 * np, 0, 1, k, pk, nm), LSS_ERR_ARG);
    CHECK_ERR(lss_nbody_power(s, 0, 7, 4, 1, k, pk, nm), LSS_ERR_ARG);
    CHECK_ERR(lss_nbody_shells(s, &(lss_shellset){0}), LSS_ERR_STATE);
    lss_nbody_free(s);
}

/* ------------------------------------------------------------------ light cone */
static double g_ze[6] = {0, 0.2, 0.4, 0.6, 0.8, 1.0};
static void lc_setup(lss_nbody_opts *o, lss_lightcone_opts *lc, int np) {
    memset(o, 0, sizeof *o);
    o->box = 1000; o->np = np; o->steps = 10;
    memset(lc, 0, sizeof *lc);
    lc->side = 32; lc->pixel_arcmin = 40; lc->nshell = 5; lc->z_edges = g_ze; lc->ncone = 2;
}

static int g_cancel_at = -1, g_calls = 0;
static void progress(int step, int steps, double a, double sec, void *user) {
    (void)steps; (void)a; (void)sec; (void)user;
    g_calls++;
    if (step == g_cancel_at) lss_nbody_cancel();
}

/* Var of the mean of a square field of side th (rad) of a shell with Limber spectrum C_ell (flat sky):
   int d^2 ell / (2 pi)^2 C_ell sinc^2(ell_x th / 2) sinc^2(ell_y th / 2), on a grid out to 24 x 2 pi / th */
static double shell_mean_var(double chi1, double chi2, double th) {
    enum { NL = 200, NG = 193 };
    double ell[NL], cl[NL], dl = 2 * 3.14159265358979323846 / th / 8, s = 0;
    int i, j;
    for (i = 0; i < NL; i++) ell[i] = exp(log(1.0) + (log(20000.0) - log(1.0)) * i / (NL - 1));
    if (lss_cl_shell_many(g_c, chi1 > 1 ? chi1 : 1, chi2, ell, NL, cl) != LSS_OK) return NAN;
    for (i = -NG; i <= NG; i++)
        for (j = -NG; j <= NG; j++) {
            double lx = i * dl, ly = j * dl, l = sqrt(lx * lx + ly * ly), c, t, wx, wy, x;
            int q;
            if (l < 1) continue;
            t = (log(l) - log(1.0)) / (log(20000.0) - log(1.0)) * (NL - 1);
            q = (int)t;
            if (q >= NL - 1) q = NL - 2;
            c = exp(log(cl[q]) + (t - q) * (log(cl[q + 1]) - log(cl[q])));
            x = lx * th / 2; wx = x == 0 ? 1 : sin(x) / x;
            x = ly * th / 2; wy = x == 0 ? 1 : sin(x) / x;
            s += c * wx * wx * wy * wy * dl * dl;
        }
    return s / (4 * 3.14159265358979323846 * 3.14159265358979323846);
}

static void test_lightcone(void) {
    lss_nbody_opts o;
    lss_lightcone_opts lc;
    lss_shellset a, b, r;
    int np = asan ? 32 : 64, c, sh, i, st;
    size_t nmap = 2 * 5 * 32 * 32;
    double pix = 40 * 3.14159265358979323846 / 10800;
    const char *ck = tmppath("lc.ckpt");
    lc_setup(&o, &lc, np);
    remove(ck);
    set_threads(2);
    CHECK_OK(lss_nbody_lightcone(g_c, &o, &lc, 7, 2, NULL, progress, NULL, &a));
    if (!a.delta) return;
    CHECK(g_calls == 10, "progress after each step (%d calls)", g_calls);
    CHECK(a.ncone == 2 && a.nshell == 5 && a.side == 32 && a.pixel_arcmin == 40 && a.seed == 7 && a.index == 2,
          "shell set header");
    CHECK(a.nbody.mesh == 2 * np && a.nbody.steps == 10 && a.nbody.lpt_order == 2 && a.nbody.z_init == 9,
          "nbody options with defaults filled");
    CHECK(a.z_edges != g_ze && a.z_edges[5] == 1.0 && a.params.omega_m == lss_cosmo_params(g_c)->omega_m && a.seconds > 0,
          "z_edges copied, params, seconds");
    /* shell means: sum (1 + delta) Omega / sum Omega - 1 = 0 within 4 sigma, sigma^2 = 1/N (Poisson of the expected
       count N) + the Limber variance of the mean over the field (an upper bound: the box lacks modes beyond L) */
    for (c = 0; c < 2; c++)
        for (sh = 0; sh < 5; sh++) {
            double lo = lss_cosmo_chi(g_c, g_ze[sh]), hi = lss_cosmo_chi(g_c, g_ze[sh + 1]), sw = 0, sd = 0, nexp, var, sig;
            const float *d = a.delta + ((size_t)c * 5 + sh) * 32 * 32;
            for (i = 0; i < 32 * 32; i++) {
                double u0 = (i % 32 - 16) * pix, v0 = (i / 32 - 16) * pix, u1 = u0 + pix, v1 = v0 + pix;
                double om = atan(u1 * v1 / sqrt(1 + u1 * u1 + v1 * v1)) - atan(u0 * v1 / sqrt(1 + u0 * u0 + v1 * v1)) -
                            atan(u1 * v0 / sqrt(1 + u1 * u1 + v0 * v0)) + atan(u0 * v0 / sqrt(1 + u0 * u0 + v0 * v0));
                sw += om;
                sd += om * d[i];
            }
            nexp = sw * (hi * hi * hi - lo * lo * lo) / 3 * pow(np / 1000.0, 3);
            var = shell_mean_var(lo, hi, 32 * pix);
            sig = sqrt(1 / nexp + var);
            printf("  cone %d shell %d: mean delta %+.4f, sigma %.4f (Poisson %.4f, Limber %.4f)\n", c, sh, sd / sw, sig,
                   sqrt(1 / nexp), sqrt(var));
            CHECK_CLOSE(sd / sw, 0, 0, 4 * sig, "shell mean within 4 sigma");
        }
    CHECK(memcmp(a.delta, a.delta + nmap / 2, sizeof(float) * nmap / 2) != 0, "the two cones differ");
    /* the same bits at one thread */
    set_threads(1);
    CHECK_OK(lss_nbody_lightcone(g_c, &o, &lc, 7, 2, NULL, NULL, NULL, &b));
    set_threads(2);
    CHECK(b.delta && memcmp(a.delta, b.delta, sizeof(float) * nmap) == 0, "1 and 2 threads give the same bits");
    lss_shellset_free(&b);
    /* interrupted after step 4 and resumed: the same bits; the checkpoint removed at the end */
    g_cancel_at = 4;
    g_calls = 0;
    lss_clearerr();
    st = lss_nbody_lightcone(g_c, &o, &lc, 7, 2, ck, progress, NULL, &r);
    CHECK(st == LSS_ERR_STATE && strstr(lss_last_error(), "cancelled after step 4"), "cancel: %d '%s'", st, lss_last_error());
    CHECK(r.delta == NULL && g_calls == 4, "nothing returned, 4 steps run");
    CHECK(file_exists(ck), "checkpoint written when cancelled");
    g_cancel_at = -1;
    g_calls = 0;
    CHECK_OK(lss_nbody_lightcone(g_c, &o, &lc, 7, 2, ck, progress, NULL, &r));
    CHECK(g_calls == 6, "resumed at step 5 (%d steps run)", g_calls);
    CHECK(r.delta && memcmp(a.delta, r.delta, sizeof(float) * nmap) == 0, "resumed run gives the same bits");
    CHECK(!file_exists(ck), "checkpoint removed on completion");
    lss_shellset_free(&r);
    /* a checkpoint of another run */
    g_cancel_at = 1;
    lss_clearerr();
    st = lss_nbody_lightcone(g_c, &o, &lc, 8, 2, ck, progress, NULL, &r);
    CHECK(st == LSS_ERR_STATE, "cancel after step 1");
    g_cancel_at = -1;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 7, 2, ck, NULL, NULL, &r), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "belongs to another run") != NULL, "message: %s", lss_last_error());
    o.steps = 11;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 8, 2, ck, NULL, NULL, &r), LSS_ERR_ARG);
    o.steps = 10;
    {   /* a truncated checkpoint of this run */
        FILE *f = fopen(ck, "r+b");
        long len;
        char *buf;
        if (f) {
            fseek(f, 0, SEEK_END);
            len = ftell(f);
            fseek(f, 0, SEEK_SET);
            buf = (char *)malloc((size_t)len);
            if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len) {
                fclose(f);
                f = fopen(ck, "wb");
                if (f) fwrite(buf, 1, (size_t)len / 2, f);
            }
            free(buf);
            if (f) fclose(f);
        }
        CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 8, 2, ck, NULL, NULL, &r), LSS_ERR_FORMAT);
        remove(ck);
    }
    lss_shellset_free(&a);
}

/* ------------------------------------------------------------------ errors */
/* ------------------------------------------------------------------ cell sort */
/* A serial run sorts its particles by force-mesh cell row every drift and then paints and reads the force out by
   bands of rows (lss__nb_paint_sorted, the band readout). Against the same run kept unsorted (lss__nb_nosort: the
   general painting and the per-particle readout), and with the light-cone crossings added atomically by every
   thread (lss__nb_lc_shared) and the scalar band readout instead of the AVX-512 one: the same bits of shells, positions and momenta, for meshes whose y blocks are 2, 4, 8
   and 16 rows (n = 18, 24, 40, 64). The sort itself: the particles of every (y block, x plane) run of pstart lie
   in it, and lss_nbody_particles gives the lattice order (each particle within 20 Mpc/h of its lattice site in a
   300 Mpc/h box; a wrong permutation puts most of them boxes away). */
static void test_cell_sort(void) {
    static const int meshes[4] = {18, 24, 40, 64};
    int k;
    set_threads(2);
    for (k = 0; k < 4; k++) {
        lss_nbody_opts o;
        lss_lightcone_opts lc;
        lss_nbody *s[3] = {NULL, NULL, NULL};
        uint32_t *pos[3];
        float *mom[3];
        lss_shellset sh[3];
        int v, np = meshes[k] == 18 ? 18 : 16;
        size_t N, nmap, m;
        int64_t bad = 0, far = 0, g;
        memset(sh, 0, sizeof sh);
        memset(&o, 0, sizeof o);
        o.box = 300; o.np = np; o.mesh = meshes[k]; o.steps = 6;
        memset(&lc, 0, sizeof lc);
        lc.side = 16; lc.pixel_arcmin = 20; lc.nshell = 5; lc.z_edges = g_ze; lc.ncone = 2;
        N = (size_t)np * np * np;
        nmap = 2 * 5 * 16 * 16;
        for (v = 0; v < 3; v++) {
            lss__nb_nosort = v == 1 ? 1 + (k % 2) : 0; /* 2: the sort's buffers not even allocated */
            lss__nb_lc_shared = v == 2;
            lss__nb_readout_vec = v != 2; /* v = 2: the scalar band readout as well */
            pos[v] = (uint32_t *)malloc(12 * N);
            mom[v] = (float *)malloc(12 * N);
            CHECK_OK(lss_nbody_create(g_c, &o, &lc, 11, 1, &s[v]));
            if (!s[v] || !pos[v] || !mom[v]) break;
            while (lss_nbody_steps_done(s[v]) < o.steps) CHECK_OK(lss_nbody_step(s[v]));
            CHECK_OK(lss_nbody_shells(s[v], &sh[v]));
            CHECK_OK(lss_nbody_particles(s[v], pos[v], mom[v]));
        }
        lss__nb_nosort = lss__nb_lc_shared = 0;
        lss__nb_readout_vec = 1;
        if (v < 3 || !sh[0].delta || !sh[1].delta || !sh[2].delta) {
            CHECK(0, "mesh %d: the runs did not complete", meshes[k]);
        } else {
            CHECK(s[0]->sorted && !s[1]->sorted, "mesh %d: the default run is sorted, the switched one not", meshes[k]);
            CHECK(memcmp(sh[0].delta, sh[1].delta, sizeof(float) * nmap) == 0, "mesh %d (y blocks of %d): sorted and "
                  "unsorted runs give the same shell bits", meshes[k], lss__nb_yblk(meshes[k]));
            CHECK(memcmp(sh[0].delta, sh[2].delta, sizeof(float) * nmap) == 0 && memcmp(mom[0], mom[2], 12 * N) == 0,
                  "mesh %d: private and atomic light-cone sums, AVX-512 and scalar band readouts give the same bits",
                  meshes[k]);
            CHECK(memcmp(pos[0], pos[1], 12 * N) == 0 && memcmp(mom[0], mom[1], 12 * N) == 0,
                  "mesh %d: sorted and unsorted runs give the same particles in lattice order", meshes[k]);
            /* every particle in its (y block, x plane) run */
            for (g = 0; g < (int64_t)(meshes[k] / lss__nb_yblk(meshes[k])) * meshes[k]; g++) {
                int64_t i;
                for (i = s[0]->pstart[g]; i < s[0]->pstart[g + 1]; i++)
                    bad += lss__nb_rowkey(s[0]->pos + 3 * i, meshes[k], lss__nb_yblk(meshes[k])) / lss__nb_yblk(meshes[k]) != g;
            }
            CHECK(bad == 0 && s[0]->pstart[(meshes[k] / lss__nb_yblk(meshes[k])) * meshes[k]] == (int64_t)N,
                  "mesh %d: every particle lies in its run of the cell sort (%lld outside)", meshes[k], (long long)bad);
            for (m = 0; m < N; m++) {
                int d;
                size_t q[3];
                q[0] = m / ((size_t)np * np); q[1] = m / np % np; q[2] = m % np;
                for (d = 0; d < 3; d++) {
                    double site = (double)q[d] / np, x = pos[0][3 * m + d] / 4294967296.0, dx = x - site;
                    dx -= floor(dx + 0.5);
                    if (fabs(dx) * o.box > 20) { far++; break; }
                }
            }
            CHECK(far == 0, "mesh %d: every particle within 20 Mpc/h of its lattice site (%lld beyond)", meshes[k],
                  (long long)far);
        }
        for (v = 0; v < 3; v++) {
            lss_shellset_free(&sh[v]);
            lss_nbody_free(s[v]);
            free(pos[v]);
            free(mom[v]);
        }
    }
}

static void test_errors(void) {
    lss_nbody_opts o;
    lss_lightcone_opts lc;
    lss_shellset r;
    lss_nbody *s = NULL;
    double ze[3] = {0.5, 1.0, 9.5}, zb[3] = {0.5, 0.4, 0.8};
    lc_setup(&o, &lc, 16);
    /* the cone wider than the box at its deepest shell: 32 x 60' = 0.558 rad x chi(1) = 1299 Mpc/h > 1000 */
    lc.pixel_arcmin = 60;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 1, 0, NULL, NULL, NULL, &r), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "wider than the box") != NULL, "message: %s", lss_last_error());
    lc.pixel_arcmin = 40;
    lc.z_edges = ze; lc.nshell = 2;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 1, 0, NULL, NULL, NULL, &r), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "z_init") != NULL, "message: %s", lss_last_error());
    lc.z_edges = zb;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 1, 0, NULL, NULL, NULL, &r), LSS_ERR_ARG);
    lc.z_edges = g_ze; lc.nshell = 5;
    lc.side = 31;
    CHECK_ERR(lss_nbody_lightcone(g_c, &o, &lc, 1, 0, NULL, NULL, NULL, &r), LSS_ERR_ARG);
    lc.side = 32;
    CHECK(r.delta == NULL && r.nshell == 0, "nothing returned on failure");
    o.np = 15;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.np = 16; o.mesh = 8;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.mesh = 0; o.steps = -1;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.steps = 10; o.lpt_order = 3;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.lpt_order = 0; o.spacing = 2;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.spacing = 0; o.z_init = -1;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.z_init = 0; o.box = -5;
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    o.box = 1000;
    CHECK_ERR(lss_nbody_create(NULL, &o, NULL, 1, 0, &s), LSS_ERR_ARG);
    CHECK(s == NULL, "no object on failure");
    /* np 4096 with a 8192 mesh needs terabytes: refused before allocating, naming the GB */
    o.np = 4096; o.mesh = 8192;
    CHECK(lss_nbody_memory(&o, NULL) > ((int64_t)1 << 40), "memory of np 4096: %.0f GB", lss_nbody_memory(&o, NULL) / 1e9);
    CHECK_ERR(lss_nbody_create(g_c, &o, NULL, 1, 0, &s), LSS_ERR_NOMEM);
    CHECK(strstr(lss_last_error(), "GB") != NULL, "message: %s", lss_last_error());
    o.np = 256; o.mesh = 0;
    {   /* the default run: particles 24 B + order 4 B each, the 512^3 padded mesh, painting buffers */
        int64_t m = lss_nbody_memory(&o, NULL), N = (int64_t)256 * 256 * 256;
        CHECK(m > N * 28 + (int64_t)512 * 512 * 520 * 4 && m < N * 28 + (int64_t)512 * 512 * 520 * 4 + ((int64_t)600 << 20),
              "memory of the default run: %.3f GB", m / 1e9);
    }
    o.np = 15;
    CHECK(lss_nbody_memory(&o, NULL) == -1, "memory of bad options: -1");
}

int main(void) {
    const char *e = getenv("LSS_TEST_ASAN");
    lss_params p;
    asan = e && atoi(e) == 1;
    lss_params_fiducial(&p);
    if (lss_cosmo_create(&p, &g_c) != LSS_OK) { printf("cosmo: %s\n", lss_last_error()); return 1; }
    RUN(test_growth_function);
    RUN(test_initial_conditions);
    RUN(test_linear_growth);
    RUN(test_mass_and_power);
    RUN(test_lightcone);
    RUN(test_cell_sort);
    RUN(test_errors);
    lss_cosmo_free(g_c);
    LSS_TEST_END();
}
