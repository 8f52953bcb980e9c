/*
 * rd.h — internals shared by the C layers (not installed).
 * Public names are rd_<layer>_<verb> (rubberduck.h); shared internals are
 * rd__<layer>_<verb> and live in the layer's own header; statics have no
 * prefix.
 */
#ifndef RD_INTERNAL_H
#define RD_INTERNAL_H

#include "rubberduck.h"
#include <stddef.h>
#include <stdint.h>

#define RD_UNUSED(x) ((void)(x))
#define RD_COUNTOF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- allocation seam -------------------------------------------------------
 * Every heap allocation of the C core goes through these, so tests can make
 * the N-th allocation fail (rd__alloc_fail_after). They behave like
 * malloc/realloc/free; rd__malloc(0) returns a unique pointer. */
void *rd__malloc(size_t n);
void *rd__realloc(void *p, size_t n);
void *rd__calloc(size_t n, size_t size);
void rd__freemem(void *p);
char *rd__strdup(const char *s);
/* Make every allocation after the next `n` ones fail, until
 * rd__alloc_fail_after(-1) switches failures off again. For tests only;
 * not thread-safe. */
void rd__alloc_fail_after(long n);

/* ---- growable byte buffer ----------------------------------------------------
 * Owned by whoever declares it; rd__buf_free releases the bytes. After an
 * allocation failure the buffer keeps its contents and `oom` is set; every
 * later append is a no-op, so callers check once at the end. */
typedef struct rd_buf {
  char *data;    /* NUL-terminated when len > 0 */
  size_t len;
  size_t cap;
  int oom;
} rd_buf;

#define RD_BUF_INIT {NULL, 0, 0, 0}
int rd__buf_reserve(rd_buf *b, size_t extra);      /* RD_OK or RD_ENOMEM */
void rd__buf_append(rd_buf *b, const void *p, size_t n);
void rd__buf_puts(rd_buf *b, const char *s);
void rd__buf_putc(rd_buf *b, char c);
void rd__buf_printf(rd_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Hand the bytes to the caller (NUL-terminated, free with rd__freemem) and
 * reset the buffer. Returns NULL if the buffer hit an allocation failure. */
char *rd__buf_steal(rd_buf *b, size_t *len);
void rd__buf_free(rd_buf *b);

/* ---- time ------------------------------------------------------------------ */
double rd__now(void);          /* wall clock, seconds since the epoch */
uint64_t rd__mono_ns(void);    /* monotonic clock, nanoseconds */
double rd__thread_cpu_ms(void);/* CPU time of the calling thread, ms */

#endif
