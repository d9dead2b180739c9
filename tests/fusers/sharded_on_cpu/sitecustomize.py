"""Test-only: let accelerate run FSDP2 and DeepSpeed in CPU processes (gloo), where accelerate 1.16 runs DDP instead.

accelerate turns an FSDP or DeepSpeed launch config into ``DistributedType.FSDP`` / ``DEEPSPEED`` only on
accelerators (``AcceleratorState`` looks for MULTI_GPU and the like, or for ``cpu=False``); on CPU it stays
MULTI_CPU, i.e. DDP. Yet torch's FSDP2 (``fully_shard``) runs on CPU with gloo, and so does DeepSpeed's ZeRO with
its CPU accelerator. Python imports this module at start-up when its folder is on ``PYTHONPATH``: in a process that
``accelerate launch`` started with such a config (``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``) and whose
test asked for it (``FUSEBENCH_TEST_SHARDED_ON_CPU=1``), the accelerator state then takes the distributed type and
the plugin accelerate built from the config (DeepSpeed's communication set up over the gloo group accelerate made),
so FuseBench's FSDP and DeepSpeed code paths (prepare, clipping, full state dict, saving) run here. Nothing else is
changed: sharding, the optimizer step and the gathered state dict are accelerate's, torch's and DeepSpeed's own.
"""

import os


def _true(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


if os.environ.get("FUSEBENCH_TEST_SHARDED_ON_CPU") == "1" and (_true("ACCELERATE_USE_FSDP")
                                                                 or _true("ACCELERATE_USE_DEEPSPEED")):
    import accelerate.state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__

    def _sharded_on_cpu(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
        elif deepspeed_plugin is not None:
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")  # over the process group accelerate initialised
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
        else:
            return
        _state.PartialState._shared_state["distributed_type"] = self.distributed_type

    _state.AcceleratorState.__init__ = _sharded_on_cpu
