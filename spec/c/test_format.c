/*
 * test_format.c — the C format checkers (core/format.c) on their own: each
 * format's valid and invalid cases, lengths that stop short of the bytes
 * (no NUL needed, none read past n), embedded NUL and non-ASCII bytes. The
 * comparison with the Lua checkers on generated strings is in
 * spec/validator_spec.lua.
 */
#include "format.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

typedef int (*checker)(const char *, size_t);

/* run f on a heap copy of exactly strlen(s) bytes (ASan sees any read past
 * the end) */
static int run(checker f, const char *s) {
  size_t n = strlen(s);
  char *copy = malloc(n ? n : 1);
  memcpy(copy, s, n);
  int r = f(copy, n);
  free(copy);
  return r;
}

#define YES(f, s) CHECK(run(f, s) == 1)
#define NO(f, s) CHECK(run(f, s) == 0)

TEST(dates_and_times) {
  YES(rd_format_date, "2020-01-31");
  YES(rd_format_date, "2024-02-29");
  YES(rd_format_date, "2000-02-29");
  NO(rd_format_date, "1900-02-29");
  NO(rd_format_date, "2023-02-29");
  NO(rd_format_date, "2021-04-31");
  NO(rd_format_date, "2020-1-01");
  NO(rd_format_date, "2020-01-31 ");
  NO(rd_format_date, "");
  YES(rd_format_time, "23:59:60Z");
  YES(rd_format_time, "00:59:60+01:00");
  YES(rd_format_time, "12:00:00.5z");
  NO(rd_format_time, "22:59:60Z");
  NO(rd_format_time, "12:00:00");
  NO(rd_format_time, "12:00:00.Z");
  NO(rd_format_time, "24:00:00Z");
  NO(rd_format_time, "12:00:00+24:00");
  NO(rd_format_time, "12:00");
  YES(rd_format_date_time, "1998-12-31T23:59:60Z");
  YES(rd_format_date_time, "2020-01-31t10:20:30.5-05:30");
  NO(rd_format_date_time, "2020-01-31 10:20:30Z");
  NO(rd_format_date_time, "2020-01-31T10:20:30");
  NO(rd_format_date_time, "2020-01-31T");
  /* a date whose buffer ends right after the day */
  CHECK(rd_format_date_time("2020-01-31T10:20:30Z", 10) == 0);
  CHECK(rd_format_date("2020-01-31x", 10) == 1);
}

TEST(durations) {
  YES(rd_format_duration, "P1DT2H");
  YES(rd_format_duration, "P2W");
  YES(rd_format_duration, "P1Y2M3DT4H5M6S");
  YES(rd_format_duration, "PT36H");
  NO(rd_format_duration, "P");
  NO(rd_format_duration, "PT");
  NO(rd_format_duration, "P1W2D");
  NO(rd_format_duration, "P1M1Y");
  NO(rd_format_duration, "PT1S2M");
  NO(rd_format_duration, "P1");
  NO(rd_format_duration, "1D");
}

TEST(addresses_and_names) {
  YES(rd_format_ipv4, "192.168.0.1");
  YES(rd_format_ipv4, "0.0.0.0");
  NO(rd_format_ipv4, "256.1.1.1");
  NO(rd_format_ipv4, "01.1.1.1");
  NO(rd_format_ipv4, "1.2.3");
  NO(rd_format_ipv4, "1.2.3.4.");
  YES(rd_format_hostname, "example.com");
  YES(rd_format_hostname, "example.com.");
  YES(rd_format_hostname, "xn--bcher-kva.example");
  NO(rd_format_hostname, "ab--cd.com");
  NO(rd_format_hostname, "-bad.com");
  NO(rd_format_hostname, "bad-.com");
  NO(rd_format_hostname, "a..b");
  NO(rd_format_hostname, ".");
  char label[80];
  memset(label, 'a', 63);
  label[63] = '\0';
  YES(rd_format_hostname, label);
  label[63] = 'a';
  label[64] = '\0';
  NO(rd_format_hostname, label);
  YES(rd_format_email, "a.b@example.com");
  YES(rd_format_email, "\"q x\"@example.com");
  NO(rd_format_email, "a..b@example.com");
  NO(rd_format_email, ".a@b.c");
  NO(rd_format_email, "a@b@c");
  NO(rd_format_email, "a@");
  NO(rd_format_email, "@b.c");
  CHECK(run(rd_format_email, "a@[127.0.0.1]") == 2);   /* the caller decides */
  YES(rd_format_uuid, "2eb8aa08-aa98-11ea-b4aa-73b441d16380");
  NO(rd_format_uuid, "2eb8aa08aa9811eab4aa73b441d16380");
  NO(rd_format_uuid, "2eb8aa08-aa98-11ea-b4aa-73b441d1638g");
  YES(rd_format_uri, "https://example.com/a?b#c");
  YES(rd_format_uri, "urn:isbn:0451450523");
  YES(rd_format_uri, "http://[::1]:80/x");
  YES(rd_format_uri, "s://h%20x");
  NO(rd_format_uri, "/relative");
  NO(rd_format_uri, "http://exa mple.com");
  NO(rd_format_uri, "http://a]b/");
  NO(rd_format_uri, "s://h#f#g");
  NO(rd_format_uri, "s://h%2");
  NO(rd_format_uri, "");
}

/* NUL and non-ASCII bytes are ordinary bytes: never valid here */
TEST(nul_and_non_ascii) {
  CHECK(rd_format_hostname("exa\0mple.com", 12) == 0);
  CHECK(rd_format_uuid("2eb8aa08-aa98-11ea-b4aa-73b441d1638\0", 36) == 0);
  CHECK(rd_format_email("a@b\0.c", 6) == 0);
  CHECK(rd_format_uri("s://\xc3\xa9", 6) == 0);
  CHECK(rd_format_date("2020-01-3\xff", 10) == 0);
  CHECK(rd_format_hostname("example.com", 0) == 0);
  CHECK(rd_format_time("", 0) == 0);
}

int main(void) { RUN_TESTS(); }
