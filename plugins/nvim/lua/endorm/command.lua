-- Bookkeeping shared by the commands (:EndormRerank, :EndormLens): count finished runs, keep the
-- last result (tests wait on both), report an error, then call the caller back.
local M = {}

--- A `finish(result, done)` for the command module `mod`, which holds `runs` and `last`.
function M.finisher(mod)
  return function(result, done)
    mod.runs = mod.runs + 1
    mod.last = result
    if result.err then
      vim.notify(result.err, vim.log.levels.ERROR, { title = 'endorm' })
    end
    if done then
      done(result)
    end
  end
end

return M
