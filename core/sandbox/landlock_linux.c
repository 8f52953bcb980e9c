/*
 * landlock_linux.c — rd__landlock_restrict() of limits.h: file access only
 * beneath the allowed paths, enforced by the kernel (Landlock, Linux 5.13+).
 *
 * glibc 2.36 has no wrappers: the three calls go through syscall(). The
 * system header may be older than the kernel (Debian 12 ships the 6.1 one,
 * ABI 2): rights and attributes of later ABIs are defined here, and the
 * ruleset attribute is passed with the size the running ABI knows.
 *
 *   ABI 1 (5.13)  13 file rights, EXECUTE .. MAKE_SYM
 *   ABI 2 (5.19)  REFER (link/rename across directories)
 *   ABI 3 (6.2)   TRUNCATE
 *   ABI 4 (6.7)   network: BIND_TCP, CONNECT_TCP   (handled: denied here)
 *   ABI 5 (6.10)  IOCTL_DEV
 *   ABI 6 (6.12)  scopes: abstract UNIX sockets, signals (denied outside)
 *   ABI 7 (6.15)  audit log flags (nothing to do)
 */
#include "sandbox/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/landlock.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

#define LL_FS_EXECUTE      (1ULL << 0)
#define LL_FS_WRITE_FILE   (1ULL << 1)
#define LL_FS_READ_FILE    (1ULL << 2)
#define LL_FS_READ_DIR     (1ULL << 3)
#define LL_FS_REMOVE_DIR   (1ULL << 4)
#define LL_FS_REMOVE_FILE  (1ULL << 5)
#define LL_FS_MAKE_CHAR    (1ULL << 6)
#define LL_FS_MAKE_DIR     (1ULL << 7)
#define LL_FS_MAKE_REG     (1ULL << 8)
#define LL_FS_MAKE_SOCK    (1ULL << 9)
#define LL_FS_MAKE_FIFO    (1ULL << 10)
#define LL_FS_MAKE_BLOCK   (1ULL << 11)
#define LL_FS_MAKE_SYM     (1ULL << 12)
#define LL_FS_REFER        (1ULL << 13)  /* ABI 2 */
#define LL_FS_TRUNCATE     (1ULL << 14)  /* ABI 3 */
#define LL_FS_IOCTL_DEV    (1ULL << 15)  /* ABI 5 */
#define LL_NET_BIND_TCP    (1ULL << 0)   /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1)   /* ABI 4 */
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)  /* ABI 6 */
#define LL_SCOPE_SIGNAL    (1ULL << 1)   /* ABI 6 */

/* The rights that make sense on a file (not a directory) in a rule. */
#define LL_FS_FILE_RIGHTS (LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | \
                           LL_FS_TRUNCATE | LL_FS_IOCTL_DEV)

/* Our own copies of the uapi structs, so the ABI 4 and 6 fields exist
 * whatever the header says. Layouts are fixed by the kernel ABI. */
struct ll_ruleset_attr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;  /* ABI 4 */
  uint64_t scoped;              /* ABI 6 */
};

struct ll_path_beneath_attr {
  uint64_t allowed_access;
  int32_t parent_fd;
} __attribute__((packed));

_Static_assert(sizeof(struct ll_path_beneath_attr) == 12,
               "landlock_path_beneath_attr is packed, 12 bytes");

int rd__landlock_abi(void) {
  long abi = syscall(SYS_landlock_create_ruleset, NULL, 0,
                     LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : (int)abi;
}

static uint64_t fs_rights(int abi) {
  uint64_t r = (LL_FS_MAKE_SYM << 1) - 1;   /* ABI 1: bits 0..12 */
  if (abi >= 2) r |= LL_FS_REFER;
  if (abi >= 3) r |= LL_FS_TRUNCATE;
  if (abi >= 5) r |= LL_FS_IOCTL_DEV;
  return r;
}

static int fail(rd_error *err, int code, const char *what, int e) {
  rd__limits_note(RD_LIM_LANDLOCK, "unavailable (%s: %s)", what, strerror(e));
  return rd_error_set(err, code, "landlock: %s: %s", what, strerror(e));
}

int rd__landlock_restrict(const char *const *rw_paths, size_t n, rd_error *err) {
  if (n > 0 && !rw_paths)
    return rd_error_set(err, RD_EINVAL, "landlock: no paths given");
  for (size_t i = 0; i < n; i++)
    if (!rw_paths[i])
      return rd_error_set(err, RD_EINVAL, "landlock: path %zu is NULL", i);

  long abi = syscall(SYS_landlock_create_ruleset, NULL, 0,
                     LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 0) {
    int e = errno;
    int code = (e == ENOSYS || e == EOPNOTSUPP) ? RD_ENOSYS : RD_EIO;
    return fail(err, code,
                e == EOPNOTSUPP ? "not enabled at boot (lsm=)"
                : e == ENOSYS   ? "not built into this kernel"
                                : "landlock_create_ruleset(VERSION)",
                e);
  }

  struct ll_ruleset_attr attr;
  memset(&attr, 0, sizeof attr);
  size_t attr_size = sizeof attr.handled_access_fs;
  attr.handled_access_fs = fs_rights((int)abi);
  if (abi >= 4) {
    attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
    attr_size = 2 * sizeof(uint64_t);
  }
  if (abi >= 6) {
    attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
    attr_size = sizeof attr;
  }
  const uint64_t grant = attr.handled_access_fs & ~LL_FS_EXECUTE;

  int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
  if (rs < 0) return fail(err, RD_EIO, "landlock_create_ruleset", errno);

  size_t added = 0, skipped = 0;
  for (size_t i = 0; i < n; i++) {
    int fd = open(rw_paths[i], O_PATH | O_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == ENOENT || e == ENOTDIR) {
        skipped++;
        continue;
      }
      close(rs);
      rd__limits_note(RD_LIM_LANDLOCK, "unavailable (open %s: %s)",
                      rw_paths[i], strerror(e));
      return rd_error_set(err, RD_EIO, "landlock: open %s: %s", rw_paths[i],
                          strerror(e));
    }
    struct stat st;
    uint64_t rights = grant;
    if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) rights &= LL_FS_FILE_RIGHTS;
    struct ll_path_beneath_attr pb = {rights, fd};
    long r = syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
    int e = errno;
    close(fd);
    if (r != 0) {
      close(rs);
      rd__limits_note(RD_LIM_LANDLOCK, "unavailable (landlock_add_rule %s: %s)",
                      rw_paths[i], strerror(e));
      return rd_error_set(err, RD_EIO, "landlock: landlock_add_rule %s: %s",
                          rw_paths[i], strerror(e));
    }
    added++;
  }

  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 &&
      rd__limits_no_new_privs(err) != RD_OK) {
    close(rs);
    rd__limits_note(RD_LIM_LANDLOCK, "unavailable (no_new_privs: %s)",
                    err ? err->message : "failed");
    return err ? err->code : RD_EIO;
  }
  if (syscall(SYS_landlock_restrict_self, rs, 0) != 0) {
    int e = errno;
    close(rs);
    return fail(err, RD_EIO, "landlock_restrict_self", e);
  }
  close(rs);

  /* "degraded" when the kernel lacks rights a newer one would enforce:
   * REFER (< 2) and TRUNCATE (< 3) leave holes inside the allowed trees,
   * no network / signal scoping (< 4 / < 6) only loses defense in depth. */
  rd__limits_note(RD_LIM_LANDLOCK,
                  "%s (ABI %ld; fs rights 0x%llx; %zu path%s allowed, %zu "
                  "missing skipped%s%s%s)",
                  abi >= 3 ? "available" : "degraded", abi,
                  (unsigned long long)grant, added, added == 1 ? "" : "s",
                  skipped, abi >= 4 ? "; tcp bind/connect denied" : "",
                  abi >= 6 ? "; signals and abstract unix sockets scoped" : "",
                  abi < 3 ? "; kernel lacks TRUNCATE/REFER control" : "");
  return RD_OK;
}
