/*
 * ulid.c — time-ordered execution ids (https://github.com/ulid/spec):
 * 48 bits of milliseconds since the epoch, then 80 random bits from
 * libsodium, in Crockford base32. Within one millisecond the random part is
 * incremented, so ids from one process are strictly increasing.
 */
#include "rd.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>
#include <time.h>

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static pthread_mutex_t ulid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_ms;
static unsigned char last_rand[10];

int rd_ulid_new(char out[RD_ULID_LEN + 1]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  unsigned char bytes[16];

  pthread_mutex_lock(&ulid_lock);
  if (ms <= last_ms) {
    /* Same (or earlier: clock stepped back) millisecond: keep the time,
     * increment the 80-bit random part. */
    ms = last_ms;
    for (int i = 9; i >= 0; i--)
      if (++last_rand[i] != 0) break;
  } else {
    last_ms = ms;
    randombytes_buf(last_rand, sizeof last_rand);
    last_rand[0] &= 0x7f; /* room to increment without overflow */
  }
  for (int i = 0; i < 6; i++) bytes[i] = (unsigned char)(ms >> (8 * (5 - i)));
  memcpy(bytes + 6, last_rand, 10);
  pthread_mutex_unlock(&ulid_lock);

  /* 128 bits -> 26 base32 digits, the last one first (the first digit
   * carries the top 3 bits). */
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; i++) hi = (hi << 8) | bytes[i];
  for (int i = 8; i < 16; i++) lo = (lo << 8) | bytes[i];
  for (int i = RD_ULID_LEN - 1; i >= 0; i--) {
    out[i] = B32[lo & 31u];
    lo = (lo >> 5) | (hi << 59);
    hi >>= 5;
  }
  out[RD_ULID_LEN] = '\0';
  return RD_OK;
}

int64_t rd_ulid_time_ms(const char *ulid) {
  if (!ulid || strlen(ulid) != RD_ULID_LEN) return -1;
  uint64_t v = 0;
  for (int i = 0; i < RD_ULID_LEN; i++) {
    const char *p = strchr(B32, ulid[i]);
    if (!p || !*p) return -1;
    if (i < 10) v = (v << 5) | (uint64_t)(p - B32);
  }
  return (int64_t)(v & ((1ull << 48) - 1)) == (int64_t)v ? (int64_t)v : -1;
}
