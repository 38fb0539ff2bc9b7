#!/usr/bin/env bash
# Tests of the Neovim plugin against the real daemon and model: headless, plus a real nvim UI in tmux.
#   plugins/nvim/test.sh            (from anywhere; exit status = result)
# Needs tmux for the native-menu test (skipped without it, failed under ENDORM_REQUIRE_ALL=1).
# Env: NVIM (default: nvim on PATH), ENDORM_BIN (default: <repo>/target/release/endorm),
#      ENDORM_MODEL (default: ~/.cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf),
#      ENDORM_TEST_FILTER (only tests whose name contains it), ENDORM_OPENAPI (the schema file to check
#      the wire against; default docs/openapi.json), NVIM_CMP_DIR / BLINK_CMP_DIR (checkouts: their real menus).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
nvim="${NVIM:-$(command -v nvim || true)}"
if [[ -z "$nvim" ]]; then
  echo "plugins/nvim/test.sh: nvim not found (apt-get install -y neovim, or set NVIM)" >&2
  exit 2
fi
export ENDORM_BIN="${ENDORM_BIN:-$repo/target/release/endorm}"
"$nvim" --version | head -n 1
# -u NONE: no user config or plugins; -i NONE: no shada. The runner exits with its own status.
exec timeout 900 "$nvim" --headless -u NONE -i NONE -n -c "luafile $here/tests/run.lua" </dev/null
