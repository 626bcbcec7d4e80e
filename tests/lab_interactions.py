"""How a student operates each chapter's main widget, and what must change.

Each entry takes a Playwright page (the chapter open and run in JupyterLab) and
a screenshot path.  It finds the widget by the CSS classes the widget builder
gives its controls (`kvmmu-...`), acts, and asserts the visible result
against the model.
"""
from pathlib import Path


def _widget(page, css: str):
    locator = page.locator(css).first
    locator.scroll_into_view_if_needed(timeout=30000)
    return locator


def _assert_no_traceback_near(page, css: str):
    """The output area holding the widget shows no Python error."""
    area = page.locator(".jp-OutputArea", has=page.locator(css)).first
    text = area.inner_text()
    assert "Traceback" not in text and "Error" not in text.split("\n")[0], text[:500]


def _shoot(page, css: str, shot: Path):
    _widget(page, css).screenshot(path=str(shot))


def spte_decoder(page, shot: Path):
    """Chapter 1: flip bit 11 of the example EPT leaf; it stops being MMU-present.

    What the decoder must show is what its pure function spte_view() says.
    """
    from kvmmu.viz.spte import spte_view

    out = ".kvmmu-spte-widget .kvmmu-spte-out"
    text = _widget(page, ".kvmmu-spte-widget .kvmmu-spte-text input")
    before = text.input_value()
    assert int(before, 16) == 0x8600000012345B77
    assert spte_view(before, "EPT", 1).cls in _widget(page, out).inner_text()
    _widget(page, ".kvmmu-spte-widget .kvmmu-spte-bit-11").click()
    expected = spte_view(f"{int(before, 16) ^ (1 << 11):#018x}", "EPT", 1)
    assert expected.cls == "non-present"
    page.wait_for_function(
        "v => document.querySelector('.kvmmu-spte-widget .kvmmu-spte-text input').value.toLowerCase() === v",
        arg=f"{expected.value:#018x}", timeout=15000)
    page.wait_for_function(
        f"h => document.querySelector('{out}').innerText.includes(h)",
        arg=f"{expected.value:#018x} (EPT, level 1): {expected.cls}", timeout=15000)
    # Type garbage: the widget answers with spte_view's message, not a traceback.
    text.fill("0xnot-a-number")
    text.press("Enter")
    page.wait_for_function(
        f"m => document.querySelector('{out}').innerText.includes(m)",
        arg=spte_view("0xnot-a-number", "EPT", 1).error, timeout=15000)
    _assert_no_traceback_near(page, ".kvmmu-spte-widget")
    _shoot(page, ".kvmmu-spte-widget", shot)


def host_mapping_explorer(page, shot: Path):
    """Chapter 2: misalign the slot's host address by one page; 2M becomes 4K."""
    from kvmmu.viz.host_level import host_mapping_view

    level = "document.querySelector('.kvmmu-hostlevel-widget .kvmmu-hostlevel-level')"
    assert _widget(page, ".kvmmu-hostlevel-widget .kvmmu-hostlevel-level").inner_text() == "2M"
    assert host_mapping_view(userspace_addr="0x7f0000001000").level == "4K"
    addr = _widget(page, ".kvmmu-hostlevel-widget .kvmmu-hostlevel-userspace-addr input")
    addr.fill("0x7f0000001000")
    addr.press("Enter")
    page.wait_for_function(f"() => {level} && {level}.innerText === '4K'", timeout=15000)
    assert "disallow" in _widget(page, ".kvmmu-hostlevel-widget .kvmmu-hostlevel-out").inner_text()
    addr.fill("banana")
    addr.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('.kvmmu-hostlevel-widget .kvmmu-hostlevel-out')"
        ".innerText.includes('error')", timeout=15000)
    _assert_no_traceback_near(page, ".kvmmu-hostlevel-widget")
    _shoot(page, ".kvmmu-hostlevel-widget", shot)


def folio_console(page, shot: Path):
    """Chapter 4: map the page in the host, then convert to private: -EAGAIN, still ALL."""
    from kvmmu.viz.guest_memfd import folio_console as view

    out = ".kvmmu-folio-widget .kvmmu-folio-out"
    expected = view(view((), "host map").state, "convert to private")
    state_line = next(v for k, v in expected.fields if k == "state")
    _widget(page, ".kvmmu-folio-widget .kvmmu-folio-host-map").click()
    page.wait_for_function(
        f"() => document.querySelector('{out}').innerText.includes('mapcount')"
        f" && /mapcount\\s*1/.test(document.querySelector('{out}').innerText)", timeout=15000)
    _widget(page, ".kvmmu-folio-widget .kvmmu-folio-convert-to-private").click()
    page.wait_for_function(
        f"m => document.querySelector('{out}').innerText.includes(m)",
        arg=expected.message, timeout=15000)
    assert state_line in _widget(page, out).inner_text()
    # An illegal action is refused with a message, not an exception.
    _widget(page, ".kvmmu-folio-widget .kvmmu-folio-reset").click()
    _widget(page, ".kvmmu-folio-widget .kvmmu-folio-put-ref").click()
    page.wait_for_function(f"() => /refused/.test(document.querySelector('{out}').innerText)",
                           timeout=15000)
    _assert_no_traceback_near(page, ".kvmmu-folio-widget")
    _shoot(page, ".kvmmu-folio-widget", shot)


def _prefault_deadlock_run(page, out: str):
    """Step the prefault twice (the ioctl gate, then it enters SRCU), the deletion until it blocks, finish."""
    w = ".kvmmu-prefault-widget"
    _widget(page, f"{w} .kvmmu-prefault-reset").click()
    _widget(page, f"{w} .kvmmu-prefault-a").click()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('ioctl gate')",
                           timeout=15000)
    _widget(page, f"{w} .kvmmu-prefault-a").click()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('srcu_read_lock')",
                           timeout=15000)
    for _ in range(30):
        _widget(page, f"{w} .kvmmu-prefault-b").click()
        page.wait_for_timeout(150)
        if "blocked" in _widget(page, out).inner_text().split("\n")[0]:
            break
    _widget(page, f"{w} .kvmmu-prefault-finish").click()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('ran every thread')",
                           timeout=15000)
    return _widget(page, out).inner_text()


def prefault_console(page, shot: Path):
    """Chapter 6: the same steps deadlock before the fix and give -EAGAIN after it."""
    from kvmmu.viz.prefault import prefault_console as view

    out = ".kvmmu-prefault-widget .kvmmu-prefault-out"

    def model(policy):
        v = view(policy=policy, schedule=view(policy=policy, action="A").schedule, action="A")
        while True:
            nxt = view(policy=policy, schedule=v.schedule, action="B")
            if not nxt.ok:
                break
            v = nxt
        return view(policy=policy, schedule=v.schedule, action="finish")

    before, after = model("6.17"), model("6.18")
    assert "DEADLOCK" in before.field("verdict") and "-EAGAIN" in after.field("A (prefault)")
    assert before.field("verdict") in _prefault_deadlock_run(page, out)
    _widget(page, ".kvmmu-prefault-widget .kvmmu-prefault-policy select").select_option("6.18")
    text = _prefault_deadlock_run(page, out)
    assert after.field("A (prefault)") in text and after.field("verdict") in text
    size = _widget(page, ".kvmmu-prefault-widget .kvmmu-prefault-size input")
    size.fill("0x123")
    size.press("Enter")
    _widget(page, ".kvmmu-prefault-widget .kvmmu-prefault-finish").click()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('EINVAL')",
                           timeout=15000)
    _assert_no_traceback_near(page, ".kvmmu-prefault-widget")
    _shoot(page, ".kvmmu-prefault-widget", shot)


def race_player(page, shot: Path):
    """Chapter 3: play the counterexample with the fix off (broken), then toggle the fix on."""
    from kvmmu.viz.tdp_mmu import race_view

    schedule = "A" * 9 + "B" * 13      # the zap clears the SPTE; vCPU 1's fault installs the new pfn
    unsafe, fixed = race_view(False, schedule), race_view(True, schedule)
    assert not unsafe.holds and fixed.holds
    w, out = ".kvmmu-race-widget", ".kvmmu-race-widget .kvmmu-race-out"
    fix = _widget(page, f"{w} .kvmmu-race-fix input")
    if fix.is_checked():
        fix.uncheck()
    for letter in schedule:
        _widget(page, f"{w} .kvmmu-race-step-{letter.lower()}").click()
    page.wait_for_function(
        f"() => document.querySelector('{out}').innerText.includes('step {len(schedule)} of {len(schedule)}')",
        timeout=30000)
    assert "BROKEN" in _widget(page, out).inner_text()
    fix.check()  # the same schedule with the freezing zap
    page.wait_for_function(
        f"() => /fix on/.test(document.querySelector('{out}').innerText)"
        f" && !/BROKEN/.test(document.querySelector('{out}').innerText)", timeout=15000)
    # Scrub back to the start: drag the slider's handle to the far left.
    handle = _widget(page, f"{w} .kvmmu-race-moment .noUi-handle")
    track = _widget(page, f"{w} .kvmmu-race-moment .noUi-target").bounding_box()
    box = handle.bounding_box()
    # Live, ``page`` is the REPL's frame: the mouse belongs to its page, and
    # bounding boxes are already in that page's coordinates.
    mouse = page.mouse if hasattr(page, "mouse") else page.page.mouse
    mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    mouse.down()
    mouse.move(track["x"] - 20, box["y"] + box["height"] / 2, steps=8)
    mouse.up()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('step 0 of')",
                           timeout=15000)
    _assert_no_traceback_near(page, w)
    _shoot(page, w, shot)


def walk_visualiser(page, shot: Path):
    """Chapter 5: the chapter's widget starts as a user write through a PTE with
    P W U A; clear W in the PTE: #PF, error code 0x7."""
    from kvmmu.viz.walker import DEFAULT_FLAGS, walk_view

    flags = {level: DEFAULT_FLAGS[level] for level in (4, 3, 2)}
    before = walk_view(access="write", level_flags={**flags, 1: "P W U A"})
    expected = walk_view(access="write", level_flags={**flags, 1: "P U A"})
    assert "=> gpa" in str(before) and "error code 0x7" in str(expected)
    w, out = ".kvmmu-walk-widget", ".kvmmu-walk-widget .kvmmu-walk-out"
    assert "=> gpa" in _widget(page, out).inner_text()
    _widget(page, f"{w} .kvmmu-walk-l1-w input").uncheck()
    _widget(page, f"{w} .kvmmu-walk-access button:has-text('write')").click()
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('error code 0x7')",
                           timeout=15000)
    gva = _widget(page, f"{w} .kvmmu-walk-gva input")
    gva.fill("0x8000000000000000")
    gva.press("Enter")
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('not canonical')",
                           timeout=15000)
    gva.fill("0x7fff12345678")
    gva.press("Enter")
    page.wait_for_function(f"() => document.querySelector('{out}').innerText.includes('error code 0x7')",
                           timeout=15000)
    _assert_no_traceback_near(page, w)
    _shoot(page, w, shot)


INTERACTIONS = {
    "book/ch05_guest_page_walk.ipynb": walk_visualiser,
    "book/ch03_frozen_spte_flush.ipynb": race_player,
    "book/ch06_prefault_eagain.ipynb": prefault_console,
    "book/ch04_guest_memfd_folio_put.ipynb": folio_console,
    "book/ch02_host_mapping_level.ipynb": host_mapping_explorer,
    "book/ch01_spte_format.ipynb": spte_decoder,
}

#: Chapters whose page runs a widget live (cells tagged `live`, tools/sphinx/kvmmu_live.py),
#: and how to operate it: the same interaction as in JupyterLab, on the live REPL's frame.
LIVE_INTERACTIONS = {
    "book/ch01_spte_format.ipynb": spte_decoder,
    "book/ch03_frozen_spte_flush.ipynb": race_player,
    "book/ch04_guest_memfd_folio_put.ipynb": folio_console,
}
