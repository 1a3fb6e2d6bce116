"""Freed host memory kept between training steps: a freed large tensor's pages are reused by the
next one instead of being unmapped and faulted in again, glibc's settings come back after, and
training on the CPU runs with it (unless train.keep_freed_memory=false)."""

import contextlib
import resource

import pytest
import torch

import swav.engine.host_memory as host_memory
import swav.engine.train as train_mod
from swav.config import build_config
from swav.engine.train import pretrain
from swav.errors import ConfigError
from tests.conftest import tiny_overrides

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="needs glibc's malloc")


def page_faults_of_steps(steps: int = 4, sizes_mb: tuple[int, ...] = (40, 48, 36)) -> int:
    """Minor page faults while ``steps`` times allocating, writing and freeing tensors of
    ``sizes_mb`` (each above glibc's largest mmap threshold, 32 MB), as a training step does
    with its activations, after three such steps to settle."""

    def step() -> None:
        tensors = [torch.ones(mb * 2**20 // 4) for mb in sizes_mb]
        del tensors

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_kept_memory_is_reused():
    default = page_faults_of_steps()
    if default < 4 * 124 * 2**20 // 4096 // 4:
        pytest.skip(f"{default} faults: this kernel maps big allocations without 4 KB faults")
    with host_memory.freed_memory_kept() as kept:
        assert kept
        reused = page_faults_of_steps()
    assert reused * 20 < default, (reused, default)


def test_glibcs_defaults_and_the_kept_memory_come_back_after_training(monkeypatch):
    """What is handed to glibc (the faults after it depend on the heap's state, so the calls
    are checked): the kept settings, then the defaults and a trim."""

    class FakeLibc:
        def __init__(self):
            self.calls = []

        def mallopt(self, param, value):
            self.calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            self.calls.append(("malloc_trim", pad))
            return 1

    libc = FakeLibc()
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    with host_memory.freed_memory_kept() as kept:
        assert kept
        assert {c[1]: c[2] for c in libc.calls} == host_memory.KEPT
        libc.calls.clear()
    assert {c[1]: c[2] for c in libc.calls if c[0] == "mallopt"} == host_memory.DEFAULTS
    assert libc.calls[-1] == ("malloc_trim", 0)


def test_nothing_changes_when_not_enabled(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(host_memory, "release_freed_memory", lambda: calls.append("release"))
    with host_memory.freed_memory_kept(enabled=False) as kept:
        assert not kept
    assert calls == []
    with pytest.raises(RuntimeError), host_memory.freed_memory_kept() as kept:
        assert kept
        raise RuntimeError("a failed step")
    assert calls == ["keep", "release"]  # given back even when training fails


def test_without_glibc_nothing_is_kept(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.keep_freed_memory() is False
    host_memory.release_freed_memory()  # does nothing, raises nothing


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, keep):
    seen = []

    @contextlib.contextmanager
    def recorded(enabled=True):
        seen.append(enabled)
        yield enabled

    monkeypatch.setattr(train_mod, "freed_memory_kept", recorded)
    over = {"train.device": "cpu", "train.keep_freed_memory": str(keep).lower()}
    result = pretrain(build_config(None, tiny_overrides(tmp_path / "run", **over)), progress=False)
    assert result.epochs_done == 2
    assert seen == [keep]
    # a run setting, not part of what the run is: changing it does not block a resume
    identity = build_config(None, tiny_overrides(tmp_path)).identity()
    assert "keep_freed_memory" not in identity["train"]


def test_a_wrong_value_of_the_setting_is_refused_before_training(tmp_path):
    over = {"train.keep_freed_memory": "maybe"}
    with pytest.raises(ConfigError, match="train.keep_freed_memory: expected true or false"):
        build_config(None, tiny_overrides(tmp_path / "run", **over))
