/*
 * forkfloor.c — the physical floor of a process per execution on this
 * machine, for spec/bench/sandbox (built by its run script, no dependency).
 *
 *   forkfloor N [HEAP_MIB] [LABEL] [FILTER_INSNS]
 *
 * N times: fork; the child _exits at once; the parent waitpid()s it. With
 * FILTER_INSNS, the child first loads a seccomp filter of that many
 * instructions (that allows everything): what giving each process a filter
 * of its own costs here (the kernel verifies and JIT-compiles each one). With
 * HEAP_MIB, the parent first writes every page of a heap that large (a
 * process of that resident size forks: its page tables are copied, and
 * its teardown unmaps them). Prints one row in the benchmark's columns
 * (label, p50 and p99 of one fork + _exit + waitpid in µs, forks per
 * second), then, on a line of its own, the CPU time per fork in the parent
 * and in the children (getrusage), which the wall figures hide on a busy
 * machine.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
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
  int insns = argc > 4 ? atoi(argv[4]) : 0;
  if (n < 1 || mib < 0 || insns < 0 || insns > 4096) {
    fprintf(stderr, "usage: forkfloor N [HEAP_MIB] [LABEL] [FILTER_INSNS]\n");
    return 2;
  }
  struct sock_filter *f = NULL;
  struct sock_fprog fp = {0, NULL};
  if (insns > 0) {
    /* never-matching comparisons, then allow */
    f = calloc((size_t)insns, sizeof *f);
    if (!f) return 1;
    for (int i = 0; i < insns - 1; i++)
      f[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 100000u + (unsigned)i, 0, 0);
    f[insns - 1] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    fp.len = (unsigned short)insns;
    fp.filter = f;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
      perror("forkfloor: no_new_privs");
      return 1;
    }
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
  int st;
  double self0 = cpu_us(RUSAGE_SELF), kids0 = cpu_us(RUSAGE_CHILDREN);
  double start = now_us();
  for (int i = 0; i < n; i++) {
    double t0 = now_us();
    pid_t k = fork();
    if (k == 0) {
      if (f && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp) != 0) _exit(1);
      _exit(0);
    }
    if (k < 0) {
      perror("forkfloor: fork");
      return 1;
    }
    if (waitpid(k, &st, 0) != k || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "forkfloor: the child failed (seccomp refused?)\n");
      return 1;
    }
    t[i] = now_us() - t0;
  }
  double total = now_us() - start;
  double self = cpu_us(RUSAGE_SELF) - self0, kids = cpu_us(RUSAGE_CHILDREN) - kids0;
  qsort(t, (size_t)n, sizeof *t, cmp);
  size_t i50 = (size_t)((n + 1) / 2) - 1, i99 = (size_t)((n * 99 + 99) / 100) - 1;
  printf("%-10s %10.1f %10.1f %12.0f\n", label, t[i50], t[i99], n / (total / 1e6));
  printf("  (%s: fork + %s_exit + waitpid of a %ld MiB process, CPU per fork: %.0f us parent, %.0f us child)\n",
         label, f ? "a small seccomp filter + " : "", mib, self / n, kids / n);
  free(f);
  free(t);
  free(p);
  return 0;
}
