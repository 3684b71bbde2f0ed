"""The table the quality comparisons print: two runs of the same training and their difference."""

from __future__ import annotations


def comparison_table(keys: tuple[str, ...], baseline: tuple[str, dict],
                     other: tuple[str, dict]) -> tuple[str, dict[str, float]]:
    """Markdown rows for (name, metrics) `baseline` and `other`, then other - baseline;
    returns the table and that difference."""
    difference = {k: other[1][k] - baseline[1][k] for k in keys}
    rows = (baseline, other, (f"{other[0]} - {baseline[0]}", difference))
    name_width = max(len(name) for name, _ in rows)
    value_width = max(max(len(k) for k in keys), 9)
    lines = [f"| {'':<{name_width}} | " + " | ".join(f"{k:>{value_width}}" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {name:<{name_width}} | "
              + " | ".join(f"{row[k]:>{value_width}.3f}" for k in keys) + " |"
              for name, row in rows]
    return "\n".join(lines), difference
