"""The topic tree: every topic of DESIGN.md, validated levels, and filters that match what they should."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from schemas.topics import TopicTree


def test_topics_of_the_contract() -> None:
    tree = TopicTree("plant1/fedinspect/v1")
    p = "plant1/fedinspect/v1"
    assert tree.edge_status("e1") == f"{p}/edge/e1/status"
    assert tree.edge_events("e1") == f"{p}/edge/e1/events"
    assert tree.edge_command("e1") == f"{p}/edge/e1/cmd"
    assert tree.edge_command_ack("e1") == f"{p}/edge/e1/cmd/ack"
    assert tree.edge_update("e1", "t-9") == f"{p}/edge/e1/update/t-9"
    assert tree.model_announce("det") == f"{p}/model/det/announce"
    assert tree.model_chunk("det", 4) == f"{p}/model/det/4/chunk"
    assert tree.round("det") == f"{p}/round/det"
    assert tree.hub_status() == f"{p}/hub/status"
    assert TopicTree().hub_status() == "fedinspect/v1/hub/status"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "-lead", "x" * 65])
def test_levels_that_would_break_the_tree_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be a topic level"):
        TopicTree().edge_events(bad)


@pytest.mark.parametrize("bad", ["", "/lead", "trail/", "a//b", "a/+/b", "a/#"])
def test_invalid_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        TopicTree(bad)


def test_filters_match_exactly_their_topics() -> None:
    tree = TopicTree()
    assert topic_matches_sub(tree.all_edge_events(), tree.edge_events("e1"))
    assert not topic_matches_sub(tree.all_edge_events(), tree.edge_status("e1"))
    assert topic_matches_sub(tree.all_updates(), tree.edge_update("e1", "t1"))
    assert topic_matches_sub(tree.all_command_acks(), tree.edge_command_ack("e2"))
    assert not topic_matches_sub(tree.all_command_acks(), tree.edge_command("e2"))
    assert topic_matches_sub(tree.edge_subtree("e1"), tree.edge_command_ack("e1"))
    assert not topic_matches_sub(tree.edge_subtree("e1"), tree.edge_events("e2"))
    assert topic_matches_sub(tree.all_model_announcements(), tree.model_announce("det"))
    assert topic_matches_sub(tree.all_rounds(), tree.round("det"))
    assert topic_matches_sub(tree.everything(), tree.hub_status())


def test_edge_id_of() -> None:
    tree = TopicTree()
    assert tree.edge_id_of(tree.edge_update("line-7", "t1")) == "line-7"
    with pytest.raises(ValueError, match="not an edge topic"):
        tree.edge_id_of(tree.hub_status())
    with pytest.raises(ValueError, match="not an edge topic"):
        tree.edge_id_of("other/v1/edge/e1/events")
