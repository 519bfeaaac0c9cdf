r"""Export on real Omniglot: adapt to one evaluation alphabet, predict the other drawers.

  python tools/omniglot_export_demo.py --workdir=/tmp/fomaml_cpu \
      --alphabet=Angelic --out=/tmp/omniglot_export [--drawer=1]

Takes the first N characters (N = the run's `data.ways`) of `--alphabet` from
`images_evaluation.zip` in $TFMETANAS_DATA_DIR (or --data_root), writes the
`--drawer`'s image of each as the support folder (1 shot per class, raw
105x105 PNGs), runs `tfmetanas-export` on it, then loads the SavedModel with
plain TensorFlow in a fresh process (no tfmetanas import) and reports the
accuracy on the other 19 drawers' images of those characters.
"""

import json
import os
import re
import subprocess
import sys
import zipfile

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir trained on Omniglot.")
_ALPHABET = flags.DEFINE_string("alphabet", "Angelic", "Evaluation alphabet to adapt to.")
_DRAWER = flags.DEFINE_integer("drawer", 1, "Drawer (1-20) whose images form the support set.")
_OUT = flags.DEFINE_string("out", None, "Folder for the support set, export and results.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Data root (default $TFMETANAS_DATA_DIR).")

_PREDICT = r"""
import json, sys, numpy as np, tensorflow as tf
export_dir, files = sys.argv[1], json.loads(sys.argv[2])
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
labels = open(export_dir + "/assets/labels.txt").read().splitlines()
correct = 0
for true_label, path in files:
    image = tf.io.decode_png(tf.io.read_file(path), channels=1)
    out = serve(images=image[tf.newaxis])
    correct += labels[int(out["class_ids"][0])] == true_label
assert "tfmetanas" not in sys.modules
print(json.dumps({"correct": int(correct), "total": len(files)}))
"""


def main(argv):
    del argv
    root = _DATA_ROOT.value or os.environ.get("TFMETANAS_DATA_DIR", "")
    archive = os.path.join(root, "omniglot", "images_evaluation.zip")
    with open(os.path.join(_WORKDIR.value, "config.json")) as f:
        ways = int(json.load(f)["data"]["ways"])
    support_dir = os.path.join(_OUT.value, "support")
    query_dir = os.path.join(_OUT.value, "query")
    pattern = re.compile(rf"images_evaluation/{re.escape(_ALPHABET.value)}/(character\d+)/(\d+)_(\d+)\.png$")
    with zipfile.ZipFile(archive) as z:
        members = [(pattern.search(n), n) for n in z.namelist()]
        members = [(m.group(1), int(m.group(3)), n) for m, n in members if m]
        characters = sorted({c for c, _, _ in members})[:ways]
        if len(characters) < ways:
            raise SystemExit(f"{_ALPHABET.value} has {len(characters)} characters, need {ways}.")
        queries = []
        for character, drawer, name in members:
            if character not in characters:
                continue
            folder = support_dir if drawer == _DRAWER.value else query_dir
            path = os.path.join(folder, character, os.path.basename(name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(z.read(name))
            if folder == query_dir:
                queries.append((character, path))
    export_dir = os.path.join(_OUT.value, "export")
    subprocess.run(
        [sys.executable, "-m", "tfmetanas.export", f"--workdir={_WORKDIR.value}",
         f"--support_dir={support_dir}", f"--export_dir={export_dir}", "--overwrite",
         f"--data_root={root}"],
        check=True,
    )
    run = subprocess.run(
        [sys.executable, "-c", _PREDICT, export_dir, json.dumps(queries)],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result.update({
        "alphabet": _ALPHABET.value, "characters": characters, "support_drawer": _DRAWER.value,
        "accuracy": 100.0 * result["correct"] / result["total"], "workdir": _WORKDIR.value,
    })
    with open(os.path.join(_OUT.value, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
