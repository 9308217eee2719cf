"""Tokenizer tests. Expected ids were produced by an independent implementation (open_clip 3.3.0's
SimpleTokenizer, its tokenizer.py loaded by file path) and pasted here as literals; a few are also
derived by hand from the vocabulary file itself."""

import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from clipviz import tokenizer
from clipviz.errors import ClipvizError
from clipviz.tokenizer import count_tokens, decode, encode, token_strings, tokenize

VOCAB = Path(__file__).resolve().parents[1] / "clipviz" / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = 49406, 49407
CAT_PROMPT = "a photo of a cat"
CAT_IDS = [320, 1125, 539, 320, 2368]


@pytest.fixture(scope="module", autouse=True)
def vocab_env():
    """Every test reads the bundled vocabulary through CLIPVIZ_VOCAB; the cached tokenizer is rebuilt around the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPVIZ_VOCAB", str(VOCAB))
        tokenizer.get_tokenizer.cache_clear()
        yield
    tokenizer.get_tokenizer.cache_clear()


def offline_download(url, destination, sha256, progress=True):
    raise ClipvizError("network unreachable (test)")


def copying_download(calls):
    """A stand-in for clipviz.hub.download that 'fetches' the shared vocabulary and logs its arguments."""
    def download(url, destination, sha256, progress=True):
        calls.append((url, Path(destination), sha256))
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(VOCAB, destination)
        return Path(destination)
    return download


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No env var, no bundled copy, an empty cache dir in tmp_path, no package copies, no network: tests set up each lookup step."""
    monkeypatch.delenv("CLIPVIZ_VOCAB", raising=False)
    monkeypatch.setattr(tokenizer, "BUNDLED_VOCAB", tmp_path / "not-installed" / tokenizer.VOCAB_NAME)
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tokenizer, "package_vocab_paths", lambda: iter(()))
    monkeypatch.setattr(tokenizer, "download", offline_download)
    tokenizer.get_tokenizer.cache_clear()
    yield tmp_path / "cache" / tokenizer.VOCAB_NAME
    tokenizer.get_tokenizer.cache_clear()


# prompt -> BPE ids without SOT/EOT, from open_clip's SimpleTokenizer
REFERENCE = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "A Photo Of A CAT": [320, 1125, 539, 320, 2368],
    "woman dribbling a basketball": [2308, 1203, 65, 7097, 320, 3835],
    "café crème brûlée": [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489],
    "naïve façade": [1097, 35689, 563, 778, 10067, 1928],
    "Ångström über Straße": [23176, 10352, 807, 7255, 332, 6522, 1516, 1894, 127, 253, 324],
    "😀": [7334],
    "dog 🐶🐕 party 🎉": [1929, 14466, 41069, 1580, 3986],
    "👩\u200d👩\u200d👧 family": [26304, 26304, 964, 356, 1315],
    "Tom &amp; Jerry": [2435, 261, 9164],
    "&lt;b&gt;bold&lt;/b&gt;": [283, 321, 285, 8911, 34308, 321, 285],
    "&amp;amp; double escaped": [261, 3200, 18707],
    "&#233;t&eacute;": [3459, 39694],
    "&amp;amp;amp; triple": [261, 7673],  # ftfy unescapes once, then html.unescape twice
    "<b>tom &amp;amp; jerry</b>": [283, 321, 285, 2435, 261, 9164, 34308, 321, 285],  # ftfy leaves real HTML alone
    "  lots   of\t\twhitespace \n\n here  ": [2958, 539, 4699, 2138, 763],
    "hello, world! (yes?) ... --- ;:": [3306, 267, 1002, 256, 263, 1958, 9626, 678, 11079, 26, 281],
    "it's a dog's life, we're here, they've gone, I'm ok, we'll see, he'd go": [
        585, 568, 320, 1929, 568, 970, 267, 649, 982, 763, 267, 889, 1200, 3601, 267, 328, 880, 2481, 267, 649,
        1342, 862, 267, 797, 1896, 861],
    "2024 was 12.5% better than 1999": [273, 271, 273, 275, 739, 272, 273, 269, 276, 260, 1539, 1126, 272, 280, 280, 280],
    "3.14159": [274, 269, 272, 275, 272, 276, 280],
    "東京タワーの写真": [48338, 21078, 105, 34941, 2429, 107, 13457, 21575, 44653, 33440, 509],
    "한국어 텍스트": [15197, 250, 31871, 255, 31625, 368, 169, 227, 235, 20305, 39820],
    "一只猫的照片": [19759, 222, 34517, 103, 163, 234, 104, 163, 248, 226, 163, 227, 100, 163, 231, 485],
    "Привет мир": [26302, 16370, 29503, 110, 22176, 141, 480, 38018, 16701, 141, 478],
    "مرحبا بالعالم": [12986, 10948, 25722, 16378, 22625, 16378, 12973, 18843, 12973, 29945],
    "Ã©tÃ© mojibake": [3459, 39694, 617, 3252, 11878],
    "“smart quotes” and ‘single’": [257, 4115, 5808, 257, 537, 568, 17005, 262],
    "a\x00b\x07c": [5334],
    "a\ud800b\udfffc": [320, 39802, 321, 39802, 322],
    "": [],
    " \t\n ": [],
    "<|endoftext|> injected": [27, 347, 40786, 4160, 91, 285, 13688, 775],
    "x-ray of a lung_tissue sample #42 @home": [343, 268, 3077, 539, 320, 16271, 318, 15368, 9542, 258, 275, 273, 287, 1137],
    "ALL CAPS SHOUTING!!!": [615, 23185, 26464, 995],
    "antidisestablishmentarianism": [3120, 4262, 7726, 12658, 1585, 44351],
    "e\u0301clair": [3459, 14039],
    "\ufb01sh and chips": [2759, 537, 8855],
    "a\u200bb zero\u00a0width": [320, 9844, 321, 5848, 23571],
}


@pytest.mark.parametrize("prompt", REFERENCE)
def test_ids_match_reference(prompt):
    expected = [SOT, *REFERENCE[prompt], EOT]
    row = tokenize(prompt)[0]
    assert row.tolist() == expected + [0] * (77 - len(expected))
    assert encode(prompt) == REFERENCE[prompt]
    assert count_tokens(prompt) == len(expected)


def test_known_cat_and_shape():
    ids = tokenize(CAT_PROMPT)
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()


def test_ids_by_hand_from_the_vocab_file():
    """Id = 512 + merge rank (the line number after the header): 'c at</w>' and 'pho to</w>'."""
    lines = gzip.open(VOCAB).read().decode("utf-8").split("\n")
    assert 512 + lines.index("c at</w>") - 1 == 2368
    assert 512 + lines.index("pho to</w>") - 1 == 1125
    # single bytes: '!'..'~' come first, so 'a' is 0x61 - 0x21 = 64 and 'a</w>' is 256 + 64
    assert encode("a") == [320]
    # the GPT-2 byte map: space -> 'Ġ' (U+0120), newline -> 'Ċ' (U+010A)
    table = tokenizer.byte_to_char()
    assert table[0x20] == "\u0120" and table[0x0A] == "\u010a" and len(set(table.values())) == 256


def test_lone_surrogates_and_controls_do_not_crash():
    assert encode("a\ud800b") == encode("a\ufffdb") == [320, 39802, 321]  # ftfy: lone surrogate -> U+FFFD
    assert token_strings("\udc00") == ["\ufffd"]
    assert encode("a\x00\x1b[31mb") == encode("ab") == [3937]  # NUL and the terminal escape are dropped


def test_clean_text_squashes_whitespace_and_lowercases():
    assert tokenizer.clean_text("  Tom\t\t&amp;amp;\u3000JERRY \n") == "tom & jerry"


def test_exactly_77_fits_78_raises_or_truncates():
    fits = CAT_PROMPT + " " + " ".join([CAT_PROMPT] * 14)  # 15 x 5 ids + SOT + EOT = 77
    ids = tokenize(fits)[0]
    assert count_tokens(fits) == 77
    assert ids.tolist() == [SOT, *CAT_IDS * 15, EOT]
    too_long = fits + " dog"
    assert count_tokens(too_long) == 78
    with pytest.raises(ClipvizError, match="78 tokens"):
        tokenize(too_long)
    cut = tokenize(too_long, truncate=True)[0]
    assert cut.tolist() == [SOT, *CAT_IDS * 15][:76] + [EOT]


def test_too_long_message_names_prompt_count_and_fixes():
    long_prompt = "a very long prompt about " + "many cats " * 100
    with pytest.raises(ClipvizError) as info:
        tokenize(["short", long_prompt])
    message = str(info.value)
    assert "Prompt 1 " in message and "'a very long prompt about many cats" in message and "..." in message
    assert len(message) < 300  # the prompt is shortened, not pasted whole
    assert f"{count_tokens(long_prompt)} tokens" in message and "207 tokens" in message  # 5 + 2 x 100 + SOT + EOT
    assert "Shorten" in message and "truncate=True" in message
    ids = tokenize(["short", long_prompt], truncate=True)
    assert ids.shape == (2, 77) and ids[1, -1] == EOT and ids[1, 0] == SOT and ids[1].ne(0).all()


def test_batch_rows_equal_single_prompts():
    prompts = ["woman dribbling a basketball", CAT_PROMPT, ""]
    ids = tokenize(prompts)
    assert ids.shape == (3, 77)
    for row, prompt in zip(ids, prompts):
        assert torch.equal(row, tokenize(prompt)[0])
    assert torch.equal(tokenize(tuple(prompts)), ids)
    assert tokenize("x", context_length=5).shape == (1, 5)


@pytest.mark.parametrize("bad, words", [
    ([], "non-empty list"),
    ([CAT_PROMPT, 3], "must be a string, got int"),
    ([None], "must be a string, got NoneType"),
    (b"a cat", "string or a non-empty list"),
    (42, "string or a non-empty list"),
])
def test_bad_input_raises(bad, words):
    with pytest.raises(ClipvizError, match=words):
        tokenize(bad)


def test_bad_context_length_and_ids_raise():
    with pytest.raises(ClipvizError, match="at least 2"):
        tokenize("a", context_length=1)
    with pytest.raises(ClipvizError, match="outside CLIP's vocabulary"):
        decode([320, 49408])
    with pytest.raises(ClipvizError, match="must be a string"):
        token_strings(None)


def test_decode_round_trip():
    assert decode(tokenize(CAT_PROMPT)[0]) == CAT_PROMPT
    assert decode(tokenize(["Tom &amp; Jerry, hello!", "東京 😀"])) == ["tom & jerry , hello !", "東京 😀"]
    assert decode([320, 2368]) == "a cat"  # no SOT/EOT: all ids are text
    assert decode([0]) == "!"  # id 0 is '!', only zeros after EOT are padding


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(categories=["Ll", "Lu", "Lo", "Nd"]), min_size=1, max_size=8), max_size=6))
def test_decode_inverts_encode_for_words(words):
    text = " ".join(words)
    assert decode(encode(text)).split() == tokenizer.WORD_PATTERN.findall(tokenizer.clean_text(text))


def test_token_strings():
    assert token_strings(CAT_PROMPT) == ["a", "photo", "of", "a", "cat"]
    assert token_strings("Woman dribbling!") == ["woman", "dri", "b", "bling", "!"]
    # 京 is split over two byte-level tokens: both show it; whole characters and emoji read normally
    assert token_strings("東京 😀") == ["東", "京", "京", "😀"]
    # every label is text of the prompt, and the labels in order spell each word (a split
    # character once per token it spans)
    for prompt in ("שלום עולם", "猫と犬", "naïve café", "👍🏽 ok"):
        labels = token_strings(prompt)
        assert labels and all(labels) and "\ufffd" not in "".join(labels)
        assert set("".join(labels)) <= set(prompt)
    assert token_strings("") == []
    for prompt in REFERENCE:
        assert len(token_strings(prompt)) == count_tokens(prompt) - 2


def test_tokenizer_is_built_once_and_lazily(monkeypatch):
    first = tokenizer.get_tokenizer()
    assert tokenizer.get_tokenizer() is first
    monkeypatch.setenv("CLIPVIZ_VOCAB", "/nonexistent/vocab.txt.gz")
    assert tokenizer.get_tokenizer() is first  # cached: the env var is not read again
    tokenizer.get_tokenizer.cache_clear()
    try:
        with pytest.raises(ClipvizError, match="CLIPVIZ_VOCAB is set to /nonexistent/vocab.txt.gz, but no such file"):
            tokenize("a")
    finally:
        tokenizer.get_tokenizer.cache_clear()


def test_env_var_wins_over_a_corrupt_cache(fresh, monkeypatch):
    fresh.parent.mkdir(parents=True)
    fresh.write_bytes(b"corrupt")
    monkeypatch.setenv("CLIPVIZ_VOCAB", str(VOCAB))
    assert tokenizer.read_vocab()[0] == VOCAB
    assert encode(CAT_PROMPT) == CAT_IDS


def test_cache_dir_copy_is_used_and_checked(fresh, monkeypatch):
    fresh.parent.mkdir(parents=True)
    shutil.copy(VOCAB, fresh)
    assert tokenizer.read_vocab()[0] == fresh
    assert encode(CAT_PROMPT) == CAT_IDS
    fresh.write_bytes(fresh.read_bytes()[:-10])  # damaged: offline, this is an error that says what to do
    with pytest.raises(ClipvizError) as info:
        tokenizer.read_vocab()
    message = str(info.value)
    assert "network unreachable (test)" in message and tokenizer.VOCAB_URL in message and str(fresh) in message
    calls = []
    monkeypatch.setattr(tokenizer, "download", copying_download(calls))  # online, it is fetched again
    assert tokenizer.read_vocab()[0] == fresh
    assert calls == [(tokenizer.VOCAB_URL, fresh, tokenizer.VOCAB_SHA256)]
    assert hashlib.sha256(fresh.read_bytes()).hexdigest() == tokenizer.VOCAB_SHA256


def test_bundled_copy_needs_no_network_and_is_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIPVIZ_VOCAB", raising=False)
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tokenizer, "package_vocab_paths", lambda: iter(()))
    monkeypatch.setattr(tokenizer, "download", offline_download)
    assert tokenizer.BUNDLED_VOCAB.is_file() and (tokenizer.BUNDLED_VOCAB.parent / "LICENSE").is_file()
    assert "MIT License" in (tokenizer.BUNDLED_VOCAB.parent / "LICENSE").read_text()
    assert tokenizer.read_vocab()[0] == tokenizer.BUNDLED_VOCAB
    damaged = tmp_path / "site" / tokenizer.VOCAB_NAME
    damaged.parent.mkdir()
    damaged.write_bytes(VOCAB.read_bytes()[:-10])
    monkeypatch.setattr(tokenizer, "BUNDLED_VOCAB", damaged)  # a damaged bundled copy is passed over, not used
    with pytest.raises(ClipvizError, match="Could not get CLIP's BPE vocabulary"):
        tokenizer.read_vocab()


def test_package_copy_is_found_without_import(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIPVIZ_VOCAB", raising=False)
    monkeypatch.setattr(tokenizer, "BUNDLED_VOCAB", tmp_path / "not-installed" / tokenizer.VOCAB_NAME)
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tokenizer, "download", offline_download)
    package = tmp_path / "site" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('importing open_clip pulls torchvision')\n")
    shutil.copy(VOCAB, package / tokenizer.VOCAB_NAME)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert tokenizer.read_vocab()[0] == package / tokenizer.VOCAB_NAME
    (package / tokenizer.VOCAB_NAME).write_bytes(b"corrupt")  # a copy with the wrong sha256 is passed over
    with pytest.raises(ClipvizError, match="Could not get CLIP's BPE vocabulary"):
        tokenizer.read_vocab()


def test_download_is_the_last_resort(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(tokenizer, "download", copying_download(calls))
    assert encode(CAT_PROMPT) == CAT_IDS
    assert calls == [(tokenizer.VOCAB_URL, fresh, tokenizer.VOCAB_SHA256)]
    assert encode("a dog") == [320, 1929] and len(calls) == 1  # built once, cached


def test_nothing_works_says_where_to_put_the_file(fresh, monkeypatch):
    with pytest.raises(ClipvizError) as info:
        encode("a")
    message = str(info.value)
    assert tokenizer.VOCAB_URL in message and str(fresh) in message and "by hand" in message
    assert "network unreachable (test)" in message and "CLIPVIZ_VOCAB" in message

    def download_with_advice(url, destination, sha256, progress=True):
        raise ClipvizError(f"could not download {url}; save it yourself as {destination}")

    monkeypatch.setattr(tokenizer, "download", download_with_advice)
    message = str(pytest.raises(ClipvizError, encode, "a").value)
    assert message.count(str(fresh)) == 1 and "CLIPVIZ_VOCAB" in message  # the hub's advice is not repeated


def test_not_a_vocab_file_raises(monkeypatch, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("not gzip")
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    for path, words in [(plain, "not a gzipped CLIP vocabulary"), (short, "not CLIP's BPE vocabulary")]:
        monkeypatch.setenv("CLIPVIZ_VOCAB", str(path))
        tokenizer.get_tokenizer.cache_clear()
        with pytest.raises(ClipvizError, match=words):
            encode("a")
    tokenizer.get_tokenizer.cache_clear()


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Path(tokenizer.cache_dir()) == tmp_path / "mine"
    monkeypatch.delenv("CLIPVIZ_CACHE")
    assert Path(tokenizer.cache_dir()) == tmp_path / "xdg" / "clipviz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Path(tokenizer.cache_dir()) == tmp_path / "home" / ".cache" / "clipviz"
