"""Loading the encoder works offline without changing the process environment."""

from __future__ import annotations

import os
import socket

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from gradcomp.lora.model import load_encoder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during load_encoder: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_load_encoder_leaves_the_environment_alone(monkeypatch, no_network) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)
    model, tokenizer = load_encoder(num_layers=1)
    assert dict(os.environ) == before
    assert "HF_HUB_OFFLINE" not in os.environ
    assert model.config.num_hidden_layers == 1 and len(tokenizer) > 0


def test_a_users_setting_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    load_encoder(num_layers=1)
    assert os.environ["HF_HUB_OFFLINE"] == "0"
