"""Text normalisation and tokenization, vectorized with pyarrow.compute.

SST-2 is lowercased, Penn-Treebank tokenized text ("is n't", "-lrb- great ! -rrb-"), while users
send raw text ("isn't", "(great!)").  Both go through the same normalisation, at training and at
inference, so that both spellings become the same tokens; `detokenize` goes the other way, to
test and teach on raw-looking text.  Every step is an Arrow kernel over the whole column; there is
no per-row Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_CHARS = 20_000  # longer texts are cut before any regex work, so cost per row is bounded
MAX_TOKENS = 1_024  # tokens beyond this are not fed to the model
PAD, UNK = 0, 1  # reserved ids; vocabulary words start at 2

# (pattern, replacement) applied in order with RE2; "\1" refers to a capture group.
_RULES: tuple[tuple[str, str], ...] = (
    # PTB bracket and escape spellings used by the SST sentence files.
    (r"-lrb-", " ( "),
    (r"-rrb-", " ) "),
    (r"-lsb-", " [ "),
    (r"-rsb-", " ] "),
    (r"-lcb-", " { "),
    (r"-rcb-", " } "),
    (r"\\", ""),
    # Quotes: PTB writes `` '' ` ', raw text writes " ' and typographic variants.
    (r"[\x{2018}\x{2019}\x{201B}`\x{00B4}]", "'"),
    (r"[\x{201C}\x{201D}]|''", '"'),
    # PTB contraction split: isn't -> is n't, can't -> ca n't, it's -> it 's, cannot -> can not.
    (r"\bcannot\b", "can not"),
    (r"(\w)n't\b", r"\1 n't"),
    (r"(\w)'(s|re|ve|ll|d|m)\b", r"\1 '\2"),
    # Single quotes used as quotation marks are split off, as PTB does.
    (r"(^|\s)'(\S)", r"\1' \2"),
    (r"(^|\s)' (s|re|ve|ll|d|m)(\s|$)", r"\1'\2\3"),
    (r"(\S)'(\s|$)", r"\1 '\2"),
    # Punctuation becomes its own token; runs of dots and dashes stay one token ("...", "--").
    (r"(\.+|-{2,}|[,!?;:()\[\]{}\"$%])", r" \1 "),
)


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase, truncate and re-space a string column into PTB-like, space-separated tokens."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if pa.types.is_null(texts.type):  # an all-null column without a string type
        texts = texts.cast(pa.string())
    out = pc.utf8_slice_codeunits(texts, 0, MAX_CHARS)
    out = pc.utf8_lower(out)
    for pattern, replacement in _RULES:
        out = pc.replace_substring_regex(out, pattern=pattern, replacement=replacement)
    return pc.utf8_trim_whitespace(out)


def tokenize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Normalised tokens per row as a list array; null, empty and blank rows become null lists."""
    text = normalize(texts)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
    return pc.utf8_split_whitespace(text)


_DETOKENIZE = (
    (r" n't\b", "n't"), (r"\bca n't", "can't"), (r"\bwo n't", "won't"),
    (r" '(s|re|ve|ll|d|m)\b", r"'\1"), (r"-lrb- ", "("), (r" -rrb-", ")"),
    (r"\\(.)", r"\1"), (r"`` ", '"'), (r" ''", '"'), (r"` ", "'"),
    (r" ([.,!?;:%])", r"\1"), (r"\bcan not\b", "cannot"),
)


def detokenize(texts: pa.Array) -> pa.Array:
    """A raw-looking copy of PTB-tokenized text ("is n't" -> "isn't", "-lrb- a -rrb-" -> "(a)")."""
    for pattern, replacement in _DETOKENIZE:
        texts = pc.replace_substring_regex(texts, pattern=pattern, replacement=replacement)
    return pc.utf8_capitalize(texts)


def build_vocab(tokens: pa.Array, max_size: int, min_count: int = 1) -> list[str]:
    """Most frequent tokens first; ties break alphabetically so the vocabulary is deterministic."""
    counts = pc.value_counts(pc.list_flatten(tokens))
    words = counts.field("values").to_numpy(zero_copy_only=False)
    freq = counts.field("counts").to_numpy()
    order = np.lexsort((words, -freq))
    keep = order[freq[order] >= min_count][:max_size]
    return [str(w) for w in words[keep]]


class Encoded:
    """Token ids of a column kept flat (ids + per-row start/length); padding happens per batch."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.ids, self.starts, self.lengths = ids, starts, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def pad(self, rows: np.ndarray) -> np.ndarray:
        """Padded id matrix (len(rows), max length) built by one vectorized scatter."""
        lengths = self.lengths[rows]
        width = int(lengths.max(initial=0))
        out = np.full((len(rows), max(width, 1)), PAD, dtype=np.int64)
        total = int(lengths.sum())
        row_pos = np.repeat(np.arange(len(rows)), lengths)
        col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row_pos, col] = self.ids[np.repeat(self.starts[rows], lengths) + col]
        return out


class WordPieces:
    """Splits words a vocabulary lacks into BERT word pieces ("unwatchable" -> un ##watch ##able),
    longest match first, in Rust (the `tokenizers` package), once per distinct word of a call:
    an unknown word reads as its parts instead of one shared UNK."""

    def __init__(self, pieces: Sequence[str], offset: int):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        self.unk = "[UNK]" if "[UNK]" in pieces else None
        self.tokenizer = Tokenizer(WordPiece({p: i for i, p in enumerate(pieces)}, unk_token=self.unk or "[UNK]",
                                             max_input_chars_per_word=100))
        self.tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        self.tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        ids = np.arange(len(pieces), dtype=np.int64) + offset
        if self.unk:
            ids[list(pieces).index(self.unk)] = UNK
        self.ids = ids  # piece index -> model id

    def split(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(model ids of every word's pieces, flat; pieces per word, at least 1: UNK if none)."""
        encodings = self.tokenizer.encode_batch_fast(words, add_special_tokens=False)
        counts = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        ids = self.ids[np.fromiter((i for e in encodings for i in e.ids), np.int64, int(counts.sum()))]
        if (empty := counts == 0).any():  # nothing WordPiece can read (a lone symbol): one UNK
            ids = np.insert(ids, (np.cumsum(counts) - counts)[empty], UNK)
            counts = np.maximum(counts, 1)
        return ids, counts


def encode(texts: pa.Array | pa.ChunkedArray, vocab: pa.Array | Sequence[str],
           pieces: WordPieces | None = None) -> Encoded:
    """Tokenize and map tokens to ids; rows are capped at MAX_TOKENS.  A word missing from the
    vocabulary is UNK, or with `pieces` its word pieces' ids, spliced in with numpy."""
    if not isinstance(vocab, pa.Array):
        vocab = pa.array(vocab, pa.string())
    tokens = tokenize(texts)
    lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(tokens)
    ids = pc.index_in(flat, value_set=vocab.cast(flat.type))
    if pieces is None or ids.null_count == 0:
        ids = pc.fill_null(ids, UNK - 2).to_numpy().astype(np.int64) + 2
        return Encoded(ids, np.cumsum(lengths) - lengths, np.minimum(lengths, MAX_TOKENS))
    unknown = ids.is_null().to_numpy(zero_copy_only=False)
    ids = pc.fill_null(ids, 0).to_numpy().astype(np.int64) + 2
    distinct = pc.dictionary_encode(flat.filter(pa.array(unknown)))
    piece_ids, piece_counts = pieces.split(distinct.dictionary.to_pylist())
    which = distinct.indices.to_numpy().astype(np.int64)  # each unknown word's distinct index
    width = np.ones(len(ids), np.int64)  # ids per word
    width[unknown] = piece_counts[which]
    out_start = np.cumsum(width) - width
    out = np.empty(int(width.sum()), np.int64)
    out[out_start[~unknown]] = ids[~unknown]
    n = width[unknown]
    offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    piece_start = (np.cumsum(piece_counts) - piece_counts)[which]
    out[np.repeat(out_start[unknown], n) + offset] = piece_ids[np.repeat(piece_start, n) + offset]
    bounds = np.concatenate([[0], np.cumsum(width)])
    row_start = np.cumsum(lengths) - lengths
    new_lengths = bounds[row_start + lengths] - bounds[row_start]
    return Encoded(out, bounds[row_start], np.minimum(new_lengths, MAX_TOKENS))
