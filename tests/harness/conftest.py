from __future__ import annotations

import pytest

from tests.harness import fake_plugins


@pytest.fixture
def fake_plugins_registered(monkeypatch, tmp_path):
    """Register the fake fuser/suite, route model loading to FakeLM, and give a tmp DB path."""
    from harness import runner

    with fake_plugins.registered():
        monkeypatch.setattr(runner, "_load", lambda ev, batch_size: fake_plugins.load(ev))
        monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
        fake_plugins.CALLS.update(fuse=0, evaluate=0)
        a = fake_plugins.make_model(tmp_path / "src_a", 0.2)
        b = fake_plugins.make_model(tmp_path / "src_b", 0.8)
        yield {"db": str(tmp_path / "bench.db"), "a": str(a), "b": str(b), "tmp": tmp_path}
