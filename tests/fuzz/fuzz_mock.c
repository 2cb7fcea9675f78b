/* fuzz_mock.c - mass-mapping mock directories (lss_mm_mock_load): the input is split at "\n@@\n" into
 * grid.csv, ps.csv, kappa.npy, shear.npy, noise_var.npy, mask.npy and count.npy (missing parts: no file). */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[7] = {"grid.csv", "ps.csv", "kappa.npy", "shear.npy", "noise_var.npy", "mask.npy", "count.npy"};
    const uint8_t *part[7];
    size_t len[7];
    char dir[600];
    int n = fuzz_split(data, size, "\n@@\n", 7, part, len), k;
    lss_mm_mock *m = NULL;
    snprintf(dir, sizeof dir, "%s/mock", fuzz_dir());
    mkdir(dir, 0700);
    for (k = 0; k < 7; k++) {
        char nm[64];
        snprintf(nm, sizeof nm, "mock/%s", names[k]);
        if (k < n) fuzz_write(k, nm, part[k], len[k]);
        else remove(fuzz_file(k, nm));
    }
    if (lss_mm_mock_load(dir, &m) == LSS_OK) {
        int64_t i, np = (int64_t)m->h * m->w;
        double s = 0;
        if (m->h < 2 || m->w < 2 || m->nfields < 1 || !(m->pix_arcmin > 0)) abort();
        for (i = 0; i < np; i++) s += m->nvar[i] + m->mask[i] + m->count[i];
        for (i = 0; i < 2 * np * m->nfields; i++) s += m->shear[i];
        (void)s;
        lss_mm_mock_free(m);
    } else FUZZ_CHECK_MSG();
    return 0;
}
