/* test_gpu.c - tests of the CUDA backend (lss_gpu.cu, the "GPU API" block of lss_nn.h).
 * Without a device (or without LSS_CUDA) it checks that the backend says so cleanly and skips the
 * numerical comparisons. With a device, every GPU function is compared with the CPU code of
 * lss_nn.h / lss_core.h / lss_maps.h and with double-precision references written here:
 *   SGEMM and convolutions    against a double loop, within the worst-case bound of a floating-point
 *                             sum (below), and against lss_sgemm / lss_op_conv2d + lss_backward_seed;
 *   element-wise ops, Adam    in units in the last place (ulp) of the CPU result;
 *   Philox fills              bitwise against lss_rng (u32, uniform), <= 1 ulp for the Box-Muller
 *                             normals (CUDA's double log/sin/cos may differ from glibc's by 1 ulp);
 *   noise kernels             against CPU loops with the same stream layout and lss_scale_for_network;
 *   determinism               two runs bitwise equal. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_nn.h"
#include "lss_maps.h"
#include "tests/lss_test.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef LSS_CUDA
int main(void) {
    SKIP("built without CUDA");
    LSS_TEST_END();
}
#else

static lss_gpu *G = NULL;
static int g_asan = 0;
static const double U32 = 5.9604644775390625e-08; /* 2^-24, the unit roundoff of float */

/* ------------------------------------------------------------------ helpers */
static void fill_uniform(float *a, int64_t n, float lo, float hi, uint64_t seed) {
    lss_rng r;
    int64_t i;
    lss_rng_init(&r, seed, 7);
    for (i = 0; i < n; i++) a[i] = lo + (hi - lo) * lss_rng_uniformf(&r);
}

static float *dev_copy(const float *h, int64_t n) {
    float *d = NULL;
    if (lss_gpu_allocf(G, n, &d) != LSS_OK) return NULL;
    if (lss_gpu_uploadf(G, d, h, n) != LSS_OK) { lss_gpu_dealloc(G, d); return NULL; }
    return d;
}

/* Distance in units in the last place between two floats (0 for equal, huge for NaN vs number). */
static int64_t ulp_dist(float a, float b) {
    int32_t ia, ib;
    int64_t d;
    if (a != a || b != b) return (a != a && b != b) ? 0 : INT64_MAX / 2;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    d = (int64_t)ia - (int64_t)ib;
    return d < 0 ? -d : d;
}
static int64_t ulp_distd(double a, double b) {
    int64_t ia, ib;
    if (a != a || b != b) return (a != a && b != b) ? 0 : INT64_MAX / 2;
    memcpy(&ia, &a, 8);
    memcpy(&ib, &b, 8);
    if (ia < 0) ia = INT64_MIN - ia;
    if (ib < 0) ib = INT64_MIN - ib;
    return ia > ib ? ia - ib : ib - ia;
}

static int64_t max_ulp(const float *a, const float *b, int64_t n) {
    int64_t i, m = 0;
    for (i = 0; i < n; i++) { int64_t d = ulp_dist(a[i], b[i]); if (d > m) m = d; }
    return m;
}

/* Every element within atol[i] of ref[i]; reports the worst ratio. */
static void check_bound(const float *v, const double *ref, const double *tol, int64_t n, const char *what) {
    int64_t i, worst = -1;
    double wr = 0;
    for (i = 0; i < n; i++) {
        double e = fabs((double)v[i] - ref[i]), r = e / tol[i];
        if (r > wr || r != r) {
            wr = r;
            worst = i;
            if (r != r) break;
        }
    }
    CHECK(wr <= 1.0, "%s: element %lld off by %.3g (value %.9g, reference %.9g, bound %.3g)", what, (long long)worst,
          worst >= 0 ? fabs((double)v[worst] - ref[worst]) : 0.0, worst >= 0 ? v[worst] : 0.0f,
          worst >= 0 ? ref[worst] : 0.0, worst >= 0 ? tol[worst] : 0.0);
}

/* ------------------------------------------------------------------ no device / arguments */
static void test_errors_without_device(void) {
    int n = -1, ho = 0, wo = 0;
    lss_gpu *ctx = (lss_gpu *)&n;
    lss_gpu_conv_shape s = {2, 3, 17, 13, 5, 3, 4, 2, 1};
    CHECK_OK(lss_gpu_device_count(&n));
    CHECK(n >= 0, "device count %d", n);
    CHECK_ERR(lss_gpu_device_count(NULL), LSS_ERR_ARG);
    CHECK_ERR(lss_gpu_init(0, NULL), LSS_ERR_ARG);
    if (n == 0) {
        int st;
        lss_clearerr();
        st = lss_gpu_init(0, &ctx);
        CHECK((st == LSS_ERR_UNSUPPORTED || st == LSS_ERR_CUDA) && lss_last_error()[0] && ctx == NULL,
              "lss_gpu_init without a device: status %d, message '%s'", st, lss_last_error());
        CHECK(strstr(lss_last_error(), "no CUDA device") != NULL, "message '%s' does not say there is no device",
              lss_last_error());
    }
    lss_gpu_free(NULL);
    CHECK_ERR(lss_gpu_init(-1, &ctx), n == 0 ? LSS_ERR_UNSUPPORTED : LSS_ERR_ARG);
    CHECK_ERR(lss_gpu_sgemm(NULL, 0, 0, 2, 2, 2, 1.0f, NULL, 2, NULL, 2, 0.0f, NULL, 2), LSS_ERR_ARG);
    CHECK_ERR(lss_gpu_sync(NULL), LSS_ERR_ARG);
    /* output sizes as lss_op_conv2d: (17 + 2 - 3) / 2 + 1 = 9, (13 + 2 - 4) / 2 + 1 = 6 */
    CHECK_OK(lss_gpu_conv2d_outsize(&s, &ho, &wo));
    CHECK(ho == 9 && wo == 6, "conv output %dx%d, want 9x6", ho, wo);
    s.pad = -1;
    CHECK_ERR(lss_gpu_conv2d_outsize(&s, &ho, &wo), LSS_ERR_ARG);
    s.pad = 0; s.h = 2;
    CHECK_ERR(lss_gpu_conv2d_outsize(&s, &ho, &wo), LSS_ERR_SHAPE);
}

/* ------------------------------------------------------------------ SGEMM */
/* Error bound of a dot product of K terms in float, any order, plus the alpha/beta scaling:
 * |fl(c) - c| <= (K + 2) u sum_k |alpha a_ik b_kj| + 2 u |beta c_ij| (first order, u = 2^-24);
 * the test uses 2x that. With TF32 inputs are rounded to 10-bit mantissas first: add 4 * 2^-11
 * relative to sum |a b| (2 inputs, each rounded to 2^-11), doubled in case the conversion truncates. */
static void sgemm_case(int ta, int tb, int M, int N, int K, int pad, int tf32) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    int64_t na = (int64_t)(ta ? K : M) * lda, nb = (int64_t)(tb ? N : K) * ldb, nc = (int64_t)M * ldc, i, j, k;
    float *A = malloc(sizeof(float) * (na ? na : 1)), *B = malloc(sizeof(float) * (nb ? nb : 1));
    float *C0 = malloc(sizeof(float) * nc), *Cc = malloc(sizeof(float) * nc), *Cg = malloc(sizeof(float) * nc);
    float *Cg2 = malloc(sizeof(float) * nc);
    double *ref = malloc(sizeof(double) * nc), *tol = malloc(sizeof(double) * nc);
    float alpha = 0.75f, beta = -0.5f, *dA = NULL, *dB = NULL, *dC = NULL;
    char what[160];
    fill_uniform(A, na, -1, 1, 11 + (uint64_t)M);
    fill_uniform(B, nb, -1, 1, 12 + (uint64_t)N);
    fill_uniform(C0, nc, -1, 1, 13 + (uint64_t)K);
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            double s = 0, sa = 0;
            for (k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k], b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b;
                sa += fabs(a * b);
            }
            ref[i * ldc + j] = alpha * s + beta * (double)C0[i * ldc + j];
            tol[i * ldc + j] = 2.0 * ((K + 2) * U32 * fabs(alpha) * sa + 2 * U32 * fabs(beta * C0[i * ldc + j])) +
                               (tf32 ? 4.0 * 4.8828125e-4 * fabs(alpha) * sa : 0.0) + 1e-30;
        }
    /* padding columns of C are not part of the product: give them no tolerance beyond "unchanged" */
    for (i = 0; i < M; i++)
        for (j = N; j < ldc; j++) { ref[i * ldc + j] = C0[i * ldc + j]; tol[i * ldc + j] = 0; }
    memcpy(Cc, C0, sizeof(float) * nc);
    CHECK_OK(lss_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cc, ldc));
    dA = dev_copy(A, na ? na : 1);
    dB = dev_copy(B, nb ? nb : 1);
    dC = dev_copy(C0, nc);
    CHECK(dA && dB && dC, "device buffers: %s", lss_last_error());
    if (dA && dB && dC) {
        CHECK_OK(lss_gpu_set_tf32(G, tf32));
        CHECK_OK(lss_gpu_sgemm(G, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc));
        CHECK_OK(lss_gpu_downloadf(G, Cg, dC, nc));
        snprintf(what, sizeof what, "sgemm%s ta %d tb %d %dx%dx%d pad %d: GPU vs double", tf32 ? " TF32" : "", ta, tb,
                 M, N, K, pad);
        for (i = 0; i < nc; i++) if (tol[i] == 0) tol[i] = 1e-300;
        check_bound(Cg, ref, tol, nc, what);
        snprintf(what, sizeof what, "sgemm ta %d tb %d %dx%dx%d: CPU vs double", ta, tb, M, N, K);
        check_bound(Cc, ref, tol, nc, what);
        /* determinism: the same call again from the same input gives the same bits */
        CHECK_OK(lss_gpu_uploadf(G, dC, C0, nc));
        CHECK_OK(lss_gpu_sgemm(G, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc));
        CHECK_OK(lss_gpu_downloadf(G, Cg2, dC, nc));
        CHECK(!memcmp(Cg, Cg2, sizeof(float) * nc), "sgemm ta %d tb %d %dx%dx%d: two runs differ", ta, tb, M, N, K);
        CHECK_OK(lss_gpu_set_tf32(G, 0));
    }
    lss_gpu_dealloc(G, dA); lss_gpu_dealloc(G, dB); lss_gpu_dealloc(G, dC);
    free(A); free(B); free(C0); free(Cc); free(Cg); free(Cg2); free(ref); free(tol);
}

static void test_sgemm(void) {
    int ta, tb;
    float *d = NULL;
    for (ta = 0; ta < 2; ta++)
        for (tb = 0; tb < 2; tb++) {
            sgemm_case(ta, tb, 37, 53, 61, 0, 0);
            sgemm_case(ta, tb, 19, 7, 130, 3, 0);
        }
    sgemm_case(0, 0, 1, 1, 1, 0, 0);
    sgemm_case(0, 1, 5, 6, 0, 2, 0);           /* K = 0: C = beta C */
    sgemm_case(0, 0, 256, 192, g_asan ? 64 : 320, 0, 0);
    sgemm_case(1, 0, 128, 96, 200, 0, 1);      /* TF32 opt-in */
    CHECK_OK(lss_gpu_allocf(G, 16, &d));
    CHECK_ERR(lss_gpu_sgemm(G, 0, 0, 2, 2, 4, 1.0f, d, 3, d, 2, 0.0f, d, 2), LSS_ERR_ARG); /* lda < K */
    CHECK_ERR(lss_gpu_sgemm(G, 0, 0, -1, 2, 2, 1.0f, d, 2, d, 2, 0.0f, d, 2), LSS_ERR_ARG);
    lss_gpu_dealloc(G, d);
}

/* ------------------------------------------------------------------ convolutions */
/* Double references of the forward and both backward passes, with sum |terms| for the error bound:
 * each output is a sum of T terms (forward: Ci kh kw products + bias; dx: Co kh kw; dw and db:
 * N Ho Wo), so |error| <= 2 (T + 2) u sum |terms| for any summation order; cuDNN's FFT and
 * Winograd algorithms have norm-wise rather than element-wise error, for which 1e-5 of the largest
 * |reference| of the tensor is added. */
typedef struct { int N, Ci, H, W, Co, kh, kw, s, p, bias; } conv_case;

static void conv_case_run(const conv_case *c) {
    lss_gpu_conv_shape gs;
    int Ho, Wo, n, ci, co, y, x, ky, kx, rep;
    int64_t nx = (int64_t)c->N * c->Ci * c->H * c->W, nw = (int64_t)c->Co * c->Ci * c->kh * c->kw, ny, i;
    lss_store *st = NULL;
    lss_graph *g = NULL;
    lss_tensor *tx, *tw, *tb = NULL, *ty;
    float *dy, *gy[2], *gdx[2], *gdw[2], *gdb[2], *g0x, *g0w, *g0b;
    double *yr, *ya, *dxr, *dxa, *dwr, *dwa, *dbr, *dba, *tol;
    float *dX = NULL, *dW = NULL, *dB = NULL, *dY = NULL, *dDY = NULL, *dDX = NULL, *dDW = NULL, *dDB = NULL;
    char what[200], tag[120];
    gs.n = c->N; gs.cin = c->Ci; gs.h = c->H; gs.w = c->W; gs.cout = c->Co; gs.kh = c->kh; gs.kw = c->kw;
    gs.stride = c->s; gs.pad = c->p;
    if (lss_gpu_conv2d_outsize(&gs, &Ho, &Wo) != LSS_OK) { CHECK(0, "outsize: %s", lss_last_error()); return; }
    ny = (int64_t)c->N * c->Co * Ho * Wo;
    snprintf(tag, sizeof tag, "conv x[%d,%d,%d,%d] w[%d,%d,%d,%d] s%d p%d%s", c->N, c->Ci, c->H, c->W, c->Co, c->Ci,
             c->kh, c->kw, c->s, c->p, c->bias ? " bias" : "");
    /* CPU: lss_op_conv2d on store tensors, gradients by lss_backward_seed */
    CHECK_OK(lss_store_create(99, &st));
    tx = lss_store_add(st, "x", 4, (int64_t[]){c->N, c->Ci, c->H, c->W}, LSS_INIT_NORMAL);
    tw = lss_store_add(st, "w", 4, (int64_t[]){c->Co, c->Ci, c->kh, c->kw}, LSS_INIT_NORMAL);
    if (c->bias) tb = lss_store_add(st, "b", 1, (int64_t[]){c->Co}, LSS_INIT_NORMAL);
    CHECK_OK(lss_store_status(st));
    CHECK_OK(lss_graph_create(&g));
    dy = malloc(sizeof(float) * ny);
    fill_uniform(dy, ny, -1, 1, 21);
    /* initial gradient values, to check that the GPU accumulates */
    g0x = malloc(sizeof(float) * nx); g0w = malloc(sizeof(float) * nw); g0b = malloc(sizeof(float) * c->Co);
    fill_uniform(g0x, nx, -0.5f, 0.5f, 22); fill_uniform(g0w, nw, -0.5f, 0.5f, 23); fill_uniform(g0b, c->Co, -0.5f, 0.5f, 24);
    lss_store_zero_grad(st);
    ty = lss_op_conv2d(g, tx, tw, tb, c->s, c->p);
    CHECK(ty && ty->n == ny, "%s: lss_op_conv2d failed: %s", tag, lss_last_error());
    if (!ty || ty->n != ny) goto done;
    CHECK_OK(lss_backward_seed(g, ty, dy));
    /* double references */
    yr = calloc((size_t)ny, sizeof(double)); ya = calloc((size_t)ny, sizeof(double));
    dxr = calloc((size_t)nx, sizeof(double)); dxa = calloc((size_t)nx, sizeof(double));
    dwr = calloc((size_t)nw, sizeof(double)); dwa = calloc((size_t)nw, sizeof(double));
    dbr = calloc((size_t)c->Co, sizeof(double)); dba = calloc((size_t)c->Co, sizeof(double));
    tol = malloc(sizeof(double) * (size_t)(nx > nw ? (nx > ny ? nx : ny) : (nw > ny ? nw : ny)));
    for (n = 0; n < c->N; n++)
        for (co = 0; co < c->Co; co++)
            for (y = 0; y < Ho; y++)
                for (x = 0; x < Wo; x++) {
                    int64_t oi = (((int64_t)n * c->Co + co) * Ho + y) * Wo + x;
                    double s = c->bias ? tb->data[co] : 0, sa = fabs(s), gv = dy[oi];
                    for (ci = 0; ci < c->Ci; ci++)
                        for (ky = 0; ky < c->kh; ky++)
                            for (kx = 0; kx < c->kw; kx++) {
                                int iy = y * c->s - c->p + ky, ix = x * c->s - c->p + kx;
                                int64_t xi, wi;
                                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                                xi = (((int64_t)n * c->Ci + ci) * c->H + iy) * c->W + ix;
                                wi = (((int64_t)co * c->Ci + ci) * c->kh + ky) * c->kw + kx;
                                s += (double)tx->data[xi] * tw->data[wi];
                                sa += fabs((double)tx->data[xi] * tw->data[wi]);
                                dxr[xi] += gv * tw->data[wi]; dxa[xi] += fabs(gv * tw->data[wi]);
                                dwr[wi] += gv * tx->data[xi]; dwa[wi] += fabs(gv * tx->data[xi]);
                            }
                    yr[oi] = s; ya[oi] = sa;
                    dbr[co] += gv; dba[co] += fabs(gv);
                }
    /* GPU, twice (determinism) */
    for (rep = 0; rep < 2; rep++) {
        gy[rep] = malloc(sizeof(float) * ny); gdx[rep] = malloc(sizeof(float) * nx);
        gdw[rep] = malloc(sizeof(float) * nw); gdb[rep] = malloc(sizeof(float) * c->Co);
    }
    dX = dev_copy(tx->data, nx); dW = dev_copy(tw->data, nw); dB = c->bias ? dev_copy(tb->data, c->Co) : NULL;
    dDY = dev_copy(dy, ny);
    CHECK_OK(lss_gpu_allocf(G, ny, &dY));
    CHECK_OK(lss_gpu_allocf(G, nx, &dDX)); CHECK_OK(lss_gpu_allocf(G, nw, &dDW)); CHECK_OK(lss_gpu_allocf(G, c->Co, &dDB));
    for (rep = 0; rep < 2; rep++) {
        CHECK_OK(lss_gpu_uploadf(G, dDX, g0x, nx)); CHECK_OK(lss_gpu_uploadf(G, dDW, g0w, nw));
        CHECK_OK(lss_gpu_uploadf(G, dDB, g0b, c->Co));
        CHECK_OK(lss_gpu_conv2d_forward(G, &gs, dX, dW, dB, dY));
        CHECK_OK(lss_gpu_conv2d_backward_data(G, &gs, dDY, dW, dDX));
        CHECK_OK(lss_gpu_conv2d_backward_filter(G, &gs, dX, dDY, dDW, c->bias ? dDB : NULL));
        CHECK_OK(lss_gpu_downloadf(G, gy[rep], dY, ny)); CHECK_OK(lss_gpu_downloadf(G, gdx[rep], dDX, nx));
        CHECK_OK(lss_gpu_downloadf(G, gdw[rep], dDW, nw)); CHECK_OK(lss_gpu_downloadf(G, gdb[rep], dDB, c->Co));
    }
    {
        double mx;
        /* forward */
        for (mx = 0, i = 0; i < ny; i++) if (fabs(yr[i]) > mx) mx = fabs(yr[i]);
        for (i = 0; i < ny; i++) tol[i] = 2.0 * (c->Ci * c->kh * c->kw + 3) * U32 * ya[i] + 1e-5 * mx + 1e-30;
        snprintf(what, sizeof what, "%s: GPU forward vs double", tag); check_bound(gy[0], yr, tol, ny, what);
        snprintf(what, sizeof what, "%s: CPU forward vs double", tag); check_bound(ty->data, yr, tol, ny, what);
        /* dx (CPU from zero, GPU from g0x) */
        for (mx = 0, i = 0; i < nx; i++) if (fabs(dxr[i]) > mx) mx = fabs(dxr[i]);
        for (i = 0; i < nx; i++) tol[i] = 2.0 * (c->Co * c->kh * c->kw + 3) * U32 * dxa[i] + 1e-5 * mx + 1e-30;
        snprintf(what, sizeof what, "%s: CPU dx vs double", tag); check_bound(tx->grad, dxr, tol, nx, what);
        for (i = 0; i < nx; i++) { dxr[i] += g0x[i]; tol[i] += 2 * U32 * (fabs(g0x[i]) + fabs(dxr[i])); }
        snprintf(what, sizeof what, "%s: GPU dx (accumulated) vs double", tag); check_bound(gdx[0], dxr, tol, nx, what);
        /* dw */
        for (mx = 0, i = 0; i < nw; i++) if (fabs(dwr[i]) > mx) mx = fabs(dwr[i]);
        for (i = 0; i < nw; i++) tol[i] = 2.0 * ((double)c->N * Ho * Wo + 3) * U32 * dwa[i] + 1e-5 * mx + 1e-30;
        snprintf(what, sizeof what, "%s: CPU dw vs double", tag); check_bound(tw->grad, dwr, tol, nw, what);
        for (i = 0; i < nw; i++) { dwr[i] += g0w[i]; tol[i] += 2 * U32 * (fabs(g0w[i]) + fabs(dwr[i])); }
        snprintf(what, sizeof what, "%s: GPU dw (accumulated) vs double", tag); check_bound(gdw[0], dwr, tol, nw, what);
        if (c->bias) {
            for (i = 0; i < c->Co; i++) tol[i] = 2.0 * ((double)c->N * Ho * Wo + 3) * U32 * dba[i] + 1e-30;
            snprintf(what, sizeof what, "%s: CPU db vs double", tag); check_bound(tb->grad, dbr, tol, c->Co, what);
            for (i = 0; i < c->Co; i++) { dbr[i] += g0b[i]; tol[i] += 2 * U32 * (fabs(g0b[i]) + fabs(dbr[i])); }
            snprintf(what, sizeof what, "%s: GPU db (accumulated) vs double", tag); check_bound(gdb[0], dbr, tol, c->Co, what);
        }
        CHECK(!memcmp(gy[0], gy[1], sizeof(float) * ny) && !memcmp(gdx[0], gdx[1], sizeof(float) * nx) &&
              !memcmp(gdw[0], gdw[1], sizeof(float) * nw) && !memcmp(gdb[0], gdb[1], sizeof(float) * c->Co),
              "%s: two GPU runs differ", tag);
    }
    lss_gpu_dealloc(G, dX); lss_gpu_dealloc(G, dW); lss_gpu_dealloc(G, dB); lss_gpu_dealloc(G, dY);
    lss_gpu_dealloc(G, dDY); lss_gpu_dealloc(G, dDX); lss_gpu_dealloc(G, dDW); lss_gpu_dealloc(G, dDB);
    for (rep = 0; rep < 2; rep++) { free(gy[rep]); free(gdx[rep]); free(gdw[rep]); free(gdb[rep]); }
    free(yr); free(ya); free(dxr); free(dxa); free(dwr); free(dwa); free(dbr); free(dba); free(tol);
done:
    free(dy); free(g0x); free(g0w); free(g0b);
    lss_graph_free(g);
    lss_store_free(st);
}

static void test_conv(void) {
    static const conv_case cases[] = {
        {2, 3, 17, 13, 5, 3, 3, 1, 1, 1},   /* "same" 3x3 */
        {2, 4, 16, 16, 6, 5, 5, 2, 2, 1},   /* the DeepLSS strided 5x5 */
        {3, 2, 9, 11, 3, 1, 1, 2, 0, 0},    /* 1x1 projection, stride 2, no bias */
        {1, 3, 12, 10, 4, 3, 5, 3, 0, 1},   /* rectangular kernel, stride 3 */
        {2, 8, 32, 32, 8, 3, 3, 1, 1, 0},   /* residual-block size */
        {1, 1, 5, 5, 2, 7, 7, 1, 3, 1},     /* kernel larger than the input (padding) */
    };
    size_t i;
    lss_gpu_conv_shape bad = {1, 1, 4, 4, 1, 3, 3, 0, 0};
    float *d = NULL;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) conv_case_run(&cases[i]);
    CHECK_OK(lss_gpu_allocf(G, 64, &d));
    CHECK_ERR(lss_gpu_conv2d_forward(G, &bad, d, d, NULL, d), LSS_ERR_ARG); /* stride 0 */
    bad.stride = 1;
    CHECK_ERR(lss_gpu_conv2d_forward(G, &bad, d, NULL, NULL, d), LSS_ERR_ARG);
    lss_gpu_dealloc(G, d);
}

/* ------------------------------------------------------------------ element-wise and Adam */
/* Tolerances in ulp of the CPU result: operations that are single IEEE-rounded float operations
 * (relu, leaky, scale, add-scalar, add, sub, mul and the products of the backward passes) must be
 * bitwise equal (0 ulp); exp, log, tanh (CUDA: <= 2, 1, 2 ulp; glibc <= 1) within 4 ulp; softplus and
 * sigmoid compose exp with log1p or a division: within 6 ulp. */
static void test_elementwise(void) {
    static const struct { lss_gpu_unop op; const char *name; float lo, hi, p; int64_t fwd_ulp, bwd_ulp; } ops[] = {
        {LSS_GPU_RELU, "relu", -3, 3, 0, 0, 0},        {LSS_GPU_LEAKY, "leaky", -3, 3, 0.2f, 0, 0},
        {LSS_GPU_SOFTPLUS, "softplus", -30, 30, 0, 6, 6}, {LSS_GPU_TANH, "tanh", -6, 6, 0, 4, 0},
        {LSS_GPU_SIGMOID, "sigmoid", -30, 30, 0, 6, 0}, {LSS_GPU_EXP, "exp", -20, 20, 0, 4, 0},
        {LSS_GPU_LOG, "log", 1e-6f, 100, 0, 4, 0},     {LSS_GPU_SCALE, "scale", -5, 5, -1.7f, 0, 0},
        {LSS_GPU_ADDS, "add_scalar", -5, 5, 0.3f, 0, 0},
    };
    int64_t n = g_asan ? 4099 : 100003;
    size_t o;
    float *x = malloc(sizeof(float) * n), *dy = malloc(sizeof(float) * n), *g0 = malloc(sizeof(float) * n);
    float *gy = malloc(sizeof(float) * n), *gg = malloc(sizeof(float) * n), *cg = malloc(sizeof(float) * n);
    float *dX = NULL, *dY = NULL, *dDY = NULL, *dG = NULL, *dB = NULL, *dG2 = NULL;
    fill_uniform(dy, n, -2, 2, 31);
    fill_uniform(g0, n, -1, 1, 32);
    CHECK_OK(lss_gpu_allocf(G, n, &dX)); CHECK_OK(lss_gpu_allocf(G, n, &dY)); CHECK_OK(lss_gpu_allocf(G, n, &dG));
    CHECK_OK(lss_gpu_allocf(G, n, &dB)); CHECK_OK(lss_gpu_allocf(G, n, &dG2));
    dDY = dev_copy(dy, n);
    for (o = 0; o < sizeof ops / sizeof ops[0]; o++) {
        lss_store *st = NULL;
        lss_graph *g = NULL;
        lss_tensor *tx, *ty = NULL;
        int64_t k, du;
        CHECK_OK(lss_store_create(5, &st));
        tx = lss_store_add(st, "x", 1, (int64_t[]){n}, LSS_INIT_ZERO);
        CHECK_OK(lss_graph_create(&g));
        if (!tx || !g) { lss_graph_free(g); lss_store_free(st); continue; }
        fill_uniform(x, n, ops[o].lo, ops[o].hi, 40 + o);
        x[0] = 0.0f; if (ops[o].op == LSS_GPU_LOG) x[0] = 1.0f;
        memcpy(tx->data, x, sizeof(float) * n);
        lss_store_zero_grad(st);
        switch (ops[o].op) {
        case LSS_GPU_RELU: ty = lss_op_relu(g, tx); break;
        case LSS_GPU_LEAKY: ty = lss_op_leaky_relu(g, tx, ops[o].p); break;
        case LSS_GPU_SOFTPLUS: ty = lss_op_softplus(g, tx); break;
        case LSS_GPU_TANH: ty = lss_op_tanh(g, tx); break;
        case LSS_GPU_SIGMOID: ty = lss_op_sigmoid(g, tx); break;
        case LSS_GPU_EXP: ty = lss_op_exp(g, tx); break;
        case LSS_GPU_LOG: ty = lss_op_ln(g, tx); break;
        case LSS_GPU_SCALE: ty = lss_op_scale(g, tx, ops[o].p); break;
        default: ty = lss_op_add_scalar(g, tx, ops[o].p); break;
        }
        CHECK(ty != NULL, "%s on the CPU: %s", ops[o].name, lss_last_error());
        if (ty) {
            CHECK_OK(lss_backward_seed(g, ty, dy));
            /* gx starts at g0 for the bitwise-equal backward passes (checks the accumulation); at 0
             * where the CPU and GPU products may differ by a few ulp (g0 + d could cancel and turn
             * those into many ulp of the sum) */
            for (k = 0; k < n; k++) cg[k] = ops[o].bwd_ulp ? tx->grad[k] : g0[k] + tx->grad[k];
            CHECK_OK(lss_gpu_uploadf(G, dX, x, n));
            CHECK_OK(lss_gpu_unary(G, ops[o].op, ops[o].p, dX, dY, n));
            CHECK_OK(lss_gpu_downloadf(G, gy, dY, n));
            du = max_ulp(gy, ty->data, n);
            CHECK(du <= ops[o].fwd_ulp, "%s forward: %lld ulp from the CPU (allowed %lld)", ops[o].name, (long long)du,
                  (long long)ops[o].fwd_ulp);
            /* backward from the CPU's y, so that only the backward kernel is compared */
            CHECK_OK(lss_gpu_uploadf(G, dY, ty->data, n));
            if (ops[o].bwd_ulp) CHECK_OK(lss_gpu_zerof(G, dG, n));
            else CHECK_OK(lss_gpu_uploadf(G, dG, g0, n));
            CHECK_OK(lss_gpu_unary_backward(G, ops[o].op, ops[o].p, dX, dY, dDY, dG, n));
            CHECK_OK(lss_gpu_downloadf(G, gg, dG, n));
            /* the CPU gradient accumulated from zero is d exactly; cg = fl(g0 + d) is what the
             * GPU's gx + d gives when its d is equal */
            du = max_ulp(gg, cg, n);
            CHECK(du <= ops[o].bwd_ulp, "%s backward: %lld ulp from the CPU (allowed %lld)", ops[o].name, (long long)du,
                  (long long)ops[o].bwd_ulp);
            /* in place */
            CHECK_OK(lss_gpu_unary(G, ops[o].op, ops[o].p, dX, dX, n));
            CHECK_OK(lss_gpu_downloadf(G, gg, dX, n));
            CHECK(!memcmp(gg, gy, sizeof(float) * n), "%s in place differs from out of place", ops[o].name);
        }
        lss_graph_free(g);
        lss_store_free(st);
    }
    /* binary operations: forward and backward bitwise (single roundings) */
    {
        static const lss_gpu_binop bops[3] = {LSS_GPU_ADD, LSS_GPU_SUB, LSS_GPU_MUL};
        static const char *bnames[3] = {"add", "sub", "mul"};
        float *b = malloc(sizeof(float) * n), *ga = malloc(sizeof(float) * n), *gb = malloc(sizeof(float) * n);
        float *ra = malloc(sizeof(float) * n), *rb = malloc(sizeof(float) * n), *ry = malloc(sizeof(float) * n);
        int q;
        int64_t k;
        fill_uniform(x, n, -3, 3, 51);
        fill_uniform(b, n, -3, 3, 52);
        CHECK_OK(lss_gpu_uploadf(G, dX, x, n));
        CHECK_OK(lss_gpu_uploadf(G, dB, b, n));
        for (q = 0; q < 3; q++) {
            for (k = 0; k < n; k++) {
                float d = dy[k];
                ry[k] = q == 2 ? x[k] * b[k] : q == 1 ? x[k] - b[k] : x[k] + b[k];
                ra[k] = g0[k] + (q == 2 ? d * b[k] : d);
                rb[k] = q == 2 ? g0[k] + d * x[k] : q == 1 ? g0[k] - d : g0[k] + d;
            }
            CHECK_OK(lss_gpu_binary(G, bops[q], dX, dB, dY, n));
            CHECK_OK(lss_gpu_downloadf(G, gy, dY, n));
            CHECK(max_ulp(gy, ry, n) == 0, "%s forward differs from the CPU", bnames[q]);
            CHECK_OK(lss_gpu_uploadf(G, dG, g0, n));
            CHECK_OK(lss_gpu_uploadf(G, dG2, g0, n));
            CHECK_OK(lss_gpu_binary_backward(G, bops[q], dX, dB, dDY, dG, dG2, n));
            CHECK_OK(lss_gpu_downloadf(G, ga, dG, n));
            CHECK_OK(lss_gpu_downloadf(G, gb, dG2, n));
            CHECK(max_ulp(ga, ra, n) == 0 && max_ulp(gb, rb, n) == 0, "%s backward differs from the CPU", bnames[q]);
        }
        /* and against the tape of lss_nn.h for mul (the CPU's definition) */
        {
            lss_store *st = NULL;
            lss_graph *g = NULL;
            lss_tensor *ta, *tb, *ty;
            CHECK_OK(lss_store_create(5, &st));
            ta = lss_store_add(st, "a", 1, (int64_t[]){n}, LSS_INIT_ZERO);
            tb = lss_store_add(st, "b", 1, (int64_t[]){n}, LSS_INIT_ZERO);
            CHECK_OK(lss_graph_create(&g));
            if (ta && tb && g) {
                memcpy(ta->data, x, sizeof(float) * n);
                memcpy(tb->data, b, sizeof(float) * n);
                lss_store_zero_grad(st);
                ty = lss_op_mul(g, ta, tb);
                CHECK_OK(lss_backward_seed(g, ty, dy));
                CHECK_OK(lss_gpu_binary(G, LSS_GPU_MUL, dX, dB, dY, n));
                CHECK_OK(lss_gpu_downloadf(G, gy, dY, n));
                CHECK(ty && max_ulp(gy, ty->data, n) == 0, "mul forward differs from lss_op_mul");
                CHECK_OK(lss_gpu_zerof(G, dG, n));
                CHECK_OK(lss_gpu_zerof(G, dG2, n));
                CHECK_OK(lss_gpu_binary_backward(G, LSS_GPU_MUL, dX, dB, dDY, dG, dG2, n));
                CHECK_OK(lss_gpu_downloadf(G, ga, dG, n));
                CHECK_OK(lss_gpu_downloadf(G, gb, dG2, n));
                CHECK(max_ulp(ga, ta->grad, n) == 0 && max_ulp(gb, tb->grad, n) == 0, "mul backward differs from lss_op_mul");
                /* x * x: both gradients into one buffer, as the tape accumulates a then b */
                lss_graph_reset(g);
                lss_store_zero_grad(st);
                ty = lss_op_mul(g, ta, ta);
                CHECK_OK(lss_backward_seed(g, ty, dy));
                CHECK_OK(lss_gpu_zerof(G, dG, n));
                CHECK_OK(lss_gpu_binary_backward(G, LSS_GPU_MUL, dX, dX, dDY, dG, dG, n));
                CHECK_OK(lss_gpu_downloadf(G, ga, dG, n));
                CHECK(max_ulp(ga, ta->grad, n) == 0, "x * x backward (one gradient buffer) differs from lss_op_mul");
            }
            lss_graph_free(g);
            lss_store_free(st);
        }
        free(b); free(ga); free(gb); free(ra); free(rb); free(ry);
    }
    CHECK_ERR(lss_gpu_unary(G, (lss_gpu_unop)42, 0, dX, dY, n), LSS_ERR_ARG);
    CHECK_ERR(lss_gpu_unary(G, LSS_GPU_RELU, 0, dX, dY, -1), LSS_ERR_ARG);
    lss_gpu_dealloc(G, dX); lss_gpu_dealloc(G, dY); lss_gpu_dealloc(G, dDY); lss_gpu_dealloc(G, dG);
    lss_gpu_dealloc(G, dB); lss_gpu_dealloc(G, dG2);
    free(x); free(dy); free(g0); free(gy); free(gg); free(cg);
}

/* Adam and AdamW: 6 steps against lss_optim_step on the same gradients. Every operation of the
 * update is one IEEE rounding on both sides (no contraction), so the weights must agree bitwise;
 * the check allows 1 ulp. */
static void test_adam(void) {
    int kind, step;
    int64_t n = g_asan ? 1031 : 10007;
    for (kind = 0; kind < 2; kind++) {
        lss_store *st = NULL;
        lss_optim *opt = NULL;
        lss_optim_opts oo;
        lss_tensor *tw;
        float *w0, *gr, *gw, *dW = NULL, *dG = NULL, *dM = NULL, *dV = NULL;
        memset(&oo, 0, sizeof oo);
        oo.kind = kind ? LSS_OPT_ADAMW : LSS_OPT_ADAM;
        oo.lr = 3e-3;
        oo.weight_decay = kind ? 0.05 : 0.01;
        CHECK_OK(lss_store_create(77, &st));
        tw = lss_store_add(st, "w", 1, (int64_t[]){n}, LSS_INIT_NORMAL);
        CHECK_OK(lss_optim_create(st, &oo, &opt));
        if (!tw || !opt) { lss_optim_free(opt); lss_store_free(st); continue; }
        w0 = malloc(sizeof(float) * n); gr = malloc(sizeof(float) * n); gw = malloc(sizeof(float) * n);
        memcpy(w0, tw->data, sizeof(float) * n);
        dW = dev_copy(w0, n);
        CHECK_OK(lss_gpu_allocf(G, n, &dG)); CHECK_OK(lss_gpu_allocf(G, n, &dM)); CHECK_OK(lss_gpu_allocf(G, n, &dV));
        CHECK_OK(lss_gpu_zerof(G, dM, n)); CHECK_OK(lss_gpu_zerof(G, dV, n));
        for (step = 0; step < 6; step++) {
            fill_uniform(gr, n, -1, 1, 100 + (uint64_t)step);
            gr[step] = 0.0f;
            memcpy(tw->grad, gr, sizeof(float) * n);
            CHECK_OK(lss_optim_step(opt));
            CHECK_OK(lss_gpu_uploadf(G, dG, gr, n));
            CHECK_OK(lss_gpu_adam(G, dW, dG, dM, dV, n, oo.lr, 0.9, 0.999, 1e-8, oo.weight_decay, kind, step));
        }
        CHECK_OK(lss_gpu_downloadf(G, gw, dW, n));
        {
            int64_t du = max_ulp(gw, tw->data, n);
            CHECK(du <= 1, "%s: weights %lld ulp from lss_optim_step after 6 steps", kind ? "AdamW" : "Adam", (long long)du);
        }
        CHECK_ERR(lss_gpu_adam(G, dW, dG, dM, dV, n, -1.0, 0.9, 0.999, 1e-8, 0, 0, 0), LSS_ERR_ARG);
        lss_gpu_dealloc(G, dW); lss_gpu_dealloc(G, dG); lss_gpu_dealloc(G, dM); lss_gpu_dealloc(G, dV);
        free(w0); free(gr); free(gw);
        lss_optim_free(opt);
        lss_store_free(st);
    }
}

/* ------------------------------------------------------------------ Philox and noise */
static void test_philox_fills(void) {
    const uint64_t seed = 0x0123456789ABCDEFull, stream = 0xFEDCBA9876543210ull, c0 = 12345;
    int64_t n = g_asan ? 4099 : 100003, i, nd = 0, nf = 0, mu = 0;
    uint32_t *hu = malloc(sizeof(uint32_t) * n), *gu = malloc(sizeof(uint32_t) * n), *du = NULL;
    float *hf = malloc(sizeof(float) * n), *gf = malloc(sizeof(float) * n), *gf2 = malloc(sizeof(float) * n);
    double *hd = malloc(sizeof(double) * n), *gd = malloc(sizeof(double) * n);
    void *dbuf = NULL;
    lss_rng r;
    CHECK_OK(lss_gpu_alloc(G, sizeof(double) * n, &dbuf));
    du = (uint32_t *)dbuf;
    /* u32: the lss_rng_u32 sequence from block c0 */
    lss_rng_init(&r, seed, stream); lss_rng_seek(&r, c0);
    for (i = 0; i < n; i++) hu[i] = lss_rng_u32(&r);
    CHECK_OK(lss_gpu_rand_u32(G, du, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gu, du, sizeof(uint32_t) * n));
    CHECK(!memcmp(hu, gu, sizeof(uint32_t) * n), "rand_u32 differs from lss_rng_u32");
    /* Philox itself against the published known-answer vector (Random123 kat_vectors: philox4x32_10,
     * counter and key all ones -> 408f276d 41c83b0e a20bc7c6 6d5451fd) through lss_philox4x32 */
    {
        uint32_t ctr[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, key[2] = {0xffffffffu, 0xffffffffu}, out[4];
        lss_philox4x32(ctr, key, out);
        CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu,
              "Philox known answer: %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
        CHECK_OK(lss_gpu_rand_u32(G, du, 4, UINT64_MAX, UINT64_MAX, UINT64_MAX));
        CHECK_OK(lss_gpu_download(G, gu, du, sizeof(uint32_t) * 4));
        CHECK(!memcmp(gu, out, sizeof out), "GPU Philox known answer: %08x %08x %08x %08x", gu[0], gu[1], gu[2], gu[3]);
    }
    /* uniformf */
    lss_rng_init(&r, seed, stream); lss_rng_seek(&r, c0);
    for (i = 0; i < n; i++) hf[i] = lss_rng_uniformf(&r);
    CHECK_OK(lss_gpu_rand_uniformf(G, (float *)dbuf, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gf, dbuf, sizeof(float) * n));
    CHECK(!memcmp(hf, gf, sizeof(float) * n), "rand_uniformf differs from lss_rng_uniformf");
    /* uniform (double) */
    lss_rng_init(&r, seed, stream); lss_rng_seek(&r, c0);
    for (i = 0; i < n; i++) hd[i] = lss_rng_uniform(&r);
    CHECK_OK(lss_gpu_rand_uniform(G, (double *)dbuf, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gd, dbuf, sizeof(double) * n));
    CHECK(!memcmp(hd, gd, sizeof(double) * n), "rand_uniform differs from lss_rng_uniform");
    /* normal (double): CUDA's log, sin, cos are within 1 ulp of glibc's, so each normal within a few ulp */
    lss_rng_init(&r, seed, stream); lss_rng_seek(&r, c0);
    for (i = 0; i < n; i++) hd[i] = lss_rng_normal(&r);
    CHECK_OK(lss_gpu_rand_normal(G, (double *)dbuf, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gd, dbuf, sizeof(double) * n));
    for (i = 0; i < n; i++) {
        int64_t d = ulp_distd(gd[i], hd[i]);
        if (d) nd++;
        if (d > mu) mu = d;
    }
    CHECK(mu <= 8, "rand_normal: %lld ulp (double) from lss_rng_normal", (long long)mu);
    printf("  normal (double): %lld of %lld differ from the CPU, by at most %lld ulp\n", (long long)nd, (long long)n,
           (long long)mu);
    /* normalf: the same rounded to float; a double difference of a few ulp changes the float only when
     * the value lies within that of a float rounding boundary (probability ~ 1e-8 per element) */
    CHECK_OK(lss_gpu_rand_normalf(G, (float *)dbuf, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gf, dbuf, sizeof(float) * n));
    for (i = 0; i < n; i++) { hf[i] = (float)hd[i]; if (gf[i] != hf[i]) nf++; }
    CHECK(max_ulp(gf, hf, n) <= 1 && nf <= 2, "rand_normalf: %lld floats differ from (float)lss_rng_normal", (long long)nf);
    /* determinism */
    CHECK_OK(lss_gpu_rand_normalf(G, (float *)dbuf, n, seed, stream, c0));
    CHECK_OK(lss_gpu_download(G, gf2, dbuf, sizeof(float) * n));
    CHECK(!memcmp(gf, gf2, sizeof(float) * n), "rand_normalf: two runs differ");
    CHECK_ERR(lss_gpu_rand_u32(G, NULL, 5, 1, 2, 3), LSS_ERR_ARG);
    lss_gpu_dealloc(G, dbuf);
    free(hu); free(gu); free(hf); free(gf); free(gf2); free(hd); free(gd);
}

/* Shape noise: the CPU reference loop with the GPU's documented layout (map j: normals of stream
 * streams[j] in lss_rng_normal order, rounded to float), both modes; <= 1 ulp (normals above). */
static void test_shape_noise(void) {
    enum { NMAPS = 3 };
    const int64_t npix = g_asan ? 33 * 33 : 129 * 129;
    const uint64_t seed = 43, streams[NMAPS] = {(5ull << 20) ^ (4ull << 12) ^ 0, (5ull << 20) ^ (4ull << 12) ^ 1,
                                                (6ull << 20) ^ (4ull << 12) ^ 0};
    const double sigma_e = 0.26;
    int64_t tot = NMAPS * npix, i, k;
    int mode, j;
    float *kap = malloc(sizeof(float) * tot), *cnt = malloc(sizeof(float) * tot), *ref = malloc(sizeof(float) * tot);
    float *gk = malloc(sizeof(float) * tot), *dK = NULL, *dC = NULL;
    lss_rng r;
    fill_uniform(kap, tot, -0.05f, 0.05f, 61);
    lss_rng_init(&r, 62, 0);
    for (i = 0; i < tot; i++) cnt[i] = (float)lss_rng_poisson(&r, 1.5);
    dC = dev_copy(cnt, tot);
    CHECK_OK(lss_gpu_allocf(G, tot, &dK));
    for (mode = 0; mode < 2; mode++) {
        for (j = 0; j < NMAPS; j++) {
            lss_rng_init(&r, seed, streams[j]);
            for (k = 0; k < npix; k++) {
                float eps = (float)lss_rng_normal(&r), c = cnt[j * npix + k];
                double ng = mode ? c + 1.0 : (c > 1 ? c : 1.0);
                ref[j * npix + k] = (float)(kap[j * npix + k] + sigma_e / sqrt(ng) * eps);
            }
        }
        CHECK_OK(lss_gpu_uploadf(G, dK, kap, tot));
        CHECK_OK(lss_gpu_shape_noise(G, dK, dC, NMAPS, npix, sigma_e, mode, seed, streams));
        CHECK_OK(lss_gpu_downloadf(G, gk, dK, tot));
        CHECK(max_ulp(gk, ref, tot) <= 1, "shape noise mode %d: %lld ulp from the CPU loop", mode,
              (long long)max_ulp(gk, ref, tot));
    }
    /* the noise has the right size: var((kg - k) sqrt(N')) = sigma_e^2 within 5 standard errors
     * (relative standard error of a variance sqrt(2 / n)) */
    {
        double s2 = 0;
        for (i = 0; i < tot; i++) { double c = cnt[i] + 1.0, e = (gk[i] - kap[i]) * sqrt(c); s2 += e * e; }
        s2 /= (double)tot;
        CHECK_CLOSE(s2, sigma_e * sigma_e, 5 * sqrt(2.0 / (double)tot), 0, "shape-noise variance x N");
    }
    CHECK_ERR(lss_gpu_shape_noise(G, dK, dC, NMAPS, npix, sigma_e, 2, seed, streams), LSS_ERR_ARG);
    lss_gpu_dealloc(G, dK); lss_gpu_dealloc(G, dC);
    free(kap); free(cnt); free(ref); free(gk);
}

static void test_flip_and_scale(void) {
    const int nf = 9, nc = 2, h = 7, w = 11;
    const uint64_t seed = 8, stream = 77, c0 = 3;
    int64_t per = (int64_t)nc * h * w, tot = per * nf;
    float *src = malloc(sizeof(float) * tot), *ref = malloc(sizeof(float) * tot), *got = malloc(sizeof(float) * tot);
    float *dS = NULL, *dD = NULL;
    int f, c, y, x, seen[4] = {0, 0, 0, 0};
    fill_uniform(src, tot, -1, 1, 71);
    for (f = 0; f < nf; f++) {
        uint32_t b[4];
        int fy, fx;
        lss_philox_block(seed, stream, c0 + (uint64_t)f, b);
        fy = b[0] & 1; fx = (b[0] >> 1) & 1;
        seen[fy + 2 * fx] = 1;
        for (c = 0; c < nc; c++)
            for (y = 0; y < h; y++)
                for (x = 0; x < w; x++)
                    ref[f * per + ((int64_t)c * h + y) * w + x] =
                        src[f * per + ((int64_t)c * h + (fy ? h - 1 - y : y)) * w + (fx ? w - 1 - x : x)];
    }
    CHECK(seen[0] + seen[1] + seen[2] + seen[3] >= 3, "the flip test draws too few of the four flip patterns");
    dS = dev_copy(src, tot);
    CHECK_OK(lss_gpu_allocf(G, tot, &dD));
    CHECK_OK(lss_gpu_random_flip(G, dS, dD, nf, nc, h, w, seed, stream, c0));
    CHECK_OK(lss_gpu_downloadf(G, got, dD, tot));
    CHECK(!memcmp(got, ref, sizeof(float) * tot), "random flips differ from the CPU loop");
    CHECK_ERR(lss_gpu_random_flip(G, dS, dS + 1, nf, nc, h, w, seed, stream, c0), LSS_ERR_ARG);
    lss_gpu_dealloc(G, dS); lss_gpu_dealloc(G, dD);
    free(src); free(ref); free(got);
    /* appendix-E scaling: lss_scale_for_network per sample, bitwise, with non-finite inputs */
    {
        const int ns = 3, nb = 4;
        const int64_t npix = 257, stack = 2 * nb * npix;
        const double ks = lss_kappa_net_scale(0.26, 2.5, 2.3);
        float *m = malloc(sizeof(float) * stack * ns), *r = malloc(sizeof(float) * stack * ns);
        float *g = malloc(sizeof(float) * stack * ns), *dM = NULL;
        int s;
        fill_uniform(m, stack * ns, -0.1f, 0.1f, 81);
        m[5] = NAN; m[stack + 7] = INFINITY; m[2 * stack - 1] = -INFINITY; m[nb * npix + 3] = NAN;
        memcpy(r, m, sizeof(float) * stack * ns);
        for (s = 0; s < ns; s++) lss_scale_for_network(r + s * stack, nb, npix, ks);
        dM = dev_copy(m, stack * ns);
        CHECK_OK(lss_gpu_scale_for_network(G, dM, ns, nb, npix, ks));
        CHECK_OK(lss_gpu_downloadf(G, g, dM, stack * ns));
        CHECK(!memcmp(g, r, sizeof(float) * stack * ns), "scale_for_network differs from lss_scale_for_network");
        lss_gpu_dealloc(G, dM);
        free(m); free(r); free(g);
    }
}

static void test_buffers_and_errors(void) {
    char name[256];
    void *p = (void *)1;
    unsigned char h[100], back[100];
    int i, n = 0;
    CHECK_OK(lss_gpu_name(G, name, sizeof name));
    CHECK(name[0] != 0, "empty device name");
    printf("  device: %s\n", name);
    CHECK_OK(lss_gpu_device_count(&n));
    {
        lss_gpu *other = NULL;
        CHECK_ERR(lss_gpu_init(n, &other), LSS_ERR_ARG); /* one past the last device */
        CHECK(other == NULL, "failed lss_gpu_init left a context");
    }
    /* an impossible allocation fails with a message naming cudaMalloc and this source file */
    CHECK_ERR(lss_gpu_alloc(G, (size_t)1 << 60, &p), LSS_ERR_NOMEM);
    CHECK(strstr(lss_last_error(), "cudaMalloc") && strstr(lss_last_error(), "lss_gpu.cu"),
          "allocation failure message '%s'", lss_last_error());
    CHECK(p == NULL, "failed allocation left a pointer");
    for (i = 0; i < 100; i++) h[i] = (unsigned char)(i * 7 + 1);
    CHECK_OK(lss_gpu_alloc(G, 100, &p));
    CHECK_OK(lss_gpu_upload(G, p, h, 100));
    CHECK_OK(lss_gpu_memset(G, (unsigned char *)p + 10, 0xAB, 20));
    CHECK_OK(lss_gpu_download(G, back, p, 100));
    for (i = 10; i < 30; i++) h[i] = 0xAB;
    CHECK(!memcmp(h, back, 100), "upload/memset/download round trip");
    CHECK_OK(lss_gpu_sync(G));
    lss_gpu_dealloc(G, p);
}

int main(void) {
    const char *e = getenv("LSS_TEST_ASAN");
    int n = 0;
    g_asan = e && *e == '1';
    RUN(test_errors_without_device);
    if (lss_gpu_device_count(&n) != LSS_OK || n == 0) {
        SKIP("no CUDA device");
        LSS_TEST_END();
    }
    CHECK_OK(lss_gpu_init(0, &G));
    if (!G) LSS_TEST_END();
    RUN(test_buffers_and_errors);
    RUN(test_sgemm);
    RUN(test_conv);
    RUN(test_elementwise);
    RUN(test_adam);
    RUN(test_philox_fills);
    RUN(test_shape_noise);
    RUN(test_flip_and_scale);
    lss_gpu_free(G);
    LSS_TEST_END();
}
#endif
