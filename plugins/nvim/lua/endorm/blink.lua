-- blink.cmp sort function. Setup:
--   fuzzy = { sorts = { require('endorm.blink').sort, 'score', 'sort_text' } }
-- Returns nil (falls through to the next sort) until scores for the menu's items have arrived;
-- then the menu is shown again, sorted with them.
local sorter = require('endorm.sorter')

local M = {}

local function word(item)
  if item.textEdit and type(item.textEdit.newText) == 'string' and item.insertTextFormat ~= 2 then
    return item.textEdit.newText
  end
  if type(item.insertText) == 'string' and item.insertText ~= '' and item.insertTextFormat ~= 2 then
    return item.insertText
  end
  return item.label or ''
end

local function prefix()
  local buf = vim.api.nvim_get_current_buf()
  local cur = vim.api.nvim_win_get_cursor(0)
  return sorter.prefix_at(buf, cur[1] - 1, cur[2])
end

--- blink.cmp has no public "re-sort" call: hide the menu and show it again, which runs the
--- sorts again (now answered from the cache).
function M.refresh()
  local ok, blink = pcall(require, 'blink.cmp')
  if not ok then
    return
  end
  local visible = blink.is_menu_visible or blink.is_visible
  if not (visible and visible()) then
    return
  end
  pcall(blink.hide)
  vim.schedule(function()
    pcall(blink.show)
  end)
end

function M.sort(a, b)
  return sorter.compare(prefix(), word(a), word(b), M.refresh)
end

return M
