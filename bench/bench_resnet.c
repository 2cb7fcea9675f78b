/* bench_resnet.c - forward + backward time of the DeepLSS ResNet (lss_nn.h) against PyTorch on the
 * CPU, measured in the same run.
 *
 * Network at the paper's layer sizes: 4 convolutions 5x5 stride 2 to 128 channels, 10 residual
 * blocks of two 5x5 convolutions at 128 channels, flatten, one dense layer with 7 + 28 = 35
 * outputs (sized for the 64 x 64 input: 128 x 4 x 4 -> 35); a batch of 32 maps of 8 x 64 x 64;
 * loss lss_op_gauss_nll. One step = graph reset + forward + loss + backward (no optimizer update).
 * The PyTorch reference is bench/resnet_torch.py (the same network and loss), run through
 * /usr/bin/python3 (Debian's python3-torch) or python3, in one process per thread count with OMP_NUM_THREADS,
 * OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set to it (set_num_threads alone leaves the BLAS pool at its default),
 * once before and once after the lss
 * measurements (the best of both is kept, so a change of machine load between them matters less);
 * the ratio lss / PyTorch is printed for every thread count both ran. Each figure is the best of
 * the timed steps after a warm-up step; wall-clock time and process CPU time are both given (on a
 * shared machine the CPU time of the 1-thread runs is the steadier comparison). Memory: what the steps need
 * on top of what the process held before them (the high-water mark of the resident set minus the resident set
 * before the first step: the graph's pool and scratch, packing buffers, gradients of activations), for both.
 *
 * Usage: build/bench/bench_resnet [steps] [size]   (default 4 timed steps per thread count, 64 x 64 maps; another
 * size, e.g. 384 for the paper's 6 x 6 mosaics, runs lss alone with 2 threads)
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench/bench_torch.h"
#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char **argv) {
    const int B = 32, C = 8, np = 7, nout = np + np * (np + 1) / 2;
    int steps = argc > 1 ? atoi(argv[1]) : 4, S = argc > 2 ? atoi(argv[2]) : 64;
    double tl[3] = {0, 0, 0}, cl[3] = {0, 0, 0}, tt[3] = {1e30, 1e30, 1e30}, tc[3] = {1e30, 1e30, 1e30}, tm = 1e30;
    double mem0 = 0, mem1 = 0;
    lss_store *st;
    lss_graph *g;
    lss_resnet net;
    lss_resnet_opts ro;
    float *x, *y;
    lss_rng r;
    if (steps < 1) steps = 1;
    if (lss_store_create(1, &st) || lss_graph_create(&g)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
    memset(&ro, 0, sizeof ro);
    ro.in_ch = C; ro.in_h = S; ro.in_w = S; ro.nout = nout;
    if (lss_resnet_init(&net, st, "cnn", &ro)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
    x = malloc(sizeof(float) * B * C * S * S);
    y = malloc(sizeof(float) * B * np);
    lss_rng_init(&r, 5, 0);
    for (int i = 0; i < B * C * S * S; i++) x[i] = (float)lss_rng_normal(&r);
    for (int i = 0; i < B * np; i++) y[i] = (float)lss_rng_normal(&r);
    printf("DeepLSS ResNet: batch %d x %d x %d x %d, 4 conv + 10 residual blocks at 128 channels, %d outputs, "
           "%lld parameters\n", B, C, S, S, nout, (long long)lss_store_nparams(st));
    if (S <= 0 || S % 16 || S > 1024) { fprintf(stderr, "size must be a multiple of 16 up to 1024\n"); return 2; }
    if (S == 64) bench_torch_run("bench/resnet_torch.py", "", tt, tc, &tm); /* reference before ... */
    mem0 = bench_rss_mb();
    for (int t = S == 64 ? 1 : 2; t <= 2; t++) {
        double best = 1e30, bcpu = 1e30;
#ifdef _OPENMP
        omp_set_num_threads(t);
#endif
        lss_graph_free(g); /* the graph's packing buffers are sized for the thread count at creation */
        if (lss_graph_create(&g)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
        for (int s = 0; s <= steps; s++) {
            double t0 = lss_time_now(), c0 = (double)clock() / CLOCKS_PER_SEC;
            lss_graph_reset(g);
            lss_tensor *in = lss_view(g, x, 4, (int64_t[]){B, C, S, S});
            lss_tensor *l = lss_op_gauss_nll(g, lss_resnet_forward(g, &net, in), lss_view(g, y, 2, (int64_t[]){B, np}));
            lss_store_zero_grad(st);
            if (lss_backward(g, l)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
            double dt = lss_time_now() - t0, dc = (double)clock() / CLOCKS_PER_SEC - c0;
            if (s > 0 && dt < best) best = dt;
            if (s > 0 && dc < bcpu) bcpu = dc;
        }
        tl[t] = best; cl[t] = bcpu;
        printf("lss   threads %d forward+backward %.4f seconds (cpu %.4f s; graph pool %.0f MB)\n", t, best, bcpu,
               (double)lss_graph_memory(g) / 1048576.0);
        fflush(stdout);
    }
    mem1 = bench_peak_mb();
    if (S == 64) bench_torch_run("bench/resnet_torch.py", "", tt, tc, &tm); /* ... and after (best of both) */
    bench_torch_report(S == 64 ? 1 : 2, tl, cl, tt, tc, tm, mem0, mem1, S == 64 ? NULL : "not run at this size");
    free(x); free(y);
    lss_graph_free(g);
    lss_store_free(st);
    return 0;
}
