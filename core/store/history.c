/*
 * history.c — execution history on the data env (store.h), with group
 * commit.
 *
 * Databases:
 *   hist      id (ULID, 26 bytes) -> record (encoded below)
 *   hist_idx  tag (1) len (2, BE) value id (26) -> ""
 *             tags: 't' tool, 's' status, 'k' error kind, 'c' caller
 * ULIDs start with their time, so both sort by time and a time range is a
 * key range; newest first is a backward cursor walk.
 *
 * Group commit: appenders queue records; one writer thread takes what is
 * queued (waiting at most group_ms after the first, or until max_batch are
 * queued) and commits it in one synced transaction; only then is each
 * appender told (rd_history_append returns, or its callback runs).
 */
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAGIC 0x52444832u    /* "RDH2": NSTR strings */
#define MAGIC_V1 0x52444831u /* "RDH1": the first seven (no context) */
#define NSTR 8 /* tool version status kind caller params_hash params context */
#define NSTR_V1 7
#define FIXED (4 + 8 * 4 + 4 * 2)
#define IDX_MAX (1 + 2 + RD_HISTORY_MAX_FIELD + RD_ULID_LEN)

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

typedef struct item {
  struct item *next;
  char id[RD_ULID_LEN + 1];
  double num[4];   /* started_at duration_ms cpu_ms peak_memory_bytes */
  int attempts, cached;
  size_t len[NSTR];
  const char *str[NSTR];
  rd_history_done_cb cb;
  void *ud;
  char data[];     /* the strings, NUL-separated */
} item;

struct rd_history {
  rd_store_env *env;
  rd_history_config cfg;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  item *head, *tail;
  size_t queued;
  int closing, started;
  struct timespec first;   /* when the oldest queued record arrived */
};

/* ---- encoding ---------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static size_t encoded_size(const item *it) {
  size_t n = FIXED;
  for (int i = 0; i < NSTR; i++) n += 4 + it->len[i];
  return n;
}

static void encode(unsigned char *p, const item *it) {
  put32(p, MAGIC);
  memcpy(p + 4, it->num, 32);
  int32_t a = it->attempts, c = it->cached;
  memcpy(p + 36, &a, 4);
  memcpy(p + 40, &c, 4);
  p += FIXED;
  for (int i = 0; i < NSTR; i++) {
    put32(p, (uint32_t)it->len[i]);
    memcpy(p + 4, it->str[i], it->len[i]);
    p += 4 + it->len[i];
  }
}

/* Decode into rec; strings are copied NUL-terminated into buf (which must
 * hold v->mv_size + NSTR bytes). Returns 0 or -1. */
static int decode(const MDB_val *k, const MDB_val *v, rd_history_record *rec, char *buf,
                  char *id) {
  const unsigned char *p = v->mv_data, *end = p + v->mv_size;
  if (v->mv_size < FIXED || k->mv_size != RD_ULID_LEN) return -1;
  uint32_t magic = get32(p);
  if (magic != MAGIC && magic != MAGIC_V1) return -1;
  int nstr = magic == MAGIC ? NSTR : NSTR_V1;
  memset(rec, 0, sizeof *rec);
  memcpy(id, k->mv_data, RD_ULID_LEN);
  id[RD_ULID_LEN] = '\0';
  rec->id = id;
  double num[4];
  memcpy(num, p + 4, 32);
  rec->started_at = num[0];
  rec->duration_ms = num[1];
  rec->cpu_ms = num[2];
  rec->peak_memory_bytes = num[3];
  int32_t a, c;
  memcpy(&a, p + 36, 4);
  memcpy(&c, p + 40, 4);
  rec->attempts = a;
  rec->cached = c;
  p += FIXED;
  const char **fields[NSTR] = {&rec->tool, &rec->version, &rec->status, &rec->kind,
                               &rec->caller, &rec->params_hash, &rec->params, &rec->context};
  for (int i = 0; i < nstr; i++) {
    if (end - p < 4) return -1;
    uint32_t n = get32(p);
    if ((size_t)(end - p - 4) < n) return -1;
    memcpy(buf, p + 4, n);
    buf[n] = '\0';
    *fields[i] = buf;
    buf += n + 1;
    p += 4 + n;
  }
  return 0;
}

static size_t idx_key(unsigned char *out, char tag, const char *val, size_t n, const char *id) {
  out[0] = (unsigned char)tag;
  out[1] = (unsigned char)(n >> 8);
  out[2] = (unsigned char)(n & 0xff);
  memcpy(out + 3, val, n);
  if (id) memcpy(out + 3 + n, id, RD_ULID_LEN);
  return 3 + n + (id ? RD_ULID_LEN : 0);
}

static const char TAGS[4] = {'t', 's', 'k', 'c'};
static const int TAG_FIELD[4] = {0, 2, 3, 4}; /* tool status kind caller */

/* ---- writing ------------------------------------------------------------------ */

typedef struct batch { item *items; rd_store_env *env; } batch;

static int batch_fn(MDB_txn *txn, void *ud, rd_error *err) {
  batch *b = ud;
  MDB_dbi hist = rd__store_dbi(b->env, RD__DB_HIST), idx = rd__store_dbi(b->env, RD__DB_HIDX);
  (void)err;
  for (item *it = b->items; it; it = it->next) {
    MDB_val k = {RD_ULID_LEN, it->id}, v = {encoded_size(it), NULL};
    int rc = mdb_put(txn, hist, &k, &v, MDB_NOOVERWRITE | MDB_RESERVE);
    if (rc == MDB_KEYEXIST) continue; /* the same record again: already stored */
    if (rc) return rc;
    encode(v.mv_data, it);
    for (int t = 0; t < 4; t++) {
      int f = TAG_FIELD[t];
      if (!it->len[f]) continue;
      unsigned char ik[IDX_MAX];
      MDB_val ikv = {idx_key(ik, TAGS[t], it->str[f], it->len[f], it->id), ik}, e = {0, ""};
      if ((rc = mdb_put(txn, idx, &ikv, &e, 0))) return rc;
    }
  }
  return 0;
}

static void *writer(void *arg) {
  rd_history *h = arg;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    while (!h->head && !h->closing) pthread_cond_wait(&h->cv, &h->mu);
    if (!h->head) break;
    /* The group window: until group_ms after the first record, or a full batch. */
    struct timespec until = h->first;
    until.tv_nsec += (long)h->cfg.group_ms * 1000000L;
    while (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    while (!h->closing && h->queued < h->cfg.max_batch) {
      if (pthread_cond_timedwait(&h->cv, &h->mu, &until) == ETIMEDOUT) break;
    }
    batch b = {h->head, h->env};
    h->head = h->tail = NULL;
    h->queued = 0;
    pthread_mutex_unlock(&h->mu);

    rd_error err;
    int rc = rd__store_write(h->env, batch_fn, &b, &err);
    for (item *it = b.items, *next; it; it = next) {
      next = it->next;
      if (it->cb) it->cb(it->ud, rc, rc == RD_OK ? "" : err.message);
      rd__freemem(it);
    }
    pthread_mutex_lock(&h->mu);
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

int rd_history_open(rd_history **out, rd_store_env *env, const rd_history_config *cfg,
                    rd_error *err) {
  rd_error_clear(err);
  if (!out || !env || rd__store_kind(env) != RD_STORE_DATA)
    return rd_error_set(err, RD_EINVAL, "history: needs a data env");
  rd_history *h = rd__calloc(1, sizeof *h);
  if (!h) return rd_error_set(err, RD_ENOMEM, "history: out of memory");
  if (cfg) h->cfg = *cfg;
  if (!h->cfg.group_ms) h->cfg.group_ms = 2;
  if (!h->cfg.max_batch) h->cfg.max_batch = 512;
  pthread_mutex_init(&h->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_cond_init(&h->cv, &ca);
  pthread_condattr_destroy(&ca);
  rd__store_ref(env);
  h->env = env;
  int rc = pthread_create(&h->thread, NULL, writer, h);
  if (rc) {
    rd_store_env_close(env);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    rd__freemem(h);
    return rd_error_set(err, RD_ENOMEM, "history: cannot start the writer: %s", strerror(rc));
  }
  h->started = 1;
  *out = h;
  return RD_OK;
}

void rd_history_close(rd_history *h) {
  if (!h) return;
  pthread_mutex_lock(&h->mu);
  h->closing = 1;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  if (h->started) pthread_join(h->thread, NULL);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
  rd_store_env_close(h->env);
  rd__freemem(h);
}

static int make_item(const rd_history_record *rec, item **out, rd_error *err) {
  if (!rec || !rec->id || strlen(rec->id) != RD_ULID_LEN)
    return rd_error_set(err, RD_EINVAL, "history: the record needs an id of %d characters",
                        RD_ULID_LEN);
  if (!rec->tool || !*rec->tool) return rd_error_set(err, RD_EINVAL, "history: the record needs a tool");
  const char *s[NSTR] = {rec->tool, rec->version, rec->status, rec->kind, rec->caller,
                         rec->params_hash, rec->params, rec->context};
  static const char *const names[NSTR] = {"tool", "version", "status", "kind", "caller",
                                          "params_hash", "params", "context"};
  static const size_t maxes[NSTR] = {
      RD_HISTORY_MAX_FIELD, RD_HISTORY_MAX_FIELD, RD_HISTORY_MAX_FIELD, RD_HISTORY_MAX_FIELD,
      RD_HISTORY_MAX_FIELD, RD_HISTORY_MAX_FIELD, RD_HISTORY_MAX_PARAMS, RD_HISTORY_MAX_CONTEXT};
  size_t len[NSTR], total = 0;
  for (int i = 0; i < NSTR; i++) {
    len[i] = s[i] ? strlen(s[i]) : 0;
    size_t max = maxes[i];
    if (len[i] > max)
      return rd_error_set(err, RD_EINVAL, "history: %s of %zu bytes exceeds %zu", names[i],
                          len[i], max);
    total += len[i] + 1;
  }
  item *it = rd__malloc(sizeof *it + total);
  if (!it) return rd_error_set(err, RD_ENOMEM, "history: out of memory");
  memset(it, 0, sizeof *it);
  memcpy(it->id, rec->id, RD_ULID_LEN + 1);
  it->num[0] = rec->started_at;
  it->num[1] = rec->duration_ms;
  it->num[2] = rec->cpu_ms;
  it->num[3] = rec->peak_memory_bytes;
  it->attempts = rec->attempts;
  it->cached = rec->cached;
  char *p = it->data;
  for (int i = 0; i < NSTR; i++) {
    if (len[i]) memcpy(p, s[i], len[i]);
    p[len[i]] = '\0';
    it->str[i] = p;
    it->len[i] = len[i];
    p += len[i] + 1;
  }
  *out = it;
  return RD_OK;
}

static int enqueue(rd_history *h, item *it, rd_error *err) {
  pthread_mutex_lock(&h->mu);
  if (h->closing) {
    pthread_mutex_unlock(&h->mu);
    rd__freemem(it);
    return rd_error_set(err, RD_ECLOSED, "history: closed");
  }
  if (!h->head) {
    h->head = h->tail = it;
    clock_gettime(CLOCK_REALTIME, &h->first);
    pthread_cond_signal(&h->cv);
  } else {
    h->tail->next = it;
    h->tail = it;
  }
  if (++h->queued >= h->cfg.max_batch) pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  return RD_OK;
}

int rd_history_append_async(rd_history *h, const rd_history_record *rec,
                            rd_history_done_cb cb, void *ud, rd_error *err) {
  rd_error_clear(err);
  item *it = NULL;
  int rc = make_item(rec, &it, err);
  if (rc) return rc;
  it->cb = cb;
  it->ud = ud;
  return enqueue(h, it, err);
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, rc;
  char msg[RD_ERROR_MSG_MAX];
} waiter;

static void wake(void *ud, int rc, const char *msg) {
  waiter *w = ud;
  pthread_mutex_lock(&w->mu);
  w->rc = rc;
  snprintf(w->msg, sizeof w->msg, "%s", msg);
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int rd_history_append(rd_history *h, const rd_history_record *rec, rd_error *err) {
  waiter w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  int rc = rd_history_append_async(h, rec, wake, &w, err);
  if (rc == RD_OK) {
    pthread_mutex_lock(&w.mu);
    while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    rc = w.rc;
    if (rc) rd_error_set(err, rc, "%s", w.msg);
  }
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  return rc;
}

/* ---- queries -------------------------------------------------------------------- */

/* The 26-character id bound of a time (seconds): lowest or highest id of
 * that millisecond. */
static void id_bound(char *out, double t, int high) {
  uint64_t ms = t <= 0 ? 0 : (uint64_t)(t * 1000.0);
  if (ms > (1ull << 48) - 1) ms = (1ull << 48) - 1;
  for (int i = 9; i >= 0; i--) { out[i] = B32[ms & 31]; ms >>= 5; }
  for (int i = 10; i < RD_ULID_LEN; i++) out[i] = high ? 'Z' : '0';
  out[RD_ULID_LEN] = '\0';
}

static int matches(const rd_history_record *r, const rd_history_filter *q) {
  if (q->tool && strcmp(q->tool, r->tool) != 0) return 0;
  if (q->status && strcmp(q->status, r->status) != 0) return 0;
  if (q->kind && strcmp(q->kind, r->kind) != 0) return 0;
  if (q->caller && strcmp(q->caller, r->caller) != 0) return 0;
  return 1;
}

int rd_history_query(rd_store_env *env, const rd_history_filter *q, rd_history_row_cb cb,
                     void *ud, char *next_cursor, rd_error *err) {
  rd_error_clear(err);
  if (q->cursor && *q->cursor && rd_ulid_time_ms(q->cursor) < 0)
    return rd_error_set(err, RD_EINVAL, "history: bad cursor %.40s", q->cursor);
  size_t limit = q->limit ? q->limit : 50;
  /* The index to walk: the most selective filter given. */
  const char *ival = NULL;
  char tag = 0;
  if (q->caller) { tag = 'c'; ival = q->caller; }
  else if (q->tool) { tag = 't'; ival = q->tool; }
  else if (q->kind) { tag = 'k'; ival = q->kind; }
  else if (q->status) { tag = 's'; ival = q->status; }
  if (ival && strlen(ival) > RD_HISTORY_MAX_FIELD) return RD_OK; /* nothing can match */
  char upper[RD_ULID_LEN + 1], lower[RD_ULID_LEN + 1];
  int exclusive = 0;
  id_bound(upper, q->until > 0 ? q->until : 281474976710.655, 1);
  if (q->cursor && *q->cursor && strcmp(q->cursor, upper) < 0) {
    memcpy(upper, q->cursor, RD_ULID_LEN + 1);
    exclusive = 1;
  }
  id_bound(lower, q->since, 0);
  if (next_cursor) next_cursor[0] = '\0'; /* after reading q->cursor: they may alias */

  MDB_txn *txn;
  int rc = rd__store_read_begin(env, &txn, err);
  if (rc) return rc;
  MDB_dbi hist = rd__store_dbi(env, RD__DB_HIST), idx = rd__store_dbi(env, RD__DB_HIDX);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, ival ? idx : hist, &cur))) {
    rd__store_read_end(env, txn);
    return rd__store_mdb_error(env, err, rc, "history query");
  }
  unsigned char pre[IDX_MAX];
  size_t plen = ival ? idx_key(pre, tag, ival, strlen(ival), NULL) : 0;
  unsigned char seek[IDX_MAX];
  memcpy(seek, pre, plen);
  memcpy(seek + plen, upper, RD_ULID_LEN);
  MDB_val k = {plen + RD_ULID_LEN, seek}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  if (rc == MDB_NOTFOUND) {
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  } else if (rc == 0) {
    int c = memcmp(k.mv_data, seek, k.mv_size < plen + RD_ULID_LEN ? k.mv_size : plen + RD_ULID_LEN);
    if (c > 0 || (c == 0 && k.mv_size > plen + RD_ULID_LEN) || (c == 0 && exclusive))
      rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
  }
  char *buf = NULL;
  size_t bufcap = 0;
  size_t count = 0;
  int more = 0;
  char id[RD_ULID_LEN + 1];
  while (rc == 0) {
    /* Keys of one index value are contiguous: leaving them ends the walk. */
    if (k.mv_size != plen + RD_ULID_LEN || (plen && memcmp(k.mv_data, pre, plen) != 0)) {
      if (plen) break;
      rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
      continue;
    }
    const char *kid = (const char *)k.mv_data + plen;
    if (memcmp(kid, lower, RD_ULID_LEN) < 0) break;
    MDB_val rk = {RD_ULID_LEN, (void *)kid}, rv = v;
    if (plen) {
      rc = mdb_get(txn, hist, &rk, &rv);
      if (rc == MDB_NOTFOUND) { rc = mdb_cursor_get(cur, &k, &v, MDB_PREV); continue; }
      if (rc) break;
    }
    if (rv.mv_size + NSTR > bufcap) {
      char *nb = rd__realloc(buf, rv.mv_size + NSTR);
      if (!nb) { rc = ENOMEM; break; }
      buf = nb;
      bufcap = rv.mv_size + NSTR;
    }
    rd_history_record rec;
    if (decode(&rk, &rv, &rec, buf, id) != 0) { rc = MDB_CORRUPTED; break; }
    if (matches(&rec, q)) {
      if (count == limit) { more = 1; break; } /* one more exists */
      count++;
      if (next_cursor) memcpy(next_cursor, id, RD_ULID_LEN + 1);
      if (cb && cb(&rec, ud)) break;
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
  }
  if (next_cursor && !more) next_cursor[0] = '\0';
  mdb_cursor_close(cur);
  rd__store_read_end(env, txn);
  rd__freemem(buf);
  if (rc && rc != MDB_NOTFOUND) return rd__store_mdb_error(env, err, rc, "history query");
  return RD_OK;
}

/* ---- retention ----------------------------------------------------------------------- */

typedef struct prune_op {
  rd_store_env *env;
  char lower[RD_ULID_LEN + 1];
  int by_age;
  uint64_t max_count;
  size_t removed;
} prune_op;

static int remove_record(MDB_txn *txn, rd_store_env *env, const MDB_val *k, const MDB_val *v) {
  MDB_dbi idx = rd__store_dbi(env, RD__DB_HIDX);
  char *buf = rd__malloc(v->mv_size + NSTR);
  if (!buf) return ENOMEM;
  rd_history_record rec;
  char id[RD_ULID_LEN + 1];
  int rc = 0;
  if (decode(k, v, &rec, buf, id) == 0) {
    const char *f[4] = {rec.tool, rec.status, rec.kind, rec.caller};
    for (int t = 0; t < 4 && rc == 0; t++) {
      if (!*f[t]) continue;
      unsigned char ik[IDX_MAX];
      MDB_val ikv = {idx_key(ik, TAGS[t], f[t], strlen(f[t]), id), ik};
      rc = mdb_del(txn, idx, &ikv, NULL);
      if (rc == MDB_NOTFOUND) rc = 0;
    }
  }
  rd__freemem(buf);
  return rc;
}

static int prune_fn(MDB_txn *txn, void *ud, rd_error *err) {
  prune_op *op = ud;
  (void)err;
  op->removed = 0;
  MDB_dbi hist = rd__store_dbi(op->env, RD__DB_HIST);
  MDB_stat st;
  int rc = mdb_stat(txn, hist, &st);
  if (rc) return rc;
  uint64_t n = st.ms_entries;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, hist, &cur))) return rc;
  MDB_val k, v;
  while (op->removed < 10000 && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
    int old = op->by_age && k.mv_size == RD_ULID_LEN &&
              memcmp(k.mv_data, op->lower, RD_ULID_LEN) < 0;
    int over = op->max_count && n > op->max_count;
    if (!old && !over) break;
    if ((rc = remove_record(txn, op->env, &k, &v))) break;
    if ((rc = mdb_cursor_del(cur, 0))) break;
    n--;
    op->removed++;
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

int rd_history_prune(rd_store_env *env, double max_age, uint64_t max_count, double now,
                     size_t *removed, rd_error *err) {
  rd_error_clear(err);
  prune_op op;
  memset(&op, 0, sizeof op);
  op.env = env;
  op.by_age = max_age > 0;
  if (op.by_age) id_bound(op.lower, now - max_age, 0);
  op.max_count = max_count;
  int rc = RD_OK;
  if (!op.by_age && !max_count) return RD_OK;
  /* Look first (a read): most calls find nothing to prune, and a write
   * would cost a synced commit. */
  MDB_txn *txn;
  if ((rc = rd__store_read_begin(env, &txn, err))) return rc;
  MDB_dbi hist = rd__store_dbi(env, RD__DB_HIST);
  MDB_stat st;
  int need = 0;
  if (mdb_stat(txn, hist, &st) == 0 && max_count && st.ms_entries > max_count) need = 1;
  if (!need && op.by_age) {
    MDB_cursor *cur;
    MDB_val k, v;
    if (mdb_cursor_open(txn, hist, &cur) == 0) {
      if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && k.mv_size == RD_ULID_LEN &&
          memcmp(k.mv_data, op.lower, RD_ULID_LEN) < 0)
        need = 1;
      mdb_cursor_close(cur);
    }
  }
  rd__store_read_end(env, txn);
  if (need) rc = rd__store_write(env, prune_fn, &op, err);
  if (removed) *removed = rc == RD_OK ? op.removed : 0;
  return rc;
}

int rd_history_count(rd_store_env *env, uint64_t *n, rd_error *err) {
  MDB_txn *txn;
  int rc = rd__store_read_begin(env, &txn, err);
  if (rc) return rc;
  MDB_stat st;
  rc = mdb_stat(txn, rd__store_dbi(env, RD__DB_HIST), &st);
  rd__store_read_end(env, txn);
  if (rc) return rd__store_mdb_error(env, err, rc, "history count");
  *n = st.ms_entries;
  return RD_OK;
}
