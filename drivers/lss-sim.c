/* lss-sim - DeepLSS tomographic lensing + clustering maps from the lss_maps.h forward model (NPY, CSV, PNG). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"
#include <getopt.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: lss-sim [options]\n"
            "\n"
            "Simulates DeepLSS maps (Kacprzak & Fluri 2022, section II): lognormal matter shells from the Halofit\n"
            "Limber spectra, Born projection into 4 tomographic bins, intrinsic alignments, galaxy bias and\n"
            "stochasticity, Poisson galaxy counts and shape noise. A map has 8 channels: kappa_g of bins 1-4, then\n"
            "delta_g = N / nbar - 1 of bins 1-4 (without noise: kappa + A_IA kappa_IA and b delta_r). Fields are\n"
            "5 x 5 deg, 64 x 64 pixels of 4.6875 arcmin; with --mosaic a map is a 900 deg^2 survey of 6 x 6 fields\n"
            "(384 x 384) placed at random with random flips.\n"
            "\n"
            "output (in DIR)\n"
            "  maps.npy     float32 [N, 8, H, W]\n"
            "  params.csv   one row per map: index and the 9 Table I parameters\n"
            "  example.png  map 0: kappa_g (top) and delta_g (bottom) of the 4 bins, with colour bars\n"
            "  run.json     options, seed, version, timing\n"
            "\n"
            "options\n"
            "  --out DIR          output directory (default out/sim)\n"
            "  --n N              number of maps (default 4)\n"
            "  --seed S           random seed (default 1); map i is a pure function of (seed, i)\n"
            "  --fiducial         Table I fiducial parameters for every map (default)\n"
            "  --prior            each map's parameters from the Table I priors (Sobol sequence, shifted by the seed)\n"
            "  --omega-m X --sigma-8 X --a-ia X --eta-ia X --b-g X --eta-bg X --r-g X --b-g2 X --eta-bg2 X\n"
            "                     fix one parameter (overrides --prior for it); values must lie in the Table I priors\n"
            "  --noise | --no-noise   with (default) or without galaxy and shape noise\n"
            "  --smoothing R      Gaussian smoothing scale in Mpc/h (section II B): clustering at R, lensing at\n"
            "                     min(R, 4); 0 turns smoothing off (default 8 with linear bias, 4 with non-linear)\n"
            "  --bias B           linear (eq. 10, default), nonlinear (eq. 13: b delta + b2 delta^2), or\n"
            "                     nonlinear-code (b delta + b2 sign(delta) delta^2 / 2, the released code)\n"
            "  --poisson P        exact (default), anscombe (Gaussian-unbiased inverse), anscombe-paper (appendix F)\n"
            "  --mosaic           6 x 6 fields per map (survey of 900 deg^2)\n"
            "  --scale            apply the appendix E scaling before networks (kappa_g x 18.45)\n"
            "  --bins NAME        n(z): deeplss (default) or a text FILE with columns z n_1 .. n_4\n"
            "  --help             this text\n"
            "\n"
            "examples\n"
            "  lss-sim --out out/sim --n 8 --seed 3\n"
            "  lss-sim --out out/train --n 1000 --prior --mosaic\n"
            "  lss-sim --out out/clean --n 200 --no-noise --smoothing 0 --sigma-8 0.8\n"
            "\n"
            "OMP_NUM_THREADS sets the number of threads; results do not depend on it. Bad input (unknown option,\n"
            "value outside its range, unreadable or malformed file) gives one line on stderr and exit status 2.\n");
}

enum { O_OUT = 1000, O_N, O_SEED, O_FID, O_PRIOR, O_OM, O_S8, O_AIA, O_EIA, O_BG, O_EBG, O_RG, O_BG2, O_EBG2, O_NOISE,
       O_NONOISE, O_SMOOTH, O_BIAS, O_POIS, O_MOSAIC, O_SCALE, O_BINS, O_HELP };

static const char *par_names[9] = {"omega_m", "sigma_8", "a_ia", "eta_ia", "b_g", "eta_bg", "r_g", "b_g2", "eta_bg2"};

static double *par_slot(lss_params *p, int k) {
    double *s[9];
    s[0] = &p->omega_m; s[1] = &p->sigma_8; s[2] = &p->a_ia; s[3] = &p->eta_ia; s[4] = &p->b_g; s[5] = &p->eta_bg;
    s[6] = &p->r_g; s[7] = &p->b_g2; s[8] = &p->eta_bg2;
    return s[k];
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
    static const struct option opts[] = {
        {"out", 1, 0, O_OUT}, {"n", 1, 0, O_N}, {"seed", 1, 0, O_SEED}, {"fiducial", 0, 0, O_FID}, {"prior", 0, 0, O_PRIOR},
        {"omega-m", 1, 0, O_OM}, {"sigma-8", 1, 0, O_S8}, {"a-ia", 1, 0, O_AIA}, {"eta-ia", 1, 0, O_EIA}, {"b-g", 1, 0, O_BG},
        {"eta-bg", 1, 0, O_EBG}, {"r-g", 1, 0, O_RG}, {"b-g2", 1, 0, O_BG2}, {"eta-bg2", 1, 0, O_EBG2},
        {"noise", 0, 0, O_NOISE}, {"no-noise", 0, 0, O_NONOISE}, {"smoothing", 1, 0, O_SMOOTH}, {"bias", 1, 0, O_BIAS},
        {"poisson", 1, 0, O_POIS}, {"mosaic", 0, 0, O_MOSAIC}, {"scale", 0, 0, O_SCALE}, {"bins", 1, 0, O_BINS},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    const char *out = "out/sim", *bins_name = "deeplss";
    long long n = 4;
    uint64_t seed = 1;
    int prior = 0, noise = 1, mosaic = 0, scale = 0, c, nb, k, fixed[9] = {0}, ndim, st = LSS_OK, grid = 6;
    double fixval[9], smooth = -1, kscale;
    lss_params fid, *pars;
    lss_noise_opts no;
    lss_sim_opts so;
    lss_nz *nz = NULL;
    lss_cosmo *c0 = NULL;
    lss_sim *sim0 = NULL;
    lss_sim_info inf;
    float *maps;
    int64_t shape[4];
    size_t per_map, fsz, osz;
    int H, W;
    char path[4200], extra[1024];
    double t0 = lss_time_now();
    int64_t done = 0;
    lss_drv_progress prog;

    lss_drv_prog = "lss-sim";
    memset(&no, 0, sizeof no);
    memset(&so, 0, sizeof so);
    lss_params_fiducial(&fid);
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_OUT: out = optarg; break;
        case O_N: n = lss_drv_int("--n", optarg, 1, 100000000); break;
        case O_SEED: seed = (uint64_t)lss_drv_int("--seed", optarg, 0, (long long)1 << 62); break;
        case O_FID: prior = 0; break;
        case O_PRIOR: prior = 1; break;
        case O_OM: case O_S8: case O_AIA: case O_EIA: case O_BG: case O_EBG: case O_RG: case O_BG2: case O_EBG2:
            k = c - O_OM;
            fixed[k] = 1;
            fixval[k] = lss_drv_double(opts[5 + k].name, optarg);
            break;
        case O_NOISE: noise = 1; break;
        case O_NONOISE: noise = 0; break;
        case O_SMOOTH:
            smooth = lss_drv_double("--smoothing", optarg);
            if (!(smooth >= 0 && smooth <= 50)) lss_drv_die(2, "option --smoothing: %g is outside [0, 50] Mpc/h", smooth);
            break;
        case O_BIAS:
            if (!strcmp(optarg, "linear")) no.bias = LSS_BIAS_LINEAR;
            else if (!strcmp(optarg, "nonlinear")) no.bias = LSS_BIAS_NONLINEAR;
            else if (!strcmp(optarg, "nonlinear-code")) no.bias = LSS_BIAS_NONLINEAR_CODE;
            else lss_drv_die(2, "option --bias: '%s' is not linear, nonlinear or nonlinear-code", optarg);
            break;
        case O_POIS:
            if (!strcmp(optarg, "exact")) no.poisson = LSS_POISSON_EXACT;
            else if (!strcmp(optarg, "anscombe")) no.poisson = LSS_POISSON_ANSCOMBE;
            else if (!strcmp(optarg, "anscombe-paper")) no.poisson = LSS_POISSON_ANSCOMBE_PAPER;
            else lss_drv_die(2, "option --poisson: '%s' is not exact, anscombe or anscombe-paper", optarg);
            break;
        case O_MOSAIC: mosaic = 1; break;
        case O_SCALE: scale = 1; break;
        case O_BINS: bins_name = optarg; break;
        case O_HELP: usage(stdout); return 0;
        default: lss_drv_die(2, "unknown option (see --help)");
        }
    }
    if (optind < argc) lss_drv_die(2, "unexpected argument '%s' (see --help)", argv[optind]);
    no.no_noise = !noise;
    if (smooth < 0) smooth = no.bias == LSS_BIAS_LINEAR ? 8 : 4;
    if (smooth == 0) { so.r_wl = -1; so.r_gc = -1; }
    else { so.r_gc = smooth; so.r_wl = smooth < 4 ? smooth : 4; }
    for (k = 0; k < 9; k++) if (fixed[k]) *par_slot(&fid, k) = fixval[k];
    lss_drv_check(lss_params_check(&fid), "parameters");
    if (!strcmp(bins_name, "deeplss")) lss_drv_check(lss_nz_builtin("deeplss", &nz, &nb), "--bins");
    else lss_drv_check(lss_nz_load(bins_name, &nz, &nb), "--bins");
    if (nb != 4) lss_drv_die(2, "--bins: %d redshift bins (the DeepLSS maps need 4)", nb);
    /* parameters of every map */
    ndim = no.bias == LSS_BIAS_LINEAR ? 7 : 9;
    pars = (lss_params *)malloc(sizeof(lss_params) * (size_t)n);
    if (!pars) lss_drv_die(1, "out of memory");
    for (k = 0; k < n; k++) {
        pars[k] = fid;
        if (prior) {
            double u[9];
            int d;
            lss_drv_check(lss_sobol((uint64_t)k + 1, ndim, seed, u), "Sobol");
            lss_drv_check(lss_params_from_unit(u, ndim, &pars[k]), "prior");
            for (d = 0; d < 9; d++) if (fixed[d]) *par_slot(&pars[k], d) = fixval[d];
            lss_drv_check(lss_params_check(&pars[k]), "prior parameters");
        }
    }
    lss_drv_mkdirs(out);
    lss_drv_check(lss_cosmo_create(&fid, &c0), "cosmology");
    lss_drv_check(lss_sim_create(c0, nz, nb, &so, &sim0), "simulator");
    lss_sim_get_info(sim0, &inf);
    fsz = lss_sim_field_size(sim0);
    osz = lss_sim_obs_size(sim0);
    H = W = inf.nside * (mosaic ? grid : 1);
    per_map = (size_t)2 * nb * H * W;
    maps = (float *)malloc(sizeof(float) * per_map * (size_t)n);
    if (!maps) lss_drv_die(1, "out of memory for %lld maps (%.1f GB)", n, 4.0 * per_map * n / 1e9);
    kscale = lss_kappa_net_scale(no.sigma_e ? no.sigma_e : LSS_DEEPLSS_SIGMA_E,
                                 no.ngal_arcmin2 ? no.ngal_arcmin2 : LSS_DEEPLSS_NGAL_ARCMIN2, inf.pixel_arcmin);
    fprintf(stderr, "lss-sim: %lld %s of %d x %d, %s parameters, %s, %d shells drawn, %d thread(s)\n", n,
            mosaic ? "mosaics" : "fields", H, W, prior ? "prior" : "fiducial", noise ? "with noise" : "noise-free",
            inf.nshell_drawn,
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
        lss_sim_work *w = NULL;
        int nf = mosaic ? grid * grid : 1, f, r = LSS_OK;
        float *fld = (float *)malloc(sizeof(float) * fsz), *obs = (float *)malloc(sizeof(float) * osz * (size_t)nf);
        const float *fp[64];
        long long i;
        if (prior) r = lss_sim_create(c0, nz, nb, &so, &own), sim = own;
        if (r == LSS_OK) r = lss_sim_work_create(sim, &w);
        if (r == LSS_OK && (!fld || !obs)) r = lss_seterr(LSS_ERR_NOMEM, "out of memory");
        if (r != LSS_OK) {
#ifdef _OPENMP
#pragma omp critical(lss_sim_driver)
#endif
            { if (st == LSS_OK) { st = r; fprintf(stderr, "lss-sim: error: %s\n", lss_last_error()); } }
        }
        for (f = 0; f < nf; f++) fp[f] = obs + (size_t)f * osz;
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
            for (f = 0; f < nf && r == LSS_OK; f++) {
                uint64_t idx = (uint64_t)i * (uint64_t)nf + (uint64_t)f;
                r = lss_sim_field(sim, w, seed, idx, fld);
                if (r == LSS_OK) r = lss_sim_observe(sim, w, fld, &pars[i], &no, seed, idx, obs + (size_t)f * osz);
            }
            if (r == LSS_OK) {
                float *dst = maps + (size_t)i * per_map;
                if (mosaic) r = lss_mosaic(fp, grid, 2 * nb, inf.nside, seed, (uint64_t)i, dst);
                else memcpy(dst, obs, sizeof(float) * osz);
                if (r == LSS_OK && scale) lss_scale_for_network(dst, nb, (int64_t)H * W, kscale);
            }
            if (r != LSS_OK) {
#ifdef _OPENMP
#pragma omp critical(lss_sim_driver)
#endif
                { if (st == LSS_OK) { st = r; fprintf(stderr, "lss-sim: error: map %lld: %s\n", i, lss_last_error()); } }
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
        lss_sim_work_free(w);
        lss_sim_free(own);
        free(fld);
        free(obs);
    }
    if (st != LSS_OK) exit(st == LSS_ERR_NOMEM || st == LSS_ERR_NUMERIC ? 1 : 2);
    lss_drv_progress_end(&prog);
    shape[0] = n; shape[1] = 2 * nb; shape[2] = H; shape[3] = W;
    snprintf(path, sizeof path, "%s/maps.npy", out);
    lss_drv_check(lss_npy_save(path, LSS_F32, 4, shape, maps), "maps.npy");
    {
        double *rows = (double *)malloc(sizeof(double) * 10 * (size_t)n);
        const char *hdr[10];
        if (!rows) lss_drv_die(1, "out of memory");
        hdr[0] = "index";
        for (k = 0; k < 9; k++) hdr[k + 1] = par_names[k];
        for (k = 0; k < n; k++) {
            int d;
            rows[(size_t)k * 10] = k;
            for (d = 0; d < 9; d++) rows[(size_t)k * 10 + 1 + d] = *par_slot(&pars[k], d);
        }
        snprintf(path, sizeof path, "%s/params.csv", out);
        lss_drv_check(lss_csv_write(path, 10, hdr, n, rows), "params.csv");
        free(rows);
    }
    snprintf(path, sizeof path, "%s/example.png", out);
    lss_drv_check(write_example(path, maps, nb, H, W), "example.png");
    snprintf(extra, sizeof extra,
             "\"n\": %lld, \"mode\": \"%s\", \"mosaic\": %d, \"noise\": %d, \"smoothing_mpc_h\": %g, \"bias\": %d, "
             "\"poisson\": %d, \"scaled\": %d, \"bins\": \"%s\", \"shape\": [%lld, %d, %d, %d], \"shells_drawn\": %d, "
             "\"clipped_gaussian_power\": %.3g, \"seconds\": %.3f",
             n, prior ? "prior" : "fiducial", mosaic, noise, smooth, no.bias, no.poisson, scale, bins_name, n, 2 * nb, H, W,
             inf.nshell_drawn, inf.clip_max, lss_time_now() - t0);
    lss_drv_check(lss_drv_runjson(out, argc, argv, seed, extra), "run.json");
    fprintf(stderr, "lss-sim: wrote %s/maps.npy, params.csv, example.png, run.json\n", out);
    free(maps);
    free(pars);
    lss_sim_free(sim0);
    lss_cosmo_free(c0);
    lss_nz_free(nz, nb);
    return 0;
}
