/*
 * l_sign.c — core.sign, the Lua binding of Ed25519 signing (sign.c,
 * libsodium) for signed capability tokens (lua/rubberduck/token.lua).
 *
 *   sign.key_load(dir, create) -> key | nil, message, code
 *       the engine's key of the data directory `dir` (sign.h); code is
 *       "not_found" (no key and create is false) or "io"
 *   key:public() -> 32-byte public key
 *   key:sign(msg) -> 64-byte detached signature
 *   key:close()   wipes the secret key (also on collection)
 *   sign.seed_keypair(seed32) -> pk32, sk64   (a chained token's block keys)
 *   sign.sign(msg, sk64) -> sig64
 *   sign.verify(sig, msg, pk) -> bool          (false for wrong sizes too)
 *   sign.random(n) -> n random bytes           (1 <= n <= 1024)
 *   sign.b64encode(s) -> base64url without padding
 *   sign.b64decode(s) -> bytes | nil, message  (base64url without padding)
 *
 * The engine's secret key never leaves the userdata. Misuse (wrong argument
 * types or sizes where a key is expected) raises; a signature that does not
 * verify is `false`.
 */
#include "sign.h"
#include "lua/bind.h"

#include <sodium.h>
#include <string.h>

#define KEY_MT "rubberduck.signkey"

typedef struct skey {
  int open;
  unsigned char pk[RD_SIGN_PKBYTES];
  unsigned char sk[RD_SIGN_SKBYTES];
} skey;

static skey *check_key(lua_State *L) {
  skey *k = luaL_checkudata(L, 1, KEY_MT);
  if (!k->open) luaL_error(L, "signing key is closed");
  return k;
}

static int l_key_load(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  int create = lua_toboolean(L, 2);
  skey *k = rd__lua_newobj(L, sizeof *k, KEY_MT);
  rd_error err;
  if (rd__sign_key_load(dir, create, k->pk, k->sk, &err) != RD_OK) return rd__lua_fail(L, &err);
  k->open = 1;
  return 1;
}

static int l_key_public(lua_State *L) {
  skey *k = check_key(L);
  lua_pushlstring(L, (const char *)k->pk, sizeof k->pk);
  return 1;
}

static int l_key_sign(lua_State *L) {
  skey *k = check_key(L);
  size_t n;
  const char *msg = luaL_checklstring(L, 2, &n);
  unsigned char sig[RD_SIGN_BYTES];
  if (rd__sign_detached(sig, (const unsigned char *)msg, n, k->sk) != RD_OK)
    return luaL_error(L, "signing failed");
  lua_pushlstring(L, (const char *)sig, sizeof sig);
  return 1;
}

static int l_key_close(lua_State *L) {
  skey *k = luaL_checkudata(L, 1, KEY_MT);
  sodium_memzero(k->sk, sizeof k->sk);
  k->open = 0;
  return 0;
}

static const unsigned char *check_bytes(lua_State *L, int i, size_t want, const char *what) {
  size_t n;
  const char *s = luaL_checklstring(L, i, &n);
  if (n != want) luaL_error(L, "%s: expected %d bytes, got %d", what, (int)want, (int)n);
  return (const unsigned char *)s;
}

static int l_seed_keypair(lua_State *L) {
  const unsigned char *seed = check_bytes(L, 1, RD_SIGN_SEEDBYTES, "seed");
  unsigned char pk[RD_SIGN_PKBYTES], sk[RD_SIGN_SKBYTES];
  if (rd__sign_seed_keypair(seed, pk, sk) != RD_OK) return luaL_error(L, "key derivation failed");
  lua_pushlstring(L, (const char *)pk, sizeof pk);
  lua_pushlstring(L, (const char *)sk, sizeof sk);
  sodium_memzero(sk, sizeof sk);
  return 2;
}

static int l_sign(lua_State *L) {
  size_t n;
  const char *msg = luaL_checklstring(L, 1, &n);
  const unsigned char *sk = check_bytes(L, 2, RD_SIGN_SKBYTES, "secret key");
  unsigned char sig[RD_SIGN_BYTES];
  if (rd__sign_detached(sig, (const unsigned char *)msg, n, sk) != RD_OK)
    return luaL_error(L, "signing failed");
  lua_pushlstring(L, (const char *)sig, sizeof sig);
  return 1;
}

static int l_verify(lua_State *L) {
  size_t ns, nm, np;
  const char *sig = luaL_checklstring(L, 1, &ns);
  const char *msg = luaL_checklstring(L, 2, &nm);
  const char *pk = luaL_checklstring(L, 3, &np);
  int ok = ns == RD_SIGN_BYTES && np == RD_SIGN_PKBYTES &&
           rd__sign_verify((const unsigned char *)sig, (const unsigned char *)msg, nm,
                           (const unsigned char *)pk);
  lua_pushboolean(L, ok);
  return 1;
}

static int l_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 1024) return luaL_error(L, "random: 1 to 1024 bytes, got %d", (int)n);
  unsigned char buf[1024];
  randombytes_buf(buf, (size_t)n);
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

#define B64V sodium_base64_VARIANT_URLSAFE_NO_PADDING

static int l_b64encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t cap = sodium_base64_ENCODED_LEN(n, B64V);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (cap <= LUAL_BUFFERSIZE) {
    char *out = luaL_prepbuffer(&b);
    sodium_bin2base64(out, cap, (const unsigned char *)s, n, B64V);
    luaL_addsize(&b, strlen(out));
    luaL_pushresult(&b);
    return 1;
  }
  char *out = lua_newuserdata(L, cap);
  sodium_bin2base64(out, cap, (const unsigned char *)s, n, B64V);
  lua_pushstring(L, out);
  return 1;
}

static int l_b64decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t cap = n * 3 / 4 + 3, got = 0;
  unsigned char *out = lua_newuserdata(L, cap);
  const char *end = NULL;
  if (sodium_base642bin(out, cap, s, n, NULL, &got, &end, B64V) != 0 || end != s + n) {
    lua_pushnil(L);
    lua_pushliteral(L, "not valid base64url");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, got);
  return 1;
}

int rd__luaopen_sign(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"public", l_key_public}, {"sign", l_key_sign}, {"close", l_key_close},
    {"__gc", l_key_close}, {NULL, NULL},
  };
  static const luaL_Reg fns[] = {
    {"key_load", l_key_load}, {"seed_keypair", l_seed_keypair}, {"sign", l_sign},
    {"verify", l_verify}, {"random", l_random}, {"b64encode", l_b64encode},
    {"b64decode", l_b64decode}, {NULL, NULL},
  };
  rd__lua_class(L, KEY_MT, methods, l_key_load);
  luaL_register(L, NULL, fns);
  lua_pushinteger(L, RD_SIGN_BYTES);
  lua_setfield(L, -2, "BYTES");
  return 1;
}
