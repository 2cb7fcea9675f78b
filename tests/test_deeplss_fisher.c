/* Tests of the pieces of the DeepLSS summary-efficiency forecasts: finite-difference simulation sets with common
 * random numbers (lss_fdsims_*), the joint one-point moments (lss_stat_joint_moments), the selectable spectra
 * estimator of the survey recipe, and the summary networks' start (zero output layer, standardised targets:
 * the prior mean with unit precision whatever the input). */
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
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static lss_nz *g_nz = NULL;
static int g_nb = 0;

/* ------------------------------------------------------------------ joint moments against a direct sum */
static void test_joint_moments(void) {
    enum { C = 3, NP = 500 };
    float m[C * NP];
    double out[64], mean[C];
    lss_rng r;
    int a, b, o;
    lss_rng_init(&r, 5, 0);
    for (int64_t k = 0; k < C * NP; k++) m[k] = (float)(lss_rng_normal(&r) + (k >= NP ? 0.5 * m[k - NP] * m[k - NP] : 0) + 0.3);
    CHECK(lss_stat_joint_moments_size(C) == 18 && lss_stat_joint_moments_size(8) == 108 && lss_stat_joint_moments_size(0) == 0,
          "sizes %d %d", lss_stat_joint_moments_size(C), lss_stat_joint_moments_size(8));
    CHECK_OK(lss_stat_joint_moments(m, C, NP, out));
    for (a = 0; a < C; a++) {
        long double s = 0;
        for (int k = 0; k < NP; k++) s += m[a * NP + k];
        mean[a] = (double)(s / NP);
    }
    for (a = 0; a < C; a++)
        for (int e = 2; e <= 4; e++) {
            long double s = 0;
            for (int k = 0; k < NP; k++) s += powl((long double)m[a * NP + k] - mean[a], e);
            CHECK_CLOSE(out[3 * a + e - 2], (double)(s / NP), 1e-12, 1e-14, "central moment of one channel");
        }
    o = 3 * C;
    for (a = 0; a < C; a++)
        for (b = a + 1; b < C; b++, o += 3) {
            long double s11 = 0, s21 = 0, s12 = 0;
            for (int k = 0; k < NP; k++) {
                long double u = (long double)m[a * NP + k] - mean[a], v = (long double)m[b * NP + k] - mean[b];
                s11 += u * v; s21 += u * u * v; s12 += u * v * v;
            }
            CHECK_CLOSE(out[o], (double)(s11 / NP), 1e-12, 1e-14, "<d_a d_b>");
            CHECK_CLOSE(out[o + 1], (double)(s21 / NP), 1e-12, 1e-14, "<d_a^2 d_b>");
            CHECK_CLOSE(out[o + 2], (double)(s12 / NP), 1e-12, 1e-14, "<d_a d_b^2>");
        }
    CHECK(fabs(out[3 * 1 + 1]) > 0.1, "the quadratic channel is skewed (m3 %.3g): the check can tell moments apart", out[4]);
    m[NP + 7] = NAN;
    CHECK_ERR(lss_stat_joint_moments(m, C, NP, out), LSS_ERR_NUMERIC);
    CHECK_ERR(lss_stat_joint_moments(NULL, C, NP, out), LSS_ERR_ARG);
    CHECK_ERR(lss_stat_joint_moments(m, 0, NP, out), LSS_ERR_ARG);
    CHECK_ERR(lss_stat_joint_moments(m, C, 1, out), LSS_ERR_ARG);
}

/* ------------------------------------------------------------------ finite-difference sets */
static void test_fdsims(void) {
    lss_sim_opts o;
    lss_survey_opts so;
    lss_params p0, pv;
    lss_cosmo *c = NULL;
    lss_sim *sim = NULL;
    lss_survey *sv = NULL, *sve = NULL;
    lss_survey_work *w = NULL, *we = NULL;
    lss_fdsims *fd = NULL, *fde = NULL;
    const double step[LSS_NPARAM_LINEAR] = {0.01, 0.02, 0.3, 0.4, 0.05, 0.2, 0.03};
    float *m0, *m1, *m2, *m3;
    double *s0, *s1;
    int64_t msz, ssz, plane, k;
    int v;
    memset(&o, 0, sizeof o);
    o.nside = 16; o.pixel_arcmin = 18.75;
    lss_params_fiducial(&p0);
    CHECK_OK(lss_cosmo_create(&p0, &c));
    CHECK_OK(lss_sim_create(c, g_nz, g_nb, &o, &sim));
    memset(&so, 0, sizeof so);
    so.grid = 1; so.nell = 4; so.ell_min = 72; so.ell_max = 576; so.noise.poisson = LSS_POISSON_INVERSE;
    CHECK_OK(lss_survey_create(sim, &so, &sv));
    so.noise.poisson = LSS_POISSON_EXACT;
    CHECK_OK(lss_survey_create(sim, &so, &sve));
    CHECK_OK(lss_survey_work_create(sv, &w));
    CHECK_OK(lss_survey_work_create(sve, &we));
    CHECK_OK(lss_fdsims_create(sv, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, step, &fd));
    CHECK_OK(lss_fdsims_create(sve, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, step, &fde));
    if (!fd || !fde || !w || !we) return;
    CHECK(lss_fdsims_nvariants(fd) == 1 + 2 * LSS_NPARAM_LINEAR, "variants %d", lss_fdsims_nvariants(fd));
    msz = lss_survey_map_size(sv); ssz = lss_survey_spec_size(sv); plane = 16 * 16;
    m0 = malloc(sizeof(float) * (size_t)msz); m1 = malloc(sizeof(float) * (size_t)msz);
    m2 = malloc(sizeof(float) * (size_t)msz); m3 = malloc(sizeof(float) * (size_t)msz);
    s0 = malloc(sizeof(double) * (size_t)ssz); s1 = malloc(sizeof(double) * (size_t)ssz);
    /* the fiducial variant is lss_survey_simulate at the Fisher set's index */
    CHECK_OK(lss_fdsims_observe(fd, w, 0, 3, 9, m0, s0));
    CHECK_OK(lss_survey_simulate(sv, sim, w, &p0, 9, lss_set_index(LSS_SET_FISHER, 3), m1, s1));
    CHECK(!memcmp(m0, m1, sizeof(float) * (size_t)msz) && !memcmp(s0, s1, sizeof(double) * (size_t)ssz),
          "variant 0 = lss_survey_simulate(LSS_SET_FISHER, i), bit for bit");
    /* parameters of the variants */
    for (v = 0; v < lss_fdsims_nvariants(fd); v++) {
        double a[LSS_NPARAM_TABLE1], b[LSS_NPARAM_TABLE1];
        int i, ok = 1;
        CHECK_OK(lss_fdsims_params(fd, v, &pv));
        lss_params_to_vec(&p0, LSS_NPARAM_TABLE1, a);
        lss_params_to_vec(&pv, LSS_NPARAM_TABLE1, b);
        for (i = 0; i < LSS_NPARAM_TABLE1; i++) {
            double want = a[i] + (v > 0 && i == (v - 1) / 2 ? (v % 2 ? 1 : -1) * step[i] : 0);
            ok &= fabs(b[i] - want) < 1e-15;
        }
        CHECK(ok, "variant %d moves exactly its parameter by its step", v);
    }
    CHECK_ERR(lss_fdsims_params(fd, 15, &pv), LSS_ERR_ARG);
    /* common random numbers: b_g +- 0.05 only changes the galaxy rates (by nbar 0.1 |delta|, a few of the 880 per pixel);
       with one Poisson uniform per pixel the counts of the pair move by about that much, while the exact sampler
       reshuffles every draw after the first count that differs (|N+ - N-| ~ 2 sqrt(lambda / pi) ~ 33); the lensing
       channels follow through the shape noise sigma_e / sqrt(N) */
    {
        int vp = 1 + 2 * LSS_P_B_G, vm = vp + 1;
        double fi = 0, fe = 0, dk = 0, dke = 0, nbar = LSS_DEEPLSS_NGAL_ARCMIN2 * 18.75 * 18.75;
        CHECK_OK(lss_fdsims_observe(fd, w, vp, 1, 9, m0, NULL));
        CHECK_OK(lss_fdsims_observe(fd, w, vm, 1, 9, m1, NULL));
        CHECK_OK(lss_fdsims_observe(fde, we, vp, 1, 9, m2, NULL));
        CHECK_OK(lss_fdsims_observe(fde, we, vm, 1, 9, m3, NULL));
        for (k = 4 * plane; k < 8 * plane; k++) { fi += fabs(m0[k] - m1[k]) * nbar; fe += fabs(m2[k] - m3[k]) * nbar; }
        for (k = 0; k < 4 * plane; k++) { dk += fabs(m0[k] - m1[k]); dke += fabs(m2[k] - m3[k]); }
        fi /= 4.0 * plane; fe /= 4.0 * plane; dk /= 4.0 * plane; dke /= 4.0 * plane;
        printf("b_g +- 0.05: mean |N+ - N-| per pixel %.2f (one uniform per pixel) vs %.2f (exact sampler); mean |kappa+ - kappa-| "
               "%.4f vs %.4f\n", fi, fe, dk, dke);
        CHECK(fi > 0 && fi < 0.4 * fe && fe > 15, "counts move by about the change of the rate with one uniform per pixel (%.2f) and "
              "are reshuffled by the exact sampler (%.2f)", fi, fe);
        CHECK(dk > 0 && dk < 0.4 * dke, "lensing pixels follow the counts: %.4f vs %.4f", dk, dke);
    }
    /* cosmology steps: other fields, same phases: the pair is almost perfectly correlated and the mean response of the
       lensing variance has the sign of the parameter (sigma_8 up: larger kappa) */
    {
        double sxy = 0, sxx = 0, syy = 0, vp = 0, vm = 0;
        int vpl = 1 + 2 * LSS_P_SIGMA_8;
        CHECK_OK(lss_fdsims_params(fd, vpl, &pv));
        CHECK_OK(lss_fdsims_observe(fd, w, vpl, 2, 9, m0, NULL));
        CHECK_OK(lss_fdsims_observe(fd, w, vpl + 1, 2, 9, m1, NULL));
        CHECK_OK(lss_fdsims_observe(fd, w, 0, 2, 9, m2, NULL));   /* the fiducial set: other fields */
        for (k = 3 * plane; k < 4 * plane; k++) {
            sxy += (double)m0[k] * m1[k]; sxx += (double)m0[k] * m0[k]; syy += (double)m1[k] * m1[k];
        }
        CHECK(sxy / sqrt(sxx * syy) > 0.99, "sigma_8 +- 0.02 pair: correlation %.5f > 0.99 (common phases)", sxy / sqrt(sxx * syy));
        sxy = sxx = syy = 0;
        for (k = 3 * plane; k < 4 * plane; k++) { sxy += (double)m0[k] * m2[k]; sxx += (double)m0[k] * m0[k]; syy += (double)m2[k] * m2[k]; }
        CHECK(fabs(sxy / sqrt(sxx * syy)) < 0.5, "the covariance set's fields are independent of the derivative set's (correlation %.3f)",
              sxy / sqrt(sxx * syy));
        /* noise-free response: a survey without noise shows the signal variance grow with sigma_8 in every bin */
        {
            lss_survey *sn = NULL;
            lss_survey_work *wn = NULL;
            lss_fdsims *fn = NULL;
            int ok = 1, bin;
            so.noise.no_noise = 1;
            CHECK_OK(lss_survey_create(sim, &so, &sn));
            CHECK_OK(lss_survey_work_create(sn, &wn));
            CHECK_OK(lss_fdsims_create(sn, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, step, &fn));
            if (fn && wn) {
                CHECK_OK(lss_fdsims_observe(fn, wn, vpl, 2, 9, m0, NULL));
                CHECK_OK(lss_fdsims_observe(fn, wn, vpl + 1, 2, 9, m1, NULL));
                for (bin = 0; bin < 4; bin++) {
                    vp = vm = 0;
                    for (k = bin * plane; k < (bin + 1) * plane; k++) { vp += (double)m0[k] * m0[k]; vm += (double)m1[k] * m1[k]; }
                    ok &= vp > vm;
                }
                CHECK(ok, "noise-free lensing variance larger at sigma_8 + step in every bin");
            }
            lss_fdsims_free(fn); lss_survey_work_free(wn); lss_survey_free(sn);
        }
    }
    /* the whole set as rows (fiducial, +step blocks, -step blocks), in parallel: each row is its variant's observation */
    {
        lss_survey_work *ws[64];
        float *rows = malloc(sizeof(float) * (size_t)msz * 6);
        int nw = 1, ok = 1, j;
        const int64_t nf = 2, nd = 2;
#ifdef _OPENMP
        nw = omp_get_max_threads() < 64 ? omp_get_max_threads() : 64;
#endif
        for (j = 0; j < nw; j++) CHECK_OK(lss_survey_work_create(sv, &ws[j]));
        /* rows 0-1 fiducial; 2 + 2a + i: +step of parameter a; 2 + 14 + 2a + i: -step */
        CHECK_OK(lss_fdsims_observe_rows(fd, ws, nw, 9, nf, nd, 12, 6, rows, NULL));   /* rows 12..17: +a = 5, 6, then -a = 0 */
        for (j = 0; j < 6; j++) {
            int64_t r = 12 + j, q = r - nf, blk = q / nd;
            int v = 1 + 2 * (int)(blk % 7) + (int)(blk / 7);
            CHECK_OK(lss_fdsims_observe(fd, w, v, (uint64_t)(q % nd), 9, m0, NULL));
            ok &= !memcmp(m0, rows + (size_t)j * msz, sizeof(float) * (size_t)msz);
        }
        CHECK(ok, "rows 12..17 are the observations of variants 11, 11, 13, 13, 2, 2 (pairs 0, 1)");
        CHECK_ERR(lss_fdsims_observe_rows(fd, ws, nw, 9, nf, nd, 28, 3, rows, NULL), LSS_ERR_ARG);   /* 30 rows in all */
        for (j = 0; j < nw; j++) lss_survey_work_free(ws[j]);
        free(rows);
    }
    /* spectra of a channel range: the pairs with both channels inside, in pair order */
    {
        double sel[36 * 4];
        int q, i, j, k = 0, ok = 1;
        CHECK_OK(lss_survey_simulate(sv, sim, w, &p0, 9, 7, m0, s0));
        CHECK_OK(lss_survey_select_spectra(sv, s0, 4, 4, sel));
        for (q = 0; q < lss_survey_npairs(sv); q++) {
            lss_survey_pair(sv, q, &i, &j);
            if (i >= 4 && j < 8) ok &= !memcmp(sel + 4 * k++, s0 + 4 * q, sizeof(double) * 4);
        }
        CHECK(ok && k == 10, "delta_g channels: the 10 pairs of bins 5-8 (%d)", k);
        CHECK_ERR(lss_survey_select_spectra(sv, s0, 6, 4, sel), LSS_ERR_ARG);
    }
    /* bad input */
    {
        lss_fdsims *bad = NULL;
        double st2[LSS_NPARAM_LINEAR];
        memcpy(st2, step, sizeof st2);
        st2[3] = 0;
        CHECK_ERR(lss_fdsims_create(sv, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, st2, &bad), LSS_ERR_ARG);
        st2[3] = 0.4; st2[LSS_P_R_G] = 0.5;   /* r_g 0.7 + 0.5 leaves the Table I prior */
        CHECK_ERR(lss_fdsims_create(sv, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, st2, &bad), LSS_ERR_RANGE);
        CHECK(bad == NULL, "nothing created on error");
        CHECK_ERR(lss_fdsims_create(NULL, g_nz, g_nb, &o, &p0, LSS_NPARAM_LINEAR, step, &bad), LSS_ERR_ARG);
        CHECK_ERR(lss_fdsims_observe(fd, w, 15, 0, 9, m0, NULL), LSS_ERR_ARG);
        CHECK_ERR(lss_fdsims_observe(fd, w, 0, LSS_FDSIMS_DER_BASE, 9, m0, NULL), LSS_ERR_ARG);
    }
    /* the spectra estimator of the survey recipe: |X_i X_j*| >= |Re X_i X_j*| pair by pair, equal for auto spectra */
    {
        lss_survey *sa = NULL;
        int ok = 1, okauto = 1, q, b, i, j;
        so.noise.no_noise = 0; so.ps_mode = LSS_PS_ABS; so.noise.poisson = LSS_POISSON_INVERSE;   /* sv's recipe but |.| */
        CHECK_OK(lss_survey_create(sim, &so, &sa));
        CHECK_OK(lss_survey_simulate(sv, sim, w, &p0, 9, 5, m0, s0));
        CHECK_OK(lss_survey_simulate(sa, sim, w, &p0, 9, 5, m1, s1));
        for (q = 0; q < lss_survey_npairs(sv); q++) {
            lss_survey_pair(sv, q, &i, &j);
            for (b = 0; b < 4; b++) {
                double re = s0[q * 4 + b], ab = s1[q * 4 + b];
                ok &= ab >= fabs(re) * (1 - 1e-12);
                if (i == j) okauto &= fabs(ab - re) <= 1e-12 * fabs(re);
            }
        }
        CHECK(ok && okauto, "|X_i X_j*| spectra bound the real-part ones and equal them for auto spectra");
        so.ps_mode = 2;
        {
            lss_survey *none = NULL;
            CHECK_ERR(lss_survey_create(sim, &so, &none), LSS_ERR_ARG);
            CHECK(none == NULL, "no survey on error");
        }
        lss_survey_free(sa);
    }
    free(m0); free(m1); free(m2); free(m3); free(s0); free(s1);
    lss_fdsims_free(fd); lss_fdsims_free(fde);
    lss_survey_work_free(w); lss_survey_work_free(we);
    lss_survey_free(sv); lss_survey_free(sve); lss_sim_free(sim); lss_cosmo_free(c);
}

/* ------------------------------------------------------------------ summary networks start at the prior mean */
static void test_sumnet_start(void) {
    lss_sumnet_opts so;
    lss_sumnet *n = NULL;
    enum { NS = 400, NB = 16 };
    double th[NS * 7], pred[NB * 7], mean[7] = {0}, sd[7] = {0}, y[7], thm[7], loss, ref = 0;
    float maps[NB * 2 * 16 * 16], yt[NB * 7];
    const lss_param_table *t = lss_table1();
    lss_rng r;
    int i, k, kind;
    lss_rng_init(&r, 11, 0);
    for (i = 0; i < NS; i++)
        for (k = 0; k < 7; k++) th[i * 7 + k] = t->lo[k] + (t->hi[k] - t->lo[k]) * lss_rng_uniform(&r);
    for (k = 0; k < 7; k++) {   /* target mean and std, computed here independently */
        double s1 = 0, s2 = 0;
        for (i = 0; i < NS; i++) { lss_deeplss_to_target(th + i * 7, y); s1 += y[k]; }
        mean[k] = s1 / NS;
        for (i = 0; i < NS; i++) { lss_deeplss_to_target(th + i * 7, y); s2 += (y[k] - mean[k]) * (y[k] - mean[k]); }
        sd[k] = sqrt(s2 / NS);   /* ddof 0, as lss_chain_stats */
    }
    lss_deeplss_from_target(mean, thm);
    for (i = 0; i < NB * 2 * 16 * 16; i++) maps[i] = (float)(3 * lss_rng_normal(&r));
    for (kind = 0; kind < 2; kind++) {
        double spec[NB * 3 * 4];
        for (i = 0; i < NB * 12; i++) spec[i] = exp(lss_rng_normal(&r));
        memset(&so, 0, sizeof so);
        so.kind = kind; so.batch = NB; so.map_ch = 2; so.side = 16; so.ch0 = 0; so.nch = 2;
        so.nconv = 2; so.nres = 1; so.channels = 8; so.kernel = 3; so.in_std = 1;
        so.npairs = 3; so.nell = 4; so.width = 16; so.seed = 3;
        CHECK_OK(lss_sumnet_create(&so, &n));
        if (!n) return;
        CHECK_OK(lss_sumnet_standardise(n, maps, spec, NB));
        CHECK_OK(lss_sumnet_set_targets(n, th, NS));
        for (k = 0; k < 7; k++) {
            CHECK_CLOSE(n->tmu->data[k], mean[k], 1e-6, 1e-7, "target mean");
            CHECK_CLOSE(n->tsd->data[k], sd[k], 1e-6, 0, "target std");
        }
        for (i = 0; i < NB; i++) CHECK_OK(lss_sumnet_input(n, i, maps + i * 2 * 256, spec + i * 12));
        CHECK_OK(lss_sumnet_predict(n, NB, pred));
        {
            int ok = 1;
            for (i = 0; i < NB; i++)
                for (k = 0; k < 7; k++) ok &= fabs(pred[i * 7 + k] - thm[k]) <= 1e-5 * (fabs(thm[k]) + 1e-3);
            CHECK(ok, "%s before training: every input predicts the prior's target mean", kind ? "PSD" : "CNN");
        }
        /* loss at the start: unit precision in standardised units, ||(y - mean) / std||^2 */
        ref = 0;
        for (i = 0; i < NB; i++) {
            lss_deeplss_to_target(th + i * 7, y);
            for (k = 0; k < 7; k++) {
                yt[i * 7 + k] = (float)y[k];
                ref += pow(((double)(float)y[k] - n->tmu->data[k]) / n->tsd->data[k], 2) / NB;
            }
        }
        CHECK_OK(lss_sumnet_loss(n, NB, yt, 0, &loss));
        CHECK_CLOSE(loss, ref, 1e-4, 1e-4, "start loss = mean squared standardised target (unit precision, log det 0)");
        CHECK_ERR(lss_sumnet_set_targets(n, th, 1), LSS_ERR_ARG);
        lss_sumnet_free(n);
        n = NULL;
    }
}

/* ------------------------------------------------------------------ hybrid CNN: spectra joined to the pooled features */
static void test_resnet_extra(void) {
    lss_store *st = NULL;
    lss_graph *g = NULL;
    lss_resnet net;
    lss_resnet_opts ro;
    enum { N = 3, C = 4, E = 3, NOUT = 5 };
    float x[N * 2 * 8 * 8], e1[N * E], e2[N * E], o1[N * NOUT];
    int64_t shx[4] = {N, 2, 8, 8}, she[2] = {N, E}, shbad[2] = {N, E - 1};
    lss_tensor *y;
    lss_rng r;
    int i, o, ok = 1;
    lss_rng_init(&r, 5, 0);
    for (i = 0; i < N * 2 * 64; i++) x[i] = (float)lss_rng_normal(&r);
    for (i = 0; i < N * E; i++) { e1[i] = (float)lss_rng_normal(&r); e2[i] = (float)lss_rng_normal(&r); }
    memset(&ro, 0, sizeof ro);
    ro.in_ch = 2; ro.in_h = 8; ro.in_w = 8; ro.nout = NOUT; ro.nconv = 2; ro.nres = 1; ro.channels = C; ro.kernel = 3;
    ro.pool = 1; ro.nextra = E;
    CHECK_OK(lss_store_create(9, &st));
    CHECK_OK(lss_graph_create(&g));
    CHECK_OK(lss_resnet_init(&net, st, "cnn", &ro));
    CHECK(net.dw && net.dw->shape[0] == C + E && net.dw->shape[1] == NOUT, "output layer takes the pooled features and the extras");
    for (i = 0; i < net.dw->n; i++) net.dw->data[i] = (float)lss_rng_normal(&r);
    y = lss_resnet_forward_extra(g, &net, lss_view(g, x, 4, shx), lss_view(g, e1, 2, she));
    CHECK(y && y->shape[0] == N && y->shape[1] == NOUT, "forward with extras");
    if (y) memcpy(o1, y->data, sizeof o1);
    lss_graph_reset(g);
    y = lss_resnet_forward_extra(g, &net, lss_view(g, x, 4, shx), lss_view(g, e2, 2, she));
    /* the dense output is linear in the extras, which follow the C pooled features: out2 - out1 = W[C + j][o] (e2 - e1)_j */
    for (i = 0; y && i < N; i++)
        for (o = 0; o < NOUT; o++) {
            double d = 0;
            int j;
            for (j = 0; j < E; j++) d += (double)net.dw->data[(C + j) * NOUT + o] * (e2[i * E + j] - e1[i * E + j]);
            ok &= fabs((y->data[i * NOUT + o] - o1[i * NOUT + o]) - d) <= 1e-4 * (1 + fabs(d));
        }
    CHECK(y && ok, "changing the extras moves the output by their rows of the dense weights");
    lss_graph_reset(g);
    CHECK(!lss_resnet_forward(g, &net, lss_view(g, x, 4, shx)) && lss_graph_status(g) == LSS_ERR_SHAPE,
          "a network with extras refuses a forward pass without them");
    lss_graph_free(g);
    CHECK_OK(lss_graph_create(&g));
    CHECK(!lss_resnet_forward_extra(g, &net, lss_view(g, x, 4, shx), lss_view(g, e1, 2, shbad)) && lss_graph_status(g) == LSS_ERR_SHAPE,
          "extras of the wrong width refused");
    lss_graph_free(g);
    lss_store_free(st);
}

/* A hybrid CNN sees what the spectra carry: targets that only the spectra predict (the maps are noise) are learnt by the
   hybrid and not by the plain CNN, trained alike; the spectra standardisation is the PSD network's. */
enum { HYB_NS = 3, HYB_NL = 4 };
static void hyb_draws(lss_rng *r, int n, float *maps, double *spec, double *th, float *y) {
    const lss_param_table *t = lss_table1();
    double yt[7];
    int i, k;
    for (i = 0; i < n * 2 * 256; i++) maps[i] = (float)lss_rng_normal(r);
    for (i = 0; i < n; i++) {
        for (k = 0; k < 7; k++) th[i * 7 + k] = t->lo[k] + (t->hi[k] - t->lo[k]) * lss_rng_uniform(r);
        lss_deeplss_to_target(th + i * 7, yt);
        for (k = 0; k < 7; k++) y[i * 7 + k] = (float)yt[k];
        for (k = 0; k < HYB_NS * HYB_NL; k++) spec[i * HYB_NS * HYB_NL + k] = 1 + 0.1 * lss_rng_normal(r);
        spec[i * HYB_NS * HYB_NL + 2 * HYB_NL + 1] = 5 + 20 * (th[i * 7] - 0.3) + 0.01 * lss_rng_normal(r);   /* pair 2, bin 1: Omega_m */
    }
}
static void test_sumnet_hybrid(void) {
    enum { NB = 64, NH = 64, NS = HYB_NS, NL = HYB_NL, STEPS = 300 };
    const int use[NS] = {1, 0, 1};
    lss_sumnet_opts so;
    lss_optim_opts oo;
    lss_sumnet *n[2] = {NULL, NULL};
    static float maps[(NB + NH) * 2 * 16 * 16], sens[2 * 2 * 16 * 16];
    static double spec[(NB + NH) * NS * NL], th[(NB + NH) * 7];
    float y[(NB + NH) * 7];
    static float hmaps[NH * 2 * 256], hy[NH * 7];
    static double hspec[NH * NS * NL];
    double loss[2] = {0, 0}, l, mean[8] = {0}, sd[8] = {0};
    lss_rng r;
    int i, h, step, f;
    lss_rng_init(&r, 21, 0);
    hyb_draws(&r, NB + NH, maps, spec, th, y);   /* rows NB.. are the held-out set */
    memcpy(hmaps, maps + NB * 512, sizeof hmaps); memcpy(hspec, spec + NB * NS * NL, sizeof hspec); memcpy(hy, y + NB * 7, sizeof hy);
    for (f = 0; f < 8; f++) {   /* the selected features (pairs 0 and 2) over the NB training rows, ddof 0 */
        int q = f < 4 ? 0 : 2, b = f % 4;
        for (i = 0; i < NB; i++) mean[f] += spec[i * NS * NL + q * NL + b] / NB;
        for (i = 0; i < NB; i++) sd[f] += pow(spec[i * NS * NL + q * NL + b] - mean[f], 2) / NB;
        sd[f] = sqrt(sd[f]);
    }
    for (h = 0; h < 2; h++) {
        memset(&so, 0, sizeof so);
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM; oo.lr = 3e-3;
        so.kind = LSS_SUMNET_CNN; so.batch = NB; so.map_ch = 2; so.side = 16; so.nch = 2;
        so.nconv = 2; so.nres = 0; so.channels = 8; so.kernel = 3; so.in_std = 1; so.pool = 1; so.hidden = 32;
        so.npairs = NS; so.nell = NL; so.use_pair = use; so.seed = 4; so.optim = &oo; so.hybrid = h;
        CHECK_OK(lss_sumnet_create(&so, &n[h]));
        if (!n[h]) return;
        CHECK_OK(lss_sumnet_standardise(n[h], maps, NULL, NB));
        if (h) {
            CHECK(n[h]->nfeat == 8, "hybrid: %d spectra features (2 of 3 pairs x 4 bins)", n[h]->nfeat);
            CHECK_OK(lss_sumnet_standardise(n[h], NULL, spec, NB));
            for (f = 0; f < 8; f++) {
                CHECK_CLOSE(n[h]->fmu->data[f], mean[f], 1e-5, 1e-6, "hybrid feature mean");
                CHECK_CLOSE(n[h]->fsd->data[f], sd[f], 1e-4, 1e-6, "hybrid feature std");
            }
            CHECK_ERR(lss_sumnet_input(n[h], 0, maps, NULL), LSS_ERR_ARG);
            CHECK_ERR(lss_sumnet_sensitivity(n[h], maps, sens), LSS_ERR_ARG);
        }
        CHECK_OK(lss_sumnet_set_targets(n[h], th, NB));
        lss_rng_init(&r, 22, 0);   /* fresh training draws every step (the same for both networks) */
        for (step = 0; step < STEPS; step++) {
            hyb_draws(&r, NB, maps, spec, th, y);
            for (i = 0; i < NB; i++) CHECK_OK(lss_sumnet_input(n[h], i, maps + i * 512, spec + i * NS * NL));
            if (lss_sumnet_loss(n[h], NB, y, 1, &l) != LSS_OK) { CHECK(0, "training step: %s", lss_last_error()); break; }
        }
        for (i = 0; i < NH; i++) CHECK_OK(lss_sumnet_input(n[h], i, hmaps + i * 512, hspec + i * NS * NL));
        CHECK_OK(lss_sumnet_loss(n[h], NH, hy, 0, &loss[h]));
        lss_rng_init(&r, 21, 0);
        hyb_draws(&r, NB + NH, maps, spec, th, y);
    }
    /* Omega_m's target is known from the spectra to 0.01/20 of a prior box of 0.4: its standardised residual variance
       is ~1e-4 (NLL term ~ -9) for a perfect hybrid, 1 (NLL term ~ 0) for any map-only network */
    printf("held-out loss after %d steps: hybrid %.3f, plain CNN %.3f\n", STEPS, loss[1], loss[0]);
    CHECK(loss[1] < loss[0] - 2.0, "held-out loss: hybrid %.3f well below the plain CNN %.3f when only the spectra are informative",
          loss[1], loss[0]);
    lss_sumnet_free(n[0]);
    lss_sumnet_free(n[1]);
    memset(&so, 0, sizeof so);
    so.kind = LSS_SUMNET_CNN; so.batch = 2; so.map_ch = 2; so.side = 16; so.nch = 2; so.nconv = 1; so.channels = 4; so.kernel = 3;
    so.hybrid = 1;
    n[0] = NULL;
    CHECK_ERR(lss_sumnet_create(&so, &n[0]), LSS_ERR_ARG);   /* hybrid without spectra */
    CHECK(n[0] == NULL, "no network left behind by a refused hybrid");
}

/* fisher.md reads each network row against the one-point moments alone: a synthetic linear model whose "network" is
   exactly the moments' columns (near them, undertrained) and another that is the spectra's columns (beyond them) */
static void test_fisher_reading(void) {
    enum { P = 7, D = 12, NF = 400, ND = 40, NSUM = 6 };
    static double X[(NF + 2 * P * ND) * D];
    const double *step = lss_deeplss_fisher_step;
    const char *sum_names[NSUM] = {"ps_re", "ps_abs", "ps_re+moments", "moments", "cnn", "hybrid_cnn"};
    const int c0[NSUM] = {0, 0, 0, 10, 10, 0}, nc[NSUM] = {10, 10, 12, 2, 2, 10};
    lss_fisher F[3 * NSUM];
    double slope[D][P], prior[P];
    char dir[] = "/tmp/lss_test_fisher_XXXXXX", path[128], text[8192];
    int r, j, a, b, cols[D];
    size_t n;
    FILE *f;
    memset(F, 0, sizeof F);
    memset(slope, 0, sizeof slope);
    for (j = 0; j < 10; j++) slope[j][j % P] = 1.0 / step[j % P] * 0.05;          /* the spectra: every parameter */
    slope[10][0] = 0.3 / step[0] * 0.05; slope[11][1] = 0.3 / step[1] * 0.05;      /* the moments: weaker, Omega_m and sigma_8 */
    for (r = 0; r < NF + 2 * P * ND; r++) {
        int blk = r < NF ? -1 : (r - NF) / ND, i = r < NF ? r : (r - NF) % ND;
        double sg = blk < P ? 1.0 : -1.0;
        lss_rng q;
        lss_rng_init(&q, 32, (uint64_t)(r < NF ? r : NF + i));   /* common random numbers for the pairs of a block */
        for (j = 0; j < D; j++) {
            X[(size_t)r * D + j] = lss_rng_normal(&q);
            if (blk >= 0) X[(size_t)r * D + j] += sg * slope[j][blk % P] * step[blk % P];
        }
    }
    for (j = 0; j < P; j++) prior[j] = (lss_table1()->hi[j] - lss_table1()->lo[j]) / sqrt(12.0);   /* as deeplss fisher */
    for (b = 0; b < NSUM; b++) {
        for (j = 0; j < nc[b]; j++) cols[j] = c0[b] + j;
        CHECK_OK(lss_fisher_from_table(X, D, cols, nc[b], NF, ND, P, step, prior, 0, &F[b]));
    }
    if (!mkdtemp(dir)) { CHECK(0, "temporary directory"); return; }
    CHECK_OK(lss_deeplss_fisher_save(dir, F, NSUM, sum_names, 4, lss_table1()->name, NF, ND));
    snprintf(path, sizeof path, "%s/fisher.md", dir);
    text[0] = 0;
    if ((f = fopen(path, "r"))) { n = fread(text, 1, sizeof text - 1, f); text[n] = 0; fclose(f); }
    CHECK(strstr(text, "combined cnn: efficiency") && strstr(text, "near the one-point moments alone"),
          "a network that is the moments is read as near them");
    CHECK(strstr(text, "combined hybrid_cnn: efficiency 1.000") && strstr(text, "beyond the pixel statistics"),
          "a network that is the spectra is read as beyond the moments");
    lss_fisher_free(&F[5]);   /* the same summary named as a spectra network is not read */
    for (j = 0; j < nc[5]; j++) cols[j] = c0[5] + j;
    CHECK_OK(lss_fisher_from_table(X, D, cols, nc[5], NF, ND, P, step, prior, 0, &F[5]));
    sum_names[5] = "psd";
    CHECK_OK(lss_deeplss_fisher_save(dir, F, NSUM, sum_names, 4, lss_table1()->name, NF, ND));
    text[0] = 0;
    if ((f = fopen(path, "r"))) { n = fread(text, 1, sizeof text - 1, f); text[n] = 0; fclose(f); }
    CHECK(strstr(text, "| combined | psd |") && !strstr(text, "combined psd: efficiency"), "a spectra network's row is not read");
    {   /* the cnn (the moments' columns) against the psd (the spectra's): the paired ratio equals the efficiencies' ratio */
        const char *q = strstr(text, "paired on the same observations: ");
        double rp = q ? atof(q + strlen("paired on the same observations: ")) : NAN;
        double want = lss_fisher_fom_ratio(&F[4], &F[0], 0, 1, NULL) / lss_fisher_fom_ratio(&F[5], &F[0], 0, 1, NULL);
        CHECK(fabs(rp - want) < 1.5e-3 * want && want < 0.9, "paired FoM over the PSD network %.4f (expected %.4f)", rp, want);
    }
    CHECK(!strstr(text, "lensing cnn"), "probe sets without forecasts are left out");
    remove(path);
    snprintf(path, sizeof path, "%s/fisher.csv", dir);
    remove(path);
    rmdir(dir);
    for (a = 0; a < 3 * NSUM; a++) lss_fisher_free(&F[a]);
}

int main(void) {
    if (lss_nz_builtin("deeplss", &g_nz, &g_nb) != LSS_OK) { printf("n(z): %s\n", lss_last_error()); return 1; }
    test_joint_moments();
    test_fdsims();
    test_sumnet_start();
    test_resnet_extra();
    test_sumnet_hybrid();
    test_fisher_reading();
    lss_nz_free(g_nz, g_nb);
    LSS_TEST_END();
}
