/*
 * l_results.c — core.results, the binding of results.c.
 *
 *   results.normalize(v [, max_depth]) -> normalized, binary_paths
 *                                      | nil, "POINTER: REASON"
 *   results.yaml(v) -> text | nil, message        (v normalized)
 *   results.digest(s) -> 64 hex digits            BLAKE2b-256 of s
 *   results.base64(s) -> text                     RFC 4648, padded
 *   results.unbase64(text) -> bytes | nil, message
 *   results.compress(s [, level]) -> frame        zstd, level 1..19 (3)
 *   results.decompress(frame [, max_bytes]) -> bytes | nil, message
 *   results.reasons                               the fixed REASON texts
 *   results.box_key(dir, create) -> key | nil, message, code
 *       the key that encrypts persisted results: DIR/results.key (32
 *       bytes, mode 0600, made on first use when create is true; the
 *       rules of sign.h's rd__secret_file); code "not_found" or "io"
 *   key:seal(plain, ad) -> box     XChaCha20-Poly1305 (IETF AEAD), a fresh
 *                                  random 24-byte nonce in front; `ad` (the
 *                                  execution id) is authenticated, not stored
 *   key:open(box, ad) -> plain | nil, message   (tampered, wrong key or ad)
 *   key:close()                    wipes the key (also on collection)
 *
 * Failures are values (nil, message); a wrong argument type raises.
 */
#include "results.h"
#include "json.h"
#include "sign.h"
#include "lua/bind.h"

#include <sodium.h>
#include <string.h>

static int l_normalize(lua_State *L) {
  luaL_checkany(L, 1);
  rd_result_opts o = {(int)luaL_optinteger(L, 2, 0)};
  rd_error err;
  lua_settop(L, 1);
  int rc = rd__result_normalize(L, 1, &o, &err);
  if (rc == RD_OK) return 2;
  if (rc == RD_ENOMEM) return luaL_error(L, "not enough memory");
  lua_pushnil(L);
  lua_pushstring(L, err.message);
  return 2;
}

static int push_buf(lua_State *L, rd_buf *b) {
  lua_pushlstring(L, b->data ? b->data : "", b->len);
  rd__buf_free(b);
  return 1;
}

static int l_yaml(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  rd_buf b = RD_BUF_INIT;
  rd_error err;
  int rc = rd__result_yaml(L, 1, &b, &err);
  if (rc != RD_OK) {
    rd__buf_free(&b);
    if (rc == RD_ENOMEM) return luaL_error(L, "not enough memory");
    lua_pushnil(L);
    lua_pushstring(L, err.message);
    return 2;
  }
  return push_buf(L, &b);
}

static int l_digest(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char hex[65];
  rd__result_digest(s, n, hex);
  lua_pushlstring(L, hex, 64);
  return 1;
}

typedef struct finish_call {
  rd_buf buf;
  int rc;
  rd_error err;
} finish_call;


/* finish(v [, want_text]) -> true, bytes, digest [, canonical]
 *                          | false (the copying path is needed)
 * The fast path of results.process for a value the pipeline owns: v is
 * normalized in place (rd__result_normalize_in_place), and the length and
 * BLAKE2b digest of its canonical JSON computed without making that text a
 * Lua string unless asked. */
static int l_finish(lua_State *L) {
  luaL_checkany(L, 1);
  int want = lua_toboolean(L, 2);
  lua_settop(L, 1);
  finish_call f;
  f.buf = (rd_buf)RD_BUF_INIT;
  f.rc = rd__result_normalize_in_place(L, 1, lua_upvalueindex(1), lua_upvalueindex(2), 0);
  if (f.rc == RD_OK) {
    rd_json_opts o;
    memset(&o, 0, sizeof o);
    o.canonical = 1;
    f.rc = rd__json_encode(L, 1, &f.buf, &o, &f.err);
  }
  if (f.rc != RD_OK) {
    rd__buf_free(&f.buf);
    if (f.rc == RD_ENOMEM) return luaL_error(L, "not enough memory");
    lua_pushboolean(L, 0);
    return 1;
  }
  char hex[65];
  rd__result_digest(f.buf.data ? f.buf.data : "", f.buf.len, hex);
  lua_pushboolean(L, 1);
  lua_pushnumber(L, (double)f.buf.len);
  lua_pushlstring(L, hex, 64);
  if (want) lua_pushlstring(L, f.buf.data ? f.buf.data : "", f.buf.len);
  rd__buf_free(&f.buf);
  return want ? 4 : 3;
}

static int l_base64(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t bl = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
  char *b = rd__malloc(bl);
  if (!b) return luaL_error(L, "not enough memory");
  sodium_bin2base64(b, bl, (const unsigned char *)s, n, sodium_base64_VARIANT_ORIGINAL);
  lua_pushlstring(L, b, bl - 1);
  rd__freemem(b);
  return 1;
}

static int l_unbase64(lua_State *L) {
  size_t n, out_len = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t cap = n / 4 * 3 + 3;
  unsigned char *b = rd__malloc(cap ? cap : 1);
  if (!b) return luaL_error(L, "not enough memory");
  const char *end = NULL;
  if (sodium_base642bin(b, cap, s, n, NULL, &out_len, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 || end != s + n) {
    rd__freemem(b);
    lua_pushnil(L);
    lua_pushliteral(L, "not valid base64 (RFC 4648, padded)");
    return 2;
  }
  lua_pushlstring(L, (const char *)b, out_len);
  rd__freemem(b);
  return 1;
}

static int l_compress(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int level = (int)luaL_optinteger(L, 2, 3);
  rd_buf b = RD_BUF_INIT;
  rd_error err;
  int rc = rd__result_compress(s, n, level, &b, &err);
  if (rc != RD_OK) {
    rd__buf_free(&b);
    if (rc == RD_EINVAL) return luaL_argerror(L, 2, err.message);
    return luaL_error(L, "%s", err.message);
  }
  return push_buf(L, &b);
}

static int l_decompress(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Number max = luaL_optnumber(L, 2, 1024.0 * 1024 * 1024);
  if (max < 0) return luaL_argerror(L, 2, "max_bytes must be >= 0");
  rd_buf b = RD_BUF_INIT;
  rd_error err;
  int rc = rd__result_decompress(s, n, (size_t)max, &b, &err);
  if (rc != RD_OK) {
    rd__buf_free(&b);
    if (rc == RD_ENOMEM) return luaL_error(L, "not enough memory");
    lua_pushnil(L);
    lua_pushstring(L, err.message);
    return 2;
  }
  return push_buf(L, &b);
}

/* ---- encryption at rest ------------------------------------------------------------ */

#define BOXKEY_MT "rubberduck.boxkey"
#define BOX_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define BOX_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES

typedef struct boxkey {
  int open;
  unsigned char k[RD_SECRET_BYTES];
} boxkey;

static boxkey *check_boxkey(lua_State *L) {
  boxkey *k = luaL_checkudata(L, 1, BOXKEY_MT);
  if (!k->open) luaL_argerror(L, 1, "key is closed");
  return k;
}

static int l_box_key(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  int create = lua_toboolean(L, 2);
  boxkey *k = rd__lua_newobj(L, sizeof *k, BOXKEY_MT);
  rd_error err;
  if (rd__secret_file(dir, "results.key", create, k->k, &err) != RD_OK) return rd__lua_fail(L, &err);
  k->open = 1;
  return 1;
}

static int l_box_seal(lua_State *L) {
  boxkey *k = check_boxkey(L);
  size_t n, adn;
  const char *plain = luaL_checklstring(L, 2, &n);
  const char *ad = luaL_checklstring(L, 3, &adn);
  size_t total = BOX_NONCE + n + BOX_TAG;
  unsigned char *out = rd__malloc(total);
  if (!out) return luaL_error(L, "not enough memory");
  randombytes_buf(out, BOX_NONCE);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(out + BOX_NONCE, &clen, (const unsigned char *)plain,
                                             n, (const unsigned char *)ad, adn, NULL, out, k->k);
  lua_pushlstring(L, (const char *)out, BOX_NONCE + (size_t)clen);
  rd__freemem(out);
  return 1;
}

static int l_box_open(lua_State *L) {
  boxkey *k = check_boxkey(L);
  size_t n, adn;
  const unsigned char *box = (const unsigned char *)luaL_checklstring(L, 2, &n);
  const char *ad = luaL_checklstring(L, 3, &adn);
  if (n < BOX_NONCE + BOX_TAG) {
    lua_pushnil(L);
    lua_pushstring(L, "encrypted result too short");
    return 2;
  }
  unsigned char *out = rd__malloc(n - BOX_NONCE - BOX_TAG + 1);
  if (!out) return luaL_error(L, "not enough memory");
  unsigned long long plen = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &plen, NULL, box + BOX_NONCE, n - BOX_NONCE,
                                                 (const unsigned char *)ad, adn, box, k->k) != 0) {
    rd__freemem(out);
    lua_pushnil(L);
    lua_pushstring(L, "encrypted result does not verify (tampered, another key, or another "
                      "execution's record)");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, (size_t)plen);
  sodium_memzero(out, (size_t)plen);
  rd__freemem(out);
  return 1;
}

static int l_box_close(lua_State *L) {
  boxkey *k = luaL_checkudata(L, 1, BOXKEY_MT);
  sodium_memzero(k->k, sizeof k->k);
  k->open = 0;
  return 0;
}

int rd__luaopen_results(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"normalize", l_normalize}, {"yaml", l_yaml}, {"digest", l_digest},
    {"base64", l_base64}, {"unbase64", l_unbase64}, {"compress", l_compress},
    {"decompress", l_decompress}, {"box_key", l_box_key}, {NULL, NULL},
  };
  static const luaL_Reg box_m[] = {
    {"seal", l_box_seal}, {"open", l_box_open}, {"close", l_box_close},
    {"__gc", l_box_close}, {NULL, NULL},
  };
  static const char *const reasons[] = {
#define RD__REASON(s) s,
    RD_RESULT_REASONS(RD__REASON)
#undef RD__REASON
  };
  if (sodium_init() < 0) return luaL_error(L, "libsodium failed to initialize");
  rd__lua_class(L, BOXKEY_MT, box_m, l_box_key);
  lua_pop(L, 1); /* keys come from results.box_key */
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  rd__json_init(L);
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  luaL_getmetatable(L, RD_JSON_OBJECT_MT);
  lua_pushcclosure(L, l_finish, 2);
  lua_setfield(L, -2, "finish");
  lua_createtable(L, (int)RD_COUNTOF(reasons), 0);
  for (size_t i = 0; i < RD_COUNTOF(reasons); i++) {
    lua_pushstring(L, reasons[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "reasons");
  return 1;
}
