"""Online handwriting for Graves (2013) Sec. 4-5: IAM-OnDB, or an embedded Hershey-font stand-in.

Both datasets live on disk in the IAM-OnDB layout and go through the same parser:

    <root>/lineStrokes/a01/a01-000/a01-000u-01.xml   one handwritten line:
        WhiteboardCaptureSession > StrokeSet > Stroke > Point(x, y, time)
    <root>/ascii/a01/a01-000/a01-000u.txt            the form's transcription: line n of the
                                                     text after "CSR:" is lineStrokes ...-0n.xml
    <root>/trainset.txt, testset_v.txt, testset_t.txt, testset_f.txt   (optional) the task splits

A line of T pen points becomes T-1 rows (dx, dy, end_of_stroke): the offset to each point from the
one before, and 1 when the pen lifts after that point (Graves 2013 Sec. 4). Offsets are normalised
to mean 0 and standard deviation 1 with the training split's statistics (``offset_mean``,
``offset_std``), which the models keep as buffers so a checkpoint carries them.

``dataset="hershey"`` (the default, no download) renders short lines of English words with the
single-stroke script font of the ``Hershey-Fonts`` package, with a random slant, size, letter
spacing, baseline wobble and pen jitter per line, writes them as IAM-OnDB XML + ascii files into a
cache folder and reads them back with the parser above.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import string
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .resumable_sampler import resumable_train_sampler

# Graves 2013 Sec. 5: "we used only a subset of 57 [of IAM-OnDB's 80 characters], with all the
# digits and most of the punctuation characters replaced with a generic 'non-letter' label".
# The paper does not list which punctuation survives; we keep the three commonest in IAM-OnDB.
NON_LETTER = "\0"
ALPHABET = NON_LETTER + " " + string.ascii_lowercase + string.ascii_uppercase + ".,'"
assert len(ALPHABET) == 57
_CHAR_INDEX = {c: i for i, c in enumerate(ALPHABET)}

SPLIT_FILES = ("trainset.txt", "testset_v.txt", "testset_t.txt", "testset_f.txt")
VALIDATION_FILES = ("testset_v.txt", "testset_t.txt")


def encode_text(text: str) -> Tensor:
    """Characters -> indices into ALPHABET; characters outside it become the non-letter label."""
    return torch.tensor([_CHAR_INDEX.get(c, 0) for c in text], dtype=torch.long)


def decode_text(indices: Tensor) -> str:
    return "".join(ALPHABET[i] if i > 0 else "#" for i in indices.tolist())


# ----------------------------------------------------------------------------- IAM-OnDB format


def parse_line_strokes(path: Path) -> np.ndarray:
    """One lineStrokes XML file -> (N, 3) float array of pen points (x, y, end_of_stroke).

    Raises ValueError naming the file when it is not well-formed or has no points."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: not well-formed XML ({error})") from error
    stroke_set = root.find("StrokeSet")
    if stroke_set is None:
        raise ValueError(f"{path}: no <StrokeSet> under <{root.tag}>")
    points: list[tuple[float, float, float]] = []
    for stroke in stroke_set.iter("Stroke"):
        try:
            xy = [(float(p.attrib["x"]), float(p.attrib["y"])) for p in stroke.iter("Point")]
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path}: a <Point> lacks a numeric x or y ({error})") from error
        points += [(x, y, float(i == len(xy) - 1)) for i, (x, y) in enumerate(xy)]
    if len(points) < 2:
        raise ValueError(f"{path}: fewer than 2 points")
    return np.asarray(points, dtype=np.float64)


def parse_transcription(path: Path) -> list[str]:
    """One ascii/*.txt form -> its text lines (those after the ``CSR:`` line, blanks dropped)."""
    lines = [line.strip() for line in path.read_text(encoding="latin-1").splitlines()]
    if "CSR:" not in lines:
        raise ValueError(f"{path}: no 'CSR:' line")
    return [line for line in lines[lines.index("CSR:") + 1:] if line]


def points_to_offsets(points: np.ndarray) -> np.ndarray:
    """(N, 3) pen points -> (N-1, 3) rows (dx, dy, end_of_stroke) of the 2nd..Nth point."""
    return np.concatenate([np.diff(points[:, :2], axis=0), points[1:, 2:]], axis=1)


@dataclass
class HandwritingLine:
    line_id: str        # e.g. a01-000u-01
    text: str
    offsets: np.ndarray  # (T, 3): dx, dy (raw units), end_of_stroke


def form_id(line_id: str) -> str:
    return line_id.rsplit("-", 1)[0]


def read_iam_folder(root: Path, max_jump: float,
                    max_line_points: int) -> tuple[list[HandwritingLine], dict[str, int]]:
    """Every usable line under ``root``: parsed, joined with its transcription, filtered.

    A file that cannot be parsed or has no transcription is reported with its path and skipped.
    Offsets longer than ``max_jump`` in either coordinate (sensor glitches, pen-up moves across the
    whiteboard) are clipped to it; lines with more than ``max_line_points`` points are dropped.
    Returns the lines and a count of what was skipped, clipped or dropped."""
    counts = {"broken": 0, "untranscribed": 0, "too_long": 0, "clipped_offsets": 0}
    transcriptions: dict[str, list[str] | None] = {}
    ascii_files = {path.stem: path for path in (root / "ascii").rglob("*.txt")}
    lines = []
    for xml_path in sorted((root / "lineStrokes").rglob("*.xml")):
        line_id = xml_path.stem
        form = form_id(line_id)
        if form not in transcriptions:
            try:
                transcriptions[form] = (parse_transcription(ascii_files[form])
                                        if form in ascii_files else None)
            except (ValueError, OSError) as error:
                warnings.warn(f"skipping form {form}: {error}", stacklevel=2)
                transcriptions[form] = None
        form_lines = transcriptions[form]
        number = int(line_id.rsplit("-", 1)[1]) if line_id.rsplit("-", 1)[1].isdigit() else 0
        if form_lines is None or not 1 <= number <= len(form_lines):
            warnings.warn(f"skipping {xml_path}: no transcription line {number} for form {form} "
                          f"under {root / 'ascii'}", stacklevel=2)
            counts["untranscribed"] += 1
            continue
        try:
            points = parse_line_strokes(xml_path)
        except ValueError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            counts["broken"] += 1
            continue
        if len(points) > max_line_points:
            counts["too_long"] += 1
            continue
        offsets = points_to_offsets(points)
        too_far = np.abs(offsets[:, :2]) > max_jump
        counts["clipped_offsets"] += int(too_far.any(axis=1).sum())
        offsets[:, :2] = np.clip(offsets[:, :2], -max_jump, max_jump)
        lines.append(HandwritingLine(line_id, form_lines[number - 1], offsets.astype(np.float32)))
    return lines, counts


def read_split_lists(root: Path) -> dict[str, set[str]]:
    """The IAM-OnDB task files present under ``root``: name -> set of form (or line) ids."""
    return {name: {line.strip() for line in (root / name).read_text().splitlines() if line.strip()}
            for name in SPLIT_FILES if (root / name).is_file()}


def in_list(line_id: str, ids: set[str]) -> bool:
    """Whether a task list names this line, its form (a01-000u) or its text (a01-000)."""
    form = form_id(line_id)
    return line_id in ids or form in ids or form.rstrip(string.ascii_lowercase) in ids


# ----------------------------------------------------------------------------- Hershey stand-in

# Words the embedded dataset writes: the commonest English words plus a few longer ones, all in
# the 57-character alphabet. Fixed here so the dataset is the same on every machine.
HERSHEY_WORDS = """
the of and to in is was he for it with as his on be at by had are but from or have an they which
one you were her all she there would their we him been has when who will more no if out so said
what up its about into than them can only other new some could time these two may then do first
any my now such like our over man me even most made after also did many before must through back
years where much your way well down should because each just those people how too little state
good very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used
take three states himself few house use during without again place around however home small found
thought went say part once general high upon school every does got united left number course war
until always away something fact though water less public put think almost hand enough far took
head yet government system better set told nothing night end why called didn't eyes find going
look asked later knew point next city give group toward young days let room president side social
present given several order national possible rather second face per among form important often
things looked early white john case become large big need four within felt along children saw best
church ever least power development light thing seemed family interest want members mind country
area others done turned although open god service certain kind problem began different door thus
help sense means whole matter perhaps itself york times law human line above name example action
company hands local show whether five history gave today either act feet across taken past quite
anything seen having death week experience body word half really field am car words already
themselves information tell together college shall money period held keep sure free seems real
""".split()


def _hershey_line_text(rng: random.Random, max_chars: int) -> str:
    """A few words, sometimes capitalised and punctuated, at most ``max_chars`` long."""
    words = [rng.choice(HERSHEY_WORDS)]
    while True:
        word = rng.choice(HERSHEY_WORDS)
        if len(" ".join(words + [word])) > max_chars:
            break
        words.append(word)
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    text = " ".join(words)
    if rng.random() < 0.2 and len(text) < max_chars:
        text += rng.choice(".,")
    return text[:max_chars]


def _hershey_line_points(font, text: str, rng: random.Random) -> list[list[tuple[float, float]]]:
    """Pen strokes of ``text`` in the Hershey script font, with this line's own slant, size,
    letter spacing, baseline wobble and pen jitter. Glyph strokes that meet (cursive joins) are
    merged into one pen-down stroke, as a writer would draw them."""
    font.render_options.spacing = rng.uniform(-1.0, 2.0)
    scale = rng.uniform(6.0, 10.0)            # font units -> whiteboard-like units
    aspect = rng.uniform(0.85, 1.15)
    slant = math.tan(rng.uniform(-0.1, 0.4))  # shear x by -y (y grows downwards, as in IAM)
    wobble_amplitude, wobble_period = rng.uniform(0.0, 1.5), rng.uniform(40.0, 120.0)
    jitter = rng.uniform(0.05, 0.3)
    strokes: list[list[tuple[float, float]]] = []
    for stroke in font.strokes_for_text(text):
        if strokes and math.dist(strokes[-1][-1], stroke[0]) <= 2.0:
            strokes[-1].extend(stroke[1:])
        else:
            strokes.append(list(stroke))
    drawn = []
    for stroke in strokes:
        points = []
        for x, y in stroke:
            y = y + wobble_amplitude * math.sin(2 * math.pi * x / wobble_period)
            x = x - slant * y
            points.append((scale * aspect * (x + rng.gauss(0, jitter)) + 500.0,
                           scale * (y + rng.gauss(0, jitter)) + 1000.0))
        drawn.append(points)
    return drawn


def _write_line_xml(path: Path, strokes: list[list[tuple[float, float]]]) -> None:
    session = ET.Element("WhiteboardCaptureSession")
    description = ET.SubElement(session, "WhiteboardDescription")
    ET.SubElement(description, "SensorLocation", corner="top_left")
    stroke_set = ET.SubElement(session, "StrokeSet")
    time = 0.0
    for stroke in strokes:
        element = ET.SubElement(stroke_set, "Stroke", colour="black", start_time=f"{time:.2f}")
        for x, y in stroke:
            ET.SubElement(element, "Point", x=str(round(x)), y=str(round(y)), time=f"{time:.2f}")
            time += 0.01
        element.set("end_time", f"{time:.2f}")
        time += 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(session).write(path, encoding="ISO-8859-1", xml_declaration=True)


def write_hershey_dataset(root: Path, num_lines: int, val_lines: int, max_chars: int,
                          seed: int, font_name: str = "scripts") -> None:
    """Render ``num_lines`` lines into ``root`` in the IAM-OnDB layout, 10 lines per form; the
    last ``val_lines`` lines' forms are listed in testset_v.txt, the rest in trainset.txt."""
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    font.load_default_font(font_name)
    rng = random.Random(seed)
    lines_per_form = 10
    forms: list[str] = []
    for start in range(0, num_lines, lines_per_form):
        form = f"h{start // 1000:02d}-{start // lines_per_form:03d}h"
        forms.append(form)
        folder = f"h{start // 1000:02d}/{form[:-1]}"
        texts = [_hershey_line_text(rng, max_chars)
                 for _ in range(min(lines_per_form, num_lines - start))]
        for number, text in enumerate(texts, start=1):
            _write_line_xml(root / "lineStrokes" / folder / f"{form}-{number:02d}.xml",
                            _hershey_line_points(font, text, rng))
        ascii_path = root / "ascii" / folder / f"{form}.txt"
        ascii_path.parent.mkdir(parents=True, exist_ok=True)
        ascii_path.write_text(f"Writer: hershey-{font_name}\n\nOCR:\n\n" + "\n".join(texts)
                              + "\n\nCSR:\n\n" + "\n".join(texts) + "\n", encoding="latin-1")
    val_forms = math.ceil(val_lines / lines_per_form)
    (root / "trainset.txt").write_text("\n".join(forms[:-val_forms]) + "\n")
    (root / "testset_v.txt").write_text("\n".join(forms[-val_forms:]) + "\n")


# ----------------------------------------------------------------------------- torch side


class HandwritingDataset(Dataset):
    """Normalised (T, 3) offset sequences with their encoded transcriptions."""

    def __init__(self, lines: list[HandwritingLine], mean: np.ndarray, std: np.ndarray) -> None:
        self.lines = lines
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        line = self.lines[index]
        offsets = normalise(line.offsets, self.mean, self.std)
        return torch.from_numpy(offsets), encode_text(line.text)


def normalise(offsets: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = offsets.astype(np.float32, copy=True)
    out[:, :2] = (out[:, :2] - mean) / std
    return out


def denormalise(offsets: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = offsets.astype(np.float64, copy=True)
    out[:, :2] = out[:, :2] * std + mean
    return out


def collate_handwriting(batch: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Pad a batch. ``inputs`` is the sequence shifted right behind a zero start row, so step t
    sees x_1..x_{t-1} and predicts ``targets`` x_t (Graves 2013 eq. 1-6)."""
    strokes, texts = zip(*batch)
    batch_size, steps, chars = len(batch), max(map(len, strokes)), max(1, max(map(len, texts)))
    targets = torch.zeros(batch_size, steps, 3)
    stroke_mask = torch.zeros(batch_size, steps, dtype=torch.bool)
    text = torch.zeros(batch_size, chars, dtype=torch.long)
    text_mask = torch.zeros(batch_size, chars, dtype=torch.bool)
    for b, (sequence, characters) in enumerate(batch):
        targets[b, :len(sequence)] = sequence
        stroke_mask[b, :len(sequence)] = True
        text[b, :len(characters)] = characters
        text_mask[b, :len(characters)] = True
    inputs = torch.cat([torch.zeros(batch_size, 1, 3), targets[:, :-1]], dim=1)
    return {"inputs": inputs, "targets": targets, "stroke_mask": stroke_mask,
            "text": text, "text_mask": text_mask}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmsprop-repro"


class HandwritingDataModule(pl.LightningDataModule):
    """IAM-OnDB (``dataset="iam"``, ``root`` = the folder holding ``lineStrokes/`` and
    ``ascii/``) or the embedded Hershey-font handwriting (``dataset="hershey"``).

    Splits: with the IAM-OnDB task files present, Graves 2013 Sec. 4 "used the training set, test
    set and the larger of the validation sets for training and the smaller validation set for
    early-stopping"; the smaller of testset_v / testset_t is chosen by counting. Without them a
    ``val_fraction`` of the forms, chosen by a hash of the form id, is held out.

    Filters (the paper gives none; documented thresholds, in raw IAM units):
      ``max_jump``: offsets beyond it in x or y are clipped to it. Neighbouring points of one
        stroke lie ~10-50 units apart and pen-up moves between words a few hundred; longer jumps
        are sensor glitches or moves across the board.
      ``max_line_points``: longer lines are dropped (IAM-OnDB lines are ~700 points on average).
    """

    def __init__(
        self,
        dataset: Literal["hershey", "iam"] = "hershey",
        root: str | None = None,
        batch_size: int = 32,
        max_jump: float = 1000.0,
        max_line_points: int = 2000,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        hershey_lines: int = 600,
        hershey_val_lines: int = 40,
        hershey_max_chars: int = 12,
        hershey_font: Literal["scripts", "cursive"] = "scripts",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"HandwritingDataModule: batch_size must be >= 1, got {batch_size}")
        if max_jump <= 0 or max_line_points < 2:
            raise ValueError("HandwritingDataModule: max_jump must be > 0 and max_line_points >= 2,"
                             f" got {max_jump} and {max_line_points}")
        if not 0 < val_fraction < 1:
            raise ValueError("HandwritingDataModule: val_fraction must be in (0, 1), "
                             f"got {val_fraction}")
        if dataset == "iam":
            if root is None:
                raise ValueError("HandwritingDataModule: dataset='iam' needs root=<folder with "
                                 "lineStrokes/ and ascii/ from IAM-OnDB>")
            for needed in ("lineStrokes", "ascii"):
                if not (Path(root) / needed).is_dir():
                    raise FileNotFoundError(f"HandwritingDataModule: root={root!r} has no "
                                            f"{needed}/ folder (expected IAM-OnDB's layout)")
        elif hershey_val_lines >= hershey_lines or hershey_val_lines < 1:
            raise ValueError("HandwritingDataModule: need 1 <= hershey_val_lines < hershey_lines, "
                             f"got {hershey_val_lines} and {hershey_lines}")
        self.save_hyperparameters()
        self.offset_mean = np.zeros(2)
        self.offset_std = np.ones(2)
        self.train_set: HandwritingDataset | None = None
        self.val_set: HandwritingDataset | None = None

    @property
    def root(self) -> Path:
        if self.hparams.root is not None:
            return Path(self.hparams.root)
        h = self.hparams
        key = hashlib.sha1(repr((h.hershey_lines, h.hershey_val_lines, h.hershey_max_chars,
                                 h.hershey_font, h.seed)).encode()).hexdigest()[:10]
        return default_cache_dir() / f"handwriting-hershey-{key}"

    def prepare_data(self) -> None:
        h = self.hparams
        if h.dataset == "hershey" and not (self.root / "trainset.txt").is_file():
            # Written aside and renamed into place, so concurrent processes never read half of it.
            partial = self.root.parent / f"{self.root.name}.partial-{os.getpid()}"
            write_hershey_dataset(partial, h.hershey_lines, h.hershey_val_lines,
                                  h.hershey_max_chars, h.seed, h.hershey_font)
            try:
                partial.replace(self.root)
            except OSError:  # another process got there first
                shutil.rmtree(partial)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # idempotent; makes setup() alone enough outside a Trainer
        h = self.hparams
        lines, counts = read_iam_folder(self.root, h.max_jump, h.max_line_points)
        if not lines:
            raise RuntimeError(f"HandwritingDataModule: no usable handwriting lines under "
                               f"{self.root} (skipped: {counts}); expected lineStrokes/**/*.xml "
                               "with transcriptions in ascii/**/*.txt")
        train, val = self._split(lines)
        if not train or not val:
            raise RuntimeError(f"HandwritingDataModule: split of {len(lines)} lines under "
                               f"{self.root} left {len(train)} train / {len(val)} validation lines")
        deltas = np.concatenate([line.offsets[:, :2] for line in train]).astype(np.float64)
        self.offset_mean, self.offset_std = deltas.mean(axis=0), deltas.std(axis=0)
        self.train_set = HandwritingDataset(train, self.offset_mean, self.offset_std)
        self.val_set = HandwritingDataset(val, self.offset_mean, self.offset_std)
        self.summary = {"train_lines": len(train), "val_lines": len(val), **counts}
        rank_zero_info(f"HandwritingDataModule ({h.dataset}) from {self.root}: {self.summary}; "
                       f"offset mean {self.offset_mean.round(3)}, std {self.offset_std.round(3)}")

    def _split(self, lines: list[HandwritingLine],
               ) -> tuple[list[HandwritingLine], list[HandwritingLine]]:
        lists = read_split_lists(self.root)
        validation = [name for name in VALIDATION_FILES if name in lists]
        if "trainset.txt" in lists and validation:
            smaller = min(validation,
                          key=lambda n: sum(in_list(line.line_id, lists[n]) for line in lines))
            val = [line for line in lines if in_list(line.line_id, lists[smaller])]
            train = [line for line in lines if not in_list(line.line_id, lists[smaller])
                     and any(in_list(line.line_id, ids) for ids in lists.values())]
            return train, val
        held_out = [int(hashlib.sha1(form_id(l.line_id).encode()).hexdigest(), 16) % 10_000
                    < self.hparams.val_fraction * 10_000 for l in lines]
        return ([l for l, out in zip(lines, held_out) if not out],
                [l for l, out in zip(lines, held_out) if out])

    def train_dataloader(self) -> DataLoader:
        sampler = resumable_train_sampler(self.trainer, self.train_set, self.hparams.batch_size,
                                          shuffle=True)
        return DataLoader(self.train_set, self.hparams.batch_size, sampler=sampler,
                          drop_last=False, collate_fn=collate_handwriting,
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.hparams.batch_size, shuffle=False,
                          collate_fn=collate_handwriting, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def state_dict(self) -> dict[str, list[float]]:
        """The training split's offset statistics, saved in every checkpoint."""
        return {"offset_mean": self.offset_mean.tolist(), "offset_std": self.offset_std.tolist()}

    def load_state_dict(self, state_dict: dict[str, list[float]]) -> None:
        self.offset_mean = np.asarray(state_dict["offset_mean"])
        self.offset_std = np.asarray(state_dict["offset_std"])
