/* test_gemm_kernels.c - the SGEMM micro-kernels of lss_nn.h, each forced in turn (lss_sgemm_kernel):
 * portable C, AVX2 + FMA and AVX-512F, on every level this CPU supports.
 *   - lss_sgemm against a double-precision loop for shapes that hit full 12 x 32 tiles, lone 6 x 16
 *     panels and edge tiles, both transpositions, alpha and beta;
 *   - AVX2 and AVX-512 give bitwise the same C (the same fused multiply-adds in the same order), and so
 *     do a convolution's forward pass and its three gradients (the packed-panel GEMM modes);
 *   - each level gives bitwise the same C with 1 and 2 threads;
 *   - requests above the CPU's level are capped, LSS_SGEMM_KERNEL caps the first choice;
 *   - a convolution whose im2col columns are run in chunks of samples equals the one-piece run (forward and input
 *     gradient bitwise, weight gradient to rounding).
 * The Makefile compiles this file for the baseline x86-64 instruction set (no AVX): the vector kernels
 * still run, chosen at run time, which is what a binary built once for many machines does. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include "tests/lss_test.h"
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void fill(float *x, int64_t n, uint64_t seed) {
    lss_rng r;
    lss_rng_init(&r, seed, 0);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(2 * lss_rng_uniform(&r) - 1);
}

/* C = 0.5 op(A) op(B) + beta C at level lv; returns the max |error| against double precision */
static double gemm_err(int lv, int ta, int tb, int64_t M, int64_t N, int64_t K, float beta, const float *A,
                       const float *B, float *C) {
    double md = 0;
    for (int64_t i = 0; i < M * N; i++) C[i] = (float)(i % 7) * 0.25f;
    lss_sgemm_kernel(lv);
    CHECK_OK(lss_sgemm(ta, tb, M, N, K, 0.5f, A, ta ? M : K, B, tb ? K : N, beta, C, N));
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            md = fmax(md, fabs(0.5 * acc + beta * ((i * N + j) % 7) * 0.25 - C[i * N + j]));
        }
    return md;
}

static void test_levels(int cpu) {
    /* 12 x 32 tiles with and without edges; 24 x 64 (pairs only); N = 48 (a lone panel after a pair);
       M = 150 (a partial row block); K = 600 (three K blocks, beta applied once); tiny shapes */
    int64_t sizes[][3] = {{1, 1, 1}, {12, 32, 7}, {24, 64, 256}, {13, 33, 300}, {30, 48, 257},
                          {150, 100, 600}, {6, 16, 5}, {5, 200, 40}, {290, 530, 130}};
    int ns = (int)(sizeof sizes / sizeof sizes[0]);
    for (int s = 0; s < ns; s++) {
        int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C[3] = {malloc(sizeof(float) * M * N), malloc(sizeof(float) * M * N), malloc(sizeof(float) * M * N)};
        fill(A, M * K, 11 + s);
        fill(B, K * N, 101 + s);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int bi = 0; bi < 2; bi++) {
                    float beta = bi ? 2.0f : 0.0f;
                    for (int lv = 0; lv <= cpu; lv++) {
                        double md = gemm_err(lv, ta, tb, M, N, K, beta, A, B, C[lv]);
                        /* float accumulation over K terms of size <= 1: error ~ sqrt(K) 6e-8 */
                        CHECK(md < 1e-5 * sqrt((double)K) + 1e-6, "kernel %s, %lldx%lldx%lld ta %d tb %d beta %g: max |diff| %.3g",
                              lss_sgemm_kernel_name(lv), (long long)M, (long long)N, (long long)K, ta, tb, beta, md);
                    }
                    if (cpu >= 2)
                        CHECK(!memcmp(C[1], C[2], sizeof(float) * M * N),
                              "AVX2 and AVX-512 bitwise equal (%lldx%lldx%lld ta %d tb %d beta %g)", (long long)M,
                              (long long)N, (long long)K, ta, tb, beta);
                }
        free(A); free(B); free(C[0]); free(C[1]); free(C[2]);
    }
}

/* each level: the same C with 1 and 2 threads, at a size where the work is shared */
static void test_threads(int cpu) {
#ifdef _OPENMP
    int64_t M = 150, N = 260, K = 300;
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N), *C1 = malloc(sizeof(float) * M * N),
          *C2 = malloc(sizeof(float) * M * N);
    int old = omp_get_max_threads();
    fill(A, M * K, 3);
    fill(B, K * N, 4);
    for (int lv = 0; lv <= cpu; lv++) {
        lss_sgemm_kernel(lv);
        omp_set_num_threads(1);
        lss_sgemm(0, 1, M, N, K, 1, A, K, B, K, 0, C1, N);
        omp_set_num_threads(2);
        lss_sgemm(0, 1, M, N, K, 1, A, K, B, K, 0, C2, N);
        CHECK(!memcmp(C1, C2, sizeof(float) * M * N), "kernel %s: bitwise equal with 1 and 2 threads",
              lss_sgemm_kernel_name(lv));
    }
    omp_set_num_threads(old);
    free(A); free(B); free(C1); free(C2);
#else
    (void)cpu;
    SKIP("built without OpenMP: one thread only");
#endif
}

/* a strided convolution (K = 12 x 5 x 5 = 300: two K blocks) and a transposed one, forward and backward,
   at level lv; out: y, dx, dw, db
   of both layers, concatenated */
static int64_t g_npar = 0; /* trainable parameters of conv_run's store */
static int64_t conv_run(int lv, float *out) {
    lss_store *st = NULL;
    lss_graph *g = NULL;
    int64_t xs[4] = {3, 12, 19, 17}, ws[4] = {40, 12, 5, 5}, bs[1] = {40}, ts[4] = {40, 7, 4, 4}, tb[1] = {7}, n = 0;
    int64_t x2s[4] = {3, 12, 4, 4}, w2s[4] = {20, 12, 5, 5}, b2s[1] = {20};
    lss_tensor *w, *b, *wt, *bt, *w2, *b2, *x, *x2, *y, *z, *y2, *loss;
    float *dx, *dx2;
    lss_sgemm_kernel(lv);
    if (lss_store_create(7, &st) || lss_graph_create(&g)) return -1;
    w = lss_store_add(st, "w", 4, ws, LSS_INIT_HE);
    b = lss_store_add(st, "b", 1, bs, LSS_INIT_HE);
    wt = lss_store_add(st, "wt", 4, ts, LSS_INIT_HE);
    bt = lss_store_add(st, "bt", 1, tb, LSS_INIT_HE);
    w2 = lss_store_add(st, "w2", 4, w2s, LSS_INIT_HE);
    b2 = lss_store_add(st, "b2", 1, b2s, LSS_INIT_HE);
    x = lss_tensor_new(g, 4, xs);
    x2 = lss_tensor_new(g, 4, x2s);
    dx = malloc(sizeof(float) * x->n);
    dx2 = malloc(sizeof(float) * x2->n);
    if (!w || !b || !wt || !bt || !w2 || !b2 || !x || !x2 || !dx || !dx2) return -1;
    fill(x->data, x->n, 5);
    fill(x2->data, x2->n, 6);
    x->grad = dx;
    x2->grad = dx2;
    memset(dx, 0, sizeof(float) * x->n);
    memset(dx2, 0, sizeof(float) * x2->n);
    y = lss_op_conv2d(g, x, w, b, 2, 2);
    z = lss_op_conv2d_transpose(g, y, wt, bt, 2, 1, 1);
    y2 = lss_op_conv2d(g, x2, w2, b2, 1, 2); /* 4 x 4 planes, 5 x 5 kernel: the 16-pixel im2col/col2im path */
    loss = lss_op_add(g, lss_op_mean(g, lss_op_mul(g, z, z)), lss_op_mean(g, lss_op_mul(g, y2, y2)));
    lss_store_zero_grad(st);
    if (!loss || lss_backward(g, loss)) return -1;
    memcpy(out + n, z->data, sizeof(float) * z->n); n += z->n;
    memcpy(out + n, y2->data, sizeof(float) * y2->n); n += y2->n;
    memcpy(out + n, dx, sizeof(float) * x->n); n += x->n;
    memcpy(out + n, dx2, sizeof(float) * x2->n); n += x2->n;
    g_npar = lss_store_nparams(st);
    memcpy(out + n, lss_store_grad(st), sizeof(float) * g_npar); n += g_npar;
    free(dx);
    free(dx2);
    lss_graph_free(g);
    lss_store_free(st);
    return n;
}

static void test_conv(int cpu) {
    float *o1, *o2;
    int64_t n1, n2;
    if (cpu < 2) {
        SKIP("this CPU has no AVX-512: AVX2 against AVX-512 not compared");
        return;
    }
    o1 = malloc(sizeof(float) * 200000);
    o2 = malloc(sizeof(float) * 200000);
    n1 = conv_run(1, o1);
    n2 = conv_run(2, o2);
    CHECK(n1 > 0 && n1 == n2 && n1 < 200000, "convolution runs (%lld, %lld floats)", (long long)n1, (long long)n2);
    if (n1 > 0 && n1 == n2) {
        double s = 0;
        for (int64_t i = 0; i < n1; i++) s += fabs(o1[i]);
        CHECK(s > 0 && isfinite(s), "convolution outputs non-trivial (sum |.| %g)", s);
        CHECK(!memcmp(o1, o2, sizeof(float) * n1),
              "convolution forward and gradients bitwise equal with the AVX2 and AVX-512 kernels");
    }
    free(o1); free(o2);
}

/* a convolution run chunk by chunk (im2col of a few samples at a time) against the same run in one piece: the
   forward pass and the input gradient bitwise equal (each output element sees the same operations), the weight
   gradient within rounding (its sum over samples is split into chunks) */
static void test_chunks(void) {
    float *o1 = malloc(sizeof(float) * 200000), *o2 = malloc(sizeof(float) * 200000);
    /* conv_run's output: z, y2, dx, dx2, then the store's gradients (w 40 x 12 x 5 x 5 first) */
    int64_t n1, n2, npar;
    int cpu = lss_sgemm_kernel(9);
    n1 = conv_run(cpu, o1);
    npar = g_npar;
    lss__col_max = 300 * 100; /* K = 300, P = 90: one sample per chunk */
    CHECK(lss__conv_chunk(3, 300, 90) == 1 && lss__conv_chunk(3, 300, 40) == 2 && lss__conv_chunk(1, 300, 1000) == 1,
          "chunk sizes (%lld, %lld)", (long long)lss__conv_chunk(3, 300, 90), (long long)lss__conv_chunk(3, 300, 40));
    n2 = conv_run(cpu, o2);
    lss__col_max = LSS__COL_MAX;
    CHECK(n1 == n2 && n1 > npar && n1 < 200000, "both runs (%lld, %lld floats)", (long long)n1, (long long)n2);
    if (n1 == n2 && n1 > npar && n1 < 200000) {
        double md = 0, mx = 0;
        CHECK(!memcmp(o1, o2, sizeof(float) * (size_t)(n1 - npar)), "chunked convolution: output and input gradient bitwise equal");
        for (int64_t i = n1 - npar; i < n1; i++) {
            md = fmax(md, fabs((double)o1[i] - o2[i]));
            mx = fmax(mx, fabs((double)o1[i]));
        }
        CHECK(md <= 1e-5 * mx && mx > 0, "chunked convolution: parameter gradients within rounding (max |diff| %.3g of %.3g)",
              md, mx);
        CHECK(memcmp(o1 + n1 - npar, o2 + n1 - npar, sizeof(float) * 12000) != 0,
              "the chunked run did run in chunks (its weight gradient's rounding differs)");
    }
    free(o1); free(o2);
}

/* lss_op_conv2d_relu against lss_op_relu(lss_op_conv2d(...)): output, input gradient and parameter gradients bitwise
   equal, with and without im2col chunks, strides 1 and 2, with and without bias; the graph holds less */
static int conv_relu_run(int fused, int stride, int bias, float *out, int64_t *nout, size_t *mem) {
    lss_store *st = NULL;
    lss_graph *g = NULL;
    int64_t xs[4] = {4, 5, 9, 8}, ws[4] = {6, 5, 3, 3}, bs[1] = {6}, n = 0;
    lss_tensor *w, *b = NULL, *x, *y, *loss;
    float *dx;
    if (lss_store_create(3, &st) || lss_graph_create(&g)) return 1;
    w = lss_store_add(st, "w", 4, ws, LSS_INIT_HE);
    if (bias) b = lss_store_add(st, "b", 1, bs, LSS_INIT_HE);
    x = lss_tensor_new(g, 4, xs);
    dx = calloc((size_t)x->n, sizeof(float));
    if (!w || (bias && !b) || !x || !dx) return 1;
    fill(x->data, x->n, 9);
    if (bias) fill(b->data, b->n, 10); /* non-zero biases: some outputs clipped by the ReLU */
    x->grad = dx;
    y = fused ? lss_op_conv2d_relu(g, x, w, b, stride, 1) : lss_op_relu(g, lss_op_conv2d(g, x, w, b, stride, 1));
    /* a loss whose gradient is not uniform, with exact zeros where y is 0 */
    loss = lss_op_sum(g, lss_op_mul(g, y, lss_op_add_scalar(g, y, 0.5f)));
    lss_store_zero_grad(st);
    if (!loss || lss_backward(g, loss)) return 1;
    memcpy(out + n, y->data, sizeof(float) * y->n); n += y->n;
    memcpy(out + n, dx, sizeof(float) * x->n); n += x->n;
    memcpy(out + n, lss_store_grad(st), sizeof(float) * lss_store_nparams(st)); n += lss_store_nparams(st);
    *nout = n;
    *mem = lss_graph_memory(g);
    free(dx);
    lss_graph_free(g);
    lss_store_free(st);
    return 0;
}
static void test_conv_relu(void) {
    float *o1 = malloc(sizeof(float) * 20000), *o2 = malloc(sizeof(float) * 20000);
    for (int ch = 0; ch < 2; ch++)
        for (int stride = 1; stride <= 2; stride++)
            for (int bias = 0; bias < 2; bias++) {
                int64_t n1 = 0, n2 = 0, zeros = 0;
                size_t m1 = 0, m2 = 0;
                lss__col_max = ch ? 45 * 40 : LSS__COL_MAX; /* K = 45, P = 72 or 20: chunks of 1 or 2 samples */
                CHECK(!conv_relu_run(0, stride, bias, o1, &n1, &m1) && !conv_relu_run(1, stride, bias, o2, &n2, &m2),
                      "conv + relu runs (stride %d, bias %d)", stride, bias);
                for (int64_t i = 0; i < n1 / 4; i++) zeros += o1[i] == 0;
                CHECK(n1 == n2 && n1 > 0 && !memcmp(o1, o2, sizeof(float) * (size_t)n1),
                      "lss_op_conv2d_relu bitwise equal to relu(conv2d) (chunks %d, stride %d, bias %d; %lld clipped outputs)",
                      ch, stride, bias, (long long)zeros);
                CHECK(zeros > 0, "the ReLU clips some outputs (%lld)", (long long)zeros);
                CHECK(m2 <= m1, "the fused operation's graph holds no more (%zu against %zu bytes)", m2, m1);
            }
    lss__col_max = LSS__COL_MAX;
    free(o1); free(o2);
}

int main(void) {
    int cpu = lss_sgemm_kernel(9); /* the CPU's best */
    printf("SGEMM kernels on this CPU: up to %s\n", lss_sgemm_kernel_name(cpu));
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    CHECK(cpu == (__builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0),
          "the best kernel is the CPU's widest (%s)", lss_sgemm_kernel_name(cpu));
#endif
    CHECK(lss_sgemm_kernel(-1) == cpu, "a query does not change the level");
    CHECK(lss_sgemm_kernel(5) == cpu, "a request above the CPU's level is capped");
    CHECK(lss_sgemm_kernel(0) == 0 && lss_sgemm_kernel(-1) == 0, "the portable kernel can be forced");
    /* the environment caps the first choice (the level is chosen again: this file holds the implementation) */
    setenv("LSS_SGEMM_KERNEL", "avx2", 1);
    lss__gemm_lvl = -1;
    CHECK(lss_sgemm_kernel(-1) == (cpu < 1 ? cpu : 1), "LSS_SGEMM_KERNEL=avx2 caps the level");
    setenv("LSS_SGEMM_KERNEL", "c", 1);
    lss__gemm_lvl = -1;
    CHECK(lss_sgemm_kernel(-1) == 0, "LSS_SGEMM_KERNEL=c selects the portable kernel");
    unsetenv("LSS_SGEMM_KERNEL");
    lss__gemm_lvl = -1;
    CHECK(lss_sgemm_kernel(-1) == cpu, "without LSS_SGEMM_KERNEL the CPU's best");
    CHECK(!strcmp(lss_sgemm_kernel_name(0), "c") && !strcmp(lss_sgemm_kernel_name(1), "avx2") &&
          !strcmp(lss_sgemm_kernel_name(2), "avx512") && !strcmp(lss_sgemm_kernel_name(3), "unknown"),
          "kernel names");
    printf("# test_levels\n");
    test_levels(cpu);
    printf("# test_threads\n");
    test_threads(cpu);
    printf("# test_conv\n");
    test_conv(cpu);
    printf("# test_chunks\n");
    test_chunks();
    printf("# test_conv_relu\n");
    test_conv_relu();
    lss_sgemm_kernel(cpu);
    LSS_TEST_END();
}
