/* test_fits.c - the FITS files of lss_massmap.h (cfitsio): images and cubes written and read back bit for bit with
 * their pixel size; images of other BITPIX (16 with BSCALE/BZERO, 8, -64), WCS pixel sizes (CDELT1, CD matrix,
 * CUNIT1), gzip and tile-compressed files, extension HDUs, all written here with cfitsio directly (independent of the
 * writer; the gzip file by hand, stored blocks); catalogue tables written and read back, and tables of survey spellings (RA/DEC, ALPHA_J2000, G1/G2,
 * integer WEIGHT, no weight) written with cfitsio; lss_mm_catalogue_load and lss_mm_shear_load on .fits paths;
 * malformed files refused with a status and a message naming the problem (missing file, text named .fits,
 * truncated image and table, NAXIS 1, no e2 column, NaN and BLANK pixels, NaN e1, ra out of range, vector and
 * string columns, bad PIXSCALE, missing HDU); writers: NaN refused, a failed write leaves the old file as it was and
 * no temporary file, a symbolic link's target is written, /dev/null written directly. The massmap driver (when
 * bin/massmap is built): bin of a FITS catalogue gives the maps of the same CSV catalogue, its --fits maps equal its
 * NPY maps, wiener on FITS inputs equals wiener on NPY inputs, ks takes the pixel size from PIXSCALE, and a malformed
 * FITS noise map exits 2 with the reader's message.
 * Runs under ASan + UBSan too (make build/asan/test_fits, LSS_TEST_ASAN=1). */
#define _POSIX_C_SOURCE 200809L
#define LSS_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

#include <dirent.h>
#include <fitsio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64] = "build/fits.XXXXXX";
static char pbuf[8][256];
static const char *P(int k, const char *name) {
    snprintf(pbuf[k & 7], sizeof pbuf[0], "%s/%s", dir, name);
    return pbuf[k & 7];
}
static int msg_has(const char *s) { return strstr(lss_last_error(), s) != NULL; }
static int is_link(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
}
static long fsize(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}
static unsigned char *slurp(const char *p, long *n) {
    FILE *f = fopen(p, "rb");
    unsigned char *b;
    long k = fsize(p);
    *n = 0;
    if (!f || k < 0) {
        if (f) fclose(f);
        return NULL;
    }
    b = (unsigned char *)malloc((size_t)k + 1);
    if (b && fread(b, 1, (size_t)k, f) != (size_t)k) free(b), b = NULL;
    fclose(f);
    if (b) *n = k;
    return b;
}
static int spit(const char *p, const void *b, long n) {
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    if (n && fwrite(b, 1, (size_t)n, f) != (size_t)n) n = -1;
    return fclose(f) == 0 && n >= 0 ? 0 : -1;
}
static int temp_files(void) { /* temporary files "<name>.tmp.<pid>.<n>" left in dir */
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL) n += lss_wfile_is_temp(e->d_name, NULL);
    closedir(d);
    return n;
}
static void rm_tree(const char *path) { /* what the test made: files, links and directories */
    struct stat st;
    DIR *d;
    struct dirent *e;
    char p[512];
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && (d = opendir(path)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_tree(p);
        }
        closedir(d);
    }
    remove(path);
}
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64*, [0, 1) */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* src gzip-compressed into dst with stored (uncompressed) deflate blocks: a gzip file made without zlib. */
static int gzip_stored(const char *src, const char *dst) {
    long n = 0, k = 0;
    unsigned char *d = slurp(src, &n), hd[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}, t[8];
    uint32_t crc;
    FILE *f;
    int ok;
    if (!d || !(f = fopen(dst, "wb"))) {
        free(d);
        return -1;
    }
    ok = fwrite(hd, 1, 10, f) == 10;
    do {
        long m = n - k > 65535 ? 65535 : n - k;
        unsigned char b[5] = {(unsigned char)(k + m == n), (unsigned char)m, (unsigned char)(m >> 8), (unsigned char)~m, (unsigned char)(~m >> 8)};
        ok = ok && fwrite(b, 1, 5, f) == 5 && (m == 0 || fwrite(d + k, 1, (size_t)m, f) == (size_t)m);
        k += m;
    } while (k < n);
    crc = lss_crc32(0, d, (size_t)n);
    for (k = 0; k < 4; k++) t[k] = (unsigned char)(crc >> (8 * k)), t[4 + k] = (unsigned char)((uint32_t)n >> (8 * k));
    ok = ok && fwrite(t, 1, 8, f) == 8;
    free(d);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A FITS file written with cfitsio alone (not the library's writer): opens `path` afresh. */
static fitsfile *fcreate(const char *path) {
    fitsfile *f = NULL;
    int st = 0;
    remove(path);
    if (fits_create_diskfile(&f, path, &st)) {
        printf("cfitsio cannot create %s (status %d)\n", path, st);
        return NULL;
    }
    return f;
}
static int fclose_ok(fitsfile *f, int st) {
    int st2 = 0;
    fits_close_file(f, &st2);
    if (st || st2) printf("cfitsio status %d / %d\n", st, st2);
    return !st && !st2;
}

static void test_paths(void) {
    CHECK(lss_mm_fits_path("a.fits") && lss_mm_fits_path("d/a.FITS") && lss_mm_fits_path("a.fit") && lss_mm_fits_path("a.fts") &&
              lss_mm_fits_path("a.fits.gz") && lss_mm_fits_path("a.Fit.GZ"),
          "FITS names recognised");
    CHECK(!lss_mm_fits_path("a.npy") && !lss_mm_fits_path("a.csv") && !lss_mm_fits_path(".fits") && !lss_mm_fits_path("fits") &&
              !lss_mm_fits_path("a.fits.npy") && !lss_mm_fits_path("a.gz") && !lss_mm_fits_path(NULL),
          "other names are not FITS");
}

static void test_image_roundtrip(void) {
    const int h = 37, w = 53, k = 3;
    float *a = (float *)malloc(sizeof(float) * k * h * w), *b = NULL;
    int hh = 0, ww = 0, np = 0, i;
    double pix = 0;
    for (i = 0; i < k * h * w; i++) a[i] = (float)((urand() - 0.5) * pow(10.0, 12 * urand() - 6));
    a[0] = -0.0f, a[1] = 1e-42f /* subnormal */, a[2] = 3.4e38f, a[3] = -1.17549435e-38f;
    /* 2-D */
    CHECK_OK(lss_mm_fits_write_image(P(0, "m2.fits"), a, 1, h, w, 0.29));
    CHECK_OK(lss_mm_fits_read_image(P(0, "m2.fits"), 0, &b, &hh, &ww, &np, &pix));
    CHECK(b && hh == h && ww == w && np == 1, "2-D shape: %d x %d x %d", np, hh, ww);
    CHECK(b && !memcmp(a, b, sizeof(float) * h * w), "2-D map bit for bit");
    CHECK(pix == 0.29, "PIXSCALE read back exactly: %.17g", pix);
    LSS_FREE(b), b = NULL;
    CHECK(fsize(P(0, "m2.fits")) % 2880 == 0 && fsize(P(0, "m2.fits")) >= 2880 + 4 * h * w, "file of 2880-byte blocks (%ld bytes)",
          fsize(P(0, "m2.fits")));
    /* header content, read with cfitsio directly */
    {
        fitsfile *f = NULL;
        int st = 0, bitpix = 0, naxis = 0;
        char origin[FLEN_VALUE] = "", cd[FLEN_VALUE] = "";
        double ps = 0;
        long ax[3] = {0, 0, 0};
        if (!fits_open_diskfile(&f, P(0, "m2.fits"), READONLY, &st)) {
            fits_get_img_param(f, 3, &bitpix, &naxis, ax, &st);
            fits_read_key(f, TSTRING, "ORIGIN", origin, NULL, &st);
            fits_read_key(f, TDOUBLE, "PIXSCALE", &ps, NULL, &st);
            CHECK(st == 0 && bitpix == -32 && naxis == 2 && ax[0] == w && ax[1] == h && !strcmp(origin, "lss") && ps == 0.29,
                  "header: status %d BITPIX %d NAXIS %d (%ld, %ld) ORIGIN '%s' PIXSCALE %g", st, bitpix, naxis, ax[0], ax[1], origin, ps);
            st = 0;
            {
                char card[FLEN_CARD] = "";
                fits_read_card(f, "PIXSCALE", card, &st);
                CHECK(st == 0 && strstr(card, " 0.29 /"), "PIXSCALE card in 15 digits: '%s'", card);
            }
            st = 0;
            CHECK(fits_read_key(f, TSTRING, "CTYPE1", cd, NULL, &st) == KEY_NO_EXIST && (st = 0, fits_read_key(f, TDOUBLE, "CDELT1", &ps, NULL, &st)) == KEY_NO_EXIST,
                  "no WCS keys");
            st = 0;
            {
                int dok = 0, hok = 0;
                fits_verify_chksum(f, &dok, &hok, &st);
                CHECK(st == 0 && dok == 1 && hok == 1, "CHECKSUM and DATASUM verify (%d, %d)", dok, hok);
            }
            st = 0;
            fits_close_file(f, &st);
            fits_clear_errmsg();
        } else CHECK(0, "cfitsio opens the written file (status %d)", st);
    }
    /* 3-D, no pixel size */
    CHECK_OK(lss_mm_fits_write_image(P(0, "m3.fits"), a, k, h, w, NAN));
    CHECK_OK(lss_mm_fits_read_image(P(0, "m3.fits"), 1, &b, &hh, &ww, &np, &pix));
    CHECK(b && hh == h && ww == w && np == k, "3-D shape: %d x %d x %d", np, hh, ww);
    CHECK(b && !memcmp(a, b, sizeof(float) * k * h * w), "cube bit for bit");
    CHECK(isnan(pix), "no PIXSCALE: NaN (%g)", pix);
    LSS_FREE(b), b = NULL;
    /* overwrite an existing file; a pixel size that needs 17 digits */
    CHECK_OK(lss_mm_fits_write_image(P(0, "m3.fits"), a + 5, 2, h, w, 0.1 + 0.2));
    CHECK_OK(lss_mm_fits_read_image(P(0, "m3.fits"), 0, &b, &hh, &ww, &np, &pix));
    CHECK(b && np == 2 && !memcmp(a + 5, b, sizeof(float) * 2 * h * w), "overwritten: 2 planes from a + 5");
    CHECK(pix == 0.1 + 0.2, "PIXSCALE 0.1 + 0.2 back exactly: %.17g", pix);
    LSS_FREE(b), b = NULL;
    CHECK_OK(lss_mm_fits_read_image(P(0, "m3.fits"), 0, &b, &hh, &ww, &np, NULL)); /* pix_arcmin may be NULL */
    LSS_FREE(b), b = NULL;
    /* writer arguments */
    CHECK_ERR(lss_mm_fits_write_image(P(0, "bad.fits"), a, 1, 1, w, 1.0), LSS_ERR_ARG);
    CHECK_ERR(lss_mm_fits_write_image(P(0, "bad.fits"), a, 0, h, w, 1.0), LSS_ERR_ARG);
    CHECK_ERR(lss_mm_fits_write_image(P(0, "bad.fits"), a, 1, h, w, -1.0), LSS_ERR_ARG);
    CHECK_ERR(lss_mm_fits_write_image(P(0, "bad.fits"), NULL, 1, h, w, 1.0), LSS_ERR_ARG);
    CHECK(fsize(P(0, "bad.fits")) < 0, "no file from refused arguments");
    free(a);
}

/* BITPIX 16 with BSCALE/BZERO, 8, -64 with CDELT1, CD matrix, CUNIT1, an image in an extension. */
static void test_image_kinds(void) {
    short raw[4 * 6];
    unsigned char u8[3 * 5];
    double d64[2 * 4 * 3];
    long ax3[3] = {3, 4, 2}, ax2[2] = {6, 4};
    float *b = NULL;
    int hh, ww, np, i, st = 0, ok;
    double pix = 0;
    fitsfile *f;
    for (i = 0; i < 24; i++) raw[i] = (short)(i * 1000 - 12000);
    if ((f = fcreate(P(0, "i16.fits")))) {
        fits_create_img(f, SHORT_IMG, 2, ax2, &st);
        fits_write_key_dbl(f, "BSCALE", 0.25, -17, "", &st);
        fits_write_key_dbl(f, "BZERO", 100.0, -17, "", &st);
        fits_write_key_dbl(f, "CDELT1", -0.005, -17, "deg", &st);
        fits_set_bscale(f, 1.0, 0.0, &st); /* write the stored integers as they are */
        fits_write_img(f, TSHORT, 1, 24, raw, &st);
        CHECK(fclose_ok(f, st), "BITPIX 16 file written");
    }
    CHECK_OK(lss_mm_fits_read_image(P(0, "i16.fits"), 0, &b, &hh, &ww, &np, &pix));
    ok = b && hh == 4 && ww == 6 && np == 1;
    for (i = 0; ok && i < 24; i++) ok = b[i] == (float)(raw[i] * 0.25 + 100.0);
    CHECK(ok, "BITPIX 16: physical = 0.25 stored + 100 (%d x %d)", hh, ww);
    CHECK_CLOSE(pix, 0.3, 1e-14, 0, "CDELT1 -0.005 deg = 0.3 arcmin");
    LSS_FREE(b), b = NULL;

    /* BITPIX 8 with a CD matrix (rotated by 90 degrees: CD1_1 = 0) in arcsec; empty primary, image in HDU 2 */
    st = 0;
    for (i = 0; i < 15; i++) u8[i] = (unsigned char)(17 * i);
    if ((f = fcreate(P(0, "u8.fits")))) {
        long a5[2] = {5, 3};
        fits_create_img(f, BYTE_IMG, 0, NULL, &st);
        fits_create_img(f, BYTE_IMG, 2, a5, &st);
        fits_write_key_dbl(f, "CD1_1", 0.0, -17, "", &st);
        fits_write_key_dbl(f, "CD2_1", 12.0, -17, "", &st);
        fits_write_key_str(f, "CUNIT1", "arcsec", "", &st);
        fits_write_img(f, TBYTE, 1, 15, u8, &st);
        CHECK(fclose_ok(f, st), "BITPIX 8 file written");
    }
    CHECK_OK(lss_mm_fits_read_image(P(0, "u8.fits"), 0, &b, &hh, &ww, &np, &pix));
    ok = b && hh == 3 && ww == 5 && np == 1;
    for (i = 0; ok && i < 15; i++) ok = b[i] == (float)u8[i];
    CHECK(ok, "BITPIX 8 from the first extension");
    CHECK_CLOSE(pix, 0.2, 1e-14, 0, "CD matrix 12 arcsec = 0.2 arcmin");
    LSS_FREE(b), b = NULL;
    CHECK_OK(lss_mm_fits_read_image(P(0, "u8.fits"), 2, &b, &hh, &ww, &np, NULL));
    LSS_FREE(b), b = NULL;
    CHECK_ERR(lss_mm_fits_read_image(P(0, "u8.fits"), 1, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("HDU 1") && msg_has("NAXIS = 0") && !b, "HDU 1 has no data: '%s'", lss_last_error());
    CHECK_ERR(lss_mm_fits_read_image(P(0, "u8.fits"), 3, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("no HDU 3") && msg_has("has 2"), "missing HDU: '%s'", lss_last_error());
    CHECK_ERR(lss_mm_fits_read_image(P(0, "u8.fits"), -1, &b, &hh, &ww, &np, NULL), LSS_ERR_ARG);

    /* BITPIX -64 cube [2, 4, 3] */
    st = 0;
    for (i = 0; i < 24; i++) d64[i] = (i - 11.5) * 0.123456789012345678;
    if ((f = fcreate(P(0, "d64.fits")))) {
        fits_create_img(f, DOUBLE_IMG, 3, ax3, &st);
        fits_write_key_dbl(f, "PIXSCALE", 0.125, -17, "arcmin", &st);
        fits_write_key_dbl(f, "CDELT1", 1.0, -17, "ignored: PIXSCALE first", &st);
        fits_write_img(f, TDOUBLE, 1, 24, d64, &st);
        CHECK(fclose_ok(f, st), "BITPIX -64 file written");
    }
    CHECK_OK(lss_mm_fits_read_image(P(0, "d64.fits"), 0, &b, &hh, &ww, &np, &pix));
    ok = b && hh == 4 && ww == 3 && np == 2;
    for (i = 0; ok && i < 24; i++) ok = b[i] == (float)d64[i];
    CHECK(ok, "BITPIX -64 cube [2, 4, 3] as floats (%d, %d, %d)", np, hh, ww);
    CHECK(pix == 0.125, "PIXSCALE before the WCS (%g)", pix);
    LSS_FREE(b), b = NULL;

    /* gzip-compressed file (cfitsio compresses a .gz name on close) and a tile-compressed image */
    st = 0;
    {
        float m[5 * 4];
        for (i = 0; i < 20; i++) m[i] = (float)(i * 0.7 - 3);
        CHECK_OK(lss_mm_fits_write_image(P(0, "z.fits"), m, 1, 4, 5, NAN));
        CHECK(gzip_stored(P(0, "z.fits"), P(1, "z.fits.gz")) == 0, "gzip file written");
        {
            long n = 0;
            unsigned char *z = slurp(P(0, "z.fits.gz"), &n);
            CHECK(z && n > 2 && z[0] == 0x1f && z[1] == 0x8b, "the .gz file is gzip");
            free(z);
        }
        CHECK_OK(lss_mm_fits_read_image(P(0, "z.fits.gz"), 0, &b, &hh, &ww, &np, &pix));
        CHECK(b && hh == 4 && ww == 5 && !memcmp(b, m, sizeof m) && isnan(pix), "gzip image read");
        LSS_FREE(b), b = NULL;
        st = 0;
        if ((f = fcreate(P(0, "rice.fits")))) {
            long a2[2] = {6, 4};
            fits_set_compression_type(f, RICE_1, &st);
            fits_create_img(f, SHORT_IMG, 2, a2, &st);
            fits_write_img(f, TSHORT, 1, 24, raw, &st);
            CHECK(fclose_ok(f, st), "tile-compressed file written");
        }
        CHECK_OK(lss_mm_fits_read_image(P(0, "rice.fits"), 0, &b, &hh, &ww, &np, NULL));
        ok = b && hh == 4 && ww == 6;
        for (i = 0; ok && i < 24; i++) ok = b[i] == (float)raw[i];
        CHECK(ok, "RICE-compressed image read exactly");
        LSS_FREE(b), b = NULL;
    }
}

/* Malformed images. */
static void test_image_rejects(void) {
    float m[16], *b = NULL;
    int hh, ww, np, i, st = 0;
    long n = 0;
    unsigned char *raw;
    fitsfile *f;
    for (i = 0; i < 16; i++) m[i] = (float)i;
    CHECK_ERR(lss_mm_fits_read_image(P(0, "none.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_IO);
    CHECK(msg_has("none.fits") && msg_has("No such file"), "missing file: '%s'", lss_last_error());
    CHECK(spit(P(0, "text.fits"), "x,y,e1,e2\n1,2,0.1,0.2\n", 22) == 0, "text file");
    CHECK_ERR(lss_mm_fits_read_image(P(0, "text.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("text.fits") && msg_has("not a readable FITS file"), "text named .fits: '%s'", lss_last_error());
    CHECK(spit(P(0, "empty.fits"), "", 0) == 0, "empty file");
    CHECK_ERR(lss_mm_fits_read_image(P(0, "empty.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    /* truncated: a 64 x 64 map cut in half */
    {
        float *big = (float *)calloc(64 * 64, sizeof(float));
        CHECK_OK(lss_mm_fits_write_image(P(0, "full.fits"), big, 1, 64, 64, 1.0));
        free(big);
        raw = slurp(P(0, "full.fits"), &n);
        CHECK(raw && n == 2880 * 7, "64 x 64 map: 7 blocks (%ld bytes)", n);
        if (raw) spit(P(0, "half.fits"), raw, n / 2);
        CHECK_ERR(lss_mm_fits_read_image(P(0, "half.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
        CHECK(msg_has("truncated") && msg_has("16384"), "half a file: '%s'", lss_last_error());
        if (raw) spit(P(0, "cut.fits"), raw, 2000); /* inside the header */
        CHECK(lss_mm_fits_read_image(P(0, "cut.fits"), 0, &b, &hh, &ww, &np, NULL) == LSS_ERR_FORMAT && !b, "cut in the header: '%s'",
              lss_last_error());
        free(raw);
    }
    /* NAXIS 1, NAXIS 4, a side of 1 */
    st = 0;
    if ((f = fcreate(P(0, "n1.fits")))) {
        long a1[1] = {16};
        fits_create_img(f, FLOAT_IMG, 1, a1, &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "NAXIS 1 file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "n1.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_SHAPE);
    CHECK(msg_has("NAXIS = 1") && !b, "NAXIS 1: '%s'", lss_last_error());
    st = 0;
    if ((f = fcreate(P(0, "n4.fits")))) {
        long a4[4] = {2, 2, 2, 2};
        fits_create_img(f, FLOAT_IMG, 4, a4, &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "NAXIS 4 file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "n4.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_SHAPE);
    CHECK(msg_has("NAXIS = 4"), "NAXIS 4: '%s'", lss_last_error());
    st = 0;
    if ((f = fcreate(P(0, "thin.fits")))) {
        long a2[2] = {16, 1};
        fits_create_img(f, FLOAT_IMG, 2, a2, &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "16 x 1 file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "thin.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_SHAPE);
    /* NaN pixel at [0, 1, 2], and a BLANK pixel of an integer image */
    st = 0;
    m[1 * 4 + 2] = NAN;
    if ((f = fcreate(P(0, "nan.fits")))) {
        long a2[2] = {4, 4};
        fits_create_img(f, FLOAT_IMG, 2, a2, &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "NaN file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "nan.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("pixel [0, 1, 2]") && msg_has("NaN") && !b, "NaN pixel named: '%s'", lss_last_error());
    m[1 * 4 + 2] = INFINITY;
    CHECK_ERR(lss_mm_fits_write_image(P(0, "nan.fits"), m, 1, 4, 4, 1.0), LSS_ERR_ARG);
    CHECK(msg_has("pixel [0, 1, 2]") && msg_has("inf"), "the writer refuses inf: '%s'", lss_last_error());
    m[1 * 4 + 2] = 6;
    st = 0;
    {
        int iv[16];
        for (i = 0; i < 16; i++) iv[i] = i;
        iv[15] = -999;
        if ((f = fcreate(P(0, "blank.fits")))) {
            long a2[2] = {4, 4};
            fits_create_img(f, LONG_IMG, 2, a2, &st);
            fits_write_key_lng(f, "BLANK", -999, "undefined pixel", &st);
            fits_write_img(f, TINT, 1, 16, iv, &st);
            CHECK(fclose_ok(f, st), "BLANK file written");
        }
        CHECK_ERR(lss_mm_fits_read_image(P(0, "blank.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
        CHECK(msg_has("pixel [0, 3, 3]") && msg_has("BLANK"), "BLANK pixel named: '%s'", lss_last_error());
    }
    /* PIXSCALE that is no pixel size, or not a number */
    st = 0;
    if ((f = fcreate(P(0, "ps.fits")))) {
        long a2[2] = {4, 4};
        fits_create_img(f, FLOAT_IMG, 2, a2, &st);
        fits_write_key_dbl(f, "PIXSCALE", -2.0, -17, "", &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "PIXSCALE file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "ps.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("PIXSCALE = -2"), "negative PIXSCALE: '%s'", lss_last_error());
    st = 0;
    if ((f = fcreate(P(0, "ps2.fits")))) {
        long a2[2] = {4, 4};
        fits_create_img(f, FLOAT_IMG, 2, a2, &st);
        fits_write_key_str(f, "PIXSCALE", "small", "", &st);
        fits_write_img(f, TFLOAT, 1, 16, m, &st);
        CHECK(fclose_ok(f, st), "PIXSCALE string file written");
    }
    CHECK_ERR(lss_mm_fits_read_image(P(0, "ps2.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
    CHECK(msg_has("PIXSCALE is not a number"), "PIXSCALE string: '%s'", lss_last_error());
    /* a table file holds no image */
    {
        lss_mm_catalogue c;
        double v[2] = {1, 2}, e[2] = {0.1, -0.1}, wt[2] = {1, 1};
        c.n = 2, c.radec = 0, c.x = v, c.y = v, c.e1 = e, c.e2 = e, c.w = wt;
        CHECK_OK(lss_mm_fits_write_table(P(0, "tab.fits"), &c));
        CHECK_ERR(lss_mm_fits_read_image(P(0, "tab.fits"), 0, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
        CHECK(msg_has("no HDU holds an image"), "table file read as an image: '%s'", lss_last_error());
        CHECK_ERR(lss_mm_fits_read_image(P(0, "tab.fits"), 2, &b, &hh, &ww, &np, NULL), LSS_ERR_FORMAT);
        CHECK(msg_has("HDU 2 is a table"), "HDU 2 of a table file: '%s'", lss_last_error());
    }
    CHECK_ERR(lss_mm_fits_read_image(dir, 0, &b, &hh, &ww, &np, NULL), LSS_ERR_IO);
    CHECK(msg_has("is a directory"), "a directory: '%s'", lss_last_error());
}

static int cat_equal(const lss_mm_catalogue *a, const lss_mm_catalogue *b) {
    size_t s = sizeof(double) * (size_t)a->n;
    return a->n == b->n && a->radec == b->radec && !memcmp(a->x, b->x, s) && !memcmp(a->y, b->y, s) && !memcmp(a->e1, b->e1, s) &&
           !memcmp(a->e2, b->e2, s) && !memcmp(a->w, b->w, s);
}

static void test_tables(void) {
    enum { N = 257 };
    double x[N], y[N], e1[N], e2[N], wt[N];
    lss_mm_catalogue c, r;
    int i, st = 0, ok;
    fitsfile *f;
    for (i = 0; i < N; i++) {
        x[i] = 360 * urand() - 180, y[i] = 180 * urand() - 90, e1[i] = urand() - 0.5, e2[i] = (urand() - 0.5) * 1e-3, wt[i] = 1 + 99 * urand();
    }
    e1[0] = -0.0, wt[1] = 0, x[2] = 360, y[3] = -90;
    c.n = N, c.radec = 1, c.x = x, c.y = y, c.e1 = e1, c.e2 = e2, c.w = wt;
    CHECK_OK(lss_mm_fits_write_table(P(0, "cat_sky.fits"), &c));
    CHECK_OK(lss_mm_fits_read_table(P(0, "cat_sky.fits"), 0, &r));
    CHECK(cat_equal(&c, &r), "ra/dec catalogue bit for bit (n %lld, radec %d)", (long long)r.n, r.radec);
    lss_mm_catalogue_free(&r);
    CHECK_OK(lss_mm_catalogue_load(P(0, "cat_sky.fits"), 0, &r));
    CHECK(cat_equal(&c, &r), "lss_mm_catalogue_load of a .fits path");
    lss_mm_catalogue_free(&r);
    CHECK_OK(lss_mm_fits_read_table(P(0, "cat_sky.fits"), 2, &r));
    CHECK(r.n == N, "explicit HDU 2");
    lss_mm_catalogue_free(&r);
    CHECK_ERR(lss_mm_fits_read_table(P(0, "cat_sky.fits"), 1, &r), LSS_ERR_FORMAT);
    CHECK(msg_has("HDU 1 is an image with no data") && r.n == 0 && !r.x, "HDU 1 is the empty primary: '%s'", lss_last_error());
    c.radec = 0;
    for (i = 0; i < N; i++) wt[i] = 1;
    CHECK_OK(lss_mm_fits_write_table(P(0, "cat_pix.fits"), &c));
    CHECK_OK(lss_mm_fits_read_table(P(0, "cat_pix.fits"), 0, &r));
    CHECK(cat_equal(&c, &r), "pixel catalogue bit for bit (radec %d)", r.radec);
    lss_mm_catalogue_free(&r);
    /* the writer checks as the reader does */
    c.radec = 1, x[5] = 400;
    CHECK_ERR(lss_mm_fits_write_table(P(0, "cat_bad.fits"), &c), LSS_ERR_ARG);
    CHECK(msg_has("galaxy 5") && msg_has("ra = 400") && fsize(P(0, "cat_bad.fits")) < 0, "writer refuses ra 400: '%s'", lss_last_error());
    x[5] = 1;

    /* survey spellings written with cfitsio: an image HDU first, then ALPHA_J2000, DELTA_J2000 (E), a string column, G1, G2 (E),
     * WEIGHT (J, integer), and an x column without y (ra/dec are used) */
    st = 0;
    if ((f = fcreate(P(0, "kids.fits")))) {
        char *tt[] = {"ID", "ALPHA_J2000", "DELTA_J2000", "x", "G1", "G2", "WEIGHT"}, *tf[] = {"8A", "E", "E", "E", "E", "E", "J"};
        float fa[N], fd[N], fx[N], f1[N], f2[N];
        int iw[N];
        char *ids[N], idb[N][16];
        long a2[2] = {4, 4};
        float img[16] = {0};
        for (i = 0; i < N; i++)
            fa[i] = (float)x[i], fd[i] = (float)y[i], fx[i] = 1, f1[i] = (float)e1[i], f2[i] = (float)e2[i], iw[i] = i % 7,
            snprintf(idb[i], sizeof idb[i], "g%d", i % 1000), ids[i] = idb[i];
        fits_create_img(f, FLOAT_IMG, 2, a2, &st);
        fits_write_img(f, TFLOAT, 1, 16, img, &st);
        fits_create_tbl(f, BINARY_TBL, N, 7, tt, tf, NULL, "SHEAR", &st);
        fits_write_col(f, TSTRING, 1, 1, 1, N, ids, &st);
        fits_write_col(f, TFLOAT, 2, 1, 1, N, fa, &st);
        fits_write_col(f, TFLOAT, 3, 1, 1, N, fd, &st);
        fits_write_col(f, TFLOAT, 4, 1, 1, N, fx, &st);
        fits_write_col(f, TFLOAT, 5, 1, 1, N, f1, &st);
        fits_write_col(f, TFLOAT, 6, 1, 1, N, f2, &st);
        fits_write_col(f, TINT, 7, 1, 1, N, iw, &st);
        CHECK(fclose_ok(f, st), "survey table written");
        CHECK_OK(lss_mm_fits_read_table(P(0, "kids.fits"), 0, &r));
        ok = r.n == N && r.radec == 1;
        for (i = 0; ok && i < N; i++)
            ok = r.x[i] == (double)fa[i] && r.y[i] == (double)fd[i] && r.e1[i] == (double)f1[i] && r.e2[i] == (double)f2[i] && r.w[i] == i % 7;
        CHECK(ok, "ALPHA_J2000, DELTA_J2000, G1, G2, integer WEIGHT (n %lld, radec %d)", (long long)r.n, r.radec);
        lss_mm_catalogue_free(&r);
        CHECK_ERR(lss_mm_fits_read_table(P(0, "kids.fits"), 1, &r), LSS_ERR_FORMAT);
        CHECK(msg_has("HDU 1 is an image"), "HDU 1 of kids.fits: '%s'", lss_last_error());
    }
    /* RA, DEC, E1, E2 (D), no weight column, rows in an ASCII TABLE extension second */
    st = 0;
    if ((f = fcreate(P(0, "des.fits")))) {
        char *tt[] = {"E2", "DEC", "E1", "RA"}, *tf[] = {"D", "D", "D", "D"};
        fits_create_tbl(f, BINARY_TBL, N, 4, tt, tf, NULL, "CAT", &st);
        fits_write_col(f, TDOUBLE, 1, 1, 1, N, e2, &st);
        fits_write_col(f, TDOUBLE, 2, 1, 1, N, y, &st);
        fits_write_col(f, TDOUBLE, 3, 1, 1, N, e1, &st);
        fits_write_col(f, TDOUBLE, 4, 1, 1, N, x, &st);
        CHECK(fclose_ok(f, st), "RA/DEC table written");
        CHECK_OK(lss_mm_fits_read_table(P(0, "des.fits"), 0, &r));
        ok = r.n == N && r.radec == 1;
        for (i = 0; ok && i < N; i++) ok = r.x[i] == x[i] && r.y[i] == y[i] && r.e1[i] == e1[i] && r.e2[i] == e2[i] && r.w[i] == 1.0;
        CHECK(ok, "RA, DEC, E1, E2 in any order, no weight: weights 1");
        lss_mm_catalogue_free(&r);
    }
    /* a catalogue of 0 rows; a table without e2; NaN e1; ra out of range; a vector e1; TNULL; truncated */
    st = 0;
    if ((f = fcreate(P(0, "t0.fits")))) {
        char *tt[] = {"x", "y", "e1", "e2"}, *tf[] = {"D", "D", "D", "D"};
        fits_create_tbl(f, BINARY_TBL, 0, 4, tt, tf, NULL, NULL, &st);
        CHECK(fclose_ok(f, st), "empty table written");
        CHECK_ERR(lss_mm_fits_read_table(P(0, "t0.fits"), 0, &r), LSS_ERR_FORMAT);
        CHECK(msg_has("no galaxies"), "0 rows: '%s'", lss_last_error());
    }
    st = 0;
    if ((f = fcreate(P(0, "noe2.fits")))) {
        char *tt[] = {"ra", "dec", "e1", "e3"}, *tf[] = {"D", "D", "D", "D"};
        fits_create_tbl(f, BINARY_TBL, 4, 4, tt, tf, NULL, NULL, &st);
        for (i = 1; i <= 4; i++) fits_write_col(f, TDOUBLE, i, 1, 1, 4, e1, &st);
        CHECK(fclose_ok(f, st), "table without e2 written");
        CHECK_ERR(lss_mm_fits_read_table(P(0, "noe2.fits"), 0, &r), LSS_ERR_FORMAT);
        CHECK(msg_has("no column e2") && msg_has("HDU 2") && r.n == 0, "no e2: '%s'", lss_last_error());
    }
    {
        double v[4][4] = {{10, 20, 30, 40}, {1, 2, 3, 4}, {0.1, 0.2, NAN, 0.3}, {0, 0, 0, 0}};
        char *tt[] = {"ra", "dec", "e1", "e2"}, *tf[] = {"D", "D", "D", "D"};
        st = 0;
        if ((f = fcreate(P(0, "nane1.fits")))) {
            fits_create_tbl(f, BINARY_TBL, 4, 4, tt, tf, NULL, NULL, &st);
            for (i = 0; i < 4; i++) fits_write_col(f, TDOUBLE, i + 1, 1, 1, 4, v[i], &st);
            CHECK(fclose_ok(f, st), "NaN e1 table written");
            CHECK_ERR(lss_mm_fits_read_table(P(0, "nane1.fits"), 0, &r), LSS_ERR_FORMAT);
            CHECK(msg_has("galaxy 2 (table row 3): e1 = nan") && r.n == 0 && !r.x, "NaN e1 named: '%s'", lss_last_error());
            CHECK_ERR(lss_mm_catalogue_load(P(0, "nane1.fits"), 0, &r), LSS_ERR_FORMAT);
        }
        v[2][2] = 0.5, v[0][1] = -361;
        st = 0;
        if ((f = fcreate(P(0, "ra.fits")))) {
            char *tu[] = {"RA", "Dec", "e1", "e2"};
            fits_create_tbl(f, BINARY_TBL, 4, 4, tu, tf, NULL, NULL, &st);
            for (i = 0; i < 4; i++) fits_write_col(f, TDOUBLE, i + 1, 1, 1, 4, v[i], &st);
            CHECK(fclose_ok(f, st), "ra -361 table written");
            CHECK_ERR(lss_mm_fits_read_table(P(0, "ra.fits"), 0, &r), LSS_ERR_FORMAT);
            CHECK(msg_has("galaxy 1 (table row 2): ra = -361 (need |ra| <= 360 degrees)"), "ra out of range: '%s'", lss_last_error());
        }
        v[0][1] = 20;
        st = 0;
        if ((f = fcreate(P(0, "vec.fits")))) {
            char *tv[] = {"x", "y", "e1", "e2"}, *tfv[] = {"D", "D", "2D", "D"};
            double e8[8] = {0};
            fits_create_tbl(f, BINARY_TBL, 4, 4, tv, tfv, NULL, NULL, &st);
            fits_write_col(f, TDOUBLE, 1, 1, 1, 4, v[0], &st);
            fits_write_col(f, TDOUBLE, 2, 1, 1, 4, v[1], &st);
            fits_write_col(f, TDOUBLE, 3, 1, 1, 8, e8, &st);
            fits_write_col(f, TDOUBLE, 4, 1, 1, 4, v[3], &st);
            CHECK(fclose_ok(f, st), "vector column table written");
            CHECK_ERR(lss_mm_fits_read_table(P(0, "vec.fits"), 0, &r), LSS_ERR_FORMAT);
            CHECK(msg_has("column e1 is not a scalar number"), "vector e1: '%s'", lss_last_error());
        }
        st = 0;
        if ((f = fcreate(P(0, "str.fits")))) {
            char *tv[] = {"x", "y", "e1", "e2"}, *tfs[] = {"D", "D", "D", "8A"}, *sv[4] = {"a", "b", "c", "d"};
            fits_create_tbl(f, BINARY_TBL, 4, 4, tv, tfs, NULL, NULL, &st);
            for (i = 0; i < 3; i++) fits_write_col(f, TDOUBLE, i + 1, 1, 1, 4, v[i], &st);
            fits_write_col(f, TSTRING, 4, 1, 1, 4, sv, &st);
            CHECK(fclose_ok(f, st), "string column table written");
            CHECK_ERR(lss_mm_fits_read_table(P(0, "str.fits"), 0, &r), LSS_ERR_FORMAT);
            CHECK(msg_has("column e2 is not a scalar number"), "string e2: '%s'", lss_last_error());
        }
        st = 0;
        if ((f = fcreate(P(0, "tnull.fits")))) {
            char *tv[] = {"x", "y", "e1", "e2", "w"}, *tfn[] = {"D", "D", "D", "D", "J"};
            int iw[4] = {1, 2, -1, 3};
            fits_create_tbl(f, BINARY_TBL, 4, 5, tv, tfn, NULL, NULL, &st);
            for (i = 0; i < 4; i++) fits_write_col(f, TDOUBLE, i + 1, 1, 1, 4, v[i], &st);
            fits_write_key_lng(f, "TNULL5", -1, "undefined weight", &st);
            fits_write_col(f, TINT, 5, 1, 1, 4, iw, &st);
            CHECK(fclose_ok(f, st), "TNULL table written");
            CHECK_ERR(lss_mm_fits_read_table(P(0, "tnull.fits"), 0, &r), LSS_ERR_FORMAT);
            CHECK(msg_has("galaxy 2 (table row 3): w = nan"), "TNULL weight: '%s'", lss_last_error());
        }
    }
    {
        long n = 0;
        unsigned char *raw = slurp(P(0, "cat_sky.fits"), &n);
        CHECK(raw && n > 2880 * 3, "catalogue file of %ld bytes", n);
        if (raw) spit(P(0, "cat_half.fits"), raw, n / 2);
        CHECK_ERR(lss_mm_fits_read_table(P(0, "cat_half.fits"), 0, &r), LSS_ERR_FORMAT);
        CHECK(msg_has("truncated") && r.n == 0, "half a catalogue: '%s'", lss_last_error());
        free(raw);
    }
    CHECK_ERR(lss_mm_fits_read_table(P(0, "none.fits"), 0, &r), LSS_ERR_IO);
    CHECK_ERR(lss_mm_catalogue_load(P(0, "text.fits"), 0, &r), LSS_ERR_FORMAT);
    CHECK(msg_has("not a readable FITS file"), "text .fits catalogue: '%s'", lss_last_error());
    CHECK_ERR(lss_mm_fits_read_table(P(0, "m2.fits"), 0, &r), LSS_ERR_FORMAT);
    CHECK(msg_has("no HDU holds a table"), "image file read as a table: '%s'", lss_last_error());
}

static void test_shear_load(void) {
    const int h = 6, w = 5, np = h * w;
    float a[4 * 6 * 5], *g = NULL;
    int hh = 0, ww = 0, i;
    for (i = 0; i < 4 * np; i++) a[i] = (float)(0.01 * (i % 37) - 0.2);
    CHECK_OK(lss_mm_fits_write_image(P(0, "shear2.fits"), a, 2, h, w, 0.29));
    CHECK_OK(lss_mm_shear_load(P(0, "shear2.fits"), 0, &g, &hh, &ww));
    CHECK(g && hh == h && ww == w && !memcmp(g, a, sizeof(float) * 2 * np), "FITS [2, H, W] shear");
    LSS_FREE(g), g = NULL;
    CHECK_OK(lss_mm_fits_write_image(P(0, "shear4.fits"), a, 4, h, w, 0.29));
    CHECK_OK(lss_mm_shear_load(P(0, "shear4.fits"), 1, &g, &hh, &ww));
    CHECK(g && !memcmp(g, a + 2 * np, sizeof(float) * 2 * np), "field 1 of 4 planes: planes 2 and 3");
    LSS_FREE(g), g = NULL;
    CHECK_ERR(lss_mm_shear_load(P(0, "shear4.fits"), 2, &g, &hh, &ww), LSS_ERR_SHAPE);
    CHECK(msg_has("4 planes") && msg_has("field 2") && !g, "field 2 of 2: '%s'", lss_last_error());
    CHECK_OK(lss_mm_fits_write_image(P(0, "shear3.fits"), a, 3, h, w, 0.29));
    CHECK_ERR(lss_mm_shear_load(P(0, "shear3.fits"), 0, &g, &hh, &ww), LSS_ERR_SHAPE);
    CHECK(msg_has("2 planes (gamma1, gamma2)"), "3 planes: '%s'", lss_last_error());
    CHECK_ERR(lss_mm_shear_load(P(0, "m2.fits"), 0, &g, &hh, &ww), LSS_ERR_SHAPE);
    a[np + 7] = 5000;
    CHECK_OK(lss_mm_fits_write_image(P(0, "shear_big.fits"), a, 2, h, w, 0.29));
    CHECK_ERR(lss_mm_shear_load(P(0, "shear_big.fits"), 0, &g, &hh, &ww), LSS_ERR_FORMAT);
    CHECK(msg_has("gamma2 at pixel (1, 2)"), "|gamma| 5000 named: '%s'", lss_last_error());
    CHECK_ERR(lss_mm_shear_load(P(0, "nan.fits"), 0, &g, &hh, &ww), LSS_ERR_FORMAT);
}

/* Failed writes leave the old file; links are written through; devices directly. */
static int hook_fail(const char *tmp, const char *path, void *user) {
    (void)tmp, (void)path, (void)user;
    return lss_seterr(LSS_ERR_IO, "injected failure before the rename");
}
static void test_atomic(void) {
    float m[16], *b = NULL;
    int i, hh, ww, np;
    long n0 = 0, n1 = 0;
    unsigned char *before, *after;
    lss_mm_catalogue c, r;
    double v[3] = {1, 2, 3}, e[3] = {0.1, 0.2, 0.3}, wt[3] = {1, 1, 2};
    for (i = 0; i < 16; i++) m[i] = (float)i;
    CHECK_OK(lss_mm_fits_write_image(P(0, "keep.fits"), m, 1, 4, 4, 2.0));
    before = slurp(P(0, "keep.fits"), &n0);
    m[3] = NAN; /* refused before any file is opened */
    CHECK_ERR(lss_mm_fits_write_image(P(0, "keep.fits"), m, 1, 4, 4, 2.0), LSS_ERR_ARG);
    m[3] = 99;
    lss_wfile_set_hook(hook_fail, NULL); /* a failure once the data is on disk, before the rename */
    CHECK_ERR(lss_mm_fits_write_image(P(0, "keep.fits"), m, 1, 4, 4, 2.0), LSS_ERR_IO);
    CHECK(msg_has("injected"), "the commit failed: '%s'", lss_last_error());
    c.n = 3, c.radec = 0, c.x = v, c.y = v, c.e1 = e, c.e2 = e, c.w = wt;
    CHECK_ERR(lss_mm_fits_write_table(P(0, "keep.fits"), &c), LSS_ERR_IO);
    lss_wfile_set_hook(NULL, NULL);
    after = slurp(P(0, "keep.fits"), &n1);
    CHECK(before && after && n0 == n1 && !memcmp(before, after, (size_t)n0), "failed writes left the file as it was (%ld, %ld bytes)", n0, n1);
    CHECK(temp_files() == 0, "no temporary file left (%d)", temp_files());
    free(before), free(after);
    CHECK_ERR(lss_mm_fits_write_image(P(0, "no/such/dir/x.fits"), m, 1, 4, 4, 2.0), LSS_ERR_IO);
    CHECK(msg_has("no/such/dir/x.fits"), "missing directory: '%s'", lss_last_error());
    /* through a symbolic link: the target is written, the link stays */
    CHECK_OK(lss_mm_fits_write_image(P(0, "target.fits"), m, 1, 4, 4, 2.0));
    remove(P(0, "link.fits"));
    CHECK(symlink("target.fits", P(0, "link.fits")) == 0, "symlink");
    m[0] = -7;
    CHECK_OK(lss_mm_fits_write_image(P(0, "link.fits"), m, 1, 4, 4, 3.0));
    CHECK(is_link(P(0, "link.fits")), "link.fits is still a link");
    CHECK_OK(lss_mm_fits_read_image(P(0, "target.fits"), 0, &b, &hh, &ww, &np, NULL));
    CHECK(b && b[0] == -7 && !memcmp(b, m, sizeof m), "the target holds the new map");
    LSS_FREE(b), b = NULL;
    CHECK_OK(lss_mm_fits_write_table(P(0, "link.fits"), &c));
    CHECK(is_link(P(0, "link.fits")), "link.fits is still a link after a table");
    CHECK_OK(lss_mm_fits_read_table(P(0, "target.fits"), 0, &r));
    CHECK(cat_equal(&c, &r), "the target holds the catalogue");
    lss_mm_catalogue_free(&r);
    /* a device is written directly */
    CHECK_OK(lss_mm_fits_write_image("/dev/null", m, 1, 4, 4, 1.0));
    CHECK_OK(lss_mm_fits_write_table("/dev/null", &c));
    CHECK(temp_files() == 0, "no temporary file left (%d)", temp_files());
}


/* Runs a shell command; its exit status (-1: did not run). */
static int run(const char *cmd) {
    int st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}
static int maps_equal(const char *a, const char *b) { /* two map files (NPY or FITS) hold the same floats */
    float *x = NULL, *y = NULL;
    int nx = 0, ny = 0, ok, h, w, k;
    int64_t sh[LSS_MAX_DIM], n = 1, i;
    if (lss_mm_fits_path(a)) ok = lss_mm_fits_read_image(a, 0, &x, &h, &w, &k, NULL) == 0, nx = h * w * k;
    else if ((ok = lss_npy_load_f32(a, &x, &k, sh) == 0))
        for (i = 0, n = 1; i < k; i++) n *= sh[i], nx = (int)n;
    if (lss_mm_fits_path(b)) ok = ok && lss_mm_fits_read_image(b, 0, &y, &h, &w, &k, NULL) == 0, ny = h * w * k;
    else if (ok && (ok = lss_npy_load_f32(b, &y, &k, sh) == 0))
        for (i = 0, n = 1; i < k; i++) n *= sh[i], ny = (int)n;
    ok = ok && x && y && nx == ny && nx > 0 && !memcmp(x, y, sizeof(float) * (size_t)nx);
    LSS_FREE(x), LSS_FREE(y);
    return ok;
}
static void test_driver(void) {
    enum { N = 2000 };
    static double tab[N * 4];
    double *x = tab, *y = tab + N, *e1 = tab + 2 * N, *e2 = tab + 3 * N, wt[N], row[N * 4], ps[2 * 40];
    const char *hc[4] = {"x", "y", "e1", "e2"}, *hp[2] = {"ell", "cl"};
    char cmd[2048], log[600];
    lss_mm_catalogue c;
    long n = 0;
    unsigned char *txt;
    int i;
    if (access("bin/massmap", X_OK) != 0) {
        SKIP("bin/massmap not built (make bin/massmap)");
        return;
    }
    for (i = 0; i < N; i++) {
        x[i] = (int)(16 * urand()) + 0.5, y[i] = (int)(16 * urand()) + 0.25, e1[i] = (int)(256 * urand()) / 256.0 - 0.5,
        e2[i] = (int)(256 * urand()) / 512.0 - 0.25, wt[i] = 1;
        row[4 * i] = x[i], row[4 * i + 1] = y[i], row[4 * i + 2] = e1[i], row[4 * i + 3] = e2[i];
    }
    for (i = 0; i < 40; i++) ps[2 * i] = 10 * pow(1.3, i), ps[2 * i + 1] = 1e-9 * pow(ps[2 * i] / 1000.0, -1.2);
    c.n = N, c.radec = 0, c.x = x, c.y = y, c.e1 = e1, c.e2 = e2, c.w = wt;
    CHECK_OK(lss_mm_fits_write_table(P(0, "dcat.fits"), &c));
    CHECK_OK(lss_csv_write(P(0, "dcat.csv"), 4, hc, N, row));
    CHECK_OK(lss_csv_write(P(0, "ps.csv"), 2, hp, 40, ps));
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(cmd, sizeof cmd, "bin/massmap bin --catalogue %s/dcat.fits --size 16 --fits --out %s/bf 2>%s", dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "bin/massmap bin --catalogue %s/dcat.csv --size 16 --out %s/bc 2>%s", dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    CHECK(maps_equal(P(0, "bf/shear.npy"), P(1, "bc/shear.npy")) && maps_equal(P(0, "bf/noise_var.npy"), P(1, "bc/noise_var.npy")),
          "bin: a FITS catalogue gives the maps of the CSV one");
    CHECK(maps_equal(P(0, "bf/shear.npy"), P(1, "bf/shear.fits")) && maps_equal(P(0, "bf/noise_var.npy"), P(1, "bf/noise_var.fits")) &&
              maps_equal(P(0, "bf/count.npy"), P(1, "bf/count.fits")),
          "bin --fits: FITS maps equal the NPY maps");
    snprintf(cmd, sizeof cmd, "bin/massmap wiener --shear %s/bf/shear.fits --noise-var %s/bf/noise_var.fits --ps %s/ps.csv --out %s/wf.fits 2>%s",
             dir, dir, dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "bin/massmap wiener --shear %s/bc/shear.npy --noise-var %s/bc/noise_var.npy --ps %s/ps.csv --out %s/wn.npy 2>%s",
             dir, dir, dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    CHECK(maps_equal(P(0, "wf.fits"), P(1, "wn.npy")), "wiener: FITS inputs and output give the NPY result");
    /* ks takes the pixel size of a FITS shear file: PIXSCALE 1 arcmin equals --pixel-arcmin 1, not the default */
    {
        float *g = NULL;
        int h = 0, w = 0;
        CHECK_OK(lss_mm_shear_load(P(0, "bc/shear.npy"), 0, &g, &h, &w));
        if (g) CHECK_OK(lss_mm_fits_write_image(P(0, "s1.fits"), g, 2, h, w, 1.0));
        LSS_FREE(g);
    }
    snprintf(cmd, sizeof cmd, "bin/massmap ks --shear %s/s1.fits --smooth-arcmin 2 --out %s/k1.fits 2>%s", dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "bin/massmap ks --shear %s/bc/shear.npy --smooth-arcmin 2 --pixel-arcmin 1 --out %s/k1.npy 2>%s", dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "bin/massmap ks --shear %s/bc/shear.npy --smooth-arcmin 2 --out %s/k029.npy 2>%s", dir, dir, log);
    CHECK(run(cmd) == 0, "%s", cmd);
    CHECK(maps_equal(P(0, "k1.fits"), P(1, "k1.npy")) && !maps_equal(P(0, "k1.fits"), P(1, "k029.npy")), "ks: PIXSCALE used as the pixel size");
    /* a malformed noise map */
    snprintf(cmd, sizeof cmd, "bin/massmap wiener --shear %s/bf/shear.fits --noise-var %s/text.fits --ps %s/ps.csv --out %s/bad.fits 2>%s",
             dir, dir, dir, dir, log);
    CHECK(run(cmd) == 2, "malformed noise map: exit 2");
    txt = slurp(log, &n);
    CHECK(txt && strstr((char *)txt, "text.fits") && strstr((char *)txt, "not a readable FITS file") && fsize(P(0, "bad.fits")) < 0,
          "the driver says why: '%s'", txt ? (char *)txt : "");
    free(txt);
}

int main(void) {
    if (!mkdtemp(dir)) {
        printf("cannot create a directory under build/ (run from the repository root)\n");
        CHECK(0, "mkdtemp %s", dir);
        LSS_TEST_END();
    }
    RUN(test_paths);
    RUN(test_image_roundtrip);
    RUN(test_image_kinds);
    RUN(test_image_rejects);
    RUN(test_tables);
    RUN(test_shear_load);
    RUN(test_atomic);
    RUN(test_driver);
    if (!lss_t_fail) rm_tree(dir);
    else printf("files kept in %s\n", dir);
    LSS_TEST_END();
}
