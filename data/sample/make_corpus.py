#!/usr/bin/python3
"""Build the bundled sample corpus in C4's file format from the Python 3.11 HTML documentation
that Debian's python3.11-doc package installs (PSF License; see README.md).

Dev script only (build.sh runs it); the project itself never runs Python. Standard library only,
deterministic: the same package version gives byte-identical .json.gz files.

Steps, mirroring how C4 was made from Common Crawl pages:
  1. HTML -> blocks of prose: paragraphs, list items and definitions of the main content; code
     blocks, tables, navigation and permalink marks are dropped; whitespace inside a block is
     collapsed to single spaces.
  2. Documents: each section (h1/h2/h3 level) of a page, consecutive short ones merged, so sizes
     look like C4 pages (a few hundred to a few thousand characters).
  3. C4's clean-up rules (Raffel et al. 2020, section 2.2): keep only lines that end in terminal
     punctuation and have at least 3 words; drop lines mentioning javascript; drop documents
     with fewer than 5 sentences, with "lorem ipsum", or with a curly bracket.
  4. C4 JSON Lines: {"text","timestamp","url"} in that key order, compact separators, raw UTF-8,
     paragraphs joined with "\\n"; gzip with no name and mtime 0 (reproducible bytes).
  5. Split by a hash of the URL: 1 in 20 documents to validation, the rest over 4 train shards.
"""
import datetime
import gzip
import hashlib
import html.parser
import json
import os
import re
import sys

DOC_ROOT = "/usr/share/doc/python3.11/html"
URL_ROOT = "https://docs.python.org/3.11/"
TRAIN_SHARDS = 4
VALIDATION_ONE_IN = 20
MERGE_BELOW = 1500        # merge consecutive sections of a page until a document has this many chars
SKIP_PAGES = re.compile(r"^(genindex|py-modindex|search|contents|index|download|copyright|"
                        r"license|bugs|about)\b|^whatsnew/changelog")
BLOCK_TAGS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "caption"}
SKIP_TAGS = {"pre", "table", "script", "style", "nav"}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"}


class PageParser(html.parser.HTMLParser):
    """Collects (section_id, text) blocks from the main content of one Sphinx page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []          # open tags: (tag, is_body_start, is_skip, section_id or None)
        self.in_body = 0         # depth counter: > 0 inside div.body
        self.skip = 0            # > 0 inside code blocks, tables, permalinks ...
        self.sections = []       # ids of open <section>s, outermost first
        self.blocks = []         # (section id, text)
        self.buf = None          # text of the block being collected

    def _flush(self):
        if self.buf is not None:
            text = " ".join("".join(self.buf).split())
            if text:
                sec = "/".join(self.sections[:3]) if self.sections else ""
                self.blocks.append((sec, text))
        self.buf = None

    def handle_starttag(self, tag, attrs):
        if tag in VOID_TAGS:
            return
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        body_start = tag == "div" and "body" in cls and a.get("role") == "main"
        skip = self.in_body and (tag in SKIP_TAGS or "headerlink" in cls or
                                 any(c.startswith("highlight") for c in cls))
        sec = a.get("id") if tag == "section" else None
        self.stack.append((tag, body_start, skip, sec))
        if body_start:
            self.in_body += 1
        if skip:
            self.skip += 1
        if sec is not None and self.in_body:
            self._flush()
            self.sections.append(sec)
        if self.in_body and not self.skip and tag in BLOCK_TAGS:
            self._flush()       # a block nested in a block (li > p) starts a new block
            self.buf = []

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        # Pop to the matching open tag (Sphinx output is well formed; this is just robust).
        while self.stack:
            t, body_start, skip, sec = self.stack.pop()
            if self.in_body and not self.skip and t in BLOCK_TAGS:
                self._flush()
            if skip:
                self.skip -= 1
            if sec is not None and self.in_body:
                self._flush()
                self.sections.pop()
            if body_start:
                self.in_body -= 1
            if t == tag:
                break

    def handle_data(self, data):
        if self.in_body and not self.skip:
            if self.buf is None:
                self.buf = []   # loose text directly inside a section or div
            self.buf.append(data)


TERMINAL = (".", "!", "?", '"', "\u201d")
SENTENCE_END = re.compile(r"[.!?][\"\u201d)]?(\s|$)")


def c4_clean(lines):
    """C4's line and page filters; returns the kept lines or None if the page is dropped."""
    kept = []
    for line in lines:
        line = line.strip()
        if not line.endswith(TERMINAL):
            continue
        if len(line.split()) < 3:
            continue
        if "javascript" in line.lower():
            continue
        kept.append(line)
    text = "\n".join(kept)
    if "lorem ipsum" in text.lower() or "{" in text:
        return None
    if len(SENTENCE_END.findall(text)) < 5:
        return None
    return kept


def h(s):
    return int(hashlib.md5(s.encode("utf-8")).hexdigest(), 16)


def timestamp_for(url):
    # Common Crawl April 2019 (CC-MAIN-2019-18), where C4's timestamps come from.
    t0 = datetime.datetime(2019, 4, 18, 0, 0, 0)
    t = t0 + datetime.timedelta(seconds=h("ts:" + url) % (9 * 86400))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def page_documents(rel):
    p = PageParser()
    with open(os.path.join(DOC_ROOT, rel), encoding="utf-8") as f:
        p.feed(f.read())
    p.close()
    p._flush()
    # Group blocks by section, keeping page order.
    groups = []
    for sec, text in p.blocks:
        if groups and groups[-1][0] == sec:
            groups[-1][1].append(text)
        else:
            groups.append((sec, [text]))
    docs = []
    cur_sec, cur = None, []
    for sec, lines in groups:
        if cur and sum(len(x) + 1 for x in cur) >= MERGE_BELOW:
            docs.append((cur_sec, cur))
            cur_sec, cur = None, []
        if cur_sec is None:
            cur_sec = sec
        cur = cur + lines
    if cur:
        docs.append((cur_sec, cur))
    out = []
    for sec, lines in docs:
        kept = c4_clean(lines)
        if kept is None:
            continue
        anchor = sec.split("/")[-1] if sec else ""
        url = URL_ROOT + rel + ("#" + anchor if anchor else "")
        out.append({"text": "\n".join(kept), "timestamp": timestamp_for(url), "url": url})
    return out


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    if not os.path.isdir(DOC_ROOT):
        sys.exit(f"make_corpus.py: {DOC_ROOT} not found (HINT: apt-get install python3.11-doc)")
    pages = []
    for dirpath, dirnames, filenames in os.walk(DOC_ROOT):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.endswith(".html"):
                rel = os.path.relpath(os.path.join(dirpath, fn), DOC_ROOT)
                if not SKIP_PAGES.search(rel):
                    pages.append(rel)
    pages.sort()
    docs, seen = [], set()
    for rel in pages:
        for d in page_documents(rel):
            if d["url"] in seen or d["text"] in seen:   # C4 also deduplicates
                continue
            seen.add(d["url"])
            seen.add(d["text"])
            docs.append(d)
    shards = {"validation": []}
    for i in range(TRAIN_SHARDS):
        shards[i] = []
    for d in docs:
        k = h("split:" + d["url"])
        if k % VALIDATION_ONE_IN == 0:
            shards["validation"].append(d)
        else:
            shards[(k // VALIDATION_ONE_IN) % TRAIN_SHARDS].append(d)
    for key, ds in shards.items():
        ds.sort(key=lambda d: h("order:" + d["url"]))   # C4 shards are in no particular order
        if key == "validation":
            name = "c4-validation.00000-of-00001.json.gz"
        else:
            name = f"c4-train.{key:05d}-of-{TRAIN_SHARDS:05d}.json.gz"
        path = os.path.join(outdir, name)
        with open(path + ".tmp", "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                for d in ds:
                    line = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
                    gz.write(line.encode("utf-8") + b"\n")
        os.replace(path + ".tmp", path)
        chars = sum(len(d["text"]) for d in ds)
        print(f"{name}: {len(ds)} documents, {chars} characters of text")


if __name__ == "__main__":
    main()
