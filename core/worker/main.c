/*
 * main.c — rduck-worker, the small executable the engine starts as the
 * zygote of its sandboxed workers (core/sandbox/worker.h). It is not meant
 * to be run by hand: `rduck-worker --zygote --lua-dir DIR` with the control
 * socket on file descriptor 3.
 */
#include "sandbox/worker.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  const char *lua_dir = NULL;
  int zygote = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--zygote") == 0) zygote = 1;
    else if (strcmp(argv[i], "--lua-dir") == 0 && i + 1 < argc) lua_dir = argv[++i];
    else {
      fprintf(stderr, "rduck-worker: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (!zygote || !lua_dir) {
    fprintf(stderr, "usage: rduck-worker --zygote --lua-dir DIR (started by the engine)\n");
    return 2;
  }
  return rd__zygote_main(3, lua_dir);
}
