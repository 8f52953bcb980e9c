/*
 * env.c — LMDB environments of the data directory: open (creating the
 * directory), recovery of stale readers, map growth on MDB_MAP_FULL,
 * detection and rebuild of an unusable cache file, and the transaction
 * helpers the other store files use. See store.h.
 */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAP (16u << 20)
#define DEFAULT_MAX_MAP ((size_t)8 << 30)
#define FREE_TXNS 8
#define GROW_WAIT_S 2

static const char *const DATA_DBS[] = {"meta", "kv", "hist", "hist_idx", "audit"};
static const char *const CACHE_DBS[] = {"meta", "entries", "order", "expiry"};
/* cache.v2: the entries live in LMDB's main (unnamed) database, beside the
 * records of the three named ones: a renewed read txn reads them without
 * first looking a named database up again. A v1 file is rebuilt empty. */
static const char *const FORMAT[] = {"rubberduck.data.v1", "rubberduck.cache.v2"};

struct rd_store_env {
  MDB_env *mdb;
  rd_store_kind kind;
  MDB_dbi dbi[RD__DB_MAX];
  int ndbi;
  pthread_rwlock_t resize;     /* shared by every txn, exclusive to resize */
  atomic_int resizing;         /* 1 while a resize holds `resize` exclusive and
                                * waits for the pinned readers (see below) */
  pthread_mutex_t free_mu;
  MDB_txn *free_txn[FREE_TXNS];/* reset read txns, ready to renew */
  int nfree;
  rd__store_reader *readers;   /* attached readers (free_mu) */
  size_t map_size, max_map_size;
  int stale, rebuilt;
  char reason[160];
  char path[512];
  atomic_int refs;
  /* The process-wide list of open envs: LMDB forbids opening one env twice
   * in a process (its fcntl locks are per process), so a second open of
   * the same file shares the first. */
  struct rd_store_env *next;
  char key[PATH_MAX + 16];
  pid_t pid;
};

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static rd_store_env *open_list;

void rd__store_be64(unsigned char *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)(v & 0xff); v >>= 8; }
}

uint64_t rd__store_get_be64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

void rd_store_hash(unsigned char out[32], size_t n, const void *const *parts,
                   const size_t *lens) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, 32);
  for (size_t i = 0; i < n; i++)
    crypto_generichash_update(&st, parts[i], lens[i]);
  crypto_generichash_final(&st, out, 32);
}

MDB_dbi rd__store_dbi(rd_store_env *env, int which) { return env->dbi[which]; }
rd_store_kind rd__store_kind(rd_store_env *env) { return env->kind; }
void rd__store_ref(rd_store_env *env) { atomic_fetch_add(&env->refs, 1); }

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

/* LMDB reports a short write (what a full disk, a quota or a file size
 * limit usually cause) as EIO: tell those apart from a real I/O error. */
static int out_of_space(rd_store_env *env) {
  if (!env) return 0;
  char dir[512];
  snprintf(dir, sizeof dir, "%s", env->path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  struct statvfs vfs;
  if (statvfs(slash ? dir : ".", &vfs) == 0 &&
      (unsigned long long)vfs.f_bavail * vfs.f_frsize < (4ull << 20))
    return 1;
  struct rlimit rl;
  struct stat st;
  if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      stat(env->path, &st) == 0 && (unsigned long long)st.st_size + (1ull << 20) > rl.rlim_cur)
    return 1;
  return 0;
}

int rd__store_mdb_error(rd_store_env *env, rd_error *err, int rc, const char *what) {
  const char *file = env ? base_name(env->path) : "store";
  if (rc == EIO && out_of_space(env))
    return rd_error_set(err, RD_EFULL, "storage_full: %s: %s: the disk is full (a short "
                        "write: no space left or the file size limit reached); nothing "
                        "committed before is lost", what, file);
  switch (rc) {
  case ENOSPC: case EDQUOT: case EFBIG:
    return rd_error_set(err, RD_EFULL, "storage_full: %s: %s: the disk is full (%s); "
                        "nothing committed before is lost", what, file, strerror(rc));
  case MDB_MAP_FULL:
    return rd_error_set(err, RD_EFULL, "storage_full: %s: %s reached its maximum map "
                        "size of %zu bytes (max_map_size); nothing committed before is lost",
                        what, file, env ? env->max_map_size : (size_t)0);
  case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID:
  case MDB_VERSION_MISMATCH: case MDB_INCOMPATIBLE:
    return rd_error_set(err, RD_ECORRUPT, "%s: %s is corrupt or not an LMDB file: %s",
                        what, file, mdb_strerror(rc));
  case MDB_READERS_FULL:
    return rd_error_set(err, RD_EBUSY, "%s: %s: %s", what, file, mdb_strerror(rc));
  case ENOMEM:
    return rd_error_set(err, RD_ENOMEM, "%s: out of memory", what);
  default:
    return rd_error_set(err, RD_EIO, "%s: %s: %s", what, file, mdb_strerror(rc));
  }
}

/* An RD_E* code (its message is already in err) rather than an LMDB/errno one. */
static int is_rd_code(int rc) { return rc < 0 && rc > -1000; }

/* ---- open ------------------------------------------------------------------ */

static int mkdir_p(const char *dir, rd_error *err) {
  char buf[512];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof buf) return rd_error_set(err, RD_EINVAL, "data dir: bad path");
  memcpy(buf, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char c = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return rd_error_set(err, RD_EIO, "data dir: cannot create %s: %s", buf, strerror(errno));
      buf[i] = c;
    }
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return rd_error_set(err, RD_EIO, "data dir: %s is not a directory", dir);
  return RD_OK;
}

static void boot_id(char out[40]) {
  memset(out, 0, 40);
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (!f) return;
  if (!fgets(out, 40, f)) out[0] = '\0';
  fclose(f);
  out[strcspn(out, "\n")] = '\0';
}

/* LMDB opens the data file without O_CLOEXEC: mark every descriptor of
 * the env's files close-on-exec, so the worker zygote (exec'd by this
 * process) and the sandboxed workers it forks never hold them. */
static void cloexec_fds(const char *path) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  char lock[PATH_MAX + 8];
  snprintf(lock, sizeof lock, "%s-lock", path);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] == '.' || fd < 0 || fd == dirfd(d)) continue;
    char link[64], target[PATH_MAX + 8];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (strcmp(target, path) == 0 || strcmp(target, lock) == 0) {
      int fl = fcntl(fd, F_GETFD);
      if (fl >= 0) fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
  }
  closedir(d);
}

/* ---- key order ------------------------------------------------------------------
 * The cache's entries (LMDB's main database) are compared by
 * rd__store_cmp_bytes: the order of LMDB's default (mdb_cmp_memn: bytes
 * compared unsigned, then the shorter first), so a file written with it
 * is the same B-tree any LMDB reader walks with the default, and the
 * other way round; only cheaper: eight bytes per step as big-endian
 * words and one overlapping word for the tail, no call to memcmp. */
static inline uint64_t be64_at(const unsigned char *p) {
  uint64_t x;
  memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  x = __builtin_bswap64(x);
#endif
  return x;
}

int rd__store_cmp_bytes(const MDB_val *a, const MDB_val *b) {
  size_t la = a->mv_size, lb = b->mv_size, n = la < lb ? la : lb;
  const unsigned char *p = a->mv_data, *q = b->mv_data;
  uint64_t x, y;
  if (n >= 8) {
    const unsigned char *pe = p + n - 8;
    for (; p < pe; p += 8, q += 8)
      if ((x = be64_at(p)) != (y = be64_at(q))) return x < y ? -1 : 1;
    /* the last 8 bytes (overlapping the last word: those bytes are equal) */
    q += pe - p;
    if ((x = be64_at(pe)) != (y = be64_at(q))) return x < y ? -1 : 1;
  } else {
    for (size_t i = 0; i < n; i++)
      if (p[i] != q[i]) return p[i] < q[i] ? -1 : 1;
  }
  return la < lb ? -1 : la > lb;
}

/* Called with the resize lock exclusive (or with no txn in use): no read
 * is in progress, so the attached readers' snapshots can be dropped. */
static void free_txns(rd_store_env *env) {
  pthread_mutex_lock(&env->free_mu);
  for (int i = 0; i < env->nfree; i++) mdb_txn_abort(env->free_txn[i]);
  env->nfree = 0;
  for (rd__store_reader *r = env->readers; r; r = r->next)
    if (r->live) { mdb_txn_reset(r->txn); r->live = 0; }
  pthread_mutex_unlock(&env->free_mu);
}

static void env_shut(rd_store_env *env) {
  if (env->mdb) {
    free_txns(env);
    mdb_env_close(env->mdb);
    env->mdb = NULL;
  }
}

/* Open env->path; fills dbis. Returns an LMDB/errno code (0 ok) or an RD
 * code with err filled. *why gets a reason for the cache's rebuild. */
static int try_open(rd_store_env *env, size_t map_size, char *why, size_t whylen,
                    rd_error *err) {
  int rc = mdb_env_create(&env->mdb);
  if (rc) return rc;
  mdb_env_set_maxdbs(env->mdb, 8);
  mdb_env_set_maxreaders(env->mdb, 510);
  mdb_env_set_mapsize(env->mdb, map_size);
  unsigned flags = MDB_NOSUBDIR | MDB_NOTLS;
  if (env->kind == RD_STORE_CACHE) flags |= MDB_NOSYNC;
  rc = mdb_env_open(env->mdb, env->path, flags, 0600);
  if (rc) {
    snprintf(why, whylen, "cannot open: %s", mdb_strerror(rc));
    return rc;
  }
  char real[PATH_MAX];
  cloexec_fds(realpath(env->path, real) ? real : env->path);
  int dead = 0;
  mdb_reader_check(env->mdb, &dead);
  env->stale += dead;
  MDB_envinfo info;
  mdb_env_info(env->mdb, &info);
  env->map_size = info.me_mapsize;
  if (env->map_size > env->max_map_size) env->max_map_size = env->map_size;

  MDB_txn *txn;
  rc = mdb_txn_begin(env->mdb, NULL, 0, &txn);
  if (rc) { snprintf(why, whylen, "cannot write: %s", mdb_strerror(rc)); return rc; }
  const char *const *names = env->kind == RD_STORE_DATA ? DATA_DBS : CACHE_DBS;
  env->ndbi = env->kind == RD_STORE_DATA ? (int)RD_COUNTOF(DATA_DBS) : (int)RD_COUNTOF(CACHE_DBS);
  for (int i = 0; i < env->ndbi; i++) {
    int main_db = env->kind == RD_STORE_CACHE && i == RD__DB_ENTRIES;
    rc = mdb_dbi_open(txn, main_db ? NULL : names[i], main_db ? 0 : MDB_CREATE, &env->dbi[i]);
    if (rc) {
      snprintf(why, whylen, "database %s: %s", names[i], mdb_strerror(rc));
      mdb_txn_abort(txn);
      return rc;
    }
  }
  /* the entries' comparator (the default's order): before any access */
  if (env->kind == RD_STORE_CACHE)
    mdb_set_compare(txn, env->dbi[RD__DB_ENTRIES], rd__store_cmp_bytes);
  const char *fmt = FORMAT[env->kind];
  MDB_val k = {6, "format"}, v;
  rc = mdb_get(txn, env->dbi[RD__DB_META], &k, &v);
  if (rc == MDB_NOTFOUND) {
    MDB_stat st;
    int nonempty = 0;
    for (int i = 1; i < env->ndbi; i++)
      if (mdb_stat(txn, env->dbi[i], &st) == 0 &&
          st.ms_entries > (env->kind == RD_STORE_CACHE && i == RD__DB_ENTRIES
                           ? RD__CACHE_NAMED_DBS : 0))
        nonempty = 1;
    if (nonempty) {
      snprintf(why, whylen, "no format record but data present");
      mdb_txn_abort(txn);
      return MDB_INVALID;
    }
    v.mv_data = (void *)fmt;
    v.mv_size = strlen(fmt);
    rc = mdb_put(txn, env->dbi[RD__DB_META], &k, &v, 0);
  } else if (rc == 0) {
    if (v.mv_size != strlen(fmt) || memcmp(v.mv_data, fmt, v.mv_size) != 0) {
      snprintf(why, whylen, "format is %.*s, expected %s",
               (int)(v.mv_size > 40 ? 40 : v.mv_size), (const char *)v.mv_data, fmt);
      mdb_txn_abort(txn);
      return MDB_INVALID;
    }
  }
  if (rc == 0 && env->kind == RD_STORE_CACHE) {
    /* After a machine restart, a cache written since its last sync may be
     * torn (NOSYNC): compare the boot id and the last synced txn. */
    char boot[40];
    boot_id(boot);
    MDB_val sk = {7, "session"}, sv;
    int src = mdb_get(txn, env->dbi[RD__DB_META], &sk, &sv);
    if (src == 0 && sv.mv_size == 48) {
      uint64_t synced = rd__store_get_be64((const unsigned char *)sv.mv_data + 40);
      if (strncmp(sv.mv_data, boot, 40) != 0 && synced != (uint64_t)info.me_last_txnid) {
        snprintf(why, whylen, "the machine restarted since the cache was last synced");
        mdb_txn_abort(txn);
        return MDB_INVALID;
      }
    }
  }
  if (rc == 0) rc = mdb_txn_commit(txn);
  else mdb_txn_abort(txn);
  if (rc) snprintf(why, whylen, "cannot initialize: %s", mdb_strerror(rc));
  return rc;
}

static int unusable(int rc) {
  return rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND ||
         rc == MDB_VERSION_MISMATCH || rc == MDB_INCOMPATIBLE || rc == MDB_BAD_TXN ||
         rc == MDB_BAD_DBI || rc == EINVAL;
}

static int env_open(rd_store_env **out, const char *dir, rd_store_kind kind,
                    const rd_store_env_config *cfg, rd_error *err);

int rd_store_env_open(rd_store_env **out, const char *dir, rd_store_kind kind,
                      const rd_store_env_config *cfg, rd_error *err) {
  rd_error_clear(err);
  if (!out || !dir || (kind != RD_STORE_DATA && kind != RD_STORE_CACHE))
    return rd_error_set(err, RD_EINVAL, "store: bad argument");
  *out = NULL;
  int rc = mkdir_p(dir, err);
  if (rc) return rc;
  char key[PATH_MAX + 16], real[PATH_MAX];
  snprintf(key, sizeof key, "%s/%s", realpath(dir, real) ? real : dir,
           kind == RD_STORE_DATA ? "data.mdb" : "cache.mdb");
  pthread_mutex_lock(&open_mu);
  for (rd_store_env *o = open_list; o; o = o->next) {
    if (o->pid == getpid() && strcmp(o->key, key) == 0) { /* (a forked child's are not) */
      atomic_fetch_add(&o->refs, 1);
      pthread_mutex_unlock(&open_mu);
      *out = o;
      return RD_OK;
    }
  }
  rc = env_open(out, dir, kind, cfg, err);
  if (rc == RD_OK) {
    snprintf((*out)->key, sizeof (*out)->key, "%s", key);
    (*out)->pid = getpid();
    (*out)->next = open_list;
    open_list = *out;
  }
  pthread_mutex_unlock(&open_mu);
  return rc;
}

static int env_open(rd_store_env **out, const char *dir, rd_store_kind kind,
                    const rd_store_env_config *cfg, rd_error *err) {
  int rc;
  rd_store_env *env = rd__calloc(1, sizeof *env);
  if (!env) return rd_error_set(err, RD_ENOMEM, "store: out of memory");
  env->kind = kind;
  atomic_init(&env->refs, 1);
  pthread_rwlock_init(&env->resize, NULL);
  atomic_init(&env->resizing, 0);
  pthread_mutex_init(&env->free_mu, NULL);
  size_t map = cfg && cfg->map_size ? cfg->map_size : DEFAULT_MAP;
  env->max_map_size = cfg && cfg->max_map_size ? cfg->max_map_size : DEFAULT_MAX_MAP;
  if (env->max_map_size < map) env->max_map_size = map;
  if ((size_t)snprintf(env->path, sizeof env->path, "%s/%s", dir,
                       kind == RD_STORE_DATA ? "data.mdb" : "cache.mdb") >= sizeof env->path) {
    rd__freemem(env);
    return rd_error_set(err, RD_EINVAL, "data dir: path too long");
  }
  char why[160] = "";
  rc = try_open(env, map, why, sizeof why, err);
  if (rc && kind == RD_STORE_CACHE && unusable(rc)) {
    env_shut(env);
    char lock[600];
    snprintf(lock, sizeof lock, "%s-lock", env->path);
    unlink(env->path);
    unlink(lock);
    env->rebuilt = 1;
    snprintf(env->reason, sizeof env->reason, "%s", why);
    why[0] = '\0';
    rc = try_open(env, map, why, sizeof why, err);
  }
  if (rc) {
    int code = is_rd_code(rc) ? rc : rd__store_mdb_error(env, err, rc, "open");
    if (!is_rd_code(rc) && why[0])
      rd_error_set(err, code, "store: %s: %s", env->path, why);
    env_shut(env);
    pthread_rwlock_destroy(&env->resize);
    pthread_mutex_destroy(&env->free_mu);
    rd__freemem(env);
    return code;
  }
  *out = env;
  return RD_OK;
}

/* The cache records its last sync, so the next open after a machine
 * restart knows whether the file can be trusted. */
static void cache_mark_synced(rd_store_env *env) {
  mdb_env_sync(env->mdb, 1);
  MDB_txn *txn;
  if (mdb_txn_begin(env->mdb, NULL, 0, &txn)) return;
  unsigned char v[48];
  char boot[40];
  boot_id(boot);
  memcpy(v, boot, 40);
  rd__store_be64(v + 40, (uint64_t)mdb_txn_id(txn));
  MDB_val k = {7, "session"}, val = {sizeof v, v};
  if (mdb_put(txn, env->dbi[RD__DB_META], &k, &val, 0) || mdb_txn_commit(txn)) {
    mdb_txn_abort(txn);
    return;
  }
  mdb_env_sync(env->mdb, 1);
}

void rd_store_env_close(rd_store_env *env) {
  if (!env) return;
  pthread_mutex_lock(&open_mu);
  if (atomic_fetch_sub(&env->refs, 1) != 1) {
    pthread_mutex_unlock(&open_mu);
    return;
  }
  for (rd_store_env **p = &open_list; *p; p = &(*p)->next)
    if (*p == env) { *p = env->next; break; }
  free_txns(env);
  if (env->kind == RD_STORE_CACHE) cache_mark_synced(env);
  env_shut(env);
  /* Only now may this process open the file again (a new env of its own). */
  pthread_mutex_unlock(&open_mu);
  pthread_rwlock_destroy(&env->resize);
  pthread_mutex_destroy(&env->free_mu);
  rd__freemem(env);
}

void rd_store_env_info_get(rd_store_env *env, rd_store_env_info *info) {
  memset(info, 0, sizeof *info);
  MDB_envinfo ei;
  MDB_stat st;
  mdb_env_info(env->mdb, &ei);
  mdb_env_stat(env->mdb, &st);
  info->map_size = ei.me_mapsize;
  info->max_map_size = env->max_map_size;
  info->used_bytes = (size_t)(ei.me_last_pgno + 1) * st.ms_psize;
  info->stale_readers = env->stale;
  info->rebuilt = env->rebuilt;
  snprintf(info->rebuild_reason, sizeof info->rebuild_reason, "%s", env->reason);
  snprintf(info->path, sizeof info->path, "%s", env->path);
}

/* ---- transactions ------------------------------------------------------------ */

/* Exclusive use of the map for a resize: the resize lock exclusive (no
 * txn in use but the readers' pinned ones), then `resizing` set and every
 * pinned reader waited for, all within GROW_WAIT_S. A reader that pins
 * after `resizing` is set sees it and takes the lock instead (so it waits
 * for the resize); one that pinned before is seen pinned here (both sides
 * store, then load, sequentially consistent). 0, or nonzero with nothing
 * held. Undo with wrunlock. */
static int any_pinned(rd_store_env *env) {
  int pinned = 0;
  pthread_mutex_lock(&env->free_mu);
  for (rd__store_reader *r = env->readers; r && !pinned; r = r->next)
    pinned = atomic_load(&r->busy) == RD__READER_PINNED;
  pthread_mutex_unlock(&env->free_mu);
  return pinned;
}

static int wrlock_timed(rd_store_env *env) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += GROW_WAIT_S;
  int rc = pthread_rwlock_timedwrlock(&env->resize, &ts);
  if (rc) return rc;
  atomic_store(&env->resizing, 1);
  while (any_pinned(env)) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec > ts.tv_sec || (now.tv_sec == ts.tv_sec && now.tv_nsec >= ts.tv_nsec)) {
      atomic_store(&env->resizing, 0);
      pthread_rwlock_unlock(&env->resize);
      return ETIMEDOUT;
    }
    struct timespec nap = {0, 100000}; /* 0.1 ms */
    nanosleep(&nap, NULL);
  }
  return 0;
}

static void wrunlock(rd_store_env *env) {
  atomic_store(&env->resizing, 0);
  pthread_rwlock_unlock(&env->resize);
}

/* Another process grew the map: adopt its size. */
static int adopt_size(rd_store_env *env, rd_error *err) {
  if (wrlock_timed(env) != 0)
    return rd_error_set(err, RD_EBUSY, "store: map resized by another process, "
                        "and reads stay open in this one");
  free_txns(env);
  int rc = mdb_env_set_mapsize(env->mdb, 0);
  MDB_envinfo ei;
  mdb_env_info(env->mdb, &ei);
  env->map_size = ei.me_mapsize;
  if (env->map_size > env->max_map_size) env->max_map_size = env->map_size;
  wrunlock(env);
  return rc ? rd__store_mdb_error(env, err, rc, "resize") : RD_OK;
}

static int grow(rd_store_env *env, size_t seen, rd_error *err) {
  if (wrlock_timed(env) != 0)
    return rd_error_set(err, RD_EFULL, "storage_full: %s: the map is full and could not "
                        "grow while reads stay open", base_name(env->path));
  int rc = RD_OK;
  if (env->map_size == seen) { /* nobody grew it meanwhile */
    if (env->map_size >= env->max_map_size) {
      wrunlock(env);
      return rd__store_mdb_error(env, err, MDB_MAP_FULL, "write");
    }
    size_t want = env->map_size * 2;
    if (want > env->max_map_size || want < env->map_size) want = env->max_map_size;
    free_txns(env);
    int mrc = mdb_env_set_mapsize(env->mdb, want);
    if (mrc) rc = rd__store_mdb_error(env, err, mrc, "grow map");
    else env->map_size = want;
  }
  wrunlock(env);
  return rc;
}

int rd__store_write(rd_store_env *env, rd__store_txn_fn fn, void *ud, rd_error *err) {
  for (int tries = 0; tries < 64; tries++) {
    pthread_rwlock_rdlock(&env->resize);
    size_t seen = env->map_size;
    MDB_txn *txn;
    int rc = mdb_txn_begin(env->mdb, NULL, 0, &txn);
    if (rc == MDB_MAP_RESIZED) {
      pthread_rwlock_unlock(&env->resize);
      if ((rc = adopt_size(env, err)) != RD_OK) return rc;
      continue;
    }
    if (rc) {
      pthread_rwlock_unlock(&env->resize);
      return rd__store_mdb_error(env, err, rc, "begin write");
    }
    rc = fn(txn, ud, err);
    if (rc == RD_OK) rc = mdb_txn_commit(txn);
    else mdb_txn_abort(txn);
    pthread_rwlock_unlock(&env->resize);
    if (rc == RD_OK) return RD_OK;
    if (is_rd_code(rc)) return rc;
    if (rc == MDB_MAP_FULL) {
      if ((rc = grow(env, seen, err)) != RD_OK) return rc;
      continue;
    }
    if (rc == MDB_MAP_RESIZED) {
      if ((rc = adopt_size(env, err)) != RD_OK) return rc;
      continue;
    }
    return rd__store_mdb_error(env, err, rc, "write");
  }
  return rd_error_set(err, RD_EIO, "store: write kept failing after map growth");
}

int rd__store_read_begin(rd_store_env *env, MDB_txn **txn, rd_error *err) {
  for (int tries = 0; tries < 8; tries++) {
    pthread_rwlock_rdlock(&env->resize);
    MDB_txn *t = NULL;
    pthread_mutex_lock(&env->free_mu);
    if (env->nfree) t = env->free_txn[--env->nfree];
    pthread_mutex_unlock(&env->free_mu);
    int rc;
    if (t) {
      rc = mdb_txn_renew(t);
      if (rc) { mdb_txn_abort(t); t = NULL; }
    } else {
      rc = mdb_txn_begin(env->mdb, NULL, MDB_RDONLY, &t);
    }
    if (rc == 0) { *txn = t; return RD_OK; }
    pthread_rwlock_unlock(&env->resize);
    if (rc == MDB_MAP_RESIZED) {
      if ((rc = adopt_size(env, err)) != RD_OK) return rc;
      continue;
    }
    return rd__store_mdb_error(env, err, rc, "begin read");
  }
  return rd_error_set(err, RD_EIO, "store: cannot begin a read");
}

/* A caller-owned read txn (a reader's): *slot is NULL or a reset txn.
 * Renewing a reset txn keeps its reader slot (MDB_NOTLS): no lock-table
 * search, no malloc. On success the resize lock is held (shared). */
int rd__store_read_renew(rd_store_env *env, MDB_txn **slot, rd_error *err) {
  for (int tries = 0; tries < 8; tries++) {
    pthread_rwlock_rdlock(&env->resize);
    MDB_txn *t = *slot;
    int rc;
    if (t) {
      rc = mdb_txn_renew(t);
      if (rc) { /* resized map, a slot taken over: start afresh */
        mdb_txn_abort(t);
        *slot = t = NULL;
        if (rc != MDB_MAP_RESIZED) rc = mdb_txn_begin(env->mdb, NULL, MDB_RDONLY, &t);
      }
    } else {
      rc = mdb_txn_begin(env->mdb, NULL, MDB_RDONLY, &t);
    }
    if (rc == 0) { *slot = t; return RD_OK; }
    pthread_rwlock_unlock(&env->resize);
    if (rc == MDB_MAP_RESIZED) {
      if ((rc = adopt_size(env, err)) != RD_OK) return rc;
      continue;
    }
    return rd__store_mdb_error(env, err, rc, "begin read");
  }
  return rd_error_set(err, RD_EIO, "store: cannot begin a read");
}

void rd__store_reader_attach(rd_store_env *env, rd__store_reader *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_lock(&env->free_mu);
  r->next = env->readers;
  env->readers = r;
  pthread_mutex_unlock(&env->free_mu);
}

void rd__store_reader_detach(rd_store_env *env, rd__store_reader *r) {
  pthread_mutex_lock(&env->free_mu);
  for (rd__store_reader **p = &env->readers; *p; p = &(*p)->next)
    if (*p == r) { *p = r->next; break; }
  pthread_mutex_unlock(&env->free_mu);
  if (r->txn) mdb_txn_abort(r->txn);
  memset(r, 0, sizeof *r);
}

/* The reader's states (r->busy): FREE; PINNED, in use without the resize
 * lock (the fast path: its snapshot is live and the newest) while no
 * resize runs, a resize waiting for it; LOCKED, in use under the resize
 * lock (shared), as every other read. */
int rd__store_reader_begin(rd_store_env *env, rd__store_reader *r, rd_error *err) {
  int expect = RD__READER_FREE;
  if (!atomic_compare_exchange_strong(&r->busy, &expect, RD__READER_PINNED))
    return RD__READER_IN_USE;
  if (r->live && !atomic_load(&env->resizing)) {
    /* mdb_env_info reads the newer of the two meta pages (no lock): a
     * commit writes its meta page before it returns, so a read that
     * starts after a commit (of any process) sees its id here. A commit
     * in progress may show its id early: a renew then takes the older
     * snapshot, and the next read renews again. */
    MDB_envinfo ei;
    if (mdb_env_info(env->mdb, &ei) == 0 && (size_t)ei.me_last_txnid == r->id)
      return RD_OK;
  }
  /* unpinned (a resize waiting for it goes on), then under the lock */
  atomic_store(&r->busy, RD__READER_LOCKED);
  pthread_rwlock_rdlock(&env->resize);
  if (r->live) {
    MDB_envinfo ei;
    if (mdb_env_info(env->mdb, &ei) == 0 && (size_t)ei.me_last_txnid == r->id)
      return RD_OK;
    mdb_txn_reset(r->txn);
    r->live = 0;
  }
  pthread_rwlock_unlock(&env->resize);
  int rc = rd__store_read_renew(env, &r->txn, err);
  if (rc) {
    atomic_store_explicit(&r->busy, RD__READER_FREE, memory_order_release);
    return rc;
  }
  r->id = mdb_txn_id(r->txn);
  r->live = 1;
  return RD_OK;
}

void rd__store_reader_end(rd_store_env *env, rd__store_reader *r) {
  if (atomic_load_explicit(&r->busy, memory_order_relaxed) == RD__READER_LOCKED)
    pthread_rwlock_unlock(&env->resize);
  atomic_store_explicit(&r->busy, RD__READER_FREE, memory_order_release);
}

void rd__store_reader_idle(rd_store_env *env, rd__store_reader *r) {
  int expect = RD__READER_FREE;
  if (!atomic_compare_exchange_strong(&r->busy, &expect, RD__READER_LOCKED)) return;
  pthread_rwlock_rdlock(&env->resize);
  if (r->live) { mdb_txn_reset(r->txn); r->live = 0; }
  pthread_rwlock_unlock(&env->resize);
  atomic_store_explicit(&r->busy, RD__READER_FREE, memory_order_release);
}

void rd__store_read_end(rd_store_env *env, MDB_txn *txn) {
  mdb_txn_reset(txn);
  pthread_mutex_lock(&env->free_mu);
  if (env->nfree < FREE_TXNS) {
    env->free_txn[env->nfree++] = txn;
    txn = NULL;
  }
  pthread_mutex_unlock(&env->free_mu);
  if (txn) mdb_txn_abort(txn);
  pthread_rwlock_unlock(&env->resize);
}

void rd_store_view_release(rd_store_view *v) {
  if (!v || !v->txn_) return;
  if (v->owner_) rd__cache_view_end(v);
  else rd__store_read_end(v->env_, v->txn_);
  v->owner_ = NULL;
  v->txn_ = NULL;
  v->data = NULL;
  v->len = 0;
}

/* ---- raw access -------------------------------------------------------------- */

static int db_index(rd_store_env *env, const char *db, rd_error *err) {
  const char *const *names = env->kind == RD_STORE_DATA ? DATA_DBS : CACHE_DBS;
  for (int i = 0; i < env->ndbi; i++)
    if (strcmp(names[i], db) == 0) return i;
  return rd_error_set(err, RD_EINVAL, "store: no database named %s in %s", db,
                      base_name(env->path));
}

typedef struct raw_op { int db; MDB_val k, v; int del; } raw_op;

static int raw_fn(MDB_txn *txn, void *ud, rd_error *err) {
  raw_op *op = ud;
  (void)err;
  if (op->del) return mdb_del(txn, op->db, &op->k, NULL);
  return mdb_put(txn, op->db, &op->k, &op->v, 0);
}

int rd_store_raw_put(rd_store_env *env, const char *db, const void *key,
                     size_t klen, const void *val, size_t vlen, rd_error *err) {
  int i = db_index(env, db, err);
  if (i < 0) return i;
  raw_op op = {(int)env->dbi[i], {klen, (void *)key}, {vlen, (void *)val}, 0};
  return rd__store_write(env, raw_fn, &op, err);
}

int rd_store_raw_delete(rd_store_env *env, const char *db, const void *key,
                        size_t klen, rd_error *err) {
  int i = db_index(env, db, err);
  if (i < 0) return i;
  raw_op op = {(int)env->dbi[i], {klen, (void *)key}, {0, NULL}, 1};
  int rc = rd__store_write(env, raw_fn, &op, err);
  if (rc == RD_EIO && err && strstr(err->message, "MDB_NOTFOUND"))
    return rd_error_set(err, RD_ENOENT, "no such key");
  return rc;
}

int rd_store_raw_get(rd_store_env *env, const char *db, const void *key,
                     size_t klen, rd_store_view *v, rd_error *err) {
  memset(v, 0, sizeof *v);
  int i = db_index(env, db, err);
  if (i < 0) return i;
  MDB_txn *txn;
  int rc = rd__store_read_begin(env, &txn, err);
  if (rc) return rc;
  MDB_val k = {klen, (void *)key}, val;
  rc = mdb_get(txn, env->dbi[i], &k, &val);
  if (rc) {
    rd__store_read_end(env, txn);
    if (rc == MDB_NOTFOUND) return rd_error_set(err, RD_ENOENT, "no such key");
    return rd__store_mdb_error(env, err, rc, "get");
  }
  v->data = val.mv_data;
  v->len = val.mv_size;
  v->txn_ = txn;
  v->env_ = env;
  return RD_OK;
}
