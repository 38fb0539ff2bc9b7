#!/usr/bin/env bash
# Headless tests of the Neovim plugin against the real daemon and model.
#   plugins/nvim/test.sh            (from anywhere; exit status = result)
# Env: NVIM (default: nvim on PATH), ENDORM_BIN (default: <repo>/target/release/endorm),
#      ENDORM_MODEL (default: ~/.cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf),
#      ENDORM_TEST_FILTER (only tests whose name contains it).
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
