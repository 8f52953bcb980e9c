/*
 * json.h — the JSON codec of the C core (RFC 8259), between JSON text and
 * Lua values. Every JSON boundary of the engine goes through it.
 *
 * Why not lua-cjson alone: Debian's lua-cjson 2.1.0 decodes [] and {} to the
 * same empty table, encodes integers above 10^14 in exponent form (precision
 * capped at 14 digits), and passes invalid UTF-8 through. This codec keeps
 * the three promises of DESIGN.md:
 *
 *  - Arrays and objects stay apart. Decoded arrays carry the metatable
 *    registered as RD_JSON_ARRAY_MT (decoded objects carry none).
 *    RD_JSON_OBJECT_MT forces a table to encode as an
 *    object (integer keys written as strings). On encode a table
 *    is an array when it has the array metatable, or when it is non-empty
 *    and its keys are exactly 1..n; an empty table without a marker is {}.
 *  - Numbers: integral values with |x| <= 2^53 are written as integers
 *    ("9007199254740993"-style exponent form never appears for them); other
 *    finite numbers use the shortest "%.{15,16,17}g" form that reads back to
 *    the same double. NaN and infinities are refused.
 *  - Strings must be valid UTF-8 (RFC 3629: no overlongs, no surrogates, at
 *    most U+10FFFF), in both directions; \u escapes must pair surrogates.
 *  - Nesting deeper than RD_JSON_MAX_DEPTH (or opts->max_depth) is refused
 *    with an error, never a C stack overflow; a table cycle on encode is
 *    reported as a cycle.
 *  - null decodes to the sentinel light userdata RD_JSON_NULL (NULL
 *    pointer), which encodes back to null.
 *
 * Errors name what was wrong and where: "invalid JSON at line 3, column 7
 * (byte 41): expected ',' or '}' after an object member", "cannot encode
 * value at /items/2: function". Pointers are RFC 6901 JSON pointers.
 */
#ifndef RD_JSON_H
#define RD_JSON_H

#include "rd.h"
#include <lua.h>

#define RD_JSON_MAX_DEPTH 128
/* Registry names of the marker metatables (luaL_newmetatable keys). */
#define RD_JSON_ARRAY_MT "rubberduck.json.array"
#define RD_JSON_OBJECT_MT "rubberduck.json.object"
#define RD_JSON_NULL ((void *)0)

typedef struct rd_json_opts {
  int max_depth;    /* 0: RD_JSON_MAX_DEPTH; values above 1000 are clamped */
  int sort_keys;    /* encode: object keys in byte order (canonical form) */
  int pretty;       /* encode: two-space indentation, one member a line */
  int canonical;    /* encode: the canonical form: keys sorted in byte order
                     * of their UTF-8, no insignificant whitespace (implies
                     * sort_keys, overrides pretty). Numbers as always
                     * (integers to 2^53 in full, else the shortest of
                     * %.15g/%.16g/%.17g that reads back); \u2028, \u2029 and
                     * C0 controls escaped. Not RFC 8785 (key order is UTF-8
                     * byte order, not UTF-16 code units). */
  int binary;       /* encode: a string value that is not valid UTF-8 is
                     * written as the standard base64 (RFC 4648, padded) of
                     * its bytes instead of failing. Keys must still be valid
                     * UTF-8. The caller records which values were binary
                     * (rd__result_normalize lists their pointers). */
} rd_json_opts;

/* The marker metatables of L (as lua_topointer gives them; NULL when L has
 * none yet), looked up by light-userdata keys (cheaper than by name; the
 * first lookup in a state records them under those keys). Leaves the
 * stack as it was. May raise a Lua memory error on that first lookup. */
void rd__json_markers(lua_State *L, const void **array_mt, const void **object_mt);

/* Ensure both marker metatables exist in L's registry (idempotent). */
void rd__json_init(lua_State *L);

/* Decode `len` bytes of `text` and push the value onto L's stack.
 * Returns RD_OK (one value pushed) or RD_EJSON / RD_ENOMEM (nothing pushed,
 * message in err). Does not raise Lua errors except on Lua memory errors.
 * The first decode with a string gives L a string cache (about 32 KB, plus
 * up to 1024 short strings kept alive), held by the decoder's closure in
 * L's registry and freed with L; not while L has a debug hook set (the
 * sandbox's tool states). Not thread-safe for one L (as Lua itself). */
int rd__json_decode(lua_State *L, const char *text, size_t len,
                    const rd_json_opts *opts, rd_error *err);

/* Push a C closure of `fn` whose upvalues are what rd__json_decode_here
 * needs (the array metatable, and a string cache made on first use, freed
 * with the closure). Runs rd__json_init if needed. Raises only on memory
 * errors. */
void rd__json_push_decoder(lua_State *L, lua_CFunction fn);

/* rd__json_decode for a lua_CFunction made by rd__json_push_decoder, run
 * while that function runs: same results, same errors, but without a
 * protected call of its own (faster: this is core.json.decode). A Lua
 * memory error raises through it, as it would through any Lua API call,
 * and leaks nothing (its scratch memory belongs to the closure's cache).
 * Returns RD_OK (one value pushed) or RD_EJSON / RD_ENOMEM / RD_EINVAL
 * (nothing pushed, message in err). When L has a debug hook set, or
 * opts->max_depth is above RD_JSON_MAX_DEPTH, it calls rd__json_decode.
 * The closure's string cache (as rd__json_decode's, about 32 KB) also keeps
 * the scratch buffer of strings with escapes between calls, up to 64 KB. */
int rd__json_decode_here(lua_State *L, const char *text, size_t len,
                         const rd_json_opts *opts, rd_error *err);

/* Encode the value at stack index `idx` of L, appending to `out`.
 * Returns RD_OK, RD_EJSON (unencodable value, message names its pointer and
 * type) or RD_ENOMEM. Never modifies L's stack (net). */
int rd__json_encode(lua_State *L, int idx, rd_buf *out,
                    const rd_json_opts *opts, rd_error *err);

/* 1 if the value at `idx` encodes as a JSON array under the rules above
 * (array marker, or a non-empty table whose keys are exactly 1..n), else 0.
 * Runs no metamethods. */
int rd__json_is_array(lua_State *L, int idx);

/* The marker of the table at idx: 'a' when its metatable is `array_mt` or
 * says __jsontype = "array", 'o' for `object_mt` or "object", 0 when it has
 * none (pointers as from lua_topointer). Leaves the stack as it was. */
int rd__json_marker(lua_State *L, int idx, const void *array_mt, const void *object_mt);

/* The encoder's text for a finite number x (integers up to 2^53 in full,
 * others the shortest of %.15g/%.16g/%.17g that reads back). Writes at most
 * 31 bytes plus a NUL to buf; returns the length. */
size_t rd__json_fmt_number(char *buf, double x);

/* 1 if `len` bytes of `s` are valid UTF-8, else 0 and *bad_at (if not NULL)
 * gets the offset of the first invalid byte. */
int rd__utf8_valid(const char *s, size_t len, size_t *bad_at);

/* Replace, in place, every byte of `s` that is not part of a well-formed
 * UTF-8 sequence with '?', so the text can go into JSON. */
void rd__utf8_clean(char *s, size_t len);

/* Lua binding: pushes the table of json functions (decode, encode, null,
 * array_mt, object_mt, array, object, is_array, utf8_valid). See
 * core/lua/l_json.c. */
int rd__luaopen_json(lua_State *L);

#endif
