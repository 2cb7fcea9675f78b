#define _POSIX_C_SOURCE 200809L
/* test_e2e_flowgen.c - bin/flowgen end to end on a tiny data set (demo networks, a few steps):
 *  - data writes maps that are a pure function of (seed, set, index): the training maps equal
 *    lss_mm_kappa_draw_mean's, keep their own mean and lie above -shift;
 *  - flow train, stopped at a checkpoint and resumed, ends with a checkpoint bitwise equal to an uninterrupted run's
 *    and the same loss CSV (diffusion resume: tests/test_diffusion.c); diffusion train runs;
 *  - sample writes [n, side, side] maps equal to lss_flow_sample from the checkpoint; bpd writes a finite value per
 *    held-out map equal to lss_flow_logp's; eval writes the curves and the suite, and eval --samples on the flow's
 *    generated maps writes the same curves; train --gauss 1 keeps the training maps' mean periodogram in its checkpoint;
 *  - bad input exits 2 with one line on stderr: a missing data set, an unknown model or sampler, a corrupted
 *    checkpoint (nothing written).
 * Skipped (counted) when bin/flowgen is not built. */
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

static char dir[256];
static const char *prog = "bin/flowgen";

#define LSS_E2E_ENV "OMP_NUM_THREADS=2 "
#include "tests/lss_e2e.h"

static float *load(const char *p, int64_t *n) {
    float *d = NULL;
    int nd;
    int64_t sh[LSS_MAX_DIM];
    if (lss_npy_load_f32(p, &d, &nd, sh) != LSS_OK || nd != 3) return NULL;
    *n = sh[0];
    return d;
}

#define DATA_ARGS "--scale demo --ntrain 64 --nvalid 16 --ntest 16"
#define FLOW_ARGS "--model flow --steps 4 --batch 4 --hidden 4 --flow-steps 1 --levels 2 --checkpoint-every 2"
#define DIFF_ARGS "--model diffusion --steps 4 --batch 4 --c0 4 --checkpoint-every 2"

static void test_flowgen_e2e(void) {
    char d1[512], d2[512], p1[700], p2[700];
    int64_t n, i;
    if (access(prog, X_OK)) { SKIP("bin/flowgen is not built"); return; }
    snprintf(d1, sizeof d1, "%s/a", dir), snprintf(d2, sizeof d2, "%s/b", dir);
    CHECK(run("data --dir %s " DATA_ARGS, d1, NULL) == 0, "data runs");
    /* the maps are lss_mm_kappa_draw_mean's (their mean kept) */
    {
        lss_params p;
        lss_mm_kappa_gen *kg;
        double lam;
        float *ref = (float *)malloc(sizeof(float) * 64 * 1024), *tr;
        snprintf(p1, sizeof p1, "%s/data/train.npy", d1);
        tr = load(p1, &n);
        lss_mm_params_planck15(&p);
        CHECK_OK(lss_mm_theory_kappa_empty(&p, "cosmos", &lam));
        CHECK_OK(lss_mm_kappa_gen_create(&p, "cosmos", 32, 4, 5.0 * 60 / 128, &kg));
        CHECK_OK(lss_mm_kappa_draw_mean(kg, 1, lss_set_index(LSS_SET_TRAIN, 0), 64, 1, ref));
        CHECK(tr && n == 64 && !memcmp(tr, ref, sizeof(float) * 64 * 1024), "training maps = lss_mm_kappa_draw_mean");
        if (tr) {
            double mn = 1e30, m0 = 0;
            for (i = 0; i < 64 * 1024; i++) mn = tr[i] < mn ? tr[i] : mn;
            for (i = 0; i < 1024; i++) m0 += tr[i];
            CHECK(mn > -lam && fabs(m0 / 1024) > 1e-7, "maps above -shift (%g > %g) with their own mean (%g)", mn, -lam, m0 / 1024);
        }
        lss_mm_kappa_gen_free(kg), free(ref), free(tr);
    }
    /* train with a stop at step 2 and resume == uninterrupted */
    CHECK(run("data --dir %s " DATA_ARGS, d2, NULL) == 0, "data runs again");
    CHECK(run("train --dir %s " FLOW_ARGS, d1, NULL) == 0, "flow train runs");
    CHECK(run("train --dir %s " FLOW_ARGS " --steps 2 --schedule-steps 4", d2, NULL) == 0, "flow train to step 2");
    CHECK(run("train --dir %s " FLOW_ARGS " --resume", d2, NULL) == 0, "flow train resumed");
    snprintf(p1, sizeof p1, "%s/flow/model.ckpt", d1), snprintf(p2, sizeof p2, "%s/flow/model.ckpt", d2);
    CHECK(same_file(p1, p2), "flow: resumed checkpoint = uninterrupted");
    snprintf(p1, sizeof p1, "%s/flow/loss.csv", d1), snprintf(p2, sizeof p2, "%s/flow/loss.csv", d2);
    CHECK(same_file(p1, p2), "flow: resumed loss CSV = uninterrupted");
    CHECK(run("train --dir %s " DIFF_ARGS, d1, NULL) == 0, "diffusion train runs");
    CHECK(run("train --dir %s " DIFF_ARGS " --resume", d1, NULL) == 0, "diffusion train resumed at its end");
    { /* the default skip of 32 x 32 maps: their stationary covariance (gauss 3) */
        lss_mm_diff *m = NULL;
        snprintf(p1, sizeof p1, "%s/diffusion/model.ckpt", d1);
        CHECK_OK(lss_mm_diff_open(p1, &m));
        if (m) {
            lss_mm_diff_opts mo;
            lss_mm_diff_options(m, &mo);
            CHECK(mo.gauss == 3 && m->gu, "default diffusion model: the covariance skip (gauss %d)", mo.gauss);
            lss_mm_diff_free(m);
        }
    }
    for (int gs = 1; gs <= 3; gs++) { /* the Gaussian skip: the training maps' spectrum (DFT, DCT) or covariance, kept in the checkpoint */
        lss_mm_diff *m = NULL;
        char ga[32];
        snprintf(ga, sizeof ga, " --gauss %d", gs);
        CHECK(run("train --dir %s " DIFF_ARGS "%s", d2, ga) == 0, "diffusion train --gauss %d runs", gs);
        snprintf(p1, sizeof p1, "%s/diffusion/model.ckpt", d2);
        CHECK_OK(lss_mm_diff_open(p1, &m));
        if (m) {
            lss_mm_diff_opts mo;
            float *tr;
            double *pk = (double *)malloc(sizeof(double) * 1024);
            lss_mm_diff_options(m, &mo);
            snprintf(p2, sizeof p2, "%s/data/train.npy", d2);
            tr = load(p2, &n);
            CHECK(mo.gauss == gs && m->gpk, "the checkpoint holds the Gaussian skip %d", gs);
            if (tr && m->gpk && gs == 3) { /* the eigenvalues sum to the trace of the stationary estimate */
                double *cv = (double *)malloc(sizeof(double) * 1024 * 1024), tr0 = 0, tr1 = 0;
                CHECK_OK(lss_mm_diff_gauss_cov_estimate(m, (int)n, tr, cv));
                for (i = 0; i < 1024; i++) tr0 += cv[i * 1024 + i], tr1 += m->gpk->data[i];
                CHECK(m->gu && fabs(tr1 / tr0 - 1) < 1e-4, "its eigenvalues sum to the covariance's trace (%g, %g)", tr1, tr0);
                free(cv);
            } else if (tr && m->gpk) {
                double w = 0;
                CHECK_OK(lss_mm_diff_gauss_estimate(m, (int)n, tr, pk));
                for (i = 0; i < 1024; i++) w = fmax(w, fabs(m->gpk->data[i] - pk[i]) / pk[i]);
                CHECK(w < 1e-6, "its P is the training maps' spectrum (worst %g)", w);
            }
            free(tr), free(pk);
            lss_mm_diff_free(m);
        }
    }
    {
        CHECK(run("train --dir %s " DIFF_ARGS " --gauss 4", d2, NULL) == 2 && stderr_one_line(), "--gauss 4: exit 2");
    }
    snprintf(p1, sizeof p1, "%s/diffusion/loss.csv", d1);
    CHECK(exists(p1), "diffusion loss CSV");
    /* sample = lss_flow_sample from the checkpoint */
    snprintf(p1, sizeof p1, "%s/s.npy", dir);
    CHECK(run("sample --dir %s --model flow --n 3 --index 5 --out %s", d1, p1) == 0, "flow sample runs");
    {
        float *s = load(p1, &n), ref[3 * 1024];
        lss_flow_opts o;
        lss_flow *f;
        memset(&o, 0, sizeof o);
        o.h = o.w = 32, o.levels = 2, o.steps = 1, o.hidden = 4;
        CHECK_OK(lss_flow_create(&o, &f));
        snprintf(p2, sizeof p2, "%s/flow/model.ckpt", d1);
        CHECK_OK(lss_ckpt_load(p2, lss_flow_store(f), NULL));
        CHECK_OK(lss_flow_sample(f, 3, NULL, 1.0, 1, 5, ref));
        CHECK(s && n == 3 && !memcmp(s, ref, sizeof ref), "flow samples = lss_flow_sample of the checkpoint");
        /* bpd = lss_flow_logp of the test maps */
        CHECK(run("bpd --dir %s --model flow", d1, NULL) == 0, "flow bpd runs");
        {
            lss_csv t;
            float *te;
            double lp[16];
            snprintf(p2, sizeof p2, "%s/data/test_a.npy", d1);
            te = load(p2, &n);
            CHECK_OK(lss_flow_logp(f, 16, te, NULL, lp));
            snprintf(p2, sizeof p2, "%s/flow/bpd.csv", d1);
            CHECK_OK(lss_csv_read(p2, &t));
            CHECK(t.nrows == 16 && t.ncols == 3, "bpd.csv has a row per map");
            if (t.nrows == 16)
                for (i = 0; i < 16; i++) {
                    double b = t.data[i * 3 + 2];
                    CHECK_CLOSE(t.data[i * 3 + 1], -lp[i], 1e-6, 1e-3, "nll = -ln p of lss_flow_logp");
                    CHECK_CLOSE(b, -lp[i] / (1024 * log(2.0)) - log2(1e-4), 1e-6, 1e-6, "bits per dimension");
                }
            lss_csv_free(&t), free(te);
        }
        lss_flow_free(f), free(s);
    }
    CHECK(run("sample --dir %s --model diffusion --sampler ddim --sampler-steps 5 --n 2 --out %s", d1, p1) == 0, "diffusion sample runs");
    CHECK(run("bpd --dir %s --model diffusion --nsig 4", d1, NULL) == 0, "diffusion bpd runs");
    CHECK(run("eval --dir %s --model flow", d1, NULL) == 0, "flow eval runs");
    snprintf(p1, sizeof p1, "%s/flow/eval/suite.csv", d1), snprintf(p2, sizeof p2, "%s/flow/eval/curves.csv", d1);
    CHECK(exists(p1) && exists(p2), "eval writes the suite and the curves");
    CHECK(run("eval --dir %s --model diffusion --sampler ddim2 --sampler-steps 4", d1, NULL) == 0, "diffusion eval runs");
    { /* eval --samples on the flow's own generated maps: the same curves */
        lss_csv ta, tb;
        char p3[600];
        snprintf(p3, sizeof p3, "%s/flow/eval/samples.npy", d1);
        CHECK(run("eval --dir %s --samples %s", d1, p3) == 0, "eval --samples runs");
        snprintf(p3, sizeof p3, "%s/samples/eval/curves.csv", d1);
        if (lss_csv_read(p2, &ta) == LSS_OK) {
            if (lss_csv_read(p3, &tb) == LSS_OK) {
                int same = ta.nrows == tb.nrows && ta.ncols == tb.ncols && ta.nrows > 0;
                for (i = 0; same && i < ta.nrows * ta.ncols; i++) same = ta.data[i] == tb.data[i] || (isnan(ta.data[i]) && isnan(tb.data[i])); /* empty bins: NaN */
                CHECK(same, "eval --samples of the flow's maps gives the flow's curves");
                lss_csv_free(&tb);
            } else CHECK(0, "eval --samples writes curves.csv");
            lss_csv_free(&ta);
        } else CHECK(0, "flow curves readable");
        CHECK(run("eval --dir %s --model flow --samples %s", d1, p3) == 2 && stderr_one_line(), "--model and --samples: exit 2");
        snprintf(p3, sizeof p3, "%s/x2.npy", dir);
        CHECK(run("sample --dir %s --model flow --n 2 --out %s", d1, p3) == 0, "two maps");
        CHECK(run("eval --dir %s --samples %s", d1, p3) == 2 && stderr_one_line(), "eval --samples with 2 maps: exit 2");
    }
    /* bad input */
    CHECK(run("train --dir %s/none --model flow", dir, NULL) == 2 && stderr_one_line(), "missing data set: exit 2");
    CHECK(run("train --dir %s --model gan", d1, NULL) == 2 && stderr_one_line(), "unknown model: exit 2");
    CHECK(run("sample --dir %s --model diffusion --sampler euler --out %s/x.npy", d1, dir) == 2 && stderr_one_line(), "unknown sampler: exit 2");
    CHECK(run("train --dir %s --model diffusion --transform sqrt", d1, NULL) == 2 && stderr_one_line(), "unknown transform: exit 2");
    CHECK(run("train --dir %s/none --model flow --help", dir, NULL) == 0, "--help without a data set: exit 0");
    {
        FILE *f;
        snprintf(p2, sizeof p2, "%s/flow/model.ckpt", d2);
        if ((f = fopen(p2, "r+b"))) { fseek(f, 200, SEEK_SET), fputc(0x5a, f), fputc(0xa5, f), fclose(f); }
        snprintf(p1, sizeof p1, "%s/y.npy", dir);
        CHECK(run("sample --dir %s --model flow --out %s", d2, p1) != 0 && !exists(p1), "corrupted checkpoint: an error, nothing written");
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/lss_e2e_flowgen_%d", (int)getpid());
    mkdir(dir, 0755);
    RUN(test_flowgen_e2e);
    {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    }
    LSS_TEST_END();
}
