"""The evaluation protocols by name: the ``eval`` command's sub-commands and what ``eval.protocols`` lists.

Adding a protocol is one :class:`~partialfc.eval.protocols.EvalProtocol` subclass and one entry here.
"""

from __future__ import annotations

from partialfc.eval.ijb_protocols import IdentifyProtocol, PairsProtocol
from partialfc.eval.protocols import EvalProtocol
from partialfc.eval.verification import VerifyProtocol

__all__ = ["PROTOCOLS", "get_protocol"]

PROTOCOLS: dict[str, type[EvalProtocol]] = {
    protocol.name: protocol for protocol in (VerifyProtocol, PairsProtocol, IdentifyProtocol)
}


def get_protocol(name: str) -> type[EvalProtocol]:
    """The protocol class called ``name``; KeyError lists the known names."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"no evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
