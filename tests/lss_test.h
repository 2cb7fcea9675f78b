/* lss_test.h - the tiny check kit of the lss tests (no framework).
 * Every check counts as passed or failed; a failed check prints what it compared.
 * A test program ends with LSS_TEST_END(), which prints "N passed, N failed[, N skipped]". */
#ifndef LSS_TEST_H
#define LSS_TEST_H
#include <math.h>
#include <stdio.h>
#include <string.h>

static int lss_t_pass = 0, lss_t_fail = 0, lss_t_skip = 0;

#define LSS_T_FAILHDR() (lss_t_fail++, printf("FAIL %s:%d: ", __FILE__, __LINE__))

/* CHECK(cond, "format", ...): a boolean check with a message printed on failure. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) lss_t_pass++;                                                                    \
        else { LSS_T_FAILHDR(); printf(__VA_ARGS__); printf("\n"); fflush(stdout); }               \
    } while (0)

/* |val - ref| <= atol + rtol |ref| (NaN fails). */
#define CHECK_CLOSE(val, ref, rtol, atol, what)                                                    \
    do {                                                                                           \
        double lss_t_v = (double)(val), lss_t_r = (double)(ref);                                   \
        double lss_t_tol = (double)(atol) + (double)(rtol) * fabs(lss_t_r);                        \
        if (fabs(lss_t_v - lss_t_r) <= lss_t_tol) lss_t_pass++;                                    \
        else {                                                                                     \
            LSS_T_FAILHDR();                                                                       \
            printf("%s: value %.10g, reference %.10g, |diff| %.3g > tolerance %.3g (rtol %.3g, "   \
                   "atol %.3g)\n", what, lss_t_v, lss_t_r, fabs(lss_t_v - lss_t_r), lss_t_tol,     \
                   (double)(rtol), (double)(atol));                                                \
            fflush(stdout);                                                                        \
        }                                                                                          \
    } while (0)
#define CHECK_REL(val, ref, rtol, what) CHECK_CLOSE(val, ref, rtol, 0.0, what)

/* A call that must return LSS_OK (0). */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        int lss_t_s = (expr);                                                                      \
        if (lss_t_s == 0) lss_t_pass++;                                                            \
        else { LSS_T_FAILHDR(); printf("%s returned %d: %s\n", #expr, lss_t_s, lss_last_error()); fflush(stdout); } \
    } while (0)

/* A call that must fail with status `code` and set a non-empty message. */
#define CHECK_ERR(expr, code)                                                                      \
    do {                                                                                           \
        int lss_t_s;                                                                               \
        lss_clearerr();                                                                            \
        lss_t_s = (expr);                                                                          \
        if (lss_t_s == (code) && lss_last_error()[0]) lss_t_pass++;                                \
        else { LSS_T_FAILHDR(); printf("%s returned %d (want %d), message '%s'\n", #expr, lss_t_s, (int)(code), lss_last_error()); fflush(stdout); } \
    } while (0)

#define SKIP(...) do { lss_t_skip++; printf("skipped: "); printf(__VA_ARGS__); printf("\n"); } while (0)

#define RUN(fn) do { printf("# %s\n", #fn); fflush(stdout); fn(); } while (0)

#define LSS_TEST_END()                                                                             \
    do {                                                                                           \
        if (lss_t_skip) printf("%d passed, %d failed, %d skipped\n", lss_t_pass, lss_t_fail, lss_t_skip); \
        else printf("%d passed, %d failed\n", lss_t_pass, lss_t_fail);                             \
        return lss_t_fail ? 1 : 0;                                                                 \
    } while (0)
#endif
