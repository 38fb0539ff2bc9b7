-- Buffer text helpers: bounded contexts, selections, and token pieces -> byte ranges.
local M = {}

--- The last `n` bytes of `s`, moved forward to a UTF-8 character boundary.
function M.tail(s, n)
  if not n or n <= 0 or #s <= n then
    return s
  end
  local start = #s - n + 1
  while start <= #s do
    local b = s:byte(start)
    if b < 0x80 or b >= 0xC0 then
      break
    end
    start = start + 1
  end
  return s:sub(start)
end

--- Text of `buf` before the 0-based (row, col) position, at most `max_chars` bytes (whole
--- characters) and read only as far back as needed.
function M.before(buf, row, col, max_chars)
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ''
  local parts = { line:sub(1, col) }
  local total = #parts[1]
  local r = row
  local step = 50
  while r > 0 and (not max_chars or total < max_chars) do
    local from = math.max(0, r - step)
    local lines = vim.api.nvim_buf_get_lines(buf, from, r, false)
    for i = #lines, 1, -1 do
      table.insert(parts, 1, lines[i] .. '\n')
      total = total + #lines[i] + 1
      if max_chars and total >= max_chars then
        break
      end
    end
    r = from
  end
  return M.tail(table.concat(parts), max_chars)
end

--- Split off trailing spaces/tabs: "is " -> "is", " ". A completion candidate then carries the
--- space itself (" Paris"), which is how tokenizers see words.
function M.split_trailing_space(s)
  local head, ws = s:match('^(.-)([ \t]*)$')
  return head, ws
end

--- A raw-format context must not be empty: the first candidate token is scored from it.
function M.nonempty_context(s)
  if s == nil or s == '' then
    return '\n'
  end
  return s
end

--- Byte (0-based, exclusive end) region of a range command's selection.
--- When the last visual selection was charwise and covers exactly line1..line2, its columns are
--- used; otherwise whole lines line1..line2 (1-based, inclusive).
--- Returns { srow, scol, erow, ecol } (0-based; end exclusive) and the text.
function M.region(buf, line1, line2, use_visual)
  local srow, scol = line1 - 1, 0
  local erow, ecol
  local last = vim.api.nvim_buf_get_lines(buf, line2 - 1, line2, false)[1] or ''
  erow, ecol = line2 - 1, #last
  if use_visual and vim.fn.visualmode() == 'v' then
    local s = vim.api.nvim_buf_get_mark(buf, '<')
    local e = vim.api.nvim_buf_get_mark(buf, '>')
    if s[1] == line1 and e[1] == line2 then
      scol = s[2]
      local eline = vim.api.nvim_buf_get_lines(buf, e[1] - 1, e[1], false)[1] or ''
      -- '> points at the first byte of the last character: include the whole character.
      local c = math.min(e[2], #eline)
      if c < #eline then
        local len = vim.str_utf_end and (vim.str_utf_end(eline, c + 1) + 1) or 1
        if not vim.str_utf_end then
          local b = eline:byte(c + 1)
          len = b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
        end
        ecol = math.min(#eline, c + len)
      else
        ecol = #eline
      end
    end
  end
  local lines = vim.api.nvim_buf_get_lines(buf, srow, erow + 1, false)
  if #lines == 0 then
    return { srow, scol, erow, ecol }, ''
  end
  lines[#lines] = lines[#lines]:sub(1, ecol)
  lines[1] = lines[1]:sub(scol + 1)
  if srow == erow then
    lines[1] = (vim.api.nvim_buf_get_lines(buf, srow, srow + 1, false)[1] or ''):sub(scol + 1, ecol)
  end
  return { srow, scol, erow, ecol }, table.concat(lines, '\n')
end

--- Map token pieces onto `text`. Returns a list of { s, e, value, tokens } (0-based byte offsets
--- into `text`, end exclusive). Pieces that are empty (a token holding part of a multi-byte
--- character) add their value to the next piece that shows text. If the pieces stop matching
--- the text, mapping stops there (the remaining tokens are not shown).
function M.token_ranges(text, tokens, field)
  local ranges, pos, pending, pending_n = {}, 1, 0, 0
  for _, tok in ipairs(tokens) do
    local piece = tok.text or ''
    local v = tonumber(tok[field]) or 0
    if piece == '' then
      pending, pending_n = pending + v, pending_n + 1
    else
      local at = pos
      if text:sub(pos, pos + #piece - 1) ~= piece then
        at = text:find(piece, pos, true)
        if not at or at - pos > 8 then
          break
        end
      end
      ranges[#ranges + 1] = { s = at - 1, e = at - 1 + #piece, value = v + pending, tokens = pending_n + 1 }
      pending, pending_n = 0, 0
      pos = at + #piece
    end
  end
  return ranges
end

--- A function mapping a 0-based byte offset into `text` (which starts at 0-based (row, col) of
--- a buffer) to the buffer position (row, col).
function M.pos_mapper(text, row, col)
  local starts = { 0 } -- 0-based offsets where each line of `text` starts
  for i in text:gmatch('()\n') do
    starts[#starts + 1] = i
  end
  return function(offset)
    local lo, hi = 1, #starts
    while lo < hi do
      local mid = math.floor((lo + hi + 1) / 2)
      if starts[mid] <= offset then
        lo = mid
      else
        hi = mid - 1
      end
    end
    if lo == 1 then
      return row, col + offset
    end
    return row + lo - 1, offset - starts[lo]
  end
end

return M
