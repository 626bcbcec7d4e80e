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
        wrong = {n: _wrong(p, rng) for n, p in enumerate(spec.handout(WRONG).problems, 1)}
        for student, answers in [
                (RIGHT, {n: p.answer() for n, p in enumerate(spec.handout(RIGHT).problems, 1)}),
                (WRONG, wrong)]:
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
        for n, answer in wrong.items():     # ... naming each wrong part
            right = spec.handout(WRONG).problem(n).answer()
            assert all(k in feedback for k in answer if answer[k] != right[k])
        assert "Not yet" not in (out / "feedback" / RIGHT / chapter / f"{chapter}.html").read_text()


# -- whose problems: the seed formula and the student id ---------------------------------
def test_student_seed_is_the_documented_formula():
    import hashlib

    from kvmmu.exercises.classroom import student_seed

    digest = hashlib.sha256(b"alice/ch01_spte_format/3").digest()
    assert student_seed("alice", "ch01_spte_format", 3) == int.from_bytes(digest[:4], "big")
    seeds = {student_seed(s, "ch01_spte_format", n) for s in ("alice", "bob") for n in (1, 2)}
    assert len(seeds) == 4 and all(0 <= s < 2**32 for s in seeds)
    with pytest.raises(TypeError, match="student_id"):
        student_seed("", "ch01_spte_format", 1)
    with pytest.raises(ValueError, match="number"):
        student_seed("alice", "ch01_spte_format", 0)


def test_student_id_is_nbgraders(tmp_path, monkeypatch):
    import pwd
    from types import SimpleNamespace

    from kvmmu.exercises.classroom import current_student_id

    graded = tmp_path / "autograded" / "bob" / "ch01_spte_format"
    graded.mkdir(parents=True)
    monkeypatch.chdir(graded)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert current_student_id("ch01_spte_format") == "bob"
    with pytest.raises(RuntimeError, match="directory_structure"):
        current_student_id("ch02_host_mapping_level")
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("JUPYTERHUB_USER", "carol")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="dave"))
    assert current_student_id("ch01_spte_format") == "dave"      # a login name wins
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="jovyan"))
    assert current_student_id("ch01_spte_format") == "carol"     # except Docker's jovyan
