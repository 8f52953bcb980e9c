/*
 * json.c — the JSON codec (RFC 8259) between JSON text and Lua values.
 * The contract is json.h; the choices it leaves open are made here:
 *
 *  - Duplicate object keys: the last one wins ({"a":1,"a":2} -> a = 2).
 *  - "-0" decodes to the double -0.0; -0.0 encodes as 0 (as JavaScript's
 *    JSON.stringify and RFC 8785 do).
 *  - Positions in decode errors: line and column count from 1 (columns in
 *    characters, i.e. UTF-8 lead bytes), "byte" is the 0-based offset into
 *    the text. rd__utf8_valid's *bad_at is the 0-based offset of the first
 *    byte of the first ill-formed sequence (= the length of the valid
 *    prefix).
 *  - JSON pointers in encode errors are RFC 6901: array indices from 0, "~"
 *    and "/" in keys written "~0" and "~1"; the root is "the root".
 *  - max_depth counts arrays and objects (a bare scalar has depth 0, "[]"
 *    depth 1). Values above HARD_MAX_DEPTH are clamped to it: the Lua stack
 *    holds up to two slots per level while decoding and encoding.
 *  - Tables with a metatable other than the two markers follow the plain
 *    rules, unless that metatable has a field __jsontype = "array" or
 *    "object" (the markers carry one too); no other metamethod is called.
 *  - Object-marked tables may have number keys; they are written as strings
 *    in number form (1 -> "1", 1.5 -> "1.5"). A table holding both 1 and "1"
 *    then writes the key twice (decoders keep the last).
 *  - \u0000 decodes to a NUL byte inside the Lua string; it is escaped back.
 *  - A failed encode leaves `out` at the length it had (nothing appended).
 *  - A non-memory Lua error raised while the codec runs (only a debug hook
 *    can) comes back as RD_EINTERNAL with its message.
 *
 * Both directions run inside a lua_pcall of a C function, so a Lua memory
 * error in the middle frees the scratch memory and comes back as RD_ENOMEM
 * instead of unwinding through this file.
 *
 * The decoder is iterative (an explicit stack of open containers), so no
 * input can exhaust the C stack; the encoder recurses, at most
 * HARD_MAX_DEPTH frames.
 */
#include "json.h"

#include <lauxlib.h>
#include <sodium.h>

#include <assert.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HARD_MAX_DEPTH 1000
#define TWO_53 9007199254740992.0

/* Registry keys of the protected entry points (cached closures). */
static char decode_fn_key, encode_fn_key;
/* Registry name of the string cache's metatable (its __gc frees the
 * cache's scratch buffer). */
#define KC_MT "rubberduck.json.cache"

static int effective_depth(const rd_json_opts *o) {
  int d = (o && o->max_depth > 0) ? o->max_depth : RD_JSON_MAX_DEPTH;
  return d > HARD_MAX_DEPTH ? HARD_MAX_DEPTH : d;
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence (RFC 3629) that starts at p, whose
 * first byte is >= 0x80, or 0 if it is ill-formed or truncated by e. */
static inline size_t utf8_seq(const unsigned char *p, const unsigned char *e) {
  unsigned c = p[0];
  size_t avail = (size_t)(e - p);
  if (c < 0xC2) return 0;                      /* continuation or overlong */
  if (c < 0xE0) return (avail >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    unsigned lo = c == 0xE0 ? 0xA0 : 0x80;     /* E0: no overlongs */
    unsigned hi = c == 0xED ? 0x9F : 0xBF;     /* ED: no surrogates */
    if (avail < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80) return 0;
    return 3;
  }
  if (c < 0xF5) {
    unsigned lo = c == 0xF0 ? 0x90 : 0x80;     /* F0: no overlongs */
    unsigned hi = c == 0xF4 ? 0x8F : 0xBF;     /* F4: at most U+10FFFF */
    if (avail < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 ||
        (p[3] & 0xC0) != 0x80)
      return 0;
    return 4;
  }
  return 0;
}

int rd__utf8_valid(const char *s, size_t len, size_t *bad_at) {
  const unsigned char *p = (const unsigned char *)s, *e = p + len;
  while (p < e) {
    /* ASCII runs eight bytes at a time */
    while ((size_t)(e - p) >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      if (w & UINT64_C(0x8080808080808080)) break;
      p += 8;
    }
    if (p == e) break;
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t n = utf8_seq(p, e);
    if (!n) {
      if (bad_at) *bad_at = (size_t)(p - (const unsigned char *)s);
      return 0;
    }
    p += n;
  }
  return 1;
}

/* ---- marker metatables ----------------------------------------------------- */

void rd__utf8_clean(char *s, size_t len) {
  size_t i = 0, bad;
  while (i < len && !rd__utf8_valid(s + i, len - i, &bad)) {
    s[i + bad] = '?';
    i += bad + 1;
  }
}

static int decode_protected(lua_State *L);
static int encode_protected(lua_State *L);
static void push_entry(lua_State *L, char *key, lua_CFunction fn, int with_mt);

/* Also caches the closures of the protected entry points, so that a decode
 * or encode on a state at its memory cap allocates nothing before its
 * lua_pcall. */
static int kc_gc(lua_State *L);

void rd__json_init(lua_State *L) {
  /* Done already in this state (the entries are made last)? */
  lua_pushlightuserdata(L, &encode_fn_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  int done = lua_isfunction(L, -1);
  lua_pop(L, 1);
  if (done) return;
  if (luaL_newmetatable(L, KC_MT)) {
    lua_pushcfunction(L, kc_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, RD_JSON_ARRAY_MT)) {
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__jsontype");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, RD_JSON_OBJECT_MT)) {
    lua_pushliteral(L, "object");
    lua_setfield(L, -2, "__jsontype");
  }
  lua_pop(L, 1);
  push_entry(L, &decode_fn_key, decode_protected, 1);
  push_entry(L, &encode_fn_key, encode_protected, 0);
  lua_pop(L, 2);
}

/* The markers also sit in the registry under light-userdata keys: a
 * lookup by a string name (luaL_getmetatable) hashes and interns the name,
 * several hundred instructions on every copy, encode and check. */
static char array_mt_key, object_mt_key;

static const void *marker_ptr(lua_State *L, char *key, const char *name) {
  lua_pushlightuserdata(L, key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    luaL_getmetatable(L, name);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      return NULL;
    }
    lua_pushlightuserdata(L, key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  const void *p = lua_topointer(L, -1);
  lua_pop(L, 1);
  return p;
}

void rd__json_markers(lua_State *L, const void **array_mt, const void **object_mt) {
  *array_mt = marker_ptr(L, &array_mt_key, RD_JSON_ARRAY_MT);
  *object_mt = marker_ptr(L, &object_mt_key, RD_JSON_OBJECT_MT);
}

/* Push the cached closure of `fn` (registry[key]), creating it if needed;
 * with_mt: its upvalue 1 is the array metatable (which must exist), 2 and 3
 * the key cache (see keycache). */
static void push_entry(lua_State *L, char *key, lua_CFunction fn, int with_mt) {
  lua_pushlightuserdata(L, key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isfunction(L, -1)) return;
  lua_pop(L, 1);
  if (with_mt) {
    luaL_getmetatable(L, RD_JSON_ARRAY_MT);
    lua_pushboolean(L, 0);            /* the key cache, made on first use */
    lua_pushboolean(L, 0);
    lua_pushcclosure(L, fn, 3);
  } else {
    lua_pushcfunction(L, fn);
  }
  lua_pushlightuserdata(L, key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

/* Local decimal point of strtod/snprintf ("." unless someone called
 * setlocale). */
static const char *decimal_point(void) {
  const char *dp = localeconv()->decimal_point;
  return (dp && dp[0]) ? dp : ".";
}

/* ---- decoding ------------------------------------------------------------- */

/* Bytes that end a fast string scan: '"', '\\', controls, non-ASCII. */
static const unsigned char str_stop[256] = {
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};

static const double pow10_exact[23] = {
  1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
  1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* One open container. Until it closes, its members wait on the Lua stack
 * above `slot` (a placeholder), so that its table is created once with
 * its exact size: no rehash while it fills, one allocation for a small
 * array (LuaJIT colocates it). A container whose pending members would
 * take the stack beyond dec.budget is built early and filled directly. */
typedef struct frame {
  int slot;        /* stack index of the placeholder, or of the table */
  int built;       /* the table exists at `slot` and takes members itself */
  int obj;         /* object (key/value pairs) or array */
  uint32_t n;      /* members so far (an array's length) */
  int kslot;       /* object: the cache slot of its first key, or -1 */
  int pslot;       /* object: the cache slot of its last key, or -1 */
} frame;

/* Object keys repeat from one document to the next (a tool's parameter
 * names), and so do short values (enums, names, flags); making a Lua string
 * means hashing it and walking a chain of the string table, whose strings
 * are spread over the heap. The string cache remembers up to KC_SLOTS short
 * keys and as many short values (1..16 bytes of plain ASCII, in two halves
 * so that values never evict keys) by their bytes, and the Lua string at
 * the same index of a table: a string seen before costs two word compares
 * and a lua_rawgeti. (V8's JSON.parse likewise internalizes keys and short
 * values.) One cache per Lua state (upvalues 2 and 3 of the decode
 * closure), made on first use; it keeps at most 2 * KC_SLOTS short strings
 * alive. A state with a debug hook set (a tool's state in the sandbox, whose
 * memory is capped and counted) decodes without it. */
#define KC_SLOTS 512
#define KC_MAX_OBJN 256   /* larger objects are not sized in advance */
#define KC_KEYS 0
#define KC_VALUES KC_SLOTS
typedef struct keycache {
  struct {
    uint64_t w0, w1;               /* the bytes, zero-padded to 16 */
    uint32_t len;                  /* 0: empty */
    uint32_t objn;                 /* keys: members of the last object that
                                    * began with this key (0: none yet) */
    int32_t next;                  /* keys: the slot of the key that
                                    * followed this one last time, or -1 */
  } e[2 * KC_SLOTS];
  rd_buf sb;       /* the scratch buffer of decodes without a protected
                    * call (rd__json_decode_here); freed by __gc */
} keycache;

typedef struct dec {
  lua_State *L;
  const unsigned char *start, *p, *end;
  int max_depth;
  rd_error *err;
  int rc;
  int mt;          /* index of the array metatable (an upvalue) */
  int top;         /* lua_gettop(L), kept here (it changes with each push) */
  int room;        /* stack slots up to this index are guaranteed */
  int budget;      /* top index beyond which containers are built early */
  rd_buf *sb;      /* scratch: strings with escapes, long numbers */
  frame *frames;   /* the open containers, outermost first */
  keycache *kc;    /* NULL until the first key */
  int kc_off;      /* no string cache (a hook is set) */
  int kt;          /* stack index of the key cache's table (or false) */
  int last_slot;   /* cache slot of the string just pushed, or -1 */
} dec;

typedef struct dec_call {
  dec d;
} dec_call;

/* Describe the input at `at` for an error message ("'x'", "end of input"). */
static void describe_at(const dec *d, const unsigned char *at, char *out,
                        size_t n) {
  if (at >= d->end) {
    snprintf(out, n, "end of input");
  } else if (*at >= 0x21 && *at < 0x7F) {
    snprintf(out, n, "'%c'", *at);
  } else {
    snprintf(out, n, "byte 0x%02X", *at);
  }
}

/* Record a syntax error at `at`; returns 0 for `return fail(...)`. */
static int fail(dec *d, const unsigned char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(dec *d, const unsigned char *at, const char *fmt, ...) {
  char why[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  if (at > d->end) at = d->end;
  size_t line = 1, col = 1;
  for (const unsigned char *q = d->start; q < at; q++) {
    if (*q == '\n') {
      line++;
      col = 1;
    } else if ((*q & 0xC0) != 0x80) {
      col++;
    }
  }
  d->rc = rd_error_set(d->err, RD_EJSON,
                       "invalid JSON at line %zu, column %zu (byte %zu): %s",
                       line, col, (size_t)(at - d->start), why);
  return 0;
}

/* "expected X, got Y", with a hint for the usual non-JSON habits. */
static int fail_expected(dec *d, const unsigned char *at, const char *what) {
  char got[32];
  const char *hint = "";
  describe_at(d, at, got, sizeof got);
  if (at < d->end) {
    size_t left = (size_t)(d->end - at);
    if (*at == '/') hint = " (comments are not allowed)";
    else if (*at == '\'') hint = " (strings take double quotes)";
    else if ((left >= 3 && !memcmp(at, "NaN", 3)) ||
             (left >= 8 && !memcmp(at, "Infinity", 8)) ||
             (left >= 9 && !memcmp(at, "-Infinity", 9)))
      hint = " (NaN and Infinity are not JSON numbers)";
  }
  return fail(d, at, "expected %s, got %s%s", what, got, hint);
}

static int fail_nomem(dec *d) {
  d->rc = rd_error_set(d->err, RD_ENOMEM, "out of memory while decoding JSON");
  return 0;
}

/* JSON whitespace: ' ', '\t', '\n', '\r'. */
static const unsigned char is_ws[256] = {
  0,0,0,0,0,0,0,0,0,1,1,0,0,1,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  1,
};

static inline const unsigned char *skip_ws(const unsigned char *p,
                                           const unsigned char *e) {
  if (p < e && *p > ' ') return p;        /* the usual case: no whitespace */
  while (p < e && is_ws[*p]) p++;
  return p;
}

static int hex4(const unsigned char *p, const unsigned char *e, unsigned *out) {
  unsigned v = 0;
  if (e - p < 4) return 0;
  for (int i = 0; i < 4; i++) {
    unsigned c = p[i], h;
    if (c >= '0' && c <= '9') h = c - '0';
    else if (c >= 'a' && c <= 'f') h = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') h = c - 'A' + 10;
    else return 0;
    v = v << 4 | h;
  }
  *out = v;
  return 1;
}

static void put_utf8(rd_buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | cp >> 6);
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | cp >> 12);
    u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (char)(0xF0 | cp >> 18);
    u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  rd__buf_append(b, u, n);
}

/* The high bit of each byte of w that is a str_stop byte ('"', '\\', a
 * control below 0x20, or non-ASCII), plus possibly bits above the first
 * such byte: a borrow between bytes only starts at a stop byte, so the
 * lowest set bit is exact and 0 means none. */
static inline uint64_t word_stops(uint64_t w) {
  const uint64_t ones = UINT64_C(0x0101010101010101);
  uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
  uint64_t t = ((q - ones) & ~q) | ((b - ones) & ~b) | (w - ones * 0x20) | w;
  return t & UINT64_C(0x8080808080808080);
}

/* First stop byte at or after p, or e. Eight bytes at a time while eight
 * remain (byte order: little-endian loads, so the first byte is lowest). */
static inline const unsigned char *scan_plain(const unsigned char *p,
                                              const unsigned char *e) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  while ((size_t)(e - p) >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    uint64_t m = word_stops(w);
    if (m) return p + (__builtin_ctzll(m) >> 3);
    p += 8;
  }
#endif
  while (p < e && !str_stop[*p]) p++;
  return p;
}

/* d->p is just past the opening quote. Pushes the string. */
static int dec_string(dec *d) {
  const unsigned char *p = d->p, *e = d->end, *run = p;
  const unsigned char *open = p - 1;
  int buffered = 0;
  for (;;) {
    p = scan_plain(p, e);
    if (p == e)
      return fail(d, open, "unterminated string (expected '\"' before the "
                           "end of input)");
    unsigned c = *p;
    if (c == '"') break;
    if (c >= 0x80) {
      size_t n = utf8_seq(p, e);
      if (!n) return fail(d, p, "invalid UTF-8 in string");
      p += n;
      continue;
    }
    if (c < 0x20)
      return fail(d, p, "unescaped control character U+%04X in string", c);
    /* backslash */
    if (!buffered) {
      d->sb->len = 0;
      buffered = 1;
    }
    rd__buf_append(d->sb, run, (size_t)(p - run));
    const unsigned char *esc = p++;
    if (p == e) return fail(d, esc, "unterminated escape in string");
    switch (*p) {
      case '"': rd__buf_putc(d->sb, '"'); break;
      case '\\': rd__buf_putc(d->sb, '\\'); break;
      case '/': rd__buf_putc(d->sb, '/'); break;
      case 'b': rd__buf_putc(d->sb, '\b'); break;
      case 'f': rd__buf_putc(d->sb, '\f'); break;
      case 'n': rd__buf_putc(d->sb, '\n'); break;
      case 'r': rd__buf_putc(d->sb, '\r'); break;
      case 't': rd__buf_putc(d->sb, '\t'); break;
      case 'u': {
        unsigned cp, lo;
        if (!hex4(p + 1, e, &cp))
          return fail(d, esc, "expected 4 hex digits after \\u");
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
          return fail(d, esc, "lone surrogate \\u%04X in string (a low "
                              "surrogate must follow a high one)", cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (e - p < 3 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, e, &lo) ||
              lo < 0xDC00 || lo > 0xDFFF)
            return fail(d, esc, "lone surrogate \\u%04X in string (expected "
                                "a low surrogate \\uDC00-\\uDFFF after it)", cp);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          p += 6;
        }
        put_utf8(d->sb, cp);
        break;
      }
      default:
        if (*p >= 0x21 && *p < 0x7F)
          return fail(d, esc, "invalid escape '\\%c' in string (expected one "
                              "of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)", *p);
        return fail(d, esc, "invalid escape in string (byte 0x%02X after '\\')",
                    *p);
    }
    run = ++p;
  }
  if (!buffered) {
    lua_pushlstring(d->L, (const char *)run, (size_t)(p - run));
  } else {
    rd__buf_append(d->sb, run, (size_t)(p - run));
    if (d->sb->oom) return fail_nomem(d);
    lua_pushlstring(d->L, d->sb->data, d->sb->len);
  }
  d->top++;
  d->p = p + 1;
  return 1;
}

/* Number at d->p (a '-' or a digit). Pushes it. */
static int dec_number(dec *d) {
  const unsigned char *s = d->p, *p = s, *e = d->end;
  int neg = 0, nd = 0, exact = 1;
  uint64_t m = 0;
  long e10 = 0;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (p == e || *p < '0' || *p > '9')
    return fail_expected(d, p, "a digit after '-'");
  if (*p == '0') {
    p++;
    if (p < e && *p >= '0' && *p <= '9')
      return fail(d, s, "leading zeros are not allowed in numbers");
  } else {
    for (; p < e && *p >= '0' && *p <= '9'; p++) {
      if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        nd++;
      } else {
        exact = 0;
      }
    }
  }
  int integer = 1;
  if (p < e && *p == '.') {
    integer = 0;
    p++;
    if (p == e || *p < '0' || *p > '9')
      return fail_expected(d, p, "a digit after the decimal point");
    for (; p < e && *p >= '0' && *p <= '9'; p++) {
      if (m == 0 && *p == '0') {
        e10--;                                  /* leading zeros: free */
      } else if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        nd++;
        e10--;
      } else {
        exact = 0;
      }
    }
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    integer = 0;
    p++;
    int eneg = 0;
    long x = 0;
    if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
    if (p == e || *p < '0' || *p > '9')
      return fail_expected(d, p, "a digit in the exponent");
    for (; p < e && *p >= '0' && *p <= '9'; p++)
      if (x < 100000) x = x * 10 + (*p - '0');
    e10 += eneg ? -x : x;
  }
  d->p = p;
  double v;
  if (exact && (integer || m == 0)) {
    v = (double)m;                     /* correctly rounded by the FPU */
  } else if (exact && m <= (uint64_t)1 << 53 && e10 >= -22 && e10 <= 22) {
    /* Clinger's fast path: both operands exact, one rounding. */
    v = e10 < 0 ? (double)m / pow10_exact[-e10] : (double)m * pow10_exact[e10];
  } else {
    /* strtod on a copy, with the '.' in the C library's current locale */
    const char *dp = decimal_point();
    size_t dpl = strlen(dp), n = (size_t)(p - s);
    char small[96], *buf = small;
    if (n + dpl + 1 > sizeof small) {
      if (rd__buf_reserve(d->sb, n + dpl + 1) != RD_OK) return fail_nomem(d);
      buf = d->sb->data;
    }
    size_t o = 0;
    for (const unsigned char *q = s; q < p; q++) {
      if (*q == '.') {
        memcpy(buf + o, dp, dpl);
        o += dpl;
      } else {
        buf[o++] = (char)*q;
      }
    }
    buf[o] = '\0';
    v = strtod(buf, NULL);
    if (isinf(v)) return fail(d, s, "number out of range (above 1.8e308)");
    neg = 0;                           /* the sign was in the text */
  }
  lua_pushnumber(d->L, neg ? -v : v);
  d->top++;
  return 1;
}

static int dec_literal(dec *d) {
  const unsigned char *p = d->p;
  size_t left = (size_t)(d->end - p);
  if (*p == 't' && left >= 4 && !memcmp(p, "true", 4)) {
    lua_pushboolean(d->L, 1);
    d->p += 4;
  } else if (*p == 'f' && left >= 5 && !memcmp(p, "false", 5)) {
    lua_pushboolean(d->L, 0);
    d->p += 5;
  } else if (*p == 'n' && left >= 4 && !memcmp(p, "null", 4)) {
    lua_pushlightuserdata(d->L, RD_JSON_NULL);
    d->p += 4;
  } else {
    return fail_expected(d, p, "a value");
  }
  d->top++;
  return 1;
}

/* Make sure the stack has room for a few more slots (a key, a value, a
 * nested placeholder and what the API calls need). */
static inline int dec_room(dec *d) {
  int top = d->top;
  if (top + 4 <= d->room) return 1;
  if (!lua_checkstack(d->L, 64))
    return fail(d, d->p, "nesting too deep for the Lua stack");
  d->room = top + 64;
  return 1;
}

/* Create the table of `f` from its pending members (everything above its
 * slot), with room for `extra` more, and put it in the slot. */
static void dec_build(dec *d, frame *f, int extra) {
  lua_State *L = d->L;
  int slot = f->slot, top = d->top;
  assert(top == lua_gettop(L));
  if (f->obj) {
    lua_createtable(L, 0, (top - slot) / 2 + extra);
    lua_replace(L, slot);
    /* in document order, so that the last of duplicate keys wins */
    for (int i = slot + 1; i < top; i += 2) {
      lua_pushvalue(L, i);
      lua_pushvalue(L, i + 1);
      lua_rawset(L, slot);
    }
  } else {
    int n = top - slot;
    lua_createtable(L, n + extra, 0);
    lua_pushvalue(L, d->mt);
    lua_setmetatable(L, -2);
    lua_replace(L, slot);
    for (int i = n; i >= 1; i--) lua_rawseti(L, slot, i);   /* pops each */
  }
  lua_settop(L, slot);
  d->top = slot;
  f->built = 1;
}

/* Open a container at d->p ('[' or '{'); depth is the number already open.
 * Pushes its placeholder. */
static int dec_open(dec *d, int depth, int is_obj) {
  lua_State *L = d->L;
  if (depth >= d->max_depth)
    return fail(d, d->p, "nesting deeper than %d levels", d->max_depth);
  frame *f = &d->frames[depth];
  lua_pushnil(L);
  f->slot = ++d->top;
  f->built = 0;
  f->obj = is_obj;
  f->n = 0;
  f->kslot = -1;
  f->pslot = -1;
  if (f->slot > d->budget) dec_build(d, f, 4);
  d->p++;
  return 1;
}

static inline uint64_t load8(const unsigned char *p) {
  uint64_t w;
  memcpy(&w, p, 8);
  return w;
}

static int kc_gc(lua_State *L) {
  keycache *kc = lua_touserdata(L, 1);
  if (kc) rd__buf_free(&kc->sb);
  return 0;
}

/* Make the string cache of the running decode closure (upvalues 2 and 3);
 * leaves the stack as it was. */
static keycache *kc_new(lua_State *L) {
  keycache *kc = lua_newuserdata(L, sizeof *kc);
  memset(kc, 0, sizeof *kc);
  for (int i = 0; i < 2 * KC_SLOTS; i++) kc->e[i].next = -1;
  luaL_getmetatable(L, KC_MT);
  if (!lua_istable(L, -1)) {              /* rd__json_init not yet run */
    lua_pop(L, 1);
    rd__json_init(L);
    luaL_getmetatable(L, KC_MT);
  }
  lua_setmetatable(L, -2);
  lua_replace(L, lua_upvalueindex(2));
  lua_createtable(L, 2 * KC_SLOTS, 0);
  lua_replace(L, lua_upvalueindex(3));
  return kc;
}

/* The key cache of this state: made on first use. */
static keycache *kc_get(dec *d) {
  lua_State *L = d->L;
  keycache *kc = lua_touserdata(L, lua_upvalueindex(2));
  if (!kc) {
    kc = kc_new(L);
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_replace(L, d->kt);
  }
  return kc;
}

/* d->p is just past a string's opening quote. Pushes the string: from the
 * half `half` (KC_KEYS or KC_VALUES) of the string cache when it is 1..16
 * bytes of plain ASCII (16 bytes of input readable from its start), else as
 * any string. */
static int dec_cached_string(dec *d, uint32_t half) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const unsigned char *s = d->p;
  if (d->end - s >= 16 && !d->kc_off) {
    uint64_t w0 = load8(s), w1 = load8(s + 8), m = word_stops(w0);
    size_t n;
    if (m) {
      n = (size_t)__builtin_ctzll(m) >> 3;
      if (n == 0 || s[n] != '"') return dec_string(d);
      w0 &= ~UINT64_C(0) >> (64 - 8 * n);
      w1 = 0;
    } else {
      m = word_stops(w1);
      if (!m) return dec_string(d);
      n = 8 + ((size_t)__builtin_ctzll(m) >> 3);
      if (s[n] != '"') return dec_string(d);
      w1 = n == 8 ? 0 : w1 & (~UINT64_C(0) >> (64 - 8 * (n - 8)));
    }
    keycache *kc = d->kc;
    if (!kc) kc = d->kc = kc_get(d);
    uint64_t h = (w0 ^ (w1 * UINT64_C(0x9E3779B97F4A7C15)) ^ n) * UINT64_C(0xC2B2AE3D27D4EB4F);
    uint32_t i = half + ((uint32_t)(h >> 52) & (KC_SLOTS - 1));
    d->last_slot = (int)i;
    if (kc->e[i].w0 == w0 && kc->e[i].w1 == w1 && kc->e[i].len == n) {
      lua_rawgeti(d->L, d->kt, (int)i + 1);
    } else {
      lua_pushlstring(d->L, (const char *)s, n);
      lua_pushvalue(d->L, -1);
      lua_rawseti(d->L, d->kt, (int)i + 1);
      kc->e[i].w0 = w0;
      kc->e[i].w1 = w1;
      kc->e[i].len = (uint32_t)n;
      kc->e[i].objn = 0;
      kc->e[i].next = -1;
    }
    d->top++;
    d->p = s + n + 1;
    return 1;
  }
#endif
  return dec_string(d);
}

/* The key at d->p (just past its opening quote) when it is the cached key
 * of slot i, the one that followed the object's previous key last time:
 * objects of one shape list their keys in one order, so this costs a
 * compare of the bytes with the cached ones instead of a scan and a hash. Pushes it and returns 1, or
 * returns 0 and leaves everything as it was. */
static inline int dec_expect(dec *d, int i) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const unsigned char *s = d->p;
  keycache *kc = d->kc;
  if (i < 0 || d->end - s < 17) return 0;
  size_t n = kc->e[i].len;                 /* 1..16 bytes of plain ASCII */
  if (n == 0 || s[n] != '"') return 0;     /* 0: an empty slot */
  uint64_t w0 = load8(s), w1 = load8(s + 8);
  if (n < 8) {
    w0 &= ~UINT64_C(0) >> (64 - 8 * n);
    w1 = 0;
  } else if (n == 8) {
    w1 = 0;
  } else if (n < 16) {
    w1 &= ~UINT64_C(0) >> (64 - 8 * (n - 8));
  }
  if (w0 != kc->e[i].w0 || w1 != kc->e[i].w1) return 0;
  lua_rawgeti(d->L, d->kt, i + 1);
  d->top++;
  d->last_slot = i;
  d->p = s + n + 1;
  return 1;
#else
  (void)d;
  (void)i;
  return 0;
#endif
}

/* After '{' or ',' in the object of frame f: parse `"key" :` and leave the
 * key pushed. */
static int dec_key(dec *d, frame *f, int after_comma) {
  d->p = skip_ws(d->p, d->end);
  if (d->p == d->end || *d->p != '"')
    return fail_expected(d, d->p, after_comma
                                      ? "a string key after ',' (no trailing "
                                        "commas)"
                                      : "a string key or '}'");
  d->p++;
  int prev = f->pslot;
  if (prev < 0 || !dec_expect(d, d->kc->e[prev].next)) {
    d->last_slot = -1;
    if (!dec_cached_string(d, KC_KEYS)) return 0;
    if (prev >= 0) d->kc->e[prev].next = d->last_slot;
  }
  f->pslot = d->last_slot;
  d->p = skip_ws(d->p, d->end);
  if (d->p == d->end || *d->p != ':')
    return fail_expected(d, d->p, "':' after an object key");
  d->p++;
  return 1;
}

static int dec_run(dec *d) {
  lua_State *L = d->L;
  const unsigned char *e = d->end;
  int depth = 0;
  int after_comma = 0;   /* a value is expected after ',' in an array */

value:
  if (!dec_room(d)) return 0;
  d->p = skip_ws(d->p, e);
  if (d->p == e) return fail_expected(d, d->p, "a value");
  switch (*d->p) {
    case '"':
      d->p++;
      if (!dec_cached_string(d, KC_VALUES)) return 0;
      break;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      if (!dec_number(d)) return 0;
      break;
    case '[':
      if (!dec_open(d, depth, 0)) return 0;
      depth++;
      d->p = skip_ws(d->p, e);
      if (d->p < e && *d->p == ']') {
        d->p++;
        goto close;
      }
      after_comma = 0;
      goto value;
    case '{':
      if (!dec_open(d, depth, 1)) return 0;
      depth++;
      d->p = skip_ws(d->p, e);
      if (d->p < e && *d->p == '}') {
        d->p++;
        goto close;
      }
      if (!dec_key(d, &d->frames[depth - 1], 0)) return 0;
      {
        /* An object whose first key is in the string cache is made at
         * once, with as many slots as the last object that began with
         * that key had members (the shapes of a tool's parameters
         * repeat), and takes its members directly. */
        frame *of = &d->frames[depth - 1];
        of->kslot = d->last_slot;
        if (!of->built && of->kslot >= 0) {
          uint32_t pred = d->kc->e[of->kslot].objn;
          if (pred) {
            lua_createtable(L, 0, (int)pred);
            lua_replace(L, of->slot);
            of->built = 1;
          }
        }
      }
      after_comma = 0;
      goto value;
    case ']':
      if (after_comma)
        return fail_expected(d, d->p, "a value after ',' (no trailing commas)");
      return fail_expected(d, d->p, "a value");
    default:
      if (!dec_literal(d)) return 0;
      break;
  }
  after_comma = 0;

  /* A value is on top of the stack; add it to the open container. */
  while (depth > 0) {
    frame *f = &d->frames[depth - 1];
    d->p = skip_ws(d->p, e);
    if (f->obj) {
      f->n++;
      if (f->built) {
        lua_rawset(L, f->slot);
        d->top -= 2;
      } else if (d->top > d->budget) {
        dec_build(d, f, (int)f->n);
      }
      if (d->p < e && *d->p == ',') {
        d->p++;
        if (!dec_room(d) || !dec_key(d, f, 1)) return 0;
        goto value;
      }
      if (d->p < e && *d->p == '}') {
        d->p++;
        goto close;
      }
      return fail_expected(d, d->p, "',' or '}' after an object member");
    } else {
      if (f->n >= 0x7FFFFFFF) return fail(d, d->p, "array longer than 2^31-1");
      f->n++;
      if (f->built) {
        lua_rawseti(L, f->slot, (int)f->n);
        d->top--;
      } else if (d->top > d->budget) {
        dec_build(d, f, (int)f->n);
      }
      if (d->p < e && *d->p == ',') {
        d->p++;
        after_comma = 1;
        goto value;
      }
      if (d->p < e && *d->p == ']') {
        d->p++;
        goto close;
      }
      return fail_expected(d, d->p, "',' or ']' after an array element");
    }
  close:
    /* the container at depth-1 is complete: its table becomes the value */
    {
      frame *cf = &d->frames[depth - 1];
      if (!cf->built) dec_build(d, cf, 0);
      /* remember its size for the next object with this first key, unless
       * it is too big to be worth allocating in advance */
      if (cf->kslot >= 0)
        d->kc->e[cf->kslot].objn = cf->n <= KC_MAX_OBJN ? cf->n : 0;
    }
    depth--;
    after_comma = 0;
  }
  d->p = skip_ws(d->p, e);
  if (d->p != e) return fail_expected(d, d->p, "the end of input after the value");
  return 1;
}

/* Run a decode in the running C function, a closure whose upvalues are the
 * array metatable (1) and the string cache (2: userdata, 3: table; false
 * until made). Returns 1 with the value on top, or 0 (d->rc). */
static int dec_go(lua_State *L, dec *d) {
  d->mt = lua_upvalueindex(1);
  lua_pushvalue(L, lua_upvalueindex(3));   /* the key cache's table */
  d->kt = lua_gettop(L);
  d->kc_off = lua_gethook(L) != NULL;
  d->top = d->room = lua_gettop(L);
  /* Room for every level's own slots (at most three each) above the
   * pending members, within what LuaJIT allows a C function. */
  d->budget = LUAI_MAXCSTACK - 3 * d->max_depth - 80;
  return dec_run(d);
}

/* The protected body of rd__json_decode. */
static int decode_protected(lua_State *L) {
  dec_call *c = lua_touserdata(L, 1);
  return dec_go(L, &c->d) ? 1 : 0;
}

int rd__json_decode(lua_State *L, const char *text, size_t len,
                    const rd_json_opts *opts, rd_error *err) {
  frame frames_small[RD_JSON_MAX_DEPTH];
  dec_call c;
  memset(&c, 0, sizeof c);
  if (!text && len) return rd_error_set(err, RD_EINVAL, "decode: NULL text");
  if (!text) text = "";
  c.d.L = L;
  c.d.start = c.d.p = (const unsigned char *)text;
  c.d.end = c.d.start + len;
  c.d.max_depth = effective_depth(opts);
  c.d.err = err;
  c.d.rc = RD_OK;
  rd_buf sb = RD_BUF_INIT;
  c.d.sb = &sb;
  rd_error_clear(err);
  if (c.d.max_depth <= RD_JSON_MAX_DEPTH) {
    c.d.frames = frames_small;
  } else {
    c.d.frames = rd__malloc(sizeof(frame) * (size_t)c.d.max_depth);
    if (!c.d.frames)
      return rd_error_set(err, RD_ENOMEM, "out of memory while decoding JSON");
  }
  if (!lua_checkstack(L, 3)) {
    if (c.d.frames != frames_small) rd__freemem(c.d.frames);
    return rd_error_set(err, RD_ENOMEM, "decode: Lua stack full");
  }
  lua_pushlightuserdata(L, &decode_fn_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isfunction(L, -1)) {       /* rd__json_init was never called */
    lua_pop(L, 1);
    rd__json_init(L);
    push_entry(L, &decode_fn_key, decode_protected, 1);
  }
  lua_pushlightuserdata(L, &c);
  int st = lua_pcall(L, 1, 1, 0);
  rd__buf_free(&sb);
  if (c.d.frames != frames_small) rd__freemem(c.d.frames);
  if (st != 0) {
    const char *msg = lua_tostring(L, -1);
    int rc = st == LUA_ERRMEM ? RD_ENOMEM : RD_EINTERNAL;
    rd_error_set(err, rc, "decoding JSON: %s", msg ? msg : "error");
    lua_pop(L, 1);
    return rc;
  }
  if (c.d.rc != RD_OK) {
    lua_pop(L, 1);
    return c.d.rc;
  }
  return RD_OK;
}

void rd__json_push_decoder(lua_State *L, lua_CFunction fn) {
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    rd__json_init(L);
    luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  }
  lua_pushboolean(L, 0);            /* the string cache, made on first use */
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, fn, 3);
}

/* No protected call: nothing here owns memory that a Lua error (running
 * out of memory, or an error raised by a finalizer that the collector runs
 * in an allocation) could leak, since the scratch buffer belongs to the
 * cache's userdata and the frames are on the C stack. */
int rd__json_decode_here(lua_State *L, const char *text, size_t len,
                         const rd_json_opts *opts, rd_error *err) {
  int max_depth = effective_depth(opts);
  if (max_depth > RD_JSON_MAX_DEPTH || lua_gethook(L) != NULL)
    return rd__json_decode(L, text, len, opts, err);
  if (!text && len) return rd_error_set(err, RD_EINVAL, "decode: NULL text");
  if (!text) text = "";
  rd_error_clear(err);
  if (!lua_checkstack(L, 4)) return rd_error_set(err, RD_ENOMEM, "decode: Lua stack full");
  int base = lua_gettop(L);
  keycache *kc = lua_touserdata(L, lua_upvalueindex(2));
  if (!kc) kc = kc_new(L);
  frame frames[RD_JSON_MAX_DEPTH];
  dec d;
  memset(&d, 0, sizeof d);
  d.L = L;
  d.start = d.p = (const unsigned char *)text;
  d.end = d.start + len;
  d.max_depth = max_depth;
  d.err = err;
  d.rc = RD_OK;
  d.frames = frames;
  d.kc = kc;
  d.sb = &kc->sb;
  kc->sb.len = 0;
  kc->sb.oom = 0;
  int ok = dec_go(L, &d);
  if (kc->sb.cap > 65536) rd__buf_free(&kc->sb);
  if (!ok) {
    lua_settop(L, base);
    return d.rc;
  }
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  return RD_OK;
}

/* ---- encoding ------------------------------------------------------------- */

/* Bytes a string scan stops at: 1 = escape, 2 = non-ASCII (check UTF-8). */
static const unsigned char str_esc[256] = {
  1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
  2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
  2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
  2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
};

enum { KEY_NONE, KEY_STRING, KEY_INDEX, KEY_NUMBER };

/* One open table: its identity (cycles) and the member being written
 * (the JSON pointer of an error). */
typedef struct enc_level {
  const void *table;
  int key_kind;
  const char *key;
  size_t klen;
  double num;       /* KEY_INDEX: 0-based index; KEY_NUMBER: the key */
} enc_level;

/* A key collected for sort_keys. */
typedef struct enc_key {
  const char *s;    /* string key (borrowed from the table), or NULL */
  size_t len;
  double num;       /* number key (object-marked tables) */
  char nb[32];      /* number key in text form */
} enc_key;

typedef struct enc {
  lua_State *L;
  rd_buf *out;
  int max_depth, sort_keys, pretty, binary;
  rd_error *err;
  int rc;
  const void *array_mt, *object_mt;
  enc_level *lv;
  enc_key *keys;
  size_t nkeys, capkeys;
  enc_key *keys_small;  /* the caller's array keys starts in (not freed) */
} enc;

/* Keys an encode gathers before it needs the heap (sorted objects): a
 * small result is encoded without a malloc for them. */
#define ENC_KEYS_SMALL 16

typedef struct enc_call {
  enc e;
} enc_call;

static inline void bput(rd_buf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap && rd__buf_reserve(b, n) != RD_OK) return;
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static inline void bputc(rd_buf *b, char c) {
  if (b->len + 2 > b->cap && rd__buf_reserve(b, 1) != RD_OK) return;
  b->data[b->len++] = c;
}

static void newline(enc *e, int level) {
  rd_buf *b = e->out;
  size_t n = 1 + 2 * (size_t)level;
  if (b->len + n + 1 > b->cap && rd__buf_reserve(b, n) != RD_OK) return;
  b->data[b->len] = '\n';
  memset(b->data + b->len + 1, ' ', n - 1);
  b->len += n;
}

/* The double that the %g output `s` reads back as: exact in Clinger's fast
 * path (at most 2^53 in the digits, a power of ten up to 1e22), else strtod
 * (same locale as the snprintf that wrote it). */
static double read_back(const char *s) {
  const char *p = s;
  uint64_t m = 0;
  int nd = 0, neg = 0;
  long e10 = 0;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  for (; *p >= '0' && *p <= '9'; p++, nd++) m = m * 10 + (uint64_t)(*p - '0');
  if (*p && *p != 'e') {                 /* the decimal point, any locale */
    while (*p && *p != 'e' && (*p < '0' || *p > '9')) p++;
    for (; *p >= '0' && *p <= '9'; p++, nd++, e10--) m = m * 10 + (uint64_t)(*p - '0');
  }
  if (*p == 'e') {
    long x = 0;
    int eneg = 0;
    p++;
    if (*p == '+' || *p == '-') eneg = *p++ == '-';
    for (; *p >= '0' && *p <= '9'; p++) x = x * 10 + (*p - '0');
    e10 += eneg ? -x : x;
  }
  if (*p || nd > 19 || m > (uint64_t)1 << 53 || e10 < -22 || e10 > 22)
    return strtod(s, NULL);
  double v = e10 < 0 ? (double)m / pow10_exact[-e10] : (double)m * pow10_exact[e10];
  return neg ? -v : v;
}

/* Fast path of fmt_number for values with at most 15 significant digits
 * and a few decimals (prices, 0.1, 123.456): if r / 10^k == |x| for an
 * integer r < 10^15, then "r with k decimals" reads back as x, and it is
 * also what %.15g prints (x is within half an ulp of it, far inside the
 * rounding interval of 15 digits). Returns 0 when it does not apply. */
static size_t fmt_short_decimal(char *buf, double x) {
  double a = fabs(x);
  if (!(a >= 1e-4 && a < 1e15)) return 0;    /* %g's fixed-notation range */
  for (int k = 1; k <= 15; k++) {
    double y = a * pow10_exact[k];
    if (y >= 1e15) return 0;
    double r = floor(y + 0.5);
    if (r / pow10_exact[k] != a) continue;
    char tmp[24];
    uint64_t u = (uint64_t)r;
    int n = 0;
    while (u || n <= k) {                     /* at least one digit before '.' */
      tmp[n++] = (char)('0' + u % 10);
      u /= 10;
    }
    size_t o = 0;
    if (x < 0) buf[o++] = '-';
    while (n > k) buf[o++] = tmp[--n];
    buf[o++] = '.';
    while (n) buf[o++] = tmp[--n];
    buf[o] = '\0';
    return o;
  }
  return 0;
}

/* Text of a finite number: integers up to 2^53 in full, others in the
 * shortest of %.15g/%.16g/%.17g that reads back the same. Writes at most 31
 * bytes to buf and returns the length. */
static size_t fmt_number(char *buf, double x) {
  if (floor(x) == x && fabs(x) <= TWO_53) {
    char tmp[24];
    int64_t v = (int64_t)x;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    size_t n = 0, o = 0;
    do {
      tmp[n++] = (char)('0' + u % 10);
      u /= 10;
    } while (u);
    if (v < 0) buf[o++] = '-';
    while (n) buf[o++] = tmp[--n];
    buf[o] = '\0';
    return o;
  }
  size_t fast = fmt_short_decimal(buf, x);
  if (fast) return fast;
  char raw[40];
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(raw, sizeof raw, "%.*g", prec, x);
    if (prec == 17 || read_back(raw) == x) break;
  }
  /* The locale's decimal point (whatever its bytes) becomes '.'. */
  size_t o = 0;
  for (const char *q = raw; *q; q++) {
    char c = *q;
    if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e' || c == 'E') {
      buf[o++] = c;
    } else if (o == 0 || buf[o - 1] != '.') {
      buf[o++] = '.';
    }
  }
  buf[o] = '\0';
  return o;
}

size_t rd__json_fmt_number(char *buf, double x) { return fmt_number(buf, x); }

/* Write the JSON pointer of the value being encoded (nlev open tables). */
static void fmt_pointer(const enc *e, int nlev, char *out, size_t n) {
  size_t o = 0;
  if (nlev == 0) {
    snprintf(out, n, "the root");
    return;
  }
  for (int i = 0; i < nlev && o + 8 < n; i++) {
    const enc_level *l = &e->lv[i];
    out[o++] = '/';
    if (l->key_kind == KEY_STRING) {
      for (size_t j = 0; j < l->klen && o + 8 < n; j++) {
        char c = l->key[j];
        if (c == '~' || c == '/') {
          out[o++] = '~';
          out[o++] = c == '~' ? '0' : '1';
        } else {
          out[o++] = c;
        }
      }
    } else if (l->key_kind == KEY_INDEX || l->key_kind == KEY_NUMBER) {
      char nb[32];
      size_t k = fmt_number(nb, l->num);
      if (o + k + 8 < n) {
        memcpy(out + o, nb, k);
        o += k;
      }
    }
  }
  if (o + 8 >= n) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
}

static int efail(enc *e, int nlev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int efail(enc *e, int nlev, const char *fmt, ...) {
  char why[160], ptr[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  fmt_pointer(e, nlev, ptr, sizeof ptr);
  e->rc = rd_error_set(e->err, RD_EJSON, "cannot encode value at %s: %s", ptr,
                       why);
  return 0;
}

static int enomem(enc *e) {
  e->rc = rd_error_set(e->err, RD_ENOMEM, "out of memory while encoding JSON");
  return 0;
}

/* Quoted, escaped string. Returns 0 and *bad = offset on invalid UTF-8. */
static int put_string(rd_buf *b, const char *str, size_t len, size_t *bad) {
  static const char hexd[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)str, *end = s + len;
  const unsigned char *p = s, *run = s;
  if (b->len + len + 3 > b->cap && rd__buf_reserve(b, len + 2) != RD_OK)
    return 1;   /* oom is reported by the caller */
  b->data[b->len++] = '"';
  for (;;) {
    while (p < end && !str_esc[*p]) p++;
    if (p == end) break;
    unsigned c = *p;
    if (c >= 0x80) {
      size_t n = utf8_seq(p, end);
      if (!n) {
        *bad = (size_t)(p - s);
        return 0;
      }
      if (n == 3 && c == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
        bput(b, run, (size_t)(p - run));
        bput(b, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
        p += 3;
        run = p;
        continue;
      }
      p += n;
      continue;
    }
    bput(b, run, (size_t)(p - run));
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t n = 2;
    switch (c) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\n': esc[1] = 'n'; break;
      case '\t': esc[1] = 't'; break;
      case '\r': esc[1] = 'r'; break;
      case '\b': esc[1] = 'b'; break;
      case '\f': esc[1] = 'f'; break;
      default:
        esc[1] = 'u';
        esc[2] = '0';
        esc[3] = '0';
        esc[4] = hexd[c >> 4];
        esc[5] = hexd[c & 15];
        n = 6;
    }
    bput(b, esc, n);
    run = ++p;
  }
  bput(b, run, (size_t)(p - run));
  bputc(b, '"');
  return 1;
}

static int enc_value(enc *e, int idx, int nlev);

/* A binary string (opts->binary): its base64, quoted. put_string may have
 * written part of the string: the caller's buffer is cut back first. */
static int put_base64(enc *e, const char *s, size_t len) {
  rd_buf *b = e->out;
  size_t n = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
  if (b->len + n + 3 > b->cap && rd__buf_reserve(b, n + 2) != RD_OK) return enomem(e);
  b->data[b->len++] = '"';
  sodium_bin2base64(b->data + b->len, n, (const unsigned char *)s, len,
                    sodium_base64_VARIANT_ORIGINAL);
  b->len += n - 1;   /* n counts the NUL */
  b->data[b->len++] = '"';
  return 1;
}

int rd__json_marker(lua_State *L, int idx, const void *array_mt, const void *object_mt) {
  int kind = 0;
  if (!lua_getmetatable(L, idx)) return 0;
  const void *mt = lua_topointer(L, -1);
  if (mt == array_mt) {
    kind = 'a';
  } else if (mt == object_mt) {
    kind = 'o';
  } else {
    lua_pushliteral(L, "__jsontype");
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *t = lua_tostring(L, -1);
      if (!strcmp(t, "array")) kind = 'a';
      else if (!strcmp(t, "object")) kind = 'o';
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return kind;
}

/* Marker of the table at idx: 'a' array, 'o' object, 0 none. */
static int table_marker(enc *e, int idx) {
  return rd__json_marker(e->L, idx, e->array_mt, e->object_mt);
}

static int is_index(double k) {
  return k >= 1 && k <= TWO_53 && floor(k) == k;
}

/* Check that the table at idx has exactly the keys 1..n; *n gets n. */
static int array_length(enc *e, int idx, int nlev, size_t *n) {
  lua_State *L = e->L;
  size_t count = 0;
  double max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int kt = lua_type(L, -1);
    if (kt == LUA_TNUMBER) {
      double k = lua_tonumber(L, -1);
      if (!is_index(k)) {
        char nb[32];
        if (isfinite(k)) fmt_number(nb, k);
        else snprintf(nb, sizeof nb, "%s", k > 0 ? "inf" : "-inf");
        return efail(e, nlev, "table key %s is neither a string nor an array "
                              "index", nb);
      }
      count++;
      if (k > max) max = k;
    } else if (kt == LUA_TSTRING) {
      return efail(e, nlev, "table mixes array and object keys");
    } else {
      return efail(e, nlev, "table key of type %s", lua_typename(L, kt));
    }
  }
  if ((double)count != max)
    return efail(e, nlev, "sparse array (%zu elements, largest index %.0f)",
                 count, max);
  *n = count;
  return 1;
}

static int enc_array(enc *e, int idx, int nlev, size_t n) {
  lua_State *L = e->L;
  rd_buf *b = e->out;
  enc_level *l = &e->lv[nlev];
  bputc(b, '[');
  l->key_kind = KEY_INDEX;
  for (size_t i = 1; i <= n; i++) {
    if (i > 1) bputc(b, ',');
    if (e->pretty) newline(e, nlev + 1);
    l->num = (double)(i - 1);
    lua_rawgeti(L, idx, (int)i);
    if (!enc_value(e, lua_gettop(L), nlev + 1)) return 0;
    lua_pop(L, 1);
  }
  if (e->pretty && n) newline(e, nlev);
  bputc(b, ']');
  l->key_kind = KEY_NONE;
  return 1;
}

/* Write the key at stack top (string, or number if `numkeys`). */
static int put_key(enc *e, int nlev, int numkeys) {
  lua_State *L = e->L;
  enc_level *l = &e->lv[nlev];
  int kt = lua_type(L, -1);
  if (kt == LUA_TSTRING) {
    size_t len, bad;
    const char *s = lua_tolstring(L, -1, &len);
    if (!put_string(e->out, s, len, &bad))
      return efail(e, nlev, "invalid UTF-8 in object key at byte %zu", bad);
    l->key_kind = KEY_STRING;
    l->key = s;
    l->klen = len;
  } else if (kt == LUA_TNUMBER && numkeys) {
    double k = lua_tonumber(L, -1);
    char nb[32];
    if (!isfinite(k))
      return efail(e, nlev, "table key %s is not finite", k > 0 ? "inf" : "-inf");
    size_t n = fmt_number(nb, k);
    bputc(e->out, '"');
    bput(e->out, nb, n);
    bputc(e->out, '"');
    l->key_kind = KEY_NUMBER;
    l->num = k;
  } else if (kt == LUA_TNUMBER) {
    return efail(e, nlev, "table mixes array and object keys");
  } else {
    return efail(e, nlev, "table key of type %s", lua_typename(L, kt));
  }
  if (e->pretty) bput(e->out, ": ", 2);
  else bputc(e->out, ':');
  return 1;
}

static int key_cmp(const void *a, const void *b) {
  const enc_key *x = a, *y = b;
  const char *xs = x->s ? x->s : x->nb, *ys = y->s ? y->s : y->nb;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(xs, ys, n);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

static int enc_object_sorted(enc *e, int idx, int nlev, int numkeys) {
  lua_State *L = e->L;
  rd_buf *b = e->out;
  enc_level *l = &e->lv[nlev];
  size_t base = e->nkeys;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (e->nkeys == e->capkeys) {
      size_t cap = e->capkeys ? e->capkeys * 2 : 32;
      enc_key *k;
      if (e->keys && e->keys == e->keys_small) {
        k = rd__malloc(cap * sizeof *k);
        if (k) memcpy(k, e->keys, e->nkeys * sizeof *k);
      } else {
        k = rd__realloc(e->keys, cap * sizeof *k);
      }
      if (!k) return enomem(e);
      e->keys = k;
      e->capkeys = cap;
    }
    enc_key *k = &e->keys[e->nkeys];
    int kt = lua_type(L, -1);
    if (kt == LUA_TSTRING) {
      k->s = lua_tolstring(L, -1, &k->len);  /* kept alive by the table */
    } else if (kt == LUA_TNUMBER && numkeys) {
      k->s = NULL;
      k->num = lua_tonumber(L, -1);
      if (!isfinite(k->num))
        return efail(e, nlev, "table key %s is not finite",
                     k->num > 0 ? "inf" : "-inf");
      k->len = fmt_number(k->nb, k->num);
    } else if (kt == LUA_TNUMBER) {
      return efail(e, nlev, "table mixes array and object keys");
    } else {
      return efail(e, nlev, "table key of type %s", lua_typename(L, kt));
    }
    e->nkeys++;
  }
  size_t n = e->nkeys - base;
  if (n > 1) qsort(e->keys + base, n, sizeof *e->keys, key_cmp); /* keys is NULL for {} */
  bputc(b, '{');
  for (size_t i = 0; i < n; i++) {
    enc_key *k = &e->keys[base + i];   /* re-read: children may realloc */
    if (i) bputc(b, ',');
    if (e->pretty) newline(e, nlev + 1);
    if (k->s) lua_pushlstring(L, k->s, k->len);
    else lua_pushnumber(L, k->num);
    if (!put_key(e, nlev, numkeys)) return 0;
    lua_rawget(L, idx);   /* key at top -> value; l->key stays valid (table) */
    if (!enc_value(e, lua_gettop(L), nlev + 1)) return 0;
    lua_pop(L, 1);
  }
  if (e->pretty && n) newline(e, nlev);
  bputc(b, '}');
  e->nkeys = base;
  l->key_kind = KEY_NONE;
  return 1;
}

/* Object whose first key has been seen to be a string (or marked). */
static int enc_object(enc *e, int idx, int nlev, int numkeys) {
  lua_State *L = e->L;
  rd_buf *b = e->out;
  if (e->sort_keys) return enc_object_sorted(e, idx, nlev, numkeys);
  int first = 1;
  bputc(b, '{');
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!first) bputc(b, ',');
    if (e->pretty) newline(e, nlev + 1);
    lua_pushvalue(L, -2);
    if (!put_key(e, nlev, numkeys)) return 0;
    lua_pop(L, 1);
    if (!enc_value(e, lua_gettop(L), nlev + 1)) return 0;
    lua_pop(L, 1);
    first = 0;
  }
  if (e->pretty && !first) newline(e, nlev);
  bputc(b, '}');
  e->lv[nlev].key_kind = KEY_NONE;
  return 1;
}

static int enc_table(enc *e, int idx, int nlev) {
  lua_State *L = e->L;
  const void *t = lua_topointer(L, idx);
  for (int i = 0; i < nlev; i++)
    if (e->lv[i].table == t) return efail(e, nlev, "cycle");
  if (nlev >= e->max_depth)
    return efail(e, nlev, "table nested deeper than %d levels", e->max_depth);
  if (!lua_checkstack(L, 6))
    return efail(e, nlev, "table nested too deep for the Lua stack");
  e->lv[nlev].table = t;
  e->lv[nlev].key_kind = KEY_NONE;
  int marker = table_marker(e, idx);
  size_t n;
  int ok;
  if (marker == 'a') {
    ok = array_length(e, idx, nlev, &n) && enc_array(e, idx, nlev, n);
  } else if (marker == 'o') {
    ok = enc_object(e, idx, nlev, 1);
  } else {
    lua_pushnil(L);
    if (!lua_next(L, idx)) {
      bput(e->out, "{}", 2);
      ok = 1;
    } else {
      int kt = lua_type(L, -2);
      lua_pop(L, 2);
      if (kt == LUA_TNUMBER)
        ok = array_length(e, idx, nlev, &n) && enc_array(e, idx, nlev, n);
      else
        ok = enc_object(e, idx, nlev, 0);
    }
  }
  e->lv[nlev].table = NULL;
  if (ok && e->out->oom) return enomem(e);
  return ok;
}

static int enc_value(enc *e, int idx, int nlev) {
  lua_State *L = e->L;
  int t = lua_type(L, idx);
  switch (t) {
    case LUA_TNIL:
      bput(e->out, "null", 4);
      return 1;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) bput(e->out, "true", 4);
      else bput(e->out, "false", 5);
      return 1;
    case LUA_TNUMBER: {
      double x = lua_tonumber(L, idx);
      char nb[32];
      if (isnan(x)) return efail(e, nlev, "NaN");
      if (isinf(x)) return efail(e, nlev, "%s", x > 0 ? "infinity" : "-infinity");
      size_t n = fmt_number(nb, x);
      bput(e->out, nb, n);
      return 1;
    }
    case LUA_TSTRING: {
      size_t len, bad;
      const char *s = lua_tolstring(L, idx, &len);
      size_t at = e->out->len;
      if (!put_string(e->out, s, len, &bad)) {
        e->out->len = at;
        if (!e->binary)
          return efail(e, nlev, "invalid UTF-8 in string at byte %zu", bad);
        return put_base64(e, s, len);
      }
      return 1;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == RD_JSON_NULL) {
        bput(e->out, "null", 4);
        return 1;
      }
      return efail(e, nlev, "lightuserdata");
    case LUA_TTABLE:
      return enc_table(e, idx, nlev);
    default:
      return efail(e, nlev, "%s", lua_typename(L, t));
  }
}

static int encode_protected(lua_State *L) {
  enc_call *c = lua_touserdata(L, 1);
  enc *e = &c->e;
  rd__json_markers(L, &e->array_mt, &e->object_mt);
  if (!e->array_mt) {
    rd__json_init(L);
    rd__json_markers(L, &e->array_mt, &e->object_mt);
  }
  if (enc_value(e, 2, 0) && e->out->oom) enomem(e);
  return 0;
}

int rd__json_encode(lua_State *L, int idx, rd_buf *out,
                    const rd_json_opts *opts, rd_error *err) {
  enc_level lv_small[RD_JSON_MAX_DEPTH];
  enc_key keys_small[ENC_KEYS_SMALL];
  enc_call c;
  size_t orig = out->len;
  rd_error_clear(err);
  if (out->oom)
    return rd_error_set(err, RD_ENOMEM, "out of memory while encoding JSON");
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  memset(&c, 0, sizeof c);
  c.e.L = L;
  c.e.out = out;
  c.e.max_depth = effective_depth(opts);
  c.e.sort_keys = opts ? opts->sort_keys : 0;
  c.e.pretty = opts ? opts->pretty : 0;
  c.e.binary = opts ? opts->binary : 0;
  if (opts && opts->canonical) {
    c.e.sort_keys = 1;
    c.e.pretty = 0;
  }
  c.e.err = err;
  c.e.rc = RD_OK;
  c.e.keys = c.e.keys_small = keys_small;
  c.e.capkeys = ENC_KEYS_SMALL;
  if (c.e.max_depth <= RD_JSON_MAX_DEPTH) {
    c.e.lv = lv_small;
  } else {
    c.e.lv = rd__malloc(sizeof(enc_level) * (size_t)c.e.max_depth);
    if (!c.e.lv)
      return rd_error_set(err, RD_ENOMEM, "out of memory while encoding JSON");
  }
  int rc;
  if (!lua_checkstack(L, 4)) {
    rc = rd_error_set(err, RD_ENOMEM, "encode: Lua stack full");
  } else {
    push_entry(L, &encode_fn_key, encode_protected, 0);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, idx);
    int st = lua_pcall(L, 2, 0, 0);
    if (st != 0) {
      const char *msg = lua_tostring(L, -1);
      rc = st == LUA_ERRMEM ? RD_ENOMEM : RD_EINTERNAL;
      rd_error_set(err, rc, "encoding JSON: %s", msg ? msg : "error");
      lua_pop(L, 1);
    } else {
      rc = c.e.rc;
    }
  }
  if (c.e.keys != keys_small) rd__freemem(c.e.keys);
  if (c.e.lv != lv_small) rd__freemem(c.e.lv);
  if (rc != RD_OK) {
    out->len = orig;
  }
  if (out->data && out->len < out->cap) out->data[out->len] = '\0';
  return rc;
}

/* ---- the encoder's table rule, for is_array ----------------------------- */

int rd__json_is_array(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  enc e;
  memset(&e, 0, sizeof e);
  e.L = L;
  luaL_checkstack(L, 4, "json.is_array");
  rd__json_markers(L, &e.array_mt, &e.object_mt);
  int marker = table_marker(&e, idx);
  if (marker) return marker == 'a';
  size_t count = 0;
  double max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER || !is_index(lua_tonumber(L, -1))) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
    if (lua_tonumber(L, -1) > max) max = lua_tonumber(L, -1);
  }
  return count > 0 && (double)count == max;
}
