/*
 * testlib.h — the smallest test harness that does the job: TEST(name)
 * defines a test, CHECK(cond) records a failure with file:line and goes on,
 * RUN_TESTS() in main runs them in order and prints
 * "<file>: N passed, N failed", exiting 1 on any failure.
 */
#ifndef RD_TESTLIB_H
#define RD_TESTLIB_H

#include <stdio.h>
#include <string.h>

typedef void (*tl_fn)(void);
static struct { const char *name; tl_fn fn; } tl_tests[256];
static int tl_ntests, tl_failed_checks, tl_cur_failed;

#define TEST(tname)                                                     \
  static void test_##tname(void);                                       \
  __attribute__((constructor)) static void reg_##tname(void) {          \
    tl_tests[tl_ntests].name = #tname;                                  \
    tl_tests[tl_ntests++].fn = test_##tname;                            \
  }                                                                     \
  static void test_##tname(void)

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,  \
              #cond);                                                   \
      tl_failed_checks++;                                               \
      tl_cur_failed = 1;                                                \
    }                                                                   \
  } while (0)

#define CHECK_STR(a, b)                                                 \
  do {                                                                  \
    const char *tl_a = (a), *tl_b = (b);                                \
    if (!tl_a || !tl_b || strcmp(tl_a, tl_b) != 0) {                    \
      fprintf(stderr, "%s:%d: CHECK_STR failed: %s\n  got:  %s\n  want: %s\n", \
              __FILE__, __LINE__, #a, tl_a ? tl_a : "(null)",           \
              tl_b ? tl_b : "(null)");                                  \
      tl_failed_checks++;                                               \
      tl_cur_failed = 1;                                                \
    }                                                                   \
  } while (0)

/* Write `data` to the file `path` (created or truncated); a failure is a
 * failed check. */
static inline void tl_put_file(const char *path, const char *data) {
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL);
  if (!f) return;
  fputs(data, f);
  fclose(f);
}

#define RUN_TESTS()                                                     \
  do {                                                                  \
    int tl_pass = 0, tl_fail = 0;                                       \
    for (int i = 0; i < tl_ntests; i++) {                               \
      tl_cur_failed = 0;                                                \
      tl_tests[i].fn();                                                 \
      if (tl_cur_failed) {                                              \
        tl_fail++;                                                      \
        fprintf(stderr, "FAIL %s\n", tl_tests[i].name);                 \
      } else {                                                          \
        tl_pass++;                                                      \
      }                                                                 \
    }                                                                   \
    printf("%s: %d passed, %d failed\n", __FILE__, tl_pass, tl_fail);   \
    return tl_fail ? 1 : 0;                                             \
  } while (0)

#endif
