/*
 * audit.c — the audit trail, a hash chain on the data env (store.h).
 *
 *   audit  seq (8, BE) -> seq (8, BE) prev (32) hash (32) time (8, double)
 *                         event_len (4, LE) event data
 *   meta   "audit.head" -> seq (8, BE) hash (32)
 * hash = BLAKE2b-256("rubberduck.audit.v1" seq prev time event_len event data)
 * The value repeats its seq, so an entry moved to another key is told from
 * an edited one.
 */
#include "store/store.h"

#include <stdio.h>
#include <string.h>

#define DOMAIN "rubberduck.audit.v1"
#define VHDR (8 + 32 + 32 + 8 + 4)

static void entry_hash(unsigned char out[32], uint64_t seq, const unsigned char prev[32],
                       double time, const char *ev, uint32_t evlen, const char *data,
                       size_t dlen) {
  unsigned char s[8], l[4];
  rd__store_be64(s, seq);
  memcpy(l, &evlen, 4);
  const void *parts[7] = {DOMAIN, s, prev, &time, l, ev, data};
  size_t lens[7] = {sizeof DOMAIN - 1, 8, 32, 8, 4, evlen, dlen};
  rd_store_hash(out, 7, parts, lens);
}

static int parse(const MDB_val *v, rd_audit_entry *e) {
  const unsigned char *p = v->mv_data;
  if (v->mv_size < VHDR) return -1;
  memset(e, 0, sizeof *e);
  e->seq = rd__store_get_be64(p);
  memcpy(e->prev, p + 8, 32);
  memcpy(e->hash, p + 40, 32);
  memcpy(&e->time, p + 72, 8);
  uint32_t evlen;
  memcpy(&evlen, p + 80, 4);
  if (v->mv_size - VHDR < evlen) return -1;
  e->event = (const char *)p + VHDR;
  e->event_len = evlen;
  e->data = e->event + evlen;
  e->data_len = v->mv_size - VHDR - evlen;
  return 0;
}

typedef struct app_op {
  rd_store_env *env;
  size_t n;
  const char *const *events, *const *datas;
  const size_t *dlens;
  const double *times;
  uint64_t first;
} app_op;

static int append_fn(MDB_txn *txn, void *ud, rd_error *err) {
  app_op *op = ud;
  MDB_dbi audit = rd__store_dbi(op->env, RD__DB_AUDIT), meta = rd__store_dbi(op->env, RD__DB_META);
  unsigned char prev[32] = {0};
  uint64_t seq = 1;
  MDB_val hk = {10, "audit.head"}, hv;
  int rc = mdb_get(txn, meta, &hk, &hv);
  if (rc == 0 && hv.mv_size == 40) {
    seq = rd__store_get_be64(hv.mv_data) + 1;
    memcpy(prev, (unsigned char *)hv.mv_data + 8, 32);
  } else if (rc && rc != MDB_NOTFOUND) {
    return rc;
  } else if (rc == 0) {
    return rd_error_set(err, RD_ECORRUPT, "audit: the head record is damaged");
  }
  op->first = seq;
  for (size_t i = 0; i < op->n; i++, seq++) {
    const char *ev = op->events[i], *data = op->datas[i] ? op->datas[i] : "";
    size_t elen = strlen(ev), dlen = op->datas[i] ? op->dlens[i] : 0;
    double time = op->times[i];
    unsigned char key[8];
    rd__store_be64(key, seq);
    MDB_val k = {8, key}, v = {VHDR + elen + dlen, NULL};
    if ((rc = mdb_put(txn, audit, &k, &v, MDB_RESERVE))) return rc;
    unsigned char *p = v.mv_data;
    uint32_t el = (uint32_t)elen;
    rd__store_be64(p, seq);
    memcpy(p + 8, prev, 32);
    entry_hash(p + 40, seq, prev, time, ev, el, data, dlen);
    memcpy(p + 72, &time, 8);
    memcpy(p + 80, &el, 4);
    memcpy(p + VHDR, ev, elen);
    if (dlen) memcpy(p + VHDR + elen, data, dlen);
    memcpy(prev, p + 40, 32);
  }
  unsigned char head[40];
  rd__store_be64(head, seq - 1);
  memcpy(head + 8, prev, 32);
  MDB_val nh = {40, head};
  return mdb_put(txn, meta, &hk, &nh, 0);
}

int rd_audit_append_batch(rd_store_env *env, size_t n, const char *const *events,
                          const char *const *datas, const size_t *dlens,
                          const double *times, uint64_t *first_seq, rd_error *err) {
  rd_error_clear(err);
  for (size_t i = 0; i < n; i++) {
    if (!events[i] || !*events[i])
      return rd_error_set(err, RD_EINVAL, "audit: entry %zu: the event name is empty", i + 1);
    if (strlen(events[i]) > 256)
      return rd_error_set(err, RD_EINVAL, "audit: entry %zu: event name too long", i + 1);
    if (datas[i] && dlens[i] > RD_AUDIT_MAX_DATA)
      return rd_error_set(err, RD_EINVAL, "audit: entry %zu: data of %zu bytes exceeds %u",
                          i + 1, dlens[i], RD_AUDIT_MAX_DATA);
  }
  if (n == 0) return RD_OK;
  app_op op = {env, n, events, datas, dlens, times, 0};
  int rc = rd__store_write(env, append_fn, &op, err);
  if (rc == RD_OK && first_seq) *first_seq = op.first;
  return rc;
}

int rd_audit_append(rd_store_env *env, const char *event, const char *data, size_t dlen,
                    double time, uint64_t *seq, rd_error *err) {
  const char *d = data ? data : "";
  return rd_audit_append_batch(env, 1, &event, &d, &dlen, &time, seq, err);
}

int rd_audit_list(rd_store_env *env, uint64_t from_seq, size_t limit, rd_audit_entry_cb cb,
                  void *ud, rd_error *err) {
  rd_error_clear(err);
  MDB_txn *txn;
  int rc = rd__store_read_begin(env, &txn, err);
  if (rc) return rc;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, rd__store_dbi(env, RD__DB_AUDIT), &cur))) {
    rd__store_read_end(env, txn);
    return rd__store_mdb_error(env, err, rc, "audit list");
  }
  unsigned char key[8];
  rd__store_be64(key, from_seq ? from_seq : 1);
  MDB_val k = {8, key}, v;
  size_t n = 0;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (rc == 0 && (!limit || n < limit)) {
    rd_audit_entry e;
    if (parse(&v, &e) != 0) {
      e.seq = k.mv_size == 8 ? rd__store_get_be64(k.mv_data) : 0;
      e.event = "(unreadable)";
      e.event_len = 12;
      e.data = "";
      e.data_len = 0;
    }
    n++;
    if (cb && cb(&e, ud)) break;
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  rd__store_read_end(env, txn);
  if (rc && rc != MDB_NOTFOUND) return rd__store_mdb_error(env, err, rc, "audit list");
  return RD_OK;
}

static void bad(rd_audit_report *rep, uint64_t seq, const char *fmt, unsigned long long a) {
  rep->ok = 0;
  rep->bad_seq = seq;
  snprintf(rep->problem, sizeof rep->problem, fmt, (unsigned long long)seq, a);
}

int rd_audit_verify(rd_store_env *env, rd_audit_report *rep, rd_error *err) {
  rd_error_clear(err);
  memset(rep, 0, sizeof *rep);
  rep->ok = 1;
  MDB_txn *txn;
  int rc = rd__store_read_begin(env, &txn, err);
  if (rc) return rc;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, rd__store_dbi(env, RD__DB_AUDIT), &cur))) {
    rd__store_read_end(env, txn);
    return rd__store_mdb_error(env, err, rc, "audit verify");
  }
  unsigned char prev[32] = {0};
  uint64_t expect = 1;
  MDB_val k, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  while (rc == 0) {
    uint64_t seq = k.mv_size == 8 ? rd__store_get_be64(k.mv_data) : 0;
    rd_audit_entry e;
    if (seq != expect) {
      if (seq > expect)
        bad(rep, expect, "entry %llu was removed (the next entry present is %llu)", seq);
      else
        bad(rep, expect, "entry %llu: a key out of sequence (%llu)", seq);
      break;
    }
    if (parse(&v, &e) != 0) {
      bad(rep, seq, "entry %llu is unreadable (%llu bytes)", v.mv_size);
      break;
    }
    if (e.seq != seq) {
      bad(rep, seq, "entry %llu holds entry %llu: entries were reordered", e.seq);
      break;
    }
    if (memcmp(e.prev, prev, 32) != 0) {
      bad(rep, seq, "entry %llu does not follow entry %llu (its previous hash differs): "
          "an entry before it was removed, replaced or reordered", seq - 1);
      break;
    }
    unsigned char h[32];
    entry_hash(h, seq, e.prev, e.time, e.event, (uint32_t)e.event_len, e.data, e.data_len);
    if (memcmp(h, e.hash, 32) != 0) {
      bad(rep, seq, "entry %llu was edited (its hash does not match its content)%.0llu", 0);
      break;
    }
    memcpy(prev, e.hash, 32);
    rep->entries++;
    expect++;
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc == MDB_NOTFOUND) rc = 0;
  if (rc == 0 && rep->ok) {
    MDB_val hk = {10, "audit.head"}, hv;
    int hrc = mdb_get(txn, rd__store_dbi(env, RD__DB_META), &hk, &hv);
    uint64_t last = expect - 1;
    if (hrc == 0 && hv.mv_size == 40) {
      uint64_t hs = rd__store_get_be64(hv.mv_data);
      if (hs > last)
        bad(rep, last + 1, "entry %llu was removed (the chain's head says it ends at %llu)", hs);
      else if (hs < last || memcmp((unsigned char *)hv.mv_data + 8, prev, 32) != 0)
        bad(rep, hs ? hs : 1, "entry %llu does not match the chain's head record%.0llu", 0);
    } else if (hrc == 0 || (hrc == MDB_NOTFOUND && last > 0)) {
      bad(rep, last, "entry %llu: the chain's head record is missing or damaged%.0llu", 0);
    } else if (hrc && hrc != MDB_NOTFOUND) {
      rc = hrc;
    }
  }
  rd__store_read_end(env, txn);
  if (rc) return rd__store_mdb_error(env, err, rc, "audit verify");
  return RD_OK;
}
