/* lss_maps.h - cosmology theory, forward model of tomographic lensing and clustering maps, and map
 * statistics (FFTW3). Part of lss; includes lss_core.h.
 *
 * In exactly one C file:   #define LSS_MAPS_IMPLEMENTATION   before   #include "lss_maps.h"
 * (and LSS_CORE_IMPLEMENTATION once somewhere). Link with -lfftw3f -lfftw3 -lm (and -fopenmp).
 *
 * THEORY (cosmology, redshift distributions, Limber spectra)
 *   Flat LCDM (w = -1) without radiation. Units: distances in Mpc/h, k in h/Mpc, P(k) in (Mpc/h)^3,
 *   c/H0 = LSS_C_OVER_H0 = 2997.92458 Mpc/h.
 *   - lss_params: Omega_m, sigma_8, Omega_b, h, n_s and the DeepLSS Table I nuisance parameters (A_IA, eta_IA,
 *     b_g, eta_bg, r_g, b_g2, eta_bg2); lss_params_fiducial() fills the Table I fiducial values (Omega_m 0.29,
 *     sigma_8 0.71, ...) with Omega_b 0.0493, h 0.6736, n_s 0.9649; lss_params_check() enforces the priors.
 *   - lss_cosmo: tables built once per parameter set (about 40 ms): E(z), chi(z), D_A(z), D+(z) (exact integral
 *     for LCDM, D+(0) = 1), Eisenstein & Hu (1998) P_lin with or without baryon wiggles normalised to sigma_8
 *     (top-hat, R = 8 Mpc/h), Halofit (Takahashi et al. 2012) P_NL tabulated in (ln k, z) for 1e-5 <= k <= 1e4 h/Mpc
 *     and 0 <= z <= 20 (bicubic, about 50 ns a call; outside that range computed directly). Where sigma(R) < 1 on
 *     all scales (very high z, low sigma_8) there is no non-linear scale and P_NL = P_lin. Agreement with CCL:
 *     chi, D+ 1e-7; P_lin, P_NL 1e-5. All evaluation functions are read-only and thread-safe.
 *   - lss_nz: normalised tabulated n(z), linear between nodes. Built in: "deeplss" (the 4 Stage-III bins of DeepLSS,
 *     means 0.299 0.478 0.751 0.940) and "cosmos" (one COSMOS-like distribution, mean 1.05); lss_nz_load() reads
 *     "z n_1 n_2 ..." text files and validates them.
 *   - Limber spectra: lss_cl_shell() (a top-hat matter shell in chi), lss_cl_tomo() (every auto and cross
 *     spectrum of kappa_i = lensing + NLA intrinsic alignments, F(z) = -A_IA^i C1 rho_crit Omega_m / D+(z), and of
 *     delta_j = b^j delta_m, with the per-bin A_IA^i, b^j of DeepLSS eqs. 8-9, pivot z0 = 0.7); k = (ell + 1/2)/chi.
 *     C1 rho_crit is LSS_C1RHOCRIT_NLA = 0.0134 unless p.c1_rho_crit is set (CCL uses LSS_C1RHOCRIT_CCL = 0.0138768).
 *
 *   Example (theory):
 *     #define LSS_CORE_IMPLEMENTATION
 *     #define LSS_MAPS_IMPLEMENTATION
 *     #include "lss_maps.h"
 *     int main(void) {
 *         lss_params p; lss_cosmo *c; lss_nz *bins; int nb, np, q; char name[32];
 *         double ell[3] = {100, 300, 1000}, *cl;
 *         lss_params_fiducial(&p);                 // DeepLSS Table I + Planck 2018 Omega_b, h, n_s
 *         p.omega_m = 0.3; p.sigma_8 = 0.8;
 *         if (lss_params_check(&p) || lss_cosmo_create(&p, &c)) { fprintf(stderr, "%s\n", lss_last_error()); return 2; }
 *         printf("chi(1) = %.2f Mpc/h  D+(1) = %.4f  P_NL(k=1, z=0.5) = %.4g\n", lss_cosmo_chi(c, 1),
 *                lss_cosmo_growth(c, 1), lss_cosmo_pk_nl(c, 1.0, 0.5));
 *         if (lss_nz_builtin("deeplss", &bins, &nb)) return 1;
 *         np = lss_cl_npairs(nb);                  // 36 for 4 bins: kk_i_j, kd_i_j, dd_i_j
 *         cl = (double *)malloc(sizeof(double) * np * 3);
 *         if (cl && lss_cl_tomo(c, bins, nb, ell, 3, cl) == LSS_OK)
 *             for (q = 0; q < np; q++) {
 *                 lss_cl_pair_name(nb, q, name, sizeof name);
 *                 printf("%s  C(100) = %.4g\n", name, cl[q * 3 + 0]);   // layout out[pair * nell + l]
 *             }
 *         free(cl); lss_nz_free(bins, nb); lss_cosmo_free(c);
 *         return 0;
 *     }
 *   Theory options: the fields of lss_params (zero c1_rho_crit / t_cmb mean the defaults; transfer
 *   LSS_TRANSFER_EH or LSS_TRANSFER_EH_NOWIGGLE; linear = 1 uses P_lin everywhere); the lss-theory driver prints
 *   all of it as CSV.
 *
 * Contents (each group's declarations carry its own manual and example):
 *   THEORY       lss_params (+ lss_table1: Table I names, priors, fiducial values; lss_params_to_vec/_from_vec),
 *                lss_cosmo_*, lss_nz_*, lss_cl_* (above).
 *   FORWARD MODEL (MAPS DECLARATIONS) shells lss_shell_edges; noise-free fields lss_sim_create/_field/_fields;
 *                observation lss_sim_observe, lss_sim_stochastic, lss_clip_rates, lss_scale_for_network;
 *                mosaics lss_mosaic; expected spectra lss_sim_expected_ps.
 *   OBSERVATION RECIPE lss_survey_create/_observe/_simulate (the one path from fields to network inputs, shared
 *                by lss-sim and deeplss); DeepLSS data: lss_pool_init/_simulate/_grid, lss_pool_draw_random,
 *                lss_pool_eval_draw, lss_pool_observe/_many.
 *   PARAMETERS   lss_sobol, lss_params_from_unit (Table I box).
 *   STATISTICS   (its own manual heads the section) flat-sky grid and FFT workspaces lss_grid_*, fields
 *                lss_field_gaussian/_lognormal, grid spectra and binned auto/cross spectra lss_grid_spectrum,
 *                lss_grid_ps, the DeepLSS estimator lss_ps_*, smoothing lss_grid_smooth, lss_smooth_zeropad;
 *                map statistics lss_stat_* (LensTools power spectrum and bispectrum, histograms, peaks and
 *                peak counts, Minkowski functionals, SSIM/MS-SSIM, Wasserstein-1, correlation matrices,
 *                Frechet distance, two-set comparison lss_stat_compare).
 *   GPU MAP KERNELS (LSS_CUDA; implemented in lss_gpu.cu) lss_gpu_shape_noise, lss_gpu_random_flip,
 *                lss_gpu_scale_for_network: DeepLSS noise and augmentation on device buffers, tested against
 *                the CPU when a device exists.
 * Conventions: outputs last; created opaque objects through a trailing **out with _create/_free; caller-owned
 * public structs with _init/_free (lss_pool); every random draw under the user's seed and a named stream of
 * lss_core.h (SHELL, PHASE, POISSON, SHAPE, MOSAIC, COSMO, NUISANCE), indices from lss_set_index.
 * Options: LSS_MALLOC/LSS_REALLOC/LSS_FREE (all or none), LSS_ASSERT, LSS_NO_OPENMP (see lss_core.h).
 *
 * Version 0.1.0.
 */
#ifndef LSS_MAPS_H
#define LSS_MAPS_H
#include "lss_core.h"

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_MAPS_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== THEORY DECLARATIONS (cosmology, n(z), Limber) ==== */
/* Cosmology: flat LCDM (w = -1), no radiation. Units: distances in Mpc/h, k in h/Mpc, P(k) in (Mpc/h)^3.
   The lss_cosmo_* evaluation functions only read the tables: call them from any number of threads. They return NaN
   for a NULL cosmology, z <= -1, k < 0 or non-finite input. */
#define LSS_C_OVER_H0 2997.92458          /* c / H0 in Mpc/h */
#define LSS_C1RHOCRIT_NLA 0.0134          /* NLA C1 rho_crit, the rounded value of the NLA literature (default) */
#define LSS_C1RHOCRIT_CCL 0.0138768       /* the value CCL uses (C1 = 5e-14 h^-2 Msun^-1 Mpc^3 times rho_crit) */
#define LSS_IA_Z0 0.7                     /* pivot redshift of the per-bin evolution (DeepLSS eqs. 8-9) */
#define LSS_T_CMB 2.725                   /* default CMB temperature (K) in the Eisenstein-Hu fit */
enum { LSS_TRANSFER_EH = 0, LSS_TRANSFER_EH_NOWIGGLE = 1 };

typedef struct {
    double omega_m, sigma_8, omega_b, h, n_s;                 /* cosmology (flat LCDM, w = -1) */
    double a_ia, eta_ia, b_g, eta_bg, r_g, b_g2, eta_bg2;     /* DeepLSS Table I nuisance parameters */
    double c1_rho_crit;  /* NLA amplitude constant; 0 means LSS_C1RHOCRIT_NLA (0.0134). LSS_C1RHOCRIT_CCL = 0.0138768 */
    int transfer;        /* LSS_TRANSFER_EH (0, with wiggles) or LSS_TRANSFER_EH_NOWIGGLE */
    int linear;          /* 1: use the linear P(k) where the non-linear one is asked for */
    double t_cmb;        /* CMB temperature in K for the transfer function; 0 means LSS_T_CMB (2.725) */
} lss_params;

/* Fiducial values of DeepLSS Table I plus Omega_b = 0.0493, h = 0.6736, n_s = 0.9649, EH with wiggles. */
LSSDEF void lss_params_fiducial(lss_params *p);
/* LSS_OK, or LSS_ERR_RANGE naming the parameter and its prior when a Table I parameter is outside its prior
   (or Omega_b, h, n_s outside a sane range: 0 < Omega_b < Omega_m, 0.2 < h < 1.5, 0.5 < n_s < 1.5). */
LSSDEF int  lss_params_check(const lss_params *p);
/* Like lss_params_check but only the physical validity needed to compute (Omega_m in (0, 1], sigma_8 > 0, ...),
   not the Table I priors: used by lss_cosmo_create so that tests can use any cosmology. */
LSSDEF int  lss_params_check_physical(const lss_params *p);

/* Table I of DeepLSS, the one source of the parameter names, flat priors and fiducial values: lss_params_fiducial,
   lss_params_check and lss_params_from_unit read it, and drivers pass its lo/hi to lss_prior_init. The order is
   that of parameter vectors everywhere (LSS_P_*); the first LSS_NPARAM_LINEAR belong to the linear-bias model. */
enum { LSS_P_OMEGA_M = 0, LSS_P_SIGMA_8, LSS_P_A_IA, LSS_P_ETA_IA, LSS_P_B_G, LSS_P_ETA_BG, LSS_P_R_G, LSS_P_B_G2,
       LSS_P_ETA_BG2, LSS_NPARAM_TABLE1 };
#define LSS_NPARAM_LINEAR 7
typedef struct {
    const char *name[LSS_NPARAM_TABLE1];  /* "Omega_m", "sigma_8", "A_IA", ... (tables and plots) */
    const char *key[LSS_NPARAM_TABLE1];   /* "omega_m", "sigma_8", "a_ia", ... (options and CSV columns) */
    double lo[LSS_NPARAM_TABLE1], hi[LSS_NPARAM_TABLE1], fiducial[LSS_NPARAM_TABLE1];
} lss_param_table;
LSSDEF const lss_param_table *lss_table1(void);
/* Parameter vectors in LSS_P_* order: v[0..n-1] from p, or p's first n Table I parameters from v (the other
   fields of p unchanged). n in 1..LSS_NPARAM_TABLE1, else LSS_ERR_ARG. */
LSSDEF int lss_params_to_vec(const lss_params *p, int n, double *v);
LSSDEF int lss_params_from_vec(const double *v, int n, lss_params *p);

typedef struct lss_cosmo lss_cosmo;               /* opaque: precomputed tables for one parameter set */
/* Builds the background, growth and P(k, z) tables (lin + Halofit) for p. *out is freed with lss_cosmo_free.
   Checks only physical validity (lss_params_check_physical); call lss_params_check for the Table I priors. */
LSSDEF int    lss_cosmo_create(const lss_params *p, lss_cosmo **out);
LSSDEF void   lss_cosmo_free(lss_cosmo *c);
const lss_params *lss_cosmo_params(const lss_cosmo *c);
LSSDEF double lss_cosmo_ez(const lss_cosmo *c, double z);           /* H(z)/H0 */
LSSDEF double lss_cosmo_chi(const lss_cosmo *c, double z);          /* comoving distance, Mpc/h */
LSSDEF double lss_cosmo_z_of_chi(const lss_cosmo *c, double chi);   /* inverse of lss_cosmo_chi */
LSSDEF double lss_cosmo_da(const lss_cosmo *c, double z);           /* angular-diameter distance chi/(1+z), Mpc/h */
LSSDEF double lss_cosmo_growth(const lss_cosmo *c, double z);       /* D+(z), D+(0) = 1 */
LSSDEF double lss_cosmo_pk_lin(const lss_cosmo *c, double k, double z);  /* k in h/Mpc, P in (Mpc/h)^3 */
LSSDEF double lss_cosmo_pk_nl(const lss_cosmo *c, double k, double z);   /* Halofit (Takahashi 2012); = pk_lin if p->linear */
LSSDEF double lss_cosmo_sigma8(const lss_cosmo *c);                 /* sigma_8 of the table P_lin at z = 0 (check) */
LSSDEF double lss_cosmo_zmax(const lss_cosmo *c);                   /* tables cover 0 <= z <= zmax (larger z: computed directly) */
/* NLA factor F(z) = -C1 rho_crit Omega_m / D+(z) (without A_IA). */
LSSDEF double lss_cosmo_nla_f(const lss_cosmo *c, double z);

/* Redshift distributions: one tabulated n(z) per tomographic bin, normalised to int n dz = 1. */
typedef struct { int n; double *z, *nz; double zmean; } lss_nz;  /* one tabulated, normalised n(z) */
/* Built-in sets: "deeplss" (the 4 DeepLSS Stage-III bins) or "cosmos" (1 COSMOS-like distribution).
   *bins is an array of *nbins lss_nz, freed with lss_nz_free. */
LSSDEF int  lss_nz_builtin(const char *name, lss_nz **bins, int *nbins);
/* Limits of a tabulated n(z) (the matter power tables end at z = 20; a table beyond would cost minutes and GBs). */
#define LSS_NZ_ZMAX 20.0          /* largest z of a row */
#define LSS_NZ_MAX_ROWS 100000    /* rows of a table */
#define LSS_NZ_MAX_BINS 64        /* n(z) columns (tomographic bins) */
/* Text file: '#' comments, then rows "z n_1 [n_2 ...]" (whitespace or comma separated); z strictly increasing
   within [0, LSS_NZ_ZMAX], n >= 0 and finite, each column with a positive integral, at most LSS_NZ_MAX_ROWS rows and
   LSS_NZ_MAX_BINS columns of n. LSS_ERR_FORMAT naming the file, line and value otherwise. Freed with lss_nz_free. */
LSSDEF int  lss_nz_load(const char *path, lss_nz **bins, int *nbins);
/* From arrays: z[n], nz[nbins][n] row-major (nz[b*n + i]). Same validation as lss_nz_load. */
LSSDEF int  lss_nz_from_table(const double *z, const double *nz, int n, int nbins, lss_nz **bins);
LSSDEF void lss_nz_free(lss_nz *bins, int nbins);
LSSDEF double lss_nz_eval(const lss_nz *b, double z);               /* linear interpolation, 0 outside the table */
/* Per-bin amplitudes of DeepLSS eqs. 8-9, pivot z0 = LSS_IA_Z0 = 0.7, averaged over the bin's normalised n(z):
   A_IA^i = A_IA int dz n_i(z) ((1+z)/(1+z0))^eta_IA, b^i = b_g int dz n_i(z) ((1+z)/(1+z0))^eta_bg,
   b2^i = b_g2 int dz n_i(z) ((1+z)/(1+z0))^eta_bg2. */
LSSDEF double lss_params_a_ia_bin(const lss_params *p, const lss_nz *bin);
LSSDEF double lss_params_b_bin(const lss_params *p, const lss_nz *bin);
LSSDEF double lss_params_b2_bin(const lss_params *p, const lss_nz *bin);

/* Limber C_ell of a top-hat shell in comoving distance [chi1, chi2] Mpc/h:
   int_{chi1}^{chi2} dchi P_NL((ell+1/2)/chi, z(chi)) / (chi^2 (chi2-chi1)^2) */
LSSDEF double lss_cl_shell(const lss_cosmo *c, double chi1, double chi2, double ell);
/* The same at nell multipoles at once (the redshifts of the quadrature nodes are found once): out[l] for ell[l].
   LSS_ERR_ARG for a bad shell (chi1 < 0, chi2 <= chi1) or a negative / non-finite ell. */
LSSDEF int lss_cl_shell_many(const lss_cosmo *c, double chi1, double chi2, const double *ell, int nell, double *out);
/* Lensing efficiency of bin b at comoving distance chi (dimensionless kernel of kappa, including 3/2 Omega_m (H0/c)^2
   chi (1+z)): W_WL(chi) = 3/2 Om (H0/c)^2 chi (1+z(chi)) int_{chi}^{inf} dchi' n(chi') (chi'-chi)/chi'. Units 1/(Mpc/h). */
LSSDEF double lss_cl_lensing_kernel(const lss_cosmo *c, const lss_nz *b, double chi);

/* All auto/cross spectra of kappa_i (lensing + NLA IA: GG, GI, II) and delta_j (linear bias per bin, eqs. 8-9):
   out[pair * nell + l], pairs ordered kk_i_j (i<=j), kd_i_j (all i,j), dd_i_j (i<=j); names via lss_cl_pair_name.
   out has lss_cl_npairs(nbins) * nell doubles, owned by the caller. IA and bias from lss_cosmo_params(c).
   Linear theory: r_g (stochasticity) and b_g2/eta_bg2 act on maps only and do not enter here (r = 1, no b2).
   Kernels (Mpc/h units): lensing lss_cl_lensing_kernel; IA A_IA^i F(z) n_i(z) H(z)/c; galaxies b^i n_i(z) H(z)/c;
   C_ab(ell) = int dchi W_a W_b / chi^2 P_NL((ell+1/2)/chi, z). Thread-safe; uses OpenMP over ell when enabled. */
LSSDEF int  lss_cl_tomo(const lss_cosmo *c, const lss_nz *bins, int nbins, const double *ell, int nell, double *out);
/* Component spectra, same layout as lss_cl_tomo but for one term only (for tests and diagnostics). */
enum { LSS_CL_ALL = 0, LSS_CL_GG = 1, LSS_CL_GI = 2, LSS_CL_II = 3 };
LSSDEF int  lss_cl_tomo_terms(const lss_cosmo *c, const lss_nz *bins, int nbins, const double *ell, int nell,
                       int terms, double *out);
LSSDEF int  lss_cl_npairs(int nbins);                               /* nbins(nbins+1)/2 * 2 + nbins^2 */
LSSDEF void lss_cl_pair_name(int nbins, int pair, char *buf, size_t n);   /* "kk_1_2", "kd_1_3", "dd_4_4" (1-based) */
/* ==== END THEORY DECLARATIONS ==== */

/* ==== MAPS DECLARATIONS (shells, lognormal fields, projection, noise, statistics) ==== */
/* Forward model of DeepLSS tomographic maps (Kacprzak & Fluri 2022, section II, appendices A, B, E, F).
 *
 * Pipeline (one "field" = one nside x nside patch, default 64 x 64 pixels of 4.6875 arcmin = 5 x 5 deg):
 *   1. shells: the light cone 0 < z <= zmax cut into redshift shells (default dz = 0.05 below z = 1.55, 0.1
 *      above, up to 3.5); each shell's 2-D density contrast has the Limber spectrum lss_cl_shell(), tabulated
 *      once per cosmology on a log-ell grid.
 *   2. each shell is a lognormal field drawn on a periodic grid of (pad * nside)^2 pixels (default pad 2) by
 *      the exact grid method: xi = IDFT(C_ell), xi_G = log(1 + xi), P_G = DFT(xi_G) (negative P_G clipped to 0,
 *      the clipped fraction reported), Gaussian g with spectrum P_G, delta = exp(g - var(g)/2) - 1. The
 *      expected spectrum of the drawn shell on the grid is then exactly the target (up to the clipping).
 *   3. Born projection (eqs. 1-5): kappa_i = sum_b W_WL[i][b] delta_b, kappa_IA_i = sum_b W_IA[i][b] delta_b,
 *      delta_i = sum_b W_G[i][b] (1 + delta_b), with W_WL = int_shell q_i(chi) dchi (lss_cl_lensing_kernel),
 *      W_IA = int_shell F(z) n_i(z) dz, W_G = int_shell n_i(z) dz.
 *   4. optional Gaussian smoothing per bin (section II B: sigma_R of R = 4 Mpc/h for lensing and 8 Mpc/h for
 *      clustering, the pixel kernel included as a Gaussian of variance d^2/12), a sampled kernel applied on the
 *      periodic grid around the cut-out so that it has no edge effects (or, as an option, per field with zeros
 *      outside as the released code does);
 *      the nside^2 field is then cut out of the grid (so maps are not periodic); means removed (eq. 6) and the
 *      density normalised by its field mean (eq. 7).
 *   The result, a "noise-free field", has 3 * nbins channels: kappa_1..n, kappa_IA_1..n, delta_1..n.
 *   5. observation (cheap, on the fly, own random stream): kappa_i + A_IA^i kappa_IA_i; stochasticity (eq. 12,
 *      appendix B) on delta_i; galaxy bias (eqs. 10, 13); Poisson counts with the clipping of appendix E;
 *      shape noise (eq. 11). Output 2 * nbins channels: kappa_g of bins 1..n, then delta_g = N / nbar - 1.
 *   6. surveys: mosaics of grid x grid fields (default 6 x 6) placed at random with random flips.
 *   7. statistics: auto and cross power spectra of all channel pairs in log-spaced ell bins.
 *
 * Randomness: every draw is a pure function of (seed, index, shell or bin, purpose) through Philox streams,
 * so a field is identical bit for bit whatever the thread count and whatever other fields are generated.
 * FFTW (single precision) plans are made once per lss_sim under an OpenMP critical section named
 * lss_fftw_plan (FFTW planning is not thread-safe) and executed with the new-array interface on per-thread
 * buffers (lss_sim_work).
 *
 * Example (noise-free fields, then noisy observations):
 *     lss_params p; lss_cosmo *c; lss_nz *nz; int nb; lss_sim *sim; lss_sim_work *w;
 *     lss_params_fiducial(&p);
 *     lss_cosmo_create(&p, &c); lss_nz_builtin("deeplss", &nz, &nb);
 *     lss_sim_create(c, nz, nb, NULL, &sim);          // shells, C_ell tables, weights, FFTW plans
 *     lss_sim_work_create(sim, &w);                    // one per thread
 *     float *f = malloc(lss_sim_field_size(sim) * sizeof(float));
 *     float *m = malloc(lss_sim_obs_size(sim) * sizeof(float));
 *     lss_sim_field(sim, w, 42, 7, f);                 // field 7 of seed 42
 *     lss_sim_observe(sim, w, f, &p, NULL, 43, 0, m);  // noise realisation 0 of noise seed 43
 *     ... lss_sim_work_free(w); lss_sim_free(sim); lss_cosmo_free(c); lss_nz_free(nz, nb);
 */

#define LSS_SIM_MAX_BINS 16
#define LSS_DEEPLSS_PIXEL_ARCMIN 4.6875  /* 5 deg / 64 */
#define LSS_DEEPLSS_SIGMA_E 0.4
#define LSS_DEEPLSS_NGAL_ARCMIN2 2.5     /* galaxies per arcmin^2 per bin: 10 over 4 bins */
#define LSS_DEEPLSS_KAPPA_SIG 0.005      /* the signal scale of appendix E: kappa x (0.005^2 + sigma_pix^2)^-1/2 */

/* ---- redshift shells */
typedef struct {
    double zmax;    /* last shell edge; 0: 3.5 */
    double dz_lo;   /* shell width below z_split; 0: 0.05 */
    double z_split; /* 0: 1.55 */
    double dz_hi;   /* shell width above z_split; 0: 0.1 (the last shell ends at zmax) */
} lss_shell_opts;

/* Shell edges: writes at most `cap` edges (z_0 = 0 < z_1 < ... ) to zedges and returns the number of shells
   (edges - 1), or a negative status (LSS_ERR_ARG for bad options, LSS_ERR_RANGE when cap is too small).
   zedges may be NULL to count. */
LSSDEF int lss_shell_edges(const lss_shell_opts *o, double *zedges, int cap);

/* ---- simulator of noise-free fields */
enum { LSS_SMOOTH_GRID = 0,     /* smoothing on the periodic generation grid before the cut-out (no edges) */
       LSS_SMOOTH_ZEROPAD = 1   /* per field, zeros outside it (the released DeepLSS code's form) */ };
typedef struct {
    int nside;            /* field pixels per side; 0: 64. Even, 8 <= nside <= 4096 */
    double pixel_arcmin;  /* 0: 4.6875 */
    int pad;              /* generation grid = pad * nside per side (periodic); 0: 2; 2 <= pad <= 8 */
    lss_shell_opts shells;
    int nell;             /* points of each shell's log-ell C_ell table; 0: 96 */
    int no_pixwin;        /* 0 (default): grid values are point samples of the field (spectrum C_ell, GLASS's
                             convention for matter fields) and the pixel kernel of a pixel-averaged map is added
                             as section II B treats it, a Gaussian of variance d^2/12 in quadrature with each
                             smoothing sigma (total sigma_R), or alone where smoothing is off; 1: no pixel kernel */
    double r_wl, r_gc;    /* smoothing scales in comoving Mpc/h for lensing and clustering maps; 0: 4 and 8
                             (section II B, linear bias setup); negative: no smoothing of that probe */
    int smooth_mode;      /* LSS_SMOOTH_GRID (default) or LSS_SMOOTH_ZEROPAD */
    int keep_empty_shells;/* 1: also draw shells whose weights are all zero (beyond the sources); 0: skip them */
    const double *smooth_zmean; /* NULL: smoothing scales converted at the n(z) means; else [nbins] redshifts
                                   (copied; e.g. the paper's 0.31, 0.48, 0.75, 0.94) */
} lss_sim_opts;

typedef struct lss_sim lss_sim;
typedef struct lss_sim_work lss_sim_work;

/* Builds shells, their C_ell tables, lognormal amplitudes, projection weights, smoothing kernels and FFTW
   plans for cosmology c and n(z) bins. c and bins are only read during the call. o may be NULL (defaults).
   *out freed with lss_sim_free. LSS_ERR_ARG for impossible sizes or options. */
LSSDEF int lss_sim_create(const lss_cosmo *c, const lss_nz *bins, int nbins, const lss_sim_opts *o, lss_sim **out);
/* Recomputes everything that depends on the cosmology (C_ell tables, amplitudes, weights, smoothing) for a new
   cosmology with the same shells and sizes, without allocating. Not safe while other threads use sim. */
LSSDEF int lss_sim_set_cosmo(lss_sim *sim, const lss_cosmo *c);
LSSDEF void lss_sim_free(lss_sim *sim);
/* Per-thread buffers (the caller creates one per thread; freed with lss_sim_work_free). */
LSSDEF int lss_sim_work_create(const lss_sim *sim, lss_sim_work **out);
LSSDEF void lss_sim_work_free(lss_sim_work *w);

/* Sizes (in floats) of one noise-free field (3 nbins channels) and one observed field (2 nbins channels). */
LSSDEF size_t lss_sim_field_size(const lss_sim *sim);
LSSDEF size_t lss_sim_obs_size(const lss_sim *sim);

/* Read-only information about a simulator. */
typedef struct {
    int nside, ngrid, nbins, nshell, nshell_drawn;
    double pixel_arcmin;
    const double *z_lo, *z_hi, *chi_lo, *chi_hi; /* [nshell] */
    const double *w_wl, *w_ia, *w_g;             /* [nbins][nshell] projection weights (W_IA without A_IA) */
    const double *sigma_wl_arcmin, *sigma_gc_arcmin; /* [nbins] Gaussian smoothing sigmas (0: none) */
    const double *zmean;                         /* [nbins] n(z) means */
    double clip_max;      /* largest fraction of Gaussian power clipped (negative P_G) over the shells */
    int clip_worst_shell; /* its index (-1 when nothing was clipped) */
    int ell_n;            /* the shells' C_ell table: ell_n log-spaced points */
    const double *ell;    /* [ell_n] */
    const double *cl;     /* [nshell][ell_n] lss_cl_shell at those points */
} lss_sim_info;
LSSDEF void lss_sim_get_info(const lss_sim *sim, lss_sim_info *info);

/* Noise-free field `index` of `seed`: out[3*nbins][nside][nside] = kappa_i, kappa_IA_i (means removed, eq. 6),
   delta_i (eq. 7: normalised by its field mean, so delta >= -1), smoothed as configured. */
LSSDEF int lss_sim_field(const lss_sim *sim, lss_sim_work *w, uint64_t seed, uint64_t index, float *out);
/* Fields first .. first+n-1 into out[n][3*nbins][nside][nside], OpenMP over fields (work buffers created once
   per thread inside). Identical to n calls of lss_sim_field. */
LSSDEF int lss_sim_fields(const lss_sim *sim, uint64_t seed, uint64_t first, int64_t n, float *out);

/* ---- observation: IA, bias, stochasticity, galaxies and noise */
enum { LSS_POISSON_EXACT = 0,          /* lss_rng_poisson */
       LSS_POISSON_ANSCOMBE = 1,       /* z ~ N(2 sqrt(lam + 3/8), 1), N = round(max((z^2 - 1)/4 - 3/8, 0)):
                                          the algebraic inverse, unbiased for a unit-variance Gaussian */
       LSS_POISSON_ANSCOMBE_PAPER = 2, /* appendix F as printed (F1-F3); its mean is high by about 1/4 count
                                          (5% at lam = 5, 0.5% at lam = 55) */
       LSS_POISSON_INVERSE = 3         /* exact, one uniform per pixel by inversion (lss_poisson_quantile): with
                                          common random numbers the counts move monotonically with the mean;
                                          for finite-difference derivatives */ };
enum { LSS_BIAS_LINEAR = 0,            /* n (1 + b delta_r), eq. 10 */
       LSS_BIAS_NONLINEAR = 1,         /* n (1 + b delta_r + b2 delta_r^2), eq. 13 */
       LSS_BIAS_NONLINEAR_CODE = 2     /* n (1 + b delta_r + 1/2 b2 sign(delta_r) delta_r^2): the released code */ };
enum { LSS_SHAPE_NOISE_PAPER = 0,      /* sigma_e / sqrt(max(N, 1)), eq. 11 (a pixel without galaxies as one) */
       LSS_SHAPE_NOISE_CODE = 1        /* sigma_e / sqrt(N + 1), the released code */ };
typedef struct {
    int no_noise;         /* 1: noise-free maps: kappa + A_IA^i kappa_IA and the galaxy contrast b delta_r (+ b2 term) */
    int poisson;          /* LSS_POISSON_* (default exact) */
    int bias;             /* LSS_BIAS_* (default linear) */
    int shape_noise;      /* LSS_SHAPE_NOISE_* (default paper) */
    double sigma_e;       /* 0: 0.4 */
    double ngal_arcmin2;  /* galaxies per arcmin^2 per bin; 0: 2.5 */
    double max_rate;      /* upper clip of the Poisson mean per pixel; 0: 1e5 */
} lss_noise_opts;

/* Per-bin amplitudes of eqs. 8-9 for the simulator's bins: a_ia[nbins], b[nbins], b2[nbins] (any may be NULL). */
LSSDEF void lss_sim_bin_amplitudes(const lss_sim *sim, const lss_params *p, double *a_ia, double *b, double *b2);
/* Observed maps out[2*nbins][nside][nside] (kappa_g bins 1..n, then delta_g bins 1..n) from a noise-free field
   (lss_sim_field layout), parameters p (A_IA, eta_IA, b_g, eta_bg, r_g, b_g2, eta_bg2 used; checked against the
   Table I priors: LSS_ERR_RANGE), options o (NULL: defaults) and the noise stream (seed, index). Galaxy counts
   are Poisson(lam) with lam = nbar (1 + delta') clipped to [0, max_rate] and rescaled to keep the field's total
   (appendix E); delta_g = N / nbar - 1; kappa_g = kappa + A_IA^i kappa_IA + sigma_e / sqrt(N) N(0, 1). */
LSSDEF int lss_sim_observe(const lss_sim *sim, lss_sim_work *w, const float *field, const lss_params *p,
                           const lss_noise_opts *o, uint64_t seed, uint64_t index, float *out);
/* The galaxy counts of the last lss_sim_observe with noise on this work buffer ([nbins][nside][nside]). */
LSSDEF const float *lss_sim_work_counts(const lss_sim_work *w);

/* Stochasticity (eq. 12): adds (1 - r_g)^(2/3) U(-pi, pi) to the phase of every Fourier coefficient of the
   n x n map (in place), keeping Hermitian symmetry (self-conjugate modes unchanged); stream (seed, index, bin). */
LSSDEF int lss_sim_stochastic(const lss_sim *sim, lss_sim_work *w, float *map, double r_g, uint64_t seed,
                              uint64_t index, int bin);
/* Expected correlation of a mode with its decorrelated copy, sin(a pi)/(a pi) with a = (1 - r_g)^(2/3). */
LSSDEF double lss_stochastic_corr(double r_g);

/* One approximate Poisson draw by the inverse Anscombe route (mode LSS_POISSON_ANSCOMBE or _PAPER). */
LSSDEF double lss_poisson_anscombe(lss_rng *r, double lam, int mode);
/* Rescales a rate map so that it is >= 0 and <= max_rate while its total is kept (appendix E). Returns the
   number of clipped pixels. */
LSSDEF int64_t lss_clip_rates(float *lam, int64_t n, double max_rate);

/* Appendix E scaling before networks: kappa_g x (0.005^2 + sigma_pix^2)^-1/2 (18.45 for DeepLSS), delta_g
   unchanged (already N/nbar - 1), non-finite values set to 0. maps[2*nbins][npix]. */
LSSDEF double lss_kappa_net_scale(double sigma_e, double ngal_arcmin2, double pixel_arcmin);
LSSDEF void lss_scale_for_network(float *maps, int nbins, int64_t npix, double kappa_scale);

/* Gaussian smoothing sigmas (arcmin) of section II B for scale R (Mpc/h) at the redshifts zmean[nbins],
   with the pixel kernel taken out: sigma = sqrt(sigma_R^2 - d^2/12), sigma_R = R h (1+z) / (2 sqrt 2 chi(z))
   (radians, chi in Mpc/h); this reproduces the paper's 4.8, 3.5, 2.8, 2.5 (R = 4) and 9.8, 7.4, 6.0, 5.6
   (R = 8) arcmin at the paper's bin means 0.31, 0.48, 0.75, 0.94 (the built-in n(z) table, read off a figure,
   has means 0.299, 0.478, 0.751, 0.940 and gives 4.9, 3.5, 2.8, 2.5 and 10.1, 7.5, 6.0, 5.6; lss_sim_opts.
   smooth_zmean selects the redshifts). out[nbins]; 0 where sigma_R <= d/sqrt(12) or R <= 0. */
LSSDEF void lss_smoothing_sigmas(const lss_cosmo *c, const double *zmean, int nbins, double r_mpch,
                                 double pixel_arcmin, double *out);

/* ---- surveys: mosaics */
/* out[nchan][grid*n][grid*n] from grid*grid fields fields[k] ([nchan][n][n] each): field k goes to a random
   slot (a permutation from stream (seed, index)) with random up-down and left-right flips. */
LSSDEF int lss_mosaic(const float *const *fields, int grid, int nchan, int n, uint64_t seed, uint64_t index,
                      float *out);

/* ---- power spectra: the estimator lss_ps (declared in the STATISTICS section below) */
typedef struct lss_ps lss_ps;

/* Exact expected spectra of noise-free observed fields (lss_sim_observe with no_noise, linear bias) for
   parameters p, binned by ps (which must match the field size): out[npairs][nbins] for the 2*nbins channels,
   pairs as lss_ps_pair(ps, 1, ...). Includes the shell sum, the lognormal grid spectra after clipping, the
   periodic padded grid, the cut-out (finite patch), smoothing and pixel kernel, stochasticity
   (kappa x delta pairs scaled by lss_stochastic_corr mode by mode) and the binning over the same modes; the only
   approximation is the second-order effect of eq. 7 (division by the field mean).
   With limber != NULL the grid spectra are instead the continuous Limber spectra lss_cl_tomo of that cosmology
   (IA and bias from its parameters, r_g from p; no lognormal clipping): everything else the same, so the
   difference from the shell version is the shell discretisation of the Limber integral (up to ~6% for the
   default dz = 0.05 shells at low redshift, < 0.3% with dz = 0.01). */
LSSDEF int lss_sim_expected_ps(const lss_sim *sim, const lss_params *p, const lss_cosmo *limber, const lss_ps *ps,
                               double *out);

/* ---- parameters from the Table I priors */
/* Sobol point `index` (Joe-Kuo direction numbers, dims <= 9, Gray-code order, point 0 = origin) with a random
   digital shift from `seed` (seed 0: no shift): u[dim] in [0, 1). */
LSSDEF int lss_sobol(uint64_t index, int dim, uint64_t seed, double *u);
/* Maps u[ndim] in [0,1) to the Table I prior box: Omega_m, sigma_8, A_IA, eta_IA, b_g, eta_bg, r_g (7 dims),
   then b_g2, eta_bg2 (9 dims, non-linear bias). Other fields of p (Omega_b, h, n_s, ...) are left as they are. */
LSSDEF int lss_params_from_unit(const double *u, int ndim, lss_params *p);

/* ---- the observation recipe: from noise-free fields to what a network sees
 * One survey = grid x grid fields. lss_survey_observe turns grid^2 noise-free fields (lss_sim_field layout)
 * into one survey map and its spectra, always in this order:
 *   1. field k observed (lss_sim_observe) with the noise stream (seed, lss_survey_field_index(sv, index, k));
 *   2. appendix E scaling for networks (lss_scale_for_network; off with no_scale);
 *   3. the mosaic of the grid^2 fields, placement and flips from stream (seed, index) (lss_mosaic);
 *   4. all auto and cross spectra of the 2 nbins channels in nell log-spaced bins (lss_ps_compute, mode ps_mode:
 *      LSS_PS_REAL by default).
 * lss-sim writes lss_survey_simulate's maps and deeplss trains on lss_pool_observe's, which both end in
 * lss_survey_observe: the same fields, parameters and (seed, index) give the same map, bit for bit.
 * `index` is an item of a data set (lss_set_index): training, validation and test surveys never share draws.
 *
 * Example (survey 3 of the test set, fresh fields):
 *     lss_survey_opts so = {0}; lss_survey *sv; lss_survey_work *w;
 *     so.grid = 6; so.nell = 20; so.ell_min = 36; so.ell_max = 4536;
 *     lss_survey_create(sim, &so, &sv); lss_survey_work_create(sv, &w);
 *     float *m = malloc(sizeof(float) * lss_survey_map_size(sv));
 *     double *cl = malloc(sizeof(double) * lss_survey_spec_size(sv));
 *     lss_survey_simulate(sv, sim, w, &p, seed, lss_set_index(LSS_SET_TEST, 3), m, cl);
 *     ... lss_survey_work_free(w); lss_survey_free(sv);
 */
typedef struct {
    int grid;               /* fields per side of a survey, 1..64 (0: 1) */
    int no_scale;           /* 1: no appendix E scaling (maps as observed) */
    lss_noise_opts noise;   /* observation options (zeroed: defaults) */
    int nell;               /* spectra in nell log-spaced ell bins (0: no spectra) */
    double ell_min, ell_max;/* bin range (0: 36 and 4536) */
    int ps_mode;            /* spectra estimator: LSS_PS_REAL (0, Re X_i X_j*) or LSS_PS_ABS (1, |X_i X_j*|) */
} lss_survey_opts;
typedef struct lss_survey lss_survey;            /* opaque; read-only after creation */
typedef struct lss_survey_work lss_survey_work;  /* per-thread buffers */
/* A survey recipe observing with sim (its noise model, bin amplitudes and sizes; only read, and its
   cosmology does not enter the observation). sim must outlive the survey. o NULL: defaults. Free with
   lss_survey_free. LSS_ERR_ARG for a bad grid or bins. */
LSSDEF int lss_survey_create(const lss_sim *sim, const lss_survey_opts *o, lss_survey **out);
LSSDEF void lss_survey_free(lss_survey *sv);
LSSDEF int lss_survey_work_create(const lss_survey *sv, lss_survey_work **out);
LSSDEF void lss_survey_work_free(lss_survey_work *w);
LSSDEF int lss_survey_grid(const lss_survey *sv);        /* fields per side */
LSSDEF int lss_survey_side(const lss_survey *sv);        /* map pixels per side, grid * nside */
LSSDEF int lss_survey_nbins(const lss_survey *sv);       /* tomographic bins (the map has 2 nbins channels) */
LSSDEF int64_t lss_survey_map_size(const lss_survey *sv);  /* floats of one map [2 nbins][side][side] */
LSSDEF int lss_survey_npairs(const lss_survey *sv);      /* channel pairs i <= j of the spectra */
LSSDEF int lss_survey_nell(const lss_survey *sv);        /* ell bins (0: no spectra) */
LSSDEF int64_t lss_survey_spec_size(const lss_survey *sv); /* doubles of one spectra set [npairs][nell] */
/* Pair q -> channels (i, j), i <= j (lss_ps_pair order); LSS_ERR_ARG for q outside 0..npairs-1. */
LSSDEF int lss_survey_pair(const lss_survey *sv, int q, int *i, int *j);
/* Item of field k (0..grid^2-1) of survey `index`: the data set of index kept, item i -> i grid^2 + k, so
   fresh fields and their noise never collide between surveys. LSS_STREAM_INDEX_MAX (an invalid index) when
   the item is too large (i grid^2 + k >= LSS_SET_INDEX_MAX) or k is out of range. */
LSSDEF uint64_t lss_survey_field_index(const lss_survey *sv, uint64_t index, int k);
/* The recipe above: fields[grid^2] noise-free fields, p the parameters (Table I prior enforced), map
   [2 nbins][side][side], spec [npairs][nell] (may be NULL). */
LSSDEF int lss_survey_observe(const lss_survey *sv, lss_survey_work *w, const float *const *fields,
                              const lss_params *p, uint64_t seed, uint64_t index, float *map, double *spec);
/* Fresh fields: field k = lss_sim_field(fsim, ..., seed, lss_survey_field_index(sv, index, k)) with fsim's
   cosmology (fsim: the same sizes and bins as the survey's simulator, e.g. one per cosmology), then
   lss_survey_observe. */
LSSDEF int lss_survey_simulate(const lss_survey *sv, const lss_sim *fsim, lss_survey_work *w, const lss_params *p,
                               uint64_t seed, uint64_t index, float *map, double *spec);

/* ---- Finite-difference simulation sets (Fisher forecasts from simulations)
 * Observation i of variant v: v = 0 at the parameters p0, survey index lss_set_index(LSS_SET_FISHER, i) (the
 * covariance set); v = 1 + 2a and v = 2 + 2a at p0 with parameter a (LSS_P_* order, a < na) moved by +step[a]
 * and -step[a], survey index lss_set_index(LSS_SET_FISHER, LSS_FDSIMS_DER_BASE + i) for every +- variant: the
 * same Gaussian phases, stochasticity phases, mosaic, shape noise and Poisson uniforms (common random numbers,
 * so that the difference of a pair is the response to the parameter, not noise). Omega_m and sigma_8 change
 * the fields (one simulator per variant, built with the same options), the other parameters only the
 * observation. Give the survey noise.poisson = LSS_POISSON_INVERSE: the exact sampler draws a variable
 * number of uniforms per count, so that a shifted mean reshuffles every later count of the map. */
#define LSS_FDSIMS_DER_BASE ((uint64_t)1 << 39)
typedef struct lss_fdsims lss_fdsims;   /* opaque; read-only after creation (one lss_survey_work per thread) */
/* sv: the survey recipe (only read; must outlive the set); bins, so: the simulator's n(z) and options; every
   variant's parameters must pass lss_params_check (LSS_ERR_RANGE naming the variant), steps must be > 0 and
   finite, na <= LSS_NPARAM_TABLE1. */
LSSDEF int lss_fdsims_create(const lss_survey *sv, const lss_nz *bins, int nbins, const lss_sim_opts *so, const lss_params *p0,
                             int na, const double *step, lss_fdsims **out);
LSSDEF void lss_fdsims_free(lss_fdsims *f);
LSSDEF int lss_fdsims_nvariants(const lss_fdsims *f);   /* 1 + 2 na */
/* The parameters of variant v (LSS_ERR_ARG outside 0 .. 2 na). */
LSSDEF int lss_fdsims_params(const lss_fdsims *f, int v, lss_params *p);
/* Observation i (< LSS_FDSIMS_DER_BASE) of variant v: map [2 nbins][side][side] and spec [npairs][nell] (may be
   NULL), as lss_survey_simulate. */
LSSDEF int lss_fdsims_observe(const lss_fdsims *f, lss_survey_work *w, int v, uint64_t i, uint64_t seed, float *map,
                              double *spec);
/* The whole set as nfid + 2 na nder rows, in the layout lss_fisher_from_sims reads: rows [0, nfid) the fiducial
   observations, then na blocks of nder rows at +step (parameter a: rows nfid + a nder + i), then na blocks at -step
   (rows nfid + (na + a) nder + i); pair i of every block shares its random numbers. Rows r0 .. r0 + n - 1 into
   maps [n][map_size] and spec [n][spec_size] (may be NULL), in parallel (OpenMP; works[nwork], one per thread,
   nwork >= the number of threads); identical whatever the thread count. */
LSSDEF int lss_fdsims_observe_rows(const lss_fdsims *f, lss_survey_work *const *works, int nwork, uint64_t seed, int64_t nfid,
                                   int64_t nder, int64_t r0, int n, float *maps, double *spec);
/* The spectra of the channels ch0 .. ch0 + nch - 1 among all pairs of a survey's spectra spec [npairs][nell]: the
   pairs (i, j) with both channels in the range, in pair order, into out [nch (nch + 1) / 2][nell]. */
LSSDEF int lss_survey_select_spectra(const lss_survey *sv, const double *spec, int ch0, int nch, double *out);

/* ---- DeepLSS training data: a pool of noise-free fields at grid cosmologies, and draws from it
 * Section III: noise-free fields are expensive, observations cheap. The pool holds nf_train training and
 * nf_test held-out fields at each of ncosmo grid cosmologies (Omega_m, sigma_8); a draw picks a grid
 * cosmology, the other Table I parameters, grid^2 pool fields and a fresh observation. */
typedef struct {
    int ncosmo, nf_train, nf_test, nbins, nside;
    int64_t field_size;     /* floats of one field, 3 nbins nside^2 */
    double *cosmo;          /* [ncosmo][2] Omega_m, sigma_8; cosmology 0 is the fiducial */
    float *fields;          /* [ncosmo][nf_train + nf_test][3 nbins][nside][nside] */
} lss_pool;
/* Allocates an empty pool (caller-owned struct, freed with lss_pool_free). LSS_ERR_ARG for sizes < 1. */
LSSDEF int lss_pool_init(lss_pool *pool, int ncosmo, int nf_train, int nf_test, int nbins, int nside);
LSSDEF void lss_pool_free(lss_pool *pool);
/* Grid cosmologies: the fiducial first, then a scrambled Sobol sequence over the Table I (Omega_m, sigma_8)
   box, the scrambling drawn from stream (seed, LSS_STREAM_COSMO). cosmo[ncosmo][2]. */
LSSDEF int lss_pool_grid(uint64_t seed, int ncosmo, double *cosmo);
/* Fills pool->cosmo (lss_pool_grid) and simulates every field: training field f of cosmology c is
   lss_sim_field(..., seed, lss_set_index(LSS_SET_TRAIN, c nf_train + f)), held-out field f
   lss_set_index(LSS_SET_TEST, c nf_test + f). so: the simulator options (nside must match the pool).
   progress (may be NULL) is called after each cosmology; a non-zero return stops with LSS_ERR_STATE. */
LSSDEF int lss_pool_simulate(lss_pool *pool, const lss_nz *nz, const lss_sim_opts *so, uint64_t seed,
                             int (*progress)(int done, int total, void *user), void *user);
/* The same from an N-body shell library (lss-sim nbody; SHELL LIBRARY section): pool->ncosmo must equal the
   library's entries, and pool->cosmo receives their (Omega_m, sigma_8) (entry 0 should be the fiducial, as
   `lss-sim nbody --cosmologies N` makes it). Each entry's cones are split: held-out fields come from the last
   max(1, ncone / 4) cones, training fields from the others, so that no held-out field shares structure with a
   training field; field f of a part is view f mod (8 x its cones) (cone, then flip/transpose; see
   lss_sim_use_shells), so fields beyond the available views repeat them (logged once). Needs ncone >= 2. */
LSSDEF int lss_pool_simulate_library(lss_pool *pool, const lss_nz *nz, const lss_sim_opts *so, const char *dir,
                                     int (*progress)(int done, int total, void *user), void *user);
/* Saves a pool in DIR as pool_cosmo.npy (float64 [ncosmo, 2]) and pool_fields.npy (float32 [ncosmo,
   nf_train + nf_test, 3 nbins, nside, nside]), each atomically. */
LSSDEF int lss_pool_save(const lss_pool *pool, const char *dir);
/* Loads them into a pool made by lss_pool_init with the sizes of the saved one: LSS_ERR_FORMAT naming the
   file when a type or shape differs. with_fields = 0 reads only pool_cosmo.npy (pool->fields untouched). */
LSSDEF int lss_pool_load(lss_pool *pool, const char *dir, int with_fields);
/* One draw. index: the survey (lss_set_index(set, i)); its nuisance parameters, grid cosmology and field
   choice come from stream (seed, LSS_STREAM_NUISANCE, index), its noise and mosaic from (seed, index). */
typedef struct {
    int ci;                            /* grid cosmology */
    double theta[LSS_NPARAM_LINEAR];   /* Table I parameters (theta[0..1] = the grid cosmology) */
    int test;                          /* 1: fields from the held-out part of the pool */
    uint64_t index;
} lss_pool_draw;
/* A random draw: a uniform grid cosmology, the nuisance parameters uniform over the Table I box. */
LSSDEF void lss_pool_draw_random(const lss_pool *pool, uint64_t seed, uint64_t index, int test, lss_pool_draw *d);
/* Evaluation draws of section IV, each its own data set:
   LSS_DRAWS_MDN   item i: grid cosmology i / per, the nuisance parameters a scrambled Sobol point (per
                   draws per cosmology, the scrambling from stream COSMO of the cosmology), held-out fields;
   LSS_DRAWS_CAL   random draws (lss_pool_draw_random) on held-out fields (calibration mocks);
   LSS_DRAWS_FID   the fiducial parameters, fresh noise and held-out fields;
   LSS_DRAWS_CHECK per draws at each of a set of random parameter points (item i: point i / per). */
enum { LSS_DRAWS_MDN = 0, LSS_DRAWS_CAL, LSS_DRAWS_FID, LSS_DRAWS_CHECK, LSS_DRAWS_NSETS };
LSSDEF int lss_pool_eval_draw(const lss_pool *pool, uint64_t seed, int which, int64_t i, int per, lss_pool_draw *d);
/* The draw's survey: grid^2 pool fields chosen by the draw's stream, then lss_survey_observe. */
LSSDEF int lss_pool_observe(const lss_pool *pool, const lss_survey *sv, lss_survey_work *w, const lss_pool_draw *d,
                            uint64_t seed, float *map, double *spec);
/* n draws in parallel (OpenMP; works[nwork], one per thread, nwork >= the number of threads): maps
   [n][map_size], spec [n][spec_size] (may be NULL). Identical whatever the thread count. */
LSSDEF int lss_pool_observe_many(const lss_pool *pool, const lss_survey *sv, lss_survey_work *const *works, int nwork,
                                 const lss_pool_draw *d, int n, uint64_t seed, float *maps, double *spec);
/* A batch of n random draws: draw i = lss_pool_draw_random(pool, seed, lss_set_index(set, first + i), test),
   observed by lss_pool_observe_many; theta [n][LSS_NPARAM_LINEAR] receives their parameters (may be NULL).
   A training batch of step t is (LSS_SET_TRAIN, first = t n, test = 0): a pure function of t. */
LSSDEF int lss_pool_batch(const lss_pool *pool, const lss_survey *sv, lss_survey_work *const *works, int nwork, lss_set set,
                          uint64_t first, int n, int test, uint64_t seed, float *maps, double *spec, double *theta);

/* ==== STATISTICS DECLARATIONS (flat-sky grids, FFTs, fields, spectra, smoothing) ==== */
/* Map statistics shared by DeepLSS, the generators' validation and mass mapping (lss_massmap.h calls this
 * section and keeps no grid or spectrum code of its own). Statistics take a map [H, W] (float, C order,
 * indexed [y, x]) or a stack [C, H, W] and the pixel scale in arcmin.
 *
 * What it holds
 *   - lss_grid: a flat-sky grid of h x w pixels with its Fourier tables (multipole, spin-2 phase) and one
 *     complex FFT workspace per OpenMP thread (lss_grid_ws_get/put); complex FFTs in float and double.
 *   - spectra and fields on a grid: the grid spectrum of a C_ell table (lss_grid_spectrum), Gaussian fields
 *     (lss_field_gaussian), shifted lognormal fields (lss_field_lognormal_spectrum, lss_field_lognormal).
 *   - binned power spectra: one map or a cross pair on a grid (lss_grid_ps), a grid spectrum binned the same
 *     way (lss_grid_bin_spectrum), stacks of channels with all auto and cross pairs (lss_ps_*); bin edges
 *     from lss_ps_edges (log-spaced, optionally with a minimum width) or lss_grid_ps_edges (fundamental to
 *     Nyquist multipole of a grid).
 *   - smoothing: FFT Gaussian on the periodic grid (lss_grid_smooth) and the sampled separable Gaussian with
 *     zeros outside the map (lss_smooth_zeropad, the DeepLSS released code's form).
 *   Statistics to come in this section keep the same shape (a map or a stack, a pixel scale, outputs last):
 *   peak counts, Minkowski functionals, bispectrum, SSIM, Wasserstein and Frechet distances.
 *
 * Conventions
 *   - FFTs are unnormalised (FFTW's sign -1 forward, +1 inverse, no 1/N); the orthonormal spectrum of a map
 *     on the grid is P_pix(k) = E|F[x]_k|^2 / N, N = h w, and C_ell = P_pix pix^2 (pix in radians), no pixel
 *     window. A grid spectrum pk[h*w] is P_pix per cell in FFT order (row-major, unshifted).
 *   - Frequencies k_y (rows) and k_x (columns) in cycles per pixel, index i -> i/n for i <= (n-1)/2 and
 *     (i - n)/n above; on even sides the Nyquist cell k = +-1/2 takes the sign of the other axis' frequency
 *     (this keeps spin-2 operators unitary). Multipole ell = 2 pi |k| / pix (pix in radians).
 *   - Binning (one convention for every binned spectrum): a bin b holds the modes of the full Fourier plane
 *     with edge_b <= ell < edge_{b+1}, k = 0 excluded; its value is the mean over those modes and its ell the
 *     mean ell of those modes; bins without modes give NaN. Cross spectra take Re(X_a X_b^*).
 *   - Gaussian smoothing kernel exp(-r^2 / (2 sigma^2)) of unit sum; FFT smoothing multiplies by
 *     exp(-2 pi^2 sigma_pix^2 |k|^2).
 *   - Randomness: a field is a pure function of (seed, stream) (use the registry, lss_stream()). */
typedef float lss_cfloat[2];    /* complex float as FFTW's fftwf_complex */
typedef double lss_cdouble[2];  /* complex double as FFTW's fftw_complex */
typedef struct lss_grid lss_grid; /* opaque: sizes, Fourier tables, FFTW plans, per-thread workspaces */
typedef struct {
    lss_cfloat *a, *b;          /* two float buffers of h*w cells */
    lss_cdouble *c, *d;         /* two double buffers of h*w cells */
} lss_grid_ws;
/* A grid of h x w pixels (h, w >= 2, h w <= 2^30) of pix_arcmin arcmin. Creates FFTW plans: call outside
   parallel regions. Free with lss_grid_free. */
LSSDEF int lss_grid_create(int h, int w, double pix_arcmin, lss_grid **out);
LSSDEF void lss_grid_free(lss_grid *g);
LSSDEF int lss_grid_h(const lss_grid *g);
LSSDEF int lss_grid_w(const lss_grid *g);
LSSDEF int64_t lss_grid_npix(const lss_grid *g);
LSSDEF double lss_grid_pix_arcmin(const lss_grid *g);
LSSDEF double lss_grid_pix_rad(const lss_grid *g);
/* |k|^2 (cycles per pixel squared) and multipole of Fourier cell i (FFT order). */
LSSDEF double lss_grid_k2(const lss_grid *g, int64_t i);
LSSDEF double lss_grid_ell(const lss_grid *g, int64_t i);
/* Spin-2 phase tables: cos 2 phi_k = (k_x^2 - k_y^2)/k^2 and sin 2 phi_k = 2 k_x k_y / k^2 per cell
   (0 at k = 0), the Kaiser-Squires kernel. Owned by the grid. */
LSSDEF const float *lss_grid_cos2(const lss_grid *g);
LSSDEF const float *lss_grid_sin2(const lss_grid *g);
/* Workspaces: lss_grid_ws_get returns the calling thread's workspace (threads of one parallel region), or
   fills tmp with a temporary one in nested regions (NULL when that allocation fails, error set); release
   with lss_grid_ws_put(w, tmp). lss_grid_ws_thread(g, t) is thread t's workspace (NULL when t is out of
   range); lss_grid_nws the number of them. lss_grid_ws_alloc/release manage a workspace of one's own. */
LSSDEF lss_grid_ws *lss_grid_ws_get(const lss_grid *g, lss_grid_ws *tmp);
LSSDEF void lss_grid_ws_put(lss_grid_ws *w, lss_grid_ws *tmp);
LSSDEF lss_grid_ws *lss_grid_ws_thread(const lss_grid *g, int t);
LSSDEF int lss_grid_nws(const lss_grid *g);
LSSDEF int lss_grid_ws_alloc(const lss_grid *g, lss_grid_ws *w);
LSSDEF void lss_grid_ws_release(lss_grid_ws *w);
/* In-place unnormalised complex FFT of h*w cells; sign -1 forward, +1 inverse. Thread-safe. */
LSSDEF void lss_grid_fft(const lss_grid *g, lss_cfloat *buf, int sign);
LSSDEF void lss_grid_fft_d(const lss_grid *g, lss_cdouble *buf, int sign);

/* Grid spectrum pk[h*w] of a C_ell table: P_pix = C_ell(ell)/pix^2 at each cell's ell, linear interpolation
   in ell clamped at the table ends, pk[0] = 0. ell strictly increasing, cl finite and >= 0, n >= 2. */
LSSDEF int lss_grid_spectrum(const lss_grid *g, const double *ell, const double *cl, int n, double *pk);
/* Zero-mean Gaussian random field with grid spectrum pk (white noise of (seed, stream) in pixel order,
   coloured in double precision). */
LSSDEF int lss_field_gaussian(const lss_grid *g, const double *pk, uint64_t seed, uint64_t stream, float *out);
/* Spectrum of the Gaussian field G behind a shifted lognormal field kappa = lambda (exp(G - var/2) - 1) of
   spectrum pk: xi_G = ln(1 + xi / lambda^2) on the grid, negative powers clipped to 0. */
LSSDEF int lss_field_lognormal_spectrum(const lss_grid *g, const double *pk, double lambda, double *pk_gauss);
/* Shifted lognormal field (mean removed) from the Gaussian spectrum of lss_field_lognormal_spectrum. */
LSSDEF int lss_field_lognormal(const lss_grid *g, const double *pk_gauss, double lambda, uint64_t seed,
                               uint64_t stream, float *out);

/* nbins + 1 log-spaced edges from the grid's fundamental multipole 2 pi / (pix max(h, w)) to its Nyquist
   multipole pi / pix; the last edge is raised by 1e-9 (relative) so that the Nyquist modes on the axes are
   included. */
LSSDEF int lss_grid_ps_edges(const lss_grid *g, int nbins, double *edges);
/* Binned power spectrum of map a, or cross spectrum of a and b (b NULL: auto), [h*w] each:
   cl[b] = mean over the bin's modes of pix^2 Re(F a F b^*) / N. ell_mean (may be NULL) receives the mean ell
   of each bin's modes. */
LSSDEF int lss_grid_ps(const lss_grid *g, const float *a, const float *b, const double *edges, int nbins,
                       double *ell_mean, double *cl);
/* A grid spectrum pk (theory on the grid) binned like lss_grid_ps: mean of pix^2 pk over each bin's modes. */
LSSDEF int lss_grid_bin_spectrum(const lss_grid *g, const double *pk, const double *edges, int nbins, double *cl);

/* Periodic Gaussian smoothing of a map on the grid by FFT, sigma_arcmin >= 0 (0: copy); in may equal out. */
LSSDEF int lss_grid_smooth(const lss_grid *g, const float *in, float *out, double sigma_arcmin);
/* Smooths an h x w map in place with a sampled Gaussian of sigma_px pixels (kernel half-width int(5 sigma),
   at most 64, normalised to 1), zeros outside the map (the released code's form). tmp holds h*w floats.
   Does nothing when sigma_px <= 0 or an argument is NULL. */
LSSDEF void lss_smooth_zeropad(float *map, int h, int w, double sigma_px, float *tmp);

/* Bin edges: nbins + 1 log-spaced edges from lmin to lmax; when dl_min > 0 every bin is at least dl_min wide
   (linear steps of dl_min at low ell, log steps above, ending exactly at lmax), as DeepLSS describes. */
LSSDEF int lss_ps_edges(double lmin, double lmax, int nbins, double dl_min, double *edges);

typedef struct lss_ps lss_ps;
enum { LSS_PS_REAL = 0, /* cross spectra Re(X_i X_j*) */ LSS_PS_ABS = 1 /* |X_i X_j*| (the released code) */ };
/* Power-spectrum estimator for stacks of nchan maps [nchan][ny][nx] of pixel_arcmin pixels (real-to-complex
   FFTs, every auto and cross pair). Normalisation and binning as the section head: C_ell estimate of a mode
   = X_i X_j* * Omega_pix / N_pix (X the unnormalised DFT, Omega_pix in sr); edges are copied. Free with
   lss_ps_free. */
LSSDEF int lss_ps_create(int ny, int nx, double pixel_arcmin, int nchan, const double *edges, int nbins,
                         lss_ps **out);
LSSDEF void lss_ps_free(lss_ps *ps);
LSSDEF int lss_ps_nbins(const lss_ps *ps);
LSSDEF int lss_ps_npairs(const lss_ps *ps, int cross); /* nchan (autos) or nchan (nchan+1)/2 */
/* Pair p -> channels (i, j), i <= j: (0,0), (0,1), ..., (0,n-1), (1,1), ... when cross; (p, p) otherwise. */
LSSDEF void lss_ps_pair(const lss_ps *ps, int cross, int p, int *i, int *j);
LSSDEF const double *lss_ps_ell(const lss_ps *ps);     /* [nbins] mean ell of each bin's modes */
LSSDEF const int64_t *lss_ps_nmodes(const lss_ps *ps); /* [nbins] modes per bin */
/* Spectra of maps[nchan][ny][nx] into out[npairs][nbins]. Not thread-safe on one ps (uses its buffers);
   use one ps per thread. mode LSS_PS_REAL or LSS_PS_ABS. */
LSSDEF int lss_ps_compute(lss_ps *ps, const float *maps, int cross, int mode, double *out);
/* Bins a per-mode power given on the half-complex grid p2d[ny][nx/2+1] (already in C_ell units) into out[nbins]
   with the same modes and weights as lss_ps_compute. */
LSSDEF void lss_ps_bin2d(const lss_ps *ps, const double *p2d, double *out);
/* ---- map statistics: histograms, peaks, Minkowski functionals, bispectrum, SSIM, distances ---- */
/* Public names lss_stat_*. Per-map statistics take a grid (shape and pixel scale; field size = side x pixel) and
 * a stack maps[n][h][w] (n >= 1; a single map is n = 1) and write, for nv values per map, each[n][nv] (may be
 * NULL), mean[nv] and std[nv] over the stack (population std, ddof 0; either may be NULL). Every map is checked
 * for NaN/inf first. Options (lss_stat_opts, NULL or zeroed = defaults) apply to every per-map statistic:
 * smoothing first (periodic FFT Gaussian, lss_grid_smooth) and, with norm, thresholds in units of each (smoothed)
 * map's standard deviation (ddof 0, as LensTools' norm=True).
 *
 * Conventions, each reproducing a reference library (versions named in the tests):
 *   - lss_stat_ps: LSS_STAT_PS_SECTION is the section's binning (lss_grid_ps: full Fourier plane, edge_b <= ell <
 *     edge_{b+1}, mean over modes, ell = mean ell of the modes, empty bins NaN). LSS_STAT_PS_LENSTOOLS is
 *     ConvergenceMap.powerSpectrum of LensTools 1.2: the rfft2 half plane (columns 0..w/2, each cell once),
 *     bins edge_b < ell <= edge_{b+1} (open below, closed above), value pix^2 |F|^2 / (h w) averaged over the
 *     bin's cells, empty bins 0, ell = bin midpoints; ell_x = min(i, h - i) 2 pi / (h pix) along rows as
 *     LensTools (rectangular maps: each axis its own fundamental; square maps are LensTools exactly).
 *   - lss_stat_bispectrum: LensTools 1.2 ConvergenceMap.bispectrum (square maps only): for every rfft2 cell k1
 *     with ell1 < last edge, k2 = trunc(R k1) with R the 120-degree rotation (equilateral; cells whose angle
 *     exceeds 120 degrees skipped as LensTools) or k2 = -trunc(ratio k1) (folded, ratio in (0, 1), default 0.5,
 *     the cGAN paper's choice), k3 = -k1 - k2; legs outside the half plane read as conjugates, legs beyond
 *     +-(h/2) skipped; value Re(F1 F2 F3) pix^4 / (h w), mean per bin of ell1 (edge_b < ell1 <= edge_{b+1}),
 *     empty bins 0, ell = midpoints.
 *   - lss_stat_hist: numpy.histogram: bins [e_b, e_{b+1}), the last one closed; LSS_STAT_HIST_COUNTS the counts,
 *     LSS_STAT_HIST_DENSITY count / (in-range total x bin width in edge units) (numpy density=True; with norm this
 *     is LensTools' ConvergenceMap.pdf).
 *   - peaks: LSS_STAT_PEAKS_LENSTOOLS, a pixel strictly above its 8 neighbours with periodic wrap-around at the
 *     borders (LensTools' extern/peaks.c: every pixel, border pixels included, is tested against the opposite
 *     side); LSS_STAT_PEAKS_5X5, the cGAN paper's code: strictly above its 24 neighbours in the 5 x 5 window,
 *     neighbours outside the map ignored (no wrap). lss_stat_peak_counts follows LensTools' peakCount for both:
 *     bins [t_b sigma, t_{b+1} sigma), value count / (t_{b+1} - t_b) (a differential count; multiply by the
 *     width for plain counts); sigma = the map's std with norm, else 1.
 *   - lss_stat_minkowski: LensTools 1.2 minkowskiFunctionals on its finite differences with periodic wrap:
 *     g_x = (m[x+1] - m[x-1]) / 2 along columns, g_y along rows, h_xx = (m[x+2] + m[x-2] - 2 m) / 4,
 *     h_xy = (m[x+1,y+1] + m[x-1,y-1] - m[x-1,y+1] - m[x+1,y-1]) / 4; for thresholds t[0..nbins]:
 *     V0[b] = fraction of pixels >= (t_b + t_{b+1}) sigma / 2; V1[b] = sum over pixels in [t_b sigma,
 *     t_{b+1} sigma) of |g| / 4 / (npix (t_{b+1} - t_b)); V2[b] the same sum of (2 g_x g_y h_xy - g_x^2 h_yy -
 *     g_y^2 h_xx) / (2 pi |g|^2) (pixels with g = 0: (2 h_xy - h_xx - h_yy) / (4 pi), as LensTools). Output per map:
 *     [V0[nbins], V1[nbins], V2[nbins]]. Derivatives are per pixel (no pixel-scale factor).
 * Between sets: lss_stat_wasserstein1 (scipy.stats.wasserstein_distance, optional weights), Pearson correlation
 * matrices (numpy.corrcoef) and their Frobenius comparisons (the cGAN paper's eq. 3 and the norm of the
 * difference), relative differences of mean statistics, SSIM (scikit-image 0.19 structural_similarity), MS-SSIM
 * (TensorFlow tf.image.ssim_multiscale), the SSIM significance of the cGAN paper (eq. 4) and the Frechet distance
 * of two Gaussian fits (pytorch-fid's calculate_frechet_distance, matrix square root by symmetric
 * eigen-decompositions). lss_stat_compare gathers them into rows statistic/value/scatter. */
enum { LSS_STAT_PS_SECTION = 0, LSS_STAT_PS_LENSTOOLS = 1 };
enum { LSS_STAT_PEAKS_LENSTOOLS = 0, LSS_STAT_PEAKS_5X5 = 1 };
enum { LSS_STAT_HIST_COUNTS = 0, LSS_STAT_HIST_DENSITY = 1 };
enum { LSS_STAT_BISP_EQUILATERAL = 0, LSS_STAT_BISP_FOLDED = 1 };
typedef struct {
    double smooth_arcmin; /* > 0: Gaussian smoothing of every map first (lss_grid_smooth); 0: none */
    int norm;             /* 1: histogram edges, peak and Minkowski thresholds in units of the map's std */
    int ps_mode;          /* LSS_STAT_PS_SECTION (default) or LSS_STAT_PS_LENSTOOLS */
    int peaks;            /* LSS_STAT_PEAKS_LENSTOOLS (default) or LSS_STAT_PEAKS_5X5 */
    int hist;             /* LSS_STAT_HIST_COUNTS (default) or LSS_STAT_HIST_DENSITY */
    double fold_ratio;    /* folded bispectrum: 0 = 0.5 (LensTools' default), else in (0, 1) */
} lss_stat_opts;

/* Power spectrum on edges[nbins + 1] (>= 0, increasing); ell[nbins] (may be NULL) as the mode says. */
LSSDEF int lss_stat_ps(const lss_grid *g, const float *maps, int n, const double *edges, int nbins,
                       const lss_stat_opts *o, double *ell, double *each, double *mean, double *std);
/* Bispectrum (config LSS_STAT_BISP_EQUILATERAL or LSS_STAT_BISP_FOLDED) on the same edges; square grids. */
LSSDEF int lss_stat_bispectrum(const lss_grid *g, const float *maps, int n, int config, const double *edges,
                               int nbins, const lss_stat_opts *o, double *ell, double *each, double *mean,
                               double *std);
/* Pixel histogram on edges[nbins + 1] (finite, increasing, any sign). */
LSSDEF int lss_stat_hist(const lss_grid *g, const float *maps, int n, const double *edges, int nbins,
                         const lss_stat_opts *o, double *each, double *mean, double *std);
/* One-point moments of each map (after the options' smoothing), computed in double about the map's mean:
   out per map [LSS_STAT_NMOMENTS] = mean, standard deviation (ddof 0), skewness m3 / m2^1.5, excess kurtosis
   m4 / m2^2 - 3, and the lensing normalisations S3 = m3 / m2^2 and S4 = (m4 - 3 m2^2) / m2^3 (m_k: central
   moments). A constant map gives NaN for the last four. */
#define LSS_STAT_NMOMENTS 6
LSSDEF int lss_stat_moments(const lss_grid *g, const float *maps, int n, const lss_stat_opts *o, double *each,
                            double *mean, double *std);
/* Joint one-point moments of nch maps of one observation, maps [nch][npix] (e.g. the kappa and delta channels
   of a DeepLSS map), about each map's mean (d_a = x_a - mean_a), in double: for every channel a the central
   moments <d_a^2>, <d_a^3>, <d_a^4>, then for every pair a < b (a-major) <d_a d_b>, <d_a^2 d_b>, <d_a d_b^2>.
   out[lss_stat_joint_moments_size(nch)] = 3 nch + 3 nch (nch - 1) / 2 values. The summary "power spectra +
   moments" of the Fisher forecasts; the mixed moments carry the kappa x delta couplings of intrinsic
   alignments and galaxy bias. LSS_ERR_ARG for NULL pointers, nch < 1 or npix < 2; non-finite pixels give
   LSS_ERR_NUMERIC. */
LSSDEF int lss_stat_joint_moments_size(int nch);
LSSDEF int lss_stat_joint_moments(const float *maps, int nch, int64_t npix, double *out);
/* Peaks of one map (after the options' smoothing): *npeaks receives their number; the first min(number, cap)
   are written in raster order as pixel index y w + x (pos, may be NULL) and height (may be NULL; divided by the
   map's std with norm, as LensTools' locatePeaks). A map never has more than h w / 2 peaks. */
LSSDEF int lss_stat_peaks(const lss_grid *g, const float *map, const lss_stat_opts *o, int64_t *pos,
                          double *height, int64_t cap, int64_t *npeaks);
/* Peak-height histogram on thresholds[nbins + 1] (LensTools' peakCount normalisation, see above). */
LSSDEF int lss_stat_peak_counts(const lss_grid *g, const float *maps, int n, const double *thresholds, int nbins,
                                const lss_stat_opts *o, double *each, double *mean, double *std);
/* Minkowski functionals on thresholds[nbins + 1]: 3 nbins values per map, [V0 | V1 | V2]. */
LSSDEF int lss_stat_minkowski(const lss_grid *g, const float *maps, int n, const double *thresholds, int nbins,
                              const lss_stat_opts *o, double *each, double *mean, double *std);

/* Wasserstein-1 distance of two 1-D samples u[nu], v[nv] with optional weights (NULL: equal; else finite,
   >= 0, positive sum), scipy's CDF formula: sum over the merged sorted values of |U(x) - V(x)| dx. */
LSSDEF int lss_stat_wasserstein1(const double *u, const double *uw, int64_t nu, const double *v, const double *vw,
                                 int64_t nv, double *out);
/* Pearson correlation matrix r[d][d] of x[n][d] (n samples of d values, n >= 2; numpy.corrcoef(x, rowvar=False)).
   A value with zero variance is an error (LSS_ERR_NUMERIC). */
LSSDEF int lss_stat_corr(const double *x, int n, int d, double *r);
/* Correlation matrices R_a of xa[na][d] and R_b of xb[nb][d]: *frob = ||R_a - R_b||_F and *frac = (||R_a||_F -
   ||R_b||_F) / ||R_b||_F (the cGAN paper's eq. 3, a the generated set, b the reference); either may be NULL. */
LSSDEF int lss_stat_corr_frob(const double *xa, int na, const double *xb, int nb, int d, double *frob, double *frac);
/* Relative difference of the mean statistics of sa[na][d] and the reference sb[nb][d]: diff = (mean_a - mean_b)
   / |mean_b|, scatter = std_b / |mean_b| (ddof 0: the reference's band of one map); NaN where mean_b = 0. */
LSSDEF int lss_stat_reldiff(const double *sa, int na, const double *sb, int nb, int d, double *diff, double *scatter);

typedef struct {
    double data_range;    /* the images' dynamic range; 0: max - min over both images of the pair */
    int win_size;         /* SSIM window (odd): 0 = 7 (uniform) or 2 int(3.5 sigma + 0.5) + 1 (gaussian) */
    int gaussian;         /* SSIM: 1 = Gaussian weights (skimage gaussian_weights=True, truncate 3.5) */
    int population_cov;   /* SSIM: 1 = population covariance (use_sample_covariance=False); 0 = N/(N-1) */
    double k1, k2;        /* 0 = 0.01, 0.03 */
    double sigma;         /* Gaussian width in pixels: 0 = 1.5 (both SSIM and MS-SSIM) */
    int filter_size;      /* MS-SSIM Gaussian filter: 0 = 11 */
    int nscales;          /* MS-SSIM scales: 0 = 5 with TensorFlow's power factors */
    const double *power;  /* MS-SSIM power factors [nscales]; NULL = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) */
} lss_ssim_opts;
/* SSIM of two h x w maps, scikit-image 0.19 structural_similarity in double precision: filters with 'reflect'
   borders (uniform window or Gaussian), the SSIM map cropped by (win_size - 1) / 2 and averaged. */
LSSDEF int lss_stat_ssim(const float *a, const float *b, int h, int w, const lss_ssim_opts *o, double *out);
/* MS-SSIM of two h x w maps, TensorFlow ssim_multiscale in double precision: per scale an fspecial Gaussian
   with 'VALID' borders, cs and luminance; 2 x 2 average pooling between scales (odd sides padded by repeating
   the last row/column, TensorFlow's SYMMETRIC pad); relu; product of powers. Every scale must be at least
   filter_size on each side (h, w >= filter_size 2^(nscales-1) roughly), else LSS_ERR_SHAPE. */
LSSDEF int lss_stat_msssim(const float *a, const float *b, int h, int w, const lss_ssim_opts *o, double *out);
/* Mean and std (ddof 0) of (MS-)SSIM over pairs: b NULL = pairs of distinct maps of a (the within-set
   diversity score), else pairs (a_i, b_j). npairs 0 = every pair (i < j within a set); npairs > 0 = that many
   pairs drawn from the (seed, LSS_STREAM_CHECK) stream. */
LSSDEF int lss_stat_ssim_set(const float *a, int na, const float *b, int nb, int h, int w, int multiscale,
                             int64_t npairs, uint64_t seed, const lss_ssim_opts *o, double *mean, double *std);
/* The cGAN paper's eq. 4: s = (mean_a - mean_b) / ((std_a + std_b) / 2) of within-set SSIM scores. */
LSSDEF double lss_stat_ssim_significance(double mean_a, double std_a, double mean_b, double std_b);
/* Frechet distance |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2) of feature sets fa[na][d],
   fb[nb][d] (na, nb >= 2; covariances ddof 1 as pytorch-fid; d <= 2048). standardize = 1: both sets first
   scaled by the mean and std (ddof 0) of fb per feature, as the cGAN paper does (which reports sqrt(FD)). */
LSSDEF int lss_stat_frechet(const double *fa, int na, const double *fb, int nb, int d, int standardize, double *out);

/* Two-set comparison of the validation suite: a (generated) against b (reference), both [n][h][w] on grid g. */
typedef struct {
    char name[40];        /* e.g. "w1_pixels", "ps_rel_3", "mink_v1_rel_7", "corr_frac", "ssim_significance" */
    double value;         /* the statistic */
    double scatter;       /* its scale: see lss_stat_compare */
} lss_stat_row;
typedef struct {
    lss_stat_opts stat;   /* smoothing, modes, fold ratio */
    const double *ell_edges; int nell;        /* spectra and bispectrum edges (NULL: 8 log bins of the grid) */
    const double *thresholds; int nthr;       /* peaks and Minkowski thresholds in units of b's pixel std
                                                 (NULL: 13 edges from -2 to 4) */
    int64_t ssim_pairs;   /* within-set pairs for the SSIM significance (0 = 200); < 0: skip SSIM */
    uint64_t seed;        /* pair draws */
    /* Learnt features for the Frechet row (NULL: no such row): features(user, maps, n, h, w, feat) fills
       feat[n][nfeatures] for the n maps [n][h][w] as given (no smoothing) and returns LSS_OK or an LSS_ERR_*
       status (setting the message). The caller computes them (e.g. a network's last hidden layer). */
    int (*features)(void *user, const float *maps, int n, int h, int w, double *feat);
    int nfeatures;        /* 1..2048 */
    void *features_user;
} lss_stat_compare_opts;
/* Rows (at most cap; *nrows receives how many were written):
     w1_pixels, w1_peaks: W1 of pixel and peak values, both sets standardised by b's pixel mean and std (the
       paper's normalisation); scatter = the same W1 between the two halves of b (its null level);
     ps_rel_<b>, bisp_rel_<b>, mink_v<k>_rel_<b>: lss_stat_reldiff of the per-map statistics (scatter =
       std_b / |mean_b|); peaks/Minkowski thresholds scaled by b's pixel std;
     corr_frac: eq. 3 of the power-spectrum correlation matrices (scatter: the same between b's halves);
     ssim_significance: eq. 4 of within-set SSIM (MS-SSIM when the maps allow 5 scales), scatter = 1;
     frechet_features (with o->features): sqrt of the Frechet distance of the features, both sets standardised by
       b's features (the cGAN paper's score); scatter = the same between the two halves of b (its null level). */
LSSDEF int lss_stat_compare(const lss_grid *g, const float *a, int na, const float *b, int nb,
                            const lss_stat_compare_opts *o, lss_stat_row *rows, int cap, int *nrows);
/* ==== END STATISTICS DECLARATIONS ==== */
/* ==== GPU MAP KERNELS (LSS_CUDA; implemented in lss_gpu.cu) ==== */
#ifdef LSS_CUDA
/* DeepLSS noise and augmentation on device buffers, on a context of lss_nn.h's GPU API (lss_gpu_init;
 * link lss_gpu.cu). Same status conventions as that API; the draws use the Philox streams of
 * lss_core.h. No code of this header calls them. */
#ifndef LSS_GPU_TYPE_DECLARED
#define LSS_GPU_TYPE_DECLARED
typedef struct lss_gpu lss_gpu;
#endif
/* Shape noise on nmaps maps of npix pixels: kappa[j][k] = (float)(kappa + sigma_e / sqrt(N') eps) in
 * double with N' = max(N, 1) (mode LSS_SHAPE_NOISE_PAPER = 0) or N + 1 (LSS_SHAPE_NOISE_CODE = 1), N =
 * counts[j][k], eps = the float normal of element k of map j's stream host_streams[j] (the normalf
 * layout of lss_gpu_rand_normalf, counter0 = 0). The CPU's lss_sim_observe draws its normals
 * sequentially by a ziggurat, which a per-pixel kernel cannot reproduce: this layout is the GPU's own
 * (same distribution, other values). */
LSSDEF int lss_gpu_shape_noise(lss_gpu *ctx, float *kappa, const float *counts, int nmaps, int64_t npix,
                               double sigma_e, int mode, uint64_t seed, const uint64_t *host_streams);
/* Random flips of nfield fields of nchan x h x w (dst and src must not overlap): field f uses word 0
 * of block counter0 + f of (seed, stream): bit 0 flips up-down, bit 1 left-right (lss_mosaic's bits). */
LSSDEF int lss_gpu_random_flip(lss_gpu *ctx, const float *src, float *dst, int nfield, int nchan, int h, int w,
                               uint64_t seed, uint64_t stream, uint64_t counter0);
/* Appendix-E scaling of nsamples stacks [2 nbins][npix] in place, as lss_scale_for_network. */
LSSDEF int lss_gpu_scale_for_network(lss_gpu *ctx, float *maps, int nsamples, int nbins, int64_t npix,
                                     double kappa_scale);
#endif
/* ==== END GPU MAP KERNELS ==== */
/* ==== N-BODY DECLARATIONS (particle-mesh light cones) ==== */
/* Particle-mesh N-body simulations that make the matter shells of the forward model (the second generator of
 * ARCHITECTURE section 3; the lognormal one is lss_sim's default). One run: Gaussian initial modes of the
 * project's linear P(k) (Eisenstein-Hu, sigma_8-normalised) at z = 0 scaled back to z_init, second-order LPT
 * displacements and momenta of particles on a grid, then kick-drift-kick steps in the scale factor with the
 * FastPM kick and drift factors (Feng, Chu, Seljak & McDonald 2016, MNRAS 463, 2273, arXiv:1603.00476), which make
 * the linear growth of the large scales exact whatever the step count. Cloud-in-cell mass assignment and
 * readout on a force mesh (default 2x the particle grid per dimension); gravity solved in Fourier space.
 * Particles crossing the observer's past light cone during a drift are moved to the crossing and painted into
 * flat-sky shell maps (gnomonic projection around the line of sight, the box replicated along it with a
 * random rotation and shift per replica). The shells are what lss_sim's lognormal generator draws: density
 * contrasts of redshift shells on a pixel grid, so that projection, IA, bias, stochasticity, noise, smoothing
 * and mosaics work unchanged (lss_sim_use_shells).
 *
 * Units: comoving positions in Mpc/h, box side L; time variable a; momenta p = a^2 dx/dt in units of H0 Mpc/h.
 * Determinism: every random number comes from Philox streams keyed by (seed, LSS_STREAM_NBODY_IC, index) and
 * (seed, LSS_STREAM_NBODY_CONE, index, cone); mass assignment accumulates in 64-bit fixed point, so sums do not
 * depend on the order of the particles; FFTs are batches of single-threaded 1-D/2-D FFTW plans made with
 * FFTW_ESTIMATE and shared out over threads: a run gives the same bits at any thread count and after a
 * checkpoint and restart. */

enum { LSS_NB_STEP_LINEAR_A = 0, LSS_NB_STEP_LOG_A = 1 };
typedef struct {
    double box;          /* box side in Mpc/h; 0: 500 */
    int np;              /* particles per side (np^3 particles); 0: 256; even, 8..4096 */
    int mesh;            /* force mesh per side; 0: 2 np; >= np */
    int steps;           /* kick-drift-kick steps from a_init to a = 1; 0: 20 */
    double z_init;       /* starting redshift; 0: 9 */
    int spacing;         /* LSS_NB_STEP_LINEAR_A (default) or LSS_NB_STEP_LOG_A */
    int lpt_order;       /* 1 (Zel'dovich) or 2; 0: 2 */
    int fixed_amp;       /* 1: initial mode amplitudes fixed to sqrt(P) (random phases only) */
} lss_nbody_opts;

typedef struct {
    int side;            /* pixels per side of each shell map; even, 8..4096 */
    double pixel_arcmin; /* pixel size (gnomonic coordinates at the centre) */
    int nshell;          /* shells 0..nshell-1 between z_edges[b] and z_edges[b+1] */
    const double *z_edges; /* [nshell + 1] increasing, z_edges[0] >= 0; copied */
    int ncone;           /* light cones painted from one run (each its own replica rotations/shifts); 0: 1 */
} lss_lightcone_opts;

/* A set of N-body shell maps: what a run produces and what a shell library stores per cosmology. */
typedef struct {
    int ncone, nshell, side;
    double pixel_arcmin;
    double *z_edges;      /* [nshell + 1] */
    float *delta;         /* [ncone][nshell][side][side] density contrast N / <N> - 1 per pixel of each shell */
    lss_params params;    /* the cosmology of the run (only its cosmological fields matter) */
    uint64_t seed, index; /* the run's random streams */
    lss_nbody_opts nbody; /* how it was made (defaults filled in) */
    double seconds;       /* wall time of the run (0 if unknown) */
} lss_shellset;
LSSDEF void lss_shellset_free(lss_shellset *s);   /* frees the arrays, zeroes the struct */
/* Progress callback of a run: after each step (step = 1..steps), with the scale factor reached and the seconds
   since the run (or its resumption) started. */
typedef void (*lss_nbody_progress_fn)(int step, int steps, double a, double seconds, void *user);
/* Bytes a run of these options will allocate at its peak (particles, meshes, shell accumulators); lc may be NULL.
   -1 for invalid options. About 56 bytes per particle (28 of them keep the particles sorted by force-mesh cell,
   for speed), 4 mesh^3 bytes (the padded force mesh, which also holds the initial-condition fields) and 8 mesh^2
   bytes per thread. A run whose sort buffers do not fit in the machine's physical memory goes without them (the
   same results, slower steps); one that does not fit even then is refused before allocating (LSS_ERR_NOMEM
   naming the GB). */
LSSDEF int64_t lss_nbody_memory(const lss_nbody_opts *o, const lss_lightcone_opts *lc);
/* One light-cone run for cosmology c: initial conditions from (seed, index), o->steps steps to a = 1, the shells
   of lc painted for lc->ncone cones. out (caller's struct) receives the shell set (free with lss_shellset_free).
   checkpoint: NULL, or a path where the run state is saved (atomically) after steps; when the file exists and
   belongs to the same run (cosmology, options, seed, index) the run resumes from it and gives the identical
   result; it is removed when the run completes. fn (may be NULL) reports progress. Errors: LSS_ERR_ARG for
   impossible geometry (the cone wider than the box at its deepest shell, shells deeper than z_init, ...) with
   the reason, LSS_ERR_NOMEM naming the bytes needed. */
LSSDEF int lss_nbody_lightcone(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                               uint64_t seed, uint64_t index, const char *checkpoint, lss_nbody_progress_fn fn,
                               void *user, lss_shellset *out);
/* Makes the lss_nbody_lightcone running in this thread stop after the step it is in (call it from the progress
   callback): the state is saved to the checkpoint (when one is given) and the run returns LSS_ERR_STATE
   ("cancelled after step k"); running it again with the same checkpoint resumes it. */
LSSDEF void lss_nbody_cancel(void);

/* Lower-level API (what lss_nbody_lightcone is made of; validation and benchmarks use it).
 * Method, as implemented:
 *  - Initial conditions: delta_k of the z = 0 linear field drawn per signed integer wave vector m = (mx, my, mz)
 *    (k = 2 pi m / L) from Philox block lss_philox_block(seed, lss_stream(LSS_STREAM_NBODY_IC, index, 0), counter)
 *    with counter = (mx mod 2^21) << 42 | (my mod 2^21) << 21 | (mz mod 2^21) of the representative of {m, -m}
 *    with mz > 0, or mz = 0 and my > 0, or mz = my = 0 and mx > 0 (the other one is its complex conjugate):
 *    |delta_k| = sqrt(P(k)/L^3 * -ln u1) (sqrt(P/L^3) with fixed_amp), phase 2 pi u2, u1, u2 the two doubles of
 *    the block; so a mode is the same at every particle resolution. Nyquist modes (any |m_i| = np/2) and m = 0
 *    are zero. delta(x) = sum_k delta_k e^{i k.x}.
 *  - 2LPT (Crocce, Pueblas & Scoccimarro 2006): x = q + D1 Psi1 + D2 Psi2, Psi1 = -grad phi1, lap phi1 = delta,
 *    Psi2 = grad phi2, lap phi2 = sum_{i<j} (phi1,ii phi1,jj - phi1,ij^2), D2 = -3/7 D1^2 Omega_m(a)^(-1/143)
 *    (Bouchet et al. 1995 fit; dD2/da from the same formula), p = a^3 E (D1' Psi1 + D2' Psi2); q on the grid
 *    i L / np. D1 is the exact flat-LCDM growth D ~ E(a) int_0^a da'/(a'E)^3, D1(1) = 1 (lss_nbody_growth).
 *  - Positions are unsigned 32-bit fixed point (unit L / 2^32: periodic wrap exact, cells and CIC fractions
 *    exact integers), momenta p = a^2 dx/dt (H0 = 1, Mpc/h) in float.
 *  - Steps: nodes a_i linear (or uniform in ln a) from a_init to 1, half-step nodes at the midpoints in that
 *    variable; kick-drift-kick with the FastPM factors (Feng et al. 2016, arXiv:1603.00476, eqs. 22-24):
 *    drift (D1(a_f) - D1(a_i)) / g_p(a_c), kick (g_p(a_f) - g_p(a_i)) / g_f(a_c), g_p = a^3 E dD1/da,
 *    g_f = a^2 E dg_p/da = 3/2 Omega_m D1 (exact for LCDM). The force applied is -grad psi with
 *    lap psi = 3/2 Omega_m delta (= a phi, phi the potential of lap phi = 3/2 Omega_m delta / a, since dp/dt =
 *    -grad phi and dt = da / (a E)), so the large scales grow exactly as D1 at any step count. State between
 *    steps: positions at a_i, momenta at a_{i+1/2}; the forces after the last drift are not computed.
 *  - Force: CIC painting of the particles on the mesh in 64-bit fixed point (each particle exactly
 *    lss_nbody_mass_unit = 2^min(31, 62 - ceil(log2 np^3)), split exactly over its 8 cells); Poisson kernel
 *    psi_k = -3/2 Omega_m delta_k / k^2 (exact inverse Laplacian, no CIC deconvolution, Nyquist modes kept); one
 *    inverse FFT; then the 4-point finite-difference gradient [8 (psi_{i+1} - psi_{i-1}) - (psi_{i+2} - psi_{i-2})]
 *    / (12 h) taken in real space and read out with CIC at each particle (a finite-difference gradient as in
 *    FastPM; in Fourier space it is i (8 sin kh - sin 2kh) / (6h)). Two FFTs per step (a spectral gradient would
 *    need four and one more mesh of memory).
 *  - FFTs: 2-D r2c/c2r plane transforms (one per x plane), then the 1-D transforms along x, per ky row in chunks of
 *    16 columns gathered into a per-thread buffer; single-threaded FFTW_ESTIMATE plans shared out over OpenMP
 *    threads; all particle loops in fixed blocks and all sums in integers or in a fixed order: the same bits at any
 *    thread count (tested at 1 and 2).
 *  - Light cone: observer at (L/2, L/2, 0) of replica 0, replica k covers kL <= z < (k+1)L; cone c draws for
 *    replica k, from lss_rng_for(seed, LSS_STREAM_NBODY_CONE, index, c) sought to block 16 k, one of the 48
 *    signed axis permutations (lss_rng_below(48)) and a periodic shift of whole particle spacings
 *    (lss_rng_below(np) per axis) plus one sub-spacing offset per cone (3 u32 at block 2^40): the Lagrangian
 *    lattice stays continuous across replica faces (no gap or double layer of particles there) and the observer
 *    sits at a random place in a lattice cell. Transverse images (x +- L,
 *    y +- L) of the replica fill the field where it is wider than the box minus a pixel. During each drift, a
 *    particle whose distance r from the observer goes from r < chi(a_i) to r >= chi(a_f) crosses the cone: the
 *    crossing t in [0, 1] (x linear in D1 within a drift) solves |x(t)| = chi(t) (chi(t) linear between 65 nodes
 *    uniform in t over the step, regula falsi to 1e-7 Mpc/h); the particle at the crossing is painted (CIC in gnomonic
 *    u = x/z, v = y/z, pixels of pixel_arcmin in u, v, side x side centred on the axis; rows v, columns u;
 *    fixed point) into the shell containing |x|. delta = N / (nbar Omega_pix (chi_hi^3 - chi_lo^3) / 3) - 1 with
 *    the exact gnomonic pixel solid angle Omega_pix = int du dv (1 + u^2 + v^2)^(-3/2).
 *  - Checkpoints (lss_nbody_lightcone): written after a step when 30 s have passed since the run started or
 *    since the last one was written, and when cancelled; a fingerprint (FNV-1a of the cosmology, the options with
 *    defaults filled, the light cone, seed, index and format version) identifies the run. */
typedef struct lss_nbody lss_nbody;
/* Timings of a run so far (wall seconds, summed over steps). */
typedef struct {
    double ic;      /* initial conditions (with the first force) */
    double steps;   /* all lss_nbody_step calls (drift + light cone + paint + FFTs + force readout and kick) */
    double fft;     /* the force FFTs inside the steps (2 of mesh^3 per step) */
    double paint;   /* CIC painting (bucketing particles by plane and fixed-point sums) inside the steps */
    double force;   /* Poisson kernel, gradient readout and kick inside the steps */
    double drift;   /* drift and light-cone crossings inside the steps */
    int nsteps;     /* steps timed */
    int nforce;     /* force computations timed inside the steps */
} lss_nbody_stats;
/* Particles at z_init (2LPT) with their first half kick, ready to step. c must outlive the object. lc may be NULL
   (no light cone); with lc, the shells of every step's drift are painted. Errors as lss_nbody_lightcone. */
LSSDEF int lss_nbody_create(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc, uint64_t seed,
                            uint64_t index, lss_nbody **out);
LSSDEF void lss_nbody_free(lss_nbody *s);
/* One kick-drift-kick step (drift a_i -> a_{i+1}, then the force at a_{i+1} and the kick to a_{i+3/2}).
   LSS_ERR_STATE when all steps are done. */
LSSDEF int lss_nbody_step(lss_nbody *s);
LSSDEF int lss_nbody_steps_done(const lss_nbody *s);
LSSDEF double lss_nbody_a(const lss_nbody *s);      /* scale factor of the positions (a_i) */
LSSDEF double lss_nbody_a_next(const lss_nbody *s); /* a_{i+1}: the latest a the functions below accept */
LSSDEF void lss_nbody_get_stats(const lss_nbody *s, lss_nbody_stats *st);
LSSDEF const lss_nbody_opts *lss_nbody_get_opts(const lss_nbody *s);  /* the options with defaults filled */
/* One particle's mass in the 64-bit fixed-point sums of the meshes and shells (a power of two, at most 2^31). */
LSSDEF int64_t lss_nbody_mass_unit(const lss_nbody *s);
/* The shells painted so far as a shell set (complete after the last step). LSS_ERR_STATE without a light cone. */
LSSDEF int lss_nbody_shells(const lss_nbody *s, lss_shellset *out);
/* Below, a is a scale factor in [lss_nbody_a, lss_nbody_a_next] (0: lss_nbody_a): the particles are drifted there
   with the current momenta (as a drift would move them) without changing the state. mesh: even, 8..4096; when
   it equals the force mesh, that mesh is the (overwritten) workspace, otherwise one is allocated for the call. */
/* CIC density contrast on a mesh^3 grid: delta[(x mesh + y) mesh + z] (may be NULL), and the fixed-point total
   mass (exactly np^3 lss_nbody_mass_unit(s) when every particle is accounted for) in *mass (may be NULL). */
LSSDEF int lss_nbody_density(lss_nbody *s, double a, int mesh, float *delta, int64_t *mass);
/* Matter power spectrum of the particles: CIC on the mesh, the window deconvolved (|W|^2 = prod sinc^4(pi m_i /
   mesh)), shot noise L^3/np^3 times the CIC aliasing sum prod (1 - 2/3 sin^2(pi m_i / mesh)) subtracted when
   subtract_shot (Jing 2005), linear bins b dk <= |k| < (b+1) dk with dk = k_Nyq / nbins, k_Nyq = pi mesh / L.
   Out: k[b] the mean |k| of the bin's modes, pk[b] in (Mpc/h)^3, nmodes[b] the grid wave vectors in it (m and -m
   both counted, so the Gaussian error is pk sqrt(2 / nmodes)); empty bins give 0. Any output may be NULL.
   Particles that started on a lattice have almost no Poisson noise on large scales: subtracting L^3/np^3 there
   biases P low by that amount (2.4% at k = 0.03 h/Mpc for np 64 in 500 Mpc/h); compare with subtract_shot = 0
   below k_Nyq(particles)/2 or so. */
LSSDEF int lss_nbody_power(lss_nbody *s, double a, int mesh, int nbins, int subtract_shot, double *k, double *pk,
                           int64_t *nmodes);
/* Fourier modes of the particle density by direct summation (no mesh, no window): out[2 j], out[2 j + 1] = real
   and imaginary part of (1/np^3) sum_particles exp(-i k.x) for the integer wave vector kvec[3 j .. 3 j + 2]
   (k = 2 pi kvec / L); the same convention as delta_k above. */
LSSDEF int lss_nbody_modes(lss_nbody *s, double a, int nk, const int *kvec, double *out);
/* The drawn z = 0 linear modes delta_k of the run's initial conditions (0 for Nyquist and m = 0). */
LSSDEF int lss_nbody_linear_mode(const lss_nbody *s, int nk, const int *kvec, double *out);
/* Exact linear growth of flat LCDM (no radiation) normalised to D1(1) = 1 and its derivative dD1/da (either
   output may be NULL); what the steps use. */
LSSDEF int lss_nbody_growth(const lss_cosmo *c, double a, double *d1, double *dd1da);
/* One run over all the ranks of MPI_COMM_WORLD (built with LSS_MPI and started under mpirun with several ranks;
 * otherwise exactly lss_nbody_create and lss_nbody_lightcone): a box too big for one machine. Each rank holds a slab
 * of force-mesh x planes (FFTW-MPI's blocks of ceil(mesh / ranks); each slab needs at least 3 planes and at most
 * mesh - 5) and the particles inside it, about 1/ranks of the particles and of the mesh (plus 5 ghost planes, a
 * global index per particle and 6% headroom for clustering; the particle arrays grow when a slab gathers more).
 * Forward FFT: the 2-D plane transforms of the slab, an FFTW-MPI transpose to slabs of ky rows, the 1-D x
 * transforms; backward the reverse. The transposes go out of place through a second mesh slab per rank, or, with
 * lean = 1, in place (no second slab: the least memory, but FFTW-MPI's in-place transpose is several times slower
 * on large slabs; BENCHMARKS.md). The painting gets the particles of the plane before the
 * slab from the left neighbour; the gradient's 4-point stencil gets 2 + 3 potential planes from the neighbours;
 * after each drift, particles move to the rank of their slab (MPI_Alltoallv). Every sum is the serial run's
 * (fixed-point painting and shells, the same plans on the same numbers): positions, momenta and shells are
 * bitwise identical to the serial run at any rank count (tested at 1, 2 and 3). These are collective calls (every
 * rank, the same arguments); lss_nbody_step and lss_nbody_shells too. Density, power and modes return
 * LSS_ERR_STATE on a distributed run.
 * Checkpoints (lss_nbody_lightcone_dist, as lss_nbody_lightcone's: every 30 s of rank 0's clock and when cancelled
 * on any rank): each rank writes its particles and light-cone sums to CHECKPOINT.sSTEP.rRANK, then rank 0 the
 * index CHECKPOINT (written last: its presence marks a complete set; the previous set is then removed). Either kind
 * of checkpoint, serial or distributed, resumes a run of either kind at any rank count with the identical result
 * (every rank reads every part and keeps the particles of its slab); the files must be on a file system all ranks
 * see. */
LSSDEF int lss_nbody_create_dist(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                                 uint64_t seed, uint64_t index, int lean, lss_nbody **out);
LSSDEF int lss_nbody_lightcone_dist(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                                    uint64_t seed, uint64_t index, int lean, const char *checkpoint,
                                    lss_nbody_progress_fn fn, void *user, lss_shellset *out);
/* All np^3 positions and momenta ([np^3][3] in lattice order (x np + y) np + z; either may be NULL) on every rank
   (collective in a distributed run, which then needs room for them all on each rank). */
LSSDEF int lss_nbody_particles(const lss_nbody *s, uint32_t *pos, float *mom);
/* ==== END N-BODY DECLARATIONS ==== */
/* ==== SHELL LIBRARY DECLARATIONS (N-body shells on disk, used by lss_sim) ==== */
/* A shell set on disk is a pair STEM.npy (float32 [ncone][nshell][side][side], the density contrasts) and
 * STEM.json (cosmology, seed, index, geometry, z edges, N-body options, wall time). Both are written atomically,
 * the JSON last, so that its presence marks a complete entry. A shell library is a directory of entries
 * DIR/shells_0000, DIR/shells_0001, ... (consecutive from 0), one per cosmology, as `lss-sim nbody` writes it.
 *
 * Drawing fields from shells: lss_sim_use_shells(sim, set) makes lss_sim_field take each drawn shell from the
 * set instead of a lognormal draw; everything downstream (projection, IA, bias, stochasticity, noise, smoothing,
 * mosaics) is unchanged. Field `index` is view v = index mod (8 ncone) of the set: cone v mod ncone, then one of
 * the 8 flips and transposes ((v / ncone): bit 0 flips rows, bit 1 columns, bit 2 transposes) of the central
 * region the simulator needs (nside + 2 x its smoothing margin; lss_sim_shell_side). A set of ncone cones thus
 * gives 8 ncone distinct fields per cosmology (not independent: the 8 views of a cone share its structure);
 * indices beyond repeat them, with other noise. */
LSSDEF int lss_shellset_save(const lss_shellset *s, const char *stem);
/* Loads and validates STEM.npy + STEM.json (shapes agree, z edges increasing, pixel size > 0, cosmology
   physical, every value finite and >= -1): LSS_ERR_FORMAT / LSS_ERR_IO naming the file and the problem. */
LSSDEF int lss_shellset_load(const char *stem, lss_shellset *out);
/* DIR/shells_NNNN (no extension) into buf. */
LSSDEF int lss_shell_lib_stem(const char *dir, int i, char *buf, size_t n);
/* Number of complete consecutive entries of a library (0 for an empty or missing directory). */
LSSDEF int lss_shell_lib_count(const char *dir, int *n);
/* The cosmology of entry i (its JSON only; other fields of p from lss_params_fiducial). */
LSSDEF int lss_shell_lib_params(const char *dir, int i, lss_params *p);
/* Pixels per side the simulator needs from a shell set (nside + 2 x its smoothing margin). */
LSSDEF int lss_sim_shell_side(const lss_sim *sim);
/* Attach a shell set (NULL: back to lognormal shells). The set must outlive its use and is only read. Checks:
   same pixel size (relative 1e-9), side >= lss_sim_shell_side with an even difference, every shell the
   simulator draws present in the set with the same z edges (1e-9), and the simulator's cosmology equal to the
   set's (Omega_m, sigma_8, Omega_b, h, n_s); lss_sim_set_cosmo to another cosmology then fails until another
   set is attached. LSS_ERR_ARG naming the mismatch. Not safe while other threads use sim. */
LSSDEF int lss_sim_use_shells(lss_sim *sim, const lss_shellset *set);
/* ==== END SHELL LIBRARY DECLARATIONS ==== */
/* ==== END MAPS DECLARATIONS ==== */

#ifdef __cplusplus
}
#endif
#endif /* LSS_MAPS_H */

#ifdef LSS_MAPS_IMPLEMENTATION
#ifndef LSS_MAPS_IMPLEMENTATION_DONE
#define LSS_MAPS_IMPLEMENTATION_DONE
#include <errno.h>
#include <math.h>
#include <string.h>

/* ==== THEORY IMPLEMENTATION ==== */
#include <stdio.h>
#include <stdlib.h>

/* ---- constants, quadrature and interpolation helpers ---- */
#define LSS__BG_N 4096          /* background nodes, uniform in x = ln(1+z) */
#define LSS__BG_ZMAX 1200.0     /* background table covers 0 <= z <= 1200 */
#define LSS__PK_NK 1024         /* P(k) table nodes, uniform in ln k */
#define LSS__PK_KMIN 1e-5       /* h/Mpc */
#define LSS__PK_KMAX 1e4        /* h/Mpc */
#define LSS__PK_NZ 128          /* P(k, z) table nodes, uniform in x = ln(1+z) */
#define LSS__PK_ZMAX 20.0
#define LSS__SIG_N 1201         /* Simpson nodes in ln k for the Gaussian-filtered sigma(R) of Halofit */
#define LSS__SIG_LNKMIN (-13.815510557964274) /* ln 1e-6 */
#define LSS__SIG_LNKMAX (11.512925464970229)  /* ln 1e5 */
#define LSS__HF_RMIN 1e-4       /* smallest non-linear scale searched (Mpc/h); below it: no non-linear scale */
#define LSS__E 2.718281828459045
#define LSS__PI 3.14159265358979323846

static const double lss__gl4x[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
static const double lss__gl4w[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
static const double lss__gl8x[8] = {-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
                                    0.1834346424956498,  0.5255324099163290,  0.7966664774136267,  0.9602898564975363};
static const double lss__gl8w[8] = {0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
                                    0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763};

typedef struct {             /* Eisenstein & Hu (1998) fit, all k in h/Mpc */
    double fb, omhh, theta, keq, rs, ksilk, alpha_c, beta_c, alpha_b, beta_b, beta_node;
    double alpha_gamma, s_nw, omh; /* no-wiggle form (eqs. 26, 28-31) */
    int nowiggle;
} lss__eh;

typedef struct { double lnks, neff, curv; int ok; } lss__hfpar; /* Halofit scale, n_eff, C at one z */

struct lss_cosmo {
    lss_params p;
    double om, ol, c1rc;
    double bg_dx, *bg_chi, *bg_d; /* chi(z) and unnormalised D(z) at x_i = i bg_dx */
    double d0;                    /* unnormalised D at z = 0 */
    lss__eh eh;
    double amp;                   /* P_lin(k, 0) = amp k^n_s T(k)^2 */
    double sigma8_tab;            /* sigma_8 of the tabulated P_lin */
    double lnkmin, dlnk, *lnp0;   /* ln P_lin(k, 0) at ln k_j = lnkmin + j dlnk */
    double pz_dx;                 /* P(k, z) z nodes: x_i = i pz_dx */
    double *lnpnl;                /* ln P_NL [iz * LSS__PK_NK + ik] */
    lss__hfpar *hf;               /* Halofit parameters per z node */
    double *sig_k3p;              /* Simpson weight * Delta^2_lin(k, 0) on the sigma(R) grid */
    double *sig_k2;               /* k^2 on the sigma(R) grid */
};

/* cubic Lagrange weights on a uniform grid; returns the first of 4 nodes */
static int lss__lag4(double t, int n, double w[4]) {
    int i = (int)floor(t) - 1;
    double u;
    if (i < 0) i = 0;
    if (i > n - 4) i = n - 4;
    u = t - i;
    w[0] = -(u - 1) * (u - 2) * (u - 3) / 6.0;
    w[1] = u * (u - 2) * (u - 3) / 2.0;
    w[2] = -u * (u - 1) * (u - 3) / 2.0;
    w[3] = u * (u - 1) * (u - 2) / 6.0;
    return i;
}

static double lss__ez(double om, double ol, double z) {
    double a1 = 1 + z;
    return sqrt(om * a1 * a1 * a1 + ol);
}

/* ---- parameters ---- */
LSSDEF void lss_params_fiducial(lss_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    lss_params_from_vec(lss_table1()->fiducial, LSS_NPARAM_TABLE1, p);
    p->omega_b = 0.0493; p->h = 0.6736; p->n_s = 0.9649;
    p->c1_rho_crit = LSS_C1RHOCRIT_NLA;
    p->transfer = LSS_TRANSFER_EH;
    p->linear = 0;
    p->t_cmb = LSS_T_CMB;
}

static int lss__range(const char *name, double v, double lo, double hi, const char *what) {
    if (!(v >= lo && v <= hi))
        return lss_seterr(LSS_ERR_RANGE, "%s = %g is outside its %s [%g, %g]", name, v, what, lo, hi);
    return LSS_OK;
}

LSSDEF int lss_params_check_physical(const lss_params *p) {
    int s;
    if (!p) return lss_seterr(LSS_ERR_ARG, "lss_params: NULL");
    if (!(p->omega_m > 0 && p->omega_m <= 1))
        return lss_seterr(LSS_ERR_RANGE, "omega_m = %g must lie in (0, 1] (flat LCDM)", p->omega_m);
    if (!(p->sigma_8 > 0 && p->sigma_8 <= 10)) return lss_seterr(LSS_ERR_RANGE, "sigma_8 = %g must lie in (0, 10]", p->sigma_8);
    if (!(p->omega_b > 0 && p->omega_b < p->omega_m))
        return lss_seterr(LSS_ERR_RANGE, "omega_b = %g must lie in (0, omega_m = %g)", p->omega_b, p->omega_m);
    if ((s = lss__range("h", p->h, 0.2, 1.5, "allowed range")) != LSS_OK) return s;
    if ((s = lss__range("n_s", p->n_s, 0.5, 1.5, "allowed range")) != LSS_OK) return s;
    if (!(p->c1_rho_crit >= 0 && p->c1_rho_crit < 1))
        return lss_seterr(LSS_ERR_RANGE, "c1_rho_crit = %g must lie in [0, 1) (0 means %g)", p->c1_rho_crit, LSS_C1RHOCRIT_NLA);
    if (!(p->t_cmb == 0 || (p->t_cmb >= 1 && p->t_cmb <= 5)))
        return lss_seterr(LSS_ERR_RANGE, "t_cmb = %g K must be 0 (default %g) or lie in [1, 5]", p->t_cmb, LSS_T_CMB);
    if (p->transfer != LSS_TRANSFER_EH && p->transfer != LSS_TRANSFER_EH_NOWIGGLE)
        return lss_seterr(LSS_ERR_RANGE, "transfer = %d is not LSS_TRANSFER_EH (0) or LSS_TRANSFER_EH_NOWIGGLE (1)", p->transfer);
    if (!isfinite(p->a_ia) || !isfinite(p->eta_ia) || !isfinite(p->b_g) || !isfinite(p->eta_bg) || !isfinite(p->r_g) ||
        !isfinite(p->b_g2) || !isfinite(p->eta_bg2))
        return lss_seterr(LSS_ERR_RANGE, "a nuisance parameter (a_ia, eta_ia, b_g, eta_bg, r_g, b_g2, eta_bg2) is not finite");
    return LSS_OK;
}

LSSDEF const lss_param_table *lss_table1(void) {
    /* Table I of DeepLSS (Kacprzak & Fluri 2022): flat priors and fiducial values */
    static const lss_param_table t = {
        {"Omega_m", "sigma_8", "A_IA", "eta_IA", "b_g", "eta_bg", "r_g", "b_g2", "eta_bg2"},
        {"omega_m", "sigma_8", "a_ia", "eta_ia", "b_g", "eta_bg", "r_g", "b_g2", "eta_bg2"},
        {0.15, 0.5, -6.0, -4.0, 0.5, -3.0, 0.4, -3.0, -2.0},
        {0.45, 1.2, 6.0, 6.0, 2.5, 3.0, 1.0, 1.0, 2.0},
        {0.29, 0.71, 0.5, 1.6, 1.5, 0.5, 0.7, 0.5, 0.0}};
    return &t;
}

LSSDEF int lss_params_to_vec(const lss_params *p, int n, double *v) {
    const double f[LSS_NPARAM_TABLE1] = {p ? p->omega_m : 0, p ? p->sigma_8 : 0, p ? p->a_ia : 0, p ? p->eta_ia : 0,
                                         p ? p->b_g : 0, p ? p->eta_bg : 0, p ? p->r_g : 0, p ? p->b_g2 : 0,
                                         p ? p->eta_bg2 : 0};
    if (!p || !v || n < 1 || n > LSS_NPARAM_TABLE1)
        return lss_seterr(LSS_ERR_ARG, "lss_params_to_vec: NULL argument or n = %d outside 1..%d", n, LSS_NPARAM_TABLE1);
    memcpy(v, f, sizeof(double) * (size_t)n);
    return LSS_OK;
}

LSSDEF int lss_params_from_vec(const double *v, int n, lss_params *p) {
    double *slot[LSS_NPARAM_TABLE1];
    int k;
    if (!p || !v || n < 1 || n > LSS_NPARAM_TABLE1)
        return lss_seterr(LSS_ERR_ARG, "lss_params_from_vec: NULL argument or n = %d outside 1..%d", n, LSS_NPARAM_TABLE1);
    slot[0] = &p->omega_m; slot[1] = &p->sigma_8; slot[2] = &p->a_ia; slot[3] = &p->eta_ia; slot[4] = &p->b_g;
    slot[5] = &p->eta_bg; slot[6] = &p->r_g; slot[7] = &p->b_g2; slot[8] = &p->eta_bg2;
    for (k = 0; k < n; k++) *slot[k] = v[k];
    return LSS_OK;
}

LSSDEF int lss_params_check(const lss_params *p) {
    const lss_param_table *t = lss_table1();
    double v[LSS_NPARAM_TABLE1];
    int s, k;
    if (!p) return lss_seterr(LSS_ERR_ARG, "lss_params: NULL");
    lss_params_to_vec(p, LSS_NPARAM_TABLE1, v);
    for (k = 0; k < LSS_NPARAM_TABLE1; k++)
        if ((s = lss__range(t->key[k], v[k], t->lo[k], t->hi[k], "prior")) != LSS_OK) return s;
    return lss_params_check_physical(p);
}

/* ---- Eisenstein & Hu (1998) transfer function ---- */
static void lss__eh_init(lss__eh *e, const lss_params *p) {
    double h = p->h, omhh = p->omega_m * h * h, obhh = p->omega_b * h * h, th = (p->t_cmb > 0 ? p->t_cmb : LSS_T_CMB) / 2.7;
    double th4 = th * th * th * th, zeq, zd, b1, b2, req, rd, a1, a2, bb1, bb2, y, sy, gy, fb = obhh / omhh;
    e->fb = fb; e->omhh = omhh; e->theta = th; e->omh = p->omega_m * h;
    e->nowiggle = p->transfer == LSS_TRANSFER_EH_NOWIGGLE;
    zeq = 2.50e4 * omhh / th4;                                  /* eq. 2 */
    e->keq = 0.0746 * omhh / (th * th) / h;                     /* eq. 3, in h/Mpc */
    b1 = 0.313 * pow(omhh, -0.419) * (1 + 0.607 * pow(omhh, 0.674));
    b2 = 0.238 * pow(omhh, 0.223);
    zd = 1291 * pow(omhh, 0.251) / (1 + 0.659 * pow(omhh, 0.828)) * (1 + b1 * pow(obhh, b2)); /* eq. 4 */
    rd = 31.5 * obhh / th4 * (1000 / (1 + zd));                 /* eq. 5 */
    req = 31.5 * obhh / th4 * (1000 / zeq);
    e->rs = 2.0 / (3.0 * e->keq) * sqrt(6.0 / req) * log((sqrt(1 + rd) + sqrt(rd + req)) / (1 + sqrt(req))); /* eq. 6, Mpc/h */
    e->ksilk = 1.6 * pow(obhh, 0.52) * pow(omhh, 0.73) * (1 + pow(10.4 * omhh, -0.95)) / h; /* eq. 7 */
    a1 = pow(46.9 * omhh, 0.670) * (1 + pow(32.1 * omhh, -0.532));
    a2 = pow(12.0 * omhh, 0.424) * (1 + pow(45.0 * omhh, -0.582));
    e->alpha_c = pow(a1, -fb) * pow(a2, -fb * fb * fb);         /* eq. 11 */
    bb1 = 0.944 / (1 + pow(458 * omhh, -0.708));
    bb2 = pow(0.395 * omhh, -0.0266);
    e->beta_c = 1.0 / (1 + bb1 * (pow(1 - fb, bb2) - 1));      /* eq. 12 */
    y = zeq / (1 + zd);
    sy = sqrt(1 + y);
    gy = y * (-6 * sy + (2 + 3 * y) * log((sy + 1) / (sy - 1))); /* eq. 15 */
    e->alpha_b = 2.07 * e->keq * e->rs * pow(1 + rd, -0.75) * gy; /* eq. 14 */
    e->beta_b = 0.5 + fb + (3 - 2 * fb) * sqrt(pow(17.2 * omhh, 2) + 1); /* eq. 24 */
    e->beta_node = 8.41 * pow(omhh, 0.435);                     /* eq. 23 */
    e->alpha_gamma = 1 - 0.328 * log(431 * omhh) * fb + 0.38 * log(22.3 * omhh) * fb * fb; /* eq. 31 */
    e->s_nw = 44.5 * log(9.83 / omhh) / sqrt(1 + 10 * pow(obhh, 0.75)) * h; /* eq. 26, Mpc/h */
}

static double lss__t0(double q, double a, double b) { /* eq. 19 */
    double l = log(LSS__E + 1.8 * b * q), c = 14.2 / a + 386.0 / (1 + 69.9 * pow(q, 1.08));
    return l / (l + c * q * q);
}

static double lss__eh_t(const lss__eh *e, double k) { /* k in h/Mpc */
    double q, x, f, tc, tb, st, xt, j0;
    if (k <= 0) return 1;
    if (e->nowiggle) {
        double ge = e->omh * (e->alpha_gamma + (1 - e->alpha_gamma) / (1 + pow(0.43 * k * e->s_nw, 4))); /* eq. 30 */
        double qq = k * e->theta * e->theta / ge, l0 = log(2 * LSS__E + 1.8 * qq), c0 = 14.2 + 731.0 / (1 + 62.5 * qq);
        return l0 / (l0 + c0 * qq * qq);                        /* eqs. 28-29 */
    }
    q = k / (13.41 * e->keq);                                   /* eq. 10 */
    x = k * e->rs;
    f = 1.0 / (1 + pow(x / 5.4, 4));                            /* eq. 18 */
    tc = f * lss__t0(q, 1, e->beta_c) + (1 - f) * lss__t0(q, e->alpha_c, e->beta_c); /* eq. 17 */
    st = e->rs / cbrt(1 + pow(e->beta_node / x, 3));            /* eq. 22 */
    xt = k * st;
    j0 = xt * xt < 1e-8 ? 1 - xt * xt / 6 : sin(xt) / xt;
    tb = (lss__t0(q, 1, 1) / (1 + (x / 5.2) * (x / 5.2)) +
          e->alpha_b / (1 + pow(e->beta_b / x, 3)) * exp(-pow(k / e->ksilk, 1.4))) * j0; /* eq. 21 */
    return e->fb * tb + (1 - e->fb) * tc;                       /* eq. 16 */
}

/* ---- background ---- */
/* integrand of the growth integral in x = ln(1+z): a^(5/2) (Om + OL a^3)^(-3/2), with a = e^-x */
static double lss__gint(double om, double ol, double x) {
    double a = exp(-x), u = om + ol * a * a * a;
    return a * a * sqrt(a) / (u * sqrt(u));
}
/* int_0^a da'/(a' E)^3 for a tiny (matter dominated) by its series: a^(5/2) Om^(-3/2) sum_n c_n (OL a^3/Om)^n */
static double lss__gint_series(double om, double ol, double a) {
    double u = ol * a * a * a / om;
    return pow(a, 2.5) * pow(om, -1.5) * (0.4 - 1.5 * u * 2.0 / 11.0 + 1.875 * u * u * 2.0 / 17.0 - 2.1875 * u * u * u * 2.0 / 23.0);
}
/* chi / (c/H0) between x0 and x1 by 8-point Gauss-Legendre on panels of at most 0.01 in x */
static double lss__chi_int(double om, double ol, double x0, double x1) {
    int np = (int)ceil(fabs(x1 - x0) / 0.01), i, j;
    double h, s = 0;
    if (np < 1) np = 1;
    h = (x1 - x0) / np;
    for (i = 0; i < np; i++) {
        double m = x0 + (i + 0.5) * h;
        for (j = 0; j < 8; j++) {
            double x = m + 0.5 * h * lss__gl8x[j], z1 = exp(x);
            s += lss__gl8w[j] * z1 / lss__ez(om, ol, z1 - 1);
        }
    }
    return s * 0.5 * h;
}
static double lss__gint_int(double om, double ol, double x0, double x1) {
    int np = (int)ceil(fabs(x1 - x0) / 0.01), i, j;
    double h, s = 0;
    if (np < 1) np = 1;
    h = (x1 - x0) / np;
    for (i = 0; i < np; i++) {
        double m = x0 + (i + 0.5) * h;
        for (j = 0; j < 8; j++) s += lss__gl8w[j] * lss__gint(om, ol, m + 0.5 * h * lss__gl8x[j]);
    }
    return s * 0.5 * h;
}

LSSDEF double lss_cosmo_ez(const lss_cosmo *c, double z) {
    if (!c || !(z > -1)) return NAN;
    return lss__ez(c->om, c->ol, z);
}

LSSDEF double lss_cosmo_chi(const lss_cosmo *c, double z) {
    double x, w[4], s = 0;
    int i, j;
    if (!c || !(z > -1)) return NAN;
    x = log1p(z);
    if (x < 0 || x > LSS__BG_N * c->bg_dx - c->bg_dx) {
        if (x < 0) return -LSS_C_OVER_H0 * lss__chi_int(c->om, c->ol, x, 0);
        if (!isfinite(x)) return NAN;
        return c->bg_chi[LSS__BG_N - 1] + LSS_C_OVER_H0 * lss__chi_int(c->om, c->ol, (LSS__BG_N - 1) * c->bg_dx, x);
    }
    i = lss__lag4(x / c->bg_dx, LSS__BG_N, w);
    for (j = 0; j < 4; j++) s += w[j] * c->bg_chi[i + j];
    return s;
}

LSSDEF double lss_cosmo_da(const lss_cosmo *c, double z) {
    return lss_cosmo_chi(c, z) / (1 + z);
}

/* unnormalised D(z) = 5/2 Om E(z) int_0^a da/(aE)^3 (exact for flat LCDM without radiation) */
static double lss__growth_raw(const lss_cosmo *c, double z) {
    double x, w[4], s = 0;
    int i, j;
    x = log1p(z);
    if (x >= 0 && x <= (LSS__BG_N - 1) * c->bg_dx) {
        i = lss__lag4(x / c->bg_dx, LSS__BG_N, w);
        for (j = 0; j < 4; j++) s += w[j] * c->bg_d[i + j];
        return s;
    }
    if (x > 0) /* beyond the table: matter dominated, the series is exact to double precision there */
        return 2.5 * c->om * lss__ez(c->om, c->ol, z) * lss__gint_series(c->om, c->ol, exp(-x));
    /* z < 0 (the future): extend the integral from a = 1 */
    s = c->bg_d[0] / (2.5 * c->om * lss__ez(c->om, c->ol, 0)) + lss__gint_int(c->om, c->ol, x, 0);
    return 2.5 * c->om * lss__ez(c->om, c->ol, z) * s;
}

LSSDEF double lss_cosmo_growth(const lss_cosmo *c, double z) {
    if (!c || !(z > -1) || !isfinite(z)) return NAN;
    return lss__growth_raw(c, z) / c->d0;
}

LSSDEF double lss_cosmo_z_of_chi(const lss_cosmo *c, double chi) {
    int lo = 0, hi = LSS__BG_N - 1, it;
    double z;
    if (!c || !(chi >= 0) || !isfinite(chi)) return NAN;
    if (chi == 0) return 0;
    if (chi > c->bg_chi[LSS__BG_N - 1]) { /* beyond z = 1200: bisection on the direct integral */
        double zlo = LSS__BG_ZMAX, zhi = 2 * LSS__BG_ZMAX + 1;
        double chimax = c->bg_chi[LSS__BG_N - 1] + LSS_C_OVER_H0 * lss__chi_int(c->om, c->ol, (LSS__BG_N - 1) * c->bg_dx, 60.0);
        if (chi >= chimax) return INFINITY; /* beyond the particle horizon (to double precision) */
        while (lss_cosmo_chi(c, zhi) < chi) zlo = zhi, zhi = 2 * zhi + 1;
        for (it = 0; it < 200 && zhi - zlo > 1e-12 * zhi; it++) {
            double zm = 0.5 * (zlo + zhi);
            if (lss_cosmo_chi(c, zm) < chi) zlo = zm; else zhi = zm;
        }
        return 0.5 * (zlo + zhi);
    }
    while (hi - lo > 1) {
        int m = (lo + hi) / 2;
        if (c->bg_chi[m] < chi) lo = m; else hi = m;
    }
    /* Newton on the interpolated chi(z), started by linear interpolation between the nodes */
    {
        double x0 = lo * c->bg_dx, x1 = hi * c->bg_dx, t = (chi - c->bg_chi[lo]) / (c->bg_chi[hi] - c->bg_chi[lo]);
        z = expm1(x0 + t * (x1 - x0));
    }
    for (it = 0; it < 30; it++) {
        double f = lss_cosmo_chi(c, z) - chi, d = LSS_C_OVER_H0 / lss__ez(c->om, c->ol, z), dz = f / d;
        z -= dz;
        if (z < 0) z = 0;
        if (fabs(dz) <= 1e-14 * (1 + z)) break;
    }
    return z;
}

LSSDEF double lss_cosmo_nla_f(const lss_cosmo *c, double z) {
    if (!c) return NAN;
    return -c->c1rc * c->om / lss_cosmo_growth(c, z);
}

LSSDEF const lss_params *lss_cosmo_params(const lss_cosmo *c) { return c ? &c->p : NULL; }
LSSDEF double lss_cosmo_sigma8(const lss_cosmo *c) { return c ? c->sigma8_tab : NAN; }
LSSDEF double lss_cosmo_zmax(const lss_cosmo *c) { return c ? LSS__PK_ZMAX : NAN; }

/* ---- linear and non-linear power ---- */
static double lss__pk0_direct(const lss_cosmo *c, double k) { /* P_lin(k, z = 0) */
    double t;
    if (!(k > 0)) return 0;
    t = lss__eh_t(&c->eh, k);
    return c->amp * pow(k, c->p.n_s) * t * t;
}

/* sigma^2(R) of the z = 0 linear spectrum with a Gaussian filter, and its first two ln R derivatives */
static void lss__sig_gauss(const lss_cosmo *c, double r, double *s0, double *s1, double *s2) {
    int j;
    double a = 0, b = 0, d = 0, r2 = r * r;
    for (j = 0; j < LSS__SIG_N; j++) {
        double y = c->sig_k2[j] * r2, e;
        if (y > 120) break; /* exp(-120) ~ 1e-52: nothing left */
        e = c->sig_k3p[j] * exp(-y);
        a += e;
        b += e * (-2 * y);
        d += e * (4 * y * y - 4 * y);
    }
    *s0 = a; *s1 = b; *s2 = d;
}

/* Halofit parameters at growth D (relative to z = 0): the scale where D^2 sigma^2(R) = 1, n_eff and C
   (Takahashi et al. 2012, eqs. A4-A5). ok = 0 when sigma < 1 on all scales searched (no non-linear scale). */
static lss__hfpar lss__hf_params(const lss_cosmo *c, double dgrow, double rstart) {
    lss__hfpar hp;
    double s0, s1, s2, lnr, d2 = dgrow * dgrow;
    int it;
    memset(&hp, 0, sizeof hp);
    lss__sig_gauss(c, LSS__HF_RMIN, &s0, &s1, &s2);
    if (!(d2 * s0 > 1)) return hp; /* ok = 0 */
    lnr = log(rstart > LSS__HF_RMIN ? rstart : 1.0);
    /* Newton on ln(D^2 sigma^2) = 0 in ln R; ln sigma^2 is decreasing and convex enough for safeguarded steps */
    {
        double lo = log(LSS__HF_RMIN), hi = log(1e3);
        lss__sig_gauss(c, 1e3, &s0, &s1, &s2);
        if (d2 * s0 > 1) return hp; /* non-linear on all scales: outside any sensible cosmology */
        for (it = 0; it < 100; it++) {
            double f, df, step;
            lss__sig_gauss(c, exp(lnr), &s0, &s1, &s2);
            f = log(d2 * s0);
            if (f > 0) lo = lnr; else hi = lnr;
            df = s1 / s0;
            step = df < 0 ? -f / df : 0;
            if (!(df < 0) || lnr + step <= lo || lnr + step >= hi) step = 0.5 * (lo + hi) - lnr;
            lnr += step;
            if (fabs(step) < 1e-12 || hi - lo < 1e-12) break;
        }
    }
    lss__sig_gauss(c, exp(lnr), &s0, &s1, &s2);
    hp.lnks = -lnr;
    hp.neff = -3 - s1 / s0;
    hp.curv = -(s2 / s0 - (s1 / s0) * (s1 / s0));
    hp.ok = 1;
    return hp;
}

/* Takahashi et al. (2012) Halofit for flat LCDM (w = -1), eqs. A1-A13: the coefficients depend on z only */
typedef struct { double an, bn, cn, gn, al, be, nu, f1, f2, f3, iks; int ok; } lss__hfco;

static void lss__hf_coef(const lss__hfpar *hp, double omz, lss__hfco *co) {
    double n = hp->neff, n2 = n * n, n3 = n2 * n, n4 = n3 * n, C = hp->curv;
    co->ok = hp->ok;
    if (!hp->ok) return;
    co->an = pow(10.0, 1.5222 + 2.8553 * n + 2.3706 * n2 + 0.9903 * n3 + 0.2250 * n4 - 0.6038 * C);
    co->bn = pow(10.0, -0.5642 + 0.5864 * n + 0.5716 * n2 - 1.5474 * C);
    co->cn = pow(10.0, 0.3698 + 2.0404 * n + 0.8161 * n2 + 0.5869 * C);
    co->gn = 0.1971 - 0.0843 * n + 0.8460 * C;
    co->al = fabs(6.0835 + 1.3373 * n - 0.1959 * n2 - 5.5274 * C);
    co->be = 2.0379 - 0.7354 * n + 0.3157 * n2 + 1.2490 * n3 + 0.3980 * n4 - 0.1682 * C;
    co->nu = pow(10.0, 5.2105 + 3.6902 * n);
    co->f1 = pow(omz, -0.0307); co->f2 = pow(omz, -0.0585); co->f3 = pow(omz, 0.0743); /* flat: the Lambda branch */
    co->iks = exp(-hp->lnks);
}

static double lss__halofit_co(double k, double plin, const lss__hfco *co) {
    double y, fy, dl, dq, dh, norm = k * k * k / (2 * LSS__PI * LSS__PI);
    if (!co->ok || !(plin > 0)) return plin;
    y = k * co->iks;
    fy = y / 4 + y * y / 8;
    dl = plin * norm;
    dq = dl * pow(1 + dl, co->be) / (1 + co->al * dl) * exp(-fy);
    dh = co->an * pow(y, 3 * co->f1) / (1 + co->bn * pow(y, co->f2) + pow(co->cn * co->f3 * y, 3 - co->gn));
    dh /= 1 + co->nu / (y * y);
    return (dq + dh) / norm;
}

static double lss__halofit(double k, double plin, const lss__hfpar *hp, double omz) {
    lss__hfco co;
    lss__hf_coef(hp, omz, &co);
    return lss__halofit_co(k, plin, &co);
}

static double lss__omz(const lss_cosmo *c, double z) {
    double a1 = 1 + z, m = c->om * a1 * a1 * a1;
    return m / (m + c->ol);
}

/* Halofit parameters at any z: interpolated from the z nodes when inside the table, else computed */
static lss__hfpar lss__hf_at(const lss_cosmo *c, double z) {
    double x = log1p(z), w[4];
    lss__hfpar hp;
    int i, j;
    if (x >= 0 && x <= (LSS__PK_NZ - 1) * c->pz_dx) {
        i = lss__lag4(x / c->pz_dx, LSS__PK_NZ, w);
        memset(&hp, 0, sizeof hp);
        for (j = 0; j < 4; j++) {
            if (!c->hf[i + j].ok) { hp.ok = 0; return hp; }
            hp.lnks += w[j] * c->hf[i + j].lnks;
            hp.neff += w[j] * c->hf[i + j].neff;
            hp.curv += w[j] * c->hf[i + j].curv;
        }
        hp.ok = 1;
        return hp;
    }
    /* beyond the last z node D+ is smaller still: no non-linear scale there if there is none at the last node */
    if (x > 0 && !c->hf[LSS__PK_NZ - 1].ok) {
        memset(&hp, 0, sizeof hp);
        return hp;
    }
    return lss__hf_params(c, lss__growth_raw(c, z) / c->d0, 1.0);
}

LSSDEF double lss_cosmo_pk_lin(const lss_cosmo *c, double k, double z) {
    double lk, t, w[4], s = 0, d;
    int i, j;
    if (!c || !(k >= 0) || !(z > -1) || !isfinite(k) || !isfinite(z)) return NAN;
    if (k == 0) return 0;
    d = lss__growth_raw(c, z) / c->d0;
    lk = log(k);
    t = (lk - c->lnkmin) / c->dlnk;
    if (t < 0 || t > LSS__PK_NK - 1) return lss__pk0_direct(c, k) * d * d;
    i = lss__lag4(t, LSS__PK_NK, w);
    for (j = 0; j < 4; j++) s += w[j] * c->lnp0[i + j];
    return exp(s) * d * d;
}

LSSDEF double lss_cosmo_pk_nl(const lss_cosmo *c, double k, double z) {
    double lk, t, x, wk[4], wz[4], s = 0;
    int i, j, iz, jz;
    if (!c || !(k >= 0) || !(z > -1) || !isfinite(k) || !isfinite(z)) return NAN;
    if (c->p.linear || k == 0) return lss_cosmo_pk_lin(c, k, z);
    lk = log(k);
    t = (lk - c->lnkmin) / c->dlnk;
    x = log1p(z);
    if (t < 0 || t > LSS__PK_NK - 1 || x < 0 || x > (LSS__PK_NZ - 1) * c->pz_dx) {
        lss__hfpar hp = lss__hf_at(c, z);
        return lss__halofit(k, lss_cosmo_pk_lin(c, k, z), &hp, lss__omz(c, z));
    }
    i = lss__lag4(t, LSS__PK_NK, wk);
    iz = lss__lag4(x / c->pz_dx, LSS__PK_NZ, wz);
    for (jz = 0; jz < 4; jz++) {
        const double *row = c->lnpnl + (size_t)(iz + jz) * LSS__PK_NK + i;
        double r = 0;
        for (j = 0; j < 4; j++) r += wk[j] * row[j];
        s += wz[jz] * r;
    }
    return exp(s);
}

LSSDEF void lss_cosmo_free(lss_cosmo *c) {
    if (!c) return;
    LSS_FREE(c->bg_chi);
    LSS_FREE(c->bg_d);
    LSS_FREE(c->lnp0);
    LSS_FREE(c->lnpnl);
    LSS_FREE(c->hf);
    LSS_FREE(c->sig_k3p);
    LSS_FREE(c->sig_k2);
    LSS_FREE(c);
}

LSSDEF int lss_cosmo_create(const lss_params *p, lss_cosmo **out) {
    lss_cosmo *c;
    int s, i, j;
    double x, sum;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_cosmo_create: out is NULL");
    *out = NULL;
    if ((s = lss_params_check_physical(p)) != LSS_OK) return s;
    c = (lss_cosmo *)LSS_MALLOC(sizeof *c);
    if (!c) return lss_seterr(LSS_ERR_NOMEM, "lss_cosmo_create: out of memory");
    memset(c, 0, sizeof *c);
    c->p = *p;
    if (c->p.c1_rho_crit == 0) c->p.c1_rho_crit = LSS_C1RHOCRIT_NLA;
    if (c->p.t_cmb == 0) c->p.t_cmb = LSS_T_CMB;
    c->om = p->omega_m;
    c->ol = 1 - p->omega_m;
    c->c1rc = c->p.c1_rho_crit;
    c->bg_chi = (double *)LSS_MALLOC(sizeof(double) * LSS__BG_N);
    c->bg_d = (double *)LSS_MALLOC(sizeof(double) * LSS__BG_N);
    c->lnp0 = (double *)LSS_MALLOC(sizeof(double) * LSS__PK_NK);
    c->lnpnl = (double *)LSS_MALLOC(sizeof(double) * LSS__PK_NK * LSS__PK_NZ);
    c->hf = (lss__hfpar *)LSS_MALLOC(sizeof(lss__hfpar) * LSS__PK_NZ);
    c->sig_k3p = (double *)LSS_MALLOC(sizeof(double) * LSS__SIG_N);
    c->sig_k2 = (double *)LSS_MALLOC(sizeof(double) * LSS__SIG_N);
    if (!c->bg_chi || !c->bg_d || !c->lnp0 || !c->lnpnl || !c->hf || !c->sig_k3p || !c->sig_k2) {
        lss_cosmo_free(c);
        return lss_seterr(LSS_ERR_NOMEM, "lss_cosmo_create: out of memory");
    }
    /* background: chi from 0 upward, the growth integral from the top (matter-dominated series) downward */
    c->bg_dx = log1p(LSS__BG_ZMAX) / (LSS__BG_N - 1);
    c->bg_chi[0] = 0;
    for (i = 1; i < LSS__BG_N; i++)
        c->bg_chi[i] = c->bg_chi[i - 1] + LSS_C_OVER_H0 * lss__chi_int(c->om, c->ol, (i - 1) * c->bg_dx, i * c->bg_dx);
    sum = lss__gint_series(c->om, c->ol, exp(-(LSS__BG_N - 1) * c->bg_dx));
    for (i = LSS__BG_N - 1; i >= 0; i--) {
        if (i < LSS__BG_N - 1) sum += lss__gint_int(c->om, c->ol, i * c->bg_dx, (i + 1) * c->bg_dx);
        c->bg_d[i] = 2.5 * c->om * lss__ez(c->om, c->ol, expm1(i * c->bg_dx)) * sum;
    }
    c->d0 = c->bg_d[0];
    /* linear spectrum: EH transfer, amplitude from sigma_8 with a top-hat of R = 8 Mpc/h:
       sigma^2 = int dlnk k^3 P(k) W^2(kR) / (2 pi^2), Simpson in ln k over [1e-6, 1e3] h/Mpc, step 2.6e-3 */
    lss__eh_init(&c->eh, &c->p);
    c->amp = 1;
    {
        int n = 8000; /* even number of intervals */
        double l0 = log(1e-6), l1 = log(1e3), h = (l1 - l0) / n, acc = 0;
        for (i = 0; i <= n; i++) {
            double k = exp(l0 + i * h), kr = 8 * k, wth, wgt = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
            wth = kr < 1e-3 ? 1 - kr * kr / 10 : 3 * (sin(kr) - kr * cos(kr)) / (kr * kr * kr);
            acc += wgt * k * k * k * lss__pk0_direct(c, k) * wth * wth;
        }
        acc *= h / 3 / (2 * LSS__PI * LSS__PI);
        c->amp = p->sigma_8 * p->sigma_8 / acc;
        c->sigma8_tab = p->sigma_8;
    }
    c->lnkmin = log(LSS__PK_KMIN);
    c->dlnk = (log(LSS__PK_KMAX) - c->lnkmin) / (LSS__PK_NK - 1);
    for (i = 0; i < LSS__PK_NK; i++) c->lnp0[i] = log(lss__pk0_direct(c, exp(c->lnkmin + i * c->dlnk)));
    /* Gaussian-filtered sigma(R) grid: Simpson weights times Delta^2(k, 0) */
    {
        double h = (LSS__SIG_LNKMAX - LSS__SIG_LNKMIN) / (LSS__SIG_N - 1);
        for (j = 0; j < LSS__SIG_N; j++) {
            double k = exp(LSS__SIG_LNKMIN + j * h), wgt = (j == 0 || j == LSS__SIG_N - 1) ? 1 : (j % 2 ? 4 : 2);
            c->sig_k2[j] = k * k;
            c->sig_k3p[j] = wgt * h / 3 * k * k * k * lss__pk0_direct(c, k) / (2 * LSS__PI * LSS__PI);
        }
    }
    /* Halofit parameters and ln P_NL on the (z, ln k) nodes */
    c->pz_dx = log1p(LSS__PK_ZMAX) / (LSS__PK_NZ - 1);
    {
        double rprev = 1.0;
        for (i = 0; i < LSS__PK_NZ; i++) {
            double z = expm1(i * c->pz_dx);
            c->hf[i] = lss__hf_params(c, lss__growth_raw(c, z) / c->d0, rprev);
            if (c->hf[i].ok) rprev = exp(-c->hf[i].lnks);
        }
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) private(j, x)
#endif
    for (i = 0; i < LSS__PK_NZ; i++) {
        double z, d;
        lss__hfco co;
        x = i * c->pz_dx;
        z = expm1(x);
        d = lss__growth_raw(c, z) / c->d0;
        lss__hf_coef(&c->hf[i], lss__omz(c, z), &co);
        for (j = 0; j < LSS__PK_NK; j++) {
            double k = exp(c->lnkmin + j * c->dlnk), pl = exp(c->lnp0[j]) * d * d;
            c->lnpnl[(size_t)i * LSS__PK_NK + j] = co.ok ? log(lss__halofit_co(k, pl, &co)) : c->lnp0[j] + 2 * log(d);
        }
    }
    for (i = 0; i < LSS__PK_NK * LSS__PK_NZ; i++)
        if (!isfinite(c->lnpnl[i])) {
            lss_cosmo_free(c);
            return lss_seterr(LSS_ERR_NUMERIC, "lss_cosmo_create: non-finite P(k) table (omega_m %g, sigma_8 %g)",
                              p->omega_m, p->sigma_8);
        }
    *out = c;
    return LSS_OK;
}

/* The four DeepLSS Stage-III bins (Kacprzak & Fluri 2022, appendix A, figure 7), read off the n(z) figure of the
   public DeepLSS notebook: z = 0, 0.01, ..., 2.00 (201 nodes), each column normalised to unit integral (means
   0.299, 0.478, 0.751, 0.940; the paper quotes 0.31, 0.48, 0.75, 0.94). */
static const double lss__nz_deeplss[4][201] = {
   {
    0.00000, 0.04599, 0.09957, 0.19094, 0.31459, 0.46010, 0.62360, 0.79883, 0.97918, 1.16496, 1.35801, 1.54295,
    1.72021, 1.89447, 2.05874, 2.20509, 2.33793, 2.45978, 2.56300, 2.65265, 2.72284, 2.77700, 2.82107, 2.84778,
    2.85778, 2.85116, 2.82931, 2.79802, 2.75538, 2.70292, 2.64453, 2.57611, 2.50254, 2.42221, 2.33602, 2.26138,
    2.21439, 1.98857, 1.96908, 1.87290, 1.78013, 1.68702, 1.59140, 1.49748, 1.41048, 1.32315, 1.24030, 1.15662,
    1.07742, 1.00411, 0.94255, 0.91824, 0.73590, 0.73661, 0.67950, 0.62282, 0.58457, 0.56979, 0.44464, 0.43411,
    0.39776, 0.35957, 0.32180, 0.29041, 0.26146, 0.23677, 0.20864, 0.18780, 0.16597, 0.14624, 0.13006, 0.11230,
    0.09854, 0.08643, 0.07367, 0.06231, 0.04930, 0.04235, 0.03439, 0.02678, 0.01948, 0.01583, 0.00822, 0.00457,
    0.00091, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000},
   {
    0.00000, 0.00000, 0.00000, 0.00077, 0.00242, 0.00407, 0.00571, 0.00736, 0.01189, 0.01992, 0.03035, 0.05082,
    0.07698, 0.11228, 0.14719, 0.19300, 0.24440, 0.29810, 0.36075, 0.42685, 0.50305, 0.58392, 0.66988, 0.76050,
    0.85536, 0.95537, 1.05973, 1.16407, 1.26834, 1.37650, 1.48657, 1.59244, 1.70003, 1.80472, 1.90548, 1.99883,
    2.09141, 2.17360, 2.25437, 2.32046, 2.38482, 2.43672, 2.48071, 2.51503, 2.54339, 2.55854, 2.56382, 2.55965,
    2.54553, 2.51857, 2.48562, 2.44391, 2.39395, 2.33865, 2.27621, 2.20652, 2.13141, 2.05504, 1.96740, 1.88202,
    1.82192, 1.71709, 1.55524, 1.52235, 1.43349, 1.34496, 1.25200, 1.16565, 1.08151, 1.04318, 0.85411, 0.83626,
    0.77337, 0.70694, 0.64063, 0.57800, 0.51961, 0.46714, 0.41672, 0.36970, 0.32963, 0.28843, 0.25367, 0.22065,
    0.18872, 0.16416, 0.13944, 0.11859, 0.09767, 0.08069, 0.06393, 0.05021, 0.03675, 0.02683, 0.01860, 0.01169,
    0.00457, 0.00091, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000},
   {
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.01254, 0.03664, 0.06075, 0.08485, 0.10896,
    0.12948, 0.14816, 0.16926, 0.19015, 0.21857, 0.24962, 0.28820, 0.32955, 0.37762, 0.42788, 0.48192, 0.53866,
    0.60108, 0.66635, 0.73753, 0.80955, 0.88192, 0.96474, 1.04919, 1.13388, 1.22073, 1.31061, 1.40096, 1.49324,
    1.58212, 1.67806, 1.76493, 1.85178, 1.93787, 2.02209, 2.09846, 2.17501, 2.23916, 2.30246, 2.35499, 2.40303,
    2.44142, 2.47766, 2.50018, 2.51743, 2.52099, 2.51133, 2.49416, 2.46787, 2.43533, 2.39019, 2.33848, 2.27816,
    2.21258, 2.13596, 2.05924, 1.97508, 1.88272, 1.79172, 1.73471, 1.54304, 1.48376, 1.40042, 1.30121, 1.20659,
    1.10960, 1.01747, 0.92909, 0.83921, 0.75981, 0.68040, 0.60841, 0.53866, 0.47262, 0.41694, 0.36076, 0.31068,
    0.26901, 0.22394, 0.18892, 0.15755, 0.12806, 0.10346, 0.07913, 0.06177, 0.04709, 0.03121, 0.01953, 0.01190,
    0.00163, 0.00038, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000},
   {
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00070, 0.00093, 0.00590, 0.01255, 0.01955, 0.02618, 0.03321, 0.03983, 0.05028, 0.05773, 0.07025,
    0.08070, 0.08987, 0.10347, 0.11712, 0.13088, 0.14671, 0.16180, 0.17547, 0.19671, 0.21427, 0.23155, 0.25228,
    0.27373, 0.29522, 0.32032, 0.34519, 0.36690, 0.39532, 0.42047, 0.44916, 0.47900, 0.50686, 0.53903, 0.57295,
    0.60473, 0.63821, 0.67373, 0.70864, 0.74344, 0.77835, 0.81635, 0.85539, 0.89142, 0.93270, 0.96776, 1.00629,
    1.04565, 1.08344, 1.12418, 1.16091, 1.19944, 1.23838, 1.27659, 1.31181, 1.34960, 1.38524, 1.42004, 1.45051,
    1.48064, 1.51201, 1.54072, 1.56590, 1.59092, 1.61202, 1.63344, 1.65072, 1.66558, 1.68176, 1.67451, 1.67451,
    1.67451, 1.67451, 1.67451, 1.67451, 1.67451, 1.67048, 1.66086, 1.65393, 1.63882, 1.61430, 1.59265, 1.56199,
    1.53403, 1.50191, 1.46701, 1.43065, 1.39327, 1.35060, 1.30835, 1.26574, 1.21733, 1.17356, 1.12621, 1.07734,
    1.02763, 0.97877, 0.93298, 0.88392, 0.83412, 0.78535, 0.73805, 0.69050, 0.64535, 0.59937, 0.55713, 0.51415,
    0.47594, 0.43358, 0.39475, 0.35995, 0.32876, 0.29486, 0.26300, 0.23502, 0.20911, 0.18654, 0.16317, 0.14174,
    0.12353, 0.10308, 0.08960, 0.07242, 0.05838, 0.04474, 0.03507, 0.02625, 0.01955, 0.00890, 0.00466, 0.00093,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000,
    0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000}};

/* ---- redshift distributions ---- */
LSSDEF void lss_nz_free(lss_nz *bins, int nbins) {
    int b;
    if (!bins) return;
    for (b = 0; b < nbins; b++) {
        LSS_FREE(bins[b].z);
        LSS_FREE(bins[b].nz);
    }
    LSS_FREE(bins);
}

LSSDEF double lss_nz_eval(const lss_nz *b, double z) {
    int lo = 0, hi;
    double t;
    if (!b || b->n < 2 || !(z >= b->z[0] && z <= b->z[b->n - 1])) return 0;
    hi = b->n - 1;
    while (hi - lo > 1) {
        int m = (lo + hi) / 2;
        if (b->z[m] <= z) lo = m; else hi = m;
    }
    t = (z - b->z[lo]) / (b->z[hi] - b->z[lo]);
    return b->nz[lo] + t * (b->nz[hi] - b->nz[lo]);
}

LSSDEF int lss_nz_from_table(const double *z, const double *nz, int n, int nbins, lss_nz **bins) {
    lss_nz *out;
    int b, i;
    if (!bins) return lss_seterr(LSS_ERR_ARG, "lss_nz_from_table: bins is NULL");
    *bins = NULL;
    if (!z || !nz) return lss_seterr(LSS_ERR_ARG, "lss_nz_from_table: NULL table");
    if (n < 2) return lss_seterr(LSS_ERR_FORMAT, "n(z) table: %d rows, at least 2 are needed", n);
    if (nbins < 1) return lss_seterr(LSS_ERR_FORMAT, "n(z) table: no n(z) column (at least z and one n)");
    if (n > LSS_NZ_MAX_ROWS || nbins > LSS_NZ_MAX_BINS)
        return lss_seterr(LSS_ERR_FORMAT, "n(z) table: %d rows of %d bins (at most %d rows and %d bins)", n, nbins, LSS_NZ_MAX_ROWS, LSS_NZ_MAX_BINS);
    for (i = 0; i < n; i++) {
        if (!(z[i] >= 0 && z[i] <= LSS_NZ_ZMAX))
            return lss_seterr(LSS_ERR_FORMAT, "n(z) table: row %d: z = %g is outside [0, %g]", i + 1, z[i], LSS_NZ_ZMAX);
        if (i > 0 && !(z[i] > z[i - 1]))
            return lss_seterr(LSS_ERR_FORMAT, "n(z) table: z is not strictly increasing at row %d (%g after %g)", i + 1, z[i], z[i - 1]);
    }
    for (b = 0; b < nbins; b++)
        for (i = 0; i < n; i++)
            if (!isfinite(nz[(size_t)b * n + i]) || nz[(size_t)b * n + i] < 0)
                return lss_seterr(LSS_ERR_FORMAT, "n(z) table: bin %d, row %d: n = %g is not finite and >= 0", b + 1, i + 1,
                                  nz[(size_t)b * n + i]);
    out = (lss_nz *)LSS_MALLOC(sizeof(lss_nz) * (size_t)nbins);
    if (!out) return lss_seterr(LSS_ERR_NOMEM, "lss_nz_from_table: out of memory");
    memset(out, 0, sizeof(lss_nz) * (size_t)nbins);
    for (b = 0; b < nbins; b++) {
        const double *v = nz + (size_t)b * n;
        double norm = 0, m1 = 0;
        out[b].z = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
        out[b].nz = (double *)LSS_MALLOC(sizeof(double) * (size_t)n);
        if (!out[b].z || !out[b].nz) {
            lss_nz_free(out, nbins);
            return lss_seterr(LSS_ERR_NOMEM, "lss_nz_from_table: out of memory");
        }
        out[b].n = n;
        for (i = 0; i + 1 < n; i++) { /* exact integrals of the linear interpolant */
            double h = z[i + 1] - z[i];
            norm += 0.5 * h * (v[i] + v[i + 1]);
            m1 += h * (v[i] * (2 * z[i] + z[i + 1]) + v[i + 1] * (z[i] + 2 * z[i + 1])) / 6;
        }
        if (!(norm > 0) || !isfinite(norm)) {
            lss_nz_free(out, nbins);
            return lss_seterr(LSS_ERR_FORMAT, "n(z) table: bin %d has no positive integral", b + 1);
        }
        for (i = 0; i < n; i++) {
            out[b].z[i] = z[i];
            out[b].nz[i] = v[i] / norm;
        }
        out[b].zmean = m1 / norm;
    }
    *bins = out;
    return LSS_OK;
}

/* Reads one line of any length into *buf (grown as needed); returns its length, -1 at end of file, -2 on no memory. */
static long lss__getline(FILE *f, char **buf, size_t *cap) {
    size_t n = 0;
    int ch;
    if ((ch = fgetc(f)) == EOF) return -1;
    while (ch != EOF && ch != '\n') {
        if (n + 2 > *cap) {
            size_t nc = *cap ? 2 * *cap : 256;
            char *nb = (char *)LSS_REALLOC(*buf, nc);
            if (!nb) return -2;
            *buf = nb;
            *cap = nc;
        }
        (*buf)[n++] = (char)ch;
        ch = fgetc(f);
    }
    if (n + 1 > *cap) {
        char *nb = (char *)LSS_REALLOC(*buf, n + 1);
        if (!nb) return -2;
        *buf = nb;
        *cap = n + 1;
    }
    (*buf)[n] = 0;
    return (long)n;
}

LSSDEF int lss_nz_load(const char *path, lss_nz **bins, int *nbins) {
    FILE *f;
    char *line = NULL;
    size_t cap = 0;
    double *vals = NULL, *z = NULL, *nz = NULL;
    long len, lineno = 0;
    size_t nv = 0, vcap = 0;
    int ncol = 0, nrow = 0, s = LSS_OK, i, b;
    if (!bins || !nbins || !path) return lss_seterr(LSS_ERR_ARG, "lss_nz_load: NULL argument");
    *bins = NULL;
    *nbins = 0;
    if ((s = lss_fopen_read(path, &f, NULL)) != LSS_OK) return lss_seterr(s, "n(z) file: %s", lss_last_error());
    while ((len = lss__getline(f, &line, &cap)) >= 0) {
        char *p = line, *end;
        int nc = 0;
        lineno++;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p == 0 || *p == '#') continue;
        for (;;) {
            double v;
            while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\r') p++;
            if (*p == 0 || *p == '#') break;
            v = strtod(p, &end);
            if (end == p || (*end && *end != ' ' && *end != '\t' && *end != ',' && *end != '\r' && *end != '#')) {
                s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s', line %ld: '%.20s' is not a number", path, lineno, p);
                goto done;
            }
            if (nv + 1 > vcap) {
                size_t nc2 = vcap ? 2 * vcap : 1024;
                double *nb = (double *)LSS_REALLOC(vals, sizeof(double) * nc2);
                if (!nb) { s = lss_seterr(LSS_ERR_NOMEM, "lss_nz_load: out of memory"); goto done; }
                vals = nb;
                vcap = nc2;
            }
            vals[nv++] = v;
            nc++;
            p = end;
        }
        if (nc == 0) continue; /* only separators before a comment: a blank line */
        if (ncol == 0) ncol = nc;
        if (nc != ncol) {
            s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s', line %ld: %d columns, the first row has %d", path, lineno, nc, ncol);
            goto done;
        }
        /* the limits while reading: a huge or runaway table stops at its first bad line */
        if (!(vals[nv - nc] >= 0 && vals[nv - nc] <= LSS_NZ_ZMAX)) {
            s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s', line %ld: z = %g is outside [0, %g]", path, lineno, vals[nv - nc], LSS_NZ_ZMAX);
            goto done;
        }
        if (nc - 1 > LSS_NZ_MAX_BINS || nrow >= LSS_NZ_MAX_ROWS) {
            s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s', line %ld: more than %d rows or %d n(z) columns", path, lineno, LSS_NZ_MAX_ROWS,
                           LSS_NZ_MAX_BINS);
            goto done;
        }
        nrow++;
    }
    if (len == -2) { s = lss_seterr(LSS_ERR_NOMEM, "lss_nz_load: out of memory"); goto done; }
    if (ferror(f)) { s = lss_seterr(LSS_ERR_IO, "cannot read n(z) file '%s': %s", path, strerror(errno)); goto done; }
    if (nrow == 0) { s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s' has no data rows", path); goto done; }
    if (ncol < 2) { s = lss_seterr(LSS_ERR_FORMAT, "n(z) file '%s': %d column, need z and at least one n(z)", path, ncol); goto done; }
    z = (double *)LSS_MALLOC(sizeof(double) * (size_t)nrow);
    nz = (double *)LSS_MALLOC(sizeof(double) * (size_t)nrow * (size_t)(ncol - 1));
    if (!z || !nz) { s = lss_seterr(LSS_ERR_NOMEM, "lss_nz_load: out of memory"); goto done; }
    for (i = 0; i < nrow; i++) {
        z[i] = vals[(size_t)i * ncol];
        for (b = 0; b < ncol - 1; b++) nz[(size_t)b * nrow + i] = vals[(size_t)i * ncol + 1 + b];
    }
    s = lss_nz_from_table(z, nz, nrow, ncol - 1, bins);
    if (s != LSS_OK) {
        char msg[1024];
        const char *e = lss_last_error();
        size_t el = strlen(e) < sizeof msg - 1 ? strlen(e) : sizeof msg - 1;
        memcpy(msg, e, el);
        msg[el] = 0;
        s = lss_seterr(s, "n(z) file '%s': %s", path, msg);
    } else *nbins = ncol - 1;
done:
    fclose(f);
    LSS_FREE(line);
    LSS_FREE(vals);
    LSS_FREE(z);
    LSS_FREE(nz);
    return s;
}

LSSDEF int lss_nz_builtin(const char *name, lss_nz **bins, int *nbins) {
    int i, s;
    if (!bins || !nbins || !name) return lss_seterr(LSS_ERR_ARG, "lss_nz_builtin: NULL argument");
    *bins = NULL;
    *nbins = 0;
    if (strcmp(name, "deeplss") == 0) {
        double z[201];
        for (i = 0; i < 201; i++) z[i] = 0.01 * i;
        s = lss_nz_from_table(z, &lss__nz_deeplss[0][0], 201, 4, bins);
        if (s == LSS_OK) *nbins = 4;
        return s;
    }
    if (strcmp(name, "cosmos") == 0) {
        /* COSMOS-like single distribution: the Smail et al. (1994) form n(z) ~ z^2 exp(-(z/z0)^1.5) with z0 = 0.7,
           tabulated on 0 <= z <= 5 (step 0.01). It peaks at z = 0.85 and has mean 1.05 and median 0.93, with a tail to
           z ~ 3, as the combined bright + faint COSMOS distribution of Schrabback et al. (2010) shown in figure 4 of the
           mass-mapping paper (Remy et al. 2022); the same form is the usual fit of COSMOS-depth lensing samples. */
        double z[501], v[501];
        for (i = 0; i < 501; i++) {
            z[i] = 0.01 * i;
            v[i] = z[i] * z[i] * exp(-pow(z[i] / 0.7, 1.5));
        }
        s = lss_nz_from_table(z, v, 501, 1, bins);
        if (s == LSS_OK) *nbins = 1;
        return s;
    }
    return lss_seterr(LSS_ERR_ARG, "unknown built-in n(z) '%s' (known: deeplss, cosmos)", name);
}

/* int dz n(z) ((1+z)/(1+z0))^eta over the linear pieces of the table (4-point Gauss-Legendre each) */
static double lss__nz_powmean(const lss_nz *b, double eta) {
    int i, j;
    double s = 0;
    if (!b || b->n < 2) return NAN;
    if (eta == 0) return 1;
    for (i = 0; i + 1 < b->n; i++) {
        double z0 = b->z[i], h = b->z[i + 1] - z0;
        for (j = 0; j < 4; j++) {
            double t = 0.5 * (1 + lss__gl4x[j]), z = z0 + t * h, n = b->nz[i] + t * (b->nz[i + 1] - b->nz[i]);
            s += 0.5 * h * lss__gl4w[j] * n * pow((1 + z) / (1 + LSS_IA_Z0), eta);
        }
    }
    return s;
}
LSSDEF double lss_params_a_ia_bin(const lss_params *p, const lss_nz *bin) {
    return p ? p->a_ia * lss__nz_powmean(bin, p->eta_ia) : NAN;
}
LSSDEF double lss_params_b_bin(const lss_params *p, const lss_nz *bin) {
    return p ? p->b_g * lss__nz_powmean(bin, p->eta_bg) : NAN;
}
LSSDEF double lss_params_b2_bin(const lss_params *p, const lss_nz *bin) {
    return p ? p->b_g2 * lss__nz_powmean(bin, p->eta_bg2) : NAN;
}

/* ---- Limber spectra ---- */
/* quadrature of a shell: 8-point Gauss-Legendre on np panels of at most (0.02 chi2 + 2) Mpc/h */
static int lss__shell_panels(double chi1, double chi2) {
    int np = (int)ceil((chi2 - chi1) / (0.02 * chi2 + 2.0));
    return np < 2 ? 2 : np > 4096 ? 4096 : np;
}

LSSDEF int lss_cl_shell_many(const lss_cosmo *c, double chi1, double chi2, const double *ell, int nell, double *out) {
    int np, i, j, l;
    double h, norm;
    if (!c || !ell || !out || nell < 0) return lss_seterr(LSS_ERR_ARG, "lss_cl_shell_many: NULL argument or nell < 0");
    if (!(chi1 >= 0) || !(chi2 > chi1) || !isfinite(chi2))
        return lss_seterr(LSS_ERR_ARG, "lss_cl_shell_many: bad shell [%g, %g] Mpc/h", chi1, chi2);
    for (l = 0; l < nell; l++) {
        if (!(ell[l] >= 0) || !isfinite(ell[l])) return lss_seterr(LSS_ERR_ARG, "lss_cl_shell_many: ell[%d] = %g", l, ell[l]);
        out[l] = 0;
    }
    np = lss__shell_panels(chi1, chi2);
    h = (chi2 - chi1) / np;
    norm = 0.5 * h / ((chi2 - chi1) * (chi2 - chi1));
    for (i = 0; i < np; i++) {
        double m = chi1 + (i + 0.5) * h;
        for (j = 0; j < 8; j++) {
            double chi = m + 0.5 * h * lss__gl8x[j], z = lss_cosmo_z_of_chi(c, chi), w = lss__gl8w[j] * norm / (chi * chi);
            for (l = 0; l < nell; l++) out[l] += w * lss_cosmo_pk_nl(c, (ell[l] + 0.5) / chi, z);
        }
    }
    return LSS_OK;
}

LSSDEF double lss_cl_shell(const lss_cosmo *c, double chi1, double chi2, double ell) {
    double v;
    if (!c || !(chi1 >= 0) || !(chi2 > chi1) || !isfinite(chi2) || !(ell >= 0) || !isfinite(ell)) return NAN;
    if (lss_cl_shell_many(c, chi1, chi2, &ell, 1, &v) != LSS_OK) return NAN;
    return v;
}

LSSDEF double lss_cl_lensing_kernel(const lss_cosmo *c, const lss_nz *b, double chi) {
    double z, s = 0;
    int i, j;
    if (!c || !b || b->n < 2 || !(chi >= 0) || !isfinite(chi)) return NAN;
    if (chi == 0) return 0;
    z = lss_cosmo_z_of_chi(c, chi);
    for (i = 0; i + 1 < b->n; i++) {
        double za = b->z[i], zb = b->z[i + 1], na = b->nz[i], nb = b->nz[i + 1];
        if (zb <= z) continue;
        if (za < z) { na = lss_nz_eval(b, z); za = z; }
        for (j = 0; j < 4; j++) {
            double t = 0.5 * (1 + lss__gl4x[j]), zz = za + t * (zb - za), n = na + t * (nb - na);
            s += 0.5 * (zb - za) * lss__gl4w[j] * n * (1 - chi / lss_cosmo_chi(c, zz));
        }
    }
    return 1.5 * c->om / (LSS_C_OVER_H0 * LSS_C_OVER_H0) * chi * (1 + z) * s;
}

LSSDEF int lss_cl_npairs(int nbins) { return nbins < 1 ? 0 : nbins * (nbins + 1) + nbins * nbins; }

/* pair -> (kind, i, j): kind 0 kk (i <= j), 1 kd (all), 2 dd (i <= j) */
static int lss__pair(int nb, int pair, int *i, int *j) {
    int nt = nb * (nb + 1) / 2, a, b, m = pair;
    if (nb < 1 || pair < 0 || pair >= lss_cl_npairs(nb)) return -1;
    if (m < nt || m >= nt + nb * nb) {
        if (m >= nt) m -= nt + nb * nb;
        for (a = 0; a < nb; a++)
            for (b = a; b < nb; b++)
                if (m-- == 0) { *i = a; *j = b; return pair < nt ? 0 : 2; }
        return -1;
    }
    m -= nt;
    *i = m / nb;
    *j = m % nb;
    return 1;
}

LSSDEF void lss_cl_pair_name(int nbins, int pair, char *buf, size_t n) {
    static const char *kinds[3] = {"kk", "kd", "dd"};
    int i = 0, j = 0, k;
    if (!buf || n == 0) return;
    k = lss__pair(nbins, pair, &i, &j);
    if (k < 0) snprintf(buf, n, "?");
    else snprintf(buf, n, "%s_%d_%d", kinds[k], i + 1, j + 1);
}

static int lss__cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

LSSDEF int lss_cl_tomo_terms(const lss_cosmo *c, const lss_nz *bins, int nbins, const double *ell, int nell, int terms,
                             double *out) {
    double zmax = 0, *bp = NULL, *zn = NULL, *chin = NULL, *wn = NULL, *kg = NULL, *ki = NULL, *kd = NULL, *pk = NULL;
    double *c1 = NULL, *c2 = NULL;
    int nbp = 0, nbpcap, b, i, j, l, m, M, np, s = LSS_OK;
    const double pref = 1.5 * (c ? c->om : 0) / (LSS_C_OVER_H0 * LSS_C_OVER_H0);
    if (!c || !bins || !ell || !out) return lss_seterr(LSS_ERR_ARG, "lss_cl_tomo: NULL argument");
    if (nbins < 1 || nell < 1) return lss_seterr(LSS_ERR_ARG, "lss_cl_tomo: nbins = %d and nell = %d must be >= 1", nbins, nell);
    if (terms < LSS_CL_ALL || terms > LSS_CL_II) return lss_seterr(LSS_ERR_ARG, "lss_cl_tomo_terms: unknown terms %d", terms);
    for (l = 0; l < nell; l++)
        if (!(ell[l] >= 0) || !isfinite(ell[l])) return lss_seterr(LSS_ERR_RANGE, "lss_cl_tomo: ell[%d] = %g is not >= 0", l, ell[l]);
    for (b = 0; b < nbins; b++) {
        if (bins[b].n < 2 || !bins[b].z || !bins[b].nz) return lss_seterr(LSS_ERR_ARG, "lss_cl_tomo: bin %d is empty", b + 1);
        if (bins[b].z[bins[b].n - 1] > zmax) zmax = bins[b].z[bins[b].n - 1];
    }
    if (!(zmax > 0)) return lss_seterr(LSS_ERR_RANGE, "lss_cl_tomo: the n(z) tables end at z = 0");
    np = lss_cl_npairs(nbins);
    /* breakpoints: every n(z) node, a uniform grid of step <= 0.01, and a geometric refinement towards z = 0 */
    nbpcap = 2 + (int)ceil(zmax / 0.01) + 20;
    for (b = 0; b < nbins; b++) nbpcap += bins[b].n;
    bp = (double *)LSS_MALLOC(sizeof(double) * (size_t)nbpcap);
    if (!bp) return lss_seterr(LSS_ERR_NOMEM, "lss_cl_tomo: out of memory");
    {
        int nu = (int)ceil(zmax / 0.01);
        for (i = 0; i <= nu; i++) bp[nbp++] = zmax * i / nu;
        for (i = 1; i <= 16; i++) bp[nbp++] = zmax / nu * pow(0.5, i);
        for (b = 0; b < nbins; b++)
            for (i = 0; i < bins[b].n; i++)
                if (bins[b].z[i] <= zmax) bp[nbp++] = bins[b].z[i];
        qsort(bp, (size_t)nbp, sizeof(double), lss__cmpd);
        m = 0;
        for (i = 0; i < nbp; i++)
            if (m == 0 || bp[i] > bp[m - 1] * (1 + 1e-12) + 1e-14) bp[m++] = bp[i];
        nbp = m;
    }
    M = 4 * (nbp - 1);
    zn = (double *)LSS_MALLOC(sizeof(double) * (size_t)M);
    chin = (double *)LSS_MALLOC(sizeof(double) * (size_t)M);
    wn = (double *)LSS_MALLOC(sizeof(double) * (size_t)M);
    kg = (double *)LSS_MALLOC(sizeof(double) * (size_t)M * nbins);
    ki = (double *)LSS_MALLOC(sizeof(double) * (size_t)M * nbins);
    kd = (double *)LSS_MALLOC(sizeof(double) * (size_t)M * nbins);
    pk = (double *)LSS_MALLOC(sizeof(double) * (size_t)M * nell);
    c1 = (double *)LSS_MALLOC(sizeof(double) * (size_t)nbp);
    c2 = (double *)LSS_MALLOC(sizeof(double) * (size_t)nbp);
    if (!zn || !chin || !wn || !kg || !ki || !kd || !pk || !c1 || !c2) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_cl_tomo: out of memory");
        goto done;
    }
    /* nodes: 4-point Gauss-Legendre on each interval; weight dz (c/H0) / (E chi^2) */
    for (i = 0; i + 1 < nbp; i++) {
        double h = bp[i + 1] - bp[i];
        for (j = 0; j < 4; j++) {
            int q = 4 * i + j;
            zn[q] = bp[i] + 0.5 * h * (1 + lss__gl4x[j]);
            chin[q] = lss_cosmo_chi(c, zn[q]);
            wn[q] = 0.5 * h * lss__gl4w[j] * LSS_C_OVER_H0 / (lss__ez(c->om, c->ol, zn[q]) * chin[q] * chin[q]);
        }
    }
    for (b = 0; b < nbins; b++) {
        const lss_nz *nb = &bins[b];
        const lss_params *p = &c->p;
        double aia = lss_params_a_ia_bin(p, nb), bias = lss_params_b_bin(p, nb);
        /* c1[m] = int_{bp_m}^{zmax} n dz, c2[m] = int_{bp_m}^{zmax} n / chi dz */
        c1[nbp - 1] = c2[nbp - 1] = 0;
        for (i = nbp - 2; i >= 0; i--) {
            double h = bp[i + 1] - bp[i], a1 = 0, a2 = 0;
            for (j = 0; j < 4; j++) {
                double n = lss_nz_eval(nb, zn[4 * i + j]);
                a1 += lss__gl4w[j] * n;
                a2 += lss__gl4w[j] * n / chin[4 * i + j];
            }
            c1[i] = c1[i + 1] + 0.5 * h * a1;
            c2[i] = c2[i + 1] + 0.5 * h * a2;
        }
        for (i = 0; i + 1 < nbp; i++)
            for (j = 0; j < 4; j++) {
                int q = 4 * i + j, r;
                double z = zn[q], chi = chin[q], n1 = c1[i + 1], n2 = c2[i + 1], h = bp[i + 1] - z, n, ez;
                for (r = 0; r < 4; r++) { /* from the node to the end of its interval */
                    double zz = z + 0.5 * h * (1 + lss__gl4x[r]), nn = lss_nz_eval(nb, zz);
                    n1 += 0.5 * h * lss__gl4w[r] * nn;
                    n2 += 0.5 * h * lss__gl4w[r] * nn / lss_cosmo_chi(c, zz);
                }
                n = lss_nz_eval(nb, z);
                ez = lss__ez(c->om, c->ol, z) / LSS_C_OVER_H0;
                kg[(size_t)b * M + q] = pref * chi * (1 + z) * (n1 - chi * n2);
                ki[(size_t)b * M + q] = aia * lss_cosmo_nla_f(c, z) * n * ez;
                kd[(size_t)b * M + q] = bias * n * ez;
            }
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) private(m)
#endif
    for (l = 0; l < nell; l++) {
        double *row = pk + (size_t)l * M;
        int pr;
        for (m = 0; m < M; m++) row[m] = wn[m] * lss_cosmo_pk_nl(c, (ell[l] + 0.5) / chin[m], zn[m]);
        for (pr = 0; pr < np; pr++) {
            int a = 0, bb = 0, kind = lss__pair(nbins, pr, &a, &bb);
            const double *ga = kg + (size_t)a * M, *gb = kg + (size_t)bb * M, *ia = ki + (size_t)a * M,
                         *ib = ki + (size_t)bb * M, *da = kd + (size_t)a * M, *db = kd + (size_t)bb * M;
            double acc = 0;
            for (m = 0; m < M; m++) {
                double v = 0;
                if (kind == 0) {
                    if (terms == LSS_CL_ALL) v = (ga[m] + ia[m]) * (gb[m] + ib[m]);
                    else if (terms == LSS_CL_GG) v = ga[m] * gb[m];
                    else if (terms == LSS_CL_GI) v = ga[m] * ib[m] + ia[m] * gb[m];
                    else v = ia[m] * ib[m];
                } else if (kind == 1) {
                    if (terms == LSS_CL_ALL) v = (ga[m] + ia[m]) * db[m];
                    else if (terms == LSS_CL_GG) v = ga[m] * db[m];
                    else if (terms == LSS_CL_GI) v = ia[m] * db[m];
                } else if (terms == LSS_CL_ALL || terms == LSS_CL_GG) v = da[m] * db[m];
                acc += row[m] * v;
            }
            out[(size_t)pr * nell + l] = acc;
        }
    }
done:
    LSS_FREE(bp); LSS_FREE(zn); LSS_FREE(chin); LSS_FREE(wn); LSS_FREE(kg); LSS_FREE(ki); LSS_FREE(kd); LSS_FREE(pk);
    LSS_FREE(c1); LSS_FREE(c2);
    return s;
}

LSSDEF int lss_cl_tomo(const lss_cosmo *c, const lss_nz *bins, int nbins, const double *ell, int nell, double *out) {
    return lss_cl_tomo_terms(c, bins, nbins, ell, nell, LSS_CL_ALL, out);
}
/* ==== END THEORY IMPLEMENTATION ==== */

/* ==== MAPS IMPLEMENTATION ==== */
#include <fftw3.h>
#ifdef LSS_MPI
#include <fftw3-mpi.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#define LSS__MOMP(x) _Pragma(#x)
#else
#define LSS__MOMP(x)
#endif

#define LSS__PI 3.14159265358979323846
#define LSS__ARCMIN (LSS__PI / (180.0 * 60.0))

/* Ziggurat tables (Marsaglia & Tsang 2000, 128 layers) for standard normals; the layer comes from the low 7 bits
   of a 32-bit word and the value from its top 25 bits (no correlation between the two). Built once per
   simulator in double precision. */
typedef struct {
    int32_t kn[128];
    float wn[128], fn[128];
} lss__zig;

static void lss__zig_init(lss__zig *z) {
    double dn = 3.442619855899, tn = dn, vn = 9.91256303526217e-3, m1 = 16777216.0, q;
    int i;
    q = vn / exp(-0.5 * dn * dn);
    z->kn[0] = (int32_t)((dn / q) * m1);
    z->kn[1] = 0;
    z->wn[0] = (float)(q / m1);
    z->wn[127] = (float)(dn / m1);
    z->fn[0] = 1.0f;
    z->fn[127] = (float)exp(-0.5 * dn * dn);
    for (i = 126; i >= 1; i--) {
        dn = sqrt(-2.0 * log(vn / dn + exp(-0.5 * dn * dn)));
        z->kn[i + 1] = (int32_t)((dn / tn) * m1);
        tn = dn;
        z->fn[i] = (float)exp(-0.5 * dn * dn);
        z->wn[i] = (float)(dn / m1);
    }
}

/* one standard normal from the word stream r */
static float lss__zig_normal(const lss__zig *z, lss_rng *r) {
    for (;;) {
        uint32_t u = lss_rng_u32(r);
        int iz = (int)(u & 127);
        int32_t hz = (int32_t)(u >> 7) - 16777216;   /* [-2^24, 2^24) */
        int32_t ah = hz < 0 ? -hz : hz;
        float x = (float)hz * z->wn[iz];
        if (ah < z->kn[iz]) return x;
        if (iz == 0) {
            /* the tail beyond r = 3.4426 (Marsaglia 1964) */
            float xt, yt;
            do {
                xt = -logf(lss_u32_to_float(lss_rng_u32(r))) * 0.2904764f;
                yt = -logf(lss_u32_to_float(lss_rng_u32(r)));
            } while (yt + yt < xt * xt);
            return hz > 0 ? 3.442620f + xt : -3.442620f - xt;
        }
        /* the wedge: accept under the density */
        if (z->fn[iz] + lss_u32_to_float(lss_rng_u32(r)) * (z->fn[iz - 1] - z->fn[iz]) < expf(-0.5f * x * x)) return x;
    }
}

/* n standard normals from the words of (seed, stream), blocks 0, 1, ... in order */
static void lss__normals(const lss__zig *z, uint64_t seed, uint64_t stream, float *dst, int64_t n) {
    lss_rng r;
    int64_t i;
    lss_rng_init(&r, seed, stream);
    for (i = 0; i < n; i++) dst[i] = lss__zig_normal(z, &r);
}

/* ---------------------------------------------------------------- shells */
LSSDEF int lss_shell_edges(const lss_shell_opts *o, double *zedges, int cap) {
    double zmax = 3.5, dlo = 0.05, zs = 1.55, dhi = 0.1, z = 0;
    int n = 0;
    if (o) {
        if (o->zmax != 0) zmax = o->zmax;
        if (o->dz_lo != 0) dlo = o->dz_lo;
        if (o->z_split != 0) zs = o->z_split;
        if (o->dz_hi != 0) dhi = o->dz_hi;
    }
    if (!(zmax > 0 && zmax <= 20) || !(dlo > 0) || !(dhi > 0) || !(zs > 0) || !isfinite(zs))
        return lss_seterr(LSS_ERR_ARG, "shells: need 0 < zmax <= 20 and positive dz_lo, dz_hi, z_split (got zmax %g, "
                                       "dz_lo %g, z_split %g, dz_hi %g)", zmax, dlo, zs, dhi);
    if (zmax / (dlo < dhi ? dlo : dhi) > 100000) return lss_seterr(LSS_ERR_ARG, "shells: more than 100000 shells");
    if (zedges) { if (cap < 1) return lss_seterr(LSS_ERR_RANGE, "shells: no room for the edges"); zedges[0] = 0; }
    while (z < zmax * (1 - 1e-12)) {
        /* edges on the exact grid k * dz (no accumulated rounding) */
        double nz;
        if (z < zs * (1 - 1e-12)) {
            nz = dlo * floor(z / dlo + 1 + 1e-9);
            if (nz > zs * (1 + 1e-12)) nz = zs;
        } else {
            nz = zs + dhi * floor((z - zs) / dhi + 1 + 1e-9);
        }
        if (nz > zmax * (1 - 1e-9)) nz = zmax;
        n++;
        if (zedges) {
            if (n >= cap) return lss_seterr(LSS_ERR_RANGE, "shells: more than %d edges", cap);
            zedges[n] = nz;
        }
        z = nz;
    }
    return n;
}

/* ---------------------------------------------------------------- simulator */
struct lss_sim {
    lss_sim_opts o;
    int n, M, nbins, nshell, ndraw, hmax, region;
    double pix_rad, clip_max;
    int clip_worst;
    lss_nz *nz;                        /* deep copy of the bins */
    double *zmean, *szmean;            /* n(z) means; redshifts of the smoothing scales */
    double *z_lo, *z_hi, *chi_lo, *chi_hi;
    int *draw;                         /* [ndraw] shell index of each drawn shell */
    double *w_wl, *w_ia, *w_g, *w_tot; /* [nbins][nshell], w_tot[nbins] = sum_b w_g */
    double *sig_wl, *sig_gc;           /* [nbins] arcmin */
    int *khw;                          /* [2][nbins] kernel half-widths (0: no smoothing) */
    float *kern;                       /* [2][nbins][2*LSS__KMAX+1] */
    int ell_n;
    double *ell, *cl;                  /* [ell_n], [nshell][ell_n] */
    float *amp;                        /* [ndraw][M][M/2+1] */
    float *hvar;                       /* [ndraw] var(g)/2 */
    /* double-precision setup buffers and plans */
    double *dreal;
    fftw_complex *dcplx;
    fftw_plan d_c2r, d_r2c;
    fftwf_plan g_c2r, f_r2c, f_c2r;
    lss__zig zig;
    lss_params cp;                     /* the current cosmology's parameters */
    const lss_shellset *shells;        /* N-body shells (lss_sim_use_shells) or NULL: lognormal */
    int *shell_of;                     /* [nshell] index of each shell in the set (-1: absent) */
    int shells_other_cosmo;            /* 1 after lss_sim_set_cosmo moved away from the set's cosmology */
};
#define LSS__KMAX 64

struct lss_sim_work {
    fftwf_complex *gc;   /* [M][M/2+1] */
    float *gr;           /* [M][M] */
    float *acc;          /* [3 nbins][region][region] */
    float *tmp;          /* [region][region] */
    fftwf_complex *fc;   /* [n][n/2+1] */
    float *fr;           /* [n][n] */
    float *fr2;          /* [n][n] */
    float *noise;        /* [2 M (M/2+1)] normals */
    float *counts;       /* [nbins][n][n] */
};

static double lss__interp_loglog(const double *x, const double *y, int n, double xv) {
    /* x log-spaced; y >= 0 */
    double lx0 = log(x[0]), dl = (log(x[n - 1]) - lx0) / (n - 1), t, f;
    int i;
    if (xv <= x[0]) return y[0];
    if (xv >= x[n - 1]) return y[n - 1];
    t = (log(xv) - lx0) / dl;
    i = (int)t;
    if (i >= n - 1) i = n - 2;
    f = t - i;
    if (y[i] > 0 && y[i + 1] > 0) return exp((1 - f) * log(y[i]) + f * log(y[i + 1]));
    return (1 - f) * y[i] + f * y[i + 1];
}


/* signed frequency index of entry i of an n-point DFT */
static int lss__fidx(int i, int n) { return i <= n / 2 ? i : i - n; }

static void lss__fftw_lock_plan_free(lss_sim *s) {
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        if (s->d_c2r) fftw_destroy_plan(s->d_c2r);
        if (s->d_r2c) fftw_destroy_plan(s->d_r2c);
        if (s->g_c2r) fftwf_destroy_plan(s->g_c2r);
        if (s->f_r2c) fftwf_destroy_plan(s->f_r2c);
        if (s->f_c2r) fftwf_destroy_plan(s->f_c2r);
    }
}

LSSDEF void lss_sim_free(lss_sim *s) {
    int i;
    if (!s) return;
    lss__fftw_lock_plan_free(s);
    if (s->nz) {
        for (i = 0; i < s->nbins; i++) { LSS_FREE(s->nz[i].z); LSS_FREE(s->nz[i].nz); }
        LSS_FREE(s->nz);
    }
    LSS_FREE(s->zmean); LSS_FREE(s->szmean); LSS_FREE(s->z_lo); LSS_FREE(s->z_hi); LSS_FREE(s->chi_lo); LSS_FREE(s->chi_hi);
    LSS_FREE(s->draw); LSS_FREE(s->w_wl); LSS_FREE(s->w_ia); LSS_FREE(s->w_g); LSS_FREE(s->w_tot);
    LSS_FREE(s->sig_wl); LSS_FREE(s->sig_gc); LSS_FREE(s->khw); LSS_FREE(s->kern); LSS_FREE(s->ell);
    LSS_FREE(s->cl); LSS_FREE(s->hvar); LSS_FREE(s->shell_of);
    if (s->amp) fftwf_free(s->amp);
    if (s->dreal) fftw_free(s->dreal);
    if (s->dcplx) fftw_free(s->dcplx);
    LSS_FREE(s);
}

/* Gaussian smoothing sigmas of section II B. */
LSSDEF void lss_smoothing_sigmas(const lss_cosmo *c, const double *zmean, int nbins, double r_mpch,
                                 double pixel_arcmin, double *out) {
    int i;
    double h = lss_cosmo_params(c)->h;
    for (i = 0; i < nbins; i++) {
        double z = zmean[i], chi = lss_cosmo_chi(c, z);
        double sr = r_mpch * h * (1 + z) / (2 * sqrt(2.0) * chi) / LSS__ARCMIN;
        double v = sr * sr - pixel_arcmin * pixel_arcmin / 12.0;
        out[i] = (r_mpch > 0 && v > 0) ? sqrt(v) : 0.0;
    }
}

/* shell spectrum on the grid: fills s->dcplx with G'_k (clipped Gaussian spectrum, real) of shell `sh`,
   s->dreal is scratch. Returns var(g) via *varg and the clipped fraction via *clipfrac. */
static int lss__shell_gauss(const lss_sim *s, int sh, double *dreal, fftw_complex *dcplx, double *varg,
                            double *clipfrac) {
    int M = s->M, Mh = M / 2 + 1, i, j;
    double dk = 1.0 / (M * s->pix_rad), omega = s->pix_rad * s->pix_rad, neg = 0, tot = 0, v = 0;
    const double *cl = s->cl + (size_t)sh * s->ell_n;
    for (i = 0; i < M; i++) {
        double kx = lss__fidx(i, M) * dk;
        for (j = 0; j < Mh; j++) {
            /* the mean mode of the grid (ell = 0) gets C at the table's first point, half the fundamental */
            double ky = j * dk, ell = 2 * LSS__PI * sqrt(kx * kx + ky * ky), c;
            c = lss__interp_loglog(s->ell, cl, s->ell_n, ell);
            dcplx[(size_t)i * Mh + j][0] = c / ((double)M * M * omega);
            dcplx[(size_t)i * Mh + j][1] = 0;
        }
    }
    fftw_execute_dft_c2r(s->d_c2r, dcplx, dreal); /* xi(r) */
    for (i = 0; i < M * M; i++) {
        if (!(dreal[i] > -1)) return lss_seterr(LSS_ERR_NUMERIC, "lognormal shell %d (z %g-%g): correlation %g <= -1",
                                                     sh, s->z_lo[sh], s->z_hi[sh], dreal[i]);
        dreal[i] = log1p(dreal[i]);
    }
    fftw_execute_dft_r2c(s->d_r2c, dreal, dcplx); /* G_k = sum_r xi_G(r) e^{-ikr} */
    for (i = 0; i < M; i++)
        for (j = 0; j < Mh; j++) {
            double g = dcplx[(size_t)i * Mh + j][0], wgt = (j == 0 || j == M / 2) ? 1 : 2;
            if (!isfinite(g)) return lss_seterr(LSS_ERR_NUMERIC, "lognormal shell %d: non-finite spectrum", sh);
            tot += wgt * fabs(g);
            if (g < 0) { neg += wgt * -g; g = 0; }
            dcplx[(size_t)i * Mh + j][0] = g;
            dcplx[(size_t)i * Mh + j][1] = 0;
            v += wgt * g;
        }
    *varg = v / ((double)M * M);
    *clipfrac = tot > 0 ? neg / tot : 0;
    return LSS_OK;
}

static void lss__gl3(double a, double b, double *x, double *w) {
    static const double gx[3] = {-0.7745966692414834, 0.0, 0.7745966692414834};
    static const double gw[3] = {0.5555555555555556, 0.8888888888888888, 0.5555555555555556};
    int k;
    for (k = 0; k < 3; k++) { x[k] = 0.5 * (a + b) + 0.5 * (b - a) * gx[k]; w[k] = 0.5 * (b - a) * gw[k]; }
}

/* int_{za}^{zb} f(z) n(z) dz with n piecewise linear: split at the table nodes, 3-point Gauss on each piece.
   f = NULL means 1; else F(z) of the cosmology (NLA). */
static double lss__nz_integral(const lss_nz *b, double za, double zb, const lss_cosmo *c) {
    double s = 0, lo = za;
    int i = 0;
    while (lo < zb) {
        double hi = zb, x[3], w[3];
        int k;
        while (i < b->n && b->z[i] <= lo) i++;
        if (i < b->n && b->z[i] < hi) hi = b->z[i];
        lss__gl3(lo, hi, x, w);
        for (k = 0; k < 3; k++) s += w[k] * lss_nz_eval(b, x[k]) * (c ? lss_cosmo_nla_f(c, x[k]) : 1.0);
        lo = hi;
    }
    return s;
}

static int lss__same_cosmo(const lss_params *a, const lss_params *b) {
    const double x[5] = {a->omega_m, a->sigma_8, a->omega_b, a->h, a->n_s}, y[5] = {b->omega_m, b->sigma_8, b->omega_b, b->h, b->n_s};
    int k;
    for (k = 0; k < 5; k++)
        if (!(fabs(x[k] - y[k]) <= 1e-12 * fabs(y[k]))) return 0;
    return a->transfer == b->transfer;
}

LSSDEF int lss_sim_set_cosmo(lss_sim *s, const lss_cosmo *c) {
    static const double gx[8] = {-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
                                 0.1834346424956498, 0.5255324099163290, 0.7966664774136267, 0.9602898564975363};
    static const double gw[8] = {0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
                                 0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763};
    int b, i, k, d, st, M, Mh, pass;
    if (!s || !c) return lss_seterr(LSS_ERR_ARG, "lss_sim_set_cosmo: NULL argument");
    M = s->M; Mh = M / 2 + 1;
    s->cp = *lss_cosmo_params(c);
    s->shells_other_cosmo = s->shells && !lss__same_cosmo(&s->cp, &s->shells->params);
    for (b = 0; b < s->nshell; b++) {
        s->chi_lo[b] = lss_cosmo_chi(c, s->z_lo[b]);
        s->chi_hi[b] = lss_cosmo_chi(c, s->z_hi[b]);
        if (!(s->chi_hi[b] > s->chi_lo[b]) || !isfinite(s->chi_hi[b]))
            return lss_seterr(LSS_ERR_NUMERIC, "shell %d: bad comoving distances %g-%g", b, s->chi_lo[b], s->chi_hi[b]);
    }
    /* weights */
    for (i = 0; i < s->nbins; i++) {
        s->w_tot[i] = 0;
        for (b = 0; b < s->nshell; b++) {
            double wl = 0, hw = 0.5 * (s->chi_hi[b] - s->chi_lo[b]), mid = 0.5 * (s->chi_hi[b] + s->chi_lo[b]);
            for (k = 0; k < 8; k++) wl += gw[k] * hw * lss_cl_lensing_kernel(c, &s->nz[i], mid + hw * gx[k]);
            s->w_wl[i * s->nshell + b] = wl;
            s->w_g[i * s->nshell + b] = lss__nz_integral(&s->nz[i], s->z_lo[b], s->z_hi[b], NULL);
            s->w_ia[i * s->nshell + b] = lss__nz_integral(&s->nz[i], s->z_lo[b], s->z_hi[b], c);
            s->w_tot[i] += s->w_g[i * s->nshell + b];
            if (!isfinite(wl) || !isfinite(s->w_ia[i * s->nshell + b]))
                return lss_seterr(LSS_ERR_NUMERIC, "projection weights of bin %d, shell %d are not finite", i + 1, b);
        }
        if (!(s->w_tot[i] > 0)) return lss_seterr(LSS_ERR_ARG, "bin %d has no galaxies inside the shells (z <= %g)",
                                                  i + 1, s->z_hi[s->nshell - 1]);
    }
    /* which shells are drawn (fixed at create: the count must not change) */
    d = 0;
    for (b = 0; b < s->nshell; b++) {
        int any = s->o.keep_empty_shells;
        for (i = 0; i < s->nbins && !any; i++)
            any = s->w_wl[i * s->nshell + b] != 0 || s->w_g[i * s->nshell + b] != 0 || s->w_ia[i * s->nshell + b] != 0;
        if (any) {
            if (s->draw && d < s->ndraw) s->draw[d] = b;
            d++;
        }
    }
    if (s->draw && d != s->ndraw)
        return lss_seterr(LSS_ERR_STATE, "lss_sim_set_cosmo: the set of shells with sources changed (%d, was %d)", d, s->ndraw);
    s->ndraw = d;
    if (!s->draw) return LSS_OK; /* first pass of create: sizes only */
    /* smoothing */
    lss_smoothing_sigmas(c, s->szmean, s->nbins, s->o.r_wl, s->o.pixel_arcmin, s->sig_wl);
    lss_smoothing_sigmas(c, s->szmean, s->nbins, s->o.r_gc, s->o.pixel_arcmin, s->sig_gc);
    s->hmax = 0;
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < s->nbins; i++) {
            /* the pixel kernel as section II B treats it: a Gaussian of variance d^2/12 added in quadrature */
            double sp = (pass ? s->sig_gc[i] : s->sig_wl[i]) / s->o.pixel_arcmin, sum = 0;
            if (!s->o.no_pixwin) sp = sqrt(sp * sp + 1.0 / 12.0);
            int hw = sp > 0 ? (int)(5 * sp) : 0;
            float *kk = s->kern + ((size_t)pass * s->nbins + i) * (2 * LSS__KMAX + 1);
            if (sp > 0 && hw < 1) hw = 1;
            if (hw > LSS__KMAX || (s->o.smooth_mode == LSS_SMOOTH_GRID && hw > (M - s->n) / 2))
                return lss_seterr(LSS_ERR_ARG, "smoothing sigma %g arcmin (%d pixels half-width) is too large for the "
                                  "grid (at most %d)", sp * s->o.pixel_arcmin, hw,
                                  (M - s->n) / 2 < LSS__KMAX ? (M - s->n) / 2 : LSS__KMAX);
            s->khw[pass * s->nbins + i] = hw;
            for (k = -hw; k <= hw; k++) sum += exp(-0.5 * k * k / (sp * sp));
            for (k = -hw; k <= hw; k++) kk[k + hw] = (float)(exp(-0.5 * k * k / (sp * sp)) / sum);
            if (hw > s->hmax) s->hmax = hw;
        }
    if (s->o.smooth_mode == LSS_SMOOTH_ZEROPAD) s->hmax = 0;
    if (s->n + 2 * s->hmax > s->region)
        return lss_seterr(LSS_ERR_STATE, "lss_sim_set_cosmo: smoothing wider than the simulator was created for");
    /* shell spectra */
    for (k = 0; k < s->ell_n; k++)
        for (b = 0; b < s->nshell; b++) s->cl[(size_t)b * s->ell_n + k] = 0;
    for (d = 0; d < s->ndraw; d++) {
        b = s->draw[d];
        for (k = 0; k < s->ell_n; k++) {
            double v = lss_cl_shell(c, s->chi_lo[b], s->chi_hi[b], s->ell[k]);
            if (!(v >= 0) || !isfinite(v))
                return lss_seterr(LSS_ERR_NUMERIC, "shell %d (z %g-%g): C_ell(%g) = %g", b, s->z_lo[b], s->z_hi[b], s->ell[k], v);
            s->cl[(size_t)b * s->ell_n + k] = v;
        }
    }
    s->clip_max = 0;
    s->clip_worst = -1;
    for (d = 0; d < s->ndraw; d++) {
        double varg, clip;
        float *a = s->amp + (size_t)d * M * Mh;
        if ((st = lss__shell_gauss(s, s->draw[d], s->dreal, s->dcplx, &varg, &clip)) != LSS_OK) return st;
        for (k = 0; k < M * Mh; k++) a[k] = (float)(sqrt(s->dcplx[k][0]) / M);
        s->hvar[d] = (float)(0.5 * varg);
        if (clip > s->clip_max) { s->clip_max = clip; s->clip_worst = s->draw[d]; }
    }
    if (s->clip_max > 0)
        lss_log(s->clip_max > 1e-3 ? 1 : 0, "lognormal shells: up to %.3g of the Gaussian power was negative and "
                "clipped (shell %d)", s->clip_max, s->clip_worst);
    return LSS_OK;
}

LSSDEF int lss_sim_create(const lss_cosmo *c, const lss_nz *bins, int nbins, const lss_sim_opts *o, lss_sim **out) {
    lss_sim *s;
    double *edges = NULL;
    int i, b, st, M, Mh, ne, hcap;
    if (out) *out = NULL;
    if (!c || !bins || !out) return lss_seterr(LSS_ERR_ARG, "lss_sim_create: NULL argument");
    if (nbins < 1 || nbins > LSS_SIM_MAX_BINS)
        return lss_seterr(LSS_ERR_ARG, "lss_sim_create: %d bins (need 1..%d)", nbins, LSS_SIM_MAX_BINS);
    s = (lss_sim *)LSS_MALLOC(sizeof *s);
    if (!s) return lss_seterr(LSS_ERR_NOMEM, "lss_sim_create: out of memory");
    memset(s, 0, sizeof *s);
    if (o) s->o = *o;
    if (s->o.nside == 0) s->o.nside = 64;
    if (s->o.pixel_arcmin == 0) s->o.pixel_arcmin = LSS_DEEPLSS_PIXEL_ARCMIN;
    if (s->o.pad == 0) s->o.pad = 2;
    if (s->o.nell == 0) s->o.nell = 96;
    if (s->o.r_wl == 0) s->o.r_wl = 4;
    if (s->o.r_gc == 0) s->o.r_gc = 8;
    st = LSS_OK;
    if (s->o.nside < 8 || s->o.nside > 4096 || s->o.nside % 2)
        st = lss_seterr(LSS_ERR_ARG, "field size %d pixels: need an even number in 8..4096", s->o.nside);
    else if (s->o.pad < 2 || s->o.pad > 8)
        st = lss_seterr(LSS_ERR_ARG, "padding factor %d: need 2..8", s->o.pad);
    else if ((double)s->o.nside * s->o.pad > 8192)
        st = lss_seterr(LSS_ERR_ARG, "generation grid %d x %d is too large (at most 8192)", s->o.nside * s->o.pad,
                        s->o.nside * s->o.pad);
    else if (!(s->o.pixel_arcmin > 0.01 && s->o.pixel_arcmin < 600))
        st = lss_seterr(LSS_ERR_ARG, "pixel size %g arcmin: need 0.01..600", s->o.pixel_arcmin);
    else if (s->o.nell < 8 || s->o.nell > 100000)
        st = lss_seterr(LSS_ERR_ARG, "C_ell table of %d points: need 8..100000", s->o.nell);
    else if (!isfinite(s->o.r_wl) || !isfinite(s->o.r_gc) || s->o.r_wl > 1000 || s->o.r_gc > 1000)
        st = lss_seterr(LSS_ERR_ARG, "smoothing scales %g, %g Mpc/h: need finite values <= 1000", s->o.r_wl, s->o.r_gc);
    else if (s->o.smooth_mode != LSS_SMOOTH_GRID && s->o.smooth_mode != LSS_SMOOTH_ZEROPAD)
        st = lss_seterr(LSS_ERR_ARG, "unknown smoothing mode %d", s->o.smooth_mode);
    if (st) { LSS_FREE(s); return st; }
    lss__zig_init(&s->zig);
    s->n = s->o.nside;
    s->M = M = s->o.nside * s->o.pad;
    Mh = M / 2 + 1;
    s->nbins = nbins;
    s->pix_rad = s->o.pixel_arcmin * LSS__ARCMIN;
    /* shells */
    ne = lss_shell_edges(&s->o.shells, NULL, 0);
    if (ne < 0) { LSS_FREE(s); return ne; }
    s->nshell = ne;
    edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(ne + 1));
    s->nz = (lss_nz *)LSS_MALLOC(sizeof(lss_nz) * (size_t)nbins);
    if (!edges || !s->nz) { LSS_FREE(edges); LSS_FREE(s->nz); LSS_FREE(s); return lss_seterr(LSS_ERR_NOMEM, "lss_sim_create: out of memory"); }
    memset(s->nz, 0, sizeof(lss_nz) * (size_t)nbins);
    lss_shell_edges(&s->o.shells, edges, ne + 1);
#define LSS__A(p, T, cnt) do { p = (T *)LSS_MALLOC(sizeof(T) * (size_t)(cnt)); if (!p) goto nomem; } while (0)
    for (i = 0; i < nbins; i++) {
        if (!bins[i].z || !bins[i].nz || bins[i].n < 2) { st = lss_seterr(LSS_ERR_ARG, "n(z) bin %d is empty", i + 1); goto fail; }
        for (b = 1; b < bins[i].n; b++)
            if (!(bins[i].z[b] > bins[i].z[b - 1])) { st = lss_seterr(LSS_ERR_FORMAT, "n(z) bin %d: z not increasing", i + 1); goto fail; }
        LSS__A(s->nz[i].z, double, bins[i].n);
        LSS__A(s->nz[i].nz, double, bins[i].n);
        memcpy(s->nz[i].z, bins[i].z, sizeof(double) * (size_t)bins[i].n);
        memcpy(s->nz[i].nz, bins[i].nz, sizeof(double) * (size_t)bins[i].n);
        s->nz[i].n = bins[i].n;
        s->nz[i].zmean = bins[i].zmean;
    }
    LSS__A(s->zmean, double, nbins);
    LSS__A(s->szmean, double, nbins);
    for (i = 0; i < nbins; i++) {
        s->zmean[i] = bins[i].zmean;
        s->szmean[i] = o && o->smooth_zmean ? o->smooth_zmean[i] : bins[i].zmean;
        if (!(s->szmean[i] > 0 && s->szmean[i] < 20)) {
            st = lss_seterr(LSS_ERR_ARG, "smoothing redshift of bin %d is %g (need 0 < z < 20)", i + 1, s->szmean[i]);
            goto fail;
        }
    }
    s->o.smooth_zmean = NULL;
    LSS__A(s->z_lo, double, ne); LSS__A(s->z_hi, double, ne); LSS__A(s->chi_lo, double, ne); LSS__A(s->chi_hi, double, ne);
    for (b = 0; b < ne; b++) { s->z_lo[b] = edges[b]; s->z_hi[b] = edges[b + 1]; }
    LSS_FREE(edges); edges = NULL;
    LSS__A(s->w_wl, double, nbins * ne); LSS__A(s->w_ia, double, nbins * ne); LSS__A(s->w_g, double, nbins * ne);
    LSS__A(s->w_tot, double, nbins);
    LSS__A(s->sig_wl, double, nbins); LSS__A(s->sig_gc, double, nbins);
    LSS__A(s->khw, int, 2 * nbins);
    LSS__A(s->kern, float, 2 * nbins * (2 * LSS__KMAX + 1));
    s->ell_n = s->o.nell;
    LSS__A(s->ell, double, s->ell_n);
    LSS__A(s->cl, double, (size_t)ne * s->ell_n);
    {
        double l0 = 0.5 * 2 * LSS__PI / (M * s->pix_rad), l1 = 1.05 * sqrt(2.0) * LSS__PI / s->pix_rad;
        for (i = 0; i < s->ell_n; i++) s->ell[i] = l0 * pow(l1 / l0, (double)i / (s->ell_n - 1));
    }
    /* first pass: weights and the number of drawn shells */
    if ((st = lss_sim_set_cosmo(s, c)) != LSS_OK) goto fail;
    if (s->ndraw < 1) { st = lss_seterr(LSS_ERR_ARG, "no shell overlaps the sources"); goto fail; }
    LSS__A(s->draw, int, s->ndraw);
    LSS__A(s->hvar, float, s->ndraw);
    s->amp = (float *)fftwf_malloc(sizeof(float) * (size_t)s->ndraw * M * Mh);
    s->dreal = (double *)fftw_malloc(sizeof(double) * (size_t)M * M);
    s->dcplx = (fftw_complex *)fftw_malloc(sizeof(fftw_complex) * (size_t)M * Mh);
    if (!s->amp || !s->dreal || !s->dcplx) goto nomem;
    hcap = (M - s->n) / 2 < LSS__KMAX ? (M - s->n) / 2 : LSS__KMAX;
    s->region = s->o.smooth_mode == LSS_SMOOTH_GRID ? s->n + 2 * hcap : s->n;
    {
        /* plans (FFTW planning is not thread-safe): made once, with scratch arrays of the same alignment */
        fftwf_complex *fc = (fftwf_complex *)fftwf_malloc(sizeof(fftwf_complex) * (size_t)M * Mh);
        float *fr = (float *)fftwf_malloc(sizeof(float) * (size_t)M * M);
        int ok;
LSS__MOMP(omp critical(lss_fftw_plan))
        {
            if (fc && fr) {
                s->d_c2r = fftw_plan_dft_c2r_2d(M, M, s->dcplx, s->dreal, FFTW_ESTIMATE);
                s->d_r2c = fftw_plan_dft_r2c_2d(M, M, s->dreal, s->dcplx, FFTW_ESTIMATE);
                s->g_c2r = fftwf_plan_dft_c2r_2d(M, M, fc, fr, FFTW_ESTIMATE);
                s->f_r2c = fftwf_plan_dft_r2c_2d(s->n, s->n, fr, fc, FFTW_ESTIMATE);
                s->f_c2r = fftwf_plan_dft_c2r_2d(s->n, s->n, fc, fr, FFTW_ESTIMATE);
            }
        }
        ok = fc && fr && s->d_c2r && s->d_r2c && s->g_c2r && s->f_r2c && s->f_c2r;
        if (fc) fftwf_free(fc);
        if (fr) fftwf_free(fr);
        if (!ok) { st = lss_seterr(LSS_ERR_NOMEM, "lss_sim_create: FFTW plans could not be made"); goto fail; }
    }
    /* second pass: the drawn shells, smoothing, spectra */
    if ((st = lss_sim_set_cosmo(s, c)) != LSS_OK) goto fail;
    *out = s;
    return LSS_OK;
nomem:
    st = lss_seterr(LSS_ERR_NOMEM, "lss_sim_create: out of memory");
fail:
    LSS_FREE(edges);
    lss_sim_free(s);
    return st;
#undef LSS__A
}

LSSDEF void lss_sim_work_free(lss_sim_work *w) {
    if (!w) return;
    if (w->gc) fftwf_free(w->gc);
    if (w->gr) fftwf_free(w->gr);
    if (w->fc) fftwf_free(w->fc);
    if (w->fr) fftwf_free(w->fr);
    if (w->fr2) fftwf_free(w->fr2);
    LSS_FREE(w->acc); LSS_FREE(w->tmp); LSS_FREE(w->noise); LSS_FREE(w->counts);
    LSS_FREE(w);
}

LSSDEF int lss_sim_work_create(const lss_sim *s, lss_sim_work **out) {
    lss_sim_work *w;
    size_t M, Mh, n, R;
    if (out) *out = NULL;
    if (!s || !out) return lss_seterr(LSS_ERR_ARG, "lss_sim_work_create: NULL argument");
    M = (size_t)s->M; Mh = M / 2 + 1; n = (size_t)s->n; R = (size_t)s->region;
    w = (lss_sim_work *)LSS_MALLOC(sizeof *w);
    if (!w) return lss_seterr(LSS_ERR_NOMEM, "lss_sim_work_create: out of memory");
    memset(w, 0, sizeof *w);
    w->gc = (fftwf_complex *)fftwf_malloc(sizeof(fftwf_complex) * M * Mh);
    w->gr = (float *)fftwf_malloc(sizeof(float) * M * M);
    w->fc = (fftwf_complex *)fftwf_malloc(sizeof(fftwf_complex) * n * (n / 2 + 1));
    w->fr = (float *)fftwf_malloc(sizeof(float) * n * n);
    w->fr2 = (float *)fftwf_malloc(sizeof(float) * n * n);
    w->acc = (float *)LSS_MALLOC(sizeof(float) * 3 * (size_t)s->nbins * R * R);
    w->tmp = (float *)LSS_MALLOC(sizeof(float) * R * R);
    w->noise = (float *)LSS_MALLOC(sizeof(float) * 2 * M * Mh);
    w->counts = (float *)LSS_MALLOC(sizeof(float) * (size_t)s->nbins * n * n);
    if (!w->gc || !w->gr || !w->fc || !w->fr || !w->fr2 || !w->acc || !w->tmp || !w->noise || !w->counts) {
        lss_sim_work_free(w);
        return lss_seterr(LSS_ERR_NOMEM, "lss_sim_work_create: out of memory");
    }
    *out = w;
    return LSS_OK;
}

LSSDEF size_t lss_sim_field_size(const lss_sim *s) { return s ? (size_t)3 * s->nbins * s->n * s->n : 0; }
LSSDEF size_t lss_sim_obs_size(const lss_sim *s) { return s ? (size_t)2 * s->nbins * s->n * s->n : 0; }
LSSDEF const float *lss_sim_work_counts(const lss_sim_work *w) { return w ? w->counts : NULL; }

LSSDEF void lss_sim_get_info(const lss_sim *s, lss_sim_info *f) {
    memset(f, 0, sizeof *f);
    if (!s) return;
    f->nside = s->n; f->ngrid = s->M; f->nbins = s->nbins; f->nshell = s->nshell; f->nshell_drawn = s->ndraw;
    f->pixel_arcmin = s->o.pixel_arcmin;
    f->z_lo = s->z_lo; f->z_hi = s->z_hi; f->chi_lo = s->chi_lo; f->chi_hi = s->chi_hi;
    f->w_wl = s->w_wl; f->w_ia = s->w_ia; f->w_g = s->w_g;
    f->sigma_wl_arcmin = s->sig_wl; f->sigma_gc_arcmin = s->sig_gc; f->zmean = s->zmean;
    f->clip_max = s->clip_max; f->clip_worst_shell = s->clip_worst;
    f->ell_n = s->ell_n; f->ell = s->ell; f->cl = s->cl;
}

LSSDEF int lss_sim_field(const lss_sim *s, lss_sim_work *w, uint64_t seed, uint64_t index, float *out) {
    int M, Mh, n, h, R, off, d, i, y, x, nb;
    size_t RR, nn;
    if (!s || !w || !out) return lss_seterr(LSS_ERR_ARG, "lss_sim_field: NULL argument");
    if (index >= ((uint64_t)1 << 43)) return lss_seterr(LSS_ERR_ARG, "lss_sim_field: index %llu too large (< 2^43)",
                                                       (unsigned long long)index);
    M = s->M; Mh = M / 2 + 1; n = s->n; nb = s->nbins;
    h = s->hmax; R = n + 2 * h; RR = (size_t)R * R; nn = (size_t)n * n;
    off = (M - n) / 2 - h;
    memset(w->acc, 0, sizeof(float) * 3 * (size_t)nb * RR);
    if (s->shells && s->shells_other_cosmo)
        return lss_seterr(LSS_ERR_ARG, "field %llu: the attached N-body shells were made for Omega_m = %g, sigma_8 = %g, not "
                          "the simulator's Omega_m = %g, sigma_8 = %g", (unsigned long long)index, s->shells->params.omega_m,
                          s->shells->params.sigma_8, s->cp.omega_m, s->cp.sigma_8);
    for (d = 0; d < s->ndraw; d++) {
        int b = s->draw[d], i0, j;
        const float *a = s->amp + (size_t)d * M * Mh;
        float hv = s->hvar[d], wl[LSS_SIM_MAX_BINS], wi[LSS_SIM_MAX_BINS], wg[LSS_SIM_MAX_BINS];
        for (i = 0; i < nb; i++) {
            wl[i] = (float)s->w_wl[i * s->nshell + b];
            wi[i] = (float)s->w_ia[i * s->nshell + b];
            wg[i] = (float)s->w_g[i * s->nshell + b];
        }
        if (s->shells) {
            /* N-body shell: view v of the set (cone, then flips/transpose) of the central R x R region */
            const lss_shellset *sh = s->shells;
            int S = sh->side, o0 = (S - R) / 2, v = (int)(index % (8 * (uint64_t)sh->ncone)), t = v / sh->ncone;
            const float *src = sh->delta + ((size_t)(v % sh->ncone) * sh->nshell + (size_t)s->shell_of[b]) * S * S;
            for (y = 0; y < R; y++)
                for (x = 0; x < R; x++) {
                    int yy = (t & 1) ? R - 1 - y : y, xx = (t & 2) ? R - 1 - x : x, q;
                    if (t & 4) { q = yy; yy = xx; xx = q; }
                    w->tmp[(size_t)y * R + x] = src[(size_t)(o0 + yy) * S + o0 + xx];
                }
            goto project;
        }
        lss__normals(&s->zig, seed, lss_stream(LSS_STREAM_SHELL, index, (uint32_t)b), w->noise, 2 * (int64_t)M * Mh);
        for (i0 = 0; i0 < M; i0++)
            for (j = 0; j < Mh; j++) {
                size_t k = (size_t)i0 * Mh + j;
                w->gc[k][0] = a[k] * w->noise[2 * k] * 0.70710678f;
                w->gc[k][1] = a[k] * w->noise[2 * k + 1] * 0.70710678f;
            }
        /* Hermitian symmetry on the columns j = 0 and j = M/2 */
        for (j = 0; j < Mh; j += M / 2) {
            for (i0 = M / 2 + 1; i0 < M; i0++) {
                w->gc[(size_t)i0 * Mh + j][0] = w->gc[(size_t)(M - i0) * Mh + j][0];
                w->gc[(size_t)i0 * Mh + j][1] = -w->gc[(size_t)(M - i0) * Mh + j][1];
            }
            for (i0 = 0; i0 <= M / 2; i0 += M / 2) {
                size_t k = (size_t)i0 * Mh + j;
                w->gc[k][0] = a[k] * w->noise[2 * k];
                w->gc[k][1] = 0;
            }
        }
        fftwf_execute_dft_c2r(s->g_c2r, w->gc, w->gr);
        for (y = 0; y < R; y++) {
            const float *g = w->gr + (size_t)(off + y) * M + off;
            float *t = w->tmp + (size_t)y * R;
            for (x = 0; x < R; x++) t[x] = expf(g[x] - hv) - 1.0f;
        }
    project:
        for (i = 0; i < nb; i++) {
            float *ak = w->acc + (size_t)i * RR, *ai = w->acc + (size_t)(nb + i) * RR, *ag = w->acc + (size_t)(2 * nb + i) * RR;
            size_t p;
            if (wl[i] != 0) for (p = 0; p < RR; p++) ak[p] += wl[i] * w->tmp[p];
            if (wi[i] != 0) for (p = 0; p < RR; p++) ai[p] += wi[i] * w->tmp[p];
            if (wg[i] != 0) for (p = 0; p < RR; p++) ag[p] += wg[i] * w->tmp[p];
        }
    }
    /* smoothing (grid mode: lss_conv_sep on the region of half-width hw around the output) and cut-out */
    for (i = 0; i < 3 * nb; i++) {
        int bin = i % nb, probe = i < 2 * nb ? 0 : 1, hw = s->khw[probe * nb + bin];
        float *dst = out + (size_t)i * nn;
        const float *src = w->acc + (size_t)i * RR;
        if (s->o.smooth_mode == LSS_SMOOTH_GRID && hw > 0)
            lss_conv_sep(src + (size_t)(h - hw) * R + (h - hw), R, n, n, s->kern + ((size_t)probe * nb + bin) * (2 * LSS__KMAX + 1),
                         hw, w->tmp, dst);
        else
            for (y = 0; y < n; y++) memcpy(dst + (size_t)y * n, src + (size_t)(y + h) * R + h, sizeof(float) * (size_t)n);
    }
    /* eqs. 6-7 */
    for (i = 0; i < 3 * nb; i++) {
        float *m = out + (size_t)i * nn;
        double mean = 0;
        size_t p;
        for (p = 0; p < nn; p++) mean += m[p];
        mean /= (double)nn;
        if (i < 2 * nb) {
            for (p = 0; p < nn; p++) m[p] = (float)(m[p] - mean);
        } else {
            double tot = s->w_tot[i - 2 * nb], den = tot + mean;
            if (!(den > 0)) return lss_seterr(LSS_ERR_NUMERIC, "field %llu: empty galaxy density in bin %d",
                                               (unsigned long long)index, i - 2 * nb + 1);
            for (p = 0; p < nn; p++) {
                float v = (float)((tot + m[p]) / den - 1.0);
                m[p] = v < -1.0f ? -1.0f : v;
            }
        }
    }
    if (s->o.smooth_mode == LSS_SMOOTH_ZEROPAD)
        for (i = 0; i < 3 * nb; i++) {
            int bin = i % nb, probe = i < 2 * nb ? 0 : 1;
            double sp = (probe ? s->sig_gc[bin] : s->sig_wl[bin]) / s->o.pixel_arcmin;
            if (!s->o.no_pixwin) sp = sqrt(sp * sp + 1.0 / 12.0);
            if (sp > 0) lss_smooth_zeropad(out + (size_t)i * nn, n, n, sp, w->tmp);
        }
    return LSS_OK;
}

LSSDEF int lss_sim_fields(const lss_sim *s, uint64_t seed, uint64_t first, int64_t n, float *out) {
    int st = LSS_OK;
    size_t fs;
    if (!s || (!out && n > 0) || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_sim_fields: bad arguments");
    fs = lss_sim_field_size(s);
LSS__MOMP(omp parallel)
    {
        lss_sim_work *w = NULL;
        int64_t k;
        int mine = lss_sim_work_create(s, &w);
        if (mine != LSS_OK) {
LSS__MOMP(omp critical(lss_sim_fields_err))
            st = mine;
        }
LSS__MOMP(omp for schedule(dynamic, 1))
        for (k = 0; k < n; k++) {
            int r;
            if (!w) continue;
            r = lss_sim_field(s, w, seed, first + (uint64_t)k, out + (size_t)k * fs);
            if (r != LSS_OK) {
LSS__MOMP(omp critical(lss_sim_fields_err))
                st = r;
            }
        }
        lss_sim_work_free(w);
    }
    return st;
}

/* ---------------------------------------------------------------- observation */
LSSDEF double lss_stochastic_corr(double r_g) {
    double a = pow(1 - r_g, 2.0 / 3.0);
    return a == 0 ? 1.0 : sin(a * LSS__PI) / (a * LSS__PI);
}

LSSDEF int lss_sim_stochastic(const lss_sim *s, lss_sim_work *w, float *map, double r_g, uint64_t seed,
                              uint64_t index, int bin) {
    int n, nh, i, j;
    float a;
    size_t k, nn;
    lss_rng r;
    if (!s || !w || !map) return lss_seterr(LSS_ERR_ARG, "lss_sim_stochastic: NULL argument");
    if (!(r_g >= 0 && r_g <= 1)) return lss_seterr(LSS_ERR_RANGE, "stochasticity r_g = %g: need 0..1", r_g);
    if (r_g == 1) return LSS_OK;
    n = s->n; nh = n / 2 + 1; nn = (size_t)n * n;
    a = (float)(pow(1 - r_g, 2.0 / 3.0) * LSS__PI);
    memcpy(w->fr, map, sizeof(float) * nn);
    fftwf_execute_dft_r2c(s->f_r2c, w->fr, w->fc);
    lss_rng_init(&r, seed, lss_stream(LSS_STREAM_PHASE, index, (uint32_t)bin));
    for (i = 0; i < n; i++)
        for (j = 0; j < nh; j++) {
            float u = lss_rng_uniformf(&r), ph, c, sn, re, im;
            k = (size_t)i * nh + j;
            if ((j == 0 || j == n / 2) && (i == 0 || i == n / 2)) continue; /* real modes stay real */
            if ((j == 0 || j == n / 2) && i > n / 2) continue;              /* set from their partners below */
            ph = a * (2.0f * u - 1.0f);
            c = cosf(ph); sn = sinf(ph);
            re = w->fc[k][0]; im = w->fc[k][1];
            w->fc[k][0] = re * c - im * sn;
            w->fc[k][1] = re * sn + im * c;
        }
    for (j = 0; j < nh; j += n / 2)
        for (i = n / 2 + 1; i < n; i++) {
            w->fc[(size_t)i * nh + j][0] = w->fc[(size_t)(n - i) * nh + j][0];
            w->fc[(size_t)i * nh + j][1] = -w->fc[(size_t)(n - i) * nh + j][1];
        }
    fftwf_execute_dft_c2r(s->f_c2r, w->fc, w->fr);
    for (k = 0; k < nn; k++) map[k] = w->fr[k] / (float)nn;
    return LSS_OK;
}

LSSDEF double lss_poisson_anscombe(lss_rng *r, double lam, int mode) {
    double z, x;
    if (!(lam > 0) || !isfinite(lam)) return 0;
    if (mode == LSS_POISSON_ANSCOMBE_PAPER) {
        z = 2 * sqrt(lam + 0.375) - 0.25 / sqrt(lam) + lss_rng_normal(r);
        if (z < 1) return 0;
        x = 0.25 * z * z - 0.125 + 0.25 * sqrt(1.5) / z - 1.375 / (z * z) + 0.625 * sqrt(1.5) / (z * z * z);
    } else {
        z = 2 * sqrt(lam + 0.375) + lss_rng_normal(r);
        x = 0.25 * (z * z - 1) - 0.375;
    }
    return floor((x > 0 ? x : 0) + 0.5);
}

LSSDEF int64_t lss_clip_rates(float *lam, int64_t n, double max_rate) {
    double tot = 0, totc = 0, f;
    int64_t i, nc = 0;
    if (!lam || n <= 0) return 0;
    for (i = 0; i < n; i++) {
        double v = lam[i], c = v < 0 ? 0 : (v > max_rate ? max_rate : v);
        if (!(v == v)) c = 0;
        tot += v == v ? v : 0;
        totc += c;
        if (c != v) nc++;
        lam[i] = (float)c;
    }
    if (nc == 0) return 0;
    f = (tot > 0 && totc > 0) ? tot / totc : 0;
    for (i = 0; i < n; i++) {
        double v = lam[i] * f;
        lam[i] = (float)(v > max_rate ? max_rate : v);
    }
    return nc;
}

LSSDEF void lss_sim_bin_amplitudes(const lss_sim *s, const lss_params *p, double *a_ia, double *b, double *b2) {
    int i;
    for (i = 0; s && p && i < s->nbins; i++) {
        if (a_ia) a_ia[i] = lss_params_a_ia_bin(p, &s->nz[i]);
        if (b) b[i] = lss_params_b_bin(p, &s->nz[i]);
        if (b2) b2[i] = lss_params_b2_bin(p, &s->nz[i]);
    }
}

LSSDEF double lss_kappa_net_scale(double sigma_e, double ngal_arcmin2, double pixel_arcmin) {
    double npix = ngal_arcmin2 * pixel_arcmin * pixel_arcmin, sp = sigma_e / sqrt(npix);
    return 1.0 / sqrt(LSS_DEEPLSS_KAPPA_SIG * LSS_DEEPLSS_KAPPA_SIG + sp * sp);
}

LSSDEF void lss_scale_for_network(float *maps, int nbins, int64_t npix, double kappa_scale) {
    int64_t i, nk = (int64_t)nbins * npix;
    for (i = 0; i < 2 * nk; i++) {
        float v = maps[i];
        if (!isfinite(v)) v = 0;
        maps[i] = i < nk ? (float)(v * kappa_scale) : v;
    }
}

LSSDEF int lss_sim_observe(const lss_sim *s, lss_sim_work *w, const float *field, const lss_params *p,
                           const lss_noise_opts *o, uint64_t seed, uint64_t index, float *out) {
    lss_noise_opts no;
    double aia[LSS_SIM_MAX_BINS], bb[LSS_SIM_MAX_BINS], bb2[LSS_SIM_MAX_BINS], nbar;
    int i, st, nb;
    size_t nn, k;
    if (!s || !w || !field || !p || !out) return lss_seterr(LSS_ERR_ARG, "lss_sim_observe: NULL argument");
    if ((st = lss_params_check(p)) != LSS_OK) return st;
    if (index >= ((uint64_t)1 << 43)) return lss_seterr(LSS_ERR_ARG, "lss_sim_observe: index too large (< 2^43)");
    memset(&no, 0, sizeof no);
    if (o) no = *o;
    if (no.sigma_e == 0) no.sigma_e = LSS_DEEPLSS_SIGMA_E;
    if (no.ngal_arcmin2 == 0) no.ngal_arcmin2 = LSS_DEEPLSS_NGAL_ARCMIN2;
    if (no.max_rate == 0) no.max_rate = 1e5;
    if (!(no.sigma_e > 0) || !(no.ngal_arcmin2 > 0) || !(no.max_rate > 0) || !isfinite(no.sigma_e) ||
        !isfinite(no.ngal_arcmin2) || no.poisson < 0 || no.poisson > 3 || no.bias < 0 || no.bias > 2 ||
        no.shape_noise < 0 || no.shape_noise > 1)
        return lss_seterr(LSS_ERR_ARG, "noise options: need positive sigma_e, galaxy density and max_rate and known "
                          "modes (sigma_e %g, n_gal %g, max_rate %g, poisson %d, bias %d, shape noise %d)", no.sigma_e,
                          no.ngal_arcmin2, no.max_rate, no.poisson, no.bias, no.shape_noise);
    nb = s->nbins; nn = (size_t)s->n * s->n;
    nbar = no.ngal_arcmin2 * s->o.pixel_arcmin * s->o.pixel_arcmin;
    lss_sim_bin_amplitudes(s, p, aia, bb, bb2);
    for (i = 0; i < nb; i++) {
        const float *kap = field + (size_t)i * nn, *kia = field + (size_t)(nb + i) * nn, *del = field + (size_t)(2 * nb + i) * nn;
        float *ko = out + (size_t)i * nn, *go = out + (size_t)(nb + i) * nn, *lam = w->fr2;
        float fa = (float)aia[i], fb = (float)bb[i], fb2 = (float)bb2[i];
        for (k = 0; k < nn; k++) ko[k] = kap[k] + fa * kia[k];
        memcpy(go, del, sizeof(float) * nn);
        if ((st = lss_sim_stochastic(s, w, go, p->r_g, seed, index, i)) != LSS_OK) return st;
        for (k = 0; k < nn; k++) {
            float d = go[k], v = fb * d;
            if (no.bias == LSS_BIAS_NONLINEAR) v += fb2 * d * d;
            else if (no.bias == LSS_BIAS_NONLINEAR_CODE) v += 0.5f * fb2 * (d < 0 ? -d * d : d * d);
            go[k] = v;
        }
        if (no.no_noise) continue;
        for (k = 0; k < nn; k++) lam[k] = (float)(nbar * (1.0 + go[k]));
        lss_clip_rates(lam, (int64_t)nn, no.max_rate);
        {
            lss_rng r;
            float *cnt = w->counts + (size_t)i * nn, *eps = w->fr;
            lss_rng_init(&r, seed, lss_stream(LSS_STREAM_POISSON, index, (uint32_t)i));
            for (k = 0; k < nn; k++) {
                double c = no.poisson == LSS_POISSON_EXACT     ? (double)lss_rng_poisson(&r, lam[k])
                           : no.poisson == LSS_POISSON_INVERSE ? (double)lss_rng_poisson_inv(&r, lam[k])
                                                               : lss_poisson_anscombe(&r, lam[k], no.poisson);
                if (c < 0) return lss_seterr(LSS_ERR_NUMERIC, "Poisson draw failed for mean %g", (double)lam[k]);
                cnt[k] = (float)c;
            }
            lss__normals(&s->zig, seed, lss_stream(LSS_STREAM_SHAPE, index, (uint32_t)i), eps, (int64_t)nn);
            for (k = 0; k < nn; k++) {
                double ng = no.shape_noise == LSS_SHAPE_NOISE_CODE ? cnt[k] + 1.0 : (cnt[k] > 1 ? cnt[k] : 1.0);
                ko[k] = (float)(ko[k] + no.sigma_e / sqrt(ng) * eps[k]);
                go[k] = (float)(cnt[k] / nbar - 1.0);
            }
        }
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- mosaics */
LSSDEF int lss_mosaic(const float *const *fields, int grid, int nchan, int n, uint64_t seed, uint64_t index,
                      float *out) {
    int perm[4096], f, c, y, x, nf, W;
    lss_rng r;
    if (!fields || !out || grid < 1 || grid > 64 || nchan < 1 || n < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_mosaic: bad arguments (grid %d, channels %d, size %d)", grid, nchan, n);
    nf = grid * grid; W = grid * n;
    for (f = 0; f < nf; f++) {
        if (!fields[f]) return lss_seterr(LSS_ERR_ARG, "lss_mosaic: field %d is NULL", f);
        perm[f] = f;
    }
    lss_rng_init(&r, seed, lss_stream(LSS_STREAM_MOSAIC, index, (uint32_t)0));
    for (f = nf - 1; f > 0; f--) {
        int j = (int)lss_rng_below(&r, (uint32_t)(f + 1)), t = perm[f];
        perm[f] = perm[j]; perm[j] = t;
    }
    for (f = 0; f < nf; f++) {
        uint32_t fl = lss_rng_u32(&r);
        int slot = perm[f], sy = slot / grid, sx = slot % grid, fy = fl & 1, fx = (fl >> 1) & 1;
        for (c = 0; c < nchan; c++) {
            const float *src = fields[f] + (size_t)c * n * n;
            float *dst = out + (size_t)c * W * W + (size_t)sy * n * W + (size_t)sx * n;
            for (y = 0; y < n; y++) {
                const float *row = src + (size_t)(fy ? n - 1 - y : y) * n;
                float *o = dst + (size_t)y * W;
                for (x = 0; x < n; x++) o[x] = row[fx ? n - 1 - x : x];
            }
        }
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- power spectra */
struct lss_ps {
    int ny, nx, nxh, nchan, nbins;
    double pix_rad, norm; /* norm = Omega_pix / N_pix */
    double *edges, *ell;
    int64_t *nmodes;
    int *bin;             /* [ny][nxh] bin of each stored mode (-1: none) */
    double *wgt;          /* [ny][nxh] 1 or 2 (modes of the full plane it stands for) */
    double *wsum;         /* [nbins] */
    float *in;
    fftwf_complex *X;     /* [nchan][ny][nxh] */
    fftwf_plan plan;
};
/* (the lss_ps functions, lss_ps_edges and the binning rule lss__ps_bin_of are in the STATISTICS
   implementation below) */

LSSDEF int lss_sim_expected_ps(const lss_sim *s, const lss_params *p, const lss_cosmo *limber, const lss_ps *ps,
                               double *out) {
    int M, Mh, n, nb, nch, d, c, pr, np, i, j, pad, st = LSS_OK, nl = 400, ntp = 0;
    size_t MM, Mc;
    double *Ps = NULL, *kw = NULL, *dreal = NULL, *Q = NULL, *E = NULL, *u = NULL, aia[LSS_SIM_MAX_BINS],
           bb[LSS_SIM_MAX_BINS], cs, *lt = NULL, *tomo = NULL;
    fftw_complex *dc = NULL;
    if (!s || !p || !ps || !out) return lss_seterr(LSS_ERR_ARG, "lss_sim_expected_ps: NULL argument");
    if (ps->ny != s->n || ps->nx != s->n || ps->nchan != 2 * s->nbins || fabs(ps->pix_rad / s->pix_rad - 1) > 1e-9)
        return lss_seterr(LSS_ERR_SHAPE, "lss_sim_expected_ps: the estimator must be for %d channels of %d x %d maps of "
                          "%g arcmin", 2 * s->nbins, s->n, s->n, s->o.pixel_arcmin);
    if (s->o.smooth_mode != LSS_SMOOTH_GRID)
        return lss_seterr(LSS_ERR_UNSUPPORTED, "lss_sim_expected_ps: only for smoothing on the grid (edges of the "
                          "zero-padded smoothing are not modelled)");
    if (!(p->r_g >= 0 && p->r_g <= 1)) return lss_seterr(LSS_ERR_RANGE, "r_g = %g outside [0, 1]", p->r_g);
    M = s->M; Mh = M / 2 + 1; n = s->n; nb = s->nbins; nch = 2 * nb; pad = s->o.pad;
    MM = (size_t)M * M; Mc = (size_t)M * Mh;
    Ps = (double *)LSS_MALLOC(sizeof(double) * Mc * (size_t)(limber ? 1 : s->ndraw));
    kw = (double *)LSS_MALLOC(sizeof(double) * (size_t)2 * nb * M);
    u = (double *)LSS_MALLOC(sizeof(double) * (size_t)nch * s->ndraw);
    Q = (double *)LSS_MALLOC(sizeof(double) * Mc);
    E = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * (n / 2 + 1));
    dreal = (double *)fftw_malloc(sizeof(double) * MM);
    dc = (fftw_complex *)fftw_malloc(sizeof(fftw_complex) * Mc);
    if (!Ps || !kw || !u || !Q || !E || !dreal || !dc) { st = lss_seterr(LSS_ERR_NOMEM, "lss_sim_expected_ps: out of memory"); goto done; }
    if (limber) {
        /* the continuous Limber spectra of the theory on a dense log-ell table */
        ntp = lss_cl_npairs(nb);
        lt = (double *)LSS_MALLOC(sizeof(double) * (size_t)nl);
        tomo = (double *)LSS_MALLOC(sizeof(double) * (size_t)nl * ntp);
        if (!lt || !tomo) { st = lss_seterr(LSS_ERR_NOMEM, "lss_sim_expected_ps: out of memory"); goto done; }
        for (i = 0; i < nl; i++) lt[i] = s->ell[0] * pow(s->ell[s->ell_n - 1] / s->ell[0], (double)i / (nl - 1));
        if ((st = lss_cl_tomo(limber, s->nz, nb, lt, nl, tomo)) != LSS_OK) goto done;
    }
    /* exact spectra of the drawn lognormal shells on the grid: DFT of expm1(xi_G') */
    for (d = 0; d < s->ndraw && !limber; d++) {
        double varg, clip;
        size_t k;
        if ((st = lss__shell_gauss(s, s->draw[d], dreal, dc, &varg, &clip)) != LSS_OK) goto done;
        fftw_execute_dft_c2r(s->d_c2r, dc, dreal);
        for (k = 0; k < MM; k++) dreal[k] = expm1(dreal[k] / (double)MM);
        fftw_execute_dft_r2c(s->d_r2c, dreal, dc);
        for (k = 0; k < Mc; k++) Ps[(size_t)d * Mc + k] = dc[k][0];
    }
    /* 1-D DFTs of the smoothing kernels on the grid (real: symmetric kernels) */
    for (pr = 0; pr < 2; pr++)
        for (i = 0; i < nb; i++) {
            int hw = s->khw[pr * nb + i], f, t;
            const float *kk = s->kern + ((size_t)pr * nb + i) * (2 * LSS__KMAX + 1);
            for (f = 0; f < M; f++) {
                double a = hw > 0 ? 0 : 1;
                for (t = -hw; t <= hw && hw > 0; t++) a += kk[t + hw] * cos(2 * LSS__PI * f * t / M);
                kw[((size_t)pr * nb + i) * M + f] = a;
            }
        }
    lss_sim_bin_amplitudes(s, p, aia, bb, NULL);
    for (c = 0; c < nch; c++)
        for (d = 0; d < s->ndraw; d++) {
            int b = s->draw[d], bin = c % nb;
            u[(size_t)c * s->ndraw + d] = c < nb ? s->w_wl[bin * s->nshell + b] + aia[bin] * s->w_ia[bin * s->nshell + b]
                                                 : bb[bin] * s->w_g[bin * s->nshell + b] / s->w_tot[bin];
        }
    cs = lss_stochastic_corr(p->r_g);
    np = lss_ps_npairs(ps, 1);
    for (pr = 0; pr < np; pr++) {
        int ca, cb, qy, qx, nh = n / 2 + 1;
        const double *ka, *kb;
        double fac;
        lss_ps_pair(ps, 1, pr, &ca, &cb);
        ka = kw + ((size_t)(ca < nb ? 0 : 1) * nb + ca % nb) * M;
        kb = kw + ((size_t)(cb < nb ? 0 : 1) * nb + cb % nb) * M;
        if (limber) {
            /* theory pair: kk_i_j (i <= j), kd_i_j, dd_i_j (i <= j) */
            char want[32], nm[32];
            int t, tp = -1, bi = ca % nb, bj = cb % nb;
            double dk = 1.0 / (M * s->pix_rad), omega = s->pix_rad * s->pix_rad, l0 = log(lt[0]),
                   dl = (log(lt[nl - 1]) - l0) / (nl - 1);
            snprintf(want, sizeof want, "%s_%d_%d", ca < nb ? (cb < nb ? "kk" : "kd") : "dd", bi + 1, bj + 1);
            for (t = 0; t < ntp && tp < 0; t++) {
                lss_cl_pair_name(nb, t, nm, sizeof nm);
                if (!strcmp(nm, want)) tp = t;
            }
            if (tp < 0) { st = lss_seterr(LSS_ERR_STATE, "lss_sim_expected_ps: no theory pair %s", want); goto done; }
            for (i = 0; i < M; i++)
                for (j = 0; j < Mh; j++) {
                    size_t k = (size_t)i * Mh + j;
                    double kx = lss__fidx(i, M) * dk, ky = j * dk, ell = 2 * LSS__PI * sqrt(kx * kx + ky * ky), a = 0, x, f;
                    int q;
                    {
                        x = ell > 0 ? (log(ell) - l0) / dl : 0;
                        if (x < 0) x = 0;
                        if (x > nl - 1) x = nl - 1;
                        q = (int)x;
                        if (q > nl - 2) q = nl - 2;
                        f = x - q;
                        a = ((1 - f) * tomo[(size_t)tp * nl + q] + f * tomo[(size_t)tp * nl + q + 1]) / omega;
                    }
                    dc[k][0] = a * ka[i] * ka[j] * kb[i] * kb[j];
                    dc[k][1] = 0;
                }
        } else
        for (i = 0; i < M; i++)
            for (j = 0; j < Mh; j++) {
                size_t k = (size_t)i * Mh + j;
                double a = 0;
                for (d = 0; d < s->ndraw; d++) a += u[(size_t)ca * s->ndraw + d] * u[(size_t)cb * s->ndraw + d] * Ps[(size_t)d * Mc + k];
                dc[k][0] = a * ka[i] * ka[j] * kb[i] * kb[j];
                dc[k][1] = 0;
            }
        fftw_execute_dft_c2r(s->d_c2r, dc, dreal); /* M^2 xi_ab(r) */
        for (i = 0; i < M; i++) {
            int dy = lss__fidx(i, M);
            for (j = 0; j < M; j++) {
                int dx = lss__fidx(j, M);
                double t = (abs(dy) < n && abs(dx) < n) ? (double)(n - abs(dy)) * (n - abs(dx)) : 0;
                dreal[(size_t)i * M + j] *= t / (double)MM;
            }
        }
        fftw_execute_dft_r2c(s->d_r2c, dreal, dc);
        /* stochasticity: kappa x delta pairs get cs, delta_i x delta_j (i != j) cs^2, per mode (real modes: 1) */
        fac = (ca < nb) != (cb < nb) ? cs : ((ca >= nb && ca != cb) ? cs * cs : 1);
        for (qy = 0; qy < n; qy++)
            for (qx = 0; qx < nh; qx++) {
                size_t k = (size_t)((qy * pad) % M) * Mh + (size_t)qx * pad;
                int real_mode = (qx == 0 || qx == n / 2) && (qy == 0 || qy == n / 2);
                E[(size_t)qy * nh + qx] = dc[k][0] * ps->norm * (real_mode ? 1 : fac);
            }
        lss_ps_bin2d(ps, E, out + (size_t)pr * ps->nbins);
    }
done:
    LSS_FREE(Ps); LSS_FREE(kw); LSS_FREE(u); LSS_FREE(Q); LSS_FREE(E); LSS_FREE(lt); LSS_FREE(tomo);
    if (dreal) fftw_free(dreal);
    if (dc) fftw_free(dc);
    return st;
}

/* ---------------------------------------------------------------- Sobol and priors */
LSSDEF int lss_sobol(uint64_t index, int dim, uint64_t seed, double *u) {
    /* Joe & Kuo (2008) new-joe-kuo-6.21201, dimensions 2-9 (dimension 1: van der Corput) */
    static const int S[9] = {0, 1, 2, 3, 3, 4, 4, 5, 5}, A[9] = {0, 0, 1, 1, 2, 1, 4, 2, 4};
    static const int MI[9][5] = {{0}, {1}, {1, 3}, {1, 3, 1}, {1, 1, 1}, {1, 1, 3, 3}, {1, 3, 5, 13}, {1, 1, 5, 5, 17},
                                 {1, 1, 5, 5, 5}};
    uint32_t v[32], x;
    uint64_t g;
    int d, k, b;
    if (!u || dim < 1 || dim > 9) return lss_seterr(LSS_ERR_ARG, "lss_sobol: dimension %d (need 1..9)", dim);
    if (index >= ((uint64_t)1 << 32)) return lss_seterr(LSS_ERR_ARG, "lss_sobol: index above 2^32");
    g = index ^ (index >> 1);
    for (d = 0; d < dim; d++) {
        if (d == 0) {
            for (k = 0; k < 32; k++) v[k] = (uint32_t)1 << (31 - k);
        } else {
            int s = S[d], a = A[d];
            for (k = 0; k < s; k++) v[k] = (uint32_t)MI[d][k] << (31 - k);
            for (k = s; k < 32; k++) {
                uint32_t t = v[k - s] ^ (v[k - s] >> s);
                for (b = 1; b < s; b++)
                    if ((a >> (s - 1 - b)) & 1) t ^= v[k - b];
                v[k] = t;
            }
        }
        x = 0;
        for (k = 0; k < 32; k++)
            if ((g >> k) & 1) x ^= v[k];
        if (seed) {
            uint32_t blk[4];
            lss_philox_block(seed, 0x50B0Lu, (uint64_t)d, blk);
            x ^= blk[0];
        }
        u[d] = x / 4294967296.0;
    }
    return LSS_OK;
}

LSSDEF int lss_params_from_unit(const double *u, int ndim, lss_params *p) {
    const lss_param_table *t = lss_table1();
    double v[LSS_NPARAM_TABLE1];
    int k;
    if (!u || !p || (ndim != LSS_NPARAM_LINEAR && ndim != LSS_NPARAM_TABLE1))
        return lss_seterr(LSS_ERR_ARG, "lss_params_from_unit: need %d or %d dimensions", LSS_NPARAM_LINEAR, LSS_NPARAM_TABLE1);
    for (k = 0; k < ndim; k++) {
        if (!(u[k] >= 0 && u[k] <= 1)) return lss_seterr(LSS_ERR_RANGE, "lss_params_from_unit: u[%d] = %g outside [0, 1]", k, u[k]);
        v[k] = t->lo[k] + u[k] * (t->hi[k] - t->lo[k]);
    }
    return lss_params_from_vec(v, ndim, p);
}

/* ---------------------------------------------------------------- the observation recipe */
struct lss_survey {
    const lss_sim *sim;
    lss_survey_opts o;
    int grid, nside, nbins, side, npairs, nell;
    double kscale, *edges;
};
struct lss_survey_work {
    lss_sim_work *sw;
    float *obs, *fields;  /* grid^2 observed fields; grid^2 fresh noise-free fields (lss_survey_simulate) */
    lss_ps *ps;
};

LSSDEF void lss_survey_free(lss_survey *sv) {
    if (!sv) return;
    LSS_FREE(sv->edges);
    LSS_FREE(sv);
}

LSSDEF int lss_survey_create(const lss_sim *sim, const lss_survey_opts *o, lss_survey **out) {
    lss_survey *sv;
    lss_sim_info inf;
    int s;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_survey_create: NULL out");
    *out = NULL;
    if (!sim) return lss_seterr(LSS_ERR_ARG, "lss_survey_create: NULL simulator");
    sv = (lss_survey *)LSS_MALLOC(sizeof *sv);
    if (!sv) return lss_seterr(LSS_ERR_NOMEM, "lss_survey_create: out of memory");
    memset(sv, 0, sizeof *sv);
    if (o) sv->o = *o;
    lss_sim_get_info(sim, &inf);
    sv->sim = sim;
    sv->grid = sv->o.grid ? sv->o.grid : 1;
    sv->nside = inf.nside;
    sv->nbins = inf.nbins;
    sv->side = sv->grid * inf.nside;
    sv->nell = sv->o.nell;
    if (sv->grid < 1 || sv->grid > 64 || sv->nell < 0 || sv->nell > 4096 || (sv->o.ps_mode != LSS_PS_REAL && sv->o.ps_mode != LSS_PS_ABS)) {
        int g = sv->grid, ne = sv->nell, pm = sv->o.ps_mode;
        lss_survey_free(sv);
        return lss_seterr(LSS_ERR_ARG, "lss_survey_create: grid %d outside 1..64, %d ell bins or spectra mode %d", g, ne, pm);
    }
    sv->npairs = 2 * inf.nbins * (2 * inf.nbins + 1) / 2;
    sv->kscale = lss_kappa_net_scale(sv->o.noise.sigma_e > 0 ? sv->o.noise.sigma_e : LSS_DEEPLSS_SIGMA_E,
                                     sv->o.noise.ngal_arcmin2 > 0 ? sv->o.noise.ngal_arcmin2 : LSS_DEEPLSS_NGAL_ARCMIN2,
                                     inf.pixel_arcmin);
    if (sv->nell > 0) {
        double lmin = sv->o.ell_min > 0 ? sv->o.ell_min : 36, lmax = sv->o.ell_max > 0 ? sv->o.ell_max : 4536;
        sv->edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(sv->nell + 1));
        if (!sv->edges) { lss_survey_free(sv); return lss_seterr(LSS_ERR_NOMEM, "lss_survey_create: out of memory"); }
        if ((s = lss_ps_edges(lmin, lmax, sv->nell, lmin, sv->edges)) != LSS_OK) { lss_survey_free(sv); return s; }
    }
    *out = sv;
    return LSS_OK;
}

LSSDEF void lss_survey_work_free(lss_survey_work *w) {
    if (!w) return;
    lss_sim_work_free(w->sw);
    lss_ps_free(w->ps);
    LSS_FREE(w->obs);
    LSS_FREE(w->fields);
    LSS_FREE(w);
}

LSSDEF int lss_survey_work_create(const lss_survey *sv, lss_survey_work **out) {
    lss_survey_work *w;
    lss_sim_info inf;
    int s, G;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_survey_work_create: NULL out");
    *out = NULL;
    if (!sv) return lss_seterr(LSS_ERR_ARG, "lss_survey_work_create: NULL survey");
    w = (lss_survey_work *)LSS_MALLOC(sizeof *w);
    if (!w) return lss_seterr(LSS_ERR_NOMEM, "lss_survey_work_create: out of memory");
    memset(w, 0, sizeof *w);
    G = sv->grid * sv->grid;
    lss_sim_get_info(sv->sim, &inf);
    if ((s = lss_sim_work_create(sv->sim, &w->sw)) != LSS_OK) { lss_survey_work_free(w); return s; }
    w->obs = (float *)LSS_MALLOC(sizeof(float) * (size_t)G * lss_sim_obs_size(sv->sim));
    w->fields = (float *)LSS_MALLOC(sizeof(float) * (size_t)G * lss_sim_field_size(sv->sim));
    if (!w->obs || !w->fields) { lss_survey_work_free(w); return lss_seterr(LSS_ERR_NOMEM, "lss_survey_work_create: out of memory"); }
    if (sv->nell > 0 &&
        (s = lss_ps_create(sv->side, sv->side, inf.pixel_arcmin, 2 * sv->nbins, sv->edges, sv->nell, &w->ps)) != LSS_OK) {
        lss_survey_work_free(w);
        return s;
    }
    *out = w;
    return LSS_OK;
}

LSSDEF int lss_survey_grid(const lss_survey *sv) { return sv ? sv->grid : 0; }
LSSDEF int lss_survey_side(const lss_survey *sv) { return sv ? sv->side : 0; }
LSSDEF int lss_survey_nbins(const lss_survey *sv) { return sv ? sv->nbins : 0; }
LSSDEF int64_t lss_survey_map_size(const lss_survey *sv) { return sv ? (int64_t)2 * sv->nbins * sv->side * sv->side : 0; }
LSSDEF int lss_survey_npairs(const lss_survey *sv) { return sv ? sv->npairs : 0; }
LSSDEF int lss_survey_nell(const lss_survey *sv) { return sv ? sv->nell : 0; }
LSSDEF int64_t lss_survey_spec_size(const lss_survey *sv) { return sv ? (int64_t)sv->npairs * sv->nell : 0; }

LSSDEF int lss_survey_pair(const lss_survey *sv, int q, int *i, int *j) {
    int a, b, n, c = 0;
    if (!sv || !i || !j || q < 0 || q >= sv->npairs) return lss_seterr(LSS_ERR_ARG, "lss_survey_pair: pair %d out of range", q);
    n = 2 * sv->nbins;
    for (a = 0; a < n; a++)
        for (b = a; b < n; b++, c++)
            if (c == q) { *i = a; *j = b; return LSS_OK; }
    return lss_seterr(LSS_ERR_STATE, "lss_survey_pair: pair %d not found", q);
}

LSSDEF uint64_t lss_survey_field_index(const lss_survey *sv, uint64_t index, int k) {
    uint64_t G, item = index & (LSS_SET_INDEX_MAX - 1);
    if (!sv || k < 0 || k >= sv->grid * sv->grid) return LSS_STREAM_INDEX_MAX;
    G = (uint64_t)sv->grid * (uint64_t)sv->grid;
    if (item >= (LSS_SET_INDEX_MAX - (uint64_t)k) / G) return LSS_STREAM_INDEX_MAX;
    return (index & ~(LSS_SET_INDEX_MAX - 1)) | (item * G + (uint64_t)k);
}

LSSDEF int lss_survey_observe(const lss_survey *sv, lss_survey_work *w, const float *const *fields,
                              const lss_params *p, uint64_t seed, uint64_t index, float *map, double *spec) {
    const float *fp[64 * 64];
    size_t osz;
    int G, k, s;
    if (!sv || !w || !fields || !p || !map) return lss_seterr(LSS_ERR_ARG, "lss_survey_observe: NULL argument");
    if (spec && sv->nell == 0) return lss_seterr(LSS_ERR_ARG, "lss_survey_observe: spectra asked of a survey without ell bins");
    G = sv->grid * sv->grid;
    osz = lss_sim_obs_size(sv->sim);
    for (k = 0; k < G; k++) {
        uint64_t fi = lss_survey_field_index(sv, index, k);
        float *o = w->obs + (size_t)k * osz;
        if (fi == LSS_STREAM_INDEX_MAX) return lss_seterr(LSS_ERR_RANGE, "lss_survey_observe: survey index %llu too large",
                                                         (unsigned long long)index);
        if (!fields[k]) return lss_seterr(LSS_ERR_ARG, "lss_survey_observe: field %d is NULL", k);
        if ((s = lss_sim_observe(sv->sim, w->sw, fields[k], p, &sv->o.noise, seed, fi, o)) != LSS_OK) return s;
        if (!sv->o.no_scale) lss_scale_for_network(o, sv->nbins, (int64_t)sv->nside * sv->nside, sv->kscale);
        fp[k] = o;
    }
    if ((s = lss_mosaic(fp, sv->grid, 2 * sv->nbins, sv->nside, seed, index, map)) != LSS_OK) return s;
    if (spec) return lss_ps_compute(w->ps, map, 1, sv->o.ps_mode, spec);
    return LSS_OK;
}

LSSDEF int lss_survey_simulate(const lss_survey *sv, const lss_sim *fsim, lss_survey_work *w, const lss_params *p,
                               uint64_t seed, uint64_t index, float *map, double *spec) {
    const float *fp[64 * 64];
    size_t fsz;
    int G, k, s;
    if (!sv || !fsim || !w || !p || !map) return lss_seterr(LSS_ERR_ARG, "lss_survey_simulate: NULL argument");
    if (lss_sim_field_size(fsim) != lss_sim_field_size(sv->sim) || lss_sim_obs_size(fsim) != lss_sim_obs_size(sv->sim))
        return lss_seterr(LSS_ERR_ARG, "lss_survey_simulate: the field simulator's sizes differ from the survey's");
    G = sv->grid * sv->grid;
    fsz = lss_sim_field_size(fsim);
    for (k = 0; k < G; k++) {
        uint64_t fi = lss_survey_field_index(sv, index, k);
        if (fi == LSS_STREAM_INDEX_MAX) return lss_seterr(LSS_ERR_RANGE, "lss_survey_simulate: survey index %llu too large",
                                                         (unsigned long long)index);
        if ((s = lss_sim_field(fsim, w->sw, seed, fi, w->fields + (size_t)k * fsz)) != LSS_OK) return s;
        fp[k] = w->fields + (size_t)k * fsz;
    }
    return lss_survey_observe(sv, w, fp, p, seed, index, map, spec);
}

/* ---------------------------------------------------------------- finite-difference simulation sets */
struct lss_fdsims {
    const lss_survey *sv;
    int na;
    lss_params p[1 + 2 * LSS_NPARAM_TABLE1];
    lss_sim *sim[1 + 2 * LSS_NPARAM_TABLE1];   /* NULL: the fiducial simulator sim[0] */
};

LSSDEF void lss_fdsims_free(lss_fdsims *f) {
    int v;
    if (!f) return;
    for (v = 0; v < 1 + 2 * f->na; v++) lss_sim_free(f->sim[v]);
    LSS_FREE(f);
}

LSSDEF int lss_fdsims_create(const lss_survey *sv, const lss_nz *bins, int nbins, const lss_sim_opts *so, const lss_params *p0,
                             int na, const double *step, lss_fdsims **out) {
    lss_fdsims *f;
    double v0[LSS_NPARAM_TABLE1];
    int a, v, s;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_fdsims_create: NULL out");
    *out = NULL;
    if (!sv || !bins || !p0 || (na > 0 && !step) || na < 0 || na > LSS_NPARAM_TABLE1)
        return lss_seterr(LSS_ERR_ARG, "lss_fdsims_create: NULL argument or %d parameters (0..%d)", na, LSS_NPARAM_TABLE1);
    for (a = 0; a < na; a++)
        if (!(step[a] > 0) || !isfinite(step[a]))
            return lss_seterr(LSS_ERR_ARG, "lss_fdsims_create: step %g of parameter %s is not positive and finite", step[a],
                              lss_table1()->name[a]);
    f = (lss_fdsims *)LSS_MALLOC(sizeof *f);
    if (!f) return lss_seterr(LSS_ERR_NOMEM, "lss_fdsims_create: out of memory");
    memset(f, 0, sizeof *f);
    f->sv = sv;
    f->na = na;
    lss_params_to_vec(p0, LSS_NPARAM_TABLE1, v0);
    for (v = 0; v < 1 + 2 * na; v++) {
        double vv[LSS_NPARAM_TABLE1];
        lss_cosmo *c = NULL;
        memcpy(vv, v0, sizeof vv);
        f->p[v] = *p0;
        if (v > 0) vv[(v - 1) / 2] += (v % 2 ? 1 : -1) * step[(v - 1) / 2];
        lss_params_from_vec(vv, LSS_NPARAM_TABLE1, &f->p[v]);
        if ((s = lss_params_check(&f->p[v])) != LSS_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", lss_last_error());
            lss_fdsims_free(f);
            return v == 0 ? lss_seterr(s, "lss_fdsims_create: fiducial parameters: %s", msg)
                          : lss_seterr(s, "lss_fdsims_create: %s %c %g: %s", lss_table1()->name[(v - 1) / 2], v % 2 ? '+' : '-',
                                       step[(v - 1) / 2], msg);
        }
        if (v > 0 && (v - 1) / 2 > LSS_P_SIGMA_8) continue;   /* same fields as the fiducial */
        if ((s = lss_cosmo_create(&f->p[v], &c)) == LSS_OK) s = lss_sim_create(c, bins, nbins, so, &f->sim[v]);
        lss_cosmo_free(c);
        if (s == LSS_OK && (lss_sim_field_size(f->sim[v]) != lss_sim_field_size(sv->sim) ||
                            lss_sim_obs_size(f->sim[v]) != lss_sim_obs_size(sv->sim)))
            s = lss_seterr(LSS_ERR_ARG, "lss_fdsims_create: the simulator options give other sizes than the survey's");
        if (s != LSS_OK) { lss_fdsims_free(f); return s; }
    }
    *out = f;
    return LSS_OK;
}

LSSDEF int lss_fdsims_nvariants(const lss_fdsims *f) { return f ? 1 + 2 * f->na : 0; }

LSSDEF int lss_fdsims_params(const lss_fdsims *f, int v, lss_params *p) {
    if (!f || !p || v < 0 || v > 2 * f->na) return lss_seterr(LSS_ERR_ARG, "lss_fdsims_params: variant %d outside 0..%d", v, f ? 2 * f->na : 0);
    *p = f->p[v];
    return LSS_OK;
}

LSSDEF int lss_fdsims_observe(const lss_fdsims *f, lss_survey_work *w, int v, uint64_t i, uint64_t seed, float *map,
                              double *spec) {
    const lss_sim *sim;
    if (!f || !w || !map || v < 0 || v > 2 * f->na || i >= LSS_FDSIMS_DER_BASE)
        return lss_seterr(LSS_ERR_ARG, "lss_fdsims_observe: NULL argument, variant %d or observation %llu out of range", v,
                          (unsigned long long)i);
    sim = f->sim[v] ? f->sim[v] : f->sim[0];
    return lss_survey_simulate(f->sv, sim, w, &f->p[v], seed, lss_set_index(LSS_SET_FISHER, v == 0 ? i : LSS_FDSIMS_DER_BASE + i),
                               map, spec);
}

LSSDEF int lss_fdsims_observe_rows(const lss_fdsims *f, lss_survey_work *const *works, int nwork, uint64_t seed, int64_t nfid,
                                   int64_t nder, int64_t r0, int n, float *maps, double *spec) {
    int64_t msz, ssz, total;
    int j, err = LSS_OK;
    char msg[1024] = "";
    if (!f || !works || !maps || nwork < 1 || nfid < 0 || nder < 0 || n < 0 || r0 < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_fdsims_observe_rows: NULL argument or negative size");
    total = nfid + 2 * (int64_t)f->na * nder;
    if (r0 + n > total) return lss_seterr(LSS_ERR_ARG, "lss_fdsims_observe_rows: rows %lld..%lld of %lld", (long long)r0,
                                          (long long)(r0 + n - 1), (long long)total);
    if (spec && f->sv->nell == 0) return lss_seterr(LSS_ERR_ARG, "lss_fdsims_observe_rows: spectra asked of a survey without ell bins");
#ifdef _OPENMP
    if (omp_get_max_threads() > nwork) return lss_seterr(LSS_ERR_ARG, "lss_fdsims_observe_rows: %d work buffers for %d threads", nwork,
                                                         omp_get_max_threads());
#endif
    msz = lss_survey_map_size(f->sv);
    ssz = lss_survey_spec_size(f->sv);
LSS__MOMP(omp parallel for schedule(dynamic, 4))
    for (j = 0; j < n; j++) {
        int64_t r = r0 + j, q = r - nfid;
        int t = 0, v = r < nfid ? 0 : 1 + 2 * (int)(q / nder % f->na) + (int)(q / nder / f->na), e;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        e = lss_fdsims_observe(f, works[t], v, (uint64_t)(r < nfid ? r : q % nder), seed, maps + (size_t)j * msz,
                               spec ? spec + (size_t)j * ssz : NULL);
        if (e) {
LSS__MOMP(omp critical(lss_fdsims_rows))
            if (!err) { err = e; snprintf(msg, sizeof msg, "%s", lss_last_error()); }
        }
    }
    return err ? lss_seterr(err, "%s", msg) : LSS_OK;
}

LSSDEF int lss_survey_select_spectra(const lss_survey *sv, const double *spec, int ch0, int nch, double *out) {
    int a, b, q = 0, k = 0;
    if (!sv || !spec || !out || ch0 < 0 || nch < 1 || ch0 + nch > 2 * sv->nbins)
        return lss_seterr(LSS_ERR_ARG, "lss_survey_select_spectra: NULL argument or channels %d..%d of %d", ch0, ch0 + nch - 1,
                          sv ? 2 * sv->nbins : 0);
    for (a = 0; a < 2 * sv->nbins; a++)
        for (b = a; b < 2 * sv->nbins; b++, q++)
            if (a >= ch0 && b < ch0 + nch) memcpy(out + (size_t)(k++) * sv->nell, spec + (size_t)q * sv->nell, sizeof(double) * (size_t)sv->nell);
    return LSS_OK;
}

/* ---------------------------------------------------------------- DeepLSS pool and draws */
LSSDEF void lss_pool_free(lss_pool *pool) {
    if (!pool) return;
    LSS_FREE(pool->cosmo);
    LSS_FREE(pool->fields);
    memset(pool, 0, sizeof *pool);
}

LSSDEF int lss_pool_init(lss_pool *pool, int ncosmo, int nf_train, int nf_test, int nbins, int nside) {
    size_t nfl;
    if (!pool) return lss_seterr(LSS_ERR_ARG, "lss_pool_init: NULL pool");
    memset(pool, 0, sizeof *pool);
    if (ncosmo < 1 || nf_train < 1 || nf_test < 1 || nbins < 1 || nbins > LSS_SIM_MAX_BINS || nside < 2)
        return lss_seterr(LSS_ERR_ARG, "lss_pool_init: bad sizes (%d cosmologies, %d + %d fields, %d bins, side %d)", ncosmo,
                          nf_train, nf_test, nbins, nside);
    pool->ncosmo = ncosmo; pool->nf_train = nf_train; pool->nf_test = nf_test; pool->nbins = nbins; pool->nside = nside;
    pool->field_size = (int64_t)3 * nbins * nside * nside;
    nfl = (size_t)ncosmo * (size_t)(nf_train + nf_test) * (size_t)pool->field_size;
    pool->cosmo = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)ncosmo);
    pool->fields = (float *)LSS_MALLOC(sizeof(float) * nfl);
    if (!pool->cosmo || !pool->fields) {
        lss_pool_free(pool);
        return lss_seterr(LSS_ERR_NOMEM, "lss_pool_init: out of memory (%d x %d fields)", ncosmo, nf_train + nf_test);
    }
    memset(pool->cosmo, 0, sizeof(double) * 2 * (size_t)ncosmo);
    memset(pool->fields, 0, sizeof(float) * nfl);
    return LSS_OK;
}

/* The scrambling key of a Sobol sequence: one draw from stream (seed, COSMO, index), never 0 (no shift). */
static uint64_t lss__sobol_key(uint64_t seed, uint64_t index) {
    lss_rng r;
    uint64_t k;
    lss_rng_for(&r, seed, LSS_STREAM_COSMO, index, 0);
    k = (uint64_t)lss_rng_u32(&r) << 32;
    k |= lss_rng_u32(&r);
    return k ? k : 1;
}

LSSDEF int lss_pool_grid(uint64_t seed, int ncosmo, double *cosmo) {
    const lss_param_table *t = lss_table1();
    uint64_t key = lss__sobol_key(seed, 0);
    double u[2];
    int k, s;
    if (!cosmo || ncosmo < 1) return lss_seterr(LSS_ERR_ARG, "lss_pool_grid: NULL output or %d cosmologies", ncosmo);
    cosmo[0] = t->fiducial[LSS_P_OMEGA_M];
    cosmo[1] = t->fiducial[LSS_P_SIGMA_8];
    for (k = 1; k < ncosmo; k++) {
        if ((s = lss_sobol((uint64_t)k, 2, key, u)) != LSS_OK) return s;
        cosmo[2 * k] = t->lo[LSS_P_OMEGA_M] + (t->hi[LSS_P_OMEGA_M] - t->lo[LSS_P_OMEGA_M]) * u[0];
        cosmo[2 * k + 1] = t->lo[LSS_P_SIGMA_8] + (t->hi[LSS_P_SIGMA_8] - t->lo[LSS_P_SIGMA_8]) * u[1];
    }
    return LSS_OK;
}

LSSDEF int lss_pool_simulate(lss_pool *pool, const lss_nz *nz, const lss_sim_opts *so, uint64_t seed,
                             int (*progress)(int done, int total, void *user), void *user) {
    lss_sim *sim = NULL;
    int k, s = LSS_OK, nf;
    if (!pool || !pool->fields || !nz) return lss_seterr(LSS_ERR_ARG, "lss_pool_simulate: NULL or empty pool");
    if ((s = lss_pool_grid(seed, pool->ncosmo, pool->cosmo)) != LSS_OK) return s;
    nf = pool->nf_train + pool->nf_test;
    for (k = 0; k < pool->ncosmo && s == LSS_OK; k++) {
        lss_params p;
        lss_cosmo *cc = NULL;
        float *dst = pool->fields + (size_t)k * (size_t)nf * (size_t)pool->field_size;
        lss_params_fiducial(&p);
        p.omega_m = pool->cosmo[2 * k];
        p.sigma_8 = pool->cosmo[2 * k + 1];
        if ((s = lss_cosmo_create(&p, &cc)) != LSS_OK) break;
        s = sim ? lss_sim_set_cosmo(sim, cc) : lss_sim_create(cc, nz, pool->nbins, so, &sim);
        if (s == LSS_OK && (int64_t)lss_sim_field_size(sim) != pool->field_size)
            s = lss_seterr(LSS_ERR_ARG, "lss_pool_simulate: simulator fields of %lld floats, the pool's of %lld",
                           (long long)lss_sim_field_size(sim), (long long)pool->field_size);
        if (s == LSS_OK)
            s = lss_sim_fields(sim, seed, lss_set_index(LSS_SET_TRAIN, (uint64_t)k * (uint64_t)pool->nf_train),
                               pool->nf_train, dst);
        if (s == LSS_OK)
            s = lss_sim_fields(sim, seed, lss_set_index(LSS_SET_TEST, (uint64_t)k * (uint64_t)pool->nf_test), pool->nf_test,
                               dst + (size_t)pool->nf_train * (size_t)pool->field_size);
        lss_cosmo_free(cc);
        if (s == LSS_OK && progress && progress(k + 1, pool->ncosmo, user))
            s = lss_seterr(LSS_ERR_STATE, "lss_pool_simulate: stopped by the progress callback");
    }
    lss_sim_free(sim);
    return s;
}

LSSDEF int lss_pool_save(const lss_pool *pool, const char *dir) {
    char path[4200];
    int64_t sh[5];
    int s;
    if (!pool || !pool->cosmo || !pool->fields || !dir) return lss_seterr(LSS_ERR_ARG, "lss_pool_save: NULL or empty pool");
    sh[0] = pool->ncosmo, sh[1] = pool->nf_train + pool->nf_test, sh[2] = 3 * pool->nbins, sh[3] = sh[4] = pool->nside;
    snprintf(path, sizeof path, "%s/pool_fields.npy", dir);
    if ((s = lss_npy_save(path, LSS_F32, 5, sh, pool->fields)) != LSS_OK) return s;
    sh[1] = 2;
    snprintf(path, sizeof path, "%s/pool_cosmo.npy", dir);
    return lss_npy_save(path, LSS_F64, 2, sh, pool->cosmo);
}

LSSDEF int lss_pool_load(lss_pool *pool, const char *dir, int with_fields) {
    char path[4200];
    lss_array a;
    int s, nd, k;
    int64_t sh[LSS_MAX_DIM], want[5];
    float *f = NULL;
    if (!pool || !pool->cosmo || !dir) return lss_seterr(LSS_ERR_ARG, "lss_pool_load: NULL or uninitialised pool");
    snprintf(path, sizeof path, "%s/pool_cosmo.npy", dir);
    if ((s = lss_npy_load(path, &a)) != LSS_OK) return s;
    s = a.dtype != LSS_F64 || a.ndim != 2 || a.shape[0] != pool->ncosmo || a.shape[1] != 2
        ? lss_seterr(LSS_ERR_FORMAT, "%s: expected float64 [%d, 2]", path, pool->ncosmo) : LSS_OK;
    if (s == LSS_OK) memcpy(pool->cosmo, a.data, sizeof(double) * 2 * (size_t)pool->ncosmo);
    lss_array_free(&a);
    if (s != LSS_OK || !with_fields) return s;
    snprintf(path, sizeof path, "%s/pool_fields.npy", dir);
    if ((s = lss_npy_load_f32(path, &f, &nd, sh)) != LSS_OK) return s;
    want[0] = pool->ncosmo, want[1] = pool->nf_train + pool->nf_test, want[2] = 3 * pool->nbins, want[3] = want[4] = pool->nside;
    for (k = 0; k < 5 && nd == 5 && sh[k] == want[k]; k++) {}
    if (k < 5) {
        LSS_FREE(f);
        return lss_seterr(LSS_ERR_FORMAT, "%s: expected float32 [%lld, %lld, %lld, %lld, %lld]", path, (long long)want[0],
                          (long long)want[1], (long long)want[2], (long long)want[3], (long long)want[4]);
    }
    LSS_FREE(pool->fields);
    pool->fields = f;
    return LSS_OK;
}

LSSDEF int lss_pool_simulate_library(lss_pool *pool, const lss_nz *nz, const lss_sim_opts *so, const char *dir,
                                     int (*progress)(int done, int total, void *user), void *user) {
    lss_sim *sim = NULL;
    int k, s = LSS_OK, nf, nlib = 0, warned = 0;
    if (!pool || !pool->fields || !nz || !dir) return lss_seterr(LSS_ERR_ARG, "lss_pool_simulate_library: NULL or empty pool");
    if ((s = lss_shell_lib_count(dir, &nlib)) != LSS_OK) return s;
    if (nlib != pool->ncosmo)
        return lss_seterr(LSS_ERR_ARG, "shell library %s has %d complete entries, the pool %d cosmologies", dir, nlib, pool->ncosmo);
    nf = pool->nf_train + pool->nf_test;
    for (k = 0; k < pool->ncosmo && s == LSS_OK; k++) {
        lss_shellset set;
        lss_cosmo *cc = NULL;
        char stem[4096];
        float *dst = pool->fields + (size_t)k * (size_t)nf * (size_t)pool->field_size;
        int nhold, ntr;
        if ((s = lss_shell_lib_stem(dir, k, stem, sizeof stem)) != LSS_OK || (s = lss_shellset_load(stem, &set)) != LSS_OK) break;
        nhold = set.ncone / 4 > 1 ? set.ncone / 4 : 1;
        ntr = set.ncone - nhold;
        if (ntr < 1) {
            s = lss_seterr(LSS_ERR_ARG, "%s: %d light cone(s); the pool needs at least 2 (training and held-out)", stem, set.ncone);
            lss_shellset_free(&set);
            break;
        }
        if (!warned && (pool->nf_train > 8 * ntr || pool->nf_test > 8 * nhold)) {
            lss_log(1, "shell library %s: %d training and %d held-out fields per cosmology from %d + %d views: views repeat", dir,
                    pool->nf_train, pool->nf_test, 8 * ntr, 8 * nhold);
            warned = 1;
        }
        pool->cosmo[2 * k] = set.params.omega_m;
        pool->cosmo[2 * k + 1] = set.params.sigma_8;
        if ((s = lss_cosmo_create(&set.params, &cc)) == LSS_OK) {
            s = sim ? lss_sim_set_cosmo(sim, cc) : lss_sim_create(cc, nz, pool->nbins, so, &sim);
            if (s == LSS_OK && (int64_t)lss_sim_field_size(sim) != pool->field_size)
                s = lss_seterr(LSS_ERR_ARG, "lss_pool_simulate_library: simulator fields of %lld floats, the pool's of %lld",
                               (long long)lss_sim_field_size(sim), (long long)pool->field_size);
            if (s == LSS_OK) s = lss_sim_use_shells(sim, &set);
        }
        lss_cosmo_free(cc);
        if (s == LSS_OK) {
            int st = LSS_OK;
LSS__MOMP(omp parallel)
            {
                lss_sim_work *w = NULL;
                int f, mine = lss_sim_work_create(sim, &w);
                if (mine != LSS_OK) {
LSS__MOMP(omp critical(lss_pool_lib_err))
                    st = mine;
                }
LSS__MOMP(omp for schedule(dynamic, 1))
                for (f = 0; f < nf; f++) {
                    int test = f >= pool->nf_train, g = test ? f - pool->nf_train : f, nc = test ? nhold : ntr;
                    int v = g % (8 * nc), cone = (test ? ntr : 0) + v % nc, r;
                    if (!w) continue;
                    r = lss_sim_field(sim, w, 0, (uint64_t)(v / nc) * (uint64_t)set.ncone + (uint64_t)cone,
                                      dst + (size_t)f * (size_t)pool->field_size);
                    if (r != LSS_OK) {
LSS__MOMP(omp critical(lss_pool_lib_err))
                        st = r;
                    }
                }
                lss_sim_work_free(w);
            }
            s = st;
        }
        if (sim) lss_sim_use_shells(sim, NULL);
        lss_shellset_free(&set);
        if (s == LSS_OK && progress && progress(k + 1, pool->ncosmo, user))
            s = lss_seterr(LSS_ERR_STATE, "lss_pool_simulate_library: stopped by the progress callback");
    }
    lss_sim_free(sim);
    return s;
}

LSSDEF void lss_pool_draw_random(const lss_pool *pool, uint64_t seed, uint64_t index, int test, lss_pool_draw *d) {
    const lss_param_table *t = lss_table1();
    lss_rng r;
    int k;
    if (!pool || !d) return;
    lss_rng_for(&r, seed, LSS_STREAM_NUISANCE, index, 0);
    d->ci = (int)lss_rng_below(&r, (uint32_t)pool->ncosmo);
    d->theta[0] = pool->cosmo[2 * d->ci];
    d->theta[1] = pool->cosmo[2 * d->ci + 1];
    for (k = 2; k < LSS_NPARAM_LINEAR; k++) d->theta[k] = t->lo[k] + (t->hi[k] - t->lo[k]) * lss_rng_uniform(&r);
    d->test = test;
    d->index = index;
}

LSSDEF int lss_pool_eval_draw(const lss_pool *pool, uint64_t seed, int which, int64_t i, int per, lss_pool_draw *d) {
    const lss_param_table *t = lss_table1();
    int k, s;
    if (!pool || !d || i < 0 || (per < 1 && (which == LSS_DRAWS_MDN || which == LSS_DRAWS_CHECK)))
        return lss_seterr(LSS_ERR_ARG, "lss_pool_eval_draw: bad arguments (item %lld, %d per point)", (long long)i, per);
    switch (which) {
    case LSS_DRAWS_MDN: {
        double u[LSS_NPARAM_LINEAR - 2];
        int ci = (int)(i / per);
        if (ci >= pool->ncosmo) return lss_seterr(LSS_ERR_RANGE, "lss_pool_eval_draw: item %lld beyond the grid", (long long)i);
        if ((s = lss_sobol((uint64_t)(i % per), LSS_NPARAM_LINEAR - 2, lss__sobol_key(seed, lss_set_index(LSS_SET_TEST, (uint64_t)ci + 1)), u)) != LSS_OK)
            return s;
        d->ci = ci;
        d->theta[0] = pool->cosmo[2 * ci];
        d->theta[1] = pool->cosmo[2 * ci + 1];
        for (k = 2; k < LSS_NPARAM_LINEAR; k++) d->theta[k] = t->lo[k] + (t->hi[k] - t->lo[k]) * u[k - 2];
        d->test = 1;
        d->index = lss_set_index(LSS_SET_TEST, (uint64_t)i);
        return LSS_OK;
    }
    case LSS_DRAWS_CAL:
        lss_pool_draw_random(pool, seed, lss_set_index(LSS_SET_DEEPLSS_CAL, (uint64_t)i), 1, d);
        return LSS_OK;
    case LSS_DRAWS_FID:
        d->ci = 0;
        for (k = 0; k < LSS_NPARAM_LINEAR; k++) d->theta[k] = t->fiducial[k];
        d->theta[0] = pool->cosmo[0];
        d->theta[1] = pool->cosmo[1];
        d->test = 1;
        d->index = lss_set_index(LSS_SET_FIDUCIAL, (uint64_t)i);
        return LSS_OK;
    case LSS_DRAWS_CHECK:
        /* the parameter point from the stream of item (i / per) * per, fresh noise and fields for every item */
        lss_pool_draw_random(pool, seed, lss_set_index(LSS_SET_DEEPLSS_CHECK, (uint64_t)(i / per) * (uint64_t)per), 1, d);
        d->index = lss_set_index(LSS_SET_DEEPLSS_CHECK, (uint64_t)i);
        return LSS_OK;
    default:
        return lss_seterr(LSS_ERR_ARG, "lss_pool_eval_draw: unknown draw set %d", which);
    }
}

LSSDEF int lss_pool_observe(const lss_pool *pool, const lss_survey *sv, lss_survey_work *w, const lss_pool_draw *d,
                            uint64_t seed, float *map, double *spec) {
    const float *fp[64 * 64];
    lss_params p;
    lss_rng r;
    int G, k, nf, s;
    if (!pool || !pool->fields || !sv || !w || !d || !map) return lss_seterr(LSS_ERR_ARG, "lss_pool_observe: NULL argument");
    if (d->ci < 0 || d->ci >= pool->ncosmo) return lss_seterr(LSS_ERR_ARG, "lss_pool_observe: cosmology %d outside the pool", d->ci);
    if ((int64_t)lss_sim_field_size(sv->sim) != pool->field_size)
        return lss_seterr(LSS_ERR_ARG, "lss_pool_observe: the pool's fields do not match the survey's simulator");
    G = sv->grid * sv->grid;
    nf = pool->nf_train + pool->nf_test;
    lss_rng_for(&r, seed, LSS_STREAM_NUISANCE, d->index, 1);
    for (k = 0; k < G; k++) {
        int f = d->test ? pool->nf_train + (int)lss_rng_below(&r, (uint32_t)pool->nf_test)
                        : (int)lss_rng_below(&r, (uint32_t)pool->nf_train);
        fp[k] = pool->fields + ((size_t)d->ci * (size_t)nf + (size_t)f) * (size_t)pool->field_size;
    }
    lss_params_fiducial(&p);
    if ((s = lss_params_from_vec(d->theta, LSS_NPARAM_LINEAR, &p)) != LSS_OK) return s;
    return lss_survey_observe(sv, w, fp, &p, seed, d->index, map, spec);
}

LSSDEF int lss_pool_observe_many(const lss_pool *pool, const lss_survey *sv, lss_survey_work *const *works, int nwork,
                                 const lss_pool_draw *d, int n, uint64_t seed, float *maps, double *spec) {
    int64_t msz = lss_survey_map_size(sv), ssz = lss_survey_spec_size(sv);
    int status = LSS_OK, i;
    char msg[512] = "";
    if (!works || nwork < 1 || !d || !maps || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_pool_observe_many: bad arguments");
LSS__MOMP(omp parallel for schedule(dynamic))
    for (i = 0; i < n; i++) {
        int tid = 0, s;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        if (tid >= nwork) s = lss_seterr(LSS_ERR_ARG, "lss_pool_observe_many: %d work buffers for thread %d", nwork, tid);
        else s = lss_pool_observe(pool, sv, works[tid], &d[i], seed, maps + i * msz, spec ? spec + i * ssz : NULL);
        if (s) {
LSS__MOMP(omp critical(lss_pool_err))
            {
                if (status == LSS_OK) { status = s; if (snprintf(msg, sizeof msg, "%s", lss_last_error()) < 0) msg[0] = 0; }
            }
        }
    }
    if (status) return lss_seterr(status, "%s", msg);
    return LSS_OK;
}

LSSDEF int lss_pool_batch(const lss_pool *pool, const lss_survey *sv, lss_survey_work *const *works, int nwork, lss_set set,
                          uint64_t first, int n, int test, uint64_t seed, float *maps, double *spec, double *theta) {
    lss_pool_draw *d;
    int i, s;
    if (!pool || !pool->cosmo || n < 0 || first + (uint64_t)n > LSS_SET_INDEX_MAX)
        return lss_seterr(LSS_ERR_ARG, "lss_pool_batch: NULL pool, %d draws or items beyond the data set", n);
    if (n == 0) return LSS_OK;
    d = (lss_pool_draw *)LSS_MALLOC(sizeof(lss_pool_draw) * (size_t)n);
    if (!d) return lss_seterr(LSS_ERR_NOMEM, "lss_pool_batch: out of memory");
    for (i = 0; i < n; i++) {
        lss_pool_draw_random(pool, seed, lss_set_index(set, first + (uint64_t)i), test, &d[i]);
        if (theta) memcpy(theta + (size_t)i * LSS_NPARAM_LINEAR, d[i].theta, sizeof d[i].theta);
    }
    s = lss_pool_observe_many(pool, sv, works, nwork, d, n, seed, maps, spec);
    LSS_FREE(d);
    return s;
}
/* ==== STATISTICS IMPLEMENTATION ==== */
/* (struct lss_ps is defined above, before lss_sim_expected_ps that reads it; the binning rule of every
   binned spectrum is lss__ps_bin_of.) */

/* ---- binned spectra of map stacks: bin edges, the lss_ps estimator */
/* The binning convention of every binned spectrum: the bin b with edges[b] <= ell < edges[b + 1], or -1. */
static int lss__ps_bin_of(const double *edges, int nbins, double ell) {
    int lo = 0, hi = nbins;
    if (!(ell >= edges[0]) || !(ell < edges[nbins])) return -1;
    while (hi - lo > 1) {
        int m = (lo + hi) / 2;
        if (ell >= edges[m]) lo = m;
        else hi = m;
    }
    return lo;
}

static int lss__ps_check_edges(const double *edges, int nbins, const char *fn) {
    int b;
    if (!edges || nbins < 1 || nbins > 100000) return lss_seterr(LSS_ERR_ARG, "%s: need edges and 1 <= nbins <= 100000 (got %d)", fn, nbins);
    for (b = 0; b < nbins; b++)
        if (!(edges[b + 1] > edges[b]) || !(edges[b] >= 0) || !isfinite(edges[b + 1]))
            return lss_seterr(LSS_ERR_ARG, "%s: bin edges must increase from >= 0 (edge %d)", fn, b);
    return LSS_OK;
}

LSSDEF int lss_ps_edges(double lmin, double lmax, int nbins, double dl_min, double *edges) {
    int k, it;
    double lo, hi;
    if (!edges || nbins < 1 || nbins > 100000 || !(lmin > 0) || !(lmax > lmin) || !isfinite(lmax) || !(dl_min >= 0))
        return lss_seterr(LSS_ERR_ARG, "power-spectrum bins: need 0 < lmin < lmax, nbins >= 1, dl_min >= 0 "
                          "(got %g, %g, %d, %g)", lmin, lmax, nbins, dl_min);
    if (dl_min > 0 && lmin + nbins * dl_min > lmax * (1 + 1e-12))
        return lss_seterr(LSS_ERR_ARG, "power-spectrum bins: %d bins of at least %g do not fit in %g..%g", nbins,
                          dl_min, lmin, lmax);
    if (dl_min <= 0) {
        for (k = 0; k <= nbins; k++) edges[k] = lmin * pow(lmax / lmin, (double)k / nbins);
        edges[nbins] = lmax;
        return LSS_OK;
    }
    /* ratio r with e_{k+1} = max(r e_k, e_k + dl_min) reaching lmax after nbins steps (bisection) */
    lo = 1; hi = pow(lmax / lmin, 1.0 / nbins);
    for (it = 0; it < 200; it++) {
        double r = 0.5 * (lo + hi), e = lmin;
        for (k = 0; k < nbins; k++) e = r * e > e + dl_min ? r * e : e + dl_min;
        if (e > lmax) hi = r; else lo = r;
    }
    edges[0] = lmin;
    for (k = 0; k < nbins; k++) edges[k + 1] = lo * edges[k] > edges[k] + dl_min ? lo * edges[k] : edges[k] + dl_min;
    edges[nbins] = lmax;
    return LSS_OK;
}

LSSDEF void lss_ps_free(lss_ps *ps) {
    if (!ps) return;
    if (ps->plan) {
LSS__MOMP(omp critical(lss_fftw_plan))
        fftwf_destroy_plan(ps->plan);
    }
    if (ps->in) fftwf_free(ps->in);
    if (ps->X) fftwf_free(ps->X);
    LSS_FREE(ps->edges); LSS_FREE(ps->ell); LSS_FREE(ps->nmodes); LSS_FREE(ps->bin); LSS_FREE(ps->wgt);
    LSS_FREE(ps->wsum);
    LSS_FREE(ps);
}

LSSDEF int lss_ps_create(int ny, int nx, double pixel_arcmin, int nchan, const double *edges, int nbins,
                         lss_ps **out) {
    lss_ps *ps;
    int i, j, b;
    size_t nm;
    if (out) *out = NULL;
    if (!out || !edges) return lss_seterr(LSS_ERR_ARG, "lss_ps_create: NULL argument");
    if (ny < 2 || nx < 2 || ny > 65536 || nx > 65536 || (double)ny * nx > 1e9 || nchan < 1 || nchan > 1024 ||
        nbins < 1 || nbins > 100000 || !(pixel_arcmin > 0) || !isfinite(pixel_arcmin))
        return lss_seterr(LSS_ERR_ARG, "lss_ps_create: bad sizes (%d x %d maps, %d channels, %d bins, pixel %g arcmin)",
                          ny, nx, nchan, nbins, pixel_arcmin);
    if ((b = lss__ps_check_edges(edges, nbins, "lss_ps_create")) != LSS_OK) return b;
    ps = (lss_ps *)LSS_MALLOC(sizeof *ps);
    if (!ps) return lss_seterr(LSS_ERR_NOMEM, "lss_ps_create: out of memory");
    memset(ps, 0, sizeof *ps);
    ps->ny = ny; ps->nx = nx; ps->nxh = nx / 2 + 1; ps->nchan = nchan; ps->nbins = nbins;
    ps->pix_rad = pixel_arcmin * LSS__ARCMIN;
    ps->norm = ps->pix_rad * ps->pix_rad / ((double)ny * nx);
    nm = (size_t)ny * ps->nxh;
    ps->edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(nbins + 1));
    ps->ell = (double *)LSS_MALLOC(sizeof(double) * (size_t)nbins);
    ps->wsum = (double *)LSS_MALLOC(sizeof(double) * (size_t)nbins);
    ps->nmodes = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)nbins);
    ps->bin = (int *)LSS_MALLOC(sizeof(int) * nm);
    ps->wgt = (double *)LSS_MALLOC(sizeof(double) * nm);
    ps->in = (float *)fftwf_malloc(sizeof(float) * (size_t)ny * nx);
    ps->X = (fftwf_complex *)fftwf_malloc(sizeof(fftwf_complex) * nm * (size_t)nchan);
    if (!ps->edges || !ps->ell || !ps->wsum || !ps->nmodes || !ps->bin || !ps->wgt || !ps->in || !ps->X) {
        lss_ps_free(ps);
        return lss_seterr(LSS_ERR_NOMEM, "lss_ps_create: out of memory");
    }
    memcpy(ps->edges, edges, sizeof(double) * (size_t)(nbins + 1));
    for (b = 0; b < nbins; b++) { ps->ell[b] = 0; ps->wsum[b] = 0; ps->nmodes[b] = 0; }
    for (i = 0; i < ny; i++) {
        double ky = lss__fidx(i, ny) / (ny * ps->pix_rad);
        for (j = 0; j < ps->nxh; j++) {
            double kx = j / (nx * ps->pix_rad), ell = 2 * LSS__PI * sqrt(kx * kx + ky * ky);
            double wg = (j == 0 || (nx % 2 == 0 && j == nx / 2)) ? 1 : 2;
            size_t k = (size_t)i * ps->nxh + j;
            int lo;
            ps->bin[k] = -1;
            ps->wgt[k] = wg;
            if (i == 0 && j == 0) continue;
            if ((lo = lss__ps_bin_of(edges, nbins, ell)) < 0) continue;
            ps->bin[k] = lo;
            ps->ell[lo] += wg * ell;
            ps->wsum[lo] += wg;
            ps->nmodes[lo] += (int64_t)wg;
        }
    }
    for (b = 0; b < nbins; b++) ps->ell[b] = ps->wsum[b] > 0 ? ps->ell[b] / ps->wsum[b] : NAN;
LSS__MOMP(omp critical(lss_fftw_plan))
    ps->plan = fftwf_plan_dft_r2c_2d(ny, nx, ps->in, ps->X, FFTW_ESTIMATE);
    if (!ps->plan) { lss_ps_free(ps); return lss_seterr(LSS_ERR_NOMEM, "lss_ps_create: FFTW plan failed"); }
    *out = ps;
    return LSS_OK;
}

LSSDEF int lss_ps_nbins(const lss_ps *ps) { return ps ? ps->nbins : 0; }
LSSDEF int lss_ps_npairs(const lss_ps *ps, int cross) { return ps ? (cross ? ps->nchan * (ps->nchan + 1) / 2 : ps->nchan) : 0; }
LSSDEF void lss_ps_pair(const lss_ps *ps, int cross, int p, int *i, int *j) {
    int a, n;
    if (!i || !j) return;
    *i = *j = -1;
    if (!ps || p < 0 || p >= lss_ps_npairs(ps, cross)) return;
    n = ps->nchan;
    if (!cross) { *i = *j = p; return; }
    for (a = 0; a < n; a++) {
        if (p < n - a) { *i = a; *j = a + p; return; }
        p -= n - a;
    }
}
LSSDEF const double *lss_ps_ell(const lss_ps *ps) { return ps ? ps->ell : NULL; }
LSSDEF const int64_t *lss_ps_nmodes(const lss_ps *ps) { return ps ? ps->nmodes : NULL; }

LSSDEF int lss_ps_compute(lss_ps *ps, const float *maps, int cross, int mode, double *out) {
    int c, p, np, b;
    size_t nm, npix, k;
    if (!ps || !maps || !out) return lss_seterr(LSS_ERR_ARG, "lss_ps_compute: NULL argument");
    nm = (size_t)ps->ny * ps->nxh; npix = (size_t)ps->ny * ps->nx;
    for (c = 0; c < ps->nchan; c++) {
        memcpy(ps->in, maps + (size_t)c * npix, sizeof(float) * npix);
        fftwf_execute_dft_r2c(ps->plan, ps->in, ps->X + (size_t)c * nm);
    }
    np = lss_ps_npairs(ps, cross);
    for (p = 0; p < np; p++) {
        int i, j;
        fftwf_complex *A, *B;
        double *o = out + (size_t)p * ps->nbins;
        lss_ps_pair(ps, cross, p, &i, &j);
        A = ps->X + (size_t)i * nm; B = ps->X + (size_t)j * nm;
        for (b = 0; b < ps->nbins; b++) o[b] = 0;
        for (k = 0; k < nm; k++) {
            double re, v;
            if (ps->bin[k] < 0) continue;
            re = (double)A[k][0] * B[k][0] + (double)A[k][1] * B[k][1];
            if (mode == LSS_PS_ABS) {
                double im = (double)A[k][1] * B[k][0] - (double)A[k][0] * B[k][1];
                v = sqrt(re * re + im * im);
            } else v = re;
            o[ps->bin[k]] += ps->wgt[k] * v;
        }
        for (b = 0; b < ps->nbins; b++) o[b] = ps->wsum[b] > 0 ? o[b] * ps->norm / ps->wsum[b] : NAN;
    }
    return LSS_OK;
}

LSSDEF void lss_ps_bin2d(const lss_ps *ps, const double *p2d, double *out) {
    size_t k, nm;
    int b;
    if (!ps || !p2d || !out) return;
    nm = (size_t)ps->ny * ps->nxh;
    for (b = 0; b < ps->nbins; b++) out[b] = 0;
    for (k = 0; k < nm; k++)
        if (ps->bin[k] >= 0) out[ps->bin[k]] += ps->wgt[k] * p2d[k];
    for (b = 0; b < ps->nbins; b++) out[b] = ps->wsum[b] > 0 ? out[b] / ps->wsum[b] : NAN;
}

/* ---- smoothing with zeros outside the map */
LSSDEF void lss_smooth_zeropad(float *map, int h, int w, double sigma_px, float *tmp) {
    float kk[2 * LSS__KMAX + 1];
    double sum = 0;
    int hw, k, y, x;
    if (!(sigma_px > 0) || !map || !tmp || h < 1 || w < 1) return;
    hw = (int)(5 * sigma_px);
    if (hw < 1) hw = 1;
    if (hw > LSS__KMAX) hw = LSS__KMAX;
    for (k = -hw; k <= hw; k++) sum += exp(-0.5 * k * k / (sigma_px * sigma_px));
    for (k = -hw; k <= hw; k++) kk[k + hw] = (float)(exp(-0.5 * k * k / (sigma_px * sigma_px)) / sum);
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++) {
            float a = 0;
            for (k = -hw; k <= hw; k++)
                if (x + k >= 0 && x + k < w) a += kk[k + hw] * map[(size_t)y * w + x + k];
            tmp[(size_t)y * w + x] = a;
        }
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++) {
            float a = 0;
            for (k = -hw; k <= hw; k++)
                if (y + k >= 0 && y + k < h) a += kk[k + hw] * tmp[(size_t)(y + k) * w + x];
            map[(size_t)y * w + x] = a;
        }
}

/* ---- flat-sky grids */
struct lss_grid {
    int h, w;
    int64_t n;
    double pix_arcmin, pix_rad;
    float *c2, *s2;     /* spin-2 phase per Fourier cell (0 at k = 0) */
    double *kk;         /* |k|^2 in cycles per pixel squared */
    fftwf_plan pf_fwd, pf_inv;
    fftw_plan pd_fwd, pd_inv;
    int nws;
    lss_grid_ws *ws;
};

LSSDEF void lss_grid_ws_release(lss_grid_ws *w) {
    if (!w) return;
    if (w->a) fftwf_free(w->a);
    if (w->b) fftwf_free(w->b);
    if (w->c) fftw_free(w->c);
    if (w->d) fftw_free(w->d);
    w->a = w->b = NULL;
    w->c = w->d = NULL;
}

static int lss__grid_ws_alloc_n(lss_grid_ws *w, int64_t n) {
    w->a = (lss_cfloat *)fftwf_malloc(sizeof(lss_cfloat) * (size_t)n);
    w->b = (lss_cfloat *)fftwf_malloc(sizeof(lss_cfloat) * (size_t)n);
    w->c = (lss_cdouble *)fftw_malloc(sizeof(lss_cdouble) * (size_t)n);
    w->d = (lss_cdouble *)fftw_malloc(sizeof(lss_cdouble) * (size_t)n);
    if (!w->a || !w->b || !w->c || !w->d) {
        lss_grid_ws_release(w);
        return lss_seterr(LSS_ERR_NOMEM, "grid: out of memory for an FFT workspace (%lld cells)", (long long)n);
    }
    return LSS_OK;
}

LSSDEF int lss_grid_ws_alloc(const lss_grid *g, lss_grid_ws *w) {
    if (!g || !w) return lss_seterr(LSS_ERR_ARG, "lss_grid_ws_alloc: NULL argument");
    memset(w, 0, sizeof *w);
    return lss__grid_ws_alloc_n(w, g->n);
}

LSSDEF lss_grid_ws *lss_grid_ws_get(const lss_grid *g, lss_grid_ws *tmp) {
    int t = 0;
    if (!g || !tmp) {
        lss_seterr(LSS_ERR_ARG, "lss_grid_ws_get: NULL argument");
        return NULL;
    }
#ifdef _OPENMP
    if (omp_get_level() > 1) t = -1;
    else t = omp_get_thread_num();
#endif
    if (t >= 0 && t < g->nws) return &g->ws[t];
    memset(tmp, 0, sizeof *tmp);
    if (lss__grid_ws_alloc_n(tmp, g->n) != LSS_OK) return NULL;
    return tmp;
}

LSSDEF void lss_grid_ws_put(lss_grid_ws *w, lss_grid_ws *tmp) {
    if (w && w == tmp) lss_grid_ws_release(tmp);
}

LSSDEF lss_grid_ws *lss_grid_ws_thread(const lss_grid *g, int t) {
    return (g && t >= 0 && t < g->nws) ? &g->ws[t] : NULL;
}
LSSDEF int lss_grid_nws(const lss_grid *g) { return g ? g->nws : 0; }

static double lss__grid_freq(int i, int n) { return (i <= (n - 1) / 2 ? i : i - n) / (double)n; }

LSSDEF void lss_grid_free(lss_grid *g) {
    int t;
    if (!g) return;
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        if (g->pf_fwd) fftwf_destroy_plan(g->pf_fwd);
        if (g->pf_inv) fftwf_destroy_plan(g->pf_inv);
        if (g->pd_fwd) fftw_destroy_plan(g->pd_fwd);
        if (g->pd_inv) fftw_destroy_plan(g->pd_inv);
    }
    if (g->ws) {
        for (t = 0; t < g->nws; t++) lss_grid_ws_release(&g->ws[t]);
        LSS_FREE(g->ws);
    }
    LSS_FREE(g->c2);
    LSS_FREE(g->s2);
    LSS_FREE(g->kk);
    LSS_FREE(g);
}

LSSDEF int lss_grid_create(int h, int w, double pix_arcmin, lss_grid **out) {
    lss_grid *g;
    int iy, ix, t;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_grid_create: out is NULL");
    *out = NULL;
    if (h < 2 || w < 2 || (int64_t)h * w > ((int64_t)1 << 30))
        return lss_seterr(LSS_ERR_ARG, "lss_grid_create: grid %d x %d outside [2, 2^15]^2", h, w);
    if (!(pix_arcmin > 0) || !isfinite(pix_arcmin))
        return lss_seterr(LSS_ERR_ARG, "lss_grid_create: pixel size %g arcmin must be > 0", pix_arcmin);
    g = (lss_grid *)LSS_MALLOC(sizeof *g);
    if (!g) return lss_seterr(LSS_ERR_NOMEM, "lss_grid_create: out of memory");
    memset(g, 0, sizeof *g);
    g->h = h;
    g->w = w;
    g->n = (int64_t)h * w;
    g->pix_arcmin = pix_arcmin;
    g->pix_rad = pix_arcmin * LSS__ARCMIN;
    g->c2 = (float *)LSS_MALLOC(sizeof(float) * (size_t)g->n);
    g->s2 = (float *)LSS_MALLOC(sizeof(float) * (size_t)g->n);
    g->kk = (double *)LSS_MALLOC(sizeof(double) * (size_t)g->n);
#ifdef _OPENMP
    g->nws = omp_get_max_threads();
    if (g->nws < 1) g->nws = 1;
#else
    g->nws = 1;
#endif
    g->ws = (lss_grid_ws *)LSS_MALLOC(sizeof(lss_grid_ws) * (size_t)g->nws);
    if (!g->c2 || !g->s2 || !g->kk || !g->ws) {
        if (g->ws) memset(g->ws, 0, sizeof(lss_grid_ws) * (size_t)g->nws);
        else g->nws = 0;
        lss_grid_free(g);
        return lss_seterr(LSS_ERR_NOMEM, "lss_grid_create: out of memory");
    }
    memset(g->ws, 0, sizeof(lss_grid_ws) * (size_t)g->nws);
    for (t = 0; t < g->nws; t++)
        if (lss__grid_ws_alloc_n(&g->ws[t], g->n) != LSS_OK) {
            lss_grid_free(g);
            return LSS_ERR_NOMEM;
        }
    for (iy = 0; iy < h; iy++)
        for (ix = 0; ix < w; ix++) {
            double fy = lss__grid_freq(iy, h), fx = lss__grid_freq(ix, w), k2;
            int nyx = (w % 2 == 0 && ix == w / 2), nyy = (h % 2 == 0 && iy == h / 2);
            int64_t i = (int64_t)iy * w + ix;
            if (nyx && !nyy) fx = fy > 0 ? 0.5 : -0.5;
            if (nyy && !nyx) fy = fx > 0 ? 0.5 : -0.5;
            k2 = fx * fx + fy * fy;
            g->kk[i] = k2;
            g->c2[i] = k2 > 0 ? (float)((fx * fx - fy * fy) / k2) : 0.0f;
            g->s2[i] = k2 > 0 ? (float)(2.0 * fx * fy / k2) : 0.0f;
        }
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        g->pf_fwd = fftwf_plan_dft_2d(h, w, (fftwf_complex *)g->ws[0].a, (fftwf_complex *)g->ws[0].a, FFTW_FORWARD, FFTW_ESTIMATE);
        g->pf_inv = fftwf_plan_dft_2d(h, w, (fftwf_complex *)g->ws[0].a, (fftwf_complex *)g->ws[0].a, FFTW_BACKWARD, FFTW_ESTIMATE);
        g->pd_fwd = fftw_plan_dft_2d(h, w, (fftw_complex *)g->ws[0].c, (fftw_complex *)g->ws[0].c, FFTW_FORWARD, FFTW_ESTIMATE);
        g->pd_inv = fftw_plan_dft_2d(h, w, (fftw_complex *)g->ws[0].c, (fftw_complex *)g->ws[0].c, FFTW_BACKWARD, FFTW_ESTIMATE);
    }
    if (!g->pf_fwd || !g->pf_inv || !g->pd_fwd || !g->pd_inv) {
        lss_grid_free(g);
        return lss_seterr(LSS_ERR_NOMEM, "lss_grid_create: FFTW could not plan a %d x %d transform", h, w);
    }
    *out = g;
    return LSS_OK;
}

LSSDEF int lss_grid_h(const lss_grid *g) { return g ? g->h : 0; }
LSSDEF int lss_grid_w(const lss_grid *g) { return g ? g->w : 0; }
LSSDEF int64_t lss_grid_npix(const lss_grid *g) { return g ? g->n : 0; }
LSSDEF double lss_grid_pix_arcmin(const lss_grid *g) { return g ? g->pix_arcmin : 0.0; }
LSSDEF double lss_grid_pix_rad(const lss_grid *g) { return g ? g->pix_rad : 0.0; }
LSSDEF double lss_grid_k2(const lss_grid *g, int64_t i) { return (g && i >= 0 && i < g->n) ? g->kk[i] : NAN; }
LSSDEF double lss_grid_ell(const lss_grid *g, int64_t i) {
    return (g && i >= 0 && i < g->n) ? 2.0 * LSS__PI * sqrt(g->kk[i]) / g->pix_rad : NAN;
}
LSSDEF const float *lss_grid_cos2(const lss_grid *g) { return g ? g->c2 : NULL; }
LSSDEF const float *lss_grid_sin2(const lss_grid *g) { return g ? g->s2 : NULL; }

LSSDEF void lss_grid_fft(const lss_grid *g, lss_cfloat *buf, int sign) {
    fftwf_execute_dft(sign < 0 ? g->pf_fwd : g->pf_inv, (fftwf_complex *)buf, (fftwf_complex *)buf);
}
LSSDEF void lss_grid_fft_d(const lss_grid *g, lss_cdouble *buf, int sign) {
    fftw_execute_dft(sign < 0 ? g->pd_fwd : g->pd_inv, (fftw_complex *)buf, (fftw_complex *)buf);
}

/* ---- spectra and fields */
LSSDEF int lss_grid_spectrum(const lss_grid *g, const double *ell, const double *cl, int n, double *pk) {
    int64_t i;
    int j;
    double pix2;
    if (!g || !ell || !cl || !pk) return lss_seterr(LSS_ERR_ARG, "lss_grid_spectrum: NULL argument");
    if (n < 2) return lss_seterr(LSS_ERR_ARG, "lss_grid_spectrum: need at least 2 (ell, C_ell) rows, got %d", n);
    for (j = 0; j < n; j++) {
        if (!isfinite(ell[j]) || !isfinite(cl[j]) || cl[j] < 0)
            return lss_seterr(LSS_ERR_ARG, "lss_grid_spectrum: row %d (ell %g, C_ell %g) is not finite and >= 0", j, ell[j], cl[j]);
        if (j && !(ell[j] > ell[j - 1]))
            return lss_seterr(LSS_ERR_ARG, "lss_grid_spectrum: ell must increase strictly (row %d: %g after %g)", j, ell[j], ell[j - 1]);
    }
    pix2 = g->pix_rad * g->pix_rad;
    pk[0] = 0.0;
    for (i = 1; i < g->n; i++) {
        double l = lss_grid_ell(g, i), c;
        if (l <= ell[0]) c = cl[0];
        else if (l >= ell[n - 1]) c = cl[n - 1];
        else {
            int lo = 0, hi = n - 1;
            while (hi - lo > 1) {
                int mid = (lo + hi) / 2;
                if (ell[mid] <= l) lo = mid;
                else hi = mid;
            }
            c = cl[lo] + (cl[hi] - cl[lo]) * (l - ell[lo]) / (ell[hi] - ell[lo]);
        }
        pk[i] = c / pix2;
    }
    return LSS_OK;
}

static int lss__grid_check_pk(const lss_grid *g, const double *pk, const char *fn) {
    int64_t i;
    for (i = 0; i < g->n; i++)
        if (!(pk[i] >= 0) || !isfinite(pk[i]))
            return lss_seterr(LSS_ERR_ARG, "%s: grid spectrum cell %lld is %g (must be finite and >= 0)", fn, (long long)i, pk[i]);
    return LSS_OK;
}

/* A field of spectrum pk from the white noise of (seed, stream) in pixel order, in double precision. */
static int lss__grid_colored(const lss_grid *g, const double *pk, uint64_t seed, uint64_t stream, double *wd) {
    lss_grid_ws tmp, *w;
    lss_rng r;
    int64_t i, n = g->n;
    lss_cdouble *c;
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    c = w->c;
    lss_rng_init(&r, seed, stream);
    for (i = 0; i < n; i++) {
        c[i][0] = lss_rng_normal(&r);
        c[i][1] = 0.0;
    }
    lss_grid_fft_d(g, c, -1);
    for (i = 0; i < n; i++) {
        double m = sqrt(pk[i]) / (double)n;
        c[i][0] *= m;
        c[i][1] *= m;
    }
    lss_grid_fft_d(g, c, +1);
    for (i = 0; i < n; i++) wd[i] = c[i][0];
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

LSSDEF int lss_field_gaussian(const lss_grid *g, const double *pk, uint64_t seed, uint64_t stream, float *out) {
    double *wd;
    int64_t i;
    int s;
    if (!g || !pk || !out) return lss_seterr(LSS_ERR_ARG, "lss_field_gaussian: NULL argument");
    if ((s = lss__grid_check_pk(g, pk, "lss_field_gaussian")) != LSS_OK) return s;
    wd = (double *)LSS_MALLOC(sizeof(double) * (size_t)g->n);
    if (!wd) return lss_seterr(LSS_ERR_NOMEM, "lss_field_gaussian: out of memory");
    if ((s = lss__grid_colored(g, pk, seed, stream, wd)) == LSS_OK)
        for (i = 0; i < g->n; i++) out[i] = (float)wd[i];
    LSS_FREE(wd);
    return s;
}

LSSDEF int lss_field_lognormal_spectrum(const lss_grid *g, const double *pk, double lambda, double *pk_gauss) {
    lss_grid_ws tmp, *w;
    int64_t i, n;
    int s;
    lss_cdouble *c;
    if (!g || !pk || !pk_gauss) return lss_seterr(LSS_ERR_ARG, "lss_field_lognormal_spectrum: NULL argument");
    if (!(lambda > 0) || !isfinite(lambda))
        return lss_seterr(LSS_ERR_ARG, "lss_field_lognormal_spectrum: shift %g must be > 0", lambda);
    if ((s = lss__grid_check_pk(g, pk, "lss_field_lognormal_spectrum")) != LSS_OK) return s;
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    n = g->n;
    c = w->c;
    /* xi(r) = (1/N) sum_k P_k e^{ikr} (orthonormal convention: xi(0) = variance per pixel) */
    for (i = 0; i < n; i++) {
        c[i][0] = pk[i] / (double)n;
        c[i][1] = 0.0;
    }
    lss_grid_fft_d(g, c, +1);
    for (i = 0; i < n; i++) {
        double xi = c[i][0] / (lambda * lambda);
        if (xi <= -1.0) {
            double v = c[i][0];
            lss_grid_ws_put(w, &tmp);
            return lss_seterr(LSS_ERR_RANGE, "lss_field_lognormal_spectrum: correlation %g <= -lambda^2 (shift %g too small)", v, lambda);
        }
        c[i][0] = log1p(xi);
        c[i][1] = 0.0;
    }
    lss_grid_fft_d(g, c, -1);
    for (i = 0; i < n; i++) {
        double v = c[i][0];
        pk_gauss[i] = (i == 0 || v < 0) ? 0.0 : v;
    }
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}

LSSDEF int lss_field_lognormal(const lss_grid *g, const double *pk_gauss, double lambda, uint64_t seed,
                               uint64_t stream, float *out) {
    double *wd, var = 0, mean = 0;
    int64_t i;
    int s;
    if (!g || !pk_gauss || !out) return lss_seterr(LSS_ERR_ARG, "lss_field_lognormal: NULL argument");
    if (!(lambda > 0) || !isfinite(lambda))
        return lss_seterr(LSS_ERR_ARG, "lss_field_lognormal: shift %g must be > 0", lambda);
    if ((s = lss__grid_check_pk(g, pk_gauss, "lss_field_lognormal")) != LSS_OK) return s;
    wd = (double *)LSS_MALLOC(sizeof(double) * (size_t)g->n);
    if (!wd) return lss_seterr(LSS_ERR_NOMEM, "lss_field_lognormal: out of memory");
    if ((s = lss__grid_colored(g, pk_gauss, seed, stream, wd)) != LSS_OK) {
        LSS_FREE(wd);
        return s;
    }
    for (i = 0; i < g->n; i++) var += pk_gauss[i];
    var /= (double)g->n;
    for (i = 0; i < g->n; i++) {
        wd[i] = lambda * expm1(wd[i] - 0.5 * var);
        mean += wd[i];
    }
    mean /= (double)g->n;
    for (i = 0; i < g->n; i++) out[i] = (float)(wd[i] - mean);
    LSS_FREE(wd);
    return LSS_OK;
}

/* ---- binned spectra */
LSSDEF int lss_grid_ps_edges(const lss_grid *g, int nbins, double *edges) {
    int s;
    if (!g || !edges) return lss_seterr(LSS_ERR_ARG, "lss_grid_ps_edges: NULL argument");
    s = lss_ps_edges(2.0 * LSS__PI / (g->pix_rad * (g->h > g->w ? g->h : g->w)), LSS__PI / g->pix_rad, nbins, 0, edges);
    if (s == LSS_OK) edges[nbins] *= 1.0 + 1e-9;
    return s;
}

/* Mean of v over the modes of each bin (k = 0 excluded); ell_mean (may be NULL) the mean ell. */
static int lss__grid_bin(const lss_grid *g, const double *edges, int nbins, const double *v, double *ell_mean,
                         double *out, const char *fn) {
    int64_t i, *cnt;
    int k;
    cnt = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)nbins);
    if (!cnt) return lss_seterr(LSS_ERR_NOMEM, "%s: out of memory", fn);
    for (k = 0; k < nbins; k++) {
        out[k] = 0;
        cnt[k] = 0;
        if (ell_mean) ell_mean[k] = 0;
    }
    for (i = 1; i < g->n; i++) {
        double l = lss_grid_ell(g, i);
        int b = lss__ps_bin_of(edges, nbins, l);
        if (b < 0) continue;
        out[b] += v[i];
        if (ell_mean) ell_mean[b] += l;
        cnt[b]++;
    }
    for (k = 0; k < nbins; k++) {
        out[k] = cnt[k] ? out[k] / (double)cnt[k] : NAN;
        if (ell_mean) ell_mean[k] = cnt[k] ? ell_mean[k] / (double)cnt[k] : NAN;
    }
    LSS_FREE(cnt);
    return LSS_OK;
}

LSSDEF int lss_grid_ps(const lss_grid *g, const float *a, const float *b, const double *edges, int nbins,
                       double *ell_mean, double *cl) {
    lss_grid_ws tmp, *w;
    int64_t i;
    int s;
    lss_cdouble *ca, *cb;
    double *v, pix2;
    if (!g || !a || !cl) return lss_seterr(LSS_ERR_ARG, "lss_grid_ps: NULL argument");
    if ((s = lss__ps_check_edges(edges, nbins, "lss_grid_ps")) != LSS_OK) return s;
    v = (double *)LSS_MALLOC(sizeof(double) * (size_t)g->n);
    if (!v) return lss_seterr(LSS_ERR_NOMEM, "lss_grid_ps: out of memory");
    if (!(w = lss_grid_ws_get(g, &tmp))) {
        LSS_FREE(v);
        return LSS_ERR_NOMEM;
    }
    ca = w->c;
    cb = w->d;
    for (i = 0; i < g->n; i++) {
        ca[i][0] = a[i];
        ca[i][1] = 0;
        cb[i][0] = b ? b[i] : a[i];
        cb[i][1] = 0;
    }
    lss_grid_fft_d(g, ca, -1);
    lss_grid_fft_d(g, cb, -1);
    pix2 = g->pix_rad * g->pix_rad;
    for (i = 0; i < g->n; i++) v[i] = (ca[i][0] * cb[i][0] + ca[i][1] * cb[i][1]) / (double)g->n * pix2;
    lss_grid_ws_put(w, &tmp);
    s = lss__grid_bin(g, edges, nbins, v, ell_mean, cl, "lss_grid_ps");
    LSS_FREE(v);
    return s;
}

LSSDEF int lss_grid_bin_spectrum(const lss_grid *g, const double *pk, const double *edges, int nbins, double *cl) {
    int64_t i;
    int s;
    double *v;
    if (!g || !pk || !cl) return lss_seterr(LSS_ERR_ARG, "lss_grid_bin_spectrum: NULL argument");
    if ((s = lss__ps_check_edges(edges, nbins, "lss_grid_bin_spectrum")) != LSS_OK) return s;
    v = (double *)LSS_MALLOC(sizeof(double) * (size_t)g->n);
    if (!v) return lss_seterr(LSS_ERR_NOMEM, "lss_grid_bin_spectrum: out of memory");
    for (i = 0; i < g->n; i++) v[i] = pk[i] * g->pix_rad * g->pix_rad;
    s = lss__grid_bin(g, edges, nbins, v, NULL, cl, "lss_grid_bin_spectrum");
    LSS_FREE(v);
    return s;
}

/* ---- smoothing */
LSSDEF int lss_grid_smooth(const lss_grid *g, const float *in, float *out, double sigma_arcmin) {
    lss_grid_ws tmp, *w;
    int64_t i, n;
    lss_cfloat *a;
    double c;
    if (!g || !in || !out) return lss_seterr(LSS_ERR_ARG, "lss_grid_smooth: NULL argument");
    if (!(sigma_arcmin >= 0) || !isfinite(sigma_arcmin))
        return lss_seterr(LSS_ERR_ARG, "lss_grid_smooth: smoothing scale %g must be >= 0", sigma_arcmin);
    n = g->n;
    if (sigma_arcmin == 0) {
        if (out != in) memmove(out, in, sizeof(float) * (size_t)n);
        return LSS_OK;
    }
    if (!(w = lss_grid_ws_get(g, &tmp))) return LSS_ERR_NOMEM;
    a = w->a;
    c = 2.0 * LSS__PI * LSS__PI * (sigma_arcmin / g->pix_arcmin) * (sigma_arcmin / g->pix_arcmin);
    for (i = 0; i < n; i++) {
        a[i][0] = in[i];
        a[i][1] = 0.0f;
    }
    lss_grid_fft(g, a, -1);
    for (i = 0; i < n; i++) {
        float m = (float)(exp(-c * g->kk[i]) / (double)n);
        a[i][0] *= m;
        a[i][1] *= m;
    }
    lss_grid_fft(g, a, +1);
    for (i = 0; i < n; i++) out[i] = a[i][0];
    lss_grid_ws_put(w, &tmp);
    return LSS_OK;
}
/* ---- map statistics: histograms, peaks, Minkowski functionals, bispectrum, SSIM, distances ---- */
static const lss_stat_opts lss__stat_default_opts = {0, 0, 0, 0, 0, 0};

static int lss__stat_check_maps(const lss_grid *g, const float *maps, int n, const char *fn) {
    int64_t i, np;
    int m;
    if (!g || !maps) return lss_seterr(LSS_ERR_ARG, "%s: NULL grid or maps", fn);
    if (n < 1) return lss_seterr(LSS_ERR_SHAPE, "%s: need at least one map (got %d)", fn, n);
    np = g->n;
    for (m = 0; m < n; m++)
        for (i = 0; i < np; i++)
            if (!isfinite(maps[(int64_t)m * np + i]))
                return lss_seterr(LSS_ERR_ARG, "%s: map %d pixel (%lld, %lld) is %g (NaN/inf)", fn, m,
                                  (long long)(i / g->w), (long long)(i % g->w), (double)maps[(int64_t)m * np + i]);
    return LSS_OK;
}

static int lss__stat_check_opts(const lss_stat_opts *o, const char *fn) {
    if (!(o->smooth_arcmin >= 0) || !isfinite(o->smooth_arcmin))
        return lss_seterr(LSS_ERR_ARG, "%s: smoothing scale %g must be finite and >= 0", fn, o->smooth_arcmin);
    if (o->ps_mode != LSS_STAT_PS_SECTION && o->ps_mode != LSS_STAT_PS_LENSTOOLS)
        return lss_seterr(LSS_ERR_ARG, "%s: unknown power-spectrum mode %d", fn, o->ps_mode);
    if (o->peaks != LSS_STAT_PEAKS_LENSTOOLS && o->peaks != LSS_STAT_PEAKS_5X5)
        return lss_seterr(LSS_ERR_ARG, "%s: unknown peak definition %d", fn, o->peaks);
    if (o->hist != LSS_STAT_HIST_COUNTS && o->hist != LSS_STAT_HIST_DENSITY)
        return lss_seterr(LSS_ERR_ARG, "%s: unknown histogram normalisation %d", fn, o->hist);
    if (o->fold_ratio != 0 && !(o->fold_ratio > 0 && o->fold_ratio < 1))
        return lss_seterr(LSS_ERR_ARG, "%s: folding ratio %g must lie in (0, 1)", fn, o->fold_ratio);
    return LSS_OK;
}

/* Thresholds of any sign: nbins >= 1, finite, strictly increasing. */
static int lss__stat_check_thr(const double *t, int nbins, const char *fn) {
    int b;
    if (!t) return lss_seterr(LSS_ERR_ARG, "%s: thresholds are NULL", fn);
    if (nbins < 1 || nbins > 1000000) return lss_seterr(LSS_ERR_ARG, "%s: need at least 2 thresholds (got %d bins)", fn, nbins);
    for (b = 0; b <= nbins; b++) {
        if (!isfinite(t[b])) return lss_seterr(LSS_ERR_ARG, "%s: threshold %d is %g", fn, b, t[b]);
        if (b && !(t[b] > t[b - 1]))
            return lss_seterr(LSS_ERR_ARG, "%s: thresholds must increase strictly (%d: %g after %g)", fn, b, t[b], t[b - 1]);
    }
    return LSS_OK;
}

/* Population mean and std (ddof 0) over the stack of each[n][nv]. */
static void lss__stat_reduce(const double *each, int n, int nv, double *mean, double *std) {
    int v, m;
    for (v = 0; v < nv; v++) {
        double s = 0, q = 0, mu;
        for (m = 0; m < n; m++) s += each[(int64_t)m * nv + v];
        mu = s / n;
        for (m = 0; m < n; m++) {
            double d = each[(int64_t)m * nv + v] - mu;
            q += d * d;
        }
        if (mean) mean[v] = mu;
        if (std) std[v] = sqrt(q / n);
    }
}

/* Runs fn over every map of a stack: prepares the (smoothed) map in float and double, and its std. */
typedef int (*lss__stat_fn)(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                            const void *arg, double *out);
typedef struct {
    const double *edges;
    int nbins, config;
    double *ell;
} lss__stat_arg;

static double lss__stat_std(const double *x, int64_t n) {
    double s = 0, q = 0, mu;
    int64_t i;
    for (i = 0; i < n; i++) s += x[i];
    mu = s / (double)n;
    for (i = 0; i < n; i++) q += (x[i] - mu) * (x[i] - mu);
    return sqrt(q / (double)n);
}

static int lss__stat_run(const lss_grid *g, const float *maps, int n, const lss_stat_opts *o, lss__stat_fn fn,
                         const void *arg, int nv, double *each, double *mean, double *std, const char *name) {
    float *mf = NULL;
    double *md = NULL, *own = NULL;
    int64_t i, np;
    int m, s = LSS_OK;
    if ((s = lss__stat_check_maps(g, maps, n, name)) != LSS_OK) return s;
    if ((s = lss__stat_check_opts(o, name)) != LSS_OK) return s;
    np = g->n;
    mf = (float *)LSS_MALLOC(sizeof(float) * (size_t)np);
    md = (double *)LSS_MALLOC(sizeof(double) * (size_t)np);
    if (!each) own = each = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * (size_t)nv);
    if (!mf || !md || !each) {
        s = lss_seterr(LSS_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (m = 0; m < n && s == LSS_OK; m++) {
        const float *src = maps + (int64_t)m * np;
        double sigma = 1.0;
        if (o->smooth_arcmin > 0) {
            if ((s = lss_grid_smooth(g, src, mf, o->smooth_arcmin)) != LSS_OK) break;
        } else memcpy(mf, src, sizeof(float) * (size_t)np);
        for (i = 0; i < np; i++) md[i] = mf[i];
        if (o->norm) {
            sigma = lss__stat_std(md, np);
            if (!(sigma > 0)) {
                s = lss_seterr(LSS_ERR_NUMERIC, "%s: map %d is constant: thresholds in units of its std are undefined", name, m);
                break;
            }
        }
        s = fn(g, mf, md, sigma, o, arg, each + (int64_t)m * nv);
    }
    if (s == LSS_OK) lss__stat_reduce(each, n, nv, mean, std);
done:
    LSS_FREE(mf);
    LSS_FREE(md);
    LSS_FREE(own);
    return s;
}

/* The LensTools bin of a multipole: edges[b] < l <= edges[b + 1], or -1. */
static int lss__stat_bin_lt(const double *e, int nbins, double l) {
    int lo = 0, hi = nbins;
    if (!(l > e[0]) || !(l <= e[nbins])) return -1;
    while (hi - lo > 1) { /* invariant: e[lo] < l <= e[hi] */
        int mid = (lo + hi) / 2;
        if (l > e[mid]) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* The bin [t_b s, t_{b+1} s) of a value, or -1 (thresholds scaled exactly as LensTools: t[b] * s). */
static int lss__stat_bin_thr(const double *t, int nbins, double s, double v) {
    int lo = 0, hi = nbins;
    if (!(v >= t[0] * s) || !(v < t[nbins] * s)) return -1;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v >= t[mid] * s) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* Unnormalised double FFT of a real map into the workspace buffer c (full plane). */
static int lss__stat_fft(const lss_grid *g, const double *md, lss_grid_ws **w, lss_grid_ws *tmp) {
    int64_t i;
    if (!(*w = lss_grid_ws_get(g, tmp))) return LSS_ERR_NOMEM;
    for (i = 0; i < g->n; i++) {
        (*w)->c[i][0] = md[i];
        (*w)->c[i][1] = 0;
    }
    lss_grid_fft_d(g, (*w)->c, -1);
    return LSS_OK;
}

static int lss__stat_ps_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                            const void *arg, double *out) {
    const lss__stat_arg *a = (const lss__stat_arg *)arg;
    lss_grid_ws tmp, *w;
    int64_t *hits;
    int iy, ix, b, s, h = g->h, W = g->w;
    double lpy, lpx;
    (void)sigma;
    if (o->ps_mode == LSS_STAT_PS_SECTION) return lss_grid_ps(g, mf, NULL, a->edges, a->nbins, a->ell, out);
    hits = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)a->nbins);
    if (!hits) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_ps: out of memory");
    if ((s = lss__stat_fft(g, md, &w, &tmp)) != LSS_OK) {
        LSS_FREE(hits);
        return s;
    }
    for (b = 0; b < a->nbins; b++) {
        out[b] = 0;
        hits[b] = 0;
    }
    lpy = 360.0 / (h * g->pix_arcmin / 60.0);
    lpx = 360.0 / (W * g->pix_arcmin / 60.0);
    for (iy = 0; iy < h; iy++) {
        double lx = (iy < h - iy ? iy : h - iy) * lpy;
        for (ix = 0; ix <= W / 2; ix++) {
            double ly = ix * lpx, l = sqrt(lx * lx + ly * ly);
            const double *c = w->c[(int64_t)iy * W + ix];
            if ((b = lss__stat_bin_lt(a->edges, a->nbins, l)) < 0) continue;
            out[b] += c[0] * c[0] + c[1] * c[1];
            hits[b]++;
        }
    }
    lss_grid_ws_put(w, &tmp);
    for (b = 0; b < a->nbins; b++)
        if (hits[b] > 0) out[b] = g->pix_rad * g->pix_rad / ((double)h * W) * out[b] / (double)hits[b];
    if (a->ell)
        for (b = 0; b < a->nbins; b++) a->ell[b] = 0.5 * (a->edges[b] + a->edges[b + 1]);
    LSS_FREE(hits);
    return LSS_OK;
}

LSSDEF int lss_stat_ps(const lss_grid *g, const float *maps, int n, const double *edges, int nbins,
                       const lss_stat_opts *o, double *ell, double *each, double *mean, double *std) {
    lss__stat_arg a;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if ((s = lss__ps_check_edges(edges, nbins, "lss_stat_ps")) != LSS_OK) return s;
    a.edges = edges;
    a.nbins = nbins;
    a.config = 0;
    a.ell = ell;
    return lss__stat_run(g, maps, n, o, lss__stat_ps_one, &a, nbins, each, mean, std, "lss_stat_ps");
}

/* LensTools' second leg of a triangle from the first (integer wavenumbers); 1 = skip this k1. */
static int lss__stat_leg2(int config, double ratio, int kx1, int ky1, int *kx2, int *ky2) {
    if (config == LSS_STAT_BISP_EQUILATERAL) {
        const double S120 = 0.8660254037844386, C120 = -0.5, T120 = -1.7320508075688772;
        if (kx1 < 0 && ky1 < kx1 * T120) return 1;
        *kx2 = (int)(C120 * kx1 - S120 * ky1);
        *ky2 = (int)(S120 * kx1 + C120 * ky1);
    } else {
        *kx2 = -(int)(ratio * kx1);
        *ky2 = -(int)(ratio * ky1);
    }
    return 0;
}

/* Reads the rfft2 cell of wavenumber (kx, ky) from the full-plane FFT; 1 = outside LensTools' bounds. */
static int lss__stat_leg(lss_cdouble *c, int N, int kx, int ky, double *re, double *im) {
    int ny = N / 2 + 1, conj = 0;
    if (ky < 0) {
        kx = -kx;
        ky = -ky;
        conj = 1;
    }
    if (ky >= ny || kx <= -ny || kx >= ny) return 1;
    if (kx < 0) kx += N;
    *re = c[(int64_t)kx * N + ky][0];
    *im = conj ? -c[(int64_t)kx * N + ky][1] : c[(int64_t)kx * N + ky][1];
    return 0;
}

static int lss__stat_bisp_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                              const void *arg, double *out) {
    const lss__stat_arg *a = (const lss__stat_arg *)arg;
    lss_grid_ws tmp, *w;
    int64_t *hits;
    int i, j, b, s, N = g->h, ny = N / 2 + 1;
    double angle = N * g->pix_arcmin / 60.0, lpix = 360.0 / angle, ratio = o->fold_ratio > 0 ? o->fold_ratio : 0.5;
    double norm = pow(angle * LSS__PI / 180.0, 4) / pow((double)N, 6);
    (void)mf;
    (void)sigma;
    hits = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)a->nbins);
    if (!hits) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_bispectrum: out of memory");
    if ((s = lss__stat_fft(g, md, &w, &tmp)) != LSS_OK) {
        LSS_FREE(hits);
        return s;
    }
    for (b = 0; b < a->nbins; b++) {
        out[b] = 0;
        hits[b] = 0;
    }
    for (i = 0; i < N; i++) {
        int kx1 = i < (N >> 1) ? i : i - N;
        for (j = 0; j < ny; j++) {
            int ky1 = j, kx2, ky2;
            double l = sqrt((double)(kx1 * kx1 + ky1 * ky1)) * lpix, r1, i1, r2, i2, r3, i3;
            if (l >= a->edges[a->nbins]) continue;
            if (lss__stat_leg2(a->config, ratio, kx1, ky1, &kx2, &ky2)) continue;
            if (lss__stat_leg(w->c, N, kx2, ky2, &r2, &i2)) continue;
            if (lss__stat_leg(w->c, N, -kx1 - kx2, -ky1 - ky2, &r3, &i3)) continue;
            if ((b = lss__stat_bin_lt(a->edges, a->nbins, l)) < 0) continue;
            r1 = w->c[(int64_t)i * N + j][0];
            i1 = w->c[(int64_t)i * N + j][1];
            hits[b]++;
            out[b] += r1 * r2 * r3 - r1 * i2 * i3 - i1 * r2 * i3 - i1 * i2 * r3;
        }
    }
    lss_grid_ws_put(w, &tmp);
    for (b = 0; b < a->nbins; b++)
        if (hits[b] > 0) out[b] = norm * out[b] / (double)hits[b];
    if (a->ell)
        for (b = 0; b < a->nbins; b++) a->ell[b] = 0.5 * (a->edges[b] + a->edges[b + 1]);
    LSS_FREE(hits);
    return LSS_OK;
}

LSSDEF int lss_stat_bispectrum(const lss_grid *g, const float *maps, int n, int config, const double *edges,
                               int nbins, const lss_stat_opts *o, double *ell, double *each, double *mean,
                               double *std) {
    lss__stat_arg a;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if (!g) return lss_seterr(LSS_ERR_ARG, "lss_stat_bispectrum: NULL grid");
    if (g->h != g->w)
        return lss_seterr(LSS_ERR_SHAPE, "lss_stat_bispectrum: the triangle rotations need a square map (got %d x %d)", g->h, g->w);
    if (config != LSS_STAT_BISP_EQUILATERAL && config != LSS_STAT_BISP_FOLDED)
        return lss_seterr(LSS_ERR_ARG, "lss_stat_bispectrum: unknown configuration %d (equilateral 0, folded 1)", config);
    if ((s = lss__ps_check_edges(edges, nbins, "lss_stat_bispectrum")) != LSS_OK) return s;
    a.edges = edges;
    a.nbins = nbins;
    a.config = config;
    a.ell = ell;
    return lss__stat_run(g, maps, n, o, lss__stat_bisp_one, &a, nbins, each, mean, std, "lss_stat_bispectrum");
}

static int lss__stat_moments_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                                  const void *a, double *out) {
    int64_t k, np = (int64_t)g->h * g->w;
    double m = 0, m2 = 0, m3 = 0, m4 = 0;
    (void)mf; (void)sigma; (void)o; (void)a;
    for (k = 0; k < np; k++) m += md[k];
    m /= (double)np;
    for (k = 0; k < np; k++) {
        double d = md[k] - m, d2 = d * d;
        m2 += d2; m3 += d2 * d; m4 += d2 * d2;
    }
    m2 /= (double)np; m3 /= (double)np; m4 /= (double)np;
    out[0] = m;
    out[1] = sqrt(m2);
    if (m2 > 0) {
        out[2] = m3 / pow(m2, 1.5);
        out[3] = m4 / (m2 * m2) - 3;
        out[4] = m3 / (m2 * m2);
        out[5] = (m4 - 3 * m2 * m2) / (m2 * m2 * m2);
    } else out[2] = out[3] = out[4] = out[5] = NAN;
    return LSS_OK;
}

LSSDEF int lss_stat_moments(const lss_grid *g, const float *maps, int n, const lss_stat_opts *o, double *each,
                            double *mean, double *std) {
    lss__stat_arg a;
    if (!o) o = &lss__stat_default_opts;
    memset(&a, 0, sizeof a);
    return lss__stat_run(g, maps, n, o, lss__stat_moments_one, &a, LSS_STAT_NMOMENTS, each, mean, std, "lss_stat_moments");
}

LSSDEF int lss_stat_joint_moments_size(int nch) { return nch < 1 ? 0 : 3 * nch + 3 * nch * (nch - 1) / 2; }

LSSDEF int lss_stat_joint_moments(const float *maps, int nch, int64_t npix, double *out) {
    double mean[64], *d;
    int64_t k;
    int a, b, o;
    if (!maps || !out || nch < 1 || nch > 64 || npix < 2)
        return lss_seterr(LSS_ERR_ARG, "lss_stat_joint_moments: NULL argument, %d channels (1..64) or %lld pixels", nch, (long long)npix);
    d = (double *)LSS_MALLOC(sizeof(double) * (size_t)nch * (size_t)npix);
    if (!d) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_joint_moments: out of memory");
    for (a = 0; a < nch; a++) {
        const float *x = maps + (size_t)a * (size_t)npix;
        double s = 0;
        for (k = 0; k < npix; k++) {
            if (!isfinite(x[k])) {
                LSS_FREE(d);
                return lss_seterr(LSS_ERR_NUMERIC, "lss_stat_joint_moments: channel %d pixel %lld is not finite", a, (long long)k);
            }
            s += x[k];
        }
        mean[a] = s / (double)npix;
        for (k = 0; k < npix; k++) d[(size_t)a * npix + k] = x[k] - mean[a];
    }
    for (a = 0; a < nch; a++) {
        const double *u = d + (size_t)a * npix;
        double m2 = 0, m3 = 0, m4 = 0;
        for (k = 0; k < npix; k++) { double q = u[k] * u[k]; m2 += q; m3 += q * u[k]; m4 += q * q; }
        out[3 * a] = m2 / (double)npix; out[3 * a + 1] = m3 / (double)npix; out[3 * a + 2] = m4 / (double)npix;
    }
    o = 3 * nch;
    for (a = 0; a < nch; a++)
        for (b = a + 1; b < nch; b++, o += 3) {
            const double *u = d + (size_t)a * npix, *v = d + (size_t)b * npix;
            double c11 = 0, c21 = 0, c12 = 0;
            for (k = 0; k < npix; k++) { double uv = u[k] * v[k]; c11 += uv; c21 += uv * u[k]; c12 += uv * v[k]; }
            out[o] = c11 / (double)npix; out[o + 1] = c21 / (double)npix; out[o + 2] = c12 / (double)npix;
        }
    LSS_FREE(d);
    return LSS_OK;
}

static int lss__stat_hist_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                              const void *arg, double *out) {
    const lss__stat_arg *a = (const lss__stat_arg *)arg;
    const double *e = a->edges;
    int64_t i, tot = 0;
    int b, nb = a->nbins;
    double lo = e[0] * sigma, hi = e[nb] * sigma;
    (void)mf;
    for (b = 0; b < nb; b++) out[b] = 0;
    for (i = 0; i < g->n; i++) {
        double v = md[i];
        if (!(v >= lo) || !(v <= hi)) continue;
        if (v == hi) b = nb - 1;
        else b = lss__stat_bin_thr(e, nb, sigma, v);
        if (b < 0) continue;
        out[b] += 1.0;
        tot++;
    }
    if (o->hist == LSS_STAT_HIST_DENSITY)
        for (b = 0; b < nb; b++) out[b] = tot ? out[b] / ((double)tot * (e[b + 1] - e[b])) : NAN;
    return LSS_OK;
}

LSSDEF int lss_stat_hist(const lss_grid *g, const float *maps, int n, const double *edges, int nbins,
                         const lss_stat_opts *o, double *each, double *mean, double *std) {
    lss__stat_arg a;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if ((s = lss__stat_check_thr(edges, nbins, "lss_stat_hist")) != LSS_OK) return s;
    a.edges = edges;
    a.nbins = nbins;
    a.config = 0;
    a.ell = NULL;
    return lss__stat_run(g, maps, n, o, lss__stat_hist_one, &a, nbins, each, mean, std, "lss_stat_hist");
}

/* Peak test of pixel (y, x): LensTools' 8 periodic neighbours, or the 24 neighbours of a 5 x 5 window inside
   the map. */
static int lss__stat_is_peak(const double *m, int h, int w, int y, int x, int mode) {
    double v = m[(int64_t)y * w + x];
    int dy, dx;
    if (mode == LSS_STAT_PEAKS_LENSTOOLS) {
        for (dy = -1; dy <= 1; dy++)
            for (dx = -1; dx <= 1; dx++) {
                int yy = (y + dy + h) % h, xx = (x + dx + w) % w;
                if ((dy || dx) && !(v > m[(int64_t)yy * w + xx])) return 0;
            }
        return 1;
    }
    for (dy = -2; dy <= 2; dy++)
        for (dx = -2; dx <= 2; dx++) {
            int yy = y + dy, xx = x + dx;
            if ((!dy && !dx) || yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            if (!(v > m[(int64_t)yy * w + xx])) return 0;
        }
    return 1;
}

typedef struct {
    int64_t *pos;
    double *height;
    int64_t cap, count;
} lss__stat_peak_arg;

static int lss__stat_peaks_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                               const void *arg, double *out) {
    lss__stat_peak_arg *a = (lss__stat_peak_arg *)(void *)(uintptr_t)arg;
    int y, x;
    (void)mf;
    (void)out;
    a->count = 0;
    for (y = 0; y < g->h; y++)
        for (x = 0; x < g->w; x++)
            if (lss__stat_is_peak(md, g->h, g->w, y, x, o->peaks)) {
                if (a->count < a->cap) {
                    if (a->pos) a->pos[a->count] = (int64_t)y * g->w + x;
                    if (a->height) a->height[a->count] = md[(int64_t)y * g->w + x] / sigma;
                }
                a->count++;
            }
    return LSS_OK;
}

LSSDEF int lss_stat_peaks(const lss_grid *g, const float *map, const lss_stat_opts *o, int64_t *pos,
                          double *height, int64_t cap, int64_t *npeaks) {
    lss__stat_peak_arg a;
    double dummy;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if (!npeaks) return lss_seterr(LSS_ERR_ARG, "lss_stat_peaks: npeaks is NULL");
    *npeaks = 0;
    if (cap < 0) return lss_seterr(LSS_ERR_ARG, "lss_stat_peaks: capacity %lld < 0", (long long)cap);
    a.pos = pos;
    a.height = height;
    a.cap = cap;
    a.count = 0;
    s = lss__stat_run(g, map, 1, o, lss__stat_peaks_one, &a, 1, &dummy, NULL, NULL, "lss_stat_peaks");
    if (s == LSS_OK) *npeaks = a.count;
    return s;
}

static int lss__stat_pcount_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                                const void *arg, double *out) {
    const lss__stat_arg *a = (const lss__stat_arg *)arg;
    int y, x, b;
    (void)mf;
    for (b = 0; b < a->nbins; b++) out[b] = 0;
    for (y = 0; y < g->h; y++)
        for (x = 0; x < g->w; x++) {
            double v = md[(int64_t)y * g->w + x];
            if ((b = lss__stat_bin_thr(a->edges, a->nbins, sigma, v)) < 0) continue;
            if (lss__stat_is_peak(md, g->h, g->w, y, x, o->peaks)) out[b] += 1.0;
        }
    for (b = 0; b < a->nbins; b++) out[b] /= a->edges[b + 1] - a->edges[b];
    return LSS_OK;
}

LSSDEF int lss_stat_peak_counts(const lss_grid *g, const float *maps, int n, const double *thresholds, int nbins,
                                const lss_stat_opts *o, double *each, double *mean, double *std) {
    lss__stat_arg a;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if ((s = lss__stat_check_thr(thresholds, nbins, "lss_stat_peak_counts")) != LSS_OK) return s;
    a.edges = thresholds;
    a.nbins = nbins;
    a.config = 0;
    a.ell = NULL;
    return lss__stat_run(g, maps, n, o, lss__stat_pcount_one, &a, nbins, each, mean, std, "lss_stat_peak_counts");
}

static int lss__stat_mink_one(const lss_grid *g, const float *mf, const double *md, double sigma, const lss_stat_opts *o,
                              const void *arg, double *out) {
    const lss__stat_arg *a = (const lss__stat_arg *)arg;
    const double *t = a->edges;
    int nb = a->nbins, h = g->h, w = g->w, y, x, b;
    int64_t *cnt, np = g->n;
    double *v0 = out, *v1 = out + nb, *v2 = out + 2 * nb, npix = (double)np;
    (void)mf;
    (void)o;
    cnt = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)(nb + 1));
    if (!cnt) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_minkowski: out of memory");
    for (b = 0; b < 3 * nb; b++) out[b] = 0;
    for (b = 0; b <= nb; b++) cnt[b] = 0;
    for (y = 0; y < h; y++) {
        const double *r0 = md + (int64_t)y * w, *rp1 = md + (int64_t)((y + 1) % h) * w, *rm1 = md + (int64_t)((y - 1 + h) % h) * w;
        const double *rp2 = md + (int64_t)((y + 2) % h) * w, *rm2 = md + (int64_t)((y - 2 + 2 * h) % h) * w;
        for (x = 0; x < w; x++) {
            int xp1 = (x + 1) % w, xm1 = (x - 1 + w) % w, xp2 = (x + 2) % w, xm2 = (x - 2 + 2 * w) % w, lo, hi;
            double v = r0[x], gx, gy, hxx, hyy, hxy, i1, i2, g2;
            /* V0: number of midpoints (t_b + t_{b+1}) sigma / 2 that v reaches */
            lo = 0;
            hi = nb;
            if (!(v >= (t[0] + t[1]) * sigma / 2)) lo = -1;
            else {
                while (hi - lo > 1) { /* v >= mid[lo], v < mid[hi] (mid[nb] = +inf) */
                    int m = (lo + hi) / 2;
                    if (v >= (t[m] + t[m + 1]) * sigma / 2) lo = m;
                    else hi = m;
                }
            }
            cnt[lo + 1]++;
            if ((b = lss__stat_bin_thr(t, nb, sigma, v)) < 0) continue;
            gx = (r0[xp1] - r0[xm1]) / 2.0;
            gy = (rp1[x] - rm1[x]) / 2.0;
            hxx = (r0[xp2] + r0[xm2] - 2 * v) / 4.0;
            hyy = (rp2[x] + rm2[x] - 2 * v) / 4.0;
            hxy = (rp1[xp1] + rm1[xm1] - rp1[xm1] - rm1[xp1]) / 4.0;
            g2 = gx * gx + gy * gy;
            i1 = 0.25 * sqrt(g2);
            if (g2 == 0.0) i2 = (2 * hxy - hxx - hyy) / (4.0 * LSS__PI);
            else i2 = ((2 * gx * gy * hxy - gx * gx * hyy - gy * gy * hxx) / g2) / (2.0 * LSS__PI);
            v1[b] += i1 / (npix * (t[b + 1] - t[b]));
            v2[b] += i2 / (npix * (t[b + 1] - t[b]));
        }
    }
    /* V0[b] = pixels reaching midpoint b = those whose count of reached midpoints exceeds b */
    {
        int64_t acc = 0;
        for (b = nb - 1; b >= 0; b--) {
            acc += cnt[b + 1];
            v0[b] = (double)acc / npix;
        }
    }
    LSS_FREE(cnt);
    return LSS_OK;
}

LSSDEF int lss_stat_minkowski(const lss_grid *g, const float *maps, int n, const double *thresholds, int nbins,
                              const lss_stat_opts *o, double *each, double *mean, double *std) {
    lss__stat_arg a;
    int s;
    if (!o) o = &lss__stat_default_opts;
    if ((s = lss__stat_check_thr(thresholds, nbins, "lss_stat_minkowski")) != LSS_OK) return s;
    if (g && (g->h < 3 || g->w < 3))
        return lss_seterr(LSS_ERR_SHAPE, "lss_stat_minkowski: the finite differences need a map of at least 3 x 3 (got %d x %d)", g->h, g->w);
    a.edges = thresholds;
    a.nbins = nbins;
    a.config = 0;
    a.ell = NULL;
    return lss__stat_run(g, maps, n, o, lss__stat_mink_one, &a, 3 * nbins, each, mean, std, "lss_stat_minkowski");
}

/* ---- distances between sets */
typedef struct {
    double v, w;
} lss__stat_vw;
static int lss__stat_vw_cmp(const void *a, const void *b) {
    double x = ((const lss__stat_vw *)a)->v, y = ((const lss__stat_vw *)b)->v;
    return x < y ? -1 : x > y;
}
static int lss__stat_dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int lss__stat_sample(const double *x, const double *wt, int64_t n, lss__stat_vw *out, double *total, const char *which) {
    int64_t i;
    double t = 0;
    for (i = 0; i < n; i++) {
        if (!isfinite(x[i])) return lss_seterr(LSS_ERR_ARG, "lss_stat_wasserstein1: %s value %lld is %g", which, (long long)i, x[i]);
        out[i].v = x[i];
        out[i].w = wt ? wt[i] : 1.0;
        if (!(out[i].w >= 0) || !isfinite(out[i].w))
            return lss_seterr(LSS_ERR_ARG, "lss_stat_wasserstein1: %s weight %lld is %g (must be finite and >= 0)", which, (long long)i, out[i].w);
    }
    qsort(out, (size_t)n, sizeof *out, lss__stat_vw_cmp);
    for (i = 0; i < n; i++) t += out[i].w; /* numpy cumsum order (sorted) */
    if (!(t > 0)) return lss_seterr(LSS_ERR_ARG, "lss_stat_wasserstein1: %s weights sum to %g (must be > 0)", which, t);
    *total = t;
    return LSS_OK;
}

LSSDEF int lss_stat_wasserstein1(const double *u, const double *uw, int64_t nu, const double *v, const double *vw,
                                 int64_t nv, double *out) {
    lss__stat_vw *su = NULL, *sv = NULL;
    double *all = NULL, tu = 0, tv = 0, cu = 0, cv = 0, acc = 0;
    int64_t i, iu = 0, iv = 0, n;
    int s = LSS_OK;
    if (!u || !v || !out) return lss_seterr(LSS_ERR_ARG, "lss_stat_wasserstein1: NULL argument");
    if (nu < 1 || nv < 1) return lss_seterr(LSS_ERR_SHAPE, "lss_stat_wasserstein1: empty sample (%lld and %lld values)", (long long)nu, (long long)nv);
    n = nu + nv;
    su = (lss__stat_vw *)LSS_MALLOC(sizeof *su * (size_t)nu);
    sv = (lss__stat_vw *)LSS_MALLOC(sizeof *sv * (size_t)nv);
    all = (double *)LSS_MALLOC(sizeof *all * (size_t)n);
    if (!su || !sv || !all) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_stat_wasserstein1: out of memory");
        goto done;
    }
    if ((s = lss__stat_sample(u, uw, nu, su, &tu, "first")) != LSS_OK) goto done;
    if ((s = lss__stat_sample(v, vw, nv, sv, &tv, "second")) != LSS_OK) goto done;
    for (i = 0; i < nu; i++) all[i] = su[i].v;
    for (i = 0; i < nv; i++) all[nu + i] = sv[i].v;
    qsort(all, (size_t)n, sizeof *all, lss__stat_dbl_cmp);
    /* CDFs at all[k] with searchsorted(..., 'right') semantics, then sum |U - V| (all[k+1] - all[k]) */
    for (i = 0; i + 1 < n; i++) {
        double du, dv;
        while (iu < nu && su[iu].v <= all[i]) cu += su[iu++].w;
        while (iv < nv && sv[iv].v <= all[i]) cv += sv[iv++].w;
        du = uw ? cu / tu : (double)iu / (double)nu;
        dv = vw ? cv / tv : (double)iv / (double)nv;
        acc += fabs(du - dv) * (all[i + 1] - all[i]);
    }
    *out = acc;
done:
    LSS_FREE(su);
    LSS_FREE(sv);
    LSS_FREE(all);
    return s;
}

static int lss__stat_check_rows(const double *x, int n, int d, int nmin, const char *fn, const char *which) {
    int64_t i;
    if (!x) return lss_seterr(LSS_ERR_ARG, "%s: %s is NULL", fn, which);
    if (n < nmin || d < 1) return lss_seterr(LSS_ERR_SHAPE, "%s: %s has %d rows of %d values (need >= %d rows, >= 1 value)", fn, which, n, d, nmin);
    for (i = 0; i < (int64_t)n * d; i++)
        if (!isfinite(x[i])) return lss_seterr(LSS_ERR_ARG, "%s: %s row %lld value %lld is %g", fn, which, (long long)(i / d), (long long)(i % d), x[i]);
    return LSS_OK;
}

/* Column means and covariance c[d][d] with divisor n - ddof. */
static void lss__stat_cov(const double *x, int n, int d, int ddof, double *mu, double *c) {
    int i, j, k;
    for (j = 0; j < d; j++) {
        double s = 0;
        for (k = 0; k < n; k++) s += x[(int64_t)k * d + j];
        mu[j] = s / n;
    }
    for (i = 0; i < d; i++)
        for (j = i; j < d; j++) {
            double s = 0;
            for (k = 0; k < n; k++) s += (x[(int64_t)k * d + i] - mu[i]) * (x[(int64_t)k * d + j] - mu[j]);
            c[(int64_t)i * d + j] = c[(int64_t)j * d + i] = s / (n - ddof);
        }
}

LSSDEF int lss_stat_corr(const double *x, int n, int d, double *r) {
    double *mu;
    int i, j, s;
    if (!r) return lss_seterr(LSS_ERR_ARG, "lss_stat_corr: output is NULL");
    if ((s = lss__stat_check_rows(x, n, d, 2, "lss_stat_corr", "x")) != LSS_OK) return s;
    mu = (double *)LSS_MALLOC(sizeof(double) * (size_t)d);
    if (!mu) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_corr: out of memory");
    lss__stat_cov(x, n, d, 1, mu, r);
    LSS_FREE(mu);
    for (i = 0; i < d; i++)
        if (!(r[(int64_t)i * d + i] > 0))
            return lss_seterr(LSS_ERR_NUMERIC, "lss_stat_corr: value %d has zero variance over the %d samples", i, n);
    for (i = 0; i < d; i++)
        for (j = 0; j < d; j++)
            if (i != j) {
                double c = r[(int64_t)i * d + j] / sqrt(r[(int64_t)i * d + i]) / sqrt(r[(int64_t)j * d + j]);
                r[(int64_t)i * d + j] = c > 1 ? 1 : c < -1 ? -1 : c;
            }
    for (i = 0; i < d; i++) r[(int64_t)i * d + i] = 1.0;
    return LSS_OK;
}

LSSDEF int lss_stat_corr_frob(const double *xa, int na, const double *xb, int nb, int d, double *frob, double *frac) {
    double *ra, *rb, fa = 0, fb = 0, fd = 0;
    int64_t i, dd = (int64_t)d * d;
    int s;
    if (d < 1 || d > 65536) return lss_seterr(LSS_ERR_SHAPE, "lss_stat_corr_frob: %d values per sample", d);
    ra = (double *)LSS_MALLOC(sizeof(double) * (size_t)dd * 2);
    if (!ra) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_corr_frob: out of memory");
    rb = ra + dd;
    if ((s = lss_stat_corr(xa, na, d, ra)) == LSS_OK && (s = lss_stat_corr(xb, nb, d, rb)) == LSS_OK) {
        for (i = 0; i < dd; i++) {
            fa += ra[i] * ra[i];
            fb += rb[i] * rb[i];
            fd += (ra[i] - rb[i]) * (ra[i] - rb[i]);
        }
        if (frob) *frob = sqrt(fd);
        if (frac) *frac = (sqrt(fa) - sqrt(fb)) / sqrt(fb);
    }
    LSS_FREE(ra);
    return s;
}

LSSDEF int lss_stat_reldiff(const double *sa, int na, const double *sb, int nb, int d, double *diff, double *scatter) {
    double *m;
    int j, s;
    if ((s = lss__stat_check_rows(sa, na, d, 1, "lss_stat_reldiff", "first set")) != LSS_OK) return s;
    if ((s = lss__stat_check_rows(sb, nb, d, 1, "lss_stat_reldiff", "reference set")) != LSS_OK) return s;
    m = (double *)LSS_MALLOC(sizeof(double) * (size_t)d * 3);
    if (!m) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_reldiff: out of memory");
    lss__stat_reduce(sa, na, d, m, NULL);
    lss__stat_reduce(sb, nb, d, m + d, m + 2 * d);
    for (j = 0; j < d; j++) {
        double mb = fabs(m[d + j]);
        if (diff) diff[j] = mb > 0 ? (m[j] - m[d + j]) / mb : NAN;
        if (scatter) scatter[j] = mb > 0 ? m[2 * d + j] / mb : NAN;
    }
    LSS_FREE(m);
    return LSS_OK;
}

/* ---- SSIM (scikit-image) and MS-SSIM (TensorFlow) */
/* scipy.ndimage 'reflect' index (d c b a | a b c d) for any offset. */
static int lss__stat_reflect(int i, int n) {
    int p = 2 * n;
    i %= p;
    if (i < 0) i += p;
    return i < n ? i : p - 1 - i;
}

/* Separable correlation of x[h][w] with k[2r+1] along both axes, 'reflect' borders; tmp h*w. */
static void lss__stat_filter(const double *x, int h, int w, const double *k, int r, double *tmp, double *out) {
    int y, X, j;
    for (y = 0; y < h; y++)
        for (X = 0; X < w; X++) {
            double s = 0;
            for (j = -r; j <= r; j++) s += k[j + r] * x[(int64_t)y * w + lss__stat_reflect(X + j, w)];
            tmp[(int64_t)y * w + X] = s;
        }
    for (y = 0; y < h; y++)
        for (X = 0; X < w; X++) {
            double s = 0;
            for (j = -r; j <= r; j++) s += k[j + r] * tmp[(int64_t)lss__stat_reflect(y + j, h) * w + X];
            out[(int64_t)y * w + X] = s;
        }
}

static int lss__stat_ssim_pair_check(const float *a, const float *b, int h, int w, const char *fn) {
    int64_t i;
    if (!a || !b) return lss_seterr(LSS_ERR_ARG, "%s: NULL map", fn);
    if (h < 1 || w < 1) return lss_seterr(LSS_ERR_SHAPE, "%s: map of %d x %d", fn, h, w);
    for (i = 0; i < (int64_t)h * w; i++)
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return lss_seterr(LSS_ERR_ARG, "%s: pixel (%lld, %lld) is NaN/inf", fn, (long long)(i / w), (long long)(i % w));
    return LSS_OK;
}

static double lss__stat_range(const float *a, const float *b, int64_t n) {
    double lo = a[0], hi = a[0];
    int64_t i;
    for (i = 0; i < n; i++) {
        if (a[i] < lo) lo = a[i];
        if (a[i] > hi) hi = a[i];
        if (b[i] < lo) lo = b[i];
        if (b[i] > hi) hi = b[i];
    }
    return hi - lo;
}

LSSDEF int lss_stat_ssim(const float *a, const float *b, int h, int w, const lss_ssim_opts *o, double *out) {
    static const lss_ssim_opts dflt = {0, 0, 0, 0, 0, 0, 0, 0, 0, NULL};
    double *buf, *k, sigma, k1, k2, R, c1, c2, cov_norm, acc = 0;
    double *xa, *xb, *ux, *uy, *uxx, *uyy, *uxy, *tmp;
    int64_t i, np = (int64_t)h * w;
    int win, r, y, x, s;
    if (!o) o = &dflt;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_stat_ssim: output is NULL");
    if ((s = lss__stat_ssim_pair_check(a, b, h, w, "lss_stat_ssim")) != LSS_OK) return s;
    sigma = o->sigma > 0 ? o->sigma : 1.5;
    k1 = o->k1 > 0 ? o->k1 : 0.01;
    k2 = o->k2 > 0 ? o->k2 : 0.03;
    if (!(o->sigma >= 0) || !(o->k1 >= 0) || !(o->k2 >= 0) || !(o->data_range >= 0) || !isfinite(o->data_range))
        return lss_seterr(LSS_ERR_ARG, "lss_stat_ssim: sigma, k1, k2 and data_range must be finite and >= 0");
    win = o->win_size > 0 ? o->win_size : (o->gaussian ? 2 * (int)(3.5 * sigma + 0.5) + 1 : 7);
    if (win % 2 == 0 || win > h || win > w)
        return lss_seterr(LSS_ERR_SHAPE, "lss_stat_ssim: window %d must be odd and fit the %d x %d map", win, h, w);
    R = o->data_range > 0 ? o->data_range : lss__stat_range(a, b, np);
    if (!(R > 0)) return lss_seterr(LSS_ERR_NUMERIC, "lss_stat_ssim: both maps are constant and equal (data range 0)");
    r = (win - 1) / 2;
    buf = (double *)LSS_MALLOC(sizeof(double) * ((size_t)np * 8 + (size_t)win));
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_ssim: out of memory");
    xa = buf; xb = xa + np; ux = xb + np; uy = ux + np; uxx = uy + np; uyy = uxx + np; uxy = uyy + np; tmp = uxy + np;
    k = tmp + np;
    if (o->gaussian) {
        /* scipy gaussian_filter1d: radius int(truncate sigma + 0.5) (the window follows win_size when given) */
        double ks = 0;
        for (y = -r; y <= r; y++) ks += (k[y + r] = exp(-0.5 * y * y / (sigma * sigma)));
        for (y = 0; y < win; y++) k[y] /= ks;
    } else
        for (y = 0; y < win; y++) k[y] = 1.0 / win;
    for (i = 0; i < np; i++) {
        xa[i] = a[i];
        xb[i] = b[i];
    }
    lss__stat_filter(xa, h, w, k, r, tmp, ux);
    lss__stat_filter(xb, h, w, k, r, tmp, uy);
    for (i = 0; i < np; i++) uxy[i] = xa[i] * xa[i];
    lss__stat_filter(uxy, h, w, k, r, tmp, uxx);
    for (i = 0; i < np; i++) uxy[i] = xb[i] * xb[i];
    lss__stat_filter(uxy, h, w, k, r, tmp, uyy);
    for (i = 0; i < np; i++) xa[i] *= xb[i];
    lss__stat_filter(xa, h, w, k, r, tmp, uxy);
    cov_norm = o->population_cov ? 1.0 : (double)win * win / ((double)win * win - 1);
    c1 = (k1 * R) * (k1 * R);
    c2 = (k2 * R) * (k2 * R);
    for (y = r; y < h - r; y++)
        for (x = r; x < w - r; x++) {
            int64_t j = (int64_t)y * w + x;
            double vx = cov_norm * (uxx[j] - ux[j] * ux[j]), vy = cov_norm * (uyy[j] - uy[j] * uy[j]);
            double vxy = cov_norm * (uxy[j] - ux[j] * uy[j]);
            double A1 = 2 * ux[j] * uy[j] + c1, A2 = 2 * vxy + c2, B1 = ux[j] * ux[j] + uy[j] * uy[j] + c1, B2 = vx + vy + c2;
            acc += (A1 * A2) / (B1 * B2);
        }
    *out = acc / ((double)(h - 2 * r) * (w - 2 * r));
    LSS_FREE(buf);
    return LSS_OK;
}

/* TensorFlow's per-scale SSIM and cs: 'VALID' Gaussian filter k[f] (separable), means over the valid region. */
static void lss__stat_tf_scale(const double *x, const double *y, int h, int w, const double *k, int f, double c1, double c2,
                               double *tmp, double *ssim, double *cs) {
    int oh = h - f + 1, ow = w - f + 1, i, j, t, q;
    double acc_s = 0, acc_c = 0;
    /* five filtered maps: x, y, x y, x^2 + y^2 ... computed per output pixel by the separable sums */
    double *rows = tmp; /* [5][h][ow] */
    for (i = 0; i < h; i++)
        for (j = 0; j < ow; j++) {
            double sx = 0, sy = 0, sxy = 0, sq = 0;
            for (t = 0; t < f; t++) {
                double xv = x[(int64_t)i * w + j + t], yv = y[(int64_t)i * w + j + t];
                sx += k[t] * xv;
                sy += k[t] * yv;
                sxy += k[t] * (xv * yv);
                sq += k[t] * (xv * xv + yv * yv);
            }
            rows[(int64_t)i * ow + j] = sx;
            rows[(int64_t)h * ow + (int64_t)i * ow + j] = sy;
            rows[2 * (int64_t)h * ow + (int64_t)i * ow + j] = sxy;
            rows[3 * (int64_t)h * ow + (int64_t)i * ow + j] = sq;
        }
    for (i = 0; i < oh; i++)
        for (j = 0; j < ow; j++) {
            double m[4] = {0, 0, 0, 0}, num0, den0, lum, c;
            for (q = 0; q < 4; q++)
                for (t = 0; t < f; t++) m[q] += k[t] * rows[q * (int64_t)h * ow + (int64_t)(i + t) * ow + j];
            num0 = m[0] * m[1] * 2.0;
            den0 = m[0] * m[0] + m[1] * m[1];
            lum = (num0 + c1) / (den0 + c1);
            c = (m[2] * 2.0 - num0 + c2) / (m[3] - den0 + c2);
            acc_s += lum * c;
            acc_c += c;
        }
    *ssim = acc_s / ((double)oh * ow);
    *cs = acc_c / ((double)oh * ow);
}

LSSDEF int lss_stat_msssim(const float *a, const float *b, int h, int w, const lss_ssim_opts *o, double *out) {
    static const lss_ssim_opts dflt = {0, 0, 0, 0, 0, 0, 0, 0, 0, NULL};
    static const double tfw[5] = {0.0448, 0.2856, 0.3001, 0.2363, 0.1333};
    const double *pw;
    double *buf, *x, *y, *nx, *ny, *tmp, *k, sigma, k1, k2, R, c1, c2, ks = 0, res = 1.0;
    int64_t i, np = (int64_t)h * w;
    int f, ns, sc, ch = h, cw = w, t, s;
    if (!o) o = &dflt;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_stat_msssim: output is NULL");
    if ((s = lss__stat_ssim_pair_check(a, b, h, w, "lss_stat_msssim")) != LSS_OK) return s;
    if (!(o->sigma >= 0) || !(o->k1 >= 0) || !(o->k2 >= 0) || !(o->data_range >= 0) || !isfinite(o->data_range))
        return lss_seterr(LSS_ERR_ARG, "lss_stat_msssim: sigma, k1, k2 and data_range must be finite and >= 0");
    sigma = o->sigma > 0 ? o->sigma : 1.5;
    k1 = o->k1 > 0 ? o->k1 : 0.01;
    k2 = o->k2 > 0 ? o->k2 : 0.03;
    f = o->filter_size > 0 ? o->filter_size : 11;
    ns = o->nscales > 0 ? o->nscales : 5;
    if (!o->power && ns > 5) return lss_seterr(LSS_ERR_ARG, "lss_stat_msssim: %d scales need explicit power factors", ns);
    pw = o->power ? o->power : tfw;
    for (sc = 0; sc < ns; sc++)
        if (!isfinite(pw[sc])) return lss_seterr(LSS_ERR_ARG, "lss_stat_msssim: power factor %d is %g", sc, pw[sc]);
    for (sc = 0; sc < ns; sc++) {
        if (ch < f || cw < f)
            return lss_seterr(LSS_ERR_SHAPE, "lss_stat_msssim: scale %d is %d x %d, smaller than the %d-pixel filter "
                              "(map %d x %d too small for %d scales)", sc, ch, cw, f, h, w, ns);
        ch = (ch + 1) / 2;
        cw = (cw + 1) / 2;
    }
    R = o->data_range > 0 ? o->data_range : lss__stat_range(a, b, np);
    if (!(R > 0)) return lss_seterr(LSS_ERR_NUMERIC, "lss_stat_msssim: both maps are constant and equal (data range 0)");
    c1 = (k1 * R) * (k1 * R);
    c2 = (k2 * R) * (k2 * R);
    buf = (double *)LSS_MALLOC(sizeof(double) * ((size_t)np * 9 + (size_t)f));
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_msssim: out of memory");
    x = buf; y = x + np; nx = y + np; ny = nx + np; tmp = ny + np; k = tmp + 4 * np;
    for (t = 0; t < f; t++) ks += (k[t] = exp(-0.5 * (t - (f - 1) / 2.0) * (t - (f - 1) / 2.0) / (sigma * sigma)));
    for (t = 0; t < f; t++) k[t] /= ks;
    for (i = 0; i < np; i++) {
        x[i] = a[i];
        y[i] = b[i];
    }
    ch = h;
    cw = w;
    for (sc = 0; sc < ns; sc++) {
        double ssim, cs, v;
        if (sc > 0) { /* SYMMETRIC pad of odd sides at the end, then 2 x 2 average pooling */
            int nh = (ch + 1) / 2, nw = (cw + 1) / 2, i2, j2;
            for (i2 = 0; i2 < nh; i2++)
                for (j2 = 0; j2 < nw; j2++) {
                    int y0 = 2 * i2, y1 = 2 * i2 + 1 < ch ? 2 * i2 + 1 : ch - 1;
                    int x0 = 2 * j2, x1 = 2 * j2 + 1 < cw ? 2 * j2 + 1 : cw - 1;
                    nx[(int64_t)i2 * nw + j2] = (x[(int64_t)y0 * cw + x0] + x[(int64_t)y0 * cw + x1] + x[(int64_t)y1 * cw + x0] + x[(int64_t)y1 * cw + x1]) / 4.0;
                    ny[(int64_t)i2 * nw + j2] = (y[(int64_t)y0 * cw + x0] + y[(int64_t)y0 * cw + x1] + y[(int64_t)y1 * cw + x0] + y[(int64_t)y1 * cw + x1]) / 4.0;
                }
            ch = nh;
            cw = nw;
            memcpy(x, nx, sizeof(double) * (size_t)ch * cw);
            memcpy(y, ny, sizeof(double) * (size_t)ch * cw);
        }
        lss__stat_tf_scale(x, y, ch, cw, k, f, c1, c2, tmp, &ssim, &cs);
        v = sc == ns - 1 ? ssim : cs;
        if (v < 0) v = 0; /* relu */
        res *= pow(v, pw[sc]);
    }
    *out = res;
    LSS_FREE(buf);
    return LSS_OK;
}

LSSDEF int lss_stat_ssim_set(const float *a, int na, const float *b, int nb, int h, int w, int multiscale,
                             int64_t npairs, uint64_t seed, const lss_ssim_opts *o, double *mean, double *std) {
    int64_t np = (int64_t)h * w, total, k;
    double s1 = 0, s2 = 0, v, mu;
    lss_rng r;
    int s = LSS_OK, i, j;
    if (!a || (b && nb < 1) || na < 1 || h < 1 || w < 1)
        return lss_seterr(LSS_ERR_SHAPE, "lss_stat_ssim_set: need maps (got %d and %d maps of %d x %d)", na, b ? nb : 0, h, w);
    if (!b && na < 2) return lss_seterr(LSS_ERR_SHAPE, "lss_stat_ssim_set: within-set pairs need at least 2 maps (got %d)", na);
    if (npairs < 0) return lss_seterr(LSS_ERR_ARG, "lss_stat_ssim_set: %lld pairs", (long long)npairs);
    total = b ? (int64_t)na * nb : (int64_t)na * (na - 1) / 2;
    if (npairs == 0) npairs = total;
    lss_rng_for(&r, seed, LSS_STREAM_CHECK, 0, 7u);
    i = 0;
    j = b ? 0 : 1;
    for (k = 0; k < npairs; k++) {
        const float *x, *y;
        if (npairs == total) { /* every pair in order */
            x = a + (int64_t)i * np;
            y = b ? b + (int64_t)j * np : a + (int64_t)j * np;
            if (++j >= (b ? nb : na)) {
                i++;
                j = b ? 0 : i + 1;
            }
        } else {
            int p = (int)lss_rng_below(&r, (uint32_t)na), q;
            if (b) q = (int)lss_rng_below(&r, (uint32_t)nb);
            else {
                q = (int)lss_rng_below(&r, (uint32_t)(na - 1));
                if (q >= p) q++;
            }
            x = a + (int64_t)p * np;
            y = b ? b + (int64_t)q * np : a + (int64_t)q * np;
        }
        s = multiscale ? lss_stat_msssim(x, y, h, w, o, &v) : lss_stat_ssim(x, y, h, w, o, &v);
        if (s != LSS_OK) return s;
        s1 += v;
        s2 += v * v;
    }
    mu = s1 / (double)npairs;
    if (mean) *mean = mu;
    if (std) *std = sqrt(fmax(s2 / (double)npairs - mu * mu, 0.0));
    return LSS_OK;
}

LSSDEF double lss_stat_ssim_significance(double mean_a, double std_a, double mean_b, double std_b) {
    return (mean_a - mean_b) / ((std_a + std_b) / 2.0);
}

/* Cyclic Jacobi eigen-decomposition of the symmetric a[d][d] (destroyed): eigenvalues ev[d], eigenvectors as the
   columns of v[d][d] (may be NULL). */
static int lss__stat_jacobi(double *a, int d, double *ev, double *v) {
    int sweep, p, q, k;
    if (v)
        for (p = 0; p < d; p++)
            for (q = 0; q < d; q++) v[(int64_t)p * d + q] = p == q;
    for (sweep = 0; sweep < 100; sweep++) {
        double off = 0, tot = 0;
        for (p = 0; p < d; p++)
            for (q = 0; q < d; q++) {
                double x = a[(int64_t)p * d + q] * a[(int64_t)p * d + q];
                tot += x;
                if (p != q) off += x;
            }
        if (off <= 1e-30 * tot || off == 0) break;
        for (p = 0; p < d - 1; p++)
            for (q = p + 1; q < d; q++) {
                double apq = a[(int64_t)p * d + q], app, aqq, th, t, c, sn;
                if (apq == 0) continue;
                app = a[(int64_t)p * d + p];
                aqq = a[(int64_t)q * d + q];
                th = (aqq - app) / (2 * apq);
                t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1));
                c = 1 / sqrt(t * t + 1);
                sn = t * c;
                for (k = 0; k < d; k++) { /* columns p, q */
                    double akp = a[(int64_t)k * d + p], akq = a[(int64_t)k * d + q];
                    a[(int64_t)k * d + p] = c * akp - sn * akq;
                    a[(int64_t)k * d + q] = sn * akp + c * akq;
                }
                for (k = 0; k < d; k++) { /* rows p, q */
                    double apk = a[(int64_t)p * d + k], aqk = a[(int64_t)q * d + k];
                    a[(int64_t)p * d + k] = c * apk - sn * aqk;
                    a[(int64_t)q * d + k] = sn * apk + c * aqk;
                }
                if (v)
                    for (k = 0; k < d; k++) {
                        double vkp = v[(int64_t)k * d + p], vkq = v[(int64_t)k * d + q];
                        v[(int64_t)k * d + p] = c * vkp - sn * vkq;
                        v[(int64_t)k * d + q] = sn * vkp + c * vkq;
                    }
            }
    }
    if (sweep == 100) return lss_seterr(LSS_ERR_NUMERIC, "Frechet distance: the eigen-decomposition did not converge");
    for (p = 0; p < d; p++) ev[p] = a[(int64_t)p * d + p];
    return LSS_OK;
}

LSSDEF int lss_stat_frechet(const double *fa, int na, const double *fb, int nb, int d, int standardize, double *out) {
    double *buf, *xa, *xb, *mua, *mub, *ca, *cb, *v, *ev, *sa, *m, dm = 0, tr = 0, trs = 0;
    int64_t dd = (int64_t)d * d;
    int i, j, k, s;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_stat_frechet: output is NULL");
    if ((s = lss__stat_check_rows(fa, na, d, 2, "lss_stat_frechet", "first feature set")) != LSS_OK) return s;
    if ((s = lss__stat_check_rows(fb, nb, d, 2, "lss_stat_frechet", "second feature set")) != LSS_OK) return s;
    if (d > 2048) return lss_seterr(LSS_ERR_SHAPE, "lss_stat_frechet: %d features (at most 2048)", d);
    buf = (double *)LSS_MALLOC(sizeof(double) * ((size_t)(na + nb) * d + 6 * (size_t)dd + 3 * (size_t)d));
    if (!buf) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_frechet: out of memory");
    xa = buf; xb = xa + (int64_t)na * d; ca = xb + (int64_t)nb * d; cb = ca + dd; v = cb + dd; sa = v + dd; m = sa + dd;
    mua = m + 2 * dd; mub = mua + d; ev = mub + d;
    memcpy(xa, fa, sizeof(double) * (size_t)na * d);
    memcpy(xb, fb, sizeof(double) * (size_t)nb * d);
    if (standardize) {
        lss__stat_reduce(fb, nb, d, mub, ev);
        for (j = 0; j < d; j++) {
            if (!(ev[j] > 0)) {
                LSS_FREE(buf);
                return lss_seterr(LSS_ERR_NUMERIC, "lss_stat_frechet: feature %d of the reference set has zero std", j);
            }
            for (i = 0; i < na; i++) xa[(int64_t)i * d + j] = (xa[(int64_t)i * d + j] - mub[j]) / ev[j];
            for (i = 0; i < nb; i++) xb[(int64_t)i * d + j] = (xb[(int64_t)i * d + j] - mub[j]) / ev[j];
        }
    }
    lss__stat_cov(xa, na, d, 1, mua, ca);
    lss__stat_cov(xb, nb, d, 1, mub, cb);
    for (j = 0; j < d; j++) {
        dm += (mua[j] - mub[j]) * (mua[j] - mub[j]);
        tr += ca[(int64_t)j * d + j] + cb[(int64_t)j * d + j];
    }
    /* sqrt(C_a) = V diag(sqrt(max(l, 0))) V^T */
    memcpy(m, ca, sizeof(double) * (size_t)dd);
    if ((s = lss__stat_jacobi(m, d, ev, v)) != LSS_OK) goto done;
    for (i = 0; i < d; i++)
        for (j = 0; j < d; j++) {
            double acc = 0;
            for (k = 0; k < d; k++) acc += v[(int64_t)i * d + k] * sqrt(fmax(ev[k], 0.0)) * v[(int64_t)j * d + k];
            sa[(int64_t)i * d + j] = acc;
        }
    /* M = sqrt(C_a) C_b sqrt(C_a), symmetric positive semi-definite; tr sqrt(M) = sum sqrt(eigenvalues) */
    for (i = 0; i < d; i++)
        for (j = 0; j < d; j++) {
            double acc = 0;
            for (k = 0; k < d; k++) acc += cb[(int64_t)i * d + k] * sa[(int64_t)k * d + j];
            v[(int64_t)i * d + j] = acc;
        }
    for (i = 0; i < d; i++)
        for (j = i; j < d; j++) {
            double acc = 0;
            for (k = 0; k < d; k++) acc += sa[(int64_t)i * d + k] * v[(int64_t)k * d + j];
            m[(int64_t)i * d + j] = m[(int64_t)j * d + i] = acc;
        }
    if ((s = lss__stat_jacobi(m, d, ev, NULL)) != LSS_OK) goto done;
    for (k = 0; k < d; k++) trs += sqrt(fmax(ev[k], 0.0));
    *out = dm + tr - 2 * trs;
done:
    LSS_FREE(buf);
    return s;
}

/* ---- the two-set comparison */
static int lss__stat_row(lss_stat_row *rows, int cap, int *nr, const char *name, int idx, double v, double sc) {
    if (*nr >= cap) return lss_seterr(LSS_ERR_RANGE, "lss_stat_compare: more than %d rows (raise the capacity)", cap);
    if (idx >= 0) snprintf(rows[*nr].name, sizeof rows[*nr].name, "%s_%d", name, idx);
    else snprintf(rows[*nr].name, sizeof rows[*nr].name, "%s", name);
    rows[*nr].value = v;
    rows[*nr].scatter = sc;
    (*nr)++;
    return LSS_OK;
}

/* The frechet_features row of lss_stat_compare: features of both sets from the caller's extractor. */
static int lss__stat_frechet_row(const lss_grid *g, const float *a, int na, const float *b, int nb,
                                 const lss_stat_compare_opts *o, lss_stat_row *rows, int cap, int *nr) {
    int d = o->nfeatures, hb = nb / 2, s;
    int64_t i;
    double *fa, *fb, fd = 0, fh = 0;
    if (d < 1 || d > 2048) return lss_seterr(LSS_ERR_ARG, "lss_stat_compare: %d features (need 1..2048)", d);
    fa = (double *)LSS_MALLOC(sizeof(double) * (size_t)na * (size_t)d);
    fb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nb * (size_t)d);
    if (!fa || !fb) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_stat_compare: out of memory");
        goto done;
    }
    lss_clearerr();
    if ((s = o->features(o->features_user, a, na, g->h, g->w, fa)) == LSS_OK)
        s = o->features(o->features_user, b, nb, g->h, g->w, fb);
    if (s != LSS_OK) {
        if (!lss_last_error()[0]) lss_seterr(s, "lss_stat_compare: the feature extractor failed (%s)", lss_strerror(s));
        goto done;
    }
    for (i = 0; i < (int64_t)na * d; i++)
        if (!isfinite(fa[i])) { s = lss_seterr(LSS_ERR_NUMERIC, "lss_stat_compare: feature %d of map %d of a is %g", (int)(i % d), (int)(i / d), fa[i]); goto done; }
    for (i = 0; i < (int64_t)nb * d; i++)
        if (!isfinite(fb[i])) { s = lss_seterr(LSS_ERR_NUMERIC, "lss_stat_compare: feature %d of map %d of b is %g", (int)(i % d), (int)(i / d), fb[i]); goto done; }
    if ((s = lss_stat_frechet(fa, na, fb, nb, d, 1, &fd)) != LSS_OK) goto done;
    if ((s = lss_stat_frechet(fb, hb, fb + (int64_t)hb * d, nb - hb, d, 1, &fh)) != LSS_OK) goto done;
    s = lss__stat_row(rows, cap, nr, "frechet_features", -1, sqrt(fd > 0 ? fd : 0), sqrt(fh > 0 ? fh : 0));
done:
    LSS_FREE(fa);
    LSS_FREE(fb);
    return s;
}

/* Standardised peak heights of every map of a stack into a growing array. */
static int lss__stat_all_peaks(const lss_grid *g, const float *maps, int n, const lss_stat_opts *o, double mu, double sd,
                               double **out, int64_t *count) {
    int64_t cap = 0, tot = 0, np, cnt;
    double *h = NULL;
    int m, s;
    for (m = 0; m < n; m++) {
        if ((s = lss_stat_peaks(g, maps + (int64_t)m * g->n, o, NULL, NULL, 0, &np)) != LSS_OK) goto fail;
        cap += np;
    }
    h = (double *)LSS_MALLOC(sizeof(double) * (size_t)(cap > 0 ? cap : 1));
    if (!h) return lss_seterr(LSS_ERR_NOMEM, "lss_stat_compare: out of memory");
    for (m = 0; m < n; m++) {
        if ((s = lss_stat_peaks(g, maps + (int64_t)m * g->n, o, NULL, h + tot, cap - tot, &cnt)) != LSS_OK) goto fail;
        tot += cnt;
    }
    for (np = 0; np < tot; np++) h[np] = (h[np] - mu) / sd;
    *out = h;
    *count = tot;
    return LSS_OK;
fail:
    LSS_FREE(h);
    return s;
}

LSSDEF int lss_stat_compare(const lss_grid *g, const float *a, int na, const float *b, int nb,
                            const lss_stat_compare_opts *o, lss_stat_row *rows, int cap, int *nrows) {
    static const double dthr[13] = {-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4};
    lss_stat_compare_opts dflt;
    lss_stat_opts so;
    double edges_own[9], *thr = NULL, *pa = NULL, *pb = NULL, *sa = NULL, *sb = NULL, *diff = NULL, *scat = NULL;
    double *pka = NULL, *pkb = NULL, mu = 0, sd = 0, v, sc;
    const double *edges;
    int64_t i, np, nall, npa = 0, npb = 0;
    int nell, nthr, nr = 0, s, k, hb, nmax;
    if (!nrows) return lss_seterr(LSS_ERR_ARG, "lss_stat_compare: nrows is NULL");
    *nrows = 0;
    if (!rows || cap < 1) return lss_seterr(LSS_ERR_ARG, "lss_stat_compare: no room for rows");
    if (!o) {
        memset(&dflt, 0, sizeof dflt);
        o = &dflt;
    }
    if (nb < 4 || na < 2)
        return lss_seterr(LSS_ERR_SHAPE, "lss_stat_compare: need >= 2 maps in the first set and >= 4 in the reference (got %d, %d)", na, nb);
    if ((s = lss__stat_check_maps(g, a, na, "lss_stat_compare")) != LSS_OK) return s;
    if ((s = lss__stat_check_maps(g, b, nb, "lss_stat_compare")) != LSS_OK) return s;
    so = o->stat;
    so.norm = 0;
    if (o->ell_edges) {
        edges = o->ell_edges;
        nell = o->nell;
    } else {
        if ((s = lss_grid_ps_edges(g, 8, edges_own)) != LSS_OK) return s;
        edges = edges_own;
        nell = 8;
    }
    if ((s = lss__ps_check_edges(edges, nell, "lss_stat_compare")) != LSS_OK) return s;
    nthr = o->thresholds ? o->nthr : 12;
    if ((s = lss__stat_check_thr(o->thresholds ? o->thresholds : dthr, nthr, "lss_stat_compare")) != LSS_OK) return s;
    np = g->n;
    nall = (int64_t)(na > nb ? na : nb) * np;
    nmax = na > nb ? na : nb;
    pa = (double *)LSS_MALLOC(sizeof(double) * (size_t)nall);
    pb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nall);
    thr = (double *)LSS_MALLOC(sizeof(double) * (size_t)(nthr + 1));
    sa = (double *)LSS_MALLOC(sizeof(double) * (size_t)nmax * 3 * (size_t)(nell > nthr ? nell : nthr));
    sb = (double *)LSS_MALLOC(sizeof(double) * (size_t)nmax * 3 * (size_t)(nell > nthr ? nell : nthr));
    diff = (double *)LSS_MALLOC(sizeof(double) * 6 * (size_t)(nell > nthr ? nell : nthr));
    if (!pa || !pb || !thr || !sa || !sb || !diff) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_stat_compare: out of memory");
        goto done;
    }
    scat = diff + 3 * (nell > nthr ? nell : nthr);
    /* reference pixel mean and std (the paper's normalisation of both sets) */
    for (i = 0; i < (int64_t)nb * np; i++) mu += b[i];
    mu /= (double)nb * np;
    for (i = 0; i < (int64_t)nb * np; i++) sd += (b[i] - mu) * (b[i] - mu);
    sd = sqrt(sd / ((double)nb * np));
    if (!(sd > 0)) {
        s = lss_seterr(LSS_ERR_NUMERIC, "lss_stat_compare: the reference maps are constant");
        goto done;
    }
    for (i = 0; i < (int64_t)na * np; i++) pa[i] = (a[i] - mu) / sd;
    for (i = 0; i < (int64_t)nb * np; i++) pb[i] = (b[i] - mu) / sd;
    hb = nb / 2;
    if ((s = lss_stat_wasserstein1(pa, NULL, (int64_t)na * np, pb, NULL, (int64_t)nb * np, &v)) != LSS_OK) goto done;
    if ((s = lss_stat_wasserstein1(pb, NULL, (int64_t)hb * np, pb + (int64_t)hb * np, NULL, (int64_t)(nb - hb) * np, &sc)) != LSS_OK) goto done;
    if ((s = lss__stat_row(rows, cap, &nr, "w1_pixels", -1, v, sc)) != LSS_OK) goto done;
    /* peak heights */
    if ((s = lss__stat_all_peaks(g, a, na, &so, mu, sd, &pka, &npa)) != LSS_OK) goto done;
    if ((s = lss__stat_all_peaks(g, b, nb, &so, mu, sd, &pkb, &npb)) != LSS_OK) goto done;
    if (npa > 0 && npb > 0) {
        int64_t nh;
        double *pkh = NULL;
        if ((s = lss_stat_wasserstein1(pka, NULL, npa, pkb, NULL, npb, &v)) != LSS_OK) goto done;
        if ((s = lss__stat_all_peaks(g, b, hb, &so, mu, sd, &pkh, &nh)) != LSS_OK) goto done;
        sc = NAN;
        if (nh > 0 && nh < npb) s = lss_stat_wasserstein1(pkh, NULL, nh, pkb + nh, NULL, npb - nh, &sc);
        LSS_FREE(pkh);
        if (s != LSS_OK) goto done;
        if ((s = lss__stat_row(rows, cap, &nr, "w1_peaks", -1, v, sc)) != LSS_OK) goto done;
    }
    /* power spectra and their correlation matrices */
    if ((s = lss_stat_ps(g, a, na, edges, nell, &so, NULL, sa, NULL, NULL)) != LSS_OK) goto done;
    if ((s = lss_stat_ps(g, b, nb, edges, nell, &so, NULL, sb, NULL, NULL)) != LSS_OK) goto done;
    if ((s = lss_stat_reldiff(sa, na, sb, nb, nell, diff, scat)) != LSS_OK) goto done;
    for (k = 0; k < nell; k++)
        if ((s = lss__stat_row(rows, cap, &nr, "ps_rel", k, diff[k], scat[k])) != LSS_OK) goto done;
    if (lss_stat_corr_frob(sa, na, sb, nb, nell, NULL, &v) == LSS_OK &&
        lss_stat_corr_frob(sb, hb, sb + (int64_t)hb * nell, nb - hb, nell, NULL, &sc) == LSS_OK) {
        if ((s = lss__stat_row(rows, cap, &nr, "corr_frac", -1, v, sc)) != LSS_OK) goto done;
    }
    /* folded bispectrum (the paper's configuration) on square maps */
    if (g->h == g->w) {
        if ((s = lss_stat_bispectrum(g, a, na, LSS_STAT_BISP_FOLDED, edges, nell, &so, NULL, sa, NULL, NULL)) != LSS_OK) goto done;
        if ((s = lss_stat_bispectrum(g, b, nb, LSS_STAT_BISP_FOLDED, edges, nell, &so, NULL, sb, NULL, NULL)) != LSS_OK) goto done;
        if ((s = lss_stat_reldiff(sa, na, sb, nb, nell, diff, scat)) != LSS_OK) goto done;
        for (k = 0; k < nell; k++)
            if ((s = lss__stat_row(rows, cap, &nr, "bisp_rel", k, diff[k], scat[k])) != LSS_OK) goto done;
    }
    /* Minkowski functionals on thresholds scaled by the reference std */
    for (k = 0; k <= nthr; k++) thr[k] = (o->thresholds ? o->thresholds[k] : dthr[k]) * sd + mu;
    if ((s = lss_stat_minkowski(g, a, na, thr, nthr, &so, sa, NULL, NULL)) != LSS_OK) goto done;
    if ((s = lss_stat_minkowski(g, b, nb, thr, nthr, &so, sb, NULL, NULL)) != LSS_OK) goto done;
    if ((s = lss_stat_reldiff(sa, na, sb, nb, 3 * nthr, diff, scat)) != LSS_OK) goto done;
    for (k = 0; k < 3 * nthr; k++) {
        static const char *const nm[3] = {"mink_v0_rel", "mink_v1_rel", "mink_v2_rel"};
        if ((s = lss__stat_row(rows, cap, &nr, nm[k / nthr], k % nthr, diff[k], scat[k])) != LSS_OK) goto done;
    }
    /* SSIM significance (eq. 4) of within-set scores */
    if (o->ssim_pairs >= 0) {
        int ms = g->h >= 176 && g->w >= 176;
        int64_t pairs = o->ssim_pairs > 0 ? o->ssim_pairs : 200;
        double ma, sda, mb, sdb;
        if ((s = lss_stat_ssim_set(a, na, NULL, 0, g->h, g->w, ms, pairs, o->seed, NULL, &ma, &sda)) != LSS_OK) goto done;
        if ((s = lss_stat_ssim_set(b, nb, NULL, 0, g->h, g->w, ms, pairs, o->seed, NULL, &mb, &sdb)) != LSS_OK) goto done;
        if ((s = lss__stat_row(rows, cap, &nr, "ssim_significance", -1, lss_stat_ssim_significance(ma, sda, mb, sdb), 1.0)) != LSS_OK) goto done;
    }
    /* Frechet distance of caller-computed features */
    if (o->features && (s = lss__stat_frechet_row(g, a, na, b, nb, o, rows, cap, &nr)) != LSS_OK) goto done;
    *nrows = nr;
done:
    LSS_FREE(pa);
    LSS_FREE(pb);
    LSS_FREE(thr);
    LSS_FREE(sa);
    LSS_FREE(sb);
    LSS_FREE(diff);
    LSS_FREE(pka);
    LSS_FREE(pkb);
    return s;
}
/* ==== END STATISTICS IMPLEMENTATION ==== */
/* ==== N-BODY IMPLEMENTATION ==== */
LSSDEF void lss_shellset_free(lss_shellset *s) {
    if (!s) return;
    LSS_FREE(s->z_edges);
    LSS_FREE(s->delta);
    memset(s, 0, sizeof *s);
}

/* ---- N-body: internals ---- */
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(__cplusplus)
#define LSS__NB_TLS thread_local
#elif defined(_MSC_VER)
#define LSS__NB_TLS __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define LSS__NB_TLS _Thread_local
#else
#define LSS__NB_TLS __thread
#endif
#define LSS__NB_BLOCK 8192          /* particles per block of every particle loop (fixed: same bits at any thread count) */
#define LSS__NB_TWO32 4294967296.0
#define LSS__NB_CKPT_SECONDS 30.0   /* a checkpoint at most every 30 s of steps */
#define LSS__NB_TN 65               /* chi(t) nodes per drift, uniform in t */
#define LSS__NB_SHTAB 4096          /* entries of the light cone's shell table */
#define LSS__NB_FORMAT 1            /* checkpoint format version (part of the fingerprint) */
#define LSS__NB_TWOPI 6.283185307179586476925

/* test switches (the results are the same bits either way): lss__nb_nosort 1 keeps a serial run's particles unsorted
   (every painting and readout then takes its general path), 2 also leaves the sort's buffers unallocated (as when
   they do not fit); lss__nb_lc_shared 1 makes every thread add its light-cone crossings atomically */
static int lss__nb_nosort = 0, lss__nb_lc_shared = 0;
static int lss__nb_readout_vec = 1; /* 0: the scalar band readout only (a test switch; the same bits) */

static LSS__NB_TLS int lss__nb_cancelled = 0;
LSSDEF void lss_nbody_cancel(void) { lss__nb_cancelled = 1; }

static int lss__nb_nthreads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- growth: D(a) ~ E(a) int_0^a da'/(a'E)^3 (flat LCDM without radiation) ---- */
static const double lss__nb_glx[8] = {-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
                                      0.1834346424956498,  0.5255324099163290,  0.7966664774136267,  0.9602898564975363};
static const double lss__nb_glw[8] = {0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
                                      0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763};
/* int_0^a da' a'^(3/2) (om + ol a'^3)^(-3/2) = int_0^a da'/(a'E)^3: a series of (ol a^3/om) below a = 0.05, then
   8-point Gauss-Legendre on panels of at most 0.02 in a */
static double lss__nb_gint(double om, double ol, double a) {
    static const double cn[7] = {1.0, -1.5, 1.875, -2.1875, 2.4609375, -2.70703125, 2.9326171875};
    double a0 = a < 0.05 ? a : 0.05, u = ol / om * a0 * a0 * a0, un = 1, s = 0, h;
    int n, np, i, j;
    for (n = 0; n < 7; n++) { s += cn[n] * un / (2.5 + 3 * n); un *= u; }
    s *= pow(a0, 2.5) / (om * sqrt(om));
    if (a <= a0) return s;
    np = (int)ceil((a - a0) / 0.02);
    h = (a - a0) / np;
    for (i = 0; i < np; i++) {
        double m = a0 + (i + 0.5) * h, t = 0;
        for (j = 0; j < 8; j++) {
            double x = m + 0.5 * h * lss__nb_glx[j], w = om + ol * x * x * x;
            t += lss__nb_glw[j] * x * sqrt(x) / (w * sqrt(w));
        }
        s += 0.5 * h * t;
    }
    return s;
}
/* unnormalised D(a) = 5/2 om E I(a) and dD/da = 5/2 om (E' I + E / (aE)^3) */
static void lss__nb_growth_raw(double om, double ol, double a, double *d, double *dd) {
    double e = sqrt(om / (a * a * a) + ol), ie = lss__nb_gint(om, ol, a), ae = a * e;
    double ep = -1.5 * om / (a * a * a * a * e);
    *d = 2.5 * om * e * ie;
    *dd = 2.5 * om * (ep * ie + e / (ae * ae * ae));
}

/* ---- FFTs: 2-D plane transforms, then 1-D transforms along x ---- */
/* The x transforms of one ky row are done in chunks of LSS__NB_FFTW columns gathered into a small contiguous
   per-thread buffer (strided transforms over the whole mesh thrash the cache at n >= 256). */
#define LSS__NB_FFTW 16
typedef struct {
    int n, cp;                   /* grid side; complex entries per row (n/2 + 1 rounded up to a multiple of 4) */
    int nthr;                    /* thread buffers */
    fftwf_plan r2c, c2r;         /* one plane */
    fftwf_plan f1, b1, f1r, b1r; /* x transforms of LSS__NB_FFTW columns, and of the remainder */
    fftwf_complex *tbuf;         /* [nthr][n][LSS__NB_FFTW] */
} lss__nbfft;

static int lss__nb_cp(int n) { return (n / 2 + 1 + 3) & ~3; }
/* floats of a padded n^3 grid: [x][y][2 cp] (real) = [x][y][cp] (complex) */
static size_t lss__nb_gridfloats(int n) { return (size_t)n * (size_t)n * (size_t)(2 * lss__nb_cp(n)); }

static void lss__nbfft_free(lss__nbfft *f) {
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        if (f->r2c) fftwf_destroy_plan(f->r2c);
        if (f->c2r) fftwf_destroy_plan(f->c2r);
        if (f->f1) fftwf_destroy_plan(f->f1);
        if (f->b1) fftwf_destroy_plan(f->b1);
        if (f->f1r) fftwf_destroy_plan(f->f1r);
        if (f->b1r) fftwf_destroy_plan(f->b1r);
    }
    if (f->tbuf) fftwf_free(f->tbuf);
    memset(f, 0, sizeof *f);
}

/* plans for grids of side n laid out as above, made on buf (FFTW_ESTIMATE does not touch it); executed on any grid
   of the same layout whose start has buf's alignment (planes keep it: cp is a multiple of 4) */
static int lss__nbfft_init(lss__nbfft *f, int n, float *buf, int nthr) {
    int nn[2], rin[2], cin[2], cp = lss__nb_cp(n), ok, len = n, w = LSS__NB_FFTW, wr = (n / 2 + 1) % LSS__NB_FFTW;
    fftwf_complex *cb = (fftwf_complex *)buf;
    memset(f, 0, sizeof *f);
    f->n = n;
    f->cp = cp;
    f->nthr = nthr;
    f->tbuf = (fftwf_complex *)fftwf_malloc(sizeof(fftwf_complex) * (size_t)nthr * n * LSS__NB_FFTW);
    if (!f->tbuf) return lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory for FFT buffers");
    nn[0] = nn[1] = n;
    rin[0] = n; rin[1] = 2 * cp;
    cin[0] = n; cin[1] = cp;
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        f->r2c = fftwf_plan_many_dft_r2c(2, nn, 1, buf, rin, 1, 0, cb, cin, 1, 0, FFTW_ESTIMATE);
        f->c2r = fftwf_plan_many_dft_c2r(2, nn, 1, cb, cin, 1, 0, buf, rin, 1, 0, FFTW_ESTIMATE);
        f->f1 = fftwf_plan_many_dft(1, &len, w, f->tbuf, NULL, w, 1, f->tbuf, NULL, w, 1, FFTW_FORWARD, FFTW_ESTIMATE);
        f->b1 = fftwf_plan_many_dft(1, &len, w, f->tbuf, NULL, w, 1, f->tbuf, NULL, w, 1, FFTW_BACKWARD, FFTW_ESTIMATE);
        if (wr) {
            f->f1r = fftwf_plan_many_dft(1, &len, wr, f->tbuf, NULL, wr, 1, f->tbuf, NULL, wr, 1, FFTW_FORWARD, FFTW_ESTIMATE);
            f->b1r = fftwf_plan_many_dft(1, &len, wr, f->tbuf, NULL, wr, 1, f->tbuf, NULL, wr, 1, FFTW_BACKWARD, FFTW_ESTIMATE);
        }
    }
    ok = f->r2c && f->c2r && f->f1 && f->b1 && (!wr || (f->f1r && f->b1r));
    if (!ok) {
        lss__nbfft_free(f);
        return lss_seterr(LSS_ERR_NOMEM, "N-body: FFTW could not plan the %d^3 transforms", n);
    }
    return LSS_OK;
}

/* The layout of a grid held here: real planes x0 .. x0 + nx - 1 ([x - x0][y][2 cp] floats), and after the forward
   transform the complex rows ky = y0 .. y0 + ny - 1, entry (kx, ky, kz) at (kx sx + (ky - y0) sy) cp + kz. A serial
   grid holds everything in place (sx = n, sy = 1); a distributed one (LSS_MPI) holds a slab of x planes, and its
   transform ends transposed (sx = 1, sy = n: a slab of ky rows) after an FFTW-MPI transpose. */
typedef struct {
    int n, cp, x0, nx, y0, ny;
    size_t sx, sy;               /* in rows of cp complex entries */
    size_t floats;               /* floats of one grid buffer held here */
    void *tp;                    /* FFTW-MPI transpose plan (distributed grids), NULL otherwise */
} lss__nbgrid;

static void lss__nbgrid_serial(lss__nbgrid *g, int n) {
    memset(g, 0, sizeof *g);
    g->n = n; g->cp = lss__nb_cp(n); g->nx = g->ny = n; g->sx = (size_t)n; g->sy = 1;
    g->floats = lss__nb_gridfloats(n);
}

/* the x transforms of every (ky, kz) column held */
static void lss__nbfft_x(const lss__nbfft *f, const lss__nbgrid *g, fftwf_complex *cb, int fwd) {
    int n = f->n, cp = f->cp, ncol = n / 2 + 1, T = lss__nb_nthreads(), ky;
    if (T > f->nthr) T = f->nthr;
LSS__MOMP(omp parallel for schedule(dynamic, 1) num_threads(T))
    for (ky = g->y0; ky < g->y0 + g->ny; ky++) {
        int t = 0, c0, x;
        fftwf_complex *tb, *col = cb + (size_t)(ky - g->y0) * g->sy * cp;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        tb = f->tbuf + (size_t)t * n * LSS__NB_FFTW;
        for (c0 = 0; c0 < ncol; c0 += LSS__NB_FFTW) {
            int w = ncol - c0 < LSS__NB_FFTW ? ncol - c0 : LSS__NB_FFTW;
            for (x = 0; x < n; x++) memcpy(tb + (size_t)x * w, col + (size_t)x * g->sx * cp + c0, sizeof(fftwf_complex) * (size_t)w);
            if (w == LSS__NB_FFTW) fftwf_execute_dft(fwd ? f->f1 : f->b1, tb, tb);
            else fftwf_execute_dft(fwd ? f->f1r : f->b1r, tb, tb);
            for (x = 0; x < n; x++) memcpy(col + (size_t)x * g->sx * cp + c0, tb + (size_t)x * w, sizeof(fftwf_complex) * (size_t)w);
        }
    }
}

#ifdef LSS_MPI
static void lss__nb_transpose(const lss__nbgrid *g, float *buf) {
    fftwf_mpi_execute_r2r((fftwf_plan)g->tp, buf, buf);
}
#endif

/* the 2-D transforms of nx planes in place (fwd: r2c, else c2r) */
static void lss__nbfft_planes(const lss__nbfft *f, int nx, float *buf, int fwd) {
    int n = f->n, cp = f->cp, i;
    fftwf_complex *cb = (fftwf_complex *)buf;
LSS__MOMP(omp parallel for schedule(dynamic, 1))
    for (i = 0; i < nx; i++) {
        if (fwd) fftwf_execute_dft_r2c(f->r2c, buf + (size_t)i * n * 2 * cp, cb + (size_t)i * n * cp);
        else fftwf_execute_dft_c2r(f->c2r, cb + (size_t)i * n * cp, buf + (size_t)i * n * 2 * cp);
    }
}
/* unnormalised forward transform in place: real [x][y][z] -> complex [kx][ky][kz], kz = 0..n/2 (in g's layout) */
static void lss__nbfft_fwdg(const lss__nbfft *f, const lss__nbgrid *g, float *buf) {
    fftwf_complex *cb = (fftwf_complex *)buf;
    lss__nbfft_planes(f, g->nx, buf, 1);
#ifdef LSS_MPI
    if (g->tp) lss__nb_transpose(g, buf);
#endif
    lss__nbfft_x(f, g, cb, 1);
}
/* unnormalised backward transform in place (Hermitian input) */
static void lss__nbfft_bwdg(const lss__nbfft *f, const lss__nbgrid *g, float *buf) {
    fftwf_complex *cb = (fftwf_complex *)buf;
    lss__nbfft_x(f, g, cb, 0);
#ifdef LSS_MPI
    if (g->tp) lss__nb_transpose(g, buf);
#endif
    lss__nbfft_planes(f, g->nx, buf, 0);
}
static void lss__nbfft_fwd(const lss__nbfft *f, float *buf) {
    lss__nbgrid g;
    lss__nbgrid_serial(&g, f->n);
    lss__nbfft_fwdg(f, &g, buf);
}

/* ---- the run ---- */
typedef struct {
    unsigned char perm[3], flip[3];
    uint32_t shift[3];
} lss__nbrep;

struct lss_nbody {
    const lss_cosmo *c;
    lss_nbody_opts o;            /* defaults filled */
    double om, ol, L, d2norm;
    uint64_t seed, index;
    int np, n, steps, step;
    int64_t N, one;              /* particles; one particle's mass in the fixed-point sums */
    uint32_t *pos;               /* [N][3] fixed point, unit L / 2^32 */
    float *mom;                  /* [N][3] p = a^2 dx/dt */
    float *work;                 /* force mesh (padded n^3), also the initial-condition fields */
    size_t work_floats;
    lss__nbfft fm;               /* plans of the force mesh */
    lss__nbgrid gm;              /* the force mesh's layout (all of it, or this rank's slab) */
    int64_t Nl;                  /* particles held here (N in a serial run) */
    const float **plane;         /* [n] the potential's planes the readout may touch (NULL: not held here) */
    /* a distributed run (lss_nbody_lightcone_dist): particles held by the rank of their force-mesh slab */
    int dist, rank, size, blk;   /* blk: planes per slab (FFTW-MPI's default block) */
    int64_t cap;                 /* particles pos, mom, gid and ord can hold */
    int64_t *gid;                /* [cap] the particles' global indices (x np + y) np + z of their lattice site */
    int64_t *gid2;               /* [cap] the cell sort's scratch for gid (distributed runs) */
    float *ghost;                /* [5][n][2 cp] potential planes x0 - 2, x0 - 1, x0 + nx, x0 + nx + 1, x0 + nx + 2 */
    int lean;                    /* 1: in-place transposes; 0: out of place through work2 */
    float *work2;                /* the second mesh slab of the out-of-place transposes (NULL when lean) */
    void *tpf, *tpb;             /* FFTW-MPI transposes work -> work2 and back (FFTW_DESTROY_INPUT) */
    int ck_step, ck_ranks;       /* the distributed checkpoint's parts on disk (step, ranks; 0 ranks: none) */
    void *ord;                   /* [N] particle indices by mesh plane (uint32, or uint64 when N >= 2^32) */
    int ord64;
    /* the particles are kept sorted by force-mesh cell row for cache locality: a serial run re-sorts them in every
       drift, a distributed one after each migration (a stable counting sort into pos2 / mom2 / ord or gid2, then
       the pointers are swapped) */
    void *id;                    /* [N] lattice index (x np + y) np + z of each held particle (serial runs; ord's type) */
    uint32_t *pos2;              /* [cap][3] the sort's scratch */
    float *mom2;
    int64_t *pstart;             /* [n / B n + 1] first sorted particle of each (y block, x plane) (lss__nb_rowkey) */
    int sorted;                  /* 1: pos is sorted by (x, y) cell of the force mesh, pstart valid */
    int nthr;                    /* threads the painting buffers hold */
    int64_t *hist, *pbuf;        /* painting: histograms and offsets, per-thread plane accumulators */
    float *rbuf;                 /* [nthr][lss__nb_rbuf_floats(n)] the force readout's per-thread scratch */
    double *a_node, *a_half;     /* [steps + 1], [steps] */
    double *d_node, *gp_node, *d_half, *gp_half;
    double maxp;                 /* max |p_d| (bounds the drift of a step for the light cone) */
    /* light cone */
    int lc, ncone, nshell, side, nrep;
    double pix;                  /* pixel side in radians (gnomonic coordinates) */
    double *z_edges, *chi_edges; /* [nshell + 1] */
    int64_t *acc;                /* [ncone][nshell][side][side] fixed point */
    int64_t *tacc;               /* [ntacc][ncone][nshell][side][side] private sums of threads 1 .. ntacc (zero between drifts) */
    int ntacc;
    int *shtab;                  /* [LSS__NB_SHTAB] shell of chi = chi_edges[0] + k span / LSS__NB_SHTAB */
    lss__nbrep *rep;             /* [ncone][nrep] */
    lss_nbody_stats st;
};

static void lss__nb_fill_opts(const lss_nbody_opts *in, lss_nbody_opts *o) {
    if (in) *o = *in;
    else memset(o, 0, sizeof *o);
    if (o->box == 0) o->box = 500;
    if (o->np == 0) o->np = 256;
    if (o->mesh == 0) o->mesh = 2 * o->np;
    if (o->steps == 0) o->steps = 20;
    if (o->z_init == 0) o->z_init = 9;
    if (o->lpt_order == 0) o->lpt_order = 2;
}

static int lss__nb_check_opts(const lss_nbody_opts *o) {
    if (!(o->box > 0) || !isfinite(o->box) || o->box > 1e6)
        return lss_seterr(LSS_ERR_ARG, "N-body: box side %g Mpc/h must be in (0, 1e6]", o->box);
    if (o->np < 8 || o->np > 4096 || o->np % 2)
        return lss_seterr(LSS_ERR_ARG, "N-body: np = %d particles per side must be even and in 8..4096", o->np);
    if (o->mesh < o->np || o->mesh > 8192 || o->mesh % 2)
        return lss_seterr(LSS_ERR_ARG, "N-body: force mesh %d must be even, at least np = %d and at most 8192", o->mesh,
                          o->np);
    if (o->steps < 1 || o->steps > 100000)
        return lss_seterr(LSS_ERR_ARG, "N-body: %d steps (want 1..100000)", o->steps);
    if (!(o->z_init > 0) || !(o->z_init <= 1000))
        return lss_seterr(LSS_ERR_ARG, "N-body: z_init = %g must be in (0, 1000]", o->z_init);
    if (o->spacing != LSS_NB_STEP_LINEAR_A && o->spacing != LSS_NB_STEP_LOG_A)
        return lss_seterr(LSS_ERR_ARG, "N-body: spacing %d (want LSS_NB_STEP_LINEAR_A or LSS_NB_STEP_LOG_A)", o->spacing);
    if (o->lpt_order != 1 && o->lpt_order != 2)
        return lss_seterr(LSS_ERR_ARG, "N-body: lpt_order %d (want 1 or 2)", o->lpt_order);
    if (o->fixed_amp != 0 && o->fixed_amp != 1)
        return lss_seterr(LSS_ERR_ARG, "N-body: fixed_amp %d (want 0 or 1)", o->fixed_amp);
    return LSS_OK;
}

static int lss__nb_check_lc(const lss_lightcone_opts *lc) {
    int b, ncone = lc->ncone ? lc->ncone : 1;
    if (lc->side < 8 || lc->side > 4096 || lc->side % 2)
        return lss_seterr(LSS_ERR_ARG, "light cone: side %d must be even and in 8..4096", lc->side);
    if (!(lc->pixel_arcmin > 0) || !(lc->pixel_arcmin * lc->side <= 60.0 * 90))
        return lss_seterr(LSS_ERR_ARG, "light cone: pixel %g arcmin x %d pixels (want a positive pixel, field below 90 deg)",
                          lc->pixel_arcmin, lc->side);
    if (lc->nshell < 1 || lc->nshell > 100000 || !lc->z_edges)
        return lss_seterr(LSS_ERR_ARG, "light cone: %d shells%s (want 1..100000 and their z_edges)", lc->nshell,
                          lc->z_edges ? "" : " without z_edges");
    if (ncone < 1 || ncone > (int)LSS_STREAM_SUB_MAX)
        return lss_seterr(LSS_ERR_ARG, "light cone: ncone %d (want 1..%u)", lc->ncone, LSS_STREAM_SUB_MAX);
    if (!(lc->z_edges[0] >= 0) || !isfinite(lc->z_edges[0]))
        return lss_seterr(LSS_ERR_ARG, "light cone: first shell edge z = %g must be >= 0", lc->z_edges[0]);
    for (b = 0; b < lc->nshell; b++)
        if (!(lc->z_edges[b + 1] > lc->z_edges[b]) || !isfinite(lc->z_edges[b + 1]))
            return lss_seterr(LSS_ERR_ARG, "light cone: shell edges must increase (z_edges[%d] = %g, z_edges[%d] = %g)", b,
                              lc->z_edges[b], b + 1, lc->z_edges[b + 1]);
    return LSS_OK;
}

/* bytes of the run's own buffers at their peak */
static int lss__nb_yblk(int n);
static size_t lss__nb_rbuf_floats(int n);
/* bytes of the run's own buffers at their peak; sortbuf: with the cell sort's buffers (lss__nb_move) */
static int64_t lss__nb_bytes(const lss_nbody_opts *o, const lss_lightcone_opts *lc, int nthr, int sortbuf) {
    int64_t np = o->np, N = np * np * np, n = o->mesh, b, ob = N > (int64_t)0xFFFFFFFF ? 8 : 4;
    int64_t mesh = 4 * (int64_t)lss__nb_gridfloats(o->mesh);
    int64_t ic = (o->lpt_order == 2 ? 4 : 2) * 4 * (int64_t)lss__nb_gridfloats(o->np);
    b = N * 24 + N * ob + 8 * (n / 2 * n + 1);              /* positions, momenta, plane order, sort runs */
    if (sortbuf) b += N * (24 + ob);                         /* the sort's copies and the lattice indices */
    b += (mesh > ic ? mesh : ic);                            /* force mesh / initial-condition fields */
    b += (int64_t)nthr * (n * n * 8 + (n + 1) * 8);          /* plane accumulators and histograms of the painting */
    b += (int64_t)nthr * 4 * (int64_t)lss__nb_rbuf_floats((int)n); /* the readout's gradient rows */
    b += (int64_t)o->steps * 6 * 8 + 4096;
    if (lc) {
        int64_t nc = lc->ncone ? lc->ncone : 1, pix = (int64_t)lc->side * lc->side, nacc = nc * lc->nshell * pix;
        b += nacc * (8 + 4) + (int64_t)(lc->nshell + 1) * 16 + 4 * LSS__NB_SHTAB;
        b += nc * 64 * (int64_t)sizeof(lss__nbrep);
        if (nthr > 1 && nacc * (nthr - 1) * 8 <= ((int64_t)256 << 20)) b += nacc * (nthr - 1) * 8; /* threads' sums */
    }
    return b;
}

LSSDEF int64_t lss_nbody_memory(const lss_nbody_opts *o, const lss_lightcone_opts *lc) {
    lss_nbody_opts f;
    lss__nb_fill_opts(o, &f);
    if (lss__nb_check_opts(&f) != LSS_OK) return -1;
    if (lc && lss__nb_check_lc(lc) != LSS_OK) return -1;
    return lss__nb_bytes(&f, lc, lss__nb_nthreads(), 1);
}

static double lss__nb_physmem(void) {
#if (defined(__unix__) || defined(__APPLE__)) && defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) return (double)pages * (double)psz;
#endif
    return 0;
}

/* growth factors at a: D1, g_p = a^3 E dD1/da */
static void lss__nb_dg(const lss_nbody *s, double a, double *d, double *gp) {
    double dr, ddr, e = sqrt(s->om / (a * a * a) + s->ol);
    lss__nb_growth_raw(s->om, s->ol, a, &dr, &ddr);
    *d = dr / s->d2norm;
    *gp = a * a * a * e * ddr / s->d2norm;
}

/* the drawn z = 0 mode of integer wave vector (mx, my, mz): delta_k = re + i im */
static void lss__nb_mode(const lss_nbody *s, int mx, int my, int mz, double *re, double *im) {
    int h = s->np / 2, sg = 1;
    uint64_t ctr, stream = lss_stream(LSS_STREAM_NBODY_IC, s->index, 0);
    uint32_t w[4];
    double u1, u2, k, pk, amp;
    *re = *im = 0;
    if (abs(mx) >= h || abs(my) >= h || abs(mz) >= h || (mx == 0 && my == 0 && mz == 0)) return;
    if (mz < 0 || (mz == 0 && (my < 0 || (my == 0 && mx < 0)))) { mx = -mx; my = -my; mz = -mz; sg = -1; }
    ctr = ((uint64_t)((uint32_t)mx & 0x1FFFFFu) << 42) | ((uint64_t)((uint32_t)my & 0x1FFFFFu) << 21) |
          (uint64_t)((uint32_t)mz & 0x1FFFFFu);
    lss_philox_block_inline(s->seed, stream, ctr, w);
    u1 = lss_u32x2_to_double_inline(w[0], w[1]);
    u2 = lss_u32x2_to_double_inline(w[2], w[3]);
    k = LSS__NB_TWOPI / s->L * sqrt((double)mx * mx + (double)my * my + (double)mz * mz);
    pk = lss_cosmo_pk_lin(s->c, k, 0);
    amp = sqrt(pk / (s->L * s->L * s->L));
    if (!s->o.fixed_amp) amp *= sqrt(-log(u1));
    *re = amp * cos(LSS__NB_TWOPI * u2);
    *im = sg * amp * sin(LSS__NB_TWOPI * u2);
}

static int lss__nb_fidx(int i, int n) { return i <= n / 2 ? i : i - n; }

/* round to the nearest integer (halves away from zero) */
static int64_t lss__nb_round(double v) { return (int64_t)(v + copysign(0.5, v)); } /* branch-free: signs are random */

/* position component d of particle m drifted by dq (position units per unit momentum) */
static uint32_t lss__nb_x(const lss_nbody *s, int64_t m, int d, double dq) {
    uint32_t x = s->pos[3 * m + d];
    if (dq != 0) x += (uint32_t)lss__nb_round((double)s->mom[3 * m + d] * dq);
    return x;
}

/* rows per y block of the cell sort: the largest of 16, 8, 4, 2 that divides the (even) mesh side n and is at most
   n / 4 (2 below n = 16), so that B + 2 rows fit in an n x n buffer */
static int lss__nb_yblk(int n) { return n % 16 == 0 && n >= 64 ? 16 : n % 8 == 0 && n >= 32 ? 8 : n % 4 == 0 && n >= 16 ? 4 : 2; }
/* sort key of a fixed-point position on the force mesh of side n with y blocks of B rows: (y block, x plane, y row
   in the block), so that the force readout walks x planes through a band of B rows (its 6-plane stencil stays
   in cache) and each (y block, x plane) run is contiguous for the painting */
static int64_t lss__nb_rowkey(const uint32_t *x, int n, int B) {
    int ix = (int)(((uint64_t)x[0] * (uint64_t)n) >> 32), iy = (int)(((uint64_t)x[1] * (uint64_t)n) >> 32);
    int lb = B == 16 ? 4 : B == 8 ? 3 : B == 4 ? 2 : 1; /* B is a power of 2: no division */
    return (((int64_t)(iy >> lb) * n + ix) << lb) + (iy & (B - 1));
}

static int64_t lss__nb_ord_get(const void *ord, int big, int64_t i) {
    return big ? (int64_t)((const uint64_t *)ord)[i] : (int64_t)((const uint32_t *)ord)[i];
}
static void lss__nb_ord_set(void *ord, int big, int64_t i, int64_t v) {
    if (big) ((uint64_t *)ord)[i] = (uint64_t)v;
    else ((uint32_t *)ord)[i] = (uint32_t)v;
}

static void lss__nb_paint_planes(lss_nbody *s, int64_t N, double dq, float *mesh, int n, int p0, int pn, int T,
                                 int64_t *hist, int64_t *pbuf, int64_t *mass);
/* CIC density contrast of the particles drifted by dq (position units per unit momentum) on the padded grid `mesh`
   of side n (NULL: only the mass), in 64-bit fixed point: particles are bucketed by x plane (per-thread
   histograms), then every plane is summed from its two buckets into a per-thread n x n int64 accumulator. The
   sums are exact, so the result does not depend on the order of the particles or on the threads. hist holds
   T n and pbuf T n^2 int64. */
static void lss__nb_paint(lss_nbody *s, double dq, float *mesh, int n, int T, int64_t *hist, int64_t *pbuf,
                          int64_t *mass) {
    lss__nb_paint_planes(s, s->N, dq, mesh, n, 0, n, T, hist, pbuf, mass);
}
/* the same for the particles 0 .. N - 1 held here and the planes p0 .. p0 + pn - 1 (mesh holds them from p0; mass:
   their total) */
/* a particle's fixed-point CIC weights in one x plane (half 1: its own plane, 0: the next) from its position's
   fractions (tx, ty, tz: the low 32 bits of x n): w[0..3] on the corners (y, z), (y, z + 1), (y + 1, z),
   (y + 1, z + 1), summing exactly to its share of `one` */
static void lss__nb_cicw(int64_t one, uint32_t tx, uint32_t fy, uint32_t fz, int half, int64_t w[4]) {
    int64_t w1 = (int64_t)(((uint64_t)one * tx) >> 32), wx = half ? one - w1 : w1;
    int64_t wy1 = (int64_t)(((uint64_t)wx * fy) >> 32), wy0 = wx - wy1;
    int64_t w01 = (int64_t)(((uint64_t)wy0 * fz) >> 32), w11 = (int64_t)(((uint64_t)wy1 * fz) >> 32);
    w[0] = wy0 - w01; w[1] = w01; w[2] = wy1 - w11; w[3] = w11;
}

/* the CIC painting of a serial run sorted at its positions (lss__nb_rowkey; s->pstart): plane p takes the runs
   (y block, p - 1) and (y block, p) band by band into a (B + 2) x n int64 accumulator per thread (rows y0 .. y0 + B;
   row B carries into the next band, and the last band's into row 0 of the first). The same exact sums as
   lss__nb_paint_planes. ptot[p]: the plane's total; pbuf holds T (B + 2) n int64. */
static void lss__nb_paint_sorted(lss_nbody *s, float *mesh, int T, int64_t *ptot, int64_t *pbuf, int64_t *mass) {
    int n = s->n, B = lss__nb_yblk(n), nyb = n / B, p;
    size_t R = (size_t)(2 * lss__nb_cp(n));
    double norm = (double)n * n * n / ((double)s->N * (double)s->one);
    (void)T;
LSS__MOMP(omp parallel for schedule(dynamic, 1) num_threads(T))
    for (p = 0; p < n; p++) {
        int t = 0, yb, half, r, z;
        int64_t tot = 0, *buf, *row0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        buf = pbuf + (size_t)t * (B + 2) * n; /* rows 0 .. B of the band */
        row0 = buf + (size_t)(B + 1) * n;     /* row 0 of the first band, completed at the end */
        memset(buf, 0, sizeof(int64_t) * (size_t)(B + 1) * n);
        for (yb = 0; yb < nyb; yb++) {
            int y0 = yb * B;
            if (yb > 0) { /* the last band's row B is this band's row 0 */
                memcpy(buf, buf + (size_t)B * n, sizeof(int64_t) * (size_t)n);
                memset(buf + n, 0, sizeof(int64_t) * (size_t)B * n);
            }
            for (half = 0; half < 2; half++) {
                /* group (yb, p - 1) adds the x + 1 part of its particles, group (yb, p) their x part */
                int qb = half ? p : (p + n - 1) % n;
                int64_t i, i1 = s->pstart[(size_t)yb * n + qb + 1];
                for (i = s->pstart[(size_t)yb * n + qb]; i < i1; i++) {
                    const uint32_t *q = s->pos + 3 * i;
                    uint64_t tx = (uint64_t)q[0] * (uint64_t)n, ty = (uint64_t)q[1] * (uint64_t)n, tz = (uint64_t)q[2] * (uint64_t)n;
                    int ry = (int)(ty >> 32) - y0, iz = (int)(tz >> 32), iz1 = iz + 1 == n ? 0 : iz + 1;
                    int64_t w[4], *b0 = buf + (size_t)ry * n, *b1 = b0 + n;
                    lss__nb_cicw(s->one, (uint32_t)tx, (uint32_t)ty, (uint32_t)tz, half, w);
                    b0[iz] += w[0];
                    b0[iz1] += w[1];
                    b1[iz] += w[2];
                    b1[iz1] += w[3];
                }
            }
            if (yb == 0) memcpy(row0, buf, sizeof(int64_t) * (size_t)n);
            for (r = yb == 0 ? 1 : 0; r < B; r++) {
                const int64_t *br = buf + (size_t)r * n;
                float *mr = mesh ? mesh + ((size_t)p * n + y0 + r) * R : NULL;
                for (z = 0; z < n; z++) {
                    tot += br[z];
                    if (mr) mr[z] = (float)((double)br[z] * norm - 1.0);
                }
            }
        }
        { /* row 0: the first band's own part and the last band's carry (row n wraps to 0) */
            const int64_t *cr = buf + (size_t)B * n;
            float *mr = mesh ? mesh + (size_t)p * n * R : NULL;
            for (z = 0; z < n; z++) {
                int64_t v = row0[z] + cr[z];
                tot += v;
                if (mr) mr[z] = (float)((double)v * norm - 1.0);
            }
        }
        ptot[p] = tot;
    }
    if (mass) {
        int64_t tot = 0;
        for (p = 0; p < n; p++) tot += ptot[p];
        *mass = tot;
    }
}

static void lss__nb_paint_planes(lss_nbody *s, int64_t N, double dq, float *mesh, int n, int p0, int pn, int T,
                                 int64_t *hist, int64_t *pbuf, int64_t *mass) {
    int64_t nb = (N + LSS__NB_BLOCK - 1) / LSS__NB_BLOCK;
    int64_t *start = hist + (size_t)T * n, *ptot = start + n + 1;
    size_t R = (size_t)(2 * lss__nb_cp(n));
    double norm = (double)n * n * n / ((double)s->N * (double)s->one);
    int p;
    if (dq == 0 && s->sorted && !s->dist && n == s->n && N == s->N && p0 == 0 && pn == n) {
        lss__nb_paint_sorted(s, mesh, T, ptot, pbuf, mass);
        return;
    }
LSS__MOMP(omp parallel num_threads(T))
    {
        int t = 0, nt = 1, q;
        int64_t b, b0, b1, m, *h, *buf;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        h = hist + (size_t)t * n;
        buf = pbuf + (size_t)t * n * n;
        b0 = nb * t / nt;
        b1 = nb * (t + 1) / nt;
        memset(h, 0, sizeof(int64_t) * (size_t)n);
        for (b = b0; b < b1; b++) {
            int64_t e = (b + 1) * LSS__NB_BLOCK < N ? (b + 1) * LSS__NB_BLOCK : N;
            for (m = b * LSS__NB_BLOCK; m < e; m++) h[((uint64_t)lss__nb_x(s, m, 0, dq) * (uint64_t)n) >> 32]++;
        }
LSS__MOMP(omp barrier)
LSS__MOMP(omp single)
        {
            int64_t run = 0;
            int u;
            for (q = 0; q < n; q++) {
                start[q] = run;
                for (u = 0; u < nt; u++) {
                    int64_t cnt = hist[(size_t)u * n + q];
                    hist[(size_t)u * n + q] = run;
                    run += cnt;
                }
            }
            start[n] = run;
        }
        for (b = b0; b < b1; b++) {
            int64_t e = (b + 1) * LSS__NB_BLOCK < N ? (b + 1) * LSS__NB_BLOCK : N;
            for (m = b * LSS__NB_BLOCK; m < e; m++) {
                int ix = (int)(((uint64_t)lss__nb_x(s, m, 0, dq) * (uint64_t)n) >> 32);
                lss__nb_ord_set(s->ord, s->ord64, h[ix]++, m);
            }
        }
LSS__MOMP(omp barrier)
LSS__MOMP(omp for schedule(dynamic, 1))
        for (p = p0; p < p0 + pn; p++) {
            int half, y, z;
            int64_t tot = 0;
            memset(buf, 0, sizeof(int64_t) * (size_t)n * n);
            for (half = 0; half < 2; half++) {
                /* bucket p - 1 adds the x + 1 part of its particles, bucket p their x part */
                int qb = half ? p : (p + n - 1) % n;
                int64_t i, i1 = start[qb + 1];
                for (i = start[qb]; i < i1; i++) {
                    int64_t mm = lss__nb_ord_get(s->ord, s->ord64, i);
                    uint64_t tx = (uint64_t)lss__nb_x(s, mm, 0, dq) * (uint64_t)n;
                    uint64_t ty = (uint64_t)lss__nb_x(s, mm, 1, dq) * (uint64_t)n;
                    uint64_t tz = (uint64_t)lss__nb_x(s, mm, 2, dq) * (uint64_t)n;
                    int iy = (int)(ty >> 32), iz = (int)(tz >> 32), iy1 = iy + 1 == n ? 0 : iy + 1, iz1 = iz + 1 == n ? 0 : iz + 1;
                    int64_t w[4];
                    lss__nb_cicw(s->one, (uint32_t)tx, (uint32_t)ty, (uint32_t)tz, half, w);
                    buf[(size_t)iy * n + iz] += w[0];
                    buf[(size_t)iy * n + iz1] += w[1];
                    buf[(size_t)iy1 * n + iz] += w[2];
                    buf[(size_t)iy1 * n + iz1] += w[3];
                }
            }
            for (y = 0; y < n; y++) {
                const int64_t *br = buf + (size_t)y * n;
                float *row = mesh ? mesh + ((size_t)(p - p0) * n + y) * R : NULL;
                for (z = 0; z < n; z++) {
                    tot += br[z];
                    if (row) row[z] = (float)((double)br[z] * norm - 1.0);
                }
            }
            ptot[p] = tot;
        }
    }
    if (mass) {
        int64_t tot = 0;
        for (p = p0; p < p0 + pn; p++) tot += ptot[p];
        *mass = tot;
    }
}
/* int64 entries of hist for lss__nb_paint */
static size_t lss__nb_histlen(int n, int T) { return (size_t)T * n + 2 * (size_t)n + 1; }

/* the Poisson kernel on the held rows of the transformed density: psi_k = -3/2 Om delta_k / k^2 / n^3 */
static void lss__nb_kernel(const lss__nbgrid *g, float *buf, double L, double om) {
    int n = g->n, cp = g->cp, x;
    double kf = LSS__NB_TWOPI / L, pre = -1.5 * om / ((double)n * n * n);
    fftwf_complex *cb = (fftwf_complex *)buf;
LSS__MOMP(omp parallel for schedule(static))
    for (x = 0; x < n; x++) {
        int y, z, fx = lss__nb_fidx(x, n);
        for (y = g->y0; y < g->y0 + g->ny; y++) {
            int fy = lss__nb_fidx(y, n);
            fftwf_complex *row = cb + ((size_t)x * g->sx + (size_t)(y - g->y0) * g->sy) * cp;
            for (z = 0; z <= n / 2; z++) {
                double k2 = kf * kf * ((double)fx * fx + (double)fy * fy + (double)z * z);
                float f = k2 > 0 ? (float)(pre / k2) : 0.0f;
                row[z][0] *= f;
                row[z][1] *= f;
            }
        }
    }
}

static void lss__nb_readout(lss_nbody *s, double kfac);
#ifdef LSS_MPI
static int lss__nb_force_dist(lss_nbody *s, double kfac, int T);
#endif
/* force at the positions and kick p -= kfac grad psi, lap psi = 3/2 Om delta (see the declarations) */
static int lss__nb_force(lss_nbody *s, double kfac, int T, int64_t *hist, int64_t *pbuf) {
    double t0 = lss_time_now(), t1, t2, t3, t4;
#ifdef LSS_MPI
    if (s->dist) return lss__nb_force_dist(s, kfac, T);
#endif
    lss__nb_paint(s, 0, s->work, s->n, T, hist, pbuf, NULL);
    t1 = lss_time_now();
    lss__nbfft_fwdg(&s->fm, &s->gm, s->work);
    t2 = lss_time_now();
    lss__nb_kernel(&s->gm, s->work, s->L, s->om);
    t3 = lss_time_now();
    lss__nbfft_bwdg(&s->fm, &s->gm, s->work);
    t4 = lss_time_now();
    lss__nb_readout(s, kfac);
    s->st.paint += t1 - t0;
    s->st.fft += (t2 - t1) + (t4 - t3);
    s->st.force += (t3 - t2) + (lss_time_now() - t4);
    return LSS_OK;
}

/* floats of one thread's readout scratch (lss__nb_readout) for a force mesh of side n: two planes' gradient rows */
static size_t lss__nb_rbuf_floats(int n) { return 6 * ((size_t)lss__nb_yblk(n) + 1) * ((size_t)n + 1); }

#if defined(__cplusplus)
#define LSS__NB_RESTRICT __restrict
#else
#define LSS__NB_RESTRICT restrict
#endif
/* d[j] = 8 (a[j] - b[j]) - (c[j] - e[j]): the 4-point difference (a, b at +-1, c, e at +-2), without 1 / 12 h */
static void lss__nb_fd4(const float *LSS__NB_RESTRICT a, const float *LSS__NB_RESTRICT b, const float *LSS__NB_RESTRICT c,
                        const float *LSS__NB_RESTRICT e, int w, float *LSS__NB_RESTRICT d) {
    int j;
LSS__MOMP(omp simd)
    for (j = 0; j < w; j++) d[j] = 8 * (a[j] - b[j]) - (c[j] - e[j]);
}
static float lss__nb_fd1(float a, float b, float c, float e) { return 8 * (a - b) - (c - e); }
/* the three gradient components (4-point differences without 1 / 12 h) of the potential planes pl (side n, row
   stride R) on plane x, rows y0 .. y0 + nr - 1 (mod n), every z: G[d][r][z] with row length n + 1 (G[d][r][n] =
   G[d][r][0], the periodic neighbour) */
static void lss__nb_grad_rows(const float *const *pl, int n, size_t R, int x, int y0, int nr, float *G) {
    size_t L = (size_t)n + 1;
    const float *xp1 = pl[(x + 1) % n], *xm1 = pl[(x + n - 1) % n], *xp2 = pl[(x + 2) % n], *xm2 = pl[(x + n - 2) % n];
    const float *p = pl[x];
    int r, z;
    for (r = 0; r < nr; r++) {
        int y = (y0 + r) % n;
        size_t o = (size_t)y * R;
        const float *row = p + o;
        float *gx = G + (size_t)r * L, *gy = G + ((size_t)nr + r) * L, *gz = G + ((size_t)2 * nr + r) * L;
        lss__nb_fd4(xp1 + o, xm1 + o, xp2 + o, xm2 + o, n, gx);
        lss__nb_fd4(p + (size_t)((y + 1) % n) * R, p + (size_t)((y + n - 1) % n) * R, p + (size_t)((y + 2) % n) * R,
                    p + (size_t)((y + n - 2) % n) * R, n, gy);
        lss__nb_fd4(row + 3, row + 1, row + 4, row, n - 4, gz + 2); /* n >= 8 (lss__nb_check_opts) */
        for (z = 0; z < 4; z++) { /* the wrapped ends: z = 0, 1, n - 2, n - 1 */
            int zz = z < 2 ? z : n - 4 + z;
            gz[zz] = lss__nb_fd1(row[(zz + 1) % n], row[(zz + n - 1) % n], row[(zz + 2) % n], row[(zz + n - 2) % n]);
        }
        gx[n] = gx[0]; gy[n] = gy[0]; gz[n] = gz[0];
    }
}
/* kick of particle m from its cell's corner gradients v[d][c][k] (corner c = 2 a + b at (x + a, y + b), k: z, z + 1);
   returns max_d |p_d| */
static float lss__nb_kick1(lss_nbody *s, int64_t m, int n, float v[3][4][2], float kk, float inv12h) {
    const uint32_t *q = s->pos + 3 * m;
    float fx = (float)((uint32_t)((uint64_t)q[0] * (uint64_t)n) * (1.0 / LSS__NB_TWO32));
    float fy = (float)((uint32_t)((uint64_t)q[1] * (uint64_t)n) * (1.0 / LSS__NB_TWO32));
    float fz = (float)((uint32_t)((uint64_t)q[2] * (uint64_t)n) * (1.0 / LSS__NB_TWO32));
    float gx = 1 - fx, gy = 1 - fy, gz = 1 - fz, w[4], pmax = 0;
    int d;
    w[0] = gx * gy; w[1] = gx * fy; w[2] = fx * gy; w[3] = fx * fy;
    for (d = 0; d < 3; d++) {
        float g = w[0] * (gz * v[d][0][0] + fz * v[d][0][1]), pv, ap;
        g += w[1] * (gz * v[d][1][0] + fz * v[d][1][1]);
        g += w[2] * (gz * v[d][2][0] + fz * v[d][2][1]);
        g += w[3] * (gz * v[d][3][0] + fz * v[d][3][1]);
        pv = s->mom[3 * m + d] - kk * (g * inv12h);
        ap = pv < 0 ? -pv : pv;
        s->mom[3 * m + d] = pv;
        pmax = ap > pmax ? ap : pmax;
    }
    return pmax;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(LSS_NO_AVX512)
#include <immintrin.h>
#define LSS__NB_AVX512 1
/* the band readout's kick of 16 particles q[0..47] / p[0..47] from the gradient rows G0 (plane x) and G1 (plane
   x + 1) of a band starting at row y0: lss__nb_kick1's float operations in its order, 16 lanes at a time (the
   same bits); returns max |p_d| */
__attribute__((target("avx512f"))) static float lss__nb_kick16(const uint32_t *q, float *p, int n, int y0, size_t L,
                                                              size_t cs, const float *G0, const float *G1, float kk,
                                                              float inv12h) {
    const __m512i i3 = _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45);
    const __m512i nv = _mm512_set1_epi32(n);
    const __m512 one = _mm512_set1_ps(1.0f), sc = _mm512_set1_ps(0x1p-32f), vk = _mm512_set1_ps(kk);
    const __m512 vh = _mm512_set1_ps(inv12h);
    __m512i ty = _mm512_i32gather_epi32(i3, (const void *)(q + 1), 4), tz = _mm512_i32gather_epi32(i3, (const void *)(q + 2), 4);
    __m512i tx = _mm512_i32gather_epi32(i3, (const void *)q, 4), iy, iz, ev, od, off, offL;
    __m512 fx, fy, fz, gx, gy, gz, w0, w1, w2, w3, pmax = _mm512_setzero_ps();
    int d;
    /* integer parts: the high 32 bits of the 64-bit products t n; fractions: the low 32 bits times 2^-32 */
    ev = _mm512_mul_epu32(ty, nv); od = _mm512_mul_epu32(_mm512_srli_epi64(ty, 32), nv);
    iy = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(ev, 32), od);
    ev = _mm512_mul_epu32(tz, nv); od = _mm512_mul_epu32(_mm512_srli_epi64(tz, 32), nv);
    iz = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(ev, 32), od);
    fx = _mm512_mul_ps(_mm512_cvtepu32_ps(_mm512_mullo_epi32(tx, nv)), sc);
    fy = _mm512_mul_ps(_mm512_cvtepu32_ps(_mm512_mullo_epi32(ty, nv)), sc);
    fz = _mm512_mul_ps(_mm512_cvtepu32_ps(_mm512_mullo_epi32(tz, nv)), sc);
    gx = _mm512_sub_ps(one, fx); gy = _mm512_sub_ps(one, fy); gz = _mm512_sub_ps(one, fz);
    w0 = _mm512_mul_ps(gx, gy); w1 = _mm512_mul_ps(gx, fy); w2 = _mm512_mul_ps(fx, gy); w3 = _mm512_mul_ps(fx, fy);
    off = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(iy, _mm512_set1_epi32(y0)), _mm512_set1_epi32((int)L)), iz);
    offL = _mm512_add_epi32(off, _mm512_set1_epi32((int)L));
    for (d = 0; d < 3; d++) {
        const float *a0 = G0 + (size_t)d * cs, *a1 = G1 + (size_t)d * cs;
        __m512 g, t, pv, mv;
#define LSS__NB_G(base, ix) _mm512_i32gather_ps(ix, base, 4)
#define LSS__NB_PAIR(base, ix) _mm512_add_ps(_mm512_mul_ps(gz, LSS__NB_G(base, ix)), _mm512_mul_ps(fz, LSS__NB_G(base + 1, ix)))
        g = _mm512_mul_ps(w0, LSS__NB_PAIR(a0, off));
        g = _mm512_add_ps(g, _mm512_mul_ps(w1, LSS__NB_PAIR(a0, offL)));
        g = _mm512_add_ps(g, _mm512_mul_ps(w2, LSS__NB_PAIR(a1, off)));
        g = _mm512_add_ps(g, _mm512_mul_ps(w3, LSS__NB_PAIR(a1, offL)));
#undef LSS__NB_PAIR
#undef LSS__NB_G
        mv = _mm512_i32gather_ps(i3, p + d, 4);
        t = _mm512_mul_ps(vk, _mm512_mul_ps(g, vh));
        pv = _mm512_sub_ps(mv, t);
        _mm512_i32scatter_ps(p + d, i3, pv, 4);
        pmax = _mm512_max_ps(pmax, _mm512_abs_ps(pv));
    }
    return _mm512_reduce_max_ps(pmax);
}
#endif

/* the kick of the particles held here with the potential's planes s->plane; s->maxp = their largest |p_d|.
   The force is the CIC interpolation of the 4-point finite-difference gradient at the 8 corners of the particle's
   cell. Particles sorted by lss__nb_rowkey (a serial run after every drift, a distributed one after every
   migration) take their corners from gradient rows computed once per (y block, x plane); otherwise each particle
   computes its 24 corner values itself. Both give the same bits (the same float operations on the same values),
   whatever the order, the runs or the threads. */
static void lss__nb_readout(lss_nbody *s, double kfac) {
    int n = s->n, cp = s->fm.cp, T = lss__nb_nthreads(), B = lss__nb_yblk(n), nyb = n / B;
    size_t R = (size_t)(2 * cp), rbf = lss__nb_rbuf_floats(n), L = (size_t)n + 1;
    double maxp = 0;
    float inv12h = (float)(n / (12.0 * s->L)), kk = (float)kfac;
    const float *const *pl = s->plane;
    int vec = 0; /* the AVX-512 kick of 16 particles (the same bits), where the CPU has it */
#ifdef LSS__NB_AVX512
    vec = lss__nb_readout_vec && __builtin_cpu_supports("avx512f");
#endif
    (void)vec;
    if (T > s->nthr) T = s->nthr;
    if (s->sorted) {
        /* chunks of 8 consecutive x planes of one y block: gradient rows of plane x + 1 computed once and reused as
           plane x of the next group */
        int nch = (n + 7) / 8, ch;
LSS__MOMP(omp parallel for schedule(dynamic, 1) reduction(max : maxp) num_threads(T))
        for (ch = 0; ch < nyb * nch; ch++) {
            int yb = ch / nch, x0 = (ch % nch) * 8, x1 = x0 + 8 < n ? x0 + 8 : n, x, t = 0, y0 = yb * B, have0;
            float *G0, *G1;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            G0 = s->rbuf + (size_t)t * rbf;
            G1 = G0 + rbf / 2;
            for (x = x0, have0 = 0; x < x1; x++) {
                int64_t m, e = s->pstart[(size_t)yb * n + x + 1];
                float *tmp;
                if (s->pstart[(size_t)yb * n + x] == e) { /* no particles (a distributed run: outside its slab) */
                    have0 = 0;
                    continue;
                }
                if (!have0) lss__nb_grad_rows(pl, n, R, x, y0, B + 1, G0);
                lss__nb_grad_rows(pl, n, R, (x + 1) % n, y0, B + 1, G1);
                have0 = 1;
                m = s->pstart[(size_t)yb * n + x];
#ifdef LSS__NB_AVX512
                if (vec && (int64_t)(B + 1) * L < INT32_MAX)
                    for (; m + 16 <= e; m += 16) {
                        float pm = lss__nb_kick16(s->pos + 3 * m, s->mom + 3 * m, n, y0, L, (size_t)(B + 1) * L, G0, G1, kk,
                                                  inv12h);
                        if (pm > maxp) maxp = pm;
                    }
#endif
                for (; m < e; m++) {
                    const uint32_t *q = s->pos + 3 * m;
                    uint64_t tx = (uint64_t)q[0] * (uint64_t)n, ty = (uint64_t)q[1] * (uint64_t)n, tz = (uint64_t)q[2] * (uint64_t)n;
                    size_t off = (size_t)((int)(ty >> 32) - y0) * L + (size_t)(tz >> 32);
                    const float *a0 = G0 + off, *a1 = G1 + off;
                    float fx = (float)((uint32_t)tx * (1.0 / LSS__NB_TWO32)), fy = (float)((uint32_t)ty * (1.0 / LSS__NB_TWO32));
                    float fz = (float)((uint32_t)tz * (1.0 / LSS__NB_TWO32)), gx = 1 - fx, gy = 1 - fy, gz = 1 - fz, pmax = 0;
                    float w0 = gx * gy, w1 = gx * fy, w2 = fx * gy, w3 = fx * fy;
                    int d;
                    /* lss__nb_kick1's operations, in its order, inlined */
                    for (d = 0; d < 3; d++, a0 += (B + 1) * L, a1 += (B + 1) * L) {
                        float g = w0 * (gz * a0[0] + fz * a0[1]), pv, ap;
                        g += w1 * (gz * a0[L] + fz * a0[L + 1]);
                        g += w2 * (gz * a1[0] + fz * a1[1]);
                        g += w3 * (gz * a1[L] + fz * a1[L + 1]);
                        pv = s->mom[3 * m + d] - kk * (g * inv12h);
                        ap = pv < 0 ? -pv : pv;
                        s->mom[3 * m + d] = pv;
                        pmax = ap > pmax ? ap : pmax;
                    }
                    if (pmax > maxp) maxp = pmax;
                }
                tmp = G0; G0 = G1; G1 = tmp;
            }
        }
    } else {
        int64_t b, nb = (s->Nl + LSS__NB_BLOCK - 1) / LSS__NB_BLOCK;
LSS__MOMP(omp parallel for schedule(static, 1) reduction(max : maxp) num_threads(T))
        for (b = 0; b < nb; b++) {
            int64_t m, e = (b + 1) * LSS__NB_BLOCK < s->Nl ? (b + 1) * LSS__NB_BLOCK : s->Nl;
            for (m = b * LSS__NB_BLOCK; m < e; m++) {
                const uint32_t *q = s->pos + 3 * m;
                int ix = (int)(((uint64_t)q[0] * (uint64_t)n) >> 32), iy = (int)(((uint64_t)q[1] * (uint64_t)n) >> 32);
                int iz = (int)(((uint64_t)q[2] * (uint64_t)n) >> 32), c, k, o;
                float v[3][4][2], pm;
                const float *X[6];
                size_t Y[6];
                int Z[6];
                for (o = 0; o < 6; o++) { /* the stencil's planes, rows and columns i - 2 .. i + 3, wrapped */
                    int vx = ix + o - 2, vy = iy + o - 2, vz = iz + o - 2;
                    vx = vx < 0 ? vx + n : vx >= n ? vx - n : vx;
                    vy = vy < 0 ? vy + n : vy >= n ? vy - n : vy;
                    vz = vz < 0 ? vz + n : vz >= n ? vz - n : vz;
                    X[o] = pl[vx];
                    Y[o] = (size_t)vy * R;
                    Z[o] = vz;
                }
                for (c = 0; c < 4; c++) { /* corner (ix + a, iy + b): stencil entries 2 + a and 2 + b */
                    int xa = 2 + (c >> 1), yb = 2 + (c & 1);
                    const float *row = X[xa] + Y[yb];
                    const float *xp1 = X[xa + 1] + Y[yb], *xm1 = X[xa - 1] + Y[yb], *xp2 = X[xa + 2] + Y[yb], *xm2 = X[xa - 2] + Y[yb];
                    const float *yp1 = X[xa] + Y[yb + 1], *ym1 = X[xa] + Y[yb - 1], *yp2 = X[xa] + Y[yb + 2], *ym2 = X[xa] + Y[yb - 2];
                    for (k = 0; k < 2; k++) {
                        int z = Z[2 + k];
                        v[0][c][k] = lss__nb_fd1(xp1[z], xm1[z], xp2[z], xm2[z]);
                        v[1][c][k] = lss__nb_fd1(yp1[z], ym1[z], yp2[z], ym2[z]);
                        v[2][c][k] = lss__nb_fd1(row[Z[3 + k]], row[Z[1 + k]], row[Z[4 + k]], row[Z[k]]);
                    }
                }
                pm = lss__nb_kick1(s, m, n, v, kk, inv12h);
                if (pm > maxp) maxp = pm;
            }
        }
    }
    s->maxp = maxp;
}

/* dst = f(k) src on the half-complex layout of an n grid: kind 0: k_a k_b / k^2, 1: i k_a / k^2, 2: -i k_a / k^2;
   times scale; Nyquist modes, k = 0 and the padding zeroed */
static void lss__nb_kfill(const lss__nbgrid *g, double L, const float *src, float *dst, int kind, int da, int db,
                          double scale) {
    int n = g->n, cp = g->cp, x;
    double kf = LSS__NB_TWOPI / L;
LSS__MOMP(omp parallel for schedule(static))
    for (x = 0; x < n; x++) {
        int y, z;
        double kv[3];
        kv[0] = kf * lss__nb_fidx(x, n);
        for (y = g->y0; y < g->y0 + g->ny; y++) {
            kv[1] = kf * lss__nb_fidx(y, n);
            for (z = 0; z < cp; z++) {
                size_t i = 2 * (((size_t)x * g->sx + (size_t)(y - g->y0) * g->sy) * cp + z);
                double k2, f, re = src[i], im = src[i + 1];
                kv[2] = kf * z;
                if (z >= n / 2 || x == n / 2 || y == n / 2 || (x == 0 && y == 0 && z == 0)) {
                    dst[i] = dst[i + 1] = 0;
                    continue;
                }
                k2 = kv[0] * kv[0] + kv[1] * kv[1] + kv[2] * kv[2];
                if (kind == 0) {
                    f = scale * kv[da] * kv[db] / k2;
                    dst[i] = (float)(f * re);
                    dst[i + 1] = (float)(f * im);
                } else {
                    f = (kind == 1 ? scale : -scale) * kv[da] / k2;
                    dst[i] = (float)(-f * im);
                    dst[i + 1] = (float)(f * re);
                }
            }
        }
    }
}

/* 2LPT initial conditions at a_node[0] */
static int lss__nb_ic(lss_nbody *s, const lss__nbgrid *g) {
    int np = s->np, cp = lss__nb_cp(np), lpt2 = s->o.lpt_order == 2, d, x, st, q;
    size_t F = (g->floats + 15) & ~(size_t)15, R = (size_t)(2 * cp);
    float *B0 = s->work, *B1 = B0 + F, *B2 = lpt2 ? B1 + F : NULL, *B3 = lpt2 ? B1 + 2 * F : NULL; /* 2 or 4 fields */
    lss__nbfft f;
    double a = s->a_node[0], e = sqrt(s->om / (a * a * a) + s->ol), d1, gp1, d2 = 0, gp2 = 0;
    double sc = LSS__NB_TWO32 / s->L;
    static const int pairs[3][2] = {{0, 1}, {0, 2}, {1, 2}};
    if ((st = lss__nbfft_init(&f, np, B0, lss__nb_nthreads())) != LSS_OK) return st;
    lss__nb_dg(s, a, &d1, &gp1);
    if (lpt2) {
        double oma = s->om / (a * a * a * e * e), f1 = a * (gp1 / (a * a * a * e)) / d1;
        d2 = -3.0 / 7.0 * d1 * d1 * pow(oma, -1.0 / 143.0);
        gp2 = a * a * e * d2 * (2 * f1 + 3 * (1 - oma) / 143.0);
    }
    /* the z = 0 linear modes */
LSS__MOMP(omp parallel for schedule(dynamic, 1))
    for (x = 0; x < np; x++) {
        int y, z;
        for (y = g->y0; y < g->y0 + g->ny; y++)
            for (z = 0; z < cp; z++) {
                size_t j = 2 * (((size_t)x * g->sx + (size_t)(y - g->y0) * g->sy) * cp + z);
                double re = 0, im = 0;
                if (z <= np / 2) lss__nb_mode(s, lss__nb_fidx(x, np), lss__nb_fidx(y, np), z, &re, &im);
                B0[j] = (float)re;
                B0[j + 1] = (float)im;
            }
    }
    if (lpt2) {
        /* S = sum_{i<j} phi_ii phi_jj - phi_ij^2 in B3, then its transform */
        int64_t ii, nf = (int64_t)((size_t)g->nx * np * R);
        lss__nb_kfill(g, s->L, B0, B1, 0, 0, 0, 1);
        lss__nbfft_bwdg(&f, g, B1);
        lss__nb_kfill(g, s->L, B0, B2, 0, 1, 1, 1);
        lss__nbfft_bwdg(&f, g, B2);
LSS__MOMP(omp parallel for schedule(static))
        for (ii = 0; ii < nf; ii++) { B3[ii] = B1[ii] * B2[ii]; B1[ii] += B2[ii]; }
        lss__nb_kfill(g, s->L, B0, B2, 0, 2, 2, 1);
        lss__nbfft_bwdg(&f, g, B2);
LSS__MOMP(omp parallel for schedule(static))
        for (ii = 0; ii < nf; ii++) B3[ii] += B1[ii] * B2[ii];
        for (q = 0; q < 3; q++) {
            lss__nb_kfill(g, s->L, B0, B2, 0, pairs[q][0], pairs[q][1], 1);
            lss__nbfft_bwdg(&f, g, B2);
LSS__MOMP(omp parallel for schedule(static))
            for (ii = 0; ii < nf; ii++) B3[ii] -= B2[ii] * B2[ii];
        }
        lss__nbfft_fwdg(&f, g, B3);
    }
    for (d = 0; d < 3; d++) {
        lss__nb_kfill(g, s->L, B0, B1, 1, d, 0, 1);
        lss__nbfft_bwdg(&f, g, B1);
        if (lpt2) {
            lss__nb_kfill(g, s->L, B3, B2, 2, d, 0, 1.0 / ((double)np * np * np));
            lss__nbfft_bwdg(&f, g, B2);
        }
LSS__MOMP(omp parallel for schedule(static))
        for (x = g->x0; x < g->x0 + g->nx; x++) {
            int y, z, gq[3];
            gq[0] = x;
            for (y = 0; y < np; y++) {
                gq[1] = y;
                for (z = 0; z < np; z++) {
                    size_t fi = ((size_t)(x - g->x0) * np + y) * R + z;
                    int64_t m = ((int64_t)(x - g->x0) * np + y) * np + z;
                    double p1 = B1[fi], p2 = lpt2 ? B2[fi] : 0;
                    uint32_t q0;
                    gq[2] = z;
                    if (d == 0 && s->gid) s->gid[m] = ((int64_t)x * np + y) * np + z;
                    q0 = (uint32_t)(((uint64_t)gq[d] << 32) / (uint64_t)np);
                    s->pos[3 * m + d] = q0 + (uint32_t)lss__nb_round((d1 * p1 + d2 * p2) * sc);
                    s->mom[3 * m + d] = (float)(gp1 * p1 + gp2 * p2);
                }
            }
        }
    }
    lss__nbfft_free(&f);
    return LSS_OK;
}

/* ---- light cone ---- */
typedef struct {
    int active, k0, k1;
    double chi_i, chi_f, zlo, zhi, mg, xlim;
    double cn[LSS__NB_TN];          /* chi at t = j / (LSS__NB_TN - 1) */
} lss__nbstep;

static void lss__nb_lc_setup(const lss_nbody *s, int i, double dqm, lss__nbstep *q) {
    enum { NA = 8 * (LSS__NB_TN - 1) + 1 };
    double ai = s->a_node[i], af = s->a_node[i + 1], di = s->d_node[i], df = s->d_node[i + 1];
    double lo, hi, ub, ct, tg[NA];
    int j, g = 0;
    memset(q, 0, sizeof *q);
    if (!s->lc) return;
    lo = s->chi_edges[0];
    hi = s->chi_edges[s->nshell];
    /* t(a) = (D1(a) - D1(a_i)) / (D1(a_f) - D1(a_i)) on a fine grid in a, inverted linearly at the t nodes */
    for (j = 0; j < NA; j++) {
        double a = ai + (af - ai) * j / (NA - 1), d, gp;
        lss__nb_dg(s, a, &d, &gp);
        tg[j] = j == 0 ? 0 : j == NA - 1 ? 1 : (d - di) / (df - di);
    }
    for (j = 0; j < LSS__NB_TN; j++) {
        double t = (double)j / (LSS__NB_TN - 1), a;
        if (j == 0) a = ai;
        else if (j == LSS__NB_TN - 1) a = af;
        else {
            while (g < NA - 2 && tg[g + 1] < t) g++;
            a = ai + (af - ai) * (g + (t - tg[g]) / (tg[g + 1] - tg[g])) / (NA - 1);
        }
        q->cn[j] = lss_cosmo_chi(s->c, 1 / a - 1);
    }
    q->chi_i = q->cn[0];
    q->chi_f = q->cn[LSS__NB_TN - 1];
    q->mg = s->maxp * fabs(dqm) * 1.7320508075688772 + 1e-3;
    if (q->chi_f >= hi + q->mg || q->chi_i <= lo - q->mg) return;
    ub = (s->side / 2 + 1) * s->pix;
    ct = 1 / sqrt(1 + 2 * ub * ub);
    q->zhi = (q->chi_i < hi ? q->chi_i : hi) + q->mg;
    q->zlo = (q->chi_f > lo ? q->chi_f : lo) * ct - q->mg;
    q->xlim = q->zhi * ub + q->mg;
    q->k0 = (int)floor(q->zlo / s->L);
    q->k1 = (int)floor(q->zhi / s->L);
    if (q->k0 < 0) q->k0 = 0;
    if (q->k1 > s->nrep - 1) q->k1 = s->nrep - 1;
    q->active = q->k0 <= q->k1;
}

static double lss__nb_chi_t(const lss__nbstep *q, double t) {
    double u = t * (LSS__NB_TN - 1);
    int j = (int)u;
    if (j < 0) j = 0;
    if (j > LSS__NB_TN - 2) j = LSS__NB_TN - 2;
    return q->cn[j] + (q->cn[j + 1] - q->cn[j]) * (u - j);
}

static void lss__nb_acc_add(int64_t *p, int64_t w) {
LSS__MOMP(omp atomic)
    *p += w;
}

/* one image of a particle at P (observer frame, start of the drift) moving by dP: paint its crossing into acc0
   (own: this thread's private sums; else the shared ones, atomically) */
static void lss__nb_lc_cross(lss_nbody *s, const lss__nbstep *q, int64_t *acc0, int own, int c, double px, double py,
                             double pz, double dx, double dy, double dz) {
    double r0 = px * px + py * py + pz * pz, r1, f0, f1, ta = 0, tb = 1, fa, fb, t = 0, cx, cy, cz, chi;
    double u, v, gx, gy, fx, fy;
    int it, last = 0, b, i0, j0, a, side = s->side;
    int64_t *acc;
    /* squared distances first: they skip the square roots of the many images that do not cross (the margins keep
       every decision that of the exact tests below) */
    if (r0 >= q->chi_i * q->chi_i * (1 + 1e-12)) return;
    r1 = (px + dx) * (px + dx) + (py + dy) * (py + dy) + (pz + dz) * (pz + dz);
    if (r1 < q->chi_f * q->chi_f * (1 - 1e-12)) return;
    f0 = sqrt(r0) - q->chi_i;
    if (f0 >= 0) return;
    f1 = sqrt(r1) - q->chi_f;
    if (f1 < 0) return;
    fa = f0;
    fb = f1;
    for (it = 0; it < 60; it++) { /* Illinois regula falsi */
        double ft, x, y, z;
        t = (ta * fb - tb * fa) / (fb - fa);
        x = px + t * dx; y = py + t * dy; z = pz + t * dz;
        ft = sqrt(x * x + y * y + z * z) - lss__nb_chi_t(q, t);
        if (fabs(ft) < 1e-7) break;
        if (ft < 0) { ta = t; fa = ft; if (last == -1) fb *= 0.5; last = -1; }
        else { tb = t; fb = ft; if (last == 1) fa *= 0.5; last = 1; }
    }
    cx = px + t * dx; cy = py + t * dy; cz = pz + t * dz;
    chi = sqrt(cx * cx + cy * cy + cz * cz);
    if (!(cz > 0) || chi < s->chi_edges[0] || chi >= s->chi_edges[s->nshell]) return;
    /* the shell: the last edge <= chi, from the run's table of shells on a uniform grid in chi */
    {
        double e0 = s->chi_edges[0], span = s->chi_edges[s->nshell] - e0;
        int k = (int)((chi - e0) / span * LSS__NB_SHTAB);
        k = k < 0 ? 0 : k >= LSS__NB_SHTAB ? LSS__NB_SHTAB - 1 : k;
        b = s->shtab[k];
        while (b + 1 < s->nshell && s->chi_edges[b + 1] <= chi) b++;
        while (b > 0 && s->chi_edges[b] > chi) b--;
    }
    u = cx / cz; v = cy / cz;
    gx = u / s->pix + side / 2 - 0.5;
    gy = v / s->pix + side / 2 - 0.5;
    if (!(gx >= -1 && gx < side && gy >= -1 && gy < side)) return;
    i0 = (int)floor(gx); j0 = (int)floor(gy);
    fx = gx - i0; fy = gy - j0;
    acc = acc0 + ((size_t)c * s->nshell + b) * side * side;
    for (a = 0; a < 2; a++) {
        int64_t w1x = lss__nb_round(fx * (double)s->one), wx = a ? w1x : s->one - w1x;
        int64_t wy1 = lss__nb_round(fy * (double)wx), wy0 = wx - wy1;
        int col = i0 + a;
        if (col < 0 || col >= side) continue;
        if (own) {
            if (j0 >= 0) acc[(size_t)j0 * side + col] += wy0;
            if (j0 + 1 < side) acc[(size_t)(j0 + 1) * side + col] += wy1;
        } else {
            if (j0 >= 0) lss__nb_acc_add(acc + (size_t)j0 * side + col, wy0);
            if (j0 + 1 < side) lss__nb_acc_add(acc + (size_t)(j0 + 1) * side + col, wy1);
        }
    }
}

static void lss__nb_lc_particle(lss_nbody *s, const lss__nbstep *q, int64_t *acc0, int own, const uint32_t x0[3],
                                const int64_t du[3]) {
    double sc = s->L / LSS__NB_TWO32, L = s->L, hl = 0.5 * s->L;
    int c, k, ix, iy;
    for (c = 0; c < s->ncone; c++)
        for (k = q->k0; k <= q->k1; k++) {
            const lss__nbrep *r = s->rep + (size_t)c * s->nrep + k;
            uint32_t y0, y1, y2 = (r->flip[2] ? 0u - x0[r->perm[2]] : x0[r->perm[2]]) + r->shift[2];
            double Z = y2 * sc + k * L, X, Y, dx, dy, dz;
            if (Z < q->zlo || Z > q->zhi) continue;
            y0 = (r->flip[0] ? 0u - x0[r->perm[0]] : x0[r->perm[0]]) + r->shift[0];
            y1 = (r->flip[1] ? 0u - x0[r->perm[1]] : x0[r->perm[1]]) + r->shift[1];
            X = y0 * sc - hl;
            Y = y1 * sc - hl;
            dx = (double)(r->flip[0] ? -du[r->perm[0]] : du[r->perm[0]]) * sc;
            dy = (double)(r->flip[1] ? -du[r->perm[1]] : du[r->perm[1]]) * sc;
            dz = (double)(r->flip[2] ? -du[r->perm[2]] : du[r->perm[2]]) * sc;
            for (ix = -1; ix <= 1; ix++) {
                double xs = X + ix * L;
                if (fabs(xs) > q->xlim) continue;
                for (iy = -1; iy <= 1; iy++) {
                    double ys = Y + iy * L;
                    if (fabs(ys) > q->xlim) continue;
                    lss__nb_lc_cross(s, q, acc0, own, c, xs, ys, Z, dx, dy, dz);
                }
            }
        }
}

/* the held particles in lattice order again (after the initial conditions or a checkpoint): id = index */
static void lss__nb_unsort(lss_nbody *s) {
    int64_t m;
    s->sorted = 0;
    if (!s->id) return;
    for (m = 0; m < s->Nl; m++) lss__nb_ord_set(s->id, s->ord64, m, m);
}

/* the particles moved by dq (position units per unit momentum), painting the light-cone crossings of q when it is
   active. A serial run also sorts its particles by lss__nb_rowkey of the new positions: a stable counting sort
   (per-thread histograms in pbuf over contiguous particle ranges, so the order does not depend on the thread
   count) into pos2 / mom2 / ord, whose pointers are then swapped with pos / mom / id. The painting and the force
   readout then walk the mesh in order. No result depends on the particles' order (exact integer sums,
   per-particle kicks and light-cone weights). */
static void lss__nb_move(lss_nbody *s, double dq, const lss__nbstep *q) {
    int64_t nb = (s->Nl + LSS__NB_BLOCK - 1) / LSS__NB_BLOCK, n2 = (int64_t)s->n * s->n;
    /* a distributed run sorts only in its pass after the migration (dq = 0) */
    int T = lss__nb_nthreads(), B = lss__nb_yblk(s->n);
    int sort = s->pos2 && s->mom2 && !lss__nb_nosort && (s->dist ? s->gid && s->gid2 && dq == 0 : s->id != NULL);
    int own = 0;
    size_t nacc = s->lc ? (size_t)s->ncone * s->nshell * s->side * s->side : 0;
    if (T > s->nthr) T = s->nthr;
    /* light-cone sums: threads past the first paint into private copies (added exactly afterwards) where they take
       at most 256 MB, else all add atomically into s->acc */
    if (q->active && T > 1 && nacc * (size_t)(T - 1) * 8 <= ((size_t)256 << 20) && !lss__nb_lc_shared) {
        if (!s->tacc || s->ntacc < T - 1) {
            LSS_FREE(s->tacc);
            s->ntacc = 0;
            if ((s->tacc = (int64_t *)LSS_MALLOC(sizeof(int64_t) * nacc * (size_t)(T - 1))) != NULL) {
                memset(s->tacc, 0, sizeof(int64_t) * nacc * (size_t)(T - 1));
                s->ntacc = T - 1;
            }
        }
        own = s->tacc != NULL;
    }
LSS__MOMP(omp parallel num_threads(T))
    {
        int t = 0, nt = 1;
        int64_t b, b0, b1, m, *h, *acc0;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        acc0 = own && t > 0 ? s->tacc + (size_t)(t - 1) * nacc : s->acc;
        b0 = nb * t / nt;
        b1 = nb * (t + 1) / nt;
        h = s->pbuf + (size_t)t * n2;
        if (sort) memset(h, 0, sizeof(int64_t) * (size_t)n2);
        for (b = b0; b < b1; b++) {
            int64_t e = (b + 1) * LSS__NB_BLOCK < s->Nl ? (b + 1) * LSS__NB_BLOCK : s->Nl;
            for (m = b * LSS__NB_BLOCK; m < e; m++) {
                uint32_t x0[3], x1[3];
                int64_t du[3];
                int d;
                for (d = 0; d < 3; d++) {
                    x0[d] = s->pos[3 * m + d];
                    du[d] = lss__nb_round((double)s->mom[3 * m + d] * dq);
                    x1[d] = x0[d] + (uint32_t)du[d];
                }
                if (q->active) lss__nb_lc_particle(s, q, acc0, own, x0, du);
                if (sort) h[lss__nb_rowkey(x1, s->n, B)]++; /* the new position is written by the sort */
                else memcpy(s->pos + 3 * m, x1, 12);
            }
        }
        if (sort) {
LSS__MOMP(omp barrier)
LSS__MOMP(omp single)
            {   /* offsets: key by key, thread by thread (the threads' ranges are in particle order) */
                int64_t run = 0, k;
                int u;
                for (k = 0; k < n2; k++) {
                    if (k % B == 0) s->pstart[k / B] = run;
                    for (u = 0; u < nt; u++) {
                        int64_t *c = s->pbuf + (size_t)u * n2 + k, cnt = *c;
                        *c = run;
                        run += cnt;
                    }
                }
                s->pstart[n2 / B] = run;
            }
            for (b = b0; b < b1; b++) {
                int64_t e = (b + 1) * LSS__NB_BLOCK < s->Nl ? (b + 1) * LSS__NB_BLOCK : s->Nl;
                for (m = b * LSS__NB_BLOCK; m < e; m++) {
                    uint32_t x1[3];
                    int64_t to;
                    int d;
                    for (d = 0; d < 3; d++) x1[d] = s->pos[3 * m + d] + (uint32_t)lss__nb_round((double)s->mom[3 * m + d] * dq);
                    to = h[lss__nb_rowkey(x1, s->n, B)]++;
                    memcpy(s->pos2 + 3 * to, x1, 12);
                    memcpy(s->mom2 + 3 * to, s->mom + 3 * m, 12);
                    if (s->dist) s->gid2[to] = s->gid[m];
                    else lss__nb_ord_set(s->ord, s->ord64, to, lss__nb_ord_get(s->id, s->ord64, m));
                }
            }
        }
    }
    if (own) { /* the private light-cone sums into s->acc, exactly, and cleared for the next step */
        int64_t k, nk = (int64_t)nacc;
        int ntc = s->ntacc;
LSS__MOMP(omp parallel for schedule(static) num_threads(T))
        for (k = 0; k < nk; k++) {
            int u;
            for (u = 0; u < ntc; u++) {
                int64_t *v = s->tacc + (size_t)u * nacc + k;
                s->acc[k] += *v;
                *v = 0;
            }
        }
    }
    if (sort) {
        uint32_t *tp = s->pos;
        float *tm = s->mom;
        void *ti = s->id;
        s->pos = s->pos2; s->pos2 = tp;
        s->mom = s->mom2; s->mom2 = tm;
        if (s->dist) {
            int64_t *tg = s->gid;
            s->gid = s->gid2; s->gid2 = tg;
        } else {
            s->id = s->ord; s->ord = ti;
        }
        s->sorted = 1;
    }
}

/* drift a_i -> a_{i+1} with the momenta of a_{i+1/2}, painting the light-cone crossings (and sorting: lss__nb_move) */
static void lss__nb_drift(lss_nbody *s, int i) {
    double dqm = (s->d_node[i + 1] - s->d_node[i]) / s->gp_half[i];
    lss__nbstep q;
    lss__nb_lc_setup(s, i, dqm, &q);
    lss__nb_move(s, dqm * LSS__NB_TWO32 / s->L, &q);
}

/* ---- the run object ---- */
LSSDEF void lss_nbody_free(lss_nbody *s) {
    if (!s) return;
    lss__nbfft_free(&s->fm);
    if (s->work) fftwf_free(s->work);
    LSS_FREE(s->pos); LSS_FREE(s->mom); LSS_FREE(s->ord); LSS_FREE(s->hist); LSS_FREE(s->pbuf);
    LSS_FREE(s->id); LSS_FREE(s->pos2); LSS_FREE(s->mom2); LSS_FREE(s->pstart); LSS_FREE(s->rbuf);
    LSS_FREE(s->tacc); LSS_FREE(s->shtab); LSS_FREE(s->gid2);
    LSS_FREE(s->a_node); LSS_FREE(s->a_half); LSS_FREE(s->d_node); LSS_FREE(s->gp_node); LSS_FREE(s->d_half);
    LSS_FREE(s->gp_half); LSS_FREE(s->z_edges); LSS_FREE(s->chi_edges); LSS_FREE(s->acc); LSS_FREE(s->rep);
    LSS_FREE(s->plane); LSS_FREE(s->gid);
    if (s->ghost) fftwf_free(s->ghost);
    if (s->work2) fftwf_free(s->work2);
#ifdef LSS_MPI
    if (s->gm.tp) fftwf_destroy_plan((fftwf_plan)s->gm.tp);
    if (s->tpf) fftwf_destroy_plan((fftwf_plan)s->tpf);
    if (s->tpb) fftwf_destroy_plan((fftwf_plan)s->tpb);
#endif
    LSS_FREE(s);
}

/* validation, geometry, allocation, tables and plans (no particles yet) */
#ifdef LSS_MPI
static int lss__nb_dist_layout(lss_nbody *s, size_t *work_floats);
static int lss__nb_dist_plan(lss_nbody *s);
#endif
static int lss__nb_setup(const lss_cosmo *c, const lss_nbody_opts *oin, const lss_lightcone_opts *lc, uint64_t seed,
                         uint64_t index, int dist, lss_nbody **out) {
    static const unsigned char perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    lss_nbody_opts o;
    lss_nbody *s;
    int st, i, T = lss__nb_nthreads();
    double bytes, phys, chi_max = 0, pix = 0, a0, dd;
    int64_t N;
    int nosortbuf = lss__nb_nosort == 2;
    if (out) *out = NULL;
    if (!c || !out) return lss_seterr(LSS_ERR_ARG, "N-body: NULL cosmology or output");
    lss__nb_fill_opts(oin, &o);
    if ((st = lss__nb_check_opts(&o)) != LSS_OK) return st;
    if (lc) {
        double zmax;
        if ((st = lss__nb_check_lc(lc)) != LSS_OK) return st;
        zmax = lc->z_edges[lc->nshell];
        if (!(zmax < o.z_init))
            return lss_seterr(LSS_ERR_ARG, "light cone: the deepest shell edge z = %g is not below z_init = %g (the run "
                                           "starts there)", zmax, o.z_init);
        chi_max = lss_cosmo_chi(c, zmax);
        pix = lc->pixel_arcmin * LSS__ARCMIN;
        if (lc->side * pix * chi_max > o.box)
            return lss_seterr(LSS_ERR_ARG, "light cone: the field (%d pixels of %g arcmin = %.3f deg) is %.1f Mpc/h wide "
                                           "at the deepest shell edge (z = %g, chi = %.1f Mpc/h), wider than the box "
                                           "(%g Mpc/h)", lc->side, lc->pixel_arcmin, lc->side * lc->pixel_arcmin / 60.0,
                              lc->side * pix * chi_max, zmax, chi_max, o.box);
    }
    bytes = (double)lss__nb_bytes(&o, lc, T, 1);
    phys = lss__nb_physmem();
    /* the cell sort is for speed only (the same bits without it): dropped when its buffers do not fit */
    if (phys > 0 && bytes > phys && !dist) {
        nosortbuf = 1;
        bytes = (double)lss__nb_bytes(&o, lc, T, 0);
    }
    if (phys > 0 && bytes > phys && !dist)
        return lss_seterr(LSS_ERR_NOMEM, "N-body: np = %d, mesh = %d need %.2f GB, more than this machine's %.2f GB",
                          o.np, o.mesh, bytes / 1e9, phys / 1e9);
    s = (lss_nbody *)LSS_MALLOC(sizeof *s);
    if (!s) goto nomem;
    memset(s, 0, sizeof *s);
    s->c = c;
    s->o = o;
    s->om = c->om;
    s->ol = c->ol;
    s->L = o.box;
    s->seed = seed;
    s->index = index;
    s->np = o.np;
    s->n = o.mesh;
    s->steps = o.steps;
    N = s->N = (int64_t)o.np * o.np * o.np;
    s->ord64 = N > (int64_t)0xFFFFFFFF;
    {   /* 2^min(31, 62 - ceil(log2 N)): the total N one < 2^62, and one * (a 32-bit fraction) < 2^63 */
        int lg = 0;
        while (((int64_t)1 << lg) < N) lg++;
        s->one = (int64_t)1 << (62 - lg < 31 ? 62 - lg : 31);
    }
    lss__nb_growth_raw(s->om, s->ol, 1.0, &s->d2norm, &dd);
    s->Nl = s->cap = N;
    {
        size_t mf = lss__nb_gridfloats(s->n), icf = (size_t)(o.lpt_order == 2 ? 4 : 2) * lss__nb_gridfloats(s->np);
        s->work_floats = mf > icf ? mf : icf;
    }
#ifdef LSS_MPI
    if (dist) {
        if ((st = lss__nb_dist_layout(s, &s->work_floats)) != LSS_OK) { lss_nbody_free(s); return st; }
        s->lean = dist == 1;
        bytes = (double)s->cap * (24 + 8 + (s->ord64 ? 8 : 4)) + 4.0 * (double)s->work_floats * (s->lean ? 1 : 2) +
                (double)T * (s->n * (double)s->n * 8 + (s->n + 1) * 8.0) + 20.0 * s->n * (2.0 * s->fm.cp + 2 * s->gm.cp);
        if (phys > 0 && bytes + 32.0 * s->cap > phys) nosortbuf = 1; /* the cell sort only where it fits */
        else bytes += 32.0 * s->cap;
        if (phys > 0 && bytes > phys) {
            st = lss_seterr(LSS_ERR_NOMEM, "N-body over %d ranks: np = %d, mesh = %d need %.2f GB per rank, more than "
                            "this machine's %.2f GB", s->size, o.np, o.mesh, bytes / 1e9, phys / 1e9);
            lss_nbody_free(s);
            return st;
        }
    }
#else
    (void)dist;
#endif
    s->pos = (uint32_t *)LSS_MALLOC(sizeof(uint32_t) * 3 * (size_t)s->cap);
    s->mom = (float *)LSS_MALLOC(sizeof(float) * 3 * (size_t)s->cap);
    s->ord = LSS_MALLOC((s->ord64 ? 8 : 4) * (size_t)s->cap);
    if (s->dist) s->gid = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)s->cap);
    if (!nosortbuf) { /* the cell sort's buffers (lss__nb_move) */
        if (s->dist) s->gid2 = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)s->cap);
        else s->id = LSS_MALLOC((s->ord64 ? 8 : 4) * (size_t)s->cap);
        s->pos2 = (uint32_t *)LSS_MALLOC(sizeof(uint32_t) * 3 * (size_t)s->cap);
        s->mom2 = (float *)LSS_MALLOC(sizeof(float) * 3 * (size_t)s->cap);
        if ((s->dist ? !s->gid2 : !s->id) || !s->pos2 || !s->mom2) goto nomem;
    }
    s->pstart = (int64_t *)LSS_MALLOC(sizeof(int64_t) * ((size_t)s->n / 2 * s->n + 1));
    s->work = (float *)fftwf_malloc(sizeof(float) * s->work_floats);
    if ((s->dist && !s->gid) || !s->pstart) goto nomem;
    s->nthr = T;
    s->hist = (int64_t *)LSS_MALLOC(sizeof(int64_t) * lss__nb_histlen(s->n, T));
    s->pbuf = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)T * s->n * s->n);
    s->rbuf = (float *)LSS_MALLOC(sizeof(float) * (size_t)T * lss__nb_rbuf_floats(s->n));
    s->a_node = (double *)LSS_MALLOC(sizeof(double) * (size_t)(o.steps + 1));
    s->d_node = (double *)LSS_MALLOC(sizeof(double) * (size_t)(o.steps + 1));
    s->gp_node = (double *)LSS_MALLOC(sizeof(double) * (size_t)(o.steps + 1));
    s->a_half = (double *)LSS_MALLOC(sizeof(double) * (size_t)o.steps);
    s->d_half = (double *)LSS_MALLOC(sizeof(double) * (size_t)o.steps);
    s->gp_half = (double *)LSS_MALLOC(sizeof(double) * (size_t)o.steps);
    if (!s->pos || !s->mom || !s->ord || !s->work || !s->hist || !s->pbuf || !s->rbuf || !s->a_node || !s->d_node || !s->gp_node ||
        !s->a_half || !s->d_half || !s->gp_half)
        goto nomem;
    a0 = 1 / (1 + o.z_init);
    for (i = 0; i <= o.steps; i++) {
        double f = (double)i / o.steps, fh = (i + 0.5) / o.steps;
        if (o.spacing == LSS_NB_STEP_LOG_A) {
            s->a_node[i] = i == o.steps ? 1.0 : exp(log(a0) * (1 - f));
            if (i < o.steps) s->a_half[i] = exp(log(a0) * (1 - fh));
        } else {
            s->a_node[i] = i == o.steps ? 1.0 : a0 + (1 - a0) * f;
            if (i < o.steps) s->a_half[i] = a0 + (1 - a0) * fh;
        }
    }
    for (i = 0; i <= o.steps; i++) {
        lss__nb_dg(s, s->a_node[i], &s->d_node[i], &s->gp_node[i]);
        if (i < o.steps) lss__nb_dg(s, s->a_half[i], &s->d_half[i], &s->gp_half[i]);
    }
    if (lc) {
        int b, cc, k;
        s->lc = 1;
        s->ncone = lc->ncone ? lc->ncone : 1;
        s->nshell = lc->nshell;
        s->side = lc->side;
        s->pix = pix;
        s->nrep = (int)floor(chi_max / s->L) + 2;
        s->z_edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(s->nshell + 1));
        s->chi_edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(s->nshell + 1));
        s->acc = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)s->ncone * s->nshell * s->side * s->side);
        s->rep = (lss__nbrep *)LSS_MALLOC(sizeof(lss__nbrep) * (size_t)s->ncone * s->nrep);
        if (!s->z_edges || !s->chi_edges || !s->acc || !s->rep) goto nomem;
        memset(s->acc, 0, sizeof(int64_t) * (size_t)s->ncone * s->nshell * s->side * s->side);
        for (b = 0; b <= s->nshell; b++) {
            s->z_edges[b] = lc->z_edges[b];
            s->chi_edges[b] = lss_cosmo_chi(c, lc->z_edges[b]);
        }
        if (!(s->shtab = (int *)LSS_MALLOC(sizeof(int) * LSS__NB_SHTAB))) goto nomem;
        for (k = 0, b = 0; k < LSS__NB_SHTAB; k++) { /* the last edge <= the start of entry k */
            double ch = s->chi_edges[0] + (s->chi_edges[s->nshell] - s->chi_edges[0]) * k / LSS__NB_SHTAB;
            while (b + 1 < s->nshell && s->chi_edges[b + 1] <= ch) b++;
            s->shtab[k] = b;
        }
        for (cc = 0; cc < s->ncone; cc++) {
            lss_rng r;
            uint32_t sub[3];
            int d;
            lss_rng_for(&r, seed, LSS_STREAM_NBODY_CONE, index, (uint32_t)cc);
            /* one sub-lattice offset per cone (block 2^40): the observer at a random place in the lattice cell */
            lss_rng_seek(&r, (uint64_t)1 << 40);
            for (d = 0; d < 3; d++) sub[d] = (uint32_t)(((uint64_t)lss_rng_u32(&r) * ((uint64_t)1 << 32) / (uint64_t)o.np) >> 32);
            for (k = 0; k < s->nrep; k++) {
                lss__nbrep *rp = s->rep + (size_t)cc * s->nrep + k;
                uint32_t e;
                lss_rng_seek(&r, 16 * (uint64_t)k);
                e = lss_rng_below(&r, 48);
                for (d = 0; d < 3; d++) {
                    rp->perm[d] = perms[e / 8][d];
                    rp->flip[d] = (unsigned char)((e >> d) & 1u);
                }
                /* whole particle spacings plus the cone's offset: the lattice stays continuous across replica faces */
                for (d = 0; d < 3; d++)
                    rp->shift[d] = (uint32_t)(((uint64_t)lss_rng_below(&r, (uint32_t)o.np) << 32) / (uint64_t)o.np) + sub[d];
            }
        }
    }
    if ((st = lss__nbfft_init(&s->fm, s->n, s->work, T)) != LSS_OK) { lss_nbody_free(s); return st; }
    s->plane = (const float **)LSS_MALLOC(sizeof(float *) * (size_t)s->n);
    if (!s->plane) goto nomem;
    if (!s->dist) {
        lss__nbgrid_serial(&s->gm, s->n);
        for (i = 0; i < s->n; i++) s->plane[i] = s->work + (size_t)i * s->n * 2 * s->gm.cp;
    }
#ifdef LSS_MPI
    else if ((st = lss__nb_dist_plan(s)) != LSS_OK) { lss_nbody_free(s); return st; }
#endif
    *out = s;
    return LSS_OK;
nomem:
    lss_nbody_free(s);
    return lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory (np = %d, mesh = %d need %.2f GB)", o.np, o.mesh, bytes / 1e9);
}

/* initial conditions and the first half kick */
#ifdef LSS_MPI
static int lss__nb_dist_ic(lss_nbody *s);
#endif
static int lss__nb_start(lss_nbody *s) {
    double t0 = lss_time_now(), kf;
    int st;
    lss__nbgrid g;
    lss__nbgrid_serial(&g, s->np);
#ifdef LSS_MPI
    if (s->dist) st = lss__nb_dist_ic(s);
    else
#endif
        st = lss__nb_ic(s, &g);
    if (st != LSS_OK) return st;
    lss__nb_unsort(s);
    if (!s->dist) { /* sorted by mesh cell for the first force (no move) */
        lss__nbstep q0;
        memset(&q0, 0, sizeof q0);
        lss__nb_move(s, 0, &q0);
    }
    kf = (s->gp_half[0] - s->gp_node[0]) / (1.5 * s->om * s->d_node[0]);
    st = lss__nb_force(s, kf, s->nthr < lss__nb_nthreads() ? s->nthr : lss__nb_nthreads(), s->hist, s->pbuf);
    if (st != LSS_OK) return st;
    s->step = 0;
    memset(&s->st, 0, sizeof s->st);
    s->st.ic = lss_time_now() - t0;
    return LSS_OK;
}

LSSDEF int lss_nbody_create(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc, uint64_t seed,
                            uint64_t index, lss_nbody **out) {
    lss_nbody *s;
    int st = lss__nb_setup(c, o, lc, seed, index, 0, &s);
    if (st != LSS_OK) return st;
    if ((st = lss__nb_start(s)) != LSS_OK) { lss_nbody_free(s); return st; }
    *out = s;
    return LSS_OK;
}

#ifdef LSS_MPI
static int lss__nb_migrate(lss_nbody *s);
#endif
LSSDEF int lss_nbody_step(lss_nbody *s) {
    double t0;
    int i, st;
    if (!s) return lss_seterr(LSS_ERR_ARG, "N-body: NULL run");
    if (s->step >= s->steps) return lss_seterr(LSS_ERR_STATE, "N-body: all %d steps are done", s->steps);
    t0 = lss_time_now();
    i = s->step;
    lss__nb_drift(s, i);
#ifdef LSS_MPI
    if (s->dist) {
        lss__nbstep q0;
        s->sorted = 0;
        if ((st = lss__nb_migrate(s)) != LSS_OK) return st;
        memset(&q0, 0, sizeof q0);
        lss__nb_move(s, 0, &q0); /* sorted by cell for the painting's and the readout's locality */
    }
#endif
    s->st.drift += lss_time_now() - t0;
    if (i + 1 < s->steps) {
        double kf = (s->gp_half[i + 1] - s->gp_half[i]) / (1.5 * s->om * s->d_node[i + 1]);
        int T = lss__nb_nthreads();
        if ((st = lss__nb_force(s, kf, T < s->nthr ? T : s->nthr, s->hist, s->pbuf)) != LSS_OK) return st;
        s->st.nforce++;
    }
    s->step++;
    s->st.nsteps++;
    s->st.steps += lss_time_now() - t0;
    return LSS_OK;
}

LSSDEF int lss_nbody_steps_done(const lss_nbody *s) { return s ? s->step : 0; }
LSSDEF double lss_nbody_a(const lss_nbody *s) { return s ? s->a_node[s->step] : NAN; }
LSSDEF double lss_nbody_a_next(const lss_nbody *s) {
    return s ? s->a_node[s->step < s->steps ? s->step + 1 : s->step] : NAN;
}
LSSDEF void lss_nbody_get_stats(const lss_nbody *s, lss_nbody_stats *st) {
    if (!st) return;
    if (s) *st = s->st;
    else memset(st, 0, sizeof *st);
}
LSSDEF const lss_nbody_opts *lss_nbody_get_opts(const lss_nbody *s) { return s ? &s->o : NULL; }
LSSDEF int64_t lss_nbody_mass_unit(const lss_nbody *s) { return s ? s->one : 0; }

LSSDEF int lss_nbody_growth(const lss_cosmo *c, double a, double *d1, double *dd1da) {
    double dr, ddr, n1, dn1;
    if (!c || !(a > 0) || !(a <= 100)) return lss_seterr(LSS_ERR_ARG, "N-body growth: need a cosmology and 0 < a <= 100 (a = %g)", a);
    lss__nb_growth_raw(c->om, c->ol, a, &dr, &ddr);
    lss__nb_growth_raw(c->om, c->ol, 1.0, &n1, &dn1);
    if (d1) *d1 = dr / n1;
    if (dd1da) *dd1da = ddr / n1;
    return LSS_OK;
}

/* drift (position units per unit momentum) that brings the positions to a */
static int lss__nb_query_dq(const lss_nbody *s, double a, double *dq) {
    double ai = s->a_node[s->step], an = lss_nbody_a_next(s), d, gp;
    *dq = 0;
    if (s->dist)
        return lss_seterr(LSS_ERR_STATE, "N-body: density, power and modes are not available in a run distributed over "
                                         "%d ranks (lss_nbody_particles gathers its particles)", s->size);
    if (a == 0 || a == ai) return LSS_OK;
    if (!(a > ai && a <= an))
        return lss_seterr(LSS_ERR_RANGE, "N-body: a = %g is outside [%g, %g], where the particles can be placed now "
                                         "(step %d of %d)", a, ai, an, s->step, s->steps);
    lss__nb_dg(s, a, &d, &gp);
    *dq = (d - s->d_node[s->step]) / s->gp_half[s->step] * LSS__NB_TWO32 / s->L;
    return LSS_OK;
}

/* a painted grid of side m at a: the force mesh when m == n, otherwise buffers of its own (*own = 1) */
static int lss__nb_grid(lss_nbody *s, double a, int m, float **buf, lss__nbfft *f, int *own, int want_fft,
                        int64_t *mass) {
    double dq;
    int st, T = lss__nb_nthreads();
    int64_t *hist = NULL, *pbuf = NULL;
    *own = 0;
    *buf = NULL;
    if ((st = lss__nb_query_dq(s, a, &dq)) != LSS_OK) return st;
    if (m < 8 || m > 4096 || m % 2) return lss_seterr(LSS_ERR_ARG, "N-body: mesh %d must be even and in 8..4096", m);
    if (m == s->n) {
        *buf = s->work;
        if (want_fft) *f = s->fm;
        lss__nb_paint(s, dq, s->work, m, T < s->nthr ? T : s->nthr, s->hist, s->pbuf, mass);
        return LSS_OK;
    }
    *buf = (float *)fftwf_malloc(sizeof(float) * lss__nb_gridfloats(m));
    hist = (int64_t *)LSS_MALLOC(sizeof(int64_t) * lss__nb_histlen(m, T));
    pbuf = (int64_t *)LSS_MALLOC(sizeof(int64_t) * (size_t)T * m * m);
    if (!*buf || !hist || !pbuf) {
        if (*buf) fftwf_free(*buf);
        *buf = NULL;
        LSS_FREE(hist); LSS_FREE(pbuf);
        return lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory for a %d^3 mesh (%.2f GB)", m,
                          4.0 * (double)lss__nb_gridfloats(m) / 1e9);
    }
    *own = 1;
    lss__nb_paint(s, dq, *buf, m, T, hist, pbuf, mass);
    LSS_FREE(hist);
    LSS_FREE(pbuf);
    if (want_fft && (st = lss__nbfft_init(f, m, *buf, T)) != LSS_OK) {
        fftwf_free(*buf);
        *buf = NULL;
        *own = 0;
        return st;
    }
    return LSS_OK;
}

LSSDEF int lss_nbody_density(lss_nbody *s, double a, int mesh, float *delta, int64_t *mass) {
    float *buf;
    lss__nbfft f;
    int own, st, x;
    if (!s) return lss_seterr(LSS_ERR_ARG, "N-body: NULL run");
    if ((st = lss__nb_grid(s, a, mesh, &buf, &f, &own, 0, mass)) != LSS_OK) return st;
    if (delta) {
        size_t R = (size_t)(2 * lss__nb_cp(mesh));
LSS__MOMP(omp parallel for schedule(static))
        for (x = 0; x < mesh; x++) {
            int y;
            for (y = 0; y < mesh; y++)
                memcpy(delta + ((size_t)x * mesh + y) * mesh, buf + ((size_t)x * mesh + y) * R, sizeof(float) * (size_t)mesh);
        }
    }
    if (own) fftwf_free(buf);
    return LSS_OK;
}

static double lss__nb_sinc(double x) { return x == 0 ? 1.0 : sin(x) / x; }

LSSDEF int lss_nbody_power(lss_nbody *s, double a, int mesh, int nbins, int subtract_shot, double *k, double *pk,
                           int64_t *nmodes) {
    float *buf;
    lss__nbfft f;
    int own, st, x, b, cp;
    double *part, kf, dk, V, shot, inv, pi = LSS__NB_TWOPI / 2;
    if (!s) return lss_seterr(LSS_ERR_ARG, "N-body: NULL run");
    if (nbins < 1 || nbins > 100000) return lss_seterr(LSS_ERR_ARG, "N-body power: %d bins (want 1..100000)", nbins);
    part = (double *)LSS_MALLOC(sizeof(double) * 3 * (size_t)nbins * (mesh > 0 && mesh <= 4096 ? mesh : 1));
    if (!part) return lss_seterr(LSS_ERR_NOMEM, "N-body power: out of memory");
    if ((st = lss__nb_grid(s, a, mesh, &buf, &f, &own, 1, NULL)) != LSS_OK) { LSS_FREE(part); return st; }
    lss__nbfft_fwd(&f, buf);
    cp = f.cp;
    kf = LSS__NB_TWOPI / s->L;
    dk = pi * mesh / s->L / nbins;
    V = s->L * s->L * s->L;
    shot = subtract_shot ? V / (double)s->N : 0;
    inv = 1.0 / ((double)mesh * mesh * mesh);
LSS__MOMP(omp parallel for schedule(dynamic, 1))
    for (x = 0; x < mesh; x++) {
        int y, z, mx = lss__nb_fidx(x, mesh);
        double *pp = part + (size_t)x * 3 * nbins, sx = sin(pi * mx / mesh), wx = lss__nb_sinc(pi * mx / mesh);
        const fftwf_complex *cb = (const fftwf_complex *)buf;
        memset(pp, 0, sizeof(double) * 3 * (size_t)nbins);
        for (y = 0; y < mesh; y++) {
            int my = lss__nb_fidx(y, mesh);
            double sy = sin(pi * my / mesh), wy = lss__nb_sinc(pi * my / mesh);
            for (z = 0; z <= mesh / 2; z++) {
                double kk = kf * sqrt((double)mx * mx + (double)my * my + (double)z * z), sz, wz, w2, cc, re, im, p;
                int bb;
                if (kk == 0) continue;
                bb = (int)(kk / dk);
                if (bb >= nbins) continue;
                sz = sin(pi * z / mesh);
                wz = lss__nb_sinc(pi * z / mesh);
                w2 = wx * wy * wz;
                w2 = w2 * w2;
                w2 = w2 * w2;
                cc = (1 - 2.0 / 3.0 * sx * sx) * (1 - 2.0 / 3.0 * sy * sy) * (1 - 2.0 / 3.0 * sz * sz);
                re = cb[((size_t)x * mesh + y) * cp + z][0] * inv;
                im = cb[((size_t)x * mesh + y) * cp + z][1] * inv;
                p = ((re * re + im * im) * V - shot * cc) / w2;
                {
                    double w = (z == 0 || z == mesh / 2) ? 1 : 2;
                    pp[3 * bb] += w;
                    pp[3 * bb + 1] += w * kk;
                    pp[3 * bb + 2] += w * p;
                }
            }
        }
    }
    for (b = 0; b < nbins; b++) {
        double w = 0, sk = 0, sp = 0;
        for (x = 0; x < mesh; x++) {
            w += part[(size_t)x * 3 * nbins + 3 * b];
            sk += part[(size_t)x * 3 * nbins + 3 * b + 1];
            sp += part[(size_t)x * 3 * nbins + 3 * b + 2];
        }
        if (k) k[b] = w > 0 ? sk / w : 0;
        if (pk) pk[b] = w > 0 ? sp / w : 0;
        if (nmodes) nmodes[b] = (int64_t)w;
    }
    LSS_FREE(part);
    if (own) {
        lss__nbfft_free(&f);
        fftwf_free(buf);
    }
    return LSS_OK;
}

LSSDEF int lss_nbody_modes(lss_nbody *s, double a, int nk, const int *kvec, double *out) {
    double dq, *part;
    int64_t b, nb;
    int st, j;
    if (!s || nk < 0 || (nk > 0 && (!kvec || !out))) return lss_seterr(LSS_ERR_ARG, "N-body modes: NULL argument or nk < 0");
    if ((st = lss__nb_query_dq(s, a, &dq)) != LSS_OK) return st;
    if (nk == 0) return LSS_OK;
    nb = (s->N + LSS__NB_BLOCK - 1) / LSS__NB_BLOCK;
    part = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)nk * (size_t)nb);
    if (!part) return lss_seterr(LSS_ERR_NOMEM, "N-body modes: out of memory");
LSS__MOMP(omp parallel for schedule(static, 1))
    for (b = 0; b < nb; b++) {
        int64_t m, e = (b + 1) * LSS__NB_BLOCK < s->N ? (b + 1) * LSS__NB_BLOCK : s->N;
        double *pp = part + (size_t)b * 2 * nk;
        int jj;
        memset(pp, 0, sizeof(double) * 2 * (size_t)nk);
        for (m = b * LSS__NB_BLOCK; m < e; m++) {
            uint32_t x0 = lss__nb_x(s, m, 0, dq), x1 = lss__nb_x(s, m, 1, dq), x2 = lss__nb_x(s, m, 2, dq);
            for (jj = 0; jj < nk; jj++) {
                uint32_t ph = (uint32_t)kvec[3 * jj] * x0 + (uint32_t)kvec[3 * jj + 1] * x1 + (uint32_t)kvec[3 * jj + 2] * x2;
                double ang = ph * (LSS__NB_TWOPI / LSS__NB_TWO32);
                pp[2 * jj] += cos(ang);
                pp[2 * jj + 1] -= sin(ang);
            }
        }
    }
    for (j = 0; j < nk; j++) {
        double re = 0, im = 0;
        for (b = 0; b < nb; b++) {
            re += part[(size_t)b * 2 * nk + 2 * j];
            im += part[(size_t)b * 2 * nk + 2 * j + 1];
        }
        out[2 * j] = re / (double)s->N;
        out[2 * j + 1] = im / (double)s->N;
    }
    LSS_FREE(part);
    return LSS_OK;
}

LSSDEF int lss_nbody_linear_mode(const lss_nbody *s, int nk, const int *kvec, double *out) {
    int j;
    if (!s || nk < 0 || (nk > 0 && (!kvec || !out))) return lss_seterr(LSS_ERR_ARG, "N-body linear modes: NULL argument or nk < 0");
    for (j = 0; j < nk; j++) lss__nb_mode(s, kvec[3 * j], kvec[3 * j + 1], kvec[3 * j + 2], &out[2 * j], &out[2 * j + 1]);
    return LSS_OK;
}

/* exact solid angle of the gnomonic rectangle [u0, u1] x [v0, v1] */
static double lss__nb_omega_f(double u, double v) { return atan(u * v / sqrt(1 + u * u + v * v)); }
static double lss__nb_omega(double u0, double u1, double v0, double v1) {
    return lss__nb_omega_f(u1, v1) - lss__nb_omega_f(u0, v1) - lss__nb_omega_f(u1, v0) + lss__nb_omega_f(u0, v0);
}

LSSDEF int lss_nbody_shells(const lss_nbody *s, lss_shellset *out) {
    size_t np2, i;
    double *om, nbar;
    int b, c, side;
    const int64_t *accs;
    if (!out) return lss_seterr(LSS_ERR_ARG, "N-body shells: NULL output");
    memset(out, 0, sizeof *out);
    if (!s) return lss_seterr(LSS_ERR_ARG, "N-body shells: NULL run");
    if (!s->lc) return lss_seterr(LSS_ERR_STATE, "N-body shells: the run has no light cone");
    accs = s->acc;
    side = s->side;
    np2 = (size_t)side * side;
    om = (double *)LSS_MALLOC(sizeof(double) * np2);
    out->z_edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)(s->nshell + 1));
    out->delta = (float *)LSS_MALLOC(sizeof(float) * (size_t)s->ncone * s->nshell * np2);
    if (!om || !out->z_edges || !out->delta) {
        LSS_FREE(om);
        lss_shellset_free(out);
        return lss_seterr(LSS_ERR_NOMEM, "N-body shells: out of memory");
    }
    for (i = 0; i < np2; i++) {
        int iu = (int)(i % side), iv = (int)(i / side);
        double u0 = (iu - side / 2) * s->pix, v0 = (iv - side / 2) * s->pix;
        om[i] = lss__nb_omega(u0, u0 + s->pix, v0, v0 + s->pix);
    }
#ifdef LSS_MPI
    if (s->dist) { /* each rank painted the crossings of its particles: the exact sum over the ranks */
        size_t nacc = (size_t)s->ncone * s->nshell * np2, off;
        int64_t *tot = (int64_t *)LSS_MALLOC(sizeof(int64_t) * nacc);
        if (lss_mpi_agree(tot ? LSS_OK : LSS_ERR_NOMEM, NULL) != LSS_OK) {
            LSS_FREE(tot); LSS_FREE(om);
            lss_shellset_free(out);
            return lss_seterr(LSS_ERR_NOMEM, "N-body shells: out of memory on a rank");
        }
        for (off = 0; off < nacc; off += (size_t)1 << 26) {
            size_t cnt = nacc - off < ((size_t)1 << 26) ? nacc - off : ((size_t)1 << 26);
            MPI_Allreduce(s->acc + off, tot + off, (int)cnt, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
        }
        lss__mpi_sent += 8.0 * (double)nacc * 2 * (s->size - 1) / s->size;
        accs = tot;
    }
#endif
    nbar = (double)s->N / (s->L * s->L * s->L);
    for (c = 0; c < s->ncone; c++)
        for (b = 0; b < s->nshell; b++) {
            double lo = s->chi_edges[b], hi = s->chi_edges[b + 1], vol = nbar * (hi * hi * hi - lo * lo * lo) / 3;
            const int64_t *a = accs + ((size_t)c * s->nshell + b) * np2;
            float *d = out->delta + ((size_t)c * s->nshell + b) * np2;
            for (i = 0; i < np2; i++) d[i] = (float)((double)a[i] / (double)s->one / (vol * om[i]) - 1.0);
        }
    LSS_FREE(om);
    if (accs != s->acc) LSS_FREE((void *)accs);
    memcpy(out->z_edges, s->z_edges, sizeof(double) * (size_t)(s->nshell + 1));
    out->ncone = s->ncone;
    out->nshell = s->nshell;
    out->side = side;
    out->pixel_arcmin = s->pix / LSS__ARCMIN;
    out->params = *lss_cosmo_params(s->c);
    out->seed = s->seed;
    out->index = s->index;
    out->nbody = s->o;
    out->seconds = 0;
    return LSS_OK;
}

/* ---- checkpoints ---- */
static uint64_t lss__nb_fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    while (n--) { h ^= *b++; h *= 0x100000001b3ULL; }
    return h;
}
static uint64_t lss__nb_fingerprint(const lss_nbody *s) {
    const lss_params *p = lss_cosmo_params(s->c);
    uint64_t h = 0xcbf29ce484222325ULL, u[2];
    double dv[9];
    int iv[12];
    dv[0] = p->omega_m; dv[1] = p->sigma_8; dv[2] = p->omega_b; dv[3] = p->h; dv[4] = p->n_s; dv[5] = p->t_cmb;
    dv[6] = s->o.box; dv[7] = s->o.z_init; dv[8] = s->lc ? s->pix : 0;
    iv[0] = LSS__NB_FORMAT; iv[1] = p->transfer; iv[2] = s->o.np; iv[3] = s->o.mesh; iv[4] = s->o.steps;
    iv[5] = s->o.spacing; iv[6] = s->o.lpt_order; iv[7] = s->o.fixed_amp; iv[8] = s->lc; iv[9] = s->ncone;
    iv[10] = s->nshell; iv[11] = s->side;
    u[0] = s->seed; u[1] = s->index;
    h = lss__nb_fnv(h, dv, sizeof dv);
    h = lss__nb_fnv(h, iv, sizeof iv);
    h = lss__nb_fnv(h, u, sizeof u);
    if (s->lc) h = lss__nb_fnv(h, s->z_edges, sizeof(double) * (size_t)(s->nshell + 1));
    return h;
}
static int64_t lss__nb_nacc(const lss_nbody *s) { return s->lc ? (int64_t)s->ncone * s->nshell * s->side * s->side : 0; }

static int lss__nb_save(const lss_nbody *s, const char *path) {
    lss_wfile w;
    int st, ok;
    uint64_t fp = lss__nb_fingerprint(s);
    int64_t hdr[6], nacc = lss__nb_nacc(s);
    size_t n3 = 3 * (size_t)s->N;
    hdr[0] = s->step; hdr[1] = s->steps; hdr[2] = s->N; hdr[3] = nacc; hdr[4] = s->np; hdr[5] = s->n;
    if ((st = lss_wfile_open(&w, path)) != LSS_OK) return st;
    ok = fwrite("LSSNBCK1", 1, 8, w.f) == 8 && fwrite(&fp, sizeof fp, 1, w.f) == 1 && fwrite(hdr, sizeof hdr, 1, w.f) == 1 &&
         fwrite(&s->maxp, sizeof s->maxp, 1, w.f) == 1;
    if (ok && s->sorted) { /* in lattice order: pos2 / mom2 (free between drifts) take the particles by index */
        int64_t m;
        for (m = 0; m < s->N; m++) {
            int64_t at = lss__nb_ord_get(s->id, s->ord64, m);
            memcpy(s->pos2 + 3 * at, s->pos + 3 * m, 12);
            memcpy(s->mom2 + 3 * at, s->mom + 3 * m, 12);
        }
        ok = fwrite(s->pos2, sizeof(uint32_t), n3, w.f) == n3 && fwrite(s->mom2, sizeof(float), n3, w.f) == n3;
    } else if (ok)
        ok = fwrite(s->pos, sizeof(uint32_t), n3, w.f) == n3 && fwrite(s->mom, sizeof(float), n3, w.f) == n3;
    ok = ok && (nacc == 0 || fwrite(s->acc, sizeof(int64_t), (size_t)nacc, w.f) == (size_t)nacc) &&
         fwrite("LSSNBEND", 1, 8, w.f) == 8;
    if (!ok) {
        lss_wfile_abort(&w);
        return lss_seterr(LSS_ERR_IO, "N-body: writing the checkpoint '%s' failed", path);
    }
    return lss_wfile_commit(&w);
}

#ifdef LSS_MPI
static int lss__nb_owner(const lss_nbody *s, uint32_t x);
#endif
/* ---- checkpoints of a distributed run: one file per rank and an index, loadable at any rank count ----
 * PATH holds the index ("LSSNBDI1", fingerprint, header, the rank count R and the step S); PATH.sS.rK holds rank
 * K's particles (positions, momenta, global indices) and its light-cone sums. Either kind of checkpoint (serial
 * or distributed) resumes a run of either kind at any rank count: particles go to their slab's rank (or their
 * lattice index), light-cone sums are added (exactly, in integers). */
static void lss__nb_rankfile(char *buf, size_t n, const char *path, int64_t step, int64_t rank) {
    snprintf(buf, n, "%s.s%lld.r%lld", path, (long long)step, (long long)rank);
}
/* room for `need` particles, on this rank only */
static int lss__nb_grow(lss_nbody *s, int64_t need) {
    int64_t c;
    uint32_t *p;
    float *m;
    int64_t *g = s->gid;
    void *o;
    if (need <= s->cap) return LSS_OK;
    c = need + need / 4 + 1024;
    if (!(p = (uint32_t *)LSS_REALLOC(s->pos, sizeof(uint32_t) * 3 * (size_t)c))) return LSS_ERR_NOMEM;
    s->pos = p;
    if (!(m = (float *)LSS_REALLOC(s->mom, sizeof(float) * 3 * (size_t)c))) return LSS_ERR_NOMEM;
    s->mom = m;
    if (s->gid && !(g = (int64_t *)LSS_REALLOC(s->gid, sizeof(int64_t) * (size_t)c))) return LSS_ERR_NOMEM;
    s->gid = g;
    if (s->gid2 && !(g = (int64_t *)LSS_REALLOC(s->gid2, sizeof(int64_t) * (size_t)c))) return LSS_ERR_NOMEM;
    s->gid2 = g;
    if (s->pos2 && !(p = (uint32_t *)LSS_REALLOC(s->pos2, sizeof(uint32_t) * 3 * (size_t)c))) return LSS_ERR_NOMEM;
    s->pos2 = p;
    if (s->mom2 && !(m = (float *)LSS_REALLOC(s->mom2, sizeof(float) * 3 * (size_t)c))) return LSS_ERR_NOMEM;
    s->mom2 = m;
    if (!(o = LSS_REALLOC(s->ord, (s->ord64 ? 8 : 4) * (size_t)c))) return LSS_ERR_NOMEM;
    s->ord = o;
    s->cap = c;
    return LSS_OK;
}
static int lss__nb_owns(const lss_nbody *s, uint32_t x) {
#ifdef LSS_MPI
    return !s->dist || lss__nb_owner(s, x) == s->rank;
#else
    (void)s, (void)x;
    return 1;
#endif
}
/* n particles from f at its current position: positions [n][3], momenta [n][3], then (with_gid, a rank's part)
   their lattice indices [n] (a serial checkpoint holds them in lattice order from `first`). A serial run puts each
   at its lattice index, a distributed one appends those of its slab. f is left after them. */
static int lss__nb_read_parts(lss_nbody *s, FILE *f, int64_t n, int with_gid, int64_t first, const char *name) {
    enum { CH = 65536 };
    uint32_t *pb = (uint32_t *)LSS_MALLOC(sizeof(uint32_t) * 3 * CH);
    float *mb = (float *)LSS_MALLOC(sizeof(float) * 3 * CH);
    int64_t *gb = (int64_t *)LSS_MALLOC(sizeof(int64_t) * CH), j, k, base = s->dist ? s->Nl : 0, kept = 0;
    long p0 = ftell(f);
    int st = LSS_OK;
    if (!pb || !mb || !gb || p0 < 0) { st = lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory reading '%s'", name); goto out; }
    /* chunk by chunk: the indices, positions and momenta of the same particles */
    for (j = 0; j < n; j += CH) {
        int64_t c = n - j < CH ? n - j : CH;
        if (with_gid) {
            if (fseek(f, p0 + (long)(24 * n + 8 * j), SEEK_SET) || fread(gb, 8, (size_t)c, f) != (size_t)c) goto trunc;
        } else
            for (k = 0; k < c; k++) gb[k] = first + j + k;
        if (fseek(f, p0 + (long)(12 * j), SEEK_SET) || fread(pb, 12, (size_t)c, f) != (size_t)c) goto trunc;
        if (fseek(f, p0 + (long)(12 * n + 12 * j), SEEK_SET) || fread(mb, 12, (size_t)c, f) != (size_t)c) goto trunc;
        for (k = 0; k < c; k++) {
            int64_t at;
            if (gb[k] < 0 || gb[k] >= s->N) { st = lss_seterr(LSS_ERR_FORMAT, "N-body: '%s' holds particle index %lld (of %lld)", name, (long long)gb[k], (long long)s->N); goto out; }
            if (!lss__nb_owns(s, pb[3 * k])) continue;
            if (s->dist) {
                at = base + kept++;
                if ((st = lss__nb_grow(s, at + 1)) != LSS_OK) { st = lss_seterr(st, "N-body: out of memory reading '%s'", name); goto out; }
                s->gid[at] = gb[k];
            } else at = gb[k];
            memcpy(s->pos + 3 * at, pb + 3 * k, 12);
            memcpy(s->mom + 3 * at, mb + 3 * k, 12);
        }
    }
    if (s->dist) s->Nl = base + kept;
    if (fseek(f, p0 + (long)((with_gid ? 32 : 24) * n), SEEK_SET)) goto trunc;
    goto out;
trunc:
    st = lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is truncated", name);
out:
    LSS_FREE(pb); LSS_FREE(mb); LSS_FREE(gb);
    return st;
}
/* light-cone sums [nacc] from f added to s->acc (add = 0: skipped) */
static int lss__nb_read_acc(lss_nbody *s, FILE *f, int64_t nacc, int add, const char *name) {
    int64_t j, k, buf[4096];
    if (!add) return fseek(f, (long)(8 * nacc), SEEK_CUR) ? lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is truncated", name) : LSS_OK;
    for (j = 0; j < nacc; j += 4096) {
        int64_t c = nacc - j < 4096 ? nacc - j : 4096;
        if (fread(buf, 8, (size_t)c, f) != (size_t)c) return lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is truncated", name);
        for (k = 0; k < c; k++) s->acc[j + k] += buf[k];
    }
    return LSS_OK;
}
static int lss__nb_check_end(FILE *f, const char *name) {
    char mg[8];
    return fread(mg, 1, 8, f) == 8 && !memcmp(mg, "LSSNBEND", 8) ? LSS_OK
                                                                 : lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is truncated", name);
}
/* a checkpoint of either kind into s (this rank's share); *loaded = 1 when path exists. Rank 0 (or a serial run)
   takes the light-cone sums. ck_step / ck_ranks: the rank files now on disk (-1 / 0 for a serial checkpoint). */
static int lss__nb_load_any(lss_nbody *s, const char *path, int *loaded) {
    FILE *f = fopen(path, "rb");
    char mg[8], rp[4400];
    uint64_t fp, mine = lss__nb_fingerprint(s);
    int64_t hdr[6], nacc = lss__nb_nacc(s), ri[2], r;
    int st = LSS_OK, dist_ck, take_acc = !s->dist || s->rank == 0;
    *loaded = 0;
    if (!f) return LSS_OK;
    if (fread(mg, 1, 8, f) != 8 || (memcmp(mg, "LSSNBCK1", 8) && memcmp(mg, "LSSNBDI1", 8))) {
        fclose(f);
        return lss_seterr(LSS_ERR_FORMAT, "N-body: '%s' is not an N-body checkpoint", path);
    }
    dist_ck = !memcmp(mg, "LSSNBDI1", 8);
    if (fread(&fp, sizeof fp, 1, f) != 1 || fp != mine) {
        fclose(f);
        return lss_seterr(LSS_ERR_ARG, "N-body: checkpoint '%s' belongs to another run (fingerprint %016llx, this run "
                                       "%016llx: cosmology, options, light cone, seed or index differ)", path,
                          (unsigned long long)fp, (unsigned long long)mine);
    }
    if (fread(hdr, sizeof hdr, 1, f) != 1 || hdr[0] < 0 || hdr[0] > s->steps || hdr[1] != s->steps || hdr[2] != s->N ||
        hdr[3] != nacc || hdr[4] != s->np || hdr[5] != s->n || (dist_ck && (fread(ri, sizeof ri, 1, f) != 1 || ri[0] < 1 ||
                                                                             ri[0] > 1 << 20 || ri[1] != hdr[0]))) {
        fclose(f);
        return lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is inconsistent with its fingerprint", path);
    }
    if (s->lc) memset(s->acc, 0, sizeof(int64_t) * (size_t)nacc);
    if (s->dist) s->Nl = 0;
    if (!dist_ck) {
        st = fread(&s->maxp, sizeof s->maxp, 1, f) == 1 ? LSS_OK : lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' is truncated", path);
        if (st == LSS_OK) st = lss__nb_read_parts(s, f, s->N, 0, 0, path);
        if (st == LSS_OK) st = lss__nb_read_acc(s, f, nacc, take_acc, path);
        if (st == LSS_OK) st = lss__nb_check_end(f, path);
        fclose(f);
        s->ck_step = -1, s->ck_ranks = 0;
    } else {
        int64_t tot = 0;
        if ((st = lss__nb_check_end(f, path)) != LSS_OK) { fclose(f); return st; }
        fclose(f);
        for (r = 0; r < ri[0] && st == LSS_OK; r++) {
            int64_t h2[4];
            uint64_t fp2;
            lss__nb_rankfile(rp, sizeof rp, path, hdr[0], r);
            if (!(f = fopen(rp, "rb"))) { st = lss_seterr(LSS_ERR_IO, "N-body: checkpoint part '%s' is missing", rp); break; }
            if (fread(mg, 1, 8, f) != 8 || memcmp(mg, "LSSNBDR1", 8) || fread(&fp2, 8, 1, f) != 1 || fp2 != mine ||
                fread(h2, sizeof h2, 1, f) != 1 || h2[0] != hdr[0] || h2[1] != r || h2[2] != ri[0] || h2[3] < 0 ||
                h2[3] > s->N - tot || fread(&s->maxp, sizeof s->maxp, 1, f) != 1)
                st = lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint part '%s' does not belong to '%s'", rp, path);
            if (st == LSS_OK) st = lss__nb_read_parts(s, f, h2[3], 1, 0, rp);
            if (st == LSS_OK) st = lss__nb_read_acc(s, f, nacc, take_acc, rp);
            if (st == LSS_OK) st = lss__nb_check_end(f, rp);
            tot += h2[3];
            fclose(f);
        }
        if (st == LSS_OK && tot != s->N)
            st = lss_seterr(LSS_ERR_FORMAT, "N-body: the parts of checkpoint '%s' hold %lld particles, not %lld", path, (long long)tot,
                            (long long)s->N);
        s->ck_step = (int)hdr[0], s->ck_ranks = (int)ri[0];
    }
    if (st != LSS_OK) return st;
    lss__nb_unsort(s); /* a serial run holds each particle at its lattice index */
    s->step = (int)hdr[0];
    *loaded = 1;
    return LSS_OK;
}
/* removes the rank files of the distributed checkpoint (step, ranks) of path (by one process) */
static void lss__nb_remove_parts(const char *path, int step, int ranks) {
    char rp[4400];
    int r;
    for (r = 0; r < ranks; r++) {
        lss__nb_rankfile(rp, sizeof rp, path, step, r);
        remove(rp);
    }
}

LSSDEF int lss_nbody_lightcone(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                               uint64_t seed, uint64_t index, const char *checkpoint, lss_nbody_progress_fn fn,
                               void *user, lss_shellset *out) {
    lss_nbody *s = NULL;
    int st, loaded = 0, ck = checkpoint && *checkpoint;
    double t0 = lss_time_now(), tsave;
    if (!out) return lss_seterr(LSS_ERR_ARG, "N-body light cone: NULL output");
    memset(out, 0, sizeof *out);
    if (!lc) return lss_seterr(LSS_ERR_ARG, "N-body light cone: no light-cone options");
    lss__nb_cancelled = 0;
    if ((st = lss__nb_setup(c, o, lc, seed, index, 0, &s)) != LSS_OK) return st;
    if (ck && (st = lss__nb_load_any(s, checkpoint, &loaded)) != LSS_OK) goto done;
    if (!loaded && (st = lss__nb_start(s)) != LSS_OK) goto done;
    tsave = lss_time_now();
    while (s->step < s->steps) {
        if ((st = lss_nbody_step(s)) != LSS_OK) goto done;
        if (fn) fn(s->step, s->steps, s->a_node[s->step], lss_time_now() - t0, user);
        if (lss__nb_cancelled) {
            lss__nb_cancelled = 0;
            if (ck && (st = lss__nb_save(s, checkpoint)) != LSS_OK) goto done;
            if (ck && s->ck_ranks > 0) lss__nb_remove_parts(checkpoint, s->ck_step, s->ck_ranks);
            if (ck) s->ck_ranks = 0;
            st = lss_seterr(LSS_ERR_STATE, "N-body: run cancelled after step %d of %d%s%s%s", s->step, s->steps,
                            ck ? " (state saved to '" : " (no checkpoint: the run is lost)", ck ? checkpoint : "",
                            ck ? "')" : "");
            goto done;
        }
        if (ck && s->step < s->steps && lss_time_now() - tsave >= LSS__NB_CKPT_SECONDS) {
            if ((st = lss__nb_save(s, checkpoint)) != LSS_OK) goto done;
            if (s->ck_ranks > 0) lss__nb_remove_parts(checkpoint, s->ck_step, s->ck_ranks); /* resumed from a distributed run */
            s->ck_ranks = 0;
            tsave = lss_time_now();
        }
    }
    if ((st = lss_nbody_shells(s, out)) != LSS_OK) goto done;
    out->seconds = lss_time_now() - t0;
    if (ck) {
        remove(checkpoint);
        if (s->ck_ranks > 0) lss__nb_remove_parts(checkpoint, s->ck_step, s->ck_ranks);
    }
done:
    lss_nbody_free(s);
    return st;
}
/* ---- one run over several ranks (LSS_MPI): slabs of x planes, FFTW-MPI transposes, particles exchanged ---- */
#ifdef LSS_MPI
/* a particle in transit between ranks */
typedef struct {
    uint32_t x[3];
    float p[3];
    int64_t id;
} lss__nbpart;

static void lss__nb_fftw_mpi_init(void) {
    static int done = 0;
LSS__MOMP(omp critical(lss_fftw_plan))
    {
        if (!done) { fftwf_mpi_init(); done = 1; }
    }
}

/* the slab layout FFTW-MPI gives a grid of side n over the ranks (x planes, then ky rows after the transpose,
   FFTW_MPI_DEFAULT_BLOCK = ceil(n / ranks) each); with buf, the in-place transpose plan of the grid on buf (every
   rank must call it: planning is collective) */
static int lss__nbgrid_dist(lss__nbgrid *g, int n, float *buf) {
    ptrdiff_t nn[2], ln0, s0, ln1, s1, al;
    size_t a, b;
    memset(g, 0, sizeof *g);
    g->n = n;
    g->cp = lss__nb_cp(n);
    nn[0] = nn[1] = n;
    lss__nb_fftw_mpi_init();
    al = fftwf_mpi_local_size_many_transposed(2, nn, 2 * g->cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK,
                                               MPI_COMM_WORLD, &ln0, &s0, &ln1, &s1);
    g->x0 = (int)s0; g->nx = (int)ln0; g->y0 = (int)s1; g->ny = (int)ln1;
    g->sx = 1; g->sy = (size_t)n;
    a = (size_t)ln0 * n * 2 * g->cp;
    b = (size_t)ln1 * n * 2 * g->cp;
    g->floats = (size_t)al > a ? (size_t)al : a;
    if (b > g->floats) g->floats = b;
    if (g->floats < 16) g->floats = 16;
    if (buf) {
        fftwf_plan pl;
LSS__MOMP(omp critical(lss_fftw_plan))
        pl = fftwf_mpi_plan_many_transpose(n, n, 2 * g->cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, buf, buf,
                                           MPI_COMM_WORLD, FFTW_ESTIMATE);
        if (lss_mpi_agree(pl ? LSS_OK : LSS_ERR_NOMEM, NULL) != LSS_OK) {
            if (pl) fftwf_destroy_plan(pl);
            return lss_seterr(LSS_ERR_NOMEM, "N-body: FFTW-MPI could not plan the transpose of the %d^3 grid", n);
        }
        g->tp = (void *)pl;
    }
    return LSS_OK;
}

/* ranks, slabs and the buffers' sizes of a distributed run (before anything is allocated) */
static int lss__nb_dist_layout(lss_nbody *s, size_t *work_floats) {
    lss__nbgrid gi;
    int n = s->n, P = lss_mpi_size(), last;
    int64_t np2 = (int64_t)s->np * s->np, bq;
    size_t icf;
    s->dist = 1;
    s->rank = lss_mpi_rank();
    s->size = P;
    s->blk = (n + P - 1) / P;
    last = n - (P - 1) * s->blk;
    if (last < 3 || s->blk + 5 > n)
        return lss_seterr(LSS_ERR_ARG, "N-body over %d ranks: the force mesh of %d planes gives slabs of %d (the last %d); "
                                       "each rank needs at least 3 planes and at most mesh - 5 (a finer mesh or fewer "
                                       "ranks)", P, n, s->blk, last);
    lss__nbgrid_dist(&s->gm, n, NULL);
    if (s->gm.x0 != s->rank * s->blk || s->gm.nx != (s->rank == P - 1 ? last : s->blk))
        return lss_seterr(LSS_ERR_STATE, "N-body: FFTW-MPI gave rank %d the planes %d..%d, not its block of %d", s->rank,
                          s->gm.x0, s->gm.x0 + s->gm.nx - 1, s->blk);
    lss__nbgrid_dist(&gi, s->np, NULL);
    icf = (size_t)(s->o.lpt_order == 2 ? 4 : 2) * ((gi.floats + 15) & ~(size_t)15);
    *work_floats = s->gm.floats > icf ? s->gm.floats : icf;
    /* the lattice planes of the initial conditions, or the particles of a slab with some room for clustering (the
       arrays grow when a slab gathers more) */
    bq = (int64_t)((s->np + P - 1) / P) * np2;
    s->cap = (s->N + P - 1) / P;
    s->cap += s->cap / 16 + 2 * np2;
    if (bq > s->cap) s->cap = bq;
    return LSS_OK;
}

/* the force mesh's transpose plan, the potential's ghost planes and the plane table of the readout */
static int lss__nb_dist_plan(lss_nbody *s) {
    int st, k, n = s->n;
    size_t pf = (size_t)n * 2 * s->gm.cp;
    if (s->lean) {
        if ((st = lss__nbgrid_dist(&s->gm, n, s->work)) != LSS_OK) return st;
    } else { /* out of place: work -> work2 and back; FFTW_DESTROY_INPUT lets FFTW-MPI skip its in-place copies */
        fftwf_plan a = NULL, b = NULL;
        s->work2 = (float *)fftwf_malloc(sizeof(float) * s->gm.floats);
        if (s->work2) {
LSS__MOMP(omp critical(lss_fftw_plan))
            {
                a = fftwf_mpi_plan_many_transpose(n, n, 2 * s->gm.cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, s->work,
                                                  s->work2, MPI_COMM_WORLD, FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
                b = fftwf_mpi_plan_many_transpose(n, n, 2 * s->gm.cp, FFTW_MPI_DEFAULT_BLOCK, FFTW_MPI_DEFAULT_BLOCK, s->work2,
                                                  s->work, MPI_COMM_WORLD, FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
            }
        }
        s->tpf = (void *)a, s->tpb = (void *)b;
        if (lss_mpi_agree(s->work2 && a && b ? LSS_OK : LSS_ERR_NOMEM, NULL) != LSS_OK)
            return lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory for the second mesh slab or its FFTW-MPI transposes on a rank "
                                             "(a lean run needs neither)");
    }
    s->ghost = (float *)fftwf_malloc(sizeof(float) * 5 * pf);
    if (lss_mpi_agree(s->ghost ? LSS_OK : LSS_ERR_NOMEM, NULL) != LSS_OK)
        return lss_seterr(LSS_ERR_NOMEM, "N-body: out of memory for the ghost planes on a rank");
    for (k = 0; k < n; k++) s->plane[k] = NULL;
    for (k = 0; k < s->gm.nx; k++) s->plane[s->gm.x0 + k] = s->work + (size_t)k * pf;
    s->plane[(s->gm.x0 - 2 + n) % n] = s->ghost;
    s->plane[(s->gm.x0 - 1 + n) % n] = s->ghost + pf;
    for (k = 0; k < 3; k++) s->plane[(s->gm.x0 + s->gm.nx + k) % n] = s->ghost + (2 + k) * pf;
    return LSS_OK;
}

/* room for `need` particles in pos, mom, gid and ord (agreed over the ranks: every rank calls it) */
static int lss__nb_reserve(lss_nbody *s, int64_t need) {
    int r;
    if (lss_mpi_agree(lss__nb_grow(s, need), &r) != LSS_OK)
        return lss_seterr(LSS_ERR_NOMEM, "N-body: rank %d is out of memory for %lld particles", r, (long long)need);
    return LSS_OK;
}

/* the force-mesh plane of position x, and the rank whose slab holds it */
static int lss__nb_plane(const lss_nbody *s, uint32_t x) { return (int)(((uint64_t)x * (uint64_t)s->n) >> 32); }
static int lss__nb_owner(const lss_nbody *s, uint32_t x) { return lss__nb_plane(s, x) / s->blk; }
/* particle m as a record in transit */
static void lss__nb_pack(const lss_nbody *s, int64_t m, lss__nbpart *q) {
    int d;
    for (d = 0; d < 3; d++) { q->x[d] = s->pos[3 * m + d]; q->p[d] = s->mom[3 * m + d]; }
    q->id = s->gid[m];
}

/* every particle to the rank of its force-mesh slab (MPI_Alltoallv; the particles' order does not matter: every
   sum over them is exact) */
static int lss__nb_migrate(lss_nbody *s) {
    int P = s->size, me = s->rank, r, st = LSS_OK;
    int *cnt = (int *)LSS_MALLOC(sizeof(int) * 4 * (size_t)P), *rc, *sd, *rd;
    int64_t m, k = 0, nout = 0, nin = 0;
    lss__nbpart *sb = NULL, *rb = NULL;
    MPI_Datatype t;
    if (!cnt) MPI_Abort(MPI_COMM_WORLD, 1);
    rc = cnt + P; sd = rc + P; rd = sd + P;
    memset(cnt, 0, sizeof(int) * (size_t)P);
    for (m = 0; m < s->Nl; m++) { /* destinations kept in ord (the painting's scratch) for the packing pass */
        int o = lss__nb_owner(s, s->pos[3 * m]);
        lss__nb_ord_set(s->ord, s->ord64, m, o);
        if (o != me) { cnt[o]++; nout++; }
    }
    sb = (lss__nbpart *)LSS_MALLOC(sizeof(lss__nbpart) * (size_t)(nout ? nout : 1));
    if ((st = lss_mpi_agree(sb ? LSS_OK : LSS_ERR_NOMEM, &r)) != LSS_OK) {
        LSS_FREE(sb); LSS_FREE(cnt);
        return lss_seterr(LSS_ERR_NOMEM, "N-body: rank %d is out of memory for the particle exchange", r);
    }
    for (r = 0, sd[0] = 0; r < P; r++) if (r) sd[r] = sd[r - 1] + cnt[r - 1];
    memcpy(rd, sd, sizeof(int) * (size_t)P); /* fill cursors */
    for (m = 0; m < s->Nl; m++) {
        int o = (int)lss__nb_ord_get(s->ord, s->ord64, m);
        if (o != me) lss__nb_pack(s, m, sb + rd[o]++);
        else {
            if (k != m) {
                memcpy(s->pos + 3 * k, s->pos + 3 * m, 3 * sizeof(uint32_t));
                memcpy(s->mom + 3 * k, s->mom + 3 * m, 3 * sizeof(float));
                s->gid[k] = s->gid[m];
            }
            k++;
        }
    }
    s->Nl = k;
    MPI_Alltoall(cnt, 1, MPI_INT, rc, 1, MPI_INT, MPI_COMM_WORLD);
    for (r = 0; r < P; r++) { rd[r] = (int)nin; nin += rc[r]; }
    if ((st = lss__nb_reserve(s, s->Nl + nin)) == LSS_OK) {
        rb = (lss__nbpart *)LSS_MALLOC(sizeof(lss__nbpart) * (size_t)(nin ? nin : 1));
        if ((st = lss_mpi_agree(rb ? LSS_OK : LSS_ERR_NOMEM, &r)) != LSS_OK)
            st = lss_seterr(LSS_ERR_NOMEM, "N-body: rank %d is out of memory for the particle exchange", r);
    }
    if (st == LSS_OK) {
        MPI_Type_contiguous((int)sizeof(lss__nbpart), MPI_BYTE, &t);
        MPI_Type_commit(&t);
        MPI_Alltoallv(sb, cnt, sd, t, rb, rc, rd, t, MPI_COMM_WORLD);
        MPI_Type_free(&t);
        lss__mpi_sent += (double)nout * sizeof(lss__nbpart);
        for (m = 0; m < nin; m++) {
            int d;
            for (d = 0; d < 3; d++) { s->pos[3 * (s->Nl + m) + d] = rb[m].x[d]; s->mom[3 * (s->Nl + m) + d] = rb[m].p[d]; }
            s->gid[s->Nl + m] = rb[m].id;
        }
        s->Nl += nin;
    }
    LSS_FREE(sb); LSS_FREE(rb); LSS_FREE(cnt);
    return st;
}

/* initial conditions on this rank's lattice planes (the np grid in slabs), then every particle to its owner */
static int lss__nb_dist_ic(lss_nbody *s) {
    lss__nbgrid g;
    int st;
    if ((st = lss__nbgrid_dist(&g, s->np, s->work)) != LSS_OK) return st;
    s->Nl = (int64_t)g.nx * s->np * s->np;
    st = lss__nb_ic(s, &g);
    fftwf_destroy_plan((fftwf_plan)g.tp);
    if (lss_mpi_agree(st, NULL) != LSS_OK) return st != LSS_OK ? st : lss_seterr(LSS_ERR_STATE, "N-body: the initial conditions failed on another rank");
    return lss__nb_migrate(s);
}

/* the force of a distributed run: paint the slab (with the particles of the plane before it, sent by the left
   neighbour), FFT with FFTW-MPI transposes, the kernel on the ky rows held, back, the potential's ghost planes
   from both neighbours, then the readout; every number as in the serial run */
static int lss__nb_force_dist(lss_nbody *s, double kfac, int T) {
    int n = s->n, P = s->size, left = (s->rank + P - 1) % P, right = (s->rank + 1) % P, last = s->gm.x0 + s->gm.nx - 1;
    int ns = 0, nr = 0, st, d;
    size_t pf = (size_t)n * 2 * s->gm.cp;
    int64_t m;
    uint32_t *sb;
    double t0 = lss_time_now(), t1, t2, t3, t4, mp;
    for (m = 0; m < s->Nl; m++) ns += lss__nb_plane(s, s->pos[3 * m]) == last;
    sb = (uint32_t *)LSS_MALLOC(sizeof(uint32_t) * 3 * (size_t)(ns ? ns : 1));
    if ((st = lss_mpi_agree(sb ? LSS_OK : LSS_ERR_NOMEM, &d)) != LSS_OK) {
        LSS_FREE(sb);
        return lss_seterr(LSS_ERR_NOMEM, "N-body: rank %d is out of memory for the ghost particles", d);
    }
    for (m = 0, ns = 0; m < s->Nl; m++)
        if (lss__nb_plane(s, s->pos[3 * m]) == last) memcpy(sb + 3 * (size_t)ns++, s->pos + 3 * m, 12);
    MPI_Sendrecv(&ns, 1, MPI_INT, right, 71, &nr, 1, MPI_INT, left, 71, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if ((st = lss__nb_reserve(s, s->Nl + nr)) != LSS_OK) { LSS_FREE(sb); return st; }
    MPI_Sendrecv(sb, 3 * ns, MPI_UINT32_T, right, 72, s->pos + 3 * s->Nl, 3 * nr, MPI_UINT32_T, left, 72, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    lss__mpi_sent += 12.0 * ns;
    LSS_FREE(sb);
    lss__nb_paint_planes(s, s->Nl + nr, 0, s->work, n, s->gm.x0, s->gm.nx, T, s->hist, s->pbuf, NULL);
    t1 = lss_time_now();
    if (s->lean) {
        lss__nbfft_fwdg(&s->fm, &s->gm, s->work);
        t2 = lss_time_now();
        lss__nb_kernel(&s->gm, s->work, s->L, s->om);
        t3 = lss_time_now();
        lss__nbfft_bwdg(&s->fm, &s->gm, s->work);
    } else {
        lss__nbfft_planes(&s->fm, s->gm.nx, s->work, 1);
        fftwf_mpi_execute_r2r((fftwf_plan)s->tpf, s->work, s->work2);
        lss__nbfft_x(&s->fm, &s->gm, (fftwf_complex *)s->work2, 1);
        t2 = lss_time_now();
        lss__nb_kernel(&s->gm, s->work2, s->L, s->om);
        t3 = lss_time_now();
        lss__nbfft_x(&s->fm, &s->gm, (fftwf_complex *)s->work2, 0);
        fftwf_mpi_execute_r2r((fftwf_plan)s->tpb, s->work2, s->work);
        lss__nbfft_planes(&s->fm, s->gm.nx, s->work, 0);
    }
    lss__mpi_sent += 2 * 4.0 * (double)s->gm.nx * pf * (P - 1) / P;
    /* planes x0 + nx .. x0 + nx + 2 from the right, x0 - 2 and x0 - 1 from the left */
    MPI_Sendrecv(s->work, (int)(3 * pf), MPI_FLOAT, left, 73, s->ghost + 2 * pf, (int)(3 * pf), MPI_FLOAT, right, 73,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Sendrecv(s->work + (size_t)(s->gm.nx - 2) * pf, (int)(2 * pf), MPI_FLOAT, right, 74, s->ghost, (int)(2 * pf),
                 MPI_FLOAT, left, 74, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    lss__mpi_sent += 4.0 * 5 * pf;
    t4 = lss_time_now();
    lss__nb_readout(s, kfac);
    mp = s->maxp;
    MPI_Allreduce(&mp, &s->maxp, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    s->st.paint += t1 - t0;
    s->st.fft += (t2 - t1) + (t4 - t3);
    s->st.force += (t3 - t2) + (lss_time_now() - t4);
    return LSS_OK;
}

/* the checkpoint of a distributed run: every rank its part, then rank 0 the index; the previous parts removed */
static int lss__nb_save_dist(lss_nbody *s, const char *path) {
    char rp[4400];
    lss_wfile w;
    int st, ok = 0, r;
    uint64_t fp = lss__nb_fingerprint(s);
    int64_t hdr[6], h2[4], ri[2], nacc = lss__nb_nacc(s), m;
    hdr[0] = s->step; hdr[1] = s->steps; hdr[2] = s->N; hdr[3] = nacc; hdr[4] = s->np; hdr[5] = s->n;
    h2[0] = s->step; h2[1] = s->rank; h2[2] = s->size; h2[3] = s->Nl;
    ri[0] = s->size; ri[1] = s->step;
    lss__nb_rankfile(rp, sizeof rp, path, s->step, s->rank);
    lss_mpi_own_files(1);
    if ((st = lss_wfile_open(&w, rp)) == LSS_OK) {
        ok = fwrite("LSSNBDR1", 1, 8, w.f) == 8 && fwrite(&fp, 8, 1, w.f) == 1 && fwrite(h2, sizeof h2, 1, w.f) == 1 &&
             fwrite(&s->maxp, sizeof s->maxp, 1, w.f) == 1 &&
             fwrite(s->pos, sizeof(uint32_t), 3 * (size_t)s->Nl, w.f) == 3 * (size_t)s->Nl &&
             fwrite(s->mom, sizeof(float), 3 * (size_t)s->Nl, w.f) == 3 * (size_t)s->Nl &&
             fwrite(s->gid, sizeof(int64_t), (size_t)s->Nl, w.f) == (size_t)s->Nl;
        for (m = 0; ok && m < nacc; m += 4096) { /* this rank's light-cone sums (the parts add up) */
            size_t c = (size_t)(nacc - m < 4096 ? nacc - m : 4096);
            ok = fwrite(s->acc + m, sizeof(int64_t), c, w.f) == c;
        }
        ok = ok && fwrite("LSSNBEND", 1, 8, w.f) == 8;
        if (!ok) { lss_wfile_abort(&w); st = lss_seterr(LSS_ERR_IO, "N-body: writing the checkpoint part '%s' failed", rp); }
        else st = lss_wfile_commit(&w);
    }
    lss_mpi_own_files(0);
    if (lss_mpi_agree(st, &r) != LSS_OK)
        return st != LSS_OK ? st : lss_seterr(LSS_ERR_IO, "N-body: rank %d could not write its checkpoint part", r);
    /* the index (rank 0 writes; the others' copies go to /dev/null and meet it at the commit's barrier) */
    if ((st = lss_wfile_open(&w, path)) == LSS_OK) {
        ok = fwrite("LSSNBDI1", 1, 8, w.f) == 8 && fwrite(&fp, 8, 1, w.f) == 1 && fwrite(hdr, sizeof hdr, 1, w.f) == 1 &&
             fwrite(ri, sizeof ri, 1, w.f) == 1 && fwrite("LSSNBEND", 1, 8, w.f) == 8;
        if (!ok) { lss_wfile_abort(&w); st = lss_seterr(LSS_ERR_IO, "N-body: writing the checkpoint '%s' failed", path); }
        else st = lss_wfile_commit(&w);
    }
    if (lss_mpi_agree(st, &r) != LSS_OK)
        return st != LSS_OK ? st : lss_seterr(LSS_ERR_IO, "N-body: rank %d could not write the checkpoint index", r);
    if (s->rank == 0 && s->ck_ranks > 0 && s->ck_step != s->step) lss__nb_remove_parts(path, s->ck_step, s->ck_ranks);
    s->ck_step = s->step, s->ck_ranks = s->size;
    return LSS_OK;
}

/* set-up of a distributed run, agreed over the ranks */
static int lss__nb_setup_dist(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc, uint64_t seed,
                              uint64_t index, int lean, lss_nbody **out) {
    lss_nbody *s = NULL;
    int own = lss__nb_setup(c, o, lc, seed, index, lean ? 1 : 2, &s), st, r;
    *out = NULL;
    if ((st = lss_mpi_agree(own, &r)) != LSS_OK) {
        if (s) lss_nbody_free(s);
        if (own == LSS_OK) return lss_seterr(st, "N-body: the set-up failed on rank %d (see its message)", r);
        return own;
    }
    *out = s;
    return LSS_OK;
}
#endif

LSSDEF int lss_nbody_create_dist(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                                 uint64_t seed, uint64_t index, int lean, lss_nbody **out) {
#ifdef LSS_MPI
    lss_nbody *s = NULL;
    int st;
    if (lss_mpi_size() > 1) {
        if ((st = lss__nb_setup_dist(c, o, lc, seed, index, lean, &s)) != LSS_OK) return st;
        if ((st = lss__nb_start(s)) != LSS_OK) { lss_nbody_free(s); return st; }
        *out = s;
        return LSS_OK;
    }
#else
    (void)lean;
#endif
    return lss_nbody_create(c, o, lc, seed, index, out);
}

LSSDEF int lss_nbody_particles(const lss_nbody *s, uint32_t *pos, float *mom) {
    int64_t m;
    if (!s) return lss_seterr(LSS_ERR_ARG, "N-body particles: NULL run");
    if (!s->dist) { /* in lattice order (the run holds them sorted by mesh cell) */
        for (m = 0; m < s->N; m++) {
            int64_t at = s->id ? lss__nb_ord_get(s->id, s->ord64, m) : m;
            if (pos) memcpy(pos + 3 * at, s->pos + 3 * m, 12);
            if (mom) memcpy(mom + 3 * at, s->mom + 3 * m, 12);
        }
        return LSS_OK;
    }
#ifdef LSS_MPI
    {
        int P = s->size, r, st, *cnt = (int *)LSS_MALLOC(sizeof(int) * 2 * (size_t)P), nl = (int)s->Nl, bad;
        lss__nbpart *mine = (lss__nbpart *)LSS_MALLOC(sizeof(lss__nbpart) * (size_t)(s->Nl ? s->Nl : 1));
        lss__nbpart *all = (lss__nbpart *)LSS_MALLOC(sizeof(lss__nbpart) * (size_t)s->N);
        MPI_Datatype t;
        if ((st = lss_mpi_agree(cnt && mine && all && s->N < INT32_MAX ? LSS_OK : LSS_ERR_NOMEM, &r)) != LSS_OK) {
            LSS_FREE(cnt); LSS_FREE(mine); LSS_FREE(all);
            return lss_seterr(LSS_ERR_NOMEM, "N-body particles: rank %d cannot hold the %lld particles", r, (long long)s->N);
        }
        for (m = 0; m < s->Nl; m++) lss__nb_pack(s, m, mine + m);
        MPI_Allgather(&nl, 1, MPI_INT, cnt, 1, MPI_INT, MPI_COMM_WORLD);
        for (r = 0, bad = 0; r < P; r++) { cnt[P + r] = bad; bad += cnt[r]; }
        MPI_Type_contiguous((int)sizeof(lss__nbpart), MPI_BYTE, &t);
        MPI_Type_commit(&t);
        MPI_Allgatherv(mine, nl, t, all, cnt, cnt + P, t, MPI_COMM_WORLD);
        MPI_Type_free(&t);
        st = bad == s->N ? LSS_OK : lss_seterr(LSS_ERR_STATE, "N-body particles: the ranks hold %d particles, not %lld", bad,
                                               (long long)s->N);
        for (m = 0; st == LSS_OK && m < s->N; m++) {
            int64_t id = all[m].id;
            int d;
            if (id < 0 || id >= s->N) { st = lss_seterr(LSS_ERR_STATE, "N-body particles: bad particle index %lld", (long long)id); break; }
            for (d = 0; d < 3; d++) {
                if (pos) pos[3 * id + d] = all[m].x[d];
                if (mom) mom[3 * id + d] = all[m].p[d];
            }
        }
        LSS_FREE(cnt); LSS_FREE(mine); LSS_FREE(all);
        return st;
    }
#else
    (void)m;
    return lss_seterr(LSS_ERR_STATE, "N-body particles: a distributed run without LSS_MPI");
#endif
}

LSSDEF int lss_nbody_lightcone_dist(const lss_cosmo *c, const lss_nbody_opts *o, const lss_lightcone_opts *lc,
                                    uint64_t seed, uint64_t index, int lean, const char *checkpoint,
                                    lss_nbody_progress_fn fn, void *user, lss_shellset *out) {
#ifdef LSS_MPI
    lss_nbody *s = NULL;
    int st, loaded = 0, ck = checkpoint && *checkpoint, r;
    double t0 = lss_time_now(), tsave;
    if (lss_mpi_size() <= 1) return lss_nbody_lightcone(c, o, lc, seed, index, checkpoint, fn, user, out);
    if (!out) return lss_seterr(LSS_ERR_ARG, "N-body light cone: NULL output");
    memset(out, 0, sizeof *out);
    if (!lc) return lss_seterr(LSS_ERR_ARG, "N-body light cone: no light-cone options");
    lss__nb_cancelled = 0;
    if ((st = lss__nb_setup_dist(c, o, lc, seed, index, lean, &s)) != LSS_OK) return st;
    if (ck) {
        int64_t nl, tot = 0;
        int own = lss__nb_load_any(s, checkpoint, &loaded);
        if ((st = lss_mpi_agree(own, &r)) != LSS_OK) {
            if (own == LSS_OK) lss_seterr(st, "N-body: rank %d could not read the checkpoint '%s'", r, checkpoint);
            goto done;
        }
        nl = s->Nl;
        MPI_Allreduce(&nl, &tot, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
        if (loaded && tot != s->N) {
            st = lss_seterr(LSS_ERR_FORMAT, "N-body: checkpoint '%s' gave the ranks %lld particles, not %lld", checkpoint,
                            (long long)tot, (long long)s->N);
            goto done;
        }
    }
    if (!loaded && (st = lss__nb_start(s)) != LSS_OK) goto done;
    tsave = lss_time_now();
    while (s->step < s->steps) {
        int fl[2];
        if ((st = lss_nbody_step(s)) != LSS_OK) goto done;
        if (fn) fn(s->step, s->steps, s->a_node[s->step], lss_time_now() - t0, user);
        /* a cancel on any rank, or rank 0's clock, decides for all */
        fl[0] = lss__nb_cancelled;
        fl[1] = ck && s->step < s->steps && s->rank == 0 && lss_time_now() - tsave >= LSS__NB_CKPT_SECONDS;
        MPI_Allreduce(MPI_IN_PLACE, fl, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (fl[0]) {
            lss__nb_cancelled = 0;
            if (ck && (st = lss__nb_save_dist(s, checkpoint)) != LSS_OK) goto done;
            st = lss_seterr(LSS_ERR_STATE, "N-body: run cancelled after step %d of %d%s%s%s", s->step, s->steps,
                            ck ? " (state saved to '" : " (no checkpoint: the run is lost)", ck ? checkpoint : "", ck ? "')" : "");
            goto done;
        }
        if (fl[1]) {
            if ((st = lss__nb_save_dist(s, checkpoint)) != LSS_OK) goto done;
            tsave = lss_time_now();
        }
    }
    if ((st = lss_nbody_shells(s, out)) != LSS_OK) goto done;
    out->seconds = lss_time_now() - t0;
    if (ck) {
        if (s->rank == 0) {
            remove(checkpoint);
            if (s->ck_ranks > 0) lss__nb_remove_parts(checkpoint, s->ck_step, s->ck_ranks);
        }
        lss_mpi_barrier();
    }
done:
    lss_nbody_free(s);
    return st;
#else
    (void)lean;
    return lss_nbody_lightcone(c, o, lc, seed, index, checkpoint, fn, user, out);
#endif
}
/* ==== END N-BODY IMPLEMENTATION ==== */
/* ==== SHELL LIBRARY IMPLEMENTATION ==== */
LSSDEF int lss_shellset_save(const lss_shellset *s, const char *stem) {
    char *path;
    size_t n;
    int64_t shape[4];
    lss_wfile w;
    int st, b;
    if (!s || !stem || !*stem) return lss_seterr(LSS_ERR_ARG, "lss_shellset_save: NULL argument");
    if (s->ncone < 1 || s->nshell < 1 || s->side < 1 || !s->delta || !s->z_edges)
        return lss_seterr(LSS_ERR_ARG, "lss_shellset_save: empty shell set");
    n = strlen(stem) + 8;
    if (!(path = (char *)LSS_MALLOC(n))) return lss_seterr(LSS_ERR_NOMEM, "lss_shellset_save: out of memory");
    shape[0] = s->ncone; shape[1] = s->nshell; shape[2] = s->side; shape[3] = s->side;
    snprintf(path, n, "%s.npy", stem);
    if ((st = lss_npy_save(path, LSS_F32, 4, shape, s->delta)) != LSS_OK) { LSS_FREE(path); return st; }
    snprintf(path, n, "%s.json", stem);
    if ((st = lss_wfile_open(&w, path)) != LSS_OK) { LSS_FREE(path); return st; }
    fprintf(w.f, "{\n  \"generator\": \"lss particle-mesh light cone\",\n  \"format\": 1,\n");
    fprintf(w.f, "  \"omega_m\": %.17g,\n  \"sigma_8\": %.17g,\n  \"omega_b\": %.17g,\n  \"h\": %.17g,\n  \"n_s\": %.17g,\n"
                 "  \"transfer\": %d,\n", s->params.omega_m, s->params.sigma_8, s->params.omega_b, s->params.h, s->params.n_s,
            s->params.transfer);
    fprintf(w.f, "  \"seed\": %llu,\n  \"index\": %llu,\n  \"ncone\": %d,\n  \"nshell\": %d,\n  \"side\": %d,\n"
                 "  \"pixel_arcmin\": %.17g,\n  \"z_edges\": [", (unsigned long long)s->seed, (unsigned long long)s->index,
            s->ncone, s->nshell, s->side, s->pixel_arcmin);
    for (b = 0; b <= s->nshell; b++) fprintf(w.f, "%s%.17g", b ? ", " : "", s->z_edges[b]);
    fprintf(w.f, "],\n  \"box_mpc_h\": %.17g,\n  \"np\": %d,\n  \"mesh\": %d,\n  \"steps\": %d,\n  \"z_init\": %.17g,\n"
                 "  \"spacing\": \"%s\",\n  \"lpt_order\": %d,\n  \"fixed_amp\": %d,\n  \"seconds\": %.3f\n}\n",
            s->nbody.box, s->nbody.np, s->nbody.mesh, s->nbody.steps, s->nbody.z_init,
            s->nbody.spacing == LSS_NB_STEP_LOG_A ? "log_a" : "linear_a", s->nbody.lpt_order, s->nbody.fixed_amp, s->seconds);
    st = lss_wfile_commit(&w);
    LSS_FREE(path);
    return st;
}

/* integer member in [lo, hi] */
static int lss__jint(const lss_json *j, const char *path, const char *key, double lo, double hi, double *v) {
    int st = lss_json_num(j, key, v);
    if (st) return lss_seterr(st, "'%s': %s", path, lss_last_error());
    if (!(*v >= lo && *v <= hi) || *v != floor(*v))
        return lss_seterr(LSS_ERR_FORMAT, "'%s': \"%s\" is %g (need an integer in %g..%g)", path, key, *v, lo, hi);
    return LSS_OK;
}

static int lss__shellset_meta(const char *path, lss_shellset *o) {
    lss_json *j = NULL;
    const double *ze;
    const char *sp;
    double v;
    int st, nze, b;
    if ((st = lss_json_load(path, &j)) != LSS_OK) return st;
#define LSS__JN(key, dst) do { if ((st = lss_json_num(j, key, &v)) != LSS_OK) { st = lss_seterr(st, "'%s': %s", path, lss_last_error()); goto out; } \
                               if (!isfinite(v)) { st = lss_seterr(LSS_ERR_FORMAT, "'%s': \"%s\" is not finite", path, key); goto out; } dst = v; } while (0)
#define LSS__JI(key, dst, lo, hi) do { if ((st = lss__jint(j, path, key, lo, hi, &v)) != LSS_OK) goto out; dst = v; } while (0)
    lss_params_fiducial(&o->params);
    LSS__JN("omega_m", o->params.omega_m);
    LSS__JN("sigma_8", o->params.sigma_8);
    LSS__JN("omega_b", o->params.omega_b);
    LSS__JN("h", o->params.h);
    LSS__JN("n_s", o->params.n_s);
    LSS__JI("transfer", o->params.transfer, 0, 1);
    LSS__JI("seed", o->seed, 0, 9007199254740992.0);
    LSS__JI("index", o->index, 0, 9007199254740992.0);
    LSS__JI("ncone", o->ncone, 1, 4096);
    LSS__JI("nshell", o->nshell, 1, 4096);
    LSS__JI("side", o->side, 2, 4096);
    LSS__JN("pixel_arcmin", o->pixel_arcmin);
    LSS__JN("box_mpc_h", o->nbody.box);
    LSS__JI("np", o->nbody.np, 1, 1 << 20);
    LSS__JI("mesh", o->nbody.mesh, 1, 1 << 20);
    LSS__JI("steps", o->nbody.steps, 1, 1 << 20);
    LSS__JN("z_init", o->nbody.z_init);
    LSS__JI("lpt_order", o->nbody.lpt_order, 1, 2);
    LSS__JI("fixed_amp", o->nbody.fixed_amp, 0, 1);
    LSS__JN("seconds", o->seconds);
#undef LSS__JN
#undef LSS__JI
    if ((st = lss_json_str(j, "spacing", &sp)) != LSS_OK) { st = lss_seterr(st, "'%s': %s", path, lss_last_error()); goto out; }
    if (!strcmp(sp, "log_a")) o->nbody.spacing = LSS_NB_STEP_LOG_A;
    else if (!strcmp(sp, "linear_a")) o->nbody.spacing = LSS_NB_STEP_LINEAR_A;
    else { st = lss_seterr(LSS_ERR_FORMAT, "'%s': unknown step spacing (need linear_a or log_a)", path); goto out; }
    if (!(o->pixel_arcmin > 0.01 && o->pixel_arcmin < 600)) {
        st = lss_seterr(LSS_ERR_FORMAT, "'%s': pixel size %g arcmin (need 0.01..600)", path, o->pixel_arcmin);
        goto out;
    }
    if ((st = lss_params_check_physical(&o->params)) != LSS_OK) { st = lss_seterr(LSS_ERR_FORMAT, "'%s': %s", path, lss_last_error()); goto out; }
    if ((st = lss_json_array(j, "z_edges", &ze, &nze)) != LSS_OK) { st = lss_seterr(st, "'%s': %s", path, lss_last_error()); goto out; }
    if (nze != o->nshell + 1) {
        st = lss_seterr(LSS_ERR_FORMAT, "'%s': %d shell edges for %d shells (need %d)", path, nze, o->nshell, o->nshell + 1);
        goto out;
    }
    for (b = 0; b < nze; b++)
        if (!(ze[b] >= 0 && ze[b] <= 20) || (b && !(ze[b] > ze[b - 1]))) {
            st = lss_seterr(LSS_ERR_FORMAT, "'%s': shell edges must increase within 0..20 (edge %d is %g)", path, b, ze[b]);
            goto out;
        }
    if (!(o->z_edges = (double *)LSS_MALLOC(sizeof(double) * (size_t)nze))) { st = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto out; }
    memcpy(o->z_edges, ze, sizeof(double) * (size_t)nze);
out:
    lss_json_free(j);
    return st;
}

LSSDEF int lss_shellset_load(const char *stem, lss_shellset *out) {
    char *path = NULL;
    size_t n, k, cnt;
    float *data = NULL;
    int ndim = 0, st;
    int64_t shape[LSS_MAX_DIM];
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_shellset_load: NULL out");
    memset(out, 0, sizeof *out);
    if (!stem || !*stem) return lss_seterr(LSS_ERR_ARG, "lss_shellset_load: empty path");
    n = strlen(stem) + 8;
    if (!(path = (char *)LSS_MALLOC(n))) return lss_seterr(LSS_ERR_NOMEM, "lss_shellset_load: out of memory");
    snprintf(path, n, "%s.json", stem);
    if ((st = lss__shellset_meta(path, out)) != LSS_OK) goto fail;
    snprintf(path, n, "%s.npy", stem);
    if ((st = lss_npy_load_f32(path, &data, &ndim, shape)) != LSS_OK) goto fail;
    if (ndim != 4 || shape[0] != out->ncone || shape[1] != out->nshell || shape[2] != out->side || shape[3] != out->side) {
        st = lss_seterr(LSS_ERR_SHAPE, "'%s': shape does not match its JSON [%d, %d, %d, %d]", path, out->ncone, out->nshell,
                        out->side, out->side);
        goto fail;
    }
    cnt = (size_t)out->ncone * out->nshell * out->side * out->side;
    for (k = 0; k < cnt; k++)
        if (!(data[k] >= -1.0f - 1e-5f) || !isfinite(data[k])) {
            st = lss_seterr(LSS_ERR_FORMAT, "'%s': value %g at element %lu (a density contrast must be finite and >= -1)", path,
                            (double)data[k], (unsigned long)k);
            goto fail;
        }
    out->delta = data;
    LSS_FREE(path);
    return LSS_OK;
fail:
    LSS_FREE(data);
    LSS_FREE(path);
    lss_shellset_free(out);
    return st;
}

LSSDEF int lss_shell_lib_stem(const char *dir, int i, char *buf, size_t n) {
    if (!dir || !buf || i < 0 || i > 999999) return lss_seterr(LSS_ERR_ARG, "lss_shell_lib_stem: bad arguments");
    if ((size_t)snprintf(buf, n, "%s/shells_%04d", dir, i) >= n) return lss_seterr(LSS_ERR_ARG, "library path too long");
    return LSS_OK;
}

LSSDEF int lss_shell_lib_count(const char *dir, int *n) {
    char stem[4096], path[4200];
    int i;
    if (!dir || !n) return lss_seterr(LSS_ERR_ARG, "lss_shell_lib_count: NULL argument");
    for (i = 0; i < 1000000; i++) {
        FILE *f;
        if (lss_shell_lib_stem(dir, i, stem, sizeof stem)) return LSS_ERR_ARG;
        snprintf(path, sizeof path, "%s.json", stem);
        if (!(f = fopen(path, "rb"))) break;
        fclose(f);
    }
    *n = i;
    return LSS_OK;
}

LSSDEF int lss_shell_lib_params(const char *dir, int i, lss_params *p) {
    char stem[4096], path[4200];
    lss_shellset s;
    int st;
    if (!p) return lss_seterr(LSS_ERR_ARG, "lss_shell_lib_params: NULL p");
    if ((st = lss_shell_lib_stem(dir, i, stem, sizeof stem)) != LSS_OK) return st;
    snprintf(path, sizeof path, "%s.json", stem);
    memset(&s, 0, sizeof s);
    if ((st = lss__shellset_meta(path, &s)) != LSS_OK) return st;
    *p = s.params;
    lss_shellset_free(&s);
    return LSS_OK;
}

LSSDEF int lss_sim_shell_side(const lss_sim *s) { return s ? s->n + 2 * s->hmax : 0; }

LSSDEF int lss_sim_use_shells(lss_sim *s, const lss_shellset *sh) {
    int b, j, R, *map;
    if (!s) return lss_seterr(LSS_ERR_ARG, "lss_sim_use_shells: NULL simulator");
    if (!sh) { s->shells = NULL; s->shells_other_cosmo = 0; return LSS_OK; }
    R = lss_sim_shell_side(s);
    if (!sh->delta || !sh->z_edges || sh->ncone < 1 || sh->nshell < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_sim_use_shells: empty shell set");
    if (!(fabs(sh->pixel_arcmin - s->o.pixel_arcmin) <= 1e-9 * s->o.pixel_arcmin))
        return lss_seterr(LSS_ERR_ARG, "N-body shells have %g arcmin pixels, the simulator %g", sh->pixel_arcmin, s->o.pixel_arcmin);
    if (sh->side < R || (sh->side - R) % 2)
        return lss_seterr(LSS_ERR_ARG, "N-body shells of %d x %d pixels: the simulator needs at least %d x %d (its %d-pixel fields "
                          "and a smoothing margin of %d), with an even difference", sh->side, sh->side, R, R, s->n, s->hmax);
    if (!lss__same_cosmo(&s->cp, &sh->params))
        return lss_seterr(LSS_ERR_ARG, "N-body shells were made for Omega_m = %g, sigma_8 = %g, Omega_b = %g, h = %g, n_s = %g; the "
                          "simulator's cosmology is Omega_m = %g, sigma_8 = %g, Omega_b = %g, h = %g, n_s = %g",
                          sh->params.omega_m, sh->params.sigma_8, sh->params.omega_b, sh->params.h, sh->params.n_s,
                          s->cp.omega_m, s->cp.sigma_8, s->cp.omega_b, s->cp.h, s->cp.n_s);
    if (!(map = (int *)LSS_MALLOC(sizeof(int) * (size_t)s->nshell))) return lss_seterr(LSS_ERR_NOMEM, "lss_sim_use_shells: out of memory");
    for (b = 0; b < s->nshell; b++) {
        map[b] = -1;
        for (j = 0; j < sh->nshell; j++)
            if (fabs(sh->z_edges[j] - s->z_lo[b]) <= 1e-9 * (1 + s->z_lo[b]) &&
                fabs(sh->z_edges[j + 1] - s->z_hi[b]) <= 1e-9 * (1 + s->z_hi[b])) { map[b] = j; break; }
    }
    for (j = 0; j < s->ndraw; j++)
        if (map[s->draw[j]] < 0) {
            int bb = s->draw[j];
            LSS_FREE(map);
            return lss_seterr(LSS_ERR_ARG, "N-body shells lack the simulator's shell %g < z < %g (the set has %d shells up to z = %g)",
                              s->z_lo[bb], s->z_hi[bb], sh->nshell, sh->z_edges[sh->nshell]);
        }
    LSS_FREE(s->shell_of);
    s->shell_of = map;
    s->shells = sh;
    s->shells_other_cosmo = 0;
    return LSS_OK;
}
/* ==== END SHELL LIBRARY IMPLEMENTATION ==== */
/* ==== END MAPS IMPLEMENTATION ==== */

#endif /* LSS_MAPS_IMPLEMENTATION_DONE */
#endif /* LSS_MAPS_IMPLEMENTATION */

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
