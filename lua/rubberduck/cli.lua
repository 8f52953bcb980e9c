-- rubberduck.cli — the rduck command (core/cli/main.c hands it argv).
--
-- Each command has its usage text beside it (COMMANDS below), so
-- `rduck <cmd> --help` and the README come from one place. Exit status:
-- 0 when the envelope's status is "ok", 1 when it is "error", 2 for a usage
-- or definition error (message on stderr).
local rd = require "rubberduck"
local json = require "rubberduck.json"
local core = require "rubberduck.core"
local results = require "rubberduck.results"
local formats = require "rubberduck.formats"

local M = {}

local stdout, stderr = io.stdout, io.stderr

local function eprintf(fmt, ...) stderr:write(string.format(fmt, ...)) end

-- The caller of a local run when no --as/--roles/--caps is given: the
-- operator at the keyboard, who holds every capability.
M.OPERATOR = { principal = "operator", roles = json.array({ "operator" }),
               capabilities = json.array({ "*" }) }

M.COMMANDS = {
  run = {
    usage = "rduck run NAME|FILE [--tools DIR] [--params JSON | --params-file F | key=value ...]\n" ..
            "                   [--as PRINCIPAL] [--roles r1,r2] [--caps c1,c2] [--token T]\n" ..
            "                   [--policy FILE] [--audience NAME]\n" ..
            "                   [--format json|xml|yaml|binary|plain] [--canonical] [--json] [--data DIR]\n" ..
            "                   [--redact k1,k2] [--truncate BYTES]",
    help = [[
Run one tool through the whole pipeline and print its output.

  NAME|FILE            a tool name (looked up in --tools DIR, default ./tools)
                       or the path of a tool file
  --params JSON        the parameters as a JSON object
  --params-file F      the same, read from a file (- for standard input)
  key=value            one parameter; the value is read as JSON when it is
                       valid JSON (42, true, [1,2]), else taken as a string
  --as PRINCIPAL       run as this caller (default: the local operator, who
  --roles r1,r2        holds every capability); with any of these three,
  --caps c1,c2         the caller holds exactly what they say
  --token T            run as the caller a signed capability token states
                       (rduck token issue); T, @FILE or - (standard input)
  --policy FILE        the authorization policy (roles, principals, rules)
  --audience NAME      this engine's name, for tokens issued to an audience
  --format F           how to print the output (default: the tool's
                       output.format): json, xml, yaml, binary (the raw
                       bytes of a string output) or plain
  --canonical          with json: sorted keys, no whitespace (the bytes
                       metadata.output_digest is taken over)
  --redact k1,k2       also redact the values of these keys (case-insensitive,
                       * is a wildcard), on top of the tool's output.redact
  --truncate BYTES     cut strings longer than BYTES (marker + original size)
  --json               print the whole result envelope as JSON: its output
                       is the JSON value (binary strings as base64, listed
                       in metadata.binary_paths), metadata.format the format
  --data DIR           data directory (default ./.rduck)
  --timeout MS         an overall deadline for the call, over all attempts

Exit status: 0 ok, 1 the call ended in an error envelope, 2 usage or
definition error.]],
  },
  tools = {
    usage = "rduck tools [--tools DIR] [--json]",
    help = [[
List the tools of DIR (default ./tools): name, security level, description.
  --json   print the normalized definitions (schemas/tool.schema.json)
Exit status 2 if any tool failed to load (the others are still listed).]],
  },
  check = {
    usage = "rduck check FILE|DIR... | rduck check --policy FILE",
    help = [[
Load tool definitions and report every problem as file: field.path: reason.
A keyword that the parameters or output schema's draft does not define
("minimun", "requried") is a warning, with its schema path and the keyword
probably meant: the tool still loads (JSON Schema ignores such keywords).
With --policy, check an authorization policy file the same way.
Exit status 0 when all load, 2 on any problem (warnings do not count).]],
  },
  repl = {
    usage = "rduck repl [--tools DIR] [--data DIR] [--policy FILE]",
    help = [[
An interactive LuaJIT prompt with the engine loaded. Line editing and
history (~/.rduck_history) on a terminal; reads statements from a pipe too.
  tools()                     list the tools
  run(name, params [, caller]) run one, print the envelope
  reload()                    load the tools again
  engine:reload_policy()      load the --policy file again
  engine, json                the engine and the JSON codec
  help()                      this text]],
  },
  demo = {
    usage = "rduck demo [--tools DIR] [--json]",
    help = [[
Run every example of every bundled tool (metadata.examples) through the
pipeline and compare each result with the example's expected output or
error kind. Exit status 0 when all match, 1 otherwise.]],
  },
  token = {
    usage = "rduck token issue --principal P --caps a,b [--roles r] --ttl 1h [--audience X]\n" ..
            "                   [--not-before 10m] [--data DIR]\n" ..
            "       rduck token attenuate TOKEN [--caps a] [--roles r] [--ttl 10m] [--audience X]\n" ..
            "       rduck token inspect TOKEN [--data DIR]",
    help = [[
Signed capability tokens (Ed25519).

  issue       sign a token with the key of the data directory (--data DIR,
              default ./.rduck; DIR/token.key is made on first use, mode
              0600). Durations: 90s, 10m, 1h, 7d. Prints the token.
  attenuate   make a narrower token from TOKEN, offline and without the
              key: fewer capabilities or roles, a shorter life, a narrower
              audience. Widening is refused. Prints the new token.
  inspect     print what TOKEN says, as JSON, and whether it verifies
              against the data directory's key.
TOKEN may be @FILE or - (standard input). `rduck run --token T` runs as
the token's caller. Exit status 0 ok, 1 a token refused, 2 usage.]],
  },
  history = {
    usage = "rduck history [--tool T] [--status ok|error] [--kind K] [--caller P] [--since T]\n" ..
            "                   [--until T] [--limit N] [--cursor C] [--json] [--data DIR]",
    help = [[
Print the execution history of the data directory, newest first.

  --tool T, --status S, --kind K, --caller P   only records that match
  --since T, --until T   a time range: epoch seconds, YYYY-MM-DD,
                         YYYY-MM-DDTHH:MM:SSZ, or an age (15m, 2h, 7d)
  --limit N              records per page (default 50)
  --cursor C             the next page (the last line of a page names it)
  --json                 { records = [...], cursor = ... }
  --data DIR             data directory (default ./.rduck)]],
  },
  audit = {
    usage = "rduck audit verify|list [--from N] [--limit N] [--json] [--data DIR]",
    help = [[
The audit trail of the data directory: a hash chain of security-relevant
events (authorization denials, sandbox violations, tool loads and reloads,
policy and config changes).

  verify    check the chain; exit 0 when intact, 1 naming the first bad
            entry (edited, removed or reordered)
  list      print the entries (--from N: from entry N; --limit N)]],
  },
  result = {
    usage = "rduck result get ID [--format json|xml|yaml|binary|plain] [--canonical] [--json] [--data DIR]",
    help = [[
Print a result the engine persisted: outputs whose canonical JSON is larger
than the threshold (1 MiB by default) are kept in the data directory by
execution id (the envelope's metadata.persisted.ref), compressed with zstd
and, when the engine runs with results = { encrypt = true }, encrypted.

  --format F   render in F (default: the format the call used)
  --canonical  with json: sorted keys, no whitespace (the bytes of
               metadata.output_digest)
  --json       { execution_id, output, metadata } with the output as JSON
  --data DIR   data directory (default ./.rduck)
Exit status 0, 1 when there is no such result or it fails its digest, 2 usage.]],
  },
  version = {
    usage = "rduck version",
    help = "Print the version of rduck and of the libraries it runs on.",
  },
}

local ORDER = { "run", "tools", "check", "repl", "demo", "token", "history", "audit", "result", "version" }

local function main_usage()
  local lines = { "usage: rduck <command> [options]", "", "commands:" }
  for _, c in ipairs(ORDER) do lines[#lines + 1] = "  " .. M.COMMANDS[c].usage end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "rduck <command> --help tells more."
  return table.concat(lines, "\n") .. "\n"
end

-- ---- argument parsing --------------------------------------------------------------

-- spec: flag -> "value" | "bool". Returns opts, positionals | nil, error.
local function parse(args, spec)
  local opts, pos = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      opts.help = true
    elseif a:sub(1, 2) == "--" then
      local name, val = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local kind = spec[name]
      if not kind then return nil, "unknown option --" .. name end
      if kind == "bool" then
        if val then return nil, "--" .. name .. " takes no value" end
        opts[name] = true
      else
        if not val then
          i = i + 1
          val = args[i]
          if val == nil then return nil, "--" .. name .. " needs a value" end
        end
        opts[name] = val
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return opts, pos
end

local function split_list(s)
  local out = json.array({})
  for item in s:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

-- Params and tokens read from a file or standard input stop here: a
-- command never reads without end (`--params-file /dev/zero`).
M.MAX_INPUT = 64 * 1024 * 1024

local function read_all(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, err end
  local parts, n = {}, 0
  while true do
    local chunk = f:read(1048576)
    if not chunk then break end
    n = n + #chunk
    if n > M.MAX_INPUT then
      if f ~= io.stdin then f:close() end
      return nil, string.format("%s: larger than %d MiB", path == "-" and "standard input" or path,
        M.MAX_INPUT / 1048576)
    end
    parts[#parts + 1] = chunk
  end
  if f ~= io.stdin then f:close() end
  return table.concat(parts)
end

-- A token argument: the token, @FILE or - (standard input).
local function token_arg(v, what)
  if v == "-" or v:sub(1, 1) == "@" then
    local text, err = read_all(v == "-" and "-" or v:sub(2))
    if not text then return nil, what .. ": " .. tostring(err) end
    v = text
  end
  return (v:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function caller_from(opts)
  if opts.token then
    if opts.as or opts.roles or opts.caps then
      return nil, "--token states the caller: do not add --as, --roles or --caps"
    end
    local t, err = token_arg(opts.token, "--token")
    if not t then return nil, err end
    return { token = t }
  end
  if not (opts.as or opts.roles or opts.caps) then return M.OPERATOR end
  return {
    principal = opts.as or "anonymous",
    roles = opts.roles and split_list(opts.roles) or json.array({}),
    capabilities = opts.caps and split_list(opts.caps) or json.array({}),
  }
end

local function params_from(opts, kv)
  local params
  if opts.params and opts["params-file"] then
    return nil, "give --params or --params-file, not both"
  end
  local text, origin = opts.params, "--params"
  if opts["params-file"] then
    local err
    text, err = read_all(opts["params-file"])
    if not text then return nil, "--params-file: " .. tostring(err) end
    origin = "--params-file"
  end
  if text then
    local v, err = json.decode(text)
    if v == nil then return nil, origin .. ": " .. err end
    if type(v) ~= "table" or (json.is_array(v) and next(v) ~= nil) or getmetatable(v) == json.array_mt then
      return nil, origin .. ": expected a JSON object"
    end
    params = v
  end
  for _, pair in ipairs(kv) do
    local k, v = pair:match("^([^=]+)=(.*)$")
    if not k then return nil, "expected key=value, got " .. pair end
    params = params or {}
    local decoded = json.decode(v)
    if decoded == nil and v ~= "null" then decoded = v end
    params[k] = decoded
  end
  return params or {}
end

local function is_file(p)
  local f = io.open(p, "rb")
  if not f then return false end
  local ok = f:read(0) ~= nil or f:seek("end") ~= nil
  f:close()
  return ok and core.listdir(p) == nil
end

local function bundled_tools_dir()
  return rd.root_dir() .. "/tools"
end

-- ---- output -----------------------------------------------------------------------------

-- The output of an ok envelope as text in its format (metadata.format),
-- or in `format` when given (rubberduck.results.render).
function M.render(env, format, canonical)
  return results.render(env, { format = format, canonical = canonical })
end

local function print_problems(problems)
  for _, p in ipairs(problems) do eprintf("%s\n", p) end
end

local function open_engine(opts, files)
  local tools_dir = opts.tools
  if not tools_dir and not files then
    local d = "tools"
    if core.listdir(d) then tools_dir = d end
  end
  return rd.open({ tools = tools_dir, files = files, data_dir = opts.data, entry = "cli",
    policy = opts.policy, audience = opts.audience })
end

-- SIGTERM, SIGINT or SIGHUP while calls run cancels them: each ends in a
-- `cancelled` envelope, the engine closes, and no worker process is left.
local function cancel_on_signals(engine)
  for _, signo in ipairs({ 15, 2, 1 }) do
    engine.loop:signal(signo, function()
      for _, h in pairs(engine.handles) do h:cancel() end
    end)
  end
end

local function print_logs(engine)
  engine:subscribe("execution.log", function(ev)
    eprintf("[%s] %s\n", ev.metadata.level or "info", ev.metadata.message or "")
  end)
end

-- ---- commands --------------------------------------------------------------------------

local handlers = {}

function handlers.run(args)
  local opts, pos = parse(args, { tools = "value", params = "value", ["params-file"] = "value",
    as = "value", roles = "value", caps = "value", token = "value", format = "value",
    json = "bool", data = "value", timeout = "value", policy = "value", audience = "value",
    canonical = "bool", redact = "value", truncate = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  local target = table.remove(pos, 1)
  if not target then return nil, "run: name the tool (NAME or FILE)" end
  if opts.format and not formats.known[opts.format] then
    return nil, "--format: expected one of json, xml, yaml, binary, plain, got " .. opts.format
  end
  local caller, cerr = caller_from(opts)
  if not caller then return nil, cerr end
  local params, perr = params_from(opts, pos)
  if not params then return nil, perr end
  local timeout
  if opts.timeout then
    timeout = tonumber(opts.timeout)
    if not timeout or timeout <= 0 then return nil, "--timeout: expected milliseconds > 0" end
  end

  local files, name
  if target:match("%.lua$") or target:find("/", 1, true) then
    if not is_file(target) then return nil, target .. ": no such tool file" end
    files = { target }
  else
    name = target
  end
  local engine, oerr = open_engine(opts, files)
  if not engine then return nil, oerr end
  if files then
    -- A file run: its own problems are fatal; the name comes from the file.
    for _, t in ipairs(engine.registry:list()) do
      if t.file == target then name = t.name end
    end
    if not name then
      print_problems(engine.problems)
      engine:close()
      return 2
    end
  elseif #engine.problems > 0 and not engine:tool(name) then
    print_problems(engine.problems)
  end
  print_logs(engine)
  local redact, truncate
  if opts.redact then redact = split_list(opts.redact) end
  if opts.truncate then
    truncate = tonumber(opts.truncate)
    if not truncate or truncate < 1 or truncate % 1 ~= 0 then
      engine:close()
      return nil, "--truncate: expected a whole number of bytes > 0"
    end
  end
  cancel_on_signals(engine)
  local env = engine:execute(name, params, caller, { format = opts.format, entry = "cli",
    deadline_ms = timeout, redact = redact, truncate = truncate })
  if opts.json then
    stdout:write(json.encode(env, { pretty = true, sort_keys = true }), "\n")
  elseif env.status == "ok" then
    local text, rerr = M.render(env, nil, opts.canonical)
    if not text then
      eprintf("error: %s\n", rerr)
      engine:close()
      return 1
    end
    stdout:write(text)
    -- a newline after text, never after raw bytes
    if env.metadata.format ~= "binary" and text:sub(-1) ~= "\n" then stdout:write("\n") end
  else
    eprintf("error: %s: %s\n", env.error.kind, env.error.message)
    local details = env.error.details
    if type(details) == "table" and type(details.errors) == "table" then
      for _, e in ipairs(details.errors) do
        eprintf("  %s (%s)\n", e.message, e.schema_path or e.keyword or "")
      end
    end
  end
  engine:close()
  return env.status == "ok" and 0 or 1
end

function handlers.tools(args)
  local opts, pos = parse(args, { tools = "value", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "tools: unexpected argument " .. pos[1] end
  local dir = opts.tools or "tools"
  if not core.listdir(dir) then return nil, "--tools: " .. dir .. ": no such directory" end
  local engine = assert(rd.open({ tools = dir, data_dir = opts.data, entry = "cli" }))
  local defs = engine:tools()
  if opts.json then
    stdout:write(json.encode(defs, { pretty = true, sort_keys = true }), "\n")
  else
    local w = 4
    for _, d in ipairs(defs) do if #d.metadata.name > w then w = #d.metadata.name end end
    for _, d in ipairs(defs) do
      stdout:write(string.format("%-" .. w .. "s  %-8s  %s\n", d.metadata.name,
        d.security.level, d.metadata.description))
    end
  end
  print_problems(engine.problems)
  local code = #engine.problems > 0 and 2 or 0
  engine:close()
  return code
end

function handlers.check(args)
  local opts, pos = parse(args, { policy = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if opts.policy then
    local engine, err = rd.open({ entry = "cli", policy = opts.policy })
    if not engine then eprintf("%s\n", err); return 2 end
    engine:close()
    stdout:write("ok: policy ", opts.policy, "\n")
    if #pos == 0 then return 0 end
  end
  if #pos == 0 then return nil, "check: name at least one FILE or DIR" end
  local engine = assert(rd.open({ entry = "cli" }))
  local n, problems = 0, 0
  for _, p in ipairs(pos) do
    local ok, probs
    if core.listdir(p) then
      ok, probs = engine:load_tools(p)
    elseif is_file(p) then
      ok, probs = engine:load_tools(nil, { p })
    else
      ok, probs = false, { p .. ": (file): no such file or directory" }
    end
    print_problems(probs)
    problems = problems + #probs
  end
  for _, w in ipairs(engine.warnings) do eprintf("warning: %s\n", w) end
  n = #engine.registry:list()
  engine:close()
  if problems > 0 then
    eprintf("%d problem%s\n", problems, problems == 1 and "" or "s")
    return 2
  end
  stdout:write(string.format("ok: %d tool%s\n", n, n == 1 and "" or "s"))
  return 0
end

-- Deep equality for comparing example outputs (arrays vs objects matter).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" then return math.abs(a - b) < 1e-9 end
    return false
  end
  if json.is_array(a) ~= json.is_array(b) and (next(a) ~= nil or next(b) ~= nil) then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
M.same = same

function handlers.demo(args)
  local opts, pos = parse(args, { tools = "value", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "demo: unexpected argument " .. pos[1] end
  local dir = opts.tools or bundled_tools_dir()
  local engine, oerr = rd.open({ tools = dir, data_dir = opts.data, entry = "cli" })
  if not engine then return nil, oerr end
  print_problems(engine.problems)
  local pass, fail, results = 0, 0, json.array({})
  for _, d in ipairs(engine:tools()) do
    for i, ex in ipairs(d.metadata.examples) do
      local env = engine:execute(d.metadata.name, ex.params, M.OPERATOR, { entry = "cli" })
      local ok, why
      if ex.error then
        ok = env.status == "error" and env.error.kind == ex.error
        why = ok and "" or ("expected error " .. ex.error .. ", got " ..
          (env.status == "ok" and "ok" or env.error.kind .. ": " .. env.error.message))
      else
        ok = env.status == "ok" and (ex.output == nil or same(env.output, ex.output))
        why = ok and "" or (env.status == "ok"
          and ("output " .. json.encode(env.output) .. " differs from " .. json.encode(ex.output))
          or (env.error.kind .. ": " .. env.error.message))
      end
      if ok then pass = pass + 1 else fail = fail + 1 end
      results[#results + 1] = { tool = d.metadata.name, example = i, ok = ok, reason = why,
        envelope = env }
      if not opts.json then
        stdout:write(string.format("%s %s #%d%s  %.2f ms%s\n", ok and "PASS" or "FAIL",
          d.metadata.name, i, ex.description and (" (" .. ex.description .. ")") or "",
          env.metadata.duration_ms, ok and "" or ("\n     " .. why)))
      end
    end
  end
  if opts.json then
    stdout:write(json.encode({ passed = pass, failed = fail, results = results }, { pretty = true, sort_keys = true }), "\n")
  else
    stdout:write(string.format("demo: %d passed, %d failed\n", pass, fail))
  end
  local code = (fail > 0 or #engine.problems > 0) and 1 or 0
  engine:close()
  return code
end

function handlers.history(args)
  local opts, pos = parse(args, { tool = "value", status = "value", kind = "value",
    caller = "value", since = "value", ["until"] = "value", limit = "value", cursor = "value",
    json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  return require("rubberduck.store").cli_history(opts, pos)
end

function handlers.result(args)
  local opts, pos = parse(args, { format = "value", canonical = "bool", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if pos[1] ~= "get" or not pos[2] or pos[3] then return nil, "result: expected `get ID`" end
  if opts.format and not formats.known[opts.format] then
    return nil, "--format: expected one of " .. table.concat(formats.list, ", ") .. ", got " .. opts.format
  end
  local store = require "rubberduck.store"
  local persist = require "rubberduck.persist"
  local dir = opts.data or "./.rduck"
  if not core.listdir(dir) then return nil, "--data " .. dir .. ": no such data directory" end
  local s, serr = store.open(dir, {})
  if not s then
    eprintf("error: --data %s: %s\n", dir, tostring(serr))
    return 1
  end
  local text, head = persist.get(s.kv, pos[2], dir)
  s:close()
  if not text then
    eprintf("error: %s\n", head)
    return 1
  end
  local view = json.decode(text)
  local meta = { format = opts.format or head.format or "json", binary_paths = head.binary_paths,
    encoding = (#(head.binary_paths or {}) > 0) and "base64" or nil,
    output_bytes = head.output_bytes, output_digest = head.output_digest }
  local env = { execution_id = pos[2], status = "ok", output = view, metadata = meta }
  if opts.json then
    stdout:write(json.encode(env, { pretty = true, sort_keys = true }), "\n")
    return 0
  end
  local out, rerr = M.render(env, meta.format, opts.canonical)
  if not out then
    eprintf("error: %s\n", rerr)
    return 1
  end
  stdout:write(out)
  if meta.format ~= "binary" and out:sub(-1) ~= "\n" then stdout:write("\n") end
  return 0
end

function handlers.audit(args)
  local opts, pos = parse(args, { from = "value", limit = "value", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  return require("rubberduck.store").cli_audit(opts, pos)
end

function handlers.version(args)
  local opts, pos = parse(args, {})
  if not opts then return nil, pos end
  if opts.help then return "help" end
  stdout:write(string.format("rduck %s (%s)\n", rd.version, jit and jit.version or _VERSION))
  return 0
end

function handlers.repl(args)
  local opts, pos = parse(args, { tools = "value", data = "value", policy = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "repl: unexpected argument " .. pos[1] end
  return require("rubberduck.repl").run(opts, M)
end

function handlers.token(args)
  local opts, pos = parse(args, { principal = "value", caps = "value", roles = "value",
    ttl = "value", audience = "value", ["not-before"] = "value", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  local token = require "rubberduck.token"
  local sub = table.remove(pos, 1)
  local data = opts.data or "./.rduck"
  local function duration(name)
    if not opts[name] then return nil end
    local d, err = token.parse_duration(opts[name])
    if not d then return false, "--" .. name .. ": " .. err end
    return d
  end
  local ttl, terr = duration("ttl")
  if ttl == false then return nil, terr end
  local nbf, nerr = duration("not-before")
  if nbf == false then return nil, nerr end
  local caps = opts.caps and split_list(opts.caps) or nil
  local roles = opts.roles and split_list(opts.roles) or nil
  if sub == "issue" then
    if #pos > 0 then return nil, "token issue: unexpected argument " .. pos[1] end
    if not opts.principal then return nil, "token issue: --principal is required" end
    if not ttl then return nil, "token issue: --ttl is required (90s, 10m, 1h, 7d)" end
    local key, kerr = core.sign.key_load(data, true)
    if not key then eprintf("rduck token: %s\n", kerr); return 1 end
    local t, err = token.issue(key, { principal = opts.principal, capabilities = caps or {},
      roles = roles or {}, ttl = ttl, not_before = nbf, audience = opts.audience })
    key:close()
    if not t then return nil, "token issue: " .. err end
    stdout:write(t, "\n")
    return 0
  elseif sub == "attenuate" then
    if #pos ~= 1 then return nil, "token attenuate: give one TOKEN" end
    if opts.principal or opts["not-before"] then
      return nil, "token attenuate: only --caps, --roles, --ttl and --audience narrow a token"
    end
    local t, err = token_arg(pos[1], "TOKEN")
    if not t then return nil, err end
    local out, aerr = token.attenuate(t, { capabilities = caps, roles = roles, ttl = ttl,
      audience = opts.audience })
    if not out then eprintf("rduck token: %s\n", aerr); return 1 end
    stdout:write(out, "\n")
    return 0
  elseif sub == "inspect" then
    if #pos ~= 1 then return nil, "token inspect: give one TOKEN" end
    local t, err = token_arg(pos[1], "TOKEN")
    if not t then return nil, err end
    local key = core.sign.key_load(data, false)
    local info, ierr = token.inspect(t, key and key:public(), { audience = opts.audience })
    if not info then
      if key then key:close() end
      eprintf("rduck token: %s\n", ierr)
      return 1
    end
    stdout:write(json.encode(info, { pretty = true, sort_keys = true }), "\n")
    local good = info.chain == "ok" and (not key or info.verified == "ok")
    if key then key:close() end
    return good and 0 or 1
  end
  return nil, sub and ("token: unknown subcommand " .. sub) or "token: issue, attenuate or inspect?"
end

function M.main(args)
  local cmd = args[1]
  if cmd == nil or cmd == "--help" or cmd == "-h" or cmd == "help" then
    local sub = args[2] and M.COMMANDS[args[2]]
    if sub then
      stdout:write("usage: ", sub.usage, "\n\n", sub.help, "\n")
    else
      (cmd == nil and stderr or stdout):write(main_usage())
    end
    return cmd == nil and 2 or 0
  end
  if cmd == "--version" then cmd = "version" end
  local h = handlers[cmd]
  if not h then
    eprintf("rduck: unknown command %q\n%s", cmd, main_usage())
    return 2
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  local code, err = h(rest)
  if code == "help" then
    local c = M.COMMANDS[cmd]
    stdout:write("usage: ", c.usage, "\n\n", c.help, "\n")
    return 0
  end
  if code == nil then
    eprintf("rduck %s: %s\nusage: %s\n", cmd, err, M.COMMANDS[cmd].usage)
    return 2
  end
  return code
end

return M
