/* fuzz_ckpt.c - lss_nn.h checkpoints: lss_ckpt_load into a small store with an Adam optimizer (percentile
 * clipping, so that every "optim.*" tensor is read), with and without the optimizer. The harness writes the
 * input with its CRC32 recomputed (fuzz_write_crc): mutations reach the parser behind the checksum. */
#include "tests/fuzz/fuzz_common.h"

static lss_store *fz_st;
static lss_optim *fz_opt;

/* The model of the seeds (tests/fuzz/mkseeds.c makes the same one). */
int fuzz_ckpt_model(lss_store **st, lss_optim **o) {
    int64_t s1[2] = {3, 4}, s2[1] = {4}, s3[4] = {2, 1, 3, 3};
    lss_optim_opts oo;
    if (lss_store_create(7, st) != LSS_OK) return -1;
    lss_store_add(*st, "w", 2, s1, LSS_INIT_NORMAL);
    lss_store_add(*st, "b", 1, s2, LSS_INIT_ZERO);
    lss_store_add(*st, "conv", 4, s3, LSS_INIT_NORMAL);
    lss_store_buffer(*st, "stat", 1, s2, LSS_INIT_ZERO, 1.0f);
    if (lss_store_status(*st) != LSS_OK) return -1;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM;
    oo.lr = 1e-3;
    oo.clip = LSS_CLIP_PERCENTILE;
    oo.clip_history = 16;
    return lss_optim_create(*st, &oo, o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_write_crc(0, "nn.ckpt", data, size);
    if (!p) return 0;
    if (!fz_st && fuzz_ckpt_model(&fz_st, &fz_opt) != LSS_OK) abort();
    if (lss_ckpt_load(p, fz_st, fz_opt) != LSS_OK) FUZZ_CHECK_MSG();
    if (lss_ckpt_load(p, fz_st, NULL) != LSS_OK) FUZZ_CHECK_MSG();
    return 0;
}
