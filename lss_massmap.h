/* lss_massmap.h - weak-lensing mass mapping: shear/convergence operators, shear catalogue binning,
 * mock COSMOS-like data sets, Kaiser-Squires, Wiener filter (exact and iterative), the Gaussian prior
 * score, posterior sampling by annealed HMC + probability-flow ODE, the neural score prior, metrics,
 * the Table 1 evaluation, NFW clusters and starlet aperture-mass detection. Part of lss; includes
 * lss_core.h, lss_maps.h (its STATISTICS section: grids, FFTs, fields, spectra, smoothing; FFTW3) and
 * lss_nn.h (the U-net, checkpoints and optimizers of the neural prior).
 *
 * In exactly one C file:   #define LSS_MASSMAP_IMPLEMENTATION   before   #include "lss_massmap.h"
 * (and LSS_CORE_IMPLEMENTATION, LSS_MAPS_IMPLEMENTATION, LSS_NN_IMPLEMENTATION once somewhere). Link with
 * -lfftw3f -lfftw3 -lcfitsio -lm (and -fopenmp for parallel chains; -lcfitsio not needed with LSS_NO_FITS).
 *
 * Contents (public function groups)
 *   operators            lss_mm_kappa_to_shear, lss_mm_shear_to_kappa, lss_mm_ks
 *   theory               lss_mm_params_planck15, lss_mm_theory_ckk, lss_mm_theory_kappa_empty
 *   data                 lss_mm_catalogue_load/_free, lss_mm_bin, lss_mm_bin_sky, lss_mm_sky_to_pix,
 *                        lss_mm_pix_to_sky, lss_mm_sky_shear, lss_mm_sky_json, lss_mm_shear_load
 *   FITS files           lss_mm_fits_path, lss_mm_fits_read_image, lss_mm_fits_write_image,
 *                        lss_mm_fits_read_table, lss_mm_fits_write_table (cfitsio; maps, noise maps, masks,
 *                        catalogues; lss_mm_catalogue_load and lss_mm_shear_load take .fits paths too)
 *   mock pieces          lss_mm_mock_mask, lss_mm_mock_noise_map, lss_mm_mock_shear, lss_mm_mock_kappa,
 *                        lss_mm_field, lss_mm_field_stream; convergence maps of any cosmology (the cGAN
 *                        emulator's training data) lss_mm_kappa_gen_create/_free, lss_mm_kappa_draw,
 *                        lss_mm_kappa_draw_mean
 *   halo-model mocks     lss_mm_halo_create/_free, lss_mm_halo_field (halos from the Sheth-Tormen mass function with
 *                        Duffy concentrations and projected truncated NFW profiles, modulated by shell densities, plus a
 *                        Gaussian smooth part up to the Halofit C_kk), lss_mm_halo_sigma, _st_f, _dndlnm, _bias,
 *                        _concentration, _r200m, _rho_m, _tnfw_f, _tnfw_u, _paint, _spectra, _counts
 *   mock data sets       lss_mm_mock_create/_free, lss_mm_mock_save, lss_mm_mock_load, lss_mm_mock_grid
 *   estimators           lss_mm_wiener_fourier, lss_mm_wiener, lss_mm_wiener_sample, lss_mm_wiener_apply,
 *                        lss_mm_gauss_score
 *   posterior, sampling  lss_mm_post_create/_free, lss_mm_post_set_residual, lss_mm_post_score,
 *                        lss_mm_sample, lss_mm_sample_batched, lss_mm_sample_preset, lss_mm_schedule_parse,
 *                        lss_mm_auto_sigma_min, lss_mm_sampler_sigma_range, lss_mm_mean_std,
 *                        lss_mm_exact_lognormal (the exact posterior of a lognormal mock's own model)
 *   metrics, evaluation  lss_mm_metrics, lss_mm_ks_scales, lss_mm_ks_best, lss_mm_eval/_free, lss_mm_eval_save
 *   clusters, detection  lss_mm_nfw_params, lss_mm_nfw_f/_g, lss_mm_nfw_add, lss_mm_starlet_filter/_u,
 *                        lss_mm_detect_theta, lss_mm_filtered_std, lss_mm_detect_peak, lss_mm_detect_rate,
 *                        lss_mm_detect/_free, lss_mm_detect_save
 *   neural prior         lss_mm_net_create/_free, lss_mm_net_open, lss_mm_net_save/_load/_probe,
 *                        lss_mm_net_residual, lss_mm_net_deepmass, lss_mm_net_train, lss_mm_net_heldout,
 *                        lss_mm_net_heldout_sigma, lss_mm_sigma_grid, lss_mm_train_on_mock, lss_mm_heldout_sigma_on_mock
 *   diffusion generator  lss_mm_diff_create/_free, lss_mm_diff_nparams, lss_mm_diff_options, lss_mm_diff_save,
 *                        lss_mm_diff_open, lss_mm_diff_set_score, lss_mm_diff_set_ode, lss_mm_diff_set_gauss,
 *                        lss_mm_diff_gauss_estimate, lss_mm_diff_set_gauss_cov, lss_mm_diff_gauss_cov_estimate,
 *                        lss_mm_diff_score,
 *                        lss_mm_diff_train, lss_mm_diff_loss, lss_mm_diff_sample (ancestral, DDIM, second-order
 *                        DDIM, probability-flow ODE), lss_mm_diff_nll (variational bound on -ln p, nats)
 *
 * Conventions (used everywhere, files included); grids, FFT normalisation, multipoles and spectrum
 * binning are those of the STATISTICS section of lss_maps.h.
 *   - A map is a float array [H, W] indexed [y, x] (row y, column x, as an image), C order.
 *   - Sky positions (ra/dec catalogues, lss_mm_sky): gnomonic projection about a tangent point; x increases
 *     to the WEST (east is left, the sky as seen) and y to the north, unless flip_ra (x to the east).
 *     Ellipticities of ra/dec catalogues are expected in the sky frame (+e1 along RA, +e2 along the
 *     north-east diagonal, angles from east towards north); on the grid e2 changes sign (x to the west is a
 *     mirror of the east-north frame) after a rotation by the angle between the local north and the grid's y
 *     axis: g1 + i g2 = conj(e exp(2i dtheta)) (see lss_mm_sky). e2_sign = -1 reads catalogues of the other
 *     handedness. Pixel catalogues are used as given (x, y and e1, e2 in the grid frame).
 *   - gamma1 + i gamma2 = F^-1[ ((k_x^2 - k_y^2) + 2i k_x k_y) / k^2  F[kappa_E + i kappa_B] ] (the spin-2
 *     tables lss_grid_cos2/sin2): the operator P is unitary (P^dagger P = 1) for every k != 0 and its
 *     k = 0 cell is 0. On even grids the Nyquist cell carries the sign of the other frequency, which keeps
 *     P unitary and the output real; this differs from numpy's .real of a plain complex-FFT product
 *     (which zeroes p2 there) only on those cells.
 *   - Spectra: P_pix = C_ell / pix^2 on the grid, no pixel window; the k = 0 cell of the prior is 0:
 *     every map this header reconstructs or samples has zero mean (the mass-sheet mode is fixed).
 *   - Noise: per-pixel variance of each shear component, sigma_e^2 / N (eq. 26 of Remy et al.
 *     2022); empty or masked pixels carry LSS_MM_EMPTY_VAR = 1e10 and shear 0.
 *   - Metrics (RMSE, Pearson r) are computed over observed pixels after subtracting from each map
 *     its mean over those observed pixels.
 *   - Randomness through the registry of lss_core.h: convergence fields LSS_STREAM_MM_FIELD with data sets
 *     (mocks and evaluation LSS_SET_TEST, training LSS_SET_TRAIN, held-out LSS_SET_VALID, comparison
 *     simulations LSS_SET_FIDUCIAL), masks MM_MASK, counts MM_COUNTS, noise MM_NOISE, chains MM_CHAIN
 *     (index = chain, sub = job), DSM noise MM_DSM; the diffusion generator sub LSS_MM_SUB_DIFF of MM_DSM
 *     (training noise) and MM_CHAIN (index = sample), LSS_MM_SUB_DIFF_NLL of MM_DSM (its likelihood bound).
 *     No seed is derived by arithmetic.
 *   - Outputs last; created objects through a trailing **out; _create/_free pairs.
 *
 * Example: Wiener filter and posterior samples of a mock field (error checks shortened)
 *     lss_grid *g;  lss_mm_post *post;
 *     lss_grid_create(64, 64, 1.0, &g);                       // 64 x 64 pixels of 1 arcmin
 *     double *pk = malloc(sizeof(double) * 64 * 64);
 *     lss_grid_spectrum(g, ell, cl, nell, pk);                // C_kk(ell) -> grid spectrum
 *     lss_field_gaussian(g, pk, 42, lss_mm_field_stream(LSS_SET_TEST, 0), kappa);  // a truth map
 *     lss_mm_kappa_to_shear(g, kappa, NULL, g1, g2);          // + noise of variance nv per pixel
 *     lss_mm_wiener(g, pk, g1, g2, nv, NULL, wf, NULL, NULL); // MAP under the Gaussian prior
 *     lss_mm_post_create(g, pk, g1, g2, nv, &post);
 *     lss_mm_sample_opts so = {0}; so.nchains = 8; so.seed = 1;
 *     lss_mm_sample_preset(LSS_MM_SCHEDULE_FAST, &so);
 *     lss_mm_sample(post, &so, samples, NULL);                // 8 independent posterior samples
 *     lss_mm_post_free(post); lss_grid_free(g);
 *
 * Sampling (lss_mm_sample). Annealed HMC on the tempered posterior (eq. 25: prior convolved at
 * sigma, likelihood variance nvar + sigma^2) from sigma_max down to sigma_min, then the
 * probability-flow ODE (eq. 22) with Dormand-Prince RK45. Defaults follow the reference
 * (sigma 1 -> 8e-3 by x0.98, 12 steps per level, 3 leapfrog steps, Simpson rule on 5 points with
 * the endpoint scores reused); two additions, both validated against the exact Wiener posterior:
 * a Fourier-diagonal mass matrix M = 1/(P + s^2) + mean(1/(nvar + s^2)) (the default; the
 * reference's identity is LSS_MM_MASS_IDENTITY) and an exact Metropolis-Hastings ratio for the
 * Gaussian parts, the Simpson path integral being kept for the residual (neural) score only. With
 * them the schedule LSS_MM_SCHEDULE_FAST (x0.6, 2 steps per level, 10 at the end; lss_mm_sample_preset,
 * the one definition) gives the same posterior as the reference schedule for about 1% of the score
 * evaluations. sigma_min must lie well below the
 * noise standard deviation (the tempered family is not the convolved posterior, so the ODE only
 * removes the last sigma^2 when sigma^2 << nvar). Without a residual score the chains are
 * independent and run one per thread; with one they advance in lock step so that the network
 * sees whole batches.
 * Neural prior (lss_mm_net_*): the U-net of lss_nn.h as the residual score (eqs. 23-24) or as the
 * DeepMass baseline; trained on simulated maps drawn on the fly by the training loop of lss_nn.h
 * (lss_train: held-out loss, loss CSV, plateau stop, checkpoints with exact resume); checkpoints in
 * lss_nn's format.
 *
 * Options: LSS_MALLOC/LSS_REALLOC/LSS_FREE (see lss_core.h); LSS_NO_OPENMP ignores OpenMP; LSS_NO_FITS builds without
 * cfitsio (the FITS functions then return LSS_ERR_UNSUPPORTED).
 * Threads: a grid holds one FFT workspace per OpenMP thread; functions of this header may be called
 * from the threads of one parallel region (nested regions fall back to a temporary workspace).
 * Create grids outside parallel regions (FFTW planning is not thread-safe).
 *
 * Version 0.1.0.
 */
#ifndef LSS_MASSMAP_H
#define LSS_MASSMAP_H
#include "lss_core.h"
#include "lss_maps.h"
#include "lss_nn.h"

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_MASSMAP_IMPLEMENTATION
#define LSS_MASSMAP_IMPLEMENTATION
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define LSS_MM_EMPTY_VAR 1e10          /* noise variance of an empty or masked pixel (eq. 26) */
#define LSS_MM_SHEAR_MAX 10.0          /* largest |e1|, |e2| of a catalogue (a larger one is a unit error or a -99
                                          flag, not a measurement) */
#define LSS_MM_SHEAR_MAP_MAX 1e3       /* largest |gamma| of a shear map read from a file (1e38 would make inf maps) */
#define LSS_MM_WEIGHT_MAX 1e10         /* largest catalogue weight */
#define LSS_MM_COSMOS_PIX_ARCMIN 0.29  /* COSMOS mock: 360 x 360 pixels of 0.29 arcmin */
#define LSS_MM_COSMOS_NPIX 360
#define LSS_MM_COSMOS_SIGMA_E 0.305    /* shape noise per component */
#define LSS_MM_COSMOS_NGAL 71.7        /* galaxies per arcmin^2 of observed pixels (6.03 per pixel;
                                          64.2 per arcmin^2 over the survey footprint) */
#define LSS_MM_COSMOS_OBSERVED 0.534   /* fraction of observed pixels */
#define LSS_MM_SIGMA_MIN 8e-3          /* last HMC temperature of the reference */
#define LSS_MM_SIGMA_MIN_NOISE 0.1     /* ... at most this times the smallest noise standard deviation */
#define LSS_MM_DETECT_THETA_PIX 16.0   /* starlet aperture (pixels), at most an eighth of the field */
#define LSS_MM_DETECT_DISC 0.5         /* detection disc radius around the halo, in apertures */
#define LSS_MM_DETECT_THRESHOLD 3.0    /* detection level in standard deviations of the background */
#define LSS_MM_KS_NSCALES 8            /* smoothing scales scanned for Kaiser-Squires (lss_mm_ks_scales) */
#define LSS_MM_SPECTRUM_BINS 10        /* ell bins of the evaluation spectra */
/* subs of the streams of this header (see lss_stream in lss_core.h) */
#define LSS_MM_SUB_WIENER_SIGNAL 4094u /* constrained realisations: the signal draw */
#define LSS_MM_SUB_WIENER_NOISE 4095u  /* constrained realisations: the noise draw */
#define LSS_MM_SUB_CATALOGUE 1u        /* mock catalogue positions and shapes (purpose MM_NOISE) */
#define LSS_MM_SUB_SPECTRAL 4095u      /* spectral-norm start vectors (purpose NET_INIT) */

/* ---------------------------------------------------------------- operators
 * Grids, FFTs, grid spectra, Gaussian and lognormal fields, smoothing and binned power spectra come from
 * the STATISTICS section of lss_maps.h (lss_grid_*, lss_field_*, lss_ps_*); this header uses them. */
/* kappa (E, B; kB may be NULL for a pure E field) -> shear (g1, g2). Maps of h*w floats. */
LSSDEF int lss_mm_kappa_to_shear(const lss_grid *g, const float *kE, const float *kB, float *g1,
                                 float *g2);
/* shear -> kappa (Kaiser-Squires, eqs. 5-7): kE and kB (kB may be NULL). */
LSSDEF int lss_mm_shear_to_kappa(const lss_grid *g, const float *g1, const float *g2, float *kE,
                                 float *kB);
/* Kaiser-Squires followed by periodic Gaussian smoothing (lss_grid_smooth) of both modes (eqs. 10-11);
 * kB may be NULL. */
LSSDEF int lss_mm_ks(const lss_grid *g, const float *g1, const float *g2, double smooth_arcmin,
                     float *kE, float *kB);

/* The cosmology of the mass-mapping paper's Gaussian prior: Planck 2015 (Table 4, last column):
 * Omega_m = 0.3089, sigma_8 = 0.8159, h = 0.6774, n_s = 0.9667, Omega_b = 0.0486; no IA. */
LSSDEF void lss_mm_params_planck15(lss_params *p);
/* Convergence power spectrum C_kk(ell) of a source n(z) ("cosmos", "deeplss" bin 1, or a path to a
 * two-column table) for cosmology p (NULL: lss_mm_params_planck15), from lss_maps.h (Halofit). */
LSSDEF int lss_mm_theory_ckk(const lss_params *p, const char *nz, int nell, const double *ell,
                             double *cl);

/* Empty-beam convergence of the n(z) (the value kappa takes where delta = -1 along every line of
 * sight): int W_WL(chi) dchi; the natural shift of a lognormal convergence model. */
LSSDEF int lss_mm_theory_kappa_empty(const lss_params *p, const char *nz, double *kappa_empty);

/* ---------------------------------------------------------------- data */
/* A shear catalogue: n galaxies, positions (x, y in pixels, or ra, dec in degrees), ellipticities
 * and weights (all 1 when the file has none). Free with lss_mm_catalogue_free. */
typedef struct {
    int64_t n;
    int radec;              /* 1: x = ra, y = dec in degrees; 0: pixel coordinates */
    double *x, *y, *e1, *e2, *w;
} lss_mm_catalogue;
/* CSV with a header naming x,y or ra,dec, e1,e2 and optionally w or weight; or NPY [n, 4|5] with
 * columns (x, y, e1, e2[, w]) (radec_npy = 1 reads the first two as ra, dec); or a FITS table (a path ending in
 * .fits, .fit, .fts[.gz]: lss_mm_fits_read_table of its first table; radec_npy unused). Every value checked: finite
 * positions (|ra| <= 360, |dec| <= 90 degrees), |e1|, |e2| <= LSS_MM_SHEAR_MAX, weights in [0, LSS_MM_WEIGHT_MAX];
 * LSS_ERR_FORMAT naming the galaxy, the column and the value otherwise. */
LSSDEF int lss_mm_catalogue_load(const char *path, int radec_npy, lss_mm_catalogue *cat);
LSSDEF void lss_mm_catalogue_free(lss_mm_catalogue *cat);

/* The sky coordinates of a grid: gnomonic (tangent-plane) projection about the tangent point (ra0,
 * dec0). With xi, eta the standard coordinates (radians; xi towards the east, eta towards the north):
 *     cos c = sin dec0 sin dec + cos dec0 cos dec cos(ra - ra0),
 *     xi = cos dec sin(ra - ra0) / cos c,   eta = (cos dec0 sin dec - sin dec0 cos dec cos(ra - ra0)) / cos c,
 * a position maps to the continuous pixel coordinates (pixel [j] spans [j, j + 1))
 *     x = x0 - xi / pix   (default: x increases to the WEST, east is left, the sky as seen)
 *     x = x0 + xi / pix   (flip_ra = 1: x increases to the east, along RA; a mirror image of the sky)
 *     y = y0 + eta / pix  (y increases to the north).
 * Ellipticities (and shears) of the sky frame: e = |e| exp(2i phi) with phi measured at the galaxy
 * from the local east (increasing RA) towards the local north, i.e. +e1 along RA, +e2 along the
 * north-east diagonal (the frame of most published catalogues). On the grid the angle of the same
 * direction is phi + dtheta (tangent plane, eta towards north: dtheta = atan2(xi sin dec0,
 * cos dec0 - eta sin dec0) is the angle between the local north and the eta axis, 0 on the central
 * meridian and at dec0 = 0), then pi - (phi + dtheta) with x to the west (a mirror). Hence
 *     x to the west (default):  g1 = Re[e exp(2i dtheta)],  g2 = -Im[e exp(2i dtheta)]   (e2 changes sign)
 *     x to the east (flip_ra):  g1 = Re[e exp(2i dtheta)],  g2 = +Im[e exp(2i dtheta)],
 * which makes the shear of a mass tangential on the grid as on the sky (KS E mode positive on it). */
typedef struct {
    double ra0, dec0;      /* tangent point (degrees) */
    double pix_arcmin;     /* pixel size on the tangent plane (arcmin, > 0) */
    double x0, y0;         /* continuous pixel coordinates of the tangent point */
    int flip_ra;           /* 0: x to the west (east left); 1: x to the east */
} lss_mm_sky;
/* (ra, dec) in degrees -> continuous pixel coordinates. LSS_ERR_RANGE for a position 90 degrees or more
 * from the tangent point (no gnomonic image), LSS_ERR_ARG for a bad frame or non-finite input. */
LSSDEF int lss_mm_sky_to_pix(const lss_mm_sky *s, double ra, double dec, double *x, double *y);
/* Continuous pixel coordinates -> (ra in [0, 360), dec) in degrees; the exact inverse of lss_mm_sky_to_pix. */
LSSDEF int lss_mm_pix_to_sky(const lss_mm_sky *s, double x, double y, double *ra, double *dec);
/* Ellipticity (e1, e2) of the sky frame at (ra, dec) -> (g1, g2) of the grid frame (see above). */
LSSDEF int lss_mm_sky_shear(const lss_mm_sky *s, double ra, double dec, double e1, double e2, double *g1,
                            double *g2);
/* A shear map file: NPY [2, H, W] (gamma1, gamma2), or field `field` of a stack [K, 2, H, W]; or a FITS cube
 * (lss_mm_fits_read_image, first image HDU) of 2 planes (gamma1, gamma2) or 2K planes for K fields (field f:
 * planes 2f and 2f + 1); into one allocation *g of 2 H W floats (gamma2 = *g + H W; free with LSS_FREE).
 * LSS_ERR_SHAPE for another shape, a missing field or a map smaller than 2 x 2 (or above 65536 a side),
 * LSS_ERR_FORMAT naming the pixel for a value that is not finite or exceeds LSS_MM_SHEAR_MAP_MAX in modulus. */
LSSDEF int lss_mm_shear_load(const char *path, int field, float **g, int *h, int *w);

/* The frame as a JSON object (projection, ra0_deg, dec0_deg, pixel_arcmin, ref_pixel_xy, x_axis, y_axis,
 * ellipticity_frame with the e2_sign used) into buf of n bytes; LSS_ERR_RANGE when it does not fit. */
LSSDEF int lss_mm_sky_json(const lss_mm_sky *s, int e2_sign, char *buf, size_t n);

typedef struct {
    int h, w;              /* grid size; 0: the bounding box of the positions */
    double pix_arcmin;     /* pixel size for ra/dec input (0: LSS_MM_COSMOS_PIX_ARCMIN) */
    double sigma_e;        /* shape noise per component; 0: estimated from the catalogue */
    double x0, y0;         /* pixel catalogues: pixel origin of the grid; used when set_origin = 1 */
    int set_origin;
    /* ra/dec catalogues (see lss_mm_sky) */
    double ra0, dec0;      /* tangent point (degrees); used when set_centre = 1 (else: the mean direction of the
                              galaxies) */
    int set_centre;
    int flip_ra;           /* 1: x increases to the east (default 0: to the west, east left) */
    int e2_sign;           /* 0 or 1: e2 as given (ra/dec: the sky frame of lss_mm_sky); -1: e2 of the other
                              handedness (e.g. measured in image pixels with x to the west), negated first
                              (both kinds of catalogue) */
} lss_mm_bin_opts;
/* Bins a catalogue: g1, g2 = weighted mean ellipticity per pixel, nvar = sigma_e^2 sum w^2/(sum w)^2
 * (sigma_e^2/N for unit weights; LSS_MM_EMPTY_VAR and shear 0 where empty), count = galaxies per
 * pixel (may be NULL). Pixel coordinates: galaxy at (x, y) falls in pixel [floor(y), floor(x)], its
 * (e1, e2) used as given. ra/dec: the position projected by lss_mm_sky_to_pix with the frame of
 * lss_mm_bin_sky, the ellipticity turned into the grid frame by lss_mm_sky_shear. The arrays must hold
 * h*w values: call with g1 == NULL first to get *h_out, *w_out. Galaxies outside are dropped and
 * counted in *dropped (may be NULL). */
LSSDEF int lss_mm_bin(const lss_mm_catalogue *cat, const lss_mm_bin_opts *o, int *h_out, int *w_out,
                      float *g1, float *g2, float *nvar, float *count, int64_t *dropped,
                      double *sigma_e_used);
/* Grids of lss_mm_bin: at most LSS_MM_BIN_MAX_PIX pixels (8192 x 8192: 1 GB of float maps written, 2 GB more
 * while binning); a grid sized from the galaxies' bounding box (h, w not given) beyond LSS_MM_BIN_SPARSE_PIX
 * pixels needs a galaxy per 1000 pixels (two stray positions make no 4096 x 4096 map). LSS_ERR_RANGE
 * otherwise, with the size and what it would cost. */
#define LSS_MM_BIN_MAX_PIX ((int64_t)1 << 26)
#define LSS_MM_BIN_SPARSE_PIX ((int64_t)1 << 20)
/* The sky frame and grid size lss_mm_bin uses for a ra/dec catalogue: tangent point (ra0, dec0) or the
 * galaxies' mean direction; with h, w given the tangent point sits at the grid centre (x0 = w/2,
 * y0 = h/2), else the grid is the bounding box of the projected positions. LSS_ERR_ARG for a pixel
 * catalogue, LSS_ERR_RANGE for galaxies 80 degrees or more from the tangent point. */
LSSDEF int lss_mm_bin_sky(const lss_mm_catalogue *cat, const lss_mm_bin_opts *o, lss_mm_sky *sky, int *h,
                          int *w);

/* ---------------------------------------------------------------- FITS files
 * Maps and catalogues as survey teams distribute them, through cfitsio (link -lcfitsio; <fitsio.h> is
 * included by the implementation only). With LSS_NO_FITS defined the functions exist and return
 * LSS_ERR_UNSUPPORTED ("FITS support was compiled out"), so the header builds without cfitsio.
 * A path is read as FITS when it ends in .fits, .fit, .fts (any case), optionally followed by .gz (gzip
 * files are decompressed in memory by cfitsio); the name is never parsed as cfitsio's extended syntax.
 * HDUs are numbered as cfitsio does: 1 is the primary HDU, 2 the first extension; hdu = 0 picks the first
 * one that fits (an image with NAXIS > 0, or a table). Non-finite values are refused on reading (NaN pixels,
 * BLANK integer pixels, TNULL cells): a masked pixel of this header is 0 shear with LSS_MM_EMPTY_VAR variance.
 * Writers refuse non-finite values too, so that every file written reads back; they write through lss_wfile
 * (the file is built in memory, then written to a temporary file renamed into place: an existing file is
 * untouched on failure, a symbolic link's target is written, a device or pipe is written directly). */
/* 1 when path names a FITS file by its extension (see above), else 0. */
LSSDEF int lss_mm_fits_path(const char *path);
/* Reads a 2-D image [H, W] (*nplanes = 1) or a 3-D cube [K, H, W] (*nplanes = K; FITS NAXIS1 = W = x,
 * NAXIS2 = H = y, NAXIS3 = K) of HDU hdu (0: the first HDU holding an image, primary or IMAGE extension;
 * tile-compressed images too) into *data, h w K floats (LSS_MALLOC'd; free with LSS_FREE). Any BITPIX
 * (8, 16, 32, 64, -32, -64), BSCALE and BZERO applied. *pix_arcmin (may be NULL): the pixel size in arcmin from
 * PIXSCALE (arcmin), else from the WCS in degrees, sqrt(CD1_1^2 + CD2_1^2) or |CDELT1| (CUNIT1 deg, arcmin
 * or arcsec honoured), times 60; NaN when the header has none. Errors: LSS_ERR_IO for a file that cannot be
 * opened, LSS_ERR_FORMAT for a file that is not FITS, truncated (fewer data bytes than the header
 * announces), a missing or non-image HDU, an invalid PIXSCALE, or a pixel that is not finite (named
 * [k, y, x]); LSS_ERR_SHAPE for NAXIS other than 2 or 3, sides outside 2..65536 or more than 65536 planes. */
LSSDEF int lss_mm_fits_read_image(const char *path, int hdu, float **data, int *h, int *w, int *nplanes,
                                  double *pix_arcmin);
/* Writes data [nplanes, h, w] (nplanes = 1: a 2-D image) as the primary HDU of a FITS file: BITPIX -32,
 * NAXIS 2 or 3, PIXSCALE = pix_arcmin (arcmin; no key when pix_arcmin is 0 or NaN), ORIGIN = 'lss', a comment
 * naming the layout, CHECKSUM and DATASUM; no WCS. Sides 2..65536, 1..65536 planes; LSS_ERR_ARG naming the
 * pixel for a value that is not finite. */
LSSDEF int lss_mm_fits_write_image(const char *path, const float *data, int nplanes, int h, int w,
                                   double pix_arcmin);
/* Reads a shear catalogue from a table HDU (hdu 0: the first BINTABLE or ASCII table). Columns are found by
 * name, case-insensitively: positions x, y (pixels) or else ra, dec (degrees; also alpha_j2000, delta_j2000,
 * alphawin_j2000, deltawin_j2000; sets cat->radec = 1), ellipticities e1, e2 (or g1, g2), weights w or
 * weight (optional: all 1 without). Columns must be scalar and numeric (any integer or float type, TSCAL and
 * TZERO applied; TNULL cells read as NaN and are refused). Values are checked as by lss_mm_catalogue_load:
 * LSS_ERR_FORMAT naming the galaxy, the table row (from 1), the column and the value. Free with
 * lss_mm_catalogue_free. */
LSSDEF int lss_mm_fits_read_table(const char *path, int hdu, lss_mm_catalogue *cat);
/* Writes a catalogue as a BINTABLE extension (EXTNAME 'CATALOGUE') of columns ra, dec (TUNIT deg) or x, y
 * (pixel), e1, e2, w, all 64-bit floats, after the checks of lss_mm_catalogue_load (LSS_ERR_ARG naming the
 * galaxy otherwise): lss_mm_fits_read_table gives back the same catalogue bit for bit. */
LSSDEF int lss_mm_fits_write_table(const char *path, const lss_mm_catalogue *cat);

typedef struct {
    double ngal_arcmin2;   /* galaxies per arcmin^2 of observed pixels (0: LSS_MM_COSMOS_NGAL) */
    double sigma_e;        /* 0: LSS_MM_COSMOS_SIGMA_E */
    double observed;       /* target fraction of observed pixels (0: LSS_MM_COSMOS_OBSERVED) */
    int no_mask;           /* 1: every pixel observed */
} lss_mm_survey_opts;
/* An irregular survey mask (1 observed, 0 not): a wobbly outer boundary and circular holes,
 * a pure function of seed; about o->observed of the pixels are observed. */
LSSDEF int lss_mm_mock_mask(int h, int w, const lss_mm_survey_opts *o, uint64_t seed, float *mask);
/* Galaxy counts per pixel (Poisson, mean ngal * pixel area on observed pixels, 0 elsewhere) and
 * the per-pixel noise variance sigma_e^2/N (LSS_MM_EMPTY_VAR where N = 0). */
LSSDEF int lss_mm_mock_noise_map(const lss_grid *g, const float *mask, const lss_mm_survey_opts *o,
                                 uint64_t seed, float *count, float *nvar);
/* Noisy masked shear from a convergence map: gamma = P kappa + N(0, nvar) per component, 0 where
 * nvar >= LSS_MM_EMPTY_VAR. (seed, stream) select the noise. */
LSSDEF int lss_mm_mock_shear(const lss_grid *g, const float *kappa, const float *nvar,
                             uint64_t seed, uint64_t stream, float *g1, float *g2);
/* A convergence map of h x w pixels cut out at the centre of a field generated on the (larger)
 * grid `big` (same pixel size) so that it is not periodic. pk_big is the target convergence
 * spectrum on `big` (lss_grid_spectrum); the field is a shifted lognormal with shift lambda
 * when lambda > 0 (its Gaussian spectrum derived with lss_mm_lognormal_spectrum), Gaussian when
 * lambda = 0; the cut-out's mean is removed. */
LSSDEF int lss_mm_mock_kappa(const lss_grid *big, const double *pk_big, double lambda, int h,
                             int w, uint64_t seed, uint64_t stream, float *kappa);
/* Convergence maps [side][side] of one cosmology p (NULL: lss_mm_params_planck15) for the source
 * distribution nz (as lss_mm_theory_ckk), pixels of pix_arcmin: shifted lognormal fields (shift = the
 * empty-beam convergence of nz, lss_mm_theory_kappa_empty; spectrum C_kk with Halofit) on a grid pad
 * times larger, the centre cut out (as lss_mm_mock_kappa: not periodic; mean removed). The theory is
 * computed once by _create; lss_mm_kappa_draw then gives map i from (seed, LSS_STREAM_MM_FIELD,
 * index0 + i), so any subset is reproducible, in parallel over maps. The training maps of the cGAN
 * emulator (drivers/cgan.c). */
typedef struct lss_mm_kappa_gen lss_mm_kappa_gen;
LSSDEF int lss_mm_kappa_gen_create(const lss_params *p, const char *nz, int side, int pad, double pix_arcmin,
                                   lss_mm_kappa_gen **out);
LSSDEF void lss_mm_kappa_gen_free(lss_mm_kappa_gen *kg);
LSSDEF int lss_mm_kappa_draw(const lss_mm_kappa_gen *kg, uint64_t seed, uint64_t index0, int n, float *out);
/* The same maps with keep_mean = 1: the cut-outs as drawn, each keeping its own mean (a fluctuation of the larger
 * field), so that the maps fill all h w dimensions (a density over them exists: the flow and diffusion generators'
 * data); keep_mean = 0 is lss_mm_kappa_draw. A shifted lognormal map then lies above -shift
 * (lss_mm_theory_kappa_empty of the source distribution). */
LSSDEF int lss_mm_kappa_draw_mean(const lss_mm_kappa_gen *kg, uint64_t seed, uint64_t index0, int n, int keep_mean, float *out);

/* ---------------------------------------------------------------- estimators */
/* Exact Wiener filter for uniform noise (variance nvar per pixel and component; eq. 14):
 * kE = F^-1[ S/(S + nvar) F[KS_E(gamma)] ]. post_std_pix (may be NULL) receives the analytic
 * posterior standard deviation of each pixel (the same for all pixels). */
LSSDEF int lss_mm_wiener_fourier(const lss_grid *g, const double *pk, const float *g1,
                                 const float *g2, double nvar, float *kE, double *post_std_pix);
typedef struct {
    int max_iter;          /* 0: 5000 */
    double tol;            /* relative residual |r|/|b| (0: 1e-8) */
} lss_mm_wiener_opts;
/* MAP of eq. 13 (the Wiener filter) with per-pixel noise variance nvar (masked pixels carry
 * LSS_MM_EMPTY_VAR) by preconditioned conjugate gradients in double precision on
 * (S^-1 + A^T N^-1 A) x = A^T N^-1 gamma (A: kappa_E -> shear), preconditioned in Fourier space by
 * (S^-1 + mean(N^-1))^-1. iters and relres (may be NULL) report the convergence; LSS_ERR_NUMERIC
 * when tol is not reached. */
LSSDEF int lss_mm_wiener(const lss_grid *g, const double *pk, const float *g1, const float *g2,
                         const float *nvar, const lss_mm_wiener_opts *o, float *kE, int *iters,
                         double *relres);
/* A Wiener posterior sample (constrained realisation): s + W(gamma - A s - n) with s ~ N(0, S),
 * n ~ N(0, nvar). A pure function of (seed, index): s and n draw from the streams
 * lss_stream(LSS_STREAM_MM_CHAIN, index, LSS_MM_SUB_WIENER_SIGNAL / _NOISE). */
LSSDEF int lss_mm_wiener_sample(const lss_grid *g, const double *pk, const float *g1,
                                const float *g2, const float *nvar, const lss_mm_wiener_opts *o,
                                uint64_t seed, uint64_t index, float *kE);
/* Applies the Wiener normal operator (S^-1 + A^T N^-1 A) to x (double, for tests and diagnostics;
 * x is projected to zero mean first). */
LSSDEF int lss_mm_wiener_apply(const lss_grid *g, const double *pk, const float *nvar,
                               const double *x, double *out);

/* Gaussian prior score at noise level sigma (eq. 12 convolved): -F^-1[F[x]/(P + sigma^2)] for n maps
 * with per-map sigma; the k = 0 cell gives 0. logp (may be NULL) receives
 * -1/2 sum_k |F x|^2/(P + sigma^2) per map. */
LSSDEF int lss_mm_gauss_score(const lss_grid *g, const double *pk, int n, const float *x,
                              const float *sigma, float *out, double *logp);

/* ---------------------------------------------------------------- posterior and sampling */
/* Residual prior score (eq. 23): out = r(x, s_G, sigma) for n maps, so that the prior score is
 * s_G + out. Returns LSS_OK or an error status. */
typedef int (*lss_mm_residual_fn)(void *user, int n, const float *x, const float *score_gauss,
                                  const float *sigma, float *out);

typedef struct lss_mm_post lss_mm_post;  /* the tempered posterior of one shear data set */
/* Copies pk, g1, g2 and nvar (h*w each). Free with lss_mm_post_free. */
LSSDEF int lss_mm_post_create(const lss_grid *g, const double *pk, const float *g1,
                              const float *g2, const float *nvar, lss_mm_post **out);
LSSDEF void lss_mm_post_free(lss_mm_post *p);
/* Adds a residual prior score (NULL removes it). */
LSSDEF void lss_mm_post_set_residual(lss_mm_post *p, lss_mm_residual_fn fn, void *user);
/* Score of the tempered posterior (eq. 25 likelihood, prior convolved at sigma) for n maps:
 * out = s_G(x, sigma) + r + A^T[(gamma - A x)/(nvar + sigma^2)]. logp (may be NULL): the exact log
 * density of the Gaussian parts (prior + likelihood, without the residual) per map. */
LSSDEF int lss_mm_post_score(lss_mm_post *p, int n, const float *x, const float *sigma, float *out,
                             double *logp);
LSSDEF int64_t lss_mm_post_nevals(const lss_mm_post *p);  /* single-map score evaluations so far */

enum { LSS_MM_MASS_FOURIER = 0, LSS_MM_MASS_IDENTITY = 1 };
enum { LSS_MM_MH_AUTO = 0, LSS_MM_MH_PATH = 1, LSS_MM_MH_NONE = 2 };
enum { LSS_MM_INIT_KS = 0, LSS_MM_INIT_NOISE = 1 };
typedef struct {
    int nchains;           /* chains run as a batch (0: 8) */
    double sigma_max;      /* first temperature (0: 1.0) */
    double sigma_min;      /* last temperature of the HMC (0: 8e-3) */
    double anneal;         /* sigma <- max(anneal sigma, sigma_min) per level (0: 0.98) */
    int steps_per_level;   /* HMC steps per temperature (0: 12) */
    int final_steps;       /* extra HMC steps at sigma_min (0: steps_per_level) */
    int leapfrog;          /* leapfrog steps per HMC step (0: 3) */
    double step;           /* leapfrog step; 0: auto (0.5 with the Fourier mass matrix; with the
                              identity, 0.5 / sqrt(max curvature) of the tempered posterior) */
    int mass;              /* LSS_MM_MASS_FOURIER (default): M = 1/(P + s^2) + mean 1/(nvar + s^2)
                              per Fourier cell; LSS_MM_MASS_IDENTITY as the paper */
    int mh;                /* LSS_MM_MH_AUTO: exact Gaussian log-ratio + Simpson path integral of
                              the residual score; LSS_MM_MH_PATH: Simpson path integral of the
                              whole score (appendix A); LSS_MM_MH_NONE: no correction */
    int simpson;           /* points of the Simpson rule (3 or 5; 0: 5, endpoints reused) */
    int init;              /* LSS_MM_INIT_KS: KS of the shear + N(0, sigma_max^2); or pure noise */
    int no_ode;            /* 1: stop at sigma_min (no probability-flow ODE) */
    double ode_rtol, ode_atol;  /* RK45 tolerances (0: 1e-3, 1e-6) */
    double ode_t_end;      /* ODE from t = sigma_min^2 down to t_end (0: 1e-5; < 0: exactly 0) */
    uint64_t seed;
    uint64_t first_chain;  /* chain c of this call is chain first_chain + c of the run */
    uint32_t job;          /* independent runs on one seed (fields, injected halos): the sub of the chains'
                              streams, < LSS_MM_SUB_WIENER_SIGNAL */
    void (*progress)(void *user, double fraction);  /* optional, called between levels */
    void *progress_user;
} lss_mm_sample_opts;
typedef struct {
    int64_t hmc_steps, levels, ode_steps, ode_rejected;
    double accept_rate;          /* mean over chains and steps */
    double evals_per_chain;      /* single-map score evaluations per chain (HMC + ODE) */
    double hmc_evals_per_chain, ode_evals_per_chain;
    double seconds;
} lss_mm_sample_stats;
/* Draws o->nchains posterior samples into samples[nchains*h*w]: annealed HMC from sigma_max to
 * sigma_min, then the probability-flow ODE dx/dt = -1/2 s(x, sqrt t) (eq. 22) with Dormand-Prince
 * RK45 to t_end. st may be NULL. Chain c draws from lss_stream(LSS_STREAM_MM_CHAIN, o->first_chain + c,
 * o->job) under o->seed; without a
 * residual score each chain (and its ODE) is independent of the others, so results are identical
 * whatever the thread count or the number of chains; with one the ODE step is shared by the batch. */
LSSDEF int lss_mm_sample(lss_mm_post *p, const lss_mm_sample_opts *o, float *samples,
                         lss_mm_sample_stats *st);
/* Per-pixel mean and standard deviation (ddof = 1) of n maps of npix pixels (std may be NULL). */
LSSDEF int lss_mm_mean_std(int n, int64_t npix, const float *maps, float *mean, float *std);

/* ---------------------------------------------------------------- metrics */
/* RMSE (eq. 27) and Pearson r (eq. 28) of est against truth over pixels with mask > 0 (mask NULL:
 * all), each map's mean over those pixels subtracted first. Either output may be NULL. LSS_ERR_RANGE when
 * the truth is constant over them (no signal: a mock of zero fields), LSS_ERR_NUMERIC for non-finite maps;
 * r is NaN for a constant estimate. */
LSSDEF int lss_mm_metrics(int64_t npix, const float *est, const float *truth, const float *mask,
                          double *rmse, double *r);

/* ---------------------------------------------------------------- clusters and detection */
typedef struct {
    double m200;           /* Msun (not Msun/h) */
    double c200;           /* concentration (0: 1, as section 7.3) */
    double z_l, z_s;       /* lens and source redshifts (0: 0.5 and 1.0) */
} lss_mm_nfw;
/* Scale radius (arcmin) and kappa_s = rho_s r_s / Sigma_crit of an NFW halo (M200 with respect to
 * the critical density at z_l) for cosmology c. */
LSSDEF int lss_mm_nfw_params(const lss_cosmo *c, const lss_mm_nfw *h, double *rs_arcmin,
                             double *kappa_s);
/* Dimensionless profiles at x = r / r_s (x > 0): kappa = 2 kappa_s f(x), gamma_t = kappa_s g(x)
 * (Wright & Brainerd 2000), with f and g returned here. */
LSSDEF double lss_mm_nfw_f(double x);
LSSDEF double lss_mm_nfw_g(double x);
/* Adds the NFW shear (g1 = -gamma_t cos 2phi, g2 = -gamma_t sin 2phi, phi measured from the x axis)
 * and optionally convergence (kappa may be NULL) of a halo centred at pixel (xc, yc) to the maps,
 * averaging sub x sub points per pixel (sub 0: 4). */
LSSDEF int lss_mm_nfw_add(const lss_grid *g, double rs_arcmin, double kappa_s, double xc, double yc,
                          int sub, float *g1, float *g2, float *kappa);
/* Aperture mass with the starlet filter U(r/theta) of Leonard et al. (2012), theta in pixels,
 * evaluated by periodic FFT convolution with the kernel sampled on the grid out to 2 theta. */
LSSDEF int lss_mm_starlet_filter(const lss_grid *g, const float *in, double theta_pix, float *out);
/* Starlet aperture kernel value at radius r (pixels) for aperture theta (pixels). */
LSSDEF double lss_mm_starlet_u(double r, double theta);


/* ---------------------------------------------------------------- neural prior (lss_nn.h) */
/* The U-net of lss_nn.h (3 scales, residual blocks, batch norm) used two ways:
 *  - score residual (eqs. 20, 23, 24): inputs [x, sigma^2 s_G(x, sigma)] plus the noise level
 *    (a constant sigma channel, also at the bottleneck); the output G (convergence units, sqrt(v) times the
 *    head's) acts through the Gaussian's covariance, r = F^-1[ F[G] / (P_k + sigma^2) ] (P_0 = v; checkpoint
 *    buffer "massmap.precond"): at low sigma the reference's r = G / sigma let errors on the largest scales, where
 *    P_k >> sigma^2 and the loss barely sees them, move the Fourier-preconditioned chains by P_k / sigma per unit,
 *    and chains sampling the prior alone ran away (rms x10); trained
 *    by residual denoising score matching: loss mean (u + sigma (r + s_G))^2, sigma = s N(0, 1)
 *    (signed; the reference's draw) or, for a share of each batch, log-uniform over the sampler's range,
 *    u ~ N(0, 1), on simulated convergence maps drawn on the fly. The output convolution starts at zero,
 *    so that an untrained hybrid prior is exactly the Gaussian one, and the output is gated by
 *    v / (v + sigma^2), v the prior's pixel variance (checkpoint buffer "massmap.gate"): where the tempered
 *    prior is Gaussian (sigma^2 >> v) the residual fades instead of adding noise to an exact score;
 *  - DeepMass baseline: inputs the KS E and B maps of the noisy masked shear, output kappa, MSE loss.
 * Convolution weights are projected to spectral norm <= 1 after every optimizer step when asked. */
typedef struct {
    int c0;                /* U-net width (channels at full size; 0: 32) */
    int deepmass;          /* 0: score residual; 1: DeepMass */
    uint64_t seed;         /* initialisation */
} lss_mm_net_opts;
typedef struct lss_mm_net lss_mm_net;
/* A network for maps of grid g (h and w multiples of 4) with the Gaussian prior pk (kept for s_G and
 * the input scale). Free with lss_mm_net_free. */
LSSDEF int lss_mm_net_create(const lss_grid *g, const double *pk, const lss_mm_net_opts *o,
                             lss_mm_net **out);
LSSDEF void lss_mm_net_free(lss_mm_net *n);
LSSDEF int64_t lss_mm_net_nparams(const lss_mm_net *n);
/* Checkpoint (lss_nn format: weights, batch-norm statistics, scales, optimizer state). */
LSSDEF int lss_mm_net_save(const lss_mm_net *n, const char *path);
LSSDEF int lss_mm_net_load(lss_mm_net *n, const char *path);
/* Reads the architecture (c0, deepmass, h, w) stored in a checkpoint without loading it. */
LSSDEF int lss_mm_net_probe(const char *path, int *c0, int *deepmass, int *h, int *w);
/* lss_mm_residual_fn for lss_mm_post_set_residual (user = a score-residual network). */
LSSDEF int lss_mm_net_residual(void *net, int n, const float *x, const float *score_gauss,
                               const float *sigma, float *out);
/* DeepMass prediction of kappa from a shear map (masked pixels: shear 0). */
LSSDEF int lss_mm_net_deepmass(lss_mm_net *net, const float *g1, const float *g2, float *kappa);

typedef struct lss_mm_halo_model lss_mm_halo_model;  /* halo-model convergence (lss_mm_halo_create) */
typedef struct {
    int steps;             /* total optimizer steps of the network (0: 1000) */
    int batch;             /* 0: 16 */
    double lr;             /* Adam learning rate (0: 1e-3), divided by 10 at 40% and 80% of the steps */
    double s;              /* DSM noise scale of the reference's draw sigma = s N(0, 1) (0: 0.2) */
    double sigma_min, sigma_max;  /* the range of noise levels the sampler visits: a share sigma_mix of each batch
                              (rows j with j / b < sigma_mix) draws |sigma| log-uniform on [sigma_min, sigma_max]
                              with a random sign, the rest s N(0, 1); sigma_max 0: the reference's draw alone
                              (lss_mm_train_on_mock fills the sampler's range when both are 0 and sigma_mix >= 0) */
    double sigma_mix;      /* share of the batch drawn log-uniformly (0: 0.5 when sigma_max > 0; < 0: none, the
                              reference's draw alone even in lss_mm_train_on_mock) */
    int no_spectral;       /* 1: no spectral-norm projection */
    double lambda;         /* lognormal shift of the training maps (0: Gaussian) */
    const lss_grid *big;      /* padded grid on which training maps are drawn (required) */
    const double *pk_big;        /* its convergence spectrum (required) */
    const float *nvar;           /* DeepMass: the survey's per-pixel noise variance (required then) */
    uint64_t seed;
    void (*progress)(void *user, int step, double loss);  /* after every step (loss NaN: step skipped) */
    void *progress_user;
    /* the loop (lss_train of lss_nn.h) */
    const char *ckpt;      /* checkpoint: weights, batch-norm statistics, spectral-norm vectors, optimizer and
                              loop state (readable by lss_mm_net_load/_open); NULL: none */
    int ckpt_every;        /* checkpoint every ckpt_every steps and at the end (0: eval_every) */
    int resume;            /* 1: continue from ckpt when it exists (needs ckpt and, past step 0, loss_csv when
                              one is named); the result is bitwise that of an uninterrupted run */
    const char *loss_csv;  /* loss table: step, train_loss, valid_loss (NULL: none) */
    int eval_every;        /* held-out evaluation and a CSV row every eval_every steps (0: at the end only) */
    int eval_batches;      /* batches of `batch` held-out maps per evaluation (0: 4) */
    int patience;          /* stop after `patience` evaluations without a lower held-out loss (0: never) */
    int shards;            /* data-parallel steps (lss_dp_grad of lss_nn.h): each batch in this many fixed shards,
                              gradients added in order; under MPI the ranks compute the shards and the run is
                              bitwise the serial one with the same shards (0: 1, or the rank count under MPI); batch
                              norm then normalises each shard by its own statistics */
    const lss_mm_halo_model *halo; /* non-NULL: training and held-out maps are lss_mm_halo_field(halo, h, w, seed, set,
                              index b + j) instead of the lognormal cut-outs (big and pk_big still required) */
    const float *bank;     /* non-NULL: the training maps (LSS_SET_TRAIN; held-out maps are still drawn) come from this
                              bank of nbank maps [nbank][H][W]: map i = t b + j is bank map i mod nbank under the
                              symmetry (i / nbank) mod 8 of the square (mod 4, the flips, for H != W), so that maps
                              that are slow to draw (halo model) are drawn once; lss_mm_train_on_mock draws such a
                              bank of LSS_SET_TRAIN maps 0 .. nbank - 1 itself when bank is NULL and nbank > 0 */
    int64_t nbank;
} lss_mm_train_opts;
typedef struct {
    double final_loss;     /* mean training loss over the last 10% of the steps, of those this call ran (NaN: none) */
    double valid_loss;     /* held-out loss at the last evaluation (lss_mm_net_heldout's loss_net; NaN: none) */
    double valid_base;     /* its baseline on the same batches (loss_base; NaN: none) */
    lss_train_result loop; /* steps done, skipped steps, plateau stop, time */
} lss_mm_train_result;
/* Trains the network through lss_train: step t draws batch t of the training set (maps
 * lss_mm_field_stream(LSS_SET_TRAIN, t batch + j), noise LSS_STREAM_MM_DSM at lss_set_index(LSS_SET_TRAIN, t)),
 * so that every step is a pure function of its index and a resumed run is exact; the held-out evaluation
 * is lss_mm_net_heldout on eval_batches batches. The optimizer is created at the first call (its schedule
 * from `steps`); a later call continues its step count up to `steps`. A step with a non-finite loss or
 * gradient is skipped (counted in res->loop.skipped); LSS_ERR_NUMERIC when every step run was. res may be
 * NULL. */
LSSDEF int lss_mm_net_train(lss_mm_net *net, const lss_mm_train_opts *o, lss_mm_train_result *res);

/* Held-out loss on nbatch batches of o->batch maps of the validation set (LSS_SET_VALID, never trained
 * on; batch k from the streams of lss_mm_net_train with LSS_SET_VALID), with the noise of the training
 * recipe. Score network: loss_net = mean (u + sigma (s_G + r))^2 with r the residual as
 * lss_mm_net_residual computes it (what the sampler uses), loss_base the same with r = 0 (the Gaussian
 * prior alone). DeepMass: loss_net = mean (prediction - truth)^2 and loss_base = mean truth^2 (the zero
 * map), both in units of the output scale. o as for lss_mm_net_train (big, pk_big, lambda, s, batch,
 * nvar, seed). */
LSSDEF int lss_mm_net_heldout(lss_mm_net *net, const lss_mm_train_opts *o, int nbatch, double *loss_net,
                              double *loss_base);
/* The held-out loss at fixed noise levels (score networks): for each sigmas[k] > 0 the maps of nbatch batches of
 * the validation set (as lss_mm_net_heldout: the same maps and unit noise u at every level, x = truth +
 * sigmas[k] u) give the DSM loss per map of the Gaussian score alone, mean (u + sigma s_G)^2, and of the hybrid,
 * mean (u + sigma (s_G + r))^2: loss_gauss[k] and loss_net[k] are their means over the maps, se_diff[k] the
 * standard error of the paired difference loss_net - loss_gauss over the maps (std ddof 1 / sqrt(maps); may be
 * NULL). A zero-initialised network gives loss_net == loss_gauss exactly. */
LSSDEF int lss_mm_net_heldout_sigma(lss_mm_net *net, const lss_mm_train_opts *o, int nbatch, int nsig,
                                    const double *sigmas, double *loss_gauss, double *loss_net, double *se_diff);
/* nsig noise levels geometric from sigma_min to sigma_max (the ends included; nsig >= 2) into out. */
LSSDEF int lss_mm_sigma_grid(double sigma_min, double sigma_max, int nsig, double *out);
/* A network from a checkpoint of lss_mm_net_save for maps of grid g with prior pk: the architecture is
 * read from the file (lss_mm_net_probe); want_deepmass selects the kind required. Free with
 * lss_mm_net_free (g must outlive it). */
LSSDEF int lss_mm_net_open(const char *path, const lss_grid *g, const double *pk, int want_deepmass,
                           lss_mm_net **out);

/* ---------------------------------------------------------------- diffusion generator (score-based)
 * A generator of convergence maps: the variance-exploding score SDE (Song et al. 2021) in the
 * mass-mapping convention. Data are standardised, y = (kappa - mean) / std, or y = (ln(kappa + shift) - mean) / std
 * with the log transform (transform, shift, mean and std are options, kept in the checkpoint; samples are mapped
 * back, densities carry the Jacobian), and noised as x = y + sigma n, n ~ N(0, I), sigma in [sigma_min, sigma_max];
 * time t = sigma^2 and the probability-flow ODE dx/dt = -1/2 s(x, sqrt t). The network F is the U-net of
 * lss_nn.h without batch norm (a sample's output does not depend on the others of its batch, which mix
 * noise levels) with the input c_in x, c_in = 1 / sqrt(1 + sigma^2), and the noise input ln(sigma) / 4
 * (sigma_log), optionally also in every residual block through a per-channel bias (the noise-level embedding
 * of lss_unet_opts.sigma_embed, `embed` frequencies; off by default: at the sizes of flowgen's small scale it
 * trained to a higher held-out loss in the same steps and moved no power-spectrum bin of a Gaussian field closer
 * to the truth); ncond conditioning values per map (cosmological parameters, say) enter as constant input
 * channels mapped to [-1, 1] by [cond_lo, cond_hi]. It is preconditioned as in Karras et al. 2022 (EDM) for
 * unit data variance: the denoised map D = c_skip x + c_out F, c_skip = 1 / (1 + sigma^2), c_out = sigma /
 * sqrt(1 + sigma^2), and the score s = (D - x) / sigma^2 = -x / (1 + sigma^2) + F / (sigma sqrt(1 + sigma^2)):
 * F = 0 is the exact score of white unit-variance data (with the Gaussian skip, gauss = 1, c_skip x becomes the
 * Wiener filter F^-1[P / (P + sigma^2) F x] of a spectrum P and F = 0 the exact score of a stationary periodic
 * Gaussian field of that spectrum: the hybrid of a Gaussian and a neural prior; gauss = 2 the same per DCT mode, and
 * gauss = 3 the filter S (S + sigma^2)^-1 of a full covariance S, for cut-outs: the `gauss` option), F predicts the
 * noise at small sigma and the map at
 * large sigma, so that an error of F never grows into an error of D larger than itself (a noise prediction
 * F = -n has D errors sigma times its own, ruinous for the deterministic samplers at sigma ~ 80). Training
 * loss mean (1 + sigma^2)(n + sigma s(y + sigma n, sigma))^2 = mean (F - (sigma y - n) / sqrt(1 + sigma^2))^2
 * (lss_op_dsm_loss), ln sigma uniform on [ln sigma_min, ln sigma_max]: each noise level's target has unit
 * variance (EDM's weighting; the bound below weights by 1 / (1 + sigma^2) instead).
 * Defaults sigma_min = 2e-3, sigma_max = 80 for unit-variance data: sigma_max^2 = 6400 times the data
 * variance, so that N(0, sigma_max^2 + 1) is the noised data's law up to 1/sigma_max^2 (the prior term of
 * the bound is 8e-5 nats per pixel for unit-variance modes); sigma_min well below the smallest mode's
 * standard deviation (the bound's gap is 1/2 ln(1 + sigma_min^2 / v) per Fourier mode of variance v,
 * 2e-6 nats at v = 1, 0.02 nats at v = 1e-4) and above float32's resolution of a unit-variance map.
 *
 * Samplers (lss_mm_diff_sample), all but ODE on nsteps + 1 geometric levels sigma_max = s_0 > ... > s_nsteps =
 * sigma_min, from x = sqrt(sigma_max^2 + 1) z (the prior of the bound), ending with the Tweedie denoising
 * step x + sigma_min^2 s(x, sigma_min) (the posterior mean of y given x at sigma_min):
 *   LSS_MM_DIFF_ANCESTRAL  reverse-diffusion (SMLD ancestral) step from s_i to s_{i+1}:
 *                          x + (s_i^2 - s_{i+1}^2) s(x, s_i) + sqrt((s_i^2 - s_{i+1}^2) s_{i+1}^2 / s_i^2) z;
 *   LSS_MM_DIFF_DDIM       deterministic DDIM (eta = 0), in VE form the Euler step of the ODE in sigma:
 *                          x + (s_{i+1} - s_i)(-s_i s(x, s_i)) = D + (s_{i+1} / s_i)(x - D), D = x + s_i^2 s(x, s_i).
 *                          First order: on a Gaussian mode of variance v each step shrinks the amplitude by
 *                          (v + s_i s_{i+1}) / sqrt((v + s_i^2)(v + s_{i+1}^2)) <= 1, in all a power loss of about
 *                          exp(-h / 2) for steps of h in ln sigma: 10% at 50 steps over [2e-3, 80];
 *   LSS_MM_DIFF_DDIM2      DDIM's second-order multistep form (DPM-Solver++(2M), Lu et al. 2022), one score
 *                          per step as DDIM: D replaced by 3/2 D_i - 1/2 D_{i-1} after the first step (equal
 *                          steps in ln sigma); 0.6% power error at 50 steps on the same Gaussian modes;
 *   LSS_MM_DIFF_ODE        the probability-flow ODE from t = sigma_max^2 to sigma_min^2 by Dormand-Prince RK45
 *                          (the integrator of lss_mm_sample), each map with its own step-size control
 *                          (tolerances lss_mm_diff_set_ode); nsteps is not used.
 * Score evaluations per map: nsteps + 1 (ancestral, DDIM, DDIM2), the RK45 stages + 1 (ODE). The ancestral
 * step is first order too: power within 1% of a Gaussian mode's needs about 1000 steps.
 *
 * Likelihood bound (lss_mm_diff_nll), in nats, on -ln p(kappa): the continuous-time variational bound of
 * Kingma et al. 2021 in VE form. With SNR = 1/sigma^2, L_inf = -1/2 int SNR'(t) E||y - y_hat||^2 dt, y_hat =
 * x + sigma^2 s, becomes int E||n + sigma s||^2 d ln sigma (the factor is 1: y - y_hat = -sigma (n + sigma s)),
 * and -ln p(y) <= KL(N(y, sigma_max^2) || N(0, sigma_max^2 + 1)) + D/2 ln(2 pi e sigma_min^2) + L_inf, the
 * middle term the expected -ln N(y; y + sigma_min n, sigma_min^2) (the decoder), D = h w. For Gaussian data and
 * the exact score it sums, in expectation, to the entropy plus 1/2 ln(1 + sigma_min^2 / v) per mode of variance
 * v plus the prior mismatch (tests/test_diffusion.c). L_inf is estimated by Monte Carlo over nsig stratified
 * ln sigma (one uniform draw and one noise map per stratum, the control variate -(||n||^2 - D)/(1 + sigma^2)^2
 * of zero mean added; standard error from pairs of adjacent strata, an overestimate);
 * D ln std turns -ln p(y) into -ln p(kappa), and with the log transform the sum over pixels of ln(kappa + shift) as
 * well (-ln |dy/dkappa|). Bits per dimension: nll / (D ln 2).
 *
 * Randomness (streams of lss_core.h, sub LSS_MM_SUB_DIFF): training batch t draws its noise levels and noise
 * from (LSS_STREAM_MM_DSM, lss_set_index(LSS_SET_TRAIN, t)), held-out batch k from (MM_DSM,
 * lss_set_index(LSS_SET_VALID, k)); sample i from (LSS_STREAM_MM_CHAIN, i): its start and ancestral noise, so
 * that it is a pure function of (seed, i) whatever the batch or threads; the bound of the j-th map of a call
 * from (MM_DSM, j, LSS_MM_SUB_DIFF_NLL). Checkpoints in lss_nn's format with the options ("massmap.diff.meta",
 * float32: the model uses the float-rounded sigma_min, sigma_max, mean, std and ranges). */
#define LSS_MM_DIFF_NCOND_MAX 8
enum { LSS_MM_DIFF_AFFINE = 0, LSS_MM_DIFF_LOG = 1 };
#define LSS_MM_DIFF_SIGMA_MIN 2e-3     /* default noise range for unit-variance (standardised) data */
#define LSS_MM_DIFF_SIGMA_MAX 80.0
#define LSS_MM_SUB_DIFF 4093u          /* diffusion generator: training and held-out noise (MM_DSM), samplers (MM_CHAIN) */
#define LSS_MM_SUB_DIFF_NLL 4092u      /* diffusion generator: noise of the likelihood bound (MM_DSM) */
typedef struct {
    int h, w;              /* map size (multiples of 4, 4 .. 4096; required) */
    int c0;                /* U-net width (0: 32) */
    int ncond;             /* conditioning values per map, 0 .. LSS_MM_DIFF_NCOND_MAX */
    double cond_lo[LSS_MM_DIFF_NCOND_MAX], cond_hi[LSS_MM_DIFF_NCOND_MAX]; /* value lo -> -1, hi -> +1 */
    double sigma_min, sigma_max;  /* noise range of standardised maps (0: LSS_MM_DIFF_SIGMA_MIN / _MAX) */
    double mean, std;      /* standardisation y = (kappa - mean) / std (std 0: 1), or of ln(kappa + shift) */
    int transform;         /* LSS_MM_DIFF_AFFINE (0): y = (kappa - mean) / std; LSS_MM_DIFF_LOG (1): y = (ln(kappa +
                              shift) - mean) / std, for shifted-lognormal-like maps (kappa > -shift everywhere) */
    double shift;          /* LSS_MM_DIFF_LOG: > 0 (the empty-beam convergence of the maps, say) */
    int periodic;          /* 1: periodic maps (the U-net pads with the opposite edge); 0: zero padding */
    int embed;             /* frequencies of the U-net's per-block noise-level embedding (lss_unet_opts.sigma_embed),
                              1..32; 0: none (the default), the noise level enters as the two constant channels only */
    int gauss;             /* 1: the skip term is the Wiener filter of a spectrum per DFT mode (lss_mm_diff_set_gauss):
                              D = W_sigma x + c_out F with W_sigma = P / (P + sigma^2) mode by mode, so that F = 0 is the
                              exact model of a stationary periodic Gaussian field of spectrum P and the network learns
                              the rest; 2: the same per mode of the orthonormal 2-D DCT-II (the DFT of the map mirrored
                              to 2h x 2w), for maps that are not periodic (cut-outs of a larger field): the Gaussian of
                              covariance C^T diag(P) C has no wrap-around between opposite edges, and the cosine basis
                              nearly diagonalises a stationary field's covariance on a cut-out; 3: the Wiener filter
                              of a full covariance S [hw x hw] (lss_mm_diff_set_gauss_cov), W_sigma = S (S + sigma^2)^-1
                              through S's eigen-decomposition, so that F = 0 is the exact score of N(0, S): with the
                              stationary covariance of cut-outs (lss_mm_diff_gauss_cov_estimate) the exact Gaussian law
                              of a cut-out, edges included; h w <= 4096 (S's eigenvectors, h^2 w^2 floats, are in the
                              checkpoint; setting S costs O((h w)^3)); 0 (the default): c_skip = 1 / (1 + sigma^2), the
                              same with P = 1 */
    uint64_t seed;         /* initialisation */
} lss_mm_diff_opts;
typedef struct lss_mm_diff lss_mm_diff;
/* A score of standardised maps: out [n, h, w] = grad ln p_sigma(x) at x [n, h, w], sigma [n] (> 0), cond
 * [n, ncond] (raw values; NULL when ncond = 0). Returns LSS_OK or an error status. */
typedef int (*lss_mm_diff_score_fn)(void *user, int n, const float *x, const float *sigma, const float *cond,
                                    float *out);
/* A model with freshly initialised weights. LSS_ERR_RANGE for bad options. Free with lss_mm_diff_free. */
LSSDEF int lss_mm_diff_create(const lss_mm_diff_opts *o, lss_mm_diff **out);
LSSDEF void lss_mm_diff_free(lss_mm_diff *d);
LSSDEF int64_t lss_mm_diff_nparams(const lss_mm_diff *d);
/* The model's options, defaults resolved and float-rounded as the model uses them. */
LSSDEF int lss_mm_diff_options(const lss_mm_diff *d, lss_mm_diff_opts *o);
/* Checkpoint of the weights and options (lss_nn format); lss_mm_diff_open rebuilds the model from such a
 * file alone (a training checkpoint of lss_mm_diff_train too). */
LSSDEF int lss_mm_diff_save(const lss_mm_diff *d, const char *path);
LSSDEF int lss_mm_diff_open(const char *path, lss_mm_diff **out);
/* Replaces the network by fn (training is then refused), for validation with an exact score; fn NULL
 * restores the network. */
LSSDEF void lss_mm_diff_set_score(lss_mm_diff *d, lss_mm_diff_score_fn fn, void *user);
/* RK45 tolerances of LSS_MM_DIFF_ODE on standardised maps (0: rtol 1e-4, atol 1e-4). */
LSSDEF int lss_mm_diff_set_ode(lss_mm_diff *d, double rtol, double atol);
/* With gauss = 1: the spectrum P [h w] of the skip term, per DFT mode of the standardised maps (row-major, the
 * unnormalised FFT's E|Y_k|^2 / (h w): 1 for white unit-variance maps; lss_mm_diff_gauss_estimate gives it from
 * maps); with gauss = 2 the variances E c_k^2 of the orthonormal DCT-II coefficients [h w] (row-major in the two
 * cosine indices; 1 for white unit-variance maps). Stored in the checkpoint. Until set, P = 1. LSS_ERR_STATE
 * without gauss, LSS_ERR_RANGE for a value that is not finite and positive. */
LSSDEF int lss_mm_diff_set_gauss(lss_mm_diff *d, const double *pk);
/* P of lss_mm_diff_set_gauss from n maps [n, h, w] in kappa units (the model's transform and standardisation
 * applied): the mean periodogram (gauss = 1) or the mean squared DCT-II coefficients (gauss = 2). */
LSSDEF int lss_mm_diff_gauss_estimate(const lss_mm_diff *d, int n, const float *maps, double *pk);
/* With gauss = 3: the covariance S [np x np], np = h w, of the standardised maps (row-major, symmetric; pixels
 * row-major), eigen-decomposed (Householder tridiagonalisation and implicit QL, in double) into the skip's basis;
 * eigenvalues below 1e-7 of the largest are raised to it (the stationary estimate below is not positive definite
 * by construction: its few pairs at the largest displacements leave small negative eigenvalues), and LSS_ERR_RANGE
 * for an S that is not finite and symmetric (to 1e-6 relative; S + S^T over 2 is used) or has an eigenvalue below
 * -0.05 of the largest (not a covariance). Until set, S = I.
 * LSS_ERR_STATE unless gauss = 3 (and lss_mm_diff_set_gauss is LSS_ERR_STATE with gauss = 3). */
LSSDEF int lss_mm_diff_set_gauss_cov(lss_mm_diff *d, const double *cov);
/* S of lss_mm_diff_set_gauss_cov from n maps [n, h, w] in kappa units (the model's transform and standardisation
 * applied) for a stationary field seen through cut-outs: S[p, q] = c(q - p), c(dy, dx) the mean over maps and over
 * all pixel pairs at that displacement of y(p) y(p + d) (through zero-padded FFTs; no mean is removed, as in the
 * periodogram). Any gauss; cov [np x np]. */
LSSDEF int lss_mm_diff_gauss_cov_estimate(const lss_mm_diff *d, int n, const float *maps, double *cov);
/* The model's score (network or set_score) of n standardised maps x at noise levels sigma [n] with cond
 * [n, ncond] (raw; NULL when ncond = 0) into out [n, h, w]. */
LSSDEF int lss_mm_diff_score(lss_mm_diff *d, int n, const float *x, const float *sigma, const float *cond,
                             float *out);
/* Training data: fills maps [n, h, w] (kappa units) and cond [n, ncond] (NULL when ncond = 0) with batch
 * `index` of data set `set` (LSS_SET_TRAIN, LSS_SET_VALID); a pure function of its arguments (exact resume). */
typedef int (*lss_mm_diff_draw_fn)(void *user, int set, int64_t index, int n, float *maps, float *cond);
typedef struct {
    int steps;             /* total optimizer steps (0: 1000) */
    int batch;             /* 0: 16 */
    double lr;             /* Adam, cosine decay from lr to lr / 20 over `steps` (0: 1e-3); gradient norm clipped to 1 */
    uint64_t seed;         /* noise levels and noise */
    lss_mm_diff_draw_fn draw;  /* required */
    void *user;
    const char *ckpt;      /* checkpoint (weights, options, optimizer, loop state; NULL: none) */
    int ckpt_every;        /* 0: eval_every */
    int resume;            /* 1: continue from ckpt when it exists: bitwise an uninterrupted run */
    const char *loss_csv;  /* step, train_loss, valid_loss (NULL: none) */
    int eval_every;        /* held-out loss every eval_every steps (0: at the end) */
    int eval_batches;      /* held-out batches of `batch` maps (0: 4) */
    int patience;          /* plateau stop after `patience` evaluations without improvement (0: never) */
    void (*progress)(void *user, int step, double loss);  /* after every step; step = steps done (1-based) */
    void *progress_user;
    int shards;            /* data-parallel steps (lss_dp_grad of lss_nn.h): each batch in this many fixed shards,
                              gradients added in order; under MPI the ranks compute the shards and the run is
                              bitwise the serial one with the same shards (0: 1, or the rank count under MPI) */
} lss_mm_diff_train_opts;
/* Trains the network through lss_train (steps, evaluation, CSV, checkpoints and resume as there): step t
 * draws training batch t and its noise (see Randomness), loss as above. A later call continues the
 * optimizer's step count up to `steps`. A non-finite map or condition from draw is LSS_ERR_ARG naming the
 * batch, map and pixel (it stops the run); a non-finite loss skips the step. res may be NULL. */
LSSDEF int lss_mm_diff_train(lss_mm_diff *d, const lss_mm_diff_train_opts *o, lss_train_result *res);
/* Denoising loss of n given maps (kappa units) with cond [n, ncond]: mean (n + sigma s)^2 over maps and
 * pixels with the noise levels and noise of stream (LSS_STREAM_MM_DSM, index, LSS_MM_SUB_DIFF) of seed,
 * drawn as a training batch draws them (index lss_set_index(LSS_SET_TRAIN, t) with the same seed and the
 * batch's maps gives training step t's loss). */
LSSDEF int lss_mm_diff_loss(lss_mm_diff *d, int n, const float *maps, const float *cond, uint64_t seed,
                            uint64_t index, double *loss);
enum { LSS_MM_DIFF_ANCESTRAL = 0, LSS_MM_DIFF_DDIM = 1, LSS_MM_DIFF_ODE = 2, LSS_MM_DIFF_DDIM2 = 3 };
/* n maps (kappa units) into out [n, h, w]: map j is sample index0 + j of seed (stream above), cond [n, ncond]
 * its condition (NULL when ncond = 0). nsteps >= 1 levels for ANCESTRAL and DDIM (unused by ODE). nevals (may
 * be NULL) receives the single-map score evaluations. LSS_ERR_NUMERIC when a sample is not finite. */
LSSDEF int lss_mm_diff_sample(lss_mm_diff *d, int method, int nsteps, int n, const float *cond, uint64_t seed,
                              uint64_t index0, float *out, int64_t *nevals);
/* Upper bound (above) on -ln p(kappa) in nats for each of n maps [n, h, w] (kappa units) with cond [n,
 * ncond], nsig >= 2 (even) stratified noise levels per map; se (may be NULL) the Monte Carlo standard error
 * of each value. */
LSSDEF int lss_mm_diff_nll(lss_mm_diff *d, int n, const float *maps, const float *cond, int nsig, uint64_t seed,
                           double *nll, double *se);

/* ---------------------------------------------------------------- sampling presets and batches */
typedef enum {
    LSS_MM_SCHEDULE_FAST = 0,  /* sigma 1 -> sigma_min by x0.6, 2 HMC steps per level, 10 at the end, Fourier
                                  mass, exact Gaussian MH: validated against the exact Wiener posterior
                                  (tests/test_massmap.c, test_gaussian_validation) */
    LSS_MM_SCHEDULE_PAPER = 1  /* the reference: x0.98, 12 steps per level, identity mass, Simpson MH */
} lss_mm_schedule;
/* Sets the schedule fields of o (sigma_max, anneal, steps_per_level, final_steps, mass, mh) and leaves
 * the others. */
LSSDEF int lss_mm_sample_preset(lss_mm_schedule s, lss_mm_sample_opts *o);
/* "fast" or "paper" -> *out; the name of a schedule ("?" when unknown). */
LSSDEF int lss_mm_schedule_parse(const char *name, lss_mm_schedule *out);
LSSDEF const char *lss_mm_schedule_name(lss_mm_schedule s);
/* sigma_min for noise variances nvar[npix]: LSS_MM_SIGMA_MIN unless the data are so precise that the
 * temperature would not lie well below the noise: then LSS_MM_SIGMA_MIN_NOISE x the smallest noise std. */
LSSDEF double lss_mm_auto_sigma_min(int64_t npix, const float *nvar);
/* The noise levels the default sampler visits for noise variances nvar[npix], the range a score prior is
 * trained and judged on: *lo = lss_mm_auto_sigma_min / 4 (the probability-flow ODE continues below the last
 * HMC temperature), *hi = 1 (the first temperature). */
LSSDEF void lss_mm_sampler_sigma_range(int64_t npix, const float *nvar, double *lo, double *hi);
/* nsamples posterior samples in calls of at most `batch` chains: chains o->first_chain, ... in order, so
 * that the samples do not depend on the batch size without a residual score. o->progress (if any)
 * receives the fraction of samples done. st (may be NULL): HMC steps and levels of a chain, the rest
 * averaged over chains, seconds summed. Under MPI (lss_core.h) the batches are split over the ranks in
 * blocks and every rank returns all samples: bitwise those of the serial run (seconds: this rank's). */
LSSDEF int lss_mm_sample_batched(lss_mm_post *p, const lss_mm_sample_opts *o, int nsamples, int batch,
                                 float *samples, lss_mm_sample_stats *st);

/* ---------------------------------------------------------------- exact lognormal posterior (the ceiling)
 * The posterior of a shifted lognormal convergence field given its shear, sampled exactly by HMC in the generator's
 * white-noise variables (issue 15: how much any prior could gain over the Wiener filter on lognormal mocks). The
 * model is lss_mm_mock_kappa's: xi ~ N(0, 1) on the grid `big`, g = F^-1[sqrt(pg) F xi] with pg the Gaussian
 * spectrum of the shifted lognormal of spectrum pk_big and shift lambda (lss_field_lognormal_spectrum), kappa_big =
 * lambda (exp(g - var_g / 2) - 1), kappa its h x w centre with the mean removed (lambda = 0: kappa_big = g, pg =
 * pk_big: the Gaussian field); the data gamma = A kappa + noise of variance nvar per component (Kaiser-Squires A on
 * the h x w grid g). Chains: identity mass, leapfrog step tuned during burn-in to an acceptance near 0.7 and then
 * fixed, the number of leapfrog steps drawn uniformly in [leapfrog / 2, leapfrog]; chain c draws from
 * lss_stream(LSS_STREAM_MM_CHAIN, job nchains + c, LSS_MM_SUB_EXACT). */
#define LSS_MM_SUB_EXACT 4092u         /* exact lognormal posterior chains (purpose MM_CHAIN) */
typedef struct {
    int nchains;           /* independent chains (0: 4; at least 2, so that the Monte Carlo error can be measured) */
    int burn;              /* iterations discarded per chain, while the step is tuned (0: 300) */
    int iters;             /* iterations kept per chain (0: 200) */
    int leapfrog;          /* largest number of leapfrog steps per iteration (0: 24) */
    uint64_t seed;
    uint32_t job;          /* independent runs on one seed (fields) */
} lss_mm_exact_opts;
typedef struct {
    double accept;         /* mean acceptance after burn-in */
    double step;           /* mean tuned leapfrog step */
    double mc_var;         /* mean over the maps' pixels of the Monte Carlo variance of the posterior mean, from the spread
                              of the chains' means (variance ddof 1 / nchains) */
    double seconds;
} lss_mm_exact_stats;
/* The posterior mean of kappa (mean [h][w]), its pixel standard deviation (std, may be NULL) over all kept iterations
 * of all chains, and st (may be NULL). g: the h x w grid of the data; big: a larger grid of the same pixel (the mock's
 * twice-size grid); g1, g2, nvar [h][w] (masked pixels: nvar >= LSS_MM_EMPTY_VAR / 2, no data). */
LSSDEF int lss_mm_exact_lognormal(const lss_grid *big, const double *pk_big, double lambda, const lss_grid *g,
                                  const float *g1, const float *g2, const float *nvar, const lss_mm_exact_opts *o,
                                  float *mean, float *std, lss_mm_exact_stats *st);

/* ---------------------------------------------------------------- Kaiser-Squires smoothing scan */
/* The LSS_MM_KS_NSCALES smoothing scales (arcmin) scanned by default: 0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3. */
LSSDEF const double *lss_mm_ks_scales(void);
/* Kaiser-Squires of nfields shear fields shear[K][2][H][W] against the truths kappa[K][H][W] at each of
 * nscales smoothing scales: *best = the scale index of the least mean RMSE (lss_mm_metrics over mask > 0;
 * mask NULL: all pixels), rmse[nscales] (may be NULL) those means. */
LSSDEF int lss_mm_ks_best(const lss_grid *g, int nfields, const float *shear, const float *kappa,
                          const float *mask, int nscales, const double *scales, double *rmse, int *best);

/* ---------------------------------------------------------------- cluster detection (section 7.3) */
/* The default aperture for an h x w field: LSS_MM_DETECT_THETA_PIX, at most an eighth of the smaller side (the
 * filter reaches 2 theta: a quarter-field aperture would cover the whole field). */
LSSDEF double lss_mm_detect_theta(int h, int w);
/* Standard deviation over the pixels with mask > 0 (mask NULL: all) of the starlet-filtered map. */
LSSDEF int lss_mm_filtered_std(const lss_grid *g, const float *map, const float *mask, double theta_pix,
                               double *std);
/* The detection statistic: the maximum of the starlet-filtered map over the pixels whose centres
 * (integer + 0.5) lie within LSS_MM_DETECT_DISC x theta of (xc, yc). */
LSSDEF int lss_mm_detect_peak(const lss_grid *g, const float *map, double theta_pix, double xc, double yc,
                              double *peak);
/* Fraction of the n maps maps[n][H][W] whose detection statistic exceeds level. */
LSSDEF int lss_mm_detect_rate(const lss_grid *g, int n, const float *maps, double theta_pix, double xc,
                              double yc, double level, double *rate);

/* ---------------------------------------------------------------- mock data sets */
/* The stream of convergence field i of data set `set`: lss_stream(LSS_STREAM_MM_FIELD, lss_set_index(set,
 * i), 0). Mocks and evaluation fields are LSS_SET_TEST, training maps LSS_SET_TRAIN, held-out maps of
 * training LSS_SET_VALID, comparison simulations LSS_SET_FIDUCIAL: they never share a draw. */
LSSDEF uint64_t lss_mm_field_stream(lss_set set, uint64_t i);
/* Convergence map i of data set `set` (lss_mm_mock_kappa with lss_mm_field_stream(set, i)). */
LSSDEF int lss_mm_field(const lss_grid *big, const double *pk_big, double lambda, int h, int w, uint64_t seed,
                        lss_set set, uint64_t i, float *kappa);
typedef struct {
    int size;              /* N x N pixels (0: 64) */
    int nfields;           /* 0: 4 */
    int pad;               /* fields are cut out of a grid pad times larger (0: 2) */
    double pix_arcmin;     /* 0: LSS_MM_COSMOS_PIX_ARCMIN */
    double shift;          /* lognormal shift (0: the empty-beam convergence of the COSMOS n(z)) */
    int gaussian;          /* 1: Gaussian fields (no shift) */
    int nell;              /* rows of the theory C_kk table, ell 10^0.5 .. 10^5.5 (0: 200) */
    int catalogue;         /* 1: a galaxy catalogue of field 0 as well */
    lss_mm_survey_opts survey;
    uint64_t seed;
    int model;             /* LSS_MM_MODEL_LOGNORMAL (0) or LSS_MM_MODEL_HALO (1: lss_mm_halo_field, default halo options
                              with this size, pad and pixel) */
} lss_mm_mock_opts;
enum { LSS_MM_MODEL_LOGNORMAL = 0, LSS_MM_MODEL_HALO = 1 };
/* A mock data set: K fields of H x W pixels sharing one survey (mask, galaxy counts, noise). */
typedef struct {
    int h, w, nfields;
    double pix_arcmin, shift;
    uint64_t seed;
    float *kappa;          /* [K][H][W] true convergence */
    float *shear;          /* [K][2][H][W] noisy masked shear */
    float *nvar, *mask, *count;  /* [H][W] noise variance per component, mask, galaxies per pixel */
    double *ell, *cl;      /* [nell] the convergence spectrum (Planck 2015, COSMOS n(z)) */
    int nell;
    lss_mm_catalogue cat;  /* galaxies of field 0 (n = 0 when not made) */
    int model;             /* LSS_MM_MODEL_LOGNORMAL or LSS_MM_MODEL_HALO (grid.csv column "model"; absent: lognormal) */
} lss_mm_mock;
/* Makes the whole mock: theory C_kk, mask (lss_mm_mock_mask), counts and noise (lss_mm_mock_noise_map),
 * per field the convergence (lss_mm_field, LSS_SET_TEST field f; with model LSS_MM_MODEL_HALO lss_mm_halo_field of a
 * model with the default options at the mock's size, pad and pixel, fields in parallel) and the noisy shear (stream
 * lss_stream(LSS_STREAM_MM_NOISE, lss_set_index(LSS_SET_TEST, f), 0)), and the catalogue when asked
 * (positions uniform in their pixel, e = gamma + N(0, sigma_e)). Free with lss_mm_mock_free. */
LSSDEF int lss_mm_mock_create(const lss_mm_mock_opts *o, lss_mm_mock **out);
LSSDEF void lss_mm_mock_free(lss_mm_mock *m);
/* Writes DIR (which must exist): kappa.npy [K,H,W], shear.npy [K,2,H,W], noise_var.npy, mask.npy,
 * count.npy, ps.csv (ell, cl), grid.csv (h, w, pixel_arcmin, shift, nfields, seed, model) and, with a catalogue,
 * catalogue.csv (x, y, e1, e2). */
LSSDEF int lss_mm_mock_save(const lss_mm_mock *m, const char *dir);
/* Reads a directory written by lss_mm_mock_save (columns and metadata by name; shapes checked). */
LSSDEF int lss_mm_mock_load(const char *dir, lss_mm_mock **out);
/* The grid of a mock, pad times its size (pad >= 1), and the prior spectrum on it (pk: LSS_MALLOC'd
 * doubles, one per pixel; free with LSS_FREE). */
LSSDEF int lss_mm_mock_grid(const lss_mm_mock *m, int pad, lss_grid **g, double **pk);

/* Trains a network on maps drawn on the fly like the fields of mock m (its spectrum, shift and, for
 * DeepMass, noise; halo-model maps, train_opts.halo, for a halo mock) on a grid twice its size: creates the
 * network for grid g (the mock's grid) with options no, fills the big, pk_big, lambda and nvar of a copy of to
 * from the mock (and, for a score network whose to->sigma_min, sigma_max are 0 and sigma_mix >= 0, the noise
 * range lss_mm_sampler_sigma_range) and runs lss_mm_net_train. res (may be NULL) as there. */
LSSDEF int lss_mm_train_on_mock(const lss_grid *g, const lss_mm_mock *m, const lss_mm_net_opts *no,
                                const lss_mm_train_opts *to, lss_mm_train_result *res, lss_mm_net **out);
/* lss_mm_net_heldout_sigma on validation maps drawn like mock m's fields (its model, spectrum and shift, as
 * lss_mm_train_on_mock trains): the held-out table of a prior trained on that mock. to: seed and batch. */
LSSDEF int lss_mm_heldout_sigma_on_mock(lss_mm_net *net, const lss_mm_mock *m, const lss_mm_train_opts *to, int nbatch, int nsig,
                                        const double *sigmas, double *loss_gauss, double *loss_net, double *se_diff);

/* ---------------------------------------------------------------- halo-model convergence (mock pieces)
 * A non-Gaussian convergence model with halo structure at arcminute resolution (issue 15, item 2): the map is
 * the sum of the convergence of discrete halos and of a Gaussian smooth component, cut out of a grid pad times
 * larger and mean-subtracted like lss_mm_mock_kappa. All masses in Msun/h, lengths comoving Mpc/h.
 *  - sigma(M, z) = D+(z) sigma(R, 0), R = (3 M / (4 pi rho_m))^(1/3), sigma^2(R) = int dlnk k^3 P_lin(k, 0) / (2 pi^2)
 *    W^2(kR), W(x) = 3 (sin x - x cos x) / x^3 (real-space top hat), P_lin of lss_cosmo (Eisenstein-Hu, sigma_8).
 *  - Mass function: Sheth & Tormen (1999), MNRAS 308, 119, eq. 10 written per ln nu with nu = delta_c / sigma,
 *    delta_c = 1.686: dn/dlnM = rho_m / M  nu f(nu) |dln nu / dlnM|,
 *    nu f(nu) = A sqrt(2 q / pi) nu (1 + (q nu^2)^-p) exp(-q nu^2 / 2), A = 0.3222, q = 0.707, p = 0.3
 *    (normalised: int nu f dln nu = 1). Bias: Sheth, Mo & Tormen (2001) / ST99 eq. 12,
 *    b = 1 + (q nu^2 - 1) / delta_c + 2 p / (delta_c (1 + (q nu^2)^p)).
 *    Mass definition: M = M200m (200 times the mean matter density). ST masses are friends-of-friends-like; taking
 *    them as M200m is a simplification (the two differ by about 10% in mass).
 *  - Concentration: Duffy et al. (2008), MNRAS 390, L64, Table 1, NFW, Delta = 200 mean, full sample (0 < z < 2):
 *    c200m = 10.14 (M / 2e12)^-0.081 (1 + z)^-1.01 (extrapolated to z = 3).
 *  - Profile: NFW truncated at r200m (spherical sharp truncation), projected analytically (Takada & Jain 2003, MNRAS
 *    340, 580, eq. 27): Sigma(R) = M f_c / (2 pi r_s^2) F(R / r_s, c), f_c = 1 / (ln(1 + c) - c / (1 + c)),
 *      x < 1:      F = -sqrt(c^2 - x^2) / ((1 - x^2)(1 + c)) + (1 - x^2)^-3/2 arccosh((x^2 + c) / (x (1 + c)))
 *      1 < x < c:  F = -sqrt(c^2 - x^2) / ((1 - x^2)(1 + c)) - (x^2 - 1)^-3/2 arccos((x^2 + c) / (x (1 + c)))
 *      x >= c:     F = 0;
 *    its Fourier transform u(k) (Cooray & Sheth 2002, Phys. Rep. 372, 1, eq. 81; sine and cosine integrals).
 *  - Lensing: a halo at comoving distance chi has kappa(theta) = W(chi) Sigma(chi theta) / rho_m, W the lensing
 *    kernel of the source n(z) (lss_cl_lensing_kernel: 3/2 Om (H0/c)^2 chi (1 + z) int n (chi' - chi) / chi', the
 *    Sigma / Sigma_crit of the sources behind the lens, averaged over n(z)); so int kappa dOmega = W M / (rho_m chi^2).
 *  - Placement: nshells shells uniform in chi from z = 0.01 to z_max; per shell b, a Gaussian realisation delta_b of
 *    the shell's projected linear density (Limber, C_b(ell) = int_b dchi P_lin((ell + 1/2) / chi, z) / (chi^2 Dchi^2))
 *    on the padded grid; in every pixel the halo count of mass bin j is Poisson with mean
 *    n_j(z_b) dV_pix max(1 + b_j delta_b, 0) (nmass bins in ln M from m_min to m_max; within a bin ln M follows the
 *    power law through the mass function at the bin edges; the mass function at the shell's central redshift);
 *    the halo's chi is drawn with density chi^2 in the shell, its position uniform in the pixel. No halo exclusion.
 *    Halos centred outside the padded grid are not drawn.
 *  - Painting: each halo's profile averaged over sub x sub points per pixel (sub = ceil(2 / r_s in pixels), within
 *    [4, 8]) on the pixels within r200m of the centre, then rescaled so that the stamp holds exactly the analytic
 *    total W M / (rho_m chi^2 Omega_pix) (the rescaling corrects the sub-pixel quadrature error; see lss_mm_halo_paint).
 *  - Smooth component: a Gaussian field of spectrum C_smooth = max(C_theory - C_1h - C_2h, 0), C_theory the Halofit
 *    C_kk of the n(z) (lss_mm_theory_ckk), C_1h = sum_b int_b dchi W^2 / chi^2 int dlnM dn/dlnM (M / rho_m)^2 u^2 and
 *    C_2h = sum_b C_b(ell) [int_b dchi W int dlnM dn/dlnM b (M / rho_m) u]^2 the spectra of the resolved halos as they
 *    are drawn (same shells and mass bins). It carries the mass below m_min, beyond z_max and the difference between
 *    the halo model and Halofit; it is independent of the halos (their cross-correlation with the unresolved mass is
 *    folded into its power). Where C_1h + C_2h exceeds C_theory the mock has more power than Halofit there. On the
 *    grid the smooth spectrum is P_theory - w^2 (P_1h + P_2h), clipped at 0, with w = sinc(pi f_x) sinc(pi f_y) the
 *    window of the pixel-averaged halos, so that the map's spectrum is the theory's without a pixel window (as the
 *    lognormal mocks and the Gaussian prior); the halo power beyond the Nyquist frequency that the painting aliases
 *    back is included (the window times P_halo summed over the aliases f + n, |n_x|, |n_y| <= 2).
 *    Measured (bench_halo_mocks, tests/test_halo.c): one painted halo matches its windowed transform to 2% below
 *    ell = 25,000 (7% at the Nyquist multipole, 37,000, for r_s of a pixel or more: the sub-pixel quadrature); the halos of
 *    whole maps carry 5-10% more power than C_1h + C_2h above ell = 1e4 (cause not identified; candidates are the
 *    edges of the non-periodic cut-outs and the clipping of 1 + b delta), so the maps exceed Halofit there by 3-7%.
 * The model holds the tables (mass function per shell, lensing weights, spectra, the smooth spectrum on the padded
 * grid); lss_mm_halo_field draws one map from them. Random numbers: lss_rng_for(seed, LSS_STREAM_MM_FIELD,
 * lss_set_index(set, index), sub) with sub LSS_MM_SUB_HALO_SMOOTH (smooth field), LSS_MM_SUB_HALO_DENSITY + b (shell
 * densities) and LSS_MM_SUB_HALO_CAT + b (halo counts, masses, positions), so a map is a pure function of
 * (seed, set, index), whatever the thread count (one map is drawn by one thread). */
#define LSS_MM_SUB_HALO_SMOOTH 1u    /* sub of the smooth component (sub 0 is the lognormal field) */
#define LSS_MM_SUB_HALO_DENSITY 256u /* + shell: the shell's linear density */
#define LSS_MM_SUB_HALO_CAT 1024u    /* + shell: halo counts, masses, distances and positions */
#define LSS_MM_HALO_MAX_SHELLS 200
typedef struct {
    int size;              /* largest side of the fields (0: 128) */
    int pad;               /* halos, densities and the smooth field on a grid pad times larger (0: 2) */
    double pix_arcmin;     /* 0: LSS_MM_COSMOS_PIX_ARCMIN (0.29) */
    double m_min, m_max;   /* halo masses M200m in Msun/h (0: 1e12 and 10^15.5); lower masses are in the smooth part */
    int nshells;           /* lens shells (0: 30) */
    double z_max;          /* farthest shell edge (0: 3) */
    int nmass;             /* mass bins (0: 40) */
    const lss_params *params;  /* cosmology (NULL: lss_mm_params_planck15) */
    const char *nz;        /* source n(z) as lss_mm_theory_ckk (NULL: "cosmos") */
    int no_smooth;         /* 1: halos only (diagnostics) */
    int no_bias;           /* 1: halos not modulated by the shell densities (Poisson only; diagnostics) */
} lss_mm_halo_opts;
/* Builds the tables (about 0.5 s); o may be NULL (defaults). LSS_ERR_RANGE for bad options (negative or non-finite
 * masses, m_min >= m_max, pixel <= 0, ...). Free with lss_mm_halo_free. */
LSSDEF int lss_mm_halo_create(const lss_mm_halo_opts *o, lss_mm_halo_model **out);
LSSDEF void lss_mm_halo_free(lss_mm_halo_model *m);
/* Convergence field `index` of data set `set` (h x w <= the padded grid; the centre cut out, mean removed). */
LSSDEF int lss_mm_halo_field(const lss_mm_halo_model *m, int h, int w, uint64_t seed, lss_set set, uint64_t index,
                             float *kappa);
/* The pieces, for tests and reports. sigma(M, z) with dln sigma / dln M (may be NULL), computed by the k integral;
 * Sheth-Tormen nu f(nu) per ln nu; dn/dlnM in (h/Mpc)^3 and the bias at (M, z); Duffy c200m; r200m (comoving Mpc/h);
 * the mean matter density rho_m in (Msun/h) / (Mpc/h)^3. NaN for bad arguments. */
LSSDEF double lss_mm_halo_sigma(const lss_mm_halo_model *m, double mass, double z, double *dlns_dlnm);
LSSDEF double lss_mm_halo_st_f(double nu);
LSSDEF double lss_mm_halo_dndlnm(const lss_mm_halo_model *m, double mass, double z);
LSSDEF double lss_mm_halo_bias(const lss_mm_halo_model *m, double mass, double z);
LSSDEF double lss_mm_halo_concentration(double mass, double z);
LSSDEF double lss_mm_halo_r200m(const lss_mm_halo_model *m, double mass);
LSSDEF double lss_mm_halo_rho_m(const lss_mm_halo_model *m);
/* Truncated NFW: F(x, c) of the projected profile above (x = R / r_s > 0) and the normalised Fourier transform
 * u(k r_s, c) (u -> 1 as k -> 0). */
LSSDEF double lss_mm_halo_tnfw_f(double x, double c);
LSSDEF double lss_mm_halo_tnfw_u(double krs, double c);
/* Adds the convergence of one halo of mass M at redshift z centred at continuous pixel coordinates (x, y) to an
 * h x w map of the model's pixel (pixel [j] spans [j, j + 1); the part outside the map is dropped). total (may be
 * NULL): the analytic sum over pixels of the whole stamp, W M / (rho_m chi^2 Omega_pix); raw (may be NULL): the
 * sub-pixel quadrature sum before rescaling divided by total (1 up to the quadrature error). */
LSSDEF int lss_mm_halo_paint(const lss_mm_halo_model *m, double mass, double z, double x, double y, int h, int w,
                             float *kappa, double *total, double *raw);
/* Views of the model's spectra on its ell table (owned by the model): theory (Halofit), 1-halo and 2-halo of the
 * resolved halos, smooth component. Any output may be NULL. */
LSSDEF int lss_mm_halo_spectra(const lss_mm_halo_model *m, int *nell, const double **ell, const double **cl_theory,
                               const double **cl_1h, const double **cl_2h, const double **cl_smooth);
/* Mean number of halos drawn per pixel of a field (all shells and masses) and the mean convergence they carry
 * (removed with the map mean). Either may be NULL. */
LSSDEF int lss_mm_halo_counts(const lss_mm_halo_model *m, double *halos_per_pixel, double *kappa_mean);

/* ---------------------------------------------------------------- evaluation (Table 1, figures 6-7) */
enum { LSS_MM_METHOD_KS = 0, LSS_MM_METHOD_WIENER = 1, LSS_MM_METHOD_POSTERIOR = 2,
       LSS_MM_METHOD_DEEPMASS = 3, LSS_MM_METHOD_POSTERIOR_GAUSS = 4, LSS_MM_METHOD_EXACT = 5, LSS_MM_NMETHODS = 6 };
typedef struct {
    int nfields;           /* the first nfields fields (0: all) */
    int nsamples;          /* posterior samples per field (0: 16; >= 2) */
    int batch;             /* chains per sampler call (0: 16) */
    lss_mm_sample_opts sample;  /* schedule and seed (sigma_min 0: lss_mm_auto_sigma_min); field f
                                   samples with job f */
    lss_mm_net *prior;     /* score residual (NULL: Gaussian prior alone) */
    lss_mm_net *deepmass;  /* DeepMass network (NULL: no DeepMass row) */
    int nsims;             /* prior simulations for figure 6 (0: 32; >= 2; LSS_SET_FIDUCIAL fields) */
    int nbins;             /* spectrum bins (0: LSS_MM_SPECTRUM_BINS), edges from lss_grid_ps_edges */
    int exact;             /* > 0 (lognormal or Gaussian mocks only): the exact posterior mean of the mock's own model
                              (lss_mm_exact_lognormal, exact_opts with iters = exact per chain; field f with job f), the
                              ceiling of what any prior could gain; its RMSE with the Monte Carlo term of its chains removed */
    lss_mm_exact_opts exact_opts;
    void (*progress)(void *user, int field, int nfields);
    void *progress_user;
} lss_mm_eval_opts;
typedef struct {
    int nfields, nsamples, nbins, nmethods;     /* nmethods: how many ran (ran[k] says which) */
    int ran[LSS_MM_NMETHODS];                   /* KS, Wiener, posterior always; DeepMass with o->deepmass; the
                                                   Gaussian-prior control (the same chains without the residual) with o->prior;
                                                   the exact lognormal posterior mean with o->exact */
    int h, w;
    double ks_smoothing, sigma_min;
    double *rmse, *r;                           /* [nfields][LSS_MM_NMETHODS], NaN where not run; the posterior rows'
                                                   RMSE with the Monte Carlo term removed: sqrt(max(MSE - vbar / nsamples,
                                                   0)), vbar the mean over observed pixels of the samples' variance (ddof 1)
                                                   (the mean of nsamples samples adds vbar / nsamples to the MSE); their r
                                                   likewise, r / sqrt(1 - (vbar / nsamples) / var(mean map)) */
    double *rmse_raw;                           /* [nfields][LSS_MM_NMETHODS]: RMSE as measured (= rmse but for the posterior rows) */
    double mean_rmse[LSS_MM_NMETHODS], std_rmse[LSS_MM_NMETHODS], mean_r[LSS_MM_NMETHODS], std_r[LSS_MM_NMETHODS];
                                                /* std over fields (ddof 0): NaN ("nan" in table1.csv, n/a) for one field */
    double mean_rmse_raw[LSS_MM_NMETHODS];
    double diff_rmse[LSS_MM_NMETHODS], se_diff_rmse[LSS_MM_NMETHODS], diff_r[LSS_MM_NMETHODS], se_diff_r[LSS_MM_NMETHODS];
                                                /* paired against the Wiener filter on the same fields: mean over fields of
                                                   (method - Wiener) and its standard error (std ddof 1 / sqrt(fields); NaN for
                                                   one field) */
    /* figure 6 (field 0), [nbins] each */
    double *ell, *cl_theory, *cl_truth, *cl_sims_mean, *cl_sims_std, *cl_samples_mean, *cl_samples_std,
        *cl_wiener, *cl_post_mean, *frac_within_2sigma;
    int bins_within_1sigma;                     /* bins where the samples' mean is within 1 sigma of the sims */
    /* figure 7 (field 0), [H*W] each; samples holds nsample_maps maps; deepmass NULL without it */
    float *truth, *ks, *wiener, *post_mean, *post_std, *samples, *deepmass;
    int nsample_maps;
    lss_mm_sample_stats cost;                   /* per sample, averaged over fields; seconds summed */
    lss_mm_exact_stats exact_cost;              /* the exact posterior's, averaged over fields; seconds summed */
} lss_mm_eval_result;
/* Table 1 on the fields of a mock: Kaiser-Squires at the scanned best smoothing (lss_mm_ks_best), Wiener
 * filter, posterior mean (Gaussian prior plus o->prior), DeepMass and, with o->prior, the Gaussian-prior
 * posterior mean from the same chains' random numbers (the control at the same sample count); every method on
 * the same fields. RMSE (posterior rows with the Monte Carlo term removed) and Pearson r (lss_mm_metrics over
 * observed pixels) per field, their mean and standard deviation over fields and the paired differences against
 * the Wiener filter with standard errors; the spectra and maps of field 0. Free with lss_mm_eval_free. */
LSSDEF int lss_mm_eval(const lss_mm_mock *m, const lss_mm_eval_opts *o, lss_mm_eval_result **out);
LSSDEF void lss_mm_eval_free(lss_mm_eval_result *r);
/* Writes into DIR (which must exist): table1.csv (one row per method that ran: method, smoothing_arcmin, rmse,
 * rmse_std, r, r_std, rmse_minus_wiener, rmse_minus_wiener_se, r_minus_wiener, r_minus_wiener_se, rmse_measured;
 * methods as LSS_MM_METHOD_*), fields.csv (per field: rmse and r of each method, nan where it did not run, and the
 * two sampled posterior rows' measured RMSE), spectra.csv and spectra.png (figure 6), figure7.png (truth, KS,
 * Wiener, posterior mean, std, three samples, or two and DeepMass when it ran) and deepmass0.png when DeepMass ran. */
LSSDEF int lss_mm_eval_save(const lss_mm_eval_result *r, const char *dir);

typedef struct {
    int field;             /* first mock field (0) */
    int nfields;           /* fields pooled, field .. field + nfields - 1 (0: all from field on, at most 8) */
    int nmasses;           /* halos (M200 in Msun, c200 = 1, z_l = 0.5, z_s = 1); 0: none */
    const double *masses;
    int nsamples, batch;   /* 0: 16, 16; nsamples >= 2 */
    lss_mm_sample_opts sample;  /* schedule and seed; row k (0: no halo) of pooled field q samples with job
                                   k nfields + q */
    double theta_pix;      /* 0: lss_mm_detect_theta */
    double threshold;      /* 0: LSS_MM_DETECT_THRESHOLD */
} lss_mm_detect_opts;
typedef struct {
    int nrows;             /* 1 + nmasses; row 0: no halo (the false-detection rate) */
    double *mass, *snr, *rate, *rs_arcmin, *kappa_s;
    double background_std, theta_pix;
    double background_std_mean;  /* the reference's level for comparison: the filtered std of the posterior mean */
    int nfields;           /* fields pooled */
    int nsamples;          /* posterior samples per row, over all pooled fields (the binomial error of a rate:
                              sqrt(r (1 - r) / nsamples)) */
} lss_mm_detect_result;
/* Section 7.3, with the background measured on what is thresholded: the posterior samples of nfields halo-free
 * fields are starlet-filtered and background_std is the std of the filtered samples over observed pixels, pooled
 * over the fields and samples (the reference's filtered posterior mean is shrunk: its std,
 * background_std_mean, gives a level that the samples' own fluctuations cross). Each NFW halo's shear is added
 * at the centre of every pooled field to its noisy shear (observed pixels); a sample detects it when
 * lss_mm_detect_peak exceeds threshold x background_std. Row 0, no halo, is the false-detection rate of the
 * same statistic on the halo-free samples. Input SNR (eq. 29): maximum of the filtered halo convergence over the
 * filtered std (observed pixels) of the true convergence, pooled over the fields. Free with lss_mm_detect_free. */
LSSDEF int lss_mm_detect(const lss_mm_mock *m, const lss_mm_detect_opts *o, lss_mm_detect_result **out);
LSSDEF void lss_mm_detect_free(lss_mm_detect_result *r);
/* Writes DIR/detect.csv (mass_msun, snr_input, detection_rate, rs_arcmin, kappa_s; row 0 no halo) and
 * DIR/detect.png (detection rate against input SNR, figure 9). */
LSSDEF int lss_mm_detect_save(const lss_mm_detect_result *r, const char *dir);

#ifdef __cplusplus
}
#endif
#endif /* LSS_MASSMAP_H */

/* ================================================================ implementation */
#ifdef LSS_MASSMAP_IMPLEMENTATION
#ifndef LSS_MASSMAP_IMPLEMENTATION_DONE
#define LSS_MASSMAP_IMPLEMENTATION_DONE

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifndef LSS_NO_FITS
#include <fitsio.h>
#endif
#if defined(_OPENMP) && !defined(LSS_NO_OPENMP)
#include <omp.h>
#define LSS__MM_OMP 1
#endif

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#define LSS__MM_ARCMIN (M_PI / 180.0 / 60.0)
#define LSS__MM_FWD(g, buf) lss_grid_fft((g), (buf), -1)
#define LSS__MM_INV(g, buf) lss_grid_fft((g), (buf), +1)
#define LSS__MM_FWD_D(g, buf) lss_grid_fft_d((g), (buf), -1)
#define LSS__MM_INV_D(g, buf) lss_grid_fft_d((g), (buf), +1)

/* ---- operators (float) */
static void lss__mm_k2g(const lss_grid *g, lss_grid_ws *w, const float *kE, const float *kB,
                        float *g1, float *g2) {
    int64_t i, n = lss_grid_npix(g);
    float s = 1.0f / (float)n;
    lss_cfloat *a = w->a;
    for (i = 0; i < n; i++) {
        a[i][0] = kE[i];
        a[i][1] = kB ? kB[i] : 0.0f;
    }
    LSS__MM_FWD(g, a);
    for (i = 0; i < n; i++) {
        float re = a[i][0], im = a[i][1], p1 = lss_grid_cos2(g)[i] * s, p2 = lss_grid_sin2(g)[i] * s;
        a[i][0] = p1 * re - p2 * im;
        a[i][1] = p2 * re + p1 * im;
    }
    LSS__MM_INV(g, a);
    for (i = 0; i < n; i++) {
        g1[i] = a[i][0];
        g2[i] = a[i][1];
    }
}

static void lss__mm_g2k(const lss_grid *g, lss_grid_ws *w, const float *g1, const float *g2,
                        float *kE, float *kB) {
    int64_t i, n = lss_grid_npix(g);
    float s = 1.0f / (float)n;
    lss_cfloat *a = w->a;
    for (i = 0; i < n; i++) {
        a[i][0] = g1[i];
        a[i][1] = g2[i];
    }
    LSS__MM_FWD(g, a);
    for (i = 0; i < n; i++) {
        float re = a[i][0], im = a[i][1], p1 = lss_grid_cos2(g)[i] * s, p2 = lss_grid_sin2(g)[i] * s;
        a[i][0] = p1 * re + p2 * im;
        a[i][1] = -p2 * re + p1 * im;
    }
    LSS__MM_INV(g, a);
    for (i = 0; i < n; i++) {
        kE[i] = a[i][0];
        if (kB) kB[i] = a[i][1];
    }
}

LSSDEF int lss_mm_kappa_to_shear(const lss_grid *g, const float *kE, const float *kB, float *g1,
                                 float *g2) {
    lss_grid_ws tmp, *w;
    if (!g || !kE || !g1 || !g2) return lss_seterr(LSS_ERR_ARG, "lss_mm_kappa_to_shear: NULL argument");
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    lss__mm_k2g(g, w, kE, kB, g1, g2);
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

LSSDEF int lss_mm_shear_to_kappa(const lss_grid *g, const float *g1, const float *g2, float *kE,
                                 float *kB) {
    lss_grid_ws tmp, *w;
    if (!g || !g1 || !g2 || !kE) return lss_seterr(LSS_ERR_ARG, "lss_mm_shear_to_kappa: NULL argument");
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    lss__mm_g2k(g, w, g1, g2, kE, kB);
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

LSSDEF int lss_mm_ks(const lss_grid *g, const float *g1, const float *g2, double smooth_arcmin,
                     float *kE, float *kB) {
    int s;
    if ((s = lss_mm_shear_to_kappa(g, g1, g2, kE, kB)) != LSS_OK) return s;
    if ((s = lss_grid_smooth(g, kE, kE, smooth_arcmin)) != LSS_OK) return s;
    if (kB && (s = lss_grid_smooth(g, kB, kB, smooth_arcmin)) != LSS_OK) return s;
    return LSS_OK;
}

static int lss__mm_check_pk(const lss_grid *g, const double *pk, const char *fn) {
    int64_t i;
    for (i = 0; i < lss_grid_npix(g); i++)
        if (!(pk[i] >= 0) || !isfinite(pk[i]))
            return lss_seterr(LSS_ERR_ARG, "%s: grid spectrum cell %lld is %g (must be finite and >= 0)", fn, (long long)i, pk[i]);
    return LSS_OK;
}

LSSDEF void lss_mm_params_planck15(lss_params *p) {
    lss_params_fiducial(p);
    p->omega_m = 0.3089;
    p->sigma_8 = 0.8159;
    p->h = 0.6774;
    p->n_s = 0.9667;
    p->omega_b = 0.0486;
    p->a_ia = 0.0;
}

static int lss__mm_theory_setup(const lss_params *p, const char *nz, lss_cosmo **c, lss_nz **bins, int *nb) {
    lss_params par;
    int s;
    if (p) par = *p;
    else lss_mm_params_planck15(&par);
    if (!nz || !*nz) nz = "cosmos";
    if (!strcmp(nz, "cosmos") || !strcmp(nz, "deeplss")) s = lss_nz_builtin(nz, bins, nb);
    else s = lss_nz_load(nz, bins, nb);
    if (s != LSS_OK) return s;
    if ((s = lss_cosmo_create(&par, c)) != LSS_OK) {
        lss_nz_free(*bins, *nb);
        *bins = NULL;
        return s;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_theory_ckk(const lss_params *p, const char *nz, int nell, const double *ell,
                             double *cl) {
    lss_cosmo *c = NULL;
    lss_nz *bins = NULL;
    int nb = 0, s, np, j;
    double *out;
    if (!ell || !cl || nell < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_theory_ckk: bad arguments");
    if ((s = lss__mm_theory_setup(p, nz, &c, &bins, &nb)) != LSS_OK) return s;
    np = lss_cl_npairs(1);
    out = (double *)LSS_MALLOC(sizeof(double) * (size_t)np * (size_t)nell);
    if (!out) {
        lss_cosmo_free(c);
        lss_nz_free(bins, nb);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_theory_ckk: out of memory");
    }
    /* one source distribution: the first bin; pair 0 is kk_1_1 */
    s = lss_cl_tomo_terms(c, bins, 1, ell, nell, LSS_CL_GG, out);
    if (s == LSS_OK)
        for (j = 0; j < nell; j++) cl[j] = out[j];
    LSS_FREE(out);
    lss_cosmo_free(c);
    lss_nz_free(bins, nb);
    return s;
}

LSSDEF int lss_mm_theory_kappa_empty(const lss_params *p, const char *nz, double *kappa_empty) {
    lss_cosmo *c = NULL;
    lss_nz *bins = NULL;
    int nb = 0, s, i, m = 2000;
    double zmax, chimax, sum = 0;
    if (!kappa_empty) return lss_seterr(LSS_ERR_ARG, "lss_mm_theory_kappa_empty: NULL output");
    if ((s = lss__mm_theory_setup(p, nz, &c, &bins, &nb)) != LSS_OK) return s;
    zmax = bins[0].z[bins[0].n - 1];
    chimax = lss_cosmo_chi(c, zmax);
    for (i = 0; i < m; i++) sum += lss_cl_lensing_kernel(c, &bins[0], (i + 0.5) * chimax / m) * chimax / m;
    *kappa_empty = sum;
    lss_cosmo_free(c);
    lss_nz_free(bins, nb);
    return LSS_OK;
}

/* ---- data: catalogues and binning */
LSSDEF void lss_mm_catalogue_free(lss_mm_catalogue *cat) {
    if (!cat) return;
    LSS_FREE(cat->x);
    LSS_FREE(cat->y);
    LSS_FREE(cat->e1);
    LSS_FREE(cat->e2);
    LSS_FREE(cat->w);
    memset(cat, 0, sizeof *cat);
}

static int lss__mm_cat_alloc(lss_mm_catalogue *cat, int64_t n) {
    size_t b = sizeof(double) * (size_t)(n > 0 ? n : 1);
    cat->n = n;
    cat->x = (double *)LSS_MALLOC(b);
    cat->y = (double *)LSS_MALLOC(b);
    cat->e1 = (double *)LSS_MALLOC(b);
    cat->e2 = (double *)LSS_MALLOC(b);
    cat->w = (double *)LSS_MALLOC(b);
    if (!cat->x || !cat->y || !cat->e1 || !cat->e2 || !cat->w) {
        lss_mm_catalogue_free(cat);
        return lss_seterr(LSS_ERR_NOMEM, "catalogue: out of memory for %lld galaxies", (long long)n);
    }
    return LSS_OK;
}

static int lss__mm_endswith(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The checks of every catalogue read or written: finite positions (|ra| <= 360, |dec| <= 90 degrees), |e1|, |e2| <=
 * LSS_MM_SHEAR_MAX, weights in [0, LSS_MM_WEIGHT_MAX], at least one galaxy. Returns status (LSS_ERR_FORMAT for a file
 * read, LSS_ERR_ARG for one to write) with the message "PREFIX: galaxy i[ (table row r)]: COLUMN = v (need ...)", or
 * LSS_OK. col: the five columns as the file names them (NULL: x or ra, y or dec, e1, e2, weight); row1 = 1 adds the
 * table row (counted from 1). */
static int lss__mm_cat_check(const lss_mm_catalogue *cat, const char *prefix, const char *const *col, int row1, int status) {
    static const char *const pix[5] = {"x", "y", "e1", "e2", "weight"}, *const sky[5] = {"ra", "dec", "e1", "e2", "weight"};
    int64_t i;
    for (i = 0; i < cat->n; i++) {
        int r = -1;
        double v = 0;
        if (!isfinite(cat->x[i]) || (cat->radec && !(fabs(cat->x[i]) <= 360))) r = 0, v = cat->x[i];
        else if (!isfinite(cat->y[i]) || (cat->radec && !(fabs(cat->y[i]) <= 90))) r = 1, v = cat->y[i];
        else if (!(fabs(cat->e1[i]) <= LSS_MM_SHEAR_MAX)) r = 2, v = cat->e1[i];
        else if (!(fabs(cat->e2[i]) <= LSS_MM_SHEAR_MAX)) r = 3, v = cat->e2[i];
        else if (!(cat->w[i] >= 0 && cat->w[i] <= LSS_MM_WEIGHT_MAX)) r = 4, v = cat->w[i];
        if (r >= 0) {
            char row[48] = "";
            if (row1) snprintf(row, sizeof row, " (table row %lld)", (long long)i + 1);
            return lss_seterr(status, "%s: galaxy %lld%s: %s = %g (need %s)", prefix, (long long)i, row,
                              col && col[r] ? col[r] : (cat->radec ? sky : pix)[r], v,
                              r == 2 || r == 3 ? "|e| <= 10" : r == 4 ? "a weight in [0, 1e10]" : !cat->radec ? "a finite number" :
                              r == 0 ? "|ra| <= 360 degrees" : "|dec| <= 90 degrees");
        }
    }
    if (cat->n == 0) return lss_seterr(status, "%s: the catalogue has no galaxies", prefix);
    return LSS_OK;
}

LSSDEF int lss_mm_catalogue_load(const char *path, int radec_npy, lss_mm_catalogue *cat) {
    int64_t i;
    int s;
    if (!path || !cat) return lss_seterr(LSS_ERR_ARG, "lss_mm_catalogue_load: NULL argument");
    memset(cat, 0, sizeof *cat);
    if (lss_mm_fits_path(path)) return lss_mm_fits_read_table(path, 0, cat);
    if (lss__mm_endswith(path, ".npy")) {
        lss_array a;
        int nc;
        if ((s = lss_npy_load(path, &a)) != LSS_OK) return s;
        if (a.ndim != 2 || (a.shape[1] != 4 && a.shape[1] != 5)) {
            lss_array_free(&a);
            return lss_seterr(LSS_ERR_SHAPE, "%s: catalogue NPY must be [n, 4] or [n, 5] (x, y, e1, e2[, w])", path);
        }
        nc = (int)a.shape[1];
        if ((s = lss__mm_cat_alloc(cat, a.shape[0])) != LSS_OK) {
            lss_array_free(&a);
            return s;
        }
        for (i = 0; i < cat->n; i++) {
            double v[5] = {0, 0, 0, 0, 1};
            int j;
            for (j = 0; j < nc; j++) {
                int64_t k = i * nc + j;
                switch (a.dtype) {
                case LSS_F32: v[j] = ((const float *)a.data)[k]; break;
                case LSS_F64: v[j] = ((const double *)a.data)[k]; break;
                case LSS_I32: v[j] = ((const int32_t *)a.data)[k]; break;
                default: v[j] = (double)((const int64_t *)a.data)[k]; break;
                }
            }
            cat->x[i] = v[0];
            cat->y[i] = v[1];
            cat->e1[i] = v[2];
            cat->e2[i] = v[3];
            cat->w[i] = v[4];
        }
        cat->radec = radec_npy ? 1 : 0;
        lss_array_free(&a);
    } else {
        lss_csv c;
        int cx, cy, c1, c2, cw;
        if ((s = lss_csv_read(path, &c)) != LSS_OK) return s;
        cx = lss_csv_col(&c, "x");
        cy = lss_csv_col(&c, "y");
        cat->radec = 0;
        if (cx < 0 || cy < 0) {
            cx = lss_csv_col(&c, "ra");
            cy = lss_csv_col(&c, "dec");
            cat->radec = 1;
        }
        c1 = lss_csv_col(&c, "e1");
        c2 = lss_csv_col(&c, "e2");
        cw = lss_csv_col(&c, "w");
        if (cw < 0) cw = lss_csv_col(&c, "weight");
        if (cx < 0 || cy < 0 || c1 < 0 || c2 < 0) {
            lss_csv_free(&c);
            return lss_seterr(LSS_ERR_FORMAT, "%s: catalogue CSV needs columns x,y (or ra,dec), e1, e2", path);
        }
        if ((s = lss__mm_cat_alloc(cat, c.nrows)) != LSS_OK) {
            lss_csv_free(&c);
            return s;
        }
        for (i = 0; i < c.nrows; i++) {
            const double *row = c.data + i * c.ncols;
            cat->x[i] = row[cx];
            cat->y[i] = row[cy];
            cat->e1[i] = row[c1];
            cat->e2[i] = row[c2];
            cat->w[i] = cw >= 0 ? row[cw] : 1.0;
        }
        lss_csv_free(&c);
    }
    if ((s = lss__mm_cat_check(cat, path, NULL, 0, LSS_ERR_FORMAT)) != LSS_OK) lss_mm_catalogue_free(cat);
    return s;
}

/* ---- sky coordinates: gnomonic projection and the ellipticity frame */
#define LSS__MM_DEG (M_PI / 180.0)

static int lss__mm_sky_ok(const lss_mm_sky *s, const char *fn) {
    if (!s) return lss_seterr(LSS_ERR_ARG, "%s: NULL frame", fn);
    if (!isfinite(s->ra0) || !(s->dec0 >= -90.0 && s->dec0 <= 90.0) || !(s->pix_arcmin > 0) || !isfinite(s->pix_arcmin) ||
        !isfinite(s->x0) || !isfinite(s->y0))
        return lss_seterr(LSS_ERR_ARG, "%s: bad frame (tangent point %g, %g; pixel %g arcmin; reference pixel %g, %g)", fn, s->ra0,
                          s->dec0, s->pix_arcmin, s->x0, s->y0);
    return LSS_OK;
}

/* Standard coordinates (xi east, eta north; radians) and cos c of a position; 0 when cos c <= 0. */
static int lss__mm_gnomonic(const lss_mm_sky *s, double ra, double dec, double *xi, double *eta, double *cosc) {
    double d0 = s->dec0 * LSS__MM_DEG, d = dec * LSS__MM_DEG, da = (ra - s->ra0) * LSS__MM_DEG;
    double c = sin(d0) * sin(d) + cos(d0) * cos(d) * cos(da);
    *cosc = c;
    if (!(c > 0)) return 0;
    *xi = cos(d) * sin(da) / c;
    *eta = (cos(d0) * sin(d) - sin(d0) * cos(d) * cos(da)) / c;
    return 1;
}

LSSDEF int lss_mm_sky_to_pix(const lss_mm_sky *s, double ra, double dec, double *x, double *y) {
    double xi, eta, c, pix;
    int st;
    if ((st = lss__mm_sky_ok(s, "lss_mm_sky_to_pix")) != LSS_OK) return st;
    if (!x || !y || !isfinite(ra) || !(dec >= -90.0 && dec <= 90.0))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_sky_to_pix: bad position (%g, %g) or NULL output", ra, dec);
    if (!lss__mm_gnomonic(s, ra, dec, &xi, &eta, &c))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_sky_to_pix: (%g, %g) is 90 degrees or more from the tangent point (%g, %g)", ra,
                          dec, s->ra0, s->dec0);
    pix = s->pix_arcmin / 60.0 * LSS__MM_DEG;
    *x = s->x0 + (s->flip_ra ? xi : -xi) / pix;
    *y = s->y0 + eta / pix;
    return LSS_OK;
}

LSSDEF int lss_mm_pix_to_sky(const lss_mm_sky *s, double x, double y, double *ra, double *dec) {
    double pix, xi, eta, d0, a, den;
    int st;
    if ((st = lss__mm_sky_ok(s, "lss_mm_pix_to_sky")) != LSS_OK) return st;
    if (!ra || !dec || !isfinite(x) || !isfinite(y)) return lss_seterr(LSS_ERR_ARG, "lss_mm_pix_to_sky: bad pixel (%g, %g) or NULL output", x, y);
    pix = s->pix_arcmin / 60.0 * LSS__MM_DEG;
    xi = (s->flip_ra ? 1.0 : -1.0) * (x - s->x0) * pix;
    eta = (y - s->y0) * pix;
    d0 = s->dec0 * LSS__MM_DEG;
    den = cos(d0) - eta * sin(d0);
    a = s->ra0 + atan2(xi, den) / LSS__MM_DEG;
    *dec = atan2(sin(d0) + eta * cos(d0), sqrt(xi * xi + den * den)) / LSS__MM_DEG;
    a = fmod(a, 360.0);
    if (a < 0) a += 360.0;
    if (a >= 360.0) a = 0.0;
    *ra = a;
    return LSS_OK;
}

LSSDEF int lss_mm_sky_shear(const lss_mm_sky *s, double ra, double dec, double e1, double e2, double *g1,
                            double *g2) {
    double xi, eta, c, d0, dt, c2, s2, r1, r2;
    int st;
    if ((st = lss__mm_sky_ok(s, "lss_mm_sky_shear")) != LSS_OK) return st;
    if (!g1 || !g2 || !isfinite(ra) || !(dec >= -90.0 && dec <= 90.0) || !isfinite(e1) || !isfinite(e2))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_sky_shear: bad input or NULL output");
    if (!lss__mm_gnomonic(s, ra, dec, &xi, &eta, &c))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_sky_shear: (%g, %g) is 90 degrees or more from the tangent point", ra, dec);
    d0 = s->dec0 * LSS__MM_DEG;
    dt = atan2(xi * sin(d0), cos(d0) - eta * sin(d0)); /* local north against the eta axis */
    c2 = cos(2 * dt);
    s2 = sin(2 * dt);
    r1 = e1 * c2 - e2 * s2;
    r2 = e1 * s2 + e2 * c2;
    *g1 = r1;
    *g2 = s->flip_ra ? r2 : -r2;
    return LSS_OK;
}

LSSDEF int lss_mm_shear_load(const char *path, int field, float **g, int *h, int *w) {
    float *d;
    int nd, s;
    int64_t sh[LSS_MAX_DIM], n, off = 0, i;
    if (!path || !g || !h || !w) return lss_seterr(LSS_ERR_ARG, "lss_mm_shear_load: NULL argument");
    *g = NULL;
    if (lss_mm_fits_path(path)) { /* a cube of 2K planes (gamma1, gamma2 of field f: planes 2f, 2f + 1): [K, 2, H, W] */
        int fh = 0, fw = 0, np = 0;
        if ((s = lss_mm_fits_read_image(path, 0, &d, &fh, &fw, &np, NULL)) != LSS_OK) return s;
        if (np % 2 || field < 0 || field >= np / 2) {
            LSS_FREE(d);
            return lss_seterr(LSS_ERR_SHAPE, "%s: a FITS shear file is a cube of 2 planes (gamma1, gamma2) or 2K planes for K fields; "
                              "this one has %d plane%s, field %d asked", path, np, np > 1 ? "s" : "", field);
        }
        nd = 4, sh[0] = np / 2, sh[1] = 2, sh[2] = fh, sh[3] = fw;
    } else if ((s = lss_npy_load_f32(path, &d, &nd, sh)) != LSS_OK) return s;
    if (nd >= 3 && (sh[nd - 2] > 65536 || sh[nd - 1] > 65536)) {
        LSS_FREE(d);
        return lss_seterr(LSS_ERR_SHAPE, "%s: maps of %lld x %lld pixels (at most 65536 a side)", path, (long long)sh[nd - 2], (long long)sh[nd - 1]);
    }
    if (nd == 3 && sh[0] == 2 && field == 0) *h = (int)sh[1], *w = (int)sh[2];
    else if (nd == 4 && sh[1] == 2 && field >= 0 && field < sh[0]) *h = (int)sh[2], *w = (int)sh[3], off = (int64_t)field * 2 * sh[2] * sh[3];
    else {
        LSS_FREE(d);
        return lss_seterr(LSS_ERR_SHAPE, "%s: expected shear [2, H, W] or [K, 2, H, W] holding field %d", path, field);
    }
    n = (int64_t)*h * *w;
    if (*h < 2 || *w < 2) {
        LSS_FREE(d);
        return lss_seterr(LSS_ERR_SHAPE, "%s: map %d x %d too small", path, *h, *w);
    }
    for (i = 0; i < 2 * n; i++)
        if (!(fabsf(d[off + i]) <= (float)LSS_MM_SHEAR_MAP_MAX)) {
            double v = d[off + i];
            LSS_FREE(d);
            return lss_seterr(LSS_ERR_FORMAT, "%s: field %d: gamma%d at pixel (%lld, %lld) is %g (need a finite |gamma| <= %g)", path, field,
                              (int)(i / n) + 1, (long long)(i % n / *w), (long long)(i % *w), v, LSS_MM_SHEAR_MAP_MAX);
        }
    if (off > 0) memmove(d, d + off, sizeof(float) * (size_t)(2 * n));
    *g = d;
    return LSS_OK;
}

LSSDEF int lss_mm_sky_json(const lss_mm_sky *s, int e2_sign, char *buf, size_t n) {
    int st, k;
    if ((st = lss__mm_sky_ok(s, "lss_mm_sky_json")) != LSS_OK) return st;
    if (!buf || n < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_sky_json: no buffer");
    k = snprintf(buf, n, "{\"projection\": \"gnomonic\", \"ra0_deg\": %.12g, \"dec0_deg\": %.12g, \"pixel_arcmin\": %.12g, "
                 "\"ref_pixel_xy\": [%.12g, %.12g], \"ref_pixel_note\": \"continuous pixel coordinates of the tangent point; pixel [j] "
                 "spans [j, j + 1)\", \"x_axis\": \"%s\", \"y_axis\": \"north\", \"ellipticity_frame\": \"sky: +e1 along RA, +e2 "
                 "north-east; e2 read times %d, rotated to the tangent-plane axes, %s on the grid\"}", s->ra0, s->dec0, s->pix_arcmin,
                 s->x0, s->y0, s->flip_ra ? "east" : "west", e2_sign < 0 ? -1 : 1, s->flip_ra ? "e2 kept" : "e2 negated");
    if (k < 0 || (size_t)k >= n) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sky_json: buffer of %zu bytes too small", n);
    return LSS_OK;
}

LSSDEF int lss_mm_bin_sky(const lss_mm_catalogue *cat, const lss_mm_bin_opts *o, lss_mm_sky *sky, int *h, int *w) {
    lss_mm_bin_opts def;
    lss_mm_sky k;
    double vx = 0, vy = 0, vz = 0, vn, xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    int64_t i;
    int s;
    if (!cat || cat->n < 1 || !cat->x || !sky || !h || !w) return lss_seterr(LSS_ERR_ARG, "lss_mm_bin_sky: empty catalogue or NULL output");
    if (!cat->radec) return lss_seterr(LSS_ERR_ARG, "lss_mm_bin_sky: the catalogue has pixel positions, not ra/dec");
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    if (o->h < 0 || o->w < 0 || o->pix_arcmin < 0 || !isfinite(o->pix_arcmin))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_bin_sky: negative size or bad pixel");
    memset(&k, 0, sizeof k);
    k.pix_arcmin = o->pix_arcmin > 0 ? o->pix_arcmin : LSS_MM_COSMOS_PIX_ARCMIN;
    k.flip_ra = o->flip_ra ? 1 : 0;
    for (i = 0; i < cat->n; i++)
        if (!isfinite(cat->x[i]) || !(cat->y[i] >= -90.0 && cat->y[i] <= 90.0))
            return lss_seterr(LSS_ERR_ARG, "lss_mm_bin_sky: galaxy %lld at (%g, %g) is not a sky position", (long long)i, cat->x[i], cat->y[i]);
    if (o->set_centre) {
        k.ra0 = o->ra0;
        k.dec0 = o->dec0;
    } else {
        for (i = 0; i < cat->n; i++) {
            double a = cat->x[i] * LSS__MM_DEG, d = cat->y[i] * LSS__MM_DEG;
            vx += cos(d) * cos(a);
            vy += cos(d) * sin(a);
            vz += sin(d);
        }
        vn = sqrt(vx * vx + vy * vy + vz * vz);
        if (!(vn > 1e-6 * (double)cat->n))
            return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin_sky: the galaxies have no mean direction (they cover the sky)");
        k.ra0 = atan2(vy, vx) / LSS__MM_DEG;
        if (k.ra0 < 0) k.ra0 += 360.0;
        k.dec0 = asin(vz / vn) / LSS__MM_DEG;
    }
    if ((s = lss__mm_sky_ok(&k, "lss_mm_bin_sky")) != LSS_OK) return s;
    for (i = 0; i < cat->n; i++) {
        double xi, eta, c;
        if (!lss__mm_gnomonic(&k, cat->x[i], cat->y[i], &xi, &eta, &c) || c < cos(80.0 * LSS__MM_DEG))
            return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin_sky: galaxy %lld at (%g, %g) is 80 degrees or more from the tangent point (%g, %g)",
                              (long long)i, cat->x[i], cat->y[i], k.ra0, k.dec0);
        if (!k.flip_ra) xi = -xi;
        if (xi < xmin) xmin = xi;
        if (xi > xmax) xmax = xi;
        if (eta < ymin) ymin = eta;
        if (eta > ymax) ymax = eta;
    }
    if (o->h > 0 && o->w > 0) {
        *h = o->h;
        *w = o->w;
        k.x0 = 0.5 * o->w;
        k.y0 = 0.5 * o->h;
    } else {
        double pix = k.pix_arcmin / 60.0 * LSS__MM_DEG, nx = (xmax - xmin) / pix, ny = (ymax - ymin) / pix;
        if (!(nx < 1e8 && ny < 1e8)) return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin_sky: the field is too large for pixels of %g arcmin", k.pix_arcmin);
        *w = (int)floor(nx) + 1;
        *h = (int)floor(ny) + 1;
        k.x0 = -xmin / pix;
        k.y0 = -ymin / pix;
    }
    *sky = k;
    return LSS_OK;
}

LSSDEF int lss_mm_bin(const lss_mm_catalogue *cat, const lss_mm_bin_opts *o, int *h_out, int *w_out,
                      float *g1, float *g2, float *nvar, float *count, int64_t *dropped,
                      double *sigma_e_used) {
    lss_mm_bin_opts def;
    lss_mm_sky sky;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY, esign;
    double se, *sw = NULL, *sw2 = NULL, *s1 = NULL, *s2 = NULL;
    int64_t i, n, drop = 0;
    int h, w, s;
    if (!cat || cat->n < 1 || !cat->x) return lss_seterr(LSS_ERR_ARG, "lss_mm_bin: empty catalogue");
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    if (o->h < 0 || o->w < 0 || o->pix_arcmin < 0 || o->sigma_e < 0 || o->e2_sign < -1 || o->e2_sign > 1)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_bin: negative size, pixel or sigma_e, or e2_sign %d not -1, 0 or 1", o->e2_sign);
    esign = o->e2_sign < 0 ? -1.0 : 1.0;
    for (i = 0; i < cat->n; i++) {
        if (cat->x[i] < xmin) xmin = cat->x[i];
        if (cat->x[i] > xmax) xmax = cat->x[i];
        if (cat->y[i] < ymin) ymin = cat->y[i];
        if (cat->y[i] > ymax) ymax = cat->y[i];
    }
    if (cat->radec) {
        if ((s = lss_mm_bin_sky(cat, o, &sky, &h, &w)) != LSS_OK) return s;
    } else {
        if (!o->set_origin) {
            xmin = o->h > 0 && o->w > 0 ? 0.0 : floor(xmin);
            ymin = o->h > 0 && o->w > 0 ? 0.0 : floor(ymin);
        } else {
            xmin = o->x0;
            ymin = o->y0;
            if (!isfinite(xmin) || !isfinite(ymin)) return lss_seterr(LSS_ERR_ARG, "lss_mm_bin: origin (%g, %g) is not finite", xmin, ymin);
        }
        if (o->h > 0 && o->w > 0) {
            h = o->h;
            w = o->w;
        } else {
            /* the bounding box, sized in double before it becomes an int (positions of 1e300 are no grid) */
            double bw = floor(xmax - xmin) + 1, bh = floor(ymax - ymin) + 1;
            if (!(bw >= 1 && bh >= 1 && bw * bh <= LSS_MM_BIN_MAX_PIX))
                return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin: the galaxies span %.6g x %.6g pixels (x %g..%g, y %g..%g); a grid holds at "
                                  "most %.0f pixels: check the coordinates or give the grid size", bh, bw, xmin, xmax, ymin, ymax,
                                  (double)LSS_MM_BIN_MAX_PIX);
            w = (int)bw;
            h = (int)bh;
        }
    }
    if (h < 2 || w < 2 || (int64_t)h * w > LSS_MM_BIN_MAX_PIX)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin: a grid of %d x %d pixels is too %s (2 x 2 to %lld pixels)", h, w, h < 2 || w < 2 ? "small" : "large",
                          (long long)LSS_MM_BIN_MAX_PIX);
    if (!(o->h > 0 && o->w > 0) && (int64_t)h * w > LSS_MM_BIN_SPARSE_PIX && (double)h * w > 1000.0 * (double)cat->n)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin: the bounding box of the %lld galaxies is %d x %d pixels (%.0f pixels per galaxy, %.3g MB "
                          "of maps): give the grid size or check the coordinates", (long long)cat->n, h, w, (double)h * w / (double)cat->n,
                          16e-6 * (double)h * w);
    if (h_out) *h_out = h;
    if (w_out) *w_out = w;
    if (!g1) return LSS_OK;
    if (!g2 || !nvar) return lss_seterr(LSS_ERR_ARG, "lss_mm_bin: g2 and nvar are required with g1");
    n = (int64_t)h * w;
    sw = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    sw2 = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    s1 = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    s2 = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!sw || !sw2 || !s1 || !s2) {
        LSS_FREE(sw); LSS_FREE(sw2); LSS_FREE(s1); LSS_FREE(s2);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_bin: out of memory");
    }
    memset(sw, 0, sizeof(double) * (size_t)n);
    memset(sw2, 0, sizeof(double) * (size_t)n);
    memset(s1, 0, sizeof(double) * (size_t)n);
    memset(s2, 0, sizeof(double) * (size_t)n);
    if (count) memset(count, 0, sizeof(float) * (size_t)n);
    {
        double m2 = 0, wsum = 0;
        for (i = 0; i < cat->n; i++) {
            double px, py, e1 = cat->e1[i], e2 = esign * cat->e2[i];
            int64_t ix, iy, k;
            if (cat->radec) {
                /* lss_mm_bin_sky checked every position: these cannot fail */
                lss_mm_sky_to_pix(&sky, cat->x[i], cat->y[i], &px, &py);
                lss_mm_sky_shear(&sky, cat->x[i], cat->y[i], cat->e1[i], esign * cat->e2[i], &e1, &e2);
            } else {
                px = cat->x[i] - xmin;
                py = cat->y[i] - ymin;
            }
            if (!(px >= 0 && px < w && py >= 0 && py < h) || cat->w[i] <= 0) { /* compared as doubles: no cast of 1e300 */
                drop++;
                continue;
            }
            ix = (int64_t)floor(px);
            iy = (int64_t)floor(py);
            if (ix >= w) ix = w - 1; /* px just below w */
            if (iy >= h) iy = h - 1;
            k = iy * w + ix;
            sw[k] += cat->w[i];
            sw2[k] += cat->w[i] * cat->w[i];
            s1[k] += cat->w[i] * e1;
            s2[k] += cat->w[i] * e2;
            if (count) count[k] += 1.0f;
            m2 += cat->w[i] * 0.5 * (cat->e1[i] * cat->e1[i] + cat->e2[i] * cat->e2[i]);
            wsum += cat->w[i];
        }
        se = o->sigma_e > 0 ? o->sigma_e : (wsum > 0 ? sqrt(m2 / wsum) : 0.0);
    }
    for (i = 0; i < n; i++) {
        if (sw[i] > 0) {
            g1[i] = (float)(s1[i] / sw[i]);
            g2[i] = (float)(s2[i] / sw[i]);
            nvar[i] = (float)(se * se * sw2[i] / (sw[i] * sw[i]));
            if (!(nvar[i] > 0)) nvar[i] = (float)LSS_MM_EMPTY_VAR;
        } else {
            g1[i] = g2[i] = 0.0f;
            nvar[i] = (float)LSS_MM_EMPTY_VAR;
        }
    }
    LSS_FREE(sw); LSS_FREE(sw2); LSS_FREE(s1); LSS_FREE(s2);
    if (dropped) *dropped = drop;
    if (sigma_e_used) *sigma_e_used = se;
    if (drop == cat->n) return lss_seterr(LSS_ERR_RANGE, "lss_mm_bin: no galaxy falls on the %d x %d grid", h, w);
    return LSS_OK;
}

/* ---- FITS files */
static int lss__mm_lc(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }
static int lss__mm_ieq(const char *a, const char *b) { /* case-insensitive equality (ASCII) */
    for (; *a && *b; a++, b++)
        if (lss__mm_lc((unsigned char)*a) != lss__mm_lc((unsigned char)*b)) return 0;
    return !*a && !*b;
}

LSSDEF int lss_mm_fits_path(const char *path) {
    static const char *const ext[] = {".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz"};
    size_t n, k, m;
    if (!path) return 0;
    n = strlen(path);
    for (k = 0; k < sizeof ext / sizeof ext[0]; k++)
        if ((m = strlen(ext[k])) < n && lss__mm_ieq(path + n - m, ext[k])) return 1;
    return 0;
}

#ifdef LSS_NO_FITS
static int lss__mm_nofits(const char *fn, const char *path) {
    return lss_seterr(LSS_ERR_UNSUPPORTED, "%s: %s: FITS support was compiled out (LSS_NO_FITS); rebuild without it and link "
                      "-lcfitsio, or use NPY/CSV", fn, path ? path : "(null)");
}
LSSDEF int lss_mm_fits_read_image(const char *path, int hdu, float **data, int *h, int *w, int *nplanes, double *pix_arcmin) {
    (void)hdu, (void)h, (void)w, (void)nplanes, (void)pix_arcmin;
    if (data) *data = NULL;
    return lss__mm_nofits("lss_mm_fits_read_image", path);
}
LSSDEF int lss_mm_fits_write_image(const char *path, const float *data, int nplanes, int h, int w, double pix_arcmin) {
    (void)data, (void)nplanes, (void)h, (void)w, (void)pix_arcmin;
    return lss__mm_nofits("lss_mm_fits_write_image", path);
}
LSSDEF int lss_mm_fits_read_table(const char *path, int hdu, lss_mm_catalogue *cat) {
    (void)hdu;
    if (cat) memset(cat, 0, sizeof *cat);
    return lss__mm_nofits("lss_mm_fits_read_table", path);
}
LSSDEF int lss_mm_fits_write_table(const char *path, const lss_mm_catalogue *cat) {
    (void)cat;
    return lss__mm_nofits("lss_mm_fits_write_table", path);
}
#else
#define LSS__MM_FITS_MAXHDU 10000            /* HDUs scanned for hdu = 0 */
#define LSS__MM_FITS_ZPIX ((int64_t)1 << 28) /* pixels of a tile-compressed image at most (1 GB of floats) */

/* A cfitsio failure as a status and message "PREFIX: WHAT: cfitsio's text (cfitsio status N)"; clears cfitsio's
 * message stack. */
static int lss__mm_fits_err(int st, const char *prefix, const char *what) {
    char t[FLEN_STATUS];
    int code = st == MEMORY_ALLOCATION ? LSS_ERR_NOMEM : st == FILE_NOT_OPENED ? LSS_ERR_IO : LSS_ERR_FORMAT;
    fits_get_errstatus(st, t);
    fits_clear_errmsg();
    return lss_seterr(code, "%s: %s: %s (cfitsio status %d)", prefix, what, t, st);
}

/* Opens a FITS file for reading: the path through lss_fopen_read first (the project's messages for a missing file, a
 * directory, no permission), then cfitsio without its extended file-name syntax. */
static int lss__mm_fits_open(const char *path, fitsfile **f) {
    FILE *fp;
    int s, st = 0;
    *f = NULL;
    if ((s = lss_fopen_read(path, &fp, NULL)) != LSS_OK) return s;
    fclose(fp);
    if (fits_open_diskfile(f, path, READONLY, &st)) {
        *f = NULL;
        return lss__mm_fits_err(st, path, "not a readable FITS file");
    }
    return LSS_OK;
}
static void lss__mm_fits_close(fitsfile *f) {
    int st = 0;
    if (f) fits_close_file(f, &st);
    fits_clear_errmsg();
}

/* Moves to HDU hdu (from 1), or with hdu = 0 to the first image HDU with NAXIS > 0 (table = 0) or the first table
 * (table = 1); *at gets its number. */
static int lss__mm_fits_seek(fitsfile *f, const char *path, int hdu, int table, int *at) {
    int k, st = 0, type, naxis, nh = 0;
    const char *want = table ? "a table (BINTABLE or TABLE)" : "an image with NAXIS > 0";
    if (hdu < 0) return lss_seterr(LSS_ERR_ARG, "%s: HDU %d (need 0 for the first HDU holding %s, or 1, 2, ...)", path, hdu, want);
    for (k = hdu ? hdu : 1; k <= (hdu ? hdu : LSS__MM_FITS_MAXHDU); k++) {
        if (fits_movabs_hdu(f, k, &type, &st)) {
            if (st != END_OF_FILE) {
                char w[64];
                snprintf(w, sizeof w, "HDU %d", k);
                return lss__mm_fits_err(st, path, w);
            }
            fits_clear_errmsg();
            st = 0;
            fits_get_num_hdus(f, &nh, &st);
            fits_clear_errmsg();
            if (hdu) return lss_seterr(LSS_ERR_FORMAT, "%s: no HDU %d (the file has %d)", path, hdu, nh);
            return lss_seterr(LSS_ERR_FORMAT, "%s: no HDU holds %s (%d HDU%s)", path, want, nh, nh == 1 ? "" : "s");
        }
        naxis = 0;
        if (fits_get_hdu_type(f, &type, &st) || (type == IMAGE_HDU && fits_get_img_dim(f, &naxis, &st))) {
            char w[64];
            snprintf(w, sizeof w, "HDU %d", k);
            return lss__mm_fits_err(st, path, w);
        }
        if (table ? type == BINARY_TBL || type == ASCII_TBL : type == IMAGE_HDU && naxis > 0) {
            *at = k;
            return LSS_OK;
        }
        if (hdu)
            return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d is %s, not %s", path, hdu,
                              type != IMAGE_HDU ? "a table" : naxis == 0 ? "an image with no data (NAXIS = 0)" : "an image", want);
    }
    return lss_seterr(LSS_ERR_FORMAT, "%s: no HDU holds %s among the first %d", path, want, LSS__MM_FITS_MAXHDU);
}

/* Data bytes the current HDU's header announces (from its data start) against the bytes the file holds. */
static int lss__mm_fits_sized(fitsfile *f, const char *path, int hdu, LONGLONG need) {
    LONGLONG hs, ds, de;
    int st = 0;
    if (fits_get_hduaddrll(f, &hs, &ds, &de, &st)) return lss__mm_fits_err(st, path, "HDU addresses");
    if (need > f->Fptr->filesize - ds)
        return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d is truncated: its header announces %lld data bytes, the file holds %lld", path,
                          hdu, (long long)need, (long long)(f->Fptr->filesize > ds ? f->Fptr->filesize - ds : 0));
    return LSS_OK;
}

/* Pixel size (arcmin) from PIXSCALE (arcmin), else the WCS (CD1_1, CD2_1 or CDELT1 with CUNIT1); NaN when none. */
static int lss__mm_fits_pixscale(fitsfile *f, const char *path, int hdu, double *pix) {
    double v = 0, c1 = 0, c2 = 0, unit = 60.0;
    char u[FLEN_VALUE];
    int st = 0, h1, h2;
    *pix = NAN;
    if (!fits_read_key(f, TDOUBLE, "PIXSCALE", &v, NULL, &st)) {
        if (!(v > 0 && v < 1e6))
            return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: PIXSCALE = %g is not a pixel size in arcmin (need 0 < PIXSCALE < 1e6)", path, hdu, v);
        *pix = v;
        return LSS_OK;
    }
    if (st != KEY_NO_EXIST) {
        fits_clear_errmsg();
        return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: PIXSCALE is not a number (cfitsio status %d)", path, hdu, st);
    }
    st = 0, h1 = !fits_read_key(f, TDOUBLE, "CD1_1", &c1, NULL, &st);
    st = 0, h2 = !fits_read_key(f, TDOUBLE, "CD2_1", &c2, NULL, &st);
    if (h1 || h2) v = sqrt((h1 ? c1 * c1 : 0) + (h2 ? c2 * c2 : 0));
    else if (st = 0, !fits_read_key(f, TDOUBLE, "CDELT1", &c1, NULL, &st)) v = fabs(c1);
    else v = NAN;
    st = 0;
    if (!fits_read_key(f, TSTRING, "CUNIT1", u, NULL, &st)) {
        if (lss__mm_ieq(u, "deg") || lss__mm_ieq(u, "degree") || lss__mm_ieq(u, "degrees")) unit = 60.0;
        else if (lss__mm_ieq(u, "arcmin")) unit = 1.0;
        else if (lss__mm_ieq(u, "arcsec")) unit = 1.0 / 60.0;
        else unit = NAN; /* another unit: no pixel size */
    }
    fits_clear_errmsg();
    if (v > 0 && isfinite(v * unit) && v * unit < 1e6) *pix = v * unit;
    return LSS_OK;
}

LSSDEF int lss_mm_fits_read_image(const char *path, int hdu, float **data, int *h, int *w, int *nplanes, double *pix_arcmin) {
    fitsfile *f;
    int s, st = 0, at = 0, bitpix = 0, naxis = 0, anynul = 0, zip = 0;
    LONGLONG ax[3] = {0, 0, 1}, n, i;
    float nul, *d;
    double pix;
    if (data) *data = NULL;
    if (!path || !data || !h || !w || !nplanes) return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_read_image: NULL argument");
    if ((s = lss__mm_fits_open(path, &f)) != LSS_OK) return s;
    if ((s = lss__mm_fits_seek(f, path, hdu, 0, &at)) != LSS_OK || (s = lss__mm_fits_pixscale(f, path, at, &pix)) != LSS_OK) {
        lss__mm_fits_close(f);
        return s;
    }
    if (fits_get_img_paramll(f, 3, &bitpix, &naxis, ax, &st) || (zip = fits_is_compressed_image(f, &st), st)) {
        lss__mm_fits_close(f);
        return lss__mm_fits_err(st, path, "image parameters");
    }
    if (naxis != 2 && naxis != 3) {
        lss__mm_fits_close(f);
        return lss_seterr(LSS_ERR_SHAPE, "%s: HDU %d: NAXIS = %d (need a 2-D image [H, W] or a 3-D cube [K, H, W])", path, at, naxis);
    }
    if (ax[0] < 2 || ax[0] > 65536 || ax[1] < 2 || ax[1] > 65536 || ax[2] < 1 || ax[2] > 65536) {
        lss__mm_fits_close(f);
        return lss_seterr(LSS_ERR_SHAPE, "%s: HDU %d: image of %lld x %lld pixels and %lld planes (sides 2..65536, 1..65536 planes)", path,
                          at, (long long)ax[1], (long long)ax[0], (long long)ax[2]);
    }
    n = ax[0] * ax[1] * ax[2];
    if (zip && n > LSS__MM_FITS_ZPIX)
        s = lss_seterr(LSS_ERR_SHAPE, "%s: HDU %d: a compressed image of %lld pixels (at most %lld)", path, at, (long long)n,
                       (long long)LSS__MM_FITS_ZPIX);
    else if (!zip) s = lss__mm_fits_sized(f, path, at, n * (bitpix < 0 ? -bitpix : bitpix) / 8);
    if (s != LSS_OK) {
        lss__mm_fits_close(f);
        return s;
    }
    if (!(d = (float *)LSS_MALLOC(sizeof(float) * (size_t)n))) {
        lss__mm_fits_close(f);
        return lss_seterr(LSS_ERR_NOMEM, "%s: out of memory for %lld pixels", path, (long long)n);
    }
    /* integer pixels equal to BLANK read as NaN; float pixels as stored (a null value would make cfitsio turn subnormals and -0
     * into 0) */
    nul = bitpix > 0 ? NAN : 0.0f;
    if (fits_read_img(f, TFLOAT, 1, n, &nul, d, &anynul, &st)) {
        LSS_FREE(d);
        lss__mm_fits_close(f);
        return lss__mm_fits_err(st, path, st == NUM_OVERFLOW ? "pixels beyond the float range" : "reading the pixels");
    }
    lss__mm_fits_close(f);
    for (i = 0; i < n; i++)
        if (!isfinite(d[i])) {
            double v = d[i];
            LSS_FREE(d);
            return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: pixel [%lld, %lld, %lld] ([plane, y, x]) is %s (need finite values: a masked pixel "
                              "is 0 with a large noise variance)", path, at, (long long)(i / (ax[0] * ax[1])), (long long)(i / ax[0] % ax[1]),
                              (long long)(i % ax[0]), isnan(v) ? "undefined (NaN or BLANK)" : v > 0 ? "inf" : "-inf");
        }
    *data = d, *w = (int)ax[0], *h = (int)ax[1], *nplanes = (int)ax[2];
    if (pix_arcmin) *pix_arcmin = pix;
    return LSS_OK;
}

/* Closes a FITS file built in memory by fits_create_memfile(&f, buf, sz, ...) (cfitsio may move *buf until it is closed;
 * the file ends with its last HDU) and writes it through lss_wfile; frees *buf. st: cfitsio's status so far. */
static int lss__mm_fits_put(const char *fn, const char *path, fitsfile *f, void **buf, size_t *sz, int st) {
    LONGLONG hs, ds, de = 0;
    int s = LSS_OK, st2 = 0;
    lss_wfile wf;
    if (!st) fits_write_chksum(f, &st);
    if (!st) fits_get_hduaddrll(f, &hs, &ds, &de, &st);
    fits_close_file(f, &st2);
    if (!st && !st2 && (de <= 0 || (size_t)de > *sz)) st = MEMORY_ALLOCATION; /* not expected: the buffer holds the whole file */
    if (st || st2) {
        free(*buf);
        *buf = NULL;
        return lss__mm_fits_err(st ? st : st2, fn, path);
    }
    if ((s = lss_wfile_open(&wf, path)) == LSS_OK) {
        if (fwrite(*buf, 1, (size_t)de, wf.f) != (size_t)de) {
            int e = errno;
            lss_wfile_abort(&wf);
            s = lss_seterr(LSS_ERR_IO, "%s: cannot write '%s': %s", fn, path, strerror(e));
        } else s = lss_wfile_commit(&wf);
    }
    free(*buf);
    *buf = NULL;
    return s;
}

LSSDEF int lss_mm_fits_write_image(const char *path, const float *data, int nplanes, int h, int w, double pix_arcmin) {
    fitsfile *f = NULL;
    void *buf = NULL;
    size_t sz = 0;
    int st = 0;
    long ax[3];
    int64_t i, n;
    if (!path || !data) return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_write_image: NULL argument");
    if (h < 2 || h > 65536 || w < 2 || w > 65536 || nplanes < 1 || nplanes > 65536)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_write_image: %s: %d planes of %d x %d pixels (sides 2..65536, 1..65536 planes)", path,
                          nplanes, h, w);
    if (!(pix_arcmin == 0 || isnan(pix_arcmin) || (pix_arcmin > 0 && pix_arcmin < 1e6)))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_write_image: %s: pixel size %g arcmin (need 0 < pix < 1e6, or 0 or NaN for none)", path,
                          pix_arcmin);
    n = (int64_t)nplanes * h * w;
    for (i = 0; i < n; i++)
        if (!isfinite(data[i]))
            return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_write_image: %s: pixel [%lld, %lld, %lld] ([plane, y, x]) is %g (the FITS maps of lss "
                              "hold finite values)", path, (long long)(i / ((int64_t)h * w)), (long long)(i / w % h), (long long)(i % w), data[i]);
    ax[0] = w, ax[1] = h, ax[2] = nplanes;
    if (fits_create_memfile(&f, &buf, &sz, 0, realloc, &st)) {
        free(buf);
        return lss__mm_fits_err(st, "lss_mm_fits_write_image", path);
    }
    fits_create_img(f, FLOAT_IMG, nplanes > 1 ? 3 : 2, ax, &st);
    if (pix_arcmin > 0) { /* 15 significant digits when they give the same double back (0.29, not 0.28999999999999998) */
        char t[40];
        snprintf(t, sizeof t, "%.15g", pix_arcmin);
        fits_write_key_dbl(f, "PIXSCALE", pix_arcmin, strtod(t, NULL) == pix_arcmin ? -15 : -17, "pixel size (arcmin)", &st);
    }
    fits_write_key_str(f, "ORIGIN", "lss", "written by lss_massmap.h", &st);
    fits_write_comment(f, nplanes > 1 ? "Maps [K, H, W] in C order: NAXIS1 = W (x), NAXIS2 = H (y), NAXIS3 = K." :
                                        "A map [H, W] in C order: NAXIS1 = W (x), NAXIS2 = H (y).", &st);
    fits_write_comment(f, "PIXSCALE: the pixel size in arcmin. No WCS: positions are pixels.", &st);
    fits_write_img(f, TFLOAT, 1, (LONGLONG)n, (float *)data, &st);
    return lss__mm_fits_put("lss_mm_fits_write_image", path, f, &buf, &sz, st);
}

/* The first column (from 1; 0: none) whose TTYPE equals one of names (in their order of preference), any case. */
static int lss__mm_fits_col(fitsfile *f, int ncols, const char *const *names, const char **found) {
    char key[FLEN_KEYWORD], val[FLEN_VALUE];
    int k, j, st;
    for (k = 0; names[k]; k++)
        for (j = 1; j <= ncols; j++) {
            st = 0;
            if (fits_make_keyn("TTYPE", j, key, &st) || fits_read_key(f, TSTRING, key, val, NULL, &st)) continue;
            if (lss__mm_ieq(val, names[k])) {
                *found = names[k];
                return j;
            }
        }
    fits_clear_errmsg();
    return 0;
}

LSSDEF int lss_mm_fits_read_table(const char *path, int hdu, lss_mm_catalogue *cat) {
    static const char *const nx[] = {"x", NULL}, *const ny[] = {"y", NULL}, *const nra[] = {"ra", "alpha_j2000", "alphawin_j2000", NULL},
                             *const ndec[] = {"dec", "delta_j2000", "deltawin_j2000", NULL}, *const ne1[] = {"e1", "g1", NULL},
                             *const ne2[] = {"e2", "g2", NULL}, *const nw[] = {"w", "weight", NULL};
    fitsfile *f;
    const char *name[5] = {NULL, NULL, NULL, NULL, NULL};
    int s, st = 0, at = 0, ncols = 0, col[5], tc[5] = {0, 0, 0, 0, 0}, k, radec = 0;
    LONGLONG nrows = 0, rowlen = 0;
    double *dst[5];
    char pre[1100];
    if (cat) memset(cat, 0, sizeof *cat);
    if (!path || !cat) return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_read_table: NULL argument");
    if ((s = lss__mm_fits_open(path, &f)) != LSS_OK) return s;
    if ((s = lss__mm_fits_seek(f, path, hdu, 1, &at)) != LSS_OK) {
        lss__mm_fits_close(f);
        return s;
    }
    if (fits_get_num_rowsll(f, &nrows, &st) || fits_get_num_cols(f, &ncols, &st) || fits_read_key(f, TLONGLONG, "NAXIS1", &rowlen, NULL, &st)) {
        lss__mm_fits_close(f);
        return lss__mm_fits_err(st, path, "table size");
    }
    col[0] = lss__mm_fits_col(f, ncols, nx, &name[0]);
    col[1] = lss__mm_fits_col(f, ncols, ny, &name[1]);
    if (!col[0] || !col[1]) {
        col[0] = lss__mm_fits_col(f, ncols, nra, &name[0]);
        col[1] = lss__mm_fits_col(f, ncols, ndec, &name[1]);
        radec = 1;
    }
    col[2] = lss__mm_fits_col(f, ncols, ne1, &name[2]);
    col[3] = lss__mm_fits_col(f, ncols, ne2, &name[3]);
    col[4] = lss__mm_fits_col(f, ncols, nw, &name[4]);
    for (k = 0; k < 4; k++)
        if (!col[k]) {
            static const char *const what[4] = {"x, y or ra, dec (or alpha_j2000, delta_j2000)", "x, y or ra, dec (or alpha_j2000, delta_j2000)",
                                                "e1 (or g1)", "e2 (or g2)"};
            lss__mm_fits_close(f);
            return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: the table has no column %s (a catalogue needs x, y or ra, dec, e1, e2 and "
                              "optionally w)", path, at, what[k]);
        }
    for (k = 0; k < 5; k++) {
        LONGLONG rep = 0, wid = 0;
        if (!col[k]) continue;
        if (fits_get_coltypell(f, col[k], &tc[k], &rep, &wid, &st)) {
            lss__mm_fits_close(f);
            return lss__mm_fits_err(st, path, "column type");
        }
        if (tc[k] <= 0 || tc[k] == TSTRING || tc[k] == TLOGICAL || tc[k] == TBIT || tc[k] == TCOMPLEX || tc[k] == TDBLCOMPLEX || rep != 1) {
            lss__mm_fits_close(f);
            return lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: column %s is not a scalar number (cfitsio type %d, %lld per row)", path, at, name[k],
                              tc[k], (long long)rep);
        }
    }
    if (rowlen < 1 || nrows < 0 || (s = lss__mm_fits_sized(f, path, at, nrows > LLONG_MAX / rowlen ? LLONG_MAX : nrows * rowlen)) != LSS_OK) {
        lss__mm_fits_close(f);
        return s ? s : lss_seterr(LSS_ERR_FORMAT, "%s: HDU %d: table rows of %lld bytes", path, at, (long long)rowlen);
    }
    if ((s = lss__mm_cat_alloc(cat, (int64_t)nrows)) != LSS_OK) {
        lss__mm_fits_close(f);
        return s;
    }
    cat->radec = radec;
    dst[0] = cat->x, dst[1] = cat->y, dst[2] = cat->e1, dst[3] = cat->e2, dst[4] = cat->w;
    for (k = 0; k < 5; k++) {
        int anynul = 0;
        double nul = tc[k] == TFLOAT || tc[k] == TDOUBLE ? 0.0 : NAN; /* integer cells equal to TNULL read as NaN; floats as stored */
        if (!col[k]) {
            int64_t i;
            for (i = 0; i < cat->n; i++) dst[k][i] = 1.0;
        } else if (nrows > 0 && fits_read_col(f, TDOUBLE, col[k], 1, 1, nrows, &nul, dst[k], &anynul, &st)) {
            char what[64];
            snprintf(what, sizeof what, "HDU %d: reading column %s", at, name[k]);
            lss_mm_catalogue_free(cat);
            lss__mm_fits_close(f);
            return lss__mm_fits_err(st, path, what);
        }
    }
    lss__mm_fits_close(f);
    snprintf(pre, sizeof pre, "%s: HDU %d", path, at);
    if ((s = lss__mm_cat_check(cat, pre, name, 1, LSS_ERR_FORMAT)) != LSS_OK) lss_mm_catalogue_free(cat);
    return s;
}

LSSDEF int lss_mm_fits_write_table(const char *path, const lss_mm_catalogue *cat) {
    static const char *const pix[5] = {"x", "y", "e1", "e2", "w"}, *const sky[5] = {"ra", "dec", "e1", "e2", "w"},
                             *const form[5] = {"1D", "1D", "1D", "1D", "1D"}, *const upix[5] = {"pixel", "pixel", "", "", ""},
                             *const usky[5] = {"deg", "deg", "", "", ""};
    fitsfile *f = NULL;
    void *buf = NULL;
    size_t sz = 0;
    int s, st = 0;
    char pre[1100];
    if (!path || !cat || (cat->n > 0 && (!cat->x || !cat->y || !cat->e1 || !cat->e2 || !cat->w)))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_fits_write_table: NULL argument");
    snprintf(pre, sizeof pre, "lss_mm_fits_write_table: %s", path);
    if ((s = lss__mm_cat_check(cat, pre, NULL, 0, LSS_ERR_ARG)) != LSS_OK) return s;
    if (fits_create_memfile(&f, &buf, &sz, 0, realloc, &st)) {
        free(buf);
        return lss__mm_fits_err(st, "lss_mm_fits_write_table", path);
    }
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)cat->n, 5, (char **)(cat->radec ? sky : pix), (char **)form, (char **)(cat->radec ? usky : upix),
                    "CATALOGUE", &st);
    fits_write_key_str(f, "ORIGIN", "lss", "written by lss_massmap.h", &st);
    fits_write_comment(f, cat->radec ? "Shear catalogue: ra, dec (degrees), e1, e2 (sky frame), w." :
                                       "Shear catalogue: x, y (pixels), e1, e2 (grid frame), w.", &st);
    fits_write_col(f, TDOUBLE, 1, 1, 1, (LONGLONG)cat->n, cat->x, &st);
    fits_write_col(f, TDOUBLE, 2, 1, 1, (LONGLONG)cat->n, cat->y, &st);
    fits_write_col(f, TDOUBLE, 3, 1, 1, (LONGLONG)cat->n, cat->e1, &st);
    fits_write_col(f, TDOUBLE, 4, 1, 1, (LONGLONG)cat->n, cat->e2, &st);
    fits_write_col(f, TDOUBLE, 5, 1, 1, (LONGLONG)cat->n, cat->w, &st);
    return lss__mm_fits_put("lss_mm_fits_write_table", path, f, &buf, &sz, st);
}
#endif /* LSS_NO_FITS */

/* ---- mocks */
LSSDEF int lss_mm_mock_mask(int h, int w, const lss_mm_survey_opts *o, uint64_t seed, float *mask) {
    lss_mm_survey_opts def;
    lss_rng r;
    double amp[6], ph[6], target, cx, cy, rad, lo, hi;
    double hx[64], hy[64], hr[64];
    int nh, k, it;
    int64_t i, n = (int64_t)h * w, obs;
    if (h < 2 || w < 2 || !mask) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_mask: bad size or NULL mask");
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    if (o->no_mask) {
        for (i = 0; i < n; i++) mask[i] = 1.0f;
        return LSS_OK;
    }
    target = o->observed > 0 ? o->observed : LSS_MM_COSMOS_OBSERVED;
    if (!(target > 0.05 && target <= 1.0))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_mock_mask: observed fraction %g outside (0.05, 1]", target);
    lss_rng_for(&r, seed, LSS_STREAM_MM_MASK, 0, 0);
    for (k = 0; k < 6; k++) {
        amp[k] = 0.12 * lss_rng_uniform(&r) / (k + 1);
        ph[k] = 2 * M_PI * lss_rng_uniform(&r);
    }
    /* holes: bright stars, radii 1.5%-5% of the field */
    nh = 6 + (int)lss_rng_below(&r, 10);
    for (k = 0; k < nh; k++) {
        hx[k] = (0.15 + 0.7 * lss_rng_uniform(&r)) * w;
        hy[k] = (0.15 + 0.7 * lss_rng_uniform(&r)) * h;
        hr[k] = (0.015 + 0.035 * lss_rng_uniform(&r)) * (h < w ? h : w);
    }
    cx = 0.5 * w + 0.05 * w * (lss_rng_uniform(&r) - 0.5);
    cy = 0.5 * h + 0.05 * h * (lss_rng_uniform(&r) - 0.5);
    /* bisection on the boundary size so that the observed fraction matches the target */
    lo = 0.05;
    hi = 1.5;
    for (it = 0; it < 40; it++) {
        rad = 0.5 * (lo + hi);
        obs = 0;
        for (i = 0; i < n; i++) {
            int64_t iy = i / w, ix = i % w;
            double dx = (ix + 0.5 - cx) / (0.5 * w), dy = (iy + 0.5 - cy) / (0.5 * h);
            double phi = atan2(dy, dx), rr, bound = 1.0, d4;
            int in = 1;
            for (k = 0; k < 6; k++) bound += amp[k] * sin((k + 2) * phi + ph[k]);
            /* rounded square (superellipse of order 4), rotated slightly by the wobble */
            d4 = pow(pow(fabs(dx), 4) + pow(fabs(dy), 4), 0.25);
            rr = d4 / (rad * bound);
            if (rr > 1.0) in = 0;
            for (k = 0; in && k < nh; k++) {
                double ex = ix + 0.5 - hx[k], ey = iy + 0.5 - hy[k];
                if (ex * ex + ey * ey < hr[k] * hr[k]) in = 0;
            }
            mask[i] = in ? 1.0f : 0.0f;
            obs += in;
        }
        if ((double)obs / (double)n > target) hi = rad;
        else lo = rad;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_mock_noise_map(const lss_grid *g, const float *mask, const lss_mm_survey_opts *o,
                                 uint64_t seed, float *count, float *nvar) {
    lss_mm_survey_opts def;
    double ngal, se, mean;
    lss_rng r;
    int64_t i;
    if (!g || !nvar) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_noise_map: NULL argument");
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    ngal = o->ngal_arcmin2 > 0 ? o->ngal_arcmin2 : LSS_MM_COSMOS_NGAL;
    se = o->sigma_e > 0 ? o->sigma_e : LSS_MM_COSMOS_SIGMA_E;
    if (!isfinite(ngal) || !isfinite(se) || o->ngal_arcmin2 < 0 || o->sigma_e < 0)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_mock_noise_map: ngal %g and sigma_e %g must be > 0", ngal, se);
    mean = ngal * lss_grid_pix_arcmin(g) * lss_grid_pix_arcmin(g);
    lss_rng_for(&r, seed, LSS_STREAM_MM_COUNTS, 0, 0);
    for (i = 0; i < lss_grid_npix(g); i++) {
        int64_t N = (!mask || mask[i] > 0) ? lss_rng_poisson(&r, mean) : 0;
        if (N < 0) return lss_seterr(LSS_ERR_RANGE, "lss_mm_mock_noise_map: bad Poisson mean %g", mean);
        if (count) count[i] = (float)N;
        nvar[i] = N > 0 ? (float)(se * se / (double)N) : (float)LSS_MM_EMPTY_VAR;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_mock_shear(const lss_grid *g, const float *kappa, const float *nvar,
                             uint64_t seed, uint64_t stream, float *g1, float *g2) {
    lss_rng r;
    int64_t i;
    int s;
    if (!g || !kappa || !nvar || !g1 || !g2) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_shear: NULL argument");
    if ((s = lss_mm_kappa_to_shear(g, kappa, NULL, g1, g2)) != LSS_OK) return s;
    lss_rng_init(&r, seed, stream);
    for (i = 0; i < lss_grid_npix(g); i++) {
        double n1 = lss_rng_normal(&r), n2 = lss_rng_normal(&r);
        if (nvar[i] >= (float)(0.5 * LSS_MM_EMPTY_VAR) || !(nvar[i] >= 0)) {
            g1[i] = g2[i] = 0.0f;
        } else {
            double sd = sqrt((double)nvar[i]);
            g1[i] += (float)(sd * n1);
            g2[i] += (float)(sd * n2);
        }
    }
    return LSS_OK;
}

/* The h x w centre of a field of Gaussian spectrum pg on `big` (shifted lognormal with shift lambda > 0,
   Gaussian when lambda = 0), mean removed; fbig holds big's pixels. */
static int lss__mm_cutout_k(const lss_grid *big, const double *pg, double lambda, int h, int w, uint64_t seed,
                            uint64_t stream, float *fbig, float *kappa, int keep_mean) {
    int64_t i, n = (int64_t)h * w;
    int s, y, y0 = (lss_grid_h(big) - h) / 2, x0 = (lss_grid_w(big) - w) / 2;
    double mean = 0;
    if (lambda > 0) s = lss_field_lognormal(big, pg, lambda, seed, stream, fbig);
    else s = lss_field_gaussian(big, pg, seed, stream, fbig);
    if (s != LSS_OK) return s;
    for (y = 0; y < h; y++)
        memcpy(kappa + (int64_t)y * w, fbig + (int64_t)(y + y0) * lss_grid_w(big) + x0, sizeof(float) * (size_t)w);
    if (keep_mean) return LSS_OK;
    for (i = 0; i < n; i++) mean += kappa[i];
    mean /= (double)n;
    for (i = 0; i < n; i++) kappa[i] = (float)(kappa[i] - mean);
    return LSS_OK;
}
static int lss__mm_cutout(const lss_grid *big, const double *pg, double lambda, int h, int w, uint64_t seed,
                          uint64_t stream, float *fbig, float *kappa) {
    return lss__mm_cutout_k(big, pg, lambda, h, w, seed, stream, fbig, kappa, 0);
}

LSSDEF int lss_mm_mock_kappa(const lss_grid *big, const double *pk_big, double lambda, int h,
                             int w, uint64_t seed, uint64_t stream, float *kappa) {
    float *f;
    double *pg = NULL;
    int s = LSS_OK;
    if (!big || !pk_big || !kappa) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_kappa: NULL argument");
    if (h < 2 || w < 2 || h > lss_grid_h(big) || w > lss_grid_w(big))
        return lss_seterr(LSS_ERR_SHAPE, "lss_mm_mock_kappa: cut-out %d x %d does not fit the %d x %d grid", h, w, lss_grid_h(big), lss_grid_w(big));
    if (lambda < 0 || !isfinite(lambda)) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_kappa: shift %g must be >= 0", lambda);
    f = (float *)LSS_MALLOC(sizeof(float) * (size_t)lss_grid_npix(big));
    if (lambda > 0) pg = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(big));
    if (!f || (lambda > 0 && !pg)) {
        LSS_FREE(f);
        LSS_FREE(pg);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_kappa: out of memory");
    }
    if (lambda > 0) s = lss_field_lognormal_spectrum(big, pk_big, lambda, pg);
    if (s == LSS_OK) s = lss__mm_cutout(big, lambda > 0 ? pg : pk_big, lambda, h, w, seed, stream, f, kappa);
    LSS_FREE(f);
    LSS_FREE(pg);
    return s;
}

struct lss_mm_kappa_gen {
    lss_grid *big;
    double *pg, lambda;
    int side;
};
LSSDEF void lss_mm_kappa_gen_free(lss_mm_kappa_gen *kg) {
    if (!kg) return;
    lss_grid_free(kg->big);
    LSS_FREE(kg->pg);
    LSS_FREE(kg);
}
LSSDEF int lss_mm_kappa_gen_create(const lss_params *p, const char *nz, int side, int pad, double pix_arcmin,
                                   lss_mm_kappa_gen **out) {
    enum { NELL = 400 };
    lss_mm_kappa_gen *kg;
    double ell[NELL], cl[NELL], *pk = NULL;
    int s, i;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_kappa_gen_create: NULL output");
    *out = NULL;
    if (side < 4 || pad < 1 || pad > 16 || (int64_t)side * pad > 16384 || !(pix_arcmin > 0))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_kappa_gen_create: bad arguments (side %d, pad %d, pixel %g arcmin)", side, pad, pix_arcmin);
    kg = (lss_mm_kappa_gen *)LSS_MALLOC(sizeof *kg);
    if (!kg) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_kappa_gen_create: out of memory");
    memset(kg, 0, sizeof *kg);
    kg->side = side;
    for (i = 0; i < NELL; i++) ell[i] = exp(log(1e5) * i / (NELL - 1));
    if ((s = lss_mm_theory_ckk(p, nz, NELL, ell, cl)) || (s = lss_mm_theory_kappa_empty(p, nz, &kg->lambda)) ||
        (s = lss_grid_create(side * pad, side * pad, pix_arcmin, &kg->big)))
        goto fail;
    pk = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(kg->big));
    kg->pg = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(kg->big));
    if (!pk || !kg->pg) { s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_kappa_gen_create: out of memory"); goto fail; }
    if ((s = lss_grid_spectrum(kg->big, ell, cl, NELL, pk)) || (s = lss_field_lognormal_spectrum(kg->big, pk, kg->lambda, kg->pg))) goto fail;
    LSS_FREE(pk);
    *out = kg;
    return LSS_OK;
fail:
    LSS_FREE(pk);
    lss_mm_kappa_gen_free(kg);
    return s;
}
LSSDEF int lss_mm_kappa_draw(const lss_mm_kappa_gen *kg, uint64_t seed, uint64_t index0, int n, float *out) {
    return lss_mm_kappa_draw_mean(kg, seed, index0, n, 0, out);
}
LSSDEF int lss_mm_kappa_draw_mean(const lss_mm_kappa_gen *kg, uint64_t seed, uint64_t index0, int n, int keep_mean, float *out) {
    int i, bad = LSS_OK;
    if (!kg || !out || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_mm_kappa_draw: bad arguments");
#ifdef LSS__MM_OMP
#pragma omp parallel
#endif
    {
        float *f = (float *)LSS_MALLOC(sizeof(float) * (size_t)lss_grid_npix(kg->big));
#ifdef LSS__MM_OMP
#pragma omp for schedule(dynamic)
#endif
        for (i = 0; i < n; i++) {
            int si = f ? lss__mm_cutout_k(kg->big, kg->pg, kg->lambda, kg->side, kg->side, seed,
                                          lss_stream(LSS_STREAM_MM_FIELD, index0 + (uint64_t)i, 0), f, out + (size_t)i * kg->side * kg->side,
                                          keep_mean)
                       : lss_seterr(LSS_ERR_NOMEM, "lss_mm_kappa_draw: out of memory");
            if (si != LSS_OK) {
#ifdef LSS__MM_OMP
#pragma omp critical
#endif
                bad = si;
            }
        }
        LSS_FREE(f);
    }
    return bad;
}

/* ---- Wiener filter (double precision) */
/* Cells excluded from the Gaussian prior (k = 0 and P = 0): fixed at zero. */
#define LSS__MM_EXCL(pk, i) ((i) == 0 || !((pk)[i] > 0))

/* out = S^-1 x + A^T W A x, projected on the prior's support (x must lie on it). */
static void lss__mm_wop(const lss_grid *g, lss_grid_ws *w, const double *pk, const double *winv,
                        const double *x, double *out) {
    int64_t i, n = lss_grid_npix(g);
    lss_cdouble *c = w->c, *d = w->d;
    double s = 1.0 / (double)n;
    for (i = 0; i < n; i++) {
        c[i][0] = x[i];
        c[i][1] = 0;
    }
    LSS__MM_FWD_D(g, c);
    for (i = 0; i < n; i++) {
        double p1 = lss_grid_cos2(g)[i] * s, p2 = lss_grid_sin2(g)[i] * s;
        d[i][0] = p1 * c[i][0] - p2 * c[i][1];
        d[i][1] = p2 * c[i][0] + p1 * c[i][1];
    }
    LSS__MM_INV_D(g, d);
    for (i = 0; i < n; i++) {
        d[i][0] *= winv[i];
        d[i][1] *= winv[i];
    }
    LSS__MM_FWD_D(g, d);
    for (i = 0; i < n; i++) {
        double p1 = lss_grid_cos2(g)[i] * s, p2 = lss_grid_sin2(g)[i] * s;
        if (LSS__MM_EXCL(pk, i)) {
            c[i][0] = c[i][1] = 0;
            continue;
        }
        {
            double a0 = c[i][0] * s / pk[i], a1 = c[i][1] * s / pk[i];
            c[i][0] = a0 + p1 * d[i][0] + p2 * d[i][1];
            c[i][1] = a1 + p1 * d[i][1] - p2 * d[i][0];
        }
    }
    LSS__MM_INV_D(g, c);
    for (i = 0; i < n; i++) out[i] = c[i][0];
}

/* out = A^T W y (y = (y1, y2)), projected on the prior's support. */
static void lss__mm_wrhs(const lss_grid *g, lss_grid_ws *w, const double *pk, const double *winv,
                         const double *y1, const double *y2, double *out) {
    int64_t i, n = lss_grid_npix(g);
    lss_cdouble *d = w->d;
    double s = 1.0 / (double)n;
    for (i = 0; i < n; i++) {
        d[i][0] = y1[i] * winv[i];
        d[i][1] = y2[i] * winv[i];
    }
    LSS__MM_FWD_D(g, d);
    for (i = 0; i < n; i++) {
        double p1 = lss_grid_cos2(g)[i] * s, p2 = lss_grid_sin2(g)[i] * s, a0, a1;
        if (LSS__MM_EXCL(pk, i)) {
            d[i][0] = d[i][1] = 0;
            continue;
        }
        a0 = p1 * d[i][0] + p2 * d[i][1];
        a1 = p1 * d[i][1] - p2 * d[i][0];
        d[i][0] = a0;
        d[i][1] = a1;
    }
    LSS__MM_INV_D(g, d);
    for (i = 0; i < n; i++) out[i] = d[i][0];
}

/* out = F^-1[ F[x] / (1/P + wbar) ] */
static void lss__mm_wprec(const lss_grid *g, lss_grid_ws *w, const double *pk, double wbar,
                          const double *x, double *out) {
    int64_t i, n = lss_grid_npix(g);
    lss_cdouble *c = w->c;
    for (i = 0; i < n; i++) {
        c[i][0] = x[i];
        c[i][1] = 0;
    }
    LSS__MM_FWD_D(g, c);
    for (i = 0; i < n; i++) {
        double m = LSS__MM_EXCL(pk, i) ? 0.0 : 1.0 / ((1.0 / pk[i] + wbar) * (double)n);
        c[i][0] *= m;
        c[i][1] *= m;
    }
    LSS__MM_INV_D(g, c);
    for (i = 0; i < n; i++) out[i] = c[i][0];
}

static int lss__mm_check_nvar(const lss_grid *g, const float *nvar, const char *fn) {
    int64_t i;
    for (i = 0; i < lss_grid_npix(g); i++)
        if (!(nvar[i] > 0) || !isfinite(nvar[i]))
            return lss_seterr(LSS_ERR_ARG, "%s: noise variance of pixel %lld is %g (must be > 0; masked pixels carry 1e10)", fn, (long long)i, (double)nvar[i]);
    return LSS_OK;
}

static double lss__mm_dot(int64_t n, const double *a, const double *b) {
    double s = 0;
    int64_t i;
    for (i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* PCG solve of the Wiener system for data y; x receives the solution (double). */
static int lss__mm_pcg(const lss_grid *g, lss_grid_ws *w, const double *pk, const double *winv,
                       const double *y1, const double *y2, const lss_mm_wiener_opts *o, double *x,
                       double *work, int *iters, double *relres) {
    int64_t i, n = lss_grid_npix(g);
    double *r = work, *z = work + n, *p = work + 2 * n, *ap = work + 3 * n;
    double wbar = 0, bn, rz, tol = (o && o->tol > 0) ? o->tol : 1e-8, rel = 1.0;
    int it, maxit = (o && o->max_iter > 0) ? o->max_iter : 5000;
    for (i = 0; i < n; i++) wbar += winv[i];
    wbar /= (double)n;
    lss__mm_wrhs(g, w, pk, winv, y1, y2, r);
    bn = sqrt(lss__mm_dot(n, r, r));
    for (i = 0; i < n; i++) x[i] = 0;
    if (iters) *iters = 0;
    if (relres) *relres = 0;
    if (bn == 0) return LSS_OK;
    lss__mm_wprec(g, w, pk, wbar, r, z);
    memcpy(p, z, sizeof(double) * (size_t)n);
    rz = lss__mm_dot(n, r, z);
    for (it = 1; it <= maxit; it++) {
        double pap, alpha, rzn, beta;
        lss__mm_wop(g, w, pk, winv, p, ap);
        pap = lss__mm_dot(n, p, ap);
        if (!(pap > 0)) break;
        alpha = rz / pap;
        for (i = 0; i < n; i++) {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        rel = sqrt(lss__mm_dot(n, r, r)) / bn;
        if (iters) *iters = it;
        if (relres) *relres = rel;
        if (rel < tol) return LSS_OK;
        lss__mm_wprec(g, w, pk, wbar, r, z);
        rzn = lss__mm_dot(n, r, z);
        beta = rzn / rz;
        rz = rzn;
        for (i = 0; i < n; i++) p[i] = z[i] + beta * p[i];
    }
    if (!isfinite(rel)) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_wiener: the solve produced NaN");
    return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_wiener: relative residual %.3g after %d iterations (tolerance %.3g)", rel, maxit, tol);
}

LSSDEF int lss_mm_wiener_fourier(const lss_grid *g, const double *pk, const float *g1,
                                 const float *g2, double nvar, float *kE, double *post_std_pix) {
    lss_grid_ws tmp, *w;
    int64_t i, n;
    int s;
    double v = 0;
    lss_cdouble *d;
    if (!g || !pk || !g1 || !g2 || !kE) return lss_seterr(LSS_ERR_ARG, "lss_mm_wiener_fourier: NULL argument");
    if (!(nvar > 0) || !isfinite(nvar)) return lss_seterr(LSS_ERR_ARG, "lss_mm_wiener_fourier: noise variance %g must be > 0", nvar);
    if ((s = lss__mm_check_pk(g, pk, "lss_mm_wiener_fourier")) != LSS_OK) return s;
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    n = lss_grid_npix(g);
    d = w->d;
    for (i = 0; i < n; i++) {
        d[i][0] = g1[i];
        d[i][1] = g2[i];
    }
    LSS__MM_FWD_D(g, d);
    for (i = 0; i < n; i++) {
        double p1 = lss_grid_cos2(g)[i], p2 = lss_grid_sin2(g)[i], a0, a1, f;
        if (LSS__MM_EXCL(pk, i)) {
            d[i][0] = d[i][1] = 0;
            continue;
        }
        f = pk[i] / (pk[i] + nvar) / (double)n;
        v += pk[i] * nvar / (pk[i] + nvar);
        /* E part of P^dagger gamma: keep the Hermitian projection via the real part below */
        a0 = (p1 * d[i][0] + p2 * d[i][1]) * f;
        a1 = (p1 * d[i][1] - p2 * d[i][0]) * f;
        d[i][0] = a0;
        d[i][1] = a1;
    }
    LSS__MM_INV_D(g, d);
    for (i = 0; i < n; i++) kE[i] = (float)d[i][0];
    if (post_std_pix) *post_std_pix = sqrt(v / (double)n);
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

static int lss__mm_wiener_common(const lss_grid *g, const double *pk, const float *nvar,
                                 const char *fn, double **buf, int64_t nd) {
    int s;
    if ((s = lss__mm_check_pk(g, pk, fn)) != LSS_OK) return s;
    if ((s = lss__mm_check_nvar(g, nvar, fn)) != LSS_OK) return s;
    *buf = (double *)LSS_MALLOC(sizeof(double) * (size_t)(nd * lss_grid_npix(g)));
    if (!*buf) return lss_seterr(LSS_ERR_NOMEM, "%s: out of memory", fn);
    return LSS_OK;
}

/* The Wiener solve of lss_mm_wiener (sample = 0: kE = W gamma) and of lss_mm_wiener_sample (sample = 1:
 * kE = s + W(gamma - A s - n), s and n from the streams of (seed, index)). */
static int lss__mm_wiener_solve(const lss_grid *g, const double *pk, const float *g1, const float *g2,
                                const float *nvar, const lss_mm_wiener_opts *o, int sample, uint64_t seed,
                                uint64_t index, float *kE, int *iters, double *relres, const char *fn) {
    lss_grid_ws tmp, *w;
    double *buf, *winv, *y1, *y2, *x, *sg;
    int64_t i, n;
    int s;
    if (!g || !pk || !g1 || !g2 || !nvar || !kE) return lss_seterr(LSS_ERR_ARG, "%s: NULL argument", fn);
    if ((s = lss__mm_wiener_common(g, pk, nvar, fn, &buf, 9)) != LSS_OK) return s;
    if (!(w = lss_grid_ws_get(g, &tmp))) {
        LSS_FREE(buf);
        return LSS_ERR_NOMEM;
    }
    n = lss_grid_npix(g);
    winv = buf;
    y1 = buf + n;
    y2 = buf + 2 * n;
    x = buf + 3 * n;
    sg = buf + 8 * n;
    for (i = 0; i < n; i++) {
        winv[i] = 1.0 / (double)nvar[i];
        y1[i] = g1[i];
        y2[i] = g2[i];
        sg[i] = 0;
    }
    /* constrained realisation: s ~ N(0, S) (drawn into kE, overwritten at the end) and the data
       y = gamma - A s - n */
    if (sample && (s = lss_field_gaussian(g, pk, seed, lss_stream(LSS_STREAM_MM_CHAIN, index, LSS_MM_SUB_WIENER_SIGNAL), kE)) == LSS_OK) {
        lss_cdouble *c = w->c;
        double sc = 1.0 / (double)n;
        lss_rng r;
        for (i = 0; i < n; i++) {
            sg[i] = kE[i];
            c[i][0] = sg[i];
            c[i][1] = 0;
        }
        LSS__MM_FWD_D(g, c);
        for (i = 0; i < n; i++) {
            double p1 = lss_grid_cos2(g)[i] * sc, p2 = lss_grid_sin2(g)[i] * sc, a0 = c[i][0], a1 = c[i][1];
            c[i][0] = p1 * a0 - p2 * a1;
            c[i][1] = p2 * a0 + p1 * a1;
        }
        LSS__MM_INV_D(g, c);
        lss_rng_for(&r, seed, LSS_STREAM_MM_CHAIN, index, LSS_MM_SUB_WIENER_NOISE);
        for (i = 0; i < n; i++) {
            double sd = sqrt((double)nvar[i]);
            y1[i] = y1[i] - c[i][0] - sd * lss_rng_normal(&r);
            y2[i] = y2[i] - c[i][1] - sd * lss_rng_normal(&r);
        }
    }
    if (s == LSS_OK) s = lss__mm_pcg(g, w, pk, winv, y1, y2, o, x, buf + 4 * n, iters, relres);
    if (s == LSS_OK)
        for (i = 0; i < n; i++) kE[i] = (float)(sg[i] + x[i]);
    lss_grid_ws_put(w, &tmp);
    LSS_FREE(buf);
    return s;
}

LSSDEF int lss_mm_wiener(const lss_grid *g, const double *pk, const float *g1, const float *g2,
                         const float *nvar, const lss_mm_wiener_opts *o, float *kE, int *iters,
                         double *relres) {
    return lss__mm_wiener_solve(g, pk, g1, g2, nvar, o, 0, 0, 0, kE, iters, relres, "lss_mm_wiener");
}

LSSDEF int lss_mm_wiener_sample(const lss_grid *g, const double *pk, const float *g1,
                                const float *g2, const float *nvar, const lss_mm_wiener_opts *o,
                                uint64_t seed, uint64_t index, float *kE) {
    return lss__mm_wiener_solve(g, pk, g1, g2, nvar, o, 1, seed, index, kE, NULL, NULL, "lss_mm_wiener_sample");
}

LSSDEF int lss_mm_wiener_apply(const lss_grid *g, const double *pk, const float *nvar,
                               const double *x, double *out) {
    lss_grid_ws tmp, *w;
    double *buf, mean = 0;
    int64_t i;
    int s;
    if (!g || !pk || !nvar || !x || !out) return lss_seterr(LSS_ERR_ARG, "lss_mm_wiener_apply: NULL argument");
    if ((s = lss__mm_wiener_common(g, pk, nvar, "lss_mm_wiener_apply", &buf, 2)) != LSS_OK) return s;
    if (!(w = lss_grid_ws_get(g, &tmp))) {
        LSS_FREE(buf);
        return LSS_ERR_NOMEM;
    }
    for (i = 0; i < lss_grid_npix(g); i++) mean += x[i];
    mean /= (double)lss_grid_npix(g);
    for (i = 0; i < lss_grid_npix(g); i++) {
        buf[i] = 1.0 / (double)nvar[i];
        buf[lss_grid_npix(g) + i] = x[i] - mean;
    }
    lss__mm_wop(g, w, pk, buf, buf + lss_grid_npix(g), out);
    lss_grid_ws_put(w, &tmp);
    LSS_FREE(buf);
    return LSS_OK;
}

/* ---- Gaussian prior score (float) */
static double lss__mm_gscore1(const lss_grid *g, lss_grid_ws *w, const float *pkf, const float *x,
                              float sigma, float *out) {
    int64_t i, n = lss_grid_npix(g);
    lss_cfloat *a = w->a;
    float s2 = sigma * sigma, sc = 1.0f / (float)n;
    double lp = 0;
    for (i = 0; i < n; i++) {
        a[i][0] = x[i];
        a[i][1] = 0;
    }
    LSS__MM_FWD(g, a);
    for (i = 0; i < n; i++) {
        float den = pkf[i] + s2, m;
        if (i == 0 || !(den > 0)) {
            a[i][0] = a[i][1] = 0;
            continue;
        }
        lp -= 0.5 * ((double)a[i][0] * a[i][0] + (double)a[i][1] * a[i][1]) / (double)n / (double)den;
        m = -sc / den;
        a[i][0] *= m;
        a[i][1] *= m;
    }
    LSS__MM_INV(g, a);
    for (i = 0; i < n; i++) out[i] = a[i][0];
    return lp;
}

static float *lss__mm_pkf(const lss_grid *g, const double *pk) {
    float *f = (float *)LSS_MALLOC(sizeof(float) * (size_t)lss_grid_npix(g));
    int64_t i;
    if (!f) return NULL;
    for (i = 0; i < lss_grid_npix(g); i++) f[i] = (float)pk[i];
    f[0] = 0.0f;
    return f;
}

LSSDEF int lss_mm_gauss_score(const lss_grid *g, const double *pk, int n, const float *x,
                              const float *sigma, float *out, double *logp) {
    float *pkf;
    int s, j, fail = 0;
    if (!g || !pk || !x || !sigma || !out || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_mm_gauss_score: bad argument");
    if ((s = lss__mm_check_pk(g, pk, "lss_mm_gauss_score")) != LSS_OK) return s;
    if (!(pkf = lss__mm_pkf(g, pk))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_gauss_score: out of memory");
#ifdef LSS__MM_OMP
#pragma omp parallel for schedule(static) if (n > 1)
#endif
    for (j = 0; j < n; j++) {
        lss_grid_ws tmp, *w = lss_grid_ws_get(g, &tmp);
        double lp;
        if (!w) {
#ifdef LSS__MM_OMP
#pragma omp atomic write
#endif
            fail = 1;
            continue;
        }
        lp = lss__mm_gscore1(g, w, pkf, x + (int64_t)j * lss_grid_npix(g), sigma[j], out + (int64_t)j * lss_grid_npix(g));
        if (logp) logp[j] = lp;
        lss_grid_ws_put(w, &tmp);
    }
    LSS_FREE(pkf);
    return fail ? lss_seterr(LSS_ERR_NOMEM, "lss_mm_gauss_score: out of memory") : LSS_OK;
}

/* ---- tempered posterior */
struct lss_mm_post {
    const lss_grid *g;
    float *pkf, *g1, *g2, *nvar;
    lss_mm_residual_fn res;
    void *res_user;
    int64_t nevals;
    float *sg, *rs;      /* batch buffers for the residual path */
    int cap;
};

LSSDEF int lss_mm_post_create(const lss_grid *g, const double *pk, const float *g1,
                              const float *g2, const float *nvar, lss_mm_post **out) {
    lss_mm_post *p;
    int s;
    size_t b;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_post_create: out is NULL");
    *out = NULL;
    if (!g || !pk || !g1 || !g2 || !nvar) return lss_seterr(LSS_ERR_ARG, "lss_mm_post_create: NULL argument");
    if ((s = lss__mm_check_pk(g, pk, "lss_mm_post_create")) != LSS_OK) return s;
    if ((s = lss__mm_check_nvar(g, nvar, "lss_mm_post_create")) != LSS_OK) return s;
    p = (lss_mm_post *)LSS_MALLOC(sizeof *p);
    if (!p) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_post_create: out of memory");
    memset(p, 0, sizeof *p);
    p->g = g;
    b = sizeof(float) * (size_t)lss_grid_npix(g);
    p->pkf = lss__mm_pkf(g, pk);
    p->g1 = (float *)LSS_MALLOC(b);
    p->g2 = (float *)LSS_MALLOC(b);
    p->nvar = (float *)LSS_MALLOC(b);
    if (!p->pkf || !p->g1 || !p->g2 || !p->nvar) {
        lss_mm_post_free(p);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_post_create: out of memory");
    }
    memcpy(p->g1, g1, b);
    memcpy(p->g2, g2, b);
    memcpy(p->nvar, nvar, b);
    {   /* masked pixels: shear set to 0 (their weight is ~1e-10 anyway) */
        int64_t i;
        for (i = 0; i < lss_grid_npix(g); i++)
            if (nvar[i] >= (float)(0.5 * LSS_MM_EMPTY_VAR)) p->g1[i] = p->g2[i] = 0.0f;
    }
    *out = p;
    return LSS_OK;
}

LSSDEF void lss_mm_post_free(lss_mm_post *p) {
    if (!p) return;
    LSS_FREE(p->pkf);
    LSS_FREE(p->g1);
    LSS_FREE(p->g2);
    LSS_FREE(p->nvar);
    LSS_FREE(p->sg);
    LSS_FREE(p->rs);
    LSS_FREE(p);
}

LSSDEF void lss_mm_post_set_residual(lss_mm_post *p, lss_mm_residual_fn fn, void *user) {
    if (!p) return;
    p->res = fn;
    p->res_user = user;
}

LSSDEF int64_t lss_mm_post_nevals(const lss_mm_post *p) { return p ? p->nevals : 0; }

/* Score of the Gaussian parts (prior at sigma + tempered likelihood) of one map; if sg is given the
 * prior part alone is stored there too. Returns the log density of those parts. */
static double lss__mm_pscore1(const lss_mm_post *p, lss_grid_ws *w, const float *x, float sigma,
                              float *out, float *sg) {
    const lss_grid *g = p->g;
    int64_t i, n = lss_grid_npix(g);
    lss_cfloat *a = w->a, *b = w->b;
    float s2 = sigma * sigma, sc = 1.0f / (float)n;
    double lp = 0;
    for (i = 0; i < n; i++) {
        a[i][0] = x[i];
        a[i][1] = 0;
    }
    LSS__MM_FWD(g, a);
    for (i = 0; i < n; i++) {
        float den = p->pkf[i] + s2, m, re = a[i][0], im = a[i][1], p1 = lss_grid_cos2(g)[i] * sc, p2 = lss_grid_sin2(g)[i] * sc;
        if (i == 0 || !(den > 0)) {
            b[i][0] = b[i][1] = 0;
        } else {
            lp -= 0.5 * ((double)re * re + (double)im * im) / (double)n / (double)den;
            m = -sc / den;
            b[i][0] = re * m;
            b[i][1] = im * m;
        }
        a[i][0] = p1 * re - p2 * im;
        a[i][1] = p2 * re + p1 * im;
    }
    LSS__MM_INV(g, a);
    for (i = 0; i < n; i++) {
        float wi = 1.0f / (p->nvar[i] + s2);
        float r1 = p->g1[i] - a[i][0], r2 = p->g2[i] - a[i][1];
        lp -= 0.5 * ((double)r1 * r1 + (double)r2 * r2) * (double)wi;
        a[i][0] = r1 * wi;
        a[i][1] = r2 * wi;
    }
    LSS__MM_FWD(g, a);
    if (sg) {
        /* prior part alone, then the likelihood part */
        LSS__MM_INV(g, b);
        for (i = 0; i < n; i++) sg[i] = out[i] = b[i][0];
        for (i = 0; i < n; i++) {
            float p1 = lss_grid_cos2(g)[i] * sc, p2 = lss_grid_sin2(g)[i] * sc, re = a[i][0], im = a[i][1];
            a[i][0] = p1 * re + p2 * im;
            a[i][1] = p1 * im - p2 * re;
        }
        LSS__MM_INV(g, a);
        for (i = 0; i < n; i++) out[i] += a[i][0];
    } else {
        for (i = 0; i < n; i++) {
            float p1 = lss_grid_cos2(g)[i] * sc, p2 = lss_grid_sin2(g)[i] * sc, re = a[i][0], im = a[i][1];
            b[i][0] += p1 * re + p2 * im;
            b[i][1] += p1 * im - p2 * re;
        }
        LSS__MM_INV(g, b);
        for (i = 0; i < n; i++) out[i] = b[i][0];
    }
    return lp;
}

static int lss__mm_post_reserve(lss_mm_post *p, int n) {
    size_t b;
    float *a, *c;
    if (n <= p->cap) return LSS_OK;
    b = sizeof(float) * (size_t)n * (size_t)lss_grid_npix(p->g);
    a = (float *)LSS_REALLOC(p->sg, b);
    if (!a) return lss_seterr(LSS_ERR_NOMEM, "massmap posterior: out of memory");
    p->sg = a;
    c = (float *)LSS_REALLOC(p->rs, b);
    if (!c) return lss_seterr(LSS_ERR_NOMEM, "massmap posterior: out of memory");
    p->rs = c;
    p->cap = n;
    return LSS_OK;
}

/* Batch evaluation: out = full score; logp = Gaussian parts; resid (may be NULL) = residual part. */
static int lss__mm_post_eval(lss_mm_post *p, int n, const float *x, const float *sigma, float *out,
                             double *logp, float *resid, lss_grid_ws *fixed, int64_t *count) {
    const lss_grid *g = p->g;
    int j, fail = 0, s;
    int64_t np = lss_grid_npix(g);
    if (p->res && (s = lss__mm_post_reserve(p, n)) != LSS_OK) return s;
#ifdef LSS__MM_OMP
#pragma omp parallel for schedule(static) if (n > 1 && !fixed)
#endif
    for (j = 0; j < n; j++) {
        lss_grid_ws tmp, *w = fixed ? fixed : lss_grid_ws_get(g, &tmp);
        double lp;
        if (!w) {
#ifdef LSS__MM_OMP
#pragma omp atomic write
#endif
            fail = 1;
            continue;
        }
        lp = lss__mm_pscore1(p, w, x + j * np, sigma[j], out + j * np, p->res ? p->sg + j * np : NULL);
        if (logp) logp[j] = lp;
        lss_grid_ws_put(w, &tmp);
    }
    if (fail) return lss_seterr(LSS_ERR_NOMEM, "massmap posterior: out of memory");
#ifdef LSS__MM_OMP
#pragma omp atomic
#endif
    p->nevals += n;
    if (count) *count += n;
    if (p->res) {
        int64_t i;
        if ((s = p->res(p->res_user, n, x, p->sg, sigma, p->rs)) != LSS_OK) return s;
        for (j = 0; j < n; j++) {
            float *rj = p->rs + j * np, *oj = out + j * np;
            double m = 0;
            for (i = 0; i < np; i++) m += rj[i];
            m /= (double)np;
            for (i = 0; i < np; i++) {
                float v = rj[i] - (float)m;
                if (!isfinite(v)) return lss_seterr(LSS_ERR_NUMERIC, "massmap posterior: the residual score is not finite");
                oj[i] += v;
                if (resid) resid[j * np + i] = v;
            }
        }
    } else if (resid) {
        memset(resid, 0, sizeof(float) * (size_t)n * (size_t)np);
    }
    return LSS_OK;
}

LSSDEF int lss_mm_post_score(lss_mm_post *p, int n, const float *x, const float *sigma, float *out,
                             double *logp) {
    int j;
    if (!p || !x || !sigma || !out || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_mm_post_score: bad argument");
    for (j = 0; j < n; j++)
        if (!(sigma[j] >= 0) || !isfinite(sigma[j])) return lss_seterr(LSS_ERR_ARG, "lss_mm_post_score: sigma[%d] = %g must be >= 0", j, (double)sigma[j]);
    return lss__mm_post_eval(p, n, x, sigma, out, logp, NULL, NULL, NULL);
}

/* ---- annealed HMC + probability-flow ODE */
typedef struct {
    lss_mm_post *p;
    const lss_grid *g;
    int B, L, mass, mh, simpson;
    int64_t N;
    float eps;
    float *msq, *minv;     /* Fourier mass: sqrt(M)/n and 1/(M n) per cell (0 at excluded cells) */
    float *x, *mom, *xs, *ps, *sc0, *sc1, *r0, *r1, *xt, *st, *sig;
    double *lp0, *lp1, *lpt, *k0;
    lss_rng *rng;
    int64_t acc, tries, nev;
    lss_grid_ws *fixed;    /* one workspace for all chains (serial), or NULL: chains in parallel */
} lss__mm_hmc;

static void lss__mm_mass_setup(lss__mm_hmc *h, float sigma) {
    const lss_grid *g = h->g;
    int64_t i;
    double wbar = 0, s2 = (double)sigma * sigma;
    for (i = 0; i < lss_grid_npix(g); i++) wbar += 1.0 / ((double)h->p->nvar[i] + s2);
    wbar /= (double)lss_grid_npix(g);
    for (i = 0; i < lss_grid_npix(g); i++) {
        double den = (double)h->p->pkf[i] + s2, m;
        if (i == 0 || !(den > 0)) {
            h->msq[i] = h->minv[i] = 0.0f;
            continue;
        }
        m = 1.0 / den + wbar;
        h->msq[i] = (float)(sqrt(m) / (double)lss_grid_npix(g));
        h->minv[i] = (float)(1.0 / (m * (double)lss_grid_npix(g)));
    }
}

/* Draws the momentum of chain j; returns its kinetic energy. */
static double lss__mm_draw_mom(lss__mm_hmc *h, lss_grid_ws *w, int j) {
    const lss_grid *g = h->g;
    int64_t i, n = lss_grid_npix(g);
    float *pj = h->mom + j * n;
    double k = 0;
    if (h->mass == LSS_MM_MASS_IDENTITY) {
        double m = 0;
        for (i = 0; i < n; i++) {
            pj[i] = (float)lss_rng_normal(&h->rng[j]);
            m += pj[i];
        }
        m /= (double)n;
        for (i = 0; i < n; i++) {
            pj[i] = (float)(pj[i] - m);
            k += 0.5 * (double)pj[i] * pj[i];
        }
        return k;
    }
    {
        lss_cfloat *a = w->a;
        for (i = 0; i < n; i++) {
            a[i][0] = (float)lss_rng_normal(&h->rng[j]);
            a[i][1] = 0;
        }
        LSS__MM_FWD(g, a);
        for (i = 0; i < n; i++) {
            /* K = 1/2 p M^-1 p = 1/2 sum over supported cells of |F_o z|^2 */
            if (h->msq[i] != 0.0f) k += 0.5 * ((double)a[i][0] * a[i][0] + (double)a[i][1] * a[i][1]) / (double)n;
            a[i][0] *= h->msq[i];
            a[i][1] *= h->msq[i];
        }
        LSS__MM_INV(g, a);
        for (i = 0; i < n; i++) pj[i] = a[i][0];
    }
    return k;
}

/* v = M^-1 p (v may equal p); returns the kinetic energy 1/2 p M^-1 p. */
static double lss__mm_minv(lss__mm_hmc *h, lss_grid_ws *w, const float *p, float *v) {
    const lss_grid *g = h->g;
    int64_t i, n = lss_grid_npix(g);
    double k = 0;
    if (h->mass == LSS_MM_MASS_IDENTITY) {
        for (i = 0; i < n; i++) {
            k += 0.5 * (double)p[i] * p[i];
            v[i] = p[i];
        }
        return k;
    }
    {
        lss_cfloat *a = w->a;
        for (i = 0; i < n; i++) {
            a[i][0] = p[i];
            a[i][1] = 0;
        }
        LSS__MM_FWD(g, a);
        for (i = 0; i < n; i++) {
            k += 0.5 * ((double)a[i][0] * a[i][0] + (double)a[i][1] * a[i][1]) * (double)h->minv[i];
            a[i][0] *= h->minv[i];
            a[i][1] *= h->minv[i];
        }
        LSS__MM_INV(g, a);
        for (i = 0; i < n; i++) v[i] = a[i][0];
    }
    return k;
}

/* Per-chain loop helpers (parallel over chains). */
#ifdef LSS__MM_OMP
#define LSS__MM_PAR_CHAINS _Pragma("omp parallel for schedule(static) if (h->B > 1 && !h->fixed)")
#else
#define LSS__MM_PAR_CHAINS
#endif

static int lss__mm_hmc_step(lss__mm_hmc *h) {
    int B = h->B, j, l, s, fail = 0;
    int64_t N = h->N, i;
    float eps = h->eps;
    /* momenta */
    LSS__MM_PAR_CHAINS
    for (j = 0; j < B; j++) {
        lss_grid_ws tmp, *w = h->fixed ? h->fixed : lss_grid_ws_get(h->g, &tmp);
        if (!w) { fail = 1; continue; }
        h->k0[j] = lss__mm_draw_mom(h, w, j);
        lss_grid_ws_put(w, &tmp);
    }
    if (fail) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_sample: out of memory");
    memcpy(h->xs, h->x, sizeof(float) * (size_t)(B * N));
    memcpy(h->ps, h->mom, sizeof(float) * (size_t)(B * N));
    for (l = 0; l < h->L; l++) {
        const float *gsc = l == 0 ? h->sc0 : h->sc1;
        LSS__MM_PAR_CHAINS
        for (j = 0; j < B; j++) {
            lss_grid_ws tmp, *w = h->fixed ? h->fixed : lss_grid_ws_get(h->g, &tmp);
            float *pj = h->ps + j * N, *xj = h->xs + j * N, *vj = h->st + j * N;
            const float *gj = gsc + j * N;
            if (!w) { fail = 1; continue; }
            for (i = 0; i < N; i++) pj[i] += 0.5f * eps * gj[i];
            lss__mm_minv(h, w, pj, vj);
            for (i = 0; i < N; i++) xj[i] += eps * vj[i];
            lss_grid_ws_put(w, &tmp);
        }
        if (fail) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_sample: out of memory");
        if ((s = lss__mm_post_eval(h->p, B, h->xs, h->sig, h->sc1, h->lp1, h->r1, h->fixed, &h->nev)) != LSS_OK) return s;
        for (i = 0; i < B * N; i++) h->ps[i] += 0.5f * eps * h->sc1[i];
    }
    /* Metropolis-Hastings */
    {
        int np = h->simpson == 3 ? 3 : 5, q;
        double wts5[5] = {1.0 / 12, 4.0 / 12, 2.0 / 12, 4.0 / 12, 1.0 / 12}, wts3[3] = {1.0 / 6, 4.0 / 6, 1.0 / 6};
        const double *wt = np == 5 ? wts5 : wts3;
        double *dlp = h->lpt + B; /* log-ratio accumulator per chain */
        int path = h->mh == LSS_MM_MH_PATH || (h->mh == LSS_MM_MH_AUTO && h->p->res);
        const float *e0 = h->mh == LSS_MM_MH_PATH ? h->sc0 : h->r0;
        const float *e1 = h->mh == LSS_MM_MH_PATH ? h->sc1 : h->r1;
        for (j = 0; j < B; j++) dlp[j] = h->mh == LSS_MM_MH_PATH ? 0.0 : h->lp1[j] - h->lp0[j];
        if (h->mh != LSS_MM_MH_NONE && path) {
            /* endpoints */
            for (j = 0; j < B; j++) {
                double a = 0, b = 0;
                const float *x0 = h->x + j * N, *x1 = h->xs + j * N;
                for (i = 0; i < N; i++) {
                    double d = (double)x1[i] - x0[i];
                    a += (double)e0[j * N + i] * d;
                    b += (double)e1[j * N + i] * d;
                }
                dlp[j] += wt[0] * a + wt[np - 1] * b;
            }
            for (q = 1; q < np - 1; q++) {
                float t = (float)q / (float)(np - 1);
                for (i = 0; i < B * N; i++) h->xt[i] = h->x[i] + t * (h->xs[i] - h->x[i]);
                if ((s = lss__mm_post_eval(h->p, B, h->xt, h->sig, h->st, h->lpt, h->mh == LSS_MM_MH_PATH ? NULL : h->xt, h->fixed, &h->nev)) != LSS_OK)
                    return s;
                /* with MH_AUTO the residual part was written over xt; recompute the segment */
                for (j = 0; j < B; j++) {
                    double a = 0;
                    const float *x0 = h->x + j * N, *x1 = h->xs + j * N;
                    const float *f = h->mh == LSS_MM_MH_PATH ? h->st + j * N : h->xt + j * N;
                    for (i = 0; i < N; i++) a += (double)f[i] * ((double)x1[i] - x0[i]);
                    dlp[j] += wt[q] * a;
                }
            }
        }
        LSS__MM_PAR_CHAINS
        for (j = 0; j < B; j++) {
            lss_grid_ws tmp, *w = h->fixed ? h->fixed : lss_grid_ws_get(h->g, &tmp);
            double k1, la;
            if (!w) { fail = 1; continue; }
            k1 = lss__mm_minv(h, w, h->ps + j * N, h->st + j * N);
            lss_grid_ws_put(w, &tmp);
            la = dlp[j] - k1 + h->k0[j];
            if (h->mh == LSS_MM_MH_NONE || (isfinite(la) && log(lss_rng_uniform(&h->rng[j])) < la)) {
                memcpy(h->x + j * N, h->xs + j * N, sizeof(float) * (size_t)N);
                memcpy(h->sc0 + j * N, h->sc1 + j * N, sizeof(float) * (size_t)N);
                memcpy(h->r0 + j * N, h->r1 + j * N, sizeof(float) * (size_t)N);
                h->lp0[j] = h->lp1[j];
#ifdef LSS__MM_OMP
#pragma omp atomic
#endif
                h->acc++;
            }
        }
        if (fail) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_sample: out of memory");
        h->tries += B;
    }
    return LSS_OK;
}

/* Score callback of the probability-flow integrator: the score of n maps x [n, N] at noise levels sigma [n]
 * into out [n, N]; rows [n] (NULL: 0 .. n-1) says which of the integrator's maps they are. */
typedef int (*lss__mm_score_fn)(void *user, int n, const int *rows, const float *x, const float *sigma, float *out);

/* Score evaluation of the maps of groups act[0 .. na) (gs maps each) at stage input src into dst: in place
 * when one group holds every map, else packed into xp/kp and scattered back. Then dst *= -1/2. */
static int lss__mm_pf_eval(lss__mm_score_fn f, void *user, int B, int gs, int64_t N, int na, const int *act,
                           const double *tq, const float *src, float *dst, float *xp, float *kp, float *sig,
                           int *rows) {
    int64_t i, GN = (int64_t)gs * N;
    int a, j, n = 0, st;
    if (na == 1 && gs == B) {
        for (j = 0; j < B; j++) sig[j] = (float)sqrt(tq[act[0]] > 0 ? tq[act[0]] : 0);
        if ((st = f(user, B, NULL, src, sig, dst)) != LSS_OK) return st;
        for (i = 0; i < (int64_t)B * N; i++) dst[i] *= -0.5f;
        return LSS_OK;
    }
    for (a = 0; a < na; a++) {
        memcpy(xp + (int64_t)a * GN, src + (int64_t)act[a] * GN, sizeof(float) * (size_t)GN);
        for (j = 0; j < gs; j++) {
            sig[n] = (float)sqrt(tq[act[a]] > 0 ? tq[act[a]] : 0);
            rows[n++] = act[a] * gs + j;
        }
    }
    if ((st = f(user, n, rows, xp, sig, kp)) != LSS_OK) return st;
    for (a = 0; a < na; a++) {
        float *d = dst + (int64_t)act[a] * GN;
        const float *k = kp + (int64_t)a * GN;
        for (i = 0; i < GN; i++) d[i] = k[i] * -0.5f;
    }
    return LSS_OK;
}

/* The probability-flow ODE dx/dt = -1/2 score(x, sqrt t) (t = sigma^2), the one integrator of this header
 * (lss_mm_sample, lss_mm_diff_sample): Dormand-Prince 5(4) with error control from t0 down to t1 (t0 > t1 >= 0)
 * on B maps of N pixels in x, updated in place. joint = 1: one step size for all maps and one error norm (RMS
 * over every pixel of every map), as lss_mm_sample's chains; joint = 0: each map its own step size and error
 * norm, the maps still running evaluated together, so that a map's path does not depend on the others.
 * nsteps and nrej (accepted and rejected steps) are summed over the maps (joint: counted once). fn names the
 * caller in errors. */
static int lss__mm_pf_ode(int B, int64_t N, float *x, double t0, double t1, double rtol, double atol, int joint,
                          lss__mm_score_fn f, void *user, const char *fn, int64_t *nsteps, int64_t *nrej) {
    static const double c[7] = {0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0};
    static const double a[7][6] = {{0, 0, 0, 0, 0, 0},
                                   {0.2, 0, 0, 0, 0, 0},
                                   {3.0 / 40, 9.0 / 40, 0, 0, 0, 0},
                                   {44.0 / 45, -56.0 / 15, 32.0 / 9, 0, 0, 0},
                                   {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729, 0, 0},
                                   {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656, 0},
                                   {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}};
    static const double e[7] = {71.0 / 57600, 0, -71.0 / 16695, 71.0 / 1920, -17253.0 / 339200, 22.0 / 525, -1.0 / 40};
    int G = joint ? 1 : B, gs = joint ? B : 1, g, na, q, r, st = LSS_OK, ak;
    int64_t M = (int64_t)B * N, GN = (int64_t)gs * N, i;
    float *mem, *k[7], *xn, *xtmp, *xp = NULL, *kp = NULL, *sig;
    double *t, *h, *tq;
    int64_t *ns, *nr;
    int *act, *need, *rows, *hk1;
    size_t nf = (size_t)(9 * M + (G > 1 ? 2 * M : 0) + B);
    mem = (float *)LSS_MALLOC(sizeof(float) * nf);
    t = (double *)LSS_MALLOC(sizeof(double) * (size_t)G * 3);
    ns = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)G * 2);
    act = (int *)LSS_MALLOC(sizeof(int) * (size_t)(3 * G + B));
    *nsteps = *nrej = 0;
    if (!mem || !t || !ns || !act) {
        LSS_FREE(mem); LSS_FREE(t); LSS_FREE(ns); LSS_FREE(act);
        return lss_seterr(LSS_ERR_NOMEM, "%s: out of memory for the ODE of %d maps", fn, B);
    }
    for (q = 0; q < 7; q++) k[q] = mem + q * M;
    xn = mem + 7 * M;
    xtmp = mem + 8 * M;
    if (G > 1) {
        xp = mem + 9 * M;
        kp = xp + M;
    }
    sig = mem + 9 * M + (G > 1 ? 2 * M : 0);
    h = t + G;
    tq = h + G;
    nr = ns + G;
    need = act + G;
    hk1 = need + G;
    rows = hk1 + G;
    for (g = 0; g < G; g++) {
        t[g] = t0;
        h[g] = -(t0 - t1) / 8.0;
        hk1[g] = 0;
        ns[g] = nr[g] = 0;
    }
    for (;;) {
        int nn = 0;
        na = 0;
        for (g = 0; g < G; g++)
            if (t[g] > t1) {
                if (t[g] + h[g] < t1) h[g] = t1 - t[g];
                act[na++] = g;
                if (!hk1[g]) need[nn++] = g;
            }
        if (na == 0) break;
        if (nn > 0) {
            for (g = 0; g < nn; g++) tq[need[g]] = t[need[g]];
            if ((st = lss__mm_pf_eval(f, user, B, gs, N, nn, need, tq, x, k[0], xp, kp, sig, rows)) != LSS_OK) break;
            for (g = 0; g < nn; g++) hk1[need[g]] = 1;
        }
        for (q = 1; q < 7 && st == LSS_OK; q++) {
            for (ak = 0; ak < na; ak++) {
                int64_t i0 = (int64_t)act[ak] * GN, i1 = i0 + GN;
                double hg = h[act[ak]];
                tq[act[ak]] = t[act[ak]] + c[q] * hg;
                for (i = i0; i < i1; i++) {
                    double v = x[i];
                    for (r = 0; r < q; r++) v += hg * a[q][r] * k[r][i];
                    xtmp[i] = (float)v;
                }
                if (q == 6) memcpy(xn + i0, xtmp + i0, sizeof(float) * (size_t)GN);
            }
            st = lss__mm_pf_eval(f, user, B, gs, N, na, act, tq, xtmp, k[q], xp, kp, sig, rows);
        }
        if (st != LSS_OK) break;
        for (ak = 0; ak < na; ak++) {
            int64_t i0 = (int64_t)act[ak] * GN, i1 = i0 + GN;
            double err = 0, hg;
            g = act[ak];
            hg = h[g];
            for (i = i0; i < i1; i++) {
                double d = 0, sc;
                for (q = 0; q < 7; q++) d += e[q] * k[q][i];
                d *= hg;
                sc = atol + rtol * fmax(fabs((double)x[i]), fabs((double)xn[i]));
                err += (d / sc) * (d / sc);
            }
            err = sqrt(err / (double)GN);
            if (!isfinite(err)) {
                st = lss_seterr(LSS_ERR_NUMERIC, "%s: the ODE produced NaN", fn);
                break;
            }
            if (err <= 1.0) {
                t[g] += hg;
                if (t[g] < t1 + 1e-12 * t0) t[g] = t1;
                memcpy(x + i0, xn + i0, sizeof(float) * (size_t)GN);
                memcpy(k[0] + i0, k[6] + i0, sizeof(float) * (size_t)GN);
                ns[g]++;
                h[g] *= fmin(5.0, fmax(0.2, 0.9 * pow(err > 1e-10 ? err : 1e-10, -0.2)));
            } else {
                nr[g]++;
                h[g] *= fmax(0.2, 0.9 * pow(err, -0.2));
            }
            if (ns[g] + nr[g] > 100000) {
                st = lss_seterr(LSS_ERR_NUMERIC, "%s: the ODE needs more than 100000 steps", fn);
                break;
            }
        }
        if (st != LSS_OK) break;
    }
    for (g = 0; g < G; g++) {
        *nsteps += ns[g];
        *nrej += nr[g];
    }
    LSS_FREE(mem); LSS_FREE(t); LSS_FREE(ns); LSS_FREE(act);
    return st;
}

/* lss_mm_sample's score for the integrator: the tempered posterior score of the chains. */
typedef struct {
    lss_mm_post *p;
    lss_grid_ws *fixed;
    int64_t *nev;
} lss__mm_ode_post;
static int lss__mm_ode_post_score(void *user, int n, const int *rows, const float *x, const float *sigma, float *out) {
    lss__mm_ode_post *u = (lss__mm_ode_post *)user;
    (void)rows;
    return lss__mm_post_eval(u->p, n, x, sigma, out, NULL, NULL, u->fixed, u->nev);
}

/* Runs chains [chain0, chain0 + B) of a resolved option set; fixed: serial with one workspace. */
static int lss__mm_sample_run(lss_mm_post *p, const lss_mm_sample_opts *o, int chain0, int B, float *samples,
                              lss_grid_ws *fixed, lss_mm_sample_stats *st) {
    const lss_mm_sample_opts d = *o;
    lss__mm_hmc h;
    double sigma, lam;
    int64_t N, M, i, ev1 = 0;
    int s = LSS_OK, j, lev = 0, nlev, step, nsteps;
    float *mem = NULL;
    size_t nf;
    memset(&h, 0, sizeof h);
    h.p = p;
    h.g = p->g;
    h.B = B;
    h.L = d.leapfrog;
    h.mass = d.mass;
    h.mh = d.mh;
    h.simpson = d.simpson;
    h.fixed = fixed;
    N = h.N = lss_grid_npix(p->g);
    M = (int64_t)h.B * N;
    /* x mom xs ps sc0 sc1 r0 r1 xt st (10 M) + msq minv (2 N) + sig (B) */
    nf = (size_t)(10 * M + 2 * N + h.B);
    mem = (float *)LSS_MALLOC(sizeof(float) * nf);
    h.lp0 = (double *)LSS_MALLOC(sizeof(double) * (size_t)h.B * 5);
    h.rng = (lss_rng *)LSS_MALLOC(sizeof(lss_rng) * (size_t)h.B);
    if (!mem || !h.lp0 || !h.rng) {
        LSS_FREE(mem);
        LSS_FREE(h.lp0);
        LSS_FREE(h.rng);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_sample: out of memory for %d chains", h.B);
    }
    h.x = mem;
    h.mom = mem + M;
    h.xs = mem + 2 * M;
    h.ps = mem + 3 * M;
    h.sc0 = mem + 4 * M;
    h.sc1 = mem + 5 * M;
    h.r0 = mem + 6 * M;
    h.r1 = mem + 7 * M;
    h.xt = mem + 8 * M;
    h.st = mem + 9 * M;
    h.msq = mem + 10 * M;
    h.minv = h.msq + N;
    h.sig = h.minv + N;
    h.lp1 = h.lp0 + h.B;
    h.lpt = h.lp0 + 2 * h.B;  /* lpt[0..B) and the log-ratio accumulator lpt[B..2B) */
    h.k0 = h.lp0 + 4 * h.B;
    /* initial state: KS of the (masked) shear + N(0, sigma_max^2), projected to zero mean; chain c
       draws from lss_stream(LSS_STREAM_MM_CHAIN, first_chain + c, job) whatever the batch it runs in */
    {
        float *ks = h.st;
        lss_grid_ws tmp, *w = fixed ? fixed : lss_grid_ws_get(p->g, &tmp);
        if (!w) s = LSS_ERR_NOMEM;
        else if (d.init == LSS_MM_INIT_KS) lss__mm_g2k(p->g, w, p->g1, p->g2, ks, NULL);
        else memset(ks, 0, sizeof(float) * (size_t)N);
        if (w) lss_grid_ws_put(w, &tmp);
        for (j = 0; s == LSS_OK && j < h.B; j++) {
            double m = 0;
            lss_rng_for(&h.rng[j], d.seed, LSS_STREAM_MM_CHAIN, d.first_chain + (uint64_t)(chain0 + j), d.job);
            for (i = 0; i < N; i++) {
                h.x[j * N + i] = ks[i] + (float)(d.sigma_max * lss_rng_normal(&h.rng[j]));
                m += h.x[j * N + i];
            }
            m /= (double)N;
            for (i = 0; i < N; i++) h.x[j * N + i] = (float)(h.x[j * N + i] - m);
        }
    }
    /* number of levels */
    nlev = 1;
    for (sigma = d.sigma_max; sigma > d.sigma_min * (1 + 1e-12); sigma = fmax(sigma * d.anneal, d.sigma_min)) nlev++;
    sigma = d.sigma_max;
    for (lev = 0; s == LSS_OK && lev < nlev; lev++) {
        for (j = 0; j < h.B; j++) h.sig[j] = (float)sigma;
        if (h.mass == LSS_MM_MASS_FOURIER) lss__mm_mass_setup(&h, (float)sigma);
        if (d.step > 0) h.eps = (float)d.step;
        else if (h.mass == LSS_MM_MASS_FOURIER) h.eps = 0.5f;
        else {
            double pmax = 0, vmin = INFINITY, s2 = sigma * sigma;
            for (i = 1; i < N; i++) pmax = fmax(pmax, 1.0 / ((double)p->pkf[i] + s2));
            for (i = 0; i < N; i++) vmin = fmin(vmin, (double)p->nvar[i]);
            lam = pmax + 1.0 / (vmin + s2);
            h.eps = (float)(0.5 / sqrt(lam));
        }
        if ((s = lss__mm_post_eval(p, h.B, h.x, h.sig, h.sc0, h.lp0, h.r0, fixed, &h.nev)) != LSS_OK) break;
        nsteps = lev == nlev - 1 ? d.final_steps : d.steps_per_level;
        for (step = 0; step < nsteps; step++)
            if ((s = lss__mm_hmc_step(&h)) != LSS_OK) break;
        if (d.progress && !fixed) d.progress(d.progress_user, (double)(lev + 1) / (double)(nlev + 1));
        sigma = fmax(sigma * d.anneal, d.sigma_min);
    }
    memset(st, 0, sizeof *st);
    st->levels = nlev;
    st->hmc_steps = h.tries / (h.B > 0 ? h.B : 1);
    st->accept_rate = h.tries ? (double)h.acc / (double)h.tries : 0;
    st->hmc_evals_per_chain = (double)h.nev / h.B;
    /* probability-flow ODE from t = sigma_min^2 */
    if (s == LSS_OK && !d.no_ode && d.sigma_min * d.sigma_min > d.ode_t_end) {
        lss__mm_ode_post u;
        int64_t ns = 0, nr = 0;
        u.p = p;
        u.fixed = fixed;
        u.nev = &ev1;
        s = lss__mm_pf_ode(h.B, N, h.x, d.sigma_min * d.sigma_min, d.ode_t_end, d.ode_rtol, d.ode_atol, 1,
                           lss__mm_ode_post_score, &u, "lss_mm_sample", &ns, &nr);
        st->ode_steps = ns;
        st->ode_rejected = nr;
        st->ode_evals_per_chain = (double)ev1 / h.B;
    }
    if (s == LSS_OK) {
        for (i = 0; i < M; i++)
            if (!isfinite(h.x[i])) {
                s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_sample: a chain diverged (non-finite map)");
                break;
            }
        if (s == LSS_OK) memcpy(samples, h.x, sizeof(float) * (size_t)M);
    }
    st->evals_per_chain = st->hmc_evals_per_chain + st->ode_evals_per_chain;
    LSS_FREE(mem);
    LSS_FREE(h.lp0);
    LSS_FREE(h.rng);
    return s;
}

LSSDEF int lss_mm_sample(lss_mm_post *p, const lss_mm_sample_opts *o, float *samples,
                         lss_mm_sample_stats *st) {
    lss_mm_sample_opts d;
    lss_mm_sample_stats tot;
    double t0 = lss_time_now();
    int s = LSS_OK, nth = 1;
    if (!p || !samples) return lss_seterr(LSS_ERR_ARG, "lss_mm_sample: NULL argument");
    memset(&d, 0, sizeof d);
    if (o) d = *o;
    if (d.nchains == 0) d.nchains = 8;
    if (d.sigma_max == 0) d.sigma_max = 1.0;
    if (d.sigma_min == 0) d.sigma_min = 8e-3;
    if (d.anneal == 0) d.anneal = 0.98;
    if (d.steps_per_level == 0) d.steps_per_level = 12;
    if (d.final_steps == 0) d.final_steps = d.steps_per_level;
    if (d.leapfrog == 0) d.leapfrog = 3;
    if (d.simpson == 0) d.simpson = 5;
    if (d.ode_rtol == 0) d.ode_rtol = 1e-3;
    if (d.ode_atol == 0) d.ode_atol = 1e-6;
    if (d.ode_t_end == 0) d.ode_t_end = 1e-5;
    if (d.ode_t_end < 0) d.ode_t_end = 0;
    if (d.nchains < 1 || d.nchains > 100000) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: nchains %d outside [1, 100000]", d.nchains);
    if (!(d.sigma_max > 0) || !(d.sigma_min > 0) || d.sigma_min > d.sigma_max || !isfinite(d.sigma_max))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: need 0 < sigma_min (%g) <= sigma_max (%g)", d.sigma_min, d.sigma_max);
    if (!(d.anneal > 0 && d.anneal < 1)) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: anneal factor %g outside (0, 1)", d.anneal);
    if (d.steps_per_level < 0 || d.final_steps < 0 || d.leapfrog < 1 || d.leapfrog > 1000)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: bad step counts (steps %d, final %d, leapfrog %d)", d.steps_per_level, d.final_steps, d.leapfrog);
    if (d.simpson != 3 && d.simpson != 5) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: Simpson points %d must be 3 or 5", d.simpson);
    if (d.mass != LSS_MM_MASS_FOURIER && d.mass != LSS_MM_MASS_IDENTITY) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: unknown mass matrix %d", d.mass);
    if (d.mh < LSS_MM_MH_AUTO || d.mh > LSS_MM_MH_NONE) return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: unknown MH mode %d", d.mh);
    if (d.step < 0 || !isfinite(d.step) || !(d.ode_rtol > 0) || !(d.ode_atol > 0))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_sample: step and ODE tolerances must be positive");
    memset(&tot, 0, sizeof tot);
#ifdef LSS__MM_OMP
    if (omp_get_level() == 0) nth = omp_get_max_threads();
    if (nth > lss_grid_nws(p->g)) nth = lss_grid_nws(p->g);
    if (nth > d.nchains) nth = d.nchains;
#endif
    if (nth < 1) nth = 1;
    if (p->res) {
        /* one batch: chains advance in lock step (the residual network sees whole batches) */
        s = lss__mm_sample_run(p, &d, 0, d.nchains, samples, NULL, &tot);
    } else {
        /* Gaussian prior only: every chain runs alone on one thread (no synchronisation between
           chains); the results do not depend on the thread count */
        int c, done = 0, own = 1;
        int64_t N = lss_grid_npix(p->g);
#ifdef LSS__MM_OMP
        own = omp_get_level() == 0; /* else: inside a caller's parallel region, workspaces of our own */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
#endif
        for (c = 0; c < d.nchains; c++) {
            lss_mm_sample_stats sc;
            int t = 0, sc_s;
            lss_grid_ws tmp, *w;
#ifdef LSS__MM_OMP
            t = omp_get_thread_num();
#endif
            if (s != LSS_OK) continue;
            w = own ? lss_grid_ws_thread(p->g, t) : NULL;
            if (!w) {
                memset(&tmp, 0, sizeof tmp);
                w = lss_grid_ws_alloc(p->g, &tmp) == LSS_OK ? &tmp : NULL;
            }
            sc_s = w ? lss__mm_sample_run(p, &d, c, 1, samples + (int64_t)c * N, w, &sc) : LSS_ERR_NOMEM;
            if (w == &tmp) lss_grid_ws_release(&tmp);
            if (!w) memset(&sc, 0, sizeof sc);
#ifdef LSS__MM_OMP
#pragma omp critical(lss__mm_sample_acc)
#endif
            {
                if (sc_s != LSS_OK && s == LSS_OK) s = sc_s;
                tot.levels = sc.levels;
                tot.hmc_steps = sc.hmc_steps;
                tot.ode_steps += sc.ode_steps;
                tot.ode_rejected += sc.ode_rejected;
                tot.accept_rate += sc.accept_rate;
                tot.hmc_evals_per_chain += sc.hmc_evals_per_chain;
                tot.ode_evals_per_chain += sc.ode_evals_per_chain;
                done++;
                if (d.progress) d.progress(d.progress_user, (double)done / (double)(d.nchains + 1));
            }
        }
        tot.accept_rate /= d.nchains;
        tot.hmc_evals_per_chain /= d.nchains;
        tot.ode_evals_per_chain /= d.nchains;
        tot.ode_steps /= d.nchains;
        tot.ode_rejected /= d.nchains;
        tot.evals_per_chain = tot.hmc_evals_per_chain + tot.ode_evals_per_chain;
    }
    tot.seconds = lss_time_now() - t0;
    if (st) *st = tot;
    if (d.progress && s == LSS_OK) d.progress(d.progress_user, 1.0);
    return s;
}

LSSDEF int lss_mm_mean_std(int n, int64_t npix, const float *maps, float *mean, float *std) {
    int64_t i;
    int j;
    if (n < 1 || npix < 1 || !maps || !mean) return lss_seterr(LSS_ERR_ARG, "lss_mm_mean_std: bad argument");
    for (i = 0; i < npix; i++) {
        double m = 0, v = 0;
        for (j = 0; j < n; j++) m += maps[(int64_t)j * npix + i];
        m /= n;
        for (j = 0; j < n; j++) {
            double d = maps[(int64_t)j * npix + i] - m;
            v += d * d;
        }
        mean[i] = (float)m;
        if (std) std[i] = (float)(n > 1 ? sqrt(v / (n - 1)) : 0.0);
    }
    return LSS_OK;
}

/* ---- metrics */
LSSDEF int lss_mm_metrics(int64_t npix, const float *est, const float *truth, const float *mask,
                          double *rmse, double *r) {
    double me = 0, mt = 0, cnt = 0, se = 0, vee = 0, vtt = 0, vet = 0;
    int64_t i;
    if (npix < 1 || !est || !truth) return lss_seterr(LSS_ERR_ARG, "lss_mm_metrics: bad argument");
    for (i = 0; i < npix; i++)
        if (!mask || mask[i] > 0) {
            me += est[i];
            mt += truth[i];
            cnt += 1;
        }
    if (cnt < 2) return lss_seterr(LSS_ERR_ARG, "lss_mm_metrics: fewer than 2 observed pixels");
    me /= cnt;
    mt /= cnt;
    for (i = 0; i < npix; i++)
        if (!mask || mask[i] > 0) {
            double a = est[i] - me, b = truth[i] - mt;
            se += (a - b) * (a - b);
            vee += a * a;
            vtt += b * b;
            vet += a * b;
        }
    if (!isfinite(se) || !isfinite(vee) || !isfinite(vtt))
        return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_metrics: the maps hold non-finite values");
    if (!(vtt > 0)) /* a field without signal (an all-zero mock) would give RMSE 0 and a meaningless r */
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_metrics: the true map is constant (%g) over the %.0f observed pixels: no signal to compare with",
                          mt, cnt);
    if (rmse) *rmse = sqrt(se / cnt);
    if (r) *r = vee > 0 ? vet / sqrt(vee * vtt) : NAN; /* a constant estimate has no correlation: NaN, not 0 */
    return LSS_OK;
}

/* ---- NFW and starlet */
LSSDEF double lss_mm_nfw_f(double x) {
    if (x <= 0) return INFINITY;
    if (fabs(x - 1.0) < 1e-5) return 1.0 / 3.0 - 0.4 * (x - 1.0);
    if (x < 1) return (1.0 - 2.0 / sqrt(1 - x * x) * atanh(sqrt((1 - x) / (1 + x)))) / (x * x - 1);
    return (1.0 - 2.0 / sqrt(x * x - 1) * atan(sqrt((x - 1) / (x + 1)))) / (x * x - 1);
}

LSSDEF double lss_mm_nfw_g(double x) {
    double x2 = x * x;
    if (x <= 0) return INFINITY;
    if (fabs(x - 1.0) < 1e-5) return 10.0 / 3.0 + 4.0 * log(0.5);
    if (x < 1) {
        double at = atanh(sqrt((1 - x) / (1 + x))), r = sqrt(1 - x2);
        return 8 * at / (x2 * r) + 4 / x2 * log(x / 2) - 2 / (x2 - 1) + 4 * at / ((x2 - 1) * r);
    } else {
        double at = atan(sqrt((x - 1) / (1 + x))), r = sqrt(x2 - 1);
        return 8 * at / (x2 * r) + 4 / x2 * log(x / 2) - 2 / (x2 - 1) + 4 * at / pow(x2 - 1, 1.5);
    }
}

LSSDEF int lss_mm_nfw_params(const lss_cosmo *c, const lss_mm_nfw *hl, double *rs_arcmin,
                             double *kappa_s) {
    const lss_params *par;
    double cc, zl, zs, h, ez, rhoc, r200, rs, dc, rhos, dl, ds, dls, scrit;
    if (!c || !hl || !rs_arcmin || !kappa_s) return lss_seterr(LSS_ERR_ARG, "lss_mm_nfw_params: NULL argument");
    cc = hl->c200 > 0 ? hl->c200 : 1.0;
    zl = hl->z_l > 0 ? hl->z_l : 0.5;
    zs = hl->z_s > 0 ? hl->z_s : 1.0;
    if (!(hl->m200 > 0) || !isfinite(hl->m200) || !(zs > zl) || hl->c200 < 0 || hl->z_l < 0)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_nfw_params: need M200 > 0, c200 >= 0 and z_s (%g) > z_l (%g)", zs, zl);
    par = lss_cosmo_params(c);
    h = par->h;
    ez = lss_cosmo_ez(c, zl);
    rhoc = 2.77536627e11 * h * h * ez * ez;                    /* Msun / Mpc^3 (physical) */
    r200 = cbrt(3.0 * hl->m200 / (4.0 * M_PI * 200.0 * rhoc)); /* Mpc */
    rs = r200 / cc;
    dc = 200.0 / 3.0 * cc * cc * cc / (log(1 + cc) - cc / (1 + cc));
    rhos = dc * rhoc;
    dl = lss_cosmo_da(c, zl) / h;
    ds = lss_cosmo_da(c, zs) / h;
    dls = (lss_cosmo_chi(c, zs) - lss_cosmo_chi(c, zl)) / (1 + zs) / h;
    if (!(dl > 0) || !(dls > 0)) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_nfw_params: bad distances");
    scrit = 1.66295e18 * ds / (dl * dls);                      /* c^2/(4 pi G) D_s/(D_l D_ls), Msun/Mpc^2 */
    *rs_arcmin = rs / dl / LSS__MM_ARCMIN;
    *kappa_s = rhos * rs / scrit;
    return LSS_OK;
}

LSSDEF int lss_mm_nfw_add(const lss_grid *g, double rs_arcmin, double kappa_s, double xc, double yc,
                          int sub, float *g1, float *g2, float *kappa) {
    int iy, ix, a, b;
    double rs_pix;
    if (!g || !g1 || !g2) return lss_seterr(LSS_ERR_ARG, "lss_mm_nfw_add: NULL argument");
    if (!(rs_arcmin > 0) || !isfinite(kappa_s) || !isfinite(xc) || !isfinite(yc) || sub < 0 || sub > 64)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_nfw_add: bad halo parameters");
    if (sub == 0) sub = 4;
    rs_pix = rs_arcmin / lss_grid_pix_arcmin(g);
    for (iy = 0; iy < lss_grid_h(g); iy++)
        for (ix = 0; ix < lss_grid_w(g); ix++) {
            double s1 = 0, s2 = 0, sk = 0;
            for (a = 0; a < sub; a++)
                for (b = 0; b < sub; b++) {
                    double dx = ix + (b + 0.5) / sub - xc, dy = iy + (a + 0.5) / sub - yc;
                    double r = sqrt(dx * dx + dy * dy), x = r / rs_pix, gt, phi;
                    if (x < 1e-6) x = 1e-6;
                    gt = kappa_s * lss_mm_nfw_g(x);
                    phi = atan2(dy, dx);
                    s1 -= gt * cos(2 * phi);
                    s2 -= gt * sin(2 * phi);
                    sk += 2 * kappa_s * lss_mm_nfw_f(x);
                }
            g1[(int64_t)iy * lss_grid_w(g) + ix] += (float)(s1 / (sub * sub));
            g2[(int64_t)iy * lss_grid_w(g) + ix] += (float)(s2 / (sub * sub));
            if (kappa) kappa[(int64_t)iy * lss_grid_w(g) + ix] += (float)(sk / (sub * sub));
        }
    return LSS_OK;
}

LSSDEF double lss_mm_starlet_u(double r, double theta) {
    double y = fabs(r / theta), t1, t2, t3;
    if (y >= 2.0) return 0.0;
    t1 = 93 * y * y * y - 64 * (pow(fabs(0.5 - y), 3) + pow(0.5 + y, 3));
    t2 = 18 * (pow(fabs(1 - y), 3) + pow(1 + y, 3));
    t3 = 0.5 * (pow(fabs(2 - y), 3) + pow(2 + y, 3));
    return (t1 + t2 - t3) / (9.0 * theta * theta);
}

LSSDEF int lss_mm_starlet_filter(const lss_grid *g, const float *in, double theta_pix, float *out) {
    lss_grid_ws tmp, *w;
    int64_t i, n;
    int iy, ix;
    lss_cdouble *c, *d;
    if (!g || !in || !out) return lss_seterr(LSS_ERR_ARG, "lss_mm_starlet_filter: NULL argument");
    if (!(theta_pix > 0) || !isfinite(theta_pix)) return lss_seterr(LSS_ERR_ARG, "lss_mm_starlet_filter: theta %g must be > 0", theta_pix);
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    n = lss_grid_npix(g);
    c = w->c;
    d = w->d;
    for (iy = 0; iy < lss_grid_h(g); iy++)
        for (ix = 0; ix < lss_grid_w(g); ix++) {
            int dy = iy <= lss_grid_h(g) / 2 ? iy : iy - lss_grid_h(g), dx = ix <= lss_grid_w(g) / 2 ? ix : ix - lss_grid_w(g);
            i = (int64_t)iy * lss_grid_w(g) + ix;
            d[i][0] = lss_mm_starlet_u(sqrt((double)dx * dx + (double)dy * dy), theta_pix);
            d[i][1] = 0;
            c[i][0] = in[i];
            c[i][1] = 0;
        }
    LSS__MM_FWD_D(g, c);
    LSS__MM_FWD_D(g, d);
    for (i = 0; i < n; i++) {
        double re = c[i][0] * d[i][0] - c[i][1] * d[i][1], im = c[i][0] * d[i][1] + c[i][1] * d[i][0];
        c[i][0] = re / (double)n;
        c[i][1] = im / (double)n;
    }
    LSS__MM_INV_D(g, c);
    for (i = 0; i < n; i++) out[i] = (float)c[i][0];
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}


/* ---- neural prior */
struct lss_mm_net {
    const lss_grid *g;
    lss_mm_net_opts o;
    float *pkf;
    lss_store *st;
    lss_unet u;
    lss_graph *gr;
    lss_optim *opt;
    lss_tensor *meta;     /* [4]: c0, deepmass, h, w */
    lss_tensor *scale;    /* [2]: input and output scales (DeepMass) */
    lss_tensor *gate;     /* [1] score networks: v, the prior's pixel variance, of the output gate v / (v + sigma^2) */
    lss_tensor *prec;     /* [2] score networks: marks the preconditioned residual r = (P + sigma^2)^-1 G (checkpoints
                             without it were trained as r = G / sigma and are refused) */
    float *in, *aux, *sig, *gv;
    int cap;
    lss_tensor **sn;      /* per store tensor: its spectral-norm power-iteration vector (a store buffer,
                             so that checkpoints carry it), NULL for tensors that are not conv weights */
    int nsn;
};

LSSDEF void lss_mm_net_free(lss_mm_net *n) {
    if (!n) return;
    LSS_FREE(n->sn);
    lss_optim_free(n->opt);
    lss_graph_free(n->gr);
    lss_store_free(n->st);
    LSS_FREE(n->pkf);
    LSS_FREE(n->in);
    LSS_FREE(n->aux);
    LSS_FREE(n->sig);
    LSS_FREE(n->gv);
    LSS_FREE(n);
}

/* One spectral-norm vector u (C_out values, drawn from lss_stream(LSS_STREAM_NET_INIT, t,
 * LSS_MM_SUB_SPECTRAL) for store tensor t) per convolution weight, as store buffers "massmap.sn<t>":
 * checkpoints carry them, so that a resumed training continues the power iteration exactly. */
static int lss__mm_sn_create(lss_mm_net *n) {
    int t, nt = lss_store_ntensors(n->st);
    n->sn = (lss_tensor **)LSS_MALLOC(sizeof(lss_tensor *) * (size_t)nt);
    if (!n->sn) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_net_create: out of memory");
    memset(n->sn, 0, sizeof(lss_tensor *) * (size_t)nt);
    n->nsn = nt;
    for (t = 0; t < nt; t++) {
        lss_tensor *w = lss_store_tensor(n->st, t), *u;
        int64_t rows[1], i;
        char nm[32];
        lss_rng r;
        if (!(w->flags & LSS_T_PARAM) || w->ndim != 4) continue;
        rows[0] = w->shape[0];
        snprintf(nm, sizeof nm, "massmap.sn%d", t);
        if (!(u = lss_store_buffer(n->st, nm, 1, rows, LSS_INIT_ZERO, 0.0f))) return lss_store_status(n->st);
        lss_rng_for(&r, n->o.seed, LSS_STREAM_NET_INIT, (uint64_t)t, LSS_MM_SUB_SPECTRAL);
        for (i = 0; i < rows[0]; i++) u->data[i] = (float)lss_rng_normal(&r);
        n->sn[t] = u;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_net_create(const lss_grid *g, const double *pk, const lss_mm_net_opts *o,
                             lss_mm_net **out) {
    lss_mm_net *n;
    lss_unet_opts uo;
    int s;
    int64_t one[1] = {4}, two[1] = {2};
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_create: out is NULL");
    *out = NULL;
    if (!g || !pk) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_create: NULL argument");
    if (lss_grid_h(g) % 4 || lss_grid_w(g) % 4) return lss_seterr(LSS_ERR_SHAPE, "lss_mm_net_create: map %d x %d must have sides that are multiples of 4", lss_grid_h(g), lss_grid_w(g));
    if ((s = lss__mm_check_pk(g, pk, "lss_mm_net_create")) != LSS_OK) return s;
    n = (lss_mm_net *)LSS_MALLOC(sizeof *n);
    if (!n) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_net_create: out of memory");
    memset(n, 0, sizeof *n);
    n->g = g;
    if (o) n->o = *o;
    if (n->o.c0 == 0) n->o.c0 = 32;
    if (n->o.c0 < 1 || n->o.c0 > 512) {
        int c0 = n->o.c0;
        LSS_FREE(n);
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_net_create: width c0 %d outside [1, 512]", c0);
    }
    if (!(n->pkf = lss__mm_pkf(g, pk))) {
        lss_mm_net_free(n);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_net_create: out of memory");
    }
    if ((s = lss_store_create(n->o.seed, &n->st)) != LSS_OK || (s = lss_graph_create(&n->gr)) != LSS_OK) {
        lss_mm_net_free(n);
        return s;
    }
    memset(&uo, 0, sizeof uo);
    uo.in_ch = 2;
    uo.out_ch = 1;
    uo.c0 = n->o.c0;
    uo.sigma_cond = n->o.deepmass ? 0 : 1;
    if ((s = lss_unet_init(&n->u, n->st, "unet", &uo)) != LSS_OK) {
        lss_mm_net_free(n);
        return s;
    }
    if (!n->o.deepmass) { /* zero head: the residual starts at 0, the hybrid prior exactly at the Gaussian */
        memset(n->u.head_w->data, 0, sizeof(float) * (size_t)n->u.head_w->n);
        memset(n->u.head_b->data, 0, sizeof(float) * (size_t)n->u.head_b->n);
    }
    n->meta = lss_store_buffer(n->st, "massmap.meta", 1, one, LSS_INIT_ZERO, 0.0f);
    n->scale = lss_store_buffer(n->st, "massmap.scale", 1, two, LSS_INIT_ZERO, 1.0f);
    if (!n->o.deepmass) {
        int64_t i, np = lss_grid_npix(g);
        double v = 0;
        for (i = 0; i < np; i++) v += n->pkf[i];
        n->gate = lss_store_buffer(n->st, "massmap.gate", 1, two, LSS_INIT_ZERO, 0.0f);
        if (n->gate) n->gate->data[0] = (float)(v / (double)np), n->gate->data[1] = 1.0f;
        n->prec = lss_store_buffer(n->st, "massmap.precond", 1, two, LSS_INIT_ZERO, 1.0f);
    }
    if ((s = lss_store_status(n->st)) != LSS_OK || (s = lss__mm_sn_create(n)) != LSS_OK) {
        lss_mm_net_free(n);
        return s;
    }
    n->meta->data[0] = (float)n->o.c0;
    n->meta->data[1] = (float)n->o.deepmass;
    n->meta->data[2] = (float)lss_grid_h(g);
    n->meta->data[3] = (float)lss_grid_w(g);
    *out = n;
    return LSS_OK;
}

LSSDEF int64_t lss_mm_net_nparams(const lss_mm_net *n) { return n ? lss_store_nparams(n->st) : 0; }

LSSDEF int lss_mm_net_save(const lss_mm_net *n, const char *path) {
    if (!n || !path) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_save: NULL argument");
    /* the meta buffer may have been renumbered by a store reallocation: refresh it */
    lss_store_get(n->st, "massmap.meta")->data[0] = (float)n->o.c0;
    return lss_ckpt_save(path, n->st, NULL);
}

/* The architecture in a "massmap.meta" tensor (c0, deepmass, h, w as floats): each value checked before it
 * becomes an int (NaN, 1e300 or a fraction is LSS_ERR_FORMAT naming the file, the field and the value). */
static int lss__mm_meta_ints(const char *path, const float *m, int *v) {
    static const char *const name[4] = {"c0 (U-net width)", "deepmass", "map height", "map width"};
    static const double lo[4] = {1, 0, 2, 2}, hi[4] = {512, 1, 65536, 65536};
    int k;
    for (k = 0; k < 4; k++) {
        double x = (double)m[k];
        if (!(x >= lo[k] && x <= hi[k]) || x != floor(x))
            return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.meta %s is %g (an integer in [%g, %g] is needed)", path, name[k], x, lo[k], hi[k]);
        v[k] = (int)x;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_net_load(lss_mm_net *n, const char *path) {
    int s;
    lss_tensor *m;
    if (!n || !path) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_load: NULL argument");
    if ((s = lss_ckpt_load(path, n->st, NULL)) != LSS_OK) return s;
    m = lss_store_get(n->st, "massmap.meta");
    if (!m) return lss_seterr(LSS_ERR_FORMAT, "%s: checkpoint is for another network or map size", path);
    {
        int v[4];
        if ((s = lss__mm_meta_ints(path, m->data, v)) != LSS_OK) return s;
        if (v[0] != n->o.c0 || v[1] != n->o.deepmass || v[2] != lss_grid_h(n->g) || v[3] != lss_grid_w(n->g))
            return lss_seterr(LSS_ERR_FORMAT, "%s: checkpoint is for a network of width %d (%s) on %d x %d maps, not width %d (%s) on %d x %d",
                              path, v[0], v[1] ? "DeepMass" : "score", v[2], v[3], n->o.c0, n->o.deepmass ? "DeepMass" : "score",
                              lss_grid_h(n->g), lss_grid_w(n->g));
    }
    return LSS_OK;
}

static int lss__mm_rd(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

/* Finds the float32 tensor `name` of n values in an lss_nn checkpoint without loading the file: *found = 1 and
 * out filled, or *found = 0. LSS_ERR_IO / LSS_ERR_FORMAT when the file cannot be read or is no checkpoint. */
static int lss__mm_ckpt_find(const char *path, const char *name_want, int64_t nwant, float *out, int *found) {
    FILE *f;
    char magic[8];
    uint32_t ver, nt, i, len, dt, nd, k;
    int64_t sh[8], cnt;
    char name[256];
    int s0;
    *found = 0;
    if ((s0 = lss_fopen_read(path, &f, NULL)) != LSS_OK) return s0;
    if (!lss__mm_rd(f, magic, 8) || memcmp(magic, "LSSNNCK1", 8) || !lss__mm_rd(f, &ver, 4) || !lss__mm_rd(f, &nt, 4)) {
        int e = ferror(f) ? errno : 0;
        fclose(f);
        if (e) return lss_seterr(LSS_ERR_IO, "%s: cannot read: %s", path, strerror(e));
        return lss_seterr(LSS_ERR_FORMAT, "%s: not an lss network checkpoint", path);
    }
    for (i = 0; i < nt; i++) {
        if (!lss__mm_rd(f, &len, 4) || len >= sizeof name || !lss__mm_rd(f, name, len) || !lss__mm_rd(f, &dt, 4) ||
            !lss__mm_rd(f, &nd, 4) || nd > 8) break;
        name[len] = 0;
        cnt = 1;
        for (k = 0; k < nd; k++) {
            /* every size positive and the product below 2^46 elements (the checkpoint reader's limit) */
            if (!lss__mm_rd(f, &sh[k], 8) || sh[k] < 1 || sh[k] > ((int64_t)1 << 40) || cnt > ((int64_t)1 << 46) / sh[k]) {
                cnt = -1;
                break;
            }
            cnt *= sh[k];
        }
        if (cnt < 0 || (dt != 1 && dt != 2 && dt != 4)) break;
        if (!strcmp(name, name_want) && dt == 1 && cnt == nwant) {
            if (!lss__mm_rd(f, out, sizeof(float) * (size_t)nwant)) break;
            *found = 1;
            break;
        }
        if (cnt > (int64_t)(LONG_MAX / 8) || fseek(f, (long)(cnt * (dt == 1 ? 4 : 8)), SEEK_CUR) != 0) break;
    }
    fclose(f);
    return LSS_OK;
}

LSSDEF int lss_mm_net_probe(const char *path, int *c0, int *deepmass, int *h, int *w) {
    float m[4];
    int v[4], s, found;
    if (!path) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_probe: NULL path");
    if ((s = lss__mm_ckpt_find(path, "massmap.meta", 4, m, &found)) != LSS_OK) return s;
    if (!found) return lss_seterr(LSS_ERR_FORMAT, "%s: no massmap network description in the checkpoint", path);
    if ((s = lss__mm_meta_ints(path, m, v)) != LSS_OK) return s;
    if (c0) *c0 = v[0];
    if (deepmass) *deepmass = v[1];
    if (h) *h = v[2];
    if (w) *w = v[3];
    return LSS_OK;
}

static int lss__mm_net_reserve(lss_mm_net *n, int b) {
    size_t m;
    if (b <= n->cap) return LSS_OK;
    m = sizeof(float) * (size_t)b * (size_t)lss_grid_npix(n->g);
    LSS_FREE(n->in);
    LSS_FREE(n->aux);
    LSS_FREE(n->sig);
    LSS_FREE(n->gv);
    n->in = (float *)LSS_MALLOC(2 * m);
    n->aux = (float *)LSS_MALLOC(2 * m);
    n->sig = (float *)LSS_MALLOC(sizeof(float) * (size_t)b);
    n->gv = (float *)LSS_MALLOC(sizeof(float) * (size_t)b);
    n->cap = 0;
    if (!n->in || !n->aux || !n->sig || !n->gv) return lss_seterr(LSS_ERR_NOMEM, "massmap network: out of memory for a batch of %d", b);
    n->cap = b;
    return LSS_OK;
}

/* Forward pass of a prepared input [b, 2, H, W] in n->in; output copied to out [b, H, W]. */
/* the network on input rows r0 .. r0 + b - 1 of n->in */
static int lss__mm_net_forward_rows(lss_mm_net *n, int r0, int b, const float *sigma, float *out, int training, lss_tensor **res) {
    int64_t sh[4] = {b, 2, lss_grid_h(n->g), lss_grid_w(n->g)}, s1[1] = {b};
    lss_tensor *x, *sg = NULL, *y;
    lss_graph_reset(n->gr);
    lss_graph_set_training(n->gr, training);
    x = lss_view(n->gr, n->in + (size_t)r0 * 2 * (size_t)lss_grid_npix(n->g), 4, sh);
    if (!n->o.deepmass) {
        memcpy(n->sig, sigma, sizeof(float) * (size_t)b);
        sg = lss_view(n->gr, n->sig, 1, s1);
    }
    y = lss_unet_forward(n->gr, &n->u, x, sg);
    if (y && !n->o.deepmass) {
        /* the output gate v / (v + sigma^2): the residual fades where the tempered prior is Gaussian */
        int64_t g4[4] = {b, 1, 1, 1};
        int j;
        double v = n->gate->data[0], eps = n->u.o.sigma_eps;
        /* times sqrt(v + sigma^2) (|sigma| + eps): the U-net's 1/(|sigma| + eps) undone, G in convergence units of the
           noisy map's amplitude (at most sqrt(v) with the gate) */
        for (j = 0; j < b; j++) {
            double s2 = (double)sigma[j] * sigma[j];
            n->gv[j] = (float)(v / (v + s2) * sqrt(v + s2) * (fabs((double)sigma[j]) + eps));
        }
        y = lss_op_mul(n->gr, y, lss_view(n->gr, n->gv, 4, g4));
    }
    if (!y) return lss_graph_status(n->gr) ? lss_graph_status(n->gr) : lss_seterr(LSS_ERR_STATE, "massmap network: forward failed");
    if (res) *res = y;
    if (out) memcpy(out, y->data, sizeof(float) * (size_t)b * (size_t)lss_grid_npix(n->g));
    return LSS_OK;
}
static int lss__mm_net_forward(lss_mm_net *n, int b, const float *sigma, float *out, int training, lss_tensor **res) {
    return lss__mm_net_forward_rows(n, 0, b, sigma, out, training, res);
}

/* The preconditioned residual: out_j = F^-1[ F[in_j] / (P_k + sigma_j^2) ] (P_0 = v for the mean) for the b maps of
 * in (out may be in). The network's output G is a correction in convergence units; as a score it acts through the
 * Gaussian's own covariance, so that its large scales, where P_k >> sigma^2 and the denoising loss barely sees them,
 * cannot drive the sampler: in the Fourier-preconditioned HMC a unit of G moves a map by at most sqrt(v) at every
 * scale, where r = G / sigma moved the largest scales by P_k / sigma and let the chains run away. Self-adjoint. */
static int lss__mm_precond(const lss_mm_net *n, int b, const float *sigma, const float *in, float *out) {
    lss_grid_ws tmp, *w;
    int64_t i, np = lss_grid_npix(n->g);
    int j;
    float v0 = n->gate->data[0]; /* the mean, on which the Gaussian prior is flat: the pixel variance v as its scale */
    if (!(w = lss_grid_ws_get(n->g, &tmp))) return lss_seterr(LSS_ERR_NOMEM, "massmap network: out of memory");
    for (j = 0; j < b; j++) {
        lss_cfloat *a = w->a;
        float s2 = sigma[j] * sigma[j], sc = 1.0f / (float)np;
        for (i = 0; i < np; i++) a[i][0] = in[j * np + i], a[i][1] = 0;
        LSS__MM_FWD(n->g, a);
        for (i = 0; i < np; i++) {
            float den = (i == 0 ? v0 : n->pkf[i]) + s2, m = den > 0 ? sc / den : 0.0f;
            a[i][0] *= m;
            a[i][1] *= m;
        }
        LSS__MM_INV(n->g, a);
        for (i = 0; i < np; i++) out[j * np + i] = a[i][0];
    }
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

LSSDEF int lss_mm_net_residual(void *net, int b, const float *x, const float *score_gauss,
                               const float *sigma, float *out) {
    lss_mm_net *n = (lss_mm_net *)net;
    int64_t np, i;
    int j, s;
    if (!n || n->o.deepmass || !x || !score_gauss || !sigma || !out || b < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_net_residual: bad argument (a score network is needed)");
    if ((s = lss__mm_net_reserve(n, b)) != LSS_OK) return s;
    np = lss_grid_npix(n->g);
    for (j = 0; j < b; j++) {
        float s2 = sigma[j] * sigma[j];
        for (i = 0; i < np; i++) {
            n->in[(2 * (int64_t)j) * np + i] = x[j * np + i];
            n->in[(2 * (int64_t)j + 1) * np + i] = s2 * score_gauss[j * np + i];
        }
    }
    if ((s = lss__mm_net_forward(n, b, sigma, out, 0, NULL)) != LSS_OK) return s;
    return lss__mm_precond(n, b, sigma, out, out);
}

/* KS (E, B) of a shear map, scaled, into the input slot j. */
static void lss__mm_dm_input(lss_mm_net *n, lss_grid_ws *w, int j, const float *g1, const float *g2) {
    int64_t np = lss_grid_npix(n->g), i;
    float *e = n->in + 2 * (int64_t)j * np, *bm = e + np, sc = n->scale->data[0];
    lss__mm_g2k(n->g, w, g1, g2, e, bm);
    for (i = 0; i < np; i++) {
        e[i] *= sc;
        bm[i] *= sc;
    }
}

LSSDEF int lss_mm_net_deepmass(lss_mm_net *n, const float *g1, const float *g2, float *kappa) {
    lss_grid_ws tmp, *w;
    int s;
    int64_t i;
    if (!n || !n->o.deepmass || !g1 || !g2 || !kappa) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_deepmass: bad argument (a DeepMass network is needed)");
    if ((s = lss__mm_net_reserve(n, 1)) != LSS_OK) return s;
    n->scale = lss_store_get(n->st, "massmap.scale");
    if (!(w = lss_grid_ws_get(n->g, &tmp))) return LSS_ERR_NOMEM;
    lss__mm_dm_input(n, w, 0, g1, g2);
    lss_grid_ws_put(w, &tmp);
    if ((s = lss__mm_net_forward(n, 1, NULL, kappa, 0, NULL)) != LSS_OK) return s;
    for (i = 0; i < lss_grid_npix(n->g); i++) kappa[i] *= n->scale->data[1];
    return LSS_OK;
}

/* Projects every convolution weight to spectral norm <= 1 (one power iteration per call on the
 * weight reshaped to [C_out, rest], the vector u kept between calls in the store; v is scratch). */
static void lss__mm_spectral(lss_mm_net *n, float *v) {
    int t;
    for (t = 0; t < n->nsn; t++) {
        lss_tensor *w = lss_store_tensor(n->st, t);
        int64_t rows, cols, i, j;
        double nu = 0, sig;
        float *u;
        if (!n->sn[t]) continue;
        rows = w->shape[0];
        cols = w->n / rows;
        u = n->sn[t]->data;
        for (j = 0; j < cols; j++) {
            double a = 0;
            for (i = 0; i < rows; i++) a += (double)w->data[i * cols + j] * u[i];
            v[j] = (float)a;
            nu += a * a;
        }
        nu = sqrt(nu) + 1e-12;
        for (j = 0; j < cols; j++) v[j] = (float)(v[j] / nu);
        nu = 0;
        for (i = 0; i < rows; i++) {
            double a = 0;
            for (j = 0; j < cols; j++) a += (double)w->data[i * cols + j] * v[j];
            u[i] = (float)a;
            nu += a * a;
        }
        sig = sqrt(nu);
        if (sig > 0)
            for (i = 0; i < rows; i++) u[i] = (float)(u[i] / (sig + 1e-12));
        else /* W = 0 (the zero-initialised head): a unit u, so that the iteration restarts once W moves */
            for (i = 0; i < rows; i++) u[i] = (float)(1.0 / sqrt((double)rows));
        if (sig > 1.0)
            for (i = 0; i < w->n; i++) w->data[i] = (float)(w->data[i] / sig);
    }
}

/* ---- training: batches, the step, the held-out loss, the loop (lss_train of lss_nn.h) */
typedef struct {
    lss_mm_net *n;
    lss_mm_train_opts d;  /* defaults applied */
    int b, nlast;
    int64_t np;
    double *pg;           /* Gaussian spectrum of the training fields on d.big */
    float *fbig, *truth, *u, *sgs, *sig, *v;
    float *uw, *sw;       /* the loss's u and sigma, times sqrt(w(sigma)) (w = 1 for the reference's draw) */
    float *r, *gy;        /* score networks: the preconditioned residual of a batch, the loss's gradient on the output */
    lss_grid_ws tmp, *w;
    double lsum, valid, base;
    double fixed_sigma;   /* > 0: every map of a batch at this noise level (lss_mm_net_heldout_sigma) */
    int keep_truth;       /* 1: the batch's maps are those already in truth (the same batch at another level) */
    int64_t lcnt, ran, skipped;
    lss_dp *dp;           /* data-parallel steps (d.shards > 1, or MPI; NULL: the whole batch at once) */
} lss__mm_tr;

static void lss__mm_tr_close(lss__mm_tr *t) {
    if (t->w) lss_grid_ws_put(t->w, &t->tmp);
    LSS_FREE(t->pg); LSS_FREE(t->fbig); LSS_FREE(t->truth); LSS_FREE(t->u); LSS_FREE(t->sgs); LSS_FREE(t->sig);
    LSS_FREE(t->uw); LSS_FREE(t->sw); LSS_FREE(t->r); LSS_FREE(t->gy);
    LSS_FREE(t->v);
    memset(t, 0, sizeof *t);
}

/* Defaults, checks of what batches need (grid, spectrum, shift, noise map), workspaces. */
static int lss__mm_tr_open(lss__mm_tr *t, lss_mm_net *n, const lss_mm_train_opts *o, const char *fn) {
    int s = LSS_OK, k;
    int64_t vmax = 1, nb;
    memset(t, 0, sizeof *t);
    t->n = n;
    t->d = *o;
    if (t->d.batch == 0) t->d.batch = 16;
    if (t->d.s == 0) t->d.s = 0.2;
    if (t->d.eval_batches == 0) t->d.eval_batches = 4;
    if (t->d.sigma_max > 0 && t->d.sigma_mix == 0) t->d.sigma_mix = 0.5;
    if (t->d.batch < 1 || t->d.batch > (1 << 20) || !(t->d.s > 0) || !isfinite(t->d.s) || !(t->d.lambda >= 0) ||
        !isfinite(t->d.lambda) || t->d.eval_batches < 1)
        return lss_seterr(LSS_ERR_RANGE, "%s: bad options (batch %d, noise scale %g, shift %g, evaluation batches %d)", fn,
                          t->d.batch, t->d.s, t->d.lambda, t->d.eval_batches);
    if (!(t->d.sigma_max >= 0) || !isfinite(t->d.sigma_max) || !(t->d.sigma_min >= 0) || !isfinite(t->d.sigma_min) ||
        !(t->d.sigma_mix <= 1) || !isfinite(t->d.sigma_mix) ||
        (t->d.sigma_max > 0 && t->d.sigma_mix > 0 && !(t->d.sigma_min > 0 && t->d.sigma_min < t->d.sigma_max)))
        return lss_seterr(LSS_ERR_RANGE, "%s: bad noise range (sigma_min %g, sigma_max %g, share %g): 0 < sigma_min < sigma_max and a "
                          "share at most 1 are needed", fn, t->d.sigma_min, t->d.sigma_max, t->d.sigma_mix);
    if (t->d.nbank < 0 || (t->d.bank && t->d.nbank < 1))
        return lss_seterr(LSS_ERR_RANGE, "%s: a bank of %lld maps (1 or more are needed)", fn, (long long)t->d.nbank);
    if (!t->d.big || !t->d.pk_big || lss_grid_h(t->d.big) < lss_grid_h(n->g) || lss_grid_w(t->d.big) < lss_grid_w(n->g))
        return lss_seterr(LSS_ERR_ARG, "%s: a training grid at least as large as the maps is required", fn);
    if (n->o.deepmass && !t->d.nvar) return lss_seterr(LSS_ERR_ARG, "%s: DeepMass training needs the survey noise map", fn);
    if ((s = lss__mm_check_pk(t->d.big, t->d.pk_big, fn)) != LSS_OK) return s;
    if (t->d.nvar && (s = lss__mm_check_nvar(n->g, t->d.nvar, fn)) != LSS_OK) return s;
    t->b = t->d.batch;
    t->np = lss_grid_npix(n->g);
    nb = lss_grid_npix(t->d.big);
    for (k = 0; k < n->nsn; k++)
        if (n->sn[k] && lss_store_tensor(n->st, k)->n / n->sn[k]->n > vmax) vmax = lss_store_tensor(n->st, k)->n / n->sn[k]->n;
    t->pg = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb);
    t->fbig = (float *)LSS_MALLOC(sizeof(float) * (size_t)nb);
    t->truth = (float *)LSS_MALLOC(sizeof(float) * (size_t)(t->b * t->np));
    t->u = (float *)LSS_MALLOC(sizeof(float) * (size_t)(t->b * t->np));
    t->uw = (float *)LSS_MALLOC(sizeof(float) * (size_t)(t->b * t->np));
    t->sw = (float *)LSS_MALLOC(sizeof(float) * (size_t)t->b);
    t->sgs = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * t->b * t->np));
    t->sig = (float *)LSS_MALLOC(sizeof(float) * (size_t)t->b);
    t->v = (float *)LSS_MALLOC(sizeof(float) * (size_t)vmax);
    t->r = (float *)LSS_MALLOC(sizeof(float) * (size_t)(t->b * t->np));
    t->gy = (float *)LSS_MALLOC(sizeof(float) * (size_t)(t->b * t->np));
    if (!t->pg || !t->fbig || !t->truth || !t->u || !t->sgs || !t->sig || !t->v || !t->uw || !t->sw || !t->r || !t->gy) {
        lss__mm_tr_close(t);
        return lss_seterr(LSS_ERR_NOMEM, "%s: out of memory", fn);
    }
    if (t->d.lambda > 0) s = lss_field_lognormal_spectrum(t->d.big, t->d.pk_big, t->d.lambda, t->pg);
    else memcpy(t->pg, t->d.pk_big, sizeof(double) * (size_t)nb);
    if (s == LSS_OK) s = lss__mm_net_reserve(n, t->b);
    if (s == LSS_OK && !(t->w = lss_grid_ws_get(n->g, &t->tmp))) s = LSS_ERR_NOMEM;
    if (s != LSS_OK) lss__mm_tr_close(t);
    t->valid = t->base = NAN;
    return s;
}

/* Halo-model maps index0 .. index0 + n - 1 of data set `set` (lss_mm_halo_field) into out [n][h][w], drawn in
 * parallel; the status of a failed draw (the last one seen) or LSS_OK. */
static int lss__mm_halo_fields(const lss_mm_halo_model *hm, int h, int w, uint64_t seed, lss_set set, uint64_t index0, int64_t n,
                               float *out) {
    int64_t q;
    int bad = LSS_OK;
#ifdef LSS__MM_OMP
#pragma omp parallel for schedule(dynamic)
#endif
    for (q = 0; q < n; q++) {
        int sq = lss_mm_halo_field(hm, h, w, seed, set, index0 + (uint64_t)q, out + q * (int64_t)h * w);
        if (sq != LSS_OK) {
#ifdef LSS__MM_OMP
#pragma omp critical
#endif
            bad = sq;
        }
    }
    return bad;
}

/* Batch `index` of data set `set`, a pure function of (seed, set, index): b cut-outs of the large field
 * (streams lss_mm_field_stream(set, index b + j)) and the noise of stream (LSS_STREAM_MM_DSM,
 * lss_set_index(set, index)), prepared as the network's input n->in. Score network: sig[j] = s N(0, 1),
 * u the unit noise, sgs the Gaussian score at |sig| of x = truth + sig u, input [x, sig^2 sgs] (as
 * lss_mm_net_residual builds it). DeepMass: input the scaled KS maps of the noisy masked shear, u the
 * scaled truth. */
static int lss__mm_batch(lss__mm_tr *t, lss_set set, uint64_t index) {
    lss_mm_net *n = t->n;
    int64_t np = t->np, i;
    int j, s = LSS_OK;
    lss_rng r;
    if (t->keep_truth)
        ;
    else if (set == LSS_SET_TRAIN && t->d.bank) {
        int H = lss_grid_h(n->g), W = lss_grid_w(n->g), y, x;
        for (j = 0; j < t->b; j++) {
            uint64_t q = index * (uint64_t)t->b + (uint64_t)j;
            const float *src = t->d.bank + (int64_t)(q % (uint64_t)t->d.nbank) * np;
            int sym = (int)((q / (uint64_t)t->d.nbank) % (H == W ? 8u : 4u)), fy = sym & 1, fx = (sym >> 1) & 1, tr = (sym >> 2) & 1;
            float *dst = t->truth + j * np;
            for (y = 0; y < H; y++)
                for (x = 0; x < W; x++) {
                    int sy = tr ? x : y, sx = tr ? y : x;
                    if (fy) sy = H - 1 - sy;
                    if (fx) sx = W - 1 - sx;
                    dst[(int64_t)y * W + x] = src[(int64_t)sy * W + sx];
                }
        }
    } else if (t->d.halo)
        s = lss__mm_halo_fields(t->d.halo, lss_grid_h(n->g), lss_grid_w(n->g), t->d.seed, set, index * (uint64_t)t->b, t->b, t->truth);
    else
        for (j = 0; j < t->b && s == LSS_OK; j++)
            s = lss__mm_cutout(t->d.big, t->pg, t->d.lambda, lss_grid_h(n->g), lss_grid_w(n->g), t->d.seed,
                               lss_mm_field_stream(set, index * (uint64_t)t->b + (uint64_t)j), t->fbig, t->truth + j * np);
    if (s != LSS_OK) return s;
    lss_rng_for(&r, t->d.seed, LSS_STREAM_MM_DSM, lss_set_index(set, index), 0);
    for (j = 0; j < t->b; j++) {
        float *uj = t->u + j * np, *tj = t->truth + j * np;
        if (!n->o.deepmass) {
            float sj, s2, *sgj = t->sgs + j * np;
            float *xin = n->in + 2 * (int64_t)j * np, *gin = xin + np;
            if (t->d.sigma_max > 0 && t->d.sigma_mix > 0 && (double)j < t->d.sigma_mix * t->b) {
                /* log-uniform |sigma| on [sigma_min, sigma_max], random sign */
                double a = lss_rng_uniform(&r), e = lss_rng_uniform(&r);
                sj = (float)(t->d.sigma_min * exp(a * log(t->d.sigma_max / t->d.sigma_min)));
                if (e < 0.5) sj = -sj;
            } else
                sj = (float)(t->d.s * lss_rng_normal(&r));
            if (t->fixed_sigma > 0) sj = (float)t->fixed_sigma;
            s2 = sj * sj;
            t->sig[j] = sj;
            for (i = 0; i < np; i++) {
                uj[i] = (float)lss_rng_normal(&r);
                xin[i] = tj[i] + sj * uj[i];
            }
            lss__mm_gscore1(n->g, t->w, n->pkf, xin, fabsf(sj), sgj);
            for (i = 0; i < np; i++) gin[i] = s2 * sgj[i];
            {   /* over the sampler's range, each level weighted by w = L_G(sigma)^-3/4, L_G(sigma) = mean_k P_k / (P_k +
                   sigma^2) the Gaussian score's expected loss there (1 at small sigma, ~ v / sigma^2 at large): levels
                   whose loss is small still count. Exponent 3/4 from held-out comparisons of 1/2, 3/4 and 1: 1/2 leaves
                   sigma > 0.1 unlearnt, 1 the smallest levels */
                double wq = 1;
                if (t->d.sigma_max > 0 && t->d.sigma_mix > 0) {
                    double lg = 0;
                    for (i = 0; i < np; i++) lg += n->pkf[i] / (n->pkf[i] + (double)s2);
                    wq = lg > 0 ? pow((double)np / lg, 0.375) : 1; /* sqrt(w), w = L_G^-3/4 */
                }
                for (i = 0; i < np; i++) t->uw[j * np + i] = (float)(wq * uj[i]);
                t->sw[j] = (float)(wq * sj);
            }
        } else {
            float *g1 = t->sgs, *g2 = t->sgs + np;
            lss__mm_k2g(n->g, t->w, tj, NULL, g1, g2);
            for (i = 0; i < np; i++) {
                double n1 = lss_rng_normal(&r), n2 = lss_rng_normal(&r);
                if (t->d.nvar[i] >= 0.5 * LSS_MM_EMPTY_VAR) g1[i] = g2[i] = 0.0f;
                else {
                    double sd = sqrt((double)t->d.nvar[i]);
                    g1[i] += (float)(sd * n1);
                    g2[i] += (float)(sd * n2);
                }
            }
            lss__mm_dm_input(n, t->w, j, g1, g2);
            for (i = 0; i < np; i++) uj[i] = tj[i] / n->scale->data[1];
        }
    }
    return LSS_OK;
}

/* The residual DSM loss (eq. 24) of rows lo .. hi - 1 of the batch, mean (u + sigma (s_G + r))^2 (u, sigma times
 * sqrt(w)) with r = lss__mm_precond(y) and y the network's output for those rows, times `scale`: *loss its value and
 * *l a graph scalar sum(y * dloss/dy) whose backward pass gives the loss's gradient (the filter is applied outside
 * the graph, once forward and, being self-adjoint, once on the gradient). */
static int lss__mm_dsm_rows(lss__mm_tr *t, lss_tensor *y, int64_t lo, int64_t hi, double scale, lss_tensor **l, double *loss) {
    lss_mm_net *n = t->n;
    int64_t np = t->np, i, j, m = hi - lo;
    double sum = 0, c = 2.0 * scale / ((double)m * (double)np);
    int s;
    *l = NULL;
    if ((s = lss__mm_precond(n, (int)m, t->sig + lo, y->data, t->r + lo * np)) != LSS_OK) return s;
    for (j = lo; j < hi; j++) {
        double sw = t->sw[j];
        for (i = 0; i < np; i++) {
            double e = t->uw[j * np + i] + sw * ((double)t->sgs[j * np + i] + t->r[j * np + i]);
            sum += e * e;
            t->gy[j * np + i] = (float)(c * sw * e);
        }
    }
    *loss = sum * scale / ((double)m * (double)np);
    if ((s = lss__mm_precond(n, (int)m, t->sig + lo, t->gy + lo * np, t->gy + lo * np)) != LSS_OK) return s;
    *l = lss_op_sum(n->gr, lss_op_mul(n->gr, y, lss_view(n->gr, t->gy + lo * np, y->ndim, y->shape)));
    if (!*l) return lss_graph_status(n->gr) ? lss_graph_status(n->gr) : lss_seterr(LSS_ERR_STATE, "lss_mm_net_train: loss graph failed");
    return isfinite(*loss) ? LSS_OK : lss_seterr(LSS_ERR_NUMERIC, "lss_mm_net_train: the loss is not finite");
}

/* lss_dp_fn: the loss of the rows of shard sh, weighted by their share of the batch, and its gradient */
static int lss__mm_train_shard(void *user, int sh, int nsh, double *loss) {
    lss__mm_tr *t = (lss__mm_tr *)user;
    lss_mm_net *n = t->n;
    int64_t lo, hi, sh4[4], np = t->np;
    lss_tensor *y, *l;
    int s;
    lss_dp_shard(t->b, sh, nsh, &lo, &hi);
    *loss = 0;
    if (hi == lo) return LSS_OK; /* more shards than maps: this one adds nothing */
    sh4[0] = hi - lo; sh4[1] = 1; sh4[2] = lss_grid_h(n->g); sh4[3] = lss_grid_w(n->g);
    if ((s = lss__mm_net_forward_rows(n, (int)lo, (int)(hi - lo), n->o.deepmass ? NULL : t->sig + lo, NULL, 1, &y)) != LSS_OK) return s;
    if (!n->o.deepmass) { /* residual DSM (eq. 24) */
        if ((s = lss__mm_dsm_rows(t, y, lo, hi, (double)(hi - lo) / (double)t->b, &l, loss)) != LSS_OK) return s;
        return lss_backward(n->gr, l);
    }
    l = lss_op_mse(n->gr, y, lss_view(n->gr, t->u + lo * np, 4, sh4));
    l = lss_op_scale(n->gr, l, (float)(hi - lo) / (float)t->b);
    if (!l) return lss_graph_status(n->gr) ? lss_graph_status(n->gr) : lss_seterr(LSS_ERR_STATE, "lss_mm_net_train: loss graph failed");
    if ((s = lss_backward(n->gr, l)) != LSS_OK) return s;
    *loss = l->data[0];
    return isfinite(*loss) ? LSS_OK : LSS_ERR_NUMERIC;
}

/* lss_train step: one optimizer step on training batch `step`. A non-finite loss skips the step. */
static int lss__mm_train_step(void *user, int64_t step, double *loss) {
    lss__mm_tr *t = (lss__mm_tr *)user;
    lss_mm_net *n = t->n;
    int64_t sh4[4];
    lss_tensor *y, *l;
    int s;
    sh4[0] = t->b; sh4[1] = 1; sh4[2] = lss_grid_h(n->g); sh4[3] = lss_grid_w(n->g);
    if ((s = lss__mm_batch(t, LSS_SET_TRAIN, (uint64_t)step)) != LSS_OK) return s;
    if (t->dp) { /* data-parallel: the shards' gradients added in order (lss_dp_grad) */
        t->ran++;
        s = lss_dp_grad(t->dp, lss__mm_train_shard, t, &loss[0]);
        if (s == LSS_OK && (s = lss_optim_step(n->opt)) == LSS_OK && !t->d.no_spectral) lss__mm_spectral(n, t->v);
        if (s == LSS_ERR_NUMERIC) t->skipped++, loss[0] = NAN;
        else if (s == LSS_OK && step >= t->d.steps - t->nlast) t->lsum += loss[0], t->lcnt++;
        if (t->d.progress && (s == LSS_OK || s == LSS_ERR_NUMERIC)) t->d.progress(t->d.progress_user, (int)(step + 1), loss[0]);
        return s;
    }
    if ((s = lss__mm_net_forward(n, t->b, n->o.deepmass ? NULL : t->sig, NULL, 1, &y)) != LSS_OK) return s;
    if (!n->o.deepmass) {
        /* residual DSM (eq. 24): (u + sigma (r + s_G))^2 */
        s = lss__mm_dsm_rows(t, y, 0, t->b, 1.0, &l, &loss[0]);
        if (s != LSS_OK && s != LSS_ERR_NUMERIC) return s;
        if (s == LSS_ERR_NUMERIC) loss[0] = NAN;
    } else {
        l = lss_op_mse(n->gr, y, lss_view(n->gr, t->u, 4, sh4));
        if (!l) return lss_graph_status(n->gr) ? lss_graph_status(n->gr) : lss_seterr(LSS_ERR_STATE, "lss_mm_net_train: loss graph failed");
        loss[0] = l->data[0];
    }
    t->ran++;
    if (isfinite(loss[0])) {
        lss_store_zero_grad(n->st);
        if ((s = lss_backward(n->gr, l)) == LSS_OK && (s = lss_optim_step(n->opt)) == LSS_OK && !t->d.no_spectral)
            lss__mm_spectral(n, t->v);
    } else
        s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_net_train: the loss is not finite at step %lld", (long long)step);
    if (s == LSS_ERR_NUMERIC) t->skipped++;
    else if (s == LSS_OK && step >= t->d.steps - t->nlast) t->lsum += loss[0], t->lcnt++;
    if (t->d.progress && (s == LSS_OK || s == LSS_ERR_NUMERIC)) t->d.progress(t->d.progress_user, (int)(step + 1), loss[0]);
    return s;
}

/* Held-out loss on nbatch batches of LSS_SET_VALID; the evaluation graph changes nothing in the network. */
static int lss__mm_heldout_run(lss__mm_tr *t, int nbatch, double *loss_net, double *loss_base) {
    lss_mm_net *n = t->n;
    double ln = 0, lb = 0;
    int64_t i, np = t->np;
    int bt, j, s = LSS_OK;
    lss_tensor *y;
    for (bt = 0; bt < nbatch && s == LSS_OK; bt++) {
        if ((s = lss__mm_batch(t, LSS_SET_VALID, (uint64_t)bt)) != LSS_OK) break;
        if ((s = lss__mm_net_forward(n, t->b, n->o.deepmass ? NULL : t->sig, NULL, 0, &y)) != LSS_OK) break;
        if (!n->o.deepmass && (s = lss__mm_precond(n, t->b, t->sig, y->data, t->r)) != LSS_OK) break;
        for (j = 0; j < t->b; j++)
            for (i = 0; i < np; i++) {
                double u = t->u[j * np + i], r = n->o.deepmass ? y->data[j * np + i] : t->r[j * np + i], e0, e1;
                if (!n->o.deepmass) {
                    u = t->uw[j * np + i];
                    e0 = u + (double)t->sw[j] * t->sgs[j * np + i];
                    e1 = e0 + (double)t->sw[j] * r;
                } else {
                    e0 = u;
                    e1 = r - u;
                }
                lb += e0 * e0;
                ln += e1 * e1;
            }
    }
    if (s != LSS_OK) return s;
    *loss_net = ln / ((double)nbatch * t->b * np);
    *loss_base = lb / ((double)nbatch * t->b * np);
    return LSS_OK;
}

static int lss__mm_train_eval(void *user, double *loss) {
    lss__mm_tr *t = (lss__mm_tr *)user;
    int s = lss__mm_heldout_run(t, t->d.eval_batches, &t->valid, &t->base);
    if (s == LSS_OK) loss[0] = t->valid;
    return s;
}

LSSDEF int lss_mm_net_train(lss_mm_net *n, const lss_mm_train_opts *o, lss_mm_train_result *res) {
    lss__mm_tr t;
    lss_train_net tn;
    lss_train_opts lo;
    lss_train_result lr0, *lr = res ? &res->loop : &lr0;
    lss_optim_opts oo;
    lss_mm_train_opts d;
    int s;
    if (res) {
        memset(res, 0, sizeof *res);
        res->final_loss = res->valid_loss = res->valid_base = NAN;
        res->loop.best_step = -1;
    }
    if (!n || !o) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_train: NULL argument");
    d = *o;
    if (d.steps == 0) d.steps = 1000;
    if (d.lr == 0) d.lr = 1e-3;
    if (d.steps < 1 || !(d.lr > 0) || !isfinite(d.lr) || d.eval_every < 0 || d.ckpt_every < 0 || d.patience < 0)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_net_train: bad options (steps %d, lr %g, eval_every %d, ckpt_every %d, patience %d)",
                          d.steps, d.lr, d.eval_every, d.ckpt_every, d.patience);
    if (d.resume && !d.ckpt) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_train: resume needs a checkpoint path");
    if ((s = lss__mm_tr_open(&t, n, &d, "lss_mm_net_train")) != LSS_OK) return s;
    t.nlast = d.steps / 10 > 0 ? d.steps / 10 : 1;
    if (!n->opt) {
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM;
        oo.lr = d.lr;
        oo.sched = LSS_SCHED_STEP;
        oo.step_size = (int64_t)(0.4 * d.steps) > 0 ? (int64_t)(0.4 * d.steps) : 1;
        oo.gamma = 0.1;
        if ((s = lss_optim_create(n->st, &oo, &n->opt)) != LSS_OK) {
            lss__mm_tr_close(&t);
            return s;
        }
    }
    if (n->o.deepmass) {
        /* scales: inputs by the typical KS noise, output by the prior pixel std */
        double mv = 0, cnt = 0, pv = 0;
        int64_t i;
        for (i = 0; i < t.np; i++)
            if (d.nvar[i] < 0.5 * LSS_MM_EMPTY_VAR) mv += d.nvar[i], cnt++;
        for (i = 0; i < t.np; i++) pv += n->pkf[i];
        n->scale->data[0] = (float)(cnt > 0 ? 1.0 / sqrt(mv / cnt) : 1.0);
        n->scale->data[1] = (float)sqrt(pv / (double)t.np);
    }
    memset(&tn, 0, sizeof tn);
    tn.store = n->st;
    tn.optim = n->opt;
    tn.ckpt_path = d.ckpt;
    memset(&lo, 0, sizeof lo);
    lo.steps = d.steps;
    lo.eval_every = d.eval_every;
    lo.ckpt_every = d.ckpt_every > 0 ? d.ckpt_every : d.eval_every;
    lo.loss_csv = d.loss_csv;
    lo.resume = d.resume;
    lo.patience = d.patience;
    lo.step = lss__mm_train_step;
    lo.eval = lss__mm_train_eval;
    lo.user = &t;
    {
        int k = d.shards > 0 ? d.shards : lss_mpi_size();
        if (k > t.b) k = t.b;
        if (k > 1 && (s = lss_dp_create(n->st, k, &t.dp)) != LSS_OK) {
            lss__mm_tr_close(&t);
            return s;
        }
    }
    s = lss_train(&tn, 1, &lo, lr);
    lss_dp_free(t.dp);
    t.dp = NULL;
    if (s == LSS_OK && t.ran > 0 && t.skipped == t.ran)
        s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_net_train: the loss was not finite at any of the %lld steps run", (long long)t.ran);
    if (res) {
        res->final_loss = t.lcnt > 0 ? t.lsum / (double)t.lcnt : NAN;
        res->valid_loss = t.valid;
        res->valid_base = t.base;
    }
    lss__mm_tr_close(&t);
    return s;
}

/* ---- held-out loss and checkpoints */
LSSDEF int lss_mm_net_heldout(lss_mm_net *n, const lss_mm_train_opts *o, int nbatch, double *loss_net,
                              double *loss_base) {
    lss__mm_tr t;
    int s;
    if (!n || !o || !loss_net || !loss_base || nbatch < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_heldout: bad argument");
    if ((s = lss__mm_tr_open(&t, n, o, "lss_mm_net_heldout")) != LSS_OK) return s;
    s = lss__mm_heldout_run(&t, nbatch, loss_net, loss_base);
    lss__mm_tr_close(&t);
    return s;
}

LSSDEF int lss_mm_sigma_grid(double sigma_min, double sigma_max, int nsig, double *out) {
    int k;
    if (!out || nsig < 2 || !(sigma_min > 0) || !(sigma_max > sigma_min) || !isfinite(sigma_max))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_sigma_grid: need 0 < sigma_min %g < sigma_max %g and at least 2 levels (%d)",
                          sigma_min, sigma_max, nsig);
    for (k = 0; k < nsig; k++) out[k] = sigma_min * exp(log(sigma_max / sigma_min) * k / (nsig - 1));
    out[nsig - 1] = sigma_max;
    return LSS_OK;
}

LSSDEF int lss_mm_net_heldout_sigma(lss_mm_net *n, const lss_mm_train_opts *o, int nbatch, int nsig,
                                    const double *sigmas, double *loss_gauss, double *loss_net, double *se_diff) {
    lss__mm_tr t;
    int s = LSS_OK, k, bt, j;
    int64_t i, np;
    double *d = NULL;
    if (!n || !o || !sigmas || !loss_gauss || !loss_net || nbatch < 1 || nsig < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_net_heldout_sigma: bad argument");
    if (n->o.deepmass) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_heldout_sigma: a score network is needed, not DeepMass");
    for (k = 0; k < nsig; k++)
        if (!(sigmas[k] > 0) || !isfinite(sigmas[k]))
            return lss_seterr(LSS_ERR_RANGE, "lss_mm_net_heldout_sigma: noise level %d is %g (must be > 0 and finite)", k, sigmas[k]);
    if ((s = lss__mm_tr_open(&t, n, o, "lss_mm_net_heldout_sigma")) != LSS_OK) return s;
    np = t.np;
    if (!(d = (double *)LSS_MALLOC(sizeof(double) * (size_t)nsig * (size_t)nbatch * (size_t)t.b))) {
        lss__mm_tr_close(&t);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_net_heldout_sigma: out of memory");
    }
    {   /* batches outer, levels inner: each batch's maps drawn once (halo-model maps are slow to draw) */
        int64_t m = (int64_t)nbatch * t.b, q;
        for (k = 0; k < nsig; k++) loss_gauss[k] = loss_net[k] = 0;
        for (bt = 0; bt < nbatch && s == LSS_OK; bt++)
            for (k = 0; k < nsig && s == LSS_OK; k++) {
                lss_tensor *y;
                t.fixed_sigma = sigmas[k];
                t.keep_truth = k > 0;
                if ((s = lss__mm_batch(&t, LSS_SET_VALID, (uint64_t)bt)) != LSS_OK) break;
                if ((s = lss__mm_net_forward(n, t.b, t.sig, NULL, 0, &y)) != LSS_OK) break;
                if ((s = lss__mm_precond(n, t.b, t.sig, y->data, t.r)) != LSS_OK) break;
                for (j = 0; j < t.b; j++) {
                    double a = 0, b = 0, sg = t.sig[j];
                    for (i = 0; i < np; i++) {
                        double e0 = t.u[j * np + i] + sg * t.sgs[j * np + i], e1 = e0 + sg * t.r[j * np + i];
                        a += e0 * e0;
                        b += e1 * e1;
                    }
                    loss_gauss[k] += a / (double)np / (double)m;
                    loss_net[k] += b / (double)np / (double)m;
                    d[(int64_t)k * m + (int64_t)bt * t.b + j] = (b - a) / (double)np;
                }
            }
        for (k = 0; k < nsig && s == LSS_OK; k++) {
            double md = 0, vd = 0;
            for (q = 0; q < m; q++) md += d[(int64_t)k * m + q];
            md /= (double)m;
            for (q = 0; q < m; q++) vd += (d[(int64_t)k * m + q] - md) * (d[(int64_t)k * m + q] - md);
            if (se_diff) se_diff[k] = m > 1 ? sqrt(vd / (double)(m - 1) / (double)m) : NAN;
        }
    }
    LSS_FREE(d);
    lss__mm_tr_close(&t);
    return s;
}

LSSDEF int lss_mm_net_open(const char *path, const lss_grid *g, const double *pk, int want_deepmass,
                           lss_mm_net **out) {
    int c0, dm, h, w, s;
    lss_mm_net_opts no;
    lss_mm_net *net;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_open: out is NULL");
    *out = NULL;
    if (!path || !g || !pk) return lss_seterr(LSS_ERR_ARG, "lss_mm_net_open: NULL argument");
    if ((s = lss_mm_net_probe(path, &c0, &dm, &h, &w)) != LSS_OK) return s;
    if ((dm != 0) != (want_deepmass != 0))
        return lss_seterr(LSS_ERR_FORMAT, "%s: is a %s network, a %s network is needed", path, dm ? "DeepMass" : "score", want_deepmass ? "DeepMass" : "score");
    if (h != lss_grid_h(g) || w != lss_grid_w(g))
        return lss_seterr(LSS_ERR_SHAPE, "%s: trained on %d x %d maps, the data are %d x %d", path, h, w, lss_grid_h(g), lss_grid_w(g));
    memset(&no, 0, sizeof no);
    no.c0 = c0;
    no.deepmass = dm;
    if ((s = lss_mm_net_create(g, pk, &no, &net)) != LSS_OK) return s;
    if ((s = lss_mm_net_load(net, path)) != LSS_OK) {
        lss_mm_net_free(net);
        return s;
    }
    *out = net;
    return LSS_OK;
}

/* ---- diffusion generator */
#define LSS__MM_DIFF_META 30   /* tag, h, w, c0, ncond, sigma_min, sigma_max, mean, std, cond_lo[8], cond_hi[8], periodic,
                                  transform, shift, embed, gauss (version 3; a model with neither keeps the 28 values
                                  of version 2) */
#define LSS__MM_DIFF_CHUNK 32  /* maps per network evaluation and per sampler batch */
struct lss_mm_diff {
    lss_mm_diff_opts o;   /* resolved, float-rounded */
    int64_t np;
    int cin;
    lss_store *st;
    lss_unet u;
    lss_graph *gr;
    lss_optim *opt;
    lss_tensor *meta, *gpk;          /* gpk: P of the Gaussian skip [h, w] (gauss; else NULL; gauss 3: eigenvalues) */
    lss_tensor *gu;                   /* gauss 3: eigenvectors of S as rows [np, np] */
    float *gt;                        /* gauss 3: scratch of the batched filter [2 gtn] */
    int64_t gtn;
    lss_grid *gg;                     /* its FFT (gauss) */
    lss_cdouble *gbuf;                /* [np] (gauss 1), [4 np] (gauss 2), unused (gauss 3) */
    float *in, *sig, *nz, *y, *cnd;  /* [cap cin np], [cap], [cap np], [cap np], [cap ncond] */
    int cap;
    lss_mm_diff_score_fn fn;
    void *fn_user;
    double rtol, atol;
};

LSSDEF void lss_mm_diff_free(lss_mm_diff *d) {
    if (!d) return;
    lss_optim_free(d->opt);
    lss_graph_free(d->gr);
    lss_store_free(d->st);
    lss_grid_free(d->gg);
    LSS_FREE(d->gbuf);
    LSS_FREE(d->gt);
    LSS_FREE(d->in); LSS_FREE(d->sig); LSS_FREE(d->nz); LSS_FREE(d->y); LSS_FREE(d->cnd);
    LSS_FREE(d);
}

static int lss__mm_diff_reserve(lss_mm_diff *d, int b) {
    size_t m;
    if (b <= d->cap) return LSS_OK;
    m = sizeof(float) * (size_t)b * (size_t)d->np;
    LSS_FREE(d->in); LSS_FREE(d->sig); LSS_FREE(d->nz); LSS_FREE(d->y); LSS_FREE(d->cnd);
    d->in = (float *)LSS_MALLOC(m * (size_t)d->cin);
    d->sig = (float *)LSS_MALLOC(sizeof(float) * (size_t)b);
    d->nz = (float *)LSS_MALLOC(m);
    d->y = (float *)LSS_MALLOC(m);
    d->cnd = (float *)LSS_MALLOC(sizeof(float) * (size_t)b * (size_t)(d->o.ncond > 0 ? d->o.ncond : 1));
    d->cap = 0;
    if (!d->in || !d->sig || !d->nz || !d->y || !d->cnd)
        return lss_seterr(LSS_ERR_NOMEM, "diffusion model: out of memory for a batch of %d maps", b);
    d->cap = b;
    return LSS_OK;
}

/* x rounded to float32 (through memory, so that no optimisation keeps the double) */
static double lss__mm_f32(double x) {
    volatile float f = (float)x;
    return f;
}

/* Options with defaults, checked and float-rounded (what the checkpoint stores). */
static int lss__mm_diff_resolve(const lss_mm_diff_opts *in, lss_mm_diff_opts *o, const char *fn) {
    int k;
    *o = *in;
    if (o->c0 == 0) o->c0 = 32;
    if (o->sigma_min == 0) o->sigma_min = LSS_MM_DIFF_SIGMA_MIN;
    if (o->sigma_max == 0) o->sigma_max = LSS_MM_DIFF_SIGMA_MAX;
    if (o->std == 0) o->std = 1;
    if (o->h < 4 || o->w < 4 || o->h > 4096 || o->w > 4096 || o->h % 4 || o->w % 4)
        return lss_seterr(LSS_ERR_SHAPE, "%s: map %d x %d must have sides that are multiples of 4 in [4, 4096]", fn, o->h, o->w);
    if (o->c0 < 1 || o->c0 > 512) return lss_seterr(LSS_ERR_RANGE, "%s: width c0 %d outside [1, 512]", fn, o->c0);
    if (o->ncond < 0 || o->ncond > LSS_MM_DIFF_NCOND_MAX)
        return lss_seterr(LSS_ERR_RANGE, "%s: ncond %d outside [0, %d]", fn, o->ncond, LSS_MM_DIFF_NCOND_MAX);
    if (o->periodic != 0 && o->periodic != 1) return lss_seterr(LSS_ERR_RANGE, "%s: periodic %d must be 0 or 1", fn, o->periodic);
    if (o->embed < 0 || o->embed > 32) return lss_seterr(LSS_ERR_RANGE, "%s: embed %d outside [0, 32] (0: none)", fn, o->embed);
    if (o->gauss < 0 || o->gauss > 3)
        return lss_seterr(LSS_ERR_RANGE, "%s: gauss %d must be 0 (none), 1 (DFT modes), 2 (DCT modes) or 3 (a covariance)", fn, o->gauss);
    if (o->gauss == 3 && (int64_t)o->h * o->w > 4096)
        return lss_seterr(LSS_ERR_RANGE, "%s: gauss 3 (a full covariance) needs h w <= 4096, not %d x %d (use 1 or 2)", fn, o->h, o->w);
    if (o->transform != LSS_MM_DIFF_AFFINE && o->transform != LSS_MM_DIFF_LOG)
        return lss_seterr(LSS_ERR_RANGE, "%s: transform %d is not LSS_MM_DIFF_AFFINE or LSS_MM_DIFF_LOG", fn, o->transform);
    if (o->transform == LSS_MM_DIFF_AFFINE) o->shift = 0;
    o->shift = lss__mm_f32(o->shift);
    if (o->transform == LSS_MM_DIFF_LOG && (!(o->shift > 0) || !isfinite(o->shift)))
        return lss_seterr(LSS_ERR_RANGE, "%s: the log transform needs a positive finite shift (got %g)", fn, in->shift);
    o->sigma_min = lss__mm_f32(o->sigma_min);
    o->sigma_max = lss__mm_f32(o->sigma_max);
    o->mean = lss__mm_f32(o->mean);
    o->std = lss__mm_f32(o->std);
    if (!(o->sigma_min > 0) || !isfinite(o->sigma_max) || !(o->sigma_max > o->sigma_min))
        return lss_seterr(LSS_ERR_RANGE, "%s: noise range sigma_min %g, sigma_max %g (0 < sigma_min < sigma_max, finite, needed)",
                          fn, in->sigma_min, in->sigma_max);
    if (!isfinite(o->mean) || !(o->std > 0) || !isfinite(o->std))
        return lss_seterr(LSS_ERR_RANGE, "%s: standardisation mean %g, std %g (finite, std > 0, needed)", fn, in->mean, in->std);
    for (k = 0; k < LSS_MM_DIFF_NCOND_MAX; k++) {
        if (k >= o->ncond) {
            o->cond_lo[k] = o->cond_hi[k] = 0;
            continue;
        }
        o->cond_lo[k] = lss__mm_f32(o->cond_lo[k]);
        o->cond_hi[k] = lss__mm_f32(o->cond_hi[k]);
        if (!isfinite(o->cond_lo[k]) || !isfinite(o->cond_hi[k]) || !(o->cond_hi[k] > o->cond_lo[k]))
            return lss_seterr(LSS_ERR_RANGE, "%s: condition %d range [%g, %g] (finite, lo < hi, needed)", fn, k, in->cond_lo[k], in->cond_hi[k]);
    }
    return LSS_OK;
}

LSSDEF int lss_mm_diff_create(const lss_mm_diff_opts *o, lss_mm_diff **out) {
    lss_mm_diff *d;
    lss_unet_opts uo;
    int s, k;
    int64_t nm[1] = {LSS__MM_DIFF_META};
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_create: out is NULL");
    *out = NULL;
    if (!o) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_create: NULL options");
    d = (lss_mm_diff *)LSS_MALLOC(sizeof *d);
    if (!d) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_create: out of memory");
    memset(d, 0, sizeof *d);
    if ((s = lss__mm_diff_resolve(o, &d->o, "lss_mm_diff_create")) != LSS_OK) {
        LSS_FREE(d);
        return s;
    }
    d->np = (int64_t)d->o.h * d->o.w;
    d->cin = 1 + d->o.ncond;
    if ((s = lss_store_create(d->o.seed, &d->st)) != LSS_OK || (s = lss_graph_create(&d->gr)) != LSS_OK) {
        lss_mm_diff_free(d);
        return s;
    }
    memset(&uo, 0, sizeof uo);
    uo.in_ch = d->cin;
    uo.out_ch = 1;
    uo.c0 = d->o.c0;
    uo.sigma_cond = 1;
    uo.sigma_eps = 1e-30f;  /* the U-net's output is F / sigma (F of the preconditioning below) */
    uo.no_batchnorm = 1;
    uo.sigma_log = 1;
    uo.periodic = d->o.periodic;
    uo.sigma_embed = d->o.embed > 0 ? d->o.embed : 0;
    if ((s = lss_unet_init(&d->u, d->st, "unet", &uo)) != LSS_OK) {
        lss_mm_diff_free(d);
        return s;
    }
    if (d->o.embed == 0 && !d->o.gauss) nm[0] = 28; /* neither: the version-2 description */
    d->meta = lss_store_buffer(d->st, "massmap.diff.meta", 1, nm, LSS_INIT_ZERO, 0.0f);
    if (d->o.gauss) {
        int64_t sg[2];
        int64_t i;
        sg[0] = d->o.h; sg[1] = d->o.w;
        d->gpk = lss_store_buffer(d->st, "massmap.diff.gauss", 2, sg, LSS_INIT_ZERO, 0.0f);
        if (d->gpk)
            for (i = 0; i < d->np; i++) d->gpk->data[i] = 1.0f;
        /* the DCT modes through the DFT of the map mirrored to 2h x 2w; gauss 3: S = I until set */
        int ge = d->o.gauss == 2 ? 2 : 1;
        if (d->o.gauss == 3) {
            int64_t su[2];
            su[0] = su[1] = d->np;
            if ((d->gu = lss_store_buffer(d->st, "massmap.diff.gauss_u", 2, su, LSS_INIT_ZERO, 0.0f)))
                for (i = 0; i < d->np; i++) d->gu->data[i * d->np + i] = 1.0f;
        } else if ((s = lss_grid_create(ge * d->o.h, ge * d->o.w, 1.0, &d->gg)) != LSS_OK) {
            lss_mm_diff_free(d);
            return s;
        }
        if (d->o.gauss != 3 && !(d->gbuf = (lss_cdouble *)LSS_MALLOC(sizeof(lss_cdouble) * (size_t)(ge * ge) * (size_t)d->np))) {
            lss_mm_diff_free(d);
            return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_create: out of memory");
        }
    }
    if ((s = lss_store_status(d->st)) != LSS_OK) {
        lss_mm_diff_free(d);
        return s;
    }
    {
        float *m = d->meta->data;
        m[0] = d->o.embed == 0 && !d->o.gauss ? 2 : 3;
        m[1] = (float)d->o.h;
        m[2] = (float)d->o.w;
        m[3] = (float)d->o.c0;
        m[4] = (float)d->o.ncond;
        m[5] = (float)d->o.sigma_min;
        m[6] = (float)d->o.sigma_max;
        m[7] = (float)d->o.mean;
        m[8] = (float)d->o.std;
        for (k = 0; k < LSS_MM_DIFF_NCOND_MAX; k++) {
            m[9 + k] = (float)d->o.cond_lo[k];
            m[17 + k] = (float)d->o.cond_hi[k];
        }
        m[25] = (float)d->o.periodic;
        m[26] = (float)d->o.transform;
        m[27] = (float)d->o.shift;
        if (m[0] == 3) m[28] = (float)d->o.embed, m[29] = (float)d->o.gauss;
    }
    d->rtol = d->atol = 1e-4;
    *out = d;
    return LSS_OK;
}

LSSDEF int64_t lss_mm_diff_nparams(const lss_mm_diff *d) { return d ? lss_store_nparams(d->st) : 0; }

LSSDEF int lss_mm_diff_options(const lss_mm_diff *d, lss_mm_diff_opts *o) {
    if (!d || !o) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_options: NULL argument");
    *o = d->o;
    return LSS_OK;
}

LSSDEF int lss_mm_diff_save(const lss_mm_diff *d, const char *path) {
    if (!d || !path) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_save: NULL argument");
    return lss_ckpt_save(path, d->st, NULL);
}

LSSDEF int lss_mm_diff_open(const char *path, lss_mm_diff **out) {
    float m[LSS__MM_DIFF_META];
    lss_mm_diff_opts o;
    lss_mm_diff *d;
    int s, found, k;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_open: out is NULL");
    *out = NULL;
    if (!path) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_open: NULL path");
    memset(m, 0, sizeof m);
    if ((s = lss__mm_ckpt_find(path, "massmap.diff.meta", LSS__MM_DIFF_META, m, &found)) != LSS_OK) return s;
    if (!found && (s = lss__mm_ckpt_find(path, "massmap.diff.meta", 28, m, &found)) != LSS_OK) return s;  /* version 2 */
    if (!found && (s = lss__mm_ckpt_find(path, "massmap.diff.meta", 25, m, &found)) != LSS_OK) return s;  /* version 1 */
    if (!found) return lss_seterr(LSS_ERR_FORMAT, "%s: no diffusion-model description in the checkpoint", path);
    for (k = 0; k < 5; k++)
        if (!isfinite(m[k]) || m[k] != floorf(m[k]) || m[k] < 0 || m[k] > 65536)
            return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta value %d is %g (an integer is needed)", path, k, (double)m[k]);
    if (m[0] == 1)
        return lss_seterr(LSS_ERR_FORMAT, "%s: a diffusion model of the first parameterisation (noise prediction, no skip "
                          "connection); its weights mean something else now: train it again", path);
    if (m[0] != 2 && m[0] != 3) return lss_seterr(LSS_ERR_FORMAT, "%s: diffusion-model description version %g (2 or 3 expected)", path, (double)m[0]);
    memset(&o, 0, sizeof o);
    o.h = (int)m[1];
    o.w = (int)m[2];
    o.c0 = (int)m[3];
    o.ncond = (int)m[4];
    o.sigma_min = m[5];
    o.sigma_max = m[6];
    o.mean = m[7];
    o.std = m[8];
    for (k = 0; k < LSS_MM_DIFF_NCOND_MAX; k++) {
        o.cond_lo[k] = m[9 + k];
        o.cond_hi[k] = m[17 + k];
    }
    if (m[25] != 0 && m[25] != 1)
        return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta periodic flag is %g (0 or 1 expected)", path, (double)m[25]);
    o.periodic = (int)m[25];
    if (m[26] != LSS_MM_DIFF_AFFINE && m[26] != LSS_MM_DIFF_LOG)
        return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta transform is %g (0 or 1 expected)", path, (double)m[26]);
    o.transform = (int)m[26];
    o.shift = m[27];
    if (m[0] == 2) o.embed = 0, o.gauss = 0; /* version 2: neither the embedding nor the Gaussian skip */
    else if (!(m[28] >= 0 && m[28] <= 32 && m[28] == floorf(m[28])))
        return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta embedding frequencies %g (0..32 expected)", path, (double)m[28]);
    else if (m[29] != 0 && m[29] != 1 && m[29] != 2 && m[29] != 3)
        return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta Gaussian-skip flag %g (0..3 expected)", path, (double)m[29]);
    else o.embed = (int)m[28], o.gauss = (int)m[29];
    if (o.c0 == 0 || o.std == 0 || o.sigma_min == 0 || o.sigma_max == 0)
        return lss_seterr(LSS_ERR_FORMAT, "%s: massmap.diff.meta holds zero width, std or noise level", path);
    if ((s = lss_mm_diff_create(&o, &d)) != LSS_OK) {
        lss_seterr(s, "%s: bad diffusion-model description: %s", path, lss_last_error());
        return s;
    }
    if ((s = lss_ckpt_load(path, d->st, NULL)) != LSS_OK) {
        lss_mm_diff_free(d);
        return s;
    }
    *out = d;
    return LSS_OK;
}

LSSDEF void lss_mm_diff_set_score(lss_mm_diff *d, lss_mm_diff_score_fn fn, void *user) {
    if (!d) return;
    d->fn = fn;
    d->fn_user = fn ? user : NULL;
}

LSSDEF int lss_mm_diff_set_ode(lss_mm_diff *d, double rtol, double atol) {
    if (!d) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_set_ode: NULL model");
    if (rtol == 0) rtol = 1e-4;
    if (atol == 0) atol = 1e-4;
    if (!(rtol > 0) || !(atol > 0) || !isfinite(rtol) || !isfinite(atol))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_set_ode: tolerances rtol %g, atol %g must be positive", rtol, atol);
    d->rtol = rtol;
    d->atol = atol;
    return LSS_OK;
}

LSSDEF int lss_mm_diff_set_gauss(lss_mm_diff *d, const double *pk) {
    int64_t i;
    if (!d || !pk) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_set_gauss: NULL argument");
    if (!d->o.gauss) return lss_seterr(LSS_ERR_STATE, "lss_mm_diff_set_gauss: the model was created without gauss = 1 or 2");
    if (d->o.gauss == 3) return lss_seterr(LSS_ERR_STATE, "lss_mm_diff_set_gauss: gauss = 3 takes a covariance (lss_mm_diff_set_gauss_cov)");
    for (i = 0; i < d->np; i++)
        if (!(pk[i] > 0) || !isfinite(pk[i]) || !((float)pk[i] > 0))
            return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_set_gauss: P[%lld] = %g is not finite and positive", (long long)i, pk[i]);
    for (i = 0; i < d->np; i++) d->gpk->data[i] = (float)pk[i];
    return LSS_OK;
}

/* Map j of maps [n, h, w] in kappa units, transformed and standardised as the model's data, into y [np] (double);
 * LSS_ERR_RANGE below -shift (log transform), LSS_ERR_NUMERIC for a value that is not finite, naming fn. */
static int lss__mm_diff_std_map(const lss_mm_diff *d, const float *maps, int j, const char *fn, double *y) {
    int64_t i, np = d->np;
    for (i = 0; i < np; i++) {
        double k = maps[(int64_t)j * np + i], v;
        if (d->o.transform == LSS_MM_DIFF_LOG && !(k + d->o.shift > 0))
            return lss_seterr(LSS_ERR_RANGE, "%s: map %d pixel %lld: kappa %g <= -shift", fn, j, (long long)i, k);
        v = ((d->o.transform == LSS_MM_DIFF_LOG ? log(k + d->o.shift) : k) - d->o.mean) / d->o.std;
        if (!isfinite(v)) return lss_seterr(LSS_ERR_NUMERIC, "%s: map %d pixel %lld is not finite", fn, j, (long long)i);
        y[i] = v;
    }
    return LSS_OK;
}

LSSDEF int lss_mm_diff_gauss_estimate(const lss_mm_diff *d, int n, const float *maps, double *pk) {
    lss_grid *g = NULL;
    lss_cdouble *c;
    int64_t i, np;
    int j, s, ge;
    if (!d || !maps || !pk || n < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_gauss_estimate: bad argument (n %d)", n);
    np = d->np;
    ge = d->o.gauss == 2 ? 2 : 1; /* gauss = 2: the DCT-II through the mirrored map (lss__mm_diff_mirror) */
    if ((s = lss_grid_create(ge * d->o.h, ge * d->o.w, 1.0, &g)) != LSS_OK) return s;
    /* c [ge^2 np] and, beyond it, the standardised map in double [np] */
    if (!(c = (lss_cdouble *)LSS_MALLOC(sizeof(lss_cdouble) * (size_t)(ge * ge) * (size_t)np + sizeof(double) * (size_t)np))) {
        lss_grid_free(g);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_gauss_estimate: out of memory");
    }
    double *y = (double *)(void *)(c + (int64_t)ge * ge * np);
    for (i = 0; i < np; i++) pk[i] = 0;
    for (j = 0; j < n && s == LSS_OK; j++) {
        if ((s = lss__mm_diff_std_map(d, maps, j, "lss_mm_diff_gauss_estimate", y)) != LSS_OK) break;
        if (ge == 2) {
            int h = d->o.h, w = d->o.w, k1, k2;
            for (k1 = 0; k1 < 2 * h; k1++)
                for (k2 = 0; k2 < 2 * w; k2++) {
                    int64_t e = (int64_t)k1 * 2 * w + k2;
                    c[e][0] = y[(int64_t)(k1 < h ? k1 : 2 * h - 1 - k1) * w + (k2 < w ? k2 : 2 * w - 1 - k2)], c[e][1] = 0;
                }
            lss_grid_fft_d(g, c, -1);
            for (k1 = 0; k1 < h; k1++)
                for (k2 = 0; k2 < w; k2++) {
                    int64_t e = (int64_t)k1 * 2 * w + k2;
                    double a2 = (k1 ? 2.0 : 1.0) / h * (k2 ? 2.0 : 1.0) / w;
                    pk[(int64_t)k1 * w + k2] += (c[e][0] * c[e][0] + c[e][1] * c[e][1]) * a2 / (16.0 * n);
                }
        } else {
            for (i = 0; i < np; i++) c[i][0] = y[i], c[i][1] = 0;
            lss_grid_fft_d(g, c, -1);
            for (i = 0; i < np; i++) pk[i] += (c[i][0] * c[i][0] + c[i][1] * c[i][1]) / ((double)np * n);
        }
    }
    LSS_FREE(c);
    lss_grid_free(g);
    return s;
}

/* Eigen-decomposition of the symmetric a [n x n] (row-major, destroyed): eigenvalues ev [n] and the eigenvectors
 * as the rows of z [n x n]. Householder reduction to tridiagonal form (each reflector applied to both sides as
 * A - 2 v w^T - 2 w v^T, w = A v - (v^T A v) v, and accumulated into z), then the implicit QL iteration with
 * Wilkinson's shift on the tridiagonal (rotations applied to z's rows). LSS_ERR_NUMERIC if it does not converge. */
static int lss__mm_eigh(double *a, int n, double *ev, double *z) {
    double *e = (double *)LSS_MALLOC(sizeof(double) * (size_t)(3 * n + 1)), *v = e + n, *w = v + n;
    int i, j, k, l, it;
    if (!e) return lss_seterr(LSS_ERR_NOMEM, "eigen-decomposition: out of memory");
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) z[(int64_t)i * n + j] = i == j;
    for (k = 0; k + 2 < n; k++) {
        int m = n - k - 1; /* the trailing block k+1 .. n-1 */
        double nx = 0, alpha, nv = 0, vw = 0;
        for (i = 0; i < m; i++) v[i] = a[(int64_t)(k + 1 + i) * n + k], nx += v[i] * v[i];
        nx = sqrt(nx);
        if (nx == 0) continue;
        alpha = v[0] > 0 ? -nx : nx;
        v[0] -= alpha;
        for (i = 0; i < m; i++) nv += v[i] * v[i];
        nv = sqrt(nv);
        if (nv == 0) continue;
        for (i = 0; i < m; i++) v[i] /= nv;
        for (i = 0; i < m; i++) { /* w = A v on the block */
            const double *ai = a + (int64_t)(k + 1 + i) * n + k + 1;
            double t = 0;
            for (j = 0; j < m; j++) t += ai[j] * v[j];
            w[i] = t;
        }
        for (i = 0; i < m; i++) vw += v[i] * w[i];
        for (i = 0; i < m; i++) w[i] -= vw * v[i];
        for (i = 0; i < m; i++) {
            double *ai = a + (int64_t)(k + 1 + i) * n + k + 1;
            for (j = 0; j < m; j++) ai[j] -= 2 * (v[i] * w[j] + w[i] * v[j]);
        }
        a[(int64_t)(k + 1) * n + k] = a[(int64_t)k * n + k + 1] = alpha;
        for (i = 1; i < m; i++) a[(int64_t)(k + 1 + i) * n + k] = a[(int64_t)k * n + k + 1 + i] = 0;
        /* z <- H z (z's rows are Q^T's rows: Q = H_0 H_1 ..., Q^T = ... H_1 H_0): rows k+1.. of z */
        for (j = 0; j < n; j++) w[j] = 0;
        for (i = 0; i < m; i++) {
            const double *zi = z + (int64_t)(k + 1 + i) * n;
            for (j = 0; j < n; j++) w[j] += v[i] * zi[j];
        }
        for (i = 0; i < m; i++) {
            double *zi = z + (int64_t)(k + 1 + i) * n;
            for (j = 0; j < n; j++) zi[j] -= 2 * v[i] * w[j];
        }
    }
    for (i = 0; i < n; i++) ev[i] = a[(int64_t)i * n + i], e[i] = i + 1 < n ? a[(int64_t)i * n + i + 1] : 0;
    for (l = 0; l < n; l++) {
        for (it = 0;; it++) {
            int m;
            double g, r, sn, c, p, f, b;
            for (m = l; m + 1 < n; m++) {
                double dd = fabs(ev[m]) + fabs(ev[m + 1]);
                if (fabs(e[m]) <= 1e-15 * dd || e[m] == 0) break;
            }
            if (m == l) break;
            if (it == 60) {
                LSS_FREE(e);
                return lss_seterr(LSS_ERR_NUMERIC, "eigen-decomposition: no convergence");
            }
            g = (ev[l + 1] - ev[l]) / (2 * e[l]);
            r = hypot(g, 1.0);
            g = ev[m] - ev[l] + e[l] / (g + (g >= 0 ? r : -r));
            sn = c = 1, p = 0;
            for (i = m - 1; i >= l; i--) {
                f = sn * e[i], b = c * e[i];
                e[i + 1] = r = hypot(f, g);
                if (r == 0) {
                    ev[i + 1] -= p, e[m] = 0;
                    break;
                }
                sn = f / r, c = g / r;
                g = ev[i + 1] - p;
                r = (ev[i] - g) * sn + 2 * c * b;
                p = sn * r;
                ev[i + 1] = g + p;
                g = c * r - b;
                { /* the rotation on rows i, i+1 of z */
                    double *zi = z + (int64_t)i * n, *zj = zi + n;
                    for (j = 0; j < n; j++) {
                        double t = zj[j];
                        zj[j] = sn * zi[j] + c * t;
                        zi[j] = c * zi[j] - sn * t;
                    }
                }
            }
            if (r == 0 && i >= l) continue;
            ev[l] -= p, e[l] = g, e[m] = 0;
        }
    }
    LSS_FREE(e);
    return LSS_OK;
}

LSSDEF int lss_mm_diff_set_gauss_cov(lss_mm_diff *d, const double *cov) {
    int64_t i, j, np;
    double *a, *ev, *z, top = 0;
    int s;
    if (!d || !cov) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_set_gauss_cov: NULL argument");
    if (d->o.gauss != 3) return lss_seterr(LSS_ERR_STATE, "lss_mm_diff_set_gauss_cov: the model was created without gauss = 3");
    np = d->np;
    for (i = 0; i < np; i++)
        for (j = 0; j <= i; j++) {
            double x = cov[i * np + j], y = cov[j * np + i];
            if (!isfinite(x) || !isfinite(y) || fabs(x - y) > 1e-6 * (fabs(x) + fabs(y)))
                return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_set_gauss_cov: S[%lld, %lld] = %g, S[%lld, %lld] = %g: not finite and symmetric",
                                  (long long)i, (long long)j, x, (long long)j, (long long)i, y);
        }
    if (!(a = (double *)LSS_MALLOC(sizeof(double) * (size_t)(np * np * 2 + np))))
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_set_gauss_cov: out of memory");
    z = a + np * np, ev = z + np * np;
    for (i = 0; i < np; i++) /* symmetric to rounding: the mean of S and its transpose */
        for (j = 0; j < np; j++) a[i * np + j] = 0.5 * (cov[i * np + j] + cov[j * np + i]);
    if ((s = lss__mm_eigh(a, (int)np, ev, z)) != LSS_OK) {
        LSS_FREE(a);
        return s;
    }
    for (i = 0; i < np; i++) top = fmax(top, ev[i]);
    for (i = 0; i < np && s == LSS_OK; i++)
        if (!(top > 0) || ev[i] < -0.05 * top)
            s = lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_set_gauss_cov: eigenvalue %g against the largest %g: not a covariance", ev[i], top);
    if (s == LSS_OK) {
        for (i = 0; i < np; i++) d->gpk->data[i] = (float)fmax(ev[i], 1e-7 * top);
        for (i = 0; i < np * np; i++) d->gu->data[i] = (float)z[i];
    }
    LSS_FREE(a);
    return s;
}

LSSDEF int lss_mm_diff_gauss_cov_estimate(const lss_mm_diff *d, int n, const float *maps, double *cov) {
    lss_grid *g = NULL;
    lss_cdouble *c;
    double *acc, *y;
    int64_t i, np;
    int h, w, H, W, j, s;
    if (!d || !maps || !cov || n < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_gauss_cov_estimate: bad argument (n %d)", n);
    h = d->o.h, w = d->o.w, H = 2 * h, W = 2 * w, np = d->np;
    if ((s = lss_grid_create(H, W, 1.0, &g)) != LSS_OK) return s;
    if (!(c = (lss_cdouble *)LSS_MALLOC(sizeof(lss_cdouble) * (size_t)(H * W) + sizeof(double) * (size_t)(H * W + np)))) {
        lss_grid_free(g);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_gauss_cov_estimate: out of memory");
    }
    acc = (double *)(void *)(c + (int64_t)H * W), y = acc + (int64_t)H * W;
    for (i = 0; i < (int64_t)H * W; i++) acc[i] = 0;
    for (j = 0; j < n && s == LSS_OK; j++) {
        if ((s = lss__mm_diff_std_map(d, maps, j, "lss_mm_diff_gauss_cov_estimate", y)) != LSS_OK) break;
        for (i = 0; i < (int64_t)H * W; i++) c[i][0] = c[i][1] = 0;
        for (i = 0; i < np; i++) c[(i / w) * W + i % w][0] = y[i];
        /* the zero-padded map's |FFT|^2, transformed back: sum over pairs of y(p) y(p + d) at every displacement */
        lss_grid_fft_d(g, c, -1);
        for (i = 0; i < (int64_t)H * W; i++) c[i][0] = c[i][0] * c[i][0] + c[i][1] * c[i][1], c[i][1] = 0;
        lss_grid_fft_d(g, c, +1);
        for (i = 0; i < (int64_t)H * W; i++) acc[i] += c[i][0] / ((double)H * W);
    }
    if (s == LSS_OK)
        for (int64_t p = 0; p < np; p++)
            for (int64_t q = 0; q < np; q++) {
                int dy = (int)(q / w - p / w), dx = (int)(q % w - p % w);
                double pairs = (double)(h - abs(dy)) * (w - abs(dx));
                cov[p * np + q] = acc[(int64_t)((dy + H) % H) * W + (dx + W) % W] / (pairs * n);
            }
    LSS_FREE(c);
    lss_grid_free(g);
    return s;
}

/* The h x w map x mirrored to 2h x 2w (x[i][j] for i < h, j < w, reflected about the far edges) into c: its DFT
 * at (k1, k2), k < h and k < w, is 4 e^{i pi (k1/2h + k2/2w)} times the unnormalised DCT-II sum, so that the
 * orthonormal coefficient is c_k^2 = |X_k|^2 a_k1^2 a_k2^2 / 16, a_0^2 = 1/h, a_k^2 = 2/h (the same in w). */
static void lss__mm_diff_mirror(int h, int w, const float *x, lss_cdouble *c) {
    int i, j;
    for (i = 0; i < 2 * h; i++)
        for (j = 0; j < 2 * w; j++) {
            int64_t e = (int64_t)i * 2 * w + j;
            c[e][0] = x[(int64_t)(i < h ? i : 2 * h - 1 - i) * w + (j < w ? j : 2 * w - 1 - j)], c[e][1] = 0;
        }
}

/* out = F^-1 [m(P_k) F x] of one map, m = 1 / (P + sigma^2) (which 0) or sigma / (P + sigma^2) (which 1); with
 * gauss = 2 the same per DCT-II mode, through the mirrored map: DFT modes k and 2h - k carry DCT index k, the
 * modes k = h (zero for a mirrored map) are dropped, and the inverse DFT of the filtered modes is the mirrored
 * filtered map, of which the first h x w block is kept. gauss = 3 goes through lss__mm_diff_gfilter_n only. */
static void lss__mm_diff_gfilter(lss_mm_diff *d, const float *x, double sg, int which, float *out) {
    int64_t i, np = d->np;
    lss_cdouble *c = d->gbuf;
    if (d->o.gauss == 2) {
        int h = d->o.h, w = d->o.w, k1, k2;
        lss__mm_diff_mirror(h, w, x, c);
        lss_grid_fft_d(d->gg, c, -1);
        for (k1 = 0; k1 < 2 * h; k1++)
            for (k2 = 0; k2 < 2 * w; k2++) {
                int q1 = k1 <= h ? k1 : 2 * h - k1, q2 = k2 <= w ? k2 : 2 * w - k2;
                int64_t e = (int64_t)k1 * 2 * w + k2;
                double m = q1 == h || q2 == w ? 0.0
                         : (which ? sg : 1.0) / (((double)d->gpk->data[(int64_t)q1 * w + q2] + sg * sg) * (double)(4 * np));
                c[e][0] *= m, c[e][1] *= m;
            }
        lss_grid_fft_d(d->gg, c, +1);
        for (k1 = 0; k1 < h; k1++)
            for (k2 = 0; k2 < w; k2++) out[(int64_t)k1 * w + k2] = (float)c[(int64_t)k1 * 2 * w + k2][0];
        return;
    }
    for (i = 0; i < np; i++) c[i][0] = x[i], c[i][1] = 0;
    lss_grid_fft_d(d->gg, c, -1);
    for (i = 0; i < np; i++) {
        double m = (which ? sg : 1.0) / (((double)d->gpk->data[i] + sg * sg) * (double)np);
        c[i][0] *= m, c[i][1] *= m;
    }
    lss_grid_fft_d(d->gg, c, +1);
    for (i = 0; i < np; i++) out[i] = (float)c[i][0];
}

/* lss__mm_diff_gfilter of b maps x [b np] at noise levels sg [b] into out [b np]; with gauss = 3 as two SGEMMs
 * (coefficients T = X U^T, scaled per map and mode, then T U), else map by map. */
static int lss__mm_diff_gfilter_n(lss_mm_diff *d, int b, const float *x, const float *sg, int which, float *out) {
    int64_t np = d->np, i;
    int j;
    if (d->o.gauss != 3) {
        for (j = 0; j < b; j++) lss__mm_diff_gfilter(d, x + (int64_t)j * np, sg[j], which, out + (int64_t)j * np);
        return LSS_OK;
    }
    if (d->gtn < (int64_t)b * np) { /* T and the result (out may be x) */
        float *t = (float *)LSS_MALLOC(sizeof(float) * 2 * (size_t)b * (size_t)np);
        if (!t) return lss_seterr(LSS_ERR_NOMEM, "diffusion model: out of memory (Gaussian skip)");
        LSS_FREE(d->gt);
        d->gt = t, d->gtn = (int64_t)b * np;
    }
    if (lss_sgemm(0, 1, b, np, np, 1.0f, x, np, d->gu->data, np, 0.0f, d->gt, np) != LSS_OK) return lss_seterr(LSS_ERR_NOMEM, "diffusion model: SGEMM failed (Gaussian skip)");
    for (j = 0; j < b; j++) {
        double s2 = (double)sg[j] * sg[j], f = which ? sg[j] : 1.0;
        float *tj = d->gt + (int64_t)j * np;
        for (i = 0; i < np; i++) tj[i] = (float)(tj[i] * f / ((double)d->gpk->data[i] + s2));
    }
    if (lss_sgemm(0, 0, b, np, np, 1.0f, d->gt, np, d->gu->data, np, 0.0f, d->gt + (int64_t)b * np, np) != LSS_OK)
        return lss_seterr(LSS_ERR_NOMEM, "diffusion model: SGEMM failed (Gaussian skip)");
    memcpy(out, d->gt + (int64_t)b * np, sizeof(float) * (size_t)b * (size_t)np);
    return LSS_OK;
}

/* Network input of b maps into d->in: channel 0 = x / sqrt(1 + sigma^2) (unit variance for standardised data at
 * every noise level), then the mapped conditions as constant channels. */
static void lss__mm_diff_input(lss_mm_diff *d, int b, const float *x, const float *sigma, const float *cond) {
    int64_t np = d->np, i;
    int j, k;
    for (j = 0; j < b; j++) {
        float *dst = d->in + (int64_t)j * d->cin * np;
        float cin = (float)(1.0 / sqrt(1.0 + (double)sigma[j] * sigma[j]));
        for (i = 0; i < np; i++) dst[i] = cin * x[j * np + i];
        for (k = 0; k < d->o.ncond; k++) {
            float v = (float)(2.0 * ((double)cond[j * d->o.ncond + k] - d->o.cond_lo[k]) / (d->o.cond_hi[k] - d->o.cond_lo[k]) - 1.0);
            float *ck = dst + (int64_t)(1 + k) * np;
            for (i = 0; i < np; i++) ck[i] = v;
        }
    }
}

/* Network forward of the prepared input (b maps) at noise levels d->sig; the output tensor in *res. */
/* the U-net on input rows r0 .. r0 + b - 1 of d->in (noise levels d->sig[r0 ..]) */
static int lss__mm_diff_forward_rows(lss_mm_diff *d, int r0, int b, int training, lss_tensor **res) {
    int64_t sh[4], s1[1];
    lss_tensor *y;
    sh[0] = b; sh[1] = d->cin; sh[2] = d->o.h; sh[3] = d->o.w; s1[0] = b;
    lss_graph_reset(d->gr);
    lss_graph_set_training(d->gr, training);
    y = lss_unet_forward(d->gr, &d->u, lss_view(d->gr, d->in + (size_t)r0 * (size_t)d->cin * (size_t)d->np, 4, sh),
                         lss_view(d->gr, d->sig + r0, 1, s1));
    if (!y) return lss_graph_status(d->gr) ? lss_graph_status(d->gr) : lss_seterr(LSS_ERR_STATE, "diffusion model: forward failed");
    *res = y;
    return LSS_OK;
}
static int lss__mm_diff_forward(lss_mm_diff *d, int b, int training, lss_tensor **res) {
    return lss__mm_diff_forward_rows(d, 0, b, training, res);
}

LSSDEF int lss_mm_diff_score(lss_mm_diff *d, int n, const float *x, const float *sigma, const float *cond, float *out) {
    int j0, b, j, s;
    if (!d || !x || !sigma || !out || n < 1 || (d->o.ncond > 0 && !cond))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_score: bad argument (n %d; cond needed when ncond > 0)", n);
    for (j = 0; j < n; j++)
        if (!(sigma[j] > 0) || !isfinite(sigma[j])) return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_score: noise level %d is %g", j, (double)sigma[j]);
    if (d->fn) return d->fn(d->fn_user, n, x, sigma, d->o.ncond > 0 ? cond : NULL, out);
    for (j0 = 0; j0 < n; j0 += b) {
        lss_tensor *y;
        b = n - j0 < LSS__MM_DIFF_CHUNK ? n - j0 : LSS__MM_DIFF_CHUNK;
        if ((s = lss__mm_diff_reserve(d, b)) != LSS_OK) return s;
        lss__mm_diff_input(d, b, x + j0 * d->np, sigma + j0, d->o.ncond > 0 ? cond + j0 * d->o.ncond : NULL);
        memcpy(d->sig, sigma + j0, sizeof(float) * (size_t)b);
        if ((s = lss__mm_diff_forward(d, b, 0, &y)) != LSS_OK) return s;
        if (d->o.gauss && (s = lss__mm_diff_gfilter_n(d, b, x + j0 * d->np, sigma + j0, 0, out + j0 * d->np)) != LSS_OK) return s;
        for (j = 0; j < b; j++) {
            /* s = (D - x) / sigma^2, D = c_skip x + c_out F: -x / (1 + sigma^2) + (F / sigma) / sqrt(1 + sigma^2);
               with the Gaussian skip -F^-1[F x / (P + sigma^2)] in place of the first term */
            double sg = sigma[j0 + j], a = -1.0 / (1.0 + sg * sg), c = 1.0 / sqrt(1.0 + sg * sg);
            const float *xj = x + (int64_t)(j0 + j) * d->np, *uj = y->data + (int64_t)j * d->np;
            float *oj = out + (int64_t)(j0 + j) * d->np;
            int64_t i;
            if (d->o.gauss) { /* oj holds the filtered map */
                for (i = 0; i < d->np; i++) oj[i] = (float)(c * uj[i] - (double)oj[i]);
            } else
                for (i = 0; i < d->np; i++) oj[i] = (float)(a * xj[i] + c * uj[i]);
        }
    }
    return LSS_OK;
}

/* Maps and conditions of a call checked finite; standardised maps into y. */
static int lss__mm_diff_check(const lss_mm_diff *d, int n, const float *maps, const float *cond, float *y, const char *fn,
                              const char *what, int code) {
    int64_t i, np = d->np;
    int j, k;
    for (j = 0; j < n; j++) {
        for (i = 0; i < np; i++) {
            float v = maps[j * np + i];
            if (!isfinite(v)) return lss_seterr(code, "%s: %smap %d pixel %lld is %g", fn, what, j, (long long)i, (double)v);
            if (d->o.transform == LSS_MM_DIFF_LOG && !((double)v + d->o.shift > 0))
                return lss_seterr(code, "%s: %smap %d pixel %lld is %g, not above -shift = %g (the log transform)", fn, what, j,
                                  (long long)i, (double)v, -d->o.shift);
            if (y) y[j * np + i] = (float)(((d->o.transform == LSS_MM_DIFF_LOG ? log((double)v + d->o.shift) : (double)v) - d->o.mean) / d->o.std);
        }
        for (k = 0; k < d->o.ncond; k++)
            if (!isfinite(cond[j * d->o.ncond + k]))
                return lss_seterr(code, "%s: %scondition %d of map %d is %g", fn, what, k, j, (double)cond[j * d->o.ncond + k]);
    }
    return LSS_OK;
}

/* The noise of a batch of b standardised maps y from r: per map sigma_j = exp(U(ln sigma_min, ln sigma_max))
 * then its h w normals; sig [b], nz [b np], x = y + sigma n [b np]. */
static void lss__mm_diff_noise(const lss_mm_diff *d, lss_rng *r, int b, const float *y, float *sig, float *nz, float *x) {
    double lmin = log(d->o.sigma_min), lmax = log(d->o.sigma_max);
    int64_t np = d->np, i;
    int j;
    for (j = 0; j < b; j++) {
        float sj = (float)exp(lmin + (lmax - lmin) * lss_rng_uniform(r));
        sig[j] = sj;
        for (i = 0; i < np; i++) {
            nz[j * np + i] = (float)lss_rng_normal(r);
            x[j * np + i] = y[j * np + i] + sj * nz[j * np + i];
        }
    }
}

LSSDEF int lss_mm_diff_loss(lss_mm_diff *d, int n, const float *maps, const float *cond, uint64_t seed, uint64_t index,
                            double *loss) {
    float *buf;
    lss_rng r;
    int64_t np, i, M;
    int s, j;
    double acc = 0;
    if (!d || !maps || !loss || n < 1 || (d->o.ncond > 0 && !cond))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_loss: bad argument (n %d; cond needed when ncond > 0)", n);
    np = d->np;
    M = (int64_t)n * np;
    buf = (float *)LSS_MALLOC(sizeof(float) * (size_t)(4 * M + n));
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_loss: out of memory");
    if ((s = lss__mm_diff_check(d, n, maps, cond, buf, "lss_mm_diff_loss", "", LSS_ERR_NUMERIC)) == LSS_OK) {
        float *y = buf, *nz = buf + M, *x = buf + 2 * M, *sc = buf + 3 * M, *sig = buf + 4 * M;
        lss_rng_for(&r, seed, LSS_STREAM_MM_DSM, index, LSS_MM_SUB_DIFF);
        lss__mm_diff_noise(d, &r, n, y, sig, nz, x);
        if ((s = lss_mm_diff_score(d, n, x, sig, cond, sc)) == LSS_OK) {
            for (j = 0; j < n; j++)
                for (i = 0; i < np; i++) {
                    double e = (double)nz[j * np + i] + (double)sig[j] * sc[j * np + i];
                    acc += (1.0 + (double)sig[j] * sig[j]) * e * e;
                }
            *loss = acc / (double)M;
        }
    }
    LSS_FREE(buf);
    return s;
}

/* ---- training */
typedef struct {
    lss_mm_diff *d;
    lss_mm_diff_train_opts o;  /* defaults applied */
    float *maps, *cond, *x;
    double valid;
    lss_dp *dp;                /* data-parallel steps (o.shards > 1, or MPI); NULL: the whole batch at once */
} lss__mm_dtr;

/* Batch `index` of data set `set`: draw, check, standardise, noise; network input in d->in, the loss's target in d->nz. */
static int lss__mm_dtr_batch(lss__mm_dtr *t, int set, int64_t index) {
    lss_mm_diff *d = t->d;
    lss_rng r;
    int s, b = t->o.batch;
    char what[64];
    if ((s = t->o.draw(t->o.user, set, index, b, t->maps, d->o.ncond > 0 ? t->cond : NULL)) != LSS_OK) return s;
    snprintf(what, sizeof what, "%s batch %lld ", set == LSS_SET_VALID ? "held-out" : "training", (long long)index);
    if ((s = lss__mm_diff_check(d, b, t->maps, t->cond, d->y, "lss_mm_diff_train", what, LSS_ERR_ARG)) != LSS_OK) return s;
    lss_rng_for(&r, t->o.seed, LSS_STREAM_MM_DSM, lss_set_index((lss_set)set, (uint64_t)index), LSS_MM_SUB_DIFF);
    lss__mm_diff_noise(d, &r, b, d->y, d->sig, d->nz, t->x);
    lss__mm_diff_input(d, b, t->x, d->sig, t->cond);
    {
        /* the loss (1 + sigma^2)(n + sigma s)^2 = (u + sigma U)^2 for the U-net's output U = F / sigma and
           u = (n - sigma y) / sqrt(1 + sigma^2): lss_op_dsm_loss with u in place of the noise; with the Gaussian
           skip u = sqrt(1 + sigma^2) (n - F^-1[sigma F x / (P + sigma^2)]) (the same for P = 1) */
        int64_t i;
        int j;
        /* y is not needed further with the skip: it takes the filtered maps */
        if (d->o.gauss && (s = lss__mm_diff_gfilter_n(d, b, t->x, d->sig, 1, d->y)) != LSS_OK) return s;
        for (j = 0; j < b; j++) {
            double sg = d->sig[j], c = 1.0 / sqrt(1.0 + sg * sg);
            if (d->o.gauss) {
                float *fx = d->y + (int64_t)j * d->np;
                for (i = 0; i < d->np; i++) {
                    int64_t k = (int64_t)j * d->np + i;
                    d->nz[k] = (float)(((double)d->nz[k] - (double)fx[i]) / c);
                }
            } else
                for (i = 0; i < d->np; i++) {
                    int64_t k = (int64_t)j * d->np + i;
                    d->nz[k] = (float)(c * ((double)d->nz[k] - sg * (double)d->y[k]));
                }
        }
    }
    return LSS_OK;
}

/* lss_dp_fn: the loss of the rows of shard sh, weighted by their share of the batch, and its gradient */
static int lss__mm_dtr_shard(void *user, int sh, int nsh, double *loss) {
    lss__mm_dtr *t = (lss__mm_dtr *)user;
    lss_mm_diff *d = t->d;
    int64_t lo, hi, sh4[4], s1[1];
    lss_tensor *y, *l;
    int s;
    lss_dp_shard(t->o.batch, sh, nsh, &lo, &hi);
    *loss = 0;
    if (hi == lo) return LSS_OK; /* more shards than maps: this one adds nothing */
    sh4[0] = hi - lo; sh4[1] = 1; sh4[2] = d->o.h; sh4[3] = d->o.w; s1[0] = hi - lo;
    if ((s = lss__mm_diff_forward_rows(d, (int)lo, (int)(hi - lo), 1, &y)) != LSS_OK) return s;
    l = lss_op_dsm_loss(d->gr, y, lss_view(d->gr, d->nz + lo * d->np, 4, sh4), lss_view(d->gr, d->sig + lo, 1, s1));
    l = lss_op_scale(d->gr, l, (float)(hi - lo) / (float)t->o.batch);
    if (!l) return lss_graph_status(d->gr) ? lss_graph_status(d->gr) : lss_seterr(LSS_ERR_STATE, "lss_mm_diff_train: loss graph failed");
    if ((s = lss_backward(d->gr, l)) != LSS_OK) return s;
    *loss = l->data[0];
    return isfinite(*loss) ? LSS_OK : LSS_ERR_NUMERIC;
}

static int lss__mm_dtr_step(void *user, int64_t step, double *loss) {
    lss__mm_dtr *t = (lss__mm_dtr *)user;
    lss_mm_diff *d = t->d;
    int64_t sh[4], s1[1];
    lss_tensor *y, *l;
    int s;
    sh[0] = t->o.batch; sh[1] = 1; sh[2] = d->o.h; sh[3] = d->o.w; s1[0] = t->o.batch;
    if ((s = lss__mm_dtr_batch(t, LSS_SET_TRAIN, step)) != LSS_OK) return s;
    if (t->dp) { /* data-parallel: the shards' gradients added in order (lss_dp_grad) */
        s = lss_dp_grad(t->dp, lss__mm_dtr_shard, t, &loss[0]);
        if (s == LSS_OK) s = lss_optim_step(d->opt);
        if (s == LSS_ERR_NUMERIC) loss[0] = NAN;
        if (t->o.progress && (s == LSS_OK || s == LSS_ERR_NUMERIC)) t->o.progress(t->o.progress_user, (int)(step + 1), loss[0]);
        return s;
    }
    if ((s = lss__mm_diff_forward(d, t->o.batch, 1, &y)) != LSS_OK) return s;
    l = lss_op_dsm_loss(d->gr, y, lss_view(d->gr, d->nz, 4, sh), lss_view(d->gr, d->sig, 1, s1));
    if (!l) return lss_graph_status(d->gr) ? lss_graph_status(d->gr) : lss_seterr(LSS_ERR_STATE, "lss_mm_diff_train: loss graph failed");
    loss[0] = l->data[0];
    if (isfinite(loss[0])) {
        lss_store_zero_grad(d->st);
        if ((s = lss_backward(d->gr, l)) == LSS_OK) s = lss_optim_step(d->opt);
    } else
        s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_diff_train: the loss is not finite at step %lld", (long long)step);
    if (t->o.progress && (s == LSS_OK || s == LSS_ERR_NUMERIC)) t->o.progress(t->o.progress_user, (int)(step + 1), loss[0]);
    return s;
}

static int lss__mm_dtr_eval(void *user, double *loss) {
    lss__mm_dtr *t = (lss__mm_dtr *)user;
    lss_mm_diff *d = t->d;
    int64_t i, np = d->np;
    int k, j, s, b = t->o.batch;
    double acc = 0;
    for (k = 0; k < t->o.eval_batches; k++) {
        lss_tensor *y;
        if ((s = lss__mm_dtr_batch(t, LSS_SET_VALID, k)) != LSS_OK) return s;
        if ((s = lss__mm_diff_forward(d, b, 0, &y)) != LSS_OK) return s;
        for (j = 0; j < b; j++)
            for (i = 0; i < np; i++) {
                double e = (double)d->nz[j * np + i] + (double)d->sig[j] * y->data[j * np + i];
                acc += e * e;
            }
    }
    loss[0] = t->valid = acc / ((double)t->o.eval_batches * b * np);
    return LSS_OK;
}

LSSDEF int lss_mm_diff_train(lss_mm_diff *d, const lss_mm_diff_train_opts *o, lss_train_result *res) {
    lss__mm_dtr t;
    lss_train_net tn;
    lss_train_opts lo;
    lss_optim_opts oo;
    int s;
    if (res) {
        memset(res, 0, sizeof *res);
        res->best_step = -1;
    }
    if (!d || !o) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_train: NULL argument");
    if (d->fn) return lss_seterr(LSS_ERR_STATE, "lss_mm_diff_train: an external score is set (lss_mm_diff_set_score); restore the network first");
    memset(&t, 0, sizeof t);
    t.d = d;
    t.o = *o;
    if (t.o.steps == 0) t.o.steps = 1000;
    if (t.o.batch == 0) t.o.batch = 16;
    if (t.o.lr == 0) t.o.lr = 1e-3;
    if (t.o.eval_batches == 0) t.o.eval_batches = 4;
    if (!t.o.draw) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_train: a draw callback is required");
    if (t.o.steps < 1 || t.o.batch < 1 || t.o.batch > 4096 || !(t.o.lr > 0) || !isfinite(t.o.lr) || t.o.eval_every < 0 ||
        t.o.ckpt_every < 0 || t.o.patience < 0 || t.o.eval_batches < 1 || t.o.shards < 0 || t.o.shards > 4096)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_train: bad options (steps %d, batch %d, lr %g, eval_every %d, ckpt_every %d, patience %d, "
                          "eval_batches %d, shards %d)", t.o.steps, t.o.batch, t.o.lr, t.o.eval_every, t.o.ckpt_every, t.o.patience,
                          t.o.eval_batches, t.o.shards);
    if (t.o.resume && !t.o.ckpt) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_train: resume needs a checkpoint path");
    if ((s = lss__mm_diff_reserve(d, t.o.batch)) != LSS_OK) return s;
    t.maps = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * (int64_t)t.o.batch * d->np));
    t.cond = (float *)LSS_MALLOC(sizeof(float) * (size_t)t.o.batch * (size_t)(d->o.ncond > 0 ? d->o.ncond : 1));
    if (!t.maps || !t.cond) {
        LSS_FREE(t.maps);
        LSS_FREE(t.cond);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_train: out of memory");
    }
    t.x = t.maps + (int64_t)t.o.batch * d->np;
    t.valid = NAN;
    if (!d->opt) {
        memset(&oo, 0, sizeof oo);
        oo.kind = LSS_OPT_ADAM;
        oo.lr = t.o.lr;
        oo.sched = LSS_SCHED_COSINE;
        oo.total_steps = t.o.steps;
        oo.lr_min = t.o.lr / 20;
        oo.clip = LSS_CLIP_NORM;
        oo.clip_norm = 1.0;
        if ((s = lss_optim_create(d->st, &oo, &d->opt)) != LSS_OK) {
            LSS_FREE(t.maps);
            LSS_FREE(t.cond);
            return s;
        }
    }
    memset(&tn, 0, sizeof tn);
    tn.store = d->st;
    tn.optim = d->opt;
    tn.ckpt_path = t.o.ckpt;
    memset(&lo, 0, sizeof lo);
    lo.steps = t.o.steps;
    lo.eval_every = t.o.eval_every;
    lo.ckpt_every = t.o.ckpt_every > 0 ? t.o.ckpt_every : t.o.eval_every;
    lo.loss_csv = t.o.loss_csv;
    lo.resume = t.o.resume;
    lo.patience = t.o.patience;
    lo.step = lss__mm_dtr_step;
    lo.eval = lss__mm_dtr_eval;
    lo.user = &t;
    {
        int k = t.o.shards > 0 ? t.o.shards : lss_mpi_size();
        if (k > t.o.batch) k = t.o.batch;
        if (k > 1 && (s = lss_dp_create(d->st, k, &t.dp)) != LSS_OK) {
            LSS_FREE(t.maps);
            LSS_FREE(t.cond);
            return s;
        }
    }
    s = lss_train(&tn, 1, &lo, res);
    lss_dp_free(t.dp);
    LSS_FREE(t.maps);
    LSS_FREE(t.cond);
    return s;
}

/* ---- sampling */
typedef struct {
    lss_mm_diff *d;
    const float *cond;   /* the batch's conditions [B, ncond] or NULL */
    float *cbuf;         /* packed conditions */
    int64_t nev;
} lss__mm_dode;

static int lss__mm_dode_score(void *user, int n, const int *rows, const float *x, const float *sigma, float *out) {
    lss__mm_dode *u = (lss__mm_dode *)user;
    const float *c = u->cond;
    int j, k, nc = u->d->o.ncond;
    if (c && rows) {
        for (j = 0; j < n; j++)
            for (k = 0; k < nc; k++) u->cbuf[j * nc + k] = c[rows[j] * nc + k];
        c = u->cbuf;
    }
    u->nev += n;
    return lss_mm_diff_score(u->d, n, x, sigma, c, out);
}

LSSDEF int lss_mm_diff_sample(lss_mm_diff *d, int method, int nsteps, int n, const float *cond, uint64_t seed,
                              uint64_t index0, float *out, int64_t *nevals) {
    int64_t np, i, nev = 0;
    int j0, b, j, k, s = LSS_OK, nc;
    float *x = NULL, *sc = NULL, *sig = NULL, *cbuf = NULL, *dp = NULL;
    lss_rng *r = NULL;
    double smin, smax, s0;
    if (nevals) *nevals = 0;
    if (!d || !out || n < 1 || (d && d->o.ncond > 0 && !cond))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_sample: bad argument (n %d; cond needed when ncond > 0)", n);
    if (method < LSS_MM_DIFF_ANCESTRAL || method > LSS_MM_DIFF_DDIM2) return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_sample: unknown method %d", method);
    if (method != LSS_MM_DIFF_ODE && (nsteps < 1 || nsteps > 1000000))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_sample: nsteps %d outside [1, 1000000]", nsteps);
    if (index0 >= LSS_STREAM_INDEX_MAX || (uint64_t)n > LSS_STREAM_INDEX_MAX - index0)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_sample: sample indices past 2^44");
    nc = d->o.ncond;
    for (j = 0; j < n * nc; j++)
        if (!isfinite(cond[j])) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_diff_sample: condition %d of map %d is %g", j % nc, j / nc, (double)cond[j]);
    np = d->np;
    smin = d->o.sigma_min;
    smax = d->o.sigma_max;
    b = n < LSS__MM_DIFF_CHUNK ? n : LSS__MM_DIFF_CHUNK;
    x = (float *)LSS_MALLOC(sizeof(float) * (size_t)b * (size_t)np);
    sc = (float *)LSS_MALLOC(sizeof(float) * (size_t)b * (size_t)np);
    sig = (float *)LSS_MALLOC(sizeof(float) * (size_t)b);
    cbuf = (float *)LSS_MALLOC(sizeof(float) * (size_t)b * (size_t)(nc > 0 ? nc : 1));
    r = (lss_rng *)LSS_MALLOC(sizeof(lss_rng) * (size_t)b);
    if (method == LSS_MM_DIFF_DDIM2) dp = (float *)LSS_MALLOC(sizeof(float) * (size_t)b * (size_t)np);
    if (!x || !sc || !sig || !cbuf || !r || (method == LSS_MM_DIFF_DDIM2 && !dp))
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_sample: out of memory");
    s0 = sqrt(smax * smax + 1.0);
    for (j0 = 0; s == LSS_OK && j0 < n; j0 += b) {
        const float *cj = nc > 0 ? cond + (int64_t)j0 * nc : NULL;
        b = n - j0 < LSS__MM_DIFF_CHUNK ? n - j0 : LSS__MM_DIFF_CHUNK;
        for (j = 0; j < b; j++) {
            lss_rng_for(&r[j], seed, LSS_STREAM_MM_CHAIN, index0 + (uint64_t)(j0 + j), LSS_MM_SUB_DIFF);
            for (i = 0; i < np; i++) x[j * np + i] = (float)(s0 * lss_rng_normal(&r[j]));
        }
        if (method == LSS_MM_DIFF_ODE) {
            lss__mm_dode u;
            int64_t ns, nr;
            u.d = d;
            u.cond = cj;
            u.cbuf = cbuf;
            u.nev = 0;
            s = lss__mm_pf_ode(b, np, x, smax * smax, smin * smin, d->rtol, d->atol, 0, lss__mm_dode_score, &u,
                               "lss_mm_diff_sample", &ns, &nr);
            nev += u.nev;
        } else {
            double lr = log(smin / smax);
            for (k = 0; s == LSS_OK && k < nsteps; k++) {
                double cur = k == 0 ? smax : smax * exp(lr * k / nsteps);
                double nxt = k + 1 == nsteps ? smin : smax * exp(lr * (k + 1) / nsteps);
                double a, sd = 0;
                for (j = 0; j < b; j++) sig[j] = (float)cur;
                if ((s = lss_mm_diff_score(d, b, x, sig, cj, sc)) != LSS_OK) break;
                nev += b;
                if (method == LSS_MM_DIFF_DDIM2) {
                    /* x <- (nxt / cur) x + (1 - nxt / cur) D', D = x + cur^2 s the denoised map, D' = 3/2 D - 1/2
                       D_prev (equal steps in ln sigma) after the first step, D' = D at the first */
                    double q = nxt / cur;
                    for (j = 0; j < b; j++)
                        for (i = 0; i < np; i++) {
                            int64_t m = j * np + i;
                            double D = (double)x[m] + cur * cur * sc[m], Dp = k == 0 ? D : 1.5 * D - 0.5 * dp[m];
                            dp[m] = (float)D;
                            x[m] = (float)(q * x[m] + (1 - q) * Dp);
                        }
                    continue;
                }
                if (method == LSS_MM_DIFF_ANCESTRAL) {
                    a = cur * cur - nxt * nxt;
                    sd = sqrt(a * nxt * nxt / (cur * cur));
                } else
                    a = cur * (cur - nxt);
                for (j = 0; j < b; j++)
                    for (i = 0; i < np; i++) {
                        double v = (double)x[j * np + i] + a * sc[j * np + i];
                        if (method == LSS_MM_DIFF_ANCESTRAL) v += sd * lss_rng_normal(&r[j]);
                        x[j * np + i] = (float)v;
                    }
            }
        }
        if (s != LSS_OK) break;
        /* Tweedie: the posterior mean of y given x at sigma_min */
        for (j = 0; j < b; j++) sig[j] = (float)smin;
        if ((s = lss_mm_diff_score(d, b, x, sig, cj, sc)) != LSS_OK) break;
        nev += b;
        for (j = 0; j < b; j++)
            for (i = 0; i < np; i++) {
                double v = (double)x[j * np + i] + smin * smin * sc[j * np + i];
                float kv = (float)(d->o.transform == LSS_MM_DIFF_LOG ? exp(d->o.mean + d->o.std * v) - d->o.shift : d->o.mean + d->o.std * v);
                if (!isfinite(kv)) {
                    s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_diff_sample: sample %llu is not finite", (unsigned long long)(index0 + (uint64_t)(j0 + j)));
                    break;
                }
                out[(int64_t)(j0 + j) * np + i] = kv;
            }
    }
    LSS_FREE(x); LSS_FREE(sc); LSS_FREE(sig); LSS_FREE(cbuf); LSS_FREE(r); LSS_FREE(dp);
    if (nevals) *nevals = nev;
    return s;
}

/* ---- likelihood bound */
LSSDEF int lss_mm_diff_nll(lss_mm_diff *d, int n, const float *maps, const float *cond, int nsig, uint64_t seed,
                           double *nll, double *se) {
    int64_t np, i, rows, r0, M;
    int s, j, k, b, nc;
    float *y = NULL, *x = NULL, *nz = NULL, *sc = NULL, *sig = NULL, *cb = NULL;
    double *f = NULL, lmin, lmax, L, D, umin, umax, V, cst;
    lss_rng r;
    if (!d || !maps || !nll || n < 1 || (d && d->o.ncond > 0 && !cond))
        return lss_seterr(LSS_ERR_ARG, "lss_mm_diff_nll: bad argument (n %d; cond needed when ncond > 0)", n);
    if (nsig < 2 || nsig % 2 || nsig > 1000000) return lss_seterr(LSS_ERR_RANGE, "lss_mm_diff_nll: nsig %d must be even, 2 .. 1000000", nsig);
    np = d->np;
    nc = d->o.ncond;
    M = (int64_t)n * np;
    y = (float *)LSS_MALLOC(sizeof(float) * (size_t)M);
    x = (float *)LSS_MALLOC(sizeof(float) * (size_t)(LSS__MM_DIFF_CHUNK * np));
    nz = (float *)LSS_MALLOC(sizeof(float) * (size_t)(LSS__MM_DIFF_CHUNK * np));
    sc = (float *)LSS_MALLOC(sizeof(float) * (size_t)(LSS__MM_DIFF_CHUNK * np));
    sig = (float *)LSS_MALLOC(sizeof(float) * LSS__MM_DIFF_CHUNK);
    cb = (float *)LSS_MALLOC(sizeof(float) * (size_t)(LSS__MM_DIFF_CHUNK * (nc > 0 ? nc : 1)));
    f = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * (size_t)nsig);
    if (!y || !x || !nz || !sc || !sig || !cb || !f) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_diff_nll: out of memory");
        goto done;
    }
    if ((s = lss__mm_diff_check(d, n, maps, cond, y, "lss_mm_diff_nll", "", LSS_ERR_NUMERIC)) != LSS_OK) goto done;
    lmin = log(d->o.sigma_min);
    lmax = log(d->o.sigma_max);
    L = lmax - lmin;
    /* rows (map j, stratum k) in order, LSS__MM_DIFF_CHUNK per score call; map j's draws in stratum order */
    rows = (int64_t)n * nsig;
    for (r0 = 0; r0 < rows; r0 += b) {
        b = rows - r0 < LSS__MM_DIFF_CHUNK ? (int)(rows - r0) : LSS__MM_DIFF_CHUNK;
        for (k = 0; k < b; k++) {
            int64_t row = r0 + k;
            int jm = (int)(row / nsig), st = (int)(row % nsig);
            const float *yj = y + (int64_t)jm * np;
            float sk;
            if (st == 0) lss_rng_for(&r, seed, LSS_STREAM_MM_DSM, (uint64_t)jm, LSS_MM_SUB_DIFF_NLL);
            sk = (float)exp(lmin + L * (st + lss_rng_uniform(&r)) / nsig);
            sig[k] = sk;
            for (i = 0; i < np; i++) {
                nz[k * np + i] = (float)lss_rng_normal(&r);
                x[k * np + i] = yj[i] + sk * nz[k * np + i];
            }
            for (j = 0; j < nc; j++) cb[k * nc + j] = cond[jm * nc + j];
        }
        if ((s = lss_mm_diff_score(d, b, x, sig, nc > 0 ? cb : NULL, sc)) != LSS_OK) goto done;
        for (k = 0; k < b; k++) {
            /* ||n + sigma s||^2 - beta (||n||^2 - D), beta = 1/(1 + sigma^2)^2: the same expectation, the
               noise's chi-square removed where it dominates (sigma << 1 for unit-variance data) */
            double a = 0, nn = 0, s2 = (double)sig[k] * sig[k], beta = 1.0 / ((1.0 + s2) * (1.0 + s2));
            for (i = 0; i < np; i++) {
                double e = (double)nz[k * np + i] + (double)sig[k] * sc[k * np + i];
                a += e * e;
                nn += (double)nz[k * np + i] * nz[k * np + i];
            }
            a -= beta * (nn - (double)np);
            if (!isfinite(a)) {
                s = lss_seterr(LSS_ERR_NUMERIC, "lss_mm_diff_nll: the score of map %lld is not finite", (long long)((r0 + k) / nsig));
                goto done;
            }
            f[r0 + k] = a;
        }
    }
    /* prior KL(N(y, umax) || N(0, umax + 1)) + decoder D/2 ln(2 pi e umin) + L_inf + D ln std (+ sum ln(kappa + shift),
       the log transform's Jacobian: dy/dkappa = 1 / (std (kappa + shift))) */
    D = (double)np;
    umin = d->o.sigma_min * d->o.sigma_min;
    umax = d->o.sigma_max * d->o.sigma_max;
    V = umax + 1.0;
    cst = 0.5 * D * (umax / V - 1.0 + log(V / umax)) + 0.5 * D * (log(2.0 * M_PI * umin) + 1.0) + D * log(d->o.std);
    for (j = 0; j < n; j++) {
        double yy = 0, li = 0, v = 0, jac = 0;
        const double *fj = f + (int64_t)j * nsig;
        for (i = 0; i < np; i++) yy += (double)y[j * np + i] * y[j * np + i];
        if (d->o.transform == LSS_MM_DIFF_LOG)
            for (i = 0; i < np; i++) jac += log((double)maps[(int64_t)j * np + i] + d->o.shift);
        for (k = 0; k < nsig; k++) li += fj[k];
        for (k = 0; k < nsig; k += 2) v += (fj[k] - fj[k + 1]) * (fj[k] - fj[k + 1]);
        nll[j] = cst + yy / (2.0 * V) + jac + L * li / nsig;
        if (se) se[j] = L / nsig * sqrt(v);
    }
done:
    LSS_FREE(y); LSS_FREE(x); LSS_FREE(nz); LSS_FREE(sc); LSS_FREE(sig); LSS_FREE(cb); LSS_FREE(f);
    return s;
}

/* ---- presets and batches */
/* ---- exact lognormal posterior */
typedef struct {
    const lss_grid *big, *g;
    const double *sq;      /* sqrt(pg) / n_big per Fourier cell */
    double lambda, var;
    const float *g1, *g2, *nvar;
    int h, w, y0, x0;
    double *fb, *eb;       /* big: the Gaussian field, d kappa / d g */
    float *kc, *m1, *m2, *dk;  /* small: kappa, model shear (then residual), gradient in kappa */
} lss__mm_ex;

/* out = F^-1[sq F in] on the big grid (in and out may alias) */
static void lss__mm_ex_filter(const lss__mm_ex *e, lss_grid_ws *wb, const double *in, double *out) {
    int64_t i, n = lss_grid_npix(e->big);
    lss_cdouble *c = wb->c;
    for (i = 0; i < n; i++) c[i][0] = in[i], c[i][1] = 0;
    LSS__MM_FWD_D(e->big, c);
    for (i = 0; i < n; i++) c[i][0] *= e->sq[i], c[i][1] *= e->sq[i];
    LSS__MM_INV_D(e->big, c);
    for (i = 0; i < n; i++) out[i] = c[i][0];
}

/* log p(xi | data) (up to a constant) and its gradient in grad (n_big); the map kappa(xi) is left in e->kc */
static double lss__mm_ex_logp(lss__mm_ex *e, lss_grid_ws *wb, lss_grid_ws *ws, const double *xi, double *grad) {
    int64_t i, nb = lss_grid_npix(e->big), np = (int64_t)e->h * e->w;
    int y, x, W = lss_grid_w(e->big);
    double lp = 0, mean = 0;
    lss__mm_ex_filter(e, wb, xi, e->fb);
    for (i = 0; i < nb; i++) {
        if (e->lambda > 0) {
            double ex = exp(e->fb[i] - 0.5 * e->var);
            e->eb[i] = e->lambda * ex;           /* d kappa / d g */
            e->fb[i] = e->lambda * (ex - 1.0);   /* kappa on the big grid */
        } else
            e->eb[i] = 1.0;
    }
    for (y = 0; y < e->h; y++)
        for (x = 0; x < e->w; x++) mean += e->kc[(int64_t)y * e->w + x] = (float)e->fb[(int64_t)(y + e->y0) * W + x + e->x0];
    mean /= (double)np;
    for (i = 0; i < np; i++) e->kc[i] = (float)(e->kc[i] - mean);
    lss__mm_k2g(e->g, ws, e->kc, NULL, e->m1, e->m2);
    for (i = 0; i < np; i++) {
        if (e->nvar[i] >= (float)(0.5 * LSS_MM_EMPTY_VAR) || !(e->nvar[i] > 0)) {
            e->m1[i] = e->m2[i] = 0;
            continue;
        }
        {
            double r1 = (double)e->g1[i] - e->m1[i], r2 = (double)e->g2[i] - e->m2[i];
            lp -= 0.5 * (r1 * r1 + r2 * r2) / e->nvar[i];
            e->m1[i] = (float)(r1 / e->nvar[i]);
            e->m2[i] = (float)(r2 / e->nvar[i]);
        }
    }
    lss__mm_g2k(e->g, ws, e->m1, e->m2, e->dk, NULL);  /* A^T (gamma - A kappa) / nvar */
    mean = 0;
    for (i = 0; i < np; i++) mean += e->dk[i];
    mean /= (double)np;                                 /* the cut-out's mean is removed: project it out */
    for (i = 0; i < nb; i++) grad[i] = 0;
    for (y = 0; y < e->h; y++)
        for (x = 0; x < e->w; x++) {
            int64_t q = (int64_t)(y + e->y0) * W + x + e->x0;
            grad[q] = (e->dk[(int64_t)y * e->w + x] - mean) * e->eb[q];
        }
    lss__mm_ex_filter(e, wb, grad, grad);
    for (i = 0; i < nb; i++) {
        lp -= 0.5 * xi[i] * xi[i];
        grad[i] -= xi[i];
    }
    return lp;
}

LSSDEF int lss_mm_exact_lognormal(const lss_grid *big, const double *pk_big, double lambda, const lss_grid *g,
                                  const float *g1, const float *g2, const float *nvar, const lss_mm_exact_opts *o,
                                  float *mean, float *std, lss_mm_exact_stats *st) {
    lss_mm_exact_opts d;
    int64_t nb, np, i;
    double *pg = NULL, *sq = NULL, *cm = NULL, *s2 = NULL, t0 = lss_time_now(), acc_sum = 0, step_sum = 0;
    int s = LSS_OK, c;
    if (!big || !pk_big || !g || !g1 || !g2 || !nvar || !mean) return lss_seterr(LSS_ERR_ARG, "lss_mm_exact_lognormal: NULL argument");
    d = o ? *o : (lss_mm_exact_opts){0};
    if (d.nchains == 0) d.nchains = 4;
    if (d.burn == 0) d.burn = 300;
    if (d.iters == 0) d.iters = 200;
    if (d.leapfrog == 0) d.leapfrog = 24;
    if (d.nchains < 2 || d.nchains > 4096 || d.burn < 1 || d.iters < 1 || d.leapfrog < 2 || d.leapfrog > 10000)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_exact_lognormal: bad options (chains %d >= 2, burn-in %d, iterations %d, leapfrog steps %d >= 2)",
                          d.nchains, d.burn, d.iters, d.leapfrog);
    if (!(lambda >= 0) || !isfinite(lambda)) return lss_seterr(LSS_ERR_RANGE, "lss_mm_exact_lognormal: shift %g must be >= 0", lambda);
    if (lss_grid_h(big) < lss_grid_h(g) || lss_grid_w(big) < lss_grid_w(g) || lss_grid_pix_rad(big) != lss_grid_pix_rad(g))
        return lss_seterr(LSS_ERR_SHAPE, "lss_mm_exact_lognormal: the generator's grid must be at least the data's size, with the same pixel");
    if ((s = lss__mm_check_pk(big, pk_big, "lss_mm_exact_lognormal")) != LSS_OK) return s;
    if ((s = lss__mm_check_nvar(g, nvar, "lss_mm_exact_lognormal")) != LSS_OK) return s;
    nb = lss_grid_npix(big);
    np = lss_grid_npix(g);
    for (i = 0; i < np; i++)
        if (!isfinite(g1[i]) || !isfinite(g2[i])) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_exact_lognormal: shear pixel %lld is not finite", (long long)i);
    pg = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb);
    sq = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb);
    cm = (double *)LSS_MALLOC(sizeof(double) * (size_t)(d.nchains * np));
    s2 = (double *)LSS_MALLOC(sizeof(double) * (size_t)(d.nchains * np));
    if (!pg || !sq || !cm || !s2) s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_exact_lognormal: out of memory");
    if (s == LSS_OK) {
        if (lambda > 0) s = lss_field_lognormal_spectrum(big, pk_big, lambda, pg);
        else memcpy(pg, pk_big, sizeof(double) * (size_t)nb);
    }
    if (s == LSS_OK) {
        double var = 0;
        int bad = LSS_OK;
        for (i = 0; i < nb; i++) var += pg[i], sq[i] = sqrt(pg[i]) / (double)nb;
        var /= (double)nb;
#ifdef LSS__MM_OMP
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : acc_sum, step_sum)
#endif
        for (c = 0; c < d.nchains; c++) {
            lss__mm_ex e;
            lss_grid_ws tb, ts, *wb = NULL, *ws = NULL;
            lss_rng r;
            double *xi = NULL, *p = NULL, *gr = NULL, *x1 = NULL, *g1n = NULL, eps = 0.05, lp, acc = 0;
            double *mc = cm + (int64_t)c * np, *sc = s2 + (int64_t)c * np;
            int it, k, sj = LSS_OK;
            memset(&e, 0, sizeof e);
            e.big = big, e.g = g, e.sq = sq, e.lambda = lambda, e.var = var, e.g1 = g1, e.g2 = g2, e.nvar = nvar;
            e.h = lss_grid_h(g), e.w = lss_grid_w(g), e.y0 = (lss_grid_h(big) - e.h) / 2, e.x0 = (lss_grid_w(big) - e.w) / 2;
            e.fb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb);
            e.eb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb);
            e.kc = (float *)LSS_MALLOC(sizeof(float) * (size_t)(5 * np));
            xi = (double *)LSS_MALLOC(sizeof(double) * (size_t)(5 * nb));
            if (!e.fb || !e.eb || !e.kc || !xi || !(wb = lss_grid_ws_get(big, &tb)) || !(ws = lss_grid_ws_get(g, &ts)))
                sj = LSS_ERR_NOMEM;
            if (sj == LSS_OK) {
                float *kcur = e.kc + 4 * np; /* kappa of the chain's current state */
                e.m1 = e.kc + np, e.m2 = e.kc + 2 * np, e.dk = e.kc + 3 * np;
                p = xi + nb, gr = xi + 2 * nb, x1 = xi + 3 * nb, g1n = xi + 4 * nb;
                lss_rng_init(&r, d.seed, lss_stream(LSS_STREAM_MM_CHAIN, (uint64_t)d.job * (uint64_t)d.nchains + (uint64_t)c, LSS_MM_SUB_EXACT));
                for (i = 0; i < nb; i++) xi[i] = lss_rng_normal(&r);
                for (i = 0; i < np; i++) mc[i] = sc[i] = 0;
                lp = lss__mm_ex_logp(&e, wb, ws, xi, gr);
                memcpy(kcur, e.kc, sizeof(float) * (size_t)np);
                for (it = 0; it < d.burn + d.iters; it++) {
                    int L = d.leapfrog / 2 + (int)(lss_rng_uniform(&r) * (d.leapfrog - d.leapfrog / 2 + 1));
                    double k0 = 0, k1 = 0, lp1, a;
                    if (L > d.leapfrog) L = d.leapfrog;
                    for (i = 0; i < nb; i++) p[i] = lss_rng_normal(&r), k0 += 0.5 * p[i] * p[i];
                    memcpy(x1, xi, sizeof(double) * (size_t)nb);
                    memcpy(g1n, gr, sizeof(double) * (size_t)nb);
                    lp1 = lp;
                    for (k = 0; k < L; k++) {
                        for (i = 0; i < nb; i++) p[i] += 0.5 * eps * g1n[i], x1[i] += eps * p[i];
                        lp1 = lss__mm_ex_logp(&e, wb, ws, x1, g1n);
                        for (i = 0; i < nb; i++) p[i] += 0.5 * eps * g1n[i];
                    }
                    for (i = 0; i < nb; i++) k1 += 0.5 * p[i] * p[i];
                    a = exp(fmin(0.0, (lp1 - k1) - (lp - k0)));
                    if (!isfinite(a)) a = 0;
                    if (lss_rng_uniform(&r) < a) {
                        memcpy(xi, x1, sizeof(double) * (size_t)nb);
                        memcpy(gr, g1n, sizeof(double) * (size_t)nb);
                        memcpy(kcur, e.kc, sizeof(float) * (size_t)np); /* the last evaluation was the proposal's */
                        lp = lp1;
                    }
                    if (it < d.burn) eps *= exp(0.15 * (a - 0.7)); /* tuning; the step is fixed afterwards */
                    else {
                        acc += a;
                        for (i = 0; i < np; i++) mc[i] += kcur[i], sc[i] += (double)kcur[i] * kcur[i];
                    }
                }
                for (i = 0; i < np; i++) mc[i] /= d.iters, sc[i] /= d.iters;
                acc_sum += acc / d.iters;
                step_sum += eps;
            }
            if (wb) lss_grid_ws_put(wb, &tb);
            if (ws) lss_grid_ws_put(ws, &ts);
            LSS_FREE(e.fb); LSS_FREE(e.eb); LSS_FREE(e.kc); LSS_FREE(xi);
            if (sj != LSS_OK) {
#ifdef LSS__MM_OMP
#pragma omp critical
#endif
                bad = sj;
            }
        }
        if (bad != LSS_OK) s = lss_seterr(bad, "lss_mm_exact_lognormal: out of memory");
    }
    if (s == LSS_OK) {
        double mcv = 0;
        for (i = 0; i < np; i++) {
            double m = 0, m2 = 0, v = 0;
            for (c = 0; c < d.nchains; c++) m += cm[(int64_t)c * np + i] / d.nchains, m2 += s2[(int64_t)c * np + i] / d.nchains;
            for (c = 0; c < d.nchains; c++) v += (cm[(int64_t)c * np + i] - m) * (cm[(int64_t)c * np + i] - m);
            mcv += v / (d.nchains - 1) / d.nchains;
            mean[i] = (float)m;
            if (std) std[i] = (float)sqrt(fmax(m2 - m * m, 0));
        }
        if (st) {
            st->accept = acc_sum / d.nchains;
            st->step = step_sum / d.nchains;
            st->mc_var = mcv / (double)np;
            st->seconds = lss_time_now() - t0;
        }
    }
    LSS_FREE(pg); LSS_FREE(sq); LSS_FREE(cm); LSS_FREE(s2);
    return s;
}

LSSDEF int lss_mm_sample_preset(lss_mm_schedule sch, lss_mm_sample_opts *o) {
    if (!o) return lss_seterr(LSS_ERR_ARG, "lss_mm_sample_preset: NULL options");
    switch (sch) {
    case LSS_MM_SCHEDULE_FAST:
        o->sigma_max = 1.0;
        o->anneal = 0.6;
        o->steps_per_level = 2;
        o->final_steps = 10;
        o->mass = LSS_MM_MASS_FOURIER;
        o->mh = LSS_MM_MH_AUTO;
        return LSS_OK;
    case LSS_MM_SCHEDULE_PAPER:
        o->sigma_max = 1.0;
        o->anneal = 0.98;
        o->steps_per_level = 12;
        o->final_steps = 12;
        o->mass = LSS_MM_MASS_IDENTITY;
        o->mh = LSS_MM_MH_PATH;
        return LSS_OK;
    }
    return lss_seterr(LSS_ERR_ARG, "lss_mm_sample_preset: unknown schedule %d", (int)sch);
}

LSSDEF int lss_mm_schedule_parse(const char *name, lss_mm_schedule *out) {
    if (!name || !out) return lss_seterr(LSS_ERR_ARG, "lss_mm_schedule_parse: NULL argument");
    if (!strcmp(name, "fast")) *out = LSS_MM_SCHEDULE_FAST;
    else if (!strcmp(name, "paper")) *out = LSS_MM_SCHEDULE_PAPER;
    else return lss_seterr(LSS_ERR_ARG, "schedule '%s' is not fast or paper", name);
    return LSS_OK;
}

LSSDEF const char *lss_mm_schedule_name(lss_mm_schedule s) {
    return s == LSS_MM_SCHEDULE_FAST ? "fast" : s == LSS_MM_SCHEDULE_PAPER ? "paper" : "?";
}

LSSDEF double lss_mm_auto_sigma_min(int64_t npix, const float *nvar) {
    double vmin = INFINITY;
    int64_t i;
    for (i = 0; nvar && i < npix; i++)
        if (nvar[i] > 0) vmin = fmin(vmin, nvar[i]);
    return isfinite(vmin) ? fmin(LSS_MM_SIGMA_MIN, LSS_MM_SIGMA_MIN_NOISE * sqrt(vmin)) : LSS_MM_SIGMA_MIN;
}

LSSDEF void lss_mm_sampler_sigma_range(int64_t npix, const float *nvar, double *lo, double *hi) {
    if (lo) *lo = fmin(lss_mm_auto_sigma_min(npix, nvar), sqrt(1e-5)); /* the default ODE's end, t = 1e-5 */
    if (hi) *hi = 1.0;
}

/* the per-chain means of summed statistics (lss_mm_sample_batched) */
static void lss__mm_stats_mean(lss_mm_sample_stats *t, int nsamples) {
    t->ode_steps /= nsamples;
    t->ode_rejected /= nsamples;
    t->accept_rate /= nsamples;
    t->evals_per_chain /= nsamples;
    t->hmc_evals_per_chain /= nsamples;
    t->ode_evals_per_chain /= nsamples;
}

/* Under MPI: the same calls of lss_mm_sample as the serial loop below (batch k: chains k batch ..), the
 * batches split over the ranks in blocks, the samples and the per-batch statistics exchanged and the
 * statistics added up in batch order: samples and statistics (but seconds, the slowest rank's) are
 * those of the serial run. */
static int lss__mm_sample_mpi(lss_mm_post *p, const lss_mm_sample_opts *o, int nsamples, int batch, float *samples,
                              lss_mm_sample_stats *st) {
    enum { NS = 10 };
    int64_t np = lss_grid_npix(p->g), nbt = ((int64_t)nsamples + batch - 1) / batch, lo, hi, k;
    float *buf = (float *)LSS_MALLOC(sizeof(float) * (size_t)(nbt * batch * np));
    double *row = (double *)LSS_MALLOC(sizeof(double) * NS * (size_t)nbt), mx = 0;
    lss_mm_sample_stats tot;
    int s = LSS_OK, bad = -1;
    if (!buf || !row) {
        LSS_FREE(buf); LSS_FREE(row);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_sample_batched: out of memory for %d samples", nsamples);
    }
    memset(&tot, 0, sizeof tot);
    lss_mpi_block(nbt, lss_mpi_rank(), lss_mpi_size(), &lo, &hi);
    for (k = lo; k < hi; k++) {
        int done = (int)(k * batch), nb = nsamples - done < batch ? nsamples - done : batch;
        lss_mm_sample_stats one;
        lss_mm_sample_opts b = *o;
        double *r = row + NS * k;
        memset(&one, 0, sizeof one);
        b.nchains = nb;
        b.first_chain = o->first_chain + (uint64_t)done;
        b.progress = NULL;
        r[0] = s == LSS_OK ? lss_mm_sample(p, &b, buf + k * batch * np, &one) : s;
        if (s == LSS_OK) s = (int)r[0];
        r[1] = (double)one.hmc_steps, r[2] = (double)one.levels, r[3] = (double)one.ode_steps, r[4] = (double)one.ode_rejected;
        r[5] = one.accept_rate, r[6] = one.evals_per_chain, r[7] = one.hmc_evals_per_chain, r[8] = one.ode_evals_per_chain;
        r[9] = one.seconds;
        if (o->progress && lss_mpi_rank() == 0) o->progress(o->progress_user, (double)(k - lo + 1) / (double)(hi - lo));
    }
    lss_mpi_allgather(row, nbt, NS * sizeof(double));
    for (k = 0; k < nbt && bad < 0; k++)
        if ((int)row[NS * k] != LSS_OK) bad = (int)k;
    if (bad >= 0) {
        int code = (int)row[NS * bad];
        LSS_FREE(buf); LSS_FREE(row);
        if (s != LSS_OK && bad >= lo && bad < hi) return s;
        return lss_seterr(code, "lss_mm_sample_batched: batch %d failed on another rank (status %d; that rank reports why)", bad, code);
    }
    lss_mpi_allgather(buf, nbt, sizeof(float) * (size_t)(batch * np));
    memcpy(samples, buf, sizeof(float) * (size_t)((int64_t)nsamples * np));
    for (k = 0; k < nbt; k++) { /* the serial loop's sums, in its order */
        const double *r = row + NS * k;
        int nb = nsamples - (int)(k * batch) < batch ? nsamples - (int)(k * batch) : batch;
        tot.hmc_steps = (int64_t)r[1];
        tot.levels = (int64_t)r[2];
        tot.ode_steps += (int64_t)r[3] * nb;
        tot.ode_rejected += (int64_t)r[4] * nb;
        tot.accept_rate += r[5] * nb;
        tot.evals_per_chain += r[6] * nb;
        tot.hmc_evals_per_chain += r[7] * nb;
        tot.ode_evals_per_chain += r[8] * nb;
    }
    for (k = lo; k < hi; k++) mx += row[NS * k + 9];
    tot.seconds = mx;
    lss__mm_stats_mean(&tot, nsamples);
    if (st) *st = tot;
    LSS_FREE(buf); LSS_FREE(row);
    return LSS_OK;
}

LSSDEF int lss_mm_sample_batched(lss_mm_post *p, const lss_mm_sample_opts *o, int nsamples, int batch,
                                 float *samples, lss_mm_sample_stats *st) {
    lss_mm_sample_stats tot;
    int done = 0, s;
    int64_t np;
    if (!p || !o || !samples || nsamples < 1 || batch < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_sample_batched: bad argument");
    np = lss_grid_npix(p->g);
    memset(&tot, 0, sizeof tot);
    if (lss_mpi_size() > 1) return lss__mm_sample_mpi(p, o, nsamples, batch, samples, st);
    while (done < nsamples) {
        int nb = nsamples - done < batch ? nsamples - done : batch;
        lss_mm_sample_stats one;
        lss_mm_sample_opts b = *o;
        b.nchains = nb;
        b.first_chain = o->first_chain + (uint64_t)done;
        b.progress = NULL;
        if ((s = lss_mm_sample(p, &b, samples + (int64_t)done * np, &one)) != LSS_OK) return s;
        tot.hmc_steps = one.hmc_steps;
        tot.levels = one.levels;
        tot.ode_steps += one.ode_steps * nb;
        tot.ode_rejected += one.ode_rejected * nb;
        tot.accept_rate += one.accept_rate * nb;
        tot.evals_per_chain += one.evals_per_chain * nb;
        tot.hmc_evals_per_chain += one.hmc_evals_per_chain * nb;
        tot.ode_evals_per_chain += one.ode_evals_per_chain * nb;
        tot.seconds += one.seconds;
        done += nb;
        if (o->progress) o->progress(o->progress_user, (double)done / nsamples);
    }
    lss__mm_stats_mean(&tot, nsamples);
    if (st) *st = tot;
    return LSS_OK;
}

/* ---- Kaiser-Squires scan */
LSSDEF const double *lss_mm_ks_scales(void) {
    static const double sc[LSS_MM_KS_NSCALES] = {0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0};
    return sc;
}

LSSDEF int lss_mm_ks_best(const lss_grid *g, int nfields, const float *shear, const float *kappa,
                          const float *mask, int nscales, const double *scales, double *rmse, int *best) {
    float *ks;
    double *acc;
    int f, k, s = LSS_OK;
    int64_t np;
    if (!g || !shear || !kappa || !scales || !best || nfields < 1 || nscales < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_mm_ks_best: bad argument");
    np = lss_grid_npix(g);
    ks = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
    acc = (double *)LSS_MALLOC(sizeof(double) * (size_t)nscales);
    if (!ks || !acc) {
        LSS_FREE(ks);
        LSS_FREE(acc);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_ks_best: out of memory");
    }
    for (k = 0; k < nscales; k++) acc[k] = 0;
    for (f = 0; f < nfields && s == LSS_OK; f++)
        for (k = 0; k < nscales && s == LSS_OK; k++) {
            double e = 0;
            s = lss_mm_ks(g, shear + 2 * f * np, shear + (2 * f + 1) * np, scales[k], ks, NULL);
            if (s == LSS_OK) s = lss_mm_metrics(np, ks, kappa + f * np, mask, &e, NULL);
            acc[k] += e / nfields;
        }
    if (s == LSS_OK) {
        *best = 0;
        for (k = 1; k < nscales; k++)
            if (acc[k] < acc[*best]) *best = k;
        if (rmse) memcpy(rmse, acc, sizeof(double) * (size_t)nscales);
    }
    LSS_FREE(ks);
    LSS_FREE(acc);
    return s;
}

/* ---- detection */
LSSDEF double lss_mm_detect_theta(int h, int w) {
    return fmin(LSS_MM_DETECT_THETA_PIX, 0.125 * (h < w ? h : w));
}

LSSDEF int lss_mm_filtered_std(const lss_grid *g, const float *map, const float *mask, double theta_pix,
                               double *std) {
    float *f;
    double a = 0, a2 = 0, c = 0;
    int64_t i, np;
    int s;
    if (!g || !map || !std) return lss_seterr(LSS_ERR_ARG, "lss_mm_filtered_std: NULL argument");
    np = lss_grid_npix(g);
    if (!(f = (float *)LSS_MALLOC(sizeof(float) * (size_t)np))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_filtered_std: out of memory");
    if ((s = lss_mm_starlet_filter(g, map, theta_pix, f)) == LSS_OK) {
        for (i = 0; i < np; i++)
            if (!mask || mask[i] > 0) a += f[i], a2 += (double)f[i] * f[i], c++;
        if (c < 2) s = lss_seterr(LSS_ERR_ARG, "lss_mm_filtered_std: fewer than 2 observed pixels");
        else *std = sqrt(fmax(a2 / c - (a / c) * (a / c), 0));
    }
    LSS_FREE(f);
    return s;
}

LSSDEF int lss_mm_detect_peak(const lss_grid *g, const float *map, double theta_pix, double xc, double yc,
                              double *peak) {
    float *f;
    double mx = -INFINITY, rad = LSS_MM_DETECT_DISC * theta_pix;
    int s, x, y, h, w;
    if (!g || !map || !peak) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect_peak: NULL argument");
    if (!isfinite(xc) || !isfinite(yc)) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect_peak: position not finite");
    h = lss_grid_h(g);
    w = lss_grid_w(g);
    if (!(f = (float *)LSS_MALLOC(sizeof(float) * (size_t)lss_grid_npix(g)))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_detect_peak: out of memory");
    if ((s = lss_mm_starlet_filter(g, map, theta_pix, f)) == LSS_OK) {
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) {
                double dx = x + 0.5 - xc, dy = y + 0.5 - yc;
                if (dx * dx + dy * dy <= rad * rad) mx = fmax(mx, f[(int64_t)y * w + x]);
            }
        if (!(mx > -INFINITY)) s = lss_seterr(LSS_ERR_RANGE, "lss_mm_detect_peak: no pixel within %g pixels of (%g, %g)", rad, xc, yc);
        else *peak = mx;
    }
    LSS_FREE(f);
    return s;
}

LSSDEF int lss_mm_detect_rate(const lss_grid *g, int n, const float *maps, double theta_pix, double xc,
                              double yc, double level, double *rate) {
    int k, s, det = 0;
    double pk;
    if (!g || !maps || !rate || n < 1) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect_rate: bad argument");
    for (k = 0; k < n; k++) {
        if ((s = lss_mm_detect_peak(g, maps + (int64_t)k * lss_grid_npix(g), theta_pix, xc, yc, &pk)) != LSS_OK) return s;
        det += pk > level;
    }
    *rate = (double)det / n;
    return LSS_OK;
}

/* ---- halo-model convergence (see the declarations for the formulas and their sources) */
#define LSS__MM_RHOCRIT0 2.77536627e11  /* critical density today, (Msun/h) / (Mpc/h)^3 */
#define LSS__MM_DELTA_C 1.686           /* spherical-collapse threshold (ST99) */
#define LSS__MM_ST_A 0.3222             /* Sheth & Tormen (1999) eq. 10 */
#define LSS__MM_ST_Q 0.707
#define LSS__MM_ST_P 0.3
#define LSS__MM_HALO_NK 4096            /* ln k nodes of the sigma(R) integral, k in [1e-5, 1e5] h/Mpc */
#define LSS__MM_HALO_NCHI 2048          /* nodes of the lensing-kernel table */
#define LSS__MM_HALO_NELL 96            /* ell table of the spectra, 10^0 .. 10^5.5 */
#define LSS__MM_HALO_ZMIN 0.01          /* nearest shell edge */

struct lss_mm_halo_model {
    lss_mm_halo_opts o;            /* defaults applied (params, nz pointers not kept) */
    lss_params par;
    lss_cosmo *c;
    lss_grid *big;
    double rho_m, pix_rad, omega_pix;
    double *lnk, *kw;              /* sigma integral: ln k nodes and weights dlnk k^3 P_lin(k, 0) / (2 pi^2) */
    double *wtab, dchi_w;          /* W(chi) on chi = i dchi_w, i < LSS__MM_HALO_NCHI */
    double *chi_e, *z_mid;         /* shell edges [ns + 1] and central redshifts [ns] */
    double *lnm_e;                 /* mass-bin edges [nm + 1] (ln M) */
    double *cnt, *slope, *bias;    /* [ns][nm]: mean count per pixel volume, power-law slope of dn/dlnM, bias */
    double *ntot, *btot, *bmax;    /* [ns]: sum cnt, sum cnt b, max b */
    int nell;
    double *ell, *cl_th, *cl_1h, *cl_2h, *cl_sm, *cl_lin;  /* [nell]; cl_lin [ns][nell] */
    double *pk_smooth;             /* the smooth spectrum on the padded grid */
    double kappa_mean, halos_pix;
};

static double lss__mm_tophat(double x, double *dw) {
    double x2 = x * x;
    if (x < 1e-2) {
        if (dw) *dw = -x / 5.0 + x2 * x / 70.0;
        return 1.0 - x2 / 10.0 + x2 * x2 / 280.0;
    } else {
        double sx = sin(x), cx = cos(x);
        if (dw) *dw = 3.0 * (x2 * sx - 3.0 * sx + 3.0 * x * cx) / (x2 * x2);
        return 3.0 * (sx - x * cx) / (x2 * x);
    }
}

/* sigma(R, z = 0) and dln sigma / dln R by the k integral (trapezoid in ln k) */
static double lss__mm_sigma_r(const lss_mm_halo_model *m, double r, double *dlns_dlnr) {
    double s2 = 0, d2 = 0;
    int i;
    for (i = 0; i < LSS__MM_HALO_NK; i++) {
        double k = exp(m->lnk[i]), dw, w = lss__mm_tophat(k * r, &dw);
        s2 += m->kw[i] * w * w;
        d2 += m->kw[i] * 2.0 * w * dw * k * r;
    }
    if (dlns_dlnr) *dlns_dlnr = 0.5 * d2 / s2;
    return sqrt(s2);
}

LSSDEF double lss_mm_halo_rho_m(const lss_mm_halo_model *m) { return m ? m->rho_m : NAN; }

LSSDEF double lss_mm_halo_sigma(const lss_mm_halo_model *m, double mass, double z, double *dlns_dlnm) {
    double r, s, d;
    if (!m || !(mass > 0) || !isfinite(mass) || !(z >= 0) || !isfinite(z)) return NAN;
    r = cbrt(3.0 * mass / (4.0 * M_PI * m->rho_m));
    s = lss__mm_sigma_r(m, r, &d);
    if (dlns_dlnm) *dlns_dlnm = d / 3.0;
    return s * lss_cosmo_growth(m->c, z);
}

LSSDEF double lss_mm_halo_st_f(double nu) {
    double qn2 = LSS__MM_ST_Q * nu * nu;
    if (!(nu > 0) || !isfinite(nu)) return nu == INFINITY ? 0.0 : NAN;
    return LSS__MM_ST_A * sqrt(2.0 * LSS__MM_ST_Q / M_PI) * nu * (1.0 + pow(qn2, -LSS__MM_ST_P)) * exp(-0.5 * qn2);
}
static double lss__mm_st_bias(double nu) {
    double qn2 = LSS__MM_ST_Q * nu * nu;
    return 1.0 + (qn2 - 1.0) / LSS__MM_DELTA_C + 2.0 * LSS__MM_ST_P / (LSS__MM_DELTA_C * (1.0 + pow(qn2, LSS__MM_ST_P)));
}

LSSDEF double lss_mm_halo_dndlnm(const lss_mm_halo_model *m, double mass, double z) {
    double d, s = lss_mm_halo_sigma(m, mass, z, &d);
    if (!(s > 0)) return NAN;
    /* nu = delta_c / sigma: dln nu / dln M = -dln sigma / dln M */
    return m->rho_m / mass * lss_mm_halo_st_f(LSS__MM_DELTA_C / s) * fabs(d);
}

LSSDEF double lss_mm_halo_bias(const lss_mm_halo_model *m, double mass, double z) {
    double s = lss_mm_halo_sigma(m, mass, z, NULL);
    return s > 0 ? lss__mm_st_bias(LSS__MM_DELTA_C / s) : NAN;
}

LSSDEF double lss_mm_halo_concentration(double mass, double z) {
    if (!(mass > 0) || !isfinite(mass) || !(z >= 0) || !isfinite(z)) return NAN;
    return 10.14 * pow(mass / 2e12, -0.081) * pow(1.0 + z, -1.01);  /* Duffy et al. 2008, Table 1, 200 mean, full */
}

LSSDEF double lss_mm_halo_r200m(const lss_mm_halo_model *m, double mass) {
    if (!m || !(mass > 0) || !isfinite(mass)) return NAN;
    return cbrt(3.0 * mass / (4.0 * M_PI * 200.0 * m->rho_m));
}

static double lss__mm_tnfw_f(double x, double c) {
    double x2 = x * x, a;
    if (x >= c) return 0.0;
    if (x < 1.0) {
        a = (x2 + c) / (x * (1.0 + c));
        return -sqrt(c * c - x2) / ((1.0 - x2) * (1.0 + c)) + log(a + sqrt(a * a - 1.0)) / ((1.0 - x2) * sqrt(1.0 - x2));
    }
    a = (x2 + c) / (x * (1.0 + c));
    if (a > 1.0) a = 1.0;
    return -sqrt(c * c - x2) / ((1.0 - x2) * (1.0 + c)) - acos(a) / ((x2 - 1.0) * sqrt(x2 - 1.0));
}
LSSDEF double lss_mm_halo_tnfw_f(double x, double c) {
    const double e = 2e-4;  /* the two branches cancel near x = 1: linear interpolation across (error ~ F'' e^2) */
    if (!(x > 0) || !(c > 0) || !isfinite(x) || !isfinite(c)) return NAN;
    if (x < 1e-12) x = 1e-12;
    if (fabs(x - 1.0) < e && c > 1.0 + e) {
        double fa = lss__mm_tnfw_f(1.0 - e, c), fb = lss__mm_tnfw_f(1.0 + e, c);
        return fa + (fb - fa) * (x - (1.0 - e)) / (2.0 * e);
    }
    return lss__mm_tnfw_f(x, c);
}

/* Sine and cosine integrals Si(x), Ci(x), x > 0: power series below 4, the continued fraction of E1(ix) above
   (Numerical Recipes, section 6.9). */
static void lss__mm_sici(double x, double *si, double *ci) {
    if (x < 4.0) {
        double t = x, s = x, cs = 0, x2 = x * x;
        int n;
        for (n = 1; n < 60; n++) {
            double tc;
            t *= -x2 / ((2.0 * n) * (2.0 * n + 1.0));  /* (-1)^n x^(2n+1) / (2n+1)! */
            s += t / (2.0 * n + 1.0);
            tc = t * (2.0 * n + 1.0) / x;              /* (-1)^n x^(2n) / (2n)! */
            cs += tc / (2.0 * n);
            if (fabs(t) < 1e-18 * fabs(s)) break;
        }
        *si = s;
        *ci = 0.57721566490153286061 + log(x) + cs;
    } else {
        /* h = E1(ix) e^{ix} by Lentz: b = 1 + i x, ... (complex arithmetic on pairs) */
        double br = 1.0, bi = x, cr = 1e300, ci_ = 0, dr, di, hr, hi, den;
        int i;
        den = br * br + bi * bi;
        dr = br / den; di = -bi / den;
        hr = dr; hi = di;
        for (i = 2; i < 100000; i++) {
            double a = -(double)(i - 1) * (i - 1), tr, ti, delr, deli;
            br += 2.0;
            /* d = 1 / (a d + b) */
            tr = a * dr + br; ti = a * di + bi;
            den = tr * tr + ti * ti;
            dr = tr / den; di = -ti / den;
            /* c = b + a / c */
            den = cr * cr + ci_ * ci_;
            tr = br + a * cr / den; ti = bi - a * ci_ / den;
            cr = tr; ci_ = ti;
            delr = cr * dr - ci_ * di; deli = cr * di + ci_ * dr;
            tr = hr * delr - hi * deli; ti = hr * deli + hi * delr;
            hr = tr; hi = ti;
            if (fabs(delr - 1.0) + fabs(deli) < 1e-15) break;
        }
        {
            double cx = cos(x), sx = sin(x), rr = hr * cx + hi * sx, ri = hi * cx - hr * sx;  /* h (cos x - i sin x) */
            *ci = -rr;
            *si = 0.5 * M_PI + ri;
        }
    }
}

LSSDEF double lss_mm_halo_tnfw_u(double krs, double c) {
    double fc, sa, ca, sb, cb;
    if (!(krs >= 0) || !(c > 0) || !isfinite(krs) || !isfinite(c)) return NAN;
    if (krs < 1e-6) return 1.0;
    fc = 1.0 / (log(1.0 + c) - c / (1.0 + c));
    lss__mm_sici(krs, &sa, &ca);
    lss__mm_sici((1.0 + c) * krs, &sb, &cb);
    return fc * (sin(krs) * (sb - sa) - sin(c * krs) / ((1.0 + c) * krs) + cos(krs) * (cb - ca));
}

static double lss__mm_halo_w(const lss_mm_halo_model *m, double chi) {
    double t = chi / m->dchi_w;
    int i = (int)t;
    if (i < 0) return 0.0;
    if (i >= LSS__MM_HALO_NCHI - 1) return m->wtab[LSS__MM_HALO_NCHI - 1];
    return m->wtab[i] + (m->wtab[i + 1] - m->wtab[i]) * (t - i);
}

LSSDEF void lss_mm_halo_free(lss_mm_halo_model *m) {
    if (!m) return;
    lss_cosmo_free(m->c);
    lss_grid_free(m->big);
    LSS_FREE(m->lnk); LSS_FREE(m->kw); LSS_FREE(m->wtab); LSS_FREE(m->chi_e); LSS_FREE(m->z_mid); LSS_FREE(m->lnm_e);
    LSS_FREE(m->cnt); LSS_FREE(m->slope); LSS_FREE(m->bias); LSS_FREE(m->ntot); LSS_FREE(m->btot); LSS_FREE(m->bmax);
    LSS_FREE(m->ell); LSS_FREE(m->cl_th); LSS_FREE(m->cl_1h); LSS_FREE(m->cl_2h); LSS_FREE(m->cl_sm); LSS_FREE(m->cl_lin);
    LSS_FREE(m->pk_smooth);
    LSS_FREE(m);
}

/* The per-shell tables: mass-bin counts, slopes and biases; the shells' linear spectra; the halo spectra. */
static int lss__mm_halo_tables(lss_mm_halo_model *m, const lss_nz *src) {
    const int ns = m->o.nshells, nm = m->o.nmass, nl = m->nell, NSUB = 4, NG = 3;
    static const double gx[3] = {-0.7745966692414834, 0.0, 0.7745966692414834}, gw[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    double chimax = m->chi_e[ns];
    int b, j, i, l, q;
    double sig_e[513], dls_e[513], sig_n[3 * 512];
    /* sigma(M, 0) once per mass (sigma(M, z) = D+(z) sigma(M, 0)) */
    for (j = 0; j <= nm; j++) sig_e[j] = lss_mm_halo_sigma(m, exp(m->lnm_e[j]), 0.0, dls_e + j);
    for (j = 0; j < nm; j++)
        for (q = 0; q < NG; q++) sig_n[NG * j + q] = lss_mm_halo_sigma(m, exp(m->lnm_e[j] + 0.5 * (m->lnm_e[1] - m->lnm_e[0]) * (1.0 + gx[q])), 0.0, NULL);
    /* lensing kernel table */
    m->dchi_w = chimax / (LSS__MM_HALO_NCHI - 1);
    for (i = 0; i < LSS__MM_HALO_NCHI; i++) m->wtab[i] = i == 0 ? 0.0 : lss_cl_lensing_kernel(m->c, src, i * m->dchi_w);
    for (i = 0; i < nl; i++) m->cl_1h[i] = m->cl_2h[i] = 0.0;
    for (b = 0; b < ns; b++) {
        double c1 = m->chi_e[b], c2 = m->chi_e[b + 1], zb = m->z_mid[b], vpix = m->omega_pix * (c2 * c2 * c2 - c1 * c1 * c1) / 3.0;
        double *cb = m->cnt + (int64_t)b * nm, *sb = m->slope + (int64_t)b * nm, *bb = m->bias + (int64_t)b * nm;
        double dlm = m->lnm_e[1] - m->lnm_e[0];
        double nodes_lnm[3 * 512], nodes_w[3 * 512], nodes_n[3 * 512], nodes_b[3 * 512];
        int nn = 0;
        m->ntot[b] = m->btot[b] = 0.0;
        m->bmax[b] = 0.0;
        double gz = lss_cosmo_growth(m->c, zb);
        for (j = 0; j < nm; j++) {
            /* dn/dlnM = rho_m / M nu f(nu) |dln sigma / dln M| at the bin edges (lss_mm_halo_dndlnm) */
            double na = m->rho_m / exp(m->lnm_e[j]) * lss_mm_halo_st_f(LSS__MM_DELTA_C / (gz * sig_e[j])) * fabs(dls_e[j]);
            double nb = m->rho_m / exp(m->lnm_e[j + 1]) * lss_mm_halo_st_f(LSS__MM_DELTA_C / (gz * sig_e[j + 1])) * fabs(dls_e[j + 1]);
            double s, n, mb;
            if (!(na > 0) || !(nb > 0)) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_halo_create: mass function %g, %g at z = %g", na, nb, zb);
            s = log(nb / na) / dlm;
            n = fabs(s * dlm) < 1e-8 ? na * dlm : na * (exp(s * dlm) - 1.0) / s;  /* int over the bin of the power law */
            /* bias at the bin's count-weighted mean ln M: Gauss nodes below give the theory; here a 3-node mean */
            mb = 0.0;
            for (q = 0; q < NG; q++) {
                double lm = m->lnm_e[j] + 0.5 * dlm * (1.0 + gx[q]), w = 0.5 * dlm * gw[q] * na * exp(s * (lm - m->lnm_e[j]));
                double bq = lss__mm_st_bias(LSS__MM_DELTA_C / (gz * sig_n[NG * j + q]));  /* lss_mm_halo_bias */
                mb += w * bq;
                nodes_lnm[nn] = lm;
                nodes_w[nn] = w;  /* dn per node (the power law the sampler draws from) */
                nodes_n[nn] = exp(lm) / m->rho_m;
                nodes_b[nn] = bq;
                nn++;
            }
            cb[j] = n * vpix;
            sb[j] = s;
            bb[j] = mb / n;
            m->ntot[b] += cb[j];
            m->btot[b] += cb[j] * bb[j];
            if (bb[j] > m->bmax[b]) m->bmax[b] = bb[j];
        }
        m->halos_pix += m->ntot[b];
        /* shell spectra: linear density of the shell and the halo terms (NSUB midpoint nodes in chi) */
#ifdef LSS__MM_OMP
#pragma omp parallel for schedule(dynamic)
#endif
        for (l = 0; l < nl; l++) {
            double ell = m->ell[l], clin = 0.0, a2h = 0.0, c1h = 0.0;
            int i, q;
            for (i = 0; i < NSUB; i++) {
                double chi = c1 + (i + 0.5) * (c2 - c1) / NSUB, dchi = (c2 - c1) / NSUB, z = lss_cosmo_z_of_chi(m->c, chi);
                double k = (ell + 0.5) / chi, wl = lss__mm_halo_w(m, chi), p1 = 0.0, p2 = 0.0;
                clin += dchi * lss_cosmo_pk_lin(m->c, k, z) / (chi * chi);
                for (q = 0; q < nn; q++) {
                    double mass = exp(nodes_lnm[q]), cc = lss_mm_halo_concentration(mass, z);
                    double rs = lss_mm_halo_r200m(m, mass) / cc, u = lss_mm_halo_tnfw_u(k * rs, cc);
                    p1 += nodes_w[q] * nodes_n[q] * nodes_n[q] * u * u;
                    p2 += nodes_w[q] * nodes_b[q] * nodes_n[q] * u;
                }
                c1h += dchi * wl * wl / (chi * chi) * p1;
                a2h += dchi * wl * p2;
            }
            clin /= (c2 - c1) * (c2 - c1);
            m->cl_lin[(int64_t)b * nl + l] = clin;
            m->cl_1h[l] += c1h;
            if (!m->o.no_bias) m->cl_2h[l] += a2h * a2h * clin;
        }
        /* mean convergence of the shell's halos: int_b dchi W int dn M / rho_m */
        {
            double sw = 0.0, sm = 0.0;
            for (i = 0; i < NSUB; i++) sw += lss__mm_halo_w(m, c1 + (i + 0.5) * (c2 - c1) / NSUB) * (c2 - c1) / NSUB;
            for (q = 0; q < nn; q++) sm += nodes_w[q] * nodes_n[q];
            m->kappa_mean += sw * sm;
        }
    }
    return LSS_OK;
}

LSSDEF int lss_mm_halo_create(const lss_mm_halo_opts *o, lss_mm_halo_model **out) {
    lss_mm_halo_opts d;
    lss_mm_halo_model *m;
    lss_nz *bins = NULL;
    int nb = 0, s, i, ns, nm, nl = LSS__MM_HALO_NELL;
    double *tmp = NULL;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_halo_create: out is NULL");
    *out = NULL;
    memset(&d, 0, sizeof d);
    if (o) d = *o;
    if (d.size == 0) d.size = 128;
    if (d.pad == 0) d.pad = 2;
    if (d.pix_arcmin == 0) d.pix_arcmin = LSS_MM_COSMOS_PIX_ARCMIN;
    if (d.m_min == 0) d.m_min = 1e12;
    if (d.m_max == 0) d.m_max = pow(10.0, 15.5);
    if (d.nshells == 0) d.nshells = 30;
    if (d.z_max == 0) d.z_max = 3.0;
    if (d.nmass == 0) d.nmass = 40;
    if (d.size < 8 || d.size > 4096 || d.pad < 1 || d.pad > 8 || (int64_t)d.size * d.pad > 16384)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_halo_create: bad grid (size %d, pad %d): need 8 <= size <= 4096, 1 <= pad <= 8", d.size, d.pad);
    if (!(d.pix_arcmin > 0) || !(d.pix_arcmin <= 60))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_halo_create: pixel %g arcmin must be in (0, 60]", d.pix_arcmin);
    if (!(d.m_min >= 1e6) || !(d.m_max <= 1e17) || !(d.m_min < d.m_max))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_halo_create: masses [%g, %g] Msun/h: need 1e6 <= m_min < m_max <= 1e17", d.m_min, d.m_max);
    if (d.nshells < 2 || d.nshells > LSS_MM_HALO_MAX_SHELLS || !(d.z_max > 0.05) || !(d.z_max <= 10) || d.nmass < 2 || d.nmass > 512)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_halo_create: bad options (shells %d in [2, %d], z_max %g in (0.05, 10], mass bins %d in [2, 512])",
                          d.nshells, LSS_MM_HALO_MAX_SHELLS, d.z_max, d.nmass);
    if (!(m = (lss_mm_halo_model *)LSS_MALLOC(sizeof *m))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_halo_create: out of memory");
    memset(m, 0, sizeof *m);
    if ((s = lss__mm_theory_setup(d.params, d.nz, &m->c, &bins, &nb)) != LSS_OK) {
        LSS_FREE(m);
        return s;
    }
    d.params = NULL;
    d.nz = NULL;
    m->o = d;
    m->par = *lss_cosmo_params(m->c);
    ns = d.nshells;
    nm = d.nmass;
    m->nell = nl;
    m->rho_m = LSS__MM_RHOCRIT0 * m->par.omega_m;
    m->pix_rad = d.pix_arcmin * LSS__MM_ARCMIN;
    m->omega_pix = m->pix_rad * m->pix_rad;
#define LSS__MM_HA(p, n) (p = (double *)LSS_MALLOC(sizeof(double) * (size_t)(n))) == NULL
    if (LSS__MM_HA(m->lnk, LSS__MM_HALO_NK) || LSS__MM_HA(m->kw, LSS__MM_HALO_NK) || LSS__MM_HA(m->wtab, LSS__MM_HALO_NCHI) ||
        LSS__MM_HA(m->chi_e, ns + 1) || LSS__MM_HA(m->z_mid, ns) || LSS__MM_HA(m->lnm_e, nm + 1) || LSS__MM_HA(m->cnt, ns * nm) ||
        LSS__MM_HA(m->slope, ns * nm) || LSS__MM_HA(m->bias, ns * nm) || LSS__MM_HA(m->ntot, ns) || LSS__MM_HA(m->btot, ns) ||
        LSS__MM_HA(m->bmax, ns) || LSS__MM_HA(m->ell, nl) || LSS__MM_HA(m->cl_th, nl) || LSS__MM_HA(m->cl_1h, nl) ||
        LSS__MM_HA(m->cl_2h, nl) || LSS__MM_HA(m->cl_sm, nl) || LSS__MM_HA(m->cl_lin, ns * nl) ||
        LSS__MM_HA(tmp, lss_cl_npairs(1) * nl)) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_halo_create: out of memory");
        goto done;
    }
#undef LSS__MM_HA
    {
        /* sigma(R): trapezoid in ln k over [1e-5, 1e5] h/Mpc of k^3 P_lin(k, 0) / (2 pi^2) W^2(kR) */
        double a = log(1e-5), bk = log(1e5), dk = (bk - a) / (LSS__MM_HALO_NK - 1);
        for (i = 0; i < LSS__MM_HALO_NK; i++) {
            double k = exp(a + i * dk);
            m->lnk[i] = a + i * dk;
            m->kw[i] = (i == 0 || i == LSS__MM_HALO_NK - 1 ? 0.5 : 1.0) * dk * k * k * k * lss_cosmo_pk_lin(m->c, k, 0.0) / (2.0 * M_PI * M_PI);
        }
    }
    {
        double c0 = lss_cosmo_chi(m->c, LSS__MM_HALO_ZMIN), c1 = lss_cosmo_chi(m->c, d.z_max);
        for (i = 0; i <= ns; i++) m->chi_e[i] = c0 + (c1 - c0) * i / ns;
        for (i = 0; i < ns; i++) m->z_mid[i] = lss_cosmo_z_of_chi(m->c, 0.5 * (m->chi_e[i] + m->chi_e[i + 1]));
        for (i = 0; i <= nm; i++) m->lnm_e[i] = log(d.m_min) + (log(d.m_max) - log(d.m_min)) * i / nm;
        for (i = 0; i < nl; i++) m->ell[i] = pow(10.0, 5.5 * i / (nl - 1));
    }
    if ((s = lss__mm_halo_tables(m, &bins[0])) != LSS_OK) goto done;
    if ((s = lss_cl_tomo_terms(m->c, bins, 1, m->ell, nl, LSS_CL_GG, tmp)) != LSS_OK) goto done;
    for (i = 0; i < nl; i++) {
        m->cl_th[i] = tmp[i];
        m->cl_sm[i] = d.no_smooth ? 0.0 : fmax(tmp[i] - m->cl_1h[i] - m->cl_2h[i], 0.0);
    }
    if ((s = lss_grid_create(d.size * d.pad, d.size * d.pad, d.pix_arcmin, &m->big)) != LSS_OK) goto done;
    if (!(m->pk_smooth = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(m->big)))) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_halo_create: out of memory");
        goto done;
    }
    {
        /* the smooth spectrum cell by cell: P_theory - w^2 P_halo, w = sinc(pi f_x) sinc(pi f_y) the window of the halos'
           pixel-averaged painting (f in cycles per pixel), summed over the aliases f + n (|n_x|, |n_y| <= 2), so that the
           total matches the theory (which has no pixel window, as the lognormal mocks and the Gaussian prior) */
        int64_t np = lss_grid_npix(m->big), q;
        int H = lss_grid_h(m->big), W = lss_grid_w(m->big);
        for (i = 0; i < nl; i++) tmp[i] = log(fmax(m->cl_1h[i] + m->cl_2h[i], 1e-300));
        s = lss_grid_spectrum(m->big, m->ell, m->cl_th, nl, m->pk_smooth);
        for (q = 0; q < np && s == LSS_OK; q++) {
            int iy = (int)(q / W), ix = (int)(q % W), ay, ax;
            double fy = (iy <= H / 2 ? iy : iy - H) / (double)H, fx = (ix <= W / 2 ? ix : ix - W) / (double)W, ph = 0.0;
            if (q == 0) continue;
            for (ay = -2; ay <= 2; ay++)
                for (ax = -2; ax <= 2; ax++) {
                    /* the alias at f + (ay, ax): its window and its halo power (log-log interpolation of the table) */
                    double gy = fy + ay, gx = fx + ax, wy = gy == 0 ? 1.0 : sin(M_PI * gy) / (M_PI * gy);
                    double wx = gx == 0 ? 1.0 : sin(M_PI * gx) / (M_PI * gx), el = 2.0 * M_PI * sqrt(gx * gx + gy * gy) / m->pix_rad;
                    double t = log(el) / log(10.0) / 5.5 * (nl - 1);
                    int j = (int)t;
                    if (j < 0) j = 0, t = 0;
                    if (j > nl - 2) j = nl - 2, t = nl - 1;
                    ph += wx * wx * wy * wy * exp(tmp[j] + (tmp[j + 1] - tmp[j]) * (t - j)) / m->omega_pix;
                }
            m->pk_smooth[q] = d.no_smooth ? 0.0 : fmax(m->pk_smooth[q] - ph, 0.0);
        }
    }
done:
    LSS_FREE(tmp);
    lss_nz_free(bins, nb);
    if (s != LSS_OK) {
        lss_mm_halo_free(m);
        return s;
    }
    *out = m;
    return LSS_OK;
}

LSSDEF int lss_mm_halo_spectra(const lss_mm_halo_model *m, int *nell, const double **ell, const double **cl_theory,
                               const double **cl_1h, const double **cl_2h, const double **cl_smooth) {
    if (!m) return lss_seterr(LSS_ERR_ARG, "lss_mm_halo_spectra: NULL model");
    if (nell) *nell = m->nell;
    if (ell) *ell = m->ell;
    if (cl_theory) *cl_theory = m->cl_th;
    if (cl_1h) *cl_1h = m->cl_1h;
    if (cl_2h) *cl_2h = m->cl_2h;
    if (cl_smooth) *cl_smooth = m->cl_sm;
    return LSS_OK;
}

LSSDEF int lss_mm_halo_counts(const lss_mm_halo_model *m, double *halos_per_pixel, double *kappa_mean) {
    if (!m) return lss_seterr(LSS_ERR_ARG, "lss_mm_halo_counts: NULL model");
    if (halos_per_pixel) *halos_per_pixel = m->halos_pix;
    if (kappa_mean) *kappa_mean = m->kappa_mean;
    return LSS_OK;
}

/* Mean of F over sub x sub points of pixel (ix, iy) for a halo at (x, y), radii in pixels. */
static double lss__mm_halo_pixf(int ix, int iy, double x, double y, double rs, double rt, double c, int sub) {
    double sum = 0.0, r2t = rt * rt;
    int a, b;
    for (a = 0; a < sub; a++) {
        double dy = iy + (a + 0.5) / sub - y;
        for (b = 0; b < sub; b++) {
            double dx = ix + (b + 0.5) / sub - x, r2 = dx * dx + dy * dy;
            if (r2 < r2t) sum += lss_mm_halo_tnfw_f(sqrt(r2) / rs, c);
        }
    }
    return sum / (sub * sub);
}

/* One halo of mass `mass` at comoving distance chi (redshift z), centre (x, y) in the map's pixel coordinates, added to
   accd (double) or accf (float) of h x w pixels: sub-pixel mean of the profile on the pixels within r200m, rescaled to
   the analytic total (all of it in the centre's pixel when no sub-pixel point falls inside r200m). */
static void lss__mm_halo_stamp(const lss_mm_halo_model *m, double mass, double chi, double z, double x, double y, int h,
                               int w, double *accd, float *accf, double *total, double *raw) {
    double c = lss_mm_halo_concentration(mass, z), rtc = lss_mm_halo_r200m(m, mass), rsc = rtc / c;
    double fc = 1.0 / (log(1.0 + c) - c / (1.0 + c)), wl = lss__mm_halo_w(m, chi);
    double T = wl * mass / (m->rho_m * chi * chi * m->omega_pix);
    double rt = rtc / chi / m->pix_rad, rs = rt / c, k0 = wl * mass * fc / (2.0 * M_PI * m->rho_m * rsc * rsc), sum = 0.0, norm;
    int sub = (int)ceil(2.0 / rs), iy0 = (int)floor(y - rt), iy1 = (int)floor(y + rt), ix0 = (int)floor(x - rt), ix1 = (int)floor(x + rt);
    int iy, ix, nx = ix1 - ix0 + 1, ny = iy1 - iy0 + 1, cache = (int64_t)nx * ny <= 1024;
    double buf[1024];
    if (sub < 4) sub = 4;
    if (sub > 8) sub = 8;
    for (iy = iy0; iy <= iy1; iy++)
        for (ix = ix0; ix <= ix1; ix++) {
            double v = lss__mm_halo_pixf(ix, iy, x, y, rs, rt, c, sub);
            if (cache) buf[(iy - iy0) * nx + ix - ix0] = v;
            sum += v;
        }
    if (total) *total = T;
    if (raw) *raw = k0 * sum / T;
    if (!(sum > 0)) {
        iy = (int)floor(y);
        ix = (int)floor(x);
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            if (accd) accd[(int64_t)iy * w + ix] += T;
            else accf[(int64_t)iy * w + ix] += (float)T;
        }
        return;
    }
    norm = T / sum;
    for (iy = iy0 < 0 ? 0 : iy0; iy <= iy1 && iy < h; iy++)
        for (ix = ix0 < 0 ? 0 : ix0; ix <= ix1 && ix < w; ix++) {
            double v = cache ? buf[(iy - iy0) * nx + ix - ix0] : lss__mm_halo_pixf(ix, iy, x, y, rs, rt, c, sub);
            if (accd) accd[(int64_t)iy * w + ix] += norm * v;
            else accf[(int64_t)iy * w + ix] += (float)(norm * v);
        }
}

LSSDEF int lss_mm_halo_paint(const lss_mm_halo_model *m, double mass, double z, double x, double y, int h, int w,
                             float *kappa, double *total, double *raw) {
    double chi;
    if (!m || !kappa) return lss_seterr(LSS_ERR_ARG, "lss_mm_halo_paint: NULL argument");
    if (h < 1 || w < 1 || !(mass > 0) || !isfinite(mass) || !(z > 0) || !(z <= 10) || !isfinite(x) || !isfinite(y) ||
        fabs(x) > 1e7 || fabs(y) > 1e7)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_halo_paint: bad halo (mass %g, z %g, centre %g, %g) or map %d x %d", mass, z, x, y, h, w);
    chi = lss_cosmo_chi(m->c, z);
    if (!(chi > 0)) return lss_seterr(LSS_ERR_NUMERIC, "lss_mm_halo_paint: distance %g at z = %g", chi, z);
    lss__mm_halo_stamp(m, mass, chi, z, x, y, h, w, NULL, kappa, total, raw);
    return LSS_OK;
}

/* Poisson(lam) by inversion of u (the pmf recursion for small means, lss_poisson_quantile above 30). */
static int64_t lss__mm_poisson_u(double u, double lam) {
    double p, f;
    int64_t k = 0;
    if (lam >= 30.0) return lss_poisson_quantile(u, lam);
    p = f = exp(-lam);
    while (u > f && k < 400) {
        k++;
        p *= lam / (double)k;
        f += p;
    }
    return k;
}

LSSDEF int lss_mm_halo_field(const lss_mm_halo_model *m, int h, int w, uint64_t seed, lss_set set, uint64_t index,
                             float *kappa) {
    const int ns = m ? m->o.nshells : 0, nm = m ? m->o.nmass : 0;
    int H, W, y0, x0, b, s = LSS_OK;
    int64_t i, n;
    float *fb = NULL;
    double *pk = NULL, *acc = NULL, mean = 0.0;
    uint64_t si;
    if (!m || !kappa) return lss_seterr(LSS_ERR_ARG, "lss_mm_halo_field: NULL argument");
    H = lss_grid_h(m->big);
    W = lss_grid_w(m->big);
    if (h < 2 || w < 2 || h > H || w > W)
        return lss_seterr(LSS_ERR_SHAPE, "lss_mm_halo_field: a %d x %d field does not fit the model's %d x %d grid", h, w, H, W);
    y0 = (H - h) / 2;
    x0 = (W - w) / 2;
    n = (int64_t)h * w;
    si = lss_set_index(set, index);
    fb = (float *)LSS_MALLOC(sizeof(float) * (size_t)H * (size_t)W);
    pk = (double *)LSS_MALLOC(sizeof(double) * (size_t)H * (size_t)W);
    acc = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
    if (!fb || !pk || !acc) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_halo_field: out of memory");
        goto done;
    }
    for (i = 0; i < n; i++) acc[i] = 0.0;
    for (b = 0; b < ns && s == LSS_OK; b++) {
        const double *cb = m->cnt + (int64_t)b * nm, *sb = m->slope + (int64_t)b * nm, *bb = m->bias + (int64_t)b * nm;
        double c1 = m->chi_e[b], c2 = m->chi_e[b + 1], dlm = m->lnm_e[1] - m->lnm_e[0], thr = -1.0 / m->bmax[b];
        int mg = (int)ceil(lss_mm_halo_r200m(m, exp(m->lnm_e[nm])) / c1 / m->pix_rad) + 1, ya, yb, xa, xb, iy, ix;
        lss_rng r;
        if (!m->o.no_bias) {
            s = lss_grid_spectrum(m->big, m->ell, m->cl_lin + (int64_t)b * m->nell, m->nell, pk);
            if (s == LSS_OK) s = lss_field_gaussian(m->big, pk, seed, lss_stream(LSS_STREAM_MM_FIELD, si, LSS_MM_SUB_HALO_DENSITY + (uint32_t)b), fb);
            if (s != LSS_OK) break;
        }
        if (mg > H + W) mg = H + W;
        ya = y0 - mg < 0 ? 0 : y0 - mg;
        yb = y0 + h + mg > H ? H : y0 + h + mg;
        xa = x0 - mg < 0 ? 0 : x0 - mg;
        xb = x0 + w + mg > W ? W : x0 + w + mg;
        lss_rng_for(&r, seed, LSS_STREAM_MM_FIELD, si, LSS_MM_SUB_HALO_CAT + (uint32_t)b);
        for (iy = ya; iy < yb; iy++)
            for (ix = xa; ix < xb; ix++) {
                double dl = m->o.no_bias ? 0.0 : (double)fb[(int64_t)iy * W + ix], lam = 0.0;
                int64_t k, nh;
                int j;
                if (dl >= thr) lam = m->ntot[b] + m->btot[b] * dl;  /* every 1 + b_j delta >= 0 (ST biases are > 0) */
                else
                    for (j = 0; j < nm; j++) lam += cb[j] * fmax(1.0 + bb[j] * dl, 0.0);
                nh = lss__mm_poisson_u(lss_rng_uniform(&r), lam);
                for (k = 0; k < nh; k++) {
                    double t = lss_rng_uniform(&r) * lam, acc_j = 0.0, v, lnm, chi, z, hx, hy;
                    for (j = 0; j < nm - 1; j++) {
                        acc_j += cb[j] * fmax(1.0 + bb[j] * dl, 0.0);
                        if (t < acc_j) break;
                    }
                    v = lss_rng_uniform(&r);
                    lnm = m->lnm_e[j] + (fabs(sb[j] * dlm) < 1e-8 ? v * dlm : log1p(v * expm1(sb[j] * dlm)) / sb[j]);
                    chi = cbrt(c1 * c1 * c1 + lss_rng_uniform(&r) * (c2 * c2 * c2 - c1 * c1 * c1));
                    z = lss_cosmo_z_of_chi(m->c, chi);
                    hx = ix + lss_rng_uniform(&r) - x0;
                    hy = iy + lss_rng_uniform(&r) - y0;
                    lss__mm_halo_stamp(m, exp(lnm), chi, z, hx, hy, h, w, acc, NULL, NULL, NULL);
                }
            }
    }
    if (s == LSS_OK && !m->o.no_smooth) {
        s = lss_field_gaussian(m->big, m->pk_smooth, seed, lss_stream(LSS_STREAM_MM_FIELD, si, LSS_MM_SUB_HALO_SMOOTH), fb);
        if (s == LSS_OK) {
            int y;
            for (y = 0; y < h; y++)
                for (i = 0; i < w; i++) acc[(int64_t)y * w + i] += fb[(int64_t)(y + y0) * W + x0 + i];
        }
    }
    if (s == LSS_OK) {
        for (i = 0; i < n; i++) mean += acc[i];
        mean /= (double)n;
        for (i = 0; i < n; i++) kappa[i] = (float)(acc[i] - mean);
    }
done:
    LSS_FREE(fb);
    LSS_FREE(pk);
    LSS_FREE(acc);
    return s;
}

/* ---- mock data sets */
LSSDEF uint64_t lss_mm_field_stream(lss_set set, uint64_t i) {
    return lss_stream(LSS_STREAM_MM_FIELD, lss_set_index(set, i), 0);
}

LSSDEF int lss_mm_field(const lss_grid *big, const double *pk_big, double lambda, int h, int w, uint64_t seed,
                        lss_set set, uint64_t i, float *kappa) {
    return lss_mm_mock_kappa(big, pk_big, lambda, h, w, seed, lss_mm_field_stream(set, i), kappa);
}

LSSDEF void lss_mm_mock_free(lss_mm_mock *m) {
    if (!m) return;
    LSS_FREE(m->kappa); LSS_FREE(m->shear); LSS_FREE(m->nvar); LSS_FREE(m->mask); LSS_FREE(m->count);
    LSS_FREE(m->ell); LSS_FREE(m->cl);
    lss_mm_catalogue_free(&m->cat);
    LSS_FREE(m);
}

static lss_mm_mock *lss__mm_mock_alloc(int h, int w, int K, int nell) {
    lss_mm_mock *m = (lss_mm_mock *)LSS_MALLOC(sizeof *m);
    int64_t np = (int64_t)h * w;
    if (!m) return NULL;
    memset(m, 0, sizeof *m);
    m->h = h;
    m->w = w;
    m->nfields = K;
    m->nell = nell;
    m->kappa = (float *)LSS_MALLOC(sizeof(float) * (size_t)(K * np));
    m->shear = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * K * np));
    m->nvar = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
    m->mask = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
    m->count = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
    m->ell = (double *)LSS_MALLOC(sizeof(double) * (size_t)nell);
    m->cl = (double *)LSS_MALLOC(sizeof(double) * (size_t)nell);
    if (!m->kappa || !m->shear || !m->nvar || !m->mask || !m->count || !m->ell || !m->cl) {
        lss_mm_mock_free(m);
        return NULL;
    }
    return m;
}

LSSDEF int lss_mm_mock_grid(const lss_mm_mock *m, int pad, lss_grid **g, double **pk) {
    int s;
    if (g) *g = NULL;
    if (pk) *pk = NULL;
    if (!m || !g || !pk || pad < 1 || pad > 64) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_grid: bad argument");
    if ((s = lss_grid_create(pad * m->h, pad * m->w, m->pix_arcmin, g)) != LSS_OK) return s;
    *pk = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(*g));
    if (!*pk) s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_grid: out of memory");
    else s = lss_grid_spectrum(*g, m->ell, m->cl, m->nell, *pk);
    if (s != LSS_OK) {
        LSS_FREE(*pk);
        lss_grid_free(*g);
        *pk = NULL;
        *g = NULL;
    }
    return s;
}

LSSDEF int lss_mm_mock_create(const lss_mm_mock_opts *o, lss_mm_mock **out) {
    lss_mm_mock_opts d;
    lss_mm_mock *m;
    lss_grid *g = NULL, *big = NULL;
    double *pkb = NULL;
    int s, f, k;
    int64_t np;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_create: out is NULL");
    *out = NULL;
    memset(&d, 0, sizeof d);
    if (o) d = *o;
    if (d.size == 0) d.size = 64;
    if (d.nfields == 0) d.nfields = 4;
    if (d.pad == 0) d.pad = 2;
    if (d.pix_arcmin == 0) d.pix_arcmin = LSS_MM_COSMOS_PIX_ARCMIN;
    if (d.nell == 0) d.nell = 200;
    if (d.size < 8 || d.size > 4096 || d.nfields < 1 || d.nfields > 100000 || d.pad < 1 || d.pad > 8 || d.nell < 2 ||
        d.nell > 100000 || !(d.pix_arcmin > 0) || d.pix_arcmin > 60 || d.shift < 0 || !isfinite(d.shift))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_mock_create: bad options (size %d, fields %d, pad %d, pixel %g, shift %g)",
                          d.size, d.nfields, d.pad, d.pix_arcmin, d.shift);
    if (d.model != LSS_MM_MODEL_LOGNORMAL && d.model != LSS_MM_MODEL_HALO)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_mock_create: unknown model %d (0 lognormal, 1 halo)", d.model);
    if (d.gaussian) d.shift = 0;
    else if (d.shift == 0 && (s = lss_mm_theory_kappa_empty(NULL, "cosmos", &d.shift)) != LSS_OK) return s;
    if (!(m = lss__mm_mock_alloc(d.size, d.size, d.nfields, d.nell))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_create: out of memory");
    m->pix_arcmin = d.pix_arcmin;
    m->shift = d.shift;
    m->seed = d.seed;
    m->model = d.model;
    np = (int64_t)d.size * d.size;
    for (k = 0; k < d.nell; k++) m->ell[k] = pow(10.0, 0.5 + 5.0 * k / (d.nell - 1));
    s = lss_mm_theory_ckk(NULL, "cosmos", d.nell, m->ell, m->cl);
    if (s == LSS_OK) s = lss_grid_create(d.size, d.size, d.pix_arcmin, &g);
    if (s == LSS_OK) s = lss_mm_mock_grid(m, d.pad, &big, &pkb);
    if (s == LSS_OK) s = lss_mm_mock_mask(d.size, d.size, &d.survey, d.seed, m->mask);
    if (s == LSS_OK) s = lss_mm_mock_noise_map(g, m->mask, &d.survey, d.seed, m->count, m->nvar);
    if (s == LSS_OK && d.model == LSS_MM_MODEL_HALO) {
        /* halo fields: one per thread (each a pure function of its index) */
        lss_mm_halo_model *hm = NULL;
        lss_mm_halo_opts ho;
        memset(&ho, 0, sizeof ho);
        ho.size = d.size;
        ho.pad = d.pad;
        ho.pix_arcmin = d.pix_arcmin;
        s = lss_mm_halo_create(&ho, &hm);
        if (s == LSS_OK) s = lss__mm_halo_fields(hm, d.size, d.size, d.seed, LSS_SET_TEST, 0, d.nfields, m->kappa);
        lss_mm_halo_free(hm);
    }
    for (f = 0; f < d.nfields && s == LSS_OK; f++) {
        if (d.model == LSS_MM_MODEL_LOGNORMAL)
            s = lss_mm_field(big, pkb, d.shift, d.size, d.size, d.seed, LSS_SET_TEST, (uint64_t)f, m->kappa + f * np);
        if (s == LSS_OK)
            s = lss_mm_mock_shear(g, m->kappa + f * np, m->nvar, d.seed, lss_stream(LSS_STREAM_MM_NOISE, lss_set_index(LSS_SET_TEST, (uint64_t)f), 0),
                                  m->shear + 2 * f * np, m->shear + (2 * f + 1) * np);
    }
    if (s == LSS_OK && d.catalogue) {
        double se = d.survey.sigma_e > 0 ? d.survey.sigma_e : LSS_MM_COSMOS_SIGMA_E;
        int64_t ng = 0, i, q, j = 0;
        float *g1 = (float *)LSS_MALLOC(sizeof(float) * (size_t)np), *g2 = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
        lss_rng r;
        for (i = 0; i < np; i++) ng += (int64_t)m->count[i];
        if (!g1 || !g2) s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_create: out of memory");
        if (s == LSS_OK) s = lss__mm_cat_alloc(&m->cat, ng);
        if (s == LSS_OK) s = lss_mm_kappa_to_shear(g, m->kappa, NULL, g1, g2);
        if (s == LSS_OK) {
            lss_rng_for(&r, d.seed, LSS_STREAM_MM_NOISE, lss_set_index(LSS_SET_TEST, 0), LSS_MM_SUB_CATALOGUE);
            for (i = 0; i < np; i++)
                for (q = 0; q < (int64_t)m->count[i]; q++, j++) {
                    m->cat.x[j] = (double)(i % d.size) + lss_rng_uniform(&r);
                    m->cat.y[j] = (double)(i / d.size) + lss_rng_uniform(&r);
                    m->cat.e1[j] = g1[i] + se * lss_rng_normal(&r);
                    m->cat.e2[j] = g2[i] + se * lss_rng_normal(&r);
                    m->cat.w[j] = 1.0;
                }
        }
        LSS_FREE(g1);
        LSS_FREE(g2);
    }
    lss_grid_free(g);
    lss_grid_free(big);
    LSS_FREE(pkb);
    if (s != LSS_OK) {
        lss_mm_mock_free(m);
        return s;
    }
    *out = m;
    return LSS_OK;
}

static int lss__mm_path(char *buf, size_t n, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, n, "%s/%s", dir, name) >= n) return lss_seterr(LSS_ERR_ARG, "path %s/%s is too long", dir, name);
    return LSS_OK;
}

LSSDEF int lss_mm_mock_save(const lss_mm_mock *m, const char *dir) {
    char p[4096];
    int64_t s3[3], s4[4], s2[2];
    int s, k;
    double *d;
    if (!m || !dir) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_save: NULL argument");
    s3[0] = m->nfields; s3[1] = m->h; s3[2] = m->w;
    s4[0] = m->nfields; s4[1] = 2; s4[2] = m->h; s4[3] = m->w;
    s2[0] = m->h; s2[1] = m->w;
    if ((s = lss__mm_path(p, sizeof p, dir, "kappa.npy")) || (s = lss_npy_save(p, LSS_F32, 3, s3, m->kappa))) return s;
    if ((s = lss__mm_path(p, sizeof p, dir, "shear.npy")) || (s = lss_npy_save(p, LSS_F32, 4, s4, m->shear))) return s;
    if ((s = lss__mm_path(p, sizeof p, dir, "noise_var.npy")) || (s = lss_npy_save(p, LSS_F32, 2, s2, m->nvar))) return s;
    if ((s = lss__mm_path(p, sizeof p, dir, "mask.npy")) || (s = lss_npy_save(p, LSS_F32, 2, s2, m->mask))) return s;
    if ((s = lss__mm_path(p, sizeof p, dir, "count.npy")) || (s = lss_npy_save(p, LSS_F32, 2, s2, m->count))) return s;
    {
        const char *hd[7] = {"h", "w", "pixel_arcmin", "shift", "nfields", "seed", "model"};
        double row[7];
        row[0] = m->h; row[1] = m->w; row[2] = m->pix_arcmin; row[3] = m->shift; row[4] = m->nfields; row[5] = (double)m->seed;
        row[6] = m->model;
        if ((s = lss__mm_path(p, sizeof p, dir, "grid.csv")) || (s = lss_csv_write(p, 7, hd, 1, row))) return s;
    }
    if (!(d = (double *)LSS_MALLOC(sizeof(double) * (size_t)(4 * (m->nell > m->cat.n ? m->nell : m->cat.n) + 4))))
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_save: out of memory");
    {
        const char *hd[2] = {"ell", "cl"};
        for (k = 0; k < m->nell; k++) d[2 * k] = m->ell[k], d[2 * k + 1] = m->cl[k];
        if ((s = lss__mm_path(p, sizeof p, dir, "ps.csv")) == LSS_OK) s = lss_csv_write(p, 2, hd, m->nell, d);
    }
    if (s == LSS_OK && m->cat.n > 0) {
        const char *hd[4] = {"x", "y", "e1", "e2"};
        int64_t j;
        for (j = 0; j < m->cat.n; j++) d[4 * j] = m->cat.x[j], d[4 * j + 1] = m->cat.y[j], d[4 * j + 2] = m->cat.e1[j], d[4 * j + 3] = m->cat.e2[j];
        if ((s = lss__mm_path(p, sizeof p, dir, "catalogue.csv")) == LSS_OK) s = lss_csv_write(p, 4, hd, m->cat.n, d);
    }
    LSS_FREE(d);
    return s;
}

/* Loads NPY dir/name as float with the expected shape (ndim entries of want). */
static int lss__mm_load_arr(const char *dir, const char *name, int ndim, const int64_t *want, float **out) {
    char p[4096];
    int nd, s, k;
    int64_t sh[LSS_MAX_DIM];
    *out = NULL;
    if ((s = lss__mm_path(p, sizeof p, dir, name)) != LSS_OK) return s;
    if ((s = lss_npy_load_f32(p, out, &nd, sh)) != LSS_OK) return s;
    for (k = 0; k < ndim && nd == ndim; k++)
        if (sh[k] != want[k]) break;
    if (nd != ndim || k < ndim) {
        LSS_FREE(*out);
        *out = NULL;
        return lss_seterr(LSS_ERR_SHAPE, "%s: the array's shape does not match grid.csv", p);
    }
    return LSS_OK;
}

LSSDEF int lss_mm_mock_load(const char *dir, lss_mm_mock **out) {
    char p[4096];
    lss_csv c;
    lss_mm_mock *m;
    int s, h, w, K, ce, cc, k;
    int64_t i, s2[2], s3[3], s4[4];
    double pix, shift, model;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_load: out is NULL");
    *out = NULL;
    if (!dir) return lss_seterr(LSS_ERR_ARG, "lss_mm_mock_load: NULL directory");
    if ((s = lss__mm_path(p, sizeof p, dir, "grid.csv")) || (s = lss_csv_read(p, &c))) return s;
    if (c.nrows < 1 || lss_csv_col(&c, "h") < 0 || lss_csv_col(&c, "w") < 0 || lss_csv_col(&c, "pixel_arcmin") < 0 ||
        lss_csv_col(&c, "nfields") < 0) {
        lss_csv_free(&c);
        return lss_seterr(LSS_ERR_FORMAT, "%s: needs columns h, w, pixel_arcmin, nfields", p);
    }
    {
        /* every value range-checked as a double before it becomes an integer (NaN, 1e300, 2.5 are errors) */
        static const char *const key[4] = {"h", "w", "nfields", "seed"};
        static const double hi[4] = {32768, 32768, 100000, 18446744073709551615.0};
        double v[4];
        for (k = 0; k < 4; k++) {
            int col = lss_csv_col(&c, key[k]);
            v[k] = col >= 0 ? c.data[col] : 0.0;
            if (!(v[k] >= (k < 2 ? 2 : k == 2 ? 1 : 0) && v[k] <= hi[k]) || v[k] != floor(v[k]) || (k == 3 && v[k] >= hi[3])) {
                double bad = v[k];
                lss_csv_free(&c);
                return lss_seterr(LSS_ERR_FORMAT, "%s: %s = %g is not an integer in [%d, %.0f]", p, key[k], bad, k < 2 ? 2 : k == 2 ? 1 : 0, hi[k]);
            }
        }
        h = (int)v[0];
        w = (int)v[1];
        K = (int)v[2];
        i = (int64_t)(uint64_t)v[3];
    }
    pix = c.data[lss_csv_col(&c, "pixel_arcmin")];
    shift = lss_csv_col(&c, "shift") >= 0 ? c.data[lss_csv_col(&c, "shift")] : 0.0;
    model = lss_csv_col(&c, "model") >= 0 ? c.data[lss_csv_col(&c, "model")] : 0.0;  /* files before the column: lognormal */
    lss_csv_free(&c);
    if (model != LSS_MM_MODEL_LOGNORMAL && model != LSS_MM_MODEL_HALO)
        return lss_seterr(LSS_ERR_FORMAT, "%s: model = %g (need 0 lognormal or 1 halo)", p, model);
    if (!(pix > 0) || !(pix <= 600) || !(shift >= 0) || !(shift <= 1e3))
        return lss_seterr(LSS_ERR_FORMAT, "%s: pixel_arcmin = %g (need (0, 600]) or shift = %g (need [0, 1000])", p, pix, shift);
    if ((int64_t)K * h * w > ((int64_t)1 << 28))
        return lss_seterr(LSS_ERR_RANGE, "%s: %d fields of %d x %d pixels (%.3g GB of maps) exceed the 2^28 pixels a mock may hold", p, K, h, w,
                          16.0 * K * h * w / 1e9);
    {
        /* the files must hold those fields before anything is allocated for them */
        FILE *f;
        int64_t sz;
        if ((s = lss__mm_path(p, sizeof p, dir, "shear.npy")) != LSS_OK || (s = lss_fopen_read(p, &f, &sz)) != LSS_OK) return s;
        fclose(f);
        if (sz >= 0 && sz < (int64_t)K * 2 * h * w * 4)
            return lss_seterr(LSS_ERR_FORMAT, "%s: %lld bytes cannot hold the %d fields of [2, %d, %d] float32 that grid.csv announces", p,
                              (long long)sz, K, h, w);
    }
    if ((s = lss__mm_path(p, sizeof p, dir, "ps.csv")) || (s = lss_csv_read(p, &c))) return s;
    ce = lss_csv_col(&c, "ell");
    cc = lss_csv_col(&c, "cl");
    if (ce < 0 || cc < 0 || c.nrows < 2) {
        lss_csv_free(&c);
        return lss_seterr(LSS_ERR_FORMAT, "%s: needs columns ell and cl and at least 2 rows", p);
    }
    if (!(m = lss__mm_mock_alloc(h, w, K, (int)c.nrows))) {
        lss_csv_free(&c);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_load: out of memory");
    }
    for (k = 0; k < m->nell; k++) m->ell[k] = c.data[(int64_t)k * c.ncols + ce], m->cl[k] = c.data[(int64_t)k * c.ncols + cc];
    lss_csv_free(&c);
    m->pix_arcmin = pix;
    m->shift = shift;
    m->model = (int)model;
    m->seed = (uint64_t)i;
    s2[0] = h; s2[1] = w;
    s3[0] = K; s3[1] = h; s3[2] = w;
    s4[0] = K; s4[1] = 2; s4[2] = h; s4[3] = w;
    LSS_FREE(m->kappa); LSS_FREE(m->shear); LSS_FREE(m->nvar); LSS_FREE(m->mask); LSS_FREE(m->count);
    m->kappa = m->shear = m->nvar = m->mask = m->count = NULL;
    if ((s = lss__mm_load_arr(dir, "kappa.npy", 3, s3, &m->kappa)) || (s = lss__mm_load_arr(dir, "shear.npy", 4, s4, &m->shear)) ||
        (s = lss__mm_load_arr(dir, "noise_var.npy", 2, s2, &m->nvar)) || (s = lss__mm_load_arr(dir, "mask.npy", 2, s2, &m->mask))) {
        lss_mm_mock_free(m);
        return s;
    }
    if (lss__mm_load_arr(dir, "count.npy", 2, s2, &m->count) != LSS_OK) {
        /* counts are optional: the data need only the noise variance */
        if (!(m->count = (float *)LSS_MALLOC(sizeof(float) * (size_t)(h * w)))) {
            lss_mm_mock_free(m);
            return lss_seterr(LSS_ERR_NOMEM, "lss_mm_mock_load: out of memory");
        }
        memset(m->count, 0, sizeof(float) * (size_t)(h * w));
    }
    for (i = 0; i < (int64_t)h * w; i++)
        if (!(m->nvar[i] > 0) || !isfinite(m->nvar[i])) {
            lss_mm_mock_free(m);
            return lss_seterr(LSS_ERR_FORMAT, "%s/noise_var.npy: pixel %lld is not > 0", dir, (long long)i);
        }
    *out = m;
    return LSS_OK;
}

/* The training options of maps drawn like mock m's fields: *d = *to with its grid twice the mock's (*big, *pkb), its
 * shift and noise and, for a halo mock, a halo model of the default options at its pixel (*hm, else NULL). */
static int lss__mm_mock_setup(const lss_mm_mock *m, const lss_mm_train_opts *to, lss_mm_train_opts *d, lss_grid **big, double **pkb,
                              lss_mm_halo_model **hm) {
    int s = lss_mm_mock_grid(m, 2, big, pkb);
    *hm = NULL;
    if (s == LSS_OK && m->model == LSS_MM_MODEL_HALO) {
        lss_mm_halo_opts ho;
        memset(&ho, 0, sizeof ho);
        ho.size = m->h > m->w ? m->h : m->w;
        ho.pix_arcmin = m->pix_arcmin;
        s = lss_mm_halo_create(&ho, hm);
    }
    *d = *to;
    d->big = *big;
    d->pk_big = *pkb;
    d->lambda = m->shift;
    d->nvar = m->nvar;
    if (*hm) d->halo = *hm;
    return s;
}

LSSDEF int lss_mm_train_on_mock(const lss_grid *g, const lss_mm_mock *m, const lss_mm_net_opts *no,
                                const lss_mm_train_opts *to, lss_mm_train_result *res, lss_mm_net **out) {
    lss_grid *big = NULL;
    double *pk = NULL, *pkb = NULL;
    lss_mm_train_opts d;
    lss_mm_net *net = NULL;
    lss_mm_halo_model *hm = NULL;
    float *bank = NULL;
    int s;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_train_on_mock: out is NULL");
    *out = NULL;
    if (!g || !m || !to) return lss_seterr(LSS_ERR_ARG, "lss_mm_train_on_mock: NULL argument");
    if (lss_grid_h(g) != m->h || lss_grid_w(g) != m->w) return lss_seterr(LSS_ERR_SHAPE, "lss_mm_train_on_mock: the grid is not the mock's");
    if (!(pk = (double *)LSS_MALLOC(sizeof(double) * (size_t)lss_grid_npix(g)))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_train_on_mock: out of memory");
    s = lss_grid_spectrum(g, m->ell, m->cl, m->nell, pk);
    if (s == LSS_OK) s = lss_mm_net_create(g, pk, no, &net);
    if (s == LSS_OK) s = lss__mm_mock_setup(m, to, &d, &big, &pkb, &hm);
    if (s == LSS_OK) {
        if (!net->o.deepmass && d.sigma_min == 0 && d.sigma_max == 0 && d.sigma_mix >= 0)
            lss_mm_sampler_sigma_range((int64_t)m->h * m->w, m->nvar, &d.sigma_min, &d.sigma_max);
        if (hm && !d.bank && d.nbank > 0) { /* the training maps drawn once, in parallel */
            int64_t np = (int64_t)m->h * m->w;
            if (!(bank = (float *)LSS_MALLOC(sizeof(float) * (size_t)(np * d.nbank))))
                s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_train_on_mock: out of memory for a bank of %lld maps", (long long)d.nbank);
            else {
                s = lss__mm_halo_fields(hm, m->h, m->w, d.seed, LSS_SET_TRAIN, 0, d.nbank, bank);
                d.bank = bank;
            }
        }
        if (s == LSS_OK) s = lss_mm_net_train(net, &d, res);
    }
    LSS_FREE(bank);
    lss_mm_halo_free(hm);
    lss_grid_free(big);
    LSS_FREE(pk);
    LSS_FREE(pkb);
    if (s != LSS_OK) {
        lss_mm_net_free(net);
        return s;
    }
    *out = net;
    return LSS_OK;
}

LSSDEF int lss_mm_heldout_sigma_on_mock(lss_mm_net *net, const lss_mm_mock *m, const lss_mm_train_opts *to, int nbatch, int nsig,
                                        const double *sigmas, double *loss_gauss, double *loss_net, double *se_diff) {
    lss_grid *big = NULL;
    double *pkb = NULL;
    lss_mm_halo_model *hm = NULL;
    lss_mm_train_opts d;
    int s;
    if (!net || !m || !to) return lss_seterr(LSS_ERR_ARG, "lss_mm_heldout_sigma_on_mock: NULL argument");
    if ((s = lss__mm_mock_setup(m, to, &d, &big, &pkb, &hm)) == LSS_OK) {
        d.bank = NULL;
        d.nbank = 0;
        s = lss_mm_net_heldout_sigma(net, &d, nbatch, nsig, sigmas, loss_gauss, loss_net, se_diff);
    }
    lss_mm_halo_free(hm);
    lss_grid_free(big);
    LSS_FREE(pkb);
    return s;
}

/* ---- evaluation */
LSSDEF void lss_mm_eval_free(lss_mm_eval_result *r) {
    if (!r) return;
    LSS_FREE(r->rmse); LSS_FREE(r->r); LSS_FREE(r->rmse_raw); LSS_FREE(r->ell); LSS_FREE(r->cl_theory); LSS_FREE(r->cl_truth);
    LSS_FREE(r->cl_sims_mean); LSS_FREE(r->cl_sims_std); LSS_FREE(r->cl_samples_mean); LSS_FREE(r->cl_samples_std);
    LSS_FREE(r->cl_wiener); LSS_FREE(r->cl_post_mean); LSS_FREE(r->frac_within_2sigma);
    LSS_FREE(r->truth); LSS_FREE(r->ks); LSS_FREE(r->wiener); LSS_FREE(r->post_mean); LSS_FREE(r->post_std);
    LSS_FREE(r->samples); LSS_FREE(r->deepmass);
    LSS_FREE(r);
}

#define LSS__MM_NEWD(n) (double *)LSS_MALLOC(sizeof(double) * (size_t)(n))
#define LSS__MM_NEWF(n) (float *)LSS_MALLOC(sizeof(float) * (size_t)(n))

/* Pearson r of a Monte Carlo estimate `mean` with the noise variance mc per pixel removed: the noise adds mc to the
 * estimate's variance over the observed pixels and nothing to its covariance with the truth, so r / sqrt(1 - mc /
 * var(mean)) (at most 1). */
static double lss__mm_r_mc(int64_t np, const float *mean, const float *mask, double mc, double r) {
    double me = 0, ve = 0, no = 0;
    int64_t i;
    for (i = 0; i < np; i++)
        if (mask[i] > 0) me += mean[i], no++;
    if (!(no > 0) || !isfinite(r)) return r;
    me /= no;
    for (i = 0; i < np; i++)
        if (mask[i] > 0) ve += (mean[i] - me) * (mean[i] - me);
    ve /= no;
    if (ve > 0) r /= sqrt(fmax(1.0 - mc / ve, 1e-6));
    return r > 1 ? 1 : r;
}

/* The posterior mean of ns samples into mean (and the std when sd != NULL), its metrics, and its RMSE with the
 * Monte Carlo term removed: MSE - vbar / ns, vbar the mean over observed pixels of the samples' variance (ddof 1). */
static int lss__mm_eval_post(int64_t np, int ns, const float *smp, float *mean, float *sd, const float *truth, const float *mask,
                             double *rmse, double *rmse_raw, double *r) {
    int s = lss_mm_mean_std(ns, np, smp, mean, sd);
    double vb = 0, nobs = 0;
    int64_t i;
    int k;
    if (s == LSS_OK) s = lss_mm_metrics(np, mean, truth, mask, rmse_raw, r);
    if (s != LSS_OK) return s;
    for (i = 0; i < np; i++) {
        double v = 0;
        if (!(mask[i] > 0)) continue;
        for (k = 0; k < ns; k++) v += ((double)smp[(int64_t)k * np + i] - mean[i]) * ((double)smp[(int64_t)k * np + i] - mean[i]);
        vb += v / (ns - 1);
        nobs++;
    }
    vb = nobs > 0 ? vb / nobs : 0;
    *rmse = sqrt(fmax(*rmse_raw * *rmse_raw - vb / ns, 0));
    *r = lss__mm_r_mc(np, mean, mask, vb / ns, *r);
    return LSS_OK;
}

LSSDEF int lss_mm_eval(const lss_mm_mock *m, const lss_mm_eval_opts *o, lss_mm_eval_result **out) {
    lss_mm_eval_opts d;
    lss_mm_eval_result *R;
    lss_grid *g = NULL, *big = NULL;
    double *pk = NULL, *pkb = NULL, *edges = NULL, *cl_sim = NULL, *cl_smp = NULL;
    float *smp = NULL, *sim = NULL, *est = NULL;
    int s = LSS_OK, f, k, q, best = 0, nf, nb, ns, nsim;
    int64_t np;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_eval: out is NULL");
    *out = NULL;
    if (!m || !o) return lss_seterr(LSS_ERR_ARG, "lss_mm_eval: NULL argument");
    d = *o;
    nf = d.nfields > 0 && d.nfields < m->nfields ? d.nfields : m->nfields;
    ns = d.nsamples ? d.nsamples : 16;
    nb = d.nbins ? d.nbins : LSS_MM_SPECTRUM_BINS;
    nsim = d.nsims ? d.nsims : 32;
    if (d.batch == 0) d.batch = 16;
    if (ns < 2 || nb < 1 || nsim < 2 || d.batch < 1 || d.nfields < 0 || nf >= (int)LSS_MM_SUB_WIENER_SIGNAL)
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_eval: need nsamples >= 2, nsims >= 2, nbins >= 1, batch >= 1 (got %d, %d, %d, %d)", ns, nsim, nb, d.batch);
    if (d.exact < 0 || (d.exact > 0 && m->model != LSS_MM_MODEL_LOGNORMAL))
        return lss_seterr(d.exact < 0 ? LSS_ERR_RANGE : LSS_ERR_UNSUPPORTED,
                          "lss_mm_eval: the exact posterior (%d iterations) needs a lognormal or Gaussian mock, whose generator it inverts; "
                          "this mock's model is %s", d.exact, m->model == LSS_MM_MODEL_HALO ? "the halo model" : "lognormal");
    np = (int64_t)m->h * m->w;
    /* the data first (before minutes of simulations): every field evaluated must hold signal where observed */
    for (f = 0; f < nf; f++) {
        const float *t = m->kappa + (int64_t)f * np;
        float lo = INFINITY, hi = -INFINITY;
        int64_t i, nobs = 0;
        for (i = 0; i < np; i++)
            if (m->mask[i] > 0) {
                nobs++;
                if (t[i] < lo) lo = t[i];
                if (t[i] > hi) hi = t[i];
            }
        if (nobs < 2) return lss_seterr(LSS_ERR_RANGE, "lss_mm_eval: the mask has %lld observed pixels (2 or more are needed)", (long long)nobs);
        if (!(hi > lo))
            return lss_seterr(LSS_ERR_RANGE, "lss_mm_eval: field %d of the mock has a constant convergence (%g) over its observed pixels: "
                              "no signal for Table 1", f, (double)lo);
    }
    R = (lss_mm_eval_result *)LSS_MALLOC(sizeof *R);
    if (!R) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_eval: out of memory");
    memset(R, 0, sizeof *R);
    R->nfields = nf; R->nsamples = ns; R->nbins = nb; R->h = m->h; R->w = m->w;
    R->ran[LSS_MM_METHOD_KS] = R->ran[LSS_MM_METHOD_WIENER] = R->ran[LSS_MM_METHOD_POSTERIOR] = 1;
    R->ran[LSS_MM_METHOD_DEEPMASS] = d.deepmass != NULL;
    R->ran[LSS_MM_METHOD_POSTERIOR_GAUSS] = d.prior != NULL;
    R->ran[LSS_MM_METHOD_EXACT] = d.exact > 0;
    R->nmethods = 3 + R->ran[LSS_MM_METHOD_DEEPMASS] + R->ran[LSS_MM_METHOD_POSTERIOR_GAUSS] + R->ran[LSS_MM_METHOD_EXACT];
    R->nsample_maps = ns < 3 ? ns : 3;
    R->rmse = LSS__MM_NEWD(nf * LSS_MM_NMETHODS); R->r = LSS__MM_NEWD(nf * LSS_MM_NMETHODS);
    R->rmse_raw = LSS__MM_NEWD(nf * LSS_MM_NMETHODS);
    R->ell = LSS__MM_NEWD(nb); R->cl_theory = LSS__MM_NEWD(nb); R->cl_truth = LSS__MM_NEWD(nb);
    R->cl_sims_mean = LSS__MM_NEWD(nb); R->cl_sims_std = LSS__MM_NEWD(nb); R->cl_samples_mean = LSS__MM_NEWD(nb);
    R->cl_samples_std = LSS__MM_NEWD(nb); R->cl_wiener = LSS__MM_NEWD(nb); R->cl_post_mean = LSS__MM_NEWD(nb);
    R->frac_within_2sigma = LSS__MM_NEWD(nb);
    R->truth = LSS__MM_NEWF(np); R->ks = LSS__MM_NEWF(np); R->wiener = LSS__MM_NEWF(np); R->post_mean = LSS__MM_NEWF(np);
    R->post_std = LSS__MM_NEWF(np); R->samples = LSS__MM_NEWF(R->nsample_maps * np);
    if (d.deepmass) R->deepmass = LSS__MM_NEWF(np);
    edges = LSS__MM_NEWD(nb + 1); cl_sim = LSS__MM_NEWD((int64_t)nsim * nb); cl_smp = LSS__MM_NEWD((int64_t)ns * nb);
    smp = LSS__MM_NEWF((int64_t)ns * np); sim = LSS__MM_NEWF(np); est = LSS__MM_NEWF(2 * np);
    if (!R->rmse || !R->r || !R->rmse_raw || !R->ell || !R->cl_theory || !R->cl_truth || !R->cl_sims_mean || !R->cl_sims_std ||
        !R->cl_samples_mean || !R->cl_samples_std || !R->cl_wiener || !R->cl_post_mean || !R->frac_within_2sigma ||
        !R->truth || !R->ks || !R->wiener || !R->post_mean || !R->post_std || !R->samples || (d.deepmass && !R->deepmass) ||
        !edges || !cl_sim || !cl_smp || !smp || !sim || !est) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_eval: out of memory");
        goto done;
    }
    for (k = 0; k < nf * LSS_MM_NMETHODS; k++) R->rmse[k] = R->r[k] = R->rmse_raw[k] = NAN;
    if ((s = lss_mm_mock_grid(m, 1, &g, &pk)) || (s = lss_mm_mock_grid(m, 2, &big, &pkb))) goto done;
    if ((s = lss_mm_ks_best(g, nf, m->shear, m->kappa, m->mask, LSS_MM_KS_NSCALES, lss_mm_ks_scales(), NULL, &best))) goto done;
    R->ks_smoothing = lss_mm_ks_scales()[best];
    if (d.sample.sigma_min == 0) d.sample.sigma_min = lss_mm_auto_sigma_min(np, m->nvar);
    R->sigma_min = d.sample.sigma_min;
    /* figure 6: the prior's spectra from simulations of the fiducial set (never the mock's fields) */
    if ((s = lss_grid_ps_edges(g, nb, edges))) goto done;
    for (q = 0; q < nsim && s == LSS_OK; q++) {
        s = lss_mm_field(big, pkb, m->shift, m->h, m->w, m->seed, LSS_SET_FIDUCIAL, (uint64_t)q, sim);
        if (s == LSS_OK) s = lss_grid_ps(g, sim, NULL, edges, nb, R->ell, cl_sim + (int64_t)q * nb);
    }
    if (s == LSS_OK) s = lss_grid_bin_spectrum(g, pk, edges, nb, R->cl_theory);
    for (f = 0; f < nf && s == LSS_OK; f++) {
        lss_mm_post *post = NULL;
        lss_mm_sample_stats st;
        const float *g1 = m->shear + 2 * f * np, *g2 = m->shear + (2 * f + 1) * np, *truth = m->kappa + f * np;
        double *rm = R->rmse + f * LSS_MM_NMETHODS, *rr = R->r + f * LSS_MM_NMETHODS;
        float *ks = est, *wf = est + np;
        if (d.progress) d.progress(d.progress_user, f, nf);
        if ((s = lss_mm_ks(g, g1, g2, R->ks_smoothing, ks, NULL)) ||
            (s = lss_mm_metrics(np, ks, truth, m->mask, &rm[LSS_MM_METHOD_KS], &rr[LSS_MM_METHOD_KS])) ||
            (s = lss_mm_wiener(g, pk, g1, g2, m->nvar, NULL, wf, NULL, NULL)) ||
            (s = lss_mm_metrics(np, wf, truth, m->mask, &rm[LSS_MM_METHOD_WIENER], &rr[LSS_MM_METHOD_WIENER])))
            break;
        if (f == 0) {
            memcpy(R->truth, truth, sizeof(float) * (size_t)np);
            memcpy(R->ks, ks, sizeof(float) * (size_t)np);
            memcpy(R->wiener, wf, sizeof(float) * (size_t)np);
        }
        if (d.deepmass) {
            if ((s = lss_mm_net_deepmass(d.deepmass, g1, g2, ks)) ||
                (s = lss_mm_metrics(np, ks, truth, m->mask, &rm[LSS_MM_METHOD_DEEPMASS], &rr[LSS_MM_METHOD_DEEPMASS])))
                break;
            if (f == 0) memcpy(R->deepmass, ks, sizeof(float) * (size_t)np);
        }
        if (d.exact > 0) { /* the exact posterior mean of the mock's model: the ceiling */
            lss_mm_exact_opts eo = d.exact_opts;
            lss_mm_exact_stats es;
            double raw;
            eo.iters = d.exact;
            eo.seed = d.sample.seed;
            eo.job = (uint32_t)f;
            if ((s = lss_mm_exact_lognormal(big, pkb, m->shift, g, g1, g2, m->nvar, &eo, ks, NULL, &es)) ||
                (s = lss_mm_metrics(np, ks, truth, m->mask, &raw, &rr[LSS_MM_METHOD_EXACT])))
                break;
            R->rmse_raw[f * LSS_MM_NMETHODS + LSS_MM_METHOD_EXACT] = raw;
            rm[LSS_MM_METHOD_EXACT] = sqrt(fmax(raw * raw - es.mc_var, 0));
            rr[LSS_MM_METHOD_EXACT] = lss__mm_r_mc(np, ks, m->mask, es.mc_var, rr[LSS_MM_METHOD_EXACT]);
            R->exact_cost.accept += es.accept / nf;
            R->exact_cost.step += es.step / nf;
            R->exact_cost.mc_var += es.mc_var / nf;
            R->exact_cost.seconds += es.seconds;
        }
        if ((s = lss_mm_post_create(g, pk, g1, g2, m->nvar, &post))) break;
        if (d.prior) { /* the Gaussian-prior control first, from the same chains' random numbers */
            lss_mm_sample_opts so = d.sample;
            so.job = (uint32_t)f;
            so.progress = NULL;
            s = lss_mm_sample_batched(post, &so, ns, d.batch, smp, &st);
            if (s == LSS_OK) s = lss__mm_eval_post(np, ns, smp, ks, NULL, truth, m->mask, &rm[LSS_MM_METHOD_POSTERIOR_GAUSS],
                                                   &R->rmse_raw[f * LSS_MM_NMETHODS + LSS_MM_METHOD_POSTERIOR_GAUSS],
                                                   &rr[LSS_MM_METHOD_POSTERIOR_GAUSS]);
            if (s == LSS_OK) lss_mm_post_set_residual(post, lss_mm_net_residual, d.prior);
        }
        if (s == LSS_OK) {
            lss_mm_sample_opts so = d.sample;
            so.job = (uint32_t)f;
            so.progress = NULL;
            s = lss_mm_sample_batched(post, &so, ns, d.batch, smp, &st);
        }
        lss_mm_post_free(post);
        if (s == LSS_OK) s = lss__mm_eval_post(np, ns, smp, ks, f == 0 ? R->post_std : NULL, truth, m->mask, &rm[LSS_MM_METHOD_POSTERIOR],
                                               &R->rmse_raw[f * LSS_MM_NMETHODS + LSS_MM_METHOD_POSTERIOR], &rr[LSS_MM_METHOD_POSTERIOR]);
        if (s != LSS_OK) break;
        R->cost.evals_per_chain += st.evals_per_chain / nf;
        R->cost.accept_rate += st.accept_rate / nf;
        R->cost.seconds += st.seconds;
        R->cost.levels = st.levels;
        R->cost.hmc_steps = st.hmc_steps;
        if (f == 0) {
            memcpy(R->samples, smp, sizeof(float) * (size_t)(R->nsample_maps * np));
            for (k = 0; k < ns && s == LSS_OK; k++) s = lss_grid_ps(g, smp + (int64_t)k * np, NULL, edges, nb, NULL, cl_smp + (int64_t)k * nb);
            if (s == LSS_OK) s = lss_grid_ps(g, truth, NULL, edges, nb, NULL, R->cl_truth);
            if (s == LSS_OK) s = lss_grid_ps(g, wf, NULL, edges, nb, NULL, R->cl_wiener);
            if (s == LSS_OK) s = lss_grid_ps(g, ks, NULL, edges, nb, NULL, R->cl_post_mean);
            memcpy(R->post_mean, ks, sizeof(float) * (size_t)np);
        }
    }
    if (s != LSS_OK) goto done;
    for (f = 0; f < nf * LSS_MM_NMETHODS; f++)
        if (isnan(R->rmse_raw[f])) R->rmse_raw[f] = R->rmse[f];
    for (k = 0; k < LSS_MM_NMETHODS; k++) {
        double a = 0, a2 = 0, b = 0, b2 = 0, ar = 0, dm = 0, dv = 0, rm2 = 0, rv = 0;
        for (f = 0; f < nf; f++) {
            double e = R->rmse[f * LSS_MM_NMETHODS + k], c = R->r[f * LSS_MM_NMETHODS + k];
            a += e / nf; a2 += e * e / nf; b += c / nf; b2 += c * c / nf;
            ar += R->rmse_raw[f * LSS_MM_NMETHODS + k] / nf;
            dm += (e - R->rmse[f * LSS_MM_NMETHODS + LSS_MM_METHOD_WIENER]) / nf;
            rm2 += (c - R->r[f * LSS_MM_NMETHODS + LSS_MM_METHOD_WIENER]) / nf;
        }
        for (f = 0; f < nf; f++) {
            double e = R->rmse[f * LSS_MM_NMETHODS + k] - R->rmse[f * LSS_MM_NMETHODS + LSS_MM_METHOD_WIENER];
            double c = R->r[f * LSS_MM_NMETHODS + k] - R->r[f * LSS_MM_NMETHODS + LSS_MM_METHOD_WIENER];
            dv += (e - dm) * (e - dm);
            rv += (c - rm2) * (c - rm2);
        }
        R->mean_rmse[k] = a; R->std_rmse[k] = nf > 1 ? sqrt(fmax(a2 - a * a, 0)) : NAN; /* one field: no scatter (n/a), not 0 */
        R->mean_r[k] = b; R->std_r[k] = nf > 1 ? sqrt(fmax(b2 - b * b, 0)) : NAN;
        R->mean_rmse_raw[k] = ar;
        R->diff_rmse[k] = dm; R->se_diff_rmse[k] = nf > 1 ? sqrt(dv / (nf - 1) / nf) : NAN;
        R->diff_r[k] = rm2; R->se_diff_r[k] = nf > 1 ? sqrt(rv / (nf - 1) / nf) : NAN;
    }
    R->bins_within_1sigma = 0;
    for (k = 0; k < nb; k++) {
        double sm = 0, ss = 0, pm = 0, pv = 0, fin = 0;
        for (q = 0; q < nsim; q++) sm += cl_sim[(int64_t)q * nb + k] / nsim;
        for (q = 0; q < nsim; q++) ss += pow(cl_sim[(int64_t)q * nb + k] - sm, 2) / (nsim - 1);
        ss = sqrt(ss);
        for (q = 0; q < ns; q++) pm += cl_smp[(int64_t)q * nb + k] / ns;
        for (q = 0; q < ns; q++) {
            pv += pow(cl_smp[(int64_t)q * nb + k] - pm, 2) / (ns - 1);
            fin += fabs(cl_smp[(int64_t)q * nb + k] - sm) <= 2 * ss;
        }
        R->cl_sims_mean[k] = sm; R->cl_sims_std[k] = ss;
        R->cl_samples_mean[k] = pm; R->cl_samples_std[k] = sqrt(pv);
        R->frac_within_2sigma[k] = fin / ns;
        R->bins_within_1sigma += fabs(pm - sm) <= ss;
    }
done:
    lss_grid_free(g); lss_grid_free(big);
    LSS_FREE(pk); LSS_FREE(pkb); LSS_FREE(edges); LSS_FREE(cl_sim); LSS_FREE(cl_smp); LSS_FREE(smp); LSS_FREE(sim); LSS_FREE(est);
    if (s != LSS_OK) {
        lss_mm_eval_free(R);
        return s;
    }
    *out = R;
    return LSS_OK;
}

/* ---- detection experiment */
LSSDEF void lss_mm_detect_free(lss_mm_detect_result *r) {
    if (!r) return;
    LSS_FREE(r->mass); LSS_FREE(r->snr); LSS_FREE(r->rate); LSS_FREE(r->rs_arcmin); LSS_FREE(r->kappa_s);
    LSS_FREE(r);
}

LSSDEF int lss_mm_detect(const lss_mm_mock *m, const lss_mm_detect_opts *o, lss_mm_detect_result **out) {
    lss_mm_detect_opts d;
    lss_mm_detect_result *R;
    lss_grid *g = NULL;
    double *pk = NULL, xc, yc, tb_std = 0, level = 0, bsum = 0, bsum2 = 0, bn = 0, tsum2 = 0, tn = 0, msum2 = 0, mn = 0;
    float *smp = NULL, *mean = NULL, *g1 = NULL, *g2 = NULL, *nk = NULL, *z1 = NULL, *z2 = NULL, *f1 = NULL, *hb = NULL;
    lss_cosmo *cos = NULL;
    lss_params par;
    int s = LSS_OK, k, ns, nf, q, j;
    int64_t np, i;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect: out is NULL");
    *out = NULL;
    if (!m || !o || (o->nmasses > 0 && !o->masses)) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect: NULL argument");
    d = *o;
    ns = d.nsamples ? d.nsamples : 16;
    if (d.batch == 0) d.batch = 16;
    if (d.theta_pix == 0) d.theta_pix = lss_mm_detect_theta(m->h, m->w);
    if (d.threshold == 0) d.threshold = LSS_MM_DETECT_THRESHOLD;
    nf = d.nfields > 0 ? d.nfields : (m->nfields - d.field < 8 ? m->nfields - d.field : 8);
    if (d.field < 0 || d.field >= m->nfields || d.nfields < 0 || d.field + nf > m->nfields || nf < 1 ||
        d.nmasses < 0 || (int64_t)(d.nmasses + 1) * nf >= (int64_t)LSS_MM_SUB_WIENER_SIGNAL || ns < 2 || d.batch < 1 ||
        !(d.theta_pix > 0) || !(d.threshold > 0))
        return lss_seterr(LSS_ERR_RANGE, "lss_mm_detect: bad options (fields %d .. %d of %d, %d halos, %d samples, theta %g, threshold %g)",
                          d.field, d.field + nf - 1, m->nfields, d.nmasses, ns, d.theta_pix, d.threshold);
    for (k = 0; k < d.nmasses; k++)
        if (!(d.masses[k] > 1e10 && d.masses[k] < 1e17)) return lss_seterr(LSS_ERR_RANGE, "lss_mm_detect: mass %g outside (1e10, 1e17) Msun", d.masses[k]);
    np = (int64_t)m->h * m->w;
    R = (lss_mm_detect_result *)LSS_MALLOC(sizeof *R);
    if (!R) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_detect: out of memory");
    memset(R, 0, sizeof *R);
    R->nrows = d.nmasses + 1;
    R->theta_pix = d.theta_pix;
    R->nfields = nf;
    R->nsamples = ns * nf;
    R->mass = LSS__MM_NEWD(R->nrows); R->snr = LSS__MM_NEWD(R->nrows); R->rate = LSS__MM_NEWD(R->nrows);
    R->rs_arcmin = LSS__MM_NEWD(R->nrows); R->kappa_s = LSS__MM_NEWD(R->nrows);
    smp = LSS__MM_NEWF((int64_t)ns * np); mean = LSS__MM_NEWF(np); g1 = LSS__MM_NEWF(np); g2 = LSS__MM_NEWF(np);
    nk = LSS__MM_NEWF(np); z1 = LSS__MM_NEWF(np); z2 = LSS__MM_NEWF(np); f1 = LSS__MM_NEWF(np);
    hb = LSS__MM_NEWF((int64_t)ns * nf * np); /* the halo-free samples of every pooled field */
    if (!R->mass || !R->snr || !R->rate || !R->rs_arcmin || !R->kappa_s || !smp || !mean || !g1 || !g2 || !nk || !z1 || !z2 || !f1 || !hb) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_detect: out of memory");
        goto done;
    }
    xc = 0.5 * m->w;
    yc = 0.5 * m->h;
    if ((s = lss_mm_mock_grid(m, 1, &g, &pk))) goto done;
    lss_mm_params_planck15(&par);
    if ((s = lss_cosmo_create(&par, &cos))) goto done;
    if (d.sample.sigma_min == 0) d.sample.sigma_min = lss_mm_auto_sigma_min(np, m->nvar);
    /* the background: filtered halo-free samples (and, for comparison, posterior means and the truth), pooled */
    for (q = 0; q < nf && s == LSS_OK; q++) {
        int fq = d.field + q;
        lss_mm_post *post;
        lss_mm_sample_opts so = d.sample;
        float *hq = hb + (int64_t)q * ns * np;
        if ((s = lss_mm_post_create(g, pk, m->shear + 2 * (int64_t)fq * np, m->shear + (2 * (int64_t)fq + 1) * np, m->nvar, &post))) break;
        so.job = (uint32_t)q;
        s = lss_mm_sample_batched(post, &so, ns, d.batch, hq, NULL);
        lss_mm_post_free(post);
        for (j = 0; j < ns && s == LSS_OK; j++)
            if ((s = lss_mm_starlet_filter(g, hq + (int64_t)j * np, d.theta_pix, f1)) == LSS_OK)
                for (i = 0; i < np; i++)
                    if (m->mask[i] > 0) bsum += f1[i], bsum2 += (double)f1[i] * f1[i], bn++;
        if (s == LSS_OK && (s = lss_mm_mean_std(ns, np, hq, mean, NULL)) == LSS_OK && (s = lss_mm_starlet_filter(g, mean, d.theta_pix, f1)) == LSS_OK)
            for (i = 0; i < np; i++)
                if (m->mask[i] > 0) msum2 += (double)f1[i] * f1[i], mn++;
        if (s == LSS_OK && (s = lss_mm_starlet_filter(g, m->kappa + (int64_t)fq * np, d.theta_pix, f1)) == LSS_OK)
            for (i = 0; i < np; i++)
                if (m->mask[i] > 0) tsum2 += (double)f1[i] * f1[i], tn++;
    }
    if (s != LSS_OK) goto done;
    if (!(bn > 1)) {
        s = lss_seterr(LSS_ERR_RANGE, "lss_mm_detect: the mask has no observed pixels");
        goto done;
    }
    R->background_std = sqrt(fmax(bsum2 / bn - (bsum / bn) * (bsum / bn), 0));
    R->background_std_mean = sqrt(msum2 / mn);
    tb_std = sqrt(tsum2 / tn);
    if (!(tb_std > 0)) tb_std = 1e-30;
    level = d.threshold * R->background_std;
    {
        double rate, acc = 0;
        for (q = 0; q < nf && s == LSS_OK; q++)
            if ((s = lss_mm_detect_rate(g, ns, hb + (int64_t)q * ns * np, d.theta_pix, xc, yc, level, &rate)) == LSS_OK) acc += rate / nf;
        R->rate[0] = acc;
        R->mass[0] = R->snr[0] = R->rs_arcmin[0] = R->kappa_s[0] = 0;
    }
    for (k = 1; k <= d.nmasses && s == LSS_OK; k++) {
        lss_mm_nfw hl;
        double rs, kss, mx = 0, acc = 0;
        memset(&hl, 0, sizeof hl);
        hl.m200 = d.masses[k - 1];
        hl.c200 = 1.0;
        hl.z_l = 0.5;
        hl.z_s = 1.0;
        if ((s = lss_mm_nfw_params(cos, &hl, &rs, &kss))) break;
        memset(nk, 0, sizeof(float) * (size_t)np);
        memset(z1, 0, sizeof(float) * (size_t)np);
        memset(z2, 0, sizeof(float) * (size_t)np);
        if ((s = lss_mm_nfw_add(g, rs, kss, xc, yc, 0, z1, z2, nk))) break;
        if ((s = lss_mm_starlet_filter(g, nk, d.theta_pix, f1))) break;
        for (i = 0; i < np; i++) mx = fmax(mx, f1[i]);
        R->mass[k] = hl.m200;
        R->snr[k] = mx / tb_std;
        R->rs_arcmin[k] = rs;
        R->kappa_s[k] = kss;
        for (q = 0; q < nf && s == LSS_OK; q++) {
            int fq = d.field + q;
            lss_mm_post *post;
            lss_mm_sample_opts so = d.sample;
            double rate;
            memcpy(g1, m->shear + 2 * (int64_t)fq * np, sizeof(float) * (size_t)np);
            memcpy(g2, m->shear + (2 * (int64_t)fq + 1) * np, sizeof(float) * (size_t)np);
            for (i = 0; i < np; i++)
                if (m->nvar[i] < 0.5 * LSS_MM_EMPTY_VAR) g1[i] += z1[i], g2[i] += z2[i];
            if ((s = lss_mm_post_create(g, pk, g1, g2, m->nvar, &post))) break;
            so.job = (uint32_t)(k * nf + q);
            s = lss_mm_sample_batched(post, &so, ns, d.batch, smp, NULL);
            lss_mm_post_free(post);
            if (s == LSS_OK && (s = lss_mm_detect_rate(g, ns, smp, d.theta_pix, xc, yc, level, &rate)) == LSS_OK) acc += rate / nf;
        }
        R->rate[k] = acc;
    }
done:
    lss_cosmo_free(cos);
    lss_grid_free(g);
    LSS_FREE(pk); LSS_FREE(smp); LSS_FREE(mean); LSS_FREE(g1); LSS_FREE(g2); LSS_FREE(nk); LSS_FREE(z1); LSS_FREE(z2); LSS_FREE(f1);
    LSS_FREE(hb);
    if (s != LSS_OK) {
        lss_mm_detect_free(R);
        return s;
    }
    *out = R;
    return LSS_OK;
}


/* ---- result files */
static void lss__mm_panel(lss_image *im, int x, int y, const float *m, int h, int w, int sc, double lo, double hi, const char *title) {
    lss_image_map_panel(im, x, y, m, h, w, lo, hi, sc, LSS_CMAP_VIRIDIS, title); /* title, map, colour bar */
}

LSSDEF int lss_mm_eval_save(const lss_mm_eval_result *R, const char *dir) {
    char p[4096];
    int s, f, k, b, nf, nb, h, w, sc, pw, ph;
    double *fr, *sp, tab[11 * LSS_MM_NMETHODS], lo = 1e9, hi = -1e9, smax = 0;
    enum { FW = 3 + 2 * LSS_MM_NMETHODS }; /* fields.csv: field, (rmse, r) per method, the two measured RMSEs */
    int nrow = 0;
    int64_t i;
    lss_image im;
    if (!R || !dir) return lss_seterr(LSS_ERR_ARG, "lss_mm_eval_save: NULL argument");
    nf = R->nfields; nb = R->nbins; h = R->h; w = R->w;
    fr = (double *)LSS_MALLOC(sizeof(double) * (size_t)(FW * nf));
    sp = (double *)LSS_MALLOC(sizeof(double) * (size_t)(11 * nb));
    if (!fr || !sp) {
        LSS_FREE(fr);
        LSS_FREE(sp);
        return lss_seterr(LSS_ERR_NOMEM, "lss_mm_eval_save: out of memory");
    }
    for (k = 0; k < LSS_MM_NMETHODS; k++) {
        double row[11];
        if (!R->ran[k]) continue;
        row[0] = k; row[1] = k == LSS_MM_METHOD_KS ? R->ks_smoothing : 0; row[2] = R->mean_rmse[k]; row[3] = R->std_rmse[k];
        row[4] = R->mean_r[k]; row[5] = R->std_r[k]; row[6] = R->diff_rmse[k]; row[7] = R->se_diff_rmse[k]; row[8] = R->diff_r[k];
        row[9] = R->se_diff_r[k]; row[10] = R->mean_rmse_raw[k];
        memcpy(tab + 11 * nrow++, row, sizeof row);
    }
    for (f = 0; f < nf; f++) {
        fr[FW * f] = f;
        for (k = 0; k < LSS_MM_NMETHODS; k++) fr[FW * f + 1 + 2 * k] = R->rmse[f * LSS_MM_NMETHODS + k], fr[FW * f + 2 + 2 * k] = R->r[f * LSS_MM_NMETHODS + k];
        fr[FW * f + FW - 2] = R->rmse_raw[f * LSS_MM_NMETHODS + LSS_MM_METHOD_POSTERIOR];
        fr[FW * f + FW - 1] = R->rmse_raw[f * LSS_MM_NMETHODS + LSS_MM_METHOD_POSTERIOR_GAUSS];
    }
    for (b = 0; b < nb; b++) {
        double row[11];
        row[0] = R->ell[b]; row[1] = R->cl_theory[b]; row[2] = R->cl_truth[b]; row[3] = R->cl_sims_mean[b]; row[4] = R->cl_sims_std[b];
        row[5] = R->cl_samples_mean[b]; row[6] = R->cl_samples_std[b]; row[7] = R->cl_wiener[b]; row[8] = R->cl_post_mean[b];
        row[9] = R->frac_within_2sigma[b]; row[10] = fabs(R->cl_samples_mean[b] - R->cl_sims_mean[b]) <= R->cl_sims_std[b];
        memcpy(sp + 11 * b, row, sizeof row);
    }
    {
        const char *ht[11] = {"method", "smoothing_arcmin", "rmse", "rmse_std", "r", "r_std", "rmse_minus_wiener", "rmse_minus_wiener_se",
                              "r_minus_wiener", "r_minus_wiener_se", "rmse_measured"};
        const char *hf[FW] = {"field", "ks_rmse", "ks_r", "wiener_rmse", "wiener_r", "post_rmse", "post_r", "deepmass_rmse", "deepmass_r",
                              "post_gauss_rmse", "post_gauss_r", "exact_rmse", "exact_r", "post_rmse_measured", "post_gauss_rmse_measured"};
        const char *hs[11] = {"ell", "theory", "truth", "sims_mean", "sims_std", "samples_mean", "samples_std", "wiener", "posterior_mean",
                              "frac_samples_within_2sigma", "mean_within_1sigma"};
        const double *ys[5];
        const char *lab[5] = {"theory", "truth", "simulations", "posterior samples", "Wiener"};
        lss_plot_opts po;
        ys[0] = R->cl_theory; ys[1] = R->cl_truth; ys[2] = R->cl_sims_mean; ys[3] = R->cl_samples_mean; ys[4] = R->cl_wiener;
        memset(&po, 0, sizeof po);
        po.title = "convergence power spectra (field 0)";
        po.xlabel = "ell";
        po.ylabel = "C_ell";
        po.logx = po.logy = 1;
        s = lss__mm_path(p, sizeof p, dir, "table1.csv");
        if (s == LSS_OK) s = lss_csv_write(p, 11, ht, nrow, tab);
        if (s == LSS_OK && (s = lss__mm_path(p, sizeof p, dir, "fields.csv")) == LSS_OK) s = lss_csv_write(p, FW, hf, nf, fr);
        if (s == LSS_OK && (s = lss__mm_path(p, sizeof p, dir, "spectra.csv")) == LSS_OK) s = lss_csv_write(p, 11, hs, nb, sp);
        if (s == LSS_OK && (s = lss__mm_path(p, sizeof p, dir, "spectra.png")) == LSS_OK) {
            /* figure 6: the simulations' mean with their +-1 sigma band, the posterior samples' mean with the samples'
               scatter as error bars, the Wiener map dashed (biased low by construction), the theory dotted grey */
            static const int col[5] = {7, 0, 2, 3, 4}, sty[5] = {LSS_LINE_DASHED, LSS_LINE_SOLID, LSS_LINE_SOLID, LSS_LINE_SOLID,
                                                                  LSS_LINE_DASHED}, mk[5] = {0, 0, 0, 1, 0};
            double *bl = (double *)LSS_MALLOC(sizeof(double) * (size_t)(2 * nb + 1)), *bh = bl ? bl + nb : NULL;
            const double *blo[5] = {NULL, NULL, NULL, NULL, NULL}, *bhi[5] = {NULL, NULL, NULL, NULL, NULL}, *ye[5] = {NULL, NULL, NULL, NULL, NULL};
            if (!bl) s = lss_seterr(LSS_ERR_NOMEM, "lss_mm_eval_save: out of memory");
            else {
                for (b = 0; b < nb; b++) { /* on the log axis a band reaching zero stops at a tenth of the mean */
                    bl[b] = fmax(R->cl_sims_mean[b] - R->cl_sims_std[b], 0.1 * R->cl_sims_mean[b]);
                    bh[b] = R->cl_sims_mean[b] + R->cl_sims_std[b];
                }
                blo[2] = bl; bhi[2] = bh; ye[3] = R->cl_samples_std;
                lab[2] = "simulations (mean, 1 sigma)";
                lab[3] = "posterior samples (mean, std)";
                po.color = col; po.style = sty; po.marker = mk; po.band_lo = blo; po.band_hi = bhi; po.yerr = ye;
                po.width = 760; po.height = 540;
                s = lss_plot_lines(p, &po, 5, nb, R->ell, ys, lab);
                LSS_FREE(bl);
            }
        }
    }
    LSS_FREE(fr);
    LSS_FREE(sp);
    if (s != LSS_OK) return s;
    /* figure 7: panels of at least 256 pixels, each with its colour bar; the truth, the reconstructions and the
       samples share the truth's range (so that their amplitudes compare), the std its own */
    sc = (256 + (h > w ? h : w) - 1) / (h > w ? h : w);
    sc = sc < 1 ? 1 : sc > 8 ? 8 : sc;
    for (i = 0; i < (int64_t)h * w; i++) lo = fmin(lo, R->truth[i]), hi = fmax(hi, R->truth[i]), smax = fmax(smax, R->post_std[i]);
    if (!(hi > lo)) lo = -1, hi = 1;
    if (!(smax > 0)) smax = 1;
    {
        int pw2, ph2;
        lss_image_map_panel_size(h, w, lo, hi, sc, &pw, &ph);
        lss_image_map_panel_size(h, w, 0, smax, sc, &pw2, &ph2);
        pw = (pw > pw2 ? pw : pw2) + 14;
        ph += 10;
    }
    if ((s = lss_image_init(&im, 4 * pw + 10, 2 * ph + 40)) != LSS_OK) return s;
    {
        static const unsigned char black[3] = {0, 0, 0};
        char t[160];
        snprintf(t, sizeof t, "field 0: truth, reconstructions and posterior samples (convergence, common colour scale)");
        lss_image_text_size(&im, 10, 8, t, black, LSS_FONT_LABEL);
    }
    lss__mm_panel(&im, 10, 40, R->truth, h, w, sc, lo, hi, "truth");
    lss__mm_panel(&im, 10 + pw, 40, R->ks, h, w, sc, lo, hi, "Kaiser-Squires");
    lss__mm_panel(&im, 10 + 2 * pw, 40, R->wiener, h, w, sc, lo, hi, "Wiener");
    lss__mm_panel(&im, 10 + 3 * pw, 40, R->post_mean, h, w, sc, lo, hi, "posterior mean");
    lss__mm_panel(&im, 10, 40 + ph, R->post_std, h, w, sc, 0, smax, "posterior std");
    for (k = 0; k < R->nsample_maps && k < (R->deepmass ? 2 : 3); k++) {
        char t[32];
        snprintf(t, sizeof t, "posterior sample %d", k + 1);
        lss__mm_panel(&im, 10 + (1 + k) * pw, 40 + ph, R->samples + (int64_t)k * h * w, h, w, sc, lo, hi, t);
    }
    if (R->deepmass) lss__mm_panel(&im, 10 + 3 * pw, 40 + ph, R->deepmass, h, w, sc, lo, hi, "DeepMass");
    if ((s = lss__mm_path(p, sizeof p, dir, "figure7.png")) == LSS_OK) s = lss_image_save_png(&im, p);
    lss_image_free(&im);
    if (s == LSS_OK && R->deepmass && (s = lss__mm_path(p, sizeof p, dir, "deepmass0.png")) == LSS_OK)
        s = lss_png_map(p, R->deepmass, h, w, 0, 0, "DeepMass (field 0)", 512 / (h > w ? h : w) > 1 ? 512 / (h > w ? h : w) : 1);
    return s;
}

LSSDEF int lss_mm_detect_save(const lss_mm_detect_result *R, const char *dir) {
    char p[4096];
    const char *hd[5] = {"mass_msun", "snr_input", "detection_rate", "rs_arcmin", "kappa_s"}, *lab[1] = {"posterior samples (binomial 1-sigma)"};
    const double *yy[1];
    double *rows;
    lss_plot_opts po;
    int k, s;
    if (!R || !dir) return lss_seterr(LSS_ERR_ARG, "lss_mm_detect_save: NULL argument");
    if (!(rows = (double *)LSS_MALLOC(sizeof(double) * (size_t)(5 * R->nrows)))) return lss_seterr(LSS_ERR_NOMEM, "lss_mm_detect_save: out of memory");
    for (k = 0; k < R->nrows; k++)
        rows[5 * k] = R->mass[k], rows[5 * k + 1] = R->snr[k], rows[5 * k + 2] = R->rate[k], rows[5 * k + 3] = R->rs_arcmin[k], rows[5 * k + 4] = R->kappa_s[k];
    s = lss__mm_path(p, sizeof p, dir, "detect.csv");
    if (s == LSS_OK) s = lss_csv_write(p, 5, hd, R->nrows, rows);
    memset(&po, 0, sizeof po);
    po.title = "cluster detection rate vs input SNR (figure 9)";
    po.xlabel = "input SNR of the halo";
    po.ylabel = "detection rate";
    po.ylo = -0.05; po.yhi = 1.05;   /* a rate: the whole [0, 1] */
    yy[0] = R->rate;
    for (k = 0; k < R->nrows; k++) /* binomial standard error of each rate, in the rows' spare room */
        rows[k] = R->nsamples > 0 ? sqrt(fmax(R->rate[k] * (1 - R->rate[k]), 0) / R->nsamples) : NAN;
    {
        const double *ye[1];
        int mk[1] = {1};
        ye[0] = rows;
        po.yerr = ye; po.marker = mk;
        if (s == LSS_OK && (s = lss__mm_path(p, sizeof p, dir, "detect.png")) == LSS_OK) s = lss_plot_lines(p, &po, 1, R->nrows, R->snr, yy, lab);
    }
    LSS_FREE(rows);
    return s;
}

#endif /* LSS_MASSMAP_IMPLEMENTATION_DONE */
#endif /* LSS_MASSMAP_IMPLEMENTATION */

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
