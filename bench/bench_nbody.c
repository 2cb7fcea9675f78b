/* bench_nbody - the particle-mesh N-body light cones of lss_maps.h.
 *
 * 1. Cost: for np = 64, 128, 256 (mesh 2 np, box 500 Mpc/h, 20 steps, z_init 9) with the DeepLSS light cone (96 x 96
 *    pixels of 4.6875 arcmin, the lss_shell_edges default shells up to z = 1.65, one cone): initial conditions, time
 *    per PM step against the time of its own FFTs (two mesh^3 transforms per step, measured inside the same steps),
 *    the painting / force readout / drift+light-cone parts, the predicted memory (lss_nbody_memory) and the peak
 *    resident memory of the process (getrusage; the runs go in increasing size, so each line's peak is its own).
 *    Each size runs twice: with the light cone, and without one (the particle-mesh step alone).
 *    For the largest run, the angular power of four shells against the Limber prediction (lss_cl_shell).
 * 2. Convergence: the matter P(k) at z = 1 and z = 0 against Halofit (lss_cosmo_pk_nl) for np = 128 and 256 and 10
 *    and 20 steps (box 500, mesh 2 np, fixed amplitudes, the same seed: the same large-scale modes at both
 *    resolutions), bins of width k_f up to the particle Nyquist frequency, no shot noise subtracted (a displaced
 *    lattice); printed as CSV rows "pk,np,steps,z,k,nmodes,p_nbody,p_halofit,ratio" and summarised at k_Nyq/4.
 * Options: --quick (np 64 and 128 only), --no-pk (skip part 2), --threads N.
 * The np 256 runs take minutes on a 2-core machine. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static double maxrss_gb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1048576.0; /* KiB on Linux */
}

/* angular power of a few shells of the run against the Limber prediction (lss_cl_shell) */
static void shell_cl(const lss_cosmo *c, const lss_shellset *ss) {
    enum { NB = 8 };
    lss_grid *g = NULL;
    double edges[NB + 1], ell[NB], cl[NB], th[NB];
    int want[4] = {5, 11, 17, 23}, i, b;
    if (lss_grid_create(ss->side, ss->side, ss->pixel_arcmin, &g) != LSS_OK || lss_grid_ps_edges(g, NB, edges) != LSS_OK) {
        fprintf(stderr, "%s\n", lss_last_error());
        lss_grid_free(g);
        return;
    }
    printf("\nshell C_ell / Limber (lss_cl_shell, P_NL), one cone, CIC pixel window not removed:\ncl,shell,z_lo,z_hi");
    for (b = 0; b < NB; b++) printf(",ell_%d", b);
    printf("\n");
    for (i = 0; i < 4; i++) {
        int sh = want[i];
        double chi1, chi2;
        if (sh >= ss->nshell) continue;
        chi1 = lss_cosmo_chi(c, ss->z_edges[sh]);
        chi2 = lss_cosmo_chi(c, ss->z_edges[sh + 1]);
        lss_grid_ps(g, ss->delta + (size_t)sh * ss->side * ss->side, NULL, edges, NB, ell, cl);
        if (lss_cl_shell_many(c, chi1 > 1 ? chi1 : 1, chi2, ell, NB, th) != LSS_OK) continue;
        printf("cl,%d,%.2f,%.2f", sh, ss->z_edges[sh], ss->z_edges[sh + 1]);
        for (b = 0; b < NB; b++) printf(",%.0f:%.3f", ell[b], cl[b] / th[b]);
        printf("\n");
    }
    lss_grid_free(g);
}

static int cost_run(const lss_cosmo *c, int np, const lss_lightcone_opts *lc, int show_cl) {
    lss_nbody_opts o;
    lss_nbody *s = NULL;
    lss_nbody_stats st;
    lss_shellset ss;
    double t0 = lss_time_now(), step, fft, tot;
    int64_t mem;
    memset(&o, 0, sizeof o);
    o.np = np;
    o.box = 500;
    o.steps = 20;
    mem = lss_nbody_memory(&o, lc);
    if (lss_nbody_create(c, &o, lc, 1, 0, &s) != LSS_OK) {
        fprintf(stderr, "np %d: %s\n", np, lss_last_error());
        return 1;
    }
    while (lss_nbody_steps_done(s) < o.steps) lss_nbody_step(s);
    if (lc && lss_nbody_shells(s, &ss) != LSS_OK) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    tot = lss_time_now() - t0;
    lss_nbody_get_stats(s, &st);
    step = st.steps / st.nsteps;
    fft = st.fft / st.nforce;
    printf("| %4d | %4d | %s | %8.2f | %8.3f | %8.3f | %5.2f | %7.3f | %7.3f | %7.3f | %7.2f | %6.2f | %6.2f |\n", np, 2 * np,
           lc ? "yes" : "no", st.ic, step, fft, (st.steps / st.nforce) / fft, st.paint / st.nforce, st.force / st.nforce,
           st.drift / st.nsteps, tot, mem / 1e9, maxrss_gb());
    fflush(stdout);
    if (show_cl && lc) shell_cl(c, &ss);
    if (lc) lss_shellset_free(&ss);
    lss_nbody_free(s);
    return 0;
}

static void pk_rows(const lss_cosmo *c, lss_nbody *s, int np, int steps, double z, double *sum_lo) {
    int nb = np, b;
    double *k = (double *)malloc(sizeof(double) * nb), *pk = (double *)malloc(sizeof(double) * nb);
    int64_t *nm = (int64_t *)malloc(sizeof(int64_t) * nb);
    double kny = 3.14159265358979323846 * np / 500, sw = 0, sr = 0;
    if (!k || !pk || !nm) return;
    if (lss_nbody_power(s, 1 / (1 + z), 2 * np, nb, 0, k, pk, nm) != LSS_OK) {
        fprintf(stderr, "power: %s\n", lss_last_error());
        free(k); free(pk); free(nm);
        return;
    }
    for (b = 0; b < nb && k[b] <= kny; b++) {
        double ref;
        if (nm[b] == 0) continue;
        ref = lss_cosmo_pk_nl(c, k[b], z);
        printf("pk,%d,%d,%g,%.5f,%lld,%.6g,%.6g,%.5f\n", np, steps, z, k[b], (long long)nm[b], pk[b], ref, pk[b] / ref);
        if (k[b] <= kny / 4) { sw += (double)nm[b]; sr += (double)nm[b] * pk[b] / ref; }
    }
    *sum_lo = sr / sw;
    free(k); free(pk); free(nm);
}

static int pk_run(const lss_cosmo *c, int np, int steps, double *r1, double *r0) {
    lss_nbody_opts o;
    lss_nbody *s = NULL;
    int done1 = 0;
    memset(&o, 0, sizeof o);
    o.np = np;
    o.box = 500;
    o.steps = steps;
    o.fixed_amp = 1;
    if (lss_nbody_create(c, &o, NULL, 1, 0, &s) != LSS_OK) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    for (;;) {
        if (!done1 && lss_nbody_a(s) <= 0.5 && lss_nbody_a_next(s) >= 0.5) {
            pk_rows(c, s, np, steps, 1.0, r1);
            done1 = 1;
        }
        if (lss_nbody_steps_done(s) == steps) break;
        lss_nbody_step(s);
    }
    pk_rows(c, s, np, steps, 0.0, r0);
    lss_nbody_free(s);
    return 0;
}

int main(int argc, char **argv) {
    lss_params p;
    lss_cosmo *c;
    lss_shell_opts so;
    lss_lightcone_opts lc;
    double ze[128];
    int i, quick = 0, nopk = 0, ns;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--no-pk")) nopk = 1;
#ifdef _OPENMP
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) omp_set_num_threads(atoi(argv[++i]));
#endif
    }
    lss_params_fiducial(&p);
    if (lss_cosmo_create(&p, &c) != LSS_OK) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    memset(&so, 0, sizeof so);
    so.zmax = 1.65;
    ns = lss_shell_edges(&so, ze, 128);
    if (ns < 1) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
    memset(&lc, 0, sizeof lc);
    lc.side = 96;
    lc.pixel_arcmin = 4.6875;
    lc.nshell = ns;
    lc.z_edges = ze;
    lc.ncone = 1;
#ifdef _OPENMP
    printf("threads: %d\n", omp_get_max_threads());
#endif
    printf("box 500 Mpc/h, 20 steps from z = 9, light cone 96 x 96 x 4.6875' with %d shells to z = %.2f\n\n", ns, ze[ns]);
    printf("| np | mesh | light cone | IC s | step s | 2 FFT s | step/FFT | paint s | force s | drift s | total s | mem GB | peak RSS GB |\n");
    printf("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    if (cost_run(c, 64, &lc, 0) || cost_run(c, 64, NULL, 0) || cost_run(c, 128, &lc, quick) || cost_run(c, 128, NULL, 0) ||
        (!quick && (cost_run(c, 256, &lc, 1) || cost_run(c, 256, NULL, 0))))
        return 1;
    printf("(step/FFT: a step, i.e. drift + light cone + paint + 2 FFTs + Poisson + readout/kick, over its 2 FFTs; "
           "per-part times per force; the drift includes the particles' cell sort and the light-cone crossings. "
           "Without a light cone: the same run with no cone, i.e. the PM step alone)\n\n");
    if (!nopk) {
        int nps[2] = {128, 256}, st[2] = {10, 20}, a, b;
        double r1[2][2], r0[2][2];
        printf("pk,np,steps,z,k,nmodes,p_nbody,p_halofit,ratio\n");
        for (a = 0; a < (quick ? 1 : 2); a++)
            for (b = 0; b < 2; b++)
                if (pk_run(c, nps[a], st[b], &r1[a][b], &r0[a][b])) return 1;
        printf("\nmode-weighted mean P/Halofit for k <= k_Nyq(particles)/4:\n");
        for (a = 0; a < (quick ? 1 : 2); a++)
            for (b = 0; b < 2; b++)
                printf("  np %3d, %2d steps: z = 1: %.4f   z = 0: %.4f\n", nps[a], st[b], r1[a][b], r0[a][b]);
    }
    lss_cosmo_free(c);
    return 0;
}
