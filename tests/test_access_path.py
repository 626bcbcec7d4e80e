"""Chapter 7: one guest access end to end, and the memslot move racing an invalidation."""
import matplotlib

matplotlib.use("Agg")

from kvmmu.explorer import explore  # noqa: E402
from kvmmu.guest import Loaded  # noqa: E402
from kvmmu.scenarios import access as A  # noqa: E402
from kvmmu.scenarios import all_scenarios  # noqa: E402
from kvmmu.viz import access as V  # noqa: E402
from kvmmu.viz.style import legibility  # noqa: E402

TABLES = (0x10000, 0x11000, 0x12010, 0x13000)


def test_fresh_vm_every_table_read_and_the_load_exit_once():
    run = A.run_access(A.access_vm())
    assert type(run.result) is Loaded and run.result.value == A.VALUE
    assert run.faults == TABLES + (A.DATA_GPA,)
    leaves = [t for s in run.steps for w, t in s.changes if w == "EPT"]
    assert len(leaves) == 5 and leaves[-1].endswith("(4K)")
    assert {s.layer for s in run.steps} == {name for name, _ in A.LAYERS} - {"TLB"}


def test_thp_backing_gives_a_2m_leaf_for_the_data():
    run = A.run_access(A.access_vm("2M"))
    leaves = [t for s in run.steps for w, t in s.changes if w == "EPT"]
    assert leaves[-1].startswith("leaf gfn 0x200") and leaves[-1].endswith("(2M)")


def test_prefault_removes_exactly_the_prefaulted_exits():
    data = A.run_access(A.access_vm(prefault_ranges=V.PREFAULTS["the data page"]))
    assert data.faults == TABLES and data.result.value == A.VALUE
    both = A.run_access(A.access_vm(prefault_ranges=V.PREFAULTS["tables and data"]))
    assert both.faults == () and both.result.value == A.VALUE


def test_layer_of_names_the_kernel_function():
    chain = (("kvmmu.mmu", "kvm_tdp_page_fault"), ("kvmmu.mmu", "kvm_tdp_mmu_page_fault"),
             ("kvmmu.explorer.locks", "RWLock.read_lock"))
    assert A.layer_of(chain) == ("fault path", "kvm_tdp_mmu_page_fault")
    chain = (("kvmmu.x86", "vcpu_run"), ("kvmmu.guest", "_guest_load"),
             ("kvmmu.explorer.world", "step"))
    assert A.layer_of(chain) == ("guest CPU", "the CPU's load")


def test_race_the_wait_holds_exhaustively():
    sc = A.move_race(True)
    res = explore(sc, stop_at_first=False)
    assert not res.violated and res.exhaustive
    assert (res.states, res.transitions, res.complete_runs) == (2238, 4560, 30)


def test_race_without_the_wait_maps_the_released_page():
    res = explore(A.move_race(False))
    assert res.violated and res.invariant == "no SPTE off the host's page"
    assert res.schedule == "AABCCCCCCACCCCCAAB"


def test_scenarios_registered_for_chapter_7():
    entries = {k: v for k, v in all_scenarios().items() if v.chapter == 7}
    assert {k: v.expect for k, v in entries.items()} == {
        "move-vs-invalidation": "holds", "move-skips-invalidation-wait": "violated"}


def test_view_never_raises_and_names_the_step():
    v = V.access_view("4K", "nothing", 29)
    assert v.layer == "TDP MMU" and v.changes[0][0] == "EPT" and v.violations_so_far == 1
    last = V.access_view("4K", "nothing", "162")
    assert last.step == last.last and "KVM_RUN ends" in last.html()
    for bad in [("4K", "nothing", -1), ("4K", "nothing", "x"), ("1G", "nothing", 0),
                ("4K", None, 0), ("4K", "nothing", 1.5), (None, [], {})]:
        view = V.access_view(*bad)
        assert view.error and "kvmmu-access-error" in view.html()


def test_figure_is_legible():
    fig = V.access_path_figure(V.recorded_access())
    assert legibility(fig) == []
