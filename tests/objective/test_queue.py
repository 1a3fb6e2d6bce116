import pytest
import torch

from swav.model.heads import Prototypes
from swav.objective import FeatureQueue


def test_fifo_and_activation():
    q = FeatureQueue(n_crops=2, length=6, dim=3)
    assert not q.active
    for step in range(3):
        batch = torch.full((2, 3), float(step))
        q.push([batch, batch + 10])
        assert q.active == (step == 2)
    # newest first: slots 0-1 hold step 2, 2-3 step 1, 4-5 step 0
    assert q.embeddings[0, :, 0].tolist() == [2, 2, 1, 1, 0, 0]
    assert q.embeddings[1, :, 0].tolist() == [12, 12, 11, 11, 10, 10]
    q.push([torch.full((2, 3), 3.0), torch.full((2, 3), 13.0)])
    assert q.embeddings[0, :, 0].tolist() == [3, 3, 2, 2, 1, 1]  # step 0 dropped


def test_state_dict_round_trip():
    q = FeatureQueue(1, 4, 2)
    q.push([torch.randn(4, 2)])
    r = FeatureQueue(1, 4, 2)
    assert not r.active
    r.load_state_dict(q.state_dict())
    assert r.active and torch.equal(r.embeddings, q.embeddings)


def test_scores_against_current_prototypes():
    q = FeatureQueue(1, 4, 8)
    q.push([torch.nn.functional.normalize(torch.randn(4, 8), dim=1)])
    protos = Prototypes(8, 5)
    s = q.scores(0, protos)
    assert len(s) == 1 and torch.allclose(s[0], q.embeddings[0] @ protos.weight.t())


def test_batch_larger_than_queue_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        FeatureQueue(1, 2, 3).push([torch.zeros(4, 3)])


def test_usage_warning_when_queue_concentrates_codes(caplog):
    from swav.engine.health import CollapseMonitor

    m = CollapseMonitor([100], patience=10, start_iteration=0)
    assert not m.check_usage(2, 64, 100, queue_active=False)
    assert not m.check_usage(40, 64, 100, queue_active=True)
    with caplog.at_level("WARNING"):
        assert m.check_usage(3, 64, 100, queue_active=True)
    assert "epoch_queue_starts" in caplog.text
    assert not m.check_usage(3, 64, 100, queue_active=True)  # once


def test_the_objective_holds_its_queue():
    from swav.objective.swav_loss import SwAVConfig, SwAVLoss

    loss = SwAVLoss(SwAVConfig(queue_length=64), embedding_dim=8, world_size=2)
    assert isinstance(loss.queue, FeatureQueue) and loss.queue.length == 32
    assert "queue.embeddings" in loss.state_dict()
    assert SwAVLoss(SwAVConfig(queue_length=0), embedding_dim=8).queue is None
