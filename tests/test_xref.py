"""The kernel cross-reference is generated from the package and names real kernel paths."""
import re

from kvmmu.xref import CHAPTER_OF_MODULE, kernel_xref, xref_table_markdown

KERNEL_PATH = re.compile(r"^(arch|virt|include|mm|Documentation|tools|kernel|lib)/[\w./-]+$")


def test_every_entry_names_a_kernel_path():
    entries = kernel_xref()
    assert entries, "no Models: lines found"
    bad = [e for e in entries if not KERNEL_PATH.match(e.kernel_file)]
    assert not bad, f"Models: lines whose path is not a kernel path: {bad}"


def test_core_entries_are_present():
    names = {(e.kernel_file, e.kernel_name) for e in kernel_xref()}
    assert ("arch/x86/kvm/mmu/spte.h", "SPTE_INDEX()") in names
    assert ("include/linux/kvm_host.h", "__gfn_to_hva_memslot()") in names


def test_table_has_one_row_per_entry():
    entries = kernel_xref()
    table = xref_table_markdown(entries)
    assert table.count("\n") == len(entries) + 1


def test_chapter_map_names_only_chapters_one_to_six():
    assert set(CHAPTER_OF_MODULE.values()) <= set(range(1, 7))


def test_names_split_on_commas_outside_parentheses():
    from kvmmu.xref import _split_names

    assert [n.strip() for n in _split_names("a(), struct kvm (x, y), b()")] == [
        "a()", "struct kvm (x, y)", "b()"]


def test_model_packages_are_included():
    # kvmmu.explorer is a package; its primitives still name their kernel counterparts.
    assert any(e.model.startswith("kvmmu.explorer.") and e.chapter == 3 for e in kernel_xref())
