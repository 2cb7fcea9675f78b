/* lss_nn.h - tensors, reverse-mode autodiff, layers, losses, optimizers, checkpoints and the training
 * loop for neural networks, computed on the CPU. Part of lss; includes lss_core.h.
 *
 * In exactly one C file:   #define LSS_NN_IMPLEMENTATION   before   #include "lss_nn.h"
 * (and LSS_CORE_IMPLEMENTATION once somewhere). Build with -fopenmp (optional) and -lm.
 *
 * CPU and GPU. Every network, operation, loss, optimizer and the training loop of this header run
 * on the CPU (OpenMP threads, the built-in SGEMM or LSS_CBLAS). The GPU API declared at the end
 * (with LSS_CUDA) is a set of primitives implemented in lss_gpu.cu: SGEMM on cuBLAS, cuDNN
 * convolutions, element-wise kernels, the Adam update and Philox draws, each with a parity test
 * against the CPU code (tests/test_gpu.c, skipped without a device). No network or operation of
 * this header dispatches to them yet.
 *
 * Contents (the order of the declarations below)
 *   1. tensors           lss_tensor, lss_tensor_create/_free, lss_shape_count
 *   2. parameter store   lss_store_create/_free, lss_store_add, lss_store_buffer, lss_store_get,
 *                        lss_store_tensor, lss_store_ntensors, lss_store_nparams, lss_store_size,
 *                        lss_store_data, lss_store_grad, lss_store_zero_grad, lss_store_grad_norm,
 *                        lss_store_copy, lss_store_status
 *   3. graph             lss_graph_create/_free, lss_graph_reset, lss_graph_set_training,
 *                        lss_graph_training, lss_graph_set_record, lss_graph_status,
 *                        lss_graph_memory, lss_tensor_new, lss_view, lss_backward, lss_backward_seed
 *   4. operations        lss_op_matmul, lss_op_dense, lss_op_conv2d (any kernel, stride, padding), lss_op_conv2d_relu,
 *                        lss_op_conv2d_transpose, lss_op_avgpool2d, lss_op_upsample2d (nearest),
 *                        lss_op_concat, lss_op_slice, lss_op_squeeze2d, lss_op_logabsdet,
 *                        lss_op_add, lss_op_sub, lss_op_mul (numpy broadcasting),
 *                        lss_op_scale, lss_op_add_scalar, lss_op_relu, lss_op_leaky_relu,
 *                        lss_op_softplus, lss_op_tanh, lss_op_sigmoid, lss_op_exp, lss_op_ln,
 *                        lss_op_batchnorm (train/eval), lss_op_spectral_norm (power iteration),
 *                        lss_op_reshape, lss_op_flatten, lss_op_sum, lss_op_mean,
 *                        lss_op_global_avgpool
 *   5. losses            lss_op_mse, lss_op_l1, lss_op_gauss_nll (DeepLSS eq. 14, Cholesky factor
 *                        of the precision), lss_op_gmm_nll, lss_gmm_width and lss_gmm_logpdf
 *                        (mixture density network), lss_op_dsm_loss (denoising score matching),
 *                        lss_op_wgan_critic_loss
 *   6. optimizers        lss_optim_create/_free, lss_optim_step, lss_optim_lr, lss_optim_steps,
 *                        lss_optim_last_norm, lss_optim_set_lr: SGD with momentum, Adam, AdamW,
 *                        RMSProp; step, cosine and exponential schedules; gradient clipping by
 *                        global norm or by a percentile of the history of norms (DeepLSS: 50th
 *                        percentile of the last 10,000, each tensor clipped to it)
 *   7. checkpoints       lss_ckpt_save, lss_ckpt_load, lss_crc32
 *   8. training loop     lss_train (lss_train_net, lss_train_opts, lss_train_result)
 *                        data-parallel gradients: lss_dp_create/_free/_grad/_shard/_bytes (fixed
 *                        shards summed in order; under MPI the ranks compute the shards, same bits)
 *   9. SGEMM             lss_sgemm, lss_sgemm_kernel, lss_nn_threads
 *  10. blocks            lss_op_activate, lss_mlp_init/_forward, lss_resblock_init/_forward/_forward_bias,
 *                        lss_resnet_init/_forward (the DeepLSS CNN), lss_unet_init/_forward;
 *                        the cGAN emulator (Perraudin et al. 2021): lss_convnet_init/_forward (critic
 *                        and regressor), lss_convgen_init/_forward (generator), lss_cgan_latent (eq. 2),
 *                        lss_wgan_gp_step (WGAN-GP critic step, exact penalty gradient),
 *                        lss_cgan_opts_paper, lss_cgan_init/_free/_step/_generate/_to_kappa/_from_kappa
 *                        the normalizing flow (multiscale affine coupling): lss_flow_create/_free/_store/
 *                        _options/_dim, lss_flow_set_transform/_get_transform/_to_flow/_to_kappa,
 *                        lss_flow_nll, lss_flow_encode, lss_flow_forward/_inverse/_logp/_sample
 *  11. GPU primitives    (LSS_CUDA; lss_gpu.cu) lss_gpu_device_count, lss_gpu_init/_free,
 *                        lss_gpu_name, lss_gpu_set_tf32, lss_gpu_sync, buffers (lss_gpu_alloc,
 *                        lss_gpu_allocf, lss_gpu_dealloc, lss_gpu_upload[f], lss_gpu_download[f],
 *                        lss_gpu_memset, lss_gpu_zerof), lss_gpu_sgemm, lss_gpu_conv2d_* ,
 *                        lss_gpu_unary[_backward], lss_gpu_binary[_backward], lss_gpu_adam,
 *                        lss_gpu_rand_*. The map-domain kernels (shape noise, random flips,
 *                        scaling for networks) are declared in lss_maps.h.
 *
 * API conventions
 *   - Outputs come last: a function that creates an object returns a status and hands the object
 *     out through a trailing `**out` (lss_store_create(seed, &st), lss_optim_create(st, &opts, &o),
 *     lss_tensor_create(ndim, shape, &t), lss_gpu_allocf(ctx, n, &d)); arrays a function fills come
 *     after its inputs (lss_gmm_logpdf(..., logp)). Copies keep memcpy's order (destination first:
 *     lss_gpu_upload/download) and text buffers snprintf's (buf, n).
 *   - Opaque objects pair _create and _free (lss_store, lss_graph, lss_optim, lss_tensor); public
 *     structs the caller owns are set up by _init (lss_mlp_init, lss_resblock_init, lss_resnet_init,
 *     lss_unet_init: their tensors live in the store, so they need no _free). Every _free accepts
 *     NULL.
 *   - Functions that can fail on their inputs return an int status (LSS_OK = 0 or a negative
 *     LSS_ERR_* of lss_core.h) with the message in lss_last_error(); library code never prints or
 *     exits.
 *   - Graph operations are named lss_op_*, return a new graph-owned tensor, and return NULL on
 *     failure with the status kept in the graph (see "Errors are sticky" below).
 *   - Everything the library allocates goes through LSS_MALLOC/LSS_REALLOC/LSS_FREE.
 *
 * The pieces
 *   lss_tensor   float32 data in NCHW order (up to 4 dimensions) and an optional gradient.
 *   lss_store    the parameter store: every trainable tensor (and every non-trained buffer such as
 *                batch-norm running statistics) lives in ONE contiguous data buffer with one
 *                contiguous gradient buffer and a table of names and shapes, so an optimizer step is
 *                one loop and a checkpoint is one table. Initialisers (He, Glorot) draw from Philox:
 *                tensor i of a store with seed s uses stream i, so weights are a pure function of
 *                (seed, registration order).
 *   lss_graph    a tape. A model is plain C code calling operations (lss_op_conv2d, lss_op_relu, ...)
 *                on a graph; each returns a new tensor owned by the graph. lss_backward walks the
 *                tape in reverse and ACCUMULATES into the store's gradients. lss_graph_reset forgets
 *                the tensors but keeps the memory, so a training loop allocates nothing after its
 *                first step. Errors are sticky: an operation that fails (bad shapes, no memory)
 *                returns NULL and records the failure; any operation given a NULL input returns
 *                NULL, so a forward pass is written without checks and tested once
 *                (lss_graph_status, or the status returned by lss_backward). A graph is
 *                backpropagated once; lss_graph_reset invalidates every tensor it returned.
 *                Each operation is one place in the implementation: its forward function records a
 *                tape node with its backward function and typed parameters, and the backward
 *                function sits next to it (element-wise operations are one line of
 *                LSS__UNARY(name, threshold, forward, backward)).
 *   lss_optim    see 6. above. A step whose gradient is not finite returns LSS_ERR_NUMERIC and
 *                changes nothing.
 *   checkpoints  one versioned binary file (magic, version, named tensors with shapes, CRC32)
 *                written atomically; loading validates everything and names the offending tensor;
 *                the optimizer state is saved too, so a resumed run continues bit for bit.
 *   lss_train    the project's one training loop: steps through a callback, held-out evaluation,
 *                loss CSV, plateau stopping, keep-best, checkpoints every k steps and exact resume,
 *                for one network or several trained together (see "training loop" below).
 * Convolutions run as im2col + SGEMM (batched over the samples: one GEMM per layer and pass). When
 * a gradient is recorded the forward keeps its column buffer for the weight gradient, so a
 * training graph needs about C_in kh kw / stride^2 floats per input pixel per layer (about 0.5 GB
 * for the DeepLSS ResNet at a batch of 32 maps of 8 x 64 x 64, 16 times that at 384 x 384);
 * evaluation graphs reuse one scratch buffer sized for the largest layer.
 *
 * Example: a small MLP fitted by Adam through lss_train (error handling shortened)
 *     typedef struct { lss_store *st; lss_optim *opt; lss_graph *g, *ge; lss_mlp net; } model;
 *     static int step(void *u, int64_t t, double *loss) {      // one optimizer step on batch t
 *         model *m = u; float xb[32 * 2], yb[32];  fill_batch(t, xb, yb);   // your data
 *         lss_graph_reset(m->g);
 *         lss_tensor *x = lss_view(m->g, xb, 2, (int64_t[]){32, 2});
 *         lss_tensor *y = lss_view(m->g, yb, 2, (int64_t[]){32, 1});
 *         lss_tensor *l = lss_op_mse(m->g, lss_mlp_forward(m->g, &m->net, x), y);
 *         lss_store_zero_grad(m->st);
 *         int s = lss_backward(m->g, l);
 *         if (s) return s;
 *         loss[0] = l->data[0];
 *         return lss_optim_step(m->opt);
 *     }
 *     // eval(void *u, double *loss): the same on the held-out set in m->ge (lss_graph_set_training 0)
 *     model m; int sizes[] = {2, 64, 64, 1};
 *     lss_store_create(42, &m.st);                                 // seed of the initialisers
 *     lss_mlp_init(&m.net, m.st, "mlp", 3, sizes, LSS_ACT_RELU);   // 2 -> 64 -> 64 -> 1
 *     lss_optim_opts oo = {0}; oo.kind = LSS_OPT_ADAM; oo.lr = 1e-3;
 *     lss_optim_create(m.st, &oo, &m.opt);
 *     lss_graph_create(&m.g); lss_graph_create(&m.ge); lss_graph_set_training(m.ge, 0);
 *     lss_train_net net = {"mlp", m.st, m.opt, "mlp.ckpt"};
 *     lss_train_opts to = {0}; to.steps = 1000; to.eval_every = 50; to.ckpt_every = 200;
 *     to.loss_csv = "loss.csv"; to.resume = 1; to.step = step; to.eval = eval; to.user = &m;
 *     if (lss_train(&net, 1, &to, NULL)) puts(lss_last_error());   // rerun: resumes exactly
 *     lss_graph_free(m.g); lss_graph_free(m.ge); lss_optim_free(m.opt); lss_store_free(m.st);
 *
 * Options (define before including)
 *   LSS_MALLOC/LSS_REALLOC/LSS_FREE   allocator (all three or none; see lss_core.h)
 *   LSS_CBLAS        use a system cblas_sgemm (link -lopenblas or -lcblas) instead of the built-in
 *                    blocked SGEMM
 *   LSS_NO_OPENMP    ignore OpenMP even when compiled with -fopenmp
 *   LSS_CUDA         declare the GPU primitives (link build/lss_gpu.o, -lcudnn -lcublas -lcudart
 *                    -lstdc++); the CPU code is the same with or without it
 * The built-in SGEMM (packed panels of 6 rows and 16 columns) runs AVX-512 (12 x 32 register tiles)
 * or AVX2/FMA (6 x 16) kernels on x86-64, chosen at run time from the CPU (lss_sgemm_kernel), and
 * portable C elsewhere; it is threaded with OpenMP over
 * blocks of C. Results do not depend on the number of threads: every output element is computed by
 * the same sequence of operations, and reductions run in fixed-size chunks added in a fixed order.
 * A graph sizes its packing buffers for omp_get_max_threads() at creation and never uses more
 * threads than that.
 *
 * Shapes. Dense input [N, in] (any [N, ...] is flattened), dense weight [in, out], conv weight
 * [C_out, C_in, kh, kw], transposed-conv weight [C_in, C_out, kh, kw] (as PyTorch), batch-norm
 * statistics per channel (axis 1). Losses return a 0-D tensor (one element).
 *
 * Version 0.2.0.
 */
#ifndef LSS_NN_H
#define LSS_NN_H
#include "lss_core.h"

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_NN_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define LSS_NN_VERSION 1        /* checkpoint format version written by this code */
#define LSS_NN_MAXDIM 4

/* ---------------------------------------------------------------- tensors */
typedef struct lss_tensor {
    int ndim;                        /* 0..4; a 0-D tensor holds one number */
    int64_t shape[LSS_NN_MAXDIM];
    int64_t n;                       /* number of elements */
    float *data;                     /* n floats (not owned by the tensor struct) */
    float *grad;                     /* n floats, or NULL when no gradient flows into it */
    const char *name;                /* store tensors only, else NULL */
    int flags;                       /* internal (LSS_T_* below) */
} lss_tensor;
enum { LSS_T_PARAM = 1, LSS_T_BUFFER = 2, LSS_T_OWNED = 4 };

/* A standalone tensor that owns its data (zero-filled; no gradient), returned in *t (NULL on
 * failure). LSS_ERR_SHAPE for a bad shape, LSS_ERR_NOMEM. Free with lss_tensor_free. */
LSSDEF int lss_tensor_create(int ndim, const int64_t *shape, lss_tensor **t);
LSSDEF void lss_tensor_free(lss_tensor *t);
/* Number of elements of a shape; -1 when ndim is outside 0..4 or a size is < 1 or it overflows. */
LSSDEF int64_t lss_shape_count(int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- parameter store */
typedef enum {
    LSS_INIT_ZERO = 0,
    LSS_INIT_ONE,
    LSS_INIT_HE,          /* normal, std sqrt(2 / fan_in) (ReLU layers) */
    LSS_INIT_HE_UNIFORM,  /* uniform +-sqrt(6 / fan_in) */
    LSS_INIT_GLOROT,      /* uniform +-sqrt(6 / (fan_in + fan_out)) */
    LSS_INIT_NORMAL       /* normal, std 1 (spectral-norm power-iteration vectors) */
} lss_init;
/* fan_in/fan_out from the shape: [in, out] for 2-D; [a, b, kh, kw] gives fan_in = b kh kw and
 * fan_out = a kh kw (conv weight [C_out, C_in, kh, kw]); 1-D: fan_in = fan_out = n. */

typedef struct lss_store lss_store;
/* Creates an empty store. `seed` drives the initialisers. Free with lss_store_free. */
LSSDEF int lss_store_create(uint64_t seed, lss_store **st);
LSSDEF void lss_store_free(lss_store *st);
/* Registers a trainable tensor, initialised now. Returns the tensor (owned by the store; the pointer
 * stays valid for the store's life, its data pointer may change while tensors are added), or NULL
 * on failure: duplicate or empty name (longer than 127 characters), bad shape, no memory. Failures
 * are sticky: see lss_store_status. */
LSSDEF lss_tensor *lss_store_add(lss_store *st, const char *name, int ndim, const int64_t *shape,
                                 lss_init init);
/* Registers a tensor that is saved in checkpoints but never trained (running statistics, spectral
 * norm vectors, scaler constants), filled with `fill` (or drawn by `init` when init != ZERO). */
LSSDEF lss_tensor *lss_store_buffer(lss_store *st, const char *name, int ndim, const int64_t *shape,
                                    lss_init init, float fill);
LSSDEF int lss_store_status(const lss_store *st);          /* LSS_OK or the first failure */
LSSDEF lss_tensor *lss_store_get(const lss_store *st, const char *name); /* NULL if absent */
LSSDEF int lss_store_ntensors(const lss_store *st);
LSSDEF lss_tensor *lss_store_tensor(const lss_store *st, int i);
LSSDEF int64_t lss_store_nparams(const lss_store *st);     /* trainable scalars */
LSSDEF int64_t lss_store_size(const lss_store *st);        /* all scalars (trainable + buffers) */
LSSDEF float *lss_store_data(const lss_store *st);         /* the contiguous buffers */
LSSDEF float *lss_store_grad(const lss_store *st);
LSSDEF void lss_store_zero_grad(lss_store *st);
/* Global L2 norm of the trainable gradients (double accumulation, fixed order). */
LSSDEF double lss_store_grad_norm(const lss_store *st);
/* Copies the data of every tensor of `src` into the same-named tensor of `dst` (shapes must match). */
LSSDEF int lss_store_copy(lss_store *dst, const lss_store *src);

/* ---------------------------------------------------------------- graph (tape) */
typedef struct lss_graph lss_graph;
LSSDEF int lss_graph_create(lss_graph **g);
LSSDEF void lss_graph_free(lss_graph *g);
/* Forgets every tensor and tape entry of the graph (their memory is reused) and clears its error. */
LSSDEF void lss_graph_reset(lss_graph *g);
/* training = 1 (default): operations are recorded for lss_backward and batch norm uses batch
 * statistics and updates its running statistics. training = 0: nothing is recorded (inference is
 * faster and lighter) and batch norm uses the running statistics. */
LSSDEF void lss_graph_set_training(lss_graph *g, int training);
LSSDEF int lss_graph_training(const lss_graph *g);
/* Records operations (record = 1) even in an evaluation graph, so gradients flow through layers in
 * evaluation mode (input sensitivity maps of a trained network). lss_graph_set_training resets it. */
LSSDEF void lss_graph_set_record(lss_graph *g, int record);
LSSDEF int lss_graph_status(const lss_graph *g);
/* Bytes held by the graph's memory pool. */
LSSDEF size_t lss_graph_memory(const lss_graph *g);

/* New zero-filled tensor owned by the graph (no gradient). */
LSSDEF lss_tensor *lss_tensor_new(lss_graph *g, int ndim, const int64_t *shape);
/* Wraps caller memory (not copied; must outlive the graph's use) as a tensor without gradient. */
LSSDEF lss_tensor *lss_view(lss_graph *g, float *data, int ndim, const int64_t *shape);

/* Backpropagation from a one-element tensor (seeded with 1). Gradients are ADDED to the store's
 * gradient buffer (call lss_store_zero_grad first) and to the graph tensors' gradients. Returns the
 * graph's sticky status when a forward operation failed. */
LSSDEF int lss_backward(lss_graph *g, lss_tensor *loss);
/* The same seeded with dy (y->n floats) for a tensor of any shape. */
LSSDEF int lss_backward_seed(lss_graph *g, lss_tensor *y, const float *dy);

/* ---------------------------------------------------------------- operations
 * Each returns a new graph-owned tensor or NULL (see "Errors are sticky" above). */
LSSDEF lss_tensor *lss_op_matmul(lss_graph *g, lss_tensor *a, lss_tensor *b);       /* [M,K]x[K,N] */
/* y = x W + b: x [N, ...] flattened to [N, in], W [in, out], b [out] or NULL -> y [N, out]. */
LSSDEF lss_tensor *lss_op_dense(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b);
/* 2-D convolution (cross-correlation): x [N,Ci,H,W], w [Co,Ci,kh,kw], b [Co] or NULL; the same
 * stride and zero padding in both directions; out [N, Co, (H+2p-kh)/s+1, (W+2p-kw)/s+1]. */
LSSDEF lss_tensor *lss_op_conv2d(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride,
                              int pad);
/* relu(lss_op_conv2d(...)) as one operation: the same values and gradients bit for bit, but the
 * pre-activation and its gradient are never stored (half the memory of the two operations). */
LSSDEF lss_tensor *lss_op_conv2d_relu(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride,
                                   int pad);
/* Transposed convolution (the adjoint of lss_op_conv2d): x [N,Ci,H,W], w [Ci,Co,kh,kw], b [Co] or NULL;
 * out [N, Co, (H-1)s - 2p + kh + outpad, (W-1)s - 2p + kw + outpad], 0 <= outpad < s. */
LSSDEF lss_tensor *lss_op_conv2d_transpose(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b,
                                        int stride, int pad, int outpad);
/* Average pooling with a k x k window moved by `stride` (no padding); [N,C,H,W] -> [N,C,Ho,Wo]. */
LSSDEF lss_tensor *lss_op_avgpool2d(lss_graph *g, lss_tensor *x, int k, int stride);
/* Nearest-neighbour upsampling by an integer factor. */
LSSDEF lss_tensor *lss_op_upsample2d(lss_graph *g, lss_tensor *x, int factor);
/* Concatenation of two tensors along `axis` (other sizes equal). */
LSSDEF lss_tensor *lss_op_concat(lss_graph *g, lss_tensor *a, lss_tensor *b, int axis);
/* Elements [start, start + len) of axis `axis` (channel split of coupling layers). */
LSSDEF lss_tensor *lss_op_slice(lss_graph *g, lss_tensor *x, int axis, int64_t start, int64_t len);
/* Space to depth: [N, C, H, W] -> [N, 4C, H/2, W/2] (H, W even), output channel 4c + 2i + j holding
 * x[c, 2y + i, 2x + j]; inverse = 1 undoes it ([N, 4C, H, W] -> [N, C, 2H, 2W]). A permutation: no Jacobian. */
LSSDEF lss_tensor *lss_op_squeeze2d(lss_graph *g, lss_tensor *x, int inverse);
/* ln |det A| of a square matrix A ([n, n] or [n, n, 1, 1]) as a 0-D tensor; its gradient is A^-T.
 * LU with partial pivoting in double precision; a singular matrix is LSS_ERR_NUMERIC. */
LSSDEF lss_tensor *lss_op_logabsdet(lss_graph *g, lss_tensor *a);
/* Elementwise a + b and a * b with numpy broadcasting (shapes aligned on the right; a size-1 or
 * missing dimension is broadcast). */
LSSDEF lss_tensor *lss_op_add(lss_graph *g, lss_tensor *a, lss_tensor *b);
LSSDEF lss_tensor *lss_op_sub(lss_graph *g, lss_tensor *a, lss_tensor *b);
LSSDEF lss_tensor *lss_op_mul(lss_graph *g, lss_tensor *a, lss_tensor *b);
LSSDEF lss_tensor *lss_op_scale(lss_graph *g, lss_tensor *x, float s);            /* s x */
LSSDEF lss_tensor *lss_op_add_scalar(lss_graph *g, lss_tensor *x, float c);       /* x + c */
LSSDEF lss_tensor *lss_op_relu(lss_graph *g, lss_tensor *x);
LSSDEF lss_tensor *lss_op_leaky_relu(lss_graph *g, lss_tensor *x, float slope);
LSSDEF lss_tensor *lss_op_softplus(lss_graph *g, lss_tensor *x);  /* log(1 + e^x), overflow-safe */
LSSDEF lss_tensor *lss_op_tanh(lss_graph *g, lss_tensor *x);
LSSDEF lss_tensor *lss_op_sigmoid(lss_graph *g, lss_tensor *x);
LSSDEF lss_tensor *lss_op_exp(lss_graph *g, lss_tensor *x);
LSSDEF lss_tensor *lss_op_ln(lss_graph *g, lss_tensor *x);        /* natural log; needs x > 0 (else NaN) */
/* Batch normalisation over axis 1 of [N,C] or [N,C,H,W]: y = gamma (x - mean) / sqrt(var + eps) + beta.
 * Training graphs use the batch statistics (biased variance) and update the running ones as
 * running = momentum running + (1 - momentum) batch (unbiased variance), momentum 0 meaning 0.9;
 * evaluation graphs use running_mean/running_var. gamma, beta, running_* are [C]. eps 0 means 1e-5. */
LSSDEF lss_tensor *lss_op_batchnorm(lss_graph *g, lss_tensor *x, lss_tensor *gamma, lss_tensor *beta,
                                 lss_tensor *running_mean, lss_tensor *running_var, float momentum,
                                 float eps);
/* Spectral normalisation: w / sigma with sigma = u^T W v, W = w reshaped to [shape[0], rest],
 * u [shape[0]] a store buffer refined by `iters` power iterations (v = W^T u / |.|,
 * u = W v / |.|). In training graphs the refined u is written back (so one iteration per step
 * converges over steps); the gradient treats u and v as constants (as is usual). */
LSSDEF lss_tensor *lss_op_spectral_norm(lss_graph *g, lss_tensor *w, lss_tensor *u, int iters);
/* The same view with new sizes (same element count; data and gradient shared, nothing recorded). */
LSSDEF lss_tensor *lss_op_reshape(lss_graph *g, lss_tensor *x, int ndim, const int64_t *shape);
LSSDEF lss_tensor *lss_op_flatten(lss_graph *g, lss_tensor *x);   /* [N, ...] -> [N, rest] */
LSSDEF lss_tensor *lss_op_sum(lss_graph *g, lss_tensor *x);       /* all elements -> 0-D */
LSSDEF lss_tensor *lss_op_mean(lss_graph *g, lss_tensor *x);
/* Mean over the spatial axes: [N,C,H,W] -> [N,C]. */
LSSDEF lss_tensor *lss_op_global_avgpool(lss_graph *g, lss_tensor *x);

/* ---------------------------------------------------------------- losses (0-D results) */
/* mean (pred - target)^2 and mean |pred - target| over all elements; target gets no gradient. */
LSSDEF lss_tensor *lss_op_mse(lss_graph *g, lss_tensor *pred, lss_tensor *target);
LSSDEF lss_tensor *lss_op_l1(lss_graph *g, lss_tensor *pred, lss_tensor *target);
/* Diagonal of a Cholesky factor from a raw network output: softplus(raw) + 1e-4. */
#define LSS_CHOL_DIAG_EPS 1e-4
/* Gaussian NLL with a full covariance (DeepLSS eq. 14). out [N, d + d(d+1)/2]: per sample d means
 * mu, then the d(d+1)/2 entries of the lower-triangular Cholesky factor L of the PRECISION
 * (row-major lower triangle: L00, L10, L11, L20, L21, L22, ...; diagonal through softplus + 1e-4).
 * target [N, d]. Value: mean over samples of ||L^T (y - mu)||^2 - 2 sum_i log L_ii
 * = r^T Sigma^-1 r + ln|Sigma| (no 1/2, no constant). */
LSSDEF lss_tensor *lss_op_gauss_nll(lss_graph *g, lss_tensor *out, lss_tensor *target);
/* Width of a Gaussian-mixture output: K (1 + d + d(d+1)/2). */
LSSDEF int64_t lss_gmm_width(int K, int d);
/* Gaussian-mixture NLL. out [N, K (1 + d + d(d+1)/2)]: per sample K logits, then K d means
 * (component-major: mu_k = out[K + k d .. K + k d + d - 1]), then K blocks of d(d+1)/2 entries of
 * the lower-triangular Cholesky factor L_k of component k's PRECISION (layout and diagonal as in
 * lss_op_gauss_nll). target [N, d]. Value: mean over samples of
 *   -logsumexp_k( log_softmax(logits)_k + sum_i log L_kii - 1/2 ||L_k^T (y - mu_k)||^2 - d/2 log 2 pi ).
 * Computed in double per sample. */
LSSDEF lss_tensor *lss_op_gmm_nll(lss_graph *g, lss_tensor *out, lss_tensor *target, int K);
/* Per-sample log-densities log p(y_n) of the same mixture from raw outputs, in double, forward only
 * (for samplers): out [n, lss_gmm_width(K, d)] row-major, y [n, d], logp [n]. LSS_ERR_ARG on bad
 * sizes; non-finite outputs give -inf (never NaN). Thread-safe; parallel over n with OpenMP. */
LSSDEF int lss_gmm_logpdf(const float *out, const double *y, int64_t n, int K, int d, double *logp);
/* Denoising score matching: mean over all elements of (u + sigma_n r)^2, where r [N, ...] is the
 * network's output at x + sigma u, u the same shape (no gradient) and sigma [N] one noise level per
 * sample (no gradient; signed values allowed). Equals ||u + sigma r||^2 / (elements per sample),
 * averaged over the batch. */
LSSDEF lss_tensor *lss_op_dsm_loss(lss_graph *g, lss_tensor *r, lss_tensor *u, lss_tensor *sigma);
/* Wasserstein critic loss mean(critic(fake)) - mean(critic(real)) (the critic minimises it; the
 * generator minimises -mean(critic(fake)), i.e. lss_op_scale(g, lss_op_mean(g, fake), -1)). */
LSSDEF lss_tensor *lss_op_wgan_critic_loss(lss_graph *g, lss_tensor *real, lss_tensor *fake);

/* ---------------------------------------------------------------- optimizers */
typedef enum { LSS_OPT_ADAM = 0, LSS_OPT_ADAMW, LSS_OPT_SGD, LSS_OPT_RMSPROP } lss_opt_kind;
typedef enum { LSS_SCHED_CONSTANT = 0, LSS_SCHED_STEP, LSS_SCHED_COSINE, LSS_SCHED_EXP } lss_sched;
typedef enum { LSS_CLIP_NONE = 0, LSS_CLIP_NORM, LSS_CLIP_PERCENTILE } lss_clip;
typedef struct {
    lss_opt_kind kind;   /* default Adam */
    double lr;           /* 0: 1e-3 */
    double beta1, beta2; /* Adam/AdamW; 0: 0.9, 0.999 */
    double eps;          /* Adam/AdamW/RMSProp; 0: 1e-8 */
    double weight_decay; /* AdamW: decoupled (w -= lr wd w); SGD/RMSProp/Adam: added to the gradient */
    double momentum;     /* SGD (heavy ball, PyTorch form) and RMSProp; default 0 */
    double rho;          /* RMSProp decay; 0: 0.9 */
    int rms_tf;          /* RMSProp in TensorFlow 1's form (tf.compat.v1.train.RMSPropOptimizer, the cGAN paper's
                            code): mean square initialised to 1 (not 0), step g / sqrt(v + eps) with eps inside
                            the root (0: 1e-10, TensorFlow's default), momentum m = mu m + lr g / sqrt(v + eps),
                            w -= m. 0: PyTorch's form (below). */
    lss_sched sched;     /* learning-rate schedule over optimizer steps t = 0, 1, ... */
    int64_t step_size;   /* STEP: lr x gamma every step_size steps */
    double gamma;        /* STEP and EXP (lr gamma^t); 0: 0.1 for STEP, 0.999 for EXP */
    int64_t total_steps; /* COSINE: lr_min + (lr - lr_min)(1 + cos(pi t / total)) / 2, then lr_min */
    double lr_min;
    lss_clip clip;       /* NORM: global gradient norm clipped to clip_norm */
    double clip_norm;
    double clip_percentile; /* PERCENTILE: 0: 50; each tensor's gradient norm clipped to this percentile */
    int clip_history;       /* of the last clip_history global norms (0: 10,000), current one included */
} lss_optim_opts;
typedef struct lss_optim lss_optim;
/* Creates an optimizer over the trainable tensors of `st` (the store must not change size after). */
LSSDEF int lss_optim_create(lss_store *st, const lss_optim_opts *opts, lss_optim **o);
LSSDEF void lss_optim_free(lss_optim *o);
/* One update from the gradients now in the store (clipping, schedule, update). Clipping scales the
 * store's gradients in place. Returns LSS_ERR_NUMERIC (and changes nothing) when a gradient is not
 * finite. Does not zero gradients. */
LSSDEF int lss_optim_step(lss_optim *o);
LSSDEF double lss_optim_lr(const lss_optim *o);        /* learning rate of the next step */
LSSDEF int64_t lss_optim_steps(const lss_optim *o);    /* steps taken */
LSSDEF double lss_optim_last_norm(const lss_optim *o); /* global gradient norm at the last step */
LSSDEF void lss_optim_set_lr(lss_optim *o, double lr); /* changes the base learning rate */

/* ---------------------------------------------------------------- checkpoints
 * File: "LSSNNCK1" magic (8 bytes), u32 version, u32 number of tensors, then per tensor: u32 name
 * length, name, u32 dtype (1 = f32, 2 = f64, 4 = i64), u32 ndim, i64 shape[ndim], data; finally the
 * CRC32 (IEEE) of everything before it. Little-endian. The optimizer, when given, is saved as
 * "optim.*" tensors (kind and hyper-parameters, step count, moments, clip history). */
LSSDEF int lss_ckpt_save(const char *path, const lss_store *st, const lss_optim *o);
/* Validates the whole file first (magic, version, sizes against the file length, CRC32, every
 * store tensor present with its shape, optimizer state of the same kind and size when o != NULL)
 * and changes nothing unless all is right; errors name the file and the tensor. Tensors in the
 * file that the store lacks are an error too, except the "optim.*" ones (read only when o != NULL)
 * and the "train.*" state that lss_train adds. */
LSSDEF int lss_ckpt_load(const char *path, lss_store *st, lss_optim *o);
/* As lss_ckpt_load without an optimizer, then, when the file holds the best-evaluation snapshot of a
 * keep_best training run (lss_train's "train.best"), those parameters instead of the last ones.
 * *best (may be NULL) says which: 1 the snapshot, 0 the last parameters. */
LSSDEF int lss_ckpt_load_best(const char *path, lss_store *st, int *best);
/* CRC32 (IEEE 802.3, as zlib's crc32) of a buffer, continuing from `crc` (start with 0). */
LSSDEF uint32_t lss_crc32(uint32_t crc, const void *buf, size_t n);

/* ---------------------------------------------------------------- training loop
 * The one training loop of the project (DeepLSS networks, the MDN, the mass-mapping prior and every
 * generator): it owns the step count, the held-out evaluations, plateau stopping, checkpoints with
 * exact resume and the loss CSV; the caller owns the model and the data through two callbacks.
 * Several networks can train together on the same data (DeepLSS trains up to six): they share the
 * step counter, are evaluated together and checkpointed as one consistent set.
 *
 * Steps. The loop's step count is the optimizers' (lss_optim_steps; divided by substeps[k] for a
 * network with several optimizer steps per loop step, see lss_train_opts), which must all be equal at
 * the start (else LSS_ERR_STATE naming both steps). It calls step(user, t, loss) for t = t0 .. steps-1;
 * after each call every optimizer must have taken exactly one step (substeps[k] for network k), else
 * LSS_ERR_STATE. A step that returns LSS_ERR_NUMERIC is skipped: it is counted, its losses are left
 * out of the training means, and the step count of every optimizer that did not complete its steps
 * is moved on to the loop's (no parameter changes, the learning-rate schedule advances). Any other non-zero
 * status of step or eval stops the loop and is returned as is (nothing more is written).
 *
 * Evaluations and the loss CSV. After step count n = t + 1 is reached, a row is made when n is a
 * multiple of eval_every, at n = steps and when the plateau rule stops the run: columns step (= n),
 * train_<name> for each network (mean of its finite training losses since the previous row; NaN
 * when no step succeeded in between), then valid_<name> for each network when eval is given (its
 * held-out loss at n). Without eval there are no valid_ columns. Rows are kept in memory and the
 * file is rewritten (atomically, lss_csv_write) at every checkpoint.
 *
 * Plateau and best. A network improves when its held-out loss is below its best so far minus
 * min_delta (NaN never improves). With patience > 0 the run stops after an evaluation at which no
 * network has improved in its last `patience` evaluations. keep_best snapshots each network's store
 * (lss_store_copy) at each improvement and copies the snapshot back into the network when lss_train
 * returns LSS_OK; the checkpoints keep the last parameters (so that resume is exact) and hold the
 * snapshot too ("train.best").
 *
 * Checkpoints and resume. When n is a multiple of ckpt_every, at n = steps and at a plateau stop,
 * every network with a ckpt_path is checkpointed (lss_ckpt_save format) with the loop's state as
 * extra "train.*" tensors (training-loss sums, plateau counters, best losses, skipped steps), which
 * lss_ckpt_load ignores, as one set: all files are written and synced under temporary names first
 * (a failure there, such as a full disk, returns the error and leaves every network at its previous
 * checkpoint), then the loss CSV is written, then the files are renamed into place. With resume = 1
 * every network needs a ckpt_path: when none of the files exists the run starts afresh; when only
 * some exist it is LSS_ERR_STATE; otherwise all are loaded (validated as by lss_ckpt_load), must be
 * at one step (else LSS_ERR_STATE naming both steps), and the CSV rows with step <= that step are
 * read back by column name (every column of this run must be there). Columns of other networks (a
 * directory's networks resumed a few at a time) are kept, all their rows, merged with this run's
 * rows by step. The loop then continues, and the parameters and the CSV at the end are
 * bitwise those of an uninterrupted run provided step() is a pure function of (state, t) and the
 * previous run stopped at a checkpoint that was not also an extra evaluation: a run killed at any
 * point resumes from its last checkpoint exactly; a run ended by a smaller `steps` ends with an
 * evaluation at that step, so it resumes exactly when that step is a multiple of eval_every (or
 * when there is no eval). A run whose checkpoints show the plateau stop stays stopped, and
 * checkpoints past `steps` are LSS_ERR_STATE. */
typedef struct {
    const char *name;        /* column names "train_<name>", "valid_<name>": 1..64 characters without
                                comma, quote, space or line break; distinct; NULL allowed when nnet is
                                1 (then "loss") */
    lss_store *store;        /* parameters (required) */
    lss_optim *optim;        /* optimizer of this store (required); its step count is the loop's */
    const char *ckpt_path;   /* checkpoint file (NULL: none; required with resume) */
} lss_train_net;
typedef struct {
    int64_t steps;           /* total optimizer steps (required, >= 1) */
    int eval_every;          /* a CSV row and held-out evaluation every eval_every steps (0: only at
                                the end) */
    int ckpt_every;          /* checkpoints and loss CSV every ckpt_every steps (0: only at the end) */
    const char *loss_csv;    /* step, train_<name>..., valid_<name>... (NULL: none) */
    int resume;              /* 1: continue from the checkpoints when they exist (see above) */
    int patience;            /* plateau stop after `patience` evaluations in which no network improved
                                (0: run all steps; > 0 needs eval) */
    double min_delta;        /* improvement that counts (absolute, >= 0; 0: any decrease) */
    int keep_best;           /* 1: return with each network's parameters of its best held-out
                                evaluation (needs eval) */
    const int *substeps;     /* [nnet] optimizer steps of each network per loop step (NULL, 0 or 1: one;
                                a WGAN critic takes n_critic, 1..1000): network k's optimizer step count
                                is substeps[k] times the loop's, and the counts above are loop steps */
    /* One optimizer step of every network: draw a batch for `step` (0-based, a pure function of the
       step so that resume is exact), forward, backward, lss_optim_step; loss[k] receives network k's
       training loss. Return LSS_OK, LSS_ERR_NUMERIC for a skipped step (counted), or an error. */
    int (*step)(void *user, int64_t step, double *loss);
    /* Held-out loss of every network (loss[k]); NULL: no held-out evaluation. Must not change the
       parameters (use an evaluation graph). */
    int (*eval)(void *user, double *loss);
    /* Optional: called after every step with the step count done, the total, and the training and
       held-out columns of the last row (NaN before the first row; valid is NULL without eval). */
    void (*progress)(void *user, int64_t step, int64_t steps, const double *train, const double *valid);
    void *user;
} lss_train_opts;
typedef struct {
    int64_t steps_done;      /* loop step count at return (resumed steps included) */
    int64_t skipped;         /* steps that returned LSS_ERR_NUMERIC (resumed ones included) */
    int stopped_early;       /* 1: the plateau rule stopped the run */
    int64_t best_step;       /* step of the best mean held-out loss (-1: no evaluation) */
    double seconds, seconds_step;  /* wall time of this call and of its step callbacks */
} lss_train_result;
/* Runs the loop over nnet networks (see above). res may be NULL; it is filled on errors too.
 * LSS_ERR_ARG for NULL nets or o, nnet < 1, steps < 1, a NULL step callback, patience or keep_best
 * without eval, negative counts, a bad, missing or duplicate name, a network without store or
 * optimizer, shared stores or checkpoint paths, resume without a checkpoint path. */
LSSDEF int lss_train(lss_train_net *nets, int nnet, const lss_train_opts *o, lss_train_result *res);

/* ---------------------------------------------------------------- data-parallel gradients
 * The gradient of a global batch as the ordered sum of the gradients of nshard fixed shards
 * (lss_dp_shard splits the batch). fn(user, shard, nshard, loss) computes shard `shard`'s forward and
 * backward into the store's gradient (already zeroed), with the shard's loss weighted by its share
 * of the batch (so that the shard losses add up to the batch loss); it writes that loss to *loss
 * and returns LSS_OK, LSS_ERR_NUMERIC (the whole step is then skipped) or an error. lss_dp_grad
 * leaves in the store's gradient g = g_0 + g_1 + ... + g_{nshard-1}, added in that order, and in
 * *loss the batch loss; the caller then calls lss_optim_step. Every shard starts from the parameters
 * and buffers of the step's start; after the call the buffers (batch-norm running statistics,
 * spectral-norm vectors) are those that the last shard's forward left (batch norm thus normalises
 * each shard by its own statistics).
 * Under MPI (lss_core.h) rank r computes the shards of its lss_mpi_block and the ordered sum is made
 * by lss_mpi_sum_ordered (reduce-scatter, then all-gather: about 2 x the store per rank and step when
 * nshard equals the ranks), so that the gradient, the loss and every parameter after lss_optim_step are
 * bitwise those of the serial run with the same nshard, at any rank count (ranks beyond nshard idle),
 * and a run resumed with another rank count continues exactly. A store with buffers also receives
 * them from the last shard's rank. Communication per step: lss_dp_bytes.
 * A failed shard fails the step on every rank: LSS_ERR_NUMERIC when any shard returned it, else the
 * first failing shard's status, with a message naming the shard and the rank. */
typedef struct lss_dp lss_dp;
typedef int (*lss_dp_fn)(void *user, int shard, int nshard, double *loss);
/* nshard 1..4096; under MPI create it after lss_mpi_init (it holds this rank's shards: memory
 * ceil(nshard / ranks) + 1 times the store) */
LSSDEF int lss_dp_create(lss_store *st, int nshard, lss_dp **out);
LSSDEF void lss_dp_free(lss_dp *d);
LSSDEF int lss_dp_grad(lss_dp *d, lss_dp_fn fn, void *user, double *loss);
/* Samples [*lo, *hi) of shard `shard` of a batch of n (contiguous, sizes differing by at most one). */
LSSDEF void lss_dp_shard(int64_t n, int shard, int nshard, int64_t *lo, int64_t *hi);
/* Bytes one lss_dp_grad sends from this process (0 in a one-process run). */
LSSDEF double lss_dp_bytes(const lss_dp *d);

/* ---------------------------------------------------------------- SGEMM
 * C = alpha op(A) op(B) + beta C, row-major; op(A) is M x K (A stored M x K with lda, or K x M when
 * transa), op(B) is K x N. Threaded with OpenMP; the result does not depend on the thread count.
 * Returns LSS_ERR_ARG on bad sizes, LSS_ERR_NOMEM when the packing buffers cannot be allocated. */
LSSDEF int lss_sgemm(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc);
/* The built-in SGEMM's micro-kernel: 0 portable C, 1 AVX2 + FMA (6 x 16 tiles), 2 AVX-512F (12 x 32
 * tiles). On x86-64 (GCC or clang) the vector kernels are compiled whatever -march says and the best
 * one the CPU supports is chosen at the first call; the environment variable LSS_SGEMM_KERNEL=c|avx2
 * caps it. lss_sgemm_kernel(want) caps it from the program (want < 0: no change) and returns the level
 * in effect, never above what the CPU supports. Levels 1 and 2 give bitwise the same results (the same
 * fused multiply-adds in the same order); level 0 rounds products and sums separately. Set it before
 * starting threaded work. LSS_CBLAS builds use the system's SGEMM whatever the level says. */
LSSDEF int lss_sgemm_kernel(int want);
LSSDEF const char *lss_sgemm_kernel_name(int level); /* "c", "avx2", "avx512" */
/* Number of OpenMP threads the library uses (1 without OpenMP). */
LSSDEF int lss_nn_threads(void);

/* ---------------------------------------------------------------- blocks */
typedef enum { LSS_ACT_RELU = 0, LSS_ACT_LEAKY, LSS_ACT_TANH, LSS_ACT_SOFTPLUS, LSS_ACT_NONE } lss_act;
/* The activation `act` as a graph operation (LEAKY: slope 0.2; NONE: x itself). */
LSSDEF lss_tensor *lss_op_activate(lss_graph *g, lss_tensor *x, lss_act act);

#define LSS_MLP_MAX 16
typedef struct {
    int nlayers;                 /* dense layers */
    lss_act act;                 /* after every layer but the last */
    lss_tensor *w[LSS_MLP_MAX], *b[LSS_MLP_MAX];
} lss_mlp;
/* sizes[0..nlayers]: input width, hidden widths, output width. Tensors "<name>.w<i>", "<name>.b<i>"
 * (He init for ReLU-like activations, Glorot otherwise; zero biases). */
LSSDEF int lss_mlp_init(lss_mlp *m, lss_store *st, const char *name, int nlayers, const int *sizes,
                        lss_act act);
LSSDEF lss_tensor *lss_mlp_forward(lss_graph *g, const lss_mlp *m, lss_tensor *x);

/* Residual block (ResNet v1): h = act(norm(conv_k(x, stride))), h = norm(conv_k(h)),
 * out = act(h + skip), skip = x, or norm(conv_1x1(x, stride)) when the stride is not 1 or the
 * channel count changes. pool = 1 downsamples by 2 x 2 average pooling of the main path (after the
 * first convolution) and of the shortcut instead of strided convolutions. Padding k/2 ("same"): zeros,
 * or the opposite edge's pixels when `periodic` is set (after init; for periodic maps, k/2 <= the map's side).
 * Tensors "<name>.conv1.w" etc.; batch-norm running statistics are store buffers. */
typedef struct {
    int cin, cout, kernel, stride, batchnorm, pool, periodic;
    lss_act act;
    lss_tensor *w1, *b1, *w2, *b2, *wp, *bp;          /* convolutions (biases NULL with batch norm) */
    lss_tensor *bn[3][4];                             /* per norm: gamma, beta, running mean, running var */
} lss_resblock;
LSSDEF int lss_resblock_init(lss_resblock *rb, lss_store *st, const char *name, int cin, int cout, int kernel,
                             int stride, int batchnorm, int pool, lss_act act);
LSSDEF lss_tensor *lss_resblock_forward(lss_graph *g, const lss_resblock *rb, lss_tensor *x);
/* The same with a per-sample, per-channel bias [N, cout] (NULL: none) added after the first convolution (and its
 * pooling), before its norm and activation: the noise-level embedding of a diffusion U-net (Ho et al. 2020). */
LSSDEF lss_tensor *lss_resblock_forward_bias(lss_graph *g, const lss_resblock *rb, lss_tensor *x, lss_tensor *bias);

/* The DeepLSS CNN: nconv convolutions (kernel k, stride 2, padding k/2, ReLU) to `channels`
 * channels, nres residual blocks of two k x k convolutions at `channels` (no normalisation), flatten,
 * one dense layer with nout outputs (n + n(n+1)/2 for lss_op_gauss_nll with n parameters). Zeroed
 * fields mean the paper's values: nconv 4, nres 10, channels 128, kernel 5. */
typedef struct {
    int in_ch, in_h, in_w;   /* input maps [N, in_ch, in_h, in_w] (required) */
    int nout;                /* required */
    int nconv, nres, channels, kernel;
    int pool;                /* 1: global average pool of the last features instead of flatten (translation invariant
                                summaries; any input size); 0: flatten (the paper) */
    int hidden;              /* > 0: one hidden dense layer of this width with ReLU before the output; 0: none (the paper) */
    int nextra;              /* > 0: features [N, nextra] given to lss_resnet_forward_extra are concatenated to the pooled
                                (or flattened) convolutional features before the hidden and output layers; 0: none */
} lss_resnet_opts;
#define LSS_RESNET_MAXCONV 8
#define LSS_RESNET_MAXRES 32
typedef struct {
    lss_resnet_opts o;
    int out_h, out_w;        /* spatial size after the strided convolutions */
    lss_tensor *cw[LSS_RESNET_MAXCONV], *cb[LSS_RESNET_MAXCONV], *dw, *db;   /* dw, db: the output layer */
    lss_tensor *hw, *hb;     /* hidden dense layer (NULL without) */
    lss_resblock rb[LSS_RESNET_MAXRES];
} lss_resnet;
LSSDEF int lss_resnet_init(lss_resnet *net, lss_store *st, const char *name, const lss_resnet_opts *opts);
LSSDEF lss_tensor *lss_resnet_forward(lss_graph *g, const lss_resnet *net, lss_tensor *x);
/* The same with the extra features [N, nextra] (required when nextra > 0, else must be NULL). */
LSSDEF lss_tensor *lss_resnet_forward_extra(lss_graph *g, const lss_resnet *net, lss_tensor *x, lss_tensor *extra);

/* A 3-scale U-net with residual blocks and batch norm: stem conv 3x3 + BN + ReLU to c0; residual
 * block at full size (skip s0); 2 x 2 average pool + residual block to c1 (skip s1); 2 x 2 average
 * pool + residual block to c2 (bottleneck; with conditioning the noise map is concatenated here
 * and a second residual block follows); transposed conv 2x2 stride 2 up, concatenation with the
 * skip and a residual block, twice; 3x3 conv to out_ch. With noise conditioning (sigma_cond = 1) a
 * constant map of sigma_n is concatenated to the input and at the bottleneck, and the output is
 * divided by (|sigma_n| + sigma_eps) (sigma_eps 0 means 1e-3). H and W must be multiples of 4.
 * With sigma_embed = F > 0 as well, every residual block also sees the noise level through a bias per channel
 * after its first convolution (the time embedding of Ho et al. 2020): u = ln(|sigma_n|) / 4, the features e =
 * [u, sin(2^j u), cos(2^j u), j = 0 .. F-1] (2 F + 1 values, no gradient), h = relu(dense(e)) of width 4 c0 shared
 * by the blocks ("<name>.emb.w", ".emb.b"), and per block dense(h) -> cout ("<name>.<block>.emb.w", ".emb.b"),
 * so that every scale can change its filters with the noise level rather than only through the two constant
 * channels. */
typedef struct {
    int in_ch, out_ch;       /* required */
    int c0;                  /* channels at full size; 0 means 32 (then 2 c0, 4 c0) */
    int sigma_cond;
    float sigma_eps;
    int no_batchnorm;        /* 1: no batch norm anywhere (biased convolutions instead): outputs independent of the
                                batch's other samples, as a diffusion model at mixed noise levels needs; 0: as above */
    int sigma_log;           /* 1: the noise channels hold ln(|sigma_n|) / 4 instead of sigma_n (noise levels spanning
                                decades); the output is still divided by |sigma_n| + sigma_eps */
    int periodic;            /* 1: every 3x3 convolution pads with the opposite edge (periodic maps) instead of zeros */
    int sigma_embed;         /* with sigma_cond: frequencies of the per-block noise-level embedding above, 0..32 (0: none) */
} lss_unet_opts;
typedef struct {
    lss_unet_opts o;
    lss_tensor *stem_w, *stem_b, *stem_bn[4], *up1_w, *up1_b, *up2_w, *up2_b, *head_w, *head_b;
    lss_tensor *emb_w, *emb_b, *eproj_w[6], *eproj_b[6];   /* noise-level embedding (sigma_embed > 0; else NULL) */
    lss_resblock enc0, enc1, enc2, mid, dec1, dec0;
} lss_unet;
LSSDEF int lss_unet_init(lss_unet *u, lss_store *st, const char *name, const lss_unet_opts *opts);
/* x [N, in_ch, H, W]; sigma [N] noise levels (required when sigma_cond, else may be NULL). */
LSSDEF lss_tensor *lss_unet_forward(lss_graph *g, const lss_unet *u, lss_tensor *x, lss_tensor *sigma);

/* ---- plain convolutional networks and the conditional WGAN-GP (the cGAN mass-map emulator)
 * lss_convnet is the cGAN paper's critic and regressor (Perraudin et al. 2021, Tables A1 and A2):
 * nconv convolutions (kernel k[i], stride stride[i], zero padding (k[i] - 1) / 2, so that a stride-s
 * layer divides an even side by s), LeakyReLU after each; flatten; the nextra conditioning values
 * concatenated (the critic's d5); ndense hidden dense layers with LeakyReLU; a linear output layer
 * of nout values (the critic 1, the regressor 2). There are no normalisation layers, so that the
 * gradient penalty's per-sample input gradients are those of independent samples. A trace (may be
 * NULL) keeps the pre-activations of the LeakyReLUs of one forward pass (lss_wgan_gp_step's tangent
 * pass) and the last hidden features (the regressor's features for the Frechet distance).
 * Tensors "<name>.conv<i>.w/.b", "<name>.dense<i>.w/.b" (He initialisation, zero biases). */
#define LSS_CONVNET_MAX 8
typedef struct {
    int in_ch, side;                 /* input [N, in_ch, side, side] (required) */
    int nconv;                       /* 1..LSS_CONVNET_MAX convolutions */
    int ch[LSS_CONVNET_MAX], k[LSS_CONVNET_MAX], stride[LSS_CONVNET_MAX];
    int ndense;                      /* 0..LSS_CONVNET_MAX hidden dense layers */
    int width[LSS_CONVNET_MAX];
    int nextra;                      /* conditioning values per sample (0: none) */
    int nout;                        /* outputs (required) */
    float slope;                     /* LeakyReLU slope (0: 0.2, the paper's) */
    int proj;                        /* 1 (needs nextra > 0, ndense >= 1, nout 1): projection conditioning (Miyato &
                                        Koyama 2018) added to the output: phi . (extra P), phi the last hidden features,
                                        P [nextra, width] ("<name>.proj.w", zero at the start, so that the network starts
                                        as without it); the extra values are still concatenated before the dense layers */
} lss_convnet_opts;
typedef struct {
    lss_convnet_opts o;
    int hw[LSS_CONVNET_MAX + 1];     /* side before convolution i; hw[nconv] after the last */
    int nflat;                       /* flattened convolutional features */
    lss_tensor *cw[LSS_CONVNET_MAX], *cb[LSS_CONVNET_MAX];
    lss_tensor *dw[LSS_CONVNET_MAX + 1], *db[LSS_CONVNET_MAX + 1];   /* [ndense] is the output layer */
    lss_tensor *pw;                  /* projection [nextra, width] (NULL without proj) */
} lss_convnet;
typedef struct {
    lss_tensor *pre[2 * LSS_CONVNET_MAX];  /* pre-activation of every LeakyReLU, in forward order */
    int npre;
    lss_tensor *feat;                /* last hidden layer after its activation [N, width] (with no
                                        dense layer: the flattened convolutional features) */
} lss_convnet_trace;
LSSDEF int lss_convnet_init(lss_convnet *net, lss_store *st, const char *name, const lss_convnet_opts *opts);
/* x [N, in_ch, side, side]; extra [N, nextra] (required when nextra > 0, else NULL); out [N, nout]. */
LSSDEF lss_tensor *lss_convnet_forward(lss_graph *g, const lss_convnet *net, lss_tensor *x, lss_tensor *extra,
                                       lss_convnet_trace *tr);

/* lss_convgen is the cGAN paper's generator (Table A1): input [N, nin] (the rescaled latent of
 * lss_cgan_latent); ndense hidden dense layers with ReLU, then a dense layer to ch0 side0^2 values
 * with ReLU, reshaped to [N, ch0, side0, side0]; nup transposed convolutions (kernel k[i], stride
 * stride[i], padding (k[i] - 1) / 2, output padding stride[i] - 1, so each multiplies the side by
 * stride[i]; k[i] odd) to ch[i] channels, each followed by ReLU except the last, which is followed by
 * out_act (default ReLU: positive maps, as the paper). Output [N, ch[nup-1], side, side].
 * Tensors "<name>.dense<i>.w/.b", "<name>.up<i>.w/.b". */
typedef struct {
    int nin;                         /* latent length (required) */
    int ndense;                      /* 0..LSS_CONVNET_MAX - 1 hidden dense layers before the reshape layer */
    int width[LSS_CONVNET_MAX];
    int ch0, side0;                  /* the reshaped tensor (required) */
    int nup;                         /* 1..LSS_CONVNET_MAX transposed convolutions */
    int ch[LSS_CONVNET_MAX], k[LSS_CONVNET_MAX], stride[LSS_CONVNET_MAX];
    lss_act out_act;                 /* LSS_ACT_RELU (0, default), or any other activation */
} lss_convgen_opts;
typedef struct {
    lss_convgen_opts o;
    int side;                        /* output side */
    lss_tensor *dw[LSS_CONVNET_MAX], *db[LSS_CONVNET_MAX], *uw[LSS_CONVNET_MAX], *ub[LSS_CONVNET_MAX];
} lss_convgen;
LSSDEF int lss_convgen_init(lss_convgen *net, lss_store *st, const char *name, const lss_convgen_opts *opts);
LSSDEF lss_tensor *lss_convgen_forward(lss_graph *g, const lss_convgen *net, lss_tensor *z);

/* The cGAN paper's conditioning of the latent (eq. 2), one block per parameter: z[n][nlatent] is split
 * into nparam equal blocks (nlatent a multiple of nparam, block length m); block j of sample i is
 * rescaled to the length l0 + (l1 - l0) (y[i][j] - lo[j]) / (hi[j] - lo[j]), l0 = 0.1 sqrt(m),
 * l1 = sqrt(m), keeping its direction. Values outside [lo, hi] extrapolate linearly (a length <= 0 is
 * LSS_ERR_RANGE). out may equal z. LSS_ERR_ARG for a zero block or bad sizes. */
LSSDEF int lss_cgan_latent(const float *z, const float *y, int n, int nlatent, int nparam, const double *lo,
                           const double *hi, float *out);

/* The critic objective of WGAN-GP (Gulrajani et al. 2017; the cGAN paper's eq. 1) for one batch:
 *   L = mean_i D(fake_i, y_i) - mean_i D(real_i, y_i) + lambda mean_i (|grad_x D(xh_i, y_i)|_2 - 1)^2,
 * xh_i = eps_i real_i + (1 - eps_i) fake_i (eps_i in [0, 1], given by the caller), and ADDS dL/dtheta
 * to the gradients of the critic's store st (the caller zeroes them first and steps the optimizer).
 * The penalty's gradient is exact (not a finite difference): with v_i = grad_x D(xh_i) held fixed,
 * d|v_i|/dtheta = (v_i / |v_i|) . d(grad_x D(xh_i))/dtheta, the parameter gradient of the directional
 * derivative of D along v_i / |v_i|. For a network of convolutions, dense layers and LeakyReLUs that
 * derivative is the same network without biases and with every LeakyReLU replaced by its slope at
 * xh_i (fixed: the second derivative of a LeakyReLU is zero almost everywhere) applied to v_i; it is
 * computed as a second "tangent" pass on g2 and backpropagated. g and g2: two graphs (reset here).
 * real, fake [n][in_ch side^2]; y [n][nextra] (NULL when nextra = 0). wdist, gp, gnorm (each may be
 * NULL) receive mean D(real) - mean D(fake) (the critic's Wasserstein estimate), mean (|grad| - 1)^2
 * and mean |grad|. */
LSSDEF int lss_wgan_gp_step(lss_graph *g, lss_graph *g2, lss_store *st, const lss_convnet *critic,
                            const float *real, const float *fake, const float *y, const float *eps, int n,
                            double lambda, double *wdist, double *gp, double *gnorm);

/* The conditional WGAN-GP of the cGAN paper as one object: critic, generator, their optimizers and the
 * training iteration (n_critic critic steps with the gradient penalty, then one generator step), for maps
 * [in_ch, side, side] conditioned on nparam parameters. The maps the networks see are x = kappa / scale +
 * offset (positive for a ReLU generator); the two numbers are a buffer of the generator's store
 * ("<gen>.xform"), so that a generator checkpoint is self-contained. Randomness: the latents and penalty
 * weights of iteration t come from (seed, LSS_STREAM_GAN, t, sub = critic step or n_critic for the
 * generator step), generated maps from (seed, LSS_STREAM_GAN, lss_set_index(LSS_SET_TEST, index), 0): a
 * resumed run and a re-run sampling give bitwise the same numbers. */
typedef struct {
    lss_convnet_opts critic;        /* nextra must equal nparam, nout 1 */
    lss_convgen_opts gen;           /* nin = the latent length, a multiple of nparam */
    int nparam;                     /* 1..8 conditioning parameters */
    double lo[8], hi[8];            /* their ranges for eq. 2 */
    double lambda;                  /* gradient-penalty weight (0: 10, the paper's) */
    int n_critic;                   /* critic steps per generator step (0: 5, the paper's) */
    int batch;                      /* maps per step (0: 64, the paper's) */
    lss_optim_opts opt_critic, opt_gen;  /* (zeroed: RMSProp, learning rate 1e-5, the paper's) */
    uint64_t seed;                  /* initial weights and training draws */
    int shards;                     /* data-parallel shards of each batch (lss_dp; 0 or 1: none; at most batch):
                                       every critic and generator gradient is the ordered sum of the shards'
                                       (the penalty and Wasserstein means taken per shard, weighted by its share),
                                       bitwise the same at any MPI rank count */
} lss_cgan_opts;
typedef struct {
    lss_cgan_opts o;
    lss_store *sc, *sg;             /* critic and generator parameters */
    lss_optim *oc, *og;
    lss_convnet critic;
    lss_convgen gen;
    lss_tensor *xform;              /* [2]: scale, offset */
    lss_graph *g, *g2, *ge;         /* training graphs and an evaluation graph */
    float *real, *fake, *y, *z, *eps, *zh;  /* batch buffers (zh: the rescaled latents) */
    lss_dp *dpc, *dpg;              /* data-parallel gradients of critic and generator (shards > 1) */
    double *shst;                   /* [shards][3] W estimate, penalty, mean |grad| of each critic shard */
} lss_cgan;
/* The paper's networks (Tables A1, A2) scaled: the critic convolves side x side maps with a 7 x 7 layer
 * of w0 channels, then nstride stride-2 layers (5 x 5, the last 3 x 3) doubling the channels, then dense
 * layers of wdense, wdense / 2, wdense / 4 (the parameters concatenated before them) and one output; the
 * generator mirrors it: latent nlatent, dense layers of wdense / 2 and wdense, one to the critic's last
 * feature map, nstride stride-2 transposed convolutions (3 x 3 first, then 5 x 5) halving the channels,
 * a 7 x 7 transposed convolution to one channel. The paper: side 128, nstride 4, w0 32, wdense 512,
 * nlatent 128. Sets o->critic, o->gen and nparam = 2 (other fields untouched); LSS_ERR_ARG when side is
 * not a multiple of 2^nstride or the sizes are out of range. */
LSSDEF int lss_cgan_opts_paper(int side, int nstride, int w0, int wdense, int nlatent, lss_cgan_opts *o);
/* Builds the networks ("critic", "gen" in their stores) and optimizers. Free with lss_cgan_free. */
LSSDEF int lss_cgan_init(lss_cgan *m, const lss_cgan_opts *opts);
LSSDEF void lss_cgan_free(lss_cgan *m);
/* One training iteration t: for k = 0 .. n_critic-1, draw(user, t, k, maps, y) fills a batch of real maps
 * (network units, [batch][in_ch side^2]) and their parameters ([batch][nparam]); generated maps at the same
 * parameters; one critic step. Then one generator step at the parameters of the last batch. stats (may be
 * NULL) receives [critic loss -W + lambda GP, W estimate, GP, mean |grad|, generator loss -mean D(G)] of the
 * last critic step and the generator step. Returns LSS_ERR_NUMERIC (parameters of that network unchanged)
 * when a gradient is not finite. */
LSSDEF int lss_cgan_step(lss_cgan *m, int64_t t, int (*draw)(void *user, int64_t t, int k, float *maps, float *y),
                         void *user, double *stats);
/* n maps from the latents z[n][nin] (NULL: drawn from the stream of maps index0, index0 + 1, ...) at
 * parameters y[n][nparam], in network units (kappa = (x - offset) * scale: lss_cgan_to_kappa) into
 * out[n][in_ch side^2]. */
LSSDEF int lss_cgan_generate(lss_cgan *m, const float *z, const float *y, int n, uint64_t index0, float *out);
/* Network units to convergence and back, in place, on n values. */
LSSDEF void lss_cgan_to_kappa(const lss_cgan *m, float *x, int64_t n);
LSSDEF void lss_cgan_from_kappa(const lss_cgan *m, float *x, int64_t n);

/* ---- normalizing flow (multiscale affine-coupling flow of the RealNVP / Glow family)
 * Maps x [N, 1, h, w] (the flow's space) to latents z ~ N(0, 1) by an invertible network with exact
 * log-determinant (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow):
 *   level 0: `steps` x [actnorm, checkerboard affine coupling] (the mask's parity alternates);
 *   level l = 1..levels: squeeze (lss_op_squeeze2d: C -> 4C, side / 2), then `steps` x [actnorm,
 *   invertible 1x1 convolution (or a fixed channel reversal), channel affine coupling]; below the last
 *   level half of the channels leave as latents (split) and the other half go on.
 * Actnorm: y = (x + b) exp(ls) per channel, initialised from the first training batch (zero mean, unit
 * variance per channel; log-det h w sum ls). 1x1 convolution: y = W x per pixel, W a random rotation at
 * the start (log-det h w ln|det W|). Affine coupling: the kept part x_a (channel half, or the checkerboard
 * cells) feeds a conditioner conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 (zero-initialised, so every
 * coupling starts as the identity) that gives (r, t); s = g tanh(r) (g learnt per channel, 1 at the start)
 * and the other part becomes x_b exp(s) + t (log-det sum s). With ncond > 0 the conditioning values
 * (given already scaled to about unit range) enter every conditioner as constant input channels.
 * Log-density: ln p(x) = sum ln N(z; 0, 1) + sum log-dets; a latent vector of a map is the concatenation
 * of the split latents in level order and the last level's output (lss_flow_dim values).
 * The transform between convergence and the flow's space is part of the model (kept in its store, so
 * checkpoints carry it): LSS_FLOW_AFFINE y = (kappa - mean) / std, or LSS_FLOW_LOG (the lognormal
 * model of kappa) y = (ln(kappa + shift) - mean) / std, defined for kappa > -shift. Densities of
 * convergence maps include its Jacobian: ln p(kappa) = ln p(y) + sum_i ln |dy_i / dkappa_i|. The maps
 * are continuous, so no dequantisation noise is added: these are densities, and bits per dimension at
 * a quantisation step delta follow as -ln p(kappa) / (D ln 2) - log2 delta (delta well below the
 * noise; it only shifts every model by the same constant). */
enum { LSS_FLOW_AFFINE = 0, LSS_FLOW_LOG = 1 };
#define LSS_FLOW_MAXLEVELS 6
#define LSS_FLOW_MAXCOND 8
typedef struct {
    int h, w;                /* map size, multiples of 2^levels (required) */
    int levels;              /* squeezes, 1..LSS_FLOW_MAXLEVELS (0: 3) */
    int steps;               /* flow steps per level, 1..32 (0: 4) */
    int hidden;              /* conditioner channels (0: 32) */
    int ncond;               /* conditioning values per map, 0..LSS_FLOW_MAXCOND */
    int permute;             /* 1: fixed channel reversal instead of the 1x1 convolutions */
    int periodic;            /* 1: the conditioners' 3x3 convolutions wrap around the edges (periodic maps);
                                0: zero padding (cut-outs of a larger sky) */
    uint64_t seed;           /* initialisation */
} lss_flow_opts;
typedef struct lss_flow lss_flow;
LSSDEF int lss_flow_create(const lss_flow_opts *o, lss_flow **out);
LSSDEF void lss_flow_free(lss_flow *f);
LSSDEF lss_store *lss_flow_store(lss_flow *f);     /* parameters and buffers (for lss_optim, lss_ckpt_*) */
LSSDEF const lss_flow_opts *lss_flow_options(const lss_flow *f);   /* with defaults filled in */
LSSDEF int64_t lss_flow_dim(const lss_flow *f);    /* h w */
/* The transform between convergence and the flow's space (kind LSS_FLOW_AFFINE or LSS_FLOW_LOG; std > 0;
 * shift > 0 for the log form). Without a call the transform is the identity (affine, mean 0, std 1). */
LSSDEF int lss_flow_set_transform(lss_flow *f, int kind, double shift, double mean, double std);
LSSDEF void lss_flow_get_transform(const lss_flow *f, int *kind, double *shift, double *mean, double *std);
/* kappa [n h w] -> y (may alias); logjac [n] (may be NULL) receives sum_i ln |dy_i / dkappa_i| per map.
 * LSS_ERR_NUMERIC naming the map for a non-finite value, LSS_ERR_RANGE for kappa <= -shift (log form). */
LSSDEF int lss_flow_to_flow(const lss_flow *f, int n, const float *kappa, float *y, double *logjac);
LSSDEF void lss_flow_to_kappa(const lss_flow *f, int n, const float *y, float *kappa);
/* Training objective in a graph: x [N, 1, h, w] in the flow's space, cond [N, ncond] (NULL when ncond 0);
 * returns the 0-D mean negative log-likelihood per dimension, -sum_n ln p(x_n) / (N h w) (nats, flow
 * space), ready for lss_backward. logp [N] (may be NULL) receives ln p(x_n) per map. The first call in
 * a training graph initialises the actnorm layers from this batch (data-dependent initialisation). */
LSSDEF lss_tensor *lss_flow_nll(lss_graph *g, lss_flow *f, lss_tensor *x, lss_tensor *cond, double *logp);
/* The latents of x in a graph, [N, lss_flow_dim] (differentiable: Jacobians, latent-space work; never initialises
 * the actnorm layers). */
LSSDEF lss_tensor *lss_flow_encode(lss_graph *g, lss_flow *f, lss_tensor *x, lss_tensor *cond);
/* Without a graph: latents z [n lss_flow_dim] (may be NULL) and ln p (logp [n], may be NULL) of maps y
 * in the flow's space. Work is done in chunks of at most 64 maps. */
LSSDEF int lss_flow_forward(lss_flow *f, int n, const float *y, const float *cond, float *z, double *logp);
/* The inverse: maps y [n h w] in the flow's space from latents z. */
LSSDEF int lss_flow_inverse(lss_flow *f, int n, const float *z, const float *cond, float *y);
/* ln p(kappa) per map [n] for convergence maps (the transform's Jacobian included). */
LSSDEF int lss_flow_logp(lss_flow *f, int n, const float *kappa, const float *cond, double *logp);
/* n convergence maps at a temperature (latents N(0, temperature^2)); map i uses the stream
 * (LSS_STREAM_FLOW, index0 + i) under seed, so any subset is reproducible. */
LSSDEF int lss_flow_sample(lss_flow *f, int n, const float *cond, double temperature, uint64_t seed, uint64_t index0,
                           float *kappa);

/* ==== GPU API (LSS_CUDA) ==== */
#ifdef LSS_CUDA
/* GPU primitives (lss_gpu.cu, built with nvcc and linked with -lcudnn -lcublas -lcudart; define
 * LSS_CUDA to see these declarations). They are tested for parity with the CPU code of this header
 * (tests/test_gpu.c, skipped without a device); no network or operation of this header calls them.
 * A context owns one device's stream, cuBLAS and cuDNN handles and a workspace; all work is queued
 * on its stream. Functions return LSS_OK or LSS_ERR_CUDA with a
 * message naming the failed call, its error string, file and line (LSS_ERR_ARG for bad arguments,
 * LSS_ERR_UNSUPPORTED when there is no device). Pointers named d... or passed to kernels are device
 * memory from lss_gpu_alloc; host pointers are named as such. A context is used by one thread at a
 * time. Arithmetic is strict fp32 by default (cuBLAS CUBLAS_COMPUTE_32F, cuDNN CUDNN_FMA_MATH, the
 * element-wise kernels round every operation as the CPU code does); lss_gpu_set_tf32 opts into TF32
 * tensor cores for SGEMM and convolutions. Results are deterministic: the same calls on the same
 * device give bitwise the same outputs (deterministic cuDNN algorithms only). */
#ifndef LSS_GPU_TYPE_DECLARED /* also declared by lss_maps.h's GPU map kernels */
#define LSS_GPU_TYPE_DECLARED
typedef struct lss_gpu lss_gpu;
#endif

/* Number of CUDA devices; *n = 0 and LSS_OK when there is no driver or no device. */
LSSDEF int lss_gpu_device_count(int *n);
/* Opens device `device` (0-based). LSS_ERR_UNSUPPORTED when there is no device, LSS_ERR_ARG when
 * `device` is out of range. Free with lss_gpu_free (NULL allowed). */
LSSDEF int lss_gpu_init(int device, lss_gpu **ctx);
LSSDEF void lss_gpu_free(lss_gpu *ctx);
/* The device's name, e.g. "NVIDIA H100 80GB HBM3" (truncated to n - 1 characters). */
LSSDEF int lss_gpu_name(const lss_gpu *ctx, char *buf, size_t n);
/* on = 1: TF32 tensor-core math for SGEMM and convolutions (faster, about 1e-3 relative error);
 * on = 0 (default): strict fp32. */
LSSDEF int lss_gpu_set_tf32(lss_gpu *ctx, int on);
/* Waits until all queued work is done (and reports asynchronous kernel failures). */
LSSDEF int lss_gpu_sync(lss_gpu *ctx);

/* ---- device buffers (the caller frees what it allocates with lss_gpu_dealloc) */
LSSDEF int lss_gpu_alloc(lss_gpu *ctx, size_t bytes, void **dptr);     /* uninitialised */
LSSDEF int lss_gpu_allocf(lss_gpu *ctx, int64_t n, float **dptr);       /* n floats, uninitialised */
LSSDEF void lss_gpu_dealloc(lss_gpu *ctx, void *dptr);                  /* NULL allowed */
/* Copies (synchronous: the host buffer may be reused when they return). */
LSSDEF int lss_gpu_upload(lss_gpu *ctx, void *dst, const void *host_src, size_t bytes);
LSSDEF int lss_gpu_download(lss_gpu *ctx, void *host_dst, const void *src, size_t bytes);
LSSDEF int lss_gpu_uploadf(lss_gpu *ctx, float *dst, const float *host_src, int64_t n);
LSSDEF int lss_gpu_downloadf(lss_gpu *ctx, float *host_dst, const float *src, int64_t n);
LSSDEF int lss_gpu_memset(lss_gpu *ctx, void *dptr, int byte, size_t bytes);
LSSDEF int lss_gpu_zerof(lss_gpu *ctx, float *dptr, int64_t n);

/* ---- SGEMM: the same row-major semantics and argument checks as lss_sgemm, on device buffers
 * (dimensions and leading dimensions up to INT_MAX). */
LSSDEF int lss_gpu_sgemm(lss_gpu *ctx, int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                         int64_t ldc);

/* ---- 2-D convolution (cross-correlation) as lss_op_conv2d: x [n,cin,h,w], w [cout,cin,kh,kw], b [cout],
 * y [n,cout,ho,wo] with ho = (h + 2 pad - kh) / stride + 1 (the same for wo). */
typedef struct {
    int n, cin, h, w;       /* input */
    int cout, kh, kw;       /* weight */
    int stride, pad;        /* stride >= 1, pad >= 0 in both directions */
} lss_gpu_conv_shape;
/* Output size; LSS_ERR_ARG/LSS_ERR_SHAPE for a bad shape (sizes < 1, input smaller than the kernel). */
LSSDEF int lss_gpu_conv2d_outsize(const lss_gpu_conv_shape *s, int *ho, int *wo);
/* y = conv(x, w) + b (b may be NULL). */
LSSDEF int lss_gpu_conv2d_forward(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *x, const float *w,
                                  const float *b, float *y);
/* dx += conv^T(dy, w) (accumulates, as lss_backward does). */
LSSDEF int lss_gpu_conv2d_backward_data(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *dy,
                                        const float *w, float *dx);
/* dw += dL/dw from x and dy; db += the sum of dy over n, ho, wo (db may be NULL). */
LSSDEF int lss_gpu_conv2d_backward_filter(lss_gpu *ctx, const lss_gpu_conv_shape *s, const float *x,
                                          const float *dy, float *dw, float *db);

/* ---- element-wise operations, the same formulas as lss_nn.h's CPU code (x, y, dy, gx: n floats;
 * y may equal x in the forward). p: slope (LEAKY), factor (SCALE), constant (ADDS), else unused. */
typedef enum { LSS_GPU_RELU = 0, LSS_GPU_LEAKY, LSS_GPU_SOFTPLUS, LSS_GPU_TANH, LSS_GPU_SIGMOID, LSS_GPU_EXP,
               LSS_GPU_LOG, LSS_GPU_SCALE, LSS_GPU_ADDS } lss_gpu_unop;
LSSDEF int lss_gpu_unary(lss_gpu *ctx, lss_gpu_unop op, float p, const float *x, float *y, int64_t n);
/* gx += dy op'(x), from x and y = op(x) as the CPU backward (tanh, sigmoid and exp use y). */
LSSDEF int lss_gpu_unary_backward(lss_gpu *ctx, lss_gpu_unop op, float p, const float *x, const float *y,
                                  const float *dy, float *gx, int64_t n);
/* y = a + b, a - b, a * b for equal shapes (y may equal a or b). */
typedef enum { LSS_GPU_ADD = 0, LSS_GPU_SUB, LSS_GPU_MUL } lss_gpu_binop;
LSSDEF int lss_gpu_binary(lss_gpu *ctx, lss_gpu_binop op, const float *a, const float *b, float *y, int64_t n);
/* ga += dy (MUL: dy b), gb += dy (SUB: -dy, MUL: dy a); ga or gb may be NULL, or both the same
 * buffer (the gradient of x * x). */
LSSDEF int lss_gpu_binary_backward(lss_gpu *ctx, lss_gpu_binop op, const float *a, const float *b,
                                   const float *dy, float *ga, float *gb, int64_t n);
/* One Adam (adamw = 0; weight decay added to the gradient) or AdamW (adamw = 1; decoupled decay)
 * update of n weights, bitwise the formula of lss_optim_step: t is the number of steps already
 * taken (bias corrections 1 - beta^(t+1)), lr the learning rate of this step. */
LSSDEF int lss_gpu_adam(lss_gpu *ctx, float *w, const float *g, float *m, float *v, int64_t n, double lr,
                        double beta1, double beta2, double eps, double weight_decay, int adamw, int64_t t);

/* ---- Philox draws on the device, the streams of lss_core.h (the map-domain kernels built on them,
 * lss_gpu_shape_noise, lss_gpu_random_flip and lss_gpu_scale_for_network, are declared in lss_maps.h).
 * Layouts: the fills reproduce the
 * sequential lss_rng draws of (seed, stream) started at block counter0 (lss_rng_init +
 * lss_rng_seek(counter0)): u32 and uniformf element i is word i % 4 of block counter0 + i / 4;
 * uniform (double) element i is words 2 (i % 2), 2 (i % 2) + 1 of block counter0 + i / 2; normal
 * element i is the cos (even i) or sin (odd i) Box-Muller value of block counter0 + i / 2, exactly
 * as consecutive lss_rng_normal calls (normalf: rounded to float). */
LSSDEF int lss_gpu_rand_u32(lss_gpu *ctx, uint32_t *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0);
LSSDEF int lss_gpu_rand_uniformf(lss_gpu *ctx, float *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0);
LSSDEF int lss_gpu_rand_uniform(lss_gpu *ctx, double *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0);
LSSDEF int lss_gpu_rand_normal(lss_gpu *ctx, double *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0);
LSSDEF int lss_gpu_rand_normalf(lss_gpu *ctx, float *d, int64_t n, uint64_t seed, uint64_t stream, uint64_t counter0);
#endif
/* ==== END GPU API ==== */

#ifdef __cplusplus
}
#endif
#endif /* LSS_NN_H */

/* ================================================================ implementation */
#ifdef LSS_NN_IMPLEMENTATION
#ifndef LSS_NN_IMPLEMENTATION_DONE
#define LSS_NN_IMPLEMENTATION_DONE

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#if defined(_OPENMP) && !defined(LSS_NO_OPENMP)
#include <omp.h>
#define LSS__OMP 1
#define LSS__PRAGMA(x) _Pragma(#x)
#else
#define LSS__PRAGMA(x)
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(LSS_CBLAS)
#include <immintrin.h>
#define LSS__AVX2 1 /* AVX2 copies in im2col (compile time) */
#endif
#if !defined(LSS_CBLAS) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LSS__X86 1 /* SGEMM kernels for AVX2 + FMA and AVX-512F, chosen at run time */
#define LSS__TA2 __attribute__((target("avx2,fma")))
#define LSS__TA5 __attribute__((target("avx512f,avx2,fma")))
#endif
#ifdef LSS_CBLAS
#include <cblas.h>
#define LSS__PANEL 0 /* convolution buffers in plain row-major layout for cblas_sgemm */
#else
#define LSS__PANEL 1 /* convolution buffers in the packed panel layout of the built-in SGEMM */
#endif

#define LSS__ALIGN 64
#define LSS__CHUNK 8192 /* fixed reduction chunk: sums do not depend on the thread count */

LSSDEF int lss_nn_threads(void) {
#ifdef LSS__OMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Sum of x[0..n) in double: chunks of LSS__CHUNK summed in parallel, chunk sums added in order. */
static double lss__dsum(const float *x, int64_t n) {
    int64_t nc = (n + LSS__CHUNK - 1) / LSS__CHUNK, c;
    double part[64], tot = 0;
    if (n <= 0) return 0;
    if (nc > 64) { /* large: sum blocks of chunks serially per block in order */
        int64_t i;
        for (i = 0; i < n; i += 64 * (int64_t)LSS__CHUNK) {
            int64_t m = n - i < 64 * (int64_t)LSS__CHUNK ? n - i : 64 * (int64_t)LSS__CHUNK;
            tot += lss__dsum(x + i, m);
        }
        return tot;
    }
    LSS__PRAGMA(omp parallel for schedule(static) if (n > 65536))
    for (c = 0; c < nc; c++) {
        int64_t i0 = c * LSS__CHUNK, i1 = i0 + LSS__CHUNK < n ? i0 + LSS__CHUNK : n, i;
        double s = 0;
        for (i = i0; i < i1; i++) s += x[i];
        part[c] = s;
    }
    for (c = 0; c < nc; c++) tot += part[c];
    return tot;
}
/* Sum of squares (same fixed order). */
static double lss__dsumsq(const float *x, int64_t n) {
    int64_t nc = (n + LSS__CHUNK - 1) / LSS__CHUNK, c;
    double part[64], tot = 0;
    if (n <= 0) return 0;
    if (nc > 64) {
        int64_t i;
        for (i = 0; i < n; i += 64 * (int64_t)LSS__CHUNK) {
            int64_t m = n - i < 64 * (int64_t)LSS__CHUNK ? n - i : 64 * (int64_t)LSS__CHUNK;
            tot += lss__dsumsq(x + i, m);
        }
        return tot;
    }
    LSS__PRAGMA(omp parallel for schedule(static) if (n > 65536))
    for (c = 0; c < nc; c++) {
        int64_t i0 = c * LSS__CHUNK, i1 = i0 + LSS__CHUNK < n ? i0 + LSS__CHUNK : n, i;
        double s = 0;
        for (i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[c] = s;
    }
    for (c = 0; c < nc; c++) tot += part[c];
    return tot;
}

LSSDEF int64_t lss_shape_count(int ndim, const int64_t *shape) {
    int64_t n = 1;
    int i;
    if (ndim < 0 || ndim > LSS_NN_MAXDIM || (ndim > 0 && !shape)) return -1;
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 1 || shape[i] > ((int64_t)1 << 40) || n > ((int64_t)1 << 46) / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

static void lss__shape_str(const lss_tensor *t, char *buf, size_t cap) {
    size_t k = 0;
    int i;
    if (!t) { snprintf(buf, cap, "(null)"); return; }
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (i = 0; i < t->ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

LSSDEF int lss_tensor_create(int ndim, const int64_t *shape, lss_tensor **out) {
    int64_t n = lss_shape_count(ndim, shape);
    lss_tensor *t;
    int i;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_tensor_create: NULL argument");
    *out = NULL;
    if (n < 0) return lss_seterr(LSS_ERR_SHAPE, "lss_tensor_create: bad shape (ndim %d)", ndim);
    t = (lss_tensor *)LSS_MALLOC(sizeof *t);
    if (!t) return lss_seterr(LSS_ERR_NOMEM, "lss_tensor_create: out of memory");
    memset(t, 0, sizeof *t);
    t->data = (float *)LSS_MALLOC((size_t)n * sizeof(float));
    if (!t->data) {
        LSS_FREE(t);
        return lss_seterr(LSS_ERR_NOMEM, "lss_tensor_create: out of memory for %lld floats", (long long)n);
    }
    memset(t->data, 0, (size_t)n * sizeof(float));
    t->ndim = ndim; t->n = n; t->flags = LSS_T_OWNED;
    for (i = 0; i < ndim; i++) t->shape[i] = shape[i];
    *out = t;
    return LSS_OK;
}

LSSDEF void lss_tensor_free(lss_tensor *t) {
    if (!t) return;
    if (t->flags & LSS_T_OWNED) { LSS_FREE(t->data); LSS_FREE(t->grad); LSS_FREE(t); }
}

/* ================================================================ CRC32 */
LSSDEF uint32_t lss_crc32(uint32_t crc, const void *buf, size_t n) {
    static const uint32_t poly = 0xEDB88320u;
    uint32_t tab[256];
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t c;
    size_t i;
    int k;
    for (i = 0; i < 256; i++) {
        c = (uint32_t)i;
        for (k = 0; k < 8; k++) c = (c & 1) ? poly ^ (c >> 1) : c >> 1;
        tab[i] = c;
    }
    c = crc ^ 0xFFFFFFFFu;
    for (i = 0; i < n; i++) c = tab[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ================================================================ SGEMM */
#define LSS__MR 6
#define LSS__NR 16
#define LSS__KC 256
#define LSS__MC 144
#define LSS__NC 2048 /* largest column block of a task */
#define LSS__GEMM_WS ((size_t)LSS__KC * LSS__NC + (size_t)LSS__MC * LSS__KC + 256)

/* Kernel choice (see lss_sgemm_kernel): 0 portable C, 1 AVX2 + FMA, 2 AVX-512F. On x86-64 with GCC or
 * clang the vector kernels are compiled with target attributes, whatever -march says, and chosen at
 * run time from the CPU's features, so one binary runs the best kernel on every x86-64 CPU. */
static int lss__gemm_lvl = -1;

static int lss__gemm_cpu(void) {
#ifdef LSS__X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static int lss__gemm_level(void) {
    int l = lss__gemm_lvl;
    if (l < 0) {
        const char *e = getenv("LSS_SGEMM_KERNEL");
        int cpu = lss__gemm_cpu();
        l = cpu;
        if (e && !strcmp(e, "c")) l = 0;
        else if (e && !strcmp(e, "avx2")) l = cpu < 1 ? cpu : 1;
        lss__gemm_lvl = l;
    }
    return l;
}

LSSDEF int lss_sgemm_kernel(int want) {
    int cpu = lss__gemm_cpu();
    if (want < 0) return lss__gemm_level();
    lss__gemm_lvl = want < cpu ? want : cpu;
    return lss__gemm_lvl;
}

LSSDEF const char *lss_sgemm_kernel_name(int level) {
    return level == 2 ? "avx512" : level == 1 ? "avx2" : level == 0 ? "c" : "unknown";
}

#ifndef LSS_CBLAS
/* Every kernel computes each element of its tile by the same operations: acc = 0, then acc = a_ik b_kj + acc
   for k in order (one rounding per step: fused multiply-add, or a product and a sum in portable C), then
   c = alpha acc (beta 0: c not read) or c = beta c + alpha acc (alpha acc rounded first, then one fused
   multiply-add). The AVX2 and AVX-512 kernels therefore give bitwise the same C. */

/* Portable micro-kernel: acc[6][16] = sum_k a[k*6 + i] b[k*16 + j]. */
static void lss__kern_c(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                        float beta) {
    float acc[LSS__MR][LSS__NR];
    int64_t k;
    int i, j;
    memset(acc, 0, sizeof acc);
    for (k = 0; k < kc; k++) {
        for (i = 0; i < LSS__MR; i++) {
            float ai = a[i];
            for (j = 0; j < LSS__NR; j++) acc[i][j] += ai * b[j];
        }
        a += LSS__MR; b += LSS__NR;
    }
    for (i = 0; i < LSS__MR; i++)
        for (j = 0; j < LSS__NR; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j] : beta * c[i * ldc + j] + alpha * acc[i][j];
}

#ifdef LSS__X86
/* AVX2 + FMA: a 6 x 16 tile in 12 registers of 8 floats; rows >= m are neither computed nor stored
   (m is 6, or 1-2 for the edge tiles of e.g. M = 128 = 21 x 6 + 2). */
LSS__TA2 static void lss__kern_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                                    float beta) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
           c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
           c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
           c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    __m256 b0, b1, av, va, vb;
    int64_t k;
    for (k = 0; k < kc; k++) {
        b0 = _mm256_load_ps(b); b1 = _mm256_load_ps(b + 8);
        av = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
        a += 6; b += 16;
    }
    va = _mm256_set1_ps(alpha);
    vb = _mm256_set1_ps(beta);
#define LSS__ST(r, x0, x1)                                                                        \
    do {                                                                                          \
        float *cr = c + (r) * ldc;                                                                \
        if (beta == 0.0f) {                                                                       \
            _mm256_storeu_ps(cr, _mm256_mul_ps(va, x0));                                          \
            _mm256_storeu_ps(cr + 8, _mm256_mul_ps(va, x1));                                      \
        } else {                                                                                  \
            _mm256_storeu_ps(cr, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), _mm256_mul_ps(va, x0)));  \
            _mm256_storeu_ps(cr + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), _mm256_mul_ps(va, x1))); \
        }                                                                                         \
    } while (0)
    LSS__ST(0, c00, c01); LSS__ST(1, c10, c11); LSS__ST(2, c20, c21);
    LSS__ST(3, c30, c31); LSS__ST(4, c40, c41); LSS__ST(5, c50, c51);
#undef LSS__ST
}

/* AVX2 + FMA, the first two rows of a tile only (into tmp, 16 floats a row, alpha 1, beta 0) */
LSS__TA2 static void lss__kern2_avx2(int64_t kc, const float *a, const float *b, float *tmp) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
           c11 = _mm256_setzero_ps(), b0, b1, av;
    int64_t k;
    for (k = 0; k < kc; k++) {
        b0 = _mm256_load_ps(b + k * LSS__NR); b1 = _mm256_load_ps(b + k * LSS__NR + 8);
        av = _mm256_broadcast_ss(a + k * LSS__MR); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + k * LSS__MR + 1); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    }
    _mm256_storeu_ps(tmp, c00); _mm256_storeu_ps(tmp + 8, c01);
    _mm256_storeu_ps(tmp + 16, c10); _mm256_storeu_ps(tmp + 24, c11);
}

/* AVX-512: a 6 x 16 tile, one 16-float register per row (edge tiles and a lone last panel) */
LSS__TA5 static void lss__kern_avx512(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                                      float beta) {
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps(), c3 = _mm512_setzero_ps(),
           c4 = _mm512_setzero_ps(), c5 = _mm512_setzero_ps(), bv, va, vb;
    int64_t k;
    for (k = 0; k < kc; k++) {
        bv = _mm512_load_ps(b);
        c0 = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), bv, c0);
        c1 = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), bv, c1);
        c2 = _mm512_fmadd_ps(_mm512_set1_ps(a[2]), bv, c2);
        c3 = _mm512_fmadd_ps(_mm512_set1_ps(a[3]), bv, c3);
        c4 = _mm512_fmadd_ps(_mm512_set1_ps(a[4]), bv, c4);
        c5 = _mm512_fmadd_ps(_mm512_set1_ps(a[5]), bv, c5);
        a += 6; b += 16;
    }
    va = _mm512_set1_ps(alpha);
    vb = _mm512_set1_ps(beta);
#define LSS__ST5(r, x)                                                                              \
    do {                                                                                            \
        float *cr = c + (r) * ldc;                                                                  \
        if (beta == 0.0f) _mm512_storeu_ps(cr, _mm512_mul_ps(va, x));                               \
        else _mm512_storeu_ps(cr, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), _mm512_mul_ps(va, x)));  \
    } while (0)
    LSS__ST5(0, c0); LSS__ST5(1, c1); LSS__ST5(2, c2); LSS__ST5(3, c3); LSS__ST5(4, c4); LSS__ST5(5, c5);
}

/* AVX-512: a 12 x 32 tile from two A panels (rows 0-5 from a0, 6-11 from a1) and two B panels (columns
   0-15 from b0, 16-31 from b1), in 24 registers: per k two loads of B, 12 broadcasts, 24 FMAs. */
LSS__TA5 static void lss__kern_avx512_12x32(int64_t kc, const float *a0, const float *a1, const float *b0,
                                            const float *b1, float *c, int64_t ldc, float alpha, float beta) {
    __m512 x00 = _mm512_setzero_ps(), x01 = _mm512_setzero_ps(), x10 = _mm512_setzero_ps(), x11 = _mm512_setzero_ps(),
           x20 = _mm512_setzero_ps(), x21 = _mm512_setzero_ps(), x30 = _mm512_setzero_ps(), x31 = _mm512_setzero_ps(),
           x40 = _mm512_setzero_ps(), x41 = _mm512_setzero_ps(), x50 = _mm512_setzero_ps(), x51 = _mm512_setzero_ps(),
           x60 = _mm512_setzero_ps(), x61 = _mm512_setzero_ps(), x70 = _mm512_setzero_ps(), x71 = _mm512_setzero_ps(),
           x80 = _mm512_setzero_ps(), x81 = _mm512_setzero_ps(), x90 = _mm512_setzero_ps(), x91 = _mm512_setzero_ps(),
           xa0 = _mm512_setzero_ps(), xa1 = _mm512_setzero_ps(), xb0 = _mm512_setzero_ps(), xb1 = _mm512_setzero_ps();
    __m512 p, q, av, va, vb;
    int64_t k;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
    for (k = 0; k < kc; k++) {
        p = _mm512_load_ps(b0); q = _mm512_load_ps(b1);
        av = _mm512_set1_ps(a0[0]); x00 = _mm512_fmadd_ps(av, p, x00); x01 = _mm512_fmadd_ps(av, q, x01);
        av = _mm512_set1_ps(a0[1]); x10 = _mm512_fmadd_ps(av, p, x10); x11 = _mm512_fmadd_ps(av, q, x11);
        av = _mm512_set1_ps(a0[2]); x20 = _mm512_fmadd_ps(av, p, x20); x21 = _mm512_fmadd_ps(av, q, x21);
        av = _mm512_set1_ps(a0[3]); x30 = _mm512_fmadd_ps(av, p, x30); x31 = _mm512_fmadd_ps(av, q, x31);
        av = _mm512_set1_ps(a0[4]); x40 = _mm512_fmadd_ps(av, p, x40); x41 = _mm512_fmadd_ps(av, q, x41);
        av = _mm512_set1_ps(a0[5]); x50 = _mm512_fmadd_ps(av, p, x50); x51 = _mm512_fmadd_ps(av, q, x51);
        av = _mm512_set1_ps(a1[0]); x60 = _mm512_fmadd_ps(av, p, x60); x61 = _mm512_fmadd_ps(av, q, x61);
        av = _mm512_set1_ps(a1[1]); x70 = _mm512_fmadd_ps(av, p, x70); x71 = _mm512_fmadd_ps(av, q, x71);
        av = _mm512_set1_ps(a1[2]); x80 = _mm512_fmadd_ps(av, p, x80); x81 = _mm512_fmadd_ps(av, q, x81);
        av = _mm512_set1_ps(a1[3]); x90 = _mm512_fmadd_ps(av, p, x90); x91 = _mm512_fmadd_ps(av, q, x91);
        av = _mm512_set1_ps(a1[4]); xa0 = _mm512_fmadd_ps(av, p, xa0); xa1 = _mm512_fmadd_ps(av, q, xa1);
        av = _mm512_set1_ps(a1[5]); xb0 = _mm512_fmadd_ps(av, p, xb0); xb1 = _mm512_fmadd_ps(av, q, xb1);
        a0 += 6; a1 += 6; b0 += 16; b1 += 16;
    }
    va = _mm512_set1_ps(alpha);
    vb = _mm512_set1_ps(beta);
#define LSS__ST52(r, x, y)                                                                               \
    do {                                                                                                 \
        float *cr = c + (r) * ldc;                                                                       \
        if (beta == 0.0f) {                                                                              \
            _mm512_storeu_ps(cr, _mm512_mul_ps(va, x));                                                  \
            _mm512_storeu_ps(cr + 16, _mm512_mul_ps(va, y));                                             \
        } else {                                                                                         \
            _mm512_storeu_ps(cr, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), _mm512_mul_ps(va, x)));        \
            _mm512_storeu_ps(cr + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr + 16), _mm512_mul_ps(va, y))); \
        }                                                                                                \
    } while (0)
    LSS__ST52(0, x00, x01); LSS__ST52(1, x10, x11); LSS__ST52(2, x20, x21); LSS__ST52(3, x30, x31);
    LSS__ST52(4, x40, x41); LSS__ST52(5, x50, x51); LSS__ST52(6, x60, x61); LSS__ST52(7, x70, x71);
    LSS__ST52(8, x80, x81); LSS__ST52(9, x90, x91); LSS__ST52(10, xa0, xa1); LSS__ST52(11, xb0, xb1);
#undef LSS__ST52
#undef LSS__ST5
}
#endif /* LSS__X86 */

/* A full 6 x 16 tile with the kernel of level lv */
static void lss__kern(int lv, int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                      float beta) {
#ifdef LSS__X86
    if (lv >= 2) { lss__kern_avx512(kc, a, b, c, ldc, alpha, beta); return; }
    if (lv == 1) { lss__kern_avx2(kc, a, b, c, ldc, alpha, beta); return; }
#endif
    (void)lv;
    lss__kern_c(kc, a, b, c, ldc, alpha, beta);
}

/* Edge tile: m x n valid elements of a 6 x 16 tile. */
static void lss__kern_edge(int lv, int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int m,
                           int n, float alpha, float beta) {
    float tmp[LSS__MR * LSS__NR];
    int i, j;
#ifdef LSS__X86
    if (lv == 1 && m <= 2) lss__kern2_avx2(kc, a, b, tmp); /* two rows only: a third of the work */
    else
#endif
    lss__kern(lv, kc, a, b, tmp, LSS__NR, 1.0f, 0.0f);
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * tmp[i * LSS__NR + j]
                                          : beta * c[i * ldc + j] + alpha * tmp[i * LSS__NR + j];
}

#ifdef LSS__X86
/* 8 x 8 transpose of r[0..7] in place. */
LSS__TA2 static inline void lss__tr8(__m256 *r) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* Packing fast paths (copies, so every path packs the same floats). tb 3, a full panel: 16 rows of k. */
LSS__TA2 static void lss__pack_b3_avx2(const float *blk, float *d) {
    int h, q, i;
    for (h = 0; h < 2; h++)     /* k half: t = 8h .. 8h+7 */
        for (q = 0; q < 2; q++) { /* j half: j = 8q .. 8q+7 */
            __m256 r[8];
            for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(blk + (8 * q + i) * 16 + 8 * h);
            lss__tr8(r); /* r[t'] = values for k = 8h + t', j = 8q .. 8q+7 */
            for (i = 0; i < 8; i++) _mm256_store_ps(d + (8 * h + i) * LSS__NR + 8 * q, r[i]);
        }
}
/* tb 0, a full panel: rows k of 16 floats */
LSS__TA2 static void lss__pack_b0_avx2(const float *sp, int64_t ldb, int64_t kc, float *d) {
    int64_t k;
    for (k = 0; k < kc; k++, sp += ldb) {
        _mm256_store_ps(d + k * LSS__NR, _mm256_loadu_ps(sp));
        _mm256_store_ps(d + k * LSS__NR + 8, _mm256_loadu_ps(sp + 8));
    }
}
/* tb 0, the np full panels of a column block at once, row by row (B is read in its storage order);
   returns np */
LSS__TA2 static int64_t lss__pack_b0_rows_avx2(const float *sp, int64_t ldb, int64_t kc, int64_t np, float *d) {
    int64_t k, j;
    for (k = 0; k < kc; k++, sp += ldb)
        for (j = 0; j < np; j++) {
            _mm256_store_ps(d + (j * kc + k) * LSS__NR, _mm256_loadu_ps(sp + j * LSS__NR));
            _mm256_store_ps(d + (j * kc + k) * LSS__NR + 8, _mm256_loadu_ps(sp + j * LSS__NR + 8));
        }
    return np;
}
/* tb 1, a full panel, k in steps of 8 (returns the k reached) */
LSS__TA2 static int64_t lss__pack_b1_avx2(const float *s0, int64_t ldb, int64_t kc, float *d) {
    int64_t k;
    for (k = 0; k + 8 <= kc; k += 8) {
        __m256 r[8], q[8];
        int i;
        for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(s0 + i * ldb + k);
        for (i = 0; i < 8; i++) q[i] = _mm256_loadu_ps(s0 + (8 + i) * ldb + k);
        lss__tr8(r);
        lss__tr8(q);
        for (i = 0; i < 8; i++) {
            _mm256_store_ps(d + (k + i) * LSS__NR, r[i]);
            _mm256_store_ps(d + (k + i) * LSS__NR + 8, q[i]);
        }
    }
    return k;
}
/* ta 1, a full panel: 8-float copies (the 2 extra floats are overwritten next) */
LSS__TA2 static void lss__pack_a1_avx2(const float *sp, int64_t lda, int64_t kc, float *d) {
    int64_t k;
    for (k = 0; k < kc; k++) _mm256_storeu_ps(d + k * LSS__MR, _mm256_loadu_ps(sp + k * lda));
}
/* ta 0, a full panel, k in steps of 8 (returns the k reached) */
LSS__TA2 static int64_t lss__pack_a0_avx2(const float *s0, int64_t lda, int64_t kc, float *d) {
    int64_t k;
    for (k = 0; k + 8 <= kc; k += 8) {
        __m256 r[8];
        int q;
        for (q = 0; q < 6; q++) r[q] = _mm256_loadu_ps(s0 + q * lda + k);
        r[6] = r[7] = _mm256_setzero_ps();
        lss__tr8(r);
        for (q = 0; q < 8; q++) _mm256_storeu_ps(d + (k + q) * LSS__MR, r[q]);
    }
    return k;
}
#endif /* LSS__X86 */

/* Packs a kc x 16 panel of op(B) (rows pc.., columns j0..j0+nn-1; zero beyond nn): d[k*16 + j]. */
/* tb: 0 B is K x N row-major (ldb); 1 B is N x K row-major (op(B) = B^T); 3 op(B) = S^T where S
 * (N rows) is stored in panel layout S(r, c) = B[(c / 16) N 16 + r 16 + c % 16] with its column
 * count padded to a multiple of 16 (zeros); then kc is rounded up to 16 (the rows past kc land in
 * the next panel's slot, packed later, or in the workspace slack). Mode 2 (op(B) itself in panel
 * layout) needs no packing. lv: the kernel level (>= 1: the AVX2 copies). */
static void lss__pack_b(int lv, int tb, const float *B, int64_t ldb, int64_t N, int64_t pc, int64_t j0, int64_t kc,
                        int64_t nn, float *d) {
    int64_t k = 0, j;
    (void)lv;
    if (tb == 3) {
        for (k = 0; k < kc; k += 16) {
            const float *blk = B + ((pc + k) / 16) * N * 16 + j0 * 16; /* row j: blk[j*16 + t] = op(B)(pc+k+t, j0+j) */
            int64_t t;
#ifdef LSS__X86
            if (lv >= 1 && nn == LSS__NR) { lss__pack_b3_avx2(blk, d + k * LSS__NR); continue; }
#endif
            for (t = 0; t < 16; t++) {
                for (j = 0; j < nn; j++) d[(k + t) * LSS__NR + j] = blk[j * 16 + t];
                for (j = nn; j < LSS__NR; j++) d[(k + t) * LSS__NR + j] = 0.0f;
            }
        }
        return;
    }
    if (!tb) {
#ifdef LSS__X86
        if (lv >= 1 && nn == LSS__NR) { lss__pack_b0_avx2(B + pc * ldb + j0, ldb, kc, d); return; }
#endif
        for (k = 0; k < kc; k++) {
            const float *sp = B + (pc + k) * ldb + j0;
            for (j = 0; j < nn; j++) d[k * LSS__NR + j] = sp[j];
            for (j = nn; j < LSS__NR; j++) d[k * LSS__NR + j] = 0.0f;
        }
        return;
    }
#ifdef LSS__X86
    if (lv >= 1 && nn == LSS__NR) k = lss__pack_b1_avx2(B + j0 * ldb + pc, ldb, kc, d);
#endif
    for (; k < kc; k++) {
        const float *sp = B + j0 * ldb + (pc + k);
        for (j = 0; j < nn; j++) d[k * LSS__NR + j] = sp[j * ldb];
        for (j = nn; j < LSS__NR; j++) d[k * LSS__NR + j] = 0.0f;
    }
}

/* Packs a 6 x kc panel of op(A) (rows i0..i0+mm-1, zero beyond mm): d[k*6 + i]. May write 2 floats
 * past the panel (the workspace has room; later panels overwrite them). */
static void lss__pack_a(int lv, int ta, const float *A, int64_t lda, int64_t pc, int64_t i0, int64_t kc, int64_t mm,
                        float *d) {
    int64_t k = 0, i;
    (void)lv;
    if (ta) {
#ifdef LSS__X86
        if (lv >= 1 && mm == LSS__MR && i0 + 8 <= lda) { lss__pack_a1_avx2(A + pc * lda + i0, lda, kc, d); return; }
#endif
        for (k = 0; k < kc; k++) {
            const float *sp = A + (pc + k) * lda + i0;
            for (i = 0; i < mm; i++) d[k * LSS__MR + i] = sp[i];
            for (i = mm; i < LSS__MR; i++) d[k * LSS__MR + i] = 0.0f;
        }
        return;
    }
#ifdef LSS__X86
    if (lv >= 1 && mm == LSS__MR) k = lss__pack_a0_avx2(A + i0 * lda + pc, lda, kc, d);
#endif
    for (; k < kc; k++) {
        for (i = 0; i < mm; i++) d[k * LSS__MR + i] = A[(i0 + i) * lda + pc + k];
        for (i = mm; i < LSS__MR; i++) d[k * LSS__MR + i] = 0.0f;
    }
}

/* The 6 x 16 tile (ir, jr) of a block: full or edge */
static void lss__tile(int lv, int64_t kc, const float *ap, const float *bq, float *cc, int64_t ldc, int mm, int nn,
                      float alpha, float be) {
    if (mm == LSS__MR && nn == LSS__NR) lss__kern(lv, kc, ap, bq, cc, ldc, alpha, be);
    else lss__kern_edge(lv, kc, ap, bq, cc, ldc, mm, nn, alpha, be);
}
#endif /* !LSS_CBLAS */

/* The blocked product. ws holds LSS__GEMM_WS floats for each of `wst` threads. C is cut into tasks
 * of whole LSS__MC-row blocks x ncs columns (multiples of the 6 x 16 tile, so whether a tile is a full
 * or an edge tile depends only on M and N); each task packs its own panels and runs through K in blocks
 * of LSS__KC in order. Every element of C therefore sees the same operations whatever the number of
 * threads and whichever thread runs its task; the only synchronisation is the end of the loop. */
static void lss__sgemm_ws(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                          float *ws, int wst) {
    int64_t mb, nt, mg, bpg, ntask, task, ncs;
    int par, lv;
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        int64_t i, j;
        for (i = 0; i < M; i++)
            for (j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
#ifdef LSS_CBLAS
    (void)ws; (void)wst; (void)mb; (void)nt; (void)mg; (void)bpg; (void)ntask; (void)task; (void)par; (void)ncs; (void)lv;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M,
                (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
#else
    lv = lss__gemm_level();
    mb = (M + LSS__MC - 1) / LSS__MC;
    /* Tasks: column chunks of ncs (a multiple of 16 in [256, LSS__NC], about N / 8) times groups of
     * row blocks, aiming at >= 8 tasks when threads share the work; one thread takes column chunks
     * of up to LSS__NC and all the rows, so that it packs every panel of A and B only once. A task
     * packs each of its B panels once per K block and reuses it over its row blocks. The split does
     * not change the result: tile kinds depend on M and N only. */
    par = wst > 1 && (double)M * (double)N * (double)K >= 16777216.0; /* below: too little work to share */
    if (par) {
        ncs = ((N + 7) / 8 + LSS__NR - 1) / LSS__NR * LSS__NR;
        if (ncs < 256) ncs = 256;
    } else
        ncs = (N + LSS__NR - 1) / LSS__NR * LSS__NR;
    if (ncs > LSS__NC) ncs = LSS__NC;
    nt = (N + ncs - 1) / ncs;
    mg = !par || nt >= 8 ? 1 : (8 + nt - 1) / nt;
    if (mg > mb) mg = mb;
    bpg = (mb + mg - 1) / mg;
    mg = (mb + bpg - 1) / bpg;
    ntask = mg * nt;
    par = par && ntask > 1;
    (void)par;
    LSS__PRAGMA(omp parallel for schedule(dynamic, 1) num_threads(wst) if (par))
    for (task = 0; task < ntask; task++) {
        int tid = 0;
        float *bp, *ap;
        int64_t r0 = (task / nt) * bpg * LSS__MC, r1 = r0 + bpg * LSS__MC, jc = (task % nt) * ncs, pc, ic;
        int64_t nc = N - jc < ncs ? N - jc : ncs, npan = (nc + LSS__NR - 1) / LSS__NR;
        if (r1 > M) r1 = M;
#ifdef LSS__OMP
        tid = omp_get_thread_num();
#endif
        bp = (float *)(((uintptr_t)(ws + (size_t)tid * LSS__GEMM_WS) + 63) & ~(uintptr_t)63);
        ap = bp + (size_t)LSS__KC * LSS__NC;
        for (pc = 0; pc < K; pc += LSS__KC) {
            int64_t kc = K - pc < LSS__KC ? K - pc : LSS__KC, jp;
            float be = pc == 0 ? beta : 1.0f;
            jp = 0;
#ifdef LSS__X86
            if (tb == 0 && lv >= 1) jp = lss__pack_b0_rows_avx2(B + pc * ldb + jc, ldb, kc, nc / LSS__NR, bp);
#endif
            for (; jp < npan; jp++) {
                int64_t j0 = jc + jp * LSS__NR;
                if (tb != 2) lss__pack_b(lv, tb, B, ldb, N, pc, j0, kc, N - j0 < LSS__NR ? N - j0 : LSS__NR, bp + jp * kc * LSS__NR);
            }
            for (ic = r0; ic < r1; ic += LSS__MC) {
                int64_t mc = r1 - ic < LSS__MC ? r1 - ic : LSS__MC, mpan = (mc + LSS__MR - 1) / LSS__MR, ip, jr, ir;
                /* tiles of 2 x 2 panels (12 x 32) at level 2, of one panel (6 x 16) otherwise */
                int64_t step = lv >= 2 ? 2 : 1;
                for (ip = 0; ip < mpan; ip++) {
                    int64_t i0 = ic + ip * LSS__MR;
                    lss__pack_a(lv, ta, A, lda, pc, i0, kc, M - i0 < LSS__MR ? M - i0 : LSS__MR, ap + ip * kc * LSS__MR);
                }
                for (jr = 0; jr < npan; jr += step)
                    for (ir = 0; ir < mpan; ir += step) {
                        int64_t i0 = ic + ir * LSS__MR, j0 = jc + jr * LSS__NR, u, v;
#ifdef LSS__X86
                        if (step == 2 && M - i0 >= 2 * LSS__MR && N - j0 >= 2 * LSS__NR && ir + 1 < mpan && jr + 1 < npan) {
                            const float *b0 = tb == 2 ? B + (j0 / LSS__NR) * K * LSS__NR + pc * LSS__NR : bp + jr * kc * LSS__NR;
                            const float *b1 = tb == 2 ? b0 + K * LSS__NR : b0 + kc * LSS__NR;
                            lss__kern_avx512_12x32(kc, ap + ir * kc * LSS__MR, ap + (ir + 1) * kc * LSS__MR, b0, b1,
                                                   C + i0 * ldc + j0, ldc, alpha, be);
                            continue;
                        }
#endif
                        for (v = jr; v < jr + step && v < npan; v++)
                            for (u = ir; u < ir + step && u < mpan; u++) {
                                int64_t i1 = ic + u * LSS__MR, j1 = jc + v * LSS__NR;
                                int mm = (int)(M - i1 < LSS__MR ? M - i1 : LSS__MR);
                                int nn = (int)(N - j1 < LSS__NR ? N - j1 : LSS__NR);
                                const float *bq = tb == 2 ? B + (j1 / LSS__NR) * K * LSS__NR + pc * LSS__NR : bp + v * kc * LSS__NR;
                                lss__tile(lv, kc, ap + u * kc * LSS__MR, bq, C + i1 * ldc + j1, ldc, mm, nn, alpha, be);
                            }
                    }
            }
        }
    }
#endif
}

LSSDEF int lss_sgemm(int transa, int transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    float *ws;
    int wst;
    if (M < 0 || N < 0 || K < 0 || !C || (K > 0 && (!A || !B)))
        return lss_seterr(LSS_ERR_ARG, "lss_sgemm: bad arguments (M %lld N %lld K %lld)", (long long)M,
                          (long long)N, (long long)K);
    if (ldc < N || (K > 0 && ((!transa && lda < K) || (transa && lda < M) || (!transb && ldb < N) ||
                              (transb && ldb < K))))
        return lss_seterr(LSS_ERR_ARG, "lss_sgemm: leading dimension too small");
    if (M == 0 || N == 0) return LSS_OK;
    transa = transa ? 1 : 0;
    transb = transb ? 1 : 0;
    wst = lss_nn_threads();
    ws = (float *)LSS_MALLOC(LSS__GEMM_WS * sizeof(float) * (size_t)wst);
    if (!ws) return lss_seterr(LSS_ERR_NOMEM, "lss_sgemm: out of memory for packing buffers");
    lss__sgemm_ws(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ws, wst);
    LSS_FREE(ws);
    return LSS_OK;
}

/* ================================================================ parameter store */
struct lss_store {
    uint64_t seed;
    int status;
    int n, cap;
    lss_tensor **t;      /* each allocated with its name after the struct */
    int64_t *off;        /* offset of tensor i in data/grad */
    float *data, *grad;
    int64_t size, capel, nparams;
};

LSSDEF int lss_store_create(uint64_t seed, lss_store **st) {
    lss_store *s;
    if (!st) return lss_seterr(LSS_ERR_ARG, "lss_store_create: NULL argument");
    *st = NULL;
    s = (lss_store *)LSS_MALLOC(sizeof *s);
    if (!s) return lss_seterr(LSS_ERR_NOMEM, "lss_store_create: out of memory");
    memset(s, 0, sizeof *s);
    s->seed = seed;
    *st = s;
    return LSS_OK;
}

LSSDEF void lss_store_free(lss_store *st) {
    int i;
    if (!st) return;
    for (i = 0; i < st->n; i++) LSS_FREE(st->t[i]);
    LSS_FREE(st->t); LSS_FREE(st->off); LSS_FREE(st->data); LSS_FREE(st->grad);
    LSS_FREE(st);
}

static void lss__fans(int ndim, const int64_t *shape, int64_t n, double *fi, double *fo) {
    if (ndim == 2) { *fi = (double)shape[0]; *fo = (double)shape[1]; }
    else if (ndim >= 3) {
        double rf = 1;
        int i;
        for (i = 2; i < ndim; i++) rf *= (double)shape[i];
        *fi = (double)shape[1] * rf; *fo = (double)shape[0] * rf;
    } else { *fi = *fo = (double)n; }
}

static void lss__init_fill(float *x, int64_t n, int ndim, const int64_t *shape, lss_init init, float fill,
                           uint64_t seed, uint64_t stream) {
    lss_rng r;
    double fi, fo, a;
    int64_t i;
    lss__fans(ndim, shape, n, &fi, &fo);
    lss_rng_init(&r, seed, stream);
    switch (init) {
    case LSS_INIT_ONE: for (i = 0; i < n; i++) x[i] = 1.0f; break;
    case LSS_INIT_HE: a = sqrt(2.0 / fi); for (i = 0; i < n; i++) x[i] = (float)(a * lss_rng_normal(&r)); break;
    case LSS_INIT_HE_UNIFORM:
        a = sqrt(6.0 / fi);
        for (i = 0; i < n; i++) x[i] = (float)(a * (2.0 * lss_rng_uniform(&r) - 1.0));
        break;
    case LSS_INIT_GLOROT:
        a = sqrt(6.0 / (fi + fo));
        for (i = 0; i < n; i++) x[i] = (float)(a * (2.0 * lss_rng_uniform(&r) - 1.0));
        break;
    case LSS_INIT_NORMAL: for (i = 0; i < n; i++) x[i] = (float)lss_rng_normal(&r); break;
    default: for (i = 0; i < n; i++) x[i] = fill; break;
    }
}

static lss_tensor *lss__store_add(lss_store *st, const char *name, int ndim, const int64_t *shape,
                                  lss_init init, float fill, int buffer) {
    int64_t n;
    size_t nl;
    lss_tensor *t;
    int i;
    if (!st) { lss_seterr(LSS_ERR_ARG, "lss_store_add: NULL store"); return NULL; }
    if (st->status) return NULL;
    if (!name || !*name || strlen(name) > 127) {
        st->status = lss_seterr(LSS_ERR_ARG, "lss_store_add: empty or too long tensor name");
        return NULL;
    }
    if ((int)init < 0 || init > LSS_INIT_NORMAL) {
        st->status = lss_seterr(LSS_ERR_ARG, "lss_store_add: '%s': unknown initialiser %d", name, (int)init);
        return NULL;
    }
    n = lss_shape_count(ndim, shape);
    if (n < 0) {
        st->status = lss_seterr(LSS_ERR_SHAPE, "lss_store_add: '%s': bad shape", name);
        return NULL;
    }
    if (lss_store_get(st, name)) {
        st->status = lss_seterr(LSS_ERR_ARG, "lss_store_add: duplicate tensor name '%s'", name);
        return NULL;
    }
    if (st->n == st->cap) {
        int nc = st->cap ? 2 * st->cap : 16;
        lss_tensor **nt = (lss_tensor **)LSS_REALLOC(st->t, (size_t)nc * sizeof *nt);
        int64_t *no;
        if (!nt) goto nomem;
        st->t = nt;
        no = (int64_t *)LSS_REALLOC(st->off, (size_t)nc * sizeof *no);
        if (!no) goto nomem;
        st->off = no;
        st->cap = nc;
    }
    if (st->size + n > st->capel) {
        int64_t nc = st->capel ? 2 * st->capel : 1024;
        float *nd, *ng;
        while (nc < st->size + n) nc *= 2;
        nd = (float *)LSS_REALLOC(st->data, (size_t)nc * sizeof(float));
        if (!nd) goto nomem;
        st->data = nd;
        ng = (float *)LSS_REALLOC(st->grad, (size_t)nc * sizeof(float));
        if (!ng) goto nomem;
        st->grad = ng;
        st->capel = nc;
        for (i = 0; i < st->n; i++) {
            st->t[i]->data = st->data + st->off[i];
            if (!(st->t[i]->flags & LSS_T_BUFFER)) st->t[i]->grad = st->grad + st->off[i];
        }
    }
    nl = strlen(name);
    t = (lss_tensor *)LSS_MALLOC(sizeof *t + nl + 1);
    if (!t) goto nomem;
    memset(t, 0, sizeof *t);
    memcpy((char *)(t + 1), name, nl + 1);
    t->name = (const char *)(t + 1);
    t->ndim = ndim; t->n = n;
    for (i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->flags = buffer ? LSS_T_BUFFER : LSS_T_PARAM;
    st->off[st->n] = st->size;
    t->data = st->data + st->size;
    t->grad = buffer ? NULL : st->grad + st->size;
    memset(st->grad + st->size, 0, (size_t)n * sizeof(float));
    lss__init_fill(t->data, n, ndim, shape, init, fill, st->seed, (uint64_t)st->n);
    st->t[st->n++] = t;
    st->size += n;
    if (!buffer) st->nparams += n;
    return t;
nomem:
    st->status = lss_seterr(LSS_ERR_NOMEM, "lss_store_add: out of memory adding '%s'", name);
    return NULL;
}

LSSDEF lss_tensor *lss_store_add(lss_store *st, const char *name, int ndim, const int64_t *shape,
                                 lss_init init) {
    return lss__store_add(st, name, ndim, shape, init, 0.0f, 0);
}
LSSDEF lss_tensor *lss_store_buffer(lss_store *st, const char *name, int ndim, const int64_t *shape,
                                    lss_init init, float fill) {
    return lss__store_add(st, name, ndim, shape, init, fill, 1);
}
LSSDEF int lss_store_status(const lss_store *st) { return st ? st->status : LSS_ERR_ARG; }
LSSDEF lss_tensor *lss_store_get(const lss_store *st, const char *name) {
    int i;
    if (!st || !name) return NULL;
    for (i = 0; i < st->n; i++)
        if (!strcmp(st->t[i]->name, name)) return st->t[i];
    return NULL;
}
LSSDEF int lss_store_ntensors(const lss_store *st) { return st ? st->n : 0; }
LSSDEF lss_tensor *lss_store_tensor(const lss_store *st, int i) {
    return st && i >= 0 && i < st->n ? st->t[i] : NULL;
}
LSSDEF int64_t lss_store_nparams(const lss_store *st) { return st ? st->nparams : 0; }
LSSDEF int64_t lss_store_size(const lss_store *st) { return st ? st->size : 0; }
LSSDEF float *lss_store_data(const lss_store *st) { return st ? st->data : NULL; }
LSSDEF float *lss_store_grad(const lss_store *st) { return st ? st->grad : NULL; }
LSSDEF void lss_store_zero_grad(lss_store *st) {
    if (st && st->grad && st->size) memset(st->grad, 0, (size_t)st->size * sizeof(float));
}
LSSDEF double lss_store_grad_norm(const lss_store *st) {
    double s = 0;
    int i;
    if (!st) return 0;
    for (i = 0; i < st->n; i++)
        if (st->t[i]->grad) s += lss__dsumsq(st->t[i]->grad, st->t[i]->n);
    return sqrt(s);
}
LSSDEF int lss_store_copy(lss_store *dst, const lss_store *src) {
    int i, k;
    if (!dst || !src) return lss_seterr(LSS_ERR_ARG, "lss_store_copy: NULL store");
    for (i = 0; i < src->n; i++) {
        lss_tensor *a = src->t[i], *b = lss_store_get(dst, a->name);
        if (!b) return lss_seterr(LSS_ERR_SHAPE, "lss_store_copy: destination lacks tensor '%s'", a->name);
        if (a->ndim != b->ndim) return lss_seterr(LSS_ERR_SHAPE, "lss_store_copy: '%s': shapes differ", a->name);
        for (k = 0; k < a->ndim; k++)
            if (a->shape[k] != b->shape[k])
                return lss_seterr(LSS_ERR_SHAPE, "lss_store_copy: '%s': shapes differ", a->name);
    }
    for (i = 0; i < src->n; i++) {
        lss_tensor *a = src->t[i], *b = lss_store_get(dst, a->name);
        memcpy(b->data, a->data, (size_t)a->n * sizeof(float));
    }
    return LSS_OK;
}

/* ================================================================ graph */
typedef struct lss__blk {
    struct lss__blk *next;
    size_t cap, used;
} lss__blk;

/* A tape entry. Every operation is defined in one place: its forward function (lss_op_xxx) computes
 * the output and records a node with its backward function and its parameters; the backward function
 * (lss__xxx_bwd, written just above the forward) adds the gradient of `out` to the gradients of the
 * inputs that have one. Adding an operation touches nothing else. */
typedef struct lss__node lss__node;
struct lss__node {
    void (*backward)(lss__node *nd);
    struct lss_graph *g;          /* the graph (SGEMM workspace) */
    lss_tensor *out, *in[3];
    union {                       /* the operation's parameters, one struct per family */
        struct { int stride, pad, relu; } conv;               /* (im2col columns recomputed in backward) */
        struct { int stride, pad; } convt;                    /* (x^T recomputed in backward) */
        struct { int k, stride; } pool;
        struct { int factor; } up;
        struct { int64_t outer, ia, ib; } cat;                 /* blocks of ia and ib floats, outer times */
        struct { int op; } bin;                                /* LSS__BIN_* */
        struct { float p; } unary;                             /* slope, factor or constant */
        struct { float *mean, *invstd; int train; } bn;        /* per channel */
        struct { float *u, *v; float sigma; int64_t rows; } sn;
        struct { int K; } gmm;
        struct { int64_t outer, full, off, len; } sl;          /* slice: blocks of len floats at off of full */
        struct { int inv; } sq;
        struct { double *inv; int n; } det;                     /* A^-1 (row-major) */
    } p;
    lss__node *prev;
};

struct lss_graph {
    lss__blk *blk;     /* current block first */
    size_t total;      /* capacity of all blocks */
    lss__node *tape;
    int status, training, record;
    float *ws;         /* SGEMM packing workspace, for wst threads */
    int wst;
    float *scratch;    /* reused buffers of operations whose inputs need no gradient (inference) */
    void *scratch_raw; /* its allocation (scratch is 64-byte aligned inside) */
    size_t scap;       /* floats */
};

LSSDEF int lss_graph_create(lss_graph **g) {
    lss_graph *h;
    if (!g) return lss_seterr(LSS_ERR_ARG, "lss_graph_create: NULL argument");
    *g = NULL;
    h = (lss_graph *)LSS_MALLOC(sizeof *h);
    if (!h) return lss_seterr(LSS_ERR_NOMEM, "lss_graph_create: out of memory");
    memset(h, 0, sizeof *h);
    h->wst = lss_nn_threads();
    h->ws = (float *)LSS_MALLOC(LSS__GEMM_WS * sizeof(float) * (size_t)h->wst);
    if (!h->ws) { LSS_FREE(h); return lss_seterr(LSS_ERR_NOMEM, "lss_graph_create: out of memory"); }
    h->training = h->record = 1;
    *g = h;
    return LSS_OK;
}

static void lss__blk_free_all(lss_graph *g) {
    lss__blk *b = g->blk;
    while (b) { lss__blk *nx = b->next; LSS_FREE(b); b = nx; }
    g->blk = NULL;
    g->total = 0;
}

LSSDEF void lss_graph_free(lss_graph *g) {
    if (!g) return;
    lss__blk_free_all(g);
    LSS_FREE(g->ws);
    LSS_FREE(g->scratch_raw);
    LSS_FREE(g);
}

#define LSS__BLKHDR ((sizeof(lss__blk) + LSS__ALIGN - 1) / LSS__ALIGN * LSS__ALIGN)

LSSDEF void lss_graph_reset(lss_graph *g) {
    if (!g) return;
    if (g->blk && g->blk->next) { /* merge into one block of the total size (steady state: no allocation) */
        size_t tot = g->total;
        lss__blk *b;
        lss__blk_free_all(g);
        b = (lss__blk *)LSS_MALLOC(LSS__BLKHDR + tot + LSS__ALIGN);
        if (b) { b->next = NULL; b->cap = tot; b->used = 0; g->blk = b; g->total = tot; }
    }
    if (g->blk) g->blk->used = 0;
    g->tape = NULL;
    g->status = LSS_OK;
}

static void *lss__alloc(lss_graph *g, size_t bytes) {
    lss__blk *b = g->blk;
    char *base;
    bytes = (bytes + LSS__ALIGN - 1) / LSS__ALIGN * LSS__ALIGN;
    if (!b || b->used + bytes > b->cap) {
        size_t cap = g->total > bytes ? g->total : bytes;
        if (cap < ((size_t)1 << 20)) cap = (size_t)1 << 20;
        b = (lss__blk *)LSS_MALLOC(LSS__BLKHDR + cap + LSS__ALIGN);
        if (!b) {
            if (!g->status) g->status = lss_seterr(LSS_ERR_NOMEM, "graph: out of memory (%zu bytes)", bytes);
            return NULL;
        }
        b->next = g->blk; b->cap = cap; b->used = 0;
        g->blk = b;
        g->total += cap;
    }
    base = (char *)(((uintptr_t)b + LSS__BLKHDR + LSS__ALIGN - 1) & ~(uintptr_t)(LSS__ALIGN - 1));
    base += b->used;
    b->used += bytes;
    return base;
}

static void *lss__zalloc(lss_graph *g, size_t bytes) {
    void *p = lss__alloc(g, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* Scratch space of n floats, valid until the next call (grown when needed, kept across resets). */
static float *lss__scratch(lss_graph *g, size_t n) {
    if (n > g->scap) {
        void *p = LSS_MALLOC((n + 64) * sizeof(float));
        if (!p) {
            if (!g->status) g->status = lss_seterr(LSS_ERR_NOMEM, "graph: out of memory (%zu bytes of scratch)", n * sizeof(float));
            return NULL;
        }
        LSS_FREE(g->scratch_raw);
        g->scratch_raw = p;
        g->scratch = (float *)(((uintptr_t)p + LSS__ALIGN - 1) & ~(uintptr_t)(LSS__ALIGN - 1));
        g->scap = n;
    }
    return g->scratch;
}

LSSDEF void lss_graph_set_training(lss_graph *g, int training) {
    if (g) g->training = g->record = training ? 1 : 0;
}
LSSDEF int lss_graph_training(const lss_graph *g) { return g ? g->training : 0; }
LSSDEF void lss_graph_set_record(lss_graph *g, int record) {
    if (g) g->record = record ? 1 : 0;
}
LSSDEF int lss_graph_status(const lss_graph *g) { return g ? g->status : LSS_ERR_ARG; }
LSSDEF size_t lss_graph_memory(const lss_graph *g) {
    return g ? g->total + (LSS__GEMM_WS * (size_t)g->wst + g->scap) * sizeof(float) : 0;
}

/* Records the first failure of the graph; returns NULL for the caller to return. */
static lss_tensor *lss__fail(lss_graph *g, int code, const char *fmt, const char *what, const char *detail) {
    if (g && !g->status) g->status = lss_seterr(code, fmt, what, detail ? detail : "");
    return NULL;
}

/* A new graph tensor; grad allocated (zeroed) when `need_grad`; data zeroed when `zero`. */
static lss_tensor *lss__new(lss_graph *g, int ndim, const int64_t *shape, int need_grad, int zero) {
    int64_t n = lss_shape_count(ndim, shape);
    lss_tensor *t;
    int i;
    if (n < 0) return lss__fail(g, LSS_ERR_SHAPE, "%s: bad shape%s", "graph", NULL);
    t = (lss_tensor *)lss__alloc(g, sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim; t->n = n;
    for (i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = (float *)(zero ? lss__zalloc(g, (size_t)n * sizeof(float)) : lss__alloc(g, (size_t)n * sizeof(float)));
    if (!t->data) return NULL;
    if (need_grad) {
        t->grad = (float *)lss__zalloc(g, (size_t)n * sizeof(float));
        if (!t->grad) return NULL;
    }
    return t;
}

LSSDEF lss_tensor *lss_tensor_new(lss_graph *g, int ndim, const int64_t *shape) {
    if (!g) { lss_seterr(LSS_ERR_ARG, "lss_tensor_new: NULL graph"); return NULL; }
    if (g->status) return NULL;
    return lss__new(g, ndim, shape, 0, 1);
}

LSSDEF lss_tensor *lss_view(lss_graph *g, float *data, int ndim, const int64_t *shape) {
    int64_t n;
    lss_tensor *t;
    int i;
    if (!g) { lss_seterr(LSS_ERR_ARG, "lss_view: NULL graph"); return NULL; }
    if (g->status) return NULL;
    if (!data) return lss__fail(g, LSS_ERR_ARG, "%s: NULL data%s", "lss_view", NULL);
    n = lss_shape_count(ndim, shape);
    if (n < 0) return lss__fail(g, LSS_ERR_SHAPE, "%s: bad shape%s", "lss_view", NULL);
    t = (lss_tensor *)lss__alloc(g, sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim; t->n = n; t->data = data;
    for (i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return t;
}

/* Common entry of every operation: graph ok, inputs non-NULL. */
static int lss__enter(lss_graph *g, const char *op, int nin, lss_tensor *a, lss_tensor *b, lss_tensor *c) {
    if (!g) { lss_seterr(LSS_ERR_ARG, "%s: NULL graph", op); return 0; }
    if (g->status) return 0;
    if (!a || (nin > 1 && !b) || (nin > 2 && !c)) {
        g->status = lss_seterr(LSS_ERR_ARG, "%s: NULL input tensor", op);
        return 0;
    }
    return 1;
}

static int lss__wants_grad(lss_graph *g, lss_tensor *a, lss_tensor *b, lss_tensor *c) {
    return g->record && ((a && a->grad) || (b && b->grad) || (c && c->grad));
}

static lss__node *lss__record(lss_graph *g, void (*backward)(lss__node *), lss_tensor *out, lss_tensor *a,
                              lss_tensor *b, lss_tensor *c) {
    lss__node *nd;
    if (!out->grad) return NULL; /* nothing flows back */
    nd = (lss__node *)lss__zalloc(g, sizeof *nd);
    if (!nd) return NULL;
    nd->backward = backward; nd->g = g; nd->out = out; nd->in[0] = a; nd->in[1] = b; nd->in[2] = c;
    nd->prev = g->tape;
    g->tape = nd;
    return nd;
}

static lss_tensor *lss__shape_err(lss_graph *g, const char *op, lss_tensor *a, lss_tensor *b) {
    char s1[96], s2[96], msg[256];
    lss__shape_str(a, s1, sizeof s1);
    lss__shape_str(b, s2, sizeof s2);
    snprintf(msg, sizeof msg, "%s and %s", s1, s2);
    return lss__fail(g, LSS_ERR_SHAPE, "%s: incompatible shapes %s", op, msg);
}

/* Records `out` with its backward function (nothing when no gradient flows); returns NULL from the
 * operation when the node cannot be allocated. */
#define LSS__REC(g, nd, backward, out, a, b, c)                                                   \
    lss__node *nd = lss__record(g, backward, out, a, b, c);                                       \
    if ((out)->grad && !nd) return NULL

/* ---------------------------------------------------------------- matmul and dense */
static void lss__matmul_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0], *b = nd->in[1];
    const float *go = y->grad;
    lss_graph *g = nd->g;
    int64_t M = a->shape[0], K = a->shape[1], N = b->shape[1];
    if (a->grad) lss__sgemm_ws(0, 1, M, K, N, 1.0f, go, N, b->data, N, 1.0f, a->grad, K, g->ws, g->wst);
    if (b->grad) lss__sgemm_ws(1, 0, K, N, M, 1.0f, a->data, K, go, N, 1.0f, b->grad, N, g->ws, g->wst);
}
LSSDEF lss_tensor *lss_op_matmul(lss_graph *g, lss_tensor *a, lss_tensor *b) {
    lss_tensor *y;
    int64_t sh[2];
    if (!lss__enter(g, "lss_op_matmul", 2, a, b, NULL)) return NULL;
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0]) return lss__shape_err(g, "lss_op_matmul", a, b);
    sh[0] = a->shape[0]; sh[1] = b->shape[1];
    y = lss__new(g, 2, sh, lss__wants_grad(g, a, b, NULL), 0);
    if (!y) return NULL;
    lss__sgemm_ws(0, 0, sh[0], sh[1], a->shape[1], 1.0f, a->data, a->shape[1], b->data, sh[1], 0.0f, y->data,
                  sh[1], g->ws, g->wst);
    {
        LSS__REC(g, nd, lss__matmul_bwd, y, a, b, NULL);
        (void)nd;
    }
    return y;
}

static void lss__dense_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0], *b = nd->in[1], *c = nd->in[2];
    const float *go = y->grad;
    lss_graph *g = nd->g;
    int64_t M = y->shape[0], N = y->shape[1], K = a->n / M, j;
    if (a->grad) lss__sgemm_ws(0, 1, M, K, N, 1.0f, go, N, b->data, N, 1.0f, a->grad, K, g->ws, g->wst);
    if (b->grad) lss__sgemm_ws(1, 0, K, N, M, 1.0f, a->data, K, go, N, 1.0f, b->grad, N, g->ws, g->wst);
    if (c && c->grad)
        for (j = 0; j < N; j++) {
            double s = 0;
            int64_t i;
            for (i = 0; i < M; i++) s += go[i * N + j];
            c->grad[j] += (float)s;
        }
}
LSSDEF lss_tensor *lss_op_dense(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b) {
    lss_tensor *y;
    int64_t sh[2], nin, i, j;
    if (!lss__enter(g, "lss_op_dense", 2, x, w, NULL)) return NULL;
    if (x->ndim < 1) return lss__shape_err(g, "lss_op_dense", x, w);
    nin = x->n / x->shape[0];
    if (w->ndim != 2 || w->shape[0] != nin) return lss__shape_err(g, "lss_op_dense (input, weight)", x, w);
    if (b && (b->n != w->shape[1])) return lss__shape_err(g, "lss_op_dense (weight, bias)", w, b);
    sh[0] = x->shape[0]; sh[1] = w->shape[1];
    y = lss__new(g, 2, sh, lss__wants_grad(g, x, w, b), 0);
    if (!y) return NULL;
    if (b) {
        for (i = 0; i < sh[0]; i++)
            for (j = 0; j < sh[1]; j++) y->data[i * sh[1] + j] = b->data[j];
    }
    lss__sgemm_ws(0, 0, sh[0], sh[1], nin, 1.0f, x->data, nin, w->data, sh[1], b ? 1.0f : 0.0f, y->data, sh[1],
                  g->ws, g->wst);
    {
        LSS__REC(g, nd, lss__dense_bwd, y, x, w, b);
        (void)nd;
    }
    return y;
}

/* ---------------------------------------------------------------- convolution helpers */
/* col[(c*kh + ki)*kw + kj][n*Ho*Wo + p] = x[n, c, oy*s - pad + ki, ox*s - pad + kj] (0 outside). */
/* tab[(ki kw + kj) P + oy Wo + ox] = iy W + ix of the input pixel under tap (ki, kj) of output
 * (oy, ox), or -1 where it falls in the zero padding. */
static void lss__conv_table(int64_t H, int64_t W, int kh, int kw, int s, int pad, int64_t Ho, int64_t Wo, int32_t *tab) {
    int64_t ki, kj, oy, ox, P = Ho * Wo;
    for (ki = 0; ki < kh; ki++)
        for (kj = 0; kj < kw; kj++)
            for (oy = 0; oy < Ho; oy++)
                for (ox = 0; ox < Wo; ox++) {
                    int64_t iy = oy * s - pad + ki, ix = ox * s - pad + kj;
                    tab[(ki * kw + kj) * P + oy * Wo + ox] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? (int32_t)(iy * W + ix) : -1;
                }
}

/* With rowbuf != NULL (wst rows of N Ho Wo floats, one per thread) col is written in panel layout
 * col[(j / 16) K 16 + r 16 + j % 16] (K = C kh kw rows, columns padded to a multiple of 16 with
 * zeros), the packed form the SGEMM reads directly (tb = 2) and transposed (tb = 3). */
#ifdef LSS__X86
/* im2col straight into the panel layout, AVX-512: the 16 columns of a panel (16 output pixels of any samples) are
   16 lanes; every row (channel, tap) is one masked gather of their inputs (zero in the padding) and one 64-byte
   store, so col is written in order. A copy: the same floats as the scalar path. Needs N C H W < 2^31. */
LSS__TA5 static void lss__im2col_panel_avx512(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int kh,
                                              int kw, int s, int pad, int64_t Ho, int64_t Wo, float *col, int64_t q) {
    int64_t rows = C * kh * kw, P = Ho * Wo, NP = N * P;
    int32_t iy0[16], ix0[16], off[16];
    int t, c, ki, kj;
    float *d = col + q * rows * 16;
    __m512i viy, vix, voff, vH = _mm512_set1_epi32((int)H), vW = _mm512_set1_epi32((int)W), z = _mm512_setzero_si512();
    for (t = 0; t < 16; t++) {
        int64_t j = q * 16 + t;
        if (j < NP) {
            int64_t n = j / P, p = j % P, oy = p / Wo, ox = p % Wo;
            iy0[t] = (int32_t)(oy * s - pad);
            ix0[t] = (int32_t)(ox * s - pad);
            off[t] = (int32_t)(n * C * H * W + (int64_t)iy0[t] * W + ix0[t]);
        } else { /* past the last column: never in the image */
            iy0[t] = -(int32_t)(kh + 1);
            ix0[t] = 0;
            off[t] = 0;
        }
    }
    viy = _mm512_loadu_si512((const void *)iy0);
    vix = _mm512_loadu_si512((const void *)ix0);
    voff = _mm512_loadu_si512((const void *)off);
    for (c = 0; c < C; c++)
        for (ki = 0; ki < kh; ki++) {
            __m512i yy = _mm512_add_epi32(viy, _mm512_set1_epi32(ki));
            __mmask16 my = _mm512_cmpge_epi32_mask(yy, z) & _mm512_cmplt_epi32_mask(yy, vH);
            for (kj = 0; kj < kw; kj++, d += 16) {
                __m512i xx = _mm512_add_epi32(vix, _mm512_set1_epi32(kj));
                __mmask16 m = my & _mm512_cmpge_epi32_mask(xx, z) & _mm512_cmplt_epi32_mask(xx, vW);
                __m512i idx = _mm512_add_epi32(voff, _mm512_set1_epi32((int)(c * H * W + ki * W + kj)));
                _mm512_store_ps(d, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4));
            }
        }
}
/* all panels, threaded (the parallel loop outside the target function: compilers outline it without the target) */
static void lss__im2col_panels_avx512(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int kh, int kw, int s,
                                      int pad, int64_t Ho, int64_t Wo, float *col, int wst) {
    int64_t rows = C * kh * kw, NP = N * Ho * Wo, nq = (NP + 15) / 16, q;
    (void)wst; (void)rows;
    LSS__PRAGMA(omp parallel for schedule(static) num_threads(wst) if (rows * NP > 1048576))
    for (q = 0; q < nq; q++) lss__im2col_panel_avx512(x, N, C, H, W, kh, kw, s, pad, Ho, Wo, col, q);
}
/* the adjoint: x[tb[p]] += src[p] for the 16 pixels of each sample (distinct inputs within a tap, so a gather, an
   add and a scatter do exactly the scalar path's additions) */
LSS__TA5 static void lss__col2im16_avx512(const float *src, int64_t N, const int32_t *tb, float *x, int64_t xstride) {
    __m512i idx = _mm512_loadu_si512((const void *)tb);
    __mmask16 m = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
    int64_t n;
    for (n = 0; n < N; n++, x += xstride, src += 16) {
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4);
        _mm512_mask_i32scatter_ps(x, m, idx, _mm512_add_ps(v, _mm512_loadu_ps(src)), 4);
    }
}
#endif

static void lss__im2col(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int kh, int kw, int s,
                        int pad, int64_t Ho, int64_t Wo, float *col, float *rowbuf, int wst) {
    int64_t rows = C * kh * kw, P = Ho * Wo, NP = N * P, r;
    int32_t tab[4096]; /* small output planes: input offset of every (tap, output pixel), -1 in the padding */
    int small = P <= 64 && (int64_t)kh * kw * P <= 4096 && H * W < ((int64_t)1 << 30);
    (void)wst;
#ifdef LSS__X86
    if (rowbuf && lss__gemm_level() >= 2 && N * C * H * W < ((int64_t)1 << 31)) {
        lss__im2col_panels_avx512(x, N, C, H, W, kh, kw, s, pad, Ho, Wo, col, wst);
        return;
    }
#endif
    if (small) lss__conv_table(H, W, kh, kw, s, pad, Ho, Wo, tab);
    LSS__PRAGMA(omp parallel for schedule(static) num_threads(wst) if (rows * NP > 1048576))
    for (r = 0; r < rows; r++) {
        int64_t c = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw, n, oy, ox;
        int tid = 0;
        float *dst;
#ifdef LSS__OMP
        tid = omp_get_thread_num();
#endif
        dst = rowbuf ? rowbuf + (size_t)tid * NP : col + r * NP;
        if (small) {
            const int32_t *tb = tab + (ki * kw + kj) * P;
            int64_t p;
            for (n = 0; n < N; n++) {
                const float *xs = x + (n * C + c) * H * W;
                float *d = dst + n * P;
                for (p = 0; p < P; p++) d[p] = tb[p] >= 0 ? xs[tb[p]] : 0.0f;
            }
            (void)oy; (void)ox;
        } else
        for (n = 0; n < N; n++) {
            const float *xs = x + (n * C + c) * H * W;
            float *d = dst + n * P;
            for (oy = 0; oy < Ho; oy++) {
                int64_t iy = oy * s - pad + ki;
                float *dr = d + oy * Wo;
                if (iy < 0 || iy >= H) { for (ox = 0; ox < Wo; ox++) dr[ox] = 0.0f; continue; }
                {
                    /* ox range with 0 <= ox s - pad + kj < W; zeros outside */
                    int64_t lo = pad - kj > 0 ? (pad - kj + s - 1) / s : 0, hi = (W - 1 + pad - kj) / s + 1;
                    const float *xr = xs + iy * W;
                    int64_t base = kj - pad;
                    if (W - 1 + pad - kj < 0) hi = 0;
                    if (hi > Wo) hi = Wo;
                    if (lo > hi) lo = hi;
                    for (ox = 0; ox < lo; ox++) dr[ox] = 0.0f;
                    if (s == 1) { for (ox = lo; ox < hi; ox++) dr[ox] = xr[ox + base]; }
                    else {
                        ox = lo;
#ifdef LSS__AVX2
                        if (s == 2) /* even lanes of two loads; the last odd lane read stays inside the row */
                            for (; ox + 8 <= hi && base + 2 * ox + 15 < W; ox += 8) {
                                __m256 v0 = _mm256_loadu_ps(xr + base + 2 * ox), v1 = _mm256_loadu_ps(xr + base + 2 * ox + 8);
                                __m256 e = _mm256_shuffle_ps(v0, v1, 0x88);
                                _mm256_storeu_ps(dr + ox, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
                            }
#endif
                        for (; ox < hi; ox++) dr[ox] = xr[ox * s + base];
                    }
                    for (ox = hi; ox < Wo; ox++) dr[ox] = 0.0f;
                }
            }
        }
        if (rowbuf) {
            int64_t q, nq = NP / 16, t;
            for (q = 0; q < nq; q++) {
                float *o = col + q * rows * 16 + r * 16;
#ifdef LSS__AVX2
                _mm256_storeu_ps(o, _mm256_loadu_ps(dst + q * 16));
                _mm256_storeu_ps(o + 8, _mm256_loadu_ps(dst + q * 16 + 8));
#else
                for (t = 0; t < 16; t++) o[t] = dst[q * 16 + t];
#endif
            }
            if (NP % 16) {
                float *o = col + nq * rows * 16 + r * 16;
                for (t = 0; t < 16; t++) o[t] = nq * 16 + t < NP ? dst[nq * 16 + t] : 0.0f;
            }
            (void)t;
        }
    }
}

/* x[n, c, ...] += col (the adjoint of im2col). Parallel over channels; each channel streams through
 * its kh kw rows of col in order, so every element of x receives its terms in a fixed order. */
static void lss__col2im_add(const float *col, int64_t N, int64_t C, int64_t H, int64_t W, int kh, int kw,
                            int s, int pad, int64_t Ho, int64_t Wo, float *x) {
    int64_t P = Ho * Wo, NP = N * P, c;
    int32_t tab[4096];
    int small = P <= 64 && (int64_t)kh * kw * P <= 4096 && H * W < ((int64_t)1 << 30), lv = lss__gemm_level();
    (void)lv;
    if (small) lss__conv_table(H, W, kh, kw, s, pad, Ho, Wo, tab);
    LSS__PRAGMA(omp parallel for schedule(static) if (N * C * kh * kw * P > 1048576))
    for (c = 0; c < C; c++) {
        int64_t ki, kj, n, oy, ox;
        if (small) { /* each input pixel gets at most one term per tap: the same order as below */
            int64_t t, p;
            for (t = 0; t < (int64_t)kh * kw; t++) {
                const float *row = col + (c * kh * kw + t) * NP;
                const int32_t *tb = tab + t * P;
#ifdef LSS__X86
                if (P == 16 && lv >= 2) {
                    lss__col2im16_avx512(row, N, tb, x + c * H * W, C * H * W);
                    continue;
                }
#endif
                for (n = 0; n < N; n++) {
                    float *xs = x + (n * C + c) * H * W;
                    const float *src = row + n * P;
                    for (p = 0; p < P; p++)
                        if (tb[p] >= 0) xs[tb[p]] += src[p];
                }
            }
            continue;
        }
        for (ki = 0; ki < kh; ki++)
            for (kj = 0; kj < kw; kj++) {
                const float *row = col + ((c * kh + ki) * kw + kj) * NP;
                /* ox range with 0 <= ox s - pad + kj < W */
                int64_t lo = pad - kj > 0 ? (pad - kj + s - 1) / s : 0, hi = (W - 1 + pad - kj) / s + 1;
                if (W - 1 + pad - kj < 0) hi = 0;
                if (hi > Wo) hi = Wo;
                for (n = 0; n < N; n++) {
                    float *xs = x + (n * C + c) * H * W;
                    const float *src = row + n * P;
                    for (oy = 0; oy < Ho; oy++) {
                        int64_t iy = oy * s - pad + ki, base = iy * W - pad + kj;
                        const float *sr = src + oy * Wo;
                        if (iy < 0 || iy >= H) continue;
                        if (s == 1) for (ox = lo; ox < hi; ox++) xs[base + ox] += sr[ox];
                        else for (ox = lo; ox < hi; ox++) xs[base + ox * s] += sr[ox];
                    }
                }
            }
    }
}

/* [C, N*P] <-> [N, C, P] */
static void lss__cnp_to_ncp(const float *src, int64_t N, int64_t C, int64_t P, float *dst, int add) {
    int64_t pl;
    LSS__PRAGMA(omp parallel for schedule(static) if (N * C * P > 1048576))
    for (pl = 0; pl < N * C; pl++) {
        int64_t n = pl / C, c = pl % C, p;
        const float *s = src + c * N * P + n * P;
        float *d = dst + pl * P;
        if (add) for (p = 0; p < P; p++) d[p] += s[p];
        else memcpy(d, s, (size_t)P * sizeof(float));
    }
}
static void lss__ncp_to_cnp(const float *src, int64_t N, int64_t C, int64_t P, float *dst) {
    int64_t pl;
    LSS__PRAGMA(omp parallel for schedule(static) if (N * C * P > 1048576))
    for (pl = 0; pl < N * C; pl++) {
        int64_t n = pl / C, c = pl % C;
        memcpy(dst + c * N * P + n * P, src + pl * P, (size_t)P * sizeof(float));
    }
}

/* Per-channel sums of g [N, C, P] added to db[C] (double, fixed order). */
static void lss__chan_sum_add(const float *g, int64_t N, int64_t C, int64_t P, float *db) {
    int64_t c;
    LSS__PRAGMA(omp parallel for schedule(static) if (N * C * P > 1048576))
    for (c = 0; c < C; c++) {
        double s = 0;
        int64_t n, p;
        for (n = 0; n < N; n++) {
            const float *r = g + (n * C + c) * P;
            for (p = 0; p < P; p++) s += r[p];
        }
        db[c] += (float)s;
    }
}

/* Samples per im2col chunk: all N, or fewer when the columns of all N would exceed LSS__COL_MAX floats (the
   convolution then runs chunk by chunk through one buffer: at 384 x 384 inputs, batch 32, the columns of
   one layer would hold 3.8 GB). Depends on the shapes only, so results do not depend on the machine. */
#define LSS__COL_MAX ((int64_t)1 << 22)
static int64_t lss__col_max = LSS__COL_MAX; /* (a variable so that the tests can make chunks small) */
static int64_t lss__conv_chunk(int64_t N, int64_t K, int64_t P) {
    int64_t per = K * P, nc = per > 0 ? lss__col_max / per : N;
    return nc >= N ? N : nc < 1 ? 1 : nc;
}

/* The scratch of a convolution with K = C kh kw rows of im2col, NPc columns per chunk and ntmp floats of output:
   col (K rows of NPc rounded up to 16, panel layout), then *tmp (ntmp), then *rowbuf (NPc per thread). NULL
   (the graph's status set) when there is no memory. */
static float *lss__conv_scratch(lss_graph *g, int64_t K, int64_t NPc, int64_t ntmp_, float **tmp, float **rowbuf) {
    size_t ncol = (size_t)(K * ((NPc + 15) / 16 * 16)), ntmp = (size_t)ntmp_, nrow = (size_t)NPc * (size_t)g->wst;
    float *col = lss__scratch(g, ncol + ntmp + nrow + 32);
    if (!col) return NULL;
    *tmp = col + (ncol + 15) / 16 * 16;
    *rowbuf = *tmp + (ntmp + 15) / 16 * 16;
    return col;
}

static void lss__conv2d_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0], *b = nd->in[1], *c = nd->in[2];
    const float *go = y->grad;
    lss_graph *g = nd->g;
    int64_t N = a->shape[0], C = a->shape[1], H = a->shape[2], W = a->shape[3];
    int64_t Co = b->shape[0], kh = b->shape[2], kw = b->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    int64_t K = C * kh * kw, P = Ho * Wo, NP = N * P, nc = lss__conv_chunk(N, K, P), n0;
    int st = nd->p.conv.stride, pd = nd->p.conv.pad;
    float *gt, *rowbuf, *col = lss__conv_scratch(g, K, nc * P, Co * NP, &gt, &rowbuf);
    if (!col) return;
    if (nd->p.conv.relu) { /* the ReLU's backward: dY masked where the output is 0 (0 + dy as the separate op adds) */
        int64_t pl;
        const float *yo = y->data;
        LSS__PRAGMA(omp parallel for schedule(static) if (NP * Co > 1048576))
        for (pl = 0; pl < N * Co; pl++) {
            int64_t n = pl / Co, ch = pl % Co, p;
            const float *gs = go + pl * P, *ys = yo + pl * P;
            float *d = gt + ch * NP + n * P;
            for (p = 0; p < P; p++) d[p] = ys[p] > 0 ? 0.0f + gs[p] : 0.0f;
        }
        if (c && c->grad) { /* per-channel sums in the order of lss__chan_sum_add */
            int64_t ch;
            LSS__PRAGMA(omp parallel for schedule(static) if (NP * Co > 1048576))
            for (ch = 0; ch < Co; ch++) {
                double sm = 0;
                int64_t k;
                for (k = 0; k < NP; k++) sm += gt[ch * NP + k];
                c->grad[ch] += (float)sm;
            }
        }
    } else {
        lss__ncp_to_cnp(go, N, Co, P, gt);
        if (c && c->grad) lss__chan_sum_add(go, N, Co, P, c->grad);
    }
    for (n0 = 0; n0 < N; n0 += nc) {
        int64_t m = N - n0 < nc ? N - n0 : nc, np = m * P;
        if (b->grad) {
            /* the forward's columns again, from x (recomputing costs less than keeping them: see lss_op_conv2d) */
            lss__im2col(a->data + n0 * C * H * W, m, C, H, W, (int)kh, (int)kw, st, pd, Ho, Wo, col,
                        LSS__PANEL ? rowbuf : NULL, g->wst);
            lss__sgemm_ws(0, LSS__PANEL ? 3 : 1, Co, K, np, 1.0f, gt + n0 * P, NP, col, LSS__PANEL ? K : np, 1.0f, b->grad, K,
                          g->ws, g->wst);
        }
        if (a->grad) {
            /* dcol = W^T dY^T, written over col (no longer needed) */
            lss__sgemm_ws(1, 0, K, np, Co, 1.0f, b->data, K, gt + n0 * P, NP, 0.0f, col, np, g->ws, g->wst);
            lss__col2im_add(col, m, C, H, W, (int)kh, (int)kw, st, pd, Ho, Wo, a->grad + n0 * C * H * W);
        }
    }
}
static lss_tensor *lss__conv2d(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride, int pad, int relu) {
    lss_tensor *y;
    int64_t N, C, H, W, Co, kh, kw, Ho, Wo, sh[4], K, NP, nc, n0;
    float *col, *tmp, *rowbuf;
    if (!lss__enter(g, "lss_op_conv2d", 2, x, w, NULL)) return NULL;
    if (stride < 1 || pad < 0)
        return lss__fail(g, LSS_ERR_ARG, "%s: stride must be >= 1 and padding >= 0%s", "lss_op_conv2d", NULL);
    if (x->ndim != 4 || w->ndim != 4 || w->shape[1] != x->shape[1]) return lss__shape_err(g, "lss_op_conv2d (input, weight)", x, w);
    N = x->shape[0]; C = x->shape[1]; H = x->shape[2]; W = x->shape[3];
    Co = w->shape[0]; kh = w->shape[2]; kw = w->shape[3];
    if (b && b->n != Co) return lss__shape_err(g, "lss_op_conv2d (weight, bias)", w, b);
    if (H + 2 * pad < kh || W + 2 * pad < kw) return lss__shape_err(g, "lss_op_conv2d (input smaller than kernel)", x, w);
    Ho = (H + 2 * pad - kh) / stride + 1; Wo = (W + 2 * pad - kw) / stride + 1;
    sh[0] = N; sh[1] = Co; sh[2] = Ho; sh[3] = Wo;
    y = lss__new(g, 4, sh, lss__wants_grad(g, x, w, b), 0);
    if (!y) return NULL;
    K = C * kh * kw; NP = N * Ho * Wo;
    /* col in panel layout (columns padded to 16): the GEMM reads it without packing. col, the output in
       [Co, N P] order and im2col's row buffers live in the graph's scratch area, which every layer reuses:
       the backward pass recomputes col from x instead of keeping it (lss__conv_scratch) */
    nc = lss__conv_chunk(N, K, Ho * Wo);
    col = lss__conv_scratch(g, K, nc * Ho * Wo, Co * NP, &tmp, &rowbuf);
    if (!col) return NULL;
    if (b) {
        int64_t c, p;
        for (c = 0; c < Co; c++)
            for (p = 0; p < NP; p++) tmp[c * NP + p] = b->data[c];
    }
    for (n0 = 0; n0 < N; n0 += nc) { /* chunks of nc samples (one chunk unless the columns would be large) */
        int64_t m = N - n0 < nc ? N - n0 : nc, np = m * Ho * Wo;
        lss__im2col(x->data + n0 * C * H * W, m, C, H, W, (int)kh, (int)kw, stride, pad, Ho, Wo, col,
                    LSS__PANEL ? rowbuf : NULL, g->wst);
        lss__sgemm_ws(0, LSS__PANEL ? 2 : 0, Co, np, K, 1.0f, w->data, K, col, np, b ? 1.0f : 0.0f, tmp + n0 * Ho * Wo, NP,
                      g->ws, g->wst);
    }
    lss__cnp_to_ncp(tmp, N, Co, Ho * Wo, y->data, 0);
    if (relu) {
        int64_t k, ny = y->n;
        float *o = y->data;
        LSS__PRAGMA(omp parallel for if (ny > 1048576))
        for (k = 0; k < ny; k++) o[k] = o[k] > 0 ? o[k] : 0.0f;
    }
    {
        LSS__REC(g, nd, lss__conv2d_bwd, y, x, w, b);
        if (nd) { nd->p.conv.stride = stride; nd->p.conv.pad = pad; nd->p.conv.relu = relu; }
    }
    return y;
}
LSSDEF lss_tensor *lss_op_conv2d(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride, int pad) {
    return lss__conv2d(g, x, w, b, stride, pad, 0);
}
LSSDEF lss_tensor *lss_op_conv2d_relu(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride, int pad) {
    return lss__conv2d(g, x, w, b, stride, pad, 1);
}

static void lss__conv2d_transpose_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0], *b = nd->in[1], *c = nd->in[2];
    const float *go = y->grad;
    lss_graph *g = nd->g;
    int64_t N = a->shape[0], Ci = a->shape[1], H = a->shape[2], W = a->shape[3];
    int64_t Co = b->shape[1], kh = b->shape[2], kw = b->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    int64_t M = Co * kh * kw, NHW = N * H * W;
    float *xt = lss__scratch(g, (size_t)(Ci * NHW) + (size_t)(M * NHW) + 16), *col;
    if (!xt) return;
    col = xt + ((size_t)(Ci * NHW) + 15) / 16 * 16;
    if (b->grad) lss__ncp_to_cnp(a->data, N, Ci, H * W, xt); /* x^T again (recomputed, not kept) */
    lss__im2col(go, N, Co, Ho, Wo, (int)kh, (int)kw, nd->p.convt.stride, nd->p.convt.pad, H, W, col, NULL, g->wst);
    if (b->grad) lss__sgemm_ws(0, 1, Ci, M, NHW, 1.0f, xt, NHW, col, NHW, 1.0f, b->grad, M, g->ws, g->wst);
    if (c && c->grad) lss__chan_sum_add(go, N, Co, Ho * Wo, c->grad);
    if (a->grad) {
        lss__sgemm_ws(0, 0, Ci, NHW, M, 1.0f, b->data, M, col, NHW, 0.0f, xt, NHW, g->ws, g->wst);
        lss__cnp_to_ncp(xt, N, Ci, H * W, a->grad, 1);
    }
}
LSSDEF lss_tensor *lss_op_conv2d_transpose(lss_graph *g, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride,
                                        int pad, int outpad) {
    lss_tensor *y;
    int64_t N, Ci, H, W, Co, kh, kw, Ho, Wo, sh[4], HW, M;
    float *xt, *col;
    if (!lss__enter(g, "lss_op_conv2d_transpose", 2, x, w, NULL)) return NULL;
    if (stride < 1 || pad < 0 || outpad < 0 || outpad >= stride)
        return lss__fail(g, LSS_ERR_ARG, "%s: need stride >= 1, pad >= 0, 0 <= outpad < stride%s",
                         "lss_op_conv2d_transpose", NULL);
    if (x->ndim != 4 || w->ndim != 4 || w->shape[0] != x->shape[1])
        return lss__shape_err(g, "lss_op_conv2d_transpose (input, weight)", x, w);
    N = x->shape[0]; Ci = x->shape[1]; H = x->shape[2]; W = x->shape[3];
    Co = w->shape[1]; kh = w->shape[2]; kw = w->shape[3];
    if (b && b->n != Co) return lss__shape_err(g, "lss_op_conv2d_transpose (weight, bias)", w, b);
    Ho = (H - 1) * stride - 2 * pad + kh + outpad; Wo = (W - 1) * stride - 2 * pad + kw + outpad;
    if (Ho < 1 || Wo < 1) return lss__shape_err(g, "lss_op_conv2d_transpose (output would be empty)", x, w);
    sh[0] = N; sh[1] = Co; sh[2] = Ho; sh[3] = Wo;
    y = lss__new(g, 4, sh, lss__wants_grad(g, x, w, b), 1);
    if (!y) return NULL;
    HW = H * W; M = Co * kh * kw;
    /* x^T and col in the graph's scratch area (the backward pass recomputes x^T) */
    xt = lss__scratch(g, (size_t)(Ci * N * HW) + (size_t)(M * N * HW) + 16);
    col = xt ? xt + ((size_t)(Ci * N * HW) + 15) / 16 * 16 : NULL;
    if (!xt || !col) return NULL;
    lss__ncp_to_cnp(x->data, N, Ci, HW, xt);
    /* col [Co kh kw, N HW] = w^T [Co kh kw, Ci] x xt [Ci, N HW] */
    lss__sgemm_ws(1, 0, M, N * HW, Ci, 1.0f, w->data, M, xt, N * HW, 0.0f, col, N * HW, g->ws, g->wst);
    lss__col2im_add(col, N, Co, Ho, Wo, (int)kh, (int)kw, stride, pad, H, W, y->data);
    if (b) {
        int64_t pl, P = Ho * Wo;
        for (pl = 0; pl < N * Co; pl++) {
            float bv = b->data[pl % Co];
            int64_t p;
            for (p = 0; p < P; p++) y->data[pl * P + p] += bv;
        }
    }
    {
        LSS__REC(g, nd, lss__conv2d_transpose_bwd, y, x, w, b);
        if (nd) { nd->p.convt.stride = stride; nd->p.convt.pad = pad; }
    }
    return y;
}

/* ---------------------------------------------------------------- pooling, upsampling, concat */
static void lss__avgpool2d_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0];
    const float *go = y->grad;
    int k = nd->p.pool.k, s = nd->p.pool.stride;
    int64_t H = a->shape[2], W = a->shape[3], Ho = y->shape[2], Wo = y->shape[3], pl;
    float inv = 1.0f / (float)(k * k);
    if (!a->grad) return;
    for (pl = 0; pl < a->shape[0] * a->shape[1]; pl++) {
        float *gx = a->grad + pl * H * W;
        const float *gy = go + pl * Ho * Wo;
        int64_t oy, ox, i, j;
        for (oy = 0; oy < Ho; oy++)
            for (ox = 0; ox < Wo; ox++)
                for (i = 0; i < k; i++)
                    for (j = 0; j < k; j++) gx[(oy * s + i) * W + ox * s + j] += gy[oy * Wo + ox] * inv;
    }
}
LSSDEF lss_tensor *lss_op_avgpool2d(lss_graph *g, lss_tensor *x, int k, int stride) {
    lss_tensor *y;
    int64_t sh[4], pl, H, W, Ho, Wo;
    float inv;
    if (!lss__enter(g, "lss_op_avgpool2d", 1, x, NULL, NULL)) return NULL;
    if (k < 1 || stride < 1) return lss__fail(g, LSS_ERR_ARG, "%s: window and stride must be >= 1%s", "lss_op_avgpool2d", NULL);
    if (x->ndim != 4 || x->shape[2] < k || x->shape[3] < k) return lss__shape_err(g, "lss_op_avgpool2d", x, NULL);
    H = x->shape[2]; W = x->shape[3];
    Ho = (H - k) / stride + 1; Wo = (W - k) / stride + 1;
    sh[0] = x->shape[0]; sh[1] = x->shape[1]; sh[2] = Ho; sh[3] = Wo;
    y = lss__new(g, 4, sh, lss__wants_grad(g, x, NULL, NULL), 0);
    if (!y) return NULL;
    inv = 1.0f / (float)(k * k);
    LSS__PRAGMA(omp parallel for schedule(static) if (x->n > 1048576))
    for (pl = 0; pl < sh[0] * sh[1]; pl++) {
        const float *xs = x->data + pl * H * W;
        float *ys = y->data + pl * Ho * Wo;
        int64_t oy, ox, i, j;
        for (oy = 0; oy < Ho; oy++)
            for (ox = 0; ox < Wo; ox++) {
                float s = 0;
                for (i = 0; i < k; i++)
                    for (j = 0; j < k; j++) s += xs[(oy * stride + i) * W + ox * stride + j];
                ys[oy * Wo + ox] = s * inv;
            }
    }
    {
        LSS__REC(g, nd, lss__avgpool2d_bwd, y, x, NULL, NULL);
        if (nd) { nd->p.pool.k = k; nd->p.pool.stride = stride; }
    }
    return y;
}

static void lss__upsample2d_bwd(lss__node *nd) {
    lss_tensor *y = nd->out, *a = nd->in[0];
    const float *go = y->grad;
    int64_t f = nd->p.up.factor, H = a->shape[2], W = a->shape[3], Wo = y->shape[3], pl;
    if (!a->grad) return;
    LSS__PRAGMA(omp parallel for schedule(static) if (y->n > 1048576))
    for (pl = 0; pl < a->shape[0] * a->shape[1]; pl++) {
        float *gx = a->grad + pl * H * W;
        const float *gy = go + pl * H * f * Wo;
        int64_t iy, ix, i, j;
        for (iy = 0; iy < H; iy++)
            for (ix = 0; ix < W; ix++) {
                float s = 0;
                for (i = 0; i < f; i++)
                    for (j = 0; j < f; j++) s += gy[(iy * f + i) * Wo + ix * f + j];
                gx[iy * W + ix] += s;
            }
    }
}
LSSDEF lss_tensor *lss_op_upsample2d(lss_graph *g, lss_tensor *x, int f) {
    lss_tensor *y;
    int64_t sh[4], pl, H, W, Ho, Wo;
    if (!lss__enter(g, "lss_op_upsample2d", 1, x, NULL, NULL)) return NULL;
    if (f < 1) return lss__fail(g, LSS_ERR_ARG, "%s: factor must be >= 1%s", "lss_op_upsample2d", NULL);
    if (x->ndim != 4) return lss__shape_err(g, "lss_op_upsample2d", x, NULL);
    H = x->shape[2]; W = x->shape[3]; Ho = H * f; Wo = W * f;
    sh[0] = x->shape[0]; sh[1] = x->shape[1]; sh[2] = Ho; sh[3] = Wo;
    y = lss__new(g, 4, sh, lss__wants_grad(g, x, NULL, NULL), 0);
    if (!y) return NULL;
    LSS__PRAGMA(omp parallel for schedule(static) if (y->n > 1048576))
    for (pl = 0; pl < sh[0] * sh[1]; pl++) {
        const float *xs = x->data + pl * H * W;
        float *ys = y->data + pl * Ho * Wo;
        int64_t oy, ox;
        for (oy = 0; oy < Ho; oy++)
            for (ox = 0; ox < Wo; ox++) ys[oy * Wo + ox] = xs[(oy / f) * W + ox / f];
    }
    {
        LSS__REC(g, nd, lss__upsample2d_bwd, y, x, NULL, NULL);
        if (nd) nd->p.up.factor = f;
    }
    return y;
}

static void lss__concat_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    const float *go = nd->out->grad;
    int64_t outer = nd->p.cat.outer, ia = nd->p.cat.ia, ib = nd->p.cat.ib, o, k;
    for (o = 0; o < outer; o++) {
        if (a->grad) for (k = 0; k < ia; k++) a->grad[o * ia + k] += go[o * (ia + ib) + k];
        if (b->grad) for (k = 0; k < ib; k++) b->grad[o * ib + k] += go[o * (ia + ib) + ia + k];
    }
}
LSSDEF lss_tensor *lss_op_concat(lss_graph *g, lss_tensor *a, lss_tensor *b, int axis) {
    lss_tensor *y;
    int64_t sh[LSS_NN_MAXDIM], outer = 1, ia = 1, ib = 1, o;
    int i;
    if (!lss__enter(g, "lss_op_concat", 2, a, b, NULL)) return NULL;
    if (a->ndim != b->ndim || axis < 0 || axis >= a->ndim) return lss__shape_err(g, "lss_op_concat", a, b);
    for (i = 0; i < a->ndim; i++) {
        if (i != axis && a->shape[i] != b->shape[i]) return lss__shape_err(g, "lss_op_concat", a, b);
        sh[i] = a->shape[i];
        if (i < axis) outer *= a->shape[i];
        if (i >= axis) { ia *= a->shape[i]; ib *= b->shape[i]; }
    }
    sh[axis] = a->shape[axis] + b->shape[axis];
    y = lss__new(g, a->ndim, sh, lss__wants_grad(g, a, b, NULL), 0);
    if (!y) return NULL;
    for (o = 0; o < outer; o++) {
        memcpy(y->data + o * (ia + ib), a->data + o * ia, (size_t)ia * sizeof(float));
        memcpy(y->data + o * (ia + ib) + ia, b->data + o * ib, (size_t)ib * sizeof(float));
    }
    {
        LSS__REC(g, nd, lss__concat_bwd, y, a, b, NULL);
        if (nd) { nd->p.cat.outer = outer; nd->p.cat.ia = ia; nd->p.cat.ib = ib; }
    }
    return y;
}

/* ---------------------------------------------------------------- broadcasting binary operations */
typedef struct { int64_t sh[4], sa[4], sb[4]; } lss__bc;

/* Output shape and element strides (0 where broadcast) of a and b, as 4-D. */
static int lss__bcast(const lss_tensor *a, const lss_tensor *b, int *ndim, lss__bc *bc) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim, i;
    int64_t ea[4], eb[4], st;
    for (i = 0; i < 4; i++) { ea[i] = eb[i] = 1; }
    for (i = 0; i < a->ndim; i++) ea[4 - a->ndim + i] = a->shape[i];
    for (i = 0; i < b->ndim; i++) eb[4 - b->ndim + i] = b->shape[i];
    for (i = 0; i < 4; i++) {
        if (ea[i] != eb[i] && ea[i] != 1 && eb[i] != 1) return 0;
        bc->sh[i] = ea[i] > eb[i] ? ea[i] : eb[i];
    }
    st = 1;
    for (i = 3; i >= 0; i--) { bc->sa[i] = ea[i] == 1 ? 0 : st; st *= ea[i]; }
    st = 1;
    for (i = 3; i >= 0; i--) { bc->sb[i] = eb[i] == 1 ? 0 : st; st *= eb[i]; }
    *ndim = nd;
    return 1;
}

enum { LSS__BIN_ADD = 0, LSS__BIN_SUB, LSS__BIN_MUL };

static void lss__binary_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1], *y = nd->out;
    const float *go = y->grad;
    int op = nd->p.bin.op;
    if (a->n == y->n && b->n == y->n) {
        int64_t k, n = y->n;
        if (a->grad) {
            if (op == LSS__BIN_MUL) { for (k = 0; k < n; k++) a->grad[k] += go[k] * b->data[k]; }
            else { for (k = 0; k < n; k++) a->grad[k] += go[k]; }
        }
        if (b->grad) {
            if (op == LSS__BIN_MUL) { for (k = 0; k < n; k++) b->grad[k] += go[k] * a->data[k]; }
            else if (op == LSS__BIN_SUB) { for (k = 0; k < n; k++) b->grad[k] -= go[k]; }
            else { for (k = 0; k < n; k++) b->grad[k] += go[k]; }
        }
    } else {
        lss__bc bc;
        int ndim;
        int64_t i0, i1, i2, i3, k = 0;
        lss__bcast(a, b, &ndim, &bc);
        for (i0 = 0; i0 < bc.sh[0]; i0++)
            for (i1 = 0; i1 < bc.sh[1]; i1++)
                for (i2 = 0; i2 < bc.sh[2]; i2++)
                    for (i3 = 0; i3 < bc.sh[3]; i3++, k++) {
                        int64_t ia = i0 * bc.sa[0] + i1 * bc.sa[1] + i2 * bc.sa[2] + i3 * bc.sa[3];
                        int64_t ib = i0 * bc.sb[0] + i1 * bc.sb[1] + i2 * bc.sb[2] + i3 * bc.sb[3];
                        if (a->grad) a->grad[ia] += op == LSS__BIN_MUL ? go[k] * b->data[ib] : go[k];
                        if (b->grad) b->grad[ib] += op == LSS__BIN_MUL ? go[k] * a->data[ia] : op == LSS__BIN_SUB ? -go[k] : go[k];
                    }
    }
}
static lss_tensor *lss__binary(lss_graph *g, lss_tensor *a, lss_tensor *b, int op, const char *name) {
    lss_tensor *y;
    lss__bc bc;
    int nd, i;
    int64_t sh[4];
    if (!lss__enter(g, name, 2, a, b, NULL)) return NULL;
    if (!lss__bcast(a, b, &nd, &bc)) return lss__shape_err(g, name, a, b);
    for (i = 0; i < nd; i++) sh[i] = bc.sh[4 - nd + i];
    y = lss__new(g, nd, sh, lss__wants_grad(g, a, b, NULL), 0);
    if (!y) return NULL;
    if (a->n == y->n && b->n == y->n) {
        int64_t k, n = y->n;
        float *o = y->data;
        const float *pa = a->data, *pb = b->data;
        if (op == LSS__BIN_ADD) { for (k = 0; k < n; k++) o[k] = pa[k] + pb[k]; }
        else if (op == LSS__BIN_SUB) { for (k = 0; k < n; k++) o[k] = pa[k] - pb[k]; }
        else { for (k = 0; k < n; k++) o[k] = pa[k] * pb[k]; }
    } else {
        int64_t i0, i1, i2, i3, k = 0;
        for (i0 = 0; i0 < bc.sh[0]; i0++)
            for (i1 = 0; i1 < bc.sh[1]; i1++)
                for (i2 = 0; i2 < bc.sh[2]; i2++)
                    for (i3 = 0; i3 < bc.sh[3]; i3++, k++) {
                        float va = a->data[i0 * bc.sa[0] + i1 * bc.sa[1] + i2 * bc.sa[2] + i3 * bc.sa[3]];
                        float vb = b->data[i0 * bc.sb[0] + i1 * bc.sb[1] + i2 * bc.sb[2] + i3 * bc.sb[3]];
                        y->data[k] = op == LSS__BIN_ADD ? va + vb : op == LSS__BIN_SUB ? va - vb : va * vb;
                    }
    }
    {
        LSS__REC(g, nd2, lss__binary_bwd, y, a, b, NULL);
        if (nd2) nd2->p.bin.op = op;
    }
    return y;
}
LSSDEF lss_tensor *lss_op_add(lss_graph *g, lss_tensor *a, lss_tensor *b) { return lss__binary(g, a, b, LSS__BIN_ADD, "lss_op_add"); }
LSSDEF lss_tensor *lss_op_sub(lss_graph *g, lss_tensor *a, lss_tensor *b) { return lss__binary(g, a, b, LSS__BIN_SUB, "lss_op_sub"); }
LSSDEF lss_tensor *lss_op_mul(lss_graph *g, lss_tensor *a, lss_tensor *b) { return lss__binary(g, a, b, LSS__BIN_MUL, "lss_op_mul"); }

/* ---------------------------------------------------------------- elementwise unary operations */
static float lss__softplusf(float x) { return x > 20.0f ? x : x < -20.0f ? expf(x) : log1pf(expf(x)); }
static float lss__sigmoidf(float x) {
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    else { float e = expf(x); return e / (1.0f + e); }
}

/* An element-wise operation in one line: LSS__UNARY(name, threshold, forward, backward) defines
 * lss__name_bwd (gx[k] += backward) and lss__name_fwd (o[k] = forward), where a = x, o = y, go = dy,
 * p = the operation's float parameter; the forward runs with OpenMP above `threshold` elements. */
#define LSS__UNARY(name, thr, fwd, bwd)                                                          \
    static void lss__##name##_bwd(lss__node *nd) {                                                \
        const float *go = nd->out->grad, *a = nd->in[0]->data, *o = nd->out->data;                \
        float *gx = nd->in[0]->grad, p = nd->p.unary.p;                                           \
        int64_t k, n = nd->in[0]->n;                                                              \
        (void)a; (void)o; (void)p;                                                                \
        if (gx) for (k = 0; k < n; k++) gx[k] += bwd;                                             \
    }                                                                                             \
    static lss_tensor *lss__##name##_fwd(lss_graph *g, lss_tensor *x, float p, const char *opname) { \
        lss_tensor *y;                                                                            \
        int64_t k, n;                                                                             \
        const float *a;                                                                           \
        float *o;                                                                                 \
        if (!lss__enter(g, opname, 1, x, NULL, NULL)) return NULL;                                \
        y = lss__new(g, x->ndim, x->shape, lss__wants_grad(g, x, NULL, NULL), 0);                 \
        if (!y) return NULL;                                                                      \
        n = x->n; a = x->data; o = y->data;                                                       \
        (void)p;                                                                                  \
        LSS__PRAGMA(omp parallel for if (n > thr)) for (k = 0; k < n; k++) o[k] = fwd;            \
        {                                                                                         \
            LSS__REC(g, nd, lss__##name##_bwd, y, x, NULL, NULL);                                 \
            if (nd) nd->p.unary.p = p;                                                            \
        }                                                                                         \
        return y;                                                                                 \
    }
LSS__UNARY(scale, 1048576, p * a[k], p * go[k])
LSS__UNARY(add_scalar, 1048576, a[k] + p, go[k])
LSS__UNARY(relu, 1048576, a[k] > 0 ? a[k] : 0.0f, a[k] > 0 ? go[k] : 0.0f)
LSS__UNARY(leaky_relu, 1048576, a[k] > 0 ? a[k] : p * a[k], a[k] > 0 ? go[k] : p * go[k])
LSS__UNARY(softplus, 262144, lss__softplusf(a[k]), go[k] * lss__sigmoidf(a[k]))
LSS__UNARY(tanh, 262144, tanhf(a[k]), go[k] * (1.0f - o[k] * o[k]))
LSS__UNARY(sigmoid, 262144, lss__sigmoidf(a[k]), go[k] * o[k] * (1.0f - o[k]))
LSS__UNARY(exp, 262144, expf(a[k]), go[k] * o[k])
LSS__UNARY(ln, 262144, logf(a[k]), go[k] / a[k])
#undef LSS__UNARY
LSSDEF lss_tensor *lss_op_scale(lss_graph *g, lss_tensor *x, float s) { return lss__scale_fwd(g, x, s, "lss_op_scale"); }
LSSDEF lss_tensor *lss_op_add_scalar(lss_graph *g, lss_tensor *x, float c) { return lss__add_scalar_fwd(g, x, c, "lss_op_add_scalar"); }
LSSDEF lss_tensor *lss_op_relu(lss_graph *g, lss_tensor *x) { return lss__relu_fwd(g, x, 0, "lss_op_relu"); }
LSSDEF lss_tensor *lss_op_leaky_relu(lss_graph *g, lss_tensor *x, float slope) { return lss__leaky_relu_fwd(g, x, slope, "lss_op_leaky_relu"); }
LSSDEF lss_tensor *lss_op_softplus(lss_graph *g, lss_tensor *x) { return lss__softplus_fwd(g, x, 0, "lss_op_softplus"); }
LSSDEF lss_tensor *lss_op_tanh(lss_graph *g, lss_tensor *x) { return lss__tanh_fwd(g, x, 0, "lss_op_tanh"); }
LSSDEF lss_tensor *lss_op_sigmoid(lss_graph *g, lss_tensor *x) { return lss__sigmoid_fwd(g, x, 0, "lss_op_sigmoid"); }
LSSDEF lss_tensor *lss_op_exp(lss_graph *g, lss_tensor *x) { return lss__exp_fwd(g, x, 0, "lss_op_exp"); }
LSSDEF lss_tensor *lss_op_ln(lss_graph *g, lss_tensor *x) { return lss__ln_fwd(g, x, 0, "lss_op_ln"); }

/* ---------------------------------------------------------------- normalisation */
static void lss__batchnorm_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1], *c = nd->in[2];
    const float *go = nd->out->grad;
    int64_t N = a->shape[0], C = a->shape[1], P = a->ndim == 4 ? a->shape[2] * a->shape[3] : 1, ch;
    const float *mean = nd->p.bn.mean, *invstd = nd->p.bn.invstd;
    int train = nd->p.bn.train;
    LSS__PRAGMA(omp parallel for schedule(static) if (a->n > 1048576))
    for (ch = 0; ch < C; ch++) {
        double sdy = 0, sdyx = 0, M = (double)(N * P);
        float m = mean[ch], is = invstd[ch], gm = b ? b->data[ch] : 1.0f;
        int64_t n, p;
        for (n = 0; n < N; n++) {
            const float *xr = a->data + (n * C + ch) * P, *gr = go + (n * C + ch) * P;
            for (p = 0; p < P; p++) { sdy += gr[p]; sdyx += gr[p] * (xr[p] - m) * is; }
        }
        if (b && b->grad) b->grad[ch] += (float)sdyx;
        if (c && c->grad) c->grad[ch] += (float)sdy;
        if (a->grad)
            for (n = 0; n < N; n++) {
                const float *xr = a->data + (n * C + ch) * P, *gr = go + (n * C + ch) * P;
                float *gx = a->grad + (n * C + ch) * P;
                if (train) {
                    float k1 = gm * is, mdy = (float)(sdy / M), mdyx = (float)(sdyx / M);
                    for (p = 0; p < P; p++) gx[p] += k1 * (gr[p] - mdy - (xr[p] - m) * is * mdyx);
                } else {
                    for (p = 0; p < P; p++) gx[p] += gr[p] * gm * is;
                }
            }
    }
}
LSSDEF lss_tensor *lss_op_batchnorm(lss_graph *g, lss_tensor *x, lss_tensor *gamma, lss_tensor *beta,
                                 lss_tensor *running_mean, lss_tensor *running_var, float momentum, float eps) {
    lss_tensor *y;
    int64_t N, C, P, c;
    float *mean, *invstd;
    int train;
    if (!lss__enter(g, "lss_op_batchnorm", 1, x, NULL, NULL)) return NULL;
    if (x->ndim != 2 && x->ndim != 4) return lss__shape_err(g, "lss_op_batchnorm (input must be [N,C] or [N,C,H,W])", x, NULL);
    N = x->shape[0]; C = x->shape[1]; P = x->ndim == 4 ? x->shape[2] * x->shape[3] : 1;
    if ((gamma && gamma->n != C) || (beta && beta->n != C) || (running_mean && running_mean->n != C) ||
        (running_var && running_var->n != C))
        return lss__fail(g, LSS_ERR_SHAPE, "%s: gamma, beta and running statistics must have C elements%s",
                         "lss_op_batchnorm", NULL);
    if (momentum == 0.0f) momentum = 0.9f;
    if (eps == 0.0f) eps = 1e-5f;
    if (!(momentum > 0.0f && momentum < 1.0f) || !(eps > 0.0f))
        return lss__fail(g, LSS_ERR_RANGE, "%s: momentum must be in (0, 1) and eps > 0%s", "lss_op_batchnorm", NULL);
    train = g->training;
    if (!train && (!running_mean || !running_var))
        return lss__fail(g, LSS_ERR_ARG, "%s: evaluation needs the running statistics%s", "lss_op_batchnorm", NULL);
    if (train && N * P < 2)
        return lss__fail(g, LSS_ERR_SHAPE, "%s: batch statistics need at least 2 values per channel%s", "lss_op_batchnorm", NULL);
    y = lss__new(g, x->ndim, x->shape, lss__wants_grad(g, x, gamma, beta), 0);
    mean = (float *)lss__alloc(g, (size_t)C * sizeof(float));
    invstd = (float *)lss__alloc(g, (size_t)C * sizeof(float));
    if (!y || !mean || !invstd) return NULL;
    LSS__PRAGMA(omp parallel for schedule(static) if (x->n > 1048576))
    for (c = 0; c < C; c++) {
        int64_t n, p;
        double m, v, is;
        float gm = gamma ? gamma->data[c] : 1.0f, bt = beta ? beta->data[c] : 0.0f;
        if (train) {
            double s = 0, s2 = 0, M = (double)(N * P);
            for (n = 0; n < N; n++) {
                const float *r = x->data + (n * C + c) * P;
                for (p = 0; p < P; p++) s += r[p];
            }
            m = s / M;
            for (n = 0; n < N; n++) {
                const float *r = x->data + (n * C + c) * P;
                for (p = 0; p < P; p++) { double d = r[p] - m; s2 += d * d; }
            }
            v = s2 / M;
            if (running_mean) running_mean->data[c] = (float)(momentum * running_mean->data[c] + (1.0 - momentum) * m);
            if (running_var)
                running_var->data[c] = (float)(momentum * running_var->data[c] + (1.0 - momentum) * v * M / (M - 1.0));
        } else {
            m = running_mean->data[c];
            v = running_var->data[c];
        }
        is = 1.0 / sqrt(v + eps);
        mean[c] = (float)m; invstd[c] = (float)is;
        for (n = 0; n < N; n++) {
            const float *r = x->data + (n * C + c) * P;
            float *o = y->data + (n * C + c) * P;
            float a = (float)(gm * is), b0 = (float)(bt - gm * is * m);
            for (p = 0; p < P; p++) o[p] = a * r[p] + b0;
        }
    }
    {
        LSS__REC(g, nd, lss__batchnorm_bwd, y, x, gamma, beta);
        if (nd) { nd->p.bn.mean = mean; nd->p.bn.invstd = invstd; nd->p.bn.train = train; }
    }
    return y;
}

static void lss__spectral_norm_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0];
    const float *go = nd->out->grad;
    int64_t R = nd->p.sn.rows, Cc = a->n / R, i, j;
    double sg = nd->p.sn.sigma, gw = 0;
    const float *u = nd->p.sn.u, *v = nd->p.sn.v;
    if (!a->grad) return;
    for (i = 0; i < a->n; i++) gw += (double)go[i] * a->data[i];
    for (i = 0; i < R; i++)
        for (j = 0; j < Cc; j++)
            a->grad[i * Cc + j] += (float)(go[i * Cc + j] / sg - gw / (sg * sg) * u[i] * v[j]);
}
LSSDEF lss_tensor *lss_op_spectral_norm(lss_graph *g, lss_tensor *w, lss_tensor *u, int iters) {
    lss_tensor *y;
    int64_t R, Cc, i, j, k;
    double *du, *dv, nrm, sigma;
    float *fu, *fv, inv;
    int it;
    if (!lss__enter(g, "lss_op_spectral_norm", 2, w, u, NULL)) return NULL;
    if (w->ndim < 1 || u->n != w->shape[0]) return lss__shape_err(g, "lss_op_spectral_norm (weight, u)", w, u);
    if (iters < 1) return lss__fail(g, LSS_ERR_ARG, "%s: iters must be >= 1%s", "lss_op_spectral_norm", NULL);
    R = w->shape[0]; Cc = w->n / R;
    du = (double *)lss__alloc(g, (size_t)R * sizeof(double));
    dv = (double *)lss__alloc(g, (size_t)Cc * sizeof(double));
    fu = (float *)lss__alloc(g, (size_t)R * sizeof(float));
    fv = (float *)lss__alloc(g, (size_t)Cc * sizeof(float));
    if (!du || !dv || !fu || !fv) return NULL;
    nrm = 0;
    for (i = 0; i < R; i++) { du[i] = u->data[i]; nrm += du[i] * du[i]; }
    if (!(nrm > 0) || !isfinite(nrm)) { for (i = 0; i < R; i++) du[i] = 1.0; nrm = (double)R; }
    nrm = sqrt(nrm);
    for (i = 0; i < R; i++) du[i] /= nrm;
    sigma = 0;
    for (it = 0; it < iters; it++) {
        for (j = 0; j < Cc; j++) dv[j] = 0;
        for (i = 0; i < R; i++) {
            const float *wr = w->data + i * Cc;
            for (j = 0; j < Cc; j++) dv[j] += wr[j] * du[i];
        }
        nrm = 0;
        for (j = 0; j < Cc; j++) nrm += dv[j] * dv[j];
        nrm = sqrt(nrm);
        if (!(nrm > 0)) return lss__fail(g, LSS_ERR_NUMERIC, "%s: weight is zero%s", "lss_op_spectral_norm", NULL);
        for (j = 0; j < Cc; j++) dv[j] /= nrm;
        nrm = 0;
        for (i = 0; i < R; i++) {
            const float *wr = w->data + i * Cc;
            double s = 0;
            for (j = 0; j < Cc; j++) s += wr[j] * dv[j];
            du[i] = s;
            nrm += s * s;
        }
        nrm = sqrt(nrm);
        if (!(nrm > 0) || !isfinite(nrm)) return lss__fail(g, LSS_ERR_NUMERIC, "%s: weight is zero or not finite%s", "lss_op_spectral_norm", NULL);
        for (i = 0; i < R; i++) du[i] /= nrm;
        sigma = nrm; /* u^T W v with the new u */
    }
    for (i = 0; i < R; i++) fu[i] = (float)du[i];
    for (j = 0; j < Cc; j++) fv[j] = (float)dv[j];
    if (g->training) for (i = 0; i < R; i++) u->data[i] = fu[i];
    y = lss__new(g, w->ndim, w->shape, lss__wants_grad(g, w, NULL, NULL), 0);
    if (!y) return NULL;
    inv = (float)(1.0 / sigma);
    for (k = 0; k < w->n; k++) y->data[k] = w->data[k] * inv;
    {
        LSS__REC(g, nd, lss__spectral_norm_bwd, y, w, NULL, NULL);
        if (nd) { nd->p.sn.u = fu; nd->p.sn.v = fv; nd->p.sn.sigma = (float)sigma; nd->p.sn.rows = R; }
    }
    return y;
}

/* ---------------------------------------------------------------- shapes and reductions */
LSSDEF lss_tensor *lss_op_reshape(lss_graph *g, lss_tensor *x, int ndim, const int64_t *shape) {
    lss_tensor *y;
    int64_t n;
    int i;
    if (!lss__enter(g, "lss_op_reshape", 1, x, NULL, NULL)) return NULL;
    n = lss_shape_count(ndim, shape);
    if (n != x->n) return lss__fail(g, LSS_ERR_SHAPE, "%s: element count differs%s", "lss_op_reshape", NULL);
    y = (lss_tensor *)lss__alloc(g, sizeof *y);
    if (!y) return NULL;
    *y = *x;
    y->flags = 0;
    y->name = NULL;
    y->ndim = ndim;
    for (i = 0; i < LSS_NN_MAXDIM; i++) y->shape[i] = i < ndim ? shape[i] : 0;
    return y;
}

LSSDEF lss_tensor *lss_op_flatten(lss_graph *g, lss_tensor *x) {
    int64_t sh[2];
    if (!lss__enter(g, "lss_op_flatten", 1, x, NULL, NULL)) return NULL;
    if (x->ndim < 1) return lss__shape_err(g, "lss_op_flatten", x, NULL);
    sh[0] = x->shape[0]; sh[1] = x->n / x->shape[0];
    return lss_op_reshape(g, x, 2, sh);
}

static lss_tensor *lss__scalar_out(lss_graph *g, lss_tensor *a, lss_tensor *b, lss_tensor *c) {
    return lss__new(g, 0, NULL, lss__wants_grad(g, a, b, c), 0);
}

static void lss__sum_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0];
    float v = nd->out->grad[0];
    int64_t k;
    if (a->grad) for (k = 0; k < a->n; k++) a->grad[k] += v;
}
LSSDEF lss_tensor *lss_op_sum(lss_graph *g, lss_tensor *x) {
    lss_tensor *y;
    if (!lss__enter(g, "lss_op_sum", 1, x, NULL, NULL)) return NULL;
    if (!(y = lss__scalar_out(g, x, NULL, NULL))) return NULL;
    y->data[0] = (float)lss__dsum(x->data, x->n);
    {
        LSS__REC(g, nd, lss__sum_bwd, y, x, NULL, NULL);
        (void)nd;
    }
    return y;
}

static void lss__mean_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0];
    float v = (float)(nd->out->grad[0] / (double)a->n);
    int64_t k;
    if (a->grad) for (k = 0; k < a->n; k++) a->grad[k] += v;
}
LSSDEF lss_tensor *lss_op_mean(lss_graph *g, lss_tensor *x) {
    lss_tensor *y;
    if (!lss__enter(g, "lss_op_mean", 1, x, NULL, NULL)) return NULL;
    if (!(y = lss__scalar_out(g, x, NULL, NULL))) return NULL;
    y->data[0] = (float)(lss__dsum(x->data, x->n) / (double)x->n);
    {
        LSS__REC(g, nd, lss__mean_bwd, y, x, NULL, NULL);
        (void)nd;
    }
    return y;
}

static void lss__global_avgpool_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *y = nd->out;
    const float *go = y->grad;
    int64_t P = a->shape[2] * a->shape[3], pl, p;
    if (a->grad)
        for (pl = 0; pl < y->n; pl++) {
            float v = (float)(go[pl] / (double)P);
            for (p = 0; p < P; p++) a->grad[pl * P + p] += v;
        }
}
LSSDEF lss_tensor *lss_op_global_avgpool(lss_graph *g, lss_tensor *x) {
    lss_tensor *y;
    int64_t sh[2], P, pl;
    if (!lss__enter(g, "lss_op_global_avgpool", 1, x, NULL, NULL)) return NULL;
    if (x->ndim != 4) return lss__shape_err(g, "lss_op_global_avgpool", x, NULL);
    sh[0] = x->shape[0]; sh[1] = x->shape[1]; P = x->shape[2] * x->shape[3];
    if (!(y = lss__new(g, 2, sh, lss__wants_grad(g, x, NULL, NULL), 0))) return NULL;
    for (pl = 0; pl < sh[0] * sh[1]; pl++) {
        double s = 0;
        int64_t p;
        for (p = 0; p < P; p++) s += x->data[pl * P + p];
        y->data[pl] = (float)(s / (double)P);
    }
    {
        LSS__REC(g, nd, lss__global_avgpool_bwd, y, x, NULL, NULL);
        (void)nd;
    }
    return y;
}

/* ---------------------------------------------------------------- slices, squeeze, log-determinant */
static void lss__slice_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0];
    const float *go = nd->out->grad;
    int64_t o, k, outer = nd->p.sl.outer, full = nd->p.sl.full, off = nd->p.sl.off, len = nd->p.sl.len;
    if (!a->grad) return;
    for (o = 0; o < outer; o++)
        for (k = 0; k < len; k++) a->grad[o * full + off + k] += go[o * len + k];
}
LSSDEF lss_tensor *lss_op_slice(lss_graph *g, lss_tensor *x, int axis, int64_t start, int64_t len) {
    lss_tensor *y;
    int64_t sh[LSS_NN_MAXDIM], outer = 1, inner = 1, o;
    int i;
    if (!lss__enter(g, "lss_op_slice", 1, x, NULL, NULL)) return NULL;
    if (axis < 0 || axis >= x->ndim || start < 0 || len < 1 || start + len > x->shape[axis])
        return lss__fail(g, LSS_ERR_SHAPE, "%s: slice outside the axis%s", "lss_op_slice", NULL);
    for (i = 0; i < x->ndim; i++) {
        sh[i] = i == axis ? len : x->shape[i];
        if (i < axis) outer *= x->shape[i];
        if (i > axis) inner *= x->shape[i];
    }
    y = lss__new(g, x->ndim, sh, lss__wants_grad(g, x, NULL, NULL), 0);
    if (!y) return NULL;
    for (o = 0; o < outer; o++)
        memcpy(y->data + o * len * inner, x->data + o * x->shape[axis] * inner + start * inner, (size_t)(len * inner) * sizeof(float));
    {
        LSS__REC(g, nd, lss__slice_bwd, y, x, NULL, NULL);
        if (nd) { nd->p.sl.outer = outer; nd->p.sl.full = x->shape[axis] * inner; nd->p.sl.off = start * inner; nd->p.sl.len = len * inner; }
    }
    return y;
}

/* Moves between the fine layout [N, C, 2h, 2w] and the squeezed one [N, 4C, h, w]; to_coarse = 1 copies (or
 * adds) fine into coarse, else coarse into fine. */
static void lss__squeeze_move(const float *src, float *dst, int64_t N, int64_t C, int64_t h, int64_t w, int to_coarse, int add) {
    int64_t n, c, y, x, i, j;
    for (n = 0; n < N; n++)
        for (c = 0; c < C; c++)
            for (i = 0; i < 2; i++)
                for (j = 0; j < 2; j++)
                    for (y = 0; y < h; y++)
                        for (x = 0; x < w; x++) {
                            int64_t fi = ((n * C + c) * 2 * h + 2 * y + i) * 2 * w + 2 * x + j;
                            int64_t ci = ((n * 4 * C + 4 * c + 2 * i + j) * h + y) * w + x;
                            if (to_coarse) { if (add) dst[ci] += src[fi]; else dst[ci] = src[fi]; }
                            else { if (add) dst[fi] += src[ci]; else dst[fi] = src[ci]; }
                        }
}
static void lss__squeeze_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *y = nd->out;
    if (!a->grad) return;
    if (!nd->p.sq.inv) lss__squeeze_move(y->grad, a->grad, a->shape[0], a->shape[1], y->shape[2], y->shape[3], 0, 1);
    else lss__squeeze_move(y->grad, a->grad, a->shape[0], y->shape[1], a->shape[2], a->shape[3], 1, 1);
}
LSSDEF lss_tensor *lss_op_squeeze2d(lss_graph *g, lss_tensor *x, int inverse) {
    lss_tensor *y;
    int64_t sh[4];
    if (!lss__enter(g, "lss_op_squeeze2d", 1, x, NULL, NULL)) return NULL;
    if (x->ndim != 4 || (!inverse && (x->shape[2] % 2 || x->shape[3] % 2)) || (inverse && x->shape[1] % 4))
        return lss__shape_err(g, inverse ? "lss_op_squeeze2d (inverse: [N, 4C, H, W])" : "lss_op_squeeze2d ([N, C, H, W], H and W even)", x, NULL);
    sh[0] = x->shape[0];
    if (!inverse) { sh[1] = 4 * x->shape[1]; sh[2] = x->shape[2] / 2; sh[3] = x->shape[3] / 2; }
    else { sh[1] = x->shape[1] / 4; sh[2] = 2 * x->shape[2]; sh[3] = 2 * x->shape[3]; }
    y = lss__new(g, 4, sh, lss__wants_grad(g, x, NULL, NULL), 0);
    if (!y) return NULL;
    if (!inverse) lss__squeeze_move(x->data, y->data, sh[0], x->shape[1], sh[2], sh[3], 1, 0);
    else lss__squeeze_move(x->data, y->data, sh[0], sh[1], x->shape[2], x->shape[3], 0, 0);
    {
        LSS__REC(g, nd, lss__squeeze_bwd, y, x, NULL, NULL);
        if (nd) nd->p.sq.inv = inverse ? 1 : 0;
    }
    return y;
}

/* LU decomposition with partial pivoting of a[n*n] (row-major, in place); ln|det| and, when inv is not NULL, the
 * inverse. Returns 0 when singular. */
static int lss__lu_logdet(double *a, int n, int *piv, double *logdet, double *inv) {
    int i, j, k;
    double ld = 0;
    for (k = 0; k < n; k++) {
        int p = k;
        for (i = k + 1; i < n; i++) if (fabs(a[i * n + k]) > fabs(a[p * n + k])) p = i;
        piv[k] = p;
        if (!(fabs(a[p * n + k]) > 0) || !isfinite(a[p * n + k])) return 0;
        if (p != k) for (j = 0; j < n; j++) { double t = a[k * n + j]; a[k * n + j] = a[p * n + j]; a[p * n + j] = t; }
        ld += log(fabs(a[k * n + k]));
        for (i = k + 1; i < n; i++) {
            double f = a[i * n + k] / a[k * n + k];
            a[i * n + k] = f;
            for (j = k + 1; j < n; j++) a[i * n + j] -= f * a[k * n + j];
        }
    }
    *logdet = ld;
    if (inv) {
        int c;
        for (c = 0; c < n; c++) {
            double *x = inv + (size_t)c * n;   /* column c of the inverse, stored as row c (transposed below) */
            for (i = 0; i < n; i++) x[i] = i == c ? 1.0 : 0.0;
            for (k = 0; k < n; k++) if (piv[k] != k) { double t = x[k]; x[k] = x[piv[k]]; x[piv[k]] = t; }
            for (i = 0; i < n; i++) for (j = 0; j < i; j++) x[i] -= a[i * n + j] * x[j];
            for (i = n - 1; i >= 0; i--) {
                for (j = i + 1; j < n; j++) x[i] -= a[i * n + j] * x[j];
                x[i] /= a[i * n + i];
            }
        }
        for (i = 0; i < n; i++)
            for (j = i + 1; j < n; j++) { double t = inv[i * n + j]; inv[i * n + j] = inv[j * n + i]; inv[j * n + i] = t; }
    }
    return 1;
}
static void lss__logabsdet_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0];
    int n = nd->p.det.n, i, j;
    float gv = nd->out->grad[0];
    if (!a->grad) return;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) a->grad[i * n + j] += (float)(gv * nd->p.det.inv[j * n + i]);
}
LSSDEF lss_tensor *lss_op_logabsdet(lss_graph *g, lss_tensor *a) {
    lss_tensor *y;
    double *m, *inv, ld;
    int *piv, n, i;
    if (!lss__enter(g, "lss_op_logabsdet", 1, a, NULL, NULL)) return NULL;
    if (!((a->ndim == 2 || (a->ndim == 4 && a->shape[2] == 1 && a->shape[3] == 1)) && a->shape[0] == a->shape[1] &&
          a->shape[0] <= 4096))
        return lss__shape_err(g, "lss_op_logabsdet (a square matrix [n, n] or [n, n, 1, 1], n <= 4096)", a, NULL);
    n = (int)a->shape[0];
    m = (double *)lss__alloc(g, sizeof(double) * (size_t)n * n);
    inv = (double *)lss__alloc(g, sizeof(double) * (size_t)n * n);
    piv = (int *)lss__alloc(g, sizeof(int) * (size_t)n);
    if (!m || !inv || !piv) return NULL;
    for (i = 0; i < n * n; i++) m[i] = a->data[i];
    if (!lss__lu_logdet(m, n, piv, &ld, inv)) return lss__fail(g, LSS_ERR_NUMERIC, "%s: the matrix is singular%s", "lss_op_logabsdet", NULL);
    if (!(y = lss__scalar_out(g, a, NULL, NULL))) return NULL;
    y->data[0] = (float)ld;
    {
        LSS__REC(g, nd, lss__logabsdet_bwd, y, a, NULL, NULL);
        if (nd) { nd->p.det.inv = inv; nd->p.det.n = n; }
    }
    return y;
}

/* ---------------------------------------------------------------- losses */
static void lss__mse_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    double sc = nd->out->grad[0] / (double)a->n;
    int64_t k;
    if (a->grad)
        for (k = 0; k < a->n; k++) {
            double d = (double)a->data[k] - b->data[k];
            a->grad[k] += (float)(2.0 * d * sc);
        }
}
static void lss__l1_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    double sc = nd->out->grad[0] / (double)a->n;
    int64_t k;
    if (a->grad)
        for (k = 0; k < a->n; k++) {
            double d = (double)a->data[k] - b->data[k];
            a->grad[k] += (float)(d > 0 ? sc : d < 0 ? -sc : 0.0);
        }
}
/* mean (p - t)^2 (l1 = 0) or mean |p - t| (l1 = 1) */
static lss_tensor *lss__pair_loss(lss_graph *g, lss_tensor *p, lss_tensor *t, int l1, const char *name) {
    lss_tensor *y;
    int64_t k;
    double s = 0;
    if (!lss__enter(g, name, 2, p, t, NULL)) return NULL;
    if (p->n != t->n) return lss__shape_err(g, name, p, t);
    if (!(y = lss__scalar_out(g, p, NULL, NULL))) return NULL;
    for (k = 0; k < p->n; k++) {
        double d = (double)p->data[k] - t->data[k];
        s += !l1 ? d * d : fabs(d);
    }
    y->data[0] = (float)(s / (double)p->n);
    {
        LSS__REC(g, nd, l1 ? lss__l1_bwd : lss__mse_bwd, y, p, t, NULL);
        (void)nd;
    }
    return y;
}
LSSDEF lss_tensor *lss_op_mse(lss_graph *g, lss_tensor *pred, lss_tensor *target) { return lss__pair_loss(g, pred, target, 0, "lss_op_mse"); }
LSSDEF lss_tensor *lss_op_l1(lss_graph *g, lss_tensor *pred, lss_tensor *target) { return lss__pair_loss(g, pred, target, 1, "lss_op_l1"); }

static double lss__softplus(double x) { return x > 30 ? x : x < -30 ? exp(x) : log1p(exp(x)); }
static double lss__sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

/* One Gaussian component: raw mean mu[d], raw triangle tri[d(d+1)/2], y[d]. Returns
 * logdet = sum log L_ii and q = ||L^T (y - mu)||^2; fills r = y - mu and z = L^T r (d entries each). */
static void lss__chol_terms(const float *mu, const float *tri, const double *y, int d, double *r, double *z,
                            double *logdet, double *q) {
    int i, j;
    double ld = 0, qq = 0;
    for (i = 0; i < d; i++) r[i] = y[i] - (double)mu[i];
    for (j = 0; j < d; j++) z[j] = 0;
    for (i = 0; i < d; i++) {
        const float *row = tri + i * (i + 1) / 2;
        for (j = 0; j < i; j++) z[j] += (double)row[j] * r[i];
        {
            double lii = lss__softplus(row[i]) + LSS_CHOL_DIAG_EPS;
            z[i] += lii * r[i];
            ld += log(lii);
        }
    }
    for (j = 0; j < d; j++) qq += z[j] * z[j];
    *logdet = ld; *q = qq;
}

LSSDEF int64_t lss_gmm_width(int K, int d) {
    if (K < 1 || d < 1) return -1;
    return (int64_t)K * (1 + d + (int64_t)d * (d + 1) / 2);
}

static int lss__target_dim(const lss_tensor *t) { return t->ndim <= 1 ? 1 : (int)(t->n / t->shape[0]); }

static void lss__gauss_nll_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    int64_t N = a->shape[0], w = a->n / N, n;
    int d = lss__target_dim(b), i, j;
    double sc = nd->out->grad[0] / (double)N;
    if (!a->grad) return;
    for (n = 0; n < N; n++) {
        const float *o = a->data + n * w, *tri = o + d;
        float *gmu = a->grad + n * w, *gtri = gmu + d;
        double yy[64], r[64], z[64], ld, q;
        for (i = 0; i < d; i++) yy[i] = b->data[n * d + i];
        lss__chol_terms(o, tri, yy, d, r, z, &ld, &q);
        /* value q - 2 sum log L_ii; dq/dmu = -2 L z; dq/dL_ij = 2 z_j r_i */
        for (i = 0; i < d; i++) {
            const float *row = tri + i * (i + 1) / 2;
            double lz = 0;
            for (j = 0; j < i; j++) lz += (double)row[j] * z[j];
            lz += (lss__softplus(row[i]) + LSS_CHOL_DIAG_EPS) * z[i];
            gmu[i] += (float)(sc * -2.0 * lz);
        }
        for (i = 0; i < d; i++) {
            const float *row = tri + i * (i + 1) / 2;
            float *grow = gtri + i * (i + 1) / 2;
            for (j = 0; j < i; j++) grow[j] += (float)(sc * 2.0 * z[j] * r[i]);
            grow[i] += (float)(sc * (2.0 * z[i] * r[i] - 2.0 / (lss__softplus(row[i]) + LSS_CHOL_DIAG_EPS)) *
                               lss__sigmoid(row[i]));
        }
    }
}
LSSDEF lss_tensor *lss_op_gauss_nll(lss_graph *g, lss_tensor *out, lss_tensor *target) {
    lss_tensor *y;
    int64_t N, n;
    int d;
    double tot = 0;
    if (!lss__enter(g, "lss_op_gauss_nll", 2, out, target, NULL)) return NULL;
    if (out->ndim < 1 || target->ndim < 1 || out->shape[0] != target->shape[0]) return lss__shape_err(g, "lss_op_gauss_nll", out, target);
    N = out->shape[0]; d = lss__target_dim(target);
    if (d > 64 || out->n / N != d + (int64_t)d * (d + 1) / 2) return lss__shape_err(g, "lss_op_gauss_nll (need [N, d + d(d+1)/2] and [N, d])", out, target);
    if (!(y = lss__scalar_out(g, out, NULL, NULL))) return NULL;
    for (n = 0; n < N; n++) {
        const float *o = out->data + n * (out->n / N);
        double yy[64], r[64], z[64], ld, q;
        int i;
        for (i = 0; i < d; i++) yy[i] = target->data[n * d + i];
        lss__chol_terms(o, o + d, yy, d, r, z, &ld, &q);
        tot += q - 2.0 * ld;
    }
    y->data[0] = (float)(tot / (double)N);
    {
        LSS__REC(g, nd, lss__gauss_nll_bwd, y, out, target, NULL);
        (void)nd;
    }
    return y;
}

/* Per-sample GMM terms: returns -log p; when grad != NULL adds scale * d(-log p)/d(out) to grad. */
static double lss__gmm_one(const float *o, const double *y, int K, int d, double *work, float *grad, double scale) {
    int k, i, j;
    int64_t T = (int64_t)d * (d + 1) / 2;
    const float *lg = o, *mu = o + K, *tri = o + K + (int64_t)K * d;
    double *a = work, *r = work + K, *z = r + d, mx = -HUGE_VAL, lse = 0, lmx = -HUGE_VAL, lsel = 0;
    const double c0 = 0.5 * d * log(2.0 * 3.14159265358979323846);
    for (k = 0; k < K; k++) if (lg[k] > lmx) lmx = lg[k];
    for (k = 0; k < K; k++) lsel += exp(lg[k] - lmx);
    lsel = lmx + log(lsel);
    for (k = 0; k < K; k++) {
        double ld, q;
        lss__chol_terms(mu + (int64_t)k * d, tri + k * T, y, d, r, z, &ld, &q);
        a[k] = (lg[k] - lsel) + ld - 0.5 * q - c0;
        if (a[k] > mx) mx = a[k];
    }
    if (!isfinite(mx)) return HUGE_VAL;
    for (k = 0; k < K; k++) lse += exp(a[k] - mx);
    lse = mx + log(lse);
    if (grad) {
        for (k = 0; k < K; k++) {
            double gk = exp(a[k] - lse);               /* responsibility */
            double pk = exp(lg[k] - lsel);             /* mixture weight */
            const float *trk = tri + k * T;
            float *gmu = grad + K + (int64_t)k * d, *gtri = grad + K + (int64_t)K * d + k * T;
            double ld, q;
            grad[k] += (float)(scale * -(gk - pk));
            lss__chol_terms(mu + (int64_t)k * d, trk, y, d, r, z, &ld, &q);
            /* a_k = ... + sum log L_ii - 1/2 ||z||^2, z = L^T r; d a/d mu = L z; d a/d L_ij = -z_j r_i (+1/L_ii) */
            for (i = 0; i < d; i++) {
                double lz = 0;
                const float *row = trk + i * (i + 1) / 2;
                for (j = 0; j < i; j++) lz += (double)row[j] * z[j];
                lz += (lss__softplus(row[i]) + LSS_CHOL_DIAG_EPS) * z[i];
                gmu[i] += (float)(scale * -gk * lz);
            }
            for (i = 0; i < d; i++) {
                const float *row = trk + i * (i + 1) / 2;
                float *grow = gtri + i * (i + 1) / 2;
                for (j = 0; j < i; j++) grow[j] += (float)(scale * -gk * (-z[j] * r[i]));
                {
                    double lii = lss__softplus(row[i]) + LSS_CHOL_DIAG_EPS;
                    grow[i] += (float)(scale * -gk * (-z[i] * r[i] + 1.0 / lii) * lss__sigmoid(row[i]));
                }
            }
        }
    }
    return -lse;
}

static void lss__gmm_nll_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    int64_t N = a->shape[0], w = a->n / N, n;
    int d = lss__target_dim(b), K = nd->p.gmm.K, i;
    double sc = nd->out->grad[0] / (double)N;
    if (!a->grad) return;
    for (n = 0; n < N; n++) {
        double yy[64], work[256 + 128];
        for (i = 0; i < d; i++) yy[i] = b->data[n * d + i];
        lss__gmm_one(a->data + n * w, yy, K, d, work, a->grad + n * w, sc);
    }
}
LSSDEF lss_tensor *lss_op_gmm_nll(lss_graph *g, lss_tensor *out, lss_tensor *target, int K) {
    lss_tensor *y;
    int64_t N, n;
    int d;
    double tot = 0;
    if (!lss__enter(g, "lss_op_gmm_nll", 2, out, target, NULL)) return NULL;
    if (K < 1 || K > 256) return lss__fail(g, LSS_ERR_ARG, "%s: K must be in 1..256%s", "lss_op_gmm_nll", NULL);
    if (out->ndim < 1 || target->ndim < 1 || out->shape[0] != target->shape[0]) return lss__shape_err(g, "lss_op_gmm_nll", out, target);
    N = out->shape[0]; d = lss__target_dim(target);
    if (d > 64 || out->n / N != lss_gmm_width(K, d)) return lss__shape_err(g, "lss_op_gmm_nll (need [N, K(1 + d + d(d+1)/2)] and [N, d])", out, target);
    if (!(y = lss__scalar_out(g, out, NULL, NULL))) return NULL;
    for (n = 0; n < N; n++) {
        double yy[64], work[256 + 128];
        int i;
        for (i = 0; i < d; i++) yy[i] = target->data[n * d + i];
        tot += lss__gmm_one(out->data + n * (out->n / N), yy, K, d, work, NULL, 0);
    }
    y->data[0] = (float)(tot / (double)N);
    {
        LSS__REC(g, nd, lss__gmm_nll_bwd, y, out, target, NULL);
        if (nd) nd->p.gmm.K = K;
    }
    return y;
}

LSSDEF int lss_gmm_logpdf(const float *out, const double *y, int64_t n, int K, int d, double *logp) {
    int64_t i, w = lss_gmm_width(K, d);
    if (!out || !y || !logp || n < 0 || K < 1 || K > 256 || d < 1 || d > 64)
        return lss_seterr(LSS_ERR_ARG, "lss_gmm_logpdf: bad arguments (n %lld, K %d, d %d; K <= 256, d <= 64)",
                          (long long)n, K, d);
    LSS__PRAGMA(omp parallel for schedule(static) if (n > 64))
    for (i = 0; i < n; i++) {
        double work[256 + 128], v = lss__gmm_one(out + i * w, y + i * d, K, d, work, NULL, 0);
        logp[i] = isnan(v) ? -HUGE_VAL : -v;
    }
    return LSS_OK;
}

static void lss__dsm_loss_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1], *c = nd->in[2];
    int64_t N = a->shape[0], per = a->n / N, n, k;
    double sc = nd->out->grad[0] / (double)a->n;
    if (!a->grad) return;
    for (n = 0; n < N; n++) {
        double sg = c->data[n];
        for (k = n * per; k < (n + 1) * per; k++)
            a->grad[k] += (float)(sc * 2.0 * (b->data[k] + sg * a->data[k]) * sg);
    }
}
LSSDEF lss_tensor *lss_op_dsm_loss(lss_graph *g, lss_tensor *r, lss_tensor *u, lss_tensor *sigma) {
    lss_tensor *y;
    int64_t N, per, n, k;
    double s = 0;
    if (!lss__enter(g, "lss_op_dsm_loss", 3, r, u, sigma)) return NULL;
    if (r->n != u->n || r->ndim < 1 || sigma->n != r->shape[0]) return lss__shape_err(g, "lss_op_dsm_loss (r and u; sigma has one value per sample)", r, sigma);
    N = r->shape[0]; per = r->n / N;
    if (!(y = lss__scalar_out(g, r, NULL, NULL))) return NULL;
    for (n = 0; n < N; n++) {
        double sg = sigma->data[n];
        for (k = n * per; k < (n + 1) * per; k++) { double e = u->data[k] + sg * r->data[k]; s += e * e; }
    }
    y->data[0] = (float)(s / (double)r->n);
    {
        LSS__REC(g, nd, lss__dsm_loss_bwd, y, r, u, sigma);
        (void)nd;
    }
    return y;
}

static void lss__wgan_critic_loss_bwd(lss__node *nd) {
    lss_tensor *a = nd->in[0], *b = nd->in[1];
    const float *go = nd->out->grad;
    int64_t k;
    float vr = (float)(-go[0] / (double)a->n), vf = (float)(go[0] / (double)b->n);
    if (a->grad) for (k = 0; k < a->n; k++) a->grad[k] += vr;
    if (b->grad) for (k = 0; k < b->n; k++) b->grad[k] += vf;
}
LSSDEF lss_tensor *lss_op_wgan_critic_loss(lss_graph *g, lss_tensor *real, lss_tensor *fake) {
    lss_tensor *y;
    if (!lss__enter(g, "lss_op_wgan_critic_loss", 2, real, fake, NULL)) return NULL;
    if (!(y = lss__scalar_out(g, real, fake, NULL))) return NULL;
    y->data[0] = (float)(lss__dsum(fake->data, fake->n) / (double)fake->n - lss__dsum(real->data, real->n) / (double)real->n);
    {
        LSS__REC(g, nd, lss__wgan_critic_loss_bwd, y, real, fake, NULL);
        (void)nd;
    }
    return y;
}

/* ================================================================ backward */
LSSDEF int lss_backward_seed(lss_graph *g, lss_tensor *y, const float *dy) {
    lss__node *nd;
    int64_t k;
    if (!g) return lss_seterr(LSS_ERR_ARG, "lss_backward: NULL graph");
    if (g->status) return g->status;
    if (!y || !dy) return lss_seterr(LSS_ERR_ARG, "lss_backward: NULL tensor or seed");
    if (!g->record) return lss_seterr(LSS_ERR_STATE, "lss_backward: the graph is in evaluation mode (nothing recorded)");
    if (!y->grad) return lss_seterr(LSS_ERR_STATE, "lss_backward: the tensor does not depend on any trainable tensor");
    for (k = 0; k < y->n; k++) y->grad[k] += dy[k];
    for (nd = g->tape; nd; nd = nd->prev) nd->backward(nd);
    return g->status; /* a backward step that found no memory for its scratch set it */
}

LSSDEF int lss_backward(lss_graph *g, lss_tensor *loss) {
    float one = 1.0f;
    if (g && !g->status && loss && loss->n != 1)
        return lss_seterr(LSS_ERR_SHAPE, "lss_backward: the loss must have one element (has %lld)", (long long)loss->n);
    return lss_backward_seed(g, loss, &one);
}

/* ================================================================ optimizers */
struct lss_optim {
    lss_optim_opts o;
    lss_store *st;
    int64_t size, t;      /* store size at creation; steps taken */
    float *m, *v;         /* moments (Adam), momentum buffer (SGD: m; RMSProp: v and m) */
    double *hist, *scratch, *tnorm;
    int64_t nhist, hpos;  /* norms recorded (capped at clip_history), next slot of the ring */
    double last_norm;
};

LSSDEF int lss_optim_create(lss_store *st, const lss_optim_opts *opts, lss_optim **op) {
    lss_optim *o;
    lss_optim_opts d;
    if (!op || !st) return lss_seterr(LSS_ERR_ARG, "lss_optim_create: NULL argument");
    *op = NULL;
    if (st->status) return lss_seterr(st->status, "lss_optim_create: the store is in a failed state");
    if (opts) d = *opts; else memset(&d, 0, sizeof d);
    if ((int)d.kind < 0 || d.kind > LSS_OPT_RMSPROP) return lss_seterr(LSS_ERR_ARG, "lss_optim_create: unknown optimizer %d", (int)d.kind);
    if ((int)d.sched < 0 || d.sched > LSS_SCHED_EXP) return lss_seterr(LSS_ERR_ARG, "lss_optim_create: unknown schedule %d", (int)d.sched);
    if ((int)d.clip < 0 || d.clip > LSS_CLIP_PERCENTILE) return lss_seterr(LSS_ERR_ARG, "lss_optim_create: unknown clipping %d", (int)d.clip);
    if (d.lr == 0) d.lr = 1e-3;
    if (d.beta1 == 0) d.beta1 = 0.9;
    if (d.beta2 == 0) d.beta2 = 0.999;
    if (d.eps == 0) d.eps = d.kind == LSS_OPT_RMSPROP && d.rms_tf ? 1e-10 : 1e-8;
    if (d.rho == 0) d.rho = 0.9;
    if (d.gamma == 0) d.gamma = d.sched == LSS_SCHED_STEP ? 0.1 : 0.999;
    if (d.clip_percentile == 0) d.clip_percentile = 50;
    if (d.clip_history == 0) d.clip_history = 10000;
    if (!(d.lr > 0) || !(d.beta1 >= 0 && d.beta1 < 1) || !(d.beta2 >= 0 && d.beta2 < 1) || !(d.eps > 0) ||
        !(d.rho > 0 && d.rho < 1) || !(d.momentum >= 0 && d.momentum < 1) || !(d.weight_decay >= 0) ||
        !(d.gamma > 0) || !(d.lr_min >= 0) || !(d.clip_percentile > 0 && d.clip_percentile <= 100) ||
        d.clip_history < 1 || (d.sched == LSS_SCHED_STEP && d.step_size < 1) ||
        (d.sched == LSS_SCHED_COSINE && d.total_steps < 1) || (d.clip == LSS_CLIP_NORM && !(d.clip_norm > 0)))
        return lss_seterr(LSS_ERR_RANGE, "lss_optim_create: hyper-parameter out of range (lr %g, betas %g %g, eps %g, "
                          "momentum %g, rho %g, gamma %g, step_size %lld, total_steps %lld, clip_norm %g, "
                          "percentile %g, history %d)", d.lr, d.beta1, d.beta2, d.eps, d.momentum, d.rho, d.gamma,
                          (long long)d.step_size, (long long)d.total_steps, d.clip_norm, d.clip_percentile,
                          d.clip_history);
    o = (lss_optim *)LSS_MALLOC(sizeof *o);
    if (!o) return lss_seterr(LSS_ERR_NOMEM, "lss_optim_create: out of memory");
    memset(o, 0, sizeof *o);
    o->o = d; o->st = st; o->size = st->size;
    o->m = (float *)LSS_MALLOC((size_t)(st->size > 0 ? st->size : 1) * sizeof(float));
    o->v = (float *)LSS_MALLOC((size_t)(st->size > 0 ? st->size : 1) * sizeof(float));
    o->tnorm = (double *)LSS_MALLOC((size_t)(st->n > 0 ? st->n : 1) * sizeof(double));
    if (d.clip == LSS_CLIP_PERCENTILE) {
        o->hist = (double *)LSS_MALLOC((size_t)d.clip_history * sizeof(double));
        o->scratch = (double *)LSS_MALLOC((size_t)d.clip_history * sizeof(double));
    }
    if (!o->m || !o->v || !o->tnorm || (d.clip == LSS_CLIP_PERCENTILE && (!o->hist || !o->scratch))) {
        lss_optim_free(o);
        return lss_seterr(LSS_ERR_NOMEM, "lss_optim_create: out of memory for the optimizer state");
    }
    memset(o->m, 0, (size_t)st->size * sizeof(float));
    memset(o->v, 0, (size_t)st->size * sizeof(float));
    if (d.kind == LSS_OPT_RMSPROP && d.rms_tf) {
        int64_t k;
        for (k = 0; k < st->size; k++) o->v[k] = 1.0f;
    }
    if (o->hist) memset(o->hist, 0, (size_t)d.clip_history * sizeof(double));
    *op = o;
    return LSS_OK;
}

LSSDEF void lss_optim_free(lss_optim *o) {
    if (!o) return;
    LSS_FREE(o->m); LSS_FREE(o->v); LSS_FREE(o->hist); LSS_FREE(o->scratch); LSS_FREE(o->tnorm);
    LSS_FREE(o);
}

LSSDEF double lss_optim_lr(const lss_optim *o) {
    double t, lr;
    if (!o) return 0;
    t = (double)o->t; lr = o->o.lr;
    switch (o->o.sched) {
    case LSS_SCHED_STEP: return lr * pow(o->o.gamma, (double)(o->t / o->o.step_size));
    case LSS_SCHED_COSINE:
        if (o->t >= o->o.total_steps) return o->o.lr_min;
        return o->o.lr_min + (lr - o->o.lr_min) * 0.5 * (1.0 + cos(3.14159265358979323846 * t / (double)o->o.total_steps));
    case LSS_SCHED_EXP: return lr * pow(o->o.gamma, t);
    default: return lr;
    }
}
LSSDEF int64_t lss_optim_steps(const lss_optim *o) { return o ? o->t : 0; }
LSSDEF double lss_optim_last_norm(const lss_optim *o) { return o ? o->last_norm : 0; }
LSSDEF void lss_optim_set_lr(lss_optim *o, double lr) { if (o && lr > 0) o->o.lr = lr; }

/* k-th smallest of x[0..n) (x is reordered). */
static double lss__select(double *x, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double piv = x[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < piv) i++;
            while (x[j] > piv) j--;
            if (i <= j) { double tmp = x[i]; x[i] = x[j]; x[j] = tmp; i++; j--; }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return x[k];
    }
    return x[k];
}

/* Percentile with linear interpolation between order statistics (numpy's default). */
static double lss__percentile(double *x, int64_t n, double q) {
    double pos = q / 100.0 * (double)(n - 1), lo, hi;
    int64_t k = (int64_t)floor(pos);
    if (k >= n - 1) return lss__select(x, n, n - 1);
    lo = lss__select(x, n, k);
    hi = lss__select(x, n, k + 1);
    return lo + (pos - (double)k) * (hi - lo);
}

LSSDEF int lss_optim_step(lss_optim *o) {
    lss_store *st;
    double gn2 = 0, gn, lr, b1, b2, bc1, bc2, wd;
    int i;
    if (!o) return lss_seterr(LSS_ERR_ARG, "lss_optim_step: NULL optimizer");
    st = o->st;
    if (st->size != o->size)
        return lss_seterr(LSS_ERR_STATE, "lss_optim_step: the store changed size after the optimizer was created");
    for (i = 0; i < st->n; i++) {
        lss_tensor *t = st->t[i];
        o->tnorm[i] = t->flags & LSS_T_BUFFER ? 0.0 : lss__dsumsq(t->grad, t->n);
        gn2 += o->tnorm[i];
    }
    gn = sqrt(gn2);
    if (!isfinite(gn)) return lss_seterr(LSS_ERR_NUMERIC, "lss_optim_step: gradient is not finite (step %lld)", (long long)o->t);
    o->last_norm = gn;
    if (o->o.clip == LSS_CLIP_NORM && gn > o->o.clip_norm) {
        float f = (float)(o->o.clip_norm / gn);
        for (i = 0; i < st->n; i++) {
            lss_tensor *t = st->t[i];
            int64_t k;
            if (t->flags & LSS_T_BUFFER) continue;
            for (k = 0; k < t->n; k++) t->grad[k] *= f;
        }
    } else if (o->o.clip == LSS_CLIP_PERCENTILE) {
        double thr;
        o->hist[o->hpos] = gn;
        o->hpos = (o->hpos + 1) % o->o.clip_history;
        if (o->nhist < o->o.clip_history) o->nhist++;
        memcpy(o->scratch, o->hist, (size_t)o->nhist * sizeof(double));
        thr = lss__percentile(o->scratch, o->nhist, o->o.clip_percentile);
        for (i = 0; i < st->n; i++) {
            lss_tensor *t = st->t[i];
            double tn = sqrt(o->tnorm[i]);
            int64_t k;
            if ((t->flags & LSS_T_BUFFER) || !(tn > thr)) continue;
            {
                float f = (float)(thr / tn);
                for (k = 0; k < t->n; k++) t->grad[k] *= f;
            }
        }
    }
    lr = lss_optim_lr(o);
    b1 = o->o.beta1; b2 = o->o.beta2; wd = o->o.weight_decay;
    bc1 = 1.0 - pow(b1, (double)(o->t + 1));
    bc2 = 1.0 - pow(b2, (double)(o->t + 1));
    for (i = 0; i < st->n; i++) {
        lss_tensor *t = st->t[i];
        int64_t off = t->data - st->data, k, n = t->n;
        float *w = t->data, *gr = t->grad, *m = o->m + off, *v = o->v + off;
        if (t->flags & LSS_T_BUFFER) continue;
        switch (o->o.kind) {
        case LSS_OPT_ADAM: case LSS_OPT_ADAMW: {
            float fb1 = (float)b1, fb2 = (float)b2, a = (float)(lr / bc1), sb2 = (float)(1.0 / sqrt(bc2)),
                  eps = (float)o->o.eps, fwd = (float)wd, dec = (float)(1.0 - lr * wd);
            int adamw = o->o.kind == LSS_OPT_ADAMW;
            LSS__PRAGMA(omp parallel for schedule(static) if (n > 1048576))
            for (k = 0; k < n; k++) {
                float gk = gr[k];
                if (!adamw && fwd != 0.0f) gk += fwd * w[k];
                m[k] = fb1 * m[k] + (1.0f - fb1) * gk;
                v[k] = fb2 * v[k] + (1.0f - fb2) * gk * gk;
                if (adamw) w[k] *= dec;
                w[k] -= a * m[k] / (sqrtf(v[k]) * sb2 + eps);
            }
            break;
        }
        case LSS_OPT_SGD: {
            float mu = (float)o->o.momentum, flr = (float)lr, fwd = (float)wd;
            for (k = 0; k < n; k++) {
                float gk = gr[k] + fwd * w[k];
                if (mu != 0.0f) { m[k] = o->t == 0 ? gk : mu * m[k] + gk; gk = m[k]; }
                w[k] -= flr * gk;
            }
            break;
        }
        default: { /* RMSProp (PyTorch form): v = rho v + (1 - rho) g^2; step g / (sqrt(v) + eps) */
            float rho = (float)o->o.rho, mu = (float)o->o.momentum, flr = (float)lr, eps = (float)o->o.eps,
                  fwd = (float)wd;
            int tf = o->o.rms_tf;
            for (k = 0; k < n; k++) {
                float gk = gr[k] + fwd * w[k], s;
                v[k] = rho * v[k] + (1.0f - rho) * gk * gk;
                if (tf) { /* TensorFlow 1: eps inside the root, the learning rate inside the momentum */
                    m[k] = mu * m[k] + flr * (gk / sqrtf(v[k] + eps));
                    w[k] -= m[k];
                    continue;
                }
                s = gk / (sqrtf(v[k]) + eps);
                if (mu != 0.0f) { m[k] = mu * m[k] + s; s = m[k]; }
                w[k] -= flr * s;
            }
            break;
        }
        }
    }
    o->t++;
    return LSS_OK;
}

/* ================================================================ checkpoints */
static const char lss__ck_magic[8] = {'L', 'S', 'S', 'N', 'N', 'C', 'K', '1'};

typedef struct {
    FILE *f;
    uint32_t crc;
    int bad;
} lss__cw;

static void lss__cw_put(lss__cw *w, const void *p, size_t n) {
    if (w->bad || n == 0) return;
    if (fwrite(p, 1, n, w->f) != n) { w->bad = 1; return; }
    w->crc = lss_crc32(w->crc, p, n);
}
static void lss__cw_u32(lss__cw *w, uint32_t v) { lss__cw_put(w, &v, 4); }

static void lss__cw_tensor(lss__cw *w, const char *name, uint32_t dtype, int ndim, const int64_t *shape,
                           const void *data, size_t elsize) {
    int64_t n = 1;
    int i;
    lss__cw_u32(w, (uint32_t)strlen(name));
    lss__cw_put(w, name, strlen(name));
    lss__cw_u32(w, dtype);
    lss__cw_u32(w, (uint32_t)ndim);
    for (i = 0; i < ndim; i++) { lss__cw_put(w, &shape[i], 8); n *= shape[i]; }
    lss__cw_put(w, data, (size_t)n * elsize);
}

static int lss__little_endian(void) {
    uint32_t x = 1;
    unsigned char c;
    memcpy(&c, &x, 1);
    return c == 1;
}

/* An extra 1-D tensor of a checkpoint (the training loop's "train.*" state). */
typedef struct {
    const char *name;
    uint32_t dtype;   /* 1 f32, 2 f64 */
    int64_t n;
    void *data;       /* written from / read into */
} lss__ckx;

/* lss_ckpt_save plus nx extra tensors after the optimizer state. keep != NULL: the file is written and
   synced under its temporary name and handed back through *keep (lss_wfile_prepare) for the caller to
   rename with lss_wfile_commit or discard with lss_wfile_abort (a checkpoint set renamed all together). */
static int lss__ckpt_write(const char *path, const lss_store *st, const lss_optim *o, int nx, const lss__ckx *x,
                           lss_wfile *keep) {
    lss_wfile wf;
    lss__cw w;
    uint32_t count;
    int i, s;
    if (!path || !st) return lss_seterr(LSS_ERR_ARG, "lss_ckpt_save: NULL argument");
    if (!lss__little_endian()) return lss_seterr(LSS_ERR_UNSUPPORTED, "lss_ckpt_save: big-endian hosts are not supported");
    if (st->status) return lss_seterr(LSS_ERR_STATE, "lss_ckpt_save: the store is in a failed state");
    if (o && o->st != st) return lss_seterr(LSS_ERR_ARG, "lss_ckpt_save: the optimizer belongs to another store");
    count = (uint32_t)st->n + (o ? (o->size > 0 ? 4u : 2u) + (o->hist ? 1u : 0u) : 0u) + (uint32_t)nx;
    if ((s = lss_wfile_open(&wf, path)) != LSS_OK) return s;
    w.f = wf.f; w.crc = 0; w.bad = 0;
    lss__cw_put(&w, lss__ck_magic, 8);
    lss__cw_u32(&w, LSS_NN_VERSION);
    lss__cw_u32(&w, count);
    for (i = 0; i < st->n; i++) {
        const lss_tensor *t = st->t[i];
        lss__cw_tensor(&w, t->name, 1, t->ndim, t->shape, t->data, 4);
    }
    if (o) {
        double cfg[4];
        int64_t stp[3], sh;
        cfg[0] = (double)o->o.kind; cfg[1] = (double)o->o.clip; cfg[2] = (double)o->o.clip_history; cfg[3] = (double)o->size;
        stp[0] = o->t; stp[1] = o->nhist; stp[2] = o->hpos;
        sh = 4; lss__cw_tensor(&w, "optim.config", 2, 1, &sh, cfg, 8);
        sh = 3; lss__cw_tensor(&w, "optim.step", 4, 1, &sh, stp, 8);
        if (o->size > 0) {
            sh = o->size;
            lss__cw_tensor(&w, "optim.m", 1, 1, &sh, o->m, 4);
            lss__cw_tensor(&w, "optim.v", 1, 1, &sh, o->v, 4);
        }
        if (o->hist) { sh = o->o.clip_history; lss__cw_tensor(&w, "optim.hist", 2, 1, &sh, o->hist, 8); }
    }
    for (i = 0; i < nx; i++) lss__cw_tensor(&w, x[i].name, x[i].dtype, 1, &x[i].n, x[i].data, x[i].dtype == 1 ? 4 : 8);
    {
        uint32_t c = w.crc;
        if (!w.bad && fwrite(&c, 1, 4, w.f) != 4) w.bad = 1;
    }
    if (w.bad) {
        lss_wfile_abort(&wf);
        return lss_seterr(LSS_ERR_IO, "lss_ckpt_save: write error on '%s'", path);
    }
    if (keep) { /* written and synced under the temporary name; the caller renames (or discards) it */
        if ((s = lss_wfile_prepare(&wf)) == LSS_OK) *keep = wf;
        return s;
    }
    return lss_wfile_commit(&wf);
}

LSSDEF int lss_ckpt_save(const char *path, const lss_store *st, const lss_optim *o) {
    return lss__ckpt_write(path, st, o, 0, NULL, NULL);
}

typedef struct {
    const char *name;
    uint32_t nlen, dtype;
    int ndim;
    int64_t shape[8], n;
    const unsigned char *data;
} lss__ckent;

static const lss__ckent *lss__ck_find(const lss__ckent *e, int64_t ne, const char *name) {
    int64_t i;
    size_t l = strlen(name);
    for (i = 0; i < ne; i++)
        if (e[i].nlen == l && !memcmp(e[i].name, name, l)) return &e[i];
    return NULL;
}

static int lss__ck_check(const char *path, const lss__ckent *e, const char *name, uint32_t dtype, int ndim,
                         const int64_t *shape) {
    int i;
    if (!e) return lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor '%s' is missing", path, name);
    if (e->dtype != dtype) return lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor '%s' has dtype %u, expected %u", path, name, e->dtype, dtype);
    if (e->ndim != ndim) return lss_seterr(LSS_ERR_SHAPE, "checkpoint '%s': tensor '%s' has %d dimensions, expected %d", path, name, e->ndim, ndim);
    for (i = 0; i < ndim; i++)
        if (e->shape[i] != shape[i])
            return lss_seterr(LSS_ERR_SHAPE, "checkpoint '%s': tensor '%s' has size %lld in dimension %d, expected %lld",
                              path, name, (long long)e->shape[i], i, (long long)shape[i]);
    return LSS_OK;
}

/* lss_ckpt_load plus nx extra tensors: each one found (1-D, its dtype and n elements, else an error)
 * is copied into x[i].data and found[i] set to 1, an absent one leaves found[i] = 0. */
static int lss__ckpt_read(const char *path, lss_store *st, lss_optim *o, int nx, const lss__ckx *x, int *found) {
    FILE *f;
    unsigned char *buf = NULL;
    lss__ckent *ent = NULL;
    int64_t flen;
    size_t len, pos;
    uint32_t ver, count, crc, i;
    int s = LSS_OK, k;
    if (!path || !st) return lss_seterr(LSS_ERR_ARG, "lss_ckpt_load: NULL argument");
    if (!lss__little_endian()) return lss_seterr(LSS_ERR_UNSUPPORTED, "lss_ckpt_load: big-endian hosts are not supported");
    if (o && o->st != st) return lss_seterr(LSS_ERR_ARG, "lss_ckpt_load: the optimizer belongs to another store");
    if ((s = lss_fopen_read(path, &f, &flen)) != LSS_OK) return lss_seterr(s, "checkpoint: %s", lss_last_error());
    if (flen < 0 || (uint64_t)flen >= (uint64_t)SIZE_MAX) {
        fclose(f);
        return lss_seterr(LSS_ERR_IO, "checkpoint '%s': not a regular file", path);
    }
    len = (size_t)flen;
    if (len < 20) { fclose(f); return lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': too short (%zu bytes)", path, len); }
    buf = (unsigned char *)LSS_MALLOC(len);
    if (!buf) { fclose(f); return lss_seterr(LSS_ERR_NOMEM, "checkpoint '%s': out of memory (%zu bytes)", path, len); }
    if (fread(buf, 1, len, f) != len) {
        int e = ferror(f) ? errno : 0;
        fclose(f); LSS_FREE(buf);
        return lss_seterr(LSS_ERR_IO, "checkpoint '%s': cannot read: %s", path, e ? strerror(e) : "the file shrank while being read");
    }
    fclose(f);
    if (memcmp(buf, lss__ck_magic, 8) != 0) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': not an lss checkpoint (bad magic)", path); goto done; }
    memcpy(&ver, buf + 8, 4);
    memcpy(&count, buf + 12, 4);
    if (ver != LSS_NN_VERSION) {
        s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': format version %u, this build reads version %d", path, ver, LSS_NN_VERSION);
        goto done;
    }
    memcpy(&crc, buf + len - 4, 4);
    if (lss_crc32(0, buf, len - 4) != crc) {
        s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': CRC32 mismatch (file truncated or corrupted)", path);
        goto done;
    }
    if ((size_t)count > len / 12) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor count %u exceeds the file size", path, count); goto done; }
    ent = (lss__ckent *)LSS_MALLOC((count ? count : 1) * sizeof *ent);
    if (!ent) { s = lss_seterr(LSS_ERR_NOMEM, "checkpoint '%s': out of memory", path); goto done; }
    pos = 16;
    for (i = 0; i < count; i++) {
        lss__ckent *e = &ent[i];
        size_t es;
        int64_t n = 1;
        uint32_t nd;
        if (len - 4 - pos < 4) goto trunc;
        memcpy(&e->nlen, buf + pos, 4); pos += 4;
        if (e->nlen == 0 || e->nlen > 4096 || len - 4 - pos < (size_t)e->nlen + 8) goto trunc;
        e->name = (const char *)buf + pos; pos += e->nlen;
        memcpy(&e->dtype, buf + pos, 4); memcpy(&nd, buf + pos + 4, 4); pos += 8;
        if (nd > 8) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor %u has %u dimensions", path, i, nd); goto done; }
        e->ndim = (int)nd;
        if (len - 4 - pos < (size_t)nd * 8) goto trunc;
        for (k = 0; k < e->ndim; k++) {
            memcpy(&e->shape[k], buf + pos, 8); pos += 8;
            if (e->shape[k] < 1 || e->shape[k] > ((int64_t)1 << 40) || n > ((int64_t)1 << 46) / e->shape[k]) {
                s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor '%.*s' has a bad size", path, (int)e->nlen, e->name);
                goto done;
            }
            n *= e->shape[k];
        }
        es = e->dtype == 1 ? 4 : (e->dtype == 2 || e->dtype == 4) ? 8 : 0;
        if (!es) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor '%.*s' has unknown dtype %u", path, (int)e->nlen, e->name, e->dtype); goto done; }
        e->n = n;
        if ((size_t)n > (len - 4 - pos) / es) goto trunc;
        e->data = buf + pos;
        pos += (size_t)n * es;
    }
    if (pos != len - 4) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': %zu unexpected bytes after the last tensor", path, len - 4 - pos); goto done; }
    /* validate against the store and the optimizer */
    for (i = 0; i < (uint32_t)st->n; i++) {
        const lss_tensor *t = st->t[i];
        if ((s = lss__ck_check(path, lss__ck_find(ent, count, t->name), t->name, 1, t->ndim, t->shape)) != LSS_OK) goto done;
    }
    for (i = 0; i < count; i++) {
        char nm[4100];
        memcpy(nm, ent[i].name, ent[i].nlen); nm[ent[i].nlen] = 0;
        if (ent[i].nlen >= 6 && (!memcmp(nm, "optim.", 6) || !memcmp(nm, "train.", 6))) continue;
        if (!lss_store_get(st, nm)) { s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor '%s' is not in the model", path, nm); goto done; }
    }
    if (o) {
        const lss__ckent *ec = lss__ck_find(ent, count, "optim.config");
        double cfg[4];
        int64_t sh;
        sh = 4; if ((s = lss__ck_check(path, ec, "optim.config", 2, 1, &sh)) != LSS_OK) goto done;
        memcpy(cfg, ec->data, sizeof cfg);
        if (cfg[0] != (double)o->o.kind || cfg[1] != (double)o->o.clip || cfg[2] != (double)o->o.clip_history ||
            cfg[3] != (double)o->size) {
            s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': optimizer state is for another optimizer (kind %g clip %g history %g size %g; "
                           "this one: kind %d clip %d history %d size %lld)", path, cfg[0], cfg[1], cfg[2], cfg[3],
                           (int)o->o.kind, (int)o->o.clip, o->o.clip_history, (long long)o->size);
            goto done;
        }
        sh = 3; if ((s = lss__ck_check(path, lss__ck_find(ent, count, "optim.step"), "optim.step", 4, 1, &sh)) != LSS_OK) goto done;
        if (o->size > 0) {
            sh = o->size;
            if ((s = lss__ck_check(path, lss__ck_find(ent, count, "optim.m"), "optim.m", 1, 1, &sh)) != LSS_OK) goto done;
            if ((s = lss__ck_check(path, lss__ck_find(ent, count, "optim.v"), "optim.v", 1, 1, &sh)) != LSS_OK) goto done;
        }
        if (o->hist) {
            sh = o->o.clip_history;
            if ((s = lss__ck_check(path, lss__ck_find(ent, count, "optim.hist"), "optim.hist", 2, 1, &sh)) != LSS_OK) goto done;
        }
        {
            int64_t stp[3];
            memcpy(stp, lss__ck_find(ent, count, "optim.step")->data, sizeof stp);
            if (stp[0] < 0 || stp[1] < 0 || stp[1] > o->o.clip_history || stp[2] < 0 || stp[2] >= o->o.clip_history) {
                s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': tensor 'optim.step' holds invalid counters", path);
                goto done;
            }
        }
    }
    for (k = 0; k < nx; k++) {
        const lss__ckent *e = lss__ck_find(ent, count, x[k].name);
        if (e && (s = lss__ck_check(path, e, x[k].name, x[k].dtype, 1, &x[k].n)) != LSS_OK) goto done;
    }
    /* everything is valid: copy */
    for (k = 0; k < nx; k++) {
        const lss__ckent *e = lss__ck_find(ent, count, x[k].name);
        found[k] = e != NULL;
        if (e) memcpy(x[k].data, e->data, (size_t)x[k].n * (x[k].dtype == 1 ? 4 : 8));
    }
    for (i = 0; i < (uint32_t)st->n; i++) {
        lss_tensor *t = st->t[i];
        memcpy(t->data, lss__ck_find(ent, count, t->name)->data, (size_t)t->n * 4);
    }
    if (o) {
        int64_t stp[3];
        memcpy(stp, lss__ck_find(ent, count, "optim.step")->data, sizeof stp);
        o->t = stp[0]; o->nhist = stp[1]; o->hpos = stp[2];
        if (o->size > 0) {
            memcpy(o->m, lss__ck_find(ent, count, "optim.m")->data, (size_t)o->size * 4);
            memcpy(o->v, lss__ck_find(ent, count, "optim.v")->data, (size_t)o->size * 4);
        }
        if (o->hist) memcpy(o->hist, lss__ck_find(ent, count, "optim.hist")->data, (size_t)o->o.clip_history * 8);
    }
    s = LSS_OK;
    goto done;
trunc:
    s = lss_seterr(LSS_ERR_FORMAT, "checkpoint '%s': truncated (tensor %u runs past the end)", path, i);
done:
    LSS_FREE(ent);
    LSS_FREE(buf);
    return s;
}

LSSDEF int lss_ckpt_load(const char *path, lss_store *st, lss_optim *o) {
    return lss__ckpt_read(path, st, o, 0, NULL, NULL);
}

LSSDEF int lss_ckpt_load_best(const char *path, lss_store *st, int *best) {
    lss__ckx x;
    float *tmp;
    int found = 0, s;
    if (best) *best = 0;
    if (!path || !st) return lss_seterr(LSS_ERR_ARG, "lss_ckpt_load_best: NULL path or store");
    if (st->size < 1) return lss__ckpt_read(path, st, NULL, 0, NULL, NULL);
    tmp = (float *)LSS_MALLOC(sizeof(float) * (size_t)st->size);
    if (!tmp) return lss_seterr(LSS_ERR_NOMEM, "lss_ckpt_load_best: out of memory");
    x.name = "train.best"; x.dtype = 1; x.n = st->size; x.data = tmp;
    s = lss__ckpt_read(path, st, NULL, 1, &x, &found);
    if (s == LSS_OK && found) {
        memcpy(st->data, tmp, sizeof(float) * (size_t)st->size);
        if (best) *best = 1;
    }
    LSS_FREE(tmp);
    return s;
}

/* ================================================================ training loop */
/* Loop state saved with each network's checkpoint as "train.state" (f64), ignored by lss_ckpt_load. */
enum {
    LSS__TS_TAG = 0,   /* 1 */
    LSS__TS_STEP,      /* steps done (equals the optimizer's count) */
    LSS__TS_SUM,       /* training losses of this network since the last CSV row: sum, count */
    LSS__TS_CNT,
    LSS__TS_BEST,      /* best held-out loss of this network (+inf: none yet), its step (-1), */
    LSS__TS_BESTSTEP,
    LSS__TS_SINCE,     /* evaluations since it improved, */
    LSS__TS_MBEST,     /* best mean held-out loss of all networks and its step, */
    LSS__TS_MBESTSTEP,
    LSS__TS_SKIPPED,   /* skipped steps, */
    LSS__TS_EVALS,     /* evaluations done */
    LSS__TS_N
};

typedef struct {
    char name[72];
    lss_store *best;       /* keep_best: parameters of the best evaluation */
    double sum, best_v;
    int64_t cnt, best_step, since;
    lss_wfile ck;          /* its checkpoint, written and not yet renamed into place */
} lss__tnet;

/* A store with the tensors (names, shapes, kinds) of `src`, for snapshots. */
static int lss__store_clone(const lss_store *src, lss_store **out) {
    lss_store *d;
    int i, s;
    if ((s = lss_store_create(src->seed, &d)) != LSS_OK) return s;
    for (i = 0; i < src->n; i++) {
        const lss_tensor *t = src->t[i];
        lss__store_add(d, t->name, t->ndim, t->shape, LSS_INIT_ZERO, 0.0f, (t->flags & LSS_T_BUFFER) != 0);
    }
    if ((s = d->status) != LSS_OK) { lss_store_free(d); return s; }
    *out = d;
    return LSS_OK;
}

static int lss__csv_name_ok(const char *s) {
    size_t n = strlen(s), i;
    if (n == 0 || n > 64) return 0;
    for (i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r' || s[i] == ' ') return 0;
    return 1;
}

static void lss__train_state(const lss__tnet *tn, int64_t t, double mbest, int64_t mbest_step, int64_t skipped,
                             int64_t evals, double *v) {
    v[LSS__TS_TAG] = 1; v[LSS__TS_STEP] = (double)t; v[LSS__TS_SUM] = tn->sum; v[LSS__TS_CNT] = (double)tn->cnt;
    v[LSS__TS_BEST] = tn->best_v; v[LSS__TS_BESTSTEP] = (double)tn->best_step; v[LSS__TS_SINCE] = (double)tn->since;
    v[LSS__TS_MBEST] = mbest; v[LSS__TS_MBESTSTEP] = (double)mbest_step; v[LSS__TS_SKIPPED] = (double)skipped;
    v[LSS__TS_EVALS] = (double)evals;
}

/* The loss-CSV columns of networks that are not in this run, kept when it resumes (a subset of the networks
   of a directory resumed alone keeps the others' history): rows merged with this run's by step. */
typedef struct {
    int n;          /* such columns */
    char **name;    /* their names */
    int64_t nrows;
    double *rows;   /* nrows x (1 + n): step, then the columns (rows where one of them is finite) */
} lss__tcsv;

static void lss__train_csv_free(lss__tcsv *f) {
    int j;
    if (f->name) for (j = 0; j < f->n; j++) LSS_FREE(f->name[j]);
    LSS_FREE(f->name); LSS_FREE(f->rows);
    memset(f, 0, sizeof *f);
}

/* This run's rows (ncols columns) and the kept columns, merged by step, written atomically. */
static int lss__train_csv_write(const char *path, int ncols, char *const *hdr, int64_t nrows, const double *rows, const lss__tcsv *f) {
    int64_t i = 0, q = 0, m = 0;
    int nc = ncols + f->n, j, s;
    double *out;
    const char **names;
    if (f->n == 0) return lss_csv_write(path, ncols, (const char *const *)hdr, nrows, rows);
    out = (double *)LSS_MALLOC((size_t)((nrows + f->nrows) * nc + 1) * sizeof(double));
    names = (const char **)LSS_MALLOC((size_t)nc * sizeof(char *));
    if (!out || !names) { LSS_FREE(out); LSS_FREE(names); return lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory for the loss CSV"); }
    for (j = 0; j < nc; j++) names[j] = j < ncols ? hdr[j] : f->name[j - ncols];
    while (i < nrows || q < f->nrows) {
        double si = i < nrows ? rows[i * ncols] : HUGE_VAL, sq = q < f->nrows ? f->rows[q * (1 + f->n)] : HUGE_VAL;
        double st = si < sq ? si : sq, *row = out + m * nc;
        row[0] = st;
        for (j = 1; j < ncols; j++) row[j] = si == st ? rows[i * ncols + j] : NAN;
        for (j = 0; j < f->n; j++) row[ncols + j] = sq == st ? f->rows[q * (1 + f->n) + 1 + j] : NAN;
        if (si == st) i++;
        if (sq == st) q++;
        m++;
    }
    s = lss_csv_write(path, nc, names, m, out);
    LSS_FREE(out); LSS_FREE(names);
    return s;
}

/* Resume: the rows of this run's columns with step <= t0 (into *rows, *nrows, the last into lastrow) and the
   other columns (into *f). Every column of this run must be in the file. */
static int lss__train_csv_resume(const char *path, int ncols, char *const *hdr, int64_t t0, double **rows, int64_t *nrows,
                                 double *lastrow, lss__tcsv *f) {
    lss_csv c;
    int *map = NULL, *fc = NULL, j, q, s = LSS_OK;
    int64_t r, n = 0;
    memset(&c, 0, sizeof c);
    if ((s = lss_csv_read(path, &c)) != LSS_OK) return lss_seterr(s, "lss_train: cannot resume the loss CSV: %s", lss_last_error());
    map = (int *)LSS_MALLOC((size_t)(ncols + c.ncols + 1) * sizeof(int));
    if (!map) { s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory"); goto done; }
    fc = map + ncols;
    if (c.ncols < 1 || strcmp(c.names[0], "step")) {
        s = lss_seterr(LSS_ERR_FORMAT, "lss_train: loss CSV '%s' does not start with a step column", path);
        goto done;
    }
    map[0] = 0;
    for (j = 1; j < ncols; j++)
        if ((map[j] = lss_csv_col(&c, hdr[j])) < 1) {
            s = lss_seterr(LSS_ERR_FORMAT, "lss_train: loss CSV '%s' has no column %s (this run's columns: step, train_<name>...%s)",
                           path, hdr[j], ncols > 1 && !strncmp(hdr[ncols - 1], "valid_", 6) ? ", valid_<name>..." : "");
            goto done;
        }
    for (q = 1; q < c.ncols; q++) {
        for (j = 1; j < ncols && map[j] != q; j++) {}
        if (j == ncols) fc[f->n++] = q;
    }
    if (f->n > 0) {
        f->name = (char **)LSS_MALLOC((size_t)f->n * sizeof(char *));
        f->rows = (double *)LSS_MALLOC((size_t)(c.nrows * (1 + f->n) + 1) * sizeof(double));
        if (f->name) memset(f->name, 0, (size_t)f->n * sizeof(char *));
        if (!f->name || !f->rows) { s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory"); goto done; }
        for (j = 0; j < f->n; j++)
            if (!(f->name[j] = (char *)LSS_MALLOC(strlen(c.names[fc[j]]) + 1))) {
                s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory");
                goto done;
            } else strcpy(f->name[j], c.names[fc[j]]);
    }
    if (c.nrows > 0 && !(*rows = (double *)LSS_MALLOC((size_t)(c.nrows * ncols) * sizeof(double)))) {
        s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory");
        goto done;
    }
    for (r = 0; r < c.nrows; r++) {
        const double *cr = c.data + r * c.ncols;
        int any = 0;
        if (!isfinite(cr[0])) continue;
        for (j = 0; j < f->n && !any; j++) any = !isnan(cr[fc[j]]);
        if (any) { /* a row of the other networks */
            double *fr = f->rows + f->nrows * (1 + f->n);
            fr[0] = cr[0];
            for (j = 0; j < f->n; j++) fr[1 + j] = cr[fc[j]];
            f->nrows++;
        }
        if (cr[0] > (double)t0) { if (f->n == 0) break; continue; }
        for (j = 1, any = f->n == 0; j < ncols && !any; j++) any = !isnan(cr[map[j]]);
        if (!any) continue; /* only the other networks have values at this step */
        for (j = 0; j < ncols; j++) (*rows)[n * ncols + j] = cr[map[j]];
        n++;
    }
    *nrows = n;
    if (n > 0) memcpy(lastrow, *rows + (n - 1) * ncols, (size_t)ncols * sizeof(double));
done:
    LSS_FREE(map);
    lss_csv_free(&c);
    return s;
}

#define LSS__TSUB(nets, k) (o && o->substeps && o->substeps[k] > 1 ? (int64_t)o->substeps[k] : (int64_t)1)
LSSDEF int lss_train(lss_train_net *nets, int nnet, const lss_train_opts *o, lss_train_result *res) {
    lss__tcsv fx = {0, NULL, 0, NULL};
    lss__tnet *tn = NULL;
    double *loss = NULL, *valid = NULL, *lastrow = NULL, *rows = NULL, mbest = HUGE_VAL, t_start = lss_time_now();
    double seconds_step = 0;
    char **hdr = NULL;
    int64_t t0 = 0, t, nrows = 0, caprows = 0, mbest_step = -1, skipped = 0, evals = 0;
    int k, j, s = LSS_OK, ncols, stop = 0, early = 0;
    if (res) { memset(res, 0, sizeof *res); res->best_step = -1; }
    /* ---- arguments */
    if (!nets || !o) return lss_seterr(LSS_ERR_ARG, "lss_train: NULL argument");
    if (nnet < 1) return lss_seterr(LSS_ERR_ARG, "lss_train: nnet is %d (need >= 1)", nnet);
    if (o->steps < 1) return lss_seterr(LSS_ERR_ARG, "lss_train: steps is %lld (need >= 1)", (long long)o->steps);
    if (!o->step) return lss_seterr(LSS_ERR_ARG, "lss_train: the step callback is NULL");
    if (o->eval_every < 0 || o->ckpt_every < 0 || o->patience < 0)
        return lss_seterr(LSS_ERR_ARG, "lss_train: eval_every %d, ckpt_every %d, patience %d (need >= 0)", o->eval_every,
                          o->ckpt_every, o->patience);
    if (!(o->min_delta >= 0) || !isfinite(o->min_delta))
        return lss_seterr(LSS_ERR_ARG, "lss_train: min_delta %g (need a finite value >= 0)", o->min_delta);
    if ((o->patience > 0 || o->keep_best) && !o->eval)
        return lss_seterr(LSS_ERR_ARG, "lss_train: %s needs the eval callback", o->patience > 0 ? "plateau stopping (patience)" : "keep_best");
    for (k = 0; k < nnet; k++) {
        const char *nm = nets[k].name ? nets[k].name : (nnet == 1 ? "loss" : NULL);
        if (!nm) return lss_seterr(LSS_ERR_ARG, "lss_train: network %d has no name (names are required with several networks)", k);
        if (!lss__csv_name_ok(nm))
            return lss_seterr(LSS_ERR_ARG, "lss_train: network %d: name '%s' is empty, longer than 64 characters or holds "
                              "a comma, quote, space or line break", k, nm);
        if (!nets[k].store || !nets[k].optim)
            return lss_seterr(LSS_ERR_ARG, "lss_train: network '%s' has no %s", nm, nets[k].store ? "optimizer" : "store");
        if (nets[k].optim->st != nets[k].store)
            return lss_seterr(LSS_ERR_ARG, "lss_train: network '%s': the optimizer belongs to another store", nm);
        if (o->substeps && (o->substeps[k] < 0 || o->substeps[k] > 1000))
            return lss_seterr(LSS_ERR_ARG, "lss_train: network '%s': substeps %d (0..1000)", nm, o->substeps[k]);
        if (nets[k].store->status)
            return lss_seterr(LSS_ERR_STATE, "lss_train: network '%s': the store is in a failed state", nm);
        if (o->resume && !nets[k].ckpt_path)
            return lss_seterr(LSS_ERR_ARG, "lss_train: resume needs a checkpoint path for every network ('%s' has none)", nm);
        for (j = 0; j < k; j++) {
            const char *nj = nets[j].name ? nets[j].name : "loss";
            if (!strcmp(nj, nm)) return lss_seterr(LSS_ERR_ARG, "lss_train: networks %d and %d are both named '%s'", j, k, nm);
            if (nets[j].store == nets[k].store)
                return lss_seterr(LSS_ERR_ARG, "lss_train: networks '%s' and '%s' share a store", nj, nm);
            if (nets[j].ckpt_path && nets[k].ckpt_path && !strcmp(nets[j].ckpt_path, nets[k].ckpt_path))
                return lss_seterr(LSS_ERR_ARG, "lss_train: networks '%s' and '%s' share the checkpoint '%s'", nj, nm, nets[k].ckpt_path);
        }
    }
    ncols = 1 + nnet * (o->eval ? 2 : 1);
    tn = (lss__tnet *)LSS_MALLOC((size_t)nnet * sizeof *tn);
    loss = (double *)LSS_MALLOC((size_t)(4 * nnet) * sizeof(double));
    lastrow = (double *)LSS_MALLOC((size_t)ncols * sizeof(double));
    hdr = (char **)LSS_MALLOC((size_t)ncols * sizeof(char *));
    if (tn) memset(tn, 0, (size_t)nnet * sizeof *tn);
    if (hdr) memset(hdr, 0, (size_t)ncols * sizeof(char *));
    if (!tn || !loss || !lastrow || !hdr) { s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory"); goto out; }
    valid = loss + 2 * nnet;
    for (j = 0; j < ncols; j++) lastrow[j] = NAN;
    for (k = 0; k < nnet; k++) {
        snprintf(tn[k].name, sizeof tn[k].name, "%s", nets[k].name ? nets[k].name : "loss");
        tn[k].best_v = HUGE_VAL; tn[k].best_step = -1;
        if (o->keep_best && (s = lss__store_clone(nets[k].store, &tn[k].best)) != LSS_OK) goto out;
    }
    for (j = 0; j < ncols; j++) {
        hdr[j] = (char *)LSS_MALLOC(80);
        if (!hdr[j]) { s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory"); goto out; }
        if (j == 0) snprintf(hdr[j], 80, "step");
        else if (j <= nnet) snprintf(hdr[j], 80, "train_%s", tn[j - 1].name);
        else snprintf(hdr[j], 80, "valid_%s", tn[j - 1 - nnet].name);
    }
    /* ---- resume: every checkpoint or none */
    if (o->resume) {
        int have = 0, first = -1, miss = -1;
        for (k = 0; k < nnet; k++) {
            FILE *f = fopen(nets[k].ckpt_path, "rb");
            if (f) { fclose(f); have++; if (first < 0) first = k; }
            else if (miss < 0) miss = k;
        }
        if (have > 0 && have < nnet) {
            s = lss_seterr(LSS_ERR_STATE, "lss_train: cannot resume: checkpoint '%s' exists but '%s' does not",
                           nets[first].ckpt_path, nets[miss].ckpt_path);
            goto out;
        }
        for (k = 0; k < nnet && have; k++) {
            double st[LSS__TS_N];
            lss__ckx x[2];
            int found[2] = {0, 0};
            x[0].name = "train.state"; x[0].dtype = 2; x[0].n = LSS__TS_N; x[0].data = st;
            if (o->keep_best) { x[1].name = "train.best"; x[1].dtype = 1; x[1].n = nets[k].store->size; x[1].data = tn[k].best->data; }
            if ((s = lss__ckpt_read(nets[k].ckpt_path, nets[k].store, nets[k].optim, o->keep_best && nets[k].store->size > 0 ? 2 : 1, x, found)) != LSS_OK)
                goto out;
            if (!found[0]) continue; /* written by lss_ckpt_save: no loop state, start it afresh */
            if (st[LSS__TS_TAG] != 1 || st[LSS__TS_STEP] * LSS__TSUB(nets, k) != (double)nets[k].optim->t) {
                s = lss_seterr(LSS_ERR_FORMAT, "lss_train: checkpoint '%s': loop state at step %g, optimizer at step %lld",
                               nets[k].ckpt_path, st[LSS__TS_STEP], (long long)nets[k].optim->t);
                goto out;
            }
            tn[k].sum = st[LSS__TS_SUM]; tn[k].cnt = (int64_t)st[LSS__TS_CNT]; tn[k].best_v = st[LSS__TS_BEST];
            tn[k].best_step = (int64_t)st[LSS__TS_BESTSTEP]; tn[k].since = (int64_t)st[LSS__TS_SINCE];
            mbest = st[LSS__TS_MBEST]; mbest_step = (int64_t)st[LSS__TS_MBESTSTEP];
            skipped = (int64_t)st[LSS__TS_SKIPPED]; evals = (int64_t)st[LSS__TS_EVALS];
            if (o->keep_best && tn[k].best_step >= 0 && !found[1] && nets[k].store->size > 0) {
                s = lss_seterr(LSS_ERR_FORMAT, "lss_train: checkpoint '%s' holds no best parameters (written without keep_best)",
                               nets[k].ckpt_path);
                goto out;
            }
        }
    }
    /* ---- the step count: that of the optimizers, all equal */
    t0 = nets[0].optim->t / LSS__TSUB(nets, 0);
    for (k = 0; k < nnet; k++)
        if (nets[k].optim->t != t0 * LSS__TSUB(nets, k)) {
            s = lss_seterr(LSS_ERR_STATE, "lss_train: network '%s' is at step %lld but '%s' at step %lld%s", tn[0].name,
                           (long long)t0, tn[k].name, (long long)nets[k].optim->t,
                           o->resume ? " (checkpoints of different steps)" : "");
            goto out;
        }
    if (t0 > o->steps) {
        s = lss_seterr(LSS_ERR_STATE, "lss_train: the networks are at step %lld, past steps = %lld", (long long)t0,
                       (long long)o->steps);
        goto out;
    }
    /* ---- the loss CSV rows of the steps already done */
    if (o->resume && o->loss_csv && t0 > 0) {
        if ((s = lss__train_csv_resume(o->loss_csv, ncols, hdr, t0, &rows, &nrows, lastrow, &fx)) != LSS_OK) goto out;
        caprows = rows ? nrows : 0;
        if (rows && nrows == 0) { LSS_FREE(rows); rows = NULL; }
    }
    /* a run that the plateau rule already stopped stays stopped */
    if (o->patience > 0 && evals > 0) {
        for (k = 0; k < nnet && tn[k].since >= o->patience; k++) {}
        if (k == nnet) stop = early = 1;
    }
    /* ---- the loop */
    for (t = t0; t < o->steps && !stop; t++) {
        int64_t done = t + 1;
        int ev, ck;
        double ts;
        for (k = 0; k < nnet; k++) loss[k] = NAN;
        ts = lss_time_now();
        s = o->step(o->user, t, loss);
        seconds_step += lss_time_now() - ts;
        if (s != LSS_OK && s != LSS_ERR_NUMERIC) goto out;
        for (k = 0; k < nnet; k++) {
            int64_t c = nets[k].optim->t, sub = LSS__TSUB(nets, k);
            if (c == done * sub) continue;
            if (c >= t * sub && c < done * sub && s == LSS_ERR_NUMERIC) { nets[k].optim->t = done * sub; continue; } /* skipped */
            s = lss_seterr(LSS_ERR_STATE, "lss_train: after step %lld network '%s' has taken %lld optimizer steps (expected %lld:"
                           " the step callback must call lss_optim_step substeps times per network, or return LSS_ERR_NUMERIC)",
                           (long long)t, tn[k].name, (long long)c, (long long)(done * sub));
            goto out;
        }
        if (s == LSS_ERR_NUMERIC) skipped++;
        else
            for (k = 0; k < nnet; k++)
                if (isfinite(loss[k])) { tn[k].sum += loss[k]; tn[k].cnt++; }
        s = LSS_OK;
        ev = done == o->steps || (o->eval_every > 0 && done % o->eval_every == 0);
        if (ev) {
            double *row;
            if (nrows == caprows) {
                int64_t nc = caprows ? 2 * caprows : 64;
                double *nr = (double *)LSS_REALLOC(rows, (size_t)(nc * ncols) * sizeof(double));
                if (!nr) { s = lss_seterr(LSS_ERR_NOMEM, "lss_train: out of memory for the loss rows"); goto out; }
                rows = nr; caprows = nc;
            }
            row = rows + nrows * ncols;
            row[0] = (double)done;
            for (k = 0; k < nnet; k++) {
                row[1 + k] = tn[k].cnt ? tn[k].sum / (double)tn[k].cnt : NAN;
                tn[k].sum = 0; tn[k].cnt = 0;
            }
            if (o->eval) {
                double mean = 0;
                int all = 1;
                for (k = 0; k < nnet; k++) valid[k] = NAN;
                if ((s = o->eval(o->user, valid)) != LSS_OK) goto out;
                evals++;
                for (k = 0; k < nnet; k++) {
                    row[1 + nnet + k] = valid[k];
                    mean += valid[k];
                    if (valid[k] < tn[k].best_v - o->min_delta) {
                        tn[k].best_v = valid[k]; tn[k].best_step = done; tn[k].since = 0;
                        if (tn[k].best && (s = lss_store_copy(tn[k].best, nets[k].store)) != LSS_OK) goto out;
                    } else tn[k].since++;
                    if (tn[k].since < o->patience || o->patience == 0) all = 0;
                }
                mean /= nnet;
                if (mean < mbest) { mbest = mean; mbest_step = done; }
                if (all && done < o->steps) stop = early = 1;
            }
            memcpy(lastrow, row, (size_t)ncols * sizeof(double));
            nrows++;
        }
        if (o->progress) o->progress(o->user, done, o->steps, lastrow + 1, o->eval ? lastrow + 1 + nnet : NULL);
        ck = done == o->steps || stop || (o->ckpt_every > 0 && done % o->ckpt_every == 0);
        if (ck) {
            /* one consistent set: every checkpoint is written and synced under its temporary name first
               (a full disk fails here and leaves every network at its previous checkpoint), then the
               CSV (a run killed before its checkpoints are renamed resumes from the previous ones and
               drops the rows past them), then the checkpoints are renamed into place one after the other */
            for (k = 0; k < nnet; k++) {
                double st[LSS__TS_N];
                lss__ckx x[2];
                if (!nets[k].ckpt_path) continue;
                lss__train_state(&tn[k], done, mbest, mbest_step, skipped, evals, st);
                x[0].name = "train.state"; x[0].dtype = 2; x[0].n = LSS__TS_N; x[0].data = st;
                if (tn[k].best) { x[1].name = "train.best"; x[1].dtype = 1; x[1].n = nets[k].store->size; x[1].data = tn[k].best->data; }
                s = lss__ckpt_write(nets[k].ckpt_path, nets[k].store, nets[k].optim, tn[k].best && nets[k].store->size > 0 ? 2 : 1, x,
                                    &tn[k].ck);
                if (s != LSS_OK) goto out;
            }
            if (o->loss_csv && (s = lss__train_csv_write(o->loss_csv, ncols, hdr, nrows, rows, &fx)) != LSS_OK) goto out;
            for (k = 0; k < nnet; k++)
                if (tn[k].ck.prepared && (s = lss_wfile_commit(&tn[k].ck)) != LSS_OK) goto out;
        }
    }
    /* ---- keep_best: each network back to its best evaluation */
    for (k = 0; k < nnet; k++)
        if (tn[k].best && tn[k].best_step >= 0 && (s = lss_store_copy(nets[k].store, tn[k].best)) != LSS_OK) goto out;
    s = LSS_OK;
out:
    if (res) {
        res->steps_done = nets && nnet >= 1 && nets[0].optim ? nets[0].optim->t / LSS__TSUB(nets, 0) : 0;
        res->skipped = skipped;
        res->stopped_early = early;
        res->best_step = mbest_step;
        res->seconds = lss_time_now() - t_start;
        res->seconds_step = seconds_step;
    }
    if (tn)
        for (k = 0; k < nnet; k++) {
            lss_store_free(tn[k].best);
            if (tn[k].ck.prepared || tn[k].ck.f) lss_wfile_abort(&tn[k].ck); /* a set not renamed: discarded */
        }
    lss__train_csv_free(&fx);
    if (hdr) for (j = 0; j < ncols; j++) LSS_FREE(hdr[j]);
    LSS_FREE(hdr); LSS_FREE(tn); LSS_FREE(loss); LSS_FREE(lastrow); LSS_FREE(rows);
    return s;
}

/* ================================================================ data-parallel gradients */
struct lss_dp {
    lss_store *st;
    int nshard;
    float *g, *snap; /* [this rank's shards][size] shard gradients; the store's data at the step's start */
    int64_t lo, hi;  /* this rank's shards (lss_mpi_block at creation) */
    double *meta;    /* [nshard][2]: loss, status */
};
LSSDEF void lss_dp_shard(int64_t n, int shard, int nshard, int64_t *lo, int64_t *hi) { lss_mpi_block(n, shard, nshard, lo, hi); }
LSSDEF void lss_dp_free(lss_dp *d) {
    if (!d) return;
    LSS_FREE(d->g); LSS_FREE(d->snap); LSS_FREE(d->meta);
    LSS_FREE(d);
}
LSSDEF int lss_dp_create(lss_store *st, int nshard, lss_dp **out) {
    lss_dp *d;
    size_t n;
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_dp_create: NULL argument");
    *out = NULL;
    if (!st) return lss_seterr(LSS_ERR_ARG, "lss_dp_create: NULL store");
    if (nshard < 1 || nshard > 4096) return lss_seterr(LSS_ERR_ARG, "lss_dp_create: %d shards (1..4096)", nshard);
    if (!(d = (lss_dp *)LSS_MALLOC(sizeof *d))) return lss_seterr(LSS_ERR_NOMEM, "lss_dp_create: out of memory");
    memset(d, 0, sizeof *d);
    d->st = st, d->nshard = nshard;
    lss_mpi_block(nshard, lss_mpi_rank(), lss_mpi_size(), &d->lo, &d->hi);
    n = (size_t)(st->size > 0 ? st->size : 1);
    d->g = (float *)LSS_MALLOC(sizeof(float) * n * (size_t)(d->hi > d->lo ? d->hi - d->lo : 1));
    d->snap = (float *)LSS_MALLOC(sizeof(float) * n);
    d->meta = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)nshard);
    if (!d->g || !d->snap || !d->meta) {
        lss_dp_free(d);
        return lss_seterr(LSS_ERR_NOMEM, "lss_dp_create: out of memory for %d shard gradients of %lld floats", nshard,
                          (long long)st->size);
    }
    *out = d;
    return LSS_OK;
}
/* the rank whose block holds shard s */
static int lss__dp_owner(int nshard, int s) {
    int k, size = lss_mpi_size();
    for (k = 0; k < size; k++) {
        int64_t a, b;
        lss_mpi_block(nshard, k, size, &a, &b);
        if (s >= a && s < b) return k;
    }
    return 0;
}
LSSDEF double lss_dp_bytes(const lss_dp *d) {
    int size = lss_mpi_size(), r = lss_mpi_rank();
    int64_t lo, hi;
    if (!d || size <= 1) return 0;
    lss_mpi_block(d->nshard, r, size, &lo, &hi);
    { /* lss_mpi_sum_ordered: my shards' parts of the others' element blocks, then my block to each */
        int64_t a, b;
        double v = (double)(hi - lo) * (double)(size - 1) * 2 * sizeof(double);
        lss_mpi_block(d->st->size, r, size, &a, &b);
        v += (double)(hi - lo) * (double)(d->st->size - (b - a)) * sizeof(float) + (double)(b - a) * (size - 1) * sizeof(float);
        if (d->st->size > d->st->nparams && r == lss__dp_owner(d->nshard, d->nshard - 1)) v += (double)d->st->size * sizeof(float) * (size - 1);
        return v;
    }
}
LSSDEF int lss_dp_grad(lss_dp *d, lss_dp_fn fn, void *user, double *loss) {
    int64_t lo, hi, n;
    int s, fail = -1, numeric = 0, rank = lss_mpi_rank();
    size_t bytes;
    char msg[512] = "";
    if (!d || !fn || !loss) return lss_seterr(LSS_ERR_ARG, "lss_dp_grad: NULL argument");
    n = d->st->size;
    bytes = sizeof(float) * (size_t)n;
    *loss = NAN;
    lss_mpi_block(d->nshard, rank, lss_mpi_size(), &lo, &hi);
    if (lo != d->lo || hi != d->hi) return lss_seterr(LSS_ERR_STATE, "lss_dp_grad: created before MPI started (call lss_mpi_init first)");
    if (n > 0) memcpy(d->snap, d->st->data, bytes);
    for (s = (int)lo; s < (int)hi; s++) {
        double l = NAN;
        int st;
        if (n > 0) memcpy(d->st->data, d->snap, bytes);
        lss_store_zero_grad(d->st);
        lss_clearerr();
        st = fn(user, s, d->nshard, &l);
        d->meta[2 * s] = l, d->meta[2 * s + 1] = st;
        if (st != LSS_OK && st != LSS_ERR_NUMERIC && !msg[0] && fail < 0) {
            fail = s;
            snprintf(msg, sizeof msg, "%.480s", lss_last_error()[0] ? lss_last_error() : lss_strerror(st));
        }
        if (n > 0) memcpy(d->g + (size_t)(s - lo) * (size_t)n, d->st->grad, bytes);
    }
    if (lss_mpi_size() > 1) { /* every rank joins every exchange, failed shards or not */
        int st;
        if ((st = lss_mpi_allgather(d->meta, d->nshard, 2 * sizeof(double))) != LSS_OK) return st;
        /* the buffers (running statistics, ...) that the last shard left; parameters do not change in a forward */
        if (n > d->st->nparams && (st = lss_mpi_bcast(d->st->data, bytes, lss__dp_owner(d->nshard, d->nshard - 1))) != LSS_OK) return st;
    }
    fail = -1;
    for (s = 0; s < d->nshard; s++) {
        int st = (int)d->meta[2 * s + 1];
        if (st == LSS_ERR_NUMERIC) numeric = 1;
        else if (st != LSS_OK && fail < 0) fail = s;
    }
    if (fail >= 0) {
        int r = lss__dp_owner(d->nshard, fail), st = (int)d->meta[2 * fail + 1];
        if (r == rank && msg[0]) return lss_seterr(st, "shard %d of %d (rank %d): %s", fail, d->nshard, r, msg);
        return lss_seterr(st, "shard %d of %d failed on rank %d (status %d; that rank reports why)", fail, d->nshard, r, st);
    }
    if (numeric) return lss_seterr(LSS_ERR_NUMERIC, "lss_dp_grad: a shard's loss or gradient is not finite");
    /* the ordered sum (under MPI: reduce-scatter and all-gather, the same bits) */
    if (n > 0 && (s = lss_mpi_sum_ordered(d->g, d->nshard, n, d->st->grad)) != LSS_OK) return s;
    *loss = d->meta[0];
    for (s = 1; s < d->nshard; s++) *loss += d->meta[2 * s];
    return LSS_OK;
}

/* ================================================================ blocks */
LSSDEF lss_tensor *lss_op_activate(lss_graph *g, lss_tensor *x, lss_act act) {
    switch (act) {
    case LSS_ACT_RELU: return lss_op_relu(g, x);
    case LSS_ACT_LEAKY: return lss_op_leaky_relu(g, x, 0.2f);
    case LSS_ACT_TANH: return lss_op_tanh(g, x);
    case LSS_ACT_SOFTPLUS: return lss_op_softplus(g, x);
    default: return x;
    }
}

LSSDEF int lss_mlp_init(lss_mlp *m, lss_store *st, const char *name, int nlayers, const int *sizes, lss_act act) {
    int i;
    char nm[160];
    if (!m || !st || !name || !sizes) return lss_seterr(LSS_ERR_ARG, "lss_mlp_init: NULL argument");
    memset(m, 0, sizeof *m);
    if (nlayers < 1 || nlayers > LSS_MLP_MAX) return lss_seterr(LSS_ERR_ARG, "lss_mlp_init: %d layers (1..%d)", nlayers, LSS_MLP_MAX);
    if (strlen(name) > 100) return lss_seterr(LSS_ERR_ARG, "lss_mlp_init: name too long");
    if ((int)act < 0 || act > LSS_ACT_NONE) return lss_seterr(LSS_ERR_ARG, "lss_mlp_init: unknown activation %d", (int)act);
    for (i = 0; i <= nlayers; i++)
        if (sizes[i] < 1) return lss_seterr(LSS_ERR_ARG, "lss_mlp_init: layer width %d is %d", i, sizes[i]);
    m->nlayers = nlayers; m->act = act;
    for (i = 0; i < nlayers; i++) {
        int64_t sw[2], sb[1];
        int last = i == nlayers - 1;
        sw[0] = sizes[i]; sw[1] = sizes[i + 1]; sb[0] = sizes[i + 1];
        snprintf(nm, sizeof nm, "%s.w%d", name, i);
        m->w[i] = lss_store_add(st, nm, 2, sw, (!last && (act == LSS_ACT_RELU || act == LSS_ACT_LEAKY)) ? LSS_INIT_HE : LSS_INIT_GLOROT);
        snprintf(nm, sizeof nm, "%s.b%d", name, i);
        m->b[i] = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        if (!m->w[i] || !m->b[i]) return lss_store_status(st) ? lss_store_status(st) : LSS_ERR_STATE;
    }
    return LSS_OK;
}

LSSDEF lss_tensor *lss_mlp_forward(lss_graph *g, const lss_mlp *m, lss_tensor *x) {
    int i;
    if (!m) { if (g && !g->status) g->status = lss_seterr(LSS_ERR_ARG, "lss_mlp_forward: NULL network"); return NULL; }
    for (i = 0; i < m->nlayers; i++) {
        x = lss_op_dense(g, x, m->w[i], m->b[i]);
        if (i < m->nlayers - 1) x = lss_op_activate(g, x, m->act);
    }
    return x;
}

static int lss__bn_init(lss_store *st, const char *name, const char *part, int c, lss_tensor **bn) {
    char nm[200];
    int64_t sh[1];
    sh[0] = c;
    snprintf(nm, sizeof nm, "%s.%s.gamma", name, part); bn[0] = lss_store_add(st, nm, 1, sh, LSS_INIT_ONE);
    snprintf(nm, sizeof nm, "%s.%s.beta", name, part); bn[1] = lss_store_add(st, nm, 1, sh, LSS_INIT_ZERO);
    snprintf(nm, sizeof nm, "%s.%s.mean", name, part); bn[2] = lss_store_buffer(st, nm, 1, sh, LSS_INIT_ZERO, 0.0f);
    snprintf(nm, sizeof nm, "%s.%s.var", name, part); bn[3] = lss_store_buffer(st, nm, 1, sh, LSS_INIT_ZERO, 1.0f);
    return lss_store_status(st);
}

static int lss__conv_init(lss_store *st, const char *name, const char *part, int cout, int cin, int k, int bias,
                          lss_tensor **w, lss_tensor **b) {
    char nm[200];
    int64_t sw[4], sb[1];
    sw[0] = cout; sw[1] = cin; sw[2] = k; sw[3] = k; sb[0] = cout;
    snprintf(nm, sizeof nm, "%s.%s.w", name, part); *w = lss_store_add(st, nm, 4, sw, LSS_INIT_HE);
    *b = NULL;
    if (bias) { snprintf(nm, sizeof nm, "%s.%s.b", name, part); *b = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO); }
    return lss_store_status(st);
}

LSSDEF int lss_resblock_init(lss_resblock *rb, lss_store *st, const char *name, int cin, int cout, int kernel,
                             int stride, int batchnorm, int pool, lss_act act) {
    int s;
    if (!rb || !st || !name) return lss_seterr(LSS_ERR_ARG, "lss_resblock_init: NULL argument");
    memset(rb, 0, sizeof *rb);
    if (cin < 1 || cout < 1 || kernel < 1 || stride < 1 || strlen(name) > 150)
        return lss_seterr(LSS_ERR_ARG, "lss_resblock_init: '%s': bad channels %d -> %d, kernel %d or stride %d", name, cin, cout, kernel, stride);
    if (pool && stride != 1 && stride != 2) return lss_seterr(LSS_ERR_ARG, "lss_resblock_init: pooling blocks downsample by 2 only");
    rb->cin = cin; rb->cout = cout; rb->kernel = kernel; rb->stride = stride; rb->batchnorm = batchnorm ? 1 : 0;
    rb->pool = pool ? 1 : 0; rb->act = act;
    if ((s = lss__conv_init(st, name, "conv1", cout, cin, kernel, !batchnorm, &rb->w1, &rb->b1))) return s;
    if (batchnorm && (s = lss__bn_init(st, name, "bn1", cout, rb->bn[0]))) return s;
    if ((s = lss__conv_init(st, name, "conv2", cout, cout, kernel, !batchnorm, &rb->w2, &rb->b2))) return s;
    if (batchnorm && (s = lss__bn_init(st, name, "bn2", cout, rb->bn[1]))) return s;
    if (stride != 1 || cin != cout) {
        if ((s = lss__conv_init(st, name, "proj", cout, cin, 1, !batchnorm, &rb->wp, &rb->bp))) return s;
        if (batchnorm && (s = lss__bn_init(st, name, "bnp", cout, rb->bn[2]))) return s;
    }
    return LSS_OK;
}

/* x [N, C, H, W] padded by p pixels on each side with the opposite edge's pixels (periodic padding). */
static lss_tensor *lss__wrap(lss_graph *g, lss_tensor *x, int64_t p) {
    int64_t H, W;
    if (!x || p == 0) return x;
    H = x->shape[2]; W = x->shape[3];
    if (p > H || p > W) return lss__fail(g, LSS_ERR_SHAPE, "%s: periodic padding wider than the map%s", "lss_resblock_forward", NULL);
    x = lss_op_concat(g, lss_op_concat(g, lss_op_slice(g, x, 3, W - p, p), x, 3), lss_op_slice(g, x, 3, 0, p), 3);
    return lss_op_concat(g, lss_op_concat(g, lss_op_slice(g, x, 2, H - p, p), x, 2), lss_op_slice(g, x, 2, 0, p), 2);
}
/* convolution with "same" padding p: zeros, or periodic */
static lss_tensor *lss__conv_same(lss_graph *g, int periodic, lss_tensor *x, lss_tensor *w, lss_tensor *b, int stride, int p) {
    return periodic ? lss_op_conv2d(g, lss__wrap(g, x, p), w, b, stride, 0) : lss_op_conv2d(g, x, w, b, stride, p);
}

static lss_tensor *lss__norm(lss_graph *g, const lss_resblock *rb, int i, lss_tensor *x) {
    if (!rb->batchnorm) return x;
    return lss_op_batchnorm(g, x, rb->bn[i][0], rb->bn[i][1], rb->bn[i][2], rb->bn[i][3], 0.9f, 1e-5f);
}

LSSDEF lss_tensor *lss_resblock_forward(lss_graph *g, const lss_resblock *rb, lss_tensor *x) {
    return lss_resblock_forward_bias(g, rb, x, NULL);
}

LSSDEF lss_tensor *lss_resblock_forward_bias(lss_graph *g, const lss_resblock *rb, lss_tensor *x, lss_tensor *bias) {
    lss_tensor *h, *sk;
    int p;
    if (!rb) { if (g && !g->status) g->status = lss_seterr(LSS_ERR_ARG, "lss_resblock_forward: NULL block"); return NULL; }
    if (bias && x && (bias->ndim != 2 || bias->shape[0] != x->shape[0] || bias->shape[1] != rb->cout))
        return lss__shape_err(g, "lss_resblock_forward_bias (bias must be [N, cout])", x, bias);
    p = rb->kernel / 2;
    if (!bias && !rb->pool && !rb->periodic && !rb->batchnorm && rb->act == LSS_ACT_RELU)
        h = lss_op_conv2d_relu(g, x, rb->w1, rb->b1, rb->stride, p); /* the same as below, half the memory */
    else {
        if (rb->pool) {
            h = lss__conv_same(g, rb->periodic, x, rb->w1, rb->b1, 1, p);
            if (rb->stride == 2) h = lss_op_avgpool2d(g, h, 2, 2);
        } else h = lss__conv_same(g, rb->periodic, x, rb->w1, rb->b1, rb->stride, p);
        if (bias) {
            int64_t sh[4];
            sh[0] = bias->shape[0]; sh[1] = bias->shape[1]; sh[2] = 1; sh[3] = 1;
            h = lss_op_add(g, h, lss_op_reshape(g, bias, 4, sh));
        }
        h = lss_op_activate(g, lss__norm(g, rb, 0, h), rb->act);
    }
    h = lss__norm(g, rb, 1, lss__conv_same(g, rb->periodic, h, rb->w2, rb->b2, 1, p));
    if (rb->wp) {
        if (rb->pool) sk = lss_op_conv2d(g, rb->stride == 2 ? lss_op_avgpool2d(g, x, 2, 2) : x, rb->wp, rb->bp, 1, 0);
        else sk = lss_op_conv2d(g, x, rb->wp, rb->bp, rb->stride, 0);
        sk = lss__norm(g, rb, 2, sk);
    } else sk = x;
    return lss_op_activate(g, lss_op_add(g, h, sk), rb->act);
}

LSSDEF int lss_resnet_init(lss_resnet *net, lss_store *st, const char *name, const lss_resnet_opts *opts) {
    lss_resnet_opts o;
    char nm[200];
    int i, h, w, c, s;
    if (!net || !st || !name || !opts) return lss_seterr(LSS_ERR_ARG, "lss_resnet_init: NULL argument");
    memset(net, 0, sizeof *net);
    o = *opts;
    if (o.nconv == 0) o.nconv = 4;
    if (o.nres == 0) o.nres = 10;
    if (o.channels == 0) o.channels = 128;
    if (o.kernel == 0) o.kernel = 5;
    if (o.in_ch < 1 || o.in_h < 1 || o.in_w < 1 || o.nout < 1 || o.nconv < 1 || o.nconv > LSS_RESNET_MAXCONV ||
        o.nres < 0 || o.nres > LSS_RESNET_MAXRES || o.channels < 1 || o.kernel < 1 || strlen(name) > 120 || o.pool < 0 ||
        o.pool > 1 || o.hidden < 0 || o.hidden > 65536 || o.nextra < 0 || o.nextra > 65536)
        return lss_seterr(LSS_ERR_ARG, "lss_resnet_init: bad options (input %d x %d x %d, nout %d, nconv %d (1..%d), "
                          "nres %d (0..%d), channels %d, kernel %d)", o.in_ch, o.in_h, o.in_w, o.nout, o.nconv,
                          LSS_RESNET_MAXCONV, o.nres, LSS_RESNET_MAXRES, o.channels, o.kernel);
    h = o.in_h; w = o.in_w; c = o.in_ch;
    for (i = 0; i < o.nconv; i++) {
        char part[16];
        if (h + 2 * (o.kernel / 2) < o.kernel || w + 2 * (o.kernel / 2) < o.kernel)
            return lss_seterr(LSS_ERR_SHAPE, "lss_resnet_init: input %d x %d too small for %d strided convolutions", o.in_h, o.in_w, o.nconv);
        snprintf(part, sizeof part, "conv%d", i);
        if ((s = lss__conv_init(st, name, part, o.channels, c, o.kernel, 1, &net->cw[i], &net->cb[i]))) return s;
        h = (h + 2 * (o.kernel / 2) - o.kernel) / 2 + 1;
        w = (w + 2 * (o.kernel / 2) - o.kernel) / 2 + 1;
        c = o.channels;
    }
    for (i = 0; i < o.nres; i++) {
        snprintf(nm, sizeof nm, "%s.res%d", name, i);
        if ((s = lss_resblock_init(&net->rb[i], st, nm, c, c, o.kernel, 1, 0, 0, LSS_ACT_RELU))) return s;
    }
    {
        int64_t sw[2], sb[1];
        sw[0] = (o.pool ? (int64_t)c : (int64_t)c * h * w) + o.nextra;
        if (o.hidden > 0) {
            sw[1] = o.hidden; sb[0] = o.hidden;
            snprintf(nm, sizeof nm, "%s.hidden.w", name); net->hw = lss_store_add(st, nm, 2, sw, LSS_INIT_HE);
            snprintf(nm, sizeof nm, "%s.hidden.b", name); net->hb = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
            sw[0] = o.hidden;
        }
        sw[1] = o.nout; sb[0] = o.nout;
        snprintf(nm, sizeof nm, "%s.dense.w", name); net->dw = lss_store_add(st, nm, 2, sw, LSS_INIT_GLOROT);
        snprintf(nm, sizeof nm, "%s.dense.b", name); net->db = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        if ((s = lss_store_status(st))) return s;
    }
    net->o = o; net->out_h = h; net->out_w = w;
    return LSS_OK;
}

LSSDEF lss_tensor *lss_resnet_forward(lss_graph *g, const lss_resnet *net, lss_tensor *x) {
    return lss_resnet_forward_extra(g, net, x, NULL);
}

LSSDEF lss_tensor *lss_resnet_forward_extra(lss_graph *g, const lss_resnet *net, lss_tensor *x, lss_tensor *extra) {
    int i;
    if (!net) { if (g && !g->status) g->status = lss_seterr(LSS_ERR_ARG, "lss_resnet_forward: NULL network"); return NULL; }
    if ((net->o.nextra > 0) != (extra != NULL) ||
        (extra && (!x || extra->ndim != 2 || extra->shape[0] != x->shape[0] || extra->shape[1] != net->o.nextra))) {
        if (g && !g->status)
            g->status = lss_seterr(LSS_ERR_SHAPE, "lss_resnet_forward_extra: the network takes %d extra features per input; got %s",
                                   net->o.nextra, extra ? "a tensor of another shape" : "none");
        return NULL;
    }
    for (i = 0; i < net->o.nconv; i++) x = lss_op_conv2d_relu(g, x, net->cw[i], net->cb[i], 2, net->o.kernel / 2);
    for (i = 0; i < net->o.nres; i++) x = lss_resblock_forward(g, &net->rb[i], x);
    x = net->o.pool ? lss_op_global_avgpool(g, x) : lss_op_flatten(g, x);
    if (extra) x = lss_op_concat(g, x, extra, 1);
    if (net->hw) x = lss_op_relu(g, lss_op_dense(g, x, net->hw, net->hb));
    return lss_op_dense(g, x, net->dw, net->db);
}

LSSDEF int lss_unet_init(lss_unet *u, lss_store *st, const char *name, const lss_unet_opts *opts) {
    lss_unet_opts o;
    char nm[200];
    int c0, c1, c2, cc, s;
    if (!u || !st || !name || !opts) return lss_seterr(LSS_ERR_ARG, "lss_unet_init: NULL argument");
    memset(u, 0, sizeof *u);
    o = *opts;
    if (o.c0 == 0) o.c0 = 32;
    if (o.sigma_eps == 0) o.sigma_eps = 1e-3f;
    if (o.in_ch < 1 || o.out_ch < 1 || o.c0 < 1 || !(o.sigma_eps > 0) || strlen(name) > 120 || o.sigma_embed < 0 ||
        o.sigma_embed > 32 || (o.sigma_embed > 0 && !o.sigma_cond))
        return lss_seterr(LSS_ERR_ARG, "lss_unet_init: bad options (in %d, out %d, c0 %d, sigma_embed %d (0..32, with sigma_cond))",
                          o.in_ch, o.out_ch, o.c0, o.sigma_embed);
    c0 = o.c0; c1 = 2 * c0; c2 = 4 * c0; cc = o.sigma_cond ? 1 : 0;
    u->o = o;
    {
        lss_tensor *nob;
        if ((s = lss__conv_init(st, name, "stem", c0, o.in_ch + cc, 3, o.no_batchnorm ? 1 : 0, &u->stem_w, &nob))) return s;
        u->stem_b = nob;
    }
    if (!o.no_batchnorm && (s = lss__bn_init(st, name, "stem_bn", c0, u->stem_bn))) return s;
#define LSS__RB(field, part, ci, co, str)                                                          \
    snprintf(nm, sizeof nm, "%s.%s", name, part);                                                  \
    if ((s = lss_resblock_init(&u->field, st, nm, ci, co, 3, str, !o.no_batchnorm, 1, LSS_ACT_RELU))) return s
    LSS__RB(enc0, "enc0", c0, c0, 1);
    LSS__RB(enc1, "enc1", c0, c1, 2);
    LSS__RB(enc2, "enc2", c1, c2, 2);
    LSS__RB(mid, "mid", c2 + cc, c2, 1);
    LSS__RB(dec1, "dec1", 2 * c1, c1, 1);
    LSS__RB(dec0, "dec0", 2 * c0, c0, 1);
#undef LSS__RB
    u->enc0.periodic = u->enc1.periodic = u->enc2.periodic = u->mid.periodic = u->dec1.periodic = u->dec0.periodic = o.periodic ? 1 : 0;
    {
        int64_t sw[4], sb[1];
        sw[0] = c2; sw[1] = c1; sw[2] = 2; sw[3] = 2; sb[0] = c1;
        snprintf(nm, sizeof nm, "%s.up1.w", name); u->up1_w = lss_store_add(st, nm, 4, sw, LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.up1.b", name); u->up1_b = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        sw[0] = c1; sw[1] = c0; sb[0] = c0;
        snprintf(nm, sizeof nm, "%s.up2.w", name); u->up2_w = lss_store_add(st, nm, 4, sw, LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.up2.b", name); u->up2_b = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        if ((s = lss_store_status(st))) return s;
    }
    if ((s = lss__conv_init(st, name, "head", o.out_ch, c0, 3, 1, &u->head_w, &u->head_b))) return s;
    if (o.sigma_embed > 0) {
        static const char *blk[6] = {"enc0", "enc1", "enc2", "mid", "dec1", "dec0"};
        int cout[6], k;
        int64_t sw[2], sb[1];
        cout[0] = c0; cout[1] = c1; cout[2] = c2; cout[3] = c2; cout[4] = c1; cout[5] = c0;
        sw[0] = 2 * o.sigma_embed + 1; sw[1] = 4 * c0; sb[0] = 4 * c0;
        snprintf(nm, sizeof nm, "%s.emb.w", name); u->emb_w = lss_store_add(st, nm, 2, sw, LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.emb.b", name); u->emb_b = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        for (k = 0; k < 6; k++) {
            sw[0] = 4 * c0; sw[1] = cout[k]; sb[0] = cout[k];
            snprintf(nm, sizeof nm, "%s.%s.emb.w", name, blk[k]); u->eproj_w[k] = lss_store_add(st, nm, 2, sw, LSS_INIT_GLOROT);
            snprintf(nm, sizeof nm, "%s.%s.emb.b", name, blk[k]); u->eproj_b[k] = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        }
        if ((s = lss_store_status(st))) return s;
    }
    return LSS_OK;
}

/* A [N, 1, H, W] map of sigma_n (no gradient). */
static lss_tensor *lss__sigma_map(lss_graph *g, const lss_tensor *sigma, int64_t N, int64_t H, int64_t W, int logsig) {
    int64_t sh[4], n, p;
    lss_tensor *m;
    sh[0] = N; sh[1] = 1; sh[2] = H; sh[3] = W;
    if (!(m = lss_tensor_new(g, 4, sh))) return NULL;
    for (n = 0; n < N; n++) {
        float v = logsig ? logf(fmaxf(fabsf(sigma->data[n]), 1e-30f)) * 0.25f : sigma->data[n]; /* sigma 0: finite */
        for (p = 0; p < H * W; p++) m->data[n * H * W + p] = v;
    }
    return m;
}

LSSDEF lss_tensor *lss_unet_forward(lss_graph *g, const lss_unet *u, lss_tensor *x, lss_tensor *sigma) {
    lss_tensor *h, *s0, *s1, *eb[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    int64_t N, H, W;
    if (!lss__enter(g, "lss_unet_forward", 1, x, NULL, NULL)) return NULL;
    if (!u) return lss__fail(g, LSS_ERR_ARG, "%s: NULL network%s", "lss_unet_forward", NULL);
    if (x->ndim != 4 || x->shape[1] != u->o.in_ch || x->shape[2] % 4 || x->shape[3] % 4)
        return lss__shape_err(g, "lss_unet_forward (input must be [N, in_ch, H, W], H and W multiples of 4)", x, NULL);
    N = x->shape[0]; H = x->shape[2]; W = x->shape[3];
    if (u->o.sigma_cond) {
        if (!sigma || sigma->n != N) return lss__shape_err(g, "lss_unet_forward (sigma needs one value per sample)", x, sigma);
        x = lss_op_concat(g, x, lss__sigma_map(g, sigma, N, H, W, u->o.sigma_log), 1);
    }
    if (u->o.sigma_cond && u->o.sigma_embed > 0) { /* the noise-level embedding: features, shared layer, per-block biases */
        int64_t sh[2], n;
        int j, F = u->o.sigma_embed;
        lss_tensor *e, *he;
        sh[0] = N; sh[1] = 2 * F + 1;
        if (!(e = lss_tensor_new(g, 2, sh))) return NULL;
        for (n = 0; n < N; n++) {
            double uu = 0.25 * log(fmax(fabs((double)sigma->data[n]), 1e-30));
            float *r = e->data + n * (2 * F + 1);
            r[0] = (float)uu;
            for (j = 0; j < F; j++) {
                r[1 + 2 * j] = (float)sin(ldexp(uu, j));
                r[2 + 2 * j] = (float)cos(ldexp(uu, j));
            }
        }
        he = lss_op_relu(g, lss_op_dense(g, e, u->emb_w, u->emb_b));
        for (j = 0; j < 6; j++) eb[j] = lss_op_dense(g, he, u->eproj_w[j], u->eproj_b[j]);
    }
    h = lss__conv_same(g, u->o.periodic, x, u->stem_w, u->stem_b, 1, 1);
    if (!u->o.no_batchnorm) h = lss_op_batchnorm(g, h, u->stem_bn[0], u->stem_bn[1], u->stem_bn[2], u->stem_bn[3], 0.9f, 1e-5f);
    h = lss_op_relu(g, h);
    s0 = lss_resblock_forward_bias(g, &u->enc0, h, eb[0]);
    s1 = lss_resblock_forward_bias(g, &u->enc1, s0, eb[1]);
    h = lss_resblock_forward_bias(g, &u->enc2, s1, eb[2]);
    if (u->o.sigma_cond) h = lss_op_concat(g, h, lss__sigma_map(g, sigma, N, H / 4, W / 4, u->o.sigma_log), 1);
    h = lss_resblock_forward_bias(g, &u->mid, h, eb[3]);
    h = lss_op_conv2d_transpose(g, h, u->up1_w, u->up1_b, 2, 0, 0);
    h = lss_resblock_forward_bias(g, &u->dec1, lss_op_concat(g, h, s1, 1), eb[4]);
    h = lss_op_conv2d_transpose(g, h, u->up2_w, u->up2_b, 2, 0, 0);
    h = lss_resblock_forward_bias(g, &u->dec0, lss_op_concat(g, h, s0, 1), eb[5]);
    h = lss__conv_same(g, u->o.periodic, h, u->head_w, u->head_b, 1, 1);
    if (u->o.sigma_cond && h) {
        int64_t sh[4], n;
        lss_tensor *inv;
        sh[0] = N; sh[1] = 1; sh[2] = 1; sh[3] = 1;
        if (!(inv = lss_tensor_new(g, 4, sh))) return NULL;
        for (n = 0; n < N; n++) inv->data[n] = 1.0f / (fabsf(sigma->data[n]) + u->o.sigma_eps);
        h = lss_op_mul(g, h, inv);
    }
    return h;
}


/* ---------------------------------------------------------------- convnet, convgen, WGAN-GP */
LSSDEF int lss_convnet_init(lss_convnet *net, lss_store *st, const char *name, const lss_convnet_opts *opts) {
    lss_convnet_opts o;
    char part[32];
    int i, s, side, c;
    int64_t fin;
    if (!net || !st || !name || !opts) return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: NULL argument");
    memset(net, 0, sizeof *net);
    o = *opts;
    if (o.slope == 0) o.slope = 0.2f;
    if (strlen(name) > 120 || o.in_ch < 1 || o.side < 1 || o.nconv < 1 || o.nconv > LSS_CONVNET_MAX || o.ndense < 0 ||
        o.ndense > LSS_CONVNET_MAX || o.nextra < 0 || o.nextra > 65536 || o.nout < 1 || !(o.slope >= 0 && o.slope < 1))
        return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: bad options (input %d x %d x %d, %d convolutions (1..%d), %d dense "
                          "(0..%d), nextra %d, nout %d, slope %g)", o.in_ch, o.side, o.side, o.nconv, LSS_CONVNET_MAX, o.ndense,
                          LSS_CONVNET_MAX, o.nextra, o.nout, (double)o.slope);
    side = o.side; c = o.in_ch;
    for (i = 0; i < o.nconv; i++) {
        int p = (o.k[i] - 1) / 2;
        if (o.ch[i] < 1 || o.k[i] < 1 || o.stride[i] < 1 || side + 2 * p < o.k[i])
            return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: convolution %d: %d channels, kernel %d, stride %d on a side of %d",
                              i, o.ch[i], o.k[i], o.stride[i], side);
        net->hw[i] = side;
        snprintf(part, sizeof part, "conv%d", i);
        if ((s = lss__conv_init(st, name, part, o.ch[i], c, o.k[i], 1, &net->cw[i], &net->cb[i]))) return s;
        side = (side + 2 * p - o.k[i]) / o.stride[i] + 1;
        c = o.ch[i];
    }
    net->hw[o.nconv] = side;
    fin = (int64_t)c * side * side;
    if (fin > (1 << 26)) return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: %lld flattened features", (long long)fin);
    net->nflat = (int)fin;
    fin += o.nextra;
    for (i = 0; i <= o.ndense; i++) {
        char nm[200];
        int64_t sw[2], sb[1];
        int last = i == o.ndense;
        if (!last && o.width[i] < 1) return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: dense layer %d has width %d", i, o.width[i]);
        sw[0] = fin; sw[1] = last ? o.nout : o.width[i]; sb[0] = sw[1];
        snprintf(nm, sizeof nm, "%s.dense%d.w", name, i);
        net->dw[i] = lss_store_add(st, nm, 2, sw, last ? LSS_INIT_GLOROT : LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.dense%d.b", name, i);
        net->db[i] = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        fin = sw[1];
    }
    if (o.proj) {
        char nm[200];
        if (o.nextra < 1 || o.ndense < 1 || o.nout != 1)
            return lss_seterr(LSS_ERR_ARG, "lss_convnet_init: projection conditioning needs extra values, a hidden dense layer and one output");
        snprintf(nm, sizeof nm, "%s.proj.w", name);
        net->pw = lss_store_add(st, nm, 2, (int64_t[]){o.nextra, o.width[o.ndense - 1]}, LSS_INIT_ZERO);
    }
    if ((s = lss_store_status(st))) return s;
    net->o = o;
    return LSS_OK;
}

/* phi . (extra P) per sample: [N, 1]. */
static lss_tensor *lss__convnet_proj(lss_graph *g, const lss_convnet *net, lss_tensor *phi, lss_tensor *extra) {
    lss_tensor *ones = lss_tensor_new(g, 2, (int64_t[]){net->pw ? net->pw->shape[1] : 1, 1});
    int64_t j;
    if (!ones) return NULL;
    for (j = 0; j < ones->n; j++) ones->data[j] = 1.0f;
    return lss_op_dense(g, lss_op_mul(g, phi, lss_op_dense(g, extra, net->pw, NULL)), ones, NULL);
}

LSSDEF lss_tensor *lss_convnet_forward(lss_graph *g, const lss_convnet *net, lss_tensor *x, lss_tensor *extra,
                                       lss_convnet_trace *tr) {
    int i;
    const lss_convnet_opts *o;
    if (tr) memset(tr, 0, sizeof *tr);
    if (!lss__enter(g, "lss_convnet_forward", 1, x, NULL, NULL)) return NULL;
    if (!net) return lss__fail(g, LSS_ERR_ARG, "%s: NULL network%s", "lss_convnet_forward", NULL);
    o = &net->o;
    if (x->ndim != 4 || x->shape[1] != o->in_ch || x->shape[2] != o->side || x->shape[3] != o->side)
        return lss__shape_err(g, "lss_convnet_forward (input must be [N, in_ch, side, side])", x, NULL);
    if ((o->nextra > 0) != (extra != NULL) ||
        (extra && (extra->ndim != 2 || extra->shape[0] != x->shape[0] || extra->shape[1] != o->nextra)))
        return lss__shape_err(g, "lss_convnet_forward (extra must be [N, nextra], and only with nextra > 0)", x, extra);
    for (i = 0; i < o->nconv; i++) {
        x = lss_op_conv2d(g, x, net->cw[i], net->cb[i], o->stride[i], (o->k[i] - 1) / 2);
        if (tr && x) tr->pre[tr->npre++] = x;
        x = lss_op_leaky_relu(g, x, o->slope);
    }
    x = lss_op_flatten(g, x);
    if (extra) x = lss_op_concat(g, x, extra, 1);
    if (tr) tr->feat = x;
    for (i = 0; i < o->ndense; i++) {
        x = lss_op_dense(g, x, net->dw[i], net->db[i]);
        if (tr && x) tr->pre[tr->npre++] = x;
        x = lss_op_leaky_relu(g, x, o->slope);
        if (tr) tr->feat = x;
    }
    if (net->pw) return lss_op_add(g, lss_op_dense(g, x, net->dw[o->ndense], net->db[o->ndense]), lss__convnet_proj(g, net, x, extra));
    return lss_op_dense(g, x, net->dw[o->ndense], net->db[o->ndense]);
}

LSSDEF int lss_convgen_init(lss_convgen *net, lss_store *st, const char *name, const lss_convgen_opts *opts) {
    lss_convgen_opts o;
    char nm[200];
    int i, side, c;
    int64_t fin;
    if (!net || !st || !name || !opts) return lss_seterr(LSS_ERR_ARG, "lss_convgen_init: NULL argument");
    memset(net, 0, sizeof *net);
    o = *opts;
    if (strlen(name) > 120 || o.nin < 1 || o.ndense < 0 || o.ndense > LSS_CONVNET_MAX - 1 || o.ch0 < 1 || o.side0 < 1 ||
        o.nup < 1 || o.nup > LSS_CONVNET_MAX || (int)o.out_act < 0 || o.out_act > LSS_ACT_NONE ||
        (int64_t)o.ch0 * o.side0 * o.side0 > (1 << 26))
        return lss_seterr(LSS_ERR_ARG, "lss_convgen_init: bad options (nin %d, %d dense (0..%d), reshape %d x %d x %d, %d "
                          "transposed convolutions (1..%d))", o.nin, o.ndense, LSS_CONVNET_MAX - 1, o.ch0, o.side0, o.side0,
                          o.nup, LSS_CONVNET_MAX);
    fin = o.nin;
    for (i = 0; i <= o.ndense; i++) {
        int64_t sw[2], sb[1];
        int last = i == o.ndense;
        if (!last && o.width[i] < 1) return lss_seterr(LSS_ERR_ARG, "lss_convgen_init: dense layer %d has width %d", i, o.width[i]);
        sw[0] = fin; sw[1] = last ? (int64_t)o.ch0 * o.side0 * o.side0 : o.width[i]; sb[0] = sw[1];
        snprintf(nm, sizeof nm, "%s.dense%d.w", name, i); net->dw[i] = lss_store_add(st, nm, 2, sw, LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.dense%d.b", name, i); net->db[i] = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        fin = sw[1];
    }
    side = o.side0; c = o.ch0;
    for (i = 0; i < o.nup; i++) {
        int64_t sw[4], sb[1];
        if (o.ch[i] < 1 || o.k[i] < 1 || o.k[i] % 2 == 0 || o.stride[i] < 1 || side > (1 << 14) / o.stride[i])
            return lss_seterr(LSS_ERR_ARG, "lss_convgen_init: transposed convolution %d: %d channels, kernel %d (odd), stride %d",
                              i, o.ch[i], o.k[i], o.stride[i]);
        sw[0] = c; sw[1] = o.ch[i]; sw[2] = o.k[i]; sw[3] = o.k[i]; sb[0] = o.ch[i];
        snprintf(nm, sizeof nm, "%s.up%d.w", name, i); net->uw[i] = lss_store_add(st, nm, 4, sw, LSS_INIT_HE);
        snprintf(nm, sizeof nm, "%s.up%d.b", name, i); net->ub[i] = lss_store_add(st, nm, 1, sb, LSS_INIT_ZERO);
        side *= o.stride[i];
        c = o.ch[i];
    }
    if ((i = lss_store_status(st))) return i;
    net->o = o; net->side = side;
    return LSS_OK;
}

LSSDEF lss_tensor *lss_convgen_forward(lss_graph *g, const lss_convgen *net, lss_tensor *z) {
    int i;
    int64_t sh[4];
    const lss_convgen_opts *o;
    if (!lss__enter(g, "lss_convgen_forward", 1, z, NULL, NULL)) return NULL;
    if (!net) return lss__fail(g, LSS_ERR_ARG, "%s: NULL network%s", "lss_convgen_forward", NULL);
    o = &net->o;
    if (z->ndim != 2 || z->shape[1] != o->nin) return lss__shape_err(g, "lss_convgen_forward (latent must be [N, nin])", z, NULL);
    for (i = 0; i <= o->ndense; i++) z = lss_op_relu(g, lss_op_dense(g, z, net->dw[i], net->db[i]));
    sh[0] = z ? z->shape[0] : 0; sh[1] = o->ch0; sh[2] = o->side0; sh[3] = o->side0;
    z = lss_op_reshape(g, z, 4, sh);
    for (i = 0; i < o->nup; i++) {
        z = lss_op_conv2d_transpose(g, z, net->uw[i], net->ub[i], o->stride[i], (o->k[i] - 1) / 2, o->stride[i] - 1);
        z = i < o->nup - 1 ? lss_op_relu(g, z) : lss_op_activate(g, z, o->out_act);
    }
    return z;
}

LSSDEF int lss_cgan_latent(const float *z, const float *y, int n, int nlatent, int nparam, const double *lo,
                           const double *hi, float *out) {
    int i, j, m;
    if (!z || !y || !lo || !hi || !out || n < 0 || nlatent < 1 || nparam < 1 || nlatent % nparam)
        return lss_seterr(LSS_ERR_ARG, "lss_cgan_latent: bad arguments (latent %d, %d parameters: the latent length must be a "
                          "multiple of the parameter count)", nlatent, nparam);
    for (j = 0; j < nparam; j++)
        if (!(hi[j] > lo[j]) || !isfinite(hi[j] - lo[j]))
            return lss_seterr(LSS_ERR_ARG, "lss_cgan_latent: parameter %d range [%g, %g] is empty", j, lo[j], hi[j]);
    m = nlatent / nparam;
    for (i = 0; i < n; i++)
        for (j = 0; j < nparam; j++) {
            const float *zb = z + (size_t)i * nlatent + (size_t)j * m;
            float *ob = out + (size_t)i * nlatent + (size_t)j * m;
            double nrm = 0, l0 = 0.1 * sqrt((double)m), l1 = sqrt((double)m), len, yv = y[(size_t)i * nparam + j];
            int q;
            for (q = 0; q < m; q++) nrm += (double)zb[q] * zb[q];
            nrm = sqrt(nrm);
            if (!(nrm > 0) || !isfinite(nrm) || !isfinite(yv))
                return lss_seterr(LSS_ERR_ARG, "lss_cgan_latent: sample %d, block %d: zero or non-finite latent or parameter", i, j);
            len = l0 + (l1 - l0) * (yv - lo[j]) / (hi[j] - lo[j]);
            if (!(len > 0))
                return lss_seterr(LSS_ERR_RANGE, "lss_cgan_latent: parameter %d = %g lies too far below its range [%g, %g] "
                                  "(latent length %g)", j, yv, lo[j], hi[j], len);
            for (q = 0; q < m; q++) ob[q] = (float)(zb[q] * (len / nrm));
        }
    return LSS_OK;
}

/* The tangent pass of lss_wgan_gp_step: the critic without biases, LeakyReLU slopes fixed from tr, applied to v. */
static lss_tensor *lss__convnet_tangent(lss_graph *g, const lss_convnet *net, const lss_convnet_trace *tr, lss_tensor *v,
                                        lss_tensor *extra) {
    const lss_convnet_opts *o = &net->o;
    int i, q = 0;
    for (i = 0; i <= o->ndense + o->nconv && v; i++) {
        lss_tensor *pre, *mask;
        int64_t j;
        if (i < o->nconv) v = lss_op_conv2d(g, v, net->cw[i], NULL, o->stride[i], (o->k[i] - 1) / 2);
        else {
            int d = i - o->nconv;
            if (d == 0) {
                v = lss_op_flatten(g, v);
                if (v && o->nextra > 0) v = lss_op_concat(g, v, lss_tensor_new(g, 2, (int64_t[]){v->shape[0], o->nextra}), 1);
            }
            if (d == o->ndense) { /* the output layer, and the projection (bilinear: phi's tangent times extra P) */
                lss_tensor *phi = v;
                v = lss_op_dense(g, phi, net->dw[d], NULL);
                if (net->pw) v = lss_op_add(g, v, lss__convnet_proj(g, net, phi, extra));
                break;
            }
            v = lss_op_dense(g, v, net->dw[d], NULL);
        }
        if (!v) break;
        pre = tr->pre[q++];
        mask = lss_tensor_new(g, v->ndim, v->shape);
        if (!mask) return NULL;
        for (j = 0; j < v->n; j++) mask->data[j] = pre->data[j] > 0 ? 1.0f : o->slope;
        v = lss_op_mul(g, v, mask);
    }
    return v;
}

LSSDEF int lss_wgan_gp_step(lss_graph *g, lss_graph *g2, lss_store *st, const lss_convnet *critic,
                            const float *real, const float *fake, const float *y, const float *eps, int n,
                            double lambda, double *wdist, double *gp, double *gnorm) {
    lss_convnet_trace tr;
    lss_tensor *xh, *yt = NULL, *out, *tout, *v;
    float *save = NULL, *dy = NULL, *both = NULL, *yy = NULL;
    int64_t d, np, sh[4], i, j;
    double sgp = 0, sgn = 0, dr = 0, dfk = 0;
    int s = LSS_OK;
    if (!g || !g2 || !st || !critic || !real || !fake || !eps || n < 1 || !(lambda >= 0) || (critic->o.nextra > 0 && !y))
        return lss_seterr(LSS_ERR_ARG, "lss_wgan_gp_step: bad arguments (n %d, lambda %g)", n, lambda);
    d = (int64_t)critic->o.in_ch * critic->o.side * critic->o.side;
    np = lss_store_size(st);
    sh[0] = n; sh[1] = critic->o.in_ch; sh[2] = critic->o.side; sh[3] = critic->o.side;
    save = (float *)LSS_MALLOC(sizeof(float) * (size_t)(np > 0 ? np : 1));
    dy = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * n));
    both = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * n * d));
    if (critic->o.nextra > 0) yy = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * n * critic->o.nextra));
    if (!save || !dy || !both || (critic->o.nextra > 0 && !yy)) { s = lss_seterr(LSS_ERR_NOMEM, "lss_wgan_gp_step: out of memory"); goto out; }
    /* 1. per-sample input gradients at the interpolates (the store's gradients are kept aside) */
    memcpy(save, lss_store_grad(st), sizeof(float) * (size_t)np);
    lss_graph_reset(g);
    lss_graph_set_training(g, 1);
    xh = lss__new(g, 4, sh, 1, 0);
    if (xh)
        for (i = 0; i < n; i++)
            for (j = 0; j < d; j++) {
                float e = eps[i];
                xh->data[i * d + j] = e * real[i * d + j] + (1.0f - e) * fake[i * d + j];
            }
    if (critic->o.nextra > 0) yt = lss_view(g, (float *)y, 2, (int64_t[]){n, critic->o.nextra});
    out = lss_convnet_forward(g, critic, xh, yt, &tr);
    for (i = 0; i < n; i++) dy[i] = 1.0f;
    if (!out) { s = lss_graph_status(g) ? lss_graph_status(g) : LSS_ERR_STATE; goto out; }
    s = lss_backward_seed(g, out, dy);
    memcpy(lss_store_grad(st), save, sizeof(float) * (size_t)np);
    if (s) goto out;
    /* 2. the tangent pass along v_i = c_i grad_i, c_i = 2 lambda (|grad_i| - 1) / (|grad_i| n) */
    lss_graph_reset(g2);
    lss_graph_set_training(g2, 1);
    v = lss_tensor_new(g2, 4, sh);
    if (!v) { s = lss_graph_status(g2); goto out; }
    for (i = 0; i < n; i++) {
        double nrm = 0, c;
        for (j = 0; j < d; j++) nrm += (double)xh->grad[i * d + j] * xh->grad[i * d + j];
        nrm = sqrt(nrm);
        sgn += nrm; sgp += (nrm - 1) * (nrm - 1);
        c = nrm > 0 ? 2 * lambda * (nrm - 1) / (nrm * n) : 0;
        for (j = 0; j < d; j++) v->data[i * d + j] = (float)(c * xh->grad[i * d + j]);
    }
    if (lambda > 0) {
        tout = lss__convnet_tangent(g2, critic, &tr, v,
                                    critic->o.nextra > 0 ? lss_view(g2, (float *)y, 2, (int64_t[]){n, critic->o.nextra}) : NULL);
        if (!tout) { s = lss_graph_status(g2) ? lss_graph_status(g2) : LSS_ERR_STATE; goto out; }
        if ((s = lss_backward_seed(g2, tout, dy))) goto out;
    }
    /* 3. the Wasserstein term on real and fake together */
    memcpy(both, real, sizeof(float) * (size_t)(n * d));
    memcpy(both + n * d, fake, sizeof(float) * (size_t)(n * d));
    if (yy) {
        memcpy(yy, y, sizeof(float) * (size_t)(n * critic->o.nextra));
        memcpy(yy + (size_t)n * critic->o.nextra, y, sizeof(float) * (size_t)(n * critic->o.nextra));
    }
    lss_graph_reset(g);
    sh[0] = 2 * n;
    out = lss_convnet_forward(g, critic, lss_view(g, both, 4, sh), yy ? lss_view(g, yy, 2, (int64_t[]){2 * n, critic->o.nextra}) : NULL, NULL);
    if (!out) { s = lss_graph_status(g) ? lss_graph_status(g) : LSS_ERR_STATE; goto out; }
    for (i = 0; i < n; i++) { dy[i] = -1.0f / n; dy[n + i] = 1.0f / n; dr += out->data[i]; dfk += out->data[n + i]; }
    if ((s = lss_backward_seed(g, out, dy))) goto out;
    if (wdist) *wdist = (dr - dfk) / n;
    if (gp) *gp = sgp / n;
    if (gnorm) *gnorm = sgn / n;
out:
    LSS_FREE(save); LSS_FREE(dy); LSS_FREE(both); LSS_FREE(yy);
    return s;
}


LSSDEF void lss_cgan_free(lss_cgan *m) {
    if (!m) return;
    lss_optim_free(m->oc); lss_optim_free(m->og);
    lss_store_free(m->sc); lss_store_free(m->sg);
    lss_graph_free(m->g); lss_graph_free(m->g2); lss_graph_free(m->ge);
    lss_dp_free(m->dpc); lss_dp_free(m->dpg); LSS_FREE(m->shst);
    LSS_FREE(m->real); LSS_FREE(m->fake); LSS_FREE(m->y); LSS_FREE(m->z); LSS_FREE(m->eps); LSS_FREE(m->zh);
    memset(m, 0, sizeof *m);
}

LSSDEF int lss_cgan_opts_paper(int side, int nstride, int w0, int wdense, int nlatent, lss_cgan_opts *o) {
    int i;
    lss_convnet_opts *cr;
    lss_convgen_opts *g;
    if (!o || nstride < 1 || nstride >= LSS_CONVNET_MAX || side < 4 || side > 16384 || side % (1 << nstride) || w0 < 1 ||
        (int64_t)w0 << nstride > 65536 || wdense < 4 || wdense > 65536 || nlatent < 2 || nlatent % 2)
        return lss_seterr(LSS_ERR_ARG, "lss_cgan_opts_paper: side %d with %d stride-2 layers, widths %d and %d, latent %d (even)", side,
                          nstride, w0, wdense, nlatent);
    cr = &o->critic;
    g = &o->gen;
    memset(cr, 0, sizeof *cr);
    memset(g, 0, sizeof *g);
    cr->in_ch = 1; cr->side = side; cr->nconv = nstride + 1;
    cr->ch[0] = w0; cr->k[0] = 7; cr->stride[0] = 1;
    for (i = 1; i <= nstride; i++) { cr->ch[i] = w0 << i; cr->k[i] = i == nstride ? 3 : 5; cr->stride[i] = 2; }
    cr->ndense = 3; cr->width[0] = wdense; cr->width[1] = wdense / 2; cr->width[2] = wdense / 4;
    cr->nextra = 2; cr->nout = 1;
    g->nin = nlatent; g->ndense = 2; g->width[0] = wdense / 2; g->width[1] = wdense;
    g->ch0 = w0 << nstride; g->side0 = side >> nstride; g->nup = nstride + 1;
    for (i = 0; i < nstride; i++) { g->ch[i] = w0 << (nstride - 1 - i); g->k[i] = i == 0 ? 3 : 5; g->stride[i] = 2; }
    g->ch[nstride] = 1; g->k[nstride] = 7; g->stride[nstride] = 1;
    o->nparam = 2;
    return LSS_OK;
}

LSSDEF int lss_cgan_init(lss_cgan *m, const lss_cgan_opts *opts) {
    lss_cgan_opts o;
    int s, j;
    int64_t d;
    if (!m || !opts) return lss_seterr(LSS_ERR_ARG, "lss_cgan_init: NULL argument");
    memset(m, 0, sizeof *m);
    o = *opts;
    if (o.lambda == 0) o.lambda = 10;
    if (o.n_critic == 0) o.n_critic = 5;
    if (o.batch == 0) o.batch = 64;
    if (o.opt_critic.lr == 0 && o.opt_critic.kind == LSS_OPT_ADAM) { o.opt_critic.kind = LSS_OPT_RMSPROP; o.opt_critic.lr = 1e-5; }
    if (o.opt_gen.lr == 0 && o.opt_gen.kind == LSS_OPT_ADAM) { o.opt_gen.kind = LSS_OPT_RMSPROP; o.opt_gen.lr = 1e-5; }
    if (o.nparam < 1 || o.nparam > 8 || o.critic.nextra != o.nparam || o.critic.nout != 1 || o.gen.nin % o.nparam ||
        !(o.lambda >= 0) || o.n_critic < 1 || o.n_critic > 100 || o.batch < 1 || o.batch > 65536 || o.shards < 0 ||
        o.shards > o.batch || o.shards > 4096)
        return lss_seterr(LSS_ERR_ARG, "lss_cgan_init: bad options (%d parameters, critic extra %d and outputs %d, latent %d, "
                          "lambda %g, n_critic %d, batch %d, shards %d)", o.nparam, o.critic.nextra, o.critic.nout, o.gen.nin,
                          o.lambda, o.n_critic, o.batch, o.shards);
    for (j = 0; j < o.nparam; j++)
        if (!(o.hi[j] > o.lo[j])) return lss_seterr(LSS_ERR_ARG, "lss_cgan_init: parameter %d range [%g, %g] is empty", j, o.lo[j], o.hi[j]);
    if ((s = lss_store_create(lss_stream(LSS_STREAM_NET_INIT, o.seed, 0), &m->sc)) ||
        (s = lss_store_create(lss_stream(LSS_STREAM_NET_INIT, o.seed, 1), &m->sg)) ||
        (s = lss_convnet_init(&m->critic, m->sc, "critic", &o.critic)) || (s = lss_convgen_init(&m->gen, m->sg, "gen", &o.gen)))
        goto fail;
    if (m->gen.side != o.critic.side || m->gen.o.ch[m->gen.o.nup - 1] != o.critic.in_ch) {
        s = lss_seterr(LSS_ERR_ARG, "lss_cgan_init: the generator makes %d x %d x %d maps, the critic takes %d x %d x %d",
                       m->gen.o.ch[m->gen.o.nup - 1], m->gen.side, m->gen.side, o.critic.in_ch, o.critic.side, o.critic.side);
        goto fail;
    }
    m->xform = lss_store_buffer(m->sg, "gen.xform", 1, (int64_t[]){2}, LSS_INIT_ZERO, 0);
    if ((s = lss_store_status(m->sg))) goto fail;
    m->xform->data[0] = 1; m->xform->data[1] = 0;
    if ((s = lss_optim_create(m->sc, &o.opt_critic, &m->oc)) || (s = lss_optim_create(m->sg, &o.opt_gen, &m->og)) ||
        (s = lss_graph_create(&m->g)) || (s = lss_graph_create(&m->g2)) || (s = lss_graph_create(&m->ge)))
        goto fail;
    lss_graph_set_training(m->ge, 0);
    d = (int64_t)o.critic.in_ch * o.critic.side * o.critic.side;
    m->real = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o.batch * d));
    m->fake = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o.batch * d));
    m->y = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o.batch * o.nparam));
    m->z = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o.batch * o.gen.nin));
    m->eps = (float *)LSS_MALLOC(sizeof(float) * (size_t)o.batch);
    m->zh = (float *)LSS_MALLOC(sizeof(float) * (size_t)(o.batch * o.gen.nin));
    if (!m->real || !m->fake || !m->y || !m->z || !m->eps || !m->zh) { s = lss_seterr(LSS_ERR_NOMEM, "lss_cgan_init: out of memory"); goto fail; }
    if (o.shards > 1) {
        if ((s = lss_dp_create(m->sc, o.shards, &m->dpc)) || (s = lss_dp_create(m->sg, o.shards, &m->dpg))) goto fail;
        if (!(m->shst = (double *)LSS_MALLOC(sizeof(double) * 3 * (size_t)o.shards))) { s = lss_seterr(LSS_ERR_NOMEM, "lss_cgan_init: out of memory"); goto fail; }
    }
    m->o = o;
    return LSS_OK;
fail:
    lss_cgan_free(m);
    return s ? s : LSS_ERR_STATE;
}

LSSDEF void lss_cgan_to_kappa(const lss_cgan *m, float *x, int64_t n) {
    int64_t i;
    float s = m->xform->data[0], c = m->xform->data[1];
    for (i = 0; i < n; i++) x[i] = (x[i] - c) * s;
}
LSSDEF void lss_cgan_from_kappa(const lss_cgan *m, float *x, int64_t n) {
    int64_t i;
    float s = m->xform->data[0], c = m->xform->data[1];
    for (i = 0; i < n; i++) x[i] = x[i] / s + c;
}

/* Generator forward of n latents (already rescaled) on graph g into a tensor. */
static lss_tensor *lss__cgan_gen(lss_cgan *m, lss_graph *g, const float *y, const float *z, int n, float *zh) {
    if (lss_cgan_latent(z, y, n, m->o.gen.nin, m->o.nparam, m->o.lo, m->o.hi, zh)) return NULL;
    return lss_convgen_forward(g, &m->gen, lss_view(g, zh, 2, (int64_t[]){n, m->o.gen.nin}));
}

static void lss__cgan_normals(uint64_t seed, uint64_t index, uint32_t sub, float *z, int64_t n) {
    lss_rng r;
    int64_t i;
    lss_rng_init(&r, seed, lss_stream(LSS_STREAM_GAN, index, sub));
    for (i = 0; i < n; i++) z[i] = (float)lss_rng_normal(&r);
}

LSSDEF int lss_cgan_generate(lss_cgan *m, const float *z, const float *y, int n, uint64_t index0, float *out) {
    int i0, s = LSS_OK, B;
    int64_t d;
    float *zz, *zh;
    if (!m || !m->sg || !y || !out || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_cgan_generate: bad arguments");
    B = m->o.batch;
    d = (int64_t)m->o.critic.in_ch * m->o.critic.side * m->o.critic.side;
    zz = (float *)LSS_MALLOC(sizeof(float) * (size_t)(2 * B * m->o.gen.nin));
    if (!zz) return lss_seterr(LSS_ERR_NOMEM, "lss_cgan_generate: out of memory");
    zh = zz + (size_t)B * m->o.gen.nin;
    for (i0 = 0; i0 < n && s == LSS_OK; i0 += B) {
        int nb = n - i0 < B ? n - i0 : B, i;
        lss_tensor *x;
        if (z) memcpy(zz, z + (size_t)i0 * m->o.gen.nin, sizeof(float) * (size_t)(nb * m->o.gen.nin));
        else
            for (i = 0; i < nb; i++)
                lss__cgan_normals(m->o.seed, lss_set_index(LSS_SET_TEST, index0 + (uint64_t)(i0 + i)), 0, zz + (size_t)i * m->o.gen.nin,
                                  m->o.gen.nin);
        lss_graph_reset(m->ge);
        x = lss__cgan_gen(m, m->ge, y + (size_t)i0 * m->o.nparam, zz, nb, zh);
        if (!x) { s = lss_graph_status(m->ge) ? lss_graph_status(m->ge) : lss_seterr(LSS_ERR_ARG, "lss_cgan_generate: %s", lss_last_error()); break; }
        memcpy(out + (size_t)i0 * d, x->data, sizeof(float) * (size_t)(nb * d));
    }
    LSS_FREE(zz);
    return s;
}

/* data-parallel shards of the critic and generator steps: the means of shard [lo, hi) weighted by (hi - lo) / B */
static int lss__cgan_cshard(void *u, int sh, int ns, double *loss) {
    lss_cgan *m = (lss_cgan *)u;
    int64_t lo, hi, i, n = lss_store_size(m->sc), d = (int64_t)m->o.critic.in_ch * m->o.critic.side * m->o.critic.side;
    double wd = 0, gp = 0, gn = 0, w;
    float *g = lss_store_grad(m->sc), fw;
    int s;
    lss_dp_shard(m->o.batch, sh, ns, &lo, &hi);
    w = (double)(hi - lo) / m->o.batch;
    fw = (float)w;
    s = lss_wgan_gp_step(m->g, m->g2, m->sc, &m->critic, m->real + lo * d, m->fake + lo * d, m->y + lo * m->o.nparam, m->eps + lo,
                         (int)(hi - lo), m->o.lambda, &wd, &gp, &gn);
    if (s) return s;
    for (i = 0; i < n; i++) g[i] *= fw;
    m->shst[3 * sh] = wd, m->shst[3 * sh + 1] = gp, m->shst[3 * sh + 2] = gn;
    *loss = (-wd + m->o.lambda * gp) * w;
    return LSS_OK;
}
static int lss__cgan_gshard(void *u, int sh, int ns, double *loss) {
    lss_cgan *m = (lss_cgan *)u;
    int64_t lo, hi, nin = m->o.gen.nin, np = m->o.nparam;
    lss_tensor *x, *out, *l;
    int s;
    lss_dp_shard(m->o.batch, sh, ns, &lo, &hi);
    lss_graph_reset(m->g);
    x = lss__cgan_gen(m, m->g, m->y + lo * np, m->z + lo * nin, (int)(hi - lo), m->zh + lo * nin);
    out = lss_convnet_forward(m->g, &m->critic, x, lss_view(m->g, m->y + lo * np, 2, (int64_t[]){hi - lo, np}), NULL);
    l = lss_op_scale(m->g, lss_op_mean(m->g, out), -(float)(hi - lo) / (float)m->o.batch);
    if (!l) return lss_graph_status(m->g) ? lss_graph_status(m->g) : LSS_ERR_STATE;
    if ((s = lss_backward(m->g, l))) return s;
    *loss = l->data[0];
    return LSS_OK;
}

LSSDEF int lss_cgan_step(lss_cgan *m, int64_t t, int (*draw)(void *user, int64_t t, int k, float *maps, float *y),
                         void *user, double *stats) {
    int k, s, B, i, numeric = 0;
    int64_t d;
    double wd = NAN, gp = NAN, gn = NAN, gl = NAN;
    float *zh;
    lss_tensor *x, *out, *loss;
    if (!m || !m->sc || !draw || t < 0) return lss_seterr(LSS_ERR_ARG, "lss_cgan_step: bad arguments");
    B = m->o.batch;
    d = (int64_t)m->o.critic.in_ch * m->o.critic.side * m->o.critic.side;
    zh = m->zh;
    for (k = 0; k < m->o.n_critic; k++) {
        lss_rng r;
        if ((s = draw(user, t, k, m->real, m->y))) goto out;
        lss__cgan_normals(m->o.seed, (uint64_t)t, (uint32_t)k, m->z, (int64_t)B * m->o.gen.nin);
        lss_rng_init(&r, m->o.seed, lss_stream(LSS_STREAM_GAN, (uint64_t)t, 2048u + (uint32_t)k));
        for (i = 0; i < B; i++) m->eps[i] = (float)lss_rng_uniform(&r);
        lss_graph_reset(m->ge);
        if (!(x = lss__cgan_gen(m, m->ge, m->y, m->z, B, zh))) { s = lss_graph_status(m->ge) ? lss_graph_status(m->ge) : LSS_ERR_ARG; goto out; }
        memcpy(m->fake, x->data, sizeof(float) * (size_t)(B * d));
        if (m->dpc) {
            double cl;
            int j;
            if ((s = lss_dp_grad(m->dpc, lss__cgan_cshard, m, &cl)) == LSS_ERR_NUMERIC) { numeric = 1; continue; }
            if (s || (s = lss_mpi_allgather(m->shst, m->o.shards, 3 * sizeof(double)))) goto out;
            wd = gp = gn = 0;
            for (j = 0; j < m->o.shards; j++) {
                int64_t lo, hi;
                double w;
                lss_dp_shard(B, j, m->o.shards, &lo, &hi);
                w = (double)(hi - lo) / B;
                wd += w * m->shst[3 * j], gp += w * m->shst[3 * j + 1], gn += w * m->shst[3 * j + 2];
            }
        } else {
            lss_store_zero_grad(m->sc);
            if ((s = lss_wgan_gp_step(m->g, m->g2, m->sc, &m->critic, m->real, m->fake, m->y, m->eps, B, m->o.lambda, &wd, &gp, &gn)))
                goto out;
        }
        s = lss_optim_step(m->oc);
        if (s == LSS_ERR_NUMERIC) numeric = 1;
        else if (s) goto out;
    }
    /* the generator step at the last batch's parameters */
    lss__cgan_normals(m->o.seed, (uint64_t)t, (uint32_t)m->o.n_critic, m->z, (int64_t)B * m->o.gen.nin);
    if (m->dpg) {
        s = lss_dp_grad(m->dpg, lss__cgan_gshard, m, &gl);
        if (s == LSS_ERR_NUMERIC) { numeric = 1; goto done; }
        if (s) goto out;
    } else {
        lss_graph_reset(m->g);
        x = lss__cgan_gen(m, m->g, m->y, m->z, B, zh);
        out = lss_convnet_forward(m->g, &m->critic, x, lss_view(m->g, m->y, 2, (int64_t[]){B, m->o.nparam}), NULL);
        loss = lss_op_scale(m->g, lss_op_mean(m->g, out), -1.0f);
        lss_store_zero_grad(m->sg);
        if ((s = lss_backward(m->g, loss))) goto out;
        gl = loss->data[0];
    }
    s = lss_optim_step(m->og);
    if (s == LSS_ERR_NUMERIC) numeric = 1;
    else if (s) goto out;
done:
    s = numeric ? lss_seterr(LSS_ERR_NUMERIC, "lss_cgan_step: a gradient at iteration %lld is not finite", (long long)t) : LSS_OK;
out:
    if (stats) { stats[0] = -wd + m->o.lambda * gp; stats[1] = wd; stats[2] = gp; stats[3] = gn; stats[4] = gl; }
    return s;
}

/* ---------------------------------------------------------------- normalizing flow */
enum { LSS__FL_ACTNORM = 0, LSS__FL_CONV1, LSS__FL_CHECKER, LSS__FL_CHANNEL, LSS__FL_SQUEEZE, LSS__FL_SPLIT };
typedef struct {
    int kind, c, h, w;       /* channels and size of the layer's input (squeeze: before it) */
    int64_t zoff;            /* split: offset of its latents in a map's latent vector */
    float *mask;             /* checkerboard: kept cells 1 (h w), then their complement (h w) */
    lss_tensor *p[7];        /* actnorm b, ls; conv1 W; coupling w1, b1, w2, b2, w3, b3, g */
} lss__flayer;
struct lss_flow {
    lss_flow_opts o;
    lss_store *st;
    lss__flayer *L;
    int nl;
    int64_t zlast;           /* offset of the last level's output in the latent vector */
    lss_tensor *xf;          /* buffer: transform kind, shift, mean, std */
    lss_tensor *init;        /* buffer: 1 once the actnorm layers are initialised */
    lss_graph *g;            /* evaluation graph of forward / inverse */
};

LSSDEF void lss_flow_free(lss_flow *f) {
    int i;
    if (!f) return;
    for (i = 0; i < f->nl; i++) LSS_FREE(f->L[i].mask);
    LSS_FREE(f->L);
    lss_store_free(f->st);
    lss_graph_free(f->g);
    LSS_FREE(f);
}
LSSDEF lss_store *lss_flow_store(lss_flow *f) { return f ? f->st : NULL; }
LSSDEF const lss_flow_opts *lss_flow_options(const lss_flow *f) { return f ? &f->o : NULL; }
LSSDEF int64_t lss_flow_dim(const lss_flow *f) { return f ? (int64_t)f->o.h * f->o.w : 0; }

static int lss__flow_add(lss_flow *f, int kind, int c, int h, int w, int *cap) {
    lss__flayer *l;
    if (f->nl == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        lss__flayer *nl = (lss__flayer *)LSS_REALLOC(f->L, sizeof *nl * (size_t)nc);
        if (!nl) return lss_seterr(LSS_ERR_NOMEM, "lss_flow_create: out of memory");
        f->L = nl;
        *cap = nc;
    }
    l = &f->L[f->nl++];
    memset(l, 0, sizeof *l);
    l->kind = kind; l->c = c; l->h = h; l->w = w;
    return LSS_OK;
}

/* Parameters of layer i (tensors "flow.<i>.<part>"). */
static int lss__flow_params(lss_flow *f, int i) {
    lss__flayer *l = &f->L[i];
    lss_store *st = f->st;
    char nm[64];
    int64_t sh[4];
    int hid = f->o.hidden, k;
#define LSS__FLP(j, part, nd, s0, s1, s2, s3, ini)                                                  \
    sh[0] = s0; sh[1] = s1; sh[2] = s2; sh[3] = s3;                                                \
    snprintf(nm, sizeof nm, "flow.%d.%s", i, part);                                               \
    l->p[j] = lss_store_add(st, nm, nd, sh, ini)
    switch (l->kind) {
    case LSS__FL_ACTNORM:
        LSS__FLP(0, "b", 4, 1, l->c, 1, 1, LSS_INIT_ZERO);
        LSS__FLP(1, "ls", 4, 1, l->c, 1, 1, LSS_INIT_ZERO);
        break;
    case LSS__FL_CONV1:
        sh[0] = l->c; sh[1] = l->c; sh[2] = 1; sh[3] = 1;
        snprintf(nm, sizeof nm, "flow.%d.W", i);
        l->p[0] = f->o.permute ? lss_store_buffer(st, nm, 4, sh, LSS_INIT_ZERO, 0.0f) : lss_store_add(st, nm, 4, sh, LSS_INIT_NORMAL);
        if (!l->p[0]) break;
        if (f->o.permute) {
            for (k = 0; k < l->c; k++) l->p[0]->data[k * l->c + (l->c - 1 - k)] = 1.0f;
        } else { /* Gram-Schmidt: a random rotation (in double; rows of W) */
            int n = l->c, a, b, j;
            double *m = (double *)LSS_MALLOC(sizeof(double) * (size_t)n * n);
            if (!m) return lss_seterr(LSS_ERR_NOMEM, "lss_flow_create: out of memory");
            for (j = 0; j < n * n; j++) m[j] = l->p[0]->data[j];
            for (a = 0; a < n; a++) {
                double nr = 0;
                for (b = 0; b < a; b++) {
                    double d = 0;
                    for (j = 0; j < n; j++) d += m[a * n + j] * m[b * n + j];
                    for (j = 0; j < n; j++) m[a * n + j] -= d * m[b * n + j];
                }
                for (j = 0; j < n; j++) nr += m[a * n + j] * m[a * n + j];
                nr = sqrt(nr);
                for (j = 0; j < n; j++) m[a * n + j] = nr > 0 ? m[a * n + j] / nr : (j == a);
            }
            for (j = 0; j < n * n; j++) l->p[0]->data[j] = (float)m[j];
            LSS_FREE(m);
        }
        break;
    case LSS__FL_CHECKER:
    case LSS__FL_CHANNEL: {
        int ca = l->kind == LSS__FL_CHECKER ? l->c : l->c / 2, cb = l->kind == LSS__FL_CHECKER ? l->c : l->c - l->c / 2;
        LSS__FLP(0, "w1", 4, hid, ca + f->o.ncond, 3, 3, LSS_INIT_HE);
        LSS__FLP(1, "b1", 1, hid, 1, 1, 1, LSS_INIT_ZERO);
        LSS__FLP(2, "w2", 4, hid, hid, 1, 1, LSS_INIT_HE);
        LSS__FLP(3, "b2", 1, hid, 1, 1, 1, LSS_INIT_ZERO);
        LSS__FLP(4, "w3", 4, 2 * cb, hid, 3, 3, LSS_INIT_ZERO);
        LSS__FLP(5, "b3", 1, 2 * cb, 1, 1, 1, LSS_INIT_ZERO);
        LSS__FLP(6, "g", 4, 1, cb, 1, 1, LSS_INIT_ONE);
        break;
    }
    default: break;
    }
#undef LSS__FLP
    return lss_store_status(st);
}

LSSDEF int lss_flow_create(const lss_flow_opts *opts, lss_flow **out) {
    lss_flow *f;
    lss_flow_opts o;
    int cap = 0, s, lv, k, c = 1, h, w, i;
    int64_t zo = 0, sh[1];
    if (!out) return lss_seterr(LSS_ERR_ARG, "lss_flow_create: NULL output");
    *out = NULL;
    if (!opts) return lss_seterr(LSS_ERR_ARG, "lss_flow_create: NULL options");
    o = *opts;
    if (o.levels == 0) o.levels = 3;
    if (o.steps == 0) o.steps = 4;
    if (o.hidden == 0) o.hidden = 32;
    if (o.levels < 1 || o.levels > LSS_FLOW_MAXLEVELS || o.steps < 1 || o.steps > 32 || o.hidden < 1 || o.hidden > 4096 ||
        o.ncond < 0 || o.ncond > LSS_FLOW_MAXCOND || o.h < 2 || o.w < 2 || o.h > 65536 || o.w > 65536 ||
        o.h % (1 << o.levels) || o.w % (1 << o.levels))
        return lss_seterr(LSS_ERR_ARG, "lss_flow_create: bad options (maps %d x %d must be multiples of 2^levels, levels %d "
                          "(1..%d), steps %d (1..32), hidden %d, ncond %d (0..%d))", o.h, o.w, o.levels, LSS_FLOW_MAXLEVELS,
                          o.steps, o.hidden, o.ncond, LSS_FLOW_MAXCOND);
    f = (lss_flow *)LSS_MALLOC(sizeof *f);
    if (!f) return lss_seterr(LSS_ERR_NOMEM, "lss_flow_create: out of memory");
    memset(f, 0, sizeof *f);
    f->o = o;
    if ((s = lss_store_create(o.seed, &f->st)) != LSS_OK || (s = lss_graph_create(&f->g)) != LSS_OK) { lss_flow_free(f); return s; }
    lss_graph_set_training(f->g, 0);
    h = o.h; w = o.w;
    for (k = 0; k < o.steps && s == LSS_OK; k++) {
        if ((s = lss__flow_add(f, LSS__FL_ACTNORM, c, h, w, &cap)) != LSS_OK) break;
        if ((s = lss__flow_add(f, LSS__FL_CHECKER, c, h, w, &cap)) != LSS_OK) break;
        f->L[f->nl - 1].zoff = k % 2; /* the mask's parity */
    }
    for (lv = 1; lv <= o.levels && s == LSS_OK; lv++) {
        if ((s = lss__flow_add(f, LSS__FL_SQUEEZE, c, h, w, &cap)) != LSS_OK) break;
        c *= 4; h /= 2; w /= 2;
        for (k = 0; k < o.steps && s == LSS_OK; k++) {
            if ((s = lss__flow_add(f, LSS__FL_ACTNORM, c, h, w, &cap)) != LSS_OK) break;
            if ((s = lss__flow_add(f, LSS__FL_CONV1, c, h, w, &cap)) != LSS_OK) break;
            s = lss__flow_add(f, LSS__FL_CHANNEL, c, h, w, &cap);
        }
        if (s == LSS_OK && lv < o.levels) {
            if ((s = lss__flow_add(f, LSS__FL_SPLIT, c, h, w, &cap)) != LSS_OK) break;
            f->L[f->nl - 1].zoff = zo;
            zo += (int64_t)(c - c / 2) * h * w;
            c /= 2;
        }
    }
    f->zlast = zo;
    for (i = 0; i < f->nl && s == LSS_OK; i++) {
        lss__flayer *l = &f->L[i];
        if (l->kind == LSS__FL_CHECKER) {
            int64_t p, n = (int64_t)l->h * l->w;
            if (!(l->mask = (float *)LSS_MALLOC(sizeof(float) * 2 * (size_t)n))) { s = lss_seterr(LSS_ERR_NOMEM, "lss_flow_create: out of memory"); break; }
            for (p = 0; p < n; p++) {
                int keep = (int)((p / l->w + p % l->w + l->zoff) % 2 == 0);
                l->mask[p] = (float)keep;
                l->mask[n + p] = (float)!keep;
            }
        }
        s = lss__flow_params(f, i);
    }
    if (s == LSS_OK) {
        sh[0] = 4;
        f->xf = lss_store_buffer(f->st, "flow.transform", 1, sh, LSS_INIT_ZERO, 0.0f);
        sh[0] = 1;
        f->init = lss_store_buffer(f->st, "flow.init", 1, sh, LSS_INIT_ZERO, 0.0f);
        if ((s = lss_store_status(f->st)) == LSS_OK) f->xf->data[3] = 1.0f;
    }
    if (s != LSS_OK) { lss_flow_free(f); return s; }
    *out = f;
    return LSS_OK;
}

LSSDEF int lss_flow_set_transform(lss_flow *f, int kind, double shift, double mean, double std) {
    if (!f) return lss_seterr(LSS_ERR_ARG, "lss_flow_set_transform: NULL flow");
    if ((kind != LSS_FLOW_AFFINE && kind != LSS_FLOW_LOG) || !(std > 0) || !isfinite(std) || !isfinite(mean) ||
        (kind == LSS_FLOW_LOG && !(shift > 0 && isfinite(shift))))
        return lss_seterr(LSS_ERR_ARG, "lss_flow_set_transform: bad transform (kind %d, shift %g, mean %g, std %g)", kind, shift, mean, std);
    f->xf->data[0] = (float)kind;
    f->xf->data[1] = (float)(kind == LSS_FLOW_LOG ? shift : 0);
    f->xf->data[2] = (float)mean;
    f->xf->data[3] = (float)std;
    return LSS_OK;
}
LSSDEF void lss_flow_get_transform(const lss_flow *f, int *kind, double *shift, double *mean, double *std) {
    if (kind) *kind = f ? (int)f->xf->data[0] : 0;
    if (shift) *shift = f ? f->xf->data[1] : 0;
    if (mean) *mean = f ? f->xf->data[2] : 0;
    if (std) *std = f ? f->xf->data[3] : 1;
}
LSSDEF int lss_flow_to_flow(const lss_flow *f, int n, const float *kappa, float *y, double *logjac) {
    int kind, i;
    double sh, mu, sd;
    int64_t D, p;
    if (!f || !kappa || !y || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_flow_to_flow: bad arguments");
    lss_flow_get_transform(f, &kind, &sh, &mu, &sd);
    D = lss_flow_dim(f);
    for (i = 0; i < n; i++) {
        double lj = -(double)D * log(sd);
        for (p = 0; p < D; p++) {
            double k = kappa[(int64_t)i * D + p], v;
            if (!isfinite(k)) return lss_seterr(LSS_ERR_NUMERIC, "lss_flow_to_flow: map %d pixel %lld is not finite", i, (long long)p);
            if (kind == LSS_FLOW_LOG) {
                if (!(k + sh > 0))
                    return lss_seterr(LSS_ERR_RANGE, "lss_flow_to_flow: map %d pixel %lld: kappa %g <= -shift %g (outside the "
                                      "lognormal transform's support)", i, (long long)p, k, -sh);
                v = log(k + sh);
                lj -= v;
            } else v = k;
            y[(int64_t)i * D + p] = (float)((v - mu) / sd);
        }
        if (logjac) logjac[i] = lj;
    }
    return LSS_OK;
}
LSSDEF void lss_flow_to_kappa(const lss_flow *f, int n, const float *y, float *kappa) {
    int kind;
    double sh, mu, sd;
    int64_t p, N;
    if (!f || !y || !kappa || n < 0) return;
    lss_flow_get_transform(f, &kind, &sh, &mu, &sd);
    N = (int64_t)n * lss_flow_dim(f);
    for (p = 0; p < N; p++) {
        double v = mu + sd * y[p];
        kappa[p] = (float)(kind == LSS_FLOW_LOG ? exp(v) - sh : v);
    }
}

/* Conditioning values as constant maps [N, ncond, h, w]. */
static lss_tensor *lss__flow_cmap(lss_graph *g, const lss_tensor *cond, int64_t N, int nc, int h, int w) {
    int64_t sh[4], n, k, p;
    lss_tensor *m;
    sh[0] = N; sh[1] = nc; sh[2] = h; sh[3] = w;
    if (!(m = lss_tensor_new(g, 4, sh))) return NULL;
    for (n = 0; n < N; n++)
        for (k = 0; k < nc; k++)
            for (p = 0; p < (int64_t)h * w; p++) m->data[(n * nc + k) * h * w + p] = cond->data[n * nc + k];
    return m;
}
/* Circular padding by one cell on each side of [N, C, H, W]. */
static lss_tensor *lss__flow_conv3(lss_graph *g, int periodic, lss_tensor *x, lss_tensor *w, lss_tensor *b) {
    return lss__conv_same(g, periodic, x, w, b, 1, 1);
}
/* The coupling's (s, t): s = g tanh(r) (masked for the checkerboard). xa: the conditioner's input. */
static int lss__flow_st(lss_graph *g, const lss__flayer *l, lss_tensor *xa, lss_tensor *cond, int nc, int periodic,
                        lss_tensor **s, lss_tensor **t) {
    int cb = l->kind == LSS__FL_CHECKER ? l->c : l->c - l->c / 2;
    lss_tensor *h = xa, *o;
    if (nc > 0) h = lss_op_concat(g, h, lss__flow_cmap(g, cond, xa->shape[0], nc, l->h, l->w), 1);
    h = lss_op_relu(g, lss__flow_conv3(g, periodic, h, l->p[0], l->p[1]));
    h = lss_op_relu(g, lss_op_conv2d(g, h, l->p[2], l->p[3], 1, 0));
    o = lss__flow_conv3(g, periodic, h, l->p[4], l->p[5]);
    *s = lss_op_mul(g, lss_op_tanh(g, lss_op_slice(g, o, 1, 0, cb)), l->p[6]);
    *t = lss_op_slice(g, o, 1, cb, cb);
    if (l->kind == LSS__FL_CHECKER) {
        int64_t sh[4];
        lss_tensor *mc;
        sh[0] = 1; sh[1] = 1; sh[2] = l->h; sh[3] = l->w;
        mc = lss_view(g, l->mask + (int64_t)l->h * l->w, 4, sh);
        *s = lss_op_mul(g, *s, mc);
        *t = lss_op_mul(g, *t, mc);
    }
    return *s && *t ? LSS_OK : lss_graph_status(g);
}
static lss_tensor *lss__flow_acc(lss_graph *g, lss_tensor *tot, lss_tensor *term) { return tot ? lss_op_add(g, tot, term) : term; }

/* Forward pass: returns sum_n ln p(x_n) as a 0-D tensor; lp [N] (may be NULL) per map; z [N D] (may be NULL). */
static lss_tensor *lss__flow_run(lss_graph *g, lss_flow *f, lss_tensor *x, lss_tensor *cond, double *lp, float *z, lss_tensor **zt,
                                 int allow_init) {
    int64_t N, D = lss_flow_dim(f), n, p;
    int i, nc = f->o.ncond, init = allow_init && lss_graph_training(g) && f->init->data[0] == 0;
    lss_tensor *tot = NULL, *s, *t;
    if (zt) *zt = NULL;
    if (!lss__enter(g, "lss_flow_nll", 1, x, NULL, NULL)) return NULL;
    if (x->ndim != 4 || x->shape[1] != 1 || x->shape[2] != f->o.h || x->shape[3] != f->o.w)
        return lss__shape_err(g, "lss_flow_nll (maps must be [N, 1, h, w] of the flow's size)", x, NULL);
    N = x->shape[0];
    if (nc > 0 && (!cond || cond->n != N * nc)) return lss__shape_err(g, "lss_flow_nll (cond must be [N, ncond])", x, cond);
    if (lp) for (n = 0; n < N; n++) lp[n] = -0.5 * (double)D * log(2 * 3.14159265358979323846);
    for (i = 0; i < f->nl && x; i++) {
        lss__flayer *l = &f->L[i];
        int64_t hw = (int64_t)l->h * l->w, per = x->n / N;
        switch (l->kind) {
        case LSS__FL_ACTNORM:
            if (init) { /* zero mean and unit variance per channel on this batch */
                int c;
                for (c = 0; c < l->c; c++) {
                    double m = 0, v = 0;
                    for (n = 0; n < N; n++)
                        for (p = 0; p < hw; p++) m += x->data[(n * l->c + c) * hw + p];
                    m /= (double)(N * hw);
                    for (n = 0; n < N; n++)
                        for (p = 0; p < hw; p++) { double d = x->data[(n * l->c + c) * hw + p] - m; v += d * d; }
                    v /= (double)(N * hw);
                    l->p[0]->data[c] = (float)-m;
                    l->p[1]->data[c] = (float)-log(sqrt(v) + 1e-6);
                }
            }
            x = lss_op_mul(g, lss_op_add(g, x, l->p[0]), lss_op_exp(g, l->p[1]));
            tot = lss__flow_acc(g, tot, lss_op_scale(g, lss_op_sum(g, l->p[1]), (float)(N * hw)));
            if (lp) {
                double sl = 0;
                int c;
                for (c = 0; c < l->c; c++) sl += l->p[1]->data[c];
                for (n = 0; n < N; n++) lp[n] += (double)hw * sl;
            }
            break;
        case LSS__FL_CONV1:
            x = lss_op_conv2d(g, x, l->p[0], NULL, 1, 0);
            if (!f->o.permute) {
                lss_tensor *ld = lss_op_logabsdet(g, l->p[0]);
                tot = lss__flow_acc(g, tot, lss_op_scale(g, ld, (float)(N * hw)));
                if (lp && ld) for (n = 0; n < N; n++) lp[n] += (double)hw * ld->data[0];
            }
            break;
        case LSS__FL_CHECKER: {
            int64_t sh[4];
            sh[0] = 1; sh[1] = 1; sh[2] = l->h; sh[3] = l->w;
            if (lss__flow_st(g, l, lss_op_mul(g, x, lss_view(g, l->mask, 4, sh)), cond, nc, f->o.periodic, &s, &t) != LSS_OK) return NULL;
            x = lss_op_add(g, lss_op_mul(g, x, lss_op_exp(g, s)), t);
            tot = lss__flow_acc(g, tot, lss_op_sum(g, s));
            if (lp) for (n = 0; n < N; n++) lp[n] += lss__dsum(s->data + n * (s->n / N), s->n / N);
            break;
        }
        case LSS__FL_CHANNEL: {
            int ca = l->c / 2, cb = l->c - ca;
            lss_tensor *xa = lss_op_slice(g, x, 1, 0, ca), *xb = lss_op_slice(g, x, 1, ca, cb);
            if (lss__flow_st(g, l, xa, cond, nc, f->o.periodic, &s, &t) != LSS_OK) return NULL;
            x = lss_op_concat(g, xa, lss_op_add(g, lss_op_mul(g, xb, lss_op_exp(g, s)), t), 1);
            tot = lss__flow_acc(g, tot, lss_op_sum(g, s));
            if (lp) for (n = 0; n < N; n++) lp[n] += lss__dsum(s->data + n * (s->n / N), s->n / N);
            break;
        }
        case LSS__FL_SQUEEZE: x = lss_op_squeeze2d(g, x, 0); break;
        case LSS__FL_SPLIT: {
            int ck = l->c / 2;
            lss_tensor *zz = lss_op_slice(g, x, 1, ck, l->c - ck);
            if (!zz) return NULL;
            tot = lss__flow_acc(g, tot, lss_op_scale(g, lss_op_sum(g, lss_op_mul(g, zz, zz)), -0.5f));
            per = zz->n / N;
            if (zt) {
                int64_t s2[2];
                s2[0] = N; s2[1] = per;
                *zt = *zt ? lss_op_concat(g, *zt, lss_op_reshape(g, zz, 2, s2), 1) : lss_op_reshape(g, zz, 2, s2);
            }
            for (n = 0; n < N; n++) {
                if (lp) lp[n] -= 0.5 * lss__dsumsq(zz->data + n * per, per);
                if (z) memcpy(z + n * D + l->zoff, zz->data + n * per, sizeof(float) * (size_t)per);
            }
            x = lss_op_slice(g, x, 1, 0, ck);
            break;
        }
        default: break;
        }
    }
    if (!x) return NULL;
    {
        int64_t per = x->n / N;
        tot = lss__flow_acc(g, tot, lss_op_scale(g, lss_op_sum(g, lss_op_mul(g, x, x)), -0.5f));
        if (zt) {
            int64_t s2[2];
            s2[0] = N; s2[1] = per;
            *zt = *zt ? lss_op_concat(g, *zt, lss_op_reshape(g, x, 2, s2), 1) : lss_op_reshape(g, x, 2, s2);
        }
        for (n = 0; n < N; n++) {
            if (lp) lp[n] -= 0.5 * lss__dsumsq(x->data + n * per, per);
            if (z) memcpy(z + n * D + f->zlast, x->data + n * per, sizeof(float) * (size_t)per);
        }
    }
    tot = lss_op_add_scalar(g, tot, (float)(-0.5 * (double)(N * D) * log(2 * 3.14159265358979323846)));
    if (tot && init) f->init->data[0] = 1.0f;
    return tot;
}

LSSDEF lss_tensor *lss_flow_nll(lss_graph *g, lss_flow *f, lss_tensor *x, lss_tensor *cond, double *logp) {
    lss_tensor *tot;
    if (!f) return lss__fail(g, LSS_ERR_ARG, "%s: NULL flow%s", "lss_flow_nll", NULL);
    tot = lss__flow_run(g, f, x, cond, logp, NULL, NULL, 1);
    return tot ? lss_op_scale(g, tot, (float)(-1.0 / ((double)x->shape[0] * (double)lss_flow_dim(f)))) : NULL;
}

LSSDEF lss_tensor *lss_flow_encode(lss_graph *g, lss_flow *f, lss_tensor *x, lss_tensor *cond) {
    lss_tensor *z = NULL;
    if (!f) return lss__fail(g, LSS_ERR_ARG, "%s: NULL flow%s", "lss_flow_encode", NULL);
    return lss__flow_run(g, f, x, cond, NULL, NULL, &z, 0) ? z : NULL;
}

#define LSS__FLOW_CHUNK 64
LSSDEF int lss_flow_forward(lss_flow *f, int n, const float *y, const float *cond, float *z, double *logp) {
    int i0, s = LSS_OK;
    int64_t D;
    if (!f || !y || n < 0 || (f->o.ncond > 0 && !cond)) return lss_seterr(LSS_ERR_ARG, "lss_flow_forward: bad arguments");
    D = lss_flow_dim(f);
    for (i0 = 0; i0 < n && s == LSS_OK; i0 += LSS__FLOW_CHUNK) {
        int m = n - i0 < LSS__FLOW_CHUNK ? n - i0 : LSS__FLOW_CHUNK;
        int64_t sh[4], sc[2];
        lss_tensor *x, *c = NULL;
        lss_graph_reset(f->g);
        sh[0] = m; sh[1] = 1; sh[2] = f->o.h; sh[3] = f->o.w;
        sc[0] = m; sc[1] = f->o.ncond;
        x = lss_view(f->g, (float *)(y + (int64_t)i0 * D), 4, sh);
        if (f->o.ncond > 0) c = lss_view(f->g, (float *)(cond + (int64_t)i0 * f->o.ncond), 2, sc);
        if (!lss__flow_run(f->g, f, x, c, logp ? logp + i0 : NULL, z ? z + (int64_t)i0 * D : NULL, NULL, 0)) s = lss_graph_status(f->g);
    }
    lss_graph_reset(f->g);
    return s;
}

LSSDEF int lss_flow_inverse(lss_flow *f, int n, const float *z, const float *cond, float *y) {
    int i0, s = LSS_OK;
    int64_t D;
    if (!f || !z || !y || n < 0 || (f->o.ncond > 0 && !cond)) return lss_seterr(LSS_ERR_ARG, "lss_flow_inverse: bad arguments");
    D = lss_flow_dim(f);
    for (i0 = 0; i0 < n && s == LSS_OK; i0 += LSS__FLOW_CHUNK) {
        int m = n - i0 < LSS__FLOW_CHUNK ? n - i0 : LSS__FLOW_CHUNK, i, nc = f->o.ncond;
        lss_graph *g = f->g;
        int64_t sh[4], sc[2], j, k;
        lss_tensor *x, *c = NULL, *sv, *t;
        const lss__flayer *last = &f->L[f->nl - 1];
        lss_graph_reset(g);
        sc[0] = m; sc[1] = nc;
        if (nc > 0) c = lss_view(g, (float *)(cond + (int64_t)i0 * nc), 2, sc);
        /* the last level's output */
        sh[0] = m; sh[1] = last->kind == LSS__FL_SQUEEZE ? 4 * last->c : last->c;
        sh[2] = last->kind == LSS__FL_SQUEEZE ? last->h / 2 : last->h; sh[3] = last->kind == LSS__FL_SQUEEZE ? last->w / 2 : last->w;
        if (!(x = lss_tensor_new(g, 4, sh))) { s = lss_graph_status(g); break; }
        for (j = 0; j < m; j++) memcpy(x->data + j * (x->n / m), z + (i0 + j) * D + f->zlast, sizeof(float) * (size_t)(x->n / m));
        for (i = f->nl - 1; i >= 0 && x; i--) {
            const lss__flayer *l = &f->L[i];
            switch (l->kind) {
            case LSS__FL_ACTNORM:
                x = lss_op_sub(g, lss_op_mul(g, x, lss_op_exp(g, lss_op_scale(g, l->p[1], -1.0f))), l->p[0]);
                break;
            case LSS__FL_CONV1: {
                int64_t sw[4];
                lss_tensor *wi;
                double *a, *inv, ld;
                int *piv, ok;
                sw[0] = l->c; sw[1] = l->c; sw[2] = 1; sw[3] = 1;
                a = (double *)LSS_MALLOC(sizeof(double) * 2 * (size_t)l->c * l->c);
                piv = (int *)LSS_MALLOC(sizeof(int) * (size_t)l->c);
                if (!a || !piv) { LSS_FREE(a); LSS_FREE(piv); s = lss_seterr(LSS_ERR_NOMEM, "lss_flow_inverse: out of memory"); x = NULL; break; }
                inv = a + (size_t)l->c * l->c;
                for (k = 0; k < (int64_t)l->c * l->c; k++) a[k] = l->p[0]->data[k];
                ok = lss__lu_logdet(a, l->c, piv, &ld, inv);
                wi = ok ? lss_tensor_new(g, 4, sw) : NULL;
                if (wi) for (k = 0; k < (int64_t)l->c * l->c; k++) wi->data[k] = (float)inv[k];
                LSS_FREE(a); LSS_FREE(piv);
                if (!ok) { s = lss_seterr(LSS_ERR_NUMERIC, "lss_flow_inverse: a 1x1 convolution is singular"); x = NULL; break; }
                x = lss_op_conv2d(g, x, wi, NULL, 1, 0);
                break;
            }
            case LSS__FL_CHECKER: {
                int64_t mh[4];
                mh[0] = 1; mh[1] = 1; mh[2] = l->h; mh[3] = l->w;
                if (lss__flow_st(g, l, lss_op_mul(g, x, lss_view(g, l->mask, 4, mh)), c, nc, f->o.periodic, &sv, &t) != LSS_OK) { x = NULL; break; }
                x = lss_op_mul(g, lss_op_sub(g, x, t), lss_op_exp(g, lss_op_scale(g, sv, -1.0f)));
                break;
            }
            case LSS__FL_CHANNEL: {
                int ca = l->c / 2, cb = l->c - ca;
                lss_tensor *xa = lss_op_slice(g, x, 1, 0, ca), *xb = lss_op_slice(g, x, 1, ca, cb);
                if (lss__flow_st(g, l, xa, c, nc, f->o.periodic, &sv, &t) != LSS_OK) { x = NULL; break; }
                x = lss_op_concat(g, xa, lss_op_mul(g, lss_op_sub(g, xb, t), lss_op_exp(g, lss_op_scale(g, sv, -1.0f))), 1);
                break;
            }
            case LSS__FL_SQUEEZE: x = lss_op_squeeze2d(g, x, 1); break;
            case LSS__FL_SPLIT: {
                int64_t zs[4], per;
                lss_tensor *zz;
                zs[0] = m; zs[1] = l->c - l->c / 2; zs[2] = l->h; zs[3] = l->w;
                if (!(zz = lss_tensor_new(g, 4, zs))) { x = NULL; break; }
                per = zz->n / m;
                for (j = 0; j < m; j++) memcpy(zz->data + j * per, z + (i0 + j) * D + l->zoff, sizeof(float) * (size_t)per);
                x = lss_op_concat(g, x, zz, 1);
                break;
            }
            default: break;
            }
        }
        if (!x) { if (s == LSS_OK) s = lss_graph_status(g); break; }
        memcpy(y + (int64_t)i0 * D, x->data, sizeof(float) * (size_t)(m * D));
    }
    lss_graph_reset(f->g);
    return s;
}

LSSDEF int lss_flow_logp(lss_flow *f, int n, const float *kappa, const float *cond, double *logp) {
    float *y;
    double *lj;
    int s, i;
    if (!f || !kappa || !logp || n < 0) return lss_seterr(LSS_ERR_ARG, "lss_flow_logp: bad arguments");
    y = (float *)LSS_MALLOC(sizeof(float) * (size_t)((int64_t)n * lss_flow_dim(f) + 1));
    lj = (double *)LSS_MALLOC(sizeof(double) * (size_t)(n + 1));
    if (!y || !lj) { LSS_FREE(y); LSS_FREE(lj); return lss_seterr(LSS_ERR_NOMEM, "lss_flow_logp: out of memory"); }
    s = lss_flow_to_flow(f, n, kappa, y, lj);
    if (s == LSS_OK) s = lss_flow_forward(f, n, y, cond, NULL, logp);
    if (s == LSS_OK) for (i = 0; i < n; i++) logp[i] += lj[i];
    LSS_FREE(y); LSS_FREE(lj);
    return s;
}

LSSDEF int lss_flow_sample(lss_flow *f, int n, const float *cond, double temperature, uint64_t seed, uint64_t index0,
                           float *kappa) {
    float *z;
    int64_t D, p;
    int i, s;
    if (!f || !kappa || n < 0 || !(temperature >= 0) || !isfinite(temperature))
        return lss_seterr(LSS_ERR_ARG, "lss_flow_sample: bad arguments (temperature %g)", temperature);
    D = lss_flow_dim(f);
    z = (float *)LSS_MALLOC(sizeof(float) * (size_t)((int64_t)n * D + 1));
    if (!z) return lss_seterr(LSS_ERR_NOMEM, "lss_flow_sample: out of memory");
    for (i = 0; i < n; i++) {
        lss_rng r;
        lss_rng_init(&r, seed, lss_stream(LSS_STREAM_FLOW, index0 + (uint64_t)i, 0));
        for (p = 0; p < D; p++) z[(int64_t)i * D + p] = (float)(temperature * lss_rng_normal(&r));
    }
    s = lss_flow_inverse(f, n, z, cond, kappa);
    if (s == LSS_OK) {
        lss_flow_to_kappa(f, n, kappa, kappa);
        for (p = 0; p < (int64_t)n * D; p++)
            if (!isfinite(kappa[p])) { s = lss_seterr(LSS_ERR_NUMERIC, "lss_flow_sample: map %lld is not finite", (long long)(p / D)); break; }
    }
    LSS_FREE(z);
    return s;
}

#endif /* LSS_NN_IMPLEMENTATION_DONE */
#endif /* LSS_NN_IMPLEMENTATION */

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
