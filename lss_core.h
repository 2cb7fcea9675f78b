/* lss_core.h - the shared base of the lss toolkit (errors, randomness, NPY/CSV/PNG files)
 *
 * Single-file library in the STB style. In exactly one C file:
 *
 *     #define LSS_CORE_IMPLEMENTATION
 *     #include "lss_core.h"
 *
 * Every other file includes it without the macro and sees declarations only.
 * (The other lss headers include this one; defining LSS_IMPLEMENTATION implements them all.)
 *
 * Contents (the sections of this header, in order)
 *   errors        status codes (LSS_OK == 0, negative on failure), lss_strerror(), a thread-local
 *                 message lss_last_error() naming what went wrong, lss_seterr(); an optional log
 *                 callback (lss_set_log, lss_log: the library never prints); lss_time_now().
 *   randomness    Philox4x32-10, a counter-based generator: every number is a pure function of
 *                 (seed, stream, counter), on the CPU and on the GPU alike (lss_philox4x32,
 *                 lss_philox_block, inline __host__ __device__ kernels); lss_rng: uniform, normal
 *                 and Poisson draws (Poisson exact for every mean: inversion below 10, PTRS above);
 *                 the Poisson quantile function lss_poisson_quantile and lss_rng_poisson_inv, exact Poisson
 *                 draws from exactly one uniform each (common random numbers, finite differences).
 *   named streams the registry of random streams: lss_stream(purpose, index, sub), data sets
 *                 lss_set_index(set, i), lss_rng_for(), lss_purpose_name(); the one place where a
 *                 draw's stream is decided, so training and evaluation data never share one.
 *   arrays, NPY   lss_array; NPY read/write (v1/v2/v3 headers; <f4 <f8 <i4 <i8; C order),
 *                 validated against the file length (lss_npy_load, _load_mem, _load_f32, _save).
 *   atomic files  lss_wfile: a temporary file in the same directory renamed into place on success
 *                 (written through symbolic links to their target; devices, FIFOs and /dev/stdout
 *                 written directly); prepare/commit for sets of files; a commit hook (drivers
 *                 publish a run's outputs together); clean-up of temporary files of dead processes.
 *   CSV           lss_csv_write, lss_csv_read (header row, numeric columns), lss_csv_col (by name).
 *   smoothing     the one separable Gaussian smoothing: lss_gauss_kernel, lss_conv_sep (valid mode
 *                 on a padded source), lss_conv_sep_zeropad (zeros outside the map).
 *   MPI           optional (-DLSS_MPI): lss_mpi_init/_finalize/_rank/_size, lss_mpi_block (work by
 *                 index), lss_mpi_allgather, lss_mpi_bcast, lss_mpi_agree, lss_mpi_sum_ordered (the same bits as the
 *                 serial sum), lss_mpi_barrier, lss_mpi_own_files; one writer (rank 0). Without it:
 *                 the one-process versions, no MPI dependency.
 *   pictures      PNG through stb_image_write: an RGB canvas (lss_image_init/_free) with
 *                 anti-aliased text of any size (also vertical), lines, colour-mapped maps (viridis;
 *                 RdBu centred on zero for signed maps), framed colour bars, map panels with their
 *                 colour bar, line plots (lss_plot_lines: log ticks at 1-2-5 x 10^k, per-series
 *                 colours, dashes, markers, error bars, shaded bands, a spike-robust y range, a
 *                 legend where the curves are not).
 *
 * Conventions of every lss header (one rule each)
 *   - Status: functions that can fail on input return int (LSS_OK or a negative code) and set the
 *     message; functions that cannot fail return their value.
 *   - Argument order: the object operated on first, inputs next, outputs last; an object that a
 *     function creates comes back through a trailing `**out` (lss_cosmo_create(&p, &c)).
 *   - Lifetimes: opaque objects (they own buffers, plans or workspaces) come in lss_xxx_create /
 *     lss_xxx_free pairs; public structs (plain data: parameters, options, results) are the
 *     caller's, filled by lss_xxx_init (or a fitting verb) and released by lss_xxx_free when they
 *     own memory. Option structs mean "default" when zeroed. _free accepts NULL.
 *   - Memory: library code allocates and frees only through LSS_MALLOC/LSS_REALLOC/LSS_FREE, and
 *     what it hands to the caller is released with the matching lss_xxx_free (or LSS_FREE where
 *     a comment says so).
 *   - Names: public lss_/LSS_, internal static lss__; graph operations of lss_nn.h are lss_op_*.
 *   - Randomness: every draw from lss_stream(); no caller derives seeds by arithmetic.

 * Example
 *     #define LSS_CORE_IMPLEMENTATION
 *     #include "lss_core.h"
 *     int main(void) {
 *         lss_rng r; float m[64 * 64]; int64_t shape[2] = {64, 64};
 *         lss_rng_init(&r, 42, 0);                 // seed 42, stream 0
 *         for (int i = 0; i < 64 * 64; i++) m[i] = (float)lss_rng_normal(&r);
 *         if (lss_npy_save("m.npy", LSS_F32, 2, shape, m) != LSS_OK ||
 *             lss_png_map("m.png", m, 64, 64, 0, 0, "white noise", 4) != LSS_OK) {
 *             fprintf(stderr, "error: %s\n", lss_last_error());
 *             return 1;
 *         }
 *         lss_array a;
 *         if (lss_npy_load("m.npy", &a) != LSS_OK) return 1;
 *         printf("%d-D array, %lld x %lld\n", a.ndim, (long long)a.shape[0], (long long)a.shape[1]);
 *         lss_array_free(&a);
 *         return 0;
 *     }
 *
 * Options (define before including)
 *   LSS_MALLOC(sz) LSS_REALLOC(p,sz) LSS_FREE(p)  allocator; override all three or none
 *   LSS_ASSERT(x)                                 internal invariants only (default assert())
 *   LSS_NO_PNG                                    leave out the PNG writer (no stb_image_write needed)
 * Link with -lm. PNG output needs stb_image_write.h on the include path (Debian: libstb-dev,
 * -I/usr/include/stb).
 *
 * Version 0.1.0. Public names start with lss_/LSS_; internal ones with lss__.
 */
#ifndef LSS_CORE_H
#define LSS_CORE_H

/* The implementation uses a few POSIX calls (clock_gettime, fsync, getpid) when available; in the
 * implementing file include this header first so that they are declared under -std=c11. */
#if (defined(LSS_CORE_IMPLEMENTATION) || defined(LSS_IMPLEMENTATION)) && !defined(_POSIX_C_SOURCE) && \
    !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE) && (defined(__unix__) || defined(__APPLE__))
#define _POSIX_C_SOURCE 200809L
#endif

#define LSS_VERSION_MAJOR 0
#define LSS_VERSION_MINOR 1
#define LSS_VERSION_PATCH 0
#define LSS_VERSION_STRING "0.1.0"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(LSS_MALLOC) || defined(LSS_REALLOC) || defined(LSS_FREE)
#if !defined(LSS_MALLOC) || !defined(LSS_REALLOC) || !defined(LSS_FREE)
#error "lss: define LSS_MALLOC, LSS_REALLOC and LSS_FREE all together, or none of them"
#endif
#else
#include <stdlib.h>
#define LSS_MALLOC(sz) malloc(sz)
#define LSS_REALLOC(p, sz) realloc(p, sz)
#define LSS_FREE(p) free(p)
#endif
#ifndef LSS_ASSERT
#include <assert.h>
#define LSS_ASSERT(x) assert(x)
#endif

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_CORE_IMPLEMENTATION
#define LSS_CORE_IMPLEMENTATION
#endif
#endif

#ifndef LSSDEF
#ifdef LSS_STATIC
#define LSSDEF static
#else
#define LSSDEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */
enum {
    LSS_OK = 0,
    LSS_ERR_NOMEM = -1,       /* an allocation failed */
    LSS_ERR_ARG = -2,         /* an argument is invalid (NULL, negative size, NaN, ...) */
    LSS_ERR_IO = -3,          /* a file could not be opened, read, written or renamed */
    LSS_ERR_FORMAT = -4,      /* a file is malformed or of an unsupported kind */
    LSS_ERR_SHAPE = -5,       /* array shapes do not fit together */
    LSS_ERR_RANGE = -6,       /* a parameter lies outside its allowed range or prior */
    LSS_ERR_NUMERIC = -7,     /* a computation produced NaN/inf or did not converge */
    LSS_ERR_CUDA = -8,        /* a CUDA, cuBLAS or cuDNN call failed */
    LSS_ERR_UNSUPPORTED = -9, /* the build or the device lacks the feature */
    LSS_ERR_STATE = -10       /* an object is used in the wrong state */
};

/* Description of a status code ("ok", "out of memory", ...). Never NULL. */
LSSDEF const char *lss_strerror(int status);
/* Message of the last failure in this thread ("" when none). */
LSSDEF const char *lss_last_error(void);
/* Records a failure (printf-style message) for this thread and returns `status`. The message is one
 * printable line: control bytes, DEL and bytes that are not well-formed UTF-8 (say, quoted from a binary
 * file) are written as \xNN. Arguments may include lss_last_error(). */
LSSDEF int lss_seterr(int status, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
LSSDEF void lss_clearerr(void);

/* Optional log callback; level 0 = info, 1 = warning. NULL (default) discards everything. */
typedef void (*lss_log_fn)(int level, const char *msg, void *user);
LSSDEF void lss_set_log(lss_log_fn fn, void *user);
LSSDEF void lss_log(int level, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Wall-clock seconds from a monotonic clock. */
LSSDEF double lss_time_now(void);

/* ---------------------------------------------------------------- randomness */
/* The counter-based kernels below are inline and, under nvcc, __host__ __device__: the CPU and the GPU
 * (lss_gpu.cu) share this one definition, so they draw the same numbers. */
#if defined(__CUDACC__)
#define LSS_HOST_DEVICE __host__ __device__
#else
#define LSS_HOST_DEVICE
#endif
/* Philox4x32-10 of ctr = (counter lo, counter hi, stream lo, stream hi), key = (seed lo, seed hi). */
static inline LSS_HOST_DEVICE void lss_philox_block_inline(uint64_t seed, uint64_t stream, uint64_t counter,
                                                           uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = (uint32_t)stream;
    uint32_t c3 = (uint32_t)(stream >> 32), k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    int i;
    for (i = 0; i < 10; i++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}
/* A u32 to a float in (0, 1): 23 bits + 1/2, exact. */
static inline LSS_HOST_DEVICE float lss_u32_to_float_inline(uint32_t u) {
    return ((float)(u >> 9) + 0.5f) * (1.0f / 8388608.0f);
}
/* Two u32 to a double in (0, 1): 52 bits + 1/2, exact. */
static inline LSS_HOST_DEVICE double lss_u32x2_to_double_inline(uint32_t hi, uint32_t lo) {
    uint64_t m = ((uint64_t)(hi >> 6) << 26) | (uint64_t)(lo >> 6);
    return ((double)m + 0.5) * (1.0 / 4503599627370496.0);
}

/* The Philox4x32-10 bijection (Salmon et al. 2011): out = philox(ctr, key). */
LSSDEF void lss_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Block `counter` of stream `stream` under `seed`:
 * key = (seed lo, seed hi), ctr = (counter lo, counter hi, stream lo, stream hi). */
LSSDEF void lss_philox_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);

/* Conversions shared by CPU and GPU code: a u32 to a float in (0,1), two u32 to a double in (0,1). */
LSSDEF float lss_u32_to_float(uint32_t u);
LSSDEF double lss_u32x2_to_double(uint32_t hi, uint32_t lo);

/* A sequential generator over one (seed, stream). Draws consume whole 128-bit blocks in order:
 * uniform() uses two words, uniformf() one, normal() one block (two normals, Box-Muller; the
 * second is returned by the next call). State is plain data: copy it to fork. */
typedef struct {
    uint64_t seed, stream, counter; /* counter = index of the next block */
    uint32_t buf[4];
    int pos;                        /* next unused word of buf (4 = empty) */
    int has_spare;
    double spare;
} lss_rng;

LSSDEF void lss_rng_init(lss_rng *r, uint64_t seed, uint64_t stream);
/* Positions the generator at block `counter` of its stream (drops buffered words). */
LSSDEF void lss_rng_seek(lss_rng *r, uint64_t counter);
LSSDEF uint32_t lss_rng_u32(lss_rng *r);
LSSDEF double lss_rng_uniform(lss_rng *r);  /* in (0, 1), 52 random bits */
LSSDEF float lss_rng_uniformf(lss_rng *r);  /* in (0, 1), 23 random bits */
LSSDEF double lss_rng_normal(lss_rng *r);   /* N(0, 1) */
/* Poisson(mean), exact. Returns -1 for a NaN, negative or infinite mean, or a mean above 1e15. */
LSSDEF int64_t lss_rng_poisson(lss_rng *r, double mean);
/* The Poisson quantile function: the smallest k >= 0 with P(X <= k) >= u for X ~ Poisson(mean), u in [0, 1)
 * (u = 0 and mean = 0 give 0). Exact up to the double rounding of the CDF: the CDF (below u = 1/2) and the upper
 * tail 1 - CDF (above) are computed to about 1e-14 relative, so only a u that close to a CDF value may land on
 * its other side (subnormal u: to the resolution of subnormal doubles). Monotone non-decreasing in u and in the
 * mean. Means below 30 with u <= 1/2: sequential search from 0 by the pmf recursion; otherwise from
 * k0 = floor(mean), where P(X <= k0) = Q(k0 + 1, mean) and P(X > k0) come from the regularized incomplete gamma
 * function (series or continued fraction; the pmf in Loader's saddle-point form), then single steps over the pmf,
 * re-evaluated where a tail has shrunk 16-fold; above u = 1/2 on the upper tail against 1 - u (exact), so both
 * tails keep their relative accuracy. Cost O(sqrt(mean)): about 0.2 us below mean 30, 1 us at 100, 15 us at
 * 1e5, 3 ms at 1e9, 0.5 to 3 s at 1e15 (one core). Returns -1 for a NaN, negative or infinite mean, a mean above
 * 1e15, u outside [0, 1) or NaN, or a walk beyond 60 sqrt(mean) + 100 steps (no u >= 2^-1074 needs that). */
LSSDEF int64_t lss_poisson_quantile(double u, double mean);
/* Poisson(mean) by inversion, lss_poisson_quantile(lss_rng_uniform(r), mean): exactly one uniform (one half
 * block) per draw, whatever the mean, so that with common random numbers the draws of a stream stay aligned
 * and a count moves monotonically (and rarely: with probability about |d mean|) when the mean moves. Slower
 * than lss_rng_poisson for large means; different numbers. Returns -1 as lss_poisson_quantile. */
LSSDEF int64_t lss_rng_poisson_inv(lss_rng *r, double mean);
/* Uniform integer in [0, n) without modulo bias; n >= 1. */
LSSDEF uint32_t lss_rng_below(lss_rng *r, uint32_t n);

/* ---------------------------------------------------------------- named random streams
 * Streams are named, not computed: every random draw of the project comes from Philox under the user's
 * seed and a stream lss_stream(purpose, index, sub), so that a map, a noise realisation, a network's
 * initial weights or a chain is a pure function of (seed, purpose, index, sub), draws of different
 * purposes never coincide, and no caller derives seeds by arithmetic (seed * K + i collides).
 * Layout of the 64-bit stream: index (44 bits) << 20 | purpose (8 bits) << 12 | sub (12 bits).
 * Data sets split the index space: lss_set_index(set, i) = set << 40 | i, so that training,
 * validation and evaluation data drawn with the same seed are disjoint. */
typedef enum {
    LSS_STREAM_SHELL = 1,      /* lss_maps.h: Gaussian shell fields (sub = shell) */
    LSS_STREAM_PHASE = 2,      /* lss_maps.h: stochasticity phases (sub = bin) */
    LSS_STREAM_POISSON = 3,    /* lss_maps.h: galaxy counts (sub = bin) */
    LSS_STREAM_SHAPE = 4,      /* lss_maps.h: shape noise (sub = bin) */
    LSS_STREAM_MOSAIC = 5,     /* lss_maps.h: mosaic placement and flips */
    LSS_STREAM_COSMO = 6,      /* parameter draws: Sobol scrambling, cosmology grids */
    LSS_STREAM_NUISANCE = 7,   /* nuisance-parameter and field choices of one draw */
    LSS_STREAM_NET_INIT = 8,   /* network initialisation (sub = network) */
    LSS_STREAM_BATCH = 9,      /* minibatch order and on-the-fly training noise */
    LSS_STREAM_MDN = 10,       /* mixture density network initialisation and training */
    LSS_STREAM_MCMC = 11,      /* ensemble and HMC samplers (index = chain or job) */
    LSS_STREAM_MM_FIELD = 12,  /* lss_massmap.h: convergence fields (truth maps, training maps) */
    LSS_STREAM_MM_MASK = 13,   /* lss_massmap.h: survey masks */
    LSS_STREAM_MM_COUNTS = 14, /* lss_massmap.h: galaxy counts of mocks */
    LSS_STREAM_MM_NOISE = 15,  /* lss_massmap.h: shear noise */
    LSS_STREAM_MM_CHAIN = 16,  /* lss_massmap.h: posterior chains (index = chain) */
    LSS_STREAM_MM_DSM = 17,    /* lss_massmap.h: denoising-score-matching noise */
    LSS_STREAM_MM_HALO = 18,   /* lss_massmap.h: injected clusters */
    LSS_STREAM_CHECK = 19,     /* validation draws (calibration checks, diagnostics) */
    LSS_STREAM_NBODY_IC = 20,  /* lss_maps.h: N-body initial Gaussian modes (index = run) */
    LSS_STREAM_NBODY_CONE = 21,/* lss_maps.h: light-cone replica rotations and shifts (index = run, sub = cone) */
    LSS_STREAM_GAN = 22,       /* lss_nn.h: generator latents and penalty interpolation weights (index = step or map) */
    LSS_STREAM_FLOW = 23,      /* lss_nn.h: normalizing-flow latents of generated maps (index = map) */
    LSS_STREAM_NPURPOSES
} lss_purpose;
typedef enum {
    LSS_SET_TRAIN = 0,         /* training data */
    LSS_SET_VALID = 1,         /* held-out data seen during training (early stopping, plateaus) */
    LSS_SET_TEST = 2,          /* evaluation data and mocks, never trained on */
    LSS_SET_FIDUCIAL = 3,      /* fiducial-cosmology draws (covariances, calibration) */
    LSS_SET_DEEPLSS_CAL = 4,   /* DeepLSS calibration mocks (lss_maps.h's LSS_DRAWS_CAL) */
    LSS_SET_DEEPLSS_CHECK = 5, /* DeepLSS MDN check draws (LSS_DRAWS_CHECK) */
    LSS_SET_FISHER = 6,        /* Fisher-forecast simulations: fresh fields at the fiducial and at finite-difference steps */
    LSS_SET_NSETS = 16
} lss_set;
#define LSS_STREAM_INDEX_MAX ((uint64_t)1 << 44)  /* index < 2^44 */
#define LSS_STREAM_SUB_MAX 4096u                  /* sub < 2^12 */
#define LSS_SET_INDEX_MAX ((uint64_t)1 << 40)     /* i < 2^40 within a set */
/* The stream of (purpose, index, sub). Arguments at or beyond their maximum are reduced modulo it
 * (and then coincide with a smaller one): keep index < LSS_STREAM_INDEX_MAX and sub < 4096. */
static inline LSS_HOST_DEVICE uint64_t lss_stream(lss_purpose purpose, uint64_t index, uint32_t sub) {
    return ((index & (LSS_STREAM_INDEX_MAX - 1)) << 20) | ((uint64_t)((unsigned)purpose & 255u) << 12) |
           (uint64_t)(sub & (LSS_STREAM_SUB_MAX - 1));
}
/* The index of item i of data set `set` (i < 2^40, set < 16; reduced modulo those otherwise). */
static inline LSS_HOST_DEVICE uint64_t lss_set_index(lss_set set, uint64_t i) {
    return ((uint64_t)((unsigned)set & 15u) << 40) | (i & (LSS_SET_INDEX_MAX - 1));
}
/* lss_rng_init(r, seed, lss_stream(purpose, index, sub)). */
LSSDEF void lss_rng_for(lss_rng *r, uint64_t seed, lss_purpose purpose, uint64_t index, uint32_t sub);
/* "shell", "phase", ..., or "?" for an unknown purpose (for messages and run.json). */
LSSDEF const char *lss_purpose_name(lss_purpose purpose);

/* ---------------------------------------------------------------- arrays and NPY */
#define LSS_MAX_DIM 8
typedef enum { LSS_F32 = 1, LSS_F64 = 2, LSS_I32 = 3, LSS_I64 = 4 } lss_dtype;

typedef struct {
    lss_dtype dtype;
    int ndim;
    int64_t shape[LSS_MAX_DIM];
    void *data; /* owned; release with lss_array_free */
} lss_array;

LSSDEF size_t lss_dtype_size(lss_dtype t);
LSSDEF int64_t lss_array_count(const lss_array *a); /* product of the shape (1 for 0-D) */
LSSDEF void lss_array_free(lss_array *a);           /* frees data, zeroes the struct */

/* Opens `path` for reading (binary): the one way the readers of the project open a file. LSS_ERR_IO
 * naming the path and the reason when it cannot ("No such file or directory", "is a directory", ...).
 * *size (may be NULL) gets the length of a regular file in bytes, -1 for a pipe, terminal or device. */
LSSDEF int lss_fopen_read(const char *path, FILE **f, int64_t *size);
/* Loads an NPY file (v1, v2 or v3 header; <f4 <f8 <i4 <i8; C order). On failure `a` is zeroed
 * and nothing is allocated. The caller frees with lss_array_free. */
LSSDEF int lss_npy_load(const char *path, lss_array *a);
/* The same from a buffer holding a whole NPY file. */
LSSDEF int lss_npy_load_mem(const void *buf, size_t len, lss_array *a);
/* Loads and converts to float32 (from any supported dtype). *data is LSS_MALLOC'd; caller frees
 * with LSS_FREE. shape must hold LSS_MAX_DIM entries. */
LSSDEF int lss_npy_load_f32(const char *path, float **data, int *ndim, int64_t *shape);
/* Writes an NPY v1 file (v2 when the header needs it), atomically (temporary file + rename). */
LSSDEF int lss_npy_save(const char *path, lss_dtype t, int ndim, const int64_t *shape,
                        const void *data);

/* ---------------------------------------------------------------- atomic files
 * Every file the library writes goes through lss_wfile. What `path` names decides how:
 *   - nothing, or a regular file: a temporary file "<path>.tmp.<pid>.<n>" in the same directory,
 *     flushed, fsync'ed and renamed into place by lss_wfile_commit (the mode of a replaced file is
 *     kept); readers never see a partial file, and a failed write leaves the old file untouched.
 *   - a symbolic link (a chain of them, dangling or not): the same on the link's final target,
 *     the temporary file next to the target; the link stays a link.
 *   - a device, FIFO, socket or terminal (/dev/null, /dev/stdout, a named pipe): written directly
 *     ("direct" mode: opened for writing and streamed, no temporary file, no rename; opening a FIFO
 *     waits for its reader). Such a file is never replaced by a regular file.
 *   - a directory: LSS_ERR_IO "is a directory".
 * Temporary files of a killed process are left behind; lss_wfile_clean_orphans removes them. */
typedef struct {
    FILE *f;
    char *path, *tmp; /* owned; path is the resolved target; tmp is NULL in direct mode */
    int direct;       /* 1: writing straight into a device, FIFO or other non-regular file */
    int prepared;     /* 1: lss_wfile_prepare succeeded (the data is on disk under tmp, f closed) */
} lss_wfile;
/* Opens `path` for writing ("wb") as described above. */
LSSDEF int lss_wfile_open(lss_wfile *w, const char *path);
/* Flushes, fsyncs and closes the temporary file without renaming it (first half of a commit, to
 * write a set of files that are all renamed once all are written). On failure removes the
 * temporary file and releases w. */
LSSDEF int lss_wfile_prepare(lss_wfile *w);
/* Prepares (when not done yet) and renames into place; on any failure removes the temporary file
 * and leaves an existing `path` untouched. Always releases w. */
LSSDEF int lss_wfile_commit(lss_wfile *w);
/* Discards the temporary file (in direct mode: closes the file; what was written stays written). */
LSSDEF void lss_wfile_abort(lss_wfile *w);
/* Process-wide commit hook (NULL: none; set it before any thread writes). lss_wfile_commit calls
 * fn(tmp, path, user) after the data is on disk and before the rename: a return value > 0 means
 * that the hook took the temporary file over (it renames or removes it later; the commit then
 * succeeds without renaming), 0 lets the commit rename it now, < 0 fails the commit with that
 * status (the temporary file is removed). Drivers use it to publish a run's outputs all together
 * (drivers/lss_driver.h). Direct-mode files never reach the hook. */
typedef int (*lss_wfile_hook_fn)(const char *tmp, const char *path, void *user);
LSSDEF void lss_wfile_set_hook(lss_wfile_hook_fn fn, void *user);
/* Removes the temporary files "<name>.tmp.<pid>.<n>" in `dir` (regular files only) whose process
 * is gone (no process `pid` on this machine); files of live processes are kept. *nremoved (may be
 * NULL) gets the count. LSS_ERR_IO when dir cannot be read; LSS_ERR_UNSUPPORTED off POSIX. */
LSSDEF int lss_wfile_clean_orphans(const char *dir, int *nremoved);
/* 1 when `name` (a file name or path) has the form of a temporary file "<name>.tmp.<pid>.<n>";
 * *pid (may be NULL) gets the pid. */
LSSDEF int lss_wfile_is_temp(const char *name, long *pid);

/* ---------------------------------------------------------------- CSV */
/* Writes `nrows` rows of `ncols` doubles (row-major) under a header row, atomically. Values are
 * printed with %.9g; NaN as "nan". */
LSSDEF int lss_csv_write(const char *path, int ncols, const char *const *header, int64_t nrows,
                         const double *data);

typedef struct {
    int ncols;
    int64_t nrows;
    char **names;  /* ncols column names */
    double *data;  /* nrows x ncols, row-major */
} lss_csv;
/* Reads a CSV file with a header row and numeric cells ("nan", "inf" accepted). Blank lines and
 * lines starting with '#' are skipped. Rows with a different number of cells are an error naming
 * the line. Free with lss_csv_free. */
LSSDEF int lss_csv_read(const char *path, lss_csv *out);
LSSDEF void lss_csv_free(lss_csv *c);
/* Index of a column by name, or -1. */
LSSDEF int lss_csv_col(const lss_csv *c, const char *name);

/* ---------------------------------------------------------------- JSON records
 * A reader for the flat JSON records the project writes (run.json, N-body shell metadata): one object whose
 * members are numbers, strings, true/false/null or arrays of numbers; members holding objects or other arrays
 * are skipped (validated, not kept). Duplicate keys: the first wins. Malformed text is LSS_ERR_FORMAT naming
 * the byte offset. Limits: 16 MB of text, 64 levels of nesting, 1,000,000 numbers. */
typedef struct lss_json lss_json;
LSSDEF int lss_json_parse(const char *text, size_t len, lss_json **out);
LSSDEF int lss_json_load(const char *path, lss_json **out);
LSSDEF void lss_json_free(lss_json *j);
/* Member values: LSS_ERR_FORMAT naming the key when it is missing or of another type (true/false read as 1/0
   by lss_json_num). The pointers stay valid until lss_json_free. */
LSSDEF int lss_json_num(const lss_json *j, const char *key, double *v);
LSSDEF int lss_json_str(const lss_json *j, const char *key, const char **s);
LSSDEF int lss_json_array(const lss_json *j, const char *key, const double **v, int *n);
LSSDEF int lss_json_has(const lss_json *j, const char *key);   /* 1 when the member exists */

/* ---------------------------------------------------------------- smoothing
 * The one separable Gaussian smoothing of the project (maps, histograms of corner plots). */
#define LSS_GAUSS_MAX_HW 64   /* largest kernel half-width in pixels */
/* Normalised Gaussian kernel k[0 .. 2 hw] of standard deviation sigma (pixels), truncated at
 * hw = (int)(truncate sigma) clamped to [1, LSS_GAUSS_MAX_HW]; k must hold 2 LSS_GAUSS_MAX_HW + 1
 * floats. Returns hw, or -1 (LSS_ERR_ARG set) for sigma or truncate not > 0 and finite. */
LSSDEF int lss_gauss_kernel(double sigma, double truncate, float *k);
/* Separable convolution on a padded source ("valid" mode): for y < ny, x < nx,
 * dst[y nx + x] = sum_s sum_t k[s] k[t] src[(y + s) stride + x + t], s, t in [0, 2 hw]; src holds
 * ny + 2 hw rows of at least nx + 2 hw values, tmp (ny + 2 hw) nx floats. Sums run in index order
 * (results do not depend on threads). */
LSSDEF void lss_conv_sep(const float *src, int stride, int ny, int nx, const float *k, int hw, float *tmp,
                         float *dst);
/* In-place separable smoothing of an h x w map with zeros outside it; tmp holds
 * (h + 2 hw)(w + 2 hw) + (h + 2 hw) w floats (lss_conv_sep_zeropad_tmp). */
LSSDEF int64_t lss_conv_sep_zeropad_tmp(int h, int w, int hw);
LSSDEF int lss_conv_sep_zeropad(float *map, int h, int w, const float *k, int hw, float *tmp);

/* ---------------------------------------------------------------- pictures */
typedef struct {
    int w, h;
    unsigned char *rgb; /* w * h * 3, row-major from the top */
} lss_image;

LSSDEF int lss_image_init(lss_image *im, int w, int h); /* filled white */
LSSDEF void lss_image_free(lss_image *im);
LSSDEF void lss_image_rect(lss_image *im, int x0, int y0, int x1, int y1, const unsigned char c[3]);
LSSDEF void lss_image_line(lss_image *im, double x0, double y0, double x1, double y1,
                           const unsigned char c[3], int thick);
/* Text with a small built-in vector font; `scale` 1 gives characters about 6 x 9 pixels. */
LSSDEF void lss_image_text(lss_image *im, int x, int y, const char *s, const unsigned char c[3],
                           int scale);
LSSDEF int lss_image_text_width(const char *s, int scale);
/* Anti-aliased text of any size: `size` 1 is the font's own (capitals 7 pixels high), 1.5 the tick
 * labels of the plots below (about matplotlib's 10 pt at 100 dpi). (x, y) is the top left corner;
 * _vertical draws it rotated to read upwards, (x, y) then being its bottom left corner. */
LSSDEF void lss_image_text_size(lss_image *im, int x, int y, const char *s, const unsigned char c[3],
                                double size);
LSSDEF void lss_image_text_vertical(lss_image *im, int x, int y, const char *s,
                                    const unsigned char c[3], double size);
LSSDEF int lss_image_text_width_size(const char *s, double size);
/* Font sizes of the figures: tick labels, axis labels and legends, titles. */
#define LSS_FONT_TICK 1.5
#define LSS_FONT_LABEL 1.7
#define LSS_FONT_TITLE 2.0
/* Colour maps, t in [0, 1] (clamped; NaN gives grey): viridis (perceptually uniform, for values of
 * one sign), RdBu_r (diverging: blue below the middle, white at it, red above; for signed maps on a
 * range centred on zero), greys (white to black). */
enum { LSS_CMAP_VIRIDIS = 0, LSS_CMAP_RDBU = 1, LSS_CMAP_GREYS = 2 };
LSSDEF void lss_viridis(double t, unsigned char c[3]);
LSSDEF void lss_rdbu(double t, unsigned char c[3]);
LSSDEF void lss_colormap(int cmap, double t, unsigned char c[3]);
/* Draws a map [h][w] at (x, y), each pixel as a scale x scale block, coloured over [vmin, vmax]
 * (viridis; _cmap: any of the maps above). */
LSSDEF void lss_image_map(lss_image *im, int x, int y, const float *map, int h, int w,
                          double vmin, double vmax, int scale);
LSSDEF void lss_image_map_cmap(lss_image *im, int x, int y, const float *map, int h, int w,
                               double vmin, double vmax, int scale, int cmap);
/* A vertical colour bar of size bw x bh at (x, y), framed, with tick marks and labels on its right
 * (a gap between mark and label, so that "0.1" never reads "-0.1"). */
LSSDEF void lss_image_colorbar(lss_image *im, int x, int y, int bw, int bh, double vmin,
                               double vmax);
LSSDEF void lss_image_colorbar_cmap(lss_image *im, int x, int y, int bw, int bh, double vmin,
                                    double vmax, int cmap);
/* The width a colour bar of width bw takes with its labels. */
LSSDEF int lss_image_colorbar_width(int bw, int bh, double vmin, double vmax);
/* Range of a map for drawing: vmin == vmax on input picks the finite min and max (with
 * LSS_CMAP_RDBU: -m..m with m the largest |value|, so that zero is white). */
LSSDEF void lss_map_range(const float *map, int64_t n, int cmap, double *vmin, double *vmax);
/* A map panel: a title above, the map, its colour bar on the right. Returns the panel's width
 * (lss_image_map_panel_size gives width and height without drawing). vmin == vmax: lss_map_range. */
LSSDEF int lss_image_map_panel(lss_image *im, int x, int y, const float *map, int h, int w,
                               double vmin, double vmax, int scale, int cmap, const char *title);
LSSDEF void lss_image_map_panel_size(int h, int w, double vmin, double vmax, int scale, int *pw,
                                     int *ph);
LSSDEF int lss_image_save_png(const lss_image *im, const char *path); /* atomic */

/* One map as a PNG with a title and a colour bar. vmin == vmax picks the finite min and max. */
LSSDEF int lss_png_map(const char *path, const float *map, int h, int w, double vmin, double vmax,
                       const char *title, int scale);
/* The same with a colour map (LSS_CMAP_RDBU with vmin == vmax: centred on zero). */
LSSDEF int lss_png_map_cmap(const char *path, const float *map, int h, int w, double vmin,
                            double vmax, const char *title, int scale, int cmap);

/* A line plot: nseries curves of n points each (x shared; y[s] per series), optional log axes
 * (non-positive values are skipped there; ticks at 1, 2, 5 x 10^k or at powers of ten), a legend
 * from labels (may be NULL; placed in the corner of the axes with the fewest points, or outside).
 * Lines leaving the axes are clipped. The optional per-series arrays style the curves the way
 * matplotlib's defaults would: distinct colours, dashed lines, markers, error bars, shaded bands. */
enum { LSS_LINE_SOLID = 0, LSS_LINE_DASHED = 1, LSS_LINE_NONE = 2 };
typedef struct {
    const char *title, *xlabel, *ylabel;
    int logx, logy;
    int width, height; /* 0: 640 x 480 */
    const int *color;  /* colour index of each series for lss_series_color (NULL: the series index) */
    const int *style;  /* LSS_LINE_SOLID, _DASHED or _NONE (markers only) of each series (NULL: solid) */
    const int *marker; /* 1: a filled circle at each point of the series (NULL: none) */
    const double *const *yerr;    /* error bars +- yerr[s][i] (NULL, or NULL entries: none) */
    const double *const *band_lo; /* a shaded band between band_lo[s] and band_hi[s] behind the */
    const double *const *band_hi; /*   series (NULL, or NULL entries: none) */
    int robust_y;      /* 1: a spike at the start of the curves (the first points of a loss) does
                          not set the y range: it is clipped at the top of the axes */
    int legend_out;    /* 1: the legend outside the axes, on the right */
    double ylo, yhi;   /* a fixed y range when ylo < yhi */
} lss_plot_opts;
LSSDEF int lss_plot_lines(const char *path, const lss_plot_opts *o, int nseries, int n,
                          const double *x, const double *const *y, const char *const *labels);
/* Draws the same into a region of an existing image. */
LSSDEF void lss_plot_lines_into(lss_image *im, int x0, int y0, int pw, int ph,
                                const lss_plot_opts *o, int nseries, int n, const double *x,
                                const double *const *y, const char *const *labels);
/* A distinct colour for series i (tab10). */
LSSDEF void lss_series_color(int i, unsigned char c[3]);
/* Formats a tick value compactly ("0.5", "1e-08", "100"). */
LSSDEF void lss_format_tick(double v, char *buf, size_t n);


/* ---------------------------------------------------------------- MPI (optional)
 * Built with -DLSS_MPI (compile with mpicc: `make mpi`), the drivers run under mpirun: every rank
 * runs the same program (SPMD), work is split by index in fixed blocks (lss_mpi_block) and results
 * are exchanged so that every number is the one the serial run computes (see lss_dp_grad in
 * lss_nn.h, lss_emcee in lss_infer.h, lss-sim). Files are written by rank 0 only: on the other ranks
 * lss_wfile_open writes into /dev/null, so checkpoints, NPY, CSV and PNG files have one writer.
 * MPI errors are fatal (MPI_ERRORS_ARE_FATAL): a rank that dies makes mpirun stop the whole job.
 * Without LSS_MPI (the serial build, no MPI dependency) every function below is its one-process
 * version: rank 0 of 1, exchanges do nothing. */
/* Initialises MPI (MPI_Init_thread, funneled) once; later calls do nothing. LSS_ERR_STATE when
 * MPI cannot start. Without LSS_MPI: LSS_OK. */
LSSDEF int lss_mpi_init(int *argc, char ***argv);
/* MPI_Finalize when lss_mpi_init started MPI (call once, at the end of main). */
LSSDEF void lss_mpi_finalize(void);
LSSDEF int lss_mpi_rank(void);   /* this process's rank (0 before lss_mpi_init or without LSS_MPI) */
LSSDEF int lss_mpi_size(void);   /* number of ranks (1 before lss_mpi_init or without LSS_MPI) */
/* The block of items [*lo, *hi) of n items that `rank` of `size` owns: contiguous, in rank order,
 * sizes differing by at most one (the first n mod size ranks one more). */
LSSDEF void lss_mpi_block(int64_t n, int rank, int size, int64_t *lo, int64_t *hi);
/* buf holds n items of `item` bytes; each rank has filled its lss_mpi_block of them. On return every
 * rank holds all n items (bytes copied, nothing added). LSS_ERR_ARG for n < 0 or a NULL buf with n > 0. */
LSSDEF int lss_mpi_allgather(void *buf, int64_t n, size_t item);
/* The ordered sum of nshard float vectors of length n, the same bits on every rank as the serial loop
 * out[i] = g_0[i] + g_1[i] + ... (added in shard order). Each rank holds in `mine` the vectors of its
 * lss_mpi_block of the shards ([hi - lo][n]). Reduce-scatter then all-gather: rank r sums its
 * lss_mpi_block of the elements over all shards (MPI_Alltoallv), then every rank gets every sum
 * (MPI_Allgatherv); each rank sends about (its shards + 1) x n floats (2n when nshard equals the
 * ranks), whatever the rank count. One process: the serial loop. out must not overlap mine. */
LSSDEF int lss_mpi_sum_ordered(const float *mine, int nshard, int64_t n, float *out);
/* Copies `bytes` bytes of buf from rank `root` to every rank. */
LSSDEF int lss_mpi_bcast(void *buf, size_t bytes, int root);
/* The first failure of any rank: every rank passes its status; each gets the status of the lowest rank
 * whose status is not LSS_OK (LSS_OK when none), and that rank in *rank (may be NULL; -1 when none).
 * One process: its own status. Ranks must call it together. */
LSSDEF int lss_mpi_agree(int status, int *rank);
/* Waits for every rank. */
LSSDEF void lss_mpi_barrier(void);
/* on = 1: this rank writes its files for real (work split by index where each rank writes files of its
 * own, such as the entries of an N-body shell library), with no barrier after its commits; 0 (the
 * default): the one-writer rule above. Call it on every rank, with a lss_mpi_barrier after turning it
 * off, before another rank reads those files. */
LSSDEF void lss_mpi_own_files(int on);
/* Bytes this process has sent so far by the exchanges above (a broadcast counts its bytes once per
 * receiving rank): the communication volume. */
LSSDEF double lss_mpi_bytes_sent(void);

#ifdef __cplusplus
}
#endif
#endif /* LSS_CORE_H */

/* ================================================================ implementation */
#ifdef LSS_CORE_IMPLEMENTATION
#ifndef LSS_CORE_IMPLEMENTATION_DONE
#define LSS_CORE_IMPLEMENTATION_DONE

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#if (defined(__unix__) || defined(__APPLE__)) && defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 200112L
#include <unistd.h>
#define LSS__POSIX 1
#endif

#if defined(__cplusplus)
#define LSS__TLS thread_local
#elif defined(_MSC_VER)
#define LSS__TLS __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define LSS__TLS _Thread_local
#else
#define LSS__TLS __thread
#endif

static LSS__TLS char lss__errmsg[1024];
static lss_log_fn lss__logfn = NULL;
static void *lss__loguser = NULL;

LSSDEF const char *lss_strerror(int s) {
    switch (s) {
    case LSS_OK: return "ok";
    case LSS_ERR_NOMEM: return "out of memory";
    case LSS_ERR_ARG: return "invalid argument";
    case LSS_ERR_IO: return "input/output error";
    case LSS_ERR_FORMAT: return "malformed or unsupported file";
    case LSS_ERR_SHAPE: return "shape mismatch";
    case LSS_ERR_RANGE: return "value out of range";
    case LSS_ERR_NUMERIC: return "numerical failure";
    case LSS_ERR_CUDA: return "CUDA error";
    case LSS_ERR_UNSUPPORTED: return "unsupported";
    case LSS_ERR_STATE: return "invalid state";
    default: return "unknown error";
    }
}

LSSDEF const char *lss_last_error(void) { return lss__errmsg; }
LSSDEF void lss_clearerr(void) { lss__errmsg[0] = 0; }

/* Copies a message, escaping what a terminal should not receive raw: control bytes, DEL and bytes that
 * are not part of well-formed UTF-8 become \xNN (text quoted from a binary file stays one printable line). */
static void lss__msg_escape(const char *s, char *d, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    while (*p) {
        size_t k = 0, j;
        if (*p >= 0x20 && *p < 0x7f) k = 1;
        else if (*p >= 0xc2 && *p <= 0xf4) {
            size_t need = *p < 0xe0 ? 2 : *p < 0xf0 ? 3 : 4;
            for (j = 1; j < need && (p[j] & 0xc0) == 0x80; j++) {}
            if (j == need) k = need;
        }
        if (k) {
            if (o + k >= n) break;
            memcpy(d + o, p, k);
            o += k;
            p += k;
        } else {
            if (o + 4 >= n) break;
            d[o++] = '\\'; d[o++] = 'x'; d[o++] = hex[*p >> 4]; d[o++] = hex[*p & 15];
            p++;
        }
    }
    d[o] = 0;
}

LSSDEF int lss_seterr(int status, const char *fmt, ...) {
    char raw[sizeof lss__errmsg]; /* formatted apart: a message may quote lss_last_error() itself */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    lss__msg_escape(raw, lss__errmsg, sizeof lss__errmsg);
    return status;
}

LSSDEF void lss_set_log(lss_log_fn fn, void *user) {
    lss__logfn = fn;
    lss__loguser = user;
}

LSSDEF void lss_log(int level, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    if (!lss__logfn) return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    lss__logfn(level, buf, lss__loguser);
}

LSSDEF double lss_time_now(void) {
    struct timespec ts;
#if defined(LSS__POSIX) && defined(CLOCK_MONOTONIC)
    clock_gettime(CLOCK_MONOTONIC, &ts);
#else
    timespec_get(&ts, TIME_UTC);
#endif
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- Philox */
LSSDEF void lss_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    lss_philox_block_inline((uint64_t)key[0] | ((uint64_t)key[1] << 32), (uint64_t)ctr[2] | ((uint64_t)ctr[3] << 32),
                            (uint64_t)ctr[0] | ((uint64_t)ctr[1] << 32), out);
}

LSSDEF void lss_philox_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]) {
    lss_philox_block_inline(seed, stream, counter, out);
}

LSSDEF float lss_u32_to_float(uint32_t u) { return lss_u32_to_float_inline(u); }

LSSDEF double lss_u32x2_to_double(uint32_t hi, uint32_t lo) { return lss_u32x2_to_double_inline(hi, lo); }

LSSDEF void lss_rng_init(lss_rng *r, uint64_t seed, uint64_t stream) {
    r->seed = seed;
    r->stream = stream;
    r->counter = 0;
    r->pos = 4;
    r->has_spare = 0;
    r->spare = 0;
}

LSSDEF void lss_rng_seek(lss_rng *r, uint64_t counter) {
    r->counter = counter;
    r->pos = 4;
    r->has_spare = 0;
}

static void lss__rng_refill(lss_rng *r) {
    lss_philox_block(r->seed, r->stream, r->counter, r->buf);
    r->counter++;
    r->pos = 0;
}

LSSDEF uint32_t lss_rng_u32(lss_rng *r) {
    if (r->pos >= 4) lss__rng_refill(r);
    return r->buf[r->pos++];
}

LSSDEF double lss_rng_uniform(lss_rng *r) {
    uint32_t hi, lo;
    if (r->pos > 2) lss__rng_refill(r);
    hi = r->buf[r->pos++];
    lo = r->buf[r->pos++];
    return lss_u32x2_to_double(hi, lo);
}

LSSDEF float lss_rng_uniformf(lss_rng *r) { return lss_u32_to_float(lss_rng_u32(r)); }

LSSDEF double lss_rng_normal(lss_rng *r) {
    double u1, u2, rad;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    lss__rng_refill(r); /* one whole block per pair: position-independent pairs */
    u1 = lss_u32x2_to_double(r->buf[0], r->buf[1]);
    u2 = lss_u32x2_to_double(r->buf[2], r->buf[3]);
    r->pos = 4;
    rad = sqrt(-2.0 * log(u1));
    r->spare = rad * sin(6.283185307179586 * u2);
    r->has_spare = 1;
    return rad * cos(6.283185307179586 * u2);
}

LSSDEF uint32_t lss_rng_below(lss_rng *r, uint32_t n) {
    uint32_t lim, x;
    if (n <= 1) return 0;
    lim = (uint32_t)(0xFFFFFFFFu - (0xFFFFFFFFu % n + 1) % n); /* largest multiple of n, minus 1 */
    do x = lss_rng_u32(r); while (x > lim);
    return x % n;
}

LSSDEF int64_t lss_rng_poisson(lss_rng *r, double mean) {
    if (!(mean >= 0) || mean > 1e15) return -1;
    if (mean == 0) return 0;
    if (mean < 10) {
        /* inversion by sequential search */
        double p = exp(-mean), s = p, u = lss_rng_uniform(r);
        int64_t k = 0;
        while (u > s && k < 1000) {
            k++;
            p *= mean / (double)k;
            s += p;
            if (p == 0) break;
        }
        return k;
    } else {
        /* PTRS: Hormann (1993), transformed rejection with squeeze */
        double slam = sqrt(mean), loglam = log(mean);
        double b = 0.931 + 2.53 * slam, a = -0.059 + 0.02483 * b;
        double invalpha = 1.1239 + 1.1328 / (b - 3.4), vr = 0.9277 - 3.6224 / (b - 2);
        for (;;) {
            double U = lss_rng_uniform(r) - 0.5, V = lss_rng_uniform(r);
            double us = 0.5 - fabs(U);
            double kd = floor((2 * a / us + b) * U + mean + 0.43);
            if (us >= 0.07 && V <= vr) return (int64_t)kd;
            if (kd < 0 || (us < 0.013 && V > us)) continue;
            if (log(V) + log(invalpha) - log(a / (us * us) + b) <=
                -mean + kd * loglam - lgamma(kd + 1))
                return (int64_t)kd;
        }
    }
}

/* stirlerr(n) = log(n!) - (n + 1/2) log(n) + n - log(sqrt(2 pi)) for integer n >= 1 (Loader 2000): a table up
   to 15, the Stirling series above. */
static double lss__stirlerr(double n) {
    static const double t[16] = {0, 0.08106146679532726, 0.0413406959554093, 0.02767792568499834,
                                 0.020790672103765093, 0.016644691189821193, 0.013876128823070748,
                                 0.01189670994589177, 0.010411265261972096, 0.009255462182712733,
                                 0.00833056343336287, 0.007573675487951841, 0.00694284010720953,
                                 0.006408994188004207, 0.0059513701127588475, 0.005554733551962801};
    double nn = n * n;
    if (n <= 15) return t[(int)n];
    if (n > 500) return (1.0 / 12 - (1.0 / 360) / nn) / n;
    if (n > 80) return (1.0 / 12 - (1.0 / 360 - (1.0 / 1260) / nn) / nn) / n;
    if (n > 35) return (1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680) / nn) / nn) / nn) / n;
    return (1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680 - (1.0 / 1188) / nn) / nn) / nn) / nn) / n;
}

/* bd0(x, np) = x log(x / np) + np - x without cancellation near x = np (Loader 2000). */
static double lss__bd0(double x, double np) {
    if (fabs(x - np) < 0.1 * (x + np)) {
        double v = (x - np) / (x + np), s = (x - np) * v, ej = 2 * x * v, s1;
        int j;
        v *= v;
        for (j = 1; j < 1000; j++) {
            ej *= v;
            s1 = s + ej / (2 * j + 1);
            if (s1 == s) break;
            s = s1;
        }
        return s;
    }
    return x * log(x / np) + np - x;
}

/* P(X = k) for X ~ Poisson(m), integer k >= 0, m > 0, to full relative accuracy (saddle-point form). */
static double lss__poisson_pmf(double k, double m) {
    if (k == 0) return exp(-m);
    return exp(-lss__stirlerr(k) - lss__bd0(k, m)) / sqrt(6.283185307179586 * k);
}

/* At integer k >= 0 (m > 0): *lo = P(X <= k) = Q(k + 1, m), *hi = P(X > k) = P(k + 1, m) (regularized incomplete
   gamma functions), *pk = P(X = k). The smaller tail comes to full relative accuracy: for m < k + 2 the series
   of P (the pmf summed above k, compensated), else the continued fraction of Q (modified Lentz); both take
   O(sqrt(m)) terms near k = m. */
static void lss__poisson_tails(double k, double m, double *lo, double *hi, double *pk) {
    double p = lss__poisson_pmf(k, m);
    *pk = p;
    if (m < k + 2) {
        double a = k + 1, t = 1, s = 1, e = 0, r, y;
        for (;;) {
            a += 1;
            r = m / a;                              /* < 1; the ratios decrease: the rest <= t r / (1 - r) */
            if (t * r <= (1 - r) * s * (DBL_EPSILON / 8)) break;
            t *= r;
            y = s + t;
            e += (s - y) + t;                       /* Neumaier: s >= t always */
            s = y;
        }
        *hi = p * (m / (k + 1)) * (s + e);
        *lo = 1 - *hi;
    } else {
        double a = k + 1, b = m + 1 - a, c = 1 / DBL_MIN, d = 1 / b, h = d, an, del, i, nmax = 1000 + 20 * sqrt(m);
        for (i = 1; i < nmax; i += 1) {
            an = -i * (i - a);
            b += 2;
            d = an * d + b;
            if (fabs(d) < DBL_MIN) d = DBL_MIN;
            c = b + an / c;
            if (fabs(c) < DBL_MIN) c = DBL_MIN;
            d = 1 / d;
            del = d * c;
            h *= del;
            if (fabs(del - 1) < DBL_EPSILON) break;
        }
        /* e^-m m^(k+1) / k! = m P(X = k); in logs where P(X = k) is subnormal (m h >= 1) */
        if (p >= 1e-290) *lo = m * p * h;
        else if (k == 0) *lo = exp(-m + log(m * h));
        else *lo = exp(-lss__stirlerr(k) - lss__bd0(k, m) + log(m * h / sqrt(6.283185307179586 * k)));
        *hi = 1 - *lo;
    }
}

LSSDEF int64_t lss_poisson_quantile(double u, double mean) {
    double m = mean, k, F, S, p, t, pn, ref, cap, steps = 0;
    if (!(m >= 0) || m > 1e15 || !(u >= 0) || !(u < 1)) return -1;
    if (u == 0 || m == 0) return 0;
    if (m < 30 && u <= 0.5) { /* sequential search from 0: F stays <= 1/2, no cancellation */
        p = exp(-m);
        F = p;
        for (k = 0; F < u && k < 1000;) {
            k += 1;
            p *= m / k;
            F += p;
        }
        return (int64_t)k;
    }
    cap = 60 * sqrt(m) + 100;
    k = floor(m);
    lss__poisson_tails(k, m, &F, &S, &p);
    if (u <= 0.5) { /* the smallest k with F(k) = P(X <= k) >= u */
        if (F >= u) {
            for (ref = F; k > 0; k -= 1, F = t, p = pn) { /* down while F(k - 1) >= u */
                if (++steps > cap) return -1;
                t = F - p;
                if (t < ref / 16 || p == 0) { /* cancellation (or underflow): evaluate F(k - 1) afresh */
                    lss__poisson_tails(k - 1, m, &t, &S, &pn);
                    ref = t;
                } else {
                    pn = p * k / m;
                }
                if (!(t >= u)) break;
            }
        } else {
            while (F < u) {
                if (++steps > cap) return -1;
                k += 1;
                p *= m / k;
                F += p;
            }
        }
    } else { /* the same through the upper tail: the smallest k with S(k) = P(X > k) <= v */
        double v = 1 - u; /* exact for u >= 1/2 */
        if (S > v) {
            for (ref = S; S > v; k += 1, S = t, p = pn) { /* up: S(k + 1) = S(k) - P(X = k + 1) */
                if (++steps > cap) return -1;
                pn = p * m / (k + 1);
                t = S - pn;
                if (t < ref / 16) {
                    lss__poisson_tails(k + 1, m, &F, &t, &pn);
                    ref = t;
                }
            }
        } else {
            while (k > 0 && S + p <= v) { /* down: S(k - 1) = S(k) + P(X = k) */
                if (++steps > cap) return -1;
                S += p;
                p *= k / m;
                k -= 1;
            }
        }
    }
    return (int64_t)k;
}

LSSDEF int64_t lss_rng_poisson_inv(lss_rng *r, double mean) { return lss_poisson_quantile(lss_rng_uniform(r), mean); }

LSSDEF void lss_rng_for(lss_rng *r, uint64_t seed, lss_purpose purpose, uint64_t index, uint32_t sub) {
    lss_rng_init(r, seed, lss_stream(purpose, index, sub));
}

LSSDEF const char *lss_purpose_name(lss_purpose purpose) {
    static const char *const names[LSS_STREAM_NPURPOSES] = {
        "?", "shell", "phase", "poisson", "shape", "mosaic", "cosmo", "nuisance", "net_init", "batch", "mdn", "mcmc",
        "mm_field", "mm_mask", "mm_counts", "mm_noise", "mm_chain", "mm_dsm", "mm_halo", "check", "nbody_ic",
        "nbody_cone", "gan"};
    return ((int)purpose > 0 && (int)purpose < LSS_STREAM_NPURPOSES) ? names[purpose] : "?";
}

/* ---------------------------------------------------------------- arrays */
LSSDEF size_t lss_dtype_size(lss_dtype t) {
    switch (t) {
    case LSS_F32: case LSS_I32: return 4;
    case LSS_F64: case LSS_I64: return 8;
    default: return 0;
    }
}

LSSDEF int64_t lss_array_count(const lss_array *a) {
    int64_t n = 1;
    int i;
    for (i = 0; i < a->ndim; i++) n *= a->shape[i];
    return n;
}

LSSDEF void lss_array_free(lss_array *a) {
    if (!a) return;
    LSS_FREE(a->data);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- atomic files */
#if defined(LSS__POSIX)
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#endif

static int lss__mpi_rank = 0, lss__mpi_size = 1, lss__mpi_own = 0; /* see "MPI" below */
#ifdef LSS_MPI
static int lss__mpi_started = 0;
static float *lss__mpi_scratch = NULL; /* lss_mpi_sum_ordered's buffers */
static size_t lss__mpi_scap = 0;
#endif
static double lss__mpi_sent = 0;
static char *lss__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)LSS_MALLOC(n);
    if (d) memcpy(d, s, n);
    return d;
}

static lss_wfile_hook_fn lss__wfile_hook = NULL;
static void *lss__wfile_hook_user = NULL;

LSSDEF void lss_wfile_set_hook(lss_wfile_hook_fn fn, void *user) {
    lss__wfile_hook = fn;
    lss__wfile_hook_user = user;
}

LSSDEF int lss_wfile_is_temp(const char *name, long *pid) {
    const char *b, *p, *q;
    long v = 0;
    if (!name) return 0;
    b = strrchr(name, '/');
    b = b ? b + 1 : name;
    for (p = strstr(b, ".tmp."), q = NULL; p; p = strstr(p + 1, ".tmp.")) q = p; /* the last ".tmp." */
    if (!q || q == b) return 0;
    p = q + 5;
    if (*p < '0' || *p > '9') return 0;
    for (; *p >= '0' && *p <= '9'; p++)
        if (v < 100000000000L) v = v * 10 + (*p - '0');
    if (*p++ != '.' || *p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    if (*p) return 0;
    if (pid) *pid = v;
    return 1;
}

#if defined(LSS__POSIX)
/* The end of the chain of symbolic links that starts at `path`: each link's contents, relative ones
 * taken from the link's directory. NULL with errno set on failure (ELOOP after 40 links). *fdlink
 * (may be NULL) is set to 1 when a link of the chain lies in /proc or /dev/fd (a file descriptor's
 * "magic" link such as /dev/stdout: what it names is an open file, not a path to replace). */
static char *lss__wfile_follow(const char *path, int *fdlink) {
    char *cur = lss__strdup(path);
    int hops;
    if (fdlink) *fdlink = 0;
    for (hops = 0; cur && hops < 40; hops++) {
        struct stat st;
        char buf[4096], *next;
        ssize_t n;
        if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode)) return cur; /* the end (may not exist) */
        if (fdlink && (!strncmp(cur, "/proc/", 6) || !strncmp(cur, "/dev/fd/", 8))) *fdlink = 1;
        n = readlink(cur, buf, sizeof buf - 1);
        if (n < 0 || n >= (ssize_t)sizeof buf - 1) {
            if (n >= 0) errno = ENAMETOOLONG;
            LSS_FREE(cur);
            return NULL;
        }
        buf[n] = 0;
        if (buf[0] == '/' || !strchr(cur, '/')) next = lss__strdup(buf);
        else {
            size_t dl = (size_t)(strrchr(cur, '/') - cur) + 1;
            next = (char *)LSS_MALLOC(dl + (size_t)n + 1);
            if (next) { memcpy(next, cur, dl); memcpy(next + dl, buf, (size_t)n + 1); }
        }
        LSS_FREE(cur);
        cur = next;
    }
    if (cur) { LSS_FREE(cur); errno = ELOOP; }
    else errno = ENOMEM;
    return NULL;
}
#endif

LSSDEF int lss_wfile_open(lss_wfile *w, const char *path) {
    static unsigned counter = 0;
    size_t n;
    char *target = NULL;
    int direct = 0, keepmode = -1, fdlink = 0;
    if (!w) return lss_seterr(LSS_ERR_ARG, "lss_wfile_open: NULL argument");
    memset(w, 0, sizeof *w);
    if (!path || !*path) return lss_seterr(LSS_ERR_ARG, "empty output path");
    if (lss__mpi_rank != 0 && !lss__mpi_own) { /* under MPI one writer: rank 0 (see "MPI" in the header) */
        if (!(w->path = lss__strdup(path))) return lss_seterr(LSS_ERR_NOMEM, "out of memory opening '%s'", path);
        if (!(w->f = fopen("/dev/null", "wb"))) {
            LSS_FREE(w->path);
            w->path = NULL;
            return lss_seterr(LSS_ERR_IO, "cannot open /dev/null: %s", strerror(errno));
        }
        w->direct = 1;
        return LSS_OK;
    }
#if defined(LSS__POSIX)
    {
        struct stat ls, st;
        if (lstat(path, &ls) == 0) {
            if (S_ISLNK(ls.st_mode)) {
                if (stat(path, &st) != 0) { /* a dangling link: create its final target */
                    if (errno != ENOENT || !(target = lss__wfile_follow(path, NULL)))
                        return lss_seterr(LSS_ERR_IO, "cannot write '%s': cannot resolve the symbolic link: %s", path,
                                          strerror(errno));
                } else if (S_ISDIR(st.st_mode)) {
                    return lss_seterr(LSS_ERR_IO, "cannot write '%s': it is a link to a directory", path);
                } else if (S_ISREG(st.st_mode)) {
                    struct stat rs;
                    if (!(target = lss__wfile_follow(path, &fdlink)) || fdlink || stat(target, &rs) != 0 ||
                        rs.st_dev != st.st_dev || rs.st_ino != st.st_ino) {
                        /* an open file descriptor's link (/dev/stdout redirected to a file): write
                           into that open file, appending, as the shell's redirection would */
                        LSS_FREE(target);
                        target = NULL;
                        direct = fdlink = 1;
                    }
                    keepmode = (int)(st.st_mode & 07777);
                } else direct = 1; /* a link to a device, FIFO, socket or terminal (/dev/stdout) */
            } else if (S_ISDIR(ls.st_mode)) {
                return lss_seterr(LSS_ERR_IO, "cannot write '%s': it is a directory", path);
            } else if (!S_ISREG(ls.st_mode)) {
                direct = 1;
            } else keepmode = (int)(ls.st_mode & 07777);
        }
    }
#endif
    if (!target && !(target = lss__strdup(path))) return lss_seterr(LSS_ERR_NOMEM, "out of memory opening '%s'", path);
    w->path = target;
    if (direct) {
        w->direct = 1;
        if (!(w->f = fopen(path, fdlink ? "ab" : "wb"))) {
            int e = errno;
            LSS_FREE(w->path);
            w->path = NULL;
            return lss_seterr(LSS_ERR_IO, "cannot write '%s' (not a regular file: written directly): %s", path, strerror(e));
        }
        return LSS_OK;
    }
    n = strlen(target) + 64;
    if (!(w->tmp = (char *)LSS_MALLOC(n))) {
        LSS_FREE(w->path);
        w->path = NULL;
        return lss_seterr(LSS_ERR_NOMEM, "out of memory opening '%s'", path);
    }
#if defined(LSS__POSIX)
    snprintf(w->tmp, n, "%s.tmp.%ld.%u", target, (long)getpid(), counter++);
#else
    snprintf(w->tmp, n, "%s.tmp.%u", target, counter++);
#endif
    if (!(w->f = fopen(w->tmp, "wb"))) {
        int e = errno;
        char *slash = strrchr(target, '/');
        if (e == ENOENT) {
            if (slash) *slash = 0;
            lss_seterr(LSS_ERR_IO, "cannot write '%s': no directory '%s'", path, !slash ? "." : slash == target ? "/" : target);
        } else lss_seterr(LSS_ERR_IO, "cannot write '%s': %s", path, strerror(e));
        LSS_FREE(w->path); LSS_FREE(w->tmp);
        w->path = w->tmp = NULL;
        return LSS_ERR_IO;
    }
#if defined(LSS__POSIX)
    if (keepmode >= 0) (void)fchmod(fileno(w->f), (mode_t)keepmode);
#else
    (void)keepmode;
#endif
    return LSS_OK;
}

LSSDEF void lss_wfile_abort(lss_wfile *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    if (w->tmp) remove(w->tmp);
    LSS_FREE(w->path); LSS_FREE(w->tmp);
    memset(w, 0, sizeof *w);
}

LSSDEF int lss_wfile_prepare(lss_wfile *w) {
    int bad = 0, e = 0;
    if (!w || (!w->f && !w->prepared)) return lss_seterr(LSS_ERR_STATE, "file not open");
    if (w->prepared) return LSS_OK;
    if (ferror(w->f) || fflush(w->f) != 0) { bad = 1; e = errno; }
#if defined(LSS__POSIX)
    if (!bad && !w->direct && fsync(fileno(w->f)) != 0 && errno != EINVAL) { bad = 1; e = errno; }
#endif
    if (fclose(w->f) != 0 && !bad) { bad = 1; e = errno; }
    w->f = NULL;
    if (bad) {
        int s = lss_seterr(LSS_ERR_IO, "cannot write '%s': %s", w->path, e ? strerror(e) : "write error");
        lss_wfile_abort(w);
        return s;
    }
    w->prepared = 1;
    return LSS_OK;
}

static int lss__wfile_commit1(lss_wfile *w) {
    int s, h = 0;
    if (!w || (!w->f && !w->prepared)) return lss_seterr(LSS_ERR_STATE, "file not open");
    if ((s = lss_wfile_prepare(w)) != LSS_OK) return s;
    if (!w->direct && lss__wfile_hook) {
        lss_clearerr();
        h = lss__wfile_hook(w->tmp, w->path, lss__wfile_hook_user);
        if (h < 0) {
            if (!lss_last_error()[0]) lss_seterr(h, "cannot publish '%s'", w->path);
            lss_wfile_abort(w);
            return h;
        }
    }
    if (!w->direct && h == 0 && rename(w->tmp, w->path) != 0) {
        s = lss_seterr(LSS_ERR_IO, "cannot rename into '%s': %s", w->path, strerror(errno));
        lss_wfile_abort(w);
        return s;
    }
    if (h > 0) { LSS_FREE(w->tmp); w->tmp = NULL; } /* the hook owns the temporary file now */
    LSS_FREE(w->path); LSS_FREE(w->tmp);
    memset(w, 0, sizeof *w);
    return LSS_OK;
}

static void lss__mpi_after_write(void);
/* Under MPI every rank commits the same files (rank 0 for real, the others into /dev/null); the
 * barrier after each commit outside parallel regions lets any rank read a file as soon as the code
 * that wrote it has returned. */
LSSDEF int lss_wfile_commit(lss_wfile *w) {
    int s = lss__wfile_commit1(w);
    lss__mpi_after_write();
    return s;
}

LSSDEF int lss_wfile_clean_orphans(const char *dir, int *nremoved) {
    int n = 0;
    if (nremoved) *nremoved = 0;
    if (!dir || !*dir) return lss_seterr(LSS_ERR_ARG, "lss_wfile_clean_orphans: empty directory");
#if defined(LSS__POSIX)
    {
        DIR *d = opendir(dir);
        struct dirent *e;
        long me = (long)getpid();
        if (!d) return lss_seterr(LSS_ERR_IO, "cannot read the directory '%s': %s", dir, strerror(errno));
        while ((e = readdir(d)) != NULL) {
            long pid;
            char p[4096];
            struct stat st;
            if (!lss_wfile_is_temp(e->d_name, &pid) || pid <= 0 || pid == me || pid > INT_MAX) continue;
            if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to judge) */
            if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p) continue;
            if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
            if (remove(p) == 0) n++;
        }
        closedir(d);
    }
    if (nremoved) *nremoved = n;
    return LSS_OK;
#else
    (void)n;
    return lss_seterr(LSS_ERR_UNSUPPORTED, "lss_wfile_clean_orphans needs POSIX");
#endif
}

/* ---------------------------------------------------------------- NPY */
static const char *lss__skipws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    return p;
}

static int lss__npy_parse_header(const char *h, size_t hl, lss_array *a) {
    const char *e = h + hl, *p;
    int have_descr = 0, have_fo = 0, have_shape = 0, fortran = 0;
    while (e > h && (e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\0')) e--;
    p = lss__skipws(h, e);
    if (p >= e || *p != '{') return lss_seterr(LSS_ERR_FORMAT, "NPY header is not a dictionary");
    p++;
    for (;;) {
        char key[32];
        size_t kl = 0;
        char q;
        p = lss__skipws(p, e);
        if (p < e && *p == '}') { p++; break; }
        if (p >= e || (*p != '\'' && *p != '"')) return lss_seterr(LSS_ERR_FORMAT, "NPY header: expected a quoted key");
        q = *p++;
        while (p < e && *p != q && kl < sizeof key - 1) key[kl++] = *p++;
        key[kl] = 0;
        if (p >= e || *p != q) return lss_seterr(LSS_ERR_FORMAT, "NPY header: unterminated key");
        p++;
        p = lss__skipws(p, e);
        if (p >= e || *p != ':') return lss_seterr(LSS_ERR_FORMAT, "NPY header: expected ':' after '%s'", key);
        p = lss__skipws(p + 1, e);
        if (!strcmp(key, "descr")) {
            char d[16];
            size_t dl = 0;
            if (p >= e || (*p != '\'' && *p != '"')) return lss_seterr(LSS_ERR_FORMAT, "NPY header: descr is not a string");
            q = *p++;
            while (p < e && *p != q && dl < sizeof d - 1) d[dl++] = *p++;
            d[dl] = 0;
            if (p >= e || *p != q) return lss_seterr(LSS_ERR_FORMAT, "NPY header: unterminated descr");
            p++;
            if (!strcmp(d, "<f4")) a->dtype = LSS_F32;
            else if (!strcmp(d, "<f8")) a->dtype = LSS_F64;
            else if (!strcmp(d, "<i4")) a->dtype = LSS_I32;
            else if (!strcmp(d, "<i8")) a->dtype = LSS_I64;
            else return lss_seterr(LSS_ERR_FORMAT, "NPY dtype '%s' is not supported (use <f4, <f8, <i4 or <i8)", d);
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            if (e - p >= 4 && !strncmp(p, "True", 4)) { fortran = 1; p += 4; }
            else if (e - p >= 5 && !strncmp(p, "False", 5)) { fortran = 0; p += 5; }
            else return lss_seterr(LSS_ERR_FORMAT, "NPY header: fortran_order is not True/False");
            have_fo = 1;
        } else if (!strcmp(key, "shape")) {
            if (p >= e || *p != '(') return lss_seterr(LSS_ERR_FORMAT, "NPY header: shape is not a tuple");
            p++;
            a->ndim = 0;
            for (;;) {
                int64_t v = 0;
                int digits = 0;
                p = lss__skipws(p, e);
                if (p < e && *p == ')') { p++; break; }
                while (p < e && *p >= '0' && *p <= '9') {
                    if (v > (INT64_MAX - 9) / 10) return lss_seterr(LSS_ERR_FORMAT, "NPY header: dimension too large");
                    v = v * 10 + (*p - '0');
                    p++;
                    digits++;
                }
                if (!digits) return lss_seterr(LSS_ERR_FORMAT, "NPY header: bad shape entry");
                if (a->ndim >= LSS_MAX_DIM) return lss_seterr(LSS_ERR_FORMAT, "NPY array has more than %d dimensions", LSS_MAX_DIM);
                a->shape[a->ndim++] = v;
                p = lss__skipws(p, e);
                if (p < e && *p == 'L') p++;
                p = lss__skipws(p, e);
                if (p < e && *p == ',') p++;
                else if (p < e && *p == ')') { p++; break; }
                else return lss_seterr(LSS_ERR_FORMAT, "NPY header: bad shape tuple");
            }
            have_shape = 1;
        } else {
            return lss_seterr(LSS_ERR_FORMAT, "NPY header: unknown key '%s'", key);
        }
        p = lss__skipws(p, e);
        if (p < e && *p == ',') { p++; continue; }
        p = lss__skipws(p, e);
        if (p < e && *p == '}') { p++; break; }
        return lss_seterr(LSS_ERR_FORMAT, "NPY header: expected ',' or '}'");
    }
    p = lss__skipws(p, e);
    if (p != e) return lss_seterr(LSS_ERR_FORMAT, "NPY header: trailing characters");
    if (!have_descr || !have_fo || !have_shape)
        return lss_seterr(LSS_ERR_FORMAT, "NPY header lacks %s", !have_descr ? "descr" : !have_fo ? "fortran_order" : "shape");
    if (fortran) {
        int i, multi = 0;
        for (i = 0; i < a->ndim; i++) multi += a->shape[i] > 1;
        if (multi > 1) return lss_seterr(LSS_ERR_FORMAT, "NPY array is in Fortran order; save it in C order (np.ascontiguousarray)");
    }
    return LSS_OK;
}

LSSDEF int lss_npy_load_mem(const void *buf, size_t len, lss_array *a) {
    const unsigned char *b = (const unsigned char *)buf;
    size_t hl, off, nbytes, esz;
    int64_t count = 1;
    int i, s;
    lss_array t;
    memset(a, 0, sizeof *a);
    memset(&t, 0, sizeof t);
    if (!buf) return lss_seterr(LSS_ERR_ARG, "NULL buffer");
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0) return lss_seterr(LSS_ERR_FORMAT, "not an NPY file (bad magic)");
    if (b[6] == 1) { hl = (size_t)b[8] | ((size_t)b[9] << 8); off = 10; }
    else if (b[6] == 2 || b[6] == 3) {
        if (len < 12) return lss_seterr(LSS_ERR_FORMAT, "NPY file truncated in its header");
        hl = (size_t)b[8] | ((size_t)b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
        off = 12;
    } else return lss_seterr(LSS_ERR_FORMAT, "NPY format version %d.%d is not supported", b[6], b[7]);
    if (hl > len - off) return lss_seterr(LSS_ERR_FORMAT, "NPY header length %zu exceeds the file", hl);
    if (memchr(b + off, 0, hl) && b[6] != 3) {
        /* NUL inside a v1/v2 header is malformed (padding is spaces) */
        return lss_seterr(LSS_ERR_FORMAT, "NPY header contains a NUL byte");
    }
    s = lss__npy_parse_header((const char *)b + off, hl, &t);
    if (s) return s;
    for (i = 0; i < t.ndim; i++) {
        if (t.shape[i] < 0) return lss_seterr(LSS_ERR_FORMAT, "NPY negative dimension");
        if (t.shape[i] && count > INT64_MAX / 8 / t.shape[i]) return lss_seterr(LSS_ERR_FORMAT, "NPY array too large");
        count *= t.shape[i];
    }
    esz = lss_dtype_size(t.dtype);
    nbytes = (size_t)count * esz;
    off += hl;
    if (len - off != nbytes)
        return lss_seterr(LSS_ERR_FORMAT, "NPY data has %zu bytes but the shape needs %zu (truncated or padded file)", len - off, nbytes);
    t.data = LSS_MALLOC(nbytes ? nbytes : 1);
    if (!t.data) return lss_seterr(LSS_ERR_NOMEM, "out of memory for a %zu-byte array", nbytes);
    memcpy(t.data, b + off, nbytes);
    *a = t;
    return LSS_OK;
}

#if defined(LSS__POSIX)
#include <sys/stat.h>
#endif
LSSDEF int lss_fopen_read(const char *path, FILE **f, int64_t *size) {
    FILE *g;
    int64_t n = -1;
    if (f) *f = NULL;
    if (size) *size = -1;
    if (!path || !f) return lss_seterr(LSS_ERR_ARG, "lss_fopen_read: NULL argument");
    if (!*path) return lss_seterr(LSS_ERR_IO, "cannot read '': empty path");
    if (!(g = fopen(path, "rb"))) return lss_seterr(LSS_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
#if defined(LSS__POSIX)
    {
        struct stat st;
        if (fstat(fileno(g), &st) != 0) {
            int e = errno;
            fclose(g);
            return lss_seterr(LSS_ERR_IO, "cannot read '%s': %s", path, strerror(e));
        }
        if (S_ISDIR(st.st_mode)) {
            fclose(g);
            return lss_seterr(LSS_ERR_IO, "cannot read '%s': is a directory", path);
        }
        if (S_ISREG(st.st_mode)) n = (int64_t)st.st_size;
    }
#else
    {
        long l;
        if (fseek(g, 0, SEEK_END) == 0 && (l = ftell(g)) >= 0 && fseek(g, 0, SEEK_SET) == 0) n = (int64_t)l;
        else clearerr(g);
    }
#endif
    *f = g;
    if (size) *size = n;
    return LSS_OK;
}

LSSDEF int lss_npy_load(const char *path, lss_array *a) {
    FILE *f;
    int64_t sz;
    unsigned char *buf;
    int s;
    memset(a, 0, sizeof *a);
    if (!path) return lss_seterr(LSS_ERR_ARG, "NULL path");
    if ((s = lss_fopen_read(path, &f, &sz)) != LSS_OK) return s;
    if (sz < 0 || (uint64_t)sz >= (uint64_t)SIZE_MAX) {
        fclose(f);
        return lss_seterr(LSS_ERR_IO, "cannot read '%s': not a regular file", path);
    }
    buf = (unsigned char *)LSS_MALLOC((size_t)sz + 1);
    if (!buf) { fclose(f); return lss_seterr(LSS_ERR_NOMEM, "out of memory reading '%s' (%lld bytes)", path, (long long)sz); }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        int e = ferror(f) ? errno : 0;
        fclose(f); LSS_FREE(buf);
        return lss_seterr(LSS_ERR_IO, "cannot read '%s': %s", path, e ? strerror(e) : "the file shrank while being read");
    }
    fclose(f);
    s = lss_npy_load_mem(buf, (size_t)sz, a);
    LSS_FREE(buf);
    if (s) {
        char m[1024];
        snprintf(m, sizeof m, "%s", lss_last_error());
        return lss_seterr(s, "%s: %s", path, m);
    }
    return LSS_OK;
}

LSSDEF int lss_npy_load_f32(const char *path, float **data, int *ndim, int64_t *shape) {
    lss_array a;
    int64_t n, i;
    float *d;
    int s = lss_npy_load(path, &a);
    *data = NULL;
    if (s) return s;
    n = lss_array_count(&a);
    if (a.dtype == LSS_F32) d = (float *)a.data;
    else {
        d = (float *)LSS_MALLOC((size_t)(n ? n : 1) * sizeof(float));
        if (!d) { lss_array_free(&a); return lss_seterr(LSS_ERR_NOMEM, "out of memory converting '%s'", path); }
        for (i = 0; i < n; i++) {
            switch (a.dtype) {
            case LSS_F64: d[i] = (float)((double *)a.data)[i]; break;
            case LSS_I32: d[i] = (float)((int32_t *)a.data)[i]; break;
            default: d[i] = (float)((int64_t *)a.data)[i]; break;
            }
        }
        LSS_FREE(a.data);
    }
    *data = d;
    *ndim = a.ndim;
    for (i = 0; i < a.ndim; i++) shape[i] = a.shape[i];
    return LSS_OK;
}

LSSDEF int lss_npy_save(const char *path, lss_dtype t, int ndim, const int64_t *shape,
                        const void *data) {
    char hdr[512], dict[400];
    const char *descr;
    size_t dl, total, pre, nbytes, esz = lss_dtype_size(t);
    int64_t count = 1;
    int i, v2;
    lss_wfile w;
    if (!esz) return lss_seterr(LSS_ERR_ARG, "unknown dtype %d", (int)t);
    if (ndim < 0 || ndim > LSS_MAX_DIM) return lss_seterr(LSS_ERR_ARG, "ndim %d out of range", ndim);
    descr = t == LSS_F32 ? "<f4" : t == LSS_F64 ? "<f8" : t == LSS_I32 ? "<i4" : "<i8";
    dl = (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0) return lss_seterr(LSS_ERR_ARG, "negative dimension");
        count *= shape[i];
        dl += (size_t)snprintf(dict + dl, sizeof dict - dl, "%lld%s", (long long)shape[i],
                               (ndim == 1 || i < ndim - 1) ? ", " : "");
    }
    if (ndim == 1) dl -= 1; /* "(5,)" */
    dl += (size_t)snprintf(dict + dl, sizeof dict - dl, "), }");
    if (count > 0 && !data) return lss_seterr(LSS_ERR_ARG, "NULL data");
    v2 = (10 + dl + 1) > 65535;
    pre = v2 ? 12 : 10;
    total = ((pre + dl + 1 + 63) / 64) * 64;
    memcpy(hdr, "\x93NUMPY", 6);
    hdr[6] = (char)(v2 ? 2 : 1);
    hdr[7] = 0;
    {
        size_t hl = total - pre;
        hdr[8] = (char)(hl & 0xff);
        hdr[9] = (char)((hl >> 8) & 0xff);
        if (v2) { hdr[10] = (char)((hl >> 16) & 0xff); hdr[11] = (char)((hl >> 24) & 0xff); }
    }
    memcpy(hdr + pre, dict, dl);
    memset(hdr + pre + dl, ' ', total - pre - dl - 1);
    hdr[total - 1] = '\n';
    nbytes = (size_t)count * esz;
    if ((i = lss_wfile_open(&w, path)) != 0) return i;
    if (fwrite(hdr, 1, total, w.f) != total || (nbytes && fwrite(data, 1, nbytes, w.f) != nbytes)) {
        int e = errno;
        lss_wfile_abort(&w);
        return lss_seterr(LSS_ERR_IO, "cannot write '%s': %s", path, strerror(e));
    }
    return lss_wfile_commit(&w);
}

/* ---------------------------------------------------------------- CSV */
LSSDEF int lss_csv_write(const char *path, int ncols, const char *const *header, int64_t nrows,
                         const double *data) {
    lss_wfile w;
    int64_t r;
    int c, s;
    if (ncols <= 0 || nrows < 0 || !header || (nrows && !data)) return lss_seterr(LSS_ERR_ARG, "bad CSV arguments");
    if ((s = lss_wfile_open(&w, path)) != 0) return s;
    for (c = 0; c < ncols; c++) fprintf(w.f, "%s%s", header[c], c + 1 < ncols ? "," : "\n");
    for (r = 0; r < nrows; r++)
        for (c = 0; c < ncols; c++) {
            double v = data[r * ncols + c];
            if (isnan(v)) fputs("nan", w.f);
            else fprintf(w.f, "%.9g", v);
            fputc(c + 1 < ncols ? ',' : '\n', w.f);
        }
    return lss_wfile_commit(&w);
}

LSSDEF void lss_csv_free(lss_csv *c) {
    int i;
    if (!c) return;
    if (c->names)
        for (i = 0; i < c->ncols; i++) LSS_FREE(c->names[i]);
    LSS_FREE(c->names);
    LSS_FREE(c->data);
    memset(c, 0, sizeof *c);
}

LSSDEF int lss_csv_col(const lss_csv *c, const char *name) {
    int i;
    for (i = 0; i < c->ncols; i++)
        if (!strcmp(c->names[i], name)) return i;
    return -1;
}

/* ---------------------------------------------------------------- JSON records */
typedef struct {
    char *key, *str;   /* str: string members */
    double num;        /* numbers, true/false */
    double *arr;       /* number arrays */
    int type;          /* 1 number, 2 string, 3 array, 4 null, 5 skipped */
    int n;
} lss__jmem;
struct lss_json {
    lss__jmem *m;
    int n, cap;
};
typedef struct {
    const char *s;
    size_t i, len;
    int depth;
    long nnum;
} lss__jp;
static void lss__jws(lss__jp *p) {
    while (p->i < p->len && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) p->i++;
}
static int lss__jerr(const lss__jp *p, const char *what) {
    return lss_seterr(LSS_ERR_FORMAT, "JSON: %s at byte %lu", what, (unsigned long)p->i);
}
/* string at p->i (after the quote check); *out (may be NULL: skip) gets a malloc'd UTF-8 copy */
static int lss__jstring(lss__jp *p, char **out) {
    size_t cap = 16, n = 0;
    char *b = NULL;
    if (p->i >= p->len || p->s[p->i] != '"') return lss__jerr(p, "expected a string");
    p->i++;
    if (out && !(b = (char *)LSS_MALLOC(cap))) return lss_seterr(LSS_ERR_NOMEM, "JSON: out of memory");
    for (;;) {
        unsigned c;
        char e[4];
        int ne = 1;
        if (p->i >= p->len) { LSS_FREE(b); return lss__jerr(p, "unterminated string"); }
        c = (unsigned char)p->s[p->i++];
        if (c == '"') break;
        if (c < 0x20) { LSS_FREE(b); return lss__jerr(p, "control character in a string"); }
        e[0] = (char)c;
        if (c == '\\') {
            if (p->i >= p->len) { LSS_FREE(b); return lss__jerr(p, "unterminated string"); }
            c = (unsigned char)p->s[p->i++];
            switch (c) {
            case '"': case '\\': case '/': e[0] = (char)c; break;
            case 'b': e[0] = '\b'; break;
            case 'f': e[0] = '\f'; break;
            case 'n': e[0] = '\n'; break;
            case 'r': e[0] = '\r'; break;
            case 't': e[0] = '\t'; break;
            case 'u': {
                unsigned u = 0;
                int k;
                for (k = 0; k < 4; k++) {
                    int h = p->i < p->len ? p->s[p->i] : 0;
                    u <<= 4;
                    if (h >= '0' && h <= '9') u |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') u |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') u |= (unsigned)(h - 'A' + 10);
                    else { LSS_FREE(b); return lss__jerr(p, "bad \\u escape"); }
                    p->i++;
                }
                if (u == 0) { LSS_FREE(b); return lss__jerr(p, "\\u0000 in a string"); }
                if (u < 0x80) e[0] = (char)u;
                else if (u < 0x800) { e[0] = (char)(0xC0 | (u >> 6)); e[1] = (char)(0x80 | (u & 63)); ne = 2; }
                else { e[0] = (char)(0xE0 | (u >> 12)); e[1] = (char)(0x80 | ((u >> 6) & 63)); e[2] = (char)(0x80 | (u & 63)); ne = 3; }
                break;
            }
            default: LSS_FREE(b); return lss__jerr(p, "bad escape in a string");
            }
        }
        if (b) {
            if (n + (size_t)ne + 1 > cap) {
                char *nb2;
                cap *= 2;
                if (!(nb2 = (char *)LSS_REALLOC(b, cap))) { LSS_FREE(b); return lss_seterr(LSS_ERR_NOMEM, "JSON: out of memory"); }
                b = nb2;
            }
            memcpy(b + n, e, (size_t)ne);
            n += (size_t)ne;
        }
    }
    if (b) { b[n] = 0; *out = b; }
    return LSS_OK;
}
static int lss__jnumber(lss__jp *p, double *v) {
    size_t j = p->i, k;
    char buf[64], *end;
    if (j < p->len && p->s[j] == '-') j++;
    if (j >= p->len || !(p->s[j] >= '0' && p->s[j] <= '9')) return lss__jerr(p, "expected a value");
    while (j < p->len && ((p->s[j] >= '0' && p->s[j] <= '9') || p->s[j] == '.' || p->s[j] == 'e' || p->s[j] == 'E' ||
                          p->s[j] == '+' || p->s[j] == '-'))
        j++;
    k = j - p->i;
    if (k >= sizeof buf) return lss__jerr(p, "number too long");
    memcpy(buf, p->s + p->i, k);
    buf[k] = 0;
    *v = strtod(buf, &end);
    if (end != buf + k) return lss__jerr(p, "malformed number");
    if (++p->nnum > 1000000) return lss__jerr(p, "more than 1,000,000 numbers");
    p->i = j;
    return LSS_OK;
}
static int lss__jword(lss__jp *p, const char *w) {
    size_t n = strlen(w);
    if (p->len - p->i < n || memcmp(p->s + p->i, w, n)) return 0;
    p->i += n;
    return 1;
}
/* any value, not kept */
static int lss__jskip(lss__jp *p) {
    int st;
    double v;
    lss__jws(p);
    if (p->i >= p->len) return lss__jerr(p, "unexpected end");
    if (p->s[p->i] == '"') return lss__jstring(p, NULL);
    if (lss__jword(p, "true") || lss__jword(p, "false") || lss__jword(p, "null")) return LSS_OK;
    if (p->s[p->i] == '{' || p->s[p->i] == '[') {
        char close = p->s[p->i] == '{' ? '}' : ']';
        if (++p->depth > 64) return lss__jerr(p, "nesting deeper than 64");
        p->i++;
        lss__jws(p);
        if (p->i < p->len && p->s[p->i] == close) { p->i++; p->depth--; return LSS_OK; }
        for (;;) {
            if (close == '}') {
                lss__jws(p);
                if ((st = lss__jstring(p, NULL))) return st;
                lss__jws(p);
                if (p->i >= p->len || p->s[p->i] != ':') return lss__jerr(p, "expected ':'");
                p->i++;
            }
            if ((st = lss__jskip(p))) return st;
            lss__jws(p);
            if (p->i < p->len && p->s[p->i] == ',') { p->i++; continue; }
            if (p->i < p->len && p->s[p->i] == close) { p->i++; p->depth--; return LSS_OK; }
            return lss__jerr(p, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    return lss__jnumber(p, &v);
}
LSSDEF void lss_json_free(lss_json *j) {
    int k;
    if (!j) return;
    for (k = 0; k < j->n; k++) {
        LSS_FREE(j->m[k].key);
        LSS_FREE(j->m[k].str);
        LSS_FREE(j->m[k].arr);
    }
    LSS_FREE(j->m);
    LSS_FREE(j);
}
LSSDEF int lss_json_parse(const char *text, size_t len, lss_json **out) {
    lss__jp p;
    lss_json *j;
    int st = LSS_OK;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_json_parse: NULL out");
    *out = NULL;
    if (!text && len) return lss_seterr(LSS_ERR_ARG, "lss_json_parse: NULL text");
    if (len > ((size_t)16 << 20)) return lss_seterr(LSS_ERR_FORMAT, "JSON: text of %lu bytes (at most 16 MB)", (unsigned long)len);
    if (!(j = (lss_json *)LSS_MALLOC(sizeof *j))) return lss_seterr(LSS_ERR_NOMEM, "JSON: out of memory");
    memset(j, 0, sizeof *j);
    memset(&p, 0, sizeof p);
    p.s = text;
    p.len = len;
    lss__jws(&p);
    if (p.i >= p.len || p.s[p.i] != '{') { st = lss__jerr(&p, "expected '{'"); goto done; }
    p.i++;
    p.depth = 1;
    lss__jws(&p);
    if (p.i < p.len && p.s[p.i] == '}') p.i++;
    else
        for (;;) {
            lss__jmem m;
            memset(&m, 0, sizeof m);
            lss__jws(&p);
            if ((st = lss__jstring(&p, &m.key))) goto done;
            lss__jws(&p);
            if (p.i >= p.len || p.s[p.i] != ':') { LSS_FREE(m.key); st = lss__jerr(&p, "expected ':'"); goto done; }
            p.i++;
            lss__jws(&p);
            if (p.i < p.len && p.s[p.i] == '"') { m.type = 2; st = lss__jstring(&p, &m.str); }
            else if (lss__jword(&p, "true")) { m.type = 1; m.num = 1; }
            else if (lss__jword(&p, "false")) { m.type = 1; m.num = 0; }
            else if (lss__jword(&p, "null")) m.type = 4;
            else if (p.i < p.len && p.s[p.i] == '[') {
                /* an array of numbers is kept; anything else in it makes the member skipped */
                size_t save = p.i;
                int cap = 0, bad = 0;
                p.i++;
                m.type = 3;
                lss__jws(&p);
                if (p.i < p.len && p.s[p.i] == ']') p.i++;
                else
                    for (;;) {
                        double v;
                        lss__jws(&p);
                        if (p.i >= p.len || !(p.s[p.i] == '-' || (p.s[p.i] >= '0' && p.s[p.i] <= '9'))) { bad = 1; break; }
                        if ((st = lss__jnumber(&p, &v))) break;
                        if (m.n == cap) {
                            double *na;
                            cap = cap ? 2 * cap : 8;
                            if (!(na = (double *)LSS_REALLOC(m.arr, sizeof(double) * (size_t)cap))) {
                                st = lss_seterr(LSS_ERR_NOMEM, "JSON: out of memory");
                                break;
                            }
                            m.arr = na;
                        }
                        m.arr[m.n++] = v;
                        lss__jws(&p);
                        if (p.i < p.len && p.s[p.i] == ',') { p.i++; continue; }
                        if (p.i < p.len && p.s[p.i] == ']') { p.i++; break; }
                        st = lss__jerr(&p, "expected ',' or ']'");
                        break;
                    }
                if (!st && bad) {
                    LSS_FREE(m.arr);
                    m.arr = NULL;
                    m.n = 0;
                    m.type = 5;
                    p.i = save;
                    st = lss__jskip(&p);
                }
            } else if (p.i < p.len && p.s[p.i] == '{') { m.type = 5; st = lss__jskip(&p); }
            else { m.type = 1; st = lss__jnumber(&p, &m.num); }
            if (st) { LSS_FREE(m.key); LSS_FREE(m.str); LSS_FREE(m.arr); goto done; }
            if (j->n == j->cap) {
                lss__jmem *nm;
                j->cap = j->cap ? 2 * j->cap : 16;
                if (!(nm = (lss__jmem *)LSS_REALLOC(j->m, sizeof(lss__jmem) * (size_t)j->cap))) {
                    LSS_FREE(m.key); LSS_FREE(m.str); LSS_FREE(m.arr);
                    st = lss_seterr(LSS_ERR_NOMEM, "JSON: out of memory");
                    goto done;
                }
                j->m = nm;
            }
            j->m[j->n++] = m;
            lss__jws(&p);
            if (p.i < p.len && p.s[p.i] == ',') { p.i++; continue; }
            if (p.i < p.len && p.s[p.i] == '}') { p.i++; break; }
            st = lss__jerr(&p, "expected ',' or '}'");
            goto done;
        }
    lss__jws(&p);
    if (p.i != p.len) st = lss__jerr(&p, "text after the object");
done:
    if (st) { lss_json_free(j); return st; }
    *out = j;
    return LSS_OK;
}
LSSDEF int lss_json_load(const char *path, lss_json **out) {
    FILE *f;
    char *buf;
    int64_t n;
    size_t got;
    int st;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_json_load: NULL out");
    *out = NULL;
    if (!path) return lss_seterr(LSS_ERR_ARG, "lss_json_load: NULL path");
    if ((st = lss_fopen_read(path, &f, &n)) != LSS_OK) return st;
    if (n < 0) {
        fclose(f);
        return lss_seterr(LSS_ERR_IO, "cannot read '%s': not a regular file", path);
    }
    if (n > (16L << 20)) { fclose(f); return lss_seterr(LSS_ERR_FORMAT, "'%s': %lld bytes (a JSON record is at most 16 MB)", path, (long long)n); }
    if (!(buf = (char *)LSS_MALLOC((size_t)n + 1))) { fclose(f); return lss_seterr(LSS_ERR_NOMEM, "out of memory reading '%s'", path); }
    got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) { LSS_FREE(buf); return lss_seterr(LSS_ERR_IO, "cannot read '%s': short read", path); }
    st = lss_json_parse(buf, got, out);
    LSS_FREE(buf);
    if (st) return lss_seterr(st, "'%s': %s", path, lss_last_error());
    return LSS_OK;
}
static const lss__jmem *lss__jfind(const lss_json *j, const char *key) {
    int k;
    if (!j || !key) return NULL;
    for (k = 0; k < j->n; k++)
        if (!strcmp(j->m[k].key, key)) return &j->m[k];
    return NULL;
}
LSSDEF int lss_json_has(const lss_json *j, const char *key) { return lss__jfind(j, key) != NULL; }
LSSDEF int lss_json_num(const lss_json *j, const char *key, double *v) {
    const lss__jmem *m = lss__jfind(j, key);
    if (!m) return lss_seterr(LSS_ERR_FORMAT, "JSON: no member \"%s\"", key ? key : "");
    if (m->type != 1) return lss_seterr(LSS_ERR_FORMAT, "JSON: member \"%s\" is not a number", key);
    if (v) *v = m->num;
    return LSS_OK;
}
LSSDEF int lss_json_str(const lss_json *j, const char *key, const char **s) {
    const lss__jmem *m = lss__jfind(j, key);
    if (!m) return lss_seterr(LSS_ERR_FORMAT, "JSON: no member \"%s\"", key ? key : "");
    if (m->type != 2) return lss_seterr(LSS_ERR_FORMAT, "JSON: member \"%s\" is not a string", key);
    if (s) *s = m->str;
    return LSS_OK;
}
LSSDEF int lss_json_array(const lss_json *j, const char *key, const double **v, int *n) {
    const lss__jmem *m = lss__jfind(j, key);
    if (!m) return lss_seterr(LSS_ERR_FORMAT, "JSON: no member \"%s\"", key ? key : "");
    if (m->type != 3) return lss_seterr(LSS_ERR_FORMAT, "JSON: member \"%s\" is not an array of numbers", key);
    if (v) *v = m->arr;
    if (n) *n = m->n;
    return LSS_OK;
}

static char *lss__trim(char *s) {
    char *e;
    while (*s == ' ' || *s == '\t') s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = 0;
    return s;
}

LSSDEF int lss_csv_read(const char *path, lss_csv *out) {
    FILE *f;
    char *line = NULL;
    size_t cap = 0;
    int64_t lineno = 0, rcap = 0;
    int s = LSS_OK;
    memset(out, 0, sizeof *out);
    if ((s = lss_fopen_read(path, &f, NULL)) != LSS_OK) return s;
    for (;;) {
        /* read one line of any length */
        size_t len = 0;
        int ch;
        while ((ch = fgetc(f)) != EOF) {
            if (len + 2 > cap) {
                size_t nc = cap ? cap * 2 : 256;
                char *nl = (char *)LSS_REALLOC(line, nc);
                if (!nl) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory reading '%s'", path); goto done; }
                line = nl;
                cap = nc;
            }
            if (ch == '\n') break;
            line[len++] = (char)ch;
        }
        if (ch == EOF && len == 0) break;
        line[len] = 0;
        lineno++;
        {
            char *t = lss__trim(line), *p, *tok;
            int n = 0;
            if (!*t || *t == '#') continue;
            if (!out->names) {
                int k = 1;
                for (p = t; *p; p++) k += *p == ',';
                out->names = (char **)LSS_MALLOC(sizeof(char *) * (size_t)k);
                if (!out->names) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto done; }
                for (p = t;; ) {
                    char *comma = strchr(p, ',');
                    if (comma) *comma = 0;
                    tok = lss__trim(p);
                    out->names[n] = lss__strdup(tok);
                    if (!out->names[n]) { out->ncols = n; s = lss_seterr(LSS_ERR_NOMEM, "out of memory"); goto done; }
                    n++;
                    if (!comma) break;
                    p = comma + 1;
                }
                out->ncols = n;
                continue;
            }
            if (out->nrows == rcap) {
                int64_t nr = rcap ? rcap * 2 : 64;
                double *nd = (double *)LSS_REALLOC(out->data, (size_t)nr * (size_t)out->ncols * sizeof(double));
                if (!nd) { s = lss_seterr(LSS_ERR_NOMEM, "out of memory reading '%s'", path); goto done; }
                out->data = nd;
                rcap = nr;
            }
            for (p = t;; ) {
                char *comma = strchr(p, ','), *end;
                double v;
                if (comma) *comma = 0;
                tok = lss__trim(p);
                if (n >= out->ncols) { s = lss_seterr(LSS_ERR_FORMAT, "%s:%lld: more cells than the %d header columns", path, (long long)lineno, out->ncols); goto done; }
                errno = 0;
                v = strtod(tok, &end);
                if (!*tok || *end) { s = lss_seterr(LSS_ERR_FORMAT, "%s:%lld: cell '%s' is not a number", path, (long long)lineno, tok); goto done; }
                out->data[out->nrows * out->ncols + n] = v;
                n++;
                if (!comma) break;
                p = comma + 1;
            }
            if (n != out->ncols) { s = lss_seterr(LSS_ERR_FORMAT, "%s:%lld: %d cells, header has %d", path, (long long)lineno, n, out->ncols); goto done; }
            out->nrows++;
        }
        if (ch == EOF) break;
    }
    if (ferror(f)) s = lss_seterr(LSS_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
    else if (!out->names) s = lss_seterr(LSS_ERR_FORMAT, "'%s' is empty (no header row)", path);
done:
    LSS_FREE(line);
    fclose(f);
    if (s) lss_csv_free(out);
    return s;
}

/* ---------------------------------------------------------------- smoothing */
LSSDEF int lss_gauss_kernel(double sigma, double truncate, float *k) {
    double sum = 0;
    int hw, t;
    if (!k || !(sigma > 0) || !(truncate > 0) || !(sigma < 1e30) || !(truncate < 1e30)) {
        lss_seterr(LSS_ERR_ARG, "lss_gauss_kernel: sigma %g and truncate %g must be > 0 and finite", sigma, truncate);
        return -1;
    }
    hw = truncate * sigma >= LSS_GAUSS_MAX_HW ? LSS_GAUSS_MAX_HW : (int)(truncate * sigma);
    if (hw < 1) hw = 1;
    for (t = -hw; t <= hw; t++) sum += exp(-0.5 * t * t / (sigma * sigma));
    for (t = -hw; t <= hw; t++) k[t + hw] = (float)(exp(-0.5 * t * t / (sigma * sigma)) / sum);
    return hw;
}

LSSDEF void lss_conv_sep(const float *src, int stride, int ny, int nx, const float *k, int hw, float *tmp,
                         float *dst) {
    int y, x, t, rows = ny + 2 * hw;
    for (y = 0; y < rows; y++) {
        const float *r = src + (size_t)y * (size_t)stride;
        float *o = tmp + (size_t)y * (size_t)nx;
        for (x = 0; x < nx; x++) {
            float a = 0;
            for (t = 0; t <= 2 * hw; t++) a += k[t] * r[x + t];
            o[x] = a;
        }
    }
    for (y = 0; y < ny; y++) {
        float *o = dst + (size_t)y * (size_t)nx;
        for (x = 0; x < nx; x++) o[x] = 0;
        for (t = 0; t <= 2 * hw; t++) {
            const float *r = tmp + (size_t)(y + t) * (size_t)nx;
            float kt = k[t];
            for (x = 0; x < nx; x++) o[x] += kt * r[x];
        }
    }
}

LSSDEF int64_t lss_conv_sep_zeropad_tmp(int h, int w, int hw) {
    if (h < 1 || w < 1 || hw < 0) return 0;
    return ((int64_t)h + 2 * hw) * ((int64_t)w + 2 * hw) + ((int64_t)h + 2 * hw) * w;
}

LSSDEF int lss_conv_sep_zeropad(float *map, int h, int w, const float *k, int hw, float *tmp) {
    int64_t W = (int64_t)w + 2 * hw, H = (int64_t)h + 2 * hw, y;
    if (!map || !k || !tmp || h < 1 || w < 1 || hw < 0 || hw > LSS_GAUSS_MAX_HW)
        return lss_seterr(LSS_ERR_ARG, "lss_conv_sep_zeropad: bad arguments (map %d x %d, half-width %d)", h, w, hw);
    memset(tmp, 0, sizeof(float) * (size_t)(H * W));
    for (y = 0; y < h; y++) memcpy(tmp + (size_t)((y + hw) * W + hw), map + (size_t)y * (size_t)w, sizeof(float) * (size_t)w);
    lss_conv_sep(tmp, (int)W, h, w, k, hw, tmp + (size_t)(H * W), map);
    return LSS_OK;
}

/* ---------------------------------------------------------------- pictures */
LSSDEF int lss_image_init(lss_image *im, int w, int h) {
    memset(im, 0, sizeof *im);
    if (w <= 0 || h <= 0 || w > 32768 || h > 32768) return lss_seterr(LSS_ERR_ARG, "image size %d x %d out of range", w, h);
    im->rgb = (unsigned char *)LSS_MALLOC((size_t)w * (size_t)h * 3);
    if (!im->rgb) return lss_seterr(LSS_ERR_NOMEM, "out of memory for a %d x %d image", w, h);
    memset(im->rgb, 255, (size_t)w * (size_t)h * 3);
    im->w = w;
    im->h = h;
    return LSS_OK;
}

LSSDEF void lss_image_free(lss_image *im) {
    if (!im) return;
    LSS_FREE(im->rgb);
    memset(im, 0, sizeof *im);
}

/* the rectangle [x0, x1) x [y0, y1), clipped, blended over the image with opacity a (1: painted) */
static void lss__blend_rect(lss_image *im, int x0, int y0, int x1, int y1, const unsigned char c[3], double a) {
    int x, y, k;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > im->w) x1 = im->w;
    if (y1 > im->h) y1 = im->h;
    for (y = y0; y < y1; y++)
        for (x = x0; x < x1; x++) {
            unsigned char *p = im->rgb + 3 * ((size_t)y * im->w + x);
            for (k = 0; k < 3; k++) p[k] = a >= 1 ? c[k] : (unsigned char)floor(p[k] * (1 - a) + c[k] * a + 0.5);
        }
}

LSSDEF void lss_image_rect(lss_image *im, int x0, int y0, int x1, int y1, const unsigned char c[3]) {
    lss__blend_rect(im, x0, y0, x1, y1, c, 1.0);
}

LSSDEF void lss_image_line(lss_image *im, double x0, double y0, double x1, double y1,
                           const unsigned char c[3], int thick) {
    double dx = x1 - x0, dy = y1 - y0, len = sqrt(dx * dx + dy * dy);
    int n, i, h0 = (thick - 1) / 2;
    if (!(len < 1e6)) return; /* NaN/inf or absurd */
    n = (int)ceil(len * 2) + 1;
    for (i = 0; i <= n; i++) {
        double t = (double)i / n;
        int x = (int)floor(x0 + t * dx + 0.5), y = (int)floor(y0 + t * dy + 0.5);
        lss_image_rect(im, x - h0, y - h0, x - h0 + thick, y - h0 + thick, c);
    }
}

#ifndef LSS_NO_PNG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wmissing-braces"
#endif
#include "stb_easy_font.h"
#ifndef LSS_NO_STB_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#endif
#include "stb_image_write.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif


LSSDEF int lss_image_text_width(const char *s, int scale) {
#ifndef LSS_NO_PNG
    return stb_easy_font_width((char *)s) * (scale < 1 ? 1 : scale);
#else
    return (int)strlen(s) * 6 * (scale < 1 ? 1 : scale);
#endif
}

LSSDEF void lss_image_text(lss_image *im, int x, int y, const char *s, const unsigned char c[3],
                           int scale) {
    static LSS__TLS float buf[16 * 4 * 1200]; /* 16-byte vertices, up to ~1200 quads */
    char tmp[512];
    int nq, q;
#ifdef LSS_NO_PNG
    (void)im; (void)x; (void)y; (void)s; (void)c; (void)scale; (void)buf; (void)tmp; (void)nq; (void)q;
    return;
#endif
    if (scale < 1) scale = 1;
    snprintf(tmp, sizeof tmp, "%s", s);
    nq = stb_easy_font_print(0, 0, tmp, NULL, buf, (int)sizeof buf);
    for (q = 0; q < nq; q++) {
        const float *v0 = buf + q * 16, *v2 = buf + q * 16 + 8; /* vertices 0 and 2: opposite corners */
        int xa = x + (int)floor(v0[0] * scale + 0.5), ya = y + (int)floor(v0[1] * scale + 0.5);
        int xb = x + (int)floor(v2[0] * scale + 0.5), yb = y + (int)floor(v2[1] * scale + 0.5);
        lss_image_rect(im, xa < xb ? xa : xb, ya < yb ? ya : yb, xa < xb ? xb : xa, ya < yb ? yb : ya, c);
    }
}

/* colour of t in [0, 1] from n anchor colours interpolated linearly; nan: grey g */
static void lss__cmap(const unsigned char (*v)[3], int n, double t, int g, unsigned char c[3]) {
    double f;
    int i, k;
    if (t != t) { c[0] = c[1] = c[2] = (unsigned char)g; return; }
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    f = t * (n - 1);
    i = (int)f;
    if (i > n - 2) i = n - 2;
    f -= i;
    for (k = 0; k < 3; k++) c[k] = (unsigned char)floor(v[i][k] + f * (v[i + 1][k] - v[i][k]) + 0.5);
}

/* viridis, 16 anchor colours interpolated linearly */
LSSDEF void lss_viridis(double t, unsigned char c[3]) {
    static const unsigned char v[16][3] = {
        {68, 1, 84}, {72, 26, 108}, {71, 47, 125}, {65, 68, 135}, {57, 86, 140}, {49, 104, 142},
        {42, 120, 142}, {35, 136, 142}, {31, 152, 139}, {34, 168, 132}, {53, 183, 121},
        {84, 197, 104}, {122, 209, 81}, {165, 219, 54}, {210, 226, 27}, {253, 231, 37}};
    lss__cmap(v, 16, t, 128, c);
}

/* Anti-aliased text: the font's quads filled into a 4 x 4 supersampled coverage mask, box-filtered
 * down and blended over the image. */
static void lss__text_aa(lss_image *im, int x, int y, const char *s, const unsigned char c[3], double size, int vertical) {
#ifndef LSS_NO_PNG
    static LSS__TLS float buf[16 * 4 * 1200];
    char tmp[512];
    const int S = 4;
    int nq, q, W, H, MW, MH, u, v;
    unsigned char *mask;
    if (!im || !im->rgb || !s || !*s || !(size > 0) || size > 64) return;
    snprintf(tmp, sizeof tmp, "%s", s);
    nq = stb_easy_font_print(0, 0, tmp, NULL, buf, (int)sizeof buf);
    W = (int)ceil(stb_easy_font_width(tmp) * size) + 2;
    H = (int)ceil(12 * size) + 2;
    MW = W * S; MH = H * S;
    if (!(mask = (unsigned char *)LSS_MALLOC((size_t)MW * (size_t)MH))) return;
    memset(mask, 0, (size_t)MW * (size_t)MH);
    for (q = 0; q < nq; q++) {
        const float *v0 = buf + q * 16, *v2 = buf + q * 16 + 8;
        int xa = (int)floor(fmin(v0[0], v2[0]) * size * S + 0.5), xb = (int)floor(fmax(v0[0], v2[0]) * size * S + 0.5);
        int ya = (int)floor(fmin(v0[1], v2[1]) * size * S + 0.5), yb = (int)floor(fmax(v0[1], v2[1]) * size * S + 0.5);
        if (xb - xa < S && size >= 1) xb = xa + S; /* strokes at least one pixel wide */
        if (yb - ya < S && size >= 1) yb = ya + S;
        for (v = ya < 0 ? 0 : ya; v < yb && v < MH; v++)
            for (u = xa < 0 ? 0 : xa; u < xb && u < MW; u++) mask[(size_t)v * MW + u] = 1;
    }
    for (v = 0; v < H; v++)
        for (u = 0; u < W; u++) {
            int a = 0, i, j, px, py;
            for (j = 0; j < S; j++)
                for (i = 0; i < S; i++) a += mask[(size_t)(v * S + j) * MW + u * S + i];
            if (!a) continue;
            if (vertical) { px = x + v; py = y - u; }
            else { px = x + u; py = y + v; }
            if (px < 0 || py < 0 || px >= im->w || py >= im->h) continue;
            {
                unsigned char *p = im->rgb + 3 * ((size_t)py * im->w + px);
                double al = (double)a / (S * S);
                int k;
                if (al > 0.999) al = 1;
                for (k = 0; k < 3; k++) p[k] = (unsigned char)floor(p[k] * (1 - al) + c[k] * al + 0.5);
            }
        }
    LSS_FREE(mask);
#else
    (void)im; (void)x; (void)y; (void)s; (void)c; (void)size; (void)vertical;
#endif
}

LSSDEF void lss_image_text_size(lss_image *im, int x, int y, const char *s, const unsigned char c[3], double size) {
    lss__text_aa(im, x, y, s, c, size, 0);
}

LSSDEF void lss_image_text_vertical(lss_image *im, int x, int y, const char *s, const unsigned char c[3], double size) {
    lss__text_aa(im, x, y, s, c, size, 1);
}

LSSDEF int lss_image_text_width_size(const char *s, double size) {
    if (!s) return 0;
#ifndef LSS_NO_PNG
    return (int)ceil((stb_easy_font_width((char *)s) - 1) * size);
#else
    return (int)ceil(strlen(s) * 6 * size);
#endif
}

/* RdBu_r (matplotlib's RdBu reversed): 11 anchor colours interpolated linearly */
LSSDEF void lss_rdbu(double t, unsigned char c[3]) {
    static const unsigned char v[11][3] = {{5, 48, 97}, {33, 102, 172}, {67, 147, 195}, {146, 197, 222}, {209, 229, 240},
                                           {247, 247, 247}, {253, 219, 199}, {244, 165, 130}, {214, 96, 77}, {178, 24, 43},
                                           {103, 0, 31}};
    lss__cmap(v, 11, t, 160, c);
}

LSSDEF void lss_colormap(int cmap, double t, unsigned char c[3]) {
    if (cmap == LSS_CMAP_RDBU) lss_rdbu(t, c);
    else if (cmap == LSS_CMAP_GREYS) {
        if (t != t) { c[0] = 255; c[1] = 200; c[2] = 200; return; }
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        c[0] = c[1] = c[2] = (unsigned char)floor(255 * (1 - t) + 0.5);
    } else lss_viridis(t, c);
}

LSSDEF void lss_image_map_cmap(lss_image *im, int x, int y, const float *map, int h, int w, double vmin, double vmax, int scale,
                               int cmap) {
    int i, j;
    double span = vmax - vmin;
    if (!im || !map) return;
    if (scale < 1) scale = 1;
    if (!(span > 0)) span = 1;
    for (i = 0; i < h; i++)
        for (j = 0; j < w; j++) {
            unsigned char c[3];
            double val = map[(size_t)i * w + j];
            lss_colormap(cmap, isfinite(val) ? (val - vmin) / span : NAN, c);
            lss_image_rect(im, x + j * scale, y + i * scale, x + (j + 1) * scale, y + (i + 1) * scale, c);
        }
}

LSSDEF void lss_image_map(lss_image *im, int x, int y, const float *map, int h, int w, double vmin, double vmax, int scale) {
    lss_image_map_cmap(im, x, y, map, h, w, vmin, vmax, scale, LSS_CMAP_VIRIDIS);
}

LSSDEF void lss_map_range(const float *map, int64_t n, int cmap, double *vmin, double *vmax) {
    double lo = INFINITY, hi = -INFINITY;
    int64_t i;
    if (*vmin != *vmax) return;
    for (i = 0; map && i < n; i++)
        if (isfinite(map[i])) {
            if (map[i] < lo) lo = map[i];
            if (map[i] > hi) hi = map[i];
        }
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (cmap == LSS_CMAP_RDBU) {
        double m = fmax(fabs(lo), fabs(hi));
        lo = m > 0 ? -m : -1;
        hi = m > 0 ? m : 1;
    }
    if (lo == hi) lo -= 0.5, hi += 0.5;
    *vmin = lo;
    *vmax = hi;
}

/* "1e-05" -> "1e-5", "1e+06" -> "1e6" */
static void lss__tidy_exp(char *b) {
    char *e = strchr(b, 'e'), *d;
    if (!e) return;
    d = e + 1;
    if (*d == '+') memmove(d, d + 1, strlen(d + 1) + 1);
    else if (*d == '-') d++;
    while (d[0] == '0' && d[1]) memmove(d, d + 1, strlen(d + 1) + 1);
}

LSSDEF void lss_format_tick(double v, char *buf, size_t n) {
    double a = fabs(v);
    if (v == 0) snprintf(buf, n, "0");
    else if (a >= 1e-3 && a < 1e5) {
        snprintf(buf, n, "%.4g", v);
    } else snprintf(buf, n, "%.2g", v);
    lss__tidy_exp(buf);
}

static double lss__nice_step(double span, int target) {
    double raw = span / (target > 0 ? target : 5), mag, f;
    if (!(raw > 0)) return 1;
    mag = pow(10, floor(log10(raw)));
    f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

/* Tick values of a linear range: multiples of a 1-2-5 step, about `target` of them, at most max. */
static int lss__lin_ticks(double lo, double hi, int target, double *t, int max) {
    double step = lss__nice_step(hi - lo, target), v;
    int n = 0;
    if (!(hi > lo) || !isfinite(lo) || !isfinite(hi)) return 0;
    for (v = ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step && n < max; v += step) t[n++] = fabs(v) < 1e-9 * step ? 0.0 : v;
    return n;
}

/* Tick values of a log10 range [lo, hi] (in log10 units): 1, 2, 5 x 10^k over up to 2.5 decades (all
 * of 1..9 under one), powers of ten beyond (every other one past 8 decades). *minor: 1 when the
 * ticks are decades and the 2..9 x 10^k marks should be drawn unlabelled. Fewer than two in range:
 * linear ticks of the values themselves. Returns the count (values, not logarithms). */
static int lss__log_ticks(double lo, double hi, double *t, int max, int *minor) {
    static const double m1[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, m125[3] = {1, 2, 5};
    const double *m;
    int nm, k, j, n = 0, every = 1;
    double span = hi - lo;
    *minor = 0;
    if (!(span > 0) || !isfinite(lo) || !isfinite(hi)) return 0;
    if (span <= 1) m = m1, nm = 9;
    else if (span <= 2.5) m = m125, nm = 3;
    else {
        m = m1, nm = 1;
        *minor = 1;
        if (span > 8) every = (int)ceil(span / 8);
    }
    for (k = (int)floor(lo) - 1; k <= (int)ceil(hi) + 1 && n < max; k++) {
        if (every > 1 && ((k % every) + every) % every) continue;
        for (j = 0; j < nm && n < max; j++) {
            double v = m[j] * pow(10, k), lv = log10(v);
            if (lv >= lo - 1e-9 && lv <= hi + 1e-9) t[n++] = v;
        }
    }
    if (n >= 2) return n;
    *minor = 0;
    return lss__lin_ticks(pow(10, lo), pow(10, hi), 4, t, max);
}

LSSDEF int lss_image_colorbar_width(int bw, int bh, double vmin, double vmax) {
    double t[32];
    int n = vmax > vmin ? lss__lin_ticks(vmin, vmax, bh >= 200 ? 6 : bh >= 100 ? 4 : 3, t, 32) : 0, i, wmax = 0;
    for (i = 0; i < n; i++) {
        char lab[32];
        int tw;
        lss_format_tick(t[i], lab, sizeof lab);
        tw = lss_image_text_width_size(lab, LSS_FONT_TICK);
        if (tw > wmax) wmax = tw;
    }
    return bw + 4 + 5 + wmax + 2;
}

LSSDEF void lss_image_colorbar_cmap(lss_image *im, int x, int y, int bw, int bh, double vmin, double vmax, int cmap) {
    static const unsigned char black[3] = {0, 0, 0}, frame[3] = {60, 60, 60};
    double t[32];
    int i, n;
    if (!im || bw < 1 || bh < 2) return;
    for (i = 0; i < bh; i++) {
        unsigned char c[3];
        lss_colormap(cmap, 1.0 - (double)i / (bh - 1), c);
        lss_image_rect(im, x, y + i, x + bw, y + i + 1, c);
    }
    /* frame */
    lss_image_rect(im, x - 1, y - 1, x + bw + 1, y, frame);
    lss_image_rect(im, x - 1, y + bh, x + bw + 1, y + bh + 1, frame);
    lss_image_rect(im, x - 1, y - 1, x, y + bh + 1, frame);
    lss_image_rect(im, x + bw, y - 1, x + bw + 1, y + bh + 1, frame);
    if (!(vmax > vmin)) return;
    n = lss__lin_ticks(vmin, vmax, bh >= 200 ? 6 : bh >= 100 ? 4 : 3, t, 32);
    for (i = 0; i < n; i++) {
        char lab[32];
        int yy = y + (int)floor((1.0 - (t[i] - vmin) / (vmax - vmin)) * (bh - 1) + 0.5);
        lss_image_rect(im, x + bw + 1, yy, x + bw + 4, yy + 1, frame); /* the mark: 3 pixels, then a 5-pixel gap */
        lss_format_tick(t[i], lab, sizeof lab);
        lss_image_text_size(im, x + bw + 9, yy - (int)floor(3.5 * LSS_FONT_TICK + 0.5), lab, black, LSS_FONT_TICK);
    }
}

LSSDEF void lss_image_colorbar(lss_image *im, int x, int y, int bw, int bh, double vmin, double vmax) {
    lss_image_colorbar_cmap(im, x, y, bw, bh, vmin, vmax, LSS_CMAP_VIRIDIS);
}

#define LSS__PANEL_TITLE 22 /* pixels above a map panel for its title */
LSSDEF void lss_image_map_panel_size(int h, int w, double vmin, double vmax, int scale, int *pw, int *ph) {
    int bw = 12;
    if (scale < 1) scale = 1;
    if (pw) *pw = w * scale + 8 + lss_image_colorbar_width(bw, h * scale, vmin, vmax);
    if (ph) *ph = LSS__PANEL_TITLE + h * scale + 8;
}

LSSDEF int lss_image_map_panel(lss_image *im, int x, int y, const float *map, int h, int w, double vmin, double vmax, int scale,
                               int cmap, const char *title) {
    static const unsigned char black[3] = {0, 0, 0};
    int pw;
    if (!im || !map || h < 1 || w < 1) return 0;
    if (scale < 1) scale = 1;
    lss_map_range(map, (int64_t)h * w, cmap, &vmin, &vmax);
    if (title) lss_image_text_size(im, x, y + 2, title, black, LSS_FONT_LABEL);
    lss_image_map_cmap(im, x, y + LSS__PANEL_TITLE, map, h, w, vmin, vmax, scale, cmap);
    lss_image_colorbar_cmap(im, x + w * scale + 8, y + LSS__PANEL_TITLE, 12, h * scale, vmin, vmax, cmap);
    lss_image_map_panel_size(h, w, vmin, vmax, scale, &pw, NULL);
    return pw;
}

#ifndef LSS_NO_PNG
static void lss__png_sink(void *ctx, void *data, int size) {
    FILE *f = (FILE *)ctx;
    if (size > 0) fwrite(data, 1, (size_t)size, f);
}

LSSDEF int lss_image_save_png(const lss_image *im, const char *path) {
    lss_wfile w;
    int s;
    if (!im || !im->rgb) return lss_seterr(LSS_ERR_ARG, "empty image");
    if ((s = lss_wfile_open(&w, path)) != 0) return s;
    if (!stbi_write_png_to_func(lss__png_sink, w.f, im->w, im->h, 3, im->rgb, im->w * 3)) {
        lss_wfile_abort(&w);
        return lss_seterr(LSS_ERR_IO, "cannot encode PNG '%s'", path);
    }
    return lss_wfile_commit(&w);
}
#else
LSSDEF int lss_image_save_png(const lss_image *im, const char *path) {
    (void)im; (void)path;
    return lss_seterr(LSS_ERR_UNSUPPORTED, "built with LSS_NO_PNG");
}
#endif

LSSDEF int lss_png_map_cmap(const char *path, const float *map, int h, int w, double vmin, double vmax, const char *title, int scale,
                            int cmap) {
    lss_image im;
    int s, W, H, pw, ph;
    if (!map || h <= 0 || w <= 0 || h > 32768 || w > 32768) return lss_seterr(LSS_ERR_ARG, "bad map for '%s'", path ? path : "(null)");
    if (scale <= 0) scale = w >= 256 ? 1 : (256 + w - 1) / w;
    lss_map_range(map, (int64_t)h * w, cmap, &vmin, &vmax);
    lss_image_map_panel_size(h, w, vmin, vmax, scale, &pw, &ph);
    W = pw + 20;
    if (title && lss_image_text_width_size(title, LSS_FONT_LABEL) + 20 > W) W = lss_image_text_width_size(title, LSS_FONT_LABEL) + 20;
    H = ph + 16;
    if ((s = lss_image_init(&im, W, H)) != 0) return s;
    lss_image_map_panel(&im, 10, 8, map, h, w, vmin, vmax, scale, cmap, title);
    s = lss_image_save_png(&im, path);
    lss_image_free(&im);
    return s;
}

LSSDEF int lss_png_map(const char *path, const float *map, int h, int w, double vmin, double vmax, const char *title, int scale) {
    return lss_png_map_cmap(path, map, h, w, vmin, vmax, title, scale, LSS_CMAP_VIRIDIS);
}

/* tab10, then tab20's lighter shades: 20 distinct colours before they repeat */
LSSDEF void lss_series_color(int i, unsigned char c[3]) {
    static const unsigned char t[20][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189},
                                           {140, 86, 75}, {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207},
                                           {174, 199, 232}, {255, 187, 120}, {152, 223, 138}, {255, 152, 150}, {197, 176, 213},
                                           {196, 156, 148}, {247, 182, 210}, {199, 199, 199}, {219, 219, 141}, {158, 218, 229}};
    int k = ((i % 20) + 20) % 20;
    c[0] = t[k][0]; c[1] = t[k][1]; c[2] = t[k][2];
}


/* Liang-Barsky: clips the segment to [xl, xr] x [yt, yb]; 0 when nothing is left. */
static int lss__clip(double *x0, double *y0, double *x1, double *y1, double xl, double yt, double xr, double yb) {
    double t0 = 0, t1 = 1, dx = *x1 - *x0, dy = *y1 - *y0, p[4], q[4];
    int k;
    p[0] = -dx; q[0] = *x0 - xl; p[1] = dx; q[1] = xr - *x0; p[2] = -dy; q[2] = *y0 - yt; p[3] = dy; q[3] = yb - *y0;
    for (k = 0; k < 4; k++) {
        if (p[k] == 0) { if (q[k] < 0) return 0; continue; }
        {
            double r = q[k] / p[k];
            if (p[k] < 0) { if (r > t1) return 0; if (r > t0) t0 = r; }
            else { if (r < t0) return 0; if (r < t1) t1 = r; }
        }
    }
    *x1 = *x0 + t1 * dx; *y1 = *y0 + t1 * dy;
    *x0 = *x0 + t0 * dx; *y0 = *y0 + t0 * dy;
    return 1;
}

/* A segment, solid or dashed (7 on, 4 off, the pattern carried along a polyline by *phase). */
static void lss__seg(lss_image *im, double x0, double y0, double x1, double y1, const unsigned char c[3], int thick, int dashed,
                     double *phase) {
    double len = sqrt((x1 - x0) * (x1 - x0) + (y1 - y0) * (y1 - y0)), pos = 0;
    if (!dashed) { lss_image_line(im, x0, y0, x1, y1, c, thick); return; }
    if (!(len > 0) || !(len < 1e6)) return;
    while (pos < len) {
        double p = fmod(*phase + pos, 11.0), e;
        if (p < 7) {
            e = fmin(len, pos + 7 - p);
            lss_image_line(im, x0 + (x1 - x0) * pos / len, y0 + (y1 - y0) * pos / len, x0 + (x1 - x0) * e / len, y0 + (y1 - y0) * e / len, c,
                           thick);
        } else e = fmin(len, pos + 11 - p);
        pos = e;
    }
    *phase = fmod(*phase + len, 11.0);
}

static void lss__disc(lss_image *im, double cx, double cy, double r, const unsigned char c[3]) {
    int x, y, x0 = (int)floor(cx - r), x1 = (int)ceil(cx + r), y0 = (int)floor(cy - r), y1 = (int)ceil(cy + r);
    for (y = y0; y <= y1; y++)
        for (x = x0; x <= x1; x++)
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r + 0.25) lss_image_rect(im, x, y, x + 1, y + 1, c);
}


LSSDEF void lss_plot_lines_into(lss_image *im, int x0, int y0, int pw, int ph, const lss_plot_opts *o, int nseries, int n,
                                const double *x, const double *const *y, const char *const *labels) {
    static const unsigned char black[3] = {0, 0, 0}, grid[3] = {232, 232, 232}, frame[3] = {40, 40, 40}, lgb[3] = {205, 205, 205};
    static const unsigned char white[3] = {255, 255, 255};
    const double fs = LSS_FONT_TICK;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY, rlo = INFINITY, rhi = -INFINITY, xt[64], yt[64];
    int s, i, k, lx, ly, lw, lh, nxt, nyt, xminor = 0, yminor = 0, ytw = 0, lgw = 0, lgh = 0, nleg = 0, rowh;
    int logx = o && o->logx, logy = o && o->logy, nskip = n >= 4 && o && o->robust_y ? 1 : 0;
    if (!im || !im->rgb || !x || !y || nseries < 1 || n < 1) return;
#define LSS__TX(v) (logx ? log10(v) : (v))
#define LSS__TY(v) (logy ? log10(v) : (v))
#define LSS__OKX(v) (isfinite(v) && (!logx || (v) > 0))
#define LSS__OKY(v) (isfinite(v) && (!logy || (v) > 0))
    /* ---- the data range (transformed), with bands and error bars; rlo/rhi without the first nskip points */
    for (i = 0; i < n; i++) {
        if (!LSS__OKX(x[i])) continue;
        xlo = fmin(xlo, LSS__TX(x[i]));
        xhi = fmax(xhi, LSS__TX(x[i]));
        for (s = 0; s < nseries; s++) {
            double v[4];
            int nv = 0, q;
            if (y[s]) v[nv++] = y[s][i];
            if (y[s] && o && o->yerr && o->yerr[s] && isfinite(o->yerr[s][i])) v[nv++] = y[s][i] - o->yerr[s][i], v[nv++] = y[s][i] + o->yerr[s][i];
            if (o && o->band_lo && o->band_hi && o->band_lo[s] && o->band_hi[s]) v[nv++] = o->band_lo[s][i], v[nv++] = o->band_hi[s][i];
            for (q = 0; q < nv && q < 4; q++) {
                if (!LSS__OKY(v[q])) continue;
                ylo = fmin(ylo, LSS__TY(v[q]));
                yhi = fmax(yhi, LSS__TY(v[q]));
                if (i >= nskip) rlo = fmin(rlo, LSS__TY(v[q])), rhi = fmax(rhi, LSS__TY(v[q]));
            }
        }
    }
    if (!(xlo <= xhi)) xlo = 0, xhi = 1;
    if (!(ylo <= yhi)) ylo = 0, yhi = 1;
    if (nskip && rlo <= rhi) { /* a spike among the first points: the rest sets the range */
        double sp = fmax(rhi - rlo, 1e-300);
        if (yhi > rhi + 0.5 * sp) yhi = rhi;
        if (ylo < rlo - 0.5 * sp) ylo = rlo;
    }
    if (o && o->ylo < o->yhi && (!logy || o->ylo > 0)) ylo = LSS__TY(o->ylo), yhi = LSS__TY(o->yhi);
    if (xlo == xhi) xlo -= 0.5, xhi += 0.5;
    if (ylo == yhi) ylo -= 0.5, yhi += 0.5;
    {
        double mx = 0.04 * (xhi - xlo), my = 0.05 * (yhi - ylo);
        xlo -= mx; xhi += mx;
        if (!(o && o->ylo < o->yhi)) ylo -= my, yhi += my;
    }
    /* ---- ticks */
    nxt = logx ? lss__log_ticks(xlo, xhi, xt, 64, &xminor) : lss__lin_ticks(xlo, xhi, pw >= 500 ? 7 : 4, xt, 64);
    nyt = logy ? lss__log_ticks(ylo, yhi, yt, 64, &yminor) : lss__lin_ticks(ylo, yhi, ph >= 400 ? 6 : 4, yt, 64);
    for (k = 0; k < nyt; k++) {
        char lab[32];
        lss_format_tick(yt[k], lab, sizeof lab);
        ytw = lss_image_text_width_size(lab, fs) > ytw ? lss_image_text_width_size(lab, fs) : ytw;
    }
    /* ---- the legend's size */
    rowh = (int)ceil(12 * fs);
    for (s = 0; labels && s < nseries; s++)
        if (labels[s]) {
            int tw = lss_image_text_width_size(labels[s], fs);
            if (tw > lgw) lgw = tw;
            nleg++;
        }
    if (nleg) lgw += 8 + 28 + 6 + 8, lgh = nleg * rowh + 10;
    /* ---- layout */
    lx = x0 + 10 + (o && o->ylabel ? (int)ceil(12 * LSS_FONT_LABEL) + 6 : 0) + ytw + 8;
    ly = y0 + (o && o->title ? (int)ceil(12 * LSS_FONT_TITLE) + 12 : 14);
    lw = x0 + pw - lx - (o && o->legend_out && nleg ? lgw + 24 : 20);
    lh = y0 + ph - ly - (int)ceil(9 * fs) - 14 - (o && o->xlabel ? (int)ceil(12 * LSS_FONT_LABEL) + 6 : 0);
    if (lw < 20 || lh < 20) return;
    {
        const double XL = lx, XR = lx + lw, YT = ly, YB = ly + lh;
#define LSS__PX(v) (XL + (LSS__TX(v) - xlo) / (xhi - xlo) * lw)
#define LSS__PY(v) (YB - (LSS__TY(v) - ylo) / (yhi - ylo) * lh)
        /* grid */
        for (k = 0; k < nxt; k++) {
            int px = (int)floor(lx + ((logx ? log10(xt[k]) : xt[k]) - xlo) / (xhi - xlo) * lw + 0.5);
            lss_image_rect(im, px, ly + 1, px + 1, ly + lh, grid);
        }
        for (k = 0; k < nyt; k++) {
            int py = (int)floor(YB - ((logy ? log10(yt[k]) : yt[k]) - ylo) / (yhi - ylo) * lh + 0.5);
            lss_image_rect(im, lx + 1, py, lx + lw, py + 1, grid);
        }
        /* bands */
        for (s = 0; o && o->band_lo && o->band_hi && s < nseries; s++) {
            unsigned char c[3];
            const double *bl = o->band_lo[s], *bh = o->band_hi[s];
            if (!bl || !bh) continue;
            lss_series_color(o->color ? o->color[s] : s, c);
            for (i = 0; i + 1 < n; i++) {
                double pa, pb;
                int px;
                if (!LSS__OKX(x[i]) || !LSS__OKX(x[i + 1]) || !LSS__OKY(bl[i]) || !LSS__OKY(bh[i]) || !LSS__OKY(bl[i + 1]) ||
                    !LSS__OKY(bh[i + 1]))
                    continue;
                pa = LSS__PX(x[i]); pb = LSS__PX(x[i + 1]);
                for (px = (int)ceil(fmin(pa, pb)); px < (int)ceil(fmax(pa, pb)); px++) {
                    double f = pb != pa ? (px + 0.5 - pa) / (pb - pa) : 0, lo, hi;
                    if (px < lx + 1 || px >= lx + lw) continue;
                    lo = LSS__PY(bl[i]) + f * (LSS__PY(bl[i + 1]) - LSS__PY(bl[i]));
                    hi = LSS__PY(bh[i]) + f * (LSS__PY(bh[i + 1]) - LSS__PY(bh[i]));
                    lss__blend_rect(im, px, (int)floor(fmax(fmin(lo, hi), YT + 1) + 0.5), px + 1, (int)floor(fmin(fmax(lo, hi), YB) + 0.5), c, 0.25);
                }
            }
        }
        /* curves, error bars, markers */
        for (s = 0; s < nseries; s++) {
            unsigned char c[3];
            int st = o && o->style ? o->style[s] : LSS_LINE_SOLID, have = 0, mk = o && o->marker && o->marker[s];
            double pxp = 0, pyp = 0, phase = 0;
            if (!y[s]) continue;
            lss_series_color(o && o->color ? o->color[s] : s, c);
            for (i = 0; i < n; i++) {
                double v = y[s][i], px, py;
                if (!LSS__OKX(x[i]) || !LSS__OKY(v)) { have = 0; continue; }
                px = LSS__PX(x[i]); py = LSS__PY(v);
                if (have && st != LSS_LINE_NONE) {
                    double a = pxp, b = pyp, cc = px, d = py;
                    if (lss__clip(&a, &b, &cc, &d, XL, YT, XR, YB)) lss__seg(im, a, b, cc, d, c, 2, st == LSS_LINE_DASHED, &phase);
                }
                pxp = px; pyp = py; have = 1;
            }
            for (i = 0; i < n; i++) {
                double v = y[s][i], px, py;
                if (!LSS__OKX(x[i]) || !LSS__OKY(v)) continue;
                px = LSS__PX(x[i]); py = LSS__PY(v);
                if (o && o->yerr && o->yerr[s] && isfinite(o->yerr[s][i]) && o->yerr[s][i] > 0) {
                    double e = o->yerr[s][i], a = px, b, cc = px, d;
                    b = LSS__OKY(v + e) ? LSS__PY(v + e) : YT;
                    d = LSS__OKY(v - e) ? LSS__PY(v - e) : YB;
                    if (lss__clip(&a, &b, &cc, &d, XL, YT, XR, YB)) {
                        lss_image_line(im, a, b, cc, d, c, 2);
                        if (b > YT) lss_image_rect(im, (int)px - 4, (int)floor(b + 0.5) - 1, (int)px + 5, (int)floor(b + 0.5) + 1, c);
                        if (d < YB) lss_image_rect(im, (int)px - 4, (int)floor(d + 0.5) - 1, (int)px + 5, (int)floor(d + 0.5) + 1, c);
                    }
                }
                if ((mk || st == LSS_LINE_NONE || n == 1) && px >= XL && px <= XR && py >= YT && py <= YB) {
                    lss__disc(im, px, py, 4.5, white);
                    lss__disc(im, px, py, 3.5, c);
                } else if (px >= XL && px <= XR && py >= YT && py <= YB && (i == 0 || !LSS__OKX(x[i - 1]) || !LSS__OKY(y[s][i - 1])) &&
                           (i == n - 1 || !LSS__OKX(x[i + 1]) || !LSS__OKY(y[s][i + 1])))
                    lss__disc(im, px, py, 2.5, c); /* a point without neighbours: a dot, not nothing */
            }
        }
        /* frame, ticks, labels */
        lss_image_rect(im, lx, ly, lx + lw + 1, ly + 1, frame);
        lss_image_rect(im, lx, ly + lh, lx + lw + 1, ly + lh + 1, frame);
        lss_image_rect(im, lx, ly, lx + 1, ly + lh + 1, frame);
        lss_image_rect(im, lx + lw, ly, lx + lw + 1, ly + lh + 1, frame);
        for (k = 0; k < nxt; k++) {
            char lab[32];
            int px = (int)floor(lx + ((logx ? log10(xt[k]) : xt[k]) - xlo) / (xhi - xlo) * lw + 0.5);
            lss_image_rect(im, px, ly + lh + 1, px + 1, ly + lh + 5, frame);
            lss_format_tick(xt[k], lab, sizeof lab);
            lss_image_text_size(im, px - lss_image_text_width_size(lab, fs) / 2, ly + lh + 8, lab, black, fs);
        }
        for (k = 0; k < nyt; k++) {
            char lab[32];
            int py = (int)floor(YB - ((logy ? log10(yt[k]) : yt[k]) - ylo) / (yhi - ylo) * lh + 0.5);
            lss_image_rect(im, lx - 4, py, lx, py + 1, frame);
            lss_format_tick(yt[k], lab, sizeof lab);
            lss_image_text_size(im, lx - 8 - lss_image_text_width_size(lab, fs), py - (int)floor(3.5 * fs + 0.5), lab, black, fs);
        }
        if (xminor || yminor) { /* unlabelled marks at 2..9 x 10^k */
            int kk, j;
            for (kk = -330; kk <= 330; kk++)
                for (j = 2; j <= 9; j++) {
                    double lv = log10(j) + kk;
                    if (xminor && lv > xlo && lv < xhi) {
                        int px = (int)floor(lx + (lv - xlo) / (xhi - xlo) * lw + 0.5);
                        lss_image_rect(im, px, ly + lh + 1, px + 1, ly + lh + 3, frame);
                    }
                    if (yminor && lv > ylo && lv < yhi) {
                        int py = (int)floor(YB - (lv - ylo) / (yhi - ylo) * lh + 0.5);
                        lss_image_rect(im, lx - 2, py, lx, py + 1, frame);
                    }
                }
        }
        if (o && o->title)
            lss_image_text_size(im, lx + lw / 2 - lss_image_text_width_size(o->title, LSS_FONT_TITLE) / 2, y0 + 8, o->title, black, LSS_FONT_TITLE);
        if (o && o->xlabel)
            lss_image_text_size(im, lx + lw / 2 - lss_image_text_width_size(o->xlabel, LSS_FONT_LABEL) / 2, ly + lh + 10 + (int)ceil(9 * fs),
                                o->xlabel, black, LSS_FONT_LABEL);
        if (o && o->ylabel)
            lss_image_text_vertical(im, x0 + 8, ly + lh / 2 + lss_image_text_width_size(o->ylabel, LSS_FONT_LABEL) / 2, o->ylabel, black,
                                    LSS_FONT_LABEL);
        /* legend: outside on the right, or in the corner of the axes with the fewest points under it */
        if (nleg) {
            int bx, by, best = -1, bestn = 0, cnd;
            if (o && o->legend_out) bx = lx + lw + 12, by = ly;
            else {
                for (cnd = 0; cnd < 4; cnd++) {
                    int cx = cnd == 0 || cnd == 3 ? lx + lw - 8 - lgw : lx + 8, cy = cnd < 2 ? ly + 8 : ly + lh - 8 - lgh, cntp = 0;
                    for (s = 0; s < nseries; s++)
                        for (i = 0; y[s] && i < n; i++) {
                            int q;
                            for (q = 0; q < (i + 1 < n ? 8 : 1); q++) {
                                double xa, ya;
                                if (!LSS__OKX(x[i]) || !LSS__OKY(y[s][i])) break;
                                xa = LSS__PX(x[i]); ya = LSS__PY(y[s][i]);
                                if (q > 0) {
                                    if (!LSS__OKX(x[i + 1]) || !LSS__OKY(y[s][i + 1])) break;
                                    xa += (LSS__PX(x[i + 1]) - xa) * q / 8.0;
                                    ya += (LSS__PY(y[s][i + 1]) - ya) * q / 8.0;
                                }
                                if (xa >= cx - 4 && xa <= cx + lgw + 4 && ya >= cy - 4 && ya <= cy + lgh + 4) cntp++;
                            }
                        }
                    if (best < 0 || cntp < bestn) best = cnd, bestn = cntp;
                }
                bx = best == 0 || best == 3 ? lx + lw - 8 - lgw : lx + 8;
                by = best < 2 ? ly + 8 : ly + lh - 8 - lgh;
            }
            lss_image_rect(im, bx, by, bx + lgw, by + lgh, white);
            lss_image_rect(im, bx, by, bx + lgw, by + 1, lgb);
            lss_image_rect(im, bx, by + lgh - 1, bx + lgw, by + lgh, lgb);
            lss_image_rect(im, bx, by, bx + 1, by + lgh, lgb);
            lss_image_rect(im, bx + lgw - 1, by, bx + lgw, by + lgh, lgb);
            for (s = 0, k = 0; s < nseries; s++) {
                unsigned char c[3];
                int st = o && o->style ? o->style[s] : LSS_LINE_SOLID, ry = by + 5 + k * rowh + rowh / 2;
                double ph2 = 0;
                if (!labels[s]) continue;
                lss_series_color(o && o->color ? o->color[s] : s, c);
                if (o && o->band_lo && o->band_hi && o->band_lo[s] && o->band_hi[s]) lss__blend_rect(im, bx + 8, ry - 5, bx + 36, ry + 6, c, 0.25);
                if (st != LSS_LINE_NONE) lss__seg(im, bx + 8, ry, bx + 36, ry, c, 2, st == LSS_LINE_DASHED, &ph2);
                if (o && ((o->marker && o->marker[s]) || st == LSS_LINE_NONE)) { lss__disc(im, bx + 22, ry, 4.5, white); lss__disc(im, bx + 22, ry, 3.5, c); }
                if (o && o->yerr && o->yerr[s]) lss_image_line(im, bx + 22, ry - 6, bx + 22, ry + 6, c, 2);
                lss_image_text_size(im, bx + 42, ry - (int)floor(3.5 * fs + 0.5), labels[s], black, fs);
                k++;
            }
        }
#undef LSS__PX
#undef LSS__PY
    }
#undef LSS__TX
#undef LSS__TY
#undef LSS__OKX
#undef LSS__OKY
}

LSSDEF int lss_plot_lines(const char *path, const lss_plot_opts *o, int nseries, int n,
                          const double *x, const double *const *y, const char *const *labels) {
    lss_image im;
    int s, W = o && o->width > 0 ? o->width : 640, H = o && o->height > 0 ? o->height : 480;
    if (n <= 0 || nseries <= 0 || !x || !y) return lss_seterr(LSS_ERR_ARG, "nothing to plot in '%s'", path);
    if ((s = lss_image_init(&im, W, H)) != 0) return s;
    lss_plot_lines_into(&im, 0, 0, W, H, o, nseries, n, x, y, labels);
    s = lss_image_save_png(&im, path);
    lss_image_free(&im);
    return s;
}

/* ---------------------------------------------------------------- MPI */
#ifdef LSS_MPI
#include <mpi.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#endif
LSSDEF int lss_mpi_init(int *argc, char ***argv) {
#ifdef LSS_MPI
    int on = 0, prov = 0;
    MPI_Initialized(&on);
    if (!on) {
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &prov) != MPI_SUCCESS)
            return lss_seterr(LSS_ERR_STATE, "MPI could not start (MPI_Init_thread failed)");
        lss__mpi_started = 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &lss__mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &lss__mpi_size);
#else
    (void)argc, (void)argv;
#endif
    return LSS_OK;
}
LSSDEF void lss_mpi_finalize(void) {
#ifdef LSS_MPI
    int fin = 0;
    MPI_Finalized(&fin);
    if (lss__mpi_started && !fin) MPI_Finalize();
    lss__mpi_started = 0;
    LSS_FREE(lss__mpi_scratch);
    lss__mpi_scratch = NULL, lss__mpi_scap = 0;
#endif
}
LSSDEF int lss_mpi_rank(void) { return lss__mpi_rank; }
LSSDEF int lss_mpi_size(void) { return lss__mpi_size; }
LSSDEF double lss_mpi_bytes_sent(void) { return lss__mpi_sent; }
LSSDEF void lss_mpi_block(int64_t n, int rank, int size, int64_t *lo, int64_t *hi) {
    int64_t q, r;
    if (size < 1) size = 1;
    if (rank < 0) rank = 0;
    if (rank > size) rank = size;
    if (n < 0) n = 0;
    q = n / size, r = n % size;
    *lo = (int64_t)rank * q + (rank < r ? rank : r);
    *hi = *lo + q + (rank < r ? 1 : 0);
}
LSSDEF int lss_mpi_bcast(void *buf, size_t bytes, int root) {
#ifdef LSS_MPI
    size_t o = 0;
    if (lss__mpi_size <= 1 || bytes == 0) return LSS_OK;
    if (!buf) return lss_seterr(LSS_ERR_ARG, "lss_mpi_bcast: NULL buffer");
    if (root < 0 || root >= lss__mpi_size) return lss_seterr(LSS_ERR_ARG, "lss_mpi_bcast: root %d of %d ranks", root, lss__mpi_size);
    while (o < bytes) { /* in pieces below 2^30 bytes (MPI counts are int) */
        size_t k = bytes - o < ((size_t)1 << 30) ? bytes - o : ((size_t)1 << 30);
        MPI_Bcast((char *)buf + o, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
        o += k;
    }
    if (lss__mpi_rank == root) lss__mpi_sent += (double)bytes * (lss__mpi_size - 1);
#else
    (void)buf, (void)bytes, (void)root;
#endif
    return LSS_OK;
}
LSSDEF int lss_mpi_allgather(void *buf, int64_t n, size_t item) {
    if (n < 0 || (n > 0 && !buf)) return lss_seterr(LSS_ERR_ARG, "lss_mpi_allgather: %lld items, buffer %p", (long long)n, buf);
#ifdef LSS_MPI
    if (lss__mpi_size > 1 && n > 0) {
        int r, s = lss__mpi_size, small = (double)n * (double)item < 1.0e9;
        int64_t lo, hi;
        if (small) { /* one MPI_Allgatherv */
            int *cnt = (int *)LSS_MALLOC(sizeof(int) * 2 * (size_t)s);
            if (!cnt) return lss_seterr(LSS_ERR_NOMEM, "lss_mpi_allgather: out of memory");
            for (r = 0; r < s; r++) {
                lss_mpi_block(n, r, s, &lo, &hi);
                cnt[r] = (int)((hi - lo) * (int64_t)item);
                cnt[s + r] = (int)(lo * (int64_t)item);
            }
            MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, cnt, cnt + s, MPI_BYTE, MPI_COMM_WORLD);
            lss__mpi_sent += (double)cnt[lss__mpi_rank] * (s - 1);
            LSS_FREE(cnt);
        } else /* each rank's block in turn */
            for (r = 0; r < s; r++) {
                lss_mpi_block(n, r, s, &lo, &hi);
                lss_mpi_bcast((char *)buf + (size_t)lo * item, (size_t)(hi - lo) * item, r);
            }
    }
#else
    (void)item;
#endif
    return LSS_OK;
}
LSSDEF int lss_mpi_sum_ordered(const float *mine, int nshard, int64_t n, float *out) {
    int64_t i;
    int k;
    if (nshard < 1 || n < 0 || (n > 0 && (!mine || !out))) return lss_seterr(LSS_ERR_ARG, "lss_mpi_sum_ordered: %d shards of %lld", nshard, (long long)n);
#ifdef LSS_MPI
    if (lss__mpi_size > 1) {
        int R = lss__mpi_size, me = lss__mpi_rank, r;
        int64_t s0, s1, a, b, mylo, myhi, seg, nk;
        int *sc = (int *)LSS_MALLOC(sizeof(int) * 4 * (size_t)R), *sd = sc + R, *rc = sd + R, *rd = rc + R;
        float *sb, *rb;
        lss_mpi_block(nshard, me, R, &s0, &s1);
        lss_mpi_block(n, me, R, &mylo, &myhi);
        seg = myhi - mylo;
        nk = s1 - s0;
        if (!sc) return lss_seterr(LSS_ERR_NOMEM, "lss_mpi_sum_ordered: out of memory");
        if ((double)nk * (double)n > 2.0e9 || (double)nshard * (double)(seg + 1) > 2.0e9) {
            LSS_FREE(sc);
            return lss_seterr(LSS_ERR_ARG, "lss_mpi_sum_ordered: %d shards of %lld floats exceed MPI's int counts", nshard, (long long)n);
        }
        /* buffers kept between calls (fresh pages cost more than the exchange); one shard is sent in place */
        if ((size_t)(nk * n + nshard * seg + 2) > lss__mpi_scap) {
            size_t cap = (size_t)(nk * n + nshard * seg + 2);
            float *nb = (float *)LSS_REALLOC(lss__mpi_scratch, sizeof(float) * cap);
            if (!nb) { LSS_FREE(sc); return lss_seterr(LSS_ERR_NOMEM, "lss_mpi_sum_ordered: out of memory"); }
            lss__mpi_scratch = nb, lss__mpi_scap = cap;
        }
        sb = nk > 1 ? lss__mpi_scratch : (float *)mine;
        rb = lss__mpi_scratch + (nk > 1 ? nk * n + 1 : 0);
        /* to rank r: my shards' elements of its block, shard by shard */
        for (r = 0, i = 0; r < R; r++) {
            int64_t j, q0, q1;
            lss_mpi_block(n, r, R, &a, &b);
            sd[r] = (int)(nk > 1 ? i : a);
            if (nk > 1)
                for (j = 0; j < nk; j++, i += b - a) memcpy(sb + i, mine + j * n + a, sizeof(float) * (size_t)(b - a));
            sc[r] = (int)(nk * (b - a));
            lss_mpi_block(nshard, r, R, &q0, &q1); /* from rank r: its shards' part of my block, in shard order */
            rc[r] = (int)((q1 - q0) * seg);
            rd[r] = (int)(q0 * seg);
        }
        MPI_Alltoallv(sb, sc, sd, MPI_FLOAT, rb, rc, rd, MPI_FLOAT, MPI_COMM_WORLD);
        for (r = 0; r < R; r++) if (r != me) lss__mpi_sent += 4.0 * sc[r];
        for (i = 0; i < seg; i++) {
            float v = rb[i];
            for (k = 1; k < nshard; k++) v += rb[(size_t)k * (size_t)seg + (size_t)i];
            out[mylo + i] = v;
        }
        for (r = 0; r < R; r++) {
            lss_mpi_block(n, r, R, &a, &b);
            rc[r] = (int)(b - a), rd[r] = (int)a;
        }
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, out, rc, rd, MPI_FLOAT, MPI_COMM_WORLD);
        lss__mpi_sent += 4.0 * (double)seg * (R - 1);
        LSS_FREE(sc);
        return LSS_OK;
    }
#endif
    for (i = 0; i < n; i++) {
        float v = mine[i];
        for (k = 1; k < nshard; k++) v += mine[(size_t)k * (size_t)n + (size_t)i];
        out[i] = v;
    }
    return LSS_OK;
}
LSSDEF int lss_mpi_agree(int status, int *rank) {
    int r = -1, first = status;
#ifdef LSS_MPI
    if (lss__mpi_size > 1) {
        int *all = (int *)LSS_MALLOC(sizeof(int) * (size_t)lss__mpi_size), k;
        if (!all) MPI_Abort(MPI_COMM_WORLD, 1); /* cannot agree: stop every rank rather than hang */
        MPI_Allgather(&status, 1, MPI_INT, all, 1, MPI_INT, MPI_COMM_WORLD);
        first = LSS_OK;
        for (k = 0; k < lss__mpi_size && r < 0; k++)
            if (all[k] != LSS_OK) r = k, first = all[k];
        LSS_FREE(all);
        if (rank) *rank = r;
        return first;
    }
#endif
    if (status != LSS_OK) r = 0;
    if (rank) *rank = r;
    return first;
}
static void lss__mpi_after_write(void) {
#ifdef LSS_MPI
#ifdef _OPENMP
    if (omp_in_parallel()) return;
#endif
    if (lss__mpi_size > 1 && !lss__mpi_own) MPI_Barrier(MPI_COMM_WORLD);
#endif
}
LSSDEF void lss_mpi_own_files(int on) { lss__mpi_own = on != 0; }
LSSDEF void lss_mpi_barrier(void) {
#ifdef LSS_MPI
    if (lss__mpi_size > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

#endif /* LSS_CORE_IMPLEMENTATION_DONE */
#endif /* LSS_CORE_IMPLEMENTATION */

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
