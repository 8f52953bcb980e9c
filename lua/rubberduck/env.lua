-- rubberduck.env — what tool code can see, as data (one place to review).
--
-- `allow` lists the globals and library fields a tool at levels strict,
-- balanced and relaxed sees; everything else is absent. `deny` names what
-- must never be reachable even indirectly (checked by the specs), and the
-- built-in list of dangerous functions refused at load.
local M = {}

M.allow = {
  globals = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
    "tonumber", "tostring", "type", "unpack", "xpcall", "rawequal",
    "rawget", "rawset", "rawlen", "setmetatable", "_VERSION",
  },
  -- Provided by the sandbox as safe wrappers (see toolstate.lua):
  --   getmetatable  (tables only: the string metatable stays hidden)
  --   collectgarbage ("count" only)
  --   print         (goes to ctx.log at level "info")
  --   xpcall        (listed in globals, replaced: the handler runs after the
  --                  error unwound, so a looping handler is stopped too)
  wrapped = { "getmetatable", "collectgarbage", "print" },
  libs = {
    string = { "byte", "char", "find", "format", "gmatch", "gsub", "len",
               "lower", "match", "rep", "reverse", "sub", "upper" },
    table = { "concat", "insert", "maxn", "remove", "sort" },
    math = { "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "cosh",
             "deg", "exp", "floor", "fmod", "frexp", "huge", "ldexp", "log",
             "log10", "max", "min", "modf", "pi", "pow", "rad", "random",
             "randomseed", "sin", "sinh", "sqrt", "tan", "tanh" },
    os = { "clock", "date", "difftime", "time" },
    coroutine = { "create", "resume", "running", "status", "wrap", "yield" },
    bit = { "arshift", "band", "bnot", "bor", "bswap", "bxor", "lshift",
            "rol", "ror", "rshift", "tobit", "tohex" },
  },
  -- The engine's own APIs, added per tool: tool (the DSL), json, fs.
  engine = { "tool", "json", "fs" },
}

M.deny = {
  "io", "debug", "ffi", "jit", "package", "require", "module", "load",
  "loadstring", "loadfile", "dofile", "getfenv", "setfenv", "newproxy",
  "gcinfo", "string.dump", "os.execute", "os.exit", "os.getenv",
  "os.remove", "os.rename", "os.tmpname", "os.setlocale", "io.popen",
}

-- Refused at load (levels strict, balanced, relaxed) when a tool's source
-- names them; a tool adds its own with security.dangerous_functions.
M.dangerous = {
  "os.execute", "io.popen", "os.exit", "loadstring", "load", "loadfile",
  "dofile", "setfenv", "getfenv", "debug.getinfo", "debug.sethook",
  "debug.getregistry", "string.dump", "newproxy", "require",
}

return M
