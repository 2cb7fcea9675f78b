/* The diffusion generator of lss_massmap.h trained on a periodic Gaussian random field (power-law
 * spectrum): training time, held-out loss against the exact score's, the samplers' binned power spectra
 * (n samples; network over exact-score samples drawn from the same noise, with the paired standard error of that
 * ratio, and over the true spectrum), seconds per sample, and the likelihood bound in bits per dimension against
 * the exact value.
 * Environment: DIFFUSION_GRF_CKPT=path checkpoints the training there and resumes from it (a finished run is
 * evaluated again without training).
 * Usage: diffusion_grf [side 16] [c0 16] [steps 2000] [batch 32] [periodic 1] [n 64] [embed 0: none, else frequencies]
 *                      [methods: a string of a (ancestral-1000), d (DDIM-50), o (ODE), 2 (DDIM2-50); default ad o2]
 *                      [gauss 0: 1 = the Gaussian skip with P estimated from 4096 training maps (the mean periodogram), 2 its
 *                       DCT form, 3 the stationary covariance of those maps (lss_mm_diff_gauss_cov_estimate)] */
#define LSS_IMPLEMENTATION
#include "lss_massmap.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
typedef struct { lss_grid *g; int64_t N; double *pk, *v; } grf;
static int draw(void *u, int set, int64_t index, int n, float *maps, float *cond) {
    grf *f = (grf *)u;
    (void)cond;
    for (int j = 0; j < n; j++)
        lss_field_gaussian(f->g, f->pk, 1, lss_mm_field_stream((lss_set)set, (uint64_t)index * n + j), maps + j * f->N);
    return LSS_OK;
}
static int score(void *u, int n, const float *x, const float *sigma, const float *cond, float *out) {
    grf *f = (grf *)u;
    lss_cdouble *c = malloc(sizeof(lss_cdouble) * f->N);
    (void)cond;
    for (int j = 0; j < n; j++) {
        for (int64_t i = 0; i < f->N; i++) c[i][0] = x[j * f->N + i], c[i][1] = 0;
        lss_grid_fft_d(f->g, c, -1);
        for (int64_t i = 0; i < f->N; i++) {
            double m = -1.0 / ((f->v[i] + (double)sigma[j] * sigma[j]) * f->N);
            c[i][0] *= m, c[i][1] *= m;
        }
        lss_grid_fft_d(f->g, c, +1);
        for (int64_t i = 0; i < f->N; i++) out[j * f->N + i] = (float)c[i][0];
    }
    free(c);
    return LSS_OK;
}
int main(int argc, char **argv) {
    int side = argc > 1 ? atoi(argv[1]) : 16, c0 = argc > 2 ? atoi(argv[2]) : 16, steps = argc > 3 ? atoi(argv[3]) : 2000;
    int batch = argc > 4 ? atoi(argv[4]) : 32, nb = 6, periodic = argc > 5 ? atoi(argv[5]) : 1;
    int n = argc > 6 ? atoi(argv[6]) : 64, embed = argc > 7 ? atoi(argv[7]) : 0;
    const char *methods = argc > 8 ? argv[8] : "ado2";
    int gauss = argc > 9 ? atoi(argv[9]) : 0;
    if (side < 4 || side % 4 || c0 < 1 || steps < 1 || batch < 1 || n < 2 || gauss < 0 || gauss > 3) {
        fprintf(stderr, "diffusion_grf: bad arguments (side a multiple of 4, c0, steps, batch >= 1, n >= 2)\n");
        return 2;
    }
    grf f;
    lss_grid_create(side, side, 1.0, &f.g);
    f.N = (int64_t)side * side;
    f.pk = malloc(sizeof(double) * f.N);
    f.v = malloc(sizeof(double) * f.N);
    double m = 0, sd;
    for (int64_t i = 0; i < f.N; i++) f.pk[i] = pow(lss_grid_k2(f.g, i) + 1.0 / (side * side), -1.0), m += f.pk[i];
    for (int64_t i = 0; i < f.N; i++) f.pk[i] *= 4e-4 / (m / f.N);
    sd = 0.02;
    for (int64_t i = 0; i < f.N; i++) f.v[i] = f.pk[i] / (sd * sd);
    lss_mm_diff_opts o;
    memset(&o, 0, sizeof o);
    o.h = o.w = side; o.c0 = c0; o.std = sd; o.seed = 1; o.periodic = periodic; o.embed = embed; o.gauss = gauss;
    lss_mm_diff *d;
    if (lss_mm_diff_create(&o, &d)) { puts(lss_last_error()); return 1; }
    if (gauss) { /* P (or S) from training maps, not from the true spectrum */
        float *tm = malloc(sizeof(float) * 4096 * f.N);
        double *pk = malloc(sizeof(double) * f.N * (gauss == 3 ? f.N : 1)), w = 0;
        for (int k = 0; k < 128; k++) draw(&f, LSS_SET_TRAIN, 1000000 + k, 32, tm + (int64_t)k * 32 * f.N, NULL);
        if (gauss == 3) {
            if (lss_mm_diff_gauss_cov_estimate(d, 4096, tm, pk) || lss_mm_diff_set_gauss_cov(d, pk)) { puts(lss_last_error()); return 1; }
            printf("Gaussian skip: the stationary covariance of 4096 training maps\n");
        } else {
            if (lss_mm_diff_gauss_estimate(d, 4096, tm, pk) || lss_mm_diff_set_gauss(d, pk)) { puts(lss_last_error()); return 1; }
            if (gauss == 1)
                for (int64_t i = 0; i < f.N; i++) w = fmax(w, fabs(pk[i] / f.v[i] - 1));
            printf("Gaussian skip: P from 4096 training maps, worst mode %.3f off the true spectrum\n", w);
        }
        free(tm), free(pk);
    }
    lss_mm_diff_train_opts to;
    memset(&to, 0, sizeof to);
    to.steps = steps; to.batch = batch; to.lr = 2e-3; to.seed = 2; to.draw = draw; to.user = &f;
    to.eval_every = steps / 4 > 0 ? steps / 4 : 1; to.eval_batches = 4; to.loss_csv = "/tmp/diffusion_grf_loss.csv";
    /* DIFFUSION_GRF_CKPT=path: checkpoints there and resumes (a finished run is evaluated again without training) */
    if (getenv("DIFFUSION_GRF_CKPT")) to.ckpt = getenv("DIFFUSION_GRF_CKPT"), to.resume = 1;
    lss_train_result res;
    double t0 = now();
    if (lss_mm_diff_train(d, &to, &res)) { puts(lss_last_error()); return 1; }
    double ttrain = now() - t0;
    printf("%dx%d c0 %d (%lld parameters), %d steps of batch %d: %.1f s (%.1f ms/step)\n", side, side, c0,
           (long long)lss_mm_diff_nparams(d), steps, batch, ttrain, 1e3 * ttrain / steps);
    /* held-out loss: network vs exact score, same maps and noise */
    float *maps = malloc(sizeof(float) * 64 * f.N), *a = malloc(sizeof(float) * n * f.N), *b = malloc(sizeof(float) * n * f.N);
    draw(&f, LSS_SET_VALID, 100, 64, maps, NULL);
    double ln = 0, le = 0;
    lss_mm_diff_loss(d, 64, maps, NULL, 9, 0, &ln);
    lss_mm_diff_set_score(d, score, &f);
    lss_mm_diff_loss(d, 64, maps, NULL, 9, 0, &le);
    lss_mm_diff_set_score(d, NULL, NULL);
    printf("held-out loss (64 maps): network %.5f, exact score %.5f\n", ln, le);
    /* the excess loss per noise level: (1 + sigma^2)(n + sigma s)^2 at fixed sigma, network minus exact, same noise */
    {
        float *x = malloc(sizeof(float) * 64 * f.N), *nz = malloc(sizeof(float) * 64 * f.N), *sc = malloc(sizeof(float) * 64 * f.N), sg[64];
        lss_rng r;
        printf("excess loss per noise level (sigma: network - exact, exact):");
        for (double sgm = 2e-3; sgm < 100; sgm *= 4) {
            double l[2] = {0, 0};
            lss_rng_for(&r, 4, 0, (uint64_t)(sgm * 1e4), 0);
            for (int64_t i = 0; i < 64 * f.N; i++) nz[i] = (float)lss_rng_normal(&r), x[i] = (float)(maps[i] / sd + sgm * nz[i]);
            for (int j = 0; j < 64; j++) sg[j] = (float)sgm;
            for (int e = 0; e < 2; e++) {
                if (e) lss_mm_diff_set_score(d, score, &f);
                lss_mm_diff_score(d, 64, x, sg, NULL, sc);
                for (int64_t i = 0; i < 64 * f.N; i++) {
                    double q = nz[i] + sgm * sc[i];
                    l[e] += (1 + sgm * sgm) * q * q / (64.0 * f.N);
                }
            }
            lss_mm_diff_set_score(d, NULL, NULL);
            printf(" %.3g: %+.4f (%.4f)", sgm, l[0] - l[1], l[1]);
        }
        printf("\n");
        free(x); free(nz); free(sc);
    }
    /* spectra */
    double edges[16], cl_true[16], ca[16], cb[16], sa[16], sb[16], *pa = malloc(sizeof(double) * n * nb), *pb = malloc(sizeof(double) * n * nb);
    lss_grid_ps_edges(f.g, nb, edges);
    lss_grid_bin_spectrum(f.g, f.pk, edges, nb, cl_true);
    const char *names[4] = {"ancestral-1000", "DDIM-50", "ODE", "DDIM2-50"};
    int ns[4] = {1000, 50, 0, 50};
    for (int meth = 0; meth < 4; meth++) {
        int64_t ev;
        if (!strchr(methods, "ado2"[meth])) continue;
        t0 = now();
        lss_mm_diff_sample(d, meth, ns[meth], n, NULL, 5, 0, a, &ev);
        double ts = (now() - t0) / n;
        lss_mm_diff_set_score(d, score, &f);
        lss_mm_diff_sample(d, meth, ns[meth], n, NULL, 5, 0, b, NULL);
        lss_mm_diff_set_score(d, NULL, NULL);
        memset(sa, 0, sizeof sa);
        memset(sb, 0, sizeof sb);
        for (int j = 0; j < n; j++) {
            lss_grid_ps(f.g, a + j * f.N, NULL, edges, nb, NULL, ca);
            lss_grid_ps(f.g, b + j * f.N, NULL, edges, nb, NULL, cb);
            for (int k = 0; k < nb; k++) sa[k] += ca[k] / n, sb[k] += cb[k] / n, pa[j * nb + k] = ca[k], pb[j * nb + k] = cb[k];
        }
        printf("%-14s %.4f s/sample (%.0f evals), %d samples: P_net/P_exact-score (paired s.e.):", names[meth], ts, (double)ev / n, n);
        for (int k = 0; k < nb; k++) { /* ratio of means; delta-method error from the paired residuals a_j - R b_j */
            double R = sa[k] / sb[k], v = 0;
            for (int j = 0; j < n; j++) v += pow(pa[j * nb + k] - R * pb[j * nb + k], 2) / (n - 1);
            printf(" %.3f (%.3f)", R, sqrt(v / n) / sb[k]);
        }
        printf(" | P_net/P_true:");
        for (int k = 0; k < nb; k++) printf(" %.3f", sa[k] / cl_true[k]);
        printf(" | P_exact/P_true:");
        for (int k = 0; k < nb; k++) printf(" %.3f", sb[k] / cl_true[k]);
        printf("\n");
    }
    /* likelihood bound, bits per dimension (kappa units) */
    double *nl = malloc(sizeof(double) * 16), *se = malloc(sizeof(double) * 16), bn = 0, be = 0, ex = 0, sen = 0;
    t0 = now();
    lss_mm_diff_nll(d, 16, maps, NULL, 64, 3, nl, se);
    double tn = now() - t0;
    for (int j = 0; j < 16; j++) bn += nl[j] / 16, sen += se[j] * se[j] / 256;
    lss_mm_diff_set_score(d, score, &f);
    lss_mm_diff_nll(d, 16, maps, NULL, 64, 3, nl, se);
    for (int j = 0; j < 16; j++) be += nl[j] / 16;
    lss_cdouble *c = malloc(sizeof(lss_cdouble) * f.N);
    for (int j = 0; j < 16; j++) {
        for (int64_t i = 0; i < f.N; i++) c[i][0] = maps[j * f.N + i], c[i][1] = 0;
        lss_grid_fft_d(f.g, c, -1);
        for (int64_t i = 0; i < f.N; i++) ex += (0.5 * log(2 * M_PI * f.pk[i]) + (c[i][0] * c[i][0] + c[i][1] * c[i][1]) / f.N / (2 * f.pk[i])) / 16;
    }
    double bpd = 1.0 / (f.N * log(2.0));
    printf("bits/dim (kappa units, 16 held-out maps, nsig 64): network bound %.4f (+- %.4f), exact-score bound %.4f, exact %.4f; %.3f s for 16 maps\n",
           bn * bpd, sqrt(sen) * bpd, be * bpd, ex * bpd, tn);
    return 0;
}
