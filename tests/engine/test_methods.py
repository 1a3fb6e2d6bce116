"""The method seam: a method registered from outside the package trains through the same loop,
checkpoint and resume as the built-in ones, and the engine reaches every method only through
its hooks."""

import pytest
import torch
import torch.nn.functional as F

from swav.config import ConfigError, build_config
from swav.engine.checkpoint import safe_load
from swav.engine.method import METHODS, Method, ObjectiveInputs, method_of
from swav.engine.run_dir import read_metrics
from swav.engine.train import pretrain
from swav.objective.swav_loss import Objective, StepInput, SwAVStep
from tests.conftest import tiny_overrides


class ToyObjective(Objective):
    """Every crop predicts the prototype its image's first crop scores highest (a
    self-labelling loss with no Sinkhorn, no queue and no bank)."""

    def __init__(self, given: ObjectiveInputs) -> None:
        super().__init__()
        self.cfg, self.queue = given.swav, None
        self.steps = 0

    def step(self, inputs: StepInput) -> SwAVStep:
        b, scores = inputs.batch_size, inputs.out.scores[0].float() / self.cfg.temperature
        targets = scores[:b].detach().argmax(dim=1).repeat(scores.shape[0] // b)
        self.steps += 1
        spread = inputs.out.embeddings[:b].detach().float().std(dim=0).mean()
        return SwAVStep(F.cross_entropy(scores, targets), scores[:b].softmax(1).detach(), spread)

    def freeze_prototypes(self, prototypes: torch.nn.Module | None, iteration: int) -> bool:
        return False


class ToyMethod(Method):
    name = "toy"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def build_objective(self, given: ObjectiveInputs) -> Objective:
        return ToyObjective(given)

    def prepare(self, t) -> None:
        self.calls.append(("prepare", t.epoch))

    def start_epoch(self, t, epoch: int) -> None:
        self.calls.append(("start_epoch", epoch))
        t.record("toy", epoch=epoch + 1)

    def save(self, objective, dist) -> dict:
        return {"toy": {"steps": objective.steps}}

    def load(self, objective, dist, state) -> None:
        objective.steps = state["toy"]["steps"]


@pytest.fixture
def toy(monkeypatch):
    method = ToyMethod()
    monkeypatch.setitem(METHODS, method.name, method)
    return method


def test_a_method_registered_from_a_test_file_trains_saves_and_resumes(tmp_path, toy):
    run = tmp_path / "toy"
    cfg = build_config(None, tiny_overrides(run, method="toy", **{"train.epochs": 3}))
    first = pretrain(cfg, progress=False, stop_after_epoch=2)
    assert first.interrupted and first.epochs_done == 2
    assert toy.calls == [("prepare", 0), ("start_epoch", 0), ("start_epoch", 1)]
    saved = safe_load(run / "checkpoint.pt")
    assert saved["toy"] == {"steps": 6}  # 2 epochs x 3 iterations, kept by the method's save
    assert saved["config"]["method"] == "toy"
    before = {k: v.clone() for k, v in first.model.state_dict().items()}

    toy.calls.clear()
    second = pretrain(cfg, progress=False)  # resumes: the method's load, then one more epoch
    assert second.epochs_done == 3 and not second.interrupted
    assert toy.calls == [("prepare", 2), ("start_epoch", 2)]
    assert safe_load(run / "checkpoint.pt")["toy"] == {"steps": 9}
    after = second.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    records = read_metrics(run)
    assert [r["epoch"] for r in records if r.get("kind") == "toy"] == [1, 2, 3]
    losses = [r["loss"] for r in records if "kind" not in r]
    assert len(losses) == 9 and all(torch.isfinite(torch.tensor(losses)))


def test_an_unknown_method_is_refused_naming_the_registered_ones(tmp_path):
    cfg = build_config(None, tiny_overrides(tmp_path / "x", method="nope"))
    with pytest.raises(ConfigError, match="method: must be one of ") as e:
        method_of(cfg)
    assert all(name in str(e.value) for name in ("swav", "deepclusterv2", "selav2"))
    with pytest.raises(ConfigError, match="got 'nope'"):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_method_s_own_rules_are_checked_before_training(tmp_path):
    over = {"method": "selav2", "swav.queue_length": 32}
    cfg = build_config(None, tiny_overrides(tmp_path / "q", **over))
    with pytest.raises(ConfigError, match="swav.queue_length: must be 0 for selav2"):
        pretrain(cfg, progress=False)
    stream = build_config(None, tiny_overrides(tmp_path / "s", method="deepclusterv2"))
    stream.data.source = "pipe:cat shard-{000..001}.tar"
    with pytest.raises(ConfigError, match="memory bank indexed by image"):
        method_of(stream)
