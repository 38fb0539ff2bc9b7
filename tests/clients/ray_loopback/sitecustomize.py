"""Loopback only for the Ray clusters of the tests (local_ray.py puts this directory first on their
PYTHONPATH, so every process of the cluster runs it at start; nothing else does).

Ray Serve 2.60's replicas bind a gRPC server for calls between deployments to "[::]:0", every
interface, and no setting changes that (ray/serve/_private/replica.py, `_on_initialized`; see
ray-project/ray#64544). The tests' clusters are one node on 127.0.0.1 that must listen on nothing
else, so here Ray's helper that binds its gRPC ports (ray._common.tls_utils.add_port_to_grpc_server,
which replica.py imports by name) turns "[::]" into "127.0.0.1" as its module is loaded. No test
calls between deployments; the proxy reaches the replicas through Ray's own actor calls.
local_ray.py checks that every socket the cluster listens on is on loopback, this one included.
"""

import importlib.abc
import importlib.machinery
import sys

TARGET = "ray._common.tls_utils"
ANY = "[::]:"


def _patch(module):
    original = module.add_port_to_grpc_server

    def add_port_to_grpc_server(server, address):
        if address.startswith(ANY):
            address = "127.0.0.1:" + address[len(ANY):]
        return original(server, address)

    module.add_port_to_grpc_server = add_port_to_grpc_server


class _Loopback(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _Loopback())
