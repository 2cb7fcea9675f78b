/* test_nn.c - tests of lss_nn.h: every operation and loss against a naive double-precision
 * reference written here (forward values) and against central finite differences of that reference
 * (gradients); Gaussian NLL against an independent Cholesky computation; optimizers against
 * hand-written updates (RMSProp with and without momentum and weight decay); SGEMM against a double
 * loop; thread-count independence; checkpoints (round trip, corrupt files, bit-identical resume);
 * the training loop lss_train (loss CSV against the step losses, bitwise resume after an interruption
 * or an error, plateau stopping, keep_best, refused arguments and checkpoint sets); a small CNN that
 * learns the amplitude of Gaussian random fields. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include "tests/lss_test.h"
#include <stdlib.h>
#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static int g_asan = 0;

/* ------------------------------------------------------------------ gradient-check harness */
#define MAXIN 4
typedef struct {
    int nin;
    int ndim[MAXIN];
    int64_t shape[MAXIN][4];
    int grad[MAXIN];          /* 1: trainable input, checked by finite differences */
    float lo[MAXIN], hi[MAXIN]; /* uniform range of the random input values */
    int train;                /* graph in training mode (default) or evaluation mode with recording */
} gc_spec;

typedef lss_tensor *(*build_fn)(lss_graph *g, lss_tensor **in, void *ctx);
/* Double reference: inputs in[i] (n[i] values), writes nout values. */
typedef void (*ref_fn)(double **in, double *out, void *ctx);

static int64_t cnt(int nd, const int64_t *sh) { int64_t n = 1; for (int i = 0; i < nd; i++) n *= sh[i]; return n; }

/* Forward of lss vs the reference (|diff| <= 1e-4 max|ref| + 1e-5) and gradients vs central
 * differences of the reference in double (h = 1e-6 relative): ||g - g_fd|| / ||g_fd|| < 1e-3. */
static void gradcheck(const char *name, const gc_spec *sp, build_fn build, ref_fn ref, void *ctx) {
    lss_store *st;
    lss_graph *g;
    lss_tensor *in[MAXIN];
    float *views[MAXIN] = {0};
    double *din[MAXIN], *dout, *dout2, *dy;
    float *fdy;
    int64_t n[MAXIN], nout, k;
    lss_rng r;
    char nm[16];
    CHECK_OK(lss_store_create(1, &st));
    CHECK_OK(lss_graph_create(&g));
    if (!sp->train) { lss_graph_set_training(g, 0); lss_graph_set_record(g, 1); }
    lss_rng_init(&r, 1234, 0);
    for (int i = 0; i < sp->nin; i++) {
        n[i] = cnt(sp->ndim[i], sp->shape[i]);
        snprintf(nm, sizeof nm, "in%d", i);
        if (sp->grad[i]) in[i] = lss_store_add(st, nm, sp->ndim[i], sp->shape[i], LSS_INIT_ZERO);
        else {
            views[i] = calloc((size_t)n[i], sizeof(float));
            in[i] = lss_view(g, views[i], sp->ndim[i], sp->shape[i]);
        }
        for (k = 0; k < n[i]; k++) in[i]->data[k] = (float)(sp->lo[i] + (sp->hi[i] - sp->lo[i]) * lss_rng_uniform(&r));
        din[i] = malloc((size_t)n[i] * sizeof(double));
        for (k = 0; k < n[i]; k++) din[i][k] = in[i]->data[k];
    }
    lss_tensor *y = build(g, in, ctx);
    CHECK(y != NULL, "%s: forward failed: %s", name, lss_last_error());
    if (!y) goto out;
    nout = y->n;
    dout = malloc((size_t)nout * sizeof(double));
    dout2 = malloc((size_t)nout * sizeof(double));
    dy = malloc((size_t)nout * sizeof(double));
    fdy = malloc((size_t)nout * sizeof(float));
    ref(din, dout, ctx);
    {
        double md = 0, mr = 0;
        for (k = 0; k < nout; k++) {
            md = fmax(md, fabs(y->data[k] - dout[k]));
            mr = fmax(mr, fabs(dout[k]));
        }
        CHECK(md <= 1e-4 * mr + 1e-5, "%s: forward max |diff| %.3g (max |ref| %.3g)", name, md, mr);
    }
    for (k = 0; k < nout; k++) { dy[k] = 2.0 * lss_rng_uniform(&r) - 1.0; fdy[k] = (float)dy[k]; }
    lss_store_zero_grad(st);
    CHECK_OK(lss_backward_seed(g, y, fdy));
    for (int i = 0; i < sp->nin; i++) {
        double num = 0, den = 0;
        if (!sp->grad[i]) continue;
        for (k = 0; k < n[i]; k++) {
            double x0 = din[i][k], h = 1e-6 * fmax(1.0, fabs(x0)), lp = 0, lm = 0, fd;
            din[i][k] = x0 + h; ref(din, dout2, ctx);
            for (int64_t j = 0; j < nout; j++) lp += dy[j] * dout2[j];
            din[i][k] = x0 - h; ref(din, dout2, ctx);
            for (int64_t j = 0; j < nout; j++) lm += dy[j] * dout2[j];
            din[i][k] = x0;
            fd = (lp - lm) / (2 * h);
            num += (in[i]->grad[k] - fd) * (in[i]->grad[k] - fd);
            den += fd * fd;
        }
        double rel = sqrt(num) / fmax(sqrt(den), 1e-12);
        CHECK(rel < 1e-3, "%s: gradient of input %d: relative error %.3g (|g_fd| %.3g)", name, i, rel, sqrt(den));
    }
    free(dout); free(dout2); free(dy); free(fdy);
out:
    for (int i = 0; i < sp->nin; i++) { free(din[i]); free(views[i]); }
    lss_graph_free(g);
    lss_store_free(st);
}

static gc_spec spec(int nin) {
    gc_spec s;
    memset(&s, 0, sizeof s);
    s.nin = nin;
    s.train = 1;
    for (int i = 0; i < MAXIN; i++) { s.grad[i] = 1; s.lo[i] = -1; s.hi[i] = 1; }
    return s;
}
#define SHAPE(sp, i, nd, ...) do { int64_t t_[] = {__VA_ARGS__}; (sp).ndim[i] = nd; memcpy((sp).shape[i], t_, sizeof t_); } while (0)

/* ------------------------------------------------------------------ references and builders */
typedef struct { int64_t N, C, H, W, Co, kh, kw, s, p, op; int bias; } conv_ctx;

static void ref_conv(double **in, double *out, void *c_) {
    conv_ctx *c = c_;
    int64_t Ho = (c->H + 2 * c->p - c->kh) / c->s + 1, Wo = (c->W + 2 * c->p - c->kw) / c->s + 1;
    for (int64_t n = 0; n < c->N; n++)
        for (int64_t o = 0; o < c->Co; o++)
            for (int64_t y = 0; y < Ho; y++)
                for (int64_t x = 0; x < Wo; x++) {
                    double s = c->bias ? in[2][o] : 0;
                    for (int64_t ci = 0; ci < c->C; ci++)
                        for (int64_t i = 0; i < c->kh; i++)
                            for (int64_t j = 0; j < c->kw; j++) {
                                int64_t iy = y * c->s - c->p + i, ix = x * c->s - c->p + j;
                                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                                s += in[0][((n * c->C + ci) * c->H + iy) * c->W + ix] *
                                     in[1][((o * c->C + ci) * c->kh + i) * c->kw + j];
                            }
                    out[((n * c->Co + o) * Ho + y) * Wo + x] = s;
                }
}
static lss_tensor *b_conv(lss_graph *g, lss_tensor **in, void *c_) {
    conv_ctx *c = c_;
    return lss_op_conv2d(g, in[0], in[1], c->bias ? in[2] : NULL, (int)c->s, (int)c->p);
}
static void t_conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Co, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int bias) {
    conv_ctx c = {N, C, H, W, Co, kh, kw, s, p, 0, bias};
    gc_spec sp = spec(bias ? 3 : 2);
    char nm[128];
    SHAPE(sp, 0, 4, N, C, H, W);
    SHAPE(sp, 1, 4, Co, C, kh, kw);
    SHAPE(sp, 2, 1, Co);
    snprintf(nm, sizeof nm, "conv2d x[%lld,%lld,%lld,%lld] k%lldx%lld s%lld p%lld%s", (long long)N, (long long)C,
             (long long)H, (long long)W, (long long)kh, (long long)kw, (long long)s, (long long)p, bias ? " +b" : "");
    gradcheck(nm, &sp, b_conv, ref_conv, &c);
}

/* transposed conv reference: out[n,o,y,x] += in[n,ci,iy,ix] w[ci,o,i,j] at y = iy s - p + i */
static void ref_convt(double **in, double *out, void *c_) {
    conv_ctx *c = c_; /* C = Ci, Co, H, W of the input */
    int64_t Ho = (c->H - 1) * c->s - 2 * c->p + c->kh + c->op, Wo = (c->W - 1) * c->s - 2 * c->p + c->kw + c->op;
    for (int64_t k = 0; k < c->N * c->Co * Ho * Wo; k++) out[k] = c->bias ? in[2][(k / (Ho * Wo)) % c->Co] : 0;
    for (int64_t n = 0; n < c->N; n++)
        for (int64_t ci = 0; ci < c->C; ci++)
            for (int64_t iy = 0; iy < c->H; iy++)
                for (int64_t ix = 0; ix < c->W; ix++)
                    for (int64_t o = 0; o < c->Co; o++)
                        for (int64_t i = 0; i < c->kh; i++)
                            for (int64_t j = 0; j < c->kw; j++) {
                                int64_t y = iy * c->s - c->p + i, x = ix * c->s - c->p + j;
                                if (y < 0 || y >= Ho || x < 0 || x >= Wo) continue;
                                out[((n * c->Co + o) * Ho + y) * Wo + x] +=
                                    in[0][((n * c->C + ci) * c->H + iy) * c->W + ix] * in[1][((ci * c->Co + o) * c->kh + i) * c->kw + j];
                            }
}
static lss_tensor *b_convt(lss_graph *g, lss_tensor **in, void *c_) {
    conv_ctx *c = c_;
    return lss_op_conv2d_transpose(g, in[0], in[1], c->bias ? in[2] : NULL, (int)c->s, (int)c->p, (int)c->op);
}
static void t_convt(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Co, int64_t k, int64_t s, int64_t p,
                    int64_t op, int bias) {
    conv_ctx c = {N, C, H, W, Co, k, k, s, p, op, bias};
    gc_spec sp = spec(bias ? 3 : 2);
    char nm[128];
    SHAPE(sp, 0, 4, N, C, H, W);
    SHAPE(sp, 1, 4, C, Co, k, k);
    SHAPE(sp, 2, 1, Co);
    snprintf(nm, sizeof nm, "conv2d_transpose x[%lld,%lld,%lld,%lld] k%lld s%lld p%lld op%lld", (long long)N,
             (long long)C, (long long)H, (long long)W, (long long)k, (long long)s, (long long)p, (long long)op);
    gradcheck(nm, &sp, b_convt, ref_convt, &c);
}

typedef struct { int64_t M, K, N; int bias; } mm_ctx;
static void ref_mm(double **in, double *out, void *c_) {
    mm_ctx *c = c_;
    for (int64_t i = 0; i < c->M; i++)
        for (int64_t j = 0; j < c->N; j++) {
            double s = c->bias ? in[2][j] : 0;
            for (int64_t k = 0; k < c->K; k++) s += in[0][i * c->K + k] * in[1][k * c->N + j];
            out[i * c->N + j] = s;
        }
}
static lss_tensor *b_matmul(lss_graph *g, lss_tensor **in, void *c) { (void)c; return lss_op_matmul(g, in[0], in[1]); }
static lss_tensor *b_dense(lss_graph *g, lss_tensor **in, void *c_) {
    mm_ctx *c = c_;
    return lss_op_dense(g, in[0], in[1], c->bias ? in[2] : NULL);
}

typedef struct { int64_t N, C, H, W, k, s; } pool_ctx;
static void ref_avgpool(double **in, double *out, void *c_) {
    pool_ctx *c = c_;
    int64_t Ho = (c->H - c->k) / c->s + 1, Wo = (c->W - c->k) / c->s + 1;
    for (int64_t pl = 0; pl < c->N * c->C; pl++)
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t x = 0; x < Wo; x++) {
                double s = 0;
                for (int64_t i = 0; i < c->k; i++)
                    for (int64_t j = 0; j < c->k; j++) s += in[0][pl * c->H * c->W + (y * c->s + i) * c->W + x * c->s + j];
                out[(pl * Ho + y) * Wo + x] = s / (double)(c->k * c->k);
            }
}
static lss_tensor *b_avgpool(lss_graph *g, lss_tensor **in, void *c_) { pool_ctx *c = c_; return lss_op_avgpool2d(g, in[0], (int)c->k, (int)c->s); }
static void ref_upsample(double **in, double *out, void *c_) {
    pool_ctx *c = c_;
    int64_t f = c->k, Ho = c->H * f, Wo = c->W * f;
    for (int64_t pl = 0; pl < c->N * c->C; pl++)
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t x = 0; x < Wo; x++) out[(pl * Ho + y) * Wo + x] = in[0][pl * c->H * c->W + (y / f) * c->W + x / f];
}
static lss_tensor *b_upsample(lss_graph *g, lss_tensor **in, void *c_) { pool_ctx *c = c_; return lss_op_upsample2d(g, in[0], (int)c->k); }
static void ref_gap(double **in, double *out, void *c_) {
    pool_ctx *c = c_;
    for (int64_t pl = 0; pl < c->N * c->C; pl++) {
        double s = 0;
        for (int64_t p = 0; p < c->H * c->W; p++) s += in[0][pl * c->H * c->W + p];
        out[pl] = s / (double)(c->H * c->W);
    }
}
static lss_tensor *b_gap(lss_graph *g, lss_tensor **in, void *c) { (void)c; return lss_op_global_avgpool(g, in[0]); }

/* broadcasting binary ops: shapes of a and b as 4-D with 1s */
typedef struct { int64_t sa[4], sb[4]; int op; } bin_ctx;
static void ref_bin(double **in, double *out, void *c_) {
    bin_ctx *c = c_;
    int64_t so[4], k = 0;
    for (int i = 0; i < 4; i++) so[i] = c->sa[i] > c->sb[i] ? c->sa[i] : c->sb[i];
    for (int64_t a = 0; a < so[0]; a++)
        for (int64_t b = 0; b < so[1]; b++)
            for (int64_t d = 0; d < so[2]; d++)
                for (int64_t e = 0; e < so[3]; e++, k++) {
                    int64_t ia = (((a % c->sa[0]) * c->sa[1] + b % c->sa[1]) * c->sa[2] + d % c->sa[2]) * c->sa[3] + e % c->sa[3];
                    int64_t ib = (((a % c->sb[0]) * c->sb[1] + b % c->sb[1]) * c->sb[2] + d % c->sb[2]) * c->sb[3] + e % c->sb[3];
                    out[k] = c->op == 0 ? in[0][ia] + in[1][ib] : c->op == 1 ? in[0][ia] - in[1][ib] : in[0][ia] * in[1][ib];
                }
}
static lss_tensor *b_bin(lss_graph *g, lss_tensor **in, void *c_) {
    bin_ctx *c = c_;
    return c->op == 0 ? lss_op_add(g, in[0], in[1]) : c->op == 1 ? lss_op_sub(g, in[0], in[1]) : lss_op_mul(g, in[0], in[1]);
}

typedef struct { int op; double p; int64_t n; } un_ctx;
static double sp_d(double x) { return x > 30 ? x : log1p(exp(x)); }
static void ref_un(double **in, double *out, void *c_) {
    un_ctx *c = c_;
    for (int64_t k = 0; k < c->n; k++) {
        double x = in[0][k];
        switch (c->op) {
        case 0: out[k] = c->p * x; break;
        case 1: out[k] = x + c->p; break;
        case 2: out[k] = x > 0 ? x : 0; break;
        case 3: out[k] = x > 0 ? x : c->p * x; break;
        case 4: out[k] = sp_d(x); break;
        case 5: out[k] = tanh(x); break;
        case 6: out[k] = 1 / (1 + exp(-x)); break;
        case 7: out[k] = exp(x); break;
        default: out[k] = log(x); break;
        }
    }
}
static lss_tensor *b_un(lss_graph *g, lss_tensor **in, void *c_) {
    un_ctx *c = c_;
    switch (c->op) {
    case 0: return lss_op_scale(g, in[0], (float)c->p);
    case 1: return lss_op_add_scalar(g, in[0], (float)c->p);
    case 2: return lss_op_relu(g, in[0]);
    case 3: return lss_op_leaky_relu(g, in[0], (float)c->p);
    case 4: return lss_op_softplus(g, in[0]);
    case 5: return lss_op_tanh(g, in[0]);
    case 6: return lss_op_sigmoid(g, in[0]);
    case 7: return lss_op_exp(g, in[0]);
    default: return lss_op_ln(g, in[0]);
    }
}

typedef struct { int64_t N, C, P; int train; } bn_ctx;
static void ref_bn(double **in, double *out, void *c_) {
    bn_ctx *c = c_;
    for (int64_t ch = 0; ch < c->C; ch++) {
        double m = 0, v = 0, M = (double)(c->N * c->P);
        if (c->train) {
            for (int64_t n = 0; n < c->N; n++)
                for (int64_t p = 0; p < c->P; p++) m += in[0][(n * c->C + ch) * c->P + p];
            m /= M;
            for (int64_t n = 0; n < c->N; n++)
                for (int64_t p = 0; p < c->P; p++) { double d = in[0][(n * c->C + ch) * c->P + p] - m; v += d * d; }
            v /= M;
        }
        for (int64_t n = 0; n < c->N; n++)
            for (int64_t p = 0; p < c->P; p++) {
                int64_t k = (n * c->C + ch) * c->P + p;
                out[k] = in[1][ch] * (in[0][k] - m) / sqrt(v + 1e-5) + in[2][ch];
            }
    }
}
static lss_tensor *b_bn(lss_graph *g, lss_tensor **in, void *c_) {
    bn_ctx *c = c_;
    lss_tensor *rm = c->train ? NULL : in[3], *rv = c->train ? NULL : in[3];
    if (!c->train) {
        /* running statistics: in[3] holds [mean C | var C] */
        int64_t sh[1] = {c->C};
        rm = lss_view(g, in[3]->data, 1, sh);
        rv = lss_view(g, in[3]->data + c->C, 1, sh);
    }
    return lss_op_batchnorm(g, in[0], in[1], in[2], rm, rv, 0.9f, 1e-5f);
}
static void ref_bn_eval(double **in, double *out, void *c_) {
    bn_ctx *c = c_;
    for (int64_t ch = 0; ch < c->C; ch++) {
        double m = in[3][ch], v = in[3][c->C + ch];
        for (int64_t n = 0; n < c->N; n++)
            for (int64_t p = 0; p < c->P; p++) {
                int64_t k = (n * c->C + ch) * c->P + p;
                out[k] = in[1][ch] * (in[0][k] - m) / sqrt(v + 1e-5) + in[2][ch];
            }
    }
}

typedef struct { int64_t R, Cc; } sn_ctx;
static void ref_sn(double **in, double *out, void *c_) {
    sn_ctx *c = c_;
    double u[16], v[64], nrm, sg = 0;
    for (int64_t i = 0; i < c->R; i++) u[i] = 1;
    for (int it = 0; it < 300; it++) {
        nrm = 0;
        for (int64_t j = 0; j < c->Cc; j++) { v[j] = 0; for (int64_t i = 0; i < c->R; i++) v[j] += in[0][i * c->Cc + j] * u[i]; nrm += v[j] * v[j]; }
        nrm = sqrt(nrm);
        for (int64_t j = 0; j < c->Cc; j++) v[j] /= nrm;
        nrm = 0;
        for (int64_t i = 0; i < c->R; i++) { u[i] = 0; for (int64_t j = 0; j < c->Cc; j++) u[i] += in[0][i * c->Cc + j] * v[j]; nrm += u[i] * u[i]; }
        sg = sqrt(nrm);
        for (int64_t i = 0; i < c->R; i++) u[i] /= sg;
    }
    for (int64_t k = 0; k < c->R * c->Cc; k++) out[k] = in[0][k] / sg;
}
static lss_tensor *b_sn(lss_graph *g, lss_tensor **in, void *c) { (void)c; return lss_op_spectral_norm(g, in[0], in[1], 300); }

typedef struct { int64_t n; int op; } red_ctx;
static void ref_red(double **in, double *out, void *c_) {
    red_ctx *c = c_;
    double s = 0;
    for (int64_t k = 0; k < c->n; k++) s += in[0][k];
    if (c->op == 2) { for (int64_t k = 0; k < c->n; k++) out[k] = in[0][k] * in[1][k]; return; }
    out[0] = c->op == 0 ? s : s / (double)c->n;
}
static lss_tensor *b_red(lss_graph *g, lss_tensor **in, void *c_) {
    red_ctx *c = c_;
    if (c->op == 2) { /* reshape + flatten: a view, then a product so that a gradient flows */
        int64_t sh[3] = {2, 3, 4};
        lss_tensor *r = lss_op_flatten(g, lss_op_reshape(g, in[0], 3, sh));
        return lss_op_mul(g, r, lss_op_reshape(g, in[1], 2, r->shape));
    }
    return c->op == 0 ? lss_op_sum(g, in[0]) : lss_op_mean(g, in[0]);
}

typedef struct { int64_t N, a, b, c; int axis; } cat_ctx;
static void ref_cat(double **in, double *out, void *c_) {
    cat_ctx *c = c_; /* a: [outer, ia], b: [outer, ib] */
    for (int64_t o = 0; o < c->N; o++) {
        for (int64_t k = 0; k < c->a; k++) out[o * (c->a + c->b) + k] = in[0][o * c->a + k];
        for (int64_t k = 0; k < c->b; k++) out[o * (c->a + c->b) + c->a + k] = in[1][o * c->b + k];
    }
}
static lss_tensor *b_cat(lss_graph *g, lss_tensor **in, void *c_) { cat_ctx *c = c_; return lss_op_concat(g, in[0], in[1], c->axis); }

/* losses */
typedef struct { int64_t N; int d, K, op; } loss_ctx;
static void chol_terms_d(const double *mu, const double *tri, const double *y, int d, double *logdet, double *q) {
    double z[16] = {0}, ld = 0;
    for (int i = 0; i < d; i++) {
        double r = y[i] - mu[i];
        for (int j = 0; j <= i; j++) {
            double l = tri[i * (i + 1) / 2 + j];
            if (j == i) { l = sp_d(l) + 1e-4; ld += log(l); }
            z[j] += l * r;
        }
    }
    *q = 0;
    for (int j = 0; j < d; j++) *q += z[j] * z[j];
    *logdet = ld;
}
static void ref_loss(double **in, double *out, void *c_) {
    loss_ctx *c = c_;
    double s = 0;
    int64_t n, k;
    if (c->op == 0 || c->op == 1) {
        for (k = 0; k < c->N; k++) { double d = in[0][k] - in[1][k]; s += c->op == 0 ? d * d : fabs(d); }
        out[0] = s / (double)c->N;
    } else if (c->op == 2) {
        int w = c->d + c->d * (c->d + 1) / 2;
        for (n = 0; n < c->N; n++) {
            double ld, q;
            chol_terms_d(in[0] + n * w, in[0] + n * w + c->d, in[1] + n * c->d, c->d, &ld, &q);
            s += q - 2 * ld;
        }
        out[0] = s / (double)c->N;
    } else if (c->op == 3) {
        int d = c->d, K = c->K, T = d * (d + 1) / 2, w = K * (1 + d + T);
        for (n = 0; n < c->N; n++) {
            const double *o = in[0] + n * w;
            double mx = -1e300, lse = 0, a[16], lz = 0;
            for (int j = 0; j < K; j++) lz += exp(o[j]);
            for (int j = 0; j < K; j++) {
                double ld, q;
                chol_terms_d(o + K + j * d, o + K + K * d + j * T, in[1] + n * d, d, &ld, &q);
                a[j] = o[j] - log(lz) + ld - 0.5 * q - 0.5 * d * log(2 * M_PI);
                if (a[j] > mx) mx = a[j];
            }
            for (int j = 0; j < K; j++) lse += exp(a[j] - mx);
            s += -(mx + log(lse));
        }
        out[0] = s / (double)c->N;
    } else if (c->op == 4) { /* dsm: in[0] r [N, per], in[1] u, in[2] sigma */
        int64_t per = c->d;
        for (n = 0; n < c->N; n++)
            for (k = 0; k < per; k++) { double e = in[1][n * per + k] + in[2][n] * in[0][n * per + k]; s += e * e; }
        out[0] = s / (double)(c->N * per);
    } else { /* wgan: in[0] real [N], in[1] fake [N] */
        double a = 0, b = 0;
        for (n = 0; n < c->N; n++) { a += in[0][n]; b += in[1][n]; }
        out[0] = b / (double)c->N - a / (double)c->N;
    }
}
static lss_tensor *b_loss(lss_graph *g, lss_tensor **in, void *c_) {
    loss_ctx *c = c_;
    switch (c->op) {
    case 0: return lss_op_mse(g, in[0], in[1]);
    case 1: return lss_op_l1(g, in[0], in[1]);
    case 2: return lss_op_gauss_nll(g, in[0], in[1]);
    case 3: return lss_op_gmm_nll(g, in[0], in[1], c->K);
    case 4: return lss_op_dsm_loss(g, in[0], in[1], in[2]);
    default: return lss_op_wgan_critic_loss(g, in[0], in[1]);
    }
}

/* ------------------------------------------------------------------ tests */
static void test_sgemm(void) {
    int64_t sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {133, 77, 300}, {6, 16, 256}, {200, 300, 513}};
    lss_rng r;
    lss_rng_init(&r, 5, 0);
    for (int s = 0; s < 5; s++) {
        int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N), *C = malloc(sizeof(float) * M * N);
        for (int64_t i = 0; i < M * K; i++) A[i] = (float)(2 * lss_rng_uniform(&r) - 1);
        for (int64_t i = 0; i < K * N; i++) B[i] = (float)(2 * lss_rng_uniform(&r) - 1);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                double md = 0;
                for (int64_t i = 0; i < M * N; i++) C[i] = 1.0f;
                CHECK_OK(lss_sgemm(ta, tb, M, N, K, 0.5f, A, ta ? M : K, B, tb ? K : N, 2.0f, C, N));
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < N; j++) {
                        double acc = 0;
                        for (int64_t k = 0; k < K; k++)
                            acc += (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
                        md = fmax(md, fabs(0.5 * acc + 2.0 - C[i * N + j]));
                    }
                /* float accumulation over K terms of size <= 1: error ~ sqrt(K) 6e-8 */
                CHECK(md < 1e-5 * sqrt((double)K) + 1e-6, "sgemm %lldx%lldx%lld ta %d tb %d: max |diff| %.3g", (long long)M,
                      (long long)N, (long long)K, ta, tb, md);
            }
        free(A); free(B); free(C);
    }
    CHECK_ERR(lss_sgemm(0, 0, -1, 2, 2, 1, NULL, 2, NULL, 2, 0, NULL, 2), LSS_ERR_ARG);
}

static void test_ops(void) {
    gc_spec sp;
    /* matmul and dense */
    { mm_ctx c = {5, 7, 3, 0}; sp = spec(2); SHAPE(sp, 0, 2, 5, 7); SHAPE(sp, 1, 2, 7, 3); gradcheck("matmul", &sp, b_matmul, ref_mm, &c); }
    { mm_ctx c = {4, 6, 5, 1}; sp = spec(3); SHAPE(sp, 0, 3, 4, 2, 3); SHAPE(sp, 1, 2, 6, 5); SHAPE(sp, 2, 1, 5); gradcheck("dense [4,2,3] + bias", &sp, b_dense, ref_mm, &c); }
    { mm_ctx c = {3, 9, 2, 0}; sp = spec(2); SHAPE(sp, 0, 2, 3, 9); SHAPE(sp, 1, 2, 9, 2); gradcheck("dense no bias", &sp, b_dense, ref_mm, &c); }
    /* convolutions: odd sizes, stride 2, padding, non-square kernels */
    t_conv(2, 3, 7, 6, 4, 3, 3, 1, 1, 1);
    t_conv(2, 2, 9, 9, 3, 5, 5, 2, 2, 1);
    t_conv(1, 2, 6, 7, 2, 2, 3, 2, 0, 0);
    t_conv(3, 4, 5, 5, 2, 1, 1, 1, 0, 1);
    t_conv(1, 1, 4, 4, 2, 3, 3, 3, 2, 1);
    t_conv(1, 2, 5, 41, 2, 3, 3, 2, 1, 1); /* wide rows: the vectorised stride-2 gather */
    t_conv(1, 1, 3, 38, 1, 4, 4, 2, 2, 0);
    t_convt(2, 3, 4, 5, 2, 3, 2, 1, 1, 1);
    t_convt(1, 2, 3, 3, 3, 2, 2, 0, 0, 1);
    t_convt(2, 2, 3, 4, 2, 3, 1, 0, 0, 0);
    t_convt(1, 3, 2, 3, 2, 4, 3, 1, 2, 1);
    /* pooling, upsampling */
    { pool_ctx c = {2, 3, 6, 5, 2, 2}; sp = spec(1); SHAPE(sp, 0, 4, 2, 3, 6, 5); gradcheck("avgpool k2 s2 [2,3,6,5]", &sp, b_avgpool, ref_avgpool, &c); }
    { pool_ctx c = {1, 2, 7, 7, 3, 2}; sp = spec(1); SHAPE(sp, 0, 4, 1, 2, 7, 7); gradcheck("avgpool k3 s2 [1,2,7,7]", &sp, b_avgpool, ref_avgpool, &c); }
    { pool_ctx c = {2, 2, 3, 4, 2, 0}; sp = spec(1); SHAPE(sp, 0, 4, 2, 2, 3, 4); gradcheck("upsample x2", &sp, b_upsample, ref_upsample, &c); }
    { pool_ctx c = {1, 3, 2, 3, 3, 0}; sp = spec(1); SHAPE(sp, 0, 4, 1, 3, 2, 3); gradcheck("upsample x3", &sp, b_upsample, ref_upsample, &c); }
    { pool_ctx c = {2, 3, 3, 5, 0, 0}; sp = spec(1); SHAPE(sp, 0, 4, 2, 3, 3, 5); gradcheck("global avgpool", &sp, b_gap, ref_gap, &c); }
    /* concat along axes 1, 3 and 0 */
    { cat_ctx c = {2, 3 * 12, 2 * 12, 0, 1}; sp = spec(2); SHAPE(sp, 0, 4, 2, 3, 3, 4); SHAPE(sp, 1, 4, 2, 2, 3, 4); gradcheck("concat axis 1", &sp, b_cat, ref_cat, &c); }
    { cat_ctx c = {2 * 2 * 3, 4, 1, 0, 3}; sp = spec(2); SHAPE(sp, 0, 4, 2, 2, 3, 4); SHAPE(sp, 1, 4, 2, 2, 3, 1); gradcheck("concat axis 3", &sp, b_cat, ref_cat, &c); }
    { cat_ctx c = {1, 2 * 5, 3 * 5, 0, 0}; sp = spec(2); SHAPE(sp, 0, 2, 2, 5); SHAPE(sp, 1, 2, 3, 5); gradcheck("concat axis 0", &sp, b_cat, ref_cat, &c); }
    /* broadcasting add / sub / mul */
    for (int op = 0; op < 3; op++) {
        const char *nm[3] = {"add", "sub", "mul"};
        char buf[64];
        { bin_ctx c = {{2, 3, 4, 5}, {2, 3, 4, 5}, op}; sp = spec(2); SHAPE(sp, 0, 4, 2, 3, 4, 5); SHAPE(sp, 1, 4, 2, 3, 4, 5); snprintf(buf, sizeof buf, "%s same shape", nm[op]); gradcheck(buf, &sp, b_bin, ref_bin, &c); }
        { bin_ctx c = {{2, 3, 4, 5}, {1, 3, 1, 1}, op}; sp = spec(2); SHAPE(sp, 0, 4, 2, 3, 4, 5); SHAPE(sp, 1, 3, 3, 1, 1); snprintf(buf, sizeof buf, "%s [2,3,4,5] with [3,1,1]", nm[op]); gradcheck(buf, &sp, b_bin, ref_bin, &c); }
        { bin_ctx c = {{2, 1, 4, 1}, {1, 3, 1, 5}, op}; sp = spec(2); SHAPE(sp, 0, 4, 2, 1, 4, 1); SHAPE(sp, 1, 4, 1, 3, 1, 5); snprintf(buf, sizeof buf, "%s [2,1,4,1] with [1,3,1,5]", nm[op]); gradcheck(buf, &sp, b_bin, ref_bin, &c); }
    }
    /* unary */
    {
        const char *nm[9] = {"scale", "add_scalar", "relu", "leaky_relu", "softplus", "tanh", "sigmoid", "exp", "ln"};
        double par[9] = {-1.7, 0.3, 0, 0.2, 0, 0, 0, 0, 0};
        for (int op = 0; op < 9; op++) {
            un_ctx c = {op, par[op], 3 * 5 * 7};
            sp = spec(1); SHAPE(sp, 0, 3, 3, 5, 7);
            if (op == 4) { sp.lo[0] = -25; sp.hi[0] = 25; } /* both asymptotic branches of softplus */
            if (op == 8) { sp.lo[0] = 0.1f; sp.hi[0] = 3; }
            gradcheck(nm[op], &sp, b_un, ref_un, &c);
        }
    }
    /* batch norm */
    { bn_ctx c = {4, 3, 6, 1}; sp = spec(3); SHAPE(sp, 0, 4, 4, 3, 2, 3); SHAPE(sp, 1, 1, 3); SHAPE(sp, 2, 1, 3); sp.lo[1] = 0.5f; sp.hi[1] = 1.5f; gradcheck("batchnorm train [4,3,2,3]", &sp, b_bn, ref_bn, &c); }
    { bn_ctx c = {5, 4, 1, 1}; sp = spec(3); SHAPE(sp, 0, 2, 5, 4); SHAPE(sp, 1, 1, 4); SHAPE(sp, 2, 1, 4); gradcheck("batchnorm train [5,4]", &sp, b_bn, ref_bn, &c); }
    { bn_ctx c = {3, 2, 4, 0}; sp = spec(4); SHAPE(sp, 0, 4, 3, 2, 2, 2); SHAPE(sp, 1, 1, 2); SHAPE(sp, 2, 1, 2); SHAPE(sp, 3, 1, 4); sp.grad[3] = 0; sp.lo[3] = 0.2f; sp.hi[3] = 1.0f; sp.train = 0; gradcheck("batchnorm eval (running statistics)", &sp, b_bn, ref_bn_eval, &c); }
    /* spectral normalisation */
    { sn_ctx c = {4, 12}; sp = spec(2); SHAPE(sp, 0, 4, 4, 3, 2, 2); SHAPE(sp, 1, 1, 4); sp.grad[1] = 0; sp.lo[1] = 0.5f; sp.hi[1] = 1; gradcheck("spectral_norm [4,3,2,2]", &sp, b_sn, ref_sn, &c); }
    /* reductions, reshape/flatten */
    { red_ctx c = {2 * 3 * 5, 0}; sp = spec(1); SHAPE(sp, 0, 3, 2, 3, 5); gradcheck("sum", &sp, b_red, ref_red, &c); }
    { red_ctx c = {2 * 3 * 5, 1}; sp = spec(1); SHAPE(sp, 0, 3, 2, 3, 5); gradcheck("mean", &sp, b_red, ref_red, &c); }
    { red_ctx c = {24, 2}; sp = spec(2); SHAPE(sp, 0, 2, 6, 4); SHAPE(sp, 1, 4, 2, 3, 2, 2); gradcheck("reshape/flatten", &sp, b_red, ref_red, &c); }
}

static void test_losses(void) {
    gc_spec sp;
    { loss_ctx c = {3 * 7, 0, 0, 0}; sp = spec(2); SHAPE(sp, 0, 2, 3, 7); SHAPE(sp, 1, 2, 3, 7); sp.grad[1] = 0; gradcheck("mse", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {3 * 7, 0, 0, 1}; sp = spec(2); SHAPE(sp, 0, 2, 3, 7); SHAPE(sp, 1, 2, 3, 7); sp.grad[1] = 0; gradcheck("l1", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {5, 3, 0, 2}; sp = spec(2); SHAPE(sp, 0, 2, 5, 9); SHAPE(sp, 1, 2, 5, 3); sp.grad[1] = 0; gradcheck("gauss_nll d=3", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {4, 1, 0, 2}; sp = spec(2); SHAPE(sp, 0, 2, 4, 2); SHAPE(sp, 1, 2, 4, 1); sp.grad[1] = 0; gradcheck("gauss_nll d=1", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {4, 2, 3, 3}; sp = spec(2); SHAPE(sp, 0, 2, 4, 18); SHAPE(sp, 1, 2, 4, 2); sp.grad[1] = 0; gradcheck("gmm_nll K=3 d=2", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {3, 3, 2, 3}; sp = spec(2); SHAPE(sp, 0, 2, 3, 20); SHAPE(sp, 1, 2, 3, 3); sp.grad[1] = 0; gradcheck("gmm_nll K=2 d=3", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {3, 8, 0, 4}; sp = spec(3); SHAPE(sp, 0, 4, 3, 2, 2, 2); SHAPE(sp, 1, 4, 3, 2, 2, 2); SHAPE(sp, 2, 1, 3); sp.grad[1] = sp.grad[2] = 0; gradcheck("dsm", &sp, b_loss, ref_loss, &c); }
    { loss_ctx c = {6, 0, 0, 5}; sp = spec(2); SHAPE(sp, 0, 2, 6, 1); SHAPE(sp, 1, 2, 6, 1); gradcheck("wgan critic", &sp, b_loss, ref_loss, &c); }
}

/* ln|Sigma| + r^T Sigma^-1 r computed independently: Sigma = (L L^T)^-1 by Gauss-Jordan in double,
 * then its own Cholesky factor C (Sigma = C C^T): ln|Sigma| = 2 sum log C_ii, r^T Sigma^-1 r = |C^-1 r|^2. */
static double indep_gauss(const double *L, const double *r, int d) {
    double P[8][8], S[8][16], C[8][8] = {{0}}, ld = 0, w[8], q = 0;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            P[i][j] = 0;
            for (int k = 0; k < d; k++) P[i][j] += L[i * 8 + k] * L[j * 8 + k];
        }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < 2 * d; j++) S[i][j] = j < d ? P[i][j] : (j - d == i);
    for (int c = 0; c < d; c++) {
        int pv = c;
        for (int i = c + 1; i < d; i++) if (fabs(S[i][c]) > fabs(S[pv][c])) pv = i;
        for (int j = 0; j < 2 * d; j++) { double t = S[c][j]; S[c][j] = S[pv][j]; S[pv][j] = t; }
        double p = S[c][c];
        for (int j = 0; j < 2 * d; j++) S[c][j] /= p;
        for (int i = 0; i < d; i++)
            if (i != c) { double f = S[i][c]; for (int j = 0; j < 2 * d; j++) S[i][j] -= f * S[c][j]; }
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j <= i; j++) {
            double s = S[i][d + j];
            for (int k = 0; k < j; k++) s -= C[i][k] * C[j][k];
            C[i][j] = i == j ? sqrt(s) : s / C[j][j];
        }
    for (int i = 0; i < d; i++) {
        ld += 2 * log(C[i][i]);
        double s = r[i];
        for (int k = 0; k < i; k++) s -= C[i][k] * w[k];
        w[i] = s / C[i][i];
        q += w[i] * w[i];
    }
    return ld + q;
}

static void test_gauss_independent(void) {
    const int N = 6, d = 4, W = 4 + 10;
    float out[6 * 14], y[6 * 4];
    lss_rng r;
    lss_graph *g;
    double tot = 0;
    lss_rng_init(&r, 77, 0);
    for (int k = 0; k < N * W; k++) out[k] = (float)(lss_rng_uniform(&r) * 2 - 1);
    for (int k = 0; k < N * d; k++) y[k] = (float)(lss_rng_uniform(&r) * 2 - 1);
    for (int n = 0; n < N; n++) {
        double L[64] = {0}, res[8];
        for (int i = 0; i < d; i++) {
            res[i] = (double)y[n * d + i] - (double)out[n * W + i];
            for (int j = 0; j <= i; j++) {
                double v = out[n * W + d + i * (i + 1) / 2 + j];
                L[i * 8 + j] = i == j ? log1p(exp(v)) + 1e-4 : v;
            }
        }
        tot += indep_gauss(L, res, d);
    }
    CHECK_OK(lss_graph_create(&g));
    lss_tensor *o = lss_view(g, out, 2, (int64_t[]){N, W}), *t = lss_view(g, y, 2, (int64_t[]){N, d});
    lss_tensor *l = lss_op_gauss_nll(g, o, t);
    CHECK(l != NULL, "gauss_nll failed: %s", lss_last_error());
    if (l) CHECK_CLOSE(l->data[0], tot / N, 1e-5, 1e-5, "gauss_nll vs ln|Sigma| + r^T Sigma^-1 r (Cholesky of Sigma)");
    /* GMM with K = 1 is the normalised Gaussian: -log N(y; mu, Sigma) = (gauss_nll + d log 2 pi) / 2 */
    {
        const int K = 2;
        float og[6 * 30];
        double lp[6], tot2 = 0, y2[6 * 4];
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) og[n * 30 + k] = k == 0 ? 0.0f : -60.0f; /* component 1 has weight ~e^-60 */
            for (int k = 0; k < K * d; k++) og[n * 30 + K + k] = out[n * W + k % d];
            for (int k = 0; k < K * 10; k++) og[n * 30 + K + K * d + k] = out[n * W + d + k % 10];
            for (int i = 0; i < d; i++) y2[n * d + i] = y[n * d + i];
        }
        CHECK_OK(lss_gmm_logpdf(og, y2, N, K, d, lp));
        for (int n = 0; n < N; n++) tot2 += -lp[n];
        CHECK_CLOSE(tot2 / N, 0.5 * (tot / N + d * log(2 * M_PI)), 1e-9, 1e-9, "gmm_logpdf (one live component) vs independent Gaussian");
        lss_tensor *og_t = lss_view(g, og, 2, (int64_t[]){N, 30});
        lss_tensor *lg = lss_op_gmm_nll(g, og_t, t, K);
        if (lg) CHECK_CLOSE(lg->data[0], tot2 / N, 1e-5, 1e-6, "gmm_nll vs gmm_logpdf");
        CHECK_ERR(lss_gmm_logpdf(og, y2, N, 0, d, lp), LSS_ERR_ARG);
    }
    lss_graph_free(g);
}

/* ------------------------------------------------------------------ optimizers */
static void test_optim(void) {
    /* one tensor w (3 values), gradient g = w - target fixed per step; compare with updates in double */
    const double tgt[3] = {0.5, -1.0, 2.0};
    for (int kind = 0; kind < 4; kind++) {
        lss_store *st;
        lss_optim *o;
        lss_optim_opts oo;
        double w[3] = {1.0, 2.0, -3.0}, m[3] = {0}, v[3] = {0};
        memset(&oo, 0, sizeof oo);
        oo.kind = (lss_opt_kind)kind; oo.lr = 0.05; oo.momentum = kind >= 2 ? 0.8 : 0; oo.weight_decay = 0.1;
        CHECK_OK(lss_store_create(3, &st));
        lss_tensor *t = lss_store_add(st, "w", 1, (int64_t[]){3}, LSS_INIT_ZERO);
        for (int i = 0; i < 3; i++) t->data[i] = (float)w[i];
        CHECK_OK(lss_optim_create(st, &oo, &o));
        for (int step = 0; step < 5; step++) {
            for (int i = 0; i < 3; i++) t->grad[i] = (float)(t->data[i] - tgt[i]);
            for (int i = 0; i < 3; i++) {
                double gr = (double)t->grad[i];
                if (kind == LSS_OPT_ADAM || kind == LSS_OPT_ADAMW) {
                    if (kind == LSS_OPT_ADAM) gr += 0.1 * w[i];
                    m[i] = 0.9 * m[i] + 0.1 * gr;
                    v[i] = 0.999 * v[i] + 0.001 * gr * gr;
                    double mh = m[i] / (1 - pow(0.9, step + 1)), vh = v[i] / (1 - pow(0.999, step + 1));
                    if (kind == LSS_OPT_ADAMW) w[i] *= 1 - 0.05 * 0.1;
                    w[i] -= 0.05 * mh / (sqrt(vh) + 1e-8);
                } else if (kind == LSS_OPT_SGD) {
                    gr += 0.1 * w[i];
                    m[i] = step == 0 ? gr : 0.8 * m[i] + gr;
                    w[i] -= 0.05 * m[i];
                } else {
                    gr += 0.1 * w[i];
                    v[i] = 0.9 * v[i] + 0.1 * gr * gr;
                    m[i] = 0.8 * m[i] + gr / (sqrt(v[i]) + 1e-8);
                    w[i] -= 0.05 * m[i];
                }
            }
            CHECK_OK(lss_optim_step(o));
        }
        for (int i = 0; i < 3; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "optimizer %d after 5 steps, w[%d]", kind, i);
            CHECK_CLOSE(t->data[i], w[i], 1e-5, 1e-6, nm);
        }
        t->grad[0] = NAN;
        CHECK_ERR(lss_optim_step(o), LSS_ERR_NUMERIC);
        lss_optim_free(o);
        lss_store_free(st);
    }
    /* schedules */
    {
        lss_store *st;
        lss_optim *o;
        lss_optim_opts oo;
        CHECK_OK(lss_store_create(3, &st));
        lss_store_add(st, "w", 1, (int64_t[]){2}, LSS_INIT_ZERO);
        memset(&oo, 0, sizeof oo); oo.lr = 1.0; oo.sched = LSS_SCHED_COSINE; oo.total_steps = 10; oo.lr_min = 0.1;
        CHECK_OK(lss_optim_create(st, &oo, &o));
        for (int s = 0; s < 5; s++) lss_optim_step(o);
        CHECK_CLOSE(lss_optim_lr(o), 0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 0.5)), 1e-12, 0, "cosine schedule at t = 5 of 10");
        lss_optim_free(o);
        memset(&oo, 0, sizeof oo); oo.lr = 1.0; oo.sched = LSS_SCHED_STEP; oo.step_size = 2; oo.gamma = 0.5;
        CHECK_OK(lss_optim_create(st, &oo, &o));
        for (int s = 0; s < 5; s++) lss_optim_step(o);
        CHECK_CLOSE(lss_optim_lr(o), 0.25, 1e-12, 0, "step schedule at t = 5 (x0.5 every 2)");
        lss_optim_free(o);
        memset(&oo, 0, sizeof oo); oo.lr = 2.0; oo.sched = LSS_SCHED_EXP; oo.gamma = 0.9;
        CHECK_OK(lss_optim_create(st, &oo, &o));
        for (int s = 0; s < 3; s++) lss_optim_step(o);
        CHECK_CLOSE(lss_optim_lr(o), 2.0 * 0.729, 1e-12, 0, "exponential schedule at t = 3");
        lss_optim_free(o);
        memset(&oo, 0, sizeof oo); oo.sched = LSS_SCHED_STEP;
        CHECK_ERR(lss_optim_create(st, &oo, &o), LSS_ERR_RANGE);
        lss_store_free(st);
    }
    /* clipping: by global norm (SGD lr 1 shows the clipped gradient) and by percentile */
    {
        lss_store *st;
        lss_optim *o;
        lss_optim_opts oo;
        CHECK_OK(lss_store_create(3, &st));
        lss_tensor *a = lss_store_add(st, "a", 1, (int64_t[]){2}, LSS_INIT_ZERO);
        lss_tensor *b = lss_store_add(st, "b", 1, (int64_t[]){1}, LSS_INIT_ZERO);
        memset(&oo, 0, sizeof oo); oo.kind = LSS_OPT_SGD; oo.lr = 1.0; oo.clip = LSS_CLIP_NORM; oo.clip_norm = 1.0;
        CHECK_OK(lss_optim_create(st, &oo, &o));
        a->grad[0] = 3; a->grad[1] = 0; b->grad[0] = 4; /* norm 5 -> scaled by 1/5 */
        CHECK_OK(lss_optim_step(o));
        CHECK_CLOSE(a->data[0], -0.6, 1e-6, 0, "global-norm clipping a");
        CHECK_CLOSE(b->data[0], -0.8, 1e-6, 0, "global-norm clipping b");
        CHECK_CLOSE(lss_optim_last_norm(o), 5.0, 1e-12, 0, "recorded gradient norm");
        lss_optim_free(o);
        a->data[0] = a->data[1] = b->data[0] = 0;
        memset(&oo, 0, sizeof oo); oo.kind = LSS_OPT_SGD; oo.lr = 1.0; oo.clip = LSS_CLIP_PERCENTILE; oo.clip_history = 4;
        CHECK_OK(lss_optim_create(st, &oo, &o));
        /* norms 1, 2, 3 then a step with a = (6, 8) (norm 10), b = 0: history {1,2,3,10} -> median 2.5;
         * a is clipped to norm 2.5: (1.5, 2.0) */
        for (int s = 1; s <= 3; s++) { a->grad[0] = (float)s; a->grad[1] = 0; b->grad[0] = 0; CHECK_OK(lss_optim_step(o)); }
        a->data[0] = a->data[1] = 0;
        a->grad[0] = 6; a->grad[1] = 8; b->grad[0] = 0;
        CHECK_OK(lss_optim_step(o));
        CHECK_CLOSE(a->data[0], -1.5, 1e-6, 0, "percentile clipping (median of {1,2,3,10} = 2.5), a[0]");
        CHECK_CLOSE(a->data[1], -2.0, 1e-6, 0, "percentile clipping a[1]");
        /* next: history ring {2,3,10,x}: gradient norm 2 stays unclipped */
        a->data[0] = a->data[1] = 0; a->grad[0] = 2; a->grad[1] = 0;
        CHECK_OK(lss_optim_step(o));
        CHECK_CLOSE(a->data[0], -2.0, 1e-6, 0, "percentile clipping leaves a norm below the median");
        lss_optim_free(o);
        lss_store_free(st);
    }
}

/* RMSProp (PyTorch form) against a hand-written update in double: v = rho v + (1 - rho) g^2 with
 * g = grad + wd w, step s = g / (sqrt(v) + eps), with momentum b = mu b + s, w -= lr b (else
 * w -= lr s). Non-default rho and a large eps so that each term matters; gradients vary per step. */
static void test_rmsprop(void) {
    const double lr = 0.02, rho = 0.8, eps = 1e-2, wd = 0.05;
    for (int with_mom = 0; with_mom < 2; with_mom++)
        for (int with_wd = 0; with_wd < 2; with_wd++) {
            lss_store *st;
            lss_optim *o;
            lss_optim_opts oo;
            double w[4] = {0.7, -1.3, 2.1, 0.05}, v[4] = {0}, b[4] = {0}, mu = with_mom ? 0.7 : 0.0, dec = with_wd ? wd : 0.0;
            char what[96];
            memset(&oo, 0, sizeof oo);
            oo.kind = LSS_OPT_RMSPROP; oo.lr = lr; oo.rho = rho; oo.eps = eps; oo.momentum = mu; oo.weight_decay = dec;
            CHECK_OK(lss_store_create(1, &st));
            lss_tensor *t = lss_store_add(st, "w", 1, (int64_t[]){4}, LSS_INIT_ZERO);
            for (int i = 0; i < 4; i++) t->data[i] = (float)w[i];
            CHECK_OK(lss_optim_create(st, &oo, &o));
            for (int step = 0; step < 8; step++) {
                for (int i = 0; i < 4; i++) t->grad[i] = (float)(sin(1.0 + 0.7 * step + 1.3 * i) * (1 + i) + 0.3 * t->data[i]);
                for (int i = 0; i < 4; i++) {
                    double g = (double)t->grad[i] + dec * w[i];
                    v[i] = rho * v[i] + (1 - rho) * g * g;
                    double s = g / (sqrt(v[i]) + eps);
                    if (with_mom) { b[i] = mu * b[i] + s; s = b[i]; }
                    w[i] -= lr * s;
                }
                CHECK_OK(lss_optim_step(o));
            }
            for (int i = 0; i < 4; i++) {
                snprintf(what, sizeof what, "RMSProp (momentum %s, weight decay %s) after 8 steps, w[%d]",
                         with_mom ? "0.7" : "none", with_wd ? "0.05" : "none", i);
                CHECK_CLOSE(t->data[i], w[i], 1e-5, 1e-6, what);
            }
            CHECK(lss_optim_steps(o) == 8, "RMSProp step count");
            lss_optim_free(o);
            lss_store_free(st);
        }
}

/* ------------------------------------------------------------------ store, errors */
static void test_store_errors(void) {
    lss_store *st;
    lss_graph *g;
    CHECK_OK(lss_store_create(9, &st));
    lss_tensor *w = lss_store_add(st, "w", 2, (int64_t[]){3, 4}, LSS_INIT_HE);
    CHECK(w && w->grad && lss_store_nparams(st) == 12, "store add");
    CHECK(lss_store_add(st, "w", 1, (int64_t[]){2}, LSS_INIT_ZERO) == NULL, "duplicate name refused");
    CHECK(lss_store_status(st) == LSS_ERR_ARG && strstr(lss_last_error(), "'w'"), "duplicate name message: %s", lss_last_error());
    lss_store_free(st);
    /* He init statistics: 4000 draws with std sqrt(2/1000) -> sample std within 5% (sd of the estimate 1.1%) */
    CHECK_OK(lss_store_create(9, &st));
    w = lss_store_add(st, "big", 2, (int64_t[]){1000, 4}, LSS_INIT_HE);
    {
        double s2 = 0;
        for (int k = 0; k < 4000; k++) s2 += (double)w->data[k] * w->data[k];
        CHECK_CLOSE(sqrt(s2 / 4000), sqrt(2.0 / 1000), 0.05, 0, "He init std");
    }
    lss_store_free(st);
    CHECK_OK(lss_graph_create(&g));
    float buf[12] = {0};
    lss_tensor *a = lss_view(g, buf, 2, (int64_t[]){3, 4}), *b = lss_view(g, buf, 2, (int64_t[]){3, 4});
    CHECK(lss_op_matmul(g, a, b) == NULL, "matmul shape mismatch returns NULL");
    CHECK(lss_graph_status(g) == LSS_ERR_SHAPE && strstr(lss_last_error(), "[3,4]"), "shape error names shapes: %s", lss_last_error());
    CHECK(lss_op_relu(g, a) == NULL, "sticky failure");
    CHECK(lss_backward(g, NULL) == LSS_ERR_SHAPE, "backward returns the sticky status");
    lss_graph_reset(g);
    CHECK(lss_op_relu(g, NULL) == NULL && lss_graph_status(g) == LSS_ERR_ARG, "NULL input");
    lss_graph_reset(g);
    CHECK(lss_op_conv2d(g, lss_view(g, buf, 4, (int64_t[]){1, 1, 3, 4}), lss_view(g, buf, 4, (int64_t[]){1, 1, 5, 5}), NULL, 1, 0) == NULL,
          "kernel larger than input refused");
    lss_graph_reset(g);
    CHECK(lss_op_relu(g, a) != NULL && lss_graph_status(g) == LSS_OK, "reset clears the failure");
    CHECK_ERR(lss_backward(g, lss_op_relu(g, a)), LSS_ERR_SHAPE); /* 12 elements */
    lss_graph_free(g);
}

/* ------------------------------------------------------------------ determinism over threads */
/* A conv + residual-block net large enough that its GEMMs (M N K > 2^24) and convolutions run
 * threaded. */
static void run_small_net(int threads, float *out, int64_t nout, float *grads, int64_t *ng) {
#ifdef _OPENMP
    int old = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    lss_store *st;
    lss_graph *g;
    lss_resblock rb;
    lss_store_create(11, &st);
    lss_tensor *w0 = lss_store_add(st, "c0.w", 4, (int64_t[]){32, 8, 5, 5}, LSS_INIT_HE);
    lss_tensor *b0 = lss_store_add(st, "c0.b", 1, (int64_t[]){32}, LSS_INIT_ZERO);
    lss_resblock_init(&rb, st, "rb", 32, 64, 3, 2, 1, 0, LSS_ACT_RELU);
    lss_graph_create(&g);
    float *x = malloc(sizeof(float) * 4 * 8 * 128 * 128);
    lss_rng r;
    lss_rng_init(&r, 3, 0);
    for (int k = 0; k < 4 * 8 * 128 * 128; k++) x[k] = (float)lss_rng_normal(&r);
    lss_tensor *h = lss_op_conv2d(g, lss_view(g, x, 4, (int64_t[]){4, 8, 128, 128}), w0, b0, 2, 2);
    h = lss_resblock_forward(g, &rb, lss_op_relu(g, h));
    lss_tensor *l = lss_op_mean(g, lss_op_mul(g, h, h));
    lss_store_zero_grad(st);
    lss_backward(g, l);
    CHECK(h && h->n == nout, "small net output size");
    if (h && h->n == nout) memcpy(out, h->data, sizeof(float) * (size_t)nout);
    *ng = lss_store_size(st);
    memcpy(grads, lss_store_grad(st), sizeof(float) * (size_t)*ng);
    free(x);
    lss_graph_free(g);
    lss_store_free(st);
#ifdef _OPENMP
    omp_set_num_threads(old);
#endif
}

static void test_threads(void) {
    const int64_t nout = 4 * 64 * 32 * 32;
    float *o1 = calloc(nout, 4), *o2 = calloc(nout, 4), *g1 = calloc(100000, 4), *g2 = calloc(100000, 4);
    int64_t n1, n2;
    run_small_net(1, o1, nout, g1, &n1);
    run_small_net(2, o2, nout, g2, &n2);
    CHECK(n1 == n2 && n1 < 100000, "store sizes %lld", (long long)n1);
    CHECK(!memcmp(o1, o2, sizeof(float) * nout), "forward bitwise equal with 1 and 2 threads");
    CHECK(!memcmp(g1, g2, sizeof(float) * (size_t)n1), "gradients bitwise equal with 1 and 2 threads");
    free(o1); free(o2); free(g1); free(g2);
    /* SGEMM at a size where threading is on */
    {
        int64_t M = 150, N = 260, K = 300;
        float *A = malloc(4 * M * K), *B = malloc(4 * K * N), *C1 = malloc(4 * M * N), *C2 = malloc(4 * M * N);
        for (int64_t i = 0; i < M * K; i++) A[i] = (float)sin((double)i);
        for (int64_t i = 0; i < K * N; i++) B[i] = (float)cos((double)i * 0.7);
#ifdef _OPENMP
        int old = omp_get_max_threads();
        omp_set_num_threads(1);
        lss_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C1, N);
        omp_set_num_threads(2);
        lss_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
        omp_set_num_threads(old);
#else
        lss_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C1, N);
        lss_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
#endif
        CHECK(!memcmp(C1, C2, 4 * M * N), "sgemm bitwise equal with 1 and 2 threads");
        free(A); free(B); free(C1); free(C2);
    }
}

/* ------------------------------------------------------------------ checkpoints and resume */
typedef struct {
    lss_store *st;
    lss_optim *opt;
    lss_graph *g;
    lss_tensor *w0, *b0, *bn[4], *sn_u, *dw, *db;
} tnet;

static int tnet_make(tnet *t, uint64_t seed) {
    lss_optim_opts oo;
    memset(t, 0, sizeof *t);
    if (lss_store_create(seed, &t->st)) return -1;
    t->w0 = lss_store_add(t->st, "c.w", 4, (int64_t[]){4, 1, 3, 3}, LSS_INIT_HE);
    t->b0 = lss_store_add(t->st, "c.b", 1, (int64_t[]){4}, LSS_INIT_ZERO);
    t->bn[0] = lss_store_add(t->st, "bn.g", 1, (int64_t[]){4}, LSS_INIT_ONE);
    t->bn[1] = lss_store_add(t->st, "bn.b", 1, (int64_t[]){4}, LSS_INIT_ZERO);
    t->bn[2] = lss_store_buffer(t->st, "bn.m", 1, (int64_t[]){4}, LSS_INIT_ZERO, 0.0f);
    t->bn[3] = lss_store_buffer(t->st, "bn.v", 1, (int64_t[]){4}, LSS_INIT_ZERO, 1.0f);
    t->sn_u = lss_store_buffer(t->st, "sn.u", 1, (int64_t[]){4}, LSS_INIT_NORMAL, 0.0f);
    t->dw = lss_store_add(t->st, "d.w", 2, (int64_t[]){4 * 4 * 4, 2}, LSS_INIT_GLOROT);
    t->db = lss_store_add(t->st, "d.b", 1, (int64_t[]){2}, LSS_INIT_ZERO);
    if (lss_store_status(t->st)) return -1;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM; oo.lr = 3e-3; oo.clip = LSS_CLIP_PERCENTILE; oo.clip_history = 16;
    oo.sched = LSS_SCHED_COSINE; oo.total_steps = 40;
    if (lss_optim_create(t->st, &oo, &t->opt)) return -1;
    if (lss_graph_create(&t->g)) return -1;
    return 0;
}
static void tnet_free(tnet *t) { lss_graph_free(t->g); lss_optim_free(t->opt); lss_store_free(t->st); }

/* One training step on batch `step` (data a pure function of the step). Returns a status. */
static int tnet_step(tnet *t, int step, float *loss) {
    float x[8 * 64], y[8 * 2];
    lss_rng r;
    lss_rng_init(&r, 99, (uint64_t)step);
    for (int k = 0; k < 8 * 64; k++) x[k] = (float)lss_rng_normal(&r);
    for (int k = 0; k < 16; k++) y[k] = x[k * 7] * 0.5f;
    lss_graph_reset(t->g);
    lss_tensor *h = lss_op_conv2d(t->g, lss_view(t->g, x, 4, (int64_t[]){8, 1, 8, 8}), lss_op_spectral_norm(t->g, t->w0, t->sn_u, 1), t->b0, 2, 1);
    h = lss_op_relu(t->g, lss_op_batchnorm(t->g, h, t->bn[0], t->bn[1], t->bn[2], t->bn[3], 0.9f, 1e-5f));
    h = lss_op_dense(t->g, h, t->dw, t->db);
    lss_tensor *l = lss_op_mse(t->g, h, lss_view(t->g, y, 2, (int64_t[]){8, 2}));
    lss_store_zero_grad(t->st);
    int s = lss_backward(t->g, l);
    if (s) return s;
    if (loss) *loss = l->data[0];
    return lss_optim_step(t->opt);
}

static void test_checkpoint(void) {
    const char *path = "build/test_nn_ckpt.bin";
    tnet a, b, c;
    float la = 0, lb = 0;
    CHECK(tnet_make(&a, 5) == 0, "make net a: %s", lss_last_error());
    CHECK(tnet_make(&b, 6) == 0, "make net b");
    /* uninterrupted: 20 steps; interrupted: 10 steps, save, load into b (other seed), 10 more */
    for (int s = 0; s < 10; s++) CHECK_OK(tnet_step(&a, s, &la));
    CHECK_OK(lss_ckpt_save(path, a.st, a.opt));
    CHECK_OK(lss_ckpt_load(path, b.st, b.opt));
    CHECK(!memcmp(lss_store_data(a.st), lss_store_data(b.st), sizeof(float) * (size_t)lss_store_size(a.st)), "round trip restores every tensor bit for bit");
    CHECK(lss_optim_steps(b.opt) == 10, "optimizer step count restored");
    for (int s = 10; s < 20; s++) { CHECK_OK(tnet_step(&a, s, &la)); CHECK_OK(tnet_step(&b, s, &lb)); }
    CHECK(la == lb, "resumed loss equals uninterrupted loss (%.9g vs %.9g)", lb, la);
    CHECK(!memcmp(lss_store_data(a.st), lss_store_data(b.st), sizeof(float) * (size_t)lss_store_size(a.st)),
          "resumed run bit-identical to the uninterrupted run after 20 steps (weights, BN statistics, SN vectors)");
    /* corrupt files */
    {
        FILE *f = fopen(path, "rb");
        long len;
        unsigned char *buf;
        fseek(f, 0, SEEK_END); len = ftell(f); fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)len);
        CHECK(fread(buf, 1, (size_t)len, f) == (size_t)len, "read back");
        fclose(f);
        const char *p2 = "build/test_nn_bad.bin";
        /* truncated */
        f = fopen(p2, "wb"); fwrite(buf, 1, (size_t)len - 37, f); fclose(f);
        CHECK_ERR(lss_ckpt_load(p2, b.st, b.opt), LSS_ERR_FORMAT);
        f = fopen(p2, "wb"); fwrite(buf, 1, 10, f); fclose(f);
        CHECK_ERR(lss_ckpt_load(p2, b.st, b.opt), LSS_ERR_FORMAT);
        /* one flipped byte in the middle */
        buf[len / 2] ^= 0x10;
        f = fopen(p2, "wb"); fwrite(buf, 1, (size_t)len, f); fclose(f);
        CHECK_ERR(lss_ckpt_load(p2, b.st, b.opt), LSS_ERR_FORMAT);
        CHECK(strstr(lss_last_error(), "CRC") != NULL, "flipped byte reported as CRC mismatch: %s", lss_last_error());
        buf[len / 2] ^= 0x10;
        /* wrong version (CRC recomputed so that only the version is wrong) */
        buf[8] = 2;
        {
            uint32_t crc = lss_crc32(0, buf, (size_t)len - 4);
            memcpy(buf + len - 4, &crc, 4);
        }
        f = fopen(p2, "wb"); fwrite(buf, 1, (size_t)len, f); fclose(f);
        CHECK_ERR(lss_ckpt_load(p2, b.st, b.opt), LSS_ERR_FORMAT);
        CHECK(strstr(lss_last_error(), "version 2") != NULL, "version reported: %s", lss_last_error());
        /* bad magic */
        buf[0] = 'X';
        f = fopen(p2, "wb"); fwrite(buf, 1, (size_t)len, f); fclose(f);
        CHECK_ERR(lss_ckpt_load(p2, b.st, b.opt), LSS_ERR_FORMAT);
        free(buf);
        remove(p2);
        CHECK_ERR(lss_ckpt_load("build/does_not_exist.bin", b.st, NULL), LSS_ERR_IO);
    }
    /* a model with a different shape: refused, naming the tensor; nothing changed */
    {
        lss_store *s2;
        lss_store_create(1, &s2);
        lss_store_add(s2, "c.w", 4, (int64_t[]){4, 1, 5, 5}, LSS_INIT_ZERO);
        CHECK_ERR(lss_ckpt_load(path, s2, NULL), LSS_ERR_SHAPE);
        CHECK(strstr(lss_last_error(), "'c.w'") != NULL, "mismatch names the tensor: %s", lss_last_error());
        CHECK(lss_store_tensor(s2, 0)->data[0] == 0.0f, "failed load changes nothing");
        lss_store_free(s2);
        /* weights only (no optimizer) into a store that lacks a tensor of the file */
        lss_store_create(1, &s2);
        lss_store_add(s2, "c.w", 4, (int64_t[]){4, 1, 3, 3}, LSS_INIT_ZERO);
        CHECK_ERR(lss_ckpt_load(path, s2, NULL), LSS_ERR_FORMAT);
        CHECK(strstr(lss_last_error(), "'c.b'") != NULL, "extra tensor named: %s", lss_last_error());
        lss_store_free(s2);
    }
    /* optimizer of another kind */
    {
        CHECK(tnet_make(&c, 7) == 0, "make net c");
        lss_optim_free(c.opt);
        lss_optim_opts oo;
        memset(&oo, 0, sizeof oo); oo.kind = LSS_OPT_SGD;
        lss_optim_create(c.st, &oo, &c.opt);
        CHECK_ERR(lss_ckpt_load(path, c.st, c.opt), LSS_ERR_FORMAT);
        CHECK_OK(lss_ckpt_load(path, c.st, NULL)); /* weights alone are fine */
        tnet_free(&c);
    }
    remove(path);
    tnet_free(&a);
    tnet_free(&b);
}

/* ------------------------------------------------------------------ training loop */
/* A linear regression y = x . (0.5, -1, 2) + 0.3 fitted by one dense layer; batch t is a pure
 * function of t; the held-out set is 64 fixed samples. */
#define TR_MAXSTEP 200
typedef struct {
    lss_store *st;
    lss_optim *opt;
    lss_graph *g, *ge;
    lss_mlp m;
    uint64_t data_seed;
    float xe[64 * 3], ye[64];
    double steploss[TR_MAXSTEP];  /* training loss of each step, as the step returned it */
    int nan_at, fail_at, no_step_at;
    int eval_mode;                /* 0 real, 1 flat, 2 decreasing, 3 small decrease, 4 minimum at the 3rd
                                     evaluation, 5 minimum at optimizer step 30 */
    int nevals;
    double evals[64];
    float *snap[64];              /* parameters at each evaluation (keep_best test) */
} treg;

static int treg_make(treg *r, uint64_t init_seed, uint64_t data_seed) {
    int sizes[2] = {3, 1};
    lss_optim_opts oo;
    lss_rng rng;
    memset(r, 0, sizeof *r);
    r->nan_at = r->fail_at = r->no_step_at = -1;
    r->data_seed = data_seed;
    if (lss_store_create(init_seed, &r->st) || lss_mlp_init(&r->m, r->st, "reg", 1, sizes, LSS_ACT_NONE)) return -1;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM; oo.lr = 0.05; oo.sched = LSS_SCHED_COSINE; oo.total_steps = 60; oo.lr_min = 0.005;
    if (lss_optim_create(r->st, &oo, &r->opt) || lss_graph_create(&r->g) || lss_graph_create(&r->ge)) return -1;
    lss_graph_set_training(r->ge, 0);
    lss_rng_init(&rng, data_seed, 1000000);
    for (int i = 0; i < 64; i++) {
        for (int j = 0; j < 3; j++) r->xe[i * 3 + j] = (float)lss_rng_normal(&rng);
        r->ye[i] = 0.5f * r->xe[i * 3] - r->xe[i * 3 + 1] + 2.0f * r->xe[i * 3 + 2] + 0.3f;
    }
    return 0;
}
static void treg_free(treg *r) {
    for (int i = 0; i < 64; i++) free(r->snap[i]);
    lss_graph_free(r->g); lss_graph_free(r->ge); lss_optim_free(r->opt); lss_store_free(r->st);
}
static int treg_step1(treg *r, int64_t t, double *loss) {
    float x[16 * 3], y[16];
    lss_rng rng;
    int s;
    if (t == r->fail_at) return lss_seterr(LSS_ERR_IO, "treg: simulated failure at step %lld", (long long)t);
    if (t == r->no_step_at) return LSS_OK;
    lss_rng_init(&rng, r->data_seed, (uint64_t)t);
    for (int i = 0; i < 16; i++) {
        for (int j = 0; j < 3; j++) x[i * 3 + j] = (float)lss_rng_normal(&rng);
        y[i] = 0.5f * x[i * 3] - x[i * 3 + 1] + 2.0f * x[i * 3 + 2] + 0.3f + 0.05f * (float)lss_rng_normal(&rng);
    }
    lss_graph_reset(r->g);
    lss_tensor *l = lss_op_mse(r->g, lss_mlp_forward(r->g, &r->m, lss_view(r->g, x, 2, (int64_t[]){16, 3})),
                               lss_view(r->g, y, 2, (int64_t[]){16, 1}));
    lss_store_zero_grad(r->st);
    if ((s = lss_backward(r->g, l))) return s;
    *loss = l->data[0];
    if (t < TR_MAXSTEP) r->steploss[t] = l->data[0];
    if (t == r->nan_at) r->m.w[0]->grad[1] = NAN;
    return lss_optim_step(r->opt);
}
static int treg_eval1(treg *r, double *loss) {
    double v;
    if (r->eval_mode == 0) {
        lss_graph_reset(r->ge);
        lss_tensor *l = lss_op_mse(r->ge, lss_mlp_forward(r->ge, &r->m, lss_view(r->ge, r->xe, 2, (int64_t[]){64, 3})),
                                   lss_view(r->ge, r->ye, 2, (int64_t[]){64, 1}));
        if (!l) return lss_graph_status(r->ge);
        v = l->data[0];
    } else if (r->eval_mode == 1) v = 1.0;
    else if (r->eval_mode == 2) v = 1.0 / (1.0 + r->nevals);
    else if (r->eval_mode == 3) v = 1.0 - 1e-4 * r->nevals;
    else if (r->eval_mode == 4) v = fabs(r->nevals - 2.0) + 1.0;
    else v = fabs((double)lss_optim_steps(r->opt) - 30.0) + 1.0;
    if (r->nevals < 64) {
        r->evals[r->nevals] = v;
        r->snap[r->nevals] = malloc(sizeof(float) * (size_t)lss_store_size(r->st));
        memcpy(r->snap[r->nevals], lss_store_data(r->st), sizeof(float) * (size_t)lss_store_size(r->st));
    }
    r->nevals++;
    *loss = v;
    return LSS_OK;
}
static int treg_step(void *u, int64_t t, double *loss) { return treg_step1((treg *)u, t, loss); }
static int treg_eval(void *u, double *loss) { return treg_eval1((treg *)u, loss); }
/* two regressions trained together (different data and initial weights) */
static int treg2_step(void *u, int64_t t, double *loss) {
    treg *r = (treg *)u;
    int s = treg_step1(&r[0], t, &loss[0]), s2 = treg_step1(&r[1], t, &loss[1]);
    return s ? s : s2;
}
static int treg2_eval(void *u, double *loss) {
    treg *r = (treg *)u;
    int s = treg_eval1(&r[0], &loss[0]);
    return s ? s : treg_eval1(&r[1], &loss[1]);
}

static int file_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb, ca, cb;
    while (eq) {
        ca = fgetc(fa); cb = fgetc(fb);
        if (ca != cb) eq = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}
static int store_equal(lss_store *a, lss_store *b) {
    return lss_store_size(a) == lss_store_size(b) &&
           !memcmp(lss_store_data(a), lss_store_data(b), sizeof(float) * (size_t)lss_store_size(a));
}

static int64_t prog_calls, prog_last;
static double prog_valid;
static void treg_progress(void *u, int64_t step, int64_t steps, const double *train, const double *valid) {
    (void)u; (void)steps; (void)train;
    prog_calls++; prog_last = step; prog_valid = valid ? valid[0] : -1;
}

static lss_train_opts topts(treg *r, int64_t steps) {
    lss_train_opts o;
    memset(&o, 0, sizeof o);
    o.steps = steps; o.step = treg_step; o.eval = treg_eval; o.user = r;
    return o;
}

static void test_train(void) {
    const char *csv = "build/test_nn_train.csv", *ck = "build/test_nn_train.ckpt";
    /* ---- a regression with a held-out set: CSV header, rows, means, learning */
    {
        treg r;
        lss_train_result res;
        lss_csv c;
        lss_train_net net = {"reg", NULL, NULL, NULL};
        CHECK(treg_make(&r, 1, 2) == 0, "make regression: %s", lss_last_error());
        net.store = r.st; net.optim = r.opt; net.ckpt_path = ck;
        lss_train_opts o = topts(&r, 60);
        o.eval_every = 10; o.ckpt_every = 20; o.loss_csv = csv; o.progress = treg_progress;
        remove(ck);
        prog_calls = 0;
        CHECK_OK(lss_train(&net, 1, &o, &res));
        CHECK(prog_calls == 60 && prog_last == 60 && prog_valid == r.evals[5], "progress after every step with the last row");
        CHECK(res.steps_done == 60 && res.skipped == 0 && !res.stopped_early, "60 steps done (%lld, skipped %lld)",
              (long long)res.steps_done, (long long)res.skipped);
        CHECK(lss_optim_steps(r.opt) == 60 && r.nevals == 6, "optimizer at step 60, 6 evaluations (%d)", r.nevals);
        memset(&c, 0, sizeof c);
        CHECK_OK(lss_csv_read(csv, &c));
        CHECK(c.ncols == 3 && c.nrows == 6, "CSV has 3 columns and 6 rows (%d, %lld)", c.ncols, (long long)c.nrows);
        if (c.ncols == 3 && c.nrows == 6) {
            CHECK(!strcmp(c.names[0], "step") && !strcmp(c.names[1], "train_reg") && !strcmp(c.names[2], "valid_reg"),
                  "CSV header step,train_reg,valid_reg");
            for (int i = 0; i < 6; i++) {
                double mean = 0;
                for (int t = 10 * i; t < 10 * i + 10; t++) mean += r.steploss[t];
                mean /= 10;
                CHECK(c.data[i * 3] == 10.0 * (i + 1), "row %d at step %d", i, 10 * (i + 1));
                CHECK_CLOSE(c.data[i * 3 + 1], mean, 1e-8, 0, "train column = mean of the 10 step losses");
                CHECK_CLOSE(c.data[i * 3 + 2], r.evals[i], 1e-8, 0, "valid column = held-out loss");
            }
            CHECK(c.data[5 * 3 + 2] < 0.1 * c.data[2], "held-out loss fell 10-fold (%g -> %g)", c.data[2], c.data[17]);
        }
        lss_csv_free(&c);
        CHECK(res.best_step == 60, "best held-out loss at the last step (%lld)", (long long)res.best_step);
        /* the checkpoint loads with plain lss_ckpt_load (the loop state is ignored) */
        {
            treg q;
            CHECK(treg_make(&q, 9, 2) == 0, "make");
            CHECK_OK(lss_ckpt_load(ck, q.st, q.opt));
            CHECK(store_equal(q.st, r.st) && lss_optim_steps(q.opt) == 60, "final checkpoint holds the final parameters");
            treg_free(&q);
        }
        treg_free(&r);
    }
    /* ---- interrupted runs resume bit for bit: (a) uninterrupted 60 steps; (b) steps = 30, then resume to
     * 60 in new objects; (c) a run stopped by an error at step 47 (checkpoints every 15 steps, so its last one,
     * at 45, falls between two rows) resumed to 60.
     * A NaN gradient at step 25 is skipped in all of them; keep_best is on and the held-out loss is
     * lowest at step 30, so the best parameters must survive the checkpoints of (b) and (c). */
    {
        treg a, b, c;
        lss_train_result ra, rb, rc;
        lss_train_net na = {"reg", NULL, NULL, "build/test_nn_ta.ckpt"}, nb = {"reg", NULL, NULL, "build/test_nn_tb.ckpt"},
                      nc = {"reg", NULL, NULL, "build/test_nn_tc.ckpt"};
        remove(na.ckpt_path); remove(nb.ckpt_path); remove(nc.ckpt_path);
        CHECK(treg_make(&a, 1, 3) == 0 && treg_make(&b, 1, 3) == 0 && treg_make(&c, 1, 3) == 0, "make");
        a.nan_at = b.nan_at = c.nan_at = 25;
        a.eval_mode = b.eval_mode = c.eval_mode = 5;
        na.store = a.st; na.optim = a.opt;
        lss_train_opts o = topts(&a, 60);
        o.eval_every = 10; o.ckpt_every = 20; o.loss_csv = "build/test_nn_ta.csv"; o.keep_best = 1; o.resume = 1;
        CHECK_OK(lss_train(&na, 1, &o, &ra));
        CHECK(ra.skipped == 1 && ra.steps_done == 60, "NaN step skipped and counted (%lld)", (long long)ra.skipped);
        CHECK(ra.best_step == 30 && a.snap[2] && !memcmp(lss_store_data(a.st), a.snap[2], sizeof(float) * (size_t)lss_store_size(a.st)),
              "uninterrupted run returns the parameters of step 30 (best step %lld)", (long long)ra.best_step);
        {   /* its checkpoint holds the last parameters and the best snapshot: lss_ckpt_load_best gives the snapshot */
            treg l;
            int best = -1;
            CHECK(treg_make(&l, 5, 3) == 0, "make");
            CHECK_OK(lss_ckpt_load(na.ckpt_path, l.st, NULL));
            CHECK(a.snap[5] && !memcmp(lss_store_data(l.st), a.snap[5], sizeof(float) * (size_t)lss_store_size(l.st)),
                  "lss_ckpt_load: the last parameters (step 60)");
            CHECK_OK(lss_ckpt_load_best(na.ckpt_path, l.st, &best));
            CHECK(best == 1 && !memcmp(lss_store_data(l.st), a.snap[2], sizeof(float) * (size_t)lss_store_size(l.st)),
                  "lss_ckpt_load_best: the best snapshot (step 30), flagged (%d)", best);
            CHECK_ERR(lss_ckpt_load_best(NULL, l.st, &best), LSS_ERR_ARG);
            CHECK_ERR(lss_ckpt_load_best("build/no_such_file.ckpt", l.st, &best), LSS_ERR_IO);
            treg_free(&l);
        }
        /* (b) */
        nb.store = b.st; nb.optim = b.opt;
        o = topts(&b, 30);
        o.eval_every = 10; o.ckpt_every = 20; o.loss_csv = "build/test_nn_tb.csv"; o.keep_best = 1; o.resume = 1;
        CHECK_OK(lss_train(&nb, 1, &o, &rb));
        CHECK(lss_optim_steps(b.opt) == 30, "first part stops at 30");
        treg_free(&b);
        CHECK(treg_make(&b, 77, 3) == 0, "make (other initial weights)");
        b.nan_at = 25; b.eval_mode = 5;
        nb.store = b.st; nb.optim = b.opt;
        o.steps = 60; o.user = &b;
        CHECK_OK(lss_train(&nb, 1, &o, &rb));
        CHECK(store_equal(a.st, b.st), "steps = 30 then resumed to 60: parameters bitwise equal to the uninterrupted run");
        CHECK(file_equal("build/test_nn_ta.csv", "build/test_nn_tb.csv"), "resumed loss CSV byte for byte equal");
        CHECK(rb.skipped == 1 && rb.best_step == ra.best_step, "skipped steps and best step carried over (%lld, %lld vs %lld)",
              (long long)rb.skipped, (long long)rb.best_step, (long long)ra.best_step);
        CHECK(file_equal(na.ckpt_path, nb.ckpt_path), "final checkpoints byte for byte equal");
        /* (c) */
        c.fail_at = 47;
        nc.store = c.st; nc.optim = c.opt;
        o = topts(&c, 60);
        o.eval_every = 10; o.ckpt_every = 15; o.loss_csv = "build/test_nn_tc.csv"; o.keep_best = 1; o.resume = 1;
        CHECK_ERR(lss_train(&nc, 1, &o, &rc), LSS_ERR_IO);
        CHECK(rc.steps_done == 47, "the error stops the loop at once (step %lld)", (long long)rc.steps_done);
        treg_free(&c);
        CHECK(treg_make(&c, 78, 3) == 0, "make");
        c.nan_at = 25; c.eval_mode = 5;
        nc.store = c.st; nc.optim = c.opt; o.user = &c;
        CHECK_OK(lss_train(&nc, 1, &o, &rc));
        CHECK(store_equal(a.st, c.st), "run stopped at 47, resumed from its checkpoint at 45: parameters bitwise equal");
        CHECK(file_equal("build/test_nn_ta.csv", "build/test_nn_tc.csv"), "and the loss CSV byte for byte");
        /* resuming a finished run does nothing */
        CHECK_OK(lss_train(&nc, 1, &o, &rc));
        CHECK(lss_optim_steps(c.opt) == 60 && store_equal(a.st, c.st), "resuming a finished run changes nothing");
        o.steps = 50;
        CHECK_ERR(lss_train(&nc, 1, &o, &rc), LSS_ERR_STATE);
        treg_free(&a); treg_free(&b); treg_free(&c);
        remove(na.ckpt_path); remove(nb.ckpt_path); remove(nc.ckpt_path);
        remove("build/test_nn_ta.csv"); remove("build/test_nn_tb.csv"); remove("build/test_nn_tc.csv");
    }
    /* ---- plateau stopping */
    {
        const int modes[3] = {1, 2, 3};
        for (int i = 0; i < 3; i++) {
            treg r;
            lss_train_result res;
            lss_train_net net = {"reg", NULL, NULL, NULL};
            CHECK(treg_make(&r, 1, 4) == 0, "make");
            r.eval_mode = modes[i];
            net.store = r.st; net.optim = r.opt;
            lss_train_opts o = topts(&r, 100);
            o.eval_every = 5; o.patience = 3; o.min_delta = modes[i] == 3 ? 1e-3 : 0;
            CHECK_OK(lss_train(&net, 1, &o, &res));
            if (modes[i] == 2)
                CHECK(!res.stopped_early && res.steps_done == 100 && r.nevals == 20,
                      "decreasing held-out loss: no plateau stop (%lld steps)", (long long)res.steps_done);
            else /* evaluations 2, 3, 4 do not improve on the first: stop at step 20 */
                CHECK(res.stopped_early && res.steps_done == 20 && r.nevals == 4,
                      "%s held-out loss: plateau stop after 3 evaluations without improvement (%lld steps, %d evaluations)",
                      modes[i] == 1 ? "flat" : "slowly decreasing (below min_delta)", (long long)res.steps_done, r.nevals);
            treg_free(&r);
        }
    }
    /* ---- keep_best: held-out losses 3, 2, 1, 2, 3, 4 at steps 10..60: parameters of step 30 come back */
    {
        treg r;
        lss_train_result res;
        lss_train_net net = {"reg", NULL, NULL, NULL};
        CHECK(treg_make(&r, 1, 5) == 0, "make");
        r.eval_mode = 4;
        net.store = r.st; net.optim = r.opt;
        lss_train_opts o = topts(&r, 60);
        o.eval_every = 10; o.keep_best = 1;
        CHECK_OK(lss_train(&net, 1, &o, &res));
        CHECK(r.nevals == 6 && res.best_step == 30, "best evaluation at step 30 (%lld)", (long long)res.best_step);
        CHECK(r.snap[2] && !memcmp(lss_store_data(r.st), r.snap[2], sizeof(float) * (size_t)lss_store_size(r.st)),
              "keep_best restores the parameters of the best evaluation");
        CHECK(r.snap[5] && memcmp(r.snap[2], r.snap[5], sizeof(float) * (size_t)lss_store_size(r.st)),
              "and they differ from the last ones");
        treg_free(&r);
    }
    /* ---- two networks: columns, mismatched checkpoints, partial checkpoints, bad arguments */
    {
        treg r[2];
        lss_train_result res;
        lss_train_net nets[2] = {{"a", NULL, NULL, "build/test_nn_t2a.ckpt"}, {"b", NULL, NULL, "build/test_nn_t2b.ckpt"}};
        lss_csv c;
        remove(nets[0].ckpt_path); remove(nets[1].ckpt_path);
        CHECK(treg_make(&r[0], 1, 6) == 0 && treg_make(&r[1], 2, 7) == 0, "make");
        nets[0].store = r[0].st; nets[0].optim = r[0].opt; nets[1].store = r[1].st; nets[1].optim = r[1].opt;
        lss_train_opts o;
        memset(&o, 0, sizeof o);
        o.steps = 20; o.step = treg2_step; o.eval = treg2_eval; o.user = r; o.eval_every = 10; o.loss_csv = csv;
        CHECK_OK(lss_train(nets, 2, &o, &res));
        memset(&c, 0, sizeof c);
        CHECK_OK(lss_csv_read(csv, &c));
        CHECK(c.ncols == 5 && c.nrows == 2 && !strcmp(c.names[1], "train_a") && !strcmp(c.names[2], "train_b") &&
              !strcmp(c.names[3], "valid_a") && !strcmp(c.names[4], "valid_b"), "two networks: step,train_a,train_b,valid_a,valid_b");
        if (c.ncols == 5 && c.nrows == 2) CHECK_CLOSE(c.data[9], r[1].evals[1], 1e-8, 0, "valid_b of the second row");
        lss_csv_free(&c);
        /* checkpoints of different steps are refused, naming both steps */
        CHECK_OK(lss_ckpt_save(nets[0].ckpt_path, r[0].st, r[0].opt));
        double l1;
        CHECK_OK(treg_step1(&r[1], 20, &l1));
        CHECK_OK(lss_ckpt_save(nets[1].ckpt_path, r[1].st, r[1].opt));
        o.resume = 1; o.steps = 40;
        CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_STATE);
        CHECK(strstr(lss_last_error(), "step 20") && strstr(lss_last_error(), "step 21"), "both steps named: %s", lss_last_error());
        o.resume = 0;
        CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_STATE); /* optimizers at 20 and 21 */
        remove(nets[1].ckpt_path);
        o.resume = 1;
        CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_STATE); /* only one checkpoint exists */
        CHECK(strstr(lss_last_error(), "does not") != NULL, "missing checkpoint named: %s", lss_last_error());
        /* a step callback that does not step every optimizer */
        treg_free(&r[0]); treg_free(&r[1]);
        CHECK(treg_make(&r[0], 1, 6) == 0 && treg_make(&r[1], 2, 7) == 0, "make");
        nets[0].store = r[0].st; nets[0].optim = r[0].opt; nets[1].store = r[1].st; nets[1].optim = r[1].opt;
        r[1].no_step_at = 3;
        o.resume = 0; o.loss_csv = NULL; nets[0].ckpt_path = nets[1].ckpt_path = NULL;
        CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_STATE);
        CHECK(strstr(lss_last_error(), "'b'") != NULL, "names the network: %s", lss_last_error());
        /* arguments */
        int64_t steps0 = lss_optim_steps(r[0].opt);
        lss_train_opts bad = o;
        CHECK_ERR(lss_train(NULL, 2, &o, &res), LSS_ERR_ARG);
        CHECK_ERR(lss_train(nets, 0, &o, &res), LSS_ERR_ARG);
        CHECK_ERR(lss_train(nets, 2, NULL, &res), LSS_ERR_ARG);
        bad.steps = 0; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        bad = o; bad.step = NULL; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        bad = o; bad.eval = NULL; bad.patience = 2; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        bad = o; bad.eval = NULL; bad.keep_best = 1; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        bad = o; bad.resume = 1; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        bad = o; bad.min_delta = -1; CHECK_ERR(lss_train(nets, 2, &bad, &res), LSS_ERR_ARG);
        nets[1].name = "a";
        CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_ARG);
        CHECK(strstr(lss_last_error(), "'a'") != NULL, "duplicate name reported: %s", lss_last_error());
        nets[1].name = "b,c"; CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_ARG);
        nets[1].name = NULL; CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_ARG);
        nets[1].name = "b"; nets[1].optim = NULL; CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_ARG);
        nets[1].optim = r[0].opt; CHECK_ERR(lss_train(nets, 2, &o, &res), LSS_ERR_ARG); /* optimizer of another store */
        CHECK(lss_optim_steps(r[0].opt) == steps0, "refused calls change nothing");
        treg_free(&r[0]); treg_free(&r[1]);
        remove(csv); remove(ck); remove("build/test_nn_t2a.ckpt");
    }
}

/* ------------------------------------------------------------------ blocks */
static void test_blocks(void) {
    lss_store *st;
    lss_resnet net;
    lss_resnet_opts ro;
    /* paper size: 8 x 384 x 384, 7 parameters -> 35 outputs */
    CHECK_OK(lss_store_create(1, &st));
    memset(&ro, 0, sizeof ro);
    ro.in_ch = 8; ro.in_h = 384; ro.in_w = 384; ro.nout = 7 + 28;
    CHECK_OK(lss_resnet_init(&net, st, "cnn", &ro));
    {
        int64_t conv = 128 * 128 * 25 + 128;
        int64_t expect = (8 * 128 * 25 + 128) + 3 * conv + 20 * conv + (int64_t)24 * 24 * 128 * 35 + 35;
        CHECK(lss_store_nparams(st) == expect, "DeepLSS ResNet parameters %lld, expected %lld", (long long)lss_store_nparams(st), (long long)expect);
        CHECK(lss_store_nparams(st) > 11900000 && lss_store_nparams(st) < 12100000, "about 12.0 M parameters (%lld)", (long long)lss_store_nparams(st));
        CHECK(net.out_h == 24 && net.out_w == 24, "384 -> 24 pixels after 4 stride-2 convolutions");
    }
    lss_store_free(st);
    /* U-net: shapes, gradient reaches every trainable tensor (with and without the noise-level embedding),
       conditioning divides by |sigma| + eps */
    for (int emb = 0; emb <= 3; emb += 3) {
        lss_unet u;
        lss_unet_opts uo;
        lss_graph *g;
        float x[2 * 1 * 16 * 16], sg[2] = {0.5f, -0.25f};
        lss_rng r;
        lss_rng_init(&r, 8, 0);
        for (int k = 0; k < 2 * 256; k++) x[k] = (float)lss_rng_normal(&r);
        CHECK_OK(lss_store_create(2, &st));
        memset(&uo, 0, sizeof uo); uo.in_ch = 1; uo.out_ch = 1; uo.c0 = 4; uo.sigma_cond = 1; uo.sigma_embed = emb;
        CHECK_OK(lss_unet_init(&u, st, "unet", &uo));
        CHECK(emb == 0 ? u.emb_w == NULL : (u.emb_w && u.emb_w->shape[0] == 7 && u.eproj_w[2]->shape[1] == 16), "embedding tensors");
        CHECK_OK(lss_graph_create(&g));
        lss_tensor *y = lss_unet_forward(g, &u, lss_view(g, x, 4, (int64_t[]){2, 1, 16, 16}), lss_view(g, sg, 1, (int64_t[]){2}));
        CHECK(y && y->ndim == 4 && y->shape[0] == 2 && y->shape[1] == 1 && y->shape[2] == 16 && y->shape[3] == 16, "U-net output shape: %s", lss_last_error());
        lss_store_zero_grad(st);
        CHECK_OK(lss_backward(g, lss_op_mean(g, lss_op_mul(g, y, y))));
        int dead = 0;
        for (int i = 0; i < lss_store_ntensors(st); i++) {
            lss_tensor *t = lss_store_tensor(st, i);
            if (!t->grad) continue;
            double s = 0;
            for (int64_t k = 0; k < t->n; k++) s += fabs(t->grad[k]);
            if (!(s > 0)) { dead++; printf("  no gradient: %s\n", t->name); }
        }
        CHECK(dead == 0, "every U-net tensor receives a gradient (%d without; embedding %d)", dead, emb);
        lss_graph_free(g);
        /* the embedding's gradients against central differences (the element of largest gradient of the shared
           layer and of one block's projection) */
        for (int which = 0; emb && which < 2; which++) {
            lss_tensor *t = which ? u.eproj_w[3] : u.emb_w;
            int64_t kb = 0;
            for (int64_t k = 1; k < t->n; k++) if (fabsf(t->grad[k]) > fabsf(t->grad[kb])) kb = k;
            double an = t->grad[kb], lp[2], h = 1e-3;
            float w0 = t->data[kb];
            for (int sgn = 0; sgn < 2; sgn++) {
                lss_graph *gf;
                t->data[kb] = w0 + (float)(sgn ? -h : h);
                lss_graph_create(&gf);
                lss_tensor *yf = lss_unet_forward(gf, &u, lss_view(gf, x, 4, (int64_t[]){2, 1, 16, 16}), lss_view(gf, sg, 1, (int64_t[]){2}));
                lss_tensor *lf = yf ? lss_op_mean(gf, lss_op_mul(gf, yf, yf)) : NULL;
                lp[sgn] = lf ? lf->data[0] : NAN;
                lss_graph_free(gf);
            }
            t->data[kb] = w0;
            double fd = (lp[0] - lp[1]) / ((double)(w0 + (float)h) - (double)(w0 - (float)h));
            CHECK(fabs(fd - an) <= 0.02 * fabs(an) && fabs(an) > 0, "embedding gradient %s[%lld]: backprop %g, central difference %g",
                  t->name, (long long)kb, an, fd);
        }
        lss_store_free(st);
    }
}

/* Division by (|sigma| + eps): shifting the head bias by 1 shifts output n by 1 / (|sigma_n| + 1e-3). */
static void test_unet_sigma(void) {
    lss_store *st;
    lss_unet u;
    lss_unet_opts uo;
    lss_graph *g1, *g2;
    float x[2 * 16 * 16], sg[2] = {0.5f, -0.25f};
    lss_rng r;
    lss_rng_init(&r, 8, 0);
    for (int k = 0; k < 2 * 256; k++) x[k] = (float)lss_rng_normal(&r);
    lss_store_create(2, &st);
    memset(&uo, 0, sizeof uo); uo.in_ch = 1; uo.out_ch = 1; uo.c0 = 4; uo.sigma_cond = 1;
    CHECK_OK(lss_unet_init(&u, st, "unet", &uo));
    lss_graph_create(&g1); lss_graph_create(&g2);
    lss_graph_set_training(g1, 0); lss_graph_set_training(g2, 0);
    lss_tensor *y1 = lss_unet_forward(g1, &u, lss_view(g1, x, 4, (int64_t[]){2, 1, 16, 16}), lss_view(g1, sg, 1, (int64_t[]){2}));
    u.head_b->data[0] += 1.0f;
    lss_tensor *y2 = lss_unet_forward(g2, &u, lss_view(g2, x, 4, (int64_t[]){2, 1, 16, 16}), lss_view(g2, sg, 1, (int64_t[]){2}));
    CHECK(y1 && y2, "U-net forwards");
    if (y1 && y2)
        for (int n = 0; n < 2; n++)
            CHECK_CLOSE(y2->data[n * 256 + 17] - y1->data[n * 256 + 17], 1.0 / (fabs(sg[n]) + 1e-3), 1e-4, 0, "output divided by |sigma| + 1e-3");
    lss_graph_free(g1); lss_graph_free(g2);
    lss_store_free(st);
}

/* ------------------------------------------------------------------ a CNN learns a real regression */
/* Maps: A times white noise smoothed by a periodic Gaussian of 1 pixel (a Gaussian random field),
 * 32 x 32, log A uniform in [log 0.5, log 2]. The network predicts log A. The best possible
 * estimator (maximum likelihood from the known spectrum) has an error of about 1/sqrt(2 N_eff) with
 * N_eff ~ 1024 / (4 pi) ~ 80 independent pixels: ~0.08; predicting the mean has RMSE 0.40 (the
 * standard deviation of a uniform over a width 1.386). The test requires RMSE < 0.15 on 256 held-out
 * maps, i.e. far better than the mean and within 2x of the optimum. */
static void grf_map(uint64_t idx, float *m, float *logA) {
    static float k1[7];
    float tmp[32 * 32], wn[32 * 32];
    lss_rng r;
    double s = 0;
    for (int i = -3; i <= 3; i++) s += exp(-0.5 * i * i);
    for (int i = -3; i <= 3; i++) k1[i + 3] = (float)(exp(-0.5 * i * i) / s);
    lss_rng_init(&r, 2024, idx);
    double la = log(0.5) + lss_rng_uniform(&r) * log(4.0);
    *logA = (float)la;
    for (int k = 0; k < 1024; k++) wn[k] = (float)lss_rng_normal(&r);
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            float a = 0;
            for (int i = -3; i <= 3; i++) a += k1[i + 3] * wn[y * 32 + ((x + i + 32) & 31)];
            tmp[y * 32 + x] = a;
        }
    /* the smoothed field has variance sum(k^2)^2 ~ 1/(4 pi); rescale to unit variance times A */
    double kk = 0;
    for (int i = 0; i < 7; i++) kk += (double)k1[i] * k1[i];
    float sc = (float)(exp(la) / kk);
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            float a = 0;
            for (int i = -3; i <= 3; i++) a += k1[i + 3] * tmp[((y + i + 32) & 31) * 32 + x];
            m[y * 32 + x] = a * sc;
        }
}

static void test_cnn_learns(void) {
    lss_store *st;
    lss_graph *g;
    lss_optim *opt;
    lss_optim_opts oo;
    const int B = 32, steps = g_asan ? 150 : 500, ntest = 256; /* fewer steps under ASan, same tolerance */
    double t0 = lss_time_now();
    CHECK_OK(lss_store_create(21, &st));
    lss_tensor *w1 = lss_store_add(st, "c1.w", 4, (int64_t[]){16, 1, 3, 3}, LSS_INIT_HE);
    lss_tensor *b1 = lss_store_add(st, "c1.b", 1, (int64_t[]){16}, LSS_INIT_ZERO);
    lss_tensor *w2 = lss_store_add(st, "c2.w", 4, (int64_t[]){16, 16, 3, 3}, LSS_INIT_HE);
    lss_tensor *b2 = lss_store_add(st, "c2.b", 1, (int64_t[]){16}, LSS_INIT_ZERO);
    lss_mlp head;
    int sizes[3] = {16, 16, 1};
    CHECK_OK(lss_mlp_init(&head, st, "head", 2, sizes, LSS_ACT_RELU));
    memset(&oo, 0, sizeof oo); oo.lr = 3e-3; oo.sched = LSS_SCHED_COSINE; oo.total_steps = steps; oo.lr_min = 1e-4;
    CHECK_OK(lss_optim_create(st, &oo, &opt));
    CHECK_OK(lss_graph_create(&g));
    float *xb = malloc(sizeof(float) * 32 * 32 * ntest), yb[256];
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < B; i++) grf_map((uint64_t)(1000 + s * B + i), xb + i * 1024, &yb[i]);
        lss_graph_reset(g);
        lss_tensor *h = lss_op_relu(g, lss_op_conv2d(g, lss_view(g, xb, 4, (int64_t[]){B, 1, 32, 32}), w1, b1, 2, 1));
        h = lss_op_relu(g, lss_op_conv2d(g, h, w2, b2, 2, 1));
        h = lss_mlp_forward(g, &head, lss_op_global_avgpool(g, h));
        lss_tensor *l = lss_op_mse(g, h, lss_view(g, yb, 2, (int64_t[]){B, 1}));
        lss_store_zero_grad(st);
        if (lss_backward(g, l) || lss_optim_step(opt)) { CHECK(0, "training step: %s", lss_last_error()); break; }
    }
    for (int i = 0; i < ntest; i++) grf_map((uint64_t)i, xb + i * 1024, &yb[i]);
    lss_graph_reset(g);
    lss_graph_set_training(g, 0);
    lss_tensor *h = lss_op_relu(g, lss_op_conv2d(g, lss_view(g, xb, 4, (int64_t[]){ntest, 1, 32, 32}), w1, b1, 2, 1));
    h = lss_op_relu(g, lss_op_conv2d(g, h, w2, b2, 2, 1));
    h = lss_mlp_forward(g, &head, lss_op_global_avgpool(g, h));
    double se = 0, sv = 0, mean = 0;
    for (int i = 0; i < ntest; i++) mean += yb[i] / ntest;
    for (int i = 0; i < ntest; i++) { se += (h->data[i] - yb[i]) * (h->data[i] - yb[i]); sv += (yb[i] - mean) * (yb[i] - mean); }
    double rmse = sqrt(se / ntest);
    printf("  CNN on GRF amplitude: %d steps in %.1f s, test RMSE(log A) %.4f (std of log A %.3f)\n", steps,
           lss_time_now() - t0, rmse, sqrt(sv / ntest));
    CHECK(rmse < 0.15, "CNN RMSE on log A %.4f < 0.15", rmse);
    free(xb);
    lss_graph_free(g);
    lss_optim_free(opt);
    lss_store_free(st);
}

int main(void) {
    const char *e = getenv("LSS_TEST_ASAN");
    g_asan = e && *e == '1';
    RUN(test_sgemm);
    RUN(test_ops);
    RUN(test_losses);
    RUN(test_gauss_independent);
    RUN(test_optim);
    RUN(test_rmsprop);
    RUN(test_store_errors);
    RUN(test_threads);
    RUN(test_checkpoint);
    RUN(test_train);
    RUN(test_blocks);
    RUN(test_unet_sigma);
    RUN(test_cnn_learns);
    LSS_TEST_END();
}
