/*
 * pattern.c — Lua patterns with a step budget, and size-checked string.rep
 * and table.concat. See pattern.h.
 *
 * Written from the Lua 5.1 reference manual (§5.4.1 "Patterns", §5.4
 * string.find/match/gmatch/gsub); where the manual is silent (init past the
 * end, numbers out of range, the recursion limit, which patterns count as
 * plain text, '%' at the end of a replacement) the behaviour is LuaJIT
 * 2.1's as observed, and spec/pattern_spec.lua compares the two.
 */
#include "sandbox/pattern.h"

#include "rd.h"
#include "sandbox/lstate.h"

#include <lauxlib.h>
#include <string.h>

#define MAX_CAPTURES 32
#define MAX_DEPTH 200          /* nested matcher calls, as LuaJIT's limit */
#define POLL_STEPS 2048        /* matcher steps between two budget checks */
#define LONG_SET 256           /* bytes of a set scanned per step counted */
#define CAP_OPEN (-1)          /* capture started, not closed yet */
#define CAP_POS (-2)           /* position capture () */
#define MAX_STR 0x7fffff00u    /* LuaJIT's largest string */

/* ---- character classes (ASCII, whatever the locale) ------------------------ */

enum { C_ALPHA = 1, C_DIGIT = 2, C_LOWER = 4, C_UPPER = 8, C_SPACE = 16,
       C_CNTRL = 32, C_PUNCT = 64, C_XDIGIT = 128, C_ZERO = 256 };

static unsigned short ctab[256];   /* the classes of each byte */
static unsigned short cmask[256];  /* class letter -> its bits (0: not a class) */

static void ctab_init(void) {
  static int done; /* idempotent: racing threads write the same bytes */
  if (done) return;
  for (int c = 0; c < 256; c++) {
    unsigned short f = 0;
    if (c >= 'a' && c <= 'z') f |= C_ALPHA | C_LOWER;
    if (c >= 'A' && c <= 'Z') f |= C_ALPHA | C_UPPER;
    if (c >= '0' && c <= '9') f |= C_DIGIT;
    if (c == ' ' || (c >= 9 && c <= 13)) f |= C_SPACE;
    if (c < 32 || c == 127) f |= C_CNTRL;
    if (c == 0) f |= C_ZERO;
    if (c > 32 && c < 127 && !(f & (C_ALPHA | C_DIGIT))) f |= C_PUNCT;
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) f |= C_XDIGIT;
    ctab[c] = f;
  }
  static const struct { char letter; unsigned short bits; } classes[] = {
    {'a', C_ALPHA}, {'c', C_CNTRL}, {'d', C_DIGIT}, {'g', C_ALPHA | C_DIGIT | C_PUNCT},
    {'l', C_LOWER}, {'p', C_PUNCT}, {'s', C_SPACE}, {'u', C_UPPER},
    {'w', C_ALPHA | C_DIGIT}, {'x', C_XDIGIT}, {'z', C_ZERO},
  };
  for (size_t i = 0; i < RD_COUNTOF(classes); i++) {
    cmask[(unsigned char)classes[i].letter] = classes[i].bits;
    cmask[(unsigned char)classes[i].letter - 32] = classes[i].bits; /* %A ...: complement */
  }
  done = 1;
}

/* Does byte c belong to class letter cl (the letter after '%')? An
 * upper-case letter is the complement; any other character is itself. */
static inline int in_class(unsigned char c, unsigned char cl) {
  unsigned m = cmask[cl];
  if (!m) return cl == c;
  int r = (ctab[c] & m) != 0;
  return cl < 'a' ? !r : r;
}

/* ---- the matcher -------------------------------------------------------------- */

typedef struct capture {
  const char *at;
  ptrdiff_t len; /* >= 0, CAP_OPEN or CAP_POS */
} capture;

typedef struct mstate {
  lua_State *L;
  const char *s0, *s_end;  /* the subject */
  const char *p_end;       /* the pattern ends at its first NUL (as LuaJIT) */
  int depth, ncap;
  unsigned steps;          /* left until the next budget check */
  capture cap[MAX_CAPTURES];
} mstate;

/* Count `units` steps of work (a matcher call, or bytes scanned / 16);
 * every POLL_STEPS of them, ask the tool state whether to stop. */
static void charge(mstate *m, size_t units) {
  if (m->steps > units) {
    m->steps -= (unsigned)units;
    return;
  }
  m->steps = POLL_STEPS;
  rd__lstate_poll(m->L);
}

static void step(mstate *m) { charge(m, 1); }

/* Past the single-character class at p ('%x', '[set]', or one byte). */
static const char *class_end(mstate *m, const char *p) {
  char c = *p++;
  if (c == '%') {
    if (p >= m->p_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (*p == '^') p++;
    /* the first character of a set is itself even when it is ']' */
    const char *from = p;
    do {
      if (p >= m->p_end) luaL_error(m->L, "malformed pattern (missing ']')");
      if (*p++ == '%' && p < m->p_end) p++;
    } while (*p != ']');
    if (p - from > LONG_SET) charge(m, (size_t)(p - from) / LONG_SET);
    return p + 1;
  }
  return p;
}

/* Does c belong to the set [p, end] (p at '[', end at its ']')? */
static int in_set(unsigned char c, const char *p, const char *end) {
  int yes = 1;
  p++;
  if (*p == '^') {
    yes = 0;
    p++;
  }
  for (; p < end; p++) {
    if (*p == '%' && p + 1 < end) {
      p++;
      if (in_class(c, (unsigned char)*p)) return yes;
    } else if (p[1] == '-' && p + 2 < end) {
      if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return yes;
      p += 2;
    } else if ((unsigned char)*p == c) {
      return yes;
    }
  }
  return !yes;
}

/* Does the byte at s (s < s_end) match the class [p, ep)? */
static int single(mstate *m, const char *s, const char *p, const char *ep) {
  if (s >= m->s_end) return 0;
  unsigned char c = (unsigned char)*s;
  switch (*p) {
    case '.': return 1;
    case '%': return in_class(c, (unsigned char)p[1]);
    case '[':
      /* a set can be as long as the pattern: each test of a long one counts */
      if (ep - p > LONG_SET) charge(m, (size_t)(ep - p) / LONG_SET);
      return in_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
  }
}

static const char *match(mstate *m, const char *s, const char *p);

static const char *match_rest(mstate *m, const char *s, const char *p) {
  const char *r = match(m, s, p);
  m->depth--;
  return r;
}

/* Longest run first ('*' and '+'), giving back one byte at a time. */
static const char *expand_max(mstate *m, const char *s, const char *p, const char *ep) {
  ptrdiff_t n = 0;
  while (single(m, s + n, p, ep)) n++;
  charge(m, (size_t)n >> 4);
  for (; n >= 0; n--) {
    step(m);
    const char *r = match_rest(m, s + n, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* Shortest run first ('-'), taking one more byte at a time. */
static const char *expand_min(mstate *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    step(m);
    const char *r = match_rest(m, s, ep + 1);
    if (r) return r;
    if (!single(m, s, p, ep)) return NULL;
    s++;
  }
}

static const char *open_capture(mstate *m, const char *s, const char *p, ptrdiff_t what) {
  if (m->ncap >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
  m->cap[m->ncap].at = s;
  m->cap[m->ncap].len = what;
  m->ncap++;
  const char *r = match_rest(m, s, p);
  if (!r) m->ncap--;
  return r;
}

static const char *close_capture(mstate *m, const char *s, const char *p) {
  int i = m->ncap - 1;
  while (i >= 0 && m->cap[i].len != CAP_OPEN) i--;
  if (i < 0) luaL_error(m->L, "invalid pattern capture");
  m->cap[i].len = s - m->cap[i].at;
  const char *r = match_rest(m, s, p);
  if (!r) m->cap[i].len = CAP_OPEN;
  return r;
}

static int capture_index(mstate *m, int digit) {
  int i = digit - '1';
  if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
    luaL_error(m->L, "invalid capture index");
  return i;
}

/* %bxy at s: a balanced run from x to its matching y. */
static const char *balanced(mstate *m, const char *s, const char *p) {
  if (p + 1 >= m->p_end) luaL_error(m->L, "unbalanced pattern");
  if (s >= m->s_end || *s != p[0]) return NULL;
  char open = p[0], close = p[1];
  int level = 1;
  const char *from = s;
  while (++s < m->s_end) {
    if (*s == close) {
      if (--level == 0) {
        charge(m, (size_t)(s - from) >> 4);
        return s + 1;
      }
    } else if (*s == open) {
      level++;
    }
  }
  charge(m, (size_t)(s - from) >> 4);
  return NULL;
}

/* Match pattern p at subject position s; the end of the match or NULL.
 * Every call is one level of m->depth (the caller takes it back). */
static const char *match(mstate *m, const char *s, const char *p) {
  if (++m->depth > MAX_DEPTH) luaL_error(m->L, "pattern too complex");
  step(m);
  for (;;) {
    if (p >= m->p_end) return s;
    switch (*p) {
      case '(':
        if (p[1] == ')') return open_capture(m, s, p + 2, CAP_POS);
        return open_capture(m, s, p + 1, CAP_OPEN);
      case ')':
        return close_capture(m, s, p + 1);
      case '$':
        if (p + 1 == m->p_end) return s == m->s_end ? s : NULL;
        break;
      case '%':
        if (p[1] == 'b') {
          s = balanced(m, s, p + 2);
          if (!s) return NULL;
          p += 4;
          continue;
        }
        if (p[1] == 'f') {
          p += 2;
          if (*p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
          const char *ep = class_end(m, p);
          unsigned char before = s == m->s0 ? 0 : (unsigned char)s[-1];
          unsigned char here = s < m->s_end ? (unsigned char)*s : 0;
          if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) return NULL;
          p = ep;
          continue;
        }
        if (p[1] >= '0' && p[1] <= '9') {
          int i = capture_index(m, p[1]);
          ptrdiff_t len = m->cap[i].len;
          if (len < 0 || m->s_end - s < len || memcmp(m->cap[i].at, s, (size_t)len) != 0)
            return NULL;
          charge(m, (size_t)len >> 4);
          s += len;
          p += 2;
          continue;
        }
        break;
      default:
        break;
    }
    /* a single-character class, maybe followed by a quantifier */
    const char *ep = class_end(m, p);
    int hit = single(m, s, p, ep);
    switch (*ep) {
      case '?':
        if (hit) {
          const char *r = match_rest(m, s + 1, ep + 1);
          if (r) return r;
        }
        p = ep + 1;
        continue;
      case '*':
        return expand_max(m, s, p, ep);
      case '+':
        return hit ? expand_max(m, s + 1, p, ep) : NULL;
      case '-':
        return expand_min(m, s, p, ep);
      default:
        if (!hit) return NULL;
        s++;
        p = ep;
        continue;
    }
  }
}

/* Match at s from the top: captures and depth start afresh. */
static const char *match_at(mstate *m, const char *s, const char *p) {
  m->ncap = 0;
  m->depth = 0;
  return match_rest(m, s, p);
}

static void init_state(mstate *m, lua_State *L, const char *s, size_t ls, const char *p) {
  m->L = L;
  m->s0 = s;
  m->s_end = s + ls;
  m->p_end = p + strlen(p);
  m->depth = m->ncap = 0;
  m->steps = POLL_STEPS;
}

/* Push capture i of the match [s, e) (i == 0 without captures: the whole match). */
static void push_capture(mstate *m, int i, const char *s, const char *e) {
  if (i >= m->ncap) {
    if (i != 0) luaL_error(m->L, "invalid capture index");
    lua_pushlstring(m->L, s, (size_t)(e - s));
    return;
  }
  ptrdiff_t len = m->cap[i].len;
  if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
  if (len == CAP_POS) lua_pushinteger(m->L, m->cap[i].at - m->s0 + 1);
  else lua_pushlstring(m->L, m->cap[i].at, (size_t)len);
}

/* Push every capture (or the whole match when s != NULL and there are none). */
static int push_captures(mstate *m, const char *s, const char *e) {
  int n = m->ncap == 0 && s ? 1 : m->ncap;
  luaL_checkstack(m->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(m, i, s, e);
  return n;
}

/* ---- arguments ------------------------------------------------------------------ */

/* A number as LuaJIT's library reads an int argument: truncated, and
 * anything outside int32 becomes INT32_MIN. */
static int32_t int_arg(lua_State *L, int arg, int32_t def) {
  if (lua_isnoneornil(L, arg)) return def;
  double d = luaL_checknumber(L, arg);
  if (!(d > -2147483649.0 && d < 2147483648.0)) return INT32_MIN;
  return (int32_t)d;
}

/* gsub's count, as LuaJIT reads it: the low 32 bits of the truncated
 * 64-bit integer (0 outside int64). */
static int32_t count_arg(lua_State *L, int arg, int32_t def) {
  if (lua_isnoneornil(L, arg)) return def;
  double d = luaL_checknumber(L, arg);
  if (!(d > -9223372036854775808.0 && d < 9223372036854775808.0)) return 0;
  return (int32_t)(uint32_t)(uint64_t)(int64_t)d;
}

/* 0-based start of a search from a 1-based init (negative: from the end),
 * clamped to [0, len]. */
static size_t start_of(int32_t init, size_t len) {
  int64_t st = init < 0 ? (int64_t)init + (int64_t)len : (int64_t)init - 1;
  if (st < 0) st = 0;
  if ((uint64_t)st > len) st = (int64_t)len;
  return (size_t)st;
}

/* Does p hold any character that makes it a pattern (else find searches
 * for it as plain text)? */
static int has_specials(const char *p, size_t lp) {
  for (size_t i = 0; i < lp; i++) {
    switch (p[i]) {
      case '^': case '$': case '*': case '+': case '?': case '.': case '(':
      case '[': case '%': case '-':
        return 1;
      default:
        break;
    }
  }
  return 0;
}

static const char *find_plain(const char *s, size_t ls, const char *p, size_t lp) {
  if (lp == 0) return s;
  if (lp > ls) return NULL;
  if (lp > 16) return memmem(s, ls, p, lp); /* linear in ls, whatever p is */
  /* short needles: memchr for the first byte, then compare (at most 16
   * bytes per candidate); memmem's setup costs more on short searches */
  const char *last = s + (ls - lp);
  while (s <= last) {
    const char *q = memchr(s, p[0], (size_t)(last - s) + 1);
    if (!q) return NULL;
    if (memcmp(q + 1, p + 1, lp - 1) == 0) return q;
    s = q + 1;
  }
  return NULL;
}

/* ---- string.find / string.match --------------------------------------------------- */

static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t st = start_of(int_arg(L, 3, 1), ls);
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    const char *q = find_plain(s + st, ls - st, p, lp);
    if (!q) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushinteger(L, q - s + 1);
    lua_pushinteger(L, (q - s) + (ptrdiff_t)lp);
    return 2;
  }
  mstate m;
  int anchored = *p == '^';
  if (anchored) p++;
  init_state(&m, L, s, ls, p);
  const char *at = s + st;
  for (;;) {
    const char *e = match_at(&m, at, p);
    if (e) {
      if (!find) return push_captures(&m, at, e);
      lua_pushinteger(L, at - s + 1);
      lua_pushinteger(L, e - s);
      return push_captures(&m, NULL, NULL) + 2;
    }
    if (anchored || at >= m.s_end) break;
    at++;
  }
  lua_pushnil(L);
  return 1;
}

static int p_find(lua_State *L) { return find_or_match(L, 1); }
static int p_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- string.gmatch ------------------------------------------------------------------ */

/* What a gmatch iterator keeps (upvalue 1); upvalues 2 and 3 hold the
 * subject and the pattern, so their bytes stay where they are. */
typedef struct gm_state {
  const char *s, *p;
  size_t ls, pos;
} gm_state;

static int gmatch_next(lua_State *L) {
  gm_state *g = lua_touserdata(L, lua_upvalueindex(1));
  mstate m;
  init_state(&m, L, g->s, g->ls, g->p);
  for (const char *at = g->s + g->pos; at <= m.s_end; at++) {
    const char *e = match_at(&m, at, g->p);
    if (e) {
      g->pos = (size_t)(e - g->s) + (e == at); /* past an empty match */
      return push_captures(&m, at, e);
    }
  }
  g->pos = g->ls + 1;
  return 0;
}

static int p_gmatch(lua_State *L) {
  size_t ls;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checkstring(L, 2);
  lua_settop(L, 2);
  gm_state *g = lua_newuserdata(L, sizeof *g);
  g->s = s;
  g->p = p;
  g->ls = ls;
  g->pos = 0;
  lua_insert(L, 1);
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* ---- string.gsub ----------------------------------------------------------------------- */

static void add_string(mstate *m, luaL_Buffer *b, const char *s, const char *e,
                       const char *r, size_t lr) {
  /* a long replacement of empty captures ("%1%1...") adds nothing to the
   * result (no allocation), yet takes time at every match: count it */
  charge(m, lr >> 4);
  for (size_t i = 0; i < lr; i++) {
    if (r[i] != '%') {
      luaL_addchar(b, r[i]);
      continue;
    }
    i++; /* a '%' last takes the string's terminating NUL, as LuaJIT */
    unsigned char d = (unsigned char)r[i];
    if (d < '0' || d > '9') {
      luaL_addchar(b, (char)d);
    } else if (d == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else {
      push_capture(m, d - '1', s, e);
      luaL_addvalue(b);
    }
  }
}

static void add_value(mstate *m, luaL_Buffer *b, const char *s, const char *e, int rtype) {
  lua_State *L = m->L;
  if (rtype == LUA_TFUNCTION) {
    lua_pushvalue(L, 3);
    int n = push_captures(m, s, e);
    lua_call(L, n, 1);
  } else { /* a table */
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  }
  if (!lua_toboolean(L, -1)) { /* nil or false: keep the match */
    lua_pop(L, 1);
    lua_pushlstring(L, s, (size_t)(e - s));
  } else if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  }
  luaL_addvalue(b);
}

static int p_gsub(lua_State *L) {
  size_t ls, lp, lr = 0;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int rtype = lua_type(L, 3);
  luaL_argcheck(L, rtype == LUA_TNUMBER || rtype == LUA_TSTRING ||
                   rtype == LUA_TFUNCTION || rtype == LUA_TTABLE,
                3, "string/function/table expected");
  int32_t max = count_arg(L, 4, (int32_t)(ls + 1));
  const char *r = rtype == LUA_TNUMBER || rtype == LUA_TSTRING ? lua_tolstring(L, 3, &lr) : NULL;
  int anchored = *p == '^';
  if (anchored) p++;
  mstate m;
  init_state(&m, L, s, ls, p);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  const char *at = s;
  int32_t n = 0;
  while (n < max) {
    const char *e = match_at(&m, at, p);
    if (e) {
      n++;
      if (r) add_string(&m, &b, at, e, r, lr);
      else add_value(&m, &b, at, e, rtype);
    }
    if (e && e > at) at = e;
    else if (at < m.s_end) luaL_addchar(&b, *at++);
    else break;
    if (anchored) break;
  }
  luaL_addlstring(&b, at, (size_t)(m.s_end - at));
  luaL_pushresult(&b);
  lua_pushinteger(L, n);
  return 2;
}

/* ---- sizes LuaJIT refuses before the allocator sees them ------------------------- */

/* A result of `len` bytes: LuaJIT refuses more than MAX_STR with a plain
 * "not enough memory" (no allocation, so no breach recorded); a tool state
 * whose cap cannot hold it would fail anyway. Either way: a memory breach. */
static void check_size(lua_State *L, double len) {
  if (len > (double)MAX_STR)
    rd__lstate_breach(L, RD_BREACH_MEMORY, "a string of %.0f bytes is longer than the largest LuaJIT makes", len);
}

static int p_rep(lua_State *L) {
  size_t ls, lsep = 0;
  luaL_checklstring(L, 1, &ls);
  double d = luaL_checknumber(L, 2);
  luaL_optlstring(L, 3, NULL, &lsep);
  if (d >= 1 && d >= 2147483648.0) {
    /* LuaJIT wraps such counts to a negative int and returns "": they ask
     * for that many copies, which is more than any string holds. */
    double len = (double)ls * d + (double)lsep * (d - 1);
    if (len > 0) check_size(L, len);
    lua_pushliteral(L, "");
    return 1;
  }
  if (d >= 1) check_size(L, (double)ls * (double)(int32_t)d + (double)lsep * ((double)(int32_t)d - 1));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int p_concat(lua_State *L) {
  size_t lsep = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_optlstring(L, 2, "", &lsep);
  int32_t i = int_arg(L, 3, 1);
  int32_t j = lua_isnoneornil(L, 4) ? (int32_t)lua_objlen(L, 1) : int_arg(L, 4, 0);
  /* The values are checked (LuaJIT's own message) and their lengths
   * added up before the original makes the string; the check costs a
   * fraction of the copy. */
  double len = 0;
  for (int64_t k = i; k <= j; k++) {
    lua_rawgeti(L, 1, (int)k);
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING) {
      len += (double)lua_objlen(L, -1);
    } else if (t == LUA_TNUMBER) {
      len += 32; /* the most a number formats to, about */
    } else {
      luaL_error(L, "invalid value (%s) at index %d in table for 'concat'",
                 lua_typename(L, t), (int)k);
    }
    lua_pop(L, 1);
    if (k > i) len += (double)lsep;
  }
  check_size(L, len);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* ---- installing ------------------------------------------------------------------------ */

/* Push our functions into the table on top; rep and concat keep the
 * originals found in the state's string and table libraries. */
static void set_functions(lua_State *L, int string_t, int table_t) {
  ctab_init();
  lua_pushcfunction(L, p_find);
  lua_setfield(L, string_t, "find");
  lua_pushcfunction(L, p_match);
  lua_setfield(L, string_t, "match");
  lua_pushcfunction(L, p_gmatch);
  lua_setfield(L, string_t, "gmatch");
  lua_pushcfunction(L, p_gsub);
  lua_setfield(L, string_t, "gsub");
  lua_getglobal(L, "string");
  lua_getfield(L, -1, "rep");
  lua_pushcclosure(L, p_rep, 1);
  lua_setfield(L, string_t, "rep");
  lua_pop(L, 1);
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "concat");
  lua_pushcclosure(L, p_concat, 1);
  lua_setfield(L, table_t, "concat");
  lua_pop(L, 1);
}

int rd__pattern_open(lua_State *L) {
  lua_newtable(L);
  int t = lua_gettop(L);
  set_functions(L, t, t);
  return 1;
}

void rd__pattern_install(lua_State *L) {
  lua_getglobal(L, "string");
  lua_getglobal(L, "table");
  int top = lua_gettop(L);
  if (lua_istable(L, top - 1) && lua_istable(L, top)) set_functions(L, top - 1, top);
  lua_pop(L, 2);
}
