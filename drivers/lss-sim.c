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
    "--model nbody draws the matter shells from an N-body shell library (lss-sim nbody) instead of lognormal fields:\n"
    "map i uses library entry i mod N (its Omega_m, sigma_8, Omega_b, h, n_s; the other parameters as below) and\n"
    "field views of its light cones (8 flips/transposes per cone; see lss_sim_use_shells).\n"
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

/* ---------------------------------------------------------------- lss-sim nbody: shell libraries */
static const char *const about_nbody =
    "Runs particle-mesh N-body light cones (2LPT initial conditions, FastPM kick-drift-kick steps, particles painted\n"
    "into redshift shells as they cross the light cone; lss_maps.h N-BODY section) for a set of cosmologies and\n"
    "stores their matter shells as a library: DIR/shells_NNNN.npy (float32 [ncone, nshell, side, side], density\n"
    "contrasts) and DIR/shells_NNNN.json (cosmology, seed, geometry, z edges, N-body options, wall time), plus\n"
    "DIR/cosmologies.csv and DIR/run.json. Cosmologies: --cosmologies N: the fiducial, then scrambled Sobol points of\n"
    "(Omega_m, sigma_8) in the Table I prior (deeplss's pool grid for the same seed; other parameters fiducial),\n"
    "or --list FILE (CSV with columns omega_m, sigma_8 and optionally omega_b, h, n_s), or --fiducial. Cosmology i\n"
    "uses initial modes (seed, i); --same-seed gives every cosmology the modes of index 0 (common random numbers).\n"
    "A library is resumable: finished entries are kept and an interrupted run resumes its cosmology from\n"
    "DIR/shells_NNNN.ckpt (saved every 30 s, and after the current step on Ctrl-C or SIGTERM, which then stop the\n"
    "run) with the identical result. Maps are then drawn with\n"
    "`lss-sim --model nbody --library DIR` (or `deeplss --model nbody --library DIR`), with IA, bias, stochasticity and noise applied on the fly.\n"
    "Defaults make the DeepLSS light cone (7.5 x 7.5 deg: a 5 x 5 deg field and its smoothing margin, 4.6875 arcmin\n"
    "pixels, the dz = 0.05 shells up to the deepest redshift the n(z) bins need). Under mpirun (bin/mpi/lss-sim) the\n"
    "ranks share out the cosmologies, or with --split box every box runs over all the ranks (slabs of the force mesh and\n"
    "their particles: a box too big for one machine), each entry bitwise the serial one.";

typedef struct { int step, steps; double t0; int k, n; } nb_prog;
static volatile sig_atomic_t nb_signal = 0; /* SIGINT or SIGTERM received: checkpoint after this step and stop */
static void nb_on_signal(int sig) { nb_signal = sig; }
static void nb_progress(int step, int steps, double a, double sec, void *user) {
    nb_prog *p = (nb_prog *)user;
    (void)sec;
    if (nb_signal) lss_nbody_cancel();   /* the run saves its state after this step and returns */
    fprintf(stderr, "lss-sim nbody: cosmology %d/%d: step %d/%d, z = %.3f, %.1f s\n", p->k + 1, p->n, step, steps, 1 / a - 1,
            lss_time_now() - p->t0);
}

static int nbody_main(int argc, char **argv) {
    const char *out = "out/shells", *list = NULL, *bins_name = "deeplss", *spacing = "linear", *split = "cosmologies";
    int ncos = 0, fid = 0, same = 0, side = 0, ncone = 4, nshell, i, k, st, nb, ne, have, boxsplit, lean = 0;
    int64_t blo = 0, bhi = 0;
    uint64_t seed = 1;
    double zmax = 0, pixel = LSS_DEEPLSS_PIXEL_ARCMIN, t0 = lss_time_now(), *edges, need = 0;
    lss_nbody_opts no;
    lss_lightcone_opts lc;
    lss_params *cp = NULL, fidp;
    lss_nz *nz = NULL;
    char stem[4200], path[4300], extra[1024];
    memset(&no, 0, sizeof no);
    no.box = 0; no.np = 256; no.steps = 20; no.z_init = 9; no.lpt_order = 2;
    {
        lss_drv_opt opts[] = {
            {"out", LSS_DRV_STR, &out, 0, 0, 0, "library directory"},
            {"cosmologies", LSS_DRV_INT, &ncos, 1, 100000, 0, "number of cosmologies: the fiducial, then Sobol points of (Omega_m, sigma_8)"},
            {"list", LSS_DRV_STR, &list, 0, 0, 0, "CSV of cosmologies (columns omega_m, sigma_8 [, omega_b, h, n_s])"},
            {"fiducial", LSS_DRV_FLAG, &fid, 0, 0, 0, "one cosmology: the Table I fiducial"},
            {"seed", LSS_DRV_U64, &seed, 0, 9007199254740991.0, 0, "random seed of the initial modes and replica rotations"},
            {"same-seed", LSS_DRV_FLAG, &same, 0, 0, 0, "the same initial modes (index 0) for every cosmology"},
            {"box", LSS_DRV_DOUBLE, &no.box, 0, 1e5, 0, "box side in Mpc/h (0: the smallest multiple of 50 that holds the cone, >= 500)"},
            {"np", LSS_DRV_INT, &no.np, 8, 4096, 0, "particles per side (np^3 particles; even)"},
            {"mesh", LSS_DRV_INT, &no.mesh, 0, 8192, 0, "force mesh per side (0: 2 np)"},
            {"steps", LSS_DRV_INT, &no.steps, 1, 10000, 0, "kick-drift-kick steps from z-init to z = 0"},
            {"z-init", LSS_DRV_DOUBLE, &no.z_init, 1, 200, 0, "starting redshift"},
            {"spacing", LSS_DRV_STR, &spacing, 0, 0, 0, "steps linear or log in the scale factor"},
            {"lpt", LSS_DRV_INT, &no.lpt_order, 1, 2, 0, "order of the initial displacements (1: Zel'dovich, 2: 2LPT)"},
            {"fixed-amp", LSS_DRV_FLAG, &no.fixed_amp, 0, 0, 0, "initial mode amplitudes fixed to sqrt(P) (random phases only)"},
            {"ncone", LSS_DRV_INT, &ncone, 1, 64, 0, "light cones painted per run (8 field views each)"},
            {"side", LSS_DRV_INT, &side, 0, 4096, 0, "shell map pixels per side (0: 64 plus the smoothing margin deeplss needs, >= 96)"},
            {"pixel", LSS_DRV_DOUBLE, &pixel, 0.01, 600, 0, "pixel size in arcmin"},
            {"zmax", LSS_DRV_DOUBLE, &zmax, 0, 10, 0, "deepest shell edge (0: the deepest shell the n(z) bins reach)"},
            {"bins", LSS_DRV_STR, &bins_name, 0, 0, 0, "n(z): deeplss or a text FILE (sets the default zmax)"},
            {"split", LSS_DRV_STR, &split, 0, 0, 0, "under mpirun: cosmologies (each rank runs whole boxes) or box (each box over all ranks, in slabs)"},
            {"lean", LSS_DRV_FLAG, &lean, 0, 0, 0, "with --split box: in-place mesh transposes (one mesh slab less per rank, slower)"},
            {NULL, LSS_DRV_FLAG, NULL, 0, 0, 0, NULL}};
        const lss_drv_cmd cmd = {"lss-sim nbody", "lss-sim nbody [options]", about_nbody,
                                 "lss-sim nbody --cosmologies 8 --out out/shells --np 128 --steps 12"};
        lss_drv_parse(&cmd, opts, argc, argv);
    }
    if ((ncos > 0) + (list != NULL) + fid != 1) lss_drv_die(2, "give exactly one of --cosmologies N, --list FILE, --fiducial");
    if (!strcmp(spacing, "linear")) no.spacing = LSS_NB_STEP_LINEAR_A;
    else if (!strcmp(spacing, "log")) no.spacing = LSS_NB_STEP_LOG_A;
    else lss_drv_die(2, "option --spacing: '%s' is not linear or log", spacing);
    if (strcmp(split, "cosmologies") && strcmp(split, "box")) lss_drv_die(2, "option --split: '%s' is not cosmologies or box", split);
    boxsplit = !strcmp(split, "box") && lss_mpi_size() > 1;
    if (no.np % 2) lss_drv_die(2, "option --np: %d is odd (need an even number)", no.np);
    if (no.mesh && no.mesh < no.np) lss_drv_die(2, "option --mesh: %d is smaller than --np %d", no.mesh, no.np);
    lss_params_fiducial(&fidp);
    /* cosmologies */
    if (fid) ncos = 1;
    if (list) {
        lss_csv t;
        int cm, cs, cb, ch, cn;
        lss_drv_check(lss_csv_read(list, &t), list);
        cm = lss_csv_col(&t, "omega_m"); cs = lss_csv_col(&t, "sigma_8");
        cb = lss_csv_col(&t, "omega_b"); ch = lss_csv_col(&t, "h"); cn = lss_csv_col(&t, "n_s");
        if (cm < 0 || cs < 0) lss_drv_die(2, "%s: need columns omega_m and sigma_8", list);
        if (t.nrows < 1 || t.nrows > 100000) lss_drv_die(2, "%s: %lld cosmologies (need 1..100000)", list, (long long)t.nrows);
        ncos = (int)t.nrows;
        if (!(cp = (lss_params *)malloc(sizeof *cp * (size_t)ncos))) lss_drv_die(1, "out of memory");
        for (i = 0; i < ncos; i++) {
            const double *r = t.data + (size_t)i * t.ncols;
            cp[i] = fidp;
            cp[i].omega_m = r[cm]; cp[i].sigma_8 = r[cs];
            if (cb >= 0) cp[i].omega_b = r[cb];
            if (ch >= 0) cp[i].h = r[ch];
            if (cn >= 0) cp[i].n_s = r[cn];
            if (lss_params_check(&cp[i]) != LSS_OK) lss_drv_die(2, "%s: row %d: %s", list, i + 1, lss_last_error());
        }
        lss_csv_free(&t);
    } else {
        /* the fiducial first, then scrambled Sobol points: deeplss's pool grid for the same seed (lss_pool_grid) */
        double *g = (double *)malloc(sizeof(double) * 2 * (size_t)ncos);
        if (!(cp = (lss_params *)malloc(sizeof *cp * (size_t)ncos)) || !g) lss_drv_die(1, "out of memory");
        lss_drv_check(lss_pool_grid(seed, ncos, g), "cosmologies");
        for (i = 0; i < ncos; i++) {
            cp[i] = fidp;
            cp[i].omega_m = g[2 * i];
            cp[i].sigma_8 = g[2 * i + 1];
        }
        free(g);
    }
    /* shells and geometry from the n(z) and the default simulator */
    if (!strcmp(bins_name, "deeplss")) lss_drv_check(lss_nz_builtin("deeplss", &nz, &nb), "--bins");
    else lss_drv_check(lss_nz_load(bins_name, &nz, &nb), "--bins");
    {
        lss_cosmo *c;
        lss_sim *sim;
        lss_sim_info inf;
        lss_drv_check(lss_cosmo_create(&fidp, &c), "cosmology");
        lss_drv_check(lss_sim_create(c, nz, nb, NULL, &sim), "simulator");
        lss_sim_get_info(sim, &inf);
        if (zmax <= 0)
            for (k = 0; k < inf.nshell; k++) {
                double w = 0;
                for (i = 0; i < inf.nbins; i++) w += fabs(inf.w_wl[i * inf.nshell + k]) + fabs(inf.w_g[i * inf.nshell + k]);
                if (w > 0) zmax = inf.z_hi[k];
            }
        if (side == 0) side = lss_sim_shell_side(sim) > 96 ? lss_sim_shell_side(sim) : 96;
        lss_sim_free(sim);
        lss_cosmo_free(c);
    }
    if (side % 2) lss_drv_die(2, "option --side: %d is odd (need an even number)", side);
    {
        lss_shell_opts so;
        memset(&so, 0, sizeof so);
        so.zmax = 3.5;
        ne = lss_shell_edges(&so, NULL, 0);
        if (ne < 0) lss_drv_check(ne, "shells");
        if (!(edges = (double *)malloc(sizeof(double) * (size_t)(ne + 1)))) lss_drv_die(1, "out of memory");
        lss_shell_edges(&so, edges, ne + 1);
        for (nshell = 0; nshell < ne && edges[nshell] < zmax - 1e-9; nshell++) {}
        if (nshell < 1) lss_drv_die(2, "option --zmax: %g gives no shell", zmax);
    }
    /* the box must hold the cone at its deepest shell for every cosmology */
    for (i = 0; i < ncos; i++) {
        lss_cosmo *c;
        lss_drv_check(lss_cosmo_create(&cp[i], &c), "cosmology");
        {
            double w = side * pixel / 60.0 * (3.14159265358979 / 180) * lss_cosmo_chi(c, edges[nshell]);
            if (w > need) need = w;
        }
        lss_cosmo_free(c);
    }
    if (no.box == 0) { no.box = 50 * ceil(1.02 * need / 50); if (no.box < 500) no.box = 500; }
    else if (no.box < need)
        lss_drv_die(2, "option --box: the %d-pixel cone is %.0f Mpc/h wide at z = %g (needs a box of at least that)", side, need,
                    edges[nshell]);
    memset(&lc, 0, sizeof lc);
    lc.side = side; lc.pixel_arcmin = pixel; lc.nshell = nshell; lc.z_edges = edges; lc.ncone = ncone;
    {
        int64_t mem = lss_nbody_memory(&no, &lc);
        fprintf(stderr, "lss-sim nbody: %d cosmolog%s, %d^3 particles in %g Mpc/h, mesh %d, %d steps from z = %g, %d cone(s) of %d x %d "
                        "pixels of %g arcmin, %d shells to z = %g\n", ncos, ncos == 1 ? "y" : "ies", no.np, no.box,
                no.mesh ? no.mesh : 2 * no.np, no.steps, no.z_init, ncone, side, side, pixel, nshell, edges[nshell]);
        if (mem < 0) lss_drv_die(2, "%s", lss_last_error());
        if (boxsplit) /* each rank: its slab of particles and mesh (with room for clustering; a second mesh slab unless lean) */
            mem = mem / lss_mpi_size() + mem / ((lean ? 4 : 2) * lss_mpi_size());
        lss_drv_memory(boxsplit ? "lss-sim nbody (one rank's slab of particles and mesh)" : "lss-sim nbody (particles, force mesh, shells)",
                       (double)mem, boxsplit ? "--np, --mesh, --side, --ncone or more ranks" : "--np, --mesh, --side or --ncone");
    }
    have = 0;
    if (access(out, F_OK) == 0) lss_drv_check(lss_shell_lib_count(out, &have), out);
    lss_drv_check(lss_mpi_bcast(&have, sizeof have, 0), "MPI"); /* rank 0's count, before any rank writes */
    /* entries already there must be this library's */
    for (i = 0; i < have && i < ncos; i++) {
        lss_shellset e;
        lss_drv_check(lss_shell_lib_stem(out, i, stem, sizeof stem), "library");
        lss_drv_check(lss_shellset_load(stem, &e), stem);
        if (e.params.omega_m != cp[i].omega_m || e.params.sigma_8 != cp[i].sigma_8 || e.nbody.np != no.np || e.nbody.box != no.box ||
            e.nbody.steps != no.steps || e.side != side || e.ncone != ncone || e.nshell != nshell || e.seed != seed ||
            e.index != (same ? 0u : (uint64_t)i))
            lss_drv_die(2, "%s holds entry %d made with other options or cosmology (Omega_m %g, sigma_8 %g, np %d, box %g); "
                           "use another --out", out, i, e.params.omega_m, e.params.sigma_8, e.nbody.np, e.nbody.box);
        lss_shellset_free(&e);
    }
    lss_drv_outputs_begin(out, 0); /* unstaged: finished entries and checkpoints land as written (resumable) */
    signal(SIGINT, nb_on_signal);   /* a checkpoint, then exit: the same command resumes */
    signal(SIGTERM, nb_on_signal);
    if (have > 0) fprintf(stderr, "lss-sim nbody: %d of %d entries already in %s; resuming\n", have < ncos ? have : ncos, ncos, out);
    /* under MPI each rank runs and writes its block of the entries still to make (--split cosmologies), or every
       rank takes part in every box and rank 0 writes (--split box; each rank writes its checkpoint part) */
    if (boxsplit) blo = 0, bhi = ncos > have ? ncos - have : 0;
    else lss_mpi_block(ncos > have ? ncos - have : 0, lss_mpi_rank(), lss_mpi_size(), &blo, &bhi);
    if (boxsplit) fprintf(stderr, "lss-sim nbody: every box over %d ranks%s\n", lss_mpi_size(), lean ? " (lean: in-place transposes)" : "");
    lss_mpi_own_files(!boxsplit);
    for (i = have + (int)blo; i < have + (int)bhi; i++) {
        lss_cosmo *c;
        lss_shellset s;
        nb_prog pr;
        char ck[4400];
        if (nb_signal) lss_drv_die(128 + nb_signal, "interrupted before cosmology %d; run the same command again to resume", i + 1);
        pr.k = i; pr.n = ncos; pr.t0 = lss_time_now();
        lss_drv_check(lss_cosmo_create(&cp[i], &c), "cosmology");
        lss_drv_check(lss_shell_lib_stem(out, i, stem, sizeof stem), "library");
        snprintf(ck, sizeof ck, "%s.ckpt", stem);
        fprintf(stderr, "lss-sim nbody: cosmology %d/%d: Omega_m = %.4f, sigma_8 = %.4f\n", i + 1, ncos, cp[i].omega_m, cp[i].sigma_8);
        st = boxsplit ? lss_nbody_lightcone_dist(c, &no, &lc, seed, same ? 0 : (uint64_t)i, lean, ck, nb_progress, &pr, &s)
                      : lss_nbody_lightcone(c, &no, &lc, seed, same ? 0 : (uint64_t)i, ck, nb_progress, &pr, &s);
        lss_cosmo_free(c);
        if (st != LSS_OK && nb_signal)
            lss_drv_die(128 + nb_signal, "interrupted in cosmology %d: %s; run the same command again to resume", i + 1, lss_last_error());
        if (st != LSS_OK) lss_drv_die(st == LSS_ERR_NOMEM ? 1 : 2, "cosmology %d: %s", i + 1, lss_last_error());
        lss_drv_check(lss_shellset_save(&s, stem), stem);
        lss_shellset_free(&s);
    }
    lss_mpi_own_files(0);
    lss_mpi_barrier();
    {
        double *rows = (double *)malloc(sizeof(double) * 6 * (size_t)ncos);
        const char *hdr[6] = {"index", "omega_m", "sigma_8", "omega_b", "h", "n_s"};
        if (!rows) lss_drv_die(1, "out of memory");
        for (i = 0; i < ncos; i++) {
            double *r = rows + 6 * (size_t)i;
            r[0] = i; r[1] = cp[i].omega_m; r[2] = cp[i].sigma_8; r[3] = cp[i].omega_b; r[4] = cp[i].h; r[5] = cp[i].n_s;
        }
        snprintf(path, sizeof path, "%s/cosmologies.csv", out);
        lss_drv_check(lss_csv_write(path, 6, hdr, ncos, rows), "cosmologies.csv");
        free(rows);
    }
    snprintf(extra, sizeof extra,
             "\"cosmologies\": %d, \"box_mpc_h\": %g, \"np\": %d, \"mesh\": %d, \"steps\": %d, \"z_init\": %g, \"ncone\": %d, "
             "\"side\": %d, \"pixel_arcmin\": %g, \"nshell\": %d, \"zmax\": %g, \"same_seed\": %d, \"seconds\": %.3f",
             ncos, no.box, no.np, no.mesh ? no.mesh : 2 * no.np, no.steps, no.z_init, ncone, side, pixel, nshell, edges[nshell], same,
             lss_time_now() - t0);
    lss_drv_outputs_done(argc, argv, seed, extra);
    fprintf(stderr, "lss-sim nbody: library of %d cosmologies in %s (%.1f s)\n", ncos, out, lss_time_now() - t0);
    free(cp);
    free(edges);
    lss_nz_free(nz, nb);
    return 0;
}

int main(int argc, char **argv) {
    const lss_param_table *t1 = lss_table1();
    const char *out = "out/sim", *bins_name = "deeplss", *model = "lognormal", *library = NULL, *bias = "linear", *poisson = "exact", *set_name = "train";
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
    int64_t shape[4], per_map, done = 0, blo = 0, bhi = 0;
    int H, W, ndim;
    char path[4200], extra[8192], bins_js[4096];
    double t0 = lss_time_now();
    lss_drv_progress prog;
    int nlib = 0, nbody = 0;
    lss_shellset *sets = NULL;
    lss_drv_opt opts[18 + LSS_NPARAM_TABLE1 + 1] = {
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
        {"poisson", LSS_DRV_STR, &poisson, 0, 0, 0, "exact, inverse (exact, one uniform per pixel: common random numbers), anscombe (Gaussian-unbiased inverse) or anscombe-paper (appendix F)"},
        {"mosaic", LSS_DRV_FLAG, &mosaic, 0, 0, 0, "6 x 6 fields per map (survey of 900 deg^2)"},
        {"scale", LSS_DRV_FLAG, &scale, 0, 0, 0, "apply the appendix E scaling before networks (as deeplss)"},
        {"bins", LSS_DRV_STR, &bins_name, 0, 0, 0, "n(z): deeplss or a text FILE with columns z n_1 .. n_4"},
        {"model", LSS_DRV_STR, &model, 0, 0, 0, "matter shells: lognormal, or nbody (from --library; map i uses entry i mod N)"},
        {"library", LSS_DRV_STR, &library, 0, 0, 0, "N-body shell library directory (lss-sim nbody) for --model nbody"}};
    const lss_drv_cmd cmd = {"lss-sim", "lss-sim [options]  |  lss-sim nbody [options] (N-body shell libraries; see lss-sim nbody --help)", about, "lss-sim --out out/train --n 1000 --prior --mosaic --scale"};
    lss_drv_prog = "lss-sim";
    if (argc > 1 && !strcmp(argv[1], "nbody")) return nbody_main(argc - 1, argv + 1);
    lss_drv_table1_opts(opts + 16, fixval, &t1txt);   /* --omega-m ... --eta-bg2 from Table I */
    lss_drv_parse(&cmd, opts, argc, argv);
    if (prior && fiducial) lss_drv_die(2, "--prior and --fiducial exclude each other");
    if (noise && nonoise) lss_drv_die(2, "--noise and --no-noise exclude each other");
    for (set = 0; set < 4 && strcmp(set_name, set_names[set]); set++) {}
    if (set == 4) lss_drv_die(2, "option --set: '%s' is not train, valid, test or fiducial", set_name);
    if (!strcmp(model, "nbody")) nbody = 1;
    else if (strcmp(model, "lognormal")) lss_drv_die(2, "option --model: '%s' is not lognormal or nbody", model);
    if (nbody && !library) lss_drv_die(2, "--model nbody needs --library DIR (made by lss-sim nbody)");
    if (!nbody && library) lss_drv_die(2, "--library needs --model nbody");
    memset(&vo, 0, sizeof vo);
    memset(&so, 0, sizeof so);
    if (!strcmp(bias, "linear")) vo.noise.bias = LSS_BIAS_LINEAR;
    else if (!strcmp(bias, "nonlinear")) vo.noise.bias = LSS_BIAS_NONLINEAR;
    else if (!strcmp(bias, "nonlinear-code")) vo.noise.bias = LSS_BIAS_NONLINEAR_CODE;
    else lss_drv_die(2, "option --bias: '%s' is not linear, nonlinear or nonlinear-code", bias);
    if (!strcmp(poisson, "exact")) vo.noise.poisson = LSS_POISSON_EXACT;
    else if (!strcmp(poisson, "inverse")) vo.noise.poisson = LSS_POISSON_INVERSE;
    else if (!strcmp(poisson, "anscombe")) vo.noise.poisson = LSS_POISSON_ANSCOMBE;
    else if (!strcmp(poisson, "anscombe-paper")) vo.noise.poisson = LSS_POISSON_ANSCOMBE_PAPER;
    else lss_drv_die(2, "option --poisson: '%s' is not exact, inverse, anscombe or anscombe-paper", poisson);
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
    if (nbody) {
        char stem[4200];
        if ((no_opt >> LSS_P_OMEGA_M) & 1 || (no_opt >> LSS_P_SIGMA_8) & 1)
            lss_drv_die(2, "--omega-m and --sigma-8 cannot be fixed with --model nbody: the library's cosmologies are used");
        lss_drv_check(lss_shell_lib_count(library, &nlib), library);
        if (nlib < 1) lss_drv_die(2, "--library %s: no complete entry (shells_0000.json and .npy; make one with lss-sim nbody)", library);
        if (!(sets = (lss_shellset *)calloc((size_t)nlib, sizeof *sets))) lss_drv_die(1, "out of memory");
        for (k = 0; k < nlib; k++) {
            lss_drv_check(lss_shell_lib_stem(library, k, stem, sizeof stem), "library");
            lss_drv_check(lss_shellset_load(stem, &sets[k]), stem);
        }
    }
    lss_drv_check(lss_cosmo_create(&fid, &c0), "cosmology");
    lss_drv_check(lss_sim_create(c0, nz, nb, &so, &sim0), "simulator");
    lss_drv_check(lss_survey_create(sim0, &vo, &sv), "survey");
    lss_sim_get_info(sim0, &inf);
    H = W = lss_survey_side(sv);
    per_map = lss_survey_map_size(sv);
    { /* what the run holds, said (and checked against this machine) before anything is allocated or written */
        char what[96];
        snprintf(what, sizeof what, "lss-sim (%d maps of %lld floats and their parameters)", n, (long long)per_map);
        lss_drv_memory(what, (double)n * (4.0 * (double)per_map + sizeof(lss_params)), "--n");
    }
    lss_drv_outputs_begin(out, 1);
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
        }
        if (nbody) {
            const lss_params *e = &sets[k % nlib].params;
            pars[k].omega_m = e->omega_m; pars[k].sigma_8 = e->sigma_8; pars[k].omega_b = e->omega_b;
            pars[k].h = e->h; pars[k].n_s = e->n_s; pars[k].transfer = e->transfer;
        }
        if (lss_params_check(&pars[k]) != LSS_OK) lss_drv_die(2, "map %d: %s", k, lss_last_error());
    }
    maps = (float *)malloc(sizeof(float) * (size_t)per_map * (size_t)n);
    if (!maps) lss_drv_die(1, "out of memory for %d maps (%.1f GB)", n, 4.0 * (double)per_map * n / 1e9);
    if (lss_mpi_rank() == 0)
    fprintf(stderr, "lss-sim: %d %s of %d x %d, %s parameters, %s, %d %s shells, %d thread(s)%s\n", n, mosaic ? "mosaics" : "fields",
            H, W, prior ? "prior" : "fiducial", nonoise ? "noise-free" : "with noise", inf.nshell_drawn, nbody ? "N-body" : "lognormal",
#ifdef _OPENMP
            omp_get_max_threads()
#else
            1
#endif
            , lss_mpi_size() > 1 ? " per rank (MPI: maps split in blocks of the index)" : "");
    /* under MPI each rank simulates its block of the maps (a map is a pure function of its index) */
    lss_mpi_block(n, lss_mpi_rank(), lss_mpi_size(), &blo, &bhi);
    lss_drv_progress_init(&prog, "lss-sim", bhi - blo);
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        lss_sim *sim = sim0, *own = NULL;
        lss_survey_work *w = NULL;
        int r = LSS_OK, i;
        if (prior || nbody) r = lss_sim_create(c0, nz, nb, &so, &own), sim = own;   /* one cosmology per map: a simulator per thread */
        if (r == LSS_OK) r = lss_survey_work_create(sv, &w);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (i = (int)blo; i < (int)bhi; i++) {
            if (r != LSS_OK) continue;
            if (prior || nbody) {
                lss_cosmo *ci = NULL;
                r = lss_cosmo_create(&pars[i], &ci);
                if (r == LSS_OK) r = lss_sim_set_cosmo(sim, ci);
                if (r == LSS_OK && nbody) r = lss_sim_use_shells(sim, &sets[i % nlib]);
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
    if (st != LSS_OK) lss_drv_die(st == LSS_ERR_NOMEM || st == LSS_ERR_NUMERIC ? 1 : 2, "the simulation stopped (the failing map is named above)");
    lss_drv_progress_end(&prog);
    lss_drv_check(lss_mpi_allgather(maps, n, sizeof(float) * (size_t)per_map), "gathering the maps");
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
    if (lss_drv_json_escape(bins_js, sizeof bins_js, bins_name) >= sizeof bins_js) lss_drv_die(2, "option --bins: name too long");
    snprintf(extra, sizeof extra,
             "\"n\": %d, \"set\": \"%s\", \"mode\": \"%s\", \"mosaic\": %d, \"noise\": %d, \"smoothing_mpc_h\": %g, \"bias\": %d, "
             "\"poisson\": %d, \"scaled\": %d, \"bins\": %s, \"shape\": [%d, %d, %d, %d], \"shells_drawn\": %d, "
             "\"clipped_gaussian_power\": %.3g, \"model\": \"%s\", \"library_entries\": %d, \"seconds\": %.3f",
             n, set_name, prior ? "prior" : "fiducial", mosaic, !nonoise, smooth, vo.noise.bias, vo.noise.poisson, scale, bins_js, n,
             2 * nb, H, W, inf.nshell_drawn, inf.clip_max, model, nlib, lss_time_now() - t0);
    lss_drv_outputs_done(argc, argv, seed, extra);
    fprintf(stderr, "lss-sim: wrote %s/maps.npy, params.csv, example.png, run.json\n", out);
    free(maps);
    free(pars);
    lss_survey_free(sv);
    lss_sim_free(sim0);
    lss_cosmo_free(c0);
    for (k = 0; k < nlib; k++) lss_shellset_free(&sets[k]);
    free(sets);
    lss_nz_free(nz, nb);
    return 0;
}
