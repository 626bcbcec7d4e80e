"""The kernel cross-reference is generated from the package and names real kernel paths."""
import re

from kvmmu.xref import XrefEntry, kernel_xref, xref_table_html

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


def test_table_has_one_row_per_entry_and_names_each_file_once():
    entries = kernel_xref()
    table = xref_table_html(entries)
    assert table.count("<tr>") == len(entries) + 1          # + the header row
    for path in {e.kernel_file for e in entries}:
        assert table.count(f"<code>{path}</code>") == 1, path
    assert "table-layout:fixed;width:100%" in table          # it wraps to the page


def test_identifier_is_the_c_name_alone():
    def ident(name):
        return XrefEntry("f", name, "m").identifier
    assert ident("make_spte()") == "make_spte"
    assert ident("struct kvm_page_fault") == "kvm_page_fault"
    assert ident("FNAME(walk_addr_generic)() (RFC v2 as posted)") == "walk_addr_generic"
    assert ident("tdp_mmu_zap_spte_atomic() (before January 2021, unsafe: no freeze)") \
        == "tdp_mmu_zap_spte_atomic"
    assert ident("SPTE_MMU_PRESENT_MASK") == "SPTE_MMU_PRESENT_MASK"


def test_names_split_on_commas_outside_parentheses():
    from kvmmu.xref import _split_names

    assert [n.strip() for n in _split_names("a(), struct kvm (x, y), b()")] == [
        "a()", "struct kvm (x, y)", "b()"]


def test_model_packages_are_included():
    # kvmmu.explorer is a package; its primitives still name their kernel counterparts.
    assert any(e.model.startswith("kvmmu.explorer.") for e in kernel_xref())
