/* lss-sim - DeepLSS tomographic lensing + clustering maps from the lss_maps.h forward model (NPY, CSV, PNG). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const about =
    "Simulates DeepLSS maps (Kacprzak & Fluri 2022, section II): lognormal matter shells from the Halofit\n"
    "Limber spectra, Born projection into 4 tomographic bins, intrinsic alignments, galaxy bias and\n"
    "stochasticity, Poisson galaxy counts and shape noise. A map has 8 channels: kappa_g of bins 1-4, then\n"
    "delta_g = N / nbar - 1 of bins 1-4 (without noise: kappa + A_IA kappa_IA and b delta_r). Fields are\n"
    "5 x 5 deg, 64 x 64 pixels of 4.6875 arcmin; with --mosaic a map is a 900 deg^2 survey of 6 x 6 fields\n"
    "(384 x 384) placed at random with random flips.\n"
    "Map i is survey lss_set_index(SET, i) of the observation recipe of lss_maps.h (lss_survey_simulate): fresh\n"
    "fields, noise, appendix E scaling (--scale) and mosaic, a pure function of (seed, SET, i); with --scale it is\n"
    "the map deeplss's pool path (lss_pool_observe) gives for the same fields, parameters and (seed, index).\n"
    "Output in DIR: maps.npy float32 [N, 8, H, W]; params.csv (index and the 9 Table I parameters of each map);\n"
    "example.png (map 0: kappa_g top, delta_g bottom, with colour bars); run.json (options, seed, version, timing).\n"
    "A parameter option fixes that Table I parameter for every map (overriding --prior); it must lie in its prior.\n"
    "OMP_NUM_THREADS sets the number of threads; results do not depend on it. Bad input (unknown option,\n"
    "value outside its range, unreadable or malformed file) gives one line on stderr and exit status 2.";

/* 1 when --name (or --name=...) is on the command line */
static int given(int argc, char **argv, const char *name) {
    size_t n = strlen(name);
    int i;
    for (i = 1; i < argc; i++)
        if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, name, n) && (!argv[i][2 + n] || argv[i][2 + n] == '=')) return 1;
    return 0;
}

/* example.png: 2 rows (kappa_g, delta_g) x nb bins, each map with its colour bar */
static int write_example(const char *path, const float *m, int nb, int h, int w) {
    lss_image im;
    int scale = h <= 96 ? 3 : 1, cw = w * scale, ch = h * scale, padx = 70, pady = 30, r, b, st;
    const unsigned char black[3] = {0, 0, 0};
    st = lss_image_init(&im, nb * (cw + padx) + 10, 2 * (ch + pady) + 10);
    if (st) return st;
    for (r = 0; r < 2; r++)
        for (b = 0; b < nb; b++) {
            const float *mp = m + ((size_t)r * nb + b) * h * w;
            double lo = 1e300, hi = -1e300;
            size_t q;
            char title[64];
            int x0 = 5 + b * (cw + padx), y0 = 5 + r * (ch + pady) + 18;
            for (q = 0; q < (size_t)h * w; q++)
                if (isfinite(mp[q])) { if (mp[q] < lo) lo = mp[q]; if (mp[q] > hi) hi = mp[q]; }
            if (!(hi > lo)) { lo -= 1; hi += 1; }
            snprintf(title, sizeof title, "%s bin %d", r ? "delta_g" : "kappa_g", b + 1);
            lss_image_text(&im, x0, y0 - 14, title, black, 1);
            lss_image_map(&im, x0, y0, mp, h, w, lo, hi, scale);
            lss_image_colorbar(&im, x0 + cw + 4, y0, 10, ch, lo, hi);
        }
    st = lss_image_save_png(&im, path);
    lss_image_free(&im);
    return st;
}

int main(int argc, char **argv) {
    const lss_param_table *t1 = lss_table1();
    const char *out = "out/sim", *bins_name = "deeplss", *bias = "linear", *poisson = "exact", *set_name = "train";
    static const char *const set_names[4] = {"train", "valid", "test", "fiducial"};
    int n = 4, prior = 0, fiducial = 0, noise = 0, nonoise = 0, mosaic = 0, scale = 0, nb, k, st = LSS_OK, set, no_opt = 0;
    uint64_t seed = 1;
    double fixval[LSS_NPARAM_TABLE1], smooth = -1;
    lss_drv_table1_text t1txt;
    lss_params fid, *pars;
    lss_survey_opts vo;
    lss_sim_opts so;
    lss_nz *nz = NULL;
    lss_cosmo *c0 = NULL;
    lss_sim *sim0 = NULL;
    lss_survey *sv = NULL;
    lss_sim_info inf;
    float *maps;
    int64_t shape[4], per_map, done = 0;
    int H, W, ndim;
    char path[4200], extra[1024];
    double t0 = lss_time_now();
    lss_drv_progress prog;
    lss_drv_opt opts[16 + LSS_NPARAM_TABLE1 + 1] = {
        {"out", LSS_DRV_STR, &out, 0, 0, 0, "output directory"},
        {"n", LSS_DRV_INT, &n, 1, 100000000, 0, "number of maps"},
        {"seed", LSS_DRV_U64, &seed, 0, 0, 0, "random seed; map i is a pure function of (seed, SET, i)"},
        {"set", LSS_DRV_STR, &set_name, 0, 0, 0, "data set of the maps' indices: train, valid, test or fiducial"},
        {"fiducial", LSS_DRV_FLAG, &fiducial, 0, 0, 0, "Table I fiducial parameters for every map (the default)"},
        {"prior", LSS_DRV_FLAG, &prior, 0, 0, 0, "each map's parameters from the Table I priors (Sobol sequence, shifted by the seed)"},
        {"noise", LSS_DRV_FLAG, &noise, 0, 0, 0, "galaxy and shape noise (the default)"},
        {"no-noise", LSS_DRV_FLAG, &nonoise, 0, 0, 0, "no galaxy or shape noise"},
        {"smoothing", LSS_DRV_DOUBLE, &smooth, 0, 50, 0, "Gaussian smoothing in Mpc/h: clustering at R, lensing at min(R, 4); 0: off; "
                                                         "unset: 8 with linear bias, 4 with non-linear"},
        {"bias", LSS_DRV_STR, &bias, 0, 0, 0, "linear (eq. 10), nonlinear (eq. 13), nonlinear-code (b delta + b2 sign(delta) delta^2 / 2)"},
        {"poisson", LSS_DRV_STR, &poisson, 0, 0, 0, "exact, anscombe (Gaussian-unbiased inverse) or anscombe-paper (appendix F)"},
        {"mosaic", LSS_DRV_FLAG, &mosaic, 0, 0, 0, "6 x 6 fields per map (survey of 900 deg^2)"},
        {"scale", LSS_DRV_FLAG, &scale, 0, 0, 0, "apply the appendix E scaling before networks (as deeplss)"},
        {"bins", LSS_DRV_STR, &bins_name, 0, 0, 0, "n(z): deeplss or a text FILE with columns z n_1 .. n_4"}};
    const lss_drv_cmd cmd = {"lss-sim", "lss-sim [options]", about, "lss-sim --out out/train --n 1000 --prior --mosaic --scale"};
    lss_drv_prog = "lss-sim";
    lss_drv_table1_opts(opts + 14, fixval, &t1txt);   /* --omega-m ... --eta-bg2 from Table I */
    lss_drv_parse(&cmd, opts, argc, argv);
    if (prior && fiducial) lss_drv_die(2, "--prior and --fiducial exclude each other");
    if (noise && nonoise) lss_drv_die(2, "--noise and --no-noise exclude each other");
    for (set = 0; set < 4 && strcmp(set_name, set_names[set]); set++) {}
    if (set == 4) lss_drv_die(2, "option --set: '%s' is not train, valid, test or fiducial", set_name);
    memset(&vo, 0, sizeof vo);
    memset(&so, 0, sizeof so);
    if (!strcmp(bias, "linear")) vo.noise.bias = LSS_BIAS_LINEAR;
    else if (!strcmp(bias, "nonlinear")) vo.noise.bias = LSS_BIAS_NONLINEAR;
    else if (!strcmp(bias, "nonlinear-code")) vo.noise.bias = LSS_BIAS_NONLINEAR_CODE;
    else lss_drv_die(2, "option --bias: '%s' is not linear, nonlinear or nonlinear-code", bias);
    if (!strcmp(poisson, "exact")) vo.noise.poisson = LSS_POISSON_EXACT;
    else if (!strcmp(poisson, "anscombe")) vo.noise.poisson = LSS_POISSON_ANSCOMBE;
    else if (!strcmp(poisson, "anscombe-paper")) vo.noise.poisson = LSS_POISSON_ANSCOMBE_PAPER;
    else lss_drv_die(2, "option --poisson: '%s' is not exact, anscombe or anscombe-paper", poisson);
    vo.noise.no_noise = nonoise;
    vo.no_scale = !scale;
    vo.grid = mosaic ? 6 : 1;
    if (smooth < 0) smooth = vo.noise.bias == LSS_BIAS_LINEAR ? 8 : 4;
    if (smooth == 0) { so.r_wl = -1; so.r_gc = -1; }
    else { so.r_gc = smooth; so.r_wl = smooth < 4 ? smooth : 4; }
    lss_params_fiducial(&fid);
    for (k = 0; k < LSS_NPARAM_TABLE1; k++) no_opt |= given(argc, argv, t1txt.name[k]) << k;   /* fixed parameters */
    lss_drv_check(lss_params_from_vec(fixval, LSS_NPARAM_TABLE1, &fid), "parameters");
    lss_drv_check(lss_params_check(&fid), "parameters");
    if (!strcmp(bins_name, "deeplss")) lss_drv_check(lss_nz_builtin("deeplss", &nz, &nb), "--bins");
    else lss_drv_check(lss_nz_load(bins_name, &nz, &nb), "--bins");
    if (nb != 4) lss_drv_die(2, "--bins: %d redshift bins (the DeepLSS maps need 4)", nb);
    /* parameters of every map */
    ndim = vo.noise.bias == LSS_BIAS_LINEAR ? LSS_NPARAM_LINEAR : LSS_NPARAM_TABLE1;
    if (!(pars = (lss_params *)malloc(sizeof(lss_params) * (size_t)n))) lss_drv_die(1, "out of memory");
    for (k = 0; k < n; k++) {
        pars[k] = fid;
        if (prior) {
            double u[LSS_NPARAM_TABLE1], v[LSS_NPARAM_TABLE1];
            int d;
            lss_drv_check(lss_sobol((uint64_t)k + 1, ndim, seed, u), "Sobol");
            lss_drv_check(lss_params_from_unit(u, ndim, &pars[k]), "prior");
            lss_params_to_vec(&pars[k], LSS_NPARAM_TABLE1, v);
            for (d = 0; d < LSS_NPARAM_TABLE1; d++) if ((no_opt >> d) & 1) v[d] = fixval[d];
            lss_drv_check(lss_params_from_vec(v, LSS_NPARAM_TABLE1, &pars[k]), "prior parameters");
            lss_drv_check(lss_params_check(&pars[k]), "prior parameters");
        }
    }
    lss_drv_mkdirs(out);
    lss_drv_check(lss_cosmo_create(&fid, &c0), "cosmology");
    lss_drv_check(lss_sim_create(c0, nz, nb, &so, &sim0), "simulator");
    lss_drv_check(lss_survey_create(sim0, &vo, &sv), "survey");
    lss_sim_get_info(sim0, &inf);
    H = W = lss_survey_side(sv);
    per_map = lss_survey_map_size(sv);
    maps = (float *)malloc(sizeof(float) * (size_t)per_map * (size_t)n);
    if (!maps) lss_drv_die(1, "out of memory for %d maps (%.1f GB)", n, 4.0 * (double)per_map * n / 1e9);
    fprintf(stderr, "lss-sim: %d %s of %d x %d, %s parameters, %s, %d shells drawn, %d thread(s)\n", n, mosaic ? "mosaics" : "fields",
            H, W, prior ? "prior" : "fiducial", nonoise ? "noise-free" : "with noise", inf.nshell_drawn,
#ifdef _OPENMP
            omp_get_max_threads()
#else
            1
#endif
    );
    lss_drv_progress_init(&prog, "lss-sim", n);
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        lss_sim *sim = sim0, *own = NULL;
        lss_survey_work *w = NULL;
        int r = LSS_OK, i;
        if (prior) r = lss_sim_create(c0, nz, nb, &so, &own), sim = own;   /* one cosmology per map: a simulator per thread */
        if (r == LSS_OK) r = lss_survey_work_create(sv, &w);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (i = 0; i < n; i++) {
            if (r != LSS_OK) continue;
            if (prior) {
                lss_cosmo *ci = NULL;
                r = lss_cosmo_create(&pars[i], &ci);
                if (r == LSS_OK) r = lss_sim_set_cosmo(sim, ci);
                lss_cosmo_free(ci);
            }
            if (r == LSS_OK)
                r = lss_survey_simulate(sv, sim, w, &pars[i], seed, lss_set_index((lss_set)set, (uint64_t)i), maps + (size_t)i * per_map, NULL);
            if (r != LSS_OK) {
#ifdef _OPENMP
#pragma omp critical(lss_sim_driver)
#endif
                { if (st == LSS_OK) { st = r; fprintf(stderr, "lss-sim: error: map %d: %s\n", i, lss_last_error()); } }
            }
#ifdef _OPENMP
#pragma omp atomic
#endif
            done++;
#ifdef _OPENMP
            if (omp_get_thread_num() == 0)
#endif
            {
                int64_t dn;
#ifdef _OPENMP
#pragma omp atomic read
#endif
                dn = done;
                lss_drv_progress_update(&prog, dn);
            }
        }
        if (r != LSS_OK && st == LSS_OK) {
#ifdef _OPENMP
#pragma omp critical(lss_sim_driver)
#endif
            { if (st == LSS_OK) { st = r; fprintf(stderr, "lss-sim: error: %s\n", lss_last_error()); } }
        }
        lss_survey_work_free(w);
        lss_sim_free(own);
    }
    if (st != LSS_OK) exit(st == LSS_ERR_NOMEM || st == LSS_ERR_NUMERIC ? 1 : 2);
    lss_drv_progress_end(&prog);
    shape[0] = n; shape[1] = 2 * nb; shape[2] = H; shape[3] = W;
    snprintf(path, sizeof path, "%s/maps.npy", out);
    lss_drv_check(lss_npy_save(path, LSS_F32, 4, shape, maps), "maps.npy");
    {
        double *rows = (double *)malloc(sizeof(double) * (1 + LSS_NPARAM_TABLE1) * (size_t)n);
        const char *hdr[1 + LSS_NPARAM_TABLE1];
        if (!rows) lss_drv_die(1, "out of memory");
        hdr[0] = "index";
        for (k = 0; k < LSS_NPARAM_TABLE1; k++) hdr[k + 1] = t1->key[k];
        for (k = 0; k < n; k++) {
            rows[(size_t)k * (1 + LSS_NPARAM_TABLE1)] = k;
            lss_params_to_vec(&pars[k], LSS_NPARAM_TABLE1, rows + (size_t)k * (1 + LSS_NPARAM_TABLE1) + 1);
        }
        snprintf(path, sizeof path, "%s/params.csv", out);
        lss_drv_check(lss_csv_write(path, 1 + LSS_NPARAM_TABLE1, hdr, n, rows), "params.csv");
        free(rows);
    }
    snprintf(path, sizeof path, "%s/example.png", out);
    lss_drv_check(write_example(path, maps, nb, H, W), "example.png");
    snprintf(extra, sizeof extra,
             "\"n\": %d, \"set\": \"%s\", \"mode\": \"%s\", \"mosaic\": %d, \"noise\": %d, \"smoothing_mpc_h\": %g, \"bias\": %d, "
             "\"poisson\": %d, \"scaled\": %d, \"bins\": \"%s\", \"shape\": [%d, %d, %d, %d], \"shells_drawn\": %d, "
             "\"clipped_gaussian_power\": %.3g, \"seconds\": %.3f",
             n, set_name, prior ? "prior" : "fiducial", mosaic, !nonoise, smooth, vo.noise.bias, vo.noise.poisson, scale, bins_name, n,
             2 * nb, H, W, inf.nshell_drawn, inf.clip_max, lss_time_now() - t0);
    lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
    fprintf(stderr, "lss-sim: wrote %s/maps.npy, params.csv, example.png, run.json\n", out);
    free(maps);
    free(pars);
    lss_survey_free(sv);
    lss_sim_free(sim0);
    lss_cosmo_free(c0);
    lss_nz_free(nz, nb);
    return 0;
}
