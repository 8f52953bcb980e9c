/*
 * cache.c — the cache on the cache env (store.h): TTL per entry, caps in
 * bytes and entries, lru/lfu/fifo eviction, counters, zero-copy reads.
 *
 * Databases:
 *   entries  ekey -> header (40 bytes) + value   (LMDB's main database, so a
 *            renewed read txn finds it without a named-database lookup;
 *            the three named databases' records sit beside the entries)
 *   order    r1 (8, BE) r2 (8, BE) ekey -> ""   eviction order, lowest first
 *   expiry   expires_ms (8, BE) ekey -> ""      for the sweep
 *   meta     "bytes" -> u64 BE                  sum of entry sizes
 * ekey = 'k' + key (key <= 400 bytes) | 'h' + BLAKE2b-256(key).
 * Ranks: fifo r1 = insertion time (us); lru r1 = last read or write (us);
 * lfu r1 = reads, r2 = last read (us).
 */
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define HDR 40
#define MAGIC 0x52444331u /* "RDC1" */
#define EKEY_MAX 401
#define INLINE_KEY 400

/* Access notes (lru/lfu): an open-addressing table of slots whose keys
 * sit in one byte arena (grown by doubling, kept across writes), so a hit
 * never allocates. A write takes them all as one block of `touch`. */
typedef struct slot {
  uint64_t h;
  uint32_t off, len;       /* the key in the arena; len 0: free */
  uint32_t count;
  double last;
} slot;

typedef struct touch {
  const unsigned char *key;
  uint32_t len, count;
  double last;
} touch;

struct rd_cache {
  rd_store_env *env;
  rd_cache_config cfg;
  atomic_uint_fast64_t hits, misses, evictions, expirations, puts;
  /* hits and misses of the gets on the handle's reader: only the holder
   * of the reader writes them, so a plain load and store (no locked add) */
  atomic_uint_fast64_t own_hits, own_misses;
  pthread_mutex_t mu;          /* guards the notes: slots, used, arena */
  slot *slots;                 /* RD_CACHE_TOUCH_SLOTS */
  uint32_t *used;              /* the used slots' indexes, ntouch of them */
  size_t ntouch;
  unsigned char *arena;
  size_t alen, acap;
  _Atomic double fixed_now;    /* tests: 0 = the real clock */
  int coarse_ok;               /* CLOCK_REALTIME_COARSE works */
  double coarse_margin;        /* its resolution + COARSE_MARGIN */
  /* This handle's reader: a read txn whose snapshot is kept between gets
   * while no commit happened since (rd__store_reader), dropped after this
   * handle's writes and by rd_cache_idle. It is in use (reader.busy)
   * while a get or a view holds it; a concurrent get (another thread, a
   * view not released yet) takes a fresh txn from the env's pool instead. */
  rd__store_reader reader;
  MDB_dbi entries;
};

typedef struct hdr {
  double expires;
  uint64_t r1, r2, hits;
} hdr;

static void hdr_write(unsigned char *p, const hdr *h) {
  uint32_t m = MAGIC, z = 0;
  memcpy(p, &m, 4);
  memcpy(p + 4, &z, 4);
  memcpy(p + 8, &h->expires, 8);
  memcpy(p + 16, &h->r1, 8);
  memcpy(p + 24, &h->r2, 8);
  memcpy(p + 32, &h->hits, 8);
}

static int hdr_read(const MDB_val *v, hdr *h) {
  uint32_t m;
  if (v->mv_size < HDR) return -1;
  const unsigned char *p = v->mv_data;
  memcpy(&m, p, 4);
  if (m != MAGIC) return -1;
  memcpy(&h->expires, p + 8, 8);
  memcpy(&h->r1, p + 16, 8);
  memcpy(&h->r2, p + 24, 8);
  memcpy(&h->hits, p + 32, 8);
  return 0;
}

static double now_of(rd_cache *c) {
  double f = atomic_load_explicit(&c->fixed_now, memory_order_relaxed);
  return f > 0 ? f : rd__now();
}

/* A get's clock. For the expiry check alone (fifo: no read note):
 * CLOCK_REALTIME_COARSE (the time of the last tick: cheaper to read, never
 * ahead of the real clock, behind it by less than its resolution) unless
 * the entry's expiry is within its resolution + COARSE_MARGIN of it: then
 * the precise clock decides, so expiry stays exact. Read notes (lru, lfu)
 * take the precise clock: their ranks are compared with puts' times. */
#define COARSE_MARGIN 0.05

static double coarse_now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) != 0) return 0;
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double get_now(rd_cache *c, const hdr *h) {
  double f = atomic_load_explicit(&c->fixed_now, memory_order_relaxed);
  if (f > 0) return f;
  if (c->cfg.policy != RD_CACHE_FIFO || !c->coarse_ok) return rd__now();
  double now = coarse_now();
  if (now <= 0 || h->expires <= now + c->coarse_margin) return rd__now();
  return now;
}

void rd_cache_set_time(rd_cache *c, double now) {
  atomic_store(&c->fixed_now, now);
}

static size_t make_ekey(unsigned char *out, const void *key, size_t klen) {
  if (klen <= INLINE_KEY) {
    out[0] = 'k';
    memcpy(out + 1, key, klen);
    return klen + 1;
  }
  out[0] = 'h';
  const void *parts[1] = {key};
  size_t lens[1] = {klen};
  rd_store_hash(out + 1, 1, parts, lens);
  return 33;
}

static uint64_t us(double t) { return t <= 0 ? 0 : (uint64_t)(t * 1e6); }

int rd_cache_open(rd_cache **out, rd_store_env *env, const rd_cache_config *cfg,
                  rd_error *err) {
  rd_error_clear(err);
  if (!out || !env) return rd_error_set(err, RD_EINVAL, "cache: bad argument");
  if (rd__store_kind(env) != RD_STORE_CACHE)
    return rd_error_set(err, RD_EINVAL, "cache: the env is not a cache env");
  if (cfg && (cfg->policy < RD_CACHE_LRU || cfg->policy > RD_CACHE_FIFO))
    return rd_error_set(err, RD_EINVAL, "cache: policy must be lru, lfu or fifo");
  rd_cache *c = rd__calloc(1, sizeof *c);
  if (!c) return rd_error_set(err, RD_ENOMEM, "cache: out of memory");
  c->slots = rd__calloc(RD_CACHE_TOUCH_SLOTS, sizeof *c->slots);
  c->used = rd__calloc(RD_CACHE_TOUCH_SLOTS / 2, sizeof *c->used);
  if (!c->slots || !c->used) {
    rd__freemem(c->slots);
    rd__freemem(c->used);
    rd__freemem(c);
    return rd_error_set(err, RD_ENOMEM, "cache: out of memory");
  }
  if (cfg) c->cfg = *cfg;
  atomic_init(&c->fixed_now, 0.0);
  struct timespec res;
  if (clock_getres(CLOCK_REALTIME_COARSE, &res) == 0 && res.tv_sec == 0) {
    c->coarse_ok = 1;
    c->coarse_margin = (double)res.tv_nsec / 1e9 + COARSE_MARGIN;
  }
  c->entries = rd__store_dbi(env, RD__DB_ENTRIES);
  pthread_mutex_init(&c->mu, NULL);
  rd__store_reader_attach(env, &c->reader);
  rd__store_ref(env);
  c->env = env;
  *out = c;
  return RD_OK;
}

/* ---- access notes (lru/lfu) --------------------------------------------------- */

/* The notes' slot hash: eight bytes at a time, multiplied and folded. */
static uint64_t key_hash(const unsigned char *p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
  for (; n >= 8; p += 8, n -= 8) {
    memcpy(&w, p, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  w = 0;
  memcpy(&w, p, n);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

static void note_touch(rd_cache *c, const unsigned char *ek, size_t n, double now) {
  uint64_t h = key_hash(ek, n);
  pthread_mutex_lock(&c->mu);
  size_t mask = RD_CACHE_TOUCH_SLOTS - 1, i = h & mask;
  for (size_t probes = 0; probes < RD_CACHE_TOUCH_SLOTS; probes++, i = (i + 1) & mask) {
    slot *t = &c->slots[i];
    if (!t->len) {
      if (c->ntouch >= RD_CACHE_TOUCH_SLOTS / 2) break; /* full enough: drop */
      if (c->alen + n > c->acap) {
        size_t cap = c->acap ? c->acap * 2 : 8192;
        while (cap < c->alen + n) cap *= 2;
        unsigned char *a = rd__realloc(c->arena, cap);
        if (!a) break;
        c->arena = a;
        c->acap = cap;
      }
      memcpy(c->arena + c->alen, ek, n);
      t->h = h;
      t->off = (uint32_t)c->alen;
      t->len = (uint32_t)n;
      t->count = 1;
      t->last = now;
      c->alen += n;
      c->used[c->ntouch++] = (uint32_t)i;
      break;
    }
    if (t->h == h && t->len == n && memcmp(c->arena + t->off, ek, n) == 0) {
      t->count++;
      t->last = now;
      break;
    }
  }
  pthread_mutex_unlock(&c->mu);
}

/* Take the pending notes as one block (the caller frees it with
 * free_touches); out of memory: they stay for the next write. */
static touch *take_touches(rd_cache *c, size_t *n) {
  touch *list = NULL;
  *n = 0;
  pthread_mutex_lock(&c->mu);
  if (c->ntouch) {
    list = rd__malloc(c->ntouch * sizeof *list + c->alen);
    if (list) {
      unsigned char *keys = (unsigned char *)(list + c->ntouch);
      memcpy(keys, c->arena, c->alen);
      for (size_t j = 0; j < c->ntouch; j++) {
        slot *t = &c->slots[c->used[j]];
        list[j].key = keys + t->off;
        list[j].len = t->len;
        list[j].count = t->count;
        list[j].last = t->last;
        t->len = 0;
      }
      *n = c->ntouch;
      c->ntouch = 0;
      c->alen = 0;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return list;
}

static void free_touches(touch *list, size_t n) {
  (void)n;
  rd__freemem(list);
}

/* ---- write helpers ------------------------------------------------------------- */

/* A write of this handle; then its reader's snapshot, now old, is dropped
 * (when no get holds it) so it pins no pages the next writes could reuse. */
static int cache_write(rd_cache *c, rd__store_txn_fn fn, void *ud, rd_error *err) {
  int rc = rd__store_write(c->env, fn, ud, err);
  rd_cache_idle(c);
  return rc;
}

typedef struct wctx {
  rd_cache *c;
  MDB_txn *txn;
  MDB_dbi entries, order, expiry, meta;
} wctx;

static void wctx_init(wctx *w, rd_cache *c, MDB_txn *txn) {
  w->c = c;
  w->txn = txn;
  w->entries = rd__store_dbi(c->env, RD__DB_ENTRIES);
  w->order = rd__store_dbi(c->env, RD__DB_ORDER);
  w->expiry = rd__store_dbi(c->env, RD__DB_EXPIRY);
  w->meta = rd__store_dbi(c->env, RD__DB_META);
}

static int get_bytes(wctx *w, uint64_t *bytes) {
  MDB_val k = {5, "bytes"}, v;
  int rc = mdb_get(w->txn, w->meta, &k, &v);
  if (rc == MDB_NOTFOUND) { *bytes = 0; return 0; }
  if (rc) return rc;
  *bytes = v.mv_size == 8 ? rd__store_get_be64(v.mv_data) : 0;
  return 0;
}

static int put_bytes(wctx *w, uint64_t bytes) {
  unsigned char b[8];
  rd__store_be64(b, bytes);
  MDB_val k = {5, "bytes"}, v = {8, b};
  return mdb_put(w->txn, w->meta, &k, &v, 0);
}

static int del_order(wctx *w, const unsigned char *ek, size_t n, const hdr *h) {
  unsigned char ok[16 + EKEY_MAX];
  rd__store_be64(ok, h->r1);
  rd__store_be64(ok + 8, h->r2);
  memcpy(ok + 16, ek, n);
  MDB_val k = {16 + n, ok};
  int rc = mdb_del(w->txn, w->order, &k, NULL);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

static int put_order(wctx *w, const unsigned char *ek, size_t n, const hdr *h) {
  unsigned char ok[16 + EKEY_MAX];
  rd__store_be64(ok, h->r1);
  rd__store_be64(ok + 8, h->r2);
  memcpy(ok + 16, ek, n);
  MDB_val k = {16 + n, ok}, v = {0, ""};
  return mdb_put(w->txn, w->order, &k, &v, 0);
}

static int expiry_key(unsigned char *out, const unsigned char *ek, size_t n, double exp) {
  rd__store_be64(out, (uint64_t)(exp * 1000.0));
  memcpy(out + 8, ek, n);
  return (int)(8 + n);
}

/* Remove entry `ek` (whose value is v) with its index keys; *size gets its
 * size. */
static int remove_entry(wctx *w, const unsigned char *ek, size_t n, const MDB_val *v,
                        uint64_t *size) {
  hdr h;
  int rc;
  *size = n + (v->mv_size >= HDR ? v->mv_size - HDR : 0);
  if (hdr_read(v, &h) == 0) {
    if ((rc = del_order(w, ek, n, &h))) return rc;
    if (h.expires > 0) {
      unsigned char xk[8 + EKEY_MAX];
      MDB_val k = {(size_t)expiry_key(xk, ek, n, h.expires), xk};
      rc = mdb_del(w->txn, w->expiry, &k, NULL);
      if (rc && rc != MDB_NOTFOUND) return rc;
    }
  }
  MDB_val k = {n, (void *)ek};
  return mdb_del(w->txn, w->entries, &k, NULL);
}

/* Apply access notes: new ranks, hit counts. */
static int apply_touches(wctx *w, const touch *list, size_t n) {
  rd_cache_policy pol = w->c->cfg.policy;
  if (pol == RD_CACHE_FIFO) return 0;
  for (size_t i = 0; i < n; i++) {
    const touch *t = &list[i];
    MDB_val k = {t->len, (void *)t->key}, v;
    int rc = mdb_get(w->txn, w->entries, &k, &v);
    if (rc == MDB_NOTFOUND) continue;
    if (rc) return rc;
    hdr h;
    if (hdr_read(&v, &h)) continue;
    if ((rc = del_order(w, t->key, t->len, &h))) return rc;
    h.hits += t->count;
    if (pol == RD_CACHE_LRU) { h.r1 = us(t->last); h.r2 = 0; }
    else { h.r1 = h.hits; h.r2 = us(t->last); }
    unsigned char *copy = rd__malloc(v.mv_size);
    if (!copy) return ENOMEM;
    memcpy(copy, v.mv_data, v.mv_size);
    hdr_write(copy, &h);
    MDB_val nv = {v.mv_size, copy};
    rc = mdb_put(w->txn, w->entries, &k, &nv, 0);
    rd__freemem(copy);
    if (rc || (rc = put_order(w, t->key, t->len, &h))) return rc;
  }
  return 0;
}

/* Evict by policy until the caps hold; never the entry `keep`. */
static int enforce_caps(wctx *w, const unsigned char *keep, size_t keeplen,
                        uint64_t *bytes, uint64_t *evicted) {
  const rd_cache_config *cfg = &w->c->cfg;
  if (!cfg->max_bytes && !cfg->max_entries) return 0;
  MDB_stat st;
  int rc = mdb_stat(w->txn, w->entries, &st);
  if (rc) return rc;
  uint64_t n = st.ms_entries > RD__CACHE_NAMED_DBS ? st.ms_entries - RD__CACHE_NAMED_DBS : 0;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(w->txn, w->order, &cur))) return rc;
  MDB_val k, v;
  MDB_cursor_op op = MDB_FIRST;
  while ((cfg->max_entries && n > cfg->max_entries) ||
         (cfg->max_bytes && *bytes > cfg->max_bytes)) {
    rc = mdb_cursor_get(cur, &k, &v, op);
    if (rc) break;
    const unsigned char *ek = (const unsigned char *)k.mv_data + 16;
    size_t eklen = k.mv_size - 16;
    if (keep && eklen == keeplen && memcmp(ek, keep, eklen) == 0) {
      op = MDB_NEXT;
      continue;
    }
    unsigned char ekc[EKEY_MAX];
    memcpy(ekc, ek, eklen);
    MDB_val ekv = {eklen, ekc}, ev;
    rc = mdb_get(w->txn, w->entries, &ekv, &ev);
    if (rc == MDB_NOTFOUND) { /* a dangling order key: drop it */
      if ((rc = mdb_cursor_del(cur, 0))) break;
    } else if (rc) {
      break;
    } else {
      uint64_t size;
      mdb_cursor_close(cur);
      cur = NULL;
      if ((rc = remove_entry(w, ekc, eklen, &ev, &size))) return rc;
      *bytes = *bytes > size ? *bytes - size : 0;
      n--;
      (*evicted)++;
      if ((rc = mdb_cursor_open(w->txn, w->order, &cur))) return rc;
    }
    op = MDB_FIRST;
  }
  if (cur) mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- put --------------------------------------------------------------------------- */

typedef struct put_op {
  rd_cache *c;
  unsigned char ek[EKEY_MAX];
  size_t eklen;
  const void *val;
  size_t vlen;
  double now, expires;
  touch *touches;
  size_t ntouches;
  uint64_t evicted;
} put_op;

static int put_fn(MDB_txn *txn, void *ud, rd_error *err) {
  put_op *op = ud;
  wctx w;
  wctx_init(&w, op->c, txn);
  op->evicted = 0;
  int rc = apply_touches(&w, op->touches, op->ntouches);
  if (rc) return rc;
  uint64_t bytes;
  if ((rc = get_bytes(&w, &bytes))) return rc;
  MDB_val k = {op->eklen, op->ek}, v;
  hdr h = {op->expires, 0, 0, 0};
  rc = mdb_get(txn, w.entries, &k, &v);
  if (rc == 0) {
    hdr old;
    if (hdr_read(&v, &old) == 0) h.hits = old.hits;
    uint64_t size;
    if ((rc = remove_entry(&w, op->ek, op->eklen, &v, &size))) return rc;
    bytes = bytes > size ? bytes - size : 0;
  } else if (rc != MDB_NOTFOUND) {
    return rc;
  }
  uint64_t t = us(op->now);
  switch (op->c->cfg.policy) {
  case RD_CACHE_LFU: h.r1 = h.hits; h.r2 = t; break;
  default: h.r1 = t; h.r2 = 0; break;
  }
  v.mv_size = HDR + op->vlen;
  if ((rc = mdb_put(txn, w.entries, &k, &v, MDB_RESERVE))) return rc;
  hdr_write(v.mv_data, &h);
  if (op->vlen) memcpy((unsigned char *)v.mv_data + HDR, op->val, op->vlen);
  if ((rc = put_order(&w, op->ek, op->eklen, &h))) return rc;
  if (h.expires > 0) {
    unsigned char xk[8 + EKEY_MAX];
    MDB_val xkv = {(size_t)expiry_key(xk, op->ek, op->eklen, h.expires), xk}, e = {0, ""};
    if ((rc = mdb_put(txn, w.expiry, &xkv, &e, 0))) return rc;
  }
  bytes += op->eklen + op->vlen;
  if ((rc = enforce_caps(&w, op->ek, op->eklen, &bytes, &op->evicted))) return rc;
  (void)err;
  return put_bytes(&w, bytes);
}

int rd_cache_put(rd_cache *c, const void *key, size_t klen, const void *val,
                 size_t vlen, double ttl, rd_error *err) {
  rd_error_clear(err);
  if (!key || klen == 0) return rd_error_set(err, RD_EINVAL, "cache: the key is empty");
  if (vlen > RD_CACHE_MAX_VALUE)
    return rd_error_set(err, RD_ELIMIT, "cache: value of %zu bytes exceeds the maximum "
                        "of %u bytes", vlen, RD_CACHE_MAX_VALUE);
  put_op *op = rd__malloc(sizeof *op);
  if (!op) return rd_error_set(err, RD_ENOMEM, "cache: out of memory");
  op->c = c;
  op->eklen = make_ekey(op->ek, key, klen);
  if (c->cfg.max_bytes && op->eklen + vlen > c->cfg.max_bytes) {
    size_t size = op->eklen + vlen;
    rd__freemem(op);
    return rd_error_set(err, RD_ELIMIT, "cache: entry of %zu bytes exceeds max_bytes "
                        "(%llu)", size, (unsigned long long)c->cfg.max_bytes);
  }
  op->val = val;
  op->vlen = vlen;
  op->now = now_of(c);
  op->expires = ttl > 0 ? op->now + ttl : 0;
  op->touches = take_touches(c, &op->ntouches);
  int rc = cache_write(c, put_fn, op, err);
  if (rc == RD_OK) {
    atomic_fetch_add(&c->puts, 1);
    atomic_fetch_add(&c->evictions, op->evicted);
  }
  free_touches(op->touches, op->ntouches);
  rd__freemem(op);
  return rc;
}

/* ---- get ------------------------------------------------------------------------------ */

/* Begin a read: this handle's reader when free (its snapshot kept while
 * it is the newest, else renewed), else a txn from the env's pool. *own
 * says which. */
static int read_begin(rd_cache *c, MDB_txn **txn, int *own, rd_error *err) {
  int rc = rd__store_reader_begin(c->env, &c->reader, err);
  if (rc == RD_OK) { *txn = c->reader.txn; *own = 1; return RD_OK; }
  if (rc != RD__READER_IN_USE) return rc;
  *own = 0;
  return rd__store_read_begin(c->env, txn, err);
}

static void read_end(rd_cache *c, MDB_txn *txn, int own) {
  if (own) rd__store_reader_end(c->env, &c->reader);
  else rd__store_read_end(c->env, txn);
}

void rd_cache_idle(rd_cache *c) {
  if (c) rd__store_reader_idle(c->env, &c->reader);
}

static void count(rd_cache *c, int own, int hit) {
  if (own) { /* only the reader's holder writes these */
    atomic_uint_fast64_t *n = hit ? &c->own_hits : &c->own_misses;
    atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(hit ? &c->hits : &c->misses, 1, memory_order_relaxed);
  }
}

void rd__cache_view_end(rd_store_view *v) {
  read_end(v->owner_, v->txn_, 1);
}

int rd_cache_get(rd_cache *c, const void *key, size_t klen, rd_store_view *view,
                 rd_error *err) {
  memset(view, 0, sizeof *view);
  if (!key || klen == 0) return rd_error_set(err, RD_EINVAL, "cache: the key is empty");
  unsigned char ek[EKEY_MAX];
  size_t n = make_ekey(ek, key, klen);
  MDB_txn *txn;
  int own;
  int rc = read_begin(c, &txn, &own, err);
  if (rc) return rc;
  MDB_val k = {n, ek}, v;
  rc = mdb_get(txn, c->entries, &k, &v);
  if (rc) {
    if (rc == MDB_NOTFOUND) count(c, own, 0);
    read_end(c, txn, own);
    if (rc == MDB_NOTFOUND) return RD_ENOENT;
    return rd__store_mdb_error(c->env, err, rc, "cache get");
  }
  hdr h;
  rd_cache_policy pol = c->cfg.policy;
  int bad = hdr_read(&v, &h) != 0;
  /* the clock only when a TTL or a read note needs it */
  double now = !bad && (h.expires > 0 || pol != RD_CACHE_FIFO) ? get_now(c, &h) : 0;
  if (bad || (h.expires > 0 && h.expires <= now)) {
    count(c, own, 0);
    read_end(c, txn, own);
    return RD_ENOENT;
  }
  count(c, own, 1);
  if (pol != RD_CACHE_FIFO) note_touch(c, ek, n, now);
  view->data = (const unsigned char *)v.mv_data + HDR;
  view->len = v.mv_size - HDR;
  view->expires_at = h.expires;
  view->txn_ = txn;
  view->env_ = c->env;
  view->owner_ = own ? c : NULL;
  return RD_OK;
}

/* ---- delete, clear, sweep, flush ------------------------------------------------------- */

typedef struct del_op {
  rd_cache *c;
  unsigned char ek[EKEY_MAX];
  size_t eklen;
  touch *touches;
  size_t ntouches;
  int found;
} del_op;

static int del_fn(MDB_txn *txn, void *ud, rd_error *err) {
  del_op *op = ud;
  wctx w;
  wctx_init(&w, op->c, txn);
  int rc = apply_touches(&w, op->touches, op->ntouches);
  if (rc) return rc;
  op->found = 0;
  if (op->eklen == 0) return 0; /* flush only */
  MDB_val k = {op->eklen, op->ek}, v;
  rc = mdb_get(txn, w.entries, &k, &v);
  if (rc == MDB_NOTFOUND) return 0;
  if (rc) return rc;
  uint64_t bytes, size;
  if ((rc = get_bytes(&w, &bytes))) return rc;
  if ((rc = remove_entry(&w, op->ek, op->eklen, &v, &size))) return rc;
  op->found = 1;
  (void)err;
  return put_bytes(&w, bytes > size ? bytes - size : 0);
}

static int del_or_flush(rd_cache *c, const void *key, size_t klen, rd_error *err) {
  del_op *op = rd__malloc(sizeof *op);
  if (!op) return rd_error_set(err, RD_ENOMEM, "cache: out of memory");
  op->c = c;
  op->eklen = key ? make_ekey(op->ek, key, klen) : 0;
  op->touches = take_touches(c, &op->ntouches);
  if (!key && op->ntouches == 0) {
    rd__freemem(op);
    return RD_OK;
  }
  int rc = cache_write(c, del_fn, op, err);
  if (rc == RD_OK && key && !op->found) rc = RD_ENOENT;
  free_touches(op->touches, op->ntouches);
  rd__freemem(op);
  return rc;
}

int rd_cache_delete(rd_cache *c, const void *key, size_t klen, rd_error *err) {
  rd_error_clear(err);
  if (!key || klen == 0) return rd_error_set(err, RD_EINVAL, "cache: the key is empty");
  return del_or_flush(c, key, klen, err);
}

int rd_cache_flush(rd_cache *c, rd_error *err) {
  rd_error_clear(err);
  return del_or_flush(c, NULL, 0, err);
}

static int clear_fn(MDB_txn *txn, void *ud, rd_error *err) {
  rd_cache *c = ud;
  wctx w;
  wctx_init(&w, c, txn);
  int rc;
  if ((rc = mdb_drop(txn, w.order, 0)) || (rc = mdb_drop(txn, w.expiry, 0)))
    return rc;
  /* entries: the main database, whose records of the named databases must
   * stay: delete the keys from "h" up to "l" (every ekey, nothing else) */
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, w.entries, &cur))) return rc;
  MDB_val k = {1, "h"}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (rc == 0 && k.mv_size > 0 && (((const unsigned char *)k.mv_data)[0] == 'h' ||
                                      ((const unsigned char *)k.mv_data)[0] == 'k')) {
    if ((rc = mdb_cursor_del(cur, 0))) break;
    k.mv_size = 1; /* seek again: the first ekey left */
    k.mv_data = "h";
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  }
  mdb_cursor_close(cur);
  if (rc && rc != MDB_NOTFOUND) return rc;
  (void)err;
  return put_bytes(&w, 0);
}

int rd_cache_clear(rd_cache *c, rd_error *err) {
  rd_error_clear(err);
  size_t n;
  touch *list = take_touches(c, &n); /* n is set by the call: not in one expression */
  free_touches(list, n);
  return cache_write(c, clear_fn, c, err);
}

typedef struct sweep_op { rd_cache *c; double now; size_t max, removed; } sweep_op;

static int sweep_fn(MDB_txn *txn, void *ud, rd_error *err) {
  sweep_op *op = ud;
  wctx w;
  wctx_init(&w, op->c, txn);
  op->removed = 0;
  uint64_t bytes;
  int rc = get_bytes(&w, &bytes);
  if (rc) return rc;
  uint64_t now_ms = (uint64_t)(op->now * 1000.0);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, w.expiry, &cur))) return rc;
  MDB_val k, v;
  while (op->removed < op->max && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
    if (k.mv_size < 9 || rd__store_get_be64(k.mv_data) > now_ms) break;
    unsigned char ek[EKEY_MAX];
    size_t n = k.mv_size - 8;
    if (n > EKEY_MAX) n = EKEY_MAX;
    memcpy(ek, (unsigned char *)k.mv_data + 8, n);
    if ((rc = mdb_cursor_del(cur, 0))) break;
    MDB_val ekv = {n, ek}, ev;
    rc = mdb_get(txn, w.entries, &ekv, &ev);
    if (rc == MDB_NOTFOUND) continue;
    if (rc) break;
    hdr h;
    if (hdr_read(&ev, &h) == 0 && (h.expires <= 0 || h.expires > op->now)) continue;
    uint64_t size;
    mdb_cursor_close(cur);
    if ((rc = remove_entry(&w, ek, n, &ev, &size))) return rc;
    bytes = bytes > size ? bytes - size : 0;
    op->removed++;
    if ((rc = mdb_cursor_open(txn, w.expiry, &cur))) return rc;
  }
  mdb_cursor_close(cur);
  if (rc && rc != MDB_NOTFOUND) return rc;
  (void)err;
  return put_bytes(&w, bytes);
}

int rd_cache_sweep(rd_cache *c, size_t max, size_t *removed, rd_error *err) {
  rd_error_clear(err);
  sweep_op op = {c, now_of(c), max ? max : 10000, 0};
  int rc = cache_write(c, sweep_fn, &op, err);
  if (rc == RD_OK) atomic_fetch_add(&c->expirations, op.removed);
  if (removed) *removed = rc == RD_OK ? op.removed : 0;
  return rc;
}

int rd_cache_stats_get(rd_cache *c, rd_cache_stats *out, rd_error *err) {
  memset(out, 0, sizeof *out);
  out->hits = atomic_load(&c->hits) + atomic_load(&c->own_hits);
  out->misses = atomic_load(&c->misses) + atomic_load(&c->own_misses);
  out->evictions = atomic_load(&c->evictions);
  out->expirations = atomic_load(&c->expirations);
  out->puts = atomic_load(&c->puts);
  MDB_txn *txn;
  int rc = rd__store_read_begin(c->env, &txn, err);
  if (rc) return rc;
  MDB_stat st;
  if (mdb_stat(txn, rd__store_dbi(c->env, RD__DB_ENTRIES), &st) == 0)
    out->entries = st.ms_entries > RD__CACHE_NAMED_DBS ? st.ms_entries - RD__CACHE_NAMED_DBS : 0;
  MDB_val k = {5, "bytes"}, v;
  if (mdb_get(txn, rd__store_dbi(c->env, RD__DB_META), &k, &v) == 0 && v.mv_size == 8)
    out->bytes = rd__store_get_be64(v.mv_data);
  rd__store_read_end(c->env, txn);
  return RD_OK;
}

void rd_cache_close(rd_cache *c) {
  if (!c) return;
  rd_cache_flush(c, NULL);
  rd__store_reader_detach(c->env, &c->reader); /* not in use: views are released */
  rd__freemem(c->slots);
  rd__freemem(c->used);
  rd__freemem(c->arena);
  pthread_mutex_destroy(&c->mu);
  rd_store_env_close(c->env);
  rd__freemem(c);
}
