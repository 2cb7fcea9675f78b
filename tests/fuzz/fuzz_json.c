/* fuzz_json.c - the flat JSON records (run.json, shell metadata): lss_json_parse and the member getters. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_json *j = NULL;
    double v;
    const double *a;
    const char *s;
    int n;
    if (lss_json_parse((const char *)data, size, &j) != LSS_OK) {
        FUZZ_CHECK_MSG();
        return 0;
    }
    (void)lss_json_num(j, "seed", &v);
    (void)lss_json_str(j, "program", &s);
    if (lss_json_array(j, "a", &a, &n) == LSS_OK && n > 0) v = a[n - 1];
    (void)lss_json_has(j, "");
    (void)v;
    lss_json_free(j);
    return 0;
}
