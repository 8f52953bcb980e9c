/*
 * handoff.c — the floor of an in-process call's hand-offs on this machine,
 * for spec/bench/sandbox (built by its run script, no dependency).
 *
 *   handoff N
 *
 * Two threads, pinned to CPUs 0 and 1, pass a flag back and forth N
 * times, each spinning (with `pause`) for its turn: the round trip of one
 * cache line between the two CPUs, with nothing else done. A relaxed call
 * makes that trip at least once (the call to a call thread, the answer
 * back), and every line of data both threads touch travels the same way.
 * On a shared VM this varies by several times from one minute to the
 * next, with where the host runs the two virtual CPUs (seen here: 70 ns
 * to 2 µs). Prints one row in the benchmark's columns: label, p50 and p99
 * of a round trip in µs, round trips per second.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) atomic_int turn;
static int n;

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  (void)pthread_setaffinity_np(pthread_self(), sizeof s, &s); /* refused: unpinned */
}

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void *other(void *arg) {
  (void)arg;
  pin(1);
  for (int i = 0; i < n; i++) {
    while (atomic_load_explicit(&turn, memory_order_acquire) != 1) relax();
    atomic_store_explicit(&turn, 0, memory_order_release);
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  n = argc > 1 ? atoi(argv[1]) : 0;
  if (n < 1) {
    fprintf(stderr, "usage: handoff N\n");
    return 2;
  }
  double *t = malloc((size_t)n * sizeof *t);
  if (!t) return 1;
  pin(0);
  pthread_t th;
  if (pthread_create(&th, NULL, other, NULL) != 0) {
    fprintf(stderr, "handoff: cannot start a thread\n");
    return 1;
  }
  double start = now_ns();
  for (int i = 0; i < n; i++) {
    double t0 = now_ns();
    atomic_store_explicit(&turn, 1, memory_order_release);
    while (atomic_load_explicit(&turn, memory_order_acquire) != 0) relax();
    t[i] = now_ns() - t0;
  }
  double total = now_ns() - start;
  pthread_join(th, NULL);
  qsort(t, (size_t)n, sizeof *t, cmp);
  printf("%-10s %10.2f %10.2f %12.0f\n", "hand-off", t[n / 2] / 1e3, t[(size_t)n * 99 / 100] / 1e3,
         (double)n / total * 1e9);
  free(t);
  return 0;
}
