#!/usr/bin/env bash
# tests/e2e/docs.sh: the project's reference (docs/) can be followed from the code.
#
# Every citation of a section, in any source, script, README or data file of the repository,
# must name a heading that exists:
#   "docs/t5-recipe.md section 5.4", "t5-recipe.md 4.2-4.8", and the older spelling
#   "t5-spec.md section 5.4" / "t5-spec 8" (same numbering)   -> a heading of docs/t5-recipe.md
#   "docs/architecture.md section 7.4"                       -> a heading of docs/architecture.md
#   "section 2.2" inside a docs/ file, with no file named     -> a heading of that file
# Ranges ("4.2-4.8") and lists ("5.2 / 5.3") check every endpoint. Comment markers at line starts
# (" * ", "# ", "// ") are joined so a citation may wrap. No file may point at design notes that
# live outside the repository (a file named DESIGN + .md).
source "$(dirname "$0")/lib.bash"
PY=/usr/bin/python3
if ! [ -x "$PY" ]; then fail docs_python "/usr/bin/python3 is needed to parse the citations"; exit 1; fi

"$PY" - "$ROOT" <<'EOF'
import os, re, sys

root = sys.argv[1]
docs = {"recipe": "docs/t5-recipe.md", "arch": "docs/architecture.md"}
results = []   # (name, ok, message)

def headings(path):
    nums = set()
    with open(os.path.join(root, path), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", line)
            if m:
                nums.add(m.group(1))
    return nums

for key, path in docs.items():
    ok = os.path.isfile(os.path.join(root, path))
    results.append(("docs_file_" + key, ok, path + " is missing"))
if not all(r[1] for r in results):
    for n, ok, msg in results:
        print(("PASS " if ok else "FAIL ") + n + ("" if ok else ": " + msg))
    sys.exit(1)
heads = {k: headings(p) for k, p in docs.items()}
results.append(("docs_recipe_has_sections", len(heads["recipe"]) >= 40,
                "only %d numbered headings in %s" % (len(heads["recipe"]), docs["recipe"])))

EXT = (".c", ".h", ".cc", ".sh", ".bash", ".py", ".md", ".tsv", ".txt", ".gin", ".conf")
SKIP_DIRS = {".git", "build", "bin", "run"}
files = []
for dp, dns, fns in os.walk(root):
    rel = os.path.relpath(dp, root)
    dns[:] = [d for d in dns if d not in SKIP_DIRS and not (rel == "." and d.startswith("."))]
    for fn in fns:
        if fn.endswith(EXT) or fn == "Makefile":
            files.append(os.path.relpath(os.path.join(dp, fn), root))
files.sort()

NUM = r"\d+(?:\.\d+)?"
LIST = NUM + r"(?:\s*(?:-|–|/|and)\s*" + NUM + r")*"
CITE = re.compile(r"(t5-spec(?:\.md)?|t5-recipe\.md\)?|architecture\.md\)?)(?![\w-])"
                  r"(?:\s+sections?)?\s+(" + LIST + r")")
SELF = re.compile(r"(\S*)\s+sections?\s+(" + LIST + r")")

def numbers(text):
    return re.findall(NUM, text)

outside_notes = "DESIGN" + ".md"   # spelled apart so this file does not match itself
bad, counts, design = [], {"recipe": 0, "arch": 0, "self": 0}, []
for rel in files:
    try:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError):
        continue
    if outside_notes in text:
        design.append(rel)
    joined = re.sub(r"\n[ \t]*(?:\*|#|//)?[ \t]*", " ", text)
    for m in CITE.finditer(joined):
        key = "arch" if m.group(1).startswith("architecture") else "recipe"
        for n in numbers(m.group(2)):
            counts[key] += 1
            if n not in heads[key]:
                bad.append("%s: '%s' names %s section %s, which does not exist"
                           % (rel, m.group(0), docs[key], n))
    if rel in docs.values():
        own = "recipe" if rel == docs["recipe"] else "arch"
        for m in SELF.finditer(joined):
            before = m.group(1)
            if re.search(r"(t5-spec(\.md)?|\.md\)?|\.md\]\([^)]*\)?)$", before):
                continue   # a citation of a named file: checked above
            for n in numbers(m.group(2)):
                counts["self"] += 1
                if n not in heads[own]:
                    bad.append("%s: '%s' names its own section %s, which does not exist"
                               % (rel, m.group(0).strip(), n))

results.append(("docs_citations_found", counts["recipe"] >= 20 and counts["arch"] >= 1,
                "too few citations found (recipe %d, architecture %d): is the pattern broken?"
                % (counts["recipe"], counts["arch"])))
results.append(("docs_citations_resolve", not bad, "; ".join(bad[:20])))
results.append(("docs_no_outside_design_notes", not design,
                "these files point at " + outside_notes + ", which is not in the repository: " + " ".join(design)))
print("citations checked: recipe %d, architecture %d, within docs %d; files scanned %d"
      % (counts["recipe"], counts["arch"], counts["self"], len(files)))
for n, ok, msg in results:
    print(("PASS " if ok else "FAIL ") + n + ("" if ok else ": " + msg))
sys.exit(0 if all(ok for _, ok, _ in results) else 1)
EOF
