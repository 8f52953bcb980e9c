/*
 * fs.h — the file API that tool code gets inside the sandbox: `fs.*`.
 *
 * Every path a tool passes is resolved *beneath* a directory handle of one of
 * the allowed roots, by the kernel, in the same system call that opens it:
 * openat2(root_fd, rest, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS). There is
 * no check-then-open window: a symlink swapped in between two calls, a `..`
 * that climbs out, a symlink whose target leaves the root, or a /proc magic
 * link are refused by the kernel (EXDEV / ELOOP) at the moment of the open.
 * Operations on a name inside a directory (mkdir, remove) open the parent
 * beneath the root and use the *at() call relative to that descriptor; no
 * path is ever resolved again from `/`.
 *
 * Path rules (before any system call):
 *  - A path with a NUL byte, or an absolute path under no root, is refused
 *    as a sandbox violation. An empty path is an ordinary failure.
 *  - Relative paths are relative to the FIRST root.
 *  - An absolute path picks the longest root whose components are a prefix
 *    of the path's components ("/tmp/allowed-evil" does not match the root
 *    "/tmp/allowed") and whose remainder does not climb above it lexically
 *    ("/tmp/allowed/../x" is refused; "/tmp/allowed/a/../b" is fine). Empty
 *    and "." components are dropped; ".." stays in the remainder and is
 *    resolved by the kernel, which refuses escapes.
 *  - Symlinks are followed when their target stays beneath the same root.
 *    RESOLVE_BENEATH refuses *absolute* symlink targets, even ones that
 *    point back inside the root: use relative targets.
 *  - Roots are matched AND opened by their lexically normalized spelling
 *    (relative roots against the current directory at rd__fs_push time);
 *    symlinks inside a root's own spelling are followed once, when it is
 *    opened: the operator configured it.
 *
 * Lua API (the table rd__fs_push pushes; every function raises on misuse —
 * wrong argument types, bad options — and on a violation):
 *   fs.read(path [, {max_bytes=n, offset=n}])  -> string | nil, msg
 *       Without max_bytes the whole file, refused beyond RD_FS_READ_MAX.
 *   fs.write(path, data [, {append=bool, mode=n|"0644"}]) -> true | nil, msg
 *       Creates (mode, default 0644, minus umask; ignored for an existing
 *       file) or truncates; append=true appends. Follows a final symlink
 *       beneath the root (one openat2 from the root: no parent step needed).
 *       Refuses, before touching the file, data that would make it larger
 *       than max_file_size (for append: current size + #data).
 *   fs.list(path)  -> { {name=, type=, size=}, ... } sorted by name | nil, msg
 *       type is "file" | "dir" | "link" | "other" (of the entry itself, not
 *       of a symlink's target); at most RD_FS_LIST_MAX entries.
 *   fs.stat(path)  -> {type=, size=, mtime=, mode=} | nil, msg
 *       Follows a final symlink (beneath the root); mtime in seconds since
 *       the epoch (fractional), mode the permission bits (e.g. 420 = 0644).
 *   fs.remove(path) -> true | nil, msg      a file, a symlink, an empty dir
 *   fs.mkdir(path [, {parents=bool, mode=n|"0755"}]) -> true | nil, msg
 *       parents=true: every missing prefix is created, each one resolved
 *       beneath the root anew; an existing directory is success.
 *   fs.exists(path) -> boolean              (a violation still raises)
 * Only regular files are read or written (a FIFO or device is refused with
 * "not a regular file" and never blocks).
 *
 * Errors:
 *  - Violations call rd__lstate_breach(L, RD_BREACH_VIOLATION, ...) (lstate.h),
 *    which records the breach in the tool state owning L, if any, and raises
 *    "sandbox_violation: fs.read: access denied: ...". The message never
 *    contains the denied path nor any file content. ELOOP from the kernel
 *    (a magic link, a symlink loop, or any symlink in walk mode, below) is a
 *    violation too.
 *  - Ordinary failures inside a root return nil, "fs.read: REL: strerror"
 *    where REL is the path relative to its root ("." for the root itself),
 *    e.g. "fs.read: notes/a.txt: No such file or directory".
 *
 * openat2 answering EAGAIN (a rename or mount raced a ".." lookup) is
 * retried a few times, then reported as an ordinary failure.
 *
 * Kernels without openat2 (ENOSYS, Linux < 5.6, or a seccomp filter that
 * answers ENOSYS): paths are walked one component at a time with
 * openat(O_PATH | O_NOFOLLOW), ".." handled lexically over that walk, and
 * EVERY symlink is refused as a violation, even one that stays inside. Safe,
 * stricter. The switch happens once per process, on the first ENOSYS.
 *
 * System calls used (for the seccomp allow list): openat2, openat, fstat /
 * newfstatat, pread64, write, close, fcntl, mkdirat, unlinkat, getdents64.
 *
 * Threading: the functions hold no global state except the walk-mode switch
 * (atomic); a table may be used by one thread at a time, like its lua_State.
 */
#ifndef RD_SANDBOX_FS_H
#define RD_SANDBOX_FS_H

#include "rd.h"
#include <lua.h>

/* fs.read without max_bytes refuses files larger than this (bytes). */
#define RD_FS_READ_MAX ((int64_t)64 * 1024 * 1024)
/* fs.list refuses directories with more entries than this. */
#define RD_FS_LIST_MAX 65536

/* Push the `fs` table onto L's stack.
 *
 * roots:  n_roots directory paths (borrowed for the call). Each is opened
 *         with O_PATH | O_DIRECTORY | O_CLOEXEC. A root that cannot be opened
 *         (missing, not a directory, "") is NOT an error: it stays known by
 *         name, so paths under it fail with the ordinary
 *         nil, "fs.x: REL: the allowed path is not available" instead of a
 *         violation — and relative paths fail that way when it is the first
 *         root. n_roots == 0 gives a table that refuses every path.
 * max_file_size: the largest file fs.write may produce, in bytes; <= 0 means
 *         unlimited.
 *
 * The descriptors live in a userdata shared as an upvalue by the functions;
 * its __gc closes them, so they stay open as long as any function of the
 * table is reachable and are released by the garbage collector (lua_close
 * included).
 *
 * Returns RD_OK with exactly one value (the table) pushed, or
 * RD_EINVAL (roots == NULL with n_roots > 0) with nothing pushed and `err`
 * filled. Like any lua_push*, raises a Lua memory error if L's allocator
 * refuses; nothing leaks then. */
int rd__fs_push(lua_State *L, const char *const *roots, size_t n_roots,
                int64_t max_file_size, rd_error *err);

/* For tests: force (on != 0) or stop forcing the per-component walk used
 * when openat2 is missing. Not thread-safe with running fs calls. Returns
 * whether walk mode was on before. */
int rd__fs_force_walk(int on);

#endif
