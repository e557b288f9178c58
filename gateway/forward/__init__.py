"""Store and forward to upstream HJ 212 platforms (city-to-province data sharing).

``Selector`` picks the upstreams of each accepted frame in the hub, before it is offered to
the writer: the store then queues it in the outbox in the transaction that stores it.
``Forwarder`` sends each worker's outbox rows (``gateway.forward.upstream`` explains how)
and refuses to start when an upstream is this gateway itself. ``Rewriter`` rebuilds a
frame for an upstream that needs another password or version bits.
"""

from __future__ import annotations

from gateway.forward.forwarder import Forwarder, ForwardError
from gateway.forward.rewrite import RewriteError, Rewriter
from gateway.forward.select import Selector

__all__ = ["ForwardError", "Forwarder", "RewriteError", "Rewriter", "Selector"]
