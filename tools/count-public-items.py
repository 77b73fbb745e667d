#!/usr/bin/env python3
"""Counts the public API of a rustdoc output directory: items (all.html), inherent methods, associated
constants, public fields and enum variants.  Usage:
    cargo doc --no-deps --all-features -p llm-fallback && python3 tools/count-public-items.py target/doc/llm_fallback
"""
import re, glob, sys
root = sys.argv[1]
items = re.findall(r'<li><a href="([^"]*)"', open(f"{root}/all.html").read())
inherent = 0; fields = 0; variants = 0; consts = 0
for f in glob.glob(f"{root}/**/*.html", recursive=True):
    if f.endswith("all.html") or "/src/" in f: continue
    t = open(f).read()
    fields += len(re.findall(r'id="structfield\.', t))
    variants += len(re.findall(r'id="variant\.', t))
    m = re.search(r'id="implementations-list"(.*?)(id="trait-implementations"|id="synthetic-implementations"|id="blanket-implementations"|$)', t, re.S)
    if m:
        inherent += len(re.findall(r'id="method\.', m.group(1)))
        consts += len(re.findall(r'id="associatedconstant\.', m.group(1)))
print(f"items {len(items)} inherent_methods {inherent} assoc_consts {consts} pub_fields {fields} variants {variants} total {len(items)+inherent+consts+fields+variants}")
