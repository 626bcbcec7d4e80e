"""kvmmu.spte: constants, worked examples (kernel-facts §1, Appendix A) and properties."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import spte as S
from kvmmu.scenarios import spte as SR
from kvmmu.bits import U64_MAX, bits_set
from kvmmu.levels import KVM_PAGES_PER_HPAGE

CFGS = [S.EPT_AD, S.EPT_NO_AD, S.NPT]
CFG_IDS = ["EPT_AD", "EPT_NO_AD", "NPT"]
L1TF = S.kvm_mmu_reset_all_pte_masks(phys_bits=46, l1tf_cache_bits=44)
EPT_L1TF = S.kvm_mmu_set_ept_masks(True, True, phys_bits=46, l1tf_cache_bits=44)
FAST = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------- constants
def test_generic_constants():
    assert S.SPTE_MMU_PRESENT_MASK == 0x800
    assert S.SPTE_TDP_AD_SHIFT == 52
    assert S.SPTE_TDP_AD_MASK == 0x0030000000000000
    assert (S.SPTE_TDP_AD_ENABLED, S.SPTE_TDP_AD_DISABLED, S.SPTE_TDP_AD_WRPROT_ONLY) == (
        0, 0x0010000000000000, 0x0020000000000000)
    assert S.SPTE_BASE_ADDR_MASK == 0x000FFFFFFFFFF000
    assert (S.ACC_EXEC_MASK, S.ACC_WRITE_MASK, S.ACC_USER_MASK, S.ACC_ALL) == (1, 2, 4, 7)
    assert S.ACC_WRITE_MASK == S.PT_WRITABLE_MASK
    assert (S.SPTE_EPT_READABLE_MASK, S.SPTE_EPT_EXECUTABLE_MASK) == (1, 4)
    assert S.SHADOW_ACC_TRACK_SAVED_BITS_MASK == 5
    assert S.SHADOW_ACC_TRACK_SAVED_BITS_SHIFT == 54
    assert S.SHADOW_ACC_TRACK_SAVED_MASK == 0x0140000000000000
    assert (S.DEFAULT_SPTE_HOST_WRITABLE, S.DEFAULT_SPTE_MMU_WRITABLE) == (0x200, 0x400)
    assert (S.EPT_SPTE_HOST_WRITABLE, S.EPT_SPTE_MMU_WRITABLE) == (1 << 57, 1 << 58)
    assert S.SHADOW_NONPRESENT_VALUE == 0x8000000000000000
    assert S.FROZEN_SPTE == 0x80000000000005A0
    assert S.FROZEN_SPTE == S.SHADOW_NONPRESENT_VALUE | 0x5A0
    assert S.REMOVED_SPTE_OLD == 0x5A0
    assert bits_set(S.FROZEN_SPTE) == [5, 7, 8, 10, 63]
    assert S.SHADOW_NONPRESENT_OR_RSVD_MASK_LEN == 5
    assert S.PT_PAGE_SIZE_MASK == 0x80
    assert S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS == 1 << 63


def test_pt64_and_vmx_bits():
    assert [S.PT_PRESENT_MASK, S.PT_WRITABLE_MASK, S.PT_USER_MASK, S.PT_PWT_MASK,
            S.PT_PCD_MASK, S.PT_ACCESSED_MASK, S.PT_DIRTY_MASK, S.PT_PAGE_SIZE_MASK,
            S.PT_GLOBAL_MASK] == [1 << i for i in range(9)]
    assert S.PT64_NX_MASK == 1 << 63
    assert S.VMX_EPT_RWX_MASK == 7 and S.VMX_EPT_MISCONFIG_WX_VALUE == 6
    assert S.VMX_EPT_MT_EPTE_SHIFT == 3 and S.VMX_EPT_IPAT_BIT == 0x40
    assert S.EPT_DEFAULT_MEMTYPE == 0x70


def test_mmio_generation_constants():
    assert (S.MMIO_SPTE_GEN_LOW_START, S.MMIO_SPTE_GEN_LOW_END) == (3, 10)
    assert (S.MMIO_SPTE_GEN_HIGH_START, S.MMIO_SPTE_GEN_HIGH_END) == (52, 62)
    assert S.MMIO_SPTE_GEN_LOW_MASK == 0x00000000000007F8
    assert S.MMIO_SPTE_GEN_HIGH_MASK == 0x7FF0000000000000
    assert (S.MMIO_SPTE_GEN_LOW_BITS, S.MMIO_SPTE_GEN_HIGH_BITS) == (8, 11)
    assert (S.MMIO_SPTE_GEN_LOW_SHIFT, S.MMIO_SPTE_GEN_HIGH_SHIFT) == (3, 44)
    assert S.MMIO_SPTE_GEN_MASK == 0x7FFFF
    assert S.SPTE_MMIO_ALLOWED_MASK == 0x800FFFFFFFFFF007


def test_rsvd_bits():
    assert S.rsvd_bits(41, 45) == 0x00003E0000000000
    assert S.rsvd_bits(5, 4) == 0


# ---------------------------------------------------------------- configs
def test_ept_config_masks():
    c = S.EPT_AD
    assert c.ept and c.kvm_ad_enabled and not S.EPT_NO_AD.kvm_ad_enabled
    assert (c.shadow_user_mask, c.shadow_accessed_mask, c.shadow_dirty_mask) == (1, 0x100, 0x200)
    assert (c.shadow_nx_mask, c.shadow_x_mask) == (0, 4)
    assert c.shadow_present_mask == 0x8000000000000001
    assert S.kvm_mmu_set_ept_masks(True, True).shadow_present_mask == 0x8000000000000000
    assert c.shadow_acc_track_mask == 7
    assert (c.shadow_host_writable_mask, c.shadow_mmu_writable_mask) == (1 << 57, 1 << 58)
    assert (c.shadow_mmio_value, c.shadow_mmio_mask, c.shadow_mmio_access_mask) == (
        6, 0x8000000000000007, 0)
    assert c.enable_mmio_caching and c.mmio_warnings == ()
    assert S.EPT_NO_AD.shadow_accessed_mask == 0x100  # 6.13+: unconditional


def test_npt_config_masks():
    c = S.NPT
    assert not c.ept and c.kvm_ad_enabled
    assert (c.shadow_user_mask, c.shadow_accessed_mask, c.shadow_dirty_mask) == (4, 0x20, 0x40)
    assert (c.shadow_nx_mask, c.shadow_x_mask, c.shadow_present_mask) == (1 << 63, 0, 1)
    assert c.shadow_acc_track_mask == 0
    assert (c.shadow_host_writable_mask, c.shadow_mmu_writable_mask) == (0x200, 0x400)
    assert c.shadow_mmio_value == c.shadow_mmio_mask == 0x0008000000000001
    assert c.shadow_mmio_access_mask == 6 and c.enable_mmio_caching
    assert c.shadow_nonpresent_or_rsvd_mask == 0
    assert c.shadow_nonpresent_or_rsvd_lower_gfn_mask == (1 << 46) - (1 << 12)


def test_l1tf_masks():
    c = S.kvm_mmu_reset_all_pte_masks(phys_bits=46, l1tf_cache_bits=46)
    assert c.shadow_nonpresent_or_rsvd_mask == 0x00003E0000000000
    assert c.shadow_nonpresent_or_rsvd_lower_gfn_mask == 0x000001FFFFFFF000
    # A cache width of 47+ gets no mask (the kernel WARNs once and goes on).
    wide = S.kvm_mmu_reset_all_pte_masks(phys_bits=46, l1tf_cache_bits=47)
    assert wide.shadow_nonpresent_or_rsvd_mask == 0
    # EPT keeps the L1TF masks of reset_all_pte_masks.
    assert EPT_L1TF.shadow_nonpresent_or_rsvd_mask == L1TF.shadow_nonpresent_or_rsvd_mask


def test_52_bit_host_disables_mmio_caching_without_warning():
    c = S.kvm_mmu_reset_all_pte_masks(phys_bits=52)
    assert not c.enable_mmio_caching and c.shadow_mmio_value == 0 and c.mmio_warnings == ()
    with pytest.raises(ValueError, match="MMIO caching is disabled"):
        S.make_mmio_spte(0x100, 0, 0, c)
    assert not S.is_mmio_spte(0, c)


def test_module_parameter_disables_mmio_caching():
    for c in (S.kvm_mmu_reset_all_pte_masks(allow_mmio_caching=False),
              S.kvm_mmu_set_ept_masks(True, False, allow_mmio_caching=False)):
        assert not c.enable_mmio_caching and c.shadow_mmio_value == 0
        assert not S.is_mmio_spte(c.shadow_mmio_mask & 6, c)


@pytest.mark.parametrize("value,mask,why", [
    (1 << 4, 1 << 4, "outside SPTE_MMIO_ALLOWED_MASK"),        # a generation bit
    (1 << 11, 1 << 11, "outside SPTE_MMIO_ALLOWED_MASK"),      # the present bit
    (0x6, 0x3, "outside the MMIO mask"),
    (0x8000000000000000, 0x8000000000000007, "FROZEN_SPTE would look like an MMIO SPTE"),
])
def test_set_mmio_spte_mask_rules(value, mask, why):
    c = S.kvm_mmu_set_mmio_spte_mask(S.EPT_AD, value, mask, 0)
    assert not c.enable_mmio_caching and c.shadow_mmio_value == 0
    assert any(why in w for w in c.mmio_warnings), c.mmio_warnings


def test_set_mmio_spte_mask_l1tf_overlap():
    value = 1 << 48  # inside (bits 39..43) << 5 = bits 44..48
    c = S.kvm_mmu_set_mmio_spte_mask(L1TF, value | 1, value | 1, 6)
    assert not c.enable_mmio_caching
    assert any("relocated L1TF" in w for w in c.mmio_warnings)


def test_set_mmio_spte_mask_bad_access_mask():
    with pytest.raises(ValueError, match="access_mask"):
        S.kvm_mmu_set_mmio_spte_mask(S.NPT, 1, 1, 1 << 32)


# ---------------------------------------------------------------- worked examples
def test_worked_leaf_examples():
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.NPT) == (0x0000000012345E67, False)
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_AD, memtype=0x70) == (0x8600000012345B77, False)
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_AD)[0] == 0x8600000012345B77


def test_worked_prefetch_examples():
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.NPT, prefetch=True)[0] == 0x0000000012345E47
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_AD, prefetch=True)[0] == 0x8600000012345A77
    # synchronizing prefetch keeps Accessed
    assert S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.NPT, prefetch=True,
                       synchronizing=True)[0] == 0x0000000012345E67


def test_prefetch_without_ad_is_access_tracked():
    spte, _ = S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_NO_AD, prefetch=True)
    assert spte & 7 == 0 and spte & S.SPTE_MMU_PRESENT_MASK
    assert spte & S.SPTE_TDP_AD_MASK == S.SPTE_TDP_AD_DISABLED
    assert spte >> 54 & 5 == 5 and not spte & 0x100
    assert S.is_access_track_spte(spte, S.EPT_NO_AD)
    assert S.classify(spte, S.EPT_NO_AD, 1) == S.CLASS_ACCESS_TRACKED
    restored = S.restore_acc_track_spte(spte, S.EPT_NO_AD)
    assert restored & 7 == 5 and not restored & S.SHADOW_ACC_TRACK_SAVED_MASK


def test_worked_nonleaf_examples():
    assert S.make_nonleaf_spte(0x12345000, cfg=S.EPT_AD) == 0x8000000012345907
    assert S.make_nonleaf_spte(0x12345000, cfg=S.EPT_NO_AD) == 0x8010000012345807
    assert S.make_nonleaf_spte(0x12345000, True, S.EPT_AD) == 0x8010000012345807
    assert S.classify(0x8000000012345907, S.EPT_AD, 2) == S.CLASS_PRESENT_NONLEAF


def test_worked_mmio_examples():
    assert S.generation_mmio_spte_mask(0x12345) == 0x1230000000000228
    ept = S.make_mmio_spte(0xFEE00, 0, 0x12345, S.EPT_AD)
    npt = S.make_mmio_spte(0xFEE00, S.ACC_WRITE_MASK | S.ACC_USER_MASK, 0x12345, S.NPT)
    assert ept == 0x12300000FEE0022E
    assert npt == 0x12380000FEE0022F
    assert S.make_mmio_spte(0xFEE00, S.ACC_ALL, 0x12345, S.EPT_AD) == ept  # EPT keeps no access
    for spte, cfg in ((ept, S.EPT_AD), (npt, S.NPT)):
        assert S.is_mmio_spte(spte, cfg) and not S.is_shadow_present_pte(spte)
        assert S.get_mmio_spte_generation(spte) == 0x12345
        assert S.get_mmio_spte_gfn(spte, cfg) == 0xFEE00
        assert S.classify(spte, cfg) == S.CLASS_MMIO
    assert S.get_mmio_spte_access(npt, S.NPT) == 6


def test_mmio_generation_drops_update_in_progress_bit():
    gen = 0x12345 | S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    assert S.make_mmio_spte(0xFEE00, 0, gen) == 0x12300000FEE0022E


def test_check_mmio_spte():
    spte = S.make_mmio_spte(0xFEE00, 0, 0x12345)
    assert S.check_mmio_spte(spte, 0x12345)
    assert S.check_mmio_spte(spte, 0x12345 | (1 << 19))  # only 19 bits are compared
    assert not S.check_mmio_spte(spte, 0x12347)
    assert not S.check_mmio_spte(spte, 0x12345 | S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)


def test_mmio_l1tf_relocation():
    gfn = (1 << 33) | 0x1234          # gpa bit 45: under the mask for cache_bits=46
    c = S.kvm_mmu_reset_all_pte_masks(phys_bits=46, l1tf_cache_bits=46)
    spte = S.make_mmio_spte(gfn, 0, 7, c)
    assert spte & c.shadow_nonpresent_or_rsvd_mask == c.shadow_nonpresent_or_rsvd_mask
    assert spte & (1 << 50)           # gpa bit 45 moved up by 5
    assert S.get_mmio_spte_gfn(spte, c) == gfn


# ---------------------------------------------------------------- predicates
@pytest.mark.parametrize("cfg", CFGS + [L1TF, EPT_L1TF], ids=CFG_IDS + ["L1TF", "EPT_L1TF"])
@pytest.mark.parametrize("value", [S.FROZEN_SPTE, S.SHADOW_NONPRESENT_VALUE])
def test_special_values_never_present_nor_mmio(cfg, value):
    assert not S.is_shadow_present_pte(value)
    assert not S.is_mmio_spte(value, cfg)
    assert value & 7 == 0 and S.spte_to_pfn(value) == 0
    assert not S.is_ept_ve_possible(value, cfg)


def test_class_of_special_values():
    for cfg in CFGS:
        assert S.classify(S.FROZEN_SPTE, cfg) == S.CLASS_FROZEN
        assert S.classify(S.SHADOW_NONPRESENT_VALUE, cfg) == S.CLASS_NONPRESENT
        assert S.classify(0, cfg) == S.CLASS_NONPRESENT
    assert S.is_frozen_spte(S.FROZEN_SPTE) and not S.is_frozen_spte(S.REMOVED_SPTE_OLD)


def test_simple_predicates():
    leaf = 0x8600000012345B77
    assert S.is_shadow_present_pte(leaf) and S.is_writable_pte(leaf)
    assert not S.is_large_pte(leaf) and S.is_last_spte(leaf, 1) and not S.is_last_spte(leaf, 2)
    assert S.is_large_pte(leaf | 0x80) and S.is_last_spte(leaf | 0x80, 2)
    assert S.spte_to_pfn(leaf) == 0x12345
    assert S.is_executable_pte(leaf, S.EPT_AD) and not S.is_executable_pte(leaf & ~4, S.EPT_AD)
    assert S.is_executable_pte(0x12345E67, S.NPT)
    assert not S.is_executable_pte(0x12345E67 | S.PT64_NX_MASK, S.NPT)
    assert S.spte_ad_enabled(leaf) and not S.spte_ad_need_write_protect(leaf)
    wp = leaf | S.SPTE_TDP_AD_WRPROT_ONLY
    assert S.spte_ad_enabled(wp) and S.spte_ad_need_write_protect(wp)
    assert S.is_accessed_spte(leaf) and not S.is_accessed_spte(leaf & ~0x100)
    assert S.is_mmu_writable_spte(leaf) and S.is_host_writable_spte(leaf)
    assert S.is_dirty_spte(leaf) and not S.is_dirty_spte(leaf & ~0x200)
    no_ad = leaf | S.SPTE_TDP_AD_DISABLED
    assert S.is_dirty_spte(no_ad & ~0x200)                   # without A/D: W means dirty
    assert not S.is_dirty_spte(no_ad & ~0x200 & ~2)


def test_writable_invariants_and_flush():
    good = [0x8600000012345B77, 0x8600000012345B75, 0x8200000012345B75, 0x8000000012345B75]
    for spte in good:
        S.check_spte_writable_invariants(spte)
    with pytest.raises(S.KernelWarn, match="MMU-writable SPTE is not Host-writable"):
        S.check_spte_writable_invariants(0x8400000012345B75)
    with pytest.raises(S.KernelWarn, match="Writable SPTE is not MMU-writable"):
        S.check_spte_writable_invariants(0x8200000012345B77)
    # dirty-logging write-protect (M kept) does not flush; clearing M does
    assert not S.leaf_spte_change_needs_tlb_flush(good[0], good[1])
    assert S.leaf_spte_change_needs_tlb_flush(good[0], good[2])
    assert S.leaf_spte_change_needs_tlb_flush(good[1], good[2])
    assert not S.leaf_spte_change_needs_tlb_flush(good[2], good[3])


def test_spte_needs_atomic_update_three_clauses():
    c = S.EPT_AD
    writable_dirty = 0x8600000012345B77
    assert not S.spte_needs_atomic_update(writable_dirty, c)
    assert S.spte_needs_atomic_update(writable_dirty & ~0x200, c)         # W && !D
    assert S.spte_needs_atomic_update(writable_dirty & ~2, c)             # !W && M
    assert not S.spte_needs_atomic_update(writable_dirty & ~2 & ~(1 << 58), c)
    assert S.spte_needs_atomic_update(writable_dirty | S.SPTE_TDP_AD_DISABLED, c)
    assert not S.spte_needs_atomic_update(writable_dirty & ~0x100, c)     # A alone: no


@FAST
@given(st.integers(0, U64_MAX), st.sampled_from(CFGS))
def test_spte_needs_atomic_update_matches_definition(spte, cfg):
    w = bool(spte & 2)
    m = bool(spte & cfg.shadow_mmu_writable_mask)
    ad_off = (spte & S.SPTE_TDP_AD_MASK) == S.SPTE_TDP_AD_DISABLED
    d = bool(spte & cfg.shadow_dirty_mask)
    assert S.spte_needs_atomic_update(spte, cfg) == ((not w and m) or ad_off or (w and not d))


def test_mark_spte_for_access_track_with_ad_clears_accessed():
    assert S.mark_spte_for_access_track(0x8600000012345B77) == 0x8600000012345A77
    assert S.mark_spte_for_access_track(0x12345E67, S.NPT) == 0x12345E47


def test_mark_spte_for_access_track_is_idempotent_and_warns():
    spte, _ = S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_NO_AD)
    tracked = S.mark_spte_for_access_track(spte, S.EPT_NO_AD)
    assert S.mark_spte_for_access_track(tracked, S.EPT_NO_AD) == tracked
    with pytest.raises(S.KernelWarn, match="saved bit"):
        S.mark_spte_for_access_track(spte | (1 << 54), S.EPT_NO_AD)


def test_make_spte_variants():
    # read-only host mapping: H=M=W=0, and no write access at all
    ro, wp = S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.EPT_AD, host_writable=False)
    assert S.hmw_state(ro) == (0, 0, 0) and not wp
    # write-tracked gfn: wrprot reported, H=1 M=0 W=0
    tracked, wp = S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.NPT, write_tracked=True)
    assert wp and S.hmw_state(tracked, S.NPT) == (1, 0, 0)
    # ... unless the old SPTE was already a writable leaf
    again, wp = S.make_spte(1, S.ACC_ALL, 0x12345, cfg=S.NPT, write_tracked=True,
                            old_spte=0x12345E67)
    assert not wp and again == 0x12345E67
    # huge page with the NX mitigation
    huge, _ = S.make_spte(2, S.ACC_ALL, 0x12200, cfg=S.EPT_AD, nx_huge_pages=True)
    assert huge & 0x80 and not huge & 4
    huge_npt, _ = S.make_spte(2, S.ACC_ALL, 0x12200, cfg=S.NPT, nx_huge_pages=True)
    assert huge_npt & S.PT64_NX_MASK
    # nested with PML: wrprot-only A/D type
    l2, _ = S.make_spte(1, S.ACC_ALL, 0x12345, ad_need_write_protect=True)
    assert l2 & S.SPTE_TDP_AD_MASK == S.SPTE_TDP_AD_WRPROT_ONLY
    # exec-only EPT with no access at all would be non-present: the kernel WARNs
    with pytest.raises(S.KernelWarn, match="non-present"):
        S.make_spte(1, 0, 0x12345, cfg=S.kvm_mmu_set_ept_masks(True, True))


def test_small_and_huge_spte():
    huge, _ = S.make_spte(2, S.ACC_ALL, 0x12200, cfg=S.EPT_AD, nx_huge_pages=True)
    child = S.make_small_spte(huge, 1, 5, S.ACC_ALL, S.EPT_AD, nx_huge_pages=True)
    assert S.spte_to_pfn(child) == 0x12205 and not child & 0x80 and child & 4
    back = S.make_huge_spte(child, 2, S.EPT_AD, nx_huge_pages=True)
    assert back == huge
    one_g, _ = S.make_spte(3, S.ACC_ALL, 0x40000, cfg=S.NPT)
    mid = S.make_small_spte(one_g, 2, 3, cfg=S.NPT)
    assert S.spte_to_pfn(mid) == 0x40000 + 3 * 512 and mid & 0x80
    with pytest.raises(S.KernelWarn):
        S.make_small_spte(0x8600000012345B77, 1, 0)


# ---------------------------------------------------------------- history
def test_2021_presence_test_against_today():
    c = S.EPT_AD
    # Where the two tests agree
    for v in (0x8600000012345B77, 0x12300000FEE0022E, 0, S.REMOVED_SPTE_2021):
        assert S.is_shadow_present_pte_2021(v, c) == S.is_shadow_present_pte(v)
    # Where they differ: the later non-present values have no bit 11 but are
    # non-zero and not the 2021 removed value (bit 59)
    for v in (S.REMOVED_SPTE_OLD, S.SHADOW_NONPRESENT_VALUE, S.FROZEN_SPTE):
        assert S.is_shadow_present_pte_2021(v, c) and not S.is_shadow_present_pte(v)
    assert S.REMOVED_SPTE_2021 == 1 << 59 == S.FROZEN_SPTE_PROPOSED_2021
    assert S.is_mmio_spte_2021(3 << 52) and not S.is_mmio_spte_2021(1 << 52)


def test_int_truncation_pitfall():
    pte = S.FROZEN_SPTE_PROPOSED_2021
    assert S.int_bit_test_truncating(pte, 59) == 0
    assert S.int_bit_test_fixed(pte, 59) == 1
    assert S.int_bit_test_truncating(S.SPTE_MMU_PRESENT_MASK, 11) == 0x800
    assert S.int_bit_test_truncating(1 << 31, 31) == -(1 << 31)   # negative, still "true"
    assert all(S.int_bit_test_truncating(U64_MAX, nr) == 0 for nr in range(32, 64))


def test_flag_test_vs_value_test():
    # An MMIO SPTE whose generation has bit 15 set carries SPTE bit 59: a flag
    # test for the 2021 proposal's "frozen" bit would misread it.
    spte = S.make_mmio_spte(0x100, 0, 1 << 15)
    assert spte & S.FROZEN_SPTE_PROPOSED_2021
    assert spte != S.FROZEN_SPTE_PROPOSED_2021


# ---------------------------------------------------------------- the lost-Dirty race
def test_dirty_race_unsafe_loses_d_in_the_three_step_schedule():
    from kvmmu.explorer import explore, run_schedule
    sc = SR.dirty_race_scenario(False)
    res = explore(sc)
    assert res.violated and res.schedule == "ABA"
    assert res.invariant.startswith("lost Dirty bit")
    t = run_schedule(sc, "ABA")
    assert t.results == {"A": False, "B": "wrote"}
    # the other orders are fine: B first is seen through D, A first makes B fault
    assert run_schedule(sc, "BAA").results == {"B": "wrote", "A": True}
    assert run_schedule(sc, "AAB").results == {"A": False, "B": "EPT violation"}


def test_dirty_race_atomic_holds_over_every_interleaving():
    from kvmmu.explorer import explore, run_schedule
    assert S.spte_needs_atomic_update(SR.DIRTY_RACE_SPTE)     # W && !D
    sc = SR.dirty_race_scenario(True)
    res = explore(sc, stop_at_first=False)
    assert not res.violated and res.exhaustive
    assert (res.states, res.transitions, res.complete_runs) == (9, 8, 3)
    t = run_schedule(sc, "ABA")
    assert t.results == {"A": True, "B": "wrote"}          # D seen in xchg's old value
    assert not S.spte_needs_atomic_update(SR.DIRTY_RACE_SPTE | S.VMX_EPT_DIRTY_BIT)


def test_dirty_race_two_writers_three_actors():
    # Two vCPUs write the page while KVM write-protects it: the unsafe store
    # still loses D (the second vCPU then faults on the cleared W), and the
    # xchg keeps it in every interleaving of the three actors.
    from kvmmu.explorer import explore, run_schedule
    unsafe = explore(SR.dirty_race_scenario(False, writers=2))
    assert unsafe.violated and unsafe.schedule == "ABAC"
    assert unsafe.counterexample.results == {"A": False, "B": "wrote",
                                             "C": "EPT violation"}
    fixed = explore(SR.dirty_race_scenario(True, writers=2), stop_at_first=False)
    assert not fixed.violated and fixed.exhaustive
    assert (fixed.states, fixed.transitions, fixed.complete_runs) == (25, 29, 7)
    both = run_schedule(SR.dirty_race_scenario(True, writers=2), "BCAA")
    assert both.results == {"A": True, "B": "wrote", "C": "wrote"}


def test_dirty_race_bad_input():
    with pytest.raises(TypeError, match="atomic"):
        SR.dirty_race_scenario(1)
    with pytest.raises(ValueError, match="writers"):
        SR.dirty_race_scenario(True, writers=3)


def test_spte_format_does_not_import_the_explorer():
    # The race lives in kvmmu.scenarios.spte so the SPTE format stays a leaf module.
    import subprocess
    import sys
    code = "import sys, kvmmu.spte; print('kvmmu.explorer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- properties
@FAST
@given(st.sampled_from(CFGS), st.integers(1, 3), st.integers(0, 7),
       st.integers(0, S.NPT.max_pfn), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_make_spte_round_trips_pfn_and_keeps_invariants(cfg, level, access, pfn, prefetch, sync,
                                                        host_w, tracked):
    pfn &= ~(KVM_PAGES_PER_HPAGE(level) - 1)
    spte, wrprot = S.make_spte(level, access, pfn, cfg=cfg, prefetch=prefetch,
                               synchronizing=sync, host_writable=host_w, write_tracked=tracked)
    assert S.spte_to_pfn(spte) == pfn
    S.check_spte_writable_invariants(spte, cfg)
    assert S.hmw_state(spte, cfg) in S.HMW_STATES
    assert S.is_shadow_present_pte(spte) and not S.is_mmio_spte(spte, cfg)
    assert not S.is_ept_ve_possible(spte, cfg)
    assert S.classify(spte, cfg, level) in (S.CLASS_PRESENT_LEAF, S.CLASS_ACCESS_TRACKED)
    assert wrprot == bool(tracked and host_w and access & S.ACC_WRITE_MASK)
    if S.is_writable_pte(spte):
        assert S.is_dirty_spte(spte, cfg) and S.is_mmu_writable_spte(spte, cfg)


@FAST
@given(st.sampled_from([S.EPT_AD, S.NPT, L1TF, EPT_L1TF]), st.data())
def test_make_mmio_spte_round_trip(cfg, data):
    gfn = data.draw(st.integers(0, cfg.max_mmio_gfn))
    gen = data.draw(st.integers(0, U64_MAX))
    access = data.draw(st.integers(0, 7))
    spte = S.make_mmio_spte(gfn, access, gen, cfg)
    assert S.is_mmio_spte(spte, cfg) and not S.is_shadow_present_pte(spte)
    assert S.get_mmio_spte_gfn(spte, cfg) == gfn
    assert S.get_mmio_spte_generation(spte) == gen & S.MMIO_SPTE_GEN_MASK
    assert S.check_mmio_spte(spte, gen) == (not gen >> 63)
    assert S.classify(spte, cfg) == S.CLASS_MMIO


def test_mmio_generation_round_trip_all_generations():
    bad = []
    covered = 0
    for gen in range(1 << 19):
        bits = S.generation_mmio_spte_mask(gen)
        covered |= bits
        if S.get_mmio_spte_generation(bits) != gen:
            bad.append(gen)
    assert not bad
    assert covered == S.MMIO_SPTE_GEN_LOW_MASK | S.MMIO_SPTE_GEN_HIGH_MASK


SPECIAL = [0, U64_MAX, S.FROZEN_SPTE, S.SHADOW_NONPRESENT_VALUE, S.REMOVED_SPTE_OLD,
           S.SPTE_MMU_PRESENT_MASK, 0x6, 0x8000000000000006, 0x0008000000000001,
           0x8600000012345B77, 0x12300000FEE0022E, 0x12380000FEE0022F, 0x8010000012345807]


def _class_predicates(spte, cfg, level):
    """Each class's own defining predicate, independently of classify()'s order."""
    present = bool(spte & 0x800)
    frozen = spte == S.FROZEN_SPTE
    tracked = present and (spte & S.SPTE_TDP_AD_MASK) == S.SPTE_TDP_AD_DISABLED \
        and spte & cfg.shadow_acc_track_mask == 0
    mmio = not present and not frozen and cfg.enable_mmio_caching \
        and spte & cfg.shadow_mmio_mask == cfg.shadow_mmio_value
    leaf = present and not tracked and (level == 1 or bool(spte & 0x80))
    return {S.CLASS_FROZEN: frozen, S.CLASS_ACCESS_TRACKED: tracked, S.CLASS_MMIO: mmio,
            S.CLASS_PRESENT_LEAF: leaf,
            S.CLASS_PRESENT_NONLEAF: present and not tracked and not leaf,
            S.CLASS_NONPRESENT: not present and not frozen and not mmio}


def _assert_partition(spte, cfg, level):
    preds = _class_predicates(spte, cfg, level)
    assert sum(preds.values()) == 1, (hex(spte), preds)
    assert preds[S.classify(spte, cfg, level)]
    assert S.decode_spte(spte, cfg, level).cls == S.classify(spte, cfg, level)


@pytest.mark.parametrize("spte", SPECIAL, ids=hex)
def test_classification_partition_special_values(spte):
    for cfg in CFGS + [L1TF]:
        for level in range(1, 6):
            _assert_partition(spte, cfg, level)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, U64_MAX), st.sampled_from(CFGS), st.integers(1, 5))
def test_classification_is_a_partition(spte, cfg, level):
    _assert_partition(spte, cfg, level)


def test_every_class_is_reachable():
    seen = {S.classify(v, S.EPT_NO_AD, lvl) for v in SPECIAL
            + [S.make_spte(1, 7, 1, cfg=S.EPT_NO_AD, prefetch=True)[0]] for lvl in (1, 2)}
    assert seen == set(S.SPTE_CLASSES)


# ---------------------------------------------------------------- decode
def test_decode_fields():
    d = S.decode_spte(0x8600000012345B77, S.EPT_AD, 1)
    assert d.cls == S.CLASS_PRESENT_LEAF
    assert d.fields["pfn"] == 0x12345 and d.fields["R"] and d.fields["W"] and d.fields["X"]
    assert d.fields["memtype"] == 6 and d.fields["IPAT"] and d.fields["H/M/W"].startswith("111")
    assert d.notes == ()
    n = S.decode_spte(0x12345E67, S.NPT, 1)
    assert n.fields["P"] and n.fields["U"] and not n.fields["NX"] and n.fields["D"]
    m = S.decode_spte(0x12380000FEE0022F, S.NPT)
    assert m.fields == {"generation": 0x12345, "gfn": 0xFEE00, "access": 6}
    assert "0x12380000fee0022f" in str(m)
    z = S.decode_spte(0, S.EPT_AD)
    assert any("#VE" in note for note in z.notes)
    bad = S.decode_spte(0x8200000012345B77, S.EPT_AD, 1)
    assert "illegal" in bad.fields["H/M/W"]
    assert any("invariants" in note for note in bad.notes)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,arg", [
    (lambda: S.make_spte(1, 7, 1 << 34, cfg=S.NPT), "pfn"),
    (lambda: S.make_spte(1, 7, -1), "pfn"),
    (lambda: S.make_spte(1, 7, 1.5), "pfn"),
    (lambda: S.make_spte(0, 7, 1), "level"),
    (lambda: S.make_spte(4, 7, 1), "level"),
    (lambda: S.make_spte(2, 7, 0x12345), "pfn must be aligned"),
    (lambda: S.make_spte(1, 8, 1), "pte_access"),
    (lambda: S.make_spte(1, 7, 1, prefetch=1), "prefetch"),
    (lambda: S.make_spte(1, 7, 1, memtype=0x7), "memtype"),
    (lambda: S.make_spte(1, 7, 1, cfg=S.NPT, memtype=0x70), "memtype"),
    (lambda: S.make_spte(1, 7, 1, cfg=S.NPT, ad_disabled=True), "ad_disabled"),
    (lambda: S.make_spte(1, 7, 1, cfg=S.EPT_NO_AD, ad_disabled=False), "ad_disabled"),
    (lambda: S.make_spte(1, 7, 1, cfg="EPT"), "cfg"),
    (lambda: S.generation_mmio_spte_mask(1 << 19), "gen"),
    (lambda: S.generation_mmio_spte_mask(-1), "gen"),
    (lambda: S.make_mmio_spte(1 << 34, 0, 0, S.NPT), "gfn"),
    (lambda: S.make_mmio_spte(1 << 32, 0, 0, L1TF), "gfn"),
    (lambda: S.make_mmio_spte(1, 8, 0), "access"),
    (lambda: S.make_mmio_spte(1, 0, 1 << 64), "generation"),
    (lambda: S.is_shadow_present_pte(-1), "pte"),
    (lambda: S.is_shadow_present_pte(1 << 64), "pte"),
    (lambda: S.is_shadow_present_pte("0x800"), "pte"),
    (lambda: S.is_last_spte(0, 6), "level"),
    (lambda: S.classify(0, S.EPT_AD, 0), "level"),
    (lambda: S.check_mmio_spte(0, -5), "current_generation"),
    (lambda: S.make_nonleaf_spte(0x12345001), "child_pa"),
    (lambda: S.kvm_mmu_reset_all_pte_masks(phys_bits=53), "phys_bits"),
    (lambda: S.kvm_mmu_set_ept_masks(1, 0), "has_ad_bits"),
])
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises((TypeError, ValueError)) as err:
        call()
    assert arg in str(err.value)


def test_range_is_in_the_message():
    with pytest.raises(ValueError, match=r"pfn must be in \[0, 0x3ffffffff\]"):
        S.make_spte(1, 7, 1 << 34, cfg=S.NPT)
    with pytest.raises(ValueError, match=r"gen must be in \[0, 0x7ffff\]"):
        S.generation_mmio_spte_mask(1 << 19)
