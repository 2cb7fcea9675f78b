/* fuzz_csv.c - CSV tables: lss_csv_read and lss_csv_col. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lss_csv c;
    const char *p = fuzz_write(0, "in.csv", data, size);
    if (!p) return 0;
    if (lss_csv_read(p, &c) == LSS_OK) {
        int k;
        int64_t i;
        double s = 0;
        for (k = 0; k < c.ncols; k++)
            if (lss_csv_col(&c, c.names[k]) < 0) abort();
        for (i = 0; i < c.nrows * c.ncols; i++) s += c.data[i];
        (void)s;
        (void)lss_csv_col(&c, "x");
        lss_csv_free(&c);
    } else FUZZ_CHECK_MSG();
    return 0;
}
