"""The training toolkit: MNIST-style data (``data``), models by name (``models``), the
training loop (``loop``), crash-safe checkpoints (``checkpoint``), fine-tuning
(``finetune``), the run settings defined once (``settings``), one training run as the
recipes make it (``run``), their command-line layer (``cli``) and the optimizer
comparison (``sweep``). Needs the ``recipes`` extra (GluonCV, tqdm, matplotlib) for
zoo models, progress bars and plots."""
