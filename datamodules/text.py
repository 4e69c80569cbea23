"""Character-level corpora served as truncated-BPTT streams (Graves 2013, Sec. 3).

Corpora (``corpus``), read from local files given by ``path``:

* ``stdlib`` (the embedded default, no download): the running interpreter's standard library
  source (``sysconfig.get_paths()['stdlib']``, ``*.py`` outside ``site-packages``; the language
  reference text ships inside it as ``pydoc_data/topics.py``), a code corpus as Karpathy used the
  Linux source. Files are ordered by a hash of their relative path (so a prefix mixes modules
  rather than taking the alphabetically first ones) and cut at ``max_bytes``.
* ``enwik8``: the Hutter Prize Wikipedia dump, raw bytes (the paper: 205 byte symbols). ``path``
  is the 100M-byte file ``enwik8`` or ``enwik8.zip``. Split 90M/5M/5M by default (the common
  convention); the paper's 96M train / 4M validation is ``val_fraction: 0.04, test_fraction: 0``.
* ``text8``: the first 10^8 characters of cleaned Wikipedia (a-z and space), ``text8`` or
  ``text8.zip``; 90M/5M/5M.
* ``ptb``: Penn Treebank characters (Mikolov's ``ptb.char.{train,valid,test}.txt``: characters
  separated by spaces, ``_`` between words, a sentence per line); ``path`` is their folder.
  The text is rebuilt as words separated by spaces and lines ending in ``\\n``.
* ``text``: any UTF-8 text file, or a folder of them (read recursively in sorted order).

Single-stream corpora are split in order: the first ``1 - val_fraction - test_fraction`` for
training, then validation, then test.

Vocabulary: the training split's symbols, sorted, plus ``<unk>``; validation and test symbols
outside it map to ``<unk>`` and are counted (``unknown_symbols``) with a warning. The vocabulary is
part of the datamodule's and the model's checkpoint state.

Truncated BPTT: each split is cut into ``batch_size`` contiguous streams, read in windows of
``seq_len`` symbols; window ``i`` of stream ``b`` continues window ``i - 1`` of stream ``b``, so the
model carries its hidden state across windows. Each batch says when to start from a zero state
(``batch["reset"]``): every ``reset_every`` training windows (the paper: every 100 sequences) and at
the start of every pass over a split (epoch boundaries); evaluation carries the state through the
whole split.

Data-parallel training (DDP, ``trainer.devices > 1``): ``batch_size`` is per process, as everywhere
in Lightning. The split is cut into ``batch_size * world_size`` streams and rank ``r`` reads streams
``r * batch_size`` to ``(r + 1) * batch_size - 1``, every window in order, so that the ranks together
read exactly the windows that one process with ``batch_size * world_size`` streams would. (A
``DistributedSampler`` would deal the windows out, window 0 to rank 0, window 1 to rank 1, ..., and
break the carried state; every loader here has a one-replica ``ResumableSampler`` over its rank's
own windows, a ``DistributedSampler``, so that Lightning puts none in.)
"""

from __future__ import annotations

import codecs
import math
import os
import sysconfig
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .resumable_sampler import ResumableSampler, resumable_train_sampler

Corpus = Literal["stdlib", "enwik8", "text8", "ptb", "text"]
Split = Literal["train", "val", "test"]
UNK = "<unk>"
STDLIB_DEFAULT_MAX_BYTES = 4_000_000
PTB_FILES = {"train": "ptb.char.train.txt", "val": "ptb.char.valid.txt",
             "test": "ptb.char.test.txt"}
# Where the corpora are published; fetched only with ``download: true``.
URLS = {
    "enwik8": "http://mattmahoney.net/dc/enwik8.zip",
    "text8": "http://mattmahoney.net/dc/text8.zip",
    "ptb": "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
}
TEXT8_SYMBOLS = frozenset("abcdefghijklmnopqrstuvwxyz ")


class CorpusError(ValueError):
    """A corpus file that is missing, unreadable or not in the expected format."""


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """Symbol <-> index. ``symbols`` are single characters, sorted, then ``<unk>`` last.

    Byte corpora (``unit="byte"``) hold each byte as the Latin-1 character of the same value, so
    one code path serves bytes and characters; ``decode`` turns bytes back into UTF-8 text.
    """

    symbols: tuple[str, ...]
    unit: Literal["char", "byte"] = "char"

    def __post_init__(self) -> None:
        if not self.symbols or self.symbols[-1] != UNK:
            raise ValueError(f"Vocabulary: the last symbol must be {UNK!r}")
        chars = self.symbols[:-1]
        if any(len(s) != 1 for s in chars) or list(chars) != sorted(set(chars)):
            raise ValueError("Vocabulary: symbols must be distinct single characters, sorted")

    @classmethod
    def from_text(cls, text: str, unit: Literal["char", "byte"] = "char") -> Vocabulary:
        return cls(tuple(chr(c) for c in np.unique(_code_points(text))) + (UNK,), unit)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def unk_index(self) -> int:
        return len(self.symbols) - 1

    def encode(self, text: str) -> tuple[Tensor, int]:
        """Indices (int64) of ``text``'s symbols, and how many were unknown (mapped to <unk>)."""
        points = _code_points(text)
        known = np.array([ord(s) for s in self.symbols[:-1]], dtype=np.uint32)
        where = np.minimum(np.searchsorted(known, points), len(known) - 1)
        found = known[where] == points
        ids = np.where(found, where, self.unk_index).astype(np.int64)
        return torch.from_numpy(ids), int((~found).sum())

    def decode(self, ids: Tensor | list[int]) -> str:
        """Text of the indices; <unk> shows as U+FFFD, byte corpora are decoded as UTF-8."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        chars = "".join("\ufffd" if i == self.unk_index else self.symbols[i] for i in ids)
        if self.unit == "byte":
            return chars.encode("latin-1", errors="replace").decode("utf-8", errors="replace")
        return chars

    def to_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "unit": self.unit}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Vocabulary:
        return cls(tuple(state["symbols"]), state["unit"])


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# --------------------------------------------------------------------------------------------
# Corpus readers: each returns the text of every split it defines (str; bytes as Latin-1)
# --------------------------------------------------------------------------------------------
def _read_prefix(path: Path, max_bytes: int | None) -> bytes:
    """The first ``max_bytes`` bytes of a file, or of the single file inside a zip archive."""
    if not path.is_file():
        raise CorpusError(f"corpus file {str(path)!r} does not exist or is not a file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise CorpusError(f"{str(path)!r}: expected one file in the zip, got {names}")
                with archive.open(names[0]) as f:
                    return f.read(-1 if max_bytes is None else max_bytes)
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise CorpusError(f"{str(path)!r} is a corrupt zip archive: {e}") from e
    with path.open("rb") as f:
        magic = f.read(2)
    if path.suffix == ".zip" or magic == b"PK":
        raise CorpusError(f"{str(path)!r} looks like a zip archive but cannot be opened; "
                          "download it again or pass the unzipped file")
    with path.open("rb") as f:
        return f.read(-1 if max_bytes is None else max_bytes)


def _decode_utf8(data: bytes, path: Path, truncated: bool) -> str:
    """Strict UTF-8; a multi-byte character cut by ``max_bytes`` at the end is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(data, final=not truncated)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                          "use corpus 'enwik8' for raw bytes") from e


def _find(path: Path, name: str) -> Path:
    """``path`` itself, or ``name`` / ``name.zip`` inside the folder ``path``."""
    candidates = [path / name, path / f"{name}.zip"] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CorpusError(f"{name}: no file at {' or '.join(repr(str(c)) for c in candidates)}; "
                      f"get {URLS[name]} (or set `download: true` where a network exists)")


def read_enwik8(path: Path, max_bytes: int | None) -> str:
    return _read_prefix(_find(path, "enwik8"), max_bytes).decode("latin-1")


def read_text8(path: Path, max_bytes: int | None) -> str:
    path = _find(path, "text8")
    text = _read_prefix(path, max_bytes).decode("latin-1")
    stray = set(text) - TEXT8_SYMBOLS
    if stray:
        offset = min(text.index(s) for s in stray)
        raise CorpusError(f"{str(path)!r} is not text8: text8 holds only a-z and space, found "
                          f"{text[offset]!r} at offset {offset}")
    return text


def read_ptb_chars(path: Path, max_bytes: int | None) -> dict[Split, str]:
    """The three PTB character files as text: words separated by spaces, lines by ``\\n``."""
    if not path.is_dir():
        raise CorpusError(f"ptb: path {str(path)!r} must be the folder holding "
                          f"{sorted(PTB_FILES.values())} (simple-examples/data in {URLS['ptb']})")
    splits: dict[Split, str] = {}
    for split, name in PTB_FILES.items():
        file = path / name
        data = _read_prefix(file, max_bytes)
        lines = []
        for number, line in enumerate(_decode_utf8(data, file, False).splitlines(), 1):
            tokens = line.split()
            bad = [t for t in tokens if len(t) != 1]
            if bad:
                raise CorpusError(f"{str(file)}:{number}: PTB character files hold single "
                                  f"characters separated by spaces, found {bad[0]!r}")
            lines.append("".join(tokens).replace("_", " ").strip() + "\n")
        splits[split] = "".join(lines)
    return splits


def read_text(path: Path, max_bytes: int | None) -> str:
    """A UTF-8 file, or every file under a folder in sorted order, up to ``max_bytes``."""
    if not path.exists():
        raise CorpusError(f"text: path {str(path)!r} does not exist (a UTF-8 file or a folder)")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise CorpusError(f"text: folder {str(path)!r} holds no files")
    return _concatenate(files, max_bytes)


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, ordered by a hash of their relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages",
                                                      "__pycache__")]
        files += [Path(directory, n) for n in names if n.endswith(".py")]
    def by_hash(file: Path) -> tuple[int, str]:
        relative = file.relative_to(root).as_posix()
        return zlib.crc32(relative.encode()), relative

    return sorted(files, key=by_hash)


def read_stdlib(max_bytes: int | None) -> str:
    return _concatenate(stdlib_files(), max_bytes, skip_undecodable=True)


def _concatenate(files: list[Path], max_bytes: int | None, skip_undecodable: bool = False) -> str:
    parts, remaining = [], math.inf if max_bytes is None else max_bytes
    for file in files:
        if remaining <= 0:
            break
        data = _read_prefix(file, None if math.isinf(remaining) else int(remaining))
        truncated = len(data) == remaining and file.stat().st_size > remaining
        try:
            parts.append(_decode_utf8(data, file, truncated))
        except CorpusError:
            if skip_undecodable:  # a few stdlib test files are Latin-1 on purpose
                continue
            raise
        remaining -= len(data)
    return "".join(parts)


def split_stream(text: str, val_fraction: float, test_fraction: float) -> dict[Split, str]:
    """Train, validation, test: consecutive pieces of one stream."""
    n_val, n_test = round(len(text) * val_fraction), round(len(text) * test_fraction)
    n_train = len(text) - n_val - n_test
    return {"train": text[:n_train], "val": text[n_train:n_train + n_val],
            "test": text[n_train + n_val:]}


# --------------------------------------------------------------------------------------------
# Truncated-BPTT windows
# --------------------------------------------------------------------------------------------
class StreamWindows(Dataset):
    """A symbol stream as ``batch_size`` contiguous streams read ``seq_len`` symbols at a time.

    Item ``i`` is window ``i``: ``inputs[b] = ids[b L + i T : b L + (i+1) T]`` and ``targets`` the
    same shifted by one symbol, with ``L`` the stream length and ``T = seq_len`` (the last window
    may be shorter). ``reset`` is True on window 0 and every ``reset_every`` windows after it.
    The ``len(ids) - 1 - batch_size * L < batch_size`` trailing symbols are not predicted.

    ``shard = (rank, world_size)`` cuts ``batch_size * world_size`` streams and keeps rank's
    ``batch_size`` of them (see the module docstring); iteration yields the windows in order.
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int,
                 reset_every: int | None = None, name: str = "stream",
                 shard: tuple[int, int] = (0, 1)) -> None:
        rank, world_size = shard
        streams = batch_size * world_size
        stream_len = (len(ids) - 1) // streams
        if stream_len < 1:
            raise CorpusError(f"{name}: {len(ids)} symbols are too few for {streams} streams "
                              f"({batch_size} per process x {world_size} processes); lower the "
                              "batch size or use more data")
        used = streams * stream_len
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.inputs = ids[:used].view(streams, stream_len)[rows]
        self.targets = ids[1:used + 1].view(streams, stream_len)[rows]
        self.seq_len, self.reset_every = seq_len, reset_every

    def __len__(self) -> int:
        return math.ceil(self.inputs.shape[1] / self.seq_len)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        window = slice(i * self.seq_len, (i + 1) * self.seq_len)
        reset = i == 0 or (self.reset_every is not None and i % self.reset_every == 0)
        return {"inputs": self.inputs[:, window], "targets": self.targets[:, window],
                "reset": reset}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


# --------------------------------------------------------------------------------------------
# The datamodule
# --------------------------------------------------------------------------------------------
class TextDataModule(pl.LightningDataModule):
    """Character-level language-model data (Graves 2013, Sec. 3).

    Args:
        corpus: ``stdlib`` (embedded), ``enwik8``, ``text8``, ``ptb`` or ``text`` (see module doc).
        path: the corpus file or folder (not used by ``stdlib``).
        batch_size: number of parallel streams in training.
        seq_len: symbols per truncated-BPTT window (the paper: 100).
        reset_every: zero the training state every this many windows (the paper: 100);
            None resets only at epoch boundaries.
        eval_batch_size: streams for validation and test (default ``batch_size``).
        val_fraction, test_fraction: split of single-stream corpora (PTB has its own files).
        max_bytes: read at most this many bytes of the corpus (per file for PTB); None reads
            it all, except ``stdlib``, which then reads ``STDLIB_DEFAULT_MAX_BYTES``.
        download: fetch ``enwik8``/``text8`` into ``path``'s folder when missing (needs a
            network; never done unless asked).
    """

    def __init__(
        self,
        corpus: Corpus = "stdlib",
        path: str | None = None,
        batch_size: int = 32,
        seq_len: int = 100,
        reset_every: int | None = 100,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_bytes: int | None = None,
        download: bool = False,
    ) -> None:
        super().__init__()
        if corpus not in Corpus.__args__:
            raise ValueError(f"TextDataModule: corpus must be one of {Corpus.__args__}, "
                             f"got {corpus!r}")
        if corpus != "stdlib" and path is None:
            raise ValueError(f"TextDataModule: corpus {corpus!r} needs `path` (a local file or "
                             "folder); only 'stdlib' is embedded")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("reset_every", reset_every), ("eval_batch_size", eval_batch_size),
                            ("max_bytes", max_bytes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TextDataModule: {name} must be an integer >= 1, got {value!r}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"TextDataModule: {name} must be in [0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError("TextDataModule: val_fraction + test_fraction must be < 1, got "
                             f"{val_fraction} + {test_fraction}")
        self.save_hyperparameters()
        self.corpus, self.path = corpus, None if path is None else Path(path).expanduser()
        self.batch_size, self.seq_len, self.reset_every = batch_size, seq_len, reset_every
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.max_bytes, self.download = max_bytes, download
        self.texts: dict[Split, str] = {}
        self.vocabulary: Vocabulary | None = None
        self.unknown_symbols: dict[Split, int] = {}

    @property
    def unit(self) -> Literal["char", "byte"]:
        return "byte" if self.corpus == "enwik8" else "char"

    def prepare_data(self) -> None:
        """Download enwik8/text8 when asked to and missing; otherwise nothing."""
        if not self.download or self.corpus not in ("enwik8", "text8"):
            return
        target = self.path / f"{self.corpus}.zip" if self.path.is_dir() else self.path
        if target.exists() or target.with_suffix("").exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            urllib.request.urlretrieve(URLS[self.corpus], target)
        except OSError as e:
            raise CorpusError(f"could not download {URLS[self.corpus]} to {str(target)!r}: {e}; "
                              "fetch it by hand and point `path` at it") from e

    def read_splits(self) -> dict[Split, str]:
        """Every split's text, read from disk (raises CorpusError naming the file)."""
        if self.corpus == "ptb":
            return read_ptb_chars(self.path, self.max_bytes)
        text = {
            "stdlib": lambda: read_stdlib(self.max_bytes or STDLIB_DEFAULT_MAX_BYTES),
            "enwik8": lambda: read_enwik8(self.path, self.max_bytes),
            "text8": lambda: read_text8(self.path, self.max_bytes),
            "text": lambda: read_text(self.path, self.max_bytes),
        }[self.corpus]()
        return split_stream(text, self.val_fraction, self.test_fraction)

    def setup(self, stage: str | None = None) -> None:
        if not self.texts:
            self.texts = self.read_splits()
            if not self.texts["train"]:
                raise CorpusError(f"{self.corpus}: the training split is empty")
        if self.vocabulary is None:
            self.vocabulary = Vocabulary.from_text(self.texts["train"], self.unit)

    def encode(self, split: Split) -> Tensor:
        """The split's indices under the current vocabulary; unknown symbols are counted."""
        if not self.texts.get(split):
            raise CorpusError(f"{self.corpus}: the {split} split is empty "
                              f"(val_fraction={self.val_fraction}, "
                              f"test_fraction={self.test_fraction})")
        ids, unknown = self.vocabulary.encode(self.texts[split])
        self.unknown_symbols[split] = unknown
        if unknown:
            rank_zero_warn(f"{self.corpus} {split} split: {unknown} of {len(ids)} symbols are "
                           f"not in the training vocabulary; they map to {UNK}")
        return ids

    def _loader(self, split: Split) -> DataLoader:
        train = split == "train"
        windows = StreamWindows(self.encode(split), self.batch_size if train else
                                self.eval_batch_size, self.seq_len,
                                self.reset_every if train else None, f"{self.corpus} {split}",
                                self.shard())
        # batch_size=None: each item already is a batch. The sampler keeps the stream's order
        # over this rank's own streams (a DistributedSampler of one replica, so that Lightning puts
        # no sampler of its own in); in training it resumes inside an epoch (the model keeps the
        # hidden state it carries between windows in its checkpoint: CharRNN does).
        sampler = resumable_train_sampler(self.trainer, windows, None, shuffle=False,
                                          sharded=True) if train else ResumableSampler(
                                              windows, shuffle=False)
        return DataLoader(windows, batch_size=None, sampler=sampler)

    def shard(self) -> tuple[int, int]:
        """(rank, world size) of data parallelism: (0, 1) in a single process."""
        sampler_kwargs = self.trainer.distributed_sampler_kwargs if self.trainer else None
        if not sampler_kwargs:
            return 0, 1
        return sampler_kwargs["rank"], sampler_kwargs["num_replicas"]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def state_dict(self) -> dict[str, Any]:
        return {"vocabulary": None if self.vocabulary is None else self.vocabulary.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint's vocabulary replaces the one built from this run's training split."""
        if state_dict.get("vocabulary") is not None:
            self.vocabulary = Vocabulary.from_dict(state_dict["vocabulary"])
