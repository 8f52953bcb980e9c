/*
 * fs.c — `fs.*` for tool code: file access resolved beneath the allowed
 * roots by the kernel (openat2 RESOLVE_BENEATH). See fs.h for the contract.
 *
 * Layout: path rules (pure string work, no system calls), the beneath-open
 * (openat2, or the per-component walk), the operations (C, errno results, no
 * Lua), then the Lua glue. Every descriptor or heap block that must survive
 * a Lua allocation is held by a "box" userdata whose __gc releases it, so a
 * memory error raised by Lua in the middle of a call leaks nothing.
 */
#include "sandbox/fs.h"
#include "sandbox/lstate.h"

#include <lauxlib.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(SYS_openat2)
#include <linux/openat2.h>
#define HAVE_OPENAT2 1
#else
#define HAVE_OPENAT2 0
#endif

#define ROOTS_MT "rubberduck.fs_roots"
#define BOX_MT "rubberduck.fs_box"

/* Results of the C half besides 0 and a positive errno. The first three are
 * violations (raised), the others ordinary failures (nil, msg). */
#define FS_DENIED  (-1)   /* lexically outside every root */
#define FS_NULBYTE (-2)   /* NUL byte inside the path */
#define FS_ESCAPE  (-3)   /* the kernel refused: EXDEV / ELOOP, or a symlink in walk mode */
#define FS_UNAVAIL (-4)   /* the root could not be opened */
#define FS_TOOLONG (-5)   /* path longer than PATH_MAX */
#define FS_EMPTY   (-6)   /* empty path */
#define FS_NOTREG  (-7)   /* not a regular file */
#define FS_TOOBIG  (-8)   /* fs.read without max_bytes beyond RD_FS_READ_MAX */
#define FS_MAXSIZE (-9)   /* fs.write beyond max_file_size */
#define FS_TOOMANY (-10)  /* fs.list beyond RD_FS_LIST_MAX */
#define FS_ISROOT  (-11)  /* fs.remove of a root */

#define OPENAT2_RETRIES 8

/* ---- roots ------------------------------------------------------------------ */

typedef struct fs_root {
  int fd;          /* -1 when the root could not be opened */
  char *name;      /* lexically normalized absolute path, "/" or "/a/b" */
} fs_root;

typedef struct rd_fs {
  int64_t max_file_size;  /* <= 0: unlimited */
  size_t n;
  fs_root roots[];        /* then the name bytes */
} rd_fs;

static atomic_int walk_forced;    /* rd__fs_force_walk */
static atomic_int walk_detected;  /* openat2 answered ENOSYS once */

int rd__fs_force_walk(int on) {
  return atomic_exchange(&walk_forced, on ? 1 : 0);
}

static int walk_mode(void) {
  return !HAVE_OPENAT2 || atomic_load(&walk_forced) ||
         atomic_load(&walk_detected);
}

/* Next component of [p, end) skipping "/" runs and "." components; returns
 * its start (and *n its length) or NULL at the end. */
static const char *next_comp(const char *p, const char *end, size_t *n) {
  for (;;) {
    while (p < end && *p == '/') p++;
    if (p >= end) return NULL;
    const char *q = p;
    while (q < end && *q != '/') q++;
    *n = (size_t)(q - p);
    if (*n == 1 && p[0] == '.') {
      p = q;
      continue;
    }
    return p;
  }
}

static int is_dotdot(const char *c, size_t n) {
  return n == 2 && c[0] == '.' && c[1] == '.';
}

/* Lexically normalize the absolute path `in` into out (capacity >= strlen(in)
 * + 2; may be `in` itself): "/a/./b//../c/" -> "/a/c"; ".." at the top stays
 * at "/". */
static void normalize_abs(const char *in, char *out) {
  const char *end = in + strlen(in), *c;
  size_t n, len = 0;
  for (c = next_comp(in, end, &n); c; c = next_comp(c + n, end, &n)) {
    if (is_dotdot(c, n)) {
      while (len > 0 && out[len - 1] != '/') len--;
      if (len > 0) len--;          /* the slash before the component */
      continue;
    }
    out[len++] = '/';
    memmove(out + len, c, n);
    len += n;
  }
  if (len == 0) out[len++] = '/';
  out[len] = '\0';
}

/* If the normalized root `root` is a component-wise prefix of [p, end),
 * return where the rest starts; else NULL. */
static const char *root_prefix(const char *root, const char *p, const char *end) {
  const char *rend = root + strlen(root), *rc, *pc = p;
  size_t rn, pn;
  for (rc = next_comp(root, rend, &rn); rc; rc = next_comp(rc + rn, rend, &rn)) {
    pc = next_comp(pc, end, &pn);
    if (!pc || pn != rn || memcmp(pc, rc, rn) != 0) return NULL;
    pc += pn;
  }
  return pc;
}

/* Does [p, end) climb above its start lexically? */
static int climbs_out(const char *p, const char *end) {
  long depth = 0;
  const char *c;
  size_t n;
  for (c = next_comp(p, end, &n); c; c = next_comp(c + n, end, &n)) {
    if (is_dotdot(c, n)) {
      if (--depth < 0) return 1;
    } else {
      depth++;
    }
  }
  return 0;
}

/* Where a tool's path lands: its root and the remainder relative to it. */
typedef struct fs_target {
  const fs_root *root;
  char rel[PATH_MAX + 2];  /* components joined by '/', "" for the root */
  size_t rel_len;
} fs_target;

/* Join the components of [p, end) into t->rel (keeps "..", drops "."). */
static void set_rel(fs_target *t, const char *p, const char *end) {
  const char *c;
  size_t n, len = 0;
  for (c = next_comp(p, end, &n); c; c = next_comp(c + n, end, &n)) {
    if (len > 0) t->rel[len++] = '/';
    memcpy(t->rel + len, c, n);
    len += n;
  }
  t->rel[len] = '\0';
  t->rel_len = len;
}

/* Pick the root of a path. Returns 0, FS_DENIED, FS_NULBYTE, FS_EMPTY,
 * FS_TOOLONG or FS_UNAVAIL (t->rel is set then, for the message). No system call. */
static int locate(const rd_fs *fs, const char *path, size_t len, fs_target *t) {
  const char *end = path + len;
  if (len == 0) return FS_EMPTY;
  if (memchr(path, '\0', len)) return FS_NULBYTE;
  if (len > PATH_MAX) return FS_TOOLONG;
  t->root = NULL;
  if (path[0] != '/') {
    if (fs->n == 0 || climbs_out(path, end)) return FS_DENIED;
    t->root = &fs->roots[0];
    set_rel(t, path, end);
  } else {
    size_t best = 0;
    const char *best_rest = NULL;
    for (size_t i = 0; i < fs->n; i++) {
      if (!fs->roots[i].name[0]) continue;   /* "" was given: matches nothing */
      const char *rest = root_prefix(fs->roots[i].name, path, end);
      size_t rlen = strlen(fs->roots[i].name);
      if (!rest || climbs_out(rest, end)) continue;
      if (!t->root || rlen > best) {
        t->root = &fs->roots[i];
        best = rlen;
        best_rest = rest;
      }
    }
    if (!t->root) return FS_DENIED;
    set_rel(t, best_rest, end);
  }
  return t->root->fd < 0 ? FS_UNAVAIL : 0;
}

/* ---- opening beneath a root --------------------------------------------------- */

static int deny_or(int e) {
  return (e == EXDEV || e == ELOOP) ? FS_ESCAPE : e;
}

/* Walk mode: one component at a time, no symlink followed, so ".." can be
 * resolved lexically first (it then means exactly the walked parent). */
static int walk_open(int dirfd, const char *rel, int flags, mode_t mode, int *out) {
  char buf[PATH_MAX + 2];
  const char *end = rel + strlen(rel), *c;
  size_t n, len = 0;
  for (c = next_comp(rel, end, &n); c; c = next_comp(c + n, end, &n)) {
    if (is_dotdot(c, n)) {
      if (len == 0) return FS_ESCAPE;
      while (len > 0 && buf[len - 1] != '/') len--;
      if (len > 0) len--;
      continue;
    }
    if (len + n + 2 > sizeof buf) return ENAMETOOLONG;
    if (len > 0) buf[len++] = '/';
    memcpy(buf + len, c, n);
    len += n;
  }
  buf[len] = '\0';
  int cur = dirfd, e = 0;
  struct stat st;
  char *name = buf, *slash;
  while ((slash = strchr(name, '/')) != NULL) {  /* every component but the last */
    *slash = '\0';
    int fd = openat(cur, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      e = deny_or(errno);
    } else if (fstat(fd, &st) != 0) {
      e = errno;
    } else if (S_ISLNK(st.st_mode)) {
      e = FS_ESCAPE;
    } else if (!S_ISDIR(st.st_mode)) {
      e = ENOTDIR;
    }
    if (cur != dirfd) close(cur);
    cur = fd;
    if (e) {
      if (fd >= 0) close(fd);
      return e;
    }
    name = slash + 1;
  }
  if (!*name) name = ".";
  int fd = openat(cur, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    e = errno;
    if (e == ENOTDIR && (flags & O_DIRECTORY) &&
        fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
      e = ELOOP;
    e = deny_or(e);
  } else if ((flags & O_PATH) && fstat(fd, &st) == 0 && S_ISLNK(st.st_mode)) {
    close(fd);
    e = FS_ESCAPE;
  }
  if (cur != dirfd) close(cur);
  if (e) return e;
  *out = fd;
  return 0;
}

/* Open `rel` ("" = the root) beneath dirfd. Returns 0 (*out owned by the
 * caller), FS_ESCAPE for an escape, or an errno. */
static int open_beneath(int dirfd, const char *rel, int flags, mode_t mode, int *out) {
  const char *p = *rel ? rel : ".";
  if (!walk_mode()) {
#if HAVE_OPENAT2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? (uint64_t)mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (int tries = 0;; tries++) {
      long fd = syscall(SYS_openat2, dirfd, p, &how, sizeof how);
      if (fd >= 0) {
        *out = (int)fd;
        return 0;
      }
      int e = errno;
      /* EAGAIN: a concurrent rename or mount raced a ".." lookup. */
      if ((e == EAGAIN || e == EINTR) && tries < OPENAT2_RETRIES) continue;
      if (e != ENOSYS) return deny_or(e);
      atomic_store(&walk_detected, 1);
      break;
    }
#endif
  }
  return walk_open(dirfd, p, flags, mode, out);
}

/* Split t->rel into its parent (in `parent`) and last component. Returns 0,
 * or EINVAL when the last component is "..", FS_ISROOT for the root itself. */
static int split_parent(const fs_target *t, char *parent, const char **last) {
  if (t->rel_len == 0) return FS_ISROOT;
  const char *slash = strrchr(t->rel, '/');
  const char *name = slash ? slash + 1 : t->rel;
  if (strcmp(name, "..") == 0) return EINVAL;
  size_t plen = slash ? (size_t)(slash - t->rel) : 0;
  memcpy(parent, t->rel, plen);
  parent[plen] = '\0';
  *last = name;
  return 0;
}

/* ---- the operations (system calls only, no Lua) ------------------------------------ */

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "link";
  return "other";
}

static const char *dtype_name(unsigned char d) {
  switch (d) {
    case DT_REG: return "file";
    case DT_DIR: return "dir";
    case DT_LNK: return "link";
    default: return "other";
  }
}

/* Open a regular file beneath its root into *fd (O_NONBLOCK: a FIFO never
 * blocks the open; only regular files get further). *fd is set as soon as
 * it is open, so the caller releases it on every path. */
static int open_regular(const fs_target *t, int flags, mode_t mode, int *fd,
                        struct stat *st) {
  int rc = open_beneath(t->root->fd, t->rel, flags | O_NONBLOCK | O_NOCTTY, mode, fd);
  if (rc) return rc;
  if (fstat(*fd, st) != 0) return errno;
  if (S_ISDIR(st->st_mode)) return EISDIR;
  if (!S_ISREG(st->st_mode)) return FS_NOTREG;
  return 0;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int op_write(const rd_fs *fs, const fs_target *t, const char *data,
                    size_t len, int append, mode_t mode) {
  int64_t max = fs->max_file_size;
  if (max > 0 && (uint64_t)len > (uint64_t)max) return FS_MAXSIZE;
  int fd = -1;
  struct stat st;
  int rc = open_regular(t, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC),
                        mode, &fd, &st);
  if (rc == 0 && append && max > 0 &&
      (uint64_t)st.st_size + (uint64_t)len > (uint64_t)max)
    rc = FS_MAXSIZE;
  if (rc == 0) rc = write_all(fd, data, len);
  if (fd >= 0 && close(fd) != 0 && rc == 0 && errno != EINTR) rc = errno;
  return rc;
}

/* Open the parent directory of t->rel beneath the root. */
static int open_parent(const fs_target *t, int *pfd, const char **last) {
  char parent[PATH_MAX + 2];
  int rc = split_parent(t, parent, last);
  if (rc) return rc;
  return open_beneath(t->root->fd, parent, O_PATH | O_DIRECTORY, 0, pfd);
}

static int op_remove(const fs_target *t) {
  int pfd = -1, rc;
  const char *last;
  if ((rc = open_parent(t, &pfd, &last)) != 0) return rc;
  if (unlinkat(pfd, last, 0) != 0) {
    rc = errno;
    if (rc == EISDIR) rc = unlinkat(pfd, last, AT_REMOVEDIR) == 0 ? 0 : errno;
  }
  close(pfd);
  return rc;
}

static int op_mkdir_one(const fs_target *t, mode_t mode, int exist_ok) {
  int pfd = -1, rc;
  const char *last;
  if ((rc = open_parent(t, &pfd, &last)) != 0) {
    return rc == FS_ISROOT ? (exist_ok ? 0 : EEXIST) : rc;
  }
  rc = mkdirat(pfd, last, mode) == 0 ? 0 : errno;
  close(pfd);
  return (rc == EEXIST && exist_ok) ? 0 : rc;
}

/* mkdir -p: create every prefix (each one resolved beneath the root anew),
 * then check that the whole path is a directory. */
static int op_mkdir(const fs_target *t, mode_t mode, int parents) {
  if (!parents) return op_mkdir_one(t, mode, 0);
  fs_target pre;
  pre.root = t->root;
  for (size_t i = 0; i <= t->rel_len; i++) {
    if (i < t->rel_len && t->rel[i] != '/') continue;
    size_t start = i;   /* the component ending at i */
    while (start > 0 && t->rel[start - 1] != '/') start--;
    if (i == 0 || is_dotdot(t->rel + start, i - start)) continue;
    memcpy(pre.rel, t->rel, i);
    pre.rel[i] = '\0';
    pre.rel_len = i;
    int rc = op_mkdir_one(&pre, mode, 1);
    if (rc) return rc;
  }
  int fd = -1;
  int rc = open_beneath(t->root->fd, t->rel, O_PATH | O_DIRECTORY, 0, &fd);
  if (fd >= 0) close(fd);
  return rc;
}

static int op_stat(const fs_target *t, struct stat *st) {
  int fd = -1;
  int rc = open_beneath(t->root->fd, t->rel, O_PATH, 0, &fd);
  if (rc == 0 && fstat(fd, st) != 0) rc = errno;
  if (fd >= 0) close(fd);
  return rc;
}

/* ---- boxes: resources that must outlive a Lua allocation ----------------------------- */

typedef struct fs_ent {
  size_t name_off;
  const char *name;     /* set once the names buffer stops moving */
  const char *type;
  int64_t size;
} fs_ent;

typedef struct fs_box {
  int fd;
  DIR *dir;             /* owns fd when set */
  fs_ent *ents;
  size_t n, cap;
  rd_buf names;
} fs_box;

static void box_release(fs_box *b) {
  if (b->dir) closedir(b->dir);
  else if (b->fd >= 0) close(b->fd);
  b->dir = NULL;
  b->fd = -1;
  rd__freemem(b->ents);
  b->ents = NULL;
  b->n = b->cap = 0;
  rd__buf_free(&b->names);
}

static int box_gc(lua_State *L) {
  box_release(luaL_checkudata(L, 1, BOX_MT));
  return 0;
}

/* Push an empty box; released by box_release or by the collector. */
static fs_box *box_push(lua_State *L) {
  fs_box *b = lua_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  b->fd = -1;
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

static int ent_cmp(const void *a, const void *b) {
  return strcmp(((const fs_ent *)a)->name, ((const fs_ent *)b)->name);
}

/* Read the directory into b->ents, sorted by name. */
static int op_list(const fs_target *t, fs_box *b) {
  int rc = open_beneath(t->root->fd, t->rel, O_RDONLY | O_DIRECTORY, 0, &b->fd);
  if (rc) return rc;
  if (!(b->dir = fdopendir(b->fd))) return errno;
  int dfd = dirfd(b->dir);
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(b->dir);
    if (!de) {
      rc = errno;
      break;
    }
    const char *nm = de->d_name;
    if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
      continue;
    struct stat st;
    const char *type;
    int64_t size = 0;
    if (fstatat(dfd, nm, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      type = type_name(st.st_mode);
      size = (int64_t)st.st_size;
    } else if (errno == ENOENT) {
      continue;   /* removed while we read */
    } else {
      type = dtype_name(de->d_type);
    }
    if (b->n >= RD_FS_LIST_MAX) {
      rc = FS_TOOMANY;
      break;
    }
    if (b->n == b->cap) {
      size_t cap = b->cap ? b->cap * 2 : 64;
      fs_ent *e = rd__realloc(b->ents, cap * sizeof *e);
      if (!e) {
        rc = ENOMEM;
        break;
      }
      b->ents = e;
      b->cap = cap;
    }
    fs_ent *e = &b->ents[b->n++];
    e->name_off = b->names.len;
    e->type = type;
    e->size = size;
    rd__buf_append(&b->names, nm, strlen(nm) + 1);
  }
  closedir(b->dir);
  b->dir = NULL;
  b->fd = -1;
  if (rc == 0 && b->names.oom) rc = ENOMEM;
  if (rc) return rc;
  for (size_t i = 0; i < b->n; i++) b->ents[i].name = b->names.data + b->ents[i].name_off;
  if (b->n > 1) qsort(b->ents, b->n, sizeof *b->ents, ent_cmp);
  return 0;
}

/* ---- Lua glue ------------------------------------------------------------------------ */

static rd_fs *upfs(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* Map a failure to Lua: raise for a violation, else push nil, message. */
static int fail(lua_State *L, const char *op, const fs_target *t, int rc) {
  char msg[PATH_MAX + 256];
  const char *rel = (t->rel_len > 0) ? t->rel : ".";
  switch (rc) {
    case FS_DENIED:
      return rd__lstate_breach(L, RD_BREACH_VIOLATION,
          "%s: access denied: path is outside the allowed paths", op);
    case FS_NULBYTE:
      return rd__lstate_breach(L, RD_BREACH_VIOLATION,
          "%s: access denied: path contains a NUL byte", op);
    case FS_ESCAPE:
      return rd__lstate_breach(L, RD_BREACH_VIOLATION,
          "%s: access denied: path resolves outside the allowed paths "
          "(through '..', a symlink or a magic link)", op);
    case FS_EMPTY: snprintf(msg, sizeof msg, "%s: path is empty", op); break;
    case FS_TOOLONG: snprintf(msg, sizeof msg, "%s: path is too long", op); break;
    case FS_UNAVAIL:
      snprintf(msg, sizeof msg, "%s: %s: the allowed path is not available", op, rel);
      break;
    case FS_NOTREG:
      snprintf(msg, sizeof msg, "%s: %s: not a regular file", op, rel);
      break;
    case FS_TOOBIG:
      snprintf(msg, sizeof msg, "%s: %s: file is larger than %" PRId64
               " bytes; pass max_bytes to read part of it", op, rel, RD_FS_READ_MAX);
      break;
    case FS_MAXSIZE:
      snprintf(msg, sizeof msg, "%s: %s: file would exceed max_file_size (%" PRId64
               " bytes)", op, rel, upfs(L)->max_file_size);
      break;
    case FS_TOOMANY:
      snprintf(msg, sizeof msg, "%s: %s: directory has more than %d entries", op,
               rel, RD_FS_LIST_MAX);
      break;
    case FS_ISROOT:
      snprintf(msg, sizeof msg, "%s: %s: cannot remove an allowed path", op, rel);
      break;
    default: {
      char ebuf[128];
      snprintf(msg, sizeof msg, "%s: %s: %s", op, rel,
               strerror_r(rc, ebuf, sizeof ebuf));
    }
  }
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* The path argument, located. Returns 0 or an FS_* / errno code. */
static int arg_path(lua_State *L, fs_target *t) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  t->rel_len = 0;
  t->rel[0] = '\0';
  return locate(upfs(L), path, len, t);
}

/* Options table at idx (nil/none allowed), checked. */
static int opt_table(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return 1;
}

/* A non-negative integer option, or dflt when absent. */
static double opt_count(lua_State *L, int idx, const char *key, double dflt) {
  lua_getfield(L, idx, key);
  double v = dflt;
  if (!lua_isnil(L, -1)) {
    v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
    if (!(v >= 0 && v <= 9007199254740992.0 && v == floor(v))) {
      lua_pushfstring(L, "option %s must be a non-negative integer", key);
      luaL_argerror(L, idx, lua_tostring(L, -1));
    }
  }
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) {
    lua_pushfstring(L, "option %s must be a boolean", key);
    luaL_argerror(L, idx, lua_tostring(L, -1));
  }
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* mode: an integer (0644 written as 420) or an octal string ("0644", "755");
 * permission bits only (no setuid, setgid, sticky). */
static mode_t opt_mode(lua_State *L, int idx, mode_t dflt) {
  lua_getfield(L, idx, "mode");
  double v = -1;
  int t = lua_type(L, -1);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return dflt;
  }
  if (t == LUA_TNUMBER) {
    v = lua_tonumber(L, -1);
  } else if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    char *end;
    errno = 0;
    long m = strtol(s, &end, 8);
    if (*s && !*end && errno == 0) v = (double)m;
  }
  if (!(v >= 0 && v <= 0777 && v == floor(v)))
    luaL_argerror(L, idx, "option mode must be permission bits, 0 to 0777 (e.g. \"0644\")");
  lua_pop(L, 1);
  return (mode_t)v;
}

static int l_read(lua_State *L) {
  fs_target t;
  double max_bytes = -1, offset = 0;
  if (opt_table(L, 2)) {
    max_bytes = opt_count(L, 2, "max_bytes", -1);
    offset = opt_count(L, 2, "offset", 0);
  }
  int rc = arg_path(L, &t);
  if (rc) return fail(L, "fs.read", &t, rc);
  fs_box *b = box_push(L);
  struct stat st;
  rc = open_regular(&t, O_RDONLY, 0, &b->fd, &st);
  if (rc == 0 && max_bytes < 0 && (double)st.st_size - offset > (double)RD_FS_READ_MAX)
    rc = FS_TOOBIG;
  if (rc) {
    box_release(b);
    return fail(L, "fs.read", &t, rc);
  }
  /* Read to EOF, up to the limit: st_size may be stale or 0 (procfs). */
  double limit = max_bytes >= 0 ? max_bytes : (double)RD_FS_READ_MAX + 1;
  double total = 0;
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  while (total < limit) {
    char *p = luaL_prepbuffer(&B);
    size_t want = LUAL_BUFFERSIZE;
    if ((double)want > limit - total) want = (size_t)(limit - total);
    ssize_t r = pread(b->fd, p, want, (off_t)(offset + total));
    if (r < 0) {
      if (errno == EINTR) continue;
      rc = errno;
      break;
    }
    if (r == 0) break;
    luaL_addsize(&B, (size_t)r);
    total += (double)r;
  }
  luaL_pushresult(&B);
  box_release(b);
  if (rc == 0 && max_bytes < 0 && total > (double)RD_FS_READ_MAX) rc = FS_TOOBIG;
  if (rc) return fail(L, "fs.read", &t, rc);
  return 1;
}

static int l_write(lua_State *L) {
  fs_target t;
  size_t len;
  luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &len);
  int append = 0;
  mode_t mode = 0644;
  if (opt_table(L, 3)) {
    append = opt_bool(L, 3, "append");
    mode = opt_mode(L, 3, mode);
  }
  int rc = arg_path(L, &t);
  if (rc == 0) rc = op_write(upfs(L), &t, data, len, append, mode);
  if (rc) return fail(L, "fs.write", &t, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_list(lua_State *L) {
  fs_target t;
  int rc = arg_path(L, &t);
  if (rc) return fail(L, "fs.list", &t, rc);
  fs_box *b = box_push(L);
  rc = op_list(&t, b);
  if (rc) {
    box_release(b);
    return fail(L, "fs.list", &t, rc);
  }
  lua_createtable(L, (int)b->n, 0);
  for (size_t i = 0; i < b->n; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, b->ents[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, b->ents[i].type);
    lua_setfield(L, -2, "type");
    lua_pushnumber(L, (lua_Number)b->ents[i].size);
    lua_setfield(L, -2, "size");
    lua_rawseti(L, -2, (int)i + 1);
  }
  box_release(b);
  return 1;
}

static int l_stat(lua_State *L) {
  fs_target t;
  struct stat st;
  int rc = arg_path(L, &t);
  if (rc == 0) rc = op_stat(&t, &st);
  if (rc) return fail(L, "fs.stat", &t, rc);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, type_name(st.st_mode));
  lua_setfield(L, -2, "type");
  lua_pushnumber(L, (lua_Number)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushnumber(L, (lua_Number)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  return 1;
}

static int l_exists(lua_State *L) {
  fs_target t;
  struct stat st;
  int rc = arg_path(L, &t);
  if (rc == 0) rc = op_stat(&t, &st);
  if (rc == FS_DENIED || rc == FS_NULBYTE || rc == FS_ESCAPE)
    return fail(L, "fs.exists", &t, rc);
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int l_remove(lua_State *L) {
  fs_target t;
  int rc = arg_path(L, &t);
  if (rc == 0) rc = op_remove(&t);
  if (rc) return fail(L, "fs.remove", &t, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_mkdir(lua_State *L) {
  fs_target t;
  int parents = 0;
  mode_t mode = 0755;
  if (opt_table(L, 2)) {
    parents = opt_bool(L, 2, "parents");
    mode = opt_mode(L, 2, mode);
  }
  int rc = arg_path(L, &t);
  if (rc == 0) rc = op_mkdir(&t, mode, parents);
  if (rc) return fail(L, "fs.mkdir", &t, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int roots_gc(lua_State *L) {
  rd_fs *fs = luaL_checkudata(L, 1, ROOTS_MT);
  for (size_t i = 0; i < fs->n; i++) {
    if (fs->roots[i].fd >= 0) close(fs->roots[i].fd);
    fs->roots[i].fd = -1;
  }
  fs->n = 0;
  return 0;
}

int rd__fs_push(lua_State *L, const char *const *roots, size_t n_roots,
                int64_t max_file_size, rd_error *err) {
  static const luaL_Reg fns[] = {
    {"read", l_read},   {"write", l_write},   {"list", l_list},
    {"stat", l_stat},   {"remove", l_remove}, {"mkdir", l_mkdir},
    {"exists", l_exists}, {NULL, NULL},
  };
  char cwd[PATH_MAX];
  int have_cwd = 0;
  if (n_roots > 0 && !roots)
    return rd_error_set(err, RD_EINVAL, "fs: roots is NULL");
  if (n_roots > (SIZE_MAX / 2 - sizeof(rd_fs)) / sizeof(fs_root) / 2)
    return rd_error_set(err, RD_EINVAL, "fs: too many roots");
  size_t bytes = sizeof(rd_fs) + n_roots * sizeof(fs_root);
  for (size_t i = 0; i < n_roots; i++) {
    if (!roots[i]) return rd_error_set(err, RD_EINVAL, "fs: root %zu is NULL", i);
    size_t len = strlen(roots[i]);
    if (len > PATH_MAX) return rd_error_set(err, RD_EINVAL, "fs: root %zu is too long", i);
    if (roots[i][0] != '/') {
      if (!have_cwd && !getcwd(cwd, sizeof cwd))
        return rd_error_set(err, RD_EIO, "fs: relative root and no current directory");
      have_cwd = 1;
      len += strlen(cwd) + 1;
    }
    bytes += len + 2;
  }

  rd_fs *fs = lua_newuserdata(L, bytes);
  fs->max_file_size = max_file_size;
  fs->n = 0;
  if (luaL_newmetatable(L, ROOTS_MT)) {
    lua_pushcfunction(L, roots_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);

  char *names = (char *)&fs->roots[n_roots];
  for (size_t i = 0; i < n_roots; i++) {
    const char *r = roots[i];
    if (!r[0]) {
      names[0] = '\0';
    } else if (r[0] == '/') {
      normalize_abs(r, names);
    } else {
      /* "cwd/r" in place, then normalized in place (output never overtakes
       * input: it only drops bytes). */
      size_t cl = strlen(cwd), rl = strlen(r);
      memcpy(names, cwd, cl);
      names[cl] = '/';
      memcpy(names + cl + 1, r, rl + 1);
      normalize_abs(names, names);
    }
    /* Open the normalized spelling, so the name matched and the directory
     * opened agree ("/a/link/.." is "/a", not the link target's parent). */
    fs->roots[i].name = names;
    fs->roots[i].fd = names[0] ? open(names, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
    names += strlen(names) + 1;
    fs->n = i + 1;
  }

  lua_createtable(L, 0, (int)RD_COUNTOF(fns) - 1);
  for (const luaL_Reg *f = fns; f->name; f++) {
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, -2, f->name);
  }
  lua_remove(L, -2);
  rd_error_clear(err);
  return RD_OK;
}
