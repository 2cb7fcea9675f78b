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
#ifdef LSS_MPI
#include <mpi.h>
#endif

static const char *lss_drv_prog = "lss";
#ifdef LSS_MPI
static FILE *lss_drv_errf = NULL; /* ranks other than 0: their original stderr, for errors only */
#endif

/* One line on stderr ("prog: error: ...") and exit with `code` (2 for bad input, 1 otherwise). The
 * message goes through lss_seterr first: control bytes and bytes that are not UTF-8 (an option or a
 * file name typed or pasted from a binary) are printed as \xNN, never raw. */
static inline void lss_drv_die(int code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lss_seterr(LSS_ERR_ARG, "%s", msg);
#ifdef LSS_MPI
    if (lss_mpi_size() > 1) { /* one rank's failure stops the whole job (the others are killed) */
        FILE *e = lss_drv_errf ? lss_drv_errf : stderr;
        fprintf(e, "%s: error: rank %d of %d: %s\n", lss_drv_prog, lss_mpi_rank(), lss_mpi_size(), lss_last_error());
        fflush(e);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
#endif
    fprintf(stderr, "%s: error: %s\n", lss_drv_prog, lss_last_error());
    exit(code);
}

/* Under MPI (make mpi): starts MPI once, at the first option parse; every rank parses the same
 * options. Ranks other than 0 print nothing (stdout and stderr go to /dev/null; their fatal errors,
 * lss_drv_die, still reach the original stderr) and write no files (lss_core.h). MPI_Finalize runs at exit. Without LSS_MPI: nothing. */
static inline void lss_drv_mpi_start(void) {
#ifdef LSS_MPI
    static int started = 0;
    if (started) return;
    started = 1;
    if (lss_mpi_init(NULL, NULL) != LSS_OK) {
        fprintf(stderr, "%s: error: %s\n", lss_drv_prog, lss_last_error());
        exit(1);
    }
    atexit(lss_mpi_finalize);
    if (lss_mpi_rank() != 0) {
        int fd = dup(2);
        if (fd < 0 || !(lss_drv_errf = fdopen(fd, "w")) || !freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) {
            fprintf(stderr, "%s: error: rank %d cannot silence its output\n", lss_drv_prog, lss_mpi_rank());
            exit(1);
        }
    }
#endif
}

/* Exits with the library's last error when status is not LSS_OK. Input errors (format, range,
 * argument, shape, I/O on a named file) exit 2, others 1. `what` (a file, an option, a step)
 * prefixes the message unless the message already names it (no "a.npy: a.npy: ..."). */
static inline void lss_drv_check(int status, const char *what) {
    const char *m;
    int code;
    if (status == LSS_OK) return;
    m = lss_last_error()[0] ? lss_last_error() : lss_strerror(status);
    code = status == LSS_ERR_NOMEM || status == LSS_ERR_NUMERIC || status == LSS_ERR_CUDA ? 1 : 2;
    if (what && *what && !strstr(m, what)) lss_drv_die(code, "%s: %s", what, m);
    lss_drv_die(code, "%s", m);
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
    lss_drv_mpi_start();
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

/* The JSON string literal of s (quotes included) into buf of n bytes: '"' and '\' escaped, control
 * bytes as \u00XX, well-formed UTF-8 kept, any other byte as \u00XX (its Latin-1 reading: the text
 * stays valid JSON). Returns the length it needs (like snprintf); truncated at a whole escape. */
static inline void lss__drv_put(char *buf, size_t n, size_t *o, int *room, const char *e, size_t k) {
    if (buf && *room && *o + k < n) {
        memcpy(buf + *o, e, k);
        buf[*o + k] = 0;
    } else *room = 0; /* stop writing at a whole escape; keep counting */
    *o += k;
}
static inline size_t lss_drv_json_escape(char *buf, size_t n, const char *s) {
    size_t o = 0;
    int room = 1;
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    if (buf && n) buf[0] = 0;
    lss__drv_put(buf, n, &o, &room, "\"", 1);
    while (*p) {
        char e[8];
        size_t k = 0, used = 1, j;
        if (*p == '"' || *p == '\\') e[0] = '\\', e[1] = (char)*p, k = 2;
        else if (*p >= 0x20 && *p < 0x80) e[0] = (char)*p, k = 1;
        else if (*p >= 0xc2 && *p <= 0xf4) {
            size_t need = *p < 0xe0 ? 2 : *p < 0xf0 ? 3 : 4;
            for (j = 1; j < need && (p[j] & 0xc0) == 0x80; j++) {}
            if (j == need) memcpy(e, p, need), k = used = need;
        }
        if (!k) snprintf(e, sizeof e, "\\u%04x", (unsigned)*p), k = 6;
        lss__drv_put(buf, n, &o, &room, e, k);
        p += used;
    }
    lss__drv_put(buf, n, &o, &room, "\"", 1);
    return o;
}

static inline void lss_drv_json_str(FILE *f, const char *s) {
    size_t n = lss_drv_json_escape(NULL, 0, s) + 1;
    char *b = (char *)malloc(n);
    if (!b) lss_drv_die(1, "out of memory");
    lss_drv_json_escape(b, n, s);
    fputs(b, f);
    free(b);
}

/* Writes DIR/run.json: program, version, command line, seed, UTC time, and `extra` (a JSON
 * fragment of further "key": value pairs, or NULL; strings in it escaped with lss_drv_json_escape).
 * Atomic. The file is always valid JSON: a fragment that is not (a value truncated by a fixed
 * buffer, an unescaped path, a nan) is kept as the string "record_text" with "record_error" saying
 * why, and a warning line goes to stderr. */
static inline int lss_drv_runjson(const char *dir, int argc, char **argv, uint64_t seed, const char *extra) {
    char path[4096], when[64];
    lss_wfile w;
    time_t t = time(NULL);
    struct tm tmv;
    int i, s, extra_ok = 1;
    char jerr[1024] = "";
    if (extra && *extra) { /* the fragment must make an object of its own */
        size_t n = strlen(extra);
        char *obj = (char *)malloc(n + 3);
        lss_json *j = NULL;
        if (!obj) return lss_seterr(LSS_ERR_NOMEM, "run.json: out of memory");
        obj[0] = '{';
        memcpy(obj + 1, extra, n);
        obj[n + 1] = '}';
        obj[n + 2] = 0;
        if (lss_json_parse(obj, n + 2, &j) != LSS_OK) {
            extra_ok = 0;
            snprintf(jerr, sizeof jerr, "%s", lss_last_error());
            fprintf(stderr, "%s: warning: run.json: the run's record is not valid JSON (%s); kept as text\n", lss_drv_prog, jerr);
        }
        lss_json_free(j);
        free(obj);
    }
    if (snprintf(path, sizeof path, "%s/run.json", dir) >= (int)sizeof path)
        return lss_seterr(LSS_ERR_ARG, "run.json: output directory name too long");
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
    fprintf(w.f, ",\n  \"mpi_ranks\": %d", lss_mpi_size());
    if (extra && *extra && extra_ok) fprintf(w.f, ",\n  %s", extra);
    else if (extra && *extra) {
        fputs(",\n  \"record_text\": ", w.f);
        lss_drv_json_str(w.f, extra);
        fputs(",\n  \"record_error\": ", w.f);
        lss_drv_json_str(w.f, jerr);
    }
    fprintf(w.f, "\n}\n");
    return lss_wfile_commit(&w);
}

/* ---------------------------------------------------------------- output sets
 * A run's outputs are complete or absent. Before the work, lss_drv_outputs_begin(DIR, staged)
 * makes DIR, checks that it can be written (exit 2 otherwise) and removes the temporary files
 * "*.tmp.<pid>.<n>" that killed runs left there (only those whose process is gone); each output
 * file named on the command line is checked the same way by lss_drv_out_file (a directory, a
 * read-only place or a missing directory exits 2 before any work; devices, FIFOs and symbolic
 * links are fine: lss_wfile writes through them). During the run every file written through
 * lss_wfile (NPY, CSV, PNG, checkpoints) is recorded by a commit hook; with staged = 1 it stays
 * under its temporary name until lss_drv_outputs_publish (or _done) renames them all into place,
 * so that a run that fails (lss_drv_die, a signal, a full disk) leaves the previous files as they
 * were and no partial set: the temporary files are removed at exit, and a kill -9 leaves them to
 * the next run's clean-up. staged = 0 (training: checkpoints must land as they are written, so that
 * --resume works) records only. lss_drv_outputs_done writes DIR/run.json last, with the list of
 * outputs and "complete": true; an unstaged run removes DIR/run.json at the start, so that a
 * run.json always describes a complete set. Commits must come from one thread at a time. */
#include <fcntl.h>
#include <signal.h>
typedef struct {
    char *tmp, *path; /* tmp: NULL once in place */
} lss_drv_outfile;
static struct {
    int on, staged, done, n, cap, nmade;
    lss_drv_outfile *f;
    char dir[4096];
    char *made[64];    /* directories this run created (removed again, when empty, by a run that fails) */
    volatile sig_atomic_t busy;
} lss_drv_outs;

static inline char *lss_drv__strdup(const char *s) {
    char *d = (char *)malloc(strlen(s) + 1);
    if (!d) lss_drv_die(1, "out of memory");
    return strcpy(d, s);
}
static int lss_drv__out_hook(const char *tmp, const char *path, void *user) {
    int i;
    (void)user;
    lss_drv_outs.busy = 1;
    for (i = 0; i < lss_drv_outs.n && strcmp(lss_drv_outs.f[i].path, path); i++) {}
    if (i == lss_drv_outs.n) {
        if (i == lss_drv_outs.cap) {
            int nc = lss_drv_outs.cap ? 2 * lss_drv_outs.cap : 32;
            lss_drv_outfile *nf = (lss_drv_outfile *)realloc(lss_drv_outs.f, sizeof *nf * (size_t)nc);
            if (!nf) { lss_drv_outs.busy = 0; return lss_seterr(LSS_ERR_NOMEM, "out of memory recording '%s'", path); }
            lss_drv_outs.f = nf, lss_drv_outs.cap = nc;
        }
        lss_drv_outs.f[i].path = lss_drv__strdup(path);
        lss_drv_outs.f[i].tmp = NULL;
        lss_drv_outs.n++;
    }
    if (lss_drv_outs.f[i].tmp) { /* written again in this run: the newer version replaces the older */
        remove(lss_drv_outs.f[i].tmp);
        free(lss_drv_outs.f[i].tmp);
        lss_drv_outs.f[i].tmp = NULL;
    }
    if (lss_drv_outs.staged) lss_drv_outs.f[i].tmp = lss_drv__strdup(tmp);
    lss_drv_outs.busy = 0;
    return lss_drv_outs.staged ? 1 : 0;
}
static void lss_drv__outputs_atexit(void) {
    int i, k = 0;
    if (lss_drv_outs.done) return;
    for (i = 0; i < lss_drv_outs.n; i++)
        if (lss_drv_outs.f[i].tmp) { remove(lss_drv_outs.f[i].tmp); k++; }
    for (i = lss_drv_outs.nmade - 1; i >= 0; i--) rmdir(lss_drv_outs.made[i]); /* only empty ones go */
    if (k) fprintf(stderr, "%s: the run did not finish: none of its %d output file(s) written, earlier files left as they were\n",
                   lss_drv_prog, k);
}
static void lss_drv__outputs_signal(int sig) {
    int i;
    if (!lss_drv_outs.busy)
        for (i = 0; i < lss_drv_outs.n; i++)
            if (lss_drv_outs.f[i].tmp) unlink(lss_drv_outs.f[i].tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}
/* Exits 2 unless `dir` (made when missing) takes new files; then removes its orphaned temporary files. */
static inline void lss_drv_out_dir(const char *dir) {
    char probe[4200], buf[4096];
    int fd, n;
    size_t i, len = strlen(dir);
    struct stat st;
    if (len == 0 || len >= sizeof buf) lss_drv_die(2, "bad output directory '%s'", dir);
    strcpy(buf, dir);
    for (i = 1; i <= len; i++) /* mkdir -p, remembering what it made */
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) == 0) {
                if (lss_drv_outs.nmade < 64) lss_drv_outs.made[lss_drv_outs.nmade++] = lss_drv__strdup(buf);
            } else if (errno != EEXIST) lss_drv_die(2, "cannot create '%s': %s", buf, strerror(errno));
            buf[i] = c;
        }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) lss_drv_die(2, "'%s' is not a directory", dir);
    snprintf(probe, sizeof probe, "%s/.lss-write-check.tmp.%ld.0", dir, (long)getpid());
    if ((fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0 && errno != EEXIST)
        lss_drv_die(2, "cannot write into '%s': %s", dir, strerror(errno));
    if (fd >= 0) close(fd), unlink(probe);
    if (lss_mpi_rank() == 0 && lss_wfile_clean_orphans(dir, &n) == LSS_OK && n > 0)
        fprintf(stderr, "%s: removed %d temporary file(s) of an earlier, interrupted run in %s\n", lss_drv_prog, n, dir);
}
/* Exits 2 unless the output file `path` can be written (see above); cleans its directory's orphans. */
static inline void lss_drv_out_file(const char *path) {
    struct stat st;
    lss_wfile w;
    char *slash;
    int n;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) lss_drv_die(2, "cannot write '%s': it is a directory", path);
        if (!S_ISREG(st.st_mode)) {
            if (access(path, W_OK) != 0) lss_drv_die(2, "cannot write '%s': %s", path, strerror(errno));
            return; /* a device or FIFO: written directly */
        }
    }
    if (lss_wfile_open(&w, path) != LSS_OK) lss_drv_die(2, "%s", lss_last_error());
    if (w.direct) { lss_wfile_abort(&w); return; }
    if ((slash = strrchr(w.path, '/')) != NULL) *slash = 0;
    if (lss_mpi_rank() == 0 && lss_wfile_clean_orphans(slash ? (*w.path ? w.path : "/") : ".", &n) == LSS_OK && n > 0)
        fprintf(stderr, "%s: removed %d temporary file(s) of an earlier, interrupted run next to %s\n", lss_drv_prog, n, path);
    if (slash) *slash = '/';
    lss_wfile_abort(&w);
}
/* Starts recording (see above); dir: the run's output directory (NULL: files named by options only). */
static inline void lss_drv_outputs_begin(const char *dir, int staged) {
    static int hooked = 0;
    if (!hooked) { /* first: a failure from here on removes what this run made */
        hooked = 1;
        atexit(lss_drv__outputs_atexit);
        signal(SIGINT, lss_drv__outputs_signal);
        signal(SIGTERM, lss_drv__outputs_signal);
        signal(SIGHUP, lss_drv__outputs_signal);
    }
    if (dir) {
        if (strlen(dir) >= sizeof lss_drv_outs.dir - 16) lss_drv_die(2, "output directory name too long");
        lss_drv_out_dir(dir);
        snprintf(lss_drv_outs.dir, sizeof lss_drv_outs.dir, "%s", dir);
        if (!staged) {
            char p[4200];
            snprintf(p, sizeof p, "%s/run.json", dir);
            if (remove(p) != 0 && errno != ENOENT) lss_drv_die(2, "cannot remove the old '%s': %s", p, strerror(errno));
        }
    } else lss_drv_outs.dir[0] = 0;
    lss_drv_outs.on = 1, lss_drv_outs.staged = staged, lss_drv_outs.done = 0;
    lss_wfile_set_hook(lss_drv__out_hook, NULL);
    lss_mpi_barrier(); /* under MPI: every rank has looked at DIR (resume checks, old files) before rank 0 writes */
}
/* A staged set without a directory: checks the output files a and b (NULL: none) and begins. */
static inline void lss_drv_outputs_files(const char *a, const char *b) {
    if (a) lss_drv_out_file(a);
    if (b) lss_drv_out_file(b);
    lss_drv_outputs_begin(NULL, 1);
}
/* Renames every staged output into place (exit 1 naming the file when one cannot be). */
static inline void lss_drv_outputs_publish(void) {
    int i;
    for (i = 0; i < lss_drv_outs.n; i++) {
        if (!lss_drv_outs.f[i].tmp) continue;
        if (rename(lss_drv_outs.f[i].tmp, lss_drv_outs.f[i].path) != 0)
            lss_drv_die(1, "cannot rename into '%s': %s", lss_drv_outs.f[i].path, strerror(errno));
        free(lss_drv_outs.f[i].tmp);
        lss_drv_outs.f[i].tmp = NULL;
    }
    lss_mpi_barrier(); /* under MPI: the other ranks may read what rank 0 published */
}
/* Staging on or off from now on (publishes what is pending first). */
static inline void lss_drv_outputs_stage(int staged) {
    lss_drv_outputs_publish();
    lss_drv_outs.staged = staged;
}
/* Publishes the outputs, then (with a directory) writes DIR/run.json as lss_drv_runjson does, with
 * `extra` followed by "outputs" (the files written, relative to DIR where they lie in it) and
 * "complete": true. Exits on failure. */
static inline void lss_drv_outputs_done(int argc, char **argv, uint64_t seed, const char *extra) {
    size_t cap = (extra ? strlen(extra) : 0) + 64, len, dl = strlen(lss_drv_outs.dir);
    char *x;
    int i;
    lss_drv_outputs_publish();
    lss_wfile_set_hook(NULL, NULL);
    lss_drv_outs.done = 1;
    if (!dl) return;
    for (i = 0; i < lss_drv_outs.n; i++) cap += 6 * strlen(lss_drv_outs.f[i].path) + 4;
    x = (char *)malloc(cap);
    if (!x) lss_drv_die(1, "out of memory");
    len = (size_t)snprintf(x, cap, "%s%s\"outputs\": [", extra && *extra ? extra : "", extra && *extra ? ", " : "");
    for (i = 0; i < lss_drv_outs.n; i++) {
        const char *p = lss_drv_outs.f[i].path;
        if (!strncmp(p, lss_drv_outs.dir, dl) && p[dl] == '/') p += dl + 1;
        if (!strcmp(p, "run.json")) continue;
        len += (size_t)snprintf(x + len, cap - len, "%s\"", x[len - 1] == '[' ? "" : ", ");
        for (; *p; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '"' || c == '\\') len += (size_t)snprintf(x + len, cap - len, "\\%c", c);
            else if (c < 0x20) len += (size_t)snprintf(x + len, cap - len, "\\u%04x", c);
            else x[len++] = (char)c, x[len] = 0;
        }
        len += (size_t)snprintf(x + len, cap - len, "\"");
    }
    snprintf(x + len, cap - len, "], \"complete\": true");
    lss_drv_check(lss_drv_runjson(lss_drv_outs.dir, argc, argv, seed, x), "run.json");
    free(x);
}

/* Says on stderr what a run will hold (WHAT lists its parts) and exits with status 2, naming REDUCE, the
 * options that shrink it, when that exceeds this machine's physical memory. */
static inline void lss_drv_memory(const char *what, double bytes, const char *reduce) {
    double phys = 0;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) phys = (double)pages * (double)psz;
#endif
    fprintf(stderr, "%s: needs about %.3g GB\n", what, bytes / 1e9);
    if (phys > 0 && bytes > phys)
        lss_drv_die(2, "%s: needs about %.3g GB and this machine has %.3g GB: reduce %s", what, bytes / 1e9, phys / 1e9, reduce);
}

/* Progress on stderr: a live line with rate and time left on a terminal, otherwise one line
 * every few seconds. */
typedef struct {
    const char *label;
    int64_t total;
    double t0, last;
    int tty;
    int64_t base;   /* work done before this run (a resumed training): set at the first update to its count - 1 */
} lss_drv_progress;

static inline void lss_drv_progress_init(lss_drv_progress *p, const char *label, int64_t total) {
    p->label = label;
    p->total = total;
    p->t0 = p->last = lss_time_now();
    p->tty = isatty(2);
    p->base = -1;
}

static inline void lss_drv_progress_update(lss_drv_progress *p, int64_t done) {
    double now = lss_time_now(), el = now - p->t0, rate;
    if (p->base < 0) p->base = done > 0 ? done - 1 : 0;
    rate = el > 0 ? (double)(done - p->base) / el : 0;
    double left = rate > 0 ? (p->total - done) / rate : 0;
    if (now - p->last < (p->tty ? 0.2 : 5.0) && done < p->total) return;
    if (lss_mpi_rank() != 0) return; /* under MPI rank 0 reports */
    p->last = now;
    fprintf(stderr, "%s%s: %lld/%lld (%.3g/s, %.0f s left)%s", p->tty ? "\r" : "", p->label, (long long)done,
            (long long)p->total, rate, left, p->tty ? "   " : "\n");
    fflush(stderr);
}

static inline void lss_drv_progress_end(lss_drv_progress *p) {
    if (lss_mpi_rank() != 0) return;
    fprintf(stderr, "%s%s: done, %lld in %.1f s\n", p->tty ? "\r" : "", p->label, (long long)p->total,
            lss_time_now() - p->t0);
}

/* ---- map helpers of the generator drivers (cgan, flowgen); they need lss_core.h included first */
#ifdef LSS_CORE_H
/* A square map under one of the 8 symmetries of the square: bit 0 flips rows, bit 1 columns, bit 2 transposes. */
static inline void lss_drv_sym_copy(const float *src, float *dst, int side, unsigned sym) {
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            int sy = sym & 1 ? side - 1 - y : y, sx = sym & 2 ? side - 1 - x : x;
            dst[y * side + x] = sym & 4 ? src[sx * side + sy] : src[sy * side + sx];
        }
}
/* A row of map panels (one colour range for all; lo == hi: the maps' range) as a PNG. */
static inline void lss_drv_png_row(const char *path, const float *maps, int n, int side, const char *const *titles, double lo, double hi) {
    int sc = side >= 128 ? 2 : 256 / side, pw, ph;
    lss_image im;
    if (lo == hi) lss_map_range(maps, (int64_t)n * side * side, LSS_CMAP_VIRIDIS, &lo, &hi);
    lss_image_map_panel_size(side, side, lo, hi, sc, &pw, &ph);
    lss_drv_check(lss_image_init(&im, n * (pw + 8) + 8, ph + 16), path);
    for (int i = 0; i < n; i++) lss_image_map_panel(&im, 8 + i * (pw + 8), 8, maps + (int64_t)i * side * side, side, side, lo, hi, sc, LSS_CMAP_VIRIDIS, titles[i]);
    lss_drv_check(lss_image_save_png(&im, path), path);
    lss_image_free(&im);
}
#endif
#endif
