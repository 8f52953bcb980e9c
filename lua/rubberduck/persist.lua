-- rubberduck.persist — results larger than a threshold kept in the store by
-- execution id (stage 4's persistence step, issue 8 item 6).
--
-- The result processor (results.lua) hands over the canonical JSON of an
-- output larger than `threshold` bytes, compressed with zstd; this module
-- stores it in the persistent store (namespace "results", key = the
-- execution id), optionally encrypted, and the envelope's
-- metadata.persisted says where: { ref = "results/<id>", stored_bytes,
-- encoding = "zstd", encrypted }. The envelope keeps its output: the
-- caller already holds it; the store keeps it for later readers
-- (`rduck result get ID`).
--
-- A stored value is  "RDR1" .. 8 hex digits (length of H) .. H .. payload,
-- H the JSON of { encoding, output_bytes, output_digest, format,
-- binary_paths, encrypted, stored_at }; payload is the zstd frame, or,
-- encrypted, XChaCha20-Poly1305 of it with a random nonce and the execution
-- id as associated data (a record copied under another id does not open).
-- The key is DATA/results.key (32 bytes, mode 0600, made on first use).
-- Reading checks the BLAKE2b digest of what it decompressed against the one
-- recorded, so a damaged record is an error, never a wrong answer.
local core = require "rubberduck.core"
local json = require "rubberduck.json"

local R = core.results
local M = {}

M.NS = "results"
M.MAGIC = "RDR1"
M.THRESHOLD = 1048576   -- bytes of canonical JSON above which an output is kept
-- Largest output read back (decompressed): max_output is at most this.
M.MAX_READ = 1024 * 1024 * 1024

-- Give the engine its persist function (results.lua calls it). opts (the
-- `results` option of rd.open): { persist = false, threshold = N,
-- encrypt = true }. Returns true | nil, message (a refused key file).
function M.attach(engine, opts)
  opts = opts or {}
  if opts.persist == false or not engine.store then return true end
  local threshold = opts.threshold or M.THRESHOLD
  if type(threshold) ~= "number" or threshold < 0 then
    return nil, "results.threshold: expected a number of bytes >= 0, got " .. tostring(threshold)
  end
  local key
  if opts.encrypt then
    local k, err = R.box_key(engine.data_dir, true)
    if not k then return nil, "results.encrypt: " .. tostring(err) end
    key = k
  end
  engine.persist_key = key
  engine.persist_threshold = threshold
  local kv = engine.store
  engine.persist = function(id, frame, meta)
    return M.put(kv, id, frame, meta, key)
  end
  return true
end

function M.detach(engine)
  if engine.persist_key then engine.persist_key:close() end
  engine.persist_key, engine.persist = nil, nil
end

-- Store `frame` (zstd) under `id`. Returns the reference | nil, message.
function M.put(kv, id, frame, meta, key)
  local head = {
    encoding = meta.encoding or "zstd", output_bytes = meta.output_bytes,
    output_digest = meta.output_digest, format = meta.format,
    binary_paths = meta.binary_paths or json.array({}),
    encrypted = key ~= nil, stored_at = core.now(),
  }
  local payload = key and key:seal(frame, id) or frame
  local h = assert(json.encode(head))
  local ok, err = kv:put(M.NS, id, M.MAGIC .. string.format("%08x", #h) .. h .. payload)
  if not ok then return nil, err end
  return "results/" .. id
end

-- Split a stored value. Returns head, payload | nil, message.
local function split(value)
  if value:sub(1, 4) ~= M.MAGIC then return nil, "not a persisted result (bad magic)" end
  local n = tonumber(value:sub(5, 12), 16)
  if not n or 12 + n > #value then return nil, "persisted result is damaged (bad header length)" end
  local head = json.decode(value:sub(13, 12 + n))
  if type(head) ~= "table" or type(head.output_digest) ~= "string" then
    return nil, "persisted result is damaged (bad header)"
  end
  return head, value:sub(13 + n)
end

-- Read a persisted result back. `kv` is a store's kv; `data_dir` holds the
-- key when the record is encrypted. Returns canonical_json_text, head |
-- nil, message.
function M.get(kv, id, data_dir)
  local value, err = kv:get(M.NS, id)
  if value == nil then
    return nil, err or ("no persisted result for execution " .. tostring(id))
  end
  local head, payload = split(value)
  if not head then return nil, payload end
  if head.encrypted then
    local key, kerr = R.box_key(data_dir, false)
    if not key then return nil, "the result is encrypted and its key is unavailable: " .. tostring(kerr) end
    local plain, oerr = key:open(payload, id)
    key:close()
    if not plain then return nil, oerr end
    payload = plain
  end
  local text, derr = R.decompress(payload, M.MAX_READ)
  if not text then return nil, "persisted result is damaged: " .. tostring(derr) end
  if R.digest(text) ~= head.output_digest then
    return nil, "persisted result is damaged: its BLAKE2b digest does not match the recorded one"
  end
  return text, head
end

return M
