/* bench_massmap - seconds per independent posterior sample on the CPU (Gaussian prior, COSMOS-like
 * per-pixel noise) at 64 x 64 and 128 x 128, with the score evaluations per sample, for the
 * reference schedule (sigma 1 -> 8e-3 by x0.98, 12 HMC steps per level, 3 leapfrog steps, identity
 * mass, Simpson path-integral Metropolis-Hastings with cached endpoints) and the fast schedule
 * (x0.6 per level, 2 steps, Fourier mass matrix, exact Gaussian MH). Quality is checked against
 * the exact Wiener posterior of the same data (uniform noise): the mean pixel std ratio and the
 * error of the sample mean in units of its expected sampling error (1 for correct independent
 * samples). Usage: bench_massmap [nchains] [--quick] */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double sec_per_sample, evals, std_ratio, mean_z, acc;
} result;

static result run(int n, int nchains, int paper, const double *ell, const double *cl, int nell) {
    lss_grid *g;
    double *pk, nvar = 0.305 * 0.305 / 6.03, pstd = 0, rz = 0, sr = 0;
    int64_t np = (int64_t)n * n;
    float *kap, *g1, *g2, *nv, *wf, *smp, *mean, *sd;
    lss_mm_post *post;
    lss_mm_sample_opts so;
    lss_mm_sample_stats st;
    result r;
    if (lss_grid_create(n, n, LSS_MM_COSMOS_PIX_ARCMIN, &g)) exit(1);
    pk = (double *)calloc((size_t)np, sizeof(double));
    kap = (float *)calloc((size_t)np, 4);
    g1 = (float *)calloc((size_t)np, 4);
    g2 = (float *)calloc((size_t)np, 4);
    nv = (float *)calloc((size_t)np, 4);
    wf = (float *)calloc((size_t)np, 4);
    mean = (float *)calloc((size_t)np, 4);
    sd = (float *)calloc((size_t)np, 4);
    smp = (float *)calloc((size_t)(np * nchains), 4);
    lss_grid_spectrum(g, ell, cl, nell, pk);
    for (int64_t i = 0; i < np; i++) nv[i] = (float)nvar;
    lss_field_gaussian(g, pk, 3, 0, kap);
    lss_mm_mock_shear(g, kap, nv, 4, 0, g1, g2);
    lss_mm_wiener_fourier(g, pk, g1, g2, nvar, wf, &pstd);
    lss_mm_post_create(g, pk, g1, g2, nv, &post);
    memset(&so, 0, sizeof so);
    so.nchains = nchains;
    so.seed = 9;
    lss_mm_sample_preset(paper ? LSS_MM_SCHEDULE_PAPER : LSS_MM_SCHEDULE_FAST, &so);
    so.sigma_min = LSS_MM_SIGMA_MIN;
    if (lss_mm_sample(post, &so, smp, &st)) {
        fprintf(stderr, "bench_massmap: %s\n", lss_last_error());
        exit(1);
    }
    lss_mm_mean_std(nchains, np, smp, mean, sd);
    for (int64_t i = 0; i < np; i++) {
        rz += (double)(mean[i] - wf[i]) * (mean[i] - wf[i]);
        sr += sd[i] / pstd;
    }
    r.sec_per_sample = st.seconds / nchains;
    r.evals = st.evals_per_chain;
    r.std_ratio = sr / np;
    r.mean_z = sqrt(rz / np) / (pstd / sqrt(nchains));
    r.acc = st.accept_rate;
    lss_mm_post_free(post);
    lss_grid_free(g);
    free(pk); free(kap); free(g1); free(g2); free(nv); free(wf); free(mean); free(sd); free(smp);
    return r;
}

int main(int argc, char **argv) {
    int nchains = 8, quick = 0, nell = 200;
    double ell[200], cl[200];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else nchains = atoi(argv[i]);
    }
    if (nchains < 2) nchains = 2;
    for (int i = 0; i < nell; i++) ell[i] = pow(10, 0.5 + 5.0 * i / (nell - 1));
    if (lss_mm_theory_ckk(NULL, "cosmos", nell, ell, cl)) {
        fprintf(stderr, "bench_massmap: %s\n", lss_last_error());
        return 1;
    }
    printf("bench_massmap: Gaussian prior (Halofit C_kk, COSMOS n(z)), 0.29 arcmin pixels, noise variance %.4g per pixel, "
           "%d chains per batch, CPU threads as OpenMP gives\n", 0.305 * 0.305 / 6.03, nchains);
    printf("%-6s %-22s %12s %14s %10s %10s %10s\n", "grid", "schedule", "s/sample", "evals/sample", "accept", "std ratio", "mean err");
    int sizes[2] = {64, 128};
    for (int k = 0; k < 2; k++) {
        result f = run(sizes[k], nchains, 0, ell, cl, nell);
        printf("%-6d %-22s %12.4f %14.1f %10.3f %10.4f %10.3f\n", sizes[k], "fast (Fourier mass)", f.sec_per_sample, f.evals, f.acc, f.std_ratio, f.mean_z);
        if (quick && k == 1) break;
        result p = run(sizes[k], nchains, 1, ell, cl, nell);
        printf("%-6d %-22s %12.4f %14.1f %10.3f %10.4f %10.3f\n", sizes[k], "reference (x0.98, 12)", p.sec_per_sample, p.evals, p.acc, p.std_ratio, p.mean_z);
        printf("%-6d ratio reference/fast: %.1fx time, %.1fx score evaluations\n", sizes[k], p.sec_per_sample / f.sec_per_sample, p.evals / f.evals);
    }
    printf("(reference implementation as coded: 19 score evaluations per step x 6002 steps = 114038 per sample, "
           "about 10 V100-minutes per 360 x 360 sample with the U-net prior)\n");
    return 0;
}
