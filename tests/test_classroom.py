"""The classroom pipeline, end to end, as a teacher and two students run it.

In a temporary course (tools/classroom.py, then nbgrader's own commands with a
temporary exchange folder): build the source notebooks and generate the
release; check that no solution or hidden test is in a release notebook;
release each assignment; two students fetch it, one types the right answers
(as literals, as a student would), the other wrong ones; both submit; the
teacher collects, autogrades and generates feedback: full marks and zero
marks, and the second student's feedback says what was wrong.
"""
import random
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

RIGHT, WRONG = "alice", "bob"
#: Text that only the source notebooks may hold.
SECRETS = ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", ".answer()", "hidden_test")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    timings = classroom.build_course(out)
    return out, timings


def _nbgrader(course_dir: Path, *args):
    result = subprocess.run(classroom.nbgrader(*args), cwd=course_dir, env=classroom.nbgrader_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _wrong(problem, rng):
    """A well-formed wrong answer; a guessable part where there is one (only hidden tests catch it)."""
    answer = problem.answer()
    fields = [f for f in problem.form.fields if f.guessable] or list(problem.form.fields)
    f = fields[rng.randrange(len(fields))]
    return {**answer, f.name: f.perturb(answer[f.name], rng)}


def _answer(notebook: Path, answers: dict):
    """Type ``answers`` into the answer cells of the fetched ``notebook``."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("answer_"):
            n = int(grade_id.split("_")[1])
            cell.source = f"answer_{n} = {answers[n]!r}"
    nbformat.write(nb, notebook)


def test_every_declared_assignment_is_built(course):
    out, timings = course
    assert set(timings) == set(classroom.assignments()) and "ch01_spte_format" in timings
    for chapter in timings:
        assert (out / "source" / chapter / f"{chapter}.ipynb").exists()
        assert (out / "release" / chapter / f"{chapter}.ipynb").exists()


def test_release_has_no_solutions(course):
    out, timings = course
    for chapter in timings:
        source = (out / "source" / chapter / f"{chapter}.ipynb").read_text()
        assert all(s in source for s in SECRETS)      # the check below could fail
        release = nbformat.read(out / "release" / chapter / f"{chapter}.ipynb", as_version=4)
        text = "\n".join(cell.source for cell in release.cells)
        assert not [s for s in SECRETS if s in text], chapter
        answers = [c for c in release.cells if c.metadata["nbgrader"]["grade_id"].startswith("answer_")]
        assert answers and all("raise NotImplementedError()" in c.source for c in answers)


def test_release_submit_collect_autograde_feedback(course, tmp_path):
    from nbgrader.api import Gradebook

    out, timings = course
    exchange = f"--Exchange.root={tmp_path / 'exchange'}"
    rng = random.Random(13)
    for chapter, spec in classroom.assignments().items():
        _nbgrader(out, "release_assignment", chapter, exchange)
        for student, answers in [
                (RIGHT, {n: p.answer() for n, p in enumerate(spec.handout(RIGHT).problems, 1)}),
                (WRONG, {n: _wrong(p, rng) for n, p in enumerate(spec.handout(WRONG).problems, 1)})]:
            home = tmp_path / student
            home.mkdir(exist_ok=True)
            _nbgrader(home, "fetch_assignment", chapter, f"--course={classroom.COURSE_ID}", exchange)
            _answer(home / chapter / f"{chapter}.ipynb", answers)
            _nbgrader(home, "submit", chapter, f"--course={classroom.COURSE_ID}", exchange,
                      f"--student={student}")
        _nbgrader(out, "collect", chapter, exchange)
        _nbgrader(out, "autograde", chapter)
        _nbgrader(out, "generate_feedback", chapter)
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
            full = gb.find_submission(chapter, RIGHT)
            zero = gb.find_submission(chapter, WRONG)
            assert full.max_score == spec.points() > 0
            assert (full.score, zero.score) == (spec.points(), 0), chapter
        feedback = (out / "feedback" / WRONG / chapter / f"{chapter}.html").read_text()
        assert "Not yet" in feedback        # what the hidden tests say, for the student to read
        assert "Not yet" not in (out / "feedback" / RIGHT / chapter / f"{chapter}.html").read_text()
