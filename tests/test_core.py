"""The shared core: bit helpers, argument checks, levels, errno names, source views."""
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import bits, checks, errno, levels
from kvmmu.memslots import (KVM_MEM_READONLY, KvmMemorySlot, KvmMemslots,
                            __gfn_to_hva_memslot, kvm_mmu_gfn_allow_lpage,
                            kvm_mmu_gfn_disallow_lpage, lpage_info_slot)
from kvmmu.source import show_source


def test_import_is_light():
    # `import kvmmu` must not pull in the view layer.
    code = ("import sys, kvmmu; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_modules_do_not_import_views():
    code = ("import sys, importlib, pkgutil, kvmmu\n"
            "for m in pkgutil.iter_modules(kvmmu.__path__):\n"
            "    if m.name not in ('viz',):\n"
            "        importlib.import_module('kvmmu.' + m.name)\n"
            "print(sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bit_helpers():
    assert bits.BIT_ULL(63) == 0x8000000000000000
    assert bits.GENMASK_ULL(51, 12) == 0x000FFFFFFFFFF000
    assert bits.GENMASK_ULL(62, 52) == 0x7FF0000000000000
    with pytest.raises(ValueError, match="nr must be in"):
        bits.BIT_ULL(64)
    with pytest.raises(ValueError, match="l must be in"):
        bits.GENMASK_ULL(3, 4)


@given(st.integers(0, (1 << 64) - 1))
def test_c_int_keeps_only_the_low_32_bits(value):
    assert bits.c_int(value) % (1 << 32) == value % (1 << 32)
    assert -(1 << 31) <= bits.c_int(value) < (1 << 31)


def test_c_int_truncates_high_bits():
    assert bits.c_int(1 << 59) == 0
    assert bits.c_int(1 << 31) == -(1 << 31)


@pytest.mark.parametrize("value, exc", [(True, TypeError), (1.0, TypeError), ("1", TypeError), (-1, ValueError), (11, ValueError)])
def test_check_int_rejects(value, exc):
    with pytest.raises(exc, match="widget_arg"):
        checks.check_int("widget_arg", value, 0, 10)


@pytest.mark.parametrize("text", ["", "  ", "zz", "0xg", "1.5", "--1", "0x" + "f" * 17])
def test_parse_int_text_rejects_garbage_with_a_message(text):
    with pytest.raises(ValueError, match="value"):
        checks.parse_int_text("value", text, 0, (1 << 64) - 1)


def test_parse_int_text_accepts_common_forms():
    assert checks.parse_int_text("v", " 0x1_000 ", 0, 1 << 20) == 0x1000
    assert checks.parse_int_text("v", "0b101", 0, 10) == 5
    assert checks.parse_int_text("v", "42", 0, 100) == 42


def test_levels():
    assert [levels.KVM_PAGES_PER_HPAGE(level) for level in (1, 2, 3)] == [1, 512, 262144]
    assert [levels.SPTE_LEVEL_SHIFT(level) for level in (1, 2, 3, 4, 5)] == [12, 21, 30, 39, 48]
    assert levels.SPTE_INDEX(0x0000_7FFF_FFFF_F000, 4) == 255
    assert levels.gfn_round_for_level(0x12345, levels.PG_LEVEL_2M) == 0x12200
    with pytest.raises(ValueError, match="level"):
        levels.KVM_PAGES_PER_HPAGE(0)


def test_errno_names():
    assert errno.errno_name(-errno.EAGAIN) == "-EAGAIN"
    assert errno.errno_name(0) == "0"
    assert errno.ret_pf_name(errno.RET_PF_RETRY) == "RET_PF_RETRY"
    assert errno.ret_pf_name(-errno.ENOENT) == "-ENOENT"
    assert (errno.RET_PF_CONTINUE, errno.RET_PF_SPURIOUS) == (0, 6)


def test_show_source_is_the_real_source():
    view = show_source(levels.SPTE_INDEX)
    text = repr(view)
    assert text.startswith("# kvmmu/levels.py\ndef SPTE_INDEX(")
    assert "Models: arch/x86/kvm/mmu/spte.h: SPTE_INDEX()" in text
    assert "<span" in view._repr_html_()
    with pytest.raises(TypeError, match="show_source"):
        show_source(42)


def test_lpage_info_for_the_selftest_slot():
    # kernel-facts §2.4: 513 pages at a 2M-aligned gpa: the first 2M page may be huge, the last page not.
    slot = KvmMemorySlot(id=0, base_gfn=0x40000, npages=513, userspace_addr=0x7F0000000000)
    assert slot.lpage_info[0] == (0, 1)
    assert lpage_info_slot(0x40000, slot, levels.PG_LEVEL_2M) == 0
    assert lpage_info_slot(0x40000 + 512, slot, levels.PG_LEVEL_2M) == 1
    assert slot.lpage_info[1] == (1,)  # the slot does not cover a whole 1G page


def test_lpage_info_misaligned_host_address_disallows_everything():
    slot = KvmMemorySlot(id=1, base_gfn=0, npages=2048, userspace_addr=0x7F0000001000)
    assert slot.lpage_info[0] == (1, 1, 1, 1)


def test_disallow_counts_nest():
    # Slots are values: each call returns the updated slot, the original is unchanged.
    slot = KvmMemorySlot(id=0, base_gfn=0, npages=1024, userspace_addr=0x7F0000000000)
    twice = kvm_mmu_gfn_disallow_lpage(kvm_mmu_gfn_disallow_lpage(slot, 5), 5)
    once = kvm_mmu_gfn_allow_lpage(twice, 5)
    assert lpage_info_slot(5, once, levels.PG_LEVEL_2M) == 1
    assert lpage_info_slot(5, slot, levels.PG_LEVEL_2M) == 0
    with pytest.raises(ValueError, match="negative"):
        kvm_mmu_gfn_allow_lpage(kvm_mmu_gfn_allow_lpage(once, 5), 5)


def test_memslot_lookup_and_bad_input():
    a = KvmMemorySlot(id=0, base_gfn=0, npages=16, userspace_addr=0x10000)
    b = KvmMemorySlot(id=1, base_gfn=32, npages=16, userspace_addr=0x40000, flags=KVM_MEM_READONLY)
    slots = KvmMemslots([b, a])
    assert slots.gfn_to_memslot(33) is b and slots.gfn_to_memslot(20) is None
    assert slots.id_to_memslot(0) is a
    assert __gfn_to_hva_memslot(b, 34) == 0x42000
    with pytest.raises(ValueError, match="outside slot"):
        __gfn_to_hva_memslot(b, 3)
    with pytest.raises(ValueError, match="userspace_addr must be 4 KiB aligned"):
        KvmMemorySlot(id=2, base_gfn=0, npages=1, userspace_addr=0x10001)
    with pytest.raises(ValueError, match="overlap"):
        KvmMemslots([a, KvmMemorySlot(id=3, base_gfn=8, npages=16, userspace_addr=0)])
    with pytest.raises(ValueError, match="npages"):
        KvmMemorySlot(id=4, base_gfn=0, npages=0, userspace_addr=0)
