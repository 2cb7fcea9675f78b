/* cgan - the conditional WGAN-GP emulator of convergence maps (Perraudin et al. 2021): training maps on a
 * grid of (Omega_m, sigma_8), the regressor whose features give the Frechet score, the GAN, samples, the
 * validation suite at training and held-out cosmologies, and the latent interpolation figure. Wiring only:
 * the networks and the training iteration live in lss_nn.h (lss_cgan_*), the maps in lss_massmap.h
 * (lss_mm_kappa_draw), the statistics in lss_maps.h. See `cgan --help`. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "drivers/lss_driver.h"
#include <unistd.h>

static const char *usage_main =
    "usage: cgan COMMAND [options]   (cgan COMMAND --help for each)\n"
    "commands:\n"
    "  data         convergence maps on the (Omega_m, sigma_8) grid: training maps and test sets at every cosmology\n"
    "  train        the regressor (Frechet features), then the WGAN-GP (checkpoints, exact resume)\n"
    "  sample       N generated maps at one (Omega_m, sigma_8)\n"
    "  eval         the validation suite, generated vs simulated, at every training and held-out cosmology\n"
    "  interpolate  one latent, parameters varied smoothly (the paper's interpolation figure)\n"
    "Maps are NPY arrays [N, side, side] of convergence. --scale small: 32 x 32 maps of the paper's 2.34 arcmin pixels\n"
    "(1.25 x 1.25 deg) for this CPU; --scale paper: the paper's 128 x 128 maps over 5 x 5 deg and its networks (a GPU job).\n"
    "example: cgan data --dir out/cgan && cgan train --dir out/cgan && cgan eval --dir out/cgan\n";

#define OPT_END {NULL, LSS_DRV_STR, NULL, 0, 0, 0, NULL}
#define MAXCOS 128
static void *xcalloc(int64_t n, size_t sz) {
    void *p = calloc((size_t)(n > 0 ? n : 1), sz);
    return p ? p : (lss_drv_die(1, "out of memory"), NULL);
}

/* ---------------------------------------------------------------- configuration (scale presets) */
typedef struct {
    int paper, side, pad, ntrain, ntest, ncos, iters, reg_steps, batch, w0, nlatent;
    double pix, lr, reg_lr;
    int rmsprop, proj, shards;
    uint64_t seed;
    double om[MAXCOS], s8[MAXCOS];
    int split[MAXCOS];                 /* 0 training, 1 held-out inside the grid, 2 held-out outside */
    lss_drv_progress prog;
} cfg;
static const char *split_name[3] = {"train", "interp", "extrap"};

/* The grid: training cosmologies on a rectangle (5 x 5 small, 7 x 7 paper), held-out ones at cell centres
   (interpolation) and beyond the edges (extrapolation), as the paper's split of its 57 cosmologies. */
static void cfg_grid(cfg *c) {
    int n = c->paper ? 7 : 5, i, j, k = 0;
    double om0 = 0.20, om1 = 0.40, s0 = 0.60, s1 = 1.00;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++, k++) c->om[k] = om0 + (om1 - om0) * i / (n - 1), c->s8[k] = s0 + (s1 - s0) * j / (n - 1), c->split[k] = 0;
    double hom = (om1 - om0) / (n - 1) / 2, hs = (s1 - s0) / (n - 1) / 2;
    double ip[4][2] = {{om0 + hom, s0 + 3 * hs}, {om0 + 3 * hom, s1 - hs}, {om1 - 3 * hom, s0 + hs}, {om1 - hom, s1 - 3 * hs}};
    for (i = 0; i < 4; i++, k++) c->om[k] = ip[i][0], c->s8[k] = ip[i][1], c->split[k] = 1;
    c->om[k] = om1 + 2 * hom, c->s8[k] = (s0 + s1) / 2, c->split[k++] = 2;
    c->om[k] = (om0 + om1) / 2, c->s8[k] = s1 + 2 * hs, c->split[k++] = 2;
    c->ncos = k;
}
static void cfg_scale(cfg *c, const char *scale) {
    memset(c, 0, sizeof *c);
    c->seed = 1, c->pad = 4, c->pix = 5.0 * 60 / 128;
    if (!strcmp(scale, "paper"))
        c->paper = 1, c->side = 128, c->ntrain = 2000, c->ntest = 500, c->iters = 100000, c->reg_steps = 20000, c->batch = 64, c->w0 = 32,
        c->nlatent = 128, c->lr = 1e-5, c->reg_lr = 3e-5, c->rmsprop = 1;
    else if (!strcmp(scale, "small") || !strcmp(scale, "demo"))
        c->side = 32, c->ntrain = 1000, c->ntest = 400, c->iters = 2000, c->reg_steps = 3000, c->batch = 32, c->w0 = 16, c->nlatent = 64,
        c->lr = 1e-4, c->reg_lr = 3e-4, c->proj = 1;
    else lss_drv_die(2, "option --scale: '%s' is not small, demo or paper", scale);
    if (!strcmp(scale, "demo")) c->ntrain = 240, c->ntest = 120, c->iters = 150, c->reg_steps = 400, c->w0 = 8;
    cfg_grid(c);
}
/* The paper's networks (Tables A1, A2) for 128 x 128; the small scale drops one stage and halves the widths; the regressor
   is the critic without the parameters and with two outputs. */
static void cfg_nets(const cfg *c, lss_cgan_opts *o, lss_convnet_opts *reg) {
    memset(o, 0, sizeof *o);
    lss_drv_check(lss_cgan_opts_paper(c->side, c->paper ? 4 : 3, c->w0, c->paper ? 512 : 256, c->nlatent, o), "networks");
    *reg = o->critic, reg->nextra = 0, reg->nout = 2;
    o->critic.proj = c->proj;
    o->nparam = 2, o->lo[0] = c->om[0], o->hi[0] = c->om[c->paper ? 48 : 24], o->lo[1] = c->s8[0], o->hi[1] = c->s8[c->paper ? 48 : 24];
    o->batch = c->batch, o->seed = c->seed, o->shards = c->shards > 1 ? c->shards : 0;
    if (c->rmsprop) /* the paper's code: TensorFlow 1's RMSProp */
        o->opt_critic.kind = o->opt_gen.kind = LSS_OPT_RMSPROP, o->opt_critic.lr = o->opt_gen.lr = c->lr, o->opt_critic.rms_tf = o->opt_gen.rms_tf = 1;
    else o->opt_critic.lr = o->opt_gen.lr = c->lr, o->opt_critic.beta1 = o->opt_gen.beta1 = 0.5, o->opt_critic.beta2 = o->opt_gen.beta2 = 0.9;
}

/* DIR/data/info.csv holds what `data` used; the other commands read it. */
static const char *info_cols[] = {"paper", "side", "pix_arcmin", "pad", "ntrain", "ntest", "ncos", "seed", "w0", "nlatent"};
static void cfg_save(const cfg *c, const char *dir) {
    char p[4096];
    double row[10] = {c->paper, c->side, c->pix, c->pad, c->ntrain, c->ntest, c->ncos, (double)c->seed, c->w0, c->nlatent};
    snprintf(p, sizeof p, "%s/data/info.csv", dir), lss_drv_check(lss_csv_write(p, 10, info_cols, 1, row), p);
    double *cos = (double *)xcalloc(c->ncos * 4, sizeof(double));
    const char *cc[] = {"index", "omega_m", "sigma_8", "split"};
    for (int k = 0; k < c->ncos; k++) cos[4 * k] = k, cos[4 * k + 1] = c->om[k], cos[4 * k + 2] = c->s8[k], cos[4 * k + 3] = c->split[k];
    snprintf(p, sizeof p, "%s/data/cosmologies.csv", dir), lss_drv_check(lss_csv_write(p, 4, cc, c->ncos, cos), p), free(cos);
}
static void cfg_load(cfg *c, const char *dir, const char *scale) {
    char p[4096];
    lss_csv t;
    snprintf(p, sizeof p, "%s/data/info.csv", dir);
    if (access(p, R_OK)) lss_drv_die(2, "%s: no data set here (run cgan data --dir %s first)", p, dir);
    lss_drv_check(lss_csv_read(p, &t), p);
    for (int i = 0; i < 10; i++) if (lss_csv_col(&t, info_cols[i]) != i || t.nrows != 1) lss_drv_die(2, "%s: not a cgan info file", p);
    cfg_scale(c, t.data[0] ? "paper" : scale && !strcmp(scale, "demo") ? "demo" : "small");
    c->side = (int)t.data[1], c->pix = t.data[2], c->pad = (int)t.data[3], c->ntrain = (int)t.data[4], c->ntest = (int)t.data[5];
    c->seed = (uint64_t)t.data[7], c->w0 = (int)t.data[8], c->nlatent = (int)t.data[9];
    if ((int)t.data[6] != c->ncos || c->side < 8 || (c->side & (c->side - 1))) lss_drv_die(2, "%s: inconsistent with the grid of this program", p);
    lss_csv_free(&t);
}
static float *load_maps(const char *dir, const char *name, int64_t want, int side) {
    char p[4096];
    float *d;
    int nd;
    int64_t sh[LSS_MAX_DIM], n = 1;
    snprintf(p, sizeof p, "%s/data/%s", dir, name);
    lss_drv_check(lss_npy_load_f32(p, &d, &nd, sh), p);
    for (int i = 0; i < nd; i++) n *= sh[i];
    if (n != want * side * side || sh[nd - 1] != side) lss_drv_die(2, "%s: expected %lld maps of %d x %d", p, (long long)want, side, side);
    return d;
}

/* ---------------------------------------------------------------- data */
static int cmd_data(int argc, char **argv) {
    const char *dir = "out/cgan", *scale = "small";
    cfg c;
    cfg_scale(&c, "small");
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], "--scale")) cfg_scale(&c, argv[i + 1]);
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (maps go to DIR/data)"},
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small, demo or paper (sets the defaults below)"},
                          {"ntrain", LSS_DRV_INT, &c.ntrain, 8, 100000, 0, "training maps per training cosmology"},
                          {"ntest", LSS_DRV_INT, &c.ntest, 8, 100000, 0, "maps per test set (two independent sets per cosmology)"},
                          {"seed", LSS_DRV_U64, &c.seed, 0, 0, 0, "random seed"}, OPT_END};
    lss_drv_cmd cmd = {"cgan data", "cgan data [--dir DIR] [--scale small|demo|paper] [options]",
                       "Shifted lognormal convergence maps of the COSMOS-like source distribution (Halofit C_kk, shift = the empty-beam\n"
                       "convergence) cut out of fields 4 times larger, on the (Omega_m, sigma_8) grid: train.npy [N, side, side] with\n"
                       "train_params.npy [N, 2] at the training cosmologies; test.npy [ncos, 2 ntest, side, side] (two independent sets)\n"
                       "at every cosmology; cosmologies.csv (index, omega_m, sigma_8, split 0 train / 1 interp / 2 extrap); info.csv.",
                       "cgan data --dir out/cgan --scale small"};
    lss_drv_parse(&cmd, opts, argc, argv);
    int ntr = 0, d = c.side * c.side;
    for (int k = 0; k < c.ncos; k++) ntr += c.split[k] == 0;
    lss_drv_memory("the training and test maps", 4.0 * d * ((double)ntr * c.ntrain + 2.0 * c.ncos * c.ntest), "--ntrain or --ntest");
    char dd[3000];
    snprintf(dd, sizeof dd, "%s/data", dir), lss_drv_outputs_begin(dd, 1);
    float *tr = (float *)xcalloc((int64_t)ntr * c.ntrain * d, sizeof(float)), *te = (float *)xcalloc((int64_t)c.ncos * 2 * c.ntest * d, sizeof(float));
    float *tp = (float *)xcalloc((int64_t)ntr * c.ntrain * 2, sizeof(float));
    lss_drv_progress_init(&c.prog, "cgan data: cosmologies", c.ncos);
    for (int k = 0, it = 0; k < c.ncos; k++) {
        lss_params p;
        lss_mm_params_planck15(&p), p.omega_m = c.om[k], p.sigma_8 = c.s8[k];
        uint64_t base = (uint64_t)k << 24;
        lss_mm_kappa_gen *kg;
        lss_drv_check(lss_mm_kappa_gen_create(&p, "cosmos", c.side, c.pad, c.pix, &kg), "convergence model");
        if (c.split[k] == 0) {
            lss_drv_check(lss_mm_kappa_draw(kg, c.seed, lss_set_index(LSS_SET_TRAIN, base), c.ntrain, tr + (int64_t)it * c.ntrain * d), "training maps");
            for (int i = 0; i < c.ntrain; i++) tp[2 * ((int64_t)it * c.ntrain + i)] = (float)c.om[k], tp[2 * ((int64_t)it * c.ntrain + i) + 1] = (float)c.s8[k];
            it++;
        }
        lss_drv_check(lss_mm_kappa_draw(kg, c.seed, lss_set_index(LSS_SET_TEST, base), 2 * c.ntest, te + (int64_t)k * 2 * c.ntest * d), "test maps");
        lss_mm_kappa_gen_free(kg), lss_drv_progress_update(&c.prog, k + 1);
    }
    lss_drv_progress_end(&c.prog);
    char p[4096];
    snprintf(p, sizeof p, "%s/train.npy", dd), lss_drv_check(lss_npy_save(p, LSS_F32, 3, (int64_t[]){(int64_t)ntr * c.ntrain, c.side, c.side}, tr), p);
    snprintf(p, sizeof p, "%s/train_params.npy", dd), lss_drv_check(lss_npy_save(p, LSS_F32, 2, (int64_t[]){(int64_t)ntr * c.ntrain, 2}, tp), p);
    snprintf(p, sizeof p, "%s/test.npy", dd), lss_drv_check(lss_npy_save(p, LSS_F32, 4, (int64_t[]){c.ncos, 2 * c.ntest, c.side, c.side}, te), p);
    cfg_save(&c, dir);
    char extra[256];
    snprintf(extra, sizeof extra, "\"side\": %d, \"pixel_arcmin\": %g, \"cosmologies\": %d, \"training_cosmologies\": %d, \"data_set\": \"train+test\"",
             c.side, c.pix, c.ncos, ntr);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    fprintf(stderr, "cgan data: %d training maps at %d cosmologies, 2 x %d test maps at each of %d cosmologies in %s\n", ntr * c.ntrain, ntr,
            c.ntest, c.ncos, dd);
    free(tr), free(te), free(tp);
    return 0;
}

/* ---------------------------------------------------------------- training */
typedef struct {
    cfg *c;
    lss_cgan *m;
    const float *maps, *params;     /* training maps (network units) and their parameters */
    int64_t nmaps;
    float ylo[2], yhi[2];
    /* regressor */
    lss_store *rs;
    lss_optim *ro;
    lss_convnet reg;
    lss_graph *rg;
    const float *vmaps;             /* held-out maps (network units) and parameters for the regressor */
    float *vparams;
    int64_t nv;
    float *xb, *yb;
} trainer;
/* Batch k of step t (k = 1000: the regressor's): maps drawn uniformly, each under one of the 8 symmetries. */
static int gan_draw(void *u, int64_t t, int k, float *maps, float *y) {
    trainer *T = (trainer *)u;
    lss_rng r;
    int d = T->c->side * T->c->side;
    lss_rng_init(&r, T->c->seed, lss_stream(LSS_STREAM_BATCH, (uint64_t)t, (uint32_t)k));
    for (int b = 0; b < T->c->batch; b++) {
        int64_t j = (int64_t)(lss_rng_uniform(&r) * T->nmaps);
        j = j < T->nmaps ? j : T->nmaps - 1;
        lss_drv_sym_copy(T->maps + j * d, maps + (int64_t)b * d, T->c->side, lss_rng_below(&r, 8));
        y[2 * b] = T->params[2 * j], y[2 * b + 1] = T->params[2 * j + 1];
    }
    return LSS_OK;
}
static int gan_step(void *u, int64_t t, double *loss) {
    trainer *T = (trainer *)u;
    double st[5];
    int s = lss_cgan_step(T->m, t, gan_draw, T, st);
    loss[0] = st[0], loss[1] = st[4];
    return s;
}
static void progress(void *u, int64_t step, int64_t steps, const double *train, const double *valid) {
    (void)steps, (void)train, (void)valid;
    lss_drv_progress_update(&((trainer *)u)->c->prog, step);
}
/* Regressor targets: parameters scaled to [-1, 1] over the training grid. */
static void reg_target(const trainer *T, const float *y, float *t, int n) {
    for (int i = 0; i < 2 * n; i++) t[i] = 2 * (y[i] - T->ylo[i % 2]) / (T->yhi[i % 2] - T->ylo[i % 2]) - 1;
}
static int reg_step(void *u, int64_t t, double *loss) {
    trainer *T = (trainer *)u;
    int B = T->c->batch;
    float tg[2 * 256];
    gan_draw(T, t, 1000, T->xb, T->yb);
    reg_target(T, T->yb, tg, B);
    lss_graph_reset(T->rg), lss_graph_set_training(T->rg, 1);
    lss_tensor *o = lss_convnet_forward(T->rg, &T->reg, lss_view(T->rg, T->xb, 4, (int64_t[]){B, 1, T->c->side, T->c->side}), NULL, NULL);
    lss_tensor *l = lss_op_mse(T->rg, o, lss_view(T->rg, tg, 2, (int64_t[]){B, 2}));
    lss_store_zero_grad(T->rs);
    int s = lss_backward(T->rg, l);
    if (s) return s;
    loss[0] = l->data[0];
    return lss_optim_step(T->ro);
}
/* Regressor predictions (parameters) and features of n maps in network units. */
static int reg_predict(trainer *T, const float *x, int n, float *pred, double *feat) {
    int B = 64, d = T->c->side * T->c->side, nf = T->reg.o.width[T->reg.o.ndense - 1];
    lss_graph_set_training(T->rg, 0);
    for (int i0 = 0; i0 < n; i0 += B) {
        int nb = n - i0 < B ? n - i0 : B;
        lss_convnet_trace tr;
        lss_graph_reset(T->rg);
        lss_tensor *o = lss_convnet_forward(T->rg, &T->reg, lss_view(T->rg, (float *)x + (int64_t)i0 * d, 4, (int64_t[]){nb, 1, T->c->side, T->c->side}),
                                            NULL, &tr);
        if (!o) return lss_graph_status(T->rg);
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < 2; j++)
                if (pred) pred[2 * (i0 + i) + j] = (float)(T->ylo[j] + (o->data[2 * i + j] + 1) * (T->yhi[j] - T->ylo[j]) / 2);
        if (feat) for (int64_t q = 0; q < (int64_t)nb * nf; q++) feat[(int64_t)i0 * nf + q] = tr.feat->data[q];
    }
    return LSS_OK;
}
static int reg_eval(void *u, double *loss) {
    trainer *T = (trainer *)u;
    float *pr = (float *)xcalloc(2 * T->nv, sizeof(float)), *tp = (float *)xcalloc(2 * T->nv, sizeof(float));
    int s = reg_predict(T, T->vmaps, (int)T->nv, pr, NULL);
    reg_target(T, pr, pr, (int)T->nv), reg_target(T, T->vparams, tp, (int)T->nv);
    double sum = 0;
    for (int64_t i = 0; i < 2 * T->nv; i++) sum += (double)(pr[i] - tp[i]) * (pr[i] - tp[i]);
    loss[0] = sum / (2 * T->nv);
    free(pr), free(tp);
    return s;
}
/* Sets up everything a command needs from DIR: config, GAN, regressor, network-unit transform. */
static void trainer_open(trainer *T, cfg *c, lss_cgan *m, const char *dir, int need_ckpt) {
    lss_cgan_opts o;
    lss_convnet_opts ro;
    lss_optim_opts oo = {0};
    char p[4096];
    memset(T, 0, sizeof *T);
    T->c = c, T->m = m;
    cfg_nets(c, &o, &ro);
    lss_drv_check(lss_cgan_init(m, &o), "cgan");
    lss_drv_check(lss_store_create(lss_stream(LSS_STREAM_NET_INIT, c->seed, 2), &T->rs), "regressor");
    lss_drv_check(lss_convnet_init(&T->reg, T->rs, "regressor", &ro), "regressor");
    oo.lr = c->reg_lr;
    lss_drv_check(lss_optim_create(T->rs, &oo, &T->ro), "regressor"), lss_drv_check(lss_graph_create(&T->rg), "regressor");
    T->ylo[0] = (float)o.lo[0], T->yhi[0] = (float)o.hi[0], T->ylo[1] = (float)o.lo[1], T->yhi[1] = (float)o.hi[1];
    T->xb = (float *)xcalloc((int64_t)c->batch * c->side * c->side, sizeof(float)), T->yb = (float *)xcalloc(2 * c->batch, sizeof(float));
    if (need_ckpt) {
        snprintf(p, sizeof p, "%s/gen.ckpt", dir);
        if (access(p, R_OK)) lss_drv_die(2, "%s: no trained generator (run cgan train --dir %s)", p, dir);
        lss_drv_check(lss_ckpt_load(p, m->sg, NULL), p);
        snprintf(p, sizeof p, "%s/regressor.ckpt", dir);
        lss_drv_check(lss_ckpt_load_best(p, T->rs, NULL), p);
    }
}
static void trainer_close(trainer *T) {
    lss_cgan_free(T->m), lss_optim_free(T->ro), lss_store_free(T->rs), lss_graph_free(T->rg), free(T->xb), free(T->yb);
}

static int cmd_train(int argc, char **argv) {
    const char *dir = "out/cgan", *what = "all", *scale = "small";
    int resume = 0, every = 100, rmsprop = -1, proj = -1, shards = 0;
    cfg c;
    cfg_scale(&c, "small");
    int help = 0;
    for (int i = 1; i < argc; i++) help |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], "--dir")) dir = argv[i + 1]; else if (!strcmp(argv[i], "--scale")) scale = argv[i + 1];
    if (!help) cfg_load(&c, dir, scale); /* the defaults the data set implies (--help shows the scale's) */
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (from cgan data)"},
                          {"scale", LSS_DRV_STR, &scale, 0, 0, 0, "small or demo: the step counts below (paper data sets read as paper)"},
                          {"what", LSS_DRV_STR, &what, 0, 0, 0, "all, regressor or gan"},
                          {"iterations", LSS_DRV_INT, &c.iters, 1, 100000000, 0, "generator iterations (each after n_critic = 5 critic steps)"},
                          {"regressor-steps", LSS_DRV_INT, &c.reg_steps, 1, 100000000, 0, "regressor training steps"},
                          {"batch", LSS_DRV_INT, &c.batch, 1, 256, 0, "maps per step"},
                          {"lr", LSS_DRV_DOUBLE, &c.lr, 1e-8, 1, 0, "GAN learning rate"},
                          {"rmsprop", LSS_DRV_INT, &rmsprop, -1, 1, 0, "1: RMSProp in TensorFlow 1's form (the paper's), 0: Adam (0.5, 0.9); -1: the scale's"},
                          {"proj", LSS_DRV_INT, &proj, -1, 1, 0, "1: projection conditioning in the critic, 0: the paper's concatenation only; -1: the scale's (1; paper 0)"},
                          {"checkpoint-every", LSS_DRV_INT, &every, 1, 1000000, 0, "checkpoint and loss row every N iterations"},
                          {"resume", LSS_DRV_FLAG, &resume, 0, 0, 0, "continue from the checkpoints in DIR"},
                          {"shards", LSS_DRV_INT, &shards, 0, 256, 0, "GAN: data-parallel shards of each batch (0: 1, or the ranks under mpirun; "
                           "the same shards train bitwise the same at any rank count)"}, OPT_END};
    lss_drv_cmd cmd = {"cgan train", "cgan train [--dir DIR] [options]",
                       "Trains the regressor (MSE on parameters scaled to [-1, 1], Adam; held-out loss on the first test set of the training\n"
                       "cosmologies, best kept) and the conditional WGAN-GP (gradient penalty 10, 5 critic steps per generator step, latent\n"
                       "rescaled by eq. 2, random transpositions and flips). Writes regressor.ckpt, critic.ckpt, gen.ckpt, loss_regressor.csv,\n"
                       "loss_gan.csv, run.json in DIR.",
                       "cgan train --dir out/cgan --iterations 2000"};
    lss_drv_parse(&cmd, opts, argc, argv);
    if (rmsprop >= 0) c.rmsprop = rmsprop;
    if (proj >= 0) c.proj = proj;
    c.shards = shards ? shards : lss_mpi_size();
    if (c.shards > c.batch) c.shards = c.batch;
    int do_reg = !strcmp(what, "all") || !strcmp(what, "regressor"), do_gan = !strcmp(what, "all") || !strcmp(what, "gan");
    if (!do_reg && !do_gan) lss_drv_die(2, "option --what: '%s' is not all, regressor or gan", what);
    trainer T;
    lss_cgan m;
    trainer_open(&T, &c, &m, dir, 0);
    int ntr = 0, d = c.side * c.side;
    for (int k = 0; k < c.ncos; k++) ntr += c.split[k] == 0;
    float *tr = load_maps(dir, "train.npy", (int64_t)ntr * c.ntrain, c.side), *te = load_maps(dir, "test.npy", (int64_t)c.ncos * 2 * c.ntest, c.side);
    char p[4096];
    int nd, bad = 0;
    int64_t sh[LSS_MAX_DIM];
    float *tp = NULL;
    snprintf(p, sizeof p, "%s/data/train_params.npy", dir), lss_drv_check(lss_npy_load_f32(p, &tp, &nd, sh), p);
    if (nd != 2 || sh[0] != (int64_t)ntr * c.ntrain || sh[1] != 2) lss_drv_die(2, "%s: expected [%d, 2]", p, ntr * c.ntrain);
    /* network units: kappa / scale + offset, scale = the training maps' pixel std, offset putting their minimum at 0.5 */
    double s1 = 0, s2 = 0, mn = 1e30;
    int64_t ntot = (int64_t)ntr * c.ntrain * d;
    for (int64_t i = 0; i < ntot; i++) s1 += tr[i], s2 += (double)tr[i] * tr[i], mn = tr[i] < mn ? tr[i] : mn, bad |= !isfinite(tr[i]);
    if (bad || !(s2 > 0)) lss_drv_die(2, "%s/data/train.npy: the maps hold a non-finite value or are all zero", dir);
    double sd = sqrt(s2 / ntot - (s1 / ntot) * (s1 / ntot));
    m.xform->data[0] = (float)sd, m.xform->data[1] = (float)(0.5 - mn / sd);
    lss_cgan_from_kappa(&m, tr, ntot);
    T.maps = tr, T.params = tp, T.nmaps = (int64_t)ntr * c.ntrain;
    /* the regressor's held-out set: the first test set of every training cosmology */
    T.nv = (int64_t)ntr * c.ntest;
    float *vm = (float *)xcalloc(T.nv * d, sizeof(float));
    T.vparams = (float *)xcalloc(2 * T.nv, sizeof(float));
    for (int k = 0, it = 0; k < c.ncos; k++)
        if (c.split[k] == 0) {
            memcpy(vm + (int64_t)it * c.ntest * d, te + (int64_t)k * 2 * c.ntest * d, sizeof(float) * c.ntest * d);
            for (int i = 0; i < c.ntest; i++) T.vparams[2 * ((int64_t)it * c.ntest + i)] = (float)c.om[k], T.vparams[2 * ((int64_t)it * c.ntest + i) + 1] = (float)c.s8[k];
            it++;
        }
    lss_cgan_from_kappa(&m, vm, T.nv * d);
    T.vmaps = vm;
    lss_drv_outputs_begin(dir, 0);
    lss_train_result res = {0}, gres = {0};
    if (do_reg) {
        char ck[4096], lc[4096];
        snprintf(ck, sizeof ck, "%s/regressor.ckpt", dir), snprintf(lc, sizeof lc, "%s/loss_regressor.csv", dir);
        lss_train_net net = {"regressor", T.rs, T.ro, ck};
        lss_train_opts to = {.steps = c.reg_steps, .eval_every = every, .ckpt_every = every, .loss_csv = lc, .resume = resume, .keep_best = 1,
                             .step = reg_step, .eval = reg_eval, .progress = progress, .user = &T};
        lss_drv_progress_init(&c.prog, "cgan train: regressor steps", c.reg_steps);
        lss_drv_check(lss_train(&net, 1, &to, &res), "regressor training");
        lss_drv_progress_end(&c.prog);
        double vl;
        reg_eval(&T, &vl);
        fprintf(stderr, "cgan train: regressor held-out MSE %.4g (parameters scaled to [-1, 1]; best at step %lld)\n", vl, (long long)res.best_step);
    }
    if (do_gan) {
        char ck1[4096], ck2[4096], lc[4096];
        snprintf(ck1, sizeof ck1, "%s/critic.ckpt", dir), snprintf(ck2, sizeof ck2, "%s/gen.ckpt", dir), snprintf(lc, sizeof lc, "%s/loss_gan.csv", dir);
        lss_train_net nets[2] = {{"critic", m.sc, m.oc, ck1}, {"generator", m.sg, m.og, ck2}};
        int sub[2] = {m.o.n_critic, 1};
        lss_train_opts to = {.steps = c.iters, .eval_every = every, .ckpt_every = every, .loss_csv = lc, .resume = resume, .substeps = sub, .step = gan_step,
                             .progress = progress, .user = &T};
        lss_drv_progress_init(&c.prog, "cgan train: generator iterations", c.iters);
        lss_drv_check(lss_train(nets, 2, &to, &gres), "GAN training");
        lss_drv_progress_end(&c.prog);
        fprintf(stderr, "cgan train: %lld iterations, %.3f s each (%d critic steps + 1 generator step, batch %d)\n", (long long)gres.steps_done,
                gres.seconds_step / (double)(gres.steps_done - c.prog.base > 0 ? gres.steps_done - c.prog.base : 1), m.o.n_critic, c.batch);
    }
    char extra[512];
    snprintf(extra, sizeof extra, "\"iterations\": %d, \"regressor_steps\": %d, \"batch\": %d, \"lr\": %g, \"optimizer\": \"%s\", \"critic_projection\": %d, "
             "\"seconds_gan\": %.1f, \"seconds_regressor\": %.1f, \"xform_scale\": %g, \"xform_offset\": %g", c.iters, c.reg_steps, c.batch, c.lr,
             c.rmsprop ? "rmsprop" : "adam", c.proj,
             gres.seconds, res.seconds, m.xform->data[0], m.xform->data[1]);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    free(tr), free(te), free(tp), free(vm), free(T.vparams), trainer_close(&T);
    return 0;
}

/* ---------------------------------------------------------------- sampling and pictures */
static int cmd_sample(int argc, char **argv) {
    const char *dir = "out/cgan", *out = NULL;
    double om = 0.3, s8 = 0.8;
    int n = 16;
    uint64_t index = 0;
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"},
                          {"omega-m", LSS_DRV_DOUBLE, &om, 0.05, 1, 0, "Omega_m"}, {"sigma-8", LSS_DRV_DOUBLE, &s8, 0.2, 2, 0, "sigma_8"},
                          {"n", LSS_DRV_INT, &n, 1, 1000000, 0, "maps"}, {"index", LSS_DRV_U64, &index, 0, 0, 0, "latent index of the first map"},
                          {"out", LSS_DRV_STR, &out, 0, 0, 1, "output NPY [n, side, side] of convergence (and a PNG of the first maps beside it)"}, OPT_END};
    lss_drv_cmd cmd = {"cgan sample", "cgan sample --out FILE.npy [--omega-m X --sigma-8 Y --n N]",
                       "Generated convergence maps at one cosmology (latents from the seed's stream, map i from index + i).",
                       "cgan sample --dir out/cgan --omega-m 0.3 --sigma-8 0.8 --n 16 --out samples.npy"};
    lss_drv_parse(&cmd, opts, argc, argv);
    cfg c;
    trainer T;
    lss_cgan m;
    cfg_load(&c, dir, NULL), trainer_open(&T, &c, &m, dir, 1);
    int d = c.side * c.side;
    float *x = (float *)xcalloc((int64_t)n * d, sizeof(float)), *y = (float *)xcalloc(2 * n, sizeof(float));
    for (int i = 0; i < n; i++) y[2 * i] = (float)om, y[2 * i + 1] = (float)s8;
    lss_drv_outputs_files(out, NULL);
    lss_drv_check(lss_cgan_generate(&m, NULL, y, n, index, x), "generating");
    lss_cgan_to_kappa(&m, x, (int64_t)n * d);
    lss_drv_check(lss_npy_save(out, LSS_F32, 3, (int64_t[]){n, c.side, c.side}, x), out);
    char png[4096], t[4][48];
    const char *tt[4] = {t[0], t[1], t[2], t[3]};
    for (int i = 0; i < 4; i++) snprintf(t[i], 48, "Om %.3g s8 %.3g #%d", om, s8, i);
    snprintf(png, sizeof png, "%s.png", out);
    lss_drv_png_row(png, x, n < 4 ? n : 4, c.side, tt, 0, 0);
    lss_drv_outputs_done(argc, argv, c.seed, NULL);
    fprintf(stderr, "cgan sample: %d maps at Omega_m %g, sigma_8 %g -> %s\n", n, om, s8, out);
    free(x), free(y), trainer_close(&T);
    return 0;
}
static int cmd_interpolate(int argc, char **argv) {
    const char *dir = "out/cgan", *out = NULL;
    int n = 6;
    uint64_t index = 0;
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"},
                          {"n", LSS_DRV_INT, &n, 2, 64, 0, "steps along each parameter"}, {"index", LSS_DRV_U64, &index, 0, 0, 0, "latent index"},
                          {"out", LSS_DRV_STR, &out, 0, 0, 0, "output directory (default DIR/interpolate)"}, OPT_END};
    lss_drv_cmd cmd = {"cgan interpolate", "cgan interpolate [--dir DIR] [--n N]",
                       "One latent, sigma_8 varied over the training range at the middle Omega_m, then Omega_m at the middle sigma_8:\n"
                       "interp_sigma8.npy, interp_omegam.npy [n, side, side] and their PNG rows (the paper's interpolation figure).",
                       "cgan interpolate --dir out/cgan --n 6"};
    lss_drv_parse(&cmd, opts, argc, argv);
    cfg c;
    trainer T;
    lss_cgan m;
    char od[3000], p[4096];
    cfg_load(&c, dir, NULL), trainer_open(&T, &c, &m, dir, 1);
    snprintf(od, sizeof od, "%s", out ? out : dir), out || strcat(od, "/interpolate");
    lss_drv_outputs_begin(od, 1);
    int d = c.side * c.side;
    float *z = (float *)xcalloc((int64_t)n * c.nlatent, sizeof(float)), *y = (float *)xcalloc(2 * n, sizeof(float)), *x = (float *)xcalloc((int64_t)n * d, sizeof(float));
    char (*t)[48] = xcalloc(n, 48);
    const char **tt = xcalloc(n, sizeof(char *));
    lss_rng r;
    lss_rng_init(&r, c.seed, lss_stream(LSS_STREAM_GAN, lss_set_index(LSS_SET_TEST, index), 0));
    for (int q = 0; q < c.nlatent; q++) z[q] = (float)lss_rng_normal(&r);
    for (int which = 0; which < 2; which++) {
        for (int i = 0; i < n; i++) {
            double f = (double)i / (n - 1);
            memcpy(z + (int64_t)i * c.nlatent, z, sizeof(float) * c.nlatent);
            y[2 * i] = (float)(which ? m.o.lo[0] + f * (m.o.hi[0] - m.o.lo[0]) : (m.o.lo[0] + m.o.hi[0]) / 2);
            y[2 * i + 1] = (float)(which ? (m.o.lo[1] + m.o.hi[1]) / 2 : m.o.lo[1] + f * (m.o.hi[1] - m.o.lo[1]));
            snprintf(t[i], 48, which ? "Om %.3f" : "s8 %.3f", which ? y[2 * i] : y[2 * i + 1]), tt[i] = t[i];
        }
        lss_drv_check(lss_cgan_generate(&m, z, y, n, 0, x), "generating");
        lss_cgan_to_kappa(&m, x, (int64_t)n * d);
        snprintf(p, sizeof p, "%s/interp_%s.npy", od, which ? "omegam" : "sigma8"), lss_drv_check(lss_npy_save(p, LSS_F32, 3, (int64_t[]){n, c.side, c.side}, x), p);
        snprintf(p, sizeof p, "%s/interp_%s.png", od, which ? "omegam" : "sigma8"), lss_drv_png_row(p, x, n, c.side, tt, 0, 0);
    }
    lss_drv_outputs_done(argc, argv, c.seed, NULL);
    fprintf(stderr, "cgan interpolate: 2 x %d maps in %s\n", n, od);
    free(z), free(y), free(x), free(t), free(tt), trainer_close(&T);
    return 0;
}

/* ---------------------------------------------------------------- evaluation */
enum { NPS = 6, NPIX = 18, NPK = 12 };
typedef struct { double ps, pix, peak, w1pix, w1peak, frechet, ssim, corr, bisp, mink; } scores;
static int feat_cb(void *u, const float *maps, int n, int h, int w, double *feat) {
    trainer *T = (trainer *)u;
    float *x = (float *)xcalloc((int64_t)n * h * w, sizeof(float));
    memcpy(x, maps, sizeof(float) * (size_t)n * h * w), lss_cgan_from_kappa(T->m, x, (int64_t)n * h * w);
    int s = reg_predict(T, x, n, NULL, feat);
    free(x);
    return s;
}
/* Largest relative difference of mean histograms where the reference bin holds >= 1% of its counts. */
static double hist_err(const double *a, const double *b, const double *w, int nb) {
    double tot = 0, e = 0;
    for (int i = 0; i < nb; i++) tot += b[i] * w[i];
    for (int i = 0; i < nb; i++)
        if (b[i] * w[i] >= 0.01 * tot && fabs(a[i] / b[i] - 1) > e) e = fabs(a[i] / b[i] - 1);
    return e;
}
/* Set a against the reference b (n maps each); mean spectra, histograms for the figures into ps/hp/hk (a's). */
static int64_t ssim_pairs = 200;
static void score(trainer *T, const lss_grid *g, const float *a, const float *b, int n, const double *edges, scores *sc, double *ps, double *hp,
                  double *hk, double *ell) {
    double pa[NPS], pb[NPS], ea[NPIX + 1], ek[NPK + 1], wa[NPIX], wk[NPK], ha[NPIX], hb[NPIX], ka[NPK], kb[NPK], mu = 0, sd = 0;
    int64_t np = (int64_t)n * lss_grid_npix(g);
    lss_stat_opts po = {0};
    for (int64_t i = 0; i < np; i++) mu += b[i], sd += (double)b[i] * b[i];
    mu /= np, sd = sqrt(sd / np - mu * mu);
    for (int i = 0; i <= NPIX; i++) ea[i] = mu + sd * (-3 + 9.0 * i / NPIX);
    for (int i = 0; i <= NPK; i++) ek[i] = mu + sd * (-1 + 6.0 * i / NPK);
    for (int i = 0; i < NPIX; i++) wa[i] = 1;
    for (int i = 0; i < NPK; i++) wk[i] = ek[i + 1] - ek[i];
    po.peaks = LSS_STAT_PEAKS_5X5;
    lss_drv_check(lss_stat_ps(g, a, n, edges, NPS, NULL, ell, NULL, pa, NULL), "spectra"), lss_drv_check(lss_stat_ps(g, b, n, edges, NPS, NULL, NULL, NULL, pb, NULL), "spectra");
    lss_drv_check(lss_stat_hist(g, a, n, ea, NPIX, NULL, NULL, ha, NULL), "histogram"), lss_drv_check(lss_stat_hist(g, b, n, ea, NPIX, NULL, NULL, hb, NULL), "histogram");
    lss_drv_check(lss_stat_peak_counts(g, a, n, ek, NPK, &po, NULL, ka, NULL), "peaks"), lss_drv_check(lss_stat_peak_counts(g, b, n, ek, NPK, &po, NULL, kb, NULL), "peaks");
    sc->ps = 0;
    for (int i = 0; i < NPS; i++) sc->ps = fmax(sc->ps, fabs(pa[i] / pb[i] - 1));
    sc->pix = hist_err(ha, hb, wa, NPIX), sc->peak = hist_err(ka, kb, wk, NPK);
    if (ps) memcpy(ps, pa, sizeof pa), memcpy(hp, ha, sizeof ha), memcpy(hk, ka, sizeof ka);
    lss_stat_compare_opts co = {0};
    lss_stat_row rows[256];
    int nr;
    co.stat.peaks = LSS_STAT_PEAKS_5X5, co.ssim_pairs = ssim_pairs, co.ell_edges = edges, co.nell = NPS, co.seed = T->c->seed, co.features = feat_cb, co.features_user = T;
    co.nfeatures = T->reg.o.width[T->reg.o.ndense - 1];
    lss_drv_check(lss_stat_compare(g, a, n, b, n, &co, rows, 256, &nr), "comparison");
    sc->w1pix = sc->w1peak = sc->frechet = sc->ssim = sc->corr = NAN, sc->bisp = sc->mink = 0;
    for (int i = 0; i < nr; i++) {
        if (!strcmp(rows[i].name, "w1_pixels")) sc->w1pix = rows[i].value;
        if (!strcmp(rows[i].name, "w1_peaks")) sc->w1peak = rows[i].value;
        if (!strcmp(rows[i].name, "frechet_features")) sc->frechet = rows[i].value;
        if (!strcmp(rows[i].name, "ssim_significance")) sc->ssim = rows[i].value;
        if (!strcmp(rows[i].name, "corr_frac")) sc->corr = rows[i].value;
        double z = rows[i].scatter > 0 ? fabs(rows[i].value / rows[i].scatter) : 0; /* (mean_a - mean_b) / std_b: these cross zero */
        if (!strncmp(rows[i].name, "bisp_rel", 8) || !strncmp(rows[i].name, "mink_", 5)) rows[i].name[0] == 'b' ? (sc->bisp = fmax(sc->bisp, z)) : (sc->mink = fmax(sc->mink, z));
    }
}
static double corr(const double *x, const double *y, int64_t n) {
    double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (int64_t i = 0; i < n; i++) mx += x[i], my += y[i];
    mx /= n, my /= n;
    for (int64_t i = 0; i < n; i++) sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx), syy += (y[i] - my) * (y[i] - my);
    return sxy / sqrt(sxx * syy);
}
static int cmd_eval(int argc, char **argv) {
    const char *dir = "out/cgan";
    int n = 0;
    lss_drv_opt opts[] = {{"dir", LSS_DRV_STR, &dir, 0, 0, 0, "experiment directory (trained)"},
                          {"n", LSS_DRV_INT, &n, 0, 1000000, 0, "maps per set (0: the data set's ntest)"},
                          {"ssim-pairs", LSS_DRV_U64, &ssim_pairs, 1, 1e9, 0, "map pairs per set for the SSIM significance"}, OPT_END};
    lss_drv_cmd cmd = {"cgan eval", "cgan eval [--dir DIR] [--n N]",
                       "At every cosmology: n generated maps and two independent simulated sets A, B; generated vs A and, as the noise\n"
                       "floor, B vs A: largest relative error of the mean power spectrum (6 log bins, fundamental to Nyquist), of the pixel\n"
                       "and 5 x 5 peak histograms (bins holding >= 1% of A's counts), the folded bispectrum's and the Minkowski functionals' (13\n"
                       "thresholds) largest difference of means in units of A's per-map std (they cross zero), W1 of pixels and peaks, sqrt Frechet distance of the\n"
                       "regressor's last hidden features, SSIM significance (eq. 4), correlation-matrix distance (eq. 3); regressor\n"
                       "predictions on generated and simulated maps. Writes DIR/eval/eval.csv, table.md, ps_*.png, peaks_*.png, maps_*.png.",
                       "cgan eval --dir out/cgan"};
    lss_drv_parse(&cmd, opts, argc, argv);
    cfg c;
    trainer T;
    lss_cgan m;
    cfg_load(&c, dir, NULL), trainer_open(&T, &c, &m, dir, 1);
    if (n == 0 || n > c.ntest) n = c.ntest;
    int d = c.side * c.side, ncol = 28;
    float *te = load_maps(dir, "test.npy", (int64_t)c.ncos * 2 * c.ntest, c.side), *gm = (float *)xcalloc((int64_t)n * d, sizeof(float));
    float *y = (float *)xcalloc(2 * n, sizeof(float)), *pr = (float *)xcalloc(2 * n, sizeof(float));
    double *rows = (double *)xcalloc(c.ncos * ncol, sizeof(double)), edges[NPS + 1], ell[NPS];
    double *req = (double *)xcalloc(4 * (int64_t)c.ncos * n, sizeof(double)), *got = req + 2 * (int64_t)c.ncos * n, *gots = (double *)xcalloc(2 * (int64_t)c.ncos * n, sizeof(double));
    lss_grid *g;
    char od[3000], p[4096];
    snprintf(od, sizeof od, "%s/eval", dir);
    lss_drv_outputs_begin(od, 1);
    lss_drv_check(lss_grid_create(c.side, c.side, c.pix, &g), "grid"), lss_drv_check(lss_grid_ps_edges(g, NPS, edges), "edges");
    lss_drv_progress_init(&c.prog, "cgan eval: cosmologies", c.ncos);
    int fig = 0;
    for (int k = 0; k < c.ncos; k++) {
        const float *A = te + (int64_t)k * 2 * c.ntest * d, *B = A + (int64_t)c.ntest * d;
        scores sg, sf;
        double ps[3][NPS], hp[3][NPIX], hk[3][NPK];
        for (int i = 0; i < n; i++) y[2 * i] = (float)c.om[k], y[2 * i + 1] = (float)c.s8[k];
        lss_drv_check(lss_cgan_generate(&m, NULL, y, n, (uint64_t)k << 24, gm), "generating");
        lss_drv_check(reg_predict(&T, gm, n, pr, NULL), "regressor");
        for (int i = 0; i < n; i++)
            for (int j = 0; j < 2; j++) req[2 * ((int64_t)k * n + i) + j] = j ? c.s8[k] : c.om[k], got[2 * ((int64_t)k * n + i) + j] = pr[2 * i + j];
        double mp[4] = {0};
        for (int i = 0; i < n; i++) mp[0] += pr[2 * i] / n, mp[1] += pr[2 * i + 1] / n;
        lss_cgan_to_kappa(&m, gm, (int64_t)n * d);
        { /* the regressor on simulated maps of set B */
            float *xb = (float *)xcalloc((int64_t)n * d, sizeof(float));
            memcpy(xb, B, sizeof(float) * (size_t)n * d), lss_cgan_from_kappa(&m, xb, (int64_t)n * d);
            lss_drv_check(reg_predict(&T, xb, n, pr, NULL), "regressor"), free(xb);
            for (int i = 0; i < n; i++) mp[2] += pr[2 * i] / n, mp[3] += pr[2 * i + 1] / n, gots[2 * ((int64_t)k * n + i)] = pr[2 * i], gots[2 * ((int64_t)k * n + i) + 1] = pr[2 * i + 1];
        }
        score(&T, g, gm, A, n, edges, &sg, ps[0], hp[0], hk[0], ell);
        score(&T, g, B, A, n, edges, &sf, ps[1], hp[1], hk[1], NULL);
        double *r = rows + (int64_t)k * ncol, v[28] = {k, c.om[k], c.s8[k], c.split[k], sg.ps, sf.ps, sg.pix, sf.pix, sg.peak, sf.peak, sg.w1pix, sf.w1pix,
                                                       sg.w1peak, sf.w1peak, sg.frechet, sf.frechet, sg.ssim, sf.ssim, sg.corr, sf.corr, mp[0], mp[1], mp[2], mp[3],
                                                       sg.bisp, sf.bisp, sg.mink, sf.mink};
        memcpy(r, v, sizeof v);
        if (c.split[k] || k == 0 || k == c.ncos / 2 - 3) { /* figures at two training and every held-out cosmology */
            const double *yy[4] = {ps[0], ps[1]};
            const char *lab[2] = {"generated", "simulated (set B)"}, *tt[4] = {"simulated A", "simulated B", "generated", "generated"};
            lss_plot_opts po = {0};
            char ti[128];
            snprintf(ti, sizeof ti, "Omega_m %.3f sigma_8 %.3f (%s): mean C_ell", c.om[k], c.s8[k], split_name[c.split[k]]);
            po.title = ti, po.xlabel = "ell", po.ylabel = "C_ell", po.logx = po.logy = 1;
            snprintf(p, sizeof p, "%s/ps_%02d.png", od, k), lss_drv_check(lss_plot_lines(p, &po, 2, NPS, ell, yy, lab), p);
            double xh[NPK], *yh[2] = {hk[0], hk[1]};
            for (int i = 0; i < NPK; i++) xh[i] = i;
            po.title = "peak counts (5 x 5 maxima), bins -1..5 sigma of A", po.xlabel = "bin", po.ylabel = "peaks per map per unit kappa", po.logx = 0;
            snprintf(p, sizeof p, "%s/peaks_%02d.png", od, k), lss_drv_check(lss_plot_lines(p, &po, 2, NPK, xh, (const double *const *)yh, lab), p);
            float *row = (float *)xcalloc(4 * d, sizeof(float));
            memcpy(row, A, sizeof(float) * d), memcpy(row + d, B, sizeof(float) * d), memcpy(row + 2 * d, gm, sizeof(float) * 2 * d);
            snprintf(p, sizeof p, "%s/maps_%02d.png", od, k), lss_drv_png_row(p, row, 4, c.side, tt, 0, 0), free(row);
            fig++;
        }
        lss_drv_progress_update(&c.prog, k + 1);
    }
    lss_drv_progress_end(&c.prog);
    const char *hdr[28] = {"index", "omega_m", "sigma_8", "split", "ps_err", "ps_err_floor", "pix_err", "pix_err_floor", "peak_err", "peak_err_floor",
                           "w1_pixels", "w1_pixels_floor", "w1_peaks", "w1_peaks_floor", "frechet", "frechet_floor", "ssim_signif", "ssim_signif_floor",
                           "corr_frac", "corr_frac_floor", "pred_om_gen", "pred_s8_gen", "pred_om_sim", "pred_s8_sim",
                           "bisp_nsd", "bisp_nsd_floor", "mink_nsd", "mink_nsd_floor"};
    snprintf(p, sizeof p, "%s/eval.csv", od), lss_drv_check(lss_csv_write(p, ncol, hdr, c.ncos, rows), p);
    /* the regressor's response: per-map correlation of predictions with the requested parameters, over every cosmology */
    int64_t nt = (int64_t)c.ncos * n;
    double *a0 = (double *)xcalloc(nt, sizeof(double)), *a1 = (double *)xcalloc(nt, sizeof(double)), cg[2], cs[2], cmg[2], cms[2], rmse[2] = {0, 0};
    for (int j = 0; j < 2; j++) {
        for (int64_t i = 0; i < nt; i++) a0[i] = req[2 * i + j], a1[i] = got[2 * i + j];
        cg[j] = corr(a0, a1, nt);
        for (int64_t i = 0; i < nt; i++) a1[i] = gots[2 * i + j], rmse[j] += (a1[i] - a0[i]) * (a1[i] - a0[i]) / nt;
        cs[j] = corr(a0, a1, nt), rmse[j] = sqrt(rmse[j]);
        double rq[MAXCOS], mg[MAXCOS], ms[MAXCOS];
        for (int k = 0; k < c.ncos; k++) rq[k] = j ? c.s8[k] : c.om[k], mg[k] = rows[(int64_t)k * ncol + 20 + j], ms[k] = rows[(int64_t)k * ncol + 22 + j];
        cmg[j] = corr(rq, mg, c.ncos), cms[j] = corr(rq, ms, c.ncos);
    }
    snprintf(p, sizeof p, "%s/table.md", od);
    lss_wfile wf;
    lss_drv_check(lss_wfile_open(&wf, p), p);
    FILE *f = wf.f;
    int bad = 0;
    fprintf(f, "# cGAN validation: %d generated vs %d simulated maps per cosmology (%d x %d, %.3g arcmin pixels)\n\n", n, n, c.side, c.side, c.pix);
    fprintf(f, "Errors are the largest relative difference over the bins; `floor` is the same number for a second simulated set (B vs A).\n"
               "Bars: 10%% at training cosmologies, 15%% at held-out interpolation ones (extrapolation: reported only).\n\n");
    fprintf(f, "| Omega_m | sigma_8 | split | C_ell err (floor) | pixel hist err (floor) | peak hist err (floor) | W1 pix (floor) | W1 peaks (floor) | sqrt FD (floor) | SSIM signif (floor) | corr frac (floor) | bispectrum diff / sd (floor) | Minkowski diff / sd (floor) | regressor on gen (sim) |\n");
    fprintf(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < c.ncos; k++) {
        double *r = rows + (int64_t)k * ncol, bar = c.split[k] == 0 ? 0.10 : 0.15;
        int ok = r[4] <= bar && r[6] <= bar && r[8] <= bar;
        if (c.split[k] < 2 && !ok) bad++;
        fprintf(f, "| %.3f | %.3f | %s%s | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.2f (%.2f) | %.2f (%.2f) | %.3f (%.3f) | %.2f (%.2f) | %.2f (%.2f) | %.3f, %.3f (%.3f, %.3f) |\n",
                r[1], r[2], split_name[c.split[k]], c.split[k] < 2 && !ok ? " **over bar**" : "", r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
                r[14], r[15], r[16], r[17], r[18], r[19], r[24], r[25], r[26], r[27], r[20], r[21], r[22], r[23]);
    }
    fprintf(f, "\n%d of %d training and interpolation cosmologies over their bar.\n\n", bad, c.ncos - 2);
    fprintf(f, "Regressor, across the %d cosmologies: correlation of the mean prediction at each cosmology with the requested parameters, "
               "generated maps Omega_m %.3f, sigma_8 %.3f (simulated maps %.3f, %.3f); per map, generated %.3f, %.3f (simulated %.3f, %.3f: "
               "the limit one map allows this regressor; its RMSE on simulated set B %.4f, %.4f).\n", c.ncos, cmg[0], cmg[1], cms[0], cms[1],
            cg[0], cg[1], cs[0], cs[1], rmse[0], rmse[1]);
    lss_drv_check(lss_wfile_commit(&wf), p);
    char extra[256];
    snprintf(extra, sizeof extra, "\"maps_per_set\": %d, \"over_bar\": %d, \"regressor_corr_mean_gen\": [%.4f, %.4f], \"regressor_corr_mean_sim\": [%.4f, %.4f], "
             "\"regressor_corr_map_gen\": [%.4f, %.4f], \"regressor_corr_map_sim\": [%.4f, %.4f]", n, bad, cmg[0], cmg[1], cms[0], cms[1], cg[0], cg[1], cs[0], cs[1]);
    lss_drv_outputs_done(argc, argv, c.seed, extra);
    fprintf(stderr, "cgan eval: %d of %d cosmologies over their bar; regressor on generated maps follows the parameters with correlation %.3f, %.3f "
            "(cosmology means); %s/table.md\n", bad, c.ncos - 2, cmg[0], cmg[1], od);
    free(te), free(gm), free(y), free(pr), free(rows), free(req), free(gots), free(a0), free(a1), lss_grid_free(g), trainer_close(&T);
    return 0;
}

int main(int argc, char **argv) {
    lss_drv_prog = "cgan";
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "data")) return cmd_data(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "interpolate")) return cmd_interpolate(argc - 1, argv + 1);
    lss_drv_die(2, "unknown command '%s' (data, train, sample, eval, interpolate; cgan --help)", argv[1]);
    return 2;
}
