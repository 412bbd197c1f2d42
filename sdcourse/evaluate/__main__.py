"""`python -m sdcourse.evaluate`: report a classifier's accuracy (the fixed judge's by default),
or train a new one with --train --out FILE.

This is the command line only, never imported by the package: it may use training
(`sdcourse.training.judge`), which builds on evaluate."""

import argparse
from pathlib import Path

from ..training.judge import train_classifier
from .judge import CLASSIFIER_PATH, classifier_accuracy, load_classifier, save_classifier

parser = argparse.ArgumentParser(prog="python -m sdcourse.evaluate",
                                 description="Report a classifier's accuracy (the fixed judge's by default), "
                                             "or train a new one.")
parser.add_argument("--train", action="store_true", help="train a classifier and save it to --out")
parser.add_argument("--steps", type=int, default=800)
parser.add_argument("--out", default=None, help="where to save a trained classifier (not the fixed judge)")
parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
args = parser.parse_args()
path = CLASSIFIER_PATH
if args.train:
    if not args.out:
        parser.error("--train needs --out FILE (the fixed judge is never overwritten)")
    if Path(args.out).is_dir() or (Path(args.out).exists() and not args.overwrite):
        parser.error(f"--out {args.out} exists; give a new file name, or add --overwrite to replace that file")
    model = train_classifier(steps=args.steps, threads=2)
    save_classifier(model, args.out)
    path = args.out
print("classifier accuracy on fresh generator pictures:", classifier_accuracy(classifier=load_classifier(path)))
