-- rubberduck.errors — the error kinds of the result envelope (DESIGN.md,
-- "Result envelope"), one table: kind -> { retryable, summary }.
local M = {}

M.kinds = {
  not_found         = { retryable = false, summary = "no such tool" },
  invalid_params    = { retryable = false, summary = "parameters failed the schema or a constraint" },
  unauthorized      = { retryable = false, summary = "the caller lacks a capability or role" },
  sandbox_violation = { retryable = false, summary = "denied path, function or syscall" },
  memory_limit      = { retryable = false, summary = "memory cap reached" },
  cpu_limit         = { retryable = false, summary = "CPU budget spent" },
  timeout           = { retryable = true,  summary = "wall-clock deadline passed" },
  output_limit      = { retryable = false, summary = "result larger than allowed" },
  invalid_output    = { retryable = false, summary = "result fails the output schema or cannot be encoded" },
  tool_error        = { retryable = false, summary = "the handler raised an error" },
  crashed           = { retryable = true,  summary = "the worker process died" },
  cancelled         = { retryable = false, summary = "the caller cancelled" },
  overloaded        = { retryable = true,  summary = "queue full; try later" },
  internal          = { retryable = false, summary = "a bug in the engine" },
}

-- Sorted list of kinds (for schemas, docs and help).
M.list = {}
for k in pairs(M.kinds) do M.list[#M.list + 1] = k end
table.sort(M.list)

-- Whether an error of `kind` may be retried. tool_error is retryable only
-- when the tool said so (error{ retryable = true, message = ... }).
function M.retryable(kind, tool_said)
  if kind == "tool_error" then return tool_said == true end
  local k = M.kinds[kind]
  return k ~= nil and k.retryable
end

function M.new(kind, message, details)
  assert(M.kinds[kind], "unknown error kind " .. tostring(kind))
  return { kind = kind, message = message or M.kinds[kind].summary, details = details }
end

return M
