-- rubberduck.validator.regex — ECMA-262 patterns on PCRE2 (Debian's
-- lua-rex-pcre2). Patterns are translated where ECMA and PCRE2 disagree
-- (\uXXXX, \u{...}, [^], ECMA's Unicode \s), compiled once with UTF,
-- DOLLAR_ENDONLY ($ matches only at the very end, as in ECMA) and
-- MATCH_INVALID_UTF (a non-UTF-8 subject simply does not match), and JIT
-- compiled. Groups are made non-capturing unless the pattern uses
-- backreferences, so a match allocates nothing.
--
-- compile(src) -> matcher | nil, err ; matcher(s) -> boolean

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

function M.compile(src)
  if type(src) ~= "string" then return nil, "must be a string" end
  if not ok_rex then
    return nil, "regular expressions need the lua-rex-pcre2 package (vendor/setup)"
  end
  local pcre, backrefs = M.translate(src)
  local flags = F_UTF + F_DOLLAR_ENDONLY + F_MATCH_INVALID_UTF
  if not backrefs then flags = flags + F_NO_AUTO_CAPTURE end
  local ok, re = pcall(rex.new, pcre, flags)
  if not ok or not re then
    return nil, "invalid regular expression /" .. src .. "/: " .. tostring(re)
  end
  pcall(re.jit_compile, re)
  local find = re.find
  return function(s) return find(re, s) ~= nil end
end

return M
