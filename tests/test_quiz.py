"""Quiz banks are valid, every lesson's has five questions, answer length gives nothing away, and
both front ends work."""


import pytest
import yaml

from sdcourse.quiz import BANK_DIR, LETTERS, Quiz, bank_path, show_quiz, validate_bank

BANKS = sorted(BANK_DIR.glob("*.yaml"))


def test_there_are_banks():
    assert BANKS


@pytest.mark.parametrize("path", BANKS, ids=lambda p: p.stem)
def test_bank_is_valid_with_five_questions(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert validate_bank(data, path.name) == []
    if path.stem == "module_test":
        assert len(data["questions"]) == 20 and data["pass_percent"] == 80
    else:
        assert len(data["questions"]) == 5 and "pass_percent" not in data


def test_the_module_test_passes_at_80_percent():
    quiz = Quiz.from_lesson("module")
    assert quiz.pass_mark == 16 and "16 right to pass" in quiz.score_line()
    for number, question in enumerate(quiz.questions, start=1):
        wrong = next(letter for letter in "abcd" if letter not in question.answer)
        quiz.feedback(number, wrong if number <= 4 else "".join(question.answer))
    assert quiz.score_line().endswith("passed") and "16/20" in quiz.score_line()
    quiz = Quiz.from_lesson("module")
    for number, question in enumerate(quiz.questions, start=1):
        quiz.feedback(number, "".join(question.answer) if number > 5 else next(
            letter for letter in "abcd" if letter not in question.answer))
    assert "15/20" in quiz.score_line() and "not passed yet" in quiz.score_line()


# ---- answer length gives nothing away ------------------------------------------------------
# A learner who always picks the longest (or the shortest) choice should learn nothing from
# doing so. A tie counts against the bank: if the correct choice is among the longest, the
# longest choice is taken to be the correct one.
MOST_OFTEN_LONGEST = 0.35  # the largest share of questions whose correct choice may be the longest


def pick_by_length(question, longest=True) -> str:
    """The letter a learner picks who always takes the longest (or the shortest) choice; among
    tied choices, the correct one if there is one."""
    lengths = [len(choice.text) for choice in question.choices]
    target = max(lengths) if longest else min(lengths)
    tied = [letter for letter, n in zip(LETTERS, lengths) if n == target]
    return next((letter for letter in tied if letter in question.answer), tied[0])


def share_answered_by_length(paths, longest=True) -> float:
    questions = [q for path in paths for q in Quiz.from_file(path).questions]
    return sum({pick_by_length(q, longest)} == q.answer for q in questions) / len(questions)


@pytest.mark.parametrize("longest", [True, False], ids=["longest", "shortest"])
def test_the_correct_choice_is_seldom_the_longest_or_the_shortest(longest):
    share = share_answered_by_length(BANKS, longest)
    assert share <= MOST_OFTEN_LONGEST, (
        f"over all {len(BANKS)} banks, the {'longest' if longest else 'shortest'} choice is the correct one in "
        f"{share:.0%} of the questions; at most {MOST_OFTEN_LONGEST:.0%} allowed: make the distractors as long and "
        "as specific as the answer, or the answer as short as they are")


def test_always_picking_the_longest_choice_fails_the_module_test():
    quiz = Quiz.from_lesson("module")
    for number, question in enumerate(quiz.questions, start=1):
        quiz.feedback(number, pick_by_length(question))
    right = sum(quiz.results.values())
    assert right < quiz.pass_mark and "not passed yet" in quiz.score_line(), (
        f"always picking the longest choice scores {right}/{len(quiz.questions)}, and {quiz.pass_mark} pass")


def test_the_length_measures_catch_a_bank_that_gives_its_answers_away(tmp_path):
    question = {"prompt": "Q?", "choices": [{"text": "a long and careful answer", "correct": True, "why": "w"},
                                            {"text": "short", "why": "w"}, {"text": "brief", "why": "w"}]}
    path = tmp_path / "99_test.yaml"
    path.write_text(yaml.safe_dump({"title": "T", "pass_percent": 80, "questions": [question] * 5}))
    assert share_answered_by_length([path]) == 1 and share_answered_by_length([path], longest=False) == 0
    quiz = Quiz.from_file(path)
    for number, q in enumerate(quiz.questions, start=1):
        quiz.feedback(number, pick_by_length(q))
    assert sum(quiz.results.values()) >= quiz.pass_mark
    tie = {**question, "choices": [{**c, "text": "same"} for c in question["choices"]]}
    path.write_text(yaml.safe_dump({"title": "T", "questions": [tie]}))
    assert share_answered_by_length([path]) == 1, "a tie counts against the bank"


def test_validation_catches_a_bad_pass_mark():
    assert "pass_percent=120" in validate_bank({**bank(), "pass_percent": 120})[0]


@pytest.mark.parametrize("path", BANKS, ids=lambda p: p.stem)
def test_every_correct_answer_scores(path):
    quiz = Quiz.from_file(path)
    for number, question in enumerate(quiz.questions, start=1):
        quiz.feedback(number, "".join(sorted(question.answer)))
    assert all(quiz.results.values()) and len(quiz.results) == len(quiz.questions)


def bank(**question):
    base = {"prompt": "Q?", "choices": [{"text": "a", "correct": True, "why": "w"}, {"text": "b", "why": "w"}]}
    base.update(question)
    return {"title": "T", "questions": [base]}


def test_validation_catches_two_correct_answers_in_a_single_answer_question():
    data = bank(choices=[{"text": "a", "correct": True, "why": "w"}, {"text": "b", "correct": True, "why": "w"}])
    assert "exactly one correct choice, has 2" in validate_bank(data)[0]


def test_validation_catches_a_missing_explanation():
    data = bank(choices=[{"text": "a", "correct": True, "why": "w"}, {"text": "b"}])
    assert "choice b: has no explanation" in validate_bank(data)[0]


def test_multiple_answer_questions_may_have_several_correct_choices():
    data = bank(multiple=True, choices=[{"text": "a", "correct": True, "why": "w"}, {"text": "b", "correct": True, "why": "w"}])
    assert validate_bank(data) == []


def test_text_mode_feedback_explains_every_choice_and_keeps_score(tmp_path):
    path = tmp_path / "99_test.yaml"
    path.write_text(yaml.safe_dump(bank()))
    quiz = Quiz.from_file(path)
    right = "".join(quiz.questions[0].answer)
    wrong = "a" if right == "b" else "b"
    text = quiz.feedback(1, wrong)
    assert "not quite" in text and text.count("w") >= 2 and "Score: 0/1" in text
    # The first answer is the one that counts; a second one gets feedback and says so.
    second = quiz.feedback(1, right)
    assert "correct" in second and f"your first answer, {wrong!r}, wrong" in second and "Score: 0/1" in second


def test_bad_answers_name_what_is_allowed(tmp_path):
    path = tmp_path / "99_test.yaml"
    path.write_text(yaml.safe_dump(bank()))
    quiz = Quiz.from_file(path)
    with pytest.raises(ValueError, match="allowed letters: a, b"):
        quiz.feedback(1, "z")
    with pytest.raises(ValueError, match="picked='none': give the letter of your choice, such as 'b'"):
        quiz.feedback(1, "none")
    with pytest.raises(ValueError, match="picked=''"):
        quiz.feedback(1, "")
    assert quiz.results == {}, "a refused answer is not scored"
    assert "Question 1" in quiz.feedback(1, " A ")
    with pytest.raises(ValueError, match="allowed: 1 to 1"):
        quiz.feedback(2, "a")


def test_a_lesson_number_may_be_an_int_or_a_string():
    assert bank_path(2) == bank_path("02") == bank_path("2") == bank_path("02_noise_schedules")
    with pytest.raises(TypeError, match="lesson=2.5"):
        bank_path(2.5)


def test_unknown_lesson_lists_the_banks():
    with pytest.raises(ValueError, match="available"):
        bank_path("nope")


def test_text_fallback_outside_a_kernel(capsys, monkeypatch):
    monkeypatch.setenv("SDCOURSE_QUIZ", "auto")
    quiz = show_quiz(BANKS[0].stem)
    assert "1. " in capsys.readouterr().out
    assert quiz.questions


def test_widget_front_end_builds(monkeypatch):
    quiz = Quiz.from_file(BANKS[0])
    box = quiz.widget()
    assert len(box.children) == 1 + 4 * len(quiz.questions) + 1


def test_a_question_number_that_is_not_a_whole_number_is_refused_by_name(tmp_path):
    path = tmp_path / "99_test.yaml"
    path.write_text(yaml.safe_dump(bank()))
    quiz = Quiz.from_file(path)
    for number in ("1", 1.0, True):
        with pytest.raises(ValueError, match=rf"number must be an integer, got {number!r}"):
            quiz.feedback(number, "a")
    assert quiz.results == {}


@pytest.mark.parametrize("question, problem", [
    (dict(multiple="yes"), "question 1: multiple='yes'; allowed: true or false"),
    (dict(choices=[{"text": "a", "correct": True, "why": "w"}, {"text": "b", "correct": "no", "why": "w"}]),
     "question 1, choice b: correct='no'; allowed: true or false"),
    (dict(choices=["a", "b"]), "question 1: 'choices' must be a list of choices, each with a text, a why"),
    (dict(prompt=42), "question 1: has no prompt"),
])
def test_bank_answers_of_the_wrong_type_are_refused_by_name(tmp_path, question, problem):
    assert problem in "\n".join(validate_bank(bank(**question), "99_test.yaml"))
    path = tmp_path / "99_test.yaml"
    path.write_text(yaml.safe_dump(bank(**question)))
    with pytest.raises(ValueError, match=f"invalid quiz bank {path}"):
        Quiz.from_file(path)


def test_a_damaged_bank_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "99_test.yaml"
    path.write_text("title: T\nquestions:\n  - prompt: [unclosed\n")
    with pytest.raises(ValueError, match=rf"quiz bank {path}: not valid YAML at line 4"):
        Quiz.from_file(path)
    path.write_bytes("title: caf\xe9\nquestions: []\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"quiz bank {path}: not UTF-8 text"):
        Quiz.from_file(path)
