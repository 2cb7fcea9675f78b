/* test_nn_fault.c - allocation-failure injection for lss_nn.h. LSS_MALLOC/LSS_REALLOC/LSS_FREE are
 * replaced by an allocator that fails on the N-th call; a scenario (store and graph creation, a
 * training step with convolutions, batch norm, a residual block, Adam with percentile clipping,
 * checkpoint save and load, SGEMM, then lss_train with a loss CSV, keep_best, checkpoints and a
 * resume) is run for N = 1, 2, ... until it completes. Every run must
 * either complete or return an error status with a message, and leave no allocation behind (a live
 * counter here; ASan's leak check as well under make test-asan). */
#include <stdlib.h>
#include <stddef.h>
static long fi_calls = 0, fi_fail_at = -1, fi_live = 0, fi_failed = 0;
static void *fi_malloc(size_t n) {
    void *p;
    if (fi_fail_at >= 0 && ++fi_calls == fi_fail_at) { fi_failed = 1; return NULL; }
    p = malloc(n ? n : 1);
    if (p) fi_live++;
    return p;
}
static void *fi_realloc(void *q, size_t n) {
    void *p;
    if (fi_fail_at >= 0 && ++fi_calls == fi_fail_at) { fi_failed = 1; return NULL; }
    p = realloc(q, n ? n : 1);
    if (p && !q) fi_live++;
    return p;
}
static void fi_free(void *p) {
    if (p) fi_live--;
    free(p);
}
#define LSS_MALLOC(n) fi_malloc(n)
#define LSS_REALLOC(p, n) fi_realloc(p, n)
#define LSS_FREE(p) fi_free(p)
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include "tests/lss_test.h"

static const char *CK = "build/test_nn_fault.ckpt";

/* Returns LSS_OK or the first failure; always releases what it created. */
static int scenario(int save) {
    lss_store *st = NULL;
    lss_graph *g = NULL;
    lss_optim *opt = NULL;
    lss_resblock rb;
    lss_mlp head;
    lss_optim_opts oo;
    int s, sizes[3] = {8 * 4 * 4, 8, 3};
    float x[4 * 2 * 8 * 8], y[4 * 3], A[64 * 64], C[64 * 64];
    for (int k = 0; k < 4 * 2 * 64; k++) x[k] = (float)((k * 37) % 11) / 11.0f - 0.5f;
    for (int k = 0; k < 12; k++) y[k] = (float)k / 12.0f;
    for (int k = 0; k < 64 * 64; k++) A[k] = (float)(k % 7);
    {
        lss_tensor *t;
        if ((s = lss_tensor_create(3, (int64_t[]){2, 3, 4}, &t))) goto done;
        lss_tensor_free(t);
    }
    if ((s = lss_store_create(3, &st))) goto done;
    lss_tensor *w = lss_store_add(st, "c.w", 4, (int64_t[]){8, 2, 3, 3}, LSS_INIT_HE);
    lss_tensor *bg = lss_store_add(st, "bn.g", 1, (int64_t[]){8}, LSS_INIT_ONE);
    lss_tensor *bb = lss_store_add(st, "bn.b", 1, (int64_t[]){8}, LSS_INIT_ZERO);
    lss_tensor *bm = lss_store_buffer(st, "bn.m", 1, (int64_t[]){8}, LSS_INIT_ZERO, 0.0f);
    lss_tensor *bv = lss_store_buffer(st, "bn.v", 1, (int64_t[]){8}, LSS_INIT_ZERO, 1.0f);
    if ((s = lss_store_status(st))) goto done;
    if ((s = lss_resblock_init(&rb, st, "rb", 8, 8, 3, 2, 1, 1, LSS_ACT_RELU))) goto done;
    if ((s = lss_mlp_init(&head, st, "head", 2, sizes, LSS_ACT_LEAKY))) goto done;
    memset(&oo, 0, sizeof oo);
    oo.clip = LSS_CLIP_PERCENTILE; oo.clip_history = 8;
    if ((s = lss_optim_create(st, &oo, &opt))) goto done;
    if ((s = lss_graph_create(&g))) goto done;
    for (int step = 0; step < 2; step++) {
        lss_graph_reset(g);
        lss_tensor *h = lss_op_conv2d(g, lss_view(g, x, 4, (int64_t[]){4, 2, 8, 8}), w, NULL, 1, 1);
        h = lss_op_relu(g, lss_op_batchnorm(g, h, bg, bb, bm, bv, 0, 0));
        h = lss_resblock_forward(g, &rb, h);
        h = lss_op_upsample2d(g, lss_op_avgpool2d(g, h, 2, 2), 2);
        h = lss_mlp_forward(g, &head, h);
        lss_tensor *l = lss_op_gauss_nll(g, lss_op_concat(g, h, lss_op_concat(g, h, lss_op_scale(g, h, 0.5f), 1), 1), lss_view(g, y, 2, (int64_t[]){4, 3}));
        lss_store_zero_grad(st);
        if ((s = lss_backward(g, l))) goto done;
        if ((s = lss_optim_step(opt))) goto done;
    }
    /* inference: evaluation-mode layers use the graph's scratch buffer */
    lss_graph_reset(g);
    lss_graph_set_training(g, 0);
    {
        lss_tensor *h = lss_op_conv2d(g, lss_view(g, x, 4, (int64_t[]){4, 2, 8, 8}), w, NULL, 1, 1);
        h = lss_resblock_forward(g, &rb, lss_op_relu(g, lss_op_batchnorm(g, h, bg, bb, bm, bv, 0, 0)));
        if (!h) { s = lss_graph_status(g); goto done; }
    }
    if (save && (s = lss_ckpt_save(CK, st, opt))) goto done;
    if ((s = lss_ckpt_load(CK, st, opt))) goto done;
    s = lss_sgemm(0, 1, 64, 64, 64, 1.0f, A, 64, A, 64, 0.0f, C, 64);
done:
    lss_graph_free(g);
    lss_optim_free(opt);
    lss_store_free(st);
    return s;
}

/* ---- lss_train: a tiny regression trained 4 steps, then resumed to 6 */
typedef struct {
    lss_store *st;
    lss_optim *opt;
    lss_graph *g;
    lss_mlp m;
} ftr;
static int ftr_step(void *u, int64_t t, double *loss) {
    ftr *f = (ftr *)u;
    float x[8 * 2], y[8];
    int s;
    for (int k = 0; k < 8; k++) {
        x[2 * k] = (float)((k * 5 + t * 3) % 7) / 7.0f; x[2 * k + 1] = (float)((k * 3 + t) % 5) / 5.0f;
        y[k] = x[2 * k] - 2.0f * x[2 * k + 1];
    }
    lss_graph_reset(f->g);
    lss_tensor *l = lss_op_mse(f->g, lss_mlp_forward(f->g, &f->m, lss_view(f->g, x, 2, (int64_t[]){8, 2})),
                               lss_view(f->g, y, 2, (int64_t[]){8, 1}));
    lss_store_zero_grad(f->st);
    if ((s = lss_backward(f->g, l))) return s;
    loss[0] = l->data[0];
    return lss_optim_step(f->opt);
}
static int ftr_eval(void *u, double *loss) {
    ftr *f = (ftr *)u;
    loss[0] = 1.0 / (1.0 + (double)((lss_optim_steps(f->opt) * 7) % 5));
    return LSS_OK;
}
static int train_scenario(void) {
    const char *csv = "build/test_nn_fault_train.csv", *ck = "build/test_nn_fault_train.ckpt";
    ftr f;
    int s, sizes[3] = {2, 4, 1};
    memset(&f, 0, sizeof f);
    remove(csv); remove(ck);
    if ((s = lss_store_create(5, &f.st))) goto done;
    if ((s = lss_mlp_init(&f.m, f.st, "m", 2, sizes, LSS_ACT_TANH))) goto done;
    if ((s = lss_optim_create(f.st, NULL, &f.opt))) goto done;
    if ((s = lss_graph_create(&f.g))) goto done;
    {
        lss_train_net net = {"m", NULL, NULL, NULL};
        lss_train_opts o;
        net.store = f.st; net.optim = f.opt; net.ckpt_path = ck;
        memset(&o, 0, sizeof o);
        o.steps = 4; o.eval_every = 2; o.ckpt_every = 3; o.loss_csv = csv; o.resume = 1; o.keep_best = 1;
        o.patience = 5; o.step = ftr_step; o.eval = ftr_eval; o.user = &f;
        if ((s = lss_train(&net, 1, &o, NULL))) goto done;
        o.steps = 6;
        s = lss_train(&net, 1, &o, NULL);
    }
done:
    lss_graph_free(f.g);
    lss_optim_free(f.opt);
    lss_store_free(f.st);
    remove(csv); remove(ck);
    return s;
}

static void test_fault(void) {
    int completed = 0, failures = 0, silent = 0, leaks = 0, nomsg = 0;
    long n;
    fi_fail_at = -1;
    CHECK_OK(scenario(1)); /* writes the checkpoint the runs below load */
    CHECK_OK(train_scenario());
    CHECK(fi_live == 0, "no allocation left after a clean run (%ld live)", fi_live);
    for (n = 1; n < 2000; n++) {
        int s;
        fi_calls = 0; fi_fail_at = n; fi_failed = 0; fi_live = 0;
        lss_clearerr();
        s = scenario(n % 2);
        if (s == LSS_OK) s = train_scenario();
        if (fi_live != 0) { leaks++; printf("  failing allocation %ld: %ld allocations leaked (status %d)\n", n, fi_live, s); }
        if (!fi_failed) { completed = s == LSS_OK; break; }
        if (s == LSS_OK) silent++; /* a failure the library absorbed (graph pool merge): result still valid */
        else {
            failures++;
            if (!lss_last_error()[0]) { nomsg++; printf("  failing allocation %ld: status %d without a message\n", n, s); }
        }
    }
    fi_fail_at = -1;
    printf("  %ld allocation points exercised: %d errors returned, %d absorbed\n", n - 1, failures, silent);
    CHECK(completed, "scenario completes once no allocation fails");
    CHECK(failures > 20, "allocation failures were exercised (%d)", failures);
    CHECK(leaks == 0, "no leak after any failing allocation (%d leaking runs)", leaks);
    CHECK(nomsg == 0, "every error has a message (%d without)", nomsg);
    remove(CK);
}

int main(void) {
    RUN(test_fault);
    LSS_TEST_END();
}
