#define _POSIX_C_SOURCE 200809L
/* test_hardening_input.c - crafted and absurd input (issue 21, items 2-4): every case ends in a clear status, or
 * exit 2 with one line naming the file, the field and the value, and none reaches undefined behaviour (this test
 * runs under ASan + UBSan too: make build/asan/test_hardening_input, LSS_TEST_ASAN=1).
 *
 *  - UB on crafted input: checkpoint shape products that overflow (lss_mm_net_probe), NaN / 1e300 / fractions
 *    in massmap.meta, grid.csv, deeplss.cfg, n(z) tables, catalogue coordinates, shear maps, report tables;
 *  - resource exhaustion: an n(z) table reaching z = 1e6 or 200,000 rows, a two-galaxy catalogue spanning 4096
 *    pixels, configurations that need more than the limit (a kernel of 1000, 4096 channels of 4096 x 16 maps),
 *    a mock whose grid.csv announces more fields than its files hold;
 *  - accepted garbage: NaN/inf maps in lss-stats, a zero-field mock in the Table 1 evaluation, infinite or
 *    1e38 shear, a single-field Table 1 (std n/a, not 0), a directory given as a file ("is a directory"), one
 *    line per bad option, no path twice in a message, reasons in messages, binary bytes escaped, run.json
 *    valid JSON whatever a path or a record holds.
 * Driver cases run bin/lss-stats, bin/massmap and bin/deeplss (skipped, counted, when they are not built). */
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#define LSS_IMPLEMENTATION
#include "lss_massmap.h"
#include "lss_infer.h"
#include "drivers/lss_driver.h"
#include "tests/lss_test.h"

static char dir[256];

static const char *P(const char *name) { /* a path under the scratch directory (8 rotating buffers) */
    static char buf[8][512];
    static int k = 0;
    k = (k + 1) & 7;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_text(const char *name, const char *text) {
    FILE *f = fopen(P(name), "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int msg_has(const char *s) { return strstr(lss_last_error(), s) != NULL; }
static int msg_printable(const char *m) {
    for (; *m; m++)
        if ((unsigned char)*m < 0x20 || (unsigned char)*m == 0x7f) return 0;
    return 1;
}
/* How many times needle occurs in hay. */
static int count_of(const char *hay, const char *needle) {
    int n = 0;
    size_t l = strlen(needle);
    for (const char *p = hay; l && (p = strstr(p, needle)) != NULL; p += l) n++;
    return n;
}

/* ------------------------------------------------------------------ drivers */
static char err_text[8192];
static int err_lines;
static int have_bin(const char *b) { return access(b, X_OK) == 0; }
/* Runs a shell command line with stdout and stderr captured; returns the exit status (-1: signal). err_text gets
   stderr, err_lines its line count. */
static int run(const char *cmdline) {
    char cmd[4096];
    FILE *f;
    size_t n = 0;
    int st;
    snprintf(cmd, sizeof cmd, "%s > '%s/stdout.txt' 2> '%s/stderr.txt'", cmdline, dir, dir);
    st = system(cmd);
    err_text[0] = 0;
    err_lines = 0;
    if ((f = fopen(P("stderr.txt"), "rb"))) {
        n = fread(err_text, 1, sizeof err_text - 1, f);
        fclose(f);
    }
    err_text[n] = 0;
    for (size_t i = 0; i < n; i++) err_lines += err_text[i] == '\n';
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
static int stderr_printable(void) {
    for (const char *m = err_text; *m; m++)
        if (((unsigned char)*m < 0x20 && *m != '\n') || (unsigned char)*m == 0x7f) return 0;
    return 1;
}
static int exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0;
}

/* ------------------------------------------------------------------ checkpoints */
static void put_u32(unsigned char *b, size_t *o, uint32_t v) { memcpy(b + *o, &v, 4), *o += 4; }
static void put_i64(unsigned char *b, size_t *o, int64_t v) { memcpy(b + *o, &v, 8), *o += 8; }

/* A massmap checkpoint of an 8 x 8 score network of width 2 at path; returns its bytes (malloc'd) and length. */
static unsigned char *net_ckpt(const char *path, size_t *len) {
    lss_grid *g = NULL;
    double pk[64];
    lss_mm_net_opts no;
    lss_mm_net *n = NULL;
    unsigned char *b = NULL;
    FILE *f;
    long l;
    int i;
    *len = 0;
    for (i = 0; i < 64; i++) pk[i] = i ? 1e-4 : 0;
    memset(&no, 0, sizeof no);
    no.c0 = 2;
    no.seed = 3;
    if (lss_grid_create(8, 8, 1.0, &g) || lss_mm_net_create(g, pk, &no, &n) || lss_mm_net_save(n, path)) {
        CHECK(0, "cannot make a checkpoint: %s", lss_last_error());
        lss_mm_net_free(n);
        lss_grid_free(g);
        return NULL;
    }
    lss_mm_net_free(n);
    lss_grid_free(g);
    if ((f = fopen(path, "rb")) && fseek(f, 0, SEEK_END) == 0 && (l = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (b = (unsigned char *)malloc((size_t)l)) && fread(b, 1, (size_t)l, f) == (size_t)l)
        *len = (size_t)l;
    if (f) fclose(f);
    return b;
}

/* Writes b with its "massmap.meta" floats replaced by m[4] and the CRC32 recomputed. */
static int write_meta(const char *path, const unsigned char *b, size_t len, const float *m) {
    unsigned char *c = (unsigned char *)malloc(len);
    size_t i;
    uint32_t crc;
    FILE *f;
    int ok = 0;
    memcpy(c, b, len);
    for (i = 0; i + 12 + 8 + 8 + 16 <= len; i++)
        if (!memcmp(c + i, "massmap.meta", 12)) {
            /* name, u32 dtype, u32 ndim (1), i64 shape, then the 4 floats */
            memcpy(c + i + 12 + 8 + 8, m, 16);
            ok = 1;
            break;
        }
    crc = lss_crc32(0, c, len - 4);
    memcpy(c + len - 4, &crc, 4);
    if ((f = fopen(path, "wb"))) {
        ok &= fwrite(c, 1, len, f) == len;
        fclose(f);
    } else ok = 0;
    free(c);
    return ok;
}

static void test_checkpoints(void) {
    unsigned char b[512];
    size_t o = 0, len;
    uint32_t crc;
    FILE *f;
    int c0, dm, h, w;
    unsigned char *ck;
    /* a tensor whose shape product overflows int64 (2^62 x 4), then the meta tensor: the probe must skip safely */
    memcpy(b, "LSSNNCK1", 8), o = 8;
    put_u32(b, &o, LSS_NN_VERSION);
    put_u32(b, &o, 2);
    put_u32(b, &o, 1), b[o++] = 'a';
    put_u32(b, &o, 1), put_u32(b, &o, 2);
    put_i64(b, &o, (int64_t)1 << 62), put_i64(b, &o, 4);
    crc = lss_crc32(0, b, o);
    memcpy(b + o, &crc, 4), o += 4;
    if ((f = fopen(P("overflow.ckpt"), "wb"))) fwrite(b, 1, o, f), fclose(f);
    CHECK_ERR(lss_mm_net_probe(P("overflow.ckpt"), &c0, &dm, &h, &w), LSS_ERR_FORMAT);
    /* the same with negative, zero and 2^40 x 2^40 sizes */
    memcpy(b + 8 + 4 + 4 + 4 + 1 + 8, "\xff\xff\xff\xff\xff\xff\xff\xff", 8);
    if ((f = fopen(P("negative.ckpt"), "wb"))) fwrite(b, 1, o, f), fclose(f);
    CHECK_ERR(lss_mm_net_probe(P("negative.ckpt"), &c0, &dm, &h, &w), LSS_ERR_FORMAT);
    /* massmap.meta holding NaN, 1e300 (inf as float), 2.5 and -7: named with the field and the value */
    if (!(ck = net_ckpt(P("net.ckpt"), &len))) return;
    {
        static const float good[4] = {2, 0, 8, 8};
        float bad[4][4] = {{NAN, 0, 8, 8}, {2, 0, INFINITY, 8}, {2, 0.5f, 8, 8}, {2, 0, 8, -7}};
        static const char *const field[4] = {"c0", "map height", "deepmass", "map width"};
        lss_grid *g;
        double pk[64];
        lss_mm_net *n = NULL;
        int k;
        for (k = 0; k < 64; k++) pk[k] = k ? 1e-4 : 0;
        CHECK(write_meta(P("good.ckpt"), ck, len, good), "meta patched");
        CHECK_OK(lss_mm_net_probe(P("good.ckpt"), &c0, &dm, &h, &w));
        CHECK(c0 == 2 && dm == 0 && h == 8 && w == 8, "probe of a good checkpoint: %d %d %d %d", c0, dm, h, w);
        for (k = 0; k < 4; k++) {
            CHECK(write_meta(P("bad.ckpt"), ck, len, bad[k]), "meta patched");
            CHECK_ERR(lss_mm_net_probe(P("bad.ckpt"), &c0, &dm, &h, &w), LSS_ERR_FORMAT);
            CHECK(msg_has("massmap.meta") && msg_has(field[k]) && msg_has("bad.ckpt"), "meta %d: message '%s'", k, lss_last_error());
        }
        /* the full load validates the stored architecture the same way */
        lss_grid_create(8, 8, 1.0, &g);
        CHECK_ERR(lss_mm_net_open(P("bad.ckpt"), g, pk, 0, &n), LSS_ERR_FORMAT);
        CHECK(n == NULL, "no network from a bad checkpoint");
        CHECK_OK(lss_mm_net_open(P("good.ckpt"), g, pk, 0, &n));
        lss_mm_net_free(n);
        lss_grid_free(g);
    }
    free(ck);
}

/* ------------------------------------------------------------------ mocks and grid.csv */
static void test_grid_csv(void) {
    static const char *const bad[] = {"h,w,pixel_arcmin,shift,nfields,seed\nnan,8,0.29,0,1,1\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,1e300,0.29,0,1,1\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,8,0.29,0,2.5,1\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,8,0.29,0,1,-1\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,8,0.29,0,1,1e30\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,8,nan,0,1,1\n",
                                      "h,w,pixel_arcmin,shift,nfields,seed\n8,8,0.29,inf,1,1\n"};
    static const char *const field[] = {"h = nan", "w = 1e+300", "nfields = 2.5", "seed = -1", "seed = 1e+30", "pixel_arcmin", "shift"};
    lss_mm_mock *m = NULL;
    char d[600];
    size_t k;
    snprintf(d, sizeof d, "%s/mock", dir);
    mkdir(d, 0777);
    for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_text("mock/grid.csv", bad[k]);
        CHECK_ERR(lss_mm_mock_load(d, &m), LSS_ERR_FORMAT);
        CHECK(m == NULL && msg_has("grid.csv") && msg_has(field[k]), "grid.csv case %zu: message '%s'", k, lss_last_error());
    }
    /* grid.csv announcing 100000 fields of 8 x 8 while shear.npy holds one: refused before allocating */
    write_text("mock/grid.csv", "h,w,pixel_arcmin,shift,nfields,seed\n8,8,0.29,0,100000,1\n");
    write_text("mock/ps.csv", "ell,cl\n10,1e-9\n100,1e-10\n");
    {
        float z[2 * 64] = {0};
        int64_t s4[4] = {1, 2, 8, 8};
        lss_npy_save(P("mock/shear.npy"), LSS_F32, 4, s4, z);
    }
    CHECK_ERR(lss_mm_mock_load(d, &m), LSS_ERR_FORMAT);
    CHECK(msg_has("shear.npy") && msg_has("100000"), "message '%s'", lss_last_error());
    /* 32768 x 32768 x 100000: over the limit of a mock, said with its size */
    write_text("mock/grid.csv", "h,w,pixel_arcmin,shift,nfields,seed\n32768,32768,0.29,0,100000,1\n");
    CHECK_ERR(lss_mm_mock_load(d, &m), LSS_ERR_RANGE);
    CHECK(msg_has("GB"), "message '%s'", lss_last_error());
}

/* A small real mock (8 x 8, nf fields) in dir/<name>; with zero = 1 its convergence and shear are all zero. */
static lss_mm_mock *small_mock(const char *name, int nf, int zero) {
    lss_mm_mock_opts mo;
    lss_mm_mock *m = NULL;
    char d[600];
    memset(&mo, 0, sizeof mo);
    mo.size = 16;
    mo.nfields = nf;
    mo.nell = 16;
    mo.seed = 5;
    snprintf(d, sizeof d, "%s/%s", dir, name);
    mkdir(d, 0777);
    if (lss_mm_mock_create(&mo, &m) != LSS_OK) {
        CHECK(0, "mock: %s", lss_last_error());
        return NULL;
    }
    if (zero) {
        memset(m->kappa, 0, sizeof(float) * (size_t)nf * 256);
        memset(m->shear, 0, sizeof(float) * (size_t)nf * 512);
    }
    CHECK_OK(lss_mm_mock_save(m, d));
    return m;
}

static void test_eval(void) {
    lss_mm_mock *m;
    lss_mm_eval_opts eo;
    lss_mm_eval_result *R = NULL;
    float t[6] = {1, 2, 3, 4, 5, 6}, c[6] = {0, 0, 0, 0, 0, 0}, e[6] = {1, 1, 1, 1, 1, 1};
    double rm = -1, r = -1;
    /* metrics: a constant truth has no signal to compare with; a constant estimate has no correlation */
    CHECK_ERR(lss_mm_metrics(6, t, c, NULL, &rm, &r), LSS_ERR_RANGE);
    CHECK_OK(lss_mm_metrics(6, e, t, NULL, &rm, &r));
    CHECK(isnan(r), "r of a constant estimate is NaN (got %g)", r);
    /* a mock of zero fields: Table 1 refused at once, not all zeros */
    if ((m = small_mock("zero_mock", 2, 1))) {
        double t0 = lss_time_now();
        memset(&eo, 0, sizeof eo);
        eo.nsamples = 2;
        eo.nsims = 2;
        CHECK_ERR(lss_mm_eval(m, &eo, &R), LSS_ERR_RANGE);
        CHECK(R == NULL && msg_has("constant convergence"), "zero mock: message '%s'", lss_last_error());
        CHECK(lss_time_now() - t0 < 5, "refused before the work (%.1f s)", lss_time_now() - t0);
        lss_mm_mock_free(m);
    }
    /* one field: the std over fields is n/a (NaN), not 0 */
    if ((m = small_mock("one_mock", 1, 0))) {
        memset(&eo, 0, sizeof eo);
        eo.nsamples = 2;
        eo.nsims = 2;
        eo.batch = 2;
        lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &eo.sample);
        eo.sample.sigma_min = 0.05;
        CHECK_OK(lss_mm_eval(m, &eo, &R));
        if (R) {
            CHECK(isnan(R->std_rmse[0]) && isnan(R->std_r[1]) && isfinite(R->mean_rmse[0]), "one field: std %g %g, mean %g", R->std_rmse[0],
                  R->std_r[1], R->mean_rmse[0]);
            lss_mm_eval_free(R);
        }
        lss_mm_mock_free(m);
    }
}

/* ------------------------------------------------------------------ n(z) tables */
static void test_nz(void) {
    lss_nz *b = NULL;
    int nb = 0;
    double t0;
    FILE *f;
    int i;
    write_text("nz_far.txt", "0 0\n0.5 1\n1e6 0\n");
    t0 = lss_time_now();
    CHECK_ERR(lss_nz_load(P("nz_far.txt"), &b, &nb), LSS_ERR_FORMAT);
    CHECK(msg_has("nz_far.txt") && msg_has("line 3") && msg_has("1e+06") && msg_has("[0, 20]"), "message '%s'", lss_last_error());
    CHECK(lss_time_now() - t0 < 1, "refused at once (%.2f s)", lss_time_now() - t0);
    write_text("nz_nan.txt", "0 0\nnan 1\n1 0\n");
    CHECK_ERR(lss_nz_load(P("nz_nan.txt"), &b, &nb), LSS_ERR_FORMAT);
    CHECK(msg_has("line 2") && msg_has("nan"), "message '%s'", lss_last_error());
    write_text("nz_huge.txt", "0 0\n0.5 1e308\n0.6 1e308\n1 0\n");
    CHECK_ERR(lss_nz_load(P("nz_huge.txt"), &b, &nb), LSS_ERR_FORMAT); /* the integral overflows */
    /* 200,000 rows: stops at the limit */
    if ((f = fopen(P("nz_rows.txt"), "w"))) {
        for (i = 0; i < 200000; i++) fprintf(f, "%.8f 1\n", 1e-4 * i);
        fclose(f);
    }
    CHECK_ERR(lss_nz_load(P("nz_rows.txt"), &b, &nb), LSS_ERR_FORMAT);
    CHECK(msg_has("100000 rows"), "message '%s'", lss_last_error());
    /* a line of separators only is blank (the fuzzer found it counted as a row of no column) */
    write_text("nz_sep.txt", ",# z n\n0 0\n, \n0.5 1\n1 0\n");
    CHECK_OK(lss_nz_load(P("nz_sep.txt"), &b, &nb));
    CHECK(nb == 1 && b && b[0].n == 3, "3 rows of 1 bin (got %d bins)", nb);
    lss_nz_free(b, nb);
    /* from arrays: the same limits */
    {
        double z[3] = {0, 1, 25}, v[3] = {0, 1, 0};
        CHECK_ERR(lss_nz_from_table(z, v, 3, 1, &b), LSS_ERR_FORMAT);
        CHECK_ERR(lss_nz_from_table(z, v, 3, 65, &b), LSS_ERR_FORMAT);
    }
}

/* ------------------------------------------------------------------ catalogues and shear maps */
static void test_catalogue(void) {
    lss_mm_catalogue cat;
    lss_mm_bin_opts o;
    int h = 0, w = 0;
    static const char *const bad[] = {"x,y,e1,e2\n0,0,0.1,0\n1,1,1e300,0\n", "x,y,e1,e2\n0,0,0.1,0\n1,1,0,-99\n",
                                      "x,y,e1,e2,w\n0,0,0.1,0,1e300\n1,1,0,0,1\n", "x,y,e1,e2,w\n0,0,0.1,0,-1\n1,1,0,0,1\n",
                                      "x,y,e1,e2\n0,0,0.1,0\n1,nan,0,0\n"};
    static const char *const what[] = {"e1 = 1e+300", "e2 = -99", "weight = 1e+300", "weight = -1", "y = nan"};
    size_t k;
    for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_text("cat_bad.csv", bad[k]);
        CHECK_ERR(lss_mm_catalogue_load(P("cat_bad.csv"), 0, &cat), LSS_ERR_FORMAT);
        CHECK(msg_has("galaxy 1") || msg_has("galaxy 0"), "names the galaxy: '%s'", lss_last_error());
        CHECK(msg_has(what[k]), "case %zu names the field and value: '%s'", k, lss_last_error());
    }
    /* a position of 1e300: no int conversion of it, a clear range error (bounding box) or a dropped galaxy */
    write_text("cat_far.csv", "x,y,e1,e2\n0,0,0.1,0\n1e300,3,0,0\n");
    CHECK_OK(lss_mm_catalogue_load(P("cat_far.csv"), 0, &cat));
    memset(&o, 0, sizeof o);
    CHECK_ERR(lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), LSS_ERR_RANGE);
    CHECK(msg_has("1e+300") && msg_has("grid size"), "message '%s'", lss_last_error());
    o.h = o.w = 4;
    {
        float m[4 * 16];
        int64_t drop = 0;
        CHECK_OK(lss_mm_bin(&cat, &o, &h, &w, m, m + 16, m + 32, m + 48, &drop, NULL));
        CHECK(drop == 1, "the far galaxy is dropped on a 4 x 4 grid (%lld dropped)", (long long)drop);
    }
    o.set_origin = 1;
    o.x0 = NAN;
    CHECK_ERR(lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), LSS_ERR_ARG);
    lss_mm_catalogue_free(&cat);
    /* two galaxies spanning 4096 pixels: a 4096 x 4096 grid (268 MB of maps) is refused, with its cost */
    write_text("cat_two.csv", "x,y,e1,e2\n0.5,0.5,0.1,0\n4095.5,4095.5,0,0.1\n");
    CHECK_OK(lss_mm_catalogue_load(P("cat_two.csv"), 0, &cat));
    memset(&o, 0, sizeof o);
    CHECK_ERR(lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), LSS_ERR_RANGE);
    CHECK(msg_has("4096 x 4096") && msg_has("MB") && msg_has("2 galaxies"), "message '%s'", lss_last_error());
    o.h = o.w = 8192 * 2;
    CHECK_ERR(lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL), LSS_ERR_RANGE);
    o.h = o.w = 64; /* an explicit grid is the user's choice */
    CHECK_OK(lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL));
    lss_mm_catalogue_free(&cat);
    /* NPY catalogue with ra = 1e300 or dec = 95 degrees */
    {
        double v[8] = {150, 2, 0.1, 0, 1e300, 2, 0, 0};
        int64_t s2[2] = {2, 4};
        lss_npy_save(P("cat_radec.npy"), LSS_F64, 2, s2, v);
        CHECK_ERR(lss_mm_catalogue_load(P("cat_radec.npy"), 1, &cat), LSS_ERR_FORMAT);
        CHECK(msg_has("ra = 1e+300"), "message '%s'", lss_last_error());
        v[4] = 150.1;
        v[5] = 95;
        lss_npy_save(P("cat_radec.npy"), LSS_F64, 2, s2, v);
        CHECK_ERR(lss_mm_catalogue_load(P("cat_radec.npy"), 1, &cat), LSS_ERR_FORMAT);
        CHECK(msg_has("dec = 95"), "message '%s'", lss_last_error());
    }
    /* shear maps: inf and 1e38 are refused with the pixel */
    {
        float g[2 * 16] = {0};
        int64_t s3[3] = {2, 4, 4};
        float *d = NULL;
        int hh, ww;
        g[16 + 5] = 1e38f;
        lss_npy_save(P("shear_big.npy"), LSS_F32, 3, s3, g);
        CHECK_ERR(lss_mm_shear_load(P("shear_big.npy"), 0, &d, &hh, &ww), LSS_ERR_FORMAT);
        CHECK(msg_has("gamma2 at pixel (1, 1)") && msg_has("1e+38"), "message '%s'", lss_last_error());
        g[16 + 5] = INFINITY;
        lss_npy_save(P("shear_inf.npy"), LSS_F32, 3, s3, g);
        CHECK_ERR(lss_mm_shear_load(P("shear_inf.npy"), 0, &d, &hh, &ww), LSS_ERR_FORMAT);
        CHECK(d == NULL, "nothing returned");
    }
}

/* ------------------------------------------------------------------ deeplss.cfg and report tables */
static void test_cfg(void) {
    lss_deeplss_cfg c, d;
    char text[4096];
    FILE *f;
    static const char *const sub[][2] = {{"kernel = ", "kernel = 1000\n"}, {"kernel = ", "kernel = 1e300\n"},
                                         {"nside = ", "nside = nan\n"},   {"lr_cnn = ", "lr_cnn = nan\n"},
                                         {"ell_max = ", "ell_max = 1e300\n"}, {"seed = ", "seed = -1\n"}};
    size_t k;
    lss_deeplss_cfg_defaults(&c, LSS_DEEPLSS_SMALL);
    CHECK_OK(lss_deeplss_cfg_save(&c, P("deeplss.cfg")));
    for (k = 0; k < sizeof sub / sizeof sub[0]; k++) { /* one line replaced */
        size_t n = 0, l = strlen(sub[k][0]);
        char line[256];
        f = fopen(P("deeplss.cfg"), "r");
        text[0] = 0;
        while (f && fgets(line, sizeof line, f)) n += (size_t)snprintf(text + n, sizeof text - n, "%s", strncmp(line, sub[k][0], l) ? line : sub[k][1]);
        if (f) fclose(f);
        write_text("bad.cfg", text);
        d = c;
        CHECK_ERR(lss_deeplss_cfg_load(&d, P("bad.cfg")), LSS_ERR_FORMAT);
        CHECK(msg_has("bad.cfg") && msg_has(sub[k][0]) && !memcmp(&d, &c, sizeof c), "case %zu: message '%s'", k, lss_last_error());
    }
    /* a configuration within every key's range that needs terabytes: refused with what it needs */
    d = c;
    d.nside = 4096, d.grid = 16, d.channels = 4096, d.batch = 4096;
    CHECK_ERR(lss_deeplss_cfg_check(&d), LSS_ERR_RANGE);
    CHECK(msg_has("GB"), "message '%s'", lss_last_error());
    {
        double pool, train;
        lss_deeplss_cfg_memory(&c, &pool, &train);
        CHECK(pool > 0 && train > 0 && pool + train < 1e9, "the small preset needs %.3g + %.3g GB", pool / 1e9, train / 1e9);
    }
    /* report tables with NaN, 1e300 and fractions where integers belong: skipped rows, no UB */
    {
        char rd[600];
        lss_deeplss_numbers r;
        static const char *const names[LSS_DEEPLSS_NPARAM] = {"Om", "s8", "AIA", "eIA", "bg", "ebg", "rg"};
        snprintf(rd, sizeof rd, "%s/report", dir);
        mkdir(rd, 0777);
        write_text("report/mcmc_fid.csv", "kind,probe,mock,ok,std_Om,std_s8,std_AIA,std_eIA,std_bg,std_ebg,std_rg,std_S8,fom_det,area68\n"
                                          "nan,0,0,1,1,1,1,1,1,1,1,1,1,1\n1e300,1e300,-1e300,1,1,1,1,1,1,1,1,1,1,1\n0,0.5,0,1,1,1,1,1,1,1,1,1,1,1\n");
        write_text("report/loss.csv", "step,valid_cnn_comb\n1e300,1\n");
        write_text("report/calibration.csv", "kind,mock,param,inside,ok\nnan,1e300,-5,1,1\n");
        write_text("report/mdn_check.csv", "kind,probe,dmu_median,dmu_lo,dmu_hi,dsig_median,dsig_lo,dsig_hi\ninf,nan,0,0,0,0,0,0\n");
        CHECK_OK(lss_deeplss_numbers_read(rd, 4, 3, names, &r));
        CHECK(r.loss_step == -1, "a step of 1e300 is no step (got %lld)", (long long)r.loss_step);
    }
}

/* ------------------------------------------------------------------ messages and files */
static void test_messages(void) {
    lss_array a;
    lss_csv c;
    lss_nz *b;
    lss_json *j;
    lss_deeplss_cfg cfg;
    lss_store *st;
    int nb, c0, dm, h, w;
    char d[600];
    snprintf(d, sizeof d, "%s/adir", dir);
    mkdir(d, 0777);
    /* a directory given as a file: "is a directory", never "out of memory" */
    CHECK_ERR(lss_npy_load(d, &a), LSS_ERR_IO);
    CHECK(msg_has("is a directory") && !msg_has("memory"), "npy: '%s'", lss_last_error());
    CHECK_ERR(lss_csv_read(d, &c), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "csv: '%s'", lss_last_error());
    CHECK_ERR(lss_nz_load(d, &b, &nb), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "nz: '%s'", lss_last_error());
    CHECK_ERR(lss_json_load(d, &j), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "json: '%s'", lss_last_error());
    CHECK_ERR(lss_deeplss_cfg_load(&cfg, d), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "cfg: '%s'", lss_last_error());
    lss_store_create(1, &st);
    CHECK_ERR(lss_ckpt_load(d, st, NULL), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "ckpt: '%s'", lss_last_error());
    lss_store_free(st);
    CHECK(lss_mm_net_probe(d, &c0, &dm, &h, &w) == LSS_ERR_IO && msg_has("is a directory"), "probe: '%s'",
          lss_last_error());
    /* a missing file: the reason is given */
    CHECK_ERR(lss_npy_load(P("missing.npy"), &a), LSS_ERR_IO);
    CHECK(msg_has("No such file"), "reason: '%s'", lss_last_error());
    CHECK(lss_mm_net_probe(P("missing.ckpt"), &c0, &dm, &h, &w) == LSS_ERR_IO && msg_has("No such file"), "probe reason: '%s'", lss_last_error());
    /* binary bytes quoted from a file are escaped: one printable line */
    write_text("bin.csv", "a,b\n1,\x01\x1b[31m\xff\xfe\n");
    CHECK_ERR(lss_csv_read(P("bin.csv"), &c), LSS_ERR_FORMAT);
    CHECK(msg_printable(lss_last_error()) && msg_has("\\x01\\x1b[31m\\xff\\xfe"), "escaped: '%s'", lss_last_error());
    write_text("bin_nz.txt", "0 0\n\x7f\x80 1\n");
    CHECK_ERR(lss_nz_load(P("bin_nz.txt"), &b, &nb), LSS_ERR_FORMAT);
    CHECK(msg_printable(lss_last_error()) && msg_has("\\x7f\\x80"), "escaped: '%s'", lss_last_error());
    /* well-formed UTF-8 stays as it is */
    lss_seterr(LSS_ERR_ARG, "caf\xc3\xa9 \xe2\x82\xac");
    CHECK(!strcmp(lss_last_error(), "caf\xc3\xa9 \xe2\x82\xac"), "UTF-8 kept: '%s'", lss_last_error());
    /* a message may quote the last one (formatted apart, no overlapping copy) */
    lss_seterr(LSS_ERR_ARG, "inner %d", 42);
    lss_seterr(LSS_ERR_ARG, "outer: %s: %s", lss_last_error(), lss_last_error());
    CHECK(!strcmp(lss_last_error(), "outer: inner 42: inner 42"), "nested: '%s'", lss_last_error());
}

/* run.json: argv with quotes, control and non-UTF-8 bytes, a record that is not valid JSON, a long record */
static void test_runjson(void) {
    char rd[600], *big;
    char *argv[4] = {"prog", "--out", "a\"b\\c\x01\xff", "caf\xc3\xa9"};
    lss_json *j = NULL;
    const char *s;
    double v;
    size_t i;
    snprintf(rd, sizeof rd, "%s/rj", dir);
    mkdir(rd, 0777);
    lss_drv_prog = "test";
    CHECK_OK(lss_drv_runjson(rd, 4, argv, 7, "\"path\": \"x\", \"n\": 3"));
    CHECK_OK(lss_json_load(P("rj/run.json"), &j));
    CHECK(j && lss_json_num(j, "n", &v) == LSS_OK && v == 3, "record kept");
    lss_json_free(j);
    /* a record with nan and an unescaped quote, as a driver's snprintf might make it: the file stays JSON */
    CHECK_OK(lss_drv_runjson(rd, 4, argv, 7, "\"x\": nan, \"bins\": \"my\"file.txt\""));
    CHECK_OK(lss_json_load(P("rj/run.json"), &j));
    CHECK(j && lss_json_str(j, "record_text", &s) == LSS_OK && strstr(s, "my\"file"), "record kept as text");
    lss_json_free(j);
    /* a record of 5000 bytes is not cut at 1 KB */
    big = (char *)malloc(6000);
    strcpy(big, "\"long\": \"");
    for (i = strlen(big); i < 5000; i++) big[i] = 'x';
    strcpy(big + 5000, "\", \"end\": 1");
    CHECK_OK(lss_drv_runjson(rd, 4, argv, 7, big));
    CHECK_OK(lss_json_load(P("rj/run.json"), &j));
    CHECK(j && lss_json_num(j, "end", &v) == LSS_OK && lss_json_str(j, "long", &s) == LSS_OK && strlen(s) > 4900, "long record whole");
    lss_json_free(j);
    free(big);
    /* the escape helper */
    {
        char buf[64];
        size_t n = lss_drv_json_escape(buf, sizeof buf, "a\"\x01\xff\xc3\xa9");
        CHECK(!strcmp(buf, "\"a\\\"\\u0001\\u00ff\xc3\xa9\"") && n == strlen(buf), "escaped '%s'", buf);
        n = lss_drv_json_escape(buf, 6, "abcdefgh");
        CHECK(n == 10 && strlen(buf) < 6, "truncated at a whole escape (%zu, '%s')", n, buf);
    }
}

/* ------------------------------------------------------------------ the drivers */
static void test_drivers(void) {
    char cmd[2048];
    int st;
    if (!have_bin("bin/lss-stats") || !have_bin("bin/massmap") || !have_bin("bin/deeplss")) {
        SKIP("bin/lss-stats, bin/massmap or bin/deeplss not built");
        return;
    }
    /* lss-stats: NaN and inf maps exit 2 naming the file and the first bad pixel, and write nothing */
    {
        float m[4 * 64];
        int64_t s3[3] = {4, 8, 8};
        for (int i = 0; i < 4 * 64; i++) m[i] = (float)sin(0.1 * i);
        m[64 + 8 * 2 + 3] = NAN;
        lss_npy_save(P("nan.npy"), LSS_F32, 3, s3, m);
        snprintf(cmd, sizeof cmd, "bin/lss-stats ps --maps '%s' --out '%s'", P("nan.npy"), P("ps_nan.csv"));
        st = run(cmd);
        CHECK(st == 2 && strstr(err_text, "nan.npy") && strstr(err_text, "map 1 pixel (2, 3)") && err_lines == 1 && !exists(P("ps_nan.csv")),
              "NaN map: exit %d, '%s'", st, err_text);
        m[64 + 8 * 2 + 3] = 0;
        m[3 * 64] = INFINITY;
        lss_npy_save(P("inf.npy"), LSS_F32, 3, s3, m);
        snprintf(cmd, sizeof cmd, "bin/lss-stats peaks --maps '%s' --out '%s'", P("inf.npy"), P("pk_inf.csv"));
        st = run(cmd);
        CHECK(st == 2 && strstr(err_text, "inf.npy") && strstr(err_text, "map 3 pixel (0, 0)") && !exists(P("pk_inf.csv")), "inf map: exit %d, '%s'",
              st, err_text);
    }
    /* one line for one bad option */
    st = run("bin/lss-stats ps --bogus 1");
    CHECK(st == 2 && err_lines == 1, "bad option: exit %d, %d lines: '%s'", st, err_lines, err_text);
    st = run("bin/lss-stats ps --maps x.npy --out y.csv --nbins 0");
    CHECK(st == 2 && err_lines == 1, "bad value: exit %d, %d lines: '%s'", st, err_lines, err_text);
    /* a directory as the maps, a binary name: clear and printable, the path once */
    snprintf(cmd, sizeof cmd, "bin/lss-stats ps --maps '%s' --out '%s'", dir, P("o.csv"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "is a directory") && !strstr(err_text, "memory"), "directory: exit %d, '%s'", st, err_text);
    write_text("garbage.npy", "\x93NUMPX\x01\x02\x1b[2J");
    snprintf(cmd, sizeof cmd, "bin/lss-stats ps --maps '%s' --out '%s'", P("garbage.npy"), P("o.csv"));
    st = run(cmd);
    CHECK(st == 2 && count_of(err_text, "garbage.npy") == 1 && stderr_printable(), "bad NPY: exit %d, path once: '%s'", st, err_text);
    snprintf(cmd, sizeof cmd, "bin/lss-stats ps --maps \"$(printf 'a\\033[2Jb\\377')\" --out '%s'", P("o.csv"));
    st = run(cmd);
    CHECK(st == 2 && stderr_printable() && strstr(err_text, "\\x1b[2J"), "binary file name escaped: exit %d, '%s'", st, err_text);
    snprintf(cmd, sizeof cmd, "bin/lss-stats \"$(printf 'p\\001s')\"");
    st = run(cmd);
    CHECK(st == 2 && stderr_printable() && strstr(err_text, "\\x01"), "binary subcommand escaped: exit %d, '%s'", st, err_text);
    /* massmap bin: two galaxies 4096 pixels apart, a position of 1e300: exit 2, nothing written */
    snprintf(cmd, sizeof cmd, "bin/massmap bin --catalogue '%s' --out '%s'", P("cat_two.csv"), P("bin_two"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "4096 x 4096") && !exists(P("bin_two/shear.npy")), "two galaxies: exit %d, '%s'", st, err_text);
    snprintf(cmd, sizeof cmd, "bin/massmap bin --catalogue '%s' --out '%s'", P("cat_far.csv"), P("bin_far"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "1e+300") && !exists(P("bin_far/shear.npy")), "far galaxy: exit %d, '%s'", st, err_text);
    snprintf(cmd, sizeof cmd, "bin/massmap bin --catalogue '%s' --size 16 --out '%s'", P("cat_two.csv"), P("bin_ok"));
    st = run(cmd);
    CHECK(st == 0 && strstr(err_text, "writes") && strstr(err_text, "MB"), "binning says what it writes: exit %d, '%s'", st, err_text);
    /* massmap ks: a shear of 1e38 exits 2 naming the pixel */
    snprintf(cmd, sizeof cmd, "bin/massmap ks --shear '%s' --out '%s'", P("shear_big.npy"), P("ks.npy"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "gamma2 at pixel (1, 1)") && count_of(err_text, "shear_big.npy") == 1 && !exists(P("ks.npy")),
          "1e38 shear: exit %d, '%s'", st, err_text);
    /* massmap eval of a zero-field mock: exit 2 at once */
    snprintf(cmd, sizeof cmd, "bin/massmap eval --mock '%s' --out '%s' --nsamples 2 --nsims 2", P("zero_mock"), P("eval_zero"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "constant convergence") && !exists(P("eval_zero/table1.csv")), "zero mock: exit %d, '%s'", st, err_text);
    /* massmap sample with a checkpoint whose massmap.meta holds NaN */
    snprintf(cmd, sizeof cmd, "bin/massmap eval --mock '%s' --out '%s' --prior '%s'", P("one_mock"), P("eval_nan"), P("bad.ckpt"));
    st = run(cmd);
    CHECK(st == 2 && strstr(err_text, "massmap.meta") && err_lines == 1, "NaN meta: exit %d, '%s'", st, err_text);
    /* deeplss: a configuration with a kernel of 1000 exits 2 naming the file, line and key */
    {
        char rd[600];
        snprintf(rd, sizeof rd, "%s/dl", dir);
        mkdir(rd, 0777);
        snprintf(cmd, sizeof cmd, "sed 's/^kernel = .*/kernel = 1000/' '%s' > '%s/deeplss.cfg'", P("deeplss.cfg"), rd);
        if (system(cmd) != 0) CHECK(0, "sed failed");
        snprintf(cmd, sizeof cmd, "bin/deeplss train --out '%s'", rd);
        st = run(cmd);
        CHECK(st == 2 && strstr(err_text, "deeplss.cfg:") && strstr(err_text, "kernel = 1000") && err_lines == 1 &&
                  count_of(err_text, "deeplss.cfg") == 1, "kernel 1000: exit %d, '%s'", st, err_text);
        /* a fresh run says what it needs before it allocates, and refuses what the machine cannot hold */
        snprintf(cmd, sizeof cmd, "bin/deeplss sim --out '%s/dl2' --ncosmo 100000 --nfield 100000", dir);
        st = run(cmd);
        CHECK(st == 2 && strstr(err_text, "GB") && err_lines <= 2, "huge pool: exit %d, '%s'", st, err_text);
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "build/test_hardening_input.%ld", (long)getpid());
    mkdir("build", 0777);
    if (mkdir(dir, 0777) != 0) {
        printf("cannot create %s\n", dir);
        return 1;
    }
    RUN(test_checkpoints);
    RUN(test_grid_csv);
    RUN(test_nz);
    RUN(test_catalogue);
    RUN(test_cfg);
    RUN(test_messages);
    RUN(test_runjson);
    RUN(test_eval);
    RUN(test_drivers);
    if (!lss_t_fail) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("could not remove %s\n", dir);
    }
    LSS_TEST_END();
}
