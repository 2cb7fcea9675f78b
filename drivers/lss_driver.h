/* lss_driver.h - what the lss driver programs share: error exits, strict number parsing, lists,
 * output directories, run.json, and progress on stderr. Drivers only; the libraries never exit
 * or print. Include after lss_core.h. */
#ifndef LSS_DRIVER_H
#define LSS_DRIVER_H
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *lss_drv_prog = "lss";

/* One line on stderr ("prog: error: ...") and exit with `code` (2 for bad input, 1 otherwise). */
static inline void lss_drv_die(int code, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: error: ", lss_drv_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

/* Exits with the library's last error when status is not LSS_OK. Input errors (format, range,
 * argument, shape, I/O on a named file) exit 2, others 1. */
static inline void lss_drv_check(int status, const char *what) {
    if (status == LSS_OK) return;
    lss_drv_die(status == LSS_ERR_NOMEM || status == LSS_ERR_NUMERIC || status == LSS_ERR_CUDA ? 1 : 2,
                "%s: %s", what, lss_last_error()[0] ? lss_last_error() : lss_strerror(status));
}

static inline double lss_drv_double(const char *opt, const char *s) {
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (!*s || *end || errno == ERANGE || v != v)
        lss_drv_die(2, "option %s: '%s' is not a number", opt, s);
    return v;
}

static inline long long lss_drv_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (!*s || *end || errno == ERANGE) lss_drv_die(2, "option %s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi) lss_drv_die(2, "option %s: %lld is outside [%lld, %lld]", opt, v, lo, hi);
    return v;
}

/* Comma-separated numbers; *out is malloc'd. */
static inline int lss_drv_list(const char *opt, const char *s, double **out) {
    int n = 1, i = 0;
    const char *p;
    char *copy, *tok, *save = NULL;
    for (p = s; *p; p++) n += *p == ',';
    *out = (double *)malloc(sizeof(double) * (size_t)n);
    copy = (char *)malloc(strlen(s) + 1);
    if (!*out || !copy) lss_drv_die(1, "out of memory");
    strcpy(copy, s);
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) (*out)[i++] = lss_drv_double(opt, tok);
    free(copy);
    if (i != n || i == 0) lss_drv_die(2, "option %s: '%s' is not a comma-separated list of numbers", opt, s);
    return n;
}

/* ---------------------------------------------------------------- options
 * One table-driven parser for every driver and subcommand: a table of long options, each with its
 * kind, destination, range and one line of help. --help is generated from the table (usage, what
 * the command does, every option with its current value as the default, an example). */
typedef enum { LSS_DRV_STR, LSS_DRV_INT, LSS_DRV_U64, LSS_DRV_DOUBLE, LSS_DRV_FLAG } lss_drv_kind;
typedef struct {
    const char *name;   /* long option without "--"; NULL ends the table */
    lss_drv_kind kind;
    void *dst;          /* STR: const char **; INT, FLAG: int * (FLAG sets 1); U64: uint64_t *; DOUBLE: double * */
    double lo, hi;      /* inclusive range of a number (lo = hi = 0: any finite value; U64: [0, 2^63)) */
    int required;       /* 1: the option must be given */
    const char *help;   /* one line */
} lss_drv_opt;
typedef struct {
    const char *name;    /* "deeplss train", "lss-sim", ... (used in messages) */
    const char *usage;   /* the synopsis after "usage: " */
    const char *about;   /* what the command does (may span lines) */
    const char *example; /* one command line */
} lss_drv_cmd;

static inline void lss_drv_print_help(const lss_drv_cmd *cmd, const lss_drv_opt *opts) {
    const lss_drv_opt *o;
    printf("usage: %s\n", cmd->usage ? cmd->usage : cmd->name);
    if (cmd->about && *cmd->about) printf("%s\n", cmd->about);
    if (opts && opts[0].name) printf("options:\n");
    for (o = opts; o && o->name; o++) {
        char lhs[96], def[64] = "";
        const char *arg = o->kind == LSS_DRV_STR ? " S" : o->kind == LSS_DRV_DOUBLE ? " X" : o->kind == LSS_DRV_FLAG ? "" : " N";
        snprintf(lhs, sizeof lhs, "--%s%s", o->name, arg);
        if (o->required) snprintf(def, sizeof def, " (required)");
        else if (o->kind == LSS_DRV_STR && *(const char **)o->dst) snprintf(def, sizeof def, " (default %.40s)", *(const char **)o->dst);
        else if (o->kind == LSS_DRV_INT) snprintf(def, sizeof def, " (default %d)", *(int *)o->dst);
        else if (o->kind == LSS_DRV_U64) snprintf(def, sizeof def, " (default %llu)", (unsigned long long)*(uint64_t *)o->dst);
        else if (o->kind == LSS_DRV_DOUBLE) snprintf(def, sizeof def, " (default %g)", *(double *)o->dst);
        printf("  %-24s %s%s\n", lhs, o->help ? o->help : "", def);
    }
    printf("  %-24s %s\n", "--help", "this text");
    if (cmd->example && *cmd->example) printf("example: %s\n", cmd->example);
}

/* Parses argv[1..argc-1] (argv[0] is the program or the subcommand) against opts. Accepts
 * "--name value" and "--name=value". --help prints the help and exits 0; an unknown option, a
 * missing value, a value that is not a number or lies outside its range, a missing required option
 * or a stray argument exits 2 with one line naming it. */
static inline void lss_drv_parse(const lss_drv_cmd *cmd, const lss_drv_opt *opts, int argc, char **argv) {
    int i, n = 0;
    unsigned char seen[256];
    const lss_drv_opt *o;
    /* messages start "prog: error: "; name the subcommand only once */
    const char *who = cmd->name;
    size_t pl = strlen(lss_drv_prog);
    if (strncmp(who, lss_drv_prog, pl) == 0) who = who[pl] == ' ' ? who + pl + 1 : who[pl] ? who : "";
    const char *sep = *who ? ": " : "";
    for (o = opts; o && o->name; o++) n++;
    if (n > 256) lss_drv_die(1, "%s%soption table too long", who, sep);
    memset(seen, 0, sizeof seen);
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL, *eq;
        size_t len;
        int k;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            lss_drv_print_help(cmd, opts);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0 || !a[2])
            lss_drv_die(2, "%s%sunexpected argument '%s' (see %s --help)", who, sep, a, cmd->name);
        a += 2;
        eq = strchr(a, '=');
        len = eq ? (size_t)(eq - a) : strlen(a);
        for (k = 0; k < n; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, a, len) == 0) break;
        if (k == n) lss_drv_die(2, "%s%sunknown option '--%.*s' (see %s --help)", who, sep, (int)len, a, cmd->name);
        o = &opts[k];
        seen[k] = 1;
        if (o->kind == LSS_DRV_FLAG) {
            if (eq) lss_drv_die(2, "%s%soption --%s takes no value", who, sep, o->name);
            *(int *)o->dst = 1;
            continue;
        }
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else lss_drv_die(2, "%s%soption --%s needs a value", who, sep, o->name);
        {
            char optname[96];
            snprintf(optname, sizeof optname, "--%s", o->name);
            switch (o->kind) {
            case LSS_DRV_STR:
                if (!*val) lss_drv_die(2, "%s%soption --%s needs a non-empty value", who, sep, o->name);
                *(const char **)o->dst = val;
                break;
            case LSS_DRV_INT: {
                long long lo = o->lo == o->hi ? INT32_MIN : (long long)o->lo, hi = o->lo == o->hi ? INT32_MAX : (long long)o->hi;
                *(int *)o->dst = (int)lss_drv_int(optname, val, lo, hi);
                break;
            }
            case LSS_DRV_U64:
                *(uint64_t *)o->dst = (uint64_t)lss_drv_int(optname, val, 0, INT64_MAX);
                break;
            case LSS_DRV_DOUBLE: {
                double v = lss_drv_double(optname, val);
                if (!(v > -HUGE_VAL && v < HUGE_VAL)) lss_drv_die(2, "option %s: '%s' is not finite", optname, val);
                if (o->lo != o->hi && (v < o->lo || v > o->hi))
                    lss_drv_die(2, "option %s: %g is outside [%g, %g]", optname, v, o->lo, o->hi);
                *(double *)o->dst = v;
                break;
            }
            default: break;
            }
        }
    }
    for (i = 0; i < n; i++)
        if (opts[i].required && !seen[i]) lss_drv_die(2, "%s%soption --%s is required (see %s --help)", who, sep, opts[i].name, cmd->name);
}

#ifdef LSS_MAPS_H
/* The Table I parameters as options --omega-m ... --eta-bg2 (names, ranges and defaults from
 * lss_table1(), the one source): fills opts[0 .. LSS_NPARAM_TABLE1 - 1] to write into vals[]. */
typedef struct {
    char name[LSS_NPARAM_TABLE1][16], help[LSS_NPARAM_TABLE1][64];
} lss_drv_table1_text;
static inline void lss_drv_table1_opts(lss_drv_opt *opts, double *vals, lss_drv_table1_text *txt) {
    const lss_param_table *t1 = lss_table1();
    int k, q;
    for (k = 0; k < LSS_NPARAM_TABLE1; k++) {
        snprintf(txt->name[k], sizeof txt->name[k], "%s", t1->key[k]);
        for (q = 0; txt->name[k][q]; q++) if (txt->name[k][q] == '_') txt->name[k][q] = '-';
        snprintf(txt->help[k], sizeof txt->help[k], "%s (Table I prior [%g, %g])", t1->name[k], t1->lo[k], t1->hi[k]);
        vals[k] = t1->fiducial[k];
        opts[k].name = txt->name[k];
        opts[k].kind = LSS_DRV_DOUBLE;
        opts[k].dst = &vals[k];
        opts[k].lo = t1->lo[k];
        opts[k].hi = t1->hi[k];
        opts[k].required = 0;
        opts[k].help = txt->help[k];
    }
}
#endif

/* mkdir -p; exits 2 when the directory cannot be made. */
static inline void lss_drv_mkdirs(const char *dir) {
    char buf[4096];
    size_t i, n = strlen(dir);
    struct stat st;
    if (n == 0 || n >= sizeof buf) lss_drv_die(2, "bad output directory '%s'", dir);
    strcpy(buf, dir);
    for (i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) lss_drv_die(2, "cannot create '%s': %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) lss_drv_die(2, "'%s' is not a directory", dir);
}

static inline void lss_drv_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* Writes DIR/run.json: program, version, command line, seed, UTC time, and `extra` (a JSON
 * fragment of further "key": value pairs, or NULL). Atomic. */
static inline int lss_drv_runjson(const char *dir, int argc, char **argv, uint64_t seed, const char *extra) {
    char path[4096], when[64];
    lss_wfile w;
    time_t t = time(NULL);
    struct tm tmv;
    int i, s;
    snprintf(path, sizeof path, "%s/run.json", dir);
    if ((s = lss_wfile_open(&w, path)) != 0) return s;
    gmtime_r(&t, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    fprintf(w.f, "{\n  \"program\": ");
    lss_drv_json_str(w.f, lss_drv_prog);
    fprintf(w.f, ",\n  \"version\": \"%s\",\n  \"argv\": [", LSS_VERSION_STRING);
    for (i = 0; i < argc; i++) {
        if (i) fputs(", ", w.f);
        lss_drv_json_str(w.f, argv[i]);
    }
    fprintf(w.f, "],\n  \"seed\": %llu,\n  \"time_utc\": \"%s\"", (unsigned long long)seed, when);
    if (extra && *extra) fprintf(w.f, ",\n  %s", extra);
    fprintf(w.f, "\n}\n");
    return lss_wfile_commit(&w);
}

/* Progress on stderr: a live line with rate and time left on a terminal, otherwise one line
 * every few seconds. */
typedef struct {
    const char *label;
    int64_t total;
    double t0, last;
    int tty;
} lss_drv_progress;

static inline void lss_drv_progress_init(lss_drv_progress *p, const char *label, int64_t total) {
    p->label = label;
    p->total = total;
    p->t0 = p->last = lss_time_now();
    p->tty = isatty(2);
}

static inline void lss_drv_progress_update(lss_drv_progress *p, int64_t done) {
    double now = lss_time_now(), el = now - p->t0, rate = el > 0 ? done / el : 0;
    double left = rate > 0 ? (p->total - done) / rate : 0;
    if (now - p->last < (p->tty ? 0.2 : 5.0) && done < p->total) return;
    p->last = now;
    fprintf(stderr, "%s%s: %lld/%lld (%.3g/s, %.0f s left)%s", p->tty ? "\r" : "", p->label, (long long)done,
            (long long)p->total, rate, left, p->tty ? "   " : "\n");
    fflush(stderr);
}

static inline void lss_drv_progress_end(lss_drv_progress *p) {
    fprintf(stderr, "%s%s: done, %lld in %.1f s\n", p->tty ? "\r" : "", p->label, (long long)p->total,
            lss_time_now() - p->t0);
}
#endif
