/* lss_infer.h - from network summaries to parameter constraints
 *
 * Single-file library in the STB style. In exactly one C file:
 *
 *     #define LSS_INFER_IMPLEMENTATION
 *     #include "lss_infer.h"
 *
 * (lss_core.h and lss_nn.h are included; their implementations are brought in the same way with
 * LSS_CORE_IMPLEMENTATION / LSS_NN_IMPLEMENTATION, or all at once with LSS_IMPLEMENTATION.)
 *
 * What it gives
 *   - scalers, invertible and saveable (NPY or CSV): robust (median, inter-quartile range), min-max
 *     to [1e-5, 1 - 1e-5], and min-max followed by the normal quantile function; the normal
 *     quantile (Wichura AS241, PPND16) and the normal CDF (erfc, accurate in the tails).
 *   - a mixture density network p(theta_p | theta_t): MLP -> K Gaussians with full covariances
 *     (Cholesky factor of each precision), trained by NLL with Adam, a validation split and early
 *     stopping; sampling, batched log-density, and the density check of DeepLSS appendix C.
 *   - the affine-invariant ensemble sampler (Goodman & Weare stretch move, two half-ensembles,
 *     a batched log-probability callback), priors as boxes plus an optional 2-D convex hull,
 *     start checks, integrated autocorrelation time, burn-in and thinning.
 *   - HMC for a batch of chains (leapfrog, diagonal mass matrix, dual-averaging step size).
 *   - summaries: means, standard deviations, 68/95% intervals, correlations, split R-hat, effective
 *     sample size, std ratios ("gains"), figures of merit; corner plots as PNG; chains as NPY/CSV.
 *
 * Example (sampling a 2-D Gaussian)
 *     static int logp(const double *x, int n, int d, double *lp, void *u) {
 *         (void)u;
 *         for (int k = 0; k < n; k++) {
 *             double s = 0; for (int i = 0; i < d; i++) s += x[k*d+i] * x[k*d+i];
 *             lp[k] = -0.5 * s;
 *         }
 *         return LSS_OK;
 *     }
 *     ...
 *     lss_emcee *e; lss_emcee_opts o = {0}; double p0[32 * 2], tau[2];
 *     lss_rng r; lss_rng_init(&r, 1, 0);
 *     for (int i = 0; i < 64; i++) p0[i] = 0.1 * lss_rng_normal(&r);
 *     o.seed = 42;
 *     if (lss_emcee_create(32, 2, &o, &e) || lss_emcee_start(e, p0, logp, NULL) ||
 *         lss_emcee_run(e, 200, logp, NULL)) { fprintf(stderr, "%s\n", lss_last_error()); return 1; }
 *     lss_emcee_reset(e);                                   // drop the burn-in
 *     if (lss_emcee_run(e, 5000, logp, NULL)) return 1;
 *     lss_autocorr_time(e->chain, e->nsteps, 32, 2, 0, 0, tau);   // fails if too short
 *     lss_emcee_free(e);
 *
 * With a mixture density network as the likelihood (DeepLSS):
 *     lss_mdn *m; lss_mdn_opts mo = {0};                    // 3 x 256 ReLU, K = 4
 *     lss_mdn_create(7, 7, &mo, &m);
 *     lss_mdn_fit(m, theta_true, summaries, n, &mo);        // scalers, Adam, early stopping
 *     lss_mdn_set_obs(m, observed_summary);                 // refuses one outside the training range
 *     lss_emcee_start(e, p0, lss_mdn_loglike, m); lss_emcee_run(e, 500, lss_mdn_loglike, m);
 *
 * Options: those of lss_core.h (LSS_MALLOC/LSS_REALLOC/LSS_FREE, LSS_ASSERT). Link with
 * -lfftw3 -lm (the autocorrelation uses FFTW3 in double precision).
 *
 * Version 0.1.0. Public names start with lss_/LSS_; internal ones with lss__.
 */
#ifndef LSS_INFER_H
#define LSS_INFER_H

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_INFER_IMPLEMENTATION
#define LSS_INFER_IMPLEMENTATION
#endif
#endif

#include "lss_core.h"
#include "lss_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- normal distribution */
/* Quantile function of N(0, 1) (Wichura 1988, AS241 PPND16; relative error ~1e-16).
 * Returns -inf at 0, +inf at 1, NaN outside [0, 1] or for NaN. */
LSSDEF double lss_norm_ppf(double p);
/* CDF of N(0, 1), 0.5 erfc(-x / sqrt 2): accurate relative to its value in both tails. */
LSSDEF double lss_norm_cdf(double x);

/* ---------------------------------------------------------------- scalers */
typedef enum {
    LSS_SCALE_ROBUST = 1,  /* y = (x - median) / (q75 - q25); zero range -> scale 1 */
    LSS_SCALE_MINMAX = 2,  /* y = 1e-5 + (1 - 2e-5) (x - min) / (max - min); zero range -> 1 */
    LSS_SCALE_QUANTILE = 3 /* y = ppf(min-max(x)): the DeepLSS summary transform */
} lss_scale_kind;

#define LSS_MINMAX_LO 1e-5
#define LSS_MINMAX_HI (1.0 - 1e-5)

typedef struct {
    int kind, dim;
    double *a, *b; /* robust: median and scale; min-max/quantile: fitted min and max (dim each) */
} lss_scaler;

/* Fits a scaler of `kind` to n rows of dim columns (row-major). Non-finite values are ignored
 * per column; a column with no finite value is an error. Allocates s->a, s->b: free with
 * lss_scaler_free. */
LSSDEF int lss_scaler_fit(lss_scaler *s, int kind, const double *x, int64_t n, int dim);
LSSDEF void lss_scaler_free(lss_scaler *s);
/* y = transform(x) for n rows (y may equal x). For LSS_SCALE_QUANTILE a value whose min-max image
 * falls outside (0, 1) - far outside the fitted range - is LSS_ERR_RANGE naming row and column. */
LSSDEF int lss_scaler_transform(const lss_scaler *s, const double *x, double *y, int64_t n);
LSSDEF int lss_scaler_inverse(const lss_scaler *s, const double *y, double *x, int64_t n);
/* LSS_ERR_RANGE when a min-max/quantile scaler sees a value outside its fitted [min, max] (an
 * observed summary out of the training range: the likelihood there is an extrapolation and the
 * quantile transform may be undefined). Always LSS_OK for the robust scaler (finite values). */
LSSDEF int lss_scaler_check(const lss_scaler *s, const double *x, int64_t n);
/* Saves as CSV when path ends in ".csv" (columns kind, a, b; one row per dimension), else as an
 * NPY float64 array [3, dim] (row 0 the kind). lss_scaler_load reads either. */
LSSDEF int lss_scaler_save(const lss_scaler *s, const char *path);
LSSDEF int lss_scaler_load(lss_scaler *s, const char *path);

/* ---------------------------------------------------------------- small linear algebra */
/* Singular values of the m x n row-major matrix a (one-sided Jacobi), min(m, n) values in s,
 * descending. */
LSSDEF int lss_svd_values(const double *a, int m, int n, double *s);

/* ---------------------------------------------------------------- convex hull and priors */
/* Convex hull of n points (x, y pairs) by Andrew's monotone chain: nh vertices counter-clockwise
 * in hull (room for n pairs), collinear points dropped. Fewer than 3 distinct points or all
 * collinear: LSS_ERR_ARG. */
LSSDEF int lss_convex_hull(const double *xy, int n, double *hull, int *nh);
/* 1 if (x, y) lies inside or on the counter-clockwise hull (distance tolerance tol), else 0. */
LSSDEF int lss_hull_contains(const double *hull, int nh, double x, double y, double tol);

typedef struct {
    int d;
    double *lo, *hi;     /* box limits (inclusive); -inf/+inf for none */
    int hull_i, hull_j;  /* the two parameters restricted by the hull (-1: none) */
    int hull_n;
    double *hull;        /* hull_n (x, y) vertices, counter-clockwise */
    double hull_tol;
    char **names;        /* optional parameter names (NULL) */
} lss_prior;

/* A box prior over d parameters (lo/hi may be NULL for unbounded). Free with lss_prior_free. */
LSSDEF int lss_prior_init(lss_prior *p, int d, const double *lo, const double *hi);
/* Adds the convex hull of n points (x = parameter i, y = parameter j) as a further restriction. */
LSSDEF int lss_prior_set_hull(lss_prior *p, int i, int j, const double *xy, int n);
/* Names the parameters (copied); used in error messages. */
LSSDEF int lss_prior_set_names(lss_prior *p, const char *const *names);
/* The prior of DeepLSS Table I: Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g, and with
 * nonlinear != 0 also b_g2, eta_bg2 (d = 7 or 9), with names. Fiducial values in fid (may be NULL,
 * room for 9). */
LSSDEF int lss_prior_deeplss(lss_prior *p, int nonlinear, double *fid);
LSSDEF int lss_prior_contains(const lss_prior *p, const double *x);
LSSDEF void lss_prior_free(lss_prior *p);

/* ---------------------------------------------------------------- ensemble sampler */
/* Batched log-probability: n points of dimension d (row-major) -> logp[n]. -inf is allowed
 * (zero probability); NaN or +inf is an error. Returns LSS_OK or a status (passed on). */
typedef int (*lss_logprob_fn)(const double *x, int n, int d, double *logp, void *user);
/* Progress: called every `progress_every` steps; a non-zero return stops the run. */
typedef int (*lss_progress_fn)(int64_t done, int64_t total, double acceptance, void *user);

typedef struct {
    double a;                /* stretch scale (0: 2) */
    uint64_t seed, stream;   /* Philox stream of all the sampler's draws */
    const lss_prior *prior;  /* NULL: none. Points outside get -inf without a callback */
    lss_progress_fn progress;
    void *progress_user;
    int64_t progress_every;  /* 0: 100 */
    double max_cond;         /* start check: condition number limit (0: 1e8; < 0: no check) */
} lss_emcee_opts;

typedef struct {
    int nwalkers, d;
    lss_emcee_opts o;
    lss_rng rng;
    int started;
    double *pos, *lp;        /* current positions [nwalkers][d] and their log-probabilities */
    int64_t nsteps, cap;     /* stored steps since the last reset, and room */
    double *chain;           /* [nsteps][nwalkers][d] */
    double *lpchain;         /* [nsteps][nwalkers] */
    int64_t *naccept;        /* accepted proposals per walker since the last reset */
    /* workspace */
    int *label, *sidx, *cidx, *bmap;
    double *prop, *plp, *z, *bx, *blp;
} lss_emcee;

/* Creates a sampler of nwalkers walkers in d dimensions. Fewer than 2 d walkers: LSS_ERR_ARG.
 * Free with lss_emcee_free. */
LSSDEF int lss_emcee_create(int nwalkers, int d, const lss_emcee_opts *o, lss_emcee **out);
/* Sets the walkers to p0 [nwalkers][d] after checking that they lie inside the prior
 * (LSS_ERR_RANGE naming walker and parameter), are not degenerate (LSS_ERR_ARG: condition number
 * of the centred, scaled ensemble), and have no NaN log-probability (LSS_ERR_NUMERIC). */
LSSDEF int lss_emcee_start(lss_emcee *e, const double *p0, lss_logprob_fn f, void *user);
/* Runs nsteps steps, appending them to the chain. */
LSSDEF int lss_emcee_run(lss_emcee *e, int64_t nsteps, lss_logprob_fn f, void *user);
/* Forgets the stored chain and acceptance counts; keeps positions (after burn-in). */
LSSDEF void lss_emcee_reset(lss_emcee *e);
/* Mean acceptance fraction over walkers; per-walker fractions into acc (may be NULL). */
LSSDEF double lss_emcee_acceptance(const lss_emcee *e, double *acc);
/* Flat samples: steps from `burn` on, every `thin`-th, all walkers: *out [*n][d] allocated with
 * LSS_MALLOC (caller frees with LSS_FREE). */
LSSDEF int lss_emcee_flat(const lss_emcee *e, int64_t burn, int64_t thin, double **out, int64_t *n);
LSSDEF void lss_emcee_free(lss_emcee *e);
/* Burn-in and thinning from the stored chain's autocorrelation times (emcee's advice): burn =
 * ceil(2 max tau), thin = max(1, floor(min tau / 2)); tau_max (may be NULL) receives max tau.
 * LSS_ERR_RANGE (with the values still set) when the chain is shorter than 50 max tau. */
LSSDEF int lss_emcee_suggest(const lss_emcee *e, int64_t *burn, int64_t *thin, double *tau_max);
/* One stretch factor z = ((a - 1) u + 1)^2 / a on [1/a, a]. */
LSSDEF double lss_stretch_z(lss_rng *r, double a);

/* Integrated autocorrelation time per parameter of a chain [n][m][d] (m walkers): the ACF of each
 * walker (FFT), averaged over walkers, tau(M) = 2 sum_{k<=M} rho(k) - 1, window the first M with
 * M >= c tau(M) and tau(M) > 0 (c <= 0: 5). Fills tau[d]; returns LSS_ERR_RANGE (naming the parameter) when
 * n < tol tau (tol 0: 50; tol < 0: no check). Plans FFTW transforms: not to be called from several
 * threads at once. */
LSSDEF int lss_autocorr_time(const double *chain, int64_t n, int m, int d, double c, double tol,
                             double *tau);

/* ---------------------------------------------------------------- HMC */
/* Batched log-probability and gradient: n points -> logp[n], grad[n][d]. */
typedef int (*lss_logprob_grad_fn)(const double *x, int n, int d, double *logp, double *grad,
                                   void *user);
typedef struct {
    int64_t nwarmup;          /* 0: 500 */
    int64_t nsamples;         /* 0: 1000 */
    int nleapfrog;            /* 0: 16 */
    double step;              /* initial step size (0: 0.1) */
    double target_accept;     /* 0: 0.8 */
    const double *inv_mass;   /* diagonal inverse mass matrix [d] (NULL: ones) */
    int adapt_mass;           /* estimate the diagonal from the middle of the warm-up */
    uint64_t seed, stream;
    const lss_prior *prior;   /* NULL: none; leaving it rejects the trajectory */
    lss_progress_fn progress;
    void *progress_user;
} lss_hmc_opts;
typedef struct {
    double step;              /* step size after warm-up */
    double accept_prob;       /* mean Metropolis acceptance probability while sampling */
    double accept_rate;       /* fraction of accepted trajectories while sampling */
    int64_t ndivergent;       /* trajectories with an energy error > 1000 or non-finite */
    double *inv_mass;         /* if non-NULL on entry: receives the final diagonal [d] */
} lss_hmc_stats;
/* Runs nchains chains from x0 [nchains][d]; samples [nsamples][nchains][d] and logp
 * [nsamples][nchains] (may be NULL) are caller-provided. */
LSSDEF int lss_hmc_run(int nchains, int d, const double *x0, lss_logprob_grad_fn f, void *user,
                       const lss_hmc_opts *o, double *samples, double *logp, lss_hmc_stats *st);

/* ---------------------------------------------------------------- mixture density network */
/* p(theta_p | theta_t): an MLP from theta_t (dimension p) to K Gaussians over theta_p (dimension d),
 * output per sample K logits, K d means and K d(d+1)/2 entries of the lower-triangular Cholesky
 * factor of each component's precision (diagonal softplus + 1e-4): the layout of lss_op_gmm_nll.
 * Inputs are scaled before the network: theta_t with the robust scaler and theta_p with min-max +
 * normal quantile (DeepLSS appendix C), or as chosen in the options; log-densities are in the scaled
 * space (as DeepLSS: constant in theta_t) unless a Jacobian is asked for. Not thread-safe: one
 * object per thread (its evaluation workspace is shared by its calls). */
typedef struct {
    int nhidden;           /* hidden layers (0: 3, the paper) */
    int width;             /* hidden width (0: 256) */
    int K;                 /* mixture components (0: 4) */
    int scale_t, scale_p;  /* lss_scale_kind for theta_t / theta_p (0: ROBUST / QUANTILE; -1: none) */
    uint64_t seed;         /* initialisation, split and minibatch order */
    /* training */
    double lr;             /* Adam learning rate (0: 1e-3; eps 1e-7) */
    int batch;             /* minibatch size (0: 5000, at most the training set) */
    int max_epochs;        /* 0: 1000 */
    double val_frac;       /* validation fraction (0: 0.25; the paper) */
    int patience;          /* early stopping: epochs without a validation gain > min_delta (0: 50) */
    double min_delta;      /* 0: 1e-5 */
    int plateau_patience;  /* learning rate x plateau_factor after this many flat epochs (0: 10; < 0 off) */
    double plateau_factor; /* 0: 0.75 */
    double lr_min;         /* 0: 1e-6 */
    /* called after every epoch; a non-zero return stops training (the best weights are kept) */
    int (*progress)(int epoch, double train_loss, double val_loss, void *user);
    void *progress_user;
} lss_mdn_opts;

typedef struct {
    int p, d, K, nhidden, width, scale_t, scale_p;
    lss_scaler st, sp;     /* fitted by lss_mdn_fit (kind 0 when unused) */
    lss_store *store;      /* the network's parameters */
    lss_mlp net;
    lss_graph *graph;      /* evaluation graph */
    float *xin, *out;      /* evaluation workspace (grown on demand) */
    double *tt, *yy, *lj;
    int64_t cap;
    double *obs;           /* scaled observation [d] (lss_mdn_set_obs) */
    double obs_jac;        /* log-Jacobian of the observation's transform */
    int has_obs, fitted;
    /* after lss_mdn_fit */
    int epochs, best_epoch;
    double best_val, train_loss;
    int64_t ntrain, nval, ndropped;
} lss_mdn;

/* Creates an untrained MDN for p inputs and d outputs (architecture from o; NULL: defaults).
 * Free with lss_mdn_free. */
LSSDEF int lss_mdn_create(int p, int d, const lss_mdn_opts *o, lss_mdn **m);
LSSDEF void lss_mdn_free(lss_mdn *m);
/* Fits the scalers and trains on n pairs theta_t [n][p], theta_p [n][d] (rows with a non-finite
 * value dropped): Adam, minibatches, a validation split, LR reduction on plateaus, early stopping
 * with the best validation weights restored. */
LSSDEF int lss_mdn_fit(lss_mdn *m, const double *theta_t, const double *theta_p, int64_t n, const lss_mdn_opts *o);
/* Raw network outputs [n][lss_gmm_width(K, d)] for n unscaled theta_t rows. */
LSSDEF int lss_mdn_forward(lss_mdn *m, const double *theta_t, int64_t n, float *out);
/* log p(theta_p | theta_t) for n pairs of unscaled rows; jac != 0 adds the log-Jacobian of the
 * theta_p transform (a density in the units of theta_p). A theta_p outside the quantile scaler's
 * range is LSS_ERR_RANGE. */
LSSDEF int lss_mdn_logpdf(lss_mdn *m, const double *theta_t, const double *theta_p, int64_t n, int jac,
                          double *logp);
/* Sets the observed summary (unscaled, [d]) for lss_mdn_loglike: LSS_ERR_RANGE when it lies outside
 * the range the summary scaler was fitted on (the quantile transform would be undefined or an
 * extrapolation there, and every walker would die). */
LSSDEF int lss_mdn_set_obs(lss_mdn *m, const double *obs);
/* An lss_logprob_fn (user = the lss_mdn): log-likelihood of the observation at n parameter points,
 * one batched network evaluation. Parameters outside the scaler's data give finite values (the
 * prior decides where to sample). */
LSSDEF int lss_mdn_loglike(const double *theta_t, int n, int p, double *logp, void *mdn);
/* One draw of theta_p (unscaled) per theta_t row. */
LSSDEF int lss_mdn_sample(lss_mdn *m, const double *theta_t, int64_t n, lss_rng *r, double *theta_p);
/* Checkpoint (lss_nn's format: weights, architecture and scalers). lss_mdn_load needs an MDN
 * created with the same p, d, K, nhidden and width. */
LSSDEF int lss_mdn_save(const lss_mdn *m, const char *path);
LSSDEF int lss_mdn_load(lss_mdn *m, const char *path);

/* DeepLSS appendix C. For nv held-out theta_t [nv][p] with nrep simulated summaries each,
 * theta_p [nv][nrep][d], draws nsamp samples from the MDN at each theta_t and returns per
 * theta_t and component dmu = (mean_s - mean_p) / std_p (eq. C1) and dsig = (std_s - std_p) / std_p
 * (eq. C2), [nv][d] each. */
LSSDEF int lss_mdn_check(lss_mdn *m, const double *theta_t, int64_t nv, const double *theta_p, int nrep,
                         int nsamp, uint64_t seed, double *dmu, double *dsig);
typedef struct {
    double dmu_median, dmu_lo, dmu_hi;    /* median and 16/84 percentiles of dmu (all components) */
    double dsig_median, dsig_lo, dsig_hi;
    double abs_dmu_median, abs_dsig_median;
} lss_mdn_check_summary;
/* Summarises dmu/dsig [nv][d] and, when path != NULL, writes them as CSV (columns index,
 * component, dmu, dsig). */
LSSDEF int lss_mdn_check_report(const double *dmu, const double *dsig, int64_t nv, int d, const char *path,
                                lss_mdn_check_summary *s);

/* ---------------------------------------------------------------- summaries */
typedef struct {
    double mean, std;         /* std with ddof = 0 */
    double median, lo68, hi68, lo95, hi95; /* percentiles 50, 16/84, 2.5/97.5 */
} lss_param_stats;
/* Statistics of n samples [n][d]; corr [d][d] may be NULL. */
LSSDEF int lss_chain_stats(const double *x, int64_t n, int d, lss_param_stats *st, double *corr);
/* Covariance [d][d] (ddof = 1) and mean [d] (may be NULL). */
LSSDEF int lss_chain_cov(const double *x, int64_t n, int d, double *mean, double *cov);
/* Split R-hat (Gelman et al. 2013) per parameter of a chain [n][m][d]. */
LSSDEF int lss_rhat_split(const double *chain, int64_t n, int m, int d, double *rhat);
/* Effective sample size n m / tau per parameter (no length check). */
LSSDEF int lss_ess(const double *chain, int64_t n, int m, int d, double *ess);
/* ratio[i] = std(x1_i) / std(x2_i): the DeepLSS "gain" of chain 2 over chain 1. */
LSSDEF int lss_std_ratio(const double *x1, int64_t n1, const double *x2, int64_t n2, int d,
                         double *ratio);
/* Figure of merit 1 / sqrt(det Cov(x_i, x_j)). */
LSSDEF int lss_fom_det(const double *x, int64_t n, int d, int i, int j, double *fom);
/* DeepLSS's convention for (Omega_m, sigma_8): bins 399 over [0, 0.6] x [0.4, 1.5], no smoothing. */
typedef struct {
    int bins;                 /* per axis (0: 399) */
    double xlo, xhi, ylo, yhi;/* histogram range (all 0: the data range padded by 5%) */
    double smooth;            /* Gaussian smoothing in bins (0: none) */
} lss_hist2_opts;
/* Areas of the 68% and 95% highest-density regions of a 2-D histogram of (x_i, x_j), with the
 * density level found by bisection; the FoM of DeepLSS is 1 / area68. Either output may be NULL. */
LSSDEF int lss_hpd_area(const double *x, int64_t n, int d, int i, int j, const lss_hist2_opts *o,
                        double *area68, double *area95);

/* ---------------------------------------------------------------- plots and files */
typedef struct {
    const char *const *names; /* d axis labels (NULL: p0, p1, ...) */
    const char *const *labels;/* nchains legend entries (NULL: none) */
    const double *truth;      /* d values marked (NULL: none; NaN entries skipped) */
    const double *lo, *hi;    /* axis ranges (NULL: from the samples) */
    int panel;                /* panel size in pixels (0: 170) */
    int bins;                 /* histogram bins per axis (0: 40) */
    double smooth;            /* Gaussian smoothing in bins (0: 1.2) */
    const char *title;
} lss_corner_opts;
/* Corner plot of nchains sample sets x[c] ([n[c]][d]): 1-D marginals and 2-D 68/95% contours. */
LSSDEF int lss_corner_png(const char *path, int nchains, const double *const *x, const int64_t *n,
                          int d, const lss_corner_opts *o);
/* Writes samples [n][d] as CSV (path ending ".csv", header from names or p0..) or NPY. */
LSSDEF int lss_chain_save(const char *path, const double *x, int64_t n, int d,
                          const char *const *names);

#ifdef __cplusplus
}
#endif
#endif /* LSS_INFER_H */

/* ================================================================ implementation */
#ifdef LSS_INFER_IMPLEMENTATION
#ifndef LSS_INFER_IMPLEMENTATION_DONE
#define LSS_INFER_IMPLEMENTATION_DONE

#include <fftw3.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- normal distribution */
LSSDEF double lss_norm_cdf(double x) {
    if (x != x) return x;
    return 0.5 * erfc(-x * 0.70710678118654752440);
}

LSSDEF double lss_norm_ppf(double p) {
    double q, r, val;
    if (!(p >= 0.0 && p <= 1.0)) return NAN;
    if (p == 0.0) return -INFINITY;
    if (p == 1.0) return INFINITY;
    q = p - 0.5;
    if (fabs(q) <= 0.425) {
        r = 0.180625 - q * q;
        return q *
               (((((((r * 2509.0809287301226727 + 33430.575583588128105) * r +
                     67265.770927008700853) * r + 45921.953931549871457) * r +
                   13731.693765509461125) * r + 1971.5909503065514427) * r +
                 133.14166789178437745) * r + 3.387132872796366608) /
               (((((((r * 5226.495278852545925 + 28729.085735721942674) * r +
                     39307.89580009271061) * r + 21213.794301586595867) * r +
                   5394.1960214247511077) * r + 687.1870074920579083) * r +
                 42.313330701600911252) * r + 1.0);
    }
    r = q < 0 ? p : 1.0 - p;
    r = sqrt(-log(r));
    if (r <= 5.0) {
        r -= 1.6;
        val = (((((((r * 7.7454501427834140764e-4 + 0.0227238449892691845833) * r +
                    0.24178072517745061177) * r + 1.27045825245236838258) * r +
                  3.64784832476320460504) * r + 5.7694972214606914055) * r +
                4.6303378461565452959) * r + 1.42343711074968357734) /
              (((((((r * 1.05075007164441684324e-9 + 5.475938084995344946e-4) * r +
                    0.0151986665636164571966) * r + 0.14810397642748007459) * r +
                  0.68976733498510000455) * r + 1.6763848301838038494) * r +
                2.05319162663775882187) * r + 1.0);
    } else {
        r -= 5.0;
        val = (((((((r * 2.01033439929228813265e-7 + 2.71155556874348757815e-5) * r +
                    0.0012426609473880784386) * r + 0.026532189526576123093) * r +
                  0.29656057182850489123) * r + 1.7848265399172913358) * r +
                5.4637849111641143699) * r + 6.6579046435011037772) /
              (((((((r * 2.04426310338993978564e-15 + 1.4215117583164458887e-7) * r +
                    1.8463183175100546818e-5) * r + 7.868691311456132591e-4) * r +
                  0.0148753612908506148525) * r + 0.13692988092273580531) * r +
                0.59983220655588793769) * r + 1.0);
    }
    return q < 0 ? -val : val;
}

/* ---------------------------------------------------------------- helpers */
static int lss__cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile q in [0, 100] of sorted v[n] with linear interpolation (numpy's default). */
static double lss__pct_sorted(const double *v, int64_t n, double q) {
    double pos, f;
    int64_t i;
    if (n <= 0) return NAN;
    pos = q / 100.0 * (double)(n - 1);
    i = (int64_t)floor(pos);
    if (i >= n - 1) return v[n - 1];
    if (i < 0) return v[0];
    f = pos - (double)i;
    return v[i] + f * (v[i + 1] - v[i]);
}

static int lss__ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* ---------------------------------------------------------------- scalers */
LSSDEF void lss_scaler_free(lss_scaler *s) {
    if (!s) return;
    LSS_FREE(s->a);
    LSS_FREE(s->b);
    memset(s, 0, sizeof *s);
}

static int lss__scaler_alloc(lss_scaler *s, int kind, int dim) {
    memset(s, 0, sizeof *s);
    if (kind < LSS_SCALE_ROBUST || kind > LSS_SCALE_QUANTILE)
        return lss_seterr(LSS_ERR_ARG, "scaler: unknown kind %d", kind);
    if (dim <= 0) return lss_seterr(LSS_ERR_ARG, "scaler: dimension %d must be positive", dim);
    s->a = (double *)LSS_MALLOC(sizeof(double) * (size_t)dim);
    s->b = (double *)LSS_MALLOC(sizeof(double) * (size_t)dim);
    if (!s->a || !s->b) {
        lss_scaler_free(s);
        return lss_seterr(LSS_ERR_NOMEM, "scaler: out of memory");
    }
    s->kind = kind;
    s->dim = dim;
    return LSS_OK;
}

LSSDEF int lss_scaler_fit(lss_scaler *s, int kind, const double *x, int64_t n, int dim) {
    double *col;
    int j, st;
    if (!s || !x || n <= 0) return lss_seterr(LSS_ERR_ARG, "scaler_fit: no data (n = %lld)", (long long)n);
    if ((st = lss__scaler_alloc(s, kind, dim)) != LSS_OK) return st;
    col = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!col) {
        lss_scaler_free(s);
        return lss_seterr(LSS_ERR_NOMEM, "scaler_fit: out of memory");
    }
    for (j = 0; j < dim; j++) {
        int64_t i, m = 0;
        for (i = 0; i < n; i++) {
            double v = x[i * dim + j];
            if (isfinite(v)) col[m++] = v;
        }
        if (m == 0) {
            LSS_FREE(col);
            lss_scaler_free(s);
            return lss_seterr(LSS_ERR_ARG, "scaler_fit: column %d has no finite value", j);
        }
        qsort(col, (size_t)m, sizeof(double), lss__cmp_double);
        if (kind == LSS_SCALE_ROBUST) {
            double iqr = lss__pct_sorted(col, m, 75) - lss__pct_sorted(col, m, 25);
            s->a[j] = lss__pct_sorted(col, m, 50);
            s->b[j] = iqr == 0.0 ? 1.0 : iqr;
        } else {
            s->a[j] = col[0];
            s->b[j] = col[m - 1];
        }
    }
    LSS_FREE(col);
    return LSS_OK;
}

static double lss__minmax_scale(const lss_scaler *s, int j) {
    double r = s->b[j] - s->a[j];
    return (LSS_MINMAX_HI - LSS_MINMAX_LO) / (r == 0.0 ? 1.0 : r);
}

LSSDEF int lss_scaler_transform(const lss_scaler *s, const double *x, double *y, int64_t n) {
    int64_t i;
    int j;
    if (!s || !s->a || !x || !y || n < 0) return lss_seterr(LSS_ERR_ARG, "scaler_transform: bad arguments");
    for (i = 0; i < n; i++)
        for (j = 0; j < s->dim; j++) {
            double v = x[i * s->dim + j];
            if (s->kind == LSS_SCALE_ROBUST) {
                y[i * s->dim + j] = (v - s->a[j]) / s->b[j];
            } else {
                double u = LSS_MINMAX_LO + (v - s->a[j]) * lss__minmax_scale(s, j);
                if (s->kind == LSS_SCALE_QUANTILE) {
                    if (!(u > 0.0 && u < 1.0))
                        return lss_seterr(LSS_ERR_RANGE,
                                          "scaler: value %g (row %lld, column %d) lies outside the "
                                          "scaler's fitted range [%g, %g]; the quantile transform "
                                          "is undefined there",
                                          v, (long long)i, j, s->a[j], s->b[j]);
                    u = lss_norm_ppf(u);
                }
                y[i * s->dim + j] = u;
            }
        }
    return LSS_OK;
}

LSSDEF int lss_scaler_inverse(const lss_scaler *s, const double *y, double *x, int64_t n) {
    int64_t i;
    int j;
    if (!s || !s->a || !x || !y || n < 0) return lss_seterr(LSS_ERR_ARG, "scaler_inverse: bad arguments");
    for (i = 0; i < n; i++)
        for (j = 0; j < s->dim; j++) {
            double v = y[i * s->dim + j];
            if (s->kind == LSS_SCALE_ROBUST) {
                x[i * s->dim + j] = v * s->b[j] + s->a[j];
            } else {
                if (s->kind == LSS_SCALE_QUANTILE) v = lss_norm_cdf(v);
                x[i * s->dim + j] = s->a[j] + (v - LSS_MINMAX_LO) / lss__minmax_scale(s, j);
            }
        }
    return LSS_OK;
}

LSSDEF int lss_scaler_check(const lss_scaler *s, const double *x, int64_t n) {
    int64_t i;
    int j;
    if (!s || !s->a || !x || n < 0) return lss_seterr(LSS_ERR_ARG, "scaler_check: bad arguments");
    for (i = 0; i < n; i++)
        for (j = 0; j < s->dim; j++) {
            double v = x[i * s->dim + j];
            if (!isfinite(v))
                return lss_seterr(LSS_ERR_RANGE, "scaler: value %g (row %lld, column %d) is not finite",
                                  v, (long long)i, j);
            if (s->kind != LSS_SCALE_ROBUST && (v < s->a[j] || v > s->b[j]))
                return lss_seterr(LSS_ERR_RANGE,
                                  "scaler: observed summary %g (row %lld, column %d) lies outside the "
                                  "scaler's fitted range [%g, %g]",
                                  v, (long long)i, j, s->a[j], s->b[j]);
        }
    return LSS_OK;
}

LSSDEF int lss_scaler_save(const lss_scaler *s, const char *path) {
    double *buf;
    int j, st;
    if (!s || !s->a || !path) return lss_seterr(LSS_ERR_ARG, "scaler_save: bad arguments");
    buf = (double *)LSS_MALLOC(sizeof(double) * 3 * (size_t)s->dim);
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "scaler_save: out of memory");
    if (lss__ends_with(path, ".csv")) {
        static const char *const hdr[3] = {"kind", "a", "b"};
        for (j = 0; j < s->dim; j++) {
            buf[3 * j] = s->kind;
            buf[3 * j + 1] = s->a[j];
            buf[3 * j + 2] = s->b[j];
        }
        st = lss_csv_write(path, 3, hdr, s->dim, buf);
    } else {
        int64_t shape[2];
        shape[0] = 3;
        shape[1] = s->dim;
        for (j = 0; j < s->dim; j++) {
            buf[j] = s->kind;
            buf[s->dim + j] = s->a[j];
            buf[2 * s->dim + j] = s->b[j];
        }
        st = lss_npy_save(path, LSS_F64, 2, shape, buf);
    }
    LSS_FREE(buf);
    return st;
}

/* The CSV writer prints %.9g; values are read back to that precision. NPY is exact. */
LSSDEF int lss_scaler_load(lss_scaler *s, const char *path) {
    int st, j, dim, kind;
    if (!s || !path) return lss_seterr(LSS_ERR_ARG, "scaler_load: bad arguments");
    memset(s, 0, sizeof *s);
    if (lss__ends_with(path, ".csv")) {
        lss_csv c;
        if ((st = lss_csv_read(path, &c)) != LSS_OK) return st;
        if (c.ncols != 3 || c.nrows < 1 || c.nrows > 1000000) {
            lss_csv_free(&c);
            return lss_seterr(LSS_ERR_FORMAT, "scaler_load: %s: want columns kind,a,b and at least one row", path);
        }
        dim = (int)c.nrows;
        kind = c.data[0] >= 1 && c.data[0] <= 3 ? (int)c.data[0] : 0;
        if ((double)kind != c.data[0] || (st = lss__scaler_alloc(s, kind, dim)) != LSS_OK) {
            lss_csv_free(&c);
            return lss_seterr(LSS_ERR_FORMAT, "scaler_load: %s: bad scaler kind %g", path, c.data[0]);
        }
        for (j = 0; j < dim; j++) {
            s->a[j] = c.data[3 * j + 1];
            s->b[j] = c.data[3 * j + 2];
        }
        lss_csv_free(&c);
    } else {
        lss_array a;
        const double *v;
        if ((st = lss_npy_load(path, &a)) != LSS_OK) return st;
        if (a.dtype != LSS_F64 || a.ndim != 2 || a.shape[0] != 3 || a.shape[1] < 1 || a.shape[1] > 1000000) {
            lss_array_free(&a);
            return lss_seterr(LSS_ERR_FORMAT, "scaler_load: %s: want a float64 array [3, dim]", path);
        }
        v = (const double *)a.data;
        dim = (int)a.shape[1];
        kind = v[0] >= 1 && v[0] <= 3 ? (int)v[0] : 0;
        if ((double)kind != v[0] || lss__scaler_alloc(s, kind, dim) != LSS_OK) {
            double k0 = v[0];
            lss_array_free(&a);
            lss_scaler_free(s);
            return lss_seterr(LSS_ERR_FORMAT, "scaler_load: %s: bad scaler kind %g", path, k0);
        }
        for (j = 0; j < dim; j++) {
            s->a[j] = v[dim + j];
            s->b[j] = v[2 * dim + j];
        }
        lss_array_free(&a);
    }
    for (j = 0; j < s->dim; j++)
        if (!isfinite(s->a[j]) || !isfinite(s->b[j]) || (s->kind == LSS_SCALE_ROBUST && s->b[j] == 0.0) ||
            (s->kind != LSS_SCALE_ROBUST && s->b[j] < s->a[j])) {
            lss_scaler_free(s);
            return lss_seterr(LSS_ERR_FORMAT, "scaler_load: %s: invalid values in dimension %d", path, j);
        }
    return LSS_OK;
}

/* ---------------------------------------------------------------- SVD (one-sided Jacobi) */
LSSDEF int lss_svd_values(const double *a, int m, int n, double *s) {
    double *u;
    int rows, cols, i, p, q, sweep, tr;
    if (!a || !s || m <= 0 || n <= 0) return lss_seterr(LSS_ERR_ARG, "svd: bad arguments (%d x %d)", m, n);
    tr = m < n;
    rows = tr ? n : m;
    cols = tr ? m : n;
    /* u holds the matrix column-major: column c at u + c * rows */
    u = (double *)LSS_MALLOC(sizeof(double) * (size_t)rows * (size_t)cols);
    if (!u) return lss_seterr(LSS_ERR_NOMEM, "svd: out of memory");
    for (i = 0; i < m; i++)
        for (p = 0; p < n; p++) {
            if (tr) u[(size_t)i * rows + p] = a[(size_t)i * n + p];
            else u[(size_t)p * rows + i] = a[(size_t)i * n + p];
        }
    for (sweep = 0; sweep < 100; sweep++) {
        int rotated = 0;
        for (p = 0; p < cols - 1; p++)
            for (q = p + 1; q < cols; q++) {
                double al = 0, be = 0, ga = 0, zeta, t, c, sn;
                double *up = u + (size_t)p * rows, *uq = u + (size_t)q * rows;
                for (i = 0; i < rows; i++) {
                    al += up[i] * up[i];
                    be += uq[i] * uq[i];
                    ga += up[i] * uq[i];
                }
                if (ga == 0.0 || fabs(ga) <= 1e-15 * sqrt(al * be)) continue;
                rotated = 1;
                zeta = (be - al) / (2.0 * ga);
                t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
                c = 1.0 / sqrt(1.0 + t * t);
                sn = c * t;
                for (i = 0; i < rows; i++) {
                    double x = up[i], y = uq[i];
                    up[i] = c * x - sn * y;
                    uq[i] = sn * x + c * y;
                }
            }
        if (!rotated) break;
    }
    for (p = 0; p < cols; p++) {
        double ss = 0;
        for (i = 0; i < rows; i++) ss += u[(size_t)p * rows + i] * u[(size_t)p * rows + i];
        s[p] = sqrt(ss);
    }
    LSS_FREE(u);
    for (p = 1; p < cols; p++) { /* insertion sort, descending */
        double v = s[p];
        q = p - 1;
        while (q >= 0 && s[q] < v) {
            s[q + 1] = s[q];
            q--;
        }
        s[q + 1] = v;
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- hull */
static int lss__cmp_xy(const void *a, const void *b) {
    const double *p = (const double *)a, *q = (const double *)b;
    if (p[0] != q[0]) return p[0] < q[0] ? -1 : 1;
    return (p[1] > q[1]) - (p[1] < q[1]);
}

static double lss__cross(const double *o, const double *a, const double *b) {
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
}

LSSDEF int lss_convex_hull(const double *xy, int n, double *hull, int *nh) {
    double *p, *h;
    int i, k = 0, t, m = 0;
    if (!xy || !hull || !nh) return lss_seterr(LSS_ERR_ARG, "convex_hull: NULL argument");
    *nh = 0;
    if (n < 3) return lss_seterr(LSS_ERR_ARG, "convex_hull: %d points; at least 3 are needed", n);
    for (i = 0; i < 2 * n; i++)
        if (!isfinite(xy[i])) return lss_seterr(LSS_ERR_ARG, "convex_hull: point %d is not finite", i / 2);
    p = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)n);
    h = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)(2 * n + 1));
    if (!p || !h) {
        LSS_FREE(p);
        LSS_FREE(h);
        return lss_seterr(LSS_ERR_NOMEM, "convex_hull: out of memory");
    }
    memcpy(p, xy, sizeof(double) * 2 * (size_t)n);
    qsort(p, (size_t)n, 2 * sizeof(double), lss__cmp_xy);
    for (i = 0; i < n; i++) { /* drop duplicates */
        if (m > 0 && p[2 * (m - 1)] == p[2 * i] && p[2 * (m - 1) + 1] == p[2 * i + 1]) continue;
        p[2 * m] = p[2 * i];
        p[2 * m + 1] = p[2 * i + 1];
        m++;
    }
    for (i = 0; i < m; i++) { /* lower hull */
        while (k >= 2 && lss__cross(h + 2 * (k - 2), h + 2 * (k - 1), p + 2 * i) <= 0) k--;
        h[2 * k] = p[2 * i];
        h[2 * k + 1] = p[2 * i + 1];
        k++;
    }
    for (i = m - 2, t = k + 1; i >= 0; i--) { /* upper hull */
        while (k >= t && lss__cross(h + 2 * (k - 2), h + 2 * (k - 1), p + 2 * i) <= 0) k--;
        h[2 * k] = p[2 * i];
        h[2 * k + 1] = p[2 * i + 1];
        k++;
    }
    k--; /* the last point repeats the first */
    LSS_FREE(p);
    if (k < 3) {
        LSS_FREE(h);
        return lss_seterr(LSS_ERR_ARG, "convex_hull: the %d points are collinear or coincide (%d distinct)", n, m);
    }
    memcpy(hull, h, sizeof(double) * 2 * (size_t)k);
    LSS_FREE(h);
    *nh = k;
    return LSS_OK;
}

LSSDEF int lss_hull_contains(const double *hull, int nh, double x, double y, double tol) {
    int i;
    if (!hull || nh < 3 || x != x || y != y) return 0;
    for (i = 0; i < nh; i++) {
        const double *a = hull + 2 * i, *b = hull + 2 * ((i + 1) % nh);
        double ex = b[0] - a[0], ey = b[1] - a[1], len = sqrt(ex * ex + ey * ey);
        double cr = ex * (y - a[1]) - ey * (x - a[0]);
        if (cr < -tol * len) return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- priors */
LSSDEF void lss_prior_free(lss_prior *p) {
    int i;
    if (!p) return;
    LSS_FREE(p->lo);
    LSS_FREE(p->hi);
    LSS_FREE(p->hull);
    if (p->names) {
        for (i = 0; i < p->d; i++) LSS_FREE(p->names[i]);
        LSS_FREE(p->names);
    }
    memset(p, 0, sizeof *p);
    p->hull_i = p->hull_j = -1;
}

LSSDEF int lss_prior_init(lss_prior *p, int d, const double *lo, const double *hi) {
    int i;
    if (!p) return lss_seterr(LSS_ERR_ARG, "prior_init: NULL prior");
    memset(p, 0, sizeof *p);
    p->hull_i = p->hull_j = -1;
    if (d <= 0) return lss_seterr(LSS_ERR_ARG, "prior_init: dimension %d must be positive", d);
    p->lo = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    p->hi = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    if (!p->lo || !p->hi) {
        lss_prior_free(p);
        return lss_seterr(LSS_ERR_NOMEM, "prior_init: out of memory");
    }
    p->d = d;
    for (i = 0; i < d; i++) {
        p->lo[i] = lo ? lo[i] : -INFINITY;
        p->hi[i] = hi ? hi[i] : INFINITY;
        if (p->lo[i] != p->lo[i] || p->hi[i] != p->hi[i] || p->lo[i] > p->hi[i]) {
            double l = p->lo[i], h = p->hi[i];
            lss_prior_free(p);
            return lss_seterr(LSS_ERR_ARG, "prior_init: parameter %d has limits [%g, %g]", i, l, h);
        }
    }
    return LSS_OK;
}

LSSDEF int lss_prior_set_hull(lss_prior *p, int i, int j, const double *xy, int n) {
    double *h, x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    int nh, st, k;
    if (!p || !p->lo || i < 0 || j < 0 || i >= p->d || j >= p->d || i == j || !xy || n <= 0)
        return lss_seterr(LSS_ERR_ARG, "prior_set_hull: bad parameters %d, %d or points", i, j);
    h = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)n);
    if (!h) return lss_seterr(LSS_ERR_NOMEM, "prior_set_hull: out of memory");
    if ((st = lss_convex_hull(xy, n, h, &nh)) != LSS_OK) {
        LSS_FREE(h);
        return st;
    }
    for (k = 0; k < nh; k++) {
        x0 = fmin(x0, h[2 * k]); x1 = fmax(x1, h[2 * k]);
        y0 = fmin(y0, h[2 * k + 1]); y1 = fmax(y1, h[2 * k + 1]);
    }
    LSS_FREE(p->hull);
    p->hull = h;
    p->hull_n = nh;
    p->hull_i = i;
    p->hull_j = j;
    p->hull_tol = 1e-9 * fmax(x1 - x0, y1 - y0);
    return LSS_OK;
}

LSSDEF int lss_prior_set_names(lss_prior *p, const char *const *names) {
    int i;
    if (!p || !p->lo || !names) return lss_seterr(LSS_ERR_ARG, "prior_set_names: bad arguments");
    if (!p->names) {
        p->names = (char **)LSS_MALLOC(sizeof(char *) * (size_t)p->d);
        if (!p->names) return lss_seterr(LSS_ERR_NOMEM, "prior_set_names: out of memory");
        for (i = 0; i < p->d; i++) p->names[i] = NULL;
    }
    for (i = 0; i < p->d; i++) {
        size_t l = strlen(names[i] ? names[i] : "") + 1;
        LSS_FREE(p->names[i]);
        p->names[i] = (char *)LSS_MALLOC(l);
        if (!p->names[i]) return lss_seterr(LSS_ERR_NOMEM, "prior_set_names: out of memory");
        memcpy(p->names[i], names[i] ? names[i] : "", l);
    }
    return LSS_OK;
}

LSSDEF int lss_prior_deeplss(lss_prior *p, int nonlinear, double *fid) {
    static const double lo[9] = {0.15, 0.5, -6.0, -4.0, 0.5, -3.0, 0.4, -3.0, -2.0};
    static const double hi[9] = {0.45, 1.2, 6.0, 6.0, 2.5, 3.0, 1.0, 1.0, 2.0};
    static const double fv[9] = {0.29, 0.71, 0.5, 1.6, 1.5, 0.5, 0.7, 0.5, 0.0};
    static const char *const nm[9] = {"Omega_m", "sigma_8", "A_IA", "eta_IA", "b_g", "eta_bg", "r_g",
                                      "b_g2", "eta_bg2"};
    int d = nonlinear ? 9 : 7, st;
    if ((st = lss_prior_init(p, d, lo, hi)) != LSS_OK) return st;
    if ((st = lss_prior_set_names(p, nm)) != LSS_OK) {
        lss_prior_free(p);
        return st;
    }
    if (fid) memcpy(fid, fv, sizeof(double) * (size_t)d);
    return LSS_OK;
}

/* 0 inside; else the index of the first violated parameter + 1 (d + 1 for the hull). */
static int lss__prior_where(const lss_prior *p, const double *x) {
    int i;
    for (i = 0; i < p->d; i++)
        if (!(x[i] >= p->lo[i] && x[i] <= p->hi[i])) return i + 1;
    if (p->hull && !lss_hull_contains(p->hull, p->hull_n, x[p->hull_i], x[p->hull_j], p->hull_tol))
        return p->d + 1;
    return 0;
}

LSSDEF int lss_prior_contains(const lss_prior *p, const double *x) {
    if (!p || !p->lo || !x) return 0;
    return lss__prior_where(p, x) == 0;
}

static const char *lss__pname(const lss_prior *p, int i, char *buf, size_t n) {
    if (p && p->names && p->names[i] && p->names[i][0]) return p->names[i];
    snprintf(buf, n, "parameter %d", i);
    return buf;
}

/* ---------------------------------------------------------------- ensemble sampler */
LSSDEF double lss_stretch_z(lss_rng *r, double a) {
    double u = lss_rng_uniform(r), t = (a - 1.0) * u + 1.0;
    return t * t / a;
}

LSSDEF void lss_emcee_free(lss_emcee *e) {
    if (!e) return;
    LSS_FREE(e->pos); LSS_FREE(e->lp); LSS_FREE(e->chain); LSS_FREE(e->lpchain);
    LSS_FREE(e->naccept); LSS_FREE(e->label); LSS_FREE(e->sidx); LSS_FREE(e->cidx);
    LSS_FREE(e->bmap); LSS_FREE(e->prop); LSS_FREE(e->plp); LSS_FREE(e->z);
    LSS_FREE(e->bx); LSS_FREE(e->blp);
    LSS_FREE(e);
}

LSSDEF int lss_emcee_create(int nwalkers, int d, const lss_emcee_opts *o, lss_emcee **out) {
    lss_emcee *e;
    size_t W, D;
    if (!out) return lss_seterr(LSS_ERR_ARG, "emcee_create: NULL output");
    *out = NULL;
    if (d <= 0) return lss_seterr(LSS_ERR_ARG, "emcee_create: dimension %d must be positive", d);
    if (nwalkers < 2 * d)
        return lss_seterr(LSS_ERR_ARG,
                          "emcee_create: fewer than 2*d walkers (%d walkers for d = %d; need at least %d)",
                          nwalkers, d, 2 * d);
    if (o && o->prior && o->prior->d != d)
        return lss_seterr(LSS_ERR_SHAPE, "emcee_create: prior has %d parameters, sampler %d", o->prior->d, d);
    if (o && (o->a != 0.0 && !(o->a > 1.0 && isfinite(o->a))))
        return lss_seterr(LSS_ERR_ARG, "emcee_create: stretch scale a = %g must exceed 1", o->a);
    e = (lss_emcee *)LSS_MALLOC(sizeof *e);
    if (!e) return lss_seterr(LSS_ERR_NOMEM, "emcee_create: out of memory");
    memset(e, 0, sizeof *e);
    if (o) e->o = *o;
    if (e->o.a == 0.0) e->o.a = 2.0;
    if (e->o.progress_every <= 0) e->o.progress_every = 100;
    if (e->o.max_cond == 0.0) e->o.max_cond = 1e8;
    e->nwalkers = nwalkers;
    e->d = d;
    W = (size_t)nwalkers;
    D = (size_t)d;
    e->pos = (double *)LSS_MALLOC(sizeof(double) * W * D);
    e->lp = (double *)LSS_MALLOC(sizeof(double) * W);
    e->naccept = (int64_t *)LSS_MALLOC(sizeof(int64_t) * W);
    e->label = (int *)LSS_MALLOC(sizeof(int) * W);
    e->sidx = (int *)LSS_MALLOC(sizeof(int) * W);
    e->cidx = (int *)LSS_MALLOC(sizeof(int) * W);
    e->bmap = (int *)LSS_MALLOC(sizeof(int) * W);
    e->prop = (double *)LSS_MALLOC(sizeof(double) * W * D);
    e->plp = (double *)LSS_MALLOC(sizeof(double) * W);
    e->z = (double *)LSS_MALLOC(sizeof(double) * W);
    e->bx = (double *)LSS_MALLOC(sizeof(double) * W * D);
    e->blp = (double *)LSS_MALLOC(sizeof(double) * W);
    if (!e->pos || !e->lp || !e->naccept || !e->label || !e->sidx || !e->cidx || !e->bmap || !e->prop ||
        !e->plp || !e->z || !e->bx || !e->blp) {
        lss_emcee_free(e);
        return lss_seterr(LSS_ERR_NOMEM, "emcee_create: out of memory");
    }
    memset(e->naccept, 0, sizeof(int64_t) * W);
    lss_rng_init(&e->rng, e->o.seed, e->o.stream);
    *out = e;
    return LSS_OK;
}

/* Log-probabilities of n points: outside the prior -inf without a call; the others in one call. */
static int lss__emcee_eval(lss_emcee *e, const double *x, int n, double *lp, lss_logprob_fn f, void *user) {
    int k, nin = 0, d = e->d, st;
    for (k = 0; k < n; k++) {
        if (e->o.prior && !lss_prior_contains(e->o.prior, x + (size_t)k * d)) {
            lp[k] = -INFINITY;
            continue;
        }
        memcpy(e->bx + (size_t)nin * d, x + (size_t)k * d, sizeof(double) * (size_t)d);
        e->bmap[nin++] = k;
    }
    if (nin > 0) {
        if ((st = f(e->bx, nin, d, e->blp, user)) != LSS_OK) {
            if (!lss_last_error()[0]) lss_seterr(st, "emcee: the log-probability callback failed (status %d)", st);
            return st;
        }
        for (k = 0; k < nin; k++) {
            double v = e->blp[k];
            if (v != v || v == INFINITY) {
                char msg[512];
                int i, len = 0;
                const double *xp = e->bx + (size_t)k * d;
                for (i = 0; i < d && len < 400; i++)
                    len += snprintf(msg + len, sizeof msg - (size_t)len, "%s%.6g", i ? ", " : "", xp[i]);
                return lss_seterr(LSS_ERR_NUMERIC,
                                  "emcee: the log-probability is %s at (%s); return -inf for zero "
                                  "probability",
                                  v != v ? "NaN" : "+inf", msg);
            }
            lp[e->bmap[k]] = v;
        }
    }
    return LSS_OK;
}

LSSDEF int lss_emcee_start(lss_emcee *e, const double *p0, lss_logprob_fn f, void *user) {
    int W, d, k, i, st;
    char nb[32];
    if (!e || !p0 || !f) return lss_seterr(LSS_ERR_ARG, "emcee_start: NULL argument");
    W = e->nwalkers;
    d = e->d;
    for (k = 0; k < W; k++)
        for (i = 0; i < d; i++)
            if (!isfinite(p0[(size_t)k * d + i]))
                return lss_seterr(LSS_ERR_ARG, "emcee_start: walker %d, parameter %d is not finite", k, i);
    if (e->o.prior)
        for (k = 0; k < W; k++) {
            int w = lss__prior_where(e->o.prior, p0 + (size_t)k * d);
            if (w > 0 && w <= d)
                return lss_seterr(LSS_ERR_RANGE,
                                  "emcee_start: walker %d starts outside the prior: %s = %g not in [%g, %g]",
                                  k, lss__pname(e->o.prior, w - 1, nb, sizeof nb), p0[(size_t)k * d + w - 1],
                                  e->o.prior->lo[w - 1], e->o.prior->hi[w - 1]);
            if (w == d + 1)
                return lss_seterr(LSS_ERR_RANGE,
                                  "emcee_start: walker %d starts outside the prior: (%g, %g) lies outside "
                                  "the convex hull of parameters %d and %d",
                                  k, p0[(size_t)k * d + e->o.prior->hull_i], p0[(size_t)k * d + e->o.prior->hull_j],
                                  e->o.prior->hull_i, e->o.prior->hull_j);
        }
    if (e->o.max_cond > 0) {
        /* emcee's check: centre, scale each column by its max |value|, normalise the columns, and
         * require the 2-norm condition number of the W x d matrix to be at most max_cond. */
        double *m = e->prop, *s = e->plp, cond;
        for (i = 0; i < d; i++) {
            double mean = 0, mx = 0, nrm = 0, raw = 0;
            for (k = 0; k < W; k++) {
                mean += p0[(size_t)k * d + i];
                raw = fmax(raw, fabs(p0[(size_t)k * d + i]));
            }
            mean /= W;
            for (k = 0; k < W; k++) {
                m[(size_t)k * d + i] = p0[(size_t)k * d + i] - mean;
                mx = fmax(mx, fabs(m[(size_t)k * d + i]));
            }
            if (mx <= 1e-14 * raw)
                return lss_seterr(LSS_ERR_ARG,
                                  "emcee_start: the initial walkers are degenerate: parameter %d has the "
                                  "same value in every walker (add a small random jitter)", i);
            for (k = 0; k < W; k++) {
                m[(size_t)k * d + i] /= mx;
                nrm += m[(size_t)k * d + i] * m[(size_t)k * d + i];
            }
            nrm = sqrt(nrm);
            for (k = 0; k < W; k++) m[(size_t)k * d + i] /= nrm;
        }
        if ((st = lss_svd_values(m, W, d, s)) != LSS_OK) return st;
        cond = s[d - 1] > 0 ? s[0] / s[d - 1] : INFINITY;
        if (!(cond <= e->o.max_cond))
            return lss_seterr(LSS_ERR_ARG,
                              "emcee_start: the initial walkers are degenerate: they lie on a hyperplane "
                              "(condition number %.3g > %.3g); start them from a ball with independent "
                              "jitter in every parameter", cond, e->o.max_cond);
    }
    if ((st = lss__emcee_eval(e, p0, W, e->plp, f, user)) != LSS_OK) return st;
    memcpy(e->pos, p0, sizeof(double) * (size_t)W * d);
    memcpy(e->lp, e->plp, sizeof(double) * (size_t)W);
    e->started = 1;
    return LSS_OK;
}

LSSDEF void lss_emcee_reset(lss_emcee *e) {
    if (!e) return;
    e->nsteps = 0;
    memset(e->naccept, 0, sizeof(int64_t) * (size_t)e->nwalkers);
}

LSSDEF double lss_emcee_acceptance(const lss_emcee *e, double *acc) {
    double s = 0;
    int k;
    if (!e || e->nsteps == 0) {
        if (e && acc)
            for (k = 0; k < e->nwalkers; k++) acc[k] = 0;
        return 0;
    }
    for (k = 0; k < e->nwalkers; k++) {
        double a = (double)e->naccept[k] / (double)e->nsteps;
        if (acc) acc[k] = a;
        s += a;
    }
    return s / e->nwalkers;
}

LSSDEF int lss_emcee_run(lss_emcee *e, int64_t nsteps, lss_logprob_fn f, void *user) {
    int W, d, half, st;
    int64_t step;
    if (!e || !f) return lss_seterr(LSS_ERR_ARG, "emcee_run: NULL argument");
    if (!e->started) return lss_seterr(LSS_ERR_STATE, "emcee_run: call lss_emcee_start first");
    if (nsteps < 0) return lss_seterr(LSS_ERR_ARG, "emcee_run: negative step count");
    W = e->nwalkers;
    d = e->d;
    if (e->nsteps + nsteps > e->cap) {
        int64_t cap = e->nsteps + nsteps;
        double *c, *l;
        if ((double)cap * W * d > 1e11) return lss_seterr(LSS_ERR_NOMEM, "emcee_run: chain too large");
        c = (double *)LSS_REALLOC(e->chain, sizeof(double) * (size_t)cap * W * d);
        if (!c) return lss_seterr(LSS_ERR_NOMEM, "emcee_run: out of memory for the chain");
        e->chain = c;
        l = (double *)LSS_REALLOC(e->lpchain, sizeof(double) * (size_t)cap * W);
        if (!l) return lss_seterr(LSS_ERR_NOMEM, "emcee_run: out of memory for the chain");
        e->lpchain = l;
        e->cap = cap;
    }
    for (step = 0; step < nsteps; step++) {
        int k;
        /* red-blue split: labels k % 2, shuffled every step */
        for (k = 0; k < W; k++) e->label[k] = k % 2;
        for (k = W - 1; k > 0; k--) {
            int j = (int)lss_rng_below(&e->rng, (uint32_t)(k + 1)), t = e->label[k];
            e->label[k] = e->label[j];
            e->label[j] = t;
        }
        for (half = 0; half < 2; half++) {
            int ns = 0, nc = 0, s;
            for (k = 0; k < W; k++) {
                if (e->label[k] == half) e->sidx[ns++] = k;
                else e->cidx[nc++] = k;
            }
            if (ns == 0) continue;
            for (s = 0; s < ns; s++) {
                int kk = e->sidx[s], j = e->cidx[lss_rng_below(&e->rng, (uint32_t)nc)], i;
                double z = lss_stretch_z(&e->rng, e->o.a);
                const double *xk = e->pos + (size_t)kk * d, *xj = e->pos + (size_t)j * d;
                double *y = e->prop + (size_t)s * d;
                e->z[s] = z;
                for (i = 0; i < d; i++) y[i] = xj[i] + z * (xk[i] - xj[i]);
            }
            if ((st = lss__emcee_eval(e, e->prop, ns, e->plp, f, user)) != LSS_OK) return st;
            for (s = 0; s < ns; s++) {
                int kk = e->sidx[s], acc;
                double lnu = log(lss_rng_uniform(&e->rng)), ly = e->plp[s], lx = e->lp[kk];
                if (ly == -INFINITY) acc = 0; /* includes both -inf: never NaN */
                else if (lx == -INFINITY) acc = 1;
                else acc = (double)(d - 1) * log(e->z[s]) + ly - lx > lnu;
                if (acc) {
                    memcpy(e->pos + (size_t)kk * d, e->prop + (size_t)s * d, sizeof(double) * (size_t)d);
                    e->lp[kk] = ly;
                    e->naccept[kk]++;
                }
            }
        }
        memcpy(e->chain + (size_t)e->nsteps * W * d, e->pos, sizeof(double) * (size_t)W * d);
        memcpy(e->lpchain + (size_t)e->nsteps * W, e->lp, sizeof(double) * (size_t)W);
        e->nsteps++;
        if (e->o.progress && ((step + 1) % e->o.progress_every == 0 || step + 1 == nsteps)) {
            if (e->o.progress(step + 1, nsteps, lss_emcee_acceptance(e, NULL), e->o.progress_user))
                return lss_seterr(LSS_ERR_STATE, "emcee_run: stopped by the progress callback after %lld steps",
                                  (long long)(step + 1));
        }
    }
    return LSS_OK;
}

LSSDEF int lss_emcee_flat(const lss_emcee *e, int64_t burn, int64_t thin, double **out, int64_t *n) {
    int64_t s, cnt = 0, rows;
    size_t row = 0;
    if (!e || !out || !n) return lss_seterr(LSS_ERR_ARG, "emcee_flat: NULL argument");
    *out = NULL;
    *n = 0;
    if (burn < 0 || thin < 1) return lss_seterr(LSS_ERR_ARG, "emcee_flat: burn %lld, thin %lld", (long long)burn, (long long)thin);
    if (burn >= e->nsteps)
        return lss_seterr(LSS_ERR_RANGE, "emcee_flat: burn-in %lld leaves nothing of %lld steps", (long long)burn,
                          (long long)e->nsteps);
    for (s = burn; s < e->nsteps; s += thin) cnt++;
    rows = cnt * e->nwalkers;
    *out = (double *)LSS_MALLOC(sizeof(double) * (size_t)rows * (size_t)e->d);
    if (!*out) return lss_seterr(LSS_ERR_NOMEM, "emcee_flat: out of memory");
    for (s = burn; s < e->nsteps; s += thin) {
        memcpy(*out + row, e->chain + (size_t)s * e->nwalkers * e->d, sizeof(double) * (size_t)e->nwalkers * e->d);
        row += (size_t)e->nwalkers * e->d;
    }
    *n = rows;
    return LSS_OK;
}

/* ---------------------------------------------------------------- autocorrelation */
LSSDEF int lss_emcee_suggest(const lss_emcee *e, int64_t *burn, int64_t *thin, double *tau_max) {
    double *tau, mx = 0, mn = HUGE_VAL;
    int st, i;
    if (!e || !burn || !thin) return lss_seterr(LSS_ERR_ARG, "emcee_suggest: NULL argument");
    tau = (double *)LSS_MALLOC(sizeof(double) * (size_t)e->d);
    if (!tau) return lss_seterr(LSS_ERR_NOMEM, "emcee_suggest: out of memory");
    st = lss_autocorr_time(e->chain, e->nsteps, e->nwalkers, e->d, 0, 0, tau);
    if (st == LSS_OK || st == LSS_ERR_RANGE) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", lss_last_error());
        for (i = 0; i < e->d; i++) {
            mx = fmax(mx, tau[i]);
            mn = fmin(mn, tau[i]);
        }
        *burn = (int64_t)ceil(2.0 * mx);
        *thin = mn >= 2.0 ? (int64_t)floor(mn / 2.0) : 1;
        if (tau_max) *tau_max = mx;
        if (st != LSS_OK) lss_seterr(st, "%s", msg);
    }
    LSS_FREE(tau);
    return st;
}

LSSDEF int lss_autocorr_time(const double *chain, int64_t n, int m, int d, double c, double tol, double *tau) {
    int64_t nfft = 1, t, M;
    double *buf = NULL, *acf = NULL;
    fftw_complex *spec = NULL;
    fftw_plan fw, bw;
    int i, k, short_i = -1, nopos = -1;
    if (!chain || !tau || n < 2 || m < 1 || d < 1)
        return lss_seterr(LSS_ERR_ARG, "autocorr_time: need a chain of at least 2 steps (n = %lld, m = %d, d = %d)",
                          (long long)n, m, d);
    if (n > ((int64_t)1 << 40)) return lss_seterr(LSS_ERR_ARG, "autocorr_time: chain of %lld steps is too long", (long long)n);
    if (c <= 0) c = 5.0;
    if (tol == 0) tol = 50.0;
    while (nfft < 2 * n) nfft *= 2;
    buf = (double *)fftw_malloc(sizeof(double) * (size_t)nfft);
    spec = (fftw_complex *)fftw_malloc(sizeof(fftw_complex) * (size_t)(nfft / 2 + 1));
    acf = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!buf || !spec || !acf) {
        if (buf) fftw_free(buf);
        if (spec) fftw_free(spec);
        LSS_FREE(acf);
        return lss_seterr(LSS_ERR_NOMEM, "autocorr_time: out of memory");
    }
    fw = fftw_plan_dft_r2c_1d((int)nfft, buf, spec, FFTW_ESTIMATE);
    bw = fftw_plan_dft_c2r_1d((int)nfft, spec, buf, FFTW_ESTIMATE);
    if (!fw || !bw) {
        if (fw) fftw_destroy_plan(fw);
        if (bw) fftw_destroy_plan(bw);
        fftw_free(buf);
        fftw_free(spec);
        LSS_FREE(acf);
        return lss_seterr(LSS_ERR_NOMEM, "autocorr_time: FFTW plan failed for length %lld", (long long)nfft);
    }
    for (i = 0; i < d; i++) {
        double cum = 0, taum = 0;
        int nused = 0;
        for (t = 0; t < n; t++) acf[t] = 0;
        for (k = 0; k < m; k++) {
            double mean = 0, a0;
            for (t = 0; t < n; t++) mean += chain[((size_t)t * m + k) * d + i];
            mean /= (double)n;
            for (t = 0; t < n; t++) buf[t] = chain[((size_t)t * m + k) * d + i] - mean;
            for (t = n; t < nfft; t++) buf[t] = 0;
            fftw_execute(fw);
            for (t = 0; t <= nfft / 2; t++) {
                double re = spec[t][0], im = spec[t][1];
                spec[t][0] = re * re + im * im;
                spec[t][1] = 0;
            }
            fftw_execute(bw);
            a0 = buf[0];
            if (!(a0 > 0)) continue; /* a constant walker carries no information */
            for (t = 0; t < n; t++) acf[t] += buf[t] / a0;
            nused++;
        }
        if (nused == 0) {
            tau[i] = NAN;
            continue;
        }
        for (t = 0; t < n; t++) acf[t] /= nused;
        /* the window also requires tau(M) > 0: anti-correlated chains (HMC) can make the partial
         * sum at M = 1 negative, which is no estimate of a time */
        taum = 1.0;
        for (M = 0; M < n; M++) {
            cum += acf[M];
            taum = 2.0 * cum - 1.0;
            if (taum > 0 && (double)M >= c * taum) break;
        }
        tau[i] = taum;
        if (!(taum > 0)) nopos = i; /* no positive partial sum passed the window test */
        if (tol > 0 && short_i < 0 && tol * taum > (double)n) short_i = i;
    }
    fftw_destroy_plan(fw);
    fftw_destroy_plan(bw);
    fftw_free(buf);
    fftw_free(spec);
    LSS_FREE(acf);
    for (i = 0; i < d; i++)
        if (tau[i] != tau[i])
            return lss_seterr(LSS_ERR_NUMERIC, "autocorr_time: parameter %d is constant in every walker", i);
    if (nopos >= 0)
        return lss_seterr(LSS_ERR_NUMERIC, "autocorr_time: no positive estimate for parameter %d (tau %g)", nopos,
                          tau[nopos]);
    if (short_i >= 0)
        return lss_seterr(LSS_ERR_RANGE,
                          "autocorr_time: the chain is too short: %lld steps < %g x tau = %g x %.4g for "
                          "parameter %d; run at least %.0f steps",
                          (long long)n, tol, tol, tau[short_i], short_i, ceil(tol * tau[short_i]));
    return LSS_OK;
}


/* ---------------------------------------------------------------- HMC */
typedef struct {
    int nchains, d;
    const lss_prior *prior;
    lss_logprob_grad_fn f;
    void *user;
    int *map;
    double *bx, *blp, *bg;
} lss__hmc_ctx;

/* Evaluates the chains with alive[c] != 0. Outside the prior, or a non-finite log-probability or
 * gradient: lp = -inf and the chain is marked dead (its trajectory will be rejected). */
static int lss__hmc_eval(lss__hmc_ctx *h, const double *x, double *lp, double *g, int *alive) {
    int c, n = 0, d = h->d, st;
    for (c = 0; c < h->nchains; c++) {
        if (!alive[c]) continue;
        if (h->prior && !lss_prior_contains(h->prior, x + (size_t)c * d)) {
            alive[c] = 0;
            lp[c] = -INFINITY;
            continue;
        }
        memcpy(h->bx + (size_t)n * d, x + (size_t)c * d, sizeof(double) * (size_t)d);
        h->map[n++] = c;
    }
    if (n == 0) return LSS_OK;
    lss_clearerr();
    if ((st = h->f(h->bx, n, d, h->blp, h->bg, h->user)) != LSS_OK) {
        if (!lss_last_error()[0]) lss_seterr(st, "hmc: the log-probability callback failed (status %d)", st);
        return st;
    }
    for (c = 0; c < n; c++) {
        int k = h->map[c], i, ok = isfinite(h->blp[c]);
        for (i = 0; i < d && ok; i++) ok = isfinite(h->bg[(size_t)c * d + i]);
        if (!ok) {
            alive[k] = 0;
            lp[k] = -INFINITY;
            continue;
        }
        lp[k] = h->blp[c];
        memcpy(g + (size_t)k * d, h->bg + (size_t)c * d, sizeof(double) * (size_t)d);
    }
    return LSS_OK;
}

LSSDEF int lss_hmc_run(int nchains, int d, const double *x0, lss_logprob_grad_fn f, void *user,
                       const lss_hmc_opts *opt, double *samples, double *logp, lss_hmc_stats *st) {
    lss_hmc_opts o;
    lss__hmc_ctx h;
    lss_rng rng;
    size_t C, D;
    double *mem, *x, *g, *lp, *xn, *gn, *lpn, *p, *h0, *im, *wsum, *wsq;
    int *alive, c, i, l, status = LSS_OK;
    int64_t it, ntot, wstart, wend, nwin = 0, nacc = 0, ndiv = 0, t_da = 0;
    double eps, mu, hbar = 0, leps_bar = 0, sum_alpha = 0, tail_sum = 0, rm_le = 0;
    int64_t tail, tail_n = 0;
    /* dual averaging constants (Hoffman & Gelman 2014) */
    const double gamma = 0.05, t0 = 10.0, kappa = 0.75;
    if (!x0 || !f || !samples || nchains < 1 || d < 1)
        return lss_seterr(LSS_ERR_ARG, "hmc_run: bad arguments (nchains %d, d %d)", nchains, d);
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    if (o.nwarmup < 0 || o.nsamples < 0 || o.nleapfrog < 0)
        return lss_seterr(LSS_ERR_ARG, "hmc_run: negative warm-up, sample or leapfrog count");
    if (o.nwarmup == 0) o.nwarmup = 500;
    if (o.nsamples == 0) o.nsamples = 1000;
    if (o.nleapfrog == 0) o.nleapfrog = 16;
    if (o.step == 0) o.step = 0.1;
    if (o.target_accept == 0) o.target_accept = 0.8;
    if (!(o.target_accept > 0 && o.target_accept < 1.0))
        return lss_seterr(LSS_ERR_ARG, "hmc_run: target acceptance %g must lie in (0, 1)", o.target_accept);
    if (!(o.step > 0 && isfinite(o.step))) return lss_seterr(LSS_ERR_ARG, "hmc_run: step size %g", o.step);
    if (o.prior && o.prior->d != d)
        return lss_seterr(LSS_ERR_SHAPE, "hmc_run: prior has %d parameters, chains %d", o.prior->d, d);
    if (o.inv_mass)
        for (i = 0; i < d; i++)
            if (!(o.inv_mass[i] > 0 && isfinite(o.inv_mass[i])))
                return lss_seterr(LSS_ERR_ARG, "hmc_run: inverse mass %d = %g must be positive", i, o.inv_mass[i]);
    C = (size_t)nchains;
    D = (size_t)d;
    mem = (double *)LSS_MALLOC(sizeof(double) * (C * D * 8 + C * 5 + D * 3));
    alive = (int *)LSS_MALLOC(sizeof(int) * C * 2);
    if (!mem || !alive) {
        LSS_FREE(mem);
        LSS_FREE(alive);
        return lss_seterr(LSS_ERR_NOMEM, "hmc_run: out of memory");
    }
    x = mem;           g = x + C * D;    xn = g + C * D;   gn = xn + C * D;  p = gn + C * D;
    h.bx = p + C * D;  h.bg = h.bx + C * D;
    lp = h.bg + C * D; lpn = lp + C;     h0 = lpn + C;     h.blp = h0 + C;
    im = h.blp + C + C; wsum = im + D;   wsq = wsum + D;
    h.map = alive + C;
    h.nchains = nchains;
    h.d = d;
    h.prior = o.prior;
    h.f = f;
    h.user = user;
    for (i = 0; i < d; i++) {
        im[i] = o.inv_mass ? o.inv_mass[i] : 1.0;
        wsum[i] = wsq[i] = 0;
    }
    lss_rng_init(&rng, o.seed, o.stream);
    memcpy(x, x0, sizeof(double) * C * D);
    for (c = 0; c < nchains; c++) alive[c] = 1;
    if ((status = lss__hmc_eval(&h, x, lp, g, alive)) != LSS_OK) goto done;
    for (c = 0; c < nchains; c++)
        if (!alive[c]) {
            char nb[32];
            int w = o.prior ? lss__prior_where(o.prior, x + (size_t)c * d) : 0;
            if (w > 0 && w <= d)
                status = lss_seterr(LSS_ERR_RANGE, "hmc_run: chain %d starts outside the prior: %s = %g not in [%g, %g]",
                                    c, lss__pname(o.prior, w - 1, nb, sizeof nb), x[(size_t)c * d + w - 1],
                                    o.prior->lo[w - 1], o.prior->hi[w - 1]);
            else if (w == d + 1)
                status = lss_seterr(LSS_ERR_RANGE, "hmc_run: chain %d starts outside the prior's convex hull", c);
            else
                status = lss_seterr(LSS_ERR_NUMERIC,
                                    "hmc_run: chain %d starts where the log-probability or its gradient is "
                                    "not finite (NaN log-probability or gradient)", c);
            goto done;
        }
    eps = o.step;
    mu = log(10.0 * eps);
    /* warm-up: step size alone in [0, wstart); variances collected in [wstart, wend); at wend the
     * diagonal mass is set from them and the dual averaging restarts; step size alone to the end */
    wstart = o.adapt_mass ? (int64_t)(0.15 * (double)o.nwarmup) : o.nwarmup;
    wend = o.adapt_mass ? (int64_t)(0.75 * (double)o.nwarmup) : o.nwarmup;
    ntot = o.nwarmup + o.nsamples;
    /* the Robbins-Monro stage: the last 3/4 of the last window (40% of the warm-up without mass
     * adaptation), averaged over its last 2/3 */
    tail = o.adapt_mass ? 3 * (o.nwarmup - wend) / 4 : 2 * o.nwarmup / 5;
    if (o.nwarmup < 20) tail = 0;
    for (it = 0; it < ntot; it++) {
        int warm = it < o.nwarmup;
        double e_it = warm ? eps : eps * (0.9 + 0.2 * lss_rng_uniform(&rng)), malpha = 0;
        for (c = 0; c < nchains; c++) {
            double k0 = 0;
            for (i = 0; i < d; i++) {
                double v = lss_rng_normal(&rng) / sqrt(im[i]);
                p[(size_t)c * d + i] = v;
                k0 += 0.5 * im[i] * v * v;
            }
            alive[c] = 1;
            h0[c] = -lp[c] + k0;
        }
        memcpy(xn, x, sizeof(double) * C * D);
        memcpy(gn, g, sizeof(double) * C * D);
        for (l = 0; l < o.nleapfrog; l++) {
            for (c = 0; c < nchains; c++) {
                if (!alive[c]) continue;
                for (i = 0; i < d; i++) {
                    size_t q = (size_t)c * d + i;
                    p[q] += (l == 0 ? 0.5 : 1.0) * e_it * gn[q];
                    xn[q] += e_it * im[i] * p[q];
                }
            }
            if ((status = lss__hmc_eval(&h, xn, lpn, gn, alive)) != LSS_OK) goto done;
        }
        for (c = 0; c < nchains; c++) {
            double k1 = 0, dH, alpha;
            if (alive[c]) {
                for (i = 0; i < d; i++) {
                    size_t q = (size_t)c * d + i;
                    p[q] += 0.5 * e_it * gn[q];
                    k1 += 0.5 * im[i] * p[q] * p[q];
                }
                dH = (-lpn[c] + k1) - h0[c];
            } else {
                dH = INFINITY;
            }
            if (!(dH == dH)) dH = INFINITY;
            if (dH > 1000.0) ndiv += !warm;
            alpha = dH <= 0 ? 1.0 : exp(-dH);
            malpha += alpha;
            if (log(lss_rng_uniform(&rng)) < -dH) {
                memcpy(x + (size_t)c * d, xn + (size_t)c * d, sizeof(double) * D);
                memcpy(g + (size_t)c * d, gn + (size_t)c * d, sizeof(double) * D);
                lp[c] = lpn[c];
                if (!warm) nacc++;
            }
        }
        malpha /= nchains;
        if (warm) {
            double w, le;
            t_da++;
            w = 1.0 / ((double)t_da + t0);
            hbar = (1.0 - w) * hbar + w * (o.target_accept - malpha);
            le = mu - sqrt((double)t_da) / gamma * hbar;
            w = pow((double)t_da, -kappa);
            leps_bar = w * le + (1.0 - w) * leps_bar;
            eps = exp(le);
            if (it >= o.nwarmup - tail) {
                /* final stage: the dual-averaging iterates keep a noise of order sd(alpha) / gamma,
                 * and the acceptance is a concave function of the step, so eps_bar over-accepts;
                 * a Robbins-Monro recursion on log eps with a decreasing gain, from eps_bar, converges
                 * to the root of E[alpha(eps)] = target. Its Polyak average is kept. */
                int64_t k = it - (o.nwarmup - tail);
                if (k == 0) rm_le = leps_bar;
                else rm_le += (malpha - o.target_accept) / pow((double)k + 4.0, 0.6);
                eps = exp(rm_le);
                if (k >= tail / 3) {
                    tail_sum += rm_le;
                    tail_n++;
                }
            }
            if (it >= wstart && it < wend) {
                for (c = 0; c < nchains; c++)
                    for (i = 0; i < d; i++) {
                        double v = x[(size_t)c * d + i];
                        wsum[i] += v;
                        wsq[i] += v * v;
                    }
                nwin += nchains;
            }
            if (it + 1 == wend && o.adapt_mass && nwin > 1) {
                /* regularised as Stan: (n / (n + 5)) var + 1e-3 (5 / (n + 5)) */
                double nn = (double)nwin;
                for (i = 0; i < d; i++) {
                    double m = wsum[i] / nn, var = (wsq[i] - nn * m * m) / (nn - 1.0);
                    if (!(var > 0)) var = 1e-3;
                    im[i] = (nn / (nn + 5.0)) * var + 1e-3 * (5.0 / (nn + 5.0));
                }
                mu = log(10.0 * eps);
                hbar = 0;
                leps_bar = 0;
                t_da = 0;
            }
            if (it + 1 == o.nwarmup) eps = tail_n > 0 ? exp(tail_sum / (double)tail_n) : exp(leps_bar);
        } else {
            int64_t s = it - o.nwarmup;
            sum_alpha += malpha;
            memcpy(samples + (size_t)s * C * D, x, sizeof(double) * C * D);
            if (logp) memcpy(logp + (size_t)s * C, lp, sizeof(double) * C);
        }
        if (o.progress && ((it + 1) % 100 == 0 || it + 1 == ntot) &&
            o.progress(it + 1, ntot, warm ? malpha : sum_alpha / (double)(it + 1 - o.nwarmup), o.progress_user)) {
            status = lss_seterr(LSS_ERR_STATE, "hmc_run: stopped by the progress callback after %lld iterations",
                                (long long)(it + 1));
            goto done;
        }
    }
    if (st) {
        st->step = eps;
        st->accept_prob = sum_alpha / (double)o.nsamples;
        st->accept_rate = (double)nacc / ((double)o.nsamples * nchains);
        st->ndivergent = ndiv;
        if (st->inv_mass) memcpy(st->inv_mass, im, sizeof(double) * D);
    }
done:
    LSS_FREE(mem);
    LSS_FREE(alive);
    return status;
}

/* ---------------------------------------------------------------- mixture density network */
static double lss__softplus_d(double x) { return x > 30 ? x : x < -30 ? exp(x) : log1p(exp(x)); }

static void lss__mdn_defaults(lss_mdn_opts *o) {
    if (o->nhidden == 0) o->nhidden = 3;
    if (o->width == 0) o->width = 256;
    if (o->K == 0) o->K = 4;
    if (o->scale_t == 0) o->scale_t = LSS_SCALE_ROBUST;
    if (o->scale_p == 0) o->scale_p = LSS_SCALE_QUANTILE;
    if (o->lr == 0) o->lr = 1e-3;
    if (o->batch == 0) o->batch = 5000;
    if (o->max_epochs == 0) o->max_epochs = 1000;
    if (o->val_frac == 0) o->val_frac = 0.25;
    if (o->patience == 0) o->patience = 50;
    if (o->min_delta == 0) o->min_delta = 1e-5;
    if (o->plateau_patience == 0) o->plateau_patience = 10;
    if (o->plateau_factor == 0) o->plateau_factor = 0.75;
    if (o->lr_min == 0) o->lr_min = 1e-6;
}

LSSDEF void lss_mdn_free(lss_mdn *m) {
    if (!m) return;
    lss_scaler_free(&m->st);
    lss_scaler_free(&m->sp);
    lss_store_free(m->store);
    lss_graph_free(m->graph);
    LSS_FREE(m->xin);
    LSS_FREE(m->out);
    LSS_FREE(m->tt);
    LSS_FREE(m->yy);
    LSS_FREE(m->lj);
    LSS_FREE(m->obs);
    LSS_FREE(m);
}

/* Builds the network in `st` (same names and order in every store, so stores can be copied). */
static int lss__mdn_build(lss_store *st, lss_mlp *net, int p, int d, int K, int nhidden, int width) {
    int sizes[LSS_MLP_MAX + 1], i;
    for (i = 0; i < nhidden; i++) sizes[i + 1] = width;
    sizes[0] = p;
    sizes[nhidden + 1] = (int)lss_gmm_width(K, d);
    return lss_mlp_init(net, st, "mdn", nhidden + 1, sizes, LSS_ACT_RELU);
}

LSSDEF int lss_mdn_create(int p, int d, const lss_mdn_opts *opt, lss_mdn **out) {
    lss_mdn_opts o;
    lss_mdn *m;
    int st;
    if (!out) return lss_seterr(LSS_ERR_ARG, "mdn_create: NULL output");
    *out = NULL;
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    lss__mdn_defaults(&o);
    if (p < 1 || d < 1 || d > 64 || p > 100000)
        return lss_seterr(LSS_ERR_ARG, "mdn_create: dimensions p = %d, d = %d (need p >= 1, 1 <= d <= 64)", p, d);
    if (o.nhidden < 0 || o.nhidden > LSS_MLP_MAX - 1 || o.width < 1 || o.K < 1 || o.K > 256)
        return lss_seterr(LSS_ERR_ARG, "mdn_create: %d hidden layers of %d, K = %d (at most %d layers, K <= 256)",
                          o.nhidden, o.width, o.K, LSS_MLP_MAX - 1);
    if ((o.scale_t != -1 && (o.scale_t < 1 || o.scale_t > 3)) || (o.scale_p != -1 && (o.scale_p < 1 || o.scale_p > 3)))
        return lss_seterr(LSS_ERR_ARG, "mdn_create: unknown scaler kinds %d, %d", o.scale_t, o.scale_p);
    m = (lss_mdn *)LSS_MALLOC(sizeof *m);
    if (!m) return lss_seterr(LSS_ERR_NOMEM, "mdn_create: out of memory");
    memset(m, 0, sizeof *m);
    m->p = p; m->d = d; m->K = o.K; m->nhidden = o.nhidden; m->width = o.width;
    m->scale_t = o.scale_t; m->scale_p = o.scale_p;
    m->obs = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    if (!m->obs) {
        lss_mdn_free(m);
        return lss_seterr(LSS_ERR_NOMEM, "mdn_create: out of memory");
    }
    if ((st = lss_store_create(o.seed, &m->store)) != LSS_OK ||
        (st = lss__mdn_build(m->store, &m->net, p, d, o.K, o.nhidden, o.width)) != LSS_OK ||
        (st = lss_graph_create(&m->graph)) != LSS_OK) {
        lss_mdn_free(m);
        return st;
    }
    lss_graph_set_training(m->graph, 0);
    *out = m;
    return LSS_OK;
}

/* Grows the evaluation workspace to n rows. */
static int lss__mdn_reserve(lss_mdn *m, int64_t n) {
    int64_t w = lss_gmm_width(m->K, m->d);
    float *a, *b;
    double *c, *e, *f;
    if (n <= m->cap) return LSS_OK;
    a = (float *)LSS_REALLOC(m->xin, sizeof(float) * (size_t)n * m->p);
    if (a) m->xin = a;
    b = (float *)LSS_REALLOC(m->out, sizeof(float) * (size_t)n * (size_t)w);
    if (b) m->out = b;
    c = (double *)LSS_REALLOC(m->tt, sizeof(double) * (size_t)n * m->p);
    if (c) m->tt = c;
    e = (double *)LSS_REALLOC(m->yy, sizeof(double) * (size_t)n * m->d);
    if (e) m->yy = e;
    f = (double *)LSS_REALLOC(m->lj, sizeof(double) * (size_t)n);
    if (f) m->lj = f;
    if (!a || !b || !c || !e || !f) return lss_seterr(LSS_ERR_NOMEM, "mdn: out of memory for %lld rows", (long long)n);
    m->cap = n;
    return LSS_OK;
}

static int lss__mdn_scale_t(const lss_mdn *m, const double *x, double *y, int64_t n) {
    if (m->st.kind) return lss_scaler_transform(&m->st, x, y, n);
    if (x != y) memcpy(y, x, sizeof(double) * (size_t)n * m->p);
    return LSS_OK;
}

/* Scales theta_p rows; lj (may be NULL) receives the log-Jacobian of each row's transform. */
static int lss__mdn_scale_p(const lss_mdn *m, const double *x, double *y, int64_t n, double *lj) {
    int64_t i;
    int j, st;
    if (!m->sp.kind) {
        if (x != y) memcpy(y, x, sizeof(double) * (size_t)n * m->d);
        if (lj) for (i = 0; i < n; i++) lj[i] = 0;
        return LSS_OK;
    }
    if ((st = lss_scaler_transform(&m->sp, x, y, n)) != LSS_OK) return st;
    if (lj)
        for (i = 0; i < n; i++) {
            double s = 0;
            for (j = 0; j < m->d; j++) {
                if (m->sp.kind == LSS_SCALE_ROBUST) s -= log(m->sp.b[j]);
                else {
                    s += log(lss__minmax_scale(&m->sp, j));
                    if (m->sp.kind == LSS_SCALE_QUANTILE) {
                        double v = y[i * m->d + j];
                        s += 0.5 * v * v + 0.91893853320467274178; /* -log phi(v) */
                    }
                }
            }
            lj[i] = s;
        }
    return LSS_OK;
}

/* Network outputs for n already-scaled rows tt [n][p] into m->out. */
static int lss__mdn_eval_scaled(lss_mdn *m, const double *tt, int64_t n) {
    int64_t i, w = lss_gmm_width(m->K, m->d), sh[2], done = 0;
    lss_tensor *x, *y;
    for (i = 0; i < n * m->p; i++) m->xin[i] = (float)tt[i];
    while (done < n) { /* chunks bound the graph's memory */
        int64_t c = n - done < 8192 ? n - done : 8192;
        lss_graph_reset(m->graph);
        sh[0] = c;
        sh[1] = m->p;
        x = lss_view(m->graph, m->xin + done * m->p, 2, sh);
        y = lss_mlp_forward(m->graph, &m->net, x);
        if (!y) return lss_graph_status(m->graph) ? lss_graph_status(m->graph) : lss_seterr(LSS_ERR_STATE, "mdn: forward failed");
        memcpy(m->out + done * w, y->data, sizeof(float) * (size_t)(c * w));
        done += c;
    }
    return LSS_OK;
}

LSSDEF int lss_mdn_forward(lss_mdn *m, const double *theta_t, int64_t n, float *out) {
    int st;
    if (!m || !theta_t || !out || n < 0) return lss_seterr(LSS_ERR_ARG, "mdn_forward: bad arguments");
    if (n == 0) return LSS_OK;
    if ((st = lss__mdn_reserve(m, n)) != LSS_OK || (st = lss__mdn_scale_t(m, theta_t, m->tt, n)) != LSS_OK ||
        (st = lss__mdn_eval_scaled(m, m->tt, n)) != LSS_OK)
        return st;
    memcpy(out, m->out, sizeof(float) * (size_t)(n * lss_gmm_width(m->K, m->d)));
    return LSS_OK;
}

LSSDEF int lss_mdn_logpdf(lss_mdn *m, const double *theta_t, const double *theta_p, int64_t n, int jac, double *logp) {
    int64_t i;
    int st;
    if (!m || !theta_t || !theta_p || !logp || n < 0) return lss_seterr(LSS_ERR_ARG, "mdn_logpdf: bad arguments");
    if (n == 0) return LSS_OK;
    if ((st = lss__mdn_reserve(m, n)) != LSS_OK || (st = lss__mdn_scale_t(m, theta_t, m->tt, n)) != LSS_OK ||
        (st = lss__mdn_scale_p(m, theta_p, m->yy, n, m->lj)) != LSS_OK || (st = lss__mdn_eval_scaled(m, m->tt, n)) != LSS_OK ||
        (st = lss_gmm_logpdf(m->out, m->yy, n, m->K, m->d, logp)) != LSS_OK)
        return st;
    if (jac)
        for (i = 0; i < n; i++) logp[i] += m->lj[i];
    return LSS_OK;
}

LSSDEF int lss_mdn_set_obs(lss_mdn *m, const double *obs) {
    int st;
    if (!m || !obs) return lss_seterr(LSS_ERR_ARG, "mdn_set_obs: NULL argument");
    m->has_obs = 0;
    if (m->sp.kind && (st = lss_scaler_check(&m->sp, obs, 1)) != LSS_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", lss_last_error());
        return lss_seterr(st, "mdn_set_obs: %s: the likelihood cannot be evaluated there; refit the MDN on "
                              "simulations that cover the observation", msg);
    }
    if ((st = lss__mdn_scale_p(m, obs, m->obs, 1, &m->obs_jac)) != LSS_OK) return st;
    m->has_obs = 1;
    return LSS_OK;
}

LSSDEF int lss_mdn_loglike(const double *theta_t, int n, int p, double *logp, void *mdn) {
    lss_mdn *m = (lss_mdn *)mdn;
    int64_t i;
    int st, j;
    if (!m || !theta_t || !logp || n < 0) return lss_seterr(LSS_ERR_ARG, "mdn_loglike: bad arguments");
    if (p != m->p) return lss_seterr(LSS_ERR_SHAPE, "mdn_loglike: %d parameters given, the MDN takes %d", p, m->p);
    if (!m->has_obs) return lss_seterr(LSS_ERR_STATE, "mdn_loglike: no observation (call lss_mdn_set_obs)");
    if (n == 0) return LSS_OK;
    if ((st = lss__mdn_reserve(m, n)) != LSS_OK || (st = lss__mdn_scale_t(m, theta_t, m->tt, n)) != LSS_OK ||
        (st = lss__mdn_eval_scaled(m, m->tt, n)) != LSS_OK)
        return st;
    for (i = 0; i < n; i++)
        for (j = 0; j < m->d; j++) m->yy[i * m->d + j] = m->obs[j];
    return lss_gmm_logpdf(m->out, m->yy, n, m->K, m->d, logp);
}

LSSDEF int lss_mdn_sample(lss_mdn *m, const double *theta_t, int64_t n, lss_rng *r, double *theta_p) {
    int64_t i, w, T;
    int st, k, a, b, K, d;
    if (!m || !theta_t || !r || !theta_p || n < 0) return lss_seterr(LSS_ERR_ARG, "mdn_sample: bad arguments");
    if (n == 0) return LSS_OK;
    if ((st = lss__mdn_reserve(m, n)) != LSS_OK || (st = lss__mdn_scale_t(m, theta_t, m->tt, n)) != LSS_OK ||
        (st = lss__mdn_eval_scaled(m, m->tt, n)) != LSS_OK)
        return st;
    K = m->K;
    d = m->d;
    w = lss_gmm_width(K, d);
    T = (int64_t)d * (d + 1) / 2;
    for (i = 0; i < n; i++) {
        const float *o = m->out + i * w, *tri;
        double mx = -HUGE_VAL, tot = 0, u, z[64], *y = theta_p + i * d;
        for (k = 0; k < K; k++) mx = fmax(mx, (double)o[k]);
        for (k = 0; k < K; k++) tot += exp((double)o[k] - mx);
        u = lss_rng_uniform(r) * tot;
        for (k = 0; k < K - 1; k++) {
            u -= exp((double)o[k] - mx);
            if (u < 0) break;
        }
        for (a = 0; a < d; a++) z[a] = lss_rng_normal(r);
        /* x = mu + L^-T z (precision L L^T): back substitution on L^T */
        tri = o + K + (int64_t)K * d + k * T;
        for (a = d - 1; a >= 0; a--) {
            double s = z[a];
            for (b = a + 1; b < d; b++) s -= (double)tri[b * (b + 1) / 2 + a] * y[b];
            y[a] = s / (lss__softplus_d(tri[a * (a + 1) / 2 + a]) + 1e-4);
        }
        for (a = 0; a < d; a++) y[a] += o[K + k * d + a];
    }
    if (m->sp.kind) return lss_scaler_inverse(&m->sp, theta_p, theta_p, n);
    return LSS_OK;
}

/* Mean NLL over rows [r0, r1) of the scaled arrays in chunks (evaluation graph). */
static double lss__mdn_eval_loss(lss_mdn *m, const double *tt, const double *yy, const int64_t *idx, int64_t r0,
                                 int64_t r1, double *lp, int *st) {
    int64_t i, c, done = r0;
    double tot = 0;
    *st = LSS_OK;
    while (done < r1) {
        c = r1 - done < 4096 ? r1 - done : 4096;
        for (i = 0; i < c; i++) {
            memcpy(m->tt + i * m->p, tt + idx[done + i] * m->p, sizeof(double) * (size_t)m->p);
            memcpy(m->yy + i * m->d, yy + idx[done + i] * m->d, sizeof(double) * (size_t)m->d);
        }
        if ((*st = lss__mdn_eval_scaled(m, m->tt, c)) != LSS_OK) return NAN;
        if ((*st = lss_gmm_logpdf(m->out, m->yy, c, m->K, m->d, lp)) != LSS_OK) return NAN;
        for (i = 0; i < c; i++) tot -= lp[i];
        done += c;
    }
    return tot / (double)(r1 - r0);
}

LSSDEF int lss_mdn_fit(lss_mdn *m, const double *theta_t, const double *theta_p, int64_t n, const lss_mdn_opts *opt) {
    lss_mdn_opts o;
    lss_store *best = NULL;
    lss_mlp bnet;
    lss_optim *optim = NULL;
    lss_graph *g = NULL;
    lss_optim_opts oo;
    lss_rng rng;
    double *tt = NULL, *yy = NULL, *lp = NULL, lr, plateau_best = HUGE_VAL;
    float *xb = NULL, *yb = NULL;
    int64_t *idx = NULL, i, ngood = 0, ntr, nva, B;
    int st = LSS_OK, epoch, since_best = 0, since_plateau = 0, cooldown = 0, p, d, j;
    if (!m || !theta_t || !theta_p || n < 2) return lss_seterr(LSS_ERR_ARG, "mdn_fit: need at least 2 samples");
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    lss__mdn_defaults(&o);
    if (!(o.val_frac > 0 && o.val_frac < 1) || o.batch < 1 || o.max_epochs < 1 || o.patience < 1 || !(o.lr > 0) ||
        !(o.plateau_factor > 0 && o.plateau_factor <= 1))
        return lss_seterr(LSS_ERR_ARG, "mdn_fit: options out of range (val_frac %g, batch %d, epochs %d, patience %d, lr %g)",
                          o.val_frac, o.batch, o.max_epochs, o.patience, o.lr);
    p = m->p;
    d = m->d;
    tt = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * p);
    yy = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * d);
    idx = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)n);
    lp = (double *)LSS_MALLOC(sizeof(double) * 4096);
    if (!tt || !yy || !idx || !lp) {
        st = lss_seterr(LSS_ERR_NOMEM, "mdn_fit: out of memory");
        goto done;
    }
    /* drop non-finite rows */
    for (i = 0; i < n; i++) {
        int ok = 1;
        for (j = 0; j < p && ok; j++) ok = isfinite(theta_t[i * p + j]);
        for (j = 0; j < d && ok; j++) ok = isfinite(theta_p[i * d + j]);
        if (!ok) continue;
        memcpy(tt + ngood * p, theta_t + i * p, sizeof(double) * (size_t)p);
        memcpy(yy + ngood * d, theta_p + i * d, sizeof(double) * (size_t)d);
        ngood++;
    }
    m->ndropped = n - ngood;
    nva = (int64_t)floor(o.val_frac * (double)ngood + 0.5);
    ntr = ngood - nva;
    if (ntr < 1 || nva < 1) {
        st = lss_seterr(LSS_ERR_ARG, "mdn_fit: %lld usable rows (of %lld) leave no training or validation set",
                        (long long)ngood, (long long)n);
        goto done;
    }
    /* split: a Philox permutation; the scalers are fitted on the training rows only */
    lss_rng_init(&rng, o.seed, 1000);
    for (i = 0; i < ngood; i++) idx[i] = i;
    for (i = ngood - 1; i > 0; i--) {
        int64_t k = (int64_t)(lss_rng_uniform(&rng) * (double)(i + 1)), t;
        if (k > i) k = i;
        t = idx[i]; idx[i] = idx[k]; idx[k] = t;
    }
    {
        double *a = (double *)LSS_MALLOC(sizeof(double) * (size_t)ntr * (size_t)(p > d ? p : d));
        if (!a) {
            st = lss_seterr(LSS_ERR_NOMEM, "mdn_fit: out of memory");
            goto done;
        }
        lss_scaler_free(&m->st);
        lss_scaler_free(&m->sp);
        if (m->scale_t > 0) {
            for (i = 0; i < ntr; i++) memcpy(a + i * p, tt + idx[i] * p, sizeof(double) * (size_t)p);
            st = lss_scaler_fit(&m->st, m->scale_t, a, ntr, p);
        }
        if (st == LSS_OK && m->scale_p > 0) {
            for (i = 0; i < ntr; i++) memcpy(a + i * d, yy + idx[i] * d, sizeof(double) * (size_t)d);
            st = lss_scaler_fit(&m->sp, m->scale_p, a, ntr, d);
        }
        LSS_FREE(a);
        if (st != LSS_OK) goto done;
        if ((st = lss__mdn_scale_t(m, tt, tt, ngood)) != LSS_OK) goto done;
        /* validation rows beyond the fitted range are clamped into it for the quantile transform */
        if (m->sp.kind == LSS_SCALE_QUANTILE)
            for (i = 0; i < ngood; i++)
                for (j = 0; j < d; j++) yy[i * d + j] = fmin(fmax(yy[i * d + j], m->sp.a[j]), m->sp.b[j]);
        if ((st = lss__mdn_scale_p(m, yy, yy, ngood, NULL)) != LSS_OK) goto done;
    }
    B = o.batch < ntr ? o.batch : ntr;
    xb = (float *)LSS_MALLOC(sizeof(float) * (size_t)B * p);
    yb = (float *)LSS_MALLOC(sizeof(float) * (size_t)B * d);
    if (!xb || !yb || (st = lss__mdn_reserve(m, 4096)) != LSS_OK) {
        if (st == LSS_OK) st = lss_seterr(LSS_ERR_NOMEM, "mdn_fit: out of memory");
        goto done;
    }
    if ((st = lss_store_create(o.seed, &best)) != LSS_OK ||
        (st = lss__mdn_build(best, &bnet, p, d, m->K, m->nhidden, m->width)) != LSS_OK || (st = lss_graph_create(&g)) != LSS_OK)
        goto done;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM;
    oo.lr = o.lr;
    oo.eps = 1e-7;
    if ((st = lss_optim_create(m->store, &oo, &optim)) != LSS_OK) goto done;
    lr = o.lr;
    m->best_val = HUGE_VAL;
    m->best_epoch = -1;
    lss_graph_set_training(g, 1);
    for (epoch = 0; epoch < o.max_epochs; epoch++) {
        double tl = 0, vl;
        int64_t b0, nb = 0;
        lss_rng_init(&rng, o.seed, 2000 + (uint64_t)epoch);
        for (i = ntr - 1; i > 0; i--) { /* reshuffle the training part */
            int64_t k = (int64_t)(lss_rng_uniform(&rng) * (double)(i + 1)), t;
            if (k > i) k = i;
            t = idx[i]; idx[i] = idx[k]; idx[k] = t;
        }
        for (b0 = 0; b0 + B <= ntr; b0 += B) { /* full batches; the remainder joins the next epoch's */
            int64_t sx[2], sy[2];
            lss_tensor *x, *y, *out, *loss;
            for (i = 0; i < B; i++) {
                for (j = 0; j < p; j++) xb[i * p + j] = (float)tt[idx[b0 + i] * p + j];
                for (j = 0; j < d; j++) yb[i * d + j] = (float)yy[idx[b0 + i] * d + j];
            }
            lss_graph_reset(g);
            sx[0] = B; sx[1] = p; sy[0] = B; sy[1] = d;
            x = lss_view(g, xb, 2, sx);
            y = lss_view(g, yb, 2, sy);
            out = lss_mlp_forward(g, &m->net, x);
            loss = lss_op_gmm_nll(g, out, y, m->K);
            lss_store_zero_grad(m->store);
            if ((st = lss_backward(g, loss)) != LSS_OK) goto done;
            if (!isfinite(loss->data[0])) {
                st = lss_seterr(LSS_ERR_NUMERIC, "mdn_fit: the training loss is not finite at epoch %d", epoch);
                goto done;
            }
            if ((st = lss_optim_step(optim)) != LSS_OK) goto done;
            tl += loss->data[0];
            nb++;
        }
        m->train_loss = tl / (double)(nb ? nb : 1);
        vl = lss__mdn_eval_loss(m, tt, yy, idx, ntr, ngood, lp, &st);
        if (st != LSS_OK) goto done;
        m->epochs = epoch + 1;
        if (vl < m->best_val - o.min_delta) {
            m->best_val = vl;
            m->best_epoch = epoch;
            since_best = 0;
            if ((st = lss_store_copy(best, m->store)) != LSS_OK) goto done;
        } else {
            since_best++;
        }
        /* learning rate reduced on a plateau of the validation loss (with a cooldown of 5 epochs) */
        if (o.plateau_patience > 0) {
            if (vl < plateau_best - o.min_delta) {
                plateau_best = vl;
                since_plateau = 0;
            } else if (cooldown > 0) {
                cooldown--;
            } else if (++since_plateau >= o.plateau_patience && lr > o.lr_min) {
                lr = fmax(lr * o.plateau_factor, o.lr_min);
                lss_optim_set_lr(optim, lr);
                since_plateau = 0;
                cooldown = 5;
            }
        }
        if (o.progress && o.progress(epoch, m->train_loss, vl, o.progress_user)) break;
        if (since_best >= o.patience) break;
    }
    if (m->best_epoch >= 0 && (st = lss_store_copy(m->store, best)) != LSS_OK) goto done;
    m->ntrain = ntr;
    m->nval = nva;
    m->fitted = 1;
    m->has_obs = 0;
done:
    lss_optim_free(optim);
    lss_graph_free(g);
    lss_store_free(best);
    LSS_FREE(tt);
    LSS_FREE(yy);
    LSS_FREE(idx);
    LSS_FREE(lp);
    LSS_FREE(xb);
    LSS_FREE(yb);
    return st;
}

/* Doubles kept exactly in float tensors as (hi, mid, lo) triples: 3 x 24 bits >= 53. */
static void lss__put_double(float *dst, double v) {
    float hi = (float)v, mid;
    double r = v - (double)hi;
    mid = (float)r;
    dst[0] = hi;
    dst[1] = mid;
    dst[2] = (float)(r - (double)mid);
}
static double lss__get_double(const float *src) { return ((double)src[0] + (double)src[1]) + (double)src[2]; }

/* The checkpoint holds the network plus "mdn_meta" [8 + 6 (p + d)]: p, d, K, nhidden, width,
 * scale_t kind, scale_p kind, fitted, then the two scalers' (a, b) as (hi, mid, lo) triples. */
static int lss__mdn_meta(lss_store *st, int p, int d, lss_tensor **out) {
    int64_t sh[1];
    sh[0] = 8 + 6 * (int64_t)(p + d);
    *out = lss_store_get(st, "mdn_meta");
    if (!*out) *out = lss_store_buffer(st, "mdn_meta", 1, sh, LSS_INIT_ZERO, 0.0f);
    return *out ? LSS_OK : lss_store_status(st);
}

LSSDEF int lss_mdn_save(const lss_mdn *m, const char *path) {
    lss_tensor *t;
    int st, j;
    if (!m || !path) return lss_seterr(LSS_ERR_ARG, "mdn_save: NULL argument");
    if ((st = lss__mdn_meta(m->store, m->p, m->d, &t)) != LSS_OK) return st;
    t->data[0] = (float)m->p; t->data[1] = (float)m->d; t->data[2] = (float)m->K; t->data[3] = (float)m->nhidden;
    t->data[4] = (float)m->width; t->data[5] = (float)m->st.kind; t->data[6] = (float)m->sp.kind;
    t->data[7] = (float)m->fitted;
    for (j = 0; j < m->p; j++) {
        lss__put_double(t->data + 8 + 6 * j, m->st.kind ? m->st.a[j] : 0);
        lss__put_double(t->data + 8 + 6 * j + 3, m->st.kind ? m->st.b[j] : 0);
    }
    for (j = 0; j < m->d; j++) {
        lss__put_double(t->data + 8 + 6 * (m->p + j), m->sp.kind ? m->sp.a[j] : 0);
        lss__put_double(t->data + 8 + 6 * (m->p + j) + 3, m->sp.kind ? m->sp.b[j] : 0);
    }
    return lss_ckpt_save(path, m->store, NULL);
}

LSSDEF int lss_mdn_load(lss_mdn *m, const char *path) {
    lss_tensor *t;
    int st, j, kt, kp;
    const float *v;
    if (!m || !path) return lss_seterr(LSS_ERR_ARG, "mdn_load: NULL argument");
    if ((st = lss__mdn_meta(m->store, m->p, m->d, &t)) != LSS_OK) return st;
    if ((st = lss_ckpt_load(path, m->store, NULL)) != LSS_OK) return st;
    v = t->data;
    if (v[0] != m->p || v[1] != m->d || v[2] != m->K || v[3] != m->nhidden || v[4] != m->width)
        return lss_seterr(LSS_ERR_FORMAT, "mdn_load: %s holds an MDN %gx%g K %g (%g x %g), not %dx%d K %d (%d x %d)", path,
                          v[0], v[1], v[2], v[3], v[4], m->p, m->d, m->K, m->nhidden, m->width);
    kt = v[5] >= 1 && v[5] <= 3 ? (int)v[5] : 0;
    kp = v[6] >= 1 && v[6] <= 3 ? (int)v[6] : 0;
    if ((float)kt != v[5] || (float)kp != v[6])
        return lss_seterr(LSS_ERR_FORMAT, "mdn_load: %s: bad scaler kinds %g, %g", path, v[5], v[6]);
    lss_scaler_free(&m->st);
    lss_scaler_free(&m->sp);
    if (kt && (st = lss__scaler_alloc(&m->st, kt, m->p)) != LSS_OK) return st;
    if (kp && (st = lss__scaler_alloc(&m->sp, kp, m->d)) != LSS_OK) return st;
    for (j = 0; kt && j < m->p; j++) {
        m->st.a[j] = lss__get_double(v + 8 + 6 * j);
        m->st.b[j] = lss__get_double(v + 8 + 6 * j + 3);
    }
    for (j = 0; kp && j < m->d; j++) {
        m->sp.a[j] = lss__get_double(v + 8 + 6 * (m->p + j));
        m->sp.b[j] = lss__get_double(v + 8 + 6 * (m->p + j) + 3);
    }
    m->scale_t = kt ? kt : -1;
    m->scale_p = kp ? kp : -1;
    m->fitted = v[7] != 0;
    m->has_obs = 0;
    return LSS_OK;
}

LSSDEF int lss_mdn_check(lss_mdn *m, const double *theta_t, int64_t nv, const double *theta_p, int nrep, int nsamp,
                         uint64_t seed, double *dmu, double *dsig) {
    double *tt = NULL, *smp = NULL;
    lss_rng r;
    int64_t v;
    int st = LSS_OK, j, k, d;
    if (!m || !theta_t || !theta_p || !dmu || !dsig || nv < 1 || nrep < 2 || nsamp < 2)
        return lss_seterr(LSS_ERR_ARG, "mdn_check: need nv >= 1 theta_t, nrep >= 2 summaries and nsamp >= 2 draws");
    d = m->d;
    tt = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsamp * m->p);
    smp = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsamp * d);
    if (!tt || !smp) {
        LSS_FREE(tt);
        LSS_FREE(smp);
        return lss_seterr(LSS_ERR_NOMEM, "mdn_check: out of memory");
    }
    lss_rng_init(&r, seed, 0);
    for (v = 0; v < nv && st == LSS_OK; v++) {
        for (k = 0; k < nsamp; k++) memcpy(tt + (size_t)k * m->p, theta_t + v * m->p, sizeof(double) * (size_t)m->p);
        if ((st = lss_mdn_sample(m, tt, nsamp, &r, smp)) != LSS_OK) break;
        for (j = 0; j < d; j++) {
            double ms = 0, vs = 0, mp = 0, vp = 0;
            const double *yp = theta_p + (size_t)v * nrep * d;
            for (k = 0; k < nsamp; k++) ms += smp[k * d + j];
            ms /= nsamp;
            for (k = 0; k < nsamp; k++) vs += (smp[k * d + j] - ms) * (smp[k * d + j] - ms);
            vs = sqrt(vs / nsamp);
            for (k = 0; k < nrep; k++) mp += yp[k * d + j];
            mp /= nrep;
            for (k = 0; k < nrep; k++) vp += (yp[k * d + j] - mp) * (yp[k * d + j] - mp);
            vp = sqrt(vp / nrep);
            dmu[v * d + j] = (ms - mp) / vp;
            dsig[v * d + j] = (vs - vp) / vp;
        }
    }
    LSS_FREE(tt);
    LSS_FREE(smp);
    return st;
}

LSSDEF int lss_mdn_check_report(const double *dmu, const double *dsig, int64_t nv, int d, const char *path,
                                lss_mdn_check_summary *s) {
    int64_t N = nv * d, i;
    double *a;
    int st = LSS_OK;
    if (!dmu || !dsig || nv < 1 || d < 1 || !s) return lss_seterr(LSS_ERR_ARG, "mdn_check_report: bad arguments");
    a = (double *)LSS_MALLOC(sizeof(double) * (size_t)N * 4);
    if (!a) return lss_seterr(LSS_ERR_NOMEM, "mdn_check_report: out of memory");
    memcpy(a, dmu, sizeof(double) * (size_t)N);
    qsort(a, (size_t)N, sizeof(double), lss__cmp_double);
    s->dmu_median = lss__pct_sorted(a, N, 50);
    s->dmu_lo = lss__pct_sorted(a, N, 15.865525393145705);
    s->dmu_hi = lss__pct_sorted(a, N, 84.134474606854295);
    memcpy(a, dsig, sizeof(double) * (size_t)N);
    qsort(a, (size_t)N, sizeof(double), lss__cmp_double);
    s->dsig_median = lss__pct_sorted(a, N, 50);
    s->dsig_lo = lss__pct_sorted(a, N, 15.865525393145705);
    s->dsig_hi = lss__pct_sorted(a, N, 84.134474606854295);
    for (i = 0; i < N; i++) a[i] = fabs(dmu[i]);
    qsort(a, (size_t)N, sizeof(double), lss__cmp_double);
    s->abs_dmu_median = lss__pct_sorted(a, N, 50);
    for (i = 0; i < N; i++) a[i] = fabs(dsig[i]);
    qsort(a, (size_t)N, sizeof(double), lss__cmp_double);
    s->abs_dsig_median = lss__pct_sorted(a, N, 50);
    if (path) {
        static const char *const hdr[4] = {"index", "component", "dmu", "dsig"};
        for (i = 0; i < N; i++) {
            a[4 * i] = (double)(i / d);
            a[4 * i + 1] = (double)(i % d);
            a[4 * i + 2] = dmu[i];
            a[4 * i + 3] = dsig[i];
        }
        st = lss_csv_write(path, 4, hdr, N, a);
    }
    LSS_FREE(a);
    return st;
}

/* ---------------------------------------------------------------- summaries */
LSSDEF int lss_chain_cov(const double *x, int64_t n, int d, double *mean, double *cov) {
    double *m;
    int64_t t;
    int i, j;
    if (!x || !cov || n < 2 || d < 1) return lss_seterr(LSS_ERR_ARG, "chain_cov: need at least 2 samples");
    m = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    if (!m) return lss_seterr(LSS_ERR_NOMEM, "chain_cov: out of memory");
    for (i = 0; i < d; i++) m[i] = 0;
    for (t = 0; t < n; t++)
        for (i = 0; i < d; i++) m[i] += x[(size_t)t * d + i];
    for (i = 0; i < d; i++) m[i] /= (double)n;
    for (i = 0; i < d * d; i++) cov[i] = 0;
    for (t = 0; t < n; t++)
        for (i = 0; i < d; i++) {
            double a = x[(size_t)t * d + i] - m[i];
            for (j = 0; j <= i; j++) cov[i * d + j] += a * (x[(size_t)t * d + j] - m[j]);
        }
    for (i = 0; i < d; i++)
        for (j = 0; j <= i; j++) {
            cov[i * d + j] /= (double)(n - 1);
            cov[j * d + i] = cov[i * d + j];
        }
    if (mean) memcpy(mean, m, sizeof(double) * (size_t)d);
    LSS_FREE(m);
    return LSS_OK;
}

LSSDEF int lss_chain_stats(const double *x, int64_t n, int d, lss_param_stats *st, double *corr) {
    double *col;
    int64_t t;
    int i, j;
    if (!x || !st || n < 1 || d < 1) return lss_seterr(LSS_ERR_ARG, "chain_stats: no samples");
    col = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!col) return lss_seterr(LSS_ERR_NOMEM, "chain_stats: out of memory");
    for (i = 0; i < d; i++) {
        double m = 0, v = 0;
        for (t = 0; t < n; t++) {
            col[t] = x[(size_t)t * d + i];
            m += col[t];
        }
        m /= (double)n;
        for (t = 0; t < n; t++) v += (col[t] - m) * (col[t] - m);
        st[i].mean = m;
        st[i].std = sqrt(v / (double)n);
        qsort(col, (size_t)n, sizeof(double), lss__cmp_double);
        st[i].median = lss__pct_sorted(col, n, 50);
        st[i].lo68 = lss__pct_sorted(col, n, 15.865525393145705);
        st[i].hi68 = lss__pct_sorted(col, n, 84.134474606854295);
        st[i].lo95 = lss__pct_sorted(col, n, 2.5);
        st[i].hi95 = lss__pct_sorted(col, n, 97.5);
    }
    LSS_FREE(col);
    if (corr) {
        for (i = 0; i < d; i++)
            for (j = 0; j < d; j++) {
                double s = 0;
                for (t = 0; t < n; t++) s += (x[(size_t)t * d + i] - st[i].mean) * (x[(size_t)t * d + j] - st[j].mean);
                s /= (double)n;
                corr[i * d + j] = (st[i].std > 0 && st[j].std > 0) ? s / (st[i].std * st[j].std) : (i == j ? 1.0 : 0.0);
            }
    }
    return LSS_OK;
}

LSSDEF int lss_rhat_split(const double *chain, int64_t n, int m, int d, double *rhat) {
    int64_t h = n / 2, t;
    int i, k, s;
    if (!chain || !rhat || n < 4 || m < 1 || d < 1)
        return lss_seterr(LSS_ERR_ARG, "rhat_split: need at least 4 steps (n = %lld)", (long long)n);
    for (i = 0; i < d; i++) {
        double B, W = 0, gm = 0, vm = 0, var;
        int J = 2 * m;
        /* the chains are the halves [0, h) and [n - h, n) of every walker */
        double *means = (double *)LSS_MALLOC(sizeof(double) * (size_t)J);
        if (!means) return lss_seterr(LSS_ERR_NOMEM, "rhat_split: out of memory");
        for (k = 0; k < m; k++)
            for (s = 0; s < 2; s++) {
                int64_t t0 = s ? n - h : 0;
                double mu = 0, v = 0;
                for (t = t0; t < t0 + h; t++) mu += chain[((size_t)t * m + k) * d + i];
                mu /= (double)h;
                for (t = t0; t < t0 + h; t++) {
                    double a = chain[((size_t)t * m + k) * d + i] - mu;
                    v += a * a;
                }
                W += v / (double)(h - 1);
                means[2 * k + s] = mu;
                gm += mu;
            }
        W /= J;
        gm /= J;
        for (k = 0; k < J; k++) vm += (means[k] - gm) * (means[k] - gm);
        LSS_FREE(means);
        B = (double)h * vm / (J - 1);
        var = (double)(h - 1) / (double)h * W + B / (double)h;
        rhat[i] = W > 0 ? sqrt(var / W) : NAN;
    }
    return LSS_OK;
}

LSSDEF int lss_ess(const double *chain, int64_t n, int m, int d, double *ess) {
    int st, i;
    st = lss_autocorr_time(chain, n, m, d, 0, -1, ess);
    if (st != LSS_OK) return st;
    for (i = 0; i < d; i++) ess[i] = (double)n * m / ess[i];
    return LSS_OK;
}

LSSDEF int lss_std_ratio(const double *x1, int64_t n1, const double *x2, int64_t n2, int d, double *ratio) {
    int i;
    if (!x1 || !x2 || !ratio || n1 < 2 || n2 < 2 || d < 1) return lss_seterr(LSS_ERR_ARG, "std_ratio: need two chains of at least 2 samples");
    for (i = 0; i < d; i++) {
        double s[2];
        int c;
        for (c = 0; c < 2; c++) {
            const double *x = c ? x2 : x1;
            int64_t n = c ? n2 : n1, t;
            double mu = 0, v = 0;
            for (t = 0; t < n; t++) mu += x[(size_t)t * d + i];
            mu /= (double)n;
            for (t = 0; t < n; t++) v += (x[(size_t)t * d + i] - mu) * (x[(size_t)t * d + i] - mu);
            s[c] = sqrt(v / (double)n);
        }
        ratio[i] = s[0] / s[1];
    }
    return LSS_OK;
}

LSSDEF int lss_fom_det(const double *x, int64_t n, int d, int i, int j, double *fom) {
    double mi = 0, mj = 0, cii = 0, cjj = 0, cij = 0, det;
    int64_t t;
    if (!x || !fom || n < 3 || i < 0 || j < 0 || i >= d || j >= d || i == j)
        return lss_seterr(LSS_ERR_ARG, "fom_det: bad arguments (parameters %d, %d of %d; n = %lld)", i, j, d, (long long)n);
    for (t = 0; t < n; t++) {
        mi += x[(size_t)t * d + i];
        mj += x[(size_t)t * d + j];
    }
    mi /= (double)n;
    mj /= (double)n;
    for (t = 0; t < n; t++) {
        double a = x[(size_t)t * d + i] - mi, b = x[(size_t)t * d + j] - mj;
        cii += a * a; cjj += b * b; cij += a * b;
    }
    cii /= (double)(n - 1); cjj /= (double)(n - 1); cij /= (double)(n - 1);
    det = cii * cjj - cij * cij;
    if (!(det > 0)) return lss_seterr(LSS_ERR_NUMERIC, "fom_det: the 2x2 covariance is singular (det %g)", det);
    *fom = 1.0 / sqrt(det);
    return LSS_OK;
}

/* Separable Gaussian smoothing of a [ny][nx] grid (sigma in cells; zero outside). */
static int lss__smooth2(double *h, int nx, int ny, double sigma) {
    int r, k, i, j;
    double *ker, *tmp;
    if (!(sigma > 0)) return LSS_OK;
    r = (int)ceil(4 * sigma);
    ker = (double *)LSS_MALLOC(sizeof(double) * (size_t)(2 * r + 1));
    tmp = (double *)LSS_MALLOC(sizeof(double) * (size_t)nx * (size_t)ny);
    if (!ker || !tmp) {
        LSS_FREE(ker);
        LSS_FREE(tmp);
        return lss_seterr(LSS_ERR_NOMEM, "smooth: out of memory");
    }
    for (k = -r; k <= r; k++) ker[k + r] = exp(-0.5 * k * k / (sigma * sigma));
    for (j = 0; j < ny; j++)
        for (i = 0; i < nx; i++) {
            double s = 0;
            for (k = -r; k <= r; k++)
                if (i + k >= 0 && i + k < nx) s += ker[k + r] * h[(size_t)j * nx + i + k];
            tmp[(size_t)j * nx + i] = s;
        }
    for (j = 0; j < ny; j++)
        for (i = 0; i < nx; i++) {
            double s = 0;
            for (k = -r; k <= r; k++)
                if (j + k >= 0 && j + k < ny) s += ker[k + r] * tmp[(size_t)(j + k) * nx + i];
            h[(size_t)j * nx + i] = s;
        }
    LSS_FREE(ker);
    LSS_FREE(tmp);
    return LSS_OK;
}

/* Density level t of a grid such that the cells with value >= t hold a fraction `level` of the
 * total, by bisection on t. */
static double lss__hpd_level(const double *h, size_t n, double level) {
    double tot = 0, mx = 0, lo = 0, hi;
    size_t k;
    int it;
    for (k = 0; k < n; k++) {
        tot += h[k];
        mx = fmax(mx, h[k]);
    }
    hi = mx;
    if (!(tot > 0)) return 0;
    for (it = 0; it < 100; it++) {
        double mid = 0.5 * (lo + hi), s = 0;
        for (k = 0; k < n; k++)
            if (h[k] >= mid) s += h[k];
        if (s >= level * tot) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* 2-D histogram of (x_i, x_j) on [ylo, yhi] x [xlo, xhi]: grid[ny][nx]. */
static void lss__hist2(const double *x, int64_t n, int d, int i, int j, int nx, int ny, double xlo, double xhi,
                       double ylo, double yhi, double *grid) {
    int64_t t;
    memset(grid, 0, sizeof(double) * (size_t)nx * (size_t)ny);
    for (t = 0; t < n; t++) {
        double a = (x[(size_t)t * d + i] - xlo) / (xhi - xlo) * nx, b = (x[(size_t)t * d + j] - ylo) / (yhi - ylo) * ny;
        if (a >= 0 && a < nx && b >= 0 && b < ny) grid[(size_t)(int)b * nx + (int)a] += 1.0;
    }
}

static void lss__chain_range(const double *x, int64_t n, int d, int i, double pad, double *lo, double *hi) {
    double a = INFINITY, b = -INFINITY;
    int64_t t;
    for (t = 0; t < n; t++) {
        double v = x[(size_t)t * d + i];
        if (isfinite(v)) {
            a = fmin(a, v);
            b = fmax(b, v);
        }
    }
    if (!(a <= b)) a = 0, b = 1;
    if (a == b) a -= 0.5, b += 0.5;
    *lo = a - pad * (b - a);
    *hi = b + pad * (b - a);
}

LSSDEF int lss_hpd_area(const double *x, int64_t n, int d, int i, int j, const lss_hist2_opts *opt,
                        double *area68, double *area95) {
    lss_hist2_opts o;
    double *grid, cell, t;
    size_t k, nn;
    int st;
    if (!x || n < 1 || i < 0 || j < 0 || i >= d || j >= d || i == j)
        return lss_seterr(LSS_ERR_ARG, "hpd_area: bad arguments (parameters %d, %d of %d)", i, j, d);
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    if (o.bins <= 0) o.bins = 399;
    if (o.bins > 8192) return lss_seterr(LSS_ERR_ARG, "hpd_area: %d bins is too many", o.bins);
    if (o.xlo == 0 && o.xhi == 0 && o.ylo == 0 && o.yhi == 0) {
        lss__chain_range(x, n, d, i, 0.05, &o.xlo, &o.xhi);
        lss__chain_range(x, n, d, j, 0.05, &o.ylo, &o.yhi);
    }
    if (!(o.xhi > o.xlo && o.yhi > o.ylo)) return lss_seterr(LSS_ERR_ARG, "hpd_area: empty histogram range");
    nn = (size_t)o.bins * (size_t)o.bins;
    grid = (double *)LSS_MALLOC(sizeof(double) * nn);
    if (!grid) return lss_seterr(LSS_ERR_NOMEM, "hpd_area: out of memory");
    lss__hist2(x, n, d, i, j, o.bins, o.bins, o.xlo, o.xhi, o.ylo, o.yhi, grid);
    if ((st = lss__smooth2(grid, o.bins, o.bins, o.smooth)) != LSS_OK) {
        LSS_FREE(grid);
        return st;
    }
    cell = (o.xhi - o.xlo) / o.bins * (o.yhi - o.ylo) / o.bins;
    if (area68) {
        size_t c = 0;
        t = lss__hpd_level(grid, nn, 0.68);
        for (k = 0; k < nn; k++) c += grid[k] >= t && grid[k] > 0;
        *area68 = (double)c * cell;
    }
    if (area95) {
        size_t c = 0;
        t = lss__hpd_level(grid, nn, 0.95);
        for (k = 0; k < nn; k++) c += grid[k] >= t && grid[k] > 0;
        *area95 = (double)c * cell;
    }
    LSS_FREE(grid);
    return LSS_OK;
}

/* ---------------------------------------------------------------- files */
LSSDEF int lss_chain_save(const char *path, const double *x, int64_t n, int d, const char *const *names) {
    if (!path || !x || n < 0 || d < 1) return lss_seterr(LSS_ERR_ARG, "chain_save: bad arguments");
    if (lss__ends_with(path, ".csv")) {
        char **hdr = (char **)LSS_MALLOC(sizeof(char *) * (size_t)d), *store = (char *)LSS_MALLOC((size_t)d * 16);
        int i, st;
        if (!hdr || !store) {
            LSS_FREE(hdr);
            LSS_FREE(store);
            return lss_seterr(LSS_ERR_NOMEM, "chain_save: out of memory");
        }
        for (i = 0; i < d; i++) {
            if (names && names[i]) hdr[i] = (char *)names[i];
            else {
                hdr[i] = store + (size_t)i * 16;
                snprintf(hdr[i], 16, "p%d", i);
            }
        }
        st = lss_csv_write(path, d, (const char *const *)hdr, n, x);
        LSS_FREE(hdr);
        LSS_FREE(store);
        return st;
    } else {
        int64_t shape[2];
        shape[0] = n;
        shape[1] = d;
        return lss_npy_save(path, LSS_F64, 2, shape, x);
    }
}

/* ---------------------------------------------------------------- corner plots */
/* Marching squares: the iso-line at level t of grid[ny][nx] (values at cell centres) drawn into
 * the panel whose cell (0, 0) centre maps to (px0, py0) with cell sizes sx, sy (y grows down). */
static void lss__contour(lss_image *im, const double *g, int nx, int ny, double t, double px0, double py0,
                         double sx, double sy, const unsigned char col[3], int thick) {
    int i, j;
    for (j = 0; j + 1 < ny; j++)
        for (i = 0; i + 1 < nx; i++) {
            double v[4], ex[4], ey[4];
            int cs = 0, k, ne = 0;
            /* corners: 0 (i,j) 1 (i+1,j) 2 (i+1,j+1) 3 (i,j+1) */
            static const int ci[4] = {0, 1, 1, 0}, cj[4] = {0, 0, 1, 1};
            for (k = 0; k < 4; k++) {
                v[k] = g[(size_t)(j + cj[k]) * nx + i + ci[k]];
                cs |= (v[k] >= t) << k;
            }
            if (cs == 0 || cs == 15) continue;
            for (k = 0; k < 4; k++) { /* edge k joins corner k and k+1 */
                int a = k, b = (k + 1) % 4;
                if ((v[a] >= t) != (v[b] >= t)) {
                    double f = (t - v[a]) / (v[b] - v[a]);
                    ex[ne] = i + ci[a] + f * (ci[b] - ci[a]);
                    ey[ne] = j + cj[a] + f * (cj[b] - cj[a]);
                    ne++;
                }
            }
            for (k = 0; k + 1 < ne; k += 2)
                lss_image_line(im, px0 + ex[k] * sx, py0 - ey[k] * sy, px0 + ex[k + 1] * sx, py0 - ey[k + 1] * sy, col,
                               thick);
        }
}

/* "Nice" tick step for a range. */
static double lss__tick_step(double range, int nmax) {
    double raw = range / (nmax > 0 ? nmax : 4), p = pow(10.0, floor(log10(raw))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

LSSDEF int lss_corner_png(const char *path, int nchains, const double *const *x, const int64_t *n, int d,
                          const lss_corner_opts *opt) {
    lss_corner_opts o;
    lss_image im;
    double *lo, *hi, *grid;
    int P, B, margin = 80, top = 30, W, H, i, j, c, st;
    static const unsigned char black[3] = {0, 0, 0}, grey[3] = {150, 150, 150}, red[3] = {200, 30, 30};
    if (!path || !x || !n || nchains < 1 || d < 1) return lss_seterr(LSS_ERR_ARG, "corner_png: bad arguments");
    for (c = 0; c < nchains; c++)
        if (!x[c] || n[c] < 2) return lss_seterr(LSS_ERR_ARG, "corner_png: chain %d has fewer than 2 samples", c);
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    P = o.panel > 0 ? o.panel : 170;
    B = o.bins > 0 ? o.bins : 40;
    if (o.smooth == 0) o.smooth = 1.2;
    if (P < 40 || P > 2000 || B < 4 || B > 1000 || d > 30) return lss_seterr(LSS_ERR_ARG, "corner_png: panel %d, bins %d or d %d out of range", P, B, d);
    W = margin + d * P + 20;
    H = top + d * P + margin;
    lo = (double *)LSS_MALLOC(sizeof(double) * (size_t)d * 2);
    grid = (double *)LSS_MALLOC(sizeof(double) * (size_t)B * B);
    if (!lo || !grid || (st = lss_image_init(&im, W, H)) != LSS_OK) {
        LSS_FREE(lo);
        LSS_FREE(grid);
        return lss_seterr(LSS_ERR_NOMEM, "corner_png: out of memory");
    }
    hi = lo + d;
    for (i = 0; i < d; i++) {
        if (o.lo && o.hi && o.hi[i] > o.lo[i]) {
            lo[i] = o.lo[i];
            hi[i] = o.hi[i];
        } else {
            double a = INFINITY, b = -INFINITY, l, h;
            for (c = 0; c < nchains; c++) {
                lss__chain_range(x[c], n[c], d, i, 0.02, &l, &h);
                a = fmin(a, l);
                b = fmax(b, h);
            }
            lo[i] = a;
            hi[i] = b;
        }
    }
    if (o.title) lss_image_text(&im, margin, 8, o.title, black, 2);
    for (j = 0; j < d; j++)     /* row */
        for (i = 0; i <= j; i++) { /* column */
            int x0 = margin + i * P, y0 = top + j * P, k;
            double step, tv;
            char buf[32];
            /* frame */
            lss_image_line(&im, x0 + 2, y0 + 2, x0 + P - 4, y0 + 2, grey, 1);
            lss_image_line(&im, x0 + 2, y0 + P - 4, x0 + P - 4, y0 + P - 4, grey, 1);
            lss_image_line(&im, x0 + 2, y0 + 2, x0 + 2, y0 + P - 4, grey, 1);
            lss_image_line(&im, x0 + P - 4, y0 + 2, x0 + P - 4, y0 + P - 4, grey, 1);
            for (c = 0; c < nchains; c++) {
                unsigned char col[3];
                lss_series_color(c, col);
                if (i == j) {
                    double mx = 0, prev = 0;
                    int64_t t;
                    for (k = 0; k < B; k++) grid[k] = 0;
                    for (t = 0; t < n[c]; t++) {
                        double a = (x[c][(size_t)t * d + i] - lo[i]) / (hi[i] - lo[i]) * B;
                        if (a >= 0 && a < B) grid[(int)a] += 1;
                    }
                    lss__smooth2(grid, B, 1, o.smooth);
                    for (k = 0; k < B; k++) mx = fmax(mx, grid[k]);
                    for (k = 0; k < B; k++) {
                        double px = x0 + 2 + (k + 0.5) * (P - 6) / (double)B, py = y0 + P - 4 - (P - 12) * grid[k] / (mx > 0 ? mx : 1);
                        if (k > 0) lss_image_line(&im, px - (P - 6) / (double)B, prev, px, py, col, 2);
                        prev = py;
                    }
                } else {
                    size_t nn = (size_t)B * B;
                    double t68, t95;
                    lss__hist2(x[c], n[c], d, i, j, B, B, lo[i], hi[i], lo[j], hi[j], grid);
                    lss__smooth2(grid, B, B, o.smooth);
                    t68 = lss__hpd_level(grid, nn, 0.68);
                    t95 = lss__hpd_level(grid, nn, 0.95);
                    {
                        double sx = (P - 6) / (double)B, sy = (P - 6) / (double)B;
                        double px0 = x0 + 2 + 0.5 * sx, py0 = y0 + P - 4 - 0.5 * sy;
                        if (t95 > 0) lss__contour(&im, grid, B, B, t95, px0, py0, sx, sy, col, 1);
                        if (t68 > 0) lss__contour(&im, grid, B, B, t68, px0, py0, sx, sy, col, 2);
                    }
                }
            }
            if (o.truth) {
                double tx = o.truth[i], ty = o.truth[j];
                if (isfinite(tx) && tx >= lo[i] && tx <= hi[i]) {
                    double px = x0 + 2 + (tx - lo[i]) / (hi[i] - lo[i]) * (P - 6);
                    lss_image_line(&im, px, y0 + 2, px, y0 + P - 4, red, 1);
                }
                if (i != j && isfinite(ty) && ty >= lo[j] && ty <= hi[j]) {
                    double py = y0 + P - 4 - (ty - lo[j]) / (hi[j] - lo[j]) * (P - 6);
                    lss_image_line(&im, x0 + 2, py, x0 + P - 4, py, red, 1);
                }
            }
            /* ticks: x on the bottom row, y on the first column (below the diagonal) */
            if (j == d - 1) {
                step = lss__tick_step(hi[i] - lo[i], 3);
                for (tv = ceil(lo[i] / step) * step; tv <= hi[i]; tv += step) {
                    double px = x0 + 2 + (tv - lo[i]) / (hi[i] - lo[i]) * (P - 6);
                    lss_image_line(&im, px, y0 + P - 4, px, y0 + P, black, 1);
                    lss_format_tick(fabs(tv) < 1e-12 * step ? 0.0 : tv, buf, sizeof buf);
                    lss_image_text(&im, (int)px - lss_image_text_width(buf, 1) / 2, y0 + P + 2, buf, black, 1);
                }
                {
                    char nb[32];
                    const char *nm = o.names && o.names[i] ? o.names[i] : (snprintf(nb, sizeof nb, "p%d", i), nb);
                    lss_image_text(&im, x0 + P / 2 - lss_image_text_width(nm, 2) / 2, y0 + P + 16, nm, black, 2);
                }
            }
            if (i == 0 && j > 0) {
                step = lss__tick_step(hi[j] - lo[j], 3);
                for (tv = ceil(lo[j] / step) * step; tv <= hi[j]; tv += step) {
                    double py = y0 + P - 4 - (tv - lo[j]) / (hi[j] - lo[j]) * (P - 6);
                    lss_image_line(&im, x0 - 2, py, x0 + 2, py, black, 1);
                    lss_format_tick(fabs(tv) < 1e-12 * step ? 0.0 : tv, buf, sizeof buf);
                    lss_image_text(&im, x0 - 4 - lss_image_text_width(buf, 1), (int)py - 4, buf, black, 1);
                }
                {
                    char nb[32];
                    const char *nm = o.names && o.names[j] ? o.names[j] : (snprintf(nb, sizeof nb, "p%d", j), nb);
                    int wdt = lss_image_text_width(nm, 1);
                    lss_image_text(&im, 2, y0 + P / 2 + 6, nm, black, 1);
                    (void)wdt;
                }
            }
        }
    if (o.labels) /* legend in the empty upper right */
        for (c = 0; c < nchains; c++) {
            unsigned char col[3];
            int lx = margin + (d > 1 ? (d / 2 + 1) * P : P / 2), ly = top + 10 + 18 * c;
            lss_series_color(c, col);
            lss_image_rect(&im, lx, ly, lx + 20, ly + 4, col);
            if (o.labels[c]) lss_image_text(&im, lx + 26, ly - 3, o.labels[c], black, 1);
        }
    st = lss_image_save_png(&im, path);
    lss_image_free(&im);
    LSS_FREE(lo);
    LSS_FREE(grid);
    return st;
}

#endif /* LSS_INFER_IMPLEMENTATION_DONE */
#endif /* LSS_INFER_IMPLEMENTATION */
