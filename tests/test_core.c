/* test_core.c - lss_core.h: errors, Philox, draws, NPY, CSV, atomic files, pictures, and allocation
 * failures (an allocator that fails on the N-th call, with a live-allocation count for leaks). */
#include <stdint.h>
#include <stdlib.h>
static long t_calls = 0, t_fail_at = -1, t_live = 0;
static void *t_malloc(size_t n) {
    void *p;
    if (++t_calls == t_fail_at) return NULL;
    p = malloc(n ? n : 1);
    if (p) t_live++;
    return p;
}
static void *t_realloc(void *q, size_t n) {
    void *p;
    if (++t_calls == t_fail_at) return NULL;
    p = realloc(q, n ? n : 1);
    if (p && !q) t_live++;
    return p;
}
static void t_free(void *p) {
    if (p) t_live--;
    free(p);
}
#define LSS_MALLOC(n) t_malloc(n)
#define LSS_REALLOC(p, n) t_realloc(p, n)
#define LSS_FREE(p) t_free(p)
#define LSS_CORE_IMPLEMENTATION
#include "lss_core.h"
#include "lss_test.h"

#include <math.h>
#include <string.h>

static const char *tmpdir(void) {
    static char d[256];
    if (!d[0]) {
        snprintf(d, sizeof d, "build/tmp_core");
        (void)system("mkdir -p build/tmp_core");
    }
    return d;
}

static void test_errors(void) {
    CHECK(!strcmp(lss_strerror(LSS_OK), "ok"), "strerror(0)");
    CHECK(strlen(lss_strerror(LSS_ERR_FORMAT)) > 0 && strlen(lss_strerror(-999)) > 0, "strerror of every code");
    CHECK(lss_seterr(LSS_ERR_RANGE, "omega_m = %g outside [%g, %g]", 0.9, 0.1, 0.5) == LSS_ERR_RANGE, "seterr returns its code");
    CHECK(strstr(lss_last_error(), "omega_m = 0.9") != NULL, "message kept: '%s'", lss_last_error());
    lss_clearerr();
    CHECK(lss_last_error()[0] == 0, "clearerr");
}

/* Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors). */
static void test_philox_kat(void) {
    static const uint32_t v[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    int i, j;
    for (i = 0; i < 3; i++) {
        uint32_t out[4];
        lss_philox4x32(v[i], v[i] + 4, out);
        for (j = 0; j < 4; j++) CHECK(out[j] == v[i][6 + j], "KAT %d word %d: %08x want %08x", i, j, out[j], v[i][6 + j]);
    }
    /* block layout: key = seed, ctr = (counter, stream) */
    {
        uint32_t a[4], b[4];
        uint64_t seed = ((uint64_t)0x299f31d0 << 32) | 0xa4093822, counter = ((uint64_t)0x85a308d3 << 32) | 0x243f6a88,
                 stream = ((uint64_t)0x03707344 << 32) | 0x13198a2e;
        lss_philox_block(seed, stream, counter, a);
        lss_philox4x32(v[2], v[2] + 4, b);
        CHECK(!memcmp(a, b, sizeof a), "lss_philox_block maps (seed, stream, counter) onto (key, ctr)");
    }
}

static double normal_cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Kolmogorov-Smirnov statistic of sorted samples against a CDF. */
static double ks_stat(double *x, int n, double (*cdf)(double)) {
    double d = 0;
    int i;
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    for (i = 0; i < n; i++) {
        double f = cdf(x[i]), a = fabs(f - (double)i / n), b = fabs((double)(i + 1) / n - f);
        if (a > d) d = a;
        if (b > d) d = b;
    }
    return d;
}
static double uniform_cdf(double x) { return x < 0 ? 0 : x > 1 ? 1 : x; }

static void test_draws(void) {
    enum { N = 200000 };
    double *x = (double *)malloc(sizeof(double) * N);
    double m = 0, v = 0, s3 = 0, s4 = 0, d, crit = 1.95 / sqrt((double)N); /* KS critical value, alpha = 0.001 */
    lss_rng r, r2;
    int i;
    lss_rng_init(&r, 12345, 7);
    for (i = 0; i < N; i++) {
        x[i] = lss_rng_uniform(&r);
        m += x[i];
        v += (x[i] - 0.5) * (x[i] - 0.5);
    }
    m /= N;
    v /= N;
    /* std error of the mean sqrt(1/12/N) = 6.5e-4; of the variance sqrt(1/180/N) = 1.7e-4: 5 sigma */
    CHECK_CLOSE(m, 0.5, 0, 5 * sqrt(1.0 / 12 / N), "uniform mean");
    CHECK_CLOSE(v, 1.0 / 12, 0, 5 * sqrt(1.0 / 180 / N), "uniform variance");
    d = ks_stat(x, N, uniform_cdf);
    CHECK(d < crit, "uniform KS D = %g >= %g", d, crit);
    CHECK(x[0] > 0 && x[N - 1] < 1, "uniform strictly inside (0, 1)");

    lss_rng_init(&r, 12345, 8);
    m = v = 0;
    for (i = 0; i < N; i++) {
        x[i] = lss_rng_normal(&r);
        m += x[i];
    }
    m /= N;
    for (i = 0; i < N; i++) {
        double t = x[i] - m;
        v += t * t; s3 += t * t * t; s4 += t * t * t * t;
    }
    v /= N; s3 /= N * pow(v, 1.5); s4 /= N * v * v;
    /* standard errors: mean 1/sqrt(N), variance sqrt(2/N), skewness sqrt(6/N), kurtosis sqrt(24/N); 5 sigma */
    CHECK_CLOSE(m, 0, 0, 5 / sqrt((double)N), "normal mean");
    CHECK_CLOSE(v, 1, 0, 5 * sqrt(2.0 / N), "normal variance");
    CHECK_CLOSE(s3, 0, 0, 5 * sqrt(6.0 / N), "normal skewness");
    CHECK_CLOSE(s4, 3, 0, 5 * sqrt(24.0 / N), "normal kurtosis");
    d = ks_stat(x, N, normal_cdf);
    CHECK(d < crit, "normal KS D = %g >= %g", d, crit);

    /* floats */
    lss_rng_init(&r, 1, 1);
    m = 0;
    for (i = 0; i < N; i++) {
        float f = lss_rng_uniformf(&r);
        if (!(f > 0 && f < 1)) break;
        m += f;
    }
    CHECK(i == N, "uniformf inside (0, 1)");
    CHECK_CLOSE(m / N, 0.5, 0, 5 * sqrt(1.0 / 12 / N), "uniformf mean");
    CHECK(lss_u32_to_float(0) > 0 && lss_u32_to_float(0xffffffffu) < 1, "u32 -> float endpoints excluded");
    CHECK(lss_u32x2_to_double(0, 0) > 0 && lss_u32x2_to_double(0xffffffffu, 0xffffffffu) < 1, "u32x2 -> double endpoints excluded");

    /* reproducibility: seek, copies */
    lss_rng_init(&r, 99, 3);
    for (i = 0; i < 10; i++) (void)lss_rng_normal(&r);
    r2 = r;
    d = lss_rng_normal(&r);
    CHECK(d == lss_rng_normal(&r2), "copied state draws the same");
    lss_rng_init(&r, 99, 3);
    lss_rng_seek(&r, 5);
    lss_rng_init(&r2, 99, 3);
    for (i = 0; i < 5; i++) (void)lss_rng_u32(&r2), (void)lss_rng_u32(&r2), (void)lss_rng_u32(&r2), (void)lss_rng_u32(&r2);
    CHECK(lss_rng_u32(&r) == lss_rng_u32(&r2), "seek(5) equals drawing 5 blocks");
    lss_rng_init(&r2, 99, 4);
    lss_rng_init(&r, 99, 3);
    CHECK(lss_rng_u32(&r) != lss_rng_u32(&r2), "streams differ");

    /* rng_below: chi-square over 7 cells, 6 dof; 99.9% point 22.46 */
    {
        long cnt[7] = {0};
        double chi2 = 0;
        lss_rng_init(&r, 5, 5);
        for (i = 0; i < 70000; i++) cnt[lss_rng_below(&r, 7)]++;
        for (i = 0; i < 7; i++) chi2 += (cnt[i] - 10000.0) * (cnt[i] - 10000.0) / 10000.0;
        CHECK(chi2 < 22.46, "rng_below(7) chi2 = %g", chi2);
        CHECK(lss_rng_below(&r, 1) == 0 && lss_rng_below(&r, 0) == 0, "rng_below(1), (0)");
    }
    free(x);
}

/* Poisson: moments for small and large means, and the exact pmf by a chi-square over cells. */
static void test_poisson(void) {
    static const double means[] = {0.3, 3.0, 9.99, 10.0, 37.5, 1000.0, 1e6};
    int k, i;
    lss_rng r;
    for (k = 0; k < 7; k++) {
        double lam = means[k], m = 0, v = 0;
        int n = 100000;
        int64_t *xs = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
        lss_rng_init(&r, 2024, (uint64_t)k);
        for (i = 0; i < n; i++) {
            xs[i] = lss_rng_poisson(&r, lam);
            m += (double)xs[i];
        }
        m /= n;
        for (i = 0; i < n; i++) v += ((double)xs[i] - m) * ((double)xs[i] - m);
        v /= n - 1;
        {
            char what[64];
            snprintf(what, sizeof what, "Poisson(%g) mean", lam);
            /* std error of the mean sqrt(lam/n); of the variance ~ lam sqrt(2/n) (1 + 1/(2 lam))^(1/2): 5 sigma */
            CHECK_CLOSE(m, lam, 0, 5 * sqrt(lam / n), what);
            snprintf(what, sizeof what, "Poisson(%g) variance", lam);
            CHECK_CLOSE(v, lam, 0, 5 * sqrt((2 * lam * lam + lam) / n), what);
        }
        if (lam == 3.0 || lam == 37.5 || lam == 10.0) {
            /* chi-square against the pmf on cells with expected count >= 20, tails merged */
            double chi2 = 0, lo_p = 0, pk;
            long cnt_lo = 0;
            int dof = 0, kk, kmax = (int)(lam + 12 * sqrt(lam) + 10);
            long *cnt = (long *)calloc((size_t)kmax + 2, sizeof(long));
            for (i = 0; i < n; i++) cnt[xs[i] > kmax ? kmax + 1 : xs[i]]++;
            for (kk = 0; kk <= kmax; kk++) {
                pk = exp(-lam + kk * log(lam) - lgamma(kk + 1.0));
                if (n * pk < 20) {
                    lo_p += pk;
                    cnt_lo += cnt[kk];
                    continue;
                }
                chi2 += (cnt[kk] - n * pk) * (cnt[kk] - n * pk) / (n * pk);
                dof++;
            }
            cnt_lo += cnt[kmax + 1];
            lo_p = 1.0 - (1.0 - lo_p); /* merged tail cells */
            if (n * lo_p >= 5) {
                chi2 += (cnt_lo - n * lo_p) * (cnt_lo - n * lo_p) / (n * lo_p);
                dof++;
            }
            dof--;
            /* Wilson-Hilferty 99.9% point of chi2(dof) */
            {
                double z = 3.09, q = dof * pow(1 - 2.0 / (9 * dof) + z * sqrt(2.0 / (9 * dof)), 3);
                CHECK(chi2 < q, "Poisson(%g) pmf chi2 = %g over %d dof (99.9%% point %g)", lam, chi2, dof, q);
            }
            free(cnt);
        }
        free(xs);
    }
    lss_rng_init(&r, 1, 1);
    CHECK(lss_rng_poisson(&r, 0) == 0, "Poisson(0) = 0");
    CHECK(lss_rng_poisson(&r, -1) == -1 && lss_rng_poisson(&r, NAN) == -1 && lss_rng_poisson(&r, INFINITY) == -1,
          "Poisson of an invalid mean returns -1");
}

static int write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite(b, 1, n, f);
    fclose(f);
    return 0;
}

/* Builds an NPY v1 byte string from a header dictionary and raw data. */
static size_t make_npy(unsigned char *out, int version, const char *dict, const void *data, size_t nbytes) {
    size_t dl = strlen(dict), pre = version == 1 ? 10 : 12, total = ((pre + dl + 1 + 63) / 64) * 64, hl = total - pre;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)version;
    out[7] = 0;
    out[8] = (unsigned char)(hl & 0xff);
    out[9] = (unsigned char)(hl >> 8);
    if (version != 1) { out[10] = (unsigned char)(hl >> 16); out[11] = (unsigned char)(hl >> 24); }
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', total - pre - dl - 1);
    out[total - 1] = '\n';
    if (nbytes) memcpy(out + total, data, nbytes);
    return total + nbytes;
}

static void test_npy(void) {
    char path[512];
    float f[24];
    double dd[5] = {1.5, -2.25, 1e300, 0, -0.0};
    int32_t i4[3] = {-7, 0, 2147483647};
    int64_t i8[2] = {-((int64_t)1 << 62), 42};
    int64_t sh3[3] = {2, 3, 4}, sh1[1] = {5}, sh1b[1] = {3}, sh1c[1] = {2};
    lss_array a;
    int i;
    unsigned char buf[4096];
    size_t n;
    for (i = 0; i < 24; i++) f[i] = (float)i * 0.5f - 3.0f;
    snprintf(path, sizeof path, "%s/a.npy", tmpdir());
    CHECK_OK(lss_npy_save(path, LSS_F32, 3, sh3, f));
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.dtype == LSS_F32 && a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 4, "f4 shape round trip");
    CHECK(a.data && !memcmp(a.data, f, sizeof f), "f4 data round trip");
    lss_array_free(&a);
    CHECK_OK(lss_npy_save(path, LSS_F64, 1, sh1, dd));
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.dtype == LSS_F64 && a.ndim == 1 && a.shape[0] == 5 && !memcmp(a.data, dd, sizeof dd), "f8 round trip");
    lss_array_free(&a);
    {
        float *g;
        int nd;
        int64_t sh[LSS_MAX_DIM];
        CHECK_OK(lss_npy_load_f32(path, &g, &nd, sh));
        CHECK(nd == 1 && sh[0] == 5 && g[0] == 1.5f && g[1] == -2.25f && isinf(g[2]), "f8 -> f32 conversion");
        LSS_FREE(g);
    }
    CHECK_OK(lss_npy_save(path, LSS_I32, 1, sh1b, i4));
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.dtype == LSS_I32 && !memcmp(a.data, i4, sizeof i4), "i4 round trip");
    lss_array_free(&a);
    CHECK_OK(lss_npy_save(path, LSS_I64, 1, sh1c, i8));
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.dtype == LSS_I64 && !memcmp(a.data, i8, sizeof i8), "i8 round trip");
    lss_array_free(&a);
    CHECK_OK(lss_npy_save(path, LSS_F32, 0, NULL, f)); /* a 0-D scalar */
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.ndim == 0 && lss_array_count(&a) == 1 && ((float *)a.data)[0] == f[0], "0-D round trip");
    lss_array_free(&a);
    {
        int64_t sh0[2] = {0, 3};
        CHECK_OK(lss_npy_save(path, LSS_F32, 2, sh0, NULL));
        CHECK_OK(lss_npy_load(path, &a));
        CHECK(a.ndim == 2 && a.shape[0] == 0 && lss_array_count(&a) == 0, "empty array round trip");
        lss_array_free(&a);
    }
    /* the exact header numpy writes */
    {
        FILE *fp;
        char hdr[128] = {0};
        CHECK_OK(lss_npy_save(path, LSS_F32, 3, sh3, f));
        fp = fopen(path, "rb");
        CHECK(fp && fread(hdr, 1, 128, fp) == 128, "read header");
        if (fp) fclose(fp);
        CHECK(!memcmp(hdr + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 62), "numpy-style header: %.70s", hdr + 10);
        CHECK((10 + ((unsigned char)hdr[8] | ((unsigned char)hdr[9] << 8))) % 64 == 0 && hdr[127] == '\n', "header padded to 64 bytes");
    }
    /* v2 and v3 headers, 1-D tuple "(3,)", Fortran order of a vector, double quotes */
    n = make_npy(buf, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f, 12);
    CHECK_OK(lss_npy_load_mem(buf, n, &a));
    CHECK(a.ndim == 1 && a.shape[0] == 3 && ((float *)a.data)[2] == f[2], "v2 header");
    lss_array_free(&a);
    n = make_npy(buf, 3, "{\"descr\": \"<f4\", \"fortran_order\": True, \"shape\": (1, 3)}", f, 12);
    CHECK_OK(lss_npy_load_mem(buf, n, &a));
    CHECK(a.ndim == 2 && a.shape[1] == 3, "v3 header, Fortran order of a vector accepted");
    lss_array_free(&a);

    /* malformed files: each rejected with LSS_ERR_FORMAT and a message */
    {
        struct { const char *dict; size_t nbytes; const char *what; } bad[] = {
            {"{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }", 12, "big-endian"},
            {"{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", 3, "uint8"},
            {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, "Fortran order"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 12, "truncated data"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12, "trailing data"},
            {"{'descr': '<f4', 'shape': (3,), }", 12, "missing fortran_order"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", 12, "negative dimension"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, x), }", 12, "garbage in shape"},
            {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (3,), }", 12, "bad boolean"},
            {"['descr', '<f4']", 12, "not a dictionary"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'extra': 1, }", 12, "unknown key"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,3), }", 12, "too many dimensions"},
            {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 12, "huge dimension"},
            {"{'descr': '<f4' 'fortran_order': False, 'shape': (3,), }", 12, "missing comma"},
        };
        for (i = 0; i < (int)(sizeof bad / sizeof bad[0]); i++) {
            int s;
            n = make_npy(buf, 1, bad[i].dict, f, bad[i].nbytes);
            lss_clearerr();
            s = lss_npy_load_mem(buf, n, &a);
            CHECK(s == LSS_ERR_FORMAT && lss_last_error()[0] && a.data == NULL, "malformed NPY (%s) gave %d '%s'", bad[i].what, s, lss_last_error());
        }
        n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f, 12);
        CHECK_ERR(lss_npy_load_mem(buf, 5, &a), LSS_ERR_FORMAT);          /* shorter than the preamble */
        buf[0] = 'X';
        CHECK_ERR(lss_npy_load_mem(buf, n, &a), LSS_ERR_FORMAT);          /* bad magic */
        buf[0] = 0x93;
        buf[6] = 9;
        CHECK_ERR(lss_npy_load_mem(buf, n, &a), LSS_ERR_FORMAT);          /* unknown version */
        buf[6] = 1;
        buf[8] = 0xff; buf[9] = 0xff;
        CHECK_ERR(lss_npy_load_mem(buf, n, &a), LSS_ERR_FORMAT);          /* header length past the end */
        n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f, 12);
        buf[20] = 0;
        CHECK_ERR(lss_npy_load_mem(buf, n, &a), LSS_ERR_FORMAT);          /* NUL inside the header */
        snprintf(path, sizeof path, "%s/trunc.npy", tmpdir());
        n = make_npy(buf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", dd, 24);
        write_bytes(path, buf, n - 1);
        CHECK_ERR(lss_npy_load(path, &a), LSS_ERR_FORMAT);               /* truncated file on disk */
        CHECK(strstr(lss_last_error(), "trunc.npy") != NULL, "message names the file: '%s'", lss_last_error());
        CHECK_ERR(lss_npy_load("build/tmp_core/does-not-exist.npy", &a), LSS_ERR_IO);
    }
    /* a failed write leaves the existing file untouched */
    snprintf(path, sizeof path, "%s/keep.npy", tmpdir());
    CHECK_OK(lss_npy_save(path, LSS_F32, 1, sh1, f));
    CHECK_ERR(lss_npy_save(path, LSS_F32, 1, sh1, NULL), LSS_ERR_ARG);
    CHECK_ERR(lss_npy_save("build/tmp_core/no/such/dir/x.npy", LSS_F32, 1, sh1, f), LSS_ERR_IO);
    CHECK_OK(lss_npy_load(path, &a));
    CHECK(a.shape[0] == 5 && !memcmp(a.data, f, 20), "existing file intact after failed writes");
    lss_array_free(&a);
}

static void test_csv(void) {
    char path[512];
    const char *hdr[3] = {"ell", "cl", "err"};
    double d[6] = {10, 1e-8, 2e-9, 100, NAN, 3.5}, bad_dummy = 0;
    lss_csv c;
    (void)bad_dummy;
    snprintf(path, sizeof path, "%s/t.csv", tmpdir());
    CHECK_OK(lss_csv_write(path, 3, hdr, 2, d));
    CHECK_OK(lss_csv_read(path, &c));
    CHECK(c.ncols == 3 && c.nrows == 2 && !strcmp(c.names[1], "cl") && lss_csv_col(&c, "err") == 2 && lss_csv_col(&c, "x") == -1, "CSV header round trip");
    CHECK(c.data[0] == 10 && c.data[1] == 1e-8 && isnan(c.data[4]) && c.data[5] == 3.5, "CSV values round trip");
    lss_csv_free(&c);
    write_bytes(path, "a,b\n1,2\n\n# comment\n3, 4 \r\n", 26);
    CHECK_OK(lss_csv_read(path, &c));
    CHECK(c.nrows == 2 && c.data[3] == 4, "CSV blank lines, comments, spaces, CRLF");
    lss_csv_free(&c);
    write_bytes(path, "a,b\n1,x\n", 8);
    CHECK_ERR(lss_csv_read(path, &c), LSS_ERR_FORMAT);
    CHECK(strstr(lss_last_error(), ":2:") != NULL, "CSV error names the line: '%s'", lss_last_error());
    write_bytes(path, "a,b\n1,2,3\n", 10);
    CHECK_ERR(lss_csv_read(path, &c), LSS_ERR_FORMAT);
    write_bytes(path, "a,b\n1\n", 6);
    CHECK_ERR(lss_csv_read(path, &c), LSS_ERR_FORMAT);
    write_bytes(path, "", 0);
    CHECK_ERR(lss_csv_read(path, &c), LSS_ERR_FORMAT);
    CHECK_ERR(lss_csv_read("build/tmp_core/none.csv", &c), LSS_ERR_IO);
}

static void test_png(void) {
    char path[512];
    float m[32 * 48];
    unsigned char sig[8] = {0};
    FILE *f;
    double x[50], y0[50], y1[50];
    const double *ys[2] = {y0, y1};
    const char *labels[2] = {"C_kk", "C_dd"};
    lss_plot_opts o;
    unsigned char c[3];
    int i;
    for (i = 0; i < 32 * 48; i++) m[i] = (float)sin(i * 0.01) * (float)(i % 48);
    m[5] = NAN;
    snprintf(path, sizeof path, "%s/m.png", tmpdir());
    CHECK_OK(lss_png_map(path, m, 32, 48, 0, 0, "test map", 0));
    f = fopen(path, "rb");
    CHECK(f && fread(sig, 1, 8, f) == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8), "PNG signature");
    if (f) fclose(f);
    for (i = 0; i < 50; i++) {
        x[i] = 10 * pow(10, i / 20.0);
        y0[i] = 1e-8 / x[i];
        y1[i] = 1e-6 / sqrt(x[i]);
    }
    memset(&o, 0, sizeof o);
    o.logx = o.logy = 1;
    o.title = "spectra";
    o.xlabel = "ell";
    snprintf(path, sizeof path, "%s/p.png", tmpdir());
    CHECK_OK(lss_plot_lines(path, &o, 2, 50, x, ys, labels));
    CHECK_ERR(lss_plot_lines(path, &o, 0, 50, x, ys, labels), LSS_ERR_ARG);
    lss_viridis(0, c);
    CHECK(c[0] == 68 && c[1] == 1 && c[2] == 84, "viridis(0)");
    lss_viridis(1, c);
    CHECK(c[0] == 253 && c[1] == 231 && c[2] == 37, "viridis(1)");
    CHECK(lss_image_text_width("abc", 1) > 0 && lss_image_text_width("abc", 2) == 2 * lss_image_text_width("abc", 1), "text width");
    {
        lss_image im;
        static const unsigned char black[3] = {0, 0, 0};
        long dark = 0;
        CHECK_OK(lss_image_init(&im, 60, 20));
        lss_image_text(&im, 2, 2, "8", black, 1);
        for (i = 0; i < 60 * 20 * 3; i++) dark += im.rgb[i] == 0;
        CHECK(dark > 10, "text draws pixels (%ld)", dark);
        lss_image_free(&im);
        CHECK_ERR(lss_image_init(&im, 0, 5), LSS_ERR_ARG);
    }
}

/* Every allocation failure returns an error and leaks nothing. */
static void test_alloc_failures(void) {
    char path[512];
    int64_t sh[2] = {3, 4};
    float f[12] = {0};
    const char *hdr[2] = {"a", "b"};
    double d[4] = {1, 2, 3, 4};
    long k, failures_seen = 0;
    snprintf(path, sizeof path, "%s/fa.npy", tmpdir());
    CHECK_OK(lss_npy_save(path, LSS_F32, 2, sh, f));
    for (k = 1; k < 20; k++) {
        lss_array a;
        long live0 = t_live;
        int s;
        t_calls = 0;
        t_fail_at = k;
        s = lss_npy_load(path, &a);
        t_fail_at = -1;
        if (s == LSS_OK) { lss_array_free(&a); break; }
        failures_seen++;
        CHECK(s == LSS_ERR_NOMEM && t_live == live0, "npy_load with malloc #%ld failing: status %d, leaked %ld", k, s, t_live - live0);
    }
    CHECK(failures_seen >= 2, "npy_load allocation failures exercised (%ld)", failures_seen);
    snprintf(path, sizeof path, "%s/fa.csv", tmpdir());
    CHECK_OK(lss_csv_write(path, 2, hdr, 2, d));
    failures_seen = 0;
    for (k = 1; k < 40; k++) {
        lss_csv c;
        long live0 = t_live;
        int s;
        t_calls = 0;
        t_fail_at = k;
        s = lss_csv_read(path, &c);
        t_fail_at = -1;
        if (s == LSS_OK) { lss_csv_free(&c); break; }
        failures_seen++;
        CHECK(s == LSS_ERR_NOMEM && t_live == live0, "csv_read with malloc #%ld failing: status %d, leaked %ld", k, s, t_live - live0);
    }
    CHECK(failures_seen >= 4, "csv_read allocation failures exercised (%ld)", failures_seen);
    failures_seen = 0;
    for (k = 1; k < 10; k++) {
        long live0 = t_live;
        int s;
        t_calls = 0;
        t_fail_at = k;
        s = lss_npy_save(path, LSS_F32, 2, sh, f);
        t_fail_at = -1;
        if (s == LSS_OK) break;
        failures_seen++;
        CHECK(s == LSS_ERR_NOMEM && t_live == live0, "npy_save with malloc #%ld failing: status %d", k, s);
    }
    CHECK(failures_seen >= 1, "npy_save allocation failures exercised");
    CHECK(t_live == 0, "no live allocations at the end (%ld)", t_live);
}

/* Separable Gaussian smoothing against a direct double-precision 2-D sum with the same truncated,
 * normalised kernel; the zero-padded version against the same sum with zeros outside the map. */
static void test_smoothing(void) {
    enum { H = 13, W = 17 };
    float k[2 * LSS_GAUSS_MAX_HW + 1], map[H * W], orig[H * W], *tmp;
    double sum = 0, maxd = 0;
    int hw, y, x, s, t;
    lss_rng r;
    hw = lss_gauss_kernel(1.5, 4.0, k);
    CHECK(hw == 6, "half-width (int)(4 * 1.5) = 6, got %d", hw);
    for (t = 0; t <= 2 * hw; t++) sum += k[t];
    CHECK_CLOSE(sum, 1.0, 0, 1e-6, "kernel sums to 1");
    CHECK_CLOSE(k[hw + 1] / k[hw], exp(-0.5 / 2.25), 1e-6, 0, "Gaussian ratio of neighbouring taps");
    CHECK(lss_gauss_kernel(0.0, 4.0, k) == -1 && lss_gauss_kernel(NAN, 4.0, k) == -1, "sigma <= 0 or NaN refused");
    CHECK(lss_gauss_kernel(1e3, 4.0, k) == LSS_GAUSS_MAX_HW, "half-width clamped to the maximum");
    CHECK(lss_gauss_kernel(0.1, 4.0, k) == 1, "half-width at least 1");
    hw = lss_gauss_kernel(1.5, 3.0, k);
    lss_rng_init(&r, 5, 0);
    for (y = 0; y < H * W; y++) orig[y] = map[y] = (float)lss_rng_normal(&r);
    tmp = (float *)malloc(sizeof(float) * (size_t)lss_conv_sep_zeropad_tmp(H, W, hw));
    CHECK(tmp != NULL, "tmp");
    if (!tmp) return;
    CHECK_OK(lss_conv_sep_zeropad(map, H, W, k, hw, tmp));
    for (y = 0; y < H; y++)
        for (x = 0; x < W; x++) {
            double ref = 0;
            for (s = -hw; s <= hw; s++)
                for (t = -hw; t <= hw; t++)
                    if (y + s >= 0 && y + s < H && x + t >= 0 && x + t < W)
                        ref += (double)k[s + hw] * k[t + hw] * orig[(y + s) * W + x + t];
            if (fabs(map[y * W + x] - ref) > maxd) maxd = fabs(map[y * W + x] - ref);
        }
    CHECK(maxd < 1e-5, "zero-padded smoothing equals the direct 2-D sum (max |diff| %.3g)", maxd);
    CHECK_ERR(lss_conv_sep_zeropad(map, 0, W, k, hw, tmp), LSS_ERR_ARG);
    CHECK_ERR(lss_conv_sep_zeropad(map, H, W, k, LSS_GAUSS_MAX_HW + 1, tmp), LSS_ERR_ARG);
    free(tmp);
}

int main(void) {
    RUN(test_errors);
    RUN(test_philox_kat);
    RUN(test_draws);
    RUN(test_poisson);
    RUN(test_npy);
    RUN(test_csv);
    RUN(test_png);
    RUN(test_alloc_failures);
    RUN(test_smoothing);
    LSS_TEST_END();
}
