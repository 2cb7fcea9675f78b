/* lss_gpu.cu - the CUDA backend of lss: device context, buffers, SGEMM (cuBLAS), convolutions
 * (cuDNN), element-wise kernels and the Adam update with the CPU's rounding, and the DeepLSS noise
 * kernels on the Philox streams of lss_core.h. The API is declared in lss_nn.h (block "GPU API",
 * visible with LSS_CUDA defined). Build: nvcc -O2 -std=c++17 -I. -c lss_gpu.cu; link the program
 * (which defines LSS_CORE_IMPLEMENTATION somewhere) with -lcudnn -lcublas -lcudart.
 *
 * Parity with the CPU. nvcc contracts a * b + c into one fused multiply-add by default; the CPU
 * code is compiled without contraction. The kernels that must match the CPU bit for bit (Adam, the
 * backward products, the noise arithmetic) therefore spell every operation with the round-to-nearest
 * intrinsics (__fmul_rn, __fadd_rn, __dmul_rn, ...), which are never fused. Divisions and square
 * roots are IEEE-rounded (nvcc's defaults without fast math). Transcendentals (expf, logf, tanhf,
 * log1pf; log, sin, cos in double) are CUDA's, within 1-2 ulp of glibc's. */
/* The object is C++: programs that link it also link libstdc++ (the Makefile adds -lstdc++). */
#ifndef LSS_CUDA
#define LSS_CUDA
#endif
#include "lss_nn.h"
#include "lss_maps.h" /* declarations of the map-domain kernels (lss_gpu_shape_noise, ...) */

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- error checking */
#define LSS__CU(call)                                                                                   \
    do {                                                                                                \
        cudaError_t lss__e = (call);                                                                    \
        if (lss__e != cudaSuccess)                                                                      \
            return lss_seterr(LSS_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cudaGetErrorString(lss__e), \
                              __FILE__, __LINE__);                                                      \
    } while (0)
#define LSS__CUBLAS(call)                                                                               \
    do {                                                                                                \
        cublasStatus_t lss__e = (call);                                                                 \
        if (lss__e != CUBLAS_STATUS_SUCCESS)                                                            \
            return lss_seterr(LSS_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cublasGetStatusString(lss__e), \
                              __FILE__, __LINE__);                                                      \
    } while (0)
#define LSS__CUDNN(call)                                                                                \
    do {                                                                                                \
        cudnnStatus_t lss__e = (call);                                                                  \
        if (lss__e != CUDNN_STATUS_SUCCESS)                                                             \
            return lss_seterr(LSS_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cudnnGetErrorString(lss__e), \
                              __FILE__, __LINE__);                                                      \
    } while (0)
/* After every kernel launch: launch-configuration errors are reported here, faults at the next
 * synchronising call. */
#define LSS__LAUNCHED(name)                                                                             \
    do {                                                                                                \
        cudaError_t lss__e = cudaGetLastError();                                                        \
        if (lss__e != cudaSuccess)                                                                      \
            return lss_seterr(LSS_ERR_CUDA, "kernel %s failed to launch: %s (%s:%d)", name,              \
                              cudaGetErrorString(lss__e), __FILE__, __LINE__);                          \
    } while (0)

/* ---------------------------------------------------------------- context */
enum { LSS__CONV_MAXALGO = 16 };

typedef struct {
    lss_gpu_conv_shape s;
    int tf32;
    cudnnTensorDescriptor_t xd, yd, bd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int have_fwd, have_bwdd, have_bwdf;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwdd;
    cudnnConvolutionBwdFilterAlgo_t bwdf;
    size_t ws_fwd, ws_bwdd, ws_bwdf;
    cudnnMathType_t m_fwd, m_bwdd, m_bwdf;   /* math type each chosen algorithm runs with */
} lss__conv_entry;

struct lss_gpu {
    int device;
    int tf32;
    cudaStream_t stream;
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    void *ws;                 /* cuDNN workspace, grown on demand */
    size_t ws_size;
    void *scratch;            /* small device buffer for per-call tables */
    size_t scratch_size;
    lss__conv_entry *conv;    /* algorithm cache, one entry per (shape, math) */
    int nconv, capconv;
    char name[256];
};

static int lss__use(const lss_gpu *ctx, const char *fn) {
    if (!ctx) return lss_seterr(LSS_ERR_ARG, "%s: NULL GPU context", fn);
    LSS__CU(cudaSetDevice(ctx->device));
    return LSS_OK;
}

/* True for the errors that mean "no usable CUDA driver or device" rather than a failure. */
static int lss__no_device_error(cudaError_t e) {
    return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInitializationError ||
           e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice ||
           e == cudaErrorDevicesUnavailable || e == cudaErrorSystemNotReady || e == cudaErrorNotSupported;
}

extern "C" int lss_gpu_device_count(int *n) {
    int c = 0;
    cudaError_t e;
    if (!n) return lss_seterr(LSS_ERR_ARG, "lss_gpu_device_count: NULL argument");
    *n = 0;
    e = cudaGetDeviceCount(&c);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (lss__no_device_error(e)) return LSS_OK;
        return lss_seterr(LSS_ERR_CUDA, "cudaGetDeviceCount failed: %s (%s:%d)", cudaGetErrorString(e), __FILE__,
                          __LINE__);
    }
    *n = c;
    return LSS_OK;
}

static void lss__conv_entry_free(lss__conv_entry *c) {
    if (c->xd) cudnnDestroyTensorDescriptor(c->xd);
    if (c->yd) cudnnDestroyTensorDescriptor(c->yd);
    if (c->bd) cudnnDestroyTensorDescriptor(c->bd);
    if (c->wd) cudnnDestroyFilterDescriptor(c->wd);
    if (c->cd) cudnnDestroyConvolutionDescriptor(c->cd);
    memset(c, 0, sizeof *c);
}

extern "C" void lss_gpu_free(lss_gpu *ctx) {
    int i;
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    for (i = 0; i < ctx->nconv; i++) lss__conv_entry_free(&ctx->conv[i]);
    LSS_FREE(ctx->conv);
    if (ctx->ws) cudaFree(ctx->ws);
    if (ctx->scratch) cudaFree(ctx->scratch);
    if (ctx->dnn) cudnnDestroy(ctx->dnn);
    if (ctx->blas) cublasDestroy(ctx->blas);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    LSS_FREE(ctx);
}

static int lss__init_handles(lss_gpu *g) {
    cudaDeviceProp prop;
    LSS__CU(cudaSetDevice(g->device));
    LSS__CU(cudaGetDeviceProperties(&prop, g->device));
    memcpy(g->name, prop.name, sizeof g->name < sizeof prop.name ? sizeof g->name : sizeof prop.name);
    g->name[sizeof g->name - 1] = 0;
    LSS__CU(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    LSS__CUBLAS(cublasCreate(&g->blas));
    LSS__CUBLAS(cublasSetStream(g->blas, g->stream));
    LSS__CUBLAS(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH));
    LSS__CUBLAS(cublasSetPointerMode(g->blas, CUBLAS_POINTER_MODE_HOST));
    LSS__CUDNN(cudnnCreate(&g->dnn));
    LSS__CUDNN(cudnnSetStream(g->dnn, g->stream));
    return LSS_OK;
}

extern "C" int lss_gpu_init(int device, lss_gpu **ctx) {
    int n, st;
    lss_gpu *g;
    if (!ctx) return lss_seterr(LSS_ERR_ARG, "lss_gpu_init: NULL argument");
    *ctx = NULL;
    if ((st = lss_gpu_device_count(&n)) != LSS_OK) return st;
    if (n == 0) {
        cudaError_t e = cudaGetDeviceCount(&n);
        (void)cudaGetLastError();
        return lss_seterr(LSS_ERR_UNSUPPORTED, "lss_gpu_init: no CUDA device (cudaGetDeviceCount: %s)",
                          e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    }
    if (device < 0 || device >= n)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_init: device %d out of range (%d device%s)", device, n, n == 1 ? "" : "s");
    g = (lss_gpu *)LSS_MALLOC(sizeof *g);
    if (g) memset(g, 0, sizeof *g);
    if (!g) return lss_seterr(LSS_ERR_NOMEM, "lss_gpu_init: out of memory");
    g->device = device;
    if ((st = lss__init_handles(g)) != LSS_OK) {
        lss_gpu_free(g);
        return st;
    }
    *ctx = g;
    return LSS_OK;
}

extern "C" int lss_gpu_name(const lss_gpu *ctx, char *buf, size_t n) {
    size_t k;
    if (!ctx || !buf || n == 0) return lss_seterr(LSS_ERR_ARG, "lss_gpu_name: NULL argument or empty buffer");
    k = strlen(ctx->name);
    if (k > n - 1) k = n - 1;
    memcpy(buf, ctx->name, k);
    buf[k] = 0;
    return LSS_OK;
}

extern "C" int lss_gpu_set_tf32(lss_gpu *ctx, int on) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_set_tf32")) != LSS_OK) return st;
    LSS__CUBLAS(cublasSetMathMode(ctx->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    ctx->tf32 = on ? 1 : 0;
    return LSS_OK;
}

extern "C" int lss_gpu_sync(lss_gpu *ctx) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_sync")) != LSS_OK) return st;
    LSS__CU(cudaStreamSynchronize(ctx->stream));
    return LSS_OK;
}

/* ---------------------------------------------------------------- buffers */
extern "C" int lss_gpu_alloc(lss_gpu *ctx, size_t bytes, void **dptr) {
    int st;
    if (!dptr) return lss_seterr(LSS_ERR_ARG, "lss_gpu_alloc: NULL argument");
    *dptr = NULL;
    if ((st = lss__use(ctx, "lss_gpu_alloc")) != LSS_OK) return st;
    if (bytes == 0) bytes = 1;
    {
        cudaError_t e = cudaMalloc(dptr, bytes);
        if (e != cudaSuccess) {
            *dptr = NULL;
            (void)cudaGetLastError();
            return lss_seterr(e == cudaErrorMemoryAllocation ? LSS_ERR_NOMEM : LSS_ERR_CUDA,
                              "cudaMalloc(%zu bytes) failed: %s (%s:%d)", bytes, cudaGetErrorString(e), __FILE__,
                              __LINE__);
        }
    }
    return LSS_OK;
}

extern "C" int lss_gpu_allocf(lss_gpu *ctx, int64_t n, float **dptr) {
    void *p = NULL;
    int st;
    if (!dptr) return lss_seterr(LSS_ERR_ARG, "lss_gpu_allocf: NULL argument");
    *dptr = NULL;
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_allocf: bad size %lld", (long long)n);
    if ((st = lss_gpu_alloc(ctx, (size_t)n * sizeof(float), &p)) != LSS_OK) return st;
    *dptr = (float *)p;
    return LSS_OK;
}

extern "C" void lss_gpu_dealloc(lss_gpu *ctx, void *dptr) {
    if (!ctx || !dptr) return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    cudaFree(dptr);
}

extern "C" int lss_gpu_upload(lss_gpu *ctx, void *dst, const void *host_src, size_t bytes) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_upload")) != LSS_OK) return st;
    if (bytes == 0) return LSS_OK;
    if (!dst || !host_src) return lss_seterr(LSS_ERR_ARG, "lss_gpu_upload: NULL pointer");
    LSS__CU(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    LSS__CU(cudaStreamSynchronize(ctx->stream));
    return LSS_OK;
}

extern "C" int lss_gpu_download(lss_gpu *ctx, void *host_dst, const void *src, size_t bytes) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_download")) != LSS_OK) return st;
    if (bytes == 0) return LSS_OK;
    if (!host_dst || !src) return lss_seterr(LSS_ERR_ARG, "lss_gpu_download: NULL pointer");
    LSS__CU(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    LSS__CU(cudaStreamSynchronize(ctx->stream));
    return LSS_OK;
}

static int lss__fbytes(int64_t n, size_t *bytes, const char *fn) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return lss_seterr(LSS_ERR_ARG, "%s: bad element count %lld", fn, (long long)n);
    *bytes = (size_t)n * sizeof(float);
    return LSS_OK;
}

extern "C" int lss_gpu_uploadf(lss_gpu *ctx, float *dst, const float *host_src, int64_t n) {
    size_t b = 0;
    int st;
    if ((st = lss__fbytes(n, &b, "lss_gpu_uploadf")) != LSS_OK) return st;
    return lss_gpu_upload(ctx, dst, host_src, b);
}

extern "C" int lss_gpu_downloadf(lss_gpu *ctx, float *host_dst, const float *src, int64_t n) {
    size_t b = 0;
    int st;
    if ((st = lss__fbytes(n, &b, "lss_gpu_downloadf")) != LSS_OK) return st;
    return lss_gpu_download(ctx, host_dst, src, b);
}

extern "C" int lss_gpu_memset(lss_gpu *ctx, void *dptr, int byte, size_t bytes) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_memset")) != LSS_OK) return st;
    if (bytes == 0) return LSS_OK;
    if (!dptr) return lss_seterr(LSS_ERR_ARG, "lss_gpu_memset: NULL pointer");
    LSS__CU(cudaMemsetAsync(dptr, byte, bytes, ctx->stream));
    return LSS_OK;
}

extern "C" int lss_gpu_zerof(lss_gpu *ctx, float *dptr, int64_t n) {
    size_t b = 0;
    int st;
    if ((st = lss__fbytes(n, &b, "lss_gpu_zerof")) != LSS_OK) return st;
    return lss_gpu_memset(ctx, dptr, 0, b);
}

/* Grows the context's workspace to at least `bytes` (waits for queued work before freeing). */
static int lss__workspace(lss_gpu *ctx, size_t bytes) {
    if (bytes <= ctx->ws_size) return LSS_OK;
    if (ctx->ws) {
        LSS__CU(cudaStreamSynchronize(ctx->stream));
        LSS__CU(cudaFree(ctx->ws));
        ctx->ws = NULL;
        ctx->ws_size = 0;
    }
    LSS__CU(cudaMalloc(&ctx->ws, bytes));
    ctx->ws_size = bytes;
    return LSS_OK;
}

static int lss__scratch(lss_gpu *ctx, size_t bytes) {
    if (bytes <= ctx->scratch_size) return LSS_OK;
    if (ctx->scratch) {
        LSS__CU(cudaStreamSynchronize(ctx->stream));
        LSS__CU(cudaFree(ctx->scratch));
        ctx->scratch = NULL;
        ctx->scratch_size = 0;
    }
    LSS__CU(cudaMalloc(&ctx->scratch, bytes));
    ctx->scratch_size = bytes;
    return LSS_OK;
}

/* ---------------------------------------------------------------- SGEMM */
extern "C" int lss_gpu_sgemm(lss_gpu *ctx, int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                             int64_t ldc) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_sgemm")) != LSS_OK) return st;
    if (M < 0 || N < 0 || K < 0 || !C || (K > 0 && (!A || !B)))
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_sgemm: bad arguments (M %lld N %lld K %lld)", (long long)M,
                          (long long)N, (long long)K);
    if (ldc < N || (K > 0 && ((!transa && lda < K) || (transa && lda < M) || (!transb && ldb < N) ||
                              (transb && ldb < K))))
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_sgemm: leading dimension too small");
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_sgemm: a size exceeds INT_MAX (M %lld N %lld K %lld)",
                          (long long)M, (long long)N, (long long)K);
    if (M == 0 || N == 0) return LSS_OK;
    {
        /* Row-major C (M x N) is column-major C^T (N x M) = op(B)^T op(A)^T: swap the operands. cuBLAS
         * checks leading dimensions even when K = 0 (operands unused): raise them to its minimum then. */
        int m = (int)N, n = (int)M, k = (int)K;
        int64_t la = lda, lb = ldb, lc = ldc, mina = transa ? n : k, minb = transb ? k : m;
        cublasOperation_t opb = transb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = transa ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasComputeType_t ct = ctx->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        if (la < mina) la = mina;
        if (la < 1) la = 1;
        if (lb < minb) lb = minb;
        if (lb < 1) lb = 1;
        if (lc < 1) lc = 1;
        LSS__CUBLAS(cublasGemmEx(ctx->blas, opb, opa, m, n, k, &alpha, B, CUDA_R_32F, (int)lb, A, CUDA_R_32F, (int)la, &beta, C,
                                 CUDA_R_32F, (int)lc, ct, CUBLAS_GEMM_DEFAULT));
    }
    return LSS_OK;
}

/* ---------------------------------------------------------------- convolutions (cuDNN) */
extern "C" int lss_gpu_conv2d_outsize(const lss_gpu_conv_shape *s, int *ho, int *wo) {
    int64_t h, w;
    if (!s) return lss_seterr(LSS_ERR_ARG, "lss_gpu_conv2d: NULL shape");
    if (s->n < 1 || s->cin < 1 || s->h < 1 || s->w < 1 || s->cout < 1 || s->kh < 1 || s->kw < 1)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_conv2d: sizes must be >= 1 (x [%d,%d,%d,%d], w [%d,%d,%d,%d])", s->n,
                          s->cin, s->h, s->w, s->cout, s->cin, s->kh, s->kw);
    if (s->stride < 1 || s->pad < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_conv2d: stride must be >= 1 and padding >= 0 (got %d, %d)", s->stride,
                          s->pad);
    if ((int64_t)s->h + 2 * (int64_t)s->pad < s->kh || (int64_t)s->w + 2 * (int64_t)s->pad < s->kw)
        return lss_seterr(LSS_ERR_SHAPE, "lss_gpu_conv2d: input %dx%d (padding %d) smaller than the kernel %dx%d",
                          s->h, s->w, s->pad, s->kh, s->kw);
    h = ((int64_t)s->h + 2 * (int64_t)s->pad - s->kh) / s->stride + 1;
    w = ((int64_t)s->w + 2 * (int64_t)s->pad - s->kw) / s->stride + 1;
    if (h > INT_MAX || w > INT_MAX) return lss_seterr(LSS_ERR_ARG, "lss_gpu_conv2d: output too large");
    if (ho) *ho = (int)h;
    if (wo) *wo = (int)w;
    return LSS_OK;
}

static int lss__conv_entry_init(lss_gpu *ctx, lss__conv_entry *c, const lss_gpu_conv_shape *s, int ho, int wo) {
    memset(c, 0, sizeof *c);
    c->s = *s;
    c->tf32 = ctx->tf32;
    LSS__CUDNN(cudnnCreateTensorDescriptor(&c->xd));
    LSS__CUDNN(cudnnCreateTensorDescriptor(&c->yd));
    LSS__CUDNN(cudnnCreateTensorDescriptor(&c->bd));
    LSS__CUDNN(cudnnCreateFilterDescriptor(&c->wd));
    LSS__CUDNN(cudnnCreateConvolutionDescriptor(&c->cd));
    LSS__CUDNN(cudnnSetTensor4dDescriptor(c->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->n, s->cin, s->h, s->w));
    LSS__CUDNN(cudnnSetTensor4dDescriptor(c->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->n, s->cout, ho, wo));
    LSS__CUDNN(cudnnSetTensor4dDescriptor(c->bd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, s->cout, 1, 1));
    LSS__CUDNN(cudnnSetFilter4dDescriptor(c->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s->cout, s->cin, s->kh, s->kw));
    LSS__CUDNN(cudnnSetConvolution2dDescriptor(c->cd, s->pad, s->pad, s->stride, s->stride, 1, 1,
                                               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    LSS__CUDNN(cudnnSetConvolutionMathType(
        c->cd, ctx->tf32 ? CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION : CUDNN_FMA_MATH));
    {   /* cuDNN must agree on the output size */
        int n, ch, h, w;
        LSS__CUDNN(cudnnGetConvolution2dForwardOutputDim(c->cd, c->xd, c->wd, &n, &ch, &h, &w));
        if (n != s->n || ch != s->cout || h != ho || w != wo)
            return lss_seterr(LSS_ERR_CUDA, "cuDNN output size [%d,%d,%d,%d] differs from [%d,%d,%d,%d]", n, ch, h, w,
                              s->n, s->cout, ho, wo);
    }
    return LSS_OK;
}

/* The cached descriptors of a shape (created on first use). */
static int lss__conv_get(lss_gpu *ctx, const lss_gpu_conv_shape *s, lss__conv_entry **out) {
    int i, ho, wo, st;
    lss__conv_entry *c;
    if ((st = lss_gpu_conv2d_outsize(s, &ho, &wo)) != LSS_OK) return st;
    for (i = 0; i < ctx->nconv; i++) {
        c = &ctx->conv[i];
        if (c->tf32 == ctx->tf32 && !memcmp(&c->s, s, sizeof *s)) { *out = c; return LSS_OK; }
    }
    if (ctx->nconv == ctx->capconv) {
        int nc = ctx->capconv ? 2 * ctx->capconv : 16;
        lss__conv_entry *p = (lss__conv_entry *)LSS_REALLOC(ctx->conv, (size_t)nc * sizeof *p);
        if (!p) return lss_seterr(LSS_ERR_NOMEM, "lss_gpu_conv2d: out of memory for the algorithm cache");
        ctx->conv = p;
        ctx->capconv = nc;
    }
    c = &ctx->conv[ctx->nconv];
    if ((st = lss__conv_entry_init(ctx, c, s, ho, wo)) != LSS_OK) {
        lss__conv_entry_free(c);
        return st;
    }
    ctx->nconv++;
    *out = c;
    return LSS_OK;
}

/* The math type algorithms are searched under: strict fp32 or TF32 allowed. */
static cudnnMathType_t lss__base_math(const lss__conv_entry *c) {
    return c->tf32 ? CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION : CUDNN_FMA_MATH;
}

/* Picks among cuDNN's heuristic ranking (best first) the first algorithm that works, is
 * deterministic, needs at most LSS__WS_MAX bytes of workspace and runs with the requested math:
 * in strict mode only CUDNN_FMA_MATH (CUDNN_DEFAULT_MATH may use TF32 on Ampere and later); with
 * TF32 the first deterministic one of any math type. */
#define LSS__WS_MAX ((size_t)2 << 30)
#define LSS__PICK(perf, nret, out_algo, out_mem, out_math, what)                                         \
    do {                                                                                                \
        int lss__i, lss__k = -1;                                                                        \
        for (lss__i = 0; lss__i < (nret) && lss__k < 0; lss__i++)                                       \
            if ((perf)[lss__i].status == CUDNN_STATUS_SUCCESS &&                                        \
                (perf)[lss__i].determinism == CUDNN_DETERMINISTIC && (perf)[lss__i].memory <= LSS__WS_MAX && \
                (c->tf32 || (perf)[lss__i].mathType == CUDNN_FMA_MATH))                                 \
                lss__k = lss__i;                                                                        \
        if (lss__k < 0)                                                                                 \
            return lss_seterr(LSS_ERR_CUDA, "cuDNN offers no deterministic %s%s algorithm for x [%d,%d,%d,%d], " \
                              "w [%d,%d,%d,%d], stride %d, pad %d (%s:%d)", c->tf32 ? "" : "fp32 (FMA) ", what, \
                              c->s.n, c->s.cin, c->s.h, c->s.w, c->s.cout, c->s.cin, c->s.kh, c->s.kw,  \
                              c->s.stride, c->s.pad, __FILE__, __LINE__);                               \
        (out_algo) = (perf)[lss__k].algo;                                                               \
        (out_mem) = (perf)[lss__k].memory;                                                              \
        (out_math) = (perf)[lss__k].mathType;                                                           \
    } while (0)

static int lss__conv_check(lss_gpu *ctx, const lss_gpu_conv_shape *s, const void *p1, const void *p2,
                           const void *p3, const char *fn, lss__conv_entry **c) {
    int st;
    if ((st = lss__use(ctx, fn)) != LSS_OK) return st;
    if (!p1 || !p2 || !p3) return lss_seterr(LSS_ERR_ARG, "%s: NULL buffer", fn);
    return lss__conv_get(ctx, s, c);
}

extern "C" int lss_gpu_conv2d_forward(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *x, const float *w,
                                      const float *b, float *y) {
    lss__conv_entry *c;
    int st;
    float one = 1.0f, zero = 0.0f;
    if ((st = lss__conv_check(ctx, s, x, w, y, "lss_gpu_conv2d_forward", &c)) != LSS_OK) return st;
    if (!c->have_fwd) {
        cudnnConvolutionFwdAlgoPerf_t perf[LSS__CONV_MAXALGO];
        int nret = 0;
        LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, lss__base_math(c)));
        LSS__CUDNN(cudnnGetConvolutionForwardAlgorithm_v7(ctx->dnn, c->xd, c->wd, c->cd, c->yd, LSS__CONV_MAXALGO,
                                                          &nret, perf));
        LSS__PICK(perf, nret, c->fwd, c->ws_fwd, c->m_fwd, "forward");
        c->have_fwd = 1;
    }
    if ((st = lss__workspace(ctx, c->ws_fwd)) != LSS_OK) return st;
    LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, c->m_fwd));
    LSS__CUDNN(cudnnConvolutionForward(ctx->dnn, &one, c->xd, x, c->wd, w, c->cd, c->fwd, ctx->ws, c->ws_fwd, &zero,
                                       c->yd, y));
    if (b) LSS__CUDNN(cudnnAddTensor(ctx->dnn, &one, c->bd, b, &one, c->yd, y));
    return LSS_OK;
}

extern "C" int lss_gpu_conv2d_backward_data(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *dy,
                                            const float *w, float *dx) {
    lss__conv_entry *c;
    int st;
    float one = 1.0f;
    if ((st = lss__conv_check(ctx, s, dy, w, dx, "lss_gpu_conv2d_backward_data", &c)) != LSS_OK) return st;
    if (!c->have_bwdd) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[LSS__CONV_MAXALGO];
        int nret = 0;
        LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, lss__base_math(c)));
        LSS__CUDNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx->dnn, c->wd, c->yd, c->cd, c->xd,
                                                               LSS__CONV_MAXALGO, &nret, perf));
        LSS__PICK(perf, nret, c->bwdd, c->ws_bwdd, c->m_bwdd, "backward-data");
        c->have_bwdd = 1;
    }
    if ((st = lss__workspace(ctx, c->ws_bwdd)) != LSS_OK) return st;
    LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, c->m_bwdd));
    LSS__CUDNN(cudnnConvolutionBackwardData(ctx->dnn, &one, c->wd, w, c->yd, dy, c->cd, c->bwdd, ctx->ws,
                                            c->ws_bwdd, &one, c->xd, dx));
    return LSS_OK;
}

extern "C" int lss_gpu_conv2d_backward_filter(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *x,
                                              const float *dy, float *dw, float *db) {
    lss__conv_entry *c;
    int st;
    float one = 1.0f;
    if ((st = lss__conv_check(ctx, s, x, dy, dw, "lss_gpu_conv2d_backward_filter", &c)) != LSS_OK) return st;
    if (!c->have_bwdf) {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[LSS__CONV_MAXALGO];
        int nret = 0;
        LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, lss__base_math(c)));
        LSS__CUDNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx->dnn, c->xd, c->yd, c->cd, c->wd,
                                                                 LSS__CONV_MAXALGO, &nret, perf));
        LSS__PICK(perf, nret, c->bwdf, c->ws_bwdf, c->m_bwdf, "backward-filter");
        c->have_bwdf = 1;
    }
    if ((st = lss__workspace(ctx, c->ws_bwdf)) != LSS_OK) return st;
    LSS__CUDNN(cudnnSetConvolutionMathType(c->cd, c->m_bwdf));
    LSS__CUDNN(cudnnConvolutionBackwardFilter(ctx->dnn, &one, c->xd, x, c->yd, dy, c->cd, c->bwdf, ctx->ws,
                                              c->ws_bwdf, &one, c->wd, dw));
    if (db) LSS__CUDNN(cudnnConvolutionBackwardBias(ctx->dnn, &one, c->yd, dy, &one, c->bd, db));
    return LSS_OK;
}

/* ---------------------------------------------------------------- launch geometry */
enum { LSS__TPB = 256 };

static unsigned lss__blocks(int64_t n) {
    int64_t b = (n + LSS__TPB - 1) / LSS__TPB;
    if (b < 1) b = 1;
    if (b > 65536) b = 65536; /* the kernels stride over the rest */
    return (unsigned)b;
}

#define LSS__GRID_LOOP(i, n)                                                                            \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------------- element-wise kernels */
__device__ static float lss__d_softplusf(float x) { return x > 20.0f ? x : x < -20.0f ? expf(x) : log1pf(expf(x)); }
__device__ static float lss__d_sigmoidf(float x) {
    if (x >= 0) return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
    float e = expf(x);
    return __fdiv_rn(e, __fadd_rn(1.0f, e));
}

__global__ static void lss__k_unary(int op, float p, const float *a, float *o, int64_t n) { /* o may be a */
    LSS__GRID_LOOP(k, n) {
        float v = a[k], r;
        switch (op) {
        case LSS_GPU_SCALE: r = __fmul_rn(p, v); break;
        case LSS_GPU_ADDS: r = __fadd_rn(v, p); break;
        case LSS_GPU_RELU: r = v > 0 ? v : 0.0f; break;
        case LSS_GPU_LEAKY: r = v > 0 ? v : __fmul_rn(p, v); break;
        case LSS_GPU_SOFTPLUS: r = lss__d_softplusf(v); break;
        case LSS_GPU_TANH: r = tanhf(v); break;
        case LSS_GPU_SIGMOID: r = lss__d_sigmoidf(v); break;
        case LSS_GPU_EXP: r = expf(v); break;
        default: r = logf(v); break;
        }
        o[k] = r;
    }
}

/* gx += go * op'(.) with the CPU's operation order and rounding */
__global__ static void lss__k_unary_bwd(int op, float p, const float *__restrict__ a, const float *__restrict__ o,
                                        const float *__restrict__ go, float *__restrict__ gx, int64_t n) {
    LSS__GRID_LOOP(k, n) {
        float g = go[k], d;
        switch (op) {
        case LSS_GPU_SCALE: d = __fmul_rn(p, g); break;
        case LSS_GPU_ADDS: d = g; break;
        case LSS_GPU_RELU: d = a[k] > 0 ? g : 0.0f; break;
        case LSS_GPU_LEAKY: d = a[k] > 0 ? g : __fmul_rn(p, g); break;
        case LSS_GPU_SOFTPLUS: d = __fmul_rn(g, lss__d_sigmoidf(a[k])); break;
        case LSS_GPU_TANH: d = __fmul_rn(g, __fsub_rn(1.0f, __fmul_rn(o[k], o[k]))); break;
        case LSS_GPU_SIGMOID: d = __fmul_rn(__fmul_rn(g, o[k]), __fsub_rn(1.0f, o[k])); break;
        case LSS_GPU_EXP: d = __fmul_rn(g, o[k]); break;
        default: d = __fdiv_rn(g, a[k]); break;
        }
        gx[k] = __fadd_rn(gx[k], d);
    }
}

__global__ static void lss__k_binary(int op, const float *a, const float *b, float *y, int64_t n) {
    LSS__GRID_LOOP(k, n) {
        float u = a[k], v = b[k];
        y[k] = op == LSS_GPU_MUL ? __fmul_rn(u, v) : op == LSS_GPU_SUB ? __fsub_rn(u, v) : __fadd_rn(u, v);
    }
}

/* ga and gb may be the same buffer (x * x): no __restrict__, ga is updated before gb is read */
__global__ static void lss__k_binary_bwd(int op, const float *a, const float *b, const float *go, float *ga, float *gb,
                                         int64_t n) {
    LSS__GRID_LOOP(k, n) {
        float g = go[k];
        if (ga) ga[k] = __fadd_rn(ga[k], op == LSS_GPU_MUL ? __fmul_rn(g, b[k]) : g);
        if (gb) {
            if (op == LSS_GPU_MUL) gb[k] = __fadd_rn(gb[k], __fmul_rn(g, a[k]));
            else if (op == LSS_GPU_SUB) gb[k] = __fsub_rn(gb[k], g);
            else gb[k] = __fadd_rn(gb[k], g);
        }
    }
}

static int lss__check_n(lss_gpu *ctx, int64_t n, const char *fn) {
    int st;
    if ((st = lss__use(ctx, fn)) != LSS_OK) return st;
    if (n < 0) return lss_seterr(LSS_ERR_ARG, "%s: negative element count %lld", fn, (long long)n);
    return LSS_OK;
}

extern "C" int lss_gpu_unary(lss_gpu *ctx, lss_gpu_unop op, float p, const float *x, float *y, int64_t n) {
    int st;
    if ((st = lss__check_n(ctx, n, "lss_gpu_unary")) != LSS_OK) return st;
    if ((int)op < LSS_GPU_RELU || (int)op > LSS_GPU_ADDS) return lss_seterr(LSS_ERR_ARG, "lss_gpu_unary: unknown operation %d", (int)op);
    if (n == 0) return LSS_OK;
    if (!x || !y) return lss_seterr(LSS_ERR_ARG, "lss_gpu_unary: NULL buffer");
    lss__k_unary<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>((int)op, p, x, y, n);
    LSS__LAUNCHED("lss__k_unary");
    return LSS_OK;
}

extern "C" int lss_gpu_unary_backward(lss_gpu *ctx, lss_gpu_unop op, float p, const float *x, const float *y,
                                      const float *dy, float *gx, int64_t n) {
    int st;
    if ((st = lss__check_n(ctx, n, "lss_gpu_unary_backward")) != LSS_OK) return st;
    if ((int)op < LSS_GPU_RELU || (int)op > LSS_GPU_ADDS)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_unary_backward: unknown operation %d", (int)op);
    if (n == 0) return LSS_OK;
    if (!x || !y || !dy || !gx) return lss_seterr(LSS_ERR_ARG, "lss_gpu_unary_backward: NULL buffer");
    lss__k_unary_bwd<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>((int)op, p, x, y, dy, gx, n);
    LSS__LAUNCHED("lss__k_unary_bwd");
    return LSS_OK;
}

extern "C" int lss_gpu_binary(lss_gpu *ctx, lss_gpu_binop op, const float *a, const float *b, float *y, int64_t n) {
    int st;
    if ((st = lss__check_n(ctx, n, "lss_gpu_binary")) != LSS_OK) return st;
    if ((int)op < LSS_GPU_ADD || (int)op > LSS_GPU_MUL) return lss_seterr(LSS_ERR_ARG, "lss_gpu_binary: unknown operation %d", (int)op);
    if (n == 0) return LSS_OK;
    if (!a || !b || !y) return lss_seterr(LSS_ERR_ARG, "lss_gpu_binary: NULL buffer");
    lss__k_binary<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>((int)op, a, b, y, n);
    LSS__LAUNCHED("lss__k_binary");
    return LSS_OK;
}

extern "C" int lss_gpu_binary_backward(lss_gpu *ctx, lss_gpu_binop op, const float *a, const float *b,
                                       const float *dy, float *ga, float *gb, int64_t n) {
    int st;
    if ((st = lss__check_n(ctx, n, "lss_gpu_binary_backward")) != LSS_OK) return st;
    if ((int)op < LSS_GPU_ADD || (int)op > LSS_GPU_MUL)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_binary_backward: unknown operation %d", (int)op);
    if (n == 0 || (!ga && !gb)) return LSS_OK;
    if (!dy || (op == LSS_GPU_MUL && ((ga && !b) || (gb && !a))))
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_binary_backward: NULL buffer");
    lss__k_binary_bwd<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>((int)op, a, b, dy, ga, gb, n);
    LSS__LAUNCHED("lss__k_binary_bwd");
    return LSS_OK;
}

/* ---------------------------------------------------------------- Adam / AdamW */
__global__ static void lss__k_adam(float *__restrict__ w, const float *__restrict__ gr, float *__restrict__ m,
                                   float *__restrict__ v, int64_t n, float fb1, float fb2, float a, float sb2,
                                   float eps, float fwd, float dec, int adamw) {
    const float omb1 = __fsub_rn(1.0f, fb1), omb2 = __fsub_rn(1.0f, fb2);
    LSS__GRID_LOOP(k, n) {
        float gk = gr[k], wk = w[k], mk, vk;
        if (!adamw && fwd != 0.0f) gk = __fadd_rn(gk, __fmul_rn(fwd, wk));
        mk = __fadd_rn(__fmul_rn(fb1, m[k]), __fmul_rn(omb1, gk));
        vk = __fadd_rn(__fmul_rn(fb2, v[k]), __fmul_rn(__fmul_rn(omb2, gk), gk));
        if (adamw) wk = __fmul_rn(wk, dec);
        wk = __fsub_rn(wk, __fdiv_rn(__fmul_rn(a, mk), __fadd_rn(__fmul_rn(__fsqrt_rn(vk), sb2), eps)));
        m[k] = mk;
        v[k] = vk;
        w[k] = wk;
    }
}

extern "C" int lss_gpu_adam(lss_gpu *ctx, float *w, const float *g, float *m, float *v, int64_t n, double lr,
                            double beta1, double beta2, double eps, double weight_decay, int adamw, int64_t t) {
    int st;
    double bc1, bc2;
    if ((st = lss__check_n(ctx, n, "lss_gpu_adam")) != LSS_OK) return st;
    if (!(lr > 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps > 0) ||
        !(weight_decay >= 0) || !isfinite(lr) || !isfinite(weight_decay) || t < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_adam: bad hyper-parameters (lr %g, betas %g %g, eps %g, weight "
                          "decay %g, step %lld)", lr, beta1, beta2, eps, weight_decay, (long long)t);
    if (n == 0) return LSS_OK;
    if (!w || !g || !m || !v) return lss_seterr(LSS_ERR_ARG, "lss_gpu_adam: NULL buffer");
    /* the constants exactly as lss_optim_step computes them */
    bc1 = 1.0 - pow(beta1, (double)(t + 1));
    bc2 = 1.0 - pow(beta2, (double)(t + 1));
    lss__k_adam<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>(
        w, g, m, v, n, (float)beta1, (float)beta2, (float)(lr / bc1), (float)(1.0 / sqrt(bc2)), (float)eps,
        (float)weight_decay, (float)(1.0 - lr * weight_decay), adamw ? 1 : 0);
    LSS__LAUNCHED("lss__k_adam");
    return LSS_OK;
}

/* ---------------------------------------------------------------- Philox (lss_core.h's own inline kernels) */
/* Normal number `which` (0: cos, 1: sin) of block `counter`, as lss_rng_normal. */
__device__ static inline double lss__normal(uint64_t seed, uint64_t stream, uint64_t counter, int which) {
    uint32_t b[4];
    double u1, u2, rad, ang;
    lss_philox_block_inline(seed, stream, counter, b);
    u1 = lss_u32x2_to_double_inline(b[0], b[1]);
    u2 = lss_u32x2_to_double_inline(b[2], b[3]);
    rad = sqrt(__dmul_rn(-2.0, log(u1)));
    ang = __dmul_rn(6.283185307179586, u2);
    return __dmul_rn(rad, which ? sin(ang) : cos(ang));
}

enum { LSS__R_U32 = 0, LSS__R_UNIFORMF, LSS__R_UNIFORM, LSS__R_NORMAL, LSS__R_NORMALF };

__global__ static void lss__k_rand(int kind, void *dst, int64_t n, uint64_t seed, uint64_t stream,
                                   uint64_t counter0) {
    LSS__GRID_LOOP(i, n) {
        uint32_t b[4];
        switch (kind) {
        case LSS__R_U32:
        case LSS__R_UNIFORMF:
            lss_philox_block_inline(seed, stream, counter0 + (uint64_t)i / 4, b);
            if (kind == LSS__R_U32) ((uint32_t *)dst)[i] = b[i & 3];
            else ((float *)dst)[i] = lss_u32_to_float_inline(b[i & 3]);
            break;
        case LSS__R_UNIFORM:
            lss_philox_block_inline(seed, stream, counter0 + (uint64_t)i / 2, b);
            ((double *)dst)[i] = lss_u32x2_to_double_inline(b[2 * (i & 1)], b[2 * (i & 1) + 1]);
            break;
        case LSS__R_NORMAL:
            ((double *)dst)[i] = lss__normal(seed, stream, counter0 + (uint64_t)i / 2, (int)(i & 1));
            break;
        default:
            ((float *)dst)[i] = (float)lss__normal(seed, stream, counter0 + (uint64_t)i / 2, (int)(i & 1));
            break;
        }
    }
}

static int lss__rand(lss_gpu *ctx, int kind, void *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0,
                     const char *fn) {
    int st;
    if ((st = lss__check_n(ctx, n, fn)) != LSS_OK) return st;
    if (n == 0) return LSS_OK;
    if (!d) return lss_seterr(LSS_ERR_ARG, "%s: NULL buffer", fn);
    lss__k_rand<<<lss__blocks(n), LSS__TPB, 0, ctx->stream>>>(kind, d, n, seed, stream, counter0);
    LSS__LAUNCHED("lss__k_rand");
    return LSS_OK;
}

extern "C" int lss_gpu_rand_u32(lss_gpu *ctx, uint32_t *d, int64_t n, uint64_t seed, uint64_t stream,
                                uint64_t counter0) {
    return lss__rand(ctx, LSS__R_U32, d, n, seed, stream, counter0, "lss_gpu_rand_u32");
}
extern "C" int lss_gpu_rand_uniformf(lss_gpu *ctx, float *d, int64_t n, uint64_t seed, uint64_t stream,
                                     uint64_t counter0) {
    return lss__rand(ctx, LSS__R_UNIFORMF, d, n, seed, stream, counter0, "lss_gpu_rand_uniformf");
}
extern "C" int lss_gpu_rand_uniform(lss_gpu *ctx, double *d, int64_t n, uint64_t seed, uint64_t stream,
                                    uint64_t counter0) {
    return lss__rand(ctx, LSS__R_UNIFORM, d, n, seed, stream, counter0, "lss_gpu_rand_uniform");
}
extern "C" int lss_gpu_rand_normal(lss_gpu *ctx, double *d, int64_t n, uint64_t seed, uint64_t stream,
                                   uint64_t counter0) {
    return lss__rand(ctx, LSS__R_NORMAL, d, n, seed, stream, counter0, "lss_gpu_rand_normal");
}
extern "C" int lss_gpu_rand_normalf(lss_gpu *ctx, float *d, int64_t n, uint64_t seed, uint64_t stream,
                                    uint64_t counter0) {
    return lss__rand(ctx, LSS__R_NORMALF, d, n, seed, stream, counter0, "lss_gpu_rand_normalf");
}

/* ---------------------------------------------------------------- DeepLSS observation noise */
__global__ static void lss__k_shape_noise(float *kappa, const float *__restrict__ counts, int nmaps, int64_t npix,
                                          double sigma_e, int code, uint64_t seed,
                                          const uint64_t *__restrict__ streams) {
    int64_t total = (int64_t)nmaps * npix;
    LSS__GRID_LOOP(i, total) {
        int64_t j = i / npix, k = i - j * npix;
        float eps = (float)lss__normal(seed, streams[j], (uint64_t)k / 2, (int)(k & 1));
        double c = counts[i], ng = code ? __dadd_rn(c, 1.0) : (c > 1 ? c : 1.0);
        kappa[i] = (float)__dadd_rn((double)kappa[i], __dmul_rn(__ddiv_rn(sigma_e, sqrt(ng)), (double)eps));
    }
}

extern "C" int lss_gpu_shape_noise(lss_gpu *ctx, float *kappa, const float *counts, int nmaps, int64_t npix,
                                   double sigma_e, int mode, uint64_t seed, const uint64_t *host_streams) {
    int st;
    if ((st = lss__use(ctx, "lss_gpu_shape_noise")) != LSS_OK) return st;
    if (nmaps < 0 || npix < 0 || (npix > 0 && nmaps > INT64_MAX / npix) || !(sigma_e >= 0) || !isfinite(sigma_e) ||
        mode < 0 || mode > 1)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_shape_noise: bad arguments (maps %d, pixels %lld, sigma_e %g, mode %d)",
                          nmaps, (long long)npix, sigma_e, mode);
    if (nmaps == 0 || npix == 0) return LSS_OK;
    if (!kappa || !counts || !host_streams) return lss_seterr(LSS_ERR_ARG, "lss_gpu_shape_noise: NULL buffer");
    if ((st = lss__scratch(ctx, (size_t)nmaps * sizeof(uint64_t))) != LSS_OK) return st;
    /* the previous user of the scratch table may still be queued: the copy is ordered on the stream */
    LSS__CU(cudaMemcpyAsync(ctx->scratch, host_streams, (size_t)nmaps * sizeof(uint64_t), cudaMemcpyHostToDevice,
                            ctx->stream));
    LSS__CU(cudaStreamSynchronize(ctx->stream)); /* host_streams may be released on return */
    lss__k_shape_noise<<<lss__blocks((int64_t)nmaps * npix), LSS__TPB, 0, ctx->stream>>>(
        kappa, counts, nmaps, npix, sigma_e, mode, seed, (const uint64_t *)ctx->scratch);
    LSS__LAUNCHED("lss__k_shape_noise");
    return LSS_OK;
}

__global__ static void lss__k_flip(const float *__restrict__ src, float *__restrict__ dst, int nfield, int nchan,
                                   int h, int w, uint64_t seed, uint64_t stream, uint64_t counter0) {
    int64_t per = (int64_t)nchan * h * w, total = per * nfield;
    LSS__GRID_LOOP(i, total) {
        int64_t f = i / per, r = i - f * per;
        int64_t c = r / ((int64_t)h * w), p = r - c * (int64_t)h * w;
        int y = (int)(p / w), x = (int)(p - (int64_t)y * w);
        uint32_t b[4];
        lss_philox_block_inline(seed, stream, counter0 + (uint64_t)f, b);
        int sy = (b[0] & 1) ? h - 1 - y : y, sx = ((b[0] >> 1) & 1) ? w - 1 - x : x;
        dst[i] = src[f * per + c * (int64_t)h * w + (int64_t)sy * w + sx];
    }
}

extern "C" int lss_gpu_random_flip(lss_gpu *ctx, const float *src, float *dst, int nfield, int nchan, int h, int w,
                                   uint64_t seed, uint64_t stream, uint64_t counter0) {
    int st;
    int64_t total;
    if ((st = lss__use(ctx, "lss_gpu_random_flip")) != LSS_OK) return st;
    if (nfield < 0 || nchan < 0 || h < 0 || w < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_random_flip: negative size (%d fields of %d x %d x %d)", nfield, nchan, h, w);
    total = (int64_t)nfield * nchan * h * w;
    if (total == 0) return LSS_OK;
    if (!src || !dst) return lss_seterr(LSS_ERR_ARG, "lss_gpu_random_flip: NULL buffer");
    {
        uintptr_t s0 = (uintptr_t)src, d0 = (uintptr_t)dst, nb = (uintptr_t)total * sizeof(float);
        if (s0 < d0 + nb && d0 < s0 + nb) return lss_seterr(LSS_ERR_ARG, "lss_gpu_random_flip: src and dst overlap");
    }
    lss__k_flip<<<lss__blocks(total), LSS__TPB, 0, ctx->stream>>>(src, dst, nfield, nchan, h, w, seed, stream, counter0);
    LSS__LAUNCHED("lss__k_flip");
    return LSS_OK;
}

__global__ static void lss__k_netscale(float *maps, int64_t total, int64_t per, int64_t nk, double ks) {
    LSS__GRID_LOOP(i, total) {
        float v = maps[i];
        if (!isfinite(v)) v = 0;
        maps[i] = (i % per) < nk ? (float)__dmul_rn((double)v, ks) : v;
    }
}

extern "C" int lss_gpu_scale_for_network(lss_gpu *ctx, float *maps, int nsamples, int nbins, int64_t npix,
                                         double kappa_scale) {
    int st;
    int64_t per, total;
    if ((st = lss__use(ctx, "lss_gpu_scale_for_network")) != LSS_OK) return st;
    if (nsamples < 0 || nbins < 0 || npix < 0 || !isfinite(kappa_scale) ||
        (npix > 0 && nbins > 0 && (int64_t)nsamples > INT64_MAX / (2 * (int64_t)nbins * npix)))
        return lss_seterr(LSS_ERR_ARG, "lss_gpu_scale_for_network: bad arguments (%d samples, %d bins, %lld pixels, "
                          "scale %g)", nsamples, nbins, (long long)npix, kappa_scale);
    per = 2 * (int64_t)nbins * npix;
    total = per * nsamples;
    if (total == 0) return LSS_OK;
    if (!maps) return lss_seterr(LSS_ERR_ARG, "lss_gpu_scale_for_network: NULL buffer");
    lss__k_netscale<<<lss__blocks(total), LSS__TPB, 0, ctx->stream>>>(maps, total, per, (int64_t)nbins * npix,
                                                                       kappa_scale);
    LSS__LAUNCHED("lss__k_netscale");
    return LSS_OK;
}

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
