/* fuzz_npy.c - NPY reader: lss_npy_load_mem on the bytes, then the file path (lss_npy_load_f32) and the shear-map
 * reader of lss_massmap.h on it (lss_mm_shear_load, fields 0 and 1). */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_array a;
    float *d = NULL;
    int nd = 0;
    int64_t sh[LSS_MAX_DIM];
    const char *p;
    if (lss_npy_load_mem(data, size, &a) == LSS_OK) {
        int64_t n = lss_array_count(&a), i;
        double s = 0;
        for (i = 0; i < n && i < 4096; i++) { /* touch the data as a reader would */
            switch (a.dtype) {
            case LSS_F32: s += ((const float *)a.data)[i]; break;
            case LSS_F64: s += ((const double *)a.data)[i]; break;
            case LSS_I32: s += ((const int32_t *)a.data)[i]; break;
            default: s += (double)((const int64_t *)a.data)[i]; break;
            }
        }
        (void)s;
        lss_array_free(&a);
    } else FUZZ_CHECK_MSG();
    if (!(p = fuzz_write(0, "in.npy", data, size))) return 0;
    if (lss_npy_load_f32(p, &d, &nd, sh) == LSS_OK) LSS_FREE(d);
    else FUZZ_CHECK_MSG();
    for (nd = 0; nd < 2; nd++) {
        int h = 0, w = 0;
        if (lss_mm_shear_load(p, nd, &d, &h, &w) == LSS_OK) {
            int64_t i;
            for (i = 0; i < 2 * (int64_t)h * w; i++)
                if (!(fabsf(d[i]) <= (float)LSS_MM_SHEAR_MAP_MAX)) abort();
            LSS_FREE(d);
        } else FUZZ_CHECK_MSG();
    }
    return 0;
}
