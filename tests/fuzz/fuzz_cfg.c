/* fuzz_cfg.c - driver configuration files: deeplss.cfg (lss_deeplss_cfg_load); a configuration that loads
 * must pass lss_deeplss_cfg_check and save and load back to the same struct. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_deeplss_cfg c, d;
    const char *p = fuzz_write(0, "deeplss.cfg", data, size), *q;
    if (!p) return 0;
    if (lss_deeplss_cfg_load(&c, p) != LSS_OK) {
        FUZZ_CHECK_MSG();
        return 0;
    }
    if (lss_deeplss_cfg_check(&c) != LSS_OK) abort();
    q = fuzz_file(1, "again.cfg");
    if (lss_deeplss_cfg_save(&c, q) != LSS_OK || lss_deeplss_cfg_load(&d, q) != LSS_OK || memcmp(&c, &d, sizeof c) != 0) {
        fprintf(stderr, "fuzz_cfg: the configuration does not save and load back: %s\n", lss_last_error());
        abort();
    }
    return 0;
}
