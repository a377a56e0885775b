#!/usr/bin/env python3
"""The installed headers stand alone: every quoted include in include/hetmoe is another public
hetmoe header (no src/, kernels/ or cli/ header leaks into the API), and the umbrella header
hetmoe/hetmoe.h includes every public header. Run: python3 tests/scripts/public_headers_test.py"""
import pathlib
import re
import sys
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
GENERATED = {"hetmoe/core/version.h"}  # configured from version.h.in by CMake
QUOTED = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def public_headers():
    return sorted(str(p.relative_to(INCLUDE)) for p in (INCLUDE / "hetmoe").rglob("*.h"))


class PublicHeadersTest(unittest.TestCase):
    def test_quoted_includes_are_public_headers(self):
        known = set(public_headers()) | GENERATED
        for header in public_headers():
            for target in QUOTED.findall((INCLUDE / header).read_text()):
                with self.subTest(header=header, include=target):
                    self.assertIn(target, known, f"{header} includes '{target}', not a public header")

    def test_umbrella_includes_every_public_header(self):
        umbrella = "hetmoe/hetmoe.h"
        included = set(QUOTED.findall((INCLUDE / umbrella).read_text()))
        missing = (set(public_headers()) | GENERATED) - included - {umbrella}
        self.assertFalse(missing, f"{umbrella} does not include {sorted(missing)}")

    def test_every_header_says_what_it_is(self):
        for header in public_headers():
            with self.subTest(header=header):
                first = (INCLUDE / header).read_text().lstrip().splitlines()[0]
                self.assertTrue(first.startswith("//"), f"{header} does not open with a comment")


if __name__ == "__main__":
    sys.exit(unittest.main())
