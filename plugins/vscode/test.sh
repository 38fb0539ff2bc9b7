#!/usr/bin/env bash
# CI entry point for the VS Code extension: clean install, build + tests against the real daemon,
# then the .vsix. ENDORM_BIN / ENDORM_MODEL choose the daemon binary and the model (see README).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm test
npm run package
