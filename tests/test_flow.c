/* Tests of the normalizing flow of lss_nn.h: the new operations (slice, squeeze, log-determinant) against finite
 * differences and exact values; inverse(forward(x)) = x on random maps with random parameters; the flow's
 * log-determinant against the brute-force Jacobian (every row by backpropagation, its determinant by an independent
 * LU in double precision) on 4 x 4 inputs; the kappa transforms against the shifted-lognormal density written out;
 * and a trained flow's held-out bits per dimension on a periodic Gaussian random field against its exact
 * log-density (circulant covariance, diagonal in Fourier space), paired on the same maps (periodic conditioners:
 * with zero padding the same run stays about 0.04 bits above the exact value, the wrap-around correlations being
 * hard to learn through zero-padded edges). */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_core.h"
#include "lss_nn.h"
#include "tests/lss_test.h"
#include <stdlib.h>

static const double TWO_PI = 6.283185307179586;

/* ---------------------------------------------------------------- helpers */
static void randomise(lss_flow *f, double amp, uint64_t seed) {
    lss_store *st = lss_flow_store(f);
    lss_rng r;
    int i;
    int64_t k;
    lss_rng_init(&r, seed, 99);
    for (i = 0; i < lss_store_ntensors(st); i++) {
        lss_tensor *t = lss_store_tensor(st, i);
        if (!t->grad) continue; /* buffers: transform, init flag, fixed permutations */
        for (k = 0; k < t->n; k++) t->data[k] += (float)(amp * lss_rng_normal(&r));
    }
}

/* ln|det| of a double matrix by Gaussian elimination with full pivoting (independent of the library's LU). */
static double ref_logdet(double *a, int n) {
    double ld = 0;
    int k, i, j;
    for (k = 0; k < n; k++) {
        int pi = k, pj = k;
        for (i = k; i < n; i++)
            for (j = k; j < n; j++)
                if (fabs(a[i * n + j]) > fabs(a[pi * n + pj])) { pi = i; pj = j; }
        for (j = 0; j < n; j++) { double t = a[k * n + j]; a[k * n + j] = a[pi * n + j]; a[pi * n + j] = t; }
        for (i = 0; i < n; i++) { double t = a[i * n + k]; a[i * n + k] = a[i * n + pj]; a[i * n + pj] = t; }
        if (a[k * n + k] == 0) return -INFINITY;
        ld += log(fabs(a[k * n + k]));
        for (i = k + 1; i < n; i++) {
            double q = a[i * n + k] / a[k * n + k];
            for (j = k; j < n; j++) a[i * n + j] -= q * a[k * n + j];
        }
    }
    return ld;
}

/* ---------------------------------------------------------------- operations */
/* Gradient of sum(w * op(x)) by backpropagation against central differences. */
static void test_ops(void) {
    lss_store *st;
    lss_graph *g;
    lss_tensor *x, *m, *y, *l, *wt;
    int64_t sx[4] = {2, 3, 4, 6}, sm[2] = {5, 5}, k;
    lss_rng r;
    int op;
    CHECK_OK(lss_store_create(7, &st));
    CHECK_OK(lss_graph_create(&g));
    x = lss_store_add(st, "x", 4, sx, LSS_INIT_NORMAL);
    m = lss_store_add(st, "m", 2, sm, LSS_INIT_NORMAL);
    lss_rng_init(&r, 3, 0);
    for (k = 0; k < 25; k++) m->data[k] = (float)(0.3 * lss_rng_normal(&r)) + (k % 6 == 0 ? 2.0f : 0.0f);
    for (op = 0; op < 4; op++) {
        double maxe = 0;
        int64_t nin = op == 3 ? m->n : x->n;
        lss_tensor *in = op == 3 ? m : x;
        float *wv;
        /* forward with a fixed random weighting */
        lss_graph_reset(g);
        lss_store_zero_grad(st);
        if (op == 0) y = lss_op_slice(g, x, 1, 1, 2);
        else if (op == 1) y = lss_op_squeeze2d(g, x, 0);
        else if (op == 2) y = lss_op_squeeze2d(g, lss_op_squeeze2d(g, x, 0), 1);
        else y = lss_op_logabsdet(g, m);
        CHECK(y != NULL, "op %d failed: %s", op, lss_last_error());
        if (!y) continue;
        wv = (float *)malloc(sizeof(float) * (size_t)y->n);
        for (k = 0; k < y->n; k++) wv[k] = (float)lss_rng_normal(&r);
        wt = lss_view(g, wv, y->ndim, y->shape);
        l = lss_op_sum(g, lss_op_mul(g, y, wt));
        CHECK_OK(lss_backward(g, l));
        for (k = 0; k < nin; k++) {
            float keep = in->data[k];
            double lp, lm, e, h = op == 3 ? 1e-3 : 1e-2, gref;
            in->data[k] = keep + (float)h;
            lss_graph_reset(g);
            y = op == 0 ? lss_op_slice(g, x, 1, 1, 2) : op == 1 ? lss_op_squeeze2d(g, x, 0)
                : op == 2 ? lss_op_squeeze2d(g, lss_op_squeeze2d(g, x, 0), 1) : lss_op_logabsdet(g, m);
            lp = lss_op_sum(g, lss_op_mul(g, y, lss_view(g, wv, y->ndim, y->shape)))->data[0];
            in->data[k] = keep - (float)h;
            lss_graph_reset(g);
            y = op == 0 ? lss_op_slice(g, x, 1, 1, 2) : op == 1 ? lss_op_squeeze2d(g, x, 0)
                : op == 2 ? lss_op_squeeze2d(g, lss_op_squeeze2d(g, x, 0), 1) : lss_op_logabsdet(g, m);
            lm = lss_op_sum(g, lss_op_mul(g, y, lss_view(g, wv, y->ndim, y->shape)))->data[0];
            in->data[k] = keep;
            gref = (lp - lm) / (2 * h);
            e = fabs(in->grad[k] - gref);
            if (e > maxe) maxe = e;
        }
        CHECK(maxe < (op == 3 ? 2e-3 : 1e-4), "op %d: gradient differs from central differences by %g", op, maxe);
        free(wv);
    }
    /* squeeze then unsqueeze is the identity; the squeeze's layout */
    lss_graph_reset(g);
    y = lss_op_squeeze2d(g, x, 0);
    CHECK(y && y->shape[1] == 12 && y->shape[2] == 2 && y->shape[3] == 3, "squeeze shape");
    if (y) {
        /* output channel 4c + 2i + j at (yy, xx) holds x[c, 2 yy + i, 2 xx + j] */
        CHECK(y->data[((1 * 12 + 4 * 2 + 2 * 1 + 0) * 2 + 1) * 3 + 2] == x->data[((1 * 3 + 2) * 4 + 3) * 6 + 4], "squeeze layout");
        y = lss_op_squeeze2d(g, y, 1);
        for (k = 0; y && k < x->n; k++) if (y->data[k] != x->data[k]) break;
        CHECK(y && k == x->n, "unsqueeze(squeeze(x)) = x");
    }
    /* log|det| of a known matrix: permuted triangular, det = -(2 * 3 * 0.5 * 4 * 1) */
    {
        float tri[25] = {0, 3, 1, 7, 2,  2, 5, 1, 1, 1,  0, 0, 0, 4, 9,  0, 0, 0.5f, 8, 2,  0, 0, 0, 0, 1};
        lss_graph_reset(g);
        sm[0] = 5; sm[1] = 5;
        y = lss_op_logabsdet(g, lss_view(g, tri, 2, sm));
        CHECK(y && fabs(y->data[0] - log(12.0)) < 1e-6, "log|det| of a permuted triangular matrix: %g vs %g", y ? y->data[0] : NAN, log(12.0));
        memset(tri, 0, sizeof tri);
        lss_graph_reset(g);
        y = lss_op_logabsdet(g, lss_view(g, tri, 2, sm));
        CHECK(y == NULL && lss_graph_status(g) == LSS_ERR_NUMERIC, "a singular matrix is an error");
    }
    lss_graph_reset(g);
    CHECK(lss_op_slice(g, x, 1, 2, 2) == NULL && lss_graph_status(g) == LSS_ERR_SHAPE, "slice past the axis is an error");
    lss_graph_reset(g);
    sm[0] = 3; sm[1] = 6;
    {
        lss_tensor *odd = lss_tensor_new(g, 2, sm);
        int64_t s5[4] = {1, 1, 5, 4};
        CHECK(lss_op_logabsdet(g, odd) == NULL, "a non-square matrix is an error");
        lss_graph_reset(g);
        CHECK(lss_op_squeeze2d(g, lss_tensor_new(g, 4, s5), 0) == NULL, "squeeze of an odd size is an error");
    }
    lss_graph_free(g);
    lss_store_free(st);
}

/* ---------------------------------------------------------------- invertibility */
static void test_inverse(void) {
    int perm;
    for (perm = 0; perm < 2; perm++) {
        lss_flow_opts o;
        lss_flow *f;
        int n = 5, i;
        int64_t D, k;
        float *x, *z, *y, cond[10];
        double lp[5], lp2[5], maxe = 0, maxx = 0;
        lss_rng r;
        memset(&o, 0, sizeof o);
        o.h = 16; o.w = 8; o.levels = 2; o.steps = 3; o.hidden = 12; o.ncond = 2; o.permute = perm; o.periodic = perm; o.seed = 11;
        CHECK_OK(lss_flow_create(&o, &f));
        randomise(f, 0.05, 5 + perm);
        D = lss_flow_dim(f);
        x = (float *)malloc(sizeof(float) * (size_t)(n * D));
        z = (float *)malloc(sizeof(float) * (size_t)(n * D));
        y = (float *)malloc(sizeof(float) * (size_t)(n * D));
        lss_rng_init(&r, 21, 0);
        for (k = 0; k < n * D; k++) x[k] = (float)(2 * lss_rng_normal(&r));
        for (i = 0; i < 2 * n; i++) cond[i] = (float)lss_rng_normal(&r);
        CHECK_OK(lss_flow_forward(f, n, x, cond, z, lp));
        CHECK_OK(lss_flow_inverse(f, n, z, cond, y));
        for (k = 0; k < n * D; k++) {
            if (fabs(y[k] - x[k]) > maxe) maxe = fabs(y[k] - x[k]);
            if (fabs(x[k]) > maxx) maxx = fabs(x[k]);
        }
        CHECK(maxe <= 1e-5 * maxx, "permute %d: inverse(forward(x)) differs from x by %g (max |x| %g)", perm, maxe, maxx);
        /* the random parameters make a flow far from the identity: latents and log-determinants are not small */
        {
            double dz = 0, ldet = lp[0] + 0.5 * (double)D * log(TWO_PI), zz = 0;
            for (k = 0; k < D; k++) { dz += (z[k] - x[k]) * (z[k] - x[k]); zz += (double)z[k] * z[k]; }
            ldet += 0.5 * zz;
            CHECK(sqrt(dz / D) > 0.1 && fabs(ldet) > 1, "a non-trivial flow (rms |z - x| %g, log-det %g)", sqrt(dz / D), ldet);
        }
        /* the latents do not depend on the batch: maps one at a time give the same */
        for (i = 0; i < n; i++) CHECK_OK(lss_flow_forward(f, 1, x + i * D, cond + 2 * i, NULL, lp2 + i));
        for (i = 0; i < n; i++) CHECK_CLOSE(lp2[i], lp[i], 1e-6, 1e-4, "log p one map at a time");
        /* the conditioning matters */
        cond[0] += 1.0f;
        CHECK_OK(lss_flow_forward(f, 1, x, cond, NULL, lp2));
        CHECK(fabs(lp2[0] - lp[0]) > 1e-3, "conditioning changes the density (%g vs %g)", lp2[0], lp[0]);
        CHECK_ERR(lss_flow_forward(f, 1, x, NULL, NULL, lp2), LSS_ERR_ARG);
        free(x); free(z); free(y);
        lss_flow_free(f);
    }
}

/* ---------------------------------------------------------------- log-determinant vs the brute-force Jacobian */
static void test_logdet(void) {
    int perm;
    for (perm = 0; perm < 2; perm++) {
        lss_flow_opts o;
        lss_flow *f;
        lss_store *xs;
        lss_graph *g;
        lss_tensor *x, *z, *c;
        int64_t sx[4] = {1, 1, 4, 4}, sc[2] = {1, 1};
        float cv[1] = {0.7f}, seed[16];
        double J[256], lp, zz = 0, ref;
        int row, j, trial;
        memset(&o, 0, sizeof o);
        o.h = 4; o.w = 4; o.levels = 2; o.steps = 2; o.hidden = 6; o.ncond = 1; o.permute = perm; o.periodic = perm; o.seed = 3;
        CHECK_OK(lss_flow_create(&o, &f));
        randomise(f, 0.1, 17 + perm);
        CHECK_OK(lss_store_create(1, &xs));
        x = lss_store_add(xs, "x", 4, sx, LSS_INIT_NORMAL);
        CHECK_OK(lss_graph_create(&g));
        for (trial = 0; trial < 2; trial++) {
            float zl[16];
            for (j = 0; j < 16; j++) x->data[j] *= 1.5f;
            for (row = 0; row < 16; row++) {
                lss_graph_reset(g);
                lss_store_zero_grad(xs);
                c = lss_view(g, cv, 2, sc);
                z = lss_flow_encode(g, f, x, c);
                if (!z) break;
                for (j = 0; j < 16; j++) seed[j] = j == row ? 1.0f : 0.0f;
                if (lss_backward_seed(g, z, seed) != LSS_OK) break;
                for (j = 0; j < 16; j++) J[row * 16 + j] = x->grad[j];
                if (row == 0) memcpy(zl, z->data, sizeof zl);
            }
            CHECK(row == 16, "Jacobian rows: %s", lss_last_error());
            CHECK_OK(lss_flow_forward(f, 1, x->data, cv, NULL, &lp));
            zz = 0;
            for (j = 0; j < 16; j++) zz += (double)zl[j] * zl[j];
            /* ln p = -|z|^2 / 2 - D ln(2 pi) / 2 + ln|det J| */
            ref = ref_logdet(J, 16);
            printf("  permute %d trial %d: log|det J| %.6f (brute force %.6f)\n", perm, trial, lp + 0.5 * zz + 8 * log(TWO_PI), ref);
            {
                double off = 0;
                for (j = 0; j < 256; j++) if (j / 16 != j % 16 && fabs(J[j]) > off) off = fabs(J[j]);
                CHECK(off > 0.05, "a non-trivial Jacobian (largest off-diagonal element %g)", off);
            }
            CHECK_CLOSE(lp + 0.5 * zz + 8 * log(TWO_PI), ref, 0, 1e-4, "flow log-determinant vs brute-force Jacobian");
        }
        lss_graph_free(g);
        lss_store_free(xs);
        lss_flow_free(f);
    }
}

/* ---------------------------------------------------------------- transforms */
static void test_transform(void) {
    lss_flow_opts o;
    lss_flow *f;
    float k[2 * 64], y[2 * 64], back[2 * 64];
    double lp[2], lj[2];
    int i, p;
    lss_rng r;
    memset(&o, 0, sizeof o);
    o.h = 8; o.w = 8; o.levels = 1; o.steps = 1; o.seed = 1;
    CHECK_OK(lss_flow_create(&o, &f));
    CHECK_ERR(lss_flow_set_transform(f, LSS_FLOW_LOG, 0.0, 0, 1), LSS_ERR_ARG);
    CHECK_ERR(lss_flow_set_transform(f, LSS_FLOW_AFFINE, 0.0, 0, -1), LSS_ERR_ARG);
    CHECK_OK(lss_flow_set_transform(f, LSS_FLOW_LOG, 0.05, -3.2, 0.4));
    lss_rng_init(&r, 4, 0);
    for (i = 0; i < 128; i++) k[i] = (float)(exp(-3.2 + 0.4 * lss_rng_normal(&r)) - 0.05);
    /* a fresh flow is the identity in its space, so p(kappa) is the shifted lognormal density, pixel by pixel */
    CHECK_OK(lss_flow_logp(f, 2, k, NULL, lp));
    for (i = 0; i < 2; i++) {
        double ref = 0;
        for (p = 0; p < 64; p++) {
            double v = k[i * 64 + p] + 0.05, u = (log(v) + 3.2) / 0.4;
            ref += -0.5 * u * u - log(v * 0.4 * sqrt(TWO_PI));
        }
        CHECK_CLOSE(lp[i], ref, 1e-6, 1e-3, "ln p(kappa) of the identity flow = shifted lognormal density");
    }
    CHECK_OK(lss_flow_to_flow(f, 2, k, y, lj));
    lss_flow_to_kappa(f, 2, y, back);
    for (i = 0; i < 128; i++) if (fabs(back[i] - k[i]) > 1e-6) break;
    CHECK(i == 128, "to_kappa(to_flow(kappa)) = kappa");
    k[70] = -0.06f;
    CHECK_ERR(lss_flow_to_flow(f, 2, k, y, lj), LSS_ERR_RANGE);
    k[70] = NAN;
    CHECK_ERR(lss_flow_logp(f, 2, k, NULL, lp), LSS_ERR_NUMERIC);
    /* affine: Jacobian -D ln std */
    CHECK_OK(lss_flow_set_transform(f, LSS_FLOW_AFFINE, 0, 0.01, 0.02));
    k[70] = 0.0f;
    CHECK_OK(lss_flow_to_flow(f, 2, k, y, lj));
    CHECK_CLOSE(lj[0], -64 * log(0.02), 1e-6, 0, "affine Jacobian");
    /* sampling at temperature 0 gives the latent zero mapped back: mean of the transform here */
    CHECK_OK(lss_flow_sample(f, 2, NULL, 0.0, 1, 0, k));
    CHECK_CLOSE(k[5], 0.01, 1e-6, 1e-7, "temperature 0 sample");
    CHECK_ERR(lss_flow_sample(f, 2, NULL, -1.0, 1, 0, k), LSS_ERR_ARG);
    lss_flow_free(f);
    {
        lss_flow *bad;
        memset(&o, 0, sizeof o);
        o.h = 12; o.w = 12; o.levels = 3;
        CHECK_ERR(lss_flow_create(&o, &bad), LSS_ERR_ARG);
    }
}

/* ---------------------------------------------------------------- a trained flow on a Gaussian random field */
#define GS 16
#define GD (GS * GS)
/* 2-D DFT (unnormalised, double), separable. */
static double tw_c[GS * GS], tw_s[GS * GS];
static void dft2(const double *re_in, const double *im_in, double *re, double *im, int inverse) {
    double tr[GD], ti[GD];
    int a, b, k;
    double sg = inverse ? 1 : -1;
    if (tw_c[0] != 1.0)
        for (a = 0; a < GS * GS; a++) { tw_c[a] = cos(TWO_PI * (a / GS) * (a % GS) / GS); tw_s[a] = sin(TWO_PI * (a / GS) * (a % GS) / GS); }
    for (a = 0; a < GS; a++)
        for (k = 0; k < GS; k++) {
            double sr = 0, si = 0;
            for (b = 0; b < GS; b++) {
                double c = tw_c[k * GS + b], s = sg * tw_s[k * GS + b];
                double xr = re_in[a * GS + b], xi = im_in ? im_in[a * GS + b] : 0;
                sr += xr * c - xi * s;
                si += xr * s + xi * c;
            }
            tr[a * GS + k] = sr; ti[a * GS + k] = si;
        }
    for (k = 0; k < GS; k++)
        for (b = 0; b < GS; b++) {
            double sr = 0, si = 0;
            for (a = 0; a < GS; a++) {
                double c = tw_c[k * GS + a], s = sg * tw_s[k * GS + a];
                sr += tr[a * GS + b] * c - ti[a * GS + b] * s;
                si += tr[a * GS + b] * s + ti[a * GS + b] * c;
            }
            re[k * GS + b] = sr; im[k * GS + b] = si;
        }
}
static double lam[GD]; /* covariance eigenvalues per Fourier cell */
static void grf_init(void) {
    int a, b;
    double tot = 0;
    for (a = 0; a < GS; a++)
        for (b = 0; b < GS; b++) {
            double ky = a < GS / 2 ? a : a - GS, kx = b < GS / 2 ? b : b - GS, k2 = kx * kx + ky * ky;
            lam[a * GS + b] = 1.0 / pow(1.0 + k2 / 4.0, 1.5);
            tot += lam[a * GS + b];
        }
    for (a = 0; a < GD; a++) lam[a] *= GD / tot; /* unit pixel variance */
}
/* Map i of stream (seed, index): x = F^-1[ sqrt(lambda) F[w] ], w white. */
static void grf_draw(uint64_t seed, uint64_t index, float *out) {
    double w[GD], re[GD], im[GD], r2[GD], i2[GD];
    lss_rng r;
    int p;
    lss_rng_init(&r, seed, index);
    for (p = 0; p < GD; p++) w[p] = lss_rng_normal(&r);
    dft2(w, NULL, re, im, 0);
    for (p = 0; p < GD; p++) { re[p] *= sqrt(lam[p]); im[p] *= sqrt(lam[p]); }
    dft2(re, im, r2, i2, 1);
    for (p = 0; p < GD; p++) out[p] = (float)(r2[p] / GD);
}
/* Exact ln p(x) = -1/2 sum |F x|^2 / (N lambda) - 1/2 sum ln(2 pi lambda). */
static double grf_logp(const float *x) {
    double xd[GD], re[GD], im[GD], s = 0;
    int p;
    for (p = 0; p < GD; p++) xd[p] = x[p];
    dft2(xd, NULL, re, im, 0);
    for (p = 0; p < GD; p++) s += -0.5 * (re[p] * re[p] + im[p] * im[p]) / (GD * lam[p]) - 0.5 * log(TWO_PI * lam[p]);
    return s;
}

static void test_grf_bpd(void) {
    enum { B = 64, NV = 512 };
    const int steps = getenv("LSS_TEST_ASAN") ? 60 : (getenv("FLOW_STEPS") ? atoi(getenv("FLOW_STEPS")) : 150);
    lss_flow_opts o;
    lss_flow *f;
    lss_graph *g;
    lss_optim *opt;
    lss_optim_opts oo;
    float *xb = (float *)malloc(sizeof(float) * B * GD), *xv = (float *)malloc(sizeof(float) * NV * GD);
    double *lpv = (double *)malloc(sizeof(double) * NV), sum = 0, sum2 = 0, ex = 0, t0 = lss_time_now(), d, se;
    int t, i;
    int64_t sh[4] = {B, 1, GS, GS};
    grf_init();
    /* the exact density integrates the field's variance: E[-ln p] per pixel = 1/2 + 1/2 mean ln(2 pi lambda) */
    for (i = 0; i < NV; i++) grf_draw(77, 1000000 + (uint64_t)i, xv + (int64_t)i * GD);
    memset(&o, 0, sizeof o);
    o.periodic = getenv("FLOW_PER") ? atoi(getenv("FLOW_PER")) : 1;
    o.h = GS; o.w = GS; o.levels = 2; o.steps = 4; o.hidden = getenv("FLOW_HID") ? atoi(getenv("FLOW_HID")) : 16; o.seed = 9;
    CHECK_OK(lss_flow_create(&o, &f));
    CHECK_OK(lss_graph_create(&g));
    memset(&oo, 0, sizeof oo);
    oo.lr = getenv("FLOW_LR") ? atof(getenv("FLOW_LR")) : 3e-3; oo.sched = LSS_SCHED_COSINE; oo.total_steps = steps; oo.clip = LSS_CLIP_NORM; oo.clip_norm = 50;
    CHECK_OK(lss_optim_create(lss_flow_store(f), &oo, &opt));
    for (t = 0; t < steps; t++) {
        lss_tensor *l;
        for (i = 0; i < B; i++) grf_draw(77, (uint64_t)t * B + i, xb + (int64_t)i * GD);
        lss_graph_reset(g);
        lss_graph_set_training(g, 1);
        lss_store_zero_grad(lss_flow_store(f));
        l = lss_flow_nll(g, f, lss_view(g, xb, 4, sh), NULL, NULL);
        if (!l || lss_backward(g, l) != LSS_OK || lss_optim_step(opt) != LSS_OK) break;
    }
    CHECK(t == steps, "training stopped at step %d: %s", t, lss_last_error());
    CHECK_OK(lss_flow_forward(f, NV, xv, NULL, NULL, lpv));
    for (i = 0; i < NV; i++) {
        double e = grf_logp(xv + (int64_t)i * GD);
        double dd = (e - lpv[i]) / (GD * log(2.0)); /* model minus exact bits per dimension, paired */
        sum += dd; sum2 += dd * dd; ex += -e / (GD * log(2.0));
    }
    d = sum / NV;
    se = sqrt((sum2 / NV - d * d) / (NV - 1));
    printf("  flow on a 16x16 GRF: %d steps in %.1f s; held-out bpd exact %.4f, flow - exact %.4f +- %.4f\n", steps,
           lss_time_now() - t0, ex / NV, d, se);
    if (getenv("LSS_TEST_ASAN")) CHECK(isfinite(d), "bpd finite");
    else {
        CHECK(d < 0.05 && d > -4 * se, "held-out bits per dimension within 0.05 of the exact value: %.4f +- %.4f", d, se);
    }
    lss_optim_free(opt);
    lss_graph_free(g);
    lss_flow_free(f);
    free(xb); free(xv); free(lpv);
}

int main(void) {
    RUN(test_ops);
    RUN(test_inverse);
    RUN(test_logdet);
    RUN(test_transform);
    RUN(test_grf_bpd);
    LSS_TEST_END();
}
