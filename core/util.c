/*
 * util.c — allocation seam, byte buffers, clocks, error table.
 */
#include "rd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- errors ---------------------------------------------------------------- */

const char *rd_err_name(int code) {
  switch (code) {
    case RD_OK: return "ok";
#define XX(c, name, msg) case RD_##c: return name;
    RD_ERRNO_MAP(XX)
#undef XX
    default: return "unknown";
  }
}

const char *rd_strerror(int code) {
  switch (code) {
    case RD_OK: return "success";
#define XX(c, name, msg) case RD_##c: return msg;
    RD_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
  }
}

int rd_error_set(rd_error *err, int code, const char *fmt, ...) {
  if (err) {
    err->code = code;
    if (fmt) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(err->message, sizeof err->message, fmt, ap);
      va_end(ap);
    } else {
      snprintf(err->message, sizeof err->message, "%s", rd_strerror(code));
    }
  }
  return code;
}

void rd_error_clear(rd_error *err) {
  if (err) {
    err->code = RD_OK;
    err->message[0] = '\0';
  }
}

void rd_free(void *p) { rd__freemem(p); }

/* ---- allocation seam ------------------------------------------------------- */

static long fail_after = -1;

static int should_fail(void) {
  if (fail_after < 0) return 0;
  if (fail_after == 0) return 1;
  fail_after--;
  return 0;
}

void rd__alloc_fail_after(long n) { fail_after = n; }

void *rd__malloc(size_t n) {
  if (should_fail()) return NULL;
  return malloc(n ? n : 1);
}

void *rd__realloc(void *p, size_t n) {
  if (should_fail()) return NULL;
  return realloc(p, n ? n : 1);
}

void *rd__calloc(size_t n, size_t size) {
  if (should_fail()) return NULL;
  return calloc(n ? n : 1, size ? size : 1);
}

void rd__freemem(void *p) { free(p); }

char *rd__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = rd__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* ---- buffers ---------------------------------------------------------------- */

int rd__buf_reserve(rd_buf *b, size_t extra) {
  if (b->oom) return RD_ENOMEM;
  if (extra > SIZE_MAX - b->len - 1) { b->oom = 1; return RD_ENOMEM; }
  if (b->len + extra + 1 <= b->cap) return RD_OK;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + extra + 1) {
    if (cap > SIZE_MAX / 2) { b->oom = 1; return RD_ENOMEM; }
    cap *= 2;
  }
  char *p = rd__realloc(b->data, cap);
  if (!p) { b->oom = 1; return RD_ENOMEM; }
  b->data = p;
  b->cap = cap;
  return RD_OK;
}

void rd__buf_append(rd_buf *b, const void *p, size_t n) {
  if (rd__buf_reserve(b, n) != RD_OK) return;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void rd__buf_puts(rd_buf *b, const char *s) { rd__buf_append(b, s, strlen(s)); }

void rd__buf_putc(rd_buf *b, char c) { rd__buf_append(b, &c, 1); }

void rd__buf_printf(rd_buf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    rd__buf_append(b, tmp, (size_t)n);
    return;
  }
  if (rd__buf_reserve(b, (size_t)n) != RD_OK) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

char *rd__buf_steal(rd_buf *b, size_t *len) {
  if (b->oom) {
    rd__buf_free(b);
    return NULL;
  }
  if (!b->data && rd__buf_reserve(b, 0) != RD_OK) return NULL;
  b->data[b->len] = '\0';
  char *p = b->data;
  if (len) *len = b->len;
  b->data = NULL;
  b->len = b->cap = 0;
  return p;
}

void rd__buf_free(rd_buf *b) {
  rd__freemem(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}

/* ---- clocks ------------------------------------------------------------------ */

double rd__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t rd__mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double rd__thread_cpu_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
