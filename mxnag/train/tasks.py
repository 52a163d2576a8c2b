"""Task-ordered streams: groups of classes that arrive one after another (the
class-incremental setting of continual learning, e.g. Split-MNIST's 0-1, 2-3, 4-5, 6-7,
8-9), and the field's measures of them.

``parse(spec, names)`` reads ``--tasks``; ``orders(...)`` gives each task's training
examples in a seeded order; ``summary(groups, rows)`` turns the accuracies measured after
each task into the per-task table, the class-incremental accuracy (the mean over groups
of the final accuracy on each, all classes competing in one head) and the forgetting of
each group (its best accuracy after it was learned minus its final one).
"""
from typing import List, Sequence

import numpy as np

from ..errors import MxnagError


def parse(spec: str, names: Sequence[str]) -> List[List[str]]:
    """``'0-1,2-3'`` (groups joined by commas; in a group, ranges ``a-b``, class numbers
    and class names joined by ``+``) over a source's class ``names`` -> lists of names."""
    groups, taken = [], set()
    for text in str(spec).split(','):
        group = []
        for item in filter(None, (t.strip() for t in text.split('+'))):
            group.extend(_item(item, names, spec))
        if not group:
            raise MxnagError('tasks: %r has an empty group' % spec, ('tasks',))
        again = [c for c in group if c in taken or group.count(c) > 1]
        if again:
            raise MxnagError('tasks: class %s is in more than one place of %r' % (again[0], spec),
                             ('tasks',))
        taken.update(group)
        groups.append(group)
    return groups


def _item(item, names, spec):
    if item in names:
        return [item]
    low, dash, high = item.partition('-')
    try:
        numbers = list(range(int(low), int(high) + 1)) if dash else [int(item)]
    except ValueError:
        raise MxnagError('tasks: %r in %r is not a class of the source, a number or a range a-b '
                         '(classes: %s)' % (item, spec, ', '.join(names[:12]) +
                                            (', ...' if len(names) > 12 else '')),
                         ('tasks',)) from None
    if not numbers:
        raise MxnagError('tasks: %r in %r is an empty range (write it low-high)' % (item, spec),
                         ('tasks',))
    bad = [n for n in numbers if not 0 <= n < len(names)]
    if bad:
        raise MxnagError('tasks: %r in %r: the source has classes 0-%d' % (item, spec, len(names) - 1),
                         ('tasks',))
    return [names[n] for n in numbers]


def orders(labels: np.ndarray, class_names: Sequence[str], groups, seed: int) -> List[np.ndarray]:
    """Each group's training examples (indices into ``labels``, the source's class
    numbers) in a seeded order of its own."""
    index = {name: k for k, name in enumerate(class_names)}
    out = []
    for t, group in enumerate(groups):
        pick = np.flatnonzero(np.isin(labels, [index[c] for c in group]))
        out.append(pick[np.random.RandomState([seed, t]).permutation(len(pick))])
    return out


def summary(groups, rows) -> dict:
    """``groups``: the evaluated groups (lists of class names, in arrival order);
    ``rows``: after each task, the accuracies on the groups seen so far (a prefix of
    ``groups``, None where a group has no test images). Returns ``per_task`` (the table),
    ``class_il_accuracy`` (mean final accuracy over the groups; None without rows) and
    ``forgetting`` (per group: best minus final, None for the last)."""
    table = [{'after_task': t, 'accuracies': list(row)} for t, row in enumerate(rows)]
    if not rows:
        return {'per_task': table, 'class_il_accuracy': None, 'forgetting': []}
    final = rows[-1]
    measured = [a for a in final if a is not None]
    forgetting = []
    for g in range(len(final)):
        history = [row[g] for row in rows if len(row) > g and row[g] is not None]
        last_group = g == len(final) - 1
        forgetting.append(None if last_group or not history else max(history) - history[-1])
    return {'per_task': table, 'groups': [list(g) for g in groups[:len(final)]],
            'class_il_accuracy': float(np.mean(measured)) if measured else None,
            'forgetting': forgetting}
