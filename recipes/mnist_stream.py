#!/usr/bin/env python
"""Learn new classes in real time: a classifier predicts each arriving example, then
learns from it, with replayed examples so that it keeps the classes it knew.

    python recipes/mnist_stream.py --pretrained lenet-0-4.params --classes 5-9 \\
        --data-dir ../shared/data/mnist --out stream.json
    producer | python recipes/mnist_stream.py --pretrained ck.params --source stdin > preds
    python recipes/mnist_stream.py --pretrained ck.params --compare adanag,adan,nadamw,sgd,adam \\
        --data-dir ../shared/data/mnist --out-dir results/

--source mnist streams the training images of --classes of --data (any data source, as
recipes/pretrain.py takes it; default --dataset) once, in a seeded order, in arrival
batches of --arrival-batch; --source folder:PATH (or any source's spec) streams that
source's images so; --source stdin reads one JSON object a line, {"label": <class name
or number>, and "pixels": [784 integers 0-255, row-major] or "image": "path/to/file.jpg"
or "png_base64": "..."}, writes one JSON line a prediction (made before learning the
example) to stdout, rejects bad lines (logged, counted, never learned) and ends at the
end of input; with --grow a line naming a class the model does not know adds it (a new
output, learned from then on) instead of being rejected. Classes are known by name: the model's outputs are the checkpoint's
classes, then the stream's new ones. Each update mixes in examples drawn from a replay
memory (--memory balanced, the default: one class-balanced pool of --replay training
images of the checkpoint's classes and --reservoir more; or reservoir) and learns them as
--method says (der++, the default: replayed logits distilled; er; er-ace). --tasks
0-1,2-3,... streams class groups one after another and measures every group seen so far
after each (class_il_accuracy and the per-task table in the results). With --checkpoint-dir a
checkpoint every --checkpoint-every updates or --checkpoint-seconds, from which --resume
continues exactly (with stdin, the input must start again from its first line). The
results JSON (--out) has test_accuracy (every class the model knows), the old classes'
accuracy before and after, the new classes', prequential_accuracy and its curve,
update_latency_ms (p50, p95, p99), examples_per_second, examples_learned, rejected,
class_names, grown_classes and the config. recipes/stream.py is the same recipe.
"""
import sys

from mxnag.train import cli, recipes


def main(argv=None):
    return recipes.main('stream', __doc__, argv)


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
