/* fuzz_catalogue.c - shear catalogues: lss_mm_catalogue_load (CSV, or NPY [n, 4|5]), then binning with
 * lss_mm_bin (the size query, and the maps when the grid is small). The first byte chooses: bit 0 NPY, bit 1
 * ra/dec NPY columns, bit 2 a fixed 16 x 16 grid, bit 3 --flip-ra, bit 4 e2 sign -1. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_mm_catalogue cat;
    lss_mm_bin_opts o;
    const char *p;
    int h = 0, w = 0;
    unsigned sel;
    if (size < 1) return 0;
    sel = data[0];
    p = fuzz_write(0, sel & 1 ? "cat.npy" : "cat.csv", data + 1, size - 1);
    if (!p) return 0;
    if (lss_mm_catalogue_load(p, (sel >> 1) & 1, &cat) != LSS_OK) {
        FUZZ_CHECK_MSG();
        return 0;
    }
    memset(&o, 0, sizeof o);
    if (sel & 4) o.h = o.w = 16;
    o.flip_ra = (sel >> 3) & 1;
    o.e2_sign = sel & 16 ? -1 : 1;
    if (lss_mm_bin(&cat, &o, &h, &w, NULL, NULL, NULL, NULL, NULL, NULL) == LSS_OK) {
        if (h < 2 || w < 2) abort();
        if ((int64_t)h * w <= 65536) {
            int64_t n = (int64_t)h * w, drop = 0;
            float *m = (float *)malloc(sizeof(float) * (size_t)(4 * n));
            double se = 0;
            if (m) {
                if (lss_mm_bin(&cat, &o, &h, &w, m, m + n, m + 2 * n, m + 3 * n, &drop, &se) == LSS_OK) {
                    int64_t i;
                    for (i = 0; i < 3 * n; i++)
                        if (!isfinite(m[i])) {
                            fprintf(stderr, "fuzz_catalogue: non-finite binned value at %lld\n", (long long)i);
                            abort();
                        }
                } else FUZZ_CHECK_MSG();
                free(m);
            }
        }
    } else FUZZ_CHECK_MSG();
    lss_mm_catalogue_free(&cat);
    return 0;
}
