#!/usr/bin/env python3
"""Compares result documents of `hetmoe bench --out FILE.json` side by side.

    compare_bench.py A.json B.json [C.json ...] [--markdown OUT.md] [--plots DIR]
                     [--baseline BASE.json --fail-above 5%] [--label NAME ...]

Needs Debian's /usr/bin/python3 (standard library; matplotlib only for --plots).

Every run of every document is one column, labelled `<backend> <device> @<commit>` or by
--label (one name per document, in order; the backend is appended when a document holds
several runs). The --baseline document, when given, is the first column and counts towards
the two documents needed.

Prints a Markdown report to stdout (and writes it to --markdown OUT.md): a header table with
each column's host, date, hetmoe version and commit, libtorch, dtype and config, then one row
per figure with each column's median and, for every column after the first, its ratio to the
first column, marked better or worse by the figure's `better` direction. Warns on stderr when
the columns ran different configs or dtypes.

--plots DIR writes PNG bar charts into DIR (created): ops.png (the op.* timings in ms),
throughput.png (train.tokens_per_s), utilisation.png (train.mfu, train.mfu_peak and every
figure's utilisation) and cost.png (cost.per_1T_tokens); a chart no column has figures for is
skipped with a note.

--baseline BASE.json --fail-above P (P as 5% or 0.05) compares every run of the other
documents with the baseline's run of the same backend, prints one line per figure that is
worse than the baseline by more than P in its `better` direction, and exits 1 if there is any.
A median that is not a number (null in the document) is such a line too, and so, on the
baseline's device, is a figure of the baseline that the run lacks (unless it lacks it only for
want of a device catalog); figures that cannot be judged get a note on stderr.

Exit status: 0 done (no regressions), 1 regressions beyond P, 2 bad usage or input (one line
`compare_bench.py: error: ...` on stderr).
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

PROG = "compare_bench.py"
SCHEMA = "hetmoe-bench/1"
MISSING = "\u2014"  # an em dash: the column has no such figure
USAGE = ("%(prog)s A.json B.json [C.json ...] [--markdown OUT.md] [--plots DIR] "
         "[--baseline BASE.json --fail-above 5%%] [--label NAME ...]")
DIRECTIONS = ("lower", "higher")
MS_PER_UNIT = {"s": 1e3, "ms": 1.0, "us": 1e-3, "\u00b5s": 1e-3, "ns": 1e-6}
MFU_FIGURES = ("train.mfu", "train.mfu_peak")
DEVICE_LABEL_MAX = 40


class BenchError(Exception):
    """Bad usage or input: reported as one line on stderr, exit status 2."""


def note(message):
    print(f"{PROG}: note: {message}", file=sys.stderr)


# ---------------------------------------------------------------- loading and validation

def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(obj, key, kind, where):
    """obj[key], checked to be of `kind` ("string", "number", "list" or "object")."""
    checks = {"string": lambda v: isinstance(v, str), "number": is_number,
              "list": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}
    if key not in obj:
        raise BenchError(f'{where}: missing "{key}"')
    value = obj[key]
    if not checks[kind](value):
        raise BenchError(f'{where}: "{key}" is not a {kind} (got {json.dumps(value)[:40]})')
    return value


def validate_figure(figure, where):
    if not isinstance(figure, dict):
        raise BenchError(f"{where}: not an object")
    name = require(figure, "name", "string", where)
    where = f"{where} ({name})"
    require(figure, "unit", "string", where)
    if "median" in figure and figure["median"] is None:
        figure["median"] = math.nan  # hetmoe bench writes a NaN or infinite median as null
    require(figure, "median", "number", where)


def validate_document(doc, path):
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: not a JSON object")
    schema = doc.get("schema")
    if schema != SCHEMA:
        found = "missing" if schema is None else f"{json.dumps(schema)[:40]}"
        raise BenchError(f'{path}: "schema" is {found}, expected "{SCHEMA}"')
    runs = require(doc, "runs", "list", path)
    if not runs:
        raise BenchError(f'{path}: "runs" is empty')
    for r, run in enumerate(runs):
        where = f"{path}: runs[{r}]"
        if not isinstance(run, dict):
            raise BenchError(f"{where}: not an object")
        require(run, "backend", "string", where)
        figures = require(run, "figures", "list", where)
        for f, figure in enumerate(figures):
            validate_figure(figure, f"{where}.figures[{f}]")


def load_document(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise BenchError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise BenchError(f"{path}: not valid JSON: {e}") from None
    validate_document(doc, path)
    return doc


def lookup(obj, *keys):
    """obj[k1][k2]..., or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def text(value):
    return "?" if value is None else str(value)


# ---------------------------------------------------------------- columns

@dataclass
class Column:
    letter: str
    label: str
    path: str
    doc: dict
    run: dict
    figures: dict  # figure name -> figure object, in document order

    @property
    def backend(self):
        return self.run["backend"]

    def median(self, name):
        figure = self.figures.get(name)
        return None if figure is None else figure["median"]


def short_device(device):
    words = str(device).replace("(R)", "").replace("(TM)", "").split()
    short = " ".join(w for w in words if w not in ("CPU", "Processor"))
    if len(short) > DEVICE_LABEL_MAX:
        short = short[:DEVICE_LABEL_MAX - 3].rstrip() + "..."
    return short


def default_label(doc, run):
    parts = [run["backend"]]
    if run.get("device"):
        parts.append(short_device(run["device"]))
    commit = lookup(doc, "hetmoe", "commit")
    if commit:
        parts.append("@" + str(commit)[:7])
    return " ".join(parts)


def column_letter(index):
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def build_columns(documents, labels):
    """documents: [(path, doc)]; labels: one per document, or None for the defaults."""
    columns = []
    for d, (path, doc) in enumerate(documents):
        runs = doc["runs"]
        for run in runs:
            if labels is None:
                label = default_label(doc, run)
            else:
                label = labels[d] + (f" {run['backend']}" if len(runs) > 1 else "")
            figures = {}
            for figure in run["figures"]:
                figures.setdefault(figure["name"], figure)
            columns.append(Column(column_letter(len(columns)), label, path, doc, run, figures))
    disambiguate(columns)
    return columns


def disambiguate(columns):
    """Appends the file name to labels that several columns share."""
    counts = {}
    for column in columns:
        counts[column.label] = counts.get(column.label, 0) + 1
    for column in columns:
        if counts[column.label] > 1:
            column.label += f" [{os.path.basename(column.path)}]"


def figure_names(columns):
    names = {}
    for column in columns:
        for name in column.figures:
            names.setdefault(name, None)
    return list(names)


# ---------------------------------------------------------------- formatting

def fmt_num(value, sig=4, strip=True):
    """`value` to `sig` significant figures, plainly written (no exponent above 1e-3); strip
    drops trailing zeros after the decimal point."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -3:
        return f"{value:.{sig - 1}e}"
    if magnitude >= sig - 1:
        return f"{round(value, sig - 1 - magnitude):,.0f}"
    digits = f"{value:.{sig - 1 - magnitude}f}"
    return digits.rstrip("0").rstrip(".") if strip else digits


def fmt_percent(fraction):
    return fmt_num(fraction * 100, 3) + "%"


def fmt_ratio(ratio):
    return fmt_num(ratio, 3, strip=False)


def direction(figure, other=None):
    """The figure's `better` direction ("lower"/"higher"), else the other's, else None."""
    for candidate in (figure, other):
        if candidate is not None and candidate.get("better") in DIRECTIONS:
            return candidate["better"]
    return None


def ratio_cell(figure, base):
    if figure is None or base is None:
        return MISSING
    if figure["unit"] != base["unit"]:
        return "unit differs"
    value, reference = figure["median"], base["median"]
    if reference == 0 or not (math.isfinite(value) and math.isfinite(reference)):
        return MISSING
    ratio = value / reference
    shown = fmt_ratio(ratio)
    better = direction(figure, base)
    if better is None or shown == "1.00":
        return f"{shown}x"
    improved = ratio < 1 if better == "lower" else ratio > 1
    return f"{shown}x {'better' if improved else 'worse'}"


def value_cell(figure):
    return MISSING if figure is None else f"{fmt_num(figure['median'])} {figure['unit']}"


def markdown_table(headers, rows, right_aligned=()):
    """A padded Markdown table; columns whose index is in right_aligned align right."""
    def escape(cell):
        return str(cell).replace("|", "\\|")

    cells = [[escape(c) for c in row] for row in [headers] + rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(headers))]

    def line(row):
        padded = (c.rjust(w) if i in right_aligned else c.ljust(w)
                  for i, (c, w) in enumerate(zip(row, widths)))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right_aligned else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


# ---------------------------------------------------------------- report

def both(main, detail):
    return f"{text(main)} ({text(detail)})"


def header_table(columns):
    rows = []
    for c in columns:
        hetmoe = both(lookup(c.doc, "hetmoe", "version"), lookup(c.doc, "hetmoe", "commit"))
        config = both(lookup(c.doc, "config", "path"), lookup(c.doc, "config", "hash"))
        rows.append([c.letter, c.label, text(c.doc.get("host")), text(c.doc.get("date")), hetmoe,
                     text(c.doc.get("libtorch")), text(c.doc.get("dtype")), config,
                     os.path.basename(c.path)])
    headers = ["", "column", "host", "date", "hetmoe", "libtorch", "dtype", "config", "file"]
    return markdown_table(headers, rows)


def workload_mismatch(columns):
    """One sentence naming the config hashes or dtypes that differ between columns, or None."""
    differences = []
    for what, keys in (("config hash", ("config", "hash")), ("dtype", ("dtype",))):
        letters = {}  # value -> the letters of the columns that have it
        for c in columns:
            letters.setdefault(text(lookup(c.doc, *keys)), []).append(c.letter)
        if len(letters) > 1:
            listed = "; ".join(f"{','.join(ls)}: {v}" for v, ls in letters.items())
            differences.append(f"{what} differs ({listed})")
    if not differences:
        return None
    return "; ".join(differences) + ": the columns measure different workloads"


def figure_table(columns):
    first, others = columns[0], columns[1:]
    headers = (["figure"] + [f"{c.letter}: {c.label}" for c in columns]
               + [f"{c.letter}/{first.letter}" for c in others])
    rows = []
    for name in figure_names(columns):
        base = first.figures.get(name)
        rows.append([name] + [value_cell(c.figures.get(name)) for c in columns]
                    + [ratio_cell(c.figures.get(name), base) for c in others])
    return markdown_table(headers, rows, right_aligned=range(1, len(headers)))


def report(columns, mismatch):
    parts = ["# hetmoe bench comparison", "", header_table(columns), ""]
    if mismatch:
        parts += [f"> **Warning:** {mismatch}.", ""]
    parts += [f"Medians; ratios are each column's median over column {columns[0].letter}'s, "
              "judged by each figure's `better` direction.", "", figure_table(columns)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots

def op_ms(column, name):
    figure = column.figures.get(name)
    if not name.startswith("op.") or figure is None or figure["unit"] not in MS_PER_UNIT:
        return None
    return figure["median"] * MS_PER_UNIT[figure["unit"]]


def median_of(*names):
    def value(column, name):
        return column.median(name) if name in names else None
    return value


def utilisation(column, name):
    if name in MFU_FIGURES:
        return column.median(name)
    share = column.figures.get(name, {}).get("utilisation")
    return share if is_number(share) else None


@dataclass
class Chart:
    filename: str
    title: str
    ylabel: str  # {unit}: the unit of the first charted figure
    value: object  # value(column, name): the bar's height, or None for no bar
    log_scale: bool = True  # when the bars span more than LOG_SPREAD


LOG_SPREAD = 50
CHARTS = (
    Chart("ops.png", "Operator time per call", "ms", op_ms),
    Chart("throughput.png", "Training throughput", "{unit}", median_of("train.tokens_per_s")),
    Chart("utilisation.png", "Utilisation of the measured ceilings "
          "(train.mfu_peak: of the nominal peak)", "fraction", utilisation, log_scale=False),
    Chart("cost.png", "Training cost", "{unit} per 10^12 tokens",
          median_of("cost.per_1T_tokens")),
)


def bar_chart(plt, path, chart, ylabel, groups, columns):
    """Grouped bars: one group per figure name, one bar per column."""
    width = 0.8 / len(columns)
    crowded = len(groups) > 3  # rotated tick labels, no value labels
    group_inches = 0.4 + 0.3 * len(columns)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(groups) * group_inches), 4.8))
    heights = []
    for i, column in enumerate(columns):
        points = [(g + (i - (len(columns) - 1) / 2) * width, chart.value(column, name))
                  for g, name in enumerate(groups)]
        points = [(x, h) for x, h in points if h is not None]
        if not points:
            continue
        heights += [h for _, h in points]
        # a column keeps its colour from chart to chart
        bars = ax.bar([x for x, _ in points], [h for _, h in points], width, color=f"C{i % 10}",
                      label=f"{column.letter}: {column.label}")
        if not crowded:
            ax.bar_label(bars, labels=[fmt_num(h) for _, h in points], fontsize=8)
    positive = [h for h in heights if h > 0]
    if chart.log_scale and positive and max(positive) / min(positive) > LOG_SPREAD:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_title(chart.title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def import_pyplot():
    """matplotlib.pyplot on the Agg backend (imported only for --plots: it takes a while)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plots needs matplotlib (run with Debian's /usr/bin/python3)") from None
    return plt


def write_plots(plt, columns, out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{out_dir}: cannot create: {e.strerror or e}") from None
    names = figure_names(columns)
    for chart in CHARTS:
        groups = [n for n in names if any(chart.value(c, n) is not None for c in columns)]
        if not groups:
            note(f"{chart.filename} skipped: no column has its figures")
            continue
        unit = next(c.figures[n]["unit"] for n in groups for c in columns if n in c.figures)
        path = os.path.join(out_dir, chart.filename)
        try:
            bar_chart(plt, path, chart, chart.ylabel.format(unit=unit), groups, columns)
        except OSError as e:
            raise BenchError(f"{path}: cannot write: {e.strerror or e}") from None


# ---------------------------------------------------------------- regressions

def parse_threshold(value):
    """`5%` or `0.05` as the fraction 0.05."""
    raw = value.strip()
    try:
        fraction = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise BenchError(f"--fail-above: {value!r} is not a percentage like 5% or a fraction "
                         "like 0.05") from None
    if not math.isfinite(fraction) or fraction < 0:
        raise BenchError(f"--fail-above: {value!r} must be a non-negative percentage")
    if not raw.endswith("%") and fraction >= 1:
        raise BenchError(f"--fail-above: {value!r} is ambiguous; write {raw}% or "
                         f"{fraction / 100:g}")
    return fraction


# Figures a run has only with a catalog entry for its device (cost) or, on some devices, only
# with the catalog's peak.
CATALOG_FIGURES = ("cost.per_1T_tokens", "train.mfu_peak")


def worsening(figure, base):
    """How much worse figure is than base, as a fraction of base (inf when the new figure is not
    a number); None when it cannot be judged: see why_not_judged."""
    if base is None or figure["unit"] != base["unit"] or direction(figure, base) is None:
        return None
    new, old = figure["median"], base["median"]
    if not math.isfinite(old) or old <= 0:
        return None
    if not math.isfinite(new):
        return math.inf
    return (new - old) / old if direction(figure, base) == "lower" else (old - new) / old


def why_not_judged(figure, base):
    if figure["unit"] != base["unit"]:
        return f"units differ ({base['unit']} in the baseline, {figure['unit']} here)"
    if direction(figure, base) is None:
        return "the documents disagree on whether higher or lower is better"
    return f"the baseline's median is {fmt_num(base['median'])}, not a positive number"


def find_regressions(baseline, others, limit):
    """Regression lines of every column in others against baseline's column of its backend,
    and how many figures were judged. On the baseline's own device, a figure of the baseline that
    the new run lacks is a regression too: a run whose training step broke must not pass."""
    by_backend = {}
    for column in baseline:
        by_backend.setdefault(column.backend, column)
    lines, judged = [], 0
    for column in others:
        base = by_backend.get(column.backend)
        if base is None:
            note(f"{column.label}: not judged, the baseline {baseline[0].path} has no "
                 f"{column.backend} run")
            continue
        same_device = column.run.get("device") == base.run.get("device")
        # Without a device catalog (run from elsewhere, no HETMOE_DEVICES) a run has no price
        # and perhaps no nominal peak: those figures are not the run's fault.
        lost_catalog = base.run.get("catalog_entry") and not column.run.get("catalog_entry")
        for name in base.figures:
            if name in column.figures:
                continue
            if lost_catalog and name in CATALOG_FIGURES:
                note(f"{column.label}: {name} not judged, this run found no device catalog")
            elif same_device:
                lines.append(f"regression: {column.label}: {name} is in the baseline but missing "
                             "from this run (compare runs made with the same options)")
            else:  # another device may lack a catalog entry (no price, no nominal peak)
                note(f"{column.label}: {name} not judged, this device's run has no such figure")
        for name, figure in column.figures.items():
            base_figure = base.figures.get(name)
            change = worsening(figure, base_figure)
            if change is None:
                if base_figure is not None:
                    note(f"{column.label}: {name} not judged: {why_not_judged(figure, base_figure)}")
                continue
            judged += 1
            if change > limit:
                worse = "not a number" if math.isinf(change) else f"+{change * 100:.1f}% worse"
                lines.append(
                    f"regression: {column.label}: {name} {fmt_num(figure['median'])} vs "
                    f"{fmt_num(base.figures[name]['median'])} {figure['unit']} "
                    f"({worse}, limit {fmt_percent(limit)})")
    return lines, judged


# ---------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG, usage=USAGE,
        description="Compares result documents of `hetmoe bench --out FILE.json`.")
    parser.add_argument("documents", nargs="*", metavar="FILE.json",
                        help="bench result documents (schema hetmoe-bench/1)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the report here")
    parser.add_argument("--plots", metavar="DIR", help="write PNG bar charts into DIR")
    parser.add_argument("--baseline", metavar="BASE.json",
                        help="the reference document: the first column, and what "
                             "--fail-above judges against")
    parser.add_argument("--fail-above", metavar="P",
                        help="exit 1 when a figure is worse than the baseline by more than P "
                             "(5%% or 0.05)")
    parser.add_argument("--label", nargs="+", action="extend", metavar="NAME",
                        help="column names, one per document in order (baseline first)")
    args = parser.parse_args(argv)
    if (args.baseline is None) != (args.fail_above is None):
        parser.error("--baseline and --fail-above go together")
    return args


def write_markdown(path, content):
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    except OSError as e:
        raise BenchError(f"{path}: cannot write: {e.strerror or e}") from None


def run(args):
    limit = parse_threshold(args.fail_above) if args.fail_above is not None else None
    plt = import_pyplot() if args.plots else None
    paths = ([args.baseline] if args.baseline else []) + args.documents
    if len(paths) < 2:
        raise BenchError(f"need at least two documents to compare, got {len(paths)}")
    if args.label is not None and len(args.label) != len(paths):
        raise BenchError(f"--label: {len(args.label)} names for {len(paths)} documents")
    documents = [(path, load_document(path)) for path in paths]
    columns = build_columns(documents, args.label)

    mismatch = workload_mismatch(columns)
    if mismatch:
        print(f"{PROG}: warning: {mismatch}", file=sys.stderr)
    content = report(columns, mismatch)
    sys.stdout.write(content)
    if args.markdown:
        write_markdown(args.markdown, content)
    if args.plots:
        write_plots(plt, columns, args.plots)
    if limit is None:
        return 0

    n_baseline = len(documents[0][1]["runs"])
    lines, judged = find_regressions(columns[:n_baseline], columns[n_baseline:], limit)
    print()
    for line in lines:
        print(line)
    if lines:
        return 1
    print(f"no regressions beyond {fmt_percent(limit)} ({judged} figures judged)")
    return 0


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        sys.stdout.flush()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
