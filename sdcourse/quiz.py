"""Multiple-choice quizzes: ipywidgets in JupyterLab, plain text everywhere else.

Each lesson's questions live in one YAML file in `sdcourse/quizzes/`, named after the lesson
(`02_noise_schedules.yaml`). A bank looks like this:

    title: Noise schedules
    questions:
      - prompt: What does alpha-bar at t measure?
        multiple: false            # optional; true lets several choices be correct
        choices:
          - text: How much of the original image is left in x_t
            correct: true
            why: x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise, so ...
          - text: ...
            why: ...

In a notebook: `show_quiz("02")`. In a terminal, or with SDCOURSE_QUIZ=text, the questions
print as text and `quiz.answer(1, "b")` gives the feedback.
Choices are shown in a fixed shuffled order, so a bank may list its correct choice first.
"""

from __future__ import annotations

import math
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from sdcourse.arguments import whole_number

BANK_DIR = Path(__file__).parent / "quizzes"
LETTERS = string.ascii_lowercase


@dataclass
class Choice:
    text: str
    correct: bool
    why: str


@dataclass
class Question:
    prompt: str
    choices: list[Choice]
    multiple: bool = False

    @property
    def answer(self) -> set[str]:
        return {LETTERS[i] for i, c in enumerate(self.choices) if c.correct}


def validate_bank(data: dict, source: str = "quiz bank") -> list[str]:
    """Every problem in a bank, as a list of sentences; an empty list means the bank is valid."""
    problems = []
    if not isinstance(data, dict) or not data.get("title") or not isinstance(data.get("questions"), list):
        return [f"{source}: needs a 'title' and a list of 'questions'"]
    pass_percent = data.get("pass_percent", None)
    if pass_percent is not None and (isinstance(pass_percent, bool) or not isinstance(pass_percent, (int, float))
                                     or not 0 < pass_percent <= 100):
        problems.append(f"{source}: pass_percent={pass_percent!r}; allowed: a number above 0, up to 100")
    for number, q in enumerate(data["questions"], start=1):
        where = f"{source}, question {number}"
        if not isinstance(q, dict) or not isinstance(q.get("prompt"), str) or not q["prompt"].strip():
            problems.append(f"{where}: has no prompt (a text)")
            continue
        problems += _not_true_or_false(q, "multiple", where)
        choices = q.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            problems.append(f"{where}: 'choices' must be a list of choices, each with a text, a why and "
                            f"(for the right ones) correct: true; got {choices!r:.80}")
            continue
        if len(choices) < 2:
            problems.append(f"{where}: needs at least 2 choices, has {len(choices)}")
        correct = sum(bool(c.get("correct")) for c in choices)
        if q.get("multiple", False):
            if correct < 1:
                problems.append(f"{where}: a multiple-answer question needs at least one correct choice")
        elif correct != 1:
            problems.append(f"{where}: a single-answer question needs exactly one correct choice, has {correct}")
        for letter, c in zip(LETTERS, choices):
            problems += _not_true_or_false(c, "correct", f"{where}, choice {letter}")
            if not str(c.get("text", "")).strip():
                problems.append(f"{where}, choice {letter}: has no text")
            if not str(c.get("why", "")).strip():
                problems.append(f"{where}, choice {letter}: has no explanation ('why')")
    return problems


def _not_true_or_false(entry: dict, key: str, where: str) -> list[str]:
    """A problem if entry[key] is given but is not true or false ('no' in quotes is a text, and any
    text would count as true)."""
    value = entry.get(key, False)
    return [] if isinstance(value, bool) else [f"{where}: {key}={value!r}; allowed: true or false"]


def read_bank(path) -> dict:
    """The contents of a bank file; a file that is not UTF-8 YAML is refused naming it and the line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"quiz bank {path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
                         ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"quiz bank {path}: not valid YAML{line} ({getattr(error, 'problem', None) or error})"
                         ) from None


def bank_path(lesson) -> Path:
    """The bank file of a lesson, given its number (2 or "02") or its file stem."""
    if isinstance(lesson, bool) or not isinstance(lesson, (int, str)):
        raise TypeError(f"lesson={lesson!r}; give the lesson's number, such as 2 or \"02\"")
    lesson = str(lesson).strip()
    if lesson.isdigit():
        lesson = lesson.zfill(2)  # 2 and "2" mean lesson 02, not every lesson whose number starts with 2
    matches = sorted(BANK_DIR.glob(f"{lesson}*.yaml"))
    if len(matches) != 1:
        available = ", ".join(p.stem for p in sorted(BANK_DIR.glob("*.yaml"))) or "none"
        raise ValueError(f"lesson={lesson!r} matches {len(matches)} quiz banks; available: {available}")
    return matches[0]


class Quiz:
    def __init__(self, title: str, questions: list[Question], pass_percent: float | None = None):
        self.title = title
        self.questions = questions
        self.pass_percent = pass_percent  # a test with a pass mark (the module test); None for a lesson's quiz
        self.results: dict[int, bool] = {}  # question number -> the first answer was right
        self.first_picks: dict[int, str] = {}

    @classmethod
    def from_file(cls, path) -> "Quiz":
        data = read_bank(path)
        problems = validate_bank(data, source=Path(path).name)
        if problems:
            raise ValueError(f"invalid quiz bank {path}:\n" + "\n".join(problems))
        questions = []
        for q in data["questions"]:
            choices = [Choice(str(c["text"]).strip(), bool(c.get("correct")), str(c["why"]).strip()) for c in q["choices"]]
            # Banks may list the correct choice first; the display order is shuffled, the same way every time.
            random.Random(q["prompt"]).shuffle(choices)
            questions.append(Question(q["prompt"].strip(), choices, bool(q.get("multiple", False))))
        return cls(data["title"], questions, data.get("pass_percent"))

    @classmethod
    def from_lesson(cls, lesson: str) -> "Quiz":
        return cls.from_file(bank_path(lesson))

    # ---- shared by both front ends -------------------------------------------------
    def feedback(self, number: int, picked) -> str:
        """Grade `picked` (letters such as "b" or "ac") for question `number` (1-based)."""
        number = whole_number("number", number)  # the question's number: 1, 2, ...
        if not 1 <= number <= len(self.questions):
            raise ValueError(f"number={number} is not a question here; allowed: 1 to {len(self.questions)}")
        question = self.questions[number - 1]
        given = picked
        allowed = set(LETTERS[: len(question.choices)])
        letters = "".join(p for p in str(given).lower() if not p.isspace() and p not in ",;")
        picked = set(letters)
        if not picked or not picked <= allowed or len(letters) != len(picked):
            example = "'ac'" if question.multiple else "'b'"
            raise ValueError(f"picked={given!r}: give the letter{'s' if question.multiple else ''} of your "
                             f"choice{'s' if question.multiple else ''}, such as {example}; allowed letters: "
                             f"{', '.join(sorted(allowed))}")
        right = picked == question.answer
        lines = [f"Question {number}: {'✅ correct' if right else '❌ not quite'}"]
        if number in self.results:  # the first answer is the one that counts
            first = self.first_picks[number]
            lines.append(f"  (scored: your first answer, {first!r}, {'right' if self.results[number] else 'wrong'}; "
                         "later answers get feedback only)")
        else:
            self.results[number] = right
            self.first_picks[number] = "".join(sorted(picked))
        for letter, choice in zip(LETTERS, question.choices):
            mark = "✔" if choice.correct else "✘"
            chosen = " (your pick)" if letter in picked else ""
            lines.append(f"  {letter}) {mark} {choice.text}{chosen}\n       {choice.why}")
        lines.append(self.score_line())
        return "\n".join(lines)

    @property
    def pass_mark(self) -> int | None:
        """How many right answers pass (pass_percent of the questions, rounded up); None without a pass mark."""
        if self.pass_percent is None:
            return None
        return math.ceil(len(self.questions) * self.pass_percent / 100)

    def score_line(self) -> str:
        right, total = sum(self.results.values()), len(self.questions)
        line = f"Score: {right}/{total} ({len(self.results)} answered)"
        if self.pass_percent is not None:
            needed = self.pass_mark
            verdict = ("passed" if right >= needed else "not passed yet: read the lessons of the questions you missed"
                       ) if len(self.results) == total else f"{needed} right to pass"
            line += f"; pass mark {self.pass_percent:g}%: {verdict}"
        return line

    # ---- plain text ------------------------------------------------------------------
    def as_text(self) -> str:
        lines = [f"Quiz: {self.title}", ""]
        if self.pass_percent is not None:
            lines[1:1] = [f"{len(self.questions)} questions; {self.pass_percent:g}% right passes. Your first answer counts."]
        for number, q in enumerate(self.questions, start=1):
            kind = " (pick all that apply)" if q.multiple else ""
            lines.append(f"{number}. {q.prompt}{kind}")
            lines += [f"   {letter}) {c.text}" for letter, c in zip(LETTERS, q.choices)]
            lines.append("")
        lines.append('Answer with quiz.answer(question_number, "letters"), e.g. quiz.answer(1, "b").')
        return "\n".join(lines)

    def answer(self, number: int, picked) -> None:
        print(self.feedback(number, picked))

    def __repr__(self):
        return self.as_text()

    # ---- widgets -----------------------------------------------------------------------
    def widget(self):
        import ipywidgets as w

        score = w.HTML(self.score_line())
        boxes = [w.HTML(f"<h3>Quiz: {self.title}</h3>")]
        for number, q in enumerate(self.questions, start=1):
            options = [(f"{letter}) {c.text}", letter) for letter, c in zip(LETTERS, q.choices)]
            if q.multiple:
                picker = w.VBox([w.Checkbox(description=label, value=False, indent=False) for label, _ in options])
            else:
                picker = w.RadioButtons(options=options, value=None, layout=w.Layout(width="auto"))
            button = w.Button(description="Check", button_style="primary")
            out = w.Output()

            def on_click(_, number=number, q=q, picker=picker, out=out):
                if q.multiple:
                    picked = "".join(LETTERS[i] for i, box in enumerate(picker.children) if box.value)
                else:
                    picked = picker.value or ""
                out.clear_output()
                with out:
                    try:
                        print(self.feedback(number, picked))
                    except ValueError:
                        print("Pick an answer first.")
                score.value = self.score_line()

            button.on_click(on_click)
            kind = " <i>(pick all that apply)</i>" if q.multiple else ""
            boxes += [w.HTML(f"<b>{number}. {q.prompt}</b>{kind}"), picker, button, out]
        return w.VBox(boxes + [score])

    def show(self):
        """Display the quiz: widgets in a Jupyter kernel, text otherwise (SDCOURSE_QUIZ=text forces text)."""
        if _use_widgets():
            from IPython.display import display

            display(self.widget())
        else:
            print(self.as_text())
        return self

    def _ipython_display_(self):
        self.show()


def _use_widgets() -> bool:
    mode = os.environ.get("SDCOURSE_QUIZ", "auto")
    if mode not in {"auto", "text", "widgets"}:
        raise ValueError(f"SDCOURSE_QUIZ={mode!r}; allowed: auto, text, widgets")
    if mode != "auto":
        return mode == "widgets"
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_quiz(lesson) -> Quiz:
    """Load a lesson's quiz and display it. Keep the returned object to answer in text mode."""
    quiz = Quiz.from_lesson(lesson)
    quiz.show()
    return quiz
