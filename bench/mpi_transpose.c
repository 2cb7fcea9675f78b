/* mpi_transpose.c - the slab transpose of a distributed N-body force mesh three ways: FFTW-MPI's in-place
 * transpose (lss_nbody_create_dist with lean = 1: no second mesh buffer), FFTW-MPI out of place into a second
 * slab with FFTW_DESTROY_INPUT (the default), and a plain MPI_Alltoallv of the same blocks packed into a second
 * slab buffer.
 *   mpirun -np R build/mpi/mpi_transpose [MESH [REPS]]     (make build/mpi/mpi_transpose; defaults 384, 10)
 * Layout as in lss_maps.h: x planes of [mesh][2 cp] floats, cp = mesh/2 + 1 rounded up to a multiple of 4,
 * slabs of ceil(mesh / R) planes. Prints the seconds per transpose of each (medians over REPS, after one
 * warm-up) and the slab size. The serial build only says that it needs MPI. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef LSS_MPI
#include <fftw3-mpi.h>
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
    int n, reps, cp, P, r, k, it;
    ptrdiff_t nn[2], ln0, s0, ln1, s1, al;
    MPI_Init(&argc, &argv);
    fftwf_mpi_init();
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    n = argc > 1 ? atoi(argv[1]) : 384;
    reps = argc > 2 ? atoi(argv[2]) : 10;
    if (n < 8 || reps < 1 || reps > 1000) { if (!r) fprintf(stderr, "mpi_transpose: MESH >= 8, REPS 1..1000\n"); MPI_Finalize(); return 2; }
    cp = (n / 2 + 1 + 3) & ~3;
    nn[0] = nn[1] = n;
    al = fftwf_mpi_local_size_many_transposed(2, nn, 2 * cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, MPI_COMM_WORLD, &ln0, &s0, &ln1, &s1);
    {
        int blk = (n + P - 1) / P, nx = (int)ln0;
        size_t row = 2 * (size_t)cp, fl = (size_t)al > (size_t)blk * n * row ? (size_t)al : (size_t)blk * n * row;
        float *w = fftwf_alloc_real(fl), *sb = fftwf_alloc_real(fl);
        double *ta = malloc(sizeof(double) * (size_t)(reps + 1)), *tb = malloc(sizeof(double) * (size_t)(reps + 1));
        double *tc = malloc(sizeof(double) * (size_t)(reps + 1));
        int *sc = malloc(sizeof(int) * 4 * (size_t)P), *sd = sc + P, *rc = sd + P, *rd = rc + P;
        fftwf_plan tp = fftwf_mpi_plan_many_transpose(n, n, 2 * cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, w, w, MPI_COMM_WORLD, FFTW_ESTIMATE);
        fftwf_plan to = fftwf_mpi_plan_many_transpose(n, n, 2 * cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, w, sb, MPI_COMM_WORLD,
                                                      FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
        MPI_Datatype t;
        if (!w || !sb || !ta || !tb || !tc || !sc || !tp || !to) { fprintf(stderr, "mpi_transpose: out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
        for (size_t i = 0; i < fl; i++) w[i] = (float)(i % 97);
        MPI_Type_contiguous((int)row, MPI_FLOAT, &t);
        MPI_Type_commit(&t);
        for (k = 0; k < P; k++) {
            int nk = n - k * blk < blk ? n - k * blk : blk;
            if (nk < 0) nk = 0;
            sc[k] = nx * nk, rc[k] = nk * nx;
        }
        sd[0] = rd[0] = 0;
        for (k = 1; k < P; k++) sd[k] = sd[k - 1] + sc[k - 1], rd[k] = rd[k - 1] + rc[k - 1];
        for (it = 0; it <= reps; it++) {
            double t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            fftwf_mpi_execute_r2r(tp, w, w);
            ta[it] = MPI_Wtime() - t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            fftwf_mpi_execute_r2r(to, w, sb);
            tc[it] = MPI_Wtime() - t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            for (k = 0; k < P; k++) { /* [x][ky][row] -> [dest][x][ky of dest][row], then into w */
                int nk = sc[k] / (nx ? nx : 1), x;
                for (x = 0; x < nx; x++)
                    memcpy(sb + ((size_t)sd[k] + (size_t)x * nk) * row, w + ((size_t)x * n + (size_t)k * blk) * row, sizeof(float) * row * (size_t)nk);
            }
            MPI_Alltoallv(sb, sc, sd, t, w, rc, rd, t, MPI_COMM_WORLD);
            tb[it] = MPI_Wtime() - t0;
        }
        qsort(ta + 1, (size_t)reps, sizeof(double), cmpd);
        qsort(tb + 1, (size_t)reps, sizeof(double), cmpd);
        qsort(tc + 1, (size_t)reps, sizeof(double), cmpd);
        if (!r)
            printf("mesh %d, %d ranks, slab %.1f MB: FFTW-MPI in place %.4f s, FFTW-MPI out of place (destroying its input) %.4f s, "
                   "MPI_Alltoallv into a second slab %.4f s\n", n, P, 4.0 * (double)nx * n * row / 1e6, ta[1 + reps / 2], tc[1 + reps / 2],
                   tb[1 + reps / 2]);
        MPI_Type_free(&t);
        fftwf_destroy_plan(tp), fftwf_destroy_plan(to);
        fftwf_free(w), fftwf_free(sb), free(ta), free(tb), free(tc), free(sc);
    }
    MPI_Finalize();
    return 0;
}
#else
int main(void) {
    fprintf(stderr, "mpi_transpose: an MPI benchmark; build it with make build/mpi/mpi_transpose and run it under mpirun\n");
    return 0;
}
#endif
