/* lss-theory - cosmology theory on the command line: background, P(k), tomographic Limber spectra (CSV, PNG). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"
#include <getopt.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: lss-theory COMMAND [options]\n"
            "\n"
            "Flat LCDM theory of lss_maps.h: Eisenstein-Hu linear P(k) normalised to sigma_8, Halofit (Takahashi 2012)\n"
            "non-linear P(k), NLA intrinsic alignments and linear galaxy bias per tomographic bin (DeepLSS eqs. 8-9),\n"
            "Limber angular spectra. Units: distances Mpc/h, k h/Mpc, P (Mpc/h)^3. Results are CSV on stdout\n"
            "(or DIR/COMMAND.csv with --out DIR, which also writes DIR/run.json).\n"
            "\n"
            "commands\n"
            "  background   CSV z,chi_mpc_h,da_mpc_h,growth,e_z at the redshifts of --z\n"
            "  pk           CSV k_h_mpc,pk_mpc3_h3 at one redshift --z and the wavenumbers of --k\n"
            "  cl           CSV ell,kk_1_1,...,kd_i_j,...,dd_4_4: every auto and cross spectrum of the convergence\n"
            "               kappa_i (lensing + IA) and galaxy density delta_j of the tomographic bins\n"
            "\n"
            "cosmology (defaults: DeepLSS Table I fiducial, Planck 2018 Omega_b, h, n_s)\n"
            "  --omega-m X  (0.29, prior [0.15, 0.45])    --sigma-8 X (0.71, prior [0.5, 1.2])\n"
            "  --omega-b X  (0.0493)   --h X (0.6736)   --n-s X (0.9649)\n"
            "  --nowiggle   Eisenstein-Hu transfer function without baryon wiggles\n"
            "  --linear     linear P(k) wherever the non-linear one is used\n"
            "nuisance parameters (DeepLSS Table I fiducial values and priors)\n"
            "  --a-ia X (0.5, [-6, 6])     --eta-ia X (1.6, [-4, 6])    --b-g X (1.5, [0.5, 2.5])\n"
            "  --eta-bg X (0.5, [-3, 3])   --r-g X (0.7, [0.4, 1])      --b-g2 X (0.5, [-3, 1])\n"
            "  --eta-bg2 X (0.0, [-2, 2])  --c1-rho-crit X (NLA constant, 0.0134; CCL uses 0.0138768)\n"
            "  (r_g, b_g2 and eta_bg2 act on maps, not on these linear-bias spectra; they are checked and recorded)\n"
            "\n"
            "command options\n"
            "  --z LIST       redshifts, comma-separated (background: default 0,0.5,1,2; pk: one value, default 0)\n"
            "  --k LIST       wavenumbers in h/Mpc (pk; default 0.001,0.01,0.1,1,10)\n"
            "  --ell LIST     multipoles (cl)\n"
            "  --nell N --lmin L --lmax L   N log-spaced multipoles in [L, L] (cl; default 30 in [10, 10000])\n"
            "  --bins NAME    deeplss (4 bins, default), cosmos (1), or a text FILE: z then one n(z) column per bin\n"
            "  --terms T      all (default), gg (lensing and clustering only), gi (IA-lensing and IA-galaxy\n"
            "                 cross terms), ii (IA auto term)\n"
            "  --png FILE     (cl) draw the kk and dd auto spectra, log-log, in two panels\n"
            "  --out DIR      write DIR/COMMAND.csv and DIR/run.json instead of printing\n"
            "  --help         this text\n"
            "\n"
            "examples\n"
            "  lss-theory background --z 0.1,0.5,1\n"
            "  lss-theory pk --z 0.5 --k 0.01,0.1,1 --linear\n"
            "  lss-theory cl --ell 100,1000 --bins deeplss --omega-m 0.3 --sigma-8 0.8\n"
            "  lss-theory cl --nell 40 --lmin 20 --lmax 5000 --png cl.png > cl.csv\n"
            "\n"
            "Bad input (unknown option, value outside its range, unreadable or malformed file) gives one line on\n"
            "stderr and exit status 2.\n");
}

enum {
    O_OM = 1000, O_S8, O_OB, O_H, O_NS, O_AIA, O_EIA, O_BG, O_EBG, O_RG, O_BG2, O_EBG2, O_C1, O_NOWIG, O_LIN, O_Z, O_K,
    O_ELL, O_NELL, O_LMIN, O_LMAX, O_BINS, O_PNG, O_OUT, O_TERMS, O_HELP
};

static FILE *open_out(const char *dir, const char *cmd, lss_wfile *w, char *path, size_t n) {
    int s;
    if (!dir) return stdout;
    lss_drv_mkdirs(dir);
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
    lss_drv_check(lss_wfile_commit(w), "output");
    lss_drv_check(lss_drv_runjson(dir, argc, argv, 0, extra), "run.json");
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
    static const struct option opts[] = {
        {"omega-m", 1, 0, O_OM}, {"sigma-8", 1, 0, O_S8}, {"omega-b", 1, 0, O_OB}, {"h", 1, 0, O_H}, {"n-s", 1, 0, O_NS},
        {"a-ia", 1, 0, O_AIA}, {"eta-ia", 1, 0, O_EIA}, {"b-g", 1, 0, O_BG}, {"eta-bg", 1, 0, O_EBG}, {"r-g", 1, 0, O_RG},
        {"b-g2", 1, 0, O_BG2}, {"eta-bg2", 1, 0, O_EBG2}, {"c1-rho-crit", 1, 0, O_C1}, {"nowiggle", 0, 0, O_NOWIG},
        {"linear", 0, 0, O_LIN}, {"z", 1, 0, O_Z}, {"k", 1, 0, O_K}, {"ell", 1, 0, O_ELL}, {"nell", 1, 0, O_NELL},
        {"lmin", 1, 0, O_LMIN}, {"lmax", 1, 0, O_LMAX}, {"bins", 1, 0, O_BINS}, {"png", 1, 0, O_PNG}, {"out", 1, 0, O_OUT},
        {"terms", 1, 0, O_TERMS}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    lss_params p;
    lss_cosmo *c = NULL;
    double *zs = NULL, *ks = NULL, *ells = NULL, lmin = 10, lmax = 10000;
    int nz = 0, nk = 0, nell = 0, nlog = 30, have_nell = 0, have_lrange = 0, terms = LSS_CL_ALL, opt, i, j;
    const char *bins = "deeplss", *png = NULL, *outdir = NULL, *cmd;
    char path[4096], extra[512];
    lss_wfile w;
    FILE *f;
    lss_drv_prog = "lss-theory";
    lss_params_fiducial(&p);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        switch (opt) {
        case O_OM: p.omega_m = lss_drv_double("--omega-m", optarg); break;
        case O_S8: p.sigma_8 = lss_drv_double("--sigma-8", optarg); break;
        case O_OB: p.omega_b = lss_drv_double("--omega-b", optarg); break;
        case O_H: p.h = lss_drv_double("--h", optarg); break;
        case O_NS: p.n_s = lss_drv_double("--n-s", optarg); break;
        case O_AIA: p.a_ia = lss_drv_double("--a-ia", optarg); break;
        case O_EIA: p.eta_ia = lss_drv_double("--eta-ia", optarg); break;
        case O_BG: p.b_g = lss_drv_double("--b-g", optarg); break;
        case O_EBG: p.eta_bg = lss_drv_double("--eta-bg", optarg); break;
        case O_RG: p.r_g = lss_drv_double("--r-g", optarg); break;
        case O_BG2: p.b_g2 = lss_drv_double("--b-g2", optarg); break;
        case O_EBG2: p.eta_bg2 = lss_drv_double("--eta-bg2", optarg); break;
        case O_C1:
            p.c1_rho_crit = lss_drv_double("--c1-rho-crit", optarg);
            if (!(p.c1_rho_crit > 0 && p.c1_rho_crit < 1)) lss_drv_die(2, "option --c1-rho-crit: %g is outside (0, 1)", p.c1_rho_crit);
            break;
        case O_NOWIG: p.transfer = LSS_TRANSFER_EH_NOWIGGLE; break;
        case O_LIN: p.linear = 1; break;
        case O_Z: free(zs); nz = lss_drv_list("--z", optarg, &zs); break;
        case O_K: free(ks); nk = lss_drv_list("--k", optarg, &ks); break;
        case O_ELL: free(ells); nell = lss_drv_list("--ell", optarg, &ells); break;
        case O_NELL: nlog = (int)lss_drv_int("--nell", optarg, 1, 100000); have_nell = 1; break;
        case O_LMIN: lmin = lss_drv_double("--lmin", optarg); have_lrange = 1; break;
        case O_LMAX: lmax = lss_drv_double("--lmax", optarg); have_lrange = 1; break;
        case O_BINS: bins = optarg; break;
        case O_PNG: png = optarg; break;
        case O_OUT: outdir = optarg; break;
        case O_TERMS:
            if (strcmp(optarg, "all") == 0) terms = LSS_CL_ALL;
            else if (strcmp(optarg, "gg") == 0) terms = LSS_CL_GG;
            else if (strcmp(optarg, "gi") == 0) terms = LSS_CL_GI;
            else if (strcmp(optarg, "ii") == 0) terms = LSS_CL_II;
            else lss_drv_die(2, "option --terms: '%s' is not all, gg, gi or ii", optarg);
            break;
        case O_HELP: usage(stdout); return 0;
        case ':': lss_drv_die(2, "option %s needs a value (see --help)", name); break;
        default: lss_drv_die(2, "unknown option '%s' (see --help)", name); break;
        }
    }
    if (optind >= argc) lss_drv_die(2, "no command: background, pk or cl (see --help)");
    if (optind + 1 < argc) lss_drv_die(2, "unexpected argument '%s' (see --help)", argv[optind + 1]);
    cmd = argv[optind];
    if (strcmp(cmd, "background") && strcmp(cmd, "pk") && strcmp(cmd, "cl"))
        lss_drv_die(2, "unknown command '%s': background, pk or cl (see --help)", cmd);
    if (png && strcmp(cmd, "cl")) lss_drv_die(2, "--png applies to the cl command only");
    if ((nell || have_nell || have_lrange || strcmp(bins, "deeplss") || terms != LSS_CL_ALL) && strcmp(cmd, "cl"))
        lss_drv_die(2, "--ell, --nell, --lmin, --lmax, --bins and --terms apply to the cl command only");
    if (nk && strcmp(cmd, "pk")) lss_drv_die(2, "--k applies to the pk command only");
    if (nz && !strcmp(cmd, "cl")) lss_drv_die(2, "--z does not apply to the cl command");
    lss_drv_check(lss_params_check(&p), "parameters");
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
        if (nell && (have_nell || have_lrange)) lss_drv_die(2, "give either --ell or --nell/--lmin/--lmax, not both");
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
    lss_cosmo_free(c);
    free(zs);
    free(ks);
    free(ells);
    return 0;
}
