/*
 * kv.c — the namespaced key/value store on the data env (store.h).
 *
 * LMDB key:   ns_len (1 byte) ns keypart
 *             keypart = key                       (key <= 400 bytes)
 *                     | key[0..400) BLAKE2b-256(key)   (longer keys)
 * LMDB value: flag (1 byte: 0 inline key, 1 hashed key)
 *             [u32 LE key length, key]  when hashed
 *             value bytes
 * Keys sort in byte order within a namespace (a long key sorts by its first
 * 400 bytes, then by hash), so a prefix listing is one range scan.
 */
#include "store/store.h"

#include <string.h>

#define EK_MAX (1 + RD_KV_MAX_NS + RD_KV_INLINE_KEY + 32)

static int check_ns(const char *ns, rd_error *err) {
  if (!ns || !*ns) return rd_error_set(err, RD_EINVAL, "store: the namespace is empty");
  size_t n = strlen(ns);
  if (n > RD_KV_MAX_NS)
    return rd_error_set(err, RD_EINVAL, "store: namespace longer than %d bytes", RD_KV_MAX_NS);
  for (size_t i = 0; i < n; i++) {
    char c = ns[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == ':' || c == '-'))
      return rd_error_set(err, RD_EINVAL, "store: namespace %.64s: byte %zu is not one of "
                          "A-Z a-z 0-9 _ . : -", ns, i + 1);
  }
  return RD_OK;
}

static int check_key(size_t klen, rd_error *err) {
  if (klen == 0) return rd_error_set(err, RD_EINVAL, "store: the key is empty");
  if (klen > RD_KV_MAX_KEY)
    return rd_error_set(err, RD_ELIMIT, "store: key of %zu bytes exceeds the maximum of %u",
                        klen, RD_KV_MAX_KEY);
  return RD_OK;
}

/* Encode; returns the length. */
static size_t encode(unsigned char *out, const char *ns, const void *key, size_t klen) {
  size_t nl = strlen(ns);
  out[0] = (unsigned char)nl;
  memcpy(out + 1, ns, nl);
  size_t p = 1 + nl;
  if (klen <= RD_KV_INLINE_KEY) {
    memcpy(out + p, key, klen);
    return p + klen;
  }
  memcpy(out + p, key, RD_KV_INLINE_KEY);
  const void *parts[1] = {key};
  size_t lens[1] = {klen};
  rd_store_hash(out + p + RD_KV_INLINE_KEY, 1, parts, lens);
  return p + RD_KV_INLINE_KEY + 32;
}

typedef struct put_op {
  unsigned char ek[EK_MAX];
  size_t eklen;
  const void *key, *val;
  size_t klen, vlen;
  MDB_dbi dbi;
  int del, found;
} put_op;

static int put_fn(MDB_txn *txn, void *ud, rd_error *err) {
  put_op *op = ud;
  MDB_val k = {op->eklen, op->ek};
  (void)err;
  if (op->del) {
    int rc = mdb_del(txn, op->dbi, &k, NULL);
    op->found = rc == 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
  }
  int hashed = op->klen > RD_KV_INLINE_KEY;
  size_t head = hashed ? 5 + op->klen : 1;
  MDB_val v = {head + op->vlen, NULL};
  int rc = mdb_put(txn, op->dbi, &k, &v, MDB_RESERVE);
  if (rc) return rc;
  unsigned char *p = v.mv_data;
  p[0] = (unsigned char)hashed;
  if (hashed) {
    uint32_t kl = (uint32_t)op->klen;
    for (int i = 0; i < 4; i++) p[1 + i] = (unsigned char)(kl >> (8 * i));
    memcpy(p + 5, op->key, op->klen);
  }
  if (op->vlen) memcpy(p + head, op->val, op->vlen);
  return 0;
}

int rd_kv_put(rd_store_env *env, const char *ns, const void *key, size_t klen,
              const void *val, size_t vlen, rd_error *err) {
  rd_error_clear(err);
  int rc;
  if ((rc = check_ns(ns, err)) || (rc = check_key(klen, err))) return rc;
  if (rd__store_kind(env) != RD_STORE_DATA)
    return rd_error_set(err, RD_EINVAL, "store: not a data env");
  if (vlen > RD_KV_MAX_VALUE)
    return rd_error_set(err, RD_ELIMIT, "store: value of %zu bytes exceeds the maximum of "
                        "%u bytes (16 MiB)", vlen, RD_KV_MAX_VALUE);
  put_op op;
  op.eklen = encode(op.ek, ns, key, klen);
  op.key = key;
  op.klen = klen;
  op.val = val ? val : "";
  op.vlen = vlen;
  op.dbi = rd__store_dbi(env, RD__DB_KV);
  op.del = 0;
  return rd__store_write(env, put_fn, &op, err);
}

int rd_kv_delete(rd_store_env *env, const char *ns, const void *key, size_t klen,
                 rd_error *err) {
  rd_error_clear(err);
  int rc;
  if ((rc = check_ns(ns, err)) || (rc = check_key(klen, err))) return rc;
  put_op op;
  op.eklen = encode(op.ek, ns, key, klen);
  op.dbi = rd__store_dbi(env, RD__DB_KV);
  op.del = 1;
  op.found = 0;
  rc = rd__store_write(env, put_fn, &op, err);
  if (rc == RD_OK && !op.found) return RD_ENOENT;
  return rc;
}

/* Split a stored value into the original key (when hashed) and the value. */
static int split(const MDB_val *v, const unsigned char **key, size_t *klen,
                 const unsigned char **val, size_t *vlen) {
  const unsigned char *p = v->mv_data;
  if (v->mv_size < 1) return -1;
  if (p[0] == 0) {
    *key = NULL;
    *klen = 0;
    *val = p + 1;
    *vlen = v->mv_size - 1;
    return 0;
  }
  if (p[0] != 1 || v->mv_size < 5) return -1;
  uint32_t kl = (uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 24;
  if (v->mv_size < 5 + (size_t)kl) return -1;
  *key = p + 5;
  *klen = kl;
  *val = p + 5 + kl;
  *vlen = v->mv_size - 5 - kl;
  return 0;
}

int rd_kv_get(rd_store_env *env, const char *ns, const void *key, size_t klen,
              rd_store_view *view, rd_error *err) {
  memset(view, 0, sizeof *view);
  int rc;
  if ((rc = check_ns(ns, err)) || (rc = check_key(klen, err))) return rc;
  unsigned char ek[EK_MAX];
  MDB_val k = {encode(ek, ns, key, klen), ek}, v;
  MDB_txn *txn;
  if ((rc = rd__store_read_begin(env, &txn, err))) return rc;
  rc = mdb_get(txn, rd__store_dbi(env, RD__DB_KV), &k, &v);
  const unsigned char *okey, *val;
  size_t oklen, vlen;
  if (rc == 0 && split(&v, &okey, &oklen, &val, &vlen) != 0) rc = MDB_CORRUPTED;
  /* A hashed key must be the same key, not just the same hash. */
  if (rc == 0 && okey && (oklen != klen || memcmp(okey, key, klen) != 0)) rc = MDB_NOTFOUND;
  if (rc) {
    rd__store_read_end(env, txn);
    if (rc == MDB_NOTFOUND) return RD_ENOENT;
    return rd__store_mdb_error(env, err, rc, "store get");
  }
  view->data = val;
  view->len = vlen;
  view->txn_ = txn;
  view->env_ = env;
  return RD_OK;
}

static const char HEX[] = "0123456789abcdef";

static int unhex(const char *s, unsigned char *out, size_t max, size_t *n) {
  size_t l = strlen(s);
  if (l % 2 || l / 2 > max) return -1;
  for (size_t i = 0; i < l; i += 2) {
    int hi = -1, lo = -1;
    for (int j = 0; j < 16; j++) {
      if (s[i] == HEX[j]) hi = j;
      if (s[i + 1] == HEX[j]) lo = j;
    }
    if (hi < 0 || lo < 0) return -1;
    out[i / 2] = (unsigned char)(hi << 4 | lo);
  }
  *n = l / 2;
  return 0;
}

int rd_kv_list(rd_store_env *env, const char *ns, const void *prefix, size_t plen,
               const char *cursor, size_t limit, rd_kv_item_cb cb, void *ud,
               char *next_cursor, rd_error *err) {
  rd_error_clear(err);
  int rc = check_ns(ns, err);
  if (rc) return rc;
  if (!limit) limit = 100;
  size_t nl = strlen(ns);
  unsigned char start[EK_MAX];
  /* The range: ns + the prefix's first 400 bytes. */
  size_t pin = plen > RD_KV_INLINE_KEY ? RD_KV_INLINE_KEY : plen;
  start[0] = (unsigned char)nl;
  memcpy(start + 1, ns, nl);
  if (pin) memcpy(start + 1 + nl, prefix, pin);
  size_t rlen = 1 + nl + pin;
  unsigned char from[EK_MAX];
  size_t fromlen = rlen;
  memcpy(from, start, rlen);
  int skip_equal = 0;
  if (cursor && *cursor) {
    size_t cl;
    if (unhex(cursor, from + 1 + nl, RD_KV_INLINE_KEY + 32, &cl) != 0 || cl == 0)
      return rd_error_set(err, RD_EINVAL, "store: bad cursor");
    fromlen = 1 + nl + cl;
    skip_equal = 1;
  }
  if (next_cursor) next_cursor[0] = '\0'; /* after reading cursor: they may alias */
  MDB_txn *txn;
  if ((rc = rd__store_read_begin(env, &txn, err))) return rc;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, rd__store_dbi(env, RD__DB_KV), &cur))) {
    rd__store_read_end(env, txn);
    return rd__store_mdb_error(env, err, rc, "store list");
  }
  MDB_val k = {fromlen, from}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  size_t count = 0;
  unsigned char last[EK_MAX];
  size_t lastlen = 0;
  int stopped = 0;
  while (rc == 0) {
    if (k.mv_size < rlen || memcmp(k.mv_data, start, rlen) != 0) break;
    if (skip_equal && k.mv_size == fromlen && memcmp(k.mv_data, from, fromlen) == 0) {
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
      continue;
    }
    skip_equal = 0;
    const unsigned char *okey, *val;
    size_t oklen, vlen;
    if (split(&v, &okey, &oklen, &val, &vlen) != 0) { rc = MDB_CORRUPTED; break; }
    if (!okey) { okey = (const unsigned char *)k.mv_data + 1 + nl; oklen = k.mv_size - 1 - nl; }
    if (plen > RD_KV_INLINE_KEY && (oklen < plen || memcmp(okey, prefix, plen) != 0)) {
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
      continue;
    }
    if (count == limit) { /* one more exists: the page ends at `last` */
      if (next_cursor) {
        size_t n = lastlen - 1 - nl;
        for (size_t i = 0; i < n; i++) {
          next_cursor[2 * i] = HEX[last[1 + nl + i] >> 4];
          next_cursor[2 * i + 1] = HEX[last[1 + nl + i] & 15];
        }
        next_cursor[2 * n] = '\0';
      }
      break;
    }
    memcpy(last, k.mv_data, k.mv_size);
    lastlen = k.mv_size;
    count++;
    if (cb && cb(okey, oklen, val, vlen, ud)) { stopped = 1; break; }
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  rd__store_read_end(env, txn);
  (void)stopped;
  if (rc && rc != MDB_NOTFOUND) return rd__store_mdb_error(env, err, rc, "store list");
  return RD_OK;
}
