/* fuzz_nz.c - n(z) tables: lss_nz_load, then what a reader does with a table (mean, interpolation, the
 * per-bin amplitudes of eqs. 8-9). */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_nz *b = NULL;
    int nb = 0, k;
    lss_params par;
    const char *p = fuzz_write(0, "nz.txt", data, size);
    if (!p) return 0;
    if (lss_nz_load(p, &b, &nb) != LSS_OK) {
        FUZZ_CHECK_MSG();
        return 0;
    }
    lss_params_fiducial(&par);
    for (k = 0; k < nb; k++) {
        double v = lss_nz_eval(&b[k], b[k].zmean) + lss_nz_eval(&b[k], -1.0) + lss_nz_eval(&b[k], 1e9);
        v += lss_params_a_ia_bin(&par, &b[k]) + lss_params_b_bin(&par, &b[k]);
        if (!(b[k].zmean >= 0) || !isfinite(v)) {
            fprintf(stderr, "fuzz_nz: bin %d: mean %g, values %g\n", k, b[k].zmean, v);
            abort();
        }
    }
    lss_nz_free(b, nb);
    return 0;
}
