/*
 * test_results.c — core/results.c from C: normalization (shape, binary
 * pointers, every refusal with its pointer, stack balance, the input left
 * untouched), the YAML emitter, BLAKE2b, zstd, the codec's canonical and
 * binary options, and tool.result.processed reaching a C subscriber.
 */
#include "json.h"
#include "results.h"
#include "testlib.h"

#include <lauxlib.h>
#include <lualib.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  rd__json_init(L);
  rd__luaopen_json(L);
  lua_setglobal(L, "json");
  return L;
}

static char out[8192];

/* Evaluate `expr`, normalize it; on success write the canonical JSON of the
 * normalized value (binary strings as base64) and the binary pointers
 * ("json | /p1 /p2") to out, else the error message. */
static int norm_expr(lua_State *L, const char *expr) {
  char code[4096];
  snprintf(code, sizeof code, "return %s", expr);
  if (luaL_dostring(L, code) != 0) {
    snprintf(out, sizeof out, "lua: %s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  int top = lua_gettop(L);
  rd_error err;
  int rc = rd__result_normalize(L, -1, NULL, &err);
  if (rc != RD_OK) {
    CHECK(lua_gettop(L) == top);
    snprintf(out, sizeof out, "%s", err.message);
    lua_pop(L, 1);
    return rc;
  }
  CHECK(lua_gettop(L) == top + 2);
  rd_buf b = RD_BUF_INIT;
  rd_json_opts o = {.canonical = 1, .binary = 1};
  CHECK(rd__json_encode(L, -2, &b, &o, &err) == RD_OK);
  size_t n = (size_t)snprintf(out, sizeof out, "%s |", b.data ? b.data : "");
  rd__buf_free(&b);
  size_t np = lua_objlen(L, -1);
  for (size_t i = 1; i <= np && n < sizeof out; i++) {
    lua_rawgeti(L, -1, (int)i);
    n += (size_t)snprintf(out + n, sizeof out - n, " %s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 3);
  return RD_OK;
}

TEST(normalize_shapes) {
  lua_State *L = new_state();
  CHECK(norm_expr(L, "{ a = 1, b = { 1, 2 }, c = json.array(), d = json.object(), e = {} }") == RD_OK);
  CHECK_STR(out, "{\"a\":1,\"b\":[1,2],\"c\":[],\"d\":{},\"e\":{}} |");
  CHECK(norm_expr(L, "json.object({ [1] = 'x', [2.5] = 'y' })") == RD_OK);
  CHECK_STR(out, "{\"1\":\"x\",\"2.5\":\"y\"} |");
  CHECK(norm_expr(L, "{ b = '\\255', l = { 'ok', '\\200\\201' }, ['a/~'] = '\\254' }") == RD_OK);
  /* (Lua escapes are decimal: \\200\\201 is C8 C9) */
  const char *want = "{\"a/~\":\"/g==\",\"b\":\"/w==\",\"l\":[\"ok\",\"yMk=\"]} |";
  CHECK(strncmp(out, want, strlen(want)) == 0);
  CHECK(strstr(out, " /a~1~0") && strstr(out, " /b") && strstr(out, " /l/1"));
  CHECK(norm_expr(L, "'\\255'") == RD_OK);
  CHECK_STR(out, "\"/w==\" | ");
  CHECK(norm_expr(L, "nil") == RD_OK);
  CHECK_STR(out, "null |");
  CHECK(norm_expr(L, "2^53 - 1") == RD_OK);
  CHECK_STR(out, "9007199254740991 |");
  /* the normalized array carries the marker; the input is untouched */
  CHECK(luaL_dostring(L, "local R = {} ; t = { 1, 2 } ; return t") == 0);
  rd_error err;
  CHECK(rd__result_normalize(L, -1, NULL, &err) == RD_OK);
  CHECK(lua_getmetatable(L, -2));
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  CHECK(lua_rawequal(L, -1, -2));
  lua_pop(L, 2);
  CHECK(!lua_getmetatable(L, -3));   /* the input has none */
  lua_pop(L, 3);
  CHECK(lua_gettop(L) == 0);
  lua_close(L);
}

TEST(normalize_refusals) {
  lua_State *L = new_state();
  static const struct { const char *expr, *msg; } cases[] = {
    {"{ a = { b = print } }", "/a/b: function"},
    {"{ 1, 2, coroutine.create(print) }", "/2: thread"},
    {"{ io.stdout }", "/0: userdata"},
    {"(function() local t = { x = {} }; t.x.y = t; return t end)()", "/x/y: cycle"},
    {"{ x = 0/0 }", "/x: NaN"},
    {"1/0", ": infinite number"},
    {"{ [1] = 1, [3] = 3 }", ": sparse array"},
    {"{ s = { 1, x = 2 } }", "/s: table mixes array and object keys"},
    {"json.array({ [1.5] = 1 })", ": array index that is not a positive integer"},
    {"{ ['k\\255'] = 1 }", "/k?: invalid UTF-8 in object key"},
    {"json.object({ [1/0] = 1 })", "/?: non-finite table key"},
    {"{ [true] = 1 }", "/boolean: table key that is not a string or number"},
  };
  for (size_t i = 0; i < RD_COUNTOF(cases); i++) {
    int rc = norm_expr(L, cases[i].expr);
    CHECK(rc == RD_EINVAL);
    CHECK_STR(out, cases[i].msg);
  }
  /* depth: 128 levels pass, 129 do not; a lower max_depth is honoured */
  CHECK(norm_expr(L, "(function() local t = {} for i = 1, 127 do t = { t } end return t end)()") == RD_OK);
  CHECK(norm_expr(L, "(function() local t = {} for i = 1, 128 do t = { t } end return t end)()") == RD_EINVAL);
  CHECK(strstr(out, ": nested deeper than the limit") != NULL);
  CHECK(luaL_dostring(L, "return { { { 1 } } }") == 0);
  rd_result_opts o = {2};
  rd_error err;
  CHECK(rd__result_normalize(L, -1, &o, &err) == RD_EINVAL);
  CHECK_STR(err.message, "/0/0: nested deeper than the limit");
  lua_pop(L, 1);
  CHECK(lua_gettop(L) == 0);
  lua_close(L);
}

static int yaml_expr(lua_State *L, const char *expr) {
  char code[4096];
  snprintf(code, sizeof code, "return %s", expr);
  CHECK(luaL_dostring(L, code) == 0);
  rd_error err;
  CHECK(rd__result_normalize(L, -1, NULL, &err) == RD_OK);
  rd_buf b = RD_BUF_INIT;
  int rc = rd__result_yaml(L, -2, &b, &err);
  snprintf(out, sizeof out, "%s", rc == RD_OK ? (b.data ? b.data : "") : err.message);
  rd__buf_free(&b);
  lua_pop(L, 3);
  return rc;
}

TEST(yaml) {
  lua_State *L = new_state();
  CHECK(yaml_expr(L, "{ b = { 1, 'two' }, a = 'yes', c = json.array(), d = {}, e = json.null }") == RD_OK);
  CHECK_STR(out, "a: \"yes\"\nb:\n- 1\n- two\nc: []\nd: {}\ne: null\n");
  CHECK(yaml_expr(L, "{ 1e22, 0.5, -3, 1e-7, true }") == RD_OK);
  CHECK_STR(out, "- 1.0e+22\n- 0.5\n- -3\n- 1.0e-07\n- true\n");
  CHECK(yaml_expr(L, "'\\255\\1'") == RD_OK);
  CHECK_STR(out, "!!binary /wE=\n");
  CHECK(yaml_expr(L, "'line\\nnext\\1'") == RD_OK);
  CHECK_STR(out, "\"line\\nnext\\x01\"\n");
  CHECK(yaml_expr(L, "'日本'") == RD_OK);
  CHECK_STR(out, "\"日本\"\n");
  lua_close(L);
}

TEST(digest_base64_zstd) {
  char hex[65];
  rd__result_digest("abc", 3, hex);
  /* BLAKE2b-256("abc") */
  CHECK_STR(hex, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
  rd__result_digest("", 0, hex);
  CHECK_STR(hex, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");

  size_t n = 300000;
  char *src = malloc(n);
  for (size_t i = 0; i < n; i++) src[i] = (char)("abcabd"[i % 6]);
  rd_buf z = RD_BUF_INIT, back = RD_BUF_INIT;
  rd_error err;
  CHECK(rd__result_compress(src, n, 0, &z, &err) == RD_OK);
  CHECK(z.len > 0 && z.len < n / 100);
  CHECK(rd__result_decompress(z.data, z.len, n, &back, &err) == RD_OK);
  CHECK(back.len == n && memcmp(back.data, src, n) == 0);
  rd__buf_free(&back);
  CHECK(rd__result_decompress(z.data, z.len, n - 1, &back, &err) == RD_EINVAL);
  CHECK(strstr(err.message, "more than") != NULL);
  CHECK(back.len == 0);
  CHECK(rd__result_decompress("garbage!", 8, n, &back, &err) == RD_EINVAL);
  CHECK_STR(err.message, "not a zstd frame");
  CHECK(rd__result_compress(src, n, 42, &back, &err) == RD_EINVAL);
  rd__buf_free(&back);
  rd__buf_free(&z);
  free(src);
}

TEST(json_canonical_and_binary) {
  lua_State *L = new_state();
  CHECK(luaL_dostring(L, "return { b = 1, a = { 2, 3 }, ['\\195\\169'] = { z = 1, y = 2 } }") == 0);
  rd_buf b = RD_BUF_INIT;
  rd_error err;
  rd_json_opts canon = {.canonical = 1, .pretty = 1};   /* canonical wins */
  CHECK(rd__json_encode(L, -1, &b, &canon, &err) == RD_OK);
  CHECK_STR(b.data, "{\"a\":[2,3],\"b\":1,\"\xc3\xa9\":{\"y\":2,\"z\":1}}");
  rd__buf_free(&b);
  lua_pop(L, 1);
  CHECK(luaL_dostring(L, "return { s = 'ok\\255', k = 'x' }") == 0);
  rd_json_opts plain = {.sort_keys = 1};
  CHECK(rd__json_encode(L, -1, &b, &plain, &err) == RD_EJSON);
  CHECK(b.len == 0);
  rd_json_opts bin = {.sort_keys = 1, .binary = 1};
  CHECK(rd__json_encode(L, -1, &b, &bin, &err) == RD_OK);
  CHECK_STR(b.data, "{\"k\":\"x\",\"s\":\"b2v/\"}");
  rd__buf_free(&b);
  lua_pop(L, 1);
  /* keys still have to be UTF-8 */
  CHECK(luaL_dostring(L, "return { ['\\255'] = 1 }") == 0);
  CHECK(rd__json_encode(L, -1, &b, &bin, &err) == RD_EJSON);
  rd__buf_free(&b);
  lua_close(L);
}

/* ---- tool.result.processed reaches a C subscriber ------------------------ */

typedef struct seen {
  int n;
  char tool[64], status[16], digest[80], format[16];
  double bytes;
} seen;

static void on_event(const rd_event *ev, void *ud) {
  seen *s = ud;
  if (strcmp(ev->name, "tool.result.processed") != 0) return;
  s->n++;
  for (size_t i = 0; i < ev->n_metadata; i++) {
    const char *k = ev->metadata[i].key, *v = ev->metadata[i].value;
    if (!strcmp(k, "tool")) snprintf(s->tool, sizeof s->tool, "%s", v);
    if (!strcmp(k, "status")) snprintf(s->status, sizeof s->status, "%s", v);
    if (!strcmp(k, "output_digest")) snprintf(s->digest, sizeof s->digest, "%s", v);
    if (!strcmp(k, "format")) snprintf(s->format, sizeof s->format, "%s", v);
  }
  for (size_t i = 0; i < ev->n_measurements; i++)
    if (!strcmp(ev->measurements[i].key, "output_bytes")) s->bytes = ev->measurements[i].value;
}

TEST(event_reaches_c_subscriber) {
  char dir[] = "/tmp/rd_results_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char path[256];
  snprintf(path, sizeof path, "%s/hello.lua", dir);
  tl_put_file(path,
              "return tool { metadata = { name = 'hello', description = 'd' },\n"
              "  security = { level = 'relaxed' },\n"
              "  execution = { handler = function() return { hi = 'there' } end } }\n");
  rd_engine *e = NULL;
  rd_error err;
  rd_engine_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.tools_dir = dir;
  cfg.data_dir = dir;
  int rc = rd_engine_open(&e, &cfg, &err);
  CHECK(rc == RD_OK);
  if (rc != RD_OK) {
    fprintf(stderr, "  rd_engine_open: %s\n", err.message);
    return;
  }
  seen s;
  memset(&s, 0, sizeof s);
  CHECK(rd_engine_subscribe(e, "tool.result.", on_event, &s, NULL, &err) == RD_OK);
  char *env = NULL;
  int status = 0;
  CHECK(rd_engine_execute(e, "hello", "{}", NULL, &env, &status, &err) == RD_OK);
  CHECK(s.n == 1);
  CHECK_STR(s.tool, "hello");
  CHECK_STR(s.status, "ok");
  CHECK_STR(s.format, "json");
  CHECK(s.bytes == (double)strlen("{\"hi\":\"there\"}"));
  char hex[65];
  rd__result_digest("{\"hi\":\"there\"}", strlen("{\"hi\":\"there\"}"), hex);
  CHECK_STR(s.digest, hex);
  CHECK(env && strstr(env, hex) != NULL);
  rd_free(env);
  rd_engine_close(e);
  unlink(path);
  rmdir(dir);
}

int main(void) { RUN_TESTS(); }
