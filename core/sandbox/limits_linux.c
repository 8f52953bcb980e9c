/*
 * limits_linux.c — namespaces, rlimits, no_new_privs and the report of
 * limits.h, for Linux. Landlock and seccomp have files of their own.
 */
#include "sandbox/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- report ----------------------------------------------------------------- */

static const char *const mech_names[RD_LIM__COUNT] = {
  "namespaces", "rlimits", "no_new_privs", "landlock", "seccomp"
};
static char notes[RD_LIM__COUNT][256];
static char report[RD_LIM__COUNT * 272];

void rd__limits_note(rd_limits_mech m, const char *fmt, ...) {
  if ((unsigned)m >= RD_LIM__COUNT) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(notes[m], sizeof notes[m], fmt, ap);
  va_end(ap);
}

const char *rd__limits_report(void) {
  size_t off = 0;
  report[0] = '\0';
  for (int m = 0; m < RD_LIM__COUNT; m++) {
    int w = snprintf(report + off, sizeof report - off, "%s: %s\n",
                     mech_names[m], notes[m][0] ? notes[m] : "not applied");
    if (w < 0 || (size_t)w >= sizeof report - off) break;
    off += (size_t)w;
  }
  return report;
}

/* ---- namespaces --------------------------------------------------------------- */

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  ssize_t w = write(fd, text, len);
  int e = errno;
  close(fd);
  if (w != (ssize_t)len) {
    errno = w < 0 ? e : EIO;
    return -1;
  }
  return 0;
}

/* Enter a new user namespace where the current uid/gid map to themselves.
 * Returns 0 or -1 with errno; *step names what failed. */
static int enter_userns(const char **step) {
  uid_t uid = geteuid();
  gid_t gid = getegid();
  char map[64];
  *step = "unshare(CLONE_NEWUSER)";
  if (unshare(CLONE_NEWUSER) != 0) return -1;
  /* A process that changed uid is not dumpable, so its /proc/self files
   * belong to root and it cannot write its own maps: dumpable for the
   * three writes, then back as it was. */
  int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (dumpable == 0) prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
  int rc = -1;
  /* An unprivileged process may only write gid_map after denying
   * setgroups (kernel >= 3.19; older kernels lack the file: fine). */
  *step = "write /proc/self/setgroups";
  if (write_file("/proc/self/setgroups", "deny") != 0 && errno != ENOENT)
    goto out;
  *step = "write /proc/self/uid_map";
  snprintf(map, sizeof map, "%lu %lu 1\n", (unsigned long)uid, (unsigned long)uid);
  if (write_file("/proc/self/uid_map", map) != 0) goto out;
  *step = "write /proc/self/gid_map";
  snprintf(map, sizeof map, "%lu %lu 1\n", (unsigned long)gid, (unsigned long)gid);
  if (write_file("/proc/self/gid_map", map) != 0) goto out;
  rc = 0;
out:
  if (dumpable == 0) {
    int e = errno;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    errno = e;
  }
  return rc;
}

static int ns_errcode(int e) {
  return (e == EINVAL || e == ENOSYS || e == EPERM || e == EACCES ||
          e == EUSERS) ? RD_ENOSYS : RD_EIO;
}

int rd__limits_namespaces(int flags, rd_error *err) {
  static const struct { int flag; int clone; const char *name; } ns[] = {
    {RD_NS_NET, CLONE_NEWNET, "net"},
    {RD_NS_IPC, CLONE_NEWIPC, "ipc"},
    {RD_NS_UTS, CLONE_NEWUTS, "uts"},
  };
  static const char *const clone_names[] = {
    "CLONE_NEWNET", "CLONE_NEWIPC", "CLONE_NEWUTS"
  };
  if (flags & ~(RD_NS_NET | RD_NS_IPC | RD_NS_UTS))
    return rd_error_set(err, RD_EINVAL, "namespaces: unknown flags 0x%x",
                        (unsigned)flags);
  if (flags == 0) {
    rd__limits_note(RD_LIM_NAMESPACES, "not applied (none requested)");
    return RD_OK;
  }
  char done[64] = "";
  int userns = 0;
  for (size_t i = 0; i < RD_COUNTOF(ns); i++) {
    if (!(flags & ns[i].flag)) continue;
    if (unshare(ns[i].clone) != 0) {
      int e = errno;
      const char *step = clone_names[i];
      if (e == EPERM && !userns) {
        if (enter_userns(&step) == 0) {
          userns = 1;
          step = clone_names[i];
          if (unshare(ns[i].clone) == 0) goto ok;
        }
        e = errno;
      }
      rd__limits_note(RD_LIM_NAMESPACES, "unavailable (%s: %s%s%s)",
                      step, strerror(e), done[0] ? "; already unshared:" : "",
                      done);
      if (strncmp(step, "CLONE_", 6) == 0)
        return rd_error_set(err, ns_errcode(e), "unshare(%s): %s", step,
                            strerror(e));
      return rd_error_set(err, ns_errcode(e),
                          "unshare(%s): no permission; user namespace "
                          "fallback failed at %s: %s",
                          clone_names[i], step, strerror(e));
    }
  ok:
    strncat(done, " ", sizeof done - strlen(done) - 1);
    strncat(done, ns[i].name, sizeof done - strlen(done) - 1);
  }
  rd__limits_note(RD_LIM_NAMESPACES, "available (%s%s)", done + 1,
                  userns ? "; through a new user namespace" : "");
  return RD_OK;
}

/* ---- rlimits ------------------------------------------------------------------ */

/* Lower (never raise) one limit to soft/hard; *clamped set when the current
 * hard limit was lower than asked. */
static int set_limit(int res, rlim_t soft, rlim_t hard, int *clamped) {
  struct rlimit cur;
  if (getrlimit(res, &cur) != 0) return -1;
  if (hard > cur.rlim_max) {
    hard = cur.rlim_max;
    *clamped = 1;
  }
  if (soft > hard) {
    soft = hard;
    *clamped = 1;
  }
  struct rlimit nl = {soft, hard};
  return setrlimit(res, &nl);
}

static double process_cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int rd__limits_apply(const rd_limits *l, rd_error *err) {
  if (!l) return rd_error_set(err, RD_EINVAL, "rlimits: no limits given");
  if (!(l->cpu_seconds >= 0) || l->cpu_seconds > 1e9 || l->open_files < 0)
    return rd_error_set(err, RD_EINVAL,
                        "rlimits: cpu_seconds must be >= 0 and open_files "
                        ">= 0");
  struct {
    int res;
    const char *name;
    rlim_t soft, hard;
    int use;
  } set[] = {
    {RLIMIT_AS, "RLIMIT_AS", (rlim_t)l->address_space,
     (rlim_t)l->address_space, l->address_space != 0},
    {RLIMIT_CPU, "RLIMIT_CPU", 0, 0, l->cpu_seconds > 0},
    {RLIMIT_FSIZE, "RLIMIT_FSIZE", (rlim_t)l->file_size, (rlim_t)l->file_size,
     l->file_size != 0},
    {RLIMIT_NOFILE, "RLIMIT_NOFILE", (rlim_t)l->open_files,
     (rlim_t)l->open_files, l->open_files != 0},
    {RLIMIT_CORE, "RLIMIT_CORE", 0, 0, 1},
    {RLIMIT_NPROC, "RLIMIT_NPROC", 0, 0, !l->keep_nproc},
  };
  if (l->cpu_seconds > 0) {
    double s = ceil(process_cpu_seconds() + l->cpu_seconds);
    set[1].soft = (rlim_t)s;
    set[1].hard = (rlim_t)s + 1;
  }
  rd_buf why = RD_BUF_INIT;
  int clamped_any = 0;
  for (size_t i = 0; i < RD_COUNTOF(set); i++) {
    if (!set[i].use) continue;
    int clamped = 0;
    if (set_limit(set[i].res, set[i].soft, set[i].hard, &clamped) != 0) {
      int e = errno;
      if (!l->quiet) rd__limits_note(RD_LIM_RLIMITS, "unavailable (setrlimit(%s): %s)",
                      set[i].name, strerror(e));
      rd__buf_free(&why);
      return rd_error_set(err, RD_EIO, "setrlimit(%s, %llu): %s", set[i].name,
                          (unsigned long long)set[i].soft, strerror(e));
    }
    if (clamped && !l->quiet) {
      rd__buf_printf(&why, "%s%s", clamped_any ? ", " : "", set[i].name);
      clamped_any = 1;
    }
  }
  if (l->quiet) return RD_OK;
  struct rlimit as, cpu, fsz, nof;
  getrlimit(RLIMIT_AS, &as);
  getrlimit(RLIMIT_CPU, &cpu);
  getrlimit(RLIMIT_FSIZE, &fsz);
  getrlimit(RLIMIT_NOFILE, &nof);
#define LIM(v) ((v) == RLIM_INFINITY ? -1.0 : (double)(v))
  rd__limits_note(RD_LIM_RLIMITS,
                  "%s (as=%.0f cpu=%.0f fsize=%.0f nofile=%.0f core=0 "
                  "nproc=%s; -1 = unlimited%s%s%s)",
                  clamped_any ? "degraded" : "available", LIM(as.rlim_cur),
                  LIM(cpu.rlim_cur), LIM(fsz.rlim_cur), LIM(nof.rlim_cur),
                  l->keep_nproc ? "kept" : "0", clamped_any ? "; clamped to the hard limit: " : "",
                  clamped_any && why.data ? why.data : "",
                  geteuid() == 0 ? "; root ignores nproc" : "");
#undef LIM
  rd__buf_free(&why);
  return RD_OK;
}

/* ---- no_new_privs --------------------------------------------------------------- */

int rd__limits_no_new_privs(rd_error *err) {
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1) {
    rd__limits_note(RD_LIM_NO_NEW_PRIVS, "available");
    return RD_OK;
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    int e = errno;
    rd__limits_note(RD_LIM_NO_NEW_PRIVS, "unavailable (prctl: %s)", strerror(e));
    return rd_error_set(err, e == EINVAL ? RD_ENOSYS : RD_EIO,
                        "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(e));
  }
  rd__limits_note(RD_LIM_NO_NEW_PRIVS, "available");
  return RD_OK;
}
