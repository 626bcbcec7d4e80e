"""Every race scenario the book explores, from ONE function: ``book_scenarios()``.

The reduction tests (tests/test_explorer_por.py) and the explorer benchmark
run over this list.  When the model moves to a scenario registry, re-point
``book_scenarios`` at it; nothing else needs to change.  Each entry is
``(id, factory)``: ``factory()`` builds a fresh Scenario (some scenarios carry
tallies, so each run gets its own).
"""
from __future__ import annotations

from functools import partial


def _explorer_teaching():
    from kvmmu.explorer import abba_deadlock, lost_update, srcu_grace_period
    return [
        ("explorer: lost update", partial(lost_update, False)),
        ("explorer: lost update, cmpxchg", partial(lost_update, True)),
        ("explorer: ABBA", partial(abba_deadlock, False)),
        ("explorer: ordered locks", partial(abba_deadlock, True)),
        ("explorer: srcu, synchronize", partial(srcu_grace_period, True)),
        ("explorer: srcu, no synchronize", partial(srcu_grace_period, False)),
    ]


def _ch1():
    from kvmmu import spte_races as SR
    return [(f"ch1: dirty race, atomic={a}", partial(SR.dirty_race_scenario, a))
            for a in (False, True)]


def _ch2():
    from kvmmu import host_level_races as R
    return [(f"ch2: {name}", factory) for name, (factory, _must_hold) in R.SCENARIOS.items()]


def _ch3():
    from kvmmu import tdp_mmu_races as R
    out = [("ch3: zap vs fault, no freeze", partial(R.zap_vs_fault, False))]
    for actors in (2, 3):
        out.append((f"ch3: zap vs fault, freeze, {actors} actors",
                     partial(R.zap_vs_fault, True, actors)))
        out.append((f"ch3: zap vs fault, same pfn, {actors} actors",
                     partial(R.zap_vs_fault, False, actors, new_pfn=R.OLD_PFN)))
    out += [("ch3: removers collide, spin", partial(R.removers_collide, spin=True)),
            ("ch3: removers collide, no spin", partial(R.removers_collide, spin=False)),
            ("ch3: fault into removed table", R.fault_into_removed_table),
            ("ch3: zap vs fault, pfn 0x9000", partial(R.zap_vs_fault, False, 2, new_pfn=0x9000))]
    return out


def _ch4():
    from kvmmu import guest_memfd as G
    return [
        ("ch4: naive unshare", G.scenario_naive_unshare),
        ("ch4: pin", G.scenario_pin),
        ("ch4: pin, no vcpu, from none", partial(G.scenario_pin, vcpu=False, from_none=True)),
        ("ch4: pin, put after unlock", partial(G.scenario_pin, put_after_unlock=True)),
        ("ch4: pin, alternative", partial(G.scenario_pin, alternative=True)),
        ("ch4: pin, alternative, put after unlock",
         partial(G.scenario_pin, alternative=True, put_after_unlock=True)),
        ("ch4: comment, trusted, from none",
         partial(G.scenario_comment, trust_comment=True, from_none=True)),
        ("ch4: comment, retrying", partial(G.scenario_comment, trust_comment=False)),
        ("ch4: speculative, as posted", partial(G.scenario_speculative, put_after_unlock=False)),
        ("ch4: speculative", G.scenario_speculative),
        ("ch4: speculative, writes", partial(G.scenario_speculative, writes=True)),
        ("ch4: speculative, writes, alternative",
         partial(G.scenario_speculative, writes=True, alternative=True)),
        ("ch4: host fault during none", G.scenario_host_fault_during_none),
        ("ch4: truncate pending", G.scenario_truncate_pending),
        ("ch4: truncate pending, fixed", partial(G.scenario_truncate_pending, fix_pending=True)),
        ("ch4: share again vs final put", G.scenario_share_again_vs_final_put),
    ]


def _ch5():
    from kvmmu import walker_races as WR
    from kvmmu.pferr import PFERR_WRITE_MASK
    out = [(f"ch5: A/D race, {v}", partial(WR.ad_race_scenario, v))
           for v in ("blind", "6.17", "rfc", "rfc-fixed")]
    out.append(("ch5: A/D race, 6.17, read", partial(WR.ad_race_scenario, "6.17", access=0)))
    out.append(("ch5: A/D race, 6.17, write",
                partial(WR.ad_race_scenario, "6.17", access=PFERR_WRITE_MASK)))
    out.append(("ch5: gpc race, rfc-nocheck", partial(WR.gpc_race_scenario, "rfc-nocheck")))
    for private in (True, False):
        out.append((f"ch5: gpc race, rfc-fixed, private={private}",
                    partial(WR.gpc_race_scenario, "rfc-fixed", private_tables=private)))
    return out


def _ch6():
    from kvmmu import prefault as P
    out = [
        ("ch6: 6.17 delete one call", partial(P.prefault_race, "6.17", "delete", "one call",
                                              slot_zap_all=False)),
        ("ch6: 6.17 delete KVM_RUN", partial(P.prefault_race, "6.17", "delete", "KVM_RUN")),
        ("ch6: 6.17 delete one call, signal",
         partial(P.prefault_race, "6.17", "delete", "one call", signal=True, slot_zap_all=False)),
        ("ch6: 6.17 TDX populate",
         partial(P.prefault_race, "6.17", "delete", "TDX populate", slot_zap_all=False)),
        ("ch6: 6.18 delete", partial(P.prefault_race, "6.18", "delete")),
        ("ch6: drop-srcu delete", partial(P.prefault_race, "drop-srcu", "delete")),
        ("ch6: drop-srcu+reload delete, old reload",
         partial(P.prefault_race, "drop-srcu+reload", "delete",
                 reload_frees_obsolete_roots=False)),
    ]
    for policy in ("6.17", "6.18", "RET_PF_RETRY_INVALID_SLOT", "drop-srcu", "drop-srcu+reload"):
        for writer in ("delete", "move"):
            out.append((f"ch6: {policy} {writer}, no fast zap",
                        partial(P.prefault_race, policy, writer, slot_zap_all=False)))
    for writer in ("delete", "move"):
        out.append((f"ch6: 6.18+request-break {writer}",
                    partial(P.prefault_race, "6.18+request-break", writer)))
    for case in range(3):
        for policy, zap in (("6.17", False), ("6.18", False), ("6.17", True), ("6.18", True),
                            ("6.18+request-break", True)):
            out.append((f"ch6: selftest case {case + 1}, {policy}, fast zap={zap}",
                        partial(P.selftest_race, case, policy, slot_zap_all=zap)))
    return out


def book_scenarios() -> list:
    """``(id, factory)`` for every race scenario of the book, in chapter order."""
    return (_explorer_teaching() + _ch1() + _ch2() + _ch3() + _ch4() + _ch5() + _ch6())
