"""A PyTorch DC outer iteration, written as the reference DC code writes it, for benchmarks.

Not part of the package: torch is not a robust_dd dependency. `scripts/benchmark_matching.py
--torch` times `outer_iteration` interleaved with robust_dd's jitted step on the same network and
data; `tests/test_torch_reference.py` checks (when torch is installed) that its matching loss and
its gradient in the synthetic images equal robust_dd's.

Follows VICO-UoE/DatasetCondensation (`main.py`, `utils.py`): ConvNet-3 (Conv 3x3 -> GroupNorm
(C, C) -> ReLU -> AvgPool 2x2, the first convolution padded by 3 on one-channel 28x28 inputs),
per class `torch.autograd.grad` of the real batch's cross-entropy and of the synthetic batch's
with `create_graph=True`, the 'ours' distance (per output row, 1 - cos, biases and norm
parameters skipped), one backward and one SGD step on the images per outer-loop pass, and
between passes `inner_loop` full-batch SGD steps (lr_net) of the network on the synthetic set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class ConvNet(nn.Module):
  """The reference ConvNet (`net_norm='instancenorm'`, `net_pooling='avgpooling'`)."""

  def __init__(self, num_classes: int, *, channels: int = 1, width: int = 128, depth: int = 3,
               first_padding: int = 3, side: int = 28):
    super().__init__()
    layers = []
    for d in range(depth):
      layers += [nn.Conv2d(channels if d == 0 else width, width, 3,
                           padding=first_padding if d == 0 else 1),
                 nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True),
                 nn.AvgPool2d(2, 2)]
      side = (side + 2 * (first_padding if d == 0 else 1) - 2) // 2
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(width * side * side, num_classes)

  def forward(self, x):
    return self.classifier(self.features(x).flatten(1))


def _tensor(a) -> torch.Tensor:
  return torch.tensor(np.array(a, np.float32))


def load_flax_convnet(net: ConvNet, params) -> ConvNet:
  """Copies robust_dd ConvNet parameters (HWIO kernels, NHWC flattening) into `net`."""
  convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
  norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
  with torch.no_grad():
    for i, (conv, norm) in enumerate(zip(convs, norms)):
      conv.weight.copy_(_tensor(np.asarray(params[f"conv{i}"]["kernel"]).transpose(3, 2, 0, 1)))
      conv.bias.copy_(_tensor(params[f"conv{i}"]["bias"]))
      norm.weight.copy_(_tensor(params[f"norm{i}"]["scale"]))
      norm.bias.copy_(_tensor(params[f"norm{i}"]["bias"]))
    kernel = np.asarray(params["head"]["kernel"])  # (H * W * C, classes), NHWC order.
    width = convs[-1].out_channels
    side = int(round((kernel.shape[0] // width) ** 0.5))
    kernel = kernel.reshape(side, side, width, -1).transpose(3, 2, 0, 1).reshape(
        kernel.shape[1], -1)  # (classes, C * H * W), NCHW order.
    net.classifier.weight.copy_(_tensor(kernel))
    net.classifier.bias.copy_(_tensor(params["head"]["bias"]))
  return net


def distance_wb(gwr, gws):
  """The reference's per-layer 'ours' distance (1-D parameters contribute 0)."""
  shape = gwr.shape
  if len(shape) == 1:
    return torch.tensor(0.0)
  gwr, gws = gwr.reshape(shape[0], -1), gws.reshape(shape[0], -1)
  return torch.sum(1 - torch.sum(gwr * gws, dim=-1)
                   / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn, gw_real):
  return sum(distance_wb(r, s) for r, s in zip(gw_real, gw_syn))


def matching_loss(net: nn.Module, syn_images, real_images):
  """sum_c D(G_S^c, G_T^c): `syn_images` (C, ipc, 1, H, W), `real_images` (C, n, 1, H, W)."""
  params = list(net.parameters())
  loss = torch.tensor(0.0)
  for c in range(syn_images.shape[0]):
    lab_real = torch.full((real_images.shape[1],), c, dtype=torch.long)
    gw_real = torch.autograd.grad(F.cross_entropy(net(real_images[c]), lab_real), params)
    gw_real = [g.detach() for g in gw_real]
    lab_syn = torch.full((syn_images.shape[1],), c, dtype=torch.long)
    gw_syn = torch.autograd.grad(F.cross_entropy(net(syn_images[c]), lab_syn), params,
                                 create_graph=True)
    loss = loss + match_loss(gw_syn, gw_real)
  return loss


def outer_iteration(make_net, image_syn, optimizer_img, sample_real, *, outer_loop: int,
                    inner_loop: int, lr_net: float = 0.01) -> float:
  """One DC outer iteration: a fresh network, `outer_loop` image updates on fresh real batches
  (`sample_real() -> (C, n, 1, H, W)`), `inner_loop` network steps on the set between them.
  `image_syn` (C, ipc, 1, H, W) requires grad. Returns the last update's loss."""
  net = make_net()
  net.train()
  optimizer_net = torch.optim.SGD(net.parameters(), lr=lr_net)
  num_classes, ipc = image_syn.shape[:2]
  labels = torch.arange(num_classes).repeat_interleave(ipc)
  for ol in range(outer_loop):
    loss = matching_loss(net, image_syn, sample_real())
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    if ol == outer_loop - 1:
      break
    x = image_syn.detach().reshape(-1, *image_syn.shape[2:])
    for _ in range(inner_loop):
      optimizer_net.zero_grad()
      F.cross_entropy(net(x), labels).backward()
      optimizer_net.step()
  return float(loss)
