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
 *   - helpers: lss_percentile, lss_median_range, lss_stream_key (a key from a named stream for the
 *     APIs that take one seed), lss_walkers_init (walker starts inside a prior).
 *   - DeepLSS summaries: appendix E targets (lss_s8, LSS_S8_PIVOT, lss_deeplss_to_target/_from_target),
 *     summary networks lss_sumnet_* (CNN on maps, PSD network on standardised spectra; Gaussian NLL
 *     output, input standardisation, loss and optimizer step, predict, sensitivity maps), and the
 *     report's numbers: lss_constraint_summary (stds, S8, FoM, 68% HPD area with LSS_DEEPLSS_HPD_*),
 *     lss_coverage (calibration of 68% intervals). The Table I prior box comes from lss_maps.h
 *     (lss_table1), which this header does not include: callers pass its lo/hi to lss_prior_init.
 *   - DeepLSS runs: the configuration (lss_deeplss_cfg: small and paper presets, key = value files with
 *     every value checked), the networks of a run (lss_deeplss_sumnet_create), the MDN and MCMC stages on
 *     a run directory (lss_deeplss_mdn_stage, lss_deeplss_mcmc_stage; the chain table lss_deeplss_jobs and
 *     its files lss_deeplss_jobs_save), the report's numbers read back by column name
 *     (lss_deeplss_numbers_read, lss_deeplss_gains_save) and its figures (lss_deeplss_corners,
 *     lss_deeplss_sensitivity_save, lss_deeplss_loss_png).
 *   - Fisher forecasts from simulations: lss_fisher_from_sims/_free, lss_fisher_fom, lss_fisher_fom_ratio, _sigma_ratio.
 *   Conventions: outputs last; opaque objects via lss_xxx_create(..., **out)/lss_xxx_free; caller-owned
 *   structs lss_xxx_init/lss_xxx_free; library code allocates with LSS_MALLOC and frees with LSS_FREE.
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
    int local;               /* under MPI (lss_core.h) the walkers' log-probabilities are split over the ranks
                                (every rank must run the sampler; the chain is the serial one). 1: this process
                                evaluates every walker (the caller splits other work, such as chains, over ranks) */
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

/* ---------------------------------------------------------------- small helpers of every analysis */
/* Percentile q (0..100, linear interpolation between order statistics) of the finite values of v[n];
 * v is reordered. NaN when no value is finite or q is outside [0, 100]. */
LSSDEF double lss_percentile(double *v, int64_t n, double q);
/* A 64-bit key drawn from the named stream (seed, purpose, index, sub), for the APIs that take one
 * seed (lss_store_create, lss_mdn_opts.seed, lss_sobol): different streams give unrelated keys. */
LSSDEF uint64_t lss_stream_key(uint64_t seed, lss_purpose purpose, uint64_t index, uint32_t sub);
/* Walker starts inside a prior: walker w at center + spread_k N(0, 1) per parameter, drawn from stream
 * (seed, LSS_STREAM_MCMC, index, 1); a start outside the prior is pulled towards mid (d values, e.g.
 * the middle of the prior box) in steps of 2% until it lies inside (at most 200 steps, then
 * LSS_ERR_RANGE). p0 [nwalkers][d]. */
LSSDEF int lss_walkers_init(const lss_prior *prior, int nwalkers, const double *center, const double *spread,
                            const double *mid, uint64_t seed, uint64_t index, double *p0);

/* ---------------------------------------------------------------- DeepLSS summaries
 * The parameter vector of DeepLSS is (Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g) (the order of
 * lss_maps.h's Table I). Networks predict the targets of appendix E: S8 = sigma_8 (Omega_m /
 * LSS_S8_PIVOT)^LSS_S8_EXPONENT in place of sigma_8 and LSS_DEEPLSS_AIA_TARGET A_IA in place of A_IA,
 * with a Gaussian likelihood output (eq. 14: 7 means and the 28 entries of the Cholesky factor of
 * the precision). */
#define LSS_DEEPLSS_NPARAM 7
#define LSS_DEEPLSS_NOUT (LSS_DEEPLSS_NPARAM + LSS_DEEPLSS_NPARAM * (LSS_DEEPLSS_NPARAM + 1) / 2)
#define LSS_S8_PIVOT 0.3
#define LSS_S8_EXPONENT 0.5
#define LSS_DEEPLSS_AIA_TARGET 0.1
#define LSS_DEEPLSS_OM_FLOOR 1e-3   /* Omega_m predictions below it are raised to it before S8 is undone */
LSSDEF double lss_s8(double omega_m, double sigma_8);
LSSDEF void lss_deeplss_to_target(const double *theta, double *y);
LSSDEF void lss_deeplss_from_target(const double *y, double *theta);

/* A summary network: a CNN on maps (lss_resnet) or an MLP on standardised spectra (2 hidden ReLU
 * layers), with its inputs standardised by checkpointed buffers, an optimizer, and its own graph.
 * Maps are [map_ch][side][side] (the CNN takes channels ch0 .. ch0 + nch - 1); spectra [npairs][nell]
 * (the PSD network takes the pairs with use_pair[q] != 0). Not thread-safe: one network per thread. */
typedef enum { LSS_SUMNET_CNN = 0, LSS_SUMNET_PSD = 1 } lss_sumnet_kind;
typedef struct {
    int kind;                    /* lss_sumnet_kind */
    int batch;                   /* largest batch (required) */
    int map_ch, side, ch0, nch;  /* CNN input */
    int nconv, nres, channels, kernel;   /* CNN architecture (lss_resnet_opts) */
    int pool, hidden;            /* CNN head (lss_resnet_opts: global average pool, hidden dense width) */
    double in_std;               /* CNN: each channel scaled to this standard deviation (0: unscaled) */
    int products;                /* CNN: extra input channels, products m_a m_b of a channel a of the first half of the
                                    nch channels and b of the second (DeepLSS comb: kappa_g bins x delta_g bins):
                                    0 none, 1 matching bins (b = a + nch/2), 2 every pair (at most 8 x 8), each
                                    needing an even nch >= 2; 3 every pair a <= b of all nch channels, squares
                                    included (nch <= 10). Each standardised like the maps. */
    int hybrid;                  /* CNN: 1 concatenates the standardised spectra (the PSD network's input: npairs, nell,
                                    use_pair) to the pooled convolutional features before the hidden and output layers, a
                                    diagnostic that is at least as informative as the spectra by construction; 0 none */
    int npairs, nell;            /* PSD input */
    const int *use_pair;         /* PSD: [npairs] (NULL: every pair) */
    int width;                   /* PSD hidden width */
    uint64_t seed;               /* initialisation: stream (seed, LSS_STREAM_NET_INIT, 0, sub) */
    uint32_t sub;
    const lss_optim_opts *optim; /* NULL: no optimizer (prediction only) */
} lss_sumnet_opts;
typedef struct {
    lss_sumnet_opts o;
    int nfeat;                   /* PSD input features (hybrid CNN: its spectra features) */
    lss_store *store;
    lss_optim *optim;
    lss_graph *g;
    lss_resnet cnn;
    lss_mlp mlp;
    lss_tensor *fmu, *fsd;       /* PSD feature mean and std (buffers) */
    lss_tensor *cscale;          /* CNN per-channel input scale (buffer) */
    lss_tensor *tmu, *tsd;       /* target mean and std over the prior (buffers; 0 and 1 until set) */
    int nprod, pa[64], pb[64];   /* CNN product channels nch + k = m_pa[k] m_pb[k] (channel indices within nch) */
    float *xin;                  /* [batch][input] */
    float *yst;                  /* [batch][7] standardised targets */
    float *xsp;                  /* hybrid CNN: [batch][nfeat] standardised spectra */
    lss_dp *dp;                  /* data-parallel training (lss_sumnet_set_shards; NULL: one shard) */
    int r0;                      /* first batch row of the views (a shard's) */
} lss_sumnet;
/* Creates the network (*out freed with lss_sumnet_free); the options are copied (use_pair too). The
   output layer starts at zero weights, zero mean biases and the diagonal biases of the precision Cholesky
   factor at softplus^-1(1 - LSS_CHOL_DIAG_EPS): before training the network predicts the target mean
   with unit precision in standardised units (lss_sumnet_set_targets), whatever the input. */
LSSDEF int lss_sumnet_create(const lss_sumnet_opts *o, lss_sumnet **out);
LSSDEF void lss_sumnet_free(lss_sumnet *n);
/* Input standardisation from ns examples: the CNN's per-channel scale in_std / std over the maps,
   the PSD network's per-feature mean and std of the spectra (non-finite values ignored). A hybrid CNN
   takes both; either may be NULL to set the other part alone (two calls with their own ns). */
LSSDEF int lss_sumnet_standardise(lss_sumnet *n, const float *maps, const double *spec, int ns);
/* Target standardisation from ns parameter draws of the prior, theta [ns][7]: the network's outputs are
   (y - mean) / std of the appendix E targets y (lss_chain_stats: std with ddof 0; checkpointed buffers; unset: mean 0,
   std 1). */
LSSDEF int lss_sumnet_set_targets(lss_sumnet *n, const double *theta, int ns);
/* Row i of the input batch from one map [map_ch][side][side] or spectra [npairs][nell]. */
LSSDEF int lss_sumnet_input(lss_sumnet *n, int i, const float *map, const double *spec);
/* Gaussian NLL (eq. 14) of the nb rows in the batch against targets y [nb][7]; train != 0: backward
   and one optimizer step (LSS_ERR_NUMERIC when the gradient is not finite: the step is skipped). */
LSSDEF int lss_sumnet_loss(lss_sumnet *n, int nb, const float *y, int train, double *loss);
/* Data-parallel training steps (lss_dp_grad of lss_nn.h): the batch of each training lss_sumnet_loss split
   into nshard fixed shards whose gradients are added in order; under MPI the ranks compute the shards,
   and the parameters after every step are bitwise those of a serial run with the same nshard, at any
   rank count. nshard 1 (the default): the whole batch at once. */
LSSDEF int lss_sumnet_set_shards(lss_sumnet *n, int nshard);
/* Parameters (targets undone) of the nb rows: theta [nb][7]. */
LSSDEF int lss_sumnet_predict(lss_sumnet *n, int nb, double *theta);
/* Section VI: d theta_k / d m for k = A_IA (sens[0]) and sigma_8 (sens[1]) of a CNN at one map:
   sens [2][nch][side][side], gradients with respect to the unscaled map. */
LSSDEF int lss_sumnet_sensitivity(lss_sumnet *n, const float *map, float *sens);

/* ---------------------------------------------------------------- Fisher forecasts from simulations */
/* Fisher matrices of data summaries (power spectra, moments, network outputs) at a fiducial point from
 * simulations, with jackknife errors, to compare summaries computed on the same simulations.
 * Inputs: fid [nfid][d], the summaries of nfid simulations at the fiducial theta0; plus, minus [p][nder][d], the
 * summaries at theta0 + step_a e_a and theta0 - step_a e_a, realisation i of plus and of minus sharing their random
 * numbers (common random numbers: the difference is the response to the parameter, not noise).
 *   derivatives  delta_a,i = (plus_a,i - minus_a,i) / (2 step_a),   dmu_a = (1/nder) sum_i delta_a,i
 *   covariance   C = 1/(nfid - 1) sum_i (fid_i - mean)(fid_i - mean)^T, inverted by Cholesky in double after
 *                scaling to unit diagonal; Psi = h C^-1 with the Hartlap factor h = (nfid - d - 2) / (nfid - 1)
 *                (E[Psi] = C_true^-1 for Gaussian summaries)
 *   raw Fisher   F_raw_ab = dmu_a^T Psi dmu_b
 *   noise bias   derivative noise biases F_raw up: E[F_raw_ab] = F_ab + tr(Psi Sigma_ab) / nder, Sigma_ab the cross
 *                covariance of delta_a,i and delta_b,i over i. With its unbiased estimate
 *                S_ab = 1/(nder - 1) sum_i (delta_a,i - dmu_a)(delta_b,i - dmu_b)^T:
 *                F_ab = F_raw_ab - tr(Psi S_ab) / nder          (nder < 2: no correction, F = F_raw)
 *                The correction is unbiased to first order (Psi independent of the derivative set) but, with too
 *                few derivative simulations, can leave F not positive definite.
 *   forecast     cov = (F + P)^-1, P = diag(1 / prior_sigma_a^2) (0 where prior_sigma_a <= 0 or inf);
 *                sigma_a = sqrt(cov_aa); FoM(i, j) = 1 / sqrt(cov_ii cov_jj - cov_ij^2)
 *   errors       delete-block jackknife: fid and each derivative set are cut into B = nblock contiguous blocks
 *                (rows [b n / B, (b + 1) n / B)); replicate b drops block b of both and redoes everything (mean,
 *                covariance and Hartlap factor with nfid - n_b, dmu and correction with nder - m_b; a replicate
 *                with fewer than 2 derivative simulations gets no correction); for x with replicates x_b,
 *                err = sqrt((B - 1)/B sum_b (x_b - mean_b x_b)^2). A replicate's covariance is the total sums of x
 *                and x x^T (centred on the mean) minus the block's: cost O(nfid d^2 + B d^3 + B nder p d^2),
 *                memory O(threads d^2); the replicates run in parallel (OpenMP), results do not depend on the
 *                number of threads. */
typedef struct {
    int p, d;           /* parameters, summary dimension */
    int64_t nfid, nder; /* simulations used for the covariance and per derivative */
    int nblock;         /* jackknife blocks (0: no jackknife) */
    int nbad;           /* jackknife replicates whose F + prior is not positive definite (errors NaN then) */
    double hartlap;     /* (nfid - d - 2) / (nfid - 1) applied to the inverse covariance */
    double *F;          /* [p][p] Fisher matrix, derivative-noise bias removed */
    double *F_raw;      /* [p][p] without the derivative-noise correction */
    double *cov;        /* [p][p] (F + prior)^-1, the forecast covariance */
    double *sigma;      /* [p] marginal sqrt(cov_kk) */
    double *sigma_err;  /* [p] delete-block jackknife standard error of sigma (NaN without a jackknife) */
    double *dmu;        /* [p][d] mean derivatives */
    double *jcov;     /* [nblock][p][p] cov of each jackknife replicate (NaN for a bad one); NULL: none */
} lss_fisher;
/* Fills *out (overwritten: free an earlier result first; zeroed on failure). prior_sigma [p] or NULL: Gaussian
   prior widths added to F (entries <= 0 or inf: none). nblock: jackknife blocks, 2 .. nder (0: min(20, nder);
   < 0: no jackknife); every replicate must keep more than d + 2 fiducial simulations.
   LSS_ERR_ARG: a NULL input, p < 1, d < 1, nder < 1, nfid <= d + 2 (the message says how many are needed), a step
   not > 0 and finite, a NaN prior width, bad nblock, a non-finite summary (naming the set, row and column).
   LSS_ERR_NUMERIC: the covariance of the summaries is not positive definite (naming the summary that is constant
   or a linear combination of the others), or F + prior is not ("more derivative simulations needed" when only
   the derivative-noise correction made it so). LSS_ERR_NOMEM. */
LSSDEF int lss_fisher_from_sims(const double *fid, int64_t nfid, const double *plus, const double *minus, int64_t nder,
                                int p, int d, const double *step, const double *prior_sigma, int nblock, lss_fisher *out);
LSSDEF void lss_fisher_free(lss_fisher *f);
/* The same from a table of many summaries, X [nfid + 2 p nder][ld]: rows [0, nfid) fiducial, then p blocks of nder rows
   at +step (parameter a: rows nfid + a nder + i), then p blocks at -step (lss_maps.h's lss_fdsims_observe_rows layout);
   the summary is the ncol columns cols[] of every row (any order, each < ld). */
LSSDEF int lss_fisher_from_table(const double *X, int64_t ld, const int *cols, int ncol, int64_t nfid, int64_t nder, int p,
                                 const double *step, const double *prior_sigma, int nblock, lss_fisher *out);
/* The figure of merit 1/sqrt(det) of the 2x2 block (i, j) of f->cov; err (may be NULL): its jackknife error
   (NaN without a jackknife or with bad replicates). NaN (and LSS_ERR_ARG in lss_last_error) for bad arguments. */
LSSDEF double lss_fisher_fom(const lss_fisher *f, int i, int j, double *err);
/* Paired ratios of two forecasts from the same simulations (say two summaries of the same maps): FoM_a / FoM_b of
   the block (i, j), and sigma_a[k] / sigma_b[k], each with the jackknife error of the ratio from the per-replicate
   values (the shared noise cancels). a and b must have the same p, nfid, nder and nblock (else NaN, err NaN). */
LSSDEF double lss_fisher_fom_ratio(const lss_fisher *a, const lss_fisher *b, int i, int j, double *err);
LSSDEF double lss_fisher_sigma_ratio(const lss_fisher *a, const lss_fisher *b, int k, double *err);


/* ---------------------------------------------------------------- DeepLSS report numbers */
/* Per-mock constraint summary of one MCMC run: std of the 7 parameters and S8, FoM 1/sqrt(det C) and
   the 68% HPD area in (Omega_m, sigma_8) with the DeepLSS histogram (LSS_DEEPLSS_HPD_*). */
#define LSS_DEEPLSS_HPD_BINS 100
#define LSS_DEEPLSS_HPD_XLO 0.0
#define LSS_DEEPLSS_HPD_XHI 0.6
#define LSS_DEEPLSS_HPD_YLO 0.4
#define LSS_DEEPLSS_HPD_YHI 1.5
#define LSS_DEEPLSS_HPD_SMOOTH 1.0
typedef struct {
    double mean[LSS_DEEPLSS_NPARAM], std[LSS_DEEPLSS_NPARAM + 1];   /* std[7]: S8 */
    double lo68[LSS_DEEPLSS_NPARAM], hi68[LSS_DEEPLSS_NPARAM];
    double fom_det, area68;
} lss_constraint;
/* From flat samples [n][7]. */
LSSDEF int lss_constraint_summary(const double *x, int64_t n, lss_constraint *c);
/* Median and 16/84 percentiles of v[n] (finite values; v reordered): out[3]. */
LSSDEF void lss_median_range(double *v, int64_t n, double *out);
/* Coverage of 68% intervals: n mocks x d parameters, inside[i*d + k] 1/0 (NaN: mock not analysed);
   frac (all pooled) and per-parameter fractions frac_k[d] (may be NULL); returns the mocks analysed. */
LSSDEF int64_t lss_coverage(const double *inside, int64_t n, int d, double *frac, double *frac_k);
/* Table II: the gains of network `net` over the reference `ref` on n mocks analysed by both (entry i of
   each array: the same observed map): per mock std_ref / std_net for the 7 parameters and S8 (rows 0..7),
   fom_det_net / fom_det_ref (row 8) and area68_ref / area68_net (row 9); gain[row] = median, 16th and
   84th percentile over the mocks. A mock counts when both constraints have a finite std[0] (write NaN
   there for a mock that was not analysed). Returns the mocks counted, or a negative status. */
#define LSS_DEEPLSS_NGAIN (LSS_DEEPLSS_NPARAM + 3)
LSSDEF int64_t lss_deeplss_gains(const lss_constraint *ref, const lss_constraint *net, int64_t n, double (*gain)[3]);
/* Figures of merit of one network over n mocks: fom[0] = 1/sqrt(det C) and fom[1] = 1/area68, each the
   median, 16th and 84th percentile over the analysed mocks (finite std[0]). Returns the mocks counted, or
   a negative status. */
LSSDEF int64_t lss_deeplss_fom(const lss_constraint *c, int64_t n, double (*fom)[3]);

/* ---------------------------------------------------------------- DeepLSS training and chains */
/* Training of summary networks together through lss_train (lss_nn.h): every step draws one batch with
 * draw(user, step, batch, maps, spec, theta), a pure function of the step (so that resume is exact),
 * and takes one optimizer step of every network on it (the networks run in parallel, one per thread);
 * the held-out set is evaluated every eval_every steps. The networks' input standardisation
 * (lss_sumnet_standardise) is the caller's, before the call; a resumed run reloads it with the
 * checkpoints. Columns of the loss CSV: step, train_<name>..., valid_<name>... */
typedef struct {
    int64_t steps;               /* total optimizer steps (required) */
    int batch;                   /* examples per step (required; at most every network's batch) */
    int eval_every, ckpt_every;  /* as lss_train_opts (0: only at the end) */
    const char *loss_csv;        /* NULL: none */
    int resume;                  /* 1: continue from the checkpoints (every network needs one) */
    int patience;                /* > 0: plateau stop after `patience` evaluations in which no network's held-out
                                    loss improved, each network returned at its best evaluation (needs ntest) */
    int64_t map_size, spec_size; /* floats of one map (CNN input layout) and doubles of one spectra set
                                    (PSD input layout); each must match the networks of its kind */
    /* fills maps [n][map_size], spec [n][spec_size] and the parameters theta [n][LSS_DEEPLSS_NPARAM] */
    int (*draw)(void *user, int64_t step, int n, float *maps, double *spec, double *theta);
    void *user;                  /* passed to draw and progress */
    int ntest;                   /* held-out examples (0: no evaluation) */
    const float *test_maps;      /* [ntest][map_size] */
    const double *test_spec;     /* [ntest][spec_size] */
    const double *test_theta;    /* [ntest][LSS_DEEPLSS_NPARAM] */
    void (*progress)(void *user, int64_t step, int64_t steps, const double *train, const double *valid);
} lss_sumnet_train_opts;
/* names[nnet] (required) and ckpt_paths[nnet] (NULL or entries NULL: no checkpoint); res may be NULL.
   LSS_ERR_ARG for bad options or networks that do not fit them; the draw callback's and lss_train's
   errors as they come. */
LSSDEF int lss_sumnet_train(lss_sumnet *const *nets, int nnet, const char *const *names, const char *const *ckpt_paths,
                            const lss_sumnet_train_opts *o, lss_train_result *res);

/* The most likely summary at theta (section V: the mock observation "at the fiducial parameters"): of
   nsamp draws from the MDN at theta, the one of highest density among those inside the summary scaler's
   range. obs [d]. LSS_ERR_RANGE when no draw lies inside. */
LSSDEF int lss_mdn_mode(lss_mdn *m, const double *theta, int nsamp, lss_rng *r, double *obs);

/* Ensemble MCMC with an MDN likelihood. Walkers start in a ball around `start` (std spread times the
   prior box width per parameter; a parameter with an unbounded box uses spread itself) by
   lss_walkers_init with stream index `job`; the sampler's draws come from (seed, LSS_STREAM_MCMC, job);
   `burn` steps are run and dropped, then `steps` kept. */
typedef struct {
    const lss_prior *prior;      /* required */
    int walkers, burn, steps;    /* walkers >= 2 d (even), burn >= 0, steps >= 1 */
    uint64_t seed;
    double spread;               /* 0: 1e-3 */
    const double *mid;           /* [d] where walkers outside the prior are pulled (NULL: middle of the box) */
    int local;                   /* lss_emcee_opts.local (lss_deeplss_chains sets it: it splits the chains) */
} lss_chain_opts;
/* One chain for the observation obs [d]: flat samples [*nflat][p] in *flat (LSS_MALLOC'd; free with
   LSS_FREE), the mean acceptance in *acc (may be NULL). LSS_ERR_RANGE when obs lies outside the MDN's
   summary range (lss_mdn_set_obs). */
LSSDEF int lss_mdn_chain(lss_mdn *m, const double *obs, const double *start, const lss_chain_opts *o, uint64_t job,
                         double **flat, int64_t *nflat, double *acc);
/* A table of DeepLSS chains (7 parameters) run in parallel: job i uses MDN jobs[i].mdn and stream index i.
   Under MPI (lss_core.h) each rank runs its block of the jobs and every rank returns all results, those of
   the serial run. */
typedef struct {
    int mdn;                                /* which MDN, 0..nmdn-1 */
    double obs[LSS_DEEPLSS_NPARAM];         /* observed summary */
    double start[LSS_DEEPLSS_NPARAM];       /* centre of the walkers (the truth of a mock) */
    int keep;                               /* 1: keep the flat chain */
    /* results */
    int ok;                                 /* 1: analysed; 0: obs outside the MDN's summary range */
    double acc;                             /* mean acceptance */
    lss_constraint c;                       /* summary of the chain (NaN when not ok) */
    double *flat;                           /* keep: [nflat][7] (LSS_FREE), else NULL */
    int64_t nflat;
} lss_deeplss_job;
/* mdn[t * nmdn + k]: copy t of MDN k, ncopy copies (one per thread: at most ncopy threads run; an MDN
   is not thread-safe). progress (may be NULL) gets the jobs done so far, from one thread at a time; a
   non-zero return stops with LSS_ERR_STATE. The results do not depend on the number of copies. */
LSSDEF int lss_deeplss_chains(lss_mdn *const *mdn, int nmdn, int ncopy, const lss_chain_opts *o, lss_deeplss_job *jobs,
                              int njobs, int (*progress)(int done, int total, void *user), void *user);

/* ---------------------------------------------------------------- DeepLSS runs
 * What the deeplss driver, a second driver and the tests share about one run: the configuration (scale
 * presets and a key = value file), the networks' names, the chain table of section V built from the
 * predictions and its result files, the report's numbers read back from the run's CSV files, and the
 * figures (corner plots of figures 2-4, sensitivity maps of figure 6, the loss curves). Functions taking
 * `dir` read and write these fixed names in it:
 *   loss.csv, loss.png                      training (lss_sumnet_train) and its figure
 *   mdn_check.csv                           kind, probe, dmu_median/lo/hi, dsig_median/lo/hi per network
 *   mcmc_fid.csv, chain_fid_<net>.npy       per fiducial mock of each network; the kept chains
 *   calibration.csv                         per calibration mock and parameter
 *   gains.csv                               Table II
 *   corner_<probe>.png, s8_aia.png          figures 2-4
 *   sensitivity.npy/.csv/.png               figure 6
 * where <net> is <kind>_<probe> (lss_deeplss_kind_name, lss_deeplss_probe_name), e.g. cnn_comb. The
 * parameter names, true values and prior box of Table I live in lss_maps.h (lss_table1), which this
 * header does not include: callers pass them. */
#define LSS_DEEPLSS_NNET 6    /* {cnn, psd} x {comb, wl, gc}: network k = kind * 3 + probe */
#define LSS_DEEPLSS_NBINS 4   /* tomographic bins: map channels kappa_g 0-3, delta_g 4-7 */
/* "cnn", "psd" (kind 0, 1); probe 0, 1, 2: "comb", "wl", "gc", or with long_name "combined", "lensing",
   "clustering". NULL outside these ranges. */
LSSDEF const char *lss_deeplss_kind_name(int kind);
LSSDEF const char *lss_deeplss_probe_name(int probe, int long_name);

/* The sizes of a run. Two presets: LSS_DEEPLSS_SMALL, one 5 x 5 deg field of 32 x 32 pixels of 9.375 arcmin,
   256 grid cosmologies, a small CNN (3 strided 3 x 3 convolutions to 32 channels, one residual block, the products
   of every pair of its input maps as extra channels, global average pooling and a hidden layer of 256) and up to
   40000 steps with a plateau stop (about half an hour on 2 CPU cores); LSS_DEEPLSS_PAPER, 6 x 6 mosaics of 64 x 64
   fields of 4.6875 arcmin (lss_maps.h's LSS_DEEPLSS_PIXEL_ARCMIN) and the networks, steps and sample sizes of
   the paper and its released code. */
typedef enum { LSS_DEEPLSS_SMALL = 0, LSS_DEEPLSS_PAPER = 1 } lss_deeplss_scale;
typedef struct {
    int scale, nside, grid;       /* lss_deeplss_scale; field pixels per side; mosaic of grid x grid fields */
    double pixel_arcmin;
    int ncosmo, nf_train, nf_test;/* pool: grid cosmologies x (training + held-out) noise-free fields */
    int nconv, nres, channels, kernel;  /* CNN (lss_sumnet_opts) */
    double cnn_in_std;            /* > 0: CNN input channels scaled to this standard deviation */
    int cnn_products;             /* CNN product channels (lss_sumnet_opts.products): 1, 2 kappa_i delta_j of the combined-probe
                                     CNN; 3 all channel pairs of every CNN; 0 none */
    int cnn_pool, cnn_hidden;     /* CNN head: global average pool (1) or flatten (0); hidden dense width (0: none) */
    int cnn_hybrid;               /* 1: hybrid CNNs, the standardised spectra joined to the pooled features (lss_sumnet_opts) */
    int psd_width, nell;          /* PSD network width; ell bins of the spectra over [ell_min, ell_max] */
    double ell_min, ell_max;
    int batch, steps, eval_every, ckpt_every, ntest;   /* training (lss_sumnet_train_opts) */
    double lr_cnn, lr_psd, clip_pct;  /* Adam learning rates; gradient clipping percentile */
    int cosine;                   /* 1: cosine decay of the learning rate to 5%; 0: constant (the paper) */
    int patience;                 /* > 0: stop when no network's held-out loss improved over `patience` evaluations,
                                     and keep each network's best parameters; 0: run every step */
    int ps_estimator;             /* spectra of the PSD networks: 0 Re(X_i X_j*) (LSS_PS_REAL), 1 |X_i X_j*| (the
                                     released code's, LSS_PS_ABS) */
    int pred_per_cosmo, ncal, nfid, ncheck, check_rep;  /* draw sets of section IV (lss_maps.h's LSS_DRAWS_*) */
    int mdn_width, mdn_layers, mdn_K, mdn_epochs;
    int mdn_robust;               /* 1: robust scaler for the summaries; 0: min-max + normal quantile (appendix C) */
    int walkers, burn, nsteps;    /* MCMC */
    uint64_t seed;
} lss_deeplss_cfg;
/* The preset `scale` (LSS_ERR_ARG for another value), seed 1. */
LSSDEF int lss_deeplss_cfg_defaults(lss_deeplss_cfg *c, int scale);
/* "small" -> LSS_DEEPLSS_SMALL, "paper" -> LSS_DEEPLSS_PAPER; LSS_ERR_ARG (negative) for another name. */
LSSDEF int lss_deeplss_scale_parse(const char *name);
LSSDEF const char *lss_deeplss_scale_name(int scale);   /* NULL for an unknown scale */
/* Sets one value by its key (the field's name: "nside", "lr_cnn", "seed", ...) from text: an integer key
   takes a decimal integer, a real key a finite number, each within the key's range (inclusive): scale 0-1,
   nside 8-4096, grid 1-64, pixel_arcmin 1e-3-1e4, ncosmo, nf_train, nf_test 1-1e6, nconv 1-16, nres 0-64,
   channels 1-4096, kernel 1-31, psd_width 1-65536, nell 1-63, ell_min, ell_max 1e-3-1e7, batch 1-4096,
   steps 1-1e9, eval_every, ckpt_every 0-1e9, ntest 0-1e6, lr_cnn, lr_psd 1e-12-0.999, clip_pct 1e-6-100,
   pred_per_cosmo 1-1e7, ncal 0-1e7, nfid 1-1e7, ncheck 0-1e6, check_rep 1-1e6, mdn_width 1-65536,
   mdn_layers 1-16, mdn_K 1-64, mdn_epochs 1-1e7, walkers 14-1e6, burn 0-1e8, nsteps 1-1e8, cosine and
   mdn_robust 0-1, cnn_in_std 0-1e6, patience 0-1e6, ps_estimator 0-1, cnn_products 0-3, cnn_pool 0-1, cnn_hidden 0-65536, cnn_hybrid 0-1, seed any 64-bit value. LSS_ERR_ARG naming the key for an unknown key
   or a bad value, and c unchanged. */
LSSDEF int lss_deeplss_cfg_set(lss_deeplss_cfg *c, const char *key, const char *value);
/* LSS_OK when every value lies in its key's range and the values fit together (walkers even and at least
   2 x 7, ell_min < ell_max, set sizes ncosmo x pred_per_cosmo and ncheck x check_rep below 2^31); else
   LSS_ERR_ARG naming the first bad value. */
LSSDEF int lss_deeplss_cfg_check(const lss_deeplss_cfg *c);
/* What a run of configuration c holds in memory, in bytes (estimates, before anything is allocated): the pool
   of noise-free fields (ncosmo x (nf_train + nf_test) x 3 LSS_DEEPLSS_NBINS x nside^2 floats) and the training
   of the largest network (the CNN's activations and their gradients, and the largest convolution's scratch,
   at batch x (grid nside)^2 pixels: nconv stride-2 convolutions to `channels`, 2 nres convolutions at the last
   resolution). Either output may be NULL. lss_deeplss_cfg_check refuses a configuration above
   LSS_DEEPLSS_MAX_BYTES in either. */
#define LSS_DEEPLSS_MAX_BYTES 1099511627776.0   /* 1 TiB */
LSSDEF void lss_deeplss_cfg_memory(const lss_deeplss_cfg *c, double *pool_bytes, double *train_bytes);
/* Saves every key as "key = value" lines (reals with 17 digits: a load gives the same struct back). A
   configuration that fails lss_deeplss_cfg_check is not saved (LSS_ERR_ARG). Atomic. */
LSSDEF int lss_deeplss_cfg_save(const lss_deeplss_cfg *c, const char *path);
/* Reads a file of lss_deeplss_cfg_save ("key = value" or "key value" lines; blank lines and lines starting
   with '#' skipped): every key exactly once, each value valid, the whole checked; LSS_ERR_IO when the file
   cannot be read, LSS_ERR_FORMAT naming the file and line for an unknown, repeated, missing or bad key (c
   unchanged). */
LSSDEF int lss_deeplss_cfg_load(lss_deeplss_cfg *c, const char *path);
/* The MDN options of a run (width, layers, K, epochs, batch, the scaler; seed from the stream
   (seed, LSS_STREAM_MDN, 0, 0)). */
LSSDEF int lss_deeplss_mdn_opts(const lss_deeplss_cfg *c, lss_mdn_opts *mo);
/* Network k (kind * 3 + probe) of a run for surveys of side x side pixels and 2 LSS_DEEPLSS_NBINS channels:
   the CNN takes all channels (comb), kappa_g (wl) or delta_g (gc); the PSD network the spectra pairs q with
   bit `probe` set in pair_probe[q] (npairs pairs, at most 256). batch: the largest batch. with_optimizer:
   Adam (Keras's eps 1e-7) at lr_cnn or lr_psd, per-tensor clipping at the clip_pct percentile, cosine decay
   when cfg.cosine. Initialisation from (seed, LSS_STREAM_NET_INIT, 0, k). */
LSSDEF int lss_deeplss_sumnet_create(const lss_deeplss_cfg *c, int k, int batch, int side, int npairs, const int *pair_probe,
                                     int with_optimizer, lss_sumnet **out);
/* DIR/loss.png from DIR/loss.csv: every loss column against the step (no figure, LSS_OK, while the CSV has
   no row). */
LSSDEF int lss_deeplss_loss_png(const char *dir, const char *title);

/* The chain table of section V. */
typedef struct {
    int nnet;                                /* networks, 1..LSS_DEEPLSS_NNET; MDN i belongs to network id[i] */
    int id[LSS_DEEPLSS_NNET];                /* network k = kind * 3 + probe, distinct */
    int nfid;                                /* noisy mock observations at the fiducial parameters (>= 1) */
    const double *fid[LSS_DEEPLSS_NNET];     /* [nfid][7] summaries of those mocks per network (required) */
    const double *fiducial;                  /* [7] the fiducial parameters (required) */
    int ncal;                                /* calibration mocks (>= 0) */
    const double *cal[LSS_DEEPLSS_NNET];     /* [ncal][7] their summaries per network (NULL: none for it) */
    const double *cal_theta;                 /* [ncal][7] their true parameters (required with a cal[i]) */
    uint64_t seed;                           /* the draws of lss_mdn_mode: stream (seed, LSS_STREAM_MDN, 1, id[i]) */
    int mode_nsamp;                          /* draws for the most likely observation (0: 2000) */
} lss_deeplss_plan;
/* The jobs for lss_deeplss_chains, in this order: for each network i, the most likely observation at
   `fiducial` (lss_mdn_mode of mdn[i]; when no draw falls inside the MDN's range, the per-component median
   of fid[i]) with its chain kept, then the nfid rows of fid[i], all started at `fiducial`; then for each
   network with cal[i], its ncal rows started at their truths cal_theta. mdn[i] is network i's MDN.
   *jobs is LSS_MALLOC'd (lss_deeplss_jobs_free), *njobs its length. */
LSSDEF int lss_deeplss_jobs(const lss_deeplss_plan *p, lss_mdn *const *mdn, lss_deeplss_job **jobs, int *njobs);
LSSDEF void lss_deeplss_jobs_free(lss_deeplss_job *jobs, int njobs);
/* The results of the jobs of lss_deeplss_jobs (run by lss_deeplss_chains) in DIR: mcmc_fid.csv (kind,
   probe, mock (-1: the most likely observation), ok, std_<names[k]>, std_S8, fom_det, area68, acceptance),
   chain_fid_<net>.npy (float64 [n, 7], the kept chains) and calibration.csv (kind, mock, param, truth,
   lo68, hi68, inside, ok; inside NaN when not analysed). names: the 7 parameter names. *nfail (may be
   NULL): the jobs not analysed. */
LSSDEF int lss_deeplss_jobs_save(const lss_deeplss_plan *p, const lss_deeplss_job *jobs, int njobs, const char *const *names,
                                 const char *dir, int *nfail);

/* The stages of a run that need no maps, on the files in DIR, for the networks in mask (bit k for
   network k). The MDN stage (appendix C): for each network an MDN (lss_deeplss_mdn_opts) fitted to
   DIR/theta_mdn.npy -> DIR/pred_mdn_<net>.npy, saved as DIR/mdn_<net>.ckpt; when c->ncheck > 0, checked
   against DIR/pred_check_<net>.npy at the check draws of DIR/theta_check.npy (lss_mdn_check, 1000 samples,
   stream (seed, LSS_STREAM_CHECK, k)) into DIR/mdn_check_<net>.csv, and all networks' summaries into
   DIR/mdn_check.csv. fit (may be NULL): per network k, its epochs, best epoch and best validation loss. */
typedef struct {
    int epochs, best_epoch;
    double best_val;
} lss_deeplss_fit_info;
LSSDEF int lss_deeplss_mdn_stage(const char *dir, const lss_deeplss_cfg *c, int mask, lss_deeplss_fit_info *fit);
/* The MCMC stage (section V): ncopy copies (one per thread, at most 64) of each DIR/mdn_<net>.ckpt, the
   fiducial summaries DIR/pred_fid_<net>.npy and, for the combined-probe networks when c->ncal > 0,
   DIR/pred_cal_<net>.npy with their truths DIR/theta_cal.npy, make the plan of lss_deeplss_jobs (fiducial
   parameters `fiducial`, mode draws from c->seed); the chains run by lss_deeplss_chains with co and
   progress, and their results go to DIR by lss_deeplss_jobs_save (names: the 7 parameter names). *njobs
   and *nfail (each may be NULL): the chains run and those not analysed. */
LSSDEF int lss_deeplss_mcmc_stage(const char *dir, const lss_deeplss_cfg *c, int mask, const lss_chain_opts *co,
                                  const double *fiducial, const char *const *names, int ncopy,
                                  int (*progress)(int done, int total, void *user), void *user, int *njobs, int *nfail);

/* The numbers of the report, read by column name from the files in DIR. */
typedef struct {
    double gain[3][LSS_DEEPLSS_NGAIN][3];   /* probe, row, median/p16/p84: PSD over CNN (lss_deeplss_gains) */
    int64_t ngain[3];                       /* mocks paired for each probe set */
    double fom[LSS_DEEPLSS_NNET][2][3];     /* network, 1/sqrt(det C) and 1/area68, median/p16/p84 */
    double loss[2][3];                      /* last held-out loss of loss.csv, kind x probe (NaN: none) */
    int64_t loss_step;                      /* its step (-1: no loss.csv) */
    int have_cal;                           /* calibration.csv read (ncal > 0) */
    int64_t cal_n[2];                       /* combined-probe CNN, PSD: mocks analysed */
    double cal_frac[2], cal_par[2][LSS_DEEPLSS_NPARAM];   /* coverage of the 68% intervals (lss_coverage) */
    int have_check[LSS_DEEPLSS_NNET];       /* mdn_check.csv has the network */
    double check[LSS_DEEPLSS_NNET][6];      /* dmu median, lo, hi; dsig median, lo, hi */
} lss_deeplss_numbers;
/* mcmc_fid.csv is required (nfid mocks per network; names: the 7 parameter names of its columns); loss.csv,
   calibration.csv (read when ncal > 0) and mdn_check.csv are optional, but one that exists must have its
   columns (LSS_ERR_FORMAT naming the file and column). */
LSSDEF int lss_deeplss_numbers_read(const char *dir, int nfid, int ncal, const char *const *names, lss_deeplss_numbers *r);
/* gains.csv (probe, param (row of lss_deeplss_gains), gain_median, gain_p16, gain_p84, nmocks,
   fom_cnn_median, fom_psd_median: the FoM columns on rows 8 and 9) at path. */
LSSDEF int lss_deeplss_gains_save(const lss_deeplss_numbers *r, const char *path);
/* fisher.csv and fisher.md in dir from the summary-efficiency forecasts of `deeplss fisher`: F[probe * nsum + s] for the 3
   probe sets (lss_deeplss_probe_name order) and nsum summaries named sum_names; a forecast with F == NULL is skipped.
   Summary 0 must be the power spectra Re(X_i X_j*) and summary 1 the |X_i X_j*| spectra: every summary's efficiency is
   its FoM(Omega_m, sigma_8) over theirs (paired jackknife errors, lss_fisher_fom_ratio), with its sigma(A_IA) and
   sigma(r_g) over the Re spectra's; summaries from first_net on are networks, flagged "undertrained" below
   LSS_DEEPLSS_UNDERTRAINED. fisher.csv also has every sigma (names: the 7 parameter names). When a summary is named
   "moments" (the one-point moments alone), fisher.md ends with a reading of each network row against it: below it, near
   it (undertrained and within 0.15 above: the network learnt about the pixel statistics only), or beyond it; networks on
   the spectra (names starting "psd") see no pixels and are not read; with a summary "psd" among the networks, each map
   network's FoM over it follows (paired jackknife error). Each file atomic. */
#define LSS_DEEPLSS_UNDERTRAINED 0.9
/* Steps h of the central differences of the summary-efficiency forecasts (Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg,
   r_g): a few per cent of each prior box, where the responses are linear to well below the derivatives' Monte Carlo
   error. */
static const double lss_deeplss_fisher_step[LSS_DEEPLSS_NPARAM] = {0.01, 0.02, 0.3, 0.4, 0.05, 0.2, 0.03};
/* The report's calibration section (coverage of the 68% intervals per network and parameter) and the MDN check table of
   appendix C from numbers read by lss_deeplss_numbers_read, as Markdown on md (names: the 7 parameter names). */
LSSDEF void lss_deeplss_calibration_md(const lss_deeplss_numbers *r, const char *const *names, FILE *md);
/* The report's summary-efficiency section: a heading, then dir/fisher.md copied to md (or a line saying it is absent). */
LSSDEF void lss_deeplss_fisher_md(const char *dir, FILE *md);
LSSDEF int lss_deeplss_fisher_save(const char *dir, const lss_fisher *F, int nsum, const char *const *sum_names, int first_net,
                                   const char *const *names, int64_t nfid, int64_t nder);

/* Figures 2-4 from DIR/chain_fid_<net>.npy (a missing file leaves out its figures; a malformed one is
   LSS_ERR_FORMAT): DIR/corner_<probe>.png (CNN vs PSD, for each probe set with both chains) and DIR/s8_aia.png
   (S8 - A_IA of the three CNNs, when all three exist). names, truth, lo, hi: the 7 parameters' names, true
   values and axis ranges. *nfig (may be NULL): the figures written. */
LSSDEF int lss_deeplss_corners(const char *dir, const char *const *names, const double *truth, const double *lo,
                               const double *hi, int *nfig);
/* Figure 6 from one survey map [2 LSS_DEEPLSS_NBINS][side][side] and its sensitivities sens
   [2][2 LSS_DEEPLSS_NBINS][side][side] (lss_sumnet_sensitivity: d A_IA / dm, then d sigma_8 / dm):
   DIR/sensitivity.npy (sens as float32), DIR/sensitivity.csv (channel, rms_dAIA_dm, rms_dsigma8_dm, rms_map)
   and DIR/sensitivity.png (rows: the map, the two sensitivities; each panel on its own symmetric scale,
   delta_g of the map on [-1, 1]). rms [8][3] (may be NULL): the CSV's three RMS columns. */
LSSDEF int lss_deeplss_sensitivity_save(const float *map, const float *sens, int side, const char *dir, double (*rms)[3]);

#ifdef __cplusplus
}
#endif
#endif /* LSS_INFER_H */

/* ================================================================ implementation */
#ifdef LSS_INFER_IMPLEMENTATION
#ifndef LSS_INFER_IMPLEMENTATION_DONE
#define LSS_INFER_IMPLEMENTATION_DONE

#include <errno.h>
#include <fftw3.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#if defined(_OPENMP) && !defined(LSS_NO_OPENMP)
#include <omp.h>
#define LSS__IOMP(x) _Pragma(#x)
#else
#define LSS__IOMP(x)
#endif

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
    if (nin > 0 && lss_mpi_size() > 1 && !e->o.local) {
        /* under MPI: each rank evaluates its block of the points, then every rank gets all values */
        int64_t lo, hi;
        int bad, sb;
        lss_mpi_block(nin, lss_mpi_rank(), lss_mpi_size(), &lo, &hi);
        st = hi > lo ? f(e->bx + (size_t)lo * d, (int)(hi - lo), d, e->blp + lo, user) : LSS_OK;
        if (st != LSS_OK && !lss_last_error()[0]) lss_seterr(st, "emcee: the log-probability callback failed (status %d)", st);
        if ((sb = lss_mpi_agree(st, &bad)) != LSS_OK) {
            if (bad == lss_mpi_rank()) return st;
            return lss_seterr(sb, "emcee: the log-probability callback failed on rank %d (status %d; that rank reports why)", bad, sb);
        }
        lss_mpi_allgather(e->blp, nin, sizeof(double));
    } else if (nin > 0) {
        if ((st = f(e->bx, nin, d, e->blp, user)) != LSS_OK) {
            if (!lss_last_error()[0]) lss_seterr(st, "emcee: the log-probability callback failed (status %d)", st);
            return st;
        }
    }
    if (nin > 0) {
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

/* lss_mdn_fit's loop state for lss_train: one step is one minibatch, an evaluation ends every epoch. */
typedef struct {
    lss_mdn *m;
    lss_optim *optim;
    lss_graph *g;
    const lss_mdn_opts *o;
    const double *tt, *yy;       /* scaled rows */
    const int64_t *idx;          /* training rows idx[0..ntr), validation rows idx[ntr..ngood) */
    int64_t *perm;               /* the training rows in the order of the current epoch */
    int64_t ntr, ngood, B, nbe, perm_epoch;
    float *xb, *yb;
    double *lp, tl, lr, plateau_best;
    int64_t ntl;
    int epoch, since_plateau, cooldown;
    int stop;                    /* 1: the progress callback asked to stop; 2: the training loss is not finite */
    char msg[256];
} lss__mdn_fit_state;

/* Minibatch b of epoch e: the training rows shuffled by stream (seed, 2000 + e), a pure function of the step. */
static int lss__mdn_fit_step(void *user, int64_t t, double *loss) {
    lss__mdn_fit_state *f = (lss__mdn_fit_state *)user;
    lss_mdn *m = f->m;
    int64_t e = t / f->nbe, b0 = (t % f->nbe) * f->B, i, sx[2], sy[2];
    lss_tensor *x, *y, *out, *l;
    int p = m->p, d = m->d, j, st;
    if (f->stop) return LSS_ERR_NUMERIC;   /* stopped: the remaining steps leave the network alone */
    if (e != f->perm_epoch) {
        lss_rng rng;
        lss_rng_init(&rng, f->o->seed, 2000 + (uint64_t)e);
        memcpy(f->perm, f->idx, sizeof(int64_t) * (size_t)f->ntr);
        for (i = f->ntr - 1; i > 0; i--) {
            int64_t k = (int64_t)(lss_rng_uniform(&rng) * (double)(i + 1)), tmp;
            if (k > i) k = i;
            tmp = f->perm[i]; f->perm[i] = f->perm[k]; f->perm[k] = tmp;
        }
        f->perm_epoch = e;
    }
    for (i = 0; i < f->B; i++) {
        for (j = 0; j < p; j++) f->xb[i * p + j] = (float)f->tt[f->perm[b0 + i] * p + j];
        for (j = 0; j < d; j++) f->yb[i * d + j] = (float)f->yy[f->perm[b0 + i] * d + j];
    }
    lss_graph_reset(f->g);
    sx[0] = f->B; sx[1] = p; sy[0] = f->B; sy[1] = d;
    x = lss_view(f->g, f->xb, 2, sx);
    y = lss_view(f->g, f->yb, 2, sy);
    out = lss_mlp_forward(f->g, &m->net, x);
    l = lss_op_gmm_nll(f->g, out, y, m->K);
    lss_store_zero_grad(m->store);
    if ((st = lss_backward(f->g, l)) != LSS_OK) return st;
    if (!isfinite(l->data[0])) {
        snprintf(f->msg, sizeof f->msg, "mdn_fit: the training loss is not finite at epoch %d", f->epoch);
        f->stop = 2;
        return LSS_ERR_NUMERIC;
    }
    if ((st = lss_optim_step(f->optim)) != LSS_OK) {
        if (st != LSS_ERR_NUMERIC) return st;
        snprintf(f->msg, sizeof f->msg, "mdn_fit: the gradient is not finite at epoch %d", f->epoch);
        f->stop = 2;
        return st;
    }
    loss[0] = l->data[0];
    f->tl += l->data[0];
    f->ntl++;
    return LSS_OK;
}

/* End of an epoch: validation loss, learning-rate reduction on a plateau (cooldown of 5 epochs), the
   progress callback. A stopped fit reports NaN, which never improves, so lss_train's plateau rule ends it. */
static int lss__mdn_fit_eval(void *user, double *loss) {
    lss__mdn_fit_state *f = (lss__mdn_fit_state *)user;
    lss_mdn *m = f->m;
    const lss_mdn_opts *o = f->o;
    double vl;
    int st;
    if (f->stop) { loss[0] = NAN; return LSS_OK; }
    vl = lss__mdn_eval_loss(m, f->tt, f->yy, f->idx, f->ntr, f->ngood, f->lp, &st);
    if (st != LSS_OK) return st;
    m->train_loss = f->tl / (double)(f->ntl ? f->ntl : 1);
    f->tl = 0;
    f->ntl = 0;
    m->epochs = f->epoch + 1;
    if (vl < m->best_val - o->min_delta) { m->best_val = vl; m->best_epoch = f->epoch; }
    if (o->plateau_patience > 0) {
        if (vl < f->plateau_best - o->min_delta) {
            f->plateau_best = vl;
            f->since_plateau = 0;
        } else if (f->cooldown > 0) {
            f->cooldown--;
        } else if (++f->since_plateau >= o->plateau_patience && f->lr > o->lr_min) {
            f->lr = fmax(f->lr * o->plateau_factor, o->lr_min);
            lss_optim_set_lr(f->optim, f->lr);
            f->since_plateau = 0;
            f->cooldown = 5;
        }
    }
    if (o->progress && o->progress(f->epoch, m->train_loss, vl, o->progress_user)) f->stop = 1;
    f->epoch++;
    loss[0] = vl;
    return LSS_OK;
}

LSSDEF int lss_mdn_fit(lss_mdn *m, const double *theta_t, const double *theta_p, int64_t n, const lss_mdn_opts *opt) {
    lss_mdn_opts o;
    lss_optim_opts oo;
    lss_rng rng;
    lss__mdn_fit_state f;
    lss_train_net tn;
    lss_train_opts to;
    double *tt = NULL, *yy = NULL;
    int64_t *idx = NULL, i, ngood = 0, ntr, nva;
    int st = LSS_OK, p, d, j;
    if (!m || !theta_t || !theta_p || n < 2) return lss_seterr(LSS_ERR_ARG, "mdn_fit: need at least 2 samples");
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    lss__mdn_defaults(&o);
    if (!(o.val_frac > 0 && o.val_frac < 1) || o.batch < 1 || o.max_epochs < 1 || o.patience < 1 || !(o.lr > 0) ||
        !(o.plateau_factor > 0 && o.plateau_factor <= 1) || !(o.min_delta >= 0))
        return lss_seterr(LSS_ERR_ARG, "mdn_fit: options out of range (val_frac %g, batch %d, epochs %d, patience %d, lr %g)",
                          o.val_frac, o.batch, o.max_epochs, o.patience, o.lr);
    memset(&f, 0, sizeof f);
    p = m->p;
    d = m->d;
    tt = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * p);
    yy = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * d);
    idx = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)n);
    f.perm = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)n);
    f.lp = (double *)LSS_MALLOC(sizeof(double) * 4096);
    if (!tt || !yy || !idx || !f.perm || !f.lp) {
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
    f.m = m; f.o = &o; f.tt = tt; f.yy = yy; f.idx = idx; f.ntr = ntr; f.ngood = ngood;
    f.B = o.batch < ntr ? o.batch : ntr;
    f.nbe = ntr / f.B;   /* full batches; the remainder of an epoch's order is left out of it */
    f.perm_epoch = -1;
    f.lr = o.lr;
    f.plateau_best = HUGE_VAL;
    f.xb = (float *)LSS_MALLOC(sizeof(float) * (size_t)f.B * p);
    f.yb = (float *)LSS_MALLOC(sizeof(float) * (size_t)f.B * d);
    if (!f.xb || !f.yb || (st = lss__mdn_reserve(m, 4096)) != LSS_OK) {
        if (st == LSS_OK) st = lss_seterr(LSS_ERR_NOMEM, "mdn_fit: out of memory");
        goto done;
    }
    if ((st = lss_graph_create(&f.g)) != LSS_OK) goto done;
    lss_graph_set_training(f.g, 1);
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM;
    oo.lr = o.lr;
    oo.eps = 1e-7;
    if ((st = lss_optim_create(m->store, &oo, &f.optim)) != LSS_OK) goto done;
    m->best_val = HUGE_VAL;
    m->best_epoch = -1;
    m->epochs = 0;
    /* early stopping: lss_train's plateau rule on the validation loss, with the best weights restored */
    memset(&tn, 0, sizeof tn);
    tn.store = m->store;
    tn.optim = f.optim;
    memset(&to, 0, sizeof to);
    to.steps = (int64_t)o.max_epochs * f.nbe;
    to.eval_every = (int)(f.nbe < INT32_MAX ? f.nbe : INT32_MAX);
    to.patience = o.patience;
    to.min_delta = o.min_delta;
    to.keep_best = 1;
    to.step = lss__mdn_fit_step;
    to.eval = lss__mdn_fit_eval;
    to.user = &f;
    st = lss_train(&tn, 1, &to, NULL);
    if (st == LSS_OK && f.stop == 2) st = lss_seterr(LSS_ERR_NUMERIC, "%s", f.msg);
    if (st != LSS_OK) goto done;
    m->ntrain = ntr;
    m->nval = nva;
    m->fitted = 1;
    m->has_obs = 0;
done:
    lss_optim_free(f.optim);
    lss_graph_free(f.g);
    LSS_FREE(tt);
    LSS_FREE(yy);
    LSS_FREE(idx);
    LSS_FREE(f.perm);
    LSS_FREE(f.lp);
    LSS_FREE(f.xb);
    LSS_FREE(f.yb);
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

/* Gaussian smoothing of a [ny][nx] grid (sigma in cells, zeros outside; ny = 1: along x only) by the one
 * separable smoothing of lss_core.h (lss_gauss_kernel, lss_conv_sep_zeropad), in float. The kernel is
 * normalised and reaches ceil(4 sigma) cells (at most LSS_GAUSS_MAX_HW; sigma above 1e6, infinity included, acts as
 * 1e6: a flat kernel). sigma not > 0: no smoothing. */
static int lss__smooth2(double *h, int nx, int ny, double sigma) {
    float k[2 * LSS_GAUSS_MAX_HW + 1], *f;
    double r;
    size_t i, n = (size_t)nx * (size_t)ny;
    int hw, st;
    if (!(sigma > 0)) return LSS_OK;
    if (!h || nx < 1 || ny < 1) return lss_seterr(LSS_ERR_ARG, "smooth: bad grid %d x %d", nx, ny);
    if (sigma > 1e6) sigma = 1e6;   /* flat over the largest kernel already */
    r = ceil(4 * sigma);
    if (r > LSS_GAUSS_MAX_HW) r = LSS_GAUSS_MAX_HW;
    if ((hw = lss_gauss_kernel(sigma, (r + 0.5) / sigma, k)) < 0) return LSS_ERR_ARG;
    f = (float *)LSS_MALLOC(sizeof(float) * (n + (size_t)lss_conv_sep_zeropad_tmp(ny, nx, hw)));
    if (!f) return lss_seterr(LSS_ERR_NOMEM, "smooth: out of memory");
    for (i = 0; i < n; i++) f[i] = (float)h[i];
    st = lss_conv_sep_zeropad(f, ny, nx, k, hw, f + n);
    /* one row: the pass across rows met zeros but for the kernel's centre */
    for (i = 0; i < n && st == LSS_OK; i++) h[i] = ny == 1 ? (double)f[i] / k[hw] : (double)f[i];
    LSS_FREE(f);
    return st;
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
    margin = 100;                          /* the y names (vertical) and tick labels; the x ones below */
    top = o.title ? 46 : 16;
    W = margin + d * P + 20;
    H = top + d * P + margin - 20;
    {   /* the legend (chains, the 68/95% key, the truth) in the empty upper right: the canvas grows to hold it */
        int lgw = lss_image_text_width_size("68% (thick), 95% (thin)", LSS_FONT_TICK), lxl = margin + (d > 1 ? (d / 2 + 1) * P : P / 2);
        for (c = 0; o.labels && c < nchains; c++)
            if (o.labels[c] && lss_image_text_width_size(o.labels[c], LSS_FONT_TICK) > lgw) lgw = lss_image_text_width_size(o.labels[c], LSS_FONT_TICK);
        if (d == 1) lxl = margin + P + 20;
        if (lxl + 40 + lgw + 16 > W) W = lxl + 40 + lgw + 16;
    }
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
    if (o.title) lss_image_text_size(&im, margin, 10, o.title, black, LSS_FONT_TITLE);
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
                    if ((st = lss__smooth2(grid, B, 1, o.smooth)) != LSS_OK) goto fail;
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
                    if ((st = lss__smooth2(grid, B, B, o.smooth)) != LSS_OK) goto fail;
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
                    lss_image_text_size(&im, (int)px - lss_image_text_width_size(buf, LSS_FONT_TICK) / 2, y0 + P + 4, buf, black, LSS_FONT_TICK);
                }
                {
                    char nb[32];
                    const char *nm = o.names && o.names[i] ? o.names[i] : (snprintf(nb, sizeof nb, "p%d", i), nb);
                    lss_image_text_size(&im, x0 + P / 2 - lss_image_text_width_size(nm, LSS_FONT_LABEL) / 2, y0 + P + 26, nm, black,
                                        LSS_FONT_LABEL);
                }
            }
            if (i == 0 && j > 0) {
                step = lss__tick_step(hi[j] - lo[j], 3);
                for (tv = ceil(lo[j] / step) * step; tv <= hi[j]; tv += step) {
                    double py = y0 + P - 4 - (tv - lo[j]) / (hi[j] - lo[j]) * (P - 6);
                    lss_image_line(&im, x0 - 2, py, x0 + 2, py, black, 1);
                    lss_format_tick(fabs(tv) < 1e-12 * step ? 0.0 : tv, buf, sizeof buf);
                    lss_image_text_size(&im, x0 - 6 - lss_image_text_width_size(buf, LSS_FONT_TICK), (int)py - 5, buf, black, LSS_FONT_TICK);
                }
                {
                    char nb[32];
                    const char *nm = o.names && o.names[j] ? o.names[j] : (snprintf(nb, sizeof nb, "p%d", j), nb);
                    lss_image_text_vertical(&im, 10, y0 + P / 2 + lss_image_text_width_size(nm, LSS_FONT_LABEL) / 2, nm, black, LSS_FONT_LABEL);
                }
            }
        }
    {   /* legend in the empty upper right: the chains, the contour key (as getdist: 68% and 95% regions), the truth */
        int lx = d == 1 ? margin + P + 20 : margin + (d / 2 + 1) * P, ly = top + 14, rh = (int)ceil(12 * LSS_FONT_TICK) + 2;
        static const unsigned char dark[3] = {60, 60, 60};
        for (c = 0; o.labels && c < nchains; c++, ly += rh) {
            unsigned char col[3];
            lss_series_color(c, col);
            lss_image_rect(&im, lx, ly - 1, lx + 28, ly + 2, col);
            if (o.labels[c]) lss_image_text_size(&im, lx + 36, ly - 5, o.labels[c], black, LSS_FONT_TICK);
        }
        if (d > 1) {
            lss_image_rect(&im, lx, ly - 1, lx + 28, ly + 1, dark);
            lss_image_text_size(&im, lx + 36, ly - 5, "68% region (thick)", black, LSS_FONT_TICK);
            ly += rh;
            lss_image_rect(&im, lx, ly, lx + 28, ly + 1, dark);
            lss_image_text_size(&im, lx + 36, ly - 5, "95% region (thin)", black, LSS_FONT_TICK);
            ly += rh;
        }
        if (o.truth) {
            lss_image_rect(&im, lx, ly, lx + 28, ly + 1, red);
            lss_image_text_size(&im, lx + 36, ly - 5, "truth", black, LSS_FONT_TICK);
        }
    }
    st = lss_image_save_png(&im, path);
fail:
    lss_image_free(&im);
    LSS_FREE(lo);
    LSS_FREE(grid);
    return st;
}


/* ---------------------------------------------------------------- small helpers */
LSSDEF double lss_percentile(double *v, int64_t n, double q) {
    int64_t m = 0, i;
    double pos;
    if (!v || n <= 0 || !(q >= 0 && q <= 100)) return NAN;
    for (i = 0; i < n; i++) if (isfinite(v[i])) v[m++] = v[i];
    if (m == 0) return NAN;
    qsort(v, (size_t)m, sizeof(double), lss__cmp_double);
    pos = q / 100.0 * (double)(m - 1);
    i = (int64_t)floor(pos);
    if (i >= m - 1) return v[m - 1];
    return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

LSSDEF void lss_median_range(double *v, int64_t n, double *out) {
    if (!out) return;
    out[0] = lss_percentile(v, n, 50);
    out[1] = lss_percentile(v, n, 16);
    out[2] = lss_percentile(v, n, 84);
}

LSSDEF uint64_t lss_stream_key(uint64_t seed, lss_purpose purpose, uint64_t index, uint32_t sub) {
    lss_rng r;
    uint64_t k;
    lss_rng_for(&r, seed, purpose, index, sub);
    k = (uint64_t)lss_rng_u32(&r) << 32;
    k |= lss_rng_u32(&r);
    return k ? k : 1;
}

LSSDEF int lss_walkers_init(const lss_prior *prior, int nwalkers, const double *center, const double *spread,
                            const double *mid, uint64_t seed, uint64_t index, double *p0) {
    lss_rng r;
    int w, k, t, d;
    if (!prior || !center || !spread || !mid || !p0 || nwalkers < 1 || prior->d < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_walkers_init: NULL argument or %d walkers", nwalkers);
    d = prior->d;
    lss_rng_for(&r, seed, LSS_STREAM_MCMC, index, 1);
    for (w = 0; w < nwalkers; w++) {
        double *q = p0 + (size_t)w * d;
        for (k = 0; k < d; k++) q[k] = center[k] + spread[k] * lss_rng_normal(&r);
        for (t = 0; t < 200 && !lss_prior_contains(prior, q); t++)
            for (k = 0; k < d; k++) q[k] = 0.98 * q[k] + 0.02 * mid[k];
        if (!lss_prior_contains(prior, q))
            return lss_seterr(LSS_ERR_RANGE, "lss_walkers_init: walker %d stays outside the prior (is mid inside it?)", w);
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- DeepLSS summaries */
LSSDEF double lss_s8(double omega_m, double sigma_8) { return sigma_8 * pow(omega_m / LSS_S8_PIVOT, LSS_S8_EXPONENT); }

LSSDEF void lss_deeplss_to_target(const double *th, double *y) {
    int i;
    for (i = 0; i < LSS_DEEPLSS_NPARAM; i++) y[i] = th[i];
    y[1] = lss_s8(th[0], th[1]);
    y[2] = LSS_DEEPLSS_AIA_TARGET * th[2];
}

LSSDEF void lss_deeplss_from_target(const double *y, double *th) {
    int i;
    double om = y[0] > LSS_DEEPLSS_OM_FLOOR ? y[0] : LSS_DEEPLSS_OM_FLOOR;
    for (i = 0; i < LSS_DEEPLSS_NPARAM; i++) th[i] = y[i];
    th[1] = y[1] / pow(om / LSS_S8_PIVOT, LSS_S8_EXPONENT);
    th[2] = y[2] / LSS_DEEPLSS_AIA_TARGET;
}

LSSDEF void lss_sumnet_free(lss_sumnet *n) {
    if (!n) return;
    lss_optim_free(n->optim);
    lss_graph_free(n->g);
    lss_store_free(n->store);
    LSS_FREE(n->xin);
    LSS_FREE(n->yst);
    LSS_FREE(n->xsp);
    LSS_FREE((void *)n->o.use_pair);
    lss_dp_free(n->dp);
    LSS_FREE(n);
}

static int lss__sumnet_uses(const lss_sumnet *n, int q) { return !n->o.use_pair || n->o.use_pair[q]; }

/* The CNN's input channels of one map: the nch scaled channels, then the scaled product channels. dst [nch + nprod][plane]. */
static void lss__sumnet_fill(const lss_sumnet *n, const float *map, float *dst) {
    size_t plane = (size_t)n->o.side * (size_t)n->o.side, p;
    int ch;
    for (ch = 0; ch < n->o.nch; ch++) {
        const float *src = map + (size_t)(n->o.ch0 + ch) * plane;
        float *d = dst + (size_t)ch * plane, sc = n->cscale->data[ch];
        for (p = 0; p < plane; p++) d[p] = src[p] * sc;
    }
    for (ch = 0; ch < n->nprod; ch++) {
        const float *a = map + (size_t)(n->o.ch0 + n->pa[ch]) * plane, *b = map + (size_t)(n->o.ch0 + n->pb[ch]) * plane;
        float *d = dst + (size_t)(n->o.nch + ch) * plane, sc = n->cscale->data[n->o.nch + ch];
        for (p = 0; p < plane; p++) d[p] = a[p] * b[p] * sc;
    }
}

LSSDEF int lss_sumnet_create(const lss_sumnet_opts *o, lss_sumnet **out) {
    lss_sumnet *n;
    int s, q;
    size_t nin;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: NULL out");
    *out = NULL;
    if (!o || o->batch < 1 || (o->kind != LSS_SUMNET_CNN && o->kind != LSS_SUMNET_PSD))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: NULL options, kind %d or batch %d", o ? o->kind : -1, o ? o->batch : 0);
    if (o->kind == LSS_SUMNET_CNN && (o->nch < 1 || o->ch0 < 0 || o->ch0 + o->nch > o->map_ch || o->side < 1))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: CNN channels %d..%d of %d, side %d", o->ch0, o->ch0 + o->nch - 1,
                          o->map_ch, o->side);
    if (o->kind == LSS_SUMNET_CNN && (o->products < 0 || o->products > 3 || ((o->products == 1 || o->products == 2) &&
                                                                              (o->nch % 2 || o->nch > 16)) ||
                                      (o->products == 3 && o->nch > 10)))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: product channels %d need an even number of channels up to 16 (%d)",
                          o->products, o->nch);
    if (o->kind == LSS_SUMNET_PSD && (o->npairs < 1 || o->nell < 1 || o->width < 1))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: PSD input %d x %d or width %d", o->npairs, o->nell, o->width);
    if (o->kind == LSS_SUMNET_CNN && (o->hybrid < 0 || o->hybrid > 1 || (o->hybrid && (o->npairs < 1 || o->nell < 1))))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: hybrid %d needs spectra (%d pairs x %d multipole bins)", o->hybrid,
                          o->npairs, o->nell);
    n = (lss_sumnet *)LSS_MALLOC(sizeof *n);
    if (!n) return lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_create: out of memory");
    memset(n, 0, sizeof *n);
    n->o = *o;
    n->o.use_pair = NULL;
    n->o.optim = NULL;
    if (o->kind == LSS_SUMNET_PSD || o->hybrid) {
        int *up = (int *)LSS_MALLOC(sizeof(int) * (size_t)o->npairs);
        if (!up) { lss_sumnet_free(n); return lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_create: out of memory"); }
        for (q = 0; q < o->npairs; q++) up[q] = o->use_pair ? o->use_pair[q] != 0 : 1;
        n->o.use_pair = up;
        for (q = 0; q < o->npairs; q++) n->nfeat += up[q] ? o->nell : 0;
        if (n->nfeat < 1) { lss_sumnet_free(n); return lss_seterr(LSS_ERR_ARG, "lss_sumnet_create: no spectrum selected"); }
    }
    if ((s = lss_store_create(lss_stream_key(o->seed, LSS_STREAM_NET_INIT, 0, o->sub), &n->store)) ||
        (s = lss_graph_create(&n->g))) {
        lss_sumnet_free(n);
        return s;
    }
    if (o->kind == LSS_SUMNET_CNN) {
        lss_resnet_opts ro;
        int64_t shc[1];
        memset(&ro, 0, sizeof ro);
        for (q = 0; o->products && o->products < 3 && q < o->nch / 2; q++) {
            int b2;
            for (b2 = o->nch / 2; b2 < o->nch; b2++)
                if (o->products == 2 || b2 == q + o->nch / 2) { n->pa[n->nprod] = q; n->pb[n->nprod] = b2; n->nprod++; }
        }
        for (q = 0; o->products == 3 && q < o->nch; q++) {
            int b2;
            for (b2 = q; b2 < o->nch; b2++) { n->pa[n->nprod] = q; n->pb[n->nprod] = b2; n->nprod++; }
        }
        ro.in_ch = o->nch + n->nprod; ro.in_h = o->side; ro.in_w = o->side; ro.nout = LSS_DEEPLSS_NOUT;
        ro.nconv = o->nconv; ro.nres = o->nres; ro.channels = o->channels; ro.kernel = o->kernel;
        ro.pool = o->pool; ro.hidden = o->hidden; ro.nextra = o->hybrid ? n->nfeat : 0;
        if ((s = lss_resnet_init(&n->cnn, n->store, "cnn", &ro))) { lss_sumnet_free(n); return s; }
        if (o->hybrid) {
            int64_t shf[1] = {n->nfeat};
            n->fmu = lss_store_buffer(n->store, "psd.feat_mean", 1, shf, LSS_INIT_ZERO, 0.0f);
            n->fsd = lss_store_buffer(n->store, "psd.feat_std", 1, shf, LSS_INIT_ZERO, 1.0f);
            if (!(n->xsp = (float *)LSS_MALLOC(sizeof(float) * (size_t)o->batch * (size_t)n->nfeat))) {
                lss_sumnet_free(n);
                return lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_create: out of memory");
            }
        }
        shc[0] = o->nch + n->nprod;
        n->cscale = lss_store_buffer(n->store, "cnn.chan_scale", 1, shc, LSS_INIT_ZERO, 1.0f);
        nin = (size_t)(o->nch + n->nprod) * (size_t)o->side * (size_t)o->side;
    } else {
        int sizes[4];
        int64_t sh[1];
        sizes[0] = n->nfeat; sizes[1] = o->width; sizes[2] = o->width; sizes[3] = LSS_DEEPLSS_NOUT;
        if ((s = lss_mlp_init(&n->mlp, n->store, "psd", 3, sizes, LSS_ACT_RELU))) { lss_sumnet_free(n); return s; }
        sh[0] = n->nfeat;
        n->fmu = lss_store_buffer(n->store, "psd.feat_mean", 1, sh, LSS_INIT_ZERO, 0.0f);
        n->fsd = lss_store_buffer(n->store, "psd.feat_std", 1, sh, LSS_INIT_ZERO, 1.0f);
        nin = (size_t)n->nfeat;
    }
    {   /* target standardisation; the output layer at zero: the prior mean with unit precision */
        int64_t sht[1] = {LSS_DEEPLSS_NPARAM};
        lss_tensor *hw = o->kind == LSS_SUMNET_CNN ? n->cnn.dw : n->mlp.w[n->mlp.nlayers - 1];
        lss_tensor *hb = o->kind == LSS_SUMNET_CNN ? n->cnn.db : n->mlp.b[n->mlp.nlayers - 1];
        n->tmu = lss_store_buffer(n->store, "target.mean", 1, sht, LSS_INIT_ZERO, 0.0f);
        n->tsd = lss_store_buffer(n->store, "target.std", 1, sht, LSS_INIT_ZERO, 1.0f);
        if ((s = lss_store_status(n->store))) { lss_sumnet_free(n); return s; }
        memset(hw->data, 0, sizeof(float) * (size_t)hw->n);
        memset(hb->data, 0, sizeof(float) * (size_t)hb->n);
        for (q = 0; q < LSS_DEEPLSS_NPARAM; q++)
            hb->data[LSS_DEEPLSS_NPARAM + q * (q + 1) / 2 + q] = (float)log(expm1(1.0 - LSS_CHOL_DIAG_EPS));
    }
    n->xin = (float *)LSS_MALLOC(sizeof(float) * (size_t)o->batch * nin);
    n->yst = (float *)LSS_MALLOC(sizeof(float) * (size_t)o->batch * LSS_DEEPLSS_NPARAM);
    if (!n->xin || !n->yst) { lss_sumnet_free(n); return lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_create: out of memory"); }
    if (o->optim && (s = lss_optim_create(n->store, o->optim, &n->optim))) { lss_sumnet_free(n); return s; }
    *out = n;
    return LSS_OK;
}

LSSDEF int lss_sumnet_standardise(lss_sumnet *n, const float *maps, const double *spec, int ns) {
    int q, b, f = 0, i, ch;
    if (!n || ns < 1) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_standardise: NULL network or %d examples", ns);
    if (n->o.kind == LSS_SUMNET_CNN) {
        int64_t plane = (int64_t)n->o.side * n->o.side, msz = (int64_t)n->o.map_ch * plane, p;
        if (!maps && !(n->o.hybrid && spec)) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_standardise: NULL maps");
        for (ch = 0; maps && ch < n->o.nch + n->nprod; ch++) {
            double s1 = 0, s2 = 0, v, cnt = (double)ns * (double)plane;
            for (i = 0; i < ns; i++) {
                const float *mp = maps + i * msz + (int64_t)(n->o.ch0 + (ch < n->o.nch ? ch : n->pa[ch - n->o.nch])) * plane;
                const float *mq = maps + i * msz + (int64_t)(n->o.ch0 + (ch < n->o.nch ? ch : n->pb[ch - n->o.nch])) * plane;
                if (ch < n->o.nch)
                    for (p = 0; p < plane; p++) { s1 += mp[p]; s2 += (double)mp[p] * mp[p]; }
                else
                    for (p = 0; p < plane; p++) { double y = (double)mp[p] * mq[p]; s1 += y; s2 += y * y; }
            }
            v = s2 / cnt - (s1 / cnt) * (s1 / cnt);
            n->cscale->data[ch] = (float)(n->o.in_std > 0 && v > 0 ? n->o.in_std / sqrt(v) : 1.0);
        }
        if (!n->o.hybrid || !spec) return LSS_OK;
    }
    if (!spec) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_standardise: NULL spectra");
    for (q = 0; q < n->o.npairs; q++) {
        if (!lss__sumnet_uses(n, q)) continue;
        for (b = 0; b < n->o.nell; b++, f++) {
            double s1 = 0, s2 = 0, m, v;
            int cnt = 0;
            for (i = 0; i < ns; i++) {
                double y = spec[(size_t)i * n->o.npairs * n->o.nell + (size_t)q * n->o.nell + b];
                if (isfinite(y)) { s1 += y; s2 += y * y; cnt++; }
            }
            m = cnt ? s1 / cnt : 0;
            v = cnt ? s2 / cnt - m * m : 1;
            n->fmu->data[f] = (float)m;
            n->fsd->data[f] = (float)(v > 0 ? sqrt(v) : 1.0);
        }
    }
    return LSS_OK;
}

LSSDEF int lss_sumnet_set_targets(lss_sumnet *n, const double *theta, int ns) {
    lss_param_stats st[LSS_DEEPLSS_NPARAM];
    double *y;
    int i, k, s;
    if (!n || !theta || ns < 2) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_set_targets: NULL argument or %d draws (>= 2)", ns);
    if (!(y = (double *)LSS_MALLOC(sizeof(double) * (size_t)ns * LSS_DEEPLSS_NPARAM)))
        return lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_set_targets: out of memory");
    for (i = 0; i < ns; i++) lss_deeplss_to_target(theta + (size_t)i * LSS_DEEPLSS_NPARAM, y + (size_t)i * LSS_DEEPLSS_NPARAM);
    for (i = 0, s = LSS_OK; i < ns * LSS_DEEPLSS_NPARAM && s == LSS_OK; i++)
        if (!isfinite(y[i])) s = lss_seterr(LSS_ERR_ARG, "lss_sumnet_set_targets: draw %d has a non-finite parameter", i / LSS_DEEPLSS_NPARAM);
    if (s == LSS_OK) s = lss_chain_stats(y, ns, LSS_DEEPLSS_NPARAM, st, NULL);
    LSS_FREE(y);
    for (k = 0; k < LSS_DEEPLSS_NPARAM && s == LSS_OK; k++)
        if (!(st[k].std > 0)) s = lss_seterr(LSS_ERR_ARG, "lss_sumnet_set_targets: target %d does not vary over the %d draws", k, ns);
    for (k = 0; k < LSS_DEEPLSS_NPARAM && s == LSS_OK; k++) { n->tmu->data[k] = (float)st[k].mean; n->tsd->data[k] = (float)st[k].std; }
    return s;
}

/* The standardised spectra features of one input into dst [nfeat] (non-finite values as 0). */
static void lss__sumnet_spec(const lss_sumnet *n, const double *spec, float *dst) {
    int q, b, f = 0;
    for (q = 0; q < n->o.npairs; q++) {
        if (!lss__sumnet_uses(n, q)) continue;
        for (b = 0; b < n->o.nell; b++, f++) {
            double v = (spec[q * n->o.nell + b] - n->fmu->data[f]) / n->fsd->data[f];
            dst[f] = isfinite(v) ? (float)v : 0.0f;
        }
    }
}

LSSDEF int lss_sumnet_input(lss_sumnet *n, int i, const float *map, const double *spec) {
    if (!n || i < 0 || i >= n->o.batch) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_input: row %d outside the batch", i);
    if ((n->o.kind != LSS_SUMNET_CNN || n->o.hybrid) && !spec) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_input: NULL spectra");
    if (n->o.kind == LSS_SUMNET_CNN) {
        if (!map) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_input: NULL map");
        lss__sumnet_fill(n, map, n->xin + (size_t)i * (size_t)(n->o.nch + n->nprod) * (size_t)n->o.side * (size_t)n->o.side);
        if (n->o.hybrid) lss__sumnet_spec(n, spec, n->xsp + (size_t)i * n->nfeat);
    } else
        lss__sumnet_spec(n, spec, n->xin + (size_t)i * n->nfeat);
    return LSS_OK;
}

static lss_tensor *lss__sumnet_forward(lss_sumnet *n, lss_tensor *in) {
    if (n->o.kind != LSS_SUMNET_CNN) return lss_mlp_forward(n->g, &n->mlp, in);
    if (n->o.hybrid && in) {
        int64_t sh[2] = {in->shape[0], n->nfeat};
        return lss_resnet_forward_extra(n->g, &n->cnn, in, lss_view(n->g, n->xsp + (size_t)n->r0 * (size_t)n->nfeat, 2, sh));
    }
    return lss_resnet_forward(n->g, &n->cnn, in);
}

/* rows r0 .. r0 + nb - 1 of the input batch */
static lss_tensor *lss__sumnet_view(lss_sumnet *n, int nb) {
    if (n->o.kind == LSS_SUMNET_CNN) {
        int64_t sh[4] = {nb, n->o.nch + n->nprod, n->o.side, n->o.side};
        return lss_view(n->g, n->xin + (size_t)n->r0 * (size_t)(sh[1] * sh[2] * sh[3]), 4, sh);
    } else {
        int64_t sh[2] = {nb, n->nfeat};
        return lss_view(n->g, n->xin + (size_t)n->r0 * (size_t)n->nfeat, 2, sh);
    }
}

LSSDEF int lss_sumnet_set_shards(lss_sumnet *n, int nshard) {
    lss_dp *d = NULL;
    int s;
    if (!n) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_set_shards: NULL network");
    if (nshard < 1 || nshard > n->o.batch)
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_set_shards: %d shards for batches of at most %d", nshard, n->o.batch);
    if (nshard > 1 && (s = lss_dp_create(n->store, nshard, &d)) != LSS_OK) return s;
    lss_dp_free(n->dp);
    n->dp = d;
    return LSS_OK;
}

typedef struct {
    lss_sumnet *n;
    int nb;
} lss__sumnet_sh;
/* lss_dp_fn: the loss of rows of shard s, weighted by their share of the batch, and its gradient */
static int lss__sumnet_shard(void *u, int s, int ns, double *loss) {
    lss__sumnet_sh *a = (lss__sumnet_sh *)u;
    lss_sumnet *n = a->n;
    int64_t lo, hi, sh[2];
    lss_tensor *out, *tg, *l;
    int st;
    lss_dp_shard(a->nb, s, ns, &lo, &hi);
    *loss = 0;
    if (hi == lo) return LSS_OK; /* more shards than rows: this one adds nothing */
    sh[0] = hi - lo, sh[1] = LSS_DEEPLSS_NPARAM;
    n->r0 = (int)lo;
    lss_graph_reset(n->g);
    lss_graph_set_training(n->g, 1);
    out = lss__sumnet_forward(n, lss__sumnet_view(n, (int)(hi - lo)));
    tg = lss_view(n->g, n->yst + (size_t)lo * LSS_DEEPLSS_NPARAM, 2, sh);
    n->r0 = 0;
    l = out && tg ? lss_op_gauss_nll(n->g, out, tg) : NULL;
    l = lss_op_scale(n->g, l, (float)(hi - lo) / (float)a->nb);
    if (!l) return lss_graph_status(n->g) ? lss_graph_status(n->g) : lss_seterr(LSS_ERR_STATE, "lss_sumnet_loss: no loss");
    if ((st = lss_backward(n->g, l)) != LSS_OK) return st;
    *loss = l->data[0];
    return isfinite(*loss) ? LSS_OK : LSS_ERR_NUMERIC;
}

LSSDEF int lss_sumnet_loss(lss_sumnet *n, int nb, const float *y, int train, double *loss) {
    lss_tensor *out, *tg, *l;
    int64_t sh[2] = {nb, LSS_DEEPLSS_NPARAM};
    int s, i;
    if (!n || !y || !loss || nb < 1 || nb > n->o.batch) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_loss: bad arguments (batch %d)", nb);
    if (train && !n->optim) return lss_seterr(LSS_ERR_STATE, "lss_sumnet_loss: training a network created without an optimizer");
    for (i = 0; i < nb * LSS_DEEPLSS_NPARAM; i++)
        n->yst[i] = (y[i] - n->tmu->data[i % LSS_DEEPLSS_NPARAM]) / n->tsd->data[i % LSS_DEEPLSS_NPARAM];
    if (train && n->dp) { /* data-parallel: the shards' gradients added in order (lss_dp_grad) */
        lss__sumnet_sh a;
        a.n = n, a.nb = nb;
        if ((s = lss_dp_grad(n->dp, lss__sumnet_shard, &a, loss)) != LSS_OK) return s;
        return lss_optim_step(n->optim);
    }
    lss_graph_reset(n->g);
    lss_graph_set_training(n->g, train);
    out = lss__sumnet_forward(n, lss__sumnet_view(n, nb));
    tg = lss_view(n->g, n->yst, 2, sh);
    l = out && tg ? lss_op_gauss_nll(n->g, out, tg) : NULL;
    if (!l) return lss_graph_status(n->g) ? lss_graph_status(n->g) : lss_seterr(LSS_ERR_STATE, "lss_sumnet_loss: no loss");
    *loss = l->data[0];
    if (!train) return LSS_OK;
    lss_store_zero_grad(n->store);
    if ((s = lss_backward(n->g, l))) return s;
    return lss_optim_step(n->optim);
}

LSSDEF int lss_sumnet_predict(lss_sumnet *n, int nb, double *theta) {
    lss_tensor *out;
    int i, k;
    if (!n || !theta || nb < 1 || nb > n->o.batch) return lss_seterr(LSS_ERR_ARG, "lss_sumnet_predict: bad arguments (batch %d)", nb);
    lss_graph_reset(n->g);
    lss_graph_set_training(n->g, 0);
    out = lss__sumnet_forward(n, lss__sumnet_view(n, nb));
    if (!out) return lss_graph_status(n->g) ? lss_graph_status(n->g) : lss_seterr(LSS_ERR_STATE, "lss_sumnet_predict: no output");
    for (i = 0; i < nb; i++) {
        double y[LSS_DEEPLSS_NPARAM];
        for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) y[k] = n->tmu->data[k] + n->tsd->data[k] * out->data[(size_t)i * LSS_DEEPLSS_NOUT + k];
        lss_deeplss_from_target(y, theta + (size_t)i * LSS_DEEPLSS_NPARAM);
    }
    return LSS_OK;
}

LSSDEF int lss_sumnet_sensitivity(lss_sumnet *n, const float *map, float *sens) {
    lss_store *ist = NULL;
    lss_tensor *in, *out;
    int64_t plane, sh[4];
    float dy[LSS_DEEPLSS_NOUT];
    int s = LSS_OK, which, k;
    if (!n || !map || !sens || n->o.kind != LSS_SUMNET_CNN)
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_sensitivity: needs a CNN, a map and an output");
    if (n->o.hybrid)
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_sensitivity: a hybrid CNN's spectra path has no map gradient here; "
                          "sensitivity maps need a plain CNN");
    plane = (int64_t)n->o.side * n->o.side;
    sh[0] = 1; sh[1] = n->o.nch + n->nprod; sh[2] = n->o.side; sh[3] = n->o.side;
    if ((s = lss_store_create(1, &ist))) return s;
    in = lss_store_add(ist, "input", 4, sh, LSS_INIT_ZERO);
    if (!in) { s = lss_store_status(ist); goto out; }
    for (which = 0; which < 2; which++) {
        double om, s8v;
        lss__sumnet_fill(n, map, in->data);
        lss_graph_reset(n->g);
        lss_graph_set_training(n->g, 0);
        lss_graph_set_record(n->g, 1);
        out = lss_resnet_forward(n->g, &n->cnn, in);
        if (!out) { s = lss_graph_status(n->g) ? lss_graph_status(n->g) : LSS_ERR_STATE; goto out; }
        for (k = 0; k < LSS_DEEPLSS_NOUT; k++) dy[k] = 0;
        /* targets y = mean + std * output */
        om = n->tmu->data[0] + n->tsd->data[0] * out->data[0];
        om = om > LSS_DEEPLSS_OM_FLOOR ? om : LSS_DEEPLSS_OM_FLOOR;
        s8v = n->tmu->data[1] + n->tsd->data[1] * out->data[1];
        if (which == 0) dy[2] = (float)(n->tsd->data[2] / LSS_DEEPLSS_AIA_TARGET);   /* A_IA = y_2 / 0.1 */
        else {                                                                   /* sigma_8 = S8 (Omega_m / pivot)^-e */
            dy[1] = (float)(n->tsd->data[1] * pow(om / LSS_S8_PIVOT, -LSS_S8_EXPONENT));
            dy[0] = (float)(n->tsd->data[0] * -LSS_S8_EXPONENT * s8v * pow(om / LSS_S8_PIVOT, -LSS_S8_EXPONENT - 1) / LSS_S8_PIVOT);
        }
        lss_store_zero_grad(ist);
        lss_store_zero_grad(n->store);
        if ((s = lss_backward_seed(n->g, out, dy))) goto out;
        for (k = 0; k < n->o.nch; k++) {   /* d/dm = d/dx * dx/dm with x = m * scale */
            int64_t q;
            for (q = 0; q < plane; q++)
                sens[((size_t)which * n->o.nch + k) * plane + q] = in->grad[k * plane + q] * n->cscale->data[k];
        }
        for (k = 0; k < n->nprod; k++) {   /* x = m_a m_b scale: d/dm_a += d/dx m_b scale, d/dm_b += d/dx m_a scale */
            const float *ma = map + (size_t)(n->o.ch0 + n->pa[k]) * plane, *mb = map + (size_t)(n->o.ch0 + n->pb[k]) * plane;
            const float *gk = in->grad + (size_t)(n->o.nch + k) * plane;
            float sc = n->cscale->data[n->o.nch + k], *sa = sens + ((size_t)which * n->o.nch + n->pa[k]) * plane;
            float *sb = sens + ((size_t)which * n->o.nch + n->pb[k]) * plane;
            int64_t q;
            for (q = 0; q < plane; q++) { sa[q] += gk[q] * mb[q] * sc; sb[q] += gk[q] * ma[q] * sc; }
        }
    }
out:
    lss_store_free(ist);
    return s;
}

/* ---------------------------------------------------------------- Fisher forecasts from simulations */
#define LSS__FISHER_TILE 32       /* fiducial rows per Gram update */
#define LSS__FISHER_COLS 128      /* right-hand sides per whitening pass (about) */
#define LSS__FISHER_W 16          /* columns per register block of the whitening */
#define LSS__FISHER_PIVOT 1e-12   /* smallest Cholesky pivot of a unit-diagonal matrix */

typedef struct {
    const double *fid, *plus, *minus, *step, *P;   /* P [p]: prior precisions (0: none) */
    int64_t nfid, nder;
    int p, d, nb;                                  /* nb blocks (1 without a jackknife) */
    const double *mu, *S2, *s1b, *s1;              /* fiducial mean [d], centred sums x x^T [d][d] (lower), x [nb][d], [d] */
    const double *dsb, *ds;                        /* sums of delta per block [nb][p][d] and in all [p][d] */
} lss__fisher_ctx;

static int64_t lss__fisher_lo(int64_t n, int nb, int b) { return n * b / nb; }

/* S[j][k] += sum_{i0 <= i < i1} (x_i - mu)_j (x_i - mu)_k for j0 <= j < j1, k <= j, LSS__FISHER_TILE rows at a time
   (a short last tile padded with zero rows) and LSS__FISHER_W entries of a row of S in registers; t: [TILE][d]
   workspace. The order of the sums depends on i0, i1 only. */
static void lss__fisher_gram(const double *x, int d, int64_t i0, int64_t i1, const double *mu, int j0, int j1, double *S,
                             double *t) {
    double a[LSS__FISHER_TILE], acc[LSS__FISHER_W];
    int64_t i;
    int j, k, r, c, k0;
    for (i = i0; i < i1; i += LSS__FISHER_TILE) {
        int nr = i1 - i < LSS__FISHER_TILE ? (int)(i1 - i) : LSS__FISHER_TILE;
        for (r = 0; r < LSS__FISHER_TILE; r++)
            for (k = 0; k < j1; k++) t[(size_t)r * d + k] = r < nr ? x[(size_t)(i + r) * d + k] - mu[k] : 0.0;
        for (j = j0; j < j1; j++) {
            double *Sj = S + (size_t)j * d;
            for (r = 0; r < LSS__FISHER_TILE; r++) a[r] = t[(size_t)r * d + j];
            for (k0 = 0; k0 + LSS__FISHER_W <= j + 1; k0 += LSS__FISHER_W) {
                for (c = 0; c < LSS__FISHER_W; c++) acc[c] = 0;
                for (r = 0; r < LSS__FISHER_TILE; r++) {
                    const double *tr = t + (size_t)r * d + k0;
                    double ar = a[r];
                    for (c = 0; c < LSS__FISHER_W; c++) acc[c] += ar * tr[c];
                }
                for (c = 0; c < LSS__FISHER_W; c++) Sj[k0 + c] += acc[c];
            }
            for (k = k0; k <= j; k++) {
                double v = 0;
                for (r = 0; r < LSS__FISHER_TILE; r++) v += a[r] * t[(size_t)r * d + k];
                Sj[k] += v;
            }
        }
    }
}

/* sum_k a_k b_k in four interleaved partial sums (a fixed order) */
static double lss__fisher_dot(const double *a, const double *b, int n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += a[k] * b[k]; s1 += a[k + 1] * b[k + 1]; s2 += a[k + 2] * b[k + 2]; s3 += a[k + 3] * b[k + 3];
    }
    for (; k < n; k++) s0 += a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

/* In-place Cholesky A = L L^T of the lower triangle of the n x n row-major A with unit diagonal (pivots below
   LSS__FISHER_PIVOT fail). Returns -1, or the row that failed. */
static int lss__fisher_chol(double *A, int n) {
    int i, j;
    for (i = 0; i < n; i++) {
        double *Li = A + (size_t)i * n;
        for (j = 0; j <= i; j++) {
            const double *Lj = A + (size_t)j * n;
            double s = Li[j] - lss__fisher_dot(Li, Lj, j);
            if (j < i) Li[j] = s / Lj[j];
            else {
                if (!(s > LSS__FISHER_PIVOT)) return i;
                Li[i] = sqrt(s);
            }
        }
    }
    return -1;
}

/* B [n][m] <- L^-1 B (forward substitution on m right-hand sides stored as columns; m a multiple of
   LSS__FISHER_W: one panel of LSS__FISHER_W columns at a time, the sums of a row held in registers). */
static void lss__fisher_fwd(const double *L, int n, double *B, int m) {
    double acc[LSS__FISHER_W];
    int i, j, c, c0;
    for (c0 = 0; c0 < m; c0 += LSS__FISHER_W)
        for (i = 0; i < n; i++) {
            const double *Li = L + (size_t)i * n;
            double inv = 1.0 / Li[i], *bi = B + (size_t)i * m + c0;
            for (c = 0; c < LSS__FISHER_W; c++) acc[c] = bi[c];
            for (j = 0; j < i; j++) {
                const double *bj = B + (size_t)j * m + c0;
                double l = Li[j];
                for (c = 0; c < LSS__FISHER_W; c++) acc[c] -= l * bj[c];
            }
            for (c = 0; c < LSS__FISHER_W; c++) bi[c] = acc[c] * inv;
        }
}

/* inv = A^-1 of the symmetric n x n A (scaled to unit diagonal, Cholesky); w: n * n + n. Returns -1, or the row
   at which A is not positive definite. */
static int lss__fisher_spd_inv(const double *A, int n, double *inv, double *w) {
    double *L = w, *s = w + (size_t)n * n;
    int i, j, k, f;
    for (i = 0; i < n; i++) {
        if (!(A[(size_t)i * n + i] > 0) || !isfinite(A[(size_t)i * n + i])) return i;
        s[i] = 1.0 / sqrt(A[(size_t)i * n + i]);
    }
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) L[(size_t)i * n + j] = j <= i ? A[(size_t)i * n + j] * s[i] * s[j] : 0.0;
    if ((f = lss__fisher_chol(L, n)) >= 0) return f;
    for (j = 0; j < n; j++) {            /* L^-1 in the upper triangle of inv, column j: L x = e_j */
        for (i = 0; i < n; i++) {
            double v = i == j ? 1.0 : 0.0;
            if (i < j) { inv[(size_t)i * n + j] = 0; continue; }
            for (k = j; k < i; k++) v -= L[(size_t)i * n + k] * inv[(size_t)k * n + j];
            inv[(size_t)i * n + j] = v / L[(size_t)i * n + i];
        }
    }
    for (i = 0; i < n; i++)              /* (L^-T L^-1)_ij = sum_k Linv_ki Linv_kj, k >= max(i, j); lower part */
        for (j = 0; j <= i; j++) {
            double v = 0;
            for (k = i; k < n; k++) v += inv[(size_t)k * n + i] * inv[(size_t)k * n + j];
            L[(size_t)i * n + j] = v;
        }
    for (i = 0; i < n; i++)
        for (j = 0; j <= i; j++) inv[(size_t)i * n + j] = inv[(size_t)j * n + i] = L[(size_t)i * n + j] * s[i] * s[j];
    return -1;
}

/* One replicate: rb = -1 all simulations, else without block rb. F, Fraw, cov [p][p]; dmu [p][d] or NULL.
   *cf: 0, k + 1 (covariance not positive definite at summary k) or -(k + 1) (summary k constant); *ff: 0, 1
   (F + P not positive definite, F_raw + P is) or 2 + k (F_raw + P not, at parameter k); returns LSS_ERR_NOMEM or
   LSS_OK. */
static int lss__fisher_rep(const lss__fisher_ctx *c, int rb, double *F, double *Fraw, double *dmu, double *cov, int *cf,
                           int *ff, double *hout) {
    const int p = c->p, d = c->d;
    int64_t n = c->nfid, nd = c->nder, f0 = 0, f1 = 0, g0 = 0, g1 = 0, i;
    int ni = LSS__FISHER_COLS / p > 0 ? LSS__FISHER_COLS / p : 1, j, k, a, b, m;
    size_t bufn = (size_t)d * (size_t)((ni * p + LSS__FISHER_W - 1) / LSS__FISHER_W * LSS__FISHER_W);
    double *C, *sc, *s1, *dm, *buf, *t, *Q, *W, h, corr;
    *cf = *ff = 0;
    C = (double *)LSS_MALLOC(sizeof(double) * ((size_t)d * d + 2 * (size_t)d + (size_t)p * d + bufn +
                                                LSS__FISHER_TILE * (size_t)d + (size_t)p * p * 3 + (size_t)p));
    if (!C) return LSS_ERR_NOMEM;
    sc = C + (size_t)d * d; s1 = sc + d; dm = s1 + d; buf = dm + (size_t)p * d; t = buf + bufn;
    Q = t + LSS__FISHER_TILE * (size_t)d; W = Q + (size_t)p * p;
    if (rb >= 0) {
        f0 = lss__fisher_lo(c->nfid, c->nb, rb); f1 = lss__fisher_lo(c->nfid, c->nb, rb + 1);
        g0 = lss__fisher_lo(c->nder, c->nb, rb); g1 = lss__fisher_lo(c->nder, c->nb, rb + 1);
        n -= f1 - f0; nd -= g1 - g0;
    }
    /* covariance of the kept fiducial rows: total sums minus the block's */
    for (k = 0; k < d; k++) s1[k] = c->s1[k] - (rb >= 0 ? c->s1b[(size_t)rb * d + k] : 0.0);
    if (rb >= 0) {
        for (j = 0; j < d; j++) memset(C + (size_t)j * d, 0, sizeof(double) * (size_t)(j + 1));
        lss__fisher_gram(c->fid, d, f0, f1, c->mu, 0, d, C, t);
        for (j = 0; j < d; j++)
            for (k = 0; k <= j; k++) C[(size_t)j * d + k] = c->S2[(size_t)j * d + k] - C[(size_t)j * d + k];
    } else
        for (j = 0; j < d; j++) memcpy(C + (size_t)j * d, c->S2 + (size_t)j * d, sizeof(double) * (size_t)(j + 1));
    for (j = 0; j < d; j++)
        for (k = 0; k <= j; k++) C[(size_t)j * d + k] = (C[(size_t)j * d + k] - s1[j] * s1[k] / (double)n) / (double)(n - 1);
    for (k = 0; k < d; k++) {
        double v = C[(size_t)k * d + k];
        if (!(v > 0) || !isfinite(v)) { *cf = -(k + 1); LSS_FREE(C); return LSS_OK; }
        sc[k] = 1.0 / sqrt(v);
    }
    for (j = 0; j < d; j++)
        for (k = 0; k <= j; k++) C[(size_t)j * d + k] *= sc[j] * sc[k];
    if ((k = lss__fisher_chol(C, d)) >= 0) { *cf = k + 1; LSS_FREE(C); return LSS_OK; }
    h = (double)(n - d - 2) / (double)(n - 1);
    if (hout) *hout = h;
    /* mean derivatives, whitened: w_a = L^-1 D^-1/2 dmu_a, F_raw = h w_a . w_b */
    m = (p + LSS__FISHER_W - 1) / LSS__FISHER_W * LSS__FISHER_W;
    memset(buf, 0, sizeof(double) * (size_t)d * m);
    for (a = 0; a < p; a++)
        for (k = 0; k < d; k++) {
            size_t q = (size_t)a * d + k;
            dm[q] = (c->ds[q] - (rb >= 0 ? c->dsb[(size_t)rb * p * d + q] : 0.0)) / (double)nd;
            buf[(size_t)k * m + a] = dm[q] * sc[k];
        }
    if (dmu) memcpy(dmu, dm, sizeof(double) * (size_t)p * d);
    lss__fisher_fwd(C, d, buf, m);
    for (a = 0; a < p; a++)
        for (b = 0; b <= a; b++) {
            double v = 0;
            for (k = 0; k < d; k++) v += buf[(size_t)k * m + a] * buf[(size_t)k * m + b];
            Fraw[a * p + b] = Fraw[b * p + a] = h * v;
        }
    /* derivative-noise bias tr(Psi S_ab) / nder from the whitened residuals, ni realisations per pass */
    memset(Q, 0, sizeof(double) * (size_t)p * p);
    if (nd >= 2) {
        int64_t i0 = 0;
        while (i0 < c->nder) {
            int nc = 0;
            int64_t idx[LSS__FISHER_COLS];
            for (i = i0; i < c->nder && nc < ni; i++)
                if (rb < 0 || i < g0 || i >= g1) idx[nc++] = i;
            i0 = i;
            if (nc == 0) continue;
            m = (nc * p + LSS__FISHER_W - 1) / LSS__FISHER_W * LSS__FISHER_W;   /* columns a nc + j, zero padded */
            if (m > nc * p)
                for (k = 0; k < d; k++) memset(buf + (size_t)k * m + nc * p, 0, sizeof(double) * (size_t)(m - nc * p));
            for (a = 0; a < p; a++) {
                double inv2h = 0.5 / c->step[a];
                for (j = 0; j < nc; j++) {
                    size_t row = ((size_t)a * (size_t)c->nder + (size_t)idx[j]) * (size_t)d;
                    const double *xp = c->plus + row, *xm = c->minus + row;
                    for (k = 0; k < d; k++)
                        buf[(size_t)k * m + a * nc + j] = ((xp[k] - xm[k]) * inv2h - dm[(size_t)a * d + k]) * sc[k];
                }
            }
            lss__fisher_fwd(C, d, buf, m);
            for (a = 0; a < p; a++)
                for (b = 0; b <= a; b++) {
                    double v = 0;
                    for (k = 0; k < d; k++) {
                        const double *za = buf + (size_t)k * m + a * nc, *zb = buf + (size_t)k * m + b * nc;
                        for (j = 0; j < nc; j++) v += za[j] * zb[j];
                    }
                    Q[a * p + b] += v;
                }
        }
    }
    corr = nd >= 2 ? h / ((double)(nd - 1) * (double)nd) : 0.0;
    for (a = 0; a < p; a++)
        for (b = 0; b <= a; b++) F[a * p + b] = F[b * p + a] = Fraw[a * p + b] - corr * Q[a * p + b];
    /* forecast covariance (F + P)^-1 */
    for (a = 0; a < p; a++)
        for (b = 0; b < p; b++) Q[a * p + b] = F[a * p + b] + (a == b ? c->P[a] : 0.0);
    if (lss__fisher_spd_inv(Q, p, cov, W) >= 0) {
        for (a = 0; a < p; a++)
            for (b = 0; b < p; b++) Q[a * p + b] = Fraw[a * p + b] + (a == b ? c->P[a] : 0.0);
        k = lss__fisher_spd_inv(Q, p, cov, W);
        *ff = k < 0 ? 1 : 2 + k;
        for (a = 0; a < p * p; a++) cov[a] = NAN;
    }
    LSS_FREE(C);
    return LSS_OK;
}

static double lss__fisher_fom2(const double *cov, int p, int i, int j) {
    double det = cov[i * p + i] * cov[j * p + j] - cov[i * p + j] * cov[j * p + i];
    return det > 0 ? 1.0 / sqrt(det) : NAN;
}

/* sqrt((B - 1)/B sum_b (x_b - mean)^2); NaN if any x_b is not finite. */
static double lss__fisher_jk(const double *x, int nb) {
    double mean = 0, v = 0;
    int b;
    if (nb < 2) return NAN;
    for (b = 0; b < nb; b++) {
        if (!isfinite(x[b])) return NAN;
        mean += x[b];
    }
    mean /= nb;
    for (b = 0; b < nb; b++) v += (x[b] - mean) * (x[b] - mean);
    return sqrt((double)(nb - 1) / nb * v);
}

LSSDEF void lss_fisher_free(lss_fisher *f) {
    if (!f) return;
    LSS_FREE(f->F); LSS_FREE(f->F_raw); LSS_FREE(f->cov); LSS_FREE(f->sigma); LSS_FREE(f->sigma_err);
    LSS_FREE(f->dmu); LSS_FREE(f->jcov);
    memset(f, 0, sizeof *f);
}

LSSDEF int lss_fisher_from_table(const double *X, int64_t ld, const int *cols, int ncol, int64_t nfid, int64_t nder, int p,
                                 const double *step, const double *prior_sigma, int nblock, lss_fisher *out) {
    int64_t n, r;
    double *Y;
    int k, s;
    if (out) memset(out, 0, sizeof *out);
    if (!X || !cols || ncol < 1 || ld < 1 || nfid < 0 || nder < 0 || p < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_fisher_from_table: NULL argument or bad sizes (%d columns of %lld)", ncol, (long long)ld);
    for (k = 0; k < ncol; k++)
        if (cols[k] < 0 || cols[k] >= ld) return lss_seterr(LSS_ERR_ARG, "lss_fisher_from_table: column %d outside 0..%lld", cols[k], (long long)ld - 1);
    n = nfid + 2 * (int64_t)p * nder;
    if (!(Y = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * (size_t)ncol)))
        return lss_seterr(LSS_ERR_NOMEM, "lss_fisher_from_table: out of memory (%lld rows x %d columns)", (long long)n, ncol);
    for (r = 0; r < n; r++)
        for (k = 0; k < ncol; k++) Y[(size_t)r * ncol + k] = X[(size_t)r * (size_t)ld + (size_t)cols[k]];
    s = lss_fisher_from_sims(Y, nfid, Y + (size_t)nfid * ncol, Y + ((size_t)nfid + (size_t)p * nder) * ncol, nder, p, ncol, step,
                             prior_sigma, nblock, out);
    LSS_FREE(Y);
    return s;
}

LSSDEF int lss_fisher_from_sims(const double *fid, int64_t nfid, const double *plus, const double *minus, int64_t nder,
                                int p, int d, const double *step, const double *prior_sigma, int nblock, lss_fisher *out) {
    const char *fn = "lss_fisher_from_sims";
    lss__fisher_ctx c;
    double *mu = NULL, *S2 = NULL, *s1b = NULL, *s1 = NULL, *dsb = NULL, *ds = NULL, *P = NULL, *Fr = NULL, *x = NULL;
    int *cf = NULL, *ff = NULL, *st = NULL;
    int64_t i;
    int a, j, k, b, nb, jk, nrep, nchunk, par, gram_nomem = 0, s = LSS_OK;
    size_t q;
    if (out) memset(out, 0, sizeof *out);
    if (!fid || !plus || !minus || !step || !out)
        return lss_seterr(LSS_ERR_ARG, "%s: NULL %s", fn,
                          !fid ? "fid" : !plus ? "plus" : !minus ? "minus" : !step ? "step" : "out");
    if (p < 1 || d < 1 || nder < 1)
        return lss_seterr(LSS_ERR_ARG, "%s: need p >= 1 parameters, d >= 1 summaries and nder >= 1 derivative simulations "
                          "(p = %d, d = %d, nder = %lld)", fn, p, d, (long long)nder);
    if (nfid <= (int64_t)d + 2)
        return lss_seterr(LSS_ERR_ARG, "%s: %lld fiducial simulations for d = %d summaries: the inverse covariance needs "
                          "nfid > d + 2, at least %lld (and many more for a precise Fisher matrix)", fn, (long long)nfid, d,
                          (long long)d + 3);
    for (a = 0; a < p; a++)
        if (!(step[a] > 0) || !isfinite(step[a]))
            return lss_seterr(LSS_ERR_ARG, "%s: step[%d] = %g: steps must be > 0 and finite", fn, a, step[a]);
    if (prior_sigma)
        for (a = 0; a < p; a++)
            if (isnan(prior_sigma[a])) return lss_seterr(LSS_ERR_ARG, "%s: prior_sigma[%d] is NaN", fn, a);
    if (nblock == 0) nblock = nder < 20 ? (int)nder : 20;
    jk = nblock > 0;
    if (jk) {
        int64_t big = (nfid + nblock - 1) / nblock;
        if (nblock < 2 || nblock > nder)
            return lss_seterr(LSS_ERR_ARG, "%s: %d jackknife blocks for %lld derivative simulations: need 2 .. nder blocks "
                              "(nblock < 0: no jackknife)", fn, nblock, (long long)nder);
        if (nfid - big <= (int64_t)d + 2)
            return lss_seterr(LSS_ERR_ARG, "%s: a jackknife replicate keeps %lld of %lld fiducial simulations, not more than "
                              "d + 2 = %d: use fewer blocks than %d, more simulations, or nblock < 0 (no jackknife)", fn,
                              (long long)(nfid - big), (long long)nfid, d + 2, nblock);
    }
    nb = jk ? nblock : 1;
    for (i = 0; i < nfid; i++)
        for (k = 0; k < d; k++)
            if (!isfinite(fid[(size_t)i * d + k]))
                return lss_seterr(LSS_ERR_ARG, "%s: fid row %lld, summary %d is not finite (%g)", fn, (long long)i, k,
                                  fid[(size_t)i * d + k]);
    for (a = 0; a < p; a++)
        for (i = 0; i < nder; i++)
            for (k = 0; k < d; k++) {
                q = ((size_t)a * (size_t)nder + (size_t)i) * (size_t)d + (size_t)k;
                if (!isfinite(plus[q]) || !isfinite(minus[q]))
                    return lss_seterr(LSS_ERR_ARG, "%s: %s row %lld of parameter %d, summary %d is not finite (%g)", fn,
                                      !isfinite(plus[q]) ? "plus" : "minus", (long long)i, a, k,
                                      !isfinite(plus[q]) ? plus[q] : minus[q]);
            }
    nrep = 1 + (jk ? nb : 0);
    mu = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    S2 = (double *)LSS_MALLOC(sizeof(double) * (size_t)d * d);
    s1b = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb * d);
    s1 = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    dsb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb * p * d);
    ds = (double *)LSS_MALLOC(sizeof(double) * (size_t)p * d);
    P = (double *)LSS_MALLOC(sizeof(double) * (size_t)p);
    Fr = (double *)LSS_MALLOC(sizeof(double) * (size_t)nrep * p * p * 2);
    st = (int *)LSS_MALLOC(sizeof(int) * (size_t)nrep * 3);
    out->F = (double *)LSS_MALLOC(sizeof(double) * (size_t)p * p);
    out->F_raw = (double *)LSS_MALLOC(sizeof(double) * (size_t)p * p);
    out->cov = (double *)LSS_MALLOC(sizeof(double) * (size_t)p * p);
    out->sigma = (double *)LSS_MALLOC(sizeof(double) * (size_t)p);
    out->sigma_err = (double *)LSS_MALLOC(sizeof(double) * (size_t)p);
    out->dmu = (double *)LSS_MALLOC(sizeof(double) * (size_t)p * d);
    if (jk) out->jcov = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb * p * p);
    x = (double *)LSS_MALLOC(sizeof(double) * (size_t)(nrep > p ? nrep : p));
    if (!mu || !S2 || !s1b || !s1 || !dsb || !ds || !P || !Fr || !st || !out->F || !out->F_raw || !out->cov || !out->sigma ||
        !out->sigma_err || !out->dmu || (jk && !out->jcov) || !x) {
        s = lss_seterr(LSS_ERR_NOMEM, "%s: out of memory (d = %d)", fn, d);
        goto done;
    }
    cf = st; ff = st + nrep;
    for (a = 0; a < p; a++) P[a] = prior_sigma && prior_sigma[a] > 0 && isfinite(prior_sigma[a]) ?
                                   1.0 / (prior_sigma[a] * prior_sigma[a]) : 0.0;
    /* fiducial mean, block sums of the centred rows, and the centred Gram matrix (lower triangle) */
    for (k = 0; k < d; k++) mu[k] = 0;
    for (i = 0; i < nfid; i++)
        for (k = 0; k < d; k++) mu[k] += fid[(size_t)i * d + k];
    for (k = 0; k < d; k++) { mu[k] /= (double)nfid; s1[k] = 0; }
    for (b = 0; b < nb; b++) {
        double *sb = s1b + (size_t)b * d;
        for (k = 0; k < d; k++) sb[k] = 0;
        for (i = lss__fisher_lo(nfid, nb, b); i < lss__fisher_lo(nfid, nb, b + 1); i++)
            for (k = 0; k < d; k++) sb[k] += fid[(size_t)i * d + k] - mu[k];
        for (k = 0; k < d; k++) s1[k] += sb[k];
    }
    /* threads only for work worth their start (about 1e7 multiply-adds); the results do not depend on them */
    par = (double)nfid * d * d + (double)nrep * (double)nder * p * (double)d * d > 1e7;
    (void)par;
    memset(S2, 0, sizeof(double) * (size_t)d * d);
    nchunk = 4;                 /* row ranges of about equal area, a few per thread (each reads every row) */
#if defined(_OPENMP) && !defined(LSS_NO_OPENMP)
    nchunk = 4 * omp_get_max_threads();
#endif
    if (nchunk > d) nchunk = d;
LSS__IOMP(omp parallel for schedule(dynamic, 1) if(par))
    for (j = 0; j < nchunk; j++) {
        int j0 = (int)(d * sqrt((double)j / nchunk)), j1 = j + 1 == nchunk ? d : (int)(d * sqrt((double)(j + 1) / nchunk));
        double *t;
        if (j1 <= j0) continue;
        t = (double *)LSS_MALLOC(sizeof(double) * LSS__FISHER_TILE * (size_t)d);
        if (!t) { gram_nomem = 1; continue; }
        lss__fisher_gram(fid, d, 0, nfid, mu, j0, j1, S2, t);
        LSS_FREE(t);
    }
    /* block sums of the derivatives */
    memset(dsb, 0, sizeof(double) * (size_t)nb * p * d);
    memset(ds, 0, sizeof(double) * (size_t)p * d);
    for (b = 0; b < nb; b++)
        for (a = 0; a < p; a++) {
            double *sb = dsb + ((size_t)b * p + a) * d, inv2h = 0.5 / step[a];
            for (i = lss__fisher_lo(nder, nb, b); i < lss__fisher_lo(nder, nb, b + 1); i++) {
                q = ((size_t)a * (size_t)nder + (size_t)i) * (size_t)d;
                for (k = 0; k < d; k++) sb[k] += (plus[q + k] - minus[q + k]) * inv2h;
            }
            for (k = 0; k < d; k++) ds[(size_t)a * d + k] += sb[k];
        }
    c.fid = fid; c.plus = plus; c.minus = minus; c.step = step; c.P = P;
    c.nfid = nfid; c.nder = nder; c.p = p; c.d = d; c.nb = nb;
    c.mu = mu; c.S2 = S2; c.s1b = s1b; c.s1 = s1; c.dsb = dsb; c.ds = ds;
    /* replicate 0: every simulation; replicate 1 + b: without block b */
    if (gram_nomem) { s = lss_seterr(LSS_ERR_NOMEM, "%s: out of memory (d = %d)", fn, d); goto done; }
    for (j = 0; j < nrep; j++) st[2 * nrep + j] = 0;
LSS__IOMP(omp parallel for schedule(dynamic, 1) if(par))
    for (j = 0; j < nrep; j++) {
        double *Fj = Fr + (size_t)j * p * p * 2;
        if (lss__fisher_rep(&c, j - 1, Fj, Fj + (size_t)p * p, j ? NULL : out->dmu,
                            j ? out->jcov + (size_t)(j - 1) * p * p : out->cov, &cf[j], &ff[j], j ? NULL : &out->hartlap))
            st[2 * nrep + j] = 1;
    }
    for (j = 0; j < nrep; j++)
        if (st[2 * nrep + j]) { s = lss_seterr(LSS_ERR_NOMEM, "%s: out of memory (d = %d)", fn, d); goto done; }
    for (j = 0; j < nrep; j++)
        if (cf[j]) {
            char where[96] = "";
            int kk = cf[j] > 0 ? cf[j] - 1 : -cf[j] - 1;
            if (j) snprintf(where, sizeof where, " in the jackknife replicate without block %d of %d", j - 1, nb);
            if (cf[j] < 0)
                s = lss_seterr(LSS_ERR_NUMERIC, "%s: the covariance of the d = %d summaries is singular%s: summary %d has zero "
                               "variance over the fiducial simulations", fn, d, where, kk);
            else
                s = lss_seterr(LSS_ERR_NUMERIC, "%s: the covariance of the d = %d summaries is not positive definite%s: "
                               "summary %d is (nearly) a linear combination of summaries 0..%d (conditional variance below "
                               "%g of its variance); drop it", fn, d, where, kk, kk - 1, LSS__FISHER_PIVOT);
            goto done;
        }
    if (ff[0] == 1) {
        s = lss_seterr(LSS_ERR_NUMERIC, "%s: Fisher matrix not positive definite: more derivative simulations needed "
                       "(nder = %lld; F_raw + prior is positive definite, the derivative-noise correction removed too much)",
                       fn, (long long)nder);
        goto done;
    }
    if (ff[0] >= 2) {
        s = lss_seterr(LSS_ERR_NUMERIC, "%s: Fisher matrix (plus prior) not positive definite even without the "
                       "derivative-noise correction, at parameter %d: the summaries (and the prior) do not constrain "
                       "every parameter", fn, ff[0] - 2);
        goto done;
    }
    out->p = p; out->d = d; out->nfid = nfid; out->nder = nder; out->nblock = jk ? nb : 0;
    memcpy(out->F, Fr, sizeof(double) * (size_t)p * p);
    memcpy(out->F_raw, Fr + (size_t)p * p, sizeof(double) * (size_t)p * p);
    for (a = 0; a < p; a++) out->sigma[a] = sqrt(out->cov[a * p + a]);
    for (j = 1; j < nrep; j++) out->nbad += ff[j] != 0;
    for (a = 0; a < p; a++) {
        for (j = 1; j < nrep; j++) x[j - 1] = sqrt(out->jcov[((size_t)(j - 1) * p + a) * p + a]);
        out->sigma_err[a] = jk ? lss__fisher_jk(x, nb) : NAN;
    }
done:
    LSS_FREE(mu); LSS_FREE(S2); LSS_FREE(s1b); LSS_FREE(s1); LSS_FREE(dsb); LSS_FREE(ds); LSS_FREE(P); LSS_FREE(Fr);
    LSS_FREE(st); LSS_FREE(x);
    if (s != LSS_OK) lss_fisher_free(out);
    return s;
}

LSSDEF double lss_fisher_fom(const lss_fisher *f, int i, int j, double *err) {
    double *x;
    int b;
    if (err) *err = NAN;
    if (!f || !f->cov || i < 0 || j < 0 || i >= f->p || j >= f->p || i == j) {
        lss_seterr(LSS_ERR_ARG, "lss_fisher_fom: bad arguments (parameters %d, %d of %d)", i, j, f ? f->p : 0);
        return NAN;
    }
    if (err && f->nblock >= 2 && f->jcov && (x = (double *)LSS_MALLOC(sizeof(double) * (size_t)f->nblock))) {
        for (b = 0; b < f->nblock; b++) x[b] = lss__fisher_fom2(f->jcov + (size_t)b * f->p * f->p, f->p, i, j);
        *err = lss__fisher_jk(x, f->nblock);
        LSS_FREE(x);
    }
    return lss__fisher_fom2(f->cov, f->p, i, j);
}

/* Shared part of the ratio helpers: what = 0 FoM (i, j), 1 sigma_i. */
static double lss__fisher_ratio(const lss_fisher *a, const lss_fisher *b, int what, int i, int j, double *err) {
    double *x, r;
    int k, p;
    if (err) *err = NAN;
    if (!a || !b || !a->cov || !b->cov || a->p != b->p || a->nfid != b->nfid || a->nder != b->nder ||
        a->nblock != b->nblock || i < 0 || i >= a->p || (what == 0 && (j < 0 || j >= a->p || j == i)))
        return NAN;
    p = a->p;
    if (what == 0) r = lss__fisher_fom2(a->cov, p, i, j) / lss__fisher_fom2(b->cov, p, i, j);
    else r = a->sigma[i] / b->sigma[i];
    if (err && a->nblock >= 2 && a->jcov && b->jcov &&
        (x = (double *)LSS_MALLOC(sizeof(double) * (size_t)a->nblock))) {
        for (k = 0; k < a->nblock; k++) {
            const double *ca = a->jcov + (size_t)k * p * p, *cb = b->jcov + (size_t)k * p * p;
            x[k] = what == 0 ? lss__fisher_fom2(ca, p, i, j) / lss__fisher_fom2(cb, p, i, j)
                             : sqrt(ca[i * p + i]) / sqrt(cb[i * p + i]);
        }
        *err = lss__fisher_jk(x, a->nblock);
        LSS_FREE(x);
    }
    return r;
}

LSSDEF double lss_fisher_fom_ratio(const lss_fisher *a, const lss_fisher *b, int i, int j, double *err) {
    return lss__fisher_ratio(a, b, 0, i, j, err);
}

LSSDEF double lss_fisher_sigma_ratio(const lss_fisher *a, const lss_fisher *b, int k, double *err) {
    return lss__fisher_ratio(a, b, 1, k, 0, err);
}


/* ---------------------------------------------------------------- DeepLSS report numbers */
LSSDEF int lss_constraint_summary(const double *x, int64_t n, lss_constraint *c) {
    lss_param_stats st[LSS_DEEPLSS_NPARAM], st8;
    lss_hist2_opts ho;
    double *s8;
    int64_t i;
    int k, s;
    if (!x || !c || n < 2) return lss_seterr(LSS_ERR_ARG, "lss_constraint_summary: NULL argument or %lld samples", (long long)n);
    if ((s = lss_chain_stats(x, n, LSS_DEEPLSS_NPARAM, st, NULL))) return s;
    s8 = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!s8) return lss_seterr(LSS_ERR_NOMEM, "lss_constraint_summary: out of memory");
    for (i = 0; i < n; i++) s8[i] = lss_s8(x[i * LSS_DEEPLSS_NPARAM], x[i * LSS_DEEPLSS_NPARAM + 1]);
    s = lss_chain_stats(s8, n, 1, &st8, NULL);
    LSS_FREE(s8);
    if (s) return s;
    for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) {
        c->mean[k] = st[k].mean; c->std[k] = st[k].std; c->lo68[k] = st[k].lo68; c->hi68[k] = st[k].hi68;
    }
    c->std[LSS_DEEPLSS_NPARAM] = st8.std;
    if ((s = lss_fom_det(x, n, LSS_DEEPLSS_NPARAM, 0, 1, &c->fom_det))) return s;
    memset(&ho, 0, sizeof ho);
    ho.bins = LSS_DEEPLSS_HPD_BINS;
    ho.xlo = LSS_DEEPLSS_HPD_XLO; ho.xhi = LSS_DEEPLSS_HPD_XHI; ho.ylo = LSS_DEEPLSS_HPD_YLO; ho.yhi = LSS_DEEPLSS_HPD_YHI;
    ho.smooth = LSS_DEEPLSS_HPD_SMOOTH;
    return lss_hpd_area(x, n, LSS_DEEPLSS_NPARAM, 0, 1, &ho, &c->area68, NULL);
}

LSSDEF int64_t lss_coverage(const double *inside, int64_t n, int d, double *frac, double *frac_k) {
    int64_t i, mocks = 0;
    double in = 0, cnt = 0;
    int k;
    if (frac) *frac = NAN;
    if (frac_k) for (k = 0; k < d; k++) frac_k[k] = NAN;
    if (!inside || n < 1 || d < 1) return 0;
    for (k = 0; k < d; k++) {
        double a = 0, c = 0;
        for (i = 0; i < n; i++)
            if (isfinite(inside[i * d + k])) { a += inside[i * d + k]; c++; }
        if (frac_k) frac_k[k] = c > 0 ? a / c : NAN;
        in += a; cnt += c;
    }
    for (i = 0; i < n; i++) {
        int ok = 1;
        for (k = 0; k < d; k++) ok &= isfinite(inside[i * d + k]) != 0;
        mocks += ok;
    }
    if (frac) *frac = cnt > 0 ? in / cnt : NAN;
    return mocks;
}


/* ---------------------------------------------------------------- DeepLSS gains and figures of merit */
static int lss__constraint_ok(const lss_constraint *c) { return isfinite(c->std[0]) != 0; }

LSSDEF int64_t lss_deeplss_gains(const lss_constraint *ref, const lss_constraint *net, int64_t n, double (*gain)[3]) {
    double *v;
    int64_t i, cnt = 0;
    int k;
    if (!gain) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_gains: NULL output");
    for (k = 0; k < LSS_DEEPLSS_NGAIN; k++) gain[k][0] = gain[k][1] = gain[k][2] = NAN;
    if (n < 0 || (n > 0 && (!ref || !net))) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_gains: NULL input or n = %lld", (long long)n);
    if (n == 0) return 0;
    v = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!v) return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_gains: out of memory");
    for (k = 0; k < LSS_DEEPLSS_NGAIN; k++) {
        cnt = 0;
        for (i = 0; i < n; i++) {
            const lss_constraint *a = ref + i, *b = net + i;
            if (!lss__constraint_ok(a) || !lss__constraint_ok(b)) continue;
            if (k <= LSS_DEEPLSS_NPARAM) v[cnt++] = a->std[k] / b->std[k];
            else if (k == LSS_DEEPLSS_NPARAM + 1) v[cnt++] = b->fom_det / a->fom_det;
            else v[cnt++] = a->area68 / b->area68;
        }
        lss_median_range(v, cnt, gain[k]);
    }
    LSS_FREE(v);
    return cnt;
}

LSSDEF int64_t lss_deeplss_fom(const lss_constraint *c, int64_t n, double (*fom)[3]) {
    double *v;
    int64_t i, cnt = 0;
    int k;
    if (!fom) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_fom: NULL output");
    for (k = 0; k < 2; k++) fom[k][0] = fom[k][1] = fom[k][2] = NAN;
    if (n < 0 || (n > 0 && !c)) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_fom: NULL input or n = %lld", (long long)n);
    if (n == 0) return 0;
    v = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!v) return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_fom: out of memory");
    for (k = 0; k < 2; k++) {
        cnt = 0;
        for (i = 0; i < n; i++)
            if (lss__constraint_ok(c + i)) v[cnt++] = k == 0 ? c[i].fom_det : 1.0 / c[i].area68;
        lss_median_range(v, cnt, fom[k]);
    }
    LSS_FREE(v);
    return cnt;
}

/* ---------------------------------------------------------------- DeepLSS training */
typedef struct {
    lss_sumnet *const *nets;
    int nnet;
    const lss_sumnet_train_opts *o;
    float *maps, *y, *ty;
    double *spec, *theta;
} lss__sumnet_train_state;

static void lss__targets(const double *theta, int n, float *y) {
    int i, k;
    for (i = 0; i < n; i++) {
        double t[LSS_DEEPLSS_NPARAM];
        lss_deeplss_to_target(theta + (size_t)i * LSS_DEEPLSS_NPARAM, t);
        for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) y[(size_t)i * LSS_DEEPLSS_NPARAM + k] = (float)t[k];
    }
}

/* Runs network k on rows [r0, r0 + nb) of maps/spec: the input rows, then the loss (train: one step). */
static int lss__sumnet_rows(lss_sumnet *n, const lss_sumnet_train_opts *o, const float *maps, const double *spec,
                            const float *y, int64_t r0, int nb, int train, double *loss) {
    int i, s;
    for (i = 0; i < nb; i++)
        if ((s = lss_sumnet_input(n, i, maps ? maps + (size_t)(r0 + i) * (size_t)o->map_size : NULL,
                                  spec ? spec + (size_t)(r0 + i) * (size_t)o->spec_size : NULL)) != LSS_OK)
            return s;
    return lss_sumnet_loss(n, nb, y + (size_t)r0 * LSS_DEEPLSS_NPARAM, train, loss);
}

/* The networks run in parallel; an error message of a worker thread is carried to the caller's thread. */
static int lss__sumnet_all(lss__sumnet_train_state *S, int train, double *loss) {
    const lss_sumnet_train_opts *o = S->o;
    int k, status = LSS_OK, numeric = 0;
    char msg[512] = "";
    /* under MPI the networks take turns (their data-parallel steps exchange gradients in one order) */
LSS__IOMP(omp parallel for schedule(dynamic, 1) if (lss_mpi_size() == 1))
    for (k = 0; k < S->nnet; k++) {
        lss_sumnet *n = S->nets[k];
        int s = LSS_OK;
        if (train) {
            s = lss__sumnet_rows(n, o, S->maps, S->spec, S->y, 0, o->batch, 1, &loss[k]);
        } else {
            int64_t done = 0;
            double tot = 0, l = 0;
            while (done < o->ntest && s == LSS_OK) {
                int nb = (int)(o->ntest - done < n->o.batch ? o->ntest - done : n->o.batch);
                s = lss__sumnet_rows(n, o, o->test_maps, o->test_spec, S->ty, done, nb, 0, &l);
                tot += l * nb;
                done += nb;
            }
            loss[k] = s == LSS_OK ? tot / (double)o->ntest : NAN;
        }
LSS__IOMP(omp critical(lss_sumnet_train))
        {
            if (s == LSS_ERR_NUMERIC && train) numeric = 1;
            else if (s != LSS_OK && status == LSS_OK) {
                status = s;
                if (snprintf(msg, sizeof msg, "%s", lss_last_error()) < 0) msg[0] = 0;
            }
        }
    }
    if (status != LSS_OK) return lss_seterr(status, "%s", msg);
    return numeric ? LSS_ERR_NUMERIC : LSS_OK;
}

static int lss__sumnet_train_step(void *user, int64_t t, double *loss) {
    lss__sumnet_train_state *S = (lss__sumnet_train_state *)user;
    int s;
    if ((s = S->o->draw(S->o->user, t, S->o->batch, S->maps, S->spec, S->theta)) != LSS_OK) return s;
    lss__targets(S->theta, S->o->batch, S->y);
    return lss__sumnet_all(S, 1, loss);
}

static int lss__sumnet_train_eval(void *user, double *loss) { return lss__sumnet_all((lss__sumnet_train_state *)user, 0, loss); }

static void lss__sumnet_train_progress(void *user, int64_t step, int64_t steps, const double *train, const double *valid) {
    lss__sumnet_train_state *S = (lss__sumnet_train_state *)user;
    S->o->progress(S->o->user, step, steps, train, valid);
}

LSSDEF int lss_sumnet_train(lss_sumnet *const *nets, int nnet, const char *const *names, const char *const *ckpt_paths,
                            const lss_sumnet_train_opts *o, lss_train_result *res) {
    lss__sumnet_train_state S;
    lss_train_net *tn = NULL;
    lss_train_opts to;
    int k, s = LSS_OK;
    if (res) { memset(res, 0, sizeof *res); res->best_step = -1; }
    if (!nets || !names || !o || nnet < 1 || !o->draw || o->steps < 1 || o->batch < 1 || o->map_size < 1 || o->spec_size < 1 ||
        o->ntest < 0 || (o->ntest > 0 && (!o->test_maps || !o->test_spec || !o->test_theta)))
        return lss_seterr(LSS_ERR_ARG, "lss_sumnet_train: NULL argument, %d networks, batch %d, sizes %lld/%lld or %d test "
                          "examples without data", nnet, o ? o->batch : 0, o ? (long long)o->map_size : 0LL,
                          o ? (long long)o->spec_size : 0LL, o ? o->ntest : 0);
    for (k = 0; k < nnet; k++) {
        const lss_sumnet *n = nets[k];
        if (!n || !n->optim || !names[k] || n->o.batch < o->batch)
            return lss_seterr(LSS_ERR_ARG, "lss_sumnet_train: network %d is NULL, unnamed, has no optimizer or a batch below %d", k,
                              o->batch);
        if (n->o.kind == LSS_SUMNET_CNN ? (int64_t)n->o.map_ch * n->o.side * n->o.side != o->map_size
                                        : (int64_t)n->o.npairs * n->o.nell != o->spec_size)
            return lss_seterr(LSS_ERR_ARG, "lss_sumnet_train: network '%s' expects inputs of another size", names[k]);
    }
    memset(&S, 0, sizeof S);
    S.nets = nets; S.nnet = nnet; S.o = o;
    S.maps = (float *)LSS_MALLOC(sizeof(float) * (size_t)o->batch * (size_t)o->map_size);
    S.spec = (double *)LSS_MALLOC(sizeof(double) * (size_t)o->batch * (size_t)o->spec_size);
    S.theta = (double *)LSS_MALLOC(sizeof(double) * (size_t)o->batch * LSS_DEEPLSS_NPARAM);
    S.y = (float *)LSS_MALLOC(sizeof(float) * (size_t)o->batch * LSS_DEEPLSS_NPARAM);
    S.ty = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o->ntest > 0 ? o->ntest : 1) * LSS_DEEPLSS_NPARAM);
    tn = (lss_train_net *)LSS_MALLOC(sizeof(lss_train_net) * (size_t)nnet);
    if (!S.maps || !S.spec || !S.theta || !S.y || !S.ty || !tn) { s = lss_seterr(LSS_ERR_NOMEM, "lss_sumnet_train: out of memory"); goto out; }
    if (o->ntest > 0) lss__targets(o->test_theta, o->ntest, S.ty);
    for (k = 0; k < nnet; k++) {
        tn[k].name = names[k];
        tn[k].store = nets[k]->store;
        tn[k].optim = nets[k]->optim;
        tn[k].ckpt_path = ckpt_paths ? ckpt_paths[k] : NULL;
    }
    memset(&to, 0, sizeof to);
    to.steps = o->steps;
    to.eval_every = o->eval_every;
    to.ckpt_every = o->ckpt_every;
    to.loss_csv = o->loss_csv;
    to.resume = o->resume;
    if (o->patience > 0 && o->ntest > 0) { to.patience = o->patience; to.keep_best = 1; }
    to.step = lss__sumnet_train_step;
    to.eval = o->ntest > 0 ? lss__sumnet_train_eval : NULL;
    to.progress = o->progress ? lss__sumnet_train_progress : NULL;
    to.user = &S;
    s = lss_train(tn, nnet, &to, res);
out:
    LSS_FREE(S.maps); LSS_FREE(S.spec); LSS_FREE(S.theta); LSS_FREE(S.y); LSS_FREE(S.ty); LSS_FREE(tn);
    return s;
}

/* ---------------------------------------------------------------- chains */
LSSDEF int lss_mdn_mode(lss_mdn *m, const double *theta, int nsamp, lss_rng *r, double *obs) {
    double *tt = NULL, *tp = NULL, *lp = NULL;
    int i, nin = 0, b = 0, s = LSS_OK, p, d;
    if (!m || !theta || !r || !obs || nsamp < 1) return lss_seterr(LSS_ERR_ARG, "lss_mdn_mode: NULL argument or %d draws", nsamp);
    if (!m->fitted) return lss_seterr(LSS_ERR_STATE, "lss_mdn_mode: the MDN is not fitted");
    p = m->p;
    d = m->d;
    tt = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsamp * p);
    tp = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsamp * d);
    lp = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsamp);
    if (!tt || !tp || !lp) { s = lss_seterr(LSS_ERR_NOMEM, "lss_mdn_mode: out of memory"); goto out; }
    for (i = 0; i < nsamp; i++) memcpy(tt + (size_t)i * p, theta, sizeof(double) * (size_t)p);
    if ((s = lss_mdn_sample(m, tt, nsamp, r, tp)) != LSS_OK) goto out;
    for (i = 0; i < nsamp; i++)
        if (!m->sp.kind || lss_scaler_check(&m->sp, tp + (size_t)i * d, 1) == LSS_OK) {
            if (nin != i) memcpy(tp + (size_t)nin * d, tp + (size_t)i * d, sizeof(double) * (size_t)d);
            nin++;
        }
    lss_clearerr();
    if (nin == 0) { s = lss_seterr(LSS_ERR_RANGE, "lss_mdn_mode: none of %d draws lies inside the summary range", nsamp); goto out; }
    if ((s = lss_mdn_logpdf(m, tt, tp, nin, 1, lp)) != LSS_OK) goto out;
    for (i = 1; i < nin; i++) if (lp[i] > lp[b]) b = i;
    memcpy(obs, tp + (size_t)b * d, sizeof(double) * (size_t)d);
out:
    LSS_FREE(tt); LSS_FREE(tp); LSS_FREE(lp);
    return s;
}

LSSDEF int lss_mdn_chain(lss_mdn *m, const double *obs, const double *start, const lss_chain_opts *o, uint64_t job,
                         double **flat, int64_t *nflat, double *acc) {
    lss_emcee *e = NULL;
    lss_emcee_opts eo;
    double *p0 = NULL, *spread = NULL, *mid = NULL, sp;
    int s, k, d;
    if (flat) *flat = NULL;
    if (nflat) *nflat = 0;
    if (!m || !obs || !start || !o || !o->prior || !flat || !nflat)
        return lss_seterr(LSS_ERR_ARG, "lss_mdn_chain: NULL argument");
    d = m->p;
    if (o->prior->d != d || o->walkers < 2 * d || o->walkers % 2 || o->burn < 0 || o->steps < 1 || o->spread < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_mdn_chain: prior of %d parameters for %d, %d walkers (even, >= %d), %d + %d steps",
                          o->prior->d, d, o->walkers, 2 * d, o->burn, o->steps);
    if ((s = lss_mdn_set_obs(m, obs)) != LSS_OK) return s;
    sp = o->spread > 0 ? o->spread : 1e-3;
    p0 = (double *)LSS_MALLOC(sizeof(double) * ((size_t)o->walkers * d + 2 * (size_t)d));
    if (!p0) return lss_seterr(LSS_ERR_NOMEM, "lss_mdn_chain: out of memory");
    spread = p0 + (size_t)o->walkers * d;
    mid = spread + d;
    for (k = 0; k < d; k++) {
        double lo = o->prior->lo[k], hi = o->prior->hi[k];
        int box = isfinite(lo) && isfinite(hi);
        spread[k] = box ? sp * (hi - lo) : sp;
        mid[k] = o->mid ? o->mid[k] : box ? 0.5 * (lo + hi) : start[k];
    }
    memset(&eo, 0, sizeof eo);
    eo.seed = o->seed;
    eo.stream = lss_stream(LSS_STREAM_MCMC, job, 0);
    eo.prior = o->prior;
    eo.local = o->local;
    if ((s = lss_walkers_init(o->prior, o->walkers, start, spread, mid, o->seed, job, p0)) != LSS_OK) goto out;
    if ((s = lss_emcee_create(o->walkers, d, &eo, &e)) != LSS_OK || (s = lss_emcee_start(e, p0, lss_mdn_loglike, m)) != LSS_OK ||
        (s = lss_emcee_run(e, o->burn, lss_mdn_loglike, m)) != LSS_OK)
        goto out;
    lss_emcee_reset(e);
    if ((s = lss_emcee_run(e, o->steps, lss_mdn_loglike, m)) != LSS_OK) goto out;
    if (acc) *acc = lss_emcee_acceptance(e, NULL);
    s = lss_emcee_flat(e, 0, 1, flat, nflat);
out:
    lss_emcee_free(e);
    LSS_FREE(p0);
    return s;
}

static void lss__constraint_nan(lss_constraint *c) {
    int k;
    for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) c->mean[k] = c->std[k] = c->lo68[k] = c->hi68[k] = NAN;
    c->std[LSS_DEEPLSS_NPARAM] = c->fom_det = c->area68 = NAN;
}

/* Under MPI: every rank gets every chain's results (status, acceptance, summary and the kept flat chains)
 * from the rank whose block ran it. Returns the first failure of any rank (its message when it is this
 * rank's). */
static int lss__deeplss_chains_share(lss_deeplss_job *jobs, int njobs, int status, char *msg, size_t nmsg) {
    enum { NV = 4 + (int)(sizeof(lss_constraint) / sizeof(double)) };
    double *v = (double *)LSS_MALLOC(sizeof(double) * NV * (size_t)(njobs > 0 ? njobs : 1));
    int64_t lo, hi, i;
    int r, size = lss_mpi_size(), bad, who, *owner;
    owner = (int *)LSS_MALLOC(sizeof(int) * (size_t)(njobs > 0 ? njobs : 1));
    if (!v || !owner) status = LSS_ERR_NOMEM, snprintf(msg, nmsg, "lss_deeplss_chains: out of memory");
    if ((bad = lss_mpi_agree(status, &who)) != LSS_OK) { /* every rank learns of the first failure */
        if (who != lss_mpi_rank()) snprintf(msg, nmsg, "lss_deeplss_chains: a chain failed on rank %d (status %d; that rank reports why)", who, bad);
        LSS_FREE(v); LSS_FREE(owner);
        return bad;
    }
    for (r = 0; r < size; r++) {
        lss_mpi_block(njobs, r, size, &lo, &hi);
        for (i = lo; i < hi; i++) owner[i] = r;
    }
    if (bad == LSS_OK) {
        lss_mpi_block(njobs, lss_mpi_rank(), size, &lo, &hi);
        for (i = lo; i < hi; i++) {
            double *w = v + NV * i;
            w[0] = jobs[i].ok, w[1] = jobs[i].acc, w[2] = (double)jobs[i].nflat, w[3] = jobs[i].flat != NULL;
            memcpy(w + 4, &jobs[i].c, sizeof(lss_constraint));
        }
        lss_mpi_allgather(v, njobs, NV * sizeof(double));
        for (i = 0; i < njobs && bad == LSS_OK; i++) {
            const double *w = v + NV * i;
            int mine = owner[i] == lss_mpi_rank();
            jobs[i].ok = (int)w[0], jobs[i].acc = w[1];
            memcpy(&jobs[i].c, w + 4, sizeof(lss_constraint));
            if (!mine) {
                jobs[i].nflat = (int64_t)w[2];
                jobs[i].flat = NULL;
                if (w[3] != 0 && !(jobs[i].flat = (double *)LSS_MALLOC(sizeof(double) * LSS_DEEPLSS_NPARAM * (size_t)(jobs[i].nflat + 1))))
                    bad = LSS_ERR_NOMEM, snprintf(msg, nmsg, "lss_deeplss_chains: out of memory for chain %lld", (long long)i);
            }
            if (w[3] != 0 && bad == LSS_OK)
                lss_mpi_bcast(jobs[i].flat, sizeof(double) * LSS_DEEPLSS_NPARAM * (size_t)jobs[i].nflat, owner[i]);
        }
    }
    LSS_FREE(v); LSS_FREE(owner);
    return bad;
}

LSSDEF int lss_deeplss_chains(lss_mdn *const *mdn, int nmdn, int ncopy, const lss_chain_opts *o, lss_deeplss_job *jobs,
                              int njobs, int (*progress)(int done, int total, void *user), void *user) {
    int i, k, status = LSS_OK, done = 0, nthr = ncopy;
    int64_t jlo = 0, jhi = 0;
    lss_chain_opts oc;
    char msg[512] = "";
    if (!mdn || !o || (!jobs && njobs > 0) || nmdn < 1 || ncopy < 1 || njobs < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_chains: NULL argument, %d MDNs, %d copies or %d jobs", nmdn, ncopy, njobs);
    for (k = 0; k < nmdn * ncopy; k++)
        if (!mdn[k] || mdn[k]->p != LSS_DEEPLSS_NPARAM || mdn[k]->d != LSS_DEEPLSS_NPARAM)
            return lss_seterr(LSS_ERR_ARG, "lss_deeplss_chains: MDN %d is NULL or not of %d parameters and summaries", k,
                              LSS_DEEPLSS_NPARAM);
    for (i = 0; i < njobs; i++) {
        if (jobs[i].mdn < 0 || jobs[i].mdn >= nmdn) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_chains: job %d uses MDN %d of %d", i, jobs[i].mdn, nmdn);
        jobs[i].ok = 0; jobs[i].acc = NAN; jobs[i].flat = NULL; jobs[i].nflat = 0;
        lss__constraint_nan(&jobs[i].c);
    }
    (void)nthr;
    lss_mpi_block(njobs, lss_mpi_rank(), lss_mpi_size(), &jlo, &jhi); /* under MPI: each rank its block of chains */
    oc = *o;
    oc.local = 1;
LSS__IOMP(omp parallel for schedule(dynamic) num_threads(nthr))
    for (i = (int)jlo; i < (int)jhi; i++) {
        lss_deeplss_job *j = jobs + i;
        int tid = 0, s;
        double *flat = NULL;
        int64_t nf = 0;
#if defined(_OPENMP) && !defined(LSS_NO_OPENMP)
        tid = omp_get_thread_num();
#endif
        if (status != LSS_OK) continue;
        if (tid >= ncopy) s = lss_seterr(LSS_ERR_STATE, "lss_deeplss_chains: thread %d has no MDN copy", tid);
        else s = lss_mdn_chain(mdn[tid * nmdn + j->mdn], j->obs, j->start, &oc, (uint64_t)i, &flat, &nf, &j->acc);
        if (s == LSS_OK) s = lss_constraint_summary(flat, nf, &j->c);
        if (s == LSS_OK) {
            j->ok = 1;
            if (j->keep) { j->flat = flat; j->nflat = nf; flat = NULL; }
        } else {
            lss__constraint_nan(&j->c);
            j->acc = NAN;
        }
        if (s == LSS_ERR_RANGE) { s = LSS_OK; lss_clearerr(); }   /* the observation is outside the MDN's range: not analysed */
        LSS_FREE(flat);
LSS__IOMP(omp critical(lss_deeplss_chains))
        {
            done++;
            if (s == LSS_OK && progress && progress(done, njobs, user))
                s = lss_seterr(LSS_ERR_STATE, "lss_deeplss_chains: stopped by the progress callback");
            if (s != LSS_OK && status == LSS_OK) {
                status = s;
                if (snprintf(msg, sizeof msg, "%s", lss_last_error()) < 0) msg[0] = 0;
            }
        }
    }
    if (lss_mpi_size() > 1) status = lss__deeplss_chains_share(jobs, njobs, status, msg, sizeof msg);
    if (status != LSS_OK) {
        for (i = 0; i < njobs; i++) { LSS_FREE(jobs[i].flat); jobs[i].flat = NULL; jobs[i].nflat = 0; }
        return lss_seterr(status, "%s", msg);
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- DeepLSS runs */
static const char *const lss__dl_kind[2] = {"cnn", "psd"};
static const char *const lss__dl_probe[2][3] = {{"comb", "wl", "gc"}, {"combined", "lensing", "clustering"}};

LSSDEF const char *lss_deeplss_kind_name(int kind) { return kind == 0 || kind == 1 ? lss__dl_kind[kind] : NULL; }
LSSDEF const char *lss_deeplss_probe_name(int probe, int long_name) {
    return probe >= 0 && probe < 3 ? lss__dl_probe[long_name != 0][probe] : NULL;
}

/* dir/name from a format; LSS_ERR_ARG when it does not fit. */
static int lss__dl_path(char *buf, size_t n, const char *dir, const char *fmt, ...) {
    char name[256];
    va_list ap;
    int m;
    va_start(ap, fmt);
    m = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!dir || m < 0 || m >= (int)sizeof name || snprintf(buf, n, "%s/%s", dir, name) >= (int)n)
        return lss_seterr(LSS_ERR_ARG, "path %s/%s is too long", dir ? dir : "(null)", name);
    return LSS_OK;
}

LSSDEF int lss_deeplss_cfg_defaults(lss_deeplss_cfg *c, int scale) {
    if (!c) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_defaults: NULL configuration");
    if (scale != LSS_DEEPLSS_SMALL && scale != LSS_DEEPLSS_PAPER)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_defaults: scale %d is neither small (0) nor paper (1)", scale);
    memset(c, 0, sizeof *c);
    c->scale = scale; c->seed = 1; c->clip_pct = 50; c->batch = 32; c->ntest = 256;
    if (scale == LSS_DEEPLSS_SMALL) {   /* one 5 x 5 deg field at half the paper's resolution */
        c->nside = 32; c->grid = 1; c->pixel_arcmin = 9.375; c->ncosmo = 256; c->nf_train = 16; c->nf_test = 8;
        c->nconv = 3; c->nres = 1; c->channels = 32; c->kernel = 3; c->cnn_in_std = 1;
        c->cnn_pool = 1; c->cnn_hidden = 256; c->cnn_products = 3;
        c->psd_width = 256; c->nell = 8; c->ell_min = 72; c->ell_max = 1152;
        c->steps = 40000; c->eval_every = 500; c->ckpt_every = 5000; c->patience = 20;
        c->lr_cnn = 1e-3; c->lr_psd = 1e-3; c->cosine = 1;
        c->pred_per_cosmo = 32; c->ncal = 100; c->nfid = 24; c->ncheck = 16; c->check_rep = 32;
        c->mdn_width = 128; c->mdn_layers = 2; c->mdn_K = 3; c->mdn_epochs = 600; c->mdn_robust = 1;
        c->walkers = 32; c->burn = 150; c->nsteps = 250;
    } else {                            /* 6 x 6 mosaics of 64 x 64 fields, the released code's CNN and PSD network */
        c->nside = 64; c->grid = 6; c->pixel_arcmin = 4.6875; c->ncosmo = 57; c->nf_train = 36; c->nf_test = 36;
        c->nconv = 4; c->nres = 10; c->channels = 128; c->kernel = 5;
        c->psd_width = 1024; c->nell = 20; c->ell_min = 36; c->ell_max = 2304;
        c->steps = 900000; c->eval_every = 1000; c->ckpt_every = 5000; c->ntest = 32; c->lr_cnn = 5e-5; c->lr_psd = 2.5e-3;
        c->pred_per_cosmo = 1000; c->ncal = 200; c->nfid = 200; c->ncheck = 50; c->check_rep = 100;
        c->mdn_width = 256; c->mdn_layers = 3; c->mdn_K = 4; c->mdn_epochs = 1000;
        c->walkers = 256; c->burn = 100; c->nsteps = 500;
    }
    return LSS_OK;
}

LSSDEF int lss_deeplss_scale_parse(const char *name) {
    if (name && !strcmp(name, "small")) return LSS_DEEPLSS_SMALL;
    if (name && !strcmp(name, "paper")) return LSS_DEEPLSS_PAPER;
    return lss_seterr(LSS_ERR_ARG, "scale '%s' is neither small nor paper", name ? name : "(null)");
}

LSSDEF const char *lss_deeplss_scale_name(int scale) {
    return scale == LSS_DEEPLSS_SMALL ? "small" : scale == LSS_DEEPLSS_PAPER ? "paper" : NULL;
}

/* Every key of the configuration file: type ('i' int, 'd' double, 'u' uint64), place and range. */
typedef struct {
    const char *key;
    char type;
    size_t off;
    double lo, hi;
} lss__dl_key;
#define LSS__DLK(t, f, lo, hi) {#f, t, offsetof(lss_deeplss_cfg, f), lo, hi}
static const lss__dl_key lss__dl_keys[] = {
    LSS__DLK('i', scale, 0, 1), LSS__DLK('i', nside, 8, 4096), LSS__DLK('i', grid, 1, 64), LSS__DLK('d', pixel_arcmin, 1e-3, 1e4),
    LSS__DLK('i', ncosmo, 1, 1e6), LSS__DLK('i', nf_train, 1, 1e6), LSS__DLK('i', nf_test, 1, 1e6), LSS__DLK('i', nconv, 1, 16),
    LSS__DLK('i', nres, 0, 64), LSS__DLK('i', channels, 1, 4096), LSS__DLK('i', kernel, 1, 31), LSS__DLK('i', psd_width, 1, 65536),
    LSS__DLK('i', nell, 1, 63), LSS__DLK('d', ell_min, 1e-3, 1e7), LSS__DLK('d', ell_max, 1e-3, 1e7), LSS__DLK('i', batch, 1, 4096),
    LSS__DLK('i', steps, 1, 1e9), LSS__DLK('i', eval_every, 0, 1e9), LSS__DLK('i', ckpt_every, 0, 1e9), LSS__DLK('i', ntest, 0, 1e6),
    LSS__DLK('d', lr_cnn, 1e-12, 0.999), LSS__DLK('d', lr_psd, 1e-12, 0.999), LSS__DLK('d', clip_pct, 1e-6, 100),
    LSS__DLK('i', pred_per_cosmo, 1, 1e7), LSS__DLK('i', ncal, 0, 1e7), LSS__DLK('i', nfid, 1, 1e7), LSS__DLK('i', ncheck, 0, 1e6),
    LSS__DLK('i', check_rep, 1, 1e6), LSS__DLK('i', mdn_width, 1, 65536), LSS__DLK('i', mdn_layers, 1, 16), LSS__DLK('i', mdn_K, 1, 64),
    LSS__DLK('i', mdn_epochs, 1, 1e7), LSS__DLK('i', walkers, 2 * LSS_DEEPLSS_NPARAM, 1e6), LSS__DLK('i', burn, 0, 1e8),
    LSS__DLK('i', nsteps, 1, 1e8), LSS__DLK('i', cosine, 0, 1), LSS__DLK('i', mdn_robust, 0, 1), LSS__DLK('d', cnn_in_std, 0, 1e6),
    LSS__DLK('i', patience, 0, 1e6), LSS__DLK('i', ps_estimator, 0, 1), LSS__DLK('i', cnn_products, 0, 3),
    LSS__DLK('i', cnn_pool, 0, 1), LSS__DLK('i', cnn_hidden, 0, 65536), LSS__DLK('i', cnn_hybrid, 0, 1),
    LSS__DLK('u', seed, 0, 0)};
#undef LSS__DLK
#define LSS__DL_NKEYS ((int)(sizeof lss__dl_keys / sizeof lss__dl_keys[0]))

static int lss__dl_key_find(const char *key) {
    int k;
    for (k = 0; key && k < LSS__DL_NKEYS; k++)
        if (!strcmp(lss__dl_keys[k].key, key)) return k;
    return -1;
}

/* The value of key k as a double (seed: 0). */
static double lss__dl_key_get(const lss_deeplss_cfg *c, int k) {
    const char *p = (const char *)c + lss__dl_keys[k].off;
    return lss__dl_keys[k].type == 'i' ? (double)*(const int *)p : lss__dl_keys[k].type == 'd' ? *(const double *)p : 0.0;
}

LSSDEF int lss_deeplss_cfg_set(lss_deeplss_cfg *c, const char *key, const char *value) {
    int k = lss__dl_key_find(key);
    const lss__dl_key *d;
    char *end;
    if (!c || !value) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_set: NULL argument");
    if (k < 0) return lss_seterr(LSS_ERR_ARG, "unknown key '%s'", key ? key : "(null)");
    d = &lss__dl_keys[k];
    errno = 0;
    if (d->type == 'u') {
        unsigned long long v;
        if (!(*value >= '0' && *value <= '9')) return lss_seterr(LSS_ERR_ARG, "%s = '%s' is not an unsigned integer", key, value);
        v = strtoull(value, &end, 10);
        if (*end || errno == ERANGE) return lss_seterr(LSS_ERR_ARG, "%s = '%s' is not a 64-bit unsigned integer", key, value);
        *(uint64_t *)((char *)c + d->off) = (uint64_t)v;
    } else if (d->type == 'i') {
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno == ERANGE) return lss_seterr(LSS_ERR_ARG, "%s = '%s' is not an integer", key, value);
        if (v < (long long)d->lo || v > (long long)d->hi)
            return lss_seterr(LSS_ERR_ARG, "%s = %lld is outside [%.0f, %.0f]", key, v, d->lo, d->hi);
        *(int *)((char *)c + d->off) = (int)v;
    } else {
        double v = strtod(value, &end);
        if (!*value || *end || errno == ERANGE || !(v > -HUGE_VAL && v < HUGE_VAL))
            return lss_seterr(LSS_ERR_ARG, "%s = '%s' is not a finite number", key, value);
        if (v < d->lo || v > d->hi) return lss_seterr(LSS_ERR_ARG, "%s = %g is outside [%g, %g]", key, v, d->lo, d->hi);
        *(double *)((char *)c + d->off) = v;
    }
    return LSS_OK;
}

LSSDEF int lss_deeplss_cfg_check(const lss_deeplss_cfg *c) {
    int k;
    if (!c) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_check: NULL configuration");
    for (k = 0; k < LSS__DL_NKEYS; k++) {
        double v = lss__dl_key_get(c, k);
        if (lss__dl_keys[k].type != 'u' && !(v >= lss__dl_keys[k].lo && v <= lss__dl_keys[k].hi))
            return lss_seterr(LSS_ERR_ARG, "%s = %g is outside [%g, %g]", lss__dl_keys[k].key, v, lss__dl_keys[k].lo, lss__dl_keys[k].hi);
    }
    if (c->walkers % 2) return lss_seterr(LSS_ERR_ARG, "walkers = %d is odd (two half-ensembles)", c->walkers);
    if (!(c->ell_min < c->ell_max)) return lss_seterr(LSS_ERR_ARG, "ell_min = %g is not below ell_max = %g", c->ell_min, c->ell_max);
    if ((int64_t)c->ncosmo * c->pred_per_cosmo > INT32_MAX || (int64_t)c->ncheck * c->check_rep > INT32_MAX ||
        (int64_t)c->grid * c->nside > 65536)
        return lss_seterr(LSS_ERR_ARG, "ncosmo x pred_per_cosmo, ncheck x check_rep or grid x nside is too large");
    {
        double pool, train;
        lss_deeplss_cfg_memory(c, &pool, &train);
        if (pool > LSS_DEEPLSS_MAX_BYTES || train > LSS_DEEPLSS_MAX_BYTES)
            return lss_seterr(LSS_ERR_RANGE, "the run would hold %.3g GB of pool fields and %.3g GB to train a network (at most %.0f GB each): "
                              "fewer cosmologies, fields, channels, a smaller batch or maps", pool / 1e9, train / 1e9, LSS_DEEPLSS_MAX_BYTES / 1e9);
    }
    return LSS_OK;
}

LSSDEF void lss_deeplss_cfg_memory(const lss_deeplss_cfg *c, double *pool_bytes, double *train_bytes) {
    double pool = 0, train = 0;
    if (c) {
        double S = (double)c->grid * c->nside, B = c->batch, C = c->channels, k2 = (double)c->kernel * c->kernel, cin = 2 * LSS_DEEPLSS_NBINS;
        double acts = B * cin * S * S, scr = 0, s = S;
        int i;
        pool = (double)c->ncosmo * ((double)c->nf_train + c->nf_test) * 3 * LSS_DEEPLSS_NBINS * (double)c->nside * c->nside * 4;
        for (i = 0; i <= c->nconv; i++) {   /* stride-2 convolutions, then the residual blocks' (same shapes) */
            double K = (i ? C : cin) * k2, P, per, nc, sc;
            if (i < c->nconv) s = ceil(s / 2);
            P = s * s;
            /* the convolution's scratch: im2col columns of a chunk of samples (lss_nn.h: at most 2^22 floats
               unless one sample needs more) and its output in [C, N P] order; every layer reuses it */
            per = K * P;
            nc = floor(4194304.0 / per);
            nc = nc > B ? B : nc < 1 ? 1 : nc;
            sc = nc * per + B * C * P;
            if (sc > scr) scr = sc;
            if (i < c->nconv) acts += B * C * s * s;
        }
        acts += 2.0 * c->nres * B * C * s * s;   /* residual blocks at the last resolution */
        /* values and gradients of the layers' outputs (2.5 floats per activation counted here: convolutions and
           their ReLU are one operation; calibrated on the ResNet with lss_graph_memory), the convolutions' scratch */
        train = 4 * (2.5 * acts + scr);
    }
    if (pool_bytes) *pool_bytes = pool;
    if (train_bytes) *train_bytes = train;
}

LSSDEF int lss_deeplss_cfg_save(const lss_deeplss_cfg *c, const char *path) {
    lss_wfile w;
    int s, k;
    if (!path) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_save: NULL path");
    if ((s = lss_deeplss_cfg_check(c))) return s;
    if ((s = lss_wfile_open(&w, path))) return s;
    fprintf(w.f, "# DeepLSS run configuration (key = value)\n");
    for (k = 0; k < LSS__DL_NKEYS; k++) {
        const lss__dl_key *d = &lss__dl_keys[k];
        const char *p = (const char *)c + d->off;
        if (d->type == 'u') fprintf(w.f, "%s = %llu\n", d->key, (unsigned long long)*(const uint64_t *)p);
        else if (d->type == 'i') fprintf(w.f, "%s = %d\n", d->key, *(const int *)p);
        else fprintf(w.f, "%s = %.17g\n", d->key, *(const double *)p);
    }
    return lss_wfile_commit(&w);
}

LSSDEF int lss_deeplss_cfg_load(lss_deeplss_cfg *c, const char *path) {
    char line[1024], *p, *key, *val, *e;
    unsigned char seen[LSS__DL_NKEYS];
    lss_deeplss_cfg t;
    FILE *f;
    int ln = 0, k, s = LSS_OK;
    if (!c || !path) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_cfg_load: NULL argument");
    if ((s = lss_fopen_read(path, &f, NULL)) != LSS_OK) return s;
    memset(seen, 0, sizeof seen);
    lss_deeplss_cfg_defaults(&t, LSS_DEEPLSS_SMALL);
    while (s == LSS_OK && fgets(line, sizeof line, f)) {
        ln++;
        if (!strchr(line, '\n') && !feof(f)) { s = lss_seterr(LSS_ERR_FORMAT, "%s:%d: line too long", path, ln); break; }
        for (p = line; *p == ' ' || *p == '\t'; p++) {}
        if (!*p || *p == '\n' || *p == '\r' || *p == '#') continue;
        for (key = p; *p && *p != '=' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r'; p++) {}
        e = p;
        for (; *p == ' ' || *p == '\t'; p++) {}
        if (*p == '=') p++;
        for (; *p == ' ' || *p == '\t'; p++) {}
        val = p;
        for (p = val + strlen(val); p > val && (p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n' || p[-1] == '\r'); p--) {}
        *p = 0;
        *e = 0;
        if ((k = lss__dl_key_find(key)) < 0) s = lss_seterr(LSS_ERR_FORMAT, "%s:%d: unknown key '%s'", path, ln, key);
        else if (seen[k]++) s = lss_seterr(LSS_ERR_FORMAT, "%s:%d: key '%s' given twice", path, ln, key);
        else if (lss_deeplss_cfg_set(&t, key, val)) s = lss_seterr(LSS_ERR_FORMAT, "%s:%d: %s", path, ln, lss_last_error());
    }
    if (s == LSS_OK && ferror(f)) s = lss_seterr(LSS_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
    fclose(f);
    for (k = 0; k < LSS__DL_NKEYS && s == LSS_OK; k++)
        if (!seen[k]) s = lss_seterr(LSS_ERR_FORMAT, "%s: missing key '%s'", path, lss__dl_keys[k].key);
    if (s == LSS_OK && lss_deeplss_cfg_check(&t)) s = lss_seterr(LSS_ERR_FORMAT, "%s: %s", path, lss_last_error());
    if (s == LSS_OK) *c = t;
    return s;
}

LSSDEF int lss_deeplss_mdn_opts(const lss_deeplss_cfg *c, lss_mdn_opts *mo) {
    if (!c || !mo) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_mdn_opts: NULL argument");
    memset(mo, 0, sizeof *mo);
    mo->nhidden = c->mdn_layers; mo->width = c->mdn_width; mo->K = c->mdn_K; mo->max_epochs = c->mdn_epochs;
    mo->seed = lss_stream_key(c->seed, LSS_STREAM_MDN, 0, 0);
    mo->batch = c->scale == LSS_DEEPLSS_SMALL ? 512 : 5000;
    mo->lr = 1e-3;
    mo->patience = 50;
    if (c->mdn_robust) mo->scale_p = LSS_SCALE_ROBUST;
    return LSS_OK;
}

LSSDEF int lss_deeplss_sumnet_create(const lss_deeplss_cfg *c, int k, int batch, int side, int npairs, const int *pair_probe,
                                     int with_optimizer, lss_sumnet **out) {
    lss_sumnet_opts so;
    lss_optim_opts oo;
    int use[256], q, probe = k % 3;
    if (!c || !out || k < 0 || k >= LSS_DEEPLSS_NNET || npairs < 0 || npairs > 256 || (npairs > 0 && !pair_probe))
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_sumnet_create: NULL argument, network %d or %d pairs", k, npairs);
    memset(&so, 0, sizeof so);
    so.kind = k / 3 == 0 ? LSS_SUMNET_CNN : LSS_SUMNET_PSD;
    so.batch = batch;
    so.map_ch = 2 * LSS_DEEPLSS_NBINS; so.side = side;
    so.nch = probe == 0 ? 2 * LSS_DEEPLSS_NBINS : LSS_DEEPLSS_NBINS;
    so.ch0 = probe == 2 ? LSS_DEEPLSS_NBINS : 0;
    so.nconv = c->nconv; so.nres = c->nres; so.channels = c->channels; so.kernel = c->kernel; so.in_std = c->cnn_in_std;
    so.products = probe == 0 || c->cnn_products == 3 ? c->cnn_products : 0;
    so.pool = c->cnn_pool; so.hidden = c->cnn_hidden; so.hybrid = so.kind == LSS_SUMNET_CNN ? c->cnn_hybrid : 0;
    for (q = 0; q < npairs; q++) use[q] = (pair_probe[q] >> probe) & 1;
    so.npairs = npairs; so.nell = c->nell; so.use_pair = use; so.width = c->psd_width;
    so.seed = c->seed;
    so.sub = (uint32_t)k;
    if (with_optimizer) {
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM;
        oo.lr = k / 3 == 0 ? c->lr_cnn : c->lr_psd;
        oo.eps = 1e-7;   /* Keras's Adam */
        oo.clip = LSS_CLIP_PERCENTILE; oo.clip_percentile = c->clip_pct; oo.clip_history = 10000;
        if (c->cosine) { oo.sched = LSS_SCHED_COSINE; oo.total_steps = c->steps; oo.lr_min = 0.05 * oo.lr; }
        so.optim = &oo;
    }
    return lss_sumnet_create(&so, out);
}

LSSDEF int lss_deeplss_loss_png(const char *dir, const char *title) {
    char csv[4096], png[4096];
    lss_csv lc;
    lss_plot_opts po;
    double *cols, *ys[64];
    int s, j, n;
    int64_t i;
    if ((s = lss__dl_path(csv, sizeof csv, dir, "loss.csv")) || (s = lss__dl_path(png, sizeof png, dir, "loss.png"))) return s;
    if ((s = lss_csv_read(csv, &lc))) return s;
    n = lc.ncols - 1 < 64 ? lc.ncols - 1 : 64;
    if (n < 1 || lc.nrows < 1 || lc.nrows > INT32_MAX) {   /* nothing to draw yet: no figure */
        lss_csv_free(&lc);
        return LSS_OK;
    }
    if (!(cols = (double *)LSS_MALLOC(sizeof(double) * (size_t)lc.nrows * (size_t)(n + 1)))) {
        lss_csv_free(&lc);
        return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_loss_png: out of memory");
    }
    for (j = 0; j <= n; j++) {
        for (i = 0; i < lc.nrows; i++) cols[j * lc.nrows + i] = lc.data[i * lc.ncols + j];
        if (j) ys[j - 1] = cols + j * lc.nrows;
    }
    memset(&po, 0, sizeof po);
    po.title = title; po.xlabel = lc.names[0]; po.ylabel = "loss"; po.width = 1000; po.height = 560;
    {   /* one colour per network, its training loss solid and its held-out loss dashed; the legend outside; a spike
           of the first steps does not set the y range */
        int col[64], sty[64], k, nc = 0;
        char lab[64][96];
        const char *labp[64];
        for (j = 0; j < n; j++) {
            const char *nm = lc.names[j + 1], *net = !strncmp(nm, "train_", 6) || !strncmp(nm, "valid_", 6) ? nm + 6 : nm;
            sty[j] = !strncmp(nm, "valid_", 6) ? LSS_LINE_DASHED : LSS_LINE_SOLID;
            for (k = 0; k < j; k++) {
                const char *o2 = lc.names[k + 1];
                if (!strcmp(!strncmp(o2, "train_", 6) || !strncmp(o2, "valid_", 6) ? o2 + 6 : o2, net)) break;
            }
            col[j] = k < j ? col[k] : nc++;
            snprintf(lab[j], sizeof lab[j], "%s (%s)", net, !strncmp(nm, "valid_", 6) ? "held-out" : !strncmp(nm, "train_", 6) ? "train" : "loss");
            labp[j] = lab[j];
        }
        po.color = col; po.style = sty; po.robust_y = 1; po.legend_out = 1;
        s = lss_plot_lines(png, &po, n, (int)lc.nrows, cols, (const double *const *)ys, labp);
    }
    LSS_FREE(cols);
    lss_csv_free(&lc);
    return s;
}

/* Jobs the plan makes: *nfidjobs of the fiducial mocks and *ncaljobs of calibration; LSS_ERR_ARG for a bad plan. */
static int lss__dl_plan_check(const lss_deeplss_plan *p, int *nfidjobs, int *ncaljobs) {
    int i, j, ncn = 0;
    int64_t nf, nc;
    if (!p || p->nnet < 1 || p->nnet > LSS_DEEPLSS_NNET || p->nfid < 1 || p->ncal < 0 || !p->fiducial || p->mode_nsamp < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_plan: NULL plan, %d networks, %d fiducial or %d calibration mocks",
                          p ? p->nnet : 0, p ? p->nfid : 0, p ? p->ncal : 0);
    for (i = 0; i < p->nnet; i++) {
        if (p->id[i] < 0 || p->id[i] >= LSS_DEEPLSS_NNET || !p->fid[i])
            return lss_seterr(LSS_ERR_ARG, "lss_deeplss_plan: network %d has id %d or no fiducial summaries", i, p->id[i]);
        for (j = 0; j < i; j++)
            if (p->id[j] == p->id[i]) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_plan: network id %d twice", p->id[i]);
        ncn += p->cal[i] != NULL && p->ncal > 0;
    }
    if (ncn > 0 && !p->cal_theta) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_plan: calibration summaries without cal_theta");
    nf = (int64_t)p->nnet * (1 + (int64_t)p->nfid);
    nc = (int64_t)ncn * p->ncal;
    if (nf + nc > INT32_MAX / 2) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_plan: %lld jobs are too many", (long long)(nf + nc));
    *nfidjobs = (int)nf;
    *ncaljobs = (int)nc;
    return LSS_OK;
}

LSSDEF int lss_deeplss_jobs(const lss_deeplss_plan *p, lss_mdn *const *mdn, lss_deeplss_job **jobs, int *njobs) {
    const int NP = LSS_DEEPLSS_NPARAM;
    int nf, nc, i, q, k, n = 0, s;
    lss_deeplss_job *J;
    double *col;
    if (!mdn || !jobs || !njobs) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_jobs: NULL argument");
    *jobs = NULL;
    *njobs = 0;
    if ((s = lss__dl_plan_check(p, &nf, &nc))) return s;
    for (i = 0; i < p->nnet; i++)
        if (!mdn[i] || mdn[i]->p != NP || mdn[i]->d != NP)
            return lss_seterr(LSS_ERR_ARG, "lss_deeplss_jobs: MDN %d is NULL or not of %d parameters and summaries", i, NP);
    J = (lss_deeplss_job *)LSS_MALLOC(sizeof *J * (size_t)(nf + nc));
    col = (double *)LSS_MALLOC(sizeof(double) * (size_t)p->nfid);
    if (!J || !col) {
        LSS_FREE(J);
        LSS_FREE(col);
        return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_jobs: out of memory");
    }
    memset(J, 0, sizeof *J * (size_t)(nf + nc));
    for (i = 0; i < p->nnet; i++) {
        lss_rng r;
        lss_deeplss_job *j = &J[n++];
        lss_rng_for(&r, p->seed, LSS_STREAM_MDN, 1, (uint32_t)p->id[i]);
        s = lss_mdn_mode(mdn[i], p->fiducial, p->mode_nsamp > 0 ? p->mode_nsamp : 2000, &r, j->obs);
        if (s == LSS_ERR_RANGE) {   /* no draw inside the MDN's summary range: the median of the noisy mocks */
            for (k = 0; k < NP; k++) {
                for (q = 0; q < p->nfid; q++) col[q] = p->fid[i][(size_t)q * NP + k];
                j->obs[k] = lss_percentile(col, p->nfid, 50);
            }
            lss_clearerr();
            s = LSS_OK;
        }
        if (s) {
            LSS_FREE(J);
            LSS_FREE(col);
            return s;
        }
        j->mdn = i; j->keep = 1;
        memcpy(j->start, p->fiducial, sizeof j->start);
        for (q = 0; q < p->nfid; q++, n++) {
            J[n].mdn = i;
            memcpy(J[n].obs, p->fid[i] + (size_t)q * NP, sizeof J[n].obs);
            memcpy(J[n].start, p->fiducial, sizeof J[n].start);
        }
    }
    for (i = 0; i < p->nnet; i++)
        for (q = 0; q < p->ncal && p->cal[i]; q++, n++) {
            J[n].mdn = i;
            memcpy(J[n].obs, p->cal[i] + (size_t)q * NP, sizeof J[n].obs);
            memcpy(J[n].start, p->cal_theta + (size_t)q * NP, sizeof J[n].start);
        }
    LSS_FREE(col);
    *jobs = J;
    *njobs = n;
    return LSS_OK;
}

LSSDEF void lss_deeplss_jobs_free(lss_deeplss_job *jobs, int njobs) {
    int i;
    if (!jobs) return;
    for (i = 0; i < njobs; i++) LSS_FREE(jobs[i].flat);
    LSS_FREE(jobs);
}

LSSDEF int lss_deeplss_jobs_save(const lss_deeplss_plan *p, const lss_deeplss_job *jobs, int njobs, const char *const *names,
                                 const char *dir, int *nfail) {
    const int NP = LSS_DEEPLSS_NPARAM, W = 8 + LSS_DEEPLSS_NPARAM;
    const char *h1[8 + LSS_DEEPLSS_NPARAM], *h2[8] = {"kind", "mock", "param", "truth", "lo68", "hi68", "inside", "ok"};
    char hb[LSS_DEEPLSS_NPARAM + 1][64], path[4096];
    int nf, nc, i, q, k, m, s, fails = 0;
    int64_t n = 0;
    double *rows;
    if (nfail) *nfail = 0;
    if ((s = lss__dl_plan_check(p, &nf, &nc))) return s;
    if (!jobs || !names || !dir || njobs != nf + nc)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_jobs_save: NULL argument or %d jobs for a plan of %d", njobs, nf + nc);
    for (k = 0; k <= NP; k++) {
        if (k < NP && !names[k]) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_jobs_save: parameter %d has no name", k);
        snprintf(hb[k], sizeof hb[k], "std_%s", k < NP ? names[k] : "S8");
        h1[4 + k] = hb[k];
    }
    h1[0] = "kind"; h1[1] = "probe"; h1[2] = "mock"; h1[3] = "ok";
    h1[5 + NP] = "fom_det"; h1[6 + NP] = "area68"; h1[7 + NP] = "acceptance";
    rows = (double *)LSS_MALLOC(sizeof(double) * ((size_t)nf * W + (size_t)nc * NP * 8 + 1));
    if (!rows) return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_jobs_save: out of memory");
    for (i = 0, m = 0; i < p->nnet; i++)
        for (q = -1; q < p->nfid; q++, m++, n++) {
            const lss_deeplss_job *j = &jobs[m];
            double *r = rows + (size_t)n * W;
            r[0] = p->id[i] / 3; r[1] = p->id[i] % 3; r[2] = q; r[3] = j->ok;
            memcpy(r + 4, j->c.std, sizeof(double) * (NP + 1));
            r[5 + NP] = j->c.fom_det; r[6 + NP] = j->c.area68; r[7 + NP] = j->acc;
            fails += !j->ok;
            if (j->flat) {
                int64_t sh[2];
                sh[0] = j->nflat; sh[1] = NP;
                if ((s = lss__dl_path(path, sizeof path, dir, "chain_fid_%s_%s.npy", lss__dl_kind[p->id[i] / 3], lss__dl_probe[0][p->id[i] % 3])) ||
                    (s = lss_npy_save(path, LSS_F64, 2, sh, j->flat)))
                    goto out;
            }
        }
    if ((s = lss__dl_path(path, sizeof path, dir, "mcmc_fid.csv")) || (s = lss_csv_write(path, W, h1, n, rows))) goto out;
    for (i = 0, n = 0; i < p->nnet; i++)
        for (q = 0; q < p->ncal && p->cal[i]; q++, m++) {
            const lss_deeplss_job *j = &jobs[m];
            fails += !j->ok;
            for (k = 0; k < NP; k++, n++) {
                double *r = rows + (size_t)n * 8;
                r[0] = p->id[i] / 3; r[1] = q; r[2] = k; r[3] = j->start[k]; r[4] = j->c.lo68[k]; r[5] = j->c.hi68[k];
                r[6] = j->ok ? (j->start[k] >= r[4] && j->start[k] <= r[5]) : NAN;
                r[7] = j->ok;
            }
        }
    if ((s = lss__dl_path(path, sizeof path, dir, "calibration.csv")) == LSS_OK) s = lss_csv_write(path, 8, h2, n, rows);
    if (nfail) *nfail = fails;
out:
    LSS_FREE(rows);
    return s;
}

/* Reads dir/name into cv (zeroed first); *have 0 and LSS_OK when the file does not exist. */
static int lss__dl_csv(const char *dir, const char *name, lss_csv *cv, char *path, size_t np, int *have) {
    FILE *f;
    int s;
    memset(cv, 0, sizeof *cv);
    *have = 0;
    if ((s = lss__dl_path(path, np, dir, "%s", name))) return s;
    if (!(f = fopen(path, "r"))) return LSS_OK;
    fclose(f);
    if ((s = lss_csv_read(path, cv))) return s;
    *have = 1;
    return LSS_OK;
}

/* Column indices by name; LSS_ERR_FORMAT naming the file and the first missing column. */
/* A table cell that must hold an integer in [lo, hi]: the integer, or -1 (NaN, 1e300, 2.5: never cast). */
static int lss__dl_int(double v, int lo, int hi) { return v >= lo && v <= hi && v == floor(v) ? (int)v : -1; }

static int lss__dl_cols(const lss_csv *cv, const char *file, int n, const char *const *names, int *col) {
    int i;
    for (i = 0; i < n; i++)
        if ((col[i] = lss_csv_col(cv, names[i])) < 0) return lss_seterr(LSS_ERR_FORMAT, "%s: no column '%s'", file, names[i]);
    return LSS_OK;
}

LSSDEF int lss_deeplss_numbers_read(const char *dir, int nfid, int ncal, const char *const *names, lss_deeplss_numbers *r) {
    const int NP = LSS_DEEPLSS_NPARAM;
    static const char *const cn[5] = {"kind", "mock", "param", "inside", "ok"};
    static const char *const mn[8] = {"kind", "probe", "dmu_median", "dmu_lo", "dmu_hi", "dsig_median", "dsig_lo", "dsig_hi"};
    const char *fn[7 + LSS_DEEPLSS_NPARAM];
    char hb[LSS_DEEPLSS_NPARAM + 1][64], path[4096], cname[64];
    int col[7 + LSS_DEEPLSS_NPARAM], k, p, kind, s, have;
    lss_csv cv;
    lss_constraint *cs = NULL;
    double *ins = NULL;
    int64_t i;
    if (!r || !dir || !names || nfid < 1 || ncal < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_numbers_read: NULL argument, %d fiducial or %d calibration mocks", nfid, ncal);
    memset(r, 0, sizeof *r);
    for (k = 0; k < LSS_DEEPLSS_NNET; k++) r->loss[k / 3][k % 3] = NAN;
    r->loss_step = -1;
    /* the held-out losses at the end of training */
    if ((s = lss__dl_csv(dir, "loss.csv", &cv, path, sizeof path, &have))) goto out;
    for (k = 0; k < LSS_DEEPLSS_NNET && have && cv.nrows > 0; k++) {
        snprintf(cname, sizeof cname, "valid_%s_%s", lss__dl_kind[k / 3], lss__dl_probe[0][k % 3]);
        if ((col[0] = lss_csv_col(&cv, cname)) >= 0) r->loss[k / 3][k % 3] = cv.data[(cv.nrows - 1) * cv.ncols + col[0]];
        {
            double st0 = cv.data[(cv.nrows - 1) * cv.ncols];
            r->loss_step = st0 >= 0 && st0 <= 9e15 && st0 == floor(st0) ? (int64_t)st0 : -1;
        }
    }
    lss_csv_free(&cv);
    /* per-mock constraints of every network at the fiducial parameters */
    if ((s = lss__dl_path(path, sizeof path, dir, "mcmc_fid.csv")) || (s = lss_csv_read(path, &cv))) goto out;
    fn[0] = "kind"; fn[1] = "probe"; fn[2] = "mock"; fn[3] = "ok";
    for (k = 0; k <= NP; k++) {
        if (k < NP && !names[k]) { s = lss_seterr(LSS_ERR_ARG, "lss_deeplss_numbers_read: parameter %d has no name", k); goto out; }
        snprintf(hb[k], sizeof hb[k], "std_%s", k < NP ? names[k] : "S8");
        fn[4 + k] = hb[k];
    }
    fn[5 + NP] = "fom_det"; fn[6 + NP] = "area68";
    if ((s = lss__dl_cols(&cv, path, 7 + NP, fn, col))) goto out;
    if (!(cs = (lss_constraint *)LSS_MALLOC(sizeof(lss_constraint) * LSS_DEEPLSS_NNET * (size_t)nfid))) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_numbers_read: out of memory");
        goto out;
    }
    for (i = 0; i < (int64_t)LSS_DEEPLSS_NNET * nfid; i++) lss__constraint_nan(&cs[i]);
    for (i = 0; i < cv.nrows; i++) {
        const double *v = cv.data + i * cv.ncols;
        int kd = lss__dl_int(v[col[0]], 0, 1), pr = lss__dl_int(v[col[1]], 0, 2), m = lss__dl_int(v[col[2]], 0, nfid - 1);
        lss_constraint *q;
        if (kd < 0 || pr < 0 || m < 0 || v[col[3]] != 1) continue;
        q = cs + (size_t)(kd * 3 + pr) * nfid + m;
        for (k = 0; k <= NP; k++) q->std[k] = v[col[4 + k]];
        q->fom_det = v[col[5 + NP]];
        q->area68 = v[col[6 + NP]];
    }
    lss_csv_free(&cv);
    for (p = 0; p < 3; p++)
        if ((r->ngain[p] = lss_deeplss_gains(cs + (size_t)(3 + p) * nfid, cs + (size_t)p * nfid, nfid, r->gain[p])) < 0) {
            s = (int)r->ngain[p];
            goto out;
        }
    for (k = 0; k < LSS_DEEPLSS_NNET; k++) {
        int64_t nk = lss_deeplss_fom(cs + (size_t)k * nfid, nfid, r->fom[k]);
        if (nk < 0) { s = (int)nk; goto out; }
    }
    /* calibration: coverage of the 68% intervals of the combined-probe networks (NaN for mocks not analysed) */
    if (ncal > 0) {
        if ((s = lss__dl_csv(dir, "calibration.csv", &cv, path, sizeof path, &have))) goto out;
        if (have) {
            if ((s = lss__dl_cols(&cv, path, 5, cn, col))) goto out;
            if (!(ins = (double *)LSS_MALLOC(sizeof(double) * (size_t)ncal * NP))) {
                s = lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_numbers_read: out of memory");
                goto out;
            }
            r->have_cal = 1;
            for (kind = 0; kind < 2; kind++) {
                for (i = 0; i < (int64_t)ncal * NP; i++) ins[i] = NAN;
                for (i = 0; i < cv.nrows; i++) {
                    const double *v = cv.data + i * cv.ncols;
                    int mk = lss__dl_int(v[col[1]], 0, ncal - 1), pk = lss__dl_int(v[col[2]], 0, NP - 1);
                    if (lss__dl_int(v[col[0]], 0, 1) == kind && v[col[4]] == 1 && mk >= 0 && pk >= 0) ins[mk * NP + pk] = v[col[3]];
                }
                r->cal_n[kind] = lss_coverage(ins, ncal, NP, &r->cal_frac[kind], r->cal_par[kind]);
            }
            lss_csv_free(&cv);
        }
    }
    /* the MDN check of appendix C per network */
    if ((s = lss__dl_csv(dir, "mdn_check.csv", &cv, path, sizeof path, &have))) goto out;
    if (have && (s = lss__dl_cols(&cv, path, 8, mn, col))) goto out;
    for (i = 0; have && i < cv.nrows; i++) {
        const double *v = cv.data + i * cv.ncols;
        int kd = lss__dl_int(v[col[0]], 0, 1), pr = lss__dl_int(v[col[1]], 0, 2);
        if (kd < 0 || pr < 0) continue;
        r->have_check[kd * 3 + pr] = 1;
        for (k = 0; k < 6; k++) r->check[kd * 3 + pr][k] = v[col[2 + k]];
    }
    s = LSS_OK;
out:
    lss_csv_free(&cv);
    LSS_FREE(cs);
    LSS_FREE(ins);
    return s;
}

/* fisher.md's reading of the map networks' rows against the one-point moments alone (the summary named "moments"): a network
   below them has not learnt the pixel statistics; an undertrained one within LSS__DL_NEAR_MOMENTS above them has learnt
   about what they carry and little of the spectra's scale dependence. */
#define LSS__DL_NEAR_MOMENTS 0.15
static void lss__dl_fisher_reading(FILE *f, const lss_fisher *F, int nsum, const char *const *sum_names, int first_net) {
    int p, b, im = -1, ip = -1, n = 0;
    for (b = 0; b < nsum; b++) {
        if (sum_names[b] && !strcmp(sum_names[b], "moments")) im = b;
        if (b >= first_net && sum_names[b] && !strcmp(sum_names[b], "psd")) ip = b;
    }
    for (p = 0; p < 3 && im >= 0; p++)
        for (b = first_net; b < nsum; b++) {
            const lss_fisher *net = F + p * nsum + b, *mo = F + p * nsum + im, *re = F + p * nsum;
            double e1, em, r1, rm, sd;
            if (!net->F || !mo->F || !re->F || !strncmp(sum_names[b], "psd", 3)) continue;   /* spectra networks: not read */
            r1 = lss_fisher_fom_ratio(net, re, 0, 1, &e1);
            rm = lss_fisher_fom_ratio(mo, re, 0, 1, &em);
            if (!isfinite(r1) || !isfinite(rm)) continue;
            sd = 2 * sqrt((isfinite(e1) ? e1 * e1 : 0) + (isfinite(em) ? em * em : 0));
            if (!n++) fprintf(f, "\nReading of the network rows against the one-point moments alone:\n\n");
            if (r1 < rm - sd)
                fprintf(f, "- %s %s: efficiency %.3f, below the one-point moments alone (%.3f): it has not yet learnt all that the "
                           "pixel statistics carry.\n", lss_deeplss_probe_name(p, 1), sum_names[b], r1, rm);
            else if (r1 < LSS_DEEPLSS_UNDERTRAINED && r1 <= rm + LSS__DL_NEAR_MOMENTS)
                fprintf(f, "- %s %s: efficiency %.3f, near the one-point moments alone (%.3f): it has learnt about what the pixel "
                           "statistics carry and little of the spectra's scale dependence.\n", lss_deeplss_probe_name(p, 1),
                        sum_names[b], r1, rm);
            else
                fprintf(f, "- %s %s: efficiency %.3f against %.3f for the one-point moments alone: %s.\n", lss_deeplss_probe_name(p, 1),
                        sum_names[b], r1, rm, r1 > rm + sd ? "beyond the pixel statistics" : "at their level, within twice the errors");
            if (ip >= 0 && F[p * nsum + ip].F) {   /* against the spectra network of the same probes, paired */
                double ep, rp = lss_fisher_fom_ratio(net, F + p * nsum + ip, 0, 1, &ep);
                if (isfinite(rp)) fprintf(f, "  FoM over the PSD network's, paired on the same observations: %.3f +- %.3f.\n", rp, ep);
            }
        }
}

LSSDEF int lss_deeplss_fisher_save(const char *dir, const lss_fisher *F, int nsum, const char *const *sum_names, int first_net,
                                   const char *const *names, int64_t nfid, int64_t nder) {
    enum { A_IA = 2, R_G = 6 };   /* parameter order of Table I */
    char path[4096];
    lss_wfile w;
    int p, b, k, md, s;
    if (!dir || !F || nsum < 2 || !sum_names || !names)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_fisher_save: NULL argument or %d summaries (the two spectra first)", nsum);
    for (md = 0; md < 2; md++) {
        if ((s = lss__dl_path(path, sizeof path, dir, md ? "fisher.md" : "fisher.csv")) || (s = lss_wfile_open(&w, path))) return s;
        if (!md) {
            fprintf(w.f, "probe,summary,fom,fom_err,fom_ratio_ps_re,fom_ratio_ps_re_err,fom_ratio_ps_abs,fom_ratio_ps_abs_err");
            for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) fprintf(w.f, ",sigma_%s,sigma_%s_err", names[k], names[k]);
            fprintf(w.f, "\n");
        } else
            fprintf(w.f, "Fisher forecasts at the fiducial parameters from %lld fresh observations (covariance, Hartlap factor) and %lld "
                         "pairs per parameter at theta +- h (central differences with common random numbers; derivative noise bias "
                         "removed), Table I box as a Gaussian prior of the same variance. FoM = 1/sqrt(det Cov(%s, %s)); errors: "
                         "jackknife, ratios paired (same observations). Efficiency = FoM / FoM of the power spectra (Re X_i X_j*); "
                         "|.|: against the released code's |X_i X_j*| spectra. ps_re+moments: the spectra with the one-point joint moments of "
                         "the maps (the bound for a network that adds one-point information); moments: those moments alone (the level of "
                         "a network that learns only the pixel statistics). A network below %.2g is flagged undertrained. "
                         "[fisher.csv](fisher.csv) has every sigma.\n\n| probes | summary | FoM | efficiency (Re) | efficiency (abs) "
                         "| sigma(%s) / PS | sigma(%s) / PS | |\n|---|---|---|---|---|---|---|---|\n", (long long)nfid, (long long)nder,
                    names[0], names[1], LSS_DEEPLSS_UNDERTRAINED, names[A_IA], names[R_G]);
        for (p = 0; p < 3; p++)
            for (b = 0; b < nsum; b++) {
                const lss_fisher *f = F + p * nsum + b, *re = F + p * nsum, *ab = F + p * nsum + 1;
                double e0, e1, e2, ea, er, fo, r1, r2, ra, rr;
                if (!f->F) continue;
                fo = lss_fisher_fom(f, 0, 1, &e0);
                r1 = lss_fisher_fom_ratio(f, re, 0, 1, &e1);
                r2 = lss_fisher_fom_ratio(f, ab, 0, 1, &e2);
                ra = lss_fisher_sigma_ratio(f, re, A_IA, &ea);
                rr = lss_fisher_sigma_ratio(f, re, R_G, &er);
                if (!md) {
                    fprintf(w.f, "%s,%s,%.6g,%.3g,%.5f,%.3g,%.5f,%.3g", lss_deeplss_probe_name(p, 0), sum_names[b], fo, e0, r1, e1, r2, e2);
                    for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) fprintf(w.f, ",%.6g,%.3g", f->sigma[k], f->sigma_err[k]);
                    fprintf(w.f, "\n");
                } else
                    fprintf(w.f, "| %s | %s | %.4g +- %.2g | %.3f +- %.3f | %.3f +- %.3f | %.3f +- %.3f | %.3f +- %.3f | %s |\n",
                            lss_deeplss_probe_name(p, 1), sum_names[b], fo, e0, r1, e1, r2, e2, ra, ea, rr, er,
                            b >= first_net && r1 < LSS_DEEPLSS_UNDERTRAINED ? "undertrained" : "");
            }
        if (md) lss__dl_fisher_reading(w.f, F, nsum, sum_names, first_net);
        if ((s = lss_wfile_commit(&w))) return s;
    }
    return LSS_OK;
}

LSSDEF void lss_deeplss_fisher_md(const char *dir, FILE *md) {
    char path[4096], buf[4096];
    size_t nr;
    FILE *f;
    if (!md) return;
    fprintf(md, "\n## Summary efficiency (Fisher forecasts)\n\n");
    if (lss__dl_path(path, sizeof path, dir, "fisher.md") || !(f = fopen(path, "r"))) {
        fprintf(md, "No fisher.md in this directory (run `deeplss fisher`).\n");
        lss_clearerr();
        return;
    }
    while ((nr = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, nr, md);
    fclose(f);
}

LSSDEF void lss_deeplss_calibration_md(const lss_deeplss_numbers *r, const char *const *names, FILE *md) {
    int i, j, k;
    if (!r || !names || !md) return;
    fprintf(md, "\n## Calibration\n\n");
    if (r->have_cal) {
        fprintf(md, "Fraction of true values inside the 68%% interval (16-84 percentiles of the posterior), over mock observations at "
                    "random grid cosmologies and nuisance parameters (held-out fields and fresh noise), all 7 parameters pooled "
                    "(expected 0.68; bar 0.68 +- 0.06):\n\n| network | mocks | fraction | ");
        for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) fprintf(md, "%s | ", names[k]);
        fprintf(md, "\n|---|---|---|---|---|---|---|---|---|---|");   /* 3 + 7 columns */
        for (i = 0; i < 2; i++) {
            fprintf(md, "\n| %s combined | %lld | %.3f | ", i ? "PSD" : "CNN", (long long)r->cal_n[i], r->cal_frac[i]);
            for (k = 0; k < LSS_DEEPLSS_NPARAM; k++) fprintf(md, "%.2f | ", r->cal_par[i][k]);
        }
        fprintf(md, "\n\nPer mock and parameter: [calibration.csv](calibration.csv).\n");
    } else fprintf(md, "No calibration.csv in this directory.\n");
    fprintf(md, "\nMDN check of appendix C (dmu = (mean_MDN - mean_sim)/std_sim, dsig = (std_MDN - std_sim)/std_sim at held-out theta_t, "
                "median [16-84%%]): [mdn_check.csv](mdn_check.csv)\n\n");
    for (k = 0, j = 0; k < LSS_DEEPLSS_NNET; k++)
        if (r->have_check[k]) {
            const double *v = r->check[k];
            fprintf(md, "%s| %s %s | %.3f [%.3f, %.3f] | %.3f [%.3f, %.3f] |\n", j++ ? "" : "| network | dmu | dsig |\n|---|---|---|\n",
                    lss_deeplss_kind_name(k / 3), lss_deeplss_probe_name(k % 3, 0), v[0], v[1], v[2], v[3], v[4], v[5]);
        }
}

LSSDEF int lss_deeplss_gains_save(const lss_deeplss_numbers *r, const char *path) {
    const int NP = LSS_DEEPLSS_NPARAM, NG = LSS_DEEPLSS_NGAIN;
    static const char *const hdr[8] = {"probe", "param", "gain_median", "gain_p16", "gain_p84", "nmocks", "fom_cnn_median", "fom_psd_median"};
    double rows[3 * LSS_DEEPLSS_NGAIN * 8];
    int p, k;
    if (!r || !path) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_gains_save: NULL argument");
    for (p = 0; p < 3; p++)
        for (k = 0; k < NG; k++) {
            double *v = rows + (p * NG + k) * 8;
            v[0] = p; v[1] = k; v[2] = r->gain[p][k][0]; v[3] = r->gain[p][k][1]; v[4] = r->gain[p][k][2]; v[5] = (double)r->ngain[p];
            v[6] = k > NP ? r->fom[p][k - NP - 1][0] : NAN;
            v[7] = k > NP ? r->fom[3 + p][k - NP - 1][0] : NAN;
        }
    return lss_csv_write(path, 8, hdr, 3 * NG, rows);
}

LSSDEF int lss_deeplss_corners(const char *dir, const char *const *names, const double *truth, const double *lo,
                               const double *hi, int *nfig) {
    const int NP = LSS_DEEPLSS_NPARAM;
    static const char *const lb[2] = {"CNN", "PSD"}, *const lb3[3] = {"comb", "WL", "GC"}, *const nmz[2] = {"S8", "A_IA"};
    static const double l2[2] = {0.3, -6}, h2[2] = {1.3, 6};
    lss_array a[LSS_DEEPLSS_NNET];
    double *sa[3] = {0}, tr[2];
    const double *xs[3];
    int64_t ns[3];
    char title[128], path[4096];
    lss_corner_opts co;
    int k, p, s = LSS_OK, nf = 0;
    int64_t i;
    memset(a, 0, sizeof a);
    if (nfig) *nfig = 0;
    if (!dir || !names || !truth || !lo || !hi) return lss_seterr(LSS_ERR_ARG, "lss_deeplss_corners: NULL argument");
    for (k = 0; k < LSS_DEEPLSS_NNET && s == LSS_OK; k++) {
        FILE *f;
        if ((s = lss__dl_path(path, sizeof path, dir, "chain_fid_%s_%s.npy", lss__dl_kind[k / 3], lss__dl_probe[0][k % 3]))) break;
        if (!(f = fopen(path, "rb"))) continue;
        fclose(f);
        if ((s = lss_npy_load(path, &a[k]))) break;
        if (a[k].dtype != LSS_F64 || a[k].ndim != 2 || a[k].shape[1] != NP || a[k].shape[0] < 2)
            s = lss_seterr(LSS_ERR_FORMAT, "%s: expected a float64 chain [n >= 2, %d]", path, NP);
    }
    for (p = 0; p < 3 && s == LSS_OK; p++) {   /* figures 2 and 3 */
        if (!a[p].data || !a[3 + p].data) continue;
        memset(&co, 0, sizeof co);
        co.names = names; co.labels = lb; co.truth = truth; co.lo = lo; co.hi = hi;
        snprintf(title, sizeof title, "DeepLSS %s probes at the fiducial parameters: CNN vs PSD", lss__dl_probe[1][p]);
        co.title = title;
        xs[0] = (const double *)a[p].data; xs[1] = (const double *)a[3 + p].data; ns[0] = a[p].shape[0]; ns[1] = a[3 + p].shape[0];
        if ((s = lss__dl_path(path, sizeof path, dir, "corner_%s.png", lss__dl_probe[0][p])) == LSS_OK &&
            (s = lss_corner_png(path, 2, xs, ns, NP, &co)) == LSS_OK)
            nf++;
    }
    for (p = 0; p < 3 && s == LSS_OK && a[0].data && a[1].data && a[2].data; p++) {   /* figure 4 */
        const double *x = (const double *)a[p].data;
        ns[p] = a[p].shape[0];
        if (!(sa[p] = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)ns[p]))) {
            s = lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_corners: out of memory");
            break;
        }
        for (i = 0; i < ns[p]; i++) {
            sa[p][2 * i] = lss_s8(x[i * NP], x[i * NP + 1]);
            sa[p][2 * i + 1] = x[i * NP + 2];
        }
        xs[p] = sa[p];
        if (p == 2) {
            tr[0] = lss_s8(truth[0], truth[1]);
            tr[1] = truth[2];
            memset(&co, 0, sizeof co);
            co.names = nmz; co.labels = lb3; co.truth = tr; co.lo = l2; co.hi = h2; co.panel = 300; co.title = "S8-A_IA, CNN (fig. 4)";
            if ((s = lss__dl_path(path, sizeof path, dir, "s8_aia.png")) == LSS_OK && (s = lss_corner_png(path, 3, xs, ns, 2, &co)) == LSS_OK) nf++;
        }
    }
    for (p = 0; p < 3; p++) LSS_FREE(sa[p]);
    for (k = 0; k < LSS_DEEPLSS_NNET; k++) lss_array_free(&a[k]);
    if (nfig) *nfig = nf;
    return s;
}

LSSDEF int lss_deeplss_sensitivity_save(const float *map, const float *sens, int side, const char *dir, double (*rms)[3]) {
    const int NC = 2 * LSS_DEEPLSS_NBINS, lw = 150, top = 30;
    static const char *const rl[3] = {"map m", "dA_IA/dm", "dsigma_8/dm"};
    static const char *const hdr[4] = {"channel", "rms_dAIA_dm", "rms_dsigma8_dm", "rms_map"};
    static const unsigned char black[3] = {0, 0, 0};
    double rows[2 * LSS_DEEPLSS_NBINS * 4];
    char path[4096];
    int64_t plane, sh[4];
    int s, ch, row, sc;
    int64_t i;
    lss_image im;
    if (!map || !sens || !dir || side < 1 || side > 4096)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_sensitivity_save: NULL argument or side %d", side);
    plane = (int64_t)side * side;
    sc = side <= 64 ? (side <= 32 ? 4 : 2) : 1;
    sh[0] = 2; sh[1] = NC; sh[2] = side; sh[3] = side;
    if ((s = lss__dl_path(path, sizeof path, dir, "sensitivity.npy")) || (s = lss_npy_save(path, LSS_F32, 4, sh, sens))) return s;
    for (ch = 0; ch < NC; ch++) {   /* per-channel RMS */
        double u = 0, v = 0, m = 0;
        for (i = 0; i < plane; i++) {
            double a = sens[ch * plane + i], b = sens[(NC + ch) * plane + i], c = map[ch * plane + i];
            u += a * a; v += b * b; m += c * c;
        }
        rows[ch * 4] = ch; rows[ch * 4 + 1] = sqrt(u / plane); rows[ch * 4 + 2] = sqrt(v / plane); rows[ch * 4 + 3] = sqrt(m / plane);
        if (rms) { rms[ch][0] = rows[ch * 4 + 1]; rms[ch][1] = rows[ch * 4 + 2]; rms[ch][2] = rows[ch * 4 + 3]; }
    }
    if ((s = lss__dl_path(path, sizeof path, dir, "sensitivity.csv")) || (s = lss_csv_write(path, 4, hdr, NC, rows))) return s;
    /* panels of at least 160 pixels, each with its colour bar: the maps on viridis, the sensitivities (signed
       gradients) on the diverging RdBu map centred on zero, each panel on its own symmetric range */
    sc = (160 + side - 1) / side;
    sc = sc < 1 ? 1 : sc;
    {
        int pw = 0, ph = 0, cw, chh;
        lss_image_map_panel_size(side, side, -0.0125, 0.0125, sc, &cw, &chh); /* the widest labels: "-0.0125" */
        pw = cw + 12;
        ph = chh + 8;
        if ((s = lss_image_init(&im, lw + NC * pw + 10, top + 14 + 3 * ph + 10))) return s;
        lss_image_text_size(&im, 8, 8, "Sensitivity of the combined-probe CNN (section VI, figure 6): kappa_g bins 1-4, delta_g bins 1-4",
                            black, LSS_FONT_LABEL);
        for (row = 0; row < 3; row++) {
            int y0 = top + 14 + row * ph;
            lss_image_text_size(&im, 8, y0 + 22 + side * sc / 2 - 8, rl[row], black, LSS_FONT_LABEL);
            for (ch = 0; ch < NC; ch++) {
                const float *mp = row == 0 ? map + ch * plane : sens + ((int64_t)(row - 1) * NC + ch) * plane;
                double lo = 0, hi = 0;
                char lab[48];
                snprintf(lab, sizeof lab, "%s %s%d", row == 0 ? "m" : row == 1 ? "dA_IA/dm" : "ds8/dm", ch < LSS_DEEPLSS_NBINS ? "kappa" : "delta",
                         ch % LSS_DEEPLSS_NBINS + 1);
                if (row == 0) lss_map_range(mp, plane, LSS_CMAP_VIRIDIS, &lo, &hi);
                lss_image_map_panel(&im, lw + ch * pw, y0, mp, side, side, lo, hi, sc, row == 0 ? LSS_CMAP_VIRIDIS : LSS_CMAP_RDBU, lab);
            }
        }
    }
    if ((s = lss__dl_path(path, sizeof path, dir, "sensitivity.png")) == LSS_OK) s = lss_image_save_png(&im, path);
    lss_image_free(&im);
    return s;
}

/* DIR/name (a format with one string) as a float64 [n][7] array; n_expect >= 0 checks the rows. */
static int lss__dl_load7(const char *dir, const char *fmt, const char *a, int64_t n_expect, int64_t *n, double **v) {
    char path[4096];
    lss_array r;
    int s;
    *v = NULL;
    if ((s = lss__dl_path(path, sizeof path, dir, fmt, a)) || (s = lss_npy_load(path, &r))) return s;
    if (r.dtype != LSS_F64 || r.ndim != 2 || r.shape[1] != LSS_DEEPLSS_NPARAM || r.shape[0] < 1 || (n_expect >= 0 && r.shape[0] != n_expect)) {
        lss_array_free(&r);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected a float64 array [%lld, %d]", path, (long long)n_expect, LSS_DEEPLSS_NPARAM);
    }
    *n = r.shape[0];
    *v = (double *)r.data;
    return LSS_OK;
}

static int lss__dl_mask_check(const char *dir, const lss_deeplss_cfg *c, int mask, const char *who) {
    if (!dir || !c || mask <= 0 || mask >= (1 << LSS_DEEPLSS_NNET))
        return lss_seterr(LSS_ERR_ARG, "%s: NULL directory or configuration, or network mask %d", who, mask);
    return lss_deeplss_cfg_check(c);
}

LSSDEF int lss_deeplss_mdn_stage(const char *dir, const lss_deeplss_cfg *c, int mask, lss_deeplss_fit_info *fit) {
    const int NP = LSS_DEEPLSS_NPARAM;
    static const char *const hdr[8] = {"kind", "probe", "dmu_median", "dmu_lo", "dmu_hi", "dsig_median", "dsig_lo", "dsig_hi"};
    int k, i, s, nr = 0, nck, NR;
    int64_t n = 0, n2;
    double *tt = NULL, *tp = NULL, *ct = NULL, *cp = NULL, *ctu = NULL, *dmu = NULL, *dsig = NULL, rows[LSS_DEEPLSS_NNET * 8];
    char path[4096], net[16];
    lss_mdn *m = NULL;
    lss_mdn_opts mo;
    lss_mdn_check_summary cs;
    if ((s = lss__dl_mask_check(dir, c, mask, "lss_deeplss_mdn_stage"))) return s;
    nck = c->ncheck > 0 ? c->ncheck : 1;
    NR = c->ncheck * c->check_rep;
    lss_deeplss_mdn_opts(c, &mo);
    if ((s = lss__dl_load7(dir, "theta_mdn.npy", NULL, -1, &n, &tt)) ||
        (c->ncheck > 0 && (s = lss__dl_load7(dir, "theta_check.npy", NULL, NR, &n2, &ct))))
        goto out;
    dmu = (double *)LSS_MALLOC(sizeof(double) * (size_t)nck * NP);
    dsig = (double *)LSS_MALLOC(sizeof(double) * (size_t)nck * NP);
    ctu = (double *)LSS_MALLOC(sizeof(double) * (size_t)nck * NP);
    if (!dmu || !dsig || !ctu) { s = lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_mdn_stage: out of memory"); goto out; }
    for (i = 0; i < c->ncheck; i++) memcpy(ctu + i * NP, ct + (size_t)i * c->check_rep * NP, sizeof(double) * NP);
    for (k = 0; k < LSS_DEEPLSS_NNET; k++) {
        if (!((mask >> k) & 1)) continue;
        snprintf(net, sizeof net, "%s_%s", lss__dl_kind[k / 3], lss__dl_probe[0][k % 3]);
        if ((s = lss__dl_load7(dir, "pred_mdn_%s.npy", net, n, &n2, &tp)) || (s = lss_mdn_create(NP, NP, &mo, &m)) ||
            (s = lss_mdn_fit(m, tt, tp, n, &mo)) || (s = lss__dl_path(path, sizeof path, dir, "mdn_%s.ckpt", net)) ||
            (s = lss_mdn_save(m, path)))
            goto out;
        if (fit) { fit[k].epochs = m->epochs; fit[k].best_epoch = m->best_epoch; fit[k].best_val = m->best_val; }
        if (c->ncheck > 0) {   /* the MDN's samples against held-out simulated summaries at the same theta_t */
            double *r = rows + nr++ * 8;
            if ((s = lss__dl_load7(dir, "pred_check_%s.npy", net, NR, &n2, &cp)) ||
                (s = lss_mdn_check(m, ctu, c->ncheck, cp, c->check_rep, 1000, lss_stream_key(c->seed, LSS_STREAM_CHECK, (uint64_t)k, 0), dmu, dsig)) ||
                (s = lss__dl_path(path, sizeof path, dir, "mdn_check_%s.csv", net)) || (s = lss_mdn_check_report(dmu, dsig, c->ncheck, NP, path, &cs)))
                goto out;
            r[0] = k / 3; r[1] = k % 3; r[2] = cs.dmu_median; r[3] = cs.dmu_lo; r[4] = cs.dmu_hi;
            r[5] = cs.dsig_median; r[6] = cs.dsig_lo; r[7] = cs.dsig_hi;
        }
        lss_mdn_free(m); m = NULL;
        LSS_FREE(tp); tp = NULL;
        LSS_FREE(cp); cp = NULL;
    }
    if (nr > 0 && (s = lss__dl_path(path, sizeof path, dir, "mdn_check.csv")) == LSS_OK) s = lss_csv_write(path, 8, hdr, nr, rows);
out:
    lss_mdn_free(m);
    LSS_FREE(tt); LSS_FREE(tp); LSS_FREE(ct); LSS_FREE(cp); LSS_FREE(ctu); LSS_FREE(dmu); LSS_FREE(dsig);
    return s;
}

LSSDEF int lss_deeplss_mcmc_stage(const char *dir, const lss_deeplss_cfg *c, int mask, const lss_chain_opts *co,
                                  const double *fiducial, const char *const *names, int ncopy,
                                  int (*progress)(int done, int total, void *user), void *user, int *njobs, int *nfail) {
    lss_mdn **mdn = NULL;
    lss_mdn_opts mo;
    lss_deeplss_plan pl;
    lss_deeplss_job *jobs = NULL;
    double *arr[2 * LSS_DEEPLSS_NNET + 1] = {0};
    int64_t n;
    char path[4096], net[16];
    int i, k, t, nj = 0, s;
    if (njobs) *njobs = 0;
    if (nfail) *nfail = 0;
    if ((s = lss__dl_mask_check(dir, c, mask, "lss_deeplss_mcmc_stage"))) return s;
    if (!co || !fiducial || !names || ncopy < 1 || ncopy > 64)
        return lss_seterr(LSS_ERR_ARG, "lss_deeplss_mcmc_stage: NULL argument or %d copies (1..64)", ncopy);
    memset(&pl, 0, sizeof pl);
    lss_deeplss_mdn_opts(c, &mo);
    pl.nfid = c->nfid; pl.ncal = c->ncal; pl.fiducial = fiducial; pl.seed = c->seed;
    for (k = 0; k < LSS_DEEPLSS_NNET; k++) if ((mask >> k) & 1) pl.id[pl.nnet++] = k;
    if (!(mdn = (lss_mdn **)LSS_MALLOC(sizeof *mdn * (size_t)ncopy * (size_t)pl.nnet)))
        return lss_seterr(LSS_ERR_NOMEM, "lss_deeplss_mcmc_stage: out of memory");
    memset(mdn, 0, sizeof *mdn * (size_t)ncopy * (size_t)pl.nnet);
    for (i = 0; i < pl.nnet; i++) {   /* per network: the MDN copies, its fiducial and (combined probes) calibration summaries */
        k = pl.id[i];
        snprintf(net, sizeof net, "%s_%s", lss__dl_kind[k / 3], lss__dl_probe[0][k % 3]);
        if ((s = lss__dl_path(path, sizeof path, dir, "mdn_%s.ckpt", net))) goto out;
        for (t = 0; t < ncopy; t++)
            if ((s = lss_mdn_create(LSS_DEEPLSS_NPARAM, LSS_DEEPLSS_NPARAM, &mo, &mdn[t * pl.nnet + i])) || (s = lss_mdn_load(mdn[t * pl.nnet + i], path)))
                goto out;
        if ((s = lss__dl_load7(dir, "pred_fid_%s.npy", net, c->nfid, &n, &arr[i]))) goto out;
        pl.fid[i] = arr[i];
        if (k % 3 || c->ncal <= 0) continue;
        if ((s = lss__dl_load7(dir, "pred_cal_%s.npy", net, c->ncal, &n, &arr[LSS_DEEPLSS_NNET + i])) ||
            (!arr[2 * LSS_DEEPLSS_NNET] && (s = lss__dl_load7(dir, "theta_cal.npy", NULL, c->ncal, &n, &arr[2 * LSS_DEEPLSS_NNET]))))
            goto out;
        pl.cal[i] = arr[LSS_DEEPLSS_NNET + i];
        pl.cal_theta = arr[2 * LSS_DEEPLSS_NNET];
    }
    if ((s = lss_deeplss_jobs(&pl, mdn, &jobs, &nj)) || (s = lss_deeplss_chains(mdn, pl.nnet, ncopy, co, jobs, nj, progress, user)) ||
        (s = lss_deeplss_jobs_save(&pl, jobs, nj, names, dir, nfail)))
        goto out;
    if (njobs) *njobs = nj;
out:
    for (i = 0; i < ncopy * pl.nnet; i++) lss_mdn_free(mdn[i]);
    for (i = 0; i <= 2 * LSS_DEEPLSS_NNET; i++) LSS_FREE(arr[i]);
    LSS_FREE(mdn);
    lss_deeplss_jobs_free(jobs, nj);
    return s;
}

#endif /* LSS_INFER_IMPLEMENTATION_DONE */
#endif /* LSS_INFER_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under the MIT License (the file LICENSE).
------------------------------------------------------------------------------
MIT License
Copyright (c) 2026 the lss authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
*/
