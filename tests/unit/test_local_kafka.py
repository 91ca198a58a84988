from __future__ import annotations

import pytest

from llmpulse.kafka.local import LocalKafka, LocalKafkaError


@pytest.mark.parametrize("missing, message", [("mvn", "Maven"), ("java", "Java 17")])
def test_missing_tools_give_a_clear_error(tmp_path, monkeypatch, missing: str, message: str) -> None:
    import shutil

    real_which = shutil.which
    monkeypatch.setattr("llmpulse.kafka.local.shutil.which", lambda name: None if name == missing else real_which(name))
    broker = LocalKafka(tmp_path, "127.0.0.1:1", version="0.0.0-not-fetched")
    with pytest.raises(LocalKafkaError, match=message):
        broker.fetch()


def test_down_without_a_broker_is_a_no_op(tmp_path) -> None:
    assert LocalKafka(tmp_path, "127.0.0.1:1").down() is False


def test_cluster_ids_never_look_like_an_option() -> None:
    """A cluster id starting with '-' made `kafka-storage format -t -xyz` fail (1 start in 64)."""
    import base64

    from llmpulse.kafka.local import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
