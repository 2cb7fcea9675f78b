/* Tests of lss_massmap.h: operators against a brute-force DFT, Wiener solvers against a dense direct
 * solve, the Gaussian-prior validation of the annealed HMC + ODE sampler against the exact Wiener
 * posterior (Remy et al. 2022, section 7.1), binning, mocks, metrics, NFW profiles, the starlet
 * filter and a tiny end-to-end run. */
#define LSS_CORE_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#include "lss_massmap.h"
#include "tests/lss_test.h"

#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int asan_mode(void) {
    const char *s = getenv("LSS_TEST_ASAN");
    return s && *s == '1';
}

static float *fmalloc(int64_t n) { return (float *)calloc((size_t)n, sizeof(float)); }
static double *dmalloc(int64_t n) { return (double *)calloc((size_t)n, sizeof(double)); }

static double maxabs(int64_t n, const float *a) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}
static double maxdiff(int64_t n, const float *a, const float *b) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}
static double rms(int64_t n, const float *a) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * a[i];
    return sqrt(s / n);
}
static void white(int64_t n, uint64_t seed, float *out) {
    lss_rng r;
    lss_rng_init(&r, seed, 7);
    for (int64_t i = 0; i < n; i++) out[i] = (float)lss_rng_normal(&r);
}
static void demean(int64_t n, float *a) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m += a[i];
    m /= n;
    for (int64_t i = 0; i < n; i++) a[i] = (float)(a[i] - m);
}

/* The convention, coded independently of the library: frequency of index i on n points with the
 * Nyquist cell carrying the sign of the other axis' frequency. */
static double ref_freq(int i, int n) { return (i <= (n - 1) / 2 ? i : i - n) / (double)n; }
static void ref_kxy(int iy, int ix, int h, int w, double *fx, double *fy) {
    *fy = ref_freq(iy, h);
    *fx = ref_freq(ix, w);
    int nx = (w % 2 == 0 && ix == w / 2), ny = (h % 2 == 0 && iy == h / 2);
    if (nx && !ny) *fx = *fy > 0 ? 0.5 : -0.5;
    if (ny && !nx) *fy = *fx > 0 ? 0.5 : -0.5;
}

/* Brute-force DFT of gamma = P kappa in double. */
static void ref_k2g(int h, int w, const float *kE, const float *kB, double *g1, double *g2) {
    int n = h * w;
    double *Fr = dmalloc(n), *Fi = dmalloc(n);
    for (int ky = 0; ky < h; ky++)
        for (int kx = 0; kx < w; kx++) {
            double sr = 0, si = 0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    double ph = -2 * M_PI * ((double)ky * y / h + (double)kx * x / w);
                    double a = kE[y * w + x], b = kB ? kB[y * w + x] : 0;
                    sr += a * cos(ph) - b * sin(ph);
                    si += a * sin(ph) + b * cos(ph);
                }
            double fx, fy;
            ref_kxy(ky, kx, h, w, &fx, &fy);
            double k2 = fx * fx + fy * fy, p1 = k2 > 0 ? (fx * fx - fy * fy) / k2 : 0, p2 = k2 > 0 ? 2 * fx * fy / k2 : 0;
            Fr[ky * w + kx] = p1 * sr - p2 * si;
            Fi[ky * w + kx] = p2 * sr + p1 * si;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double sr = 0, si = 0;
            for (int ky = 0; ky < h; ky++)
                for (int kx = 0; kx < w; kx++) {
                    double ph = 2 * M_PI * ((double)ky * y / h + (double)kx * x / w);
                    sr += Fr[ky * w + kx] * cos(ph) - Fi[ky * w + kx] * sin(ph);
                    si += Fr[ky * w + kx] * sin(ph) + Fi[ky * w + kx] * cos(ph);
                }
            g1[y * w + x] = sr / n;
            g2[y * w + x] = si / n;
        }
    free(Fr);
    free(Fi);
}

static void test_operators(void) {
    /* brute-force reference on small grids: even (with Nyquist cells), odd, non-square */
    int sizes[3][2] = {{6, 8}, {5, 7}, {8, 8}};
    for (int t = 0; t < 3; t++) {
        int h = sizes[t][0], w = sizes[t][1], n = h * w;
        lss_grid *g;
        CHECK_OK(lss_grid_create(h, w, 1.0, &g));
        float *kE = fmalloc(n), *kB = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n);
        double *r1 = dmalloc(n), *r2 = dmalloc(n), md = 0, mr = 0;
        white(n, 10 + t, kE);
        white(n, 20 + t, kB);
        CHECK_OK(lss_mm_kappa_to_shear(g, kE, kB, g1, g2));
        ref_k2g(h, w, kE, kB, r1, r2);
        for (int i = 0; i < n; i++) {
            md = fmax(md, fmax(fabs(g1[i] - r1[i]), fabs(g2[i] - r2[i])));
            mr = fmax(mr, fmax(fabs(r1[i]), fabs(r2[i])));
        }
        CHECK(md <= 1e-5 * mr, "kappa->shear %dx%d vs brute-force DFT: max diff %.3g (scale %.3g)", h, w, md, mr);
        free(kE); free(kB); free(g1); free(g2); free(r1); free(r2);
        lss_grid_free(g);
    }
    /* round trips on a 64 x 48 grid: gamma -> kappa -> gamma for an E-mode field, pure B to zero E */
    {
        int h = 64, w = 48, n = h * w;
        lss_grid *g;
        CHECK_OK(lss_grid_create(h, w, 0.5, &g));
        float *k = fmalloc(n), *kb = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n), *k2 = fmalloc(n), *kb2 = fmalloc(n);
        float *h1 = fmalloc(n), *h2 = fmalloc(n);
        white(n, 3, k);
        CHECK_OK(lss_mm_kappa_to_shear(g, k, NULL, g1, g2));    /* an E-mode shear field */
        CHECK_OK(lss_mm_shear_to_kappa(g, g1, g2, k2, kb2));
        CHECK_OK(lss_mm_kappa_to_shear(g, k2, kb2, h1, h2));
        double sc = fmax(maxabs(n, g1), maxabs(n, g2));
        CHECK(maxdiff(n, g1, h1) <= 1e-5 * sc && maxdiff(n, g2, h2) <= 1e-5 * sc,
              "gamma -> kappa -> gamma: max diff %.3g, %.3g (scale %.3g)", maxdiff(n, g1, h1), maxdiff(n, g2, h2), sc);
        demean(n, k);
        CHECK(maxdiff(n, k, k2) <= 1e-5 * maxabs(n, k), "kappa_E recovered (mean removed): diff %.3g", maxdiff(n, k, k2));
        CHECK(maxabs(n, kb2) <= 1e-5 * maxabs(n, k), "E field gives no B: %.3g", maxabs(n, kb2));
        /* pure B */
        float *zero = fmalloc(n);
        white(n, 4, kb);
        CHECK_OK(lss_mm_kappa_to_shear(g, zero, kb, g1, g2));
        CHECK_OK(lss_mm_shear_to_kappa(g, g1, g2, k2, kb2));
        CHECK(maxabs(n, k2) <= 1e-5 * maxabs(n, kb), "pure B field maps to zero E: max |kE| %.3g", maxabs(n, k2));
        demean(n, kb);
        CHECK(maxdiff(n, kb, kb2) <= 1e-5 * maxabs(n, kb), "B recovered: %.3g", maxdiff(n, kb, kb2));
        /* unitarity: |gamma|^2 = |kappa|^2 for zero-mean fields (Parseval) */
        double s1 = 0, s2 = 0;
        for (int i = 0; i < n; i++) s1 += (double)g1[i] * g1[i] + (double)g2[i] * g2[i], s2 += (double)kb[i] * kb[i];
        CHECK_REL(s1, s2, 1e-5, "P is unitary (sum gamma^2 = sum kappa^2)");
        /* smoothing a delta: unit sum and variance sigma^2 per axis */
        memset(k, 0, sizeof(float) * n);
        k[(h / 2) * w + w / 2] = 1.0f;
        CHECK_OK(lss_grid_smooth(g, k, k2, 1.0)); /* 1 arcmin = 2 pixels */
        double sum = 0, vx = 0, vy = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double v = k2[y * w + x];
                sum += v;
                vx += v * (x - w / 2) * (x - w / 2);
                vy += v * (y - h / 2) * (y - h / 2);
            }
        CHECK_CLOSE(sum, 1.0, 0, 1e-5, "smoothed delta sums to 1");
        CHECK_CLOSE(vx, 4.0, 1e-3, 0, "smoothing variance along x (sigma = 2 px)");
        CHECK_CLOSE(vy, 4.0, 1e-3, 0, "smoothing variance along y");
        CHECK_ERR(lss_grid_smooth(g, k, k2, -1.0), LSS_ERR_ARG);
        free(k); free(kb); free(g1); free(g2); free(k2); free(kb2); free(h1); free(h2); free(zero);
        lss_grid_free(g);
    }
    {
        lss_grid *g = NULL;
        CHECK_ERR(lss_grid_create(1, 8, 1.0, &g), LSS_ERR_ARG);
        CHECK_ERR(lss_grid_create(8, 8, 0.0, &g), LSS_ERR_ARG);
        CHECK(g == NULL, "no grid on failure");
    }
}

/* COSMOS-like convergence spectrum from the theory part of lss_maps.h */
static int theory(double *ell, double *cl, int n) {
    for (int i = 0; i < n; i++) ell[i] = pow(10, 1 + 4.5 * i / (n - 1));
    return lss_mm_theory_ckk(NULL, "cosmos", n, ell, cl);
}

static void test_fields(void) {
    int h = 64, w = 64, n = h * w, nreal = asan_mode() ? 8 : 24, nb = 8;
    double ell[120], cl[120];
    CHECK_OK(theory(ell, cl, 120));
    lss_grid *g;
    CHECK_OK(lss_grid_create(h, w, 1.0, &g));
    double *pk = dmalloc(n), *pg = dmalloc(n), th[8], acc[8] = {0}, acc2[8] = {0}, cnt[8] = {0};
    CHECK_OK(lss_grid_spectrum(g, ell, cl, 120, pk));
    CHECK(pk[0] == 0.0, "k = 0 cell of the grid spectrum is 0");
    {   /* interpolation at one cell: (ky, kx) = (0, 3) has ell = 2 pi 3/64 / pix */
        double l = lss_grid_ell(g, 3), pix = M_PI / 180 / 60;
        CHECK_REL(l, 2 * M_PI * 3.0 / 64 / pix, 1e-12, "ell of a Fourier cell");
        int j = 0;
        while (ell[j + 1] < l) j++;
        double c = cl[j] + (cl[j + 1] - cl[j]) * (l - ell[j]) / (ell[j + 1] - ell[j]);
        CHECK_REL(pk[3], c / (pix * pix), 1e-12, "P_pix = C_ell / pix^2");
    }
    double edges[9];
    CHECK_OK(lss_grid_ps_edges(g, nb, edges));
    CHECK_OK(lss_grid_bin_spectrum(g, pk, edges, nb, th));
    /* the binned spectrum of Gaussian fields converges to the binned theory: per bin the estimate
       of nreal maps has relative std sqrt(2 / (modes per bin * nreal)) (half the cells are
       independent for a real field); tolerance 5 sigma */
    float *f = fmalloc(n);
    for (int r = 0; r < nreal; r++) {
        double c[8];
        CHECK_OK(lss_field_gaussian(g, pk, 5, (uint64_t)r, f));
        CHECK_OK(lss_grid_ps(g, f, NULL, edges, nb, NULL, c));
        for (int b = 0; b < nb; b++) acc[b] += c[b] / nreal;
    }
    {   /* the binning convention coded independently: edge_b <= ell < edge_b+1, log edges from the
           fundamental to the Nyquist multipole (the Nyquist modes included), mean ell per bin */
        double lmin = 2 * M_PI / (64 * M_PI / 180 / 60), lmax = M_PI / (M_PI / 180 / 60), lsum[8] = {0}, em[8], c[8];
        for (int b = 0; b <= nb; b++) CHECK_REL(edges[b], lmin * pow(lmax / lmin, (double)b / nb), 2e-9, "log-spaced edge");
        for (int64_t i = 1; i < n; i++) {
            double l = lss_grid_ell(g, i);
            for (int b = 0; b < nb; b++)
                if (l >= edges[b] && l < edges[b + 1]) cnt[b] += 1, lsum[b] += l;
        }
        CHECK_OK(lss_grid_ps(g, f, NULL, edges, nb, em, c));
        for (int b = 0; b < nb; b++) CHECK_REL(em[b], lsum[b] / cnt[b], 1e-12, "mean ell of a bin's modes");
        CHECK_ERR(lss_grid_ps(g, f, NULL, edges, 0, NULL, c), LSS_ERR_ARG);
    }
    for (int b = 0; b < nb; b++) {
        double tol = 5 * sqrt(2.0 / (cnt[b] * nreal)) * 1.5;  /* 1.5: spectrum varies inside a bin */
        CHECK_CLOSE(acc[b], th[b], tol, 0, "Gaussian field power spectrum in a bin");
    }
    /* lognormal: target spectrum reproduced, one-point floor -lambda respected */
    double lambda = 0.03;
    CHECK_OK(lss_field_lognormal_spectrum(g, pk, lambda, pg));
    double fmin = 1e9;
    for (int b = 0; b < nb; b++) acc2[b] = 0;
    for (int r = 0; r < nreal; r++) {
        double c[8];
        CHECK_OK(lss_field_lognormal(g, pg, lambda, 6, (uint64_t)r, f));
        for (int i = 0; i < n; i++) fmin = fmin < f[i] ? fmin : f[i];
        CHECK_OK(lss_grid_ps(g, f, NULL, edges, nb, NULL, c));
        for (int b = 0; b < nb; b++) acc2[b] += c[b] / nreal;
    }
    for (int b = 0; b < nb; b++) {
        /* non-Gaussian fields scatter more: tolerance doubled */
        double tol = 10 * sqrt(2.0 / (cnt[b] * nreal)) * 1.5;
        CHECK_CLOSE(acc2[b], th[b], tol, 0, "lognormal field power spectrum in a bin");
    }
    CHECK(fmin > -lambda * 1.5, "lognormal field bounded below (min %g, shift %g; mean removal moves it)", fmin, lambda);
    /* errors */
    double badell[2] = {10, 5}, badcl[2] = {1, 1};
    CHECK_ERR(lss_grid_spectrum(g, badell, badcl, 2, pk), LSS_ERR_ARG);
    free(f); free(pk); free(pg);
    lss_grid_free(g);
}

/* Dense reference of the Wiener system (S^-1 + A^T W A) from real-space kernels computed by direct
 * DFT sums, solved by Cholesky. */
static void dense_wiener(int h, int w, const double *pk, const float *nvar, const float *g1, const float *g2,
                         double *M, double *x) {
    int n = h * w;
    double *ks = dmalloc(n), *k1 = dmalloc(n), *k2 = dmalloc(n), *b = dmalloc(n);
    /* kernels as functions of the separation (dy, dx) mod (h, w):
       S^-1: (1/n) sum_k e^{ik.d}/P_k (prior support), A_1 = Re, A_2 = Im of (1/n) sum_k P(k) e^{ik.d} */
    for (int dy = 0; dy < h; dy++)
        for (int dx = 0; dx < w; dx++) {
            double s = 0, a1 = 0, a2 = 0;
            for (int ky = 0; ky < h; ky++)
                for (int kx = 0; kx < w; kx++) {
                    int i = ky * w + kx;
                    double ph = 2 * M_PI * ((double)ky * dy / h + (double)kx * dx / w), fx, fy;
                    ref_kxy(ky, kx, h, w, &fx, &fy);
                    double k2v = fx * fx + fy * fy;
                    if (k2v == 0) continue;
                    double p1 = (fx * fx - fy * fy) / k2v, p2 = 2 * fx * fy / k2v;
                    if (pk[i] > 0) s += cos(ph) / pk[i];
                    a1 += p1 * cos(ph) - p2 * sin(ph);
                    a2 += p2 * cos(ph) + p1 * sin(ph);
                }
            ks[dy * w + dx] = s / n;
            k1[dy * w + dx] = a1 / n;
            k2[dy * w + dx] = a2 / n;
        }
    /* A[(c, j), i] = K_c(r_j - r_i); M = S^-1 + sum_j A_j^T w_j A_j; b = A^T W g */
    for (int i = 0; i < n; i++) {
        int yi = i / w, xi = i % w;
        for (int l = 0; l < n; l++) {
            int yl = l / w, xl = l % w;
            M[(int64_t)i * n + l] = ks[((yi - yl + h) % h) * w + (xi - xl + w) % w];
        }
    }
    for (int j = 0; j < n; j++) {
        int yj = j / w, xj = j % w;
        double wj = 1.0 / nvar[j];
        double *c1 = dmalloc(n), *c2 = dmalloc(n);
        for (int i = 0; i < n; i++) {
            int yi = i / w, xi = i % w, d = ((yj - yi + h) % h) * w + (xj - xi + w) % w;
            c1[i] = k1[d];
            c2[i] = k2[d];
        }
        for (int i = 0; i < n; i++) {
            double a = wj * c1[i], bb = wj * c2[i];
            b[i] += a * g1[j] + bb * g2[j];
            double *row = M + (int64_t)i * n;
            for (int l = 0; l < n; l++) row[l] += a * c1[l] + bb * c2[l];
        }
        free(c1);
        free(c2);
    }
    /* the k = 0 mode is outside the prior's support: add the projector onto it (mean fixed at 0) */
    for (int i = 0; i < n; i++)
        for (int l = 0; l < n; l++) M[(int64_t)i * n + l] += 1.0 / n;
    /* Cholesky */
    double *L = dmalloc((int64_t)n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double s = M[(int64_t)i * n + j];
            for (int k = 0; k < j; k++) s -= L[(int64_t)i * n + k] * L[(int64_t)j * n + k];
            if (i == j) L[(int64_t)i * n + i] = sqrt(s);
            else L[(int64_t)i * n + j] = s / L[(int64_t)j * n + j];
        }
    for (int i = 0; i < n; i++) {
        double s = b[i];
        for (int k = 0; k < i; k++) s -= L[(int64_t)i * n + k] * x[k];
        x[i] = s / L[(int64_t)i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = x[i];
        for (int k = i + 1; k < n; k++) s -= L[(int64_t)k * n + i] * x[k];
        x[i] = s / L[(int64_t)i * n + i];
    }
    /* M now receives its inverse's diagonal in the first n entries (posterior variances) */
    for (int c = 0; c < n; c++) {
        double *e = dmalloc(n);
        e[c] = 1;
        for (int i = 0; i < n; i++) {
            double s = e[i];
            for (int k = 0; k < i; k++) s -= L[(int64_t)i * n + k] * e[k];
            e[i] = s / L[(int64_t)i * n + i];
        }
        double v = 0;
        for (int i = c; i < n; i++) v += e[i] * e[i];
        M[c] = v - 1.0 / n; /* minus the variance of the fixed mean mode's stand-in */
        free(e);
    }
    free(L); free(ks); free(k1); free(k2); free(b);
}

static void setup_cosmos_like(int h, int w, double pix, lss_grid **g, double **pk) {
    double ell[120], cl[120];
    CHECK_OK(theory(ell, cl, 120));
    CHECK_OK(lss_grid_create(h, w, pix, g));
    *pk = dmalloc(h * w);
    CHECK_OK(lss_grid_spectrum(*g, ell, cl, 120, *pk));
}

static void test_wiener(void) {
    int h = asan_mode() ? 16 : 32, w = h, n = h * w;
    lss_grid *g;
    double *pk;
    setup_cosmos_like(h, w, 2.0, &g, &pk);
    float *kap = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n), *nv = fmalloc(n), *mask = fmalloc(n);
    float *wf = fmalloc(n), *wi = fmalloc(n);
    CHECK_OK(lss_field_gaussian(g, pk, 11, 0, kap));
    /* uniform noise: exact Fourier Wiener = iterative solution */
    for (int i = 0; i < n; i++) nv[i] = 3e-4f;
    CHECK_OK(lss_mm_mock_shear(g, kap, nv, 12, 0, g1, g2));
    double pstd;
    int it;
    double rel;
    CHECK_OK(lss_mm_wiener_fourier(g, pk, g1, g2, 3e-4, wf, &pstd));
    CHECK_OK(lss_mm_wiener(g, pk, g1, g2, nv, NULL, wi, &it, &rel));
    CHECK(maxdiff(n, wf, wi) <= 1e-5 * maxabs(n, wf), "PCG = exact Fourier Wiener for uniform noise: diff %.3g of %.3g (%d iterations)", maxdiff(n, wf, wi), maxabs(n, wf), it);
    /* masked, varying noise: PCG against the dense direct solve */
    lss_mm_survey_opts so = {0};
    so.ngal_arcmin2 = 30;
    CHECK_OK(lss_mm_mock_mask(h, w, &so, 3, mask));
    float *cnt = fmalloc(n);
    CHECK_OK(lss_mm_mock_noise_map(g, mask, &so, 4, cnt, nv));
    int nobs = 0;
    for (int i = 0; i < n; i++) nobs += mask[i] > 0;
    CHECK(nobs > 0.4 * n && nobs < 0.7 * n, "mock mask observes about half the pixels (%d of %d)", nobs, n);
    CHECK_OK(lss_mm_mock_shear(g, kap, nv, 13, 0, g1, g2));
    lss_mm_wiener_opts wo = {0};
    wo.tol = 1e-10;
    CHECK_OK(lss_mm_wiener(g, pk, g1, g2, nv, &wo, wi, &it, &rel));
    double *M = dmalloc((int64_t)n * n), *x = dmalloc(n), md = 0, mx = 0;
    dense_wiener(h, w, pk, nv, g1, g2, M, x);
    for (int i = 0; i < n; i++) md = fmax(md, fabs(wi[i] - x[i])), mx = fmax(mx, fabs(x[i]));
    CHECK(md <= 1e-4 * mx, "masked PCG Wiener vs dense direct solve (%dx%d): max diff %.3g of %.3g (%d iterations)", h, w, md, mx, it);
    printf("  masked Wiener %dx%d: PCG %d iterations, max |PCG - dense| / max |dense| = %.2e\n", h, w, it, md / mx);
    /* constrained realisations: (sample - WF) has the dense posterior variance */
    {
        int ns = 60;
        float *smp = fmalloc(n);
        double *v = dmalloc(n), ratio = 0;
        for (int s = 0; s < ns; s++) {
            CHECK_OK(lss_mm_wiener_sample(g, pk, g1, g2, nv, NULL, 21, (uint64_t)s, smp));
            for (int i = 0; i < n; i++) v[i] += (double)(smp[i] - wi[i]) * (smp[i] - wi[i]) / ns;
        }
        for (int i = 0; i < n; i++) ratio += v[i] / M[i] / n;
        /* mean over pixels of a chi^2_ns / ns ratio: std about sqrt(2/ns)/sqrt(n_eff); 10% is > 4 sigma */
        CHECK_CLOSE(ratio, 1.0, 0.1, 0, "Wiener samples have the posterior variance (mean ratio over pixels)");
        free(smp); free(v);
    }
    CHECK_ERR(lss_mm_wiener_fourier(g, pk, g1, g2, -1.0, wf, NULL), LSS_ERR_ARG);
    nv[3] = 0.0f;
    CHECK_ERR(lss_mm_wiener(g, pk, g1, g2, nv, NULL, wi, NULL, NULL), LSS_ERR_ARG);
    free(M); free(x); free(cnt);
    free(kap); free(g1); free(g2); free(nv); free(mask); free(wf); free(wi); free(pk);
    lss_grid_free(g);
}

/* Section 7.1: with the Gaussian prior and uniform noise, annealed HMC + ODE samples reproduce the
 * exact Wiener posterior. */
static void test_gaussian_validation(void) {
    int h = 32, w = 32, n = h * w, ns = 256, nb = 6;
    /* 2 arcmin pixels with shape noise of variance 3e-5 per pixel: the signal-to-noise per Fourier
       cell stays above ~1 over the whole grid, so the mean of 256 samples resolves every ell bin */
    double nvar = 3e-5;
    lss_grid *g;
    double *pk;
    setup_cosmos_like(h, w, 2.0, &g, &pk);
    float *kap = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n), *nv = fmalloc(n), *wf = fmalloc(n);
    float *smp = fmalloc((int64_t)ns * n), *mean = fmalloc(n), *sd = fmalloc(n), *res = fmalloc(n);
    for (int i = 0; i < n; i++) nv[i] = (float)nvar;
    CHECK_OK(lss_field_gaussian(g, pk, 31, 0, kap));
    CHECK_OK(lss_mm_mock_shear(g, kap, nv, 32, 0, g1, g2));
    double pstd;
    CHECK_OK(lss_mm_wiener_fourier(g, pk, g1, g2, nvar, wf, &pstd));
    lss_mm_post *post;
    CHECK_OK(lss_mm_post_create(g, pk, g1, g2, nv, &post));
    lss_mm_sample_opts so = {0};
    so.nchains = ns;
    so.seed = 5;
    /* a short schedule (13 levels, 34 HMC steps) with the Fourier mass matrix; the last temperature
       (1e-3, variance 1e-6) lies well below the noise variance, then the ODE runs to t = 0 */
    CHECK_OK(lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &so));
    so.sigma_max = 0.3;
    so.sigma_min = 1e-3;
    so.ode_t_end = -1;
    lss_mm_sample_stats st;
    CHECK_OK(lss_mm_sample(post, &so, smp, &st));
    printf("  %d chains: %lld levels, %lld HMC steps, acceptance %.3f, %.1f score evaluations per sample "
           "(%.1f HMC + %.1f ODE, %lld ODE steps), %.2f s\n", ns, (long long)st.levels, (long long)st.hmc_steps,
           st.accept_rate, st.evals_per_chain, st.hmc_evals_per_chain, st.ode_evals_per_chain, (long long)st.ode_steps, st.seconds);
    CHECK_OK(lss_mm_mean_std(ns, n, smp, mean, sd));
    for (int i = 0; i < n; i++) res[i] = mean[i] - wf[i];
    double rr = rms(n, res) / rms(n, wf);
    /* expected sampling error of the mean: pstd / sqrt(ns) per pixel */
    printf("  posterior mean vs Wiener: residual RMS %.4f of the Wiener RMS (sampling noise alone %.4f)\n", rr,
           pstd / sqrt(ns) / rms(n, wf));
    CHECK(rr <= 0.05, "posterior mean matches the Wiener filter: residual RMS %.4f of Wiener RMS", rr);
    double ps_m[6], ps_w[6], edges[7];
    CHECK_OK(lss_grid_ps_edges(g, nb, edges));
    CHECK_OK(lss_grid_ps(g, mean, NULL, edges, nb, NULL, ps_m));
    CHECK_OK(lss_grid_ps(g, wf, NULL, edges, nb, NULL, ps_w));
    for (int b = 0; b < nb; b++) {
        printf("  bin %d: power ratio mean/Wiener %.4f\n", b, ps_m[b] / ps_w[b]);
        CHECK_CLOSE(ps_m[b] / ps_w[b], 1.0, 0, 0.05, "posterior-mean / Wiener power in an ell bin");
    }
    double sdm = 0, within = 0;
    for (int i = 0; i < n; i++) {
        sdm += sd[i] / pstd / n;
        within += fabs(sd[i] / pstd - 1) <= 0.1;
    }
    printf("  posterior std / analytic: mean %.4f, fraction of pixels within 10%% %.3f\n", sdm, within / n);
    CHECK_CLOSE(sdm, 1.0, 0, 0.1, "per-pixel posterior std matches the analytic Wiener posterior std (pixel mean)");
    /* per pixel: a std from ns samples has relative error 1/sqrt(2 ns) = 4.4% for 256: 10% is 2.3
       sigma, so at least 90% of pixels must lie within 10% */
    CHECK(within / n >= 0.9, "per-pixel std within 10%% for %.3f of pixels", within / n);
    free(kap); free(g1); free(g2); free(nv); free(wf); free(smp); free(mean); free(sd); free(res); free(pk);
    lss_mm_post_free(post);
    lss_grid_free(g);
}


static void test_binning(void) {
    /* 5 galaxies on a 4 x 3 grid in pixel coordinates, known per-pixel means and variances */
    double x[5] = {0.2, 0.7, 2.5, 2.9, 1.5}, y[5] = {0.1, 0.9, 3.5, 3.2, 1.0}, e1[5] = {0.1, 0.3, -0.2, 0.4, 0.05},
           e2[5] = {0.0, 0.2, 0.1, 0.1, -0.3}, wt[5] = {1, 1, 1, 3, 1};
    lss_mm_catalogue cat = {5, 0, x, y, e1, e2, wt};
    lss_mm_bin_opts bo = {0};
    bo.h = 4;
    bo.w = 3;
    bo.sigma_e = 0.3;
    float g1[12], g2[12], nv[12], cnt[12];
    int h, w;
    int64_t drop;
    double se;
    CHECK_OK(lss_mm_bin(&cat, &bo, &h, &w, g1, g2, nv, cnt, &drop, &se));
    CHECK(h == 4 && w == 3 && drop == 0, "grid 4 x 3, nothing dropped (got %d x %d, %lld)", h, w, (long long)drop);
    CHECK_CLOSE(g1[0], 0.2, 0, 1e-6, "pixel (0,0) mean e1 of two galaxies");
    CHECK_CLOSE(g2[0], 0.1, 0, 1e-6, "pixel (0,0) mean e2");
    CHECK_CLOSE(nv[0], 0.09 / 2, 1e-6, 0, "pixel (0,0) variance sigma_e^2 / 2");
    CHECK_CLOSE(cnt[0], 2, 0, 0, "pixel (0,0) count");
    /* pixel (3, 2): weights 1 and 3: mean (−0.2 + 1.2)/4, variance 0.09 (1 + 9)/16 */
    CHECK_CLOSE(g1[3 * 3 + 2], 0.25, 0, 1e-6, "weighted mean e1");
    CHECK_CLOSE(nv[3 * 3 + 2], 0.09 * 10.0 / 16.0, 1e-6, 0, "weighted variance sigma_e^2 sum w^2 / (sum w)^2");
    CHECK_CLOSE(g1[1 * 3 + 1], 0.05, 0, 1e-6, "single galaxy");
    CHECK(nv[2] == (float)LSS_MM_EMPTY_VAR && g1[2] == 0.0f, "empty pixel: shear 0, variance 1e10");
    /* outside galaxies are dropped; sigma_e estimated when not given */
    x[4] = 7.0;
    bo.sigma_e = 0;
    CHECK_OK(lss_mm_bin(&cat, &bo, &h, &w, g1, g2, nv, cnt, &drop, &se));
    CHECK(drop == 1, "one galaxy outside the grid dropped (%lld)", (long long)drop);
    {
        double m2 = 0, ws = 0;
        for (int i = 0; i < 4; i++) m2 += wt[i] * 0.5 * (e1[i] * e1[i] + e2[i] * e2[i]), ws += wt[i];
        CHECK_REL(se, sqrt(m2 / ws), 1e-12, "sigma_e estimated from the weighted ellipticities");
    }
    /* ra/dec: pixel of 0.29 arcmin, origin at the minimum, x scaled by cos(dec) */
    {
        double ra[2] = {150.0, 150.0 + 10.5 * 0.29 / 60 / cos((2.2 + 2.75 * 0.29 / 60) * M_PI / 180)}, dec[2] = {2.2, 2.2 + 5.5 * 0.29 / 60},
               a1[2] = {0.1, 0.2}, a2[2] = {0, 0}, ww[2] = {1, 1};
        lss_mm_catalogue c2 = {2, 1, ra, dec, a1, a2, ww};
        lss_mm_bin_opts b2 = {0};
        int hh, www;
        CHECK_OK(lss_mm_bin(&c2, &b2, &hh, &www, NULL, NULL, NULL, NULL, NULL, NULL));
        CHECK(hh == 6 && www == 11, "ra/dec bounding box %d x %d (want 6 x 11)", hh, www);
    }
    /* CSV and NPY catalogue files */
    {
        const char *csv = "build/test_massmap_cat.csv", *npy = "build/test_massmap_cat.npy";
        FILE *f = fopen(csv, "w");
        CHECK(f != NULL, "cannot write %s", csv);
        if (!f) return;
        fprintf(f, "x,y,e1,e2,weight\n0.5,0.5,0.1,0.2,2\n1.5,0.5,-0.1,0.0,1\n");
        fclose(f);
        lss_mm_catalogue c3;
        CHECK_OK(lss_mm_catalogue_load(csv, 0, &c3));
        CHECK(c3.n == 2 && c3.w[0] == 2 && c3.e2[0] == 0.2 && !c3.radec, "CSV catalogue read");
        lss_mm_catalogue_free(&c3);
        double arr[8] = {0.5, 0.5, 0.1, 0.2, 1.5, 0.5, -0.1, 0.0};
        int64_t shp[2] = {2, 4};
        CHECK_OK(lss_npy_save(npy, LSS_F64, 2, shp, arr));
        CHECK_OK(lss_mm_catalogue_load(npy, 0, &c3));
        CHECK(c3.n == 2 && c3.w[1] == 1 && c3.e1[1] == -0.1, "NPY catalogue read");
        lss_mm_catalogue_free(&c3);
        f = fopen(csv, "w");
        CHECK(f != NULL, "cannot write %s", csv);
        if (!f) return;
        fprintf(f, "a,b\n1,2\n");
        fclose(f);
        CHECK_ERR(lss_mm_catalogue_load(csv, 0, &c3), LSS_ERR_FORMAT);
        int64_t shp3[2] = {2, 3};
        CHECK_OK(lss_npy_save(npy, LSS_F64, 2, shp3, arr));
        CHECK_ERR(lss_mm_catalogue_load(npy, 0, &c3), LSS_ERR_SHAPE);
    }
    /* shear map files: [2, H, W] and field 1 of [K, 2, H, W] */
    {
        float st[2 * 2 * 2 * 3], *gl;
        int64_t s4[4] = {2, 2, 2, 3};
        int hh, ww;
        for (int i = 0; i < 24; i++) st[i] = (float)i;
        CHECK_OK(lss_npy_save("build/test_massmap_shear.npy", LSS_F32, 4, s4, st));
        CHECK_OK(lss_mm_shear_load("build/test_massmap_shear.npy", 1, &gl, &hh, &ww));
        CHECK(hh == 2 && ww == 3 && gl[0] == 12.0f && gl[11] == 23.0f, "field 1 of a shear stack");
        LSS_FREE(gl);
        CHECK_ERR(lss_mm_shear_load("build/test_massmap_shear.npy", 2, &gl, &hh, &ww), LSS_ERR_SHAPE);
        st[13] = NAN;
        CHECK_OK(lss_npy_save("build/test_massmap_shear.npy", LSS_F32, 4, s4, st));
        CHECK_ERR(lss_mm_shear_load("build/test_massmap_shear.npy", 1, &gl, &hh, &ww), LSS_ERR_FORMAT);
        CHECK_OK(lss_mm_shear_load("build/test_massmap_shear.npy", 0, &gl, &hh, &ww)); /* field 0 is finite */
        CHECK(gl[0] == 0.0f && gl[11] == 11.0f, "field 0 of a shear stack");
        LSS_FREE(gl);
    }
}

/* ---- sky frame: spherical references coded independently of the library */
static double sph_sep(double a1, double d1, double a2, double d2) { /* radians, haversine */
    double r = M_PI / 180, sd = sin(0.5 * (d2 - d1) * r), sa = sin(0.5 * (a2 - a1) * r);
    return 2 * asin(sqrt(sd * sd + cos(d1 * r) * cos(d2 * r) * sa * sa));
}
static double sph_bearing(double a1, double d1, double a2, double d2) { /* from 1 towards 2, north through east */
    double r = M_PI / 180, da = (a2 - a1) * r;
    return atan2(sin(da) * cos(d2 * r), cos(d1 * r) * sin(d2 * r) - sin(d1 * r) * cos(d2 * r) * cos(da));
}
static double wrap360(double a) { a = fmod(a, 360.0); return a < 0 ? a + 360.0 : a; }

static void test_sky(void) {
    /* round trip and the projection against spherical trigonometry, both orientations */
    double centres[4][2] = {{150.0, 2.0}, {30.0, 60.0}, {0.3, -20.0}, {359.9, 59.5}};
    for (int c = 0; c < 4; c++)
        for (int flip = 0; flip < 2; flip++) {
            lss_mm_sky k = {centres[c][0], centres[c][1], 0.5, 120.3, 117.1, flip};
            double worst = 0, wsep = 0, wang = 0, x, y, ra, dec;
            int rok = 1, st = 0;
            for (int a = -10; a <= 10; a++)
                for (int b = -10; b <= 10; b++) {
                    double d = k.dec0 + 0.1 * b, r = wrap360(k.ra0 + 0.1 * a / cos(k.dec0 * M_PI / 180));
                    st |= lss_mm_sky_to_pix(&k, r, d, &x, &y) | lss_mm_pix_to_sky(&k, x, y, &ra, &dec);
                    rok &= ra >= 0 && ra < 360;
                    worst = fmax(worst, sph_sep(r, d, ra, dec) * 180 / M_PI);
                    /* gnomonic: distance tan(separation), direction the bearing (x to the west unless flipped) */
                    double xi = (flip ? 1 : -1) * (x - k.x0) * 0.5 / 60 * M_PI / 180, eta = (y - k.y0) * 0.5 / 60 * M_PI / 180;
                    double sep = sph_sep(k.ra0, k.dec0, r, d);
                    wsep = fmax(wsep, fabs(atan(hypot(xi, eta)) - sep));
                    if (sep > 1e-4) {
                        double dd = atan2(xi, eta) - sph_bearing(k.ra0, k.dec0, r, d);
                        wang = fmax(wang, fabs(atan2(sin(dd), cos(dd))));
                    }
                }
            CHECK(worst < 1e-6, "centre (%g, %g) flip %d: sky -> pixel -> sky within %.2e deg over 2 x 2 deg", k.ra0, k.dec0, flip, worst);
            CHECK(rok && st == 0, "RA returned in [0, 360), every conversion succeeded");
            CHECK(wsep < 1e-10 && wang < 1e-9, "gnomonic distance (%.1e rad) and direction (%.1e rad) from spherical trigonometry", wsep, wang);
            /* orientation: east is left (x decreases) unless flipped, north is up */
            CHECK_OK(lss_mm_sky_to_pix(&k, wrap360(k.ra0 + 0.05), k.dec0, &x, &y));
            CHECK(flip ? x > k.x0 : x < k.x0, "a position east of the centre has x %s x0 (flip %d)", flip ? ">" : "<", flip);
            CHECK_OK(lss_mm_sky_to_pix(&k, k.ra0, k.dec0 + 0.05, &x, &y));
            CHECK(y > k.y0, "north is +y");
        }
    {
        lss_mm_sky k = {10, 20, 1, 0, 0, 0}, bad = {10, 95, 1, 0, 0, 0};
        double x, y;
        CHECK_ERR(lss_mm_sky_to_pix(&k, 190, -20, &x, &y), LSS_ERR_RANGE);
        CHECK_ERR(lss_mm_sky_to_pix(&bad, 10, 20, &x, &y), LSS_ERR_ARG);
        CHECK_ERR(lss_mm_sky_to_pix(&k, NAN, 20, &x, &y), LSS_ERR_ARG);
    }
    /* an NFW halo at a known sky position: a catalogue sheared tangentially on the sphere */
    double halos[2][4] = {{150.0, 2.0, 150.21, 2.13}, {0.0, 60.0, 359.7, 60.25}}; /* field centre, halo */
    for (int c = 0; c < 2; c++) {
        int n = 60000, h = 64, w = 64;
        double ra0 = halos[c][0], dec0 = halos[c][1], rah = halos[c][2], dech = halos[c][3], rs = 2.0, ks = 0.6, pix = 1.5;
        double *ra = dmalloc(n), *dec = dmalloc(n), *e1 = dmalloc(n), *e2 = dmalloc(n), *e2o = dmalloc(n), *wt = dmalloc(n);
        lss_rng r;
        lss_rng_init(&r, 5, 9);
        for (int i = 0; i < n; i++) {
            dec[i] = dec0 + 0.85 * (2 * lss_rng_uniform(&r) - 1);
            ra[i] = wrap360(ra0 + 0.85 * (2 * lss_rng_uniform(&r) - 1) / cos(dec[i] * M_PI / 180));
            double th = sph_sep(rah, dech, ra[i], dec[i]) * 180 / M_PI * 60, gt = ks * lss_mm_nfw_g(fmax(th / rs, 1e-6));
            double phi = M_PI / 2 - sph_bearing(ra[i], dec[i], rah, dech); /* from local east towards north */
            e1[i] = -gt * cos(2 * phi);
            e2[i] = -gt * sin(2 * phi);
            e2o[i] = -e2[i];
            wt[i] = 1;
        }
        lss_mm_catalogue cat = {n, 1, ra, dec, e1, e2, wt};
        lss_mm_bin_opts bo = {0};
        bo.h = h, bo.w = w, bo.pix_arcmin = pix, bo.sigma_e = 0.3, bo.set_centre = 1, bo.ra0 = ra0, bo.dec0 = dec0;
        int64_t np = (int64_t)h * w, drop;
        float *g = fmalloc(2 * np), *go = fmalloc(2 * np), *gf = fmalloc(2 * np), *nv = fmalloc(np), *kE = fmalloc(np), *kB = fmalloc(np);
        lss_mm_sky sky, skyf;
        int hh, ww;
        CHECK_OK(lss_mm_bin_sky(&cat, &bo, &sky, &hh, &ww));
        CHECK(hh == h && ww == w && sky.x0 == 32 && sky.y0 == 32 && sky.ra0 == ra0 && sky.flip_ra == 0, "the frame of the binning");
        CHECK_OK(lss_mm_bin(&cat, &bo, &hh, &ww, g, g + np, nv, NULL, &drop, NULL));
        /* every galaxy's shear on the grid is tangential about the halo's pixel */
        {
            double xh, yh, wc = 0, wt_ = 0;
            int st = 0;
            CHECK_OK(lss_mm_sky_to_pix(&sky, rah, dech, &xh, &yh));
            for (int i = 0; i < n; i++) {
                double x, y, a, b;
                st |= lss_mm_sky_to_pix(&sky, ra[i], dec[i], &x, &y) | lss_mm_sky_shear(&sky, ra[i], dec[i], e1[i], e2[i], &a, &b);
                if (hypot(x - xh, y - yh) * pix < 2) continue;
                double ph = atan2(y - yh, x - xh), gt = -(a * cos(2 * ph) + b * sin(2 * ph)), gx = a * sin(2 * ph) - b * cos(2 * ph);
                double gts = hypot(e1[i], e2[i]);
                wc = fmax(wc, fabs(gx) / gts);
                wt_ = fmax(wt_, fabs(gt / gts - 1));
            }
            printf("  halo at (%g, %g): grid shear about the halo pixel: |cross|/|shear| <= %.2e, |tangential/|shear| - 1| <= %.2e\n", rah,
                   dech, wc, wt_);
            CHECK(st == 0, "every galaxy projected");
            CHECK(wc < 2e-3 && wt_ < 2e-3, "shear tangential on the grid (cross %.2e, tangential %.2e)", wc, wt_);
        }
        /* Kaiser-Squires: positive E peak at the halo, no B mode */
        lss_grid *gr;
        CHECK_OK(lss_grid_create(h, w, pix, &gr));
        CHECK_OK(lss_mm_ks(gr, g, g + np, 2.0, kE, kB));
        int64_t im = 0;
        for (int64_t i = 1; i < np; i++)
            if (kE[i] > kE[im]) im = i;
        double pra, pdec;
        CHECK_OK(lss_mm_pix_to_sky(&sky, im % w + 0.5, im / w + 0.5, &pra, &pdec));
        double off = sph_sep(pra, pdec, rah, dech) * 180 / M_PI * 60, bmax = maxabs(np, kB), emin = 0;
        for (int64_t i = 0; i < np; i++) emin = fmin(emin, kE[i]);
        printf("  KS E peak %.4f at (%.4f, %.4f), %.2f arcmin from the halo; max |B| %.4f, min E %.4f\n", kE[im], pra, pdec, off, bmax, emin);
        CHECK(off < 1.5 * pix, "E peak at the halo (%.2f arcmin away)", off);
        CHECK(kE[im] > 0 && -emin < 0.3 * kE[im], "the peak is positive (%.4f; min E %.4f)", kE[im], emin);
        CHECK(bmax < 0.1 * kE[im], "B small against the E peak (%.4f vs %.4f)", bmax, kE[im]);
        /* the catalogue with e2 of the other handedness and e2_sign = -1: the same maps */
        cat.e2 = e2o;
        bo.e2_sign = -1;
        CHECK_OK(lss_mm_bin(&cat, &bo, &hh, &ww, go, go + np, nv, NULL, &drop, NULL));
        CHECK(memcmp(g, go, sizeof(float) * 2 * np) == 0, "e2 negated with e2_sign -1 gives the same maps");
        /* flip_ra: the mirror image, e2 of the other sign; the peak maps back to the halo */
        cat.e2 = e2;
        bo.e2_sign = 0;
        bo.flip_ra = 1;
        CHECK_OK(lss_mm_bin_sky(&cat, &bo, &skyf, &hh, &ww));
        CHECK_OK(lss_mm_bin(&cat, &bo, &hh, &ww, gf, gf + np, nv, NULL, &drop, NULL));
        double dm = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                dm = fmax(dm, fmax(fabs(gf[y * w + (w - 1 - x)] - g[y * w + x]), fabs(gf[np + y * w + (w - 1 - x)] + g[np + y * w + x])));
        CHECK(dm == 0, "flip_ra: g1(x) = g1(w - 1 - x), g2 negated (max diff %g)", dm);
        CHECK_OK(lss_mm_ks(gr, gf, gf + np, 2.0, kE, kB));
        im = 0;
        for (int64_t i = 1; i < np; i++)
            if (kE[i] > kE[im]) im = i;
        CHECK_OK(lss_mm_pix_to_sky(&skyf, im % w + 0.5, im / w + 0.5, &pra, &pdec));
        CHECK(sph_sep(pra, pdec, rah, dech) * 180 / M_PI * 60 < 1.5 * pix, "flipped map: E peak at the halo");
        bo.e2_sign = 2;
        CHECK_ERR(lss_mm_bin(&cat, &bo, &hh, &ww, gf, gf + np, nv, NULL, &drop, NULL), LSS_ERR_ARG);
        /* the frame written with the output */
        char js[1024];
        CHECK_OK(lss_mm_sky_json(&sky, -1, js, sizeof js));
        CHECK(strstr(js, "\"x_axis\": \"west\"") && strstr(js, "\"ref_pixel_xy\": [32, 32]") && strstr(js, "times -1"), "frame JSON: %s", js);
        CHECK_ERR(lss_mm_sky_json(&sky, 1, js, 40), LSS_ERR_RANGE);
        lss_grid_free(gr);
        free(ra); free(dec); free(e1); free(e2); free(e2o); free(wt); free(g); free(go); free(gf); free(nv); free(kE); free(kB);
    }
}

static void test_metrics(void) {
    float t[6] = {1, 2, 3, 4, 5, 6}, e[6], m[6] = {1, 1, 1, 1, 0, 0};
    double rm, r;
    for (int i = 0; i < 6; i++) e[i] = t[i] + 10;
    CHECK_OK(lss_mm_metrics(6, e, t, NULL, &rm, &r));
    CHECK_CLOSE(rm, 0, 0, 1e-12, "RMSE ignores the mean");
    CHECK_CLOSE(r, 1, 0, 1e-12, "Pearson r of a shifted map");
    for (int i = 0; i < 6; i++) e[i] = -t[i];
    CHECK_OK(lss_mm_metrics(6, e, t, m, &rm, &r));
    CHECK_CLOSE(r, -1, 0, 1e-12, "Pearson r of a flipped map");
    /* over pixels 0..3: centred truth (-1.5,-0.5,0.5,1.5), centred est = -that: rmse = 2 sqrt(5/4) */
    CHECK_CLOSE(rm, 2 * sqrt(1.25), 1e-12, 0, "RMSE over observed pixels only");
    CHECK_ERR(lss_mm_metrics(0, e, t, NULL, &rm, &r), LSS_ERR_ARG);
}

static void test_nfw(void) {
    /* gamma_t(x) = mean kappa inside x - kappa(x), i.e. g(x) = (4/x^2) int_0^x f(u) u du - 2 f(x) */
    double xs[5] = {0.2, 0.7, 0.99999, 1.5, 4.0};
    for (int k = 0; k < 5; k++) {
        double x = xs[k], s = 0;
        int m = 200000;
        for (int i = 0; i < m; i++) {
            double u = (i + 0.5) * x / m;
            s += lss_mm_nfw_f(u) * u * x / m;
        }
        double gref = 4 * s / (x * x) - 2 * lss_mm_nfw_f(x);
        CHECK_CLOSE(lss_mm_nfw_g(x), gref, 2e-4, 1e-6, "NFW shear = mean convergence inside - convergence");
    }
    CHECK_CLOSE(lss_mm_nfw_f(1 - 1e-4), lss_mm_nfw_f(1 + 1e-4), 1e-3, 0, "f continuous at x = 1");
    CHECK_CLOSE(lss_mm_nfw_g(1 - 1e-4), lss_mm_nfw_g(1 + 1e-4), 1e-3, 0, "g continuous at x = 1");
    /* a 3e14 Msun, c = 1 halo at z = 0.5 seen from z_s = 1 */
    lss_params p;
    lss_cosmo *c;
    lss_params_fiducial(&p);
    CHECK_OK(lss_cosmo_create(&p, &c));
    lss_mm_nfw hl = {3e14, 1.0, 0.5, 1.0};
    double rs, ks;
    CHECK_OK(lss_mm_nfw_params(c, &hl, &rs, &ks));
    printf("  NFW 3e14 Msun, c = 1, z = 0.5 -> z_s = 1: r_s = %.3f arcmin, kappa_s = %.4f\n", rs, ks);
    /* r200 = (3 M / (800 pi rho_c))^(1/3) ~ 1.0-1.2 Mpc at z = 0.5 and D_A ~ 1.2-1.3 Gpc: r_s ~ 3 arcmin */
    CHECK(rs > 2.0 && rs < 4.5 && ks > 0.01 && ks < 0.2, "NFW scale radius %.3f arcmin and kappa_s %.4f plausible", rs, ks);
    lss_mm_nfw bad = {-1, 1, 0.5, 1};
    CHECK_ERR(lss_mm_nfw_params(c, &bad, &rs, &ks), LSS_ERR_RANGE);
    lss_cosmo_free(c);
    /* KS of the injected shear recovers the injected convergence (mean removed, periodic grid) */
    int h = 128, w = 128, n = h * w;
    lss_grid *g;
    CHECK_OK(lss_grid_create(h, w, 0.29, &g));
    float *g1 = fmalloc(n), *g2 = fmalloc(n), *kap = fmalloc(n), *ke = fmalloc(n), *kb = fmalloc(n);
    CHECK_OK(lss_mm_nfw_add(g, 3.0, 0.05, 64.0, 64.0, 4, g1, g2, kap));
    CHECK_OK(lss_mm_shear_to_kappa(g, g1, g2, ke, kb));
    double rmse, r;
    CHECK_OK(lss_mm_metrics(n, ke, kap, NULL, &rmse, &r));
    CHECK(r > 0.97, "KS of NFW shear correlates with the NFW convergence (r = %.4f)", r);
    CHECK(maxabs(n, kb) < 0.05 * maxabs(n, ke), "NFW shear is E-mode (max B %.3g vs E %.3g)", maxabs(n, kb), maxabs(n, ke));
    /* starlet aperture filter: compensated (zero sum), zero on a constant map, peaks on the halo */
    {
        double su = 0, sa = 0;
        for (int dy = -40; dy <= 40; dy++)
            for (int dx = -40; dx <= 40; dx++) {
                double u = lss_mm_starlet_u(sqrt(dx * dx + dy * dy), 16.0);
                su += u;
                sa += fabs(u);
            }
        CHECK(fabs(su) < 2e-3 * sa, "starlet kernel compensated: sum %.3g, sum |U| %.3g", su, sa);
        float *f = fmalloc(n), *o = fmalloc(n);
        for (int i = 0; i < n; i++) f[i] = 0.7f;
        CHECK_OK(lss_mm_starlet_filter(g, f, 16.0, o));
        CHECK(maxabs(n, o) < 2e-3 * 0.7 * sa, "filtered constant map ~ 0 (%.3g)", maxabs(n, o));
        CHECK_OK(lss_mm_starlet_filter(g, kap, 16.0, o));
        int best = 0;
        for (int i = 0; i < n; i++)
            if (o[i] > o[best]) best = i;
        CHECK(abs(best / w - 64) <= 1 && abs(best % w - 64) <= 1, "filtered NFW map peaks at the halo (%d, %d)", best / w, best % w);
        free(f); free(o);
    }
    free(g1); free(g2); free(kap); free(ke); free(kb);
    lss_grid_free(g);
}

/* A tiny end-to-end run: mock fields -> galaxy catalogue -> binning -> KS, Wiener, posterior mean. */
static void test_end_to_end(void) {
    int h = 48, w = 48, n = h * w, nf = 2, ns = 16;
    double ell[120], cl[120], shift, se = LSS_MM_COSMOS_SIGMA_E;
    CHECK_OK(theory(ell, cl, 120));
    CHECK_OK(lss_mm_theory_kappa_empty(NULL, "cosmos", &shift));
    /* empty-beam convergence of a z ~ 1 source population: 0.0644 at z_s = 1 for CCL's cosmology */
    CHECK(shift > 0.04 && shift < 0.12, "empty-beam convergence of the COSMOS n(z): %g", shift);
    lss_grid *g, *big;
    CHECK_OK(lss_grid_create(h, w, 0.29, &g));
    CHECK_OK(lss_grid_create(2 * h, 2 * w, 0.29, &big));
    double *pk = dmalloc(n), *pkb = dmalloc(4 * n), acc[3] = {0}, accr[3] = {0};
    CHECK_OK(lss_grid_spectrum(g, ell, cl, 120, pk));
    CHECK_OK(lss_grid_spectrum(big, ell, cl, 120, pkb));
    float *kap = fmalloc(n), *mask = fmalloc(n), *cnt = fmalloc(n), *nv = fmalloc(n), *t1 = fmalloc(n), *t2 = fmalloc(n);
    float *g1 = fmalloc(n), *g2 = fmalloc(n), *bv = fmalloc(n), *bc = fmalloc(n), *ks = fmalloc(n), *wf = fmalloc(n);
    float *smp = fmalloc((int64_t)ns * n), *mean = fmalloc(n);
    lss_mm_survey_opts so = {0};
    CHECK_OK(lss_mm_mock_mask(h, w, &so, 8, mask));
    CHECK_OK(lss_mm_mock_noise_map(g, mask, &so, 8, cnt, nv));
    for (int f = 0; f < nf; f++) {
        CHECK_OK(lss_mm_mock_kappa(big, pkb, shift, h, w, 9, (uint64_t)f, kap));
        CHECK_OK(lss_mm_kappa_to_shear(g, kap, NULL, t1, t2));
        /* galaxy catalogue: uniform positions inside each pixel, e = gamma + N(0, sigma_e) */
        int64_t ng = 0, j = 0;
        for (int i = 0; i < n; i++) ng += (int64_t)cnt[i];
        double *x = dmalloc(ng), *y = dmalloc(ng), *e1 = dmalloc(ng), *e2 = dmalloc(ng), *wt = dmalloc(ng);
        lss_rng r;
        lss_rng_init(&r, 10, (uint64_t)f);
        for (int i = 0; i < n; i++)
            for (int q = 0; q < (int)cnt[i]; q++, j++) {
                x[j] = i % w + lss_rng_uniform(&r);
                y[j] = i / w + lss_rng_uniform(&r);
                e1[j] = t1[i] + se * lss_rng_normal(&r);
                e2[j] = t2[i] + se * lss_rng_normal(&r);
                wt[j] = 1;
            }
        lss_mm_catalogue cat = {ng, 0, x, y, e1, e2, wt};
        lss_mm_bin_opts bo = {0};
        bo.h = h;
        bo.w = w;
        bo.sigma_e = se;
        CHECK_OK(lss_mm_bin(&cat, &bo, NULL, NULL, g1, g2, bv, bc, NULL, NULL));
        double md = 0;
        for (int i = 0; i < n; i++) md = fmax(md, fabs(bv[i] - nv[i]) / nv[i]);
        CHECK(md < 1e-6, "binned noise variance = sigma_e^2 / N of the mock (max rel diff %.2g)", md);
        free(x); free(y); free(e1); free(e2); free(wt);
        /* estimators */
        double best = 1e9, rb = 0, rm, rr;
        double scales[4] = {0.29, 0.5, 1.0, 2.0};
        for (int k = 0; k < 4; k++) {
            CHECK_OK(lss_mm_ks(g, g1, g2, scales[k], ks, NULL));
            CHECK_OK(lss_mm_metrics(n, ks, kap, mask, &rm, &rr));
            if (rm < best) best = rm, rb = rr;
        }
        acc[0] += best / nf;
        accr[0] += rb / nf;
        CHECK_OK(lss_mm_wiener(g, pk, g1, g2, bv, NULL, wf, NULL, NULL));
        CHECK_OK(lss_mm_metrics(n, wf, kap, mask, &rm, &rr));
        acc[1] += rm / nf;
        accr[1] += rr / nf;
        lss_mm_post *post;
        CHECK_OK(lss_mm_post_create(g, pk, g1, g2, bv, &post));
        lss_mm_sample_opts o = {0};
        o.nchains = ns;
        o.seed = 3 + (uint64_t)f;
        o.sigma_max = 1.0;
        o.anneal = 0.6;
        o.steps_per_level = 2;
        o.final_steps = 10;
        CHECK_OK(lss_mm_sample(post, &o, smp, NULL));
        CHECK_OK(lss_mm_mean_std(ns, n, smp, mean, NULL));
        CHECK_OK(lss_mm_metrics(n, mean, kap, mask, &rm, &rr));
        acc[2] += rm / nf;
        accr[2] += rr / nf;
        lss_mm_post_free(post);
    }
    printf("  end to end (%d fields of %d x %d): RMSE / r  KS %.4f / %.3f  Wiener %.4f / %.3f  posterior mean (%d samples) %.4f / %.3f\n",
           nf, h, w, acc[0], accr[0], acc[1], accr[1], ns, acc[2], accr[2]);
    CHECK(acc[1] <= acc[0], "Wiener RMSE %.4f <= best smoothed KS RMSE %.4f", acc[1], acc[0]);
    CHECK(accr[1] >= accr[0], "Wiener r %.3f >= KS r %.3f", accr[1], accr[0]);
    /* with the Gaussian prior the posterior mean is the Wiener filter up to the Monte Carlo error of
       16 samples (the posterior std is about the Wiener RMSE: RMSE grows by at most sqrt(1 + 1/16)) */
    CHECK(acc[2] <= acc[1] * 1.06, "posterior-mean RMSE %.4f within Monte Carlo error of Wiener %.4f", acc[2], acc[1]);
    free(pk); free(pkb); free(kap); free(mask); free(cnt); free(nv); free(t1); free(t2); free(g1); free(g2);
    free(bv); free(bc); free(ks); free(wf); free(smp); free(mean);
    lss_grid_free(g);
    lss_grid_free(big);
}

/* A known residual: the exact score of N(0, P' + sigma^2) with 1/P' = 1/P + c, minus the Gaussian
 * score the sampler passes in; the posterior is then the Wiener posterior of spectrum P'. */
typedef struct {
    const lss_grid *g;
    double *pk2;
    int calls;
} known_res;
static int known_residual(void *user, int n, const float *x, const float *sg, const float *sigma, float *out) {
    known_res *k = (known_res *)user;
    int64_t np = (int64_t)lss_grid_h(k->g) * lss_grid_w(k->g);
    int s = lss_mm_gauss_score(k->g, k->pk2, n, x, sigma, out, NULL);
    for (int64_t i = 0; i < n * np; i++) out[i] -= sg[i];
    k->calls++;
    return s;
}

static void test_residual_sampling(void) {
    int h = 32, w = 32, n = h * w, ns = 256;
    double nvar = 3e-5;
    lss_grid *g;
    double *pk;
    setup_cosmos_like(h, w, 2.0, &g, &pk);
    double *pk2 = dmalloc(n), pmed = pk[n / 2 + 3];
    for (int i = 0; i < n; i++) pk2[i] = pk[i] > 0 ? 1.0 / (1.0 / pk[i] + 1.0 / pmed) : 0.0;
    float *kap = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n), *nv = fmalloc(n), *wf = fmalloc(n), *wf0 = fmalloc(n);
    float *smp = fmalloc((int64_t)ns * n), *mean = fmalloc(n), *sd = fmalloc(n), *res = fmalloc(n);
    for (int i = 0; i < n; i++) nv[i] = (float)nvar;
    CHECK_OK(lss_field_gaussian(g, pk2, 41, 0, kap));
    CHECK_OK(lss_mm_mock_shear(g, kap, nv, 42, 0, g1, g2));
    double pstd, pstd0;
    CHECK_OK(lss_mm_wiener_fourier(g, pk2, g1, g2, nvar, wf, &pstd));
    CHECK_OK(lss_mm_wiener_fourier(g, pk, g1, g2, nvar, wf0, &pstd0));
    lss_mm_post *post;
    known_res kr = {g, pk2, 0};
    CHECK_OK(lss_mm_post_create(g, pk, g1, g2, nv, &post));
    lss_mm_post_set_residual(post, known_residual, &kr);
    lss_mm_sample_opts so = {0};
    so.nchains = ns;
    so.seed = 6;
    CHECK_OK(lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &so));
    so.sigma_max = 0.3;
    so.sigma_min = 1e-3;
    so.ode_t_end = -1;
    lss_mm_sample_stats st;
    CHECK_OK(lss_mm_sample(post, &so, smp, &st));
    printf("  residual prior (Simpson MH on the residual): acceptance %.3f, %.1f evaluations per sample, %d batch calls\n",
           st.accept_rate, st.evals_per_chain, kr.calls);
    CHECK(st.accept_rate > 0.3, "acceptance with a residual prior %.3f", st.accept_rate);
    CHECK_OK(lss_mm_mean_std(ns, n, smp, mean, sd));
    for (int i = 0; i < n; i++) res[i] = mean[i] - wf[i];
    double rr = rms(n, res) / rms(n, wf), sdm = 0;
    for (int i = 0; i < n; i++) sdm += sd[i] / pstd / n;
    for (int i = 0; i < n; i++) res[i] = wf0[i] - wf[i];
    printf("  mean vs Wiener(P'): residual %.4f of its RMS, Monte Carlo error %.4f (the Wiener filter of P differs by %.4f); std ratio %.4f\n", rr,
           pstd / sqrt((double)ns) / rms(n, wf), rms(n, res) / rms(n, wf), sdm);
    /* the Monte Carlo error of the mean of ns samples alone is pstd / sqrt(ns) per pixel: allow 1.5 x */
    double mc = pstd / sqrt((double)ns) / rms(n, wf);
    CHECK(rr <= 1.5 * mc, "posterior mean with the residual prior = Wiener filter of P' (residual RMS %.4f, Monte Carlo %.4f)", rr, mc);
    CHECK_CLOSE(sdm, 1.0, 0, 0.1, "posterior std with the residual prior = analytic");
    /* the score with a residual = Gaussian score + residual (mean removed) */
    {
        float sig[2] = {0.1f, 0.01f}, *a = fmalloc(2 * n), *b = fmalloc(2 * n), *x = fmalloc(2 * n), *sg = fmalloc(2 * n), *r = fmalloc(2 * n);
        white(2 * n, 51, x);
        for (int i = 0; i < 2 * n; i++) x[i] *= 0.02f;
        CHECK_OK(lss_mm_post_score(post, 2, x, sig, a, NULL));
        lss_mm_post_set_residual(post, NULL, NULL);
        CHECK_OK(lss_mm_post_score(post, 2, x, sig, b, NULL));
        CHECK_OK(lss_mm_gauss_score(g, pk, 2, x, sig, sg, NULL));
        CHECK_OK(known_residual(&kr, 2, x, sg, sig, r));
        for (int j = 0; j < 2; j++) demean(n, r + j * n);
        double md = 0, mr = 0;
        for (int i = 0; i < 2 * n; i++) md = fmax(md, fabs((a[i] - b[i]) - r[i])), mr = fmax(mr, fabs(r[i]));
        CHECK(md <= 1e-3 * mr, "posterior score = Gaussian parts + residual (max diff %.3g of %.3g)", md, mr);
        free(a); free(b); free(x); free(sg); free(r);
    }
    lss_mm_post_free(post);
    free(kap); free(g1); free(g2); free(nv); free(wf); free(wf0); free(smp); free(mean); free(sd); free(res); free(pk); free(pk2);
    lss_grid_free(g);
}

static void test_neural(void) {
    int h = 16, w = 16, n = h * w;
    double ell[120], cl[120], shift;
    CHECK_OK(theory(ell, cl, 120));
    CHECK_OK(lss_mm_theory_kappa_empty(NULL, "cosmos", &shift));
    lss_grid *g, *big;
    CHECK_OK(lss_grid_create(h, w, 1.0, &g));
    CHECK_OK(lss_grid_create(2 * h, 2 * w, 1.0, &big));
    double *pk = dmalloc(n), *pkb = dmalloc(4 * n);
    CHECK_OK(lss_grid_spectrum(g, ell, cl, 120, pk));
    CHECK_OK(lss_grid_spectrum(big, ell, cl, 120, pkb));
    for (int dm = 0; dm < 2; dm++) {
        lss_mm_net *net, *net2;
        lss_mm_net_opts no = {4, dm, 3};
        CHECK_OK(lss_mm_net_create(g, pk, &no, &net));
        float *nv = fmalloc(n);
        for (int i = 0; i < n; i++) nv[i] = (i % 7 == 0) ? (float)LSS_MM_EMPTY_VAR : 0.01f;
        lss_mm_train_opts to = {0};
        int steps = 60;
        double *lossv = dmalloc(steps), fl;
        struct { double *l; } cbu = {lossv};
        (void)cbu;
        to.steps = steps;
        to.batch = 4;
        to.lr = 3e-3;
        to.lambda = shift;
        to.big = big;
        to.pk_big = pkb;
        to.nvar = nv;
        to.seed = 5;
        lss_mm_train_result tres;
        CHECK_OK(lss_mm_net_train(net, &to, &tres));
        fl = tres.final_loss;
        CHECK(isfinite(fl) && fl > 0, "%s training loss finite (%g)", dm ? "DeepMass" : "DSM", fl);
        /* loss of the trained network vs the untrained one on the same batches: training helps */
        {
            lss_mm_net *fresh;
            CHECK_OK(lss_mm_net_create(g, pk, &no, &fresh));
            lss_mm_train_opts t0 = to;
            lss_mm_train_result r0, r1;
            double l0, l1;
            t0.steps = 10;
            t0.lr = 1e-12; /* a step that changes nothing measurable: the loss of the weights as they are */
            t0.seed = 99;
            t0.no_spectral = 1;
            CHECK_OK(lss_mm_net_train(fresh, &t0, &r0));
            l0 = r0.final_loss;
            CHECK_OK(lss_mm_net_save(net, "build/test_massmap_net.ckpt"));
            CHECK_OK(lss_mm_net_create(g, pk, &no, &net2));
            CHECK_OK(lss_mm_net_load(net2, "build/test_massmap_net.ckpt"));
            CHECK_OK(lss_mm_net_train(net2, &t0, &r1));
            l1 = r1.final_loss;
            printf("  %s: loss of the untrained network %.4f, after %d steps %.4f (held-out batches)\n", dm ? "DeepMass" : "DSM", l0, steps, l1);
            CHECK(l1 < l0, "%s training lowers the held-out loss (%.4f -> %.4f)", dm ? "DeepMass" : "DSM", l0, l1);
            lss_mm_net_free(fresh);
            lss_mm_net_free(net2);
        }
        /* checkpoint round trip: the same outputs bit for bit */
        {
            int c0, d2, hh, ww;
            CHECK_OK(lss_mm_net_probe("build/test_massmap_net.ckpt", &c0, &d2, &hh, &ww));
            CHECK(c0 == 4 && d2 == dm && hh == h && ww == w, "checkpoint describes the network (%d %d %d %d)", c0, d2, hh, ww);
            CHECK_OK(lss_mm_net_create(g, pk, &no, &net2));
            CHECK_OK(lss_mm_net_load(net2, "build/test_massmap_net.ckpt"));
            float *x = fmalloc(3 * n), *sg = fmalloc(3 * n), *o1 = fmalloc(3 * n), *o2 = fmalloc(3 * n), sig[3] = {0.5f, -0.05f, 0.01f};
            white(3 * n, 61, x);
            for (int i = 0; i < 3 * n; i++) x[i] *= 0.03f;
            if (!dm) {
                CHECK_OK(lss_mm_gauss_score(g, pk, 3, x, (float[3]){0.5f, 0.05f, 0.01f}, sg, NULL));
                CHECK_OK(lss_mm_net_residual(net, 3, x, sg, sig, o1));
                CHECK_OK(lss_mm_net_residual(net2, 3, x, sg, sig, o2));
                CHECK(maxabs(3 * n, o1) > 0 && isfinite(maxabs(3 * n, o1)), "residual output finite and non-zero");
                CHECK(memcmp(o1, o2, sizeof(float) * 3 * n) == 0, "reloaded score network gives identical outputs");
                CHECK_ERR(lss_mm_net_deepmass(net, x, x, o1), LSS_ERR_ARG);
            } else {
                CHECK_OK(lss_mm_net_deepmass(net, x, x + n, o1));
                CHECK_OK(lss_mm_net_deepmass(net2, x, x + n, o2));
                CHECK(memcmp(o1, o2, sizeof(float) * n) == 0, "reloaded DeepMass network gives identical outputs");
                CHECK_ERR(lss_mm_net_residual(net, 1, x, sg, sig, o1), LSS_ERR_ARG);
            }
            lss_mm_net_free(net2);
            /* a corrupted checkpoint is refused */
            FILE *f = fopen("build/test_massmap_net.ckpt", "r+b");
            CHECK(f != NULL, "cannot reopen the checkpoint");
            if (f) {
                fseek(f, 200, SEEK_SET);
                int ch = fgetc(f);
                fseek(f, 200, SEEK_SET);
                fputc(ch ^ 0x55, f);
                fclose(f);
            }
            CHECK_OK(lss_mm_net_create(g, pk, &no, &net2));
            CHECK(lss_mm_net_load(net2, "build/test_massmap_net.ckpt") != LSS_OK, "corrupted checkpoint refused");
            lss_mm_net_free(net2);
            free(x); free(sg); free(o1); free(o2);
        }
        /* the trained score network inside the sampler (batched, Simpson MH on the residual) */
        if (!dm) {
            float *g1 = fmalloc(n), *g2 = fmalloc(n), *kap = fmalloc(n), *smp = fmalloc(4 * n);
            CHECK_OK(lss_mm_mock_kappa(big, pkb, shift, h, w, 71, 0, kap));
            CHECK_OK(lss_mm_mock_shear(g, kap, nv, 72, 0, g1, g2));
            lss_mm_post *post;
            CHECK_OK(lss_mm_post_create(g, pk, g1, g2, nv, &post));
            lss_mm_post_set_residual(post, lss_mm_net_residual, net);
            lss_mm_sample_opts so = {0};
            lss_mm_sample_stats st;
            so.nchains = 4;
            so.anneal = 0.6;
            so.steps_per_level = 1;
            so.final_steps = 3;
            CHECK_OK(lss_mm_sample(post, &so, smp, &st));
            CHECK(isfinite(maxabs(4 * n, smp)) && st.accept_rate > 0, "sampling with the U-net prior (acceptance %.2f)", st.accept_rate);
            lss_mm_post_free(post);
            free(g1); free(g2); free(kap); free(smp);
        }
        lss_mm_net_free(net);
        free(nv); free(lossv);
    }
    {
        lss_mm_net *bad;
        lss_grid *g2;
        CHECK_OK(lss_grid_create(18, 16, 1.0, &g2));
        double *p2 = dmalloc(18 * 16);
        CHECK_ERR(lss_mm_net_create(g2, p2, NULL, &bad), LSS_ERR_SHAPE);
        free(p2);
        lss_grid_free(g2);
    }
    free(pk); free(pkb);
    lss_grid_free(g);
    lss_grid_free(big);
}

/* Same seed, same samples bit for bit whatever the thread count (independent-chain mode). */
static void test_determinism(void) {
#ifdef _OPENMP
    int h = 16, w = 16, n = h * w, nc = 6;
    lss_grid *g;
    double *pk;
    setup_cosmos_like(h, w, 2.0, &g, &pk);
    float *kap = fmalloc(n), *g1 = fmalloc(n), *g2 = fmalloc(n), *nv = fmalloc(n), *a = fmalloc(nc * n), *b = fmalloc(nc * n);
    for (int i = 0; i < n; i++) nv[i] = i % 5 ? 3e-4f : (float)LSS_MM_EMPTY_VAR;
    CHECK_OK(lss_field_gaussian(g, pk, 81, 0, kap));
    CHECK_OK(lss_mm_mock_shear(g, kap, nv, 82, 0, g1, g2));
    lss_mm_post *post;
    CHECK_OK(lss_mm_post_create(g, pk, g1, g2, nv, &post));
    lss_mm_sample_opts so = {0};
    so.nchains = nc;
    so.seed = 7;
    so.anneal = 0.6;
    so.steps_per_level = 2;
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK_OK(lss_mm_sample(post, &so, a, NULL));
    omp_set_num_threads(nt > 1 ? nt : 2);
    CHECK_OK(lss_mm_sample(post, &so, b, NULL));
    omp_set_num_threads(nt);
    CHECK(memcmp(a, b, sizeof(float) * nc * n) == 0, "samples identical with 1 and %d threads", nt > 1 ? nt : 2);
    /* each chain is a pure function of (seed, chain index): the first chains of a larger run agree */
    so.nchains = 2;
    CHECK_OK(lss_mm_sample(post, &so, b, NULL));
    CHECK(memcmp(a, b, sizeof(float) * 2 * n) == 0, "chain c does not depend on how many chains run");
    lss_mm_post_free(post);
    free(kap); free(g1); free(g2); free(nv); free(a); free(b); free(pk);
    lss_grid_free(g);
#else
    SKIP("built without OpenMP");
#endif
}


/* The residual score's sign: a score network trained on Gaussian maps with 4 times the power of its
 * Gaussian prior must lower the held-out DSM loss below the Gaussian prior's, with the residual taken
 * exactly as the sampler takes it (lss_mm_net_residual). A residual of the wrong sign raises it instead. */
static void test_neural_sign(void) {
    int h = 16, w = 16, n = h * w;
    double ell[120], cl[120], ln, lg;
    CHECK_OK(theory(ell, cl, 120));
    lss_grid *g, *big;
    CHECK_OK(lss_grid_create(h, w, 1.0, &g));
    CHECK_OK(lss_grid_create(2 * h, 2 * w, 1.0, &big));
    double *pk = dmalloc(n), *pkb = dmalloc(4 * n);
    CHECK_OK(lss_grid_spectrum(g, ell, cl, 120, pk));
    CHECK_OK(lss_grid_spectrum(big, ell, cl, 120, pkb));
    double var = 0;
    for (int i = 0; i < 4 * n; i++) pkb[i] *= 4.0, var += pkb[i] / (4 * n);
    lss_mm_net *net;
    lss_mm_net_opts no = {4, 0, 3};
    lss_mm_train_opts to = {0};
    to.steps = 150; /* also under the sanitizers: fewer steps do not learn the residual reliably */
    to.batch = 8;
    to.lr = 3e-3;
    to.s = sqrt(var); /* noise levels of the order of the signal: there the prior matters */
    to.big = big;
    to.pk_big = pkb;
    to.seed = 7;
    CHECK_OK(lss_mm_net_create(g, pk, &no, &net));
    CHECK_OK(lss_mm_net_train(net, &to, NULL));
    CHECK_OK(lss_mm_net_heldout(net, &to, 8, &ln, &lg));
    printf("  held-out DSM loss: Gaussian prior %.5f, with the trained residual %.5f\n", lg, ln);
    CHECK(ln < lg - 0.002, "the trained residual lowers the held-out DSM loss (%.5f -> %.5f): its sign is right", lg, ln);
    CHECK_ERR(lss_mm_net_heldout(net, &to, 0, &ln, &lg), LSS_ERR_ARG);
    lss_mm_net_free(net);
    lss_grid_free(g);
    lss_grid_free(big);
    free(pk); free(pkb);
}

/* ---- training loop: interrupted and resumed runs end bitwise as an uninterrupted one */
static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b;
    char buf[65536];
    size_t k;
    if (!a) return -1;
    if (!(b = fopen(to, "wb"))) { fclose(a); return -1; }
    while ((k = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, k, b);
    fclose(a);
    return fclose(b);
}
static int same_file(const char *p, const char *q) {
    FILE *a = fopen(p, "rb"), *b = fopen(q, "rb");
    int ca, cb, same = a && b;
    while (same) {
        ca = fgetc(a); cb = fgetc(b);
        if (ca != cb) same = 0;
        if (ca == EOF) break;
    }
    if (a) fclose(a);
    if (b) fclose(b);
    return same;
}
typedef struct { int calls, copy_at; } resume_cb;
/* At step copy_at the files hold the checkpoint of an earlier step: keep them, as a killed run leaves them. */
static void resume_progress(void *u, int step, double loss) {
    resume_cb *c = (resume_cb *)u;
    (void)loss;
    c->calls++;
    if (step == c->copy_at) {
        copy_file("build/test_mm_runA.ckpt", "build/test_mm_runB.ckpt");
        copy_file("build/test_mm_runA.csv", "build/test_mm_runB.csv");
    }
}
static void test_train_resume(void) {
    int h = 16, w = 16, n = h * w;
    double ell[120], cl[120], shift;
    CHECK_OK(theory(ell, cl, 120));
    CHECK_OK(lss_mm_theory_kappa_empty(NULL, "cosmos", &shift));
    lss_grid *g, *big;
    CHECK_OK(lss_grid_create(h, w, 1.0, &g));
    CHECK_OK(lss_grid_create(2 * h, 2 * w, 1.0, &big));
    double *pk = dmalloc(n), *pkb = dmalloc(4 * n);
    CHECK_OK(lss_grid_spectrum(g, ell, cl, 120, pk));
    CHECK_OK(lss_grid_spectrum(big, ell, cl, 120, pkb));
    float *nv = fmalloc(n);
    for (int i = 0; i < n; i++) nv[i] = (i % 5 == 0) ? (float)LSS_MM_EMPTY_VAR : 0.01f;
    for (int dm = 0; dm < 2; dm++) {
        lss_mm_net_opts no = {4, dm, 3};
        lss_mm_net *a, *b;
        lss_mm_train_opts to = {0};
        lss_mm_train_result ra, rb;
        resume_cb ca = {0, 6}, cb = {0, -1};
        to.steps = 12;
        to.batch = 2;
        to.lr = 3e-3;
        to.lambda = shift;
        to.big = big;
        to.pk_big = pkb;
        to.nvar = nv;
        to.seed = 11;
        to.eval_every = 4;
        to.eval_batches = 2;
        to.progress = resume_progress;
        remove("build/test_mm_runA.ckpt"); remove("build/test_mm_runA.csv");
        remove("build/test_mm_runB.ckpt"); remove("build/test_mm_runB.csv");
        /* run A: uninterrupted; its files at step 6 are those of the checkpoint at step 4 */
        CHECK_OK(lss_mm_net_create(g, pk, &no, &a));
        to.ckpt = "build/test_mm_runA.ckpt";
        to.loss_csv = "build/test_mm_runA.csv";
        to.progress_user = &ca;
        CHECK_OK(lss_mm_net_train(a, &to, &ra));
        CHECK(ra.loop.steps_done == 12 && ca.calls == 12 && ra.loop.skipped == 0, "run A: 12 steps (%lld)", (long long)ra.loop.steps_done);
        CHECK(isfinite(ra.valid_loss) && ra.valid_loss > 0 && isfinite(ra.valid_base) && ra.valid_base > 0,
              "%s held-out loss %g, baseline %g", dm ? "DeepMass" : "DSM", ra.valid_loss, ra.valid_base);
        /* run B: a fresh network resumed from the files left at step 6 */
        CHECK_OK(lss_mm_net_create(g, pk, &no, &b));
        to.ckpt = "build/test_mm_runB.ckpt";
        to.loss_csv = "build/test_mm_runB.csv";
        to.progress_user = &cb;
        to.resume = 1;
        CHECK_OK(lss_mm_net_train(b, &to, &rb));
        CHECK(cb.calls == 8 && rb.loop.steps_done == 12, "run B resumed at step 4 and ran 8 steps (%d)", cb.calls);
        CHECK_OK(lss_mm_net_save(a, "build/test_mm_finalA.ckpt"));
        CHECK_OK(lss_mm_net_save(b, "build/test_mm_finalB.ckpt"));
        CHECK(same_file("build/test_mm_finalA.ckpt", "build/test_mm_finalB.ckpt"), "%s: resumed weights bitwise equal to the uninterrupted run's",
              dm ? "DeepMass" : "DSM");
        CHECK(same_file("build/test_mm_runA.csv", "build/test_mm_runB.csv"), "resumed loss CSV equal to the uninterrupted run's");
        CHECK(rb.valid_loss == ra.valid_loss, "same final held-out loss (%.9g, %.9g)", rb.valid_loss, ra.valid_loss);
        /* the loss CSV: step, train_loss, valid_loss at steps 4, 8, 12 */
        lss_csv c;
        CHECK_OK(lss_csv_read("build/test_mm_runA.csv", &c));
        CHECK(c.ncols == 3 && lss_csv_col(&c, "step") == 0 && lss_csv_col(&c, "train_loss") == 1 && lss_csv_col(&c, "valid_loss") == 2,
              "loss CSV columns step, train_loss, valid_loss");
        CHECK(c.nrows == 3, "three evaluations (%lld rows)", (long long)c.nrows);
        for (int64_t r = 0; r < c.nrows && c.ncols == 3; r++)
            CHECK(c.data[r * 3] == 4.0 * (r + 1) && isfinite(c.data[r * 3 + 1]) && c.data[r * 3 + 1] > 0 && isfinite(c.data[r * 3 + 2]) &&
                  c.data[r * 3 + 2] > 0, "row %lld: step %g train %g valid %g", (long long)r, c.data[r * 3], c.data[r * 3 + 1], c.data[r * 3 + 2]);
        if (c.nrows == 3 && c.ncols == 3) CHECK_CLOSE(c.data[8], ra.valid_loss, 1e-6, 0, "last valid_loss is the reported held-out loss");
        lss_csv_free(&c);
        /* the held-out loss of lss_train's evaluation is lss_mm_net_heldout's */
        double ln, lb;
        CHECK_OK(lss_mm_net_heldout(a, &to, 2, &ln, &lb));
        CHECK(ln == ra.valid_loss && lb == ra.valid_base, "lss_mm_net_heldout reproduces the last evaluation");
        /* resuming a finished run does nothing */
        cb.calls = 0;
        CHECK_OK(lss_mm_net_train(b, &to, &rb));
        CHECK(cb.calls == 0 && rb.loop.steps_done == 12, "a finished run stays finished");
        lss_mm_net_free(a);
        lss_mm_net_free(b);
    }
    /* plateau stop: with a learning rate that cannot move the weights the held-out loss stops improving */
    {
        lss_mm_net_opts no = {4, 0, 3};
        lss_mm_net *a;
        lss_mm_train_opts to = {0};
        lss_mm_train_result r;
        to.steps = 40; to.batch = 2; to.lr = 1e-12; to.big = big; to.pk_big = pkb; to.seed = 11;
        to.eval_every = 1; to.eval_batches = 1; to.patience = 2;
        CHECK_OK(lss_mm_net_create(g, pk, &no, &a));
        CHECK_OK(lss_mm_net_train(a, &to, &r));
        CHECK(r.loop.stopped_early == 1 && r.loop.steps_done < 40, "plateau stop after %lld steps", (long long)r.loop.steps_done);
        to.resume = 1;
        CHECK_ERR(lss_mm_net_train(a, &to, &r), LSS_ERR_ARG); /* resume without a checkpoint path */
        to.resume = 0;
        to.patience = -1;
        CHECK_ERR(lss_mm_net_train(a, &to, &r), LSS_ERR_RANGE);
        lss_mm_net_free(a);
    }
    free(nv); free(pk); free(pkb);
    lss_grid_free(g);
    lss_grid_free(big);
}

/* Training maps (LSS_SET_TRAIN) never coincide with the mock's fields (LSS_SET_TEST) of the same seed. */
static void test_streams(void) {
    lss_mm_mock_opts mo = {0};
    lss_mm_mock *m;
    mo.size = 16;
    mo.nfields = 3;
    mo.seed = 1;
    CHECK_OK(lss_mm_mock_create(&mo, &m));
    int64_t np = 16 * 16;
    lss_grid *big;
    double *pkb;
    CHECK_OK(lss_mm_mock_grid(m, 2, &big, &pkb));
    float *t = fmalloc(np), *v = fmalloc(np);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(lss_mm_field(big, pkb, m->shift, 16, 16, 1, LSS_SET_TEST, (uint64_t)i, v));
        CHECK(memcmp(v, m->kappa + i * np, sizeof(float) * np) == 0, "mock field %d is test-set field %d", i, i);
        for (int j = 0; j < 3; j++) {
            CHECK_OK(lss_mm_field(big, pkb, m->shift, 16, 16, 1, LSS_SET_TRAIN, (uint64_t)j, t));
            CHECK(maxdiff(np, t, m->kappa + i * np) > 0.1 * maxabs(np, t), "training map %d differs from mock field %d (same seed)", j, i);
        }
    }
    CHECK(lss_mm_field_stream(LSS_SET_TRAIN, 0) != lss_mm_field_stream(LSS_SET_TEST, 0), "train and test streams differ");
    /* a saved mock reads back the same */
    lss_mm_mock *m2;
    CHECK_OK(lss_mm_mock_save(m, "build"));
    CHECK_OK(lss_mm_mock_load("build", &m2));
    CHECK(m2->nfields == 3 && m2->h == 16 && memcmp(m2->shear, m->shear, sizeof(float) * 2 * 3 * np) == 0, "mock round trip");
    CHECK(fabs(m2->shift - m->shift) <= 1e-5 * m->shift && m2->nell == m->nell && m2->seed == 1, "mock metadata read by name");
    lss_mm_mock_free(m2);
    CHECK_ERR(lss_mm_mock_load("build/no_such_mock_dir", &m2), LSS_ERR_IO);
    free(t); free(v); free(pkb);
    lss_grid_free(big);
    lss_mm_mock_free(m);
}

/* Library parts of the experiments: presets, batches, detection criterion. */
static void test_experiment_parts(void) {
    lss_mm_sample_opts a = {0};
    lss_mm_schedule sc;
    CHECK_OK(lss_mm_schedule_parse("fast", &sc));
    CHECK_OK(lss_mm_sample_preset(sc, &a));
    CHECK(a.anneal == 0.6 && a.steps_per_level == 2 && a.final_steps == 10 && a.mass == LSS_MM_MASS_FOURIER, "fast preset");
    CHECK_ERR(lss_mm_schedule_parse("slow", &sc), LSS_ERR_ARG);
    float nv[4] = {1e-6f, 1.0f, 1.0f, (float)LSS_MM_EMPTY_VAR};
    CHECK_CLOSE(lss_mm_auto_sigma_min(4, nv), 1e-4, 1e-6, 0, "sigma_min below the smallest noise std");
    /* a delta of height 1 at the centre is detected in the disc, not outside */
    int h = 32, w = 32;
    lss_grid *g;
    CHECK_OK(lss_grid_create(h, w, 1.0, &g));
    float *m = fmalloc(h * w);
    m[16 * w + 16] = 1.0f;
    double pk1, pk2, rate;
    CHECK_OK(lss_mm_detect_peak(g, m, 4.0, 16.5, 16.5, &pk1));
    CHECK_OK(lss_mm_detect_peak(g, m, 4.0, 4.5, 4.5, &pk2));
    CHECK_CLOSE(pk1, lss_mm_starlet_u(0, 4.0), 1e-5, 1e-7, "peak at the halo is the kernel's centre value");
    CHECK(pk2 < 0.1 * pk1, "no peak far from it (%g vs %g)", pk2, pk1);
    CHECK_OK(lss_mm_detect_rate(g, 1, m, 4.0, 16.5, 16.5, 0.5 * pk1, &rate));
    CHECK(rate == 1.0, "detected above half the peak");
    CHECK_OK(lss_mm_detect_rate(g, 1, m, 4.0, 16.5, 16.5, 2 * pk1, &rate));
    CHECK(rate == 0.0, "not detected above the peak");
    CHECK_CLOSE(lss_mm_detect_theta(32, 32), 4.0, 0, 1e-12, "aperture capped at an eighth of the field");
    CHECK_CLOSE(lss_mm_detect_theta(360, 360), LSS_MM_DETECT_THETA_PIX, 0, 1e-12, "the reference's 16 pixels on its 360 x 360 field");
    free(m);
    lss_grid_free(g);
}

int main(void) {
    RUN(test_operators);
    RUN(test_fields);
    RUN(test_wiener);
    RUN(test_gaussian_validation);
    RUN(test_binning);
    RUN(test_sky);
    RUN(test_metrics);
    RUN(test_nfw);
    RUN(test_end_to_end);
    RUN(test_residual_sampling);
    RUN(test_neural);
    RUN(test_neural_sign);
    RUN(test_train_resume);
    RUN(test_streams);
    RUN(test_experiment_parts);
    RUN(test_determinism);
    LSS_TEST_END();
}
