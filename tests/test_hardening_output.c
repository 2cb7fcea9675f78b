/* test_hardening_output.c - outputs that never destroy (issue 21, items 1, 5 and 6).
 *   1. lss_wfile writes through a symbolic link (a chain, a dangling one) to its target, with the
 *      temporary file next to the target; devices (/dev/null), FIFOs and /dev/stdout are written
 *      directly and stay what they are; a directory is refused; the mode of a replaced file is kept;
 *      prepare/abort/commit and the commit hook; orphaned temporary files of dead processes removed.
 *   5. The drivers check every output before the work and publish a run's set together:
 *      `massmap ks --png <read-only>/k.png` leaves no k.npy; a full disk (a small tmpfs, and
 *      RLIMIT_FSIZE with SIGXFSZ ignored) leaves `massmap mock`'s earlier set as it was and no
 *      partial one; an unwritable --out exits 2 before the work (massmap, lss-theory, lss-stats,
 *      deeplss); a killed run's temporary files are removed by the next run; run.json is written last
 *      and says "complete": true with the list of outputs.
 *   6. lss_train's checkpoint set: a save that fails for one network (file-size limit) leaves every
 *      network at the previous step and the run resumes from there bit for bit; networks resumed one
 *      at a time keep every network's columns of the loss CSV.
 * The mount cases run in a private mount namespace (unshare -m, as root) and are skipped elsewhere.
 * Runs under ASan + UBSan too (make build/asan/test_hardening_output, LSS_TEST_ASAN=1). */
#define _POSIX_C_SOURCE 200809L
#define LSS_CORE_IMPLEMENTATION
#define LSS_NN_IMPLEMENTATION
#include "lss_nn.h"
#include "tests/lss_test.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#define D "build/tho"

static int exists(const char *p) { struct stat st; return lstat(p, &st) == 0; }
static int is_link(const char *p) { struct stat st; return lstat(p, &st) == 0 && S_ISLNK(st.st_mode); }
static long fsize(const char *p) { struct stat st; return stat(p, &st) == 0 ? (long)st.st_size : -1; }

/* Whole file into a malloc'd buffer (NULL when unreadable); *n its length. */
static char *slurp(const char *p, long *n) {
    FILE *f = fopen(p, "rb");
    char *b;
    long k = 0, cap = 4096;
    *n = 0;
    if (!f) return NULL;
    b = (char *)malloc((size_t)cap + 1);
    while (b) {
        size_t r = fread(b + k, 1, (size_t)(cap - k), f);
        k += (long)r;
        if (k < cap) break;
        cap *= 2;
        char *nb = (char *)realloc(b, (size_t)cap + 1);
        if (!nb) { free(b); b = NULL; }
        else b = nb;
    }
    fclose(f);
    if (b) { b[k] = 0; *n = k; }
    return b;
}
static int same_bytes(const char *a, const char *b) {
    long na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    int eq = x && y && na == nb && !memcmp(x, y, (size_t)na);
    free(x); free(y);
    return eq;
}
static int contains(const char *path, const char *needle) {
    long n;
    char *b = slurp(path, &n);
    int r = b && strstr(b, needle) != NULL;
    free(b);
    return r;
}
/* Number of "*.tmp.<pid>.<n>" files in dir. */
static int count_temps(const char *dir) {
    char cmd[512];
    long n;
    char *b;
    int k = 0;
    snprintf(cmd, sizeof cmd, "ls -A %s > " D "/ls.txt 2>/dev/null", dir);
    if (system(cmd) != 0) return -1;
    b = slurp(D "/ls.txt", &n);
    for (char *p = b, *e; p && *p; p = e + 1) {
        if (!(e = strchr(p, '\n'))) e = p + strlen(p) - 1;
        else *e = 0;
        if (lss_wfile_is_temp(p, NULL)) k++;
    }
    free(b);
    return k;
}
/* Runs a shell command; its exit status (-1 when it did not exit normally). */
static int sh(const char *cmd) {
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
/* The same with a file-size limit (bytes) and SIGXFSZ ignored: writes past it fail with EFBIG. */
static int sh_fsize(const char *cmd, long limit) {
    pid_t p = fork();
    int st;
    if (p == 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_FSIZE, &rl);
        rl.rlim_cur = (rlim_t)limit;
        setrlimit(RLIMIT_FSIZE, &rl);
        signal(SIGXFSZ, SIG_IGN);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    if (p < 0 || waitpid(p, &st, 0) != p) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
static long dead_pid(void) { /* the pid of a child that has exited and been reaped */
    pid_t p = fork();
    int st;
    if (p == 0) _exit(0);
    waitpid(p, &st, 0);
    return (long)p;
}
static int have_bin(const char *p) { return access(p, X_OK) == 0; }
static int can_unshare = -1;
static int unshare_ok(void) {
    if (can_unshare < 0) can_unshare = geteuid() == 0 && sh("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs " D "/mnt' 2>/dev/null") == 0;
    return can_unshare;
}

/* ------------------------------------------------------------------ item 1: the writer */
static int write_text(const char *path, const char *text) {
    lss_wfile w;
    int s;
    if ((s = lss_wfile_open(&w, path)) != LSS_OK) return s;
    fputs(text, w.f);
    return lss_wfile_commit(&w);
}

static void test_symlinks(void) {
    long n;
    char *b;
    sh("rm -rf " D "/ln && mkdir -p " D "/ln/a " D "/ln/b");
    /* a link to a regular file in another directory, relative */
    CHECK_OK(write_text(D "/ln/a/target.txt", "old\n"));
    CHECK(symlink("../a/target.txt", D "/ln/b/link.txt") == 0, "symlink: %s", strerror(errno));
    CHECK_OK(write_text(D "/ln/b/link.txt", "new through the link\n"));
    CHECK(is_link(D "/ln/b/link.txt"), "the link is still a link");
    b = slurp(D "/ln/a/target.txt", &n);
    CHECK(b && !strcmp(b, "new through the link\n"), "the target got the data ('%s')", b ? b : "(none)");
    free(b);
    CHECK(count_temps(D "/ln/a") == 0 && count_temps(D "/ln/b") == 0, "no temporary file left");
    /* the temporary file goes next to the target: visible through the hook */
    {
        lss_wfile w;
        CHECK_OK(lss_wfile_open(&w, D "/ln/b/link.txt"));
        CHECK(w.tmp && strstr(w.tmp, "a/target.txt.tmp.") != NULL && !strstr(w.tmp, "b/link") && !w.direct, "temporary file next to the target (%s)",
              w.tmp ? w.tmp : "(none)");
        lss_wfile_abort(&w);
    }
    /* a chain of two links, the second absolute */
    {
        char abs[4096], cwd[3000];
        CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
        snprintf(abs, sizeof abs, "%s/" D "/ln/b/link.txt", cwd);
        CHECK(symlink(abs, D "/ln/chain.txt") == 0, "symlink chain");
        CHECK_OK(write_text(D "/ln/chain.txt", "via two links\n"));
        b = slurp(D "/ln/a/target.txt", &n);
        CHECK(b && !strcmp(b, "via two links\n") && is_link(D "/ln/chain.txt") && is_link(D "/ln/b/link.txt"),
              "written through a chain of links, both kept");
        free(b);
    }
    /* a dangling link: its target is created */
    CHECK(symlink("a/new.txt", D "/ln/dangling.txt") == 0, "symlink dangling");
    CHECK_OK(write_text(D "/ln/dangling.txt", "created\n"));
    CHECK(is_link(D "/ln/dangling.txt") && fsize(D "/ln/a/new.txt") == 8, "dangling link: target created, link kept");
    /* NPY through a link equals NPY written directly */
    {
        float v[6] = {1, 2, 3, 4, 5, 6};
        int64_t shp[2] = {2, 3};
        CHECK(symlink("a/arr.npy", D "/ln/arr_link.npy") == 0, "symlink npy");
        CHECK_OK(lss_npy_save(D "/ln/arr_link.npy", LSS_F32, 2, shp, v));
        CHECK_OK(lss_npy_save(D "/ln/direct.npy", LSS_F32, 2, shp, v));
        CHECK(is_link(D "/ln/arr_link.npy") && same_bytes(D "/ln/a/arr.npy", D "/ln/direct.npy"), "NPY through a link");
    }
    /* directories are refused, a link to one too */
    CHECK_ERR(write_text(D "/ln/a", "x"), LSS_ERR_IO);
    CHECK(strstr(lss_last_error(), "directory") != NULL, "says directory: %s", lss_last_error());
    CHECK(symlink("a", D "/ln/dirlink") == 0, "symlink dir");
    CHECK_ERR(write_text(D "/ln/dirlink", "x"), LSS_ERR_IO);
    CHECK(is_link(D "/ln/dirlink"), "a link to a directory is left alone");
    /* a missing directory is named */
    CHECK_ERR(write_text(D "/ln/nodir/x.txt", "x"), LSS_ERR_IO);
    CHECK(strstr(lss_last_error(), "no directory") != NULL, "names the missing directory: %s", lss_last_error());
    /* a loop of links */
    CHECK(symlink("loop2", D "/ln/loop1") == 0 && symlink("loop1", D "/ln/loop2") == 0, "symlink loop");
    CHECK_ERR(write_text(D "/ln/loop1", "x"), LSS_ERR_IO);
    /* the mode of a replaced file is kept */
    chmod(D "/ln/a/target.txt", 0640);
    CHECK_OK(write_text(D "/ln/a/target.txt", "mode\n"));
    {
        struct stat st;
        CHECK(stat(D "/ln/a/target.txt", &st) == 0 && (st.st_mode & 0777) == 0640, "mode 0640 kept (%o)", (unsigned)(st.st_mode & 0777));
    }
}

static void test_devices(void) {
    struct stat st;
    float v[4] = {1, 2, 3, 4};
    int64_t shp[1] = {4};
    /* /dev/null: written directly, stays a character device */
    CHECK_OK(lss_npy_save("/dev/null", LSS_F32, 1, shp, v));
    CHECK(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode), "/dev/null is still a device");
    {
        lss_wfile w;
        CHECK_OK(lss_wfile_open(&w, "/dev/null"));
        CHECK(w.direct && !w.tmp, "direct mode for a device");
        fputs("x", w.f);
        CHECK_OK(lss_wfile_commit(&w));
    }
    CHECK(count_temps("/dev") == 0, "no temporary file in /dev");
    /* a FIFO: a reader child copies what arrives; the FIFO stays a FIFO */
    sh("rm -rf " D "/fifo && mkdir -p " D "/fifo");
    CHECK(mkfifo(D "/fifo/p", 0600) == 0, "mkfifo: %s", strerror(errno));
    {
        pid_t p = fork();
        int stt;
        if (p == 0) {
            char buf[4096];
            ssize_t r;
            int in = open(D "/fifo/p", O_RDONLY), out = open(D "/fifo/got.npy", O_WRONLY | O_CREAT | O_TRUNC, 0644);
            while (in >= 0 && out >= 0 && (r = read(in, buf, sizeof buf)) > 0)
                if (write(out, buf, (size_t)r) != r) _exit(1);
            _exit(in >= 0 && out >= 0 ? 0 : 1);
        }
        CHECK_OK(lss_npy_save(D "/fifo/p", LSS_F32, 1, shp, v));
        CHECK(waitpid(p, &stt, 0) == p && WIFEXITED(stt) && WEXITSTATUS(stt) == 0, "reader child");
        CHECK_OK(lss_npy_save(D "/fifo/ref.npy", LSS_F32, 1, shp, v));
        CHECK(same_bytes(D "/fifo/got.npy", D "/fifo/ref.npy"), "the FIFO's reader got the NPY file");
        CHECK(lstat(D "/fifo/p", &st) == 0 && S_ISFIFO(st.st_mode), "the FIFO is still a FIFO");
        CHECK(count_temps(D "/fifo") == 0, "no temporary file next to the FIFO");
    }
    /* /dev/stdout redirected to a regular file: written into the open file, not replaced */
    {
        struct stat a, b;
        pid_t p;
        int stt;
        CHECK_OK(write_text(D "/fifo/stdout.txt", ""));
        CHECK(stat(D "/fifo/stdout.txt", &a) == 0, "stat");
        fflush(stdout);
        p = fork();
        if (p == 0) {
            int fd = open(D "/fifo/stdout.txt", O_WRONLY | O_TRUNC);
            if (fd < 0 || dup2(fd, 1) < 0) _exit(2);
            printf("before\n");
            fflush(stdout);
            _exit(write_text("/dev/stdout", "through /dev/stdout\n") == LSS_OK ? 0 : 1);
        }
        CHECK(waitpid(p, &stt, 0) == p && WIFEXITED(stt) && WEXITSTATUS(stt) == 0, "child writing /dev/stdout (status %d)", stt);
        CHECK(stat(D "/fifo/stdout.txt", &b) == 0 && a.st_ino == b.st_ino, "the file behind /dev/stdout is the same file");
        CHECK(contains(D "/fifo/stdout.txt", "before\nthrough /dev/stdout\n"), "what was printed before is kept, the data follows");
    }
}

static int hook_calls = 0;
static char hook_tmp[4096];
static int take_hook(const char *tmp, const char *path, void *user) {
    (void)path; (void)user;
    hook_calls++;
    snprintf(hook_tmp, sizeof hook_tmp, "%s", tmp);
    return 1;
}
static int fail_hook(const char *tmp, const char *path, void *user) {
    (void)tmp; (void)user;
    return lss_seterr(LSS_ERR_IO, "hook refuses '%s'", path);
}

static void test_writer_api(void) {
    lss_wfile w;
    long pid = 0;
    sh("rm -rf " D "/api && mkdir -p " D "/api");
    /* prepare then abort: nothing left */
    CHECK_OK(lss_wfile_open(&w, D "/api/a.txt"));
    fputs("a", w.f);
    CHECK_OK(lss_wfile_prepare(&w));
    CHECK(w.prepared && !w.f && exists(w.tmp) && !exists(D "/api/a.txt"), "prepared: data under the temporary name only");
    lss_wfile_abort(&w);
    CHECK(count_temps(D "/api") == 0 && !exists(D "/api/a.txt"), "abort after prepare removes it");
    /* prepare then commit */
    CHECK_OK(lss_wfile_open(&w, D "/api/a.txt"));
    fputs("abc", w.f);
    CHECK_OK(lss_wfile_prepare(&w));
    CHECK_OK(lss_wfile_commit(&w));
    CHECK(fsize(D "/api/a.txt") == 3 && count_temps(D "/api") == 0, "commit after prepare renames");
    /* a hook that takes the file over */
    lss_wfile_set_hook(take_hook, NULL);
    CHECK_OK(write_text(D "/api/b.txt", "staged"));
    lss_wfile_set_hook(NULL, NULL);
    CHECK(hook_calls == 1 && exists(hook_tmp) && !exists(D "/api/b.txt"), "the hook took the temporary file (%s)", hook_tmp);
    CHECK(rename(hook_tmp, D "/api/b.txt") == 0 && fsize(D "/api/b.txt") == 6, "and renames it later");
    /* a hook that refuses: the commit fails, the old file stays */
    lss_wfile_set_hook(fail_hook, NULL);
    CHECK_ERR(write_text(D "/api/b.txt", "replaced?"), LSS_ERR_IO);
    lss_wfile_set_hook(NULL, NULL);
    CHECK(fsize(D "/api/b.txt") == 6 && count_temps(D "/api") == 0, "refused: old file kept, temporary removed");
    /* direct-mode files never reach the hook */
    lss_wfile_set_hook(take_hook, NULL);
    CHECK_OK(write_text("/dev/null", "x"));
    lss_wfile_set_hook(NULL, NULL);
    CHECK(hook_calls == 1, "no hook call for /dev/null");
    /* temporary names */
    CHECK(lss_wfile_is_temp("dir/k.npy.tmp.123.4", &pid) && pid == 123, "k.npy.tmp.123.4 is a temporary file");
    CHECK(!lss_wfile_is_temp("k.npy", NULL) && !lss_wfile_is_temp("k.tmp.npy", NULL) && !lss_wfile_is_temp("a.tmp.12", NULL) &&
          !lss_wfile_is_temp(".tmp.1.2", NULL) && !lss_wfile_is_temp("a.tmp.1.2x", NULL), "other names are not");
    /* orphans: only those of dead processes go */
    {
        char p1[256], p2[256], p3[256];
        long dead = dead_pid();
        int n = -1;
        snprintf(p1, sizeof p1, D "/api/k.npy.tmp.%ld.0", dead);
        snprintf(p2, sizeof p2, D "/api/k.npy.tmp.%ld.1", (long)getpid());
        snprintf(p3, sizeof p3, D "/api/k.npy.tmp.1.0"); /* pid 1 lives */
        CHECK_OK(write_text(p1, "x"));
        CHECK_OK(write_text(p2, "x"));
        CHECK_OK(write_text(p3, "x"));
        CHECK_OK(write_text(D "/api/notes.tmp.txt", "x"));
        CHECK_OK(lss_wfile_clean_orphans(D "/api", &n));
        CHECK(n == 1 && !exists(p1) && exists(p2) && exists(p3) && exists(D "/api/notes.tmp.txt"),
              "one orphan (pid %ld) removed, live ones and other files kept (n %d)", dead, n);
        CHECK_ERR(lss_wfile_clean_orphans(D "/api/none", &n), LSS_ERR_IO);
        remove(p2); remove(p3);
    }
}

/* ------------------------------------------------------------------ item 5: drivers */
static const char *MM = "bin/massmap";

static void test_massmap_outputs(void) {
    long n;
    char cmd[2048];
    if (!have_bin(MM)) { SKIP("%s is not built (make bin/massmap)", MM); return; }
    sh("rm -rf " D "/mm && mkdir -p " D "/mm");
    CHECK(sh("bin/massmap mock --out " D "/mm/mock --size 32 --nfields 1 2> " D "/err.txt") == 0, "mock runs");
    CHECK(contains(D "/mm/mock/run.json", "\"complete\": true") && contains(D "/mm/mock/run.json", "\"grid.csv\""),
          "run.json last, complete, lists grid.csv");
    /* ks with a picture that cannot be written: exit 2 before the work, no k.npy */
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out " D "/mm/k.npy --png " D "/mm/nodir/k.png 2> " D "/err.txt") == 2,
          "ks --png in a missing directory exits 2");
    CHECK(contains(D "/err.txt", "no directory") && !exists(D "/mm/k.npy"), "clear message, no k.npy");
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out " D "/mm --png " D "/mm/k.png 2> " D "/err.txt") == 2 &&
              contains(D "/err.txt", "is a directory") && !exists(D "/mm/k.png"),
          "ks --out DIRECTORY exits 2 naming it, no picture");
    /* ks through a symlink, into /dev/null, into a FIFO, into /dev/stdout */
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out " D "/mm/ref.npy 2>/dev/null") == 0, "ks");
    CHECK(symlink("ref_target.npy", D "/mm/link.npy") == 0, "symlink");
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out " D "/mm/link.npy --png /dev/null 2>/dev/null") == 0 &&
              is_link(D "/mm/link.npy") && same_bytes(D "/mm/ref_target.npy", D "/mm/ref.npy"),
          "ks --out LINK writes the target, --png /dev/null accepted");
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out /dev/stdout > " D "/mm/stdout.npy 2>/dev/null") == 0 &&
              same_bytes(D "/mm/stdout.npy", D "/mm/ref.npy"), "ks --out /dev/stdout > file");
    CHECK(sh("bin/massmap ks --shear " D "/mm/mock/shear.npy --out /dev/stdout 2>/dev/null | cat > " D "/mm/pipe.npy") == 0 &&
              same_bytes(D "/mm/pipe.npy", D "/mm/ref.npy"), "ks --out /dev/stdout | cat");
    CHECK(mkfifo(D "/mm/fifo", 0600) == 0, "mkfifo");
    CHECK(sh("cat " D "/mm/fifo > " D "/mm/fifo.npy & bin/massmap ks --shear " D "/mm/mock/shear.npy --out " D "/mm/fifo 2>/dev/null; "
             "st=$?; wait; exit $st") == 0 && same_bytes(D "/mm/fifo.npy", D "/mm/ref.npy"), "ks --out FIFO streams into it");
    {
        struct stat st;
        CHECK(lstat(D "/mm/fifo", &st) == 0 && S_ISFIFO(st.st_mode), "and the FIFO stays a FIFO");
    }
    /* a full disk (file-size limit): the earlier set stays as it was, no partial set, no temporary files */
    sh("cp -r " D "/mm/mock " D "/mm/before");
    CHECK(sh_fsize("bin/massmap mock --out " D "/mm/mock --size 64 --nfields 2 --seed 2 2> " D "/err.txt", 20000) != 0,
          "mock with files over the limit fails");
    CHECK(contains(D "/err.txt", "error: cannot write") && contains(D "/err.txt", "File too large"), "one line naming the file and the reason");
    CHECK(sh("diff -r " D "/mm/mock " D "/mm/before > /dev/null") == 0, "the earlier set is unchanged (every file, run.json too)");
    CHECK(count_temps(D "/mm/mock") == 0, "no temporary file left");
    /* the same into a new directory: nothing at all, not even the directory */
    CHECK(sh_fsize("bin/massmap mock --out " D "/mm/fresh --size 64 --nfields 2 2> " D "/err.txt", 20000) != 0 &&
              !exists(D "/mm/fresh"), "a failed first run leaves nothing, not even the directory it made");
    /* orphans of a killed run are removed by the next run, live ones kept */
    {
        char p1[256], p2[256];
        snprintf(p1, sizeof p1, D "/mm/mock/kappa.npy.tmp.%ld.3", dead_pid());
        snprintf(p2, sizeof p2, D "/mm/mock/kappa.npy.tmp.1.3");
        CHECK_OK(write_text(p1, "orphan"));
        CHECK_OK(write_text(p2, "live"));
        CHECK(sh("bin/massmap mock --out " D "/mm/mock --size 32 --nfields 1 2> " D "/err.txt") == 0, "mock again");
        CHECK(!exists(p1) && exists(p2) && contains(D "/err.txt", "removed 1 temporary file"), "the dead run's file removed, reported");
        remove(p2);
    }
    /* a real kill -9 in the middle of a run, then a run that cleans up */
    snprintf(cmd, sizeof cmd,
             "bin/massmap mock --out " D "/mm/killed --size 128 --nfields 16 2>/dev/null & p=$!; i=0; "
             "while [ $i -lt 400 ] && ! ls " D "/mm/killed 2>/dev/null | grep -q '\\.tmp\\.'; do sleep 0.05; i=$((i+1)); done; "
             "kill -9 $p; wait $p 2>/dev/null; ls -A " D "/mm/killed > " D "/ls_killed.txt");
    sh(cmd);
    if (contains(D "/ls_killed.txt", ".tmp.")) {
        CHECK(!exists(D "/mm/killed/run.json"), "killed run: no run.json");
        CHECK(sh("bin/massmap mock --out " D "/mm/killed --size 32 --nfields 1 2>/dev/null") == 0 && count_temps(D "/mm/killed") == 0 &&
                  contains(D "/mm/killed/run.json", "\"complete\": true"), "the next run removes the killed run's temporary files");
    } else SKIP("the killed run left no temporary file to clean (it ended first)");
    (void)n;
}

/* In a private mount namespace: a read-only tmpfs and a full one. */
static void test_mounts(void) {
    char cmd[4096];
    if (!have_bin(MM)) { SKIP("%s is not built", MM); return; }
    sh("rm -rf " D "/mnt " D "/mt && mkdir -p " D "/mnt " D "/mt");
    if (!unshare_ok()) { SKIP("no private mount namespace (unshare -m as root): read-only and full tmpfs cases"); return; }
    CHECK(sh("bin/massmap mock --out " D "/mt/mock --size 32 --nfields 1 2>/dev/null") == 0, "mock");
    /* read-only: ks --png /ro/k.png leaves no k.npy; mock --out /ro/x exits 2 before the work */
    snprintf(cmd, sizeof cmd,
             "unshare -m sh -c 'mount -t tmpfs -o ro,size=64k tmpfs " D "/mnt || exit 99; "
             "bin/massmap ks --shear " D "/mt/mock/shear.npy --out " D "/mt/k.npy --png " D "/mnt/k.png 2> " D "/mt/err1.txt; echo $? > " D "/mt/rc1; "
             "bin/massmap mock --out " D "/mnt/x --size 32 2> " D "/mt/err2.txt; echo $? > " D "/mt/rc2; "
             "bin/lss-theory cl --nell 5 --out " D "/mnt 2> " D "/mt/err3.txt; echo $? > " D "/mt/rc3; "
             "bin/lss-stats ps --maps " D "/mt/mock/kappa.npy --out " D "/mnt/ps.csv 2> " D "/mt/err4.txt; echo $? > " D "/mt/rc4; "
             "bin/deeplss sim --out " D "/mnt/dl 2> " D "/mt/err5.txt; echo $? > " D "/mt/rc5'");
    CHECK(sh(cmd) == 0, "namespace run");
    CHECK(contains(D "/mt/rc1", "2\n") && contains(D "/mt/err1.txt", "Read-only file system") && !exists(D "/mt/k.npy"),
          "ks --png on a read-only file system: exit 2, clear message, no k.npy");
    CHECK(contains(D "/mt/rc2", "2\n") && contains(D "/mt/err2.txt", "Read-only"), "mock --out on a read-only file system: exit 2");
    if (have_bin("bin/lss-theory")) CHECK(contains(D "/mt/rc3", "2\n") && contains(D "/mt/err3.txt", "Read-only"), "lss-theory --out read-only: exit 2");
    if (have_bin("bin/lss-stats")) CHECK(contains(D "/mt/rc4", "2\n") && contains(D "/mt/err4.txt", "Read-only"), "lss-stats --out read-only: exit 2");
    if (have_bin("bin/deeplss")) CHECK(contains(D "/mt/rc5", "2\n") && contains(D "/mt/err5.txt", "Read-only"), "deeplss --out read-only: exit 2 before the work");
    /* full: an earlier complete set in a 200 kB tmpfs survives a run that fills it */
    snprintf(cmd, sizeof cmd,
             "unshare -m sh -c 'mount -t tmpfs -o size=200k tmpfs " D "/mnt || exit 99; "
             "bin/massmap mock --out " D "/mnt/m --size 32 --nfields 1 2>/dev/null || exit 98; "
             "(cd " D "/mnt/m && cksum * > ../../mt/before.txt); "
             "bin/massmap mock --out " D "/mnt/m --size 96 --nfields 4 --seed 5 2> " D "/mt/errf.txt; echo $? > " D "/mt/rcf; "
             "(cd " D "/mnt/m && cksum * > ../../mt/after.txt); ls -A " D "/mnt/m > " D "/mt/lsf.txt; "
             "bin/massmap mock --out " D "/mnt/n --size 96 --nfields 4 2>/dev/null; ls -A " D "/mnt/n > " D "/mt/lsn.txt 2>/dev/null; true'");
    CHECK(sh(cmd) == 0, "namespace run (full disk)");
    CHECK(!contains(D "/mt/rcf", "0\n") && contains(D "/mt/errf.txt", "No space left"), "mock on a full disk fails naming ENOSPC");
    CHECK(same_bytes(D "/mt/before.txt", D "/mt/after.txt"), "the earlier set is unchanged, every file");
    CHECK(!contains(D "/mt/lsf.txt", ".tmp."), "no temporary file left");
    {
        long n;
        char *b = slurp(D "/mt/lsn.txt", &n);
        CHECK(b && n == 0, "a first run on a full disk leaves nothing ('%s')", b ? b : "?");
        free(b);
    }
}

static void test_other_drivers(void) {
    if (have_bin("bin/lss-theory")) {
        sh("rm -rf " D "/th");
        CHECK(sh("bin/lss-theory cl --nell 5 --out " D "/th --png " D "/nodir/cl.png 2> " D "/err.txt") == 2, "lss-theory --png unwritable: exit 2");
        CHECK(!exists(D "/th/cl.csv") && !exists(D "/th/run.json"), "and no cl.csv nor run.json");
        CHECK(sh("bin/lss-theory cl --nell 5 --out " D "/th --png " D "/th/cl.png 2>/dev/null") == 0 && exists(D "/th/cl.png") &&
                  contains(D "/th/run.json", "\"cl.csv\"") && contains(D "/th/run.json", "\"complete\": true"),
              "lss-theory --out: cl.csv, picture, run.json complete");
        CHECK(sh("bin/lss-theory cl --nell 5 --png /dev/null > /dev/null 2>&1") == 0, "lss-theory --png /dev/null");
    } else SKIP("bin/lss-theory is not built");
    if (have_bin("bin/lss-stats")) {
        CHECK(sh("bin/lss-stats ps --maps " D "/none.npy --out " D "/nodir/ps.csv 2> " D "/err.txt") == 2 &&
                  contains(D "/err.txt", "no directory"), "lss-stats: unwritable --out found before reading the maps");
    } else SKIP("bin/lss-stats is not built");
    if (have_bin("bin/deeplss")) {
        CHECK_OK(write_text(D "/afile", "x"));
        CHECK(sh("bin/deeplss sim --out " D "/afile 2> " D "/err.txt") == 2 && contains(D "/err.txt", "not a directory"),
              "deeplss --out a regular file: exit 2 before the work");
    } else SKIP("bin/deeplss is not built");
}

/* ------------------------------------------------------------------ item 6: checkpoint sets */
typedef struct {
    lss_store *st;
    lss_optim *opt;
    lss_graph *g, *ge;
    lss_mlp m;
    uint64_t seed;
} tnet;
static int tnet_make(tnet *r, uint64_t seed, int hidden) {
    int sizes[3] = {3, hidden, 1};
    lss_optim_opts oo;
    memset(r, 0, sizeof *r);
    r->seed = seed;
    memset(&oo, 0, sizeof oo);
    oo.kind = LSS_OPT_ADAM; oo.lr = 0.02;
    if (lss_store_create(seed, &r->st) || lss_mlp_init(&r->m, r->st, "m", 2, sizes, LSS_ACT_TANH) ||
        lss_optim_create(r->st, &oo, &r->opt) || lss_graph_create(&r->g) || lss_graph_create(&r->ge))
        return -1;
    lss_graph_set_training(r->ge, 0);
    return 0;
}
static void tnet_free(tnet *r) { lss_graph_free(r->g); lss_graph_free(r->ge); lss_optim_free(r->opt); lss_store_free(r->st); }
static double tnet_loss(tnet *r, lss_graph *g, uint64_t stream, int64_t t, int train) {
    float x[8 * 3], y[8];
    lss_rng rng;
    lss_rng_init(&rng, r->seed, stream + (uint64_t)t);
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 3; j++) x[i * 3 + j] = (float)lss_rng_normal(&rng);
        y[i] = x[i * 3] - 0.5f * x[i * 3 + 1] + 0.2f;
    }
    lss_graph_reset(g);
    lss_tensor *l = lss_op_mse(g, lss_mlp_forward(g, &r->m, lss_view(g, x, 2, (int64_t[]){8, 3})), lss_view(g, y, 2, (int64_t[]){8, 1}));
    if (!l) return NAN;
    if (train) {
        lss_store_zero_grad(r->st);
        if (lss_backward(g, l) || lss_optim_step(r->opt)) return NAN;
    }
    return l->data[0];
}
typedef struct { tnet *n[2]; int k; } tset;
static int tset_step(void *u, int64_t t, double *loss) {
    tset *s = (tset *)u;
    for (int i = 0; i < s->k; i++)
        if (!isfinite(loss[i] = tnet_loss(s->n[i], s->n[i]->g, 0, t, 1))) return LSS_ERR_NUMERIC;
    return LSS_OK;
}
static int tset_eval(void *u, double *loss) {
    tset *s = (tset *)u;
    for (int i = 0; i < s->k; i++) loss[i] = tnet_loss(s->n[i], s->n[i]->ge, 1000000, 0, 0);
    return LSS_OK;
}
static int64_t ckpt_step(const char *path, uint64_t seed, int hidden) {
    tnet r;
    int64_t t = -1;
    if (tnet_make(&r, seed, hidden) == 0 && lss_ckpt_load(path, r.st, r.opt) == LSS_OK) t = lss_optim_steps(r.opt);
    tnet_free(&r);
    return t;
}
static int store_eq(lss_store *a, lss_store *b) {
    return lss_store_size(a) == lss_store_size(b) && !memcmp(lss_store_data(a), lss_store_data(b), sizeof(float) * (size_t)lss_store_size(a));
}
/* value of column `name` at row r of a CSV (NaN when absent) */
static double csv_at(const lss_csv *c, const char *name, int64_t r) {
    int j = lss_csv_col(c, name);
    return j < 0 || r >= c->nrows ? NAN : c->data[r * c->ncols + j];
}
static int64_t csv_row_of(const lss_csv *c, double step) {
    for (int64_t r = 0; r < c->nrows; r++) if (c->data[r * c->ncols] == step) return r;
    return -1;
}

static void run_set(tnet *a, tnet *b, int which, int64_t steps, const char *csv, int resume, lss_train_result *res, int *status) {
    /* which: 1 a only, 2 b only, 3 both */
    lss_train_net nets[2];
    tset s;
    lss_train_opts o;
    int k = 0;
    memset(&o, 0, sizeof o);
    memset(&s, 0, sizeof s);
    if (which & 1) { lss_train_net n = {"a", a->st, a->opt, D "/ck/a.ckpt"}; nets[k] = n; s.n[k++] = a; }
    if (which & 2) { lss_train_net n = {"b", b->st, b->opt, D "/ck/b.ckpt"}; nets[k] = n; s.n[k++] = b; }
    s.k = k;
    o.steps = steps; o.eval_every = 10; o.ckpt_every = 20; o.loss_csv = csv; o.resume = resume;
    o.step = tset_step; o.eval = tset_eval; o.user = &s;
    *status = lss_train(nets, k, &o, res);
}

static void test_checkpoint_sets(void) {
    tnet a, b, ua, ub;
    lss_train_result res;
    int s;
    struct rlimit old, rl;
    sh("rm -rf " D "/ck && mkdir -p " D "/ck");
    /* reference: both networks trained 0 -> 60 without interruption */
    CHECK(tnet_make(&ua, 11, 4) == 0 && tnet_make(&ub, 12, 96) == 0, "make");
    run_set(&ua, &ub, 3, 60, D "/ck/ref.csv", 0, &res, &s);
    CHECK_OK(s);
    rename(D "/ck/a.ckpt", D "/ck/ref_a.ckpt"); rename(D "/ck/b.ckpt", D "/ck/ref_b.ckpt");
    /* 0 -> 20, then 20 -> 40 with a file-size limit that b's checkpoint (96 hidden: ~ 8 kB) exceeds and a's does not */
    CHECK(tnet_make(&a, 11, 4) == 0 && tnet_make(&b, 12, 96) == 0, "make");
    run_set(&a, &b, 3, 20, D "/ck/loss.csv", 1, &res, &s);
    CHECK_OK(s);
    CHECK(fsize(D "/ck/a.ckpt") > 0 && fsize(D "/ck/a.ckpt") < 3000 && fsize(D "/ck/b.ckpt") > 6000,
          "checkpoint sizes a %ld, b %ld bytes", fsize(D "/ck/a.ckpt"), fsize(D "/ck/b.ckpt"));
    getrlimit(RLIMIT_FSIZE, &old);
    rl = old;
    rl.rlim_cur = 4000;
    signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &rl) == 0, "setrlimit");
    run_set(&a, &b, 3, 40, D "/ck/loss.csv", 1, &res, &s);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_DFL);
    CHECK(s == LSS_ERR_IO && strstr(lss_last_error(), "b.ckpt"), "the failed save is an I/O error naming b.ckpt (%d: %s)", s, lss_last_error());
    CHECK(ckpt_step(D "/ck/a.ckpt", 11, 4) == 20 && ckpt_step(D "/ck/b.ckpt", 12, 96) == 20,
          "both checkpoints still at step 20 (a %lld, b %lld): the set is consistent", (long long)ckpt_step(D "/ck/a.ckpt", 11, 4),
          (long long)ckpt_step(D "/ck/b.ckpt", 12, 96));
    CHECK(count_temps(D "/ck") == 0, "no temporary checkpoint left");
    tnet_free(&a); tnet_free(&b);
    /* resume works from the common step; then a alone to 60, then b alone to 60 */
    CHECK(tnet_make(&a, 11, 4) == 0 && tnet_make(&b, 12, 96) == 0, "make");
    run_set(&a, &b, 3, 40, D "/ck/loss.csv", 1, &res, &s);
    CHECK(s == LSS_OK && res.steps_done == 40, "resumed from step 20 to 40 (%d: %s)", s, lss_last_error());
    run_set(&a, &b, 1, 60, D "/ck/loss.csv", 1, &res, &s);
    CHECK_OK(s);
    {
        lss_csv c;
        memset(&c, 0, sizeof c);
        CHECK_OK(lss_csv_read(D "/ck/loss.csv", &c));
        CHECK(lss_csv_col(&c, "train_a") > 0 && lss_csv_col(&c, "valid_a") > 0 && lss_csv_col(&c, "train_b") > 0 &&
                  lss_csv_col(&c, "valid_b") > 0 && c.nrows == 6,
              "a resumed alone: b's columns kept (%d columns, %lld rows)", c.ncols, (long long)c.nrows);
        CHECK(isfinite(csv_at(&c, "valid_b", csv_row_of(&c, 40))) && isnan(csv_at(&c, "valid_b", csv_row_of(&c, 60))) &&
                  isfinite(csv_at(&c, "valid_a", csv_row_of(&c, 60))), "b's history to step 40, a's to 60");
        lss_csv_free(&c);
    }
    run_set(&a, &b, 2, 60, D "/ck/loss.csv", 1, &res, &s);
    CHECK_OK(s);
    CHECK(store_eq(a.st, ua.st) && store_eq(b.st, ub.st), "a then b resumed alone: parameters bitwise those of the joint run");
    {
        lss_csv c, r;
        int ok = 1;
        memset(&c, 0, sizeof c);
        memset(&r, 0, sizeof r);
        CHECK_OK(lss_csv_read(D "/ck/loss.csv", &c));
        CHECK_OK(lss_csv_read(D "/ck/ref.csv", &r));
        ok = c.nrows == r.nrows && c.ncols == r.ncols;
        for (int64_t i = 0; ok && i < r.nrows; i++)
            for (int j = 0; j < r.ncols; j++) {
                int64_t ci = csv_row_of(&c, r.data[i * r.ncols]);
                if (ci < 0 || csv_at(&c, r.names[j], ci) != r.data[i * r.ncols + j]) ok = 0;
            }
        CHECK(ok, "the loss CSV holds every network's full history, equal to the joint run's (by column name)");
        lss_csv_free(&c); lss_csv_free(&r);
    }
    /* a CSV that lacks one of this run's columns is refused on resume */
    CHECK_OK(lss_csv_write(D "/ck/bad.csv", 2, (const char *const[]){"step", "train_z"}, 1, (const double[]){20, 1.0}));
    {
        tnet c1, c2;
        CHECK(tnet_make(&c1, 11, 4) == 0 && tnet_make(&c2, 12, 96) == 0, "make");
        run_set(&c1, &c2, 3, 80, D "/ck/bad.csv", 1, &res, &s);
        CHECK(s == LSS_ERR_FORMAT && strstr(lss_last_error(), "no column"), "missing column named: %s", lss_last_error());
        tnet_free(&c1); tnet_free(&c2);
    }
    tnet_free(&a); tnet_free(&b); tnet_free(&ua); tnet_free(&ub);
}

/* ------------------------------------------------------------------ item 7: the drawing code */
static void test_figures(void) {
    lss_image im;
    char b[32];
    double t[64], lo = 0, hi = 0;
    int n, minor, ok = 1, x, y;
    float m[4] = {-0.5f, 0.1f, 0.2f, 0.3f};
    unsigned char c[3] = {0, 0, 0};
    /* colour bar: a white gap between every tick mark and its label ("0.1" must not read "-0.1") */
    CHECK_OK(lss_image_init(&im, 200, 220));
    lss_image_colorbar_cmap(&im, 10, 10, 12, 180, -0.2, 0.2, LSS_CMAP_RDBU);
    for (y = 0; y < 220; y++)
        for (x = 10 + 12 + 5; x < 10 + 12 + 8; x++) {
            const unsigned char *p = im.rgb + 3 * ((size_t)y * im.w + x);
            if (p[0] != 255 || p[1] != 255 || p[2] != 255) ok = 0;
        }
    CHECK(ok, "colour bar: the columns between tick marks and labels are blank");
    ok = 0;
    for (y = 0; y < 220; y++) ok |= im.rgb[3 * ((size_t)y * im.w + 10 + 12 + 2)] != 255;
    CHECK(ok, "colour bar: tick marks drawn");
    /* text anywhere (edges, vertical, huge sizes) stays inside the image (ASan) */
    lss_image_text_size(&im, -30, -5, "clipped at the corner", c, 3.0);
    lss_image_text_vertical(&im, 195, 5, "vertical, off the top", c, 2.0);
    lss_image_text_size(&im, 150, 210, "off the bottom right", c, 1.5);
    lss_image_free(&im);
    /* ticks: log axes at 1, 2, 5 x 10^k (never 1585 or 2512), decades beyond 2.5 decades */
    n = lss__log_ticks(log10(1500.0), log10(30000.0), t, 64, &minor);
    CHECK(n == 4 && t[0] == 2000 && t[1] == 5000 && t[2] == 10000 && t[3] == 20000 && !minor, "1500..30000: 2000 5000 1e4 2e4 (%d ticks)", n);
    n = lss__log_ticks(-14.5, -9.5, t, 64, &minor);
    CHECK(n == 5 && minor && fabs(t[0] / 1e-14 - 1) < 1e-12, "1e-14.5..1e-9.5: decades with minor marks (%d)", n);
    n = lss__lin_ticks(-0.23, 0.41, 6, t, 64);
    CHECK(n >= 4 && n <= 8 && t[0] == -0.2 && t[n - 1] == 0.4, "linear ticks -0.2 .. 0.4 (%d)", n);
    lss_format_tick(1e-5, b, sizeof b);
    CHECK(!strcmp(b, "1e-5"), "1e-5 (%s)", b);
    lss_format_tick(1e6, b, sizeof b);
    CHECK(!strcmp(b, "1e6"), "1e6 (%s)", b);
    /* the diverging map is white at zero; its range is symmetric */
    lss_map_range(m, 4, LSS_CMAP_RDBU, &lo, &hi);
    CHECK(lo == -0.5 && hi == 0.5, "signed map range centred on zero (%g, %g)", lo, hi);
    lss_rdbu(0.5, c);
    CHECK(c[0] > 240 && c[1] > 240 && c[2] > 240, "RdBu is white in the middle");
    lss_rdbu(0.0, c);
    CHECK(c[2] > c[0], "blue below");
    lss_rdbu(1.0, c);
    CHECK(c[0] > c[2], "red above");
    /* a line plot with everything on (NaN, negatives on log axes, one point) does not crash */
    {
        double xs[5] = {1, 2, NAN, 4, 5}, y0[5] = {1e3, -1, 3, NAN, 5}, y1[5] = {2, 2, 2, 2, 2}, e[5] = {0.1, 0.2, 0.3, 0.4, 0.5};
        const double *ys[2] = {y0, y1}, *ee[2] = {e, NULL}, *bl[2] = {NULL, y1}, *bh[2] = {NULL, y0};
        const char *lab[2] = {"a", "b"};
        int st[2] = {LSS_LINE_DASHED, LSS_LINE_NONE}, mk[2] = {1, 0};
        lss_plot_opts po;
        memset(&po, 0, sizeof po);
        po.logy = 1; po.yerr = ee; po.band_lo = bl; po.band_hi = bh; po.style = st; po.marker = mk; po.robust_y = 1; po.legend_out = 1;
        CHECK_OK(lss_plot_lines(D "/plot.png", &po, 2, 5, xs, ys, lab));
        CHECK_OK(lss_plot_lines(D "/plot1.png", NULL, 1, 1, xs, ys, NULL));
        CHECK_OK(lss_png_map_cmap(D "/map.png", m, 2, 2, 0, 0, "signed", 0, LSS_CMAP_RDBU));
    }
}

int main(void) {
    sh("mkdir -p " D);
    RUN(test_figures);
    RUN(test_symlinks);
    RUN(test_devices);
    RUN(test_writer_api);
    RUN(test_checkpoint_sets);
    RUN(test_massmap_outputs);
    RUN(test_mounts);
    RUN(test_other_drivers);
    if (!getenv("LSS_KEEP")) sh("rm -rf " D);
    LSS_TEST_END();
}
