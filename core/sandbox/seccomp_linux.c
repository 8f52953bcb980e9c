/*
 * seccomp_linux.c — the system call filter of a sandboxed worker
 * (rd__seccomp_compile / rd__seccomp_apply of limits.h).
 *
 * The filter is built once with libseccomp, exported as classic BPF
 * (seccomp_export_bpf into a memfd, read back) and kept as bytes, so a
 * worker loads it with one seccomp() call and no libseccomp work.
 *
 * POLICY (x86_64 names; a name the build architecture lacks is skipped)
 *
 * A worker is a LuaJIT state running tool code with `fs.*`, talking to the
 * engine over the AF_UNIX socket it inherited. It needs memory, time, its
 * descriptors and the files beneath its allowed paths — nothing else.
 *
 * Default, for every call not listed: fail with EPERM. Tool code cannot make
 * system calls itself; what reaches the kernel comes from LuaJIT, glibc and
 * our C code, which all treat EPERM as an ordinary failure.
 *
 * Allowed (SCMP_ACT_ALLOW):
 *   I/O on descriptors it holds: read write readv writev pread64 pwrite64
 *     lseek close — the engine socket, fs.* files, stdio.
 *   fs.* (core/sandbox/fs.c): openat openat2 newfstatat fstat statx
 *     getdents64 mkdirat unlinkat getcwd (relative roots at rd__fs_push).
 *     Where these may reach is Landlock's business (rd__landlock_restrict).
 *     openat2 stays allowed (fs.c's kernel-side RESOLVE_BENEATH); had it to
 *     be refused, ENOSYS — not EPERM — would be the answer that makes fs.c
 *     fall back to its per-component walk.
 *   fcntl, only F_GETFD F_SETFD F_GETFL F_SETFL F_DUPFD F_DUPFD_CLOEXEC —
 *     not F_SETOWN/F_SETSIG (SIGIO to another process), not leases/locks.
 *   ioctl, only TCGETS (isatty() in stdio) and FIONREAD (bytes waiting on
 *     the socket) — not TIOCSTI & co.
 *   memory: mmap munmap mremap mprotect brk — the LuaJIT allocator and its
 *     JIT (PROT_EXEC machine code) need all of them; madvise only with
 *     NORMAL RANDOM SEQUENTIAL WILLNEED DONTNEED FREE DONTFORK DOFORK
 *     HUGEPAGE NOHUGEPAGE DONTDUMP DODUMP (allocators, ASan) — not
 *     MERGEABLE (KSM page merging is a cross-process side channel), not
 *     HWPOISON / SOFT_OFFLINE (root could poison physical pages).
 *   threads' leftovers: futex (glibc locks), sched_yield.
 *   time: clock_gettime clock_getres gettimeofday time (vDSO fallbacks;
 *     os.clock and the CPU hook read CPU clocks, which are real system
 *     calls) nanosleep clock_nanosleep (rd__lstate_sleep) restart_syscall.
 *   getrandom — libsodium, ULIDs.
 *   signals of its own: rt_sigaction rt_sigprocmask rt_sigreturn sigaltstack
 *     (SIGXCPU / SIGXFSZ handling, LuaJIT's and ASan's handlers).
 *   identity, read-only: getpid gettid getppid (is the engine still there).
 *   getrlimit, and prlimit64 only as (0, res, NULL, old): reading its own
 *     limits; setting any limit is refused.
 *   setpriority only as (PRIO_PROCESS, 0, 19): lowering its own priority
 *     to the least (a worker does before it exits, so its teardown yields
 *     to the engine and the next call).
 *   the engine socket: poll ppoll recvmsg sendmsg recvfrom sendto shutdown
 *     — on descriptors it already has; it cannot make a new one (below).
 *   exit exit_group.
 *
 * Refused with ENOSYS: clone3 — its flags sit in memory the filter cannot
 *   read; ENOSYS makes glibc fall back to clone, whose flags it can (and
 *   which kills, below).
 *
 * Refused with EPERM (the default, listed for the record):
 *   socket socketpair connect bind listen accept accept4 — no new socket of
 *     any family: the worker has its connected AF_UNIX socket already, and
 *     the strict level's empty network namespace is a second wall.
 *   kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal —
 *     no signal to anyone: a pid is known only when the worker runs, after
 *     compile, so "only to itself" cannot be written into the filter; the
 *     worker needs no signal of its own (SIGXCPU and SIGXFSZ come from the
 *     kernel). Landlock ABI 6 scopes signals to the sandbox as well.
 *   setrlimit prctl seccomp landlock_* setuid & co, chmod/chown/link/rename
 *     families, dup*, pipe*, eventfd, epoll*, inotify, timers, sysinfo,
 *     uname, and everything newer than libseccomp 2.5.4 knows.
 *
 * Kill the process (SECCOMP_RET_KILL_PROCESS, SIGSYS; the engine reports a
 * sandbox violation) — calls that only an attacker running native code
 * would make, each a way out of the sandbox:
 *   execve execveat — running anything else
 *   fork vfork clone — another process or thread (LuaJIT needs neither)
 *   ptrace process_vm_readv process_vm_writev — other processes' memory
 *   mount umount2 pivot_root chroot open_tree move_mount fsopen fsconfig
 *     fsmount fspick mount_setattr — the file system tree
 *   unshare setns — namespaces (the strict level made its own before)
 *   bpf perf_event_open userfaultfd — kernel attack surface
 *   io_uring_setup io_uring_enter io_uring_register — their operations
 *     bypass seccomp
 *   init_module finit_module delete_module kexec_load kexec_file_load
 *     reboot swapon swapoff acct keyctl add_key request_key
 *   Any other architecture (i386 `int 0x80`, x32 numbers) kills as well.
 *
 * THE SPAWNER VARIANT (rd__seccomp_compile_spawner): the filter of a strict
 * tool's template, the process that defined the tool once and forks the
 * tool's single-use workers (worker.c). It is the policy above plus what
 * forking needs, each narrowed by its arguments: clone with exactly
 * fork()'s flags (CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | SIGCHLD: no
 * thread, no namespace, no shared memory; other flags fail with EPERM),
 * socketpair(AF_UNIX) (a worker's socket), prctl(PR_SET_PDEATHSIG) only,
 * prlimit64 on itself (pid 0) to set limits as well as read them,
 * seccomp(SECCOMP_SET_MODE_FILTER) (a worker stacks the worker filter),
 * sched_setscheduler(0 = itself, SCHED_OTHER) (a worker leaves the batch
 * policy it was prepared under), wait4 and signalfd4 (reaping). Every worker it forks loads the DROP
 * program on top of it before it reads its call (rd__seccomp_compile_drop):
 * a few instructions that allow everything but those additions, and give
 * each addition the worker policy's answer (clone kills; socketpair,
 * prctl, seccomp, sched_setscheduler, wait4, signalfd4, prlimit64 setting
 * a limit fail with EPERM). The kernel takes the stricter answer of
 * stacked filters, so a worker's allow-list is exactly the worker policy;
 * loading the small program instead of the whole worker program again
 * saves its verification and JIT compilation in each worker, and every
 * later system call runs one long program instead of two.
 *
 * Sanitizer builds (-DRD_SANITIZE=ON) use the same filter: nothing extra
 * is needed by the ASan/UBSan runtime while it runs (checked under strace:
 * its mmap, madvise, sigaltstack are allowed above), and an ASan report
 * from a filtered process still prints in full. One exception, by design:
 * LeakSanitizer's check at exit() stops the world with clone + ptrace,
 * which this filter kills (SIGSYS) — a filtered process ends with _exit(),
 * or runs with ASAN_OPTIONS=detect_leaks=0.
 *
 * Checked against: spec/c/test_limits.c (a LuaJIT state with string,
 * table, math, os.time/clock/date, pcall, coroutines, JSON, a 10 MB string,
 * JIT traces; a tool state with its CPU hook, sleep and fs.* under
 * Landlock), run under `strace -f`: no call outside this list is made.
 */
#include "sandbox/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>

#ifndef SECCOMP_SET_MODE_FILTER
#define SECCOMP_SET_MODE_FILTER 1
#endif
#ifndef SECCOMP_FILTER_FLAG_TSYNC
#define SECCOMP_FILTER_FLAG_TSYNC (1UL << 0)
#endif

struct rd_seccomp_prog {
  size_t len;                  /* instructions */
  struct sock_filter insns[];  /* classic BPF, native architecture */
};

static const char *const allow_plain[] = {
  /* I/O on descriptors it holds */
  "read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "close",
  /* fs.* */
  "openat", "openat2", "newfstatat", "fstat", "statx", "getdents64",
  "mkdirat", "unlinkat", "getcwd",
  /* memory */
  "mmap", "munmap", "mremap", "mprotect", "brk",
  /* locks */
  "futex", "sched_yield",
  /* time */
  "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep",
  "clock_nanosleep", "restart_syscall",
  /* randomness */
  "getrandom",
  /* own signals */
  "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
  /* identity */
  "getpid", "gettid", "getppid",
  /* limits, read-only (prlimit64 below) */
  "getrlimit",
  /* the engine socket */
  "poll", "ppoll", "recvmsg", "sendmsg", "recvfrom", "sendto", "shutdown",
  /* the end */
  "exit", "exit_group",
};

static const char *const kill_list[] = {
  "execve", "execveat",
  "fork", "vfork", "clone",
  "ptrace", "process_vm_readv", "process_vm_writev",
  "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
  "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
  "unshare", "setns",
  "bpf", "perf_event_open", "userfaultfd",
  "io_uring_setup", "io_uring_enter", "io_uring_register",
  "init_module", "finit_module", "delete_module", "kexec_load",
  "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
  "keyctl", "add_key", "request_key",
};

static int add_named(scmp_filter_ctx ctx, uint32_t action, const char *name,
                     const char **failed) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return 0;   /* not on this architecture */
  int rc = seccomp_rule_add(ctx, action, nr, 0);
  if (rc < 0) *failed = name;
  return rc;
}

/* Export ctx as raw BPF into *out (rd__malloc'ed). Returns RD_OK or an
 * RD_E* code with err filled. */
static int export_bpf(scmp_filter_ctx ctx, rd_seccomp_prog **out, rd_error *err) {
  int fd = memfd_create("rd-seccomp", MFD_CLOEXEC);
  int rfd = -1;
  if (fd < 0) {
    /* No memfd (kernel < 3.17): a non-blocking pipe, big enough for any
     * loadable program (BPF_MAXINSNS * 8 = 32 KiB < 64 KiB). */
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
      return rd_error_set(err, RD_EIO, "seccomp: memfd_create and pipe2: %s",
                          strerror(errno));
    rfd = p[0];
    fd = p[1];
  }
  int rc = seccomp_export_bpf(ctx, fd);
  if (rc < 0) {
    close(fd);
    if (rfd >= 0) close(rfd);
    return rd_error_set(err, RD_EIO, "seccomp: seccomp_export_bpf: %s",
                        strerror(-rc));
  }
  unsigned char buf[BPF_MAXINSNS * sizeof(struct sock_filter) + 1];
  size_t got = 0;
  if (rfd < 0) {
    rfd = fd;
    fd = -1;
    for (;;) {
      ssize_t r = pread(rfd, buf + got, sizeof buf - got, (off_t)got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      got += (size_t)r;
      if (got == sizeof buf) break;
    }
  } else {
    close(fd);
    fd = -1;
    for (;;) {
      ssize_t r = read(rfd, buf + got, sizeof buf - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      got += (size_t)r;
      if (got == sizeof buf) break;
    }
  }
  close(rfd);
  if (got == 0 || got % sizeof(struct sock_filter) != 0 ||
      got > BPF_MAXINSNS * sizeof(struct sock_filter))
    return rd_error_set(err, RD_EIO,
                        "seccomp: exported program has %zu bytes (not 8..%zu "
                        "in steps of 8)", got,
                        (size_t)BPF_MAXINSNS * sizeof(struct sock_filter));
  rd_seccomp_prog *p = rd__malloc(sizeof *p + got);
  if (!p) return rd_error_set(err, RD_ENOMEM, "seccomp: out of memory");
  p->len = got / sizeof(struct sock_filter);
  memcpy(p->insns, buf, got);
  *out = p;
  return RD_OK;
}

/* The flags glibc's fork() passes to clone (x86_64 and most others). */
#define FORK_FLAGS (CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | SIGCHLD)

static int compile(int spawner, rd_seccomp_prog **out, rd_error *err) {
  if (!out) return rd_error_set(err, RD_EINVAL, "seccomp: out is NULL");
  *out = NULL;
  if (seccomp_arch_native() == 0)
    return rd_error_set(err, RD_ENOSYS,
                        "seccomp: libseccomp does not know this architecture");
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
  if (!ctx) return rd_error_set(err, RD_ENOMEM, "seccomp: seccomp_init failed");

  const char *failed = NULL;
  int rc = 0;
  /* Not libseccomp's business: we set no_new_privs and load it ourselves. */
  if (rc == 0) rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
  if (rc < 0) failed = "attribute CTL_NNP";
  if (rc == 0) rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH,
                                     SCMP_ACT_KILL_PROCESS);
  if (rc < 0 && !failed) failed = "attribute ACT_BADARCH";
  /* A binary tree of syscall numbers instead of a linear scan; older
   * libseccomp without it still produce a correct (slower) program. */
  if (rc == 0) (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);

  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(allow_plain); i++)
    rc = add_named(ctx, SCMP_ACT_ALLOW, allow_plain[i], &failed);
  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(kill_list); i++) {
    if (spawner && strcmp(kill_list[i], "clone") == 0) continue; /* below */
    rc = add_named(ctx, SCMP_ACT_KILL_PROCESS, kill_list[i], &failed);
  }
  if (rc == 0) {
    failed = "clone3";
    rc = add_named(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", &failed);
  }

  /* setpriority(PRIO_PROCESS, 0 = self, 19): a worker lowers its own
   * priority before it exits (worker.c). */
  if (rc == 0) {
    failed = "setpriority";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setpriority), 3,
                          SCMP_A0(SCMP_CMP_EQ, PRIO_PROCESS), SCMP_A1(SCMP_CMP_EQ, 0),
                          SCMP_A2(SCMP_CMP_EQ, 19));
  }
  /* prlimit64(0 = self, resource, new = NULL, old): read own limits only
   * (a spawner: also lower them, in each worker it forks). */
  if (rc == 0 && !spawner) {
    failed = "prlimit64";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 2,
                          SCMP_A0(SCMP_CMP_EQ, 0), SCMP_A2(SCMP_CMP_EQ, 0));
  }
  if (rc == 0 && spawner) {
    /* What a tool template needs to fork its single-use workers, each of
     * which then loads the worker filter on top of this one. */
    failed = "spawner rules";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 1,
                          SCMP_A0(SCMP_CMP_EQ, 0));
    if (rc == 0)
      rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                            SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                    (scmp_datum_t)FORK_FLAGS));
    if (rc == 0)
      rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socketpair), 1,
                            SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    if (rc == 0)
      rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
                            SCMP_A0(SCMP_CMP_EQ, PR_SET_PDEATHSIG));
    if (rc == 0)
      rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(seccomp), 1,
                            SCMP_A0(SCMP_CMP_EQ, SECCOMP_SET_MODE_FILTER));
    if (rc == 0)
      rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(sched_setscheduler), 2,
                            SCMP_A0(SCMP_CMP_EQ, 0),
                            SCMP_A1(SCMP_CMP_EQ, SCHED_OTHER));
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(wait4), 0);
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(signalfd4), 0);
  }
  /* fcntl: descriptor flags and status flags, duplication. */
  static const int fcntl_ok[] = {F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD,
                                 F_DUPFD_CLOEXEC};
  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(fcntl_ok); i++) {
    failed = "fcntl";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
                          SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                  (scmp_datum_t)fcntl_ok[i]));
  }
  /* madvise: what allocators ask for, nothing that reaches other
   * processes or hardware. */
  static const int madvise_ok[] = {
    MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED,
    MADV_FREE, MADV_DONTFORK, MADV_DOFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
    MADV_DONTDUMP, MADV_DODUMP};
  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(madvise_ok); i++) {
    failed = "madvise";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(madvise), 1,
                          SCMP_A2(SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                  (scmp_datum_t)madvise_ok[i]));
  }
  /* ioctl: the request is an unsigned int to the kernel; compare 32 bits. */
  static const unsigned long ioctl_ok[] = {TCGETS, FIONREAD};
  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(ioctl_ok); i++) {
    failed = "ioctl";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                          SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                  (scmp_datum_t)ioctl_ok[i]));
  }
  if (rc < 0) {
    seccomp_release(ctx);
    return rd_error_set(err, RD_EIO, "seccomp: building the filter (%s): %s",
                        failed ? failed : "?", strerror(-rc));
  }
  rc = export_bpf(ctx, out, err);
  seccomp_release(ctx);
  return rc;
}

int rd__seccomp_compile(rd_seccomp_prog **out, rd_error *err) {
  return compile(0, out, err);
}

int rd__seccomp_compile_spawner(rd_seccomp_prog **out, rd_error *err) {
  return compile(1, out, err);
}

/* The drop program (limits.h): allow all but the spawner's additions,
 * each given the worker policy's answer. */
int rd__seccomp_compile_drop(rd_seccomp_prog **out, rd_error *err) {
  if (!out) return rd_error_set(err, RD_EINVAL, "seccomp: out is NULL");
  *out = NULL;
  if (seccomp_arch_native() == 0)
    return rd_error_set(err, RD_ENOSYS,
                        "seccomp: libseccomp does not know this architecture");
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) return rd_error_set(err, RD_ENOMEM, "seccomp: seccomp_init failed");
  const char *failed = "attribute CTL_NNP";
  int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
  /* another ABI: the spawner program under it kills already */
  if (rc == 0) {
    failed = "attribute ACT_BADARCH";
    rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
  }
  if (rc == 0) {
    failed = "clone";
    rc = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(clone), 0);
  }
  static const int eperm[] = {SCMP_SYS(socketpair), SCMP_SYS(prctl), SCMP_SYS(seccomp),
                              SCMP_SYS(sched_setscheduler), SCMP_SYS(wait4),
                              SCMP_SYS(signalfd4)};
  for (size_t i = 0; rc == 0 && i < RD_COUNTOF(eperm); i++) {
    failed = "an EPERM rule";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), eperm[i], 0);
  }
  /* prlimit64 (0, res, new, old): the worker policy reads only (new NULL) */
  if (rc == 0) {
    failed = "prlimit64";
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(prlimit64), 1,
                          SCMP_A2(SCMP_CMP_NE, 0));
  }
  if (rc < 0) {
    seccomp_release(ctx);
    return rd_error_set(err, RD_EIO, "seccomp: building the drop program (%s): %s",
                        failed, strerror(-rc));
  }
  rc = export_bpf(ctx, out, err);
  seccomp_release(ctx);
  return rc;
}

size_t rd__seccomp_size(const rd_seccomp_prog *p) {
  return p ? p->len : 0;
}

void rd__seccomp_free(rd_seccomp_prog *p) {
  rd__freemem(p);
}

static int applied;   /* filters this process loaded (the report's memory) */

int rd__seccomp_apply(const rd_seccomp_prog *p, rd_error *err) {
  if (!p) return rd_error_set(err, RD_EINVAL, "seccomp: no program");
  /* PR_GET answers -1 under a filter that refuses prctl (ours): then let
   * seccomp() itself say whether another filter may be stacked. */
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 0 &&
      rd__limits_no_new_privs(err) != RD_OK) {
    if (!applied)
      rd__limits_note(RD_LIM_SECCOMP, "unavailable (no_new_privs failed)");
    return err ? err->code : RD_EIO;
  }
  struct sock_fprog fp;
  fp.len = (unsigned short)p->len;
  fp.filter = (struct sock_filter *)p->insns;
  const char *how = "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)";
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                   SECCOMP_FILTER_FLAG_TSYNC, &fp);
  if (r != 0 && errno == ENOSYS) {
    how = "prctl(PR_SET_SECCOMP)";   /* kernel < 3.17: calling thread only */
    r = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0);
  }
  if (r > 0) {
    if (!applied)
      rd__limits_note(RD_LIM_SECCOMP, "unavailable (thread %ld not synced)", r);
    return rd_error_set(err, RD_EIO,
                        "seccomp: thread %ld could not be synchronized", r);
  }
  if (r != 0) {
    int e = errno;
    if (!applied)   /* a refused second filter leaves the first in force */
      rd__limits_note(RD_LIM_SECCOMP, "unavailable (%s: %s)", how, strerror(e));
    return rd_error_set(err, e == EINVAL || e == ENOSYS ? RD_ENOSYS : RD_EIO,
                        "seccomp: %s: %s", how, strerror(e));
  }
  applied++;
  rd__limits_note(RD_LIM_SECCOMP, "available (%zu BPF instructions, %s%s)",
                  p->len, how, applied > 1 ? ", stacked" : "");
  return RD_OK;
}

int rd__seccomp_stack(const rd_seccomp_prog *p, rd_error *err) {
  if (!p) return rd_error_set(err, RD_EINVAL, "seccomp: no program");
  struct sock_fprog fp;
  fp.len = (unsigned short)p->len;
  fp.filter = (struct sock_filter *)p->insns;
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fp);
  if (r != 0)
    return rd_error_set(err, RD_EIO, "seccomp: stacking a filter: %s",
                        r > 0 ? "a thread could not be synchronized" : strerror(errno));
  applied++;
  return RD_OK;
}
