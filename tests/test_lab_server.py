"""The course's server settings (.jupyter/jupyter_server_config.json) name classes and hooks that exist and do
what they promise; the real browser test (tests/test_browser.py) runs JupyterLab with them."""
from __future__ import annotations

import json
from pathlib import Path

from traitlets.utils.importstring import import_item

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.loads((ROOT / ".jupyter" / "jupyter_server_config.json").read_text())


def test_every_configured_name_imports():
    assert callable(import_item(CONFIG["ContentsManager"]["pre_save_hook"]))
    from jupyter_server.services.kernels.connection.base import BaseKernelWebsocketConnection
    cls = import_item(CONFIG["ServerApp"]["kernel_websocket_connection_class"])
    assert issubclass(cls, BaseKernelWebsocketConnection)  # what ServerApp's Type trait accepts


class _Handler:
    def __init__(self):
        self.calls = []

    def set_nodelay(self, value):
        self.calls.append(("nodelay", value))


def test_the_kernel_websocket_is_set_to_no_delay_before_it_connects(monkeypatch):
    from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
    from specdef_lite.course.server import NoDelayKernelConnection
    handler = _Handler()
    monkeypatch.setattr(ZMQChannelsWebsocketConnection, "connect", lambda self: handler.calls.append(("connect",)))
    conn = NoDelayKernelConnection.__new__(NoDelayKernelConnection)  # no kernel manager: only connect() runs
    monkeypatch.setattr(NoDelayKernelConnection, "websocket_handler", handler, raising=False)
    conn.connect()
    assert handler.calls == [("nodelay", True), ("connect",)]
