/*
 * xcopy.h — copy plain data (nil, booleans, numbers, strings, the JSON null
 * sentinel, tables of those) from one Lua state to another. Used to pass
 * params into a tool state and results out of it.
 *
 * Only raw access is used (lua_next, lua_rawget): no metamethod of the
 * source runs. JSON array/object marker metatables are mapped to the
 * target's markers; any other metatable is dropped. Functions, userdata
 * (other than the null sentinel), threads, cycles, non-finite numbers are
 * refused with the JSON pointer of the value ("/items/2: function").
 */
#ifndef RD_XCOPY_H
#define RD_XCOPY_H

#include "rd.h"
#include <lua.h>

/* A copy kept in the target from one rd__xcopy to the next, for a table
 * that comes back with the same data call after call (the caller in a
 * tool call's ctx). The table of `from` at value[k1][k2] (string keys) is
 * compared, raw and deep, with the copy kept last time: when both hold
 * exactly the same data (the same keys and values, the same JSON markers,
 * no other metatable on the kept copy and its subtables), the kept copy
 * is used; else a new copy is made and kept. The comparison runs at every
 * copy, so whatever code running in `to` did to the kept copy (a field
 * written or removed, a metatable set, a subtable swapped for one with
 * other data) makes a new copy: what that code did never reaches the next
 * user of the copy. Owned by the caller: set ref to LUA_NOREF before the
 * first use; ref is a reference in the target's registry (luaL_unref it
 * to drop the kept copy, or let the state close). */
typedef struct rd_xcopy_memo {
  const char *k1, *k2;    /* the path of the table: value[k1][k2]; k1 NULL:
                           * nothing kept (reset_markers alone) */
  int ref;                /* the kept copy in `to`, or LUA_NOREF */
  int reused;             /* out: 1 if the last copy used the kept copy */
  int reset_markers;      /* 1: first, as rd__xcopy_reset_markers (one
                           * protected call for both) */
} rd_xcopy_memo;

typedef struct rd_xcopy_opts {
  int max_depth;          /* 0: RD_JSON_MAX_DEPTH */
  size_t max_bytes;       /* 0: unlimited; sum of string bytes + 16 per value */
  int allow_nonfinite;    /* 1: NaN/inf copied as they are */
} rd_xcopy_opts;

/* Push onto `to` a copy of the value at index `idx` of `from`.
 * The copy runs protected (lua_pcall) on `to`, so a target that cannot
 * allocate (a tool state at its cap) gives RD_ENOMEM, never a Lua error.
 * Returns RD_OK (one value pushed), RD_EINVAL (value not plain data: the
 * message starts with its JSON pointer), RD_ELIMIT (max_bytes or depth:
 * message says which), or RD_ENOMEM. Nothing is pushed on failure. `from`
 * and `to` must be different states; both stacks are left balanced.
 * *bytes (may be NULL) receives the size counted against max_bytes. */
int rd__xcopy(lua_State *from, int idx, lua_State *to,
              const rd_xcopy_opts *opts, size_t *bytes, rd_error *err);

/* rd__xcopy with a kept copy (see rd_xcopy_memo; memo may be NULL). Same
 * results and errors; memo->ref and memo->reused are updated. */
int rd__xcopy_memo(lua_State *from, int idx, lua_State *to,
                   const rd_xcopy_opts *opts, rd_xcopy_memo *memo,
                   size_t *bytes, rd_error *err);

/* The value at `idx` of L as bytes, appended to `out`, for rd__xunpack
 * to make in another state later, on another thread: what rd__xcopy
 * would copy, with the same checks, limits (opts) and errors, none of
 * the target state touched. L is only read (raw access, no metamethod
 * runs); no Lua error is raised. RD_OK, RD_EINVAL, RD_ELIMIT as
 * rd__xcopy, RD_ENOMEM (out could not grow); on failure `out` is left
 * as it was. *bytes (may be NULL): the size counted against max_bytes.
 * The bytes are valid in this process only. */
int rd__xpack(lua_State *L, int idx, rd_buf *out, const rd_xcopy_opts *opts,
              size_t *bytes, rd_error *err);
/* Push onto L the n values rd__xpack packed one after the other at p
 * (trusted: only bytes made by rd__xpack), made in L under one lua_pcall,
 * with L's JSON markers; with reset_markers, those are first put back as
 * rd__xcopy_reset_markers does. RD_OK (n values pushed) or RD_ENOMEM
 * (nothing pushed). */
int rd__xunpack(lua_State *L, const char *p, int n, int reset_markers, rd_error *err);

/* Put the JSON marker metatables of L (rd__json_init) back as they were
 * made, { __jsontype = "array" } and { __jsontype = "object" } without a
 * metatable, if code running in L changed them (getmetatable() on a
 * marked table gives the marker itself: a field added there would show
 * in every array or object of the state). A state that runs call after
 * call calls this before each one, so that what one call did to them
 * never reaches the data the next one is given. Runs protected; RD_OK,
 * or RD_ENOMEM. Nothing to do in a state without markers. */
int rd__xcopy_reset_markers(lua_State *L, rd_error *err);

#endif
