"""Hostile prompts through clipviz.tokenize and clipviz.explain: each one works (with the ids an
independent rule predicts) or raises ClipvizError whose message says what to do.

Reference ids: the tokenizer's cleaning drops control characters and reads a lone surrogate as
U+FFFD, so a hostile prompt must tokenize exactly like its clean twin, and explain must score it
exactly like the twin. BPE is checked against a plain re-implementation of the reference loop.
"""

import json
import random
import string
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clipviz
from clipviz import tokenizer
from clipviz.errors import ClipvizError
from clipviz.tokenizer import EOT_ID, SOT_ID, clean_text, count_tokens, decode, encode, tokenize
from hostile import tally

CASES, _report = tally("prompts")
PHOTO = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
FIVE = "a photo of a cat"  # 5 ids
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ids_of(prompt):
    row = tokenize(prompt)[0].tolist()
    return row[:row.index(EOT_ID) + 1]


def scores(model, prompt):
    return clipviz.explain(model, PHOTO, [prompt, "a dog"]).scores


# ----------------------------------------------------------------------------- works like a clean twin

TWINS = {  # hostile prompt -> the clean prompt it must equal, id for id and score for score
    "control characters": ("a\x01 photo\x7f of a \x1b[31mcat\x1b[0m", "a photo of a cat"),
    "NUL bytes": ("a\x00 dog\x00", "a dog"),
    "lone high surrogate": ("a \ud800 dog", "a \ufffd dog"),
    "lone low surrogate": ("\udcff dog", "\ufffd dog"),
    "tabs, newlines, ideographic spaces": ("a\tphoto\n\nof\u3000a\u00a0cat  ", "a photo of a cat"),
    "HTML entities": ("fish &amp;amp; chips", "fish & chips"),
    "upper case": ("A PHOTO OF A CAT", "a photo of a cat"),
}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_hostile_prompt_equals_its_clean_twin(name, tiny_vit):
    hostile, clean = TWINS[name]
    with CASES.case():
        assert ids_of(hostile) == ids_of(clean)
        assert np.array_equal(scores(tiny_vit, hostile), scores(tiny_vit, clean))


def test_surrogate_prompt_can_be_drawn_saved_and_serialised(tiny_vit, tmp_path):
    """A lone surrogate (what undecodable argv bytes become) is stored as U+FFFD, so the figure,
    PNG and JSON do not fail on it."""
    with CASES.case():
        explanation = clipviz.explain(tiny_vit, PHOTO, "a \udcff dog")
        assert explanation.prompts == ["a \ufffd dog"]
        explanation.save(tmp_path / "surrogate.png")
        assert (tmp_path / "surrogate.png").stat().st_size > 0
        (tmp_path / "surrogate.json").write_text(json.dumps(explanation.to_dict(), default=str), encoding="utf-8")


# ----------------------------------------------------------------------------- empty after cleaning

EMPTY = {
    "empty": "",
    "spaces": "   ",
    "whitespace of every kind": " \t\n\r\u3000\u00a0\u2003\u2028\u2029",
    "control characters only": "\x01\x02\x03\x7f",
    "terminal escapes only": "\x1b[31m\x1b[0m",
    "NUL only": "\x00",
}


# Characters Unicode marks as rendering as nothing (Cf format characters and other
# Default_Ignorable_Code_Points, Unicode §5.21): ftfy keeps them, and CLIP's BPE gives them tokens
INVISIBLE = {
    "zero-width space": "\u200b",
    "zero-width only (explained as three tokens before)": "\u200b\u200c\u200d",
    "zero-width (non-)joiners and word joiner": "\u200b\u200c\u200d\u2060",
    "soft hyphen": "\u00ad",
    "spaces around an invisible times": " \u2062 ",
    "Hangul filler": "\u3164",
    "combining grapheme joiner and a variation selector": "\u034f\ufe0f",
    "tag characters": "\U000e0041\U000e007f",
}


@pytest.mark.parametrize("name", sorted(EMPTY) + sorted(INVISIBLE))
def test_prompts_with_nothing_visible_are_refused_by_explain_and_classify(name, tiny_vit):
    """Empty after cleaning (the tokenizer gives SOT, EOT), or only invisible characters (which it
    gives real tokens: the model would be asked about a prompt nobody can see): one ClipvizError
    saying what to write, an invisible prompt shown as escapes (it would print as nothing)."""
    prompt = EMPTY.get(name, INVISIBLE.get(name))
    with CASES.case():
        if name in EMPTY:
            assert ids_of(prompt) == [SOT_ID, EOT_ID]  # as openai/CLIP's tokenize("")
        else:
            assert len(ids_of(prompt)) > 2
        for call in (clipviz.explain, clipviz.classify):
            with pytest.raises(ClipvizError, match="prompt is empty") as error:
                call(tiny_vit, PHOTO, ["a dog", prompt])
            assert "a photo of a dog" in str(error.value)  # says what to write instead
            assert name in EMPTY or ascii(prompt.strip())[1:-1] in str(error.value)


def test_invisible_characters_inside_a_visible_prompt_are_kept(tiny_vit):
    with CASES.case():
        exp = clipviz.explain(tiny_vit, PHOTO, ["a\u200bdog", "a dog"])
        assert exp.prompts == ["a\u200bdog", "a dog"] and exp.scores[0] != exp.scores[1]


@pytest.mark.parametrize("prompts, words", [
    (None, "no prompt given"), ([], "no prompt given"), ([3], "must be strings"), (b"dog", "got bytes"),
])
def test_prompts_that_are_not_text(prompts, words, tiny_vit):
    with CASES.case(), pytest.raises(ClipvizError, match=words):
        clipviz.explain(tiny_vit, PHOTO, prompts)


# ----------------------------------------------------------------------------- unusual but real text

UNUSUAL = {
    "right-to-left override": "\u202edog\u202c on a sofa",
    "Hebrew and Arabic": "\u05db\u05dc\u05d1 dog \u0643\u0644\u0628",
    "zero-width inside a word": "d\u200bo\u200bg",
    "bidi isolates": "\u2066dog\u2069",
    "emoji only": "\U0001f436\U0001f431",
    "emoji ZWJ family": "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "flag": "\U0001f3f3\ufe0f\u200d\U0001f308",
    "combining marks": "e\u0301\u0301\u0301 cafe\u0301",
    "special-token text": "<|endoftext|> a dog <|startoftext|>",
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_text_is_tokenized_byte_for_byte_and_explained(name, tiny_vit):
    prompt = UNUSUAL[name]
    with CASES.case():
        ids = ids_of(prompt)
        assert ids[0] == SOT_ID and ids[-1] == EOT_ID and len(ids) == count_tokens(prompt)
        assert EOT_ID not in ids[:-1] and SOT_ID not in ids[1:]  # text cannot end itself early
        # BPE splits only between words: the bytes come back, minus the spaces between words
        assert decode(ids).replace(" ", "") == clean_text(prompt).replace(" ", "")
        explanation = clipviz.explain(tiny_vit, PHOTO, prompt)
        assert np.isfinite(explanation.scores).all() and explanation.maps.shape == (1, 48, 40)


# ----------------------------------------------------------------------------- too long

def random_text(alphabet, length, seed=0):
    generator = random.Random(seed)
    return "".join(generator.choice(alphabet) for _ in range(length))


LONG = {
    "10,000 x 'a'": "a" * 10_000,
    "10,000 random letters (one word)": random_text(string.ascii_lowercase, 10_000),
    "10,000 emoji": random_text([chr(c) for c in range(0x1F300, 0x1F5FF)], 10_000),
    "10,000 CJK characters": random_text([chr(c) for c in range(0x4E00, 0x9FFF)], 10_000),
    "2,500 words": "dog " * 2_500,
}


@pytest.mark.parametrize("name", sorted(LONG))
def test_ten_thousand_characters_are_refused_quickly_with_the_count(name, tiny_vit):
    prompt = LONG[name]
    with CASES.case():
        start = time.perf_counter()
        count = count_tokens(prompt)
        assert time.perf_counter() - start < 2  # the quadratic BPE loop took 11 s here
        for attempt in (lambda: tokenize(prompt), lambda: clipviz.explain(tiny_vit, PHOTO, prompt)):
            with pytest.raises(ClipvizError) as error:
                attempt()
            message = str(error.value)
            assert f"{count} tokens" in message and "77" in message
            assert "Shorten" in message and "truncate=True" in message
            assert len(message) < 300  # the prompt is quoted shortened, not pasted whole
        cut = tokenize(prompt, truncate=True)[0].tolist()
        assert cut == [SOT_ID, *encode(prompt)[:75], EOT_ID]


def exactly(total):
    """A prompt of exactly ``total`` ids, SOT and EOT included (5 per copy of FIVE, + "cat")."""
    copies, extra = divmod(total - 2, 5)
    return " ".join([FIVE] * copies + ["cat"] * extra)


@pytest.mark.parametrize("total", [76, 77, 78, 79])
def test_exactly_77_tokens_fit_and_78_do_not(total, tiny_vit):
    prompt = exactly(total)
    with CASES.case():
        assert count_tokens(prompt) == total
        if total <= 77:
            assert len(ids_of(prompt)) == total
            assert np.isfinite(clipviz.explain(tiny_vit, PHOTO, prompt).scores).all()
        else:
            for attempt in (lambda: tokenize(prompt), lambda: clipviz.explain(tiny_vit, PHOTO, prompt)):
                with pytest.raises(ClipvizError, match=f"is {total} tokens long.*Shorten.*truncate=True"):
                    attempt()


def test_exactly_77_tokens_of_emoji(tiny_vit):
    """Multi-byte characters: find the length at which emoji reach 77 ids, then step over it."""
    dog = "\U0001f436"
    copies = next(n for n in range(1, 200) if count_tokens(dog * n) >= 77)
    with CASES.case():
        assert count_tokens(dog * copies) == 77, "each dog emoji should be whole tokens"
        assert np.isfinite(clipviz.explain(tiny_vit, PHOTO, dog * copies).scores).all()
        with pytest.raises(ClipvizError, match="78 tokens|79 tokens"):
            clipviz.explain(tiny_vit, PHOTO, dog * (copies + 1))


# ----------------------------------------------------------------------------- properties

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=300)  # surrogates and controls too


@settings(max_examples=200, **SETTINGS)
@given(prompt=ANY_TEXT)
def test_any_string_tokenizes_or_is_too_long(prompt):
    with CASES.case():
        count = count_tokens(prompt)
        try:
            row = tokenize(prompt)[0].tolist()
        except ClipvizError as error:
            assert count > 77 and f"{count} tokens" in str(error)
            return
        assert count <= 77 and row[0] == SOT_ID and row[count - 1] == EOT_ID
        assert all(0 <= i < EOT_ID for i in row[1:count - 1]) and not any(row[count:])


@settings(max_examples=12, **SETTINGS)
@given(prompt=ANY_TEXT)
def test_any_string_is_explained_or_refused_clearly(prompt, tiny_vit):
    with CASES.case():
        try:
            explanation = clipviz.explain(tiny_vit, PHOTO, prompt)
        except ClipvizError as error:
            assert "prompt is empty" in str(error) or "tokens long" in str(error), str(error)
            return
        assert np.isfinite(explanation.scores).all()
        assert not any("\ud800" <= c <= "\udfff" for c in explanation.prompts[0])


def reference_bpe(ranks, symbols):
    """The reference loop (openai/CLIP simple_tokenizer): merge every occurrence of the
    lowest-ranked adjacent pair, left to right, until no pair is a merge. Quadratic; fine here."""
    while len(symbols) > 1:
        pairs = list(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


WORDS = st.one_of(
    st.text(st.sampled_from("aeiost"), min_size=1, max_size=60),  # few letters: many repeated pairs
    st.text(st.sampled_from(string.ascii_lowercase), min_size=1, max_size=40),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
)


@settings(max_examples=300, **SETTINGS)
@given(word=WORDS)
def test_fast_bpe_equals_the_reference_loop(word):
    bpe = tokenizer.get_tokenizer()
    symbols = "".join(bpe.byte_to_char[b] for b in word.encode("utf-8"))
    with CASES.case():
        expected = reference_bpe(bpe.ranks, list(symbols[:-1]) + [symbols[-1] + "</w>"])
        bpe.word_cache.pop(symbols, None)
        assert bpe.bpe(symbols) == expected
