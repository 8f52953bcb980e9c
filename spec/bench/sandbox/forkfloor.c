/*
 * forkfloor.c — the physical floor of a process per execution on this
 * machine, for spec/bench/sandbox (built by its run script, no dependency).
 *
 *   forkfloor N [HEAP_MIB] [LABEL]
 *
 * N times: fork; the child _exits at once; the parent waitpid()s it. With
 * HEAP_MIB, the parent first writes every page of a heap that large (a
 * process of that resident size forks: its page tables are copied, and
 * its teardown unmaps them). Prints one row in the benchmark's columns
 * (label, p50 and p99 of one fork + _exit + waitpid in µs, forks per
 * second), then, on a line of its own, the CPU time per fork in the parent
 * and in the children (getrusage), which the wall figures hide on a busy
 * machine.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static double cpu_us(int who) {
  struct rusage r;
  getrusage(who, &r);
  return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 +
         (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 0;
  long mib = argc > 2 ? atol(argv[2]) : 0;
  const char *label = argc > 3 ? argv[3] : "fork floor";
  if (n < 1 || mib < 0) {
    fprintf(stderr, "usage: forkfloor N [HEAP_MIB] [LABEL]\n");
    return 2;
  }
  size_t heap = (size_t)mib << 20;
  char *p = heap ? malloc(heap) : NULL;
  if (heap && !p) {
    fprintf(stderr, "forkfloor: cannot allocate %ld MiB\n", mib);
    return 1;
  }
  for (size_t i = 0; i < heap; i += 4096) p[i] = 1;
  double *t = malloc((size_t)n * sizeof *t);
  if (!t) return 1;
  for (int i = 0; i < 20; i++) { /* warm-up */
    pid_t k = fork();
    if (k == 0) _exit(0);
    if (k < 0 || waitpid(k, NULL, 0) != k) return 1;
  }
  double self0 = cpu_us(RUSAGE_SELF), kids0 = cpu_us(RUSAGE_CHILDREN);
  double start = now_us();
  for (int i = 0; i < n; i++) {
    double t0 = now_us();
    pid_t k = fork();
    if (k == 0) _exit(0);
    if (k < 0) {
      perror("forkfloor: fork");
      return 1;
    }
    if (waitpid(k, NULL, 0) != k) {
      perror("forkfloor: waitpid");
      return 1;
    }
    t[i] = now_us() - t0;
  }
  double total = now_us() - start;
  double self = cpu_us(RUSAGE_SELF) - self0, kids = cpu_us(RUSAGE_CHILDREN) - kids0;
  qsort(t, (size_t)n, sizeof *t, cmp);
  size_t i50 = (size_t)((n + 1) / 2) - 1, i99 = (size_t)((n * 99 + 99) / 100) - 1;
  printf("%-10s %10.1f %10.1f %12.0f\n", label, t[i50], t[i99], n / (total / 1e6));
  printf("  (%s: fork + _exit + waitpid of a %ld MiB process, CPU per fork: %.0f us parent, %.0f us child)\n",
         label, mib, self / n, kids / n);
  free(t);
  free(p);
  return 0;
}
