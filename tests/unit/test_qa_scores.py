"""The held-out QA scores: SQuAD-style exact match and token F1, and contains-the-answer."""

import pytest

from datacreek_assets.finetune.qa import QaScores, contains_answer, exact_match, normalize, token_f1


def test_answers_compare_without_case_punctuation_articles_or_spacing():
    assert normalize("The  JSON-module, a parser.") == ["jsonmodule", "parser"]
    assert exact_match("the Counter.", "Counter") == 1.0 and exact_match("Counters", "Counter") == 0.0
    assert token_f1("year, month, day", "year, month and day") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("", "Counter") == 0.0 and token_f1("dict", "Counter") == 0.0


def test_contains_finds_the_reference_s_words_together_and_in_order():
    assert contains_answer("It returns False.", "False") == 1.0
    assert contains_answer("year, month and day", "month and day") == 1.0
    assert contains_answer("day and month", "month and day") == 0.0
    assert contains_answer("FalseTrue", "False") == 0.0  # whole words only


def test_an_answer_of_symbols_is_compared_as_written():
    # SQuAD's normalisation would empty both sides, and "','" would match "(',', ':')"
    assert exact_match("','", "(',', ':')") == 0.0 and token_f1("','", "(',', ':')") == 0.0
    assert exact_match("(',',  ':')", "(',', ':')") == 1.0 and token_f1("(',', ':')", "(',', ':')") == 1.0
    assert exact_match("'/'", "'/'") == 1.0 and exact_match("", "'/'") == 0.0
    assert contains_answer("nargs='+'", "'+'") == 1.0 and contains_answer("'*'", "'+'") == 0.0
    assert exact_match("A", "a") == 1.0 and exact_match("the", "The") == 1.0  # words, even articles alone


def test_scores_average_over_the_questions_and_refuse_unequal_lists():
    scores = QaScores.of(["dumps", "It is '/'.", "N"], ["dumps", "'/'", "'+'"])
    assert (scores.questions, scores.exact_match, scores.contains) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert QaScores.of([], []).questions == 0
    with pytest.raises(ValueError, match="differ in length"):
        QaScores.of(["a"], [])
