#!/usr/bin/env bash
# data/sample/build.sh: rebuild the bundled sample corpus and its tokenizer from their sources.
#
#   bash data/sample/build.sh        (from anywhere; writes into data/sample/)
#
# Needs the Debian packages python3.11-doc (the text), python3 (HTML -> text) and sentencepiece
# (spm_train). Deterministic: the same package versions give byte-identical outputs; the versions
# used for the committed files are in README.md. A developer script: nothing at run time uses it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
py=/usr/bin/python3

for need in "$py:python3" "/usr/share/doc/python3.11/html/index.html:python3.11-doc" \
            "$(command -v spm_train || echo /nonexistent/spm_train):sentencepiece"; do
    if [ ! -e "${need%%:*}" ]; then
        echo "build.sh: ${need%%:*} is missing (HINT: apt-get install ${need##*:})" >&2
        exit 1
    fi
done

echo "== corpus from $(dpkg-query -W -f='${Package} ${Version}' python3.11-doc)"
"$py" "$here/make_corpus.py" "$here"

# The PSF License asks derivative works to keep its text and the copyright notice.
{
    echo "The sample corpus (c4-*.json.gz) and the tokenizer trained on it (spiece.model,"
    echo "spiece.vocab) are derived from the Python 3.11 documentation:"
    echo
    echo "Copyright (c) 2001-2023 Python Software Foundation. All rights reserved."
    echo "Copyright (c) 2000 BeOpen.com. All rights reserved."
    echo "Copyright (c) 1995-2000 Corporation for National Research Initiatives. All rights reserved."
    echo "Copyright (c) 1991-1995 Stichting Mathematisch Centrum. All rights reserved."
    echo
    echo "Changes made: HTML converted to plain text, code and tables removed, sections regrouped"
    echo "into documents and filtered by C4's rules (see make_corpus.py)."
    echo
    echo "The license, as shipped in /usr/share/doc/python3.11-doc/copyright:"
    echo
    sed -n '/^PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2/,/^BEOPEN.COM LICENSE AGREEMENT/p' \
        /usr/share/doc/python3.11-doc/copyright | sed '$d'
} > "$here/LICENSE-PSF.txt"

# Tokenizer training text: the train shards only, one paragraph per line (spm_train reads lines;
# C4 paragraphs are the "\n"-separated lines of a document's text).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for f in "$here"/c4-train.*-of-*.json.gz; do
    zcat "$f"
done | "$py" -c '
import json, sys
for line in sys.stdin:
    for para in json.loads(line)["text"].split("\n"):
        if para.strip():
            sys.stdout.write(para + "\n")
' > "$tmp/train.txt"
echo "== spm_train on $(wc -l < "$tmp/train.txt") paragraphs ($(wc -c < "$tmp/train.txt") bytes)"

# T5's settings (unigram, pad 0 / eos 1 / unk 2, no bos, nmt_nfkc, no byte fallback) at a vocab
# size that suits ~5 MB of text. One thread and a fixed seed make the model reproducible.
# Relative names: spm_train stores its flags in the model, so a random temp path would change it.
(cd "$tmp" && spm_train --input=train.txt --model_prefix=spiece \
    --model_type=unigram --vocab_size=8000 \
    --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 \
    --normalization_rule_name=nmt_nfkc --byte_fallback=false --character_coverage=0.9995 \
    --num_threads=1 --random_seed=42 --input_sentence_size=0 \
    --max_sentence_length=20000 --minloglevel=1 2> spm_train.log) || {
        cat "$tmp/spm_train.log" >&2; echo "build.sh: spm_train failed" >&2; exit 1; }
mv "$tmp/spiece.model" "$here/spiece.model"
mv "$tmp/spiece.vocab" "$here/spiece.vocab"

echo "== done"
ls -l "$here"/*.json.gz "$here"/spiece.model
md5sum "$here"/*.json.gz "$here"/spiece.model
