"""Write the reference files for the spaCy and rules comparison tests.

usage: python scripts/make-references.py ACLIMDB_DIR OUT_DIR

Needs fastai 2.8.12 and spaCy 3.8.18 in the Python environment that runs it.
Writes, for every review of
ACLIMDB_DIR/{train,test}/{pos,neg}:
  OUT_DIR/rules.jsonl  {"kind": "imdb", "input": raw text, "output": text after the rules}
  OUT_DIR/spacy.jsonl  {"input": text after the rules, "tokens": spaCy's tokens of it}
Then run:
  ULMFIT_RULES_REFERENCE=OUT_DIR/rules.jsonl cargo test --release --test rules_reference
  SPACY_REFERENCE=OUT_DIR/spacy.jsonl cargo test --release --test spacy_reference
"""

import glob
import json
import os
import sys

import spacy
from fastai.text.core import defaults


def rewrite(text):
    for rule in defaults.text_proc_rules:
        text = rule(text)
    return text


def main():
    root, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            files += sorted(glob.glob(os.path.join(root, split, label, "*.txt")))
    texts = [open(f, encoding="utf-8").read() for f in files]
    rewritten = [rewrite(t) for t in texts]
    tokenizer = spacy.blank("en").tokenizer
    with open(os.path.join(out_dir, "rules.jsonl"), "w", encoding="utf-8") as rules_out:
        for raw, done in zip(texts, rewritten):
            record = {"kind": "imdb", "input": raw, "output": done}
            rules_out.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "spacy.jsonl"), "w", encoding="utf-8") as spacy_out:
        for text, doc in zip(rewritten, tokenizer.pipe(rewritten, batch_size=1000)):
            record = {"input": text, "tokens": [token.text for token in doc]}
            spacy_out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote references for {len(texts)} reviews to {out_dir}")


if __name__ == "__main__":
    main()
