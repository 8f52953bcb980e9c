/*
 * l_format.c — core.format: the C format checkers of format.c, handed to
 * the validator as raw function pointers for the FFI.
 *
 *   core.format.date, .time, .date_time, .duration, .ipv4, .hostname,
 *   .uuid, .uri, .email   light userdata: `int (*)(const char *, size_t)`
 *
 * lua/rubberduck/validator/formats.lua casts them with ffi.cast, so that a
 * check is an FFI call inside a trace; pointers (not symbol names through
 * ffi.load) because the rduck binary links the core statically and preloads
 * this module: there is no core.so to load, and an unreferenced format.o
 * would not even be linked. See format.h for what each returns.
 */
#include "format.h"
#include "rd.h"
#include "lua/bind.h"

typedef int (*rd_format_fn)(const char *, size_t);

int rd__luaopen_format(lua_State *L) {
  static const struct {
    const char *name;
    rd_format_fn fn;
  } fns[] = {
    {"date", rd_format_date},         {"time", rd_format_time},
    {"date_time", rd_format_date_time}, {"duration", rd_format_duration},
    {"ipv4", rd_format_ipv4},         {"hostname", rd_format_hostname},
    {"uuid", rd_format_uuid},         {"uri", rd_format_uri},
    {"email", rd_format_email},
  };
  lua_createtable(L, 0, (int)(sizeof fns / sizeof fns[0]));
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    /* a function pointer as a light userdata: the FFI casts it back */
    union {
      rd_format_fn fn;
      void *p;
    } u;
    u.fn = fns[i].fn;
    lua_pushlightuserdata(L, u.p);
    lua_setfield(L, -2, fns[i].name);
  }
  return 1;
}
