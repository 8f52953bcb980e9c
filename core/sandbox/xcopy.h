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

typedef struct rd_xcopy_opts {
  int max_depth;          /* 0: RD_JSON_MAX_DEPTH */
  size_t max_bytes;       /* 0: unlimited; sum of string bytes + 16 per value */
  int allow_nonfinite;    /* 1: NaN/inf copied as they are */
} rd_xcopy_opts;

/* Push onto `to` a copy of the value at index `idx` of `from`.
 * The copy runs protected (lua_cpcall) on `to`, so a target that cannot
 * allocate (a tool state at its cap) gives RD_ENOMEM, never a Lua error.
 * Returns RD_OK (one value pushed), RD_EINVAL (value not plain data: the
 * message starts with its JSON pointer), RD_ELIMIT (max_bytes or depth:
 * message says which), or RD_ENOMEM. Nothing is pushed on failure. `from`
 * and `to` must be different states; both stacks are left balanced.
 * *bytes (may be NULL) receives the size counted against max_bytes. */
int rd__xcopy(lua_State *from, int idx, lua_State *to,
              const rd_xcopy_opts *opts, size_t *bytes, rd_error *err);

#endif
