"""`bench` with the torch-free fake plugins registered, for tests that need real processes (concurrency, signals):

    python -m tests.harness.fake_bench eval --model FOLDER --suite fakesuite --db X.db

(run from the repository root; see ``fake_plugins`` for the delays and the calls log). Fake models never touch
torch, so the placement is the CPU without asking torch (importing it would take most of each process's seconds).
"""

from __future__ import annotations

import sys

from harness import runner
from harness.cli import main
from harness.model import Placement
from tests.harness import fake_plugins

if __name__ == "__main__":
    fake_plugins.register()
    runner._load = lambda ev, batch_size: fake_plugins.load(ev)
    Placement.device_name = property(lambda self: "cpu" if self.device == "auto" else self.device)
    main(sys.argv[1:])
