"""Reference loops: one iteration of DM, DSA and MTT written the way the authors' code is
structured, timed on the same machine and data as fedcond's own loops.

They exist to give like-for-like speed-ups (``benchmarks/distill_benchmark.py``,
``benchmarks/gpu_suite.py``), not results: what they compute matches the published
algorithms, and *how* matches the public code of Zhao & Bilen (DM, DC/DSA) and
Cazenavette et al. (MTT):

- DM: a Python loop over classes, one DSA draw and two forward passes per class, network
  parameters requiring gradients;
- DSA: per class, real and synthetic gradients by ``autograd.grad`` over all parameters,
  a per-layer distance loop; the network then trains on the synthetic set through a
  ``DataLoader`` over a ``TensorDataset`` (per-sample collation), one augmentation per batch;
- MTT: the student's parameters kept as a list of flat tensors, one graph through every
  unrolled step, ``backward`` through all of them.

Each function returns seconds per iteration (wall and CPU) over ``iterations`` iterations
after one warm-up iteration, and the peak memory in MiB (GPU allocator on CUDA, process
RSS on the CPU), with one host synchronisation per iteration, as the authors' loops have.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.distill.dc import paper_loops
from fedcond.distill.functional import FlatNetwork
from fedcond.models import get_model
from fedcond.runinfo import peak_memory_bytes


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(iterations: int, device: torch.device, one: Callable[[int], None]) -> dict:
    """Run ``one(it)`` for a warm-up iteration and ``iterations`` timed ones."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = [], []
    for it in range(iterations + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        one(it)
        sync(device)
        if it > 0:  # the first iteration is warm-up (allocator, kernels, cuDNN choices)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"seconds_per_iteration": sum(wall) / len(wall), "cpu_seconds_per_iteration": sum(cpu) / len(cpu),
            "timed_iterations": iterations, "warmup": 1, "peak_memory_mb": peak_memory_bytes(device) / 2**20}


def _real_init(dataset: ImageDataset, ipc: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first ``ipc`` real images of every class (a leaf on ``device``) and each class's indices."""
    idx = dataset.class_indices()
    syn = torch.cat([dataset.train_images[i[:ipc]] for i in idx]).to(device).clone().requires_grad_(True)
    return syn, idx


def reference_style_dm_seconds(dataset: ImageDataset, ipc: int, iterations: int, device: torch.device,
                               batch: int = 256) -> dict:
    """Seconds per DM iteration with the authors' loop structure (see the module docstring)."""
    device = torch.device(device)
    dataset = dataset.to(device)
    c, h, w = dataset.image_shape
    syn, idx = _real_init(dataset, ipc, device)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    dsa, g = DSA(), torch.Generator().manual_seed(0)

    def one(it: int) -> None:
        net = get_model("convnet", c, dataset.num_classes, (h, w), seed=it).to(device)  # parameters require grad
        loss = torch.zeros((), device=device)
        for cls in range(dataset.num_classes):
            real = dataset.train_images[idx[cls][torch.randperm(idx[cls].numel(), generator=g)[:batch].to(device)]]
            params = dsa.sample_params(1, g)
            out_real = net.embed(dsa.apply(real, params)).detach()
            out_syn = net.embed(dsa.apply(syn[cls * ipc : (cls + 1) * ipc], params))
            loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _timed(iterations, device, one)


def _match_loss(gw_syn: list[torch.Tensor], gw_real: list[torch.Tensor]) -> torch.Tensor:
    """The authors' layer-wise gradient distance ("ours"): 1-D tensors count 0."""
    dis = torch.zeros((), device=gw_syn[0].device)
    for gs, gr in zip(gw_syn, gw_real, strict=True):
        if gs.dim() == 1:
            continue
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        dis = dis + torch.sum(1 - torch.sum(gr * gs, dim=-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6))
    return dis


def reference_style_dsa_seconds(dataset: ImageDataset, ipc: int, iterations: int, device: torch.device,
                                batch_real: int = 256, batch_train: int = 256, outer_loop: int | None = None,
                                inner_loop: int | None = None) -> dict:
    """Seconds per DSA *outer iteration* (a fresh network, ``outer_loop`` matching steps with
    ``inner_loop`` epochs of network training between them) in the authors' structure."""
    device = torch.device(device)
    dataset = dataset.to(device)
    c, h, w = dataset.image_shape
    k = dataset.num_classes
    paper_outer, paper_inner = paper_loops(ipc)
    outer_loop = outer_loop or paper_outer
    inner_loop = paper_inner if inner_loop is None else inner_loop
    syn, idx = _real_init(dataset, ipc, device)
    label_syn = torch.arange(k, device=device).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    dsa, g = DSA(), torch.Generator().manual_seed(0)

    def one(it: int) -> None:
        net = get_model("convnet", c, k, (h, w), seed=it).to(device).train()
        net_params = list(net.parameters())
        opt_net = torch.optim.SGD(net.parameters(), lr=0.01)
        for ol in range(outer_loop):
            loss = torch.zeros((), device=device)
            for cls in range(k):
                pick = torch.randperm(idx[cls].numel(), generator=g)[:batch_real].to(device)
                real = dataset.train_images[idx[cls][pick]]
                lab_real = torch.full((real.shape[0],), cls, device=device)
                params = dsa.sample_params(1, g)  # one draw ("seed") shared by real and synthetic
                gw_real = torch.autograd.grad(F.cross_entropy(net(dsa.apply(real, params)), lab_real), net_params)
                gw_real = [t.detach() for t in gw_real]
                syn_c = dsa.apply(syn[cls * ipc : (cls + 1) * ipc], params)
                gw_syn = torch.autograd.grad(F.cross_entropy(net(syn_c), label_syn[cls * ipc : (cls + 1) * ipc]),
                                             net_params, create_graph=True)
                loss = loss + _match_loss(list(gw_syn), gw_real)
            opt_img.zero_grad()
            loss.backward()
            opt_img.step()
            if ol == outer_loop - 1:
                break
            loader = DataLoader(TensorDataset(syn.detach().clone(), label_syn), batch_size=batch_train, shuffle=True,
                                generator=g)
            for _ in range(inner_loop):
                for x, y in loader:
                    out = F.cross_entropy(net(dsa(x, g)), y)
                    opt_net.zero_grad()
                    out.backward()
                    opt_net.step()

    return _timed(iterations, device, one)


def reference_style_mtt_seconds(dataset: ImageDataset, ipc: int, iterations: int, device: torch.device,
                                experts: list[torch.Tensor], syn_steps: int = 30, expert_epochs: int = 2,
                                max_start_epoch: int = 20, batch_syn: int | None = None, lr_images: float = 100.0,
                                lr_teacher: float = 0.01, lr_lr: float = 1e-5) -> dict:
    """Seconds per MTT iteration in the authors' structure (full unroll over ``syn_steps``).

    ``experts``: flat trajectories ``(epochs + 1, P)`` of the ConvNet on ``dataset``.
    """
    device = torch.device(device)
    dataset = dataset.to(device)
    c, h, w = dataset.image_shape
    k = dataset.num_classes
    syn, _ = _real_init(dataset, ipc, device)
    label_syn = torch.arange(k, device=device).repeat_interleave(ipc)
    syn_lr = torch.tensor(lr_teacher, device=device).requires_grad_(True)
    opt_img = torch.optim.SGD([syn], lr=lr_images, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=lr_lr, momentum=0.5)
    student = FlatNetwork(get_model("convnet", c, k, (h, w), seed=0).to(device).train())
    experts = [e.to(device) for e in experts]
    last_start = min(max_start_epoch, experts[0].shape[0] - 1 - expert_epochs)
    batch = batch_syn or syn.shape[0]
    dsa, g = DSA(), torch.Generator().manual_seed(0)

    def one(_: int) -> None:
        trajectory = experts[int(torch.randint(len(experts), (1,), generator=g))]
        start_epoch = int(torch.randint(last_start + 1, (1,), generator=g))
        start, target = trajectory[start_epoch], trajectory[start_epoch + expert_epochs]
        student_params = [start.clone().requires_grad_(True)]
        chunks: list[torch.Tensor] = []
        for _step in range(syn_steps):
            if not chunks:
                chunks = list(torch.split(torch.randperm(syn.shape[0], generator=g), batch))
            these = chunks.pop().to(device)
            x = dsa(syn[these], g)
            ce = F.cross_entropy(student(student_params[-1], x), label_syn[these])
            grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - syn_lr * grad)
        loss = ((student_params[-1] - target) ** 2).sum() / ((start - target) ** 2).sum()
        opt_img.zero_grad()
        opt_lr.zero_grad()
        loss.backward()
        opt_img.step()
        opt_lr.step()

    return _timed(iterations, device, one)
