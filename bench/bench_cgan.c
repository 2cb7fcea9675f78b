/* bench_cgan.c - training and sampling time of the conditional WGAN-GP (lss_nn.h's lss_cgan) on the CPU.
 *
 * One training iteration = n_critic = 5 critic steps (generator forward without gradients, the critic on real and
 * fake maps, the gradient penalty's input gradients and its tangent pass, backward, RMSProp) and one generator step
 * (generator and critic forward, backward, RMSProp), on synthetic batches (the time does not depend on the data).
 *   small: the `cgan --scale small` networks (32 x 32 maps, 3 stride-2 stages from 16 channels, dense 256),
 *          batch 32: timed as is;
 *   paper: the paper's networks (Table A1: 128 x 128 maps, 4 stages from 32 channels, dense 512, latent 128),
 *          timed at a batch of 4 and given per map and extrapolated to the paper's batch of 64 (the work is linear in
 *          the batch; the extrapolation is stated as such).
 * Sampling: generator forward in an evaluation graph, seconds per map over 256 maps (small) or 32 (paper).
 * Each figure is the best of the timed repetitions after one warm-up.
 *
 * Usage: build/bench/bench_cgan [reps]   (default 3) */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include <stdlib.h>
#include <string.h>

static int64_t g_d;
static int draw(void *u, int64_t t, int k, float *maps, float *y) {
    int B = *(int *)u;
    for (int64_t i = 0; i < (int64_t)B * g_d; i++) maps[i] = 1.0f + 0.5f * (float)((i * 2654435761u + (uint64_t)t * 7 + (uint64_t)k) % 1000) / 1000.0f;
    for (int i = 0; i < B; i++) y[2 * i] = 0.3f, y[2 * i + 1] = 0.8f;
    return LSS_OK;
}

static void bench(const char *name, int side, int nstride, int w0, int wdense, int nlatent, int batch, int paper_batch, int nsample, int reps) {
    lss_cgan_opts o;
    lss_cgan m;
    double best = 1e30, bests = 1e30;
    memset(&o, 0, sizeof o);
    if (lss_cgan_opts_paper(side, nstride, w0, wdense, nlatent, &o)) { fprintf(stderr, "%s\n", lss_last_error()); exit(1); }
    o.lo[0] = 0.2, o.hi[0] = 0.4, o.lo[1] = 0.6, o.hi[1] = 1.0, o.batch = batch, o.seed = 1;
    if (lss_cgan_init(&m, &o)) { fprintf(stderr, "%s\n", lss_last_error()); exit(1); }
    g_d = (int64_t)side * side;
    for (int r = 0; r <= reps; r++) {
        double t0 = lss_time_now(), st[5];
        int s = lss_cgan_step(&m, r, draw, &batch, st);
        if (s && s != LSS_ERR_NUMERIC) { fprintf(stderr, "%s\n", lss_last_error()); exit(1); }
        if (r > 0 && lss_time_now() - t0 < best) best = lss_time_now() - t0;
    }
    float *y = (float *)calloc((size_t)nsample * 2, sizeof(float)), *x = (float *)calloc((size_t)nsample * g_d, sizeof(float));
    for (int i = 0; i < nsample; i++) y[2 * i] = 0.3f, y[2 * i + 1] = 0.8f;
    for (int r = 0; r <= reps; r++) {
        double t0 = lss_time_now();
        lss_cgan_generate(&m, NULL, y, nsample, 0, x);
        if (r > 0 && lss_time_now() - t0 < bests) bests = lss_time_now() - t0;
    }
    printf("%-6s %4d x %-4d critic %9lld params, generator %9lld params, batch %3d: %8.3f s per iteration (5 critic + 1 generator step)",
           name, side, side, (long long)lss_store_nparams(m.sc), (long long)lss_store_nparams(m.sg), batch, best);
    if (paper_batch > batch) printf("; x %d/%d = %.1f s at batch %d (extrapolated)", paper_batch, batch, best * paper_batch / batch, paper_batch);
    printf("; sampling %.2f ms per map\n", 1e3 * bests / nsample);
    free(x), free(y), lss_cgan_free(&m);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    printf("bench_cgan: %d threads, best of %d iterations after a warm-up\n", lss_nn_threads(), reps);
    bench("small", 32, 3, 16, 256, 64, 32, 0, 256, reps);
    bench("paper", 128, 4, 32, 512, 128, 4, 64, 32, reps);
    return 0;
}
