/*
 * bench.c — the store benchmark from C (spec/bench/store/run builds it):
 * cache get/put through rd_cache, history appends with group commit, and
 * the anchors: raw LMDB mdb_get / mdb_put on an env of the same flags and
 * the same data, in the same run, interleaved with the cache's gets:
 *   raw_get_begin        a new read txn per get (mdb_txn_begin / abort)
 *   raw_get_renew        one read txn renewed / reset per get (a fresh
 *                        snapshot per get at the least cost)
 *   raw_get_renew_named  the same on a named database
 *   raw_get_one_txn      every get in one long read txn: the same access
 *                        pattern as the cache's kept snapshot when nothing
 *                        is written (the physical limit of a get)
 *   raw_get_file_one_txn the same on a page-for-page copy of the cache's
 *                        file: the cache's own layout (its puts leave
 *                        pages less full than the bulk load above), so
 *                        the limit of the cache's gets on its own data
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

/* The gets' and puts' clock: wall (default) or, with RD_BENCH_CLOCK=cpu,
 * this thread's CPU time (steadier on a shared, loaded machine). History
 * appends always use the wall clock (their cost is waiting for fsync). */
static clockid_t bench_clock = CLOCK_MONOTONIC;
static double clk(void) {
  struct timespec ts;
  clock_gettime(bench_clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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

#define ROUNDS 3 /* each get figure is the best of ROUNDS rounds (a noisy shared VM) */

static double best(double a, double b) { return a > b ? a : b; }

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: bench DIR N_KEYS N_GETS N_APPENDS\n"); return 2; }
  const char *dir = argv[1];
  const char *ck = getenv("RD_BENCH_CLOCK");
  if (ck && strcmp(ck, "cpu") == 0) bench_clock = CLOCK_THREAD_CPUTIME_ID;
  unsigned nkeys = (unsigned)atoi(argv[2]), ngets = (unsigned)atoi(argv[3]);
  unsigned napp = (unsigned)atoi(argv[4]);
  char val[100];
  memset(val, 'v', sizeof val);
  rd_error err;
  /* The keys, made before timing (bench.lua does the same): "key:%08u".
   * The raw databases hold what the cache holds: 'k' + key -> 40-byte
   * header + 100-byte value. */
  char (*keys)[16] = malloc((size_t)nkeys * sizeof *keys);
  unsigned *pick = malloc((size_t)ngets * sizeof *pick);
  if (!keys || !pick) return 1;
  for (unsigned i = 0; i < nkeys; i++) snprintf(keys[i], sizeof keys[i], "key:%08u", i);
  for (unsigned i = 0; i < ngets; i++) pick[i] = rnd(nkeys);
  const size_t klen = 12;

  /* ---- raw LMDB: the physical limit, same flags as the cache env ---- */
  char rawdir[512];
  snprintf(rawdir, sizeof rawdir, "%s/raw.mdb", dir);
  MDB_env *env;
  mdb_env_create(&env);
  mdb_env_set_mapsize(env, 1u << 30);
  mdb_env_set_maxdbs(env, 8);
  if (mdb_env_open(env, rawdir, MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOTLS, 0600)) return 1;
  MDB_dbi dbi, named;
  MDB_txn *txn;
  unsigned char ek[1 + 16], rv[140];
  memset(rv, 'v', sizeof rv);
  double t0 = clk();
  for (unsigned i = 0; i < nkeys; i++) {
    ek[0] = 'k';
    memcpy(ek + 1, keys[i], klen);
    mdb_txn_begin(env, NULL, 0, &txn);
    if (i == 0) {
      mdb_dbi_open(txn, NULL, 0, &dbi);
      mdb_dbi_open(txn, "entries", MDB_CREATE, &named);
    }
    MDB_val k = {klen + 1, ek}, v = {sizeof rv, rv};
    mdb_put(txn, dbi, &k, &v, 0);
    mdb_txn_commit(txn);
  }
  printf("raw_put_txn %.0f\n", nkeys / (clk() - t0));
  mdb_txn_begin(env, NULL, 0, &txn);
  for (unsigned i = 0; i < nkeys; i++) {
    ek[0] = 'k';
    memcpy(ek + 1, keys[i], klen);
    MDB_val k = {klen + 1, ek}, v = {sizeof rv, rv};
    mdb_put(txn, named, &k, &v, 0);
  }
  mdb_txn_commit(txn);

  size_t sum = 0;
  double r_begin = 0, r_renew = 0, r_named = 0, r_one = 0;
  double c_get[3] = {0, 0, 0};
  MDB_txn *rtxn;
  mdb_txn_begin(env, NULL, MDB_RDONLY, &rtxn);
  mdb_txn_reset(rtxn);

  rd_store_env *cenv;
  rd_store_env_config cfg = {1u << 30, 1u << 30};
  if (rd_store_env_open(&cenv, dir, RD_STORE_CACHE, &cfg, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
  static const char *names[] = {"lru", "lfu", "fifo"};
  rd_cache *caches[3];
  for (int p = 0; p < 3; p++) {
    rd_cache_config cc = {0, 0, (rd_cache_policy)p};
    rd_cache_open(&caches[p], cenv, &cc, NULL);
    rd_cache_clear(caches[p], NULL);
    t0 = clk();
    for (unsigned i = 0; i < nkeys; i++)
      rd_cache_put(caches[p], keys[i], klen, val, sizeof val, 3600, NULL);
    printf("cache_put_%s %.0f\n", names[p], nkeys / (clk() - t0));
    rd_cache_flush(caches[p], NULL);
    if (p < 2) { rd_cache_close(caches[p]); caches[p] = NULL; }
  }
  /* A page-for-page copy of the cache's file, every write committed: raw
   * gets on it read the cache's own layout (pages as the cache's puts left
   * them, less full than a bulk load's) with no cache code in the way. */
  char cmd[1400], copy[1100];
  snprintf(copy, sizeof copy, "%s/copy.mdb", dir);
  snprintf(cmd, sizeof cmd, "cp '%s/cache.mdb' '%s'", dir, copy);
  if (system(cmd) != 0) { fprintf(stderr, "cannot copy the cache file\n"); return 1; }
  MDB_env *fenv;
  MDB_txn *ftxn;
  MDB_dbi fdbi;
  mdb_env_create(&fenv);
  mdb_env_set_mapsize(fenv, 1u << 30);
  mdb_env_set_maxdbs(fenv, 8);
  if (mdb_env_open(fenv, copy, MDB_NOSUBDIR | MDB_NOTLS | MDB_RDONLY, 0600)) return 1;
  mdb_txn_begin(fenv, NULL, MDB_RDONLY, &ftxn);
  mdb_dbi_open(ftxn, NULL, 0, &fdbi);
  mdb_txn_reset(ftxn);
  double r_file = 0;
  /* All three policies read the same file (the last fill); each handle is
   * fresh per round, like the engine's. */
  for (int round = 0; round < ROUNDS; round++) {
    /* a new read txn per get (begin / abort) */
    t0 = clk();
    for (unsigned i = 0; i < ngets; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[pick[i]], klen);
      mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
      MDB_val k = {klen + 1, ek}, v;
      if (mdb_get(txn, dbi, &k, &v) == 0) sum += v.mv_size;
      mdb_txn_abort(txn);
    }
    r_begin = best(r_begin, ngets / (clk() - t0));
    /* one read txn reused: renew / reset per get (the reuse limit) */
    t0 = clk();
    for (unsigned i = 0; i < ngets; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[pick[i]], klen);
      mdb_txn_renew(rtxn);
      MDB_val k = {klen + 1, ek}, v;
      if (mdb_get(rtxn, dbi, &k, &v) == 0) sum += v.mv_size;
      mdb_txn_reset(rtxn);
    }
    r_renew = best(r_renew, ngets / (clk() - t0));
    /* the same on a named database, as the cache's "entries" is: a renewed
     * txn looks the database up again on its first access */
    t0 = clk();
    for (unsigned i = 0; i < ngets; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[pick[i]], klen);
      mdb_txn_renew(rtxn);
      MDB_val k = {klen + 1, ek}, v;
      if (mdb_get(rtxn, named, &k, &v) == 0) sum += v.mv_size;
      mdb_txn_reset(rtxn);
    }
    r_named = best(r_named, ngets / (clk() - t0));
    /* all gets in one read txn: what the cache's kept snapshot does while
     * nothing is written (the physical limit) */
    mdb_txn_renew(rtxn);
    t0 = clk();
    for (unsigned i = 0; i < ngets; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[pick[i]], klen);
      MDB_val k = {klen + 1, ek}, v;
      if (mdb_get(rtxn, dbi, &k, &v) == 0) sum += v.mv_size;
    }
    r_one = best(r_one, ngets / (clk() - t0));
    mdb_txn_reset(rtxn);
    /* the same on the copy of the cache's file: the physical limit of the
     * cache's gets on its own layout */
    mdb_txn_renew(ftxn);
    t0 = clk();
    for (unsigned i = 0; i < ngets; i++) {
      ek[0] = 'k';
      memcpy(ek + 1, keys[pick[i]], klen);
      MDB_val k = {klen + 1, ek}, v;
      if (mdb_get(ftxn, fdbi, &k, &v) == 0) sum += v.mv_size;
    }
    r_file = best(r_file, ngets / (clk() - t0));
    mdb_txn_reset(ftxn);
    for (int p = 0; p < 3; p++) {
      rd_cache *c = caches[p];
      if (!c) {
        rd_cache_config cc = {0, 0, (rd_cache_policy)p};
        rd_cache_open(&c, cenv, &cc, NULL);
      }
      unsigned hits = 0;
      t0 = clk();
      for (unsigned i = 0; i < ngets; i++) {
        rd_store_view v;
        if (rd_cache_get(c, keys[pick[i]], klen, &v, NULL) == RD_OK) { sum += v.len; hits++; }
        rd_store_view_release(&v);
      }
      c_get[p] = best(c_get[p], ngets / (clk() - t0));
      if (hits != ngets) { fprintf(stderr, "cache_get_%s: %u hits of %u\n", names[p], hits, ngets); return 1; }
      rd_cache_close(c);
      caches[p] = NULL;
    }
  }
  mdb_txn_abort(rtxn);
  mdb_env_close(env);
  mdb_txn_abort(ftxn);
  mdb_env_close(fenv);
  printf("raw_get_begin %.0f\n", r_begin);
  printf("raw_get_renew %.0f\n", r_renew);
  printf("raw_get_renew_named %.0f\n", r_named);
  printf("raw_get_one_txn %.0f\n", r_one);
  printf("raw_get_file_one_txn %.0f\n", r_file);
  for (int p = 0; p < 3; p++) printf("cache_get_%s %.0f\n", names[p], c_get[p]);
  rd_store_env_close(cenv);
  free(keys);
  free(pick);

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
