/* bench_deeplss_scales - where the DeepLSS small preset's power-spectrum information lies in scale, and what the
 * one-point statistics of the maps carry, by Fisher forecasts on one finite-difference set (lss_fdsims, the
 * `deeplss fisher` observations: the small preset's survey, LSS_POISSON_INVERSE, seed 1).
 *
 *   make build/bench/bench_deeplss_scales && ./build/bench/bench_deeplss_scales [NFID NDER]   (defaults 4000 400)
 *
 * For each probe set (combined, lensing, clustering): FoM(Omega_m, sigma_8) and the 7 sigmas of the Re(X_i X_j*)
 * spectra with all 8 multipole bins, without the 1-3 lowest and without the 1-3 highest bins; then the joint one-point
 * moments (lss_stat_joint_moments) of the lensing and of the clustering maps alone. A network that learns only the
 * pixel statistics reaches the moments' figure. About 20 s on 2 cores. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#include "lss_core.h"
#include "lss_maps.h"
#include "lss_nn.h"
#include "lss_infer.h"
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NP LSS_DEEPLSS_NPARAM
static const double *const fstep = lss_deeplss_fisher_step;   /* as deeplss fisher */

static int forecast(const char *label, const double *X, int ld, const int *cols, int d, int nfid, int nder, const double *prior,
                    double ref) {
    lss_fisher F;
    double e, fom;
    int k;
    memset(&F, 0, sizeof F);
    if (lss_fisher_from_table(X, ld, cols, d, nfid, nder, NP, fstep, prior, 0, &F)) {
        fprintf(stderr, "%s: %s\n", label, lss_last_error());
        return 1;
    }
    fom = lss_fisher_fom(&F, 0, 1, &e);
    printf("%-44s %4d %8.1f +- %4.1f %6.3f ", label, d, fom, e, ref > 0 ? fom / ref : 1.0);
    for (k = 0; k < NP; k++) printf(" %.4f", F.sigma[k]);
    printf("\n");
    lss_fisher_free(&F);
    return 0;
}

int main(int argc, char **argv) {
    int nfid = argc > 1 ? atoi(argv[1]) : 4000, nder = argc > 2 ? atoi(argv[2]) : 400, T = 1, t, pr, lo, hi, q, l, k, bad = 0;
    lss_deeplss_cfg c;
    lss_params p;
    lss_cosmo *cos = NULL;
    lss_nz *nz = NULL;
    int nzb = 0, CH = 256, nell, npr, nmo = lss_stat_joint_moments_size(LSS_DEEPLSS_NBINS);
    lss_sim_opts so;
    lss_sim *sim = NULL;
    lss_survey_opts vo;
    lss_survey *sv = NULL;
    lss_fdsims *fd = NULL;
    lss_survey_work **w;
    int64_t N, msz, ssz, plane, r0;
    double *X, *MO, *spec, prior[NP], ref[3] = {0, 0, 0};
    float *maps;
    int *cols;
    const lss_param_table *t1 = lss_table1();
    if (nfid < 300 || nder < 10) { fprintf(stderr, "usage: bench_deeplss_scales [NFID >= 300] [NDER >= 10]\n"); return 2; }
#ifdef _OPENMP
    T = omp_get_max_threads();
#endif
    lss_deeplss_cfg_defaults(&c, LSS_DEEPLSS_SMALL);
    lss_params_fiducial(&p);
    memset(&so, 0, sizeof so);
    memset(&vo, 0, sizeof vo);
    so.nside = c.nside; so.pixel_arcmin = c.pixel_arcmin;
    vo.grid = c.grid; vo.nell = c.nell; vo.ell_min = c.ell_min; vo.ell_max = c.ell_max; vo.noise.poisson = LSS_POISSON_INVERSE;
    if (lss_cosmo_create(&p, &cos) || lss_nz_builtin("deeplss", &nz, &nzb) || lss_sim_create(cos, nz, nzb, &so, &sim) ||
        lss_survey_create(sim, &vo, &sv) || lss_fdsims_create(sv, nz, nzb, &so, &p, NP, fstep, &fd)) {
        fprintf(stderr, "bench_deeplss_scales: %s\n", lss_last_error());
        return 1;
    }
    w = (lss_survey_work **)calloc((size_t)T, sizeof *w);
    for (t = 0; t < T; t++) lss_survey_work_create(sv, &w[t]);
    N = nfid + 2LL * NP * nder; msz = lss_survey_map_size(sv); ssz = lss_survey_spec_size(sv);
    plane = (int64_t)c.nside * c.nside; nell = c.nell; npr = lss_survey_npairs(sv);
    X = (double *)malloc(sizeof(double) * (size_t)N * (size_t)ssz);
    MO = (double *)malloc(sizeof(double) * (size_t)N * 2 * (size_t)nmo);
    spec = (double *)malloc(sizeof(double) * (size_t)CH * (size_t)ssz);
    maps = (float *)malloc(sizeof(float) * (size_t)CH * (size_t)msz);
    cols = (int *)malloc(sizeof(int) * (size_t)ssz);
    if (!w || !X || !MO || !spec || !maps || !cols) { fprintf(stderr, "bench_deeplss_scales: out of memory\n"); return 1; }
    for (r0 = 0; r0 < N; r0 += CH) {
        int nb = N - r0 < CH ? (int)(N - r0) : CH, j;
        if (lss_fdsims_observe_rows(fd, w, T, c.seed, nfid, nder, r0, nb, maps, spec)) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
        memcpy(X + r0 * ssz, spec, sizeof(double) * (size_t)nb * (size_t)ssz);
        for (j = 0; j < nb; j++)
            for (k = 0; k < 2; k++)   /* the lensing then the clustering maps */
                lss_stat_joint_moments(maps + (size_t)j * msz + (size_t)k * LSS_DEEPLSS_NBINS * plane, LSS_DEEPLSS_NBINS, plane,
                                       MO + ((size_t)(r0 + j) * 2 + k) * nmo);
    }
    for (k = 0; k < NP; k++) prior[k] = (t1->hi[k] - t1->lo[k]) / sqrt(12.0);
    printf("%d fiducial observations, %d pairs per parameter; FoM(Omega_m, sigma_8), its ratio to all bins, sigmas:", nfid, nder);
    for (k = 0; k < NP; k++) printf(" %s", t1->name[k]);
    printf("\n");
    for (pr = 0; pr < 3; pr++)   /* 0 combined, 1 lensing, 2 clustering */
        for (lo = 0; lo < 4; lo++)
            for (hi = nell; hi >= nell - 3; hi--) {
                char label[96];
                int d = 0, i, j;
                if ((lo > 0 && hi < nell) || hi - lo < 2) continue;
                for (q = 0; q < npr; q++) {
                    lss_survey_pair(sv, q, &i, &j);
                    if (pr == 1 && j >= LSS_DEEPLSS_NBINS) continue;   /* lensing: both channels kappa */
                    if (pr == 2 && i < LSS_DEEPLSS_NBINS) continue;    /* clustering: both channels delta */
                    for (l = lo; l < hi; l++) cols[d++] = q * nell + l;
                }
                snprintf(label, sizeof label, "%s spectra, multipole bins %d-%d of %d", lss_deeplss_probe_name(pr, 1), lo + 1, hi, nell);
                if (lo == 0 && hi == nell) {
                    lss_fisher F;
                    double e;
                    memset(&F, 0, sizeof F);
                    if (!lss_fisher_from_table(X, ssz, cols, d, nfid, nder, NP, fstep, prior, 0, &F)) ref[pr] = lss_fisher_fom(&F, 0, 1, &e);
                    lss_fisher_free(&F);
                }
                bad |= forecast(label, X, (int)ssz, cols, d, nfid, nder, prior, ref[pr]);
            }
    for (k = 0; k < 2; k++) {
        char label[96];
        for (l = 0; l < nmo; l++) cols[l] = k * nmo + l;
        snprintf(label, sizeof label, "%s one-point joint moments alone", k ? "clustering" : "lensing");
        bad |= forecast(label, MO, 2 * nmo, cols, nmo, nfid, nder, prior, ref[k ? 2 : 1]);
    }
    for (t = 0; t < T; t++) lss_survey_work_free(w[t]);
    free(w); free(X); free(MO); free(spec); free(maps); free(cols);
    lss_fdsims_free(fd); lss_survey_free(sv); lss_sim_free(sim); lss_nz_free(nz, nzb); lss_cosmo_free(cos);
    return bad;
}
