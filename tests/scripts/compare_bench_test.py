"""Tests of scripts/compare_bench.py, run as a subprocess on the fixtures in tests/fixtures/bench.

    /usr/bin/python3 tests/scripts/compare_bench_test.py

The --plots test needs matplotlib (Debian's python3-matplotlib) and is skipped without it.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "compare_bench.py")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "bench")
CPU = os.path.join(FIXTURES, "cpu-56935d8.json")
CPU_LATER = os.path.join(FIXTURES, "cpu-7c1e2f4.json")
CUDA = os.path.join(FIXTURES, "cuda-h100-56935d8.json")
CPU_TINY = os.path.join(FIXTURES, "cpu-tiny-config.json")
BAD_SCHEMA = os.path.join(FIXTURES, "bad-schema.json")
MISSING_MEDIAN = os.path.join(FIXTURES, "missing-median.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compare(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=60)


def median(path, name, run=0):
    with open(path, encoding="utf-8") as f:
        figures = json.load(f)["runs"][run]["figures"]
    return next(f["median"] for f in figures if f["name"] == name)


def figure_table(markdown):
    """The table whose first header is `figure`: (headers, {figure name: cells})."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| figure "))
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in lines[start:] if line.startswith("|")]
    headers, rows = split[0], split[2:]  # split[1]: the alignment rule
    return headers, {row[0]: row for row in rows}


def ratio(cell):
    """`42.9x better` -> (42.9, "better"); `1.00x` -> (1.0, None)."""
    number, _, verdict = cell.partition("x")
    return float(number), verdict.strip() or None


class TableTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.result = compare(CPU, CUDA, CPU_LATER)
        cls.headers, cls.rows = figure_table(cls.result.stdout)

    def test_succeeds_without_warning(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        self.assertNotIn("warning", self.result.stderr)

    def test_one_column_per_run_and_a_ratio_per_later_column(self):
        # the CUDA document holds two runs: the H100 and its host's CPU
        self.assertEqual(len(self.headers), 1 + 4 + 3)
        self.assertTrue(self.headers[1].startswith("A: cpu AMD EPYC 7B13"), self.headers)
        self.assertIn("@56935d8", self.headers[1])
        self.assertTrue(self.headers[2].startswith("B: cuda NVIDIA H100"), self.headers)
        self.assertTrue(self.headers[3].startswith("C: cpu Intel Xeon Platinum 8480+"),
                        self.headers)
        self.assertIn("@7c1e2f4", self.headers[4])
        self.assertEqual(self.headers[5:], ["B/A", "C/A", "D/A"])

    def test_one_row_per_figure_in_first_seen_order(self):
        names = list(self.rows)
        self.assertEqual(names[:2], ["ceiling.gemm", "ceiling.copy"])
        for name in ("op.route.forward", "op.experts.backward", "train.tokens_per_s",
                     "train.mfu_peak", "memory.peak", "cost.per_1T_tokens"):
            self.assertIn(name, names)
        self.assertEqual(len(names), len(set(names)))

    def test_cells_hold_median_and_unit(self):
        row = self.rows["train.tokens_per_s"]
        self.assertEqual(row[1], "7,000 tokens/s")
        self.assertEqual(row[2], "300,000 tokens/s")
        self.assertEqual(self.rows["op.permute.forward"][4], "1.12 ms")

    def test_missing_figures_show_a_dash(self):
        # the CUDA document's CPU run has no catalog entry: no cost, no nominal peak
        self.assertEqual(self.rows["cost.per_1T_tokens"][3], "\u2014")
        self.assertEqual(self.rows["cost.per_1T_tokens"][6], "\u2014")
        self.assertEqual(self.rows["train.mfu_peak"][3], "\u2014")

    def test_ratios_follow_the_better_direction(self):
        expected = median(CUDA, "train.tokens_per_s") / median(CPU, "train.tokens_per_s")
        value, verdict = ratio(self.rows["train.tokens_per_s"][5])
        self.assertAlmostEqual(value, expected, delta=expected * 0.01)
        self.assertEqual(verdict, "better")  # higher is better, and it is higher

        expected = median(CPU_LATER, "op.permute.forward") / median(CPU, "op.permute.forward")
        value, verdict = ratio(self.rows["op.permute.forward"][7])
        self.assertAlmostEqual(value, expected, delta=expected * 0.01)
        self.assertEqual(verdict, "worse")  # lower is better, and it is 20% higher

        value, verdict = ratio(self.rows["op.experts.forward"][7])
        self.assertLess(value, 1)
        self.assertEqual(verdict, "better")

    def test_header_lists_each_column(self):
        out = self.result.stdout
        for text in ("ci-runner-1", "gpu-h100-1", "2026-11-24T10:00:00Z", "0.1.0 (7c1e2f4a9b30)",
                     "2.11.0", "fp32", "configs/bench-small.yaml", "fnv1a64:9f3c2b7d41e8a605"):
            self.assertIn(text, out)

    def test_markdown_file_is_the_printed_report(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "compare.md")
            result = compare(CPU, CPU_LATER, "--markdown", out)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(out, encoding="utf-8") as f:
                self.assertEqual(f.read(), result.stdout)

    def test_labels_name_the_columns(self):
        result = compare(CPU, CUDA, "--label", "ci", "h100")
        self.assertEqual(result.returncode, 0, result.stderr)
        headers, _ = figure_table(result.stdout)
        self.assertEqual(headers[1:4], ["A: ci", "B: h100 cuda", "C: h100 cpu"])


class WorkloadMismatchTest(unittest.TestCase):
    def test_different_configs_warn_on_one_line(self):
        result = compare(CPU, CPU_TINY)
        self.assertEqual(result.returncode, 0, result.stderr)
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        self.assertEqual(len(warnings), 1, result.stderr)
        self.assertIn("config hash differs", warnings[0])
        self.assertIn("fnv1a64:2d71c0e9b4a83f16", warnings[0])
        # the tiny document ignores unknown fields and lacks most figures
        _, rows = figure_table(result.stdout)
        self.assertEqual(rows["op.permute.forward"][2], "\u2014")
        self.assertEqual(rows["train.tokens_per_s"][2], "24,000 tokens/s")


@unittest.skipUnless(importlib.util.find_spec("matplotlib"), "needs matplotlib")
class PlotsTest(unittest.TestCase):
    def test_charts_are_png_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "plots", "nested")
            result = compare(CPU, CUDA, CPU_LATER, "--plots", out)
            self.assertEqual(result.returncode, 0, result.stderr)
            for name in ("ops.png", "throughput.png", "utilisation.png", "cost.png"):
                with open(os.path.join(out, name), "rb") as f:
                    self.assertEqual(f.read(8), PNG_MAGIC, name)
                self.assertGreater(os.path.getsize(os.path.join(out, name)), 1000, name)

    def test_chart_without_figures_is_skipped_with_a_note(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = compare(CPU_TINY, CPU_TINY, "--plots", tmp)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("cost.png skipped", result.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "cost.png")))
            self.assertTrue(os.path.exists(os.path.join(tmp, "ops.png")))


class BaselineTest(unittest.TestCase):
    def test_slower_later_commit_fails(self):
        result = compare("--baseline", CPU, "--fail-above", "5%", CPU_LATER)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        regressions = [line for line in result.stdout.splitlines()
                       if line.startswith("regression: ")]
        self.assertEqual(len(regressions), 1, result.stdout)
        self.assertIn("op.permute.forward 1.12 vs 0.93 ms", regressions[0])
        self.assertIn("+20.4% worse, limit 5%", regressions[0])
        self.assertNotIn("op.experts.forward", result.stdout.split("regression: ", 1)[1])

    def test_generous_threshold_passes(self):
        for limit in ("50%", "0.5"):
            result = compare("--baseline", CPU, "--fail-above", limit, CPU_LATER)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("no regressions beyond 50%", result.stdout)
            self.assertNotIn("regression: ", result.stdout)

    def test_baseline_is_the_first_column(self):
        result = compare("--baseline", CPU, "--fail-above", "50%", CPU_LATER)
        headers, _ = figure_table(result.stdout)
        self.assertIn("@56935d8", headers[1])
        self.assertIn("@7c1e2f4", headers[2])

    def edited(self, tmp, edit):
        """CPU_LATER with its first run's figures passed through edit, written into tmp."""
        with open(CPU_LATER, encoding="utf-8") as f:
            doc = json.load(f)
        doc["runs"][0]["figures"] = edit(doc["runs"][0]["figures"])
        path = os.path.join(tmp, "edited.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        return path

    def test_figure_missing_from_the_new_run_fails(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = self.edited(tmp, lambda figures: [
                f for f in figures if f["name"] != "train.tokens_per_s"])
            result = compare("--baseline", CPU, "--fail-above", "50%", path)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("train.tokens_per_s is in the baseline but missing from this run",
                      result.stdout)

    def test_a_figure_that_is_not_a_number_fails(self):
        def nan_tokens(figures):
            for f in figures:
                if f["name"] == "train.tokens_per_s":
                    f["median"] = None  # what hetmoe bench writes for a NaN
            return figures
        with tempfile.TemporaryDirectory() as tmp:
            result = compare("--baseline", CPU, "--fail-above", "50%", self.edited(tmp, nan_tokens))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("train.tokens_per_s nan vs", result.stdout)
        self.assertIn("(not a number, limit 50%)", result.stdout)

    def test_figures_missing_for_want_of_a_catalog_are_only_noted(self):
        def no_catalog(doc_figures):
            return [f for f in doc_figures if f["name"] not in ("cost.per_1T_tokens",)]
        with tempfile.TemporaryDirectory() as tmp:
            with open(CPU_LATER, encoding="utf-8") as f:
                doc = json.load(f)
            doc["runs"][0]["figures"] = no_catalog(doc["runs"][0]["figures"])
            doc["runs"][0].pop("catalog_entry", None)
            path = os.path.join(tmp, "nocat.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            result = compare("--baseline", CPU, "--fail-above", "50%", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("cost.per_1T_tokens not judged, this run found no device catalog",
                      result.stderr)

    def test_unjudged_figure_gets_a_note(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = self.edited(tmp, lambda figures: [
                dict(f, median=0.0) if f["name"] == "op.route.forward" else f for f in figures])
            result = compare("--baseline", base, "--fail-above", "50%", CPU_LATER)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("op.route.forward not judged: the baseline's median is 0", result.stderr)

    def test_backend_missing_from_baseline_is_skipped_with_a_note(self):
        result = compare("--baseline", CPU, "--fail-above", "50%", CUDA)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("has no cuda run", result.stderr)


class BadInputTest(unittest.TestCase):
    def assert_error(self, args, *expected):
        result = compare(*args)
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("compare_bench.py: error: "), lines[0])
        for text in expected:
            self.assertIn(text, lines[0])

    def test_wrong_schema(self):
        self.assert_error([CPU, BAD_SCHEMA], "bad-schema.json", "schema", "hetmoe-bench/2")

    def test_figure_without_median(self):
        self.assert_error([CPU, MISSING_MEDIAN], "missing-median.json", "op.permute.forward",
                          '"median"')

    def test_unreadable_file(self):
        missing = os.path.join(FIXTURES, "no-such-file.json")
        self.assert_error([CPU, missing], "no-such-file.json", "cannot read")

    def test_invalid_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "truncated.json")
            with open(CPU, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
                out.write(f.read()[:200])
            self.assert_error([CPU, path], "truncated.json", "not valid JSON")

    def test_missing_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "no-runs.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"schema": "hetmoe-bench/1"}, f)
            self.assert_error([CPU, path], "no-runs.json", '"runs"')

    def test_bad_threshold(self):
        self.assert_error(["--baseline", CPU, "--fail-above", "lots", CPU_LATER],
                          "--fail-above", "lots")

    def test_fewer_than_two_documents(self):
        self.assert_error([CPU], "at least two documents")

    def test_fail_above_without_baseline_is_a_usage_error(self):
        result = compare("--fail-above", "5%", CPU, CPU_LATER)
        self.assertEqual(result.returncode, 2)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("--baseline", result.stderr)


if __name__ == "__main__":
    unittest.main()
