#!/usr/bin/env bash
# Lists the public API of every library product (`make api`), from the compiler's symbol graph:
# per module, the number of public symbols and their sorted list, one per line as
# `kind  Type.member(labels:)`. Only symbols the module itself declares count (its own types and
# its public extensions of other modules' types), never what it re-exports from a dependency,
# and never members the compiler synthesizes (Equatable's `!=`, protocol defaults).
#
# Usage: scripts/public-api.sh [OUTPUT-FILE]   (default: standard output)
# Builds the package in the default scratch path first (swift package dump-symbol-graph).
# Compare two listings with `diff`: each line is one symbol, so a removal is one `-` line.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}

# The library products' modules, from the manifest: what a user of the package can import.
MODULES=$($SWIFT package describe --type json 2>/dev/null | python3 -c '
import json, sys
package = json.load(sys.stdin)
modules = []
for product in package["products"]:
    if "library" in product["type"]:
        modules += [t for t in product["targets"] if t not in modules]
print(" ".join(modules))
')

$SWIFT package dump-symbol-graph --minimum-access-level public --skip-synthesized-members >/dev/null
GRAPHS="$($SWIFT build --show-bin-path)/../symbolgraph"
[[ -d "$GRAPHS" ]] || GRAPHS=$(find .build -type d -name symbolgraph | head -1)

python3 - "$GRAPHS" $MODULES > "${1:-/dev/stdout}" <<'PYTHON'
import glob, json, os, sys

directory, modules = sys.argv[1], sys.argv[2:]
summary, sections = [], []
for module in modules:
    symbols = set()
    # MODULE.symbols.json: its own declarations; MODULE@OTHER.symbols.json: its extensions of OTHER's types.
    files = [os.path.join(directory, f"{module}.symbols.json")]
    files += glob.glob(os.path.join(directory, f"{module}@*.symbols.json"))
    for path in files:
        if not os.path.exists(path):
            continue
        with open(path) as handle:
            graph = json.load(handle)
        for symbol in graph.get("symbols", []):
            if symbol.get("accessLevel") not in ("public", "open"):
                continue
            kind = symbol["kind"]["identifier"].removeprefix("swift.")
            name = ".".join(symbol["pathComponents"])
            symbols.add(f"{kind:<16} {name}")
    summary.append(f"{module}: {len(symbols)}")
    sections.append(f"## {module} ({len(symbols)} public symbols)\n" + "".join(f"{s}\n" for s in sorted(symbols, key=lambda s: (s.split(None, 1)[1], s))))
total = sum(int(line.rsplit(": ", 1)[1]) for line in summary)
print("# Public API of the library products (scripts/public-api.sh)")
print()
for line in summary:
    print(line)
print(f"total: {total}")
print()
print("\n".join(sections), end="")
PYTHON
