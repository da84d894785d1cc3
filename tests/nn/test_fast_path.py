"""What the fast path changes must not change the maths: channels-last, the CPU GroupNorm
backward, bf16 autocast, the optimizer, sampling under inference mode."""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ddpmkit.config import TrainConfig, load_config
from ddpmkit.nn import UNet, cpu_kernels
from ddpmkit.nn.cpu_kernels import GroupNorm
from ddpmkit.runs import start_training
from ddpmkit.train.runtime import autocast_context, autocast_dtype, cpu_has_bf16_matmul, use_bf16
from ddpmkit.train.trainer import Trainer, make_optimizer
from helpers import tiny_unet

CPU = torch.device("cpu")
CL = torch.channels_last


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is fastest and kind to a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_trainer(tmp_path, name: str, **train) -> Trainer:
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update({"device": "cpu", **train})  # a test may ask for cuda
    return start_training(load_config("digits", overrides=over), tmp_path / name, progress=False)


def assert_same_training(a: Trainer, b: Trainer, steps: int = 2) -> None:
    """Step both trainers on the same batch: the same losses, then the same weights."""
    x0, y = a_batch()
    for _ in range(steps):
        la, lb = a.train_step(x0, y), b.train_step(x0, y)
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def a_batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


UNET32 = dict(
    in_channels=3, base_channels=16, attention_resolutions=(16,), num_groups=8, image_size=32, head_channels=16
)


def unet32(**overrides) -> UNet:
    """tiny_unet on 32x32 RGB images (large enough for the 32x32 GroupNorm path), in train mode."""
    return tiny_unet(**{**UNET32, **overrides}).train()


# ----------------------------------------------------------------------------- channels-last


def norm_and_reference(groups: int, channels: int) -> tuple[GroupNorm, nn.GroupNorm]:
    """ddpmkit's GroupNorm with random affine weights, and torch's with the same weights."""
    norm = GroupNorm(groups, channels)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    ref = nn.GroupNorm(groups, channels)
    ref.load_state_dict(norm.state_dict())
    return norm, ref


@pytest.fixture(params=["own backward", "native"])
def norm_backward(request, monkeypatch):
    """Both channels-last fp32 GroupNorm paths, whichever this CPU's build would pick."""
    slow = request.param == "own backward"
    monkeypatch.setattr(cpu_kernels, "_native_cl_norm_backward_is_slow", lambda: slow)
    return request.param


@pytest.mark.parametrize("groups,channels,size", [(32, 64, 32), (8, 24, 32), (4, 16, 40), (8, 32, 16)])
def test_channels_last_group_norm_forward_and_backward_match_torch(groups, channels, size, norm_backward):
    torch.manual_seed(0)
    norm, ref = norm_and_reference(groups, channels)
    x = torch.randn(3, channels, size, size) * 3 + 1
    dy = torch.randn_like(x)
    xa = x.clone().requires_grad_()
    ya = ref(xa)
    ya.backward(dy)
    xb = x.contiguous(memory_format=CL).requires_grad_()
    yb = norm(xb)
    yb.backward(dy.contiguous(memory_format=CL))
    assert yb.is_contiguous(memory_format=CL) and xb.grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_channels_last_group_norm_takes_a_gradient_of_any_layout(norm_backward):
    torch.manual_seed(0)
    norm = GroupNorm(4, 8)
    x = torch.randn(2, 8, 32, 32)
    dy = torch.randn(2, 8, 32, 32)  # NCHW, as an op after the norm may hand back
    xa = x.clone().requires_grad_()
    nn.functional.group_norm(xa, 4, norm.weight, norm.bias).backward(dy)
    xb = x.contiguous(memory_format=CL).requires_grad_()
    norm(xb).backward(dy)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)


def test_channels_last_group_norm_own_backward_runs_where_chosen(monkeypatch):
    """The own backward is taken exactly when the native kernel is slow (and the map is large)."""
    calls = []
    real = cpu_kernels._ChannelsLastGroupNorm.apply
    monkeypatch.setattr(cpu_kernels._ChannelsLastGroupNorm, "apply", lambda *a: calls.append(1) or real(*a))
    norm = GroupNorm(4, 8)
    x = torch.randn(2, 8, 32, 32).contiguous(memory_format=CL).requires_grad_()
    for slow, expected in ((True, 1), (False, 1)):
        monkeypatch.setattr(cpu_kernels, "_native_cl_norm_backward_is_slow", lambda: slow)
        norm(x)
        assert len(calls) == expected
    monkeypatch.setattr(cpu_kernels, "_native_cl_norm_backward_is_slow", lambda: True)
    norm(x[:, :, :16, :16].contiguous(memory_format=CL))  # below the size where it pays
    assert len(calls) == 1


def test_bf16_channels_last_group_norm_gradients_match_fp32():
    """Half precision channels-last input is normalised as fp32: output bf16, gradients as fp32's."""
    torch.manual_seed(0)
    norm, _ = norm_and_reference(8, 32)
    x = (torch.randn(2, 32, 16, 16) * 3 + 1).bfloat16()
    dy = torch.randn(2, 32, 16, 16).bfloat16()
    xa = x.float().requires_grad_()
    nn.functional.group_norm(xa, 8, norm.weight, norm.bias).backward(dy.float())
    ref_w = norm.weight.grad.clone()
    norm.zero_grad()
    xb = x.contiguous(memory_format=CL).requires_grad_()
    yb = norm(xb)
    yb.backward(dy.contiguous(memory_format=CL))
    assert yb.dtype == torch.bfloat16 and yb.is_contiguous(memory_format=CL)
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), xa.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(norm.weight.grad, ref_w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [8, 16, 32, 40])
def test_bf16_channels_last_group_norm_forward_only_matches_fp32(size):
    """Without autograd, large half-precision maps take PyTorch's kernel, small ones the fp32 copy: same result."""
    torch.manual_seed(0)
    norm, ref = norm_and_reference(8, 32)
    x = (torch.randn(2, 32, size, size) * 3 + 1).bfloat16()
    with torch.inference_mode():
        out = norm(x.contiguous(memory_format=CL))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out.float(), ref(x.float()).detach(), rtol=2e-2, atol=3e-2)


def test_bf16_channels_last_group_norm_picks_its_kernel(monkeypatch):
    """PyTorch's half kernel for a forward only on maps of >= 1024 pixels; the fp32 copy otherwise."""
    seen = []
    real = nn.functional.group_norm
    monkeypatch.setattr(cpu_kernels.F, "group_norm", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    norm = GroupNorm(4, 16)
    big = torch.randn(2, 16, 32, 32).bfloat16().contiguous(memory_format=CL)
    small = big[:, :, :16, :16].contiguous(memory_format=CL)
    with torch.no_grad():
        norm(big)
        norm(small)
    norm(big)  # the weights require grad: a backward may follow
    norm.requires_grad_(False)
    norm(big.clone().requires_grad_())
    norm(big)
    assert seen == [torch.bfloat16, torch.float32, torch.float32, torch.float32, torch.bfloat16]


def test_half_precision_model_normalises_channels_last_input():
    """A network cast to bf16 (weights included) normalises channels-last maps like nn.GroupNorm in fp32."""
    torch.manual_seed(0)
    norm, ref = norm_and_reference(4, 16)
    x = torch.randn(2, 16, 8, 8) * 2 + 1
    out = norm.bfloat16()(x.bfloat16().contiguous(memory_format=CL))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out.float(), ref(x.bfloat16().float()), rtol=2e-2, atol=3e-2)
    net = unet32().bfloat16().to(memory_format=CL)
    x = torch.randn(2, 3, 32, 32).bfloat16().contiguous(memory_format=CL)
    with torch.no_grad():
        assert torch.isfinite(net(x, torch.tensor([3, 700])).float()).all()


def test_channels_last_unet_matches_contiguous_forward_and_gradients():
    net = unet32()
    net_cl = copy.deepcopy(net).to(memory_format=CL)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    out = net(x, t)
    out_cl = net_cl(x.contiguous(memory_format=CL), t)
    assert out_cl.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    out_cl.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), net_cl.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_channels_last_training_step_matches_contiguous(tmp_path):
    a = tiny_trainer(tmp_path, "a", channels_last=False)
    b = tiny_trainer(tmp_path, "b", channels_last=True)
    w = b.model.downs[0].conv1.weight
    assert w.is_contiguous(memory_format=CL) and not w.is_contiguous()
    assert_same_training(a, b)


# ----------------------------------------------------------------------------- bf16


def test_precision_option_resolves_as_documented():
    assert use_bf16("fp32", CPU) is False
    assert use_bf16("bf16", CPU) is True
    assert use_bf16("auto", CPU) is cpu_has_bf16_matmul()  # bf16 only where the CPU runs it natively
    assert use_bf16("fp16", CPU) is False
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype("fp16", CPU) == torch.float16
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if cpu_has_bf16_matmul() else None)
    for dtype in (torch.bfloat16, torch.float16):
        with autocast_context(CPU, dtype):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
    with autocast_context(CPU, None):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    "hip, capability, native",
    [(None, (7, 0), False), (None, (7, 5), False), (None, (8, 0), True), (None, (9, 0), True), ("6.2", (9, 4), True)],
)
def test_auto_precision_on_gpus_takes_bf16_only_where_it_is_native(monkeypatch, hip, capability, native):
    """V100 and T4 emulate bf16 (slower than fp32), though torch.cuda.is_bf16_supported() says True."""
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    gpu = torch.device("cuda", 0)
    assert use_bf16("auto", gpu) is native
    assert use_bf16("bf16", gpu) is True and use_bf16("fp32", gpu) is False


def test_bf16_training_step_agrees_with_fp32(tmp_path):
    """Loss within bf16 rounding; the gradient points the same way (cosine > 0.99)."""
    fp32 = tiny_trainer(tmp_path, "fp32", precision="fp32", grad_clip=None)
    bf16 = tiny_trainer(tmp_path, "bf16", precision="bf16", grad_clip=None)
    assert bf16.amp == torch.bfloat16 and fp32.amp is None
    with torch.no_grad():  # a live output layer, identical in both, so the gradient is not trivial
        for tr in (fp32, bf16):
            torch.manual_seed(3)
            tr.model.out_conv.weight.normal_(0.0, 0.1)
    x0, y = a_batch()
    la, lb = fp32.train_step(x0, y), bf16.train_step(x0, y)
    assert lb.dtype == torch.float32  # the loss is reduced in fp32 under autocast
    assert lb.item() == pytest.approx(la.item(), rel=0.03)
    ga, gb = flat_grads(fp32.model), flat_grads(bf16.model)
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0).item() > 0.99
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights stay fp32


def test_fp16_training_scales_the_loss_and_hands_on_the_true_gradient(tmp_path):
    """float16 autocast with a GradScaler: gradients are unscaled before clipping, so the clipped
    gradient the optimizer sees is the fp32 run's (to fp16 rounding), not 65536 times smaller."""
    fp32 = tiny_trainer(tmp_path, "fp32", precision="fp32", grad_clip=1e-3)
    fp16 = tiny_trainer(tmp_path, "fp16", precision="fp16", grad_clip=1e-3)  # clipping that bites
    assert fp16.amp == torch.float16 and fp16.scaler.is_enabled() and not fp32.scaler.is_enabled()
    assert fp16.scaler.get_scale() == 2.0**16
    with torch.no_grad():
        for tr in (fp32, fp16):
            torch.manual_seed(3)
            tr.model.out_conv.weight.normal_(0.0, 0.1)
    x0, y = a_batch()
    la, lb = fp32.train_step(x0, y), fp16.train_step(x0, y)
    assert lb.item() == pytest.approx(la.item(), rel=0.01)
    ga, gb = flat_grads(fp32.model), flat_grads(fp16.model)
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0).item() > 0.999
    assert ga.norm().item() == pytest.approx(1e-3, rel=1e-3)  # clipped
    assert (gb.norm() / ga.norm()).item() == pytest.approx(1.0, abs=0.01)
    assert all(p.dtype == torch.float32 for p in fp16.model.parameters())


def test_fp16_step_whose_gradient_overflows_is_skipped_and_the_scale_backs_off(tmp_path):
    tr = tiny_trainer(tmp_path, "fp16", precision="fp16")
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows float16 in the backward
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train_step(*a_batch())
    assert all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters())
    assert tr.scaler.get_scale() == 2.0**59
    tr.scaler = torch.amp.GradScaler("cpu")  # a sane scale: the next step trains
    tr.train_step(*a_batch())
    assert not all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters())


def test_deterministic_mode_sets_the_cublas_workspace_only_for_cuda(monkeypatch):
    from ddpmkit.train.runtime import use_deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(CPU)
        assert torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        use_deterministic_algorithms(torch.device("cuda", 0))  # without a GPU: only the variable and the flag
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        use_deterministic_algorithms(torch.device("cuda", 0))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's own value is kept
    finally:
        torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- optimizer


def test_optimizer_is_multi_tensor_or_fused_adam():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = make_optimizer(model, TrainConfig(), CPU)
    assert type(opt) is torch.optim.Adam
    assert opt.defaults.get("fused") or opt.defaults.get("foreach"), "the per-parameter loop is the slow one"
    opt = make_optimizer(model, TrainConfig(weight_decay=0.01), CPU)
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.01
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    cfg = TrainConfig(lr=3e-4, adam_betas=(0.8, 0.95))
    opt = make_optimizer(model, cfg, CPU)
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.8, 0.95)


def test_train_step_returns_a_tensor_and_steps_the_optimizer(tmp_path):
    tr = tiny_trainer(tmp_path, "r")
    before = [p.detach().clone() for p in tr.model.parameters()]
    x0, y = a_batch()
    loss = tr.train_step(x0, y)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad  # no .item() inside
    assert tr.step == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.parameters()))


# ----------------------------------------------------------------------------- torch.compile


@pytest.fixture
def compile_calls(monkeypatch):
    """torch.compile through the aot_eager backend (dynamo and AOT autograd trace our code as with
    inductor, in seconds instead of a minute of C++ builds); records each call's mode."""
    calls = []
    real = torch.compile

    def spy(model, mode=None, **kwargs):
        calls.append(mode)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", spy)
    yield calls
    torch._dynamo.reset()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_training_step_matches_eager(tmp_path, compile_calls, precision):
    eager = tiny_trainer(tmp_path, "eager", precision=precision)
    compiled = tiny_trainer(tmp_path, "compiled", precision=precision, compile_mode="default")
    assert compile_calls == ["default"]
    assert compiled.net is not compiled.model and not compiled._cuda_graphs
    assert_same_training(eager, compiled)
    torch.testing.assert_close(compiled.ema.model.out_conv.weight, eager.ema.model.out_conv.weight)


def test_compiled_microbatches_match_the_eager_whole_batch(tmp_path, compile_calls):
    """Chunks of 6, 6 and 4 through the compiled network (the last chunk's size recompiles)."""
    eager = tiny_trainer(tmp_path, "eager")
    compiled = tiny_trainer(tmp_path, "compiled", compile_mode="default", microbatch=6)
    assert_same_training(eager, compiled)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_compiled_upsample_matches_interpolate(fmt):
    """Under the compiler Upsample broadcasts instead of calling interpolate: same values, same gradients."""
    from ddpmkit.nn.unet import Upsample

    torch.manual_seed(0)
    up = Upsample(4)
    x = torch.randn(2, 4, 3, 5).contiguous(memory_format=fmt).requires_grad_()
    eager = up(x)
    (eager * torch.arange(eager.numel()).view_as(eager).sin()).sum().backward()
    grad, x.grad = x.grad, None
    compiled = torch.compile(up, backend="aot_eager")(x)
    (compiled * torch.arange(compiled.numel()).view_as(compiled).sin()).sum().backward()
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(x.grad, grad)


def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(tmp_path, compile_calls, monkeypatch):
    tr = tiny_trainer(tmp_path, "ro", compile_mode="reduce-overhead")
    assert compile_calls == ["reduce-overhead"]
    assert not tr._cuda_graphs  # CUDA graphs are a GPU matter; on the CPU the mode only compiles
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(tr.step))
    x0, y = a_batch()
    tr.train_step(x0, y)
    assert marks == []
    tr._cuda_graphs = True  # as on a GPU: every step tells the graph trees that a new one begins
    tr.train_step(x0, y)
    tr.train_step(x0, y)
    assert marks == [1, 2]


def test_speed_hint_only_for_long_eager_runs_on_one_gpu(tmp_path, compile_calls):
    def hint(name, **train):
        tr = tiny_trainer(tmp_path, name, **train)
        on_cpu = tr.speed_hint()
        tr.device = torch.device("cuda")  # what the hint reads; nothing runs on it
        return on_cpu, tr.speed_hint()

    on_cpu, on_gpu = hint("long", steps=40_000)  # 640,000 images of 16
    assert on_cpu is None and "--compile-mode reduce-overhead" in on_gpu
    assert hint("short", steps=30_000) == (None, None)  # 480,000 images: compiling hardly pays
    assert hint("chunks", steps=40_000, microbatch=8) == (None, None)
    assert hint("compiled", steps=40_000, compile_mode="default") == (None, None)


def test_compile_mode_must_be_one_of_torch_compiles(tmp_path):
    from ddpmkit.errors import UserError

    with pytest.raises(UserError, match="compile_mode"):
        tiny_trainer(tmp_path, "bad", compile_mode="fastest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs can only be caught on CUDA")
def test_cuda_train_step_has_no_host_sync(tmp_path):
    tr = tiny_trainer(tmp_path, "cuda", device="cuda")
    x0, y = a_batch()
    x0, y = x0.cuda(), y.cuda()
    tr.train_step(x0, y)  # warm-up: lazy initialisation may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.train_step(x0, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- sampling


def test_sampling_runs_under_inference_mode(tmp_path):
    tr = tiny_trainer(tmp_path, "s")
    model = tr.ema.model
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4) % 10
    x = tr.objective.diffusion.sample(model, (4, 1, 8, 8), sampler="ddim", steps=3, y=y, generator=g)
    assert torch.is_inference(x)  # no autograd graph, no version counters
    assert all(p.grad is None for p in model.parameters())
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_sampling_with_a_channels_last_model_matches_contiguous():
    net = unet32().eval()
    from ddpmkit import GaussianDiffusion, linear_beta_schedule

    diffusion = GaussianDiffusion(linear_beta_schedule(50))
    common = dict(sampler="ddim", steps=3)
    a = diffusion.sample(net, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), **common)
    b = diffusion.sample(
        copy.deepcopy(net).to(memory_format=CL), (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), **common
    )
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- allocator

MALLINFO = """
import ctypes, torch
from ddpmkit.train.runtime import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory()
x = torch.ones(16 * 2**20)  # 64 MiB: glibc would mmap it, and unmap it when freed
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(kept, during.hblkhd >= 64 * 2**20, after.fordblks >= 64 * 2**20)
"""


def has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except (OSError, TypeError):  # no C library to load by that name (Windows)
        return False


@pytest.mark.system  # glibc reads MALLOC_* only when a process starts
@pytest.mark.skipif(not sys.platform.startswith("linux") or not has_mallinfo2(), reason="needs glibc >= 2.33")
@pytest.mark.parametrize("env, expected", [({}, "True False True"), ({"MALLOC_ARENA_MAX": "4"}, "False True False")])
def test_keep_freed_memory_serves_large_blocks_from_a_kept_heap(env, expected):
    """Applied: a 64 MiB tensor comes from the heap and its memory stays there once freed.
    A MALLOC_* variable (the user's own tuning) leaves glibc's defaults: mmap, unmapped when freed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", MALLINFO], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == expected.split()
