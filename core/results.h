/*
 * results.h — the C half of the result processor (stage 4 of the pipeline;
 * the Lua half is lua/rubberduck/results.lua).
 *
 * What it owns:
 *  - normalization: a handler's result (already plain data, copied out of
 *    the tool state by xcopy) checked against the JSON rules and copied into
 *    one canonical shape, identical whichever security level produced it;
 *  - the YAML emitter (libyaml) of a normalized value;
 *  - BLAKE2b digests (libsodium), base64 (libsodium), zstd compression.
 *
 * Normalized shape: arrays are tables carrying the RD_JSON_ARRAY_MT
 * metatable with keys 1..n; objects are tables with no metatable and string
 * keys only (number keys of object-marked tables become the encoder's text
 * of the number); null is RD_JSON_NULL; numbers are finite; strings are
 * the handler's bytes unchanged. A string that is not valid UTF-8 is kept
 * as it is and its JSON pointer is listed as binary. This is exactly what
 * json.decode of the value's JSON produces (binary strings aside).
 *
 * Errors name the value: "POINTER: REASON", POINTER an RFC 6901 JSON
 * pointer ("" is the root), REASON one of the fixed texts listed in
 * RD_RESULT_REASONS (xcopy's reasons included), so the Lua side can split
 * the message even when a key holds ": ".
 */
#ifndef RD_RESULTS_H
#define RD_RESULTS_H

#include "rd.h"
#include <lua.h>

/* Every reason a normalization (or xcopy) failure can end in. */
#define RD_RESULT_REASONS(XX)                          \
  XX("function") XX("userdata") XX("thread") XX("cdata") \
  XX("cycle") XX("NaN") XX("infinite number")           \
  XX("nested deeper than the limit")                    \
  XX("table key that is not a string or number")        \
  XX("non-finite table key")                            \
  XX("sparse array")                                    \
  XX("table mixes array and object keys")               \
  XX("array index that is not a positive integer")      \
  XX("invalid UTF-8 in object key")                     \
  XX("Lua stack exhausted")

typedef struct rd_result_opts {
  int max_depth;   /* tables nested at most this deep; 0: RD_JSON_MAX_DEPTH,
                    * clamped to 4 * RD_JSON_MAX_DEPTH */
} rd_result_opts;

/* Normalize the value at `idx` of L (see above). On RD_OK pushes two
 * values: the normalized copy (a new value; the input is not modified) and
 * an array (RD_JSON_ARRAY_MT) of the JSON pointers of binary strings, in
 * the order met. On RD_EINVAL ("POINTER: REASON" in err) or RD_ENOMEM
 * nothing is pushed. Runs no metamethod. Not thread-safe on one L. */
int rd__result_normalize(lua_State *L, int idx, const rd_result_opts *o,
                         rd_error *err);

/* Bring the value at `idx` of L into the normalized shape in place, when
 * that needs no copy: arrays (keys exactly 1..n) get the array marker,
 * object-marked tables lose theirs, as in rd__result_normalize's copy. The
 * value must be the caller's own (its tables are changed). array_idx and
 * object_idx: stack indexes (absolute) of L's RD_JSON_ARRAY_MT and
 * RD_JSON_OBJECT_MT metatables. Allocates nothing. Runs no
 * metamethods. Returns RD_OK (the value is normal, with no binary string),
 * RD_RESULT_NEEDS_COPY (positive: the copying normalization is needed: a binary string, a number
 * key in an object, a table with another metatable, a value that cannot
 * be normalized, too deep or cyclic; markers may have been fixed on some
 * tables meanwhile, which the copy gives anyway). */
#define RD_RESULT_NEEDS_COPY 1
int rd__result_normalize_in_place(lua_State *L, int idx, int array_idx,
                                   int object_idx, int max_depth);

/* Append to `out` the YAML of the normalized value at `idx` of L: one
 * document, no directives, block style (empty containers in flow style),
 * UTF-8 unescaped where printable. Readable as YAML 1.2 (core schema) and
 * as YAML 1.1: strings that could resolve to anything but a string are
 * double-quoted; floats always carry a '.' and a signed exponent when they
 * have one; strings that are not valid UTF-8 are `!!binary` (base64).
 * Returns RD_OK, RD_EINVAL (a value the normalized shape cannot hold) or
 * RD_ENOMEM; on failure `out` keeps its length. */
int rd__result_yaml(lua_State *L, int idx, rd_buf *out, rd_error *err);

/* BLAKE2b with a 32-byte digest (crypto_generichash, no key) of `len`
 * bytes; writes 64 lowercase hex digits and a NUL to hex[65]. */
void rd__result_digest(const void *data, size_t len, char hex[65]);

/* zstd: compress `len` bytes at `level` (1..19; 0 means 3), appending the
 * frame to `out`. Returns RD_OK, RD_EINVAL (bad level) or RD_ENOMEM. */
int rd__result_compress(const void *data, size_t len, int level, rd_buf *out,
                        rd_error *err);

/* zstd: decompress one frame, appending at most `max` bytes to `out`.
 * Returns RD_OK, RD_EINVAL (not a zstd frame, corrupt, or larger than max:
 * the message says which) or RD_ENOMEM. */
int rd__result_decompress(const void *data, size_t len, size_t max,
                          rd_buf *out, rd_error *err);

/* Lua binding (core/lua/l_results.c): pushes the table core.results. */
int rd__luaopen_results(lua_State *L);

#endif
