/* mkseeds.c - writes the seed corpora of the fuzz harnesses into tests/fuzz/corpus/<name>/ (run from the
 * repository root: make fuzz-seeds). The seeds are committed; this program documents how they were made. */
#include "tests/fuzz/fuzz_common.h"
#include <errno.h>
#include <fitsio.h>

int fuzz_ckpt_model(lss_store **st, lss_optim **o);
#include "tests/fuzz/fuzz_ckpt.c"

static void die(const char *what) {
    fprintf(stderr, "mkseeds: %s: %s\n", what, lss_last_error());
    exit(1);
}

static void put(const char *name, const char *seed, const void *data, size_t n) {
    char p[512];
    FILE *f;
    snprintf(p, sizeof p, "tests/fuzz/corpus/%s", name);
    mkdir("tests/fuzz/corpus", 0777);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "tests/fuzz/corpus/%s/%s", name, seed);
    if (!(f = fopen(p, "wb")) || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "mkseeds: cannot write %s: %s\n", p, strerror(errno));
        exit(1);
    }
}
static void put_text(const char *name, const char *seed, const char *text) { put(name, seed, text, strlen(text)); }

/* The bytes of a file (malloc'd). */
static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long l;
    if (!f || fseek(f, 0, SEEK_END) != 0 || (l = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "mkseeds: cannot read %s\n", path);
        exit(1);
    }
    b = (unsigned char *)malloc((size_t)l + 1);
    if (!b || fread(b, 1, (size_t)l, f) != (size_t)l) exit(1);
    fclose(f);
    *n = (size_t)l;
    return b;
}
static void put_file(const char *name, const char *seed, const char *path, const unsigned char *prefix, size_t np) {
    size_t n;
    unsigned char *b = slurp(path, &n), *c = (unsigned char *)malloc(n + np + 1);
    memcpy(c, prefix, np);
    memcpy(c + np, b, n);
    put(name, seed, c, n + np);
    free(b);
    free(c);
}

int main(void) {
    const char *tmp = fuzz_file(0, "seed.npy");
    /* npy */
    {
        float f[6] = {1, 2, 3, 4, 5, 6};
        double d[4] = {0.5, -1, 1e300, 0};
        int32_t i4 = 7;
        int64_t i8[4] = {1, -2, 3, -4}, s2[2] = {2, 3}, s1[1] = {4}, s3[3] = {2, 2, 1};
        if (lss_npy_save(tmp, LSS_F32, 2, s2, f)) die("npy");
        put_file("npy", "f32_2x3", tmp, NULL, 0);
        if (lss_npy_save(tmp, LSS_F64, 1, s1, d)) die("npy");
        put_file("npy", "f64_4", tmp, NULL, 0);
        if (lss_npy_save(tmp, LSS_I32, 0, NULL, &i4)) die("npy");
        put_file("npy", "i32_scalar", tmp, NULL, 0);
        {   /* a shear stack [2, 2, 2, 2] (fields 0 and 1 of lss_mm_shear_load) */
            float g[16];
            int64_t s4[4] = {2, 2, 2, 2};
            int k;
            for (k = 0; k < 16; k++) g[k] = 0.01f * (float)(k - 8);
            if (lss_npy_save(tmp, LSS_F32, 4, s4, g)) die("npy");
            put_file("npy", "shear_2x2x2x2", tmp, NULL, 0);
        }
        if (lss_npy_save(tmp, LSS_I64, 3, s3, i8)) die("npy");
        put_file("npy", "i64_2x2x1", tmp, NULL, 0);
        {   /* a v2 header, Fortran order of a vector, a Python 2 long in the shape */
            const char *h = "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2L), }      \n";
            unsigned char b[256];
            size_t hl = strlen(h);
            float v[2] = {1, 2};
            memcpy(b, "\x93NUMPY\x02\x00", 8);
            b[8] = (unsigned char)hl; b[9] = b[10] = b[11] = 0;
            memcpy(b + 12, h, hl);
            memcpy(b + 12 + hl, v, sizeof v);
            put("npy", "v2_header", b, 12 + hl + sizeof v);
        }
    }
    /* csv */
    put_text("csv", "table", "ell,cl\n10,1e-9\n100,2.5e-10\n1000,nan\n");
    put_text("csv", "comments", "# a comment\n\nx, y ,e1,e2\n1.5,2,0.1,-0.2\r\n3,4,inf,0\n");
    put_text("csv", "header_only", "h,w,pixel_arcmin,shift,nfields,seed\n");
    /* n(z) */
    put_text("nz", "two_bins", "# z n1 n2\n0 0 0\n0.5 1 0.2\n1.0 0.5 1\n1.5 0 0.3\n2.0 0 0\n");
    put_text("nz", "commas", "0.0,0\n0.25,2.5 # peak\n0.5,1\n1,0\n");
    /* shear catalogues: the first byte selects (bit 0 NPY, bit 1 ra/dec NPY, bit 2 fixed grid) */
    {
        static const unsigned char csv0[1] = {0}, csv4[1] = {4}, npy1[1] = {1}, npy3[1] = {3};
        double xy[3 * 4] = {0.5, 0.5, 0.1, 0.0, 3.2, 1.7, -0.1, 0.2, 7.9, 7.9, 0.0, 0.3};
        double rd[3 * 5] = {150.1, 2.2, 0.1, 0.0, 1.0, 150.2, 2.3, -0.1, 0.2, 2.0, 150.15, 2.25, 0, 0.3, 0.5};
        int64_t s4[2] = {3, 4}, s5[2] = {3, 5};
        const char *a = "x,y,e1,e2\n0.5,0.5,0.1,0\n3.2,1.7,-0.1,0.2\n7.9,7.9,0,0.3\n";
        const char *b = "ra,dec,e1,e2,weight\n150.1,2.2,0.1,0,1\n150.2,2.3,-0.1,0.2,2\n150.15,2.25,0,0.3,0.5\n";
        char buf[512];
        buf[0] = 0;
        memcpy(buf + 1, a, strlen(a));
        put("catalogue", "xy_csv", buf, strlen(a) + 1);
        buf[0] = 4;
        put("catalogue", "xy_csv_grid16", buf, strlen(a) + 1);
        buf[0] = 0;
        memcpy(buf + 1, b, strlen(b));
        put("catalogue", "radec_csv", buf, strlen(b) + 1);
        (void)csv0; (void)csv4;
        if (lss_npy_save(tmp, LSS_F64, 2, s4, xy)) die("npy");
        put_file("catalogue", "xy_npy", tmp, npy1, 1);
        if (lss_npy_save(tmp, LSS_F64, 2, s5, rd)) die("npy");
        put_file("catalogue", "radec_npy", tmp, npy3, 1);
    }
    /* mock: an 8 x 8 mock of 1 field, files joined by "\n@@\n" */
    {
        static const char *const names[7] = {"grid.csv", "ps.csv", "kappa.npy", "shear.npy", "noise_var.npy", "mask.npy", "count.npy"};
        lss_mm_mock_opts mo;
        lss_mm_mock *m;
        char dir[600], p[700];
        unsigned char *all = NULL;
        size_t na = 0;
        int k;
        memset(&mo, 0, sizeof mo);
        mo.size = 8;
        mo.nfields = 1;
        mo.nell = 8;
        mo.seed = 3;
        snprintf(dir, sizeof dir, "%s/mockseed", fuzz_dir());
        mkdir(dir, 0700);
        if (lss_mm_mock_create(&mo, &m) || lss_mm_mock_save(m, dir)) die("mock");
        lss_mm_mock_free(m);
        for (k = 0; k < 7; k++) {
            size_t n;
            unsigned char *b;
            snprintf(p, sizeof p, "%s/%s", dir, names[k]);
            b = slurp(p, &n);
            all = (unsigned char *)realloc(all, na + n + 4);
            if (k) memcpy(all + na, "\n@@\n", 4), na += 4;
            memcpy(all + na, b, n);
            na += n;
            free(b);
        }
        put("mock", "mock_8x8", all, na);
        /* without count.npy (optional) */
        {
            size_t cut = na;
            while (cut > 4 && memcmp(all + cut - 4, "\n@@\n", 4)) cut--;
            put("mock", "mock_8x8_nocount", all, cut - 4);
        }
        free(all);
    }
    /* mass-mapping network checkpoints: 8 x 8, width 2, score and DeepMass */
    {
        lss_grid *g;
        double pk[64];
        lss_mm_net_opts no;
        lss_mm_net *n;
        int i, dm;
        if (lss_grid_create(8, 8, 1.0, &g)) die("grid");
        for (i = 0; i < 64; i++) pk[i] = i ? 1e-4 : 0.0;
        for (dm = 0; dm < 2; dm++) {
            memset(&no, 0, sizeof no);
            no.c0 = 2;
            no.deepmass = dm;
            no.seed = 5;
            if (lss_mm_net_create(g, pk, &no, &n) || lss_mm_net_save(n, fuzz_file(1, "net.ckpt"))) die("mm net");
            put_file("mmckpt", dm ? "deepmass_8x8_c2" : "score_8x8_c2", fuzz_file(1, "net.ckpt"), NULL, 0);
            lss_mm_net_free(n);
        }
        lss_grid_free(g);
    }
    /* lss_nn checkpoints of the fuzz_ckpt model, with and without the optimizer */
    {
        lss_store *st;
        lss_optim *o;
        if (fuzz_ckpt_model(&st, &o)) die("model");
        if (lss_ckpt_save(fuzz_file(1, "nn.ckpt"), st, o)) die("ckpt");
        put_file("ckpt", "with_optim", fuzz_file(1, "nn.ckpt"), NULL, 0);
        if (lss_ckpt_save(fuzz_file(1, "nn.ckpt"), st, NULL)) die("ckpt");
        put_file("ckpt", "weights_only", fuzz_file(1, "nn.ckpt"), NULL, 0);
        lss_optim_free(o);
        lss_store_free(st);
    }
    /* deeplss.cfg of both presets */
    {
        lss_deeplss_cfg c;
        lss_deeplss_cfg_defaults(&c, LSS_DEEPLSS_SMALL);
        if (lss_deeplss_cfg_save(&c, fuzz_file(1, "d.cfg"))) die("cfg");
        put_file("cfg", "small", fuzz_file(1, "d.cfg"), NULL, 0);
        lss_deeplss_cfg_defaults(&c, LSS_DEEPLSS_PAPER);
        if (lss_deeplss_cfg_save(&c, fuzz_file(1, "d.cfg"))) die("cfg");
        put_file("cfg", "paper", fuzz_file(1, "d.cfg"), NULL, 0);
    }
    /* report tables of a DeepLSS run (fuzz_report): mcmc_fid.csv, loss.csv, calibration.csv, mdn_check.csv */
    {
        char t[4096];
        size_t n = 0;
        int kd, pr, m;
        n += (size_t)snprintf(t + n, sizeof t - n, "kind,probe,mock,ok,std_Om,std_s8,std_AIA,std_eIA,std_bg,std_ebg,std_rg,std_S8,fom_det,area68\n");
        for (kd = 0; kd < 2; kd++)
            for (pr = 0; pr < 3; pr++)
                for (m = 0; m < 4; m++)
                    n += (size_t)snprintf(t + n, sizeof t - n, "%d,%d,%d,1,0.1,0.05,0.3,1,0.2,0.5,0.1,0.02,%g,0.01\n", kd, pr, m, 100.0 + 10 * m + kd);
        n += (size_t)snprintf(t + n, sizeof t - n, "\n@@\nstep,valid_cnn_comb,valid_psd_comb\n100,1.5,2\n200,1.2,1.9\n");
        n += (size_t)snprintf(t + n, sizeof t - n, "\n@@\nkind,mock,param,inside,ok\n0,0,0,1,1\n0,1,3,0,1\n1,2,6,1,1\n");
        n += (size_t)snprintf(t + n, sizeof t - n, "\n@@\nkind,probe,dmu_median,dmu_lo,dmu_hi,dsig_median,dsig_lo,dsig_hi\n0,0,0.1,0,0.2,1,0.9,1.1\n");
        put("report", "run", t, n);
    }
    /* FITS files (fuzz_fits): selector byte (HDU, shear field) + the file */
    {
        float img[8 * 8], sh[4 * 4 * 4];
        double v[6] = {10, 20, 30, 40, 50, 60}, e[6] = {0.1, -0.2, 0.3, 0, 0.05, -0.01}, wt[6] = {1, 2, 0, 1, 1, 3};
        lss_mm_catalogue c;
        unsigned char sel0 = 0, sel2 = 2, sel4 = 4;
        int i, st = 0;
        fitsfile *f;
        long ax[2] = {4, 3};
        short i16[12];
        for (i = 0; i < 64; i++) img[i] = (float)(i % 9) * 0.25f - 1;
        for (i = 0; i < 64; i++) sh[i] = (float)((i % 13) - 6) * 0.01f;
        if (lss_mm_fits_write_image(fuzz_file(1, "s.fits"), img, 1, 8, 8, 0.29)) die("fits image");
        put_file("fits", "image", fuzz_file(1, "s.fits"), &sel0, 1);
        if (lss_mm_fits_write_image(fuzz_file(1, "s.fits"), sh, 4, 4, 4, 1.0)) die("fits shear");
        put_file("fits", "shear_field1", fuzz_file(1, "s.fits"), &sel4, 1);
        c.n = 6, c.radec = 1, c.x = v, c.y = e, c.e1 = e, c.e2 = e, c.w = wt;
        if (lss_mm_fits_write_table(fuzz_file(1, "s.fits"), &c)) die("fits table");
        put_file("fits", "table_radec", fuzz_file(1, "s.fits"), &sel0, 1);
        c.radec = 0;
        if (lss_mm_fits_write_table(fuzz_file(1, "s.fits"), &c)) die("fits table");
        put_file("fits", "table_xy_hdu2", fuzz_file(1, "s.fits"), &sel2, 1);
        /* BITPIX 16 with BSCALE, BZERO, BLANK and a CD matrix, written by cfitsio */
        for (i = 0; i < 12; i++) i16[i] = (short)(i * 100 - 600);
        remove(fuzz_file(1, "s.fits"));
        if (fits_create_diskfile(&f, fuzz_file(1, "s.fits"), &st) == 0) {
            fits_create_img(f, SHORT_IMG, 2, ax, &st);
            fits_write_key_dbl(f, "BSCALE", 0.5, -17, "", &st);
            fits_write_key_dbl(f, "BZERO", 3.0, -17, "", &st);
            fits_write_key_lng(f, "BLANK", -32768, "", &st);
            fits_write_key_dbl(f, "CD1_1", -0.005, -17, "", &st);
            fits_write_key_dbl(f, "CD2_1", 0.001, -17, "", &st);
            fits_set_bscale(f, 1.0, 0.0, &st);
            fits_write_img(f, TSHORT, 1, 12, i16, &st);
            fits_close_file(f, &st);
        }
        if (st) die("fits i16");
        put_file("fits", "i16_scaled", fuzz_file(1, "s.fits"), &sel0, 1);
    }
    /* JSON records */
    put_text("json", "run", "{\n  \"program\": \"lss-sim\",\n  \"version\": \"0.1.0\",\n  \"argv\": [\"lss-sim\", \"--out\", \"a\\\"b\"],\n"
                            "  \"seed\": 1,\n  \"time_utc\": \"2025-01-01T00:00:00Z\", \"a\": [1, -2.5e3, 0],\n  \"sky\": {\"x\": [1, [2]]}, \"ok\": true, \"n\": null\n}\n");
    put_text("json", "unicode", "{\"k\\u00e9y\": \"\\u20ac\\n\", \"e\": []}");
    printf("mkseeds: corpora written under tests/fuzz/corpus/\n");
    return 0;
}
