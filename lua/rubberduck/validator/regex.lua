-- rubberduck.validator.regex — ECMA-262 patterns on PCRE2. Patterns are
-- translated where ECMA and PCRE2 disagree (\uXXXX, \u{...}, [^], ECMA's
-- Unicode \s), compiled once with UTF, DOLLAR_ENDONLY ($ matches only at the
-- very end, as in ECMA) and MATCH_INVALID_UTF (a non-UTF-8 subject simply
-- does not match), and JIT compiled. Groups are made non-capturing unless
-- the pattern uses backreferences, so a match allocates nothing.
--
-- libpcre2-8 is called directly through LuaJIT's FFI: one match data block
-- per pattern, made at compile time, and pcre2_jit_match, which the trace
-- compiler turns into a plain C call. When the FFI or the library cannot be
-- loaded, Debian's lua-rex-pcre2 (lrexlib) is used instead.
--
-- compile(src) -> matcher | nil, err ; matcher(s) -> boolean
-- check(src)   -> true | nil, err      (compiles without JIT, keeps nothing)

local M = {}

local ok_rex, rex = pcall(require, "rex_pcre2")

local F_UTF, F_DOLLAR_ENDONLY, F_NO_AUTO_CAPTURE = 0x00080000, 0x00000010, 0x00002000
local F_MATCH_INVALID_UTF = 0x04000000

M.available = ok_rex

-- ECMA \s: WhiteSpace and LineTerminator
local ECMA_S = "\\t\\n\\v\\f\\r \\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}\\x{feff}"

-- ECMA long General_Category names -> PCRE2 short ones
local PROPS = {
  Letter = "L", Cased_Letter = "L&", Uppercase_Letter = "Lu", Lowercase_Letter = "Ll",
  Titlecase_Letter = "Lt", Modifier_Letter = "Lm", Other_Letter = "Lo",
  Mark = "M", Nonspacing_Mark = "Mn", Spacing_Mark = "Mc", Enclosing_Mark = "Me",
  Number = "N", Decimal_Number = "Nd", digit = "Nd", Letter_Number = "Nl", Other_Number = "No",
  Punctuation = "P", punct = "P", Connector_Punctuation = "Pc", Dash_Punctuation = "Pd",
  Open_Punctuation = "Ps", Close_Punctuation = "Pe", Initial_Punctuation = "Pi",
  Final_Punctuation = "Pf", Other_Punctuation = "Po",
  Symbol = "S", Math_Symbol = "Sm", Currency_Symbol = "Sc", Modifier_Symbol = "Sk", Other_Symbol = "So",
  Separator = "Z", Space_Separator = "Zs", Line_Separator = "Zl", Paragraph_Separator = "Zp",
  Other = "C", Control = "Cc", cntrl = "Cc", Format = "Cf", Surrogate = "Cs", Private_Use = "Co",
  Unassigned = "Cn",
}

-- translate(src) -> PCRE2 source, uses_backrefs
function M.translate(src)
  local out, i, n, in_class = {}, 1, #src, false
  local backrefs = false
  while i <= n do
    local c = src:sub(i, i)
    if c == "\\" then
      local d = src:sub(i + 1, i + 1)
      if d == "u" and src:sub(i + 2, i + 2) == "{" then
        local hex, j = src:match("^(%x+)}()", i + 3)
        if hex then out[#out + 1] = "\\x{" .. hex .. "}"; i = j
        else out[#out + 1] = "\\u"; i = i + 2 end
      elseif d == "u" and src:match("^%x%x%x%x", i + 2) then
        out[#out + 1] = "\\x{" .. src:sub(i + 2, i + 5) .. "}"; i = i + 6
      elseif (d == "p" or d == "P") and src:sub(i + 2, i + 2) == "{" then
        local name, j = src:match("^([%w_=]+)}()", i + 3)
        if name then
          local short = PROPS[name] or name:match("^[Ss]cript=(.*)$") or name:match("^sc=(.*)$")
            or name:match("^[Gg]eneral_[Cc]ategory=(.*)$") or name:match("^gc=(.*)$") or name
          out[#out + 1] = "\\" .. d .. "{" .. (PROPS[short] or short) .. "}"; i = j
        else
          out[#out + 1] = c .. d; i = i + 2
        end
      elseif d == "s" then
        out[#out + 1] = in_class and ECMA_S or ("[" .. ECMA_S .. "]"); i = i + 2
      elseif d == "S" and not in_class then
        out[#out + 1] = "[^" .. ECMA_S .. "]"; i = i + 2
      elseif d:match("%d") and d ~= "0" and not in_class then
        backrefs = true; out[#out + 1] = c .. d; i = i + 2
      elseif d == "k" then
        backrefs = true; out[#out + 1] = c .. d; i = i + 2
      else
        out[#out + 1] = c .. d; i = i + 2
      end
    elseif in_class then
      if c == "]" then in_class = false end
      out[#out + 1] = c; i = i + 1
    elseif c == "[" then
      if src:sub(i, i + 2) == "[^]" then out[#out + 1] = "[\\s\\S]"; i = i + 3
      elseif src:sub(i, i + 1) == "[]" then out[#out + 1] = "(?!)"; i = i + 2
      else
        in_class = true; out[#out + 1] = c; i = i + 1
        if src:sub(i, i) == "^" then out[#out + 1] = "^"; i = i + 1 end
        if src:sub(i, i) == "]" then out[#out + 1] = "\\]"; i = i + 1 end
      end
    else
      out[#out + 1] = c; i = i + 1
    end
  end
  return table.concat(out), backrefs
end

-- the FFI binding, or nil
local pcre2
do
  local okf, ffi = pcall(require, "ffi")
  if okf then
    pcall(ffi.cdef, [[
      typedef struct pcre2_real_code_8 pcre2_code_8;
      typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
      pcre2_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
                                    int *errorcode, size_t *erroroffset, void *ccontext);
      int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
      void pcre2_code_free_8(pcre2_code_8 *code);
      pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code, void *gcontext);
      void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
      int pcre2_match_8(const pcre2_code_8 *code, const char *subject, size_t length, size_t startoffset,
                        uint32_t options, pcre2_match_data_8 *match_data, void *mcontext);
      int pcre2_jit_match_8(const pcre2_code_8 *code, const char *subject, size_t length, size_t startoffset,
                            uint32_t options, pcre2_match_data_8 *match_data, void *mcontext);
      int pcre2_get_error_message_8(int errorcode, char *buffer, size_t bufflen);
    ]])
    for _, name in ipairs { "pcre2-8", "libpcre2-8.so.0", "libpcre2-8.so" } do
      local okl, lib = pcall(ffi.load, name)
      if okl and pcall(function() return lib.pcre2_jit_match_8 and lib.pcre2_compile_8 end) then
        pcre2 = { ffi = ffi, lib = lib, err = ffi.new("int[1]"), off = ffi.new("size_t[1]"),
                  buf = ffi.new("char[256]") }
        break
      end
    end
  end
end
M.ffi = pcre2 ~= nil
M.available = pcre2 ~= nil or ok_rex

local PCRE2_JIT_COMPLETE = 1

-- compile the translated pattern through the FFI -> code (gc-managed) or nil, message
local function ffi_code(pcre, flags)
  local lib = pcre2.lib
  local code = lib.pcre2_compile_8(pcre, #pcre, flags, pcre2.err, pcre2.off, nil)
  if code == nil then
    lib.pcre2_get_error_message_8(pcre2.err[0], pcre2.buf, 256)
    return nil, pcre2.ffi.string(pcre2.buf) .. " (pattern offset: " .. tonumber(pcre2.off[0]) .. ")"
  end
  return pcre2.ffi.gc(code, lib.pcre2_code_free_8)
end

local function flags_for(src)
  local pcre, backrefs = M.translate(src)
  local flags = F_UTF + F_DOLLAR_ENDONLY + F_MATCH_INVALID_UTF
  if not backrefs then flags = flags + F_NO_AUTO_CAPTURE end
  return pcre, flags
end

function M.compile(src)
  if type(src) ~= "string" then return nil, "must be a string" end
  if not M.available then
    return nil, "regular expressions need libpcre2-8 or the lua-rex-pcre2 package (vendor/setup)"
  end
  local pcre, flags = flags_for(src)
  if pcre2 then
    local code, err = ffi_code(pcre, flags)
    if not code then return nil, "invalid regular expression /" .. src .. "/: " .. err end
    local lib = pcre2.lib
    local md = lib.pcre2_match_data_create_from_pattern_8(code, nil)
    if md == nil then return nil, "out of memory compiling /" .. src .. "/" end
    md = pcre2.ffi.gc(md, lib.pcre2_match_data_free_8)
    if lib.pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) == 0 then
      local jit_match = lib.pcre2_jit_match_8
      return function(s) return jit_match(code, s, #s, 0, 0, md, nil) >= 0 end
    end
    local match = lib.pcre2_match_8
    return function(s) return match(code, s, #s, 0, 0, md, nil) >= 0 end
  end
  local ok, re = pcall(rex.new, pcre, flags)
  if not ok or not re then
    return nil, "invalid regular expression /" .. src .. "/: " .. tostring(re)
  end
  pcall(re.jit_compile, re)
  local find = re.find
  return function(s) return find(re, s) ~= nil end
end

-- raw(pcre [, flags]) -> rc(s) | nil: a PCRE2 pattern as is (no ECMA
-- translation), JIT compiled, through the FFI only; rc(s) returns the
-- pcre2 match result (>= 0: match, -1: no match, < -1: an error such as a
-- JIT stack overflow). nil when the FFI binding is not available.
function M.raw(pcre, flags)
  if not pcre2 then return nil end
  local code = ffi_code(pcre, flags or 0)
  if not code then return nil end
  local lib = pcre2.lib
  local md = lib.pcre2_match_data_create_from_pattern_8(code, nil)
  if md == nil then return nil end
  md = pcre2.ffi.gc(md, lib.pcre2_match_data_free_8)
  if lib.pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) ~= 0 then return nil end
  local jit_match = lib.pcre2_jit_match_8
  -- not a tail call: LuaJIT counts tail calls in a trace against its loop
  -- unroll limit, and a validator makes many of these calls
  return function(s)
    local rc = jit_match(code, s, #s, 0, 0, md, nil)
    return rc
  end
end

-- is src a valid pattern? (the "regex" format: compiled, not JIT compiled,
-- not kept)
function M.check(src)
  if type(src) ~= "string" then return nil, "must be a string" end
  if pcre2 then
    local pcre, flags = flags_for(src)
    local code, err = ffi_code(pcre, flags)
    if not code then return nil, err end
    return true
  end
  return M.compile(src)
end

return M
