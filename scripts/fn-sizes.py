#!/usr/bin/env python3
"""List the longest Rust functions: lines from `fn` to its closing brace.

Usage: scripts/fn-sizes.py [--top N] [--over N] [--tests] [PATH ...]
  PATH        files or directories to scan (default: src)
  --top N     show the N longest (default 20)
  --over N    show only functions longer than N lines (exit 1 if any)
  --tests     include test code (`tests.rs` files and `#[cfg(test)] mod`)

Prints `lines  name  file:line`, longest first. Braces inside string and char
literals and comments are skipped, so the count is the function's real extent
(doc comments and attributes above it are not counted).
"""

import os
import re
import sys

FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def code_only(text):
    """`text` with comments and string/char literal contents blanked out
    (newlines kept, so line numbers still match)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + len(hashes) + 2)
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '{'), not a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_ranges(lines):
    """Line ranges of `#[cfg(test)] mod ... { }` blocks."""
    ranges = []
    for k, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and k + 1 < len(lines) and re.match(r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", lines[k + 1]):
            end = block_end(lines, k + 1)
            ranges.append((k, end))
    return ranges


def block_end(lines, start):
    """The line where the block opened on (or after) `start` closes."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        for ch in lines[k]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
                if opened and depth == 0:
                    return k
        if not opened and lines[k].rstrip().endswith(";"):
            return None  # a declaration without a body
    return None


def functions(path, tests):
    with open(path, encoding="utf-8") as f:
        lines = code_only(f.read()).split("\n")
    skip = [] if tests else test_ranges(lines)
    for k, line in enumerate(lines):
        m = FN.match(line)
        if not m or any(a <= k <= b for a, b in skip):
            continue
        end = block_end(lines, k)
        if end is not None:
            yield m.group(1), k + 1, end - k + 1


def main(argv):
    top, over, tests, paths = 20, None, False, []
    it = iter(argv)
    for a in it:
        if a == "--top":
            top = int(next(it))
        elif a == "--over":
            over = int(next(it))
        elif a == "--tests":
            tests = True
        else:
            paths.append(a)
    files = []
    for p in paths or ["src"]:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
        else:
            files.append(p)
    found = []
    for path in sorted(files):
        if not tests and os.path.basename(path) == "tests.rs":
            continue
        found += [(size, name, f"{path}:{line}") for name, line, size in functions(path, tests)]
    found.sort(key=lambda f: (-f[0], f[2]))
    if over is not None:
        found = [f for f in found if f[0] > over]
    else:
        found = found[:top]
    for size, name, where in found:
        print(f"{size:5}  {name:32}  {where}")
    return 1 if over is not None and found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
