/* mpi_nbody.c - one particle-mesh light-cone box, serial or over MPI ranks (lss_nbody_create_dist): step time,
 * communication and memory per rank.
 *   build/bench/mpi_nbody [NP [MESH [STEPS [LEAN]]]]            (serial build: the reference, any
 *                                                                OMP_NUM_THREADS; defaults 128, 2 NP, 10, 0)
 *   mpirun -np R build/mpi/mpi_nbody [NP [MESH [STEPS [LEAN]]]] (make build/mpi/mpi_nbody: -DLSS_MPI, the box in
 *                                                                slabs over the R ranks; LEAN 1: in-place transposes)
 * Box 500 Mpc/h, z_init 9, 2LPT, a light cone of 64 x 64 pixels of 4.6875 arcmin with shells dz = 0.1 to z = 1.
 * Prints the initial-conditions time, the median seconds per step (every step but the last, which has no force),
 * the FFT seconds per step, the bytes rank 0 sent per step (lss_mpi_bytes_sent), the largest peak resident memory
 * of the ranks and an FNV-1a hash of the shells and of the particles (equal at every rank count). */
#define _POSIX_C_SOURCE 200809L
#define LSS_IMPLEMENTATION
#include "lss_core.h"
#include "lss_maps.h"
#include <sys/resource.h>

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    while (n--) { h ^= *b++; h *= 1099511628211ULL; }
    return h;
}
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    int np, mesh, steps, k, nz = 10, R, lean;
    double ze[11], *dt, t, sent0, ms, rss[1024];
    lss_params p;
    lss_cosmo *c;
    lss_nbody_opts o;
    lss_lightcone_opts lc;
    lss_nbody *s;
    lss_nbody_stats st;
    lss_shellset ss;
    struct rusage ru;
    uint64_t h = 0xcbf29ce484222325ULL;
    if (lss_mpi_init(&argc, &argv)) { fprintf(stderr, "mpi_nbody: %s\n", lss_last_error()); return 1; }
    np = argc > 1 ? atoi(argv[1]) : 128;
    mesh = argc > 2 ? atoi(argv[2]) : 2 * np;
    steps = argc > 3 ? atoi(argv[3]) : 10;
    lean = argc > 4 ? atoi(argv[4]) : 0;
    R = lss_mpi_size();
    if (steps < 2 || R > 1024) { fprintf(stderr, "mpi_nbody: need at least 2 steps and at most 1024 ranks\n"); return 2; }
    for (k = 0; k <= nz; k++) ze[k] = 0.1 * k;
    lss_params_fiducial(&p);
    if (lss_cosmo_create(&p, &c)) { fprintf(stderr, "mpi_nbody: %s\n", lss_last_error()); return 1; }
    memset(&o, 0, sizeof o);
    o.box = 500; o.np = np; o.mesh = mesh; o.steps = steps; o.z_init = 9;
    memset(&lc, 0, sizeof lc);
    lc.side = 64; lc.pixel_arcmin = 4.6875; lc.nshell = nz; lc.z_edges = ze; lc.ncone = 1;
    t = lss_time_now();
    if (lss_nbody_create_dist(c, &o, &lc, 1, 0, lean, &s)) { fprintf(stderr, "mpi_nbody (rank %d): %s\n", lss_mpi_rank(), lss_last_error()); return 1; }
    t = lss_time_now() - t;
    dt = (double *)malloc(sizeof(double) * (size_t)steps);
    sent0 = lss_mpi_bytes_sent();
    for (k = 0; k < steps; k++) {
        double t0 = lss_time_now();
        if (lss_nbody_step(s)) { fprintf(stderr, "mpi_nbody: %s\n", lss_last_error()); return 1; }
        dt[k] = lss_time_now() - t0;
    }
    ms = (lss_mpi_bytes_sent() - sent0) / steps / 1e6;
    lss_nbody_get_stats(s, &st);
    qsort(dt, (size_t)steps - 1, sizeof(double), cmpd);
    if (lss_nbody_shells(s, &ss)) { fprintf(stderr, "mpi_nbody: %s\n", lss_last_error()); return 1; }
    h = fnv(h, ss.delta, sizeof(float) * (size_t)ss.ncone * ss.nshell * ss.side * ss.side);
    getrusage(RUSAGE_SELF, &ru);
    rss[lss_mpi_rank()] = ru.ru_maxrss / 1024.0;
    lss_mpi_allgather(rss, R, sizeof(double)); /* one item per rank: each rank's block is its own entry */
    for (k = 1; k < R; k++) if (rss[k] > rss[0]) rss[0] = rss[k];
    if (lss_mpi_rank() == 0)
        printf("np %d mesh %d steps %d ranks %d%s threads %d: ic %.3f s, %.4f s per step, fft %.4f s per step, "
               "%.2f MB sent per step, peak memory %.0f MB per rank, shells hash %016llx\n", np, o.mesh ? o.mesh : 2 * np, steps,
               R, lean && R > 1 ? " (lean)" : "", lss__nb_nthreads(), t, dt[(steps - 1) / 2], st.fft / (st.nforce ? st.nforce : 1), ms, rss[0],
               (unsigned long long)h);
    lss_shellset_free(&ss);
    lss_nbody_free(s);
    lss_cosmo_free(c);
    free(dt);
    lss_mpi_finalize();
    return 0;
}
