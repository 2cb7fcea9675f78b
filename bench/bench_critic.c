/* bench_critic.c - one WGAN-GP critic step of the conditional GAN (lss_convnet + lss_wgan_gp_step of lss_nn.h)
 * against PyTorch on the CPU, measured in the same run.
 *
 * The critic of `cgan --scale small` (lss_cgan_opts_paper(32, 3, 16, 256, 64): 4 convolutions to 128 channels,
 * 3 dense layers, 2 parameters concatenated; the parameter counts of both are printed) on a batch of 32 real and
 * 32 generated 32 x 32 maps (fixed synthetic data: the time does not depend on it). One step: the critic on real,
 * generated and interpolated maps, the gradient penalty's input gradients and its exact parameter gradient
 * (lss: a tangent pass; PyTorch: a second-order backward pass), and an RMSProp update. The PyTorch reference is
 * bench/critic_torch.py, run as bench_torch.h says (one process per thread count, pools limited), before and
 * after the lss steps (best kept). Each lss figure is the best step after two warm-up steps (the graph's pool becomes
 * one block at the second reset).
 *
 * Usage: build/bench/bench_critic [steps] [batch]   (defaults 5, 32)
 */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include "bench/bench_torch.h"
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 5, B = argc > 2 ? atoi(argv[2]) : 32;
    double tl[3] = {0, 0, 0}, tt[3] = {1e30, 1e30, 1e30}, tm = 1e30, mem0, mem1;
    lss_cgan_opts co;
    lss_convnet cn;
    lss_store *st;
    lss_graph *g = NULL, *g2 = NULL;
    lss_optim *opt;
    lss_optim_opts oo;
    float *real, *fake, *y, *eps;
    char args[32];
    lss_rng r;
    if (steps < 1 || B < 1 || B > 4096) {
        fprintf(stderr, "usage: bench_critic [steps >= 1] [batch 1..4096]\n");
        return 2;
    }
    memset(&co, 0, sizeof co);
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_RMSPROP;
    oo.lr = 1e-4;
    if (lss_cgan_opts_paper(32, 3, 16, 256, 64, &co) || lss_store_create(1, &st) || lss_convnet_init(&cn, st, "critic", &co.critic) ||
        lss_optim_create(st, &oo, &opt)) {
        fprintf(stderr, "error: %s\n", lss_last_error());
        return 1;
    }
    real = malloc(sizeof(float) * (size_t)B * 1024);
    fake = malloc(sizeof(float) * (size_t)B * 1024);
    y = malloc(sizeof(float) * (size_t)B * 2);
    eps = malloc(sizeof(float) * (size_t)B);
    lss_rng_init(&r, 3, 0);
    for (int i = 0; i < B * 1024; i++) real[i] = (float)(1 + lss_rng_uniform(&r)), fake[i] = (float)(1 + lss_rng_uniform(&r));
    for (int i = 0; i < B; i++) y[2 * i] = (float)lss_rng_uniform(&r), y[2 * i + 1] = (float)lss_rng_uniform(&r), eps[i] = (float)lss_rng_uniform(&r);
    printf("cGAN critic (cgan --scale small): batch %d of 32 x 32, %lld parameters\n", B, (long long)lss_store_nparams(st));
    snprintf(args, sizeof args, "%d", B);
    bench_torch_run("bench/critic_torch.py", args, tt, NULL, &tm);
    mem0 = bench_rss_mb();
    for (int t = 1; t <= 2; t++) {
        double best = 1e30;
#ifdef _OPENMP
        omp_set_num_threads(t);
#endif
        lss_graph_free(g);
        lss_graph_free(g2);
        if (lss_graph_create(&g) || lss_graph_create(&g2)) { fprintf(stderr, "error: %s\n", lss_last_error()); return 1; }
        for (int s = 0; s < steps + 2; s++) { /* two warm-up steps: the pool is one block from the second reset */
            double t0 = lss_time_now(), dt;
            lss_store_zero_grad(st);
            if (lss_wgan_gp_step(g, g2, st, &cn, real, fake, y, eps, B, 10.0, NULL, NULL, NULL) || lss_optim_step(opt)) {
                fprintf(stderr, "error: %s\n", lss_last_error());
                return 1;
            }
            dt = lss_time_now() - t0;
            if (s > 1 && dt < best) best = dt;
        }
        tl[t] = best;
        printf("lss   threads %d critic step %.4f seconds\n", t, best);
        fflush(stdout);
    }
    mem1 = bench_peak_mb();
    bench_torch_run("bench/critic_torch.py", args, tt, NULL, &tm);
    bench_torch_report(1, tl, NULL, tt, NULL, tm, mem0, mem1, NULL);
    free(real); free(fake); free(y); free(eps);
    lss_graph_free(g);
    lss_graph_free(g2);
    lss_optim_free(opt);
    lss_store_free(st);
    return 0;
}
