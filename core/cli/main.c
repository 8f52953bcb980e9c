/*
 * main.c — the rduck command. The C part is small: it makes the host state,
 * gives the Lua side line editing (libedit), and hands argv to
 * lua/rubberduck/cli.lua, whose return value is the exit status.
 */
#include "engine.h"

#include <editline/readline.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  char *line = readline(prompt);
  if (!line) return 0;
  lua_pushstring(L, line);
  free(line);
  return 1;
}

static int l_add_history(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}

static int l_read_history(lua_State *L) {
  lua_pushboolean(L, read_history(luaL_checkstring(L, 1)) == 0);
  return 1;
}

static int l_write_history(lua_State *L) {
  lua_pushboolean(L, write_history(luaL_checkstring(L, 1)) == 0);
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int open_native(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"readline", l_readline}, {"add_history", l_add_history},
    {"read_history", l_read_history}, {"write_history", l_write_history},
    {"isatty", l_isatty}, {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  rd_error err;
  if (rd__host_open(&L, NULL, &err) != RD_OK) {
    fprintf(stderr, "rduck: %s\n", err.message);
    return 2;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, open_native);
  lua_setfield(L, -2, "rubberduck.cli.native");
  lua_pop(L, 2);

  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "rubberduck.cli");
  int code = 2;
  if (lua_pcall(L, 1, 1, 1) != 0) {
    fprintf(stderr, "rduck: cannot load the command line (%s): %s\n",
            rd__lua_dir(), lua_tostring(L, -1));
  } else {
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    if (lua_pcall(L, 1, 1, 1) != 0) {
      fprintf(stderr, "rduck: internal error: %s\n", lua_tostring(L, -1));
      code = 3;
    } else {
      code = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    }
  }
  fflush(stdout);
  lua_close(L);
  return code;
}
