/*
 * test_json.c — the JSON codec (core/json.c) from C: round trips, the
 * [] / {} distinction, exact numbers, every class of malformed input with
 * its position, UTF-8, depth limits, encode errors with their pointers,
 * canonical and pretty output, large input, allocation failures (the rd__
 * seam and the Lua allocator) and stack balance.
 */
#include "json.h"
#include "testlib.h"

#include <lauxlib.h>
#include <lualib.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  rd__json_init(L);
  rd__luaopen_json(L);
  lua_setglobal(L, "json");
  return L;
}

static char result[8192];

/* Decode `text`; on success encode the value back (with opts) into result;
 * on failure copy the error message. Returns the rc of the failing step. */
static int roundtrip_n(lua_State *L, const char *text, size_t len,
                       const rd_json_opts *o) {
  rd_error err;
  int top = lua_gettop(L);
  int rc = rd__json_decode(L, text, len, o, &err);
  if (rc != RD_OK) {
    CHECK(lua_gettop(L) == top);
    snprintf(result, sizeof result, "%s", err.message);
    return rc;
  }
  CHECK(lua_gettop(L) == top + 1);
  rd_buf b = RD_BUF_INIT;
  rc = rd__json_encode(L, -1, &b, o, &err);
  CHECK(lua_gettop(L) == top + 1);
  if (rc == RD_OK) snprintf(result, sizeof result, "%s", b.data ? b.data : "");
  else snprintf(result, sizeof result, "%s", err.message);
  rd__buf_free(&b);
  lua_settop(L, top);
  return rc;
}

static const char *rt(lua_State *L, const char *text) {
  roundtrip_n(L, text, strlen(text), NULL);
  return result;
}

static const char *rt_opts(lua_State *L, const char *text, const rd_json_opts *o) {
  roundtrip_n(L, text, strlen(text), o);
  return result;
}

/* Decode error message of `text` (or "OK"). */
static const char *dec_err_n(lua_State *L, const char *text, size_t len,
                             const rd_json_opts *o) {
  rd_error err;
  int top = lua_gettop(L);
  int rc = rd__json_decode(L, text, len, o, &err);
  if (rc == RD_OK) {
    lua_settop(L, top);
    return "OK";
  }
  CHECK(rc == RD_EJSON);
  CHECK(err.code == RD_EJSON);
  CHECK(lua_gettop(L) == top);
  snprintf(result, sizeof result, "%s", err.message);
  return result;
}

static const char *dec_err(lua_State *L, const char *text) {
  return dec_err_n(L, text, strlen(text), NULL);
}

/* Evaluate the Lua expression `expr` and encode its value. */
static const char *enc_expr(lua_State *L, const char *expr, const rd_json_opts *o,
                            int *rc_out) {
  char chunk[4096];
  rd_error err;
  snprintf(chunk, sizeof chunk, "return %s", expr);
  int top = lua_gettop(L);
  if (luaL_dostring(L, chunk) != 0) {
    snprintf(result, sizeof result, "LUA ERROR %s", lua_tostring(L, -1));
    lua_settop(L, top);
    if (rc_out) *rc_out = -1;
    return result;
  }
  lua_settop(L, top + 1);
  rd_buf b = RD_BUF_INIT;
  int rc = rd__json_encode(L, top + 1, &b, o, &err);
  CHECK(lua_gettop(L) == top + 1);
  if (rc == RD_OK) {
    snprintf(result, sizeof result, "%s", b.data ? b.data : "");
  } else {
    CHECK(b.len == 0);
    snprintf(result, sizeof result, "%s", err.message);
  }
  rd__buf_free(&b);
  lua_settop(L, top);
  if (rc_out) *rc_out = rc;
  return result;
}

static const char *enc(lua_State *L, const char *expr) {
  return enc_expr(L, expr, NULL, NULL);
}

#define CHECK_HAS(hay, needle)                                              \
  do {                                                                      \
    const char *h_ = (hay);                                                 \
    if (!strstr(h_, (needle))) {                                            \
      fprintf(stderr, "%s:%d: expected \"%s\" in \"%s\"\n", __FILE__,       \
              __LINE__, (needle), h_);                                      \
      CHECK(0);                                                             \
    }                                                                       \
  } while (0)

/* ---- round trips --------------------------------------------------------- */

TEST(roundtrip_every_type) {
  lua_State *L = new_state();
  CHECK_STR(rt(L, "null"), "null");
  CHECK_STR(rt(L, "true"), "true");
  CHECK_STR(rt(L, "false"), "false");
  CHECK_STR(rt(L, "0"), "0");
  CHECK_STR(rt(L, "-17"), "-17");
  CHECK_STR(rt(L, "1.5"), "1.5");
  CHECK_STR(rt(L, "\"str\""), "\"str\"");
  CHECK_STR(rt(L, "[]"), "[]");
  CHECK_STR(rt(L, "{}"), "{}");
  CHECK_STR(rt(L, " [1, \"a\", null, true, false, {\"k\": [ ]}] "),
            "[1,\"a\",null,true,false,{\"k\":[]}]");
  CHECK_STR(rt(L, "{\"a\":{\"b\":{\"c\":[[],[{}]]}}}"),
            "{\"a\":{\"b\":{\"c\":[[],[{}]]}}}");
  CHECK_STR(rt(L, "\t\r\n 42 \n"), "42");
  lua_close(L);
}

TEST(empty_array_and_object_stay_apart) {
  lua_State *L = new_state();
  rd_json_opts o = {0, 1, 0, 0, 0};
  CHECK_STR(rt_opts(L, "{\"a\":[],\"b\":{}}", &o), "{\"a\":[],\"b\":{}}");
  CHECK_STR(rt_opts(L, "[[],{},[[]],[{}],{\"x\":{\"y\":[]}}]", &o),
            "[[],{},[[]],[{}],{\"x\":{\"y\":[]}}]");
  lua_close(L);
}

TEST(decoded_shapes) {
  lua_State *L = new_state();
  rd_error err;
  const char *t = "{\"arr\":[1,null],\"obj\":{}}";
  CHECK(rd__json_decode(L, t, strlen(t), NULL, &err) == RD_OK);
  CHECK(err.code == RD_OK);
  lua_getfield(L, -1, "arr");
  CHECK(lua_getmetatable(L, -1));
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  CHECK(lua_rawequal(L, -1, -2));
  lua_getfield(L, -1, "__jsontype");
  CHECK_STR(lua_tostring(L, -1), "array");
  lua_pop(L, 3);
  lua_rawgeti(L, -1, 2);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA);
  CHECK(lua_touserdata(L, -1) == RD_JSON_NULL);
  lua_pop(L, 2);
  lua_getfield(L, -1, "obj");
  CHECK(lua_type(L, -1) == LUA_TTABLE);
  CHECK(!lua_getmetatable(L, -1));
  lua_pop(L, 1);
  CHECK(!lua_getmetatable(L, -1));     /* objects are plain */
  luaL_getmetatable(L, RD_JSON_OBJECT_MT);
  lua_getfield(L, -1, "__jsontype");
  CHECK_STR(lua_tostring(L, -1), "object");
  lua_settop(L, 0);
  lua_close(L);
}

TEST(strings_and_escapes) {
  lua_State *L = new_state();
  rd_error err;
  const char *t = "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\ud83d\\ude00\\u0000z\"";
  CHECK(rd__json_decode(L, t, strlen(t), NULL, &err) == RD_OK);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  const char want[] = "a\"b\\c/d\b\f\n\r\tA\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\0z";
  CHECK(len == sizeof want - 1);
  CHECK(memcmp(s, want, len) == 0);
  rd_buf b = RD_BUF_INIT;
  CHECK(rd__json_encode(L, -1, &b, NULL, &err) == RD_OK);
  CHECK_STR(b.data,
            "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\tA\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\u0000z\"");
  rd__buf_free(&b);
  lua_pop(L, 1);
  /* other controls as \u00XX, U+2028/2029 escaped, DEL kept */
  CHECK_STR(enc(L, "'\\1\\31\\127 \\226\\128\\168\\226\\128\\169'"),
            "\"\\u0001\\u001f\x7f \\u2028\\u2029\"");
  CHECK_STR(rt(L, "\"\\u2028\""), "\"\\u2028\"");
  lua_close(L);
}

TEST(duplicate_keys_last_wins) {
  lua_State *L = new_state();
  CHECK_STR(rt(L, "{\"a\":1,\"a\":2}"), "{\"a\":2}");
  CHECK_STR(rt(L, "{\"a\":[1],\"a\":{}}"), "{\"a\":{}}");
  lua_close(L);
}

/* ---- numbers ------------------------------------------------------------- */

static double dec_num(lua_State *L, const char *t) {
  rd_error err;
  double v = NAN;
  if (rd__json_decode(L, t, strlen(t), NULL, &err) == RD_OK) {
    v = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

static const char *enc_num(lua_State *L, double x) {
  rd_error err;
  rd_buf b = RD_BUF_INIT;
  lua_pushnumber(L, x);
  if (rd__json_encode(L, -1, &b, NULL, &err) == RD_OK)
    snprintf(result, sizeof result, "%s", b.data);
  else
    snprintf(result, sizeof result, "%s", err.message);
  lua_pop(L, 1);
  rd__buf_free(&b);
  return result;
}

TEST(integers_exact_to_2_53) {
  lua_State *L = new_state();
  CHECK_STR(enc_num(L, 9007199254740992.0), "9007199254740992");
  CHECK_STR(enc_num(L, -9007199254740992.0), "-9007199254740992");
  CHECK_STR(enc_num(L, 9007199254740991.0), "9007199254740991");
  CHECK_STR(enc_num(L, 1e15), "1000000000000000");
  CHECK_STR(enc_num(L, 123456789012345.0), "123456789012345");
  CHECK_STR(enc_num(L, -0.0), "0");
  CHECK_STR(enc_num(L, 9007199254740994.0), "9007199254740994");
  CHECK_STR(enc_num(L, 1e20), "1e+20");
  CHECK(dec_num(L, "9007199254740992") == 9007199254740992.0);
  CHECK(dec_num(L, "-9007199254740992") == -9007199254740992.0);
  CHECK(dec_num(L, "9007199254740991") == 9007199254740991.0);
  CHECK(dec_num(L, "9007199254740993") == 9007199254740992.0); /* rounds */
  CHECK(dec_num(L, "18446744073709551615") == 18446744073709551616.0);
  CHECK(dec_num(L, "123456789012345678901234567890") == 1.2345678901234568e29);
  CHECK_STR(rt(L, "[9007199254740992,-9007199254740992,9007199254740991]"),
            "[9007199254740992,-9007199254740992,9007199254740991]");
  double nz = dec_num(L, "-0");
  CHECK(nz == 0 && signbit(nz));
  lua_close(L);
}

TEST(doubles_roundtrip) {
  lua_State *L = new_state();
  const double xs[] = {0.1, 1e300, 5e-324, 123.456, -2.5e-8, 1.7976931348623157e308,
                       2.2250738585072014e-308, 0.30000000000000004, 1.0 / 3, 1e21,
                       -1e-7, 4.35, 100.0 / 7};
  for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
    char text[64];
    int tn = snprintf(text, sizeof text, "%s", enc_num(L, xs[i]));
    CHECK(tn > 0 && (size_t)tn < sizeof text);
    double back = dec_num(L, text);
    if (back != xs[i]) fprintf(stderr, "  %.17g -> %s -> %.17g\n", xs[i], text, back);
    CHECK(back == xs[i]);
  }
  CHECK_STR(enc_num(L, 0.1), "0.1");
  CHECK_STR(enc_num(L, 1e300), "1e+300");
  CHECK_STR(enc_num(L, 123.456), "123.456");
  CHECK(dec_num(L, "5e-324") == 5e-324);
  CHECK(dec_num(L, "0.1") == 0.1);
  CHECK(dec_num(L, "1E2") == 100);
  CHECK(dec_num(L, "1e+2") == 100);
  CHECK(dec_num(L, "-1.25e-2") == -0.0125);
  CHECK(dec_num(L, "0.000001") == 0.000001);
  CHECK(dec_num(L, "1e-400") == 0);            /* underflow is not an error */
  lua_close(L);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* The fast paths must agree with strtod on every input. */
TEST(numbers_agree_with_strtod) {
  lua_State *L = new_state();
  char text[80];
  int bad = 0;
  for (int i = 0; i < 200000 && bad < 5; i++) {
    uint64_t r = rng();
    int digits = 1 + (int)(r % 20), point = (int)((r >> 8) % (unsigned)(digits + 1));
    int exp = (int)((r >> 16) % 80) - 40, o = 0;
    if (r >> 63) text[o++] = '-';
    for (int k = 0; k < digits; k++) {
      if (k == point && k > 0) text[o++] = '.';
      int dgt = (int)(rng() % 10);
      if (k == 0 && dgt == 0) dgt = 1 + (int)(rng() % 9);
      text[o++] = (char)('0' + dgt);
    }
    if ((r >> 24) & 1) o += snprintf(text + o, sizeof text - (size_t)o, "e%d", exp);
    text[o] = '\0';
    double want = strtod(text, NULL), got = dec_num(L, text);
    if (got != want) {
      fprintf(stderr, "  %s: got %.17g want %.17g\n", text, got, want);
      bad++;
    }
  }
  CHECK(bad == 0);
  /* random doubles survive encode -> decode */
  bad = 0;
  for (int i = 0; i < 100000 && bad < 5; i++) {
    uint64_t bits = rng();
    double x;
    memcpy(&x, &bits, sizeof x);
    if (!isfinite(x)) continue;
    char t[64];
    int tn = snprintf(t, sizeof t, "%s", enc_num(L, x));
    CHECK(tn > 0 && (size_t)tn < sizeof t);
    double back = dec_num(L, t);
    if (back != x) {
      fprintf(stderr, "  %.17g -> %s -> %.17g\n", x, t, back);
      bad++;
    }
  }
  CHECK(bad == 0);
  lua_close(L);
}

/* The formatter's rule, written the slow way: integers in full, else the
 * first of %.15g, %.16g, %.17g that reads back the same. */
static void ref_format(char *buf, size_t n, double x) {
  if (floor(x) == x && fabs(x) <= 9007199254740992.0) {
    snprintf(buf, n, "%.0f", x == 0 ? 0.0 : x);
    return;
  }
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, n, "%.*g", prec, x);
    if (strtod(buf, NULL) == x) return;
  }
}

TEST(number_text_follows_the_rule) {
  lua_State *L = new_state();
  static const double p10[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8,
                               1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
  char want[64];
  int bad = 0;
  for (int i = 0; i < 300000 && bad < 5; i++) {
    double x;
    uint64_t r = rng();
    if (i % 3 == 0) {                 /* few decimals: the fast path */
      int digits = 1 + (int)(r % 15), k = (int)((r >> 8) % 16);
      uint64_t m = rng() % (uint64_t)p10[digits];
      x = (double)m / p10[k];
      if (r >> 63) x = -x;
    } else if (i % 3 == 1) {          /* any double */
      uint64_t bits = rng();
      memcpy(&x, &bits, sizeof x);
      if (!isfinite(x)) continue;
    } else {                          /* ratios */
      x = (double)(rng() % 100000) / (double)(1 + rng() % 1000);
    }
    ref_format(want, sizeof want, x);
    const char *got = enc_num(L, x);
    if (strcmp(got, want) != 0) {
      fprintf(stderr, "  %.17g: got %s want %s\n", x, got, want);
      bad++;
    }
  }
  CHECK(bad == 0);
  CHECK_STR(enc_num(L, 0.0001), "0.0001");
  CHECK_STR(enc_num(L, 0.00001), "1e-05");
  CHECK_STR(enc_num(L, -0.5), "-0.5");
  CHECK_STR(enc_num(L, 999999999999999.9), "999999999999999.9");
  lua_close(L);
}

/* ---- malformed input ------------------------------------------------------- */

TEST(malformed_input_named_with_position) {
  lua_State *L = new_state();
  CHECK_STR(dec_err(L, ""),
            "invalid JSON at line 1, column 1 (byte 0): expected a value, got end of input");
  CHECK_HAS(dec_err(L, "   \n "), "line 2, column 2 (byte 5): expected a value, got end of input");
  CHECK_STR(dec_err(L, "[1,2,]"),
            "invalid JSON at line 1, column 6 (byte 5): expected a value after ',' "
            "(no trailing commas), got ']'");
  CHECK_HAS(dec_err(L, "{\"a\":1,}"), "column 8 (byte 7): expected a string key after ','");
  CHECK_HAS(dec_err(L, "[1 // no\n]"), "column 4 (byte 3): expected ',' or ']' after an "
                                       "array element, got '/' (comments are not allowed)");
  CHECK_HAS(dec_err(L, "/* c */ 1"), "byte 0): expected a value, got '/' (comments");
  CHECK_HAS(dec_err(L, "[01]"), "column 2 (byte 1): leading zeros are not allowed");
  CHECK_HAS(dec_err(L, "-01"), "byte 0): leading zeros are not allowed");
  CHECK_HAS(dec_err(L, "NaN"), "byte 0): expected a value, got 'N' (NaN and Infinity");
  CHECK_HAS(dec_err(L, "[Infinity]"), "byte 1): expected a value, got 'I' (NaN and Infinity");
  CHECK_HAS(dec_err(L, "-Infinity"), "byte 1): expected a digit after '-', got 'I' (NaN");
  CHECK_HAS(dec_err(L, "{'a':1}"), "byte 1): expected a string key or '}', got ''' "
                                   "(strings take double quotes)");
  CHECK_HAS(dec_err(L, "'a'"), "expected a value, got ''' (strings take double quotes)");
  CHECK_HAS(dec_err(L, "\"a\nb\""), "column 3 (byte 2): unescaped control character U+000A");
  CHECK_HAS(dec_err(L, "\"\x01\""), "byte 1): unescaped control character U+0001");
  CHECK_HAS(dec_err(L, "\"\\x\""), "byte 1): invalid escape '\\x' in string");
  CHECK_HAS(dec_err(L, "\"\\'\""), "invalid escape '\\'' in string");
  CHECK_HAS(dec_err(L, "\"\\u12G4\""), "byte 1): expected 4 hex digits after \\u");
  CHECK_HAS(dec_err(L, "\"\\u12\""), "expected 4 hex digits after \\u");
  CHECK_HAS(dec_err(L, "\"\\ud800\""), "byte 1): lone surrogate \\uD800");
  CHECK_HAS(dec_err(L, "\"\\ud800\\u0041\""), "lone surrogate \\uD800");
  CHECK_HAS(dec_err(L, "\"\\ud800\\ud800\""), "lone surrogate \\uD800");
  CHECK_HAS(dec_err(L, "\"x\\udc00\""), "byte 2): lone surrogate \\uDC00");
  CHECK_HAS(dec_err(L, "\"abc"), "byte 0): unterminated string");
  CHECK_HAS(dec_err(L, "\"abc\\"), "unterminated escape");
  CHECK_HAS(dec_err(L, "1e400"), "byte 0): number out of range");
  CHECK_HAS(dec_err(L, "-1e400"), "number out of range");
  CHECK_HAS(dec_err(L, "[1e99999999999]"), "byte 1): number out of range");
  CHECK_HAS(dec_err(L, "-"), "expected a digit after '-', got end of input");
  CHECK_HAS(dec_err(L, "1."), "expected a digit after the decimal point");
  CHECK_HAS(dec_err(L, "1.e3"), "expected a digit after the decimal point, got 'e'");
  CHECK_HAS(dec_err(L, "1e"), "expected a digit in the exponent");
  CHECK_HAS(dec_err(L, "1e+"), "expected a digit in the exponent");
  CHECK_HAS(dec_err(L, ".5"), "expected a value, got '.'");
  CHECK_HAS(dec_err(L, "+1"), "expected a value, got '+'");
  CHECK_HAS(dec_err(L, "0x10"), "byte 1): expected the end of input after the value, got 'x'");
  CHECK_HAS(dec_err(L, "tru"), "expected a value, got 't'");
  CHECK_HAS(dec_err(L, "True"), "expected a value, got 'T'");
  CHECK_HAS(dec_err(L, "nul"), "expected a value");
  CHECK_HAS(dec_err(L, "[1 2]"), "byte 3): expected ',' or ']' after an array element, got '2'");
  CHECK_HAS(dec_err(L, "[1"), "expected ',' or ']' after an array element, got end of input");
  CHECK_HAS(dec_err(L, "{\"a\" 1}"), "byte 5): expected ':' after an object key, got '1'");
  CHECK_HAS(dec_err(L, "{\"a\":1 \"b\":2}"), "expected ',' or '}' after an object member");
  CHECK_HAS(dec_err(L, "{1:2}"), "expected a string key or '}', got '1'");
  CHECK_HAS(dec_err(L, "{\"a\":}"), "byte 5): expected a value, got '}'");
  CHECK_HAS(dec_err(L, "[1,{\"a\":]}"), "expected a value, got ']'");
  CHECK_HAS(dec_err(L, "[,1]"), "expected a value, got ','");
  CHECK_HAS(dec_err(L, "]"), "expected a value, got ']'");
  CHECK_HAS(dec_err(L, "[] []"), "byte 3): expected the end of input after the value, got '['");
  CHECK_HAS(dec_err(L, "1 2"), "expected the end of input after the value");
  CHECK_HAS(dec_err(L, "\xef\xbb\xbf{}"), "byte 0): expected a value, got byte 0xEF");
  CHECK_HAS(dec_err(L, "[\v1]"), "got byte 0x0B");
  CHECK_HAS(dec_err_n(L, "[1\0]", 4, NULL), "byte 2): expected ',' or ']' after an array "
                                            "element, got byte 0x00");
  /* line and column counting (columns in characters) */
  CHECK_HAS(dec_err(L, "{\n  \"a\": 1,\n  \"b\": tru\n}"),
            "line 3, column 8 (byte 19): expected a value, got 't'");
  CHECK_HAS(dec_err(L, "[\"\xc3\xa9\xc3\xa9\", x]"), "line 1, column 8 (byte 9)");
  lua_close(L);
}

/* ---- UTF-8 ------------------------------------------------------------------ */

TEST(utf8_validation) {
  size_t bad = 99;
  CHECK(rd__utf8_valid("", 0, &bad));
  CHECK(rd__utf8_valid("plain ascii text, longer than eight", 35, &bad));
  static const char good[] = "\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80"
                             "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf";
  CHECK(rd__utf8_valid(good, sizeof good - 1, &bad));
  struct { const char *s; size_t len, at; } cases[] = {
    {"\xc0\x80", 2, 0},             /* overlong NUL */
    {"ab\xc1\xbf", 4, 2},           /* overlong */
    {"\xe0\x80\xaf", 3, 0},         /* overlong 3-byte */
    {"\xf0\x80\x80\xaf", 4, 0},     /* overlong 4-byte */
    {"abc\xed\xa0\x80", 6, 3},      /* surrogate D800 */
    {"\xed\xbf\xbf", 3, 0},         /* surrogate DFFF */
    {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
    {"\xf5\x80\x80\x80", 4, 0},     /* F5+ */
    {"\xff", 1, 0},
    {"abcdefghij\x80", 11, 10},     /* stray continuation after an ASCII run */
    {"\xe2\x82", 2, 0},             /* truncated */
    {"x\xf0\x9f\x98", 4, 1},        /* truncated 4-byte */
    {"\xc3", 1, 0},
    {"\xc3\x28", 2, 0},             /* bad continuation */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bad = 99;
    CHECK(!rd__utf8_valid(cases[i].s, cases[i].len, &bad));
    if (bad != cases[i].at) fprintf(stderr, "  case %zu: bad_at %zu\n", i, bad);
    CHECK(bad == cases[i].at);
  }
  CHECK(!rd__utf8_valid("\xff", 1, NULL));
}

TEST(invalid_utf8_refused_both_ways) {
  lua_State *L = new_state();
  CHECK_HAS(dec_err(L, "\"\xc0\x80\""), "byte 1): invalid UTF-8 in string");
  CHECK_HAS(dec_err(L, "[\"ok\",\"x\xed\xa0\x80\"]"), "byte 8): invalid UTF-8 in string");
  CHECK_HAS(dec_err(L, "\"\xf5\x80\x80\x80\""), "invalid UTF-8 in string");
  CHECK_HAS(dec_err(L, "\"\xe2\x82\""), "invalid UTF-8 in string");
  CHECK_HAS(dec_err(L, "\"\xf0\x9f\x98"), "invalid UTF-8 in string");
  CHECK_HAS(dec_err(L, "{\"k\xff\":1}"), "byte 3): invalid UTF-8 in string");
  CHECK_STR(rt(L, "\"\xe2\x82\xac \xf0\x9f\x98\x80\""), "\"\xe2\x82\xac \xf0\x9f\x98\x80\"");

  CHECK_STR(enc(L, "{a = {1, 'ok', 'x\\192\\128'}}"),
            "cannot encode value at /a/2: invalid UTF-8 in string at byte 1");
  CHECK_STR(enc(L, "'\\237\\160\\128'"),
            "cannot encode value at the root: invalid UTF-8 in string at byte 0");
  CHECK_HAS(enc(L, "{'\\245\\128\\128\\128'}"), "/0: invalid UTF-8 in string at byte 0");
  CHECK_HAS(enc(L, "{'abc\\226\\130'}"), "/0: invalid UTF-8 in string at byte 3");
  CHECK_STR(enc(L, "{x = {['k\\255'] = 1}}"),
            "cannot encode value at /x: invalid UTF-8 in object key at byte 1");
  lua_close(L);
}

/* ---- depth ---------------------------------------------------------------------- */

static char *nested(int n, const char *open, const char *close) {
  size_t lo = strlen(open), lc = strlen(close);
  char *s = malloc((size_t)n * (lo + lc) + 1), *p = s;
  for (int i = 0; i < n; i++, p += lo) memcpy(p, open, lo);
  for (int i = 0; i < n; i++, p += lc) memcpy(p, close, lc);
  *p = '\0';
  return s;
}

static char *nested_mid(int n, const char *open, const char *mid, const char *close) {
  size_t lo = strlen(open), lm = strlen(mid), lc = strlen(close);
  char *s = malloc((size_t)n * (lo + lc) + lm + 1), *p = s;
  for (int i = 0; i < n; i++, p += lo) memcpy(p, open, lo);
  memcpy(p, mid, lm);
  p += lm;
  for (int i = 0; i < n; i++, p += lc) memcpy(p, close, lc);
  *p = '\0';
  return s;
}

TEST(depth_limit) {
  lua_State *L = new_state();
  char *ok = nested(128, "[", "]"), *over = nested(129, "[", "]");
  CHECK_STR(dec_err(L, ok), "OK");
  CHECK_STR(rt(L, ok), ok);
  CHECK_STR(dec_err(L, over),
            "invalid JSON at line 1, column 129 (byte 128): nesting deeper than 128 levels");
  free(ok);
  free(over);
  ok = nested(64, "{\"a\":[", "]}");           /* 128 levels */
  over = nested(1, "[", "]");
  free(over);
  over = malloc(strlen(ok) + 3);
  sprintf(over, "[%s]", ok);
  CHECK_STR(dec_err(L, ok), "OK");
  CHECK_STR(rt(L, ok), ok);
  CHECK_HAS(dec_err(L, over), "nesting deeper than 128 levels");
  free(ok);
  free(over);

  /* 100000 levels: refused cleanly, no C stack involved */
  char *deep = malloc(100001);
  memset(deep, '[', 100000);
  deep[100000] = '\0';
  CHECK_HAS(dec_err(L, deep), "(byte 128): nesting deeper than 128 levels");
  rd_json_opts big = {100000, 0, 0, 0, 0};       /* clamped to 1000 */
  CHECK_HAS(dec_err_n(L, deep, 100000, &big), "(byte 1000): nesting deeper than 1000 levels");
  free(deep);

  /* a custom limit, both ways */
  rd_json_opts o = {3, 0, 0, 0, 0};
  CHECK_STR(dec_err_n(L, "[[[1]]]", 7, &o), "OK");
  CHECK_HAS(dec_err_n(L, "[[[[1]]]]", 9, &o), "nesting deeper than 3 levels");
  CHECK_STR(dec_err_n(L, "[{\"a\":[]}]", 10, &o), "OK");
  CHECK_STR(enc_expr(L, "{{{1}}}", &o, NULL), "[[[1]]]");
  CHECK_STR(enc_expr(L, "{{{{1}}}}", &o, NULL),
            "cannot encode value at /0/0/0: table nested deeper than 3 levels");

  /* a deep but allowed value works through the whole Lua stack */
  rd_json_opts deep_ok = {1000, 0, 0, 0, 0};
  char *d1000 = nested(1000, "{\"k\":[", "]}");
  CHECK_HAS(dec_err_n(L, d1000, strlen(d1000), &deep_ok), "nesting deeper than 1000");
  free(d1000);
  d1000 = nested(500, "{\"k\":[", "]}");
  CHECK_STR(rt_opts(L, d1000, &deep_ok), d1000);
  CHECK_HAS(rt(L, d1000), "nesting deeper than 128 levels");
  free(d1000);
  d1000 = nested_mid(1000, "{\"a\":", "{}", "}");  /* 1001 levels */
  CHECK_HAS(rt_opts(L, d1000, &deep_ok), "nesting deeper than 1000 levels");
  free(d1000);
  d1000 = nested_mid(999, "{\"a\":", "{}", "}");
  CHECK_STR(rt_opts(L, d1000, &deep_ok), d1000);   /* 1000 levels */
  free(d1000);
  lua_close(L);
}

TEST(encode_depth_128) {
  lua_State *L = new_state();
  int rc;
  char *want = malloc(300);
  memset(want, '[', 127);
  memcpy(want + 127, "{}", 2);
  memset(want + 129, ']', 127);
  want[256] = '\0';
  CHECK_STR(enc_expr(L, "(function() local t = {} for i = 1, 127 do t = {t} end "
                        "return json.array(t) end)()", NULL, &rc), want);
  CHECK(rc == RD_OK);
  free(want);
  CHECK_HAS(enc_expr(L, "(function() local t = {} for i = 1, 128 do t = {t} end "
                        "return t end)()", NULL, &rc),
            "table nested deeper than 128 levels");
  CHECK(rc == RD_EJSON);
  CHECK_HAS(result, "cannot encode value at /0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/");
  lua_close(L);
}

/* ---- encode errors ----------------------------------------------------------- */

TEST(encode_errors_name_the_pointer) {
  lua_State *L = new_state();
  int rc;
  CHECK_STR(enc_expr(L, "{a = {1, 2, print}}", NULL, &rc),
            "cannot encode value at /a/2: function");
  CHECK(rc == RD_EJSON);
  CHECK_STR(enc(L, "print"), "cannot encode value at the root: function");
  CHECK_STR(enc(L, "{x = coroutine.create(print)}"), "cannot encode value at /x: thread");
  CHECK_STR(enc(L, "{x = io.stdout}"), "cannot encode value at /x: userdata");
  CHECK_STR(enc(L, "{n = 0/0}"), "cannot encode value at /n: NaN");
  CHECK_STR(enc(L, "{1, {math.huge}}"), "cannot encode value at /1/0: infinity");
  CHECK_STR(enc(L, "{-math.huge}"), "cannot encode value at /0: -infinity");
  CHECK_STR(enc(L, "{['a/b'] = {['m~n'] = print}}"),
            "cannot encode value at /a~1b/m~0n: function");
  CHECK_STR(enc(L, "{a = {1, 2, x = 3}}"),
            "cannot encode value at /a: table mixes array and object keys");
  CHECK_STR(enc(L, "{x = 1, [1] = 2, [2] = 3, [3] = 4, [4] = 5}"),
            "cannot encode value at the root: table mixes array and object keys");
  CHECK_STR(enc(L, "{a = {[1] = 1, [3] = 3}}"),
            "cannot encode value at /a: sparse array (2 elements, largest index 3)");
  CHECK_STR(enc(L, "{1, nil, 3}"),
            "cannot encode value at the root: sparse array (2 elements, largest index 3)");
  CHECK_STR(enc(L, "{[0] = 'z'}"),
            "cannot encode value at the root: table key 0 is neither a string nor an "
            "array index");
  CHECK_STR(enc(L, "{[1.5] = 'z'}"),
            "cannot encode value at the root: table key 1.5 is neither a string nor an "
            "array index");
  CHECK_STR(enc(L, "{[true] = 1}"), "cannot encode value at the root: table key of type boolean");
  CHECK_STR(enc(L, "{a = {[print] = 1}}"), "cannot encode value at /a: table key of type function");
  CHECK_STR(enc(L, "{[json.null] = 1}"), "cannot encode value at the root: table key of type userdata");
  CHECK_STR(enc(L, "json.array({a = 1})"),
            "cannot encode value at the root: table mixes array and object keys");
  CHECK_STR(enc(L, "json.array({1, nil, 3})"),
            "cannot encode value at the root: sparse array (2 elements, largest index 3)");
  lua_close(L);
}

TEST(cycles) {
  lua_State *L = new_state();
  CHECK_STR(enc(L, "(function() local t = {} t.self = t return t end)()"),
            "cannot encode value at /self: cycle");
  CHECK_STR(enc(L, "(function() local t = {x = {}} t.x.y = {t} return t end)()"),
            "cannot encode value at /x/y/0: cycle");
  CHECK_STR(enc(L, "(function() local t = json.array() t[1] = t return t end)()"),
            "cannot encode value at /0: cycle");
  /* the same table twice is not a cycle */
  rd_json_opts o = {0, 1, 0, 0, 0};
  CHECK_STR(enc_expr(L, "(function() local s = {1} return {a = s, b = s, c = {s, s}} end)()",
                     &o, NULL), "{\"a\":[1],\"b\":[1],\"c\":[[1],[1]]}");
  lua_close(L);
}

/* ---- tables ---------------------------------------------------------------------- */

TEST(table_rules) {
  lua_State *L = new_state();
  rd_json_opts o = {0, 1, 0, 0, 0};
  CHECK_STR(enc(L, "{}"), "{}");
  CHECK_STR(enc(L, "json.array()"), "[]");
  CHECK_STR(enc(L, "json.object()"), "{}");
  CHECK_STR(enc(L, "{1, 2, 3}"), "[1,2,3]");
  CHECK_STR(enc(L, "{[2] = 'b', [1] = 'a'}"), "[\"a\",\"b\"]");
  CHECK_STR(enc(L, "{true, false, json.null}"), "[true,false,null]");
  CHECK_STR(enc(L, "nil"), "null");
  CHECK_STR(enc_expr(L, "json.object({10, 20, [1.5] = 'x', y = 'z'})", &o, NULL),
            "{\"1\":10,\"1.5\":\"x\",\"2\":20,\"y\":\"z\"}");
  CHECK_STR(enc(L, "json.object({[2^53] = 1})"), "{\"9007199254740992\":1}");
  CHECK_STR(enc(L, "json.object({[math.huge] = 1})"),
            "cannot encode value at the root: table key inf is not finite");
  CHECK_STR(enc(L, "json.object({[true] = 1})"),
            "cannot encode value at the root: table key of type boolean");
  /* a foreign metatable: plain rules, or its __jsontype */
  CHECK_STR(enc(L, "setmetatable({}, {})"), "{}");
  CHECK_STR(enc(L, "setmetatable({}, {__jsontype = 'array'})"), "[]");
  CHECK_STR(enc(L, "setmetatable({1, 2}, {__jsontype = 'object'})"), "{\"1\":1,\"2\":2}");
  CHECK_STR(enc(L, "setmetatable({}, {__index = function() error('no') end})"), "{}");
  /* decoded arrays stay arrays when emptied or extended */
  CHECK_STR(enc(L, "(function() local a = json.decode('[1]') a[1] = nil return a end)()"),
            "[]");
  CHECK_STR(enc(L, "(function() local a = json.decode('[1]') a[2] = 2 return a end)()"),
            "[1,2]");
  lua_close(L);
}

TEST(sort_keys_and_pretty) {
  lua_State *L = new_state();
  rd_json_opts sorted = {0, 1, 0, 0, 0}, pretty = {0, 1, 1, 0, 0}, pretty_only = {0, 0, 1, 0, 0};
  CHECK_STR(enc_expr(L, "{b = 1, a = 2, B = 3, ['a\\0'] = 4, aa = 5, [''] = 6}",
                     &sorted, NULL),
            "{\"\":6,\"B\":3,\"a\":2,\"a\\u0000\":4,\"aa\":5,\"b\":1}");
  CHECK_STR(enc_expr(L, "{['\\195\\169'] = 1, z = 2, ['\\226\\130\\172'] = 3}", &sorted, NULL),
            "{\"z\":2,\"\xc3\xa9\":1,\"\xe2\x82\xac\":3}");
  CHECK_STR(enc_expr(L, "{z = {y = 1, x = {}}, a = {3, {}, json.array(), {k = 'v'}}, "
                        "m = json.null}", &pretty, NULL),
            "{\n"
            "  \"a\": [\n"
            "    3,\n"
            "    {},\n"
            "    [],\n"
            "    {\n"
            "      \"k\": \"v\"\n"
            "    }\n"
            "  ],\n"
            "  \"m\": null,\n"
            "  \"z\": {\n"
            "    \"x\": {},\n"
            "    \"y\": 1\n"
            "  }\n"
            "}");
  CHECK_STR(enc_expr(L, "{1, 2}", &pretty_only, NULL), "[\n  1,\n  2\n]");
  CHECK_STR(enc_expr(L, "{k = 1}", &pretty_only, NULL), "{\n  \"k\": 1\n}");
  CHECK_STR(enc_expr(L, "{}", &pretty, NULL), "{}");
  CHECK_STR(enc_expr(L, "'x'", &pretty, NULL), "\"x\"");
  /* sorted, with many keys and nested objects (scratch reuse and growth) */
  CHECK_STR(enc_expr(L, "(function() local t = {} for i = 1, 100 do "
                        "t[string.format('k%03d', 101 - i)] = {b = i, a = {c = 1, b = 2}} end "
                        "local s = json.encode(t, {sort_keys = true}) "
                        "return s:sub(1, 60) end)()", NULL, NULL),
            "\"{\\\"k001\\\":{\\\"a\\\":{\\\"b\\\":2,\\\"c\\\":1},\\\"b\\\":100},\\\"k002\\\":{\\\"a\\\":{\\\"b\\\":2,\\\"c\\\":1\"");
  lua_close(L);
}

/* ---- size ---------------------------------------------------------------------------- */

TEST(large_input) {
  lua_State *L = new_state();
  rd_buf in = RD_BUF_INIT;
  rd__buf_putc(&in, '[');
  for (int i = 0; i < 40000; i++) {
    if (i) rd__buf_putc(&in, ',');
    rd__buf_printf(&in, "{\"id\":%d,\"name\":\"item \\\"%d\\\" \xc3\xa9\",\"price\":%d.25,"
                        "\"tags\":[\"a\",\"b\",\"c\"],\"ok\":true,\"none\":null,"
                        "\"nested\":{\"x\":[1,2,{}],\"y\":-1.5e-3}}", i, i, i);
  }
  rd__buf_putc(&in, ']');
  CHECK(in.len > 4 * 1024 * 1024);
  rd_error err;
  CHECK(rd__json_decode(L, in.data, in.len, NULL, &err) == RD_OK);
  CHECK(lua_objlen(L, -1) == 40000);
  rd_buf out = RD_BUF_INIT;
  CHECK(rd__json_encode(L, -1, &out, NULL, &err) == RD_OK);
  CHECK(out.len == in.len);
  lua_pop(L, 1);
  /* a 3 MB string */
  rd_buf big = RD_BUF_INIT;
  rd__buf_putc(&big, '"');
  for (int i = 0; i < 300000; i++) rd__buf_puts(&big, "abc\\n\xe2\x82\xac xyz");
  rd__buf_putc(&big, '"');
  CHECK(rd__json_decode(L, big.data, big.len, NULL, &err) == RD_OK);
  CHECK(lua_objlen(L, -1) == 300000 * 11);
  out.len = 0;
  CHECK(rd__json_encode(L, -1, &out, NULL, &err) == RD_OK);
  CHECK(out.len == big.len && memcmp(out.data, big.data, big.len) == 0);
  lua_pop(L, 1);
  rd__buf_free(&in);
  rd__buf_free(&big);
  rd__buf_free(&out);
  CHECK(lua_gettop(L) == 0);
  lua_close(L);
}

/* ---- how containers are built ------------------------------------------------- */

/* Members wait on the Lua stack until their container closes; a container
 * that would take the stack too far is built early and filled in place.
 * Both ways must give the same tables. */
TEST(containers_built_at_close_and_early) {
  lua_State *L = new_state();
  rd_error err;
  int sizes[] = {0, 1, 4, 5, 16, 17, 100, 3000, 7700, 20000};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    int n = sizes[k];
    rd_buf a = RD_BUF_INIT, o = RD_BUF_INIT;
    rd__buf_putc(&a, '[');
    rd__buf_putc(&o, '{');
    for (int i = 0; i < n; i++) {
      rd__buf_printf(&a, "%s%d", i ? "," : "", i);
      rd__buf_printf(&o, "%s\"k%d\":%d", i ? "," : "", i, i);
    }
    rd__buf_putc(&a, ']');
    rd__buf_putc(&o, '}');
    CHECK(rd__json_decode(L, a.data, a.len, NULL, &err) == RD_OK);
    CHECK((int)lua_objlen(L, -1) == n);
    for (int i = 1; i <= n; i += (n / 7 + 1)) {
      lua_rawgeti(L, -1, i);
      CHECK(lua_tonumber(L, -1) == i - 1);
      lua_pop(L, 1);
    }
    CHECK(lua_getmetatable(L, -1));       /* every array carries the marker */
    lua_pop(L, 2);
    CHECK(rd__json_decode(L, o.data, o.len, NULL, &err) == RD_OK);
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      const char *key = lua_tostring(L, -2);
      CHECK(key && key[0] == 'k' && atoi(key + 1) == (int)lua_tonumber(L, -1));
      count++;
      lua_pop(L, 1);
    }
    CHECK(count == n);
    CHECK(!lua_getmetatable(L, -1));      /* objects carry none */
    lua_pop(L, 1);
    rd_buf out = RD_BUF_INIT;             /* round trip, byte for byte */
    CHECK(rd__json_decode(L, a.data, a.len, NULL, &err) == RD_OK);
    CHECK(rd__json_encode(L, -1, &out, NULL, &err) == RD_OK);
    CHECK(out.len == a.len && memcmp(out.data, a.data, a.len) == 0);
    lua_pop(L, 1);
    CHECK(lua_gettop(L) == 0);
    rd__buf_free(&out);
    rd__buf_free(&a);
    rd__buf_free(&o);
  }
  /* the last duplicate wins on both sides of an early build */
  rd_buf d = RD_BUF_INIT;
  rd__buf_puts(&d, "{\"dup\":\"first\"");
  for (int i = 0; i < 9000; i++) rd__buf_printf(&d, ",\"k%d\":%d", i, i);
  rd__buf_puts(&d, ",\"dup\":\"last\"}");
  CHECK(rd__json_decode(L, d.data, d.len, NULL, &err) == RD_OK);
  lua_getfield(L, -1, "dup");
  CHECK_STR(lua_tostring(L, -1), "last");
  lua_pop(L, 2);
  d.len = 0;
  rd__buf_puts(&d, "{\"a\":1,\"b\":2,\"a\":3,\"c\":[],\"b\":{},\"a\":null}");
  CHECK(rd__json_decode(L, d.data, d.len, NULL, &err) == RD_OK);
  lua_getfield(L, -1, "a");
  CHECK(lua_islightuserdata(L, -1) && lua_touserdata(L, -1) == RD_JSON_NULL);
  lua_getfield(L, -2, "b");
  CHECK(lua_istable(L, -1) && !lua_getmetatable(L, -1));
  lua_pop(L, 3);
  rd__buf_free(&d);
  /* big containers open at every level: the stack budget holds at 128 and
   * at 1000 levels (each level has thousands of members waiting) */
  int depths[] = {128, 1000};
  for (int k = 0; k < 2; k++) {
    int depth = depths[k];
    rd_buf t = RD_BUF_INIT;
    for (int i = 0; i < depth; i++) {
      rd__buf_putc(&t, '[');
      for (int j = 0; j < 3000; j++) rd__buf_puts(&t, j < 2999 || i < depth - 1 ? "1," : "1");
    }
    for (int i = 0; i < depth; i++) rd__buf_putc(&t, ']');
    rd_json_opts opt = {.max_depth = depth};
    CHECK(rd__json_decode(L, t.data, t.len, &opt, &err) == RD_OK);
    int level = 0;
    while (lua_istable(L, -1)) {
      CHECK(lua_objlen(L, -1) == (level < depth - 1 ? 3001 : 3000));
      level++;
      lua_rawgeti(L, -1, 3001);
    }
    CHECK(level == depth);
    lua_settop(L, 0);
    rd__buf_free(&t);
  }
  lua_close(L);
}

/* Short keys (and values) come from a per-state cache after their first sight: every
 * length, keys alike but for one byte, more keys than the cache holds,
 * and keys that do not qualify (escapes, UTF-8, 17 bytes and more). */
TEST(key_cache_keeps_keys_apart) {
  lua_State *L = new_state();
  rd_error err;
  for (int round = 0; round < 3; round++) {
    rd_buf t = RD_BUF_INIT;
    rd__buf_putc(&t, '[');
    for (int i = 0; i < 2000; i++) {
      char key[40];
      int len = 1 + i % 20;                 /* 1..20 bytes */
      for (int j = 0; j < len; j++) key[j] = (char)('a' + (i / 20 + j) % 26);
      key[len - 1] = (char)('A' + i % 26);  /* alike but for the last byte */
      key[len] = '\0';
      rd__buf_printf(&t, "%s{\"%s\":%d,\"k\\u00e9%d\":1,\"\xc3\xa9%d\":2}", i ? "," : "", key, i, i, i);
    }
    rd__buf_putc(&t, ']');
    CHECK(rd__json_decode(L, t.data, t.len, NULL, &err) == RD_OK);
    for (int i = 0; i < 2000; i += 7) {
      char key[40];
      int len = 1 + i % 20;
      for (int j = 0; j < len; j++) key[j] = (char)('a' + (i / 20 + j) % 26);
      key[len - 1] = (char)('A' + i % 26);
      key[len] = '\0';
      lua_rawgeti(L, -1, i + 1);
      lua_getfield(L, -1, key);
      CHECK(lua_tonumber(L, -1) == i);
      lua_pop(L, 1);
      int count = 0;
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        count++;
        lua_pop(L, 1);
      }
      CHECK(count == 3);
      snprintf(key, sizeof key, "k\xc3\xa9%d", i);
      lua_getfield(L, -1, key);
      CHECK(lua_tonumber(L, -1) == 1);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
    rd__buf_free(&t);
  }
  /* short values share the cache (their own half): alike values stay apart */
  for (int round = 0; round < 2; round++) {
    rd_buf t = RD_BUF_INIT;
    rd__buf_putc(&t, '[');
    for (int i = 0; i < 1500; i++) {
      char v[40];
      int len = 1 + i % 20;
      for (int j = 0; j < len; j++) v[j] = (char)('a' + (i / 20 + j) % 26);
      v[len - 1] = (char)('A' + i % 26);
      v[len] = '\0';
      rd__buf_printf(&t, "%s\"%s\",\"%s\"", i ? "," : "", v, v);
    }
    rd__buf_putc(&t, ']');
    CHECK(rd__json_decode(L, t.data, t.len, NULL, &err) == RD_OK);
    for (int i = 0; i < 1500; i += 3) {
      char v[40];
      int len = 1 + i % 20;
      for (int j = 0; j < len; j++) v[j] = (char)('a' + (i / 20 + j) % 26);
      v[len - 1] = (char)('A' + i % 26);
      v[len] = '\0';
      lua_rawgeti(L, -1, 2 * i + 1);
      lua_rawgeti(L, -2, 2 * i + 2);
      CHECK_STR(lua_tostring(L, -2), v);
      CHECK(lua_rawequal(L, -1, -2));
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
    rd__buf_free(&t);
  }
  CHECK_STR(rt(L, "[\"\",\"a\",\"\",\"a\\u0000\",\"a\"]"), "[\"\",\"a\",\"\",\"a\\u0000\",\"a\"]");
  /* a key at the very end of the input, shorter than a word away */
  CHECK_STR(rt(L, "{\"ab\":1}"), "{\"ab\":1}");
  CHECK_STR(rt(L, "{\"abcdefgh\":{\"abcdefgh\":1}}"), "{\"abcdefgh\":{\"abcdefgh\":1}}");
  rd_json_opts sorted = {.sort_keys = 1};
  CHECK_STR(rt_opts(L, "{\"abcdefghijklmnop\":1,\"abcdefghijklmnoq\":2,\"abcdefghijklmnopq\":3}", &sorted),
            "{\"abcdefghijklmnop\":1,\"abcdefghijklmnopq\":3,\"abcdefghijklmnoq\":2}");
  lua_close(L);
}

static void noop_hook(lua_State *L, lua_Debug *ar) {
  (void)L;
  (void)ar;
}

/* A state with a debug hook (the sandbox's tool states, whose memory is
 * capped) gets no string cache; the same input decodes the same. */
TEST(no_string_cache_under_a_hook) {
  const char *t = "{\"alpha\":\"one\",\"beta\":[\"two\",\"three\"],\"gamma\":{\"alpha\":1}}";
  for (int hooked = 0; hooked < 2; hooked++) {
    lua_State *L = new_state();
    if (hooked) lua_sethook(L, noop_hook, LUA_MASKCOUNT, 1000);
    lua_gc(L, LUA_GCCOLLECT, 0);
    int before = lua_gc(L, LUA_GCCOUNT, 0);
    rd_json_opts sorted = {.sort_keys = 1};
    CHECK_STR(rt_opts(L, t, &sorted),
              "{\"alpha\":\"one\",\"beta\":[\"two\",\"three\"],\"gamma\":{\"alpha\":1}}");
    CHECK_STR(rt_opts(L, t, &sorted),
              "{\"alpha\":\"one\",\"beta\":[\"two\",\"three\"],\"gamma\":{\"alpha\":1}}");
    lua_gc(L, LUA_GCCOLLECT, 0);
    int grew = lua_gc(L, LUA_GCCOUNT, 0) - before;   /* KB */
    if (hooked) CHECK(grew < 8);
    else CHECK(grew >= 24);                            /* the cache: about 32 KB */
    lua_close(L);
  }
}

/* The string scanner reads eight bytes at a time: a quote, a backslash, a
 * control byte or a non-ASCII byte must be seen at every offset of a word,
 * and at the end of the input. */
TEST(string_scan_every_offset) {
  lua_State *L = new_state();
  for (int len = 0; len < 20; len++) {
    for (int at = 0; at < len; at++) {
      char in[64], want[64];
      /* an escaped quote at `at` */
      memset(in, 0, sizeof in);
      in[0] = '"';
      int o = 1;
      for (int i = 0; i < len; i++) {
        if (i == at) {
          in[o++] = '\\';
          in[o++] = '"';
        } else {
          in[o++] = (char)('a' + i);
        }
      }
      in[o++] = '"';
      CHECK_STR(rt(L, in), in);
      /* a raw control byte at `at`: refused with its position */
      in[1 + at] = '\x01';
      in[2 + at] = 'x';
      snprintf(want, sizeof want, "(byte %d): unescaped control character U+0001", 1 + at);
      CHECK_HAS(dec_err(L, in), want);
      /* a stray continuation byte, then a valid two-byte sequence */
      in[1 + at] = '\x80';
      snprintf(want, sizeof want, "(byte %d): invalid UTF-8 in string", 1 + at);
      CHECK_HAS(dec_err(L, in), want);
      in[1 + at] = '\xc3';
      in[2 + at] = '\xa9';
      CHECK_STR(dec_err(L, in), "OK");
      /* a truncated sequence at the very end of the input */
      size_t n = (size_t)at + 2;
      in[1 + at] = '\xe2';
      snprintf(want, sizeof want, "invalid UTF-8 in string");
      CHECK_HAS(dec_err_n(L, in, n, NULL), want);
    }
    /* unterminated: the quote never comes */
    char open[64];
    memset(open, 'z', sizeof open);
    open[0] = '"';
    CHECK_HAS(dec_err_n(L, open, (size_t)len + 1, NULL), "unterminated string");
  }
  CHECK_STR(rt(L, "[\"\",\"~\",\"\\u007f\x7f\"]"), "[\"\",\"~\",\"\x7f\x7f\"]");
  lua_close(L);
}

/* ---- the C contract ----------------------------------------------------------------- */

TEST(encode_appends_and_keeps_stack) {
  lua_State *L = new_state();
  rd_error err;
  rd_buf b = RD_BUF_INIT;
  rd__buf_puts(&b, "prefix:");
  lua_pushinteger(L, 7);
  lua_newtable(L);
  lua_pushinteger(L, 1);
  lua_rawseti(L, -2, 1);
  CHECK(rd__json_encode(L, -1, &b, NULL, &err) == RD_OK);
  CHECK(err.code == RD_OK && err.message[0] == '\0');
  CHECK_STR(b.data, "prefix:[1]");
  CHECK(lua_gettop(L) == 2);
  CHECK(rd__json_encode(L, 1, &b, NULL, &err) == RD_OK);
  CHECK_STR(b.data, "prefix:[1]7");
  /* a failure leaves the buffer as it was */
  lua_pushcfunction(L, luaopen_base);
  lua_rawseti(L, 2, 2);
  CHECK(rd__json_encode(L, 2, &b, NULL, &err) == RD_EJSON);
  CHECK(err.code == RD_EJSON);
  CHECK_STR(err.message, "cannot encode value at /1: function");
  CHECK_STR(b.data, "prefix:[1]7");
  CHECK(lua_gettop(L) == 2);
  /* pseudo-indices work */
  lua_pushstring(L, "g");
  lua_setglobal(L, "gv");
  b.len = 0;
  lua_getglobal(L, "gv");
  lua_replace(L, 1);
  CHECK(rd__json_encode(L, 1, &b, NULL, NULL) == RD_OK);
  CHECK_STR(b.data, "\"g\"");
  rd__buf_free(&b);
  lua_close(L);
}

TEST(decode_without_init_and_null_err) {
  lua_State *L = luaL_newstate();   /* no rd__json_init */
  CHECK(rd__json_decode(L, "[1]", 3, NULL, NULL) == RD_OK);
  CHECK(lua_getmetatable(L, -1));
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  CHECK(lua_rawequal(L, -1, -2));
  lua_settop(L, 0);
  CHECK(rd__json_decode(L, "[1,]", 4, NULL, NULL) == RD_EJSON);
  rd_error e2;
  CHECK(rd__json_decode(L, NULL, 0, NULL, &e2) == RD_EJSON);
  CHECK_HAS(e2.message, "expected a value, got end of input");
  CHECK(lua_gettop(L) == 0);
  rd_buf b = RD_BUF_INIT;
  lua_pushnumber(L, NAN);
  CHECK(rd__json_encode(L, 1, &b, NULL, NULL) == RD_EJSON);
  lua_pop(L, 1);
  rd__buf_free(&b);
  lua_close(L);
}

/* rd__ allocation failures at every point of a decode and an encode */
TEST(allocation_failures) {
  lua_State *L = new_state();
  const char *t = "{\"a\\n\":[\"x\\ty\",1.0000000000000000000001,{\"b\\u00e9\":[]}],"
                  "\"c\":\"\\\"\"}";
  int seen_nomem = 0, seen_ok = 0;
  for (long n = 0; n < 40; n++) {
    rd_error err;
    rd__alloc_fail_after(n);
    int rc = rd__json_decode(L, t, strlen(t), NULL, &err);
    rd__alloc_fail_after(-1);
    CHECK(rc == RD_OK || rc == RD_ENOMEM);
    if (rc == RD_ENOMEM) {
      seen_nomem = 1;
      CHECK(lua_gettop(L) == 0);
      CHECK_HAS(err.message, "out of memory");
    } else {
      seen_ok = 1;
      CHECK(lua_gettop(L) == 1);
      lua_settop(L, 0);
    }
  }
  CHECK(seen_nomem && seen_ok);
  seen_nomem = seen_ok = 0;
  CHECK(luaL_dostring(L, "local t = {} for i = 1, 50 do t['k' .. i] = {i, 'v\\n'} end "
                         "return t") == 0);
  rd_json_opts sorted = {0, 1, 1, 0, 0};
  for (long n = 0; n < 40; n++) {
    rd_error err;
    rd_buf b = RD_BUF_INIT;
    rd__alloc_fail_after(n);
    int rc = rd__json_encode(L, 1, &b, &sorted, &err);
    rd__alloc_fail_after(-1);
    CHECK(rc == RD_OK || rc == RD_ENOMEM);
    CHECK(lua_gettop(L) == 1);
    if (rc == RD_ENOMEM) seen_nomem = 1;
    else seen_ok = 1;
    rd__buf_free(&b);
  }
  CHECK(seen_nomem && seen_ok);
  lua_close(L);
}

/* Lua memory errors come back as RD_ENOMEM, without leaks */
static size_t lua_limit, lua_used;
static void *limited_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    if (p) lua_used -= osize;
    free(p);
    return NULL;
  }
  size_t old = p ? osize : 0;
  if (nsize > old && lua_used + (nsize - old) > lua_limit) return NULL;
  void *q = realloc(p, nsize);
  if (q) lua_used = lua_used - old + nsize;
  return q;
}

TEST(lua_memory_errors) {
  lua_limit = (size_t)-1;
  lua_used = 0;
  lua_State *L = lua_newstate(limited_alloc, NULL);
  if (!L) {
    fprintf(stderr, "  (lua_newstate with a custom allocator unsupported; skipped)\n");
    return;
  }
  rd__json_init(L);
  rd_buf in = RD_BUF_INIT;
  rd__buf_putc(&in, '[');
  for (int i = 0; i < 20000; i++)
    rd__buf_printf(&in, "%s{\"k%d\":\"value \\\"%d\\\"\"}", i ? "," : "", i, i);
  rd__buf_putc(&in, ']');
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_limit = lua_used + 256 * 1024;   /* far less than the decoded value */
  rd_error err;
  int rc = rd__json_decode(L, in.data, in.len, NULL, &err);
  CHECK(rc == RD_ENOMEM);
  CHECK(lua_gettop(L) == 0);
  CHECK_HAS(err.message, "not enough memory");
  lua_limit = (size_t)-1;
  CHECK(rd__json_decode(L, in.data, in.len, NULL, &err) == RD_OK);
  /* encoding needs little Lua memory, but pushing a big sorted key set does */
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_limit = lua_used;
  rd_buf out = RD_BUF_INIT;
  rd_json_opts o = {0, 1, 0, 0, 0};
  rc = rd__json_encode(L, 1, &out, &o, &err);
  CHECK(rc == RD_OK || rc == RD_ENOMEM);
  CHECK(lua_gettop(L) == 1);
  lua_limit = (size_t)-1;
  rd__buf_free(&out);
  rd__buf_free(&in);
  lua_close(L);
}

/* An object whose first key is in the string cache is made at once with
 * the size of the last object that began with that key: the size may be
 * wrong (more or fewer members, a nested object with the same first key,
 * duplicate keys, a huge object) and the value must come out the same. */
TEST(objects_sized_from_the_last_shape) {
  lua_State *L = new_state();
  rd_json_opts sorted = {.sort_keys = 1};
  for (int round = 0; round < 3; round++) {
    CHECK_STR(rt_opts(L, "{\"id\":1,\"b\":2,\"c\":3}", &sorted), "{\"b\":2,\"c\":3,\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1}", &sorted), "{\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9}", &sorted),
              "{\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,\"id\":1}");
    /* the last of duplicate keys wins in a table made in advance too */
    CHECK_STR(rt_opts(L, "{\"id\":1,\"id\":2,\"x\":3,\"id\":4}", &sorted), "{\"id\":4,\"x\":3}");
    CHECK_STR(rt_opts(L, "{\"id\":{\"id\":{\"id\":5,\"z\":6},\"y\":[{\"id\":7}]},\"id2\":8,\"id\":9}", &sorted),
              "{\"id\":9,\"id2\":8}");
    CHECK_STR(rt_opts(L, "{\"id\":{\"id\":{\"id\":5,\"z\":6},\"y\":[{\"id\":7},{}]},\"id2\":8}", &sorted),
              "{\"id\":{\"id\":{\"id\":5,\"z\":6},\"y\":[{\"id\":7},{}]},\"id2\":8}");
    /* the key that followed last time, or one alike: a prefix, a longer
     * one, one differing in the last byte, one that needs escapes, one
     * near the end of the input */
    CHECK_STR(rt_opts(L, "{\"id\":1,\"abcdefgh\":2,\"abcdefghijklmnop\":3,\"ab\":4}", &sorted),
              "{\"ab\":4,\"abcdefgh\":2,\"abcdefghijklmnop\":3,\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"abcdefghi\":2,\"abcdefghijklmnoq\":3,\"abc\":4}", &sorted),
              "{\"abc\":4,\"abcdefghi\":2,\"abcdefghijklmnoq\":3,\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"abcdefg\":2,\"abcdefghijklmnopq\":3,\"a\\u0062\":4}", &sorted),
              "{\"ab\":4,\"abcdefg\":2,\"abcdefghijklmnopq\":3,\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"abcdefgh\":2}", &sorted), "{\"abcdefgh\":2,\"id\":1}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"abcdefgX\":2}", &sorted), "{\"abcdefgX\":2,\"id\":1}");
    CHECK_STR(dec_err(L, "{\"id\":1,\"abcdefgh\"}"),
              "invalid JSON at line 1, column 19 (byte 18): expected ':' after an object key, got '}'");
    CHECK_STR(dec_err(L, "{\"id\":1,\"abcdefgh"),
              "invalid JSON at line 1, column 9 (byte 8): unterminated string (expected '\"' before the end of input)");
    /* empty keys, also where a key was expected to follow */
    CHECK_STR(rt_opts(L, "{\"\":1,\"\":2,\"a\":{\"\":3}}", &sorted), "{\"\":2,\"a\":{\"\":3}}");
    CHECK_STR(rt_opts(L, "{\"id\":1,\"\":2}", &sorted), "{\"\":2,\"id\":1}");
    /* a huge object, then small ones with the same first key */
    rd_buf t = RD_BUF_INIT;
    rd__buf_puts(&t, "{\"id\":0");
    for (int i = 1; i < 5000; i++) rd__buf_printf(&t, ",\"m%d\":%d", i, i);
    rd__buf_putc(&t, '}');
    rd_error err;
    CHECK(rd__json_decode(L, t.data, t.len, NULL, &err) == RD_OK);
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      count++;
      lua_pop(L, 1);
    }
    CHECK(count == 5000);
    lua_getfield(L, -1, "m4999");
    CHECK(lua_tonumber(L, -1) == 4999);
    lua_pop(L, 2);
    rd__buf_free(&t);
    CHECK_STR(rt_opts(L, "{\"id\":1,\"b\":2}", &sorted), "{\"b\":2,\"id\":1}");
    /* an object as deep as allowed, every level with the same first key */
    t = (rd_buf)RD_BUF_INIT;
    for (int i = 0; i < 127; i++) rd__buf_puts(&t, "{\"k\":1,\"v\":");
    rd__buf_puts(&t, "{\"k\":2}");
    for (int i = 0; i < 127; i++) rd__buf_puts(&t, ",\"w\":3}");
    CHECK(rd__json_decode(L, t.data, t.len, NULL, &err) == RD_OK);
    for (int i = 0; i < 127; i++) {
      lua_getfield(L, -1, "w");
      CHECK(lua_tonumber(L, -1) == 3);
      lua_pop(L, 1);
      lua_getfield(L, -1, "v");
      lua_remove(L, -2);
    }
    lua_getfield(L, -1, "k");
    CHECK(lua_tonumber(L, -1) == 2);
    lua_pop(L, 2);
    CHECK(lua_gettop(L) == 0);
    rd__buf_free(&t);
  }
  lua_close(L);
}

/* core.json.decode runs the decoder without a protected call of its own
 * (rd__json_decode_here): the same values and errors, a clean stack on
 * failure, and the scratch buffer of escaped strings reused and released. */
TEST(decode_here_from_lua) {
  lua_State *L = new_state();
  const char *code =
      "local j = json\n"
      "for round = 1, 3 do\n"
      "  local v = assert(j.decode('{\"a\":[1,2,{\"b\":\"x\\\\ny\"}],\"c\":{},\"d\":null}'))\n"
      "  assert(v.a[3].b == 'x\\ny' and j.is_array(v.a) and not j.is_array(v.c) and v.d == j.null)\n"
      "  local r, e = j.decode('{\"a\":1,}')\n"
      "  assert(r == nil and e:find('line 1, column 8', 1, true), e)\n"
      "  r, e = j.decode('[\"\\\\ud800\"]')\n"
      "  assert(r == nil and e:find('lone surrogate', 1, true), e)\n"
      "  r, e = j.decode(('['):rep(129) .. (']'):rep(129))\n"
      "  assert(r == nil and e:find('deeper than 128', 1, true), e)\n"
      "  r, e = j.decode(('['):rep(300) .. (']'):rep(300), {max_depth = 300})\n"
      "  assert(r and e == nil)\n"
      "  local big = ('a\\\\tb'):rep(40000)\n"
      "  local s = assert(j.decode('\"' .. big .. '\"'))\n"
      "  assert(#s == 120000 and s:sub(1, 4) == 'a\\tba')\n"
      "  assert(j.decode('\"\\\\u00e9\"') == '\\195\\169')\n"
      "  assert(j.decode('1e400') == nil)\n"
      "  assert(j.decode('-0.5e-3') == -0.0005 and j.decode('9007199254740993') == 9007199254740992)\n"
      "  assert(select('#', j.decode('[]')) == 1 and select('#', j.decode('[')) == 2)\n"
      "end\n"
      "return true\n";
  int rc = luaL_dostring(L, code);
  if (rc) fprintf(stderr, "  %s\n", lua_tostring(L, -1));
  CHECK(rc == 0);
  lua_settop(L, 0);
  /* the same under a debug hook, where it takes the protected path */
  lua_sethook(L, noop_hook, LUA_MASKCOUNT, 1000);
  rc = luaL_dostring(L, code);
  if (rc) fprintf(stderr, "  %s\n", lua_tostring(L, -1));
  CHECK(rc == 0);
  lua_close(L);
}

/* A Lua memory error in core.json.decode raises "not enough memory" and
 * leaks nothing (ASan checks): the scratch buffer belongs to the cache. */
TEST(decode_here_memory_errors) {
  lua_limit = (size_t)-1;
  lua_used = 0;
  lua_State *L = lua_newstate(limited_alloc, NULL);
  if (!L) {
    fprintf(stderr, "  (lua_newstate with a custom allocator unsupported; skipped)\n");
    return;
  }
  luaL_openlibs(L);
  rd__luaopen_json(L);
  lua_setglobal(L, "json");
  rd_buf in = RD_BUF_INIT;
  rd__buf_putc(&in, '[');
  for (int i = 0; i < 20000; i++)
    rd__buf_printf(&in, "%s{\"k%d\":\"value \\\"%d\\\" %s\"}", i ? "," : "", i % 50, i,
                   i % 100 ? "" : "padding padding padding padding padding padding");
  rd__buf_putc(&in, ']');
  lua_getglobal(L, "json");
  lua_getfield(L, -1, "decode");
  lua_pushlstring(L, in.data, in.len);
  lua_setglobal(L, "text");
  lua_setglobal(L, "decode");
  lua_pop(L, 1);
  CHECK(luaL_dostring(L, "assert(#decode(text) == 20000)") == 0);
  int failed = 0;
  for (size_t extra = 16 * 1024; extra <= 1024 * 1024; extra *= 2) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    lua_limit = lua_used + extra;
    int rc = luaL_dostring(L, "local v = decode(text) return v");
    lua_limit = (size_t)-1;
    if (rc != 0) {
      CHECK_HAS(lua_tostring(L, -1), "not enough memory");
      failed++;
    }
    lua_settop(L, 0);
  }
  CHECK(failed > 0);
  CHECK(luaL_dostring(L, "return #decode(text) == 20000") == 0);
  CHECK(lua_toboolean(L, -1));
  lua_settop(L, 0);
  rd__buf_free(&in);
  lua_close(L);
}

/* ---- the binding, seen from C ---------------------------------------------------------- */

TEST(binding_basics) {
  lua_State *L = new_state();
  const char *code =
      "local j = json\n"
      "assert(j.null == j.decode('null'))\n"
      "local v, e = j.decode('[1,]')\n"
      "assert(v == nil and e:find('trailing', 1, true))\n"
      "assert(j.is_array(j.decode('[]')) and not j.is_array(j.decode('{}')))\n"
      "assert(j.is_array({1, 2}) and not j.is_array({}) and not j.is_array({1, nil, 3}))\n"
      "assert(not j.is_array(j.object({1})) and j.is_array(j.array({})))\n"
      "assert(not j.is_array('x'))\n"
      "local ok, off = j.utf8_valid('ab\\192\\128')\n"
      "assert(ok == false and off == 2)\n"
      "assert(j.utf8_valid('') == true)\n"
      "assert(j.encode({b = 1, a = {}}, {sort_keys = true}) == '{\"a\":{},\"b\":1}')\n"
      "assert(getmetatable(j.array()) == j.array_mt and j.array_mt.__jsontype == 'array')\n"
      "assert(j.object_mt.__jsontype == 'object')\n"
      "assert(not pcall(j.decode, 42))\n"
      "assert(not pcall(j.encode))\n"
      "assert(not pcall(j.encode, 1, {max_depth = 0}))\n"
      "assert(not pcall(j.encode, 1, {pretty = 'yes'}))\n"
      "assert(not pcall(j.array, 'x'))\n"
      "return true\n";
  int rc = luaL_dostring(L, code);
  if (rc) fprintf(stderr, "  %s\n", lua_tostring(L, -1));
  CHECK(rc == 0);
  lua_close(L);
}

int main(void) { RUN_TESTS(); }
