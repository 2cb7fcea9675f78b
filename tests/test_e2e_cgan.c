#define _POSIX_C_SOURCE 200809L
/* test_e2e_cgan.c - bin/cgan end to end on a tiny data set (demo networks, 16 maps per cosmology, a few steps):
 *  - data writes the grid (25 training, 4 interpolation, 2 extrapolation cosmologies) and maps that are a pure
 *    function of (seed, cosmology, map): the test maps of a held-out cosmology equal lss_mm_kappa_draw's;
 *  - train, killed after its first checkpoint and resumed, ends with checkpoints bitwise equal to an
 *    uninterrupted run (generator, critic, regressor) and the same loss CSV;
 *  - sample writes [n, side, side] maps equal to lss_cgan_generate from the checkpoint (same latents);
 *  - eval writes a row per cosmology with finite scores; interpolate writes its two rows of maps;
 *  - bad input exits 2 with one line on stderr: a missing data set, an unknown scale, a parameter outside its
 *    range, a corrupted checkpoint (and nothing is written).
 * Skipped (counted) when bin/cgan is not built. */
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

static char dir[256];
static const char *prog = "bin/cgan";

#include "tests/lss_e2e.h"


#define TRAIN_ARGS "--scale demo --iterations 4 --regressor-steps 4 --batch 4 --checkpoint-every 2"

static void test_cgan_e2e(void) {
    char d1[512], d2[512], p1[600], p2[600];
    snprintf(d1, sizeof d1, "%s/a", dir), snprintf(d2, sizeof d2, "%s/b", dir);
    CHECK(run("data --dir %s --scale demo --ntrain 8 --ntest 8 --seed 7%s", d1, NULL) == 0, "cgan data");
    {   /* the second directory shares the data */
        char cmd[2000];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp -r '%s/data' '%s/'", d2, d1, d2);
        CHECK(system(cmd) == 0, "copy of the data set");
    }
    snprintf(p1, sizeof p1, "%s/data/test.npy", d1);
    {   /* the test maps of cosmology 26 (held-out) against lss_mm_kappa_draw */
        float *t = NULL, ref[16 * 32 * 32];
        int nd = 0;
        int64_t sh[8];
        lss_params p;
        lss_csv c;
        CHECK_OK(lss_npy_load_f32(p1, &t, &nd, sh));
        CHECK(nd == 4 && sh[0] == 31 && sh[1] == 16 && sh[2] == 32 && sh[3] == 32, "test.npy is [31, 16, 32, 32]");
        snprintf(p2, sizeof p2, "%s/data/cosmologies.csv", d1);
        CHECK_OK(lss_csv_read(p2, &c));
        CHECK(c.nrows == 31 && c.data[26 * 4 + 3] == 1 && c.data[30 * 4 + 3] == 2 && c.data[0 * 4 + 3] == 0, "splits");
        lss_mm_params_planck15(&p);
        p.omega_m = c.data[26 * 4 + 1], p.sigma_8 = c.data[26 * 4 + 2];
        lss_mm_kappa_gen *kg = NULL;
        CHECK_OK(lss_mm_kappa_gen_create(&p, "cosmos", 32, 4, 5.0 * 60 / 128, &kg));
#ifdef _OPENMP
        omp_set_num_threads(1);   /* the driver ran with every thread: the maps do not depend on the thread count */
#endif
        CHECK_OK(lss_mm_kappa_draw(kg, 7, lss_set_index(LSS_SET_TEST, (uint64_t)26 << 24), 16, ref));
        lss_mm_kappa_gen_free(kg);
        CHECK(t && !memcmp(ref, t + (int64_t)26 * 16 * 32 * 32, sizeof ref), "held-out test maps equal lss_mm_kappa_draw");
        lss_csv_free(&c);
        free(t);
    }
    /* uninterrupted in d1; in d2 stopped at 2 then resumed to 4 */
    CHECK(run("train --dir %s " TRAIN_ARGS "%s", d1, NULL) == 0, "cgan train");
    CHECK(run("train --dir %s --scale demo --iterations 2 --regressor-steps 2 --batch 4 --checkpoint-every 2%s", d2, NULL) == 0, "cgan train to 2");
    CHECK(run("train --dir %s " TRAIN_ARGS " --resume%s", d2, NULL) == 0, "cgan train --resume");
    {
        const char *f[] = {"gen.ckpt", "critic.ckpt", "regressor.ckpt", "loss_gan.csv", "loss_regressor.csv"};
        for (int i = 0; i < 5; i++) {
            snprintf(p1, sizeof p1, "%s/%s", d1, f[i]), snprintf(p2, sizeof p2, "%s/%s", d2, f[i]);
            CHECK(same_file(p1, p2), "resumed %s equals the uninterrupted one", f[i]);
        }
    }
    snprintf(p1, sizeof p1, "%s/s.npy", dir);
    CHECK(run("sample --dir %s --omega-m 0.31 --sigma-8 0.77 --n 5 --out %s", d1, p1) == 0, "cgan sample");
    {
        float *x = NULL, *ref;
        int nd = 0, ok = 1;
        int64_t sh[8];
        lss_cgan m;
        lss_cgan_opts o;
        CHECK_OK(lss_npy_load_f32(p1, &x, &nd, sh));
        CHECK(nd == 3 && sh[0] == 5 && sh[1] == 32 && sh[2] == 32, "samples [5, 32, 32]");
        /* the same generator rebuilt here: the demo networks (w0 8, latent 64), grid ranges of the data */
        memset(&o, 0, sizeof o);
        CHECK_OK(lss_cgan_opts_paper(32, 3, 8, 256, 64, &o));
        o.nparam = 2, o.lo[0] = 0.2, o.hi[0] = 0.4, o.lo[1] = 0.6, o.hi[1] = 1.0, o.batch = 4, o.seed = 7;
        CHECK_OK(lss_cgan_init(&m, &o));
        snprintf(p2, sizeof p2, "%s/gen.ckpt", d1);
        CHECK_OK(lss_ckpt_load(p2, m.sg, NULL));
        ref = (float *)calloc(5 * 1024, sizeof(float));
        float y[10];
        for (int i = 0; i < 5; i++) y[2 * i] = 0.31f, y[2 * i + 1] = 0.77f;
        CHECK_OK(lss_cgan_generate(&m, NULL, y, 5, 0, ref));
        lss_cgan_to_kappa(&m, ref, 5 * 1024);
        for (int i = 0; x && i < 5 * 1024; i++) if (x[i] != ref[i]) ok = 0;
        CHECK(ok, "sample equals lss_cgan_generate from the checkpoint");
        free(ref), free(x), lss_cgan_free(&m);
    }
    CHECK(run("eval --dir %s --n 8 --ssim-pairs 8%s", d1, NULL) == 0, "cgan eval");
    {
        lss_csv c;
        int ok = 1;
        snprintf(p1, sizeof p1, "%s/eval/eval.csv", d1);
        CHECK_OK(lss_csv_read(p1, &c));
        CHECK(c.nrows == 31 && c.ncols == 28, "eval.csv has 31 rows of 28 columns");
        for (int64_t i = 0; i < c.nrows; i++)
            for (int j = 4; j < 10; j++) if (!isfinite(c.data[i * c.ncols + j])) ok = 0;
        CHECK(ok, "finite spectrum and histogram errors");
        lss_csv_free(&c);
        snprintf(p1, sizeof p1, "%s/eval/table.md", d1);
        CHECK(exists(p1), "table.md");
    }
    CHECK(run("interpolate --dir %s --n 3%s", d1, NULL) == 0, "cgan interpolate");
    snprintf(p1, sizeof p1, "%s/interpolate/interp_sigma8.npy", d1);
    CHECK(exists(p1), "interpolation maps");
    /* bad input */
    CHECK(run("train --dir %s/nowhere%s", dir, NULL) == 2 && stderr_one_line(), "missing data set: exit 2, one line");
    CHECK(run("data --dir %s/x --scale huge%s", dir, NULL) == 2 && stderr_one_line(), "unknown scale: exit 2");
    snprintf(p1, sizeof p1, "%s/s2.npy", dir);
    CHECK(run("sample --dir %s --omega-m 3 --out %s", d1, p1) == 2 && stderr_one_line() && !exists(p1), "Omega_m out of range: exit 2, no output");
    {   /* a corrupted generator checkpoint */
        FILE *f;
        snprintf(p2, sizeof p2, "%s/gen.ckpt", d2);
        if ((f = fopen(p2, "r+b"))) { fseek(f, 200, SEEK_SET); fputc(0x5a, f); fclose(f); }
        CHECK(run("sample --dir %s --out %s", d2, p1) == 2 && stderr_one_line() && !exists(p1), "corrupted checkpoint: exit 2, no output");
    }
    {   /* a NaN in the training maps */
        FILE *f;
        float nan = NAN;
        snprintf(p2, sizeof p2, "%s/data/train.npy", d2);
        if ((f = fopen(p2, "r+b"))) { fseek(f, 128 + 4 * 100, SEEK_SET); fwrite(&nan, 4, 1, f); fclose(f); }
        CHECK(run("train --dir %s --scale demo --iterations 1%s", d2, NULL) == 2 && stderr_one_line(), "NaN in train.npy: exit 2");
    }
    CHECK(run("--help%s%s", NULL, NULL) == 0, "--help");
    CHECK(run("train --dir %s/none --help%s", dir, NULL) == 0, "train --help without a data set: exit 0");
}

int main(void) {
    char cmd[600];
    if (getenv("LSS_CGAN_BIN")) prog = getenv("LSS_CGAN_BIN");
    if (access(prog, X_OK)) {
        SKIP("%s is not built", prog);
        LSS_TEST_END();
    }
    snprintf(dir, sizeof dir, "build/test_e2e_cgan_XXXXXX");
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp under build/"); LSS_TEST_END(); }
    RUN(test_cgan_e2e);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    LSS_TEST_END();
}
