"""CLIP's byte-level BPE tokenizer: prompts -> ids [N, 77], and back.

    ids = tokenize(["a photo of a cat"])   # LongTensor [1, 77]: 49406 320 1125 539 320 2368 49407 0 ...
    token_strings("a photo of a cat")      # ['a', 'photo', 'of', 'a', 'cat']

Same ids as openai/CLIP's ``clip.tokenize``. The text is cleaned first: ``ftfy.fix_text``,
``html.unescape`` twice, runs of whitespace -> one space, strip, lower-case. Then a regex splits
it into words ('s 't 're 've 'm 'll 'd contractions, runs of letters, single digits, runs of other
non-space characters); each word's UTF-8 bytes are mapped to printable characters and merged by
BPE ranks from ``bpe_simple_vocab_16e6.txt.gz``. Vocabulary: 256 bytes, 256 bytes + "</w>"
(end of word), 48,894 merges, then <|startoftext|> = 49406 and <|endoftext|> = 49407.

Documented choices:
- ``""`` and whitespace-only prompts give [SOT, EOT] as in the reference; rejecting empty
  prompts is the explain layer's job.
- Lone surrogates become U+FFFD (ftfy's fix); should one ever survive cleaning, its bytes are
  taken with ``surrogatepass``, so it tokenizes like any other bytes. ftfy drops control
  characters. Neither raises.
- The literal strings "<|startoftext|>" / "<|endoftext|>" inside a prompt are plain text here,
  not special ids (openai/CLIP maps them to 49406/49407): a prompt must not be able to end its
  own text early, since CLIP reads the text feature at the EOT position.
- The vocabulary ships inside the package (``clipviz/vocab``, MIT licence beside it), so nothing is
  downloaded. Its sha256 is checked at load, as is that of any cache or package copy. Should the
  bundled copy be damaged, a cached or installed open_clip copy is used, and last it is re-fetched
  (``clipviz.cache.download``); offline, the ClipvizError says where to put the file by hand.
"""

import functools
import hashlib
import heapq
import html
import importlib.util
import os
import zlib
from pathlib import Path

import regex
import torch

from .errors import ClipvizError
from .cache import cache_dir, download
from .files import open_regular

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# shipped inside the package (MIT, openai/CLIP; licence beside it), as openai/clip and open_clip do
BUNDLED_VOCAB = Path(__file__).resolve().parent / "vocab" / VOCAB_NAME
NUM_MERGES = 49152 - 256 - 2  # 48,894: the vocab is 512 byte tokens + merges + 2 specials = 49,408
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
SOT_ID, EOT_ID = 49406, 49407
CONTEXT_LENGTH = 77
# A vocabulary file, and its inflated text, may be at most this large (CLIP's: 1.4 MB, 3.2 MB)
MAX_VOCAB_BYTES = 16 << 20

WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
WHITESPACE = regex.compile(r"\s+")


def byte_to_char():
    """The 256 UTF-8 byte values -> printable stand-in characters (dict of 256).

    Printable Latin-1 bytes stand for themselves; the other 68 (space, controls, ...) are moved to
    U+0100 and up, in byte order, so every BPE symbol is a visible, non-space character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return table


def clean_text(text):
    """What the reference does before splitting: fix mojibake, unescape HTML twice, squash whitespace, lower-case."""
    import ftfy  # imported on first use: it costs ~0.4 s, which the CLI's start-up should not pay twice

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return WHITESPACE.sub(" ", text).strip().lower()


# what no one can see: whitespace, controls, format characters (zero-width space U+200B, joiners,
# soft hyphen, BOM, tag characters) and Unicode's other default-ignorable code points (variation
# selectors, Hangul fillers U+3164 and U+FFA0, U+034F ...), which render as nothing (Unicode
# §5.21); and U+2800 BRAILLE PATTERN BLANK, a visible character to Unicode (an empty braille
# cell) that draws nothing: what "invisible character" generators paste
INVISIBLE = regex.compile(r"[\s\p{Cc}\p{Cf}\p{Default_Ignorable_Code_Point}\u2800]*")


def check_visible(prompt):
    """Raise ClipvizError for a prompt with nothing to explain: empty, or nothing left once CLIP's
    cleaning drops control characters (clean_text), or made only of invisible characters (a
    zero-width space pasted alone tokenizes to a real token, so the model would be asked about it).
    The message names the prompt (repr) and what to do."""
    if not prompt.strip():
        raise ClipvizError("a prompt is empty: write what to look for, e.g. \"a photo of a dog\"")
    if INVISIBLE.fullmatch(prompt) or not clean_text(prompt):  # "\x00\x1b" tokenizes like ""
        raise ClipvizError(f"a prompt is empty to the eye: {ascii(prompt):.60} has only zero-width, control or other "
                           "invisible characters; write what to look for, e.g. \"a photo of a dog\"")


class Tokenizer:
    """CLIP's BPE over bytes. Build it with ``get_tokenizer()`` (cached); ``merges`` are BPE pairs in rank order."""

    def __init__(self, merges):
        self.byte_to_char = byte_to_char()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        symbols = list(self.byte_to_char.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab  # id -> token string (byte stand-ins, maybe ending in "</w>")
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.word_cache = {}

    def bpe(self, word):
        """One word (byte stand-in characters) -> its BPE tokens, the last one ending in "</w>".

        The reference rule: merge every occurrence (left to right) of the adjacent pair with the
        lowest merge rank, and repeat until no adjacent pair is a merge. Done with a heap of
        (rank, position) over a linked list of symbols, so a 10,000-character word costs
        milliseconds, not the quadratic loop's seconds. Popping in (rank, position) order is the
        reference's order: a merge only creates pairs holding the new symbol, which rank later.
        """
        if word in self.word_cache:
            return self.word_cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        right = list(range(1, len(parts) + 1))  # index of the next live symbol (len(parts): none)
        left = list(range(-1, len(parts) - 1))
        heap = [(self.ranks[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in self.ranks]
        heapq.heapify(heap)

        def push(i):  # the pair starting at live symbol i, if it is a merge
            if 0 <= i and right[i] < len(parts):
                rank = self.ranks.get((parts[i], parts[right[i]]))
                if rank is not None:
                    heapq.heappush(heap, (rank, i))

        while heap:
            rank, i = heapq.heappop(heap)
            j = right[i] if parts[i] is not None else len(parts)
            if j == len(parts) or self.ranks.get((parts[i], parts[j])) != rank:
                continue  # stale: symbol i or its neighbour was merged since this pair was pushed
            parts[i], parts[j] = parts[i] + parts[j], None
            right[i] = right[j]
            if right[j] < len(parts):
                left[right[j]] = i
            push(left[i])
            push(i)
        parts = [part for part in parts if part is not None]
        self.word_cache[word] = parts
        return parts

    def bpe_tokens(self, text):
        """Prompt -> BPE token strings (byte stand-ins) of its cleaned text, no SOT/EOT."""
        tokens = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            utf8 = word.encode("utf-8", "surrogatepass")
            tokens.extend(self.bpe("".join(self.byte_to_char[b] for b in utf8)))
        return tokens

    def encode(self, text):
        """Prompt -> list of token ids, without SOT/EOT."""
        return [self.encoder[token] for token in self.bpe_tokens(text)]

    def token_bytes(self, token):
        """A token string (byte stand-ins, maybe ending in "</w>") -> the UTF-8 bytes it stands for."""
        return bytes(self.char_to_byte[c] for c in token.removesuffix("</w>"))

    def decode(self, ids):
        """Ids (ints in range) -> text, words (BPE's "</w>" ends) joined by one space."""
        text = "".join(self.decoder[i] for i in ids)
        words = (bytes(self.char_to_byte[c] for c in word) for word in text.split("</w>"))
        return b" ".join(words).decode("utf-8", errors="replace").strip()


def package_vocab_paths():
    """Copies of the vocabulary shipped by an installed ``open_clip`` or ``clip`` package, found without importing them."""
    for name in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / VOCAB_NAME).is_file():
                yield Path(folder) / VOCAB_NAME


def _sha256(data):
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def read_vocab():
    """Find the BPE vocabulary; returns (path, gzip file bytes).

    Order: $CLIPVIZ_VOCAB (must exist; the user's choice, so not hash-checked), the copy bundled
    with clipviz, the cache dir's copy, an installed open_clip / clip package's copy, and last a
    download into the cache dir by ``clipviz.cache.download``. Bundled, cache and package copies
    count only with the right sha256; a corrupt copy is passed over, and the download replaces a
    corrupt cached one.
    """
    env = os.environ.get("CLIPVIZ_VOCAB")
    if env:
        path = Path(env).expanduser()
        if not os.path.lexists(path):
            raise ClipvizError(f"CLIPVIZ_VOCAB is set to {path}, but no such file exists. Point it at a copy of "
                               f"{VOCAB_NAME} (from {VOCAB_URL}) or unset it.")
        with open_regular(path, "vocabulary") as handle:  # a FIFO or device: ClipvizError, no blocking
            data = handle.read(MAX_VOCAB_BYTES + 1)
        if len(data) > MAX_VOCAB_BYTES:
            raise ClipvizError(f"CLIPVIZ_VOCAB points at {path}, which is larger than {MAX_VOCAB_BYTES:,} bytes; "
                               f"CLIP's vocabulary is 1.4 MB. Point it at a copy of {VOCAB_NAME} or unset it.")
        return path, data
    cached = cache_dir() / VOCAB_NAME
    for path in [BUNDLED_VOCAB, cached, *package_vocab_paths()]:
        data = path.read_bytes() if path.is_file() else b""
        if _sha256(data) == VOCAB_SHA256:
            return path, data
    try:
        download(VOCAB_URL, cached, sha256=VOCAB_SHA256, progress=True)
        return cached, cached.read_bytes()
    except (ClipvizError, OSError) as error:
        if str(cached) in str(error):  # the hub's message already says where the file goes
            hint = f"Or set CLIPVIZ_VOCAB to the path of a copy of {VOCAB_NAME}."
        else:
            hint = f"Download {VOCAB_URL} by hand and save it as {cached}, or set CLIPVIZ_VOCAB to its path."
        raise ClipvizError(f"Could not get CLIP's BPE vocabulary: {str(error).rstrip('.')}. {hint}") from error


def parse_merges(path, data):
    """Gzip bytes of a CLIP vocabulary file -> the 48,894 merge pairs [(str, str), ...] in rank order."""
    try:
        # inflate at most MAX_VOCAB_BYTES + 1: a small gzip stream may declare gigabytes
        text = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data, MAX_VOCAB_BYTES + 1)
        if len(text) > MAX_VOCAB_BYTES:
            raise ClipvizError(f"{path} inflates to more than {MAX_VOCAB_BYTES:,} bytes, and CLIP's vocabulary "
                               f"to 3.2 MB: it is not the vocabulary (or a decompression bomb). Replace it with {VOCAB_URL}.")
        lines = text.decode("utf-8").split("\n")
    except (zlib.error, UnicodeDecodeError) as error:
        raise ClipvizError(f"{path} is not a gzipped CLIP vocabulary ({error}). Replace it with {VOCAB_URL}.") from error
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise ClipvizError(f"{path} is not CLIP's BPE vocabulary (want {NUM_MERGES} lines of two symbols after the "
                           f"header). Replace it with {VOCAB_URL}.")
    return merges


@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """The Tokenizer, built on first use and then reused (``get_tokenizer.cache_clear()`` rebuilds it)."""
    return Tokenizer(parse_merges(*read_vocab()))


def _check_prompt(text):
    if not isinstance(text, str):
        raise ClipvizError(f"A prompt must be a string, got {type(text).__name__} {text!r:.60}. Pass text.")
    return text


def _shorten(text, limit=60):
    return text if len(text) <= limit else text[:limit - 3] + "..."


def tokenize(texts, context_length=CONTEXT_LENGTH, truncate=False):
    """Prompt(s) -> ids, LongTensor [N, context_length]: SOT, BPE ids, EOT, then zeros.

    ``texts`` is one string (N = 1) or a non-empty list/tuple of strings. A prompt needing more than
    ``context_length`` ids (SOT and EOT included) raises ClipvizError, unless ``truncate=True``: then
    its ids are cut and the last one is EOT. "" gives [SOT, EOT] like the reference.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ClipvizError(f"tokenize takes a string or a non-empty list of strings, got {texts!r:.60}.")
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ClipvizError(f"context_length must be at least 2 (room for SOT and EOT), got {context_length}.")
    tokenizer = get_tokenizer()
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [SOT_ID, *tokenizer.encode(_check_prompt(text)), EOT_ID]
        if len(tokens) > context_length:
            if not truncate:
                which = f"Prompt {row} " if len(texts) > 1 else "Prompt "
                raise ClipvizError(f"{which}{_shorten(text)!r} is {len(tokens)} tokens long (counting start and end "
                                   f"tokens), more than the {context_length} that fit. Shorten it, or cut it to fit with "
                                   "clipviz.tokenize(..., truncate=True).")
            tokens = tokens[:context_length - 1] + [EOT_ID]
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return ids


def encode(text):
    """One prompt -> its BPE ids, list[int], without SOT/EOT and without a length limit."""
    return get_tokenizer().encode(_check_prompt(text))


def decode(ids):
    """Ids -> text. ``ids``: [T] (list, tensor or array) -> str; [N, T] tensor/array -> list[str].

    A leading SOT is dropped and everything from the first EOT on (EOT and padding) is ignored.
    BPE does not remember spacing: "a cat." decodes to "a cat ." (the regex split "cat" from ".").
    """
    if hasattr(ids, "ndim") and ids.ndim == 2:
        return [decode(row) for row in ids]
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if ids and ids[0] == SOT_ID:
        ids = ids[1:]
    if EOT_ID in ids:
        ids = ids[:ids.index(EOT_ID)]
    bad = [i for i in ids if not 0 <= i <= EOT_ID]
    if bad:
        raise ClipvizError(f"Token id {bad[0]} is outside CLIP's vocabulary (0..{EOT_ID}); pass ids from clipviz.tokenize.")
    return get_tokenizer().decode(ids)


def prompts_from_tokens(ids):
    """Token ids as openai/clip users hold them → the prompts they encode, list[str].

    ids: an integer tensor or array [P, L] (``clip.tokenize`` / ``clipviz.tokenize``: SOT, BPE ids,
    EOT, zero padding; L = 77) or [L] for one prompt. Each row is decoded, and re-encoding the text
    must give the same ids, so explaining the text is explaining these tokens (a prompt truncated
    at a token boundary too); a row without SOT and EOT, or ids the tokenizer would not produce
    for any text (a word split into other pieces), raise ClipvizError. Spaces BPE forgot are restored before punctuation ("a cat ." → "a cat."),
    which encodes to the same ids.
    """
    ids = torch.as_tensor(ids) if not isinstance(ids, torch.Tensor) else ids
    if ids.ndim not in (1, 2) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ClipvizError(f"token prompts must be integer ids [P, 77] from clip.tokenize or clipviz.tokenize, "
                           f"got {ids.dtype} of shape {list(ids.shape)}")
    rows = ids[None] if ids.ndim == 1 else ids
    if len(rows) == 0:
        raise ClipvizError("no prompt given: the token tensor has no rows")
    prompts = []
    for index, row in enumerate(rows):
        row = [int(i) for i in row.tolist()]
        if not row or row[0] != SOT_ID or EOT_ID not in row:
            raise ClipvizError(f"token row {index} does not start with CLIP's start token ({SOT_ID}) and hold its end "
                               f"token ({EOT_ID}): pass ids from clip.tokenize or clipviz.tokenize, or the prompt text")
        raw = decode(row)
        tidy = regex.sub(r"(?<=[\p{L}\p{N}]) (?=[^\s\p{L}\p{N}'])", "", raw)  # "a cat ." → "a cat."
        kept = row[:row.index(EOT_ID) + 1]
        text = next((t for t in (tidy, raw) if [SOT_ID, *encode(t), EOT_ID] == kept), None)
        if text is None:
            raise ClipvizError(f"token row {index} ({raw!r:.60}) is not what CLIP's tokenizer gives for any text "
                               "(a truncated or edited prompt?): pass the prompt text instead")
        prompts.append(text)
    return prompts


def token_strings(text):
    """Readable text of each BPE token of one prompt, in order, without SOT/EOT: list[str] of length T.

    "a photo of a cat" -> ['a', 'photo', 'of', 'a', 'cat']. Token i is id ``tokenize(text)[0, i + 1]``.
    The end-of-word mark is dropped. CLIP's BPE works on bytes, so a character of several bytes
    (CJK, Hebrew, some emoji) may be split over tokens: each of them shows that character
    ("東京" -> ['東', '京', '京']), so every label is readable and says which character its
    relevance belongs to.
    """
    tokenizer = get_tokenizer()
    pieces = [tokenizer.token_bytes(token) for token in tokenizer.bpe_tokens(_check_prompt(text))]
    try:
        characters = b"".join(pieces).decode("utf-8")  # whole words, so whole characters
    except UnicodeDecodeError:  # not expected of cleaned text; readable anyway
        return [piece.decode("utf-8", errors="replace") for piece in pieces]
    spans, start = [], 0  # (first byte, end byte, character)
    for character in characters:
        end = start + len(character.encode("utf-8"))
        spans.append((start, end, character))
        start = end
    labels, start = [], 0
    for piece in pieces:  # the characters whose bytes overlap this token's
        end = start + len(piece)
        labels.append("".join(c for first, last, c in spans if first < end and last > start))
        start = end
    return labels


def count_tokens(text):
    """How many ids ``tokenize(text)`` needs, SOT and EOT included: it fits iff count_tokens(text) <= 77."""
    return len(encode(text)) + 2
