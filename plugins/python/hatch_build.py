"""Build hook: the wheel with the daemon binary, when scripts/build-wheel asks for it.

With ``ENDORM_WHEEL_BINARY`` (the path of a built ``endorm``) and ``ENDORM_WHEEL_PLATFORM`` (its
platform tag, e.g. ``manylinux_2_34_x86_64``) the wheel carries the binary as the script
``endorm`` (``endorm-VERSION.data/scripts/endorm``: pip installs it into the environment's
``bin/``, as ruff's and maturin's ``bindings = "bin"`` wheels do) and is tagged
``py3-none-PLATFORM``. Without them it is the pure Python client, ``py3-none-any``, as
``pip install ./plugins/python`` builds it.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EndormBinaryHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: Dict[str, Any]) -> None:
        binary = os.environ.get("ENDORM_WHEEL_BINARY")
        platform = os.environ.get("ENDORM_WHEEL_PLATFORM")
        if self.target_name != "wheel" or (not binary and not platform):
            return
        if not binary or not platform:
            raise ValueError("set both ENDORM_WHEEL_BINARY and ENDORM_WHEEL_PLATFORM, or neither")
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise ValueError(f"ENDORM_WHEEL_BINARY={binary} is not an executable file")
        build_data["shared_scripts"][os.path.abspath(binary)] = "endorm"
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
