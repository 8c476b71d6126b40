"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from recipe.evaluation.metrics import best_subspan_em, normalize_answer, pair_score, parse_verdict, rouge, win_rate


def test_normalisation_drops_case_punctuation_articles_and_extra_space() -> None:
    assert normalize_answer("The  Great Wall, of China!") == "great wall of china"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words


@pytest.mark.parametrize(
    ("prediction", "answers", "score"),
    [
        ("Canberra is the capital.", ["Canberra"], 1.0),
        ("It is the Challenger Deep.", ["the Challenger Deep", "Challenger Deep"], 1.0),
        ("michael collins orbited", ["Michael Collins"], 1.0),
        ("Sydney\nCanberra", ["Canberra"], 0.0),  # only the first line counts
        ("  \nCanberra", ["Canberra"], 0.0),  # the reference cuts at the first newline, then strips
        ("Canberra  \n", ["canberra"], 1.0),
        ("anything at all", ["The"], 1.0),  # a gold answer normalising to "" is in every prediction (reference)
        ("", ["!!!"], 1.0),
        ("In 1889.", ["1889"], 1.0),
        ("eighteen eighty-nine", ["1889"], 0.0),
        ("The A.D. era", ["ad"], 1.0),
    ],
)
def test_best_subspan_em(prediction: str, answers: list[str], score: float) -> None:
    assert best_subspan_em(prediction, answers) == score


def test_rouge_equals_rouge_score_on_the_same_pairs() -> None:
    from rouge_score import rouge_scorer

    predictions = ["the cat sat on the mat", "a summary of the chapter", "nothing alike"]
    references = ["the cat is on the mat", "the chapter is summarised here", "completely different words"]
    ours = rouge(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r, p)[key].fmeasure for p, r in zip(predictions, references, strict=True)) / 3
        assert ours[key] == pytest.approx(expected)
    assert rouge(["x y z"], ["x y z"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("[[A]]", "A"),
        ("After comparing both, my final verdict is [[B]].", "B"),
        ("Output (a)", "A"),
        ("Output (b) is more helpful.", "B"),
        ("**Answer: B**", "B"),
        ("Reasoning... A is short. B is long.\nWinner: A", "A"),
        ("Response B is better because it is complete.", "B"),
        ("B", "B"),
        ("It's a tie.", "tie"),
        ("[[tie]]", "tie"),
        ("I cannot decide between these.", None),
        # AlpacaEval reads the first verdict; the explanation after it may name the other output.
        ("Output (a) is better than Output (b)", "A"),
        ("Output (b) is better than Output (a).", "B"),
        ("I prefer Output (a) over Output (b).", "A"),
        ("Output (a)\n\nHere the answer is Output (a) because it is right. Output (b) is a joke.", "A"),
        ("### Preferred output: (b)\nBecause Output (a) rambles.", "B"),
        ("The first one, Output (b), is clearly superior.", "B"),
        ("- Output (b)\n\nOutput (a) misses the point.", "B"),
        # A verdict line comparing both outputs reads the way it compares, or not at all.
        ("Output (a) is less accurate than Output (b)", "B"),
        ("Output (b) is worse than Output (a).", "A"),
        ("Response A loses to Response B on accuracy.", "B"),
        ("Output (a) is wrong; Output (b) is right", None),
        ("Output (a) is not better than Output (b)", None),
        ("Output (a) is more concise but less accurate than Output (b).", None),
        # A verdict stated first, or after a hedge, with its reasons after it (the reasons may name the other).
        ("Output (a). It is concise and correct, while Output (b) rambles.", "A"),
        ("I think Output (a) is slightly better, because Output (b) misses the point.", "A"),
        ("Overall, Response B is better; Response A is too short.", "B"),
        ("In my opinion, Output (b).", "B"),
        # ... and never the opposite of what it says.
        ("Output (a) is worse.", None),
        ("I think Output (a) is not as good, because Output (b) is complete.", None),
        ("I think Output (b) is less helpful than Output (a).", "A"),
        # Two readings: unreadable, not a guess.
        ("Both Output (a) and Output (b) are fine.", None),
        ("Output (a) says X while Output (b) says Y; hard to call.", None),
        ("I prefer Output (a); others would prefer Output (b).", None),
        ("[[A]] ... on reflection [[B]]", None),
        ("Answer a question first.", None),
    ],
)
def test_judge_parsing_survives_messy_output(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_both_orders_cancel_position_bias_and_the_standard_error() -> None:
    assert pair_score("A", "B") == 1.0  # tuned wins whichever side it is shown on
    assert pair_score("A", "A") == 0.5  # the judge always picks the first: no information
    assert pair_score(None, "A") == 0.0 and pair_score(None, None) is None
    rate, stderr, n = win_rate([1.0, 0.5, 0.0, 1.0, None])
    assert (rate, n) == (0.625, 4)
    assert stderr == pytest.approx(math.sqrt(((0.375**2 * 2) + 0.125**2 + 0.625**2) / 3) / 2)


def test_the_alpaca_eval_protocol_reads_its_annotator_from_the_package() -> None:
    from recipe.evaluation import alpaca_eval

    annotator = alpaca_eval.annotator()
    assert annotator["name"].startswith("AlpacaEval chatgpt annotator (alpaca-eval ") and annotator["max_tokens"] == 50
    turns = alpaca_eval.messages("Name a colour.", "Blue.", "Seven.")
    assert [t["role"] for t in turns] == ["system", "user"]
    assert (
        "Blue." in turns[1]["content"] and "Seven." in turns[1]["content"] and "{output_1}" not in turns[1]["content"]
    )
    assert turns[1]["content"].index("Blue.") < turns[1]["content"].index("Seven.")  # output_1 is Output (a)
    # Its parser: the first line-initial "Output (x)"; anything else is dropped, not guessed.
    assert alpaca_eval.preference("Output (b)") == 2
    # ... and reads on after it: a second verdict makes two annotations for a batch of one: dropped.
    assert alpaca_eval.preference("Output (a)\n\nOutput (b) is a joke.") is None
    assert alpaca_eval.preference("Output (a)\nOutput (a) is better because it is right.") is None
    assert alpaca_eval.preference("Output (a) is better than Output (b)") == 1
    assert alpaca_eval.preference("Reasoning first.\n Output (b)") == 2
    assert alpaca_eval.preference("I prefer Output (a).") is None


def test_the_alpaca_eval_protocol_orders_ties_and_rates_as_alpaca_eval_does() -> None:
    from recipe.evaluation import alpaca_eval

    orders = [alpaca_eval.model_shown_first(0, f"instruction {i}") for i in range(200)]
    assert 70 < sum(orders) < 130  # about half each way
    assert orders == [alpaca_eval.model_shown_first(0, f"instruction {i}") for i in range(200)]  # reproducible
    assert orders != [alpaca_eval.model_shown_first(1, f"instruction {i}") for i in range(200)]  # seeded
    assert alpaca_eval.score("same", "same", None, True) == 0.5  # identical: a tie, never asked
    assert alpaca_eval.score("mine", "ref", "Output (a)", True) == 1.0
    assert alpaca_eval.score("mine", "ref", "Output (a)", False) == 0.0
    assert alpaca_eval.score("mine", "ref", "no idea", True) is None  # dropped
    rate, stderr, n = alpaca_eval.win_rate_percent([1.0, 0.0, 0.5, None, 1.0])
    assert (rate, n) == (62.5, 4) and stderr == pytest.approx(
        100 * math.sqrt(((0.375**2) * 2 + 0.625**2 + 0.125**2) / 3) / 2
    )
