/* fuzz_common.h - what the lss fuzz harnesses share (tests/fuzz/fuzz_*.c).
 *
 * Each harness defines LLVMFuzzerTestOneInput for one reader of the project. Built two ways:
 *   - with libFuzzer (make fuzz: clang -fsanitize=fuzzer,address,undefined), which mutates inputs;
 *   - without it (tests/test_fuzz_corpus.c, gcc, part of make test), which feeds every file of
 *     tests/fuzz/corpus/<name>/ and tests/fuzz/regress/<name>/ to the same entry point.
 * A harness must never crash, leak, hang or trip a sanitizer on any input: the readers return a
 * status. Readers that take a path get the bytes through a private temporary file (fuzz_path). */
#ifndef LSS_FUZZ_COMMON_H
#define LSS_FUZZ_COMMON_H
#if !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#define LSS_IMPLEMENTATION
#include "lss_massmap.h"
#include "lss_infer.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A private scratch directory of this process (under $TMPDIR or /tmp), made once. */
static inline const char *fuzz_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/lss_fuzz.%ld", t && *t ? t : "/tmp", (long)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

/* The path of scratch file `name` (static buffer: one per name slot k, 0..7). */
static inline const char *fuzz_file(int k, const char *name) {
    static char buf[8][600];
    snprintf(buf[k & 7], sizeof buf[0], "%s/%s", fuzz_dir(), name);
    return buf[k & 7];
}

/* Writes data to scratch file `name` and returns its path (NULL when it cannot be written). */
static inline const char *fuzz_write(int k, const char *name, const uint8_t *data, size_t n) {
    const char *p = fuzz_file(k, name);
    FILE *f = fopen(p, "wb");
    if (!f) return NULL;
    if (n && fwrite(data, 1, n, f) != n) { fclose(f); return NULL; }
    if (fclose(f) != 0) return NULL;
    return p;
}

/* Writes a checkpoint-like file whose last 4 bytes are replaced by the CRC32 of the rest, so that mutated
 * inputs reach the parser behind the checksum (files under 4 bytes are written as they are). */
static inline const char *fuzz_write_crc(int k, const char *name, const uint8_t *data, size_t n) {
    const char *p = fuzz_file(k, name);
    FILE *f = fopen(p, "wb");
    if (!f) return NULL;
    if (n >= 4) {
        uint32_t c = lss_crc32(0, data, n - 4);
        unsigned char b[4];
        b[0] = (unsigned char)c; b[1] = (unsigned char)(c >> 8); b[2] = (unsigned char)(c >> 16); b[3] = (unsigned char)(c >> 24);
        if (fwrite(data, 1, n - 4, f) != n - 4 || fwrite(b, 1, 4, f) != 4) { fclose(f); return NULL; }
    } else if (n && fwrite(data, 1, n, f) != n) { fclose(f); return NULL; }
    if (fclose(f) != 0) return NULL;
    return p;
}

/* Splits data at each occurrence of sep into at most maxparts parts (pointers into data). */
static inline int fuzz_split(const uint8_t *data, size_t n, const char *sep, int maxparts, const uint8_t **part, size_t *len) {
    size_t sl = strlen(sep), i = 0, start = 0;
    int k = 0;
    while (k < maxparts - 1 && i + sl <= n) {
        if (!memcmp(data + i, sep, sl)) {
            part[k] = data + start;
            len[k++] = i - start;
            i += sl;
            start = i;
        } else i++;
    }
    part[k] = data + start;
    len[k++] = n - start;
    return k;
}

/* The message must be printable: the library escapes bytes it echoes. Returns 1 when it is. */
static inline int fuzz_msg_printable(void) {
    const unsigned char *m = (const unsigned char *)lss_last_error();
    for (; *m; m++)
        if (*m < 0x20 || *m == 0x7f) return 0;
    return 1;
}
#define FUZZ_CHECK_MSG()                                                                           \
    do {                                                                                           \
        if (!fuzz_msg_printable()) {                                                               \
            fprintf(stderr, "fuzz: message with a control byte: %s\n", lss_last_error());         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#endif
