/*
 * format.c — the hot JSON Schema formats in C (see format.h). Each function
 * is a transcription of its Lua checker in lua/rubberduck/validator/
 * formats.lua (0-based here, 1-based there); `at` stands for Lua's
 * string.byte, which gives nil (here -1) past either end.
 */
#include "format.h"

#include <string.h>

static inline int at(const unsigned char *s, size_t n, size_t i) {
  return i < n ? s[i] : -1;
}

/* Character classes, one bit each, in a table indexed by the byte (the
 * scans below test one class per byte: a load and a test). */
enum {
  C_DIGIT = 1,
  C_ALPHA = 2,
  C_HEX = 4,
  C_ATEXT = 8,    /* [A-Za-z0-9!#$%&'*+/=?^_`{|}~.-] */
  C_URIC = 16,    /* [A-Za-z0-9-._~:/?#[]@!$&'()*+,;=%] */
  C_HOST = 32,    /* [A-Za-z0-9-] */
};
static unsigned char cls[256];

__attribute__((constructor)) static void cls_init(void) {
  for (int c = 0; c < 256; c++) {
    int k = 0;
    int digit = c >= '0' && c <= '9';
    int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (digit) k |= C_DIGIT;
    if (alpha) k |= C_ALPHA;
    if (digit || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f')) k |= C_HEX;
    if (digit || alpha) k |= C_ATEXT | C_URIC | C_HOST;
    if (c && strchr("!#$%&'*+/=?^_`{|}~.-", c)) k |= C_ATEXT;
    if (c && strchr("-._~:/?#[]@!$&'()*+,;=%", c)) k |= C_URIC;
    if (c == '-') k |= C_HOST;
    cls[c] = (unsigned char)k;
  }
}

/* c is a byte, or -1 (past the end): never in a class */
static inline int is(int c, int k) { return c >= 0 && (cls[c] & k); }
static inline int is_digit(int c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(int c) { return is(c, C_ALPHA); }
static inline int is_alnum(int c) { return is(c, C_DIGIT | C_ALPHA); }
static inline int is_hex(int c) { return is(c, C_HEX); }

/* the value of the two decimal digits at i, i + 1, or -1 */
static int dig2(const unsigned char *s, size_t n, size_t i) {
  int a = at(s, n, i), b = at(s, n, i + 1);
  if (!is_digit(a) || !is_digit(b)) return -1;
  return (a - '0') * 10 + (b - '0');
}

static int leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* full-date at s[i .. i + 9] */
static int date_at(const unsigned char *s, size_t n, size_t i) {
  static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int y1 = dig2(s, n, i), y2 = dig2(s, n, i + 2);
  if (y1 < 0 || y2 < 0 || at(s, n, i + 4) != '-' || at(s, n, i + 7) != '-') return 0;
  int m = dig2(s, n, i + 5), d = dig2(s, n, i + 8);
  if (m < 1 || m > 12 || d < 1) return 0;
  if (d <= 28) return 1;
  int max = mdays[m - 1];
  if (m == 2 && leap(y1 * 100 + y2)) max = 29;
  return d <= max;
}

/* full-time from s[i] to the end (leap second only at 23:59:60 UTC) */
static int time_at(const unsigned char *s, size_t n, size_t i) {
  int h = dig2(s, n, i), mi = dig2(s, n, i + 3), se = dig2(s, n, i + 6);
  if (h < 0 || mi < 0 || se < 0 || at(s, n, i + 2) != ':' || at(s, n, i + 5) != ':') return 0;
  size_t j = i + 8;
  int c = at(s, n, j);
  if (c == '.') {                       /* fraction: at least one digit */
    j++;
    c = at(s, n, j);
    if (!is_digit(c)) return 0;
    do {
      j++;
      c = at(s, n, j);
    } while (is_digit(c));
  }
  int oh = 0, om = 0;
  if (c == 'Z' || c == 'z') {
    if (j + 1 != n) return 0;
  } else if (c == '+' || c == '-') {
    if (j + 6 != n || at(s, n, j + 3) != ':') return 0;
    int a = dig2(s, n, j + 1), b = dig2(s, n, j + 4);
    if (a < 0 || b < 0 || a > 23 || b > 59) return 0;
    if (c == '+') {
      oh = -a;
      om = -b;
    } else {
      oh = a;
      om = b;
    }
  } else {
    return 0;
  }
  if (h > 23 || mi > 59 || se > 60) return 0;
  if (se == 60) {
    int total = ((h * 60 + mi + oh * 60 + om) % 1440 + 1440) % 1440;
    if (total != 23 * 60 + 59) return 0;
  }
  return 1;
}

int rd_format_date(const char *s, size_t n) {
  return n == 10 && date_at((const unsigned char *)s, n, 0);
}

int rd_format_time(const char *s, size_t n) {
  return time_at((const unsigned char *)s, n, 0);
}

int rd_format_date_time(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  int t = at(u, n, 10);
  return (t == 'T' || t == 't') && date_at(u, n, 0) && time_at(u, n, 11);
}

/* PnW, or PnYnMnD with an optional TnHnMnS part, units in order, at least
 * one */
int rd_format_duration(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  if (n < 2 || u[0] != 'P') return 0;
  size_t i = 1;
  int c = u[1];
  if (is_digit(c) && u[n - 1] == 'W') {
    size_t j = 2;
    while (j < n - 1 && is_digit(u[j])) j++;
    if (j == n - 1) return 1;
  }
  int time = 0, last = 0;
  while (i < n) {
    c = u[i];
    if (c == 'T' && !time) {
      if (i == n - 1) return 0;
      time = 1;
      last = 0;
      i++;
      c = u[i];
    }
    if (!is_digit(c)) return 0;
    do {
      i++;
      c = at(u, n, i);
    } while (is_digit(c));
    int idx = 0;
    if (!time) idx = c == 'Y' ? 1 : c == 'M' ? 2 : c == 'D' ? 3 : 0;
    else idx = c == 'H' ? 1 : c == 'M' ? 2 : c == 'S' ? 3 : 0;
    if (!idx || idx <= last) return 0;
    last = idx;
    i++;
  }
  return 1;
}

/* dotted quad, no leading zeros, each part <= 255; s[i .. j) */
static int ipv4_in(const unsigned char *s, size_t i, size_t j) {
  int parts = 0;
  for (;;) {
    if (i >= j || !is_digit(s[i])) return 0;
    int v = s[i] - '0', len = 1;
    i++;
    while (i < j && is_digit(s[i])) {
      if (len == 3 || v == 0) return 0;     /* too long, or a leading zero */
      v = v * 10 + s[i] - '0';
      len++;
      i++;
    }
    if (v > 255) return 0;
    parts++;
    if (i >= j) return parts == 4;
    if (s[i] != '.' || parts == 4) return 0;
    i++;
  }
}

int rd_format_ipv4(const char *s, size_t n) {
  return ipv4_in((const unsigned char *)s, 0, n);
}

/* dot-separated labels of [A-Za-z0-9-] of 1..63 characters, not starting
 * or ending with "-", "--" at 3..4 only in "xn--" labels, at most 253
 * characters in all (a final dot allowed); s[i .. j) */
static int hostname_in(const unsigned char *s, size_t i, size_t j) {
  if (j <= i || j - i > 253) return 0;
  if (s[j - 1] == '.') j--;                 /* a final dot */
  if (j <= i) return 0;
  size_t start = i;
  for (;; i++) {
    if (i >= j || s[i] == '.') {
      size_t len = i - start;
      if (len == 0 || len > 63 || s[i - 1] == '-') return 0;
      if (len >= 4 && s[start + 2] == '-' && s[start + 3] == '-') {
        int a = s[start], b = s[start + 1];
        if (!((a == 'x' || a == 'X') && (b == 'n' || b == 'N'))) return 0;
      }
      if (i >= j) return 1;
      start = i + 1;
    } else if (!(cls[s[i]] & C_HOST) || (s[i] == '-' && i == start)) {
      return 0;
    }
  }
}

int rd_format_hostname(const char *s, size_t n) {
  return hostname_in((const unsigned char *)s, 0, n);
}

int rd_format_email(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t a = n;                             /* the '@' */
  for (size_t i = 0; i < n; i++) {
    if (u[i] == '@') {
      if (a != n) return 0;
      a = i;
    }
  }
  if (a == n || a == 0 || a == n - 1) return 0;
  if (u[0] == '"' && a > 1 && u[a - 1] == '"') {
    /* a quoted local part */
  } else {
    if (u[0] == '.' || u[a - 1] == '.') return 0;
    int prev = 0;
    for (size_t i = 0; i < a; i++) {
      int c = u[i];
      if (!(cls[c] & C_ATEXT) || (c == '.' && prev == '.')) return 0;
      prev = c;
    }
  }
  if (u[a + 1] == '[' && u[n - 1] == ']') return 2;   /* a domain literal */
  return hostname_in(u, a + 1, n);
}

int rd_format_uuid(const char *s, size_t n) {
  if (n != 36) return 0;
  for (size_t i = 0; i < 36; i++) {
    int c = (unsigned char)s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return 0;
    } else if (!is_hex(c)) {
      return 0;
    }
  }
  return 1;
}

/* scheme ":" then the characters of RFC 3986, "%" only before two hex
 * digits, at most one "#"; after "//", the host (after the authority's
 * first "@") holds brackets only as a leading "[...]" */
int rd_format_uri(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  if (n == 0 || !is_alpha(u[0])) return 0;
  size_t colon = 1;
  for (;; colon++) {
    if (colon >= n) return 0;
    int c = u[colon];
    if (c == ':') break;
    if (!(is_alnum(c) || c == '+' || c == '.' || c == '-')) return 0;
  }
  int hash = 0;
  for (size_t i = 0; i < n; i++) {
    int c = u[i];
    if (!(cls[c] & C_URIC)) return 0;
    if (c == '%') {
      if (!is_hex(at(u, n, i + 1)) || !is_hex(at(u, n, i + 2))) return 0;
    } else if (c == '#') {
      if (hash) return 0;
      hash = 1;
    }
  }
  if (at(u, n, colon + 1) != '/' || at(u, n, colon + 2) != '/') return 1;
  size_t a = colon + 3, e = a, h;
  int seen_at = 0;
  h = a;
  for (; e < n; e++) {
    int c = u[e];
    if (c == '/' || c == '?' || c == '#') break;
    if (c == '@' && !seen_at) {
      seen_at = 1;
      h = e + 1;
    }
  }
  int open = 0, close = 0;
  for (size_t i = h; i < e; i++) {
    if (u[i] == '[') open = 1;
    else if (u[i] == ']') close = 1;
  }
  if (open) {
    if (h >= e || u[h] != '[') return 0;
    size_t i = h + 1;
    while (i < e && u[i] != ']') i++;
    if (i >= e) return 0;
  } else if (close) {
    return 0;
  }
  return 1;
}
