/*
 * bench.c — the store benchmark from C (spec/bench/store/run builds it):
 * cache get/put through rd_cache, history appends with group commit, and
 * the anchor: raw LMDB mdb_get / mdb_put on an env of the same flags, in
 * the same run.
 *
 *   bench DIR N_KEYS N_GETS N_APPENDS
 * Prints one line per measurement: name ops_per_s
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void key_of(char *k, unsigned i) { snprintf(k, 32, "key:%08u", i); }

static unsigned long long seed = 88172645463325252ull;
static unsigned rnd(unsigned n) {
  seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
  return (unsigned)(seed % n);
}

static volatile int committed;
static void on_commit(void *ud, int rc, const char *msg) {
  (void)ud; (void)msg;
  if (rc == RD_OK) __atomic_add_fetch(&committed, 1, __ATOMIC_RELAXED);
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: bench DIR N_KEYS N_GETS N_APPENDS\n"); return 2; }
  const char *dir = argv[1];
  unsigned nkeys = (unsigned)atoi(argv[2]), ngets = (unsigned)atoi(argv[3]);
  unsigned napp = (unsigned)atoi(argv[4]);
  char val[100];
  memset(val, 'v', sizeof val);
  char key[32];
  rd_error err;

  /* ---- raw LMDB: the physical limit ---- */
  char rawdir[512];
  snprintf(rawdir, sizeof rawdir, "%s/raw.mdb", dir);
  MDB_env *env;
  mdb_env_create(&env);
  mdb_env_set_mapsize(env, 1u << 30);
  if (mdb_env_open(env, rawdir, MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOTLS, 0600)) return 1;
  MDB_dbi dbi;
  MDB_txn *txn;
  double t0 = now_s();
  for (unsigned i = 0; i < nkeys; i++) {
    key_of(key, i);
    mdb_txn_begin(env, NULL, 0, &txn);
    if (i == 0) mdb_dbi_open(txn, NULL, 0, &dbi);
    MDB_val k = {strlen(key), key}, v = {sizeof val, val};
    mdb_put(txn, dbi, &k, &v, 0);
    mdb_txn_commit(txn);
  }
  printf("raw_put_txn %.0f\n", nkeys / (now_s() - t0));
  mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
  mdb_txn_reset(txn);
  size_t sum = 0;
  t0 = now_s();
  for (unsigned i = 0; i < ngets; i++) {
    key_of(key, rnd(nkeys));
    mdb_txn_renew(txn);
    MDB_val k = {strlen(key), key}, v;
    if (mdb_get(txn, dbi, &k, &v) == 0) sum += v.mv_size;
    mdb_txn_reset(txn);
  }
  printf("raw_get_txn %.0f\n", ngets / (now_s() - t0));
  mdb_txn_renew(txn);
  t0 = now_s();
  for (unsigned i = 0; i < ngets; i++) {
    key_of(key, rnd(nkeys));
    MDB_val k = {strlen(key), key}, v;
    if (mdb_get(txn, dbi, &k, &v) == 0) sum += v.mv_size;
  }
  printf("raw_get %.0f\n", ngets / (now_s() - t0));
  mdb_txn_abort(txn);
  mdb_env_close(env);

  /* ---- the cache ---- */
  rd_store_env *cenv;
  rd_store_env_config cfg = {1u << 30, 1u << 30};
  if (rd_store_env_open(&cenv, dir, RD_STORE_CACHE, &cfg, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
  for (int p = 0; p < 3; p++) {
    static const char *names[] = {"lru", "lfu", "fifo"};
    rd_cache *c;
    rd_cache_config cc = {0, 0, (rd_cache_policy)p};
    rd_cache_open(&c, cenv, &cc, NULL);
    rd_cache_clear(c, NULL);
    t0 = now_s();
    for (unsigned i = 0; i < nkeys; i++) {
      key_of(key, i);
      rd_cache_put(c, key, strlen(key), val, sizeof val, 3600, NULL);
    }
    printf("cache_put_%s %.0f\n", names[p], nkeys / (now_s() - t0));
    t0 = now_s();
    for (unsigned i = 0; i < ngets; i++) {
      key_of(key, rnd(nkeys));
      rd_store_view v;
      if (rd_cache_get(c, key, strlen(key), &v, NULL) == RD_OK) sum += v.len;
      rd_store_view_release(&v);
    }
    printf("cache_get_%s %.0f\n", names[p], ngets / (now_s() - t0));
    rd_cache_close(c);
  }
  rd_store_env_close(cenv);

  /* ---- history: durable appends, group commit ---- */
  rd_store_env *denv;
  if (rd_store_env_open(&denv, dir, RD_STORE_DATA, &cfg, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
  rd_history *h;
  rd_history_config hc = {2, 2048};
  rd_history_open(&h, denv, &hc, NULL);
  char id[RD_ULID_LEN + 1];
  rd_history_record r;
  memset(&r, 0, sizeof r);
  r.id = id; r.tool = "echo"; r.version = "1.0.0"; r.status = "ok"; r.kind = "";
  r.caller = "bench"; r.params_hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  r.duration_ms = 1; r.attempts = 1;
  t0 = now_s();
  for (unsigned i = 0; i < napp; i++) {
    rd_ulid_new(id);
    r.started_at = 1;
    rd_history_append_async(h, &r, on_commit, NULL, NULL);
  }
  rd_history_close(h); /* waits for the last commit */
  double dt = now_s() - t0;
  printf("history_append %.0f\n", committed / dt);
  /* one at a time, each waiting for its commit: the fsync cost */
  rd_history_open(&h, denv, &hc, NULL);
  unsigned nsync = napp / 100 > 200 ? 200 : napp / 100 + 1;
  t0 = now_s();
  for (unsigned i = 0; i < nsync; i++) {
    rd_ulid_new(id);
    rd_history_append(h, &r, NULL);
  }
  printf("history_append_sequential %.0f\n", nsync / (now_s() - t0));
  rd_history_close(h);
  rd_store_env_close(denv);
  fprintf(stderr, "(checksum %zu)\n", sum);
  return 0;
}
