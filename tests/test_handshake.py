"""The token handshake as plain objects: mutual proof, and the token never on the wire."""
from __future__ import annotations

import pytest

from shardstats.protocol.messages import PROTOCOL_VERSION
from shardstats.protocol import HandshakeFailed, encode_frame
from shardstats.protocol.handshake import ClientHandshake, ServerHandshake

TOKEN = b"s3cret-token-value"


def test_both_sides_prove_the_token_and_learn_each_others_id():
    srv = ServerHandshake(TOKEN, 3)
    cli = ClientHandshake(TOKEN, "peer", 5)
    hello = cli.receive_challenge(srv.challenge())
    welcome = srv.receive_hello(hello)
    assert (srv.peer_role, srv.peer_id) == ("peer", 5)
    assert cli.receive_welcome(welcome) == 3
    wire = encode_frame(srv.challenge()) + encode_frame(hello) + encode_frame(welcome)
    assert TOKEN not in wire


def test_wrong_token_is_refused_both_ways():
    srv = ServerHandshake(TOKEN, 0)
    bad = ClientHandshake(b"other", "coord", -1)
    with pytest.raises(HandshakeFailed):
        srv.receive_hello(bad.receive_challenge(srv.challenge()))
    srv2 = ServerHandshake(b"other", 0)
    cli = ClientHandshake(TOKEN, "coord", -1)
    hello = cli.receive_challenge(srv2.challenge())
    with pytest.raises(HandshakeFailed):
        srv2.receive_hello(hello)


def test_claiming_another_id_breaks_the_proof():
    srv = ServerHandshake(TOKEN, 0)
    cli = ClientHandshake(TOKEN, "peer", 4)
    hello = cli.receive_challenge(srv.challenge())
    hello["id"] = 2
    with pytest.raises(HandshakeFailed):
        srv.receive_hello(hello)


def test_replayed_hello_fails_against_a_fresh_challenge():
    srv1 = ServerHandshake(TOKEN, 0)
    hello = ClientHandshake(TOKEN, "peer", 1).receive_challenge(srv1.challenge())
    with pytest.raises(HandshakeFailed):
        ServerHandshake(TOKEN, 0).receive_hello(hello)


def test_other_protocol_version_is_refused():
    srv = ServerHandshake(TOKEN, 0)
    hello = ClientHandshake(TOKEN, "peer", 1).receive_challenge(srv.challenge())
    hello["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(HandshakeFailed):
        srv.receive_hello(hello)
