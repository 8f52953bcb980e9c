/*
 * limits.h — kernel-enforced limits for sandboxed worker processes (the
 * process tier of the levels `strict` and `balanced`, DESIGN.md "Security
 * levels"). Everything here but rd__seccomp_compile/free acts on the
 * CALLING process and cannot be undone: call it in the worker (or in a
 * zygote whose children are workers), never in the engine. What is applied
 * is inherited by every child the process creates afterwards.
 *
 * The mechanisms, in the order a worker applies them (each later step may
 * forbid the system calls of an earlier one):
 *
 *   1. rd__limits_namespaces()  new network / IPC / UTS namespaces
 *   2. rd__limits_apply()       rlimits: address space, CPU, file size,
 *                               open files; core dumps and new processes off
 *   3. rd__limits_no_new_privs() no set-uid / file-capability gains
 *   4. rd__landlock_restrict()  file access only beneath the allowed paths
 *   5. rd__seccomp_apply()      the system call allow-list (compiled once,
 *                               before, with rd__seccomp_compile())
 *
 * Also call tzset() before step 4 if tool code should see the local time
 * zone in os.date: glibc reads /etc/localtime once and caches it, and
 * Landlock refuses the read afterwards (os.date then uses UTC).
 *
 * rd__limits_report() says, one line per mechanism, what the calls above
 * managed in this process — the text an operator needs to tell "enforced"
 * from "degraded on this kernel".
 *
 * Threading: every function acts on the calling process (namespaces,
 * rlimits, seccomp with TSYNC) or the calling thread (Landlock) and records
 * its outcome in static storage without locking: call them from one thread,
 * before the worker starts any other (it starts none). rd__seccomp_compile()
 * and rd__seccomp_free() touch only their program and are thread-safe.
 *
 * Platform: Linux. The implementations live in limits_linux.c,
 * landlock_linux.c and seccomp_linux.c; they are the only files that include
 * Linux headers. A port to another system adds a stub per file that fails
 * with RD_ENOSYS.
 */
#ifndef RD_SANDBOX_LIMITS_H
#define RD_SANDBOX_LIMITS_H

#include "rd.h"

/* ---- namespaces --------------------------------------------------------- */

#define RD_NS_NET 0x1   /* own network stack: only a `lo` that is down */
#define RD_NS_IPC 0x2   /* own System V IPC objects and POSIX queues */
#define RD_NS_UTS 0x4   /* own hostname / domain name */

/* Move the calling process into new namespaces, one per flag in `flags`
 * (RD_NS_* ORed; 0 does nothing). Each namespace is unshared on its own, so
 * a failure names the one that failed; those unshared before it stay.
 * When unshare() answers EPERM (no CAP_SYS_ADMIN), the process first enters
 * a new user namespace (unprivileged user namespaces) mapping its current
 * uid and gid to themselves (setgroups denied), then retries. That fallback
 * needs a single-threaded process; a process that is not dumpable (it
 * changed uid) is made dumpable for the three /proc/self writes that set
 * up the maps, then not dumpable again.
 *
 * Errors: RD_EINVAL (unknown flag bits); RD_ENOSYS (the kernel lacks the
 * namespace type, or refuses it even through a user namespace: EINVAL /
 * ENOSYS / EPERM / user namespaces disabled); RD_EIO (anything else, e.g.
 * ENOSPC / ENOMEM). The message reads "unshare(CLONE_NEWNET): <strerror>".
 * Cost: one unshare() per namespace; a network namespace costs the kernel
 * a few hundred microseconds to create and tears down asynchronously. */
int rd__limits_namespaces(int flags, rd_error *err);

/* ---- rlimits ------------------------------------------------------------ */

/* Resource limits of the calling process. 0 in a field leaves that limit
 * unchanged. A limit is never raised: a value above the current hard limit
 * is clamped to it (and the report line says so). */
typedef struct rd_limits {
  uint64_t address_space;  /* RLIMIT_AS, bytes of virtual memory (soft = hard).
                              Count what the process already maps (VmSize:
                              a few MB for a LuaJIT worker, terabytes of
                              shadow under ASan — leave 0 there). */
  double cpu_seconds;      /* RLIMIT_CPU, seconds of CPU FROM NOW: soft =
                              ceil(CPU used so far + cpu_seconds), hard =
                              soft + 1. The soft limit sends SIGXCPU (default
                              action: terminate), the hard one SIGKILL. */
  uint64_t file_size;      /* RLIMIT_FSIZE, bytes (soft = hard): a write past
                              it fails with EFBIG and raises SIGXFSZ, whose
                              default action terminates the process —
                              ignore SIGXFSZ to get the EFBIG. */
  int open_files;          /* RLIMIT_NOFILE: descriptors numbered below this
                              (soft = hard); opens beyond fail with EMFILE. */
  int keep_nproc;          /* non-zero: leave RLIMIT_NPROC as it is (a process
                              that still forks workers, each of which sets
                              it to 0 with its own rd__limits_apply). */
  int quiet;               /* non-zero: do not record the result for
                              rd__limits_report (no formatting, no reads of
                              the limits back): a strict worker forked from
                              its template, which reports nothing, and on
                              whose path each page written costs a fault. */
} rd_limits;

/* setrlimit() each non-zero field of *l, and always RLIMIT_CORE = 0 (no core
 * dumps of tool memory) and, unless keep_nproc, RLIMIT_NPROC = 0 (no new
 * process or thread for a non-root worker; root's CAP_SYS_RESOURCE ignores it — seccomp denies
 * fork/clone anyway).
 *
 * Errors: RD_EINVAL (l NULL, cpu_seconds negative or NaN, open_files < 0);
 * RD_EIO (setrlimit failed: the message names the resource). Limits set
 * before a failure stay. Cost: a few system calls. */
int rd__limits_apply(const rd_limits *l, rd_error *err);

/* prctl(PR_SET_NO_NEW_PRIVS, 1): execve can no longer grant privileges
 * (set-uid bits, file capabilities) to this process or its children; needed
 * by unprivileged Landlock and seccomp. Idempotent.
 * Errors: RD_ENOSYS (kernel < 3.5), RD_EIO. Cost: one system call. */
int rd__limits_no_new_privs(rd_error *err);

/* ---- Landlock ----------------------------------------------------------- */

/* Restrict the file system access of the calling thread and of everything
 * it later creates to the trees beneath rw_paths[0..n-1] (borrowed for the
 * call): there, every right the kernel's Landlock ABI knows except EXECUTE
 * (read, write, list, create and remove files, directories, symlinks, ...;
 * REFER from ABI 2, TRUNCATE from ABI 3, IOCTL_DEV from ABI 5); everywhere
 * else, none of them. EXECUTE is handled and granted nowhere: nothing is
 * executable any more. A path naming a file gets the file rights only.
 * Paths that do not exist (ENOENT, ENOTDIR) are skipped; n == 0 (or every
 * path skipped) denies all file access.
 * Defense in depth where the ABI has it: ABI >= 4 also denies TCP bind and
 * connect; ABI >= 6 scopes abstract UNIX sockets and signals to the domain
 * (no kill() of processes outside the sandbox).
 * Sets no_new_privs first (Landlock requires it without CAP_SYS_ADMIN).
 *
 * What Landlock does not cover (kernel <= 6.18): stat, chmod, chown, utime,
 * xattrs and readlink of paths outside; truncate() before ABI 3; files that
 * were opened before the call. Paths are resolved when this is called: a
 * directory renamed later stays allowed under its new name.
 *
 * Errors: RD_EINVAL (rw_paths NULL with n > 0, or a NULL path); RD_ENOSYS
 * (Landlock not built or not enabled: ENOSYS / EOPNOTSUPP); RD_EIO (any
 * other failure; the message names the step and errno). On an error no
 * Landlock rule is in force (no_new_privs may have been set). Cost: two
 * system calls per path plus five. */
int rd__landlock_restrict(const char *const *rw_paths, size_t n, rd_error *err);

/* The Landlock ABI version of the running kernel (>= 1), 0 when Landlock
 * is unavailable. Changes nothing. Cost: one system call. */
int rd__landlock_abi(void);

/* ---- seccomp ------------------------------------------------------------ */

/* A compiled system call filter: the classic BPF program, ready to load.
 * The policy is documented at the top of seccomp_linux.c. */
typedef struct rd_seccomp_prog rd_seccomp_prog;

/* Build the worker's allow-list with libseccomp, export it as raw BPF and
 * keep only that. Do it once (in the engine, or in the worker before it
 * forks): building takes a millisecond or so, loading it with
 * rd__seccomp_apply() a few microseconds. *out is owned by the caller:
 * rd__seccomp_free(). The program is for the architecture this library was
 * compiled for; calls of any other ABI (i386 `int 0x80`, x32) kill.
 * Errors: RD_EINVAL (out NULL), RD_ENOMEM, RD_ENOSYS (libseccomp does not
 * know this architecture), RD_EIO (libseccomp failed; message says where).
 * Thread-safe. */
int rd__seccomp_compile(rd_seccomp_prog **out, rd_error *err);

/* The same, for a process that forks workers after loading it (a strict
 * tool's template, worker.c): the worker policy plus fork-only clone,
 * socketpair(AF_UNIX), prctl(PR_SET_PDEATHSIG), prlimit64 on itself,
 * seccomp(SET_MODE_FILTER), wait4, signalfd4 (seccomp_linux.c says why).
 * Each child must load the worker program (rd__seccomp_compile) on top.
 * Errors and ownership as rd__seccomp_compile. */
int rd__seccomp_compile_spawner(rd_seccomp_prog **out, rd_error *err);

/* The DROP program: what a process under the spawner program loads to be
 * back under exactly the worker policy, for a fraction of the worker
 * program's size. It allows every call except those the spawner program
 * adds to the worker policy, and gives each of those the worker policy's
 * answer: clone kills (SIGSYS); socketpair, prctl, seccomp,
 * sched_setscheduler, wait4, signalfd4 and prlimit64 with a new limit fail
 * with EPERM. Stacked, the kernel takes the stricter answer of the two
 * programs for each call, so spawner + drop = worker policy, call for call
 * (spec/c/test_limits.c checks both against each other). Load it only on
 * top of the spawner program: alone it restricts almost nothing.
 * Errors and ownership as rd__seccomp_compile. */
int rd__seccomp_compile_drop(rd_seccomp_prog **out, rd_error *err);

/* Load p into the calling process: no_new_privs if not set yet, then
 * seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC) (all threads),
 * or prctl(PR_SET_SECCOMP) on kernels without the seccomp() call. Filters
 * stack: loading twice checks every call against both.
 * Errors: RD_EINVAL (p NULL), RD_ENOSYS (kernel without seccomp filters),
 * RD_EIO (anything else, e.g. a thread that cannot be synchronized).
 * Cost: a few microseconds; p stays usable (apply it in every worker).
 * A filtered process must leave with _exit(): in ASan builds the
 * LeakSanitizer check that exit() runs clones and ptraces, which kills. */
int rd__seccomp_apply(const rd_seccomp_prog *p, rd_error *err);

/* Stack p on the filter already in force in the calling process (which
 * therefore has no_new_privs): one seccomp() system call, TSYNC, and
 * nothing recorded for rd__limits_report — a strict worker forked from its
 * template loads the drop program so, without writing a report (each page
 * written there is a page fault on its way to its call).
 * Errors: RD_EINVAL (p NULL), RD_EIO (the kernel refused: errno in the
 * message; the filters in force stay). */
int rd__seccomp_stack(const rd_seccomp_prog *p, rd_error *err);

/* Release a program (NULL is fine). Thread-safe with other programs. */
void rd__seccomp_free(rd_seccomp_prog *p);

/* Number of BPF instructions in p (for reports and tests). */
size_t rd__seccomp_size(const rd_seccomp_prog *p);

/* ---- report ------------------------------------------------------------- */

/* What this process got, one line per mechanism, each
 *   "<mechanism>: available (<details>)"
 *   "<mechanism>: degraded (<why>)"      works, but less than asked
 *   "<mechanism>: unavailable (<why>)"   the call failed
 *   "<mechanism>: not applied"           the call was not made
 * for namespaces, rlimits, no_new_privs, landlock, seccomp, in that order,
 * each ending in '\n'. Static storage, valid until the next call of
 * rd__limits_report(); not thread-safe. Cost: formats 5 lines. */
const char *rd__limits_report(void);

/* Internal to the limits files: record the line of one mechanism
 * (printf-style text after "<mechanism>: "). */
typedef enum rd_limits_mech {
  RD_LIM_NAMESPACES = 0,
  RD_LIM_RLIMITS,
  RD_LIM_NO_NEW_PRIVS,
  RD_LIM_LANDLOCK,
  RD_LIM_SECCOMP,
  RD_LIM__COUNT
} rd_limits_mech;
void rd__limits_note(rd_limits_mech m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
