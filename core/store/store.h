/*
 * store.h — the storage layer: everything the engine remembers, in LMDB,
 * in one data directory.
 *
 *   DIR/data.mdb   (+ data.mdb-lock)   durable: the key/value store, the
 *                  execution history, the audit trail. Every commit is
 *                  synced (LMDB's default mode), so a power loss keeps every
 *                  committed transaction and never corrupts the file.
 *   DIR/cache.mdb  (+ cache.mdb-lock)  the cache: MDB_NOSYNC (commits reach
 *                  the OS page cache, not the disk). A crash of the process
 *                  loses nothing; a crash of the machine may leave the file
 *                  unusable, which the next open detects and rebuilds empty.
 *
 * Handles:
 *   rd_store_env   one LMDB environment. Reference counted: a cache or a
 *                  history opened on it holds a reference, so closing the
 *                  env first is safe (it is freed with its last user).
 *   rd_cache       TTL cache with byte/entry caps and an eviction policy.
 *   rd_history     execution history with a group-commit writer thread.
 *   kv and audit   functions on a data env (no handle of their own).
 *
 * Errors: every function that can fail returns RD_OK or an RD_E* code and
 * fills the rd_error passed last (may be NULL). Codes used here:
 *   RD_EINVAL    bad argument (message names it)
 *   RD_ENOENT    key not found (get/delete), a normal outcome
 *   RD_ELIMIT    a value larger than the documented maximum
 *   RD_EFULL     storage full: the map reached max_map_size, or the disk is
 *                full (ENOSPC, EDQUOT, EFBIG); nothing committed before is
 *                lost, reads go on
 *   RD_ECORRUPT  the file is not a usable LMDB file of ours
 *   RD_EIO       any other I/O or LMDB failure (message has LMDB's text)
 *   RD_ENOMEM    out of memory
 *   RD_EBUSY     no free reader slot
 *
 * Threads: an env, a cache and a history may be used from several threads
 * (each call takes its own transaction). A view (rd_store_view) belongs to
 * the thread that got it; release it before that thread writes to the same
 * env, or a map growth waits for it (up to 2 s, then RD_EFULL).
 */
#ifndef RD_STORE_H
#define RD_STORE_H

#include "rd.h"
#include <stddef.h>
#include <stdint.h>

/* ---- environments ------------------------------------------------------ */

typedef struct rd_store_env rd_store_env;

typedef enum {
  RD_STORE_DATA = 0,   /* data.mdb: kv, history, audit; durable */
  RD_STORE_CACHE = 1,  /* cache.mdb: the cache; NOSYNC, rebuilt when unusable */
} rd_store_kind;

typedef struct rd_store_env_config {
  size_t map_size;      /* initial map size in bytes; 0: 16 MiB. Grown by
                           doubling on MDB_MAP_FULL ... */
  size_t max_map_size;  /* ... up to this; 0: 8 GiB. Below map_size: map_size */
} rd_store_env_config;

/* Open (creating when missing) the environment of `kind` in directory
 * `dir` (created with mode 0700 when missing, parents too). Clears stale
 * reader slots left by dead processes (mdb_reader_check). For the cache, an
 * unusable file (not LMDB, torn by a machine crash, wrong format) is
 * removed and made anew, empty; rd_store_env_info says so.
 * On success *out is owned by the caller: rd_store_env_close() it.
 * Errors: RD_EINVAL, RD_EIO (directory or file cannot be made/opened),
 * RD_ECORRUPT (data.mdb is not usable: never rebuilt, the message says so),
 * RD_EFULL, RD_ENOMEM. cfg may be NULL. */
int rd_store_env_open(rd_store_env **out, const char *dir, rd_store_kind kind,
                      const rd_store_env_config *cfg, rd_error *err);

/* Release the caller's reference; the env closes when caches/histories
 * opened on it are closed too. NULL is a no-op. */
void rd_store_env_close(rd_store_env *env);

typedef struct rd_store_env_info {
  size_t map_size;        /* current map size, bytes */
  size_t max_map_size;
  size_t used_bytes;      /* pages in use * page size */
  int stale_readers;      /* reader slots cleared at open */
  int rebuilt;            /* cache only: 1 when the file was rebuilt at open */
  char rebuild_reason[160];
  char path[512];         /* the .mdb file */
} rd_store_env_info;

/* Fill *info. Never fails for an open env. */
void rd_store_env_info_get(rd_store_env *env, rd_store_env_info *info);

/* A read-only view of a stored value: `data`/`len` point into the map
 * (zero-copy) and stay valid until rd_store_view_release(). */
typedef struct rd_store_view {
  const void *data;
  size_t len;
  double expires_at;      /* cache: epoch seconds, 0 = never; kv: 0 */
  void *txn_;             /* internal */
  rd_store_env *env_;     /* internal */
  void *owner_;           /* internal: the cache whose own txn this is */
} rd_store_view;

/* Release a view (idempotent; a zeroed view is fine). */
void rd_store_view_release(rd_store_view *v);

/* BLAKE2b-256 (libsodium crypto_generichash) of `n` parts, into out[32]. */
void rd_store_hash(unsigned char out[32], size_t n, const void *const *parts,
                   const size_t *lens);

/* ---- cache --------------------------------------------------------------
 * Keys: any bytes, 1 byte to any length (longer than 400 bytes: stored
 * under their BLAKE2b-256 hash). Values: up to RD_CACHE_MAX_VALUE bytes.
 * Size of an entry (for max_bytes) = key length + value length.
 * Policies (what each costs):
 *   fifo  evicts the oldest insertion; reads cost nothing extra.
 *   lru   evicts the least recently read; a hit is noted in memory (a
 *         slot table whose keys sit in one arena: no allocation per hit)
 *         and written with the next write (put, delete, sweep, flush): one
 *         index update per distinct key read since.
 *   lfu   evicts the least often read (ties: least recent); same cost as
 *         lru.
 * Expiry is exact: a fifo get reads the coarse clock (CLOCK_REALTIME_COARSE,
 * cheaper) and the precise one only when the entry's expiry is near; lru
 * and lfu gets read the precise clock (their notes are ranked by it).
 * Up to RD_CACHE_TOUCH_SLOTS distinct keys are noted between two writes;
 * hits on further keys are not noted (their rank stays as it was).
 * Counters (hits, misses, evictions, expirations) count this handle's work.
 * Reads: each handle keeps one read transaction and its snapshot between
 * gets, as long as that snapshot is the newest committed state: a get
 * first compares the snapshot's txn id with the last committed one (the
 * meta page, read without a lock) and renews the txn when any process
 * committed since. So every get sees the latest commit of any process,
 * and a get with no write in between costs no txn renewal, no lock-table
 * access, no lock (one compare-and-swap pins the handle's reader; a map
 * resize waits for pinned readers, like for any read, up to its time
 * limit) and no allocation. The kept snapshot is dropped after the
 * handle's own writes, by rd_cache_idle (the engine's timer) and before a
 * map resize; until then a write elsewhere cannot reuse the pages it
 * freed. While a view from the handle's txn is held, or another thread is
 * in a get, further gets use fresh pooled txns of the env. A held view
 * makes a map growth of this process wait (then RD_EFULL): release views
 * before writing. A handle (like its env: LMDB) is not usable in a forked
 * child. File layout (format rubberduck.cache.v2): the entries are LMDB's
 * main database, compared by the cache's own comparator in LMDB's default
 * order (so any LMDB reader walks the file); a file of an older format is
 * rebuilt empty at open.
 */
#define RD_CACHE_MAX_VALUE (64u << 20)
#define RD_CACHE_TOUCH_SLOTS 4096

typedef enum { RD_CACHE_LRU = 0, RD_CACHE_LFU = 1, RD_CACHE_FIFO = 2 } rd_cache_policy;

typedef struct rd_cache_config {
  uint64_t max_bytes;     /* 0: no byte cap */
  uint64_t max_entries;   /* 0: no entry cap */
  rd_cache_policy policy;
} rd_cache_config;

typedef struct rd_cache_stats {
  uint64_t hits, misses, evictions, expirations, puts;
  uint64_t entries, bytes;   /* what the cache holds now (all processes) */
} rd_cache_stats;

typedef struct rd_cache rd_cache;

/* Open the cache on a RD_STORE_CACHE env (takes a reference on it).
 * *out is the caller's: rd_cache_close() it. Errors: RD_EINVAL (wrong env
 * kind), RD_ENOMEM. */
int rd_cache_open(rd_cache **out, rd_store_env *env, const rd_cache_config *cfg,
                  rd_error *err);
/* Write pending access notes, then free the handle. NULL is a no-op. */
void rd_cache_close(rd_cache *c);

/* Store `val` under `key` for `ttl` seconds (<= 0: no expiry), evicting by
 * policy until both caps hold. Errors: RD_EINVAL (empty key), RD_ELIMIT
 * (value over RD_CACHE_MAX_VALUE or entry larger than max_bytes), RD_EFULL,
 * RD_EIO. */
int rd_cache_put(rd_cache *c, const void *key, size_t klen, const void *val,
                 size_t vlen, double ttl, rd_error *err);
/* Look `key` up. RD_OK: a live entry, *v points into the map until
 * rd_store_view_release(v) (release it before closing the cache); expiry
 * is checked against the clock on every get. RD_ENOENT: missing or
 * expired (v is zeroed; releasing it is a no-op).
 * Other errors: RD_EIO, RD_EBUSY. */
int rd_cache_get(rd_cache *c, const void *key, size_t klen, rd_store_view *v,
                 rd_error *err);
/* RD_OK (removed) or RD_ENOENT; RD_EFULL/RD_EIO on write failure. */
int rd_cache_delete(rd_cache *c, const void *key, size_t klen, rd_error *err);
/* Remove every entry. */
int rd_cache_clear(rd_cache *c, rd_error *err);
/* Remove up to `max` (0: 10000) expired entries; *removed (may be NULL)
 * gets the count. */
int rd_cache_sweep(rd_cache *c, size_t max, size_t *removed, rd_error *err);
/* Write pending access notes (lru/lfu). */
int rd_cache_flush(rd_cache *c, rd_error *err);
/* Drop the snapshot the handle keeps between gets (see Reads above),
 * unless a get or a view holds it: it then pins no old pages. The engine
 * calls it on a timer; the handle's own writes do it too. NULL: no-op. */
void rd_cache_idle(rd_cache *c);
/* Counters of this handle plus entries/bytes held. */
int rd_cache_stats_get(rd_cache *c, rd_cache_stats *out, rd_error *err);
/* Tests: make the cache's clock read `now` (epoch seconds); 0 = real clock. */
void rd_cache_set_time(rd_cache *c, double now);

/* ---- key/value store (data env) -----------------------------------------
 * Namespaces: 1..64 bytes of [A-Za-z0-9_.:-]. Keys: any bytes, 1 to
 * RD_KV_MAX_KEY bytes; keys longer than RD_KV_INLINE_KEY bytes are stored
 * under their first RD_KV_INLINE_KEY bytes plus their BLAKE2b-256 hash, the
 * whole key kept beside the value. Values: 0 to RD_KV_MAX_VALUE bytes. */
#define RD_KV_MAX_NS 64
#define RD_KV_INLINE_KEY 400
#define RD_KV_MAX_KEY (1u << 20)
#define RD_KV_MAX_VALUE (16u << 20)
#define RD_KV_CURSOR_MAX 1024   /* a cursor string fits in this many bytes */

/* Errors: RD_EINVAL (bad ns or empty key; the message says which),
 * RD_ELIMIT (key or value too large: the message gives both sizes),
 * RD_EFULL, RD_EIO. */
int rd_kv_put(rd_store_env *env, const char *ns, const void *key, size_t klen,
              const void *val, size_t vlen, rd_error *err);
/* RD_OK: *v holds the value until released. RD_ENOENT: no such key. */
int rd_kv_get(rd_store_env *env, const char *ns, const void *key, size_t klen,
              rd_store_view *v, rd_error *err);
/* RD_OK (removed) or RD_ENOENT. */
int rd_kv_delete(rd_store_env *env, const char *ns, const void *key,
                 size_t klen, rd_error *err);

/* Called once per listed item; key/val are borrowed for the call. Return
 * non-zero to stop early. */
typedef int (*rd_kv_item_cb)(const void *key, size_t klen, const void *val,
                             size_t vlen, void *ud);
/* List the keys of `ns` starting with `prefix` (plen may be 0), in key
 * order, after `cursor` (NULL or "" from the start; else a cursor an
 * earlier call returned), at most `limit` (0: 100) items. next_cursor
 * (RD_KV_CURSOR_MAX bytes) receives the cursor of the next page, "" at the
 * end. Errors: RD_EINVAL (bad ns or cursor), RD_EIO. */
int rd_kv_list(rd_store_env *env, const char *ns, const void *prefix,
               size_t plen, const char *cursor, size_t limit, rd_kv_item_cb cb,
               void *ud, char *next_cursor, rd_error *err);

/* ---- execution history (data env) --------------------------------------- */

typedef struct rd_history_record {
  const char *id;          /* ULID (26 chars), the record's key; required */
  const char *tool;        /* required, the others may be NULL ("") */
  const char *version;
  const char *status;      /* "ok" | "error" */
  const char *kind;        /* error kind, "" when ok */
  const char *caller;      /* caller principal */
  const char *params_hash; /* hex BLAKE2b of the canonical params */
  const char *params;      /* canonical params JSON, only when configured */
  const char *context;     /* the caller's context as JSON: every field the
                              caller passed (roles, capabilities, trace ids,
                              custom fields), up to RD_HISTORY_MAX_CONTEXT */
  double started_at;       /* epoch seconds */
  double duration_ms, cpu_ms, peak_memory_bytes;
  int attempts, cached;
} rd_history_record;

#define RD_HISTORY_MAX_FIELD 4096     /* bytes of each string but params */
#define RD_HISTORY_MAX_PARAMS (1u << 20)
#define RD_HISTORY_MAX_CONTEXT (1u << 20)

typedef struct rd_history_config {
  unsigned group_ms;    /* commit at most this long after the first pending
                           record; 0: 2 ms */
  unsigned max_batch;   /* ... or as soon as this many are pending; 0: 512 */
} rd_history_config;

typedef struct rd_history rd_history;

/* Open the history on a data env (takes a reference) and start its writer
 * thread. *out is the caller's: rd_history_close() it. */
int rd_history_open(rd_history **out, rd_store_env *env,
                    const rd_history_config *cfg, rd_error *err);
/* Commit what is pending, stop the writer, free. NULL is a no-op. */
void rd_history_close(rd_history *h);

/* Append and wait until the record's transaction committed (durable).
 * The record is copied. Errors: RD_EINVAL (missing id/tool, field too
 * long), RD_EFULL, RD_EIO, RD_ECLOSED. */
int rd_history_append(rd_history *h, const rd_history_record *rec, rd_error *err);

/* Called on the writer thread once the record's transaction committed
 * (rc RD_OK) or failed (rc and message). `msg` is borrowed for the call. */
typedef void (*rd_history_done_cb)(void *ud, int rc, const char *msg);
/* Queue the record (copied) and return; `cb` reports its commit. When this
 * returns an error, cb is never called. */
int rd_history_append_async(rd_history *h, const rd_history_record *rec,
                            rd_history_done_cb cb, void *ud, rd_error *err);

typedef struct rd_history_filter {
  const char *tool, *status, *kind, *caller;  /* NULL: any */
  double since, until;   /* epoch seconds, inclusive; 0: open */
  const char *cursor;    /* NULL/"": newest; else a next_cursor returned */
  size_t limit;          /* 0: 50 */
} rd_history_filter;

/* Called per matching record, newest first; rec is borrowed for the call.
 * Return non-zero to stop. */
typedef int (*rd_history_row_cb)(const rd_history_record *rec, void *ud);
/* Query. next_cursor (RD_ULID_LEN + 1 bytes) gets the cursor of the next
 * page, "" when there is none. Errors: RD_EINVAL (bad cursor), RD_EIO,
 * RD_ECORRUPT (a record that does not decode). */
int rd_history_query(rd_store_env *env, const rd_history_filter *q,
                     rd_history_row_cb cb, void *ud, char *next_cursor,
                     rd_error *err);
/* Remove records older than max_age seconds before `now` (max_age <= 0:
 * no age limit) and the oldest beyond max_count (0: no count limit), at
 * most 10000 per call; *removed (may be NULL) gets how many. */
int rd_history_prune(rd_store_env *env, double max_age, uint64_t max_count,
                     double now, size_t *removed, rd_error *err);
/* Number of records. */
int rd_history_count(rd_store_env *env, uint64_t *n, rd_error *err);

/* ---- audit trail (data env) ----------------------------------------------
 * An append-only hash chain: entry N (from 1) stores N, the time, the event
 * name, its data (JSON text), the hash of entry N-1 (zeros for entry 1) and
 * its own hash BLAKE2b-256("rubberduck.audit.v1", N, prev, time, event,
 * data). A head record (last N and hash) is written in the same
 * transaction, so removing the newest entries is detected too. */
typedef struct rd_audit_entry {
  uint64_t seq;
  double time;
  const char *event; size_t event_len;
  const char *data;  size_t data_len;
  unsigned char prev[32], hash[32];
} rd_audit_entry;

#define RD_AUDIT_MAX_DATA (64u << 10)

/* Append one entry (durable when this returns RD_OK); *seq (may be NULL)
 * gets its number. Errors: RD_EINVAL (empty event, data too large),
 * RD_EFULL, RD_EIO. */
int rd_audit_append(rd_store_env *env, const char *event, const char *data,
                    size_t dlen, double time, uint64_t *seq, rd_error *err);

/* Append n entries in one transaction (each as rd_audit_append would);
 * *first_seq (may be NULL) gets the number of the first. All or none. */
int rd_audit_append_batch(rd_store_env *env, size_t n, const char *const *events,
                          const char *const *datas, const size_t *dlens,
                          const double *times, uint64_t *first_seq, rd_error *err);

typedef int (*rd_audit_entry_cb)(const rd_audit_entry *e, void *ud);
/* Entries from `from_seq` (0/1: the first) on, at most limit (0: all). */
int rd_audit_list(rd_store_env *env, uint64_t from_seq, size_t limit,
                  rd_audit_entry_cb cb, void *ud, rd_error *err);

typedef struct rd_audit_report {
  int ok;                 /* 1: intact */
  uint64_t entries;       /* entries checked */
  uint64_t bad_seq;       /* the first bad entry, when !ok */
  char problem[256];      /* what is wrong with it */
} rd_audit_report;

/* Walk the chain. RD_OK with rep->ok telling the verdict; an error only
 * when the store cannot be read. */
int rd_audit_verify(rd_store_env *env, rd_audit_report *rep, rd_error *err);

/* ---- maintenance -----------------------------------------------------------
 * Raw access to the LMDB databases by name ("kv", "hist", "hist_idx",
 * "audit", "meta" in data; "entries", "order", "expiry", "meta" in cache),
 * bypassing every check: for repair tools and tamper tests. */
int rd_store_raw_put(rd_store_env *env, const char *db, const void *key,
                     size_t klen, const void *val, size_t vlen, rd_error *err);
int rd_store_raw_get(rd_store_env *env, const char *db, const void *key,
                     size_t klen, rd_store_view *v, rd_error *err);
int rd_store_raw_delete(rd_store_env *env, const char *db, const void *key,
                        size_t klen, rd_error *err);

/* ---- internals shared by the store files ---------------------------------- */
#include <lmdb.h>
#include <stdatomic.h>

enum { RD__DB_META, RD__DB_KV, RD__DB_HIST, RD__DB_HIDX, RD__DB_AUDIT,
       RD__DB_ENTRIES = 1, RD__DB_ORDER, RD__DB_EXPIRY, RD__DB_MAX = 5 };
/* The cache's entries are LMDB's main database, which also holds one
 * record per named database (meta, order, expiry): its count is entries +
 * RD__CACHE_NAMED_DBS. Entry keys start with 'h' or 'k', so they never
 * meet those names ("expiry" < "h" .. "k" < "meta" < "order"). */
#define RD__CACHE_NAMED_DBS 3

/* Body of a write transaction; may run more than once (after the map grew),
 * so it must only touch `txn` and its own scratch. Return RD_OK to commit,
 * an error to abort (err filled), or an MDB_* code (mapped by the caller). */
typedef int (*rd__store_txn_fn)(MDB_txn *txn, void *ud, rd_error *err);
int rd__store_write(rd_store_env *env, rd__store_txn_fn fn, void *ud, rd_error *err);
int rd__store_read_begin(rd_store_env *env, MDB_txn **txn, rd_error *err);
void rd__store_read_end(rd_store_env *env, MDB_txn *txn);
int rd__store_read_renew(rd_store_env *env, MDB_txn **slot, rd_error *err);
/* A reader that keeps its snapshot between reads (one per cache handle):
 * begin reuses the snapshot while it is still the newest committed state
 * of the file (its txn id equals the last committed one, as the meta page
 * says: any commit of any process changes it), else renews it. The env
 * resets every attached reader's snapshot before it remaps (map growth),
 * so a snapshot never outlives the map it points into. Threads share it
 * through `busy`: begin takes it (or answers RD__READER_IN_USE: use a
 * pooled txn), end gives it back. While its snapshot is live and no resize
 * runs, a begin takes no lock: the reader is PINNED and a resize waits
 * for it (as for a shared lock holder, within the same time limit);
 * otherwise it is LOCKED, under the resize lock (shared). Attach before
 * use, detach (not in use) before the env's last reference goes. */
enum { RD__READER_FREE = 0, RD__READER_PINNED = 1, RD__READER_LOCKED = 2 };
#define RD__READER_IN_USE 1 /* rd__store_reader_begin: another user has it */
typedef struct rd__store_reader {
  MDB_txn *txn;      /* NULL, or a read txn: live (live = 1) or reset */
  int live;
  size_t id;         /* the live snapshot's txn id */
  atomic_int busy;   /* RD__READER_FREE / PINNED / LOCKED */
  struct rd__store_reader *next;
} rd__store_reader;
void rd__store_reader_attach(rd_store_env *env, rd__store_reader *r);
void rd__store_reader_detach(rd_store_env *env, rd__store_reader *r);
/* Take the reader: RD_OK with r->txn live (until rd__store_reader_end),
 * RD__READER_IN_USE (nothing held), or an error (nothing held). */
int rd__store_reader_begin(rd_store_env *env, rd__store_reader *r, rd_error *err);
void rd__store_reader_end(rd_store_env *env, rd__store_reader *r);
/* Drop the snapshot (reset the txn, keeping its reader slot) unless the
 * reader is in use: pins no old pages until the next begin. */
void rd__store_reader_idle(rd_store_env *env, rd__store_reader *r);
void rd__cache_view_end(rd_store_view *v);
MDB_dbi rd__store_dbi(rd_store_env *env, int which);
rd_store_kind rd__store_kind(rd_store_env *env);
void rd__store_ref(rd_store_env *env);
/* Map an LMDB / errno code to an RD_E* code with a message "what: ...". */
int rd__store_mdb_error(rd_store_env *env, rd_error *err, int rc, const char *what);

/* Big-endian u64 in 8 bytes (keys sort by number). */
void rd__store_be64(unsigned char *p, uint64_t v);
uint64_t rd__store_get_be64(const unsigned char *p);
/* The cache entries' key comparator: LMDB's default order (bytes unsigned,
 * then the shorter first), computed a word at a time. */
int rd__store_cmp_bytes(const MDB_val *a, const MDB_val *b);

/* The Lua binding (core/lua/l_store.c). */
#include <lua.h>
int rd__luaopen_store(lua_State *L);

#endif
