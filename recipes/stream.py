#!/usr/bin/env python
"""Learn new classes in real time from any data source: a classifier predicts each
arriving example, then learns from it, with replayed examples so that it keeps the
classes it knew.

    python recipes/stream.py --pretrained ckpt.params --data folder:photos --classes 5-9 \
        --out stream.json
    producer | python recipes/stream.py --pretrained ckpt.params --data folder:photos \
        --source stdin --grow > predictions

--data: as recipes/pretrain.py takes it (the stream's classes, --classes, are that
source's, by number or name; the checkpoint's classes are known by their names).
--source mnist (the default) streams the training images of --classes of --data once, in
a seeded order, in arrival batches of --arrival-batch; --source SPEC streams another
source's images so; --source stdin reads one JSON object a line, {"label": <class name
or number>, and "image": "path/to/file.jpg", "png_base64": "..." or "pixels": [784
integers 0-255]}, writes one JSON line a prediction (made before learning the example)
to stdout, rejects bad lines (logged, counted, never learned) and ends at the end of
input; with --grow a line naming a class the model does not know adds it (a new output)
instead of being rejected. Each update mixes in examples drawn from a replay memory
(--memory balanced, the default: one class-balanced pool of --replay training images of
the checkpoint's classes and --reservoir more) and learns them as --method says (der++,
the default; er; er-ace). --tasks 0-1,2-3,... streams class groups one after another.
With --checkpoint-dir a checkpoint every --checkpoint-every updates or
--checkpoint-seconds, from which --resume continues exactly (with stdin, the input must
start again from its first line). The results JSON (--out) has test_accuracy (every
class the model knows), the old classes' accuracy before and after, the new classes',
prequential_accuracy and its curve, update_latency_ms (p50, p95, p99),
examples_per_second, examples_learned, rejected, class_names, grown_classes and the
config. recipes/mnist_stream.py is the same recipe.
"""
import sys

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('stream', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
