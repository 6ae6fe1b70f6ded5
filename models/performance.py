"""Speed knobs that change how a model runs, never what it computes: memory format and compilation.

Both are off by default (``performance:`` in ``experiments/configs/config.yaml``) because on the
project's 2-core CPU neither pays: ``python -m experiments.bench train`` measures them beside the
plain fp32 step (``train.knobs``). They are for GPUs, where NHWC convolutions run on tensor cores
and compiled UNets fuse their many small GroupNorm/SiLU kernels.

- ``channels_last`` converts the parameters of 4-D weights to NHWC. Convolution kernels pick NHWC
  when either the input or the weight is channels-last, so converting the module is enough;
  diffusers UNets accept channels-last input as well.
- ``compile`` calls ``nn.Module.compile()`` on the networks the training step calls. Compiling in
  place keeps state-dict keys as they are (``torch.compile(module)`` would return a wrapper whose
  keys gain an ``_orig_mod.`` prefix and break checkpoints and EMA). A LightningModule itself is
  not compiled: Lightning calls ``training_step``, not ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

# Networks a generator's step calls, by attribute name: diffusion UNets, the VAE's encoder and
# decoder, the GAN's generator and discriminator.
COMPILE_TARGETS = ("unet", "encoder", "decoder", "generator", "discriminator")


def compile_targets(module: nn.Module) -> list[nn.Module]:
    """The networks ``apply_performance(compile=True)`` compiles: named children, or ``module`` itself."""
    import lightning as L

    found = [getattr(module, name) for name in COMPILE_TARGETS if isinstance(getattr(module, name, None), nn.Module)]
    if found or isinstance(module, L.LightningModule):
        return found
    return [module]  # a bare network (e.g. a UNet handed in directly)


def apply_performance(module: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Apply the ``performance`` config to ``module`` in place and return it.

    Args:
        module: a generator (LightningModule) or a bare network.
        channels_last: store 4-D parameters in NHWC memory format.
        compile: ``nn.Module.compile()`` each network the training step calls (lazy: the first
            call compiles, which takes minutes on CPU).
    """
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        for network in compile_targets(module):
            network.compile()
    return module
