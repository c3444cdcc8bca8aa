"""Authenticated handshake for KV connections: HMAC-SHA256 challenge and response, both ways.

server -> client: b"PKVH" + server nonce (16)
client -> server: client nonce (16) + HMAC(secret, b"client" + server nonce + client nonce)
server -> client: HMAC(secret, b"server" + client nonce + server nonce)

A client without the secret is dropped before the server reads a single frame; a client also
refuses a server that cannot prove it holds the secret. The secret never crosses the wire.
Both sides run on blocking sockets whose timeout bounds the whole exchange.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

from transfer.sockio import recv_exactly

HELLO = b"PKVH"
NONCE_SIZE = 16
MAC_SIZE = 32


class AuthError(ConnectionError):
    """The peer failed the handshake: wrong or missing shared secret."""


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + first + second, hashlib.sha256).digest()


def server_handshake(sock: socket.socket, secret: bytes, timeout: float) -> None:
    sock.settimeout(timeout)
    server_nonce = os.urandom(NONCE_SIZE)
    sock.sendall(HELLO + server_nonce)
    reply = recv_exactly(sock, NONCE_SIZE + MAC_SIZE)
    client_nonce, client_mac = bytes(reply[:NONCE_SIZE]), bytes(reply[NONCE_SIZE:])
    if not hmac.compare_digest(client_mac, _mac(secret, b"client", server_nonce, client_nonce)):
        raise AuthError("peer failed the KV handshake (wrong shared secret)")
    sock.sendall(_mac(secret, b"server", client_nonce, server_nonce))


def client_handshake(sock: socket.socket, secret: bytes, timeout: float) -> None:
    sock.settimeout(timeout)
    hello = recv_exactly(sock, len(HELLO) + NONCE_SIZE)
    if bytes(hello[: len(HELLO)]) != HELLO:
        raise AuthError("peer is not a prfaas KV receiver")
    server_nonce = bytes(hello[len(HELLO):])
    client_nonce = os.urandom(NONCE_SIZE)
    sock.sendall(client_nonce + _mac(secret, b"client", server_nonce, client_nonce))
    proof = recv_exactly(sock, MAC_SIZE)
    expected = _mac(secret, b"server", client_nonce, server_nonce)
    if not hmac.compare_digest(bytes(proof), expected):
        raise AuthError("KV receiver failed the handshake (wrong shared secret)")
