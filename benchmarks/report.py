"""Summaries, target checks and Markdown tables for benchmarks/bench.py."""

from measure import median_iqr, ratio_summary


def summarize(series: dict, rows) -> dict:
    """Turn per-round measurements into medians, IQRs and within-round ratios to row 1."""
    summary = {"rows": {}, "generation": {}, "halo_overhead_over_floor": {}}
    base = series["update:1"]
    for row in rows:
        times = series[f"update:{row.key}"]
        summary["rows"][row.key] = {
            kind: {"update_ms": median_iqr([1000 * t[kind] for t in times]),
                   "ratio_to_row_1": ratio_summary([t[kind] for t in times],
                                                   [b[kind] for b in base])}
            for kind in ("cpu", "wall")
        }
    for name in ("log_softmax_nll", "class_mass"):
        if series[name]:
            summary[f"{name}_ms"] = {
                kind: median_iqr([1000 * t[kind] for t in series[name]]) for kind in ("cpu", "wall")}
    if series["floor"]:
        floor = series["floor"]
        summary["output_layer_floor_ms"] = {
            kind: median_iqr([1000 * f[kind] for f in floor]) for kind in ("cpu", "wall")}
        for key in ("3", "3k4", "3k4c"):
            if f"update:{key}" not in series:
                continue
            times, clean = series[f"update:{key}"], series["update:2"]
            summary["halo_overhead_over_floor"][key] = {
                kind: median_iqr([(t[kind] - c[kind]) / f[kind]
                                  for t, c, f in zip(times, clean, floor)])
                for kind in ("cpu", "wall")
            }
    lstm = series["generate:lstm"]
    for name in (key.split(":", 1)[1] for key in series if key.startswith("generate:")):
        runs = series[f"generate:{name}"]
        summary["generation"][name] = {
            "sentences": runs[0]["sentences"],
            "tokens_per_sentence": [r["tokens"] / r["sentences"] for r in runs],
        }
        for kind in ("cpu", "wall"):
            summary["generation"][name][kind] = {
                "sentences_per_s": median_iqr([r["sentences"] / r[kind] for r in runs]),
                "tokens_per_s": median_iqr([r["tokens"] / r[kind] for r in runs]),
                "ratio_to_lstm": ratio_summary([r["sentences"] / r[kind] for r in runs],
                                               [r["sentences"] / r[kind] for r in lstm]),
            }
    return summary


def check_targets(summary: dict, kind: str) -> dict:
    """Compare the medians of one clock (``cpu`` or ``wall``) with the targets in the README."""
    rows, generation = summary["rows"], summary["generation"]
    overhead = summary["halo_overhead_over_floor"]
    checks = []  # (name, median, limit, whether the median must stay at or below the limit)
    if "3" in overhead:
        checks.append(("Halo overhead of K=1, in output-layer passes",
                       overhead["3"][kind]["median"], 1.05, True))
    if "3k4" in overhead:
        checks.append(("Halo overhead of K=4, in output-layer passes",
                       overhead["3k4"][kind]["median"], 4.0, True))
    if "2" in rows:
        checks.append(("halo_lstm time per update over lstm",
                       rows["2"][kind]["ratio_to_row_1"]["median"], 1.0, True))
    if "2f" in rows:
        checks.append(("halo_lstm --input-feeding time per update over lstm",
                       rows["2f"][kind]["ratio_to_row_1"]["median"], 1.0, True))
    if "halo_lstm" in generation:
        checks.append(("halo_lstm beam-search throughput over lstm",
                       generation["halo_lstm"][kind]["ratio_to_lstm"]["median"], 1.0, False))
    return {
        name: {"median": median, "limit": limit, "at_most": at_most,
               "holds": median <= limit if at_most else median >= limit}
        for name, median, limit, at_most in checks
    }


def spread(stats: dict, digits: int) -> str:
    """Format a median with its interquartile range."""
    return (f"{stats['median']:.{digits}f} "
            f"[{stats['q1']:.{digits}f}, {stats['q3']:.{digits}f}]")


def peak_cell(peak_mib) -> str:
    """Format a peak memory in MiB, or "-" where it was not measured (``None``)."""
    return "-" if peak_mib is None else f"{peak_mib:.0f}"


def table(summary: dict, memory: dict, rows, kind: str) -> str:
    """Return the results as a Markdown table for one clock (``cpu`` or ``wall``)."""
    lines = [
        f"| row | configuration | ms per update ({kind}) | ratio to row 1 | peak MiB "
        "| sentences/s, beam | ratio to row 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        stats = summary["rows"][row.key][kind]
        generation = summary["generation"].get(row.model, {}).get(kind)
        gen_cells = (f"{spread(generation['sentences_per_s'], 1)} | "
                     f"{spread(generation['ratio_to_lstm'], 2)}") if generation else "- | -"
        lines.append(
            f"| {row.key} | {row.label} | {spread(stats['update_ms'], 0)} "
            f"| {spread(stats['ratio_to_row_1'], 2)} | {peak_cell(memory[row.key]['peak_mib'])} "
            f"| {gen_cells} |")
    if "output_layer_floor_ms" in summary:
        lines.append("")
        lines.append(f"- Output layer alone (floor): "
                     f"{spread(summary['output_layer_floor_ms'][kind], 0)} ms")
        for key, stats in summary["halo_overhead_over_floor"].items():
            lines.append(f"- Halo overhead of row {key} over row 2, in floors: "
                         f"{spread(stats[kind], 2)}")
    if "class_mass_ms" in summary:
        lines.append(f"- After the projection, on the same logits: log-softmax and NLL "
                     f"{spread(summary['log_softmax_nll_ms'][kind], 0)} ms, Halo class "
                     f"reduction {spread(summary['class_mass_ms'][kind], 0)} ms")
    return "\n".join(lines)
