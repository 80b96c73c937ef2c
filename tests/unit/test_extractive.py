"""Extractive decoding: answers held to spans of their passages, on a toy vocabulary and in llama.cpp."""

import numpy as np
import pytest

from datacreek_assets.retrieval.extractive import SpanConstraint, _normal, is_span
from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS

VOCAB = ["<end>", " False", " True", "False", "sort", "_keys", " is", " Not", " in", " the", " documents", ".",
         " dump", "s", " JSON", " Nobody", "  ", " '", "/'", "("]
END = 0
PASSAGES = ["If sort_keys is true (default: False), the output of dictionaries will be sorted by key.",
            "Serialize obj to a JSON formatted str using this conversion table."]


def constraint(top: int = 2) -> SpanConstraint:
    """``top``: the candidates looked at per step (the real vocabulary's 64 of 49,152)."""
    refusal = [VOCAB.index(t) for t in (" Not", " in", " the", " documents", ".")]
    return SpanConstraint(PASSAGES, lambda t: VOCAB[t].encode(), [END], refusal, top=top)


def logits(order: list[str]) -> np.ndarray:
    """Logits that rank ``order`` first, then the rest of the vocabulary."""
    out = np.full(len(VOCAB), -10.0, dtype=np.float32)
    for rank, token in enumerate(order):
        out[VOCAB.index(token)] = 10.0 - rank
    return out


def decode(c: SpanConstraint, steps: list[list[str]]) -> str:
    generated: list[int] = []
    for order in steps:
        token = c.pick(logits(order), generated)
        if token == END:
            break
        generated.append(token)
    return "".join(VOCAB[t] for t in generated)


def test_the_most_likely_token_that_keeps_a_span_of_the_passages_wins():
    # " Nobody" is likeliest but in no passage; "False" (case aside) is
    assert decode(constraint(), [[" Nobody", " False"], ["<end>"]]) == " False"
    # a span grows token by token: "sort" then "_keys", and a token that breaks it is passed over
    assert decode(constraint(), [["sort"], [" dump", "_keys"], ["<end>"]]) == "sort_keys"


def test_the_turn_ends_only_after_a_word_and_a_span_never_joins_two_passages():
    c = constraint(top=3)
    assert c.pick(logits(["<end>", "  ", " JSON"]), []) == VOCAB.index(" JSON")  # no end, no blanks before a word
    # "key. Serialize" would join the passages: the first passage ends at "key."
    assert not c.fits(b"by key. Serialize")
    assert c.fits(b"  dictionaries   WILL be") and c.fits(b"JSON formatted")


def test_with_no_span_in_the_top_tokens_the_model_says_not_in_the_documents():
    assert decode(constraint(top=1), [[" Nobody"]] * 8) == " Not in the documents."
    # once an answer has begun, a dead end ends it instead
    assert decode(constraint(top=1), [[" JSON"], [" Nobody"]]) == " JSON"
    # a beginning of the refusal is no answer: it does not end there, and a dead end finishes it
    assert decode(constraint(top=2), [[" Not", " Nobody"], ["<end>", " in"], ["<end>", " Nobody"]] + [[" Nobody"]] * 4) \
        == " Not in the documents."
    # the refusal, once said whole, ends the turn
    c = constraint()
    refusal = [VOCAB.index(t) for t in (" Not", " in", " the", " documents", ".")]
    assert c.pick(logits([" JSON"]), refusal) == END
    assert _normal(NOT_IN_DOCUMENTS.encode()) == b"not in the documents."


def test_an_answer_of_symbols_ends_as_a_span_and_is_never_joined_to_the_refusal():
    passages = ["quote(string, safe='/') replaces special characters.", *PASSAGES]
    refusal = [VOCAB.index(t) for t in (" Not", " in", " the", " documents", ".")]

    def symbols(top: int) -> SpanConstraint:
        return SpanConstraint(passages, lambda t: VOCAB[t].encode(), [END], refusal, top=top)

    # two visible characters make an answer: the turn may end there
    assert decode(symbols(top=1), [[" '"], ["/'"], ["<end>"]]) == " '/'"
    # a dead end after symbols ends the answer; the refusal is not appended ("'/'Not in the documents.")
    assert decode(symbols(top=1), [[" '"], ["/'"]] + [[" Nobody"]] * 6) == " '/'"
    assert decode(symbols(top=1), [["("]] + [[" Nobody"]] * 6) == "("
    # one symbol is not an answer yet: no end there
    assert symbols(top=2).pick(logits(["<end>", "/'"]), [VOCAB.index(" '")]) == VOCAB.index("/'")


def test_the_passages_are_read_as_the_prompt_holds_them():
    """Blank lines and runs of spaces collapse before the cut at MAX_PASSAGE_CHARS, as in the
    prompt: an answer near the end of a spaced-out passage is still a span."""
    from datacreek_assets.retrieval.prompt import MAX_PASSAGE_CHARS

    passage = "\n\n".join(["word      " * 20] * 6) + " ends with sentinel_value."
    assert len(passage) > MAX_PASSAGE_CHARS > len(" ".join(passage.split()))
    c = SpanConstraint([passage], lambda t: VOCAB[t].encode(), [END], [])
    assert c.fits(b"sentinel_value") and is_span("sentinel_value", [passage])


def test_a_span_has_a_word_and_comes_from_one_passage():
    assert is_span(" FALSE ", PASSAGES) and is_span("sort_keys is  true", PASSAGES) and is_span("Not in the", PASSAGES)
    assert not is_span(".", PASSAGES) and not is_span("", PASSAGES) and not is_span(" ( ", PASSAGES)
    assert is_span("(default:", PASSAGES) and not is_span("(default: True)", PASSAGES)
    assert not is_span("sorted by key. Serialize", PASSAGES) and not is_span("Nobody", PASSAGES)


@pytest.fixture(scope="module")
def smollm2():
    from datacreek_assets.finetune.base_model import smollm2_gguf
    from datacreek_assets.finetune.llama_cpp import open_llama

    with open_llama(smollm2_gguf(), n_ctx=2048) as llm:  # as evaluate opens its models
        yield llm


QUESTIONS = [("What does sort_keys default to?", PASSAGES),
             ("Which function serializes obj to a JSON formatted str?", PASSAGES),
             ("Who wrote the sqlite3 module?", PASSAGES)]


def test_smollm2_answers_are_spans_of_their_passages_in_evaluation_and_as_served(smollm2):
    """The base model, which answers in sentences when free: held to the passages, every answer is
    one of their spans or the refusal, by the evaluation's greedy loop and by llama.cpp's own
    sampler with the serving processor."""
    from datacreek_assets.finetune.llama_cpp import llama_greedy
    from datacreek_assets.retrieval.extractive import for_llama, logits_processor
    from datacreek_assets.retrieval.prompt import messages_for

    free, held, served = [], [], []
    for question, passages in QUESTIONS:
        messages = messages_for(question, passages)
        prompt = smollm2.tokenize(_chatml(messages).encode(), add_bos=False, special=True)
        ends = for_llama(smollm2, passages).end_ids
        free.append(smollm2.detokenize(llama_greedy(smollm2, prompt, 24, ends)).decode("utf-8", "ignore"))
        tokens = llama_greedy(smollm2, prompt, 24, ends, for_llama(smollm2, passages).pick)
        held.append(smollm2.detokenize(tokens).decode("utf-8", "ignore"))
        smollm2.reset()
        reply = smollm2.create_chat_completion(messages=messages, max_tokens=24, temperature=0.0, seed=0,
                                               logits_processor=[logits_processor(smollm2, passages)])
        served.append(reply["choices"][0]["message"]["content"])
    print("free:", free, "held:", held, "served:", served)
    assert all(is_span(a, p) for a, (_, p) in zip(held + served, QUESTIONS + QUESTIONS)), (held, served)
    assert not all(is_span(a, p) for a, (_, p) in zip(free, QUESTIONS)), free  # the test can tell


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
