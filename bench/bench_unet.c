/* bench_unet.c - forward + backward time and memory of the mass-mapping U-net (lss_unet of lss_nn.h, the
 * noise-conditional score network of massmap train-prior) against PyTorch on the CPU, measured in the same run.
 *
 * Network as massmap builds it: 2 input channels (the map and its noise), noise-level conditioning, batch norm,
 * c0 = 32 base channels (so 64 and 128 at the lower scales), one output channel; a batch of 32 maps of 64 x 64;
 * loss: mean squared error against a fixed target. The PyTorch reference is bench/unet_torch.py (the same network:
 * the parameter counts are printed side by side), run through /usr/bin/python3 (Debian's python3-torch) in one
 * process per thread count with its OpenMP and BLAS pools limited to it, before and after the lss steps (best
 * kept). Each figure is the best of the timed steps after two warm-up steps (the graph's pool grows in the first and
 * becomes one block at the second reset); memory is the high-water mark of the
 * resident set minus the resident set before the steps, for both.
 *
 * Usage: build/bench/bench_unet [steps] [c0] [side] [batch]   (defaults 4, 32, 64, 32)
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include <stdlib.h>
#include <string.h>
#include "bench/bench_torch.h"
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 4, c0 = argc > 2 ? atoi(argv[2]) : 32, S = argc > 3 ? atoi(argv[3]) : 64;
    int B = argc > 4 ? atoi(argv[4]) : 32;
    double tl[3] = {0, 0, 0}, tt[3] = {1e30, 1e30, 1e30}, tm = 1e30, mem0, mem1;
    lss_store *st;
    lss_graph *g = NULL;
    lss_unet u;
    lss_unet_opts uo;
    float *x, *y, *sg;
    char args[64];
    lss_rng r;
    if (steps < 1 || c0 < 1 || c0 > 256 || S < 4 || S % 4 || S > 1024 || B < 1 || B > 1024) {
        fprintf(stderr, "usage: bench_unet [steps >= 1] [c0 1..256] [side, a multiple of 4] [batch]\n");
        return 2;
    }
    memset(&uo, 0, sizeof uo);
    uo.in_ch = 2; uo.out_ch = 1; uo.c0 = c0; uo.sigma_cond = 1;
    if (lss_store_create(1, &st) || lss_unet_init(&u, st, "unet", &uo)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
    x = malloc(sizeof(float) * (size_t)B * 2 * S * S);
    y = malloc(sizeof(float) * (size_t)B * S * S);
    sg = malloc(sizeof(float) * (size_t)B);
    lss_rng_init(&r, 5, 0);
    for (int64_t i = 0; i < (int64_t)B * 2 * S * S; i++) x[i] = (float)lss_rng_normal(&r);
    for (int64_t i = 0; i < (int64_t)B * S * S; i++) y[i] = (float)lss_rng_normal(&r);
    for (int i = 0; i < B; i++) sg[i] = (float)(0.1 + lss_rng_uniform(&r));
    printf("mass-mapping U-net: batch %d x 2 x %d x %d, c0 %d, noise conditioning, batch norm, %lld parameters\n", B, S, S,
           c0, (long long)lss_store_nparams(st));
    snprintf(args, sizeof args, "%d %d %d", c0, S, B);
    bench_torch_run("bench/unet_torch.py", args, tt, NULL, &tm);
    mem0 = bench_rss_mb();
    for (int t = 1; t <= 2; t++) {
        double best = 1e30;
#ifdef _OPENMP
        omp_set_num_threads(t);
#endif
        lss_graph_free(g);
        if (lss_graph_create(&g)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
        for (int s = 0; s < steps + 2; s++) { /* two warm-up steps: the pool is one block from the second reset */
            double t0 = lss_time_now(), dt;
            lss_tensor *out, *l;
            lss_graph_reset(g);
            out = lss_unet_forward(g, &u, lss_view(g, x, 4, (int64_t[]){B, 2, S, S}), lss_view(g, sg, 1, (int64_t[]){B}));
            l = lss_op_mse(g, out, lss_view(g, y, 4, (int64_t[]){B, 1, S, S}));
            lss_store_zero_grad(st);
            if (lss_backward(g, l)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
            dt = lss_time_now() - t0;
            if (s > 1 && dt < best) best = dt;
        }
        tl[t] = best;
        printf("lss   threads %d forward+backward %.4f seconds (graph pool %.0f MB)\n", t, best,
               (double)lss_graph_memory(g) / 1048576.0);
        fflush(stdout);
    }
    mem1 = bench_peak_mb();
    bench_torch_run("bench/unet_torch.py", args, tt, NULL, &tm);
    bench_torch_report(1, tl, NULL, tt, NULL, tm, mem0, mem1, NULL);
    free(x); free(y); free(sg);
    lss_graph_free(g);
    lss_store_free(st);
    return 0;
}
