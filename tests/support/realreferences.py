"""Checks of a real model's purpose that use none of the tool, for the models of :mod:`catalogue_kinds`.

Each scorer takes a model file (the base or the hardened one) and returns ``(score, detail)``:

* magika: the share of labelled files whose content type it names (files of its own wheel, whose type the
  extension gives, and foolbox's PNG and JPEG images); calibration used another wheel's files;
* all-MiniLM-L6-v2: the share of sentences whose paraphrase is the nearest of eight candidates by the cosine
  of mean-pooled embeddings (the sentence-transformers pooling), each sentence at its own length;
* the diacritizer: the share of letters given their marks, on vowelled text stripped of its marks, each line
  at its own length;
* the speech embedding: the share of sounds found again, by the cosine of their embeddings, among the same
  sounds under added noise at 10 dB SNR;
* DTLN: the mean SNR gain in dB of the two-stage noise suppressor (stage 2 always the base) on noisy sounds.
"""
from __future__ import annotations

import functools
import zipfile

import numpy as np

import real_catalogue_kinds as K
import realmodels as R

# magika's label for the wheel members, by how their name ends (members under 100 bytes left out)
_MAGIKA_TYPES = {".py": "python", ".json": "json", ".md": "markdown", ".onnx": "onnx", "/RECORD": "csv",
                 "/METADATA": "markdown", "scripts/magika": "elf"}


@functools.lru_cache(maxsize=1)
def _magika_files() -> tuple[list[np.ndarray], list[str], list[str]]:
    whl = R.wheel(*K.MAGIKA)
    feats, labels, names = [], [], []
    with zipfile.ZipFile(whl) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            kind = next((t for end, t in _MAGIKA_TYPES.items() if info.filename.endswith(end)), None)
            if kind and info.file_size >= 100:
                feats.append(K.magika_features(z.read(info.filename)))
                labels.append(kind)
                names.append(info.filename)
    feats.append(K.magika_features(whl.read_bytes()))
    labels.append("zip")
    names.append(whl.name)
    for dataset, kind in (("foolbox-mnist", "png"), ("foolbox-imagenet", "jpeg")):
        for name, data in R.members(dataset)[:5]:
            feats.append(K.magika_features(data))
            labels.append(kind)
            names.append(name)
    return feats, labels, names


def magika_score(path) -> tuple[float, str]:
    import json

    with zipfile.ZipFile(R.wheel(*K.MAGIKA)) as z:
        space = json.loads(z.read(K.MAGIKA_DIR + "config.min.json"))["target_labels_space"]
    feats, labels, names = _magika_files()
    scores = R.ort_session(path).run(None, {"bytes": np.stack(feats)})[0]
    got = [space[i] for i in scores.argmax(1)]
    wrong = [f"{n}: {g} (is {t})" for n, g, t in zip(names, got, labels) if g != t]
    return float(np.mean([g == t for g, t in zip(got, labels)])), f"{len(labels)} files; wrong: {wrong[:4]}"


def minilm_score(path) -> tuple[float, str]:
    s = R.ort_session(path)

    def embed(sentence: str) -> np.ndarray:
        ids = K.encode(sentence)[None]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        h = s.run(None, feed)[0]
        e = h[0].astype(np.float64).mean(0)
        return e / np.linalg.norm(e)

    a = np.stack([embed(x) for x, _ in K.PARAPHRASES])
    b = np.stack([embed(y) for _, y in K.PARAPHRASES])
    sim = a @ b.T
    found = float(np.mean(sim.argmax(1) == np.arange(len(sim))))
    other = (sim - 2 * np.eye(len(sim))).max()
    pairs = sim.diagonal()
    return found, f"paraphrase cosine min {pairs.min():.3f} mean {pairs.mean():.3f}; other pairs max {other:.3f}"


def tashkeel_score(path) -> tuple[float, str]:
    s = R.ort_session(path)
    right = total = 0
    for line in K.VOWELLED:
        ids, labels = K.split_marks(line)
        pred = s.run(["logits"], {"input_ids": ids[None]})[0][0].argmax(-1)
        keep = labels >= 0
        right += int((pred[keep] == labels[keep]).sum())
        total += int(keep.sum())
    return right / total, f"{right}/{total} characters over {len(K.VOWELLED)} lines"


def oww_score(path) -> tuple[float, str]:
    clean = K.sounds(12, seed=7)
    rng = np.random.default_rng(8)
    noise = rng.standard_normal(clean.shape) * np.sqrt((clean.astype(np.float64) ** 2).mean(1, keepdims=True) / 10)
    s = R.ort_session(path)

    def embed(audio):
        e = s.run(None, {"input_1": K.mel_windows(audio)})[0].reshape(len(audio), -1).astype(np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    sim = embed((clean + noise).astype(np.float32)) @ embed(clean).T
    found = float(np.mean(sim.argmax(1) == np.arange(len(sim))))
    other = (sim - 2 * np.eye(len(sim))).max()
    return found, f"same sound cosine min {sim.diagonal().min():.3f}; other sounds max {other:.3f}"


def dtln_score(path) -> tuple[float, str]:
    """Mean SNR gain (dB) of DTLN with stage 1 = ``path`` on 4 noisy sounds of 2 s (the output aligned by the
    model's 384-sample lag)."""
    clean, noisy = K.noisy_sounds(4, seed=11, seconds=2.0)
    stage1, stage2 = R.ort_session(path, 1), R.ort_session(R.member_file(*K.DTLN, *K.DTLN_STAGE2), 1)
    snr = lambda ref, est: 10 * np.log10((ref ** 2).sum() / ((ref - est) ** 2).sum())  # noqa: E731
    gains = [snr(c[:-384], K.dtln_denoise(x, stage1, stage2)[384:]) - snr(c[:-384], x[:-384])
             for c, x in zip(clean, noisy)]
    return float(np.mean(gains)), "SNR gain per sound (dB): " + ", ".join(f"{g:.2f}" for g in gains)


# known: the base model's score, measured with ONNX Runtime 1.31.1 on 2026-12-07
REFERENCES: dict[str, K.Reference] = {
    "magika": K.Reference(magika_score, 1.0, 0.05, "content types of 37 labelled files"),
    "minilm-int8": K.Reference(minilm_score, 1.0, 0.0, "8 paraphrase pairs found by cosine"),
    "tashkeel-bilstm-int8": K.Reference(tashkeel_score, 0.72, 0.05, "marks of 211 letters on 9 vowelled lines"),
    "oww-embedding": K.Reference(oww_score, 1.0, 0.1, "12 sounds found again under noise at 10 dB SNR"),
    "dtln-mask": K.Reference(dtln_score, 5.0, 0.5, "noise suppression of 4 noisy sounds, mean SNR gain in dB"),
}
