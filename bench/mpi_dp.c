/* mpi_dp.c - data-parallel training step of the DeepLSS ResNet (lss_dp_grad + Adam) and its communication.
 *   build/bench/mpi_dp SCALE STEPS SHARDS            (serial build: the reference, any OMP_NUM_THREADS;
 *                                                     no arguments: small 10 2)
 *   mpirun -np R build/mpi/mpi_dp SCALE STEPS SHARDS  (make build/mpi/mpi_dp: the same program with -DLSS_MPI)
 * SCALE: small (deeplss --scale small CNN: 8 x 32 x 32 maps, 3 strided 3 x 3 convolutions to 32 channels,
 * one residual block, pooled, hidden 256) or paper (8 x 64 x 64 maps, 4 strided 5 x 5 convolutions to 128
 * channels, 10 residual blocks, flatten: the paper's layer sizes); batch 32; Gaussian NLL of 7 targets.
 * Prints the median seconds per step over STEPS steps (after one warm-up step), the parameters, and the
 * bytes rank 0 sent per step (lss_mpi_bytes_sent). The parameters after the run are hashed (FNV-1a) so that
 * runs at different rank counts with the same SHARDS can be compared: the hashes must agree. */
#define _POSIX_C_SOURCE 200809L
#define LSS_IMPLEMENTATION
#include "lss_core.h"
#include "lss_nn.h"
#include <stdlib.h>

#define NB 32
#define NT 7

typedef struct {
    lss_graph *g;
    lss_resnet net;
    float *x, *y;
    int ch, side;
} run;

static int shard(void *u, int s, int ns, double *loss) {
    run *r = (run *)u;
    int64_t lo, hi, xs[4], ys[2];
    lss_tensor *l;
    int st;
    lss_dp_shard(NB, s, ns, &lo, &hi);
    xs[0] = hi - lo, xs[1] = r->ch, xs[2] = xs[3] = r->side;
    ys[0] = hi - lo, ys[1] = NT;
    lss_graph_reset(r->g);
    l = lss_op_gauss_nll(r->g, lss_resnet_forward(r->g, &r->net, lss_view(r->g, r->x + lo * r->ch * r->side * r->side, 4, xs)),
                         lss_view(r->g, r->y + lo * NT, 2, ys));
    l = lss_op_scale(r->g, l, (float)(hi - lo) / NB);
    if (!l) return lss_graph_status(r->g);
    if ((st = lss_backward(r->g, l)) != LSS_OK) return st;
    *loss = l->data[0];
    return LSS_OK;
}

static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    lss_store *st;
    lss_optim *opt;
    lss_optim_opts oo;
    lss_resnet_opts ro;
    lss_dp *dp;
    run r;
    lss_rng g;
    int steps, shards, paper, t;
    int64_t i, nx;
    double *sec, loss = 0, b0, bytes, comm;
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p;
    if (lss_mpi_init(&argc, &argv)) return 1;
    if (argc == 1) { /* make bench: the small network, 10 steps, 2 shards */
        static char *def[4] = {"mpi_dp", "small", "10", "2"};
        argc = 4, argv = def;
    }
    if (argc < 4 || (strcmp(argv[1], "small") && strcmp(argv[1], "paper"))) {
        fprintf(stderr, "usage: mpi_dp [small|paper STEPS SHARDS]\n");
        return 2;
    }
    paper = !strcmp(argv[1], "paper");
    steps = atoi(argv[2]), shards = atoi(argv[3]);
    if (steps < 1 || shards < 1 || shards > NB) { fprintf(stderr, "mpi_dp: STEPS >= 1, SHARDS 1..%d\n", NB); return 2; }
    memset(&r, 0, sizeof r);
    memset(&ro, 0, sizeof ro);
    r.ch = 8, r.side = paper ? 64 : 32;
    ro.in_ch = r.ch, ro.in_h = ro.in_w = r.side, ro.nout = NT + NT * (NT + 1) / 2;
    if (paper) ro.nconv = 4, ro.nres = 10, ro.channels = 128, ro.kernel = 5;
    else ro.nconv = 3, ro.nres = 1, ro.channels = 32, ro.kernel = 3, ro.pool = 1, ro.hidden = 256;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM, oo.lr = 1e-4;
    if (lss_store_create(1, &st) || lss_resnet_init(&r.net, st, "cnn", &ro) || lss_optim_create(st, &oo, &opt) || lss_graph_create(&r.g) ||
        lss_dp_create(st, shards, &dp)) {
        fprintf(stderr, "mpi_dp: %s\n", lss_last_error());
        return 1;
    }
    nx = (int64_t)NB * r.ch * r.side * r.side;
    r.x = (float *)malloc(sizeof(float) * (size_t)nx), r.y = (float *)malloc(sizeof(float) * NB * NT);
    sec = (double *)malloc(sizeof(double) * (size_t)steps);
    if (!r.x || !r.y || !sec) return 1;
    for (t = -1; t < steps; t++) {
        double t0;
        lss_rng_init(&g, 2, (uint64_t)(t + 1));
        for (i = 0; i < nx; i++) r.x[i] = (float)lss_rng_normal(&g);
        for (i = 0; i < NB * NT; i++) r.y[i] = (float)lss_rng_normal(&g);
        lss_mpi_barrier();
        b0 = lss_mpi_bytes_sent();
        t0 = lss_time_now();
        if (lss_dp_grad(dp, shard, &r, &loss) || lss_optim_step(opt)) { fprintf(stderr, "mpi_dp: %s\n", lss_last_error()); return 1; }
        lss_mpi_barrier();
        if (t >= 0) sec[t] = lss_time_now() - t0;
    }
    bytes = lss_mpi_bytes_sent() - b0;
    { /* the exchange alone: lss_mpi_sum_ordered of the shards' gradients of this store */
        int64_t P = lss_store_size(st), lo, hi;
        float *gs, *out;
        double t0;
        lss_mpi_block(shards, lss_mpi_rank(), lss_mpi_size(), &lo, &hi);
        gs = (float *)calloc((size_t)((hi - lo) * P + 1), sizeof(float)), out = (float *)malloc(sizeof(float) * (size_t)P);
        if (!gs || !out) return 1;
        lss_mpi_sum_ordered(gs, shards, P, out); /* untimed: first touch of the buffers */
        lss_mpi_barrier();
        t0 = lss_time_now();
        for (t = 0; t < 5; t++) lss_mpi_sum_ordered(gs, shards, P, out);
        lss_mpi_barrier();
        comm = (lss_time_now() - t0) / 5;
        free(gs), free(out);
    }
    qsort(sec, (size_t)steps, sizeof(double), cmpd);
    p = (const unsigned char *)lss_store_data(st);
    for (i = 0; i < (int64_t)sizeof(float) * lss_store_size(st); i++) h = (h ^ p[i]) * 1099511628211ull;
    if (lss_mpi_rank() == 0)
        printf("mpi_dp %s: %d rank(s), %s thread(s) each, %d shards, batch %d: %.4f s per step (median of %d), %lld parameters, "
               "%.3g MB sent per step by rank 0 (the ordered sum alone: %.4f s), loss %.6f, parameters hash %016llx\n",
               argv[1], lss_mpi_size(), getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "default", shards, NB, sec[steps / 2], steps,
               (long long)lss_store_nparams(st), bytes / 1e6, comm, loss, (unsigned long long)h);
    lss_dp_free(dp); lss_optim_free(opt); lss_graph_free(r.g); lss_store_free(st);
    free(r.x), free(r.y), free(sec);
    lss_mpi_finalize();
    return 0;
}
