/* fuzz_fits.c - FITS files (cfitsio): lss_mm_fits_read_image, lss_mm_fits_read_table and lss_mm_shear_load of the file
 * named .fits. The first byte chooses: bits 0-1 the HDU (0: the first that fits, 1 primary, 2, 3), bit 2 the shear field
 * (0 or 1). Whatever is accepted must be what the readers promise: finite maps with sides 2..65536, a positive or NaN
 * pixel size, catalogues passing the checks of lss_mm_catalogue_load, shear within LSS_MM_SHEAR_MAP_MAX. */
#include "tests/fuzz/fuzz_common.h"

#ifndef FUZZ_REPLAY
/* cfitsio itself asks calloc for absurd sizes on some malformed headers (a misread TFIELDS: 2e16 bytes) and reports
 * MEMORY_ALLOCATION when it gets NULL; let AddressSanitizer return NULL there, as the C library does, instead of
 * stopping the run. The readers' own allocations are bounded by the file size before they are made. Not in the
 * corpus replay (tests/test_fuzz_corpus.c), whose binary holds every harness. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p;
    float *m = NULL;
    int h = 0, w = 0, k = 0, hdu;
    double pix = 0;
    lss_mm_catalogue cat;
    if (size < 1) return 0;
    hdu = data[0] & 3;
    p = fuzz_write(0, "in.fits", data + 1, size - 1);
    if (!p) return 0;
    if (lss_mm_fits_read_image(p, hdu, &m, &h, &w, &k, &pix) == LSS_OK) {
        int64_t i, n = (int64_t)h * w * k;
        if (!m || h < 2 || w < 2 || h > 65536 || w > 65536 || k < 1 || k > 65536 || !(isnan(pix) || pix > 0)) {
            fprintf(stderr, "fuzz_fits: image %d x %d x %d, pixel %g accepted\n", k, h, w, pix);
            abort();
        }
        for (i = 0; i < n; i++)
            if (!isfinite(m[i])) {
                fprintf(stderr, "fuzz_fits: non-finite pixel %lld accepted\n", (long long)i);
                abort();
            }
        LSS_FREE(m);
    } else {
        FUZZ_CHECK_MSG();
        if (m) abort();
    }
    if (lss_mm_fits_read_table(p, hdu, &cat) == LSS_OK) {
        int64_t i;
        if (cat.n < 1) abort();
        for (i = 0; i < cat.n; i++)
            if (!isfinite(cat.x[i]) || !isfinite(cat.y[i]) || (cat.radec && (fabs(cat.x[i]) > 360 || fabs(cat.y[i]) > 90)) ||
                !(fabs(cat.e1[i]) <= LSS_MM_SHEAR_MAX) || !(fabs(cat.e2[i]) <= LSS_MM_SHEAR_MAX) || !(cat.w[i] >= 0 && cat.w[i] <= LSS_MM_WEIGHT_MAX)) {
                fprintf(stderr, "fuzz_fits: galaxy %lld accepted with a value out of range\n", (long long)i);
                abort();
            }
        lss_mm_catalogue_free(&cat);
    } else {
        FUZZ_CHECK_MSG();
        if (cat.x || cat.n) abort();
    }
    m = NULL;
    if (lss_mm_shear_load(p, (data[0] >> 2) & 1, &m, &h, &w) == LSS_OK) {
        int64_t i, n = 2 * (int64_t)h * w;
        for (i = 0; i < n; i++)
            if (!(fabsf(m[i]) <= (float)LSS_MM_SHEAR_MAP_MAX)) abort();
        LSS_FREE(m);
    } else FUZZ_CHECK_MSG();
    return 0;
}
