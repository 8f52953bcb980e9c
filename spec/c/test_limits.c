/*
 * test_limits.c — kernel-enforced limits of sandboxed workers
 * (core/sandbox/limits.h): namespaces, rlimits, no_new_privs, Landlock,
 * seccomp, and all of them together around a real tool state with `fs.*`.
 *
 * Everything here is irreversible, so every test that applies something does
 * it in a fork()ed child with its own alarm() timeout; the parent asserts on
 * the child's exit status (0: every check passed; a signal when the policy
 * says the child must die) and, where there is something to say, on a
 * message the child writes to a pipe. Children end with _exit(): no atexit
 * handler (LeakSanitizer's included) runs inside a sandbox.
 *
 * Limits are asserted by their outcome (errno, signal), never by timing.
 */
#include "json.h"
#include "sandbox/fs.h"
#include "sandbox/limits.h"
#include "sandbox/lstate.h"
#include "testlib.h"

#include <lauxlib.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <lua.h>
#include <lualib.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <math.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
/* The RLIMIT_AS test wants malloc to return NULL, not an ASan report. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "allocator_may_return_null=1";
}
#endif

/* ---- child harness ------------------------------------------------------- */

static int child_failed;   /* in the child: failed checks */

#define CC(cond)                                                          \
  do {                                                                    \
    if (!(cond)) {                                                        \
      int cc_e = errno;                                                   \
      fprintf(stderr, "  child %s:%d: check failed: %s (errno %d: %s)\n", \
              __FILE__, __LINE__, #cond, cc_e, strerror(cc_e));           \
      child_failed++;                                                     \
    }                                                                     \
  } while (0)

typedef int (*child_fn)(void *arg, int msg_fd);

/* Run fn(arg, msg_fd) in a child with an alarm of `timeout` seconds; the
 * child exits with fn's result (0 = pass). Returns the wait status; copies
 * what the child wrote to msg_fd into msg (if not NULL). */
static int in_child(child_fn fn, void *arg, unsigned timeout, char *msg,
                    size_t msglen) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(p[0]);
    alarm(timeout);
    child_failed = 0;
    int rc = fn(arg, p[1]);
    fflush(stdout);
    _exit(rc || child_failed ? 1 : 0);
  }
  close(p[1]);
  size_t got = 0;
  char sink[256];
  for (;;) {
    char *dst = msg && got + 1 < msglen ? msg + got : sink;
    size_t room = msg && got + 1 < msglen ? msglen - 1 - got : sizeof sink;
    ssize_t r = read(p[0], dst, room);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (dst != sink) got += (size_t)r;
  }
  if (msg && msglen) msg[got] = '\0';
  close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  return st;
}

static int exited_ok(int st) {
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
  if (WIFEXITED(st))
    fprintf(stderr, "  child exited with %d\n", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    fprintf(stderr, "  child killed by signal %d (%s)\n", WTERMSIG(st),
            strsignal(WTERMSIG(st)));
  return 0;
}

static int killed_by(int st, int sig) {
  if (WIFSIGNALED(st) && WTERMSIG(st) == sig) return 1;
  fprintf(stderr, "  expected signal %d (%s), got ", sig, strsignal(sig));
  if (WIFEXITED(st)) fprintf(stderr, "exit %d\n", WEXITSTATUS(st));
  else if (WIFSIGNALED(st)) fprintf(stderr, "signal %d\n", WTERMSIG(st));
  else fprintf(stderr, "status 0x%x\n", st);
  return 0;
}

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0) {
    ssize_t w = write(fd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    (void)w;
  }
}

/* ---- scratch directories ---------------------------------------------------- */

static char base[64], allowed[128], outside[128];

static void up(void) {
  strcpy(base, "/tmp/rd-lim-XXXXXX");
  CHECK(mkdtemp(base) != NULL);
  snprintf(allowed, sizeof allowed, "%s/allowed", base);
  snprintf(outside, sizeof outside, "%s/outside", base);
  CHECK(mkdir(allowed, 0755) == 0);
  CHECK(mkdir(outside, 0755) == 0);
  char p[256];
  snprintf(p, sizeof p, "%s/in.txt", allowed);
  tl_put_file(p, "INSIDE");
  snprintf(p, sizeof p, "%s/secret.txt", outside);
  tl_put_file(p, "TOPSECRET");
  snprintf(p, sizeof p, "%s/one.txt", outside);
  tl_put_file(p, "ONE");
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(p);
}

static void down(void) { nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int read_all(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t r = read(fd, buf, len - 1);
  close(fd);
  if (r < 0) return -1;
  buf[r] = '\0';
  return (int)r;
}

/* The filter, compiled once by the parent for every seccomp test. */
static rd_seccomp_prog *prog;

static rd_seccomp_prog *the_prog(void) {
  if (!prog) {
    rd_error err;
    int rc = rd__seccomp_compile(&prog, &err);
    CHECK(rc == RD_OK);
    if (rc != RD_OK) fprintf(stderr, "  compile: %s\n", err.message);
  }
  return prog;
}

static int apply_or_fail(const rd_seccomp_prog *p) {
  rd_error err;
  int rc = rd__seccomp_apply(p, &err);
  if (rc != RD_OK) fprintf(stderr, "  apply: %s\n", err.message);
  return rc;
}

/* ---- namespaces ----------------------------------------------------------------- */

struct ns_arg {
  int port;
  char net[64], ipc[64], uts[64], user[64];
};

static void ns_id(const char *name, char *out, size_t len) {
  char p[64];
  snprintf(p, sizeof p, "/proc/self/ns/%s", name);
  ssize_t r = readlink(p, out, len - 1);
  out[r > 0 ? r : 0] = '\0';
}

static int child_ns(void *argp, int msg) {
  struct ns_arg *a = argp;
  rd_error err;
  int rc = rd__limits_namespaces(RD_NS_NET | RD_NS_IPC | RD_NS_UTS, &err);
  CC(rc == RD_OK);
  if (rc != RD_OK) {
    fprintf(stderr, "  namespaces: %s\n", err.message);
    return 1;
  }
  char id[64];
  ns_id("net", id, sizeof id);
  CC(strcmp(id, a->net) != 0);
  ns_id("ipc", id, sizeof id);
  CC(strcmp(id, a->ipc) != 0);
  ns_id("uts", id, sizeof id);
  CC(strcmp(id, a->uts) != 0);

  struct if_nameindex *ifs = if_nameindex();
  CC(ifs != NULL);
  int n = 0;
  for (struct if_nameindex *i = ifs; i && i->if_index; i++, n++)
    CC(strcmp(i->if_name, "lo") == 0);
  CC(n == 1);
  if (ifs) if_freenameindex(ifs);

  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CC(s >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)a->port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CC(connect(s, (struct sockaddr *)&sa, sizeof sa) != 0);
  close(s);

  /* Our hostname is ours alone now. */
  CC(sethostname("rd-sandbox", 10) == 0);
  say(msg, "%s", rd__limits_report());
  return 0;
}

TEST(namespaces_net_ipc_uts) {
  struct ns_arg a;
  memset(&a, 0, sizeof a);
  ns_id("net", a.net, sizeof a.net);
  ns_id("ipc", a.ipc, sizeof a.ipc);
  ns_id("uts", a.uts, sizeof a.uts);
  char host_before[256] = "", host_after[256] = "";
  gethostname(host_before, sizeof host_before);

  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(l >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0);
  CHECK(listen(l, 4) == 0);
  socklen_t sl = sizeof sa;
  CHECK(getsockname(l, (struct sockaddr *)&sa, &sl) == 0);
  a.port = ntohs(sa.sin_port);

  char msg[2048];
  int st = in_child(child_ns, &a, 20, msg, sizeof msg);
  CHECK(exited_ok(st));
  CHECK(strstr(msg, "namespaces: available (net ipc uts)") != NULL);
  if (!strstr(msg, "namespaces: available")) fprintf(stderr, "  report: %s\n", msg);

  /* The parent's listener was never reached and its hostname is unchanged. */
  int flags = fcntl(l, F_GETFL);
  fcntl(l, F_SETFL, flags | O_NONBLOCK);
  int c = accept(l, NULL, NULL);
  CHECK(c < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  if (c >= 0) close(c);
  close(l);
  gethostname(host_after, sizeof host_after);
  CHECK_STR(host_after, host_before);
}

static int child_userns(void *argp, int msg) {
  struct ns_arg *a = argp;
  /* An unprivileged worker: nobody, no groups — and, having changed uid,
   * not dumpable (its /proc/self files belong to root). */
  CC(setgroups(0, NULL) == 0);
  CC(setgid(65534) == 0);
  CC(setuid(65534) == 0);
  CC(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0);
  rd_error err;
  int rc = rd__limits_namespaces(RD_NS_NET | RD_NS_UTS, &err);
  if (rc == RD_ENOSYS) {
    say(msg, "SKIP %s", err.message);
    return 0;
  }
  CC(rc == RD_OK);
  if (rc != RD_OK) {
    fprintf(stderr, "  namespaces: %s\n", err.message);
    return 1;
  }
  char id[64];
  ns_id("user", id, sizeof id);
  CC(strcmp(id, a->user) != 0);
  ns_id("net", id, sizeof id);
  CC(strcmp(id, a->net) != 0);
  CC(getuid() == 65534 && getgid() == 65534);
  CC(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0);   /* restored */
  say(msg, "%s", rd__limits_report());
  return 0;
}

TEST(namespaces_unprivileged_through_user_namespace) {
  struct ns_arg a;
  memset(&a, 0, sizeof a);
  ns_id("net", a.net, sizeof a.net);
  ns_id("user", a.user, sizeof a.user);
  char msg[2048];
  int st = in_child(child_userns, &a, 20, msg, sizeof msg);
  CHECK(exited_ok(st));
  if (strncmp(msg, "SKIP", 4) == 0) {
    printf("  skipped: unprivileged user namespaces unavailable: %s\n", msg + 5);
    return;
  }
  CHECK(strstr(msg, "through a new user namespace") != NULL);
}

TEST(namespaces_bad_flags_and_none) {
  rd_error err;
  CHECK(rd__limits_namespaces(0x100, &err) == RD_EINVAL);
  CHECK(strstr(err.message, "unknown flags") != NULL);
  CHECK(rd__limits_namespaces(0, &err) == RD_OK);   /* changes nothing */
}

/* ---- rlimits ---------------------------------------------------------------------- */

static uint64_t vm_size(void) {
  char buf[128];
  if (read_all("/proc/self/statm", buf, sizeof buf) < 0) return 0;
  return strtoull(buf, NULL, 10) * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int child_as(void *arg, int msg) {
  uint64_t now = vm_size();
  CC(now > 0);
  rd_limits l = {0};
  l.address_space = now + 64u * 1024 * 1024;
  rd_error err;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  struct rlimit r;
  CC(getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur == l.address_space &&
     r.rlim_max == l.address_space);
  void *big = malloc((size_t)256 * 1024 * 1024);
  CC(big == NULL);
  free(big);
  void *small = malloc(1024 * 1024);
  CC(small != NULL);
  if (small) memset(small, 1, 1024 * 1024);
  free(small);
  return 0;
}

TEST(rlimit_address_space) {
  CHECK(exited_ok(in_child(child_as, NULL, 20, NULL, 0)));
}

static int child_fsize(void *arg, int msg) {
  const int ignore = *(const int *)arg;
  if (ignore) signal(SIGXFSZ, SIG_IGN);
  char path[256];
  snprintf(path, sizeof path, "%s/big.bin", allowed);
  rd_limits l = {0};
  l.file_size = 4096;
  rd_error err;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CC(fd >= 0);
  char buf[8192];
  memset(buf, 'x', sizeof buf);
  CC(write(fd, buf, sizeof buf) == 4096);   /* up to the limit */
  errno = 0;
  CC(write(fd, buf, 1) == -1 && errno == EFBIG);
  close(fd);
  return ignore ? 0 : 3;   /* without SIG_IGN the write must have killed us */
}

TEST(rlimit_file_size) {
  up();
  int ignore = 1;
  CHECK(exited_ok(in_child(child_fsize, &ignore, 20, NULL, 0)));
  ignore = 0;
  CHECK(killed_by(in_child(child_fsize, &ignore, 20, NULL, 0), SIGXFSZ));
  down();
}

static int child_cpu(void *arg, int msg) {
  rd_limits l = {0};
  l.cpu_seconds = 1;
  rd_error err;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  struct rlimit r;
  CC(getrlimit(RLIMIT_CPU, &r) == 0 && r.rlim_cur >= 1 &&
     r.rlim_max == r.rlim_cur + 1);
  if (child_failed) return 1;
  volatile uint64_t x = 0;
  for (;;) x++;   /* until SIGXCPU (the alarm is the safety net) */
  return 2;
}

TEST(rlimit_cpu_kills_with_sigxcpu) {
  CHECK(killed_by(in_child(child_cpu, NULL, 30, NULL, 0), SIGXCPU));
}

static int child_nofile(void *arg, int msg) {
  rd_limits l = {0};
  l.open_files = 16;
  rd_error err;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  int fd, last = -1, n = 0;
  while ((fd = open("/dev/null", O_RDONLY)) >= 0 && n < 100) {
    last = fd;
    n++;
  }
  CC(fd < 0 && errno == EMFILE);
  CC(last >= 0 && last < 16);
  struct rlimit r;
  CC(getrlimit(RLIMIT_CORE, &r) == 0 && r.rlim_cur == 0 && r.rlim_max == 0);
  CC(getrlimit(RLIMIT_NPROC, &r) == 0 && r.rlim_cur == 0 && r.rlim_max == 0);
  CC(strstr(rd__limits_report(), "rlimits: available (") != NULL);
  return 0;
}

TEST(rlimit_open_files_core_nproc) {
  CHECK(exited_ok(in_child(child_nofile, NULL, 20, NULL, 0)));
}

static int child_never_raise(void *arg, int msg) {
  struct rlimit r = {32, 64};
  CC(setrlimit(RLIMIT_NOFILE, &r) == 0);
  rd_limits l = {0};
  l.open_files = 1000;
  rd_error err;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  CC(getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur == 64 && r.rlim_max == 64);
  CC(strstr(rd__limits_report(), "rlimits: degraded (") != NULL);
  CC(strstr(rd__limits_report(), "RLIMIT_NOFILE") != NULL);
  return 0;
}

TEST(rlimit_never_raised_above_hard) {
  CHECK(exited_ok(in_child(child_never_raise, NULL, 20, NULL, 0)));
}

TEST(rlimit_bad_arguments) {
  /* Refused before any setrlimit: safe in the parent. */
  rd_error err;
  rd_limits l = {0};
  CHECK(rd__limits_apply(NULL, &err) == RD_EINVAL);
  l.cpu_seconds = -1;
  CHECK(rd__limits_apply(&l, &err) == RD_EINVAL);
  l.cpu_seconds = NAN;
  CHECK(rd__limits_apply(&l, &err) == RD_EINVAL);
  l.cpu_seconds = 0;
  l.open_files = -3;
  CHECK(rd__limits_apply(&l, &err) == RD_EINVAL);
}

static int child_nnp(void *arg, int msg) {
  rd_error err;
  CC(rd__limits_no_new_privs(&err) == RD_OK);
  CC(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
  CC(rd__limits_no_new_privs(&err) == RD_OK);   /* idempotent */
  CC(strstr(rd__limits_report(), "no_new_privs: available") != NULL);
  return 0;
}

TEST(no_new_privs) {
  CHECK(exited_ok(in_child(child_nnp, NULL, 20, NULL, 0)));
}

/* ---- Landlock ------------------------------------------------------------------------ */

static int landlock_or_skip(const char *const *paths, size_t n, int msg) {
  rd_error err;
  int rc = rd__landlock_restrict(paths, n, &err);
  if (rc == RD_ENOSYS) {
    say(msg, "SKIP %s", err.message);
    return 1;
  }
  CC(rc == RD_OK);
  if (rc != RD_OK) fprintf(stderr, "  landlock: %s\n", err.message);
  return rc != RD_OK;
}

static int open_errno(const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC, 0644);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return errno;
}

static int child_landlock(void *arg, int msg) {
  char p[256], q[256], buf[64];
  snprintf(p, sizeof p, "%s/one.txt", outside);
  const char *paths[] = {allowed, "/nonexistent/rd-lim", p};
  if (landlock_or_skip(paths, 3, msg)) return child_failed;

  /* Inside: read, create, write, mkdir, remove, rename, truncate. */
  snprintf(p, sizeof p, "%s/in.txt", allowed);
  CC(read_all(p, buf, sizeof buf) == 6 && strcmp(buf, "INSIDE") == 0);
  snprintf(p, sizeof p, "%s/new.txt", allowed);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CC(fd >= 0);
  CC(write(fd, "NEW", 3) == 3);
  close(fd);
  CC(read_all(p, buf, sizeof buf) == 3 && strcmp(buf, "NEW") == 0);
  CC(truncate(p, 1) == 0);
  snprintf(q, sizeof q, "%s/sub", allowed);
  CC(mkdir(q, 0755) == 0);
  snprintf(q, sizeof q, "%s/sub/moved.txt", allowed);
  CC(rename(p, q) == 0);   /* REFER: into another directory beneath */
  CC(unlink(q) == 0);
  snprintf(q, sizeof q, "%s/sub", allowed);
  CC(rmdir(q) == 0);

  /* A single file allowed by name: that file only. */
  snprintf(p, sizeof p, "%s/one.txt", outside);
  CC(read_all(p, buf, sizeof buf) == 3);
  snprintf(p, sizeof p, "%s/secret.txt", outside);
  CC(open_errno(p, O_RDONLY) == EACCES);

  /* Outside: nothing. */
  CC(open_errno("/etc/passwd", O_RDONLY) == EACCES);
  snprintf(p, sizeof p, "%s/new.txt", outside);
  CC(open_errno(p, O_WRONLY | O_CREAT) == EACCES);
  snprintf(p, sizeof p, "%s/rd-lim-escape-%d", "/tmp", (int)getpid());
  CC(open_errno(p, O_WRONLY | O_CREAT) == EACCES);
  CC(open_errno("/tmp", O_RDONLY | O_DIRECTORY) == EACCES);
  errno = 0;
  CC(mkdir("/tmp/rd-lim-escape-dir", 0755) != 0 && errno == EACCES);

  /* EXECUTE is granted nowhere, not even beneath an allowed path. */
  snprintf(p, sizeof p, "%s/false", allowed);
  char *argv[] = {p, NULL};
  char *envp[] = {NULL};
  errno = 0;
  execve(p, argv, envp);
  CC(errno == EACCES);

  say(msg, "%s", rd__limits_report());
  return 0;
}

static void copy_file(const char *from, const char *to, mode_t mode) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  CHECK(in >= 0 && out >= 0);
  char buf[65536];
  ssize_t r;
  while (in >= 0 && out >= 0 && (r = read(in, buf, sizeof buf)) > 0)
    CHECK(write(out, buf, (size_t)r) == r);
  if (in >= 0) close(in);
  if (out >= 0) close(out);
}

TEST(landlock_allowed_dir_only) {
  up();
  char p[256];
  snprintf(p, sizeof p, "%s/false", allowed);
  copy_file("/bin/false", p, 0755);
  char msg[2048];
  int st = in_child(child_landlock, NULL, 20, msg, sizeof msg);
  CHECK(exited_ok(st));
  if (strncmp(msg, "SKIP", 4) == 0) {
    printf("  skipped: %s\n", msg + 5);
  } else {
    CHECK(strstr(msg, "landlock: available (ABI ") != NULL ||
          strstr(msg, "landlock: degraded (ABI ") != NULL);
    CHECK(strstr(msg, "2 paths allowed, 1 missing skipped") != NULL);
    CHECK(strstr(msg, "no_new_privs: available") != NULL);
  }
  /* The parent is untouched. */
  CHECK(open_errno("/etc/passwd", O_RDONLY) == 0);
  down();
}

static int child_landlock_nothing(void *arg, int msg) {
  if (landlock_or_skip(NULL, 0, msg)) return child_failed;
  CC(open_errno("/etc/passwd", O_RDONLY) == EACCES);
  char p[256];
  snprintf(p, sizeof p, "%s/in.txt", allowed);
  CC(open_errno(p, O_RDONLY) == EACCES);
  return 0;
}

TEST(landlock_no_paths_denies_everything) {
  up();
  CHECK(exited_ok(in_child(child_landlock_nothing, NULL, 20, NULL, 0)));
  rd_error err;
  const char *bad[] = {NULL};
  CHECK(rd__landlock_restrict(NULL, 2, &err) == RD_EINVAL);   /* no change */
  CHECK(rd__landlock_restrict(bad, 1, &err) == RD_EINVAL);
  down();
}

/* Landlock answers EPERM to a signal out of its domain (ABI >= 6): the
 * engine cannot be signalled by its workers. */
static int child_landlock_signal(void *arg, int msg) {
  if (landlock_or_skip(NULL, 0, msg)) return child_failed;
  if (rd__landlock_abi() < 6) {
    say(msg, "SKIP Landlock ABI %d < 6", rd__landlock_abi());
    return 0;
  }
  errno = 0;
  CC(kill(getppid(), SIGCONT) == -1 && errno == EPERM);
  CC(kill(getpid(), 0) == 0);   /* itself: same domain */
  return 0;
}

TEST(landlock_scopes_signals) {
  up();
  char msg[256];
  CHECK(exited_ok(in_child(child_landlock_signal, NULL, 20, msg, sizeof msg)));
  if (strncmp(msg, "SKIP", 4) == 0) printf("  skipped: %s\n", msg + 5);
  down();
}

/* ---- seccomp ------------------------------------------------------------------------- */

TEST(seccomp_compile_once_and_misuse) {
  rd_seccomp_prog *p = the_prog();
  CHECK(p != NULL);
  CHECK(rd__seccomp_size(p) > 20 && rd__seccomp_size(p) <= 4096);
  rd_error err;
  CHECK(rd__seccomp_compile(NULL, &err) == RD_EINVAL);
  CHECK(rd__seccomp_apply(NULL, &err) == RD_EINVAL);
  rd_seccomp_prog *q = (rd_seccomp_prog *)1;
  rd__alloc_fail_after(0);
  int rc = rd__seccomp_compile(&q, &err);
  rd__alloc_fail_after(-1);
  CHECK(rc == RD_ENOMEM);
  CHECK(q == NULL);
  rd__seccomp_free(NULL);
}

static int child_seccomp_refusals(void *arg, int msg) {
  int sp[2];
  CC(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
  if (apply_or_fail(the_prog()) != RD_OK) return 1;

  /* No new sockets of any family. */
  errno = 0;
  CC(socket(AF_INET, SOCK_STREAM, 0) == -1 && errno == EPERM);
  errno = 0;
  CC(socket(AF_INET6, SOCK_DGRAM, 0) == -1 && errno == EPERM);
  errno = 0;
  CC(socket(AF_UNIX, SOCK_STREAM, 0) == -1 && errno == EPERM);
  errno = 0;
  CC(socket(AF_NETLINK, SOCK_RAW, 0) == -1 && errno == EPERM);
  int sp2[2];
  errno = 0;
  CC(socketpair(AF_UNIX, SOCK_STREAM, 0, sp2) == -1 && errno == EPERM);

  /* The socket it already had still works. */
  CC(send(sp[0], "ping", 4, 0) == 4);
  char buf[8] = "";
  CC(recv(sp[1], buf, sizeof buf, 0) == 4 && memcmp(buf, "ping", 4) == 0);
  CC(write(sp[1], "pong", 4) == 4);
  int avail = -1;
  CC(ioctl(sp[0], FIONREAD, &avail) == 0 && avail == 4);
  CC(read(sp[0], buf, sizeof buf) == 4);
  CC(shutdown(sp[0], SHUT_WR) == 0);

  /* Limits: readable, not writable. */
  struct rlimit r;
  CC(getrlimit(RLIMIT_NOFILE, &r) == 0);
  errno = 0;
  CC(setrlimit(RLIMIT_NOFILE, &r) == -1 && errno == EPERM);
  errno = 0;
  CC(prlimit(getppid(), RLIMIT_NOFILE, NULL, &r) == -1 && errno == EPERM);

  /* No signals to anyone, not even "are you there". */
  errno = 0;
  CC(kill(getppid(), 0) == -1 && errno == EPERM);
  errno = 0;
  CC(kill(getppid(), SIGTERM) == -1 && errno == EPERM);

  /* fcntl and ioctl: the harmless subset only. */
  CC(fcntl(sp[0], F_GETFL) >= 0);
  CC(fcntl(sp[0], F_SETFD, FD_CLOEXEC) == 0);
  errno = 0;
  CC(fcntl(sp[0], F_SETOWN, getppid()) == -1 && errno == EPERM);
  char c = 'x';
  errno = 0;
  CC(ioctl(0, TIOCSTI, &c) == -1 && errno == EPERM);

  /* madvise: allocator advice yes, KSM merging and page poisoning no. */
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  void *m = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CC(m != MAP_FAILED);
  CC(madvise(m, 4 * pg, MADV_DONTNEED) == 0);
  CC(madvise(m, 4 * pg, MADV_DONTDUMP) == 0);
  errno = 0;
  CC(madvise(m, 4 * pg, MADV_MERGEABLE) == -1 && errno == EPERM);
  errno = 0;
  CC(madvise(m, pg, MADV_HWPOISON) == -1 && errno == EPERM);
  CC(munmap(m, 4 * pg) == 0);

  /* clone3 answers ENOSYS (libc falls back to clone, which kills). */
  errno = 0;
  CC(syscall(SYS_clone3, NULL, 0) == -1 && errno == ENOSYS);

  /* Privilege and tree changes that are EPERM, not fatal. */
  errno = 0;
  CC(setuid(0) == -1 && errno == EPERM);
  errno = 0;
  CC(chmod("/tmp", 0777) == -1 && errno == EPERM);
  errno = 0;
  CC(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == -1 && errno == EPERM);
  errno = 0;
  CC(dup(1) == -1 && errno == EPERM);

  /* openat2 is allowed (fs.c relies on it). */
  struct { uint64_t flags, mode, resolve; } how = {O_PATH | O_CLOEXEC, 0, 0};
  long fd = syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof how);
  CC(fd >= 0);
  if (fd >= 0) close((int)fd);
  say(msg, "%s", rd__limits_report());
  return 0;
}

TEST(seccomp_refuses_with_eperm) {
  if (!the_prog()) return;
  char msg[2048];
  CHECK(exited_ok(in_child(child_seccomp_refusals, NULL, 20, msg, sizeof msg)));
  CHECK(strstr(msg, "seccomp: available (") != NULL);
}

static void *thread_fn(void *a) { return a; }

static int k_execve(void) {
  char *argv[] = {(char *)"/bin/true", NULL};
  char *envp[] = {NULL};
  execve("/bin/true", argv, envp);
  return 0;
}
static int k_fork(void) {
  pid_t p = fork();
  if (p == 0) _exit(0);
  return 0;
}
static int k_vfork(void) { return (int)syscall(SYS_vfork); }
static int k_thread(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, thread_fn, NULL) == 0) pthread_join(t, NULL);
  return 0;
}
static int k_ptrace(void) { return (int)ptrace(PTRACE_TRACEME, 0, NULL, NULL); }
static int k_ptrace_attach(void) {
  return (int)ptrace(PTRACE_ATTACH, getppid(), NULL, NULL);
}
static int k_mount(void) { return mount("none", "/tmp", "tmpfs", 0, NULL); }
static int k_umount(void) { return umount2("/proc", MNT_DETACH); }
static int k_chroot(void) { return chroot("/tmp"); }
static int k_unshare(void) { return unshare(CLONE_NEWNET); }
static int k_setns(void) { return setns(0, 0); }
static int k_bpf(void) { return (int)syscall(SYS_bpf, 0, NULL, 0); }
static int k_io_uring(void) { return (int)syscall(SYS_io_uring_setup, 1, NULL); }
static int k_process_vm(void) {
  return (int)syscall(SYS_process_vm_readv, getppid(), NULL, 0, NULL, 0, 0);
}
#if defined(__x86_64__)
/* getpid through the i386 entry point: another architecture. */
static int k_int80(void) {
  long ret;
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
  return (int)ret;
}
/* getpid with the x32 bit set. */
static int k_x32(void) { return (int)syscall(0x40000000L | SYS_getpid); }
#endif

static const struct { const char *name; int (*fn)(void); } fatal[] = {
  {"execve", k_execve},       {"fork", k_fork},
  {"vfork", k_vfork},         {"pthread_create", k_thread},
  {"ptrace(TRACEME)", k_ptrace}, {"ptrace(ATTACH)", k_ptrace_attach},
  {"mount", k_mount},         {"umount2", k_umount},
  {"chroot", k_chroot},       {"unshare", k_unshare},
  {"setns", k_setns},         {"bpf", k_bpf},
  {"io_uring_setup", k_io_uring}, {"process_vm_readv", k_process_vm},
#if defined(__x86_64__)
  {"int 0x80", k_int80},      {"x32 syscall", k_x32},
#endif
};

/* Does this kernel run i386 code at all (ia32_emulation)? Without it,
 * `int 0x80` is a general protection fault before seccomp is asked. */
static int child_int80_plain(void *arg, int msg) {
#if defined(__x86_64__)
  k_int80();
#endif
  return 0;
}

static int child_fatal(void *arg, int msg) {
  size_t i = *(const size_t *)arg;
  if (apply_or_fail(the_prog()) != RD_OK) return 1;
  fatal[i].fn();
  return 3;   /* still alive: the call was not fatal */
}

TEST(seccomp_kills_escape_attempts) {
  if (!the_prog()) return;
  int st0 = in_child(child_int80_plain, NULL, 20, NULL, 0);
  int ia32 = WIFEXITED(st0) && WEXITSTATUS(st0) == 0;
  for (size_t i = 0; i < RD_COUNTOF(fatal); i++) {
    if (!ia32 && strcmp(fatal[i].name, "int 0x80") == 0) {
      printf("  skipped int 0x80: no ia32 emulation in this kernel\n");
      continue;
    }
    int st = in_child(child_fatal, &i, 20, NULL, 0);
    if (!killed_by(st, SIGSYS)) {
      fprintf(stderr, "  ... for %s\n", fatal[i].name);
      CHECK(!"escape attempt not killed");
    }
  }
}

static int child_apply_quick(void *arg, int msg) {
  if (apply_or_fail(the_prog()) != RD_OK) return 1;
  errno = 0;
  CC(socket(AF_INET, SOCK_STREAM, 0) == -1 && errno == EPERM);
  return 0;
}

TEST(seccomp_compiled_once_applied_in_100_children) {
  if (!the_prog()) return;
  int ok = 0;
  for (int i = 0; i < 100; i++)
    ok += exited_ok(in_child(child_apply_quick, NULL, 20, NULL, 0));
  CHECK(ok == 100);
}

/* Our filter refuses seccomp() itself: no second filter (a harmless one
 * would only restrict more, but nothing needs it); the first stays. */
static int child_apply_twice(void *arg, int msg) {
  if (apply_or_fail(the_prog()) != RD_OK) return 1;
  rd_error err;
  CC(rd__seccomp_apply(the_prog(), &err) == RD_EIO);
  CC(strstr(err.message, "Operation not permitted") != NULL);
  CC(strstr(rd__limits_report(), "seccomp: available (") != NULL);
  errno = 0;
  CC(socket(AF_UNIX, SOCK_STREAM, 0) == -1 && errno == EPERM);
  return 0;
}

TEST(seccomp_second_filter_refused_first_holds) {
  if (!the_prog()) return;
  CHECK(exited_ok(in_child(child_apply_twice, NULL, 20, NULL, 0)));
}

/* The spawner variant (a strict tool's template): it may fork (fork()'s
 * flags only), make AF_UNIX socket pairs, lower its limits, reap; a child
 * that stacks the worker filter is back to the worker policy (fork kills). */
static rd_seccomp_prog *spawner;

static int child_spawner(void *arg, int msg) {
  rd_limits lim;
  memset(&lim, 0, sizeof lim);
  lim.keep_nproc = 1;
  rd_error err;
  CC(rd__limits_apply(&lim, &err) == RD_OK);
  if (apply_or_fail(spawner) != RD_OK) return 1;
  int sv[2];
  CC(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  errno = 0;
  CC(socket(AF_UNIX, SOCK_STREAM, 0) == -1 && errno == EPERM);
  errno = 0;
  CC(socketpair(AF_INET, SOCK_STREAM, 0, sv) == -1 && errno == EPERM);
  /* a thread (clone with other flags) is refused, not killed */
  pthread_t t;
  CC(pthread_create(&t, NULL, thread_fn, NULL) != 0);
  /* a plain fork works; its child lowers its limits and stacks the worker
   * filter, then a fork kills it */
  pid_t p = fork();
  if (p == 0) {
    rd_limits l2;
    memset(&l2, 0, sizeof l2);
    l2.cpu_seconds = 5;
    if (rd__limits_apply(&l2, &err) != RD_OK) _exit(4);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(5);
    if (rd__seccomp_apply(the_prog(), &err) != RD_OK) _exit(6);
    errno = 0;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != -1 || errno != EPERM) _exit(7);
    k_fork();
    _exit(3);
  }
  CC(p > 0);
  int st = 0;
  CC(waitpid(p, &st, 0) == p);
  CC(killed_by(st, SIGSYS));
  return 0;
}

TEST(seccomp_spawner_forks_workers_that_stack_the_worker_filter) {
  if (!the_prog()) return;
  rd_error err;
  CHECK(rd__seccomp_compile_spawner(&spawner, &err) == RD_OK);
  if (!spawner) return;
  CHECK(rd__seccomp_size(spawner) > rd__seccomp_size(the_prog()));
  CHECK(exited_ok(in_child(child_spawner, NULL, 20, NULL, 0)));
  rd__seccomp_free(spawner);
  spawner = NULL;
}

/* The drop program: a strict tool's worker, forked from its template (under
 * the spawner program), loads it instead of the whole worker program. The
 * pair must answer every call as the worker program alone does: the same
 * result and errno for each probe below (the spawner's additions first,
 * then calls both refuse or allow), and the same death for fatal calls. */
static rd_seccomp_prog *drop;

static int probe_socketpair_unix(void) { int sv[2]; return socketpair(AF_UNIX, SOCK_STREAM, 0, sv); }
static int probe_socketpair_inet(void) { int sv[2]; return socketpair(AF_INET, SOCK_STREAM, 0, sv); }
static int probe_pdeathsig(void) { return prctl(PR_SET_PDEATHSIG, SIGKILL); }
static int probe_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }
static int probe_seccomp(void) {
  struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog fp = {1, &allow};
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp);
}
static int probe_sched_other(void) { struct sched_param sp = {0}; return sched_setscheduler(0, SCHED_OTHER, &sp); }
static int probe_sched_batch(void) { struct sched_param sp = {0}; return sched_setscheduler(0, SCHED_BATCH, &sp); }
static int probe_wait4(void) { int st; return (int)wait4(-1, &st, WNOHANG, NULL); }
static int probe_signalfd(void) {
  sigset_t m;
  sigemptyset(&m);
  return (int)syscall(SYS_signalfd4, -1, &m, sizeof(uint64_t), 0);
}
static int probe_prlimit_set(void) {
  struct rlimit r = {8, 8};
  return prlimit(0, RLIMIT_NOFILE, &r, NULL);
}
static int probe_prlimit_get(void) { struct rlimit r; return prlimit(0, RLIMIT_NOFILE, NULL, &r) == 0 ? 0 : -1; }
static int probe_prlimit_parent(void) { struct rlimit r; return prlimit(getppid(), RLIMIT_NOFILE, NULL, &r); }
static int probe_setrlimit(void) { struct rlimit r = {8, 8}; return setrlimit(RLIMIT_NOFILE, &r); }
static int probe_socket(void) { return socket(AF_INET, SOCK_STREAM, 0); }
static int probe_kill(void) { return kill(getppid(), 0); }
static int probe_dup(void) { return dup(1); }
static int probe_clone3(void) { return (int)syscall(SYS_clone3, NULL, 0); }
static int probe_nice19(void) { return setpriority(PRIO_PROCESS, 0, 19); }
static int probe_nice0(void) { return setpriority(PRIO_PROCESS, 0, 0); }
static int probe_getpid(void) { return getpid() > 0 ? 0 : -1; }
static int probe_fcntl_setown(void) { return fcntl(1, F_SETOWN, getppid()); }

static const struct { const char *name; int (*fn)(void); } probes[] = {
  {"socketpair(AF_UNIX)", probe_socketpair_unix}, {"socketpair(AF_INET)", probe_socketpair_inet},
  {"prctl(PR_SET_PDEATHSIG)", probe_pdeathsig}, {"prctl(PR_GET_NO_NEW_PRIVS)", probe_no_new_privs},
  {"seccomp(SET_MODE_FILTER)", probe_seccomp}, {"sched_setscheduler(OTHER)", probe_sched_other},
  {"sched_setscheduler(BATCH)", probe_sched_batch}, {"wait4", probe_wait4},
  {"signalfd4", probe_signalfd}, {"prlimit64(set)", probe_prlimit_set},
  {"prlimit64(get)", probe_prlimit_get}, {"prlimit64(parent)", probe_prlimit_parent},
  {"setrlimit", probe_setrlimit}, {"socket", probe_socket}, {"kill", probe_kill},
  {"dup", probe_dup}, {"clone3", probe_clone3}, {"setpriority(19)", probe_nice19},
  {"setpriority(0)", probe_nice0}, {"getpid", probe_getpid}, {"fcntl(F_SETOWN)", probe_fcntl_setown},
};

/* arg: 0 = the worker program alone, 1 = spawner then drop. Writes one
 * "name=result/errno;" per probe to msg. */
static int child_probes(void *arg, int msg) {
  if (*(int *)arg) {
    rd_error e2;
    if (apply_or_fail(spawner) != RD_OK || rd__seccomp_stack(drop, &e2) != RD_OK) return 1;
  } else if (apply_or_fail(the_prog()) != RD_OK) {
    return 1;
  }
  for (size_t i = 0; i < RD_COUNTOF(probes); i++) {
    errno = 0;
    int r = probes[i].fn();
    say(msg, "%s=%d/%d;", probes[i].name, r < 0 ? -1 : 0, r < 0 ? errno : 0);
  }
  return 0;
}

/* arg: index into fatal[]; under spawner + drop. */
static int child_drop_fatal(void *arg, int msg) {
  size_t i = *(const size_t *)arg;
  if (apply_or_fail(spawner) != RD_OK || apply_or_fail(drop) != RD_OK) return 1;
  fatal[i].fn();
  return 3;
}

/* Under the spawner alone a fork works (the test above); with the drop
 * program on top it kills, whatever flags clone gets. */
static int child_drop_clone_fork_flags(void *arg, int msg) {
  if (apply_or_fail(spawner) != RD_OK || apply_or_fail(drop) != RD_OK) return 1;
  syscall(SYS_clone, (unsigned long)(CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | SIGCHLD), 0, NULL, NULL, 0);
  return 3;
}

TEST(seccomp_spawner_plus_drop_is_the_worker_policy) {
  if (!the_prog()) return;
  rd_error err;
  CHECK(rd__seccomp_compile_spawner(&spawner, &err) == RD_OK);
  CHECK(rd__seccomp_compile_drop(&drop, &err) == RD_OK);
  CHECK(rd__seccomp_compile_drop(NULL, &err) == RD_EINVAL);
  CHECK(rd__seccomp_stack(NULL, &err) == RD_EINVAL);
  if (!spawner || !drop) return;
  CHECK(rd__seccomp_size(drop) < rd__seccomp_size(the_prog()) / 2);
  char worker_says[4096], pair_says[4096];
  int mode = 0;
  CHECK(exited_ok(in_child(child_probes, &mode, 20, worker_says, sizeof worker_says)));
  mode = 1;
  CHECK(exited_ok(in_child(child_probes, &mode, 20, pair_says, sizeof pair_says)));
  CHECK_STR(pair_says, worker_says);
  /* and the answers are the refusals the policy documents */
  CHECK(strstr(worker_says, "socketpair(AF_UNIX)=-1/1;") != NULL);
  CHECK(strstr(worker_says, "seccomp(SET_MODE_FILTER)=-1/1;") != NULL);
  CHECK(strstr(worker_says, "wait4=-1/1;") != NULL);
  CHECK(strstr(worker_says, "prlimit64(set)=-1/1;") != NULL);
  CHECK(strstr(worker_says, "prlimit64(get)=0/0;") != NULL);
  CHECK(strstr(worker_says, "setpriority(19)=0/0;") != NULL);
  for (size_t i = 0; i < RD_COUNTOF(fatal); i++) {
    if (strcmp(fatal[i].name, "int 0x80") == 0) continue; /* the spawner's own arch check */
    int st = in_child(child_drop_fatal, &i, 20, NULL, 0);
    if (!killed_by(st, SIGSYS)) {
      fprintf(stderr, "  ... for %s under spawner + drop\n", fatal[i].name);
      CHECK(!"escape attempt not killed under spawner + drop");
    }
  }
  CHECK(killed_by(in_child(child_drop_clone_fork_flags, NULL, 20, NULL, 0), SIGSYS));
  rd__seccomp_free(drop);
  drop = NULL;
  rd__seccomp_free(spawner);
  spawner = NULL;
}

/* ---- LuaJIT under the filter ------------------------------------------------------- */

static const char *lua_chunk =
  "local json = ...\n"
  "local t = {}\n"
  "for i = 1, 1000 do t[i] = string.format('%05d:%s', (i * 7919) % 1000, "
  "    string.rep('ab', i % 7)) end\n"
  "table.sort(t)\n"
  "assert(#table.concat(t, ',') > 1000)\n"
  "local s = ('Hello, World'):upper():gsub('O', '0'):lower()\n"
  "assert(s == 'hell0, w0rld', s)\n"
  "assert(('x=1, y=22'):match('y=(%d+)') == '22')\n"
  "assert(math.floor(math.sqrt(144) + math.sin(0)) == 12)\n"
  "assert(math.huge > 1e308 and math.max(3, 9, 4) == 9)\n"
  "local now = os.time()\n"
  "assert(type(now) == 'number' and now > 1.6e9)\n"
  "assert(os.time{year=2024, month=1, day=1, hour=12} > 0)\n"
  "assert(type(os.clock()) == 'number')\n"
  "assert(os.date('!%Y-%m-%d', 0) == '1970-01-01')\n"
  "assert(#os.date('%H:%M:%S') == 8)\n"
  "assert(type(os.date('*t').year) == 'number')\n"
  "local ok, e = pcall(error, {code = 42})\n"
  "assert(not ok and e.code == 42)\n"
  "ok, e = pcall(function() return nil + 1 end)\n"
  "assert(not ok and tostring(e):find('arithmetic'))\n"
  "local co = coroutine.wrap(function(a)\n"
  "  for i = 1, 3 do a = a + coroutine.yield(a) end\n"
  "  return a\n"
  "end)\n"
  "assert(co(1) == 1 and co(2) == 3 and co(3) == 6 and co(4) == 10)\n"
  "local big = string.rep('x', 10 * 1024 * 1024)\n"
  "assert(#big == 10485760)\n"
  "local arr = {}\n"
  "for i = 1, 200000 do arr[i] = i * 2 end\n"
  "assert(arr[200000] == 400000)\n"
  "big, arr = nil, nil\n"
  "collectgarbage()\n"
  "if json then\n"
  "  local doc = json.decode('{\"a\":[1,2,{\"b\":null}],\"s\":\"\\\\u00e9t\\\\u00e9\"}')\n"
  "  assert(doc.a[2] == 2 and doc.s == '\\195\\169t\\195\\169')\n"
  "  local text = json.encode({n = 9007199254740992, list = {1, 2, 3}})\n"
  "  assert(text:find('9007199254740992', 1, true), text)\n"
  "  assert(json.decode(text).list[3] == 3)\n"
  "end\n"
  "local n = 0\n"
  "for i = 1, 3e6 do n = n + i % 7 end\n"   /* hot loop: JIT traces */
  "assert(n > 0)\n"
  "return 'ok'\n";

static int run_chunk(lua_State *L, int with_json) {
  if (luaL_loadstring(L, lua_chunk) != 0) {
    fprintf(stderr, "  load: %s\n", lua_tostring(L, -1));
    return 1;
  }
  if (with_json) rd__luaopen_json(L);
  else lua_pushnil(L);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    fprintf(stderr, "  lua: %s\n", lua_tostring(L, -1));
    return 1;
  }
  int ok = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "ok") == 0;
  lua_pop(L, 1);
  return !ok;
}

static int child_luajit(void *arg, int msg) {
  tzset();
  if (apply_or_fail(the_prog()) != RD_OK) return 1;
  /* The state is created under the filter too: its allocator's mmaps. */
  lua_State *L = luaL_newstate();
  CC(L != NULL);
  if (!L) return 1;
  luaL_openlibs(L);
  CC(run_chunk(L, 1) == 0);
  lua_close(L);
  return 0;
}

TEST(seccomp_luajit_state_works) {
  if (!the_prog()) return;
  CHECK(exited_ok(in_child(child_luajit, NULL, 60, NULL, 0)));
}

/* Everything a strict worker does, in its order, then a tool state with its
 * CPU hook and `fs.*` over the allowed directory. */
static int child_everything(void *arg, int msg) {
  rd_error err;
  tzset();
  int rc = rd__limits_namespaces(RD_NS_NET | RD_NS_IPC | RD_NS_UTS, &err);
  CC(rc == RD_OK);
  rd_limits l = {0};
  l.address_space = vm_size() + 512u * 1024 * 1024;
  l.cpu_seconds = 30;
  l.file_size = 1024 * 1024;
  l.open_files = 64;
  CC(rd__limits_apply(&l, &err) == RD_OK);
  CC(rd__limits_no_new_privs(&err) == RD_OK);
  const char *paths[] = {allowed};
  rc = rd__landlock_restrict(paths, 1, &err);
  CC(rc == RD_OK || rc == RD_ENOSYS);
  if (apply_or_fail(the_prog()) != RD_OK) return 1;

  rd_lstate *s = NULL;
  rd_lstate_opts o = {64u * 1024 * 1024, 0, 0}; /* JIT off, as tools run */
  CC(rd__lstate_new(&s, &o, &err) == RD_OK);
  if (!s) return 1;
  lua_State *L = rd__lstate_L(s);
  CC(rd__fs_push(L, paths, 1, 4096, &err) == RD_OK);
  lua_setglobal(L, "fs");

  rd__lstate_arm(s, 20000, rd__mono_ns() + 20ull * 1000000000ull);
  CC(run_chunk(L, 0) == 0);
  static const char *fs_chunk =
    "assert(fs.read('in.txt') == 'INSIDE')\n"
    "assert(fs.write('out/x.txt', 'no parent') == nil)\n"
    "assert(fs.mkdir('out/deep', {parents = true}))\n"
    "assert(fs.write('out/deep/x.txt', 'hello'))\n"
    "assert(fs.write('out/deep/x.txt', ' world', {append = true}))\n"
    "assert(fs.read('out/deep/x.txt') == 'hello world')\n"
    "assert(fs.read('out/deep/x.txt', {max_bytes = 5, offset = 6}) == 'world')\n"
    "local st = fs.stat('out/deep/x.txt')\n"
    "assert(st.type == 'file' and st.size == 11 and st.mtime > 0)\n"
    "local names = {}\n"
    "for _, e in ipairs(fs.list('.')) do names[#names + 1] = e.name end\n"
    "assert(table.concat(names, ',') == 'in.txt,out', table.concat(names, ','))\n"
    "assert(fs.exists('in.txt') and not fs.exists('nope'))\n"
    "local v, m = fs.write('big.bin', string.rep('z', 5000))\n"
    "assert(v == nil and m:find('big.bin'), m)\n"   /* max_file_size 4096 */
    "assert(fs.remove('out/deep/x.txt'))\n"
    "assert(fs.remove('out/deep') and fs.remove('out'))\n";
  char m[512];
  if (luaL_loadstring(L, fs_chunk) == 0 && lua_pcall(L, 0, 0, 0) == 0) {
    m[0] = '\0';
  } else {
    snprintf(m, sizeof m, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (m[0]) fprintf(stderr, "  fs chunk: %s\n", m);
  CC(m[0] == '\0');
  double cpu = 0;
  size_t peak = 0;
  CC(rd__lstate_disarm(s, &cpu, &peak) == RD_BREACH_NONE);
  CC(cpu > 0 && peak > 10u * 1024 * 1024);

  /* A way out is a violation (fs.c's check, before the kernel's). */
  rd__lstate_arm(s, 20000, rd__mono_ns() + 20ull * 1000000000ull);
  CC(luaL_loadstring(L, "return fs.read('../outside/secret.txt')") == 0);
  CC(lua_pcall(L, 0, 1, 0) != 0);
  CC(strstr(lua_tostring(L, -1), "sandbox_violation") != NULL);
  lua_pop(L, 1);
  CC(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_VIOLATION);

  /* The CPU hook still works under the filter (thread CPU clock). */
  rd__lstate_arm(s, 50, rd__mono_ns() + 20ull * 1000000000ull);
  CC(luaL_loadstring(L, "local x = 0 while true do x = x + 1 end") == 0);
  CC(lua_pcall(L, 0, 0, 0) != 0);
  lua_pop(L, 1);
  CC(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CPU);

  /* And an interruptible sleep. */
  rd__lstate_arm(s, 0, rd__mono_ns() + 20ull * 1000000000ull);
  CC(luaL_loadstring(L, "return 1") == 0);
  lua_pop(L, 1);
  CC(rd__lstate_sleep(L, 5) == 0);
  rd__lstate_disarm(s, NULL, NULL);
  rd__lstate_free(s);

  /* Outside the Lua state too: the kernel walls hold. */
  if (rc == RD_OK) CC(open_errno("/etc/passwd", O_RDONLY) == EACCES);
  errno = 0;
  CC(socket(AF_INET, SOCK_STREAM, 0) == -1 && errno == EPERM);
  say(msg, "%s", rd__limits_report());
  return 0;
}

TEST(everything_together_with_fs_and_tool_state) {
  if (!the_prog()) return;
  up();
  char msg[2048];
  int st = in_child(child_everything, NULL, 60, msg, sizeof msg);
  CHECK(exited_ok(st));
  CHECK(strstr(msg, "namespaces: available") != NULL);
  CHECK(strstr(msg, "rlimits: available") != NULL);
  CHECK(strstr(msg, "no_new_privs: available") != NULL);
  CHECK(strstr(msg, "seccomp: available") != NULL);
  CHECK(strstr(msg, "landlock: ") != NULL);
  printf("limits report of a strict worker on this kernel:\n%s", msg);
  down();
}

static void free_prog(void) { rd__seccomp_free(prog); }

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  atexit(free_prog);
  RUN_TESTS();
}
