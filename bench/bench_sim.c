/* bench_sim - throughput of the DeepLSS forward model (lss_maps.h):
 *   1. noise-free 8-channel 64 x 64 fields per second (shells -> lognormal -> projection -> smoothing -> IA and
 *      bias), on 1 thread and on all threads (OpenMP over fields);
 *   2. noisy 384 x 384 survey mosaics per second (36 fields each), both from fields generated on the fly and from
 *      36 precomputed noise-free fields with noise, stochasticity and placement drawn on the fly (as DeepLSS
 *      trains);
 *   3. the reference measured in the same run: the FFTs alone (one 128 x 128 complex-to-real FFT per drawn shell
 *      and two 64 x 64 FFTs per bin for the stochasticity, with the same FFTW plan type), i.e. the floor for a
 *      field; printed as the share of field time spent in FFTW. Optional arguments: fields and mosaics to time. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include <fftw3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int nthreads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

/* noise-free observed fields: n fields over the threads; returns seconds */
static double run_fields(const lss_sim *s, const lss_params *p, int n) {
    double t0 = lss_time_now();
    int st = 0;
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        lss_sim_work *w = NULL;
        lss_noise_opts no;
        float *f = malloc(sizeof(float) * lss_sim_field_size(s)), *m = malloc(sizeof(float) * lss_sim_obs_size(s));
        int i;
        memset(&no, 0, sizeof no);
        no.no_noise = 1;
        if (lss_sim_work_create(s, &w) != LSS_OK || !f || !m) st = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (i = 0; i < n; i++)
            if (w && f && m && (lss_sim_field(s, w, 1, (uint64_t)i, f) || lss_sim_observe(s, w, f, p, &no, 2, (uint64_t)i, m))) st = 1;
        lss_sim_work_free(w);
        free(f);
        free(m);
    }
    if (st) { fprintf(stderr, "bench_sim: %s\n", lss_last_error()); exit(1); }
    return lss_time_now() - t0;
}

/* noisy mosaics; precomputed != NULL: reuse 36 noise-free fields, else generate the fields too */
static double run_mosaics(const lss_sim *s, const lss_params *p, int n, const float *precomputed) {
    double t0 = lss_time_now();
    int st = 0;
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        lss_sim_work *w = NULL;
        size_t fs = lss_sim_field_size(s), os = lss_sim_obs_size(s);
        float *f = malloc(sizeof(float) * fs), *obs = malloc(sizeof(float) * os * 36), *mos = malloc(sizeof(float) * os * 36);
        const float *fp[36];
        int i, k;
        if (lss_sim_work_create(s, &w) != LSS_OK || !f || !obs || !mos) st = 1;
        for (k = 0; k < 36 && obs; k++) fp[k] = obs + (size_t)k * os;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (i = 0; i < n; i++) {
            if (!w || !f || !obs || !mos) continue;
            for (k = 0; k < 36; k++) {
                const float *src = precomputed ? precomputed + (size_t)k * fs : f;
                uint64_t idx = (uint64_t)i * 36 + (uint64_t)k;
                if (!precomputed && lss_sim_field(s, w, 1, idx, f)) st = 1;
                if (lss_sim_observe(s, w, src, p, NULL, 3, idx, obs + (size_t)k * os)) st = 1;
            }
            if (lss_mosaic(fp, 6, 8, 64, 4, (uint64_t)i, mos)) st = 1;
        }
        lss_sim_work_free(w);
        free(f);
        free(obs);
        free(mos);
    }
    if (st) { fprintf(stderr, "bench_sim: %s\n", lss_last_error()); exit(1); }
    return lss_time_now() - t0;
}

/* the FFTs alone: nfft complex-to-real M x M transforms (same plan flags as lss_sim), over the threads;
   r2c != 0: a real-to-complex and a complex-to-real transform per count (the stochasticity of one bin) */
static double run_ffts(int M, int nfft, int r2c) {
    double t0 = lss_time_now();
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        fftwf_complex *c = fftwf_malloc(sizeof(fftwf_complex) * (size_t)M * (M / 2 + 1));
        float *r = fftwf_malloc(sizeof(float) * (size_t)M * M);
        fftwf_plan pl;
        int i;
#ifdef _OPENMP
#pragma omp critical(lss_fftw_plan)
#endif
        pl = r2c ? fftwf_plan_dft_r2c_2d(M, M, r, c, FFTW_ESTIMATE) : fftwf_plan_dft_c2r_2d(M, M, c, r, FFTW_ESTIMATE);
#ifdef _OPENMP
#pragma omp for
#endif
        for (i = 0; i < nfft; i++) {
            size_t k;
            for (k = 0; k < (size_t)M * (M / 2 + 1); k++) { c[k][0] = (float)(k % 7) * 0.1f; c[k][1] = 0.05f; }
            if (r2c) {
                for (k = 0; k < (size_t)M * M; k++) r[k] = (float)(k % 5) * 0.1f;
                fftwf_execute_dft_r2c(pl, r, c);
                fftwf_execute_dft_r2c(pl, r, c); /* the same cost as the c2r back */
            } else fftwf_execute_dft_c2r(pl, c, r);
        }
#ifdef _OPENMP
#pragma omp critical(lss_fftw_plan)
#endif
        fftwf_destroy_plan(pl);
        fftwf_free(c);
        fftwf_free(r);
    }
    return lss_time_now() - t0;
}

int main(int argc, char **argv) {
    lss_params p;
    lss_cosmo *c;
    lss_nz *nz;
    lss_sim *s;
    lss_sim_info inf;
    int nb, nf = argc > 1 ? atoi(argv[1]) : 200, nm = argc > 2 ? atoi(argv[2]) : 6, T = nthreads();
    double t_create, t1, tT, tm_fly, tm_pre, tfft1, tfill, t0, cpu1, cpuT;
    clock_t cpu0;
    float *pre;
    if (nf < 1) nf = 200;
    if (nm < 1) nm = 6;
    lss_params_fiducial(&p);
    if (lss_cosmo_create(&p, &c) || lss_nz_builtin("deeplss", &nz, &nb)) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    t0 = lss_time_now();
    if (lss_sim_create(c, nz, nb, NULL, &s)) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    t_create = lss_time_now() - t0;
    lss_sim_get_info(s, &inf);
    printf("bench_sim: DeepLSS fields of %d x %d (generation grid %d x %d, %d shells drawn), %d thread(s) available\n",
           inf.nside, inf.nside, inf.ngrid, inf.ngrid, inf.nshell_drawn, T);
    printf("  simulator setup for one cosmology (C_ell tables, lognormal spectra, weights): %.3f s\n", t_create);
    run_fields(s, &p, 4); /* warm-up */
    set_threads(1);
    cpu0 = clock();
    t1 = run_fields(s, &p, nf);
    cpu1 = (double)(clock() - cpu0) / CLOCKS_PER_SEC;
    tfft1 = run_ffts(inf.ngrid, nf * inf.nshell_drawn, 0) + run_ffts(inf.nside, nf * inf.nbins, 1);
    set_threads(T);
    cpu0 = clock();
    tT = run_fields(s, &p, nf);
    cpuT = (double)(clock() - cpu0) / CLOCKS_PER_SEC;
    printf("  noise-free 8-channel fields: %.1f /s on 1 thread, %.1f /s on %d threads (speed-up %.2f)\n", nf / t1,
           nf / tT, T, t1 / tT);
    printf("  per CPU-second (insensitive to other load on the machine): %.1f fields on 1 thread, %.1f on %d threads\n",
           nf / cpu1, nf / cpuT, T);
    printf("  FFT floor (one %dx%d c2r FFT per drawn shell + two %dx%d FFTs per bin for stochasticity, 1 thread): "
           "%.2f ms per field = %.0f%% of the field time\n", inf.ngrid, inf.ngrid, inf.nside, inf.nside, 1e3 * tfft1 / nf,
           100 * tfft1 / t1);
    printf("  field time / FFT floor = %.2f\n", t1 / tfft1);
    pre = malloc(sizeof(float) * lss_sim_field_size(s) * 36);
    t0 = lss_time_now();
    lss_sim_fields(s, 9, 0, 36, pre);
    tfill = lss_time_now() - t0;
    tm_fly = run_mosaics(s, &p, nm, NULL);
    tm_pre = run_mosaics(s, &p, 5 * nm, pre);
    printf("  noisy 384x384 mosaics (36 fields): %.2f /s with fields generated on the fly, %.1f /s from precomputed "
           "noise-free fields (noise, stochasticity, placement on the fly), %d threads\n", nm / tm_fly, 5 * nm / tm_pre, T);
    printf("  ratio precomputed / on the fly: %.1f; 36 fields precomputed in %.3f s\n", (5 * nm / tm_pre) / (nm / tm_fly), tfill);
    free(pre);
    lss_sim_free(s);
    lss_cosmo_free(c);
    lss_nz_free(nz, nb);
    return 0;
}
