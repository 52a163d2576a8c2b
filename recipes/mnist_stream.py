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
end of input. Classes are known by name: the model's outputs are the checkpoint's
classes, then the stream's new ones. Each update mixes in as many
examples drawn from a replay memory: --replay training images of the checkpoint's
classes and a reservoir of --reservoir examples of the stream. With --checkpoint-dir a
checkpoint every --checkpoint-every updates or --checkpoint-seconds, from which --resume
continues exactly (with stdin, the input must start again from its first line). The
results JSON (--out) has test_accuracy (every class the model knows), the old classes'
accuracy before and after, the new classes', prequential_accuracy and its curve,
update_latency_ms (p50, p95, p99), examples_per_second, examples_learned, rejected and
the config.
"""
import sys

from mxnag.errors import MxnagError
from mxnag.train import checkpoint, cli, extras, run, stream


def main(argv=None):
    args = cli.parser_for('stream', __doc__).parse_args(argv)
    if args.tensorboard:
        extras.require('tensorboardX', 'TensorBoard logs', ('tensorboard',), extra='tensorboard')
    if args.resume and not args.checkpoint_dir:
        raise MxnagError('resume: needs checkpoint_dir', ('resume',))
    if args.compare:
        if not args.out_dir:
            raise MxnagError('compare: needs out_dir', ('compare', 'out_dir'))
        if args.source == 'stdin':
            raise MxnagError('compare: runs the same stream several times: source cannot be stdin',
                             ('compare', 'source'))
        extras.require('matplotlib', 'the comparison plot')
        run.check_outputs(args)
        with run.writing(args):
            result = stream.compare(args)
        print(result['table'])
        return 0
    run.check_outputs(args)
    with run.writing(args):
        result = stream.run(args)
        if args.out:
            checkpoint.write_json(args.out, result)
    print('stream: %d examples learned, prequential accuracy %.4f, test accuracy %.4f, '
          'update latency p99 %.1f ms' % (result['examples_learned'], result['prequential_accuracy'],
                                          result['test_accuracy'], result['update_latency_ms']['p99']),
          file=sys.stderr if args.source == 'stdin' else sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_cli(main))
