/* bench_mcmc.c - ensemble-sampler steps per second on a 7-D MDN likelihood (DeepLSS setup: 7
 * parameters, a 7-D summary, MDN 3 x 256 ReLU, K = 4, 64 walkers, Table I box prior), against
 * Python's emcee running the same log-likelihood written in numpy (bench/mcmc_emcee.py), measured
 * in the same run. The MDN is trained briefly on synthetic pairs so that the likelihood has a
 * realistic shape; its weights, scaler and observation are exported as NPY so that both sides
 * evaluate the same function (checked at 64 points before timing).
 *
 * Usage: build/bench/bench_mcmc [C steps (default 2000)] [Python steps (default 300)]
 * Prints the rates and the ratio C / emcee. */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_infer.h"
#include "lss_maps.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define P 7
#define D 7
#define W 64

static void die(const char *what) {
    fprintf(stderr, "bench_mcmc: %s: %s\n", what, lss_last_error());
    exit(1);
}

static int save_f32(const char *dir, const char *name, int ndim, const int64_t *shape, const float *v) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return lss_npy_save(path, LSS_F32, ndim, shape, v);
}

static int save_f64(const char *dir, const char *name, int ndim, const int64_t *shape, const double *v) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return lss_npy_save(path, LSS_F64, ndim, shape, v);
}

int main(int argc, char **argv) {
    const char *dir = "build/bench/mcmc_mdn";
    int64_t csteps = argc > 1 ? atoll(argv[1]) : 2000, psteps = argc > 2 ? atoll(argv[2]) : 300;
    lss_prior pr;
    lss_mdn *m;
    lss_mdn_opts mo;
    lss_emcee *e;
    lss_emcee_opts eo;
    lss_rng r;
    double fid[9], lo[P], hi[P], *tt, *yy, obs[D], start[W * P], xtest[64 * P], ctest[64], t0, dt, crate, prate = 0;
    double maxdiff = -1, pacc = 0;
    int64_t n = 20000, i, sh[2];
    int j, k;
    char cmd[1024], line[256];
    FILE *pipe;
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";

    if (csteps < 10 || psteps < 10) {
        fprintf(stderr, "usage: bench_mcmc [C steps >= 10] [Python steps >= 10]\n");
        return 2;
    }
    mkdir("build", 0755);
    mkdir("build/bench", 0755);
    mkdir(dir, 0755);
    if (lss_prior_init(&pr, LSS_NPARAM_LINEAR, lss_table1()->lo, lss_table1()->hi) ||
        lss_prior_set_names(&pr, lss_table1()->name))
        die("prior");
    memcpy(fid, lss_table1()->fiducial, sizeof(double) * LSS_NPARAM_LINEAR);
    for (j = 0; j < P; j++) {
        lo[j] = pr.lo[j];
        hi[j] = pr.hi[j];
    }
    /* synthetic training pairs: a smooth non-linear summary of the parameters with parameter-
     * dependent noise (a stand-in for network predictions) */
    tt = (double *)malloc(sizeof(double) * (size_t)n * P);
    yy = (double *)malloc(sizeof(double) * (size_t)n * D);
    lss_rng_init(&r, 1, 0);
    for (i = 0; i < n; i++) {
        double *t = tt + i * P, *y = yy + i * D;
        for (j = 0; j < P; j++) t[j] = lo[j] + (hi[j] - lo[j]) * lss_rng_uniform(&r);
        for (j = 0; j < D; j++) {
            double s = 0.05 + 0.05 * (t[0] - lo[0]) / (hi[0] - lo[0]);
            y[j] = (t[j] - lo[j]) / (hi[j] - lo[j]) + 0.3 * t[(j + 1) % P] * t[0] + s * lss_rng_normal(&r);
        }
    }
    memset(&mo, 0, sizeof mo); /* the paper's network: 3 x 256, K = 4 */
    mo.max_epochs = 3;
    mo.batch = 500;
    mo.seed = 3;
    t0 = lss_time_now();
    if (lss_mdn_create(P, D, &mo, &m) || lss_mdn_fit(m, tt, yy, n, &mo)) die("MDN");
    fprintf(stderr, "bench_mcmc: MDN 3 x 256, K = 4 trained for %d epochs in %.1f s (validation NLL %.3f)\n", m->epochs,
            lss_time_now() - t0, m->best_val);
    /* the observation: a summary drawn at the fiducial parameters */
    for (j = 0; j < D; j++) obs[j] = (fid[j] - lo[j]) / (hi[j] - lo[j]) + 0.3 * fid[(j + 1) % P] * fid[0];
    if (lss_mdn_set_obs(m, obs)) die("observation");

    /* export for numpy: layers, scaler, scaled observation, prior, start, test points */
    for (k = 0; k < m->net.nlayers; k++) {
        char nm[32];
        sh[0] = m->net.w[k]->shape[0];
        sh[1] = m->net.w[k]->shape[1];
        snprintf(nm, sizeof nm, "w%d.npy", k);
        if (save_f32(dir, nm, 2, sh, m->net.w[k]->data)) die("export");
        snprintf(nm, sizeof nm, "b%d.npy", k);
        if (save_f32(dir, nm, 1, sh + 1, m->net.b[k]->data)) die("export");
    }
    {
        double ts[2 * P], meta[3], pri[2 * P];
        int64_t s2[2] = {2, P}, s1[1] = {3}, sd[1] = {D};
        for (j = 0; j < P; j++) {
            ts[j] = m->st.a[j];
            ts[P + j] = m->st.b[j];
            pri[j] = lo[j];
            pri[P + j] = hi[j];
        }
        meta[0] = m->K;
        meta[1] = D;
        meta[2] = m->net.nlayers;
        if (save_f64(dir, "tscale.npy", 2, s2, ts) || save_f64(dir, "meta.npy", 1, s1, meta) ||
            save_f64(dir, "obs.npy", 1, sd, m->obs) || save_f64(dir, "prior.npy", 2, s2, pri))
            die("export");
    }
    lss_rng_init(&r, 2, 0);
    for (k = 0; k < W; k++) /* DeepLSS start: truth + 1e-3 N(0, 1) */
        for (j = 0; j < P; j++) start[k * P + j] = fid[j] + 1e-3 * lss_rng_normal(&r);
    for (k = 0; k < 64; k++)
        for (j = 0; j < P; j++) xtest[k * P + j] = lo[j] + (hi[j] - lo[j]) * lss_rng_uniform(&r);
    if (lss_mdn_loglike(xtest, 64, P, ctest, m)) die("log-likelihood");
    sh[0] = W;
    sh[1] = P;
    if (save_f64(dir, "start.npy", 2, sh, start)) die("export");
    sh[0] = 64;
    if (save_f64(dir, "xtest.npy", 2, sh, xtest) || save_f64(dir, "ctest.npy", 1, sh, ctest)) die("export");

    /* C: lss_emcee with the MDN likelihood */
    memset(&eo, 0, sizeof eo);
    eo.seed = 11;
    eo.prior = &pr;
    if (lss_emcee_create(W, P, &eo, &e) || lss_emcee_start(e, start, lss_mdn_loglike, m)) die("sampler");
    if (lss_emcee_run(e, 20, lss_mdn_loglike, m)) die("sampler warm-up");
    t0 = lss_time_now();
    if (lss_emcee_run(e, csteps, lss_mdn_loglike, m)) die("sampler");
    dt = lss_time_now() - t0;
    crate = (double)csteps / dt;
    printf("lss_emcee: %lld steps of %d walkers (7-D MDN 3x256, K=4) in %.3f s: %.1f steps/s, acceptance %.3f\n",
           (long long)csteps, W, dt, crate, lss_emcee_acceptance(e, NULL));

    /* Python emcee on the same function */
    snprintf(cmd, sizeof cmd, "%s bench/mcmc_emcee.py %s %lld 2>&1", py, dir, (long long)psteps);
    pipe = popen(cmd, "r");
    if (!pipe) {
        fprintf(stderr, "bench_mcmc: cannot run %s\n", cmd);
        return 1;
    }
    while (fgets(line, sizeof line, pipe)) {
        double v;
        if (sscanf(line, "maxdiff %lf", &v) == 1) maxdiff = v;
        else if (sscanf(line, "steps_per_s %lf", &v) == 1) prate = v;
        else if (sscanf(line, "acceptance %lf", &v) == 1) pacc = v;
        else fputs(line, stderr);
    }
    if (pclose(pipe) != 0 || prate <= 0) {
        fprintf(stderr, "bench_mcmc: the emcee reference failed (needs python3 with numpy and emcee: "
                        "apt-get install python3-emcee python3-numpy)\n");
        return 1;
    }
    printf("emcee (numpy): %lld steps: %.1f steps/s, acceptance %.3f; max |log L_numpy - log L_C| = %.3g at 64 points\n",
           (long long)psteps, prate, pacc, maxdiff);
    printf("ratio lss_emcee / emcee = %.2f\n", crate / prate);
    if (!(maxdiff >= 0 && maxdiff < 1e-3)) {
        fprintf(stderr, "bench_mcmc: the two log-likelihoods differ (%.3g): the comparison is void\n", maxdiff);
        return 1;
    }
    lss_emcee_free(e);
    lss_mdn_free(m);
    lss_prior_free(&pr);
    free(tt);
    free(yy);
    return 0;
}
