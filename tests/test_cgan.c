/* Tests of the cGAN emulator's pieces in lss_nn.h: the WGAN-GP critic objective and its exact penalty gradient
 * (lss_wgan_gp_step) against an independent double-precision computation of the same loss whose gradients are
 * finite differences (input gradients nested inside parameter differences), two RMSProp steps of a tiny critic
 * against the same reference, the latent rescaling of the paper's eq. 2, the generator's shapes and gradients,
 * and lss_train with several optimizer steps per loop step (the critic's n_critic) including exact resume. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_core.h"
#include "lss_nn.h"
#include "tests/lss_test.h"
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------------ an independent double-precision critic */
typedef struct {
    const lss_convnet *net;
    const double *th;        /* parameters in the store's layout */
    int64_t off_cw[LSS_CONVNET_MAX], off_cb[LSS_CONVNET_MAX], off_dw[LSS_CONVNET_MAX + 1], off_db[LSS_CONVNET_MAX + 1], off_pw;
} ref_critic;

static double ref_forward(const ref_critic *r, const double *x, const double *y) {
    const lss_convnet_opts *o = &r->net->o;
    static double a[4096], b[4096];
    int c = o->in_ch, side = o->side, i, n;
    memcpy(a, x, sizeof(double) * (size_t)(c * side * side));
    for (i = 0; i < o->nconv; i++) {
        int co, ci, oy, ox, ky, kx, k = o->k[i], s = o->stride[i], p = (k - 1) / 2, os = r->net->hw[i + 1];
        for (co = 0; co < o->ch[i]; co++)
            for (oy = 0; oy < os; oy++)
                for (ox = 0; ox < os; ox++) {
                    double v = r->th[r->off_cb[i] + co];
                    for (ci = 0; ci < c; ci++)
                        for (ky = 0; ky < k; ky++)
                            for (kx = 0; kx < k; kx++) {
                                int iy = oy * s - p + ky, ix = ox * s - p + kx;
                                if (iy < 0 || ix < 0 || iy >= side || ix >= side) continue;
                                v += r->th[r->off_cw[i] + ((co * c + ci) * k + ky) * k + kx] * a[(ci * side + iy) * side + ix];
                            }
                    b[(co * os + oy) * os + ox] = v > 0 ? v : o->slope * v;
                }
        c = o->ch[i]; side = os;
        memcpy(a, b, sizeof(double) * (size_t)(c * side * side));
    }
    n = c * side * side;
    for (i = 0; i < o->nextra; i++) a[n + i] = y[i];
    n += o->nextra;
    for (i = 0; i <= o->ndense; i++) {
        int w = i == o->ndense ? o->nout : o->width[i], j, q;
        for (j = 0; j < w; j++) {
            double v = r->th[r->off_db[i] + j];
            for (q = 0; q < n; q++) v += a[q] * r->th[r->off_dw[i] + (int64_t)q * w + j];
            if (i == o->ndense && r->net->pw) /* projection: phi . (y P) */
                for (q = 0; q < n; q++)
                    for (int e = 0; e < o->nextra; e++) v += a[q] * y[e] * r->th[r->off_pw + (int64_t)e * n + q];
            b[j] = i == o->ndense ? v : (v > 0 ? v : o->slope * v);
        }
        memcpy(a, b, sizeof(double) * (size_t)w);
        n = w;
    }
    return a[0];
}

/* The WGAN-GP critic loss in double, the input gradients by central differences. */
static double ref_loss(const ref_critic *r, const float *real, const float *fake, const float *y, const float *eps, int n,
                       double lambda) {
    const lss_convnet_opts *o = &r->net->o;
    int d = o->in_ch * o->side * o->side, i, j;
    double *x = (double *)malloc(sizeof(double) * (size_t)d), yd[8], L = 0;
    for (i = 0; i < n; i++) {
        double g2 = 0, dr, df;
        for (j = 0; j < o->nextra; j++) yd[j] = y[i * o->nextra + j];
        for (j = 0; j < d; j++) x[j] = real[i * d + j];
        dr = ref_forward(r, x, yd);
        for (j = 0; j < d; j++) x[j] = fake[i * d + j];
        df = ref_forward(r, x, yd);
        for (j = 0; j < d; j++) x[j] = (double)eps[i] * real[i * d + j] + (1.0 - eps[i]) * fake[i * d + j];
        for (j = 0; j < d; j++) {
            const double h = 1e-7;
            double x0 = x[j], fp, fm;
            x[j] = x0 + h; fp = ref_forward(r, x, yd);
            x[j] = x0 - h; fm = ref_forward(r, x, yd);
            x[j] = x0;
            g2 += ((fp - fm) / (2 * h)) * ((fp - fm) / (2 * h));
        }
        L += (df - dr) / n + lambda * (sqrt(g2) - 1) * (sqrt(g2) - 1) / n;
    }
    free(x);
    return L;
}

static void ref_setup(ref_critic *r, const lss_convnet *net, const lss_store *st, const double *th) {
    int i;
    const float *base = lss_store_data(st);
    memset(r, 0, sizeof *r);
    r->net = net; r->th = th;
    for (i = 0; i < net->o.nconv; i++) { r->off_cw[i] = net->cw[i]->data - base; r->off_cb[i] = net->cb[i]->data - base; }
    for (i = 0; i <= net->o.ndense; i++) { r->off_dw[i] = net->dw[i]->data - base; r->off_db[i] = net->db[i]->data - base; }
    if (net->pw) r->off_pw = net->pw->data - base;
}

/* Gradient of ref_loss over every parameter by central differences. */
static void ref_grad(ref_critic *r, double *th, int64_t np, const float *real, const float *fake, const float *y,
                     const float *eps, int n, double lambda, double *g) {
    int64_t q;
    for (q = 0; q < np; q++) {
        const double h = 1e-5;
        double t0 = th[q], lp, lm;
        th[q] = t0 + h; lp = ref_loss(r, real, fake, y, eps, n, lambda);
        th[q] = t0 - h; lm = ref_loss(r, real, fake, y, eps, n, lambda);
        th[q] = t0;
        g[q] = (lp - lm) / (2 * h);
    }
}

static void tiny_critic(lss_store **st, lss_convnet *net) {
    lss_convnet_opts o;
    memset(&o, 0, sizeof o);
    o.in_ch = 1; o.side = 6; o.nconv = 2;
    o.ch[0] = 3; o.k[0] = 3; o.stride[0] = 1;
    o.ch[1] = 4; o.k[1] = 5; o.stride[1] = 2;
    o.ndense = 1; o.width[0] = 5; o.nextra = 2; o.nout = 1; o.proj = 1;
    CHECK_OK(lss_store_create(21, st));
    CHECK_OK(lss_convnet_init(net, *st, "critic", &o));
    if (net->pw) {   /* the projection starts at zero: give it values so that its gradients are tested */
        lss_rng r;
        lss_rng_init(&r, 77, 0);
        for (int64_t i = 0; i < net->pw->n; i++) net->pw->data[i] = (float)(0.5 * lss_rng_normal(&r));
    }
}

static void fill_batch(int n, int d, float *real, float *fake, float *y, float *eps, uint64_t seed) {
    lss_rng r;
    int i;
    lss_rng_init(&r, seed, 0);
    for (i = 0; i < n * d; i++) { real[i] = (float)(lss_rng_normal(&r) + 0.5); fake[i] = (float)(0.7 * lss_rng_normal(&r)); }
    for (i = 0; i < 2 * n; i++) y[i] = (float)lss_rng_uniform(&r);
    for (i = 0; i < n; i++) eps[i] = (float)lss_rng_uniform(&r);
}

static void test_gp_gradient(void) {
    enum { N = 2, D = 36 };
    lss_store *st = NULL;
    lss_convnet net;
    lss_graph *g = NULL, *g2 = NULL;
    float real[N * D], fake[N * D], y[2 * N], eps[N];
    double wd, gp, gn, *th, *gref, num = 0, den = 0, maxd = 0, maxg = 0, lref;
    int64_t np, q;
    ref_critic r;
    tiny_critic(&st, &net);
    CHECK_OK(lss_graph_create(&g));
    CHECK_OK(lss_graph_create(&g2));
    fill_batch(N, D, real, fake, y, eps, 3);
    np = lss_store_size(st);
    th = (double *)malloc(sizeof(double) * np);
    gref = (double *)malloc(sizeof(double) * np);
    for (q = 0; q < np; q++) th[q] = lss_store_data(st)[q];
    ref_setup(&r, &net, st, th);
    lss_store_zero_grad(st);
    CHECK_OK(lss_wgan_gp_step(g, g2, st, &net, real, fake, y, eps, N, 10.0, &wd, &gp, &gn));
    ref_grad(&r, th, np, real, fake, y, eps, N, 10.0, gref);
    lref = ref_loss(&r, real, fake, y, eps, N, 10.0);
    CHECK_REL(-wd + 10.0 * gp, lref, 1e-4, "critic loss -W + lambda GP against the double-precision reference");
    CHECK(gn > 0.01 && gp > 0, "gradient norm %g, penalty %g", gn, gp);
    for (q = 0; q < np; q++) {
        double dq = lss_store_grad(st)[q] - gref[q];
        num += dq * dq; den += gref[q] * gref[q];
        if (fabs(dq) > maxd) maxd = fabs(dq);
        if (fabs(gref[q]) > maxg) maxg = fabs(gref[q]);
    }
    CHECK(sqrt(num / den) < 1e-3 && maxd < 1e-3 * maxg, "critic gradient vs finite differences of the double-precision "
          "loss: relative L2 %.3g, max |diff| %.3g of max |g| %.3g over %lld parameters", sqrt(num / den), maxd, maxg, (long long)np);
    /* the penalty's share of the gradient is large: without it (lambda 0) the gradient is far off */
    {
        double num0 = 0;
        lss_store_zero_grad(st);
        CHECK_OK(lss_wgan_gp_step(g, g2, st, &net, real, fake, y, eps, N, 0.0, NULL, NULL, NULL));
        for (q = 0; q < np; q++) { double dq = lss_store_grad(st)[q] - gref[q]; num0 += dq * dq; }
        CHECK(sqrt(num0 / den) > 0.05, "the penalty changes the gradient (relative L2 without it %.3g)", sqrt(num0 / den));
    }
    /* two RMSProp steps (the paper's optimizer) against the same steps taken on the reference */
    {
        lss_optim *opt = NULL;
        lss_optim_opts oo;
        double v[4096], maxp = 0, lr = 1e-3, rho = 0.9;
        int step;
        memset(&oo, 0, sizeof oo);
        /* eps 1e-3: a parameter whose gradient is zero up to the reference's finite-difference noise then moves by
           nothing in both (with eps 1e-8 the noise's sign would decide a full step) */
        oo.kind = LSS_OPT_RMSPROP; oo.lr = lr; oo.rho = rho; oo.eps = 1e-3;
        CHECK_OK(lss_optim_create(st, &oo, &opt));
        memset(v, 0, sizeof v);
        for (step = 0; step < 2; step++) {
            lss_store_zero_grad(st);
            CHECK_OK(lss_wgan_gp_step(g, g2, st, &net, real, fake, y, eps, N, 10.0, NULL, NULL, NULL));
            CHECK_OK(lss_optim_step(opt));
            ref_grad(&r, th, np, real, fake, y, eps, N, 10.0, gref);
            for (q = 0; q < np; q++) {
                v[q] = rho * v[q] + (1 - rho) * gref[q] * gref[q];
                th[q] -= lr * gref[q] / (sqrt(v[q]) + 1e-3);
            }
        }
        for (q = 0; q < np; q++) if (fabs(lss_store_data(st)[q] - th[q]) > maxp) maxp = fabs(lss_store_data(st)[q] - th[q]);
        /* a step is at most 1/eps-Lipschitz in the gradient: the gradients' agreement above (maxd) bounds the difference */
        CHECK(maxp < 3 * lr * maxd / 1e-3 + 1e-6, "parameters after two RMSProp steps differ from the reference by %.3g (bound "
              "%.3g from the gradients' agreement %.3g; a step moves a parameter by up to %.3g)", maxp, 3 * lr * maxd / 1e-3 + 1e-6,
              maxd, lr / sqrt(1 - rho));
        printf("gradient agreement: max |diff| %.3g of max |g| %.3g; parameters after two steps within %.3g\n", maxd, maxg, maxp);
        lss_optim_free(opt);
    }
    free(th); free(gref);
    lss_graph_free(g); lss_graph_free(g2); lss_store_free(st);
}

/* ------------------------------------------------------------------ eq. 2 */
static void test_latent(void) {
    enum { N = 4, L = 8 };
    float z[N * L], out[N * L], y[N * 2];
    double lo[2] = {0.1, 0.5}, hi[2] = {0.5, 1.1};
    lss_rng r;
    int i, j, q;
    lss_rng_init(&r, 1, 0);
    for (i = 0; i < N * L; i++) z[i] = (float)lss_rng_normal(&r);
    for (i = 0; i < N; i++) { y[2 * i] = (float)(0.1 + 0.4 * i / 3.0); y[2 * i + 1] = (float)(1.1 - 0.6 * i / 3.0); }
    CHECK_OK(lss_cgan_latent(z, y, N, L, 2, lo, hi, out));
    for (i = 0; i < N; i++)
        for (j = 0; j < 2; j++) {
            double nz = 0, no = 0, dot = 0, want = 0.2 + (2 - 0.2) * (y[2 * i + j] - lo[j]) / (hi[j] - lo[j]);
            for (q = 0; q < 4; q++) {
                double a = z[i * L + j * 4 + q], b = out[i * L + j * 4 + q];
                nz += a * a; no += b * b; dot += a * b;
            }
            CHECK_REL(sqrt(no), want, 1e-6, "block length l0 + (l1 - l0) (y - lo) / (hi - lo), l0 = 0.1 sqrt(4), l1 = sqrt(4)");
            CHECK_REL(dot / sqrt(nz * no), 1.0, 1e-6, "direction kept");
        }
    CHECK_ERR(lss_cgan_latent(z, y, N, 7, 2, lo, hi, out), LSS_ERR_ARG);
    y[0] = -1.0f;
    CHECK_ERR(lss_cgan_latent(z, y, N, L, 2, lo, hi, out), LSS_ERR_RANGE);
}

/* ------------------------------------------------------------------ generator */
static void test_generator(void) {
    lss_store *st = NULL;
    lss_convgen gen;
    lss_convgen_opts o;
    lss_graph *g = NULL;
    float z[2 * 6];
    lss_tensor *out, *loss;
    lss_rng r;
    int i, ok = 1;
    memset(&o, 0, sizeof o);
    o.nin = 6; o.ndense = 1; o.width[0] = 7; o.ch0 = 3; o.side0 = 2; o.nup = 3;
    o.ch[0] = 4; o.k[0] = 3; o.stride[0] = 2;
    o.ch[1] = 2; o.k[1] = 5; o.stride[1] = 2;
    o.ch[2] = 1; o.k[2] = 3; o.stride[2] = 1;
    CHECK_OK(lss_store_create(4, &st));
    CHECK_OK(lss_convgen_init(&gen, st, "gen", &o));
    CHECK(gen.side == 8, "output side %d (2 x 2 x 2)", gen.side);
    CHECK_OK(lss_graph_create(&g));
    lss_rng_init(&r, 9, 0);
    for (i = 0; i < 12; i++) z[i] = (float)lss_rng_normal(&r);
    out = lss_convgen_forward(g, &gen, lss_view(g, z, 2, (int64_t[]){2, 6}));
    CHECK(out && out->ndim == 4 && out->shape[0] == 2 && out->shape[1] == 1 && out->shape[2] == 8 && out->shape[3] == 8,
          "generator output shape");
    for (i = 0; out && i < out->n; i++) if (!(out->data[i] >= 0)) ok = 0;
    CHECK(ok, "ReLU output is non-negative");
    /* gradient of sum(out^2) by central differences for a few parameters of every tensor */
    loss = lss_op_sum(g, lss_op_mul(g, out, out));
    lss_store_zero_grad(st);
    CHECK_OK(lss_backward(g, loss));
    for (i = 0; i < lss_store_ntensors(st); i++) {
        lss_tensor *t = lss_store_tensor(st, i);
        int64_t q = (t->n * 7 / 13) % t->n;
        double f0 = t->data[q], lp, lm, h = 1e-2 * (fabs(f0) > 0.1 ? fabs(f0) : 0.1), fd;
        lss_graph *g3 = NULL;
        lss_graph_create(&g3);
        lss_graph_set_training(g3, 0);
        t->data[q] = (float)(f0 + h);
        out = lss_convgen_forward(g3, &gen, lss_view(g3, z, 2, (int64_t[]){2, 6}));
        lp = lss_op_sum(g3, lss_op_mul(g3, out, out))->data[0];
        lss_graph_reset(g3);
        t->data[q] = (float)(f0 - h);
        out = lss_convgen_forward(g3, &gen, lss_view(g3, z, 2, (int64_t[]){2, 6}));
        lm = lss_op_sum(g3, lss_op_mul(g3, out, out))->data[0];
        t->data[q] = (float)f0;
        fd = (lp - lm) / (2 * h);
        CHECK_CLOSE(t->grad[q], fd, 2e-2, 1e-3 * (1 + fabs(fd)), t->name);
        lss_graph_free(g3);
    }
    CHECK(lss_convgen_init(&gen, st, "bad", &(lss_convgen_opts){.nin = 0}) == LSS_ERR_ARG, "bad options refused");
    lss_graph_free(g); lss_store_free(st);
}

/* ------------------------------------------------------------------ several optimizer steps per loop step */
typedef struct { lss_store *sa, *sb; lss_optim *oa, *ob; } sub_model;
static int sub_step(void *u, int64_t t, double *loss) {
    sub_model *m = (sub_model *)u;
    int k, s;
    for (k = 0; k < 3; k++) {   /* the "critic": three steps towards 1 + t */
        float *w = lss_store_data(m->sa);
        lss_store_zero_grad(m->sa);
        lss_store_grad(m->sa)[0] = 2 * (w[0] - (float)(1 + t));
        if ((s = lss_optim_step(m->oa))) return s;
    }
    lss_store_zero_grad(m->sb);
    lss_store_grad(m->sb)[0] = 2 * (lss_store_data(m->sb)[0] - lss_store_data(m->sa)[0]);
    loss[0] = lss_store_data(m->sa)[0]; loss[1] = lss_store_data(m->sb)[0];
    return lss_optim_step(m->ob);
}
static void sub_run(int64_t steps, int resume, const char *dir, float *wa, float *wb, int64_t *ta) {
    sub_model m;
    lss_optim_opts oo;
    lss_train_net nets[2];
    lss_train_opts to;
    char pa[512], pb[512], pc[512];
    memset(&m, 0, sizeof m); memset(&oo, 0, sizeof oo); memset(nets, 0, sizeof nets); memset(&to, 0, sizeof to);
    lss_store_create(1, &m.sa); lss_store_create(2, &m.sb);
    lss_store_add(m.sa, "w", 1, (int64_t[]){1}, LSS_INIT_ZERO);
    lss_store_add(m.sb, "w", 1, (int64_t[]){1}, LSS_INIT_ZERO);
    oo.kind = LSS_OPT_RMSPROP; oo.lr = 0.05;
    lss_optim_create(m.sa, &oo, &m.oa); lss_optim_create(m.sb, &oo, &m.ob);
    snprintf(pa, sizeof pa, "%s/critic.ckpt", dir); snprintf(pb, sizeof pb, "%s/gen.ckpt", dir); snprintf(pc, sizeof pc, "%s/loss.csv", dir);
    nets[0].name = "critic"; nets[0].store = m.sa; nets[0].optim = m.oa; nets[0].ckpt_path = pa;
    nets[1].name = "gen"; nets[1].store = m.sb; nets[1].optim = m.ob; nets[1].ckpt_path = pb;
    to.substeps = (const int[]){3, 1}; to.steps = steps; to.ckpt_every = 2; to.eval_every = 2; to.loss_csv = pc; to.resume = resume; to.step = sub_step; to.user = &m;
    CHECK_OK(lss_train(nets, 2, &to, NULL));
    *wa = lss_store_data(m.sa)[0]; *wb = lss_store_data(m.sb)[0]; *ta = lss_optim_steps(m.oa);
    lss_optim_free(m.oa); lss_optim_free(m.ob); lss_store_free(m.sa); lss_store_free(m.sb);
}
static void test_train_substeps(void) {
    char d1[] = "build/test_cgan_XXXXXX", d2[] = "build/test_cgan_XXXXXX", p[600];
    float a1, b1, a2, b2;
    int64_t t1, t2;
    if (!mkdtemp(d1) || !mkdtemp(d2)) { CHECK(0, "mkdtemp under build/"); return; }
    sub_run(6, 0, d1, &a1, &b1, &t1);
    CHECK(t1 == 18, "critic optimizer took %lld steps (6 loop steps x 3)", (long long)t1);
    sub_run(4, 1, d2, &a2, &b2, &t2);      /* stopped at step 4, resumed to 6 */
    sub_run(6, 1, d2, &a2, &b2, &t2);
    CHECK(a1 == a2 && b1 == b2 && t2 == 18, "resume with substeps is exact (%.9g %.9g vs %.9g %.9g)", a1, b1, a2, b2);
    {   /* substeps that disagree with the step callback (3 critic steps) are an error, and so are negative ones */
        sub_model m;
        lss_optim_opts oo;
        lss_train_net nets[2];
        memset(&m, 0, sizeof m); memset(&oo, 0, sizeof oo); memset(nets, 0, sizeof nets);
        lss_store_create(1, &m.sa); lss_store_create(2, &m.sb);
        lss_store_add(m.sa, "w", 1, (int64_t[]){1}, LSS_INIT_ZERO);
        lss_store_add(m.sb, "w", 1, (int64_t[]){1}, LSS_INIT_ZERO);
        lss_optim_create(m.sa, &oo, &m.oa); lss_optim_create(m.sb, &oo, &m.ob);
        nets[0].name = "critic"; nets[0].store = m.sa; nets[0].optim = m.oa;
        nets[1].name = "gen"; nets[1].store = m.sb; nets[1].optim = m.ob;
        CHECK(lss_train(nets, 2, &(lss_train_opts){.steps = 2, .step = sub_step, .user = &m, .substeps = (const int[]){2, 1}}, NULL) ==
              LSS_ERR_STATE, "3 critic steps with substeps 2: %s", lss_last_error());
        lss_optim_free(m.oa); lss_optim_free(m.ob); lss_store_free(m.sa); lss_store_free(m.sb);
    }
    {
        lss_train_net nets[1];
        sub_model m;
        lss_optim_opts oo;
        memset(nets, 0, sizeof nets); memset(&oo, 0, sizeof oo);
        lss_store_create(1, &m.sa);
        lss_store_add(m.sa, "w", 1, (int64_t[]){1}, LSS_INIT_ZERO);
        lss_optim_create(m.sa, &oo, &m.oa);
        nets[0].store = m.sa; nets[0].optim = m.oa;
        CHECK(lss_train(nets, 1, &(lss_train_opts){.steps = 1, .step = sub_step, .substeps = (const int[]){-1}}, NULL) == LSS_ERR_ARG &&
              strstr(lss_last_error(), "substeps"), "negative substeps refused: %s", lss_last_error());
        lss_optim_free(m.oa); lss_store_free(m.sa);
    }
    snprintf(p, sizeof p, "rm -rf %s %s", d1, d2);
    if (system(p) != 0) CHECK(0, "cleanup");
}

/* ------------------------------------------------------------------ the paper's Table A1 */
static void test_paper_nets(void) {
    lss_cgan_opts o;
    lss_cgan m;
    lss_convnet_trace tr;
    lss_tensor *out, *x;
    static float map[128 * 128], z[128];
    float y[2] = {0.3f, 0.8f};
    /* critic d0..d4 outputs and d6..d8 widths of Table A1 */
    const int64_t conv[5][3] = {{32, 128, 128}, {64, 64, 64}, {128, 32, 32}, {256, 16, 16}, {512, 8, 8}}, dense[3] = {512, 256, 128};
    int ok = 1, i;
    memset(&o, 0, sizeof o);
    CHECK_OK(lss_cgan_opts_paper(128, 4, 32, 512, 128, &o));
    o.lo[0] = 0.1, o.hi[0] = 0.5, o.lo[1] = 0.4, o.hi[1] = 1.4, o.batch = 1;
    CHECK_OK(lss_cgan_init(&m, &o));
    CHECK(m.critic.nflat == 32768 && m.critic.dw[0]->shape[0] == 32770, "d5: 8 x 8 x 512 flattened + 2 parameters = %d + 2",
          m.critic.nflat);
    for (i = 0; i < 128 * 128; i++) map[i] = (float)(i % 13) / 13.0f;
    for (i = 0; i < 128; i++) z[i] = (float)(i % 7) - 3.0f;
    out = lss_convnet_forward(m.g, &m.critic, lss_view(m.g, map, 4, (int64_t[]){1, 1, 128, 128}), lss_view(m.g, y, 2, (int64_t[]){1, 2}), &tr);
    CHECK(out && out->n == 1 && tr.npre == 8, "critic output and 8 LeakyReLU layers");
    for (i = 0; i < 5 && out; i++)
        if (tr.pre[i]->shape[1] != conv[i][0] || tr.pre[i]->shape[2] != conv[i][1] || tr.pre[i]->shape[3] != conv[i][2]) ok = 0;
    for (i = 0; i < 3 && out; i++) if (tr.pre[5 + i]->shape[1] != dense[i]) ok = 0;
    CHECK(ok, "critic layer sizes of Table A1 (d0-d4, d6-d8)");
    CHECK(m.gen.dw[2]->shape[1] == 32768 && m.gen.dw[0]->shape[1] == 256 && m.gen.dw[1]->shape[1] == 512, "generator g0-g2: 256, 512, 32768");
    x = lss_convgen_forward(m.g, &m.gen, lss_view(m.g, z, 2, (int64_t[]){1, 128}));
    CHECK(x && x->shape[1] == 1 && x->shape[2] == 128 && x->shape[3] == 128, "generator output 128 x 128 x 1 (g8)");
    CHECK(m.gen.uw[0]->shape[0] == 512 && m.gen.uw[0]->shape[1] == 256 && m.gen.uw[0]->shape[2] == 3 && m.gen.uw[3]->shape[1] == 32 &&
          m.gen.uw[3]->shape[2] == 5 && m.gen.uw[4]->shape[2] == 7, "g4 3 x 3 to 256, g7 5 x 5 to 32, g8 7 x 7");
    CHECK_ERR(lss_cgan_opts_paper(100, 4, 32, 512, 128, &o), LSS_ERR_ARG);
    lss_cgan_free(&m);
}

/* ------------------------------------------------------------------ data-parallel shards */
/* a batch of 6 smooth random maps with their parameters */
static int shard_draw(void *u, int64_t t, int k, float *maps, float *y) {
    lss_rng r;
    int b, i;
    (void)u;
    lss_rng_init(&r, 5, lss_stream(LSS_STREAM_BATCH, (uint64_t)t, (uint32_t)k));
    for (b = 0; b < 6; b++) {
        double a = lss_rng_uniform(&r);
        y[2 * b] = (float)(0.1 + 0.4 * a), y[2 * b + 1] = (float)(0.4 + lss_rng_uniform(&r));
        for (i = 0; i < 16 * 16; i++) maps[b * 256 + i] = (float)(0.5 + a * sin(0.3 * i) + 0.1 * lss_rng_normal(&r));
    }
    return LSS_OK;
}
/* One iteration with the batch in 1, 2, 3 and 4 shards (sizes 6; 3 3; 2 2 2; 2 2 1 1) from the same weights, plain SGD:
   the critic and generator parameters after it agree to float rounding (a shard weighted by anything but its share
   of the batch, or a penalty not averaged per shard, moves them by the learning rate times the gradient) and the
   statistics of the step agree too. */
static void test_shards(void) {
    lss_cgan_opts o;
    lss_cgan m[4];
    double st[4][5], dmax = 0, gmax = 0, smax = 0;
    int k, i;
    memset(&o, 0, sizeof o);
    CHECK_OK(lss_cgan_opts_paper(16, 2, 4, 32, 8, &o));
    o.lo[0] = 0.1, o.hi[0] = 0.5, o.lo[1] = 0.4, o.hi[1] = 1.4, o.batch = 6, o.n_critic = 1, o.seed = 3;
    o.opt_critic.kind = o.opt_gen.kind = LSS_OPT_SGD, o.opt_critic.lr = o.opt_gen.lr = 0.05;
    for (k = 0; k < 4; k++) {
        o.shards = k ? k + 1 : 0;
        CHECK_OK(lss_cgan_init(&m[k], &o));
        CHECK_OK(lss_cgan_step(&m[k], 0, shard_draw, NULL, st[k]));
    }
    for (k = 1; k < 4; k++) {
        const float *c0 = lss_store_data(m[0].sc), *c1 = lss_store_data(m[k].sc), *g0 = lss_store_data(m[0].sg), *g1 = lss_store_data(m[k].sg);
        const float *s0 = lss_store_data(m[0].sc);
        for (i = 0; i < lss_store_size(m[0].sc); i++) dmax = fmax(dmax, fabs((double)c1[i] - c0[i]) / (1e-3 + fabs((double)s0[i])));
        for (i = 0; i < lss_store_size(m[0].sg); i++) gmax = fmax(gmax, fabs((double)g1[i] - g0[i]) / (1e-3 + fabs((double)g0[i])));
        for (i = 0; i < 5; i++) smax = fmax(smax, fabs(st[k][i] - st[0][i]) / (1e-6 + fabs(st[0][i])));
    }
    printf("  shards 2-4 against one: critic parameters %.2g, generator %.2g, step statistics %.2g (relative)\n", dmax, gmax, smax);
    CHECK(dmax < 1e-4 && gmax < 1e-4 && smax < 1e-4, "sharded steps equal the unsharded one to rounding (%.2g, %.2g, %.2g)", dmax, gmax, smax);
    {   /* the step moved the critic: the comparison can fail */
        lss_cgan f;
        double mv = 0;
        o.shards = 0;
        CHECK_OK(lss_cgan_init(&f, &o));
        for (i = 0; i < lss_store_size(f.sc); i++) mv = fmax(mv, fabs((double)lss_store_data(f.sc)[i] - lss_store_data(m[0].sc)[i]));
        CHECK(mv > 1e-3, "one SGD step moves the critic by %.2g", mv);
        lss_cgan_free(&f);
    }
    for (k = 0; k < 4; k++) lss_cgan_free(&m[k]);
    o.shards = 7;
    CHECK_ERR(lss_cgan_init(&m[0], &o), LSS_ERR_ARG); /* more shards than maps */
}

/* ------------------------------------------------------------------ RMSProp in TensorFlow 1's form */
static void test_rmsprop_tf(void) {
    lss_store *st = NULL;
    lss_optim *o = NULL;
    lss_optim_opts oo;
    lss_tensor *w;
    const double g[3][2] = {{0.5, -2.0}, {0.1, 3.0}, {-1.0, 0.0}}, lr = 0.01, rho = 0.9, mu = 0.5, eps = 1e-10;
    double ms[2] = {1, 1}, mom[2] = {0, 0}, ref[2] = {0.3, -0.7};
    int t, i;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_RMSPROP; oo.rms_tf = 1; oo.lr = lr; oo.rho = rho; oo.momentum = mu;
    CHECK_OK(lss_store_create(1, &st));
    w = lss_store_add(st, "w", 1, (int64_t[]){2}, LSS_INIT_ZERO);
    w->data[0] = 0.3f; w->data[1] = -0.7f;
    CHECK_OK(lss_optim_create(st, &oo, &o));
    for (t = 0; t < 3; t++) {   /* tf.raw_ops.ApplyRMSProp: ms = rho ms + (1 - rho) g^2; mom = mu mom + lr g / sqrt(ms + eps); w -= mom */
        lss_store_grad(st)[0] = (float)g[t][0]; lss_store_grad(st)[1] = (float)g[t][1];
        CHECK_OK(lss_optim_step(o));
        for (i = 0; i < 2; i++) {
            ms[i] = rho * ms[i] + (1 - rho) * g[t][i] * g[t][i];
            mom[i] = mu * mom[i] + lr * g[t][i] / sqrt(ms[i] + eps);
            ref[i] -= mom[i];
        }
    }
    CHECK_REL(w->data[0], ref[0], 1e-6, "TensorFlow RMSProp, parameter 0 after 3 steps (accumulator starts at 1)");
    CHECK_REL(w->data[1], ref[1], 1e-6, "TensorFlow RMSProp, parameter 1 after 3 steps");
    lss_optim_free(o); lss_store_free(st);
}

int main(void) {
    RUN(test_rmsprop_tf);
    RUN(test_shards);
    RUN(test_paper_nets);
    RUN(test_gp_gradient);
    RUN(test_latent);
    RUN(test_generator);
    RUN(test_train_substeps);
    LSS_TEST_END();
}
