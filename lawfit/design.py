"""What a pilot design identifies (#18), written into plan.json as `identifies` by `lawfit plan`.

Above MAX_ALL_PAIRS (6) domains the pairs design plans 2m sampled pairs, so its fitted runs grow as 3m, not
m(m - 1)/2. What each run pins down follows lawfit/identify.py's design rule, applied before any run:
* a domain's own law (E, A, alpha, d0): its single-domain pilot (its own data at every evaluation);
* the transfer k_ij, gamma_ij of the transfer forms: a run where source j was seen without target i (j's
  pilot, evaluated on every domain) -- with every pilot planned, every ordered pair;
* transfer told apart from interference (k_ij vs rho_ij of the `interference` form): additionally a run
  where i and j were seen together (their pair); with sampled pairs, only the planned pairs. The other
  pairs' rho is tied to the transfer through the shared own laws and d-bar only: a fit reports them
  (lawfit/identify.py), and `transfer_lowrank` (2m transfer numbers) needs no pair per rate.
"""

from __future__ import annotations


def identifies(domains: list[str], fitted: list[dict[str, float]]) -> dict:
    """`identifies` of plan.json from the planned fitted mixtures (weights by domain)."""
    m = len(domains)
    seen = [{d for d, w in mix.items() if w > 0} for mix in fitted]
    own = [d for d in domains if {d} in seen]
    transfer = [
        (i, j) for i in domains for j in domains if i != j and any(j in s and i not in s for s in seen)
    ]
    both = {(i, j) for i, j in transfer if any(i in s and j in s for s in seen)}
    pairs = sorted({"+".join(sorted(p)) for p in both})
    n_pairs = m * (m - 1)
    return {
        "fitted_runs": len(fitted),
        "own_law": {"domains": len(own), "of": m, "parameters": "E, A, alpha, d0"},
        "transfer": {"ordered_pairs": len(transfer), "of": n_pairs, "parameters": "k, gamma"},
        "transfer_vs_interference": {"ordered_pairs": len(both), "of": n_pairs, "pairs": pairs},
        "parameters_per_target": {
            "no_transfer": 4,
            "transfer": 4 + 2 * (m - 1),
            "interference": 5 + 2 * (m - 1),
            "transfer_lowrank": f"5, plus {m} source strengths shared by all targets",
        },
        "definition": "own law: a single-domain pilot; transfer: a run with the source but not the target; "
        "transfer vs interference: also a run with both (docs/lawfit.md, 'Planning pilots')",
    }
