"""Turn results.json into plots (PNG, matplotlib) and a one-minute Markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

SYSTEMS = ("ours", "static", "baseline", "int8", "openai", "llamacpp", "vllm-engine", "vllm")
COLORS = {"ours": "tab:green", "static": "tab:orange", "baseline": "tab:red",
          "int8": "tab:purple", "openai": "tab:blue", "llamacpp": "tab:gray",
          "vllm-engine": "tab:cyan", "vllm": "tab:brown"}
HEADLINE = ("ours", "static", "baseline")  # what issue 7's targets compare
PLOTS = ("throughput.png", "latency.png", "headline.png", "perf_analyzer.png")


def level(results: dict[str, Any], system: str, workload: str,
          concurrency: int) -> Optional[dict[str, Any]]:
    for row in results["loadgen"]:
        if (row["system"], row["workload"], row["concurrency"]) == (system, workload,
                                                                     concurrency):
            return row
    return None


def _pct(row: Optional[dict[str, Any]], metric: str, p: str) -> Optional[float]:
    if row is None or not row.get(metric):
        return None
    return row[metric].get(p)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The comparison issue 7 asks for: tokens/s at N clients, TTFT at M streams, ratios."""
    plan = results["meta"]["plan"]
    workload = plan["headline_workload"]
    c_tput, c_ttft = plan["headline_concurrency"], plan["ttft_concurrency"]
    out: dict[str, Any] = {"workload": workload, "throughput_concurrency": c_tput,
                           "ttft_concurrency": c_ttft, "systems": {}}
    for system in HEADLINE:
        big, small = level(results, system, workload, c_tput), level(results, system, workload,
                                                                     c_ttft)
        if big is None and small is None:
            continue
        out["systems"][system] = {
            "output_tokens_per_s": big["output_tokens_per_s"] if big else None,
            "ttft_p50_ms": _pct(small, "ttft_ms", "p50"),
            "ttft_p95_ms": _pct(small, "ttft_ms", "p95"),
        }

    def ratio(a: str, b: str, key: str) -> Optional[float]:
        x = out["systems"].get(a, {}).get(key)
        y = out["systems"].get(b, {}).get(key)
        return round(x / y, 2) if x and y else None

    out["ratios"] = {"ours_over_baseline_tokens": ratio("ours", "baseline",
                                                        "output_tokens_per_s"),
                     "ours_over_static_tokens": ratio("ours", "static", "output_tokens_per_s")}
    ours = out["systems"].get("ours", {})
    static = out["systems"].get("static", {})
    targets = {}
    if out["ratios"]["ours_over_baseline_tokens"] is not None:
        targets["tokens/s >= 8x baseline"] = out["ratios"]["ours_over_baseline_tokens"] >= 8
    if out["ratios"]["ours_over_static_tokens"] is not None:
        targets["tokens/s >= 1.5x static"] = out["ratios"]["ours_over_static_tokens"] >= 1.5
    if ours.get("ttft_p50_ms") is not None and static.get("ttft_p50_ms") is not None:
        targets["TTFT p50 and p95 below static's"] = (
            ours["ttft_p50_ms"] < static["ttft_p50_ms"]
            and (ours.get("ttft_p95_ms") or 0) < (static.get("ttft_p95_ms") or 0))
    if ours.get("ttft_p50_ms") is not None:
        targets[f"TTFT p50 at {c_ttft} streams < 100 ms"] = ours["ttft_p50_ms"] < 100
    out["targets"] = targets
    out["openai_overhead"] = openai_overhead(results)
    out["llamacpp"] = llamacpp_comparison(results)
    out["engines"] = engine_comparison(results)
    return out


def _beside_ours(results: dict[str, Any], system: str) -> list[tuple[dict, dict]]:
    """(the system's row, ours at the same workload and concurrency), where both produced."""
    pairs = []
    for row in results["loadgen"]:
        if row["system"] != system:
            continue
        ours = level(results, "ours", row["workload"], row["concurrency"])
        if ours is not None and ours["output_tokens_per_s"] and row["output_tokens_per_s"]:
            pairs.append((row, ours))
    return sorted(pairs, key=lambda pair: (pair[0]["workload"], pair[0]["concurrency"]))


def llamacpp_comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours through the gateway against llama.cpp's own server, level by level."""
    rows = []
    for row, ours in _beside_ours(results, "llamacpp"):
        rows.append({"workload": row["workload"], "concurrency": row["concurrency"],
                     "ours_tokens_per_s": round(ours["output_tokens_per_s"], 1),
                     "llamacpp_tokens_per_s": round(row["output_tokens_per_s"], 1),
                     "ours_over_llamacpp": round(ours["output_tokens_per_s"]
                                                 / row["output_tokens_per_s"], 3),
                     **{f"{who}_{metric}_{p}": _pct(r, f"{metric}_ms", p)
                        for who, r in (("ours", ours), ("llamacpp", row))
                        for metric in ("ttft", "itl") for p in ("p50", "p95")}})
    return rows


def engine_comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Both engines through the stack's OpenAI API against vLLM's own server, level by level
    (issue 13: the vLLM engine in the stack >= 0.9x bare vLLM, TTFT p50 <= +5 ms)."""
    rows = []
    for peer in (r for r in results["loadgen"] if r["system"] == "vllm"):
        if not peer["output_tokens_per_s"]:
            continue
        row: dict[str, Any] = {"workload": peer["workload"], "concurrency": peer["concurrency"],
                               "vllm_tokens_per_s": round(peer["output_tokens_per_s"], 1),
                               "vllm_ttft_p50_ms": _pct(peer, "ttft_ms", "p50")}
        for system, key in (("openai", "transformers"), ("vllm-engine", "vllm_engine")):
            mine = level(results, system, peer["workload"], peer["concurrency"])
            if mine and mine["output_tokens_per_s"]:
                row[f"{key}_tokens_per_s"] = round(mine["output_tokens_per_s"], 1)
                row[f"{key}_over_vllm"] = round(mine["output_tokens_per_s"]
                                                / peer["output_tokens_per_s"], 3)
                row[f"{key}_ttft_p50_ms"] = _pct(mine, "ttft_ms", "p50")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["workload"], r["concurrency"]))


def openai_overhead(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI path (/v1/chat/completions) against generate_stream, level by level: the
    share of output tokens/s it keeps and the TTFT p50 it adds (issue 12: >= 0.9x, <= +3 ms
    at 32 streams)."""
    rows = []
    for row, ours in _beside_ours(results, "openai"):
        ttft, ours_ttft = _pct(row, "ttft_ms", "p50"), _pct(ours, "ttft_ms", "p50")
        rows.append({"workload": row["workload"], "concurrency": row["concurrency"],
                     "tokens_per_s": round(row["output_tokens_per_s"], 1),
                     "generate_stream_tokens_per_s": round(ours["output_tokens_per_s"], 1),
                     "tokens_ratio": round(row["output_tokens_per_s"]
                                           / ours["output_tokens_per_s"], 3),
                     "ttft_p50_ms": ttft, "generate_stream_ttft_p50_ms": ours_ttft,
                     "ttft_p50_added_ms": (round(ttft - ours_ttft, 2)
                                           if ttft is not None and ours_ttft is not None
                                           else None)})
    return rows


# ---- plots ----------------------------------------------------------------------------

def _series(results: dict[str, Any], system: str, workload: str, key: str,
            p: Optional[str] = None) -> tuple[list[int], list[float]]:
    rows = sorted((r for r in results["loadgen"]
                   if r["system"] == system and r["workload"] == workload),
                  key=lambda r: r["concurrency"])
    xs, ys = [], []
    for r in rows:
        value = r.get(key) if p is None else _pct(r, key, p)
        if value is not None:
            xs.append(r["concurrency"])
            ys.append(value)
    return xs, ys


def _label(results: dict[str, Any], system: str) -> str:
    return results["systems"].get(system, {}).get("label", system)


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")
# Minor ticks of a log axis: label only 2x and 5x, so short ranges still read and long ones
# stay uncluttered.
SOME = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "25" else "")


def _concurrency_axis(ax: Any, results: Optional[dict[str, Any]] = None) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.grid(True, which="both", alpha=0.3)
    levels = sorted({r["concurrency"] for r in (results or {}).get("loadgen", [])})
    if levels:
        ax.set_xticks(levels)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend(ax: Any, **options: Any) -> None:
    if ax.has_data():
        ax.legend(**options)
    else:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)


def _log_y(ax: Any) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(SOME)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    workloads = results["meta"]["workloads_run"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for system in SYSTEMS:
            xs, ys = _series(results, system, workload, "output_tokens_per_s")
            if xs:
                ax.plot(xs, ys, "o-", color=COLORS[system], label=_label(results, system))
        _concurrency_axis(ax, results)
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"throughput, {workload} workload")
        _legend(ax, fontsize=8)
    fig.suptitle(results["meta"]["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    workloads = results["meta"]["workloads_run"]
    metrics = (("ttft_ms", "time to first token (ms)"), ("e2e_ms", "end-to-end latency (ms)"))
    styles = {"p50": "o-", "p95": "s--", "p99": "^:"}
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 4 * len(workloads)), squeeze=False)
    for row, workload in enumerate(workloads):
        for col, (metric, title) in enumerate(metrics):
            ax = axes[row][col]
            for system in SYSTEMS:
                for p, style in styles.items():
                    xs, ys = _series(results, system, workload, metric, p)
                    if xs:
                        ax.plot(xs, ys, style, color=COLORS[system], markersize=4,
                                label=f"{system} {p}")
            _concurrency_axis(ax, results)
            _log_y(ax)
            ax.set_ylabel("ms")
            ax.set_title(f"{title}, {workload} workload")
            _legend(ax, fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_headline(results: dict[str, Any], path: Path) -> None:
    head = results["headline"]
    systems = [s for s in HEADLINE if s in head["systems"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tput = [head["systems"][s]["output_tokens_per_s"] or 0 for s in systems]
    bars = axes[0].bar([_label(results, s) for s in systems], tput,
                       color=[COLORS[s] for s in systems])
    for bar, value in zip(bars, tput):
        axes[0].annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value),
                         ha="center", va="bottom", fontsize=8)
    axes[0].set_title(f"output tokens/s, {head['workload']} workload, "
                      f"{head['throughput_concurrency']} clients")
    width = 0.38
    for i, p in enumerate(("ttft_p50_ms", "ttft_p95_ms")):
        values = [head["systems"][s][p] or 0 for s in systems]
        axes[1].bar([x + (i - 0.5) * width for x in range(len(systems))], values, width,
                    color=[COLORS[s] for s in systems], alpha=1.0 if i == 0 else 0.55,
                    label=p.split("_")[1])
    axes[1].set_xticks(range(len(systems)), [_label(results, s) for s in systems])
    _log_y(axes[1])
    axes[1].set_title(f"time to first token (ms), {head['ttft_concurrency']} streams")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(results["meta"]["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_perf_analyzer(results: dict[str, Any], path: Path) -> None:
    rows = [r for r in results.get("perf_analyzer", []) if r.get("ok")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for protocol, marker in (("http", "o-"), ("grpc", "s--"), ("grpc-stream", "^:")):
        sel = sorted((r for r in rows if r["protocol"] == protocol),
                     key=lambda r: r["concurrency"])
        if not sel:
            continue
        xs = [r["concurrency"] for r in sel]
        axes[0].plot(xs, [r["inferences_per_s"] for r in sel], marker, label=protocol)
        for p in ("p50_ms", "p99_ms"):
            axes[1].plot(xs, [r.get(p) for r in sel], marker, label=f"{protocol} {p[:3]}")
    for ax, title in zip(axes, ("inferences/s", "latency (ms)")):
        _concurrency_axis(ax)
        ax.set_title(f"perf_analyzer through the gateway: {title}")
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no perf_analyzer data in this run", ha="center",
                    transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_throughput(results, out_dir / "throughput.png")
    plot_latency(results, out_dir / "latency.png")
    plot_headline(results, out_dir / "headline.png")
    plot_perf_analyzer(results, out_dir / "perf_analyzer.png")
    return list(PLOTS)


# ---- Markdown -------------------------------------------------------------------------

def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "met" if value else "NOT met"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _trio(dist: Optional[dict[str, float]], keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if not dist:
        return "n/a"
    return " / ".join(f"{dist[k]:,.0f}" if dist[k] >= 10 else f"{dist[k]:.1f}" for k in keys)


def _served_int8(results: dict[str, Any]) -> list[str]:
    """Served through Triton: the `int8` system (LLM_QUANTIZATION=int8) beside `ours`."""
    rows = []
    for r in results["loadgen"]:
        if r["system"] == "int8":
            base = level(results, "ours", r["workload"], r["concurrency"])
            if base:
                rows.append(f"| {r['workload']}, {r['concurrency']} clients | "
                            f"{base['output_tokens_per_s']:,.0f} | "
                            f"{r['output_tokens_per_s']:,.0f} | "
                            f"{r['output_tokens_per_s'] / base['output_tokens_per_s']:.2f} |")
    if not rows:
        return []
    stub = {}
    for name in ("ours", "int8"):
        rss = (results["systems"].get(name, {}).get("memory") or {}).get("peak_rss_mib", {})
        stub[name] = max((v for k, v in rss.items() if "stub" in k), default=None)
    if stub["ours"] and stub["int8"]:
        rows.append(f"| largest stub's peak RSS (MiB) | {stub['ours']:,.0f} | "
                    f"{stub['int8']:,.0f} | {stub['int8'] / stub['ours']:.2f} |")
    return ["Served by Triton through the gateway (`LLM_QUANTIZATION=int8`), output tokens/s:",
            "", "| | float32 (ours) | int8 | int8 / float32 |", "|---|---:|---:|---:|",
            *rows, ""]


def markdown(results: dict[str, Any]) -> str:
    meta, head = results["meta"], results["headline"]
    lines = [f"# `make bench` summary ({meta['mode']} mode)", "",
             f"{meta['started']} · {meta['duration_s']:.0f} s · machine: {meta['machine_line']}",
             f"Command: `{meta['command']}` · commit {meta.get('commit', '?')}", "",
             "Raw data: `results.json`, `loadgen.csv`, `requests.csv`, `perf_analyzer/*.csv`. "
             "Plots: " + ", ".join(f"[{p}]({p})" for p in results.get("plots", [])), ""]

    systems = [s for s in HEADLINE if s in head["systems"]]
    others = [s for s in ("static", "baseline") if s in systems and "ours" in systems]
    lines += [f"## Headline: {head['workload']} workload", "",
              "| | " + " | ".join(_label(results, s) for s in systems) +
              "".join(f" | ours/{s}" for s in others) + " |",
              "|---|" + "---:|" * (len(systems) + len(others))]

    def row(title: str, key: str, ratio: bool) -> str:
        cells = [_f(head["systems"][s][key], 0 if "tokens" in key else 1) for s in systems]
        ours = head["systems"].get("ours", {}).get(key)

        def r(other: str) -> str:
            value = head["systems"].get(other, {}).get(key)
            return f"{ours / value:.2f}x" if ratio and ours and value else "n/a"
        return f"| {title} | " + " | ".join(cells + [r(o) for o in others]) + " |"

    lines += [row(f"output tokens/s, {head['throughput_concurrency']} clients",
                  "output_tokens_per_s", True),
              row(f"TTFT p50 (ms), {head['ttft_concurrency']} streams", "ttft_p50_ms", True),
              row(f"TTFT p95 (ms), {head['ttft_concurrency']} streams", "ttft_p95_ms", True), ""]
    if head.get("openai_overhead"):
        lines += ["## The OpenAI API against generate_stream (same workload, same run)", "",
                  "| workload | clients | OpenAI tok/s | generate_stream tok/s | kept | "
                  "TTFT p50 OpenAI | TTFT p50 generate_stream | added |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in head["openai_overhead"]:
            lines.append(f"| {r['workload']} | {r['concurrency']} | {r['tokens_per_s']:,.0f} | "
                         f"{r['generate_stream_tokens_per_s']:,.0f} | "
                         f"{r['tokens_ratio']:.2f}x | {_f(r['ttft_p50_ms'])} | "
                         f"{_f(r['generate_stream_ttft_p50_ms'])} | "
                         f"{_f(r['ttft_p50_added_ms'])} ms |")
        lines.append("")
    if head.get("llamacpp"):
        lines += ["## Against llama.cpp's server (same model as GGUF f32, same workload)", "",
                  "Latencies in ms as p50 / p95; ours through the gateway, llama.cpp direct.", "",
                  "| workload | clients | ours tok/s | llama.cpp tok/s | ours/llama.cpp | "
                  "TTFT ours | TTFT llama.cpp | ITL ours | ITL llama.cpp |",
                  "|---|---:|---:|---:|---:|---|---|---|---|"]
        for r in head["llamacpp"]:
            def pair(who: str, metric: str) -> str:
                return f"{_f(r[f'{who}_{metric}_p50'])} / {_f(r[f'{who}_{metric}_p95'])}"
            lines.append(f"| {r['workload']} | {r['concurrency']} | "
                         f"{r['ours_tokens_per_s']:,.0f} | {r['llamacpp_tokens_per_s']:,.0f} | "
                         f"{r['ours_over_llamacpp']:.2f}x | {pair('ours', 'ttft')} | "
                         f"{pair('llamacpp', 'ttft')} | {pair('ours', 'itl')} | "
                         f"{pair('llamacpp', 'itl')} |")
        lines.append("")
    if head.get("engines"):
        lines += ["## Engines against vLLM's own server (OpenAI API, same workload)", "",
                  "Ours through the gateway and the OpenAI frontend on each engine; vLLM "
                  "direct. Tokens/s (ratio to vLLM) and TTFT p50 in ms.", "",
                  "| workload | clients | transformers engine | vLLM engine | vLLM server | "
                  "TTFT transformers | TTFT vLLM engine | TTFT vLLM server |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in head["engines"]:
            def speed(key: str) -> str:
                if r.get(f"{key}_tokens_per_s") is None:
                    return "n/a"
                return f"{r[f'{key}_tokens_per_s']:,.0f} ({r[f'{key}_over_vllm']:.2f}x)"
            lines.append(f"| {r['workload']} | {r['concurrency']} | {speed('transformers')} | "
                         f"{speed('vllm_engine')} | {r['vllm_tokens_per_s']:,.0f} | "
                         f"{_f(r.get('transformers_ttft_p50_ms'))} | "
                         f"{_f(r.get('vllm_engine_ttft_p50_ms'))} | "
                         f"{_f(r['vllm_ttft_p50_ms'])} |")
        lines.append("")
    aiperf = results.get("aiperf") or {}
    if aiperf.get("output_tokens_per_s") is not None:
        lines += [f"AIPerf 0.13 on `/v1/chat/completions` (streamed, {aiperf['concurrency']} "
                  f"clients, 32 prompt + 64 output tokens, {aiperf['completed']} requests): "
                  f"{aiperf['output_tokens_per_s']:,.0f} output tokens/s, TTFT p50 "
                  f"{aiperf['ttft_p50_ms']:.1f} ms, inter-token p50 {aiperf['itl_p50_ms']:.2f} "
                  f"ms, {aiperf['errors']} errors.", ""]
    elif aiperf:
        lines += [f"AIPerf: {aiperf.get('skipped') or aiperf.get('error')}", ""]
    if head["targets"]:
        lines.append("Targets (issue 7): " + "; ".join(
            f"{name}: **{_f(ok)}**" for name, ok in head["targets"].items()) + ".")
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")

    lines += ["## Load generator (asyncio; SSE `generate_stream`, the baseline's JSON "
              "`generate`)", "",
              "Latencies in ms as p50 / p95 / p99. ITL: inter-token latency of streamed "
              "responses (n/a when the server sends the whole text in one event). Client CPU: "
              "what the load generator itself used (100 = one core; the machine has "
              f"{meta['machine']['cores']}).", "",
              "| system | workload | clients | req/s | out tok/s | TTFT | ITL | end-to-end "
              "| ok / sent | errors | client CPU % |",
              "|---|---|---:|---:|---:|---|---|---|---:|---|---:|"]
    for r in sorted(results["loadgen"], key=lambda r: (SYSTEMS.index(r["system"]),
                                                        r["workload"], r["concurrency"])):
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "-"
        if r["unfinished"]:
            errors += f" (+{r['unfinished']} cut at the time bound)"
        lines.append(f"| {r['system']} | {r['workload']} | {r['concurrency']} | "
                     f"{r['requests_per_s']:.2f} | {r['output_tokens_per_s']:,.0f} | "
                     f"{_trio(r['ttft_ms'])} | {_trio(r['itl_ms'], ('p50', 'p95'))} | "
                     f"{_trio(r['e2e_ms'])} | {r['completed']} / {r['sent']} | {errors} | "
                     f"{_f(r.get('client_cpu_percent'), 0)} |")
    lines.append("")

    perf = results.get("perf_analyzer", [])
    if perf:
        lines += ["## perf_analyzer 2.51 (ours, through the gateway, fixed workload)", "",
                  "`llm` unary over HTTP and gRPC; `llm_stream` over gRPC `--streaming` "
                  "(latency to the last response).", "",
                  "| run | model | concurrency | bounded by | infer/s | p50 ms | p95 ms | p99 ms |",
                  "|---|---|---:|---|---:|---:|---:|---:|"]
        for r in perf:
            if r.get("ok"):
                lines.append(f"| {r['protocol']} | {r.get('model', 'llm')} | {r['concurrency']} | "
                             f"{r.get('bounded_by', '')} | {r['inferences_per_s']:.2f} | {_f(r.get('p50_ms'))} | "
                             f"{_f(r.get('p95_ms'))} | {_f(r.get('p99_ms'))} |")
            else:
                lines.append(f"| {r['protocol']} | {r.get('model', 'llm')} | {r['concurrency']} | "
                             f"{r.get('bounded_by', '')} | failed: {r.get('error', '?')[:120]} "
                             f"| | | |")
        lines.append("")

    lines += ["## Memory (peak RSS during the run)", "",
              "| system | process | peak RSS (MiB) |", "|---|---|---:|"]
    for name, info in results["systems"].items():
        memory = info.get("memory") or {}
        for role, mib in memory.get("peak_rss_mib", {}).items():
            lines.append(f"| {name} | {role} | {mib:,.1f} |")
        if memory.get("gpu_peak_used_mib") is not None:
            lines.append(f"| {name} | GPU memory used (all processes) | "
                         f"{memory['gpu_peak_used_mib']:,} |")
        if info.get("skipped"):
            lines.append(f"| {name} | {info['skipped']} | |")
        elif not memory:
            lines.append(f"| {name} | not sampled (stack not started by the benchmark) | |")
    weights = results.get("weights")
    if weights:
        lines.append("")
        lines.append("Served model weights by dtype: " + ", ".join(
            f"{dtype} {size / 1e6:.2f} MB" for dtype, size in weights.items()) + ".")
    lines.append("")

    quant = results.get("quantization")
    if quant and "none" in quant:
        a, b = quant["none"], quant["int8"]

        def q(key: str, getter: Any, fmt: str) -> str:
            x, y = getter(a), getter(b)
            return f"| {key} | {fmt.format(x)} | {fmt.format(y)} | {y / x:.2f} |"
        lines += ["## Full precision vs 8-bit (in-process, CPU, same run)", "",
                  f"int8: {quant['method']['int8']}.", "",
                  "| | float32 | int8 | int8 / float32 |", "|---|---:|---:|---:|",
                  q("weight bytes", lambda d: d["weight_bytes_total"], "{:,}"),
                  q("tokens/s, batch 1", lambda d: d["tokens_per_s_batch1"], "{:,.0f}"),
                  q("tokens/s, batch 8", lambda d: d["tokens_per_s_batch8"], "{:,.0f}"),
                  q("perplexity on heldout.txt", lambda d: d["perplexity"]["perplexity"],
                    "{:.2f}"),
                  "", f"Perplexity over {a['perplexity']['tokens']:,} held-out tokens in "
                      f"windows of {a['perplexity']['window']}; tokens/s: the served executor, "
                      f"greedy, {quant['new_tokens']} new tokens, best of the repeats.", ""]
        lines += _served_int8(results)

    lines += ["## Workloads and method", ""]
    for name, info in meta["workloads"].items():
        lines.append(f"- **{name}**: {info['description']}; {info['summary']['requests']} "
                     f"requests prepared, prompt p50/p95 {info['summary']['prompt_tokens']['p50']}"
                     f"/{info['summary']['prompt_tokens']['p95']} tokens, output p50/p95 "
                     f"{info['summary']['output_tokens']['p50']}/"
                     f"{info['summary']['output_tokens']['p95']} tokens.")
    for name, info in results["systems"].items():
        lines.append(f"- **{name}** = {info['label']}: {info['url']} "
                     f"({'through the gateway' if info['via_gateway'] else 'direct'}); "
                     + "; ".join(info.get("notes", [])))
    plan = meta["plan"]
    lines += [f"- Closed loop per level: each client sends its next request when the previous "
              f"one ends; at most {plan['max_requests']} requests and {plan['max_seconds']} s a "
              f"level (then {plan['grace_s']} s to finish). Throughput = output tokens of "
              f"finished requests / (last finish - level start).", ""]
    return "\n".join(lines)
