-- nvim-cmp comparator. Setup:
--   sorting = { comparators = { require('endorm.cmp').comparator, <cmp's defaults...> } }
-- Returns nil (falls through to the next comparator) until scores for the menu's items have
-- arrived; then the menu is re-sorted once with them.
local sorter = require('endorm.sorter')

local M = {}

local function word(entry)
  if entry.get_word then
    local ok, w = pcall(entry.get_word, entry)
    if ok and type(w) == 'string' and w ~= '' then
      return w
    end
  end
  local item = entry.get_completion_item and entry:get_completion_item() or entry.completion_item or {}
  return item.insertText or item.label or ''
end

local function prefix(entry)
  local ctx = entry.context
  if not ctx or not ctx.bufnr or not ctx.cursor then
    return nil
  end
  -- cmp's cursor: row 1-based, col 1-based byte column of the cursor (col - 1 bytes before it).
  return sorter.prefix_at(ctx.bufnr, ctx.cursor.row - 1, ctx.cursor.col - 1, ctx.cursor_before_line)
end

--- Re-sort nvim-cmp's open menu (no public API for it; core:filter() re-sorts without
--- re-querying sources, and leaves the menu alone while the user has an entry selected).
function M.refresh()
  local ok, cmp = pcall(require, 'cmp')
  if not ok or not cmp.visible or not cmp.visible() then
    return
  end
  if cmp.core and cmp.core.filter then
    pcall(function()
      cmp.core:filter()
    end)
  end
end

function M.comparator(a, b)
  local p = prefix(a)
  if not p then
    return nil
  end
  return sorter.compare(p, word(a), word(b), M.refresh)
end

return M
