/* fuzz_report.c - the tables a DeepLSS run reads back for its report (lss_deeplss_numbers_read): the input is
 * split at "\n@@\n" into mcmc_fid.csv, loss.csv, calibration.csv and mdn_check.csv (missing parts: no file);
 * 4 fiducial and 3 calibration mocks. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const files[4] = {"mcmc_fid.csv", "loss.csv", "calibration.csv", "mdn_check.csv"};
    static const char *const names[LSS_DEEPLSS_NPARAM] = {"Om", "s8", "AIA", "eIA", "bg", "ebg", "rg"};
    const uint8_t *part[4];
    size_t len[4];
    char dir[600];
    lss_deeplss_numbers r;
    int n = fuzz_split(data, size, "\n@@\n", 4, part, len), k;
    snprintf(dir, sizeof dir, "%s/report", fuzz_dir());
    mkdir(dir, 0700);
    for (k = 0; k < 4; k++) {
        char nm[64];
        snprintf(nm, sizeof nm, "report/%s", files[k]);
        if (k < n) fuzz_write(k, nm, part[k], len[k]);
        else remove(fuzz_file(k, nm));
    }
    if (lss_deeplss_numbers_read(dir, 4, 3, names, &r) != LSS_OK) FUZZ_CHECK_MSG();
    return 0;
}
