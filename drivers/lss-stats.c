/* lss-stats - statistics of map files (NPY): auto and cross power spectra in log-spaced ell bins (CSV). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#include "lss_maps.h"
#include "drivers/lss_driver.h"
#include <getopt.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: lss-stats ps --maps M.npy --out PS.csv [options]\n"
            "\n"
            "Power spectra of maps (float32 or float64 NPY of shape [N, C, H, W], [C, H, W] or [H, W]), averaged over\n"
            "the N maps, in log-spaced ell bins (default 20 bins over 36..4536, as DeepLSS). Flat sky: the C_ell estimate\n"
            "of a Fourier mode is X_i X_j* Omega_pix / N_pix (X the unnormalised DFT, Omega_pix in sr) at\n"
            "ell = 2 pi |k| with k in cycles per radian; a bin averages every mode of the full plane in [edge, next edge).\n"
            "\n"
            "output CSV: one row per bin: ell (mean ell of the bin's modes), nmodes, then for each channel pair (autos,\n"
            "or with --cross all pairs i <= j) the mean over maps, then the standard errors of those means (columns\n"
            "NAME_se). Channels are named kg1..kg4, dg1..dg4 for 8-channel DeepLSS maps, c0, c1, ... otherwise; a\n"
            "pair is NAMEi_NAMEj. Bins without modes are nan.\n"
            "\n"
            "options\n"
            "  --maps FILE         input maps (NPY)\n"
            "  --pixel-arcmin X    pixel size (default 4.6875)\n"
            "  --cross             all auto and cross spectra (default: autos only)\n"
            "  --abs               cross spectra as |X_i X_j*| (the released DeepLSS code) instead of Re(X_i X_j*)\n"
            "  --lmin L --lmax L --nbins N   bins (default 36, 4536, 20)\n"
            "  --dl-min D          every bin at least D wide (linear steps of D at low ell; default 0: pure log)\n"
            "  --out FILE          output CSV (written atomically)\n"
            "  --help              this text\n"
            "\n"
            "example\n"
            "  lss-sim --out out/sim --n 100 --no-noise && lss-stats ps --maps out/sim/maps.npy --cross --out ps.csv\n"
            "\n"
            "Bad input (unknown option, value outside its range, unreadable or malformed file) gives one line on\n"
            "stderr and exit status 2.\n");
}

enum { O_MAPS = 1000, O_PIX, O_CROSS, O_ABS, O_LMIN, O_LMAX, O_NB, O_DLMIN, O_OUT, O_HELP };

int main(int argc, char **argv) {
    static const struct option opts[] = {{"maps", 1, 0, O_MAPS}, {"pixel-arcmin", 1, 0, O_PIX}, {"cross", 0, 0, O_CROSS},
                                         {"abs", 0, 0, O_ABS},   {"lmin", 1, 0, O_LMIN},         {"lmax", 1, 0, O_LMAX},
                                         {"nbins", 1, 0, O_NB},  {"dl-min", 1, 0, O_DLMIN},      {"out", 1, 0, O_OUT},
                                         {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    const char *maps_path = NULL, *out = NULL;
    double pix = LSS_DEEPLSS_PIXEL_ARCMIN, lmin = 36, lmax = 4536, dlmin = 0, *edges, *acc, *acc2, *one, *rows;
    int cross = 0, mode = LSS_PS_REAL, nbins = 20, c, ndim, np, p, b, ncol, col;
    int64_t shape[LSS_MAX_DIM], nmaps, nch, h, w, k;
    float *data;
    lss_ps *ps;
    char **names;
    const char **hdr;
    lss_drv_prog = "lss-stats";
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { usage(stdout); return 0; }
    if (argc < 2 || strcmp(argv[1], "ps") != 0) lss_drv_die(2, "expected the command 'ps' (see --help)");
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MAPS: maps_path = optarg; break;
        case O_PIX:
            pix = lss_drv_double("--pixel-arcmin", optarg);
            if (!(pix > 0 && pix < 6000)) lss_drv_die(2, "option --pixel-arcmin: %g is outside (0, 6000)", pix);
            break;
        case O_CROSS: cross = 1; break;
        case O_ABS: mode = LSS_PS_ABS; break;
        case O_LMIN: lmin = lss_drv_double("--lmin", optarg); break;
        case O_LMAX: lmax = lss_drv_double("--lmax", optarg); break;
        case O_NB: nbins = (int)lss_drv_int("--nbins", optarg, 1, 10000); break;
        case O_DLMIN: dlmin = lss_drv_double("--dl-min", optarg); break;
        case O_OUT: out = optarg; break;
        case O_HELP: usage(stdout); return 0;
        default: lss_drv_die(2, "unknown option (see --help)");
        }
    }
    if (optind < argc) lss_drv_die(2, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!maps_path) lss_drv_die(2, "--maps FILE is required");
    if (!out) lss_drv_die(2, "--out FILE is required");
    edges = (double *)malloc(sizeof(double) * (size_t)(nbins + 1));
    if (!edges) lss_drv_die(1, "out of memory");
    lss_drv_check(lss_ps_edges(lmin, lmax, nbins, dlmin, edges), "bins");
    lss_drv_check(lss_npy_load_f32(maps_path, &data, &ndim, shape), maps_path);
    if (ndim == 2) { nmaps = 1; nch = 1; h = shape[0]; w = shape[1]; }
    else if (ndim == 3) { nmaps = 1; nch = shape[0]; h = shape[1]; w = shape[2]; }
    else if (ndim == 4) { nmaps = shape[0]; nch = shape[1]; h = shape[2]; w = shape[3]; }
    else lss_drv_die(2, "%s: %d-D array (need [N, C, H, W], [C, H, W] or [H, W])", maps_path, ndim);
    if (nmaps < 1 || nch < 1 || nch > 64 || h < 2 || w < 2)
        lss_drv_die(2, "%s: shape not usable (%lld maps, %lld channels, %lld x %lld)", maps_path, (long long)nmaps,
                    (long long)nch, (long long)h, (long long)w);
    lss_drv_check(lss_ps_create((int)h, (int)w, pix, (int)nch, edges, nbins, &ps), "power spectrum");
    np = lss_ps_npairs(ps, cross);
    acc = (double *)calloc((size_t)np * nbins, sizeof(double));
    acc2 = (double *)calloc((size_t)np * nbins, sizeof(double));
    one = (double *)calloc((size_t)np * nbins, sizeof(double));
    if (!acc || !acc2 || !one) lss_drv_die(1, "out of memory");
    for (k = 0; k < nmaps; k++) {
        lss_drv_check(lss_ps_compute(ps, data + (size_t)k * nch * h * w, cross, mode, one), "power spectrum");
        for (b = 0; b < np * nbins; b++) { acc[b] += one[b]; acc2[b] += one[b] * one[b]; }
    }
    /* names */
    names = (char **)calloc((size_t)(2 * np + 2), sizeof(char *));
    hdr = (const char **)calloc((size_t)(2 * np + 2), sizeof(char *));
    if (!names || !hdr) lss_drv_die(1, "out of memory");
    ncol = 2 + 2 * np;
    hdr[0] = "ell";
    hdr[1] = "nmodes";
    for (p = 0; p < np; p++) {
        int i, j;
        char a[16], bn[16];
        lss_ps_pair(ps, cross, p, &i, &j);
        if (nch == 8) {
            snprintf(a, sizeof a, "%s%d", i < 4 ? "kg" : "dg", i % 4 + 1);
            snprintf(bn, sizeof bn, "%s%d", j < 4 ? "kg" : "dg", j % 4 + 1);
        } else {
            snprintf(a, sizeof a, "c%d", i);
            snprintf(bn, sizeof bn, "c%d", j);
        }
        names[p] = (char *)malloc(40);
        names[np + p] = (char *)malloc(44);
        if (!names[p] || !names[np + p]) lss_drv_die(1, "out of memory");
        snprintf(names[p], 40, "%s_%s", a, bn);
        snprintf(names[np + p], 44, "%s_%s_se", a, bn);
        hdr[2 + p] = names[p];
        hdr[2 + np + p] = names[np + p];
    }
    rows = (double *)malloc(sizeof(double) * (size_t)ncol * nbins);
    if (!rows) lss_drv_die(1, "out of memory");
    for (b = 0; b < nbins; b++) {
        double *r = rows + (size_t)b * ncol;
        r[0] = lss_ps_ell(ps)[b];
        r[1] = (double)lss_ps_nmodes(ps)[b];
        for (p = 0; p < np; p++) {
            size_t q = (size_t)p * nbins + b;
            double mu = acc[q] / nmaps, var = acc2[q] / nmaps - mu * mu;
            col = 2 + p;
            r[col] = lss_ps_nmodes(ps)[b] ? mu : NAN;
            r[col + np] = (lss_ps_nmodes(ps)[b] && nmaps > 1) ? sqrt((var > 0 ? var : 0) / (nmaps - 1)) : NAN;
        }
    }
    lss_drv_check(lss_csv_write(out, ncol, hdr, nbins, rows), out);
    fprintf(stderr, "lss-stats: %lld map(s), %lld channel(s) of %lld x %lld, %d spectra in %d bins -> %s\n",
            (long long)nmaps, (long long)nch, (long long)h, (long long)w, np, nbins, out);
    for (p = 0; p < 2 * np; p++) free(names[p]);
    free(names); free(hdr); free(rows); free(acc); free(acc2); free(one); free(edges); free(data);
    lss_ps_free(ps);
    return 0;
}
