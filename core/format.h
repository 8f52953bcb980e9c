/*
 * format.h — checkers for the hot string formats of JSON Schema's "format"
 * keyword, for the validator (lua/rubberduck/validator/formats.lua calls
 * them through the FFI; its Lua checkers are the reference and the
 * fallback, and a spec compares both on every input it generates).
 *
 * Each function reads `n` bytes of `s` (no NUL needed; NUL bytes are
 * ordinary bytes, hence invalid), allocates nothing, never fails, and
 * returns 1 when the string is valid, 0 when it is not. ASCII only: any
 * byte >= 0x80 makes these formats invalid. The rules (RFC 3339 dates and
 * times with leap days and the 23:59:60 UTC leap second, RFC 3339 appendix
 * A durations, dotted-quad IPv4 without leading zeros, RFC 1123 host names
 * with "--" at 3..4 only in "xn--" labels, RFC 5321 mailboxes, RFC 3986
 * URIs) are those of formats.lua, stated there.
 */
#ifndef RD_FORMAT_H
#define RD_FORMAT_H

#include <stddef.h>

int rd_format_date(const char *s, size_t n);
int rd_format_time(const char *s, size_t n);
int rd_format_date_time(const char *s, size_t n);
int rd_format_duration(const char *s, size_t n);
int rd_format_ipv4(const char *s, size_t n);
int rd_format_hostname(const char *s, size_t n);
int rd_format_uuid(const char *s, size_t n);
int rd_format_uri(const char *s, size_t n);

/* 1 valid, 0 invalid, or 2 when the domain is a literal ("a@[...]"), which
 * the caller decides (formats.lua's IPv4 / IPv6 checks). */
int rd_format_email(const char *s, size_t n);

#endif
