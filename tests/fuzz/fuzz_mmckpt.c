/* fuzz_mmckpt.c - mass-mapping network checkpoints: lss_mm_net_probe (the architecture in "massmap.meta"),
 * then, for an 8 x 8 network of width <= 4, the whole load (lss_mm_net_open). The CRC32 is recomputed
 * (fuzz_write_crc) so that mutations reach the parser. */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lss_grid *g = NULL;
    static double pk[64];
    int c0 = 0, dm = 0, h = 0, w = 0, i;
    lss_mm_net *net = NULL;
    const char *p = fuzz_write_crc(0, "net.ckpt", data, size);
    if (!p) return 0;
    if (!g) {
        if (lss_grid_create(8, 8, 1.0, &g) != LSS_OK) abort();
        for (i = 0; i < 64; i++) pk[i] = i ? 1e-4 : 0.0;
    }
    if (lss_mm_net_probe(p, &c0, &dm, &h, &w) != LSS_OK) {
        FUZZ_CHECK_MSG();
        return 0;
    }
    if (h == 8 && w == 8 && c0 >= 1 && c0 <= 4) {
        if (lss_mm_net_open(p, g, pk, dm, &net) == LSS_OK) lss_mm_net_free(net);
        else FUZZ_CHECK_MSG();
    }
    return 0;
}
