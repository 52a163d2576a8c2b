"""The recipes as library code: pretraining, fine-tuning and the stream on any data
source (``recipes/pretrain.py``, ``recipes/finetune.py``, ``recipes/stream.py``, and their
MNIST presets ``recipes/mnist_pretrain.py``, ``recipes/mnist_finetune.py``,
``recipes/mnist_stream.py``, which are the same runs)."""
import argparse
import sys
import time

from . import checkpoint, cli, extras, finetune as finetuning, run, settings, stream as streaming
from ..errors import MxnagError


def pretrain(args):
    """Train a new classifier as ``args`` (the pretrain recipe's settings) say; write
    ``args.save`` and ``args.out``; return the results."""
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = run.prepare(args)
    config = settings.config_of(args, num_classes=num_classes)
    net = run.new_model(args.model, num_classes, contexts, args.seed)
    history, trainer, _ = run.train(net, args, train_loader, test_loader, contexts,
                                    config, 'pretrain', workers)
    result = run.summary(history, config, started)
    result['class_names'] = train_loader.class_names
    with run.writing(args):
        if args.save and workers.chief:
            checkpoint.save(args.save, net, {'model': args.model, 'num_classes': num_classes,
                                             'config': config, 'epoch': len(history),
                                             'history': history, 'input': run.input_meta(train_loader)},
                            trainer, workers.states_saver())
        if args.out and workers.chief:
            checkpoint.write_json(args.out, result)
    return result


def finetune(args):
    """Fine-tune ``args.pretrained`` on the new classes as ``args`` (the finetune recipe's
    settings) say, and with ``args.compare_scratch`` train the same model from scratch on
    the same examples; write ``args.out``; return the results."""
    started = time.time()
    contexts, workers, train_loader, test_loader, num_classes = run.prepare(args)
    net, meta = finetuning.load_pretrained(args.pretrained, contexts, args.model)
    args.model = meta['model']
    head = finetuning.replace_head(net, num_classes, contexts)
    finetuning.set_feature_training(net, head, args.features, args.features_lr_mult, args.train_last)
    net.hybridize(static_alloc=True, static_shape=True)
    config = settings.config_of(args, num_classes=num_classes)
    history, _, _ = run.train(net, args, train_loader, test_loader, contexts, config,
                              'finetune', workers)
    result = run.summary(history, config, started)
    result['class_names'] = train_loader.class_names
    if args.compare_scratch:
        scratch_args = argparse.Namespace(**vars(args))
        scratch_args.checkpoint_dir, scratch_args.resume = None, False
        scratch = run.new_model(args.model, num_classes, contexts, args.seed)
        scratch_history, _, _ = run.train(scratch, scratch_args, train_loader,
                                          test_loader, contexts, config, 'scratch', workers)
        result['scratch_test_accuracy'] = scratch_history[-1]['test_accuracy']
        result['scratch_history'] = scratch_history
    if args.out and workers.chief:
        with run.writing(args):
            checkpoint.write_json(args.out, result)
    return result


def stream(args):
    """The stream recipe's run as ``args`` say (one stream, or ``--compare``); its line."""
    if args.grow and args.source != 'stdin':
        raise MxnagError('grow: adds the classes that stdin lines name; with --source %s every '
                         'class is known at the start' % args.source, ('grow', 'source'))
    if args.tasks and args.source == 'stdin':
        raise MxnagError('tasks: orders a data source\'s images; stdin lines come in their own '
                         'order', ('tasks', 'source'))
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
            return streaming.compare(args)['table']
    run.check_outputs(args)
    with run.writing(args):
        result = streaming.run(args)
        if args.out:
            checkpoint.write_json(args.out, result)
    return ('stream: %d examples learned, prequential accuracy %.4f, test accuracy %.4f, '
            'update latency p99 %.1f ms' % (result['examples_learned'], result['prequential_accuracy'],
                                            result['test_accuracy'], result['update_latency_ms']['p99']))


def main(recipe, doc, argv=None):
    """A recipe script's whole run: its options parsed (described by the script's
    ``doc``), the run, its lines on stdout (a stdin stream's on stderr: its stdout is the
    predictions); the exit status."""
    args = cli.parser_for(recipe, doc).parse_args(argv)
    if recipe == 'stream':
        line = stream(args)
        print(line, file=sys.stderr if args.source == 'stdin' and not args.compare else sys.stdout)
    elif recipe == 'pretrain':
        result = pretrain(args)
        print('test accuracy %.4f after %d epochs' % (result['test_accuracy'], result['epochs_run']))
    else:
        result = finetune(args)
        print('fine-tuned: test accuracy %.4f' % result['test_accuracy'])
        if 'scratch_test_accuracy' in result:
            print('from scratch: test accuracy %.4f' % result['scratch_test_accuracy'])
    return 0
