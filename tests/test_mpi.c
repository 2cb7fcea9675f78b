/* test_mpi.c - data-parallel gradients (lss_dp) in one process, and, when mpirun and the MPI builds
 * exist (make test builds them where mpicc is), the MPI runs against the serial ones: training
 * steps, resume with another rank count, sampler chains and simulated maps bitwise identical with
 * 1, 2 and 3 ranks; a killed rank stops the job and leaves the last checkpoint intact. */
#define _POSIX_C_SOURCE 200809L
#define LSS_IMPLEMENTATION
#include "lss_core.h"
#include "lss_nn.h"
#include "lss_test.h"
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ---- lss_mpi_block: a partition in rank order, sizes differing by at most one */
static void test_block(void) {
    int64_t n, lo, hi;
    int size, r, ok = 1;
    for (n = 0; n <= 40; n++)
        for (size = 1; size <= 7; size++) {
            int64_t next = 0, mn = n, mx = 0;
            for (r = 0; r < size; r++) {
                lss_mpi_block(n, r, size, &lo, &hi);
                if (lo != next || hi < lo) ok = 0;
                next = hi;
                if (hi - lo < mn) mn = hi - lo;
                if (hi - lo > mx) mx = hi - lo;
            }
            if (next != n || mx - mn > 1) ok = 0;
        }
    CHECK(ok, "lss_mpi_block is not a balanced partition in rank order");
    CHECK(lss_mpi_rank() == 0 && lss_mpi_size() == 1, "one process: rank %d of %d", lss_mpi_rank(), lss_mpi_size());
}

/* ---- lss_dp in one process: the shard sum is the batch gradient; failures name the shard */
typedef struct {
    lss_store *st;
    lss_graph *g;
    lss_tensor *w, *b;
    float x[10 * 3], y[10];
    int fail_shard, fail_status;
} lin;

static int lin_shard(void *u, int s, int ns, double *loss) {
    lin *m = (lin *)u;
    int64_t lo, hi, xs[2], ys[2];
    lss_tensor *l;
    int st;
    if (s == m->fail_shard) return m->fail_status == LSS_ERR_NUMERIC ? LSS_ERR_NUMERIC : lss_seterr(m->fail_status, "bad data in shard");
    lss_dp_shard(10, s, ns, &lo, &hi);
    xs[0] = ys[0] = hi - lo, xs[1] = 3, ys[1] = 1;
    lss_graph_reset(m->g);
    l = lss_op_mse(m->g, lss_op_dense(m->g, lss_view(m->g, m->x + 3 * lo, 2, xs), m->w, m->b), lss_view(m->g, m->y + lo, 2, ys));
    l = lss_op_scale(m->g, l, (float)(hi - lo) / 10.0f);
    if ((st = lss_backward(m->g, l)) != LSS_OK) return st;
    *loss = l->data[0];
    return LSS_OK;
}

static void test_dp_serial(void) {
    lin m;
    lss_dp *d1 = NULL, *d4 = NULL;
    float g1[4], g4[4];
    double l1 = 0, l4 = 0, ref = 0;
    int i;
    lss_rng r;
    int64_t sw[2] = {3, 1}, sb[1] = {1};
    memset(&m, 0, sizeof m);
    m.fail_shard = -1;
    CHECK_OK(lss_store_create(1, &m.st));
    m.w = lss_store_add(m.st, "w", 2, sw, LSS_INIT_GLOROT);
    m.b = lss_store_add(m.st, "b", 1, sb, LSS_INIT_ZERO);
    CHECK_OK(lss_store_status(m.st));
    CHECK_OK(lss_graph_create(&m.g));
    lss_rng_init(&r, 2, 0);
    for (i = 0; i < 30; i++) m.x[i] = (float)lss_rng_normal(&r);
    for (i = 0; i < 10; i++) m.y[i] = (float)lss_rng_normal(&r);
    CHECK_OK(lss_dp_create(m.st, 1, &d1));
    CHECK_OK(lss_dp_create(m.st, 4, &d4));
    CHECK_OK(lss_dp_grad(d1, lin_shard, &m, &l1));
    memcpy(g1, lss_store_grad(m.st), sizeof g1);
    CHECK_OK(lss_dp_grad(d4, lin_shard, &m, &l4));
    memcpy(g4, lss_store_grad(m.st), sizeof g4);
    /* the loss by hand: mean squared residual over the whole batch */
    for (i = 0; i < 10; i++) {
        const float *w = lss_store_data(m.st);
        double p = w[0] * m.x[3 * i] + w[1] * m.x[3 * i + 1] + w[2] * m.x[3 * i + 2] + w[3] - m.y[i];
        ref += p * p / 10;
    }
    CHECK_CLOSE(l1, ref, 1e-5, 0, "one shard: batch loss");
    CHECK_CLOSE(l4, ref, 1e-5, 0, "four shards: batch loss");
    for (i = 0; i < 4; i++) CHECK_CLOSE(g4[i], g1[i], 1e-5, 1e-7, "four shards: gradient = one-shard gradient");
    CHECK(lss_dp_bytes(d4) == 0, "one process sends nothing");
    m.fail_shard = 2, m.fail_status = LSS_ERR_NUMERIC;
    CHECK_ERR(lss_dp_grad(d4, lin_shard, &m, &l4), LSS_ERR_NUMERIC);
    m.fail_status = LSS_ERR_SHAPE;
    CHECK_ERR(lss_dp_grad(d4, lin_shard, &m, &l4), LSS_ERR_SHAPE);
    CHECK(strstr(lss_last_error(), "shard 2 of 4") && strstr(lss_last_error(), "bad data"), "message: %s", lss_last_error());
    lss_dp_free(d1);
    CHECK_ERR(lss_dp_create(m.st, 0, &d1), LSS_ERR_ARG);
    CHECK(d1 == NULL, "a failed lss_dp_create hands out NULL");
    lss_dp_free(d4);
    lss_graph_free(m.g);
    lss_store_free(m.st);
}

/* ---- under mpirun */
static int exists(const char *p) { struct stat s; return stat(p, &s) == 0; }

static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    int st;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* 1 when the files are byte for byte the same */
static int same(const char *a, const char *b) { return sh("cmp -s '%s' '%s'", a, b) == 0; }

/* each of the n files of run directory PREFIX0 equals its namesake in PREFIX<k> (one check per file) */
static void same_files(const char *prefix, int k, const char **f, int n, const char *what) {
    char a[512], b[512];
    int j;
    for (j = 0; j < n; j++) {
        snprintf(a, sizeof a, "%s0/%s", prefix, f[j]), snprintf(b, sizeof b, "%s%d/%s", prefix, k, f[j]);
        CHECK(same(a, b), "%s with %d rank(s): %s differs from the serial run", what, k, f[j]);
    }
}

#define MPIRUN "mpirun --oversubscribe -np"
#define T "build/test_mpi"

static void test_mpi_runs(void) {
    int k;
    if (sh("command -v mpirun >/dev/null 2>&1") != 0) { SKIP("no mpirun (make deps MPI=1 installs OpenMPI)"); return; }
    if (!exists("build/mpi/mpi_check") || !exists("build/mpi/mpi_check_serial") || !exists("bin/mpi/lss-sim") || !exists("bin/lss-sim") ||
        !exists("bin/mpi/deeplss") || !exists("bin/mpi/massmap") || !exists("bin/mpi/flowgen") || !exists("bin/mpi/cgan") || !exists("bin/cgan")) {
        SKIP("the MPI programs are not built (make test builds them when mpicc exists)");
        return;
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1); /* CI runs as root */
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1); /* containers without ptrace between processes */
    setenv("OMP_NUM_THREADS", "1", 1);
    CHECK(sh("rm -rf " T " && mkdir -p " T "/s0 " T "/e0 " T "/m0") == 0, "cannot make " T);
    /* serial references */
    CHECK(sh("build/mpi/mpi_check_serial train " T "/s0 8 > " T "/log 2>&1") == 0, "serial training failed");
    CHECK(sh("build/mpi/mpi_check_serial emcee " T "/e0 > " T "/log 2>&1") == 0, "serial sampler failed");
    CHECK(sh("bin/lss-sim --out " T "/m0 --n 7 --seed 5 --prior > " T "/log 2>&1") == 0, "serial lss-sim failed");
    for (k = 1; k <= 3; k++) {
        CHECK(sh("mkdir -p " T "/s%d " T "/e%d && " MPIRUN " %d build/mpi/mpi_check train " T "/s%d 8 > " T "/log 2>&1", k, k, k, k) == 0,
              "training under mpirun -np %d failed", k);
        same_files(T "/s", k, (const char *[]){"params.bin", "net.ckpt", "loss.csv"}, 3, "training");
        CHECK(sh(MPIRUN " %d build/mpi/mpi_check sum > " T "/sum 2>&1 && grep -q 'sum: ok' " T "/sum", k) == 0,
              "lss_mpi_sum_ordered with %d rank(s) differs from the serial sum", k);
        CHECK(sh(MPIRUN " %d build/mpi/mpi_check emcee " T "/e%d > " T "/log 2>&1", k, k) == 0, "sampler under mpirun -np %d failed", k);
        same_files(T "/e", k, (const char *[]){"chain.npy"}, 1, "sampler");
        CHECK(sh(MPIRUN " %d bin/mpi/lss-sim --out " T "/m%d --n 7 --seed 5 --prior > " T "/log 2>&1", k, k) == 0, "lss-sim under mpirun -np %d failed", k);
        same_files(T "/m", k, (const char *[]){"maps.npy", "params.csv"}, 2, "lss-sim");
    }
    /* drivers: deeplss training with 6 shards (two networks, taking turns under MPI), massmap posterior
       samples in batches of 3 chains spread over the ranks, the mass-mapping U-net trained with 3 shards */
    CHECK(sh("bin/deeplss sim --out " T "/d0 --ncosmo 3 --nfield 1 > " T "/log 2>&1 && cp -r " T "/d0 " T "/d1 && cp -r " T "/d0 " T "/d2 && "
             "cp -r " T "/d0 " T "/d3") == 0,
          "deeplss sim failed");
    CHECK(sh("bin/massmap mock --size 16 --nfields 1 --out " T "/mm > " T "/log 2>&1") == 0, "massmap mock failed");
#define DLT " train --steps 6 --batch 12 --shards 6 --nets cnn,psd --probes comb --out " T
#define MMS " sample --shear " T "/mm/shear.npy --noise-var " T "/mm/noise_var.npy --ps " T "/mm/ps.csv --nsamples 10 --batch 3 --out " T
#define MMT " train-prior --mock " T "/mm --steps 6 --batch 6 --c0 4 --eval-every 2 --shards 3 --out " T
    CHECK(sh("bin/deeplss" DLT "/d0 > " T "/log 2>&1 && bin/massmap" MMS "/p0 > " T "/log 2>&1 && bin/massmap" MMT "/q0 > " T "/log 2>&1") == 0,
          "serial deeplss train / massmap sample / massmap train-prior failed");
    for (k = 1; k <= 3; k++) {
        const char *f[3] = {"net_cnn_comb.ckpt", "net_psd_comb.ckpt", "loss.csv"};
        CHECK(sh(MPIRUN " %d bin/mpi/deeplss" DLT "/d%d > " T "/log 2>&1", k, k) == 0, "deeplss train under mpirun -np %d failed", k);
        same_files(T "/d", k, f, 3, "deeplss train");
        CHECK(sh(MPIRUN " %d bin/mpi/massmap" MMT "/q%d > " T "/log 2>&1", k, k) == 0, "massmap train-prior under mpirun -np %d failed", k);
        same_files(T "/q", k, (const char *[]){"prior.ckpt"}, 1, "massmap train-prior");
        CHECK(sh(MPIRUN " %d bin/mpi/massmap" MMS "/p%d > " T "/log 2>&1", k, k) == 0, "massmap sample under mpirun -np %d failed", k);
        same_files(T "/p", k, (const char *[]){"samples.npy"}, 1, "massmap sample");
    }
    /* the whole DeepLSS pipeline (pool, training with 3 shards, predictions, Fisher rows, MDNs, chains) at 3 ranks */
#define DLA " all --ncosmo 4 --nfield 1 --pred-per-cosmo 4 --ncal 3 --nfid 2 --mcmc-steps 10 --steps 4 --batch 6 --shards 3" \
            " --fisher-nfid 600 --fisher-nder 6 --out " T
    CHECK(sh("bin/deeplss" DLA "/a0 > " T "/log 2>&1") == 0, "serial deeplss all failed");
    CHECK(sh(MPIRUN " 3 bin/mpi/deeplss" DLA "/a3 > " T "/log 2>&1") == 0, "deeplss all under mpirun -np 3 failed");
    CHECK(sh("n=0; for f in $(cd " T "/a0 && ls | grep -E 'npy$|csv$|ckpt$'); do cmp -s " T "/a0/$f " T "/a3/$f || exit 1; n=$((n+1)); done;"
             " [ $n -ge 40 ]") == 0, "deeplss all with 3 ranks: an output (NPY, CSV or checkpoint) differs from the serial run's");
    /* flowgen: the flow and the diffusion model trained with 3 shards */
    CHECK(sh("bin/flowgen data --dir " T "/g0 --scale demo --ntrain 64 --nvalid 16 --ntest 16 > " T "/log 2>&1 && cp -r " T "/g0 " T "/g2 && "
             "cp -r " T "/g0 " T "/g3") == 0, "flowgen data failed");
#define FGT " --steps 4 --batch 6 --checkpoint-every 2 --shards 3 --dir " T
    CHECK(sh("bin/flowgen train --model flow" FGT "/g0 > " T "/log 2>&1 && bin/flowgen train --model diffusion" FGT "/g0 > " T "/log 2>&1") == 0,
          "serial flowgen train failed");
    for (k = 2; k <= 3; k++) {
        const char *f[4] = {"flow/model.ckpt", "flow/loss.csv", "diffusion/model.ckpt", "diffusion/loss.csv"};
        CHECK(sh(MPIRUN " %d bin/mpi/flowgen train --model flow" FGT "/g%d > " T "/log 2>&1 && " MPIRUN
                 " %d bin/mpi/flowgen train --model diffusion" FGT "/g%d > " T "/log 2>&1", k, k, k, k) == 0,
              "flowgen train under mpirun -np %d failed", k);
        same_files(T "/g", k, f, 4, "flowgen train");
    }
    /* an N-body shell library: each rank runs and writes its block of the cosmologies */
#define NBA " nbody --cosmologies 3 --np 16 --steps 4 --ncone 1 --side 16 --zmax 0.5 --out " T
    CHECK(sh("bin/lss-sim" NBA "/n0 > " T "/log 2>&1") == 0, "serial lss-sim nbody failed");
    for (k = 2; k <= 3; k++) {
        const char *f[4] = {"shells_0000.npy", "shells_0001.npy", "shells_0002.npy", "cosmologies.csv"};
        CHECK(sh(MPIRUN " %d bin/mpi/lss-sim" NBA "/n%d > " T "/log 2>&1", k, k) == 0, "lss-sim nbody under mpirun -np %d failed", k);
        same_files(T "/n", k, f, 4, "lss-sim nbody");
    }
    /* one N-body box over 1-3 ranks (--split box): the library of the serial run */
    CHECK(sh("rm -rf " T "/b0 && cp -r " T "/n0 " T "/b0") == 0, "copy of the serial library failed");
    for (k = 1; k <= 3; k++) {
        const char *f[4] = {"shells_0000.npy", "shells_0001.npy", "shells_0002.npy", "cosmologies.csv"};
        CHECK(sh(MPIRUN " %d bin/mpi/lss-sim" NBA "/b%d --split box > " T "/log 2>&1", k, k) == 0,
              "lss-sim nbody --split box under mpirun -np %d failed", k);
        same_files(T "/b", k, f, 4, "lss-sim nbody --split box");
    }
    /* positions, momenta and shells of one box over 1-3 ranks (threads 1 or 2): 2LPT with a 2x force mesh and
       out-of-place transposes, and Zel'dovich with the mesh of the particle grid (slabs of 6, 6 and 4 planes at 3
       ranks) and in-place ones */
    {
        static const char *cfg[2] = {"16 32 2 0", "16 16 1 1"};
        const char *f[3] = {"pos.bin", "mom.bin", "shells.npy"};
        int c;
        for (c = 0; c < 2; c++) {
            CHECK(sh("mkdir -p " T "/p0 && build/mpi/mpi_check_serial nbody " T "/p0 %s > " T "/log 2>&1", cfg[c]) == 0,
                  "serial N-body run (%s) failed", cfg[c]);
            for (k = 1; k <= 3; k++) {
                CHECK(sh("mkdir -p " T "/p%d && OMP_NUM_THREADS=%d " MPIRUN " %d build/mpi/mpi_check nbody " T "/p%d %s > " T
                         "/log 2>&1", k, 1 + k % 2, k, k, cfg[c]) == 0, "N-body run (%s) under mpirun -np %d failed", cfg[c], k);
                same_files(T "/p", k, f, 3, "one N-body box");
            }
        }
        /* checkpoints of a split box: 2 ranks cancelled (by the last rank alone) after step 3, resumed on 3 ranks with
           in-place transposes and cancelled after step 5, finished serially: the serial shells; and a serial
           checkpoint finished on 2 ranks */
#define NCK " nbody-ck " T "/q%d 16 32 2"
        CHECK(sh("rm -rf " T "/q0 " T "/q1 " T "/q2 && mkdir -p " T "/q0 " T "/q1 " T "/q2 && build/mpi/mpi_check_serial" NCK " 0 0 > " T
                 "/log 2>&1", 0) == 0, "serial N-body light cone with a checkpoint path failed");
        CHECK(sh(MPIRUN " 2 build/mpi/mpi_check" NCK " 0 3 > " T "/log 2>&1", 1) != 0 && exists(T "/q1/run.ckpt") &&
              exists(T "/q1/run.ckpt.s3.r0") && exists(T "/q1/run.ckpt.s3.r1"), "2 ranks cancelled after step 3: index and 2 parts");
        CHECK(sh(MPIRUN " 3 build/mpi/mpi_check" NCK " 1 5 > " T "/log 2>&1", 1) != 0 && exists(T "/q1/run.ckpt.s5.r2") &&
              !exists(T "/q1/run.ckpt.s3.r0"), "resumed on 3 ranks, cancelled after step 5: 3 new parts, the old ones removed");
        CHECK(sh("build/mpi/mpi_check_serial" NCK " 0 0 > " T "/log 2>&1", 1) == 0 && !exists(T "/q1/run.ckpt") &&
              !exists(T "/q1/run.ckpt.s5.r0"), "the serial run finishes from the 3-rank checkpoint and removes it");
        CHECK(same(T "/q0/shells.npy", T "/q1/shells.npy"), "shells after 2 -> 3 -> 1 ranks equal the uninterrupted serial run");
        CHECK(sh("build/mpi/mpi_check_serial" NCK " 0 2 > " T "/log 2>&1", 2) == 3 && exists(T "/q2/run.ckpt"),
              "serial run cancelled after step 2 (exit 3, checkpoint kept)");
        CHECK(sh(MPIRUN " 2 build/mpi/mpi_check" NCK " 0 0 > " T "/log 2>&1", 2) == 0 && same(T "/q0/shells.npy", T "/q2/shells.npy") &&
              !exists(T "/q2/run.ckpt"), "a serial checkpoint finished on 2 ranks gives the serial shells");
        /* a part missing: a clear error, nothing overwritten */
        CHECK(sh("rm -rf " T "/q3 && mkdir -p " T "/q3 && " MPIRUN " 2 build/mpi/mpi_check" NCK " 0 2 > " T "/log 2>&1", 3) != 0 &&
              sh("rm " T "/q3/run.ckpt.s2.r1 && build/mpi/mpi_check_serial" NCK " 0 0 > " T "/q3log 2>&1", 3) == 1 &&
              sh("grep -q 'run.ckpt.s2.r1. is missing' " T "/q3log") == 0 && exists(T "/q3/run.ckpt") && exists(T "/q3/run.ckpt.s2.r0"),
              "a checkpoint with a part missing: exit 1 naming the part, the checkpoint left as it was");
        /* too many ranks for the mesh: a clear error from every rank, no hang */
        k = sh("mkdir -p " T "/pe && timeout 120 " MPIRUN " 5 build/mpi/mpi_check nbody " T "/pe 16 16 1 0 > " T "/pelog 2>&1");
        CHECK(k != 0 && k != 124, "N-body over too many ranks: exit status %d (want a failure, not a hang)", k);
        CHECK(sh("grep -q 'each rank needs at least 3 planes' " T "/pelog") == 0, "N-body over too many ranks: no clear message");
    }
    /* cGAN training with 3 shards: critic and generator checkpoints and losses of the serial run at 2 and 3 ranks */
#define CGT " train --what gan --scale demo --iterations 4 --batch 6 --checkpoint-every 2 --shards 3 --dir " T
    CHECK(sh("rm -rf " T "/c0 && bin/cgan data --dir " T "/c0 --scale demo --ntrain 8 --ntest 8 --seed 7 > " T "/log 2>&1 && bin/cgan" CGT
             "/c0 > " T "/log 2>&1") == 0, "serial cgan data and train failed");
    for (k = 2; k <= 3; k++) {
        const char *f[3] = {"critic.ckpt", "gen.ckpt", "loss_gan.csv"};
        CHECK(sh("rm -rf " T "/c%d && mkdir -p " T "/c%d && cp -r " T "/c0/data " T "/c%d/ && " MPIRUN " %d bin/mpi/cgan" CGT "/c%d > " T
                 "/log 2>&1", k, k, k, k, k) == 0, "cgan train under mpirun -np %d failed", k);
        same_files(T "/c", k, f, 3, "cgan train --shards 3");
    }
    /* resume with another rank count (2 ranks to step 4, then 3 ranks with 2 threads each to step 8) */
    CHECK(sh("mkdir -p " T "/r && " MPIRUN " 2 build/mpi/mpi_check train " T "/r 4 > " T "/log 2>&1 && OMP_NUM_THREADS=2 " MPIRUN
             " 3 build/mpi/mpi_check train " T "/r 8 > " T "/log 2>&1") == 0, "training resumed under another rank count failed");
    CHECK(same(T "/s0/params.bin", T "/r/params.bin") && same(T "/s0/loss.csv", T "/r/loss.csv"),
          "a run resumed with 3 ranks after 4 steps on 2 differs from the serial run");
    /* a rank killed at step 5: the job stops, the checkpoint of step 4 is intact and resumes exactly */
    k = sh("mkdir -p " T "/k && LSS_TEST_KILL=1:5 timeout 120 " MPIRUN " 2 build/mpi/mpi_check train " T "/k 8 > " T "/klog 2>&1");
    CHECK(k != 0 && k != 124, "mpirun with a killed rank: exit status %d (want non-zero, no hang)", k);
    CHECK(sh("grep -q 'exited on signal 9' " T "/klog") == 0, "mpirun did not say which rank died (see " T "/klog)");
    CHECK(sh("build/mpi/mpi_check_serial train " T "/k 8 > " T "/log 2>&1") == 0, "resume after the killed run failed");
    CHECK(same(T "/s0/params.bin", T "/k/params.bin"), "the run resumed after a killed rank differs from the serial run");
    /* a log-probability that fails on rank 1 only: every rank learns of it (lss_mpi_agree), the job stops, no hang */
    k = sh("mkdir -p " T "/ef && LSS_TEST_LOGP_FAIL=1 timeout 120 " MPIRUN " 2 build/mpi/mpi_check emcee " T "/ef > " T "/eflog 2>&1");
    CHECK(k != 0 && k != 124, "a failing log-probability on rank 1: exit status %d (want non-zero, no hang)", k);
    CHECK(sh("grep -q 'failed on rank 1' " T "/eflog && grep -q 'test failure on rank 1' " T "/eflog") == 0,
          "the failing rank is not named, or its own message is missing (see " T "/eflog)");
    /* bad input under mpirun: one clear message and a non-zero exit */
    k = sh(MPIRUN " 2 bin/mpi/lss-sim --out " T "/bad --n 0 > " T "/blog 2>&1");
    CHECK(k == 2, "lss-sim --n 0 under mpirun: exit status %d (want 2)", k);
    CHECK(sh("grep -q 'option --n' " T "/blog") == 0, "lss-sim --n 0 under mpirun: no message naming the option");
}

int main(void) {
    RUN(test_block);
    RUN(test_dp_serial);
    if (getenv("LSS_TEST_ASAN")) SKIP("the MPI runs belong to make test (this is the sanitizer build)");
    else RUN(test_mpi_runs);
    LSS_TEST_END();
}
