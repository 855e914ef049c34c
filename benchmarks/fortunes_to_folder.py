"""Write a text_folder of fortune cookies by language, for sentence-level language identification.

    python benchmarks/fortunes_to_folder.py my_fortunes [--per-language 2000] [--seed 0]
    -> my_fortunes/{train,val,test}/{de,en,es,it}/00000.txt ...

Reads Debian's fortune files (apt-get install fortunes fortunes-de fortunes-es fortunes-it): English from the
regular files directly in /usr/share/games/fortunes (the links there into it/ left out), German, Spanish and Italian
from its de/, es/ and it/ folders (not their off/ subfolders). A file holds cookies separated by lines of a single
"%". ASCII-art files are left out, and so are cookies of fewer than --min-chars characters (after white space is
collapsed) and any cookie that appears in two languages' files. Up to --per-language cookies per language are drawn
by the seed and split 80/10/10 into train/, val/ and test/ (one UTF-8 file per cookie, as written).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path("/usr/share/games/fortunes")
LANGUAGES = {"en": (ROOT, "fortunes"), "de": (ROOT / "de", "fortunes-de"), "es": (ROOT / "es", "fortunes-es"),
             "it": (ROOT / "it", "fortunes-it")}


def cookies(path: Path) -> list[str]:
    """The cookies of one fortune file: text between lines that hold only '%'."""
    found, lines = [], []
    for line in path.read_text(encoding="utf-8").splitlines() + ["%"]:
        if line.strip() == "%":
            if "".join(lines).strip():
                found.append("\n".join(lines).strip("\n") + "\n")
            lines = []
        else:
            lines.append(line)
    return found


def fortune_files(folder: Path) -> list[Path]:
    """The fortune files directly in `folder`: regular files (not links), no .dat index, no .u8 alias, no ASCII art."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and "ascii" not in p.name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (must not exist yet or be empty)")
    parser.add_argument("--per-language", type=int, default=2000, help="cookies drawn per language at most")
    parser.add_argument("--min-chars", type=int, default=20, help="shorter cookies are left out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    found: dict[str, list[str]] = {}
    for language, (folder, package) in LANGUAGES.items():
        files = fortune_files(folder) if folder.is_dir() else []
        if not files:
            print(f"error: no fortune files in {folder} (Debian, Ubuntu: apt-get install {package})", file=sys.stderr)
            return 2
        found[language] = sorted({text for f in files for text in cookies(f)
                                  if len(" ".join(text.split())) >= args.min_chars})
    owners: dict[str, int] = {}
    for texts in found.values():
        for text in texts:
            owners[text] = owners.get(text, 0) + 1
    rng = random.Random(args.seed)
    for language, texts in found.items():
        texts = [text for text in texts if owners[text] == 1]
        rng.shuffle(texts)
        texts = texts[:args.per_language]
        n_val = n_test = len(texts) // 10
        splits = {"test": texts[:n_test], "val": texts[n_test:n_test + n_val], "train": texts[n_test + n_val:]}
        for split, chosen in splits.items():
            folder = args.out / split / language
            folder.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(chosen):
                (folder / f"{i:05d}.txt").write_text(text, encoding="utf-8")
        print(f"{language}: {', '.join(f'{len(v)} {k}' for k, v in splits.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
