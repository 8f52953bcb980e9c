-- spec/bench/validator/bench.lua — the LuaJIT side of the validator benchmark.
-- Run through ./run (which sets LUA_PATH/LUA_CPATH); by hand:
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     luajit spec/bench/validator/bench.lua spec/bench/validator check|bench ID...
--
-- ID is NAME.LABEL: schema schemas/NAME.json, instance instances/NAME.LABEL.json
-- (LABEL starts with "valid" or "invalid": the answer both validators must give).
--
--   check  prints  ID <TAB> valid|invalid <TAB> error count
--   bench  prints  ID|mixed <TAB> decoded|json <TAB> ops per second
--   serve  one measurement round per command read from stdin, for compare.js:
--            rows             -> one line per row: decoded|json <TAB> ID|mixed
--            MODE ROW SECONDS -> ops per second of one round of that row
--                               (the first round of a row warms it up first)
--            quit
--
-- decoded: each op is v(instance) on a table decoded once up front.
-- json:    each op is v(json.decode(text)) with the C codec.
-- mixed:   every schema compiled and live; one op per schema/instance pair,
--          cycling over all pairs (the engine's real case: no single trace
--          specialised on one validator).
--
-- Environment: RD_BENCH_TIME seconds per repetition (0.5), RD_BENCH_WARMUP
-- seconds (0.2), RD_BENCH_REPS repetitions, median reported (3),
-- RD_BENCH_ALL_ERRORS 1|0 (1: collect all errors, the validator's default),
-- RD_BENCH_CLOCK wall|cpu|thread (wall).

local ffi = require "ffi"
local validator = require "rubberduck.validator"
local json = require "rubberduck.json"

local dir, cmd = arg[1], arg[2]
local ids = {}
for i = 3, #arg do ids[#ids + 1] = arg[i] end
if not dir or (cmd ~= "check" and cmd ~= "bench" and cmd ~= "serve") or #ids == 0 then
  io.stderr:write("usage: bench.lua DIR check|bench|serve NAME.LABEL...\n")
  os.exit(2)
end

local TIME = tonumber(os.getenv("RD_BENCH_TIME") or "") or 0.5
local WARMUP = tonumber(os.getenv("RD_BENCH_WARMUP") or "") or 0.2
local REPS = tonumber(os.getenv("RD_BENCH_REPS") or "") or 3
local ALL_ERRORS = (os.getenv("RD_BENCH_ALL_ERRORS") or "1") ~= "0"

pcall(ffi.cdef, [[
  struct rd_bench_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct rd_bench_timespec *ts);
]])
local ts = ffi.new("struct rd_bench_timespec")
-- RD_BENCH_CLOCK=wall (default): CLOCK_MONOTONIC; cpu: the process's CPU
-- time (CLOCK_PROCESS_CPUTIME_ID), which time spent waiting for a core on a
-- loaded machine does not inflate
-- loaded machine does not inflate; thread: the main thread's CPU time
-- (CLOCK_THREAD_CPUTIME_ID; LuaJIT runs on one thread, so the same here)
local CLOCK = ({ cpu = 2, thread = 3 })[os.getenv("RD_BENCH_CLOCK") or ""] or 1
local function now()
  ffi.C.clock_gettime(CLOCK, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- the cases: one compiled validator per schema, shared by its instances
local validators, cases = {}, {}
for _, id in ipairs(ids) do
  local name = id:match("^([^.]+)%.")
  assert(name, "bad case id " .. id)
  local v = validators[name]
  if not v then
    local schema = assert(json.decode(slurp(dir .. "/schemas/" .. name .. ".json")))
    local err
    v, err = validator.compile(schema, { formats = "assert", all_errors = ALL_ERRORS })
    if not v then error(name .. ": " .. tostring(err)) end
    validators[name] = v
  end
  local text = slurp(dir .. "/instances/" .. id .. ".json")
  cases[#cases + 1] = { id = id, v = v, text = text, value = assert(json.decode(text)) }
end

if cmd == "check" then
  for _, c in ipairs(cases) do
    local ok, errs = c.v(c.value)
    local ok2 = c.v(json.decode(c.text))
    assert(ok == ok2, c.id .. ": decoded and json text answers differ")
    io.write(c.id, "\t", ok and "valid" or "invalid", "\t", ok and 0 or #errs, "\n")
    if os.getenv("RD_BENCH_VERBOSE") and not ok then
      for _, e in ipairs(errs) do
        io.stderr:write("  lua ", c.id, " ", tostring(e.pointer), " ", tostring(e.keyword), ": ", tostring(e.message), "\n")
      end
    end
  end
  os.exit(0)
end

-- Each loop is loaded from source for every case, so every case gets fresh
-- bytecode and therefore its own traces (no trace of one case reused, or
-- side-exited from, by the next one).
local LOOPS = {
  single_decoded = [[
    local v, x = ...
    return function(n)
      local bad = 0
      for _ = 1, n do if not v(x) then bad = bad + 1 end end
      return bad
    end]],
  single_json = [[
    local v, text, decode = ...
    return function(n)
      local bad = 0
      for _ = 1, n do if not v(decode(text)) then bad = bad + 1 end end
      return bad
    end]],
  mixed_decoded = [[
    local vs, xs, P = ...
    return function(n)
      local bad = 0
      for _ = 1, n do
        for k = 1, P do if not vs[k](xs[k]) then bad = bad + 1 end end
      end
      return bad
    end]],
  mixed_json = [[
    local vs, xs, P, decode = ...
    return function(n)
      local bad = 0
      for _ = 1, n do
        for k = 1, P do if not vs[k](decode(xs[k])) then bad = bad + 1 end end
      end
      return bad
    end]],
}

local function loop(kind, ...)
  return assert(load(LOOPS[kind], "=" .. kind))(...)
end

local sink = 0

-- Warm-up: run for WARMUP seconds, and find a batch size of about 2 ms.
local function warm(run)
  local n, t0 = 1, now()
  while true do
    local b0 = now()
    sink = sink + run(n)
    local dt = now() - b0
    if dt < 0.002 then n = n * 2 elseif now() - t0 >= WARMUP then break end
  end
  return n
end

-- One round: whole batches of n runs for at least `time` seconds, after a
-- full GC; returns ops/s (run(n) performs n * per validations).
local function round(run, n, per, time)
  collectgarbage()
  collectgarbage()
  local ops, start, t = 0, now(), 0
  repeat
    sink = sink + run(n)
    ops = ops + n * per
    t = now()
  until t - start >= time
  return ops / (t - start)
end

-- the median ops/s of REPS rounds
local function measure(run, per)
  local n = warm(run)
  local results = {}
  for r = 1, REPS do results[r] = round(run, n, per, TIME) end
  table.sort(results)
  return results[math.floor((REPS + 1) / 2)]
end

local decode = json.decode
local function emit(id, mode, ops)
  io.write(string.format("%s\t%s\t%.0f\n", id, mode, ops))
  io.flush()
end

-- The rows, in the order both sides list them: per mode, every case, then
-- the mixed row. make_row returns the loop and the validations per run.
local function make_row(mode, idx)
  if idx <= #cases then
    local c = cases[idx]
    if mode == "decoded" then return loop("single_decoded", c.v, c.value), 1 end
    return loop("single_json", c.v, c.text, decode), 1
  end
  local vs, xs = {}, {}
  for i, c in ipairs(cases) do
    vs[i] = c.v
    xs[i] = mode == "decoded" and c.value or c.text
  end
  if mode == "decoded" then return loop("mixed_decoded", vs, xs, #cases), #cases end
  return loop("mixed_json", vs, xs, #cases, decode), #cases
end
local function row_id(idx) return idx <= #cases and cases[idx].id or "mixed" end

if cmd == "serve" then
  local rows = {}
  for line in io.stdin:lines() do
    local mode, id, secs = line:match("^(%S+)%s+(%S+)%s+(%S+)$")
    if line == "quit" then
      break
    elseif line == "rows" then
      for _, m in ipairs({ "decoded", "json" }) do
        for idx = 1, #cases + 1 do io.write(m, "\t", row_id(idx), "\n") end
      end
      io.write("end\n")
    elseif mode and (mode == "decoded" or mode == "json") then
      local idx
      for i = 1, #cases + 1 do if row_id(i) == id then idx = i end end
      if not idx then error("serve: unknown row " .. id) end
      local key = mode .. "\t" .. id
      local r = rows[key]
      if not r then
        local run, per = make_row(mode, idx)
        r = { run = run, per = per }
        r.n = warm(run)
        rows[key] = r
      end
      io.write(string.format("%.0f\n", round(r.run, r.n, r.per, tonumber(secs))))
    else
      error("serve: bad command " .. line)
    end
    io.flush()
  end
  os.exit(0)
end

for _, mode in ipairs({ "decoded", "json" }) do
  for idx = 1, #cases + 1 do
    local run, per = make_row(mode, idx)
    emit(row_id(idx), mode, measure(run, per))
  end
end
io.stderr:write(sink == -1 and "" or "") -- keep sink observable
