/* mpi_check.c - the programs that tests/test_mpi.c runs serially (built with cc) and under mpirun
 * (built with mpicc -DLSS_MPI), comparing their output files byte for byte.
 *   mpi_check train DIR STEPS [NSHARD]  data-parallel training (lss_dp_grad inside lss_train) of a
 *                                        residual block with batch norm and a small ResNet; resumes from
 *                                        DIR/net.ckpt; writes DIR/net.ckpt, DIR/loss.csv, DIR/params.bin.
 *                                        LSS_TEST_KILL=RANK:STEP kills that rank (SIGKILL) at that step.
 *                                        (emcee: LSS_TEST_LOGP_FAIL=1 makes rank 1's log-probability fail.)
 *   mpi_check sum                        lss_mpi_sum_ordered against the serial loop (prints "sum: ok")
 *   mpi_check emcee DIR                  the ensemble sampler with the walkers' log-probabilities split
 *                                        over the ranks; writes DIR/chain.npy and DIR/logp.npy.
 *   mpi_check nbody DIR NP MESH LPT LEAN one particle-mesh light-cone run over all the ranks
 *                                        (lss_nbody_create_dist, lean 0 or 1); writes DIR/pos.bin, DIR/mom.bin (every
 *                                        particle in lattice order) and DIR/shells.npy.
 *   mpi_check nbody-ck DIR NP MESH LPT LEAN CANCEL
 *                                        the same light cone through lss_nbody_lightcone_dist with the
 *                                        checkpoint DIR/run.ckpt (resumed when it exists); CANCEL > 0:
 *                                        the last rank cancels after that step (exit status 3); at the end
 *                                        DIR/shells.npy.
 * Exit status 0 on success; errors on stderr. */
#define _POSIX_C_SOURCE 200809L
#define LSS_IMPLEMENTATION
#include "lss_core.h"
#include "lss_nn.h"
#include "lss_infer.h"
#include "lss_maps.h"
#include <signal.h>
#ifdef LSS_MPI
#include <mpi.h>
#endif

#define B 24
#define SIDE 16
#define CH 2

typedef struct {
    lss_store *st;
    lss_optim *opt;
    lss_graph *g, *ge;
    lss_resblock rb;
    lss_resnet net;
    lss_dp *dp;
    float x[B * CH * SIDE * SIDE], y[B * 2], xe[B * CH * SIDE * SIDE], ye[B * 2];
    int kill_rank;
    int64_t kill_step;
} model;

/* a batch of maps with a random amplitude and tilt; targets: the amplitude and the tilt */
static void fill(uint64_t stream, float *x, float *y) {
    lss_rng r;
    int n, c, i, j;
    lss_rng_init(&r, 11, stream);
    for (n = 0; n < B; n++) {
        double a = lss_rng_uniform(&r), t = lss_rng_uniform(&r) - 0.5;
        y[2 * n] = (float)a, y[2 * n + 1] = (float)t;
        for (c = 0; c < CH; c++)
            for (i = 0; i < SIDE; i++)
                for (j = 0; j < SIDE; j++)
                    x[((n * CH + c) * SIDE + i) * SIDE + j] = (float)(a * lss_rng_normal(&r) + t * (j - SIDE / 2) / SIDE);
    }
}

static lss_tensor *forward(lss_graph *g, model *m, float *x, int64_t n) {
    int64_t sh[4] = {n, CH, SIDE, SIDE};
    lss_tensor *h = lss_resblock_forward(g, &m->rb, lss_view(g, x, 4, sh));
    return lss_resnet_forward(g, &m->net, h);
}

static int shard(void *u, int s, int ns, double *loss) {
    model *m = (model *)u;
    int64_t lo, hi, ysh[2];
    lss_tensor *l;
    int st;
    lss_dp_shard(B, s, ns, &lo, &hi);
    ysh[0] = hi - lo, ysh[1] = 2;
    lss_graph_reset(m->g);
    l = lss_op_mse(m->g, forward(m->g, m, m->x + lo * CH * SIDE * SIDE, hi - lo), lss_view(m->g, m->y + 2 * lo, 2, ysh));
    l = lss_op_scale(m->g, l, (float)(hi - lo) / (float)B);
    if ((st = lss_backward(m->g, l)) != LSS_OK) return st;
    *loss = l->data[0];
    return LSS_OK;
}

static int step(void *u, int64_t t, double *loss) {
    model *m = (model *)u;
    int st;
    if (t == m->kill_step && lss_mpi_rank() == m->kill_rank) raise(SIGKILL);
    fill((uint64_t)t + 1000, m->x, m->y);
    if ((st = lss_dp_grad(m->dp, shard, m, loss)) != LSS_OK) return st;
    return lss_optim_step(m->opt);
}

static int eval(void *u, double *loss) {
    model *m = (model *)u;
    int64_t ysh[2] = {B, 2};
    lss_tensor *l;
    lss_graph_reset(m->ge);
    l = lss_op_mse(m->ge, forward(m->ge, m, m->xe, B), lss_view(m->ge, m->ye, 2, ysh));
    if (!l) return lss_graph_status(m->ge);
    *loss = l->data[0];
    return LSS_OK;
}

static int die(const char *what) {
    fprintf(stderr, "mpi_check: rank %d: %s: %s\n", lss_mpi_rank(), what, lss_last_error());
#ifdef LSS_MPI
    if (lss_mpi_size() > 1) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    return 1;
}

static int train(const char *dir, int64_t steps, int nshard) {
    model m;
    lss_resnet_opts ro;
    lss_optim_opts oo;
    lss_train_net tn;
    lss_train_opts to;
    lss_train_result res;
    char ck[4096], csv[4096], pb[4096];
    const char *k = getenv("LSS_TEST_KILL");
    lss_wfile w;
    memset(&m, 0, sizeof m);
    m.kill_rank = -1, m.kill_step = -1;
    if (k && sscanf(k, "%d:%lld", &m.kill_rank, (long long *)&m.kill_step) != 2) m.kill_rank = -1;
    if (lss_store_create(5, &m.st)) return die("store");
    if (lss_resblock_init(&m.rb, m.st, "rb", CH, 4, 3, 1, 1, 0, LSS_ACT_RELU)) return die("resblock");
    memset(&ro, 0, sizeof ro);
    ro.in_ch = 4, ro.in_h = SIDE, ro.in_w = SIDE, ro.nout = 2, ro.nconv = 2, ro.nres = 1, ro.channels = 8, ro.kernel = 3, ro.pool = 1;
    if (lss_resnet_init(&m.net, m.st, "net", &ro)) return die("resnet");
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM, oo.lr = 3e-3;
    if (lss_optim_create(m.st, &oo, &m.opt) || lss_graph_create(&m.g) || lss_graph_create(&m.ge)) return die("optimizer");
    lss_graph_set_training(m.ge, 0);
    if (lss_dp_create(m.st, nshard, &m.dp)) return die("lss_dp_create");
    fill(1, m.xe, m.ye);
    snprintf(ck, sizeof ck, "%s/net.ckpt", dir);
    snprintf(csv, sizeof csv, "%s/loss.csv", dir);
    tn.name = "net", tn.store = m.st, tn.optim = m.opt, tn.ckpt_path = ck;
    memset(&to, 0, sizeof to);
    to.steps = steps, to.eval_every = 2, to.ckpt_every = 2, to.loss_csv = csv, to.resume = 1;
    to.step = step, to.eval = eval, to.user = &m;
    if (lss_train(&tn, 1, &to, &res)) return die("lss_train");
    snprintf(pb, sizeof pb, "%s/params.bin", dir);
    if (lss_wfile_open(&w, pb)) return die("params.bin");
    fwrite(lss_store_data(m.st), sizeof(float), (size_t)lss_store_size(m.st), w.f);
    if (lss_wfile_commit(&w)) return die("params.bin");
    if (lss_mpi_rank() == 0)
        printf("train: %lld steps, %d shards, %d rank(s), %.0f bytes sent per step by rank 0\n", (long long)res.steps_done, nshard,
               lss_mpi_size(), lss_dp_bytes(m.dp));
    lss_dp_free(m.dp); lss_optim_free(m.opt); lss_graph_free(m.g); lss_graph_free(m.ge); lss_store_free(m.st);
    return 0;
}

/* a banana-shaped density in 3 dimensions, evaluated point by point */
static int logp(const double *x, int n, int d, double *lp, void *u) {
    int k;
    (void)u;
    if (getenv("LSS_TEST_LOGP_FAIL") && lss_mpi_rank() == 1) return lss_seterr(LSS_ERR_RANGE, "test failure on rank 1");
    for (k = 0; k < n; k++) {
        const double *p = x + (size_t)k * d;
        double b = p[1] - 0.5 * p[0] * p[0];
        lp[k] = -0.5 * (p[0] * p[0] / 4 + b * b / 0.25 + p[2] * p[2]) + 0.1 * sin(3 * p[2]);
    }
    return LSS_OK;
}

static int emcee(const char *dir) {
    lss_emcee *e;
    lss_emcee_opts o;
    double p0[32 * 3], *flat;
    int64_t n, sh[2];
    lss_rng r;
    int i;
    char path[4096];
    memset(&o, 0, sizeof o);
    o.seed = 9;
    lss_rng_init(&r, 3, 0);
    for (i = 0; i < 32 * 3; i++) p0[i] = 0.1 * lss_rng_normal(&r);
    if (lss_emcee_create(32, 3, &o, &e) || lss_emcee_start(e, p0, logp, NULL) || lss_emcee_run(e, 300, logp, NULL)) return die("emcee");
    if (lss_emcee_flat(e, 0, 1, &flat, &n)) return die("emcee_flat");
    sh[0] = n, sh[1] = 3;
    snprintf(path, sizeof path, "%s/chain.npy", dir);
    if (lss_npy_save(path, LSS_F64, 2, sh, flat)) return die("chain.npy");
    LSS_FREE(flat);
    if (lss_mpi_rank() == 0) printf("emcee: %lld samples, %d rank(s)\n", (long long)n, lss_mpi_size());
    lss_emcee_free(e);
    return 0;
}

/* lss_mpi_sum_ordered against the serial loop for shard counts and lengths below, at and above the ranks */
static int sum_check(void) {
    static const int ns[5] = {1, 2, 3, 5, 7};
    static const int64_t nn[5] = {0, 1, 2, 5, 1001};
    int a, b, bad = 0;
    for (a = 0; a < 5; a++)
        for (b = 0; b < 5; b++) {
            int K = ns[a], k;
            int64_t n = nn[b], lo, hi, i;
            float *g = (float *)malloc(sizeof(float) * (size_t)(K * n + 1)), *out = (float *)malloc(sizeof(float) * (size_t)(n + 1));
            lss_rng r;
            if (!g || !out) return die("out of memory");
            lss_rng_init(&r, 4, (uint64_t)(a * 5 + b));
            for (i = 0; i < K * n; i++) g[i] = (float)lss_rng_normal(&r) * (float)(1 + i % 7) * 1e3f;
            lss_mpi_block(K, lss_mpi_rank(), lss_mpi_size(), &lo, &hi);
            if (lss_mpi_sum_ordered(g + lo * n, K, n, out)) return die("lss_mpi_sum_ordered");
            for (i = 0; i < n; i++) {
                float v = g[i];
                for (k = 1; k < K; k++) v += g[k * n + i];
                if (memcmp(&v, out + i, sizeof v)) bad++;
            }
            free(g), free(out);
        }
    if (lss_mpi_rank() == 0) printf("sum: %s (%d ranks)\n", bad ? "DIFFERENT" : "ok", lss_mpi_size());
    return bad != 0;
}

/* a small light cone: 3 shells to z = 0.5 in two cones, 6 steps from z = 9, in a 200 Mpc/h box */
static int nb_setup(int np, int mesh, int lpt, lss_cosmo **c, lss_nbody_opts *o, lss_lightcone_opts *lc) {
    static const double ze[4] = {0.05, 0.2, 0.35, 0.5};
    lss_params p;
    lss_params_fiducial(&p);
    p.omega_m = 0.28;
    memset(o, 0, sizeof *o);
    o->box = 200; o->np = np; o->mesh = mesh; o->steps = 6; o->z_init = 9; o->lpt_order = lpt;
    memset(lc, 0, sizeof *lc);
    lc->side = 16; lc->pixel_arcmin = 20; lc->nshell = 3; lc->z_edges = ze; lc->ncone = 2;
    return lss_cosmo_create(&p, c);
}
static int nbody(const char *dir, int np, int mesh, int lpt, int lean) {
    lss_cosmo *c = NULL;
    lss_nbody_opts o;
    lss_lightcone_opts lc;
    lss_shellset ss;
    lss_nbody *s = NULL;
    uint32_t *pos = NULL;
    float *mom = NULL;
    size_t N = (size_t)np * np * np;
    int64_t sh[4];
    char path[1024];
    int st;
    FILE *f;
    memset(&ss, 0, sizeof ss);
    if ((st = nb_setup(np, mesh, lpt, &c, &o, &lc)) != LSS_OK) goto done;
    if ((st = lss_nbody_create_dist(c, &o, &lc, 7, 3, lean, &s)) != LSS_OK) goto done;
    while (lss_nbody_steps_done(s) < o.steps)
        if ((st = lss_nbody_step(s)) != LSS_OK) goto done;
    if ((st = lss_nbody_shells(s, &ss)) != LSS_OK) goto done;
    pos = (uint32_t *)malloc(12 * N);
    mom = (float *)malloc(12 * N);
    if (!pos || !mom) { st = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto done; }
    if ((st = lss_nbody_particles(s, pos, mom)) != LSS_OK) goto done;
    sh[0] = ss.ncone, sh[1] = ss.nshell, sh[2] = ss.side, sh[3] = ss.side;
    snprintf(path, sizeof path, "%s/shells.npy", dir);
    if ((st = lss_npy_save(path, LSS_F32, 4, sh, ss.delta)) != LSS_OK) goto done;
    if (lss_mpi_rank() == 0) {
        snprintf(path, sizeof path, "%s/pos.bin", dir);
        if (!(f = fopen(path, "wb")) || fwrite(pos, 12, N, f) != N || fclose(f)) { st = lss_seterr(LSS_ERR_IO, "cannot write %s", path); goto done; }
        snprintf(path, sizeof path, "%s/mom.bin", dir);
        if (!(f = fopen(path, "wb")) || fwrite(mom, 12, N, f) != N || fclose(f)) { st = lss_seterr(LSS_ERR_IO, "cannot write %s", path); goto done; }
    }
done:
    if (st != LSS_OK) fprintf(stderr, "mpi_check nbody (rank %d): %s\n", lss_mpi_rank(), lss_last_error());
    free(pos); free(mom);
    lss_shellset_free(&ss);
    lss_nbody_free(s);
    lss_cosmo_free(c);
    return st == LSS_OK ? 0 : 1;
}

static int nb_cancel_at = 0;
static void nb_prog(int step, int steps, double a, double sec, void *user) {
    (void)steps, (void)a, (void)sec, (void)user;
    if (step == nb_cancel_at && lss_mpi_rank() == lss_mpi_size() - 1) lss_nbody_cancel();
}
static int nbody_ck(const char *dir, int np, int mesh, int lpt, int lean, int cancel) {
    lss_cosmo *c = NULL;
    lss_nbody_opts o;
    lss_lightcone_opts lc;
    lss_shellset ss;
    int64_t sh[4];
    char path[1024], ck[1024];
    int st;
    memset(&ss, 0, sizeof ss);
    if ((st = nb_setup(np, mesh, lpt, &c, &o, &lc)) != LSS_OK) goto done;
    nb_cancel_at = cancel;
    snprintf(ck, sizeof ck, "%s/run.ckpt", dir);
    if ((st = lss_nbody_lightcone_dist(c, &o, &lc, 7, 3, lean, ck, nb_prog, NULL, &ss)) != LSS_OK) goto done;
    sh[0] = ss.ncone, sh[1] = ss.nshell, sh[2] = ss.side, sh[3] = ss.side;
    snprintf(path, sizeof path, "%s/shells.npy", dir);
    st = lss_npy_save(path, LSS_F32, 4, sh, ss.delta);
done:
    if (st != LSS_OK) fprintf(stderr, "mpi_check nbody-ck (rank %d): %s\n", lss_mpi_rank(), lss_last_error());
    lss_shellset_free(&ss);
    lss_cosmo_free(c);
    return st == LSS_OK ? 0 : cancel > 0 && st == LSS_ERR_STATE ? 3 : 1;
}

int main(int argc, char **argv) {
    int rc = 2;
    if (lss_mpi_init(&argc, &argv)) { fprintf(stderr, "mpi_check: %s\n", lss_last_error()); return 1; }
    if (argc >= 4 && !strcmp(argv[1], "train")) rc = train(argv[2], atoll(argv[3]), argc > 4 ? atoi(argv[4]) : 6);
    else if (argc >= 3 && !strcmp(argv[1], "emcee")) rc = emcee(argv[2]);
    else if (argc >= 2 && !strcmp(argv[1], "sum")) rc = sum_check();
    else if (argc >= 8 && !strcmp(argv[1], "nbody-ck")) rc = nbody_ck(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
    else if (argc >= 7 && !strcmp(argv[1], "nbody")) rc = nbody(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    else fprintf(stderr, "usage: mpi_check train DIR STEPS [NSHARD] | emcee DIR | sum | nbody DIR NP MESH LPT LEAN | nbody-ck DIR NP MESH LPT LEAN CANCEL\n");
    lss_mpi_finalize();
    return rc;
}
