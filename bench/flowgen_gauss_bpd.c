/* The Gaussian baselines of flowgen's bits per dimension: a multivariate normal with the full empirical mean and
 * covariance of the training maps (D = side^2 dimensions), fitted once to kappa itself and once to ln(kappa + shift)
 * (the lognormal baseline; its Jacobian sum ln(kappa + shift) included), each with a full covariance and with the
 * stationary covariance of the correlation function (see fit_eval), evaluated exactly on the held-out maps of
 * test_a.npy, as `flowgen bpd` evaluates the flow: bits = -ln p(kappa) / (D ln 2) - log2(delta), delta = 1e-4.
 * Everything that is Gaussian in the maps (power spectrum, and the window of the cut-outs) is in these models; a
 * generator's margin below them is what it learnt beyond two-point statistics.
 * Maps drawn by `flowgen data` are shifted lognormal cut-outs of a homogeneous field: ln(kappa + shift) is Gaussian
 * and stationary, so the last baseline is their exact density up to the estimation noise of the correlation function.
 * Usage: flowgen_gauss_bpd DIR [OUT.csv [SAMPLES.npy]]   (DIR from `flowgen data`; reads DIR/data/{train,test_a}.npy
 * and info.csv; OUT.csv: map, nll_nats, bpd of the last baseline per held-out map, in the layout of `flowgen bpd`'s
 * bpd.csv, for paired differences; SAMPLES.npy: as many maps as test_a.npy drawn from the last baseline, the exact
 * law up to estimation noise, for `flowgen eval --samples`: what a perfect generator's statistics look like) */
#define LSS_IMPLEMENTATION
#include "lss_maps.h"
#include <stdio.h>
#include <stdlib.h>

static float *load(const char *dir, const char *name, int64_t *n, int64_t *D) {
    char p[4096];
    float *d = NULL;
    int nd;
    int64_t sh[LSS_MAX_DIM];
    snprintf(p, sizeof p, "%s/data/%s", dir, name);
    if (lss_npy_load_f32(p, &d, &nd, sh) != LSS_OK || nd != 3) {
        fprintf(stderr, "flowgen_gauss_bpd: %s: %s\n", p, nd != 3 ? "expected maps [N, side, side]" : lss_last_error());
        exit(1);
    }
    *n = sh[0], *D = sh[1] * sh[2];
    return d;
}
/* -ln p of each test map under the Gaussian fitted to the training maps, in the space v = f(kappa); se of the mean.
   stationary = 0: per-pixel mean and full covariance (D (D + 3) / 2 parameters: their estimation noise alone costs
   about D^2 / (2 nt) nats per held-out map); 1: one mean and C(a, b) = xi(r_a - r_b), the correlation function
   averaged over every pixel pair at each displacement (the two-point content of a statistically homogeneous field,
   (2 side - 1)^2 parameters). */
static void fit_eval(const float *tr, int64_t nt, const float *te, int64_t ne, int64_t side, double shift, int stationary,
                     double *mean_nll, double *se, double *per_map, float *draws, int64_t ndraw) {
    int64_t D = side * side, W = 2 * side - 1;
    double *mu = calloc(D, sizeof(double)), *C = calloc(D * D, sizeof(double)), *v = malloc(sizeof(double) * D), logdet = 0;
    double *xi = calloc(W * W, sizeof(double)), *cnt = calloc(W * W, sizeof(double));
    double s = 0, s2 = 0, m = 0;
    for (int64_t j = 0; j < nt; j++)
        for (int64_t i = 0; i < D; i++) mu[i] += (shift > 0 ? log(tr[j * D + i] + shift) : tr[j * D + i]) / nt;
    if (stationary) {
        for (int64_t i = 0; i < D; i++) m += mu[i] / D;
        for (int64_t i = 0; i < D; i++) mu[i] = m;
    }
    for (int64_t j = 0; j < nt; j++) {
        for (int64_t i = 0; i < D; i++) v[i] = (shift > 0 ? log(tr[j * D + i] + shift) : tr[j * D + i]) - mu[i];
        for (int64_t a = 0; a < D; a++)
            for (int64_t b = 0; b <= a; b++) {
                if (!stationary) C[a * D + b] += v[a] * v[b] / (nt - 1);
                else {
                    int64_t k = (a / side - b / side + side - 1) * W + (a % side - b % side + side - 1);
                    xi[k] += v[a] * v[b], cnt[k] += 1;
                }
            }
    }
    if (stationary)
        for (int64_t a = 0; a < D; a++)
            for (int64_t b = 0; b <= a; b++) {
                int64_t k = (a / side - b / side + side - 1) * W + (a % side - b % side + side - 1);
                C[a * D + b] = xi[k] / cnt[k];
            }
    free(xi), free(cnt);
    /* Cholesky C = L L^T in the lower triangle */
    for (int64_t a = 0; a < D; a++) {
        for (int64_t b = 0; b <= a; b++) {
            double t = C[a * D + b];
            for (int64_t k = 0; k < b; k++) t -= C[a * D + k] * C[b * D + k];
            if (a == b) {
                if (!(t > 0)) { fprintf(stderr, "flowgen_gauss_bpd: covariance not positive definite\n"); exit(1); }
                C[a * D + a] = sqrt(t);
                logdet += 2 * log(C[a * D + a]);
            } else C[a * D + b] = t / C[b * D + b];
        }
    }
    for (int64_t j = 0; j < ne; j++) {
        double q = 0, jac = 0;
        for (int64_t i = 0; i < D; i++) {
            double k = te[j * D + i];
            v[i] = (shift > 0 ? log(k + shift) : k) - mu[i];
            if (shift > 0) jac += log(k + shift);
        }
        for (int64_t a = 0; a < D; a++) {  /* solve L w = v in place */
            double t = v[a];
            for (int64_t k = 0; k < a; k++) t -= C[a * D + k] * v[k];
            v[a] = t / C[a * D + a];
            q += v[a] * v[a];
        }
        double nll = 0.5 * (D * log(6.283185307179586) + logdet + q) + jac;
        s += nll, s2 += nll * nll;
        if (per_map) per_map[j] = nll;
    }
    *mean_nll = s / ne;
    *se = sqrt((s2 / ne - (s / ne) * (s / ne)) / (ne - 1));
    for (int64_t j = 0; j < ndraw; j++) { /* x = mu + L z, back through the transform */
        lss_rng r;
        lss_rng_init(&r, 20261207, (uint64_t)j);
        for (int64_t i = 0; i < D; i++) v[i] = lss_rng_normal(&r);
        for (int64_t a = 0; a < D; a++) {
            double t = mu[a];
            for (int64_t k = 0; k <= a; k++) t += C[a * D + k] * v[k];
            draws[j * D + a] = (float)(shift > 0 ? exp(t) - shift : t);
        }
    }
    free(mu), free(C), free(v);
}
int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) { fprintf(stderr, "usage: flowgen_gauss_bpd DIR [OUT.csv [SAMPLES.npy]]\n"); return 2; }
    char p[4096];
    lss_csv t;
    snprintf(p, sizeof p, "%s/data/info.csv", argv[1]);
    if (lss_csv_read(p, &t) != LSS_OK || lss_csv_col(&t, "lambda") < 0) { fprintf(stderr, "flowgen_gauss_bpd: %s: %s\n", p, lss_last_error()); return 1; }
    double shift = t.data[lss_csv_col(&t, "lambda")];
    lss_csv_free(&t);
    int64_t nt, ne, D, D2, side;
    float *tr = load(argv[1], "train.npy", &nt, &D), *te = load(argv[1], "test_a.npy", &ne, &D2);
    if (D != D2 || nt <= D) { fprintf(stderr, "flowgen_gauss_bpd: need more training maps (%lld) than pixels (%lld)\n", (long long)nt, (long long)D); return 1; }
    side = (int64_t)llround(sqrt((double)D));
    const double delta = 1e-4, b = 1.0 / (D * log(2.0));
    const char *names[4] = {"kappa, full covariance", "kappa, stationary", "ln(kappa + shift), full covariance", "ln(kappa + shift), stationary"};
    double *pm = malloc(sizeof(double) * 3 * ne);
    float *draws = argc == 4 ? malloc(sizeof(float) * ne * D) : NULL;
    if (!pm || (argc == 4 && !draws)) { fprintf(stderr, "flowgen_gauss_bpd: out of memory\n"); return 1; }
    for (int k = 0; k < 4; k++) {
        double m, se;
        fit_eval(tr, nt, te, ne, side, k >= 2 ? shift : 0, k % 2, &m, &se, k == 3 ? pm : NULL, k == 3 ? draws : NULL, k == 3 && draws ? ne : 0);
        printf("Gaussian in %-36s %lld held-out maps: %.4f +- %.4f bits per dimension (delta %g)\n", names[k], (long long)ne,
               m * b - log2(delta), se * b, delta);
    }
    if (argc >= 3) {
        static const char *cols[3] = {"map", "nll_nats", "bpd"};
        for (int64_t j = ne - 1; j >= 0; j--) {
            double nll = pm[j];
            pm[3 * j] = (double)j, pm[3 * j + 1] = nll, pm[3 * j + 2] = nll * b - log2(delta);
        }
        if (lss_csv_write(argv[2], 3, cols, ne, pm) != LSS_OK) { fprintf(stderr, "flowgen_gauss_bpd: %s\n", lss_last_error()); return 1; }
    }
    if (draws && lss_npy_save(argv[3], LSS_F32, 3, (int64_t[]){ne, side, side}, draws) != LSS_OK) {
        fprintf(stderr, "flowgen_gauss_bpd: %s\n", lss_last_error());
        return 1;
    }
    free(tr), free(te), free(pm), free(draws);
    return 0;
}
