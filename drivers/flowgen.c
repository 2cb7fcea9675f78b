/* flowgen - flow and diffusion generators of convergence maps: training maps of one cosmology, a multiscale
 * normalizing flow (exact likelihood; lss_flow of lss_nn.h) and a score-based diffusion model (lss_mm_diff of
 * lss_massmap.h), samples, bits per dimension on held-out maps, and the statistics suite (generated vs simulated,
 * with the noise floor of two simulated sets). Wiring only. See `flowgen --help`. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "drivers/lss_driver.h"
#include <unistd.h>

static const char *usage_main =
    "usage: flowgen COMMAND [options]   (flowgen COMMAND --help for each)\n"
    "commands:\n"
    "  data    shifted lognormal convergence maps of one cosmology: training, held-out and two test sets\n"
    "  train   --model flow|diffusion: trains one generator (checkpoints, exact resume, loss CSV)\n"
    "  sample  --model M: N generated maps (flow at a temperature; diffusion with an ancestral, DDIM, second-order DDIM or ODE sampler)\n"
    "  bpd     --model M: bits per dimension on the held-out test maps (flow: exact; diffusion: the variational bound)\n"
    "  eval    --model M: power spectrum, peak counts, pixel PDF and the rest of the suite, generated vs simulated,\n"
    "          with the noise floor of the two simulated test sets\n"
    "Maps are NPY arrays [N, side, side] of convergence. --scale small: 32 x 32 maps of 2.34 arcmin for this CPU (both\n"
    "models in under an hour); demo: the same maps, short runs; paper: 128 x 128 maps and wider networks (a GPU job).\n"
    "example: flowgen data --dir out/flowgen && flowgen train --dir out/flowgen --model flow && flowgen eval --dir out/flowgen --model flow\n";

#define OPT_END {NULL, LSS_DRV_STR, NULL, 0, 0, 0, NULL}
static void *xcalloc(int64_t n, size_t sz) {
    void *p = calloc((size_t)(n > 0 ? n : 1), sz);
    return p ? p : (lss_drv_die(1, "out of memory"), NULL);
}

/* ---------------------------------------------------------------- configuration */
typedef struct {
    int scale;                          /* 0 demo, 1 small, 2 paper */
    int side, pad, ntrain, nvalid, ntest;
    double pix, lambda;
    uint64_t seed;
    /* models */
    int steps, batch, levels, fsteps, hidden, c0;
    double lr;
    lss_drv_progress prog;
} cfg;
static const char *scale_names[3] = {"demo", "small", "paper"};
static void cfg_scale(cfg *c, const char *scale) {
    memset(c, 0, sizeof *c);
    c->seed = 1, c->pad = 4, c->pix = 5.0 * 60 / 128, c->side = 32, c->levels = 3, c->fsteps = 4, c->lr = 1e-3, c->batch = 32;
    if (!strcmp(scale, "demo")) c->scale = 0, c->ntrain = 1000, c->nvalid = 128, c->ntest = 256, c->steps = 300, c->hidden = 16, c->c0 = 8;
    else if (!strcmp(scale, "small")) c->scale = 1, c->ntrain = 4000, c->nvalid = 256, c->ntest = 512, c->steps = 3000, c->hidden = 32, c->c0 = 16;
    else if (!strcmp(scale, "paper"))
        c->scale = 2, c->side = 128, c->ntrain = 20000, c->nvalid = 1000, c->ntest = 1000, c->steps = 100000, c->levels = 4, c->fsteps = 8,
        c->hidden = 128, c->c0 = 64, c->batch = 64, c->lr = 5e-4;
    else lss_drv_die(2, "option --scale: '%s' is not demo, small or paper", scale);
}
static const char *info_cols[] = {"scale", "side", "pix_arcmin", "pad", "ntrain", "nvalid", "ntest", "seed", "lambda"};
static void cfg_save(const cfg *c, const char *dd) {
    char p[4096];
    double row[9] = {c->scale, c->side, c->pix, c->pad, c->ntrain, c->nvalid, c->ntest, (double)c->seed, c->lambda};
    snprintf(p, sizeof p, "%s/info.csv", dd), lss_drv_check(lss_csv_write(p, 9, info_cols, 1, row), p);
}
/* --help asked for: a command prints its help without a data set (defaults of the small scale) */
static int cfg_help_asked(int argc, char **argv) {
    for (int i = 1; i < argc; i++) if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}
static void cfg_load(cfg *c, const char *dir) {
    char p[4096];
    lss_csv t;
    snprintf(p, sizeof p, "%s/data/info.csv", dir);
    if (access(p, R_OK)) lss_drv_die(2, "%s: no data set here (run flowgen data --dir %s first)", p, dir);
    lss_drv_check(lss_csv_read(p, &t), p);
    for (int i = 0; i < 9; i++) if (lss_csv_col(&t, info_cols[i]) != i || t.nrows != 1) lss_drv_die(2, "%s: not a flowgen info file", p);
    if (!(t.data[0] >= 0 && t.data[0] <= 2)) lss_drv_die(2, "%s: unknown scale", p);
    cfg_scale(c, scale_names[(int)t.data[0]]);
    c->side = (int)t.data[1], c->pix = t.data[2], c->pad = (int)t.data[3], c->ntrain = (int)t.data[4], c->nvalid = (int)t.data[5];
    c->ntest = (int)t.data[6], c->seed = (uint64_t)t.data[7], c->lambda = t.data[8];
    if (c->side < 8 || c->side % 16 || !(c->lambda > 0)) lss_drv_die(2, "%s: inconsistent (side %d, shift %g)", p, c->side, c->lambda);
    lss_csv_free(&t);
}
static void cfg_load_args(cfg *c, const char *dir, int argc, char **argv) {
    if (cfg_help_asked(argc, argv)) cfg_scale(c, "small");
    else cfg_load(c, dir);
}
static float *load_maps(const char *path, int64_t *n, int side) {
    float *d;
    int nd;
    int64_t sh[LSS_MAX_DIM];
    lss_drv_check(lss_npy_load_f32(path, &d, &nd, sh), path);
    if (nd != 3 || sh[1] != side || sh[2] != side || sh[0] < 1) lss_drv_die(2, "%s: expected maps [N, %d, %d]", path, side, side);
    for (int64_t i = 0; i < sh[0] * side * side; i++)
        if (!isfinite(d[i])) lss_drv_die(2, "%s: map %lld has a non-finite pixel", path, (long long)(i / ((int64_t)side * side)));
    *n = sh[0];
    return d;
}
static float *load_set(const char *dir, const char *name, int64_t *n, int side) {
    char p[4096];
    snprintf(p, sizeof p, "%s/data/%s", dir, name);
    return load_maps(p, n, side);
}
static int model_kind(const char *m) {
    if (!strcmp(m, "flow")) return 0;
    if (!strcmp(m, "diffusion")) return 1;
    lss_drv_die(2, "option --model: '%s' is not flow or diffusion", m);
    return -1;
}

/* ---------------------------------------------------------------- data */
static int cmd_data(int argc, char **argv) {
    const char *dir = "out/flowgen", *scale = "small";
    cfg c;
    cfg_scale(&c, "small");
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], "--scale")) cfg_scale(&c, argv[i + 1]);
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (maps go to DIR/data)"},
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "demo, small or paper (sets the defaults below)"},
                          {"ntrain", LSS_DRV_INT, &c.ntrain, 16, 10000000, 0, "training maps"},
                          {"nvalid", LSS_DRV_INT, &c.nvalid, 8, 1000000, 0, "held-out maps seen during training (loss curve)"},
                          {"ntest", LSS_DRV_INT, &c.ntest, 8, 1000000, 0, "maps per test set (two independent sets)"},
                          {"seed", LSS_DRV_U64, &c.seed, 0, 0, 0, "random seed"}, OPT_END};
    lss_drv_cmd cmd = {"flowgen data", "flowgen data [--dir DIR] [--scale demo|small|paper] [options]",
                       "Shifted lognormal convergence maps at the Planck 2015 cosmology for the COSMOS-like source distribution\n"
                       "(Halofit C_kk, shift = the empty-beam convergence), cut out of fields 4 times larger with their own mean kept\n"
                       "(so that the maps fill all side^2 dimensions and have a density): train.npy, valid.npy, test_a.npy, test_b.npy\n"
                       "[N, side, side] and info.csv in DIR/data.",
                       "flowgen data --dir out/flowgen --scale small"};
    lss_drv_parse(&cmd, opts, argc, argv);
    int64_t d = (int64_t)c.side * c.side, tot = (int64_t)c.ntrain + c.nvalid + 2 * (int64_t)c.ntest;
    lss_drv_memory("the maps", 4.0 * (double)d * (double)tot, "--ntrain or --ntest");
    char dd[3000], p[4096];
    snprintf(dd, sizeof dd, "%s/data", dir), lss_drv_outputs_begin(dd, 1);
    lss_params par;
    lss_mm_kappa_gen *kg;
    lss_mm_params_planck15(&par);
    lss_drv_check(lss_mm_theory_kappa_empty(&par, "cosmos", &c.lambda), "empty-beam convergence");
    lss_drv_check(lss_mm_kappa_gen_create(&par, "cosmos", c.side, c.pad, c.pix, &kg), "convergence model");
    const char *names[4] = {"train.npy", "valid.npy", "test_a.npy", "test_b.npy"};
    int64_t cnt[4] = {c.ntrain, c.nvalid, c.ntest, c.ntest};
    uint64_t idx[4] = {lss_set_index(LSS_SET_TRAIN, 0), lss_set_index(LSS_SET_VALID, 0), lss_set_index(LSS_SET_TEST, 0),
                       lss_set_index(LSS_SET_TEST, (uint64_t)1 << 30)};
    lss_drv_progress_init(&c.prog, "flowgen data: maps", tot);
    for (int s = 0, done = 0; s < 4; s++) {
        float *m = (float *)xcalloc(cnt[s] * d, sizeof(float));
        for (int64_t i0 = 0; i0 < cnt[s]; i0 += 256) {
            int nb = (int)(cnt[s] - i0 < 256 ? cnt[s] - i0 : 256);
            lss_drv_check(lss_mm_kappa_draw_mean(kg, c.seed, idx[s] + (uint64_t)i0, nb, 1, m + i0 * d), names[s]);
            done += nb, lss_drv_progress_update(&c.prog, done);
        }
        snprintf(p, sizeof p, "%s/%s", dd, names[s]);
        lss_drv_check(lss_npy_save(p, LSS_F32, 3, (int64_t[]){cnt[s], c.side, c.side}, m), p);
        free(m);
    }
    lss_drv_progress_end(&c.prog);
    lss_mm_kappa_gen_free(kg);
    cfg_save(&c, dd);
    char extra[256];
    snprintf(extra, sizeof extra, "\"side\": %d, \"pixel_arcmin\": %g, \"shift\": %g", c.side, c.pix, c.lambda);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    fprintf(stderr, "flowgen data: %d training, %d held-out, 2 x %d test maps of %d x %d in %s\n", c.ntrain, c.nvalid, c.ntest, c.side, c.side, dd);
    return 0;
}

/* ---------------------------------------------------------------- models */
/* The flow's architecture is kept next to its checkpoint (arch.csv) so that later commands rebuild it. */
static const char *arch_cols[] = {"side", "levels", "steps", "hidden"};
static lss_flow *flow_open(const cfg *c, const char *md, int load) {
    char p[4096];
    lss_flow_opts o;
    lss_flow *f;
    memset(&o, 0, sizeof o);
    o.h = o.w = c->side, o.levels = c->levels, o.steps = c->fsteps, o.hidden = c->hidden, o.seed = lss_stream(LSS_STREAM_NET_INIT, c->seed, 5);
    if (load) {
        lss_csv t;
        snprintf(p, sizeof p, "%s/arch.csv", md);
        if (access(p, R_OK)) lss_drv_die(2, "%s: no trained flow here (run flowgen train --model flow)", p);
        lss_drv_check(lss_csv_read(p, &t), p);
        for (int i = 0; i < 4; i++) if (lss_csv_col(&t, arch_cols[i]) != i || t.nrows != 1) lss_drv_die(2, "%s: not a flow architecture file", p);
        if ((int)t.data[0] != c->side) lss_drv_die(2, "%s: the flow is for %d x %d maps, the data are %d x %d", p, (int)t.data[0], (int)t.data[0], c->side, c->side);
        o.levels = (int)t.data[1], o.steps = (int)t.data[2], o.hidden = (int)t.data[3];
        lss_csv_free(&t);
    }
    lss_drv_check(lss_flow_create(&o, &f), "flow");
    if (load) {
        snprintf(p, sizeof p, "%s/model.ckpt", md);
        if (access(p, R_OK)) lss_drv_die(2, "%s: no trained flow (run flowgen train --model flow)", p);
        lss_drv_check(lss_ckpt_load(p, lss_flow_store(f), NULL), p);
    }
    return f;
}
static lss_mm_diff *diff_open(const char *md) {
    char p[4096];
    lss_mm_diff *d;
    snprintf(p, sizeof p, "%s/model.ckpt", md);
    if (access(p, R_OK)) lss_drv_die(2, "%s: no trained diffusion model (run flowgen train --model diffusion)", p);
    lss_drv_check(lss_mm_diff_open(p, &d), p);
    return d;
}

/* ---------------------------------------------------------------- training */
typedef struct {
    cfg *c;
    lss_flow *f;
    lss_graph *g;
    lss_optim *o;
    const float *maps, *vmaps;          /* training maps (flow space for the flow, kappa for diffusion), held-out */
    int64_t nmaps, nv;
    float *xb;
    lss_dp *dp;                         /* flow: data-parallel steps (--shards; NULL: the whole batch at once) */
} trainer;
/* Batch t: maps drawn uniformly, each under one of the 8 symmetries of the square (the field is isotropic). */
static void draw_batch(const trainer *T, int64_t t, int n, float *out) {
    lss_rng r;
    int d = T->c->side * T->c->side;
    lss_rng_init(&r, T->c->seed, lss_stream(LSS_STREAM_BATCH, (uint64_t)t, 7));
    for (int b = 0; b < n; b++) {
        int64_t j = (int64_t)(lss_rng_uniform(&r) * T->nmaps);
        j = j < T->nmaps ? j : T->nmaps - 1;
        lss_drv_sym_copy(T->maps + j * d, out + (int64_t)b * d, T->c->side, lss_rng_below(&r, 8));
    }
}
/* lss_dp_fn: the flow's loss on the rows of shard sh, weighted by their share of the batch */
static int flow_shard(void *u, int sh, int nsh, double *loss) {
    trainer *T = (trainer *)u;
    int64_t lo, hi, d = (int64_t)T->c->side * T->c->side;
    lss_dp_shard(T->c->batch, sh, nsh, &lo, &hi);
    lss_graph_reset(T->g), lss_graph_set_training(T->g, 1);
    lss_tensor *l = lss_flow_nll(T->g, T->f, lss_view(T->g, T->xb + lo * d, 4, (int64_t[]){hi - lo, 1, T->c->side, T->c->side}), NULL, NULL);
    l = lss_op_scale(T->g, l, (float)(hi - lo) / (float)T->c->batch);
    int s = lss_backward(T->g, l);
    if (s) return s;
    *loss = l->data[0];
    return isfinite(*loss) ? LSS_OK : LSS_ERR_NUMERIC;
}
static int flow_step(void *u, int64_t t, double *loss) {
    trainer *T = (trainer *)u;
    int B = T->c->batch;
    draw_batch(T, t, B, T->xb);
    if (T->dp) {
        int s = lss_dp_grad(T->dp, flow_shard, T, loss);
        return s ? s : lss_optim_step(T->o);
    }
    lss_graph_reset(T->g), lss_graph_set_training(T->g, 1);
    lss_store_zero_grad(lss_flow_store(T->f));
    lss_tensor *l = lss_flow_nll(T->g, T->f, lss_view(T->g, T->xb, 4, (int64_t[]){B, 1, T->c->side, T->c->side}), NULL, NULL);
    int s = lss_backward(T->g, l);
    if (s) return s;
    loss[0] = l->data[0];
    if (!isfinite(loss[0])) return LSS_ERR_NUMERIC;
    return lss_optim_step(T->o);
}
static int flow_eval(void *u, double *loss) {
    trainer *T = (trainer *)u;
    double *lp = (double *)xcalloc(T->nv, sizeof(double)), s = 0;
    int st = lss_flow_forward(T->f, (int)T->nv, T->vmaps, NULL, NULL, lp);
    for (int64_t i = 0; i < T->nv; i++) s += lp[i];
    loss[0] = -s / ((double)T->nv * T->c->side * T->c->side);
    free(lp);
    return st;
}
static void progress(void *u, int64_t step, int64_t steps, const double *train, const double *valid) {
    (void)steps, (void)train, (void)valid;
    lss_drv_progress_update(&((trainer *)u)->c->prog, step);
}
static int diff_draw(void *u, int set, int64_t index, int n, float *maps, float *cond) {
    trainer *T = (trainer *)u;
    int64_t d = (int64_t)T->c->side * T->c->side;
    (void)cond;
    if (set == LSS_SET_TRAIN) { draw_batch(T, index, n, maps); return LSS_OK; }
    for (int b = 0; b < n; b++) memcpy(maps + b * d, T->vmaps + ((index * n + b) % T->nv) * d, sizeof(float) * (size_t)d);
    return LSS_OK;
}
static void diff_progress(void *u, int step, double loss) {
    (void)loss;
    lss_drv_progress_update(&((trainer *)u)->c->prog, step); /* step: steps done */
}
/* mean and standard deviation of x, or of ln(x + shift) when shift > 0 */
static void mean_std_of(const float *x, int64_t n, double shift, double *mu, double *sd) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += shift > 0 ? log(x[i] + shift) : x[i];
    s /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        double v = shift > 0 ? log(x[i] + shift) : x[i];
        s2 += (v - s) * (v - s);
    }
    *mu = s, *sd = sqrt(s2 / (double)n);
}
static void mean_std(const float *x, int64_t n, double *mu, double *sd) { mean_std_of(x, n, 0, mu, sd); }

static int cmd_train(int argc, char **argv) {
    const char *dir = "out/flowgen", *model = NULL, *transform = "log";
    int resume = 0, every = 100, sched = 0, shards = 0, embed = 0, gauss = -1;
    cfg c;
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
    cfg_load_args(&c, dir, argc, argv);
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (from flowgen data)"},
                          {"model", LSS_DRV_STR, &model, 0, 0, 1, "flow or diffusion"},
                          {"steps", LSS_DRV_INT, &c.steps, 1, 100000000, 0, "optimizer steps"},
                          {"batch", LSS_DRV_INT, &c.batch, 1, 1024, 0, "maps per step"},
                          {"lr", LSS_DRV_DOUBLE, &c.lr, 1e-8, 1, 0, "Adam learning rate (cosine decay)"},
                          {"levels", LSS_DRV_INT, &c.levels, 1, LSS_FLOW_MAXLEVELS, 0, "flow: squeeze levels"},
                          {"flow-steps", LSS_DRV_INT, &c.fsteps, 1, 32, 0, "flow: coupling steps per level"},
                          {"hidden", LSS_DRV_INT, &c.hidden, 1, 4096, 0, "flow: conditioner channels"},
                          {"c0", LSS_DRV_INT, &c.c0, 1, 1024, 0, "diffusion: U-net width"},
                          {"embed", LSS_DRV_INT, &embed, 0, 32, 0, "diffusion: frequencies of a noise-level embedding in every U-net block (0: none)"},
                          {"gauss", LSS_DRV_INT, &gauss, -1, 3, 0, "diffusion: Gaussian skip, the Wiener filter of the training maps' two-point law (the network learns the rest): "
                                                                 "3 their stationary covariance (cut-outs; at most 64 x 64), 1 per DFT mode (periodic maps), 2 per DCT mode, 0 none; "
                                                                 "-1: 3 up to 64 x 64, else 0 (the small and demo scales: 3)"},
                          {"transform", LSS_DRV_STR, &transform, 0, 0, 0, "diffusion: log (ln(kappa + shift) standardised, as the flow) or affine"},
                          {"checkpoint-every", LSS_DRV_INT, &every, 1, 1000000, 0, "checkpoint and held-out loss every N steps"},
                          {"schedule-steps", LSS_DRV_INT, &sched, 0, 100000000, 0, "flow: length of the cosine decay (0: --steps; a run stopped early "
                           "and resumed later is exact when both use the final length)"},
                          {"shards", LSS_DRV_INT, &shards, 0, 1024, 0, "data-parallel shards of each batch (0: 1, or the ranks under mpirun; "
                           "the same shards train bitwise the same at any rank count)"},
                          {"resume", LSS_DRV_FLAG, &resume, 0, 0, 0, "continue from the checkpoint in DIR/MODEL"}, OPT_END};
    lss_drv_cmd cmd = {"flowgen train", "flowgen train --model flow|diffusion [--dir DIR] [options]",
                       "flow: multiscale affine-coupling flow on ln(kappa + shift) standardised (the lognormal transform; its Jacobian\n"
                       "is part of every likelihood), maximum likelihood, Adam with cosine decay; loss = nats per dimension in the flow's\n"
                       "space. diffusion: variance-exploding score model (U-net without batch norm, EDM preconditioning) trained by denoising\n"
                       "score matching over log-uniform noise levels, on the same lognormal transform (--transform affine: kappa\n"
                       "standardised). Random transpositions and flips of the training maps. Writes DIR/MODEL/model.ckpt,\n"
                       "loss.csv, run.json (and arch.csv for the flow).",
                       "flowgen train --dir out/flowgen --model flow --steps 3000"};
    lss_drv_parse(&cmd, opts, argc, argv);
    int kind = model_kind(model);
    if (strcmp(transform, "log") && strcmp(transform, "affine")) lss_drv_die(2, "option --transform: '%s' is not log or affine", transform);
    char md[4096], p[4200], p2[4200];
    snprintf(md, sizeof md, "%s/%s", dir, model);
    lss_drv_outputs_begin(md, 0);
    snprintf(p, sizeof p, "%s/model.ckpt", md), snprintf(p2, sizeof p2, "%s/loss.csv", md);
    trainer T;
    memset(&T, 0, sizeof T);
    T.c = &c;
    int64_t d = (int64_t)c.side * c.side;
    float *tr = load_set(dir, "train.npy", &T.nmaps, c.side), *va = load_set(dir, "valid.npy", &T.nv, c.side);
    T.xb = (float *)xcalloc(c.batch * d, sizeof(float));
    lss_train_result res;
    double mu, sd;
    char extra[512];
    lss_drv_progress_init(&c.prog, kind ? "flowgen train diffusion: steps" : "flowgen train flow: steps", c.steps);
    if (kind == 0) {
        T.f = flow_open(&c, md, 0);
        /* the lognormal transform: y = (ln(kappa + shift) - mean) / std over the training maps */
        lss_drv_check(lss_flow_set_transform(T.f, LSS_FLOW_LOG, c.lambda, 0, 1), "transform");
        lss_drv_check(lss_flow_to_flow(T.f, (int)T.nmaps, tr, tr, NULL), "training maps");
        mean_std(tr, T.nmaps * d, &mu, &sd);
        for (int64_t i = 0; i < T.nmaps * d; i++) tr[i] = (float)((tr[i] - mu) / sd);
        lss_drv_check(lss_flow_set_transform(T.f, LSS_FLOW_LOG, c.lambda, mu, sd), "transform");
        lss_drv_check(lss_flow_to_flow(T.f, (int)T.nv, va, va, NULL), "held-out maps");
        T.maps = tr, T.vmaps = va;
        lss_optim_opts oo = {0};
        oo.lr = c.lr, oo.sched = LSS_SCHED_COSINE, oo.total_steps = sched > 0 ? sched : c.steps, oo.lr_min = c.lr / 20, oo.clip = LSS_CLIP_NORM, oo.clip_norm = 100;
        lss_drv_check(lss_optim_create(lss_flow_store(T.f), &oo, &T.o), "optimizer"), lss_drv_check(lss_graph_create(&T.g), "graph");
        double arch[4] = {c.side, lss_flow_options(T.f)->levels, lss_flow_options(T.f)->steps, lss_flow_options(T.f)->hidden};
        snprintf(p2, sizeof p2, "%s/arch.csv", md), lss_drv_check(lss_csv_write(p2, 4, arch_cols, 1, arch), p2);
        snprintf(p2, sizeof p2, "%s/loss.csv", md);
        lss_train_net net = {"flow", lss_flow_store(T.f), T.o, p};
        lss_train_opts to = {0};
        to.steps = c.steps, to.eval_every = every, to.ckpt_every = every, to.loss_csv = p2, to.resume = resume;
        to.step = flow_step, to.eval = flow_eval, to.progress = progress, to.user = &T;
        int k = shards ? shards : lss_mpi_size();
        if (k > 1) { /* actnorm starts from the whole first batch, as without shards (a resumed run reloads it) */
            lss_drv_check(lss_dp_create(lss_flow_store(T.f), k < c.batch ? k : c.batch, &T.dp), "shards");
            draw_batch(&T, 0, c.batch, T.xb), lss_graph_reset(T.g), lss_graph_set_training(T.g, 1);
            lss_drv_check(lss_flow_nll(T.g, T.f, lss_view(T.g, T.xb, 4, (int64_t[]){c.batch, 1, c.side, c.side}), NULL, NULL) ? LSS_OK
                          : lss_graph_status(T.g), "actnorm initialisation");
        }
        lss_drv_check(lss_train(&net, 1, &to, &res), "training");
        lss_dp_free(T.dp);
        snprintf(extra, sizeof extra, "\"model\": \"flow\", \"steps\": %d, \"batch\": %d, \"lr\": %g, \"levels\": %d, \"flow_steps\": %d, \"hidden\": %d, "
                 "\"parameters\": %lld, \"seconds\": %.1f, \"seconds_per_step\": %.4f, \"transform\": \"log\", \"shift\": %g, \"mean\": %g, \"std\": %g",
                 c.steps, c.batch, c.lr, lss_flow_options(T.f)->levels, lss_flow_options(T.f)->steps, lss_flow_options(T.f)->hidden,
                 (long long)lss_store_nparams(lss_flow_store(T.f)), res.seconds, res.seconds_step / (res.steps_done > 0 ? res.steps_done : 1), c.lambda, mu, sd);
        lss_flow_free(T.f), lss_optim_free(T.o), lss_graph_free(T.g);
    } else {
        lss_mm_diff_opts o;
        lss_mm_diff *m;
        memset(&o, 0, sizeof o);
        o.h = o.w = c.side, o.c0 = c.c0, o.seed = lss_stream(LSS_STREAM_NET_INIT, c.seed, 6);
        o.transform = strcmp(transform, "log") ? LSS_MM_DIFF_AFFINE : LSS_MM_DIFF_LOG;
        o.shift = o.transform == LSS_MM_DIFF_LOG ? c.lambda : 0;
        if (gauss < 0) gauss = d <= 4096 ? 3 : 0;
        o.embed = embed, o.gauss = gauss;
        mean_std_of(tr, T.nmaps * d, o.shift, &mu, &sd);
        o.mean = mu, o.std = sd;
        T.maps = tr, T.vmaps = va;
        lss_drv_check(lss_mm_diff_create(&o, &m), "diffusion model");
        if (gauss == 3) {
            double *cv = (double *)xcalloc((size_t)d * (size_t)d, sizeof(double));
            lss_drv_check(lss_mm_diff_gauss_cov_estimate(m, (int)T.nmaps, tr, cv), "Gaussian skip");
            lss_drv_check(lss_mm_diff_set_gauss_cov(m, cv), "Gaussian skip");
            free(cv);
        } else if (gauss) {
            double *pk = (double *)xcalloc(d, sizeof(double));
            lss_drv_check(lss_mm_diff_gauss_estimate(m, (int)T.nmaps, tr, pk), "Gaussian skip");
            lss_drv_check(lss_mm_diff_set_gauss(m, pk), "Gaussian skip");
            free(pk);
        }
        lss_mm_diff_train_opts to;
        memset(&to, 0, sizeof to);
        to.steps = c.steps, to.batch = c.batch, to.lr = c.lr, to.seed = c.seed, to.draw = diff_draw, to.user = &T, to.ckpt = p;
        to.ckpt_every = every, to.resume = resume, to.loss_csv = p2, to.eval_every = every, to.progress = diff_progress, to.progress_user = &T;
        to.shards = shards;
        lss_drv_check(lss_mm_diff_train(m, &to, &res), "training");
        lss_mm_diff_options(m, &o);
        snprintf(extra, sizeof extra, "\"model\": \"diffusion\", \"steps\": %d, \"batch\": %d, \"lr\": %g, \"c0\": %d, \"embed\": %d, \"gauss\": %d, \"parameters\": %lld, "
                 "\"seconds\": %.1f, \"seconds_per_step\": %.4f, \"transform\": \"%s\", \"shift\": %g, \"mean\": %g, \"std\": %g",
                 c.steps, c.batch, c.lr, c.c0, o.embed, o.gauss, (long long)lss_mm_diff_nparams(m), res.seconds, res.seconds_step / (res.steps_done > 0 ? res.steps_done : 1),
                 transform, o.shift, mu, sd);
        lss_mm_diff_free(m);
    }
    lss_drv_progress_end(&c.prog);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    fprintf(stderr, "flowgen train: %s, %lld steps in %.1f s (%.3f s per step) -> %s\n", model, (long long)res.steps_done, res.seconds,
            res.seconds_step / (res.steps_done > 0 ? res.steps_done : 1), md);
    free(tr), free(va), free(T.xb);
    return 0;
}

/* ---------------------------------------------------------------- sampling */
typedef struct {
    double temperature;
    int sampler, nsteps;
} sample_opts;
static int sampler_kind(const char *s) {
    if (!strcmp(s, "ancestral")) return LSS_MM_DIFF_ANCESTRAL;
    if (!strcmp(s, "ddim")) return LSS_MM_DIFF_DDIM;
    if (!strcmp(s, "ddim2")) return LSS_MM_DIFF_DDIM2;
    if (!strcmp(s, "ode")) return LSS_MM_DIFF_ODE;
    lss_drv_die(2, "option --sampler: '%s' is not ancestral, ddim, ddim2 or ode", s);
    return -1;
}
/* n maps from index0 on; returns seconds per map. */
static double generate(const cfg *c, const char *dir, int kind, const sample_opts *so, int n, uint64_t index0, float *out) {
    char md[4096];
    double t0 = lss_time_now();
    snprintf(md, sizeof md, "%s/%s", dir, kind ? "diffusion" : "flow");
    if (kind == 0) {
        lss_flow *f = flow_open(c, md, 1);
        lss_drv_check(lss_flow_sample(f, n, NULL, so->temperature, c->seed, index0, out), "flow samples");
        lss_flow_free(f);
    } else {
        lss_mm_diff *m = diff_open(md);
        for (int i0 = 0; i0 < n; i0 += 32) {
            int nb = n - i0 < 32 ? n - i0 : 32;
            lss_drv_check(lss_mm_diff_sample(m, so->sampler, so->nsteps, nb, NULL, c->seed, index0 + (uint64_t)i0,
                                             out + (int64_t)i0 * c->side * c->side, NULL), "diffusion samples");
        }
        lss_mm_diff_free(m);
    }
    return (lss_time_now() - t0) / (n > 0 ? n : 1);
}
#define SAMPLE_OPTS(so, sampler)                                                                                                   \
    {"temperature", LSS_DRV_DOUBLE, &so.temperature, 0, 10, 0, "flow: latent temperature"},                                       \
    {"sampler", LSS_DRV_STR, &sampler, 0, 0, 0, "diffusion: ancestral, ddim, ddim2 (second-order DDIM) or ode (probability-flow ODE, RK45)"},                 \
    {"sampler-steps", LSS_DRV_INT, &so.nsteps, 0, 100000, 0, "diffusion: steps of the ancestral and DDIM samplers (0: 50 for ddim and ddim2, 1000 for the first-order ancestral)"}
static int cmd_sample(int argc, char **argv) {
    const char *dir = "out/flowgen", *model = NULL, *out = NULL, *sampler = "ddim2";
    int n = 16;
    uint64_t index = 0;
    sample_opts so = {1.0, LSS_MM_DIFF_DDIM2, 0};
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"}, {"model", LSS_DRV_STR, &model, 0, 0, 1, "flow or diffusion"},
                          {"n", LSS_DRV_INT, &n, 1, 10000000, 0, "maps"}, {"index", LSS_DRV_U64, &index, 0, 0, 0, "stream index of the first map"},
                          SAMPLE_OPTS(so, sampler),
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output NPY [n, side, side] of convergence (and a PNG of the first maps beside it)"}, OPT_END};
    lss_drv_cmd cmd = {"flowgen sample", "flowgen sample --model flow|diffusion --out FILE.npy [--n N] [options]",
                       "Generated convergence maps; map i is a pure function of (seed, index + i).",
                       "flowgen sample --dir out/flowgen --model diffusion --sampler ddim2 --sampler-steps 50 --n 16 --out s.npy"};
    lss_drv_parse(&cmd, opts, argc, argv);
    int kind = model_kind(model);
    so.sampler = sampler_kind(sampler);
    if (so.nsteps == 0) so.nsteps = so.sampler == LSS_MM_DIFF_ANCESTRAL ? 1000 : 50;
    cfg c;
    cfg_load_args(&c, dir, argc, argv);
    int64_t d = (int64_t)c.side * c.side;
    lss_drv_memory("the samples", 4.0 * (double)d * n, "--n");
    float *x = (float *)xcalloc(n * d, sizeof(float));
    char png[4200];
    snprintf(png, sizeof png, "%s.png", out);
    lss_drv_outputs_files(out, png);
    double spm = generate(&c, dir, kind, &so, n, index, x);
    lss_drv_check(lss_npy_save(out, LSS_F32, 3, (int64_t[]){n, c.side, c.side}, x), out);
    const char *tt[4] = {"sample 0", "sample 1", "sample 2", "sample 3"};
    lss_drv_png_row(png, x, n < 4 ? n : 4, c.side, tt, 0, 0);
    lss_drv_outputs_done(argc, argv, c.seed, NULL);
    fprintf(stderr, "flowgen sample: %d maps in %.2f s (%.4f s per map) -> %s\n", n, spm * n, spm, out);
    free(x);
    return 0;
}

/* ---------------------------------------------------------------- bits per dimension */
static int cmd_bpd(int argc, char **argv) {
    const char *dir = "out/flowgen", *model = NULL;
    double delta = 1e-4;
    int nsig = 64;
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"}, {"model", LSS_DRV_STR, &model, 0, 0, 1, "flow or diffusion"},
                          {"delta", LSS_DRV_DOUBLE, &delta, 1e-12, 1, 0, "quantisation step of kappa for bits per dimension"},
                          {"nsig", LSS_DRV_INT, &nsig, 2, 100000, 0, "diffusion: noise levels per map in the bound's Monte Carlo"}, OPT_END};
    lss_drv_cmd cmd = {"flowgen bpd", "flowgen bpd --model flow|diffusion [--dir DIR] [--delta D]",
                       "Bits per dimension of the held-out test maps (test_a.npy, never trained on): -ln p(kappa) / (D ln 2) - log2(delta),\n"
                       "the bits to store a map with kappa quantised to delta. flow: the exact density (the lognormal transform's\n"
                       "Jacobian included); diffusion: an upper bound (the variational bound, Monte Carlo over noise levels).\n"
                       "Writes DIR/MODEL/bpd.csv (map, nll_nats, bpd) and prints mean +- standard error.",
                       "flowgen bpd --dir out/flowgen --model flow"};
    lss_drv_parse(&cmd, opts, argc, argv);
    int kind = model_kind(model);
    cfg c;
    cfg_load_args(&c, dir, argc, argv);
    int64_t n, d = (int64_t)c.side * c.side;
    float *te = load_set(dir, "test_a.npy", &n, c.side);
    double *nll = (double *)xcalloc(n, sizeof(double)), *se = (double *)xcalloc(n, sizeof(double)), t0 = lss_time_now();
    char md[4096], p[4200];
    snprintf(md, sizeof md, "%s/%s", dir, model);
    snprintf(p, sizeof p, "%s/bpd.csv", md);
    lss_drv_outputs_files(p, NULL);
    if (kind == 0) {
        lss_flow *f = flow_open(&c, md, 1);
        lss_drv_check(lss_flow_logp(f, (int)n, te, NULL, nll), "flow log-density");
        for (int64_t i = 0; i < n; i++) nll[i] = -nll[i];
        lss_flow_free(f);
    } else {
        lss_mm_diff *m = diff_open(md);
        lss_drv_check(lss_mm_diff_nll(m, (int)n, te, NULL, nsig, c.seed, nll, se), "diffusion bound");
        lss_mm_diff_free(m);
    }
    double *rows = (double *)xcalloc(3 * n, sizeof(double)), s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double b = nll[i] / ((double)d * log(2.0)) - log2(delta);
        rows[3 * i] = (double)i, rows[3 * i + 1] = nll[i], rows[3 * i + 2] = b, s += b, s2 += b * b;
    }
    const char *cols[3] = {"map", "nll_nats", "bpd"};
    lss_drv_check(lss_csv_write(p, 3, cols, (int)n, rows), p);
    lss_drv_outputs_done(argc, argv, c.seed, NULL);
    double m = s / n, sem = sqrt((s2 / n - m * m) / (n > 1 ? n - 1 : 1));
    printf("%s: bits per dimension (delta %g) on %lld held-out maps: %.4f +- %.4f%s (%.1f s)\n", model, delta, (long long)n, m, sem,
           kind ? " (upper bound)" : " (exact)", lss_time_now() - t0);
    free(te), free(nll), free(se), free(rows);
    return 0;
}

/* ---------------------------------------------------------------- evaluation */
#define NPS 8
#define NPK 8
/* Mean power spectrum and peak counts of n maps, and their standard errors. */
typedef struct { double ell[NPS], ps[NPS], ps_se[NPS], pk[NPK], pk_se[NPK], pdf[NPK], pdf_se[NPK]; } summary;
static void summarise(const lss_grid *g, const float *maps, int n, const double *ed, const double *thr, const double *hed, summary *s) {
    double sd[NPK > NPS ? NPK : NPS];
    lss_stat_opts so = {0};
    so.peaks = LSS_STAT_PEAKS_5X5;
    lss_drv_check(lss_stat_ps(g, maps, n, ed, NPS, &so, s->ell, NULL, s->ps, sd), "power spectra");
    for (int b = 0; b < NPS; b++) s->ps_se[b] = sd[b] / sqrt(n);
    lss_drv_check(lss_stat_peak_counts(g, maps, n, thr, NPK, &so, NULL, s->pk, sd), "peak counts");
    for (int b = 0; b < NPK; b++) s->pk_se[b] = sd[b] / sqrt(n);
    so.hist = LSS_STAT_HIST_DENSITY;
    lss_drv_check(lss_stat_hist(g, maps, n, hed, NPK, &so, NULL, s->pdf, sd), "pixel PDF");
    for (int b = 0; b < NPK; b++) s->pdf_se[b] = sd[b] / sqrt(n);
}
static int cmd_eval(int argc, char **argv) {
    const char *dir = "out/flowgen", *model = NULL, *sampler = "ddim2", *samples = NULL;
    int n = 0;
    sample_opts so = {1.0, LSS_MM_DIFF_DDIM2, 0};
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"}, {"model", LSS_DRV_STR, &model, 0, 0, 0, "flow or diffusion"},
                          {"samples", LSS_DRV_STR, &samples, 0, 0, 0, "instead of --model: the maps of this NPY file [N, side, side] (another "
                           "generator's, or a baseline's), results in DIR/samples/eval"},
                          {"n", LSS_DRV_INT, &n, 8, 10000000, 0, "generated maps (0: as many as a test set)"}, SAMPLE_OPTS(so, sampler), OPT_END};
    lss_drv_cmd cmd = {"flowgen eval", "flowgen eval --model flow|diffusion | --samples FILE [--dir DIR] [options]",
                       "Generated maps against the first test set, and the second test set against the first (the noise floor): the\n"
                       "power spectrum (8 log bins from the fundamental to the Nyquist multipole, edges x 0.99 so that none is empty), 5 x 5 peak counts and the pixel PDF\n"
                       "(thresholds in units of the test set's pixel std), each as the relative difference of the means per bin with its\n"
                       "standard error; and the rows of lss_stat_compare (W1 of pixels and peaks, correlation matrices, SSIM, ...).\n"
                       "Writes DIR/MODEL/eval/{curves.csv, suite.csv, samples.npy, maps.png, ps.png, peaks.png}.",
                       "flowgen eval --dir out/flowgen --model diffusion --sampler ddim2 --sampler-steps 50"};
    lss_drv_parse(&cmd, opts, argc, argv);
    if (!model == !samples) lss_drv_die(2, "flowgen eval: give --model or --samples (one of them)");
    int kind = samples ? -1 : model_kind(model);
    if (samples) model = "samples";
    so.sampler = sampler_kind(sampler);
    if (so.nsteps == 0) so.nsteps = so.sampler == LSS_MM_DIFF_ANCESTRAL ? 1000 : 50;
    cfg c;
    cfg_load_args(&c, dir, argc, argv);
    int64_t na, nb, ng, d = (int64_t)c.side * c.side;
    float *A = load_set(dir, "test_a.npy", &na, c.side), *B = load_set(dir, "test_b.npy", &nb, c.side), *G = NULL;
    double spm = 0;
    if (samples) {
        G = load_maps(samples, &ng, c.side), n = (int)ng;
        if (ng < 8) lss_drv_die(2, "%s: %lld maps; the statistics need at least 8", samples, (long long)ng);
    }
    if (n == 0) n = (int)na;
    char od[4200], p[4400];
    snprintf(od, sizeof od, "%s/%s/eval", dir, model);
    lss_drv_outputs_begin(od, 1);
    if (!samples) {
        G = (float *)xcalloc(n * d, sizeof(float));
        fprintf(stderr, "flowgen eval: generating %d maps...\n", n);
        spm = generate(&c, dir, kind, &so, n, (uint64_t)1 << 32, G);
    }
    lss_grid *g;
    lss_drv_check(lss_grid_create(c.side, c.side, c.pix, &g), "grid");
    double ed[NPS + 1], thr[NPK + 1], hed[NPK + 1], mu, sd;
    lss_drv_check(lss_grid_ps_edges(g, NPS, ed), "multipole bins");
    for (int b = 0; b <= NPS; b++) ed[b] *= 0.99; /* log bins from just below the fundamental: none empty on small grids */
    mean_std(A, na * d, &mu, &sd);
    for (int b = 0; b <= NPK; b++) thr[b] = sd * (-1.0 + 6.0 * b / NPK), hed[b] = mu + sd * (-2.5 + 7.0 * b / NPK);
    summary sa, sb, sg;
    summarise(g, A, (int)na, ed, thr, hed, &sa), summarise(g, B, (int)nb, ed, thr, hed, &sb), summarise(g, G, n, ed, thr, hed, &sg);
    /* curves: per bin, generated and B relative to A, with standard errors */
    enum { NC = 9 };
    const char *cols[NC] = {"statistic", "bin", "x", "ref", "ref_se", "gen_rel", "gen_rel_se", "floor_rel", "floor_rel_se"};
    double rows[(NPS + 2 * NPK) * NC];
    int nr = 0;
    double worst_ps = 0, worst_pk = 0, floor_ps = 0, floor_pk = 0;
    for (int st = 0; st < 3; st++)
        for (int b = 0; b < (st ? NPK : NPS); b++) {
            const double *ra = st == 0 ? sa.ps : st == 1 ? sa.pk : sa.pdf, *rs = st == 0 ? sa.ps_se : st == 1 ? sa.pk_se : sa.pdf_se;
            const double *ga = st == 0 ? sg.ps : st == 1 ? sg.pk : sg.pdf, *gs = st == 0 ? sg.ps_se : st == 1 ? sg.pk_se : sg.pdf_se;
            const double *ba = st == 0 ? sb.ps : st == 1 ? sb.pk : sb.pdf, *bs = st == 0 ? sb.ps_se : st == 1 ? sb.pk_se : sb.pdf_se;
            double *r = rows + nr * NC;
            r[0] = st, r[1] = b, r[2] = st == 0 ? sa.ell[b] : st == 1 ? 0.5 * (thr[b] + thr[b + 1]) / sd : 0.5 * (hed[b] + hed[b + 1]);
            r[3] = ra[b], r[4] = rs[b];
            r[5] = ga[b] / ra[b] - 1, r[6] = fabs(ga[b] / ra[b]) * sqrt(pow(gs[b] / ga[b], 2) + pow(rs[b] / ra[b], 2));
            r[7] = ba[b] / ra[b] - 1, r[8] = fabs(ba[b] / ra[b]) * sqrt(pow(bs[b] / ba[b], 2) + pow(rs[b] / ra[b], 2));
            if (st == 0) worst_ps = fmax(worst_ps, fabs(r[5])), floor_ps = fmax(floor_ps, fabs(r[7]));
            /* peak counts where the test set has at least 0.5 peaks per map and bin (ra is a differential count per
               unit kappa: times the bin's width in kappa, peaks per map) */
            if (st == 1 && ra[b] * (thr[b + 1] - thr[b]) >= 0.5) worst_pk = fmax(worst_pk, fabs(r[5])), floor_pk = fmax(floor_pk, fabs(r[7]));
            nr++;
        }
    snprintf(p, sizeof p, "%s/curves.csv", od), lss_drv_check(lss_csv_write(p, NC, cols, nr, rows), p);
    /* the suite */
    lss_stat_compare_opts co;
    memset(&co, 0, sizeof co);
    co.seed = c.seed, co.stat.peaks = LSS_STAT_PEAKS_5X5, co.ell_edges = ed, co.nell = NPS;
    lss_stat_row sr[256], fr[256];
    int ns, nf;
    lss_drv_check(lss_stat_compare(g, G, n, A, (int)na, &co, sr, 256, &ns), "suite (generated)");
    lss_drv_check(lss_stat_compare(g, B, (int)nb, A, (int)na, &co, fr, 256, &nf), "suite (floor)");
    {
        lss_wfile wf;
        snprintf(p, sizeof p, "%s/suite.csv", od);
        lss_drv_check(lss_wfile_open(&wf, p), p);
        fprintf(wf.f, "statistic,generated,floor,scatter\n");
        for (int i = 0; i < ns && i < nf; i++) fprintf(wf.f, "%s,%.6g,%.6g,%.6g\n", sr[i].name, sr[i].value, fr[i].value, sr[i].scatter);
        lss_drv_check(lss_wfile_commit(&wf), p);
    }
    snprintf(p, sizeof p, "%s/samples.npy", od), lss_drv_check(lss_npy_save(p, LSS_F32, 3, (int64_t[]){n, c.side, c.side}, G), p);
    {
        float *row = (float *)xcalloc(6 * d, sizeof(float));
        const char *tt[6] = {"simulated", "simulated", "simulated", "generated", "generated", "generated"};
        memcpy(row, A, sizeof(float) * 3 * d), memcpy(row + 3 * d, G, sizeof(float) * (size_t)(n < 3 ? n : 3) * d);
        snprintf(p, sizeof p, "%s/maps.png", od), lss_drv_png_row(p, row, 6, c.side, tt, 0, 0), free(row);
        lss_plot_opts po = {0};
        const char *lab[3] = {"simulated A", "simulated B", kind == 1 ? "diffusion" : kind == 0 ? "flow" : "samples"};
        const double *yy[3] = {sa.ps, sb.ps, sg.ps};
        po.title = "power spectrum", po.xlabel = "ell", po.ylabel = "C_ell", po.logx = 1, po.logy = 1;
        snprintf(p, sizeof p, "%s/ps.png", od), lss_drv_check(lss_plot_lines(p, &po, 3, NPS, sa.ell, yy, lab), p);
        double xh[NPK];
        const double *yh[3] = {sa.pk, sb.pk, sg.pk};
        for (int b = 0; b < NPK; b++) xh[b] = 0.5 * (thr[b] + thr[b + 1]) / sd;
        po.title = "peak counts (5 x 5 maxima)", po.xlabel = "height / pixel std", po.ylabel = "peaks per map per unit kappa", po.logx = 0, po.logy = 0;
        snprintf(p, sizeof p, "%s/peaks.png", od), lss_drv_check(lss_plot_lines(p, &po, 3, NPK, xh, yh, lab), p);
    }
    char extra[512];
    snprintf(extra, sizeof extra, "\"model\": \"%s\", \"sampler\": \"%s\", \"sampler_steps\": %d, \"temperature\": %g, \"generated\": %d, "
             "\"seconds_per_sample\": %.5f, \"max_ps_rel\": %.4f, \"max_ps_rel_floor\": %.4f, \"max_peaks_rel\": %.4f, \"max_peaks_rel_floor\": %.4f",
             model, kind == 1 ? sampler : "-", so.nsteps, so.temperature, n, spm, worst_ps, floor_ps, worst_pk, floor_pk);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    printf("%s: %d maps (%.4f s each); largest |relative difference| per bin: power spectrum %.3f (floor %.3f), peak counts %.3f "
           "(floor %.3f)\n", model, n, spm, worst_ps, floor_ps, worst_pk, floor_pk);
    for (int b = 0; b < NPS; b++) printf("  ell %7.0f  C_ell gen/sim - 1 = %+.3f +- %.3f   (B/A - 1 = %+.3f)\n", rows[b * NC + 2], rows[b * NC + 5], rows[b * NC + 6], rows[b * NC + 7]);
    lss_grid_free(g), free(A), free(B), free(G);
    return 0;
}

int main(int argc, char **argv) {
    lss_drv_prog = "flowgen";
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "data")) return cmd_data(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bpd")) return cmd_bpd(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
    lss_drv_die(2, "unknown command '%s' (data, train, sample, bpd, eval; flowgen --help)", argv[1]);
    return 2;
}
