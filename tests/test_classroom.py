"""The classroom pipeline, end to end, as a teacher runs it (tools/classroom.py, nbgrader).

In a temporary course: build the source notebooks and release them with
``nbgrader generate_assignment``; check that no solution or hidden test is in
a release notebook; submit, for every assignment, one student's correct
answers (typed as literals, as a student would) and another's wrong ones;
``nbgrader autograde``; the first gets full marks, the second zero.
"""
import os
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
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(classroom.nbgrader(*args), cwd=course_dir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _wrong(problem, rng):
    """A well-formed wrong answer; a guessable part where there is one (only hidden tests catch it)."""
    answer = problem.answer()
    fields = [f for f in problem.form.fields if f.guessable] or list(problem.form.fields)
    f = fields[rng.randrange(len(fields))]
    return {**answer, f.name: f.perturb(answer[f.name], rng)}


def _submit(course_dir: Path, chapter: str, student: str, answers: dict):
    release = course_dir / "release" / chapter / f"{chapter}.ipynb"
    nb = nbformat.read(release, as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("answer_"):
            n = int(grade_id.split("_")[1])
            cell.source = f"answer_{n} = {answers[n]!r}"
    folder = course_dir / "submitted" / student / chapter
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{chapter}.ipynb")


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


def test_autograde_gives_full_and_zero_marks(course):
    from nbgrader.api import Gradebook

    out, timings = course
    rng = random.Random(13)
    for chapter, spec in classroom.assignments().items():
        right = {n: p.answer() for n, p in enumerate(spec.handout(RIGHT).problems, 1)}
        wrong = {n: _wrong(p, rng) for n, p in enumerate(spec.handout(WRONG).problems, 1)}
        _submit(out, chapter, RIGHT, right)
        _submit(out, chapter, WRONG, wrong)
        _nbgrader(out, "autograde", chapter, "--force")
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
            full = gb.find_submission(chapter, RIGHT)
            zero = gb.find_submission(chapter, WRONG)
            assert full.max_score == spec.points() > 0
            assert (full.score, zero.score) == (spec.points(), 0), chapter
        graded = (out / "autograded" / WRONG / chapter / f"{chapter}.ipynb").read_text()
        assert "Not yet" in graded          # the feedback the hidden tests print
