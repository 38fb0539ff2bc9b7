-- Neovim's own completion menu (the popup of complete(), 'completefunc' and 'omnifunc'), best
-- first by endorm's reward. No completion plugin needed.
--
--   vim.bo.omnifunc = require('endorm.native').wrap('syntaxcomplete#Complete')  -- <C-x><C-o>
--   vim.bo.completefunc = require('endorm.native').wrap(my_lua_function)       -- <C-x><C-u>
--   require('endorm.native').complete(startcol, items)       -- instead of vim.fn.complete()
--
-- The native menu cannot be re-sorted once shown without resetting it (complete() restarts the
-- completion, and with the default 'completeopt' the first item is already inserted), so the items
-- are ranked BEFORE the menu opens: the scores are waited for, at most completion.budget_ms; items
-- whose scores are cached (same text before the word, same item) cost nothing. Late or failed
-- scores leave the source's order. The context is the buffer text before the completion's start
-- column (what the source's findstart returned), as the nvim-cmp comparator uses.
local config = require('endorm.config')
local sorter = require('endorm.sorter')
local text = require('endorm.text')

local M = {}

local function word_of(item)
  if type(item) == 'string' then
    return item
  end
  if type(item) == 'table' and type(item.word) == 'string' then
    return item.word
  end
  return nil
end

--- `items` (complete()'s list: strings or dicts with `word`) best first by their reward after the
--- text of `buf` before the 1-based byte column `startcol` of the cursor's line. Waits at most
--- completion.budget_ms for scores not in the cache. The first completion.max_items items are
--- ranked; unscored items follow the scored ones in their own order.
function M.rank(startcol, items, buf)
  local o = config.get().completion
  if (o.budget_ms or 0) <= 0 or type(items) ~= 'table' or #items < 2 then
    return items
  end
  buf = buf or vim.api.nvim_get_current_buf()
  local row = vim.api.nvim_win_get_cursor(0)[1] - 1
  local prefix = text.before(buf, row, math.max(0, startcol - 1), o.context_chars)
  local limit = math.min(#items, o.max_items)
  local missing, seen = {}, {}
  for i = 1, limit do
    local w = word_of(items[i])
    if w and w ~= '' and not seen[w] and sorter.score_of(prefix, w) == nil then
      seen[w] = true
      missing[#missing + 1] = w
    end
  end
  if #missing > 0 and not sorter.gave_up[prefix] then
    local done = false
    sorter.request(prefix, missing, function()
      done = true
    end)
    -- The request itself is cut off at the budget; the margin only covers the callback.
    vim.wait(o.budget_ms + 100, function()
      return done
    end, 5)
  end
  local keyed = {}
  for i, item in ipairs(items) do
    local w = i <= limit and word_of(item) or nil
    keyed[i] = { item = item, i = i, score = w and sorter.score_of(prefix, w) or nil }
  end
  table.sort(keyed, function(a, b)
    if a.score ~= nil and b.score ~= nil and a.score ~= b.score then
      return a.score > b.score
    end
    if (a.score ~= nil) ~= (b.score ~= nil) then
      return a.score ~= nil
    end
    return a.i < b.i
  end)
  local out = {}
  for i, k in ipairs(keyed) do
    out[i] = k.item
  end
  return out
end

--- vim.fn.complete(startcol, items), with `items` ranked first (M.rank).
function M.complete(startcol, items)
  vim.fn.complete(startcol, M.rank(startcol, items))
  return ''
end

local wrapped = {} -- source -> option value
local count = 0

local function call(source, findstart, base)
  if type(source) == 'function' then
    return source(findstart, base)
  end
  if source:sub(1, 6) == 'v:lua.' then
    -- Vim cannot call a v:lua name through call(); an expression can.
    return vim.api.nvim_eval(('%s(%d, %s)'):format(source, findstart, vim.fn.string(base)))
  end
  return vim.fn.call(source, { findstart, base })
end

--- A 'completefunc'/'omnifunc' value that calls `source` (a Lua function or the name of a Vim
--- function, as the option would hold) and ranks the items it returns. The same source gives the
--- same value; a value this function returned is given back unchanged. A source that completes
--- asynchronously (returns -2 and calls complete() itself, as vim.lsp.omnifunc does) is passed
--- through unranked: have it call M.complete() instead.
function M.wrap(source)
  if type(source) == 'string' and source:find("^v:lua%.require'endorm%.native'%.") then
    return source
  end
  if (type(source) ~= 'string' or source == '') and type(source) ~= 'function' then
    error('endorm.native.wrap: expected a Lua function or the name of a completion function', 2)
  end
  if wrapped[source] then
    return wrapped[source]
  end
  count = count + 1
  local name = 'complete_' .. count
  local start
  M[name] = function(findstart, base)
    local r = call(source, findstart, base)
    if findstart == 1 then
      start = r
      return r
    end
    -- findstart's answer is a 0-based byte column; a negative one (other than the cancels, which
    -- never get here) means the cursor's column.
    local col = (type(start) == 'number' and start >= 0) and start or (vim.fn.col('.') - 1)
    if type(r) == 'table' then
      if (vim.islist or vim.tbl_islist)(r) then
        return M.rank(col + 1, r)
      end
      if type(r.words) == 'table' then
        r.words = M.rank(col + 1, r.words)
      end
    end
    return r
  end
  wrapped[source] = "v:lua.require'endorm.native'." .. name
  return wrapped[source]
end

return M
