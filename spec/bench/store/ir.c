/*
 * ir.c — one kind of get, N times, over 1000 keys (RD_IR_KEYS: another
 * count, e.g. 10000 for a tree one level deeper; spec/bench/store/ir runs
 * it under callgrind twice and prints instructions per get: a figure that,
 * unlike ops per second, does not move with the machine's load).
 *
 *   ir DIR MODE N     MODE: raw_begin | raw_renew | raw_renew_named |
 *                           raw_one_txn | cache_lru | cache_fifo
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXKEYS 1000000
static int NKEYS = 1000; /* RD_IR_KEYS */

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: ir DIR MODE N\n"); return 2; }
  const char *dir = argv[1], *mode = argv[2];
  unsigned n = (unsigned)atoi(argv[3]);
  const char *nk = getenv("RD_IR_KEYS");
  if (nk && atoi(nk) > 0 && atoi(nk) <= MAXKEYS) NKEYS = atoi(nk);
  static char keys[MAXKEYS][16];
  for (int i = 0; i < NKEYS; i++) snprintf(keys[i], sizeof keys[i], "key:%08u", i);
  char val[100];
  memset(val, 'v', sizeof val);
  size_t sum = 0, hits = 0;
  if (strncmp(mode, "raw_", 4) == 0) {
    char path[512];
    snprintf(path, sizeof path, "%s/raw.mdb", dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int named = strcmp(mode, "raw_renew_named") == 0;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    mdb_env_set_mapsize(env, 1u << 30);
    if (mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOTLS, 0600)) return 1;
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, named ? "entries" : NULL, MDB_CREATE, &dbi);
    unsigned char ek[16], rv[140];
    memset(rv, 'v', sizeof rv);
    for (int i = 0; i < NKEYS; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[i], 12);
      MDB_val k = {13, ek}, v = {sizeof rv, rv};
      mdb_put(txn, dbi, &k, &v, 0);
    }
    mdb_txn_commit(txn);
    int begin = strcmp(mode, "raw_begin") == 0, one = strcmp(mode, "raw_one_txn") == 0;
    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (!one) mdb_txn_reset(txn);
    for (unsigned i = 0; i < n; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[i % NKEYS], 12);
      MDB_txn *t = txn;
      if (begin) mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
      else if (!one) mdb_txn_renew(t);
      MDB_val k = {13, ek}, v;
      if (mdb_get(t, dbi, &k, &v) == 0) { sum += v.mv_size; hits++; }
      if (begin) mdb_txn_abort(t);
      else if (!one) mdb_txn_reset(t);
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
  } else {
    rd_store_env *env;
    rd_error err;
    rd_store_env_config ecfg = {1u << 30, 1u << 30};
    if (rd_store_env_open(&env, dir, RD_STORE_CACHE, &ecfg, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
    rd_cache *c;
    rd_cache_config cc = {0, 0, strcmp(mode, "cache_lru") == 0 ? RD_CACHE_LRU : RD_CACHE_FIFO};
    if (rd_cache_open(&c, env, &cc, &err)) return 1;
    for (int i = 0; i < NKEYS; i++) rd_cache_put(c, keys[i], 12, val, sizeof val, 3600, NULL);
    for (unsigned i = 0; i < n; i++) {
      rd_store_view v;
      if (rd_cache_get(c, keys[i % NKEYS], 12, &v, NULL) == RD_OK) { sum += v.len; hits++; }
      rd_store_view_release(&v);
    }
    rd_cache_close(c);
    rd_store_env_close(env);
  }
  if (hits != n) { fprintf(stderr, "%zu hits of %u\n", hits, n); return 1; }
  return sum == 0;
}
