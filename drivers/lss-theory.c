/* lss-theory - cosmology theory on the command line: background, P(k), tomographic Limber spectra (CSV, PNG). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"

static const char *const about =
    "Flat LCDM theory of lss_maps.h: Eisenstein-Hu linear P(k) normalised to sigma_8, Halofit (Takahashi 2012)\n"
    "non-linear P(k), NLA intrinsic alignments and linear galaxy bias per tomographic bin (DeepLSS eqs. 8-9),\n"
    "Limber angular spectra. Units: distances Mpc/h, k h/Mpc, P (Mpc/h)^3. Results are CSV on stdout\n"
    "(or DIR/COMMAND.csv with --out DIR, which also writes DIR/run.json).\n"
    "commands\n"
    "  background   CSV z,chi_mpc_h,da_mpc_h,growth,e_z at the redshifts of --z\n"
    "  pk           CSV k_h_mpc,pk_mpc3_h3 at one redshift --z and the wavenumbers of --k\n"
    "  cl           CSV ell,kk_1_1,...,kd_i_j,...,dd_4_4: every auto and cross spectrum of the convergence\n"
    "               kappa_i (lensing + IA) and galaxy density delta_j of the tomographic bins\n"
    "Defaults: DeepLSS Table I fiducial values with Planck 2018 Omega_b, h, n_s; parameters outside the Table I\n"
    "priors are refused (r_g, b_g2 and eta_bg2 act on maps, not on these spectra: they are checked and recorded).\n"
    "Bad input (unknown option, value outside its range, unreadable or malformed file) gives one line on\n"
    "stderr and exit status 2.";

static FILE *open_out(const char *dir, const char *cmd, lss_wfile *w, char *path, size_t n) {
    int s;
    if (!dir) return stdout;
    snprintf(path, n, "%s/%s.csv", dir, cmd);
    s = lss_wfile_open(w, path);
    lss_drv_check(s, "output");
    return w->f;
}

static void close_out(const char *dir, lss_wfile *w, int argc, char **argv, const char *extra) {
    if (!dir) {
        if (fflush(stdout) != 0 || ferror(stdout)) lss_drv_die(1, "cannot write to stdout");
        return;
    }
    if (ferror(w->f)) {
        lss_wfile_abort(w);
        lss_drv_die(1, "error writing into '%s'", dir);
    }
    lss_drv_check(lss_wfile_commit(w), "output"); /* published with the picture by lss_drv_outputs_done */
    (void)argc, (void)argv, (void)extra;
}

static void draw_png(const char *path, int nbins, const double *ell, int nell, const double *out) {
    lss_image im;
    double **y = (double **)malloc(sizeof(double *) * (size_t)nbins);
    char **lab = (char **)malloc(sizeof(char *) * (size_t)nbins);
    char (*names)[32] = malloc(sizeof(*names) * (size_t)nbins);
    lss_plot_opts o;
    int kind, b, s;
    if (!y || !lab || !names) lss_drv_die(1, "out of memory");
    lss_drv_check(lss_image_init(&im, 1200, 520), "png");
    for (kind = 0; kind < 2; kind++) {
        for (b = 0; b < nbins; b++) {
            /* kk_b_b sits at pair index sum_{a<b}(nbins-a); dd_b_b at the same offset after the kk and kd pairs */
            int idx = b * nbins - b * (b - 1) / 2;
            if (kind == 1) idx += nbins * (nbins + 1) / 2 + nbins * nbins;
            y[b] = (double *)(out + (size_t)idx * nell);
            snprintf(names[b], sizeof names[b], "%s_%d_%d", kind ? "dd" : "kk", b + 1, b + 1);
            lab[b] = names[b];
        }
        memset(&o, 0, sizeof o);
        o.title = kind ? "galaxy clustering: C_ell of delta_i (auto)" : "lensing + IA: C_ell of kappa_i (auto)";
        o.xlabel = "multipole ell";
        o.ylabel = "C_ell";
        o.logx = o.logy = 1;
        lss_plot_lines_into(&im, kind * 600, 0, 600, 520, &o, nbins, nell, ell, (const double *const *)y,
                            (const char *const *)lab);
    }
    s = lss_image_save_png(&im, path);
    lss_image_free(&im);
    free(y);
    free(lab);
    free(names);
    lss_drv_check(s, "png");
}

int main(int argc, char **argv) {
    lss_params p;
    lss_cosmo *c = NULL;
    double *zs = NULL, *ks = NULL, *ells = NULL, lmin = 10, lmax = 10000;
    int nz = 0, nk = 0, nell = 0, nlog = 30, have_lrange, terms = LSS_CL_ALL, nowiggle = 0, i, j;
    const char *bins = "deeplss", *png = NULL, *outdir = NULL, *cmd, *zlist = NULL, *klist = NULL, *elllist = NULL;
    const char *termname = "all";
    char path[4096], extra[512];
    lss_wfile w;
    FILE *f;
    double t1val[LSS_NPARAM_TABLE1];
    lss_drv_table1_text t1txt;
    lss_drv_opt opts[16 + LSS_NPARAM_TABLE1 + 1] = {
        {"omega-b", LSS_DRV_DOUBLE, &p.omega_b, 0, 0, 0, "Omega_b"},
        {"h", LSS_DRV_DOUBLE, &p.h, 0, 0, 0, "H0 / (100 km/s/Mpc)"},
        {"n-s", LSS_DRV_DOUBLE, &p.n_s, 0, 0, 0, "spectral index"},
        {"c1-rho-crit", LSS_DRV_DOUBLE, &p.c1_rho_crit, 1e-12, 1, 0, "NLA constant (0: 0.0134; CCL uses 0.0138768)"},
        {"nowiggle", LSS_DRV_FLAG, &nowiggle, 0, 0, 0, "Eisenstein-Hu transfer function without baryon wiggles"},
        {"linear", LSS_DRV_FLAG, &p.linear, 0, 0, 0, "linear P(k) wherever the non-linear one is used"},
        {"z", LSS_DRV_STR, &zlist, 0, 0, 0, "redshifts, comma-separated (background: 0,0.5,1,2; pk: one value, 0)"},
        {"k", LSS_DRV_STR, &klist, 0, 0, 0, "wavenumbers in h/Mpc, comma-separated (pk: 0.001,0.01,0.1,1,10)"},
        {"ell", LSS_DRV_STR, &elllist, 0, 0, 0, "multipoles, comma-separated (cl)"},
        {"nell", LSS_DRV_INT, &nlog, 1, 100000, 0, "number of log-spaced multipoles in [lmin, lmax] (cl)"},
        {"lmin", LSS_DRV_DOUBLE, &lmin, 1, 1e6, 0, "smallest multipole (cl)"},
        {"lmax", LSS_DRV_DOUBLE, &lmax, 1, 1e6, 0, "largest multipole (cl)"},
        {"bins", LSS_DRV_STR, &bins, 0, 0, 0, "deeplss (4 bins), cosmos (1), or a text FILE: z then one n(z) column per bin"},
        {"terms", LSS_DRV_STR, &termname, 0, 0, 0, "all, gg (lensing and clustering), gi (IA cross terms), ii (IA auto)"},
        {"png", LSS_DRV_STR, &png, 0, 0, 0, "(cl) draw the kk and dd auto spectra, log-log, in two panels"},
        {"out", LSS_DRV_STR, &outdir, 0, 0, 0, "write DIR/COMMAND.csv and DIR/run.json instead of printing"},
        {NULL, LSS_DRV_STR, NULL, 0, 0, 0, NULL}};
    const lss_drv_cmd info = {"lss-theory", "lss-theory background|pk|cl [options]", about,
                              "lss-theory cl --nell 40 --lmin 20 --lmax 5000 --png cl.png > cl.csv"};
    lss_drv_prog = "lss-theory";
    lss_params_fiducial(&p);
    lss_drv_table1_opts(opts + 16, t1val, &t1txt); /* --omega-m ... --eta-bg2 from Table I */
    if (argc < 2 || strncmp(argv[1], "--", 2) == 0) {
        lss_drv_parse(&info, opts, argc, argv); /* --help exits; other options need a command first */
        lss_drv_die(2, "no command: background, pk or cl (see --help)");
    }
    cmd = argv[1];
    if (strcmp(cmd, "background") && strcmp(cmd, "pk") && strcmp(cmd, "cl"))
        lss_drv_die(2, "unknown command '%s': background, pk or cl (see --help)", cmd);
    {
        lss_drv_cmd sub = info;
        char name[64];
        snprintf(name, sizeof name, "lss-theory %s", cmd);
        sub.name = name;
        lss_drv_parse(&sub, opts, argc - 1, argv + 1);
    }
    lss_drv_check(lss_params_from_vec(t1val, LSS_NPARAM_TABLE1, &p), "parameters");
    if (nowiggle) p.transfer = LSS_TRANSFER_EH_NOWIGGLE;
    if (!strcmp(termname, "all")) terms = LSS_CL_ALL;
    else if (!strcmp(termname, "gg")) terms = LSS_CL_GG;
    else if (!strcmp(termname, "gi")) terms = LSS_CL_GI;
    else if (!strcmp(termname, "ii")) terms = LSS_CL_II;
    else lss_drv_die(2, "option --terms: '%s' is not all, gg, gi or ii", termname);
    if (zlist) nz = lss_drv_list("--z", zlist, &zs);
    if (klist) nk = lss_drv_list("--k", klist, &ks);
    if (elllist) nell = lss_drv_list("--ell", elllist, &ells);
    have_lrange = lmin != 10 || lmax != 10000 || nlog != 30;
    if (png && strcmp(cmd, "cl")) lss_drv_die(2, "--png applies to the cl command only");
    if ((nell || have_lrange || strcmp(bins, "deeplss") || terms != LSS_CL_ALL) && strcmp(cmd, "cl"))
        lss_drv_die(2, "--ell, --nell, --lmin, --lmax, --bins and --terms apply to the cl command only");
    if (nk && strcmp(cmd, "pk")) lss_drv_die(2, "--k applies to the pk command only");
    if (nz && !strcmp(cmd, "cl")) lss_drv_die(2, "--z does not apply to the cl command");
    lss_drv_check(lss_params_check(&p), "parameters");
    lss_drv_outputs_begin(outdir, 1); /* every output checked before the work, published together at the end */
    if (png) lss_drv_out_file(png);
    lss_drv_check(lss_cosmo_create(&p, &c), "cosmology");
    snprintf(extra, sizeof extra,
             "\"command\": \"%s\", \"omega_m\": %.17g, \"sigma_8\": %.17g, \"omega_b\": %.17g, \"h\": %.17g, \"n_s\": %.17g, "
             "\"a_ia\": %.17g, \"eta_ia\": %.17g, \"b_g\": %.17g, \"eta_bg\": %.17g, \"r_g\": %.17g, \"b_g2\": %.17g, "
             "\"eta_bg2\": %.17g, \"linear\": %d, \"nowiggle\": %d",
             cmd, p.omega_m, p.sigma_8, p.omega_b, p.h, p.n_s, p.a_ia, p.eta_ia, p.b_g, p.eta_bg, p.r_g, p.b_g2, p.eta_bg2,
             p.linear, p.transfer == LSS_TRANSFER_EH_NOWIGGLE);

    if (!strcmp(cmd, "background")) {
        if (!nz) nz = lss_drv_list("--z", "0,0.5,1,2", &zs);
        for (i = 0; i < nz; i++)
            if (!(zs[i] >= 0 && zs[i] <= 1e4)) lss_drv_die(2, "option --z: %g is outside [0, 10000]", zs[i]);
        f = open_out(outdir, cmd, &w, path, sizeof path);
        fprintf(f, "z,chi_mpc_h,da_mpc_h,growth,e_z\n");
        for (i = 0; i < nz; i++)
            fprintf(f, "%.10g,%.10e,%.10e,%.10e,%.10e\n", zs[i], lss_cosmo_chi(c, zs[i]), lss_cosmo_da(c, zs[i]),
                    lss_cosmo_growth(c, zs[i]), lss_cosmo_ez(c, zs[i]));
        close_out(outdir, &w, argc, argv, extra);
    } else if (!strcmp(cmd, "pk")) {
        if (!nz) nz = lss_drv_list("--z", "0", &zs);
        if (nz != 1) lss_drv_die(2, "option --z: pk takes one redshift, %d given", nz);
        if (!(zs[0] >= 0 && zs[0] <= 1e4)) lss_drv_die(2, "option --z: %g is outside [0, 10000]", zs[0]);
        if (!nk) nk = lss_drv_list("--k", "0.001,0.01,0.1,1,10", &ks);
        for (i = 0; i < nk; i++)
            if (!(ks[i] > 0 && ks[i] <= 1e6)) lss_drv_die(2, "option --k: %g is outside (0, 1e6] h/Mpc", ks[i]);
        f = open_out(outdir, cmd, &w, path, sizeof path);
        fprintf(f, "k_h_mpc,pk_mpc3_h3\n");
        for (i = 0; i < nk; i++) fprintf(f, "%.10g,%.10e\n", ks[i], lss_cosmo_pk_nl(c, ks[i], zs[0]));
        close_out(outdir, &w, argc, argv, extra);
    } else {
        lss_nz *b = NULL;
        int nb = 0, np;
        double *out;
        char name[32];
        if (nell && have_lrange) lss_drv_die(2, "give either --ell or --nell/--lmin/--lmax, not both");
        if (!nell) {
            if (!(lmin >= 1 && lmax > lmin && lmax <= 1e6))
                lss_drv_die(2, "options --lmin %g --lmax %g: need 1 <= lmin < lmax <= 1e6", lmin, lmax);
            nell = nlog;
            ells = (double *)malloc(sizeof(double) * (size_t)nell);
            if (!ells) lss_drv_die(1, "out of memory");
            for (i = 0; i < nell; i++) ells[i] = nell == 1 ? lmin : lmin * pow(lmax / lmin, (double)i / (nell - 1));
        }
        for (i = 0; i < nell; i++)
            if (!(ells[i] >= 0 && ells[i] <= 1e6)) lss_drv_die(2, "option --ell: %g is outside [0, 1e6]", ells[i]);
        if (!strcmp(bins, "deeplss") || !strcmp(bins, "cosmos")) lss_drv_check(lss_nz_builtin(bins, &b, &nb), "--bins");
        else lss_drv_check(lss_nz_load(bins, &b, &nb), "--bins");
        if (nb > 64) lss_drv_die(2, "--bins: %d bins, at most 64", nb);
        np = lss_cl_npairs(nb);
        out = (double *)malloc(sizeof(double) * (size_t)np * (size_t)nell);
        if (!out) lss_drv_die(1, "out of memory");
        lss_drv_check(lss_cl_tomo_terms(c, b, nb, ells, nell, terms, out), "cl");
        f = open_out(outdir, cmd, &w, path, sizeof path);
        fprintf(f, "ell");
        for (j = 0; j < np; j++) {
            lss_cl_pair_name(nb, j, name, sizeof name);
            fprintf(f, ",%s", name);
        }
        fprintf(f, "\n");
        for (i = 0; i < nell; i++) {
            fprintf(f, "%.10g", ells[i]);
            for (j = 0; j < np; j++) fprintf(f, ",%.10e", out[(size_t)j * nell + i]);
            fprintf(f, "\n");
        }
        close_out(outdir, &w, argc, argv, extra);
        if (png) draw_png(png, nb, ells, nell, out);
        free(out);
        lss_nz_free(b, nb);
    }
    lss_drv_outputs_done(argc, argv, 0, extra);
    lss_cosmo_free(c);
    free(zs);
    free(ks);
    free(ells);
    return 0;
}
