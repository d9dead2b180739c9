"""Test-only: let accelerate run FSDP2 in CPU processes (gloo), where accelerate 1.16 falls back to DDP.

accelerate turns an FSDP launch config into ``DistributedType.FSDP`` only on accelerators (``AcceleratorState``
looks for MULTI_GPU and the like; on CPU it stays MULTI_CPU, i.e. DDP), although torch's FSDP2 (``fully_shard``)
itself runs on CPU with gloo. Python imports this module at start-up when its folder is on ``PYTHONPATH``: in a
process that ``accelerate launch`` started with an FSDP config (``ACCELERATE_USE_FSDP=true``) and whose test asked for
it (``FUSEBENCH_TEST_FSDP_ON_CPU=1``), the accelerator state then takes ``DistributedType.FSDP`` with the FSDP plugin
accelerate built from the config, so FuseBench's FSDP code path (prepare, clipping, full state dict, saving) runs
here. Nothing else is changed: sharding, the optimizer and the state dict are accelerate's and torch's own.
"""

import os

if (os.environ.get("FUSEBENCH_TEST_FSDP_ON_CPU") == "1"
        and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
    import accelerate.state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__

    def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            _state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    _state.AcceleratorState.__init__ = _fsdp_on_cpu
