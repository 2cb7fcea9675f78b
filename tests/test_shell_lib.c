#define _POSIX_C_SOURCE 200809L
/* test_shell_lib.c - the JSON record reader of lss_core.h, N-body shell sets on disk (lss_shellset_save/_load,
 * shell libraries) and lss_sim drawing its shells from a set (lss_sim_use_shells).
 *
 * References: hand-written JSON texts with known members and known defects; shell sets built here with known
 * values, so that Born projection of a set is a weighted sum this file can compute from lss_sim_get_info's
 * weights; the 8 views of a cone are the flips and transposes computed here.
 */
#include <stdlib.h>
#include <unistd.h>
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "tests/lss_test.h"

static char tmpdir[256];

static int parse(const char *t, lss_json **j) { return lss_json_parse(t, strlen(t), j); }

static void test_json(void) {
    lss_json *j = NULL;
    double v;
    const double *a;
    const char *s;
    int n;
    static const char *const bad[] = {
        "", "[1]", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1 \"b\":2}", "{\"a\":\"x}", "{\"a\":01x}",
        "{\"a\":[1,]}", "{\"a\":[1 2]}", "{\"a\":{\"b\":}}", "{\"a\":\"\\q\"}", "{\"a\":\"\\u12g4\"}", "{\"a\":1} x",
        "{\"a\":tru}", "{\"a\":-}", "{\"a\":\"tab\there\"}", "{\"a\":1e}"};
    size_t k;
    CHECK_OK(parse(" {\"x\": -1.5e2, \"s\": \"a\\\"b\\u00e9\\n\", \"arr\": [1, 2.5, -3e-1], \"t\": true, \"f\": false, "
                   "\"nul\": null, \"obj\": {\"q\": [1, {\"r\": \"]\"}]}, \"mixed\": [1, \"two\"], \"empty\": [], "
                   "\"x\": 7} ", &j));
    if (j) {
        CHECK_OK(lss_json_num(j, "x", &v));
        CHECK(v == -150, "x = %g (first of the duplicates wins)", v);
        CHECK_OK(lss_json_str(j, "s", &s));
        CHECK(!strcmp(s, "a\"b\xc3\xa9\n"), "escapes decoded: '%s'", s);
        CHECK_OK(lss_json_array(j, "arr", &a, &n));
        CHECK(n == 3 && a[0] == 1 && a[1] == 2.5 && a[2] == -0.3, "array of 3 numbers");
        CHECK_OK(lss_json_num(j, "t", &v));
        CHECK(v == 1, "true reads 1");
        CHECK_OK(lss_json_num(j, "f", &v));
        CHECK(v == 0, "false reads 0");
        CHECK_OK(lss_json_array(j, "empty", &a, &n));
        CHECK(n == 0, "empty array");
        CHECK(lss_json_has(j, "obj") && lss_json_has(j, "nul") && !lss_json_has(j, "q"), "nested members skipped, not flattened");
        CHECK_ERR(lss_json_num(j, "s", &v), LSS_ERR_FORMAT);
        CHECK_ERR(lss_json_array(j, "mixed", &a, &n), LSS_ERR_FORMAT);
        CHECK_ERR(lss_json_str(j, "missing", &s), LSS_ERR_FORMAT);
        CHECK(strstr(lss_last_error(), "missing") != NULL, "message names the key: %s", lss_last_error());
        lss_json_free(j);
    }
    for (k = 0; k < sizeof bad / sizeof *bad; k++) {
        j = (lss_json *)1;
        CHECK_ERR(parse(bad[k], &j), LSS_ERR_FORMAT);
        CHECK(j == NULL, "no object on failure for text %lu", (unsigned long)k);
        CHECK(strstr(lss_last_error(), "byte") != NULL, "message gives the offset: %s", lss_last_error());
    }
    {
        /* nesting limit: 70 levels */
        char deep[200];
        int d;
        strcpy(deep, "{\"a\":");
        for (d = 0; d < 70; d++) strcat(deep, "[");
        for (d = 0; d < 70; d++) strcat(deep, "]");
        strcat(deep, "}");
        CHECK_ERR(parse(deep, &j), LSS_ERR_FORMAT);
    }
    CHECK_ERR(lss_json_load("/nonexistent/x.json", &j), LSS_ERR_IO);
}

/* a shell set for cosmology p with the shells of sim's info, values f(cone, shell, y, x) */
static float fval(int c, int b, int y, int x) { return (float)(0.01 * ((c * 7 + b * 3 + y * 5 + x * 11) % 17) - 0.08); }

static int make_set(const lss_params *p, const lss_sim_info *inf, int side, int ncone, lss_shellset *s) {
    int c, b, y, x;
    memset(s, 0, sizeof *s);
    s->ncone = ncone; s->nshell = inf->nshell; s->side = side; s->pixel_arcmin = inf->pixel_arcmin;
    s->z_edges = malloc(sizeof(double) * (size_t)(inf->nshell + 1));
    s->delta = malloc(sizeof(float) * (size_t)ncone * inf->nshell * side * side);
    if (!s->z_edges || !s->delta) return 1;
    for (b = 0; b < inf->nshell; b++) s->z_edges[b] = inf->z_lo[b];
    s->z_edges[inf->nshell] = inf->z_hi[inf->nshell - 1];
    for (c = 0; c < ncone; c++)
        for (b = 0; b < inf->nshell; b++)
            for (y = 0; y < side; y++)
                for (x = 0; x < side; x++) s->delta[(((size_t)c * inf->nshell + b) * side + y) * side + x] = fval(c, b, y, x);
    s->params = *p;
    s->seed = 5; s->index = 3;
    s->nbody.box = 500; s->nbody.np = 64; s->nbody.mesh = 128; s->nbody.steps = 10; s->nbody.z_init = 9;
    s->nbody.lpt_order = 2;
    s->seconds = 1.25;
    return 0;
}

static void test_disk(void) {
    lss_params p;
    lss_cosmo *c = NULL;
    lss_nz *nz = NULL;
    lss_sim *sim = NULL;
    lss_sim_info inf;
    lss_sim_opts so;
    lss_shellset s, r;
    char stem[512], path[600];
    int nb, cnt;
    size_t k, tot;
    lss_params q;
    lss_params_fiducial(&p);
    memset(&so, 0, sizeof so);
    so.nside = 16;
    so.r_wl = so.r_gc = -1;
    CHECK_OK(lss_cosmo_create(&p, &c));
    CHECK_OK(lss_nz_builtin("deeplss", &nz, &nb));
    CHECK_OK(lss_sim_create(c, nz, nb, &so, &sim));
    lss_sim_get_info(sim, &inf);
    CHECK(make_set(&p, &inf, 24, 2, &s) == 0, "set built");
    CHECK_OK(lss_shell_lib_count(tmpdir, &cnt));
    CHECK(cnt == 0, "empty library counts 0 (%d)", cnt);
    CHECK_OK(lss_shell_lib_stem(tmpdir, 0, stem, sizeof stem));
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_OK(lss_shell_lib_stem(tmpdir, 1, stem, sizeof stem));
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_OK(lss_shell_lib_count(tmpdir, &cnt));
    CHECK(cnt == 2, "library of 2 entries (%d)", cnt);
    CHECK_OK(lss_shell_lib_params(tmpdir, 1, &q));
    CHECK(q.omega_m == p.omega_m && q.sigma_8 == p.sigma_8 && q.h == p.h && q.n_s == p.n_s && q.omega_b == p.omega_b,
          "cosmology round trip");
    CHECK_OK(lss_shellset_load(stem, &r));
    tot = (size_t)s.ncone * s.nshell * s.side * s.side;
    if (r.delta) {
        CHECK(r.ncone == 2 && r.nshell == s.nshell && r.side == 24 && r.seed == 5 && r.index == 3 && r.nbody.np == 64 &&
              r.nbody.mesh == 128 && r.nbody.lpt_order == 2 && r.seconds == 1.25, "metadata round trip");
        for (k = 0; k < tot && r.delta[k] == s.delta[k]; k++) {}
        CHECK(k == tot, "maps round trip bit for bit");
        for (k = 0; k <= (size_t)s.nshell && r.z_edges[k] == s.z_edges[k]; k++) {}
        CHECK(k == (size_t)s.nshell + 1, "z edges round trip exactly");
    }
    lss_shellset_free(&r);
    CHECK(r.delta == NULL && r.ncone == 0, "free zeroes");
    /* defects */
    s.delta[17] = NAN;
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_ERR(lss_shellset_load(stem, &r), LSS_ERR_FORMAT);
    CHECK(strstr(lss_last_error(), "element 17") != NULL, "NaN named: %s", lss_last_error());
    s.delta[17] = -1.5f;
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_ERR(lss_shellset_load(stem, &r), LSS_ERR_FORMAT);
    s.delta[17] = 0;
    s.side = 23;  /* JSON says 23, the NPY is 24 wide */
    CHECK_OK(lss_shellset_save(&s, stem));
    s.side = 24;
    snprintf(path, sizeof path, "%s.npy", stem);
    {
        int64_t sh[4] = {2, s.nshell, 24, 24};
        CHECK_OK(lss_npy_save(path, LSS_F32, 4, sh, s.delta));
    }
    CHECK_ERR(lss_shellset_load(stem, &r), LSS_ERR_SHAPE);
    snprintf(path, sizeof path, "%s.json", stem);
    {
        FILE *f = fopen(path, "w");
        if (f) { fputs("{\"omega_m\": 0.3, \"sigma_8\": \"x\"}", f); fclose(f); }
    }
    CHECK_ERR(lss_shellset_load(stem, &r), LSS_ERR_FORMAT);
    CHECK(strstr(lss_last_error(), path) != NULL, "message names the file: %s", lss_last_error());
    remove(path);
    CHECK_ERR(lss_shellset_load(stem, &r), LSS_ERR_IO);
    CHECK_OK(lss_shell_lib_count(tmpdir, &cnt));
    CHECK(cnt == 1, "an entry without its JSON is not complete (%d)", cnt);
    snprintf(path, sizeof path, "%s.npy", stem);
    remove(path);
    CHECK_OK(lss_shell_lib_stem(tmpdir, 0, stem, sizeof stem));
    snprintf(path, sizeof path, "%s.npy", stem); remove(path);
    snprintf(path, sizeof path, "%s.json", stem); remove(path);
    lss_shellset_free(&s);
    lss_sim_free(sim);
    lss_cosmo_free(c);
    lss_nz_free(nz, nb);
}

/* projection of a set: kappa_i = sum_b W_WL[i][b] delta_b (mean removed), delta_i from W_G, no smoothing */
static void test_sim_shells(void) {
    lss_params p, p2;
    lss_cosmo *c = NULL, *c2 = NULL;
    lss_nz *nz = NULL;
    lss_sim *sim = NULL;
    lss_sim_work *w = NULL;
    lss_sim_info inf;
    lss_sim_opts so;
    lss_shellset s;
    int nb, n = 16, R, i, b, y, x, v, ok, bad_proj = 0, bad_view = 0;
    float *f = NULL, *g = NULL;
    size_t fs, nn = (size_t)n * n;
    lss_params_fiducial(&p);
    memset(&so, 0, sizeof so);
    so.nside = n;
    so.r_wl = so.r_gc = -1;   /* no smoothing: the map is the projection itself */
    so.no_pixwin = 1;
    CHECK_OK(lss_cosmo_create(&p, &c));
    CHECK_OK(lss_nz_builtin("deeplss", &nz, &nb));
    CHECK_OK(lss_sim_create(c, nz, nb, &so, &sim));
    CHECK_OK(lss_sim_work_create(sim, &w));
    if (!sim || !w) return;
    lss_sim_get_info(sim, &inf);
    R = lss_sim_shell_side(sim);
    CHECK(R == n, "no smoothing margin without smoothing (%d)", R);
    CHECK(make_set(&p, &inf, n + 4, 3, &s) == 0, "set built");
    CHECK_OK(lss_sim_use_shells(sim, &s));
    fs = lss_sim_field_size(sim);
    f = malloc(sizeof(float) * fs);
    g = malloc(sizeof(float) * fs);
    for (v = 0; v < 24 && f && g; v++) {
        int cone = v % 3, t = v / 3;
        CHECK_OK(lss_sim_field(sim, w, 1, (uint64_t)v, f));
        for (i = 0; i < nb; i++) {
            /* expected kappa_i and galaxy density from the set's view */
            double mk = 0, md = 0, tot = 0;
            for (b = 0; b < inf.nshell; b++) tot += inf.w_g[i * inf.nshell + b];
            for (y = 0; y < n; y++)
                for (x = 0; x < n; x++) {
                    double sk = 0, sd = 0;
                    int yy = (t & 1) ? n - 1 - y : y, xx = (t & 2) ? n - 1 - x : x, q;
                    if (t & 4) { q = yy; yy = xx; xx = q; }
                    for (b = 0; b < inf.nshell; b++) {
                        float d = fval(cone, b, yy + 2, xx + 2);
                        sk += (float)inf.w_wl[i * inf.nshell + b] * d;
                        sd += (float)inf.w_g[i * inf.nshell + b] * d;
                    }
                    g[(size_t)i * nn + y * n + x] = (float)sk;
                    g[(size_t)(2 * nb + i) * nn + y * n + x] = (float)sd;
                    mk += sk; md += sd;
                }
            mk /= (double)nn; md /= (double)nn;
            for (y = 0; y < n * n; y++) {
                double ek = g[(size_t)i * nn + y] - mk, ed = (tot + g[(size_t)(2 * nb + i) * nn + y]) / (tot + md) - 1;
                if (fabs(f[(size_t)i * nn + y] - ek) > 2e-6 * (1 + fabs(ek)) || fabs(f[(size_t)(2 * nb + i) * nn + y] - ed) > 2e-5)
                    bad_proj++;
            }
        }
    }
    CHECK(bad_proj == 0, "Born projection of the 24 views as computed here (%d pixels off)", bad_proj);
    /* views repeat after 8 ncone, and the 8 transforms of a cone differ */
    CHECK_OK(lss_sim_field(sim, w, 1, 5, f));
    CHECK_OK(lss_sim_field(sim, w, 99, 5 + 24, g));
    for (y = 0, ok = 1; y < (int)fs; y++) ok &= f[y] == g[y];
    CHECK(ok, "field index + 8 ncone is the same view (the seed does not enter noise-free shells)");
    for (v = 1; v < 8; v++) {
        CHECK_OK(lss_sim_field(sim, w, 1, (uint64_t)(3 * v), g));
        CHECK_OK(lss_sim_field(sim, w, 1, 0, f));
        for (y = 0, ok = 1; y < (int)nn; y++) ok &= f[y] == g[y];
        bad_view += ok;
    }
    CHECK(bad_view == 0, "the 8 views of cone 0 differ (%d equal to view 0)", bad_view);
    /* mismatches */
    s.pixel_arcmin *= 1.01;
    CHECK_ERR(lss_sim_use_shells(sim, &s), LSS_ERR_ARG);
    s.pixel_arcmin /= 1.01;
    s.side = n - 2;
    CHECK_ERR(lss_sim_use_shells(sim, &s), LSS_ERR_ARG);
    s.side = n + 3;
    CHECK_ERR(lss_sim_use_shells(sim, &s), LSS_ERR_ARG);
    s.side = n + 4;
    s.params.sigma_8 += 0.01;
    CHECK_ERR(lss_sim_use_shells(sim, &s), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "sigma_8") != NULL, "message names the cosmology: %s", lss_last_error());
    s.params.sigma_8 -= 0.01;
    s.z_edges[3] += 0.001;
    CHECK_ERR(lss_sim_use_shells(sim, &s), LSS_ERR_ARG);
    s.z_edges[3] -= 0.001;
    CHECK_OK(lss_sim_use_shells(sim, &s));
    p2 = p;
    p2.omega_m = 0.3;
    CHECK_OK(lss_cosmo_create(&p2, &c2));
    CHECK_OK(lss_sim_set_cosmo(sim, c2));
    CHECK_ERR(lss_sim_field(sim, w, 1, 0, f), LSS_ERR_ARG);
    CHECK_OK(lss_sim_set_cosmo(sim, c));
    CHECK_OK(lss_sim_field(sim, w, 1, 0, f));
    CHECK_OK(lss_sim_use_shells(sim, NULL));
    CHECK_OK(lss_sim_set_cosmo(sim, c2));
    CHECK_OK(lss_sim_field(sim, w, 1, 0, f));   /* lognormal again */
    free(f); free(g);
    lss_shellset_free(&s);
    lss_sim_work_free(w);
    lss_sim_free(sim);
    lss_cosmo_free(c); lss_cosmo_free(c2);
    lss_nz_free(nz, nb);
}

/* the DeepLSS pool from a library: training fields from the first cones, held-out fields from the last,
   each the view lss_sim_use_shells gives; pool save and load round trip; the errors */
static void test_pool_library(void) {
    lss_params p;
    lss_cosmo *c = NULL;
    lss_nz *nz = NULL;
    lss_sim *sim = NULL;
    lss_sim_work *w = NULL;
    lss_sim_info inf;
    lss_sim_opts so;
    lss_shellset s;
    lss_pool pool, back;
    char lib[400], stem[512], path[600];
    int nb, n = 16, f, k, bad = 0;
    float *g = NULL;
    size_t fs;
    lss_params_fiducial(&p);
    memset(&so, 0, sizeof so);
    so.nside = n;
    so.r_wl = so.r_gc = -1;
    so.no_pixwin = 1;
    memset(&pool, 0, sizeof pool);
    memset(&back, 0, sizeof back);
    snprintf(lib, sizeof lib, "%s/lib", tmpdir);
    CHECK(mkdir(lib, 0700) == 0, "library directory made");
    CHECK_OK(lss_cosmo_create(&p, &c));
    CHECK_OK(lss_nz_builtin("deeplss", &nz, &nb));
    CHECK_OK(lss_sim_create(c, nz, nb, &so, &sim));
    CHECK_OK(lss_sim_work_create(sim, &w));
    if (!sim || !w) return;
    lss_sim_get_info(sim, &inf);
    CHECK(make_set(&p, &inf, n + 4, 4, &s) == 0, "set of 4 cones built");
    CHECK_OK(lss_shell_lib_stem(lib, 0, stem, sizeof stem));
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_OK(lss_sim_use_shells(sim, &s));
    fs = lss_sim_field_size(sim);
    g = malloc(sizeof(float) * fs);
    CHECK_OK(lss_pool_init(&pool, 1, 3, 2, nb, n));
    CHECK((size_t)pool.field_size == fs, "pool field of the simulator's size");
    CHECK_OK(lss_pool_simulate_library(&pool, nz, &so, lib, NULL, NULL));
    CHECK(pool.cosmo[0] == p.omega_m && pool.cosmo[1] == p.sigma_8, "pool cosmology from the entry");
    /* 4 cones: 3 for training (field f = cone f, as it is), 1 held out (field f = cone 3, transform f) */
    for (f = 0; f < 5 && g; f++) {
        uint64_t v = f < 3 ? (uint64_t)f : (uint64_t)(3 + 4 * (f - 3));
        const float *a = pool.fields + (size_t)f * fs;
        CHECK_OK(lss_sim_field(sim, w, 1, v, g));
        for (k = 0; k < (int)fs; k++) bad += a[k] != g[k];
    }
    CHECK(bad == 0, "pool fields are the views of the training and held-out cones (%d values differ)", bad);
    /* save and load */
    CHECK_OK(lss_pool_save(&pool, tmpdir));
    CHECK_OK(lss_pool_init(&back, 1, 3, 2, nb, n));
    CHECK_OK(lss_pool_load(&back, tmpdir, 1));
    CHECK(back.cosmo[0] == pool.cosmo[0] && back.cosmo[1] == pool.cosmo[1] &&
          memcmp(back.fields, pool.fields, sizeof(float) * fs * 5) == 0, "pool round trip bit for bit");
    lss_pool_free(&back);
    CHECK_OK(lss_pool_init(&back, 1, 4, 2, nb, n));
    CHECK_ERR(lss_pool_load(&back, tmpdir, 1), LSS_ERR_FORMAT);
    CHECK(strstr(lss_last_error(), "pool_fields.npy") != NULL, "shape mismatch names the file: %s", lss_last_error());
    CHECK_OK(lss_pool_load(&back, tmpdir, 0));   /* the grid alone */
    lss_pool_free(&back);
    CHECK_OK(lss_pool_init(&back, 2, 3, 2, nb, n));
    CHECK_ERR(lss_pool_load(&back, tmpdir, 0), LSS_ERR_FORMAT);
    CHECK_ERR(lss_pool_simulate_library(&back, nz, &so, lib, NULL, NULL), LSS_ERR_ARG);   /* 2 cosmologies, 1 entry */
    lss_pool_free(&back);
    /* one cone cannot be split */
    lss_shellset_free(&s);
    CHECK(make_set(&p, &inf, n + 4, 1, &s) == 0, "set of 1 cone built");
    CHECK_OK(lss_shellset_save(&s, stem));
    CHECK_ERR(lss_pool_simulate_library(&pool, nz, &so, lib, NULL, NULL), LSS_ERR_ARG);
    CHECK(strstr(lss_last_error(), "at least 2") != NULL, "message: %s", lss_last_error());
    snprintf(path, sizeof path, "%s.npy", stem); remove(path);
    snprintf(path, sizeof path, "%s.json", stem); remove(path);
    snprintf(path, sizeof path, "%s/pool_fields.npy", tmpdir); remove(path);
    snprintf(path, sizeof path, "%s/pool_cosmo.npy", tmpdir); remove(path);
    rmdir(lib);
    free(g);
    lss_pool_free(&pool);
    lss_shellset_free(&s);
    lss_sim_work_free(w);
    lss_sim_free(sim);
    lss_cosmo_free(c);
    lss_nz_free(nz, nb);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lss_test_shell_lib.%ld", (long)getpid());
    if (mkdtemp(strcat(tmpdir, ".XXXXXX")) == NULL) { printf("cannot make a temporary directory\n"); return 1; }
    RUN(test_json);
    RUN(test_disk);
    RUN(test_sim_shells);
    RUN(test_pool_library);
    rmdir(tmpdir);
    LSS_TEST_END();
}
