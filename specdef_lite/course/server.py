"""The Jupyter server's side of the course: kernel websockets that send every message at once.

Tornado leaves Nagle's algorithm on for a websocket once the HTTP upgrade is done, so a small message the
server writes while an earlier one is still unacknowledged waits for the browser's delayed ACK (~40 ms on
Linux). An explorer's update is exactly that: a status message, then plotly's update, on the same socket.
Measured here with ``tests/test_browser.py`` on notebooks 01 and 02 alone, run before and after one after the
other (2 cores, load 1.7–2.4): the round trip from the page sending a control's value to plotly's update
arriving went from 65–99 ms to 30–59 ms with the socket set to no-delay; key press → frame in the page from
156–198 ms to 94–119 ms.

Configured as ``ServerApp.kernel_websocket_connection_class`` in ``.jupyter/jupyter_server_config.json``
(installed by ``make lab`` and Binder's ``postBuild``, beside the save hook of ``common.display``).
"""
from __future__ import annotations

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

__all__ = ["NoDelayKernelConnection"]


class NoDelayKernelConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's kernel websocket connection with TCP_NODELAY set on the socket when it connects."""

    def connect(self):
        self.websocket_handler.set_nodelay(True)  # the handshake is done: open() calls connect()
        return super().connect()
